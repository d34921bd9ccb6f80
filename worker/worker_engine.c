/* worker_engine.c — the worker's model and sequences: admission with a
 * cache-token budget, the sequence table (coordinator keys -> cache slots),
 * the pass token every model call takes in turn, and the combining of
 * concurrent verifications into one forward pass.
 *
 * Admission reserves prompt + max new tokens (+ one draft window) of cache
 * for a sequence up front, so a stream admitted under load never runs out of
 * room mid-generation; sequences left idle longer than idle_timeout (their
 * coordinator died) are reclaimed when room is needed.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "gguf/gguf.h"
#include "metrics/metrics.h"
#include "quant/quant.h"
#include "worker.h"

typedef struct slot {
    bool used;
    uint64_t key;
    int64_t reserved;
    double last_use;
    bool busy;            /* a call is working on it now: never reclaimed */
    size_t drafted_at;    /* drafter slots: history length of the last proposal */
    bool doomed;          /* released while a call was working on it: freed when that call ends */
} slot;

/* One Verify call waiting for (or riding in) a pass. */
typedef struct waiter {
    td_verify_item item;
    const int32_t *commit_path;  /* NULL: nothing to commit first */
    int32_t n_commit;
    int32_t rows;
    bool taken, done;
    int rc;
    td_err err;
    td_pass_info pass;
    struct waiter *next;
} waiter;

struct td_worker_engine {
    td_worker_config cfg;
    td_worker_info info;
    td_gguf *gguf;
    td_model *model;
    td_tok *tok;
    td_pool *pool;
    td_ctx *ctx;
    td_kv *kv;               /* max_seqs + 1 slots: the last one is scoring's scratch */
    td_target *target;
    td_drafter *drafter;     /* drafter role: the draft model; verifier: layer-skip, made on first use */
    td_group *group;         /* rank 0 of a tensor-parallel group: leads ctx and kv */
    void *tok_gguf;
    size_t tok_gguf_size;
    float *score_logits;     /* (max_rows, n_vocab) */
    td_row *score_rows;
    td_sample_score *score_scores; /* (max_rows) */
    int32_t *score_targets;        /* (max_rows) */

    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_mutex_t score_lock;
    bool pass_busy;          /* the pass token: someone is running the model */
    waiter *queue_head, *queue_tail;
    slot *slots;             /* max_seqs target slots */
    slot *draft_slots;       /* max_seqs drafter slots */
    int64_t reserved;
    int64_t passes, rows;
    double mean_step_sec;
};

/* ---- the pass token ---- */

static void take_pass(td_worker_engine *e) {
    pthread_mutex_lock(&e->mu);
    while (e->pass_busy) pthread_cond_wait(&e->cv, &e->mu);
    e->pass_busy = true;
    pthread_mutex_unlock(&e->mu);
}

