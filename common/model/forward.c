/* forward.c — the batched forward pass of a llama-family model.
 *
 * Per layer: RMSNorm → q,k,v projections → RoPE → K/V appended to the cache →
 * causal attention over the row's own sequence → output projection →
 * residual → RMSNorm → SwiGLU MLP → residual. Matmuls read each weight row
 * once for all rows of the batch; threads split output rows (matmuls) or
 * (sequence, KV head, row, head) items (attention, handed to the kernel in
 * batches that share a KV head). An unsplit model's pass goes to the pool
 * as one job of phases (forward_phased); split models and the tp-invariant
 * order take one job per step (forward_pass), and both compute the same
 * bits. Nothing here allocates except KV pages and scratch grown to a
 * longer context than seen before.
 *
 * Tensor parallelism: a rank owns a slice of KV heads, FFN rows and
 * vocabulary rows (td_shard) and every dimension below is its own part's;
 * the residual stream stays whole and identical on every rank. The outputs
 * of wo and w_down are then partial sums that an all-reduce adds up before
 * the residual add (MM_THEN_ADD runs after it instead of inside the matmul
 * job); in TD_NUMERICS_TP_INVARIANT they are per-chunk partials gathered
 * from every rank and summed left to right (split_projection). The
 * embedding row of a token comes from the rank holding it, the logits are
 * gathered from all.
 */
#include <assert.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"
#include "sample/sample.h"

/* The rows of one sequence in a pass: their indices in td_ctx.order. */
typedef struct td_attn_group {
    int32_t seq, first, n_rows;
} td_attn_group;

/* check_rows' bookkeeping for one sequence of the pass. It lives in the
 * context, not in td_kv: a pass writes only its own context, so passes of
 * different contexts on different caches may run at once. */
typedef struct td_pass_seq {
    int32_t seq, next; /* next cache slot of seq in this pass */
    int8_t mode;       /* 1 linear, 2 tree rows */
} td_pass_seq;

/* The phases of forward_phased, in the order of a pass. */
enum pass_phase {
    PH_EMBED,      /* rows: embedding row into x */
    PH_ATTN_NORM,  /* rows: rmsnorm into xn, quantized for wq into xq */
    PH_QKV,        /* matmul units of wq, wk, wv */
    PH_QKV_FINISH, /* rows: biases, RoPE, k and v into the cache */
    PH_ATTN,       /* attention items, the output into xn */
    PH_ATTN_QUANT, /* rows: xn quantized for wo */
    PH_WO,         /* matmul units of wo, added to x */
    PH_FFN_NORM,   /* rows: rmsnorm into xn, quantized for w_gate */
    PH_GATE_UP,    /* matmul units of w_gate and w_up, then SwiGLU */
    PH_FFN_QUANT,  /* rows: the SwiGLU output quantized for w_down */
    PH_DOWN,       /* matmul units of w_down, added to x */
    PH_OUT_NORM,   /* output rows: rmsnorm, quantized for the head */
    PH_HEAD,       /* matmul units of the output head into the logits */
};
/* phases of one layer in forward_phased */
#define PHASES_PER_LAYER 10
/* A matmul phase's chunk (columns per claim) is planned by playing the
 * claims out (td_claim_plan) with each claim charged as many weight bytes as
 * this: on 2 threads an extra claim per matmul phase cost ~0.55 us, about
 * 16 KiB of weights streamed at ~30 GB/s (docs/benchmarks.md). On few
 * threads the plan is one slice of columns per thread, which measured 6-12 %
 * faster than 4 per thread; on many it evens out narrow matrices (576
 * columns on 16 threads: 12 claims of 48, not 9 of 64). */
#define PHASE_CLAIM_BYTES 16384.0

struct td_ctx {
    const td_model *m;
    td_numerics numerics;
    bool tiled;     /* went through td_model_tile, which made the copies */
    bool tiles_asked; /* ... on its first FAST pass: only then, so that a
                       * context kept in the reference order never costs
                       * the model a copy */
    td_pool *pool;
    int32_t max_rows;
    float *x;       /* (max_rows, n_embd) residual stream */
    float *xn;      /* (max_rows, max(n_embd, q_dim)) normed input / attention output */
    float *q;       /* (max_rows, q_dim) */
    float *k, *v;   /* (max_rows, kv_dim) */
    float *proj;    /* (max_rows, n_embd) wo / w_down output */
    float *gate, *up; /* (max_rows, n_ff) */
    float *rope_cs; /* (max_rows, n_rot/2, 2) cos/sin per row */
    void *xq;       /* (max_rows, largest quantized activation row) */
    int32_t *slot;  /* (max_rows) cache slot each row writes */
    int32_t *base;  /* (max_rows) cache prefix each row attends to in full */
    int32_t *chain; /* (n_threads, TD_ATTN_MAX_QUERIES, max_rows) ancestor slots of tree rows */
    td_op_kernels ops; /* fp16 cache kernels for this CPU */
    float *scores;  /* (n_threads, TD_ATTN_MAX_QUERIES, scores_len) attention scratch */
    int32_t scores_len;
    /* Attention items go KV head by KV head within each sequence, so that
     * the queries reading one KV head (its GQA group, and every row of the
     * sequence) share one pass over the cache (td_attn_batch). */
    td_attn_group *groups; /* (max_rows) one per sequence of the pass */
    int32_t n_groups;
    int32_t *order;   /* (max_rows) row indices grouped by sequence */
    float *tile;      /* (n_threads, TD_ATTN_TILE * head_dim) */
    float *lanes;     /* (n_threads, TD_ATTN_MAX_QUERIES, TD_ATTN_LANE_SETS * head_dim) td_attn_query.lanes */
    td_pass_seq *pass_seqs; /* (max_rows) the sequences of the pass being checked */
    /* CUDA contexts: the device half, and the host side of a pass */
    td_device device;
    td_cuda_ctx *gpu;
    int32_t *tokens, *seqs, *chain_off, *chain_len, *out_rows; /* (max_rows) */
    td_sample_summary *summaries; /* (max_rows) what a CUDA pass's sampler sends back */
    int32_t device_rows; /* rows of logits the last pass left on the device (td_model_pass_logits) */
    int32_t *chains; /* (max_rows * (max_rows + 1) / 2) tree rows' chains */
    /* tensor parallelism and the invariant order; both buffers grow to the
     * largest pass seen, like scores */
    td_comm *comm;     /* borrowed; NULL for an unsplit model */
    float *part;       /* (chunks of the model, part_rows, n_embd) chunk partials */
    int32_t part_rows;
    float *gather;     /* (gather_len) logits of every rank, rank by rank */
    size_t gather_len;
    int64_t *counts;   /* (comm size) all-gather counts */
    td_tp_stats stats;
    td_lead *lead;     /* a group leader's context: passes are broadcast first */
    /* the pass as one job of phases (forward_phased) */
    td_schedule schedule;
    bool groups_share_input; /* groups_share_input(m) */
    td_phase *phases;  /* (n_layer * PHASES_PER_LAYER + 3) */
    int32_t *out_idx;  /* (max_rows) the rows that want logits */
    /* the matmul phases' chunks, planned for the pool's threads and for
     * whether the pass reads tiled copies (their alignment is finer) */
    bool planned, planned_tiled;
    int64_t phase_chunk[PH_HEAD + 1]; /* by phase kind; matmul kinds only */
    td_ctx_plan plan;
    /* td_ctx_set_pass_profile: per-pass counts (threads, phases, wait|work)
     * and their sums by step; NULL while off */
    int64_t *phase_ns;
    td_pass_profile profile;
};

/* ---- parallel jobs ---- */

typedef struct mm_task {
    const td_weight *w;
    const void *xq;
    float *y;
    int64_t y_stride;
} mm_task;

/* Elementwise work that follows a matmul group, done by each thread on the
 * output columns it computed, so that no thread idles while one thread does
 * it alone. Same operations as done serially, so the same results. */
typedef enum mm_then {
    MM_THEN_NOTHING,
    MM_THEN_ADD,      /* add_to[r][o] += y0[r][o]: the residual */
    MM_THEN_SILU_MUL, /* y0[r][o] = silu(y0[r][o]) * y1[r][o]: SwiGLU */
} mm_then;

/* Threads take output columns in chunks from a shared counter rather than
 * fixed halves: on a shared machine one core is often slower for a while,
 * and a static split would leave the other waiting. Which thread computes a
 * column never changes its value (td_quant_matmul is independent of the
 * output range). */
#define MM_CHUNKS_PER_THREAD 4
#define MM_CHUNK_ALIGN 32 /* the kernels' block of weight rows */

typedef struct mm_job {
    mm_task t[3];
    int n_tasks;
    int64_t n_rows;
    int64_t chunk;        /* columns per unit of work */
    _Atomic int64_t next; /* next unit to take */
    mm_then then;
    int64_t then_n;     /* columns of the rows below (row stride too) */
    float *then_y[2];   /* the group's first (and second) output */
    float *add_to;
    td_silu_mul_fn silu_mul;
    td_numerics numerics;
    bool tiled; /* FAST on the weights' tiled copies where they have them */
} mm_job;

/* The modes whose matmuls run FAST's kernels (TP_INVARIANT differs only
 * in how the model adds chunks up). */
static bool fast_kernels(td_numerics order) {
    return order == TD_NUMERICS_FAST || order == TD_NUMERICS_TP_INVARIANT;
}

/* Whether a context's matmuls read the tiled copies: FAST's order (the
 * tiled kernels compute no other) on a model that has them. */
static bool use_tiles(const td_ctx *c) { return c->tiled && fast_kernels(c->numerics); }

static void mm_then_run(const mm_job *job, int64_t lo, int64_t hi) {
    for (int64_t r = 0; r < job->n_rows; r++) {
        float *y0 = job->then_y[0] + r * job->then_n + lo;
        if (job->then == MM_THEN_ADD) {
            float *x = job->add_to + r * job->then_n + lo;
            for (int64_t o = 0; o < hi - lo; o++) x[o] += y0[o];
        } else if (job->then == MM_THEN_SILU_MUL) {
            job->silu_mul(y0, job->then_y[1] + r * job->then_n + lo, hi - lo);
        }
    }
}

