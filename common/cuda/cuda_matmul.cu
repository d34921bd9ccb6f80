/* cuda_matmul.cu — quantized matrix products in the CPU's reference order.
 *
 * The CPU reference (quant_ref.c) reduces a Q4_1 or Q8_0 row dot product in
 * eight lanes: lane l holds the integer sum of elements 4l..4l+3 of each
 * block, accumulated block after block as acc[l] = fma(d_w * d_x, sum, acc[l]);
 * the lanes are folded by td_op_hsum8, and Q4_1 adds its own fma chain of
 * minimum terms. Here eight threads are those eight lanes: each owns one
 * 32-bit word of codes per block, one __dp4a gives its integer sum, and the
 * float chain runs over blocks in the same order. So every output carries
 * the CPU's bits, and, the order being fixed per (output, row), a row's
 * result never depends on the other rows of the pass (batch invariance).
 * Q4_0's reference is one chain per output: the eight integer sums are added
 * exactly (shuffles) and one thread continues the float chain.
 *
 * A warp computes four outputs for a tile of R activation rows, staged in
 * shared memory: the weight word is read once and used for every row of the
 * tile (verification rows cost little more than one). The SwiGLU form also
 * quantizes its output for the down projection (one 32-wide block of
 * outputs per thread block), saving a kernel per layer.
 */
#include "cuda/cuda_internal.cuh"

#define MM_OUT_PER_WARP 4
#define FULL 0xffffffffu
/* Blocks of the codes a thread loads before it starts adding: the adds are
 * a serial chain, so the loads of a whole chunk must be in flight at once
 * (at one row, a few warps per SM are all there is to hide latency with). */
#define MM_CHUNK 16

template <int TYPE> struct words_per_block { static const int n = TYPE == TD_TYPE_Q8_0 ? 8 : 4; };

/* Lane l's four codes of a block: elements 4l..4l+3 (Q4: low nibbles are
 * elements 0..15, high nibbles 16..31 of the same 16 bytes). */
template <int TYPE> __device__ __forceinline__ int lane_codes(const uint32_t *blk, int l) {
    if (TYPE == TD_TYPE_Q8_0) return (int)blk[l];
    uint32_t w = blk[l & 3];
    return (int)((l < 4 ? w : (w >> 4)) & 0x0F0F0F0Fu);
}

struct chain_state {
    const uint32_t *qs;
    const __half *d, *m;
};

/* The block's activation rows, staged in shared memory: codes (R, n_in),
 * scales (R, nb), sums (R, nb). */
struct staged {
    const int8_t *qs;
    const float *d, *s;
    int n_in, nb;
};

template <int TYPE, int R>
__device__ __forceinline__ void dot_tile(const chain_state &w, bool valid, int nb, const staged &x, int nr,
                                         int lane8, float acc[R], float mins[R]) {
    const int WPB = words_per_block<TYPE>::n;
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.0f, mins[r] = 0.0f;
    for (int i0 = 0; i0 < nb; i0 += MM_CHUNK) {
        int wv[MM_CHUNK];
        float dw[MM_CHUNK], mw[MM_CHUNK];
#pragma unroll
        for (int k = 0; k < MM_CHUNK; k++) {
            const int i = i0 + k;
            const bool ok = valid && i < nb;
            wv[k] = ok ? lane_codes<TYPE>(w.qs + (size_t)i * WPB, lane8) : 0;
            dw[k] = ok ? __half2float(w.d[i]) : 0.0f;
            mw[k] = (TYPE == TD_TYPE_Q4_1 && ok) ? __half2float(w.m[i]) : 0.0f;
        }
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (r >= nr) continue; /* uniform across the block */
            const int8_t *xq = x.qs + r * x.n_in + lane8 * 4;
            const float *xd = x.d + r * x.nb, *xs = x.s + r * x.nb;
#pragma unroll
            for (int k = 0; k < MM_CHUNK; k++) {
                const int i = i0 + k;
                if (i >= nb) continue; /* uniform */
                const int xv = *(const int *)(xq + i * TD_QK);
                if (TYPE == TD_TYPE_Q4_0) {
                    int part = __dp4a(wv[k], xv, 0) - 8 * __dp4a(0x01010101, xv, 0);
                    part += __shfl_xor_sync(FULL, part, 4);
                    part += __shfl_xor_sync(FULL, part, 2);
                    part += __shfl_xor_sync(FULL, part, 1);
                    acc[r] = acc[r] + dw[k] * xd[i] * (float)part;
                } else {
                    const float scale = dw[k] * xd[i];
                    acc[r] = fmaf(scale, (float)__dp4a(wv[k], xv, 0), acc[r]);
                    if (TYPE == TD_TYPE_Q4_1) mins[r] = fmaf(mw[k], xs[i], mins[r]);
                }
            }
        }
    }
}

