/* test_quant_vnni.c — the AVX512-VNNI builds of the integer-dot kernels
 * (quant_blockwise_avx512.c, quant_interleaved_avx512.c for the legacy
 * formats, quant_colwise_avx512.c for FAST's Q4_1/Q8_0 on GGUF rows and on
 * the tiled copy, quant_kq_avx512.c for Q4_K/Q5_K/Q6_K) against their AVX2 builds,
 * bit for bit. The VNNI sources are compiled a second time on SIMDe's
 * portable intrinsics (vnni_emul_*.c, names td_quant_vnniemu_*), so this
 * runs on any x86-64 with AVX2; where the CPU has AVX512-VNNI and AVX512-VL
 * the native build (td_quant_avx512_*) is compared as well.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/quant_impl.h"

TD_QUANT_DECLARE_DOT(vnniemu, q4_0)
TD_QUANT_DECLARE_DOT(vnniemu, q4_1)
TD_QUANT_DECLARE_DOT(vnniemu, q5_0)
TD_QUANT_DECLARE_DOT(vnniemu, q5_1)
TD_QUANT_DECLARE_DOT(vnniemu, q8_0)
TD_QUANT_DECLARE_DOT(vnniemu, q4_k)
TD_QUANT_DECLARE_DOT(vnniemu, q5_k)
TD_QUANT_DECLARE_DOT(vnniemu, q6_k)
TD_QUANT_DECLARE_COLWISE(vnniemu)

typedef void (*matmul_fn)(const void *W, size_t w_stride, int64_t n_in, int64_t o_lo, int64_t o_hi,
                          const void *xq, size_t x_stride, int64_t n_rows, float *y, int64_t y_stride);
typedef void (*dot_fn)(int64_t n, float *s, const void *x, const void *y);
typedef void (*tiled_fn)(const void *T, int64_t nb_all, int64_t b0, int64_t b1, int64_t o_lo, int64_t o_hi,
                         const void *xq, size_t x_stride, int64_t n_rows, float *y, int64_t y_stride);

/* One kernel in its three builds: AVX2, VNNI on SIMDe, native VNNI. */
typedef struct kernel {
    const char *name;
    uint32_t type;
    matmul_fn avx2, emul, native;
    dot_fn avx2_dot, emul_dot, native_dot; /* NULL for the _colwise matmuls */
    tiled_fn avx2_tiled, emul_tiled, native_tiled; /* the _colwise matmuls' tiled forms, else NULL */
} kernel;

#define LEGACY(t, T)                                                                             \
    {#t, TD_TYPE_##T, td_quant_avx2_matmul_##t, td_quant_vnniemu_matmul_##t,                      \
     td_quant_avx512_matmul_##t, td_quant_avx2_dot_##t, td_quant_vnniemu_dot_##t,                 \
     td_quant_avx512_dot_##t, NULL, NULL, NULL}
#define FAST(t, T)                                                                                      \
    {#t "_colwise", TD_TYPE_##T, td_quant_avx2_matmul_##t##_colwise, td_quant_vnniemu_matmul_##t##_colwise, \
     td_quant_avx512_matmul_##t##_colwise, NULL, NULL, NULL, td_quant_avx2_matmul_##t##_tiled,            \
     td_quant_vnniemu_matmul_##t##_tiled, td_quant_avx512_matmul_##t##_tiled}
static const kernel kernels[] = {
    LEGACY(q4_0, Q4_0), LEGACY(q4_1, Q4_1), LEGACY(q5_0, Q5_0), LEGACY(q5_1, Q5_1),
    LEGACY(q8_0, Q8_0), FAST(q4_1, Q4_1),   FAST(q8_0, Q8_0),
    LEGACY(q4_k, Q4_K), LEGACY(q5_k, Q5_K), LEGACY(q6_k, Q6_K),
};
#define N_KERNELS ((int)(sizeof kernels / sizeof kernels[0]))

static bool cpu_has_avx2(void) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
static bool cpu_has_vnni(void) {
    return cpu_has_avx2() && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw");
}

static uint64_t rng = 0x2545F4914F6CDD1DULL;
static float rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)(rng >> 40) / 8388608.0f - 1.0f;
}

/* Rows of n_in random values, heavy-tailed now and then so that codes reach
 * both ends of their range; a row of zeros and one with a single spike. */
static void fill(float *x, int64_t n_rows, int64_t n_in) {
    for (int64_t r = 0; r < n_rows; r++)
        for (int64_t i = 0; i < n_in; i++) {
            float v = rnd();
            x[r * n_in + i] = r == 1 ? 0.0f : r == 2 ? (i == 7 ? 3.0f : 0.0f) : (i % 13 == 0 ? 8.0f * v : v);
        }
}

