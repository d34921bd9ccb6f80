/* cuda_matmul.cu — quantized matrix products in the CPU's reference order,
 * or in FAST, the same chains over slices of each row.
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
 * (Q4_0, Q5_0 and Q5_1 follow the CPU's interleaved order instead:
 * cuda_interleaved.cu.)
 *
 * A warp computes four outputs for a tile of R activation rows, staged in
 * shared memory: the weight word is read once and used for every row of the
 * tile (verification rows cost little more than one). The SwiGLU form also
 * quantizes its output for the down projection (one 32-wide block of
 * outputs per thread block), saving a kernel per layer.
 *
 * FAST (KS > 1): KS groups of warps share each output, group k running the
 * same chains over the k-th slice of the row's blocks; the slices are added
 * in order before the fold. The order depends on shapes alone, so FAST is
 * batch invariant too, but not the CPU's bits. Rows per tile (R) and slices
 * (KS) are chosen per launch (td_cu_tile_rows, td_cu_ksplit) and neither
 * choice of R changes a bit.
 */
#include "cuda/cuda_internal.cuh"

#define FULL 0xffffffffu
/* Blocks of the codes a thread loads before it starts adding: the adds are
 * a serial chain, so the loads of a whole chunk must be in flight at once
 * (at one row, a few warps per SM are all there is to hide latency with). */
#define MM_CHUNK 16

template <int TYPE> struct words_per_block { static const int n = TYPE == TD_TYPE_Q8_0 ? 8 : 4; };

/* A row of W in the device layout (cuda_layout.c): word planes of nbp
 * blocks each, scales (and minimums) padded alike. */
struct chain_state {
    const uint32_t *qs;
    const __half *d, *m;
    int nbp;
};

/* The block's activation rows, staged in shared memory: codes (R, n_in),
 * scales (R, nb), sums (R, nb). */
struct staged {
    const int8_t *qs;
    const float *d, *s;
    int n_in, nb;
};

/* Lane l owns word l (Q8_0) or word l % 4 (Q4: low nibbles for l < 4 are
 * elements 4l..4l+3, high nibbles for l >= 4 are elements 16+4(l-4)..):
 * elements 4l..4l+3 of each block either way, as the CPU's lane l. Four
 * blocks' words, scales and minimums come in one wide load each. */
/* Loads chunk i0's codes, scales and minimums for one lane (zeros past nb). */
template <int TYPE>
__device__ __forceinline__ void load_chunk(const chain_state &w, const uint32_t *wq, bool valid, int nb, int i0,
                                           int shift, int wv[MM_CHUNK], float dw[MM_CHUNK], float mw[MM_CHUNK]) {
#pragma unroll
    for (int k4 = 0; k4 < MM_CHUNK / 4; k4++) {
        const int i = i0 + 4 * k4;
        uint4 q4 = make_uint4(0, 0, 0, 0);
        uint2 d4 = make_uint2(0, 0), m4 = make_uint2(0, 0);
        if (valid && i < nb) { /* i < nb <= padded count: the 4 blocks exist */
            q4 = *(const uint4 *)(wq + i);
            d4 = *(const uint2 *)(w.d + i);
            if (TYPE == TD_TYPE_Q4_1) m4 = *(const uint2 *)(w.m + i);
        }
        const uint32_t qq[4] = {q4.x, q4.y, q4.z, q4.w};
        const __half *dh = (const __half *)&d4, *mh = (const __half *)&m4;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            wv[4 * k4 + j] = TYPE == TD_TYPE_Q8_0 ? (int)qq[j] : (int)((qq[j] >> shift) & 0x0F0F0F0Fu);
            dw[4 * k4 + j] = __half2float(dh[j]);
            mw[4 * k4 + j] = TYPE == TD_TYPE_Q4_1 ? __half2float(mh[j]) : 0.0f;
        }
    }
}

/* Lane l owns word l (Q8_0) or word l % 4 (Q4: low nibbles for l < 4 are
 * elements 4l..4l+3, high nibbles for l >= 4 are elements 16+4(l-4)..):
 * elements 4l..4l+3 of each block either way, as the CPU's lane l. Four
 * blocks' words, scales and minimums come in one wide load each, and the
 * next chunk's loads are in flight while this chunk's chains run. */
