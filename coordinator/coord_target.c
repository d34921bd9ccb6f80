/* coord_target.c — the remote target: verification of one request's
 * sequence on a verifier worker, through tandem.v1.Worker.
 *
 * It keeps the sequence's accepted tokens, so when its worker is lost
 * (unreachable, a step past its deadline — a hung process —, or the worker
 * no longer knows the sequence) it opens the sequence again on another
 * verifier with the same fingerprint and repeats the step there. The same
 * fingerprint computes the same bits, and sampling is keyed by seed and
 * position, so the tokens are those the lost worker would have produced.
 *
 * Per-step deadlines: a verification may take at most max(floor, 20 x the
 * step time measured so far), never past the client's own deadline; a
 * prefill gets a budget that grows with the prompt.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator.h"
#include "tandem/v1/worker.pb-c.h"

#define AFFINITY_SLACK 2 /* requests in flight a prefix's verifier may be ahead by and still get it */
#define MAX_MOVES 4
#define W "/tandem.v1.Worker/"

typedef struct remote_seq {
    bool open, verified;
    td_target_seq_params p;
    int32_t *hist;           /* accepted tokens + the pending one */
    size_t n_hist, cap;
    uint64_t key;            /* the sequence's key on its current worker */
    td_draft tree;
    int32_t walk[TD_DRAFT_MAX], n_walk;
    int32_t walk_sample[TD_DRAFT_MAX + 1];
    /* the last commit, not yet sent: it rides on the next Verify */
    bool commit_pending;
    int32_t commit_path[TD_DRAFT_MAX], n_commit;
} remote_seq;

typedef struct remote_target {
    td_target base;
    td_coord *c;
    char req[40];
    char fingerprint[160];
    int64_t deadline_at;     /* client's deadline (ms, monotonic); INT64_MAX none */
    td_coord_worker *w;      /* current verifier, or NULL */
    int32_t moves;
    int32_t reused;          /* prompt tokens the verifier had cached (last Prefill) */
    double step_sec;         /* recent step wall time, seen from here */
    remote_seq seq;          /* one sequence per request */
} remote_target;

int td_coord_grpc_code(int rc) {
    if (rc <= -100) return -100 - rc;
    switch (rc) {
    case TD_OK: return TD_NET_OK;
    case TD_E_ARG: case TD_E_RANGE: case TD_E_FORMAT: return TD_NET_INVALID_ARGUMENT;
    case TD_E_NOMEM: return TD_NET_RESOURCE_EXHAUSTED;
    case TD_E_UNSUPPORTED: return TD_NET_UNIMPLEMENTED;
    case TD_E_IO: return TD_NET_UNAVAILABLE;
    default: return TD_NET_INTERNAL;
    }
}

/* Worth trying another worker: the worker (not the request) failed. */
static bool worker_failed(int code) {
    return code == TD_NET_UNAVAILABLE || code == TD_NET_DEADLINE_EXCEEDED || code == TD_NET_NOT_FOUND ||
           code == TD_NET_CANCELLED || code == TD_NET_INTERNAL || code == TD_NET_UNKNOWN ||
           code == TD_NET_RESOURCE_EXHAUSTED;
}

static int64_t budget(const remote_target *t, int64_t want_ms) {
    if (t->deadline_at == INT64_MAX) return want_ms;
    int64_t left = t->deadline_at - td_coord_now_ms();
    return left < want_ms ? (left > 1 ? left : 1) : want_ms;
}

static int64_t step_budget(const remote_target *t) {
    int64_t want = (int64_t)(t->step_sec * 20 * 1000);
    if (want < t->c->step_timeout_min_ms) want = t->c->step_timeout_min_ms;
    return budget(t, want);
}

void td_coord_sampling_to(const td_sample_params *sp, Tandem__V1__Sampling *m) {
    tandem__v1__sampling__init(m);
    m->temperature = sp->temperature;
    m->top_k = sp->top_k;
    m->top_p = sp->top_p;
    m->min_p = sp->min_p;
    m->repeat_penalty = sp->repeat_penalty;
    m->repeat_last_n = sp->repeat_last_n;
    m->seed = sp->seed;
}

/* Frees key on the current worker, best effort, in its own time (not the
 * client's: a request that ran out of time or was cancelled must still free
 * its sequence). A worker that cannot be reached reclaims it itself after
 * its idle timeout. */
