/* coord_vllm.c — the coordinator as a vLLM engine: service
 * vllm.grpc.engine.VllmEngine (proto/third_party/smg), which the Shepherd
 * Model Gateway and other vLLM/SGLang-speaking routers call to serve
 * OpenAI-compatible HTTP in front of tandem.
 *
 * Generate runs through the same path as tandem.v1's (coord_run.c), so its
 * tokens are those of `tandem generate` for the same ids and parameters;
 * speculation applies with the coordinator's default drafters. Sampling
 * parameters take vLLM's meaning (0 = unset for the plain proto3 fields the
 * gateway always fills); one that tandem cannot honour is refused with
 * INVALID_ARGUMENT naming it, unless it carries its no-op value. Abort
 * stops requests by id. GetTokenizer streams a zip of tokenizer.json and
 * tokenizer_config.json built from the model's GGUF metadata, so the
 * gateway tokenizes as tandem does. Not served (UNIMPLEMENTED): Embed,
 * SubscribeKvEvents (the gateway polls GetLoads instead), FlushCache and
 * the profiler calls.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.pb-c.h"
#include "coordinator.h"
#include "vllm_engine.pb-c.h"

#define SVC "/vllm.grpc.engine.VllmEngine/"
#define MAX_ACTIVE 1024
#define MAX_STOPS 16
#define ZIP_CHUNK (1 << 20)

/* A running Generate, findable by the caller's request id for Abort. */
typedef struct active_req {
    char id[128];
    atomic_bool abort;
    bool used;
} active_req;

struct td_coord_vllm {
    pthread_mutex_t mu;           /* guards active[], n_active, the zip cache */
    active_req active[MAX_ACTIVE];
    int32_t n_active;
    uint64_t n_total;
    double started_at;            /* wall clock, for uptime */
    double last_receive;          /* wall clock of the last Generate */
    char drafters[128];           /* speculation for every request */
    /* GetTokenizer's zip, built once per model fingerprint */
    char zip_fingerprint[160];
    uint8_t *zip;
    size_t zip_len;
    char zip_sha256[65];
};

static double wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

td_coord_vllm *td_coord_vllm_create(const char *drafters, td_err *err) {
    td_coord_vllm *v = calloc(1, sizeof *v);
    if (!v) {
        td_err_set(err, TD_E_NOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&v->mu, NULL);
    v->started_at = wall_now();
    snprintf(v->drafters, sizeof v->drafters, "%s", drafters && drafters[0] ? drafters : "auto");
    return v;
}

void td_coord_vllm_destroy(td_coord_vllm *v) {
    if (!v) return;
    pthread_mutex_destroy(&v->mu);
    free(v->zip);
    free(v);
}

static active_req *active_add(td_coord_vllm *v, const char *id) {
    pthread_mutex_lock(&v->mu);
    active_req *a = NULL;
    for (int32_t i = 0; i < MAX_ACTIVE && !a; i++)
        if (!v->active[i].used) a = &v->active[i];
    if (a) {
        a->used = true;
        atomic_store(&a->abort, false);
        snprintf(a->id, sizeof a->id, "%s", id);
        v->n_active++;
        v->n_total++;
        v->last_receive = wall_now();
    }
    pthread_mutex_unlock(&v->mu);
    return a;
}

static void active_remove(td_coord_vllm *v, active_req *a) {
    pthread_mutex_lock(&v->mu);
    a->used = false;
    v->n_active--;
    pthread_mutex_unlock(&v->mu);
}

static int32_t active_count(td_coord_vllm *v) {
    pthread_mutex_lock(&v->mu);
    int32_t n = v->n_active;
    pthread_mutex_unlock(&v->mu);
    return n;
}

/* ---- Generate ---- */

/* Tokens (and logprobs) produced since the last message, and in all. */
typedef struct vllm_out {
    uint32_t *ids;              /* every output token */
    float *logprob;             /* per token, when logprobs were asked for */
    int32_t *alt_id;            /* n * TD_TARGET_ALT_MAX */
    float *alt_lp;
    int32_t *n_alt;
    size_t n, cap, sent;        /* sent: tokens already streamed */
    int32_t n_logprobs;         /* -1 = none */
    bool nomem;
} vllm_out;

static int vllm_on_token(void *user, int32_t token, const td_node_result *nr) {
    vllm_out *o = user;
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 64;
        uint32_t *ids = realloc(o->ids, cap * sizeof *ids);
        if (ids) o->ids = ids;
        bool ok = ids != NULL;
        if (ok && o->n_logprobs >= 0) {
            float *lp = realloc(o->logprob, cap * sizeof *lp);
            if (lp) o->logprob = lp;
            int32_t *ai = realloc(o->alt_id, cap * TD_TARGET_ALT_MAX * sizeof *ai);
            if (ai) o->alt_id = ai;
            float *al = realloc(o->alt_lp, cap * TD_TARGET_ALT_MAX * sizeof *al);
            if (al) o->alt_lp = al;
            int32_t *na = realloc(o->n_alt, cap * sizeof *na);
            if (na) o->n_alt = na;
            ok = lp && ai && al && na;
        }
        if (!ok) {
            o->nomem = true;
            return 1;
        }
        o->cap = cap;
    }
    o->ids[o->n] = (uint32_t)token;
    if (o->n_logprobs >= 0) {
        o->logprob[o->n] = nr->logprob;
        int32_t k = nr->n_alt < o->n_logprobs ? nr->n_alt : o->n_logprobs;
        for (int32_t a = 0; a < k; a++) {
            o->alt_id[o->n * TD_TARGET_ALT_MAX + (size_t)a] = nr->alt_id[a];
            o->alt_lp[o->n * TD_TARGET_ALT_MAX + (size_t)a] = nr->alt_logprob[a];
        }
        o->n_alt[o->n] = k;
    }
    o->n++;
    return 0;
}