static void give_pass(td_worker_engine *e) {
    pthread_mutex_lock(&e->mu);
    e->pass_busy = false;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

void td_worker_engine_pass_take(td_worker_engine *e) { take_pass(e); }
void td_worker_engine_pass_give(td_worker_engine *e) { give_pass(e); }

void td_worker_engine_scratch(td_worker_engine *e, td_worker_scratch *out) {
    *out = (td_worker_scratch){e->ctx, e->kv, e->cfg.max_seqs, e->cfg.max_rows, e->info.vocab_size, e->cfg.ctx,
                               e->score_logits, e->score_rows, e->score_scores, e->score_targets, &e->score_lock};
}

/* ---- sequence table (under mu) ---- */

static int32_t find_slot(slot *t, int32_t n, uint64_t key) {
    for (int32_t i = 0; i < n; i++)
        if (t[i].used && t[i].key == key) return i;
    return -1;
}

/* ---- creation ---- */

static void fill_info(td_worker_engine *e) {
    td_worker_info *in = &e->info;
    td_sha256_hex(td_gguf_file_data(e->gguf), td_gguf_file_size(e->gguf), in->model_id);
    const char *name = NULL;
    size_t len = 0;
    if (td_gguf_get_str(e->gguf, "general.name", &name, &len))
        snprintf(in->model_name, sizeof in->model_name, "%.*s", (int)(len < 127 ? len : 127), name);
    else
        snprintf(in->model_name, sizeof in->model_name, "unnamed");
    in->vocab_hash = td_tok_vocab_hash(e->tok);
    in->vocab_size = td_model_hparams(e->model)->n_vocab;
    in->ctx = e->cfg.ctx;
    in->role = e->cfg.role;
    /* Same fingerprint, same bits: the file, the summation order, the kernel
     * family that computes it, the tensor-parallel layout, the backend, and
     * the revision of the orders' bits (a newer build may change them). */
    const bool gpu = e->cfg.device.kind == TD_DEVICE_CUDA;
    snprintf(in->fingerprint, sizeof in->fingerprint, "sha256=%.16s;numerics=%s;kernels=%s;tp=%d;backend=%s;rev=%d",
             in->model_id, td_numerics_name(e->cfg.numerics), gpu ? "cuda" : td_quant_kernel_name(),
             td_comm_size(e->cfg.comm), gpu ? "cuda" : "cpu", TD_NUMERICS_REVISION);
}

td_worker_engine *td_worker_engine_create(const td_worker_config *cfg, td_err *err) {
    td_worker_engine *e = calloc(1, sizeof *e);
    if (!e) {
        td_err_set(err, TD_E_NOMEM, "out of memory");
        return NULL;
    }
    e->cfg = *cfg;
    pthread_mutex_init(&e->mu, NULL);
    pthread_mutex_init(&e->score_lock, NULL);
    pthread_cond_init(&e->cv, NULL);
    int rc;
    /* The GPU computes its reference, FAST or invariant order: a request
     * may move only between workers whose bits agree (the fingerprint says
     * backend=cuda and the tp size). A GPU rank of a tensor-parallel group
     * meets the others over the group's communicator (model.h). */
    if (cfg->device.kind == TD_DEVICE_CUDA && cfg->numerics == TD_NUMERICS_LLAMACPP) {
        td_err_set(err, TD_E_ARG, "--device cuda computes --numerics reference, fast or tp-invariant (got %s)",
                   td_numerics_name(cfg->numerics));
        goto fail;
    }
    if ((rc = td_gguf_open(cfg->model_path, &e->gguf, err))) goto fail;
    if ((rc = td_model_load_shard(e->gguf, td_comm_rank(cfg->comm), td_comm_size(cfg->comm), &e->model, err)))
        goto fail;
    if ((rc = td_tok_create(e->gguf, &e->tok, err))) goto fail;
    const td_hparams *hp = td_model_hparams(e->model);
    if (e->cfg.ctx <= 0) e->cfg.ctx = hp->n_ctx_train > 0 && hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
    if (e->cfg.max_rows <= 0) e->cfg.max_rows = 256;
    if (e->cfg.prefill_chunk <= 0 || e->cfg.prefill_chunk > e->cfg.max_rows) e->cfg.prefill_chunk = e->cfg.max_rows < 64 ? e->cfg.max_rows : 64;
    if (e->cfg.max_seqs <= 0) e->cfg.max_seqs = 16;
    if (e->cfg.max_tokens <= 0) e->cfg.max_tokens = (int64_t)e->cfg.max_seqs * e->cfg.ctx;
    if (!(e->pool = td_pool_create(cfg->threads > 0 ? cfg->threads : td_cpu_count(), err))) goto fail;
    if (cfg->pin_threads && (rc = td_pool_pin(e->pool, err))) goto fail;
    if (!(e->ctx = td_ctx_create_on(e->model, e->cfg.max_rows, e->pool, e->cfg.device, err))) goto fail;
    td_ctx_set_numerics(e->ctx, e->cfg.numerics);
    if (cfg->comm && (rc = td_ctx_set_comm(e->ctx, cfg->comm, err))) goto fail;
    if (!(e->kv = td_kv_create(e->model, e->cfg.max_seqs + 1, e->cfg.ctx, err))) goto fail;
    /* rank 0 of a group: every pass and cache step reaches the other ranks */
    if (td_comm_size(cfg->comm) > 1 && td_comm_rank(cfg->comm) == 0 &&
        !(e->group = td_model_group_lead(cfg->comm, e->ctx, e->kv, err)))
        goto fail;
    if (!(e->target = td_spec_target_local_create(e->model, e->ctx, e->kv, err))) goto fail;
    if ((rc = td_tok_export_gguf(e->gguf, &e->tok_gguf, &e->tok_gguf_size, err))) goto fail;
    e->slots = calloc((size_t)e->cfg.max_seqs, sizeof *e->slots);
    e->draft_slots = calloc((size_t)e->cfg.max_seqs, sizeof *e->draft_slots);
    e->score_logits = malloc((size_t)e->cfg.max_rows * hp->n_vocab * sizeof(float));
    e->score_rows = malloc((size_t)e->cfg.max_rows * sizeof *e->score_rows);
    e->score_scores = malloc((size_t)e->cfg.max_rows * sizeof *e->score_scores);
    e->score_targets = malloc((size_t)e->cfg.max_rows * sizeof *e->score_targets);
    if (!e->slots || !e->draft_slots || !e->score_logits || !e->score_rows || !e->score_scores || !e->score_targets) {
        td_err_set(err, TD_E_NOMEM, "out of memory");
        goto fail;
    }
    if (cfg->role == TD_WORKER_DRAFTER) {
        td_sample_params sp = td_sample_defaults();
        if (!(e->drafter = td_spec_model_drafter_create(e->model, e->pool, &sp, e->cfg.max_seqs, e->cfg.ctx, err)))
            goto fail;
    }
    fill_info(e);
    return e;
fail:
    td_worker_engine_destroy(e);
    return NULL;
}

void td_worker_engine_destroy(td_worker_engine *e) {
    if (!e) return;
    td_model_group_end(e->group); /* the followers stop before the cache goes */
    td_drafter_destroy(e->drafter);
    td_target_destroy(e->target);
    td_kv_destroy(e->kv);
    td_ctx_destroy(e->ctx);
    td_pool_destroy(e->pool);
    td_tok_destroy(e->tok);
    td_model_free(e->model);
    td_gguf_close(e->gguf);
    free(e->tok_gguf);
    free(e->slots);
    free(e->draft_slots);
    free(e->score_logits);
    free(e->score_rows);
    free(e->score_scores);
    free(e->score_targets);
    pthread_mutex_destroy(&e->mu);
    pthread_mutex_destroy(&e->score_lock);
    pthread_cond_destroy(&e->cv);
    free(e);
}

int td_worker_engine_follow(td_worker_engine *e, td_err *err) {
    return td_model_group_follow(e->cfg.comm, e->ctx, e->kv, err);
}

const td_worker_info *td_worker_engine_info(const td_worker_engine *e) { return &e->info; }
const td_tok *td_worker_engine_tok(const td_worker_engine *e) { return e->tok; }
const void *td_worker_engine_tokenizer(const td_worker_engine *e, size_t *size) {
    *size = e->tok_gguf_size;
    return e->tok_gguf;
}

/* ---- verifier calls ---- */

/* Frees target slot idx (caller holds mu and the pass token). */
static void free_slot(td_worker_engine *e, int32_t idx) {
    e->target->ops->release(e->target, idx);
    e->reserved -= e->slots[idx].reserved;
    e->slots[idx] = (slot){.last_use = td_now_sec()}; /* its cache stays warm: LRU order */
}

/* The free slot for a new sequence (caller holds mu and the pass token),
 * in this order: with the prefix cache, the warm slot sharing the longest
 * prefix with the prompt, when the prompt keeps at least half of what that
 * slot holds (a chat's next turn); else a slot never used; else the least
 * recently used one, so the warm caches that go first are the oldest and a
 * long history is not thrown away for a few shared tokens (a common system
 * prompt). -1 when none is free; *reuse: the tokens the open will keep. */
static int32_t pick_free_slot(td_worker_engine *e, const int32_t *tokens, size_t n, int32_t *reuse) {
    int32_t best = -1, best_reuse = 0, empty = -1, lru = -1;
    for (int32_t i = 0; i < e->cfg.max_seqs; i++) {
        if (e->slots[i].used) continue;
        int32_t held = 0, r = 0;
        if (e->cfg.prefix_cache && e->target->ops->reusable) r = e->target->ops->reusable(e->target, i, tokens, n, &held);
        if (r > 0 && 2 * r >= held && r > best_reuse) {
            best = i;
            best_reuse = r;
        }
        if (held == 0 && empty < 0) empty = i;
        if (lru < 0 || e->slots[i].last_use < e->slots[lru].last_use) lru = i;
    }
    int32_t idx = best >= 0 ? best : empty >= 0 ? empty : lru;
    *reuse = idx < 0 || !e->cfg.prefix_cache || !e->target->ops->reusable
                 ? 0
                 : e->target->ops->reusable(e->target, idx, tokens, n, NULL);
    return idx;
}

/* Frees target slots idle past the timeout (their coordinator is gone).
 * Caller holds mu and the pass token. */
static void reclaim_idle(td_worker_engine *e, const char *req) {
    double now = td_now_sec();
    for (int32_t i = 0; i < e->cfg.max_seqs; i++) {
        slot *s = &e->slots[i];
        if (!s->used || s->busy || now - s->last_use < e->cfg.idle_timeout) continue;
        td_log(TD_LOG_WARN, req, "reclaiming sequence %016llx idle for %.0f s", (unsigned long long)s->key,
               now - s->last_use);
        free_slot(e, i);
    }
}

void td_worker_engine_reclaim(td_worker_engine *e) {
    take_pass(e);
    pthread_mutex_lock(&e->mu);
    reclaim_idle(e, NULL);
    pthread_mutex_unlock(&e->mu);
    give_pass(e);
}

int td_worker_prefill(td_worker_engine *e, const char *req, uint64_t key, const td_target_seq_params *p,
                      const int32_t *tokens, size_t n, int32_t *cached, int32_t *reused, td_err *err) {
    if (e->cfg.role != TD_WORKER_VERIFIER) return td_err_set(err, TD_WORKER_E_ROLE, "this worker is a drafter");
    if (n == 0) return td_err_set(err, TD_E_ARG, "prompt_ids: empty");
    if (n >= (size_t)e->cfg.ctx)
        return td_err_set(err, TD_E_RANGE, "prompt_ids: %zu tokens do not fit the context of %d", n, e->cfg.ctx);
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= e->info.vocab_size)
            return td_err_set(err, TD_E_ARG, "prompt_ids[%zu]: token %d outside the vocabulary (0..%d)", i, tokens[i],
                              e->info.vocab_size - 1);
    int64_t want = (int64_t)n + (p->max_new_tokens > 0 ? p->max_new_tokens : 0) + TD_DRAFT_MAX + 1;
    if (want > e->cfg.ctx) want = e->cfg.ctx;
    take_pass(e);
    pthread_mutex_lock(&e->mu);
    int rc = TD_OK;
    int32_t idx = -1, reuse = 0;
    if (find_slot(e->slots, e->cfg.max_seqs, key) >= 0) {
        rc = td_err_set(err, TD_WORKER_E_EXISTS, "sequence %016llx is already open", (unsigned long long)key);
    } else {
        for (int pass = 0; pass < 2 && idx < 0; pass++) {
            if (pass == 1) reclaim_idle(e, req);
            if (e->reserved + want > e->cfg.max_tokens) continue;
            idx = pick_free_slot(e, tokens, n, &reuse);
        }
        if (idx < 0) td_metrics_rejected("worker_full");
        if (idx < 0)
            rc = td_err_set(err, TD_WORKER_E_FULL,
                            "worker full: %lld of %lld cache tokens reserved, a sequence needs %lld; retry later",
                            (long long)e->reserved, (long long)e->cfg.max_tokens, (long long)want);
        else {
            e->slots[idx] = (slot){.used = true, .key = key, .reserved = want, .last_use = td_now_sec(), .busy = true};
            e->reserved += want;
        }
    }
    pthread_mutex_unlock(&e->mu);
    if (rc == TD_OK) {
        /* a long prompt goes in chunks, and verifications of other streams
         * run between them: one stream's prefill never stalls the others
         * for longer than a chunk */
        size_t chunk = (size_t)e->cfg.prefill_chunk, done = n < (size_t)reuse + chunk ? n : (size_t)reuse + chunk;
        td_target_seq_params po = *p;
        po.reuse_prefix = e->cfg.prefix_cache;
        rc = e->target->ops->open(e->target, idx, &po, tokens, done, err);
        while (rc == TD_OK && done < n) {
            give_pass(e);
            take_pass(e);
            size_t k = n - done < chunk ? n - done : chunk;
            rc = e->target->ops->extend(e->target, idx, tokens + done, k, err);
            done += k;
        }
        pthread_mutex_lock(&e->mu);
        if (rc) {
            e->reserved -= e->slots[idx].reserved;
            e->slots[idx] = (slot){.last_use = td_now_sec()};
        } else if (e->slots[idx].doomed) { /* released while it was being opened */
            free_slot(e, idx);
            rc = td_err_set(err, TD_E_IO, "sequence %016llx was released while it was being opened",
                            (unsigned long long)key);
        } else {
            e->slots[idx].busy = false;
            e->slots[idx].last_use = td_now_sec();
        }
        pthread_mutex_unlock(&e->mu);
        if (rc == TD_OK) {
            *cached = td_kv_seq_len(e->kv, idx);
            *reused = reuse;
            td_log(TD_LOG_INFO, req, "opened sequence %016llx: %zu prompt tokens (%d reused from the cache), %lld cache "
                   "tokens reserved", (unsigned long long)key, n, reuse, (long long)want);
        }
    }
    give_pass(e);
    return rc;
}

