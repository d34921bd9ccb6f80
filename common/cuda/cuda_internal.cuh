/* cuda_internal.cuh — what the CUDA files share: device views of weights,
 * activations and the KV cache, the pass descriptor in device memory, the
 * kernel launchers, and the scalar helpers that must give the CPU's bits.
 *
 * Every .cu file is compiled with -fmad=false: the CPU build never contracts
 * a*b+c (ISO C mode), so neither may the device; where the CPU calls fmaf,
 * the device calls fmaf too. Divisions and square roots are IEEE-rounded by
 * nvcc's defaults (-prec-div, -prec-sqrt), as on the CPU.
 */
#ifndef TD_CUDA_INTERNAL_CUH
#define TD_CUDA_INTERNAL_CUH

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "cuda/cuda.h"
#include "quant/quant.h"
}
#include "cuda/cuda_float.cuh"
#include "cuda/cuda_interleaved.cuh"
#include "cuda/cuda_kquant.cuh"

/* The arithmetic headers name GGUF types by number (they compile for the
 * host test without quant.h's enum in reach of their templates): */
static_assert(TD_IL_Q4_0 == TD_TYPE_Q4_0 && TD_IL_Q5_0 == TD_TYPE_Q5_0 && TD_IL_Q5_1 == TD_TYPE_Q5_1,
              "cuda_interleaved.cuh's type numbers");
static_assert(TD_TYPE_Q4_K == 12 && TD_TYPE_Q5_K == 13 && TD_TYPE_Q6_K == 14, "cuda_kquant.cuh's type numbers");
static_assert(TD_TYPE_F32 == 0 && TD_TYPE_F16 == 1 && TD_TYPE_BF16 == 30, "cuda_float.cuh's type numbers");

#define TD_QK 32

/* A weight matrix in the device layout (cuda_layout.c). */
struct td_dw {
    const uint32_t *qs; /* (n_out, blocks, words) codes */
    const __half *d;    /* (n_out, blocks) */
    const __half *m;    /* (n_out, blocks) Q4_1 only */
    uint32_t type;
    int32_t n_in, n_out;
};

/* Quantized activation rows (the CPU's Q8_0 / Q8_1 blocks, unpacked): codes,
 * the fp16-rounded scale d and, for Q4_1 weights, s = fp16(d * sum(codes)).
 * Row r: qs + r * ld, d + r * ld / 32, s + r * ld / 32.
 * For K-quant weights the rows are Q8_K blocks of 256, unpacked the same
 * way: codes, one float d per 256 (d + r * ld / 256) and the sums of each
 * 16 codes in bs (bs + r * ld / 16); s is not used. */
struct td_dact {
    int8_t *qs;
    float *d, *s;
    int32_t ld;
    int16_t *bs;
};

/* The pass in device memory (td_cuda_pass, uploaded in one copy). */
struct td_dpass {
    const int32_t *token, *seq, *slot, *base, *chain_off, *chain_len, *chain, *out_rows;
    const float *rope_cs;
};

/* The KV cache of one layer as kernels see it: tab[seq] is the sequence's
 * storage, (n_layer, 2, max_len, kv_dim) halves. */
struct td_dkv {
    __half *const *tab;
    int32_t max_len, kv_dim, layer;
};

/* A kernel's dynamic shared memory as an array of T, 16-byte aligned. The
 * CPU emulator (tests/cuemu/, which defines TD_CUEMU) hands each block its
 * own buffer instead: extern __shared__ has no C++ form. */
#if defined(TD_CUEMU)
#define TD_DYNAMIC_SMEM(T, name) T *const name = (T *)td_cuemu_dynamic_smem()
#else
#define TD_DYNAMIC_SMEM(T, name) extern __shared__ __align__(16) T name[]
#endif

/* Loop unrolling asked of the device compiler only: the host compiler of a
 * __host__ __device__ function would warn about the pragma. */
#if defined(__CUDA_ARCH__)
#define TD_UNROLL _Pragma("unroll")
#else
#define TD_UNROLL
#endif

/* ---- helpers with the CPU's bits ---- */

__host__ __device__ __forceinline__ float td_d_round_f16(float x) { return __half2float(__float2half_rn(x)); }

/* td_op_hsum8: upper half onto lower, then pairs 0+2, 1+3 */
__host__ __device__ __forceinline__ float td_d_hsum8(const float l[8]) {
    float c0 = l[0] + l[4], c1 = l[1] + l[5], c2 = l[2] + l[6], c3 = l[3] + l[7];
    return (c0 + c2) + (c1 + c3);
}

