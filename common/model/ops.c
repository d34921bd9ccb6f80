/* ops.c — the small float operators of the transformer block (RMSNorm, SiLU
 * gating, rotary embedding) and the scalar forms of the fp16-cache kernels
 * (narrowing, attention) with the run-time choice between them and AVX2.
 *
 * Each keeps a fixed reduction order that depends only on n, never on which
 * row or batch it serves: that is what keeps logits batch invariant. The
 * orders, roundings and the exponential are those of llama.cpp's x86 CPU
 * build, checked bit for bit against its intermediate tensors
 * (tests/fixtures/dump_reference_ops.py): the last-bit choices there decide
 * near-tie argmaxes, and agreeing with the reference is the point.
 */
#include <math.h>
#include <string.h>

#include "model/model_internal.h"

/* A row's norm from its sum of squares ss: mean and root in float. */
static void rms_apply(float *out, const float *x, const float *w, int64_t n, float eps, double ss) {
    float mean = (float)(ss / (double)n);
    float scale = 1.0f / sqrtf(mean + eps);
    for (int64_t i = 0; i < n; i++) out[i] = (x[i] * scale) * w[i];
}

void td_op_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps) {
    /* Squares in float, summed in double, mean and root in float: the same
     * operation order as llama.cpp. With 8-bit activations downstream, even
     * ulp-level differences here flip quantization roundings and show up as
     * logit noise, so matching the reference's order is worth it. */
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (double)(x[i] * x[i]);
    rms_apply(out, x, w, n, eps, ss);
}

void td_op_rmsnorm_rows(float *out, const float *x, const float *w, int64_t n, float eps, int64_t rows,
                        int64_t stride) {
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        const float *x0 = x + r * stride, *x1 = x0 + stride, *x2 = x1 + stride, *x3 = x2 + stride;
        double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
        for (int64_t i = 0; i < n; i++) {
            s0 += (double)(x0[i] * x0[i]);
            s1 += (double)(x1[i] * x1[i]);
            s2 += (double)(x2[i] * x2[i]);
            s3 += (double)(x3[i] * x3[i]);
        }
        const double ss[4] = {s0, s1, s2, s3};
        for (int k = 0; k < 4; k++) rms_apply(out + (r + k) * stride, x + (r + k) * stride, w, n, eps, ss[k]);
    }
    for (; r < rows; r++) td_op_rmsnorm(out + r * stride, x + r * stride, w, n, eps);
}

/* e^x by the vector algorithm llama.cpp's CPU build uses for softmax and
 * SiLU (x = n ln2 + b, b split into two ln2 parts, a degree-5 polynomial in
 * b, 2^n put into the exponent; special scaling when |n| > 126), operation
 * for operation, so that each lane of exp_ps in ops_avx2.c and this scalar
 * form give the same bits. Its constants are the reference's. */
float td_op_exp(float x) {
    const float shift = 0x1.8p23f;
    float z = fmaf(x, 0x1.715476p+0f, shift);
    float n = z - shift;
    float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    uint32_t e = td_f32_bits(z) << 23;
    float k = td_bits_f32(e + td_f32_bits(1.0f));
    float u = b * b;
    float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)), u,
                   0x1.ffffecp-1f * b);
    if (!(fabsf(n) > 126.0f))
        return fmaf(k, j, k);
    /* 2^n out of range for one scale: split it in two (or saturate) */
    uint32_t g = n <= 0.0f ? 0x82000000u : 0u;
    float s1 = td_bits_f32(g + 0x7f000000u), s2 = td_bits_f32(e - g);
    if (fabsf(n) > 192.0f)
        return s1 * s1;
    return fmaf(s2, j, s2) * s1;
}

void td_op_silu_mul_scalar(float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        gate[i] = g / (1.0f + td_op_exp(0.0f - g)) * up[i];
    }
}

float td_op_hsum8(const float l[8]) {
    /* the reference's order: upper half onto lower, then pairs 0+2, 1+3 */
    float c0 = l[0] + l[4], c1 = l[1] + l[5], c2 = l[2] + l[6], c3 = l[3] + l[7];
    return (c0 + c2) + (c1 + c3);
}

static const uint16_t *cache_row(const td_attn_batch *a, const td_attn_query *q, int which, int32_t t) {
    int32_t slot = t < q->base ? t : q->chain[t - q->base];
    return td_kv_at(a->kv, a->seq, a->layer, which, slot) + a->head_off;
}

/* Scores to weights: e^(s - max) eight positions at a time, each group's
 * sum added in double, then scaled and rounded to fp16 (they meet the fp16
 * V cache), as llama.cpp's softmax and its f16 matmul do. */
static void softmax_to_f16(float *sc, int32_t n, float mx) {
    double sum = 0.0;
    for (int32_t t0 = 0; t0 < n; t0 += 8) {
        float lane[8] = {0};
        for (int32_t j = 0; j < 8 && t0 + j < n; j++) lane[j] = sc[t0 + j] = td_op_exp(sc[t0 + j] - mx);
        sum += (double)td_op_hsum8(lane);
    }
    float inv = (float)(1.0 / sum);
    for (int32_t t = 0; t < n; t++) sc[t] = td_op_round_f16(sc[t] * inv);
}

