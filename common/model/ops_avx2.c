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

/* td_op_exp on eight lanes: the same operations, so the same bits. */
static inline __m256 exp_ps(__m256 x) {
    const __m256 shift = _mm256_set1_ps(0x1.8p23f), abs_mask = _mm256_set1_ps(-0.0f);
    __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), shift);
    __m256 n = _mm256_sub_ps(z, shift);
    __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f),
                                _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
    __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    __m256 k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1.0f))));
    __m256 u = _mm256_mul_ps(b, b);
    __m256 j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f)), u,
                        _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f))),
        u, _mm256_mul_ps(_mm256_set1_ps(0x1.ffffecp-1f), b));
    __m256 an = _mm256_andnot_ps(abs_mask, n);
    __m256 big = _mm256_cmp_ps(an, _mm256_set1_ps(126.0f), _CMP_GT_OQ);
    if (!_mm256_movemask_ps(big))
        return _mm256_fmadd_ps(k, j, k);
    /* 2^n out of range for one scale: split it in two (or saturate) */
    __m256i g = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
                                 _mm256_set1_epi32((int)0x82000000u));
    __m256 s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f000000)));
    __m256 s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    __m256 huge = _mm256_cmp_ps(an, _mm256_set1_ps(192.0f), _CMP_GT_OQ);
    __m256 split = _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1);
    __m256 r = _mm256_blendv_ps(_mm256_fmadd_ps(k, j, k), split, big);
    return _mm256_blendv_ps(r, _mm256_mul_ps(s1, s1), huge);
}

void td_op_silu_mul_avx2(float *gate, const float *up, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 den = _mm256_add_ps(_mm256_set1_ps(1.0f), exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), g)));
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(_mm256_div_ps(g, den), _mm256_loadu_ps(up + i)));
    }
    td_op_silu_mul_scalar(gate + i, up + i, n - i);
}

/* td_op_rope on vectors: per element the scalar form's fma(x0, c, -(x1 s))
 * and fma(x0, s, x1 c). NEOX's pairs (i, i + n_rot/2) lie in two vectors;
 * NORM's neighbours (2i, 2i+1) share one, so both results are computed for
 * every lane (cos and sin duplicated over each pair) and the even lanes take
 * the first, the odd the second. */
/* -v exactly (the sign bit flipped, as C's unary minus; 0 - v would turn
 * -0 into +0) */
static inline __m256 neg(__m256 v) { return _mm256_xor_ps(v, _mm256_set1_ps(-0.0f)); }

void td_op_rope_avx2(float *head, const float *cs, int32_t n_rot, td_rope_kind kind) {
    const int32_t half = n_rot / 2;
    if (kind == TD_ROPE_NORM) {
        for (int32_t i = 0; i < n_rot; i += 8) {
            const __m256 h = _mm256_loadu_ps(head + i), t = _mm256_loadu_ps(cs + i);
            const __m256 x0 = _mm256_moveldup_ps(h), x1 = _mm256_movehdup_ps(h);
            const __m256 c = _mm256_moveldup_ps(t), s = _mm256_movehdup_ps(t);
            const __m256 a = _mm256_fmadd_ps(x0, c, neg(_mm256_mul_ps(x1, s)));
            const __m256 b = _mm256_fmadd_ps(x0, s, _mm256_mul_ps(x1, c));
            _mm256_storeu_ps(head + i, _mm256_blend_ps(a, b, 0xAA));
        }
        return;
    }
    for (int32_t i = 0; i < half; i += 8) {
        /* cos/sin of pairs i..i+7, interleaved, to a cos and a sin vector */
        const __m256 t0 = _mm256_loadu_ps(cs + 2 * i), t1 = _mm256_loadu_ps(cs + 2 * i + 8);
        const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
        const __m256 u0 = _mm256_permutevar8x32_ps(t0, order), u1 = _mm256_permutevar8x32_ps(t1, order);
        const __m256 c = _mm256_permute2f128_ps(u0, u1, 0x20), s = _mm256_permute2f128_ps(u0, u1, 0x31);
        const __m256 x0 = _mm256_loadu_ps(head + i), x1 = _mm256_loadu_ps(head + i + half);
        _mm256_storeu_ps(head + i, _mm256_fmadd_ps(x0, c, neg(_mm256_mul_ps(x1, s))));
        _mm256_storeu_ps(head + i + half, _mm256_fmadd_ps(x0, s, _mm256_mul_ps(x1, c)));
    }
}

