/* model.h — llama-family transformer on the CPU: weights, paged KV cache and
 * the batched forward pass.
 *
 * A forward pass takes rows (sequence, position, token); rows of different
 * sequences may share one pass. Each row attends to its own sequence's cached
 * positions [0, pos] (its own K/V is written at pos first). Logits come back
 * for the rows that ask for them, in row order. A row's logits are bitwise
 * identical whatever else shares the pass (batch invariance).
 *
 * Weights stay in the GGUF mapping; a td_model borrows the td_gguf, which must
 * outlive it. Shapes in comments: (rows, cols) with cols contiguous.
 *
 * Threads (tests/unit/test_threads.c, run under ThreadSanitizer):
 * - td_model (and its td_gguf): read-only once loaded; share it between any
 *   number of threads. Free it after the last context using it is gone.
 *   (The one write after loading, the upload of the weights by the first
 *   CUDA context, happens once under a lock inside the model.)
 * - td_ctx: one thread at a time. A pass writes only its context and the
 *   td_kv it is given (its scratch lives in the context, never in the cache
 *   or the model), so passes of different contexts on different caches run
 *   at once. Contexts may share a td_pool: its jobs take turns (util.h).
 * - td_kv: one thread at a time: a pass writes the lengths and pages of its
 *   sequences and the byte count; truncate and compact write too.
 */
#ifndef TD_MODEL_H
#define TD_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "comm/comm.h"
#include "gguf/gguf.h"
#include "quant/quant.h"
#include "sample/sample.h"
#include "util/util.h"

typedef enum td_rope_kind { TD_ROPE_NORM = 0, TD_ROPE_NEOX = 1 } td_rope_kind;

typedef struct td_hparams {
    char arch[32];
    int32_t n_vocab, n_embd, n_layer, n_ff;
    int32_t n_head, n_head_kv, head_dim, n_rot;
    int32_t n_ctx_train;
    float rms_eps, rope_base, rope_freq_scale;
    td_rope_kind rope_kind;
    bool qkv_bias, tied_output;
} td_hparams;

typedef struct td_model td_model;

int td_model_load(const td_gguf *g, td_model **out, td_err *err);
/* Tensor parallelism: rank `rank` of a group of `size` processes loads only
 * its part of the model and copies it out of the mapping (whose pages it
 * then releases; td_gguf_release_data): its KV heads with their query heads
 * (q/k/v rows, the attention output's matching inputs), a contiguous part
 * of the FFN (gate/up rows, down's inputs) and of the vocabulary (output
 * head and embedding rows). Splits may be uneven (3 KV heads on 2 ranks:
 * 2 + 1). TD_E_UNSUPPORTED, naming the tensor, for a split that leaves a
 * rank without attention heads. size 1 is td_model_load. Every rank of the
 * group then runs the same passes with a context given the group's
 * communicator (td_ctx_set_comm); hparams stay the whole model's. */
int td_model_load_shard(const td_gguf *g, int32_t rank, int32_t size, td_model **out, td_err *err);
void td_model_free(td_model *m); /* accepts NULL */
const td_hparams *td_model_hparams(const td_model *m);
/* Bytes of weights one decode step reads (every matrix once) — of this
 * rank's part for a split model. */
uint64_t td_model_weight_bytes(const td_model *m);
int32_t td_model_tp_rank(const td_model *m); /* 0 unless split */
int32_t td_model_tp_size(const td_model *m); /* 1 unless split */

/* ---- KV cache: per-sequence pages, grown on demand ---- */
typedef struct td_kv td_kv;
/* max_seqs sequences of at most max_len positions each. NULL on failure,
 * with the reason in err (TD_E_ARG, TD_E_NOMEM). */
td_kv *td_kv_create(const td_model *m, int32_t max_seqs, int32_t max_len, td_err *err);
void td_kv_destroy(td_kv *kv);
int32_t td_kv_max_len(const td_kv *kv);
int32_t td_kv_max_seqs(const td_kv *kv);
int32_t td_kv_seq_len(const td_kv *kv, int32_t seq);
/* Forgets positions >= len (rejected drafts roll back). len <= seq_len. */
int td_kv_truncate(td_kv *kv, int32_t seq, int32_t len);
/* Bytes currently allocated for pages. */
size_t td_kv_bytes(const td_kv *kv);
/* After a tree pass that appended nodes at slots [base, len): keeps the nodes
 * keep[0..n_keep) (ascending offsets from base, e.g. the accepted path) by
 * moving them to [base, base+n_keep), and sets the length to base+n_keep. */
int td_kv_compact(td_kv *kv, int32_t seq, int32_t base, const int32_t *keep, int32_t n_keep);

