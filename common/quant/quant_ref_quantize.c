/* quant_ref_quantize.c — scalar reference quantizers (f32 -> each type).
 *
 * The activation formats (Q8_0, Q8_1, Q8_K) follow llama.cpp's rounding rules
 * exactly (gguf-facts §3): they decide our numerics, and the SIMD versions
 * must reproduce them bit for bit. The weight formats only need a simple,
 * correct quantizer (test models); they do not search for optimal scales.
 */
#include <assert.h>
#include <math.h>
#include <string.h>

#include "quant/quant_impl.h"

void td_quant_ref_from_f32(const float *src, void *dst, int64_t n) {
    memcpy(dst, src, (size_t)n * sizeof(float));
}

void td_quant_ref_from_f16(const float *src, void *dst, int64_t n) {
    uint16_t *y = dst;
    for (int64_t i = 0; i < n; i++)
        y[i] = td_f32_to_fp16(src[i]);
}

void td_quant_ref_from_bf16(const float *src, void *dst, int64_t n) {
    uint16_t *y = dst;
    for (int64_t i = 0; i < n; i++)
        y[i] = td_f32_to_bf16(src[i]);
}

/* round-half-away-from-zero to an int in [lo, hi]; NaN gives 0 */
static int round_clamp(float v, int lo, int hi) {
    if (!(v == v))
        return 0;
    float r = roundf(v);
    return r < (float)lo ? lo : r > (float)hi ? hi : (int)r;
}

/* The element of largest magnitude, sign kept (first one on ties). */
static float signed_absmax(const float *x, int n) {
    float amax = 0, vmax = 0;
    for (int j = 0; j < n; j++) {
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            vmax = x[j];
        }
    }
    return vmax;
}

/* ---- activation formats: llama.cpp's rules ---- */

/* round-half-to-even to an int in [lo, hi]; NaN gives 0 */
static int round_even_clamp(float v, int lo, int hi) {
    if (!(v == v))
        return 0;
    float r = nearbyintf(v); /* the default rounding mode: ties to even */
    return r < (float)lo ? lo : r > (float)hi ? hi : (int)r;
}

/* d = max|x| / 127 and q = nearest-even(x * (127 / max|x|)), as llama.cpp's
 * x86 SIMD quantizer computes them (its portable C form rounds 1/d and ties
 * differently; the SIMD form is the one its CPU builds run, and matching it
 * moves tandem's logits onto the reference's). The stored d is fp16 but the
 * codes use the f32 scale. Returns sum(q). */
static int q8_block(const float *x, int8_t qs[32], float *d_out) {
    float amax = 0;
    for (int j = 0; j < 32; j++)
        amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 127.0f;
    float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int j = 0; j < 32; j++) {
        qs[j] = (int8_t)round_even_clamp(x[j] * id, -127, 127);
        sum += qs[j];
    }
    *d_out = d;
    return sum;
}

void td_quant_ref_from_q8_0(const float *src, void *dst, int64_t n) {
    assert(n % TD_QK == 0);
    td_block_q8_0 *y = dst;
    for (int64_t i = 0; i < n / TD_QK; i++, src += TD_QK) {
        float d;
        q8_block(src, y[i].qs, &d);
        y[i].d = td_f32_to_fp16(d);
    }
}

void td_quant_ref_from_q8_1(const float *src, void *dst, int64_t n) {
    assert(n % TD_QK == 0);
    td_block_q8_1 *y = dst;
    for (int64_t i = 0; i < n / TD_QK; i++, src += TD_QK) {
        float d;
        int sum = q8_block(src, y[i].qs, &d);
        y[i].d = td_f32_to_fp16(d);
        y[i].s = td_f32_to_fp16((float)sum * d);
    }
}

/* iscale = -127 / max (max signed), q = min(127, nearest-even(iscale * x)),
 * d = 1 / iscale as f32. */
void td_quant_ref_from_q8_k(const float *src, void *dst, int64_t n) {
    assert(n % TD_QK_K == 0);
    td_block_q8_k *y = dst;
    for (int64_t i = 0; i < n / TD_QK_K; i++, src += TD_QK_K) {
        float max = signed_absmax(src, TD_QK_K);
        memset(&y[i], 0, sizeof y[i]);
        if (max == 0.0f)
            continue;
        float iscale = -127.0f / max;
        for (int j = 0; j < TD_QK_K; j++) {
            float v = nearbyintf(iscale * src[j]); /* default mode: ties to even */
            int q = v == v ? (v > 127.0f ? 127 : v < -128.0f ? -128 : (int)v) : 0;
            y[i].qs[j] = (int8_t)q;
            y[i].bsums[j / 16] = (int16_t)(y[i].bsums[j / 16] + q);
        }
        y[i].d = 1.0f / iscale;
    }
}

/* ---- legacy weight formats ---- */

