/* coord_drafter.c — a drafter that runs on a worker: the draft model of a
 * drafter worker, or layer skipping on a verifier. It is a td_drafter like
 * the in-process ones, so the session merges its proposals with the others.
 * Drafts only ever save time, so a worker that fails costs nothing but
 * drafts: propose returns none and the worker is left alone for a while.
 *
 * Overlap: right after proposing window i, the drafter asks its worker, in
 * the background, for one token more than it proposed and the window after
 * it, as if window i were accepted whole (that extra token is its guess of
 * the target's own token after the window). Verification of window i runs
 * meanwhile on the verifier. When the target did accept window i and picked
 * the guessed token, window i+1 is ready at once; otherwise it is thrown
 * away and drafted anew.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator.h"
#include "tandem/v1/worker.pb-c.h"

#define DRAFT_TIMEOUT_MS 5000
#define RETRY_AFTER_SEC 5.0

typedef struct prefetch {
    pthread_t th;
    bool running, ok;
    int32_t *hist;            /* the history it drafted after: window i's history + window i */
    size_t n, cap;
    size_t base;              /* window i's history length (window i starts there) */
    int32_t max_nodes;
    td_draft out;
    td_net_status st;
} prefetch;

typedef struct remote_drafter {
    td_drafter base;
    prefetch pf;
    int64_t hits, misses;
    td_coord *c;
    char role[16];
    char req[40];
    char name[32];
    td_coord_worker *w;
    uint64_t key;
    td_sample_params sp;
    double quiet_until;       /* after a failure: no drafts until then */
} remote_drafter;

static void give_back(remote_drafter *d, bool failed) {
    if (!d->w) return;
    if (d->key && !failed) {
        Tandem__V1__ReleaseRequest q = TANDEM__V1__RELEASE_REQUEST__INIT;
        q.request_id = d->req;
        q.seq = d->key;
        ProtobufCMessage *resp = NULL;
        td_net_status st;
        if (td_net_unary(d->w->ch, "/tandem.v1.Worker/Release", &q.base, &tandem__v1__release_response__descriptor,
                         &resp, 2000, NULL, 0, &st) == TD_NET_OK)
            protobuf_c_message_free_unpacked(resp, NULL);
    }
    td_coord_members_put(d->c->members, d->w, failed);
    d->w = NULL;
    d->key = 0;
}

/* One Draft call; 0 or the gRPC code. */
static int draft_call(remote_drafter *d, const int32_t *history, size_t n, int32_t max_nodes, td_draft *out,
                      td_net_status *st) {
    out->n = 0;
    Tandem__V1__DraftRequest q = TANDEM__V1__DRAFT_REQUEST__INIT;
    Tandem__V1__Sampling smp;
    td_coord_sampling_to(&d->sp, &smp);
    q.request_id = d->req;
    q.seq = d->key;
    q.n_history = n;
    q.history = (int32_t *)history;
    q.max_nodes = max_nodes;
    q.sampling = &smp;
    ProtobufCMessage *resp = NULL;
    int code = td_net_unary(d->w->ch, "/tandem.v1.Worker/Draft", &q.base, &tandem__v1__draft_response__descriptor,
                            &resp, DRAFT_TIMEOUT_MS, NULL, 0, st);
    if (code != TD_NET_OK) return code;
    const Tandem__V1__DraftResponse *r = (const Tandem__V1__DraftResponse *)resp;
    size_t k = r->n_tokens;
    if (k > (size_t)max_nodes || r->n_parents != k) k = 0; /* a malformed answer is no answer */
    for (size_t i = 0; i < k; i++) {
        out->token[i] = r->tokens[i];
        out->parent[i] = r->parents[i];
        out->prob[i] = i < r->n_probs ? r->probs[i] : 0;
        out->conf[i] = i < r->conf.len ? r->conf.data[i] : 0;
    }
    out->n = (int32_t)k;
    protobuf_c_message_free_unpacked(resp, NULL);
    return TD_NET_OK;
}

static void *prefetch_run(void *arg) {
    remote_drafter *d = arg;
    prefetch *pf = &d->pf;
    pf->ok = draft_call(d, pf->hist, pf->n, pf->max_nodes, &pf->out, &pf->st) == TD_NET_OK;
    return NULL;
}

static void prefetch_join(remote_drafter *d) {
    if (!d->pf.running) return;
    pthread_join(d->pf.th, NULL);
    d->pf.running = false;
}

/* Whether node j of a proposal continues node j-1 (a chain). */
static bool is_chain(const td_draft *p) {
    for (int32_t j = 0; j < p->n; j++)
        if (p->parent[j] != j - 1) return false;
    return true;
}

/* Starts drafting window i+1 while window i (out) is verified. */
static void prefetch_start(remote_drafter *d, const int32_t *history, size_t n, const td_draft *out, int32_t max_nodes) {
    prefetch *pf = &d->pf;
    pf->ok = false;
    if (!d->c->overlap || out->n <= 0 || !is_chain(out) || max_nodes + 1 > TD_DRAFT_MAX) return;
    size_t need = n + (size_t)out->n;
    if (need > pf->cap) {
        int32_t *h = realloc(pf->hist, need * 2 * sizeof *h);
        if (!h) return;
        pf->hist = h;
        pf->cap = need * 2;
    }
    memcpy(pf->hist, history, n * sizeof *history);
    memcpy(pf->hist + n, out->token, (size_t)out->n * sizeof(int32_t));
    pf->n = need;
    pf->base = n + 1; /* a history not past window i's first token holds nothing new */
    pf->max_nodes = max_nodes + 1; /* the guessed target token, then window i+1 */
    pf->running = pthread_create(&pf->th, NULL, prefetch_run, d) == 0;
}

