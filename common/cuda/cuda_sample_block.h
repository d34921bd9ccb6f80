/* cuda_sample_block.h — what one block of 256 threads does to a row of
 * logits where they are: summarize it for the keyed sampler (sample.h,
 * "picking from a summary"), or score it (sample.h, "scoring where the
 * logits are"). Written in the common part of C11 and CUDA C++ so that the
 * same code runs as the device kernels (cuda_sample.cu) and, with 256 host
 * threads standing in for the block, in a unit test where no GPU is
 * (test_sample_block.c).
 *
 * It computes td_sample_summarize's definition (summary.c): the same
 * candidates in the same order, the same certainty test for top-p, the same
 * pruning and margin in the draw. Where top-k or top-p needs the candidates
 * ranked, it sorts only the head of the row, the best TD_BLK_HEAD tokens or
 * fewer (found with two 12-bit histograms of the logits' keys), and leaves
 * the row undecided when the answer lies below the head. Counts and sums
 * are reduced in a fixed order, so a row's summary is the same on every run;
 * the device's exp and log differ from glibc's by an ulp, which the margins
 * absorb. A score is td_sample_score_row's bit for bit: its sum runs in
 * sample_norm.h's order with sample_norm.h's exp, and its alternatives are
 * the first of a smaller head.
 *
 * The includer defines the block's primitives first:
 *   TD_BLK_FN            a function's qualifiers (static inline, plus
 *                        __device__ in CUDA)
 *   TD_SHARED            a variable all threads of the block share
 *   TD_ALIGN16           16-byte alignment
 *   TD_TID               this thread's index, 0..255 (int32_t)
 *   TD_SYNC()            the block's barrier
 *   TD_SHFL_XOR(v, o)    the value of lane (lane ^ o) of this warp
 *   TD_SHFL_UP(v, o)     the value of lane (lane - o), own value below o
 *   TD_ATOMIC_ADD(p, v)  add to a shared int32_t or uint32_t, old value
 * and each thread of the block calls td_blk_summarize (or td_blk_score)
 * with the same arguments. Every barrier is reached by every thread (the branches
 * around them depend only on values the whole block shares).
 */
#ifndef TD_CUDA_SAMPLE_BLOCK_H
#define TD_CUDA_SAMPLE_BLOCK_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

#include "sample/sample.h"
#include "sample/sample_noise.h"
#include "sample/sample_norm.h"

#define TD_BLK_THREADS 256
#define TD_BLK_WARPS (TD_BLK_THREADS / 32)
#define TD_BLK_HEAD 2048 /* sorted head of a row (a power of two) */
#define TD_BLK_BINS 4096 /* histogram bins, 12 bits of a key */
#define TD_BLK_NEAR 1024 /* noisy scores the draw keeps between its two steps */

/* ---- block-wide reductions: every thread gets the result; sh holds
 * TD_BLK_WARPS + 1 values and is free again when they return ---- */

TD_BLK_FN uint32_t td_blk_sum_u32(uint32_t v, uint32_t *sh) {
    for (int off = 16; off; off >>= 1) v += TD_SHFL_XOR(v, off);
    if ((TD_TID & 31) == 0) sh[TD_TID >> 5] = v;
    TD_SYNC();
    if (TD_TID == 0) {
        uint32_t s = sh[0];
        for (int w = 1; w < TD_BLK_WARPS; w++) s += sh[w];
        sh[TD_BLK_WARPS] = s;
    }
    TD_SYNC();
    const uint32_t r = sh[TD_BLK_WARPS];
    TD_SYNC();
    return r;
}

TD_BLK_FN double td_blk_sum_f64(double v, double *sh) {
    for (int off = 16; off; off >>= 1) v += TD_SHFL_XOR(v, off);
    if ((TD_TID & 31) == 0) sh[TD_TID >> 5] = v;
    TD_SYNC();
    if (TD_TID == 0) {
        double s = sh[0];
        for (int w = 1; w < TD_BLK_WARPS; w++) s += sh[w];
        sh[TD_BLK_WARPS] = s;
    }
    TD_SYNC();
    const double r = sh[TD_BLK_WARPS];
    TD_SYNC();
    return r;
}

