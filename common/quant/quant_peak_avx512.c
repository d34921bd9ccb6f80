/* quant_peak_avx512.c — the integer dot instruction of the AVX512-VNNI
 * kernels, vpdpbusd, issued back to back on independent accumulators in its
 * 512-bit and 256-bit forms: what one core can do at most, the yardstick of
 * `tandem bench kernels`. Built with the *_avx512.c flags; called only after
 * the CPU check in quant_peak.c.
 */
#include <immintrin.h>
#include <stdint.h>

#include "quant/quant_impl.h"

/* The instruction is written as asm: compiled from the intrinsic, each
 * accumulating vpdpbusd came with register copies around it, which the
 * front end would pay for. 12 chains, each its own variable so they live in
 * registers: vpdpbusd
 * has a latency of about 5 cycles and issues up to 2 per cycle, so fewer
 * chains would measure latency, not throughput. */
#define CHAINS12(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8) OP(9) OP(10) OP(11)

int64_t td_quant_avx512_peak_dpbusd_zmm(const uint8_t *src, int64_t iters) {
    __m512i a = _mm512_loadu_si512(src), b = _mm512_loadu_si512(src + 64);
#define INIT(c) __m512i acc##c = _mm512_set1_epi32(c);
#define STEP(c) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc##c) : "v"(a), "v"(b));
#define SUM(c) s = _mm512_add_epi32(s, acc##c);
    CHAINS12(INIT)
    for (int64_t i = 0; i < iters; i++) {
        CHAINS12(STEP)
    }
    __m512i s = _mm512_setzero_si512();
    CHAINS12(SUM)
    return _mm512_reduce_add_epi32(s);
#undef INIT
#undef STEP
#undef SUM
}

int64_t td_quant_avx512_peak_dpbusd_ymm(const uint8_t *src, int64_t iters) {
    __m256i a = _mm256_loadu_si256((const __m256i *)src), b = _mm256_loadu_si256((const __m256i *)(src + 32));
#define INIT(c) __m256i acc##c = _mm256_set1_epi32(c);
#define STEP(c) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc##c) : "v"(a), "v"(b));
#define SUM(c) s = _mm256_add_epi32(s, acc##c);
    CHAINS12(INIT)
    for (int64_t i = 0; i < iters; i++) {
        CHAINS12(STEP)
    }
    __m256i s = _mm256_setzero_si256();
    CHAINS12(SUM)
    int32_t v[8];
    _mm256_storeu_si256((__m256i *)v, s);
    return (int64_t)v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
#undef INIT
#undef STEP
#undef SUM
}
