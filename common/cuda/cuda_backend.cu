/* cuda_backend.cu — the device objects of cuda.h (model weights, KV caches,
 * contexts) and the pass itself: the order of kernel launches, the one copy
 * of the pass descriptor in, the logits out, and the CUDA graphs that replay
 * a pass shape without paying a launch per kernel.
 *
 * A pass's variable inputs (tokens, slots, chains, RoPE table) live in one
 * device buffer laid out by the row count alone, and the cache is reached
 * through a per-sequence pointer table, so a graph captured for (rows, rows
 * with logits, cache) replays for any positions and sequences.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/cuda_internal.cuh"

/* ---- errors ---- */

static int cuda_fail(td_err *err, cudaError_t e, const char *what) {
    int code = e == cudaErrorMemoryAllocation ? TD_E_NOMEM : TD_E_IO;
    return td_err_set(err, code, "CUDA: %s: %s", what, cudaGetErrorString(e));
}
#define CK(call, what)                                          \
    do {                                                        \
        cudaError_t e_ = (call);                                \
        if (e_ != cudaSuccess) return cuda_fail(err, e_, what); \
    } while (0)

extern "C" bool td_cuda_compiled(void) { return true; }

extern "C" int td_cuda_device_count(td_err *err) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cuda_fail(err, e, "no usable device");
        return 0;
    }
    if (n == 0) td_err_set(err, TD_E_UNSUPPORTED, "CUDA: no device found");
    return n;
}