static void mm_task_run(const mm_job *job, const mm_task *t, int64_t lo, int64_t hi) {
    if (hi > t->w->n_out) hi = t->w->n_out;
    if (lo >= hi) return;
    if (job->tiled && t->w->tiled && lo % TD_QUANT_TILE_COLS == 0) {
        const td_weight *w = t->w;
        const size_t xs = td_quant_row_bytes(td_quant_traits(w->type)->vec_dot_type, w->n_in);
        const int64_t nb = w->n_in / td_quant_traits(w->type)->block_elems;
        td_quant_matmul_tiled(w->type, w->tiled, w->n_in, w->n_out, 0, nb, lo, hi, t->xq, xs, job->n_rows, t->y,
                              t->y_stride);
        return;
    }
    td_quant_matmul_in(job->numerics, t->w->type, t->w->data, t->w->n_in, lo, hi, t->xq, job->n_rows, t->y,
                           t->y_stride);
}

static int64_t units_of(const mm_job *job, int64_t n_out) { return (n_out + job->chunk - 1) / job->chunk; }

/* A unit is a chunk of one task's columns; with a `then` step (whose tasks
 * all have then_n columns) a chunk of columns of every task, followed by
 * the step on those columns. False past the last unit. */
static bool mm_unit(const mm_job *job, int64_t u) {
    if (job->then != MM_THEN_NOTHING) {
        if (u >= units_of(job, job->then_n)) return false;
        int64_t lo = u * job->chunk, hi = lo + job->chunk < job->then_n ? lo + job->chunk : job->then_n;
        for (int i = 0; i < job->n_tasks; i++) mm_task_run(job, &job->t[i], lo, hi);
        mm_then_run(job, lo, hi);
        return true;
    }
    int i = 0;
    while (i < job->n_tasks && u >= units_of(job, job->t[i].w->n_out)) u -= units_of(job, job->t[i++].w->n_out);
    if (i == job->n_tasks) return false;
    mm_task_run(job, &job->t[i], u * job->chunk, (u + 1) * job->chunk);
    return true;
}

/* Units of a job (its chunk set). */
static int64_t mm_units(const mm_job *job) {
    if (job->then != MM_THEN_NOTHING) return units_of(job, job->then_n);
    int64_t n = 0;
    for (int i = 0; i < job->n_tasks; i++) n += units_of(job, job->t[i].w->n_out);
    return n;
}

static void mm_worker(void *arg, int ith, int nth) {
    mm_job *job = arg;
    (void)ith, (void)nth;
    while (mm_unit(job, atomic_fetch_add_explicit(&job->next, 1, memory_order_relaxed))) {
    }
}

/* Sizes the chunks for the largest task: per_thread claims each when all
 * nth threads take part. */
static void mm_job_chunk(mm_job *job, int nth, int per_thread) {
    int64_t widest = 0;
    for (int i = 0; i < job->n_tasks; i++)
        if (job->t[i].w->n_out > widest) widest = job->t[i].w->n_out;
    job->chunk = td_claim_chunk(widest, nth, per_thread, MM_CHUNK_ALIGN);
}

/* Sizes the chunks for the largest task and starts the counter over. */
static void mm_job_ready(mm_job *job, int nth) {
    mm_job_chunk(job, nth, MM_CHUNKS_PER_THREAD);
    atomic_store_explicit(&job->next, 0, memory_order_relaxed);
}

typedef struct quant_job {
    uint32_t wtype;
    const float *x;
    int64_t n_in, n_rows, chunk;
    void *dst;
    _Atomic int64_t next; /* next row to take */
} quant_job;

static void quant_worker(void *arg, int ith, int nth) {
    quant_job *j = arg;
    (void)ith, (void)nth;
    size_t row_bytes = td_quant_row_bytes(td_quant_traits(j->wtype)->vec_dot_type, j->n_in);
    int64_t lo, hi;
    while (td_claim(&j->next, j->n_rows, j->chunk, &lo, &hi))
        td_quant_activations(j->wtype, j->x + lo * j->n_in, j->n_in, hi - lo, (char *)j->dst + (size_t)lo * row_bytes);
}

/* Quantizes rows of x for weights of type wtype into c->xq. */
static void quantize_rows(td_ctx *c, uint32_t wtype, const float *x, int64_t n_in, int64_t n_rows) {
    quant_job j = {.wtype = wtype, .x = x, .n_in = n_in, .n_rows = n_rows, .dst = c->xq,
                   .chunk = td_claim_chunk(n_rows, td_pool_size(c->pool), 4, 1)};
    atomic_init(&j.next, 0);
    if (n_rows == 1)
        quant_worker(&j, 0, 1);
    else
        td_pool_run(c->pool, quant_worker, &j);
}

/* Runs up to three matmuls that share the same input rows, then `then`
 * over y[0] (and y[1]); add_to is MM_THEN_ADD's destination. */
static void matmuls(td_ctx *c, const float *x, int64_t n_rows, int n, const td_weight *const *w,
                    float *const *y, mm_then then, float *add_to) {
    mm_job job = {.n_tasks = 0, .n_rows = n_rows, .silu_mul = c->ops.silu_mul, .numerics = c->numerics,
                  .tiled = use_tiles(c)};
    /* Weights of one group normally share a type; if not, quantize per type. */
    for (int i = 0; i < n;) {
        uint32_t vt = td_quant_traits(w[i]->type)->vec_dot_type;
        quantize_rows(c, w[i]->type, x, w[i]->n_in, n_rows);
        job.n_tasks = 0;
        int j = i;
        while (j < n && td_quant_traits(w[j]->type)->vec_dot_type == vt) {
            job.t[job.n_tasks++] = (mm_task){w[j], c->xq, y[j], w[j]->n_out};
            j++;
        }
        if (j == n) { /* the last run: every output column is complete after it */
            job.then = then;
            job.then_n = w[0]->n_out;
            job.then_y[0] = y[0];
            job.then_y[1] = then == MM_THEN_SILU_MUL ? y[1] : NULL;
            job.add_to = add_to;
            for (int t = 0; t < job.n_tasks; t++) assert(then == MM_THEN_NOTHING || job.t[t].w->n_out == job.then_n);
        }
        mm_job_ready(&job, td_pool_size(c->pool));
        td_pool_run(c->pool, mm_worker, &job);
        i = j;
    }
}

/* ---- tensor parallelism ---- */

static void residual_add(float *x, const float *delta, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] += delta[i];
}

/* The collectives of a pass, counted for td_ctx_tp_stats. */
static int tp_allreduce(td_ctx *c, float *buf, int64_t n, td_err *err) {
    double t0 = td_now_sec();
    int rc = td_comm_allreduce_sum_f32(c->comm, buf, n, err);
    c->stats.sec += td_now_sec() - t0;
    c->stats.calls++;
    c->stats.allreduce_bytes += (uint64_t)n * sizeof(float);
    return rc;
}

/* In place: rank r's counts[r] floats already sit at their offset in recv. */
static int tp_allgatherv(td_ctx *c, float *recv, td_err *err) {
    int rank = td_comm_rank(c->comm), size = td_comm_size(c->comm);
    int64_t off = 0, total = 0;
    for (int r = 0; r < size; r++) {
        if (r < rank) off += c->counts[r];
        total += c->counts[r];
    }
    double t0 = td_now_sec();
    int rc = td_comm_allgatherv_f32(c->comm, recv + off, c->counts[rank], recv, c->counts, err);
    c->stats.sec += td_now_sec() - t0;
    c->stats.calls++;
    c->stats.gather_bytes += (uint64_t)total * sizeof(float);
    return rc;
}

/* Partial sums of one chunk of a weight's inputs: unit u is a range of
 * output columns of chunk u / units_per_chunk. */
typedef struct chunk_job {
    const td_weight *w;
    int64_t chunk_in, n_chunks;   /* inputs per chunk; this rank's chunks */
    size_t w_chunk, x_chunk;      /* bytes of one chunk of a weight / activation row */
    size_t w_stride, x_stride;    /* bytes of a whole (local) row */
    const void *xq;
    float *part;                  /* (n_chunks, n_rows, n_out) */
    int64_t n_rows, cols, units_per_chunk;
    _Atomic int64_t next;
    td_numerics numerics;
    bool tiled; /* on the weight's tiled copy (it has one, and FAST's order) */
} chunk_job;

static void chunk_worker(void *arg, int ith, int nth) {
    chunk_job *j = arg;
    (void)ith, (void)nth;
    int64_t n_out = j->w->n_out;
    for (;;) {
        int64_t u = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (u >= j->n_chunks * j->units_per_chunk) return;
        int64_t k = u / j->units_per_chunk, lo = (u % j->units_per_chunk) * j->cols;
        int64_t hi = lo + j->cols < n_out ? lo + j->cols : n_out;
        if (j->tiled && lo % TD_QUANT_TILE_COLS == 0) {
            const int64_t per = td_quant_traits(j->w->type)->block_elems;
            td_quant_matmul_tiled(j->w->type, j->w->tiled, j->w->n_in, n_out, k * j->chunk_in / per,
                                  (k + 1) * j->chunk_in / per, lo, hi, (const char *)j->xq + (size_t)k * j->x_chunk,
                                  j->x_stride, j->n_rows, j->part + k * j->n_rows * n_out, n_out);
            continue;
        }
        td_quant_matmul_strided(j->numerics, j->w->type, (const char *)j->w->data + (size_t)k * j->w_chunk,
                                j->w_stride, j->chunk_in, lo, hi, (const char *)j->xq + (size_t)k * j->x_chunk,
                                j->x_stride, j->n_rows, j->part + k * j->n_rows * n_out, n_out);
    }
}

/* c->x += w·in for a projection whose inputs a split cuts (wo, w_down); in
 * is (n_rows, w->n_in), this rank's inputs. The model's inputs come in
 * n_chunks_all chunks of chunk_in, split between ranks as td_shard_split
 * splits them.
 *   Unsplit, not invariant: the fused matmul + residual add.
 *   Split, not invariant: this rank's partial sum, all-reduced in rank
 *     order, then added.
 *   TD_NUMERICS_TP_INVARIANT: each chunk's partial on its own, every
 *     rank's gathered, then summed chunk by chunk left to right: the sum
 *     is the same whichever rank computed which chunk, so any split (and
 *     none) gives the same bits. An all-reduce of per-rank sums would
 *     regroup the additions by rank. */
