/* coord_score.c — tandem.v1.Inference/Score: tokenizes every item, splits
 * the items over all live verifiers of the model (one thread per share),
 * and retries a share on another verifier when its worker fails. Each item
 * scores alone (teacher forcing), so where it ran never changes its numbers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator.h"
#include "metrics/metrics.h"
#include "tandem/v1/inference.pb-c.h"
#include "tandem/v1/worker.pb-c.h"

#define MAX_SHARES 16
#define SHARE_ATTEMPTS 4

typedef struct item_ids {
    int32_t *prompt, *cont;
    size_t n_prompt, n_cont;
    char *error;                 /* tokenization failed: the item's error */
} item_ids;

typedef struct share {
    td_coord *c;
    const char *req, *fingerprint;
    const Tandem__V1__ScoreRequest *q;
    item_ids *items;
    size_t lo, hi;               /* items [lo, hi) */
    Tandem__V1__WorkerScoreResponse *resp;
    int code;
    char msg[256];
    int64_t deadline_ms;
} share;

static void *run_share(void *arg) {
    share *s = arg;
    size_t n = s->hi - s->lo;
    Tandem__V1__WorkerScoreItem *it = calloc(n ? n : 1, sizeof *it);
    Tandem__V1__WorkerScoreItem **itp = calloc(n ? n : 1, sizeof *itp);
    if (!it || !itp) {
        s->code = TD_NET_RESOURCE_EXHAUSTED;
        snprintf(s->msg, sizeof s->msg, "out of memory");
        goto out;
    }
    size_t m = 0;
    for (size_t i = s->lo; i < s->hi; i++) {
        if (s->items[i].error) continue;
        tandem__v1__worker_score_item__init(&it[m]);
        it[m].id = s->q->items[i]->id;
        it[m].n_prompt_ids = s->items[i].n_prompt;
        it[m].prompt_ids = s->items[i].prompt;
        it[m].n_continuation_ids = s->items[i].n_cont;
        it[m].continuation_ids = s->items[i].cont;
        itp[m] = &it[m];
        m++;
    }
    Tandem__V1__WorkerScoreRequest wq = TANDEM__V1__WORKER_SCORE_REQUEST__INIT;
    wq.request_id = (char *)s->req;
    wq.n_items = m;
    wq.items = itp;
    wq.top_k = s->q->top_k;
    char avoid[128] = "";
    s->code = TD_NET_UNAVAILABLE;
    snprintf(s->msg, sizeof s->msg, "no verifier available");
    for (int a = 0; a < SHARE_ATTEMPTS; a++) {
        td_coord_worker *w = td_coord_members_pick(s->c->members, "verifier", s->fingerprint, avoid[0] ? avoid : NULL);
        if (!w) break;
        td_net_status st;
        ProtobufCMessage *resp = NULL;
        int code = td_net_unary(w->ch, "/tandem.v1.Worker/Score", &wq.base, &tandem__v1__worker_score_response__descriptor,
                                &resp, s->deadline_ms, NULL, 0, &st);
        bool failed = code == TD_NET_UNAVAILABLE || code == TD_NET_INTERNAL || code == TD_NET_CANCELLED ||
                      code == TD_NET_UNKNOWN;
        snprintf(avoid, sizeof avoid, "%s", w->id);
        if (code != TD_NET_OK)
            td_log(TD_LOG_WARN, s->req, "Score share of %zu items on %s: %s: %s", m, w->id, td_net_code_name(code), st.msg);
        td_coord_members_put(s->c->members, w, failed);
        s->code = code;
        snprintf(s->msg, sizeof s->msg, "%s", st.msg);
        if (code == TD_NET_OK) {
            s->resp = (Tandem__V1__WorkerScoreResponse *)resp;
            if (s->resp->n_results != m) {
                s->code = TD_NET_INTERNAL;
                snprintf(s->msg, sizeof s->msg, "worker answered %zu results for %zu items", s->resp->n_results, m);
            }
            break;
        }
        if (!failed) break;
    }
out:
    free(it);
    free(itp);
    return NULL;
}