/* llama.cpp's f16 vector dot of a one-token batch: element i goes to
 * accumulator (i % 32) / 8, lane i % 8, for whole steps of 32; the four
 * accumulators fold as (0+2)+(1+3) per lane, the lanes as upper half onto
 * lower then ((0+1)+(2+3)); a tail of n % 32 elements is added in double. */
static float lone_dot_fold(const float acc[TD_ATTN_LANE_SETS]) {
    float s[8], t[4];
    for (int l = 0; l < 8; l++) s[l] = (acc[l] + acc[16 + l]) + (acc[8 + l] + acc[24 + l]);
    for (int l = 0; l < 4; l++) t[l] = s[l] + s[l + 4];
    return (t[0] + t[1]) + (t[2] + t[3]);
}

/* The reference form: each query on its own, straight from the cache, in
 * the operation order of llama.cpp's CPU attention. Both products put
 * element i in lane i % L and fold the lanes in a fixed order: the batched
 * f16 matmul uses L = 8 and td_op_hsum8; the one-token vector dot (a.lone)
 * L = 32 and lone_dot_fold, with a head tail past whole steps of 32 added
 * in double (the reference pads positions to whole steps with zero weights,
 * so the V sum has no tail). Softmax is the same in both. */
void td_op_attend_scalar(const td_attn_batch *a) {
    const int32_t hd = a->head_dim, L = a->lone ? TD_ATTN_LANE_SETS : 8;
    const int32_t steps = a->lone ? hd - hd % 32 : hd;
    float (*fold)(const float *) = a->lone ? lone_dot_fold : td_op_hsum8;
    for (int32_t i = 0; i < a->n_q; i++) {
        const td_attn_query *qq = &a->qs[i];
        int32_t n = qq->base + qq->n_chain;
        float q[TD_ATTN_MAX_HEAD_DIM], *sc = qq->scores;
        for (int32_t d = 0; d < hd; d++) q[d] = td_op_round_f16(qq->q[d]);
        float mx = -INFINITY;
        for (int32_t t = 0; t < n; t++) {
            const uint16_t *k = cache_row(a, qq, 0, t);
            float lane[TD_ATTN_LANE_SETS] = {0};
            for (int32_t d = 0; d < steps; d++) lane[d % L] = fmaf(td_fp16_to_f32(k[d]), q[d], lane[d % L]);
            double dot = fold(lane);
            for (int32_t d = steps; d < hd; d++) dot += (double)(td_fp16_to_f32(k[d]) * q[d]);
            sc[t] = (float)dot * a->scale;
            if (sc[t] > mx) mx = sc[t];
        }
        softmax_to_f16(sc, n, mx);
        for (int32_t d = 0; d < hd; d++) {
            float lane[TD_ATTN_LANE_SETS] = {0};
            for (int32_t t = 0; t < n; t++) lane[t % L] = fmaf(td_fp16_to_f32(cache_row(a, qq, 1, t)[d]), sc[t], lane[t % L]);
            qq->out[d] = fold(lane);
        }
    }
}

static void to_f16_scalar(const float *x, uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = td_f32_to_fp16(x[i]);
}

/* The vector RoPE where the rotated part is whole vectors of pairs, else
 * the scalar one (the same bits either way). */
static void rope_any_avx2(float *head, const float *cs, int32_t n_rot, td_rope_kind kind) {
    if (n_rot % 16 == 0) td_op_rope_avx2(head, cs, n_rot, kind);
    else td_op_rope(head, cs, n_rot, kind);
}

td_op_kernels td_op_select(int32_t head_dim) {
    /* The quant module already checked AVX2, FMA and F16C: every set but the
     * scalar one has them (AVX-512 machines run "avx2+avx512vnni") */
    bool avx2 = strcmp(td_quant_kernel_name(), "scalar") != 0;
    if (!avx2)
        return (td_op_kernels){to_f16_scalar, td_op_attend_scalar, td_op_attend_scalar, td_op_silu_mul_scalar,
                               td_op_rope};
    bool vec = head_dim % 8 == 0;
    return (td_op_kernels){td_op_to_f16_avx2, vec ? td_op_attend_avx2 : td_op_attend_scalar,
                           vec ? td_op_attend_lone_avx2 : td_op_attend_scalar, td_op_silu_mul_avx2,
                           rope_any_avx2};
}

float td_op_round_f16(float x) { return td_fp16_to_f32(td_f32_to_fp16(x)); }

void td_op_rope(float *head, const float *cs, int32_t n_rot, td_rope_kind kind) {
    int32_t half = n_rot / 2;
    for (int32_t i = 0; i < half; i++) {
        /* NORM rotates neighbours (2i, 2i+1); NEOX rotates (i, i + n_rot/2). */
        int32_t a = kind == TD_ROPE_NORM ? 2 * i : i;
        int32_t b = kind == TD_ROPE_NORM ? 2 * i + 1 : i + half;
        float c = cs[2 * i], s = cs[2 * i + 1];
        float x0 = head[a], x1 = head[b];
        /* one rounding less than the plain expression: the contraction
         * llama.cpp's build makes, and so its bits */
        head[a] = fmaf(x0, c, -(x1 * s));
        head[b] = fmaf(x0, s, x1 * c);
    }
}