/* OutputLogProbs for tokens [from, to): pointer arrays in *scratch (freed
 * by the caller). Returns false when out of memory. */
static bool fill_logprobs(const vllm_out *o, size_t from, size_t to, Vllm__Grpc__Engine__OutputLogProbs *lp,
                          void **scratch) {
    size_t n = to - from;
    vllm__grpc__engine__output_log_probs__init(lp);
    Vllm__Grpc__Engine__TopLogProbs *tops = calloc(n ? n : 1, sizeof *tops);
    Vllm__Grpc__Engine__TopLogProbs **ptrs = calloc(n ? n : 1, sizeof *ptrs);
    uint32_t *alt_ids = calloc(n * TD_TARGET_ALT_MAX + 1, sizeof *alt_ids);
    void **keep = calloc(4, sizeof *keep);
    if (!tops || !ptrs || !alt_ids || !keep) {
        free(tops);
        free(ptrs);
        free(alt_ids);
        free(keep);
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        size_t t = from + i;
        vllm__grpc__engine__top_log_probs__init(&tops[i]);
        tops[i].n_values = tops[i].n_token_ids = (size_t)o->n_alt[t];
        tops[i].values = &o->alt_lp[t * TD_TARGET_ALT_MAX];
        for (int32_t a = 0; a < o->n_alt[t]; a++)
            alt_ids[i * TD_TARGET_ALT_MAX + (size_t)a] = (uint32_t)o->alt_id[t * TD_TARGET_ALT_MAX + (size_t)a];
        tops[i].token_ids = &alt_ids[i * TD_TARGET_ALT_MAX];
        ptrs[i] = &tops[i];
    }
    lp->n_token_logprobs = n;
    lp->token_logprobs = &o->logprob[from];
    lp->n_token_ids = n;
    lp->token_ids = &o->ids[from];
    lp->n_top_logprobs = n;
    lp->top_logprobs = ptrs;
    keep[0] = tops;
    keep[1] = ptrs;
    keep[2] = alt_ids;
    *scratch = keep;
    return true;
}

static void free_scratch(void *scratch) {
    void **keep = scratch;
    if (!keep) return;
    for (int i = 0; i < 4; i++) free(keep[i]);
    free(keep);
}

typedef struct vllm_stream {
    td_net_call *call;
    const td_coord_job *job;
    vllm_out *out;
    active_req *active;
    uint32_t n_prompt;
    bool stream;
    int32_t write_timeout_ms;
} vllm_stream;

static bool vllm_cancelled(void *user) {
    vllm_stream *s = user;
    return td_net_call_cancelled(s->call) || atomic_load(&s->active->abort);
}

