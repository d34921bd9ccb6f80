/* score.c — log-softmax's normalizer in the order a device reproduces
 * (sample_norm.h), and a row's score: what log-probabilities need from it
 * (sample.h, "scoring where the logits are"). td_sample_score_row is the
 * definition the CUDA kernel (cuda_sample.cu) computes bit for bit. The
 * host adds its lanes with the widest vectors the CPU has (score_avx2.c,
 * score_avx512.c): per lane the same operations, so the same bits.
 */
#include <math.h>
#include <stdlib.h>

#include "sample/sample.h"
#include "sample/sample_norm.h"

int32_t td_sample_norm_rounds(const float *logits, int32_t n, float max, double *lane) {
    return td_sample_norm_rounds_body(logits, n, max, lane);
}

typedef int32_t (*rounds_fn)(const float *, int32_t, float, double *);

/* The widest vectors this CPU runs; every choice gives the same bits. */
static rounds_fn rounds_for_this_cpu(void) {
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw"))
        return td_sample_norm_rounds_avx512;
    if (__builtin_cpu_supports("avx2")) return td_sample_norm_rounds_avx2;
    return td_sample_norm_rounds;
}

/* The butterfly within each warp of lanes, then the warps in turn. */
static double combine_lanes(double *lane) {
    for (int32_t o = TD_SAMPLE_NORM_WARP / 2; o > 0; o >>= 1)
        for (int32_t i = 0; i < TD_SAMPLE_NORM_LANES; i++)
            if (!(i & o)) lane[i] = lane[i | o] = lane[i] + lane[i | o];
    double sum = lane[0];
    for (int32_t w = TD_SAMPLE_NORM_WARP; w < TD_SAMPLE_NORM_LANES; w += TD_SAMPLE_NORM_WARP) sum += lane[w];
    return sum;
}

/* The sum for a max already found (the row's largest non-NaN logit). */
static double norm_sum_at(const float *logits, int32_t n, float m) {
    double lane[TD_SAMPLE_NORM_LANES] = {0};
    const int32_t i0 = rounds_for_this_cpu()(logits, n, m, lane);
    for (int32_t t = 0; i0 + t < n; t++) lane[t] += td_sample_norm_term(logits[i0 + t], m);
    return combine_lanes(lane);
}

double td_sample_norm_sum(const float *logits, int32_t n, float *max) {
    float m = -INFINITY;
    for (int32_t i = 0; i < n; i++)
        if (logits[i] > m) m = logits[i]; /* NaN never is */
    m = td_sample_norm_max_of(m);
    *max = m;
    return norm_sum_at(logits, n, m);
}

double td_sample_norm_sum_lanes(double *lane) {
    return combine_lanes(lane);
}

double td_sample_norm_sum_terms(const double *terms, int32_t n) {
    double lane[TD_SAMPLE_NORM_LANES] = {0};
    for (int32_t i = 0; i < n; i++) lane[i % TD_SAMPLE_NORM_LANES] += terms[i];
    return combine_lanes(lane);
}

void td_sample_log_norm(const float *logits, int32_t n, float *max, double *log_sum) {
    *log_sum = log(td_sample_norm_sum(logits, n, max));
}

void td_sample_score_row(const float *logits, int32_t n, int32_t target, int32_t n_alt, td_sample_score *out) {
    /* the max is the argmax's logit (one read of the row fewer): the largest
     * non-NaN, or -inf where nothing is above it (the argmax is then 0) */
    out->argmax = td_sample_argmax(logits, n);
    const float top = logits[out->argmax];
    out->max = td_sample_norm_max_of(top > -INFINITY ? top : -INFINITY);
    out->sum = norm_sum_at(logits, n, out->max);
    out->logit = target >= 0 && target < n ? logits[target] : 0.0f;
    out->n_alt = 0;
    if (n_alt <= 0 || n_alt > TD_SAMPLE_ALT_MAX) return;
    int32_t finite = 0;
    for (int32_t i = 0; i < n; i++) {
        if (isnan(logits[i])) return;
        finite += logits[i] != -INFINITY;
    }
    if (finite < n_alt) return;
    td_sample_top_ids(logits, n, out->alt_id, n_alt);
    for (int32_t a = 0; a < n_alt; a++) out->alt_logit[a] = logits[out->alt_id[a]];
    out->n_alt = n_alt;
}
