/* cuda_kquant.cuh — the arithmetic of the K-quant weights (Q4_K, Q5_K,
 * Q6_K) on the device, written once for device and host so that
 * test_cuda_host checks it against the CPU's kernels without a GPU.
 *
 * The CPU's K-quant kernels (quant_kq_avx2.c, and the VNNI build with the
 * same integers) reduce a row against Q8_K activations in eight int32
 * lanes: lane m holds, per 256-element super-block, the exact integer
 * sum over the eight 32-element pieces k of sub_scale * (codes . y) of
 * elements 32k+4m..32k+4m+3 (Q6_K adds -32 * its share of the group sums,
 * Q4_K/Q5_K keep min * group sums apart), then one or two fmas per
 * super-block into a float lane, and the eight float lanes are folded as
 * td_d_hsum8. Here eight threads are those lanes: td_cu_kq_load gives lane
 * m its codes and scales of a super-block, td_cu_kq_dot its integers,
 * td_cu_kq_step the fmas. Integers are exact in any order, so only the
 * float chain and the fold fix the bits, and those are the CPU's.
 *
 * On the device a super-block is its GGUF bytes padded to whole 32-bit
 * words (Q6_K's 210 bytes to 212), a row's super-blocks one after another
 * (cuda_layout.c).
 *
 * Activations (Q8_K, quant_ref_quantize.c): per super-block the element of
 * largest magnitude with its sign (the first on ties), iscale = -127 / it,
 * codes nearest-even(iscale * x) clamped to [-128, 127], d = 1 / iscale,
 * and the sums of each 16 codes. A warp quantizes a super-block, lane l
 * holding elements 8l..8l+7 (td_cu_q8k_*).
 */
#ifndef TD_CUDA_KQUANT_CUH
#define TD_CUDA_KQUANT_CUH

#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#define TD_QK_SUPER 256

__host__ __device__ __forceinline__ bool td_cu_is_kquant(uint32_t type) {
    return type == 12u || type == 13u || type == 14u; /* TD_TYPE_Q4_K, Q5_K, Q6_K */
}

/* 32-bit words of a super-block on the device. */
__host__ __device__ __forceinline__ int td_cu_kq_words(uint32_t type) {
    return type == 12u ? 36 : type == 13u ? 44 : 53;
}

__host__ __device__ __forceinline__ float td_cu_half_bits(uint16_t bits) {
    __half_raw r;
    r.x = bits;
    return __half2float(__half(r));
}

/* The four signed bytes of a and b multiplied pairwise and added to c. */
__host__ __device__ __forceinline__ int td_cu_dp4a(int a, int b, int c) {
#if defined(__CUDA_ARCH__)
    return __dp4a(a, b, c);
#else
    for (int k = 0; k < 4; k++) c += (int)(int8_t)(a >> (8 * k)) * (int)(int8_t)(b >> (8 * k));
    return c;
#endif
}

__host__ __device__ __forceinline__ uint8_t td_cu_byte(const uint32_t *words, int i) {
    return (uint8_t)(words[i >> 2] >> (8 * (i & 3)));
}

/* Sub-block j's 6-bit scale and min of a Q4_K/Q5_K super-block (the 12
 * bytes after d and dmin; td_quant_kscales). */
__host__ __device__ __forceinline__ void td_cu_kscale(const uint32_t *blk, int j, int *sc, int *mn) {
    const uint32_t *s = blk + 1;
    if (j < 4) {
        *sc = td_cu_byte(s, j) & 63;
        *mn = td_cu_byte(s, j + 4) & 63;
    } else {
        *sc = (td_cu_byte(s, j + 4) & 0x0F) | ((td_cu_byte(s, j - 4) >> 6) << 4);
        *mn = (td_cu_byte(s, j + 4) >> 4) | ((td_cu_byte(s, j) >> 6) << 4);
    }
}

