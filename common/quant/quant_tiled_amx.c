/* quant_tiled_amx.c — FAST's column-wise Q4_1 and Q8_0 kernels on the tiled
 * copy (quant_tiled.c) with AMX tiles, for passes of several activation
 * rows, with the bits of the zmm kernels (quant_colwise_avx2.c).
 *
 * Those kernels spend 8 vpdpbusd per block, row and 16 columns on the
 * integer sums, beside 3-4 float steps. Here one tile product per block
 * gives the integer sums of up to 16 activation rows x 16 columns at once:
 * A = the rows' 32 activation codes (signed, read in place from the
 * quantized rows: one tile row per activation row, the row stride as the
 * tile stride), B = the block's weight codes in the layout the tiled copy
 * already has (row k, lane c: the 4 codes of column c that meet activation
 * codes 4k..4k+3; Q4_1's nibbles are split into bytes first), C = int32
 * sums, row r holding activation row r's 16 columns, which is the vector
 * the float steps want. tdpbsud (signed x unsigned) for Q4_1 and tdpbssd
 * (signed x signed) for Q8_0 give exactly the integers vpdpbusd gives (the
 * VNNI kernel's +128 bias on Q8_0 cancels exactly), and the float steps per
 * (block, row) are the zmm kernel's, in its order:
 *     acc = fma((float)isum, dw * dx, acc);  Q4_1: acc = fma(mw, sx, acc)
 * So the results carry the same bits, per output, whatever the row count,
 * and stay batch invariant (test_quant_fast_order checks it).
 *
 * Passes of fewer than TD_QUANT_AMX_MIN_ROWS (6) rows go to the zmm
 * kernel: the tile work costs ~45 cycles a block and column tile whatever
 * the row count (loads, the product, the sums stored and read back), which
 * did not pay below 6 rows (4 rows: 1.09x the zmm kernel's time). Built with
 * -mamx-tile -mamx-int8 and the AVX-512 flags; reached only through
 * td_quant_tiled_kernel after quant_table.c found AMX usable (CPUID, the
 * OS's XCR0 bits and the kernel's permission for tile data).
 */
#include <immintrin.h>
#include <string.h>

#include "quant/quant_impl.h"
#include "quant/quant_simd.h"

#define AMX_ROWS 16        /* activation rows per tile product (the tile's M) */
#define PREP_PAIRS 6144    /* (row, block) scale pairs in the stack scratch: 48 KiB */
#define UNROLL16 _Pragma("GCC unroll 16")

enum akind { A_Q4_1, A_Q8_0 };

/* The tile registers: two blocks in flight, each with its own C, A and B
 * (macros: GCC's tile intrinsics paste the number into the instruction) */
#define TC0 0
#define TC1 1
#define TA0 2
#define TA1 3
#define TB0 4
#define TB1 5

typedef struct tile_config {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* Single blocks: C nr rows of 16 int32, A nr rows of 32 codes, B 8 rows of
 * 16 x 4 codes. Pairs (nr == PAIRED): everything 16 rows of 64 bytes. */
#define PAIRED 0
static void configure(int nr) {
    _Alignas(64) tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    const bool paired = nr == PAIRED;
    for (int t = TC0; t <= TC1; t++) cfg.rows[t] = paired ? 16 : (uint8_t)nr, cfg.colsb[t] = 64;
    for (int t = TA0; t <= TA1; t++) cfg.rows[t] = paired ? 16 : (uint8_t)nr, cfg.colsb[t] = paired ? 64 : 32;
    for (int t = TB0; t <= TB1; t++) cfg.rows[t] = paired ? 16 : 8, cfg.colsb[t] = 64;
    /* GCC's _tile_loadconfig tells the compiler it reads 8 bytes of cfg, so
     * the stores to the rest could be dropped: a barrier keeps them */
    __asm__ volatile("" : : "r"(&cfg) : "memory");
    _tile_loadconfig(&cfg);
}

INLINE size_t xb_of(enum akind k) { return k == A_Q4_1 ? 36 : 34; }
INLINE size_t xqs_of(enum akind k) { return k == A_Q4_1 ? 4 : 2; }
INLINE size_t bt_of(enum akind k) { return td_quant_tile_block_bytes(k == A_Q4_1); }

/* Q4_1's packed code vectors j = 0..3 split into the 8 rows of B: row j the
 * low nibbles (elements 4j..4j+3), row j + 4 the high (16 + 4j..). */
INLINE void split_nibbles(const uint8_t *codes, uint8_t *b) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    for (int j = 0; j < 4; j++) {
        const __m512i v = _mm512_loadu_si512((const void *)(codes + 64 * j));
        _mm512_store_si512((void *)(b + 64 * j), _mm512_and_si512(v, m4));
        _mm512_store_si512((void *)(b + 64 * (j + 4)), _mm512_and_si512(_mm512_srli_epi16(v, 4), m4));
    }
}

