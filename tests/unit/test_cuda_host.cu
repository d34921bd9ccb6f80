/* test_cuda_host.cu — the CUDA backend's pure arithmetic and policies, run
 * on the host (built with nvcc in the CUDA build, no GPU needed):
 *   - td_cu_quant_block_thread, the one-thread form of the activation
 *     quantizer that the fused RMSNorm uses, against the CPU's reference
 *     Q8_1 quantizer bit for bit (codes, scale, sum), from every starting
 *     word, on ordinary, tiny, huge, zero and signed-zero blocks;
 *   - td_cu_slice, FAST's split of a row between warps: in order, whole
 *     quads, together the whole row;
 *   - the choices of rows per tile and warps per output, and their
 *     overrides;
 *   - the K-quant arithmetic (cuda_kquant.cuh): eight lanes run as the
 *     kernel runs them give the CPU's Q4_K/Q5_K/Q6_K dot products bit for
 *     bit, on the device layout td_cuda_layout_pack writes; a warp's Q8_K
 *     quantizer, run lane by lane, gives the CPU's Q8_K blocks; element
 *     dequantization (the embedding) gives the CPU's to_float;
 *   - the float rows (cuda_float.cuh): activations rounded through F16 and
 *     BF16 as the CPU converts them, and a warp's 32 accumulators, folded,
 *     give the CPU's F32/F16/BF16 dot products bit for bit;
 *   - Q4_0, Q5_0, Q5_1 (cuda_interleaved.cuh): eight lanes run as the kernel
 *     runs them, on td_cuda_layout_pack's repacked blocks, give the CPU's
 *     interleaved kernels' dot products bit for bit, short last groups
 *     included; element dequantization gives to_float;
 *   - the device's greedy pick (k_argmax's reduction, run thread by thread)
 *     is td_sample_argmax on rows with NaN, infinities and ties.
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
extern "C" {
#include "sample/sample.h"
}

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

/* ---- K-quants ---- */

/* The CPU's Q8_K block: float scale, 256 codes, sums of each 16. */
struct q8_k_block {
    float d;
    int8_t qs[256];
    int16_t bsums[16];
};

