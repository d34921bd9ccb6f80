/* model_drafter.c — drafters that run a transformer: a separate small draft
 * model, or the target itself with layers skipped (self-drafting).
 *
 * Each keeps its own KV cache per sequence and remembers which tokens it
 * holds; a proposal first re-syncs that cache to the history (keep the common
 * prefix, feed the rest), then drafts a chain one token per pass with the same
 * keyed sampler as the target. The layer-skip drafter chooses its skip set by
 * measuring, on the recent context, how often the skipped model's next token
 * agrees with the full model's, and re-measures when acceptance drops.
 */
#include <stdlib.h>
#include <string.h>

#include "spec/spec.h"

#define MEASURE_WINDOW 48   /* tokens of recent context used to rank skip sets */
#define MAX_CANDIDATES 8

typedef struct model_drafter {
    td_drafter base;
    const td_model *m;
    td_ctx *ctx;
    td_kv *kv;
    td_sampler *smp;
    td_sample_params base_sp;  /* the constructor's */
    td_sample_params *seq_sp;  /* (max_seqs) each request's own, set by set_params */
    int32_t max_seqs, max_len, n_vocab, n_layer;
    int32_t **fed;       /* (max_seqs, max_len) tokens held in kv */
    int32_t *scratch;    /* (max_len + TD_DRAFT_MAX) history + drafted tokens */
    float *logits;       /* (MEASURE_WINDOW, n_vocab) */
    td_row *rows;        /* (MEASURE_WINDOW) */
    uint8_t *skip;       /* (n_layer) current skip set, NULL = full model */
    /* layer-skip self-selection */
    bool auto_skip, chosen;
    float measured;      /* agreement of the chosen set when measured */
    float recent;        /* running acceptance rate of its drafts */
    int32_t last_drafted;
} model_drafter;

static int feed(model_drafter *md, int32_t seq, const int32_t *toks, int32_t n, bool want_logits, td_err *err) {
    int32_t start = td_kv_seq_len(md->kv, seq);
    int32_t max_rows = td_ctx_max_rows(md->ctx);
    for (int32_t done = 0; done < n;) {
        int32_t k = n - done < max_rows ? n - done : max_rows;
        for (int32_t i = 0; i < k; i++)
            md->rows[i] = (td_row){seq, start + done + i, toks[done + i], want_logits && done + i == n - 1, false, 0};
        int rc = td_model_forward_skip(md->ctx, md->kv, md->rows, k, md->logits, md->skip, err);
        if (rc) return rc;
        memcpy(md->fed[seq] + start + done, toks + done, (size_t)k * sizeof(int32_t));
        done += k;
    }
    return TD_OK;
}

static int32_t argmax(const float *x, int32_t n) {
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++) if (x[i] > x[b]) b = i;
    return b;
}

/* Agreement of next-token argmax between the skipped and the full model on
 * the last `w` tokens of history, in a scratch sequence (the last one). */
static int measure(model_drafter *md, const int32_t *toks, int32_t w, const uint8_t *skip, const int32_t *ref,
                   int32_t *out_argmax, int *agree) {
    int32_t seq = md->max_seqs; /* reserved scratch slot */
    td_kv_truncate(md->kv, seq, 0);
    for (int32_t i = 0; i < w; i++) md->rows[i] = (td_row){seq, i, toks[i], true, false, 0};
    /* a failed measurement keeps the current skip set; the reason stays in
     * base.err for whoever looks */
    int rc = td_model_forward_skip(md->ctx, md->kv, md->rows, w, md->logits, skip, &md->base.err);
    if (rc) return rc;
    *agree = 0;
    for (int32_t i = 0; i < w; i++) {
        int32_t a = argmax(md->logits + (size_t)i * md->n_vocab, md->n_vocab);
        if (out_argmax) out_argmax[i] = a;
        if (ref) *agree += a == ref[i];
    }
    td_kv_truncate(md->kv, seq, 0);
    return TD_OK;
}

/* Candidate skip sets: the first two and last two layers always run (they
 * matter most for plain models); the middle is thinned at several rates. */
static int32_t make_candidates(int32_t L, uint8_t cand[][128]) {
    int32_t n = 0;
    if (L < 6 || L > 128) return 0;
    static const int every[3] = {2, 3, 4};
    for (int e = 0; e < 3; e++, n++) {
        memset(cand[n], 0, (size_t)L);
        for (int32_t l = 2; l < L - 2; l++) cand[n][l] = (l % every[e]) == 1;
    }
    static const int frac[3] = {4, 3, 2}; /* contiguous middle block of L/4, L/3, L/2 */
    for (int f = 0; f < 3; f++, n++) {
        memset(cand[n], 0, (size_t)L);
        int32_t len = L / frac[f], lo = (L - len) / 2;
        for (int32_t l = lo; l < lo + len; l++) cand[n][l] = 1;
    }
    return n;
}