/* ---- forward ---- */
/* Linear rows (tree == false) continue their sequence in order: pos equals
 * the cached length plus the number of the sequence's earlier rows, and the
 * row attends to positions [0, pos].
 * Tree rows (speculative token trees) are appended after the cache in batch
 * order; a root (parent -1) has pos == cached length, a child pos ==
 * parent's pos + 1, and each attends to the cache plus its ancestors only.
 * A chain of tree rows computes bitwise what the same linear rows compute.
 * All rows of one sequence in a batch are of one kind. */
typedef struct td_row {
    int32_t seq;    /* 0 .. max_seqs-1 */
    int32_t pos;    /* position (RoPE) */
    int32_t token;
    bool logits;    /* return logits for this row */
    bool tree;      /* tree node */
    int32_t parent; /* tree nodes: batch index of the parent row, or -1 */
} td_row;

/* A linear row (the common case). */
static inline td_row td_row_linear(int32_t seq, int32_t pos, int32_t token, bool logits) {
    td_row r = {seq, pos, token, logits, false, 0};
    return r;
}

/* Scratch for passes of up to max_rows rows; owns no weights. One context
 * per thread of control; the pool is borrowed. */
typedef struct td_ctx td_ctx;
/* NULL on failure, with the reason in err (TD_E_ARG, TD_E_NOMEM). */
td_ctx *td_ctx_create(const td_model *m, int32_t max_rows, td_pool *pool, td_err *err);
void td_ctx_destroy(td_ctx *c);
int32_t td_ctx_max_rows(const td_ctx *c);
/* The summation order (quant.h); TD_NUMERICS_FAST unless set. In
 * TD_NUMERICS_LLAMACPP a pass of a single row also computes attention in
 * llama.cpp's one-token order, so its logits differ in the last bits from
 * the same row inside a larger pass: not batch invariant, and speculative
 * decoding (td_spec_run) refuses such a context. The other two orders are
 * batch invariant. */
void td_ctx_set_numerics(td_ctx *c, td_numerics order);
td_numerics td_ctx_numerics(const td_ctx *c);

/* How a CPU pass goes to the pool's threads. TD_SCHEDULE_PHASES (the
 * default): an unsplit model's pass is one pool job of ordered phases that
 * the threads go through together, per-row work (norms, RoPE, cache stores,
 * quantization) spread over the rows. TD_SCHEDULE_JOBS: one pool job per
 * matmul group, attention and quantization, the per-row work on the calling
 * thread: what a split model and the tp-invariant order always take. Both
 * give the same bits; the choice exists for benchmarks and tests. */
typedef enum td_schedule { TD_SCHEDULE_PHASES, TD_SCHEDULE_JOBS } td_schedule;
void td_ctx_set_schedule(td_ctx *c, td_schedule s);

/* How evenly the phased pass's matmuls fall on the pool's threads: the
 * busiest thread's weight bytes per pass over an even share, with the
 * planned chunks (td_claim_plan) and with one slice of columns per thread,
 * the rule before plans. A figure of shapes and thread count, not of
 * timing: it is the same on any machine. It reflects whether the context
 * reads tiled copies, made on its first FAST pass. */
typedef struct td_ctx_plan {
    double busiest;           /* 1.0 is a perfect split */
    double one_slice_busiest;
} td_ctx_plan;
void td_ctx_plan_report(td_ctx *c, td_ctx_plan *out);

/* Where the threads' time goes in phased passes, while switched on
 * (td_ctx_set_pass_profile; off by default: it reads the clock twice per
 * thread and phase). Per step of a pass (td_pass_step_name: a layer's ten
 * steps, summed over the layers, and the embedding, output norm and head),
 * the thread-seconds spent on its units and spent waiting for it to finish;
 * threads x wall time less both sums is time outside the job (a thread
 * entering late or leaving early, the pool's hand-over). */
#define TD_PASS_STEPS 13
typedef struct td_pass_profile {
    int64_t passes;
    int threads;
    double wall_s;                /* over all passes */
    double work_s[TD_PASS_STEPS]; /* summed over threads */
    double wait_s[TD_PASS_STEPS];
} td_pass_profile;
const char *td_pass_step_name(int step); /* "qkv", "attention", ...; "?" outside 0..TD_PASS_STEPS-1 */
/* on: allocates the counts (TD_E_NOMEM) and starts them at zero; off frees
 * them. A pass that does not take the phased path counts nothing. */
int td_ctx_set_pass_profile(td_ctx *c, bool on, td_err *err);
void td_ctx_pass_profile(const td_ctx *c, td_pass_profile *out);