static void release_key(remote_target *t, uint64_t key, int64_t timeout_ms) {
    if (!t->w || !key) return;
    Tandem__V1__ReleaseRequest q = TANDEM__V1__RELEASE_REQUEST__INIT;
    q.request_id = t->req;
    q.seq = key;
    ProtobufCMessage *resp = NULL;
    td_net_status st;
    if (td_net_unary(t->w->ch, W "Release", &q.base, &tandem__v1__release_response__descriptor, &resp, timeout_ms,
                     NULL, 0, &st) == TD_NET_OK)
        protobuf_c_message_free_unpacked(resp, NULL);
}

static void release_remote(remote_target *t) {
    release_key(t, t->seq.key, 2000);
    t->seq.key = 0;
}

/* Opens the sequence (its whole history) on worker w. */
static int prefill_on(remote_target *t, td_net_status *st) {
    remote_seq *s = &t->seq;
    Tandem__V1__PrefillRequest q = TANDEM__V1__PREFILL_REQUEST__INIT;
    Tandem__V1__Sampling smp;
    td_coord_sampling_to(&s->p.sample, &smp);
    s->key = atomic_fetch_add(&t->c->next_seq, 1);
    q.request_id = t->req;
    q.seq = s->key;
    q.n_prompt_ids = s->n_hist;
    q.prompt_ids = s->hist;
    q.sampling = &smp;
    q.max_new_tokens = s->p.max_new_tokens;
    q.top_k = s->p.n_top;
    q.logprobs = s->p.n_logprobs;
    ProtobufCMessage *resp = NULL;
    int64_t ms = 5000 + (int64_t)s->n_hist * 20;
    if (td_net_unary(t->w->ch, W "Prefill", &q.base, &tandem__v1__prefill_response__descriptor, &resp, budget(t, ms),
                     NULL, 0, st) != TD_NET_OK) {
        /* the worker may have opened it before the answer was lost */
        if (st->code == TD_NET_DEADLINE_EXCEEDED || st->code == TD_NET_CANCELLED) release_key(t, s->key, 500);
        s->key = 0;
        return st->code;
    }
    t->reused = ((const Tandem__V1__PrefillResponse *)resp)->reused;
    protobuf_c_message_free_unpacked(resp, NULL);
    return TD_NET_OK;
}

/* Gives the current worker back (failed: avoid it) and opens the sequence
 * on another one; the caller repeats its step. */
static int move(remote_target *t, const td_net_status *why, td_err *err) {
    char lost[128];
    snprintf(lost, sizeof lost, "%s", t->w ? t->w->id : "");
    if (t->w) {
        td_log(TD_LOG_WARN, t->req, "verifier %s failed (%s: %s): moving the sequence", lost, td_net_code_name(why->code),
               why->msg);
        release_key(t, t->seq.key, 500); /* in case it is only slow */
        t->seq.key = 0;
        td_coord_members_put(t->c->members, t->w, true);
        t->w = NULL;
    }
    td_net_status st = *why;
    for (int attempt = 0; attempt < MAX_MOVES; attempt++) {
        if (t->deadline_at != INT64_MAX && td_coord_now_ms() >= t->deadline_at)
            return td_err_set(err, TD_COORD_E_GRPC(TD_NET_DEADLINE_EXCEEDED), "deadline exceeded");
        const char *fp = t->fingerprint[0] ? t->fingerprint : NULL;
        /* the verifier that holds the longest prefix of this history in its
         * cache, unless it is much busier than the least-loaded one */
        char near[128] = "";
        if (t->c->affinity) td_coord_affinity_lookup(t->c->affinity, t->seq.hist, t->seq.n_hist, near);
        t->w = td_coord_members_pick_prefer(t->c->members, "verifier", fp, lost[0] ? lost : NULL, near[0] ? near : NULL,
                                            AFFINITY_SLACK);
        /* the lost one again as a last resort: overloaded is not dead, and a
         * dead one refuses the connection at once */
        if (!t->w && lost[0]) t->w = td_coord_members_pick(t->c->members, "verifier", fp, NULL);
        if (!t->w)
            return td_err_set(err, TD_COORD_E_GRPC(TD_NET_UNAVAILABLE), "no %sverifier available%s%s",
                              t->fingerprint[0] ? "compatible " : "", lost[0] ? " (lost " : "", lost[0] ? lost : "");
        if (lost[0] || t->moves > 0) t->moves++;
        int code = prefill_on(t, &st);
        if (code == TD_NET_OK) {
            t->seq.commit_pending = false; /* the new worker has the whole history */
            if (lost[0]) td_log(TD_LOG_INFO, t->req, "sequence re-opened on %s from %zu tokens", t->w->id, t->seq.n_hist);
            return TD_OK;
        }
        snprintf(lost, sizeof lost, "%s", t->w->id);
        bool failed = worker_failed(code);
        td_coord_members_put(t->c->members, t->w, failed);
        t->w = NULL;
        if (!failed) return td_err_set(err, TD_COORD_E_GRPC(code), "%s", st.msg);
        td_log(TD_LOG_WARN, t->req, "verifier %s refused the sequence (%s: %s)", lost, td_net_code_name(code), st.msg);
    }
    return td_err_set(err, TD_COORD_E_GRPC(st.code), "no verifier took the sequence: %s", st.msg);
}

