/* cuda_ops.cu — the small operators of a pass on the device: token
 * embedding, activation quantization (alone or fused after RMSNorm), biases
 * and RoPE with the K/V store, and the cache compaction behind
 * td_kv_compact. Each reproduces its CPU counterpart's operation order
 * (ops.c, quant_ref_quantize.c, forward.c) so that results keep the CPU's bits.
 */
#include "cuda/cuda_internal.cuh"

#define FULL 0xffffffffu

/* grid (ceil(blocks / 4), n_rows), 4 warps: one warp per block of 32 */
__global__ void k_quantize(const float *x, int32_t ldx, const int32_t *rows, int32_t n_in, td_dact act) {
    td_d_pdl_wait();
    td_d_pdl_release();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int blk = blockIdx.x * 4 + warp, r = blockIdx.y;
    if (blk >= n_in / TD_QK) return; /* whole warp leaves together */
    int src = rows ? rows[r] : r;
    float v = x[(size_t)src * ldx + blk * TD_QK + lane];
    int ldb = act.ld / TD_QK;
    td_d_quant_block(v, lane, act.qs + (size_t)r * act.ld + blk * TD_QK, act.d + (size_t)r * ldb + blk,
                act.s + (size_t)r * ldb + blk);
}

cudaError_t td_cu_quantize(const float *x, int32_t ldx, const int32_t *rows, int32_t n_rows, int32_t n_in,
                           const td_dact *act, const td_lc &lc) {
    dim3 grid((unsigned)((n_in / TD_QK + 3) / 4), (unsigned)n_rows);
    return td_cu_launch(lc, k_quantize, grid, dim3(128), 0, x, ldx, rows, n_in, *act);
}

/* grid (ceil(blocks / 4), n_rows), 4 warps: silu(gate) * up as the fused
 * SwiGLU matmul computes it, then quantized, one warp per block of 32 */
__global__ void k_swiglu_quantize(const float *gate, const float *up, int32_t ld, int32_t n, td_dact act) {
    td_d_pdl_wait();
    td_d_pdl_release();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int blk = blockIdx.x * 4 + warp, r = blockIdx.y;
    if (blk >= n / TD_QK) return; /* whole warp leaves together */
    const size_t at = (size_t)r * ld + blk * TD_QK + lane;
    const float g = gate[at], u = up[at];
    int ldb = act.ld / TD_QK;
    td_d_quant_block(g / (1.0f + td_d_exp(0.0f - g)) * u, lane, act.qs + (size_t)r * act.ld + blk * TD_QK,
                     act.d + (size_t)r * ldb + blk, act.s + (size_t)r * ldb + blk);
}

cudaError_t td_cu_swiglu_quantize(const float *gate, const float *up, int32_t ld, int32_t n_rows, int32_t n,
                                  const td_dact *act, const td_lc &lc) {
    dim3 grid((unsigned)((n / TD_QK + 3) / 4), (unsigned)n_rows);
    return td_cu_launch(lc, k_swiglu_quantize, grid, dim3(128), 0, gate, up, ld, n, *act);
}

/* ---- greedy picks: one block of 256 threads per row ---- */
__global__ void __launch_bounds__(256) k_argmax(const float *logits, int32_t n_vocab, int32_t *picks) {
    __shared__ float sv[8];
    __shared__ int si[8];
    td_d_pdl_wait();
    td_d_pdl_release();
    const float *row = logits + (size_t)blockIdx.x * n_vocab;
    float bv = -INFINITY;
    int bi = -1;
    for (int v = threadIdx.x; v < n_vocab; v += blockDim.x)
        if (row[v] > bv) bv = row[v], bi = v; /* NaN never is */
    for (int off = 16; off; off >>= 1) {
        const float ov = __shfl_xor_sync(FULL, bv, off);
        const int oi = __shfl_xor_sync(FULL, bi, off);
        if (td_cu_pick_better(bv, bi, ov, oi)) bv = ov, bi = oi;
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) sv[warp] = bv, si[warp] = bi;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++)
            if (td_cu_pick_better(bv, bi, sv[w], si[w])) bv = sv[w], bi = si[w];
        picks[blockIdx.x] = bi < 0 ? 0 : bi;
    }
}