/* Lane m's share of one super-block: its four codes of each piece k (the
 * elements 32k+4m..32k+4m+3), piece k's sub-scale, and the terms that do not
 * depend on the codes (Q4_K/Q5_K: lane m's min; Q6_K: the scales of groups
 * 2m and 2m+1). */
struct td_cu_kq_lane {
    int code[8], sc[8];
    int mn, sc_lo, sc_hi;
    float d, dmin;
};

template <int TYPE>
__host__ __device__ __forceinline__ void td_cu_kq_load(const uint32_t *blk, int m, td_cu_kq_lane *w) {
    if (TYPE == 14) { /* Q6_K: ql[128], qh[64], scales[16] (int8), d */
        const uint32_t *ql = blk, *qh = blk + 32, *scw = blk + 48;
        for (int h = 0; h < 2; h++) {
            const uint32_t A = ql[16 * h + m], B = ql[16 * h + 8 + m], H = qh[8 * h + m];
            /* elements 128h + 32i + l: low or high nibbles of ql, two bits of qh */
            w->code[4 * h + 0] = (int)((A & 0x0F0F0F0Fu) | ((H << 4) & 0x30303030u));
            w->code[4 * h + 1] = (int)((B & 0x0F0F0F0Fu) | ((H << 2) & 0x30303030u));
            w->code[4 * h + 2] = (int)(((A >> 4) & 0x0F0F0F0Fu) | (H & 0x30303030u));
            w->code[4 * h + 3] = (int)(((B >> 4) & 0x0F0F0F0Fu) | ((H >> 2) & 0x30303030u));
            for (int i = 0; i < 4; i++) /* groups of 16: lanes 0-3 the first, 4-7 the second */
                w->sc[4 * h + i] = (int)(int8_t)td_cu_byte(scw, 8 * h + 2 * i + (m >= 4));
        }
        w->sc_lo = (int)(int8_t)td_cu_byte(scw, 2 * m);
        w->sc_hi = (int)(int8_t)td_cu_byte(scw, 2 * m + 1);
        w->mn = 0;
        w->d = td_cu_half_bits((uint16_t)(blk[52] & 0xFFFFu));
        w->dmin = 0.0f;
        return;
    }
    /* Q4_K: d, dmin, scales[12], qs[128]; Q5_K: qh[32] before qs */
    const uint32_t *qs = blk + (TYPE == 12 ? 4 : 12);
    const uint32_t qh = TYPE == 13 ? blk[4 + m] : 0u;
    for (int c = 0; c < 4; c++) {
        const uint32_t q = qs[8 * c + m];
        for (int h = 0; h < 2; h++) {
            const int j = 2 * c + h;
            uint32_t code = (q >> (4 * h)) & 0x0F0F0F0Fu;
            if (TYPE == 13) code |= ((qh >> j) & 0x01010101u) << 4; /* bit j of each byte: the fifth bit */
            w->code[j] = (int)code;
            int mn;
            td_cu_kscale(blk, j, &w->sc[j], &mn);
        }
    }
    int sc;
    td_cu_kscale(blk, m, &sc, &w->mn);
    w->sc_lo = w->sc_hi = 0;
    w->d = td_cu_half_bits((uint16_t)(blk[0] & 0xFFFFu));
    w->dmin = td_cu_half_bits((uint16_t)(blk[0] >> 16));
}

/* Lane m's integers against a Q8_K super-block: y its 256 codes (4-byte
 * aligned), bs its 16 group sums. *isum as the CPU's lane m; *msum the min
 * term (Q4_K/Q5_K; 0 for Q6_K). */
template <int TYPE>
__host__ __device__ __forceinline__ void td_cu_kq_dot(const td_cu_kq_lane &w, const int8_t *y, const int16_t *bs,
                                                      int m, int *isum, int *msum) {
    const int pair = (int)bs[2 * m] + (int)bs[2 * m + 1];
    int s = TYPE == 14 ? -32 * ((int)bs[2 * m] * w.sc_lo + (int)bs[2 * m + 1] * w.sc_hi) : 0;
    for (int k = 0; k < 8; k++) s += w.sc[k] * td_cu_dp4a(w.code[k], *(const int *)(y + 32 * k + 4 * m), 0);
    *isum = s;
    *msum = TYPE == 14 ? 0 : w.mn * pair;
}

