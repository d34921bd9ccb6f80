/* spec_session.c — the speculative generation loop, step by step, over any
 * target (in-process or a remote verifier): draft, verify in one target
 * call, keep what the target's own walk kept, commit, learn.
 *
 * Exactness: every produced token is the target's keyed pick for its
 * position given the tokens before it (the target walks the tree and
 * samples; this loop only reads the walk), so the output is plain decoding's
 * whatever the drafters propose. Stop checks run on each produced token in
 * the order td_gen_run runs them. Requests join with add and leave when they
 * finish or are cancelled; the planner's statistics live as long as the
 * session.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spec/spec.h"
#include "spec/spec_plan.h"

#define OBS_TOP 8          /* target candidates per verified node, when a drafter observes */
#define MAX_DRAFTERS TD_PLAN_DRAFTERS

typedef struct sess_seq {
    td_spec_request *req;  /* NULL: slot free */
    int32_t *hist;         /* prompt + produced */
    size_t n_hist, cap;
    td_textout *out;
    int32_t budget;
    td_draft draft;
    int8_t origin[TD_DRAFT_MAX];
    td_node_result nodes[TD_DRAFT_MAX + 1];
    double t_start;        /* decoding start */
} sess_seq;

#define LEARNED_KINDS 32

typedef struct learned_entry {
    char kind[64];
    uint64_t used;        /* last write, for eviction */
    td_spec_plan plan;
    float score[MAX_DRAFTERS];
} learned_entry;

struct td_spec_learned {
    pthread_mutex_t mu;
    uint64_t clock;
    int32_t n;
    learned_entry e[LEARNED_KINDS];
};

struct td_spec_session {
    td_spec_learned *learned;
    char learned_kind[64];
    const td_tok *tok;
    int32_t n_vocab;
    td_target *target;
    td_drafter *const *drafters;
    int32_t n_drafters;
    td_spec_params sp;
    int32_t max_seqs, max_rows, max_len;
    bool wants_obs;
    float score[MAX_DRAFTERS];
    td_spec_plan plan;
    td_plan_node *plan_nodes;   /* max_rows */
    td_draft **plan_drafts;     /* max_seqs */
    int8_t **plan_origin;
    td_verify_item *items;      /* max_seqs */
    sess_seq *seqs;
    int32_t obs_top[TD_DRAFT_MAX + 1][OBS_TOP];
    td_observation obs[TD_DRAFT_MAX + 1];
};

td_spec_session *td_spec_session_create(const td_tok *tok, int32_t n_vocab, td_target *target,
                                        td_drafter *const *drafters, int32_t n_drafters,
                                        const td_spec_params *sp, int32_t max_seqs, int32_t max_rows,
                                        int32_t max_len, td_err *err) {
    if (!tok || !target || n_vocab < 1 || max_seqs < 1 || max_rows < 1 || max_len < 2) {
        td_err_set(err, TD_E_ARG, "speculative session: tokenizer, target and sizes are required");
        return NULL;
    }
    if (n_drafters < 0 || n_drafters > MAX_DRAFTERS) {
        td_err_set(err, TD_E_ARG, "%d drafters (at most %d)", n_drafters, MAX_DRAFTERS);
        return NULL;
    }
    if (sp->draft_max < 0 || sp->draft_max > TD_DRAFT_MAX || sp->draft_min < 0 || sp->draft_min > sp->draft_max) {
        td_err_set(err, TD_E_ARG, "draft length bounds [%d, %d] invalid (0..%d)", sp->draft_min, sp->draft_max,
                   TD_DRAFT_MAX);
        return NULL;
    }
    if (max_rows < max_seqs) {
        td_err_set(err, TD_E_ARG, "%d sequences need at least as many batch rows (have %d)", max_seqs, max_rows);
        return NULL;
    }
    td_spec_session *s = calloc(1, sizeof *s);
    if (!s) goto nomem;
    *s = (td_spec_session){.tok = tok, .n_vocab = n_vocab, .target = target, .drafters = drafters,
                           .n_drafters = n_drafters, .sp = *sp, .max_seqs = max_seqs, .max_rows = max_rows,
                           .max_len = max_len};
    for (int i = 0; i < n_drafters; i++) s->wants_obs |= drafters[i]->ops->observe != NULL;
    td_spec_plan_init(&s->plan, sp->row_cost);
    s->plan_nodes = malloc((size_t)max_rows * sizeof *s->plan_nodes);
    s->plan_drafts = malloc((size_t)max_seqs * sizeof *s->plan_drafts);
    s->plan_origin = malloc((size_t)max_seqs * sizeof *s->plan_origin);
    s->items = malloc((size_t)max_seqs * sizeof *s->items);
    s->seqs = calloc((size_t)max_seqs, sizeof *s->seqs);
    if (!s->plan_nodes || !s->plan_drafts || !s->plan_origin || !s->items || !s->seqs) {
        td_spec_session_destroy(s);
        goto nomem;
    }
    return s;
nomem:
    td_err_set(err, TD_E_NOMEM, "out of memory");
    return NULL;
}

