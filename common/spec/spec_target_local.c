/* spec_target_local.c — the in-process target: verification over a td_ctx
 * and td_kv of this process (tandem generate, and each verifier worker).
 *
 * It walks each verified tree the way plain decoding would go: the keyed
 * pick after the pending token, the child carrying it, the pick after that
 * child, ... (or, in rejection mode, the min(1, p/q) test at each first
 * child). Picks are made with the sequence's own history plus the walked
 * path, at absolute positions, so they are exactly plain decoding's.
 * Only nodes on the walk are sampled; every verified node gets its top
 * candidates when the caller asked for observations.
 *
 * Prefix reuse: a released sequence keeps its cache and the tokens in it
 * ("warm"); the next open of that sequence with reuse_prefix keeps the
 * longest common prefix and prefills only the rest. Batch invariance makes
 * that exact: a cached position holds the same bits however its pass was
 * made up, so the tokens equal a cold open's.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gen/gen.h"
#include "spec/spec.h"

typedef struct local_seq {
    bool open, verified;
    size_t n_warm;        /* closed: hist[0..n_warm) are the tokens still in the cache */
    td_target_seq_params p;
    int32_t *hist;        /* cached tokens + the pending one; room for a walked path */
    size_t n_hist, cap;
    td_draft tree;        /* the last verify's tree */
    int32_t walk[TD_DRAFT_MAX];
    int32_t walk_sample[TD_DRAFT_MAX + 1]; /* pick after the root, after walk[0], ... */
    int32_t n_walk;
} local_seq;

typedef struct local_target {
    td_target base;
    const td_model *m;
    td_ctx *ctx;
    td_kv *kv;
    int32_t n_vocab, max_seqs, max_rows;
    local_seq *seqs;
    td_sampler *smp;      /* one, re-parametrised per sequence */
    float *logits;        /* (max_rows, n_vocab) */
    int32_t *picks;       /* (max_rows) picks, when a pass needs nothing more; -1: pick from the row */
    td_sample_plan *plans; /* (max_rows) each row's sampling, for a device that picks */
    int32_t *tops;        /* (max_rows, TD_SAMPLE_TOP_MAX) observations from the device; -1 first: none */
    bool *accepted;       /* (max_rows) rejection's verdict, where the pass brought picks */
    uint8_t *fetched;     /* (max_rows) the row's logits were brought from the device */
    bool picked;          /* the last verify pass brought picks, not logits */
    td_sample_score *scores; /* (max_rows) what the rows' logprobs need, */
    bool scored;             /* when the last verify pass brought them */
    bool device_style;       /* ask a CPU pass for what a GPU's brings (a check aid) */
    td_row *rows;
    int32_t *row0;        /* per item: batch index of its root row */
} local_target;


static int32_t child_with(const td_draft *d, int32_t parent, int32_t t) {
    for (int32_t j = 0; j < d->n; j++)
        if (d->parent[j] == parent && d->token[j] == t) return j;
    return -1;
}

static int32_t first_child(const td_draft *d, int32_t parent) {
    for (int32_t j = 0; j < d->n; j++)
        if (d->parent[j] == parent) return j;
    return -1;
}

static int32_t lt_reusable(const td_target *base, int32_t seq, const int32_t *tokens, size_t n, int32_t *held) {
    const local_target *t = (const local_target *)base;
    if (held) *held = 0;
    if (seq < 0 || seq >= t->max_seqs || n == 0) return 0;
    const local_seq *s = &t->seqs[seq];
    if (s->open || !s->hist) return 0;
    if (held) *held = (int32_t)s->n_warm;
    size_t k = 0, lim = s->n_warm < n - 1 ? s->n_warm : n - 1;
    while (k < lim && s->hist[k] == tokens[k]) k++;
    return (int32_t)k;
}