TD_BLK_FN double td_blk_max_f64(double v, double *sh) {
    for (int off = 16; off; off >>= 1) v = fmax(v, TD_SHFL_XOR(v, off));
    if ((TD_TID & 31) == 0) sh[TD_TID >> 5] = v;
    TD_SYNC();
    if (TD_TID == 0) {
        double m = sh[0];
        for (int w = 1; w < TD_BLK_WARPS; w++) m = fmax(m, sh[w]);
        sh[TD_BLK_WARPS] = m;
    }
    TD_SYNC();
    const double r = sh[TD_BLK_WARPS];
    TD_SYNC();
    return r;
}

/* Exclusive prefix sums in thread order; *total gets the block's sum. */
TD_BLK_FN uint32_t td_blk_scan_u32(uint32_t v, uint32_t *sh, uint32_t *total) {
    const int lane = TD_TID & 31, warp = TD_TID >> 5;
    uint32_t incl = v;
    for (int off = 1; off < 32; off <<= 1) {
        const uint32_t o = TD_SHFL_UP(incl, off);
        if (lane >= off) incl += o;
    }
    if (lane == 31) sh[warp] = incl;
    TD_SYNC();
    if (TD_TID == 0) {
        uint32_t acc = 0;
        for (int w = 0; w < TD_BLK_WARPS; w++) {
            const uint32_t t = sh[w];
            sh[w] = acc;
            acc += t;
        }
        sh[TD_BLK_WARPS] = acc;
    }
    TD_SYNC();
    const uint32_t r = sh[warp] + incl - v;
    *total = sh[TD_BLK_WARPS];
    TD_SYNC();
    return r;
}

TD_BLK_FN bool td_blk_finite(float l) {
    return !isnan(l) && l != -INFINITY;
}

/* What a row holds, counted per thread. */
typedef struct td_blk_counts {
    uint32_t fin, inf, nan; /* above -inf (+inf included), +inf, NaN */
} td_blk_counts;

/* The largest logit and the lowest id holding it, token skip left out (-1:
 * none), INT32_MAX when nothing is above -inf (td_sample_argmax's order);
 * *mine (unless NULL) gets this thread's counts of the whole row, in the
 * same read. */
TD_BLK_FN int32_t td_blk_argmax(const float *row, int32_t n, int32_t skip, float *shv, int32_t *shi,
                                td_blk_counts *mine) {
    float bv = -INFINITY;
    int32_t bi = INT32_MAX;
    td_blk_counts c = {0, 0, 0};
    for (int32_t x = TD_TID; x < n; x += TD_BLK_THREADS) {
        const float l = row[x];
        if (l > bv && x != skip) bv = l, bi = x; /* NaN never is */
        if (mine) {
            c.inf += l == INFINITY;
            c.nan += isnan(l);
            c.fin += td_blk_finite(l);
        }
    }
    if (mine) *mine = c;
    for (int off = 16; off; off >>= 1) {
        const float ov = TD_SHFL_XOR(bv, off);
        const int32_t oi = TD_SHFL_XOR(bi, off);
        if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
    }
    if ((TD_TID & 31) == 0) shv[TD_TID >> 5] = bv, shi[TD_TID >> 5] = bi;
    TD_SYNC();
    if (TD_TID == 0) {
        for (int w = 1; w < TD_BLK_WARPS; w++)
            if (shv[w] > bv || (shv[w] == bv && shi[w] < bi)) bv = shv[w], bi = shi[w];
        shi[TD_BLK_WARPS] = bi;
    }
    TD_SYNC();
    const int32_t r = shi[TD_BLK_WARPS];
    TD_SYNC();
    return r;
}

TD_BLK_FN int32_t td_blk_id_of_rank(uint64_t r) {
    return (int32_t)(0xffffffffu - (uint32_t)r);
}

TD_BLK_FN void td_blk_put(td_sample_summary *o, int32_t n, int32_t id, float logit) {
    o->n = n;
    o->id[0] = id;
    o->logit[0] = logit;
}

/* ---- the head: the best tokens by key, at most TD_BLK_HEAD ---- */

/* Given hist (TD_BLK_BINS counts, the last bin best) and cap: the bin at
 * which the best-first count first exceeds cap (-1: it never does), and in
 * *above the count of the bins above it. */
