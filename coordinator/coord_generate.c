/* coord_generate.c — tandem.v1.Inference/Generate: checks the request,
 * tokenizes it as `tandem generate` does, fixes the seed, and runs the
 * speculative session (drafters here and on workers, verification on a
 * verifier through the remote target), streaming text and tokens after each
 * step. A client that cancels, or whose deadline passes, frees the
 * sequence on its worker at once.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator.h"
#include "tandem/v1/inference.pb-c.h"

#define MAX_STOPS 16

/* What the stream has produced since its last message. */
typedef struct gen_out {
    char *text;
    size_t n_text, cap_text;
    Tandem__V1__GeneratedToken *tok;
    Tandem__V1__TokenLogprob *alt;     /* n_tok * TD_TARGET_ALT_MAX */
    Tandem__V1__TokenLogprob **altp;
    Tandem__V1__GeneratedToken **tokp;
    size_t n_tok, cap_tok;
    int32_t n_logprobs;
    int32_t skip;                       /* tokens the client already has (resume) */
    bool nomem;
    double t_first;                     /* time of the first token */
} gen_out;

/* Length of the longest prefix of s[0..n) that starts a well-formed UTF-8
 * sequence (the "maximal subpart" of Unicode's U+FFFD substitution), and
 * whether that prefix is a whole character. */
