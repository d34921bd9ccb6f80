/* quant_avx2.c — AVX2/FMA/F16C kernels for float rows (F32, F16, BF16) and
 * the activation quantizers (Q8_0, Q8_1, Q8_K, F16). Built with -mavx2 -mfma
 * -mf16c; reached only through the table td_quant_traits hands out after
 * checking the CPU. The block formats' kernels are in
 * quant_interleaved_avx2.c, quant_blockwise_avx2.c and quant_kq_avx2.c.
 */
#include <immintrin.h>
#include <string.h>

#include "quant/quant_impl.h"
#include "quant/quant_simd.h"

/* ---- float rows ---- */

/* Four accumulators over 32 elements, then 8 at a time, then scalar. */
#define FLOAT_DOT(load)                                                              \
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;                     \
    int64_t i = 0;                                                                  \
    for (; i + 32 <= n; i += 32) {                                                  \
        s0 = _mm256_fmadd_ps(load(a, i), load(b, i), s0);                           \
        s1 = _mm256_fmadd_ps(load(a, i + 8), load(b, i + 8), s1);                   \
        s2 = _mm256_fmadd_ps(load(a, i + 16), load(b, i + 16), s2);                 \
        s3 = _mm256_fmadd_ps(load(a, i + 24), load(b, i + 24), s3);                 \
    }                                                                               \
    for (; i + 8 <= n; i += 8)                                                      \
        s0 = _mm256_fmadd_ps(load(a, i), load(b, i), s0);                           \
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));

#define LOAD_F32(p, i) _mm256_loadu_ps((p) + (i))
#define LOAD_F16(p, i) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((p) + (i))))
#define LOAD_BF16(p, i) _mm256_castsi256_ps(_mm256_slli_epi32( \
    _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((p) + (i)))), 16))

void td_quant_avx2_dot_f32(int64_t n, float *s, const void *x, const void *y) {
    const float *a = x, *b = y;
    FLOAT_DOT(LOAD_F32)
    for (; i < n; i++)
        sum += a[i] * b[i];
    *s = sum;
}

void td_quant_avx2_dot_f16(int64_t n, float *s, const void *x, const void *y) {
    const uint16_t *a = x, *b = y;
    FLOAT_DOT(LOAD_F16)
    for (; i < n; i++)
        sum += _cvtsh_ss(a[i]) * _cvtsh_ss(b[i]);
    *s = sum;
}

void td_quant_avx2_dot_bf16(int64_t n, float *s, const void *x, const void *y) {
    const uint16_t *a = x, *b = y;
    FLOAT_DOT(LOAD_BF16)
    for (; i < n; i++)
        sum += td_bf16_to_f32(a[i]) * td_bf16_to_f32(b[i]);
    *s = sum;
}

/* ---- activation quantizers: bit-identical to quant_ref_quantize.c ---- */

/* td_f32_to_fp16 in one F16C instruction: round to nearest even, NaN kept
 * quiet with its upper payload bits, the same bits for every input
 * (test_quant checks the two against each other), without a call into
 * quant_ref.c per block. */
static inline uint16_t f16_of(float f) { return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }

void td_quant_avx2_from_f16(const float *src, void *dst, int64_t n) {
    uint16_t *y = dst;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        y[i] = f16_of(src[i]);
}

static inline __m256 abs_ps(__m256 v) {
    return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v);
}