/* The float steps of one block for rows 0..NR-1: the zmm kernel's, on the
 * sums C left in c (row r at c + 16 r). */
INLINE void block_floats(enum akind k, int NR, const uint8_t *head, const int32_t *c, const float *prep,
                         size_t prep_stride, __m512 *a) {
    const __m512i h = _mm512_loadu_si512((const void *)head);
    const __m512 dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h));
    const __m512 mw = k == A_Q4_1 ? _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(h, 16))) : dw;
    UNROLL16
    for (int r = 0; r < NR; r++) {
        const float *p = prep + (size_t)r * prep_stride;
        const __m512 s = _mm512_cvtepi32_ps(_mm512_load_si512((const void *)(c + 16 * r)));
        a[r] = _mm512_fmadd_ps(s, _mm512_mul_ps(dw, _mm512_set1_ps(p[0])), a[r]);
        if (k == A_Q4_1) a[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(p[1]), a[r]);
    }
}

#define CHUNK 16 /* blocks of Q4_1 codes split ahead of their tile loads: 32 KiB */

/* Block j's tile products into C (tile numbers as macros: tc, ta, tb):
 * B from the split codes (Q4_1) or straight from the tiled copy (Q8_0). */
#define ISSUE(tc, ta, tb, j)                                                       \
    do {                                                                           \
        if (k == A_Q4_1) _tile_loadd(tb, split + (size_t)(j) * 512, 64);            \
        else _tile_loadd(tb, tile + (size_t)(j) * bt + 64, 64);                     \
        _tile_loadd(ta, x + (size_t)(j) * xb + xqs, x_stride);                      \
        _tile_zero(tc);                                                             \
        if (k == A_Q4_1) _tile_dpbsud(tc, ta, tb);                                  \
        else _tile_dpbssd(tc, ta, tb);                                              \
    } while (0)

/* The NR accumulators to y's rows, ncols real columns each. */
INLINE void store_rows(int NR, const __m512 *a, float *y, int64_t y_stride, int ncols) {
    UNROLL16
    for (int r = 0; r < NR; r++) {
        if (ncols == 16) {
            _mm512_storeu_ps(y + r * y_stride, a[r]);
        } else {
            _Alignas(64) float t[16];
            _mm512_store_ps(t, a[r]);
            memcpy(y + r * y_stride, t, (size_t)ncols * sizeof *t);
        }
    }
}

/* One column tile (tile: its block b0) against NR activation rows (x: row
 * 0's block b0; prep: row 0's pairs from block b0), nblk blocks, into y
 * (ncols real columns). The tiles hold NR rows (configure).
 *
 * A software pipeline, because every step goes through memory and waits
 * for it: at step i the tile products of block i are issued, block i - 1's
 * sums are stored from their tile, and block i - 2's float steps read the
 * sums stored a step earlier. Q4_1's codes are split into bytes a chunk of
 * blocks ahead, so no tile load waits on the stores that split them. */
