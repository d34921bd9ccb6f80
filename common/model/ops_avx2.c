/* ops_avx2.c — AVX2/F16C kernels over the fp16 KV cache: the attention of a
 * batch of queries sharing one KV head (td_op_attend_avx2), and narrowing
 * K/V rows into the cache. Compiled with -mavx2 -mfma -mf16c and only called after the
 * CPU check in td_op_select; one variant serves a whole process, so results
 * stay batch invariant.
 */
#include <immintrin.h>
#include <math.h>

#include "model/model_internal.h"

void td_op_to_f16_avx2(const float *x, uint16_t *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
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

static inline const uint16_t *row_at(const td_attn_batch *a, const td_attn_query *q, int which, int32_t t) {
    int32_t slot = t < q->base ? t : q->chain[t - q->base];
    return td_kv_at(a->kv, a->seq, a->layer, which, slot) + a->head_off;
}

static inline __m256 load_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static inline __m256 round_f16_ps(__m256 v) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

#define UNROLL8 _Pragma("GCC unroll 8")

/* Lanes of eight positions' products with the query (acc[j] for position j,
 * summed across lanes by hsum8), from the f32 tile or straight from the fp16
 * cache: the values are the same, and so is every result. The eight chains
 * run interleaved, each in the same order a lone position would use. */
static inline __attribute__((always_inline)) void group_f32(const float *k, size_t stride, const __m256 *q,
                                                            int32_t nv, __m256 acc[8]) {
    UNROLL8 for (int j = 0; j < 8; j++) acc[j] = _mm256_mul_ps(_mm256_loadu_ps(k + j * stride), q[0]);
    for (int32_t i = 1; i < nv; i++)
        UNROLL8 for (int j = 0; j < 8; j++)
            acc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(k + j * stride + 8 * i), q[i], acc[j]);
}

static inline __attribute__((always_inline)) void group_f16(const uint16_t *const k[8], const __m256 *q,
                                                            int32_t nv, __m256 acc[8]) {
    UNROLL8 for (int j = 0; j < 8; j++) acc[j] = _mm256_mul_ps(load_f16(k[j]), q[0]);
    for (int32_t i = 1; i < nv; i++)
        UNROLL8 for (int j = 0; j < 8; j++) acc[j] = _mm256_fmadd_ps(load_f16(k[j] + 8 * i), q[i], acc[j]);
}

/* out[0..8*cn) += sum over positions of w[t] * row t (rows at `rows`, stride
 * `stride` floats, or fp16 rows from the cache when f16 is set). cn == 8 is
 * the common case and keeps the accumulators in registers. */
#define VSUM_BODY(CN, LOADV)                                                               \
    do {                                                                                   \
        __m256 o[8] = {0};                                                                 \
        UNROLL8 for (int32_t k = 0; k < (CN); k++) o[k] = _mm256_loadu_ps(out + 8 * k);   \
        for (int32_t t = t0; t < t1; t++) {                                                \
            const __m256 w = _mm256_broadcast_ss(w_at + t);                                \
            UNROLL8 for (int32_t k = 0; k < (CN); k++) o[k] = _mm256_fmadd_ps(w, LOADV, o[k]); \
        }                                                                                  \
        UNROLL8 for (int32_t k = 0; k < (CN); k++) _mm256_storeu_ps(out + 8 * k, o[k]);   \
    } while (0)

static inline __attribute__((always_inline)) void vsum_f32(float *out, const float *w_at, int32_t t0, int32_t t1,
                                                           const float *rows, int32_t hd, int32_t cn) {
#define ROW_F32 _mm256_loadu_ps(rows + (size_t)(t - t0) * hd + 8 * k)
    if (cn == 8) VSUM_BODY(8, ROW_F32);
    else VSUM_BODY(cn, ROW_F32);
#undef ROW_F32
}

/* K (which 0) or V (which 1) rows [p0, p1) of the head, widened into the tile. */
static void widen(const td_attn_batch *a, int which, int32_t p0, int32_t p1) {
    for (int32_t t = p0; t < p1; t++) {
        const uint16_t *src = td_kv_at(a->kv, a->seq, a->layer, which, t) + a->head_off;
        float *dst = a->tile + (size_t)(t - p0) * a->head_dim;
        for (int32_t i = 0; i < a->head_dim; i += 8) _mm256_storeu_ps(dst + i, load_f16(src + i));
    }
}

static inline __m256 live_lanes(__m256 sc, int32_t t0, int32_t n) {
    __m256i idx = _mm256_add_epi32(_mm256_set1_epi32(t0), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 live = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx));
    return _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), sc, live);
}

static inline float hmax(__m256 v) {
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    return _mm_cvtss_f32(m4);
}

/* Scores go eight positions at a time, each group reduced by one fixed tree;
 * a group that reaches past the query's prefix (its tree path, or padding
 * from a zero row) is read from the cache. The shared prefix is widened a
 * tile at a time, once for all queries, and stays in L1 while they use it.
 * Every query's scores, softmax and V sum (in position order, per element)
 * are the operations a lone query would do. */