/* A lane's first chunk, loaded before the activations are staged so that
 * the two memory latencies overlap. */
struct first_chunk {
    int wv[MM_CHUNK];
    float dw[MM_CHUNK], mw[MM_CHUNK];
};

template <int TYPE> __device__ __forceinline__ const uint32_t *lane_words(const chain_state &w, int lane8) {
    const int plane = TYPE == TD_TYPE_Q8_0 ? lane8 : (lane8 & 3);
    return w.qs + (size_t)plane * w.nbp;
}
template <int TYPE> __device__ __forceinline__ int lane_shift(int lane8) {
    return (TYPE != TD_TYPE_Q8_0 && lane8 >= 4) ? 4 : 0;
}

/* The chains run over blocks [ib, ie) of the row: all of it in the reference
 * order, a slice of it where the blocks are split between warps (FAST). ib
 * is a multiple of four. */
template <int TYPE>
__device__ __forceinline__ void load_first(const chain_state &w, bool valid, int ib, int ie, int lane8,
                                           first_chunk &f) {
    load_chunk<TYPE>(w, lane_words<TYPE>(w, lane8), valid, ie, ib, lane_shift<TYPE>(lane8), f.wv, f.dw, f.mw);
}

template <int TYPE, int R>
__device__ __forceinline__ void dot_tile(const chain_state &w, bool valid, int ib, int nb, const staged &x, int nr,
                                         int lane8, const first_chunk &f, float acc[R], float mins[R]) {
    const int shift = lane_shift<TYPE>(lane8);
    const uint32_t *wq = lane_words<TYPE>(w, lane8);
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.0f, mins[r] = 0.0f;
    int wv[MM_CHUNK], nwv[MM_CHUNK];
    float dw[MM_CHUNK], mw[MM_CHUNK], ndw[MM_CHUNK], nmw[MM_CHUNK];
#pragma unroll
    for (int k = 0; k < MM_CHUNK; k++) wv[k] = f.wv[k], dw[k] = f.dw[k], mw[k] = f.mw[k];
    for (int i0 = ib; i0 < nb; i0 += MM_CHUNK) {
        load_chunk<TYPE>(w, wq, valid, nb, i0 + MM_CHUNK, shift, nwv, ndw, nmw);
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
                const float scale = dw[k] * xd[i];
                acc[r] = fmaf(scale, (float)__dp4a(wv[k], xv, 0), acc[r]);
                if (TYPE == TD_TYPE_Q4_1) mins[r] = fmaf(mw[k], xs[i], mins[r]);
            }
        }
#pragma unroll
        for (int k = 0; k < MM_CHUNK; k++) wv[k] = nwv[k], dw[k] = ndw[k], mw[k] = nmw[k];
    }
}

/* The eight lanes' chains folded as ref_lanes_sum (+ the minimum chain). */
template <int TYPE> __device__ __forceinline__ float finish(float acc, float mins, int group_base) {
    float l[8];
#pragma unroll
    for (int k = 0; k < 8; k++) l[k] = __shfl_sync(FULL, acc, group_base + k);
    float s = td_d_hsum8(l);
    return TYPE == TD_TYPE_Q4_1 ? s + mins : s;
}

/* Copies n 32-bit words src(e) -> dst[e] with eight loads in flight per
 * thread before their stores (a loop of load-store pairs would wait a full
 * memory latency per element). */
template <typename F, typename G>
__device__ __forceinline__ void copy_words(int *dst, int n, F src, G where) {
    for (int base = 0; base < n; base += 8 * (int)blockDim.x) {
        int v[8];
#pragma unroll
        for (int u = 0; u < 8; u++) {
            const int e = base + u * (int)blockDim.x + (int)threadIdx.x;
            if (e < n) v[u] = src(e);
        }
#pragma unroll
        for (int u = 0; u < 8; u++) {
            const int e = base + u * (int)blockDim.x + (int)threadIdx.x;
            if (e < n) dst[where(e)] = v[u];
        }
    }
}

template <typename F> __device__ __forceinline__ void copy_words(int *dst, int n, F src) {
    copy_words(dst, n, src, [](int e) { return e; });
}

/* Copies rows r0 .. r0+nr-1 of quantized activations into shared memory:
 * codes, scales and sums in one batched round of loads. */