static int lt_open(td_target *base, int32_t seq, const td_target_seq_params *p, const int32_t *tokens, size_t n,
                   td_err *err) {
    local_target *t = (local_target *)base;
    if (seq < 0 || seq >= t->max_seqs) return td_err_set(err, TD_E_ARG, "sequence %d out of range (0..%d)", seq, t->max_seqs - 1);
    local_seq *s = &t->seqs[seq];
    if (s->open) return td_err_set(err, TD_E_ARG, "sequence %d is already open", seq);
    if (n == 0) return td_err_set(err, TD_E_ARG, "empty prompt");
    if (td_kv_seq_len(t->kv, seq) != (int32_t)s->n_warm) return td_err_set(err, TD_E_ARG, "sequence %d is not empty", seq);
    if (n >= (size_t)td_kv_max_len(t->kv))
        return td_err_set(err, TD_E_RANGE, "prompt of %zu tokens does not fit the context of %d", n, td_kv_max_len(t->kv));
    if (p->n_top < 0 || p->n_top > TD_TARGET_TOP_MAX || p->n_logprobs < -1 || p->n_logprobs > TD_TARGET_ALT_MAX)
        return td_err_set(err, TD_E_ARG, "observations %d (0..%d) or logprobs %d (-1..%d) out of range", p->n_top,
                          TD_TARGET_TOP_MAX, p->n_logprobs, TD_TARGET_ALT_MAX);
    int rc = td_sample_validate(&p->sample, err);
    if (rc) return rc;
    size_t cap = n + (size_t)(p->max_new_tokens > 0 ? p->max_new_tokens : 0) + TD_DRAFT_MAX + 2;
    if (cap > (size_t)td_kv_max_len(t->kv) + TD_DRAFT_MAX + 2) cap = (size_t)td_kv_max_len(t->kv) + TD_DRAFT_MAX + 2;
    int32_t *hist = malloc(cap * sizeof *hist);
    if (!hist) return td_err_set(err, TD_E_NOMEM, "out of memory");
    int32_t keep = p->reuse_prefix ? lt_reusable(base, seq, tokens, n, NULL) : 0;
    td_kv_truncate(t->kv, seq, keep);
    free(s->hist); /* the warm tokens, if any */
    s->hist = NULL;
    s->n_warm = 0;
    if ((size_t)keep < n - 1 &&
        (rc = td_gen_prefill(t->ctx, t->kv, seq, keep, tokens + keep, n - 1 - (size_t)keep, 0, NULL, err))) {
        td_kv_truncate(t->kv, seq, 0);
        free(hist);
        return rc;
    }
    memcpy(hist, tokens, n * sizeof *hist);
    *s = (local_seq){.open = true, .p = *p, .hist = hist, .n_hist = n, .cap = cap};
    return TD_OK;
}

/* Rejection mode at one node (see spec_run.c's history of this test): the
 * proposal is a point mass, so accept x with probability p(x), else draw
 * from p without x, each with randomness of its own key
 * (td_sampler_reject). The uniform and the residual's seed, for the token
 * at pos: */
static double rejection_u(const local_seq *s, int64_t pos) {
    return td_sample_uniform(s->p.sample.seed, pos, 0x5eedULL);
}
static uint64_t rejection_seed(const local_seq *s) {
    return s->p.sample.seed ^ 0x9e3779b97f4a7c15ULL;
}

static int32_t rejection_pick(local_target *t, local_seq *s, const float *lg, size_t n_ctx, int32_t child,
                              const td_draft *d, bool *acc) {
    const int64_t pos = (int64_t)n_ctx;
    const int32_t x = child >= 0 ? d->token[child] : -1;
    return td_sampler_reject(t->smp, lg, s->hist, n_ctx, pos, x, rejection_u(s, pos), rejection_seed(s),
                             s->p.test_skip_residual, acc);
}

/* Row r's plan (r is tree node node's row; its pick is for the position
 * after it): rejection's test of the node's first child, or a pick. False
 * where the pick reads the history (a repetition penalty). */
