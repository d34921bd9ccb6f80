/* quant_colwise_avx2.c — the TD_NUMERICS_FAST kernels of Q4_1 and Q8_0:
 * one vector lane per weight row (output column), so each block's float
 * work — a convert, a product of the two scales, one or two fmas — is done
 * once per 32 weights, row and column instead of twice per 32 as the
 * interleaved kernels did. Built with -mavx2 -mfma -mf16c on ymm (8 columns,
 * maddubs + madd) and, through quant_colwise_avx512.c with TD_QUANT_VNNI, on
 * zmm (16 columns, vpdpbusd).
 *
 * The order per output (weight row o, activation row r), in every build and
 * for every tile height, output range and chunking:
 *     acc = 0
 *     for each block b, first to last:
 *         acc = fma((float)isum_b, dw_b * dx_b, acc)       isum: exact integer
 *         acc = fma(mw_b, sx_b, acc)                        Q4_1 only
 *     y = acc
 * where dw, mw are the weight block's scale and minimum, dx the activation
 * block's scale and sx its d * sum(codes) field (Q8_1). Lanes never mix, so
 * the results depend neither on the batch nor on which columns a thread
 * takes; the integer sums are the same with maddubs or vpdpbusd, so AVX2 and
 * AVX512-VNNI give the same bits (test_quant_vnni), and
 * test_quant_fast_order checks them against a scalar model of this order.
 *
 * Two layouts, the same bits. The engine reads the tiled copy
 * (quant_tiled.c: each block of 16 columns stored as it is loaded here),
 * one linear stream. td_quant_matmul on GGUF's rows loads each block of a
 * tile's columns and transposes it in registers (4x4 dwords per 128-bit
 * lane) once for all activation rows of the tile; a one-row pass reads 16
 * rows side by side that way, ~10 % slower (docs/benchmarks.md).
 */
#include <string.h>

#include "quant/quant_impl.h"
#include "quant/quant_simd.h"

#ifdef TD_QUANT_VNNI
#define COLS 16
typedef __m512i vi;
typedef __m512 vf;
#else
#define COLS 8
typedef __m256i vi;
typedef __m256 vf;
#endif

#define TILE_ROWS 8          /* activation rows per pass over a column tile */
#define O_BLOCK (4 * COLS)   /* columns kept in cache while every row tile passes */
#define PREP_PAIRS 6144      /* (row, block) scale pairs in the stack scratch: 48 KiB */

enum ckind { C_Q4_1, C_Q8_0 };

INLINE size_t wb_of(enum ckind k) { return k == C_Q4_1 ? 20 : 34; }
INLINE size_t xb_of(enum ckind k) { return k == C_Q4_1 ? 36 : 34; }
INLINE size_t xqs_of(enum ckind k) { return k == C_Q4_1 ? 4 : 2; }
/* One block of a 16-column tile in the tiled copy: 16 header dwords, then
 * the code vectors (4 for Q4_1, 8 for Q8_0) of 16 x 4 bytes. */
INLINE size_t tile_block_bytes(enum ckind k) { return td_quant_tile_block_bytes(k == C_Q4_1); }

/* An activation block's prepared scalars: its scale as float, and for Q8_1
 * the s field as float (Q4_1), for Q8_0 -128 * sum(codes) as an integer (the
 * start of the VNNI sum over w + 128, which cancels the bias). */
typedef union prep_word {
    float f;
    int32_t i;
} prep_word;

/* ---- the ISA-specific pieces ---- */