static int split_projection(td_ctx *c, const td_weight *w, const float *in, int64_t n_rows, int64_t chunk_in,
                            int64_t n_chunks_all, td_err *err) {
    int64_t E = w->n_out;
    const td_weight *ws[1] = {w};
    float *ys[1] = {c->proj};
    if (c->numerics != TD_NUMERICS_TP_INVARIANT) {
        if (!c->comm) {
            matmuls(c, in, n_rows, 1, ws, ys, MM_THEN_ADD, c->x);
            return TD_OK;
        }
        matmuls(c, in, n_rows, 1, ws, ys, MM_THEN_NOTHING, NULL);
        int rc = tp_allreduce(c, c->proj, n_rows * E, err);
        if (rc) return rc;
        residual_add(c->x, c->proj, n_rows * E);
        return TD_OK;
    }
    const td_shard *sh = &c->m->shard;
    int64_t lo, hi;
    td_shard_split(n_chunks_all, sh->rank, sh->size, &lo, &hi);
    assert((hi - lo) * chunk_in == w->n_in);
    uint32_t vt = td_quant_traits(w->type)->vec_dot_type;
    quantize_rows(c, w->type, in, w->n_in, n_rows);
    int nth = td_pool_size(c->pool);
    chunk_job j = {.w = w, .chunk_in = chunk_in, .n_chunks = hi - lo,
                   .w_chunk = td_quant_row_bytes(w->type, chunk_in), .x_chunk = td_quant_row_bytes(vt, chunk_in),
                   .w_stride = td_quant_row_bytes(w->type, w->n_in), .x_stride = td_quant_row_bytes(vt, w->n_in),
                   .xq = c->xq, .part = c->part + lo * n_rows * E, .n_rows = n_rows,
                   .cols = td_claim_chunk(E, nth, MM_CHUNKS_PER_THREAD, MM_CHUNK_ALIGN), .numerics = c->numerics,
                   .tiled = use_tiles(c) && w->tiled};
    j.units_per_chunk = (E + j.cols - 1) / j.cols;
    atomic_init(&j.next, 0);
    td_pool_run(c->pool, chunk_worker, &j);
    if (c->comm) {
        for (int32_t r = 0; r < sh->size; r++) {
            int64_t a, b;
            td_shard_split(n_chunks_all, r, sh->size, &a, &b);
            c->counts[r] = (b - a) * n_rows * E;
        }
        int rc = tp_allgatherv(c, c->part, err);
        if (rc) return rc;
    }
    int64_t n = n_rows * E;
    for (int64_t i = 0; i < n; i++) {
        float acc = c->part[i];
        for (int64_t k = 1; k < n_chunks_all; k++) acc += c->part[k * n + i];
        c->x[i] += acc;
    }
    return TD_OK;
}

/* Row r's q, k, v after the projections: biases, RoPE, and k, v into the
 * cache at the row's slot. */
static void qkv_finish_row(td_ctx *c, td_kv *kv, const td_row *rows, int32_t r, int32_t l) {
    const td_hparams *hp = &c->m->hp;
    const td_shard *sh = &c->m->shard;
    const td_layer *ly = &c->m->layers[l];
    int64_t hd = hp->head_dim, q_dim = (int64_t)sh->n_head * hd, kv_dim = (int64_t)sh->n_head_kv * hd;
    float *q = c->q + r * q_dim, *k = c->k + r * kv_dim, *v = c->v + r * kv_dim;
    if (ly->bq) {
        residual_add(q, ly->bq, q_dim);
        residual_add(k, ly->bk, kv_dim);
        residual_add(v, ly->bv, kv_dim);
    }
    const float *cs = c->rope_cs + (size_t)r * hp->n_rot;
    for (int32_t h = 0; h < sh->n_head; h++) c->ops.rope(q + h * hd, cs, hp->n_rot, hp->rope_kind);
    for (int32_t h = 0; h < sh->n_head_kv; h++) c->ops.rope(k + h * hd, cs, hp->n_rot, hp->rope_kind);
    c->ops.to_f16(k, td_kv_at(kv, rows[r].seq, l, 0, c->slot[r]), kv_dim);
    c->ops.to_f16(v, td_kv_at(kv, rows[r].seq, l, 1, c->slot[r]), kv_dim);
}

/* Row r's token's embedding row into c->x, or -0.0 where another rank
 * holds the token (embed_rows says why -0.0). */
static void embed_row(td_ctx *c, const td_row *rows, int32_t r) {
    const td_model *m = c->m;
    const td_shard *sh = &m->shard;
    int64_t E = m->hp.n_embd;
    int64_t t = (int64_t)rows[r].token - sh->vocab0;
    float *x = c->x + r * E;
    if (t >= 0 && t < sh->n_vocab)
        td_quant_traits(m->tok_embd.type)->to_float(
            (const char *)m->tok_embd.data + (size_t)t * td_quant_row_bytes(m->tok_embd.type, E), x, E);
    else
        for (int64_t i = 0; i < E; i++) x[i] = -0.0f;
}

/* The embedding rows of the pass's tokens into c->x. A split model's rank
 * holds some of the vocabulary: it fills the rows it holds and -0.0 in the
 * others, and an all-reduce adds them up. -0.0 is the exact identity of
 * float addition (v + -0.0 == v for every v, +0.0 included, where +0.0
 * would turn a -0.0 into +0.0), so every row arrives with its bits. */
static int embed_rows(td_ctx *c, const td_row *rows, int32_t n_rows, td_err *err) {
    int64_t E = c->m->hp.n_embd;
    for (int32_t r = 0; r < n_rows; r++) embed_row(c, rows, r);
    return c->comm ? tp_allreduce(c, c->x, n_rows * E, err) : TD_OK;
}

/* Logits of the n_out normed rows in c->xn. A split model's rank computes
 * its vocabulary rows into c->gather (rank by rank, each (n_out, its
 * rows)), gathers the others' and lays them out row by row. */
static int output_logits(td_ctx *c, int32_t n_out, float *logits, td_err *err) {
    const td_model *m = c->m;
    const td_shard *sh = &m->shard;
    int64_t V = m->hp.n_vocab;
    quantize_rows(c, m->output.type, c->xn, m->hp.n_embd, n_out);
    float *y = logits;
    int64_t y_stride = V;
    if (c->comm) {
        int64_t off = 0;
        for (int32_t r = 0; r < sh->size; r++) {
            int64_t a, b;
            td_shard_vocab(V, r, sh->size, &a, &b);
            c->counts[r] = (b - a) * n_out;
            if (r < sh->rank) off += c->counts[r];
        }
        y = c->gather + off;
        y_stride = sh->n_vocab;
    }
    /* FAST's order where the context computes it, else the reference: the
     * head's outputs are whole rows of the vocabulary on every rank, so a
     * split cuts no sum here and either order is tensor-parallel safe */
    mm_job job = {.n_tasks = 1, .n_rows = n_out,
                  .numerics = fast_kernels(c->numerics) ? TD_NUMERICS_FAST : TD_NUMERICS_REFERENCE,
                  .tiled = use_tiles(c)};
    job.t[0] = (mm_task){&m->output, c->xq, y, y_stride};
    mm_job_ready(&job, td_pool_size(c->pool));
    td_pool_run(c->pool, mm_worker, &job);
    if (!c->comm) return TD_OK;
    int rc = tp_allgatherv(c, c->gather, err);
    if (rc) return rc;
    const float *src = c->gather;
    for (int32_t r = 0; r < sh->size; r++) {
        int64_t a, b;
        td_shard_vocab(V, r, sh->size, &a, &b);
        for (int32_t i = 0; i < n_out; i++, src += b - a)
            memcpy(logits + i * V + a, src, (size_t)(b - a) * sizeof(float));
    }
    return TD_OK;
}

typedef struct attn_job {
    td_ctx *c;
    const td_kv *kv;
    const td_row *rows;
    int32_t n_rows, layer;
    int64_t n_items, chunk;
    _Atomic int64_t next; /* next item to take */
} attn_job;

/* Tree rows see the cache [0, base) and then their ancestors (root first)
 * and themselves; linear rows see [0, pos]. Returns the chain length. */
static int32_t tree_chain(const td_ctx *c, const td_row *rows, int32_t r, int32_t *chain) {
    int32_t n = 0;
    if (!rows[r].tree) return 0;
    for (int32_t a = r; a >= 0; a = rows[a].parent) chain[n++] = c->slot[a];
    for (int32_t x = 0; x < n / 2; x++) {
        int32_t t = chain[x];
        chain[x] = chain[n - 1 - x];
        chain[n - 1 - x] = t;
    }
    return n;
}

/* Items (sequence, KV head, row of the sequence, query head of the
 * group), in that order; a thread takes contiguous ranges of them and hands
 * the queries of each (sequence, KV head) to the kernel up to
 * TD_ATTN_MAX_QUERIES at a time. A query's result does not depend on the
 * others it is batched with, so the ranges may fall anywhere. */
static void attn_range(attn_job *j, int ith, int64_t lo, int64_t hi) {
    td_ctx *c = j->c;
    const td_hparams *hp = &c->m->hp;
    const td_shard *sh = &c->m->shard;
    int32_t hd = hp->head_dim, group = hp->n_head / hp->n_head_kv;
    int64_t q_dim = (int64_t)sh->n_head * hd; /* this rank's heads */
    float *scores = c->scores + (size_t)ith * TD_ATTN_MAX_QUERIES * c->scores_len;
    int32_t *chains = c->chain + (size_t)ith * TD_ATTN_MAX_QUERIES * c->max_rows;
    float *lanes = c->lanes + (size_t)ith * TD_ATTN_MAX_QUERIES * TD_ATTN_LANE_SETS * hd;
    td_attn_query qs[TD_ATTN_MAX_QUERIES];
    td_attn_batch b = {.kv = j->kv, .layer = j->layer, .head_dim = hd, .scale = 1.0f / sqrtf((float)hd),
                       .qs = qs, .tile = c->tile + (size_t)ith * TD_ATTN_TILE * hd,
                       .lone = c->numerics == TD_NUMERICS_LLAMACPP && j->n_rows == 1};
    int64_t item = 0;
    for (int32_t e = 0; e < c->n_groups && item < hi; e++) {
        const td_attn_group *g = &c->groups[e];
        int64_t per_head = (int64_t)g->n_rows * group;
        for (int32_t kvh = 0; kvh < sh->n_head_kv; kvh++, item += per_head) {
            if (item + per_head <= lo || item >= hi) continue;
            int64_t i0 = lo > item ? lo - item : 0, i1 = hi < item + per_head ? hi - item : per_head;
            b.seq = g->seq;
            b.head_off = kvh * hd;
            for (int64_t i = i0; i < i1; i += TD_ATTN_MAX_QUERIES) {
                b.n_q = i1 - i < TD_ATTN_MAX_QUERIES ? (int32_t)(i1 - i) : TD_ATTN_MAX_QUERIES;
                for (int32_t k = 0, prev = -1; k < b.n_q; k++) {
                    int32_t r = c->order[g->first + (i + k) / group], h = kvh * group + (int32_t)((i + k) % group);
                    const int32_t *chain = k > 0 ? qs[k - 1].chain : NULL;
                    int32_t n_chain = k > 0 ? qs[k - 1].n_chain : 0;
                    if (r != prev) { /* a row's heads are adjacent: one chain serves them */
                        int32_t *own = chains + (size_t)k * c->max_rows;
                        n_chain = tree_chain(c, j->rows, r, own);
                        chain = own;
                        prev = r;
                    }
                    qs[k] = (td_attn_query){.q = c->q + r * q_dim + (int64_t)h * hd,
                                            .out = c->xn + r * q_dim + (int64_t)h * hd,
                                            .scores = scores + (size_t)k * c->scores_len,
                                            .lanes = lanes + (size_t)k * TD_ATTN_LANE_SETS * hd,
                                            .base = c->base[r], .chain = chain, .n_chain = n_chain};
                }
                if (b.lone)
                    c->ops.attend_lone(&b);
                else
                    c->ops.attend(&b);
            }
        }
    }
}