/* The lane's float chain, one super-block on: yd is the activation's d. */
template <int TYPE>
__host__ __device__ __forceinline__ float td_cu_kq_step(const td_cu_kq_lane &w, float yd, int isum, int msum,
                                                        float acc) {
    acc = fmaf(w.d * yd, (float)isum, acc);
    if (TYPE != 14) acc = fmaf(-w.dmin * yd, (float)msum, acc);
    return acc;
}

/* Element e (0..255) of a super-block as the CPU's to_float gives it. */
__host__ __device__ __forceinline__ float td_cu_kq_dequant(uint32_t type, const uint32_t *blk, int e) {
    if (type == 14u) {
        const int h = e / 128, r = e % 128, l = r % 32, quarter = r / 32;
        const int lo = td_cu_byte(blk, 64 * h + 32 * (quarter & 1) + l);
        const int hi = td_cu_byte(blk, 128 + 32 * h + l);
        const int q = ((quarter < 2 ? lo : lo >> 4) & 0x0F) | (((hi >> (2 * quarter)) & 3) << 4);
        const float d = td_cu_half_bits((uint16_t)(blk[52] & 0xFFFFu));
        return d * (float)(int8_t)td_cu_byte(blk, 192 + e / 16) * (float)(q - 32);
    }
    const int k = e / 32, l = e % 32, c = k / 2;
    const uint32_t *qs = blk + (type == 12u ? 4 : 12);
    const int byte = td_cu_byte(qs, 32 * c + l);
    int q = (k & 1) ? byte >> 4 : byte & 0x0F;
    if (type == 13u) q |= ((td_cu_byte(blk + 4, l) >> k) & 1) << 4;
    int sc, mn;
    td_cu_kscale(blk, k, &sc, &mn);
    const float d = td_cu_half_bits((uint16_t)(blk[0] & 0xFFFFu)), dmin = td_cu_half_bits((uint16_t)(blk[0] >> 16));
    const float ds = d * (float)sc, dm = dmin * (float)mn;
    return ds * (float)q - dm;
}

/* ---- Q8_K activations, a warp per super-block ---- */

/* The CPU's signed_absmax over a lane's elements base..base+7: the first
 * of largest magnitude (NaN never wins), as (magnitude, value, index). */
struct td_cu_absmax {
    float amax, vmax;
    int idx;
};

__host__ __device__ __forceinline__ td_cu_absmax td_cu_q8k_lane_max(const float v[8], int base) {
    td_cu_absmax a = {0.0f, 0.0f, 1 << 30};
    for (int k = 0; k < 8; k++)
        if (fabsf(v[k]) > a.amax) a.amax = fabsf(v[k]), a.vmax = v[k], a.idx = base + k;
    return a;
}

/* Of two lanes' maxima, the one the CPU's scan meets first: the larger
 * magnitude, or on a tie the lower index. Exact in any reduction order. */
__host__ __device__ __forceinline__ td_cu_absmax td_cu_q8k_pick(td_cu_absmax a, td_cu_absmax b) {
    return (b.amax > a.amax || (b.amax == a.amax && b.idx < a.idx)) ? b : a;
}

/* A lane's eight codes for iscale = -127 / max (max != 0); returns their sum. */
__host__ __device__ __forceinline__ int td_cu_q8k_lane_codes(const float v[8], float iscale, int8_t q[8]) {
    int sum = 0;
    for (int k = 0; k < 8; k++) {
        const float t = rintf(iscale * v[k]); /* nearest, ties to even */
        const int c = t == t ? (t > 127.0f ? 127 : t < -128.0f ? -128 : (int)t) : 0;
        q[k] = (int8_t)c;
        sum += c;
    }
    return sum;
}

#endif
