/* worker_rpc.c — tandem.v1.Worker over gRPC: each handler checks its
 * message, calls the engine, and answers with the engine's result or a gRPC
 * status whose message names the offending field.
 */
#include <stdlib.h>
#include <string.h>

#include "net/net.h"
#include "tandem/v1/worker.pb-c.h"
#include "worker.h"

#define SVC "/tandem.v1.Worker/"

static int grpc_code(int rc) {
    switch (rc) {
    case TD_E_ARG: case TD_E_RANGE: case TD_E_FORMAT: return TD_NET_INVALID_ARGUMENT;
    case TD_E_NOMEM: case TD_WORKER_E_FULL: return TD_NET_RESOURCE_EXHAUSTED;
    case TD_WORKER_E_NOT_FOUND: return TD_NET_NOT_FOUND;
    case TD_WORKER_E_ROLE: return TD_NET_FAILED_PRECONDITION;
    case TD_WORKER_E_EXISTS: return TD_NET_ALREADY_EXISTS;
    case TD_E_UNSUPPORTED: return TD_NET_UNIMPLEMENTED;
    default: return TD_NET_INTERNAL;
    }
}

static void fail(td_net_call *c, const char *req, int rc, const td_err *err) {
    int code = grpc_code(rc);
    td_log(code == TD_NET_INTERNAL ? TD_LOG_ERROR : TD_LOG_DEBUG, req, "%s: %s: %s", td_net_call_method(c),
           td_net_code_name(code), err->msg);
    td_net_call_fail(c, code, "%s", err->msg);
}

static int sampling_from(const Tandem__V1__Sampling *m, td_sample_params *sp, td_err *err) {
    *sp = td_sample_defaults();
    if (m) {
        sp->temperature = m->temperature;
        sp->top_k = m->top_k;
        sp->top_p = m->top_p;
        sp->min_p = m->min_p;
        sp->repeat_penalty = m->repeat_penalty;
        sp->repeat_last_n = m->repeat_last_n;
        sp->seed = m->seed;
    }
    return td_sample_validate(sp, err);
}

static void on_prefill(td_net_call *c, const ProtobufCMessage *msg, void *user) {
    td_worker_engine *e = user;
    const Tandem__V1__PrefillRequest *q = (const Tandem__V1__PrefillRequest *)msg;
    td_err err = {0};
    td_target_seq_params p = {.max_new_tokens = q->max_new_tokens, .n_top = q->top_k, .n_logprobs = q->logprobs};
    int rc = sampling_from(q->sampling, &p.sample, &err);
    if (rc == TD_OK && (q->top_k < 0 || q->top_k > TD_TARGET_TOP_MAX))
        rc = td_err_set(&err, TD_E_ARG, "top_k: %d (0..%d)", q->top_k, TD_TARGET_TOP_MAX);
    if (rc == TD_OK && (q->logprobs < -1 || q->logprobs > TD_TARGET_ALT_MAX))
        rc = td_err_set(&err, TD_E_ARG, "logprobs: %d (-1..%d)", q->logprobs, TD_TARGET_ALT_MAX);
    if (rc == TD_OK && q->max_new_tokens < 0) rc = td_err_set(&err, TD_E_ARG, "max_new_tokens: %d", q->max_new_tokens);
    int32_t cached = 0, reused = 0;
    if (rc == TD_OK)
        rc = td_worker_prefill(e, q->request_id, q->seq, &p, q->prompt_ids, q->n_prompt_ids, &cached, &reused, &err);
    if (rc) return fail(c, q->request_id, rc, &err);
    Tandem__V1__PrefillResponse r = TANDEM__V1__PREFILL_RESPONSE__INIT;
    r.cached = cached;
    r.reused = reused;
    td_net_call_reply(c, &r.base);
}

