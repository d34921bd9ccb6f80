/* spec_run.c — the speculative generation loop: draft, verify in one target
 * pass, keep the longest prefix the target agrees with, append the target's
 * own token, roll the KV cache back to what was kept.
 *
 * Exactness: the token at absolute position t is always the target sampler's
 * pick for position t given the tokens before it (keyed noise, sample.h), and
 * a draft token is accepted iff it equals that pick. So every produced token
 * is the one plain decoding would produce, and the stop checks run in the
 * same order as in gen.c. The last sampled token is the root row of each
 * pass, so the prompt is prefilled up to its last token only.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "spec/spec.h"
#include "spec/spec_plan.h"

#define OBS_TOP 8          /* target candidates reported per verified node */
#define MAX_DRAFTERS TD_PLAN_DRAFTERS

td_spec_params td_spec_defaults(void) {
    return (td_spec_params){.draft_max = 8, .draft_min = 1, .adaptive = true, .mode = TD_SPEC_EXACT};
}

typedef struct seq_state {
    td_spec_request *req;
    int32_t *hist;        /* prompt + generated, room for draft paths */
    size_t n_hist;
    td_sampler *smp;
    td_textout *out;
    float *probs;         /* rejection mode: target distribution (n_vocab) */
    int32_t budget;       /* current draft node budget */
    bool done;
    td_draft draft;       /* merged proposal of this step */
    int8_t origin[TD_DRAFT_MAX]; /* drafter that proposed each node */
    int32_t row0;         /* batch index of this sequence's root row */
} seq_state;

typedef struct runner {
    const td_model *m;
    const td_tok *tok;
    td_ctx *ctx;
    td_kv *kv;
    const td_spec_params *sp;
    td_drafter *const *drafters;
    int32_t n_drafters;
    float score[MAX_DRAFTERS]; /* recent accepted tokens per step, per drafter */
    int32_t n_vocab;
    float *logits;        /* (rows, n_vocab) */
    td_row *rows;
    int32_t max_rows;
    int32_t obs_top[TD_DRAFT_MAX + 1][OBS_TOP];
    td_observation obs[TD_DRAFT_MAX + 1];
    td_spec_plan plan;
    td_plan_node *plan_nodes; /* max_rows */
    td_draft **plan_drafts;   /* max_rows: the drafts of one pass */
    int8_t **plan_origin;
} runner;

/* Adds the proposal `p` of drafter `who` into the merged tree of s, sharing
 * prefixes already there; nodes beyond the budget are dropped with their
 * descendants. */
static void merge_draft(seq_state *s, const td_draft *p, int who, int32_t budget) {
    int32_t map[TD_DRAFT_MAX];
    td_draft *d = &s->draft;
    for (int32_t i = 0; i < p->n && i < TD_DRAFT_MAX; i++) {
        map[i] = -2;
        int32_t par = p->parent[i];
        if (par >= i || par < -1) continue;  /* malformed: not topological */
        int32_t mpar = par == -1 ? -1 : map[par];
        if (mpar == -2) continue;
        int32_t found = -1;
        for (int32_t j = 0; j < d->n; j++)
            if (d->parent[j] == mpar && d->token[j] == p->token[i]) { found = j; break; }
        if (found < 0) {
            if (d->n >= budget) continue;
            found = d->n++;
            d->token[found] = p->token[i];
            d->parent[found] = mpar;
            d->prob[found] = p->prob[i];
            d->conf[found] = p->conf[i] < TD_DRAFT_CONF ? p->conf[i] : TD_DRAFT_CONF - 1;
            s->origin[found] = (int8_t)who;
        }
        map[i] = found;
    }
}

static int cmp_score_desc(const void *a, const void *b, void *ctx) {
    const float *score = ctx;
    int x = *(const int *)a, y = *(const int *)b;
    return score[y] > score[x] ? 1 : score[y] < score[x] ? -1 : x - y;
}

