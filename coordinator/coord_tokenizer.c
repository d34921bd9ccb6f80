/* coord_tokenizer.c — the models behind the workers, as the coordinator
 * needs them: tokenizer, context length, fingerprint. Fetched with Describe
 * from the first worker of a model and cached by model id, so a coordinator
 * needs no model file and tokenizes exactly as the workers do.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator.h"
#include "tandem/v1/worker.pb-c.h"

#define MAX_MODELS 16

struct td_coord_models {
    pthread_mutex_t mu;
    td_coord_model *m[MAX_MODELS];
    int32_t n;
};

td_coord_models *td_coord_models_create(td_err *err) {
    td_coord_models *c = calloc(1, sizeof *c);
    if (!c) {
        td_err_set(err, TD_E_NOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

static void free_model(td_coord_model *m) {
    if (!m) return;
    td_tok_destroy(m->tok);
    td_gguf_close(m->gguf);
    free(m->gguf_bytes);
    free(m);
}

void td_coord_models_destroy(td_coord_models *c) {
    if (!c) return;
    for (int32_t i = 0; i < c->n; i++) free_model(c->m[i]);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static const td_coord_model *find(td_coord_models *c, const char *model_id) {
    for (int32_t i = 0; i < c->n; i++)
        if (strcmp(c->m[i]->model_id, model_id) == 0) return c->m[i];
    return NULL;
}

const td_coord_model *td_coord_models_get(td_coord_models *c, td_coord_worker *w, int64_t deadline_ms, td_err *err) {
    pthread_mutex_lock(&c->mu);
    const td_coord_model *hit = w->model_id[0] ? find(c, w->model_id) : NULL;
    pthread_mutex_unlock(&c->mu);
    if (hit) return hit;

    Tandem__V1__DescribeRequest q = TANDEM__V1__DESCRIBE_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    td_net_status st;
    if (td_net_unary(w->ch, "/tandem.v1.Worker/Describe", &q.base, &tandem__v1__describe_response__descriptor, &resp,
                     deadline_ms, NULL, 0, &st) != TD_NET_OK) {
        td_err_set(err, TD_COORD_E_GRPC(st.code), "worker %s: Describe: %s: %s", w->id, td_net_code_name(st.code), st.msg);
        return NULL;
    }
    const Tandem__V1__DescribeResponse *r = (const Tandem__V1__DescribeResponse *)resp;
    td_coord_model *m = calloc(1, sizeof *m);
    int rc = TD_OK;
    if (!m || !(m->gguf_bytes = malloc(r->tokenizer_gguf.len ? r->tokenizer_gguf.len : 1))) {
        rc = td_err_set(err, TD_E_NOMEM, "out of memory");
        goto fail;
    }
    if (r->tokenizer_gguf.len) memcpy(m->gguf_bytes, r->tokenizer_gguf.data, r->tokenizer_gguf.len);
    snprintf(m->model_id, sizeof m->model_id, "%s", r->model_id);
    snprintf(m->model_name, sizeof m->model_name, "%s", r->model_name);
    snprintf(m->fingerprint, sizeof m->fingerprint, "%s", r->fingerprint);
    m->vocab_size = r->vocab_size;
    m->ctx = r->context_length;
    m->vocab_hash = r->vocab_hash;
    if ((rc = td_gguf_open_memory(m->gguf_bytes, r->tokenizer_gguf.len, &m->gguf, err)) ||
        (rc = td_tok_create(m->gguf, &m->tok, err)))
        goto fail;
    if (td_tok_vocab_hash(m->tok) != m->vocab_hash) {
        rc = td_err_set(err, TD_E_FORMAT, "worker %s: its tokenizer does not hash to its vocab hash", w->id);
        goto fail;
    }
    protobuf_c_message_free_unpacked(resp, NULL);
    pthread_mutex_lock(&c->mu);
    const td_coord_model *again = find(c, m->model_id);
    if (again || c->n >= MAX_MODELS) { /* another thread was first (or the cache is full) */
        pthread_mutex_unlock(&c->mu);
        free_model(m);
        if (!again) td_err_set(err, TD_E_RANGE, "more than %d models behind one coordinator", MAX_MODELS);
        return again;
    }
    c->m[c->n++] = m;
    pthread_mutex_unlock(&c->mu);
    td_log(TD_LOG_INFO, NULL, "model %s (%.16s): tokenizer of %d tokens fetched from %s", m->model_name, m->model_id,
           td_tok_vocab_size(m->tok), w->id);
    return m;
fail:
    (void)rc;
    protobuf_c_message_free_unpacked(resp, NULL);
    free_model(m);
    return NULL;
}