/* Attention items per claim: one claim per thread when all take part (the
 * old static split) unless the pass is long enough to balance finer. */
static int64_t attn_chunk(int64_t n_items, int nth) {
    return td_claim_chunk(n_items, nth, n_items >= 64 * nth ? 4 : 1, 1);
}

static void attn_worker(void *arg, int ith, int nth) {
    attn_job *j = arg;
    int64_t lo, hi;
    (void)nth;
    while (td_claim(&j->next, j->n_items, j->chunk, &lo, &hi)) attn_range(j, ith, lo, hi);
}

/* Groups the rows by sequence (order[] lists them sequence by sequence). */
static void group_rows(td_ctx *c, const td_row *rows, int32_t n_rows) {
    int32_t *which = c->chain; /* scratch: group of each row (chain is free here) */
    c->n_groups = 0;
    for (int32_t r = 0; r < n_rows; r++) {
        int32_t e = 0;
        while (e < c->n_groups && c->groups[e].seq != rows[r].seq) e++;
        if (e == c->n_groups) c->groups[c->n_groups++] = (td_attn_group){rows[r].seq, 0, 0};
        c->groups[e].n_rows++;
        which[r] = e;
    }
    for (int32_t e = 0, first = 0; e < c->n_groups; e++) {
        c->groups[e].first = first;
        first += c->groups[e].n_rows;
        c->groups[e].n_rows = 0; /* refilled below */
    }
    for (int32_t r = 0; r < n_rows; r++) {
        td_attn_group *g = &c->groups[which[r]];
        c->order[g->first + g->n_rows++] = r;
    }
}

/* ---- context ---- */

static size_t max_act_row_bytes(const td_model *m) {
    size_t best = 0;
    const td_weight *all[2] = {&m->output, &m->tok_embd};
    for (int i = 0; i < 2; i++) {
        size_t b = td_quant_row_bytes(td_quant_traits(all[i]->type)->vec_dot_type, all[i]->n_in);
        if (b > best) best = b;
    }
    for (int32_t l = 0; l < m->hp.n_layer; l++) {
        const td_layer *ly = &m->layers[l];
        const td_weight *ws[7] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo, &ly->w_gate, &ly->w_up, &ly->w_down};
        for (int i = 0; i < 7; i++) {
            size_t b = td_quant_row_bytes(td_quant_traits(ws[i]->type)->vec_dot_type, ws[i]->n_in);
            if (b > best) best = b;
        }
    }
    return best;
}

static bool groups_share_input(const td_model *m);

td_ctx *td_ctx_create(const td_model *m, int32_t max_rows, td_pool *pool, td_err *err) {
    return td_ctx_create_on(m, max_rows, pool, (td_device){TD_DEVICE_CPU, 0}, err);
}

/* The host arrays a CUDA pass is described in. */
static int cuda_ctx_init(td_ctx *c, td_device dev, td_err *err) {
    size_t R = (size_t)c->max_rows;
    c->tokens = td_alloc(R * sizeof(int32_t));
    c->seqs = td_alloc(R * sizeof(int32_t));
    c->chain_off = td_alloc(R * sizeof(int32_t));
    c->chain_len = td_alloc(R * sizeof(int32_t));
    c->out_rows = td_alloc(R * sizeof(int32_t));
    c->chains = td_alloc(R * (R + 1) / 2 * sizeof(int32_t));
    c->summaries = td_alloc(R * sizeof(td_sample_summary));
    if (!c->tokens || !c->seqs || !c->chain_off || !c->chain_len || !c->out_rows || !c->chains || !c->summaries)
        return td_err_set(err, TD_E_NOMEM, "context: out of memory for a CUDA pass of %d rows", c->max_rows);
    td_cuda_model *gm;
    int rc = td_model_cuda(c->m, dev.index, &gm, err);
    if (rc) return rc;
    c->numerics = TD_NUMERICS_REFERENCE;
    return td_cuda_ctx_create(gm, c->max_rows, &c->gpu, err);
}

td_ctx *td_ctx_create_on(const td_model *m, int32_t max_rows, td_pool *pool, td_device dev, td_err *err) {
    if (!m || max_rows < 1) {
        td_err_set(err, TD_E_ARG, "context: %s, %d rows (at least 1)", m ? "a model" : "no model", max_rows);
        return NULL;
    }
    dev = td_device_resolve(dev);
    td_ctx *c = calloc(1, sizeof *c);
    if (!c) goto nomem;
    c->numerics = TD_NUMERICS_FAST;
    const td_hparams *hp = &m->hp;
    size_t R = (size_t)max_rows;
    size_t q_dim = (size_t)hp->n_head * hp->head_dim, kv_dim = (size_t)hp->n_head_kv * hp->head_dim;
    size_t wide = q_dim > (size_t)hp->n_embd ? q_dim : (size_t)hp->n_embd;
    c->m = m;
    c->pool = pool;
    c->max_rows = max_rows;
    c->x = td_alloc(R * hp->n_embd * sizeof(float));
    c->xn = td_alloc(R * wide * sizeof(float));
    c->q = td_alloc(R * q_dim * sizeof(float));
    c->k = td_alloc(R * kv_dim * sizeof(float));
    c->v = td_alloc(R * kv_dim * sizeof(float));
    c->proj = td_alloc(R * hp->n_embd * sizeof(float));
    c->gate = td_alloc(R * hp->n_ff * sizeof(float));
    c->up = td_alloc(R * hp->n_ff * sizeof(float));
    c->rope_cs = td_alloc(R * (size_t)hp->n_rot * sizeof(float));
    c->xq = td_alloc(R * max_act_row_bytes(m));
    c->slot = td_alloc(R * sizeof(int32_t));
    c->base = td_alloc(R * sizeof(int32_t));
    c->chain = td_alloc((size_t)td_pool_size(pool) * TD_ATTN_MAX_QUERIES * R * sizeof(int32_t));
    c->groups = td_alloc(R * sizeof(td_attn_group));
    c->order = td_alloc(R * sizeof(int32_t));
    c->tile = td_alloc((size_t)td_pool_size(pool) * TD_ATTN_TILE * hp->head_dim * sizeof(float));
    c->lanes = td_alloc((size_t)td_pool_size(pool) * TD_ATTN_MAX_QUERIES * TD_ATTN_LANE_SETS * hp->head_dim *
                        sizeof(float));
    c->pass_seqs = td_alloc(R * sizeof(td_pass_seq));
    c->phases = td_alloc(((size_t)hp->n_layer * PHASES_PER_LAYER + 3) * sizeof(td_phase));
    c->out_idx = td_alloc(R * sizeof(int32_t));
    c->ops = td_op_select(hp->head_dim);
    c->device = dev;
    c->groups_share_input = groups_share_input(m);
    if (!c->x || !c->xn || !c->q || !c->k || !c->v || !c->proj || !c->gate || !c->up || !c->rope_cs ||
        !c->xq || !c->slot || !c->base || !c->chain || !c->groups || !c->order || !c->tile || !c->lanes ||
        !c->pass_seqs || !c->phases || !c->out_idx) {
        td_ctx_destroy(c);
        goto nomem;
    }
    if (dev.kind == TD_DEVICE_CUDA && cuda_ctx_init(c, dev, err) != TD_OK) {
        td_ctx_destroy(c);
        return NULL;
    }
    return c;
nomem:
    td_err_set(err, TD_E_NOMEM, "context: out of memory for %d rows", max_rows);
    return NULL;
}

td_device td_ctx_device(const td_ctx *c) { return c->device; }

void td_ctx_profile(const td_ctx *c, char *buf, size_t cap) {
    if (cap) buf[0] = 0;
    if (c->gpu) td_cuda_ctx_profile(c->gpu, buf, cap);
}

void td_ctx_destroy(td_ctx *c) {
    if (!c) return;
    td_free(c->x); td_free(c->xn); td_free(c->q); td_free(c->k); td_free(c->v);
    td_free(c->proj); td_free(c->gate); td_free(c->up); td_free(c->rope_cs);
    td_free(c->xq); td_free(c->scores);
    td_free(c->slot); td_free(c->base); td_free(c->chain);
    td_free(c->groups); td_free(c->order); td_free(c->tile); td_free(c->lanes);
    td_cuda_ctx_free(c->gpu);
    td_free(c->tokens); td_free(c->seqs); td_free(c->chain_off); td_free(c->chain_len); td_free(c->out_rows);
    td_free(c->chains);
    td_free(c->summaries);
    td_free(c->pass_seqs);
    td_free(c->phases);
    td_free(c->out_idx);
    free(c->phase_ns);
    td_free(c->part);
    td_free(c->gather);
    free(c->counts);
    free(c);
}

int32_t td_ctx_max_rows(const td_ctx *c) { return c->max_rows; }

void td_ctx_set_numerics(td_ctx *c, td_numerics order) {
    if (!c->gpu) {
        c->numerics = order;
        return;
    }
    /* CUDA: its FAST order, the invariant order (chunks in its reference
     * order, made ready on the first pass, where a failure can be told),
     * or else the reference (llama.cpp's one-row order has no device form) */
    c->numerics = order == TD_NUMERICS_FAST || order == TD_NUMERICS_TP_INVARIANT ? order : TD_NUMERICS_REFERENCE;
    td_cuda_ctx_set_fast(c->gpu, c->numerics == TD_NUMERICS_FAST);
    if (c->numerics != TD_NUMERICS_TP_INVARIANT) (void)td_cuda_ctx_set_invariant(c->gpu, false, NULL);
}

