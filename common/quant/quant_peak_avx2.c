/* quant_peak_avx2.c — the integer dot sequence of the AVX2 kernels,
 * vpmaddubsw (32 u8 x s8 products summed in pairs) then vpmaddwd and an add,
 * on independent accumulators: one core's most, the yardstick of
 * `tandem bench kernels` on CPUs without VNNI. Built with -mavx2; called
 * only after the CPU check in quant_peak.c.
 */
#include <immintrin.h>
#include <stdint.h>

#include "quant/quant_impl.h"

/* 8 chains, each its own variable so they live in registers (with the two
 * inputs, the constant and the products, the 16 ymm registers are full);
 * vpmaddubsw issues up to 2 per cycle. */
#define CHAINS8(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7)

int64_t td_quant_avx2_peak_maddubs_ymm(const uint8_t *src, int64_t iters) {
    __m256i a = _mm256_loadu_si256((const __m256i *)src), b = _mm256_loadu_si256((const __m256i *)(src + 32));
    const __m256i ones = _mm256_set1_epi16(1);
    /* the product is the same every time: volatile keeps the compiler from
     * computing it once for all chains and iterations */
#define INIT(c) __m256i acc##c = _mm256_set1_epi32(c);
#define STEP(c)                                                            \
    {                                                                      \
        __m256i p;                                                         \
        __asm__ volatile("vpmaddubsw %2, %1, %0" : "=x"(p) : "x"(a), "x"(b)); \
        acc##c = _mm256_add_epi32(acc##c, _mm256_madd_epi16(p, ones));     \
    }
#define SUM(c) s = _mm256_add_epi32(s, acc##c);
    CHAINS8(INIT)
    for (int64_t i = 0; i < iters; i++) {
        CHAINS8(STEP)
    }
    __m256i s = _mm256_setzero_si256();
    CHAINS8(SUM)
    int32_t v[8];
    _mm256_storeu_si256((__m256i *)v, s);
    return (int64_t)v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
#undef INIT
#undef STEP
#undef SUM
}