/* The eight lanes' chains folded as ref_lanes_sum (+ the minimum chain). */
template <int TYPE> __device__ __forceinline__ float finish(float acc, float mins, int group_base) {
    float l[8];
#pragma unroll
    for (int k = 0; k < 8; k++) l[k] = __shfl_sync(FULL, acc, group_base + k);
    float s = td_d_hsum8(l);
    return TYPE == TD_TYPE_Q4_0 ? acc : TYPE == TD_TYPE_Q4_1 ? s + mins : s;
}

/* Copies rows r0 .. r0+nr-1 of the activations into shared memory. */
__device__ __forceinline__ staged stage_rows(char *sm, const td_dact &act, int r0, int nr, int R, int n_in) {
    const int nb = n_in / TD_QK, ldb = act.ld / TD_QK;
    int *qs = (int *)sm;
    float *d = (float *)(sm + (size_t)R * n_in), *s = d + R * nb;
    for (int e = threadIdx.x; e < nr * (n_in / 4); e += blockDim.x) {
        int r = e / (n_in / 4), w = e % (n_in / 4);
        qs[r * (n_in / 4) + w] = *(const int *)(act.qs + (size_t)(r0 + r) * act.ld + w * 4);
    }
    for (int e = threadIdx.x; e < nr * nb; e += blockDim.x) {
        int r = e / nb, i = e % nb;
        d[r * nb + i] = act.d[(size_t)(r0 + r) * ldb + i];
        s[r * nb + i] = act.s[(size_t)(r0 + r) * ldb + i];
    }
    __syncthreads();
    staged x = {(const int8_t *)qs, d, s, n_in, nb};
    return x;
}

static size_t stage_bytes(int R, int n_in) { return (size_t)R * n_in + (size_t)R * (n_in / TD_QK) * 2 * sizeof(float); }

template <int TYPE, int R, int EPI, int THREADS>
__global__ void __launch_bounds__(THREADS) k_matmul(td_mm mm, td_dact act, int32_t n_rows, td_dact qout) {
    extern __shared__ __align__(16) char sm[];
    const int OUT_PER_BLOCK = THREADS / 8;
    const int lane8 = threadIdx.x & 7, group_base = (threadIdx.x & 31) & ~7;
    const int r0 = blockIdx.y * R, nr = n_rows - r0 < R ? n_rows - r0 : R;
    int o = blockIdx.x * OUT_PER_BLOCK + (threadIdx.x >> 3);
    int wi = 0;
    if (EPI != TD_EPI_SWIGLU) {
        if (mm.n_w > 1 && o >= mm.w[0].n_out) { o -= mm.w[0].n_out; wi = 1; }
        if (wi == 1 && mm.n_w > 2 && o >= mm.w[1].n_out) { o -= mm.w[1].n_out; wi = 2; }
    }
    const td_dw W = wi == 0 ? mm.w[0] : wi == 1 ? mm.w[1] : mm.w[2];
    float *y = wi == 0 ? mm.y[0] : wi == 1 ? mm.y[1] : mm.y[2];
    const int ldy = wi == 0 ? mm.ldy[0] : wi == 1 ? mm.ldy[1] : mm.ldy[2];
    const bool valid = o < W.n_out;
    const int nb = W.n_in / TD_QK, WPB = words_per_block<TYPE>::n;
    const size_t oo = valid ? (size_t)o : 0;
    const staged x = stage_rows(sm, act, r0, nr, R, mm.w[0].n_in);
    chain_state cs = {W.qs + oo * nb * WPB, W.d + oo * nb, W.m ? W.m + oo * nb : NULL};
    float acc[R], mins[R];
    dot_tile<TYPE, R>(cs, valid, nb, x, nr, lane8, acc, mins);
    if (EPI == TD_EPI_SWIGLU) {
        /* silu(gate) * up, then quantized for the down projection: the block
         * holds whole 32-wide blocks of outputs (THREADS == 256) */
        const td_dw U = mm.w[1];
        chain_state cu = {U.qs + oo * nb * WPB, U.d + oo * nb, U.m ? U.m + oo * nb : NULL};
        float acc_u[R], mins_u[R];
        dot_tile<TYPE, R>(cu, valid, nb, x, nr, lane8, acc_u, mins_u);
        __shared__ float ybuf[R][TD_QK];
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (r >= nr) continue;
            float g = finish<TYPE>(acc[r], mins[r], group_base);
            float u = finish<TYPE>(acc_u[r], mins_u[r], group_base);
            if (lane8 == 0) ybuf[r][threadIdx.x >> 3] = valid ? g / (1.0f + td_d_exp(0.0f - g)) * u : 0.0f;
        }
        __syncthreads();
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
        if (warp < nr) {
            const int row = r0 + warp, ldb = qout.ld / TD_QK, blk = blockIdx.x;
            td_d_quant_block(ybuf[warp][lane], lane, qout.qs + (size_t)row * qout.ld + blk * TD_QK,
                             qout.d + (size_t)row * ldb + blk, qout.s + (size_t)row * ldb + blk);
        }
    } else {
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (r >= nr) continue;
            float s = finish<TYPE>(acc[r], mins[r], group_base);
            if (valid && lane8 == 0) {
                float *dst = y + (size_t)(r0 + r) * ldy + o;
                *dst = EPI == TD_EPI_ADD ? *dst + s : s;
            }
        }
    }
}