void td_quant_ref_from_q4_0(const float *src, void *dst, int64_t n) {
    assert(n % TD_QK == 0);
    td_block_q4_0 *y = dst;
    for (int64_t i = 0; i < n / TD_QK; i++, src += TD_QK) {
        /* the largest-magnitude value maps to code 0 (-8), so the full
         * [-8, 7] range is used on the side that needs it */
        y[i].d = td_f32_to_fp16(signed_absmax(src, TD_QK) / -8.0f);
        float d = td_fp16_to_f32(y[i].d), id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int j = 0; j < 16; j++) {
            int lo = round_clamp(src[j] * id + 8.0f, 0, 15);
            int hi = round_clamp(src[j + 16] * id + 8.0f, 0, 15);
            y[i].qs[j] = (uint8_t)(lo | hi << 4);
        }
    }
}

static void min_max(const float *x, int n, float *lo, float *hi) {
    *lo = *hi = x[0];
    for (int j = 1; j < n; j++) {
        *lo = fminf(*lo, x[j]);
        *hi = fmaxf(*hi, x[j]);
    }
}

void td_quant_ref_from_q4_1(const float *src, void *dst, int64_t n) {
    assert(n % TD_QK == 0);
    td_block_q4_1 *y = dst;
    for (int64_t i = 0; i < n / TD_QK; i++, src += TD_QK) {
        float lo, hi;
        min_max(src, TD_QK, &lo, &hi);
        y[i].d = td_f32_to_fp16((hi - lo) / 15.0f);
        y[i].m = td_f32_to_fp16(lo);
        float d = td_fp16_to_f32(y[i].d), m = td_fp16_to_f32(y[i].m);
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int j = 0; j < 16; j++) {
            int a = round_clamp((src[j] - m) * id, 0, 15);
            int b = round_clamp((src[j + 16] - m) * id, 0, 15);
            y[i].qs[j] = (uint8_t)(a | b << 4);
        }
    }
}

/* Packs 5-bit codes: low nibbles into qs (Q4_0 order), fifth bits into qh. */
static void q5_pack(const int q[32], uint8_t qh[4], uint8_t qs[16]) {
    uint32_t h = 0;
    for (int j = 0; j < 16; j++) {
        qs[j] = (uint8_t)((q[j] & 0x0F) | (q[j + 16] & 0x0F) << 4);
        h |= (uint32_t)(q[j] >> 4) << j;
        h |= (uint32_t)(q[j + 16] >> 4) << (j + 16);
    }
    for (int k = 0; k < 4; k++)
        qh[k] = (uint8_t)(h >> (8 * k));
}

void td_quant_ref_from_q5_0(const float *src, void *dst, int64_t n) {
    assert(n % TD_QK == 0);
    td_block_q5_0 *y = dst;
    for (int64_t i = 0; i < n / TD_QK; i++, src += TD_QK) {
        y[i].d = td_f32_to_fp16(signed_absmax(src, TD_QK) / -16.0f);
        float d = td_fp16_to_f32(y[i].d), id = d != 0.0f ? 1.0f / d : 0.0f;
        int q[32];
        for (int j = 0; j < 32; j++)
            q[j] = round_clamp(src[j] * id + 16.0f, 0, 31);
        q5_pack(q, y[i].qh, y[i].qs);
    }
}

void td_quant_ref_from_q5_1(const float *src, void *dst, int64_t n) {
    assert(n % TD_QK == 0);
    td_block_q5_1 *y = dst;
    for (int64_t i = 0; i < n / TD_QK; i++, src += TD_QK) {
        float lo, hi;
        min_max(src, TD_QK, &lo, &hi);
        y[i].d = td_f32_to_fp16((hi - lo) / 31.0f);
        y[i].m = td_f32_to_fp16(lo);
        float d = td_fp16_to_f32(y[i].d), m = td_fp16_to_f32(y[i].m);
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        int q[32];
        for (int j = 0; j < 32; j++)
            q[j] = round_clamp((src[j] - m) * id, 0, 31);
        q5_pack(q, y[i].qh, y[i].qs);
    }
}

/* ---- K-quants ---- */

/* Inverse of td_quant_kscales. */
static void kscales_pack(const uint8_t sc[8], const uint8_t mn[8], uint8_t s[12]) {
    for (int k = 0; k < 4; k++) {
        s[k] = (uint8_t)(sc[k] | (sc[k + 4] >> 4) << 6);
        s[k + 4] = (uint8_t)(mn[k] | (mn[k + 4] >> 4) << 6);
        s[k + 8] = (uint8_t)((sc[k + 4] & 0x0F) | (mn[k + 4] & 0x0F) << 4);
    }
}

/* Q4_K / Q5_K: each sub-block of 32 gets range [lo, hi] with lo <= 0 (the
 * format subtracts a non-negative min); scale = (hi - lo) / qmax. The eight
 * scales and mins are then quantized to 6 bits against the block's d and
 * dmin, and the codes are computed with the rounded values. */