static bool plan_row(const local_seq *s, const td_draft *d, int32_t node, const td_row *row, td_sample_plan *pl) {
    const int64_t pos = (int64_t)row->pos + 1;
    bool ok;
    if (s->p.mode == TD_SPEC_REJECTION) {
        const int32_t child = first_child(d, node);
        ok = td_sample_plan_make_reject(&s->p.sample, pos, child >= 0 ? d->token[child] : -1, rejection_u(s, pos),
                                        rejection_seed(s), s->p.test_skip_residual, pl);
    } else {
        ok = td_sample_plan_make(&s->p.sample, pos, pl);
    }
    pl->n_top = s->p.n_top;
    return ok;
}

static void fill_logprobs(const local_target *t, const float *lg, int32_t tk, int32_t n_alt, td_node_result *r) {
    float mx;
    double log_sum;
    td_sample_log_norm(lg, t->n_vocab, &mx, &log_sum);
    r->logprob = (float)td_sample_logprob_at(lg, mx, log_sum, tk);
    r->n_alt = n_alt;
    if (n_alt > 0) {
        td_sample_top_ids(lg, t->n_vocab, r->alt_id, n_alt);
        for (int32_t a = 0; a < n_alt; a++) r->alt_logprob[a] = (float)td_sample_logprob_at(lg, mx, log_sum, r->alt_id[a]);
    }
}

_Static_assert(TD_TARGET_TOP_MAX <= TD_SAMPLE_TOP_MAX, "a device's observations hold what a node may ask");
_Static_assert(TD_TARGET_ALT_MAX <= TD_SAMPLE_ALT_MAX, "a row's score holds the alternatives a node may ask");

/* Row `row` of the last pass into t->logits: there already unless the pass
 * left the logits on the device, where they are fetched once. */
static int row_logits(local_target *t, int32_t row, td_err *err) {
    if (!t->picked || td_ctx_device(t->ctx).kind != TD_DEVICE_CUDA || t->fetched[row]) return TD_OK;
    int rc = td_model_pass_logits(t->ctx, row, t->logits + (size_t)row * t->n_vocab, err);
    if (rc == TD_OK) t->fetched[row] = 1;
    return rc;
}

/* Logprobs of row `row` from its score (a pass on a device brought scores
 * with TD_SAMPLE_ALT_MAX alternatives): the sampled token's logit is among
 * them unless it ranks lower, and then the row is fetched. The numbers are
 * the row's bit for bit either way (sample.h). */
static int logprobs_from_score(local_target *t, int32_t row, int32_t tk, int32_t n_alt, td_node_result *r,
                               td_err *err) {
    const td_sample_score *sc = &t->scores[row];
    int32_t at = -1;
    for (int32_t a = 0; a < sc->n_alt && at < 0; a++)
        if (sc->alt_id[a] == tk) at = a;
    if (at < 0 || sc->n_alt < n_alt) {
        int rc = row_logits(t, row, err);
        if (rc == TD_OK) fill_logprobs(t, t->logits + (size_t)row * t->n_vocab, tk, n_alt, r);
        return rc;
    }
    const double log_sum = log(sc->sum);
    r->logprob = (float)td_sample_logprob_of(sc->alt_logit[at], sc->max, log_sum);
    r->n_alt = n_alt;
    for (int32_t a = 0; a < n_alt; a++) {
        r->alt_id[a] = sc->alt_id[a];
        r->alt_logprob[a] = (float)td_sample_logprob_of(sc->alt_logit[a], sc->max, log_sum);
    }
    return TD_OK;
}

