/* quant_interleaved_avx2.c — the interleaved kernels of the legacy block
 * formats Q4_0, Q5_0 and Q5_1 (Q4_1 and Q8_0 have a reference-order kernel
 * in quant_blockwise_avx2.c and FAST's in quant_colwise_avx2.c). Built with
 * -mavx2 -mfma -mf16c, and a second time as quant_interleaved_avx512.c with
 * AVX512-VNNI (quant_simd.h: the same integer sums, one instruction); reached
 * only through the table td_quant_traits hands out after checking the CPU.
 *
 * Each (weight row, activation row) pair owns its accumulator and goes
 * through the same operations whichever tile or pass it is computed in, so
 * td_quant_matmul results do not depend on batch size or output range.
 */
#include <string.h>

#include "quant/quant_impl.h"
#include "quant/quant_simd.h"

/* Activation rows per pass over a weight group: 8 accumulators plus the
 * group's codes nearly fill the 16 registers, and one pass covers a typical
 * verification window. */
#define TILE_ROWS 8
_Static_assert(TILE_ROWS == 8, "TD_TILE_DISPATCH covers heights 1 to 8");




static inline uint32_t load_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* ---- legacy formats: one kernel body, specialised per format ----
 *
 * A group of 4 blocks shares each 256-bit vector, 8 bytes (2 int32 lanes) per
 * block: vector k holds elements 8k..8k+7 of blocks 0-3. The weight side is
 * interleaved so per group (once for all activation rows); activation rows
 * are interleaved the same way once per call into a scratch buffer, with
 * their scales already duplicated per lane. The per-pair work is then
 * vertical: 4 maddubs, adds, one madd, and one multiply/fma per group, where
 * each lane is scaled by its own block's d_x * d_y. No horizontal adds until
 * the final sum. */

#define GB 4              /* blocks per group */
#define GROUP_BYTES 192   /* scratch per activation group: 4 code vectors, dy, s */
#define SCRATCH (48 * 1024)
#define O_BLOCK 32        /* weight rows kept in cache while all activation rows pass */

enum lkind { L_Q4_0, L_Q5_0, L_Q5_1 };

INLINE size_t w_bytes(enum lkind k) {
    return k == L_Q4_0 ? 18 : k == L_Q5_0 ? 22 : 24;
}
INLINE bool act_q8_1(enum lkind k) { return k == L_Q5_1; }
INLINE size_t y_bytes(enum lkind k) { return act_q8_1(k) ? 36 : 34; }
INLINE size_t y_qs(enum lkind k) { return act_q8_1(k) ? 4 : 2; }
/* Q4_0/Q5_0 are computed on unsigned codes c = w + bias, then corrected
 * with bias * sum(y) per block (exact integers). */
INLINE int bias_shift(enum lkind k) { return k == L_Q4_0 ? 3 : k == L_Q5_0 ? 4 : 0; }
INLINE size_t qs_off(enum lkind k) {
    return k == L_Q4_0 ? 2 : k == L_Q5_0 ? 6 : 8;
}

/* The first two fp16 fields (d and m, or d and s) of nv <= 4 blocks as
 * [d0 d0 d1 d1 d2 d2 d3 d3] and [m0 m0 ... m3 m3]; missing blocks give 0.
 * Formats with one fp16 field read two bytes of codes into m: unused. */
INLINE void load_dm(const uint8_t *p, size_t stride, int nv, __m256 *d, __m256 *m) {
    __m128i v = _mm_setzero_si128();
    v = _mm_insert_epi32(v, (int)load_u32(p), 0);
    if (nv > 1) v = _mm_insert_epi32(v, (int)load_u32(p + stride), 1);
    if (nv > 2) v = _mm_insert_epi32(v, (int)load_u32(p + 2 * stride), 2);
    if (nv > 3) v = _mm_insert_epi32(v, (int)load_u32(p + 3 * stride), 3);
    __m256 f = _mm256_cvtph_ps(v); /* [d0 m0 d1 m1 d2 m2 d3 m3] */
    *d = _mm256_permutevar8x32_ps(f, _mm256_setr_epi32(0, 0, 2, 2, 4, 4, 6, 6));
    *m = _mm256_permutevar8x32_ps(f, _mm256_setr_epi32(1, 1, 3, 3, 5, 5, 7, 7));
}