/* ---- tensor parallelism ----
 * A context of a split model computes its rank's part of every pass and
 * combines the parts over comm (borrowed; one context per communicator, as
 * its collectives must come in the same order on every rank): the
 * embedding lookup and the attention-output and MLP-down projections
 * (all-reduce, or in TD_NUMERICS_TP_INVARIANT an all-gather of per-chunk
 * partial sums), and the logits (all-gathered: every rank gets every row's
 * logits, so every rank samples the same token). Every rank must run the
 * same passes on the same rows. TD_E_ARG when comm's size or rank is not
 * the model's. An unsplit model needs no communicator.
 *
 * A CUDA context (td_ctx_create_on) of a split model is a rank on its
 * device: the same points meet in the same order (cuda.h, "tensor-parallel
 * groups"), in its reference, FAST or invariant order, over MPI (host
 * buffers, staged) or NCCL (its device's buffers; TD_E_ARG for another
 * device's). It joins once: a second, different communicator is
 * TD_E_ARG. A CPU context refuses NCCL's (TD_E_ARG). A CUDA rank's
 * reference order carries the bits of a CPU rank of the same split in
 * TD_NUMERICS_REFERENCE.
 *
 * TD_NUMERICS_TP_INVARIANT: the attention output and MLP down projections
 * are sums of per-chunk partials (one chunk per KV head's query heads; one
 * per fixed block of FFN inputs, td_shard.ff_chunk) added left to right; a
 * rank computes its chunks' partials and all-gathers the rest, so logits
 * are bitwise those of the unsplit model in the same mode, for any number
 * of ranks. Batch invariant, like FAST whose kernels it uses. */
int td_ctx_set_comm(td_ctx *c, td_comm *comm, td_err *err);
/* What the context's collectives moved since it was created: payload
 * bytes (all-reduce: the buffer; all-gather: what every rank receives in
 * all), number of calls and seconds spent in them. */
typedef struct td_tp_stats {
    uint64_t allreduce_bytes, gather_bytes;
    int64_t calls;
    double sec;
} td_tp_stats;
void td_ctx_tp_stats(const td_ctx *c, td_tp_stats *out);

/* ---- tensor-parallel groups in a server (group.c) ----
 * Only rank 0 (the leader) takes requests. It leads its context and cache:
 * from td_model_group_lead on, each td_model_forward(_skip) of that context
 * and each td_kv_truncate / td_kv_compact of that cache is first broadcast
 * (the rows, positions and tokens; the sequence operation) to the other
 * ranks, which run the same step on their shard in td_model_group_follow.
 * Steps are taken one at a time under a lock, so the leader's threads may
 * call them concurrently (the MPI backend is then used from several threads
 * in turn). td_model_group_end releases the followers. The followers' cache
 * and context must be created with the same sizes as the leader's. */
typedef struct td_group td_group;
td_group *td_model_group_lead(td_comm *comm, td_ctx *c, td_kv *kv, td_err *err);
/* Broadcasts the stop, detaches from the context and cache. Accepts NULL. */
void td_model_group_end(td_group *g);
/* Runs the leader's steps until it ends the group (TD_OK) or the group
 * fails (TD_E_IO). A step that fails on this rank fails on the leader too
 * (same rows, same checks) and is skipped. */
int td_model_group_follow(td_comm *comm, td_ctx *c, td_kv *kv, td_err *err);

/* ---- devices ----
 * A context computes on the CPU (the pool's threads) or on a CUDA device.
 * On CUDA the model's weights are uploaded by the first context there and
 * shared by later ones (freed with the model); a KV cache moves to the
 * device of the first context that runs a pass on it and stays there. A
 * CUDA context computes TD_NUMERICS_REFERENCE (its logits carry the CPU
 * reference's bits; the default there) or TD_NUMERICS_FAST, the device's
 * own order (cuda.h: batch invariant, close to the reference, not its
 * bits), or TD_NUMERICS_TP_INVARIANT: wo's and w_down's chunk partials in
 * the reference order, added in chunk order, so a split model's logits are
 * the unsplit model's on the device in that mode (not the CPU's
 * tp-invariant bits; the chunks are uploaded on its first pass, which
 * fails with TD_E_UNSUPPORTED where they are not whole blocks);
 * td_ctx_set_numerics maps TD_NUMERICS_LLAMACPP to the reference. */
typedef enum td_device_kind { TD_DEVICE_CPU = 0, TD_DEVICE_CUDA = 1 } td_device_kind;
typedef struct td_device {
    td_device_kind kind;
    int32_t index; /* CUDA device number, or TD_DEVICE_LOCAL */
} td_device;
/* "cuda" without a number: device 0, or, in a process an MPI launcher
 * started (a tensor-parallel rank), its local rank on the node modulo the
 * devices visible, so that the ranks of one node spread over its GPUs. */