static void on_verify(td_net_call *c, const ProtobufCMessage *msg, void *user) {
    static const int32_t empty_path[1] = {0}; /* "commit nothing" is not "no commit" */
    td_worker_engine *e = user;
    const Tandem__V1__VerifyRequest *q = (const Tandem__V1__VerifyRequest *)msg;
    td_err err = {0};
    if (q->n_tokens != q->n_parents) {
        td_err_set(&err, TD_E_ARG, "tokens and parents: %zu and %zu entries (must match)", q->n_tokens, q->n_parents);
        return fail(c, q->request_id, TD_E_ARG, &err);
    }
    if (q->n_tokens > TD_DRAFT_MAX) {
        td_err_set(&err, TD_E_ARG, "tokens: %zu nodes (at most %d)", q->n_tokens, TD_DRAFT_MAX);
        return fail(c, q->request_id, TD_E_ARG, &err);
    }
    td_draft tree = {.n = (int32_t)q->n_tokens};
    if (q->n_tokens) { /* an empty repeated field is a NULL array */
        memcpy(tree.token, q->tokens, q->n_tokens * sizeof(int32_t));
        memcpy(tree.parent, q->parents, q->n_parents * sizeof(int32_t));
    }
    td_node_result *nodes = malloc((q->n_tokens + 1) * sizeof *nodes);
    Tandem__V1__NodeResult *nr = malloc((q->n_tokens + 1) * sizeof *nr);
    Tandem__V1__NodeResult **nrp = malloc((q->n_tokens + 1) * sizeof *nrp);
    Tandem__V1__TokenAlt *alts = NULL;
    Tandem__V1__TokenAlt **altp = NULL;
    if (!nodes || !nr || !nrp) {
        td_err_set(&err, TD_E_NOMEM, "out of memory");
        fail(c, q->request_id, TD_E_NOMEM, &err);
        goto done;
    }
    int32_t path[TD_DRAFT_MAX], n_path = 0;
    td_pass_info pass = {0};
    int rc = q->n_commit_path > TD_DRAFT_MAX
                 ? td_err_set(&err, TD_E_ARG, "commit_path: %zu nodes (at most %d)", q->n_commit_path, TD_DRAFT_MAX)
                 : td_worker_verify(e, q->request_id, q->seq, q->commit ? (q->n_commit_path ? q->commit_path : empty_path) : NULL,
                                    (int32_t)q->n_commit_path, &tree, nodes, path, &n_path, &pass, &err);
    if (rc) {
        fail(c, q->request_id, rc, &err);
        goto done;
    }
    size_t n_alt = 0;
    for (size_t i = 0; i <= q->n_tokens; i++) n_alt += (size_t)nodes[i].n_alt;
    if (n_alt && (!(alts = malloc(n_alt * sizeof *alts)) || !(altp = malloc(n_alt * sizeof *altp)))) {
        td_err_set(&err, TD_E_NOMEM, "out of memory");
        fail(c, q->request_id, TD_E_NOMEM, &err);
        goto done;
    }
    size_t a = 0;
    for (size_t i = 0; i <= q->n_tokens; i++) {
        tandem__v1__node_result__init(&nr[i]);
        nr[i].sample = nodes[i].sample;
        nr[i].logprob = nodes[i].logprob;
        nr[i].n_top = (size_t)nodes[i].n_top;
        nr[i].top = nodes[i].top;
        nr[i].n_alternatives = (size_t)nodes[i].n_alt;
        nr[i].alternatives = altp ? altp + a : NULL;
        for (int32_t k = 0; k < nodes[i].n_alt; k++, a++) {
            tandem__v1__token_alt__init(&alts[a]);
            alts[a].id = nodes[i].alt_id[k];
            alts[a].logprob = nodes[i].alt_logprob[k];
            altp[a] = &alts[a];
        }
        nrp[i] = &nr[i];
    }
    Tandem__V1__VerifyResponse r = TANDEM__V1__VERIFY_RESPONSE__INIT;
    r.n_nodes = q->n_tokens + 1;
    r.nodes = nrp;
    r.pass_sec = pass.sec;
    r.pass_rows = pass.rows;
    r.n_path = (size_t)n_path;
    r.path = path;
    td_net_call_reply(c, &r.base);
done:
    free(nodes);
    free(nr);
    free(nrp);
    free(alts);
    free(altp);
}

static void on_commit(td_net_call *c, const ProtobufCMessage *msg, void *user) {
    td_worker_engine *e = user;
    const Tandem__V1__CommitRequest *q = (const Tandem__V1__CommitRequest *)msg;
    td_err err = {0};
    int32_t cached = 0;
    int rc = q->n_path > TD_DRAFT_MAX ? td_err_set(&err, TD_E_ARG, "path: %zu nodes (at most %d)", q->n_path, TD_DRAFT_MAX)
                                      : td_worker_commit(e, q->request_id, q->seq, q->path, (int32_t)q->n_path, &cached, &err);
    if (rc) return fail(c, q->request_id, rc, &err);
    Tandem__V1__CommitResponse r = TANDEM__V1__COMMIT_RESPONSE__INIT;
    r.cached = cached;
    td_net_call_reply(c, &r.base);
}