static void free_seq(td_spec_session *s, int32_t seq) {
    sess_seq *q = &s->seqs[seq];
    free(q->hist);
    td_textout_destroy(q->out);
    *q = (sess_seq){0};
}

td_spec_learned *td_spec_learned_create(td_err *err) {
    td_spec_learned *l = calloc(1, sizeof *l);
    if (!l) {
        td_err_set(err, TD_E_NOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&l->mu, NULL);
    return l;
}

void td_spec_learned_destroy(td_spec_learned *l) {
    if (!l) return;
    pthread_mutex_destroy(&l->mu);
    free(l);
}

static learned_entry *learned_find(td_spec_learned *l, const char *kind) {
    for (int32_t i = 0; i < l->n; i++)
        if (strcmp(l->e[i].kind, kind) == 0) return &l->e[i];
    return NULL;
}

void td_spec_session_attach(td_spec_session *s, td_spec_learned *l, const char *kind) {
    s->learned = l;
    if (!l) return;
    snprintf(s->learned_kind, sizeof s->learned_kind, "%s", kind ? kind : "");
    pthread_mutex_lock(&l->mu);
    learned_entry *e = learned_find(l, s->learned_kind);
    if (e) {
        /* a fixed row cost asked for by this session's parameters stays */
        bool learn_cost = s->plan.learn_cost;
        double row_cost = s->plan.row_cost;
        s->plan = e->plan;
        if (!learn_cost) {
            s->plan.learn_cost = false;
            s->plan.row_cost = row_cost;
        }
        memcpy(s->score, e->score, sizeof s->score);
    }
    pthread_mutex_unlock(&l->mu);
}

void td_spec_session_destroy(td_spec_session *s) {
    if (!s) return;
    if (s->learned) {
        td_spec_learned *l = s->learned;
        pthread_mutex_lock(&l->mu);
        learned_entry *e = learned_find(l, s->learned_kind);
        if (!e) {
            if (l->n < LEARNED_KINDS) e = &l->e[l->n++];
            else { /* the least recently written kind goes */
                e = &l->e[0];
                for (int32_t i = 1; i < l->n; i++)
                    if (l->e[i].used < e->used) e = &l->e[i];
            }
            snprintf(e->kind, sizeof e->kind, "%s", s->learned_kind);
        }
        e->plan = s->plan;
        memcpy(e->score, s->score, sizeof s->score);
        e->used = ++l->clock;
        pthread_mutex_unlock(&l->mu);
    }
    if (s->seqs)
        for (int32_t i = 0; i < s->max_seqs; i++)
            if (s->seqs[i].req) {
                s->target->ops->release(s->target, i);
                free_seq(s, i);
            }
    free(s->seqs);
    free(s->plan_nodes);
    free(s->plan_drafts);
    free(s->plan_origin);
    free(s->items);
    free(s);
}

int td_spec_session_add(td_spec_session *s, int32_t seq, td_spec_request *q, td_err *err) {
    if (seq < 0 || seq >= s->max_seqs) return td_err_set(err, TD_E_ARG, "sequence %d out of range (0..%d)", seq, s->max_seqs - 1);
    if (s->seqs[seq].req) return td_err_set(err, TD_E_ARG, "sequence %d is busy", seq);
    memset(&q->stats, 0, sizeof q->stats);
    memset(&q->spec, 0, sizeof q->spec);
    if (q->n_prompt == 0) return td_err_set(err, TD_E_ARG, "request %d: empty prompt", seq);
    if (q->n_prompt >= (size_t)s->max_len)
        return td_err_set(err, TD_E_RANGE, "request %d: prompt of %zu tokens does not fit the context of %d", seq,
                          q->n_prompt, s->max_len);
    if (q->n_logprobs < -1 || q->n_logprobs > TD_TARGET_ALT_MAX)
        return td_err_set(err, TD_E_ARG, "request %d: logprobs %d (-1..%d)", seq, q->n_logprobs, TD_TARGET_ALT_MAX);
    int rc = td_sample_validate(&q->gen.sample, err);
    if (rc) return rc;
    sess_seq *z = &s->seqs[seq];
    size_t cap = q->n_prompt + (size_t)(q->gen.max_tokens > 0 ? q->gen.max_tokens : 0) + TD_DRAFT_MAX + 2;
    z->hist = malloc(cap * sizeof *z->hist);
    td_err why = {0};
    z->out = td_textout_create(q->gen.stop, q->gen.n_stop, q->emit, q->user, &why);
    if (!z->hist || !z->out) {
        rc = z->out ? td_err_set(err, TD_E_NOMEM, "out of memory") : td_err_set(err, why.code, "request %d: %s", seq, why.msg);
        free_seq(s, seq);
        return rc;
    }
    memcpy(z->hist, q->prompt, q->n_prompt * sizeof *z->hist);
    z->n_hist = q->n_prompt;
    z->cap = cap;
    z->budget = s->sp.adaptive ? (s->sp.draft_min > 2 ? s->sp.draft_min : (s->sp.draft_max < 2 ? s->sp.draft_max : 2))
                               : s->sp.draft_max;
    q->stats.n_prompt = (int32_t)q->n_prompt;
    q->stats.n_prefilled = (int32_t)q->n_prompt - 1; /* the last is the first pass's root */
    q->stats.stop = TD_STOP_LENGTH;
    td_target_seq_params tp = {.sample = q->gen.sample, .mode = s->sp.mode, .max_new_tokens = q->gen.max_tokens,
                               .n_top = s->wants_obs ? OBS_TOP : 0, .n_logprobs = q->n_logprobs,
                               .test_skip_residual = s->sp.test_skip_residual};
    double t0 = td_now_sec();
    if ((rc = s->target->ops->open(s->target, seq, &tp, q->prompt, q->n_prompt, err))) {
        free_seq(s, seq);
        return rc;
    }
    z->t_start = td_now_sec();
    q->stats.prefill_sec = z->t_start - t0;
    for (int d = 0; d < s->n_drafters; d++) {
        td_drafter *dr = s->drafters[d];
        if (dr->ops->reset) dr->ops->reset(dr, seq);
        if (dr->ops->set_params) dr->ops->set_params(dr, seq, &q->gen.sample);
    }
    z->req = q;
    if (q->gen.max_tokens <= 0) { /* nothing to generate: done at once */
        s->target->ops->release(s->target, seq);
        free_seq(s, seq);
    }
    return TD_OK;
}

bool td_spec_session_active(const td_spec_session *s, int32_t seq) {
    return seq >= 0 && seq < s->max_seqs && s->seqs[seq].req != NULL;
}

int32_t td_spec_session_n_active(const td_spec_session *s) {
    int32_t n = 0;
    for (int32_t i = 0; i < s->max_seqs; i++) n += s->seqs[i].req != NULL;
    return n;
}

static void finish(td_spec_session *s, int32_t seq) {
    sess_seq *z = &s->seqs[seq];
    td_spec_request *q = z->req;
    if (q->stats.stop != TD_STOP_STRING && q->stats.stop != TD_STOP_CALLER) td_textout_flush(z->out);
    q->stats.decode_sec = td_now_sec() - z->t_start;
    q->stats.n_forward = (int32_t)q->spec.n_steps;
    s->target->ops->release(s->target, seq);
    free_seq(s, seq);
}

void td_spec_session_cancel(td_spec_session *s, int32_t seq) {
    if (!td_spec_session_active(s, seq)) return;
    s->seqs[seq].req->stats.stop = TD_STOP_CALLER;
    finish(s, seq);
}

/* Adds the proposal p of drafter `who` into the merged tree of z, sharing
 * prefixes already there; nodes beyond the budget are dropped with their
 * descendants. */
static void merge_draft(sess_seq *z, const td_draft *p, int who, int32_t budget) {
    int32_t map[TD_DRAFT_MAX];
    td_draft *d = &z->draft;
    for (int32_t i = 0; i < p->n && i < TD_DRAFT_MAX; i++) {
        map[i] = -2;
        int32_t par = p->parent[i];
        if (par >= i || par < -1) continue; /* malformed: not topological */
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
            z->origin[found] = (int8_t)who;
        }
        map[i] = found;
    }
}