/* After each step: the new tokens as one chunk (streaming only). */
static int vllm_stepped(void *user, td_err *err) {
    vllm_stream *s = user;
    vllm_out *o = s->out;
    if (o->nomem) return td_err_set(err, TD_E_NOMEM, "out of memory");
    if (!s->stream || o->sent == o->n) return 0;
    Vllm__Grpc__Engine__GenerateStreamChunk ch = VLLM__GRPC__ENGINE__GENERATE_STREAM_CHUNK__INIT;
    Vllm__Grpc__Engine__GenerateResponse r = VLLM__GRPC__ENGINE__GENERATE_RESPONSE__INIT;
    Vllm__Grpc__Engine__OutputLogProbs lp;
    void *scratch = NULL;
    ch.n_token_ids = o->n - o->sent;
    ch.token_ids = &o->ids[o->sent];
    ch.prompt_tokens = s->n_prompt;
    ch.completion_tokens = (uint32_t)o->n;
    ch.cached_tokens = (uint32_t)s->job->cached_tokens;
    if (o->n_logprobs >= 0) {
        if (!fill_logprobs(o, o->sent, o->n, &lp, &scratch)) return td_err_set(err, TD_E_NOMEM, "out of memory");
        ch.output_logprobs = &lp;
    }
    r.response_case = VLLM__GRPC__ENGINE__GENERATE_RESPONSE__RESPONSE_CHUNK;
    r.chunk = &ch;
    int rc = td_net_call_send(s->call, &r.base, s->write_timeout_ms);
    free_scratch(scratch);
    if (rc) return 1;
    o->sent = o->n;
    return 0;
}

/* vLLM's sampling parameters as tandem's; refuses what tandem cannot do. */
static int vllm_sampling(const Vllm__Grpc__Engine__SamplingParams *m, td_sample_params *sp, bool *seed_given,
                         td_err *err) {
    *sp = td_sample_defaults();
    *seed_given = false;
    sp->temperature = 1.0f; /* vLLM's default when unset */
    if (!m) return TD_OK;
    if (m->_temperature_case) {
        if (!(m->temperature >= 0) || !isfinite(m->temperature) || m->temperature > 100)
            return td_err_set(err, TD_E_ARG, "sampling_params.temperature: %g (0..100)", (double)m->temperature);
        sp->temperature = m->temperature;
    }
    if (m->top_p != 0) {
        if (!(m->top_p > 0 && m->top_p <= 1))
            return td_err_set(err, TD_E_ARG, "sampling_params.top_p: %g (in (0, 1])", (double)m->top_p);
        sp->top_p = m->top_p;
    }
    if (m->top_k > (uint32_t)INT32_MAX) return td_err_set(err, TD_E_ARG, "sampling_params.top_k: %u", m->top_k);
    sp->top_k = (int32_t)m->top_k;
    if (!(m->min_p >= 0 && m->min_p <= 1))
        return td_err_set(err, TD_E_ARG, "sampling_params.min_p: %g (0..1)", (double)m->min_p);
    sp->min_p = m->min_p;
    if (m->repetition_penalty != 0) {
        if (!(m->repetition_penalty > 0) || !isfinite(m->repetition_penalty))
            return td_err_set(err, TD_E_ARG, "sampling_params.repetition_penalty: %g (> 0)", (double)m->repetition_penalty);
        sp->repeat_penalty = m->repetition_penalty;
    }
    if (m->frequency_penalty != 0)
        return td_err_set(err, TD_E_ARG, "sampling_params.frequency_penalty: %g is not supported (use 0, or "
                          "repetition_penalty)", (double)m->frequency_penalty);
    if (m->presence_penalty != 0)
        return td_err_set(err, TD_E_ARG, "sampling_params.presence_penalty: %g is not supported (use 0, or "
                          "repetition_penalty)", (double)m->presence_penalty);
    if (m->min_tokens != 0) return td_err_set(err, TD_E_ARG, "sampling_params.min_tokens: %u is not supported", m->min_tokens);
    if (m->n_stop_token_ids) return td_err_set(err, TD_E_ARG, "sampling_params.stop_token_ids: not supported");
    if (m->n > 1) return td_err_set(err, TD_E_ARG, "sampling_params.n: %u is not supported (one sequence per request)", m->n);
    if (m->_prompt_logprobs_case) return td_err_set(err, TD_E_ARG, "sampling_params.prompt_logprobs: not supported");
    if (m->n_logit_bias) return td_err_set(err, TD_E_ARG, "sampling_params.logit_bias: not supported");
    if (m->_truncate_prompt_tokens_case)
        return td_err_set(err, TD_E_ARG, "sampling_params.truncate_prompt_tokens: not supported");
    if (m->constraint_case != VLLM__GRPC__ENGINE__SAMPLING_PARAMS__CONSTRAINT__NOT_SET)
        return td_err_set(err, TD_E_ARG, "sampling_params: structured output (json_schema, regex, grammar, choice...) "
                          "is not supported");
    if (m->_seed_case) {
        sp->seed = (uint64_t)(uint32_t)m->seed;
        *seed_given = true;
    }
    td_err why = {0};
    if (td_sample_validate(sp, &why)) return td_err_set(err, TD_E_ARG, "sampling_params: %s", why.msg);
    return TD_OK;
}