#ifdef TD_QUANT_VNNI
INLINE vi load_x4(const uint8_t *const *col, size_t off, int i) {
    /* lane chunk j holds column i + 4j */
    __m512i z = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(col[i] + off)));
    z = _mm512_inserti32x4(z, _mm_loadu_si128((const __m128i *)(col[i + 4] + off)), 1);
    z = _mm512_inserti32x4(z, _mm_loadu_si128((const __m128i *)(col[i + 8] + off)), 2);
    return _mm512_inserti32x4(z, _mm_loadu_si128((const __m128i *)(col[i + 12] + off)), 3);
}
#define UNPACKLO32 _mm512_unpacklo_epi32
#define UNPACKHI32 _mm512_unpackhi_epi32
#define UNPACKLO64 _mm512_unpacklo_epi64
#define UNPACKHI64 _mm512_unpackhi_epi64
#define AND_ _mm512_and_si512
#define SRLI16 _mm512_srli_epi16
#define SET1_8 _mm512_set1_epi8
#define SET1_32 _mm512_set1_epi32
#define XOR_ _mm512_xor_si512
#ifdef TD_QUANT_SIMDE /* SIMDe lacks it: the same rounding, lane by lane */
static inline __m512 cvt_portable(__m512i v) {
    _Alignas(64) int32_t i[16];
    _Alignas(64) float f[16];
    _mm512_store_si512(i, v);
    for (int c = 0; c < 16; c++) f[c] = (float)i[c];
    return _mm512_load_ps(f);
}
#define CVT_ cvt_portable
#else
#define CVT_ _mm512_cvtepi32_ps
#endif
#define MUL_ _mm512_mul_ps
#define FMA_ _mm512_fmadd_ps
#define SET1_PS _mm512_set1_ps
#define ZERO_PS _mm512_setzero_ps
#define LOADV(p) _mm512_loadu_si512((const void *)(p))

/* The 16 columns' first 4 header bytes of a block; offs are byte offsets of
 * the columns' rows from base. */
INLINE vi load_heads(const uint8_t *base, vi offs) {
#ifdef TD_QUANT_SIMDE /* SIMDe has no portable gather: the same dwords, one by one */
    _Alignas(64) int32_t o[16], h[16];
    _mm512_store_si512(o, offs);
    for (int c = 0; c < 16; c++) memcpy(&h[c], base + o[c], 4);
    return _mm512_load_si512(h);
#else
    return _mm512_i32gather_epi32(offs, base, 1);
#endif
}
/* fp16 in the low (lo true) or high word of each lane, as float */
INLINE vf half_of(vi h, bool lo) {
    if (!lo) h = _mm512_srli_epi32(h, 16);
#ifdef TD_QUANT_SIMDE /* SIMDe lacks these two: 16 exact conversions, one by one */
    _Alignas(64) uint32_t w[16];
    _Alignas(64) float f[16];
    _mm512_store_si512(w, h);
    for (int c = 0; c < 16; c++) f[c] = td_fp16_to_f32((uint16_t)w[c]);
    return _mm512_load_ps(f);
#else
    return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h));
#endif
}
INLINE vi col_offsets(size_t w_stride, int ncols) {
    const __m512i c = _mm512_min_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                       _mm512_set1_epi32(ncols - 1));
    return _mm512_mullo_epi32(c, _mm512_set1_epi32((int)w_stride));
}
/* a short last tile goes through memory: it comes once per tile row */
INLINE void store_cols(float *y, vf v, int ncols) {
    if (ncols == COLS) {
        _mm512_storeu_ps(y, v);
        return;
    }
    _Alignas(64) float t[16];
    _mm512_store_ps(t, v);
    memcpy(y, t, (size_t)ncols * sizeof *t);
}
INLINE vf load_cols(const float *y, int ncols) {
    if (ncols == COLS) return _mm512_loadu_ps(y);
    _Alignas(64) float t[16] = {0};
    memcpy(t, y, (size_t)ncols * sizeof *t);
    return _mm512_load_ps(t);
}
#else
INLINE vi load_x4(const uint8_t *const *col, size_t off, int i) {
    return _mm256_set_m128i(_mm_loadu_si128((const __m128i *)(col[i + 4] + off)),
                            _mm_loadu_si128((const __m128i *)(col[i] + off)));
}
#define UNPACKLO32 _mm256_unpacklo_epi32
#define UNPACKHI32 _mm256_unpackhi_epi32
#define UNPACKLO64 _mm256_unpacklo_epi64
#define UNPACKHI64 _mm256_unpackhi_epi64
#define AND_ _mm256_and_si256
#define SRLI16 _mm256_srli_epi16
#define SET1_8 _mm256_set1_epi8
#define SET1_32 _mm256_set1_epi32
#define XOR_ _mm256_xor_si256
#define CVT_ _mm256_cvtepi32_ps
#define MUL_ _mm256_mul_ps
#define FMA_ _mm256_fmadd_ps
#define SET1_PS _mm256_set1_ps
#define ZERO_PS _mm256_setzero_ps
#define LOADV(p) _mm256_loadu_si256((const __m256i *)(p))