static void on_draft(td_net_call *c, const ProtobufCMessage *msg, void *user) {
    td_worker_engine *e = user;
    const Tandem__V1__DraftRequest *q = (const Tandem__V1__DraftRequest *)msg;
    td_err err = {0};
    td_sample_params sp;
    td_draft d = {0};
    int rc = sampling_from(q->sampling, &sp, &err);
    if (rc == TD_OK) rc = td_worker_draft(e, q->request_id, q->seq, q->history, q->n_history, q->max_nodes, &sp, &d, &err);
    if (rc) return fail(c, q->request_id, rc, &err);
    Tandem__V1__DraftResponse r = TANDEM__V1__DRAFT_RESPONSE__INIT;
    r.n_tokens = r.n_parents = r.n_probs = (size_t)d.n;
    r.tokens = d.token;
    r.parents = d.parent;
    r.probs = d.prob;
    r.conf.len = (size_t)d.n;
    r.conf.data = d.conf;
    td_net_call_reply(c, &r.base);
}

static void on_score(td_net_call *c, const ProtobufCMessage *msg, void *user) {
    td_worker_engine *e = user;
    const Tandem__V1__WorkerScoreRequest *q = (const Tandem__V1__WorkerScoreRequest *)msg;
    td_err err = {0};
    if (q->top_k < 0 || q->top_k > TD_TARGET_ALT_MAX) {
        td_err_set(&err, TD_E_ARG, "top_k: %d (0..%d)", q->top_k, TD_TARGET_ALT_MAX);
        return fail(c, q->request_id, TD_E_ARG, &err);
    }
    size_t n = q->n_items, total = 0;
    for (size_t i = 0; i < n; i++) total += q->items[i]->n_continuation_ids;
    size_t k = (size_t)q->top_k, nk = total * k > 0 ? total * k : 1;
    Tandem__V1__WorkerScoreResult *res = calloc(n ? n : 1, sizeof *res);
    Tandem__V1__WorkerScoreResult **resp = calloc(n ? n : 1, sizeof *resp);
    Tandem__V1__WorkerScoredToken *tok = calloc(total ? total : 1, sizeof *tok);
    Tandem__V1__WorkerScoredToken **tokp = calloc(total ? total : 1, sizeof *tokp);
    Tandem__V1__TokenAlt *alt = calloc(nk, sizeof *alt);
    Tandem__V1__TokenAlt **altp = calloc(nk, sizeof *altp);
    float *lp = calloc(total ? total : 1, sizeof *lp);
    bool *greedy = calloc(total ? total : 1, sizeof *greedy);
    int32_t *top_id = calloc(nk, sizeof *top_id);
    float *top_lp = calloc(nk, sizeof *top_lp);
    char **errors = calloc(n ? n : 1, sizeof *errors);
    if (!res || !resp || !tok || !tokp || !alt || !altp || !lp || !greedy || !top_id || !top_lp || !errors) {
        td_err_set(&err, TD_E_NOMEM, "out of memory for %zu items", n);
        fail(c, q->request_id, TD_E_NOMEM, &err);
        goto done;
    }
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const Tandem__V1__WorkerScoreItem *it = q->items[i];
        tandem__v1__worker_score_result__init(&res[i]);
        res[i].id = it->id;
        resp[i] = &res[i];
        td_worker_score_out o = {lp + off, greedy + off, top_id + off * k, top_lp + off * k};
        td_err ierr = {0};
        int rc = td_worker_score(e, q->request_id, it->prompt_ids, it->n_prompt_ids, it->continuation_ids,
                                 it->n_continuation_ids, q->top_k, &o, &ierr);
        if (td_net_call_cancelled(c)) { /* the client's doing, not an error of ours */
            td_log(TD_LOG_DEBUG, q->request_id, "%s: cancelled by the client", td_net_call_method(c));
            td_net_call_fail(c, TD_NET_CANCELLED, "cancelled by the client");
            goto done;
        }
        if (rc) { /* this item fails; the others stand */
            errors[i] = strdup(ierr.msg);
            res[i].error = errors[i] ? errors[i] : (char *)"error";
            continue;
        }
        res[i].n_tokens = it->n_continuation_ids;
        res[i].tokens = tokp + off;
        for (size_t j = 0; j < it->n_continuation_ids; j++) {
            size_t t = off + j;
            tandem__v1__worker_scored_token__init(&tok[t]);
            tok[t].id = it->continuation_ids[j];
            tok[t].logprob = lp[t];
            tok[t].greedy = greedy[t];
            tok[t].n_top = k;
            tok[t].top = altp + t * k;
            for (size_t a = 0; a < k; a++) {
                tandem__v1__token_alt__init(&alt[t * k + a]);
                alt[t * k + a].id = top_id[t * k + a];
                alt[t * k + a].logprob = top_lp[t * k + a];
                altp[t * k + a] = &alt[t * k + a];
            }
            tokp[t] = &tok[t];
        }
        off += it->n_continuation_ids;
    }
    Tandem__V1__WorkerScoreResponse r = TANDEM__V1__WORKER_SCORE_RESPONSE__INIT;
    r.n_results = n;
    r.results = resp;
    td_net_call_reply(c, &r.base);
