/* sample.h — choosing the next token from logits.
 *
 * Every random choice is keyed by (seed, absolute position): the token at
 * position t is argmax over the filtered candidates of logit/T + G(seed,t,x)
 * with G a Gumbel variate from a counter-based hash (Gumbel-max trick). The
 * same seed therefore gives the same tokens however the positions were
 * reached — plain decoding or speculative verification (ARCHITECTURE.md §4).
 * temperature == 0 is greedy (argmax, ties to the lowest id).
 *
 * Threads: a td_sampler is scratch for one caller at a time; the keyed noise
 * functions are pure and may be called from anywhere.
 */
#ifndef TD_SAMPLE_H
#define TD_SAMPLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/util.h"

/* Applied in this order: repetition penalty (distinct tokens of the last
 * repeat_last_n), temperature, top-k, top-p (smallest best-first set with
 * mass >= top_p), min-p (p >= min_p * p_max), then the draw. NaN logits
 * count as -inf; +inf logits share all the mass; if nothing is finite the
 * pick is token 0. */
typedef struct td_sample_params {
    float temperature;     /* 0 = greedy */
    int32_t top_k;         /* 0 = off */
    float top_p;           /* 1 = off */
    float min_p;           /* 0 = off */
    float repeat_penalty;  /* 1 = off; divides positive logits, multiplies negative */
    int32_t repeat_last_n; /* window of previous tokens the penalty looks at */
    uint64_t seed;
} td_sample_params;

/* Defaults: greedy, top_k 0, top_p 1, min_p 0, repeat_penalty 1, last_n 64, seed 0. */
td_sample_params td_sample_defaults(void);
/* Checks ranges; TD_E_ARG with a message naming the bad parameter. */
int td_sample_validate(const td_sample_params *p, td_err *err);

/* Scratch space for one sampler (one per sequence or per thread); sized for
 * n_vocab so the hot path allocates nothing. */
typedef struct td_sampler td_sampler;
/* p NULL = defaults. NULL on invalid parameters (td_sample_validate's
 * message), n_vocab <= 0 (both TD_E_ARG) or out of memory (TD_E_NOMEM). */
td_sampler *td_sampler_create(const td_sample_params *p, int32_t n_vocab, td_err *err);
void td_sampler_destroy(td_sampler *s);
/* Replaces the parameters (e.g. a pooled sampler taking a new request);
 * validated first, TD_E_ARG leaves the old ones in place. */
int td_sampler_set_params(td_sampler *s, const td_sample_params *p, td_err *err);

/* Picks the token for absolute position pos from logits[n_vocab] (not
 * modified). history/n_history: the tokens before pos (prompt + generated),
 * used by the repetition penalty. Returns TD_E_ARG (negative) for a NULL
 * sampler or logits, a NULL history with n_history > 0, or pos < 0. */
int32_t td_sampler_pick(td_sampler *s, const float *logits, int64_t pos,
                        const int32_t *history, size_t n_history);

/* Keyed uniform in (0,1) and Gumbel variate for (seed, pos, token). */
double td_sample_uniform(uint64_t seed, int64_t pos, uint64_t salt);
double td_sample_gumbel(uint64_t seed, int64_t pos, int32_t token);

/* Filtered, tempered distribution the sampler draws from at pos: writes
 * probabilities into probs[n_vocab] (0 outside the candidate set). Used by
 * rejection-sampling speculation and by tests. TD_OK, or TD_E_ARG for the
 * argument errors of td_sampler_pick or a NULL probs. */
int td_sampler_probs(td_sampler *s, const float *logits, const int32_t *history,
                      size_t n_history, float *probs);

/* Rejection sampling at pos against a point-mass proposal x (-1: none):
 * accepts x with probability p(x) — when u (uniform in (0,1), the
 * caller's) is below it — and otherwise returns a draw from p without x
 * (keep_x: with it, which breaks the distribution; tests show that it
 * does). p is td_sampler_probs's distribution (the same filters), with
 * p(x) = e_x / z computed by sample_norm.h's exp and order over the kept
 * set, and the rest drawn as Gumbel-max of the scores with
 * td_sample_gumbel(resample_seed, pos, .): no float rounding of
 * probabilities, so a device holding the logits can decide it too. At
 * temperature 0 p is the top token's point mass. The token, with
 * *accepted; TD_E_ARG (negative) for the argument errors of
 * td_sampler_pick, x outside [-1, n_vocab) or a NULL accepted. */
int32_t td_sampler_reject(td_sampler *s, const float *logits, const int32_t *history, size_t n_history, int64_t pos,
                          int32_t x, double u, uint64_t resample_seed, bool keep_x, bool *accepted);