td_numerics td_ctx_numerics(const td_ctx *c) { return c->numerics; }

void td_ctx_set_schedule(td_ctx *c, td_schedule s) { c->schedule = s; }

/* A CUDA rank's collectives: the context's communicator's (cuda.h's
 * td_cuda_group: host buffers for MPI, the device's for NCCL), counted in
 * its statistics as the CPU's are. */
static int gpu_allreduce(void *user, float *buf, int64_t n, td_err *err) {
    return tp_allreduce(user, buf, n, err);
}

static int gpu_allgatherv(void *user, const float *send, int64_t n, float *recv, const int64_t *counts, td_err *err) {
    td_ctx *c = user;
    int64_t total = 0;
    for (int r = 0; r < td_comm_size(c->comm); r++) total += counts[r];
    double t0 = td_now_sec();
    int rc = td_comm_allgatherv_f32(c->comm, send, n, recv, counts, err);
    c->stats.sec += td_now_sec() - t0;
    c->stats.calls++;
    c->stats.gather_bytes += (uint64_t)total * sizeof(float);
    return rc;
}

/* Makes the CUDA context a rank of the communicator's group. */
static int gpu_join(td_ctx *c, td_comm *comm, td_err *err) {
    const td_shard *sh = &c->m->shard;
    const int on = td_comm_device(comm);
    if (on >= 0 && on != c->device.index)
        return td_err_set(err, TD_E_ARG, "the communicator's buffers are on cuda:%d, this context computes on cuda:%d",
                          on, c->device.index);
    const td_hparams *hp = &c->m->hp;
    const size_t ranks = (size_t)sh->size + 1;
    int32_t *firsts = malloc(3 * ranks * sizeof *firsts);
    if (!firsts) return td_err_set(err, TD_E_NOMEM, "out of memory");
    /* every rank's first vocabulary row, first KV head (a chunk of wo's
     * inputs) and first chunk of FFN inputs; the whole model's counts last */
    int32_t *vocab0 = firsts, *attn0 = firsts + ranks, *ff0 = firsts + 2 * ranks;
    for (int32_t r = 0; r < sh->size; r++) {
        int64_t a, b;
        td_shard_vocab(hp->n_vocab, r, sh->size, &a, &b);
        vocab0[r] = (int32_t)a;
        td_shard_split(hp->n_head_kv, r, sh->size, &a, &b);
        attn0[r] = (int32_t)a;
        td_shard_split(hp->n_ff / sh->ff_chunk, r, sh->size, &a, &b);
        ff0[r] = (int32_t)a;
    }
    vocab0[sh->size] = hp->n_vocab;
    attn0[sh->size] = hp->n_head_kv;
    ff0[sh->size] = hp->n_ff / sh->ff_chunk;
    td_cuda_group g = {.user = c, .size = sh->size, .device_buffers = on >= 0, .vocab0 = vocab0, .attn0 = attn0,
                       .ff0 = ff0, .allreduce_sum = gpu_allreduce, .allgatherv = gpu_allgatherv};
    int rc = td_cuda_ctx_set_group(c->gpu, &g, err);
    free(firsts);
    return rc;
}

int td_ctx_set_comm(td_ctx *c, td_comm *comm, td_err *err) {
    const td_shard *sh = &c->m->shard;
    if (td_comm_size(comm) != sh->size || td_comm_rank(comm) != sh->rank)
        return td_err_set(err, TD_E_ARG, "communicator: rank %d of %d, but the model is loaded as rank %d of %d",
                          td_comm_rank(comm), td_comm_size(comm), sh->rank, sh->size);
    if (sh->size == 1) { /* nothing to combine */
        c->comm = NULL;
        return TD_OK;
    }
    if (!c->counts && !(c->counts = calloc((size_t)sh->size, sizeof *c->counts)))
        return td_err_set(err, TD_E_NOMEM, "out of memory");
    if (!c->gpu) {
        if (td_comm_device(comm) >= 0)
            return td_err_set(err, TD_E_ARG, "a CPU context's collectives take host buffers; the %s backend's take "
                              "cuda:%d's", td_comm_backend(comm), td_comm_device(comm));
        c->comm = comm;
        return TD_OK;
    }
    /* a CUDA rank joins its group once */
    if (c->comm) return c->comm == comm ? TD_OK : td_err_set(err, TD_E_ARG, "this CUDA context has its group");
    int rc = gpu_join(c, comm, err);
    if (rc == TD_OK) c->comm = comm;
    return rc;
}

void td_ctx_tp_stats(const td_ctx *c, td_tp_stats *out) { *out = c->stats; }

void td_ctx_set_lead(td_ctx *c, td_lead *l) { c->lead = l; }
const td_model *td_ctx_model(const td_ctx *c) { return c->m; }

/* The invariant order's chunk partials (every chunk of the model, so the
 * gather lands in place) and a split model's gathered logits, for a pass
 * of n_rows rows of which n_out want logits. */
static int grow_tp(td_ctx *c, int32_t n_rows, int32_t n_out, td_err *err) {
    const td_model *m = c->m;
    if (c->numerics == TD_NUMERICS_TP_INVARIANT && n_rows > c->part_rows) {
        int64_t chunks = m->hp.n_head_kv > m->hp.n_ff / m->shard.ff_chunk ? m->hp.n_head_kv
                                                                          : m->hp.n_ff / m->shard.ff_chunk;
        td_free(c->part);
        c->part = td_alloc((size_t)chunks * (size_t)n_rows * (size_t)m->hp.n_embd * sizeof(float));
        c->part_rows = c->part ? n_rows : 0;
        if (!c->part) return td_err_set(err, TD_E_NOMEM, "out of memory for %d rows' chunk partials", n_rows);
    }
    size_t need = (size_t)n_out * (size_t)m->hp.n_vocab;
    if (c->comm && need > c->gather_len) {
        td_free(c->gather);
        c->gather = td_alloc(need * sizeof(float));
        c->gather_len = c->gather ? need : 0;
        if (!c->gather) return td_err_set(err, TD_E_NOMEM, "out of memory for %d rows' logits", n_out);
    }
    return TD_OK;
}

/* ---- the pass ---- */

/* Checks rows against the cache and assigns each its slot: linear rows must
 * continue their sequence in order, tree rows must hang off the cache or an
 * earlier row of the same sequence. Reserves KV pages. */
static int check_rows(td_ctx *c, td_kv *kv, const td_row *rows, int32_t n_rows, td_err *err) {
    const td_hparams *hp = &c->m->hp;
    if (n_rows < 1 || n_rows > c->max_rows)
        return td_err_set(err, TD_E_ARG, "batch of %d rows (context holds at most %d)", n_rows, c->max_rows);
    for (int32_t i = 0; i < n_rows; i++) {
        int32_t s = rows[i].seq;
        if (s < 0 || s >= kv->max_seqs)
            return td_err_set(err, TD_E_ARG, "row %d: sequence %d out of range", i, s);
    }
    /* a pass holds few sequences (one for prefill and decoding, the batch's
     * requests for verification): a linear search of those seen is enough */
    int32_t n_seqs = 0;
    for (int32_t i = 0; i < n_rows; i++) {
        const td_row *r = &rows[i];
        td_pass_seq *ps = NULL;
        for (int32_t k = n_seqs - 1; k >= 0 && !ps; k--)
            if (c->pass_seqs[k].seq == r->seq) ps = &c->pass_seqs[k];
        if (!ps) {
            ps = &c->pass_seqs[n_seqs++];
            *ps = (td_pass_seq){r->seq, kv->len[r->seq], 0};
        }
        int8_t mode = r->tree ? 2 : 1;
        if (ps->mode && ps->mode != mode)
            return td_err_set(err, TD_E_ARG, "row %d: sequence %d mixes tree and linear rows", i, r->seq);
        ps->mode = mode;
        if (r->token < 0 || r->token >= hp->n_vocab)
            return td_err_set(err, TD_E_ARG, "row %d: token %d outside vocabulary of %d", i, r->token, hp->n_vocab);
        int32_t slot = ps->next;
        if (!r->tree) {
            if (r->pos != slot)
                return td_err_set(err, TD_E_ARG, "row %d: position %d but sequence %d continues at %d", i, r->pos,
                                  r->seq, slot);
            c->base[i] = r->pos + 1;
        } else {
            int32_t want = kv->len[r->seq];
            if (r->parent >= 0) {
                if (r->parent >= i || rows[r->parent].seq != r->seq)
                    return td_err_set(err, TD_E_ARG, "row %d: parent %d is not an earlier row of sequence %d", i,
                                      r->parent, r->seq);
                want = rows[r->parent].pos + 1;
            } else if (r->parent != -1) {
                return td_err_set(err, TD_E_ARG, "row %d: parent %d invalid", i, r->parent);
            }
            if (r->pos != want)
                return td_err_set(err, TD_E_ARG, "row %d: tree position %d, expected %d", i, r->pos, want);
            c->base[i] = kv->len[r->seq];
        }
        if (slot >= kv->max_len)
            return td_err_set(err, TD_E_RANGE, "row %d: position %d exceeds the context of %d", i, slot,
                              kv->max_len);
        c->slot[i] = slot;
        ps->next++;
    }
    if (c->gpu) return TD_OK; /* the device cache holds every position already */
    for (int32_t k = 0; k < n_seqs; k++)
        if (td_kv_reserve(kv, c->pass_seqs[k].seq, c->pass_seqs[k].next) != TD_OK)
            return td_err_set(err, TD_E_NOMEM, "out of memory growing the KV cache");
    return TD_OK;
}

static int grow_scores(td_ctx *c, int32_t len) {
    if (len <= c->scores_len) return TD_OK;
    td_free(c->scores);
    int nth = td_pool_size(c->pool);
    c->scores = td_alloc((size_t)nth * TD_ATTN_MAX_QUERIES * (size_t)len * sizeof(float));
    c->scores_len = c->scores ? len : 0;
    return c->scores ? TD_OK : TD_E_NOMEM;
}

/* cos/sin per row and frequency. The angles are built the way llama.cpp
 * builds them — float theta multiplied by a float ratio per pair — because
 * at positions in the thousands the rounding of that product moves logits
 * enough to flip near-ties, and agreeing with the reference matters more than
 * a few ulps of accuracy. */