/* Marks the slot of key busy and returns it, or -1 (err set). */
static int32_t claim(td_worker_engine *e, uint64_t key, td_err *err) {
    pthread_mutex_lock(&e->mu);
    int32_t idx = find_slot(e->slots, e->cfg.max_seqs, key);
    if (idx < 0) td_err_set(err, TD_WORKER_E_NOT_FOUND, "sequence %016llx is not open here", (unsigned long long)key);
    else if (e->slots[idx].busy) {
        td_err_set(err, TD_E_ARG, "sequence %016llx has a call in progress", (unsigned long long)key);
        idx = -1;
    } else
        e->slots[idx].busy = true;
    pthread_mutex_unlock(&e->mu);
    return idx;
}

static void unclaim(td_worker_engine *e, int32_t idx) {
    pthread_mutex_lock(&e->mu);
    bool doomed = e->slots[idx].doomed;
    e->slots[idx].busy = false;
    e->slots[idx].last_use = td_now_sec();
    pthread_mutex_unlock(&e->mu);
    if (doomed) { /* a Release came while we worked on it */
        take_pass(e);
        pthread_mutex_lock(&e->mu);
        if (e->slots[idx].used && e->slots[idx].doomed && !e->slots[idx].busy) free_slot(e, idx);
        pthread_mutex_unlock(&e->mu);
        give_pass(e);
    }
}

