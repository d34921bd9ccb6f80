/* sample.c — the sampler: penalties and filters build a candidate set, then
 * the Gumbel-max trick with noise keyed by (seed, pos, token) picks from it,
 * so the token is a pure function of (logits, history, params, seed, pos).
 * Order, as in vLLM (llama.cpp's chain differs only in tempering last):
 * repetition penalty → temperature → top-k → top-p → min-p → draw. Scratch
 * space comes from td_sampler_create; pick() and probs() never allocate.
 */
#include <math.h>
#include <string.h>

#include "sample/sample.h"
#include "sample/sample_noise.h"
#include "sample/sample_norm.h"

#define LN2 TD_SAMPLE_LN2

/* ---- keyed noise ----
 * Counter-based: no state, so the same key gives the same number on any
 * thread and in any call order — what lets speculative verification
 * reproduce plain decoding token for token (ARCHITECTURE.md §4). The
 * arithmetic is sample_noise.h's, shared with the device. */

double td_sample_uniform(uint64_t seed, int64_t pos, uint64_t salt) {
    return td_sample_uniform_of(td_sample_noise_bits(td_sample_noise_key(seed, pos), salt));
}

double td_sample_gumbel(uint64_t seed, int64_t pos, int32_t token) {
    /* Token ids are the salts below 2^32; other users of td_sample_uniform
     * should salt at or above 2^32 to stay independent of the Gumbel noise. */
    return td_sample_gumbel_of(td_sample_uniform(seed, pos, (uint64_t)(uint32_t)token));
}

/* ---- the sampler ---- */

struct td_sampler {
    td_sample_params p;
    int32_t n_vocab;
    double *s;        /* (n_vocab) penalised logit / T (plain logit when T == 0) */
    double *e;        /* (n_vocab) exp(s - s_max), valid for candidates only */
    int32_t *cand;    /* (n_vocab) candidate ids; the first n_cand are live */
};

/* Result of the shared front half of pick() and probs(). */
typedef struct {
    int32_t n_cand; /* live entries of s->cand; >= 1 when T > 0 */
    int32_t top;    /* argmax of s over the candidates, lowest id on ties */
} prep_result;

td_sample_params td_sample_defaults(void) {
    td_sample_params p = {
        .temperature = 0.0f,
        .top_k = 0,
        .top_p = 1.0f,
        .min_p = 0.0f,
        .repeat_penalty = 1.0f,
        .repeat_last_n = 64,
        .seed = 0,
    };
    return p;
}

