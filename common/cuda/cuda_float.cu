/* cuda_float.cu — float weight matrices (F32, F16, BF16) on the device:
 * their matrix product in the CPU's order, and the float activations it
 * takes (rounded through the weight's type, as the CPU converts them).
 *
 * The arithmetic is cuda_float.cuh's (checked on the host against the CPU's
 * kernels by test_cuda_host): a warp per output, its 32 threads the CPU's
 * four 8-lane accumulators, four outputs per block, R activation rows per
 * block reading each weight element once. Each output's chains cover its
 * whole row whatever the pass, so the products are batch invariant and
 * carry the CPU's bits in both orders (FAST splits only Q4_1 and Q8_0).
 */
#include "cuda/cuda_internal.cuh"

#define FULL 0xffffffffu

/* One block of 256 threads per row. */
__global__ void __launch_bounds__(256) k_prepare_float(td_qk_src src, int32_t n_in, uint32_t type, float *out,
                                                       int32_t ldo) {
    td_d_pdl_wait();
    td_d_pdl_release();
    const int r = blockIdx.x;
    const float *x = src.x + (size_t)(src.rows ? src.rows[r] : r) * src.ldx;
    const float *up = src.kind == TD_QK_SWIGLU ? src.up + (size_t)r * src.ldx : NULL;
    const float scale = src.kind == TD_QK_NORM ? td_cu_rms_scale(x, n_in, src.eps) : 0.0f; /* uniform */
    for (int e = threadIdx.x; e < n_in; e += blockDim.x) {
        float v;
        if (src.kind == TD_QK_NORM) {
            v = (x[e] * scale) * src.norm_w[e];
        } else if (src.kind == TD_QK_SWIGLU) {
            const float g = x[e];
            v = g / (1.0f + td_d_exp(0.0f - g)) * up[e];
        } else {
            v = x[e];
        }
        out[(size_t)r * ldo + e] = td_cu_float_round(type, v);
    }
}

cudaError_t td_cu_prepare_float(const td_qk_src *src, int32_t n_rows, int32_t n_in, uint32_t type, float *out,
                                int32_t ldo, const td_lc &lc) {
    if (!td_cu_is_float(type) || !out || n_in > ldo || (src->kind == TD_QK_NORM && !src->norm_w) ||
        (src->kind == TD_QK_SWIGLU && !src->up))
        return cudaErrorInvalidValue;
    return td_cu_launch(lc, k_prepare_float, dim3((unsigned)n_rows), dim3(256), 0, *src, n_in, type, out, ldo);
}

/* Four outputs (a warp each) of up to three matrices of one type that share
 * the input, for R activation rows. */
template <int TYPE, int R, int EPI>
__global__ void __launch_bounds__(128) k_matmul_f(td_mm mm, const float *xin, int32_t ldx, int32_t n_rows) {
    const int lane = threadIdx.x & 31;
    const td_cu_out out = td_cu_output(mm, blockIdx.x * 4 + (threadIdx.x >> 5));
    /* a whole warp leaves (the output is the warp's): safe only because
     * nothing below synchronizes the block; a barrier added later must move
     * this */
    if (out.o >= out.W.n_out) return;
    const td_dw &W = out.W;
    const int n = W.n_in;
    const size_t row0 = (size_t)out.o * n;
    const int r0 = blockIdx.y * R, nr = n_rows - r0 < R ? n_rows - r0 : R;
    td_d_pdl_wait();
    td_d_pdl_release();
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.0f;
    for (int i = lane; i < n; i += 32) {
        const float a = td_cu_float_weight(TYPE, W.qs, row0 + i);
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (r >= nr) continue; /* uniform across the block */
            acc[r] = fmaf(a, xin[(size_t)(r0 + r) * ldx + i], acc[r]);
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        if (r >= nr) continue;
        float all[32];
#pragma unroll
        for (int k = 0; k < 32; k++) all[k] = __shfl_sync(FULL, acc[r], k);
        if (lane == 0) {
            const float s = td_cu_f_fold(all);
            float *dst = out.y + (size_t)(r0 + r) * out.ldy + out.o;
            *dst = EPI == TD_EPI_ADD ? *dst + s : s;
        }
    }
}

template <int TYPE, int EPI>
static cudaError_t launch_f(const td_mm *mm, const td_mm_in *in, int32_t n_rows, const td_lc &lc) {
    int32_t outs = 0;
    for (int i = 0; i < mm->n_w; i++) outs += mm->w[i].n_out;
    const int R = td_cu_tile_rows(lc, false, n_rows);
    const dim3 grid((unsigned)((outs + 3) / 4), (unsigned)((n_rows + R - 1) / R)), block(128);
    switch (R) {
    case 1: return td_cu_launch(lc, k_matmul_f<TYPE, 1, EPI>, grid, block, 0, *mm, in->x, in->ldx, n_rows);
    case 2: return td_cu_launch(lc, k_matmul_f<TYPE, 2, EPI>, grid, block, 0, *mm, in->x, in->ldx, n_rows);
    case 4: return td_cu_launch(lc, k_matmul_f<TYPE, 4, EPI>, grid, block, 0, *mm, in->x, in->ldx, n_rows);
    default: return td_cu_launch(lc, k_matmul_f<TYPE, 8, EPI>, grid, block, 0, *mm, in->x, in->ldx, n_rows);
    }
}

template <int EPI> static cudaError_t launch_f_epi(const td_mm *mm, const td_mm_in *in, int32_t n_rows,
                                                   const td_lc &lc) {
    switch (mm->w[0].type) {
    case TD_TYPE_F32: return launch_f<TD_TYPE_F32, EPI>(mm, in, n_rows, lc);
    case TD_TYPE_F16: return launch_f<TD_TYPE_F16, EPI>(mm, in, n_rows, lc);
    case TD_TYPE_BF16: return launch_f<TD_TYPE_BF16, EPI>(mm, in, n_rows, lc);
    default: return cudaErrorInvalidValue;
    }
}

cudaError_t td_cu_matmul_f(const td_mm *mm, const td_mm_in *in, int32_t n_rows, const td_lc &lc) {
    if (!in->x || in->norm_w || in->rows || mm->n_w < 1 || mm->n_w > 3 || mm->w[0].n_in % 32 != 0)
        return cudaErrorInvalidValue;
    switch (mm->epi) {
    case TD_EPI_STORE: return launch_f_epi<TD_EPI_STORE>(mm, in, n_rows, lc);
    case TD_EPI_ADD: return launch_f_epi<TD_EPI_ADD>(mm, in, n_rows, lc);
    default: return cudaErrorInvalidValue; /* SwiGLU and QKV are fused for Q4_1 and Q8_0 only */
    }
}
