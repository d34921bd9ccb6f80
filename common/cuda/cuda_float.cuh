/* cuda_float.cuh — the arithmetic of float weight rows (F32, F16, BF16) on
 * the device, written once for device and host so that test_cuda_host
 * checks it against the CPU's kernels without a GPU.
 *
 * The CPU's float dot products (quant_avx2.c) convert the activation row to
 * the weight's type first (F16: round to nearest even; BF16: td_f32_to_bf16;
 * F32: as it is), then run four 8-lane fma accumulators over each 32
 * elements (element i into accumulator (i % 32) / 8, lane i % 8), add the
 * accumulators lane-wise as (s0 + s1) + (s2 + s3) and fold the eight lanes
 * as td_d_hsum8. On the device a warp is those 32 accumulators (thread t:
 * elements t, t + 32, ..), and td_cu_f_fold is the same two steps. Rows must
 * be whole 32s (the CPU's 8-element tail and scalar tail never run then).
 */
#ifndef TD_CUDA_FLOAT_CUH
#define TD_CUDA_FLOAT_CUH

#include <cuda_fp16.h>
#include <stdint.h>
#include <string.h>

__host__ __device__ __forceinline__ bool td_cu_is_float(uint32_t type) {
    return type == 0u || type == 1u || type == 30u; /* TD_TYPE_F32, F16, BF16 */
}

__host__ __device__ __forceinline__ int td_cu_float_bytes(uint32_t type) { return type == 0u ? 4 : 2; }

__host__ __device__ __forceinline__ float td_cu_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Element o * n + i of a float weight matrix of type (row-major, as GGUF). */
__host__ __device__ __forceinline__ float td_cu_float_weight(uint32_t type, const void *w, size_t at) {
    if (type == 0u) return ((const float *)w)[at];
    const uint16_t h = ((const uint16_t *)w)[at];
    if (type == 1u) {
        __half_raw r;
        r.x = h;
        return __half2float(__half(r));
    }
    return td_cu_bits_f32((uint32_t)h << 16);
}

/* An activation value rounded through the weight's type, as the CPU's
 * from_float and the dot product's load give it back. */
__host__ __device__ __forceinline__ float td_cu_float_round(uint32_t type, float x) {
    if (type == 1u) return __half2float(__float2half_rn(x));
    if (type == 30u) { /* td_f32_to_bf16: NaN made quiet, else nearest, ties to even */
        uint32_t u;
        memcpy(&u, &x, sizeof u);
        if ((u & 0x7FFFFFFFu) > 0x7F800000u) return td_cu_bits_f32(((u >> 16) | 0x40u) << 16);
        u += 0x7FFFu + ((u >> 16) & 1u);
        return td_cu_bits_f32((u >> 16) << 16);
    }
    return x;
}

/* The 32 accumulators of an output folded as the CPU folds its four
 * vectors: lane-wise (s0 + s1) + (s2 + s3), then td_d_hsum8's tree. */
__host__ __device__ __forceinline__ float td_cu_f_fold(const float acc[32]) {
    float v[8];
    for (int l = 0; l < 8; l++) v[l] = (acc[l] + acc[8 + l]) + (acc[16 + l] + acc[24 + l]);
    const float c0 = v[0] + v[4], c1 = v[1] + v[5], c2 = v[2] + v[6], c3 = v[3] + v[7];
    return (c0 + c2) + (c1 + c3);
}

#endif
