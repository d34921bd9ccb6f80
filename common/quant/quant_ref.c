/* quant_ref.c — scalar reference kernels: fp16/bf16 conversions, the
 * dequantizers (to_float) and the dot products, written straight from the
 * block layouts (gguf-facts §2). They define the meaning of every format; the
 * SIMD kernels are tested against them. Speed is not a goal here.
 */
#include <assert.h>
#include <math.h>
#include <string.h>

#include "quant/quant_impl.h"

/* ---- fp16 / bf16 ---- */

float td_fp16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    if (exp == 0) { /* zero or subnormal: mant * 2^-24, exact in f32 */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp == 31) /* inf / NaN: payload kept */
        return td_bits_f32(sign | 0x7F800000u | (mant << 13));
    return td_bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

/* Round to nearest, ties to even, like the F16C instruction, so that the
 * scalar and SIMD paths store identical bits. NaN stays NaN (quieted, top
 * payload bits kept). */
uint16_t td_f32_to_fp16(float f) {
    uint32_t x = td_f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    x &= 0x7FFFFFFF;
    if (x > 0x7F800000) /* NaN */
        return (uint16_t)(sign | 0x7E00 | ((x >> 13) & 0x3FF));
    if (x >= 0x477FF000) /* >= 65520 rounds to inf (also inf itself) */
        return (uint16_t)(sign | 0x7C00);
    uint32_t exp = x >> 23;
    uint32_t mant = (x & 0x7FFFFF) | (exp ? 0x800000u : 0);
    uint32_t shift, q;
    if (exp >= 113) { /* normal half: keep 10 of the 23 mantissa bits */
        shift = 13;
        q = ((exp - 112) << 10) | ((mant >> 13) & 0x3FF);
    } else { /* subnormal half (or zero): value / 2^-24 = mant * 2^(exp-126) */
        shift = 126 - (exp ? exp : 1);
        if (shift > 25)
            return sign; /* below a quarter of the smallest subnormal */
        q = mant >> shift;
    }
    uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1)))
        q++; /* a carry into the exponent field is exactly right */
    return (uint16_t)(sign | q);
}

float td_bf16_to_f32(uint16_t h) {
    return td_bits_f32((uint32_t)h << 16);
}

uint16_t td_f32_to_bf16(float f) {
    uint32_t x = td_f32_bits(f);
    if ((x & 0x7FFFFFFF) > 0x7F800000)
        return (uint16_t)((x >> 16) | 0x40); /* quiet NaN */
    x += 0x7FFF + ((x >> 16) & 1); /* ties to even */
    return (uint16_t)(x >> 16);
}

static float h2f(uint16_t h) {
    return td_fp16_to_f32(h);
}

/* ---- dequantizers ---- */

void td_quant_ref_to_f32(const void *src, float *dst, int64_t n) {
    memcpy(dst, src, (size_t)n * sizeof(float));
}

void td_quant_ref_to_f16(const void *src, float *dst, int64_t n) {
    const uint16_t *x = src;
    for (int64_t i = 0; i < n; i++)
        dst[i] = td_fp16_to_f32(x[i]);
}

void td_quant_ref_to_bf16(const void *src, float *dst, int64_t n) {
    const uint16_t *x = src;
    for (int64_t i = 0; i < n; i++)
        dst[i] = td_bf16_to_f32(x[i]);
}

void td_quant_ref_to_q4_0(const void *src, float *dst, int64_t n) {
    assert(n % TD_QK == 0);
    const td_block_q4_0 *b = src;
    for (int64_t i = 0; i < n / TD_QK; i++, b++, dst += TD_QK) {
        float d = h2f(b->d);
        for (int j = 0; j < 16; j++) {
            dst[j] = (float)((b->qs[j] & 0x0F) - 8) * d;
            dst[j + 16] = (float)((b->qs[j] >> 4) - 8) * d;
        }
    }
}

void td_quant_ref_to_q4_1(const void *src, float *dst, int64_t n) {
    assert(n % TD_QK == 0);
    const td_block_q4_1 *b = src;
    for (int64_t i = 0; i < n / TD_QK; i++, b++, dst += TD_QK) {
        float d = h2f(b->d), m = h2f(b->m);
        for (int j = 0; j < 16; j++) {
            dst[j] = (float)(b->qs[j] & 0x0F) * d + m;
            dst[j + 16] = (float)(b->qs[j] >> 4) * d + m;
        }
    }
}

/* 5-bit codes: nibble order as Q4_0, bit j of qh (little-endian) is the
 * fifth bit of element j. */
