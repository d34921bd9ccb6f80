/* worker_score.c — scoring: the log-probability the model gives each token
 * of a continuation after a prompt (teacher forcing), with greedy flags and
 * the best alternatives. Runs in the cache's scratch sequence, one chunk of
 * rows per pass, giving the pass token back between chunks so generation
 * streams are not held up by a long scoring job. Batch invariance makes the
 * result independent of the chunking: it equals `tandem perplexity`'s. Each
 * row comes back as a td_sample_score (computed on the device on a GPU), and
 * every number follows from it as from the row.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "worker.h"


int td_worker_score(td_worker_engine *e, const char *req, const int32_t *prompt, size_t n_prompt,
                    const int32_t *cont, size_t n_cont, int32_t top_k, td_worker_score_out *out, td_err *err) {
    (void)req;
    td_worker_scratch sc;
    td_worker_engine_scratch(e, &sc);
    if (n_prompt == 0) return td_err_set(err, TD_E_ARG, "prompt: empty (a continuation needs something before it)");
    if (n_cont == 0) return td_err_set(err, TD_E_ARG, "continuation: empty");
    if (n_prompt + n_cont > (size_t)sc.ctx_len)
        return td_err_set(err, TD_E_RANGE, "prompt + continuation: %zu tokens exceed the context of %d",
                          n_prompt + n_cont, sc.ctx_len);
    if (top_k < 0 || top_k > TD_TARGET_ALT_MAX) return td_err_set(err, TD_E_ARG, "top_k: %d (0..%d)", top_k, TD_TARGET_ALT_MAX);
    for (size_t i = 0; i < n_prompt + n_cont; i++) {
        int32_t t = i < n_prompt ? prompt[i] : cont[i - n_prompt];
        if (t < 0 || t >= sc.n_vocab) return td_err_set(err, TD_E_ARG, "token %d outside the vocabulary", t);
    }
    size_t n = n_prompt + n_cont;
    /* on a GPU the rows are scored where the logits are (sample.h, "scoring
     * where the logits are"): a score crosses to the host, not the row */
    const bool on_device = td_ctx_device(sc.ctx).kind == TD_DEVICE_CUDA;
    /* one scoring job at a time owns the scratch sequence */
    pthread_mutex_lock(sc.score_lock);
    int rc = TD_OK;
    td_worker_engine_pass_take(e);
    td_kv_truncate(sc.kv, sc.seq, 0);
    td_worker_engine_pass_give(e);
    for (size_t done = 0; done + 1 < n && rc == TD_OK;) {
        /* rows: tokens [done, done + k), all of them up to n - 1 (the last
         * token is never input); logits only where a continuation token is
         * predicted (positions n_prompt - 1 ... n - 2) */
        size_t k = n - 1 - done < (size_t)sc.max_rows ? n - 1 - done : (size_t)sc.max_rows;
        int32_t n_logit = 0;
        for (size_t i = 0; i < k; i++) {
            size_t p = done + i;
            int32_t t = p < n_prompt ? prompt[p] : cont[p - n_prompt];
            bool want = p + 1 >= n_prompt;
            sc.rows[i] = td_row_linear(sc.seq, (int32_t)p, t, want);
            if (want) sc.targets[n_logit++] = cont[p + 1 - n_prompt];
        }
        td_worker_engine_pass_take(e);
        rc = td_model_forward_scores(sc.ctx, sc.kv, sc.rows, (int32_t)k, sc.targets, top_k,
                                     on_device ? NULL : sc.logits, sc.scores, err);
        /* a row whose alternatives the device left to it (rare: NaN, or ties
         * crowding its head) is fetched before the pass is given back */
        for (int32_t j = 0; j < n_logit && rc == TD_OK; j++)
            if (sc.scores[j].n_alt < top_k && on_device)
                rc = td_model_pass_logits(sc.ctx, j, sc.logits + (size_t)j * sc.n_vocab, err);
        td_worker_engine_pass_give(e);
        if (rc) break;
        for (int32_t j = 0; j < n_logit; j++) {
            const td_sample_score *r = &sc.scores[j];
            size_t c = done + (k - (size_t)n_logit) + (size_t)j + 1 - n_prompt; /* continuation index predicted */
            double log_sum = log(r->sum);
            out->logprob[c] = (float)td_sample_logprob_of(r->logit, r->max, log_sum);
            out->greedy[c] = r->argmax == cont[c];
            if (top_k == 0) continue;
            int32_t *ids = out->top_id + c * (size_t)top_k;
            float *lps = out->top_logprob + c * (size_t)top_k;
            if (r->n_alt == top_k) {
                for (int32_t a = 0; a < top_k; a++) {
                    ids[a] = r->alt_id[a];
                    lps[a] = (float)td_sample_logprob_of(r->alt_logit[a], r->max, log_sum);
                }
            } else { /* from the row: td_sample_top_ids's order wherever the NaNs stand */
                const float *lg = sc.logits + (size_t)j * sc.n_vocab;
                td_sample_top_ids(lg, sc.n_vocab, ids, top_k);
                for (int32_t a = 0; a < top_k; a++) lps[a] = (float)td_sample_logprob_at(lg, r->max, log_sum, ids[a]);
            }
        }
        done += k;
    }
    td_worker_engine_pass_take(e);
    td_kv_truncate(sc.kv, sc.seq, 0);
    td_worker_engine_pass_give(e);
    pthread_mutex_unlock(sc.score_lock);
    return rc;
}