extern "C" int td_cuda_device_name(int device, char *buf, size_t cap, td_err *err) {
    cudaDeviceProp pr;
    CK(cudaGetDeviceProperties(&pr, device), "reading device properties");
    snprintf(buf, cap, "%s (sm_%d%d, %d SMs, %.0f GiB)", pr.name, pr.major, pr.minor, pr.multiProcessorCount,
             (double)pr.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    return TD_OK;
}

static int select_device(int device, td_err *err) {
    int n = td_cuda_device_count(err);
    if (n == 0) return TD_E_UNSUPPORTED;
    if (device < 0 || device >= n)
        return td_err_set(err, TD_E_ARG, "CUDA device %d does not exist (%d visible)", device, n);
    CK(cudaSetDevice(device), "selecting the device");
    return TD_OK;
}

/* ---- model ---- */

/* How a matrix takes its input: Q4_1 and Q8_0 as Q8_0/Q8_1 blocks, or
 * normalized and quantized inside the matmul (FMT_LEGACY); Q4_0, Q5_0 and
 * Q5_1 as the same blocks, always quantized beforehand (FMT_Q8); K-quants as
 * Q8_K; float matrices as float rows rounded through their type. */
enum in_fmt { FMT_LEGACY, FMT_Q8, FMT_Q8K, FMT_F32, FMT_F16, FMT_BF16, FMT_COUNT };
static int fmt_of_type(uint32_t type) {
    if (td_cu_is_interleaved(type)) return FMT_Q8;
    if (td_cu_is_kquant(type)) return FMT_Q8K;
    return type == TD_TYPE_F32 ? FMT_F32 : type == TD_TYPE_F16 ? FMT_F16 : type == TD_TYPE_BF16 ? FMT_BF16 : FMT_LEGACY;
}

struct td_cuda_dlayer {
    float *attn_norm, *ffn_norm, *bq, *bk, *bv;
    td_dw wq, wk, wv, wo, w_gate, w_up, w_down;
};

struct td_cuda_model {
    int device;
    td_cuda_model_desc hp; /* dimensions only; host pointers cleared */
    td_dw tok_embd, output;
    float *output_norm;
    td_cuda_dlayer *layers;
    void *arena;
    size_t bytes;
    int32_t act_ld; /* widest activation row (elements) */
    bool needs[FMT_COUNT]; /* input formats some matrix takes */
    /* the invariant order's chunks (td_cuda_model_upload_chunks): layer l's
     * chunk k of wo at wo_chunks[l * n_attn + k], of w_down likewise */
    bool has_chunks;
    td_cuda_chunks_desc chunks; /* geometry (layers NULL) */
    td_dw *wo_chunks, *down_chunks;
    void *chunk_arena;
};

#define ARENA_ALIGN 256
static size_t round_up(size_t n) { return (n + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN; }

/* Upload plan: a pass over the model that either sizes the arena (staging
 * NULL) or fills a host staging copy and records device pointers. */
struct plan {
    char *staging; /* host image of the arena, or NULL while sizing */
    char *dev;
    size_t used;
};

static void *plan_take(plan *p, size_t bytes, void **host) {
    size_t at = p->used;
    p->used += round_up(bytes);
    *host = p->staging ? p->staging + at : NULL;
    return p->dev ? p->dev + at : NULL;
}

static float *plan_floats(plan *p, const float *src, int64_t n) {
    if (!src) return NULL;
    void *h;
    float *d = (float *)plan_take(p, (size_t)n * sizeof(float), &h);
    if (h) memcpy(h, src, (size_t)n * sizeof(float));
    return d;
}

static td_dw plan_weight(plan *p, const td_cuda_weight *w) {
    td_cuda_layout lay;
    td_dw out;
    memset(&out, 0, sizeof out);
    td_cuda_layout_of(w->type, w->n_in, w->n_out, &lay, NULL); /* checked before */
    void *hq, *hd, *hm = NULL;
    out.qs = (const uint32_t *)plan_take(p, lay.qs_bytes, &hq);
    if (lay.d_bytes) out.d = (const __half *)plan_take(p, lay.d_bytes, &hd);
    else hd = NULL; /* K-quants: scales inside the super-blocks */
    if (lay.m_bytes) out.m = (const __half *)plan_take(p, lay.m_bytes, &hm);
    if (p->staging) td_cuda_layout_pack(w->type, w->data, w->n_in, w->n_out, hq, (uint16_t *)hd, (uint16_t *)hm);
    out.type = w->type;
    out.n_in = (int32_t)w->n_in;
    out.n_out = (int32_t)w->n_out;
    return out;
}

static void plan_model(plan *p, const td_cuda_model_desc *d, td_cuda_model *m) {
    int64_t E = d->n_embd, qd = (int64_t)d->n_head * d->head_dim, kvd = (int64_t)d->n_head_kv * d->head_dim;
    m->tok_embd = plan_weight(p, &d->tok_embd);
    m->output = d->output.data == d->tok_embd.data ? m->tok_embd : plan_weight(p, &d->output);
    m->output_norm = plan_floats(p, d->output_norm, E);
    for (int32_t l = 0; l < d->n_layer; l++) {
        const td_cuda_layer *s = &d->layers[l];
        td_cuda_dlayer *t = &m->layers[l];
        t->attn_norm = plan_floats(p, s->attn_norm, E);
        t->ffn_norm = plan_floats(p, s->ffn_norm, E);
        t->bq = plan_floats(p, s->bq, qd);
        t->bk = plan_floats(p, s->bk, kvd);
        t->bv = plan_floats(p, s->bv, kvd);
        t->wq = plan_weight(p, &s->wq);
        t->wk = plan_weight(p, &s->wk);
        t->wv = plan_weight(p, &s->wv);
        t->wo = plan_weight(p, &s->wo);
        t->w_gate = plan_weight(p, &s->w_gate);
        t->w_up = plan_weight(p, &s->w_up);
        t->w_down = plan_weight(p, &s->w_down);
    }
}

extern "C" int td_cuda_model_upload(const td_cuda_model_desc *d, int device, td_cuda_model **out, td_err *err) {
    *out = NULL;
    int rc = td_cuda_check_model(d, err);
    if (rc) return rc;
    if ((rc = select_device(device, err))) return rc;
    td_cuda_model *m = (td_cuda_model *)calloc(1, sizeof *m);
    if (!m) return td_err_set(err, TD_E_NOMEM, "out of memory");
    m->layers = (td_cuda_dlayer *)calloc((size_t)d->n_layer, sizeof *m->layers);
    if (!m->layers) {
        free(m);
        return td_err_set(err, TD_E_NOMEM, "out of memory");
    }
    m->device = device;
    m->hp = *d;
    if (m->hp.n_vocab_rows == 0) m->hp.n_vocab_rows = d->n_vocab;
    m->hp.layers = NULL;
    m->hp.output_norm = NULL;
    memset(&m->hp.tok_embd, 0, sizeof m->hp.tok_embd);
    memset(&m->hp.output, 0, sizeof m->hp.output);
    int32_t qd = d->n_head * d->head_dim, widest = d->n_embd;
    if (qd > widest) widest = qd;
    if (d->n_ff > widest) widest = d->n_ff;
    m->act_ld = (widest + TD_QK - 1) / TD_QK * TD_QK;
    m->needs[fmt_of_type(d->output.type)] = true;
    for (int32_t l = 0; l < d->n_layer; l++) {
        const td_cuda_layer *s = &d->layers[l];
        const td_cuda_weight *ws[7] = {&s->wq, &s->wk, &s->wv, &s->wo, &s->w_gate, &s->w_up, &s->w_down};
        for (int i = 0; i < 7; i++) m->needs[fmt_of_type(ws[i]->type)] = true;
    }

    plan sizing = {NULL, NULL, 0};
    plan_model(&sizing, d, m);
    m->bytes = sizing.used;
    char *staging = (char *)malloc(m->bytes);
    cudaError_t e = staging ? cudaMalloc(&m->arena, m->bytes) : cudaErrorMemoryAllocation;
    if (e != cudaSuccess) {
        rc = staging ? cuda_fail(err, e, "allocating the weights") : td_err_set(err, TD_E_NOMEM, "out of memory staging the weights");
        free(staging);
        td_cuda_model_free(m);
        return rc;
    }
    memset(staging, 0, m->bytes);
    plan fill = {staging, (char *)m->arena, 0};
    plan_model(&fill, d, m);
    e = cudaMemcpy(m->arena, staging, m->bytes, cudaMemcpyHostToDevice);
    free(staging);
    if (e != cudaSuccess) {
        rc = cuda_fail(err, e, "uploading the weights");
        td_cuda_model_free(m);
        return rc;
    }
    *out = m;
    return TD_OK;
}

extern "C" void td_cuda_model_free(td_cuda_model *m) {
    if (!m) return;
    cudaSetDevice(m->device);
    if (m->arena) cudaFree(m->arena);
    if (m->chunk_arena) cudaFree(m->chunk_arena);
    free(m->wo_chunks);
    free(m->down_chunks);
    free(m->layers);
    free(m);
}

/* ---- the invariant order's chunks ---- */

/* Columns [col0, col0 + n_cols) of a host matrix as a matrix of their own,
 * staged through dense (room for n_out rows of n_cols). */
static td_dw plan_columns(plan *p, const td_cuda_weight *w, int64_t col0, int64_t n_cols, char *dense) {
    td_cuda_weight sub = {NULL, w->type, n_cols, w->n_out};
    if (p->staging) {
        const size_t full = td_quant_row_bytes(w->type, w->n_in), at = td_quant_row_bytes(w->type, col0);
        const size_t part = td_quant_row_bytes(w->type, n_cols);
        for (int64_t o = 0; o < w->n_out; o++) memcpy(dense + o * part, (const char *)w->data + o * full + at, part);
        sub.data = dense;
    }
    return plan_weight(p, &sub);
}

static void plan_chunks(plan *p, const td_cuda_chunks_desc *d, td_cuda_model *m, char *dense) {
    for (int32_t l = 0; l < m->hp.n_layer; l++) {
        for (int32_t k = 0; k < d->n_attn; k++)
            m->wo_chunks[l * d->n_attn + k] =
                plan_columns(p, &d->layers[l].wo, (int64_t)k * d->attn_chunk, d->attn_chunk, dense);
        for (int32_t k = 0; k < d->n_ff; k++)
            m->down_chunks[l * d->n_ff + k] =
                plan_columns(p, &d->layers[l].w_down, (int64_t)k * d->ff_chunk, d->ff_chunk, dense);
    }
}

/* Chunks of chunk_in inputs of w, n of them: whole blocks the device runs. */
static int check_chunks(const char *name, int32_t l, const td_cuda_weight *w, int32_t chunk_in, int32_t n,
                        td_err *err) {
    td_cuda_layout lay;
    td_err why;
    memset(&why, 0, sizeof why);
    if (chunk_in < 1 || (int64_t)chunk_in * n != w->n_in || td_quant_row_bytes(w->type, chunk_in) == 0 ||
        td_cuda_layout_of(w->type, chunk_in, w->n_out, &lay, &why) != TD_OK)
        return td_err_set(err, TD_E_ARG, "blk.%d.%s: %d chunks of %d inputs do not cut %lld inputs into whole blocks%s%s",
                          l, name, n, chunk_in, (long long)w->n_in, why.msg[0] ? ": " : "", why.msg);
    return TD_OK;
}

extern "C" int td_cuda_model_upload_chunks(td_cuda_model *m, const td_cuda_chunks_desc *d, td_err *err) {
    if (!m || !d || !d->layers) return td_err_set(err, TD_E_ARG, "no chunks to upload");
    if (m->has_chunks) return TD_OK;
    if (d->n_attn < 1 || d->attn0 < 0 || d->attn0 + d->n_attn > d->n_attn_all || d->n_ff < 1 || d->ff0 < 0 ||
        d->ff0 + d->n_ff > d->n_ff_all)
        return td_err_set(err, TD_E_ARG, "chunks [%d, +%d) of %d and [%d, +%d) of %d", d->attn0, d->n_attn,
                          d->n_attn_all, d->ff0, d->n_ff, d->n_ff_all);
    size_t dense_bytes = 0;
    for (int32_t l = 0; l < m->hp.n_layer; l++) {
        const td_cuda_layer *ly = &d->layers[l];
        int rc = check_chunks("attn_output", l, &ly->wo, d->attn_chunk, d->n_attn, err);
        if (rc == TD_OK) rc = check_chunks("ffn_down", l, &ly->w_down, d->ff_chunk, d->n_ff, err);
        if (rc) return rc;
        size_t a = td_quant_row_bytes(ly->wo.type, d->attn_chunk) * (size_t)ly->wo.n_out;
        size_t b = td_quant_row_bytes(ly->w_down.type, d->ff_chunk) * (size_t)ly->w_down.n_out;
        if (a > dense_bytes) dense_bytes = a;
        if (b > dense_bytes) dense_bytes = b;
    }
    CK(cudaSetDevice(m->device), "selecting the device");
    const size_t L = (size_t)m->hp.n_layer;
    m->wo_chunks = (td_dw *)calloc(L * (size_t)d->n_attn, sizeof *m->wo_chunks);
    m->down_chunks = (td_dw *)calloc(L * (size_t)d->n_ff, sizeof *m->down_chunks);
    char *dense = (char *)malloc(dense_bytes);
    plan sizing = {NULL, NULL, 0};
    char *staging = NULL;
    cudaError_t e = cudaSuccess;
    int rc = TD_OK;
    if (!m->wo_chunks || !m->down_chunks || !dense) {
        rc = td_err_set(err, TD_E_NOMEM, "out of memory for the invariant order's chunks");
        goto fail;
    }
    plan_chunks(&sizing, d, m, NULL);
    if (!(staging = (char *)malloc(sizing.used))) {
        rc = td_err_set(err, TD_E_NOMEM, "out of memory staging the invariant order's chunks");
        goto fail;
    }
    memset(staging, 0, sizing.used);
    if ((e = cudaMalloc(&m->chunk_arena, sizing.used)) == cudaSuccess) {
        plan fill = {staging, (char *)m->chunk_arena, 0};
        plan_chunks(&fill, d, m, dense);
        e = cudaMemcpy(m->chunk_arena, staging, sizing.used, cudaMemcpyHostToDevice);
    }
    if (e != cudaSuccess) {
        rc = cuda_fail(err, e, "uploading the invariant order's chunks");
        goto fail;
    }
    free(staging);
    free(dense);
    m->chunks = *d;
    m->chunks.layers = NULL;
    m->bytes += sizing.used;
    m->has_chunks = true;
    return TD_OK;
fail:
    free(staging);
    free(dense);
    free(m->wo_chunks);
    free(m->down_chunks);
    m->wo_chunks = m->down_chunks = NULL;
    if (m->chunk_arena) cudaFree(m->chunk_arena);
    m->chunk_arena = NULL;
    return rc;
}

extern "C" bool td_cuda_model_has_chunks(const td_cuda_model *m) { return m && m->has_chunks; }

extern "C" size_t td_cuda_model_bytes(const td_cuda_model *m) { return m ? m->bytes : 0; }
extern "C" int td_cuda_model_device(const td_cuda_model *m) { return m ? m->device : -1; }

/* ---- KV cache ---- */

struct td_cuda_kv {
    int device;
    int32_t n_layer, kv_dim, max_seqs, max_len;
    __half **seqs;   /* host copy of the table */
    __half **d_tab;  /* (max_seqs) device table */
    int32_t *d_keep; /* (max_len) compaction indices */
    size_t bytes;
};

static size_t seq_bytes(const td_cuda_kv *kv) {
    return (size_t)kv->n_layer * 2 * (size_t)kv->max_len * (size_t)kv->kv_dim * sizeof(__half);
}

extern "C" int td_cuda_kv_create(const td_cuda_model *m, int32_t max_seqs, int32_t max_len, td_cuda_kv **out,
                                 td_err *err) {
    *out = NULL;
    if (!m || max_seqs < 1 || max_len < 1) return td_err_set(err, TD_E_ARG, "bad KV cache size");
    CK(cudaSetDevice(m->device), "selecting the device");
    td_cuda_kv *kv = (td_cuda_kv *)calloc(1, sizeof *kv);
    if (!kv) return td_err_set(err, TD_E_NOMEM, "out of memory");
    kv->device = m->device;
    kv->n_layer = m->hp.n_layer;
    kv->kv_dim = m->hp.n_head_kv * m->hp.head_dim;
    kv->max_seqs = max_seqs;
    kv->max_len = max_len;
    kv->seqs = (__half **)calloc((size_t)max_seqs, sizeof *kv->seqs);
    cudaError_t e = kv->seqs ? cudaMalloc(&kv->d_tab, (size_t)max_seqs * sizeof(__half *)) : cudaErrorMemoryAllocation;
    if (e == cudaSuccess) e = cudaMemset(kv->d_tab, 0, (size_t)max_seqs * sizeof(__half *));
    if (e == cudaSuccess) e = cudaMalloc(&kv->d_keep, (size_t)max_len * sizeof(int32_t));
    if (e != cudaSuccess) {
        int rc = cuda_fail(err, e, "allocating the KV cache table");
        td_cuda_kv_free(kv);
        return rc;
    }
    *out = kv;
    return TD_OK;
}

extern "C" void td_cuda_kv_free(td_cuda_kv *kv) {
    if (!kv) return;
    cudaSetDevice(kv->device);
    if (kv->seqs)
        for (int32_t s = 0; s < kv->max_seqs; s++) cudaFree(kv->seqs[s]);
    cudaFree(kv->d_tab);
    cudaFree(kv->d_keep);
    free(kv->seqs);
    free(kv);
}

extern "C" size_t td_cuda_kv_bytes(const td_cuda_kv *kv) { return kv ? kv->bytes : 0; }

/* Storage for a sequence's first pass (outside any graph: the table entry
 * changes, the table pointer does not). */
static int kv_ensure(td_cuda_kv *kv, int32_t seq, td_err *err) {
    if (kv->seqs[seq]) return TD_OK;
    __half *p = NULL;
    CK(cudaMalloc(&p, seq_bytes(kv)), "allocating a sequence's KV cache");
    cudaError_t e = cudaMemcpy(kv->d_tab + seq, &p, sizeof p, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
        cudaFree(p);
        return cuda_fail(err, e, "updating the KV table");
    }
    kv->seqs[seq] = p;
    kv->bytes += seq_bytes(kv);
    return TD_OK;
}

extern "C" int td_cuda_kv_compact(td_cuda_kv *kv, int32_t seq, int32_t base, const int32_t *keep, int32_t n_keep,
                                  td_err *err) {
    if (seq < 0 || seq >= kv->max_seqs || n_keep < 0 || n_keep > kv->max_len)
        return td_err_set(err, TD_E_ARG, "bad compaction of sequence %d", seq);
    if (n_keep == 0 || !kv->seqs[seq]) return TD_OK;
    bool moves = false;
    for (int32_t j = 0; j < n_keep; j++) moves |= keep[j] != j;
    if (!moves) return TD_OK;
    CK(cudaSetDevice(kv->device), "selecting the device");
    CK(cudaMemcpy(kv->d_keep, keep, (size_t)n_keep * sizeof(int32_t), cudaMemcpyHostToDevice), "copying kept slots");
    CK(td_cu_kv_move(kv->seqs[seq], kv->n_layer, kv->max_len, kv->kv_dim, base, kv->d_keep, n_keep, 0),
       "compacting the KV cache");
    CK(cudaDeviceSynchronize(), "compacting the KV cache");
    return TD_OK;
}

/* ---- context ---- */

#define GRAPH_SLOTS 48

/* Kernel-time profile (TD_CUDA_PROFILE=1 at context creation): each launch
 * of a pass is followed by an event and the time between events is added
 * to its kind. Passes then run without graphs. A diagnostic for tuning. */
enum prof_kind { P_EMBED, P_QKV, P_ROPE, P_ATTN, P_WO, P_GATEUP, P_DOWN, P_HEAD, P_KINDS };
static const char *const prof_names[P_KINDS] = {"embed", "norm+qkv", "rope", "attn", "wo", "norm+gate_up", "down", "norm+head"};
#define PROF_EVENTS 512

struct graph_slot {
    int32_t n_rows, n_out;
    cudaGraphExec_t exec;
};

struct td_cuda_ctx {
    const td_cuda_model *m;
    int32_t max_rows, chain_cap, desc_ints;
    cudaStream_t stream;
    float *x, *q, *k, *v, *att, *logits;
    td_dact act, act2; /* act2: the down projection's input */
    td_dact actk, act2k; /* the same as Q8_K, for K-quant matrices */
    float *actf[3], *act2f[3]; /* the same as float rows for F32, F16, BF16 matrices */
    int32_t *d_desc; /* the pass descriptor (layout by row count) */
    int32_t *d_picks; /* (max_rows) greedy picks */
    td_sample_plan *d_plans;        /* (max_rows) each row's sampling */
    int32_t *d_targets;             /* (max_rows) each row's target token, */
    td_sample_score *d_scores;      /* and its score */
    td_sample_summary *d_summaries; /* (max_rows) and its summary */
    int32_t n_out_last;             /* rows of logits the last pass left in logits */
    int32_t *h_desc; /* pinned host image */
    bool graphs_on;
    bool pdl; /* kernels start while the one before finishes (cuda_internal.cuh) */
    int tile, tile_swiglu; /* forced rows per matmul tile (TD_CUDA_TILE), or 0 */
    bool fast;             /* split reductions (td_cuda_ctx_set_fast) */
    int ksplit;            /* forced warps per output in FAST (TD_CUDA_KSPLIT), or 0 */
    float *ff;             /* (2, max_rows, n_ff): gate and up when FAST splits them */
    /* What the graphs below captured of their cache: its table of
     * sequences (read when they run) and its shape. Not the td_cuda_kv's
     * address: a cache freed and another made may get the same one, and a
     * replay would then use the freed table (test_cuda's
     * gpu_spec_matches_cpu found it on the CPU emulator). */
    __half *const *graph_tab;
    int32_t graph_max_len, graph_kv_dim;
    graph_slot graphs[GRAPH_SLOTS];
    int n_graphs;
    /* A rank of a tensor-parallel group (td_cuda_ctx_set_group): its
     * collectives, every rank's first vocabulary row, the partial sums of
     * wo and w_down (proj), its own rows of logits (local), the gathered
     * logits on the host (gather, grown to the widest pass) and the pinned
     * copy a collective works on (stage). A collective's failure stops the
     * pass with its error here. */
    bool grouped;
    td_cuda_group group;
    int32_t *vocab0, *attn0, *ff0;
    int64_t *counts;
    float *proj, *local;
    float *stage, *gather;
    size_t gather_len;
    int group_rc;
    td_err group_err;
    /* the invariant order (td_cuda_ctx_set_invariant): every chunk's
     * partial sums, (chunks, max_rows, n_embd), and their pinned host copy
     * for a group's gather */
    bool invariant;
    float *part, *pstage;
    size_t attn_smem_ready; /* dynamic shared memory the attention kernel may take */
    bool profile;
    cudaEvent_t ev[PROF_EVENTS];
    int ev_kind[PROF_EVENTS], n_ev;
    double prof_ms[P_KINDS];
    int64_t prof_passes;
};

static void prof_mark(td_cuda_ctx *c, int kind) {
    if (!c->profile || c->n_ev >= PROF_EVENTS) return;
    c->ev_kind[c->n_ev] = kind;
    cudaEventRecord(c->ev[c->n_ev++], c->stream);
}

/* After a synchronized pass: adds the gaps between its events. */
static void prof_collect(td_cuda_ctx *c) {
    for (int i = 1; i < c->n_ev; i++) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, c->ev[i - 1], c->ev[i]) == cudaSuccess) c->prof_ms[c->ev_kind[i]] += ms;
    }
    c->n_ev = 0;
    c->prof_passes++;
}