/* Walks one sequence's verified tree; rows start at row0 in t->logits. */
static int walk(local_target *t, local_seq *s, td_verify_item *it, int32_t row0, td_err *err) {
    const td_draft *d = it->tree;
    int rc = td_sampler_set_params(t->smp, &s->p.sample, err);
    if (rc) return rc;
    for (int32_t i = 0; i <= d->n; i++) {
        td_node_result *r = &it->nodes[i];
        r->sample = -1;
        r->logprob = 0;
        r->n_alt = 0;
        r->n_top = s->p.n_top;
        if (s->p.n_top <= 0) continue;
        const int32_t *dev = t->tops + (size_t)(row0 + i) * TD_SAMPLE_TOP_MAX;
        if (t->picked && dev[0] >= 0) { /* the device's td_sample_top_ids */
            memcpy(r->top, dev, (size_t)s->p.n_top * sizeof *dev);
            continue;
        }
        if ((rc = row_logits(t, row0 + i, err))) return rc;
        td_sample_top_ids(t->logits + (size_t)(row0 + i) * t->n_vocab, t->n_vocab, r->top, s->p.n_top);
    }
    int32_t node = -1, depth = 0;
    it->n_path = 0;
    s->n_walk = 0;
    for (;;) {
        float *lg = t->logits + (size_t)(row0 + 1 + node) * t->n_vocab;
        size_t n_ctx = s->n_hist + (size_t)depth; /* history + walked path, written into hist's spare room */
        int32_t tk, child;
        if (s->p.mode == TD_SPEC_REJECTION) {
            bool acc;
            child = first_child(d, node);
            if (t->picked && t->picks[row0 + 1 + node] >= 0) { /* decided where the logits are */
                tk = t->picks[row0 + 1 + node];
                acc = t->accepted[row0 + 1 + node];
            } else {
                if ((rc = row_logits(t, row0 + 1 + node, err))) return rc;
                tk = rejection_pick(t, s, lg, n_ctx, child, d, &acc);
                if (tk < 0) return td_err_set(err, tk, "sampler refused its arguments");
            }
            if (!acc) child = -1;
        } else if (t->picked && t->picks[row0 + 1 + node] >= 0) {
            tk = t->picks[row0 + 1 + node]; /* every verify row has logits */
            child = child_with(d, node, tk);
        } else {
            if ((rc = row_logits(t, row0 + 1 + node, err))) return rc; /* an undecided summary */
            tk = td_sampler_pick(t->smp, lg, (int64_t)n_ctx, s->hist, n_ctx);
            if (tk < 0) return td_err_set(err, tk, "sampler refused its arguments");
            child = child_with(d, node, tk);
        }
        td_node_result *r = &it->nodes[node + 1];
        r->sample = tk;
        if (s->p.n_logprobs >= 0 && t->scored) {
            if ((rc = logprobs_from_score(t, row0 + 1 + node, tk, s->p.n_logprobs, r, err))) return rc;
        } else if (s->p.n_logprobs >= 0) {
            fill_logprobs(t, lg, tk, s->p.n_logprobs, r);
        }
        s->walk_sample[s->n_walk] = tk;
        if (child < 0 || n_ctx + 1 >= s->cap) break;
        s->hist[n_ctx] = tk;
        it->path[it->n_path++] = child;
        s->walk[s->n_walk++] = child;
        node = child;
        depth++;
    }
    return TD_OK;
}