static void k_quantize(const float *x, int qmax, uint16_t *d16, uint16_t *dmin16,
                       uint8_t scales[12], int q[256]) {
    float sub_scale[8], sub_min[8], max_scale = 0, max_min = 0;
    for (int k = 0; k < 8; k++) {
        float lo, hi;
        min_max(x + 32 * k, 32, &lo, &hi);
        lo = fminf(lo, 0.0f);
        sub_scale[k] = (hi - lo) / (float)qmax;
        sub_min[k] = -lo;
        max_scale = fmaxf(max_scale, sub_scale[k]);
        max_min = fmaxf(max_min, sub_min[k]);
    }
    *d16 = td_f32_to_fp16(max_scale / 63.0f);
    *dmin16 = td_f32_to_fp16(max_min / 63.0f);
    float d = td_fp16_to_f32(*d16), dmin = td_fp16_to_f32(*dmin16);
    uint8_t sc[8], mn[8];
    for (int k = 0; k < 8; k++) {
        sc[k] = (uint8_t)(d != 0.0f ? round_clamp(sub_scale[k] / d, 0, 63) : 0);
        mn[k] = (uint8_t)(dmin != 0.0f ? round_clamp(sub_min[k] / dmin, 0, 63) : 0);
        float ds = d * sc[k], dm = dmin * mn[k];
        float ids = ds != 0.0f ? 1.0f / ds : 0.0f;
        for (int l = 0; l < 32; l++)
            q[32 * k + l] = round_clamp((x[32 * k + l] + dm) * ids, 0, qmax);
    }
    kscales_pack(sc, mn, scales);
}

/* Codes back into the chunked nibble order of Q4_K/Q5_K (see quant_ref.c). */
static void k_pack(const int q[256], uint8_t qs[128], uint8_t *qh) {
    if (qh)
        memset(qh, 0, 32);
    for (int c = 0; c < 4; c++) {
        for (int l = 0; l < 32; l++) {
            int lo = q[64 * c + l], hi = q[64 * c + 32 + l];
            qs[32 * c + l] = (uint8_t)((lo & 0x0F) | (hi & 0x0F) << 4);
            if (qh)
                qh[l] = (uint8_t)(qh[l] | (lo >> 4) << (2 * c) | (hi >> 4) << (2 * c + 1));
        }
    }
}

void td_quant_ref_from_q4_k(const float *src, void *dst, int64_t n) {
    assert(n % TD_QK_K == 0);
    td_block_q4_k *y = dst;
    for (int64_t i = 0; i < n / TD_QK_K; i++, src += TD_QK_K) {
        int q[256];
        k_quantize(src, 15, &y[i].d, &y[i].dmin, y[i].scales, q);
        k_pack(q, y[i].qs, NULL);
    }
}

void td_quant_ref_from_q5_k(const float *src, void *dst, int64_t n) {
    assert(n % TD_QK_K == 0);
    td_block_q5_k *y = dst;
    for (int64_t i = 0; i < n / TD_QK_K; i++, src += TD_QK_K) {
        int q[256];
        k_quantize(src, 31, &y[i].d, &y[i].dmin, y[i].scales, q);
        k_pack(q, y[i].qs, y[i].qh);
    }
}

/* Q6_K: each group of 16 gets a signed scale that maps its largest-magnitude
 * value to code -32; the 16 scales become int8 against the block's d. */
void td_quant_ref_from_q6_k(const float *src, void *dst, int64_t n) {
    assert(n % TD_QK_K == 0);
    td_block_q6_k *y = dst;
    for (int64_t i = 0; i < n / TD_QK_K; i++, src += TD_QK_K) {
        float gscale[16], amax = 0;
        for (int g = 0; g < 16; g++) {
            gscale[g] = signed_absmax(src + 16 * g, 16) / -32.0f;
            amax = fmaxf(amax, fabsf(gscale[g]));
        }
        y[i].d = td_f32_to_fp16(amax / 127.0f);
        float d = td_fp16_to_f32(y[i].d);
        int q[256];
        for (int g = 0; g < 16; g++) {
            y[i].scales[g] = (int8_t)(d != 0.0f ? round_clamp(gscale[g] / d, -127, 127) : 0);
            float ds = d * y[i].scales[g], ids = ds != 0.0f ? 1.0f / ds : 0.0f;
            for (int l = 0; l < 16; l++)
                q[16 * g + l] = round_clamp(src[16 * g + l] * ids, -32, 31) + 32;
        }
        for (int h = 0; h < 2; h++) {
            uint8_t *ql = y[i].ql + 64 * h, *qh = y[i].qh + 32 * h;
            const int *c = q + 128 * h;
            for (int l = 0; l < 32; l++) {
                ql[l] = (uint8_t)((c[l] & 0x0F) | (c[l + 64] & 0x0F) << 4);
                ql[l + 32] = (uint8_t)((c[l + 32] & 0x0F) | (c[l + 96] & 0x0F) << 4);
                qh[l] = (uint8_t)((c[l] >> 4) | (c[l + 32] >> 4) << 2 | (c[l + 64] >> 4) << 4 |
                                  (c[l + 96] >> 4) << 6);
            }
        }
    }
}
