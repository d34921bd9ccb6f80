/* test_quant_fast_order.c — TD_NUMERICS_FAST's Q4_1 and Q8_0 matmuls
 * against a scalar model of their order (one accumulator per output, blocks
 * first to last: fma((float)isum, dw * dx, acc), then for Q4_1 fma(mw, sx,
 * acc)), bit for bit; and the tiled copy (td_quant_tile,
 * td_quant_matmul_tiled) against GGUF's rows, bit for bit, whole and in
 * chunks of the inputs, for every tile height, partial tiles of columns,
 * and rows long enough to take the kernels' chunked paths. Where the CPU
 * runs AMX, the tiled kernels take tile products from 6 rows on
 * (quant_tiled_amx.c): this is the check that they keep the bits.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/quant.h"

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static float rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)(rng >> 40) / 8388608.0f - 1.0f;
}

static void fill(float *x, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) {
        float v = rnd() * scale;
        x[i] = i % 17 == 0 ? 6.0f * v : v; /* outliers now and then: codes reach both ends */
    }
}

static float half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return td_fp16_to_f32(h);
}

/* The order, spelled out on the quantized bytes of one weight row and one
 * activation row. */
static float model_dot(uint32_t t, const uint8_t *w, const uint8_t *x, int64_t nb) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int32_t isum = 0;
        if (t == TD_TYPE_Q4_1) {
            const uint8_t *wb = w + 20 * b, *xb = x + 36 * b;
            for (int i = 0; i < 16; i++) {
                isum += (wb[4 + i] & 0x0F) * (int8_t)xb[4 + i];
                isum += (wb[4 + i] >> 4) * (int8_t)xb[4 + 16 + i];
            }
            float dd = half(wb) * half(xb);
            acc = fmaf((float)isum, dd, acc);
            acc = fmaf(half(wb + 2), half(xb + 2), acc);
        } else {
            const uint8_t *wb = w + 34 * b, *xb = x + 34 * b;
            for (int i = 0; i < 32; i++) isum += (int8_t)wb[2 + i] * (int8_t)xb[2 + i];
            float dd = half(wb) * half(xb);
            acc = fmaf((float)isum, dd, acc);
        }
    }
    return acc;
}

typedef struct case_data {
    uint32_t t;
    int64_t n_in, n_out, n_rows;
    size_t wrow, xrow;
    uint8_t *W, *X;
} case_data;

static case_data make_case(uint32_t t, int64_t n_in, int64_t n_out, int64_t n_rows) {
    case_data c = {t, n_in, n_out, n_rows, td_quant_row_bytes(t, n_in), 0, NULL, NULL};
    c.xrow = td_quant_row_bytes(td_quant_traits(t)->vec_dot_type, n_in);
    float *w = malloc((size_t)(n_in * n_out) * sizeof *w), *x = malloc((size_t)(n_in * n_rows) * sizeof *x);
    c.W = malloc(c.wrow * (size_t)n_out);
    c.X = malloc(c.xrow * (size_t)n_rows);
    assert_true(w && x && c.W && c.X);
    fill(w, n_in * n_out, 0.05f);
    fill(x, n_in * n_rows, 1.0f);
    for (int64_t o = 0; o < n_out; o++) td_quant_traits_ref(t)->from_float(w + o * n_in, c.W + (size_t)o * c.wrow, n_in);
    assert_int_equal(td_quant_activations(t, x, n_in, n_rows, c.X), TD_OK);
    free(w);
    free(x);
    return c;
}

static void free_case(case_data *c) {
    free(c->W);
    free(c->X);
}

static const uint32_t types[] = {TD_TYPE_Q4_1, TD_TYPE_Q8_0};

static bool fast_is_colwise(void) { return strcmp(td_quant_kernel_name(), "scalar") != 0; }

/* FAST's matmul gives the model's bits for every row count and output
 * range, short and long rows. */