static int lt_verify(td_target *base, td_verify_item *items, int32_t n_items, td_pass_info *pass, td_err *err) {
    local_target *t = (local_target *)base;
    int32_t n_rows = 0;
    for (int32_t k = 0; k < n_items; k++) {
        td_verify_item *it = &items[k];
        if (it->seq < 0 || it->seq >= t->max_seqs || !t->seqs[it->seq].open)
            return td_err_set(err, TD_E_ARG, "sequence %d is not open", it->seq);
        local_seq *s = &t->seqs[it->seq];
        if (s->verified) return td_err_set(err, TD_E_ARG, "sequence %d: verify again before commit", it->seq);
        const td_draft *d = it->tree;
        if (d->n < 0 || d->n > TD_DRAFT_MAX) return td_err_set(err, TD_E_ARG, "tree of %d nodes (0..%d)", d->n, TD_DRAFT_MAX);
        if (n_rows + 1 + d->n > t->max_rows)
            return td_err_set(err, TD_E_RANGE, "%d rows do not fit a pass of %d", n_rows + 1 + d->n, t->max_rows);
        int32_t depth[TD_DRAFT_MAX];
        for (int32_t j = 0; j < d->n; j++) {
            if (d->parent[j] < -1 || d->parent[j] >= j)
                return td_err_set(err, TD_E_ARG, "tree node %d: parent %d is not an earlier node", j, d->parent[j]);
            if (d->token[j] < 0 || d->token[j] >= t->n_vocab)
                return td_err_set(err, TD_E_ARG, "tree node %d: token %d outside the vocabulary", j, d->token[j]);
            depth[j] = d->parent[j] < 0 ? 1 : depth[d->parent[j]] + 1;
        }
        int32_t root_pos = (int32_t)s->n_hist - 1;
        int32_t max_depth = 0;
        for (int32_t j = 0; j < d->n; j++) if (depth[j] > max_depth) max_depth = depth[j];
        if (root_pos + max_depth >= td_kv_max_len(t->kv) || s->n_hist + (size_t)max_depth + 1 >= s->cap)
            return td_err_set(err, TD_E_RANGE, "sequence %d: the tree reaches past the context", it->seq);
        t->row0[k] = n_rows;
        t->rows[n_rows++] = (td_row){it->seq, root_pos, s->hist[s->n_hist - 1], true, true, -1};
        for (int32_t j = 0; j < d->n; j++)
            t->rows[n_rows++] = (td_row){it->seq, root_pos + depth[j], d->token[j], true, true,
                                         t->row0[k] + 1 + d->parent[j]};
    }
    /* A pass needs only each row's pick (in rejection mode, with its
     * verdict) and observations, and, for logprobs, its score:
     * td_model_forward_out works them out where the logits are (on a GPU
     * they then stay there). On the CPU that is greedy rows' argmax, without
     * observations, logprobs or rejection (the logits are at hand); on a
     * GPU, rows without a repetition penalty send back a summary the pick,
     * the verdict and the observations follow from (sample.h), or, greedy
     * without observations, the argmax, and with logprobs a score with the
     * most alternatives a node may ask. */
    const bool on_device = td_ctx_device(t->ctx).kind == TD_DEVICE_CUDA, device_style = on_device || t->device_style;
    bool picks = true, greedy = true, observe = false, logprobs = false, rejection = false;
    for (int32_t k = 0; k < n_items; k++) {
        const td_target_seq_params *p = &t->seqs[items[k].seq].p;
        picks = picks && (p->n_logprobs < 0 || device_style);
        greedy = greedy && td_sample_is_plain_greedy(&p->sample);
        observe = observe || p->n_top > 0;
        logprobs = logprobs || p->n_logprobs >= 0;
        rejection = rejection || p->mode == TD_SPEC_REJECTION;
    }
    bool planned = picks && device_style && (!greedy || observe || rejection);
    for (int32_t k = 0; k < n_items && planned; k++) {
        const local_seq *s = &t->seqs[items[k].seq];
        for (int32_t node = -1; node < items[k].tree->n && planned; node++) {
            const int32_t r = t->row0[k] + 1 + node;
            planned = plan_row(s, items[k].tree, node, &t->rows[r], &t->plans[r]);
        }
    }
    picks = picks && (planned || (greedy && !observe && !rejection));
    if (picks) memset(t->fetched, 0, (size_t)n_rows);
    double t0 = td_now_sec();
    int rc;
    if (picks) {
        const td_pass_out out = {.picks = t->picks, .plans = planned ? t->plans : NULL,
                                 .accepted = planned ? t->accepted : NULL, .tops = t->tops,
                                 .scores = logprobs ? t->scores : NULL, .n_alt = TD_SAMPLE_ALT_MAX};
        rc = td_model_forward_out(t->ctx, t->kv, t->rows, n_rows, on_device ? NULL : t->logits, &out, err);
    } else {
        rc = td_model_forward(t->ctx, t->kv, t->rows, n_rows, t->logits, err);
    }
    t->picked = picks && rc == TD_OK;
    t->scored = t->picked && logprobs;
    if (rc) return rc;
    if (pass) *pass = (td_pass_info){td_now_sec() - t0, n_rows};
    for (int32_t k = 0; k < n_items; k++) {
        local_seq *s = &t->seqs[items[k].seq];
        s->tree = *items[k].tree;
        s->verified = true;
        if ((rc = walk(t, s, &items[k], t->row0[k], err))) return rc;
    }
    return TD_OK;
}