/* Horizontal max of lanes that hold no NaN. */
static inline float hmax_ps(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* Nearest-even rounding of lanes; NaN lanes become 0 like the reference's
 * round_even_clamp. */
static inline __m256 round_even_ps(__m256 v) {
    __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm256_and_ps(t, _mm256_cmp_ps(v, v, _CMP_ORD_Q));
}

/* 32 rounded lanes (4 vectors, element order) to int8, saturating. */
static inline __m256i pack_i8(const __m256 q[4]) {
    __m256i a = _mm256_packs_epi32(_mm256_cvtps_epi32(q[0]), _mm256_cvtps_epi32(q[1]));
    __m256i b = _mm256_packs_epi32(_mm256_cvtps_epi32(q[2]), _mm256_cvtps_epi32(q[3]));
    __m256i v = _mm256_packs_epi16(a, b);
    return _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* Q8_0 / Q8_1 block: same arithmetic as the reference's q8_block. */
static inline int q8_block(const float *x, int8_t qs[32], float *d_out) {
    __m256 v[4], amax = _mm256_setzero_ps();
    UNROLL
    for (int j = 0; j < 4; j++) {
        v[j] = _mm256_loadu_ps(x + 8 * j);
        amax = _mm256_max_ps(abs_ps(v[j]), amax); /* NaN in the first operand is skipped */
    }
    float am = hmax_ps(amax), d = am / 127.0f;
    float id = am != 0.0f ? 127.0f / am : 0.0f;
    __m256 q[4], vid = _mm256_set1_ps(id);
    UNROLL
    for (int j = 0; j < 4; j++)
        q[j] = round_even_ps(_mm256_mul_ps(v[j], vid));
    __m256i p = pack_i8(q);
    _mm256_storeu_si256((__m256i *)qs, p);
    __m256i s16 = _mm256_maddubs_epi16(_mm256_set1_epi8(1), p);
    __m256i s32 = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    *d_out = d;
    return _mm_cvtsi128_si32(s);
}

void td_quant_avx2_from_q8_0(const float *src, void *dst, int64_t n) {
    td_block_q8_0 *y = dst;
    for (int64_t i = 0; i < n / TD_QK; i++, src += TD_QK) {
        float d;
        q8_block(src, y[i].qs, &d);
        y[i].d = f16_of(d);
    }
}

void td_quant_avx2_from_q8_1(const float *src, void *dst, int64_t n) {
    td_block_q8_1 *y = dst;
    for (int64_t i = 0; i < n / TD_QK; i++, src += TD_QK) {
        float d;
        int sum = q8_block(src, y[i].qs, &d);
        y[i].d = f16_of(d);
        y[i].s = f16_of((float)sum * d);
    }
}

void td_quant_avx2_from_q8_k(const float *src, void *dst, int64_t n) {
    td_block_q8_k *y = dst;
    for (int64_t i = 0; i < n / TD_QK_K; i++, src += TD_QK_K) {
        __m256 amax = _mm256_setzero_ps();
        for (int j = 0; j < TD_QK_K; j += 8)
            amax = _mm256_max_ps(abs_ps(_mm256_loadu_ps(src + j)), amax);
        float am = hmax_ps(amax);
        memset(&y[i], 0, sizeof y[i]);
        if (am == 0.0f)
            continue;
        /* the reference keeps the first element of largest magnitude */
        __m256 vam = _mm256_set1_ps(am);
        float max = 0;
        for (int j = 0; j < TD_QK_K; j += 8) {
            __m256 v = _mm256_loadu_ps(src + j);
            int mask = _mm256_movemask_ps(_mm256_cmp_ps(abs_ps(v), vam, _CMP_EQ_OQ));
            if (mask) {
                max = src[j + __builtin_ctz((unsigned)mask)];
                break;
            }
        }
        float iscale = -127.0f / max;
        __m256 vis = _mm256_set1_ps(iscale), lim = _mm256_set1_ps(127.0f);
        for (int j = 0; j < TD_QK_K; j += 32) {
            __m256 q[4];
            UNROLL
            for (int k = 0; k < 4; k++) {
                __m256 v = _mm256_mul_ps(vis, _mm256_loadu_ps(src + j + 8 * k));
                v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q)); /* NaN -> 0 */
                q[k] = _mm256_min_ps(v, lim);
            }
            __m256i p = pack_i8(q);
            _mm256_storeu_si256((__m256i *)(y[i].qs + j), p);
            /* two group sums of 16 */
            __m256i s = _mm256_maddubs_epi16(_mm256_set1_epi8(1), p);
            s = _mm256_madd_epi16(s, _mm256_set1_epi16(1));
            UNROLL
            for (int h = 0; h < 2; h++) {
                __m128i t = h ? _mm256_extracti128_si256(s, 1) : _mm256_castsi256_si128(s);
                t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
                t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
                y[i].bsums[j / 16 + h] = (int16_t)_mm_cvtsi128_si32(t);
            }
        }
        y[i].d = 1.0f / iscale;
    }
}