static inline __attribute__((always_inline)) void attend(const td_attn_batch *a, const int32_t nv) {
    _Alignas(32) static const uint16_t zero_row[TD_ATTN_MAX_HEAD_DIM];
    const int32_t hd = 8 * nv, nq = a->n_q;
    __m256 q[TD_ATTN_MAX_QUERIES][TD_ATTN_MAX_HEAD_DIM / 8];
    __m256 vmax[TD_ATTN_MAX_QUERIES];
    const __m256 scale = _mm256_set1_ps(a->scale);
    /* Widening pays when enough queries share it; a lone row's GQA group
     * (decode) streams the cache directly. */
    const bool tiled = nq >= 4;
    int32_t span = 0; /* prefix positions some query reads whole groups of */
    for (int32_t i = 0; i < nq; i++) {
        for (int32_t d = 0; d < nv; d++) q[i][d] = round_f16_ps(_mm256_loadu_ps(a->qs[i].q + 8 * d));
        vmax[i] = _mm256_set1_ps(-INFINITY);
        int32_t full = tiled ? a->qs[i].base & ~7 : 0;
        if (full > span) span = full;
    }
    for (int32_t p0 = 0; p0 < span; p0 += TD_ATTN_TILE) {
        const int32_t p1 = p0 + TD_ATTN_TILE < span ? p0 + TD_ATTN_TILE : span;
        widen(a, 0, p0, p1);
        for (int32_t i = 0; i < nq; i++) {
            const int32_t full = a->qs[i].base & ~7, lim = full < p1 ? full : p1;
            for (int32_t t0 = p0; t0 < lim; t0 += 8) {
                __m256 acc[8];
                group_f32(a->tile + (size_t)(t0 - p0) * hd, (size_t)hd, q[i], nv, acc);
                __m256 sc = _mm256_mul_ps(hsum8(acc), scale);
                _mm256_storeu_ps(a->qs[i].scores + t0, sc);
                vmax[i] = _mm256_max_ps(vmax[i], sc);
            }
        }
    }
    for (int32_t i = 0; i < nq; i++) {
        const td_attn_query *qq = &a->qs[i];
        const int32_t n = qq->base + qq->n_chain;
        for (int32_t t0 = tiled ? qq->base & ~7 : 0; t0 < n; t0 += 8) {
            __m256 acc[8];
            const uint16_t *k[8];
            for (int j = 0; j < 8; j++) k[j] = t0 + j < n ? row_at(a, qq, 0, t0 + j) : zero_row;
            group_f16(k, q[i], nv, acc);
            __m256 sc = _mm256_mul_ps(hsum8(acc), scale);
            if (n - t0 < 8) sc = live_lanes(sc, t0, n); /* padding must not win the max */
            _mm256_storeu_ps(qq->scores + t0, sc);
            vmax[i] = _mm256_max_ps(vmax[i], sc);
        }
        /* softmax: padding lanes give e^-inf = 0 */
        const __m256 mx = _mm256_set1_ps(hmax(vmax[i]));
        __m256 vsum = _mm256_setzero_ps();
        for (int32_t t0 = 0; t0 < n; t0 += 8) {
            __m256 e = exp_nonpos_ps(_mm256_sub_ps(_mm256_loadu_ps(qq->scores + t0), mx));
            _mm256_storeu_ps(qq->scores + t0, e);
            vsum = _mm256_add_ps(vsum, e);
        }
        __m256 sums[8] = {vsum, vsum, vsum, vsum, vsum, vsum, vsum, vsum};
        const __m256 inv = _mm256_div_ps(_mm256_set1_ps(1.0f), hsum8(sums));
        for (int32_t t0 = 0; t0 < n; t0 += 8)
            _mm256_storeu_ps(qq->scores + t0, round_f16_ps(_mm256_mul_ps(_mm256_loadu_ps(qq->scores + t0), inv)));
        for (int32_t d = 0; d < hd; d++) qq->out[d] = 0.0f;
    }
    /* V: the prefix tile by tile, then each query's tree path from the cache;
     * eight vectors of the head stay in registers across a tile */
    int32_t vspan = 0;
    for (int32_t i = 0; i < nq && tiled; i++) if (a->qs[i].base > vspan) vspan = a->qs[i].base;
    for (int32_t p0 = 0; p0 < vspan; p0 += TD_ATTN_TILE) {
        const int32_t p1 = p0 + TD_ATTN_TILE < vspan ? p0 + TD_ATTN_TILE : vspan;
        widen(a, 1, p0, p1);
        for (int32_t i = 0; i < nq; i++) {
            const td_attn_query *qq = &a->qs[i];
            const int32_t lim = qq->base < p1 ? qq->base : p1;
            for (int32_t c0 = 0; c0 < nv && p0 < lim; c0 += 8) /* 8 vectors at a time */
                vsum_f32(qq->out + 8 * c0, qq->scores, p0, lim, a->tile + 8 * c0, hd, nv - c0 < 8 ? nv - c0 : 8);
        }
    }
    for (int32_t i = 0; i < nq; i++) {
        const td_attn_query *qq = &a->qs[i];
        const int32_t n = qq->base + qq->n_chain;
        const int32_t from = tiled ? qq->base : 0;
        for (int32_t c0 = 0; c0 < nv && from < n; c0 += 8) {
            float *out = qq->out + 8 * c0;
            const float *w_at = qq->scores;
            const int32_t t0 = from, t1 = n, cn = nv - c0 < 8 ? nv - c0 : 8;
#define ROW_F16 load_f16(row_at(a, qq, 1, t) + 8 * (c0 + k))
            if (cn == 8) VSUM_BODY(8, ROW_F16);
            else VSUM_BODY(cn, ROW_F16);
#undef ROW_F16
        }
    }
}

void td_op_attend_avx2(const td_attn_batch *a) {
    /* a constant vector count lets the compiler keep the head in registers */
    if (a->head_dim == 64)
        attend(a, 8);
    else
        attend(a, a->head_dim / 8);
}