/* Drafters by recent score, best first (stable on index). */
static void order_drafters(const td_spec_session *s, int *order) {
    for (int i = 0; i < s->n_drafters; i++) order[i] = i;
    for (int i = 1; i < s->n_drafters; i++)
        for (int j = i; j > 0 && s->score[order[j]] > s->score[order[j - 1]]; j--) {
            int t = order[j]; order[j] = order[j - 1]; order[j - 1] = t;
        }
}

static int propose(td_spec_session *s, sess_seq *z, int32_t seq, int32_t budget, td_err *err) {
    z->draft.n = 0;
    if (budget <= 0) return TD_OK;
    int order[MAX_DRAFTERS];
    order_drafters(s, order);
    td_draft tmp;
    for (int i = 0; i < s->n_drafters && z->draft.n < budget; i++) {
        td_drafter *d = s->drafters[order[i]];
        tmp.n = 0;
        memset(tmp.conf, 0, sizeof tmp.conf); /* drafters without classes leave 0 */
        int rc = d->ops->propose(d, seq, z->hist, z->n_hist, budget - z->draft.n, &tmp);
        if (rc < 0) {
            if (!d->err.msg[0]) td_err_set(&d->err, rc, "%s", td_err_name(rc));
            return td_err_set(err, rc, "drafter %s failed on request %d: %s", d->ops->name, seq, d->err.msg);
        }
        merge_draft(z, &tmp, order[i], budget);
    }
    return TD_OK;
}