static void rope_table(td_ctx *c, const td_row *rows, int32_t n_rows) {
    const td_hparams *hp = &c->m->hp;
    int32_t half = hp->n_rot / 2;
    float ratio = powf(hp->rope_base, -2.0f / (float)hp->n_rot);
    for (int32_t r = 0; r < n_rows; r++) {
        float *cs = c->rope_cs + (size_t)r * hp->n_rot;
        float theta = (float)rows[r].pos;
        for (int32_t i = 0; i < half; i++) {
            float t = theta;
            if (c->m->rope_factors) t /= c->m->rope_factors[i];
            t *= hp->rope_freq_scale;
            cs[2 * i] = cosf(t);
            cs[2 * i + 1] = sinf(t);
            theta *= ratio;
        }
    }
}

int td_model_forward(td_ctx *c, td_kv *kv, const td_row *rows, int32_t n_rows, float *logits, td_err *err) {
    return td_model_forward_skip(c, kv, rows, n_rows, logits, NULL, err);
}

/* Binds the cache to the context's device on its first pass; a cache stays
 * where its positions are. */
static int bind_cache(td_ctx *c, td_kv *kv, td_err *err) {
    if (!c->gpu) {
        if (kv->cuda) return td_err_set(err, TD_E_ARG, "this KV cache lives on a CUDA device; use a CUDA context");
        return TD_OK;
    }
    if (kv->cuda) return TD_OK;
    if (kv->bytes > 0) return td_err_set(err, TD_E_ARG, "this KV cache already holds positions on the CPU");
    td_cuda_model *gm;
    int rc = td_model_cuda(c->m, c->device.index, &gm, err);
    if (rc) return rc;
    return td_cuda_kv_create(gm, kv->max_seqs, kv->max_len, &kv->cuda, err);
}

/* The pass on the device: the host part (slots, chains, RoPE angles) is the
 * CPU's, the rest is cuda_backend.cu's. */
/* Row j's pick and observations from its summary (td_model_forward_picks). */
static void from_summary(const td_sample_plan *pl, const td_sample_summary *sum, int32_t j, const td_pass_out *w) {
    int32_t *picks = w->picks, *tops = w->tops;
    bool acc = false;
    picks[j] = pl->reject ? td_sample_summary_reject(pl, sum, &acc) : td_sample_summary_pick(pl, sum);
    if (w->accepted) w->accepted[j] = acc;
    if (!tops) return;
    int32_t *tj = tops + (size_t)j * TD_SAMPLE_TOP_MAX;
    tj[0] = -1;
    if (pl->n_top > 0 && sum->n_top == pl->n_top && pl->n_top <= TD_SAMPLE_TOP_MAX)
        for (int32_t i = 0; i < sum->n_top; i++) tj[i] = sum->top[i];
}

static int forward_cuda(td_ctx *c, td_kv *kv, const td_row *rows, int32_t n_rows, float *logits,
                        const td_pass_out *w, const uint8_t *skip, td_err *err) {
    static const td_pass_out none = {0};
    if (!w) w = &none;
    if (c->numerics == TD_NUMERICS_TP_INVARIANT && !td_cuda_ctx_invariant(c->gpu)) {
        int rc = td_model_cuda_chunks(c->m, err);
        if (rc == TD_OK) rc = td_cuda_ctx_set_invariant(c->gpu, true, err);
        if (rc) return rc;
    }
    int32_t total = 0, n_out = 0;
    for (int32_t r = 0; r < n_rows; r++) {
        c->tokens[r] = rows[r].token;
        c->seqs[r] = rows[r].seq;
        c->chain_off[r] = total;
        c->chain_len[r] = tree_chain(c, rows, r, c->chains + total);
        total += c->chain_len[r];
        if (rows[r].logits) c->out_rows[n_out++] = r;
    }
    rope_table(c, rows, n_rows);
    const td_sample_plan *plans = w->plans;
    td_cuda_pass p = {.n_rows = n_rows, .token = c->tokens, .seq = c->seqs, .slot = c->slot, .base = c->base,
                      .chain_off = c->chain_off, .chain_len = c->chain_len, .chain = c->chains,
                      .chain_total = total, .rope_cs = c->rope_cs, .out_rows = c->out_rows, .n_out = n_out,
                      .skip = skip, .picks = plans ? NULL : w->picks, .plans = plans,
                      .summaries = plans ? c->summaries : NULL, .targets = w->targets, .n_alt = w->n_alt,
                      .scores = w->scores};
    int rc = td_cuda_forward(c->gpu, kv->cuda, &p, logits, err);
    if (rc) return rc;
    c->device_rows = n_out;
    for (int32_t r = 0; r < n_rows; r++) kv->len[rows[r].seq] = c->slot[r] + 1;
    for (int32_t j = 0; j < n_out && w->picks; j++) {
        if (plans) from_summary(&plans[j], &c->summaries[j], j, w);
        else if (w->tops) w->tops[(size_t)j * TD_SAMPLE_TOP_MAX] = -1;
    }
    return TD_OK;
}

static int forward_pass(td_ctx *c, td_kv *kv, const td_row *rows, int32_t n_rows, float *logits,
                        const uint8_t *skip, td_err *err);

/* What td_model_forward_out asks of a CPU pass, a row at a time to
 * whichever thread claims it next (a pool's thread may join late or not at
 * all): each row's work is its own. */
typedef struct out_job {
    const td_pass_out *out;
    const float *logits;
    int32_t n_out, n_vocab;
    atomic_int next;
} out_job;

static void out_worker(void *p, int ith, int nth) {
    (void)ith, (void)nth;
    out_job *job = p;
    const td_pass_out *out = job->out;
    const int32_t V = job->n_vocab;
    for (int32_t j; (j = atomic_fetch_add(&job->next, 1)) < job->n_out;) {
        const float *row = job->logits + (size_t)j * V;
        if (out->picks && out->plans) { /* the device's definition, run here (for tests) */
            td_sample_summary sum;
            td_sample_summarize(&out->plans[j], row, V, &sum);
            from_summary(&out->plans[j], &sum, j, out);
        } else if (out->picks) {
            out->picks[j] = td_sample_argmax(row, V);
            if (out->tops) out->tops[(size_t)j * TD_SAMPLE_TOP_MAX] = -1;
        }
        if (out->scores) td_sample_score_row(row, V, out->targets ? out->targets[j] : -1, out->n_alt, &out->scores[j]);
    }
}

int td_model_forward_out(td_ctx *c, td_kv *kv, const td_row *rows, int32_t n_rows, float *logits,
                         const td_pass_out *out, td_err *err) {
    if (!out) return td_err_set(err, TD_E_ARG, "nothing asked of the pass");
    if ((out->plans || out->tops) && !out->picks) return td_err_set(err, TD_E_ARG, "no room for the picks");
    if (out->accepted && !out->plans) return td_err_set(err, TD_E_ARG, "verdicts asked without plans");
    if (out->targets && !out->scores) return td_err_set(err, TD_E_ARG, "targets but no room for the scores");
    if (out->scores && (out->n_alt < 0 || out->n_alt > TD_SAMPLE_ALT_MAX))
        return td_err_set(err, TD_E_ARG, "%d alternatives (0..%d)", out->n_alt, TD_SAMPLE_ALT_MAX);
    c->device_rows = 0;
    if (c->gpu) { /* worked out where the logits are */
        /* a group leader: the followers run the plain pass (their logits
         * are gathered as ours are; what is asked of them stays here) */
        td_lead *lead = c->lead;
        int rc = TD_OK;
        if (lead) {
            if (n_rows < 1 || n_rows > c->max_rows)
                return td_err_set(err, TD_E_ARG, "batch of %d rows (context holds at most %d)", n_rows, c->max_rows);
            pthread_mutex_lock(&lead->mu);
            td_step st = {TD_STEP_FORWARD, 0, 0, n_rows};
            rc = td_lead_send(lead, &st, rows, (size_t)n_rows * sizeof *rows, NULL, 0, err);
        }
        if (rc == TD_OK) rc = bind_cache(c, kv, err);
        if (rc == TD_OK) rc = check_rows(c, kv, rows, n_rows, err);
        if (rc == TD_OK) rc = forward_cuda(c, kv, rows, n_rows, logits, out, NULL, err);
        if (lead) pthread_mutex_unlock(&lead->mu);
        return rc;
    }
    if (!logits) return td_err_set(err, TD_E_ARG, "a CPU context works from the logits: give it room for them");
    int rc = td_model_forward(c, kv, rows, n_rows, logits, err);
    if (rc) return rc;
    out_job j = {.out = out, .logits = logits, .n_vocab = c->m->hp.n_vocab};
    for (int32_t r = 0; r < n_rows; r++) j.n_out += rows[r].logits;
    atomic_init(&j.next, 0);
    td_pool_run(c->pool, out_worker, &j); /* (a row of scoring is 0.15 ms: worth the threads) */
    return TD_OK;
}

int td_model_forward_picks(td_ctx *c, td_kv *kv, const td_row *rows, int32_t n_rows, const td_sample_plan *plans,
                           float *logits, int32_t *picks, int32_t *tops, td_err *err) {
    if (!picks) return td_err_set(err, TD_E_ARG, "no room for the picks");
    const td_pass_out out = {.picks = picks, .plans = plans, .tops = tops};
    return td_model_forward_out(c, kv, rows, n_rows, logits, &out, err);
}

int td_model_forward_scores(td_ctx *c, td_kv *kv, const td_row *rows, int32_t n_rows, const int32_t *targets,
                            int32_t n_alt, float *logits, td_sample_score *scores, td_err *err) {
    if (!targets || !scores) return td_err_set(err, TD_E_ARG, "no targets or no room for the scores");
    const td_pass_out out = {.scores = scores, .targets = targets, .n_alt = n_alt};
    return td_model_forward_out(c, kv, rows, n_rows, logits, &out, err);
}

int td_model_pass_logits(td_ctx *c, int32_t j, float *out, td_err *err) {
    if (!c->gpu) return td_err_set(err, TD_E_UNSUPPORTED, "a CPU context hands its logits over with the pass");
    if (j < 0 || j >= c->device_rows || !out) /* (a failed pass leaves none) */
        return td_err_set(err, TD_E_ARG, "logits row %d: the last pass left %d", j, c->device_rows);
    return td_cuda_logits_row(c->gpu, j, out, err);
}

int td_model_forward_skip(td_ctx *c, td_kv *kv, const td_row *rows, int32_t n_rows, float *logits,
                          const uint8_t *skip, td_err *err) {
    if (!c->lead) return forward_pass(c, kv, rows, n_rows, logits, skip, err);
    /* a group leader: the other ranks run the same pass on their shards */
    if (n_rows < 1 || n_rows > c->max_rows)
        return td_err_set(err, TD_E_ARG, "batch of %d rows (context holds at most %d)", n_rows, c->max_rows);
    pthread_mutex_lock(&c->lead->mu);
    td_step st = {TD_STEP_FORWARD, 0, skip != NULL, n_rows};
    int rc = td_lead_send(c->lead, &st, rows, (size_t)n_rows * sizeof *rows, skip,
                          skip ? (size_t)c->m->hp.n_layer : 0, err);
    if (rc == TD_OK) rc = forward_pass(c, kv, rows, n_rows, logits, skip, err);
    pthread_mutex_unlock(&c->lead->mu);
    return rc;
}