static const char *finish_name(td_stop_reason r) {
    switch (r) {
    case TD_STOP_EOG:
    case TD_STOP_STRING: return "stop";
    case TD_STOP_LENGTH:
    case TD_STOP_CONTEXT: return "length";
    default: return "abort";
    }
}

static void vllm_fail(td_net_call *call, const char *req, int rc, const td_err *err) {
    int code = td_coord_grpc_code(rc);
    td_log(code == TD_NET_INTERNAL ? TD_LOG_ERROR : TD_LOG_INFO, req, "vllm Generate failed: %s: %s",
           td_net_code_name(code), err->msg);
    td_net_call_fail(call, code, "%s", err->msg);
}

static void on_generate(td_net_call *call, const ProtobufCMessage *msg, void *user) {
    td_coord *c = user;
    td_coord_vllm *v = c->vllm;
    const Vllm__Grpc__Engine__GenerateRequest *q = (const Vllm__Grpc__Engine__GenerateRequest *)msg;
    char req[40];
    td_coord_request_id(q->request_id, req);
    td_err err = {0};
    int rc = TD_OK;
    int64_t left = td_net_call_deadline_ms(call);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    vllm_out out = {.n_logprobs = -1};
    active_req *active = NULL;
    td_coord_job job = {.request_id = req,
                        .deadline_at_ms = left == INT64_MAX ? INT64_MAX : td_coord_now_ms() + left};
    const Vllm__Grpc__Engine__SamplingParams *spm = q->sampling_params;

    /* ---- what tandem does not do ---- */
    if (q->mm_inputs || q->n_extra_mm_inputs || q->media_refs) {
        rc = td_err_set(&err, TD_E_ARG, "mm_inputs: multimodal input is not supported (text models only)");
        goto fail;
    }
    if (q->kv_transfer_params || q->_kv_transfer_params_json_case) {
        rc = td_err_set(&err, TD_E_ARG, "kv_transfer_params: prefill/decode disaggregation is not supported");
        goto fail;
    }
    td_sample_params sp;
    bool seed_given;
    if ((rc = vllm_sampling(spm, &sp, &seed_given, &err))) goto fail;
    if (!seed_given) sp.seed = td_coord_random_seed();
    if (spm && spm->n_stop > MAX_STOPS) {
        rc = td_err_set(&err, TD_E_ARG, "sampling_params.stop: %zu strings (at most %d)", spm->n_stop, MAX_STOPS);
        goto fail;
    }
    for (size_t i = 0; spm && i < spm->n_stop; i++)
        if (!spm->stop[i][0] || !td_coord_utf8_valid(spm->stop[i], strlen(spm->stop[i]))) {
            rc = td_err_set(&err, TD_E_ARG, "sampling_params.stop[%zu]: empty or not valid UTF-8", i);
            goto fail;
        }
    if (spm && spm->_logprobs_case) {
        if (spm->logprobs < 0 || spm->logprobs > TD_TARGET_ALT_MAX) {
            rc = td_err_set(&err, TD_E_ARG, "sampling_params.logprobs: %d (0..%d)", spm->logprobs, TD_TARGET_ALT_MAX);
            goto fail;
        }
        out.n_logprobs = spm->logprobs;
    }

    /* ---- the model and the prompt's tokens ---- */
    char fingerprint[160];
    const td_coord_model *model = td_coord_model_for(c, NULL, left, fingerprint, &err);
    if (!model) { rc = err.code; goto fail; }
    if (q->input_case == VLLM__GRPC__ENGINE__GENERATE_REQUEST__INPUT_TOKENIZED && q->tokenized) {
        n_ids = q->tokenized->n_input_ids;
        if (!(ids = malloc((n_ids ? n_ids : 1) * sizeof *ids))) { rc = td_err_set(&err, TD_E_NOMEM, "out of memory"); goto fail; }
        for (size_t i = 0; i < n_ids; i++) {
            if (q->tokenized->input_ids[i] >= (uint32_t)model->vocab_size) {
                rc = td_err_set(&err, TD_E_ARG, "tokenized.input_ids[%zu]: %u outside the vocabulary (0..%d)", i,
                                q->tokenized->input_ids[i], model->vocab_size - 1);
                goto fail;
            }
            ids[i] = (int32_t)q->tokenized->input_ids[i];
        }
    } else if (q->input_case == VLLM__GRPC__ENGINE__GENERATE_REQUEST__INPUT_TEXT) {
        size_t len = strlen(q->text);
        if (!td_coord_utf8_valid(q->text, len)) { rc = td_err_set(&err, TD_E_ARG, "text: not valid UTF-8"); goto fail; }
        if ((rc = td_tok_encode(model->tok, q->text, len, td_tok_add_bos(model->tok), true, &ids, &n_ids, &err))) goto fail;
    }
    if (n_ids == 0) { rc = td_err_set(&err, TD_E_ARG, "input: empty (give tokenized.input_ids or text)"); goto fail; }
    if (n_ids + 1 > (size_t)model->ctx) {
        rc = td_err_set(&err, TD_E_ARG, "input: %zu tokens do not fit the context of %d", n_ids, model->ctx);
        goto fail;
    }
    int32_t room = model->ctx - (int32_t)n_ids;
    int32_t max_tokens = room;
    if (spm && spm->_max_tokens_case) {
        if (spm->max_tokens < 1 || spm->max_tokens > (uint32_t)room) {
            rc = td_err_set(&err, TD_E_ARG, "sampling_params.max_tokens: %u (1..%d: the context of %d less %zu prompt "
                            "tokens)", spm->max_tokens, room, model->ctx, n_ids);
            goto fail;
        }
        max_tokens = (int32_t)spm->max_tokens;
    }

    /* ---- the run ---- */
    if (!(active = active_add(v, q->request_id))) {
        rc = td_err_set(&err, TD_COORD_E_GRPC(TD_NET_RESOURCE_EXHAUSTED), "too many requests in flight (%d)", MAX_ACTIVE);
        goto fail;
    }
    job.rq = (td_spec_request){.prompt = ids, .n_prompt = n_ids,
                               .gen = {.sample = sp, .max_tokens = max_tokens,
                                       .stop = spm ? (const char *const *)spm->stop : NULL, .n_stop = spm ? spm->n_stop : 0,
                                       .ignore_eos = spm && spm->ignore_eos},
                               .on_token = vllm_on_token, .user = &out,
                               .n_logprobs = out.n_logprobs};
    job.spec = td_spec_defaults();
    job.drafters = v->drafters;
    job.fingerprint = fingerprint;
    vllm_stream vs = {.call = call, .job = &job, .out = &out, .active = active, .n_prompt = (uint32_t)n_ids,
                      .stream = q->stream, .write_timeout_ms = c->write_timeout_ms};
    job.cancelled = vllm_cancelled;
    job.stepped = vllm_stepped;
    job.user = &vs;
    td_log(TD_LOG_INFO, req, "vllm Generate%s: %zu prompt tokens, max %d, seed %llu, drafters %s",
           q->stream ? " (stream)" : "", n_ids, max_tokens, (unsigned long long)sp.seed, v->drafters);
    rc = td_coord_run(c, model, &job, &err);
    bool aborted = atomic_load(&active->abort);
    if (rc == TD_COORD_GONE && !aborted) {
        td_log(TD_LOG_INFO, req, "vllm Generate: the client went away; sequence released");
        td_net_call_fail(call, td_net_call_deadline_ms(call) <= 0 ? TD_NET_DEADLINE_EXCEEDED : TD_NET_CANCELLED,
                         "cancelled");
        goto done;
    }
    if (rc && rc != TD_COORD_GONE) goto fail;

    /* ---- the last message: everything, with why it ended ---- */
    Vllm__Grpc__Engine__GenerateComplete done = VLLM__GRPC__ENGINE__GENERATE_COMPLETE__INIT;
    Vllm__Grpc__Engine__GenerateResponse r = VLLM__GRPC__ENGINE__GENERATE_RESPONSE__INIT;
    Vllm__Grpc__Engine__OutputLogProbs lp;
    void *scratch = NULL;
    done.n_output_ids = out.n;
    done.output_ids = out.ids;
    done.finish_reason = (char *)(aborted ? "abort" : finish_name(job.rq.stats.stop));
    done.prompt_tokens = (uint32_t)n_ids;
    done.completion_tokens = (uint32_t)out.n;
    done.cached_tokens = (uint32_t)job.cached_tokens;
    done.spec_draft_tokens = (uint32_t)job.rq.spec.n_drafted;
    done.spec_accepted_tokens = (uint32_t)job.rq.spec.n_accepted;
    if (out.n_logprobs >= 0 && !q->stream) {
        if (!fill_logprobs(&out, 0, out.n, &lp, &scratch)) {
            rc = td_err_set(&err, TD_E_NOMEM, "out of memory");
            goto fail;
        }
        done.output_logprobs = &lp;
    }
    r.response_case = VLLM__GRPC__ENGINE__GENERATE_RESPONSE__RESPONSE_COMPLETE;
    r.complete = &done;
    int sent = td_net_call_send(call, &r.base, c->write_timeout_ms);
    free_scratch(scratch);
    if (sent) {
        td_net_call_fail(call, TD_NET_CANCELLED, "cancelled");
        goto done;
    }
    td_net_call_finish(call);
    td_log(TD_LOG_INFO, req, "vllm Generate done: %zu tokens (%s), verifier %s%s", out.n, done.finish_reason,
           job.verifier, job.moves ? " (moved)" : "");
    goto done;
fail:
    vllm_fail(call, req, rc, &err);
done:
    if (active) active_remove(v, active);
    free(ids);
    free(out.ids);
    free(out.logprob);
    free(out.alt_id);
    free(out.alt_lp);
    free(out.n_alt);
}