/* Appends one produced token with td_gen_run's stop checks, in its order.
 * *finished says whether the request is done. */
static int produce(td_spec_session *s, sess_seq *z, int32_t tk, const td_node_result *nr, bool *finished,
                   td_err *err) {
    td_spec_request *q = z->req;
    *finished = true;
    z->hist[z->n_hist++] = tk;
    if (q->out_tokens) q->out_tokens[q->stats.n_generated] = tk;
    q->stats.n_generated++;
    if (q->on_token && q->on_token(q->user, tk, nr)) { q->stats.stop = TD_STOP_CALLER; return TD_OK; }
    if (!q->gen.ignore_eos && td_tok_is_eog(s->tok, tk)) { q->stats.stop = TD_STOP_EOG; return TD_OK; }
    int pr = td_textout_push_token(z->out, s->tok, tk);
    if (pr == TD_TEXTOUT_STOP_STRING) { q->stats.stop = TD_STOP_STRING; return TD_OK; }
    if (pr == TD_TEXTOUT_STOP_CALLER) { q->stats.stop = TD_STOP_CALLER; return TD_OK; }
    if (pr < 0) return td_err_set(err, pr, "out of memory streaming token %d", tk);
    if (q->stats.n_generated >= q->gen.max_tokens) return TD_OK;
    if ((int32_t)z->n_hist >= s->max_len) { q->stats.stop = TD_STOP_CONTEXT; return TD_OK; }
    *finished = false;
    return TD_OK;
}

