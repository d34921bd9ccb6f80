/* quant_blockwise_avx2.c — Q4_1 and Q8_0 matmuls in the operation order of
 * llama.cpp's x86 CPU build, so that the default model's logits carry the
 * reference's bits. Built with -mavx2 -mfma -mf16c.
 *
 * Per (weight row, activation row) pair and block i, in block order:
 *   lanes = int32 sums of 4 neighbouring code products (dot4: maddubs + madd,
 *           or vpdpbusd in the AVX512-VNNI build),
 *   acc   = fma(d_w * d_x, float(lanes), acc)            (8 f32 lanes)
 *   Q4_1 also: mins = fma(m_w, s_x, mins)                  (one f32)
 * and the result is hsum(acc) (upper half onto lower, then (0+2)+(1+3))
 * plus mins. The order is fixed per pair, whichever tile, range or chunk
 * computes it, so results stay batch invariant. This is slower per block
 * than TD_NUMERICS_FAST's column-wise kernels (quant_colwise_avx2.c: one
 * convert and fma per block and output column, 8 or 16 columns a vector).
 */
#include "quant/quant_impl.h"
#include "quant/quant_simd.h"


#define TILE_ROWS 8 /* activation rows sharing one unpacked weight block */
_Static_assert(TILE_ROWS == 8, "TD_TILE_DISPATCH covers heights 1 to 8");
#define O_BLOCK 32  /* weight rows kept in cache while all activation rows pass */

enum bkind { B_Q4_1, B_Q8_0 };

INLINE size_t w_bytes(enum bkind k) { return k == B_Q4_1 ? 20 : 34; }
INLINE size_t x_bytes(enum bkind k) { return k == B_Q4_1 ? 36 : 34; }


static inline float half(const uint8_t *p) {
    uint16_t h;
    __builtin_memcpy(&h, p, sizeof h);
    return _cvtsh_ss(h);
}

/* A tile of activation rows for blocks [i0, i1), block-major: the scales
 * dx[i - i0][r] (and for Q8_1 sx[i - i0][r], the block's d * sum of codes)
 * as f32, and the 32 codes qs[i - i0][r]. With the scales one multiply gives
 * d_w * d_x for all rows of a block, and one fma advances the Q4_1 min term
 * of all rows at once (lane r is row r's own chain, so the order per pair is
 * unchanged). The codes sit aligned and in the order the kernel reads them,
 * where the rows themselves (34 or 36 bytes a block) put a 32-byte load
 * across two cache lines every other block: ~10 % of an 8-row pass. Lanes
 * past the tile are 0. */
#define PREP_BLOCKS 256 /* blocks per chunk: rows of up to 8192 elements in one */

typedef struct tile_prep {
    _Alignas(32) float dx[PREP_BLOCKS][TILE_ROWS];
    _Alignas(32) float sx[PREP_BLOCKS][TILE_ROWS];
    _Alignas(32) uint8_t qs[PREP_BLOCKS][TILE_ROWS][32];
#ifdef TD_QUANT_VNNI
    /* Q8_0 on vpdpbusd: -128 * (the sum of each lane's four codes), the
     * accumulator a block's dot starts from (see q8_0_bias) */
    _Alignas(32) int32_t bias[PREP_BLOCKS][TILE_ROWS][8];
#endif
} tile_prep;

/* A Q8_0 block's eight lane sums w·x, both sides signed. vpdpbusd wants one
 * side unsigned: with u = w + 128 (w ^ 0x80 as a byte), w·x = u·x - 128·Σx,
 * so starting the accumulator at -128·Σx (per lane, from the activation
 * tile) gives w·x in one instruction, where the sign trick
 * (|w|·sign(x, w)) costs a sign per row. The same exact integers either way,
 * so the same bits. */
#ifdef TD_QUANT_VNNI
INLINE __m256i q8_0_bias(__m256i xq) {
    __m256i sum4 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8((char)0x80), xq);
    return _mm256_sub_epi32(_mm256_setzero_si256(), sum4);
}
#endif

/* A pair's running sums while its row comes in several chunks. */
typedef struct pair_state {
    __m256 acc[TILE_ROWS];
    __m256 mins;
} pair_state;

INLINE void prepare_tile(enum bkind k, int nr, int64_t i0, int64_t i1, const uint8_t *X, size_t x_stride,
                         tile_prep *ts) {
    for (int64_t i = i0; i < i1; i++) {
        for (int r = 0; r < nr; r++) {
            const uint8_t *xb = X + (size_t)r * x_stride + (size_t)i * x_bytes(k);
            ts->dx[i - i0][r] = half(xb);
            ts->sx[i - i0][r] = k == B_Q4_1 ? half(xb + 2) : 0.0f;
            _mm256_store_si256((__m256i *)ts->qs[i - i0][r], load256(xb + (k == B_Q4_1 ? 4 : 2)));
#ifdef TD_QUANT_VNNI
            if (k == B_Q8_0)
                _mm256_store_si256((__m256i *)ts->bias[i - i0][r], q8_0_bias(load256(xb + 2)));
#endif
        }
        for (int r = nr; r < TILE_ROWS; r++)
            ts->dx[i - i0][r] = ts->sx[i - i0][r] = 0.0f;
    }
}