static void fast_matches_scalar_model(void **state) {
    (void)state;
    if (!fast_is_colwise()) skip(); /* the scalar table keeps its own order */
    static const int64_t n_ins[] = {32, 576, 1536, 32 * 301, 32 * 800};
    int outputs = 0;
    for (size_t ti = 0; ti < 2; ti++)
        for (size_t ii = 0; ii < sizeof n_ins / sizeof n_ins[0]; ii++) {
            const int64_t n_in = n_ins[ii], n_out = 37, max_rows = n_in > 10000 ? 9 : 17;
            case_data c = make_case(types[ti], n_in, n_out, max_rows);
            float *y = malloc((size_t)(max_rows * n_out) * sizeof *y);
            assert_true(y);
            for (int64_t nr = 1; nr <= max_rows; nr += nr < 9 ? 1 : 8) {
                /* two output ranges, as threads split them */
                assert_int_equal(td_quant_matmul_in(TD_NUMERICS_FAST, c.t, c.W, n_in, 0, 21, c.X, nr, y, n_out), TD_OK);
                assert_int_equal(td_quant_matmul_in(TD_NUMERICS_FAST, c.t, c.W, n_in, 21, n_out, c.X, nr, y, n_out),
                                 TD_OK);
                for (int64_t r = 0; r < nr; r++)
                    for (int64_t o = 0; o < n_out; o++) {
                        float want = model_dot(c.t, c.W + (size_t)o * c.wrow, c.X + (size_t)r * c.xrow, n_in / 32);
                        float got = y[r * n_out + o];
                        if (memcmp(&want, &got, sizeof got) != 0)
                            fail_msg("%s n_in %lld, %lld rows, y[%lld][%lld]: kernel %.9g, model %.9g",
                                     td_quant_traits(c.t)->name, (long long)n_in, (long long)nr, (long long)r,
                                     (long long)o, got, want);
                        outputs++;
                    }
            }
            free(y);
            free_case(&c);
        }
    print_message("%d outputs of the FAST Q4_1/Q8_0 kernels (%s) equal the scalar model\n", outputs,
                  td_quant_kernel_name());
}

/* The tiled copy gives GGUF rows' bits: whole rows and chunks of the
 * inputs, tile heights 1..17, columns in tiles of 16 and a partial last
 * one, ranges starting on any multiple of 16. */
static void tiled_matches_rows(void **state) {
    (void)state;
    if (!fast_is_colwise()) {
        assert_int_equal(td_quant_tiled_bytes(TD_TYPE_Q4_1, 64, 16), 0);
        skip();
    }
    static const int64_t n_ins[] = {32, 576, 1536, 32 * 800};
    static const int64_t n_outs[] = {5, 16, 45};
    int runs = 0;
    for (size_t ti = 0; ti < 2; ti++)
        for (size_t ii = 0; ii < sizeof n_ins / sizeof n_ins[0]; ii++)
            for (size_t oi = 0; oi < sizeof n_outs / sizeof n_outs[0]; oi++) {
                /* up to 33 rows: AMX takes rows in tiles of 16 (pairs of blocks up to 8) */
                const int64_t n_in = n_ins[ii], n_out = n_outs[oi], max_rows = n_in > 10000 ? 9 : n_in > 600 ? 17 : 33;
                const int64_t nb = n_in / 32;
                case_data c = make_case(types[ti], n_in, n_out, max_rows);
                const size_t tb = td_quant_tiled_bytes(c.t, n_in, n_out);
                assert_true(tb > 0);
                uint8_t *T = malloc(tb);
                float *want = malloc((size_t)(max_rows * n_out) * sizeof *want);
                float *got = malloc((size_t)(max_rows * n_out) * sizeof *got);
                assert_true(T && want && got);
                assert_int_equal(td_quant_tile(c.t, c.W, n_in, n_out, T), TD_OK);
                /* chunks: the whole row, and (when there are 3 blocks or more) blocks [1, nb - 1) */
                for (int chunk = 0; chunk < (nb >= 3 ? 2 : 1); chunk++) {
                    const int64_t b0 = chunk ? 1 : 0, b1 = chunk ? nb - 1 : nb;
                    const size_t xoff = td_quant_row_bytes(td_quant_traits(c.t)->vec_dot_type, b0 * 32);
                    const size_t woff = td_quant_row_bytes(c.t, b0 * 32);
                    for (int64_t nr = 1; nr <= max_rows; nr++) {
                        assert_int_equal(td_quant_matmul_strided(TD_NUMERICS_FAST, c.t, c.W + woff, c.wrow,
                                                                 (b1 - b0) * 32, 0, n_out, c.X + xoff, c.xrow, nr,
                                                                 want, n_out),
                                         TD_OK);
                        memset(got, 0xFF, (size_t)(nr * n_out) * sizeof *got);
                        const int64_t mid = n_out > 16 ? 16 : n_out;
                        assert_int_equal(td_quant_matmul_tiled(c.t, T, n_in, n_out, b0, b1, 0, mid, c.X + xoff,
                                                               c.xrow, nr, got, n_out),
                                         TD_OK);
                        assert_int_equal(td_quant_matmul_tiled(c.t, T, n_in, n_out, b0, b1, mid, n_out, c.X + xoff,
                                                               c.xrow, nr, got, n_out),
                                         TD_OK);
                        if (memcmp(got, want, (size_t)(nr * n_out) * sizeof *got) != 0)
                            fail_msg("%s n_in %lld n_out %lld blocks [%lld, %lld) %lld rows: tiled differs",
                                     td_quant_traits(c.t)->name, (long long)n_in, (long long)n_out, (long long)b0,
                                     (long long)b1, (long long)nr);
                        runs++;
                    }
                }
                free(T);
                free(want);
                free(got);
                free_case(&c);
            }
    print_message("%d tiled matmuls equal GGUF rows' (%s%s)\n", runs, td_quant_kernel_name(),
                  td_quant_uses_amx() ? ", tiled ones with AMX from 6 rows" : "");
}