/* Runs one pass for the waiters taken from the queue. A pass that fails for
 * one item's sake (its tree is invalid) is retried item by item so that the
 * others do not pay for it. Called with the pass token, without mu. */
static void run_pass(td_worker_engine *e, waiter **batch, int32_t n) {
    td_verify_item items[64];
    td_pass_info pass = {0};
    td_err err = {0};
    /* the commits carried by these verifications come first; one that fails
     * fails only its own call */
    int32_t m = 0;
    for (int32_t i = 0; i < n; i++) {
        waiter *w = batch[i];
        if (w->commit_path) {
            int rc = e->target->ops->commit(e->target, w->item.seq, w->commit_path, w->n_commit, &w->err);
            w->commit_path = NULL;
            if (rc) {
                w->rc = rc;
                continue;
            }
        }
        batch[m++] = w;
    }
    n = m;
    if (n == 0) return;
    for (int32_t i = 0; i < n; i++) items[i] = batch[i]->item;
    int rc = e->target->ops->verify(e->target, items, n, &pass, &err);
    if (rc == TD_OK) {
        for (int32_t i = 0; i < n; i++) {
            batch[i]->item = items[i];
            batch[i]->rc = TD_OK;
            batch[i]->pass = pass;
        }
    } else if (n == 1) {
        batch[0]->rc = rc;
        batch[0]->err = err;
    } else {
        for (int32_t i = 0; i < n; i++) run_pass(e, &batch[i], 1);
        return;
    }
    pthread_mutex_lock(&e->mu);
    if (rc == TD_OK) {
        e->passes++;
        e->rows += pass.rows;
        e->mean_step_sec = e->passes == 1 ? pass.sec : 0.9 * e->mean_step_sec + 0.1 * pass.sec;
    }
    pthread_mutex_unlock(&e->mu);
}