cudaError_t td_cu_argmax(const float *logits, int32_t n_rows, int32_t n_vocab, int32_t *picks, const td_lc &lc) {
    return td_cu_launch(lc, k_argmax, dim3((unsigned)n_rows), dim3(256), 0, logits, n_vocab, picks);
}

/* ---- token embedding: the CPU's to_float of the token's row ---- */
__global__ void k_embed(td_dw emb, const int32_t *token, int32_t vocab0, float *x) {
    td_d_pdl_wait(); /* a pass's first kernel, launched plainly: a no-op */
    td_d_pdl_release(); /* but this lets the next kernel start its prologue */
    const int r = blockIdx.x, n = emb.n_in, nb = n / TD_QK, nbp = (nb + 3) / 4 * 4;
    const int words = emb.type == TD_TYPE_Q8_0 ? 8 : 4;
    const int32_t t = token[r] - vocab0;
    if (t < 0 || t >= emb.n_out) { /* another rank's token: the sum's identity */
        for (int e = threadIdx.x; e < n; e += blockDim.x) x[(size_t)r * n + e] = -0.0f;
        return;
    }
    const size_t row = (size_t)t;
    if (td_cu_is_float(emb.type)) { /* rows as they are */
        for (int e = threadIdx.x; e < n; e += blockDim.x)
            x[(size_t)r * n + e] = td_cu_float_weight(emb.type, emb.qs, row * n + e);
        return;
    }
    if (td_cu_is_interleaved(emb.type)) { /* repacked blocks, one after another */
        const int iw = td_cu_il_words(emb.type);
        for (int e = threadIdx.x; e < n; e += blockDim.x)
            x[(size_t)r * n + e] = td_cu_il_dequant(emb.type, emb.qs + (row * nb + e / TD_QK) * iw, e % TD_QK);
        return;
    }
    if (td_cu_is_kquant(emb.type)) { /* super-blocks of 256, one after another */
        const int kw = td_cu_kq_words(emb.type), nsb = n / TD_QK_SUPER;
        for (int e = threadIdx.x; e < n; e += blockDim.x)
            x[(size_t)r * n + e] =
                td_cu_kq_dequant(emb.type, emb.qs + (row * nsb + e / TD_QK_SUPER) * kw, e % TD_QK_SUPER);
        return;
    }
    for (int e = threadIdx.x; e < n; e += blockDim.x) {
        const int blk = e / TD_QK, j = e % TD_QK;
        const float d = __half2float(emb.d[row * nbp + blk]);
        float v;
        if (emb.type == TD_TYPE_Q8_0) {
            uint32_t word = emb.qs[(row * words + j / 4) * nbp + blk];
            v = (float)(int8_t)((word >> (8 * (j % 4))) & 0xFF) * d;
        } else {
            const int b = j & 15;
            uint32_t word = emb.qs[(row * words + b / 4) * nbp + blk];
            const int byte = (int)((word >> (8 * (b % 4))) & 0xFF);
            const int q = j < 16 ? (byte & 0x0F) : (byte >> 4);
            v = (float)q * d + __half2float(emb.m[row * nbp + blk]); /* Q4_1 */
        }
        x[(size_t)r * n + e] = v;
    }
}

cudaError_t td_cu_embed(const td_dw *emb, const td_dpass *p, int32_t n_rows, int32_t vocab0, float *x,
                        const td_lc &lc) {
    return td_cu_launch(lc, k_embed, dim3((unsigned)n_rows), dim3(256), 0, *emb, p->token, vocab0, x);
}

/* x[i] + delta[i], as forward.c's residual_add */
__global__ void k_add(float *x, const float *delta, int64_t n) {
    td_d_pdl_wait();
    td_d_pdl_release();
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        x[i] = x[i] + delta[i];
}

cudaError_t td_cu_add(float *x, const float *delta, int64_t n, const td_lc &lc) {
    const int64_t blocks = (n + 255) / 256;
    return td_cu_launch(lc, k_add, dim3((unsigned)(blocks < 1024 ? blocks : 1024)), dim3(256), 0, x, delta, n);
}

/* x[i] += ((part[0][i] + part[1][i]) + ...) + part[n_chunks - 1][i], as
 * forward.c's split_projection adds the invariant order's chunks */