/* ---- Abort, health, information, loads ---- */

static void on_abort(td_net_call *call, const ProtobufCMessage *msg, void *user) {
    td_coord_vllm *v = ((td_coord *)user)->vllm;
    const Vllm__Grpc__Engine__AbortRequest *q = (const Vllm__Grpc__Engine__AbortRequest *)msg;
    int32_t found = 0;
    pthread_mutex_lock(&v->mu);
    for (size_t k = 0; k < q->n_request_ids; k++)
        for (int32_t i = 0; i < MAX_ACTIVE; i++)
            if (v->active[i].used && !strcmp(v->active[i].id, q->request_ids[k])) {
                atomic_store(&v->active[i].abort, true);
                found++;
            }
    pthread_mutex_unlock(&v->mu);
    td_log(TD_LOG_INFO, NULL, "vllm Abort: %zu ids, %d running", q->n_request_ids, found);
    Vllm__Grpc__Engine__AbortResponse r = VLLM__GRPC__ENGINE__ABORT_RESPONSE__INIT;
    td_net_call_reply(call, &r.base);
}

static void on_health(td_net_call *call, const ProtobufCMessage *msg, void *user) {
    (void)msg;
    td_coord *c = user;
    int32_t n = td_coord_members_count(c->members, "verifier", NULL);
    char text[64];
    snprintf(text, sizeof text, "%d verifier%s", n, n == 1 ? "" : "s");
    Vllm__Grpc__Engine__HealthCheckResponse r = VLLM__GRPC__ENGINE__HEALTH_CHECK_RESPONSE__INIT;
    r.healthy = n > 0;
    r.message = n > 0 ? text : "no verifier available";
    td_net_call_reply(call, &r.base);
}