__device__ __forceinline__ staged stage_rows(char *sm, const td_dact &act, int r0, int nr, int R, int n_in) {
    const int nb = n_in / TD_QK, ldb = act.ld / TD_QK, wpr = n_in / 4;
    const int n1 = nr * wpr, n2 = nr * nb;
    int *dst = (int *)sm;
    float *d = (float *)(sm + (size_t)R * n_in), *s = d + R * nb;
    copy_words(dst, n1 + 2 * n2, [&](int e) {
        if (e < n1) return *(const int *)(act.qs + (size_t)(r0 + e / wpr) * act.ld + (e % wpr) * 4);
        const int f = (e - n1) % n2;
        const float *src = e < n1 + n2 ? act.d : act.s;
        return __float_as_int(src[(size_t)(r0 + f / nb) * ldb + f % nb]);
    }, [&](int e) { return e < n1 ? e : e < n1 + n2 ? R * wpr + (e - n1) : R * wpr + R * nb + (e - n1 - n2); });
    __syncthreads();
    staged x = {(const int8_t *)sm, d, s, n_in, nb};
    return x;
}

/* The norm weights of a fused RMSNorm into shared memory at ws (n_in
 * floats): weights, so a kernel copies them before its td_d_pdl_wait. */
__device__ __forceinline__ void stage_norm_weights(const td_mm_in &in, int n_in, float *ws) {
    copy_words((int *)ws, n_in, [&](int e) { return __float_as_int(in.norm_w[e]); });
}

/* RMSNorm of one float row, quantized per 32 (as td_cu_quantize does) into
 * qs/d/s: shared memory when a matmul stages its own input, global memory
 * for the standalone kernel below; both run this code, so both give the same
 * bits. xs: room for 2 * n_in floats of shared memory, the norm weights
 * already in the upper half (stage_norm_weights); the row is copied into
 * the lower. The sum of squares: element i into lane
 * i % 32 in element order, in double, then a fixed butterfly over the lanes
 * — the same tree for any block size or batch, so results stay batch
 * invariant. (The CPU adds in element order; both in double, the float mean
 * differs only when the two double sums fall on either side of a float
 * rounding boundary.) Then (x * scale) * w, quantized a warp per block, or a
 * thread per block where the warps would take more than three rounds. */
__device__ __forceinline__ void norm_quant_row(const td_mm_in &in, int row, int n_in, float *xs, int8_t *qs, float *d,
                                               float *s) {
    const int nb = n_in / TD_QK, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
    const float *xr = in.x + (size_t)(in.rows ? in.rows[row] : row) * in.ldx;
    const float *ws = xs + n_in; /* the norm weights beside the row */
    copy_words((int *)xs, n_in, [&](int e) { return __float_as_int(xr[e]); });
    __syncthreads();
    const float scale = td_cu_rms_scale(xs, n_in, in.eps);
    if (nb > 3 * nwarps) {
        for (int blk = threadIdx.x; blk < nb; blk += blockDim.x)
            td_cu_quant_block_thread(xs + blk * TD_QK, ws + blk * TD_QK, scale, blk, qs + blk * TD_QK, d + blk, s + blk);
    } else {
        for (int blk = warp; blk < nb; blk += nwarps) {
            const int i = blk * TD_QK + lane;
            td_d_quant_block((xs[i] * scale) * ws[i], lane, qs + blk * TD_QK, d + blk, s + blk);
        }
    }
    __syncthreads();
}

/* Only for tiles of one row (R == 1): a tile of more rows gets them
 * normalized by k_norm_quantize first (td_cu_matmul). The
 * pieces in shared memory: codes (n_in bytes), scales and sums (nb floats
 * each), the row and the norm weights (n_in floats each). */
__device__ __forceinline__ float *norm_row_xs(char *sm, int n_in) {
    return (float *)(sm + (size_t)n_in) + 2 * (n_in / TD_QK);
}
__device__ __forceinline__ staged stage_norm_row(char *sm, const td_mm_in &in, int row, int n_in) {
    const int nb = n_in / TD_QK;
    int8_t *qs = (int8_t *)sm;
    float *d = (float *)(sm + (size_t)n_in), *s = d + nb, *xs = norm_row_xs(sm, n_in);
    norm_quant_row(in, row, n_in, xs, qs, d, s);
    staged x = {(const int8_t *)qs, d, s, n_in, nb};
    return x;
}

