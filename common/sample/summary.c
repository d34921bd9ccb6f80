/* summary.c — td_sampler_pick's choice from a few numbers a device sends
 * back instead of a row of logits (sample.h, "picking from a summary").
 *
 * td_sample_summarize is the definition the CUDA kernel (cuda_sample.cu)
 * computes in parallel, pass for pass: the same bisections over the same
 * score keys and the same certainty tests, so the two agree on whether a
 * row is decided. Why a decided summary gives td_sampler_pick's token:
 *   - the kept set: top-k, top-p and min-p each keep a best-first prefix of
 *     the scores (ties broken by id), so their intersection is "score key
 *     >= threshold" as long as no tie straddles a boundary (checked);
 *     top-p's boundary is computed with sums whose rounding differs from
 *     sample.c's, so it is trusted only 1e-8 z away from the target (both
 *     sides' rounding errors are below ~1e-10 z for any vocabulary);
 *   - the draw: the winner W scores at least the top token's noisy score,
 *     so W survives the Gumbel bound's pruning and comes within
 *     td_sample_prune_margin of the best computed score; every such token
 *     comes back, and the host's exact scores choose among them.
 */
#include <math.h>

#include "sample/sample.h"
#include "sample/sample_noise.h"

/* The certainty band around top-p's target, as a fraction of z. */
#define TOPP_CERTAIN 1e-8

bool td_sample_plan_make(const td_sample_params *p, int64_t pos, td_sample_plan *out) {
    if (!p || !out || pos < 0) return false;
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

/* sample.c's score of a logit: l / T in double, NaN as -inf (T == 1 would
 * give the same bits without dividing). */
static inline double score_of(float l, double t) {
    return isnan(l) ? -INFINITY : (double)l / t;
}

typedef struct {
    const float *logits;
    int32_t n;
    double t, smax;
} row_view;

static uint64_t count_ge(const row_view *r, uint64_t k) {
    uint64_t c = 0;
    for (int32_t x = 0; x < r->n; x++) {
        double s = score_of(r->logits[x], r->t);
        c += s != -INFINITY && td_sample_score_key(s) >= k;
    }
    return c;
}

/* Mass exp(s - s_max) of finite scores with lo <= key and key > above. */
static double mass_above(const row_view *r, uint64_t lo, uint64_t above) {
    double m = 0.0;
    for (int32_t x = 0; x < r->n; x++) {
        double s = score_of(r->logits[x], r->t);
        if (s == -INFINITY) continue;
        uint64_t k = td_sample_score_key(s);
        if (k >= lo && k > above) m += exp(s - r->smax);
    }
    return m;
}

static void summary_one(td_sample_summary *out, int32_t id, float logit) {
    out->n = 1;
    out->id[0] = id;
    out->logit[0] = logit;
}

void td_sample_summarize(const td_sample_plan *pl, const float *logits, int32_t n, td_sample_summary *out) {
    out->n = 0;
    if (pl->temperature == 0.0) {
        int32_t top = td_sample_argmax(logits, n);
        summary_one(out, top, logits[top]);
        return;
    }
    /* 1. scores: the best (lowest id on ties), the worst finite, the count */
    row_view r = {logits, n, pl->temperature, -INFINITY};
    int32_t top = 0, n_fin = 0;
    double smin = INFINITY;
    for (int32_t x = 0; x < n; x++) {
        if (logits[x] == INFINITY) return; /* +inf takes all the mass: the host's rule */
        double s = score_of(logits[x], r.t);
        if (s == -INFINITY) continue;
        n_fin++;
        if (s > r.smax) r.smax = s, top = x;
        if (s < smin) smin = s;
    }
    if (n_fin == 0) {
        summary_one(out, 0, logits[0]);
        return;
    }
    const uint64_t kmax = td_sample_score_key(r.smax);
    /* 2. top-k: the largest key that at least k scores reach */
    uint64_t keep = td_sample_score_key(smin);
    int32_t n_kept = n_fin;
    if (pl->top_k > 0 && pl->top_k < n_fin) {
        uint64_t lo = keep, hi = kmax;
        while (lo < hi) {
            uint64_t mid = lo + (hi - lo) / 2 + 1;
            if (count_ge(&r, mid) >= (uint64_t)pl->top_k) lo = mid;
            else hi = mid - 1;
        }
        if (count_ge(&r, lo) != (uint64_t)pl->top_k) return; /* a tie straddles the k-th place */
        keep = lo;
        n_kept = pl->top_k;
    }
    /* 3. top-p: the smallest key whose better scores' mass is below need */
    if (pl->top_p < 1.0 && n_kept > 1) {
        const double z = mass_above(&r, keep, 0), need = pl->top_p * z, band = TOPP_CERTAIN * z;
        uint64_t lo = keep, hi = kmax;
        while (lo < hi) {
            uint64_t mid = lo + (hi - lo) / 2;
            if (mass_above(&r, keep, mid) < need) hi = mid;
            else lo = mid + 1;
        }
        if (count_ge(&r, lo) - count_ge(&r, lo + 1) != 1) return; /* tied at the boundary */
        const double before = mass_above(&r, keep, lo);
        if (!(before < need - band)) return;
        if (lo > keep && !(mass_above(&r, keep, lo - 1) >= need + band)) return;
        keep = lo;
    }
    /* 4. min-p is a plain test per token, below. 5. the draw */
    const double smax = r.smax, lmin = pl->log_min_p;
    const double vtop = smax + td_sample_gumbel_of(td_sample_uniform_of(td_sample_noise_bits(pl->key, (uint64_t)top)));
    const double lim = vtop - td_sample_prune_margin(vtop);
    double best = vtop;
    for (int pass = 0; pass < 2; pass++) {
        const double floor_v = best - td_sample_prune_margin(best);
        for (int32_t x = 0; x < n; x++) {
            double s = score_of(logits[x], r.t);
            if (s == -INFINITY || td_sample_score_key(s) < keep || !(s - smax >= lmin)) continue;
            if (s + TD_SAMPLE_GUMBEL_MAX < lim) continue;
            uint64_t h = td_sample_noise_bits(pl->key, (uint64_t)(uint32_t)x);
            if (x != top && s + td_sample_gumbel_bound_steps(h) * TD_SAMPLE_LN2 < lim) continue;
            double v = s + td_sample_gumbel_of(td_sample_uniform_of(h));
            if (pass == 0) {
                if (v > best) best = v;
            } else if (v >= floor_v) {
                if (out->n == TD_SAMPLE_SUMMARY_MAX) {
                    out->n = 0;
                    return;
                }
                out->id[out->n] = x;
                out->logit[out->n] = logits[x];
                out->n++;
            }
        }
    }
}

int32_t td_sample_summary_pick(const td_sample_plan *pl, const td_sample_summary *s) {
    if (!pl || !s || s->n <= 0 || s->n > TD_SAMPLE_SUMMARY_MAX) return -1;
    if (s->n == 1) return s->id[0];
    int32_t best_id = -1;
    double best = 0.0;
    for (int32_t i = 0; i < s->n; i++) {
        const int32_t x = s->id[i];
        if (x < 0) return -1;
        const double v = score_of(s->logit[i], pl->temperature) +
                         td_sample_gumbel_of(td_sample_uniform_of(td_sample_noise_bits(pl->key, (uint64_t)(uint32_t)x)));
        if (best_id < 0 || v > best || (v == best && x < best_id)) best = v, best_id = x;
    }
    return best_id;
}
