/* test_cuda_host.cu — the CUDA backend's pure arithmetic and policies, run
 * on the host (built with nvcc in the CUDA build, no GPU needed):
 *   - td_cu_quant_block_thread, the one-thread form of the activation
 *     quantizer that the fused RMSNorm uses, against the CPU's reference
 *     Q8_1 quantizer bit for bit (codes, scale, sum), from every starting
 *     word, on ordinary, tiny, huge, zero and signed-zero blocks;
 *   - td_cu_slice, FAST's split of a row between warps: in order, whole
 *     quads, together the whole row;
 *   - the choices of rows per tile and warps per output, and their
 *     overrides.
 * What needs a device (the kernels themselves) is test_cuda's.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
extern "C" {
#include <cmocka.h>
}

#include "cuda/cuda_internal.cuh"

/* The CPU's reference Q8_1 block: fp16 scale, fp16 scaled sum, 32 codes. */
struct q8_1_block {
    uint16_t d, s;
    int8_t qs[32];
};

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double urand(void) { /* [0, 1) */
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

static void check_block(const float *x, const float *w, float scale) {
    float v[32];
    for (int i = 0; i < 32; i++) v[i] = (x[i] * scale) * w[i];
    q8_1_block ref;
    static_assert(sizeof ref == 36, "Q8_1 block");
    td_quant_traits_ref(TD_TYPE_Q8_1)->from_float(v, &ref, 32);
    for (int rot = 0; rot < 8; rot++) {
        int8_t qs[32] __attribute__((aligned(4)));
        float d = -1.0f, s = -1.0f;
        td_cu_quant_block_thread(x, w, scale, rot, qs, &d, &s);
        assert_memory_equal(qs, ref.qs, 32);
        float rd = td_fp16_to_f32(ref.d), rs = td_fp16_to_f32(ref.s);
        assert_memory_equal(&d, &rd, sizeof d);
        assert_memory_equal(&s, &rs, sizeof s);
    }
}

static void block_quantizer_matches_cpu(void **st) {
    (void)st;
    float x[32], w[32];
    int blocks = 0;
    for (int trial = 0; trial < 3000; trial++) {
        const int kind = trial % 6;
        const double mag = kind == 1 ? 1e-30 : kind == 2 ? 3e4 : 1.0;
        for (int i = 0; i < 32; i++) {
            x[i] = (float)((urand() * 2.0 - 1.0) * mag);
            w[i] = (float)(0.5 + urand());
        }
        if (kind == 3) /* a few exact zeros and signed zeros, one dominant value */
            for (int i = 0; i < 32; i += 3) x[i] = i % 2 ? -0.0f : 0.0f, x[31] = 100.0f;
        if (kind == 4) memset(x, 0, sizeof x); /* all zero: scale 0, codes 0 */
        if (kind == 5) { /* amax 127, so codes are rint(x): ties k + 0.5 round to even */
            for (int i = 0; i < 31; i++) x[i] = (float)(i - 16) + 0.5f, w[i] = 1.0f;
            x[31] = 127.0f, w[31] = 1.0f;
        }
        const float scale = kind == 5 ? 1.0f : (float)(0.25 + urand());
        check_block(x, w, scale);
        blocks++;
    }
    print_message("# %d blocks x 8 starting words: the one-thread quantizer gives the CPU's Q8_1 bits\n", blocks);
}

static void slices_cover_the_row(void **st) {
    (void)st;
    for (int nb = 1; nb <= 400; nb++) {
        int ib, ie;
        td_cu_slice(nb, 1, 0, &ib, &ie);
        assert_int_equal(ib, 0);
        assert_int_equal(ie, nb);
        for (int ks = 2; ks <= 4; ks *= 2) {
            int at = 0, nonempty = 0;
            for (int k = 0; k < ks; k++) {
                td_cu_slice(nb, ks, k, &ib, &ie);
                assert_int_equal(ib, at); /* in order, no gap, no overlap */
                assert_int_equal(ib % 4, 0); /* whole quads */
                assert_true(ie >= ib && ie <= nb);
                if (ie < nb) assert_int_equal(ie % 4, 0);
                nonempty += ie > ib;
                at = ie;
            }
            assert_int_equal(at, nb);
            /* as even as quads allow: every slice gets some once there are ks quads */
            if ((nb + 3) / 4 >= ks) assert_int_equal(nonempty, ks);
        }
    }
}

static void tile_and_split_choices(void **st) {
    (void)st;
    td_lc lc = {0, false, 0, 0, false, 0};
    /* by rows: one row per block up to 16 (verification), 2 to 64, then 8 */
    assert_int_equal(td_cu_tile_rows(lc, false, 1), 1);
    assert_int_equal(td_cu_tile_rows(lc, false, 16), 1);
    assert_int_equal(td_cu_tile_rows(lc, true, 16), 1);
    assert_int_equal(td_cu_tile_rows(lc, false, 17), 2);
    assert_int_equal(td_cu_tile_rows(lc, false, 64), 2);
    assert_int_equal(td_cu_tile_rows(lc, false, 65), 8);
    /* forced (TD_CUDA_TILE=4:8), but a one-row pass keeps its fused norm */
    lc.tile = 4, lc.tile_swiglu = 8;
    assert_int_equal(td_cu_tile_rows(lc, false, 1), 1);
    assert_int_equal(td_cu_tile_rows(lc, false, 2), 4);
    assert_int_equal(td_cu_tile_rows(lc, true, 2), 8);
    assert_int_equal(td_cu_tile_rows(lc, true, 500), 8);
    /* the reference order never splits, even when asked to */
    lc.ksplit = 4;
    assert_int_equal(td_cu_ksplit(lc, 11008), 1);
    lc.ksplit = 0;
    assert_int_equal(td_cu_ksplit(lc, 4096), 1);
    /* FAST by width: 4 warps from 64 blocks, 2 from 32 (the default model's
     * 1,536-wide down projection), 1 below (its 576-wide inputs) */
    lc.fast = true;
    assert_int_equal(td_cu_ksplit(lc, 576), 1);
    assert_int_equal(td_cu_ksplit(lc, 1024), 2);
    assert_int_equal(td_cu_ksplit(lc, 1536), 2);
    assert_int_equal(td_cu_ksplit(lc, 2048), 4);
    assert_int_equal(td_cu_ksplit(lc, 11008), 4);
    lc.ksplit = 2; /* forced (TD_CUDA_KSPLIT=2) */
    assert_int_equal(td_cu_ksplit(lc, 576), 2);
    assert_int_equal(td_cu_ksplit(lc, 11008), 2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(block_quantizer_matches_cpu),
        cmocka_unit_test(slices_cover_the_row),
        cmocka_unit_test(tile_and_split_choices),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