/* Misuse is an error, with nothing written. */
static void tiled_bad_arguments(void **state) {
    (void)state;
    if (!fast_is_colwise()) skip();
    case_data c = make_case(TD_TYPE_Q4_1, 64, 20, 2);
    uint8_t *T = malloc(td_quant_tiled_bytes(c.t, 64, 20));
    float y[40] = {0};
    assert_non_null(T);
    assert_int_equal(td_quant_tiled_bytes(TD_TYPE_Q4_0, 64, 20), 0); /* no tiled form */
    assert_int_equal(td_quant_tiled_bytes(TD_TYPE_Q4_1, 48, 20), 0); /* not whole blocks */
    assert_int_equal(td_quant_tiled_bytes(TD_TYPE_Q4_1, 64, 0), 0);
    assert_int_equal(td_quant_tile(TD_TYPE_Q4_1, NULL, 64, 20, T), TD_E_ARG);
    assert_int_equal(td_quant_tile(TD_TYPE_Q4_1, c.W, 64, 20, T), TD_OK);
    const size_t xs = c.xrow;
    assert_int_equal(td_quant_matmul_tiled(c.t, T, 64, 20, 0, 2, 8, 20, c.X, xs, 2, y, 20), TD_E_ARG);  /* o_lo % 16 */
    assert_int_equal(td_quant_matmul_tiled(c.t, T, 64, 20, 0, 3, 0, 20, c.X, xs, 2, y, 20), TD_E_ARG);  /* b1 > nb */
    assert_int_equal(td_quant_matmul_tiled(c.t, T, 64, 20, 1, 1, 0, 20, c.X, xs, 2, y, 20), TD_E_ARG);  /* empty chunk */
    assert_int_equal(td_quant_matmul_tiled(c.t, T, 64, 20, 0, 2, 0, 21, c.X, xs, 2, y, 21), TD_E_ARG);  /* o_hi > n_out */
    assert_int_equal(td_quant_matmul_tiled(c.t, T, 64, 20, 0, 2, 0, 20, c.X, xs, 2, y, 10), TD_E_ARG);  /* y_stride */
    assert_int_equal(td_quant_matmul_tiled(c.t, T, 64, 20, 0, 2, 0, 20, c.X, 10, 2, y, 20), TD_E_ARG);  /* x_stride */
    assert_int_equal(td_quant_matmul_tiled(c.t, NULL, 64, 20, 0, 2, 0, 20, c.X, xs, 2, y, 20), TD_E_ARG);
    for (int i = 0; i < 40; i++) assert_true(y[i] == 0.0f);
    assert_int_equal(td_quant_matmul_tiled(c.t, T, 64, 20, 0, 2, 0, 20, c.X, xs, 2, y, 20), TD_OK);
    free(T);
    free_case(&c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fast_matches_scalar_model),
        cmocka_unit_test(tiled_matches_rows),
        cmocka_unit_test(tiled_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
