/* cuda_sample.cu — the keyed sampler's summaries and scoring's row scores
 * on the device: a block of 256 threads per row runs cuda_sample_block.h
 * (which a unit test also runs with host threads standing in for the
 * block), so that a few numbers cross to the host instead of the row.
 */
#include "cuda/cuda_internal.cuh"

#define TD_BLK_FN __device__ static inline
#define TD_SHARED __shared__
#define TD_ALIGN16 __align__(16)
#define TD_TID ((int32_t)threadIdx.x)
#define TD_SYNC() __syncthreads()
#define TD_SHFL_XOR(v, o) __shfl_xor_sync(0xffffffffu, (v), (o))
#define TD_SHFL_UP(v, o) __shfl_up_sync(0xffffffffu, (v), (o))
#define TD_ATOMIC_ADD(p, v) atomicAdd((p), (v))
#include "cuda/cuda_sample_block.h"

/* One block per row, and a pass's rows (a few hundred at most) fit an
 * H200's 132 SMs at a few blocks each: occupancy is no concern, so ptxas
 * may use the registers it needs (asked for no minimum of blocks per SM it
 * stopped at 48 and spilled: 70 now, no spills). */
__global__ void __launch_bounds__(TD_BLK_THREADS, 1)
    k_summarize(const float *logits, int32_t n, const td_sample_plan *plans, td_sample_summary *out) {
    td_blk_summarize(logits + (size_t)blockIdx.x * n, n, plans + blockIdx.x, out + blockIdx.x);
}

cudaError_t td_cu_summarize(const float *logits, int32_t n_rows, int32_t n_vocab, const td_sample_plan *plans,
                            td_sample_summary *out, const td_lc &lc) {
    return td_cu_launch(lc, k_summarize, dim3((unsigned)n_rows), dim3(TD_BLK_THREADS), 0, logits, n_vocab, plans,
                        out);
}

__global__ void __launch_bounds__(TD_BLK_THREADS)
    k_score(const float *logits, int32_t n, const int32_t *targets, int32_t n_alt, td_sample_score *out) {
    td_blk_score(logits + (size_t)blockIdx.x * n, n, targets ? targets[blockIdx.x] : -1, n_alt, out + blockIdx.x);
}

cudaError_t td_cu_score(const float *logits, int32_t n_rows, int32_t n_vocab, const int32_t *targets, int32_t n_alt,
                        td_sample_score *out, const td_lc &lc) {
    return td_cu_launch(lc, k_score, dim3((unsigned)n_rows), dim3(TD_BLK_THREADS), 0, logits, n_vocab, targets,
                        n_alt, out);
}