static void order_drafters(const runner *r, int *order) {
    /* small n: insertion sort by recent score, stable on index */
    for (int i = 0; i < r->n_drafters; i++) order[i] = i;
    for (int i = 1; i < r->n_drafters; i++)
        for (int j = i; j > 0 && cmp_score_desc(&order[j - 1], &order[j], (void *)r->score) > 0; j--) {
            int t = order[j]; order[j] = order[j - 1]; order[j - 1] = t;
        }
}

/* A drafter that fails is named by the caller (step) from failed[0]. */
static int propose(runner *r, seq_state *s, int32_t seq, int32_t budget, td_drafter **failed) {
    s->draft.n = 0;
    if (budget <= 0) return TD_OK;
    int order[MAX_DRAFTERS];
    order_drafters(r, order);
    td_draft tmp;
    for (int i = 0; i < r->n_drafters && s->draft.n < budget; i++) {
        td_drafter *d = r->drafters[order[i]];
        tmp.n = 0;
        memset(tmp.conf, 0, sizeof tmp.conf); /* drafters without classes leave 0 */
        int rc = d->ops->propose(d, seq, s->hist, s->n_hist, budget - s->draft.n, &tmp);
        if (rc < 0) {
            if (!d->err.msg[0]) td_err_set(&d->err, rc, "%s", td_err_name(rc));
            *failed = d;
            return rc;
        }
        merge_draft(s, &tmp, order[i], budget);
    }
    return TD_OK;
}

static void top_ids(const float *logits, int32_t n, int32_t *top, int32_t k) {
    int32_t cnt = 0;
    for (int32_t v = 0; v < n; v++) {
        if (cnt == k && !(logits[v] > logits[top[k - 1]])) continue;
        int32_t j = cnt < k ? cnt++ : k - 1;
        while (j > 0 && logits[v] > logits[top[j - 1]]) { top[j] = top[j - 1]; j--; }
        top[j] = v;
    }
}

/* Child of node `parent` (-1 = root) carrying token t, or -1. */
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

/* Rejection mode at one node: returns the produced token and whether the
 * draft child was accepted (*acc). The proposal is treated as a point mass
 * (q(x) = 1): accept x with probability min(1, p(x)/q(x)) = p(x), else
 * resample from the residual max(0, p - q) normalised, i.e. p without x.
 * Conditioned on the proposal this yields exactly p, whatever drafted it,
 * provided the test and the resample use randomness independent of the
 * drafter's: hence their own keys (salt for u, a derived seed for G). */
static int32_t rejection_step(runner *r, seq_state *s, const float *lg, int32_t child, bool *acc) {
    td_sampler_probs(s->smp, lg, s->hist, s->n_hist, s->probs);
    uint64_t seed = s->req->gen.sample.seed;
    uint64_t resample_seed = seed ^ 0x9e3779b97f4a7c15ULL;
    int64_t pos = (int64_t)s->n_hist;
    *acc = false;
    if (child >= 0) {
        int32_t x = s->draft.token[child];
        double u = td_sample_uniform(seed, pos, 0x5eedULL);
        if (u < s->probs[x]) {
            *acc = true;
            return x;
        }
        if (!r->sp->test_skip_residual) s->probs[x] = 0.0f;
    }
    int32_t best = -1;
    double bestv = -INFINITY;
    for (int32_t v = 0; v < r->n_vocab; v++) {
        if (!(s->probs[v] > 0)) continue;
        double g = log((double)s->probs[v]) + td_sample_gumbel(resample_seed, pos, v);
        if (g > bestv) { bestv = g; best = v; }
    }
    return best >= 0 ? best : td_sampler_pick(s->smp, lg, pos, s->hist, s->n_hist);
}

/* Appends one produced token; mirrors the stop checks of td_gen_run.
 * *finished says whether the sequence is done; returns TD_OK, or an error
 * (out of memory while streaming) that ends the whole run, as in gen.c. */