int td_worker_verify(td_worker_engine *e, const char *req, uint64_t key, const int32_t *commit_path, int32_t n_commit,
                     const td_draft *tree, td_node_result *nodes, int32_t *path, int32_t *n_path, td_pass_info *pass,
                     td_err *err) {
    (void)req;
    if (commit_path && (n_commit < 0 || n_commit > TD_DRAFT_MAX))
        return td_err_set(err, TD_E_ARG, "commit_path: %d nodes (at most %d)", n_commit, TD_DRAFT_MAX);
    if (e->cfg.role != TD_WORKER_VERIFIER) return td_err_set(err, TD_WORKER_E_ROLE, "this worker is a drafter");
    if (tree->n < 0 || tree->n > TD_DRAFT_MAX)
        return td_err_set(err, TD_E_ARG, "tokens: %d nodes (at most %d)", tree->n, TD_DRAFT_MAX);
    if (1 + tree->n > e->cfg.max_rows)
        return td_err_set(err, TD_E_RANGE, "tokens: %d nodes and the root need %d rows; this worker's passes hold %d "
                          "(--max-rows)", tree->n, 1 + tree->n, e->cfg.max_rows);
    int32_t idx = claim(e, key, err);
    if (idx < 0) return err->code;
    waiter me = {.item = {.seq = idx, .tree = tree, .nodes = nodes}, .rows = 1 + tree->n, .commit_path = commit_path,
                 .n_commit = n_commit};
    pthread_mutex_lock(&e->mu);
    if (e->queue_tail) e->queue_tail->next = &me;
    else e->queue_head = &me;
    e->queue_tail = &me;
    pthread_cond_broadcast(&e->cv); /* a leader gathering a pass counts arrivals */
    while (!me.done) {
        if (!e->pass_busy && !me.taken) {
            /* Lead a pass. Streams answered by the last pass come back at
             * nearly the same time; wait a moment for them so that passes
             * stay full instead of alternating one lone row with the rest
             * (at most a quarter of a pass, and never beyond 5 ms). */
            e->pass_busy = true;
            if (e->cfg.batching) {
                int32_t open = 0, queued = 0;
                for (int32_t i = 0; i < e->cfg.max_seqs; i++) open += e->slots[i].used;
                for (waiter *w = e->queue_head; w; w = w->next) queued++;
                double window = 0.25 * e->mean_step_sec;
                if (window > 0.005) window = 0.005;
                double until = td_now_sec() + window;
                while (queued < open && td_now_sec() < until) {
                    struct timespec ts;
                    clock_gettime(CLOCK_REALTIME, &ts);
                    long ns = ts.tv_nsec + 200000L; /* re-count every 0.2 ms */
                    ts.tv_sec += ns / 1000000000L;
                    ts.tv_nsec = ns % 1000000000L;
                    pthread_cond_timedwait(&e->cv, &e->mu, &ts);
                    queued = 0;
                    for (waiter *w = e->queue_head; w; w = w->next) queued++;
                }
            }
            waiter *batch[64];
            int32_t n = 0, rows = 0;
            int32_t max_items = e->cfg.batching ? 64 : 1;
            /* the first waiter always rides: one bigger than a pass would
             * otherwise wait for ever (the target refuses it instead) */
            while (e->queue_head && n < max_items && (n == 0 || rows + e->queue_head->rows <= e->cfg.max_rows)) {
                waiter *w = e->queue_head;
                e->queue_head = w->next;
                if (!e->queue_head) e->queue_tail = NULL;
                w->taken = true;
                rows += w->rows;
                batch[n++] = w;
            }
            waiter *taken[64];
            memcpy(taken, batch, (size_t)n * sizeof *batch);
            pthread_mutex_unlock(&e->mu);
            run_pass(e, batch, n);
            pthread_mutex_lock(&e->mu);
            for (int32_t i = 0; i < n; i++) taken[i]->done = true;
            e->pass_busy = false;
            pthread_cond_broadcast(&e->cv);
        } else {
            pthread_cond_wait(&e->cv, &e->mu);
        }
    }
    pthread_mutex_unlock(&e->mu);
    unclaim(e, idx);
    if (me.rc) {
        *err = me.err;
        return me.rc;
    }
    memcpy(path, me.item.path, (size_t)me.item.n_path * sizeof *path);
    *n_path = me.item.n_path;
    if (pass) *pass = me.pass;
    return TD_OK;
}

