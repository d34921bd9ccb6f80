/* cuda_interleaved.cu — Q4_0, Q5_0 and Q5_1 weights on the device: their
 * matrix product in the order of the CPU's interleaved kernels, so that
 * these formats carry the CPU's bits too.
 *
 * The arithmetic is cuda_interleaved.cuh's (checked on the host against the
 * CPU's kernels by test_cuda_host): eight threads per output as the CPU's
 * eight lanes (thread 2j + h: block j of each group of four, half h), eight
 * outputs per 64-thread block, R activation rows per block reading each
 * weight word once. The input is the legacy formats' quantized activation
 * rows (Q8_0 blocks; Q5_1 also reads Q8_1's s), quantized beforehand: the
 * fused RMSNorm of cuda_matmul.cu's kernels is theirs alone. Every output's
 * chain covers its whole row whatever the pass (batch invariance), in both
 * orders (FAST splits only Q4_1 and Q8_0).
 */
#include "cuda/cuda_internal.cuh"


template <uint32_t TYPE, int R, int EPI>
__global__ void __launch_bounds__(64) k_matmul_il(td_mm mm, td_dact act, int32_t n_rows) {
    const int tid = threadIdx.x, lane8 = tid & 7, group_base = (tid & 31) & ~7;
    const int j = lane8 >> 1, h = lane8 & 1;
    const td_cu_out out = td_cu_output(mm, blockIdx.x * 8 + (tid >> 3));
    const bool valid = out.o < out.W.n_out; /* the others compute row 0 and write nothing */
    const int nb = out.W.n_in / TD_QK, ng = (nb + 3) / 4, words = td_cu_il_words(TYPE);
    const uint32_t *wrow = out.W.qs + (size_t)(valid ? out.o : 0) * nb * words;
    const int r0 = blockIdx.y * R, nr = n_rows - r0 < R ? n_rows - r0 : R;
    const int ldb = act.ld / TD_QK;
    td_d_pdl_wait();
    td_d_pdl_release();
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.0f;
    for (int g = 0; g < ng; g++) {
        const int b = 4 * g + j;
        td_cu_il_lane w;
        if (b < nb) td_cu_il_load<TYPE>(wrow + (size_t)b * words, h, &w);
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (r >= nr) continue; /* uniform across the block */
            const size_t row = (size_t)(r0 + r);
            if (b < nb)
                acc[r] = td_cu_il_step<TYPE>(w, act.qs + row * act.ld + (size_t)b * TD_QK, act.d[row * ldb + b],
                                             act.s[row * ldb + b], h, acc[r]);
            else
                acc[r] = td_cu_il_step_empty<TYPE>(acc[r]);
        }
    }
    td_cu_store_lanes<R, EPI>(acc, r0, nr, group_base, valid && lane8 == 0, out);
}

template <uint32_t TYPE, int EPI>
static cudaError_t launch_il(const td_mm *mm, const td_dact &act, int32_t n_rows, const td_lc &lc) {
    int32_t outs = 0;
    for (int i = 0; i < mm->n_w; i++) outs += mm->w[i].n_out;
    const int R = td_cu_tile_rows(lc, false, n_rows);
    const dim3 grid((unsigned)((outs + 7) / 8), (unsigned)((n_rows + R - 1) / R)), block(64);
    switch (R) {
    case 1: return td_cu_launch(lc, k_matmul_il<TYPE, 1, EPI>, grid, block, 0, *mm, act, n_rows);
    case 2: return td_cu_launch(lc, k_matmul_il<TYPE, 2, EPI>, grid, block, 0, *mm, act, n_rows);
    case 4: return td_cu_launch(lc, k_matmul_il<TYPE, 4, EPI>, grid, block, 0, *mm, act, n_rows);
    default: return td_cu_launch(lc, k_matmul_il<TYPE, 8, EPI>, grid, block, 0, *mm, act, n_rows);
    }
}

template <int EPI> static cudaError_t launch_il_epi(const td_mm *mm, const td_dact &act, int32_t n_rows,
                                                    const td_lc &lc) {
    switch (mm->w[0].type) {
    case TD_IL_Q4_0: return launch_il<TD_IL_Q4_0, EPI>(mm, act, n_rows, lc);
    case TD_IL_Q5_0: return launch_il<TD_IL_Q5_0, EPI>(mm, act, n_rows, lc);
    case TD_IL_Q5_1: return launch_il<TD_IL_Q5_1, EPI>(mm, act, n_rows, lc);
    default: return cudaErrorInvalidValue;
    }
}

cudaError_t td_cu_matmul_il(const td_mm *mm, const td_mm_in *in, int32_t n_rows, const td_lc &lc) {
    if (in->x || !in->act.qs || !in->act.d || !in->act.s || mm->n_w < 1 || mm->n_w > 3 || mm->w[0].n_in % TD_QK != 0)
        return cudaErrorInvalidValue;
    switch (mm->epi) {
    case TD_EPI_STORE: return launch_il_epi<TD_EPI_STORE>(mm, in->act, n_rows, lc);
    case TD_EPI_ADD: return launch_il_epi<TD_EPI_ADD>(mm, in->act, n_rows, lc);
    default: return cudaErrorInvalidValue; /* SwiGLU and QKV are fused for Q4_1 and Q8_0 only */
    }
}