extern "C" int td_cuda_ctx_profile(const td_cuda_ctx *c, char *buf, size_t cap) {
    if (!c->profile) {
        char tiles[32] = "by rows";
        if (c->tile) snprintf(tiles, sizeof tiles, "%d (SwiGLU %d) rows", c->tile, c->tile_swiglu);
        char split[48] = "";
        if (c->fast && c->ksplit) snprintf(split, sizeof split, ", FAST: %d warps per output", c->ksplit);
        else if (c->fast) snprintf(split, sizeof split, ", FAST: warps per output by width");
        return snprintf(buf, cap, "launches: %s, programmatic dependent launch %s, matmul tiles %s%s",
                        c->graphs_on ? "CUDA graphs" : "one by one", c->pdl ? "on" : "off", tiles, split);
    }
    if (c->prof_passes == 0) return snprintf(buf, cap, "no profile yet (no one-row pass)");
    size_t used = (size_t)snprintf(buf, cap, "kernel us per one-row pass (%lld passes):", (long long)c->prof_passes);
    for (int k = 0; k < P_KINDS && used < cap; k++)
        used += (size_t)snprintf(buf + used, cap - used, " %s %.1f", prof_names[k], 1e3 * c->prof_ms[k] / (double)c->prof_passes);
    return (int)used;
}