INLINE vi load_heads(const uint8_t *base, vi offs) { return _mm256_i32gather_epi32((const int *)base, offs, 1); }
INLINE vf half_of(vi h, bool lo) {
    /* the chosen word of each dword to the low 8 bytes of each 128-bit lane */
    const __m256i pick = lo ? _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 4, 5,
                                               8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1)
                            : _mm256_setr_epi8(2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1, 2, 3, 6,
                                               7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1);
    __m256i w = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(h, pick), 0x08);
    return _mm256_cvtph_ps(_mm256_castsi256_si128(w));
}
INLINE vi col_offsets(size_t w_stride, int ncols) {
    const __m256i c = _mm256_min_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(ncols - 1));
    return _mm256_mullo_epi32(c, _mm256_set1_epi32((int)w_stride));
}
INLINE __m256i lane_mask(int ncols) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(ncols), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
INLINE void store_cols(float *y, vf v, int ncols) {
    if (ncols == COLS) _mm256_storeu_ps(y, v);
    else _mm256_maskstore_ps(y, lane_mask(ncols), v);
}
INLINE vf load_cols(const float *y, int ncols) {
    if (ncols == COLS) return _mm256_loadu_ps(y);
    return _mm256_maskload_ps(y, lane_mask(ncols));
}
#endif

/* 4x4 transpose of dwords within each 128-bit lane: out[k] lane (4j + i)
 * is dword k of in[i]'s chunk j, i.e. dword k of column 4j + i's piece. */
INLINE void transpose4(const vi in[4], vi out[4]) {
    vi a = UNPACKLO32(in[0], in[1]), b = UNPACKHI32(in[0], in[1]);
    vi c = UNPACKLO32(in[2], in[3]), d = UNPACKHI32(in[2], in[3]);
    out[0] = UNPACKLO64(a, c);
    out[1] = UNPACKHI64(a, c);
    out[2] = UNPACKLO64(b, d);
    out[3] = UNPACKHI64(b, d);
}

/* The 8 code vectors of one block of the tile's columns: w[k] lane c holds
 * the 4 codes of column c that meet activation codes 4k..4k+3. Q4_1: byte i
 * of a block packs element i (low nibble) and i + 16 (high); Q8_0 codes are
 * fed as w + 128 on VNNI (unsigned, as vpdpbusd wants) and raw on AVX2. */
INLINE void block_codes(enum ckind k, const uint8_t *const *col, size_t off, vi w[8]) {
    vi z[4], t[4];
    if (k == C_Q4_1) {
        UNROLL
        for (int i = 0; i < 4; i++) z[i] = load_x4(col, off + 4, i);
        transpose4(z, t);
        const vi m4 = SET1_8(0x0F);
        UNROLL
        for (int j = 0; j < 4; j++) {
            w[j] = AND_(t[j], m4);
            w[j + 4] = AND_(SRLI16(t[j], 4), m4);
        }
        return;
    }
    UNROLL
    for (int h = 0; h < 2; h++) {
        UNROLL
        for (int i = 0; i < 4; i++) z[i] = load_x4(col, off + 2 + 16 * (size_t)h, i);
        transpose4(z, w + 4 * h);
    }
#ifdef TD_QUANT_VNNI
    UNROLL
    for (int j = 0; j < 8; j++) w[j] = XOR_(w[j], SET1_8((char)0x80));
#endif
}

/* Exact integer sum per lane of the block's 32 products: weights w (as
 * block_codes gave them, and for AVX2 Q8_0 also aw = |w|) against the
 * activation codes at xq, each dword broadcast to every lane. */
