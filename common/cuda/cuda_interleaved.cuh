/* cuda_interleaved.cuh — the arithmetic of Q4_0, Q5_0 and Q5_1 weights on
 * the device, written once for device and host so that test_cuda_host
 * checks it against the CPU's kernels without a GPU.
 *
 * The CPU's kernels for these formats (quant_interleaved_avx2.c, and the
 * VNNI build with the same integers) take four blocks at a time and give
 * each block two int32 lanes: lane 2j of block j of a group holds the
 * integer sum over elements {0-3, 8-11, 16-19, 24-27} of codes (unsigned:
 * Q4_0's w + 8, Q5_0's w + 16) times activation codes, minus the bias times
 * the sum of the block's 32 activation codes; lane 2j + 1 the other
 * elements, no bias. Each lane then takes fma(sum, d_w * d_x, acc) per
 * group (Q5_1 a second fma(m_w, s_x, acc), s_x 0 in odd lanes), a group's
 * missing blocks count as zeros, and the eight lanes fold as td_d_hsum8.
 * Here eight threads are those lanes (thread 2j + h: block j of each group,
 * half h). td_cu_il_step is one lane's one group; test_cuda_host runs the
 * eight lanes against the CPU's dot products bit for bit.
 *
 * A block on the device is repacked to whole words, codes first: words 0-3
 * the 16 code bytes (byte i: element i in the low nibble, element i + 16 in
 * the high one), then Q5's fifth bits (bit e: element e), then d (and
 * Q5_1's m) as fp16 halves: 5 words for Q4_0, 6 for Q5_0 and Q5_1.
 */
#ifndef TD_CUDA_INTERLEAVED_CUH
#define TD_CUDA_INTERLEAVED_CUH

#include <cuda_fp16.h>
#include <stdint.h>

#include "cuda/cuda_kquant.cuh" /* td_cu_dp4a */

#define TD_IL_Q4_0 2u
#define TD_IL_Q5_0 6u
#define TD_IL_Q5_1 7u

__host__ __device__ __forceinline__ bool td_cu_is_interleaved(uint32_t type) {
    return type == TD_IL_Q4_0 || type == TD_IL_Q5_0 || type == TD_IL_Q5_1;
}

/* 32-bit words of a repacked block. */
__host__ __device__ __forceinline__ int td_cu_il_words(uint32_t type) { return type == TD_IL_Q4_0 ? 5 : 6; }

__host__ __device__ __forceinline__ float td_cu_il_half(uint32_t bits16) {
    __half_raw r;
    r.x = (unsigned short)(bits16 & 0xFFFFu);
    return __half2float(__half(r));
}

/* The four bits x (bit u: byte u) moved to bit 4 of each byte. */
__host__ __device__ __forceinline__ uint32_t td_cu_il_fifth(uint32_t x) {
    return ((x & 1u) << 4) | ((x & 2u) << 11) | ((x & 4u) << 18) | ((x & 8u) << 25);
}

/* Lane half h's codes of a block: code[k] holds elements 8k+4h..8k+4h+3. */
struct td_cu_il_lane {
    int code[4];
    float d, m;
};

template <uint32_t TYPE>
__host__ __device__ __forceinline__ void td_cu_il_load(const uint32_t *blk, int h, td_cu_il_lane *w) {
    const uint32_t lo = blk[h], hi = blk[2 + h]; /* code bytes 4h.., 8+4h.. */
    uint32_t c[4] = {lo & 0x0F0F0F0Fu, hi & 0x0F0F0F0Fu, (lo >> 4) & 0x0F0F0F0Fu, (hi >> 4) & 0x0F0F0F0Fu};
    if (TYPE != TD_IL_Q4_0) {
        const uint32_t qh = blk[4];
        for (int k = 0; k < 4; k++) c[k] |= td_cu_il_fifth((qh >> (8 * k + 4 * h)) & 0xFu);
    }
    for (int k = 0; k < 4; k++) w->code[k] = (int)c[k];
    const uint32_t dm = blk[TYPE == TD_IL_Q4_0 ? 4 : 5];
    w->d = td_cu_il_half(dm);
    w->m = TYPE == TD_IL_Q5_1 ? td_cu_il_half(dm >> 16) : 0.0f;
}

/* One group on for lane half h: y the activation block's 32 codes (4-byte
 * aligned), yd its scale, ys its fp16 s (Q8_1, for Q5_1). */
template <uint32_t TYPE>
__host__ __device__ __forceinline__ float td_cu_il_step(const td_cu_il_lane &w, const int8_t *y, float yd, float ys,
                                                        int h, float acc) {
    const int *yw = (const int *)y;
    int s = 0;
    for (int k = 0; k < 4; k++) s = td_cu_dp4a(w.code[k], yw[2 * k + h], s);
    if (TYPE != TD_IL_Q5_1 && h == 0) { /* the bias, once per block: 8 or 16 times sum(y) */
        int sy = 0;
        for (int k = 0; k < 8; k++) sy = td_cu_dp4a(0x01010101, yw[k], sy);
        s -= sy * (TYPE == TD_IL_Q4_0 ? 8 : 16);
    }
    acc = fmaf((float)s, w.d * yd, acc);
    if (TYPE == TD_IL_Q5_1) acc = fmaf(w.m, h == 0 ? ys : 0.0f, acc);
    return acc;
}

/* A group's missing block (past the row's end): zeros through the same
 * operations, as the CPU's zero-padded last group. */
template <uint32_t TYPE> __host__ __device__ __forceinline__ float td_cu_il_step_empty(float acc) {
    acc = fmaf(0.0f, 0.0f * 0.0f, acc);
    if (TYPE == TD_IL_Q5_1) acc = fmaf(0.0f, 0.0f, acc);
    return acc;
}

/* Element e (0..31) of a repacked block as the CPU's to_float gives it. */
__host__ __device__ __forceinline__ float td_cu_il_dequant(uint32_t type, const uint32_t *blk, int e) {
    const int i = e & 15;
    const int byte = (int)((blk[i >> 2] >> (8 * (i & 3))) & 0xFFu);
    int q = e < 16 ? (byte & 0x0F) : (byte >> 4);
    if (type == TD_IL_Q4_0) return (float)(q - 8) * td_cu_il_half(blk[4]);
    q |= (int)((blk[4] >> e) & 1u) << 4;
    const float d = td_cu_il_half(blk[5]);
    if (type == TD_IL_Q5_0) return (float)(q - 16) * d;
    return (float)q * d + td_cu_il_half(blk[5] >> 16);
}

#endif
