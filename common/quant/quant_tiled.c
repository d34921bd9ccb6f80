/* quant_tiled.c — the tiled copy of a Q4_1 or Q8_0 matrix for FAST's
 * column-wise kernels (quant_colwise_avx2.c), and the checked entry point
 * that runs them on it.
 *
 * Layout: tiles of 16 weight rows (output columns), one after the other;
 * in a tile, its blocks in order; a block of the tile is 16 header dwords
 * (lane c: bytes 0-3 of column c's block: d and, for Q4_1, m; for Q8_0 the
 * upper half is never read and is written 0), then the code vectors, each
 * 16 x 4 bytes, lane c holding the 4 code bytes of column c that meet
 * activation codes 4j..4j+3: Q4_1 vectors j = 0..3 hold packed bytes
 * 4j..4j+3 (nibbles split in the kernel), Q8_0 vectors j = 0..7 the codes.
 * Columns past the last real one repeat it, so every lane computes on real
 * weights; the kernels store only real columns.
 */
#include <string.h>

#include "quant/quant.h"
#include "quant/quant_impl.h"

enum { TILE = TD_QUANT_TILE_COLS };

static size_t code_vectors(uint32_t t) { return td_quant_tile_code_vectors(t == TD_TYPE_Q4_1); }
static size_t block_bytes(uint32_t t) { return td_quant_tile_block_bytes(t == TD_TYPE_Q4_1); }
static size_t codes_at(uint32_t t) { return t == TD_TYPE_Q4_1 ? 4 : 2; }

size_t td_quant_tiled_bytes(uint32_t wtype, int64_t n_in, int64_t n_out) {
    if (!td_quant_tiled_kernel(wtype) || n_in <= 0 || n_out <= 0 || n_in % TD_QK != 0) return 0;
    const size_t tiles = (size_t)(n_out + TILE - 1) / TILE;
    return tiles * (size_t)(n_in / TD_QK) * block_bytes(wtype);
}

int td_quant_tile(uint32_t wtype, const void *W, int64_t n_in, int64_t n_out, void *dst) {
    if (!W || !dst || td_quant_tiled_bytes(wtype, n_in, n_out) == 0) return TD_E_ARG;
    const size_t nb = (size_t)(n_in / TD_QK), wb = td_quant_traits_ref(wtype)->block_bytes;
    const size_t row = nb * wb, bb = block_bytes(wtype), nv = code_vectors(wtype), qs = codes_at(wtype);
    const uint8_t *src = W;
    uint8_t *out = dst;
    for (int64_t t = 0; t * TILE < n_out; t++)
        for (size_t b = 0; b < nb; b++, out += bb)
            for (int c = 0; c < TILE; c++) {
                const int64_t o = t * TILE + c < n_out ? t * TILE + c : n_out - 1;
                const uint8_t *blk = src + (size_t)o * row + b * wb;
                uint8_t head[4] = {blk[0], blk[1], 0, 0};
                if (wtype == TD_TYPE_Q4_1) memcpy(head + 2, blk + 2, 2);
                memcpy(out + 4 * c, head, 4);
                for (size_t j = 0; j < nv; j++) memcpy(out + 64 + 64 * j + 4 * c, blk + qs + 4 * j, 4);
            }
    return TD_OK;
}

int td_quant_matmul_tiled(uint32_t wtype, const void *T, int64_t n_in, int64_t n_out, int64_t b0, int64_t b1,
                          int64_t o_lo, int64_t o_hi, const void *xq, size_t x_stride, int64_t n_rows, float *y,
                          int64_t y_stride) {
    td_tiled_fn fn = td_quant_tiled_kernel(wtype);
    if (!fn || td_quant_tiled_bytes(wtype, n_in, n_out) == 0) return TD_E_ARG;
    const int64_t nb = n_in / TD_QK;
    if (!(0 <= b0 && b0 < b1 && b1 <= nb && 0 <= o_lo && (o_lo % TILE == 0 || o_lo == o_hi) && o_lo <= o_hi && o_hi <= n_out &&
          n_rows >= 0 && (n_rows <= 1 || y_stride >= o_hi)))
        return TD_E_ARG;
    const size_t x_row = td_quant_row_bytes(td_quant_traits(wtype)->vec_dot_type, (b1 - b0) * TD_QK);
    if (x_stride < x_row) return TD_E_ARG;
    if (o_lo == o_hi || n_rows == 0) return TD_OK;
    if (!T || !xq || !y) return TD_E_ARG;
    fn(T, nb, b0, b1, o_lo, o_hi, xq, x_stride, n_rows, y, y_stride);
    return TD_OK;
}