INLINE void column_tile(enum akind k, int NR, const uint8_t *tile, int64_t nblk, const uint8_t *x,
                        size_t x_stride, const float *prep, size_t prep_stride, float *y, int64_t y_stride,
                        int ncols) {
    const size_t bt = bt_of(k), xb = xb_of(k), xqs = xqs_of(k);
    _Alignas(64) int32_t c[3][AMX_ROWS * 16];
    _Alignas(64) uint8_t split[k == A_Q4_1 ? CHUNK * 512 : 64];
    __m512 a[AMX_ROWS];
    UNROLL16
    for (int r = 0; r < NR; r++) a[r] = _mm512_setzero_ps();
    for (int64_t c0 = 0; c0 < nblk; c0 += CHUNK) {
        const int64_t n = nblk - c0 < CHUNK ? nblk - c0 : CHUNK;
        if (k == A_Q4_1)
            for (int64_t j = 0; j < n; j++) {
                td_quant_prefetch_ahead(tile + (size_t)j * bt, bt);
                split_nibbles(tile + (size_t)j * bt + 64, split + (size_t)j * 512);
            }
        for (int64_t i = 0; i < n + 2; i++) {
            if (i < n) {
                if (k == A_Q8_0) td_quant_prefetch_ahead(tile + (size_t)i * bt, bt);
                if (i & 1) ISSUE(TC1, TA1, TB1, i);
                else ISSUE(TC0, TA0, TB0, i);
            }
            if (i >= 1 && i - 1 < n) {
                if ((i - 1) & 1) _tile_stored(TC1, c[(i - 1) % 3], 64);
                else _tile_stored(TC0, c[(i - 1) % 3], 64);
            }
            if (i >= 2)
                block_floats(k, NR, tile + (size_t)(i - 2) * bt, c[(i - 2) % 3], prep + 2 * (size_t)(i - 2),
                             prep_stride, a);
        }
        tile += (size_t)n * bt;
        x += (size_t)n * xb;
        prep += 2 * (size_t)n;
    }
    store_rows(NR, a, y, y_stride, ncols);
}
#undef ISSUE

#define PAIR_MAX_BLOCKS 64 /* longest rows taken in pairs: 32 KiB of paired codes */

/* Pair p of blocks of one column tile: C rows 0..7 are block 2p's sums for
 * activation rows 0..7, rows 8..15 block 2p + 1's: A (apair, built once per
 * call) holds each row's codes of block 2p in bytes 0-31 and zeros after,
 * and in rows 8..15 zeros and then block 2p + 1's codes, so one tile
 * product with K = 64 keeps the two blocks' sums apart; B is the two
 * blocks' code rows one after the other, as the split buffer has them. */
#define ISSUE_PAIR(tc, ta, tb, j)                                                 \
    do {                                                                          \
        _tile_loadd(tb, split + (size_t)(j) * 1024, 64);                           \
        _tile_loadd(ta, apair + (size_t)(j) * 1024, 64);                           \
        _tile_zero(tc);                                                            \
        if (k == A_Q4_1) _tile_dpbsud(tc, ta, tb);                                 \
        else _tile_dpbssd(tc, ta, tb);                                             \
    } while (0)

/* column_tile for NR <= 8 rows, two blocks per tile product (configure
 * PAIRED), the same pipeline one pair at a time; apair: the pairs from
 * block b0 on. Q8_0's codes are copied too, since the tiled copy puts a
 * header between two blocks' codes. */
INLINE void column_tile_paired(enum akind k, int NR, const uint8_t *tile, int64_t nblk, const uint8_t *apair,
                               const float *prep, size_t prep_stride, float *y, int64_t y_stride, int ncols) {
    const size_t bt = bt_of(k);
    _Alignas(64) int32_t c[3][16 * 16];
    _Alignas(64) uint8_t split[(CHUNK + 1) * 512];
    __m512 a[8];
    UNROLL16
    for (int r = 0; r < NR; r++) a[r] = _mm512_setzero_ps();
    for (int64_t c0 = 0; c0 < nblk; c0 += CHUNK) {
        const int64_t n = nblk - c0 < CHUNK ? nblk - c0 : CHUNK, np = (n + 1) / 2;
        for (int64_t j = 0; j < n; j++) {
            td_quant_prefetch_ahead(tile + (size_t)j * bt, bt);
            if (k == A_Q4_1) {
                split_nibbles(tile + (size_t)j * bt + 64, split + (size_t)j * 512);
            } else {
                for (int v = 0; v < 8; v++)
                    _mm512_store_si512((void *)(split + (size_t)j * 512 + 64 * v),
                                       _mm512_loadu_si512((const void *)(tile + (size_t)j * bt + 64 + 64 * v)));
            }
        }
        if (n & 1) memset(split + (size_t)n * 512, 0, 512); /* the odd block's partner */
        for (int64_t i = 0; i < np + 2; i++) {
            if (i < np) {
                if (i & 1) ISSUE_PAIR(TC1, TA1, TB1, i);
                else ISSUE_PAIR(TC0, TA0, TB0, i);
            }
            if (i >= 1 && i - 1 < np) {
                if ((i - 1) & 1) _tile_stored(TC1, c[(i - 1) % 3], 64);
                else _tile_stored(TC0, c[(i - 1) % 3], 64);
            }
            if (i >= 2) {
                const int64_t j = 2 * (i - 2);
                block_floats(k, NR, tile + (size_t)j * bt, c[(i - 2) % 3], prep + 2 * (size_t)j, prep_stride, a);
                if (j + 1 < n)
                    block_floats(k, NR, tile + (size_t)(j + 1) * bt, c[(i - 2) % 3] + 8 * 16,
                                 prep + 2 * (size_t)(j + 1), prep_stride, a);
            }
        }
        tile += (size_t)n * bt;
        apair += (size_t)np * 1024;
        prep += 2 * (size_t)n;
    }
    store_rows(NR, a, y, y_stride, ncols);
}
#undef ISSUE_PAIR