static void drop_graphs(td_cuda_ctx *c) {
    for (int i = 0; i < c->n_graphs; i++) cudaGraphExecDestroy(c->graphs[i].exec);
    c->n_graphs = 0;
    c->graph_tab = NULL;
}

static void graphs_for(td_cuda_ctx *c, const td_cuda_kv *kv) {
    c->graph_tab = kv->d_tab;
    c->graph_max_len = kv->max_len;
    c->graph_kv_dim = kv->kv_dim;
}

extern "C" void td_cuda_ctx_free(td_cuda_ctx *c) {
    if (!c) return;
    cudaSetDevice(c->m->device);
    drop_graphs(c);
    cudaFree(c->x); cudaFree(c->q); cudaFree(c->k); cudaFree(c->v); cudaFree(c->att);
    cudaFree(c->logits); cudaFree(c->ff); cudaFree(c->act.qs); cudaFree(c->act.d); cudaFree(c->act.s); cudaFree(c->d_desc);
    cudaFree(c->act2.qs); cudaFree(c->act2.d); cudaFree(c->act2.s);
    cudaFree(c->actk.qs); cudaFree(c->actk.d); cudaFree(c->actk.bs);
    cudaFree(c->act2k.qs); cudaFree(c->act2k.d); cudaFree(c->act2k.bs);
    for (int t = 0; t < 3; t++) cudaFree(c->actf[t]), cudaFree(c->act2f[t]);
    cudaFree(c->d_picks);
    cudaFree(c->d_plans);
    cudaFree(c->d_targets);
    cudaFree(c->d_scores);
    cudaFree(c->d_summaries);
    cudaFreeHost(c->h_desc);
    cudaFree(c->proj);
    cudaFree(c->local);
    cudaFreeHost(c->stage);
    if (c->group.device_buffers) cudaFree(c->gather);
    else cudaFreeHost(c->gather);
    cudaFree(c->part);
    cudaFreeHost(c->pstage);
    free(c->vocab0);
    free(c->attn0);
    free(c->ff0);
    free(c->counts);
    if (c->stream) cudaStreamDestroy(c->stream);
    if (c->profile)
        for (int i = 0; i < PROF_EVENTS; i++) cudaEventDestroy(c->ev[i]);
    free(c);
}

extern "C" void td_cuda_ctx_set_fast(td_cuda_ctx *c, bool fast) {
    if (c->fast != fast) drop_graphs(c); /* they were captured for the other order */
    c->fast = fast;
}

extern "C" bool td_cuda_ctx_fast(const td_cuda_ctx *c) { return c->fast; }

/* Partial sums of the widest projection's chunks for max_rows rows, and
 * their host copy where a group gathers them. */
static size_t part_floats(const td_cuda_ctx *c) {
    const td_cuda_chunks_desc *ch = &c->m->chunks;
    size_t n = (size_t)(ch->n_attn_all > ch->n_ff_all ? ch->n_attn_all : ch->n_ff_all);
    return n * (size_t)c->max_rows * (size_t)c->m->hp.n_embd;
}

static int part_buffers(td_cuda_ctx *c, td_err *err) {
    if (!c->invariant) return TD_OK;
    if (!c->part) CK(cudaMalloc((void **)&c->part, part_floats(c) * sizeof(float)), "allocating chunk partials");
    if (c->grouped && !c->group.device_buffers && !c->pstage)
        CK(cudaMallocHost((void **)&c->pstage, part_floats(c) * sizeof(float)), "allocating a group's chunk staging");
    return TD_OK;
}

extern "C" int td_cuda_ctx_set_invariant(td_cuda_ctx *c, bool on, td_err *err) {
    if (on && !c->m->has_chunks)
        return td_err_set(err, TD_E_ARG, "the invariant order needs the model's chunks (td_cuda_model_upload_chunks)");
    if (c->invariant != on) drop_graphs(c); /* captured for the other order */
    c->invariant = on;
    CK(cudaSetDevice(c->m->device), "selecting the device");
    return part_buffers(c, err);
}

extern "C" bool td_cuda_ctx_invariant(const td_cuda_ctx *c) { return c->invariant; }

extern "C" void td_cuda_ctx_use_graphs(td_cuda_ctx *c, bool on) {
    if (!on) drop_graphs(c);
    c->graphs_on = on;
}

/* Does programmatic dependent launch work here, captured into a graph as a
 * pass uses it? Asked once per context; where it does not (an older driver),
 * the context launches kernels one after another as before. */
__global__ void k_pdl_probe(int *flag) {
    td_d_pdl_wait();
    td_d_pdl_release();
    if (flag && threadIdx.x == 0) *flag = 1;
}

static bool pdl_works(cudaStream_t st) {
    const td_lc plain = {st, false, 0, 0, false, 0}, overlap = {st, true, 0, 0, false, 0};
    cudaGraph_t g = NULL;
    cudaGraphExec_t exec = NULL;
    if (cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    cudaError_t e = td_cu_launch(plain, k_pdl_probe, dim3(1), dim3(32), 0, (int *)NULL);
    if (e == cudaSuccess) e = td_cu_launch(overlap, k_pdl_probe, dim3(1), dim3(32), 0, (int *)NULL);
    cudaError_t e2 = cudaStreamEndCapture(st, &g);
    if (e == cudaSuccess) e = e2;
    if (e == cudaSuccess) e = cudaGraphInstantiate(&exec, g, 0);
    if (e == cudaSuccess) e = cudaGraphLaunch(exec, st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st);
    if (exec) cudaGraphExecDestroy(exec);
    if (g) cudaGraphDestroy(g);
    cudaGetLastError(); /* a refused launch leaves its error behind: clear it */
    return e == cudaSuccess;
}

/* Descriptor ints for n rows: 7 per-row arrays, the RoPE table, the chains. */
static int32_t desc_ints(const td_cuda_model *m, int32_t n, int32_t chain_total) {
    return 7 * n + n * m->hp.n_rot + chain_total;
}

extern "C" int td_cuda_ctx_create(const td_cuda_model *m, int32_t max_rows, td_cuda_ctx **out, td_err *err) {
    *out = NULL;
    if (!m || max_rows < 1) return td_err_set(err, TD_E_ARG, "bad CUDA context size");
    CK(cudaSetDevice(m->device), "selecting the device");
    td_cuda_ctx *c = (td_cuda_ctx *)calloc(1, sizeof *c);
    if (!c) return td_err_set(err, TD_E_NOMEM, "out of memory");
    c->m = m;
    c->max_rows = max_rows;
    c->graphs_on = true;
    /* Programmatic dependent launch needs sm_90, and TD_CUDA_PDL=1 asks for
     * it: off by default until a device run has checked its bits and timed
     * it (cuda_device_check.sh runs both); the bits are meant to be the same
     * either way. */
    int major = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, m->device);
    const char *pdl = getenv("TD_CUDA_PDL");
    c->pdl = major >= 9 && pdl && strcmp(pdl, "1") == 0;
    /* TD_CUDA_TILE=A or A:B forces A rows per matmul tile (B for the SwiGLU
     * matmul) in passes of more than one row: a tuning aid for the
     * side-by-side figures */
    const char *tile = getenv("TD_CUDA_TILE");
    if (tile && *tile && !td_cuda_tile_parse(tile, &c->tile, &c->tile_swiglu))
        fprintf(stderr, "tandem: TD_CUDA_TILE=%s ignored (want A or A:B, each 1, 2, 4 or 8)\n", tile);
    /* TD_CUDA_KSPLIT=1, 2 or 4 forces the warps per output of FAST passes */
    const char *ks = getenv("TD_CUDA_KSPLIT");
    if (ks && *ks && !td_cuda_ksplit_parse(ks, &c->ksplit))
        fprintf(stderr, "tandem: TD_CUDA_KSPLIT=%s ignored (want 1, 2 or 4)\n", ks);
    const char *prof = getenv("TD_CUDA_PROFILE");
    if (prof && *prof && strcmp(prof, "0") != 0) {
        c->profile = true;
        c->graphs_on = false;
        c->pdl = false; /* each kernel timed alone, as before */
        for (int i = 0; i < PROF_EVENTS; i++)
            if (cudaEventCreate(&c->ev[i]) != cudaSuccess) {
                for (int j = 0; j < i; j++) cudaEventDestroy(c->ev[j]);
                free(c);
                return td_err_set(err, TD_E_IO, "CUDA: cannot create profiling events");
            }
    }
    /* every row a tree node under all earlier ones: the longest chains */
    c->chain_cap = (int32_t)((int64_t)max_rows * (max_rows + 1) / 2);
    c->desc_ints = desc_ints(m, max_rows, c->chain_cap);
    const td_cuda_model_desc *hp = &m->hp;
    size_t R = (size_t)max_rows, E = (size_t)hp->n_embd, qd = (size_t)hp->n_head * hp->head_dim;
    size_t kvd = (size_t)hp->n_head_kv * hp->head_dim, ld = (size_t)m->act_ld;
    c->act.ld = c->act2.ld = m->act_ld;
    /* Q8_K rows: whole super-blocks of 256 */
    size_t ldk = (size_t)(m->act_ld + TD_QK_SUPER - 1) / TD_QK_SUPER * TD_QK_SUPER;
    c->actk.ld = c->act2k.ld = (int32_t)ldk;
    cudaError_t e = cudaStreamCreate(&c->stream);
#define ALLOC(ptr, bytes) \
    if (e == cudaSuccess) e = cudaMalloc((void **)&(ptr), (bytes))
    ALLOC(c->x, R * E * sizeof(float));
    ALLOC(c->q, R * qd * sizeof(float));
    ALLOC(c->k, R * kvd * sizeof(float));
    ALLOC(c->v, R * kvd * sizeof(float));
    ALLOC(c->att, R * qd * sizeof(float));
    ALLOC(c->logits, R * (size_t)hp->n_vocab * sizeof(float));
    ALLOC(c->ff, 2 * R * (size_t)hp->n_ff * sizeof(float));
    ALLOC(c->act.qs, R * ld);
    ALLOC(c->act.d, R * ld / TD_QK * sizeof(float));
    ALLOC(c->act.s, R * ld / TD_QK * sizeof(float));
    ALLOC(c->act2.qs, R * ld);
    ALLOC(c->act2.d, R * ld / TD_QK * sizeof(float));
    ALLOC(c->act2.s, R * ld / TD_QK * sizeof(float));
    if (m->needs[FMT_Q8K]) {
        ALLOC(c->actk.qs, R * ldk);
        ALLOC(c->actk.d, R * ldk / TD_QK_SUPER * sizeof(float));
        ALLOC(c->actk.bs, R * ldk / 16 * sizeof(int16_t));
        ALLOC(c->act2k.qs, R * ldk);
        ALLOC(c->act2k.d, R * ldk / TD_QK_SUPER * sizeof(float));
        ALLOC(c->act2k.bs, R * ldk / 16 * sizeof(int16_t));
    }
    for (int t = 0; t < 3; t++)
        if (m->needs[FMT_F32 + t]) {
            ALLOC(c->actf[t], R * ld * sizeof(float));
            ALLOC(c->act2f[t], R * ld * sizeof(float));
        }
    ALLOC(c->d_desc, (size_t)c->desc_ints * sizeof(int32_t));
    ALLOC(c->d_picks, R * sizeof(int32_t));
    ALLOC(c->d_plans, R * sizeof(td_sample_plan));
    ALLOC(c->d_targets, R * sizeof(int32_t));
    ALLOC(c->d_scores, R * sizeof(td_sample_score));
    ALLOC(c->d_summaries, R * sizeof(td_sample_summary));
#undef ALLOC
    if (e == cudaSuccess) e = cudaMallocHost((void **)&c->h_desc, (size_t)c->desc_ints * sizeof(int32_t));
    if (e != cudaSuccess) {
        int rc = cuda_fail(err, e, "allocating a context");
        td_cuda_ctx_free(c);
        return rc;
    }
    if (c->pdl && !pdl_works(c->stream)) c->pdl = false;
    *out = c;
    return TD_OK;
}