/* The standalone form, one block per row, for passes of many rows: there a
 * fused matmul would normalize every row once per block of outputs. */
__global__ void __launch_bounds__(256) k_norm_quantize(td_mm_in in, int32_t n_in, td_dact out) {
    TD_DYNAMIC_SMEM(float, xs_dyn);
    stage_norm_weights(in, n_in, xs_dyn + n_in);
    td_d_pdl_wait();
    td_d_pdl_release();
    const int r = blockIdx.x, ldb = out.ld / TD_QK;
    norm_quant_row(in, r, n_in, xs_dyn, out.qs + (size_t)r * out.ld, out.d + (size_t)r * ldb, out.s + (size_t)r * ldb);
}

cudaError_t td_cu_norm_quantize(const td_mm_in *in, int32_t n_rows, int32_t n_in, const td_dact *out,
                                const td_lc &lc) {
    if (!in->x || !in->norm_w || !out->qs || !out->d || !out->s) return cudaErrorInvalidValue;
    const size_t smem = 2 * (size_t)n_in * sizeof(float);
    if (smem > 48 * 1024) {
        cudaError_t e = cudaFuncSetAttribute(k_norm_quantize, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess) return e;
    }
    return td_cu_launch(lc, k_norm_quantize, dim3((unsigned)n_rows), dim3(256), smem, *in, n_in, *out);
}

/* Dynamic shared memory of a matmul block: the staged rows (and, for a
 * fused RMSNorm, the float row and the norm weights), then, where KS warps
 * share each output, the slices' partial sums (slice_sum). */
__host__ __device__ __forceinline__ size_t stage_bytes(int R, int n_in) {
    return (size_t)R * n_in + (size_t)R * (n_in / TD_QK) * 2 * sizeof(float);
}
__host__ __device__ __forceinline__ size_t slice_area(int R, int n_in, bool fused_norm) {
    return (stage_bytes(R, n_in) + (fused_norm ? 2 * (size_t)n_in * sizeof(float) : 0) + 15) / 16 * 16;
}
__host__ __device__ __forceinline__ size_t slice_bytes(int R, int out_threads, int KS) {
    return (size_t)(KS - 1) * out_threads * R * 2 * sizeof(float);
}

/* FAST, KS > 1: slice k's chains (acc, mins of each lane and row) are added
 * to slice 0's in slice order, ((s0 + s1) + s2) + s3, the same for every
 * tile, pass and position; slice 0 then holds what the epilogue folds. */
template <int R, int KS, int OUT_THREADS>
__device__ __forceinline__ void slice_sum(float *red, float acc[R], float mins[R]) {
    if (KS == 1) return;
    const int tid = threadIdx.x % OUT_THREADS, slice = threadIdx.x / OUT_THREADS;
    if (slice > 0)
#pragma unroll
        for (int r = 0; r < R; r++) {
            float *at = red + ((size_t)((slice - 1) * R + r) * 2) * OUT_THREADS + tid;
            at[0] = acc[r];
            at[OUT_THREADS] = mins[r];
        }
    __syncthreads();
    if (slice == 0)
#pragma unroll
        for (int k = 1; k < KS; k++)
#pragma unroll
            for (int r = 0; r < R; r++) {
                const float *at = red + ((size_t)((k - 1) * R + r) * 2) * OUT_THREADS + tid;
                acc[r] = acc[r] + at[0];
                mins[r] = mins[r] + at[OUT_THREADS];
            }
}

/* OUT_THREADS threads (eight per output) compute OUT_THREADS / 8 outputs;
 * KS such groups share them, group k taking the k-th slice of each row's
 * blocks (whole quads). KS == 1 is the CPU's reference order. */