INLINE vi block_isum(enum ckind k, const vi w[8], const vi aw[8], const uint8_t *xq, prep_word bias) {
#ifdef TD_QUANT_VNNI
    (void)aw;
    vi s = k == C_Q8_0 ? SET1_32(bias.i) : _mm512_setzero_si512();
    UNROLL
    for (int j = 0; j < 8; j++) {
        int32_t x;
        memcpy(&x, xq + 4 * j, 4);
        s = _mm512_dpbusd_epi32(s, w[j], _mm512_set1_epi32(x));
    }
    return s;
#else
    (void)bias;
    if (k == C_Q4_1) {
        /* 8 x 2 products per int16 lane: at most 16 * 15 * 128 < 2^15 */
        vi p = _mm256_setzero_si256();
        UNROLL
        for (int j = 0; j < 8; j++) {
            int32_t x;
            memcpy(&x, xq + 4 * j, 4);
            p = _mm256_add_epi16(p, _mm256_maddubs_epi16(w[j], _mm256_set1_epi32(x)));
        }
        return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
    }
    /* |w| * (x * sign w): pair sums up to 2 * 128 * 127, widened per vector */
    vi s = _mm256_setzero_si256();
    UNROLL
    for (int j = 0; j < 8; j++) {
        int32_t x;
        memcpy(&x, xq + 4 * j, 4);
        vi sx = _mm256_sign_epi8(_mm256_set1_epi32(x), w[j]);
        s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(aw[j], sx), _mm256_set1_epi16(1)));
    }
    return s;
#endif
}

/* Where a column tile's weights come from: GGUF's rows (col[c], column c's
 * row clamped to the last real column; offs their byte offsets from col[0])
 * or, with tile set, the tiled copy (td_quant_tile): tile points at the
 * tile's block 0, plus 32 bytes for the upper half of a 16-column tile in
 * the 8-column AVX2 build. */
typedef struct wsrc {
    const uint8_t *const *col;
    vi offs;
    const uint8_t *tile;
} wsrc;

/* Blocks [b0, b1) of one column tile against nr activation rows (row r's
 * block b0 at x + r * x_stride; its prepared pairs at prep + r *
 * prep_stride, from block b0), accumulating into acc[r]. GGUF rows fetch
 * the span bytes at next (the following tile's first row: an integer, as
 * past the last tile it is no object's address, and a prefetch never
 * faults) while this tile computes; a tiled copy is one linear stream,
 * fetched TD_PREFETCH_AHEAD bytes ahead. */
INLINE void col_tile(enum ckind k, int nr, wsrc src, int64_t b0, int64_t b1, const uint8_t *x, size_t x_stride,
                     const prep_word *prep, size_t prep_stride, uintptr_t next, size_t span, vf *acc) {
    const size_t wb = wb_of(k), xb = xb_of(k), bt = tile_block_bytes(k);
    const int64_t nblk = b1 - b0;
    const size_t per_block = nblk > 0 ? (span + (size_t)nblk - 1) / (size_t)nblk : 0;
    vf a[TILE_ROWS];
    UNROLL
    for (int r = 0; r < nr; r++) a[r] = acc[r];
    for (int64_t b = b0; b < b1; b++) {
        vi w[8], aw[8], head;
        if (src.tile) {
            const uint8_t *tb = src.tile + (size_t)b * bt;
            td_quant_prefetch_ahead(tb, bt);
            head = LOADV(tb);
            if (k == C_Q4_1) {
                const vi m4 = SET1_8(0x0F);
                UNROLL
                for (int j = 0; j < 4; j++) {
                    const vi t = LOADV(tb + 64 + 64 * j);
                    w[j] = AND_(t, m4);
                    w[j + 4] = AND_(SRLI16(t, 4), m4);
                }
            } else {
                UNROLL
                for (int j = 0; j < 8; j++) w[j] = LOADV(tb + 64 + 64 * j);
#ifdef TD_QUANT_VNNI
                UNROLL
                for (int j = 0; j < 8; j++) w[j] = XOR_(w[j], SET1_8((char)0x80));
#endif
            }
        } else {
            const size_t off = (size_t)b * wb;
            for (size_t l = 0; l < per_block; l += 64)
                _mm_prefetch((const char *)(next + (size_t)(b - b0) * per_block + l), _MM_HINT_T1);
            block_codes(k, src.col, off, w);
            head = load_heads(src.col[0] + off, src.offs);
        }
#ifndef TD_QUANT_VNNI
        if (k == C_Q8_0) {
            UNROLL
            for (int j = 0; j < 8; j++) aw[j] = _mm256_sign_epi8(w[j], w[j]);
        }
#endif
        const vf dw = half_of(head, true);
        const vf mw = k == C_Q4_1 ? half_of(head, false) : dw;
        UNROLL
        for (int r = 0; r < nr; r++) {
            const prep_word *p = prep + (size_t)r * prep_stride + 2 * (size_t)(b - b0);
            const uint8_t *xq = x + (size_t)r * x_stride + (size_t)(b - b0) * xb + xqs_of(k);
            const vi s = block_isum(k, w, aw, xq, p[1]);
            a[r] = FMA_(CVT_(s), MUL_(dw, SET1_PS(p[0].f)), a[r]);
            if (k == C_Q4_1) a[r] = FMA_(mw, SET1_PS(p[1].f), a[r]);
        }
    }
    UNROLL
    for (int r = 0; r < nr; r++) acc[r] = a[r];
}