extern "C" int td_cuda_ctx_set_group(td_cuda_ctx *c, const td_cuda_group *g, td_err *err) {
    const td_cuda_model_desc *hp = &c->m->hp;
    if (c->grouped || c->vocab0) return td_err_set(err, TD_E_ARG, "this CUDA context already has a group");
    if (!g || g->size < 2 || !g->vocab0 || !g->attn0 || !g->ff0 || !g->allreduce_sum || !g->allgatherv)
        return td_err_set(err, TD_E_ARG, "a tensor-parallel group of at least two ranks, with its collectives");
    int rank = -1;
    if (g->vocab0[0] != 0 || g->vocab0[g->size] != hp->n_vocab)
        return td_err_set(err, TD_E_ARG, "the group's vocabulary rows do not cover %d tokens", hp->n_vocab);
    for (int32_t r = 0; r < g->size; r++) {
        if (g->vocab0[r + 1] < g->vocab0[r])
            return td_err_set(err, TD_E_ARG, "the group's vocabulary rows are not in rank order");
        if (g->vocab0[r] == hp->vocab0 && g->vocab0[r + 1] - g->vocab0[r] == hp->n_vocab_rows) rank = r;
    }
    if (rank < 0)
        return td_err_set(err, TD_E_ARG, "no rank of the group holds this model's vocabulary rows [%d, %d)",
                          hp->vocab0, hp->vocab0 + hp->n_vocab_rows);
    CK(cudaSetDevice(c->m->device), "selecting the device");
    size_t R = (size_t)c->max_rows, E = (size_t)hp->n_embd;
    const size_t ranks = (size_t)g->size + 1;
    c->vocab0 = (int32_t *)malloc(ranks * sizeof *c->vocab0);
    c->attn0 = (int32_t *)malloc(ranks * sizeof *c->attn0);
    c->ff0 = (int32_t *)malloc(ranks * sizeof *c->ff0);
    c->counts = (int64_t *)malloc((size_t)g->size * sizeof *c->counts);
    if (!c->vocab0 || !c->attn0 || !c->ff0 || !c->counts) return td_err_set(err, TD_E_NOMEM, "out of memory");
    memcpy(c->vocab0, g->vocab0, ranks * sizeof *c->vocab0);
    memcpy(c->attn0, g->attn0, ranks * sizeof *c->attn0);
    memcpy(c->ff0, g->ff0, ranks * sizeof *c->ff0);
    CK(cudaMalloc((void **)&c->proj, R * E * sizeof(float)), "allocating a group's partial sums");
    CK(cudaMalloc((void **)&c->local, R * (size_t)hp->n_vocab_rows * sizeof(float)), "allocating a rank's logits");
    if (!g->device_buffers) CK(cudaMallocHost((void **)&c->stage, R * E * sizeof(float)), "allocating a group's staging");
    c->group = *g;
    c->group.vocab0 = c->vocab0;
    c->group.attn0 = c->attn0;
    c->group.ff0 = c->ff0;
    c->grouped = true;
    drop_graphs(c);
    return part_buffers(c, err);
}

/* Device views of the descriptor of an n-row pass. */
static td_dpass dpass_of(const td_cuda_ctx *c, int32_t n) {
    const int32_t *b = c->d_desc;
    td_dpass p;
    p.token = b;
    p.seq = b + n;
    p.slot = b + 2 * n;
    p.base = b + 3 * n;
    p.chain_off = b + 4 * n;
    p.chain_len = b + 5 * n;
    p.out_rows = b + 6 * n;
    p.rope_cs = (const float *)(b + 7 * n);
    p.chain = b + 7 * n + n * c->m->hp.n_rot;
    return p;
}

static int32_t fill_desc(td_cuda_ctx *c, const td_cuda_pass *ps) {
    int32_t n = ps->n_rows, *h = c->h_desc;
    memcpy(h, ps->token, n * sizeof(int32_t));
    memcpy(h + n, ps->seq, n * sizeof(int32_t));
    memcpy(h + 2 * n, ps->slot, n * sizeof(int32_t));
    memcpy(h + 3 * n, ps->base, n * sizeof(int32_t));
    memcpy(h + 4 * n, ps->chain_off, n * sizeof(int32_t));
    memcpy(h + 5 * n, ps->chain_len, n * sizeof(int32_t));
    memset(h + 6 * n, 0, n * sizeof(int32_t));
    memcpy(h + 6 * n, ps->out_rows, ps->n_out * sizeof(int32_t));
    memcpy(h + 7 * n, ps->rope_cs, (size_t)n * c->m->hp.n_rot * sizeof(float));
    if (ps->chain_total) memcpy(h + 7 * n + n * c->m->hp.n_rot, ps->chain, ps->chain_total * sizeof(int32_t));
    return desc_ints(c->m, n, ps->chain_total);
}

/* The inputs prepared from one source of a pass (a layer's normed rows, the
 * attention output, SwiGLU of gate and up, the normed rows of the head), in
 * each format its matrices take, each at most once. */
struct stage {
    td_qk_src src;
    int32_t n_rows, n_in;
    td_dact legacy;    /* where the legacy formats' quantization goes */
    bool legacy_ready; /* already there (quantized earlier, or by the attention kernel) */
    td_dact q8k;
    float *const *f;   /* (3): float rows for F32, F16, BF16 */
    int32_t ldf;
    bool ready[FMT_COUNT];
};

static stage stage_of(const td_cuda_ctx *c, td_qk_src src, int32_t n_rows, int32_t n_in, bool second) {
    stage g;
    memset(&g, 0, sizeof g);
    g.src = src;
    g.n_rows = n_rows;
    g.n_in = n_in;
    g.legacy = second ? c->act2 : c->act;
    g.q8k = second ? c->act2k : c->actk;
    g.f = second ? c->act2f : c->actf;
    g.ldf = c->m->act_ld;
    return g;
}