static void q5_codes(const uint8_t qh[4], const uint8_t qs[16], int q[32]) {
    uint32_t h = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 |
                 (uint32_t)qh[3] << 24;
    for (int j = 0; j < 16; j++) {
        q[j] = (qs[j] & 0x0F) | (int)(((h >> j) & 1) << 4);
        q[j + 16] = (qs[j] >> 4) | (int)(((h >> (j + 16)) & 1) << 4);
    }
}

void td_quant_ref_to_q5_0(const void *src, float *dst, int64_t n) {
    assert(n % TD_QK == 0);
    const td_block_q5_0 *b = src;
    for (int64_t i = 0; i < n / TD_QK; i++, b++, dst += TD_QK) {
        int q[32];
        q5_codes(b->qh, b->qs, q);
        float d = h2f(b->d);
        for (int j = 0; j < 32; j++)
            dst[j] = (float)(q[j] - 16) * d;
    }
}

void td_quant_ref_to_q5_1(const void *src, float *dst, int64_t n) {
    assert(n % TD_QK == 0);
    const td_block_q5_1 *b = src;
    for (int64_t i = 0; i < n / TD_QK; i++, b++, dst += TD_QK) {
        int q[32];
        q5_codes(b->qh, b->qs, q);
        float d = h2f(b->d), m = h2f(b->m);
        for (int j = 0; j < 32; j++)
            dst[j] = (float)q[j] * d + m;
    }
}

void td_quant_ref_to_q8_0(const void *src, float *dst, int64_t n) {
    assert(n % TD_QK == 0);
    const td_block_q8_0 *b = src;
    for (int64_t i = 0; i < n / TD_QK; i++, b++, dst += TD_QK) {
        float d = h2f(b->d);
        for (int j = 0; j < 32; j++)
            dst[j] = (float)b->qs[j] * d;
    }
}

void td_quant_ref_to_q8_1(const void *src, float *dst, int64_t n) {
    assert(n % TD_QK == 0);
    const td_block_q8_1 *b = src;
    for (int64_t i = 0; i < n / TD_QK; i++, b++, dst += TD_QK) {
        float d = h2f(b->d);
        for (int j = 0; j < 32; j++)
            dst[j] = (float)b->qs[j] * d;
    }
}

/* Codes of a Q4_K/Q5_K super-block in element order (0..15, or 0..31 with
 * the qh bits): chunk c of 64 elements takes the low nibbles of qs[32c..]
 * then their high nibbles. */
static void k_codes(const uint8_t qs[128], const uint8_t *qh, int q[256]) {
    for (int c = 0; c < 4; c++) {
        for (int l = 0; l < 32; l++) {
            int lo = qs[32 * c + l] & 0x0F, hi = qs[32 * c + l] >> 4;
            if (qh) {
                lo |= ((qh[l] >> (2 * c)) & 1) << 4;
                hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
            }
            q[64 * c + l] = lo;
            q[64 * c + 32 + l] = hi;
        }
    }
}

static void k_dequant(uint16_t d16, uint16_t dmin16, const uint8_t scales[12],
                      const int q[256], float *dst) {
    uint8_t sc[8], mn[8];
    td_quant_kscales(scales, sc, mn);
    float d = h2f(d16), dmin = h2f(dmin16);
    for (int k = 0; k < 8; k++) {
        float ds = d * sc[k], dm = dmin * mn[k];
        for (int l = 0; l < 32; l++)
            dst[32 * k + l] = ds * (float)q[32 * k + l] - dm;
    }
}

void td_quant_ref_to_q4_k(const void *src, float *dst, int64_t n) {
    assert(n % TD_QK_K == 0);
    const td_block_q4_k *b = src;
    for (int64_t i = 0; i < n / TD_QK_K; i++, b++, dst += TD_QK_K) {
        int q[256];
        k_codes(b->qs, NULL, q);
        k_dequant(b->d, b->dmin, b->scales, q, dst);
    }
}

void td_quant_ref_to_q5_k(const void *src, float *dst, int64_t n) {
    assert(n % TD_QK_K == 0);
    const td_block_q5_k *b = src;
    for (int64_t i = 0; i < n / TD_QK_K; i++, b++, dst += TD_QK_K) {
        int q[256];
        k_codes(b->qs, b->qh, q);
        k_dequant(b->d, b->dmin, b->scales, q, dst);
    }
}