static int rt_open(td_target *base, int32_t seq, const td_target_seq_params *p, const int32_t *tokens, size_t n,
                   td_err *err) {
    remote_target *t = (remote_target *)base;
    remote_seq *s = &t->seq;
    if (seq != 0 || s->open) return td_err_set(err, TD_E_ARG, "remote target: one sequence (0) per request");
    if (n == 0) return td_err_set(err, TD_E_ARG, "empty prompt");
    size_t cap = n + (size_t)(p->max_new_tokens > 0 ? p->max_new_tokens : 0) + TD_DRAFT_MAX + 2;
    if (!(s->hist = malloc(cap * sizeof *s->hist))) return td_err_set(err, TD_E_NOMEM, "out of memory");
    memcpy(s->hist, tokens, n * sizeof *s->hist);
    s->n_hist = n;
    s->cap = cap;
    s->p = *p;
    td_net_status none = {TD_NET_OK, ""};
    int rc = move(t, &none, err);
    if (rc) {
        free(s->hist);
        *s = (remote_seq){0};
        return rc;
    }
    s->open = true;
    return TD_OK;
}

static void copy_result(const Tandem__V1__NodeResult *m, td_node_result *r) {
    r->sample = m->sample;
    r->logprob = m->logprob;
    r->n_top = (int32_t)(m->n_top < TD_TARGET_TOP_MAX ? m->n_top : TD_TARGET_TOP_MAX);
    if (r->n_top) memcpy(r->top, m->top, (size_t)r->n_top * sizeof(int32_t));
    r->n_alt = (int32_t)(m->n_alternatives < TD_TARGET_ALT_MAX ? m->n_alternatives : TD_TARGET_ALT_MAX);
    for (int32_t a = 0; a < r->n_alt; a++) {
        r->alt_id[a] = m->alternatives[a]->id;
        r->alt_logprob[a] = m->alternatives[a]->logprob;
    }
}

static int rt_verify(td_target *base, td_verify_item *items, int32_t n_items, td_pass_info *pass, td_err *err) {
    remote_target *t = (remote_target *)base;
    remote_seq *s = &t->seq;
    if (n_items != 1 || items[0].seq != 0 || !s->open) return td_err_set(err, TD_E_ARG, "remote target: one open sequence");
    if (s->verified) return td_err_set(err, TD_E_ARG, "verify again before commit");
    td_verify_item *it = &items[0];
    const td_draft *d = it->tree;
    for (int attempt = 0;; attempt++) {
        Tandem__V1__VerifyRequest q = TANDEM__V1__VERIFY_REQUEST__INIT;
        q.request_id = t->req;
        q.seq = s->key;
        q.n_tokens = q.n_parents = (size_t)d->n;
        q.tokens = (int32_t *)d->token;
        q.parents = (int32_t *)d->parent;
        q.commit = s->commit_pending;
        q.n_commit_path = s->commit_pending ? (size_t)s->n_commit : 0;
        q.commit_path = s->commit_path;
        ProtobufCMessage *resp = NULL;
        td_net_status st;
        double t0 = td_now_sec();
        int code = td_net_unary(t->w->ch, W "Verify", &q.base, &tandem__v1__verify_response__descriptor, &resp,
                                step_budget(t), NULL, 0, &st);
        if (code == TD_NET_OK) {
            const Tandem__V1__VerifyResponse *r = (const Tandem__V1__VerifyResponse *)resp;
            s->commit_pending = false;
            double dt = td_now_sec() - t0;
            t->step_sec = t->step_sec > 0 ? 0.8 * t->step_sec + 0.2 * dt : dt;
            if (r->n_nodes != (size_t)d->n + 1 || r->n_path > (size_t)d->n) {
                protobuf_c_message_free_unpacked(resp, NULL);
                return td_err_set(err, TD_COORD_E_GRPC(TD_NET_INTERNAL), "verifier %s answered %zu nodes for %d",
                                  t->w->id, r->n_nodes, d->n + 1);
            }
            for (size_t i = 0; i < r->n_nodes; i++) copy_result(r->nodes[i], &it->nodes[i]);
            it->n_path = (int32_t)r->n_path;
            if (r->n_path) memcpy(it->path, r->path, r->n_path * sizeof(int32_t));
            if (pass) *pass = (td_pass_info){r->pass_sec, r->pass_rows};
            protobuf_c_message_free_unpacked(resp, NULL);
            /* remember the walk: commit appends it, a move re-opens after it */
            s->tree = *d;
            s->n_walk = it->n_path;
            memcpy(s->walk, it->path, (size_t)it->n_path * sizeof(int32_t));
            int32_t node = -1;
            for (int32_t k = 0; k <= it->n_path; k++) {
                s->walk_sample[k] = it->nodes[node + 1].sample;
                if (k < it->n_path) node = it->path[k];
            }
            s->verified = true;
            return TD_OK;
        }
        if (!worker_failed(code) || attempt >= MAX_MOVES)
            return td_err_set(err, TD_COORD_E_GRPC(code), "verifier %s: %s", t->w->id, st.msg);
        int rc = move(t, &st, err);
        if (rc) return rc;
    }
}