static int lt_commit(td_target *base, int32_t seq, const int32_t *path, int32_t n_path, td_err *err) {
    local_target *t = (local_target *)base;
    if (seq < 0 || seq >= t->max_seqs || !t->seqs[seq].open) return td_err_set(err, TD_E_ARG, "sequence %d is not open", seq);
    local_seq *s = &t->seqs[seq];
    if (!s->verified) return td_err_set(err, TD_E_ARG, "sequence %d: commit without verify", seq);
    if (n_path < 0 || n_path > s->n_walk) return td_err_set(err, TD_E_ARG, "path of %d nodes; the walk had %d", n_path, s->n_walk);
    int32_t keep[TD_DRAFT_MAX + 1];
    keep[0] = 0;
    for (int32_t k = 0; k < n_path; k++) {
        if (path[k] != s->walk[k]) return td_err_set(err, TD_E_ARG, "path node %d is not on the walk", k);
        keep[k + 1] = 1 + path[k];
    }
    int rc = td_kv_compact(t->kv, seq, (int32_t)s->n_hist - 1, keep, n_path + 1);
    if (rc) return td_err_set(err, rc, "cache compaction failed: %s", td_err_name(rc));
    for (int32_t k = 0; k < n_path; k++) s->hist[s->n_hist++] = s->tree.token[path[k]];
    s->hist[s->n_hist++] = s->walk_sample[n_path];
    s->verified = false;
    return TD_OK;
}

static int lt_extend(td_target *base, int32_t seq, const int32_t *tokens, size_t n, td_err *err) {
    local_target *t = (local_target *)base;
    if (seq < 0 || seq >= t->max_seqs || !t->seqs[seq].open) return td_err_set(err, TD_E_ARG, "sequence %d is not open", seq);
    local_seq *s = &t->seqs[seq];
    if (s->verified) return td_err_set(err, TD_E_ARG, "sequence %d: extend after verify without commit", seq);
    if (n == 0) return TD_OK;
    if (s->n_hist + n >= (size_t)td_kv_max_len(t->kv))
        return td_err_set(err, TD_E_RANGE, "%zu tokens do not fit the context of %d", s->n_hist + n, td_kv_max_len(t->kv));
    size_t need = s->n_hist + n + (size_t)(s->p.max_new_tokens > 0 ? s->p.max_new_tokens : 0) + TD_DRAFT_MAX + 2;
    /* as in open: the history never outgrows the context plus a window of
     * drafts, whatever max_new_tokens says (it is the caller's, up to
     * INT32_MAX); the check above keeps need >= n_hist + n */
    size_t room = (size_t)td_kv_max_len(t->kv) + TD_DRAFT_MAX + 2;
    if (need > room) need = room;
    if (need > s->cap) {
        int32_t *h = realloc(s->hist, need * sizeof *h);
        if (!h) return td_err_set(err, TD_E_NOMEM, "out of memory");
        s->hist = h;
        s->cap = need;
    }
    memcpy(s->hist + s->n_hist, tokens, n * sizeof *tokens);
    /* the pending token and tokens[0..n-1) go into the cache */
    int rc = td_gen_prefill(t->ctx, t->kv, seq, (int32_t)s->n_hist - 1, s->hist + s->n_hist - 1, n, 0, NULL, err);
    if (rc) {
        td_kv_truncate(t->kv, seq, (int32_t)s->n_hist - 1);
        return rc;
    }
    s->n_hist += n;
    return TD_OK;
}