/* What td_sampler_pick returns at temperature 0 without a repetition
 * penalty: the id of the largest logit, NaN counting as -inf, the lowest id
 * on ties, 0 when nothing is above -inf. A pure function of the logits, so a
 * device may compute it where the logits are (td_model_forward_picks). */
int32_t td_sample_argmax(const float *logits, int32_t n);
/* True when td_sampler_pick with p is td_sample_argmax of the logits. */
bool td_sample_is_plain_greedy(const td_sample_params *p);
/* The k (>= 1) ids with the largest logits, best first (ties: lower id). */
void td_sample_top_ids(const float *logits, int32_t n, int32_t *top, int32_t k);
/* Log-softmax of raw logits (no sampling filters), in double: the max m
 * and log(sum exp(logits - m)) once, then logprob(id) = (logits[id] - m) -
 * log_sum. Scoring, perplexity and per-token logprobs all use it, so their
 * numbers agree bit for bit, and a device that holds the logits computes
 * the same sum bit for bit (td_sample_score_row): m is the largest logit
 * other than NaN (-inf when there is none; a zero is +0), and the sum is
 * td_sample_norm_sum's. A NaN logit, or m = +inf or -inf, makes log_sum
 * NaN. */
void td_sample_log_norm(const float *logits, int32_t n, float *max, double *log_sum);
/* sum exp(logits[i] - m) over the row, with m as above into *max, in the
 * fixed order sample_norm.h defines (256 lanes, a butterfly per warp of 32,
 * then the 8 warps in turn) and with its exp: a CUDA block reproduces it. */
double td_sample_norm_sum(const float *logits, int32_t n, float *max);
static inline double td_sample_logprob_of(float logit, float max, double log_sum) {
    return ((double)logit - max) - log_sum;
}
static inline double td_sample_logprob_at(const float *logits, float max, double log_sum, int32_t id) {
    return td_sample_logprob_of(logits[id], max, log_sum);
}

/* ---- scoring where the logits are ----
 * What log-probabilities need from a row, small enough that a device holding
 * the logits sends it instead of the row: the normalizer's parts, the
 * target token's logit, the greedy pick and the best alternatives with
 * their logits. The host then takes log(sum) once and every log-probability
 * follows with td_sample_logprob_of, bit for bit as from the row. */
#define TD_SAMPLE_ALT_MAX 20
typedef struct td_sample_score {
    double sum;      /* td_sample_norm_sum */
    float max;       /* its m */
    float logit;     /* the target's logit (no target: 0) */
    int32_t argmax;  /* td_sample_argmax */
    int32_t n_alt;   /* as asked, or 0: take the alternatives from the row */
    int32_t alt_id[TD_SAMPLE_ALT_MAX];   /* td_sample_top_ids of the row */
    float alt_logit[TD_SAMPLE_ALT_MAX];
} td_sample_score;
/* The host's definition of a row's score, which the device computes (the
 * same bits, a NaN's sign and payload aside): target in [0, n) or -1
 * (none); n_alt in [0, TD_SAMPLE_ALT_MAX]. The alternatives are left to the
 * row (n_alt 0) where it holds a NaN or fewer than n_alt logits above -inf
 * (td_sample_top_ids's order then depends on where they stand) — and, on a
 * device, where the best n_alt do not fit its sorted head of 512: where
 * hundreds of logits lie within about 2^-15 of each other among the best
 * (a row masked with a large finite constant, with fewer than n_alt tokens
 * above it, is one). n >= 1. */
void td_sample_score_row(const float *logits, int32_t n, int32_t target, int32_t n_alt, td_sample_score *out);

/* ---- picking from a summary of the row ----
 * A device that holds a row's logits need not send them all back: it sends
 * a summary (td_sample_summarize says what it holds), and the host makes
 * exactly td_sampler_pick's choice from it. Every filter keeps a best-first
 * prefix, so the kept set is a score threshold; the draw's winner must come
 * within a margin of the best noisy score the device computed; only those
 * few tokens (usually one) come back, and the host computes their noisy
 * scores itself with its own libm. Where the device cannot be sure — a tie
 * at the top-k or top-p boundary, a top-p mass within rounding of the
 * target, a +inf logit, more near-ties than fit — the summary says so, and
 * the caller picks from the row's logits as before.
 *
 * Plans cover sampling without a repetition penalty (which reads the
 * history): td_sample_plan_make says whether p is such. */
