/* summary.c — td_sampler_pick's choice from a few numbers a device sends
 * back instead of a row of logits (sample.h, "picking from a summary").
 *
 * td_sample_summarize is the definition the CUDA kernel (cuda_sample.cu)
 * computes; the kernel holds only the best part of the row sorted, and
 * leaves a row undecided where that part is too short. Why a decided
 * summary gives td_sampler_pick's token:
 *   - the kept set: top-k, top-p and min-p each keep a best-first prefix of
 *     the candidates in sample.c's order (score, then lower id), so with
 *     the candidates sorted that way they are counts; top-p's count comes
 *     from sums whose rounding differs from sample.c's, so it is trusted
 *     only where the mass before its last token and the mass before the
 *     next token are 1e-8 z away from the target (both sides sum n terms
 *     in some order, off by at most ~n 2^-53 z: 1.7e-11 z for 152k tokens,
 *     so the band holds for vocabularies to some millions of tokens);
 *   - the draw: the winner W scores at least the top token's noisy score,
 *     so W survives the Gumbel bound's pruning and comes within
 *     td_sample_prune_margin of the best computed score; every such token
 *     comes back, and the host's exact scores choose among them.
 */
#include <math.h>
#include <stdlib.h>

#include "sample/sample.h"
#include "sample/sample_noise.h"

bool td_sample_plan_make(const td_sample_params *p, int64_t pos, td_sample_plan *out) {
    if (!p || !out || pos < 0 || td_sample_validate(p, NULL) != TD_OK) return false;
    if (p->repeat_penalty != 1.0f && p->repeat_last_n > 0) return false; /* reads the history */
    *out = (td_sample_plan){
        .temperature = (double)p->temperature,
        .top_p = p->top_p < 1.0f ? (double)p->top_p : 1.0,
        .log_min_p = p->min_p > 0.0f ? log((double)p->min_p) : -INFINITY,
        .key = td_sample_noise_key(p->seed, pos),
        .top_k = p->top_k,
    };
    return true;
}

/* sample.c's score of a finite logit: l / T in double (T == 1 would give
 * the same bits without dividing). */
static inline double score_of(float l, double t) {
    return (double)l / t;
}

static inline bool finite_logit(float l) {
    return !isnan(l) && l != -INFINITY; /* +inf never reaches here */
}

