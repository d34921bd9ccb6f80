/* quant_simd.h — helpers shared by the SIMD kernel files of the quant module
 * (quant_avx2.c, quant_interleaved_avx2.c, quant_blockwise_avx2.c,
 * quant_kq_avx2.c and the *_avx512.c builds of the last three); only those
 * files, built with -mavx2 -mfma -mf16c (and more), include it.
 *
 * quant_interleaved_avx2.c, quant_blockwise_avx2.c and quant_kq_avx2.c are
 * built twice: as themselves (names td_quant_avx2_*) and, through
 * quant_*_avx512.c with TD_QUANT_VNNI, for CPUs with AVX512-VNNI and
 * AVX512-VL (td_quant_avx512_*). The only difference is dot4, dot4_add and
 * dot4_scaled_add below: vpdpbusd (and vpdpwssd) instead of maddubs + madd,
 * the same exact integers, so the same bits. The unit test test_quant_vnni
 * builds them a third time with TD_QUANT_SIMDE, on SIMDe's portable forms of
 * the AVX-512 intrinsics (td_quant_vnniemu_*), so the VNNI path is checked
 * on machines without it.
 */
#ifndef TD_QUANT_SIMD_H
#define TD_QUANT_SIMD_H

#ifdef TD_QUANT_SIMDE
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#else
#include <immintrin.h>
#endif

#ifndef TD_QUANT_ISA
#define TD_QUANT_ISA avx2
#endif
#define TD_QUANT_CAT_(isa, name) td_quant_##isa##_##name
#define TD_QUANT_CAT(isa, name) TD_QUANT_CAT_(isa, name)
/* The exported name of a kernel in this build: td_quant_<isa>_<name>. */
#define TD_KERNEL(name) TD_QUANT_CAT(TD_QUANT_ISA, name)

#define INLINE static inline __attribute__((always_inline))
/* Loops over the blocks and the rows of a tile must unroll fully so that
 * their per-block vectors live in registers, not in stack arrays. */
#ifdef __clang__
#define UNROLL _Pragma("unroll")
#else
#define UNROLL _Pragma("GCC unroll 8")
#endif

/* Runs CALL(n) with n the tile height nr as a compile-time constant, 1 to 7,
 * or 8 for anything larger: each height gets its own fully unrolled body. */
#define TD_TILE_DISPATCH(nr, CALL) \
    switch (nr) {                  \
    case 1: CALL(1); break;        \
    case 2: CALL(2); break;        \
    case 3: CALL(3); break;        \
    case 4: CALL(4); break;        \
    case 5: CALL(5); break;        \
    case 6: CALL(6); break;        \
    case 7: CALL(7); break;        \
    default: CALL(8); break;       \
    }

/* Sum of the eight lanes: upper half onto lower, then (0+2)+(1+3) — the
 * order llama.cpp's kernels use, which the reference-order matmuls rely on. */
static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The eight int32 sums of four neighbouring u8 x s8 products (u's bytes
 * unsigned, s's signed), and the same added to acc. Exact in both forms: the
 * kernels feed codes whose int16 pair sums cannot saturate (at most
 * 2 * 128 * 127). */
#ifdef TD_QUANT_SIMDE
/* SIMDe's portable vpdpbusd is long; inlined into every unrolled tile
 * variant it takes the compiler minutes. The emulated build is for tests. */
#define DOT4_INLINE static __attribute__((noinline, unused))
#else
#define DOT4_INLINE static inline
#endif
DOT4_INLINE __m256i dot4(__m256i u, __m256i s) {
#ifdef TD_QUANT_VNNI
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

DOT4_INLINE __m256i dot4_add(__m256i acc, __m256i u, __m256i s) {
#ifdef TD_QUANT_VNNI
    return _mm256_dpbusd_epi32(acc, u, s);
#else
    return _mm256_add_epi32(acc, dot4(u, s));
#endif
}

/* Weights stream from memory once per pass. One core's hardware
 * prefetchers keep too few lines in flight for a kernel that also computes,
 * so a one-row matmul read ~65-78 % of the bandwidth a plain read loop gets
 * (`tandem bench kernels`, stream). Asking for every line of the piece
 * TD_PREFETCH_AHEAD bytes ahead brings it to ~100 %. 2 KiB was the best of
 * 0.5/1/2/4 KiB on the development machine, for Q4_1 and Q8_0 alike. A
 * prefetch never faults, so asking past the end of the weights is
 * harmless. */
#define TD_PREFETCH_AHEAD 2048
static inline __attribute__((always_inline)) void td_quant_prefetch_ahead(const uint8_t *piece, size_t bytes) {
    /* the address is computed as an integer: a pointer past the weights'
     * end may not even be formed in C */
    for (size_t b = 0; b < bytes; b += 64)
        _mm_prefetch((const char *)((uintptr_t)piece + TD_PREFETCH_AHEAD + b), _MM_HINT_T0);
}

/* For the K-quant kernels (quant_kq_avx2.c): acc + sc * (u x s) per int32
 * lane, where u x s is the lane's sum of four u8 x s8 products and sc the
 * lane's sub-block scale. AVX2 takes maddubs (int16 pair sums) and madd by a
 * scale in both int16 words of the lane; the VNNI build takes vpdpbusd (the
 * int32 four-product sum, which fits in int16: at most 4 * 63 * 128 = 32256
 * in magnitude for codes up to 63) and vpdpwssd by the scale in the low word
 * and 0 in the high one, so the high word of the sum, its sign extension,
 * drops out. Each lane's integer is the same either way. kq_scale_ctl(w)
 * is the pshufb control per int32 lane that moves int16 word w of a scale
 * vector into the form its build needs (0x80 bytes give zeros). */
DOT4_INLINE __m256i dot4_scaled_add(__m256i acc, __m256i u, __m256i s, __m256i sc) {
#ifdef TD_QUANT_VNNI
    return _mm256_dpwssd_epi32(acc, _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s), sc);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), sc));
#endif
}

static inline int kq_scale_ctl(int w) {
#ifdef TD_QUANT_VNNI
    return (int)((unsigned)(2 * w) | (unsigned)(2 * w + 1) << 8 | 0x80800000u);
#else
    return (int)(((unsigned)(2 * w) | (unsigned)(2 * w + 1) << 8) * 0x10001u);
#endif
}

static inline __m256i load256(const void *p) {
    return _mm256_loadu_si256((const __m256i *)p);
}

#endif