static size_t utf8_subpart(const unsigned char *s, size_t n, bool *whole) {
    unsigned c = s[0];
    size_t need;
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    *whole = false;
    if (c < 0x80) { *whole = true; return 1; }
    if (c >= 0xC2 && c <= 0xDF) need = 2;
    else if (c >= 0xE0 && c <= 0xEF) { need = 3; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { need = 4; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
    else return 1;
    size_t k = 1;
    while (k < need && k < n && s[k] >= (k == 1 ? lo : 0x80) && s[k] <= (k == 1 ? hi : 0xBF)) k++;
    *whole = k == need;
    return k;
}

/* Appends text as valid UTF-8: the wire's strings must be (proto3), and a
 * model may emit byte tokens that are not. Each maximal ill-formed subpart
 * becomes U+FFFD, as Unicode recommends (and Python's errors="replace"
 * does); token ids stay exact. */
static int on_text(void *user, const char *text, size_t len) {
    gen_out *o = user;
    if (o->n_text + 3 * len + 1 > o->cap_text) {
        size_t cap = (o->n_text + 3 * len + 1) * 2;
        char *p = realloc(o->text, cap);
        if (!p) { o->nomem = true; return 1; }
        o->text = p;
        o->cap_text = cap;
    }
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; i < len;) {
        bool whole;
        size_t k = utf8_subpart(s + i, len - i, &whole);
        if (whole) memcpy(o->text + o->n_text, s + i, k), o->n_text += k;
        else memcpy(o->text + o->n_text, "\xEF\xBF\xBD", 3), o->n_text += 3;
        i += k;
    }
    o->text[o->n_text] = 0;
    return 0;
}

static int on_token(void *user, int32_t token, const td_node_result *nr) {
    gen_out *o = user;
    if (o->t_first == 0) o->t_first = td_now_sec();
    if (o->n_tok == o->cap_tok) {
        size_t cap = o->cap_tok ? o->cap_tok * 2 : 16;
        Tandem__V1__GeneratedToken *t = realloc(o->tok, cap * sizeof *t);
        if (t) o->tok = t;
        Tandem__V1__TokenLogprob *a = o->n_logprobs > 0 ? realloc(o->alt, cap * TD_TARGET_ALT_MAX * sizeof *a) : o->alt;
        if (a) o->alt = a;
        if (!t || (o->n_logprobs > 0 && !a)) { o->nomem = true; return 1; }
        o->cap_tok = cap;
    }
    Tandem__V1__GeneratedToken *g = &o->tok[o->n_tok];
    tandem__v1__generated_token__init(g);
    g->id = token;
    if (o->n_logprobs > 0) {
        g->logprob = nr->logprob;
        int32_t k = nr->n_alt < o->n_logprobs ? nr->n_alt : o->n_logprobs;
        for (int32_t a = 0; a < k; a++) {
            Tandem__V1__TokenLogprob *x = &o->alt[o->n_tok * TD_TARGET_ALT_MAX + (size_t)a];
            tandem__v1__token_logprob__init(x);
            x->id = nr->alt_id[a];
            x->logprob = nr->alt_logprob[a];
        }
        g->n_top = (size_t)k;
    }
    o->n_tok++;
    return 0;
}

/* Sends what accumulated (if anything, or always when first/last). */
static int flush(td_net_call *call, gen_out *o, Tandem__V1__GenerateResponse *r, int32_t write_timeout_ms) {
    if (!o->n_text && !o->n_tok && !r->done && !r->request_id) return 0;
    Tandem__V1__GeneratedToken **tp = o->n_tok ? malloc(o->n_tok * sizeof *tp) : NULL;
    Tandem__V1__TokenLogprob **ap = o->n_tok && o->n_logprobs > 0 ? malloc(o->n_tok * TD_TARGET_ALT_MAX * sizeof *ap) : NULL;
    if ((o->n_tok && !tp) || (o->n_tok && o->n_logprobs > 0 && !ap)) {
        free(tp);
        free(ap);
        return -1;
    }
    for (size_t i = 0; i < o->n_tok; i++) {
        tp[i] = &o->tok[i];
        if (ap) {
            for (size_t a = 0; a < o->tok[i].n_top; a++) ap[i * TD_TARGET_ALT_MAX + a] = &o->alt[i * TD_TARGET_ALT_MAX + a];
            o->tok[i].top = ap + i * TD_TARGET_ALT_MAX;
        }
    }
    r->text = o->text ? o->text : "";
    r->n_tokens = o->n_tok;
    r->tokens = tp;
    int rc = td_net_call_send(call, &r->base, write_timeout_ms);
    free(tp);
    free(ap);
    o->n_text = 0;
    if (o->text) o->text[0] = 0;
    o->n_tok = 0;
    return rc;
}

static Tandem__V1__FinishReason finish_reason(td_stop_reason r) {
    switch (r) {
    case TD_STOP_LENGTH: return TANDEM__V1__FINISH_REASON__FINISH_LENGTH;
    case TD_STOP_EOG: return TANDEM__V1__FINISH_REASON__FINISH_EOS;
    case TD_STOP_STRING: return TANDEM__V1__FINISH_REASON__FINISH_STOP_STRING;
    case TD_STOP_CONTEXT: return TANDEM__V1__FINISH_REASON__FINISH_CONTEXT;
    default: return TANDEM__V1__FINISH_REASON__FINISH_CANCELLED;
    }
}

/* Resolves the sampling fields (unset = default), naming the bad one. */
static int sampling_from(const Tandem__V1__SamplingParams *m, td_sample_params *sp, bool *seed_given, td_err *err) {
    *sp = td_sample_defaults();
    *seed_given = false;
    if (!m) return TD_OK;
    if (m->temperature_opt_case) {
        if (!(m->temperature >= 0) || !isfinite(m->temperature) || m->temperature > 100)
            return td_err_set(err, TD_E_ARG, "sampling.temperature: %g (0..100)", (double)m->temperature);
        sp->temperature = m->temperature;
    }
    if (m->top_k_opt_case) {
        if (m->top_k < 0) return td_err_set(err, TD_E_ARG, "sampling.top_k: %d (>= 0)", m->top_k);
        sp->top_k = m->top_k;
    }
    if (m->top_p_opt_case) {
        if (!(m->top_p > 0 && m->top_p <= 1)) return td_err_set(err, TD_E_ARG, "sampling.top_p: %g (in (0, 1])", (double)m->top_p);
        sp->top_p = m->top_p;
    }
    if (m->min_p_opt_case) {
        if (!(m->min_p >= 0 && m->min_p <= 1)) return td_err_set(err, TD_E_ARG, "sampling.min_p: %g (0..1)", (double)m->min_p);
        sp->min_p = m->min_p;
    }
    if (m->repeat_penalty_opt_case) {
        if (!(m->repeat_penalty > 0) || !isfinite(m->repeat_penalty))
            return td_err_set(err, TD_E_ARG, "sampling.repeat_penalty: %g (> 0)", (double)m->repeat_penalty);
        sp->repeat_penalty = m->repeat_penalty;
    }
    if (m->repeat_last_n_opt_case) {
        if (m->repeat_last_n < 0) return td_err_set(err, TD_E_ARG, "sampling.repeat_last_n: %d (>= 0)", m->repeat_last_n);
        sp->repeat_last_n = m->repeat_last_n;
    }
    if (m->seed_opt_case) {
        sp->seed = m->seed;
        *seed_given = true;
    }
    td_err why = {0};
    if (td_sample_validate(sp, &why)) return td_err_set(err, TD_E_ARG, "sampling: %s", why.msg);
    return TD_OK;
}

static void fail(td_net_call *call, const char *req, int rc, const td_err *err) {
    int code = td_coord_grpc_code(rc);
    td_log(code == TD_NET_INTERNAL ? TD_LOG_ERROR : TD_LOG_INFO, req, "Generate failed: %s: %s", td_net_code_name(code),
           err->msg);
    td_net_call_fail(call, code, "%s", err->msg);
}

/* The tandem.v1 stream as td_coord_run's callbacks see it. */
typedef struct gen_stream {
    td_net_call *call;
    gen_out *out;
    const char *request_id;
    uint64_t seed;
    int32_t write_timeout_ms;
} gen_stream;

static int gen_started(void *user) {
    gen_stream *g = user;
    Tandem__V1__GenerateResponse first = TANDEM__V1__GENERATE_RESPONSE__INIT;
    first.request_id = (char *)g->request_id;
    first.seed = g->seed;
    return flush(g->call, g->out, &first, g->write_timeout_ms) ? 1 : 0;
}

static bool gen_cancelled(void *user) { return td_net_call_cancelled(((gen_stream *)user)->call); }

static int gen_stepped(void *user, td_err *err) {
    gen_stream *g = user;
    if (g->out->nomem) return td_err_set(err, TD_E_NOMEM, "out of memory");
    if (!g->out->n_text && !g->out->n_tok) return 0;
    Tandem__V1__GenerateResponse r = TANDEM__V1__GENERATE_RESPONSE__INIT;
    return flush(g->call, g->out, &r, g->write_timeout_ms) ? 1 : 0;
}

void td_coord_generate(td_net_call *call, const ProtobufCMessage *msg, void *user) {
    td_coord *c = user;
    const Tandem__V1__GenerateRequest *q = (const Tandem__V1__GenerateRequest *)msg;
    char req[40];
    td_coord_request_id(q->request_id, req);
    td_err err = {0};
    int rc = TD_OK;
    double t_start = td_now_sec();
    int64_t left = td_net_call_deadline_ms(call);
    int64_t deadline_at = left == INT64_MAX ? INT64_MAX : td_coord_now_ms() + left;

    char *formatted = NULL;
    int32_t *ids = NULL, *all = NULL;
    size_t n_ids = 0;
    gen_out out = {0};
    td_coord_job job = {.request_id = req, .deadline_at_ms = deadline_at};

    /* ---- the request's own fields ---- */
    size_t prompt_len = strlen(q->prompt);
    int32_t max_tokens = q->max_tokens_opt_case ? q->max_tokens : c->max_tokens_default;
    td_sample_params sp;
    bool seed_given;
    if ((rc = sampling_from(q->sampling, &sp, &seed_given, &err))) goto fail;
    if (!prompt_len && !q->n_prompt_ids) { rc = td_err_set(&err, TD_E_ARG, "prompt: empty (give prompt or prompt_ids)"); goto fail; }
    if (prompt_len && q->n_prompt_ids) { rc = td_err_set(&err, TD_E_ARG, "prompt and prompt_ids: give one"); goto fail; }
    if (!td_coord_utf8_valid(q->prompt, prompt_len)) { rc = td_err_set(&err, TD_E_ARG, "prompt: not valid UTF-8"); goto fail; }
    if (!td_coord_utf8_valid(q->system, strlen(q->system))) { rc = td_err_set(&err, TD_E_ARG, "system: not valid UTF-8"); goto fail; }
    if (max_tokens < 1) { rc = td_err_set(&err, TD_E_ARG, "max_tokens: %d (>= 1)", max_tokens); goto fail; }
    if (q->n_stop > MAX_STOPS) { rc = td_err_set(&err, TD_E_ARG, "stop: %zu strings (at most %d)", q->n_stop, MAX_STOPS); goto fail; }
    for (size_t i = 0; i < q->n_stop; i++)
        if (!q->stop[i][0] || !td_coord_utf8_valid(q->stop[i], strlen(q->stop[i]))) {
            rc = td_err_set(&err, TD_E_ARG, "stop[%zu]: empty or not valid UTF-8", i);
            goto fail;
        }
    if (q->logprobs < 0 || q->logprobs > TD_TARGET_ALT_MAX) {
        rc = td_err_set(&err, TD_E_ARG, "logprobs: %d (0..%d)", q->logprobs, TD_TARGET_ALT_MAX);
        goto fail;
    }
    td_spec_params spp = td_spec_defaults();
    if (q->speculation) {
        const Tandem__V1__SpeculationParams *s = q->speculation;
        if (s->draft_max_opt_case) {
            if (s->draft_max < 0 || s->draft_max > TD_DRAFT_MAX) {
                rc = td_err_set(&err, TD_E_ARG, "speculation.draft_max: %d (0..%d)", s->draft_max, TD_DRAFT_MAX);
                goto fail;
            }
            spp.draft_max = s->draft_max;
        }
        if (s->draft_min_opt_case) {
            if (s->draft_min < 0 || s->draft_min > spp.draft_max) {
                rc = td_err_set(&err, TD_E_ARG, "speculation.draft_min: %d (0..draft_max)", s->draft_min);
                goto fail;
            }
            spp.draft_min = s->draft_min;
        }
        if (spp.draft_min > spp.draft_max) spp.draft_min = spp.draft_max;
        spp.adaptive = !s->draft_fixed;
    }
    if (!seed_given) sp.seed = td_coord_random_seed();

    /* ---- the model, and its tokenizer ---- */
    char fingerprint[160];
    const td_coord_model *model = td_coord_model_for(c, q->model, left, fingerprint, &err);
    if (!model) { rc = err.code; goto fail; }

    /* ---- tokens, as `tandem generate` makes them ---- */
    if (q->n_prompt_ids) {
        n_ids = q->n_prompt_ids;
        if (!(ids = malloc(n_ids * sizeof *ids))) { rc = td_err_set(&err, TD_E_NOMEM, "out of memory"); goto fail; }
        for (size_t i = 0; i < n_ids; i++) {
            if (q->prompt_ids[i] < 0 || q->prompt_ids[i] >= model->vocab_size) {
                rc = td_err_set(&err, TD_E_ARG, "prompt_ids[%zu]: %d outside the vocabulary (0..%d)", i, q->prompt_ids[i],
                                model->vocab_size - 1);
                goto fail;
            }
            ids[i] = q->prompt_ids[i];
        }
    } else {
        const char *text = q->prompt;
        size_t len = prompt_len;
        if (q->chat) {
            td_chat_msg msgs[2];
            size_t n = 0;
            if (q->system[0]) msgs[n++] = (td_chat_msg){"system", q->system};
            msgs[n++] = (td_chat_msg){"user", q->prompt};
            if ((rc = td_tok_chat_format(model->tok, msgs, n, true, &formatted, &err))) goto fail;
            text = formatted;
            len = strlen(formatted);
        }
        if ((rc = td_tok_encode(model->tok, text, len, td_tok_add_bos(model->tok), !q->no_special, &ids, &n_ids, &err)))
            goto fail;
        if (n_ids == 0) { rc = td_err_set(&err, TD_E_ARG, "prompt: encodes to no tokens"); goto fail; }
    }
    if (n_ids + 1 > (size_t)model->ctx) {
        rc = td_err_set(&err, TD_E_ARG, "prompt: %zu tokens do not fit the context of %d", n_ids, model->ctx);
        goto fail;
    }
    if (max_tokens > model->ctx) {
        rc = td_err_set(&err, TD_E_ARG, "max_tokens: %d exceeds the context of %d", max_tokens, model->ctx);
        goto fail;
    }
    /* resume: the tokens the client has are part of the prompt now */
    size_t n_resume = q->n_resume_ids;
    if (n_resume >= (size_t)max_tokens) {
        rc = td_err_set(&err, TD_E_ARG, "resume_ids: %zu tokens, max_tokens is %d", n_resume, max_tokens);
        goto fail;
    }
    if (!(all = malloc((n_ids + n_resume + 1) * sizeof *all))) { rc = td_err_set(&err, TD_E_NOMEM, "out of memory"); goto fail; }
    memcpy(all, ids, n_ids * sizeof *all);
    for (size_t i = 0; i < n_resume; i++) {
        if (q->resume_ids[i] < 0 || q->resume_ids[i] >= model->vocab_size) {
            rc = td_err_set(&err, TD_E_ARG, "resume_ids[%zu]: %d outside the vocabulary", i, q->resume_ids[i]);
            goto fail;
        }
        all[n_ids + i] = q->resume_ids[i];
    }

    /* ---- the run ---- */
    out.n_logprobs = q->logprobs;
    const char *dlist = q->speculation && q->speculation->drafters[0] ? q->speculation->drafters : "auto";
    job.rq = (td_spec_request){.prompt = all, .n_prompt = n_ids + n_resume,
                               .gen = {.sample = sp, .max_tokens = max_tokens - (int32_t)n_resume,
                                       .stop = (const char *const *)q->stop, .n_stop = q->n_stop,
                                       .ignore_eos = q->ignore_eos},
                               .emit = on_text, .on_token = on_token, .user = &out,
                               .n_logprobs = q->logprobs > 0 ? q->logprobs : -1};
    job.spec = spp;
    job.drafters = dlist;
    job.fingerprint = fingerprint;
    gen_stream gs = {.call = call, .out = &out, .request_id = req, .seed = sp.seed, .write_timeout_ms = c->write_timeout_ms};
    job.started = gen_started;
    job.cancelled = gen_cancelled;
    job.stepped = gen_stepped;
    job.user = &gs;
    td_log(TD_LOG_INFO, req, "Generate: %zu prompt tokens%s, max %d, seed %llu, drafters %s", n_ids,
           n_resume ? " + resumed" : "", max_tokens, (unsigned long long)sp.seed, dlist);
    rc = td_coord_run(c, model, &job, &err);
    if (rc == TD_COORD_GONE) goto gone;
    if (rc) goto fail;
    const td_spec_request *rq = &job.rq;

    Tandem__V1__GenerateResponse last = TANDEM__V1__GENERATE_RESPONSE__INIT;
    Tandem__V1__Usage usage = TANDEM__V1__USAGE__INIT;
    Tandem__V1__SpeculationStats stats = TANDEM__V1__SPECULATION_STATS__INIT;
    last.done = true;
    last.finish_reason = finish_reason(rq->stats.stop);
    usage.prompt_tokens = (int32_t)n_ids;
    usage.completion_tokens = rq->stats.n_generated + (int32_t)n_resume;
    usage.time_to_first_token_sec = out.t_first > 0 ? out.t_first - t_start : 0;
    usage.total_sec = td_now_sec() - t_start;
    usage.cached_tokens = job.cached_tokens;
    stats.steps = rq->spec.n_steps;
    stats.drafted = rq->spec.n_drafted;
    stats.accepted = rq->spec.n_accepted;
    stats.tokens_per_pass = rq->spec.n_steps ? (double)rq->spec.n_tokens / (double)rq->spec.n_steps : 0;
    last.usage = &usage;
    last.speculation = &stats;
    if (flush(call, &out, &last, c->write_timeout_ms)) goto gone;
    td_net_call_finish(call);
    td_log(TD_LOG_INFO, req, "Generate done: %d tokens in %.2f s (%s), %.2f tokens/pass, verifier %s%s",
           rq->stats.n_generated, usage.total_sec, td_gen_stop_name(rq->stats.stop), stats.tokens_per_pass,
           job.verifier, job.moves ? " (moved)" : "");
    goto done;
gone:
    if (td_net_call_deadline_ms(call) <= 0) {
        td_log(TD_LOG_INFO, req, "Generate: deadline exceeded; sequence released");
        td_net_call_fail(call, TD_NET_DEADLINE_EXCEEDED, "deadline exceeded after %d tokens", job.rq.stats.n_generated);
    } else {
        td_log(TD_LOG_INFO, req, "Generate: the client went away (cancelled or not reading); sequence released");
        td_net_call_fail(call, TD_NET_CANCELLED, "cancelled");
    }
    goto done;
fail:
    fail(call, req, rc, &err);
done:
    free(formatted);
    free(ids);
    free(all);
    free(out.text);
    free(out.tok);
    free(out.alt);
    free(out.tokp);
    free(out.altp);
}