static void choose_skip(model_drafter *md, const int32_t *hist, size_t n) {
    int32_t w = (int32_t)(n < MEASURE_WINDOW ? n : MEASURE_WINDOW);
    if (w < 8) return; /* too little context to judge: keep the full model */
    const int32_t *toks = hist + n - (size_t)w;
    int32_t ref[MEASURE_WINDOW];
    int dummy;
    if (measure(md, toks, w, NULL, NULL, ref, &dummy)) return;
    uint8_t cand[MAX_CANDIDATES][128];
    int32_t nc = make_candidates(md->n_layer, cand);
    double best_gain = 0;
    int best = -1;
    for (int32_t c = 0; c < nc; c++) {
        int agree;
        if (measure(md, toks, w, cand[c], ref, NULL, &agree)) return;
        int32_t skipped = 0;
        for (int32_t l = 0; l < md->n_layer; l++) skipped += cand[c][l];
        /* Expected tokens per step with per-token acceptance a and 4 drafts,
         * over the step's cost in target passes. */
        double a = (double)agree / w, cost = 1.0 + 4.0 * (1.0 - (double)skipped / md->n_layer);
        double acc = a >= 1.0 ? 4.0 : a * (1 - a * a * a * a) / (1 - a);
        double gain = (1.0 + acc) / cost;
        if (gain > best_gain) { best_gain = gain; best = c; md->measured = (float)a; }
    }
    md->chosen = true;
    if (best >= 0 && best_gain > 1.0) {
        memcpy(md->skip, cand[best], (size_t)md->n_layer);
    } else {
        md->measured = 0; /* nothing pays: propose nothing */
    }
    md->recent = md->measured;
    /* every sequence's cache was built with the old set */
    for (int32_t s = 0; s < md->max_seqs; s++) td_kv_truncate(md->kv, s, 0);
}

static int md_propose(td_drafter *d, int32_t seq, const int32_t *hist, size_t n, int32_t max_nodes, td_draft *out) {
    model_drafter *md = (model_drafter *)d;
    out->n = 0;
    md->last_drafted = 0;
    if (seq < 0 || seq >= md->max_seqs)
        return td_err_set(&md->base.err, TD_E_ARG, "sequence %d outside 0..%d", seq, md->max_seqs - 1);
    if (n == 0 || max_nodes <= 0) return TD_OK;
    if (max_nodes > TD_DRAFT_MAX) max_nodes = TD_DRAFT_MAX;
    if (md->auto_skip && (!md->chosen || md->recent < 0.5f * md->measured)) choose_skip(md, hist, n);
    if (md->auto_skip && md->measured <= 0) return TD_OK;
    if ((int64_t)n + max_nodes > md->max_len) max_nodes = md->max_len - (int32_t)n;
    if (max_nodes <= 0) return TD_OK;

    /* re-sync: keep the common prefix, feed the rest of the history */
    int32_t held = td_kv_seq_len(md->kv, seq), cp = 0;
    while (cp < held && (size_t)cp < n && md->fed[seq][cp] == hist[cp]) cp++;
    if ((size_t)cp == n) cp--; /* the last token must be fed again for its logits */
    td_kv_truncate(md->kv, seq, cp);
    td_err *err = &md->base.err; /* kept for the caller, who names us */
    int rc = feed(md, seq, hist + cp, (int32_t)n - cp, true, err);
    if (rc) return rc;

    /* validated when set: cannot fail */
    if ((rc = td_sampler_set_params(md->smp, &md->seq_sp[seq], err))) return rc;
    memcpy(md->scratch, hist, n * sizeof(int32_t));
    for (int32_t i = 0; i < max_nodes; i++) {
        int32_t t = td_sampler_pick(md->smp, md->logits, (int64_t)n + i, md->scratch, n + (size_t)i);
        if (t < 0) return td_err_set(err, t, "sampler refused its arguments");
        md->scratch[n + (size_t)i] = t;
        out->token[i] = t;
        out->parent[i] = i - 1;
        out->prob[i] = 0;
        out->n = i + 1;
        if (i + 1 < max_nodes && (rc = feed(md, seq, &t, 1, true, err))) return rc;
    }
    md->last_drafted = out->n;
    return TD_OK;
}

static void md_accept(td_drafter *d, int32_t seq, const int32_t *hist, size_t n, size_t n_new) {
    model_drafter *md = (model_drafter *)d;
    (void)seq; (void)hist; (void)n;
    if (md->last_drafted > 0) {
        float rate = (float)(n_new > 0 ? n_new - 1 : 0) / (float)md->last_drafted;
        md->recent = 0.8f * md->recent + 0.2f * (rate > 1 ? 1 : rate);
    }
}