static int tokenize_item(const td_coord_model *model, const Tandem__V1__ScoreItem *x, bool add_bos, item_ids *o,
                         td_err *err) {
    size_t pl = strlen(x->prompt), cl = strlen(x->continuation);
    if (pl && x->n_prompt_ids) return td_err_set(err, TD_E_ARG, "prompt and prompt_ids: give one");
    if (cl && x->n_continuation_ids) return td_err_set(err, TD_E_ARG, "continuation and continuation_ids: give one");
    if (!td_coord_utf8_valid(x->prompt, pl) || !td_coord_utf8_valid(x->continuation, cl))
        return td_err_set(err, TD_E_ARG, "prompt or continuation: not valid UTF-8");
    int rc;
    if (x->n_prompt_ids) {
        if (!(o->prompt = malloc(x->n_prompt_ids * sizeof(int32_t)))) return td_err_set(err, TD_E_NOMEM, "out of memory");
        memcpy(o->prompt, x->prompt_ids, x->n_prompt_ids * sizeof(int32_t));
        o->n_prompt = x->n_prompt_ids;
    } else if ((rc = td_tok_encode(model->tok, x->prompt, pl, add_bos, false, &o->prompt, &o->n_prompt, err)))
        return rc;
    if (x->n_continuation_ids) {
        if (!(o->cont = malloc(x->n_continuation_ids * sizeof(int32_t)))) return td_err_set(err, TD_E_NOMEM, "out of memory");
        memcpy(o->cont, x->continuation_ids, x->n_continuation_ids * sizeof(int32_t));
        o->n_cont = x->n_continuation_ids;
    } else if ((rc = td_tok_encode(model->tok, x->continuation, cl, false, false, &o->cont, &o->n_cont, err)))
        return rc;
    if (o->n_prompt == 0) return td_err_set(err, TD_E_ARG, "prompt: no tokens (a continuation needs context; add_bos gives one)");
    if (o->n_cont == 0) return td_err_set(err, TD_E_ARG, "continuation: no tokens");
    if (o->n_prompt + o->n_cont > (size_t)model->ctx)
        return td_err_set(err, TD_E_ARG, "prompt + continuation: %zu tokens exceed the context of %d", o->n_prompt + o->n_cont,
                          model->ctx);
    for (size_t i = 0; i < o->n_prompt + o->n_cont; i++) {
        int32_t t = i < o->n_prompt ? o->prompt[i] : o->cont[i - o->n_prompt];
        if (t < 0 || t >= model->vocab_size) return td_err_set(err, TD_E_ARG, "token %d outside the vocabulary", t);
    }
    return TD_OK;
}