/* Blocks [i0, i1) of one weight row against nr activation rows prepared in
 * ts. A row done in one chunk (i0 == 0, i1 == nb) keeps its sums in
 * registers; else they wait in st. */
INLINE void pair_rows(enum bkind k, int nr, const uint8_t *w, int64_t i0, int64_t i1, int64_t nb,
                      const tile_prep *ts, pair_state *st, float *y, int64_t y_stride) {
    __m256 acc[TILE_ROWS];
    __m256 mins = i0 == 0 ? _mm256_setzero_ps() : st->mins; /* lane r: row r's min term */
    UNROLL
    for (int r = 0; r < nr; r++)
        acc[r] = i0 == 0 ? _mm256_setzero_ps() : st->acc[r];
    for (int64_t i = i0; i < i1; i++) {
        const uint8_t *wb = w + (size_t)i * w_bytes(k);
        td_quant_prefetch_ahead(wb, w_bytes(k));
        /* d (and Q4_1's m) in one conversion: [d, m, -, -]; for Q8_0 the
         * second half is the first two codes, unused */
        int32_t dm_bits;
        __builtin_memcpy(&dm_bits, wb, sizeof dm_bits);
        const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128(dm_bits));
        __m256i codes, abs_codes = _mm256_setzero_si256();
        if (k == B_Q4_1) {
            /* elements 0-15 are the low nibbles, 16-31 the high ones */
            __m128i raw = _mm_loadu_si128((const __m128i *)(wb + 4));
            codes = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F));
            mins = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dm)), _mm256_load_ps(ts->sx[i - i0]), mins);
        } else {
            codes = _mm256_loadu_si256((const __m256i *)(wb + 2));
#ifdef TD_QUANT_VNNI
            codes = _mm256_xor_si256(codes, _mm256_set1_epi8((char)0x80)); /* w + 128, unsigned */
#else
            abs_codes = _mm256_sign_epi8(codes, codes); /* maddubs wants one unsigned side */
#endif
        }
        _Alignas(32) float scale[TILE_ROWS]; /* d_w * d_x per row */
        _mm256_store_ps(scale, _mm256_mul_ps(_mm256_broadcastss_ps(dm), _mm256_load_ps(ts->dx[i - i0])));
        UNROLL
        for (int r = 0; r < nr; r++) {
            __m256i xq = _mm256_load_si256((const __m256i *)ts->qs[i - i0][r]);
#ifdef TD_QUANT_VNNI
            __m256i sums = k == B_Q4_1 ? dot4(codes, xq)
                                       : dot4_add(_mm256_load_si256((const __m256i *)ts->bias[i - i0][r]), codes, xq);
            (void)abs_codes;
#else
            __m256i sums = k == B_Q4_1 ? dot4(codes, xq) : dot4(abs_codes, _mm256_sign_epi8(xq, codes));
#endif
            __m256 lanes = _mm256_cvtepi32_ps(sums);
            acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(&scale[r]), lanes, acc[r]);
        }
    }
    if (i1 < nb) {
        UNROLL
        for (int r = 0; r < nr; r++)
            st->acc[r] = acc[r];
        st->mins = mins;
        return;
    }
    _Alignas(32) float m[TILE_ROWS];
    _mm256_store_ps(m, mins);
    UNROLL
    for (int r = 0; r < nr; r++)
        y[r * y_stride] = k == B_Q4_1 ? hsum_ps(acc[r]) + m[r] : hsum_ps(acc[r]);
}

/* One weight row against one activation row (decode): the scales are
 * converted where they are used, as a lone pair needs each once. Same
 * operations as pair_rows. (Running several weight rows side by side, for
 * more independent fma chains, measured slower in the engine.) */
INLINE float one_pair(enum bkind k, const uint8_t *w, int64_t nb, const uint8_t *x) {
    __m256 acc = _mm256_setzero_ps();
    float mins = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *xb = x + (size_t)i * x_bytes(k), *wb = w + (size_t)i * w_bytes(k);
        td_quant_prefetch_ahead(wb, w_bytes(k));
        const __m256i xq = _mm256_loadu_si256((const __m256i *)(xb + (k == B_Q4_1 ? 4 : 2)));
        __m256i sums;
        if (k == B_Q4_1) {
            __m128i raw = _mm_loadu_si128((const __m128i *)(wb + 4));
            __m256i codes = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F));
            sums = dot4(codes, xq);
            mins = __builtin_fmaf(half(wb + 2), half(xb + 2), mins);
        } else {
            __m256i codes = _mm256_loadu_si256((const __m256i *)(wb + 2));
            sums = dot4(_mm256_sign_epi8(codes, codes), _mm256_sign_epi8(xq, codes));
        }
        __m256 lanes = _mm256_cvtepi32_ps(sums);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(half(wb) * half(xb)), lanes, acc);
    }
    return k == B_Q4_1 ? hsum_ps(acc) + mins : hsum_ps(acc);
}

