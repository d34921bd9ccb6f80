/* coord_generate.c — tandem.v1.Inference/Generate: checks the request,
 * tokenizes it as `tandem generate` does, fixes the seed, and runs the
 * speculative session (drafters here and on workers, verification on a
 * verifier through the remote target), streaming text and tokens after each
 * step. A client that cancels, or whose deadline passes, frees the
 * sequence on its worker at once.
 */
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator.h"
#include "metrics/metrics.h"
#include "tandem/v1/inference.pb-c.h"

#define MAX_STOPS 16
#define MAX_DRAFTERS 6

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

static uint64_t random_seed(void) {
    uint64_t s = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (read(fd, &s, sizeof s) != (ssize_t)sizeof s) s = 0;
        close(fd);
    }
    if (!s) s = (uint64_t)(td_now_sec() * 1e9) ^ ((uint64_t)getpid() << 32);
    return s;
}

/* Parses speculation.drafters into drafters for this request. */
static int make_drafters(td_coord *c, const char *spec, const char *req, int32_t n_vocab, td_drafter **out, int32_t *n,
                         td_err *err) {
    *n = 0;
    if (!spec || !*spec) spec = "auto";
    char buf[256];
    snprintf(buf, sizeof buf, "%s", spec);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        const char *names[3] = {tok, NULL, NULL};
        if (!strcmp(tok, "auto")) { names[0] = "lookup"; names[1] = "recycle"; names[2] = "ngram"; }
        for (int k = 0; k < 3 && names[k]; k++) {
            const char *nm = names[k];
            if (!strcmp(nm, "none")) continue;
            if (*n >= MAX_DRAFTERS) return td_err_set(err, TD_E_ARG, "speculation.drafters: at most %d", MAX_DRAFTERS);
            td_drafter *d = NULL;
            if (!strcmp(nm, "lookup")) d = td_spec_lookup_create(1, 4, err);
            else if (!strcmp(nm, "ngram")) d = td_spec_ngram_create(4, 1, err);
            else if (!strcmp(nm, "recycle")) d = td_spec_recycle_create(n_vocab, 8, err);
            else if (!strcmp(nm, "model")) d = td_coord_drafter_create(c, "drafter", req, err);
            else if (!strcmp(nm, "layerskip")) d = td_coord_drafter_create(c, "verifier", req, err);
            else
                return td_err_set(err, TD_E_ARG,
                                  "speculation.drafters: unknown drafter \"%.40s\" (none, lookup, ngram, recycle, "
                                  "layerskip, model, auto)", nm);
            if (!d) return err->code;
            out[(*n)++] = d;
        }
    }
    return TD_OK;
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

    td_drafter *drafters[MAX_DRAFTERS] = {0};
    int32_t n_drafters = 0;
    char *formatted = NULL;
    int32_t *ids = NULL, *all = NULL;
    size_t n_ids = 0;
    td_target *target = NULL;
    td_spec_session *sess = NULL;
    td_coord_worker *w = NULL;
    gen_out out = {0};

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
    if (!seed_given) sp.seed = random_seed();

    /* ---- a verifier, and its model's tokenizer ---- */
    w = td_coord_members_pick(c->members, "verifier", NULL, NULL);
    if (!w) { rc = td_err_set(&err, TD_COORD_E_GRPC(TD_NET_UNAVAILABLE), "no verifier available"); goto fail; }
    const td_coord_model *model = td_coord_models_get(c->models, w, left == INT64_MAX ? 10000 : left, &err);
    if (!model) { rc = err.code; goto fail; }
    if (q->model[0] && strcmp(q->model, model->model_id) && strcmp(q->model, model->model_name)) {
        rc = td_err_set(&err, TD_COORD_E_GRPC(TD_NET_NOT_FOUND), "model: \"%.80s\" is not served here (have %s, id %.16s)",
                        q->model, model->model_name, model->model_id);
        goto fail;
    }
    char fingerprint[160];
    snprintf(fingerprint, sizeof fingerprint, "%s", model->fingerprint);
    td_coord_members_put(c->members, w, false);
    w = NULL;

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

    /* ---- the session ---- */
    if ((rc = make_drafters(c, q->speculation ? q->speculation->drafters : NULL, req, model->vocab_size, drafters,
                            &n_drafters, &err)))
        goto fail;
    if (!(target = td_coord_target_create(c, req, fingerprint, deadline_at, &err))) { rc = err.code; goto fail; }
    if (!(sess = td_spec_session_create(model->tok, model->vocab_size, target, drafters, n_drafters, &spp, 1,
                                        1 + TD_DRAFT_MAX, model->ctx, &err))) {
        rc = err.code;
        goto fail;
    }
    td_spec_session_attach(sess, c->learned, q->speculation && q->speculation->drafters[0] ? q->speculation->drafters : "auto");
    out.n_logprobs = q->logprobs;
    td_spec_request rq = {.prompt = all, .n_prompt = n_ids + n_resume,
                          .gen = {.sample = sp, .max_tokens = max_tokens - (int32_t)n_resume,
                                  .stop = (const char *const *)q->stop, .n_stop = q->n_stop, .ignore_eos = q->ignore_eos},
                          .emit = on_text, .on_token = on_token, .user = &out,
                          .n_logprobs = q->logprobs > 0 ? q->logprobs : -1};
    td_log(TD_LOG_INFO, req, "Generate: %zu prompt tokens%s, max %d, seed %llu, drafters %s", n_ids,
           n_resume ? " + resumed" : "", max_tokens, (unsigned long long)sp.seed,
           q->speculation && q->speculation->drafters[0] ? q->speculation->drafters : "auto");
    if ((rc = td_spec_session_add(sess, 0, &rq, &err))) goto fail;

    Tandem__V1__GenerateResponse first = TANDEM__V1__GENERATE_RESPONSE__INIT;
    first.request_id = req;
    first.seed = sp.seed;
    if (flush(call, &out, &first, c->write_timeout_ms)) goto gone;
    bool cancelled = false;
    while (td_spec_session_active(sess, 0)) {
        if (td_net_call_cancelled(call)) { cancelled = true; break; }
        int left_n = td_spec_session_step(sess, &err);
        if (left_n < 0) { rc = left_n; goto fail; }
        if (out.nomem) { rc = td_err_set(&err, TD_E_NOMEM, "out of memory"); goto fail; }
        if (out.n_text || out.n_tok) {
            Tandem__V1__GenerateResponse r = TANDEM__V1__GENERATE_RESPONSE__INIT;
            if (flush(call, &out, &r, c->write_timeout_ms)) { cancelled = true; break; }
        }
    }
    if (cancelled) {
        td_spec_session_cancel(sess, 0);
        goto gone;
    }
    Tandem__V1__GenerateResponse last = TANDEM__V1__GENERATE_RESPONSE__INIT;
    Tandem__V1__Usage usage = TANDEM__V1__USAGE__INIT;
    Tandem__V1__SpeculationStats stats = TANDEM__V1__SPECULATION_STATS__INIT;
    last.done = true;
    last.finish_reason = finish_reason(rq.stats.stop);
    usage.prompt_tokens = (int32_t)n_ids;
    usage.completion_tokens = rq.stats.n_generated + (int32_t)n_resume;
    usage.time_to_first_token_sec = out.t_first > 0 ? out.t_first - t_start : 0;
    usage.total_sec = td_now_sec() - t_start;
    stats.steps = rq.spec.n_steps;
    stats.drafted = rq.spec.n_drafted;
    stats.accepted = rq.spec.n_accepted;
    stats.tokens_per_pass = rq.spec.n_steps ? (double)rq.spec.n_tokens / (double)rq.spec.n_steps : 0;
    last.usage = &usage;
    last.speculation = &stats;
    if (flush(call, &out, &last, c->write_timeout_ms)) goto gone;
    td_net_call_finish(call);
    td_metrics_generate_done((int64_t)n_ids, rq.stats.n_generated, usage.time_to_first_token_sec, usage.total_sec,
                             rq.spec.n_steps, rq.spec.n_drafted, rq.spec.n_accepted);
    td_log(TD_LOG_INFO, req, "Generate done: %d tokens in %.2f s (%s), %.2f tokens/pass, verifier %s%s",
           rq.stats.n_generated, usage.total_sec, td_gen_stop_name(rq.stats.stop), stats.tokens_per_pass,
           td_coord_target_worker(target), td_coord_target_moves(target) ? " (moved)" : "");
    goto done;
gone:
    if (td_net_call_deadline_ms(call) <= 0) {
        td_log(TD_LOG_INFO, req, "Generate: deadline exceeded; sequence released");
        td_net_call_fail(call, TD_NET_DEADLINE_EXCEEDED, "deadline exceeded after %d tokens", rq.stats.n_generated);
    } else {
        td_log(TD_LOG_INFO, req, "Generate: the client went away (cancelled or not reading); sequence released");
        td_net_call_fail(call, TD_NET_CANCELLED, "cancelled");
    }
    goto done;
fail:
    fail(call, req, rc, &err);
done:
    td_spec_session_destroy(sess); /* releases the sequence on its worker */
    td_target_destroy(target);
    for (int32_t i = 0; i < n_drafters; i++) td_drafter_destroy(drafters[i]);
    if (w) td_coord_members_put(c->members, w, false);
    free(formatted);
    free(ids);
    free(all);
    free(out.text);
    free(out.tok);
    free(out.alt);
    free(out.tokp);
    free(out.altp);
}