int td_worker_commit(td_worker_engine *e, const char *req, uint64_t key, const int32_t *path, int32_t n_path,
                     int32_t *cached, td_err *err) {
    (void)req;
    if (e->cfg.role != TD_WORKER_VERIFIER) return td_err_set(err, TD_WORKER_E_ROLE, "this worker is a drafter");
    if (n_path < 0 || n_path > TD_DRAFT_MAX) return td_err_set(err, TD_E_ARG, "path: %d nodes (at most %d)", n_path, TD_DRAFT_MAX);
    int32_t idx = claim(e, key, err);
    if (idx < 0) return err->code;
    take_pass(e);
    int rc = e->target->ops->commit(e->target, idx, path, n_path, err);
    if (rc == TD_OK) *cached = td_kv_seq_len(e->kv, idx);
    give_pass(e);
    unclaim(e, idx);
    return rc;
}

bool td_worker_release(td_worker_engine *e, const char *req, uint64_t key) {
    bool found = false;
    take_pass(e);
    pthread_mutex_lock(&e->mu);
    int32_t idx = find_slot(e->slots, e->cfg.max_seqs, key);
    if (idx >= 0 && !e->slots[idx].busy) {
        free_slot(e, idx);
        found = true;
    } else if (idx >= 0) {
        e->slots[idx].doomed = true; /* its call frees it when done */
        found = true;
    }
    int32_t d = find_slot(e->draft_slots, e->cfg.max_seqs, key);
    if (d >= 0) {
        if (e->drafter && e->drafter->ops->reset) e->drafter->ops->reset(e->drafter, d);
        e->draft_slots[d] = (slot){0};
        found = true;
    }
    pthread_mutex_unlock(&e->mu);
    give_pass(e);
    if (found) td_log(TD_LOG_INFO, req, "released sequence %016llx", (unsigned long long)key);
    return found;
}