int td_sample_validate(const td_sample_params *p, td_err *err) {
    if (!p)
        return td_err_set(err, TD_E_ARG, "sampling parameters missing");
    /* Written as !(good) so that NaN, which fails every comparison, is caught. */
    if (!(isfinite(p->temperature) && p->temperature >= 0.0f))
        return td_err_set(err, TD_E_ARG, "temperature must be finite and >= 0, got %g",
                          (double)p->temperature);
    if (p->top_k < 0)
        return td_err_set(err, TD_E_ARG, "top_k must be >= 0 (0 = off), got %d", (int)p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return td_err_set(err, TD_E_ARG, "top_p must be in (0, 1] (1 = off), got %g",
                          (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return td_err_set(err, TD_E_ARG, "min_p must be in [0, 1] (0 = off), got %g",
                          (double)p->min_p);
    if (!(isfinite(p->repeat_penalty) && p->repeat_penalty > 0.0f))
        return td_err_set(err, TD_E_ARG, "repeat_penalty must be finite and > 0 (1 = off), got %g",
                          (double)p->repeat_penalty);
    if (p->repeat_last_n < 0)
        return td_err_set(err, TD_E_ARG, "repeat_last_n must be >= 0, got %d",
                          (int)p->repeat_last_n);
    return TD_OK;
}

td_sampler *td_sampler_create(const td_sample_params *p, int32_t n_vocab, td_err *err) {
    td_sample_params def = td_sample_defaults();
    if (!p)
        p = &def;
    if (n_vocab <= 0) {
        td_err_set(err, TD_E_ARG, "sampler: vocabulary of %d tokens", n_vocab);
        return NULL;
    }
    if (td_sample_validate(p, err) != TD_OK)
        return NULL;
    uint64_t n8;
    if (!td_mul_u64((uint64_t)n_vocab, 8, &n8) || n8 > SIZE_MAX)
        goto nomem;

    td_sampler *s = td_alloc(sizeof *s);
    if (!s)
        goto nomem;
    s->p = *p;
    s->n_vocab = n_vocab;
    s->s = td_alloc((size_t)n8);
    s->e = td_alloc((size_t)n8);
    s->cand = td_alloc((size_t)n_vocab * sizeof *s->cand);
    if (!s->s || !s->e || !s->cand) {
        td_sampler_destroy(s);
        goto nomem;
    }
    return s;
nomem:
    td_err_set(err, TD_E_NOMEM, "sampler: out of memory for %d tokens", n_vocab);
    return NULL;
}

void td_sampler_destroy(td_sampler *s) {
    if (!s)
        return;
    td_free(s->s);
    td_free(s->e);
    td_free(s->cand);
    td_free(s);
}

int td_sampler_set_params(td_sampler *s, const td_sample_params *p, td_err *err) {
    if (!s)
        return td_err_set(err, TD_E_ARG, "sampler missing");
    int rc = td_sample_validate(p, err);
    if (rc != TD_OK)
        return rc;
    s->p = *p;
    return TD_OK;
}

/* ---- ordering: higher score first, lower id on equal scores ----
 * A strict total order, so top-k keeps exactly k and every boundary tie is
 * settled the same way on every run. */
static inline bool better(const double *sc, int32_t a, int32_t b) {
    return sc[a] > sc[b] || (sc[a] == sc[b] && a < b);
}

/* Binary heap over token ids, in place. max_heap: the best token at the root;
 * otherwise the worst (used to keep the k best seen so far). */
static void sift_down(int32_t *h, int32_t n, int32_t i, const double *sc, bool max_heap) {
    int32_t x = h[i];
    for (;;) {
        int32_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && (max_heap ? better(sc, h[c + 1], h[c]) : better(sc, h[c], h[c + 1])))
            c++;
        if (!(max_heap ? better(sc, h[c], x) : better(sc, x, h[c])))
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
}

static void heapify(int32_t *h, int32_t n, const double *sc, bool max_heap) {
    for (int32_t i = n / 2 - 1; i >= 0; i--)
        sift_down(h, n, i, sc, max_heap);
}

/* Top-k by heap selection, O(n log k): a min-heap of the k best so far; most
 * tokens cost one comparison with its root. Leaves the k best in cand[0..k). */
static void keep_top_k(int32_t *cand, int32_t n, int32_t k, const double *sc) {
    heapify(cand, k, sc, false);
    for (int32_t i = k; i < n; i++) {
        if (better(sc, cand[i], cand[0])) {
            cand[0] = cand[i];
            sift_down(cand, k, 0, sc, false);
        }
    }
}

/* Top-p keeps the best-first prefix whose mass first reaches top_p of the
 * total; the set is needed, not its order. Candidates are bucketed by
 * floor((s_max - s) / ln 2), i.e. by the binary exponent of p/p_max; a bucket
 * is computed from s alone, so every bucket ranks wholly above the next. The
 * first bucket where the bucket-prefix mass reaches the target holds the
 * boundary: buckets before it are kept whole, buckets after it dropped, and
 * only that bucket is searched — by quickselect on mass (expected linear),
 * finishing with an early-stopping heapsort on a short range. */
#define TOPP_BUCKETS 64
#define TOPP_SMALL 32      /* ranges this short are finished by the heap */
#define TOPP_MAX_ROUNDS 64 /* quickselect rounds before the heap takes over */

static inline int topp_bucket(double s, double smax) {
    double d = (smax - s) * (1.0 / LN2); /* >= 0, maybe huge */
    return d < TOPP_BUCKETS - 1 ? (int)d : TOPP_BUCKETS - 1;
}

static inline void swap_i32(int32_t *a, int32_t *b) {
    int32_t t = *a;
    *a = *b;
    *b = t;
}

/* Lomuto partition of c[0..n) around a median-of-three pivot under better():
 * returns the pivot's final index a, with c[0..a) better than it; *mass_a is
 * the mass of c[0..a). */
static int32_t partition_by_mass(int32_t *c, int32_t n, const double *sc, const double *e,
                                 double *mass_a) {
    int32_t mid = n / 2, last = n - 1;
    if (better(sc, c[mid], c[0]))
        swap_i32(&c[mid], &c[0]);
    if (better(sc, c[last], c[0]))
        swap_i32(&c[last], &c[0]);
    if (better(sc, c[last], c[mid]))
        swap_i32(&c[last], &c[mid]);
    swap_i32(&c[mid], &c[last]); /* the median is the pivot, parked at the end */
    const int32_t piv = c[last];
    double mass = 0.0;
    int32_t a = 0;
    for (int32_t i = 0; i < last; i++) {
        if (better(sc, c[i], piv)) {
            mass += e[c[i]];
            swap_i32(&c[i], &c[a]);
            a++;
        }
    }
    swap_i32(&c[a], &c[last]);
    *mass_a = mass;
    return a;
}

/* Keeps the best-first prefix of c[0..n) whose mass reaches need (all of it
 * if rounding leaves it short); returns its length, moved to c[0..m). */
static int32_t select_prefix_by_mass(int32_t *c, int32_t n, double need, const double *sc,
                                     const double *e) {
    /* Invariant: c[0..lo) is kept, c[hi..n) dropped, the boundary in between. */
    int32_t lo = 0, hi = n;
    for (int round = 0; hi - lo > TOPP_SMALL && round < TOPP_MAX_ROUNDS; round++) {
        double mass_a;
        int32_t a = lo + partition_by_mass(c + lo, hi - lo, sc, e, &mass_a);
        if (mass_a >= need) {
            hi = a;
        } else if (mass_a + e[c[a]] >= need) {
            return a + 1;
        } else {
            need -= mass_a + e[c[a]];
            lo = a + 1;
        }
    }
    /* Heapsort on the rest that stops early: popped tokens collect at the
     * end of the range, best last. */
    int32_t *h = c + lo, nh = hi - lo, m = 0;
    heapify(h, nh, sc, true);
    double cum = 0.0;
    while (m < nh && cum < need) {
        int32_t end = nh - 1 - m;
        int32_t best = h[0];
        h[0] = h[end];
        h[end] = best;
        sift_down(h, end, 0, sc, true);
        m++;
        cum += e[best];
    }
    memmove(h, h + (nh - m), (size_t)m * sizeof *h);
    return lo + m;
}

/* Returns the kept count, moved to cand[0..m). */
static int32_t keep_top_p(int32_t *cand, int32_t n, double top_p, const double *sc,
                          double smax, const double *e) {
    double mass[TOPP_BUCKETS] = {0};
    double z = 0.0;
    for (int32_t i = 0; i < n; i++) {
        double ei = e[cand[i]];
        z += ei;
        mass[topp_bucket(sc[cand[i]], smax)] += ei;
    }
    double need = top_p * z;
    int b = 0;
    while (b < TOPP_BUCKETS - 1 && mass[b] < need)
        need -= mass[b++];
    /* Three-way split by bucket: kept (< b) | boundary (== b) | dropped. */
    int32_t lt = 0, eq = 0, gt = n;
    while (eq < gt) {
        int bk = topp_bucket(sc[cand[eq]], smax);
        if (bk < b)
            swap_i32(&cand[lt++], &cand[eq++]);
        else if (bk == b)
            eq++;
        else
            swap_i32(&cand[eq], &cand[--gt]);
    }
    return lt + select_prefix_by_mass(cand + lt, eq - lt, need, sc, e);
}

/* Repetition penalty on the distinct tokens of the last repeat_last_n history
 * entries. Each score is recomputed from the raw logit, so a token repeated
 * in the window is penalised exactly once without any bookkeeping.
 * Out-of-range history ids are ignored. */
static void apply_penalty(td_sampler *s, const float *logits, const int32_t *history,
                          size_t n_history, double t) {
    const td_sample_params *p = &s->p;
    if (p->repeat_penalty == 1.0f || p->repeat_last_n <= 0 || !history || n_history == 0)
        return;
    size_t start = n_history > (size_t)p->repeat_last_n ? n_history - (size_t)p->repeat_last_n : 0;
    double pen = p->repeat_penalty;
    for (size_t i = start; i < n_history; i++) {
        int32_t tok = history[i];
        if (tok < 0 || tok >= s->n_vocab)
            continue;
        double l = logits[tok];
        if (isnan(l))
            continue; /* stays -inf */
        /* Doubles: a small penalty or temperature cannot overflow a float
         * logit into +inf here (|l| / 1e-45 / 1e-45 < 1e129). */
        l = l > 0.0 ? l / pen : l * pen;
        s->s[tok] = l / t;
    }
}

/* Index of the largest score, lowest id on ties (0 when all are -inf). Max
 * first with independent lanes, then the first index holding it: a running
 * (value, index) pair would chain every iteration on the previous one. */
static int32_t argmax_lowest(const double *sc, int32_t n) {
    double m[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    int32_t x = 0;
    for (; x + 4 <= n; x += 4)
        for (int j = 0; j < 4; j++)
            m[j] = sc[x + j] > m[j] ? sc[x + j] : m[j];
    for (; x < n; x++)
        m[0] = sc[x] > m[0] ? sc[x] : m[0];
    double mx = fmax(fmax(m[0], m[1]), fmax(m[2], m[3]));
    for (x = 0; x < n; x++)
        if (sc[x] == mx)
            return x;
    return 0;
}

/* The front half shared by pick() and probs(): scores, penalty, candidate
 * set and filters. need_e: fill s->e for the candidates even when no filter
 * needs it (probs). With T == 0 only the argmax is computed. */
static prep_result prepare(td_sampler *s, const float *logits, const int32_t *history,
                           size_t n_history, bool need_e) {
    const td_sample_params *p = &s->p;
    const int32_t n = s->n_vocab;
    double *sc = s->s;
    const bool greedy = p->temperature == 0.0f;
    /* l / T in double: exactly what a reference "logit / T" computes, and a
     * tiny T cannot overflow (|l| <= 3.4e38, T >= 1.4e-45). T == 1 skips the
     * division, which would not change a bit. */
    const double t = greedy ? 1.0 : (double)p->temperature;
    prep_result r = {0, 0};

    bool pos_inf = false;
    if (t == 1.0) {
        for (int32_t x = 0; x < n; x++) {
            double l = logits[x];
            pos_inf |= l == INFINITY;
            sc[x] = isnan(l) ? -INFINITY : l;
        }
    } else {
        for (int32_t x = 0; x < n; x++) {
            double l = logits[x];
            pos_inf |= l == INFINITY;
            sc[x] = isnan(l) ? -INFINITY : l / t;
        }
    }
    if (pos_inf) {
        /* +inf logits take all the mass (the limit of softmax): the +inf
         * tokens become the candidates, equally likely; penalties cannot
         * move an infinite logit, so they are skipped. */
        for (int32_t x = 0; x < n; x++)
            sc[x] = logits[x] == INFINITY ? 0.0 : -INFINITY;
    } else {
        apply_penalty(s, logits, history, n_history, t);
    }

    /* Everything -inf (or NaN) falls back to the lowest id, with certainty. */
    const int32_t top = argmax_lowest(sc, n);
    r.top = top;
    if (greedy) {
        r.n_cand = 1;
        return r;
    }
    int32_t nc = 0;
    for (int32_t x = 0; x < n; x++) {
        s->cand[nc] = x; /* always stored; kept only if finite (no branch) */
        nc += sc[x] != -INFINITY;
    }
    if (nc == 0) {
        sc[0] = 0.0;
        s->cand[nc++] = 0;
    }

    if (p->top_k > 0 && p->top_k < nc) {
        keep_top_k(s->cand, nc, p->top_k, sc);
        nc = p->top_k;
    }
    /* The top token survives every filter, so s_max never changes. */
    const double smax = sc[top];
    const bool use_p = p->top_p < 1.0f && nc > 1;
    if (need_e || use_p)
        for (int32_t i = 0; i < nc; i++)
            s->e[s->cand[i]] = exp(sc[s->cand[i]] - smax); /* = p(x) / p_max */
    if (use_p)
        nc = keep_top_p(s->cand, nc, (double)p->top_p, sc, smax, s->e);
    if (p->min_p > 0.0f) {
        /* p(x) >= min_p * p_max, tested in the log domain so that pick()
         * needs no exp: s(x) - s_max >= log(min_p). */
        const double lmin = log((double)p->min_p);
        int32_t m = 0;
        for (int32_t i = 0; i < nc; i++)
            if (sc[s->cand[i]] - smax >= lmin)
                s->cand[m++] = s->cand[i];
        nc = m;
    }
    r.n_cand = nc;
    return r;
}

/* ---- the draw ----
 * A bound on the noise (td_sample_gumbel_bound_steps) lets pick() skip
 * tokens that cannot win: integer work only; the two logs are paid just by
 * tokens the bound cannot exclude. */

int32_t td_sampler_pick(td_sampler *s, const float *logits, int64_t pos,
                        const int32_t *history, size_t n_history) {
    /* a caller's mistake is an error, never an abort (a server hosts this) */
    if (!s || !logits || (n_history > 0 && !history) || pos < 0) return TD_E_ARG;
    prep_result r = prepare(s, logits, history, n_history, false);
    if (s->p.temperature == 0.0f || r.n_cand == 1)
        return r.top; /* the top token always survives every filter */

    /* argmax over candidates of s(x) + G(seed, pos, x), lowest id on ties.
     * Seeding the search with the top token makes the bounds bite at once:
     * a token needs its hash only within 53 ln 2 of the best, and its two
     * logs only when its bound says it could still win (expected O(1) of
     * them). Pruning never changes the result: pick() equals the plain
     * argmax that a reference loop over td_sample_gumbel computes. */
    const double *sc = s->s;
    const uint64_t key = td_sample_noise_key(s->p.seed, pos);
    int32_t best_id = r.top;
    double best = sc[best_id] + td_sample_gumbel_of(td_sample_uniform_of(td_sample_noise_bits(key, (uint64_t)best_id)));
    double lim = best - td_sample_prune_margin(best); /* a skipped token scores below this */
    for (int32_t i = 0; i < r.n_cand; i++) {
        int32_t x = s->cand[i];
        double sx = sc[x];
        if (sx + TD_SAMPLE_GUMBEL_MAX < lim || x == r.top)
            continue;
        uint64_t h = td_sample_noise_bits(key, (uint64_t)(uint32_t)x);
        if (sx + td_sample_gumbel_bound_steps(h) * LN2 < lim)
            continue;
        double v = sx + td_sample_gumbel_of(td_sample_uniform_of(h));
        if (v > best || (v == best && x < best_id)) {
            best = v;
            best_id = x;
            lim = best - td_sample_prune_margin(best);
        }
    }
    return best_id;
}

int td_sampler_probs(td_sampler *s, const float *logits, const int32_t *history,
                     size_t n_history, float *probs) {
    if (!s || !logits || !probs || (n_history > 0 && !history)) return TD_E_ARG;
    prep_result r = prepare(s, logits, history, n_history, true);
    memset(probs, 0, (size_t)s->n_vocab * sizeof *probs);
    if (s->p.temperature == 0.0f) {
        probs[r.top] = 1.0f;
        return TD_OK;
    }
    /* Gumbel-max over the candidates draws exactly softmax(s) over them. */
    double z = 0.0;
    for (int32_t i = 0; i < r.n_cand; i++)
        z += s->e[s->cand[i]];
    for (int32_t i = 0; i < r.n_cand; i++)
        probs[s->cand[i]] = (float)(s->e[s->cand[i]] / z);
    return TD_OK;
}

int32_t td_sampler_reject(td_sampler *s, const float *logits, const int32_t *history, size_t n_history, int64_t pos,
                          int32_t x, double u, uint64_t resample_seed, bool keep_x, bool *accepted) {
    if (!s || !logits || !accepted || (n_history > 0 && !history) || x < -1 || x >= s->n_vocab) return TD_E_ARG;
    *accepted = false;
    prep_result r = prepare(s, logits, history, n_history, false);
    if (s->p.temperature == 0.0f) { /* the point mass at the top: x is it, or the draw is */
        *accepted = x == r.top;
        return r.top;
    }
    /* p(x) = e_x / z over the kept set, both from sample_norm.h (the
     * normalizer's exp and order: what a device reproduces) */
    const double smax = s->s[r.top];
    for (int32_t v = 0; v < s->n_vocab; v++) s->e[v] = 0.0;
    for (int32_t i = 0; i < r.n_cand; i++) s->e[s->cand[i]] = td_sample_exp(s->s[s->cand[i]] - smax);
    if (x >= 0 && u < s->e[x] / td_sample_norm_sum_terms(s->e, s->n_vocab)) {
        *accepted = true;
        return x;
    }
    /* the rest of p: Gumbel-max of the scores over the kept set without x */
    int32_t best = -1;
    double bestv = -INFINITY;
    for (int32_t i = 0; i < r.n_cand; i++) {
        const int32_t v = s->cand[i];
        if (v == x && !keep_x) continue;
        const double g = s->s[v] + td_sample_gumbel(resample_seed, pos, v);
        if (g > bestv || (g == bestv && v < best)) bestv = g, best = v;
    }
    return best >= 0 ? best : r.top;
}

int32_t td_sample_argmax(const float *logits, int32_t n) {
    int32_t best = 0;
    float bv = -INFINITY;
    for (int32_t x = 0; x < n; x++)
        if (logits[x] > bv) { /* NaN never is: it counts as -inf */
            bv = logits[x];
            best = x;
        }
    return best;
}

bool td_sample_is_plain_greedy(const td_sample_params *p) {
    return p->temperature == 0.0f && (p->repeat_penalty == 1.0f || p->repeat_last_n <= 0);
}

void td_sample_top_ids(const float *logits, int32_t n, int32_t *top, int32_t k) {
    int32_t cnt = 0;
    for (int32_t v = 0; v < n; v++) {
        if (cnt == k && !(logits[v] > logits[top[k - 1]])) continue;
        int32_t j = cnt < k ? cnt++ : k - 1;
        while (j > 0 && logits[v] > logits[top[j - 1]]) { top[j] = top[j - 1]; j--; }
        top[j] = v;
    }
}