/* Matrix w's input from stage g, preparing it if no earlier matrix did. A
 * Q4_1 or Q8_0 matrix after RMSNorm takes the float rows and normalizes
 * them itself (the fused form; with tiles of several rows it quantizes
 * them into g->legacy first, the same bits FMT_Q8 prepares there). */
static cudaError_t input_for(stage *g, const td_dw &w, const td_lc &st, td_mm_in *in) {
    const td_dact none = {NULL, NULL, NULL, 0, NULL};
    const int fmt = fmt_of_type(w.type);
    cudaError_t e = cudaSuccess;
    memset(in, 0, sizeof *in);
    if (fmt == FMT_LEGACY && g->src.kind == TD_QK_NORM) {
        const td_mm_in fused = {none, g->src.x, g->src.ldx, g->src.rows, g->src.norm_w, g->src.eps, g->legacy};
        *in = fused;
        return cudaSuccess;
    }
    const bool q8 = fmt == FMT_LEGACY || fmt == FMT_Q8; /* one quantization serves both */
    if (q8 && !g->legacy_ready) {
        if (g->src.kind == TD_QK_SWIGLU) {
            e = td_cu_swiglu_quantize(g->src.x, g->src.up, g->src.ldx, g->n_rows, g->n_in, &g->legacy, st);
        } else if (g->src.kind == TD_QK_NORM) {
            const td_mm_in norm = {none, g->src.x, g->src.ldx, g->src.rows, g->src.norm_w, g->src.eps, none};
            e = td_cu_norm_quantize(&norm, g->n_rows, g->n_in, &g->legacy, st);
        } else {
            e = td_cu_quantize(g->src.x, g->src.ldx, g->src.rows, g->n_rows, g->n_in, &g->legacy, st);
        }
        g->legacy_ready = e == cudaSuccess;
    } else if (!q8 && !g->ready[fmt]) {
        if (fmt == FMT_Q8K)
            e = td_cu_quantize_k(&g->src, g->n_rows, g->n_in, &g->q8k, st);
        else
            e = td_cu_prepare_float(&g->src, g->n_rows, g->n_in, w.type, g->f[fmt - FMT_F32], g->ldf, st);
        g->ready[fmt] = e == cudaSuccess;
    }
    if (q8) in->act = g->legacy;
    else if (fmt == FMT_Q8K) in->act = g->q8k;
    else in->x = g->f[fmt - FMT_F32], in->ldx = g->ldf;
    return e;
}

/* ---- a grouped context's collectives ----
 * Each waits for the kernels before it and hands the group's collective
 * the device buffer (device_buffers) or a pinned host copy of it. A failed collective
 * keeps its error in c->group_rc / group_err and returns GROUP_FAILED,
 * which only stops the pass: td_cuda_forward reports the group's error. */
static const cudaError_t GROUP_FAILED = cudaErrorUnknown;