/* Prepares blocks [b0, b1) of one activation row into dst (2 words each). */
INLINE void prep_row(enum ckind k, const uint8_t *xrow, int64_t b0, int64_t b1, prep_word *dst) {
    const size_t xb = xb_of(k);
    for (int64_t b = b0; b < b1; b++, dst += 2) {
        const uint8_t *blk = xrow + (size_t)b * xb;
        uint16_t h[2];
        memcpy(h, blk, sizeof h);
        dst[0].f = _cvtsh_ss(h[0]); /* F16C: exact, as td_fp16_to_f32, without a call */
        if (k == C_Q4_1) {
            dst[1].f = _cvtsh_ss(h[1]);
        } else {
            int32_t sum = 0;
            for (int i = 0; i < 32; i++) sum += (int8_t)blk[2 + i];
            dst[1].i = -128 * sum;
        }
    }
}

/* A matrix in one of the two layouts: GGUF rows (W, w_stride), or the tiled
 * copy (T set; tile_stride bytes per 16-column tile). */
typedef struct layout {
    const uint8_t *W;
    size_t w_stride;
    const uint8_t *T;
    size_t tile_stride;
} layout;

/* Columns [c0, c0 + ncols) (ncols <= COLS) over nr activation rows (at x,
 * block b0 first), blocks [b0, b1). acc_mem NULL: start from 0 and store to
 * y; else the accumulators come from (unless b0 is the first block, first)
 * and go back to acc_mem[r] (COLS floats each). */
INLINE void tile_rows(enum ckind k, int nr, const layout *L, int64_t c0, int ncols, int64_t b0, int64_t b1,
                      bool first, const uint8_t *x, size_t x_stride, const prep_word *prep, size_t prep_stride,
                      float *acc_mem, float *y, int64_t y_stride) {
    const uint8_t *col[COLS];
    wsrc src = {col, SET1_32(0), NULL};
    uintptr_t next = 0;
    size_t span = 0;
    if (L->T) {
        src.tile = L->T + (size_t)(c0 / TD_QUANT_TILE_COLS) * L->tile_stride + (size_t)(c0 % TD_QUANT_TILE_COLS) * 4;
    } else {
        for (int c = 0; c < COLS; c++) col[c] = L->W + (size_t)(c0 + (c < ncols ? c : ncols - 1)) * L->w_stride;
        src.offs = col_offsets(L->w_stride, ncols);
        next = (uintptr_t)L->W + (size_t)(c0 + COLS) * L->w_stride + (size_t)b0 * wb_of(k);
        span = (size_t)(b1 - b0) * wb_of(k) * COLS;
    }
    vf acc[TILE_ROWS];
    UNROLL
    for (int r = 0; r < nr; r++) acc[r] = acc_mem && !first ? load_cols(acc_mem + r * COLS, COLS) : ZERO_PS();
    col_tile(k, nr, src, b0, b1, x, x_stride, prep, prep_stride, next, span, acc);
    UNROLL
    for (int r = 0; r < nr; r++) {
        if (acc_mem) store_cols(acc_mem + r * COLS, acc[r], COLS);
        else store_cols(y + r * y_stride + c0, acc[r], ncols);
    }
}

/* One body per format and tile height, reached through one call per tile
 * (its cost is nothing beside a tile's blocks): inlined into both paths of
 * the driver they would be compiled twice over, and the sanitizer builds
 * take minutes on them. */
#define TILE_ARGS                                                                                          \
    int nr, const layout *L, int64_t c0, int ncols, int64_t b0, int64_t b1, bool first, const uint8_t *x,   \
        size_t x_stride, const prep_word *prep, size_t prep_stride, float *acc_mem, float *y, int64_t y_stride