#define TD_DEVICE_LOCAL (-1)
/* "cpu", "cuda" (TD_DEVICE_LOCAL) or "cuda:N". */
int td_device_parse(const char *s, td_device *out, td_err *err);
/* d with TD_DEVICE_LOCAL replaced by the device it names here. */
td_device td_device_resolve(td_device d);
void td_device_format(td_device d, char *buf, size_t cap);
/* td_ctx_create on a device; says why when it cannot (no GPU, a build
 * without CUDA, a weight type the device has no kernel for). */
td_ctx *td_ctx_create_on(const td_model *m, int32_t max_rows, td_pool *pool, td_device dev, td_err *err);
td_device td_ctx_device(const td_ctx *c);
/* A CUDA context's kernel-time profile (see td_cuda_ctx_profile) into buf;
 * "" on the CPU. */
void td_ctx_profile(const td_ctx *c, char *buf, size_t cap);

/* Runs rows through the model, appending their K/V to the cache.
 * logits: (number of rows with .logits set, n_vocab). */
int td_model_forward(td_ctx *c, td_kv *kv, const td_row *rows, int32_t n_rows,
                     float *logits, td_err *err);
/* What a pass works out from its logits where they are, beside them or
 * instead of them (on a CUDA context only these cross to the host: a
 * verify pass of 16 rows would otherwise copy 3 MB of logits). Arrays are
 * indexed by j, the j-th row with logits.
 *   picks: NULL, or each row's pick. plans NULL: td_sample_argmax of the
 *     row (what td_sampler_pick gives at temperature 0 without a
 *     repetition penalty). plans given (one per row, td_sample_plan_make):
 *     td_sampler_pick's token for that plan, or -1 where the row's summary
 *     is undecided (sample.h): the caller then picks from the row's logits.
 *     A rejection plan (td_sample_plan_make_reject) gives td_sampler_reject's
 *     token, and its verdict in accepted[j] (NULL: not wanted).
 *   tops (rows x TD_SAMPLE_TOP_MAX, or NULL; with plans): row j's
 *     td_sample_top_ids for its plan's n_top at tops[j * TD_SAMPLE_TOP_MAX],
 *     or -1 there where the summary left them to the row (or none asked).
 *   scores: NULL, or each row's td_sample_score_row for targets[j] (targets
 *     NULL: none) and n_alt alternatives (0..TD_SAMPLE_ALT_MAX). With it,
 *     each log-probability is bit for bit what the row gives (sample.h,
 *     "scoring where the logits are"); alternatives it left to the row
 *     (n_alt 0 where some were asked) come from the row. */
typedef struct td_pass_out {
    int32_t *picks;
    const td_sample_plan *plans;
    bool *accepted;
    int32_t *tops;
    td_sample_score *scores;
    const int32_t *targets;
    int32_t n_alt;
} td_pass_out;
/* td_model_forward, and what out asks for. On a CUDA context logits may be
 * NULL (given, they are filled too): rows a caller needs whole then come
 * from td_model_pass_logits. A CPU context needs logits (it works from
 * them). */
int td_model_forward_out(td_ctx *c, td_kv *kv, const td_row *rows, int32_t n_rows, float *logits,
                         const td_pass_out *out, td_err *err);
/* td_model_forward_out for picks (and observations) alone. */
int td_model_forward_picks(td_ctx *c, td_kv *kv, const td_row *rows, int32_t n_rows, const td_sample_plan *plans,
                           float *logits, int32_t *picks, int32_t *tops, td_err *err);
/* td_model_forward_out for scores alone: scoring and perplexity. */
int td_model_forward_scores(td_ctx *c, td_kv *kv, const td_row *rows, int32_t n_rows, const int32_t *targets,
                            int32_t n_alt, float *logits, td_sample_score *scores, td_err *err);
/* Row j (0 .. rows with logits - 1) of the last pass's logits, into
 * out[n_vocab], on a CUDA context that kept them (td_model_forward_out
 * with NULL logits), until its next pass.
 * TD_E_UNSUPPORTED on the CPU. */
int td_model_pass_logits(td_ctx *c, int32_t j, float *out, td_err *err);
/* Same, with layers l where skip[l] != 0 left out (layer-skip self-drafting:
 * the residual stream passes those layers unchanged; their KV is not
 * written, so use a cache of its own). skip may be NULL. */
int td_model_forward_skip(td_ctx *c, td_kv *kv, const td_row *rows, int32_t n_rows, float *logits,
                          const uint8_t *skip, td_err *err);

#endif