static int produce(runner *r, seq_state *s, int32_t tk, bool *finished, td_err *err) {
    td_spec_request *q = s->req;
    *finished = true;
    s->hist[s->n_hist++] = tk;
    if (q->out_tokens) q->out_tokens[q->stats.n_generated] = tk;
    q->stats.n_generated++;
    if (!q->gen.ignore_eos && td_tok_is_eog(r->tok, tk)) { q->stats.stop = TD_STOP_EOG; return TD_OK; }
    int pr = td_textout_push_token(s->out, r->tok, tk);
    if (pr == TD_TEXTOUT_STOP_STRING) { q->stats.stop = TD_STOP_STRING; return TD_OK; }
    if (pr == TD_TEXTOUT_STOP_CALLER) { q->stats.stop = TD_STOP_CALLER; return TD_OK; }
    if (pr < 0)
        return td_err_set(err, pr, "out of memory streaming token %d", tk);
    if (q->stats.n_generated >= q->gen.max_tokens) return TD_OK;
    if ((int32_t)s->n_hist >= td_kv_max_len(r->kv)) { q->stats.stop = TD_STOP_CONTEXT; return TD_OK; }
    *finished = false;
    return TD_OK;
}

/* Tells the planner, for every node whose parent was kept (so the node was
 * really put to the test), whether it was kept too. keep[1..n_keep) are
 * 1 + the kept nodes, in path order. */
static void learn_acceptance(runner *r, const seq_state *s, const int32_t *keep, int32_t n_keep,
                             const int32_t *depth) {
    const td_draft *d = &s->draft;
    bool kept[TD_DRAFT_MAX] = {false};
    for (int32_t k = 1; k < n_keep; k++) kept[keep[k] - 1] = true;
    for (int32_t i = 0; i < d->n; i++) {
        bool tested = d->parent[i] < 0 || kept[d->parent[i]];
        if (tested) td_spec_plan_learn(&r->plan, s->origin[i], d->conf[i], depth[i], kept[i]);
    }
}