TD_BLK_FN int32_t td_blk_cut_bin(const uint32_t *hist, uint32_t cap, uint32_t *above, uint32_t *shu) {
    TD_SHARED int32_t cut;
    TD_SHARED uint32_t cut_above;
    enum { PER = TD_BLK_BINS / TD_BLK_THREADS };
    const int32_t hi = TD_BLK_BINS - 1 - TD_TID * PER; /* this thread's best bin */
    uint32_t mine = 0, total;
    for (int32_t b = hi; b > hi - PER; b--) mine += hist[b];
    const uint32_t excl = td_blk_scan_u32(mine, shu, &total);
    if (TD_TID == 0) cut = -1, cut_above = total;
    TD_SYNC();
    if (excl <= cap && excl + mine > cap) { /* exactly one thread */
        uint32_t run = excl;
        for (int32_t b = hi; b > hi - PER; b--) {
            if (run + hist[b] > cap) {
                cut = b, cut_above = run;
                break;
            }
            run += hist[b];
        }
    }
    TD_SYNC();
    const int32_t r = cut;
    *above = cut_above;
    TD_SYNC();
    return r;
}

/* The smallest key of the head: every finite token keyed at least this
 * is in it, and there are at most cap of them. */
TD_BLK_FN uint32_t td_blk_head_floor(const float *row, int32_t n, int32_t cap, uint32_t *hist, uint32_t *shu) {
    for (int32_t b = TD_TID; b < TD_BLK_BINS; b += TD_BLK_THREADS) hist[b] = 0;
    TD_SYNC();
    for (int32_t x = TD_TID; x < n; x += TD_BLK_THREADS)
        if (td_blk_finite(row[x])) TD_ATOMIC_ADD(&hist[td_sample_logit_key(row[x]) >> 20], 1u);
    TD_SYNC();
    uint32_t above, above2;
    const int32_t b1 = td_blk_cut_bin(hist, (uint32_t)cap, &above, shu);
    if (b1 < 0) return 0; /* every finite token fits */
    for (int32_t b = TD_TID; b < TD_BLK_BINS; b += TD_BLK_THREADS) hist[b] = 0;
    TD_SYNC();
    for (int32_t x = TD_TID; x < n; x += TD_BLK_THREADS)
        if (td_blk_finite(row[x])) {
            const uint32_t k = td_sample_logit_key(row[x]);
            if ((int32_t)(k >> 20) == b1) TD_ATOMIC_ADD(&hist[(k >> 8) & (TD_BLK_BINS - 1)], 1u);
        }
    TD_SYNC();
    /* bin b1 overflows what is left, so b2 >= 0. No finite logit's key
     * reaches the first level's last bin, so the floor stays below 2^32. */
    const int32_t b2 = td_blk_cut_bin(hist, (uint32_t)cap - above, &above2, shu);
    const uint64_t f = ((uint64_t)b1 << 20) + ((uint64_t)(b2 + 1) << 8);
    return f > 0xffffffffu ? 0xffffffffu : (uint32_t)f;
}

/* Sorts head[0, p) (p a power of two) descending. */
TD_BLK_FN void td_blk_sort_desc(uint64_t *head, int32_t p) {
    for (int32_t k = 2; k <= p; k <<= 1)
        for (int32_t j = k >> 1; j > 0; j >>= 1) {
            for (int32_t i = TD_TID; i < p; i += TD_BLK_THREADS) {
                const int32_t o = i ^ j;
                if (o <= i) continue;
                const bool desc = (i & k) == 0;
                const uint64_t a = head[i], b = head[o];
                if (desc ? a < b : a > b) head[i] = b, head[o] = a;
            }
            TD_SYNC();
        }
}

/* The head, at most cap (a power of two) tokens, into head[0, hn) sorted
 * best first as sample.c ranks candidates (rank keys: logit, then lower
 * id); returns hn, or 0 where it would not fit (never, by head_floor's
 * promise, but kept safe). *floor_key gets the head's threshold: every
 * finite token keyed at least this is in it, every other is not. */
