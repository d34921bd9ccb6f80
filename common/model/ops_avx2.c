/* ops_avx2.c — AVX2/F16C versions of the attention inner loops over the fp16
 * KV cache: widening a V row and accumulating it, and narrowing K/V rows
 * into the cache. Compiled with -mavx2 -mfma -mf16c and only called after the
 * CPU check in td_op_select; one variant serves a whole process, so results
 * stay batch invariant.
 */
#include <immintrin.h>
#include <math.h>

#include "model/model_internal.h"

void td_op_axpy_f16_avx2(float *y, float a, const uint16_t *x, int64_t n) {
    __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 xv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i)));
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, xv, _mm256_loadu_ps(y + i)));
    }
    for (; i < n; i++) y[i] = fmaf(a, _cvtsh_ss(x[i]), y[i]);
}

void td_op_to_f16_avx2(const float *x, uint16_t *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
}

void td_op_from_f16_avx2(const uint16_t *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
    for (; i < n; i++) y[i] = _cvtsh_ss(x[i]);
}

/* e^x for x <= 0 (softmax arguments), about 1 ulp: x = n ln2 + r with
 * |r| <= ln2/2, e^r by its Taylor series to r^7 (truncation < 1e-8 relative),
 * then 2^n put into the exponent. Below -87 the result is 0. */
static inline __m256 exp_nonpos_ps(__m256 x) {
    const __m256 log2e = _mm256_set1_ps(1.44269504f);
    const __m256 ln2_hi = _mm256_set1_ps(0.693145752f), ln2_lo = _mm256_set1_ps(1.42860677e-6f);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, ln2_hi, x);
    r = _mm256_fnmadd_ps(n, ln2_lo, r);
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    return _mm256_and_ps(y, _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_GE_OQ));
}

/* Lane j of the result: the sum of the lanes of a[j] (one fixed tree). */
static inline __m256 hsum8(const __m256 a[8]) {
    __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
    __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
    __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

static inline const uint16_t *row_at(const td_attn_args *a, int which, int32_t t) {
    int32_t slot = t < a->base ? t : a->chain[t - a->base];
    return td_kv_at(a->kv, a->seq, a->layer, which, slot) + a->head_off;
}

static inline __m256 load_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static inline __m256 round_f16_ps(__m256 v) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

/* Lanes of one position's product with the query (lane sums later). */
static inline __attribute__((always_inline)) __m256 dot_f32(const float *k, const __m256 *q, int32_t nv) {
    __m256 s = _mm256_mul_ps(_mm256_loadu_ps(k), q[0]);
    for (int32_t i = 1; i < nv; i++) s = _mm256_fmadd_ps(_mm256_loadu_ps(k + 8 * i), q[i], s);
    return s;
}

static inline __attribute__((always_inline)) __m256 dot_f16(const uint16_t *k, const __m256 *q, int32_t nv) {
    __m256 s = _mm256_mul_ps(load_f16(k), q[0]);
    for (int32_t i = 1; i < nv; i++) s = _mm256_fmadd_ps(load_f16(k + 8 * i), q[i], s);
    return s;
}

/* Positions go eight at a time; a short last group reads a zero row for the
 * missing ones, so every score is reduced by the same tree wherever its
 * position falls. */
static inline __attribute__((always_inline)) void attend(const td_attn_args *a, const int32_t nv) {
    const int32_t n = a->base + a->n_chain;
    _Alignas(32) static const uint16_t zero_row[TD_ATTN_MAX_HEAD_DIM];
    __m256 q[TD_ATTN_MAX_HEAD_DIM / 8];
    for (int32_t i = 0; i < nv; i++) q[i] = round_f16_ps(_mm256_loadu_ps(a->q + 8 * i));
    const __m256 scale = _mm256_set1_ps(a->scale);
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    for (int32_t t0 = 0; t0 < n; t0 += 8) {
        __m256 acc[8];
        if (t0 + 8 <= a->wide_n) { /* the same values, already widened */
            for (int j = 0; j < 8; j++) acc[j] = dot_f32(a->wide_k + (size_t)(t0 + j) * a->wide_stride, q, nv);
        } else if (t0 >= a->wide_n) {
            for (int j = 0; j < 8; j++) acc[j] = dot_f16(t0 + j < n ? row_at(a, 0, t0 + j) : zero_row, q, nv);
        } else {
            for (int j = 0; j < 8; j++) {
                int32_t t = t0 + j;
                acc[j] = t < a->wide_n ? dot_f32(a->wide_k + (size_t)t * a->wide_stride, q, nv)
                                       : dot_f16(t < n ? row_at(a, 0, t) : zero_row, q, nv);
            }
        }
        __m256 sc = _mm256_mul_ps(hsum8(acc), scale);
        if (n - t0 < 8) { /* padding lanes must not win the max */
            __m256i idx = _mm256_add_epi32(_mm256_set1_epi32(t0), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            __m256 live = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx));
            sc = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), sc, live);
        }
        _mm256_storeu_ps(a->scores + t0, sc);
        vmax = _mm256_max_ps(vmax, sc);
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const __m256 mx = _mm256_broadcastss_ps(m4);
    __m256 vsum = _mm256_setzero_ps();
    for (int32_t t0 = 0; t0 < n; t0 += 8) { /* padding lanes: e^-inf = 0 */
        __m256 e = exp_nonpos_ps(_mm256_sub_ps(_mm256_loadu_ps(a->scores + t0), mx));
        _mm256_storeu_ps(a->scores + t0, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    __m256 sums[8] = {vsum, vsum, vsum, vsum, vsum, vsum, vsum, vsum};
    const __m256 inv = _mm256_div_ps(_mm256_set1_ps(1.0f), hsum8(sums));
    for (int32_t t0 = 0; t0 < n; t0 += 8)
        _mm256_storeu_ps(a->scores + t0, round_f16_ps(_mm256_mul_ps(_mm256_loadu_ps(a->scores + t0), inv)));
    /* Weighted V rows, eight vectors of the head at a time kept in registers;
     * each element sums over positions in order, as td_op_axpy_f16 would. */
    for (int32_t c0 = 0; c0 < nv; c0 += 8) {
        const int32_t cn = nv - c0 < 8 ? nv - c0 : 8; /* 8 unless head_dim % 64 != 0 */
        __m256 o[8] = {0};
        const int32_t nw = a->wide_n < n ? a->wide_n : n;
        int32_t t = 0;
        for (; t < nw; t++) {
            const __m256 w = _mm256_broadcast_ss(a->scores + t);
            const float *v = a->wide_v + (size_t)t * a->wide_stride + 8 * c0;
            for (int32_t i = 0; i < cn; i++) o[i] = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 8 * i), o[i]);
        }
        for (; t < n; t++) {
            const __m256 w = _mm256_broadcast_ss(a->scores + t);
            const uint16_t *v = row_at(a, 1, t) + 8 * c0;
            for (int32_t i = 0; i < cn; i++) o[i] = _mm256_fmadd_ps(w, load_f16(v + 8 * i), o[i]);
        }
        for (int32_t i = 0; i < cn; i++) _mm256_storeu_ps(a->out + 8 * (c0 + i), o[i]);
    }
}

void td_op_attend_avx2(const td_attn_args *a) {
    /* a constant vector count lets the compiler keep the head in registers */
    if (a->head_dim == 64)
        attend(a, 8);
    else
        attend(a, a->head_dim / 8);
}
