/* quant_matmul.c — td_quant_matmul, the batched matrix-vector product that
 * dominates every forward pass. It hands the work to the selected variant's
 * tiled kernel where one exists, else computes one vec_dot per (activation
 * row, output) pair. Either way each output element is reduced in one fixed
 * order, independent of n_rows and of the [o_lo, o_hi) split.
 */
#include "quant/quant_impl.h"

void td_quant_matmul_pairs(td_vec_dot_fn dot, const void *W, size_t w_stride, int64_t n_in,
                           int64_t o_lo, int64_t o_hi, const void *xq, size_t x_stride,
                           int64_t n_rows, float *y, int64_t y_stride) {
    /* weight row outermost: it is read from memory once, then from L1 */
    for (int64_t o = o_lo; o < o_hi; o++) {
        const uint8_t *w = (const uint8_t *)W + (size_t)o * w_stride;
        for (int64_t r = 0; r < n_rows; r++)
            dot(n_in, &y[r * y_stride + o], w, (const uint8_t *)xq + (size_t)r * x_stride);
    }
}

int td_quant_matmul(uint32_t wtype, const void *W, int64_t n_in, int64_t o_lo, int64_t o_hi,
                    const void *xq, int64_t n_rows, float *y, int64_t y_stride) {
    return td_quant_matmul_in(TD_NUMERICS_REFERENCE, wtype, W, n_in, o_lo, o_hi, xq, n_rows, y, y_stride);
}

int td_quant_matmul_in(td_numerics order, uint32_t wtype, const void *W, int64_t n_in, int64_t o_lo,
                       int64_t o_hi, const void *xq, int64_t n_rows, float *y, int64_t y_stride) {
    const td_type_traits *t = td_quant_traits(wtype);
    if (t == NULL || !t->weight_ok)
        return TD_E_ARG;
    return td_quant_matmul_strided(order, wtype, W, td_quant_row_bytes(wtype, n_in), n_in, o_lo, o_hi, xq,
                                   td_quant_row_bytes(t->vec_dot_type, n_in), n_rows, y, y_stride);
}

int td_quant_matmul_strided(td_numerics order, uint32_t wtype, const void *W, size_t w_stride, int64_t n_in,
                            int64_t o_lo, int64_t o_hi, const void *xq, size_t x_stride, int64_t n_rows,
                            float *y, int64_t y_stride) {
    /* a public entry point: a caller's mistake is an error, not an abort */
    const td_type_traits *t = td_quant_traits(wtype);
    if (t == NULL || !t->weight_ok)
        return TD_E_ARG;
    if (!(0 <= o_lo && o_lo <= o_hi && n_rows >= 0 && (n_rows <= 1 || y_stride >= o_hi)))
        return TD_E_ARG;
    size_t w_row = td_quant_row_bytes(wtype, n_in);
    size_t x_row = td_quant_row_bytes(t->vec_dot_type, n_in);
    if (w_row == 0 || x_row == 0 || w_stride < w_row || x_stride < x_row)
        return TD_E_ARG;
    if (o_lo == o_hi || n_rows == 0)
        return TD_OK;
    if (!W || !xq || !y)
        return TD_E_ARG;
    /* the invariant order's matmuls are FAST's; only the model's sums differ */
    if (order == TD_NUMERICS_TP_INVARIANT) order = TD_NUMERICS_FAST;
    td_matmul_fn mm = td_quant_matmul_kernel(wtype, order);
    if (mm)
        mm(W, w_stride, n_in, o_lo, o_hi, xq, x_stride, n_rows, y, y_stride);
    else
        td_quant_matmul_pairs(t->vec_dot, W, w_stride, n_in, o_lo, o_hi, xq, x_stride, n_rows, y,
                              y_stride);
    return TD_OK;
}