TD_BLK_FN int32_t td_blk_head(const float *row, int32_t n, int32_t cap, uint64_t *head, uint32_t *hist, uint32_t *shu,
                              uint32_t *floor_key) {
    TD_SHARED int32_t head_n;
    const uint32_t f = td_blk_head_floor(row, n, cap, hist, shu);
    if (TD_TID == 0) head_n = 0;
    TD_SYNC();
    for (int32_t x = TD_TID; x < n; x += TD_BLK_THREADS)
        if (td_blk_finite(row[x]) && td_sample_logit_key(row[x]) >= f) {
            const int32_t at = TD_ATOMIC_ADD(&head_n, 1);
            if (at < cap) head[at] = td_sample_rank_key(row[x], x);
        }
    TD_SYNC();
    const int32_t hn = head_n > cap ? 0 : head_n;
    int32_t p = 1;
    while (p < hn) p <<= 1;
    for (int32_t i = hn + TD_TID; i < p; i += TD_BLK_THREADS) head[i] = 0; /* below every token */
    TD_SYNC();
    td_blk_sort_desc(head, p);
    *floor_key = f;
    return hn;
}

/* ---- the draw ---- */

typedef struct td_blk_draw {
    const float *row;
    int32_t n;
    const uint64_t *cand; /* kept tokens (rank keys), or NULL: every finite token */
    int32_t n_cand;
    int32_t top;          /* the row's top token */
    int32_t ref;          /* the token the Gumbel bound is taken from (kept, not skip) */
    int32_t skip;         /* a token left out (rejection's x), or -1 */
    double t, smax, lmin; /* smax: the top token's score, min-p's reference */
    uint64_t key;
} td_blk_draw;

/* Token x's noisy score if it is kept and the Gumbel bound cannot exclude
 * it (summary.c's tests, in its order); -inf otherwise. */
TD_BLK_FN double td_blk_noisy(const td_blk_draw *d, int32_t x, double lim) {
    const float l = d->row[x];
    if (x == d->skip || !td_blk_finite(l)) return -INFINITY;
    const double s = (double)l / d->t;
    if (!(s - d->smax >= d->lmin) || s + TD_SAMPLE_GUMBEL_MAX < lim) return -INFINITY;
    const uint64_t h = td_sample_noise_bits(d->key, (uint64_t)(uint32_t)x);
    if (x != d->ref && s + td_sample_gumbel_bound_steps(h) * TD_SAMPLE_LN2 < lim) return -INFINITY;
    return s + td_sample_gumbel_of(td_sample_uniform_of(h));
}

/* The tokens within the margin of the best noisy score into *o (thread 0
 * writes it), in id order; undecided when more than TD_SAMPLE_SUMMARY_MAX.
 * Scores that survive the bound wait in near_id/near_v, so the row is read
 * once; where more than TD_BLK_NEAR survive, it is read again. */
TD_BLK_FN void td_blk_draw_run(const td_blk_draw *d, int32_t *near_id, double *near_v, td_sample_summary *o,
                               double *shd) {
    TD_SHARED int32_t n_near, n_win;
    TD_SHARED int32_t win[TD_SAMPLE_SUMMARY_MAX];
    const double vref = (double)d->row[d->ref] / d->t +
                        td_sample_gumbel_of(td_sample_uniform_of(td_sample_noise_bits(d->key, (uint64_t)d->ref)));
    const double lim = vref - td_sample_prune_margin(vref);
    if (TD_TID == 0) n_near = 0, n_win = 0;
    TD_SYNC();
    const int32_t count = d->cand ? d->n_cand : d->n;
    double best = vref;
    for (int32_t i = TD_TID; i < count; i += TD_BLK_THREADS) {
        const int32_t x = d->cand ? td_blk_id_of_rank(d->cand[i]) : i;
        const double v = td_blk_noisy(d, x, lim);
        if (v == -INFINITY) continue;
        best = fmax(best, v);
        const int32_t at = TD_ATOMIC_ADD(&n_near, 1);
        if (at < TD_BLK_NEAR) near_id[at] = x, near_v[at] = v;
    }
    best = td_blk_max_f64(best, shd); /* its barriers make n_near final */
    const double floor_v = best - td_sample_prune_margin(best);
    const bool again = n_near > TD_BLK_NEAR;
    const int32_t m = again ? count : n_near;
    for (int32_t i = TD_TID; i < m; i += TD_BLK_THREADS) {
        int32_t x;
        double v;
        if (again) {
            x = d->cand ? td_blk_id_of_rank(d->cand[i]) : i;
            v = td_blk_noisy(d, x, lim);
        } else {
            x = near_id[i];
            v = near_v[i];
        }
        if (v == -INFINITY || v < floor_v) continue;
        const int32_t at = TD_ATOMIC_ADD(&n_win, 1);
        if (at < TD_SAMPLE_SUMMARY_MAX) win[at] = x;
    }
    TD_SYNC();
    if (TD_TID == 0) {
        const int32_t w = n_win;
        o->n = 0;
        if (w <= TD_SAMPLE_SUMMARY_MAX) { /* in id order, so that a row's summary never varies */
            for (int32_t i = 1; i < w; i++)
                for (int32_t j = i; j > 0 && win[j] < win[j - 1]; j--) {
                    const int32_t tmp = win[j];
                    win[j] = win[j - 1];
                    win[j - 1] = tmp;
                }
            o->n = w;
            for (int32_t i = 0; i < w; i++) o->id[i] = win[i], o->logit[i] = d->row[win[i]];
        }
    }
    TD_SYNC();
}

