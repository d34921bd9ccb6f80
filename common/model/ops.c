/* ops.c — the small float operators of the transformer block (RMSNorm, SiLU
 * gating, rotary embedding) and the scalar forms of the fp16-cache kernels
 * (narrowing, attention) with the run-time choice between them and AVX2.
 *
 * Each keeps a fixed reduction order that depends only on n, never on which
 * row or batch it serves: that is what keeps logits batch invariant.
 */
#include <math.h>
#include <string.h>

#include "model/model_internal.h"

void td_op_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps) {
    /* Squares in float, summed in double, mean and root in float: the same
     * operation order as llama.cpp. With 8-bit activations downstream, even
     * ulp-level differences here flip quantization roundings and show up as
     * logit noise, so matching the reference's order is worth it. */
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (double)(x[i] * x[i]);
    float mean = (float)(ss / (double)n);
    float scale = 1.0f / sqrtf(mean + eps);
    for (int64_t i = 0; i < n; i++) out[i] = (x[i] * scale) * w[i];
}

void td_op_silu_mul(float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

static void axpy_f16_scalar(float *y, float a, const uint16_t *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = fmaf(a, td_fp16_to_f32(x[i]), y[i]);
}

static void to_f16_scalar(const float *x, uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = td_f32_to_fp16(x[i]);
}

static const uint16_t *cache_row(const td_attn_batch *a, const td_attn_query *q, int which, int32_t t) {
    int32_t slot = t < q->base ? t : q->chain[t - q->base];
    return td_kv_at(a->kv, a->seq, a->layer, which, slot) + a->head_off;
}

/* The reference form: each query on its own, straight from the cache. */
void td_op_attend_scalar(const td_attn_batch *a) {
    int32_t hd = a->head_dim;
    for (int32_t i = 0; i < a->n_q; i++) {
        const td_attn_query *qq = &a->qs[i];
        int32_t n = qq->base + qq->n_chain;
        float q[TD_ATTN_MAX_HEAD_DIM], *sc = qq->scores;
        for (int32_t d = 0; d < hd; d++) q[d] = td_op_round_f16(qq->q[d]);
        float mx = -INFINITY;
        for (int32_t t = 0; t < n; t++) {
            const uint16_t *k = cache_row(a, qq, 0, t);
            float dot = 0.0f;
            for (int32_t d = 0; d < hd; d++) dot += td_fp16_to_f32(k[d]) * q[d];
            sc[t] = dot * a->scale;
            if (sc[t] > mx) mx = sc[t];
        }
        double sum = 0.0;
        for (int32_t t = 0; t < n; t++) {
            sc[t] = expf(sc[t] - mx);
            sum += sc[t];
        }
        float inv = (float)(1.0 / sum);
        for (int32_t d = 0; d < hd; d++) qq->out[d] = 0.0f;
        for (int32_t t = 0; t < n; t++)
            axpy_f16_scalar(qq->out, td_op_round_f16(sc[t] * inv), cache_row(a, qq, 1, t), hd);
    }
}

td_op_kernels td_op_select(int32_t head_dim) {
    /* The quant module already checked AVX2, FMA and F16C for its kernels. */
    bool avx2 = strcmp(td_quant_kernel_name(), "avx2") == 0;
    if (!avx2) return (td_op_kernels){to_f16_scalar, td_op_attend_scalar};
    return (td_op_kernels){td_op_to_f16_avx2, head_dim % 8 == 0 ? td_op_attend_avx2 : td_op_attend_scalar};
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
        head[a] = x0 * c - x1 * s;
        head[b] = x0 * s + x1 * c;
    }
}