static int rt_commit(td_target *base, int32_t seq, const int32_t *path, int32_t n_path, td_err *err) {
    remote_target *t = (remote_target *)base;
    remote_seq *s = &t->seq;
    if (seq != 0 || !s->open || !s->verified) return td_err_set(err, TD_E_ARG, "commit without verify");
    if (n_path < 0 || n_path > s->n_walk) return td_err_set(err, TD_E_ARG, "path longer than the walk");
    for (int32_t k = 0; k < n_path; k++)
        if (path[k] != s->walk[k]) return td_err_set(err, TD_E_ARG, "path node %d is not on the walk", k);
    /* the accepted tokens are ours first: a worker lost from here on gets
     * them again when the sequence moves */
    for (int32_t k = 0; k < n_path; k++) s->hist[s->n_hist++] = s->tree.token[path[k]];
    s->hist[s->n_hist++] = s->walk_sample[n_path];
    s->verified = false;
    /* sent with the next Verify (one round trip a step, not two) */
    s->commit_pending = true;
    s->n_commit = n_path;
    memcpy(s->commit_path, path, (size_t)n_path * sizeof *path);
    (void)err;
    return TD_OK;
}

static void rt_release(td_target *base, int32_t seq) {
    remote_target *t = (remote_target *)base;
    if (seq != 0 || !t->seq.open) return;
    /* the worker keeps the cached part warm for a request that continues it */
    if (t->c->affinity && t->w && t->seq.n_hist > 1)
        td_coord_affinity_record(t->c->affinity, t->seq.hist, t->seq.n_hist - 1, t->w->id);
    release_remote(t);
    free(t->seq.hist);
    t->seq = (remote_seq){0};
}

static void rt_destroy(td_target *base) {
    remote_target *t = (remote_target *)base;
    rt_release(base, 0);
    if (t->w) td_coord_members_put(t->c->members, t->w, false);
    free(t);
}

static const td_target_ops remote_ops = {rt_open, rt_verify, rt_commit, NULL, rt_release, rt_destroy, NULL};

td_target *td_coord_target_create(td_coord *c, const char *request_id, const char *fingerprint,
                                  int64_t deadline_at_ms, td_err *err) {
    remote_target *t = calloc(1, sizeof *t);
    if (!t) {
        td_err_set(err, TD_E_NOMEM, "out of memory");
        return NULL;
    }
    t->base.ops = &remote_ops;
    t->c = c;
    snprintf(t->req, sizeof t->req, "%s", request_id);
    snprintf(t->fingerprint, sizeof t->fingerprint, "%s", fingerprint ? fingerprint : "");
    t->deadline_at = deadline_at_ms;
    return &t->base;
}

const char *td_coord_target_worker(const td_target *base) {
    const remote_target *t = (const remote_target *)base;
    return t->w ? t->w->id : "";
}

int32_t td_coord_target_moves(const td_target *base) { return ((const remote_target *)base)->moves; }
int32_t td_coord_target_reused(const td_target *base) { return ((const remote_target *)base)->reused; }