/* Best first: sample.c's better() on the scores, through rank keys. */
static int by_rank_desc(const void *a, const void *b) {
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

static int32_t id_of_rank(uint64_t r) {
    return (int32_t)(0xffffffffu - (uint32_t)r);
}

/* Appends the kept tokens among cand (NULL: every finite token of the row)
 * that come within the margin of the best noisy score; false when more than
 * fit. */
static bool draw(const td_sample_plan *pl, const float *logits, int32_t n, const uint64_t *cand, int32_t n_cand,
                 int32_t top, td_sample_summary *out) {
    const double t = pl->temperature, smax = score_of(logits[top], t);
    const double vtop = smax + td_sample_gumbel_of(td_sample_uniform_of(td_sample_noise_bits(pl->key, (uint64_t)top)));
    const double lim = vtop - td_sample_prune_margin(vtop);
    const int32_t count = cand ? n_cand : n;
    double best = vtop;
    out->n = 0;
    for (int pass = 0; pass < 2; pass++) {
        const double floor_v = best - td_sample_prune_margin(best);
        for (int32_t i = 0; i < count; i++) {
            const int32_t x = cand ? id_of_rank(cand[i]) : i;
            if (!finite_logit(logits[x])) continue;
            const double s = score_of(logits[x], t);
            if (!(s - smax >= pl->log_min_p) || s + TD_SAMPLE_GUMBEL_MAX < lim) continue;
            const uint64_t h = td_sample_noise_bits(pl->key, (uint64_t)(uint32_t)x);
            if (x != top && s + td_sample_gumbel_bound_steps(h) * TD_SAMPLE_LN2 < lim) continue;
            const double v = s + td_sample_gumbel_of(td_sample_uniform_of(h));
            if (pass == 0) {
                if (v > best) best = v;
            } else if (v >= floor_v) {
                if (out->n == TD_SAMPLE_SUMMARY_MAX) {
                    out->n = 0;
                    return false;
                }
                out->id[out->n] = x;
                out->logit[out->n] = logits[x];
                out->n++;
            }
        }
    }
    return true;
}

static void summary_one(td_sample_summary *out, int32_t id, float logit) {
    out->n = 1;
    out->id[0] = id;
    out->logit[0] = logit;
}

/* The observations: td_sample_top_ids, where the device can give them. */
static void top_ids(const td_sample_plan *pl, const float *logits, int32_t n, td_sample_summary *out) {
    out->n_top = 0;
    if (pl->n_top <= 0 || pl->n_top > TD_SAMPLE_TOP_MAX) return;
    int32_t above = 0;
    for (int32_t x = 0; x < n; x++) {
        if (isnan(logits[x])) return;
        above += logits[x] != -INFINITY;
    }
    if (above < pl->n_top) return;
    td_sample_top_ids(logits, n, out->top, pl->n_top);
    out->n_top = pl->n_top;
}

/* Steps 1-5 of sample.h's definition: the pick. */
static int summarize_pick(const td_sample_plan *pl, const float *logits, int32_t n, td_sample_summary *out) {
    out->n = 0;
    const int32_t top = td_sample_argmax(logits, n); /* lowest id on ties, 0 when nothing is finite */
    if (pl->temperature == 0.0) {
        summary_one(out, top, logits[top]);
        return TD_OK;
    }
    int32_t n_fin = 0;
    for (int32_t x = 0; x < n; x++) {
        if (logits[x] == INFINITY) return TD_OK; /* +inf takes all the mass: the host's rule */
        n_fin += finite_logit(logits[x]);
    }
    if (n_fin == 0) {
        summary_one(out, 0, logits[0]);
        return TD_OK;
    }
    const bool use_k = pl->top_k > 0 && pl->top_k < n_fin;
    if (!use_k && !(pl->top_p < 1.0 && n_fin > 1)) { /* no prefix to find: min-p is a test per token */
        draw(pl, logits, n, NULL, 0, top, out);
        return TD_OK;
    }
    /* the candidates best first, as sample.c ranks them */
    uint64_t *cand = malloc((size_t)n_fin * sizeof *cand);
    double *e = malloc((size_t)n_fin * sizeof *e);
    if (!cand || !e) {
        free(cand), free(e);
        return TD_E_NOMEM;
    }
    for (int32_t x = 0, i = 0; x < n; x++)
        if (finite_logit(logits[x])) cand[i++] = td_sample_rank_key(logits[x], x);
    qsort(cand, (size_t)n_fin, sizeof *cand, by_rank_desc);
    int32_t keep = use_k ? pl->top_k : n_fin;
    if (pl->top_p < 1.0 && keep > 1) {
        const double t = pl->temperature, smax = score_of(logits[top], t);
        double z = 0.0;
        for (int32_t i = 0; i < keep; i++) z += e[i] = exp(score_of(logits[id_of_rank(cand[i])], t) - smax);
        const double need = pl->top_p * z, band = TD_SAMPLE_TOPP_CERTAIN * z;
        int32_t m = 0;
        double cum = 0.0, before_last = 0.0;
        while (m < keep && cum < need) before_last = cum, cum += e[m++];
        /* the last kept token clearly in, the next one clearly out */
        if (!(before_last < need - band) || (m < keep && !(cum >= need + band))) {
            free(cand), free(e);
            return TD_OK;
        }
        keep = m;
    }
    draw(pl, logits, n, cand, keep, top, out);
    free(cand), free(e);
    return TD_OK;
}

int td_sample_summarize(const td_sample_plan *pl, const float *logits, int32_t n, td_sample_summary *out) {
    top_ids(pl, logits, n, out);
    return summarize_pick(pl, logits, n, out);
}

int32_t td_sample_summary_pick(const td_sample_plan *pl, const td_sample_summary *s) {
    if (!pl || !s || s->n <= 0 || s->n > TD_SAMPLE_SUMMARY_MAX) return -1;
    if (s->n == 1) return s->id[0] >= 0 ? s->id[0] : -1;
    int32_t best_id = -1;
    double best = 0.0;
    for (int32_t i = 0; i < s->n; i++) {
        const int32_t x = s->id[i];
        if (x < 0 || !finite_logit(s->logit[i])) return -1;
        const double v = score_of(s->logit[i], pl->temperature) +
                         td_sample_gumbel_of(td_sample_uniform_of(td_sample_noise_bits(pl->key, (uint64_t)(uint32_t)x)));
        if (best_id < 0 || v > best || (v == best && x < best_id)) best = v, best_id = x;
    }
    return best_id;
}