/* The Hugging Face architecture name of a GGUF architecture. */
static const char *hf_architecture(const char *arch) {
    if (!strcmp(arch, "llama")) return "LlamaForCausalLM";
    if (!strcmp(arch, "qwen2")) return "Qwen2ForCausalLM";
    return arch;
}

/* The served model, or the call failed with the reason. */
static const td_coord_model *model_or_fail(td_net_call *call, td_coord *c) {
    td_err err = {0};
    const td_coord_model *m = td_coord_model_for(c, NULL, td_net_call_deadline_ms(call), NULL, &err);
    if (!m) td_net_call_fail(call, td_coord_grpc_code(err.code), "%s", err.msg);
    return m;
}

static void on_model_info(td_net_call *call, const ProtobufCMessage *msg, void *user) {
    (void)msg;
    td_coord *c = user;
    const td_coord_model *m = model_or_fail(call, c);
    if (!m) return;
    char arch[64] = "llama";
    const char *s;
    size_t len;
    if (td_gguf_get_str(m->gguf, "general.architecture", &s, &len) && len < sizeof arch)
        snprintf(arch, sizeof arch, "%.*s", (int)len, s);
    enum { MAX_EOS = 16 };
    int32_t eos[MAX_EOS];
    size_t n_eos = 0;
    for (int32_t id = 0; id < m->vocab_size && n_eos < MAX_EOS; id++)
        if (td_tok_is_eog(m->tok, id)) eos[n_eos++] = id;
    uint64_t pad = 0;
    char *archs[1] = {(char *)hf_architecture(arch)};
    Vllm__Grpc__Engine__GetModelInfoResponse r = VLLM__GRPC__ENGINE__GET_MODEL_INFO_RESPONSE__INIT;
    r.model_path = (char *)m->model_name;
    r.served_model_name = (char *)m->model_name;
    r.tokenizer_path = (char *)m->model_name;
    r.is_generation = true;
    r.max_context_length = (uint32_t)m->ctx;
    r.max_req_input_len = m->ctx - 1;
    r.vocab_size = (uint32_t)m->vocab_size;
    r.model_type = arch;
    r.n_architectures = 1;
    r.architectures = archs;
    r.n_eos_token_ids = n_eos;
    r.eos_token_ids = eos;
    r.bos_token_id = td_tok_bos(m->tok);
    r.pad_token_id = td_gguf_get_u64(m->gguf, "tokenizer.ggml.padding_token_id", &pad) ? (int32_t)pad : -1;
    td_net_call_reply(call, &r.base);
}

