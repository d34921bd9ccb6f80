/* kv.c — the paged KV cache: per sequence, pages of TD_KV_PAGE positions
 * allocated on first use and kept on truncation (a rolled-back draft reuses
 * them). Truncation only moves the length: positions past it are never read.
 */
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"

td_kv *td_kv_create(const td_model *m, int32_t max_seqs, int32_t max_len, td_err *err) {
    if (!m || max_seqs < 1 || max_len < 1) {
        td_err_set(err, TD_E_ARG, "KV cache: %s, %d sequences of %d positions (each at least 1)",
                   m ? "a model" : "no model", max_seqs, max_len);
        return NULL;
    }
    td_kv *kv = calloc(1, sizeof *kv);
    if (!kv) goto nomem;
    const td_hparams *hp = &m->hp;
    kv->n_layer = hp->n_layer;
    kv->kv_dim = m->shard.n_head_kv * hp->head_dim; /* this rank's KV heads */
    kv->max_seqs = max_seqs;
    kv->max_len = max_len;
    kv->pages_per_seq = (max_len + TD_KV_PAGE - 1) / TD_KV_PAGE;
    kv->len = calloc((size_t)max_seqs, sizeof *kv->len);
    kv->pages = calloc((size_t)max_seqs * (size_t)kv->pages_per_seq, sizeof *kv->pages);
    if (!kv->len || !kv->pages) {
        td_kv_destroy(kv);
        goto nomem;
    }
    return kv;
nomem:
    td_err_set(err, TD_E_NOMEM, "KV cache: out of memory for %d sequences of %d positions", max_seqs, max_len);
    return NULL;
}

void td_kv_destroy(td_kv *kv) {
    if (!kv) return;
    td_cuda_kv_free(kv->cuda);
    if (kv->pages)
        for (size_t i = 0; i < (size_t)kv->max_seqs * kv->pages_per_seq; i++) td_free(kv->pages[i]);
    free(kv->pages);
    free(kv->len);
    free(kv);
}

int32_t td_kv_max_len(const td_kv *kv) { return kv->max_len; }

int32_t td_kv_max_seqs(const td_kv *kv) { return kv->max_seqs; }

int32_t td_kv_seq_len(const td_kv *kv, int32_t seq) {
    if (seq < 0 || seq >= kv->max_seqs) return -1;
    return kv->len[seq];
}

static int kv_truncate(td_kv *kv, int32_t seq, int32_t len);
static int kv_compact(td_kv *kv, int32_t seq, int32_t base, const int32_t *keep, int32_t n_keep);

/* A group leader's cache: the step goes to the other ranks first (group.c),
 * which apply it to their shard's cache. */
int td_kv_truncate(td_kv *kv, int32_t seq, int32_t len) {
    if (!kv->lead) return kv_truncate(kv, seq, len);
    pthread_mutex_lock(&kv->lead->mu);
    td_step st = {TD_STEP_TRUNCATE, seq, len, 0};
    int rc = td_lead_send(kv->lead, &st, NULL, 0, NULL, 0, NULL);
    if (rc == TD_OK) rc = kv_truncate(kv, seq, len);
    pthread_mutex_unlock(&kv->lead->mu);
    return rc;
}

int td_kv_compact(td_kv *kv, int32_t seq, int32_t base, const int32_t *keep, int32_t n_keep) {
    if (!kv->lead) return kv_compact(kv, seq, base, keep, n_keep);
    if (n_keep < 0) return TD_E_ARG;
    pthread_mutex_lock(&kv->lead->mu);
    td_step st = {TD_STEP_COMPACT, seq, base, n_keep};
    int rc = td_lead_send(kv->lead, &st, keep, (size_t)n_keep * sizeof *keep, NULL, 0, NULL);
    if (rc == TD_OK) rc = kv_compact(kv, seq, base, keep, n_keep);
    pthread_mutex_unlock(&kv->lead->mu);
    return rc;
}

static int kv_truncate(td_kv *kv, int32_t seq, int32_t len) {
    if (seq < 0 || seq >= kv->max_seqs) return TD_E_ARG;
    if (len < 0 || len > kv->len[seq]) return TD_E_ARG;
    kv->len[seq] = len;
    return TD_OK;
}

size_t td_kv_bytes(const td_kv *kv) { return kv->bytes + td_cuda_kv_bytes(kv->cuda); }

static int kv_compact(td_kv *kv, int32_t seq, int32_t base, const int32_t *keep, int32_t n_keep) {
    if (seq < 0 || seq >= kv->max_seqs || base < 0 || n_keep < 0 || base + n_keep > kv->len[seq])
        return TD_E_ARG;
    for (int32_t j = 0; j < n_keep; j++)
        if (keep[j] < j || base + keep[j] >= kv->len[seq] || (j > 0 && keep[j] <= keep[j - 1])) return TD_E_ARG;
    if (kv->cuda) {
        int rc = td_cuda_kv_compact(kv->cuda, seq, base, keep, n_keep, NULL);
        if (rc) return rc;
        kv->len[seq] = base + n_keep;
        return TD_OK;
    }
    size_t bytes = (size_t)kv->kv_dim * sizeof(uint16_t);
    for (int32_t j = 0; j < n_keep; j++) {
        if (keep[j] == j) continue;
        for (int32_t l = 0; l < kv->n_layer; l++)
            for (int which = 0; which < 2; which++)
                memcpy(td_kv_at(kv, seq, l, which, base + j), td_kv_at(kv, seq, l, which, base + keep[j]), bytes);
    }
    kv->len[seq] = base + n_keep;
    return TD_OK;
}

int td_kv_reserve(td_kv *kv, int32_t seq, int32_t len) {
    size_t page_bytes = (size_t)kv->n_layer * 2 * TD_KV_PAGE * (size_t)kv->kv_dim * sizeof(uint16_t);
    for (int32_t p = 0; p * TD_KV_PAGE < len; p++) {
        uint16_t **slot = &kv->pages[(size_t)seq * kv->pages_per_seq + p];
        if (*slot) continue;
        *slot = td_alloc(page_bytes);
        if (!*slot) return TD_E_NOMEM;
        kv->bytes += page_bytes;
    }
    return TD_OK;
}