/* The draft model is deterministic given the history (keyed sampling,
 * batch-invariant passes), so everything it said after window i's history
 * is known: window i, then the prefetch's guess and window i+1. Whatever
 * part of that the target kept, the rest is still the drafter's own
 * continuation: propose it without asking again. */
static bool prefetch_take(remote_drafter *d, const int32_t *history, size_t n, int32_t max_nodes, td_draft *out) {
    prefetch *pf = &d->pf;
    if (!pf->ok) return false;
    size_t known = pf->n + (size_t)pf->out.n;
    if (n < pf->base || n >= known) return false;
    size_t same = n < pf->n ? n : pf->n;
    if (memcmp(history, pf->hist, same * sizeof *history) != 0) return false;
    for (size_t i = pf->n; i < n; i++)
        if (history[i] != pf->out.token[i - pf->n]) return false;
    int32_t k = 0;
    for (size_t i = n; i < known && k < max_nodes; i++, k++) {
        bool in_window = i < pf->n;
        out->token[k] = in_window ? pf->hist[i] : pf->out.token[i - pf->n];
        out->parent[k] = k - 1;
        out->prob[k] = in_window ? 0 : pf->out.prob[i - pf->n];
        out->conf[k] = in_window ? 0 : pf->out.conf[i - pf->n];
    }
    out->n = k;
    return k > 0;
}

static int rd_propose(td_drafter *base, int32_t seq, const int32_t *history, size_t n, int32_t max_nodes,
                      td_draft *out) {
    remote_drafter *d = (remote_drafter *)base;
    (void)seq;
    out->n = 0;
    prefetch_join(d);
    if (max_nodes <= 0 || td_now_sec() < d->quiet_until) return TD_OK;
    if (!d->w) {
        if (!(d->w = td_coord_members_pick(d->c->members, d->role, NULL, NULL))) {
            d->quiet_until = td_now_sec() + RETRY_AFTER_SEC;
            return TD_OK;
        }
        d->key = atomic_fetch_add(&d->c->next_seq, 1);
        d->pf.ok = false;
    }
    if (prefetch_take(d, history, n, max_nodes, out)) {
        d->hits++;
    } else {
        d->misses += d->pf.ok;
        td_net_status st;
        if (draft_call(d, history, n, max_nodes, out, &st) != TD_NET_OK) {
            td_log(TD_LOG_WARN, d->req, "%s on %s failed (%s: %s): drafting without it for %.0f s", d->name, d->w->id,
                   td_net_code_name(st.code), st.msg, RETRY_AFTER_SEC);
            give_back(d, true);
            d->quiet_until = td_now_sec() + RETRY_AFTER_SEC;
            out->n = 0;
            return TD_OK;
        }
    }
    prefetch_start(d, history, n, out, max_nodes);
    return TD_OK;
}

static void rd_reset(td_drafter *base, int32_t seq) {
    (void)seq;
    remote_drafter *d = (remote_drafter *)base;
    prefetch_join(d);
    d->pf.ok = false;
    give_back(d, false);
}

static void rd_set_params(td_drafter *base, int32_t seq, const td_sample_params *sp) {
    (void)seq;
    ((remote_drafter *)base)->sp = *sp;
}

static void rd_destroy(td_drafter *base) {
    remote_drafter *d = (remote_drafter *)base;
    prefetch_join(d);
    if (d->hits + d->misses > 0)
        td_log(TD_LOG_DEBUG, d->req, "%s: %lld of %lld overlapped drafts used", d->name, (long long)d->hits,
               (long long)(d->hits + d->misses));
    give_back(d, false);
    free(d->pf.hist);
    free(d);
}

static const td_drafter_ops model_ops = {.name = "model", .propose = rd_propose, .reset = rd_reset,
                                         .destroy = rd_destroy, .set_params = rd_set_params};
static const td_drafter_ops skip_ops = {.name = "layerskip", .propose = rd_propose, .reset = rd_reset,
                                        .destroy = rd_destroy, .set_params = rd_set_params};

td_drafter *td_coord_drafter_create(td_coord *c, const char *role, const char *request_id, td_err *err) {
    remote_drafter *d = calloc(1, sizeof *d);
    if (!d) {
        td_err_set(err, TD_E_NOMEM, "out of memory");
        return NULL;
    }
    bool drafter = strcmp(role, "drafter") == 0;
    d->base.ops = drafter ? &model_ops : &skip_ops;
    d->c = c;
    snprintf(d->role, sizeof d->role, "%s", role);
    snprintf(d->req, sizeof d->req, "%s", request_id);
    snprintf(d->name, sizeof d->name, "%s", drafter ? "draft model" : "layer-skip drafter");
    d->sp = td_sample_defaults();
    return &d->base;
}
