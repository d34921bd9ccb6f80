/* sample_norm.h — the arithmetic of log-softmax's normalizer, written once
 * for the host (score.c) and for the device (common/cuda/cuda_sample.cu),
 * which must give the same bits: exp from IEEE's basic operations alone
 * (no libm, whose exp differs between glibc and CUDA by an ulp) and the
 * order in which a row's terms are added.
 *
 * The order (td_sample_norm_sum's definition): lane t of 256 adds the terms
 * of tokens t, t + 256, t + 512, ... in that order, starting from 0; within
 * each warp of 32 lanes, lanes i and i ^ o are added for o = 16, 8, 4, 2, 1
 * (a butterfly: every lane ends with its warp's sum); then warps 0..7 are
 * added one after another. That is what a CUDA block of 256 threads does
 * with shuffles, and what the host does with an array of lanes.
 *
 * Both sides must keep a * b + c as two roundings: -fmad=false on the
 * device, -ffp-contract=off on the host (CMakeLists.txt), and each step of
 * the polynomial its own statement besides. Same bits means same values: a
 * NaN's sign and payload may differ (which operand of an add a compiler
 * puts first decides it on x86).
 *
 * Internal to the sample module and its device mirror; sample.h is the
 * contract.
 */
#ifndef TD_SAMPLE_NORM_H
#define TD_SAMPLE_NORM_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define TD_NORM_FN __host__ __device__ static inline
#else
#define TD_NORM_FN static inline
#endif

#define TD_SAMPLE_NORM_LANES 256
#define TD_SAMPLE_NORM_WARP 32

/* e^x from +, -, * and an exponent built from bits, with no branch (so a
 * host compiler may run it on a vector of lanes): within 1 ulp of glibc's
 * (test_sample measures it). 0 at -708 and below (the normalizer's terms
 * there are 2^-1021 of its largest, which is 1), +inf from 709, NaN for
 * NaN. */
TD_NORM_FN double td_sample_exp(double x) {
    const double xc = x > -708.0 ? (x < 709.0 ? x : 709.0) : -708.0; /* NaN too */
    /* xc = k ln2 + r, |r| <= ln2 / 2. k rounded to nearest by adding 1.5 *
     * 2^52, which leaves it in the low bits; ln2's high part has 21 trailing
     * zero bits, so k * hi is exact for |k| < 2^11 */
    const double shifter = 6755399441055744.0, y = xc * 1.4426950408889634;
    const double t = y + shifter, k = t - shifter;
    const double khi = k * 6.93147180369123816490e-01, klo = k * 1.90821492927058770002e-10;
    const double hi = xc - khi, r = hi - klo;
    /* e^r by Taylor to r^13: the first term left out is below 2^-57 */
    double p = 1.6059043836821613e-10;
#define TD_NORM_STEP(cf) \
    p = p * r;           \
    p = p + (cf)
    TD_NORM_STEP(2.08767569878681e-09);
    TD_NORM_STEP(2.505210838544172e-08);
    TD_NORM_STEP(2.755731922398589e-07);
    TD_NORM_STEP(2.7557319223985893e-06);
    TD_NORM_STEP(2.48015873015873e-05);
    TD_NORM_STEP(0.0001984126984126984);
    TD_NORM_STEP(0.001388888888888889);
    TD_NORM_STEP(0.008333333333333333);
    TD_NORM_STEP(0.041666666666666664);
    TD_NORM_STEP(0.16666666666666666);
    TD_NORM_STEP(0.5);
    TD_NORM_STEP(1.0);
    TD_NORM_STEP(1.0);
#undef TD_NORM_STEP
    /* 2^k for k in [-1021, 1023]: a normal double's exponent field */
    uint64_t tb, sb;
    memcpy(&tb, &t, sizeof tb);
    memcpy(&sb, &shifter, sizeof sb);
    const uint64_t bits = (tb - sb + 1023u) << 52;
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    const double e = p * scale;
    return x > -708.0 ? (x < 709.0 ? e : INFINITY) : (x != x ? x : 0.0);
}


/* The largest logit, NaN skipped (-inf when nothing else), with a zero
 * always +0 so that which of -0 and +0 came first never shows. */
TD_NORM_FN float td_sample_norm_max_of(float largest) {
    return largest == 0.0f ? 0.0f : largest;
}

/* One term of the sum: e^(l - max), in double; NaN for a NaN logit, and for
 * every logit when max is +inf or -inf (the sum is then NaN). */
TD_NORM_FN double td_sample_norm_term(float logit, float max) {
    return td_sample_exp((double)logit - (double)max);
}

#ifndef __CUDACC__
/* The host's whole rounds of lanes: lane[t] += the term of token
 * i0 + t for every i0 (a multiple of 256) with i0 + 256 <= n; returns the
 * first token left over. Written once here, compiled per ISA (score.c,
 * score_avx2.c, score_avx512.c: the same operations on wider vectors, so
 * the same bits) and picked by score.c after checking the CPU. */
static inline int32_t td_sample_norm_rounds_body(const float *logits, int32_t n, float max, double *lane) {
    int32_t i0 = 0;
    for (; i0 + TD_SAMPLE_NORM_LANES <= n; i0 += TD_SAMPLE_NORM_LANES)
        for (int32_t t = 0; t < TD_SAMPLE_NORM_LANES; t++) lane[t] += td_sample_norm_term(logits[i0 + t], max);
    return i0;
}
int32_t td_sample_norm_rounds(const float *logits, int32_t n, float max, double *lane);
/* terms[0, n) added in the normalizer's order (token i in lane i mod 256):
 * a sum a device can reproduce over any set of tokens (0 for the others). */
double td_sample_norm_sum_terms(const double *terms, int32_t n);
/* lane[256] (each already summed in its tokens' order) added as the
 * normalizer adds them: the butterfly per warp, then the warps in turn.
 * lane is overwritten. */
double td_sample_norm_sum_lanes(double *lane);
int32_t td_sample_norm_rounds_avx2(const float *logits, int32_t n, float max, double *lane);
int32_t td_sample_norm_rounds_avx512(const float *logits, int32_t n, float max, double *lane);
#endif

#endif