static __attribute__((noinline)) void tile_rows_q4_1(TILE_ARGS) {
#define ROWS(n) tile_rows(C_Q4_1, n, L, c0, ncols, b0, b1, first, x, x_stride, prep, prep_stride, acc_mem, y, y_stride)
    TD_TILE_DISPATCH(nr, ROWS)
#undef ROWS
}
static __attribute__((noinline)) void tile_rows_q8_0(TILE_ARGS) {
#define ROWS(n) tile_rows(C_Q8_0, n, L, c0, ncols, b0, b1, first, x, x_stride, prep, prep_stride, acc_mem, y, y_stride)
    TD_TILE_DISPATCH(nr, ROWS)
#undef ROWS
}
#undef TILE_ARGS

INLINE void tile_rows_nr(enum ckind k, int nr, const layout *L, int64_t c0, int ncols, int64_t b0, int64_t b1,
                         bool first, const uint8_t *x, size_t x_stride, const prep_word *prep, size_t prep_stride,
                         float *acc_mem, float *y, int64_t y_stride) {
    (k == C_Q4_1 ? tile_rows_q4_1 : tile_rows_q8_0)(nr, L, c0, ncols, b0, b1, first, x, x_stride, prep, prep_stride,
                                                     acc_mem, y, y_stride);
}

/* The driver, for blocks [b0, b1) of every weight row (X: each activation
 * row's block b0). Column tiles go in blocks of O_BLOCK columns that stay
 * in cache while every row tile passes over them, so each weight comes from
 * memory once. The activation rows' scalars are prepared into a stack
 * scratch: for all rows at once when they fit, else for as many rows as fit
 * (the column blocks then run once per batch of rows); rows too long for
 * even one tile of rows go in chunks of blocks, the accumulators waiting in
 * memory between chunks. Every path runs the same operations per output. */
INLINE void colwise_run(enum ckind k, const layout *L, int64_t b0, int64_t b1, int64_t o_lo, int64_t o_hi,
                        const uint8_t *X, size_t x_stride, int64_t n_rows, float *y, int64_t y_stride) {
    _Alignas(64) prep_word prep[2 * PREP_PAIRS];
    const int64_t nb = b1 - b0;
    const size_t xb = xb_of(k);
    if (nb * (n_rows < TILE_ROWS ? n_rows : TILE_ROWS) <= PREP_PAIRS) {
        int64_t batch = PREP_PAIRS / nb;
        if (batch < n_rows) batch -= batch % TILE_ROWS;
        for (int64_t rb0 = 0; rb0 < n_rows; rb0 += batch) {
            const int64_t rb1 = rb0 + batch < n_rows ? rb0 + batch : n_rows;
            for (int64_t r = rb0; r < rb1; r++)
                prep_row(k, X + (size_t)r * x_stride, 0, nb, prep + (size_t)(r - rb0) * 2 * (size_t)nb);
            for (int64_t o0 = o_lo; o0 < o_hi; o0 += O_BLOCK) {
                const int64_t o1 = o0 + O_BLOCK < o_hi ? o0 + O_BLOCK : o_hi;
                for (int64_t r0 = rb0; r0 < rb1; r0 += TILE_ROWS) {
                    const int nr = rb1 - r0 < TILE_ROWS ? (int)(rb1 - r0) : TILE_ROWS;
                    for (int64_t c0 = o0; c0 < o1; c0 += COLS)
                        tile_rows_nr(k, nr, L, c0, o1 - c0 < COLS ? (int)(o1 - c0) : COLS, b0, b1, true,
                                     X + (size_t)r0 * x_stride, x_stride, prep + (size_t)(r0 - rb0) * 2 * (size_t)nb,
                                     2 * (size_t)nb, NULL, y + r0 * y_stride, y_stride);
                }
            }
        }
        return;
    }
    const int64_t cb = PREP_PAIRS / TILE_ROWS; /* blocks per chunk */
    _Alignas(64) float acc_mem[O_BLOCK / COLS][TILE_ROWS * COLS];
    for (int64_t o0 = o_lo; o0 < o_hi; o0 += O_BLOCK) {
        const int64_t o1 = o0 + O_BLOCK < o_hi ? o0 + O_BLOCK : o_hi;
        for (int64_t r0 = 0; r0 < n_rows; r0 += TILE_ROWS) {
            const int nr = n_rows - r0 < TILE_ROWS ? (int)(n_rows - r0) : TILE_ROWS;
            const uint8_t *Xr = X + (size_t)r0 * x_stride;
            for (int64_t c = 0; c < nb; c += cb) {
                const int64_t c1 = c + cb < nb ? c + cb : nb;
                for (int r = 0; r < nr; r++)
                    prep_row(k, Xr + (size_t)r * x_stride, c, c1, prep + (size_t)r * 2 * (size_t)cb);
                for (int64_t c0 = o0; c0 < o1; c0 += COLS)
                    tile_rows_nr(k, nr, L, c0, o1 - c0 < COLS ? (int)(o1 - c0) : COLS, b0 + c, b0 + c1, c == 0,
                                 Xr + (size_t)c * xb, x_stride, prep, 2 * (size_t)cb, acc_mem[(c0 - o0) / COLS],
                                 NULL, 0);
            }
            for (int64_t c0 = o0; c0 < o1; c0 += COLS) {
                const int ncols = o1 - c0 < COLS ? (int)(o1 - c0) : COLS;
                for (int r = 0; r < nr; r++)
                    memcpy(y + (r0 + r) * y_stride + c0, acc_mem[(c0 - o0) / COLS] + r * COLS,
                           (size_t)ncols * sizeof(float));
            }
        }
    }
}

