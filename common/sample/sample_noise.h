/* sample_noise.h — the keyed noise's arithmetic and the total order on
 * scores, written once for the host (sample.c) and for the CUDA kernel that
 * summarizes a row on the device (common/cuda/cuda_sample.cu): both must
 * draw the same bits. Integer work is exact everywhere; only
 * td_sample_gumbel_of calls a libm (glibc's log on the host, CUDA's on the
 * device: each within an ulp, which is why the device decides nothing
 * closer than a margin and leaves near-ties to the host).
 *
 * Internal to the sample module and its device mirror; sample.h is the
 * contract.
 */
#ifndef TD_SAMPLE_NOISE_H
#define TD_SAMPLE_NOISE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define TD_NOISE_FN __host__ __device__ static inline
#else
#define TD_NOISE_FN static inline
#endif

#define TD_SAMPLE_LN2 0.69314718055994530942
/* The largest Gumbel variate uniform_of can give: 53 ln 2 (see the bound). */
#define TD_SAMPLE_GUMBEL_MAX (53.0 * TD_SAMPLE_LN2)

/* The splitmix64 output function: a bijective 64-bit mixer with full
 * avalanche, so neighbouring seeds, positions or token ids give unrelated
 * bits. */
TD_NOISE_FN uint64_t td_sample_mix64(uint64_t z) {
    z ^= z >> 30;
    z *= 0xbf58476d1ce4e5b9ULL;
    z ^= z >> 27;
    z *= 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return z;
}

#define TD_SAMPLE_GOLDEN 0x9e3779b97f4a7c15ULL /* 2^64 / golden ratio, odd */

/* The per-(seed, pos) key, computed once per pick rather than once per
 * token. Two rounds with a domain separator (hex digits of pi, arbitrary)
 * so that nearby seeds and positions give unrelated keys. */
TD_NOISE_FN uint64_t td_sample_noise_key(uint64_t seed, int64_t pos) {
    return td_sample_mix64(td_sample_mix64(seed ^ 0x243f6a8885a308d3ULL) + (uint64_t)pos * TD_SAMPLE_GOLDEN);
}

/* Per token: the splitmix64 generator's output number `salt` from state
 * `key` — one mixer round, which passes BigCrush. Two positions' token
 * streams could only overlap if their random 64-bit keys happened to differ
 * by a small multiple of the golden constant (chance ~ n_vocab / 2^64). */
TD_NOISE_FN uint64_t td_sample_noise_bits(uint64_t key, uint64_t salt) {
    return td_sample_mix64(key + salt * TD_SAMPLE_GOLDEN);
}

/* 52 random bits plus one half: ((h >> 12) + 0.5) / 2^52 lies in
 * [2^-53, 1 - 2^-53] and is exact in a double, so neither 0 nor 1 comes out
 * and -log(-log u) is always finite. (53 bits would need 54 here and could
 * round up to exactly 1.) */
TD_NOISE_FN double td_sample_uniform_of(uint64_t h) {
    return ((double)(h >> 12) + 0.5) * 0x1p-52;
}

TD_NOISE_FN double td_sample_gumbel_of(double u) {
    return -log(-log(u));
}

/* An upper bound on td_sample_gumbel_of(td_sample_uniform_of(h)), in units
 * of ln 2, from integer work alone. With k = h >> 12, 1 - u = r / 2^53 for
 * the odd integer r = 2 (2^52 - 1 - k) + 1, i.e. r = ((~h) >> 11) | 1,
 * exact. Since -log u >= 1 - u,
 *   G(u) = -log(-log u) <= -log(1 - u) = 53 ln 2 - ln r
 *        <= (53 - floor(log2 r)) ln 2 = (clz64(r) - 10) ln 2,
 * at most 53 ln 2 for any token (r >= 1). */
TD_NOISE_FN double td_sample_gumbel_bound_steps(uint64_t h) {
    const uint64_t r = ((~h) >> 11) | 1;
#ifdef __CUDA_ARCH__
    return (double)(__clzll((long long)r) - 10);
#else
    return (double)(__builtin_clzll(r) - 10);
#endif
}

/* Slack for decisions taken on computed noisy scores: far above every
 * rounding error in them (relative 2^-52 of the magnitudes involved, an ulp
 * from either libm's log), so a token judged below best - margin is
 * strictly below it in exact arithmetic too. Valid for any token within
 * 53 ln 2 of the best. */
TD_NOISE_FN double td_sample_prune_margin(double best) {
    return 1e-9 * (2.0 + 2.0 * fabs(best) + TD_SAMPLE_GUMBEL_MAX);
}

/* A finite logit as an unsigned key with the same order (the sign bit
 * flipped for positives, every bit for negatives); -0.0 counts as +0.0, so
 * equal logits always share a key. The sampler's scores l / T keep the
 * logits' order and ties exactly: for finite floats l1 < l2 and any valid
 * temperature, l1 / T < l2 / T in double (a float's 24-bit steps are far
 * coarser than a double's rounding, and the quotients stay between 1e-84
 * and 1e83, where doubles are normal), so keys of logits rank scores. */
TD_NOISE_FN uint32_t td_sample_logit_key(float l) {
    uint32_t b;
    if (l == 0.0f) l = 0.0f;
    memcpy(&b, &l, sizeof b);
    return (b >> 31) ? ~b : b | 0x80000000u;
}

/* The sampler's order as one number: higher key first, then lower id
 * (sample.c's better()), for sorting candidates best first. */
TD_NOISE_FN uint64_t td_sample_rank_key(float l, int32_t id) {
    return ((uint64_t)td_sample_logit_key(l) << 32) | (uint64_t)(0xffffffffu - (uint32_t)id);
}

#endif
