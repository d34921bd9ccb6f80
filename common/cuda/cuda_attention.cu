/* cuda_attention.cu — attention over the fp16 cache with token-tree masks,
 * one block per (query head, row), in the operation order of the CPU's
 * td_op_attend_scalar (ops.c):
 *   query rounded to fp16; each score a dot product in eight lanes
 *   (element d in lane d % 8) folded by td_op_hsum8, times the scale;
 *   softmax with td_op_exp, the exponentials summed eight positions at a
 *   time (hsum8) into a double in position order, weights rounded to fp16;
 *   each output element the V sum in eight lanes (position t in lane t % 8).
 * Positions, lanes and groups are spread over threads, but every chain of
 * additions runs in the CPU's order, so each (row, head) carries its bits
 * and depends on nothing else in the pass.
 */
#include <math.h>

#include "cuda/cuda_internal.cuh"

#define AT_THREADS 512
#define FULL 0xffffffffu

size_t td_cu_attention_smem(int32_t max_len, int32_t head_dim) {
    size_t floats = (size_t)head_dim * 9 + (size_t)max_len + 8 + ((size_t)max_len + 7) / 8 + 8;
    return floats * sizeof(float);
}

__global__ void __launch_bounds__(AT_THREADS) k_attend(td_attn_args a, td_dpass p, td_dkv kv) {
    TD_DYNAMIC_SMEM(float, sm);
    __shared__ float red[AT_THREADS / 32];
    __shared__ float inv_sh;
    const int hd = a.head_dim, h = blockIdx.x, r = blockIdx.y;
    const int kvh = h / (a.n_head / a.n_head_kv), q_dim = a.n_head * hd;
    float *q16 = sm, *part = q16 + hd, *sc = part + 8 * hd, *gs = sc + kv.max_len + 8;
    const int base = p.base[r], n = base + p.chain_len[r];
    const int32_t *chain = p.chain + p.chain_off[r];
    const __half *kb = kv.tab[p.seq[r]] + (size_t)(kv.layer * 2) * kv.max_len * kv.kv_dim + (size_t)kvh * hd;
    const __half *vb = kb + (size_t)kv.max_len * kv.kv_dim;
    td_d_pdl_wait(); /* the pass descriptor was read above: written before the pass, never by a kernel */
    td_d_pdl_release();

    for (int d = threadIdx.x; d < hd; d += AT_THREADS) q16[d] = td_d_round_f16(a.q[(size_t)r * q_dim + h * hd + d]);
    __syncthreads();

    float lmax = -INFINITY;
    for (int t = threadIdx.x; t < n; t += AT_THREADS) {
        int slot = t < base ? t : chain[t - base];
        const uint4 *kr = (const uint4 *)(kb + (size_t)slot * kv.kv_dim);
        float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma unroll 8
        for (int d0 = 0; d0 < hd; d0 += 8) {
            uint4 raw = kr[d0 / 8];
            const __half *hv = (const __half *)&raw;
#pragma unroll
            for (int k = 0; k < 8; k++) lane[k] = fmaf(__half2float(hv[k]), q16[d0 + k], lane[k]);
        }
        float s = td_d_hsum8(lane) * a.scale;
        sc[t] = s;
        lmax = fmaxf(lmax, s);
    }
    for (int off = 16; off; off >>= 1) lmax = fmaxf(lmax, __shfl_xor_sync(FULL, lmax, off));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = lmax;
    __syncthreads();
    float mx = red[0];
    for (int w = 1; w < AT_THREADS / 32; w++) mx = fmaxf(mx, red[w]);

    for (int t = threadIdx.x; t < n; t += AT_THREADS) sc[t] = td_d_exp(sc[t] - mx);
    __syncthreads();
    const int ng = (n + 7) / 8;
    for (int g = threadIdx.x; g < ng; g += AT_THREADS) {
        float lane[8];
#pragma unroll
        for (int j = 0; j < 8; j++) lane[j] = 8 * g + j < n ? sc[8 * g + j] : 0.0f;
        gs[g] = td_d_hsum8(lane);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double sum = 0.0;
        for (int g = 0; g < ng; g++) sum += (double)gs[g];
        inv_sh = (float)(1.0 / sum);
    }
    __syncthreads();
    const float inv = inv_sh;
    for (int t = threadIdx.x; t < n; t += AT_THREADS) sc[t] = td_d_round_f16(sc[t] * inv);
    __syncthreads();

    for (int pi = threadIdx.x; pi < 8 * hd; pi += AT_THREADS) {
        int j = pi / hd, d = pi % hd;
        float acc = 0.0f;
        int t = j;
        /* eight positions' loads in flight before their (serial) adds */
        for (; t + 56 < n; t += 64) {
            float v[8];
#pragma unroll
            for (int u = 0; u < 8; u++) {
                int tt = t + 8 * u, slot = tt < base ? tt : chain[tt - base];
                v[u] = __half2float(vb[(size_t)slot * kv.kv_dim + d]);
            }
#pragma unroll
            for (int u = 0; u < 8; u++) acc = fmaf(v[u], sc[t + 8 * u], acc);
        }
        for (; t < n; t += 8) {
            int slot = t < base ? t : chain[t - base];
            acc = fmaf(__half2float(vb[(size_t)slot * kv.kv_dim + d]), sc[t], acc);
        }
        part[j * hd + d] = acc;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < hd; d += AT_THREADS) {
        float l[8];
#pragma unroll
        for (int k = 0; k < 8; k++) l[k] = part[k * hd + d];
        float o = td_d_hsum8(l);
        a.out[(size_t)r * q_dim + h * hd + d] = o;
        q16[d] = o; /* the query is spent: its room holds the output for quantizing */
    }
    if (!a.qout.qs) return;
    /* the head's output is whole quantization blocks (head_dim % 32 == 0):
     * quantize it here for the output projection */
    __syncthreads();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, ldb = a.qout.ld / TD_QK;
    for (int b = warp; b < hd / TD_QK; b += AT_THREADS / 32) {
        const int blk = (h * hd) / TD_QK + b;
        td_d_quant_block(q16[b * TD_QK + lane], lane, a.qout.qs + (size_t)r * a.qout.ld + blk * TD_QK,
                         a.qout.d + (size_t)r * ldb + blk, a.qout.s + (size_t)r * ldb + blk);
    }
}

cudaError_t td_cu_attention_prepare(size_t smem) {
    return cudaFuncSetAttribute(k_attend, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
}

cudaError_t td_cu_attention(const td_attn_args *a, const td_dpass *p, const td_dkv *kv, int32_t n_rows,
                            const td_lc &lc) {
    dim3 grid((unsigned)a->n_head, (unsigned)n_rows);
    return td_cu_launch(lc, k_attend, grid, dim3(AT_THREADS), td_cu_attention_smem(kv->max_len, a->head_dim), *a, *p,
                        *kv);
}