template <int TYPE, int EPI> static cudaError_t launch_type(const td_mm *mm, const td_dact *act, int32_t n_rows,
                                                            const td_dact *qout, cudaStream_t st) {
    const int THREADS = EPI == TD_EPI_SWIGLU ? 256 : 64;
    int32_t outs = 0;
    if (EPI == TD_EPI_SWIGLU) outs = mm->w[0].n_out;
    else
        for (int i = 0; i < mm->n_w; i++) outs += mm->w[i].n_out;
    unsigned gx = (unsigned)((outs + THREADS / 8 - 1) / (THREADS / 8));
    td_dact none = {NULL, NULL, NULL, 0};
    /* wide inputs (a 7B model's down projection) stage more than the default
     * 48 KiB of shared memory: ask for it */
#define TD_MM_LAUNCH(R)                                                                                      \
    do {                                                                                                     \
        dim3 grid(gx, (unsigned)((n_rows + (R)-1) / (R)));                                                   \
        size_t smem = stage_bytes(R, mm->w[0].n_in);                                                         \
        if (smem > 48 * 1024) {                                                                              \
            cudaError_t e = cudaFuncSetAttribute(k_matmul<TYPE, R, EPI, THREADS>,                            \
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);    \
            if (e != cudaSuccess) return e;                                                                  \
        }                                                                                                    \
        k_matmul<TYPE, R, EPI, THREADS><<<grid, THREADS, smem, st>>>(*mm, *act, n_rows, qout ? *qout : none); \
    } while (0)
    if (n_rows == 1) TD_MM_LAUNCH(1);
    else if (n_rows == 2) TD_MM_LAUNCH(2);
    else if (n_rows <= 4) TD_MM_LAUNCH(4);
    else TD_MM_LAUNCH(8);
#undef TD_MM_LAUNCH
    return cudaGetLastError();
}

template <int EPI> static cudaError_t launch_epi(const td_mm *mm, const td_dact *act, int32_t n_rows,
                                                 const td_dact *qout, cudaStream_t st) {
    switch (mm->w[0].type) {
    case TD_TYPE_Q4_0: return launch_type<TD_TYPE_Q4_0, EPI>(mm, act, n_rows, qout, st);
    case TD_TYPE_Q4_1: return launch_type<TD_TYPE_Q4_1, EPI>(mm, act, n_rows, qout, st);
    case TD_TYPE_Q8_0: return launch_type<TD_TYPE_Q8_0, EPI>(mm, act, n_rows, qout, st);
    default: return cudaErrorInvalidValue;
    }
}

cudaError_t td_cu_matmul(const td_mm *mm, const td_dact *act, int32_t n_rows, cudaStream_t st) {
    for (int i = 1; i < mm->n_w; i++)
        if (mm->w[i].type != mm->w[0].type || mm->w[i].n_in != mm->w[0].n_in) return cudaErrorInvalidValue;
    if (mm->epi == TD_EPI_SWIGLU && (!mm->qout.qs || mm->w[0].n_out % TD_QK != 0)) return cudaErrorInvalidValue;
    switch (mm->epi) {
    case TD_EPI_STORE: return launch_epi<TD_EPI_STORE>(mm, act, n_rows, NULL, st);
    case TD_EPI_ADD: return launch_epi<TD_EPI_ADD>(mm, act, n_rows, NULL, st);
    case TD_EPI_SWIGLU: return launch_epi<TD_EPI_SWIGLU>(mm, act, n_rows, &mm->qout, st);
    default: return cudaErrorInvalidValue;
    }
}