__global__ void k_chunk_sum(float *x, const float *part, int32_t n_chunks, int64_t n) {
    td_d_pdl_wait();
    td_d_pdl_release();
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float acc = part[i];
        for (int32_t k = 1; k < n_chunks; k++) acc += part[(int64_t)k * n + i];
        x[i] = x[i] + acc;
    }
}

cudaError_t td_cu_chunk_sum(float *x, const float *part, int32_t n_chunks, int64_t n, const td_lc &lc) {
    const int64_t blocks = (n + 255) / 256;
    return td_cu_launch(lc, k_chunk_sum, dim3((unsigned)(blocks < 1024 ? blocks : 1024)), dim3(256), 0, x, part,
                        n_chunks, n);
}

/* ---- biases, RoPE, K/V into the cache (forward.c, td_op_rope) ---- */
__device__ __forceinline__ void rope_pair(float *head, const float *cs, int i, int half, bool neox) {
    int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
    float c = cs[2 * i], s = cs[2 * i + 1];
    float x0 = head[a], x1 = head[b];
    head[a] = fmaf(x0, c, -(x1 * s));
    head[b] = fmaf(x0, s, x1 * c);
}

__global__ void k_rope_store(td_rope_args a, td_dpass p, td_dkv kv) {
    td_d_pdl_wait();
    td_d_pdl_release();
    int r = blockIdx.x, hd = a.head_dim, half = a.n_rot / 2;
    int q_dim = a.n_head * hd, kv_dim = a.n_head_kv * hd;
    float *q = a.q + (size_t)r * q_dim, *k = a.k + (size_t)r * kv_dim, *v = a.v + (size_t)r * kv_dim;
    if (a.bq) {
        for (int i = threadIdx.x; i < q_dim; i += blockDim.x) q[i] = q[i] + a.bq[i];
        for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) k[i] = k[i] + a.bk[i], v[i] = v[i] + a.bv[i];
        __syncthreads();
    }
    const float *cs = p.rope_cs + (size_t)r * a.n_rot;
    for (int t = threadIdx.x; t < (a.n_head + a.n_head_kv) * half; t += blockDim.x) {
        int h = t / half, i = t % half;
        float *head = h < a.n_head ? q + (size_t)h * hd : k + (size_t)(h - a.n_head) * hd;
        rope_pair(head, cs, i, half, a.neox);
    }
    __syncthreads();
    __half *base = kv.tab[p.seq[r]];
    size_t slot = (size_t)p.slot[r];
    __half *kd = base + ((size_t)(kv.layer * 2 + 0) * kv.max_len + slot) * kv.kv_dim;
    __half *vd = base + ((size_t)(kv.layer * 2 + 1) * kv.max_len + slot) * kv.kv_dim;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        kd[i] = __float2half_rn(k[i]);
        vd[i] = __float2half_rn(v[i]);
    }
}

cudaError_t td_cu_rope_store(const td_rope_args *a, const td_dpass *p, const td_dkv *kv, int32_t n_rows,
                             const td_lc &lc) {
    return td_cu_launch(lc, k_rope_store, dim3((unsigned)n_rows), dim3(128), 0, *a, *p, *kv);
}

/* ---- compaction: each element moves through the kept slots in order ---- */
__global__ void k_kv_move(__half *base, int32_t n_layer, int32_t max_len, int32_t kv_dim, int32_t first,
                          const int32_t *keep, int32_t n_keep) {
    size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t per_plane = (size_t)kv_dim, planes = (size_t)n_layer * 2;
    if (e >= planes * per_plane) return;
    size_t plane = e / per_plane, d = e % per_plane;
    __half *p = base + plane * (size_t)max_len * kv_dim + d;
    for (int32_t j = 0; j < n_keep; j++)
        if (keep[j] != j) p[(size_t)(first + j) * kv_dim] = p[(size_t)(first + keep[j]) * kv_dim];
}

cudaError_t td_cu_kv_move(__half *seq_base, int32_t n_layer, int32_t max_len, int32_t kv_dim, int32_t base,
                          const int32_t *keep, int32_t n_keep, cudaStream_t st) {
    size_t total = (size_t)n_layer * 2 * kv_dim;
    const td_lc lc = {st, false, 0, 0, false, 0};
    return td_cu_launch(lc, k_kv_move, dim3((unsigned)((total + 255) / 256)), dim3(256), 0, seq_base, n_layer, max_len,
                        kv_dim, base, keep, n_keep);
}