template <int TYPE, int R, int EPI, int OUT_THREADS, int KS>
__global__ void __launch_bounds__(OUT_THREADS *KS) k_matmul(td_mm mm, td_mm_in in, int32_t n_rows) {
    TD_DYNAMIC_SMEM(char, sm);
    const int OUT_PER_BLOCK = OUT_THREADS / 8;
    const int tid = threadIdx.x % OUT_THREADS, slice = threadIdx.x / OUT_THREADS;
    const int lane8 = tid & 7, group_base = (tid & 31) & ~7;
    const int r0 = blockIdx.y * R, nr = n_rows - r0 < R ? n_rows - r0 : R;
    int o = blockIdx.x * OUT_PER_BLOCK + (tid >> 3);
    int wi = 0;
    if (EPI != TD_EPI_SWIGLU) {
        if (mm.n_w > 1 && o >= mm.w[0].n_out) { o -= mm.w[0].n_out; wi = 1; }
        if (wi == 1 && mm.n_w > 2 && o >= mm.w[1].n_out) { o -= mm.w[1].n_out; wi = 2; }
    }
    const td_dw W = wi == 0 ? mm.w[0] : wi == 1 ? mm.w[1] : mm.w[2];
    float *y = wi == 0 ? mm.y[0] : wi == 1 ? mm.y[1] : mm.y[2];
    const int ldy = wi == 0 ? mm.ldy[0] : wi == 1 ? mm.ldy[1] : mm.ldy[2];
    const bool valid = o < W.n_out;
    const int nb = W.n_in / TD_QK, WPB = words_per_block<TYPE>::n, nbp = (nb + 3) / 4 * 4;
    int ib, ie; /* ib == ie: an empty slice (few blocks) */
    td_cu_slice(nb, KS, slice, &ib, &ie);
    const bool fused_norm = R == 1 && in.x; /* the block normalizes its row itself */
    const size_t oo = valid ? (size_t)o : 0;
    chain_state cs = {W.qs + oo * nbp * WPB, W.d + oo * nbp, W.m ? W.m + oo * nbp : NULL, nbp};
    first_chunk f;
    /* weights only before the wait: they load while the kernel before ends */
    load_first<TYPE>(cs, valid, ib, ie, lane8, f);
    if (fused_norm) stage_norm_weights(in, mm.w[0].n_in, norm_row_xs(sm, mm.w[0].n_in) + mm.w[0].n_in);
    td_d_pdl_wait();
    td_d_pdl_release();
    const staged x = fused_norm ? stage_norm_row(sm, in, r0, mm.w[0].n_in)
                                : stage_rows(sm, in.act, r0, nr, R, mm.w[0].n_in);
    float acc[R], mins[R];
    dot_tile<TYPE, R>(cs, valid, ib, ie, x, nr, lane8, f, acc, mins);
    slice_sum<R, KS, OUT_THREADS>((float *)(sm + slice_area(R, mm.w[0].n_in, fused_norm)), acc, mins);
    const bool writer = slice == 0; /* every thread goes on to the barriers below */
    if (EPI == TD_EPI_SWIGLU) {
        /* silu(gate) * up, then quantized for the down projection: the block
         * holds whole 32-wide blocks of outputs (OUT_THREADS == 256, KS == 1) */
        const td_dw U = mm.w[1];
        chain_state cu = {U.qs + oo * nbp * WPB, U.d + oo * nbp, U.m ? U.m + oo * nbp : NULL, nbp};
        load_first<TYPE>(cu, valid, ib, ie, lane8, f);
        float acc_u[R], mins_u[R];
        dot_tile<TYPE, R>(cu, valid, ib, ie, x, nr, lane8, f, acc_u, mins_u);
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
        for (int rr = warp; rr < nr; rr += OUT_THREADS / 32) { /* uniform per warp */
            const td_dact &q = mm.qout;
            const int row = r0 + rr, ldb = q.ld / TD_QK, blk = blockIdx.x;
            td_d_quant_block(ybuf[rr][lane], lane, q.qs + (size_t)row * q.ld + blk * TD_QK,
                             q.d + (size_t)row * ldb + blk, q.s + (size_t)row * ldb + blk);
        }
    } else if (EPI == TD_EPI_QKV) {
        /* every lane of a group holds the output after finish(); a RoPE pair
         * (2i, 2i+1) is the neighbouring group, 8 lanes away */
        const td_qkv_epi &e = mm.qkv;
        const float *bias = wi == 0 ? e.bq : wi == 1 ? e.bk : e.bv;
        const int dd = o % e.head_dim;
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (r >= nr) continue;
            const int row = r0 + r;
            float v = finish<TYPE>(acc[r], mins[r], group_base);
            if (bias && valid) v = v + bias[o];
            const float partner = __shfl_xor_sync(FULL, v, 8);
            if (wi < 2 && dd < e.n_rot) {
                const float *cs = e.rope_cs + (size_t)row * e.n_rot + (dd & ~1);
                v = (dd & 1) == 0 ? fmaf(v, cs[0], -(partner * cs[1])) : fmaf(partner, cs[1], v * cs[0]);
            }
            if (!valid || lane8 != 0 || !writer) continue;
            if (wi == 0) {
                y[(size_t)row * ldy + o] = v;
            } else {
                __half *base = e.tab[e.seq[row]];
                base[((size_t)(e.layer * 2 + wi - 1) * e.max_len + e.slot[row]) * e.kv_dim + o] = __float2half_rn(v);
            }
        }
    } else {
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (r >= nr) continue;
            float s = finish<TYPE>(acc[r], mins[r], group_base);
            if (valid && lane8 == 0 && writer) {
                float *dst = y + (size_t)(r0 + r) * ldy + o;
                *dst = EPI == TD_EPI_ADD ? *dst + s : s;
            }
        }
    }
}

