/* coord_run.c — one generation request from tokens to the end, whatever API
 * it came in through (tandem.v1 in coord_generate.c, vLLM's engine API in
 * coord_vllm.c): the model a request will run on, its drafters, the remote
 * target, and the speculative session stepped until the request finishes,
 * the client goes away or a worker error ends it. The API layers own
 * parsing, tokenizing and what goes on the wire.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator.h"
#include "metrics/metrics.h"

#define MAX_DRAFTERS 6

uint64_t td_coord_random_seed(void) {
    uint64_t s = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (read(fd, &s, sizeof s) != (ssize_t)sizeof s) s = 0;
        close(fd);
    }
    if (!s) s = (uint64_t)(td_now_sec() * 1e9) ^ ((uint64_t)getpid() << 32);
    return s;
}

const td_coord_model *td_coord_model_for(td_coord *c, const char *name, int64_t left_ms, char fingerprint[160],
                                         td_err *err) {
    td_coord_worker *w = td_coord_members_pick(c->members, "verifier", NULL, NULL);
    if (!w) {
        td_err_set(err, TD_COORD_E_GRPC(TD_NET_UNAVAILABLE), "no verifier available");
        return NULL;
    }
    const td_coord_model *model = td_coord_models_get(c->models, w, left_ms == INT64_MAX ? 10000 : left_ms, err);
    /* The request follows the fingerprint of the verifier picked now, not
     * the one the model was first described by: verifiers of one model may
     * differ in layout (a TP group beside single processes), and pinning
     * the first one's would leave the others unused, and every request
     * refused once that set is gone. (A static worker's is "" until
     * described: then the model's.) */
    if (fingerprint && model) snprintf(fingerprint, 160, "%s", w->fingerprint[0] ? w->fingerprint : model->fingerprint);
    td_coord_members_put(c->members, w, model == NULL);
    if (!model) return NULL;
    if (name && name[0] && strcmp(name, model->model_id) && strcmp(name, model->model_name)) {
        td_err_set(err, TD_COORD_E_GRPC(TD_NET_NOT_FOUND), "model: \"%.80s\" is not served here (have %s, id %.16s)",
                   name, model->model_name, model->model_id);
        return NULL;
    }
    return model;
}

static const char *const k_drafter_names[] = {"none", "lookup", "ngram", "recycle", "layerskip", "model", "auto"};

int td_coord_drafters_check(const char *list, td_err *err) {
    char buf[256];
    if (!list || strlen(list) >= sizeof buf) return td_err_set(err, TD_E_ARG, "drafters: empty or too long");
    snprintf(buf, sizeof buf, "%s", list);
    char *save = NULL;
    int n = 0;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save), n++) {
        size_t k = 0;
        while (k < sizeof k_drafter_names / sizeof *k_drafter_names && strcmp(tok, k_drafter_names[k])) k++;
        if (k == sizeof k_drafter_names / sizeof *k_drafter_names)
            return td_err_set(err, TD_E_ARG, "drafters: unknown drafter \"%.40s\" (none, lookup, ngram, recycle, "
                              "layerskip, model, auto)", tok);
    }
    return n ? TD_OK : td_err_set(err, TD_E_ARG, "drafters: empty list");
}

/* Parses a drafter list ("lookup,ngram", "auto", "none") into drafters. */
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

int td_coord_run(td_coord *c, const td_coord_model *model, td_coord_job *job, td_err *err) {
    td_drafter *drafters[MAX_DRAFTERS] = {0};
    int32_t n_drafters = 0;
    td_target *target = NULL;
    td_spec_session *sess = NULL;
    const char *dlist = job->drafters && job->drafters[0] ? job->drafters : "auto";
    double t_start = td_now_sec(), t_first = 0; /* metrics: both APIs run here */
    int rc = make_drafters(c, dlist, job->request_id, model->vocab_size, drafters, &n_drafters, err);
    if (rc) goto done;
    const char *fp = job->fingerprint && job->fingerprint[0] ? job->fingerprint : model->fingerprint;
    if (!(target = td_coord_target_create(c, job->request_id, fp, job->deadline_at_ms, err))) {
        rc = err->code;
        goto done;
    }
    if (!(sess = td_spec_session_create(model->tok, model->vocab_size, target, drafters, n_drafters, &job->spec, 1,
                                        1 + TD_DRAFT_MAX, model->ctx, err))) {
        rc = err->code;
        goto done;
    }
    td_spec_session_attach(sess, c->learned, dlist);
    if ((rc = td_spec_session_add(sess, 0, &job->rq, err))) goto done;
    job->cached_tokens = td_coord_target_reused(target);
    if (job->started && job->started(job->user)) {
        rc = TD_COORD_GONE;
        goto cancel;
    }
    while (td_spec_session_active(sess, 0)) {
        if (job->cancelled && job->cancelled(job->user)) {
            rc = TD_COORD_GONE;
            goto cancel;
        }
        int left = td_spec_session_step(sess, err);
        if (left < 0) {
            rc = left;
            goto done;
        }
        if (t_first == 0 && job->rq.stats.n_generated > 0) t_first = td_now_sec();
        int r = job->stepped ? job->stepped(job->user, err) : 0;
        if (r < 0) {
            rc = r;
            goto done;
        }
        if (r > 0) {
            rc = TD_COORD_GONE;
            goto cancel;
        }
    }
    goto done;
cancel:
    td_spec_session_cancel(sess, 0);
done:
    if (rc == TD_OK)
        td_metrics_generate_done(job->rq.n_prompt, job->rq.stats.n_generated, t_first > 0 ? t_first - t_start : 0,
                                 td_now_sec() - t_start, job->rq.spec.n_steps, job->rq.spec.n_drafted,
                                 job->rq.spec.n_accepted);
    if (target) {
        snprintf(job->verifier, sizeof job->verifier, "%s", td_coord_target_worker(target));
        job->moves = td_coord_target_moves(target);
    }
    td_spec_session_destroy(sess); /* releases the sequence on its worker */
    td_target_destroy(target);
    for (int32_t i = 0; i < n_drafters; i++) td_drafter_destroy(drafters[i]);
    return rc;
}