/* ---- rejection (td_sampler_reject) ---- */

/* Whether token x is in the kept set: finite, at least the prefix's last
 * rank key (floor_rank 0: no prefix), past min-p (summary.c's in_kept). */
TD_BLK_FN bool td_blk_in_kept(const td_blk_draw *d, int32_t x, uint64_t floor_rank) {
    const float l = d->row[x];
    if (!td_blk_finite(l)) return false;
    if (floor_rank && td_sample_rank_key(l, x) < floor_rank) return false;
    return (double)l / d->t - d->smax >= d->lmin;
}

/* x's test over the kept set d describes (d->cand[0, n_cand) before min-p,
 * or every finite token): true when x was rejected and the residual draw
 * remains to be run, d then set for it (skip left out, the bound from the
 * best kept token other than skip); false when thread 0 has written the
 * outcome. z is summed in sample_norm.h's order (thread t is lane t; tokens
 * outside the set add nothing, as their zero terms add nothing in
 * td_sampler_reject's), so the verdict is the host's. */
TD_BLK_FN bool td_blk_reject_test(td_blk_draw *d, int32_t x, int32_t skip, double u, td_sample_summary *o,
                                  double *shd, float *shf, int32_t *shi) {
    const uint64_t floor_rank = d->cand ? d->cand[d->n_cand - 1] : 0;
    if (x >= 0 && x < d->n && td_blk_in_kept(d, x, floor_rank)) {
        double lane = 0.0;
        for (int32_t v = TD_TID; v < d->n; v += TD_BLK_THREADS)
            if (td_blk_in_kept(d, v, floor_rank)) lane += td_sample_exp((double)d->row[v] / d->t - d->smax);
        const double z = td_blk_sum_f64(lane, shd);
        if (u < td_sample_exp((double)d->row[x] / d->t - d->smax) / z) {
            if (TD_TID == 0) {
                td_blk_put(o, 1, x, d->row[x]);
                o->accepted = 1;
            }
            TD_SYNC();
            return false;
        }
    }
    int32_t ref;
    if (d->cand) {
        const int32_t c0 = td_blk_id_of_rank(d->cand[0]);
        ref = c0 != skip ? c0 : d->n_cand > 1 ? td_blk_id_of_rank(d->cand[1]) : -1;
    } else if (d->top != skip) {
        ref = d->top;
    } else {
        const int32_t a = td_blk_argmax(d->row, d->n, skip, shf, shi, NULL);
        ref = a == INT32_MAX ? -1 : a;
    }
    if (ref < 0 || !td_blk_in_kept(d, ref, floor_rank)) { /* the set was {skip}: the top, as the sampler */
        if (TD_TID == 0) td_blk_put(o, 1, d->top, d->row[d->top]);
        TD_SYNC();
        return false;
    }
    d->ref = ref;
    d->skip = skip;
    return true;
}

/* ---- a row ---- */

/* The block's shared scratch: the sorted head stays while the histogram,
 * top-p's masses and the draw's surviving scores take turns beside it. */
typedef struct td_blk_pool {
    uint64_t head[TD_BLK_HEAD];
    union {
        uint32_t hist[TD_BLK_BINS];
        double e[TD_BLK_HEAD];
        struct {
            int32_t id[TD_BLK_NEAR];
            double v[TD_BLK_NEAR];
        } near;
    } u;
} td_blk_pool;