/* td_op_hsum8 of one vector */
static inline float hsum1(__m256 v) {
    __m128 c = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    c = _mm_add_ps(c, _mm_movehl_ps(c, c));
    c = _mm_add_ss(c, _mm_movehdup_ps(c));
    return _mm_cvtss_f32(c);
}

/* Lane j of the result: td_op_hsum8 of a[j]. The lanes (c0, c2, c1, c3)
 * after folding the upper half make two hadds give (c0 + c2) + (c1 + c3). */
static inline __m256 hsum8(const __m256 a[8]) {
    __m256 f[4];
    for (int i = 0; i < 4; i++) {
        __m256 lo = _mm256_permute2f128_ps(a[2 * i], a[2 * i + 1], 0x20);
        __m256 hi = _mm256_permute2f128_ps(a[2 * i], a[2 * i + 1], 0x31);
        f[i] = _mm256_permute_ps(_mm256_add_ps(lo, hi), _MM_SHUFFLE(3, 1, 2, 0));
    }
    /* lanes: [a0 a2 a4 a6 | a1 a3 a5 a7] */
    __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(f[0], f[1]), _mm256_hadd_ps(f[2], f[3]));
    return _mm256_permutevar8x32_ps(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
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

/* Lane sets += w[t] * row t for positions [t0, t1), vectors [c0, c0 + cn)
 * of the head (rows at `rows`, stride hd floats, first row t0, or fp16 rows
 * from the cache). Positions go by lane set: set j takes t = j, j + 8, ...
 * in order, with its cn vectors in registers. */
#define VSUM_BODY(CN, LOADV)                                                                      \
    do {                                                                                          \
        for (int32_t j = 0; j < 8; j++) {                                                         \
            const int32_t first = t0 + ((j - t0) & 7);                                            \
            if (first >= t1) continue;                                                            \
            float *set = qq->lanes + (size_t)j * hd + 8 * c0;                                     \
            __m256 o[8] = {0};                                                                    \
            UNROLL8 for (int32_t k = 0; k < (CN); k++) o[k] = _mm256_loadu_ps(set + 8 * k);      \
            for (int32_t t = first; t < t1; t += 8) {                                             \
                const __m256 w = _mm256_broadcast_ss(qq->scores + t);                             \
                UNROLL8 for (int32_t k = 0; k < (CN); k++) o[k] = _mm256_fmadd_ps(LOADV, w, o[k]); \
            }                                                                                     \
            UNROLL8 for (int32_t k = 0; k < (CN); k++) _mm256_storeu_ps(set + 8 * k, o[k]);      \
        }                                                                                         \
    } while (0)

static inline __attribute__((always_inline)) void vsum_f32(const td_attn_query *qq, int32_t t0, int32_t t1,
                                                           const float *rows, int32_t hd, int32_t c0, int32_t cn) {
#define ROW_F32 _mm256_loadu_ps(rows + (size_t)(t - t0) * hd + 8 * (c0 + k))
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
        /* softmax: padding lanes give e^-inf = 0; each group's sum is
         * added in double, as the reference does */
        const __m256 mx = _mm256_set1_ps(hmax(vmax[i]));
        double sum = 0.0;
        for (int32_t t0 = 0; t0 < n; t0 += 8) {
            __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(qq->scores + t0), mx));
            _mm256_storeu_ps(qq->scores + t0, e);
            sum += (double)hsum1(e);
        }
        const __m256 inv = _mm256_set1_ps((float)(1.0 / sum));
        for (int32_t t0 = 0; t0 < n; t0 += 8)
            _mm256_storeu_ps(qq->scores + t0, round_f16_ps(_mm256_mul_ps(_mm256_loadu_ps(qq->scores + t0), inv)));
        for (int32_t d = 0; d < 8 * hd; d++) qq->lanes[d] = 0.0f;
    }
    /* V: position t adds into lane set t % 8 (lanes + (t % 8) * hd), as the
     * reference's f16 matmul does; the sets are summed by td_op_hsum8 at the
     * end. The prefix goes tile by tile, then each query's tree path from
     * the cache. */
    int32_t vspan = 0;
    for (int32_t i = 0; i < nq && tiled; i++) if (a->qs[i].base > vspan) vspan = a->qs[i].base;
    for (int32_t p0 = 0; p0 < vspan; p0 += TD_ATTN_TILE) {
        const int32_t p1 = p0 + TD_ATTN_TILE < vspan ? p0 + TD_ATTN_TILE : vspan;
        widen(a, 1, p0, p1);
        for (int32_t i = 0; i < nq; i++) {
            const td_attn_query *qq = &a->qs[i];
            const int32_t lim = qq->base < p1 ? qq->base : p1;
            for (int32_t c0 = 0; c0 < nv && p0 < lim; c0 += 8) /* 8 vectors at a time */
                vsum_f32(qq, p0, lim, a->tile, hd, c0, nv - c0 < 8 ? nv - c0 : 8);
        }
    }
    for (int32_t i = 0; i < nq; i++) {
        const td_attn_query *qq = &a->qs[i];
        const int32_t n = qq->base + qq->n_chain;
        const int32_t from = tiled ? qq->base : 0;
        for (int32_t c0 = 0; c0 < nv && from < n; c0 += 8) {
            const int32_t t0 = from, t1 = n, cn = nv - c0 < 8 ? nv - c0 : 8;
#define ROW_F16 load_f16(row_at(a, qq, 1, t) + 8 * (c0 + k))
            if (cn == 8) VSUM_BODY(8, ROW_F16);
            else VSUM_BODY(cn, ROW_F16);
#undef ROW_F16
        }
        for (int32_t c = 0; c < nv; c++) {
            __m256 l[8];
            for (int j = 0; j < 8; j++) l[j] = _mm256_loadu_ps(qq->lanes + (size_t)j * hd + 8 * c);
            __m256 s0 = _mm256_add_ps(_mm256_add_ps(l[0], l[4]), _mm256_add_ps(l[2], l[6]));
            __m256 s1 = _mm256_add_ps(_mm256_add_ps(l[1], l[5]), _mm256_add_ps(l[3], l[7]));
            _mm256_storeu_ps(qq->out + 8 * c, _mm256_add_ps(s0, s1));
        }
    }
}