/* Verifies one sequence's rows of the pass; updates cache, drafters, stats. */
static int settle(runner *r, seq_state *s, int32_t seq, td_err *err) {
    const td_draft *d = &s->draft;
    size_t n_before = s->n_hist;
    int32_t base = (int32_t)n_before - 1; /* slot of the root row */
    int32_t keep[TD_DRAFT_MAX + 1], n_keep = 1;
    keep[0] = 0;
    int32_t node = -1, accepted = 0, max_depth = 0;
    int32_t depth[TD_DRAFT_MAX];
    td_draft_depths(d, depth);
    for (int32_t i = 0; i < d->n; i++) if (depth[i] > max_depth) max_depth = depth[i];

    bool finished = false;
    for (;;) {
        const float *lg = r->logits + (size_t)(s->row0 + 1 + node) * r->n_vocab;
        int32_t tk, child;
        if (r->sp->mode == TD_SPEC_REJECTION) {
            bool acc;
            child = first_child(d, node);
            tk = rejection_step(r, s, lg, child, &acc);
            if (!acc) child = -1;
        } else {
            tk = td_sampler_pick(s->smp, lg, (int64_t)s->n_hist, s->hist, s->n_hist);
            if (tk < 0) return td_err_set(err, tk, "sampler refused its arguments");
            child = child_with(d, node, tk);
        }
        int rc = produce(r, s, tk, &finished, err);
        if (rc) return rc;
        if (finished || child < 0) break;
        node = child;
        accepted++;
        keep[n_keep++] = 1 + child;
    }
    if (!finished) learn_acceptance(r, s, keep, n_keep, depth);
    s->req->spec.n_steps++;
    s->req->spec.n_drafted += d->n;
    s->req->spec.n_accepted += accepted;
    s->req->spec.n_tokens += (int64_t)(s->n_hist - n_before);
    if (finished) {
        s->done = true;
        return TD_OK;
    }
    int rc = td_kv_compact(r->kv, seq, base, keep, n_keep);
    if (rc) return td_err_set(err, rc, "cache compaction failed: %s", td_err_name(rc));

    /* Credit the drafter whose node ended the accepted path. */
    if (d->n > 0) {
        int who = node >= 0 ? s->origin[node] : -1;
        for (int i = 0; i < r->n_drafters; i++) {
            float got = i == who ? (float)accepted : 0.0f;
            r->score[i] = 0.8f * r->score[i] + 0.2f * got;
        }
    }
    if (r->sp->adaptive && d->n > 0) {
        if (accepted >= max_depth) s->budget = s->budget * 2 > r->sp->draft_max ? r->sp->draft_max : s->budget * 2;
        else if (accepted * 2 < max_depth) s->budget = s->budget - 1 < r->sp->draft_min ? r->sp->draft_min : s->budget - 1;
    }
    size_t n_new = s->n_hist - n_before;
    bool wants_obs = false;
    for (int i = 0; i < r->n_drafters; i++) wants_obs |= r->drafters[i]->ops->observe != NULL;
    if (wants_obs) {
        /* Root and every verified node: what the target would say next. */
        int32_t n_obs = 0;
        for (int32_t i = -1; i < d->n; i++) {
            const float *lg = r->logits + (size_t)(s->row0 + 1 + i) * r->n_vocab;
            top_ids(lg, r->n_vocab, r->obs_top[n_obs], OBS_TOP);
            int32_t ctx[3]; /* the node's token and the two before it */
            td_draft_context(d, i, s->hist, n_before, 3, ctx);
            r->obs[n_obs] = (td_observation){ctx[0], r->obs_top[n_obs], OBS_TOP, {ctx[1], ctx[2]}};
            n_obs++;
        }
        for (int i = 0; i < r->n_drafters; i++)
            if (r->drafters[i]->ops->observe) r->drafters[i]->ops->observe(r->drafters[i], seq, r->obs, n_obs);
    }
    for (int i = 0; i < r->n_drafters; i++)
        if (r->drafters[i]->ops->accept) r->drafters[i]->ops->accept(r->drafters[i], seq, s->hist, s->n_hist, n_new);
    return TD_OK;
}

static int step(runner *r, seq_state *st, int32_t n_reqs, td_err *err) {
    int32_t n_rows = 0, active = 0;
    for (int32_t i = 0; i < n_reqs; i++) active += !st[i].done;
    for (int32_t i = 0; i < n_reqs; i++) {
        seq_state *s = &st[i];
        if (s->done) continue;
        /* budget: adaptive size, what fits in the context and in the batch */
        int32_t fit_ctx = td_kv_max_len(r->kv) - (int32_t)s->n_hist;
        int32_t fit_rows = r->max_rows / active - 1;
        int32_t left = s->req->gen.max_tokens - s->req->stats.n_generated - 1;
        int32_t b = s->budget;
        if (b > fit_ctx) b = fit_ctx;
        if (b > fit_rows) b = fit_rows;
        if (b > left) b = left;
        td_drafter *failed = NULL;
        int rc = propose(r, s, i, b, &failed);
        if (rc < 0)
            return td_err_set(err, rc, "drafter %s failed on request %d: %s", failed->ops->name, i, failed->err.msg);
    }
    if (r->sp->adaptive) {
        int32_t n = 0;
        for (int32_t i = 0; i < n_reqs; i++) {
            if (st[i].done) continue;
            r->plan_drafts[n] = &st[i].draft;
            r->plan_origin[n] = st[i].origin;
            n++;
        }
        td_spec_plan_prune(&r->plan, r->plan_drafts, r->plan_origin, n, r->plan_nodes);
    }
    for (int32_t i = 0; i < n_reqs; i++) {
        seq_state *s = &st[i];
        if (s->done) continue;
        int32_t depth[TD_DRAFT_MAX];
        td_draft_depths(&s->draft, depth);
        s->row0 = n_rows;
        int32_t root_pos = (int32_t)s->n_hist - 1;
        r->rows[n_rows++] = (td_row){i, root_pos, s->hist[s->n_hist - 1], true, true, -1};
        for (int32_t j = 0; j < s->draft.n; j++)
            r->rows[n_rows++] = (td_row){i, root_pos + depth[j], s->draft.token[j], true, true,
                                         s->row0 + 1 + s->draft.parent[j]};
    }
    double t0 = td_now_sec();
    int rc = td_model_forward(r->ctx, r->kv, r->rows, n_rows, r->logits, err);
    if (rc) return rc;
    td_spec_plan_time(&r->plan, n_rows, td_now_sec() - t0);
    td_spec_plan_age(&r->plan);
    for (int32_t i = 0; i < n_reqs; i++) {
        if (st[i].done) continue;
        if ((rc = settle(r, &st[i], i, err))) return rc;
    }
    return TD_OK;
}