static void put_half(uint8_t *p, uint16_t h) { memcpy(p, &h, 2); }

/* A finite fp16 scale of random sign between 2^-5 and 2^3. */
static uint16_t rnd_half(void) {
    uint32_t b = (uint32_t)((rnd() + 1.0f) * 8388608.0f);
    return (uint16_t)((b & 0x83FF) | (uint32_t)(10 + (b >> 10) % 9) << 10);
}

/* Overwrites K-quant weight rows and their Q8_K activations with random
 * bytes, so that every code, scale and min reaches both ends of its range
 * (Q4_K/Q5_K scales and mins at 63, Q6_K scales at -128 and 127,
 * activations at -128) — the extremes a quantizer rarely writes — keeping
 * only the fp16/f32 block scales finite and each Q8_K group sum true. */
static void scramble_kquant(uint32_t type, uint8_t *W, size_t w_bytes, uint8_t *X, int64_t x_blocks) {
    for (size_t i = 0; i < w_bytes; i++) W[i] = (uint8_t)((rnd() + 1.0f) * 128.0f);
    const size_t bb = td_quant_traits_ref(type)->block_bytes;
    for (size_t b = 0; b < w_bytes / bb; b++) {
        uint8_t *blk = W + b * bb;
        if (type == TD_TYPE_Q6_K) {
            put_half(blk + offsetof(td_block_q6_k, d), rnd_half());
        } else {
            put_half(blk, rnd_half());     /* d */
            put_half(blk + 2, rnd_half()); /* dmin */
        }
    }
    td_block_q8_k *y = (td_block_q8_k *)X;
    for (int64_t b = 0; b < x_blocks; b++) {
        y[b].d = rnd();
        for (int g = 0; g < 16; g++) {
            int sum = 0;
            for (int e = 0; e < 16; e++) {
                int8_t v = (int8_t)(int)((rnd() + 1.0f) * 128.0f - 128.0f);
                if (b == 0 && g == 0) v = e & 1 ? 127 : -128; /* both ends for sure */
                y[b].qs[16 * g + e] = v;
                sum += v;
            }
            y[b].bsums[g] = (int16_t)sum;
        }
    }
}

/* Every build of k on n_out x n_in weights against n_rows activation rows
 * must give the AVX2 build's bits, for several output ranges and row
 * counts (tiles of 8, a short last tile, and rows long enough to go in
 * chunks); with raw, K-quant blocks of random bytes (scramble_kquant).
 * Returns the number of builds compared. */