/* 4x4 transpose of 8-byte pieces: q[j] holds block j's 32 bytes; v[k]
 * becomes bytes 8k..8k+7 of blocks 0, 1 | 2, 3. */
static inline void interleave32(const __m256i q[GB], __m256i v[GB]) {
    __m256i a = _mm256_unpacklo_epi64(q[0], q[1]), b = _mm256_unpackhi_epi64(q[0], q[1]);
    __m256i c = _mm256_unpacklo_epi64(q[2], q[3]), d = _mm256_unpackhi_epi64(q[2], q[3]);
    v[0] = _mm256_permute2x128_si256(a, c, 0x20);
    v[1] = _mm256_permute2x128_si256(b, d, 0x20);
    v[2] = _mm256_permute2x128_si256(a, c, 0x31);
    v[3] = _mm256_permute2x128_si256(b, d, 0x31);
}

/* Weight codes of one group, in the interleaved order: w[k] holds elements
 * 8k..8k+7 of each block (unsigned codes). */
INLINE void w_group(enum lkind k, const uint8_t *wg, int nv, __m256i w[GB]) {
    const size_t wb = w_bytes(k), qo = qs_off(k);
    /* 16 code bytes per block: byte i holds element i (low nibble) and
     * element i + 16 (high nibble) */
    __m128i q[GB];
    UNROLL
    for (int j = 0; j < GB; j++)
        q[j] = j < nv ? _mm_loadu_si128((const __m128i *)(wg + j * wb + qo)) : _mm_setzero_si128();
    __m256i t02 = _mm256_set_m128i(q[2], q[0]), t13 = _mm256_set_m128i(q[3], q[1]);
    __m256i lo = _mm256_unpacklo_epi64(t02, t13), hi = _mm256_unpackhi_epi64(t02, t13);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    w[0] = _mm256_and_si256(lo, m4);
    w[1] = _mm256_and_si256(hi, m4);
    w[2] = _mm256_and_si256(_mm256_srli_epi16(lo, 4), m4);
    w[3] = _mm256_and_si256(_mm256_srli_epi16(hi, 4), m4);
    if (k == L_Q5_0 || k == L_Q5_1) {
        /* bit e of block j's qh word is the fifth bit of element e: byte k
         * of qh serves vector k */
        const size_t ho = k == L_Q5_0 ? 2 : 4;
        __m128i h = _mm_setzero_si128();
        h = _mm_insert_epi32(h, (int)load_u32(wg + ho), 0);
        if (nv > 1) h = _mm_insert_epi32(h, (int)load_u32(wg + wb + ho), 1);
        if (nv > 2) h = _mm_insert_epi32(h, (int)load_u32(wg + 2 * wb + ho), 2);
        if (nv > 3) h = _mm_insert_epi32(h, (int)load_u32(wg + 3 * wb + ho), 3);
        const __m256i hh = _mm256_broadcastsi128_si256(h);
        const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
        /* byte v of block j's word, 8 times, for j = 0, 1 | 2, 3 */
        const __m256i first = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4,
                                               8, 8, 8, 8, 8, 8, 8, 8, 12, 12, 12, 12, 12, 12, 12, 12);
        UNROLL
        for (int v = 0; v < GB; v++) {
            const __m256i spread = _mm256_add_epi8(first, _mm256_set1_epi8((char)v));
            __m256i b = _mm256_and_si256(_mm256_shuffle_epi8(hh, spread), bit);
            b = _mm256_and_si256(_mm256_cmpeq_epi8(b, bit), _mm256_set1_epi8(0x10));
            w[v] = _mm256_or_si256(w[v], b);
        }
    }
}