/* ---- drafting ---- */

int td_worker_draft(td_worker_engine *e, const char *req, uint64_t key, const int32_t *history, size_t n,
                    int32_t max_nodes, const td_sample_params *sp, td_draft *out, td_err *err) {
    (void)req;
    out->n = 0;
    if (n == 0 || n >= (size_t)e->cfg.ctx)
        return td_err_set(err, TD_E_ARG, "history: %zu tokens (1..%d)", n, e->cfg.ctx - 1);
    if (max_nodes < 0 || max_nodes > TD_DRAFT_MAX) return td_err_set(err, TD_E_ARG, "max_nodes: %d (0..%d)", max_nodes, TD_DRAFT_MAX);
    for (size_t i = 0; i < n; i++)
        if (history[i] < 0 || history[i] >= e->info.vocab_size)
            return td_err_set(err, TD_E_ARG, "history[%zu]: token %d outside the vocabulary", i, history[i]);
    int rc = td_sample_validate(sp, err);
    if (rc) return rc;
    take_pass(e);
    if (!e->drafter && e->group) { /* its own passes would skip the group's collectives */
        give_pass(e);
        return td_err_set(err, TD_WORKER_E_ROLE, "a tensor-parallel verifier does not draft (layer-skip)");
    }
    if (!e->drafter) { /* verifier: layer-skip self-drafting, made on first use */
        td_sample_params d = td_sample_defaults();
        e->drafter = td_spec_layerskip_create(e->model, e->pool, &d, e->cfg.max_seqs, e->cfg.ctx, NULL, err);
        if (!e->drafter) {
            give_pass(e);
            return err->code;
        }
    }
    pthread_mutex_lock(&e->mu);
    int32_t idx = find_slot(e->draft_slots, e->cfg.max_seqs, key);
    bool fresh = false;
    if (idx < 0) {
        double now = td_now_sec();
        for (int32_t i = 0; i < e->cfg.max_seqs && idx < 0; i++)
            if (!e->draft_slots[i].used || now - e->draft_slots[i].last_use > e->cfg.idle_timeout) idx = i;
        if (idx >= 0) {
            e->draft_slots[idx] = (slot){.used = true, .key = key};
            fresh = true;
        }
    }
    if (idx >= 0) e->draft_slots[idx].last_use = td_now_sec();
    pthread_mutex_unlock(&e->mu);
    if (idx < 0) {
        give_pass(e);
        return td_err_set(err, TD_WORKER_E_FULL, "drafter full: %d sequences drafting", e->cfg.max_seqs);
    }
    td_drafter *d = e->drafter;
    if (fresh && d->ops->reset) d->ops->reset(d, idx);
    if (d->ops->set_params) d->ops->set_params(d, idx, sp);
    /* What the target kept since the last proposal (accepted drafts + its
     * own token) is what the history grew by: the drafter learns from it. */
    size_t before = e->draft_slots[idx].drafted_at;
    if (!fresh && before > 0 && n > before && d->ops->accept) d->ops->accept(d, idx, history, n, n - before);
    memset(out->conf, 0, sizeof out->conf);
    rc = d->ops->propose(d, idx, history, n, max_nodes, out);
    if (rc) td_err_set(err, rc, "drafter %s: %s", d->ops->name, d->err.msg);
    e->draft_slots[idx].drafted_at = n;
    give_pass(e);
    return rc;
}