/* ---- the pass as one job of phases ----
 *
 * An unsplit model in any order but tp-invariant runs its whole pass as one
 * td_pool_run_phases job: ten phases a layer, each claimed in units by the
 * threads already inside, so a decode step costs one entry into the pool
 * instead of a few hundred, and the per-row work that ran on the calling
 * thread alone (norms, RoPE, cache stores, quantization) is spread over the
 * rows. Every output is computed by the same calls as in the job-per-matmul
 * pass below (which split models and the invariant order still take), so
 * both give the same bits. */


typedef struct phased_pass {
    td_ctx *c;
    td_kv *kv;
    const td_row *rows;
    int32_t n_rows, n_out;
    float *logits;
    int64_t attn_chunk; /* attention items per claim */
    int nth;
} phased_pass;

/* The matmul job of a phase; chunk is the same for every layer (the
 * shapes are), so units claimed under one build are the same columns
 * under the next. */
static mm_job phase_mm(const phased_pass *p, enum pass_phase kind, int32_t l) {
    td_ctx *c = p->c;
    const td_model *m = c->m;
    const td_layer *ly = kind == PH_HEAD ? NULL : &m->layers[l];
    mm_job job = {.n_rows = p->n_rows, .silu_mul = c->ops.silu_mul, .numerics = c->numerics, .tiled = use_tiles(c)};
    switch (kind) {
    case PH_QKV:
        job.t[0] = (mm_task){&ly->wq, c->xq, c->q, ly->wq.n_out};
        job.t[1] = (mm_task){&ly->wk, c->xq, c->k, ly->wk.n_out};
        job.t[2] = (mm_task){&ly->wv, c->xq, c->v, ly->wv.n_out};
        job.n_tasks = 3;
        break;
    case PH_WO:
    case PH_DOWN: {
        const td_weight *w = kind == PH_WO ? &ly->wo : &ly->w_down;
        job.t[0] = (mm_task){w, c->xq, c->proj, w->n_out};
        job.n_tasks = 1;
        job.then = MM_THEN_ADD;
        job.then_n = w->n_out;
        job.then_y[0] = c->proj;
        job.add_to = c->x;
        break;
    }
    case PH_GATE_UP:
        job.t[0] = (mm_task){&ly->w_gate, c->xq, c->gate, ly->w_gate.n_out};
        job.t[1] = (mm_task){&ly->w_up, c->xq, c->up, ly->w_up.n_out};
        job.n_tasks = 2;
        job.then = MM_THEN_SILU_MUL;
        job.then_n = ly->w_gate.n_out;
        job.then_y[0] = c->gate;
        job.then_y[1] = c->up;
        break;
    default: /* PH_HEAD: as output_logits, unsplit */
        job.n_rows = p->n_out;
        job.numerics = fast_kernels(c->numerics) ? TD_NUMERICS_FAST : TD_NUMERICS_REFERENCE;
        job.t[0] = (mm_task){&m->output, c->xq, p->logits, m->hp.n_vocab};
        job.n_tasks = 1;
        break;
    }
    job.chunk = c->phase_chunk[kind];
    return job;
}

/* A matmul phase's claims as td_claim_plan sees them, costed in weight
 * bytes: a job with a `then` step claims columns of all its tasks at once. */
static int phase_spans(const mm_job *job, td_claim_span *sp) {
    if (job->then != MM_THEN_NOTHING) {
        double cost = 0;
        for (int i = 0; i < job->n_tasks; i++)
            cost += (double)td_quant_row_bytes(job->t[i].w->type, job->t[i].w->n_in);
        sp[0] = (td_claim_span){job->then_n, cost};
        return 1;
    }
    for (int i = 0; i < job->n_tasks; i++)
        sp[i] = (td_claim_span){job->t[i].w->n_out, (double)td_quant_row_bytes(job->t[i].w->type, job->t[i].w->n_in)};
    return job->n_tasks;
}

/* Plans the matmul phases' chunks for the pool's threads (layer 0 stands
 * for every layer: a chunk only moves work between threads, never changes
 * a result), and how even the plan is against one slice per thread. */
static void plan_phases(td_ctx *c) {
    static const enum pass_phase kinds[] = {PH_QKV, PH_WO, PH_GATE_UP, PH_DOWN, PH_HEAD};
    phased_pass p = {.c = c, .n_rows = 1, .n_out = 1, .nth = td_pool_size(c->pool)};
    double sum = 0, planned = 0, one_slice = 0;
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        mm_job job = phase_mm(&p, kinds[k], 0);
        td_claim_span sp[3];
        int n_sp = phase_spans(&job, sp);
        bool tiled = job.tiled;
        double bytes = 0;
        int64_t widest = 0;
        for (int i = 0; i < n_sp; i++) bytes += (double)sp[i].n * sp[i].cost;
        for (int i = 0; i < job.n_tasks; i++) {
            tiled = tiled && job.t[i].w->tiled;
            if (job.t[i].w->n_out > widest) widest = job.t[i].w->n_out;
        }
        int64_t chunk = td_claim_plan(sp, n_sp, p.nth, tiled ? TD_QUANT_TILE_COLS : MM_CHUNK_ALIGN,
                                      PHASE_CLAIM_BYTES);
        c->phase_chunk[kinds[k]] = chunk;
        /* the report is of bytes alone: what a claim costs in time differs
         * by machine and thread count */
        double busiest = td_claim_busiest(sp, n_sp, p.nth, chunk, 0);
        double before = td_claim_busiest(sp, n_sp, p.nth, td_claim_chunk(widest, p.nth, 1, MM_CHUNK_ALIGN), 0);
        double weight = bytes * (kinds[k] == PH_HEAD ? 1 : c->m->hp.n_layer);
        sum += weight;
        planned += weight * busiest;
        one_slice += weight * before;
    }
    c->plan = (td_ctx_plan){.busiest = planned / sum, .one_slice_busiest = one_slice / sum};
    c->planned = true;
    c->planned_tiled = use_tiles(c);
}

/* The plan for what the next pass reads: made on the first phased pass,
 * and again when FAST's tiled copies come or go with the numerics. */
static void ensure_plan(td_ctx *c) {
    if (!c->planned || c->planned_tiled != use_tiles(c)) plan_phases(c);
}

void td_ctx_plan_report(td_ctx *c, td_ctx_plan *out) {
    ensure_plan(c);
    *out = c->plan;
}

_Static_assert(PH_HEAD + 1 == TD_PASS_STEPS, "a profile step per phase kind");

const char *td_pass_step_name(int step) {
    static const char *const names[TD_PASS_STEPS] = {
        [PH_EMBED] = "embed",        [PH_ATTN_NORM] = "attn norm", [PH_QKV] = "qkv",
        [PH_QKV_FINISH] = "rope+kv", [PH_ATTN] = "attention",      [PH_ATTN_QUANT] = "attn quant",
        [PH_WO] = "wo",              [PH_FFN_NORM] = "ffn norm",   [PH_GATE_UP] = "gate/up",
        [PH_FFN_QUANT] = "ffn quant", [PH_DOWN] = "down",          [PH_OUT_NORM] = "out norm",
        [PH_HEAD] = "head"};
    return step >= 0 && step < TD_PASS_STEPS ? names[step] : "?";
}

int td_ctx_set_pass_profile(td_ctx *c, bool on, td_err *err) {
    free(c->phase_ns);
    c->phase_ns = NULL;
    c->profile = (td_pass_profile){.threads = td_pool_size(c->pool)};
    if (!on) return TD_OK;
    size_t n = (size_t)td_pool_size(c->pool) * ((size_t)c->m->hp.n_layer * PHASES_PER_LAYER + 3) * 2;
    c->phase_ns = calloc(n, sizeof *c->phase_ns);
    if (!c->phase_ns) return td_err_set(err, TD_E_NOMEM, "out of memory for a profile of the pass");
    return TD_OK;
}

void td_ctx_pass_profile(const td_ctx *c, td_pass_profile *out) { *out = c->profile; }

/* Adds a timed pass's counts to the sums by step, and zeroes them. */
static void profile_add(td_ctx *c, const td_phase *ph, int64_t n, double wall_s) {
    td_pass_profile *pr = &c->profile;
    for (int t = 0; t < pr->threads; t++)
        for (int64_t i = 0; i < n; i++) {
            int64_t *ns = c->phase_ns + ((size_t)t * (size_t)n + (size_t)i) * 2;
            pr->wait_s[ph[i].kind] += (double)ns[0] * 1e-9;
            pr->work_s[ph[i].kind] += (double)ns[1] * 1e-9;
            ns[0] = ns[1] = 0;
        }
    pr->wall_s += wall_s;
    pr->passes++;
}

/* Row r of src, n_in wide, quantized for weights of type wtype into its
 * row of xq. */
static void quantize_row(td_ctx *c, uint32_t wtype, const float *src, int64_t n_in, int64_t r) {
    size_t row_bytes = td_quant_row_bytes(td_quant_traits(wtype)->vec_dot_type, n_in);
    td_quant_activations(wtype, src, n_in, 1, (char *)c->xq + (size_t)r * row_bytes);
}