static void md_reset(td_drafter *d, int32_t seq) {
    model_drafter *md = (model_drafter *)d;
    if (seq < 0 || seq >= md->max_seqs) return;
    td_kv_truncate(md->kv, seq, 0);
    md->seq_sp[seq] = md->base_sp;
}

/* Invalid parameters keep the previous ones (the session validated them). */
static void md_set_params(td_drafter *d, int32_t seq, const td_sample_params *sp) {
    model_drafter *md = (model_drafter *)d;
    td_err ignored = {0};
    if (seq >= 0 && seq < md->max_seqs && sp && td_sample_validate(sp, &ignored) == TD_OK) md->seq_sp[seq] = *sp;
}

static void md_destroy(td_drafter *d) {
    model_drafter *md = (model_drafter *)d;
    if (!md) return;
    if (md->fed)
        for (int32_t s = 0; s < md->max_seqs + 1; s++) free(md->fed[s]);
    free(md->fed);
    free(md->scratch);
    free(md->logits);
    free(md->rows);
    free(md->skip);
    free(md->seq_sp);
    td_sampler_destroy(md->smp);
    td_ctx_destroy(md->ctx);
    td_kv_destroy(md->kv);
    free(md);
}

static const td_drafter_ops model_ops = {"model", md_propose, md_accept, NULL, md_reset, md_destroy,
                                         md_set_params};
static const td_drafter_ops layerskip_ops = {"layerskip", md_propose, md_accept, NULL, md_reset, md_destroy,
                                             md_set_params};

static model_drafter *create(const td_model *m, td_pool *pool, const td_sample_params *sp, int32_t max_seqs,
                             int32_t max_len, td_err *err) {
    if (!m || !sp || max_seqs < 1 || max_len < 2) {
        td_err_set(err, TD_E_ARG, "model drafter: invalid arguments");
        return NULL;
    }
    const td_hparams *hp = td_model_hparams(m);
    model_drafter *md = calloc(1, sizeof *md);
    if (!md) goto nomem;
    md->m = m;
    md->max_seqs = max_seqs;
    md->max_len = max_len;
    md->n_vocab = hp->n_vocab;
    md->n_layer = hp->n_layer;
    /* one extra sequence slot is the measuring scratch */
    td_err why = {0};
    if (!(md->kv = td_kv_create(m, max_seqs + 1, max_len, &why)) ||
        !(md->ctx = td_ctx_create(m, MEASURE_WINDOW, pool, &why)) ||
        !(md->smp = td_sampler_create(sp, hp->n_vocab, &why))) {
        md_destroy(&md->base);
        td_err_set(err, why.code, "model drafter: %s", why.msg); /* keep the part's reason */
        return NULL;
    }
    md->fed = calloc((size_t)max_seqs + 1, sizeof *md->fed);
    md->scratch = malloc(((size_t)max_len + TD_DRAFT_MAX) * sizeof(int32_t));
    md->logits = malloc((size_t)MEASURE_WINDOW * hp->n_vocab * sizeof(float));
    md->rows = malloc(MEASURE_WINDOW * sizeof *md->rows);
    md->seq_sp = malloc((size_t)max_seqs * sizeof *md->seq_sp);
    if (!md->kv || !md->ctx || !md->smp || !md->fed || !md->scratch || !md->logits || !md->rows || !md->seq_sp)
        goto nomem;
    md->base_sp = *sp;
    for (int32_t s = 0; s < max_seqs; s++) md->seq_sp[s] = *sp;
    for (int32_t s = 0; s < max_seqs + 1; s++)
        if (!(md->fed[s] = malloc((size_t)max_len * sizeof(int32_t)))) goto nomem;
    return md;
nomem:
    md_destroy(md ? &md->base : NULL);
    td_err_set(err, TD_E_NOMEM, "model drafter: out of memory");
    return NULL;
}

td_drafter *td_spec_model_drafter_create(const td_model *draft, td_pool *pool, const td_sample_params *sp,
                                         int32_t max_seqs, int32_t max_len, td_err *err) {
    model_drafter *md = create(draft, pool, sp, max_seqs, max_len, err);
    if (!md) return NULL;
    md->base.ops = &model_ops;
    return &md->base;
}

td_drafter *td_spec_layerskip_create(const td_model *target, td_pool *pool, const td_sample_params *sp,
                                     int32_t max_seqs, int32_t max_len, const uint8_t *skip, td_err *err) {
    model_drafter *md = create(target, pool, sp, max_seqs, max_len, err);
    if (!md) return NULL;
    md->base.ops = &layerskip_ops;
    md->skip = calloc((size_t)md->n_layer, 1);
    if (!md->skip) {
        md_destroy(&md->base);
        td_err_set(err, TD_E_NOMEM, "layer-skip drafter: out of memory");
        return NULL;
    }
    if (skip) memcpy(md->skip, skip, (size_t)md->n_layer);
    else md->auto_skip = true;
    return &md->base;
}