int td_spec_run(const td_model *m, const td_tok *tok, td_ctx *ctx, td_kv *kv, td_spec_request *reqs,
                int32_t n_reqs, td_drafter *const *drafters, int32_t n_drafters, const td_spec_params *sp,
                td_err *err) {
    if (n_reqs < 1) return td_err_set(err, TD_E_ARG, "no requests");
    if (n_drafters < 0 || n_drafters > MAX_DRAFTERS)
        return td_err_set(err, TD_E_ARG, "%d drafters (at most %d)", n_drafters, MAX_DRAFTERS);
    if (sp->draft_max < 0 || sp->draft_max > TD_DRAFT_MAX || sp->draft_min < 0 || sp->draft_min > sp->draft_max)
        return td_err_set(err, TD_E_ARG, "draft length bounds [%d, %d] invalid (0..%d)", sp->draft_min,
                          sp->draft_max, TD_DRAFT_MAX);
    if (td_ctx_numerics(ctx) == TD_NUMERICS_LLAMACPP)
        return td_err_set(err, TD_E_ARG, "speculation needs batch-invariant numerics (reference or fast), not llamacpp");
    int32_t max_rows = td_ctx_max_rows(ctx);
    if (max_rows < n_reqs)
        return td_err_set(err, TD_E_ARG, "%d requests need at least as many batch rows (have %d)", n_reqs, max_rows);
    const td_hparams *hp = td_model_hparams(m);
    runner r = {.m = m, .tok = tok, .ctx = ctx, .kv = kv, .sp = sp, .drafters = drafters,
                .n_drafters = n_drafters, .n_vocab = hp->n_vocab, .max_rows = max_rows};
    int rc = TD_OK;
    seq_state *st = calloc((size_t)n_reqs, sizeof *st);
    r.logits = malloc((size_t)max_rows * hp->n_vocab * sizeof(float));
    r.rows = malloc((size_t)max_rows * sizeof *r.rows);
    r.plan_nodes = malloc((size_t)max_rows * sizeof *r.plan_nodes);
    r.plan_drafts = malloc((size_t)max_rows * sizeof *r.plan_drafts);
    r.plan_origin = malloc((size_t)max_rows * sizeof *r.plan_origin);
    td_spec_plan_init(&r.plan, sp->row_cost);
    if (!st || !r.logits || !r.rows || !r.plan_nodes || !r.plan_drafts || !r.plan_origin) {
        rc = td_err_set(err, TD_E_NOMEM, "out of memory");
        goto done;
    }

    for (int32_t i = 0; i < n_reqs; i++) {
        td_spec_request *q = &reqs[i];
        seq_state *s = &st[i];
        s->req = q;
        memset(&q->stats, 0, sizeof q->stats);
        memset(&q->spec, 0, sizeof q->spec);
        if (q->n_prompt == 0) { rc = td_err_set(err, TD_E_ARG, "request %d: empty prompt", i); goto done; }
        if (td_kv_seq_len(kv, i) != 0) { rc = td_err_set(err, TD_E_ARG, "sequence %d is not empty", i); goto done; }
        if (q->n_prompt >= (size_t)td_kv_max_len(kv)) {
            rc = td_err_set(err, TD_E_RANGE, "request %d: prompt of %zu tokens does not fit the context of %d", i,
                            q->n_prompt, td_kv_max_len(kv));
            goto done;
        }
        if ((rc = td_sample_validate(&q->gen.sample, err))) goto done;
        size_t cap = q->n_prompt + (size_t)(q->gen.max_tokens > 0 ? q->gen.max_tokens : 0) + TD_DRAFT_MAX + 2;
        s->hist = malloc(cap * sizeof *s->hist);
        td_err why = {0};
        s->smp = td_sampler_create(&q->gen.sample, hp->n_vocab, &why);
        s->out = td_textout_create(q->gen.stop, q->gen.n_stop, q->emit, q->user, &why);
        if (!s->smp || !s->out) {
            rc = td_err_set(err, why.code, "request %d: %s", i, why.msg);
            goto done;
        }
        s->probs = sp->mode == TD_SPEC_REJECTION ? malloc((size_t)hp->n_vocab * sizeof(float)) : NULL;
        if (!s->hist || !s->smp || !s->out || (sp->mode == TD_SPEC_REJECTION && !s->probs)) {
            rc = td_err_set(err, TD_E_NOMEM, "out of memory");
            goto done;
        }
        memcpy(s->hist, q->prompt, q->n_prompt * sizeof *s->hist);
        s->n_hist = q->n_prompt;
        s->budget = sp->adaptive ? (sp->draft_min > 2 ? sp->draft_min : (sp->draft_max < 2 ? sp->draft_max : 2))
                                 : sp->draft_max;
        s->done = q->gen.max_tokens <= 0;
        q->stats.n_prompt = (int32_t)q->n_prompt;
        q->stats.n_prefilled = (int32_t)q->n_prompt - 1; /* the last is the first pass's root */
        q->stats.stop = TD_STOP_LENGTH;
        for (int d = 0; d < n_drafters; d++)
            if (drafters[d]->ops->reset) drafters[d]->ops->reset(drafters[d], i);
    }

    double t0 = td_now_sec();
    for (int32_t i = 0; i < n_reqs; i++)
        if ((rc = td_gen_prefill(ctx, kv, i, 0, reqs[i].prompt, reqs[i].n_prompt - 1, 0, NULL, err))) goto done;
    double t1 = td_now_sec();
    int64_t steps = 0;
    for (;;) {
        bool any = false;
        for (int32_t i = 0; i < n_reqs; i++) any |= !st[i].done;
        if (!any) break;
        if ((rc = step(&r, st, n_reqs, err))) goto done;
        steps++;
    }
    double t2 = td_now_sec();
    for (int32_t i = 0; i < n_reqs; i++) {
        td_spec_request *q = &reqs[i];
        if (q->stats.stop != TD_STOP_STRING && q->stats.stop != TD_STOP_CALLER) td_textout_flush(st[i].out);
        q->stats.prefill_sec = t1 - t0;
        q->stats.decode_sec = t2 - t1;
        q->stats.n_forward = (int32_t)q->spec.n_steps;
    }
    (void)steps;
done:
    if (st)
        for (int32_t i = 0; i < n_reqs; i++) {
            free(st[i].hist);
            td_sampler_destroy(st[i].smp);
            td_textout_destroy(st[i].out);
            free(st[i].probs);
        }
    free(st);
    free(r.logits);
    free(r.rows);
    free(r.plan_nodes);
    free(r.plan_drafts);
    free(r.plan_origin);
    return rc;
}