static cudaError_t group_sum(td_cuda_ctx *c, float *d_buf, int64_t n) {
    const size_t bytes = (size_t)n * sizeof(float);
    if (c->group.device_buffers) {
        cudaError_t e = cudaStreamSynchronize(c->stream);
        if (e != cudaSuccess) return e;
        c->group_rc = c->group.allreduce_sum(c->group.user, d_buf, n, &c->group_err);
        return c->group_rc ? GROUP_FAILED : cudaSuccess;
    }
    cudaError_t e = cudaMemcpyAsync(c->stage, d_buf, bytes, cudaMemcpyDeviceToHost, c->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
    if (e != cudaSuccess) return e;
    if ((c->group_rc = c->group.allreduce_sum(c->group.user, c->stage, n, &c->group_err))) return GROUP_FAILED;
    return cudaMemcpyAsync(d_buf, c->stage, bytes, cudaMemcpyHostToDevice, c->stream);
}

/* c->local (n_out rows of this rank's vocabulary) gathered into c->logits
 * (n_out whole rows): the host receives every rank's block, (n_out, its
 * rows) one after another, and each block goes up into its columns. */
static cudaError_t group_logits(td_cuda_ctx *c, int32_t n_out) {
    const td_cuda_model_desc *hp = &c->m->hp;
    const int32_t size = c->group.size;
    size_t total = (size_t)n_out * (size_t)hp->n_vocab, off = 0, mine = 0;
    for (int32_t r = 0; r < size; r++) {
        c->counts[r] = (int64_t)n_out * (c->vocab0[r + 1] - c->vocab0[r]);
        if (c->vocab0[r] < hp->vocab0) off += (size_t)c->counts[r];
        if (c->vocab0[r] == hp->vocab0) mine = (size_t)c->counts[r];
    }
    const bool on_device = c->group.device_buffers;
    if (total > c->gather_len) { /* the blocks land here: host memory, or the device's */
        if (on_device) cudaFree(c->gather);
        else cudaFreeHost(c->gather);
        c->gather = NULL;
        c->gather_len = 0;
        cudaError_t e = on_device ? cudaMalloc((void **)&c->gather, total * sizeof(float))
                                  : cudaMallocHost((void **)&c->gather, total * sizeof(float));
        if (e != cudaSuccess) return e;
        c->gather_len = total;
    }
    cudaError_t e = cudaMemcpyAsync(c->gather + off, c->local, mine * sizeof(float),
                                    on_device ? cudaMemcpyDeviceToDevice : cudaMemcpyDeviceToHost, c->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
    if (e != cudaSuccess) return e;
    c->group_rc = c->group.allgatherv(c->group.user, c->gather + off, (int64_t)mine, c->gather, c->counts, &c->group_err);
    if (c->group_rc) return GROUP_FAILED;
    const float *src = c->gather;
    for (int32_t r = 0; r < size && e == cudaSuccess; r++) {
        const size_t w = (size_t)(c->vocab0[r + 1] - c->vocab0[r]);
        if (w > 0)
            e = cudaMemcpy2DAsync(c->logits + c->vocab0[r], (size_t)hp->n_vocab * sizeof(float), src, w * sizeof(float),
                                  w * sizeof(float), (size_t)n_out,
                                  on_device ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice, c->stream);
        src += w * (size_t)n_out;
    }
    /* (the gather buffer is next written by the next pass, after this one's
     * closing synchronize in td_cuda_forward) */
    return e;
}

/* The partials of this rank's chunks, [first, first + n_local) of the
 * whole model's, gathered from every rank into c->part (the chunks lie in
 * order, so every rank's lie together: one gather in place). */
static cudaError_t group_parts(td_cuda_ctx *c, const int32_t *lo, int32_t first, int32_t n_local, size_t slab) {
    const int32_t size = c->group.size;
    for (int32_t r = 0; r < size; r++) c->counts[r] = (int64_t)(lo[r + 1] - lo[r]) * (int64_t)slab;
    const size_t off = (size_t)first * slab, mine = (size_t)n_local * slab, total = (size_t)lo[size] * slab;
    if (c->group.device_buffers) { /* in place, on the device */
        cudaError_t e = cudaStreamSynchronize(c->stream);
        if (e != cudaSuccess) return e;
        c->group_rc = c->group.allgatherv(c->group.user, c->part + off, (int64_t)mine, c->part, c->counts,
                                          &c->group_err);
        return c->group_rc ? GROUP_FAILED : cudaSuccess;
    }
    cudaError_t e = cudaMemcpyAsync(c->pstage + off, c->part + off, mine * sizeof(float), cudaMemcpyDeviceToHost,
                                    c->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
    if (e != cudaSuccess) return e;
    c->group_rc = c->group.allgatherv(c->group.user, c->pstage + off, (int64_t)mine, c->pstage, c->counts,
                                      &c->group_err);
    if (c->group_rc) return GROUP_FAILED;
    return cudaMemcpyAsync(c->part, c->pstage, total * sizeof(float), cudaMemcpyHostToDevice, c->stream);
}

/* The input of chunk k's product: in, off inputs further along each row. */
static td_mm_in chunk_input(const td_mm_in *in, uint32_t type, int64_t off) {
    td_mm_in ck = *in;
    if (ck.x) { /* float rows */
        ck.x += off;
    } else if (fmt_of_type(type) == FMT_Q8K) { /* a d per 256 codes, a sum per 16 */
        ck.act.qs += off;
        ck.act.d += off / TD_QK_SUPER;
        ck.act.bs += off / 16;
    } else { /* a d (and s) per 32 codes */
        ck.act.qs += off;
        ck.act.d += off / TD_QK;
        if (ck.act.s) ck.act.s += off / TD_QK;
    }
    return ck;
}

/* c->x += the product of a projection in the invariant order: each of this
 * rank's chunks into its slab of c->part, every rank's gathered, then
 * summed in chunk order. lo: every rank's first chunk (a group's). */
static cudaError_t chunked_projection(td_cuda_ctx *c, const td_dw *chunks, int32_t first, int32_t n_local,
                                      int32_t n_all, const int32_t *lo, int32_t chunk_in, const td_mm_in *in,
                                      int32_t n, const td_lc &st) {
    const int32_t E = c->m->hp.n_embd;
    const size_t slab = (size_t)n * (size_t)E;
    const td_dact none = {NULL, NULL, NULL, 0, NULL};
    cudaError_t e = cudaSuccess;
    for (int32_t k = 0; k < n_local && e == cudaSuccess; k++) {
        const td_mm_in ck = chunk_input(in, chunks[k].type, (int64_t)k * chunk_in);
        td_mm mm = {{chunks[k]}, {c->part + (size_t)(first + k) * slab}, {E}, 1, TD_EPI_STORE, none, {}};
        e = td_cu_matmul(&mm, &ck, n, st);
    }
    if (e == cudaSuccess && c->grouped) e = group_parts(c, lo, first, n_local, slab);
    if (e == cudaSuccess) e = td_cu_chunk_sum(c->x, c->part, n_all, (int64_t)slab, st);
    return e;
}

/* The launches of one pass. Returns the first launch error. */
static cudaError_t run_pass(td_cuda_ctx *c, const td_cuda_kv *kv, int32_t n, int32_t n_out, const uint8_t *skip) {
    const td_cuda_model *m = c->m;
    const td_cuda_model_desc *hp = &m->hp;
    /* the first kernel waits for everything before the pass (the descriptor's
     * copy, the last pass); each later one may overlap its predecessor */
    const td_lc first = {c->stream, false, c->tile, c->tile_swiglu, c->fast, c->ksplit};
    const td_lc st = {c->stream, c->pdl, c->tile, c->tile_swiglu, c->fast, c->ksplit};
    int32_t E = hp->n_embd, qd = hp->n_head * hp->head_dim, kvd = hp->n_head_kv * hp->head_dim;
    td_dpass p = dpass_of(c, n);
    td_dkv dkv = {kv->d_tab, kv->max_len, kv->kv_dim, 0};
    const td_dact none = {NULL, NULL, NULL, 0, NULL};
    prof_mark(c, P_EMBED);
    cudaError_t e = td_cu_embed(&m->tok_embd, &p, n, hp->vocab0, c->x, first);
    prof_mark(c, P_EMBED);
    td_mm_in in;
#define RUN(call) \
    if (e == cudaSuccess) e = (call)
    /* the group's sums: the embedding rows, then wo's and w_down's partials
     * (into proj, summed, added) where an unsplit pass adds in the matmul */
    if (c->grouped) RUN(group_sum(c, c->x, (int64_t)n * E));
    float *const sum_into = c->grouped ? c->proj : c->x;
    const td_epi sum_epi = c->grouped ? TD_EPI_STORE : TD_EPI_ADD;
    for (int32_t l = 0; l < hp->n_layer && e == cudaSuccess; l++) {
        if (skip && skip[l]) continue;
        const td_cuda_dlayer *ly = &m->layers[l];
        dkv.layer = l;
        stage normed = stage_of(c, {TD_QK_NORM, c->x, NULL, E, NULL, ly->attn_norm, hp->rms_eps}, n, E, false);
        const bool same = ly->wq.type == ly->wk.type && ly->wk.type == ly->wv.type;
        if (same && fmt_of_type(ly->wq.type) == FMT_LEGACY && !hp->rope_neox) {
            /* norm, q/k/v, biases, RoPE and the cache store in one kernel */
            td_qkv_epi qe = {p.seq, p.slot, p.rope_cs, ly->bq, ly->bk, ly->bv, kv->d_tab, kv->max_len, kv->kv_dim, l,
                             hp->head_dim, hp->n_rot};
            td_mm mm = {{ly->wq, ly->wk, ly->wv}, {c->q, NULL, NULL}, {qd, 0, 0}, 3, TD_EPI_QKV, none, qe};
            RUN(input_for(&normed, ly->wq, st, &in));
            RUN(td_cu_matmul(&mm, &in, n, st));
            prof_mark(c, P_QKV);
        } else {
            const td_dw *ws[3] = {&ly->wq, &ly->wk, &ly->wv};
            float *ys[3] = {c->q, c->k, c->v};
            int32_t lds[3] = {qd, kvd, kvd};
            if (same) {
                td_mm mm = {{ly->wq, ly->wk, ly->wv}, {c->q, c->k, c->v}, {qd, kvd, kvd}, 3, TD_EPI_STORE, none, {}};
                RUN(input_for(&normed, ly->wq, st, &in));
                RUN(td_cu_matmul(&mm, &in, n, st));
            } else {
                for (int i = 0; i < 3; i++) {
                    td_mm mm = {{*ws[i]}, {ys[i]}, {lds[i]}, 1, TD_EPI_STORE, none, {}};
                    RUN(input_for(&normed, *ws[i], st, &in));
                    RUN(td_cu_matmul(&mm, &in, n, st));
                }
            }
            prof_mark(c, P_QKV);
            td_rope_args ra = {c->q, c->k, c->v, ly->bq, ly->bk, ly->bv, hp->n_head, hp->n_head_kv, hp->head_dim,
                               hp->n_rot, hp->rope_neox};
            RUN(td_cu_rope_store(&ra, &p, &dkv, n, st));
            prof_mark(c, P_ROPE);
        }
        /* a head of whole quantization blocks quantizes its own output for a
         * legacy-format wo (Q8_K would need 256 values first) */
        const int wo_fmt = fmt_of_type(ly->wo.type);
        const bool fused = hp->head_dim % TD_QK == 0 && (wo_fmt == FMT_LEGACY || wo_fmt == FMT_Q8);
        td_attn_args aa = {c->q, c->att, hp->n_head, hp->n_head_kv, hp->head_dim, 1.0f / sqrtf((float)hp->head_dim),
                           fused ? c->act : none};
        RUN(td_cu_attention(&aa, &p, &dkv, n, st));
        stage attended = stage_of(c, {TD_QK_PLAIN, c->att, NULL, qd, NULL, NULL, 0.0f}, n, qd, false);
        attended.legacy_ready = fused;
        RUN(input_for(&attended, ly->wo, st, &in));
        prof_mark(c, P_ATTN);
        const td_cuda_chunks_desc *ch = &m->chunks;
        td_mm mo = {{ly->wo}, {sum_into}, {E}, 1, sum_epi, none, {}};
        if (c->invariant) {
            RUN(chunked_projection(c, m->wo_chunks + (size_t)l * ch->n_attn, ch->attn0, ch->n_attn, ch->n_attn_all,
                                   c->attn0, ch->attn_chunk, &in, n, st));
        } else {
            RUN(td_cu_matmul(&mo, &in, n, st));
        }
        if (c->grouped && !c->invariant) {
            RUN(group_sum(c, c->proj, (int64_t)n * E));
            RUN(td_cu_add(c->x, c->proj, (int64_t)n * E, st));
        }
        prof_mark(c, P_WO);
        stage ffn = stage_of(c, {TD_QK_NORM, c->x, NULL, E, NULL, ly->ffn_norm, hp->rms_eps}, n, E, false);
        const bool fused_swiglu = fmt_of_type(ly->w_gate.type) == FMT_LEGACY && ly->w_gate.type == ly->w_up.type &&
                                  fmt_of_type(ly->w_down.type) == FMT_LEGACY && td_cu_ksplit(st, ly->w_gate.n_in) == 1;
        if (fused_swiglu) {
            td_mm mg = {{ly->w_gate, ly->w_up}, {NULL}, {0}, 2, TD_EPI_SWIGLU, c->act2, {}};
            RUN(input_for(&ffn, ly->w_gate, st, &in));
            RUN(td_cu_matmul(&mg, &in, n, st));
            const td_mm_in quantized = {c->act2, NULL, 0, NULL, NULL, 0, none};
            in = quantized;
        } else {
            /* gate and up into float rows, then silu * up prepared for the
             * down projection: for K-quant or float matrices on either side,
             * and in FAST where the input is split */
            float *gate = c->ff, *up = c->ff + (size_t)c->max_rows * hp->n_ff;
            if (ly->w_gate.type == ly->w_up.type) {
                td_mm mg = {{ly->w_gate, ly->w_up}, {gate, up}, {hp->n_ff, hp->n_ff}, 2, TD_EPI_STORE, none, {}};
                RUN(input_for(&ffn, ly->w_gate, st, &in));
                RUN(td_cu_matmul(&mg, &in, n, st));
            } else {
                const td_dw *ws[2] = {&ly->w_gate, &ly->w_up};
                float *ys[2] = {gate, up};
                for (int i = 0; i < 2; i++) {
                    td_mm mm = {{*ws[i]}, {ys[i]}, {hp->n_ff}, 1, TD_EPI_STORE, none, {}};
                    RUN(input_for(&ffn, *ws[i], st, &in));
                    RUN(td_cu_matmul(&mm, &in, n, st));
                }
            }
            stage gated = stage_of(c, {TD_QK_SWIGLU, gate, up, hp->n_ff, NULL, NULL, 0.0f}, n, hp->n_ff, true);
            RUN(input_for(&gated, ly->w_down, st, &in));
        }
        prof_mark(c, P_GATEUP);
        td_mm md = {{ly->w_down}, {sum_into}, {E}, 1, sum_epi, none, {}};
        if (c->invariant) {
            RUN(chunked_projection(c, m->down_chunks + (size_t)l * ch->n_ff, ch->ff0, ch->n_ff, ch->n_ff_all, c->ff0,
                                   ch->ff_chunk, &in, n, st));
        } else {
            RUN(td_cu_matmul(&md, &in, n, st));
        }
        if (c->grouped && !c->invariant) {
            RUN(group_sum(c, c->proj, (int64_t)n * E));
            RUN(td_cu_add(c->x, c->proj, (int64_t)n * E, st));
        }
        prof_mark(c, P_DOWN);
    }
    if (n_out > 0) {
        stage last = stage_of(c, {TD_QK_NORM, c->x, NULL, E, p.out_rows, m->output_norm, hp->rms_eps}, n_out, E, false);
        td_mm mh = {{m->output}, {c->grouped ? c->local : c->logits}, {hp->n_vocab_rows}, 1, TD_EPI_STORE, none, {}};
        RUN(input_for(&last, m->output, st, &in));
        RUN(td_cu_matmul(&mh, &in, n_out, st));
        if (c->grouped) RUN(group_logits(c, n_out));
        prof_mark(c, P_HEAD);
    }
#undef RUN
    return e;
}

static int launch_graph(td_cuda_ctx *c, const td_cuda_kv *kv, int32_t n, int32_t n_out, td_err *err) {
    if (c->graph_tab != kv->d_tab || c->graph_max_len != kv->max_len || c->graph_kv_dim != kv->kv_dim) {
        drop_graphs(c);
        graphs_for(c, kv);
    }
    for (int i = 0; i < c->n_graphs; i++)
        if (c->graphs[i].n_rows == n && c->graphs[i].n_out == n_out) {
            CK(cudaGraphLaunch(c->graphs[i].exec, c->stream), "replaying a pass");
            return TD_OK;
        }
    if (c->n_graphs == GRAPH_SLOTS) { /* many shapes (prefill chunks): start over */
        drop_graphs(c);
        graphs_for(c, kv);
    }
    cudaGraph_t g = NULL;
    cudaGraphExec_t exec = NULL;
    CK(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal), "capturing a pass");
    cudaError_t e = run_pass(c, kv, n, n_out, NULL);
    cudaError_t e2 = cudaStreamEndCapture(c->stream, &g);
    if (e == cudaSuccess) e = e2;
    if (e == cudaSuccess) e = cudaGraphInstantiate(&exec, g, 0);
    if (g) cudaGraphDestroy(g);
    if (e != cudaSuccess) return cuda_fail(err, e, "capturing a pass");
    c->graphs[c->n_graphs++] = (graph_slot){n, n_out, exec};
    CK(cudaGraphLaunch(exec, c->stream), "replaying a pass");
    return TD_OK;
}

extern "C" int td_cuda_logits_row(td_cuda_ctx *c, int32_t j, float *out, td_err *err) {
    const int32_t V = c->m->hp.n_vocab;
    if (j < 0 || j >= c->n_out_last || !out)
        return td_err_set(err, TD_E_ARG, "logits row %d: the last pass left %d", j, c->n_out_last);
    CK(cudaSetDevice(c->m->device), "selecting the device");
    CK(cudaMemcpy(out, c->logits + (size_t)j * V, (size_t)V * sizeof(float), cudaMemcpyDeviceToHost),
       "copying a row of logits");
    return TD_OK;
}

extern "C" int td_cuda_forward(td_cuda_ctx *c, td_cuda_kv *kv, const td_cuda_pass *ps, float *logits, td_err *err) {
    const td_cuda_model_desc *hp = &c->m->hp;
    int32_t n = ps->n_rows;
    c->n_out_last = 0; /* until this pass has left its logits */
    if (n < 1 || n > c->max_rows || ps->n_out < 0 || ps->n_out > n || ps->chain_total < 0 ||
        ps->chain_total > c->chain_cap)
        return td_err_set(err, TD_E_ARG, "CUDA pass of %d rows (context holds %d)", n, c->max_rows);
    if (!ps->plans != !ps->summaries) return td_err_set(err, TD_E_ARG, "CUDA pass: plans and summaries go together");
    if (ps->targets && !ps->scores) return td_err_set(err, TD_E_ARG, "CUDA pass: targets without scores");
    if (ps->scores && (ps->n_alt < 0 || ps->n_alt > TD_SAMPLE_ALT_MAX))
        return td_err_set(err, TD_E_ARG, "CUDA pass: %d alternatives (0..%d)", ps->n_alt, TD_SAMPLE_ALT_MAX);
    if (ps->n_out > 0 && !logits && !ps->picks && !ps->summaries && !ps->scores)
        return td_err_set(err, TD_E_ARG, "CUDA pass: nowhere to put its logits");
    if (kv->device != c->m->device || kv->kv_dim != hp->n_head_kv * hp->head_dim || kv->n_layer != hp->n_layer)
        return td_err_set(err, TD_E_ARG, "the KV cache belongs to another model or device");
    CK(cudaSetDevice(c->m->device), "selecting the device");
    size_t smem = td_cu_attention_smem(kv->max_len, hp->head_dim);
    if (smem > c->attn_smem_ready) {
        int optin = 0;
        CK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, c->m->device), "reading limits");
        if (smem > (size_t)optin)
            return td_err_set(err, TD_E_UNSUPPORTED, "a context of %d positions needs %zu bytes of shared memory per "
                              "attention block; this device gives %d", kv->max_len, smem, optin);
        CK(td_cu_attention_prepare(smem), "preparing attention");
        c->attn_smem_ready = smem;
    }
    for (int32_t r = 0; r < n; r++) {
        int rc = kv_ensure(kv, ps->seq[r], err);
        if (rc) return rc;
    }
    int32_t ints = fill_desc(c, ps);
    CK(cudaMemcpyAsync(c->d_desc, c->h_desc, (size_t)ints * sizeof(int32_t), cudaMemcpyHostToDevice, c->stream),
       "copying the pass");
    if (c->graphs_on && !ps->skip && !c->grouped) {
        int rc = launch_graph(c, kv, n, ps->n_out, err);
        if (rc) return rc;
    } else {
        c->group_rc = TD_OK;
        cudaError_t e = run_pass(c, kv, n, ps->n_out, ps->skip);
        if (c->group_rc) return td_err_set(err, c->group_rc, "tensor-parallel group: %s", c->group_err.msg);
        CK(e, "launching a pass");
    }
    if (ps->n_out > 0 && ps->picks) {
        const td_lc plain = {c->stream, false, 0, 0, false, 0};
        CK(td_cu_argmax(c->logits, ps->n_out, hp->n_vocab, c->d_picks, plain), "picking tokens");
        CK(cudaMemcpyAsync(ps->picks, c->d_picks, (size_t)ps->n_out * sizeof(int32_t), cudaMemcpyDeviceToHost,
                           c->stream),
           "copying picks");
    }
    if (ps->n_out > 0 && ps->summaries) {
        const td_lc plain = {c->stream, false, 0, 0, false, 0};
        CK(cudaMemcpyAsync(c->d_plans, ps->plans, (size_t)ps->n_out * sizeof(td_sample_plan), cudaMemcpyHostToDevice,
                           c->stream),
           "copying sampling plans");
        CK(td_cu_summarize(c->logits, ps->n_out, hp->n_vocab, c->d_plans, c->d_summaries, plain), "sampling");
        CK(cudaMemcpyAsync(ps->summaries, c->d_summaries, (size_t)ps->n_out * sizeof(td_sample_summary),
                           cudaMemcpyDeviceToHost, c->stream),
           "copying samples");
    }
    if (ps->n_out > 0 && ps->scores) {
        const td_lc plain = {c->stream, false, 0, 0, false, 0};
        if (ps->targets)
            CK(cudaMemcpyAsync(c->d_targets, ps->targets, (size_t)ps->n_out * sizeof(int32_t),
                               cudaMemcpyHostToDevice, c->stream),
               "copying targets");
        CK(td_cu_score(c->logits, ps->n_out, hp->n_vocab, ps->targets ? c->d_targets : NULL, ps->n_alt, c->d_scores,
                       plain),
           "scoring");
        CK(cudaMemcpyAsync(ps->scores, c->d_scores, (size_t)ps->n_out * sizeof(td_sample_score),
                           cudaMemcpyDeviceToHost, c->stream),
           "copying scores");
    }
    if (ps->n_out > 0 && logits)
        CK(cudaMemcpyAsync(logits, c->logits, (size_t)ps->n_out * hp->n_vocab * sizeof(float), cudaMemcpyDeviceToHost,
                           c->stream),
           "copying logits");
    CK(cudaStreamSynchronize(c->stream), "running a pass");
    c->n_out_last = ps->n_out;
    if (c->profile && n == 1) prof_collect(c); /* one-row (decode) passes only */
    c->n_ev = 0;
    return TD_OK;
}
