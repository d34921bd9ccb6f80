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
#include "sample/sample_norm.h"

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

bool td_sample_plan_make_reject(const td_sample_params *p, int64_t pos, int32_t x, double u, uint64_t resample_seed,
                                bool keep_x, td_sample_plan *out) {
    if (x < -1 || !td_sample_plan_make(p, pos, out)) return false;
    out->key = td_sample_noise_key(resample_seed, pos);
    out->reject = 1;
    out->reject_x = x;
    out->reject_skip = keep_x ? -1 : x;
    out->reject_u = u;
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

/* Appends the kept tokens among cand (NULL: every finite token of the row),
 * skip left out, that come within the margin of the best noisy score; false
 * when more than fit. min-p is measured from top; the Gumbel bound from
 * ref, a kept token other than skip, which therefore always comes back. */
static bool draw(const td_sample_plan *pl, const float *logits, int32_t n, const uint64_t *cand, int32_t n_cand,
                 int32_t top, int32_t ref, int32_t skip, td_sample_summary *out) {
    const double t = pl->temperature, smax = score_of(logits[top], t);
    const double vref = score_of(logits[ref], t) +
                        td_sample_gumbel_of(td_sample_uniform_of(td_sample_noise_bits(pl->key, (uint64_t)ref)));
    const double lim = vref - td_sample_prune_margin(vref);
    const int32_t count = cand ? n_cand : n;
    double best = vref;
    out->n = 0;
    for (int pass = 0; pass < 2; pass++) {
        const double floor_v = best - td_sample_prune_margin(best);
        for (int32_t i = 0; i < count; i++) {
            const int32_t x = cand ? id_of_rank(cand[i]) : i;
            if (x == skip || !finite_logit(logits[x])) continue;
            const double s = score_of(logits[x], t);
            if (!(s - smax >= pl->log_min_p) || s + TD_SAMPLE_GUMBEL_MAX < lim) continue;
            const uint64_t h = td_sample_noise_bits(pl->key, (uint64_t)(uint32_t)x);
            if (x != ref && s + td_sample_gumbel_bound_steps(h) * TD_SAMPLE_LN2 < lim) continue;
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

/* Whether token x is in the kept set: finite, at least the prefix's last
 * rank key (floor_rank 0: no prefix), and past min-p. */
static bool in_kept(const td_sample_plan *pl, const float *logits, int32_t x, double smax, uint64_t floor_rank) {
    const float l = logits[x];
    if (!finite_logit(l)) return false;
    if (floor_rank && td_sample_rank_key(l, x) < floor_rank) return false;
    return score_of(l, pl->temperature) - smax >= pl->log_min_p;
}

/* Rejection over the kept set (cand[0, keep), or NULL: every finite token,
 * both before min-p): x's test with td_sampler_reject's double, else the
 * residual draw. */
static void reject(const td_sample_plan *pl, const float *logits, int32_t n, const uint64_t *cand, int32_t keep,
                   int32_t top, td_sample_summary *out) {
    const double t = pl->temperature, smax = score_of(logits[top], t);
    const uint64_t floor_rank = cand ? cand[keep - 1] : 0;
    const int32_t x = pl->reject_x, skip = pl->reject_skip;
    if (x >= 0 && x < n && in_kept(pl, logits, x, smax, floor_rank)) {
        double lane[TD_SAMPLE_NORM_LANES] = {0}; /* tokens outside the set add nothing */
        for (int32_t v = 0; v < n; v++)
            if (in_kept(pl, logits, v, smax, floor_rank))
                lane[v % TD_SAMPLE_NORM_LANES] += td_sample_exp(score_of(logits[v], t) - smax);
        const double z = td_sample_norm_sum_lanes(lane);
        if (pl->reject_u < td_sample_exp(score_of(logits[x], t) - smax) / z) {
            summary_one(out, x, logits[x]);
            out->accepted = 1;
            return;
        }
    }
    /* the residual's bound from the best kept token other than skip: the
     * first of the prefix, or the row's top, or its best other token */
    int32_t ref = -1;
    if (cand) {
        ref = id_of_rank(cand[0]) != skip ? id_of_rank(cand[0]) : keep > 1 ? id_of_rank(cand[1]) : -1;
    } else if (top != skip) {
        ref = top;
    } else {
        for (int32_t v = 0; v < n; v++)
            if (v != skip && finite_logit(logits[v]) && (ref < 0 || logits[v] > logits[ref])) ref = v;
    }
    if (ref < 0 || !in_kept(pl, logits, ref, smax, floor_rank)) { /* the set was {skip}: the top, as the sampler */
        summary_one(out, top, logits[top]);
        return;
    }
    draw(pl, logits, n, cand, keep, top, ref, skip, out);
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
    out->accepted = 0;
    const int32_t top = td_sample_argmax(logits, n); /* lowest id on ties, 0 when nothing is finite */
    const bool rej = pl->reject != 0;
    if (pl->temperature == 0.0) {
        summary_one(out, top, logits[top]);
        out->accepted = rej && pl->reject_x == top; /* the point mass at the top */
        return TD_OK;
    }
    int32_t n_fin = 0;
    for (int32_t x = 0; x < n; x++) {
        if (logits[x] == INFINITY) return TD_OK; /* +inf takes all the mass: the host's rule */
        n_fin += finite_logit(logits[x]);
    }
    if (n_fin == 0) {
        summary_one(out, 0, logits[0]);
        out->accepted = rej && pl->reject_x == 0 && pl->reject_u < 1.0; /* p(0) = 1 */
        return TD_OK;
    }
    const bool use_k = pl->top_k > 0 && pl->top_k < n_fin;
    if (!use_k && !(pl->top_p < 1.0 && n_fin > 1)) { /* no prefix to find: min-p is a test per token */
        if (rej) reject(pl, logits, n, NULL, 0, top, out);
        else draw(pl, logits, n, NULL, 0, top, top, -1, out);
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
    if (rej) reject(pl, logits, n, cand, keep, top, out);
    else draw(pl, logits, n, cand, keep, top, top, -1, out);
    free(cand), free(e);
    return TD_OK;
}

int td_sample_summarize(const td_sample_plan *pl, const float *logits, int32_t n, td_sample_summary *out) {
    top_ids(pl, logits, n, out);
    return summarize_pick(pl, logits, n, out);
}

/* The best noisy score among the summary's tokens, by the plan's key. */
static int32_t pick_of(const td_sample_plan *pl, const td_sample_summary *s) {
    if (s->n <= 0 || s->n > TD_SAMPLE_SUMMARY_MAX) return -1;
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

int32_t td_sample_summary_pick(const td_sample_plan *pl, const td_sample_summary *s) {
    if (!pl || !s || pl->reject) return -1;
    return pick_of(pl, s);
}

int32_t td_sample_summary_reject(const td_sample_plan *pl, const td_sample_summary *s, bool *accepted) {
    if (!accepted) return -1;
    *accepted = false;
    if (!pl || !s || !pl->reject) return -1;
    if (s->accepted) {
        if (s->n != 1 || s->id[0] != pl->reject_x || pl->reject_x < 0) return -1;
        *accepted = true;
        return s->id[0];
    }
    return pick_of(pl, s); /* the residual draw: the plan's key is the resample key */
}