/* ---- load ---- */

void td_worker_engine_stats(td_worker_engine *e, td_worker_stats *out) {
    pthread_mutex_lock(&e->mu);
    int32_t n = 0;
    for (int32_t i = 0; i < e->cfg.max_seqs; i++) n += e->slots[i].used;
    *out = (td_worker_stats){n, e->cfg.max_seqs, e->reserved, e->cfg.max_tokens, e->passes, e->rows, e->mean_step_sec};
    pthread_mutex_unlock(&e->mu);
}

char *td_worker_registration_json(td_worker_engine *e, const td_worker_config *cfg, const char *address) {
    td_worker_stats st;
    td_worker_engine_stats(e, &st);
    const td_worker_info *in = &e->info;
    char hash[17];
    snprintf(hash, sizeof hash, "%016llx", (unsigned long long)in->vocab_hash);
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    bool ok = cJSON_AddStringToObject(o, "role", cfg->role == TD_WORKER_VERIFIER ? "verifier" : "drafter") &&
              cJSON_AddStringToObject(o, "id", cfg->id ? cfg->id : "") &&
              cJSON_AddStringToObject(o, "model_id", in->model_id) &&
              cJSON_AddStringToObject(o, "model_name", in->model_name) &&
              cJSON_AddStringToObject(o, "vocab_hash", hash) && cJSON_AddNumberToObject(o, "tp", td_comm_size(cfg->comm)) &&
              cJSON_AddStringToObject(o, "address", address) &&
              cJSON_AddNumberToObject(o, "capacity", st.max_sequences) &&
              cJSON_AddNumberToObject(o, "max_tokens", (double)st.max_tokens) &&
              cJSON_AddNumberToObject(o, "load", st.sequences) &&
              cJSON_AddStringToObject(o, "fingerprint", in->fingerprint) &&
              cJSON_AddNumberToObject(o, "ctx", in->ctx) && cJSON_AddNumberToObject(o, "pid", (double)getpid());
    char *json = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return json;
}