done:
    if (errors)
        for (size_t i = 0; i < n; i++) free(errors[i]);
    free(errors);
    free(res);
    free(resp);
    free(tok);
    free(tokp);
    free(alt);
    free(altp);
    free(lp);
    free(greedy);
    free(top_id);
    free(top_lp);
}

static void on_release(td_net_call *c, const ProtobufCMessage *msg, void *user) {
    td_worker_engine *e = user;
    const Tandem__V1__ReleaseRequest *q = (const Tandem__V1__ReleaseRequest *)msg;
    Tandem__V1__ReleaseResponse r = TANDEM__V1__RELEASE_RESPONSE__INIT;
    r.found = td_worker_release(e, q->request_id, q->seq);
    td_net_call_reply(c, &r.base);
}

static void on_stats(td_net_call *c, const ProtobufCMessage *msg, void *user) {
    (void)msg;
    td_worker_stats st;
    td_worker_engine_stats(user, &st);
    Tandem__V1__StatsResponse r = TANDEM__V1__STATS_RESPONSE__INIT;
    r.sequences = st.sequences;
    r.max_sequences = st.max_sequences;
    r.reserved_tokens = st.reserved_tokens;
    r.max_tokens = st.max_tokens;
    r.passes = st.passes;
    r.rows = st.rows;
    r.mean_step_sec = st.mean_step_sec;
    td_net_call_reply(c, &r.base);
}

static void on_describe(td_net_call *c, const ProtobufCMessage *msg, void *user) {
    (void)msg;
    td_worker_engine *e = user;
    const td_worker_info *in = td_worker_engine_info(e);
    size_t size = 0;
    const void *tok = td_worker_engine_tokenizer(e, &size);
    Tandem__V1__DescribeResponse r = TANDEM__V1__DESCRIBE_RESPONSE__INIT;
    r.model_id = (char *)in->model_id;
    r.model_name = (char *)in->model_name;
    r.role = in->role == TD_WORKER_VERIFIER ? "verifier" : "drafter";
    r.vocab_hash = in->vocab_hash;
    r.vocab_size = in->vocab_size;
    r.context_length = in->ctx;
    r.fingerprint = (char *)in->fingerprint;
    r.tokenizer_gguf.len = size;
    r.tokenizer_gguf.data = (uint8_t *)tok;
    td_net_call_reply(c, &r.base);
}

int td_worker_rpc_register(td_net_server *srv, td_worker_engine *e, td_err *err) {
    static const struct {
        const char *method;
        const ProtobufCMessageDescriptor *type;
        td_net_handler fn;
    } methods[] = {
        {SVC "Prefill", &tandem__v1__prefill_request__descriptor, on_prefill},
        {SVC "Verify", &tandem__v1__verify_request__descriptor, on_verify},
        {SVC "Commit", &tandem__v1__commit_request__descriptor, on_commit},
        {SVC "Draft", &tandem__v1__draft_request__descriptor, on_draft},
        {SVC "Score", &tandem__v1__worker_score_request__descriptor, on_score},
        {SVC "Release", &tandem__v1__release_request__descriptor, on_release},
        {SVC "Stats", &tandem__v1__stats_request__descriptor, on_stats},
        {SVC "Describe", &tandem__v1__describe_request__descriptor, on_describe},
    };
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        int rc = td_net_server_add(srv, methods[i].method, methods[i].type, false, methods[i].fn, e, err);
        if (rc) return rc;
    }
    return TD_OK;
}