/* Tells the planner, for every node whose parent was kept (so the node was
 * really put to the test), whether it was kept too. */
static void learn_acceptance(td_spec_session *s, const sess_seq *z, const int32_t *path, int32_t n_path,
                             const int32_t *depth) {
    const td_draft *d = &z->draft;
    bool kept[TD_DRAFT_MAX] = {false};
    for (int32_t k = 0; k < n_path; k++) kept[path[k]] = true;
    for (int32_t i = 0; i < d->n; i++) {
        bool tested = d->parent[i] < 0 || kept[d->parent[i]];
        if (tested) td_spec_plan_learn(&s->plan, z->origin[i], d->conf[i], depth[i], kept[i]);
    }
}

/* Reads the target's walk of one sequence: produce its tokens, commit. */
static int settle(td_spec_session *s, int32_t seq, const td_verify_item *it, td_err *err) {
    sess_seq *z = &s->seqs[seq];
    const td_draft *d = &z->draft;
    size_t n_before = z->n_hist;
    int32_t depth[TD_DRAFT_MAX], max_depth = 0;
    td_draft_depths(d, depth);
    for (int32_t i = 0; i < d->n; i++) if (depth[i] > max_depth) max_depth = depth[i];
    if (it->n_path < 0 || it->n_path > d->n) return td_err_set(err, TD_E_IO, "target returned a walk of %d nodes", it->n_path);

    bool finished = false;
    int32_t node = -1, accepted = 0;
    for (int32_t k = 0; k <= it->n_path; k++) {
        const td_node_result *nr = &z->nodes[node + 1];
        int32_t tk = nr->sample;
        if (tk < 0 || tk >= s->n_vocab) return td_err_set(err, TD_E_IO, "target returned token %d", tk);
        if (k < it->n_path) {
            int32_t child = it->path[k];
            if (child < 0 || child >= d->n || d->parent[child] != node ||
                (s->sp.mode == TD_SPEC_EXACT && d->token[child] != tk))
                return td_err_set(err, TD_E_IO, "target returned an inconsistent walk at step %d", k);
        }
        int rc = produce(s, z, tk, nr, &finished, err);
        if (rc) return rc;
        if (finished || k == it->n_path) break;
        node = it->path[k];
        accepted++;
    }
    td_spec_request *q = z->req;
    q->spec.n_steps++;
    q->spec.n_drafted += d->n;
    q->spec.n_accepted += accepted;
    q->spec.n_tokens += (int64_t)(z->n_hist - n_before);
    if (finished) {
        finish(s, seq);
        return TD_OK;
    }
    learn_acceptance(s, z, it->path, accepted, depth);
    int rc = s->target->ops->commit(s->target, seq, it->path, accepted, err);
    if (rc) return rc;

    /* Credit the drafter whose node ended the accepted path. */
    if (d->n > 0) {
        int who = node >= 0 ? z->origin[node] : -1;
        for (int i = 0; i < s->n_drafters; i++) {
            float got = i == who ? (float)accepted : 0.0f;
            s->score[i] = 0.8f * s->score[i] + 0.2f * got;
        }
    }
    if (s->sp.adaptive && d->n > 0) {
        if (accepted >= max_depth) z->budget = z->budget * 2 > s->sp.draft_max ? s->sp.draft_max : z->budget * 2;
        else if (accepted * 2 < max_depth) z->budget = z->budget - 1 < s->sp.draft_min ? s->sp.draft_min : z->budget - 1;
    }
    size_t n_new = z->n_hist - n_before;
    if (s->wants_obs) {
        /* Root and every verified node: what the target would say next. */
        int32_t n_obs = 0;
        for (int32_t i = -1; i < d->n; i++) {
            const td_node_result *nr = &z->nodes[i + 1];
            int32_t k = nr->n_top < OBS_TOP ? nr->n_top : OBS_TOP;
            memcpy(s->obs_top[n_obs], nr->top, (size_t)k * sizeof(int32_t));
            int32_t ctx[3]; /* the node's token and the two before it */
            td_draft_context(d, i, z->hist, n_before, 3, ctx);
            s->obs[n_obs] = (td_observation){ctx[0], s->obs_top[n_obs], k, {ctx[1], ctx[2]}};
            n_obs++;
        }
        for (int i = 0; i < s->n_drafters; i++)
            if (s->drafters[i]->ops->observe) s->drafters[i]->ops->observe(s->drafters[i], seq, s->obs, n_obs);
    }
    for (int i = 0; i < s->n_drafters; i++)
        if (s->drafters[i]->ops->accept) s->drafters[i]->ops->accept(s->drafters[i], seq, z->hist, z->n_hist, n_new);
    return TD_OK;
}