/* Lane j of the result: the sum of a[j]'s lanes as llama.cpp's f16 vector
 * dot folds them: upper half onto lower, then (0+1)+(2+3). */
static inline __m256 fold8_lone(const __m256 a[8]) {
    __m256 f[4];
    for (int i = 0; i < 4; i++)
        f[i] = _mm256_add_ps(_mm256_permute2f128_ps(a[2 * i], a[2 * i + 1], 0x20),
                             _mm256_permute2f128_ps(a[2 * i], a[2 * i + 1], 0x31));
    /* lanes: [a0 a2 a4 a6 | a1 a3 a5 a7] */
    __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(f[0], f[1]), _mm256_hadd_ps(f[2], f[3]));
    return _mm256_permutevar8x32_ps(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* td_op_attend_scalar's lone form with eight head elements per vector: the same
 * accumulators, fold and softmax, so the same bits. */
void td_op_attend_lone_avx2(const td_attn_batch *a) {
    const int32_t hd = a->head_dim, nv = hd / 8, steps = hd - hd % 32;
    for (int32_t i = 0; i < a->n_q; i++) {
        const td_attn_query *qq = &a->qs[i];
        const int32_t n = qq->base + qq->n_chain;
        float q[TD_ATTN_MAX_HEAD_DIM], *sc = qq->scores;
        for (int32_t d = 0; d < hd; d++) q[d] = td_op_round_f16(qq->q[d]);
        /* scores eight positions at a time; steps of 32 in four
         * accumulators, folded (0+2)+(1+3), then by fold8_lone */
        _Alignas(32) static const uint16_t zero_row[TD_ATTN_MAX_HEAD_DIM];
        __m256 vmax = _mm256_set1_ps(-INFINITY);
        for (int32_t t0 = 0; t0 < n; t0 += 8) {
            __m256 x[8];
            for (int p = 0; p < 8; p++) {
                const uint16_t *k = t0 + p < n ? row_at(a, qq, 0, t0 + p) : zero_row;
                __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
                for (int32_t d0 = 0; d0 < steps; d0 += 32)
                    for (int j = 0; j < 4; j++)
                        acc[j] = _mm256_fmadd_ps(load_f16(k + d0 + 8 * j), _mm256_loadu_ps(q + d0 + 8 * j), acc[j]);
                x[p] = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
            }
            __m256 dots = fold8_lone(x);
            if (steps < hd) { /* a tail of head_dim % 32 elements, in double */
                _Alignas(32) float f[8];
                _mm256_store_ps(f, dots);
                for (int p = 0; p < 8 && t0 + p < n; p++) {
                    const uint16_t *k = row_at(a, qq, 0, t0 + p);
                    double dot = f[p];
                    for (int32_t d = steps; d < hd; d++) dot += (double)(_cvtsh_ss(k[d]) * q[d]);
                    f[p] = (float)dot;
                }
                dots = _mm256_load_ps(f);
            }
            __m256 scv = _mm256_mul_ps(dots, _mm256_set1_ps(a->scale));
            if (n - t0 < 8) scv = live_lanes(scv, t0, n);
            _mm256_storeu_ps(sc + t0, scv);
            vmax = _mm256_max_ps(vmax, scv);
        }
        const float mx = hmax(vmax);
        double sum = 0.0;
        const __m256 vmx = _mm256_set1_ps(mx);
        for (int32_t t0 = 0; t0 < n; t0 += 8) {
            __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(sc + t0), vmx)); /* padding: -inf, e = 0 */
            _mm256_storeu_ps(sc + t0, e);
            sum += (double)hsum1(e);
        }
        const __m256 inv = _mm256_set1_ps((float)(1.0 / sum));
        for (int32_t t0 = 0; t0 < n; t0 += 8)
            _mm256_storeu_ps(sc + t0, round_f16_ps(_mm256_mul_ps(_mm256_loadu_ps(sc + t0), inv)));
        /* V: set j (hd floats at acc + j * hd) sums positions t = j, j + 32,
         * ... in order, eight vectors of the head in registers at a time */
        float *acc = qq->lanes;
        for (int32_t x = 0; x < TD_ATTN_LANE_SETS * hd; x++) acc[x] = 0.0f;
        for (int32_t c0 = 0; c0 < nv; c0 += 8) {
            const int32_t cn = nv - c0 < 8 ? nv - c0 : 8;
            for (int32_t j = 0; j < TD_ATTN_LANE_SETS && j < n; j++) {
                __m256 o[8];
                for (int32_t k = 0; k < 8; k++) o[k] = _mm256_setzero_ps();
                for (int32_t t = j; t < n; t += TD_ATTN_LANE_SETS) {
                    const uint16_t *v = row_at(a, qq, 1, t) + 8 * c0;
                    const __m256 w = _mm256_broadcast_ss(sc + t);
                    UNROLL8 for (int32_t k = 0; k < 8; k++)
                        if (k < cn) o[k] = _mm256_fmadd_ps(load_f16(v + 8 * k), w, o[k]);
                }
                for (int32_t k = 0; k < cn; k++) _mm256_storeu_ps(acc + (size_t)j * hd + 8 * (c0 + k), o[k]);
            }
        }
        for (int32_t c = 0; c < nv; c++) {
            __m256 sl[8];
            for (int l = 0; l < 8; l++) {
                const float *at = acc + 8 * c;
                sl[l] = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(at + (size_t)l * hd), _mm256_loadu_ps(at + (size_t)(16 + l) * hd)),
                                      _mm256_add_ps(_mm256_loadu_ps(at + (size_t)(8 + l) * hd), _mm256_loadu_ps(at + (size_t)(24 + l) * hd)));
            }
            __m256 t0 = _mm256_add_ps(sl[0], sl[4]), t1 = _mm256_add_ps(sl[1], sl[5]);
            __m256 t2 = _mm256_add_ps(sl[2], sl[6]), t3 = _mm256_add_ps(sl[3], sl[7]);
            _mm256_storeu_ps(qq->out + 8 * c, _mm256_add_ps(_mm256_add_ps(t0, t1), _mm256_add_ps(t2, t3)));
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