/* td_op_exp, operation for operation (ops.c) */
__device__ __forceinline__ float td_d_exp(float x) {
    const float shift = 0x1.8p23f;
    float z = fmaf(x, 0x1.715476p+0f, shift);
    float n = z - shift;
    float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    uint32_t e = __float_as_uint(z) << 23;
    float k = __uint_as_float(e + __float_as_uint(1.0f));
    float u = b * b;
    float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)), u,
                   0x1.ffffecp-1f * b);
    if (!(fabsf(n) > 126.0f)) return fmaf(k, j, k);
    uint32_t g = n <= 0.0f ? 0x82000000u : 0u;
    float s1 = __uint_as_float(g + 0x7f000000u), s2 = __uint_as_float(e - g);
    if (fabsf(n) > 192.0f) return s1 * s1;
    return fmaf(s2, j, s2) * s1;
}

/* ---- activation quantization (q8_block in quant_ref_quantize.c) ----
 * d = max|x| / 127, codes = nearest-even(x * (127 / max|x|)) clamped to
 * [-127, 127] (NaN -> 0); d is stored through fp16, s = fp16(sum * d) with
 * the f32 d. Max and integer sum are exact in any order, so a warp may
 * reduce them as it likes. */
__device__ __forceinline__ void td_d_quant_block(float v, int lane, int8_t *qs, float *d_out, float *s_out) {
    float amax = fabsf(v);
    for (int off = 16; off; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    float d = amax / 127.0f;
    float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    float t = v * id;
    int q = 0;
    if (t == t) {
        float r = rintf(t);
        q = r < -127.0f ? -127 : r > 127.0f ? 127 : (int)r;
    }
    qs[lane] = (int8_t)q;
    int sum = q;
    for (int off = 16; off; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (lane == 0) {
        *d_out = td_d_round_f16(d);
        *s_out = td_d_round_f16((float)sum * d);
    }
}

/* ---- programmatic dependent launch (Hopper and later) ----
 * A pass is a chain of small kernels, each waiting for the one before it.
 * Launched with programmatic stream serialization, kernel N+1's blocks may
 * start while kernel N still runs: they load what no earlier kernel writes
 * (weights) and then wait in td_d_pdl_wait until kernel N has finished and
 * its writes are visible. So every kernel of a pass follows one rule:
 * nothing but weights and its own arguments is read, and nothing at all is
 * written, before td_d_pdl_wait. Right after it, td_d_pdl_release lets the
 * next kernel start its own prologue (no earlier: a kernel that has not
 * passed its wait could otherwise let a whole cascade of waiting kernels
 * take the SMs). Without the launch attribute both are no-ops. */
__device__ __forceinline__ void td_d_pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void td_d_pdl_release() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* Where and how a pass's kernels are launched: the stream, whether a
 * kernel may start before the previous one on it has finished (pdl), rows
 * per matmul tile when forced (tile for every matmul but the SwiGLU one,
 * tile_swiglu for it; 0: the policy in cuda_matmul.cu), and the summation
 * order: the CPU's reference, or (fast) each output's blocks split between
 * warps, ksplit of them when forced (0: by width; td_cu_ksplit). */
struct td_lc {
    cudaStream_t st;
    bool pdl;
    int tile, tile_swiglu;
    bool fast;
    int ksplit;
};

template <typename... KArgs, typename... Args>
static inline cudaError_t td_cu_launch(const td_lc &lc, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                                       Args &&...args) {
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = lc.st;
    cfg.attrs = at;
    cfg.numAttrs = lc.pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, static_cast<Args &&>(args)...);
}

/* One 32-element block quantized by one thread (td_d_quant_block's
 * arithmetic, element by element): for matmul blocks of few warps, where a
 * warp per block would take many rounds of shuffles. Max and the integer sum
 * are exact in any order, so each thread starts at its own word of the block
 * (word j of thread blk is (j + blk) % 8) and the threads of a warp read
 * different shared-memory banks; the codes land where the warp form puts
 * them, four per 32-bit store. v_i = (x_i * scale) * w_i. Host code too, so
 * that test_cuda_host checks it against the CPU's quantizer without a GPU. */
__host__ __device__ __forceinline__ void td_cu_quant_block_thread(const float *x, const float *w, float scale, int rot,
                                                                  int8_t *qs, float *d_out, float *s_out) {
    float v[TD_QK];
    TD_UNROLL
    for (int j = 0; j < 8; j++) {
        const int at = 4 * ((j + rot) & 7);
        TD_UNROLL
        for (int u = 0; u < 4; u++) v[4 * j + u] = (x[at + u] * scale) * w[at + u];
    }
    float amax = fabsf(v[0]);
    TD_UNROLL
    for (int k = 1; k < TD_QK; k++) amax = fmaxf(amax, fabsf(v[k]));
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    TD_UNROLL
    for (int j = 0; j < 8; j++) {
        uint32_t packed = 0;
        TD_UNROLL
        for (int u = 0; u < 4; u++) {
            const float t = v[4 * j + u] * id;
            int q = 0;
            if (t == t) {
                const float r = rintf(t);
                q = r < -127.0f ? -127 : r > 127.0f ? 127 : (int)r;
            }
            sum += q;
            packed |= (uint32_t)(q & 0xFF) << (8 * u);
        }
        *(uint32_t *)(qs + 4 * ((j + rot) & 7)) = packed;
    }
    *d_out = td_d_round_f16(d);
    *s_out = td_d_round_f16((float)sum * d);
}

/* FAST's split of a row of nb blocks between ks warps: slice k takes blocks
 * [*ib, *ie), whole quads (a lane loads four blocks at a time), the slices
 * in order and together the whole row; ks == 1 is the row. Some slices are
 * empty when the row has fewer quads than ks. */
__host__ __device__ __forceinline__ void td_cu_slice(int nb, int ks, int k, int *ib, int *ie) {
    const int quads = (nb + 3) / 4, end = 4 * ((k + 1) * quads / ks);
    *ib = 4 * (k * quads / ks);
    *ie = end < nb ? end : nb;
    if (*ib > *ie) *ib = *ie;
}

/* ---- launchers (each returns the launch's cudaError_t) ---- */

enum td_epi { TD_EPI_STORE = 0, TD_EPI_ADD = 1, TD_EPI_SWIGLU = 2, TD_EPI_QKV = 3 };

/* The input of a matrix product: quantized rows (act), or float rows that
 * the kernel normalizes (RMSNorm with weight norm_w) and quantizes itself
 * while staging them (x != NULL; rows[] gathers them when not NULL). The
 * fused form saves a kernel and a round trip through memory per matmul. */
struct td_mm_in {
    td_dact act;
    const float *x;
    int32_t ldx;
    const int32_t *rows;
    const float *norm_w;
    float eps;
    td_dact scratch; /* float input, many rows: normalized here first */
};

/* TD_EPI_QKV: w = {q, k, v}; biases, then RoPE (normal order) on q and k,
 * q to y[0] as floats, k and v narrowed straight into the cache. */
struct td_qkv_epi {
    const int32_t *seq, *slot;
    const float *rope_cs; /* (rows, n_rot) */
    const float *bq, *bk, *bv;
    __half *const *tab;
    int32_t max_len, kv_dim, layer, head_dim, n_rot;
};

/* y_i[r * ldy_i + o] (=, +=) W_i[o] . in[r] for up to three matrices of one
 * type that share the input; TD_EPI_SWIGLU takes w[0] = gate and w[1] = up
 * and stores silu(gate) * up, quantized, into qout. */
struct td_mm {
    td_dw w[3];
    float *y[3];
    int32_t ldy[3];
    int n_w;
    int epi;
    td_dact qout;
    td_qkv_epi qkv;
};
cudaError_t td_cu_matmul(const td_mm *mm, const td_mm_in *in, int32_t n_rows, const td_lc &lc);

/* Output o of a product of mm's n_w matrices (their outputs one after
 * another): the matrix it is a row of, where its results go, and that row
 * (>= W.n_out past the last output). */
struct td_cu_out {
    td_dw W;
    float *y;
    int ldy, o;
};
__device__ __forceinline__ td_cu_out td_cu_output(const td_mm &mm, int o) {
    int wi = 0;
    if (mm.n_w > 1 && o >= mm.w[0].n_out) { o -= mm.w[0].n_out; wi = 1; }
    if (wi == 1 && mm.n_w > 2 && o >= mm.w[1].n_out) { o -= mm.w[1].n_out; wi = 2; }
    td_cu_out out = {mm.w[wi], mm.y[wi], mm.ldy[wi], o};
    return out;
}

/* The eight-lane chains (lanes group_base..+7 of the warp, one output) of
 * rows r0..r0+nr-1 folded as td_d_hsum8 and stored (or added, TD_EPI_ADD)
 * by the first lane when write. Every lane of the warp must call it. */
template <int R, int EPI>
__device__ __forceinline__ void td_cu_store_lanes(const float acc[R], int r0, int nr, int group_base, bool write,
                                                  const td_cu_out &out) {
#pragma unroll
    for (int r = 0; r < R; r++) {
        if (r >= nr) continue; /* uniform across the block */
        float l[8];
#pragma unroll
        for (int k = 0; k < 8; k++) l[k] = __shfl_sync(0xffffffffu, acc[r], group_base + k);
        const float s = td_d_hsum8(l);
        if (write) {
            float *dst = out.y + (size_t)(r0 + r) * out.ldy + out.o;
            *dst = EPI == TD_EPI_ADD ? *dst + s : s;
        }
    }
}
/* Warps that share each output of a matmul over n_in inputs (1: the
 * reference order). A SwiGLU matmul must have 1: where its input is split,
 * gate and up run as one TD_EPI_STORE product of two matrices and
 * td_cu_swiglu_quantize finishes them. */
int td_cu_ksplit(const td_lc &lc, int32_t n_in);
/* Rows per tile of a matmul's blocks for a pass of n_rows (1, 2, 4 or 8). */
int td_cu_tile_rows(const td_lc &lc, bool swiglu, int32_t n_rows);
/* silu(gate) * up of (n_rows, n) float rows, quantized into act. */
cudaError_t td_cu_swiglu_quantize(const float *gate, const float *up, int32_t ld, int32_t n_rows, int32_t n,
                                  const td_dact *act, const td_lc &lc);

/* Where a Q8_K quantization (K-quant weights) takes its values from: float
 * rows x as they are (TD_QK_PLAIN), after RMSNorm with weight norm_w
 * (TD_QK_NORM), or silu(x) * up (TD_QK_SWIGLU); rows[] gathers x's rows
 * when not NULL. Each is computed as for the other weight types, so only
 * the quantization differs. */
enum td_qk_kind { TD_QK_PLAIN = 0, TD_QK_NORM = 1, TD_QK_SWIGLU = 2 };
struct td_qk_src {
    int kind;
    const float *x, *up;
    int32_t ldx;
    const int32_t *rows;
    const float *norm_w;
    float eps;
};
/* n_rows rows of n_in values (a multiple of 256) into act as Q8_K. */
cudaError_t td_cu_quantize_k(const td_qk_src *src, int32_t n_rows, int32_t n_in, const td_dact *act,
                             const td_lc &lc);
/* td_cu_matmul's K-quant form (td_cu_matmul checks one type and input
 * across mm's matrices first): quantized input only (in->act, Q8_K), the
 * STORE and ADD epilogues. */
cudaError_t td_cu_matmul_k(const td_mm *mm, const td_mm_in *in, int32_t n_rows, const td_lc &lc);
/* td_cu_matmul's form for Q4_0, Q5_0 and Q5_1 (checked as the K-quant one):
 * quantized input only (in->act: Q8_0 blocks and Q8_1's s), the STORE and
 * ADD epilogues. */
cudaError_t td_cu_matmul_il(const td_mm *mm, const td_mm_in *in, int32_t n_rows, const td_lc &lc);
/* RMSNorm (in->norm_w, in->eps) of in->x's rows (gathered through in->rows
 * when not NULL), quantized into out as Q8_0/Q8_1 blocks: the same bits as
 * the norm fused into cuda_matmul.cu's kernels. */
cudaError_t td_cu_norm_quantize(const td_mm_in *in, int32_t n_rows, int32_t n_in, const td_dact *out,
                                const td_lc &lc);
/* The same values as td_cu_quantize_k would quantize, rounded through float
 * weight type `type` instead (F32: as they are), into out (n_rows, ldo). */
cudaError_t td_cu_prepare_float(const td_qk_src *src, int32_t n_rows, int32_t n_in, uint32_t type, float *out,
                                int32_t ldo, const td_lc &lc);
/* td_cu_matmul's float form (F32, F16, BF16; checked as the K-quant one):
 * input rows prepared by td_cu_prepare_float, given as in->x / in->ldx with
 * no norm (in->norm_w NULL), the STORE and ADD epilogues. */
cudaError_t td_cu_matmul_f(const td_mm *mm, const td_mm_in *in, int32_t n_rows, const td_lc &lc);
/* The RMSNorm scale of a row of n floats (xs: shared or global memory),
 * 1 / sqrt(mean of squares + eps): warp 0 sums the squares in double, element
 * i into lane i % 32 in element order, then a fixed butterfly (lane 0's
 * result), so every kernel that normalizes gets the same bits. Every thread
 * of the block calls it (it holds a barrier) and gets the scale; once per
 * kernel (the scale lives in one shared variable), and after a barrier when
 * xs was just written to shared memory. */
__device__ __forceinline__ float td_cu_rms_scale(const float *xs, int n, float eps) {
    __shared__ float scale_sh;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (warp == 0) {
        double ss = 0.0;
        for (int i = lane; i < n; i += 32) ss += (double)(xs[i] * xs[i]);
        for (int off = 16; off; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
        if (lane == 0) {
            float mean = (float)(ss / (double)n);
            scale_sh = 1.0f / sqrtf(mean + eps);
        }
    }
    __syncthreads();
    return scale_sh;
}

/* The greedy pick of a row (td_sample_argmax): (value, id) pairs, id -1
 * for "nothing above -inf yet"; b replaces a when larger, or equal with a
 * lower id. Exact in any reduction order; a thread scans its ids in
 * ascending order keeping the first of equals. */
__host__ __device__ __forceinline__ bool td_cu_pick_better(float va, int ia, float vb, int ib) {
    return vb > va || (vb == va && ib >= 0 && (ia < 0 || ib < ia));
}
/* picks[j] = the greedy pick of logits row j (n_rows rows of n_vocab). */
cudaError_t td_cu_argmax(const float *logits, int32_t n_rows, int32_t n_vocab, int32_t *picks, const td_lc &lc);
/* out[j] = td_sample_summarize(&plans[j], logits row j) (cuda_sample.cu). */
cudaError_t td_cu_summarize(const float *logits, int32_t n_rows, int32_t n_vocab, const td_sample_plan *plans,
                            td_sample_summary *out, const td_lc &lc);
/* out[j] = td_sample_score_row(logits row j, targets[j] (targets NULL:
 * -1), n_alt) (cuda_sample.cu). */
cudaError_t td_cu_score(const float *logits, int32_t n_rows, int32_t n_vocab, const int32_t *targets, int32_t n_alt,
                        td_sample_score *out, const td_lc &lc);

/* x (n_rows, n_in) rows, gathered through rows[] when not NULL, to act. */
cudaError_t td_cu_quantize(const float *x, int32_t ldx, const int32_t *rows, int32_t n_rows, int32_t n_in,
                           const td_dact *act, const td_lc &lc);
/* Token rows [vocab0, vocab0 + emb->n_out) are emb's; other tokens' rows
 * (another rank's) are -0.0. */
cudaError_t td_cu_embed(const td_dw *emb, const td_dpass *p, int32_t n_rows, int32_t vocab0, float *x,
                        const td_lc &lc);
/* x[0..n) += delta[0..n) */
cudaError_t td_cu_add(float *x, const float *delta, int64_t n, const td_lc &lc);
/* x[0..n) += the sum of n_chunks slabs part[k * n ..], left to right */
cudaError_t td_cu_chunk_sum(float *x, const float *part, int32_t n_chunks, int64_t n, const td_lc &lc);
/* Biases, RoPE on q and k, K and V narrowed into the cache. */
struct td_rope_args {
    float *q, *k, *v;
    const float *bq, *bk, *bv;
    int32_t n_head, n_head_kv, head_dim, n_rot;
    bool neox;
};
cudaError_t td_cu_rope_store(const td_rope_args *a, const td_dpass *p, const td_dkv *kv, int32_t n_rows,
                             const td_lc &lc);
/* Attention of every (row, head): q (n_rows, n_head*head_dim) -> out. */
struct td_attn_args {
    const float *q;
    float *out;
    int32_t n_head, n_head_kv, head_dim;
    float scale;
    td_dact qout; /* also quantize the output here (qs NULL: no) */
};
cudaError_t td_cu_attention(const td_attn_args *a, const td_dpass *p, const td_dkv *kv, int32_t n_rows,
                            const td_lc &lc);
/* Dynamic shared memory the attention kernel needs for a cache of max_len. */
size_t td_cu_attention_smem(int32_t max_len, int32_t head_dim);
cudaError_t td_cu_attention_prepare(size_t smem);
/* KV compaction: slot base+keep[j] -> base+j in every layer (keep on device). */
cudaError_t td_cu_kv_move(__half *seq_base, int32_t n_layer, int32_t max_len, int32_t kv_dim, int32_t base,
                          const int32_t *keep, int32_t n_keep, cudaStream_t st);

#endif
