/* quant_simd.h — helpers shared by the AVX2 kernel files of the quant module
 * (quant_avx2.c, quant_blockwise_avx2.c, quant_kq_avx2.c); only those files,
 * built with -mavx2 -mfma -mf16c, include it.
 */
#ifndef TD_QUANT_SIMD_H
#define TD_QUANT_SIMD_H

#include <immintrin.h>

#define INLINE static inline __attribute__((always_inline))
/* Loops over the blocks and the rows of a tile must unroll fully so that
 * their per-block vectors live in registers, not in stack arrays. */
#ifdef __clang__
#define UNROLL _Pragma("unroll")
#else
#define UNROLL _Pragma("GCC unroll 8")
#endif

/* Sum of the eight lanes: upper half onto lower, then (0+2)+(1+3) — the
 * order llama.cpp's kernels use, which the reference-order matmuls rely on. */
static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256i load256(const void *p) {
    return _mm256_loadu_si256((const __m256i *)p);
}

#endif