/* One group of one weight row against nr prepared activation rows (row r's
 * group at ya + r * yrs): vector k of codes at +32k, dy lanes at +128, and
 * at +160 the s lanes (Q8_1) or sum(qs) lanes (Q8_0), even lanes only. */
INLINE void legacy_group(enum lkind k, int nr, int nv, const uint8_t *wg, const uint8_t *ya,
                         size_t yrs, __m256 *acc) {
    __m256i w[GB];
    w_group(k, wg, nv, w);
    __m256 dx, mx;
    load_dm(wg, w_bytes(k), nv, &dx, &mx);
    UNROLL
    for (int r = 0; r < nr; r++) {
        const uint8_t *yg = ya + (size_t)r * yrs;
        const __m256i *yv = (const __m256i *)yg;
        __m256i s;
#ifdef TD_QUANT_VNNI
        s = dot4(w[0], _mm256_load_si256(yv + 0));
        for (int v = 1; v < GB; v++)
            s = dot4_add(s, w[v], _mm256_load_si256(yv + v));
#else
        /* 4 x 2 products per s16 lane: at most 8 * 31 * 127 < 2^15, so
         * the four vectors add in int16 before one widening madd */
        __m256i p0 = _mm256_maddubs_epi16(w[0], _mm256_load_si256(yv + 0));
        __m256i p1 = _mm256_maddubs_epi16(w[1], _mm256_load_si256(yv + 1));
        __m256i p2 = _mm256_maddubs_epi16(w[2], _mm256_load_si256(yv + 2));
        __m256i p3 = _mm256_maddubs_epi16(w[3], _mm256_load_si256(yv + 3));
        __m256i p = _mm256_add_epi16(_mm256_add_epi16(p0, p1), _mm256_add_epi16(p2, p3));
        s = _mm256_madd_epi16(p, _mm256_set1_epi16(1));
#endif
        const __m256 dy = _mm256_load_ps((const float *)(yg + 128));
        const __m256i second = _mm256_load_si256((const __m256i *)(yg + 160));
        if (bias_shift(k))
            s = _mm256_sub_epi32(s, _mm256_slli_epi32(second, bias_shift(k)));
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dx, dy), acc[r]);
        if (act_q8_1(k))
            acc[r] = _mm256_fmadd_ps(mx, _mm256_castsi256_ps(second), acc[r]);
    }
}

/* Groups [g0, g1) of weight row w (nb blocks in all) against nr activation
 * rows prepared from group g0 on (row stride yrs), accumulating into acc. */
INLINE void legacy_tile(enum lkind k, int nr, const uint8_t *w, int64_t nb, const uint8_t *ya,
                        size_t yrs, int64_t g0, int64_t g1, __m256 *acc) {
    const size_t wb = w_bytes(k);
    __m256 a[TILE_ROWS];
    UNROLL
    for (int r = 0; r < nr; r++)
        a[r] = acc[r];
    const int64_t full = g1 * GB <= nb ? g1 : g1 - 1; /* the last group may be short */
    int64_t g = g0;
    for (; g < full; g++) {
        td_quant_prefetch_ahead(w + g * GB * wb, GB * wb);
        legacy_group(k, nr, GB, w + g * GB * wb, ya + (g - g0) * GROUP_BYTES, yrs, a);
    }
    if (g < g1)
        legacy_group(k, nr, (int)(nb - g * GB), w + g * GB * wb, ya + (g - g0) * GROUP_BYTES, yrs, a);
    UNROLL
    for (int r = 0; r < nr; r++)
        acc[r] = a[r];
}

/* Interleaves blocks [b0, b1) of one activation row into dst (layout as in
 * legacy_group), zero-padding the last group. The scale conversions are
 * exact, so preparing them ahead changes no result. */