void td_coord_score(td_net_call *call, const ProtobufCMessage *msg, void *user) {
    td_coord *c = user;
    const Tandem__V1__ScoreRequest *q = (const Tandem__V1__ScoreRequest *)msg;
    char req[40];
    td_coord_request_id(q->request_id, req);
    td_err err = {0};
    size_t n = q->n_items;
    item_ids *items = NULL;
    share shares[MAX_SHARES];
    int32_t n_shares = 0;
    Tandem__V1__ScoreResult *res = NULL;
    Tandem__V1__ScoreResult **resp = NULL;
    Tandem__V1__ScoredToken **tokp = NULL;
    Tandem__V1__ScoredToken *toks = NULL;
    Tandem__V1__TokenLogprob **altp = NULL;
    Tandem__V1__TokenLogprob *alts = NULL;
    int code = TD_NET_OK;
    if (q->top_k < 0 || q->top_k > TD_TARGET_ALT_MAX) {
        td_net_call_fail(call, TD_NET_INVALID_ARGUMENT, "top_k: %d (0..%d)", q->top_k, TD_TARGET_ALT_MAX);
        return;
    }
    int64_t left = td_net_call_deadline_ms(call);
    td_coord_worker *w = td_coord_members_pick(c->members, "verifier", NULL, NULL);
    if (!w) {
        td_net_call_fail(call, TD_NET_UNAVAILABLE, "no verifier available");
        return;
    }
    const td_coord_model *model = td_coord_models_get(c->models, w, left == INT64_MAX ? 10000 : left, &err);
    /* the items go to the verifiers of the picked one's fingerprint (see
     * td_coord_model_for) */
    char fingerprint[160];
    if (model) snprintf(fingerprint, sizeof fingerprint, "%s", w->fingerprint[0] ? w->fingerprint : model->fingerprint);
    td_coord_members_put(c->members, w, model == NULL);
    if (!model) {
        td_net_call_fail(call, td_coord_grpc_code(err.code), "%s", err.msg);
        return;
    }
    if (q->model[0] && strcmp(q->model, model->model_id) && strcmp(q->model, model->model_name)) {
        td_net_call_fail(call, TD_NET_NOT_FOUND, "model: \"%.80s\" is not served here", q->model);
        return;
    }
    items = calloc(n ? n : 1, sizeof *items);
    if (!items) { code = TD_NET_RESOURCE_EXHAUSTED; td_err_set(&err, TD_E_NOMEM, "out of memory"); goto out; }
    size_t n_ok = 0;
    for (size_t i = 0; i < n; i++) {
        td_err ie = {0};
        if (tokenize_item(model, q->items[i], q->add_bos, &items[i], &ie)) items[i].error = strdup(ie.msg[0] ? ie.msg : "invalid item");
        else n_ok++;
    }
    /* shares: one per live verifier, at most MAX_SHARES, of consecutive items */
    int32_t n_workers = td_coord_members_count(c->members, "verifier", fingerprint);
    if (n_workers < 1) n_workers = 1;
    if (n_workers > MAX_SHARES) n_workers = MAX_SHARES;
    if ((size_t)n_workers > n) n_workers = n ? (int32_t)n : 1;
    pthread_t th[MAX_SHARES];
    bool started[MAX_SHARES] = {false};
    for (int32_t k = 0; k < n_workers; k++) {
        shares[k] = (share){.c = c, .req = req, .fingerprint = fingerprint, .q = q, .items = items,
                            .lo = n * (size_t)k / (size_t)n_workers, .hi = n * (size_t)(k + 1) / (size_t)n_workers,
                            .deadline_ms = left == INT64_MAX ? 0 : left};
        n_shares++;
        if (n_ok == 0) continue;
        started[k] = pthread_create(&th[k], NULL, run_share, &shares[k]) == 0;
        if (!started[k]) run_share(&shares[k]);
    }
    for (int32_t k = 0; k < n_shares; k++)
        if (started[k]) pthread_join(th[k], NULL);
    for (int32_t k = 0; k < n_shares && n_ok; k++)
        if (shares[k].code != TD_NET_OK) {
            code = shares[k].code;
            td_err_set(&err, TD_E_IO, "%s", shares[k].msg);
            goto out;
        }
    /* the answer, in item order */
    size_t total = 0, k = (size_t)q->top_k;
    for (int32_t s = 0; s < n_shares; s++)
        if (shares[s].resp)
            for (size_t i = 0; i < shares[s].resp->n_results; i++) total += shares[s].resp->results[i]->n_tokens;
    res = calloc(n ? n : 1, sizeof *res);
    resp = calloc(n ? n : 1, sizeof *resp);
    toks = calloc(total ? total : 1, sizeof *toks);
    tokp = calloc(total ? total : 1, sizeof *tokp);
    alts = calloc(total * k > 0 ? total * k : 1, sizeof *alts);
    altp = calloc(total * k > 0 ? total * k : 1, sizeof *altp);
    if (!res || !resp || !toks || !tokp || !alts || !altp) {
        code = TD_NET_RESOURCE_EXHAUSTED;
        td_err_set(&err, TD_E_NOMEM, "out of memory");
        goto out;
    }
    size_t t = 0;
    for (int32_t s = 0; s < n_shares; s++) {
        size_t r = 0;
        for (size_t i = shares[s].lo; i < shares[s].hi; i++) {
            Tandem__V1__ScoreResult *o = &res[i];
            tandem__v1__score_result__init(o);
            o->id = q->items[i]->id;
            resp[i] = o;
            if (items[i].error) { o->error = items[i].error; continue; }
            const Tandem__V1__WorkerScoreResult *wr = shares[s].resp->results[r++];
            if (wr->error[0]) { o->error = wr->error; continue; }
            o->n_tokens = wr->n_tokens;
            o->tokens = tokp + t;
            o->all_greedy = true;
            for (size_t j = 0; j < wr->n_tokens; j++, t++) {
                const Tandem__V1__WorkerScoredToken *x = wr->tokens[j];
                tandem__v1__scored_token__init(&toks[t]);
                toks[t].id = x->id;
                toks[t].logprob = x->logprob;
                toks[t].greedy = x->greedy;
                size_t kk = x->n_top < k ? x->n_top : k;
                toks[t].n_top = kk;
                toks[t].top = altp + t * k;
                for (size_t a = 0; a < kk; a++) {
                    tandem__v1__token_logprob__init(&alts[t * k + a]);
                    alts[t * k + a].id = x->top[a]->id;
                    alts[t * k + a].logprob = x->top[a]->logprob;
                    altp[t * k + a] = &alts[t * k + a];
                }
                tokp[t] = &toks[t];
                o->logprob_sum += x->logprob;
                o->all_greedy = o->all_greedy && x->greedy;
            }
            o->token_count = (int32_t)wr->n_tokens;
        }
    }
    Tandem__V1__ScoreResponse r = TANDEM__V1__SCORE_RESPONSE__INIT;
    r.n_results = n;
    r.results = resp;
    r.request_id = req;
    td_net_call_reply(call, &r.base);
    td_metrics_score_done((int64_t)n_ok, (int64_t)total);
    td_log(TD_LOG_INFO, req, "Score: %zu items (%zu invalid), %zu tokens over %d verifiers", n, n - n_ok, total, n_shares);
out:
    if (code != TD_NET_OK) {
        td_log(TD_LOG_WARN, req, "Score failed: %s: %s", td_net_code_name(code), err.msg);
        td_net_call_fail(call, code, "%s", err.msg);
    }
    for (int32_t s = 0; s < n_shares; s++)
        if (shares[s].resp) protobuf_c_message_free_unpacked(&shares[s].resp->base, NULL);
    if (items)
        for (size_t i = 0; i < n; i++) {
            free(items[i].prompt);
            free(items[i].cont);
            free(items[i].error);
        }
    free(items);
    free(res);
    free(resp);
    free(toks);
    free(tokp);
    free(alts);
    free(altp);
}