/* The paired A of NR <= 8 activation rows (x: row 0's block b0), nblk
 * blocks: pair p at apair + 1024 p (see ISSUE_PAIR). */
INLINE void build_pairs(enum akind k, int nr, const uint8_t *x, size_t x_stride, int64_t nblk, uint8_t *apair) {
    const size_t xb = xb_of(k), xqs = xqs_of(k);
    const int64_t np = (nblk + 1) / 2;
    memset(apair, 0, (size_t)np * 1024);
    for (int64_t b = 0; b < nblk; b++) {
        uint8_t *dst = apair + (size_t)(b / 2) * 1024 + (b & 1) * (8 * 64 + 32);
        for (int r = 0; r < nr; r++) memcpy(dst + 64 * r, x + (size_t)r * x_stride + (size_t)b * xb + xqs, 32);
    }
}

/* One body per format and row count (each fully unrolled), reached through
 * one call per column tile. */
#define TILE_ARGS                                                                                              \
    const uint8_t *tile, int64_t nblk, const uint8_t *x, size_t x_stride, const uint8_t *apair, const float *prep, \
        size_t prep_stride, float *y, int64_t y_stride, int ncols
#define TILE_CALL(K, n)                                                                          \
    do {                                                                                         \
        if (apair && (n) <= 8)                                                                   \
            column_tile_paired(K, (n) <= 8 ? (n) : 8, tile, nblk, apair, prep, prep_stride, y, y_stride, ncols); \
        else                                                                                     \
            column_tile(K, n, tile, nblk, x, x_stride, prep, prep_stride, y, y_stride, ncols);   \
    } while (0)
#define DISPATCH16(nr, CALL)                                                                                  \
    switch (nr) {                                                                                             \
    case 1: CALL(1); break;  case 2: CALL(2); break;  case 3: CALL(3); break;  case 4: CALL(4); break;        \
    case 5: CALL(5); break;  case 6: CALL(6); break;  case 7: CALL(7); break;  case 8: CALL(8); break;        \
    case 9: CALL(9); break;  case 10: CALL(10); break; case 11: CALL(11); break; case 12: CALL(12); break;     \
    case 13: CALL(13); break; case 14: CALL(14); break; case 15: CALL(15); break; default: CALL(16); break;    \
    }
static __attribute__((noinline)) void column_tile_q4_1(int nr, TILE_ARGS) {
#define CALL(n) TILE_CALL(A_Q4_1, n)
    DISPATCH16(nr, CALL)
#undef CALL
}
static __attribute__((noinline)) void column_tile_q8_0(int nr, TILE_ARGS) {
#define CALL(n) TILE_CALL(A_Q8_0, n)
    DISPATCH16(nr, CALL)
#undef CALL
}
#undef TILE_CALL
#undef TILE_ARGS

/* Blocks [b0, b1) of row r's activations into pairs (dx, sx): the scale as
 * float, and Q8_1's sum field (Q4_1); exact conversions. */
