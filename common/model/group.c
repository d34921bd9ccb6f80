/* group.c — a tensor-parallel group inside a server: the leader (rank 0)
 * broadcasts every step of its context and cache (a forward pass's rows,
 * a truncation, a compaction) before running it; the followers receive
 * the steps in the same order and run them on their shards, so the
 * collectives inside each pass meet. The control messages are td_comm's
 * host-side broadcast; the data stays in the pass's own collectives.
 */
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"

struct td_group {
    td_lead lead;
    td_ctx *c;
    td_kv *kv;
};

int td_lead_send(td_lead *l, const td_step *s, const void *p1, size_t b1, const void *p2, size_t b2, td_err *err) {
    td_step copy = *s;
    int rc = td_comm_bcast_ctrl(l->comm, &copy, sizeof copy, err);
    if (rc == TD_OK && b1) rc = td_comm_bcast_ctrl(l->comm, (void *)p1, b1, err);
    if (rc == TD_OK && b2) rc = td_comm_bcast_ctrl(l->comm, (void *)p2, b2, err);
    return rc;
}

td_group *td_model_group_lead(td_comm *comm, td_ctx *c, td_kv *kv, td_err *err) {
    if (td_comm_rank(comm) != 0 || kv->lead) {
        td_err_set(err, TD_E_ARG, "group: only rank 0 leads, and a cache has one leader");
        return NULL;
    }
    td_group *g = calloc(1, sizeof *g);
    if (!g || pthread_mutex_init(&g->lead.mu, NULL) != 0) {
        free(g);
        td_err_set(err, TD_E_NOMEM, "group: out of memory");
        return NULL;
    }
    g->lead.comm = comm;
    g->c = c;
    g->kv = kv;
    td_ctx_set_lead(c, &g->lead);
    kv->lead = &g->lead;
    return g;
}

void td_model_group_end(td_group *g) {
    if (!g) return;
    pthread_mutex_lock(&g->lead.mu);
    td_step st = {TD_STEP_STOP, 0, 0, 0};
    (void)td_lead_send(&g->lead, &st, NULL, 0, NULL, 0, NULL); /* a failed group has no one to stop */
    td_ctx_set_lead(g->c, NULL);
    g->kv->lead = NULL;
    pthread_mutex_unlock(&g->lead.mu);
    pthread_mutex_destroy(&g->lead.mu);
    free(g);
}

int td_model_group_follow(td_comm *comm, td_ctx *c, td_kv *kv, td_err *err) {
    const td_hparams *hp = td_model_hparams(td_ctx_model(c));
    int32_t max_rows = td_ctx_max_rows(c), n_layer = hp->n_layer;
    int64_t V = hp->n_vocab;
    /* sized once for the largest step: the loop allocates nothing */
    td_row *rows = malloc((size_t)max_rows * sizeof *rows);
    int32_t *keep = malloc((size_t)kv->max_len * sizeof *keep);
    uint8_t *skip = malloc((size_t)n_layer);
    float *logits = malloc((size_t)max_rows * (size_t)V * sizeof(float));
    int rc = TD_OK;
    if (!rows || !keep || !skip || !logits) {
        rc = td_err_set(err, TD_E_NOMEM, "group: out of memory for a follower's step");
        goto out;
    }
    for (;;) {
        td_step st;
        td_err why = {0};
        if ((rc = td_comm_bcast_ctrl(comm, &st, sizeof st, err))) goto out;
        if (st.op == TD_STEP_STOP) break;
        if (st.op == TD_STEP_FORWARD) {
            if (st.n < 1 || st.n > max_rows) {
                rc = td_err_set(err, TD_E_IO, "group: a step of %d rows (at most %d)", st.n, max_rows);
                goto out;
            }
            if ((rc = td_comm_bcast_ctrl(comm, rows, (size_t)st.n * sizeof *rows, err))) goto out;
            if (st.a && (rc = td_comm_bcast_ctrl(comm, skip, (size_t)n_layer, err))) goto out;
            (void)td_model_forward_skip(c, kv, rows, st.n, logits, st.a ? skip : NULL, &why);
        } else if (st.op == TD_STEP_TRUNCATE) {
            (void)td_kv_truncate(kv, st.seq, st.a);
        } else if (st.op == TD_STEP_COMPACT) {
            if (st.n < 0 || st.n > kv->max_len) {
                rc = td_err_set(err, TD_E_IO, "group: a compaction keeping %d positions", st.n);
                goto out;
            }
            if (st.n && (rc = td_comm_bcast_ctrl(comm, keep, (size_t)st.n * sizeof *keep, err))) goto out;
            (void)td_kv_compact(kv, st.seq, st.a, keep, st.n);
        } else {
            rc = td_err_set(err, TD_E_IO, "group: unknown step %d", st.op);
            goto out;
        }
    }
out:
    free(rows);
    free(keep);
    free(skip);
    free(logits);
    return rc;
}