typedef struct td_sample_plan {
    double temperature; /* 0 = greedy */
    double top_p;       /* 1 = off */
    double log_min_p;   /* log(min_p); -inf = off */
    uint64_t key;       /* the draw's noise key: of (seed, pos), or (rejection) of (resample_seed, pos) */
    double reject_u;    /* rejection: the uniform x is tested with */
    int32_t top_k;      /* 0 = off */
    int32_t n_top;      /* 0..TD_SAMPLE_TOP_MAX ids of the largest logits to bring back too */
    int32_t reject;     /* 0: td_sampler_pick's draw; 1: td_sampler_reject's test and residual draw */
    int32_t reject_x;   /* rejection: the proposed token, or -1 */
    int32_t reject_skip; /* rejection: the token the residual draw leaves out (x, or -1 for keep_x) */
} td_sample_plan;

/* True, and *out filled (n_top 0), when a pick at pos with p needs no
 * history (no repetition penalty in effect): then td_sample_summary_pick of
 * a summary that decides gives exactly td_sampler_pick's token. */
bool td_sample_plan_make(const td_sample_params *p, int64_t pos, td_sample_plan *out);
/* The same for td_sampler_reject's arguments (x in [-1, n_vocab) is the
 * caller's to check): then td_sample_summary_reject of a summary that
 * decides gives exactly td_sampler_reject's token and verdict. */
bool td_sample_plan_make_reject(const td_sample_params *p, int64_t pos, int32_t x, double u, uint64_t resample_seed,
                                bool keep_x, td_sample_plan *out);

#define TD_SAMPLE_SUMMARY_MAX 8
#define TD_SAMPLE_TOP_MAX 16
typedef struct td_sample_summary {
    int32_t n;                         /* 0: undecided, pick from the logits */
    int32_t accepted;                  /* rejection plans: 1 when x was accepted (then id[0] is x) */
    int32_t id[TD_SAMPLE_SUMMARY_MAX]; /* the tokens that may have won */
    float logit[TD_SAMPLE_SUMMARY_MAX];
    int32_t n_top;                     /* the plan's n_top, or 0: take them from the logits */
    int32_t top[TD_SAMPLE_TOP_MAX];    /* td_sample_top_ids of the row */
} td_sample_summary;

/* top-p's count is trusted only this far (times z) from its target. */
#define TD_SAMPLE_TOPP_CERTAIN 1e-8

/* The host's definition of a summary, which the device kernel computes:
 *   1. T == 0: td_sample_argmax alone; any +inf logit: undecided (the
 *      +inf tokens share the mass, sample.c's rule); nothing finite:
 *      token 0;
 *   2. the finite candidates sorted best first (score, then lower id);
 *      top-k keeps the first k;
 *   3. top-p: e = exp(s - s_max) and z = their sum over what top-k kept;
 *      the shortest prefix whose mass reaches top_p z, undecided unless
 *      the mass before its last token is below the target by more than
 *      TD_SAMPLE_TOPP_CERTAIN z and the mass before the next token is
 *      above it by as much;
 *   4. min-p: s - s_max >= log(min_p);
 *   5. the draw: the best noisy score M over the kept tokens that the
 *      Gumbel bound cannot exclude, then every one scoring at least
 *      M - td_sample_prune_margin(M); more than TD_SAMPLE_SUMMARY_MAX:
 *      undecided;
 *   and, when the plan asks for n_top (1..TD_SAMPLE_TOP_MAX) ids,
 *   td_sample_top_ids of the row, unless it holds a NaN (whose place in
 *   that list depends on where it stands) or fewer than n_top logits
 *   above -inf: then n_top is 0 and the ids come from the row.
 * n_vocab >= 1. TD_OK, or TD_E_NOMEM (sorting needs scratch; out is then
 * undecided). */
int td_sample_summarize(const td_sample_plan *pl, const float *logits, int32_t n_vocab, td_sample_summary *out);
/* The token td_sampler_pick would return, from a summary; -1 when the
 * summary is undecided (or malformed), or the plan is a rejection plan. */
int32_t td_sample_summary_pick(const td_sample_plan *pl, const td_sample_summary *s);

/* Rejection plans (td_sample_plan_make_reject) summarize td_sampler_reject:
 *   T == 0: the top token (td_sample_argmax), accepted when it is x;
 *   any +inf logit: undecided; nothing finite: token 0, accepted when x is 0;
 *   otherwise the kept set K of steps 2-4 above, decided or not as there;
 *   then x is accepted when it is in K and u < e_x / z, where e_v =
 *   td_sample_exp(s_v - s_max) and z sums e over K in sample_norm.h's order
 *   (td_sampler_reject's very double: K is certified, so a device decides
 *   it exactly); else step 5 over K without the skipped token, with the
 *   Gumbel bound taken from the best token of that set (none: the top
 *   token, as td_sampler_reject returns).
 * The token td_sampler_reject would return, with *accepted, from such a
 * summary; -1 when it is undecided (or malformed, or not a rejection
 * plan's). */
int32_t td_sample_summary_reject(const td_sample_plan *pl, const td_sample_summary *s, bool *accepted);

#endif