static float normal(void) {
    double u = urand() + 1e-12, v = urand();
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

/* A half between 2^-14 and 2^-4 with random sign bits off: a sane scale. */
static uint16_t random_half_scale(void) { return (uint16_t)(0x0400 + (uint16_t)(urand() * (0x2C00 - 0x0400))); }

/* n_out rows of n_in elements of type: half quantized from normal floats
 * (the reference quantizer), half random bytes (every code and sub-scale
 * pattern) with finite scales. */
static unsigned char *random_k_rows(uint32_t type, int n_in, int n_out) {
    const td_type_traits *tr = td_quant_traits_ref(type);
    const size_t rb = td_quant_row_bytes(type, n_in), nsb = (size_t)n_in / 256;
    unsigned char *w = (unsigned char *)malloc(rb * n_out);
    float *x = (float *)malloc(sizeof(float) * n_in);
    assert_non_null(w);
    assert_non_null(x);
    for (int o = 0; o < n_out; o++) {
        unsigned char *row = w + o * rb;
        if (o % 2 == 0) {
            for (int i = 0; i < n_in; i++) x[i] = normal() * (float)(0.01 + o * 0.3);
            tr->from_float(x, row, n_in);
            continue;
        }
        for (size_t i = 0; i < rb; i++) row[i] = (unsigned char)(urand() * 256.0);
        for (size_t b = 0; b < nsb; b++) {
            unsigned char *blk = row + b * tr->block_bytes;
            uint16_t d = random_half_scale(), dmin = random_half_scale();
            if (type == TD_TYPE_Q6_K) {
                memcpy(blk + 208, &d, 2);
            } else {
                memcpy(blk, &d, 2);
                memcpy(blk + 2, &dmin, 2);
            }
        }
    }
    free(x);
    return w;
}

/* Row o of a packed K-quant matrix against Q8_K blocks y, as the kernel
 * computes it: eight lanes, each its chain over the super-blocks, folded. */
template <int TYPE> static float kernel_dot(const uint32_t *packed, int nsb, int o, const q8_k_block *y) {
    const int words = td_cu_kq_words(TYPE);
    float lanes[8];
    for (int m = 0; m < 8; m++) {
        float acc = 0.0f;
        for (int sb = 0; sb < nsb; sb++) {
            td_cu_kq_lane w;
            td_cu_kq_load<TYPE>(packed + ((size_t)o * nsb + sb) * words, m, &w);
            int isum, msum;
            td_cu_kq_dot<TYPE>(w, y[sb].qs, y[sb].bsums, m, &isum, &msum);
            acc = td_cu_kq_step<TYPE>(w, y[sb].d, isum, msum, acc);
        }
        lanes[m] = acc;
    }
    return td_d_hsum8(lanes);
}

template <int TYPE> static void kquant_dot_case(void) {
    enum { N_IN = 256 * 6, N_OUT = 24, N_ACT = 6 };
    const td_type_traits *tr = td_quant_traits(TYPE);
    assert_int_equal(tr->vec_dot_type, TD_TYPE_Q8_K);
    unsigned char *w = random_k_rows(TYPE, N_IN, N_OUT);
    td_cuda_layout lay;
    assert_int_equal(td_cuda_layout_of(TYPE, N_IN, N_OUT, &lay, NULL), TD_OK);
    assert_int_equal(lay.qs_bytes, (size_t)N_OUT * 6 * td_cu_kq_words(TYPE) * 4);
    uint32_t *packed = (uint32_t *)malloc(lay.qs_bytes);
    assert_non_null(packed);
    td_cuda_layout_pack(TYPE, w, N_IN, N_OUT, packed, NULL, NULL);
    static q8_k_block y[6];
    static_assert(sizeof y[0] == 292, "Q8_K block");
    float x[N_IN];
    const size_t rb = td_quant_row_bytes(TYPE, N_IN);
    int bitwise = 0, total = 0;
    for (int a = 0; a < N_ACT; a++) {
        for (int i = 0; i < N_IN; i++) x[i] = normal() * (a == 0 ? 1e-3f : a == 1 ? 40.0f : 1.0f);
        if (a == 2) for (int i = 0; i < 256; i++) x[i] = 0.0f; /* an all-zero super-block: d 0 */
        td_quant_traits(TD_TYPE_Q8_K)->from_float(x, y, N_IN);
        for (int o = 0; o < N_OUT; o++) {
            float want = 0.0f;
            tr->vec_dot(N_IN, &want, w + o * rb, y);
            const float got = kernel_dot<TYPE>(packed, 6, o, y);
            bitwise += memcmp(&want, &got, sizeof want) == 0;
            total++;
            if (memcmp(&want, &got, sizeof want) != 0)
                print_error("%s row %d act %d: CPU %.9g, lanes %.9g\n", tr->name, o, a, (double)want, (double)got);
        }
    }
    print_message("# %s: %d/%d dot products equal to the CPU's (%s) bit for bit\n", tr->name, bitwise, total,
                  td_quant_kernel_name());
    assert_int_equal(bitwise, total);
    /* element by element, the embedding's dequantization is to_float's */
    float want[N_IN], got[N_IN];
    for (int o = 0; o < N_OUT; o++) {
        tr->to_float(w + o * rb, want, N_IN);
        for (int e = 0; e < N_IN; e++)
            got[e] = td_cu_kq_dequant(TYPE, packed + ((size_t)o * 6 + e / 256) * td_cu_kq_words(TYPE), e % 256);
        assert_memory_equal(want, got, sizeof want);
    }
    free(packed);
    free(w);
}

static void kquant_lanes_match_cpu(void **st) {
    (void)st;
    kquant_dot_case<TD_TYPE_Q4_K>();
    kquant_dot_case<TD_TYPE_Q5_K>();
    kquant_dot_case<TD_TYPE_Q6_K>();
}

/* A warp's Q8_K quantization of 256 values, lane by lane. */
static void warp_q8k(const float *x, q8_k_block *out) {
    td_cu_absmax a = {0.0f, 0.0f, 1 << 30};
    for (int l = 0; l < 32; l++) a = td_cu_q8k_pick(a, td_cu_q8k_lane_max(x + 8 * l, 8 * l));
    memset(out, 0, sizeof *out);
    if (a.vmax == 0.0f) return;
    const float iscale = -127.0f / a.vmax;
    int sums[32];
    for (int l = 0; l < 32; l++) sums[l] = td_cu_q8k_lane_codes(x + 8 * l, iscale, out->qs + 8 * l);
    for (int g = 0; g < 16; g++) out->bsums[g] = (int16_t)(sums[2 * g] + sums[2 * g + 1]);
    out->d = 1.0f / iscale;
}

static void q8k_quantizer_matches_cpu(void **st) {
    (void)st;
    float x[256];
    int blocks = 0;
    for (int trial = 0; trial < 2000; trial++) {
        const int kind = trial % 6;
        for (int i = 0; i < 256; i++) x[i] = normal() * (kind == 1 ? 1e-30f : kind == 2 ? 3e4f : 1.0f);
        if (kind == 3) { /* equal magnitudes, opposite signs: the first wins */
            for (int i = 0; i < 256; i++) x[i] = x[i] * 0.1f;
            x[(int)(urand() * 128)] = -3.0f, x[128 + (int)(urand() * 128)] = 3.0f;
        }
        if (kind == 4) memset(x, 0, sizeof x);
        if (kind == 5) { /* max 127: iscale -1, codes rint(-x), ties to even */
            for (int i = 0; i < 256; i++) x[i] = (float)((i % 200) - 100) + 0.5f;
            x[17] = 127.0f;
        }
        q8_k_block want, want_ref, got;
        td_quant_traits(TD_TYPE_Q8_K)->from_float(x, &want, 256);
        td_quant_traits_ref(TD_TYPE_Q8_K)->from_float(x, &want_ref, 256);
        warp_q8k(x, &got);
        assert_memory_equal(&want, &got, sizeof got);
        assert_memory_equal(&want_ref, &got, sizeof got);
        blocks++;
    }
    print_message("# %d blocks: the warp's Q8_K quantizer gives the CPU's blocks\n", blocks);
}

/* ---- float rows ---- */

static void float_case(uint32_t type) {
    enum { N = 32 * 40, N_OUT = 16 };
    const td_type_traits *tr = td_quant_traits(type), *act = td_quant_traits(tr->vec_dot_type);
    assert_int_equal(tr->vec_dot_type, type); /* activations take the weight's type */
    const size_t eb = tr->block_bytes;
    unsigned char *w = (unsigned char *)malloc(eb * N * N_OUT), *yq = (unsigned char *)malloc(eb * N);
    static float x[N], xr[N], back[N];
    assert_non_null(w);
    assert_non_null(yq);
    for (int o = 0; o < N_OUT; o++) {
        for (int i = 0; i < N; i++) x[i] = normal() * (float)(0.02 + 0.1 * o);
        tr->from_float(x, w + (size_t)o * N * eb, N);
    }
    int bitwise = 0, total = 0;
    for (int a = 0; a < 6; a++) {
        for (int i = 0; i < N; i++) x[i] = normal() * (a == 1 ? 1e-6f : a == 2 ? 300.0f : 1.0f);
        if (a == 3) /* past fp16's range, fp16 subnormals, bf16 ties (low half 0x8000) */
            for (int i = 0; i < N; i += 7) {
                uint32_t u = 0x3F808000u + (uint32_t)(urand() * 64) * 0x10000u;
                x[i] = i % 3 == 0 ? 7e4f : i % 3 == 1 ? 3e-6f : td_cu_bits_f32(u);
            }
        act->from_float(x, yq, N);
        act->to_float(yq, back, N);
        for (int i = 0; i < N; i++) xr[i] = td_cu_float_round(type, x[i]);
        assert_memory_equal(back, xr, sizeof xr); /* the CPU's conversion, element by element */
        for (int o = 0; o < N_OUT; o++) {
            const unsigned char *row = w + (size_t)o * N * eb;
            float want = 0.0f, acc[32];
            tr->vec_dot(N, &want, row, yq);
            for (int t = 0; t < 32; t++) {
                acc[t] = 0.0f;
                for (int i = t; i < N; i += 32) acc[t] = fmaf(td_cu_float_weight(type, row, (size_t)i), xr[i], acc[t]);
            }
            const float got = td_cu_f_fold(acc);
            bitwise += memcmp(&want, &got, sizeof got) == 0;
            total++;
        }
    }
    print_message("# %s: %d/%d dot products equal to the CPU's bit for bit\n", tr->name, bitwise, total);
    assert_int_equal(bitwise, total);
    float want[N];
    tr->to_float(w, want, N);
    for (int i = 0; i < N; i++) back[i] = td_cu_float_weight(type, w, (size_t)i);
    assert_memory_equal(want, back, sizeof want);
    free(w);
    free(yq);
}

static void float_lanes_match_cpu(void **st) {
    (void)st;
    float_case(TD_TYPE_F32);
    float_case(TD_TYPE_F16);
    float_case(TD_TYPE_BF16);
}

/* ---- Q4_0, Q5_0, Q5_1 ---- */

/* The CPU's Q8_0 / Q8_1 blocks: fp16 d, (fp16 s), 32 codes. */
struct q8_0_block {
    uint16_t d;
    int8_t qs[32];
};

/* Row o of a repacked matrix against one activation row (codes, d, s per
 * block, unpacked as the device holds them), as the kernel computes it. */
template <uint32_t TYPE>
static float il_kernel_dot(const uint32_t *packed, int nb, int o, const int8_t *yq, const float *yd, const float *ys) {
    const int words = td_cu_il_words(TYPE), ng = (nb + 3) / 4;
    float lanes[8];
    for (int lane = 0; lane < 8; lane++) {
        const int j = lane >> 1, h = lane & 1;
        float acc = 0.0f;
        for (int g = 0; g < ng; g++) {
            const int b = 4 * g + j;
            if (b >= nb) {
                acc = td_cu_il_step_empty<TYPE>(acc);
                continue;
            }
            td_cu_il_lane w;
            td_cu_il_load<TYPE>(packed + ((size_t)o * nb + b) * words, h, &w);
            acc = td_cu_il_step<TYPE>(w, yq + 32 * b, yd[b], ys[b], h, acc);
        }
        lanes[lane] = acc;
    }
    return td_d_hsum8(lanes);
}

template <uint32_t TYPE> static void il_case(int n_in) {
    enum { N_OUT = 12, MAX_IN = 32 * 40 };
    const int nb = n_in / 32;
    const td_type_traits *tr = td_quant_traits(TYPE), *act = td_quant_traits(tr->vec_dot_type);
    const bool q81 = tr->vec_dot_type == TD_TYPE_Q8_1;
    const size_t rb = td_quant_row_bytes(TYPE, n_in);
    unsigned char *w = (unsigned char *)malloc(rb * N_OUT);
    assert_non_null(w);
    static float x[MAX_IN], want_f[MAX_IN], got_f[MAX_IN];
    for (int o = 0; o < N_OUT; o++) {
        if (o % 3 == 2) { /* random bytes: every code and fifth-bit pattern, sane scales */
            for (size_t i = 0; i < rb; i++) w[o * rb + i] = (unsigned char)(urand() * 256.0);
            for (int b = 0; b < nb; b++) {
                uint16_t d = random_half_scale(), m = random_half_scale() | 0x8000u;
                memcpy(w + o * rb + b * tr->block_bytes, &d, 2);
                if (TYPE == TD_IL_Q5_1) memcpy(w + o * rb + b * tr->block_bytes + 2, &m, 2);
            }
            continue;
        }
        for (int i = 0; i < n_in; i++) x[i] = normal() * (float)(0.05 + 0.2 * o);
        tr->from_float(x, w + o * rb, n_in);
    }
    td_cuda_layout lay;
    assert_int_equal(td_cuda_layout_of(TYPE, n_in, N_OUT, &lay, NULL), TD_OK);
    assert_int_equal(lay.qs_bytes, (size_t)N_OUT * nb * td_cu_il_words(TYPE) * 4);
    uint32_t *packed = (uint32_t *)malloc(lay.qs_bytes);
    assert_non_null(packed);
    td_cuda_layout_pack(TYPE, w, n_in, N_OUT, packed, NULL, NULL);
    static unsigned char yb[MAX_IN / 32 * 36];
    static int8_t yq[MAX_IN] __attribute__((aligned(4)));
    static float yd[MAX_IN / 32], ys[MAX_IN / 32];
    int bitwise = 0, total = 0;
    for (int a = 0; a < 5; a++) {
        for (int i = 0; i < n_in; i++) x[i] = normal() * (a == 1 ? 1e-4f : a == 2 ? 50.0f : 1.0f);
        if (a == 3) for (int i = 0; i < 32; i++) x[i] = 0.0f; /* an all-zero block */
        act->from_float(x, yb, n_in);
        for (int b = 0; b < nb; b++) { /* unpacked as on the device */
            const unsigned char *blk = yb + (size_t)b * act->block_bytes;
            uint16_t d, sb = 0;
            memcpy(&d, blk, 2);
            if (q81) memcpy(&sb, blk + 2, 2);
            yd[b] = td_fp16_to_f32(d);
            ys[b] = td_fp16_to_f32(sb);
            memcpy(yq + 32 * b, blk + (q81 ? 4 : 2), 32);
        }
        for (int o = 0; o < N_OUT; o++) {
            float want = 0.0f;
            tr->vec_dot(n_in, &want, w + o * rb, yb);
            const float got = il_kernel_dot<TYPE>(packed, nb, o, yq, yd, ys);
            bitwise += memcmp(&want, &got, sizeof got) == 0;
            total++;
        }
    }
    print_message("# %s, %d blocks: %d/%d dot products equal to the CPU's bit for bit\n", tr->name, nb, bitwise, total);
    assert_int_equal(bitwise, total);
    for (int o = 0; o < N_OUT; o++) {
        tr->to_float(w + o * rb, want_f, n_in);
        for (int e = 0; e < n_in; e++)
            got_f[e] = td_cu_il_dequant(TYPE, packed + ((size_t)o * nb + e / 32) * td_cu_il_words(TYPE), e % 32);
        assert_memory_equal(want_f, got_f, sizeof(float) * n_in);
    }
    free(packed);
    free(w);
}

static void interleaved_lanes_match_cpu(void **st) {
    (void)st;
    static_assert(sizeof(q8_0_block) == 34, "Q8_0 block");
    for (int nb = 1; nb <= 9; nb++) { /* short last groups of 1, 2 and 3 blocks */
        il_case<TD_IL_Q4_0>(32 * nb);
        il_case<TD_IL_Q5_0>(32 * nb);
        il_case<TD_IL_Q5_1>(32 * nb);
    }
    il_case<TD_IL_Q4_0>(32 * 40);
    il_case<TD_IL_Q5_0>(32 * 40);
    il_case<TD_IL_Q5_1>(32 * 40);
}

/* ---- greedy picks ---- */

/* k_argmax's reduction for one row: 256 threads striding, a butterfly per
 * warp (every lane at once), then warp 0's lane 0 over the warps. */
static int device_pick(const float *row, int n) {
    float v[256];
    int id[256];
    for (int t = 0; t < 256; t++) {
        v[t] = -INFINITY, id[t] = -1;
        for (int x = t; x < n; x += 256)
            if (row[x] > v[t]) v[t] = row[x], id[t] = x;
    }
    for (int w = 0; w < 8; w++)
        for (int off = 16; off; off >>= 1) {
            float nv[32];
            int ni[32];
            for (int l = 0; l < 32; l++) {
                const int a = 32 * w + l, b = 32 * w + (l ^ off);
                const bool take = td_cu_pick_better(v[a], id[a], v[b], id[b]);
                nv[l] = take ? v[b] : v[a], ni[l] = take ? id[b] : id[a];
            }
            for (int l = 0; l < 32; l++) v[32 * w + l] = nv[l], id[32 * w + l] = ni[l];
        }
    float bv = v[0];
    int bi = id[0];
    for (int w = 1; w < 8; w++)
        if (td_cu_pick_better(bv, bi, v[32 * w], id[32 * w])) bv = v[32 * w], bi = id[32 * w];
    return bi < 0 ? 0 : bi;
}

static void device_pick_is_greedy(void **st) {
    (void)st;
    static float row[5000];
    for (int trial = 0; trial < 400; trial++) {
        const int n = 1 + (int)(urand() * 5000);
        const int levels = 1 + trial % 9; /* few distinct values: many ties */
        for (int i = 0; i < n; i++) {
            const double u = urand();
            row[i] = u < 0.05 ? NAN : u < 0.1 ? -INFINITY : (float)(int)(urand() * levels);
        }
        if (trial % 13 == 0) row[(int)(urand() * n)] = INFINITY, row[(int)(urand() * n)] = INFINITY;
        if (trial % 17 == 0)
            for (int i = 0; i < n; i++) row[i] = i % 3 ? -INFINITY : NAN; /* nothing above -inf: id 0 */
        assert_int_equal(device_pick(row, n), td_sample_argmax(row, n));
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(block_quantizer_matches_cpu),
        cmocka_unit_test(slices_cover_the_row),
        cmocka_unit_test(tile_and_split_choices),
        cmocka_unit_test(kquant_lanes_match_cpu),
        cmocka_unit_test(q8k_quantizer_matches_cpu),
        cmocka_unit_test(float_lanes_match_cpu),
        cmocka_unit_test(interleaved_lanes_match_cpu),
        cmocka_unit_test(device_pick_is_greedy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