INLINE void legacy_prep(enum lkind k, const uint8_t *yrow, int64_t b0, int64_t b1, uint8_t *dst) {
    const size_t yb = y_bytes(k);
    for (int64_t g = b0; g < b1; g += GB, dst += GROUP_BYTES) {
        const int nv = b1 - g < GB ? (int)(b1 - g) : GB;
        const uint8_t *yg = yrow + g * yb;
        __m256i q[GB], v[GB];
        for (int j = 0; j < GB; j++)
            q[j] = j < nv ? load256(yg + j * yb + y_qs(k)) : _mm256_setzero_si256();
        interleave32(q, v);
        for (int j = 0; j < GB; j++)
            _mm256_store_si256((__m256i *)(dst + 32 * j), v[j]);
        __m256 d, m;
        load_dm(yg, yb, nv, &d, &m);
        _mm256_store_ps((float *)(dst + 128), d);
        __m256i second = _mm256_setzero_si256();
        if (act_q8_1(k)) {
            second = _mm256_castps_si256(m);
        } else if (bias_shift(k)) { /* sum of each block's codes */
            const __m256i ones8 = _mm256_set1_epi8(1);
            __m256i t = _mm256_maddubs_epi16(ones8, v[0]);
            for (int j = 1; j < GB; j++)
                t = _mm256_add_epi16(t, _mm256_maddubs_epi16(ones8, v[j]));
            t = _mm256_madd_epi16(t, _mm256_set1_epi16(1));
            second = _mm256_add_epi32(t, _mm256_srli_epi64(t, 32));
        }
        /* even lanes only: each block owns two lanes but must count once */
        second = _mm256_blend_epi32(_mm256_setzero_si256(), second, 0x55);
        _mm256_store_si256((__m256i *)(dst + 160), second);
    }
}

/* Weight rows [o0, o1) against nr prepared activation rows (at ya, stride
 * yrs); results to y[r * y_stride + o]. The accumulators of a pair live in
 * acc_mem between calls when the rows' groups come in chunks (acc_mem then
 * holds O_BLOCK x TILE_ROWS vectors); with acc_mem NULL the whole row is
 * done in one call and stored. */
INLINE void legacy_rows(enum lkind k, int nr, const uint8_t *W, size_t w_stride, int64_t o0,
                        int64_t o1, int64_t nb, const uint8_t *ya, size_t yrs, int64_t g0,
                        int64_t g1, __m256 (*acc_mem)[TILE_ROWS], float *y, int64_t y_stride) {
    for (int64_t o = o0; o < o1; o++) {
        __m256 acc[TILE_ROWS];
        UNROLL
        for (int r = 0; r < nr; r++)
            acc[r] = acc_mem ? acc_mem[o - o0][r] : _mm256_setzero_ps();
        legacy_tile(k, nr, W + (size_t)o * w_stride, nb, ya, yrs, g0, g1, acc);
        UNROLL
        for (int r = 0; r < nr; r++) {
            if (acc_mem)
                acc_mem[o - o0][r] = acc[r];
            else
                y[r * y_stride + o] = hsum_ps(acc[r]);
        }
    }
}

INLINE void legacy_rows_nr(enum lkind k, int nr, const uint8_t *W, size_t w_stride, int64_t o0,
                           int64_t o1, int64_t nb, const uint8_t *ya, size_t yrs, int64_t g0,
                           int64_t g1, __m256 (*acc_mem)[TILE_ROWS], float *y, int64_t y_stride) {
#define ROWS(n) legacy_rows(k, n, W, w_stride, o0, o1, nb, ya, yrs, g0, g1, acc_mem, y, y_stride)
    TD_TILE_DISPATCH(nr, ROWS)
#undef ROWS
}

/* The matmul driver. Weight rows go in blocks of O_BLOCK, which stay in
 * cache while all activation rows pass over them TILE_ROWS at a time, so
 * each weight row comes from memory once. Activation rows are prepared
 * (interleaved) into the scratch: all at once when they fit (decode and
 * verification); else per block of weight rows, a tile of rows at a time;
 * and when even one tile of whole rows does not fit (very long rows), in
 * chunks of groups, the pairs' accumulators waiting in memory between
 * chunks. The operations per pair, and so the results, are the same in every
 * case. */