INLINE void prep_row(enum akind k, const uint8_t *xrow, int64_t nb, float *dst) {
    const size_t xb = xb_of(k);
    for (int64_t b = 0; b < nb; b++, dst += 2) {
        uint16_t h[2];
        memcpy(h, xrow + (size_t)b * xb, sizeof h);
        dst[0] = _cvtsh_ss(h[0]);
        dst[1] = k == A_Q4_1 ? _cvtsh_ss(h[1]) : 0.0f;
    }
}

INLINE void amx_tiled(enum akind k, const void *T, int64_t nb_all, int64_t b0, int64_t b1, int64_t o_lo,
                      int64_t o_hi, const void *xq, size_t x_stride, int64_t n_rows, float *y, int64_t y_stride) {
    const int64_t nb = b1 - b0;
    const int64_t fit = PREP_PAIRS / nb; /* rows whose pairs the scratch holds */
    if (n_rows < TD_QUANT_AMX_MIN_ROWS || fit < AMX_ROWS) {
        (k == A_Q4_1 ? td_quant_avx512_matmul_q4_1_tiled : td_quant_avx512_matmul_q8_0_tiled)(
            T, nb_all, b0, b1, o_lo, o_hi, xq, x_stride, n_rows, y, y_stride);
        return;
    }
    _Alignas(64) float prep[2 * PREP_PAIRS];
    const size_t bt = bt_of(k), tile_stride = (size_t)nb_all * bt;
    const int64_t batch = fit - fit % AMX_ROWS;
    const uint8_t *X = xq;
    int configured = -1;
    /* up to 8 rows of rows short enough: two blocks per tile product */
    _Alignas(64) uint8_t apair_mem[PAIR_MAX_BLOCKS / 2 * 1024];
    const bool paired = k == A_Q4_1 && n_rows <= 8 && nb <= PAIR_MAX_BLOCKS;
    if (paired) build_pairs(k, (int)n_rows, X, x_stride, nb, apair_mem);
    for (int64_t rb0 = 0; rb0 < n_rows; rb0 += batch) {
        const int64_t rb1 = rb0 + batch < n_rows ? rb0 + batch : n_rows;
        for (int64_t r = rb0; r < rb1; r++) prep_row(k, X + (size_t)r * x_stride, nb, prep + (size_t)(r - rb0) * 2 * (size_t)nb);
        for (int64_t c0 = o_lo; c0 < o_hi; c0 += TD_QUANT_TILE_COLS) {
            const int ncols = o_hi - c0 < TD_QUANT_TILE_COLS ? (int)(o_hi - c0) : TD_QUANT_TILE_COLS;
            const uint8_t *tile = (const uint8_t *)T + (size_t)(c0 / TD_QUANT_TILE_COLS) * tile_stride + (size_t)b0 * bt;
            for (int64_t r0 = rb0; r0 < rb1; r0 += AMX_ROWS) {
                const int nr = rb1 - r0 < AMX_ROWS ? (int)(rb1 - r0) : AMX_ROWS;
                const int want = paired ? PAIRED : nr;
                if (want != configured) {
                    configure(want);
                    configured = want;
                }
                (k == A_Q4_1 ? column_tile_q4_1 : column_tile_q8_0)(
                    nr, tile, nb, X + (size_t)r0 * x_stride, x_stride, paired ? apair_mem : NULL,
                    prep + (size_t)(r0 - rb0) * 2 * (size_t)nb, 2 * (size_t)nb, y + r0 * y_stride + c0, y_stride,
                    ncols);
            }
        }
    }
    _tile_release();
}

void td_quant_amx_matmul_q4_1_tiled(const void *T, int64_t nb_all, int64_t b0, int64_t b1, int64_t o_lo,
                                    int64_t o_hi, const void *xq, size_t x_stride, int64_t n_rows, float *y,
                                    int64_t y_stride) {
    amx_tiled(A_Q4_1, T, nb_all, b0, b1, o_lo, o_hi, xq, x_stride, n_rows, y, y_stride);
}

void td_quant_amx_matmul_q8_0_tiled(const void *T, int64_t nb_all, int64_t b0, int64_t b1, int64_t o_lo,
                                    int64_t o_hi, const void *xq, size_t x_stride, int64_t n_rows, float *y,
                                    int64_t y_stride) {
    amx_tiled(A_Q8_0, T, nb_all, b0, b1, o_lo, o_hi, xq, x_stride, n_rows, y, y_stride);
}