/* Rows per tile of a matmul block. Few rows (decoding, verification): one
 * row per block, so the rows run side by side on idle SMs, the weights
 * re-read from L2, and the block normalizes its row itself. Many rows
 * (prefill): tiles share each weight word. A row's result is the same for
 * any tile (its chains do not change), so this is a choice of speed alone;
 * lc.tile / lc.tile_swiglu (TD_CUDA_TILE, a tuning aid) override it. */
int td_cu_tile_rows(const td_lc &lc, bool swiglu, int32_t n_rows) {
    const int forced = swiglu ? lc.tile_swiglu : lc.tile;
    if (forced > 0) return n_rows == 1 ? 1 : forced;
    return n_rows <= 16 ? 1 : n_rows <= 64 ? 2 : 8;
}

/* Warps sharing each output (FAST only; the reference order is one chain
 * per lane over the whole row): wide rows are split so that more loads are
 * in flight. lc.ksplit (TD_CUDA_KSPLIT, a tuning aid) overrides it. */
int td_cu_ksplit(const td_lc &lc, int32_t n_in) {
    if (!lc.fast) return 1;
    if (lc.ksplit > 0) return lc.ksplit;
    const int32_t nb = n_in / TD_QK;
    return nb >= 64 ? 4 : nb >= 32 ? 2 : 1;
}

template <int TYPE, int EPI, int R, int KS>
static cudaError_t launch_tile(const td_mm *mm, const td_mm_in *in, int32_t n_rows, const td_lc &lc, unsigned gx) {
    const int OUT_THREADS = EPI == TD_EPI_SWIGLU ? 256 : 64;
    const dim3 grid(gx, (unsigned)((n_rows + R - 1) / R));
    const size_t smem = slice_area(R, mm->w[0].n_in, in->x != NULL) + slice_bytes(R, OUT_THREADS, KS);
    /* wide inputs (a 7B model's down projection) stage more than the default
     * 48 KiB of shared memory: ask for it */
    if (smem > 48 * 1024) {
        cudaError_t e = cudaFuncSetAttribute(k_matmul<TYPE, R, EPI, OUT_THREADS, KS>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess) return e;
    }
    return td_cu_launch(lc, k_matmul<TYPE, R, EPI, OUT_THREADS, KS>, grid, dim3(OUT_THREADS * KS), smem, *mm, *in,
                        n_rows);
}

template <int TYPE, int EPI, int R>
static cudaError_t launch_split(const td_mm *mm, const td_mm_in *in, int32_t n_rows, const td_lc &lc, unsigned gx) {
    if constexpr (EPI == TD_EPI_SWIGLU) { /* split SwiGLU runs as two plain products (cuda_backend.cu) */
        return launch_tile<TYPE, EPI, R, 1>(mm, in, n_rows, lc, gx);
    } else {
        switch (td_cu_ksplit(lc, mm->w[0].n_in)) {
        case 2: return launch_tile<TYPE, EPI, R, 2>(mm, in, n_rows, lc, gx);
        case 4: return launch_tile<TYPE, EPI, R, 4>(mm, in, n_rows, lc, gx);
        default: return launch_tile<TYPE, EPI, R, 1>(mm, in, n_rows, lc, gx);
        }
    }
}