INLINE void colwise_matmul(enum ckind k, const void *W, size_t w_stride, int64_t n_in, int64_t o_lo, int64_t o_hi,
                           const void *xq, size_t x_stride, int64_t n_rows, float *y, int64_t y_stride) {
    const layout L = {W, w_stride, NULL, 0};
    colwise_run(k, &L, 0, n_in / TD_QK, o_lo, o_hi, xq, x_stride, n_rows, y, y_stride);
}

/* Blocks [b0, b1) of a tiled copy whose rows hold nb_all blocks; o_lo a
 * multiple of 16 (td_quant_matmul_tiled checks). */
INLINE void tiled_matmul(enum ckind k, const void *T, int64_t nb_all, int64_t b0, int64_t b1, int64_t o_lo,
                         int64_t o_hi, const void *xq, size_t x_stride, int64_t n_rows, float *y, int64_t y_stride) {
    const layout L = {NULL, 0, T, (size_t)nb_all * tile_block_bytes(k)};
    colwise_run(k, &L, b0, b1, o_lo, o_hi, xq, x_stride, n_rows, y, y_stride);
}

void TD_KERNEL(matmul_q4_1_tiled)(const void *T, int64_t nb_all, int64_t b0, int64_t b1, int64_t o_lo,
                                  int64_t o_hi, const void *xq, size_t x_stride, int64_t n_rows, float *y,
                                  int64_t y_stride) {
    tiled_matmul(C_Q4_1, T, nb_all, b0, b1, o_lo, o_hi, xq, x_stride, n_rows, y, y_stride);
}

void TD_KERNEL(matmul_q8_0_tiled)(const void *T, int64_t nb_all, int64_t b0, int64_t b1, int64_t o_lo,
                                  int64_t o_hi, const void *xq, size_t x_stride, int64_t n_rows, float *y,
                                  int64_t y_stride) {
    tiled_matmul(C_Q8_0, T, nb_all, b0, b1, o_lo, o_hi, xq, x_stride, n_rows, y, y_stride);
}

void TD_KERNEL(matmul_q4_1_colwise)(const void *W, size_t w_stride, int64_t n_in, int64_t o_lo, int64_t o_hi,
                                    const void *xq, size_t x_stride, int64_t n_rows, float *y, int64_t y_stride) {
    colwise_matmul(C_Q4_1, W, w_stride, n_in, o_lo, o_hi, xq, x_stride, n_rows, y, y_stride);
}

void TD_KERNEL(matmul_q8_0_colwise)(const void *W, size_t w_stride, int64_t n_in, int64_t o_lo, int64_t o_hi,
                                    const void *xq, size_t x_stride, int64_t n_rows, float *y, int64_t y_stride) {
    colwise_matmul(C_Q8_0, W, w_stride, n_in, o_lo, o_hi, xq, x_stride, n_rows, y, y_stride);
}