static void on_server_info(td_net_call *call, const ProtobufCMessage *msg, void *user) {
    (void)msg;
    td_coord *c = user;
    td_coord_vllm *v = c->vllm;
    pthread_mutex_lock(&v->mu);
    int32_t active = v->n_active;
    double last = v->last_receive;
    pthread_mutex_unlock(&v->mu);
    Vllm__Grpc__Engine__GetServerInfoResponse r = VLLM__GRPC__ENGINE__GET_SERVER_INFO_RESPONSE__INIT;
    r.active_requests = (uint32_t)active;
    r.last_receive_timestamp = last;
    r.uptime_seconds = wall_now() - v->started_at;
    r.server_type = "vllm-grpc";
    r.data_parallel_size = 1;
    r.model_dtype = "gguf";
    td_net_call_reply(call, &r.base);
}

static void on_loads(td_net_call *call, const ProtobufCMessage *msg, void *user) {
    (void)msg;
    td_coord *c = user;
    td_coord_vllm *v = c->vllm;
    char stamp[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", &tm);
    int32_t active = active_count(v);
    Vllm__Grpc__Engine__SchedulerLoad load = VLLM__GRPC__ENGINE__SCHEDULER_LOAD__INIT;
    Vllm__Grpc__Engine__SchedulerLoad *loads[1] = {&load};
    load.num_running_reqs = active;
    load.num_total_reqs = active;
    load.max_running_requests = MAX_ACTIVE;
    Vllm__Grpc__Engine__GetLoadsResponse r = VLLM__GRPC__ENGINE__GET_LOADS_RESPONSE__INIT;
    r.timestamp = stamp;
    r.version = "tandem";
    r.dp_rank_count = 1;
    r.n_loads = 1;
    r.loads = loads;
    td_net_call_reply(call, &r.base);
}

/* ---- GetTokenizer ---- */

/* Builds (once per model) the zip of tokenizer.json and tokenizer_config.json. */
static int tokenizer_zip(td_coord_vllm *v, const td_coord_model *m, td_err *err) {
    if (v->zip && !strcmp(v->zip_fingerprint, m->fingerprint)) return TD_OK;
    char *tj = NULL, *cj = NULL;
    int rc = td_tok_export_hf(m->tok, m->gguf, m->ctx, &tj, &cj, err);
    if (rc) return rc;
    td_zip_file files[2] = {{"tokenizer.json", tj, strlen(tj)}, {"tokenizer_config.json", cj, strlen(cj)}};
    uint8_t *zip = NULL;
    size_t len = 0;
    rc = td_zip_store(files, 2, &zip, &len, err);
    free(tj);
    free(cj);
    if (rc) return rc;
    free(v->zip);
    v->zip = zip;
    v->zip_len = len;
    td_sha256_hex(zip, len, v->zip_sha256);
    snprintf(v->zip_fingerprint, sizeof v->zip_fingerprint, "%s", m->fingerprint);
    return TD_OK;
}

static void on_tokenizer(td_net_call *call, const ProtobufCMessage *msg, void *user) {
    (void)msg;
    td_coord *c = user;
    td_coord_vllm *v = c->vllm;
    const td_coord_model *m = model_or_fail(call, c);
    if (!m) return;
    td_err err = {0};
    /* the zip is copied out under the lock: another model's request may
     * replace the cache while this stream is still sending */
    pthread_mutex_lock(&v->mu);
    int rc = tokenizer_zip(v, m, &err);
    uint8_t *zip = rc ? NULL : malloc(v->zip_len ? v->zip_len : 1);
    size_t len = v->zip_len;
    char sha[65];
    if (zip) {
        memcpy(zip, v->zip, len);
        memcpy(sha, v->zip_sha256, sizeof sha);
    }
    pthread_mutex_unlock(&v->mu);
    if (rc || !zip) {
        td_net_call_fail(call, rc == TD_E_UNSUPPORTED ? TD_NET_UNIMPLEMENTED : TD_NET_INTERNAL, "GetTokenizer: %s",
                         rc ? err.msg : "out of memory");
        return;
    }
    for (size_t off = 0; off < len || len == 0;) {
        size_t n = len - off < ZIP_CHUNK ? len - off : ZIP_CHUNK;
        Smg__Grpc__Common__GetTokenizerChunk ch = SMG__GRPC__COMMON__GET_TOKENIZER_CHUNK__INIT;
        ch.data.data = zip + off;
        ch.data.len = n;
        off += n;
        bool last = off >= len;
        ch.sha256 = last ? sha : "";
        if (td_net_call_send(call, &ch.base, c->write_timeout_ms)) {
            free(zip);
            td_net_call_fail(call, TD_NET_CANCELLED, "cancelled");
            return;
        }
        if (last) break;
    }
    free(zip);
    td_log(TD_LOG_INFO, NULL, "vllm GetTokenizer: sent %zu bytes (sha256 %.16s)", len, sha);
    td_net_call_finish(call);
}

int td_coord_vllm_register(td_net_server *srv, td_coord *c, td_err *err) {
    int rc;
    if ((rc = td_net_server_add(srv, SVC "Generate", &vllm__grpc__engine__generate_request__descriptor, true,
                                on_generate, c, err)) ||
        (rc = td_net_server_add(srv, SVC "Abort", &vllm__grpc__engine__abort_request__descriptor, false, on_abort, c,
                                err)) ||
        (rc = td_net_server_add(srv, SVC "HealthCheck", &vllm__grpc__engine__health_check_request__descriptor, false,
                                on_health, c, err)) ||
        (rc = td_net_server_add(srv, SVC "GetModelInfo", &vllm__grpc__engine__get_model_info_request__descriptor,
                                false, on_model_info, c, err)) ||
        (rc = td_net_server_add(srv, SVC "GetServerInfo", &vllm__grpc__engine__get_server_info_request__descriptor,
                                false, on_server_info, c, err)) ||
        (rc = td_net_server_add(srv, SVC "GetLoads", &vllm__grpc__engine__get_loads_request__descriptor, false,
                                on_loads, c, err)) ||
        (rc = td_net_server_add(srv, SVC "GetTokenizer", &smg__grpc__common__get_tokenizer_request__descriptor, true,
                                on_tokenizer, c, err)))
        return rc;
    return TD_OK;
}