/* Q6_K codes (0..63) in element order: two halves of 128 elements. */
static void q6_codes(const td_block_q6_k *b, int q[256]) {
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
        int *o = q + 128 * h;
        for (int l = 0; l < 32; l++) {
            o[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
            o[l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
            o[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            o[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
}

void td_quant_ref_to_q6_k(const void *src, float *dst, int64_t n) {
    assert(n % TD_QK_K == 0);
    const td_block_q6_k *b = src;
    for (int64_t i = 0; i < n / TD_QK_K; i++, b++, dst += TD_QK_K) {
        int q[256];
        q6_codes(b, q);
        float d = h2f(b->d);
        for (int e = 0; e < 256; e++)
            dst[e] = d * (float)b->scales[e / 16] * (float)(q[e] - 32);
    }
}

void td_quant_ref_to_q8_k(const void *src, float *dst, int64_t n) {
    assert(n % TD_QK_K == 0);
    const td_block_q8_k *b = src;
    for (int64_t i = 0; i < n / TD_QK_K; i++, b++, dst += TD_QK_K)
        for (int e = 0; e < 256; e++)
            dst[e] = b->d * (float)b->qs[e];
}

/* ---- dot products (weight row x activation row in vec_dot_type) ---- */

/* Float rows: accumulate in double so that the reference is the accurate
 * one the SIMD sums are compared with. */
void td_quant_ref_dot_f32(int64_t n, float *s, const void *x, const void *y) {
    const float *a = x, *b = y;
    double sum = 0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)a[i] * b[i];
    *s = (float)sum;
}

void td_quant_ref_dot_f16(int64_t n, float *s, const void *x, const void *y) {
    const uint16_t *a = x, *b = y;
    double sum = 0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)td_fp16_to_f32(a[i]) * td_fp16_to_f32(b[i]);
    *s = (float)sum;
}

void td_quant_ref_dot_bf16(int64_t n, float *s, const void *x, const void *y) {
    const uint16_t *a = x, *b = y;
    double sum = 0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)td_bf16_to_f32(a[i]) * td_bf16_to_f32(b[i]);
    *s = (float)sum;
}

/* Legacy blocks: an exact integer dot per block, scaled by d_x * d_y. */
void td_quant_ref_dot_q4_0(int64_t n, float *s, const void *x, const void *y) {
    assert(n % TD_QK == 0);
    const td_block_q4_0 *a = x;
    const td_block_q8_0 *b = y;
    float sum = 0;
    for (int64_t i = 0; i < n / TD_QK; i++) {
        int sumi = 0;
        for (int j = 0; j < 16; j++) {
            sumi += ((a[i].qs[j] & 0x0F) - 8) * b[i].qs[j];
            sumi += ((a[i].qs[j] >> 4) - 8) * b[i].qs[j + 16];
        }
        sum += h2f(a[i].d) * h2f(b[i].d) * (float)sumi;
    }
    *s = sum;
}

/* sum_j (q_j d_x + m_x) d_y y_j = d_x d_y sum q_j y_j + m_x s_y */
/* Q4_1 and Q8_0 in llama.cpp's order (see quant_blockwise_avx2.c): eight
 * lanes, lane l holding the int sum of elements 4l..4l+3 of each block,
 * acc[l] = fma(d_w * d_x, lane, acc[l]) block by block, the Q4_1 min term in
 * its own fma chain, lanes summed by ref_lanes_sum. The SIMD kernels give
 * these bits exactly. */
static float ref_lanes_sum(const float l[8]) {
    float c0 = l[0] + l[4], c1 = l[1] + l[5], c2 = l[2] + l[6], c3 = l[3] + l[7];
    return (c0 + c2) + (c1 + c3);
}

void td_quant_ref_dot_q4_1(int64_t n, float *s, const void *x, const void *y) {
    assert(n % TD_QK == 0);
    const td_block_q4_1 *a = x;
    const td_block_q8_1 *b = y;
    float acc[8] = {0}, mins = 0;
    for (int64_t i = 0; i < n / TD_QK; i++) {
        float scale = h2f(a[i].d) * h2f(b[i].d);
        for (int l = 0; l < 8; l++) {
            int sumi = 0;
            for (int e = 4 * l; e < 4 * l + 4; e++) /* element e: low nibbles first */
                sumi += (e < 16 ? a[i].qs[e] & 0x0F : a[i].qs[e - 16] >> 4) * b[i].qs[e];
            acc[l] = fmaf(scale, (float)sumi, acc[l]);
        }
        mins = fmaf(h2f(a[i].m), h2f(b[i].s), mins);
    }
    *s = ref_lanes_sum(acc) + mins;
}

void td_quant_ref_dot_q5_0(int64_t n, float *s, const void *x, const void *y) {
    assert(n % TD_QK == 0);
    const td_block_q5_0 *a = x;
    const td_block_q8_0 *b = y;
    float sum = 0;
    for (int64_t i = 0; i < n / TD_QK; i++) {
        int q[32], sumi = 0;
        q5_codes(a[i].qh, a[i].qs, q);
        for (int j = 0; j < 32; j++)
            sumi += (q[j] - 16) * b[i].qs[j];
        sum += h2f(a[i].d) * h2f(b[i].d) * (float)sumi;
    }
    *s = sum;
}

void td_quant_ref_dot_q5_1(int64_t n, float *s, const void *x, const void *y) {
    assert(n % TD_QK == 0);
    const td_block_q5_1 *a = x;
    const td_block_q8_1 *b = y;
    float sum = 0;
    for (int64_t i = 0; i < n / TD_QK; i++) {
        int q[32], sumi = 0;
        q5_codes(a[i].qh, a[i].qs, q);
        for (int j = 0; j < 32; j++)
            sumi += q[j] * b[i].qs[j];
        sum += h2f(a[i].d) * h2f(b[i].d) * (float)sumi + h2f(a[i].m) * h2f(b[i].s);
    }
    *s = sum;
}

void td_quant_ref_dot_q8_0(int64_t n, float *s, const void *x, const void *y) {
    assert(n % TD_QK == 0);
    const td_block_q8_0 *a = x, *b = y;
    float acc[8] = {0};
    for (int64_t i = 0; i < n / TD_QK; i++) {
        float scale = h2f(a[i].d) * h2f(b[i].d);
        for (int l = 0; l < 8; l++) {
            int sumi = 0;
            for (int e = 4 * l; e < 4 * l + 4; e++)
                sumi += a[i].qs[e] * b[i].qs[e];
            acc[l] = fmaf(scale, (float)sumi, acc[l]);
        }
    }
    *s = ref_lanes_sum(acc);
}

/* K-quants against Q8_K: per super-block the scaled code sum is an exact
 * integer; the mins only need the activation group sums (bsums):
 * sum_e (d sc q_e - dmin mn) y_e = d sum_k sc_k S_k - dmin sum_k mn_k B_k. */
static float k_dot_block(uint16_t d16, uint16_t dmin16, const uint8_t scales[12],
                         const int q[256], const td_block_q8_k *b) {
    uint8_t sc[8], mn[8];
    td_quant_kscales(scales, sc, mn);
    int sumi = 0, summ = 0;
    for (int k = 0; k < 8; k++) {
        int sk = 0;
        for (int l = 0; l < 32; l++)
            sk += q[32 * k + l] * b->qs[32 * k + l];
        sumi += sc[k] * sk;
        summ += mn[k] * (b->bsums[2 * k] + b->bsums[2 * k + 1]);
    }
    return h2f(d16) * b->d * (float)sumi - h2f(dmin16) * b->d * (float)summ;
}

void td_quant_ref_dot_q4_k(int64_t n, float *s, const void *x, const void *y) {
    assert(n % TD_QK_K == 0);
    const td_block_q4_k *a = x;
    const td_block_q8_k *b = y;
    float sum = 0;
    for (int64_t i = 0; i < n / TD_QK_K; i++) {
        int q[256];
        k_codes(a[i].qs, NULL, q);
        sum += k_dot_block(a[i].d, a[i].dmin, a[i].scales, q, &b[i]);
    }
    *s = sum;
}

void td_quant_ref_dot_q5_k(int64_t n, float *s, const void *x, const void *y) {
    assert(n % TD_QK_K == 0);
    const td_block_q5_k *a = x;
    const td_block_q8_k *b = y;
    float sum = 0;
    for (int64_t i = 0; i < n / TD_QK_K; i++) {
        int q[256];
        k_codes(a[i].qs, a[i].qh, q);
        sum += k_dot_block(a[i].d, a[i].dmin, a[i].scales, q, &b[i]);
    }
    *s = sum;
}

void td_quant_ref_dot_q6_k(int64_t n, float *s, const void *x, const void *y) {
    assert(n % TD_QK_K == 0);
    const td_block_q6_k *a = x;
    const td_block_q8_k *b = y;
    float sum = 0;
    for (int64_t i = 0; i < n / TD_QK_K; i++) {
        int q[256], sumi = 0;
        q6_codes(&a[i], q);
        for (int g = 0; g < 16; g++) {
            int sg = 0;
            for (int l = 0; l < 16; l++)
                sg += (q[16 * g + l] - 32) * b[i].qs[16 * g + l];
            sumi += a[i].scales[g] * sg;
        }
        sum += h2f(a[i].d) * b[i].d * (float)sumi;
    }
    *s = sum;
}