static void phase_run(void *arg, const td_phase *ph, int64_t lo, int64_t hi, int ith) {
    const phased_pass *p = arg;
    td_ctx *c = p->c;
    const td_model *m = c->m;
    const td_hparams *hp = &m->hp;
    const int64_t E = hp->n_embd;
    const int32_t l = ph->arg;
    const td_layer *ly = ph->kind == PH_EMBED || ph->kind >= PH_OUT_NORM ? NULL : &m->layers[l];
    switch ((enum pass_phase)ph->kind) {
    case PH_EMBED:
        for (int64_t r = lo; r < hi; r++) embed_row(c, p->rows, (int32_t)r);
        return;
    case PH_ATTN_NORM:
    case PH_FFN_NORM: {
        const float *w = ph->kind == PH_ATTN_NORM ? ly->attn_norm : ly->ffn_norm;
        uint32_t wt = ph->kind == PH_ATTN_NORM ? ly->wq.type : ly->w_gate.type;
        td_op_rmsnorm_rows(c->xn + lo * E, c->x + lo * E, w, E, hp->rms_eps, hi - lo, E);
        for (int64_t r = lo; r < hi; r++) quantize_row(c, wt, c->xn + r * E, E, r);
        return;
    }
    case PH_QKV_FINISH:
        for (int64_t r = lo; r < hi; r++) qkv_finish_row(c, p->kv, p->rows, (int32_t)r, l);
        return;
    case PH_ATTN: {
        attn_job aj = {.c = c, .kv = p->kv, .rows = p->rows, .n_rows = p->n_rows, .layer = l};
        attn_range(&aj, ith, lo, hi);
        return;
    }
    case PH_ATTN_QUANT:
        for (int64_t r = lo; r < hi; r++) quantize_row(c, ly->wo.type, c->xn + r * ly->wo.n_in, ly->wo.n_in, r);
        return;
    case PH_FFN_QUANT:
        for (int64_t r = lo; r < hi; r++)
            quantize_row(c, ly->w_down.type, c->gate + r * ly->w_down.n_in, ly->w_down.n_in, r);
        return;
    case PH_OUT_NORM:
        for (int64_t i = lo; i < hi; i++) {
            int32_t r = c->out_idx[i];
            td_op_rmsnorm(c->xn + i * E, c->x + r * E, m->output_norm, E, hp->rms_eps);
            quantize_row(c, m->output.type, c->xn + i * E, E, i);
        }
        return;
    case PH_QKV:
    case PH_WO:
    case PH_GATE_UP:
    case PH_DOWN:
    case PH_HEAD: {
        mm_job job = phase_mm(p, (enum pass_phase)ph->kind, l);
        for (int64_t u = lo; u < hi; u++) mm_unit(&job, u);
        return;
    }
    }
}

/* Whether the pass can run as phases: one rank, an order that sums whole
 * rows, and each group of weights read from one quantized input (so one
 * quantization per group, as the job-per-matmul pass does). */
static bool phases_fit(const td_ctx *c) {
    return c->schedule == TD_SCHEDULE_PHASES && c->groups_share_input && !c->comm && c->m->shard.size == 1 &&
           c->numerics != TD_NUMERICS_TP_INVARIANT;
}

/* Whether wq, wk, wv (and w_gate, w_up) of every layer take one quantized
 * input: the model's types decide it, once. */
static bool groups_share_input(const td_model *m) {
    for (int32_t l = 0; l < m->hp.n_layer; l++) {
        const td_layer *ly = &m->layers[l];
        uint32_t q = td_quant_traits(ly->wq.type)->vec_dot_type, g = td_quant_traits(ly->w_gate.type)->vec_dot_type;
        if (td_quant_traits(ly->wk.type)->vec_dot_type != q || td_quant_traits(ly->wv.type)->vec_dot_type != q ||
            td_quant_traits(ly->w_up.type)->vec_dot_type != g)
            return false;
    }
    return true;
}

static void phase_add(td_phase *ph, int64_t *n, enum pass_phase kind, int32_t arg, int64_t n_units, int64_t chunk) {
    ph[*n] = (td_phase){.kind = kind, .arg = arg, .n_units = n_units, .chunk = chunk};
    (*n)++;
}

/* The layers and the head of a pass (rows checked, slots and RoPE angles
 * set, rows grouped) as one job. */
static void forward_phased(td_ctx *c, td_kv *kv, const td_row *rows, int32_t n_rows, float *logits,
                           const uint8_t *skip) {
    const td_model *m = c->m;
    const td_hparams *hp = &m->hp;
    phased_pass p = {.c = c, .kv = kv, .rows = rows, .n_rows = n_rows, .logits = logits,
                     .nth = td_pool_size(c->pool)};
    ensure_plan(c);
    for (int32_t r = 0; r < n_rows; r++)
        if (rows[r].logits) c->out_idx[p.n_out++] = r;
    int64_t n_items = (int64_t)n_rows * hp->n_head;
    p.attn_chunk = attn_chunk(n_items, p.nth);
    /* norms in claims of up to four rows (td_op_rmsnorm_rows interleaves
     * them), but no fewer claims than threads while rows allow */
    int64_t norm_chunk = (n_rows + p.nth - 1) / p.nth;
    if (norm_chunk > 4) norm_chunk = 4;
    if (norm_chunk < 1) norm_chunk = 1;
    td_phase *ph = c->phases;
    int64_t n = 0;
    phase_add(ph, &n, PH_EMBED, 0, n_rows, 1);
    for (int32_t l = 0; l < hp->n_layer; l++) {
        if (skip && skip[l]) continue;
        for (int k = PH_ATTN_NORM; k <= PH_DOWN; k++) {
            int64_t units = n_rows, chunk = 1;
            if (k == PH_ATTN_NORM || k == PH_FFN_NORM) {
                chunk = norm_chunk;
            } else if (k == PH_ATTN) {
                units = n_items;
                chunk = p.attn_chunk;
            } else if (k == PH_QKV || k == PH_WO || k == PH_GATE_UP || k == PH_DOWN) {
                mm_job job = phase_mm(&p, (enum pass_phase)k, l);
                units = mm_units(&job);
            }
            phase_add(ph, &n, (enum pass_phase)k, l, units, chunk);
        }
    }
    if (p.n_out > 0) {
        phase_add(ph, &n, PH_OUT_NORM, 0, p.n_out, 1);
        mm_job head = phase_mm(&p, PH_HEAD, 0);
        phase_add(ph, &n, PH_HEAD, 0, mm_units(&head), 1);
    }
    if (!c->phase_ns) {
        td_pool_run_phases(c->pool, ph, n, phase_run, &p);
        return;
    }
    double t0 = td_now_sec();
    td_pool_run_phases_timed(c->pool, ph, n, phase_run, &p, c->phase_ns);
    profile_add(c, ph, n, td_now_sec() - t0);
}

static int forward_pass(td_ctx *c, td_kv *kv, const td_row *rows, int32_t n_rows, float *logits,
                        const uint8_t *skip, td_err *err) {
    const td_model *m = c->m;
    const td_hparams *hp = &m->hp;
    c->device_rows = 0;
    int rc = bind_cache(c, kv, err);
    if (rc) return rc;
    rc = check_rows(c, kv, rows, n_rows, err);
    if (rc) return rc;
    if (c->gpu) return forward_cuda(c, kv, rows, n_rows, logits, NULL, skip, err);
    if (!c->tiles_asked && fast_kernels(c->numerics)) {
        c->tiled = td_model_tile(m);
        c->tiles_asked = true;
    }
    const td_shard *sh = &m->shard;
    if (sh->size > 1 && !c->comm)
        return td_err_set(err, TD_E_ARG, "rank %d of a model split %d ways: the context has no communicator",
                          sh->rank, sh->size);
    int32_t group = hp->n_head / hp->n_head_kv;
    if (c->numerics == TD_NUMERICS_TP_INVARIANT && !sh->chunks_ok)
        return td_err_set(err, TD_E_UNSUPPORTED,
                          "numerics tp-invariant: chunks of %d attention / %d FFN inputs are not whole blocks of "
                          "this model's weight types", group * hp->head_dim, sh->ff_chunk);
    int32_t n_logits = 0;
    for (int32_t i = 0; i < n_rows; i++) n_logits += rows[i].logits;
    if ((rc = grow_tp(c, n_rows, n_logits, err))) return rc;
    int32_t max_pos = 0; /* a row attends to at most slot + 1 positions */
    for (int32_t i = 0; i < n_rows; i++)
        if (c->slot[i] + 1 > max_pos) max_pos = c->slot[i] + 1;
    if (grow_scores(c, max_pos + 8)) /* + the padding td_attn_query asks for */
        return td_err_set(err, TD_E_NOMEM, "out of memory for attention scores");
    group_rows(c, rows, n_rows);

    rope_table(c, rows, n_rows);
    if (phases_fit(c)) {
        forward_phased(c, kv, rows, n_rows, logits, skip);
        for (int32_t r = 0; r < n_rows; r++) kv->len[rows[r].seq] = c->slot[r] + 1;
        return TD_OK;
    }

    int64_t E = hp->n_embd, hd = hp->head_dim;
    if ((rc = embed_rows(c, rows, n_rows, err))) return rc;

    for (int32_t l = 0; l < hp->n_layer; l++) {
        if (skip && skip[l]) continue;
        const td_layer *ly = &m->layers[l];
        td_op_rmsnorm_rows(c->xn, c->x, ly->attn_norm, E, hp->rms_eps, n_rows, E);
        const td_weight *qkv_w[3] = {&ly->wq, &ly->wk, &ly->wv};
        float *qkv_y[3] = {c->q, c->k, c->v};
        matmuls(c, c->xn, n_rows, 3, qkv_w, qkv_y, MM_THEN_NOTHING, NULL);
        for (int32_t r = 0; r < n_rows; r++) qkv_finish_row(c, kv, rows, r, l);
        int64_t n_items = (int64_t)n_rows * sh->n_head;
        int nth = td_pool_size(c->pool);
        attn_job aj = {.c = c, .kv = kv, .rows = rows, .n_rows = n_rows, .layer = l, .n_items = n_items,
                       .chunk = attn_chunk(n_items, nth)};
        atomic_init(&aj.next, 0);
        td_pool_run(c->pool, attn_worker, &aj);

        if ((rc = split_projection(c, &ly->wo, c->xn, n_rows, (int64_t)group * hd, hp->n_head_kv, err))) return rc;

        td_op_rmsnorm_rows(c->xn, c->x, ly->ffn_norm, E, hp->rms_eps, n_rows, E);
        const td_weight *gu_w[2] = {&ly->w_gate, &ly->w_up};
        float *gu_y[2] = {c->gate, c->up};
        matmuls(c, c->xn, n_rows, 2, gu_w, gu_y, MM_THEN_SILU_MUL, NULL);
        if ((rc = split_projection(c, &ly->w_down, c->gate, n_rows, sh->ff_chunk, hp->n_ff / sh->ff_chunk, err)))
            return rc;
    }
    for (int32_t r = 0; r < n_rows; r++) kv->len[rows[r].seq] = c->slot[r] + 1;

    int32_t n_out = 0;
    for (int32_t r = 0; r < n_rows; r++)
        if (rows[r].logits) {
            td_op_rmsnorm(c->xn + n_out * E, c->x + r * E, m->output_norm, E, hp->rms_eps);
            n_out++;
        }
    if (n_out > 0) return output_logits(c, n_out, logits, err);
    return TD_OK;
}