static void lt_release(td_target *base, int32_t seq) {
    local_target *t = (local_target *)base;
    if (seq < 0 || seq >= t->max_seqs || !t->seqs[seq].open) return;
    local_seq *s = &t->seqs[seq];
    /* stays warm: the cached positions and their tokens (after a verify
     * without commit the cache holds tree nodes past them: cut those) */
    int32_t cached = (int32_t)s->n_hist - 1;
    if (td_kv_seq_len(t->kv, seq) < cached) cached = td_kv_seq_len(t->kv, seq);
    td_kv_truncate(t->kv, seq, cached);
    int32_t *hist = s->hist;
    *s = (local_seq){.hist = hist, .n_warm = (size_t)cached};
}

static void lt_destroy(td_target *base) {
    local_target *t = (local_target *)base;
    for (int32_t i = 0; i < t->max_seqs; i++) free(t->seqs[i].hist);
    free(t->seqs);
    td_sampler_destroy(t->smp);
    free(t->logits);
    free(t->picks);
    free(t->plans);
    free(t->tops);
    free(t->accepted);
    free(t->scores);
    free(t->fetched);
    free(t->rows);
    free(t->row0);
    free(t);
}

static const td_target_ops local_ops = {lt_open, lt_verify, lt_commit, lt_extend, lt_release, lt_destroy, lt_reusable};

td_target *td_spec_target_local_create(const td_model *m, td_ctx *ctx, td_kv *kv, td_err *err) {
    if (!m || !ctx || !kv) {
        td_err_set(err, TD_E_ARG, "local target: model, context and cache are required");
        return NULL;
    }
    local_target *t = calloc(1, sizeof *t);
    if (!t) goto nomem;
    t->base.ops = &local_ops;
    t->m = m;
    t->ctx = ctx;
    t->kv = kv;
    t->n_vocab = td_model_hparams(m)->n_vocab;
    t->max_rows = td_ctx_max_rows(ctx);
    t->max_seqs = td_kv_max_seqs(kv);
    t->seqs = calloc((size_t)t->max_seqs, sizeof *t->seqs);
    t->logits = malloc((size_t)t->max_rows * t->n_vocab * sizeof(float));
    t->rows = malloc((size_t)t->max_rows * sizeof *t->rows);
    t->row0 = malloc((size_t)t->max_rows * sizeof *t->row0);
    t->picks = malloc((size_t)t->max_rows * sizeof *t->picks);
    t->plans = malloc((size_t)t->max_rows * sizeof *t->plans);
    t->tops = malloc((size_t)t->max_rows * TD_SAMPLE_TOP_MAX * sizeof *t->tops);
    t->fetched = malloc((size_t)t->max_rows);
    t->accepted = malloc((size_t)t->max_rows * sizeof *t->accepted);
    t->scores = malloc((size_t)t->max_rows * sizeof *t->scores);
    td_err why = {0};
    t->smp = td_sampler_create(NULL, t->n_vocab, &why);
    if (!t->seqs || !t->logits || !t->rows || !t->row0 || !t->picks || !t->plans || !t->tops || !t->fetched ||
        !t->accepted || !t->scores || !t->smp) {
        lt_destroy(&t->base);
        goto nomem;
    }
    return &t->base;
nomem:
    td_err_set(err, TD_E_NOMEM, "out of memory");
    return NULL;
}

void td_spec_target_local_device_style(td_target *base, bool on) {
    ((local_target *)base)->device_style = on;
}

int32_t td_spec_target_local_open_seqs(const td_target *base) {
    const local_target *t = (const local_target *)base;
    int32_t n = 0;
    for (int32_t i = 0; i < t->max_seqs; i++) n += t->seqs[i].open;
    return n;
}

void td_target_destroy(td_target *t) {
    if (t) t->ops->destroy(t);
}
