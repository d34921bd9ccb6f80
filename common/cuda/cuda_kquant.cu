/* cuda_kquant.cu — K-quant weights (Q4_K, Q5_K, Q6_K) on the device: their
 * matrix product in the CPU's order, and the Q8_K activations it takes.
 *
 * The arithmetic is cuda_kquant.cuh's (checked on the host against the
 * CPU's kernels by test_cuda_host); this file only places it: eight threads
 * per output as the CPU's eight lanes, eight outputs per 64-thread block,
 * R activation rows per block reading each weight word once. Every output's
 * chain runs over the whole row whatever the pass, so K-quant products are
 * batch invariant and carry the CPU's bits in both orders (FAST splits only
 * Q4_1 and Q8_0).
 *
 * Unlike Q4_1 and Q8_0, nothing is fused: a K-quant matrix takes its
 * input already quantized (td_cu_quantize_k after RMSNorm, attention or
 * SwiGLU), since a Q8_K block needs the largest magnitude of 256 values
 * before its first code.
 */
#include "cuda/cuda_internal.cuh"

#define FULL 0xffffffffu

/* One block of 256 threads per row; warp w quantizes super-blocks w, w+8, ..,
 * lane l holding elements 8l..8l+7 of each. */
__global__ void __launch_bounds__(256) k_quantize_k(td_qk_src src, int32_t n_in, td_dact act) {
    td_d_pdl_wait();
    td_d_pdl_release();
    const int r = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const float *x = src.x + (size_t)(src.rows ? src.rows[r] : r) * src.ldx;
    const float *up = src.kind == TD_QK_SWIGLU ? src.up + (size_t)r * src.ldx : NULL;
    const float scale = src.kind == TD_QK_NORM ? td_cu_rms_scale(x, n_in, src.eps) : 0.0f; /* uniform */
    const int nsb = n_in / TD_QK_SUPER, ldd = act.ld / TD_QK_SUPER, ldb = act.ld / 16;
    for (int sb = warp; sb < nsb; sb += (int)(blockDim.x >> 5)) {
        const int base = sb * TD_QK_SUPER + lane * 8;
        float v[8];
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const int e = base + k;
            if (src.kind == TD_QK_NORM) {
                v[k] = (x[e] * scale) * src.norm_w[e];
            } else if (src.kind == TD_QK_SWIGLU) {
                const float g = x[e];
                v[k] = g / (1.0f + td_d_exp(0.0f - g)) * up[e];
            } else {
                v[k] = x[e];
            }
        }
        td_cu_absmax a = td_cu_q8k_lane_max(v, base);
        for (int off = 16; off; off >>= 1) {
            td_cu_absmax b;
            b.amax = __shfl_xor_sync(FULL, a.amax, off);
            b.vmax = __shfl_xor_sync(FULL, a.vmax, off);
            b.idx = __shfl_xor_sync(FULL, a.idx, off);
            a = td_cu_q8k_pick(a, b);
        }
        int8_t q[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int sum = 0;
        float d = 0.0f;
        if (a.vmax != 0.0f) { /* all zero: codes, d and sums stay 0, as on the CPU */
            const float iscale = -127.0f / a.vmax;
            sum = td_cu_q8k_lane_codes(v, iscale, q);
            d = 1.0f / iscale;
        }
        uint32_t w0 = 0, w1 = 0;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            w0 |= (uint32_t)(uint8_t)q[k] << (8 * k);
            w1 |= (uint32_t)(uint8_t)q[k + 4] << (8 * k);
        }
        uint32_t *dst = (uint32_t *)(act.qs + (size_t)r * act.ld + base);
        dst[0] = w0;
        dst[1] = w1;
        const int group = sum + __shfl_xor_sync(FULL, sum, 1); /* 16 codes: lanes 2g and 2g+1 */
        if ((lane & 1) == 0) act.bs[(size_t)r * ldb + sb * 16 + lane / 2] = (int16_t)group;
        if (lane == 0) act.d[(size_t)r * ldd + sb] = d;
    }
}

cudaError_t td_cu_quantize_k(const td_qk_src *src, int32_t n_rows, int32_t n_in, const td_dact *act,
                             const td_lc &lc) {
    if (n_in % TD_QK_SUPER != 0 || n_in > act->ld || !act->qs || !act->d || !act->bs ||
        (src->kind == TD_QK_NORM && !src->norm_w) ||
        (src->kind == TD_QK_SWIGLU && !src->up))
        return cudaErrorInvalidValue;
    return td_cu_launch(lc, k_quantize_k, dim3((unsigned)n_rows), dim3(256), 0, *src, n_in, *act);
}