static int compare(const kernel *k, int64_t n_in, int64_t n_out, int64_t n_rows, bool native, bool raw) {
    const td_type_traits *wt = td_quant_traits_ref(k->type);
    const uint32_t at = wt->vec_dot_type;
    const size_t wrow = td_quant_row_bytes(k->type, n_in), xrow = td_quant_row_bytes(at, n_in);
    float *w = malloc((size_t)(n_out * n_in) * sizeof *w), *x = malloc((size_t)(n_rows * n_in) * sizeof *x);
    uint8_t *W = malloc(wrow * (size_t)n_out), *X = malloc(xrow * (size_t)n_rows);
    float *want = malloc((size_t)(n_rows * n_out) * sizeof *want), *got = malloc((size_t)(n_rows * n_out) * sizeof *got);
    assert_true(w && x && W && X && want && got);
    fill(w, n_out, n_in);
    fill(x, n_rows, n_in);
    for (int64_t o = 0; o < n_out; o++) wt->from_float(w + o * n_in, W + (size_t)o * wrow, n_in);
    td_quant_activations(k->type, x, n_in, n_rows, X);
    if (raw) scramble_kquant(k->type, W, wrow * (size_t)n_out, X, n_rows * n_in / TD_QK_K);

    k->avx2(W, wrow, n_in, 0, n_out, X, xrow, n_rows, want, n_out);
    int builds = 0;
    for (int b = 0; b < 2; b++) {
        matmul_fn f = b == 0 ? k->emul : k->native;
        if (b == 1 && !native) continue;
        memset(got, 0xFF, (size_t)(n_rows * n_out) * sizeof *got);
        /* in two output ranges, as threads split the work */
        const int64_t mid = n_out / 2;
        f(W, wrow, n_in, 0, mid, X, xrow, n_rows, got, n_out);
        f(W, wrow, n_in, mid, n_out, X, xrow, n_rows, got, n_out);
        if (memcmp(got, want, (size_t)(n_rows * n_out) * sizeof *got) != 0)
            fprintf(stderr, "# %s (%s) n_in %lld, %lld rows%s: differs from the AVX2 build\n", k->name,
                    b ? "native" : "SIMDe", (long long)n_in, (long long)n_rows, raw ? ", random bytes" : "");
        assert_memory_equal(got, want, (size_t)(n_rows * n_out) * sizeof *got);
        if (k->avx2_dot) {
            dot_fn d = b == 0 ? k->emul_dot : k->native_dot;
            float s1, s2;
            for (int64_t r = 0; r < n_rows; r++) { /* the dot of weight row r % n_out and row r */
                const uint8_t *wr = W + (size_t)(r % n_out) * wrow, *xr = X + (size_t)r * xrow;
                k->avx2_dot(n_in, &s1, wr, xr);
                d(n_in, &s2, wr, xr);
                assert_memory_equal(&s1, &s2, sizeof s1);
            }
        }
        builds++;
    }
    if (k->avx2_tiled) { /* the tiled copy: every build gives GGUF rows' bits */
        uint8_t *T = malloc(td_quant_tiled_bytes(k->type, n_in, n_out));
        assert_non_null(T);
        assert_int_equal(td_quant_tile(k->type, W, n_in, n_out, T), TD_OK);
        const int64_t mid = (n_out / 2) & ~(int64_t)15;
        for (int b = 0; b < 3; b++) {
            tiled_fn f = b == 0 ? k->avx2_tiled : b == 1 ? k->emul_tiled : k->native_tiled;
            if (b == 2 && !native) continue;
            memset(got, 0xFF, (size_t)(n_rows * n_out) * sizeof *got);
            f(T, n_in / TD_QK, 0, n_in / TD_QK, 0, mid, X, xrow, n_rows, got, n_out);
            f(T, n_in / TD_QK, 0, n_in / TD_QK, mid, n_out, X, xrow, n_rows, got, n_out);
            if (memcmp(got, want, (size_t)(n_rows * n_out) * sizeof *got) != 0)
                fprintf(stderr, "# %s tiled (%s) n_in %lld, %lld rows: differs from GGUF rows\n", k->name,
                        b == 0 ? "AVX2" : b == 1 ? "SIMDe" : "native", (long long)n_in, (long long)n_rows);
            assert_memory_equal(got, want, (size_t)(n_rows * n_out) * sizeof *got);
            builds++;
        }
        free(T);
    }
    free(w); free(x); free(W); free(X); free(want); free(got);
    return builds;
}

static void vnni_builds_match_avx2(void **state) {
    (void)state;
    if (!cpu_has_avx2()) skip(); /* the AVX2 builds are the yardstick */
    const bool native = cpu_has_vnni();
    /* widths for both block sizes (32; 256 for the K-quants), rows for
     * the legacy tiles of 8 and the K-quant tiles of 4 */
    static const int64_t n_ins[] = {32, 96, 256, 576, 1536, 2816, 32 * 300, 256 * 40};
    static const int64_t rows[] = {1, 2, 3, 4, 5, 7, 8, 9, 16, 17};
    int compared = 0;
    for (int ki = 0; ki < N_KERNELS; ki++) {
        const bool kquant = td_quant_traits_ref(kernels[ki].type)->block_elems == TD_QK_K;
        for (size_t i = 0; i < sizeof n_ins / sizeof n_ins[0]; i++) {
            if (n_ins[i] % td_quant_traits_ref(kernels[ki].type)->block_elems != 0) continue;
            for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++)
                for (int raw = 0; raw <= (int)kquant; raw++)
                    compared += compare(&kernels[ki], n_ins[i], n_ins[i] > 4096 ? 40 : 72, rows[r], native, raw);
        }
    }
    fprintf(stderr, "# %d kernel runs identical to AVX2 (SIMDe build%s; this CPU %s AVX512-VNNI+VL)\n", compared,
            native ? " and native build" : "", native ? "has" : "lacks");
}

/* The table hands out the VNNI kernels exactly where the CPU has them. */
static void table_picks_by_cpu(void **state) {
    (void)state;
    const char *name = td_quant_kernel_name();
    if (cpu_has_vnni())
        assert_string_equal(name, "avx2+avx512vnni");
    else if (cpu_has_avx2())
        assert_string_equal(name, "avx2");
    fprintf(stderr, "# kernels in use: %s\n", name);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(vnni_builds_match_avx2),
        cmocka_unit_test(table_picks_by_cpu),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