int td_spec_session_step(td_spec_session *s, td_err *err) {
    int32_t active = td_spec_session_n_active(s);
    if (active == 0) return 0;
    for (int32_t i = 0; i < s->max_seqs; i++) {
        sess_seq *z = &s->seqs[i];
        if (!z->req) continue;
        /* budget: adaptive size, what fits in the context and in the pass */
        int32_t fit_ctx = s->max_len - (int32_t)z->n_hist;
        int32_t fit_rows = s->max_rows / active - 1;
        int32_t left = z->req->gen.max_tokens - z->req->stats.n_generated - 1;
        int32_t b = z->budget;
        if (b > fit_ctx) b = fit_ctx;
        if (b > fit_rows) b = fit_rows;
        if (b > left) b = left;
        int rc = propose(s, z, i, b, err);
        if (rc < 0) return rc;
    }
    if (s->sp.adaptive) {
        int32_t n = 0;
        for (int32_t i = 0; i < s->max_seqs; i++) {
            if (!s->seqs[i].req) continue;
            s->plan_drafts[n] = &s->seqs[i].draft;
            s->plan_origin[n] = s->seqs[i].origin;
            n++;
        }
        td_spec_plan_prune(&s->plan, s->plan_drafts, s->plan_origin, n, s->plan_nodes);
    }
    int32_t n_items = 0;
    for (int32_t i = 0; i < s->max_seqs; i++) {
        if (!s->seqs[i].req) continue;
        s->items[n_items++] = (td_verify_item){.seq = i, .tree = &s->seqs[i].draft, .nodes = s->seqs[i].nodes};
    }
    td_pass_info pass = {0};
    int rc = s->target->ops->verify(s->target, s->items, n_items, &pass, err);
    if (rc) return rc;
    if (pass.rows > 0) {
        td_spec_plan_time(&s->plan, pass.rows, pass.sec);
        /* rows of the pass that were not ours: other streams on the worker */
        int32_t own = 0;
        for (int32_t k = 0; k < n_items; k++) own += 1 + s->items[k].tree->n;
        double others = pass.rows > own ? (double)(pass.rows - own) : 0;
        s->plan.shared_rows = 0.7 * s->plan.shared_rows + 0.3 * others;
    }
    td_spec_plan_age(&s->plan);
    for (int32_t k = 0; k < n_items; k++)
        if ((rc = settle(s, s->items[k].seq, &s->items[k], err))) return rc;
    return td_spec_session_n_active(s);
}
