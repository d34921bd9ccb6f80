/* spec_run.c — speculative generation of a fixed batch, run to the end: a
 * session (spec_session.c) over the in-process target
 * (spec_target_local.c). What `tandem generate --draft` and the benchmarks
 * run; the service runs the same session over a remote verifier.
 */
#include <stdlib.h>

#include "spec/spec.h"

td_spec_params td_spec_defaults(void) {
    return (td_spec_params){.draft_max = 8, .draft_min = 1, .adaptive = true, .mode = TD_SPEC_EXACT};
}

int td_spec_run(const td_model *m, const td_tok *tok, td_ctx *ctx, td_kv *kv, td_spec_request *reqs,
                int32_t n_reqs, td_drafter *const *drafters, int32_t n_drafters, const td_spec_params *sp,
                td_err *err) {
    if (n_reqs < 1) return td_err_set(err, TD_E_ARG, "no requests");
    if (td_ctx_numerics(ctx) == TD_NUMERICS_LLAMACPP)
        return td_err_set(err, TD_E_ARG, "speculation needs batch-invariant numerics (reference or fast), not llamacpp");
    if (td_ctx_max_rows(ctx) < n_reqs)
        return td_err_set(err, TD_E_ARG, "%d requests need at least as many batch rows (have %d)", n_reqs,
                          td_ctx_max_rows(ctx));
    if (td_kv_max_seqs(kv) < n_reqs)
        return td_err_set(err, TD_E_ARG, "%d requests need as many cache sequences (have %d)", n_reqs,
                          td_kv_max_seqs(kv));
    td_target *target = td_spec_target_local_create(m, ctx, kv, err);
    if (!target) return err->code;
    td_spec_session *s = td_spec_session_create(tok, td_model_hparams(m)->n_vocab, target, drafters, n_drafters,
                                                sp, n_reqs, td_ctx_max_rows(ctx), td_kv_max_len(kv), err);
    if (!s) {
        td_target_destroy(target);
        return err->code;
    }
    int rc = TD_OK;
    double t0 = td_now_sec();
    for (int32_t i = 0; i < n_reqs && rc == TD_OK; i++) rc = td_spec_session_add(s, i, &reqs[i], err);
    double t1 = td_now_sec();
    while (rc == TD_OK) {
        int left = td_spec_session_step(s, err);
        if (left < 0) rc = left;
        if (left <= 0) break;
    }
    double t2 = td_now_sec();
    /* the batch's figures, as callers of a batch run read them */
    for (int32_t i = 0; i < n_reqs && rc == TD_OK; i++) {
        reqs[i].stats.prefill_sec = t1 - t0;
        reqs[i].stats.decode_sec = t2 - t1;
    }
    td_spec_session_destroy(s);
    td_target_destroy(target);
    return rc;
}