INLINE void legacy_matmul(enum lkind k, const void *W, size_t w_stride, int64_t n_in,
                          int64_t o_lo, int64_t o_hi, const void *xq, size_t x_stride,
                          int64_t n_rows, float *y, int64_t y_stride) {
    _Alignas(32) uint8_t scratch[SCRATCH];
    const int64_t nb = n_in / TD_QK, ng = (nb + GB - 1) / GB;
    const uint8_t *X = xq, *Wb = W;
    const bool all_fit = n_rows * ng * GROUP_BYTES <= SCRATCH;
    const bool tile_fits = TILE_ROWS * ng * GROUP_BYTES <= SCRATCH;
    const int64_t cg = all_fit || tile_fits ? ng : SCRATCH / (TILE_ROWS * GROUP_BYTES); /* per chunk */
    const size_t yrs = (size_t)cg * GROUP_BYTES;
    if (all_fit)
        for (int64_t r = 0; r < n_rows; r++)
            legacy_prep(k, X + (size_t)r * x_stride, 0, nb, scratch + r * yrs);
    __m256 acc[O_BLOCK][TILE_ROWS];
    for (int64_t o0 = o_lo; o0 < o_hi; o0 += O_BLOCK) {
        const int64_t o1 = o0 + O_BLOCK < o_hi ? o0 + O_BLOCK : o_hi;
        for (int64_t r0 = 0; r0 < n_rows; r0 += TILE_ROWS) {
            const int nr = n_rows - r0 < TILE_ROWS ? (int)(n_rows - r0) : TILE_ROWS;
            const uint8_t *Xr = X + (size_t)r0 * x_stride;
            if (all_fit || tile_fits) {
                if (!all_fit)
                    for (int r = 0; r < nr; r++)
                        legacy_prep(k, Xr + (size_t)r * x_stride, 0, nb, scratch + r * yrs);
                legacy_rows_nr(k, nr, Wb, w_stride, o0, o1, nb, scratch + (all_fit ? r0 * yrs : 0), yrs,
                               0, ng, NULL, y + r0 * y_stride, y_stride);
                continue;
            }
            for (int64_t o = 0; o < O_BLOCK; o++)
                for (int r = 0; r < TILE_ROWS; r++)
                    acc[o][r] = _mm256_setzero_ps();
            for (int64_t g0 = 0; g0 < ng; g0 += cg) {
                const int64_t g1 = g0 + cg < ng ? g0 + cg : ng;
                const int64_t b1 = g1 * GB < nb ? g1 * GB : nb;
                for (int r = 0; r < nr; r++)
                    legacy_prep(k, Xr + (size_t)r * x_stride, g0 * GB, b1, scratch + r * yrs);
                legacy_rows_nr(k, nr, Wb, w_stride, o0, o1, nb, scratch, yrs, g0, g1, acc, NULL, 0);
            }
            for (int64_t o = o0; o < o1; o++)
                for (int r = 0; r < nr; r++)
                    y[(r0 + r) * y_stride + o] = hsum_ps(acc[o - o0][r]);
        }
    }
}

#define LEGACY(name, kind)                                                                        \
    void TD_KERNEL(matmul_##name)(const void *W, size_t w_stride, int64_t n_in, int64_t o_lo,     \
                                     int64_t o_hi, const void *xq, size_t x_stride,               \
                                     int64_t n_rows, float *y, int64_t y_stride) {                \
        legacy_matmul(kind, W, w_stride, n_in, o_lo, o_hi, xq, x_stride, n_rows, y, y_stride);    \
    }                                                                                             \
    void TD_KERNEL(dot_##name)(int64_t n, float *s, const void *x, const void *y) {               \
        legacy_matmul(kind, x, 0, n, 0, 1, y, 0, 1, s, 1);                                        \
    }
LEGACY(q4_0, L_Q4_0)
LEGACY(q5_0, L_Q5_0)

LEGACY(q5_1, L_Q5_1)