TD_BLK_FN void td_blk_summarize(const float *row, int32_t n, const td_sample_plan *plan, td_sample_summary *o) {
    TD_SHARED TD_ALIGN16 td_blk_pool pool;
    uint64_t *head = pool.head;
    double *e = pool.u.e;
    TD_SHARED double shd[TD_BLK_WARPS + 1];
    TD_SHARED uint32_t shu[TD_BLK_WARPS + 1];
    TD_SHARED float shf[TD_BLK_WARPS + 1];
    TD_SHARED int32_t shi[TD_BLK_WARPS + 1];
    TD_SHARED int32_t last;
    const td_sample_plan pl = *plan;
    const double t = pl.temperature;

    /* 1. the top token, and what the row holds */
    td_blk_counts mine;
    const int32_t arg = td_blk_argmax(row, n, -1, shf, shi, &mine);
    const int32_t top = arg == INT32_MAX ? 0 : arg;
    const uint32_t n_fin = td_blk_sum_u32(mine.fin, shu); /* above -inf, +inf included */
    const uint32_t n_inf = td_blk_sum_u32(mine.inf, shu);
    const uint32_t n_nan = td_blk_sum_u32(mine.nan, shu);
    /* +inf takes all the mass (the host's rule); nothing finite: token 0 */
    const bool sampled = t != 0.0 && n_inf == 0 && n_fin > 0;
    const bool use_k = sampled && pl.top_k > 0 && (uint32_t)pl.top_k < n_fin;
    const bool use_p = sampled && pl.top_p < 1.0 && n_fin > 1;
    const bool want_top = pl.n_top > 0 && pl.n_top <= TD_SAMPLE_TOP_MAX && n_nan == 0 && n_fin >= (uint32_t)pl.n_top;
    int32_t keep = use_k ? pl.top_k : (int32_t)n_fin;

    /* 2. the head, sorted best first as sample.c ranks candidates, where
     * top-k, top-p or the observations need it */
    uint32_t floor_key = 0;
    int32_t hn = 0;
    if (use_k || use_p || want_top) {
        hn = td_blk_head(row, n, TD_BLK_HEAD, head, pool.u.hist, shu, &floor_key);
    }
    /* the observations: the head's first n_top, td_sample_top_ids's order
     * where no NaN is (with one, the host's list depends on where it stands) */
    if (TD_TID == 0) {
        o->accepted = 0;
        o->n_top = want_top && hn >= pl.n_top ? pl.n_top : 0;
        for (int32_t i = 0; i < o->n_top; i++) o->top[i] = td_blk_id_of_rank(head[i]);
    }
    TD_SYNC();

    /* 3. the pick: greedy, the cases the host keeps, or no prefix to find */
    if (t == 0.0 || !sampled) {
        if (TD_TID == 0) {
            td_blk_put(o, n_inf > 0 && t != 0.0 ? 0 : 1, top, row[top]);
            /* rejection: the point mass at the top, or (nothing finite) at token 0 */
            if (pl.reject)
                o->accepted = t == 0.0 ? pl.reject_x == top : n_inf == 0 && pl.reject_x == top && pl.reject_u < 1.0;
        }
        TD_SYNC();
        return;
    }
    const double smax = (double)row[top] / t;
    td_blk_draw d = {row, n, 0, 0, top, top, -1, t, smax, pl.log_min_p, pl.key};
    /* without top-k or top-p there is no prefix to find: min-p is a test per token */
    bool undecided = use_k && keep > hn; /* top-k reaches below the head */

    /* 4. top-p over what top-k kept */
    if (!undecided && use_p && keep > 1) {
        enum { PER = TD_BLK_HEAD / TD_BLK_THREADS };
        const int32_t in_head = keep < hn ? keep : hn, i0 = TD_TID * PER;
        double mine = 0.0, tail = 0.0;
        for (int32_t i = i0; i < i0 + PER && i < in_head; i++)
            mine += e[i] = exp((double)row[td_blk_id_of_rank(head[i])] / t - smax);
        const double head_mass = td_blk_sum_f64(mine, shd);
        if (in_head < keep) { /* z takes every finite token: those below the head too */
            for (int32_t x = TD_TID; x < n; x += TD_BLK_THREADS)
                if (td_blk_finite(row[x]) && td_sample_logit_key(row[x]) < floor_key)
                    tail += exp((double)row[x] / t - smax);
            tail = td_blk_sum_f64(tail, shd);
        }
        const double z = head_mass + tail, need = pl.top_p * z, band = TD_SAMPLE_TOPP_CERTAIN * z;
        /* the last kept token j: found in thread 0's walk over per-thread
         * masses, then the mass before it summed in the block's fixed order */
        TD_SHARED double part[TD_BLK_THREADS];
        part[TD_TID] = mine;
        if (TD_TID == 0) last = -1;
        TD_SYNC();
        if (TD_TID == 0) {
            double cum = 0.0;
            int32_t th = 0;
            while (th < TD_BLK_THREADS && cum + part[th] < need) cum += part[th++];
            for (int32_t i = th * PER; th < TD_BLK_THREADS && i < (th + 1) * PER && i < in_head; i++) {
                if (cum + e[i] >= need) {
                    last = i;
                    break;
                }
                cum += e[i];
            }
            if (last < 0 && in_head == keep) last = keep - 1; /* rounding left the target unreached: all of it */
        }
        TD_SYNC();
        const int32_t j = last;
        if (j < 0) {
            undecided = true; /* the target lies below the head */
        } else {
            double b = 0.0;
            for (int32_t i = i0; i < i0 + PER && i < j; i++) b += e[i];
            b = td_blk_sum_f64(b, shd);
            undecided = !(b < need - band) || (j + 1 < keep && !(b + e[j] >= need + band));
            keep = j + 1;
        }
    }
    if (undecided) {
        if (TD_TID == 0) td_blk_put(o, 0, 0, 0.0f);
        return;
    }
    /* 5. min-p and the draw over the kept head (or the row); rejection's
     * test first */
    if (use_k || use_p) d.cand = head, d.n_cand = keep;
    TD_SYNC();
    if (pl.reject && !td_blk_reject_test(&d, pl.reject_x, pl.reject_skip, pl.reject_u, o, shd, shf, shi)) return;
    td_blk_draw_run(&d, pool.u.near.id, pool.u.near.v, o, shd); /* e is done with */
}