template <int TYPE, int EPI> static cudaError_t launch_type(const td_mm *mm, const td_mm_in *in, int32_t n_rows,
                                                            const td_lc &lc) {
    const int OUT_PER_BLOCK = (EPI == TD_EPI_SWIGLU ? 256 : 64) / 8;
    int32_t outs = 0;
    if (EPI == TD_EPI_SWIGLU) outs = mm->w[0].n_out;
    else
        for (int i = 0; i < mm->n_w; i++) outs += mm->w[i].n_out;
    const unsigned gx = (unsigned)((outs + OUT_PER_BLOCK - 1) / OUT_PER_BLOCK);
    switch (td_cu_tile_rows(lc, EPI == TD_EPI_SWIGLU, n_rows)) {
    case 1: return launch_split<TYPE, EPI, 1>(mm, in, n_rows, lc, gx);
    case 2: return launch_split<TYPE, EPI, 2>(mm, in, n_rows, lc, gx);
    case 4: return launch_split<TYPE, EPI, 4>(mm, in, n_rows, lc, gx);
    default: return launch_split<TYPE, EPI, 8>(mm, in, n_rows, lc, gx);
    }
}

template <int EPI> static cudaError_t launch_epi(const td_mm *mm, const td_mm_in *in, int32_t n_rows, const td_lc &lc) {
    switch (mm->w[0].type) {
    case TD_TYPE_Q4_1: return launch_type<TD_TYPE_Q4_1, EPI>(mm, in, n_rows, lc);
    case TD_TYPE_Q8_0: return launch_type<TD_TYPE_Q8_0, EPI>(mm, in, n_rows, lc);
    default: return cudaErrorInvalidValue;
    }
}

cudaError_t td_cu_matmul(const td_mm *mm, const td_mm_in *in, int32_t n_rows, const td_lc &lc) {
    for (int i = 1; i < mm->n_w; i++) /* one type, one input, for every form */
        if (mm->w[i].type != mm->w[0].type || mm->w[i].n_in != mm->w[0].n_in) return cudaErrorInvalidValue;
    if (td_cu_is_kquant(mm->w[0].type)) return td_cu_matmul_k(mm, in, n_rows, lc);
    if (td_cu_is_float(mm->w[0].type)) return td_cu_matmul_f(mm, in, n_rows, lc);
    if (td_cu_is_interleaved(mm->w[0].type)) return td_cu_matmul_il(mm, in, n_rows, lc);
    if (mm->epi == TD_EPI_SWIGLU && (!mm->qout.qs || mm->w[0].n_out % TD_QK != 0 || td_cu_ksplit(lc, mm->w[0].n_in) > 1))
        return cudaErrorInvalidValue;
    /* RoPE pairs must not straddle matrices or thread groups */
    if (mm->epi == TD_EPI_QKV && (mm->n_w != 3 || mm->w[0].n_out % 8 || mm->w[1].n_out % 8 || mm->qkv.head_dim % 2))
        return cudaErrorInvalidValue;
    const int tile = td_cu_tile_rows(lc, mm->epi == TD_EPI_SWIGLU, n_rows);
    if (in->x && tile > 1) {
        if (!in->scratch.qs) return cudaErrorInvalidValue;
        cudaError_t e = td_cu_norm_quantize(in, n_rows, mm->w[0].n_in, &in->scratch, lc);
        if (e != cudaSuccess) return e;
        td_mm_in q = *in;
        q.x = NULL;
        q.act = in->scratch;
        return td_cu_matmul(mm, &q, n_rows, lc);
    }
    switch (mm->epi) {
    case TD_EPI_STORE: return launch_epi<TD_EPI_STORE>(mm, in, n_rows, lc);
    case TD_EPI_ADD: return launch_epi<TD_EPI_ADD>(mm, in, n_rows, lc);
    case TD_EPI_SWIGLU: return launch_epi<TD_EPI_SWIGLU>(mm, in, n_rows, lc);
    case TD_EPI_QKV: return launch_epi<TD_EPI_QKV>(mm, in, n_rows, lc);
    default: return cudaErrorInvalidValue;
    }
}