/* Eight outputs (eight lanes each) of up to three matrices of one type that
 * share the input, for R activation rows. */
template <int TYPE, int R, int EPI>
__global__ void __launch_bounds__(64) k_matmul_k(td_mm mm, td_dact act, int32_t n_rows) {
    const int tid = threadIdx.x, lane8 = tid & 7, group_base = (tid & 31) & ~7;
    const td_cu_out out = td_cu_output(mm, blockIdx.x * 8 + (tid >> 3));
    const bool valid = out.o < out.W.n_out; /* the others compute row 0 and write nothing */
    const int nsb = out.W.n_in / TD_QK_SUPER, words = td_cu_kq_words(TYPE);
    const uint32_t *wrow = out.W.qs + (size_t)(valid ? out.o : 0) * nsb * words;
    const int r0 = blockIdx.y * R, nr = n_rows - r0 < R ? n_rows - r0 : R;
    const int ldd = act.ld / TD_QK_SUPER, ldb = act.ld / 16;
    /* the next super-block's weights load while this one's sums run; the
     * first before the wait (weights only: cuda_internal.cuh's rule) */
    td_cu_kq_lane w, next;
    td_cu_kq_load<TYPE>(wrow, lane8, &next);
    td_d_pdl_wait();
    td_d_pdl_release();
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.0f;
    for (int sb = 0; sb < nsb; sb++) {
        w = next;
        if (sb + 1 < nsb) td_cu_kq_load<TYPE>(wrow + (size_t)(sb + 1) * words, lane8, &next);
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (r >= nr) continue; /* uniform across the block */
            const size_t row = (size_t)(r0 + r);
            int isum, msum;
            td_cu_kq_dot<TYPE>(w, act.qs + row * act.ld + sb * TD_QK_SUPER, act.bs + row * ldb + sb * 16, lane8,
                               &isum, &msum);
            acc[r] = td_cu_kq_step<TYPE>(w, act.d[row * ldd + sb], isum, msum, acc[r]);
        }
    }
    td_cu_store_lanes<R, EPI>(acc, r0, nr, group_base, valid && lane8 == 0, out);
}

template <int TYPE, int EPI>
static cudaError_t launch_k(const td_mm *mm, const td_dact &act, int32_t n_rows, const td_lc &lc) {
    int32_t outs = 0;
    for (int i = 0; i < mm->n_w; i++) outs += mm->w[i].n_out;
    const unsigned gx = (unsigned)((outs + 7) / 8);
    const int R = td_cu_tile_rows(lc, false, n_rows);
    const dim3 grid(gx, (unsigned)((n_rows + R - 1) / R)), block(64);
    switch (R) {
    case 1: return td_cu_launch(lc, k_matmul_k<TYPE, 1, EPI>, grid, block, 0, *mm, act, n_rows);
    case 2: return td_cu_launch(lc, k_matmul_k<TYPE, 2, EPI>, grid, block, 0, *mm, act, n_rows);
    case 4: return td_cu_launch(lc, k_matmul_k<TYPE, 4, EPI>, grid, block, 0, *mm, act, n_rows);
    default: return td_cu_launch(lc, k_matmul_k<TYPE, 8, EPI>, grid, block, 0, *mm, act, n_rows);
    }
}

template <int EPI> static cudaError_t launch_k_epi(const td_mm *mm, const td_dact &act, int32_t n_rows,
                                                   const td_lc &lc) {
    switch (mm->w[0].type) {
    case TD_TYPE_Q4_K: return launch_k<TD_TYPE_Q4_K, EPI>(mm, act, n_rows, lc);
    case TD_TYPE_Q5_K: return launch_k<TD_TYPE_Q5_K, EPI>(mm, act, n_rows, lc);
    case TD_TYPE_Q6_K: return launch_k<TD_TYPE_Q6_K, EPI>(mm, act, n_rows, lc);
    default: return cudaErrorInvalidValue;
    }
}

cudaError_t td_cu_matmul_k(const td_mm *mm, const td_mm_in *in, int32_t n_rows, const td_lc &lc) {
    if (in->x || !in->act.qs || !in->act.bs || mm->n_w < 1 || mm->n_w > 3 || mm->w[0].n_in % TD_QK_SUPER != 0)
        return cudaErrorInvalidValue;
    switch (mm->epi) {
    case TD_EPI_STORE: return launch_k_epi<TD_EPI_STORE>(mm, in->act, n_rows, lc);
    case TD_EPI_ADD: return launch_k_epi<TD_EPI_ADD>(mm, in->act, n_rows, lc);
    default: return cudaErrorInvalidValue; /* SwiGLU and QKV are fused for Q4_1 and Q8_0 only */
    }
}