INLINE void pair_rows_nr(enum bkind k, int nr, const uint8_t *w, int64_t i0, int64_t i1, int64_t nb,
                         const tile_prep *ts, pair_state *st, float *y, int64_t y_stride) {
#define ROWS(n) pair_rows(k, n, w, i0, i1, nb, ts, st, y, y_stride)
    TD_TILE_DISPATCH(nr, ROWS)
#undef ROWS
}

/* Weight rows go in blocks of O_BLOCK, which stay in cache while all
 * activation rows pass over them a tile at a time; a tile's scales and
 * codes are prepared per weight block (a few percent of the work). A single tile
 * (short verification) is prepared once for all weight rows; a single row
 * (decode) needs no preparing. */
INLINE void blockwise_matmul(enum bkind k, const void *W, size_t w_stride, int64_t n_in, int64_t o_lo,
                             int64_t o_hi, const void *xq, size_t x_stride, int64_t n_rows, float *y,
                             int64_t y_stride) {
    const int64_t nb = n_in / TD_QK;
    const uint8_t *Wb = W, *X = xq;
    const int64_t o_step = n_rows <= TILE_ROWS ? o_hi - o_lo : O_BLOCK;
    tile_prep ts;
    pair_state st[O_BLOCK];
    for (int64_t o0 = o_lo; o0 < o_hi; o0 += o_step) {
        const int64_t o1 = o0 + o_step < o_hi ? o0 + o_step : o_hi;
        for (int64_t r0 = 0; r0 < n_rows; r0 += TILE_ROWS) {
            const int nr = n_rows - r0 < TILE_ROWS ? (int)(n_rows - r0) : TILE_ROWS;
            const uint8_t *Xr = X + (size_t)r0 * x_stride;
            if (nr == 1) {
                for (int64_t o = o0; o < o1; o++)
                    y[r0 * y_stride + o] = one_pair(k, Wb + (size_t)o * w_stride, nb, Xr);
                continue;
            }
            if (nb <= PREP_BLOCKS) { /* the common case: whole rows, sums in registers */
                prepare_tile(k, nr, 0, nb, Xr, x_stride, &ts);
                for (int64_t o = o0; o < o1; o++)
                    pair_rows_nr(k, nr, Wb + (size_t)o * w_stride, 0, nb, nb, &ts, NULL,
                                 y + r0 * y_stride + o, y_stride);
                continue;
            }
            /* long rows in chunks, O_BLOCK weight rows at a time */
            for (int64_t ob = o0; ob < o1; ob += O_BLOCK) {
                const int64_t ob1 = ob + O_BLOCK < o1 ? ob + O_BLOCK : o1;
                for (int64_t i0 = 0; i0 < nb; i0 += PREP_BLOCKS) {
                    const int64_t i1 = i0 + PREP_BLOCKS < nb ? i0 + PREP_BLOCKS : nb;
                    prepare_tile(k, nr, i0, i1, Xr, x_stride, &ts);
                    for (int64_t o = ob; o < ob1; o++)
                        pair_rows_nr(k, nr, Wb + (size_t)o * w_stride, i0, i1, nb, &ts,
                                     &st[o - ob], y + r0 * y_stride + o, y_stride);
                }
            }
        }
    }
}

void TD_KERNEL(matmul_q4_1)(const void *W, size_t w_stride, int64_t n_in, int64_t o_lo, int64_t o_hi,
                            const void *xq, size_t x_stride, int64_t n_rows, float *y, int64_t y_stride) {
    blockwise_matmul(B_Q4_1, W, w_stride, n_in, o_lo, o_hi, xq, x_stride, n_rows, y, y_stride);
}

void TD_KERNEL(dot_q4_1)(int64_t n, float *s, const void *x, const void *y) {
    blockwise_matmul(B_Q4_1, x, 0, n, 0, 1, y, 0, 1, s, 1);
}

void TD_KERNEL(matmul_q8_0)(const void *W, size_t w_stride, int64_t n_in, int64_t o_lo, int64_t o_hi,
                            const void *xq, size_t x_stride, int64_t n_rows, float *y, int64_t y_stride) {
    blockwise_matmul(B_Q8_0, W, w_stride, n_in, o_lo, o_hi, xq, x_stride, n_rows, y, y_stride);
}

void TD_KERNEL(dot_q8_0)(int64_t n, float *s, const void *x, const void *y) {
    blockwise_matmul(B_Q8_0, x, 0, n, 0, 1, y, 0, 1, s, 1);
}
