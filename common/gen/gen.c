/* gen.c — plain decoding: prefill the prompt in chunks, then sample one token
 * per forward pass until max_tokens, an end-of-generation token, a stop string
 * or the context limit.
 */
#include <stdlib.h>
#include <string.h>

#include "gen/gen.h"

const char *td_gen_stop_name(td_stop_reason r) {
    switch (r) {
    case TD_STOP_LENGTH: return "length";
    case TD_STOP_EOG: return "eog";
    case TD_STOP_STRING: return "stop-string";
    case TD_STOP_CALLER: return "caller";
    case TD_STOP_CONTEXT: return "context";
    }
    return "unknown";
}

int td_gen_prefill(td_ctx *ctx, td_kv *kv, int32_t seq, int32_t start_pos, const int32_t *ids, size_t n,
                   int32_t chunk, float *last_logits, td_err *err) {
    if (chunk < 1 || chunk > td_ctx_max_rows(ctx)) chunk = td_ctx_max_rows(ctx);
    td_row *rows = malloc((size_t)chunk * sizeof *rows);
    if (!rows) return td_err_set(err, TD_E_NOMEM, "out of memory");
    int rc = TD_OK;
    for (size_t done = 0; done < n;) {
        int32_t k = (int32_t)((n - done) < (size_t)chunk ? (n - done) : (size_t)chunk);
        for (int32_t i = 0; i < k; i++)
            rows[i] = td_row_linear(seq, start_pos + (int32_t)done + i, ids[done + (size_t)i],
                               last_logits && done + (size_t)i + 1 == n);
        rc = td_model_forward(ctx, kv, rows, k, last_logits, err);
        if (rc) break;
        done += (size_t)k;
    }
    free(rows);
    return rc;
}

int td_gen_run(const td_model *m, const td_tok *tok, td_ctx *ctx, td_kv *kv, int32_t seq,
               const int32_t *prompt, size_t n_prompt, const td_gen_params *p,
               td_gen_emit_fn emit, void *user, int32_t *out_tokens, td_gen_stats *stats, td_err *err) {
    const td_hparams *hp = td_model_hparams(m);
    memset(stats, 0, sizeof *stats);
    if (n_prompt == 0) return td_err_set(err, TD_E_ARG, "empty prompt");
    if (td_kv_seq_len(kv, seq) != 0) return td_err_set(err, TD_E_ARG, "sequence %d is not empty", seq);
    if (n_prompt >= (size_t)td_kv_max_len(kv))
        return td_err_set(err, TD_E_RANGE, "prompt of %zu tokens does not fit the context of %d", n_prompt,
                          td_kv_max_len(kv));
    int rc = td_sample_validate(&p->sample, err);
    if (rc) return rc;

    size_t cap = n_prompt + (size_t)(p->max_tokens > 0 ? p->max_tokens : 0) + 1;
    int32_t *hist = malloc(cap * sizeof *hist);
    float *logits = malloc((size_t)hp->n_vocab * sizeof *logits);
    td_err why = {0};
    td_sampler *smp = td_sampler_create(&p->sample, hp->n_vocab, &why);
    td_textout *out = td_textout_create(p->stop, p->n_stop, emit, user, &why);
    if (!smp || !out) { /* their own reason: bad stop strings, or memory */
        rc = td_err_set(err, why.code, "%s", why.msg);
        goto done;
    }
    if (!hist || !logits) {
        rc = td_err_set(err, TD_E_NOMEM, "out of memory");
        goto done;
    }
    memcpy(hist, prompt, n_prompt * sizeof *hist);
    size_t n_hist = n_prompt;

    double t0 = td_now_sec();
    rc = td_gen_prefill(ctx, kv, seq, 0, prompt, n_prompt, 0, logits, err);
    if (rc) goto done;
    double t1 = td_now_sec();
    stats->n_prompt = (int32_t)n_prompt;
    stats->n_prefilled = (int32_t)n_prompt;
    stats->prefill_sec = t1 - t0;
    stats->stop = TD_STOP_LENGTH;

    /* On a GPU the pick is made there: greedy as the argmax, sampling
     * without a repetition penalty from a summary of the row (sample.h), so
     * a few bytes cross to the host instead of a row of logits (the first
     * token comes from the prompt's logits). */
    td_sample_plan plan;
    const bool device_picks = td_ctx_device(ctx).kind == TD_DEVICE_CUDA &&
                              (td_sample_is_plain_greedy(&p->sample) || td_sample_plan_make(&p->sample, 0, &plan));
    const bool planned = device_picks && !td_sample_is_plain_greedy(&p->sample);
    int32_t picked = -1;
    bool on_device = false; /* the last pass's logits stayed on the device */
    for (int32_t i = 0; i < p->max_tokens; i++) {
        int32_t pos = (int32_t)n_hist;
        if (picked < 0 && on_device) { /* an undecided summary: the row itself */
            rc = td_model_pass_logits(ctx, 0, logits, err);
            if (rc) goto done;
        }
        int32_t tk = picked >= 0 ? picked : td_sampler_pick(smp, logits, pos, hist, n_hist);
        if (tk < 0) { rc = td_err_set(err, tk, "sampler refused its arguments"); goto done; }
        hist[n_hist++] = tk;
        if (out_tokens) out_tokens[i] = tk;
        stats->n_generated++;
        if (!p->ignore_eos && td_tok_is_eog(tok, tk)) {
            stats->stop = TD_STOP_EOG;
            break;
        }
        int pr = td_textout_push_token(out, tok, tk);
        if (pr == TD_TEXTOUT_STOP_STRING) { stats->stop = TD_STOP_STRING; break; }
        if (pr == TD_TEXTOUT_STOP_CALLER) { stats->stop = TD_STOP_CALLER; break; }
        if (pr < 0) {
            rc = td_err_set(err, pr, "out of memory streaming token %d",
                            tk);
            goto done;
        }
        if (i + 1 == p->max_tokens) break;
        if (pos + 1 >= td_kv_max_len(kv)) { stats->stop = TD_STOP_CONTEXT; break; }
        td_row row = td_row_linear(seq, pos, tk, true);
        if (planned) td_sample_plan_make(&p->sample, pos + 1, &plan); /* the pick after pos */
        rc = device_picks ? td_model_forward_picks(ctx, kv, &row, 1, planned ? &plan : NULL, NULL, &picked, NULL, err)
                          : td_model_forward(ctx, kv, &row, 1, logits, err);
        on_device = device_picks;
        if (rc) goto done;
        stats->n_forward++;
    }
    if (stats->stop != TD_STOP_STRING && stats->stop != TD_STOP_CALLER) td_textout_flush(out);
    stats->decode_sec = td_now_sec() - t1;
done:
    td_textout_destroy(out);
    td_sampler_destroy(smp);
    free(logits);
    free(hist);
    return rc;
}