/* ---- a row's score (td_sample_score_row) ---- */

#define TD_BLK_ALT_HEAD 512 /* head for the alternatives: a power of two */

/* The normalizer's sum in sample_norm.h's order: thread t is lane t, and
 * td_blk_sum_f64's butterfly and warp order are the definition's. */
TD_BLK_FN void td_blk_score(const float *row, int32_t n, int32_t target, int32_t n_alt, td_sample_score *o) {
    TD_SHARED uint64_t head[TD_BLK_ALT_HEAD];
    TD_SHARED uint32_t hist[TD_BLK_BINS];
    TD_SHARED double shd[TD_BLK_WARPS + 1];
    TD_SHARED uint32_t shu[TD_BLK_WARPS + 1];
    TD_SHARED float shf[TD_BLK_WARPS + 1];
    TD_SHARED int32_t shi[TD_BLK_WARPS + 1];
    td_blk_counts mine;
    const int32_t arg = td_blk_argmax(row, n, -1, shf, shi, &mine);
    const float mx = td_sample_norm_max_of(arg == INT32_MAX ? -INFINITY : row[arg]);
    double lane = 0.0;
    for (int32_t x = TD_TID; x < n; x += TD_BLK_THREADS) lane += td_sample_norm_term(row[x], mx);
    const double sum = td_blk_sum_f64(lane, shd);
    const uint32_t n_fin = td_blk_sum_u32(mine.fin, shu);
    const uint32_t n_nan = td_blk_sum_u32(mine.nan, shu);
    int32_t hn = 0;
    uint32_t floor_key;
    const bool want_alt = n_alt > 0 && n_alt <= TD_SAMPLE_ALT_MAX && n_nan == 0 && n_fin >= (uint32_t)n_alt;
    if (want_alt) hn = td_blk_head(row, n, TD_BLK_ALT_HEAD, head, hist, shu, &floor_key);
    if (TD_TID == 0) {
        o->sum = sum;
        o->max = mx;
        o->logit = target >= 0 && target < n ? row[target] : 0.0f;
        o->argmax = arg == INT32_MAX ? 0 : arg;
        o->n_alt = want_alt && hn >= n_alt ? n_alt : 0;
        for (int32_t a = 0; a < o->n_alt; a++) {
            o->alt_id[a] = td_blk_id_of_rank(head[a]);
            o->alt_logit[a] = row[o->alt_id[a]];
        }
    }
    TD_SYNC();
}

#endif
