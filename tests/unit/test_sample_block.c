/* test_sample_block.c — the device sampler's block code
 * (common/cuda/cuda_sample_block.h) run on the host: 256 threads stand in
 * for a CUDA block (a barrier for __syncthreads, shuffles through an array
 * between two barriers, atomics for shared-memory atomics), so the kernel's
 * logic is checked on every machine, GPU or not. Its summaries must be
 * td_sample_summarize's wherever both decide, its decided picks
 * td_sampler_pick's, and the same from run to run although the threads race
 * differently each time.
 */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "test_cases.h"

#include "sample/sample.h"
#include "sample/sample_norm.h"

/* ---- the stand-in block: its barrier and its shuffle lanes ---- */
typedef struct emu_block {
    pthread_barrier_t bar;
    double f64[256];
    float f32[256];
    uint32_t u32[256];
    int32_t i32[256];
} emu_block;
static emu_block emu;
static _Thread_local int32_t emu_tid;

static void emu_sync(void) {
    pthread_barrier_wait(&emu.bar);
}

#define EMU_SHUFFLES(T, name)                                                  \
    static T emu_xor_##name(T v, int o) {                                      \
        emu.name[emu_tid] = v;                                                 \
        emu_sync();                                                            \
        T r = emu.name[emu_tid ^ o];                                           \
        emu_sync();                                                            \
        return r;                                                              \
    }                                                                          \
    static T emu_up_##name(T v, int o) {                                       \
        emu.name[emu_tid] = v;                                                 \
        emu_sync();                                                            \
        T r = (emu_tid & 31) >= o ? emu.name[emu_tid - o] : v;                 \
        emu_sync();                                                            \
        return r;                                                              \
    }
EMU_SHUFFLES(double, f64)
EMU_SHUFFLES(float, f32)
EMU_SHUFFLES(uint32_t, u32)
EMU_SHUFFLES(int32_t, i32)

#define TD_BLK_FN static inline
#define TD_SHARED static
#define TD_ALIGN16 _Alignas(16)
#define TD_TID emu_tid
#define TD_SYNC() emu_sync()
#define TD_SHFL_XOR(v, o) \
    _Generic((v), double: emu_xor_f64, float: emu_xor_f32, uint32_t: emu_xor_u32, int32_t: emu_xor_i32)((v), (o))
#define TD_SHFL_UP(v, o) \
    _Generic((v), double: emu_up_f64, float: emu_up_f32, uint32_t: emu_up_u32, int32_t: emu_up_i32)((v), (o))
#define TD_ATOMIC_ADD(p, v) __atomic_fetch_add((p), (v), __ATOMIC_SEQ_CST)
#include "cuda/cuda_sample_block.h"

typedef struct {
    const float *row;
    int32_t n;
    const td_sample_plan *pl; /* a summary, or (NULL) a score: */
    td_sample_summary *out;
    int32_t target, n_alt;
    td_sample_score *score;
    int32_t tid;
} emu_arg;

static void *emu_thread(void *p) {
    const emu_arg *a = p;
    emu_tid = a->tid;
    if (a->pl) td_blk_summarize(a->row, a->n, a->pl, a->out);
    else td_blk_score(a->row, a->n, a->target, a->n_alt, a->score);
    return NULL;
}

/* One block over one row. */
static void block_run(emu_arg arg) {
    pthread_t th[TD_BLK_THREADS];
    emu_arg args[TD_BLK_THREADS];
    pthread_attr_t attr;
    assert_int_equal(pthread_attr_init(&attr), 0);
    assert_int_equal(pthread_attr_setstacksize(&attr, 256 * 1024), 0);
    assert_int_equal(pthread_barrier_init(&emu.bar, NULL, TD_BLK_THREADS), 0);
    for (int i = 0; i < TD_BLK_THREADS; i++) {
        args[i] = arg;
        args[i].tid = i;
        assert_int_equal(pthread_create(&th[i], &attr, emu_thread, &args[i]), 0);
    }
    for (int i = 0; i < TD_BLK_THREADS; i++) pthread_join(th[i], NULL);
    pthread_barrier_destroy(&emu.bar);
    pthread_attr_destroy(&attr);
}

static void block_summarize(const td_sample_plan *pl, const float *row, int32_t n, td_sample_summary *out) {
    memset(out, 0xA5, sizeof *out); /* thread 0 must write all of what counts */
    block_run((emu_arg){.row = row, .n = n, .pl = pl, .out = out});
}

static void block_score(const float *row, int32_t n, int32_t target, int32_t n_alt, td_sample_score *out) {
    memset(out, 0xA5, sizeof *out);
    block_run((emu_arg){.row = row, .n = n, .target = target, .n_alt = n_alt, .score = out});
}

/* ---- rows ---- */

static uint64_t rng_next(uint64_t *st) {
    *st ^= *st >> 12;
    *st ^= *st << 25;
    *st ^= *st >> 27;
    return *st * 0x2545f4914f6cdd1dULL;
}
static double rng_unit(uint64_t *st) { return (double)(rng_next(st) >> 11) * 0x1p-53; }

/* kind 0 spread out, 1 on a 0.25 grid (ties everywhere), 2 with NaN and
 * -inf sprinkled in, 3 peaked */
static void make_row(float *l, int n, int kind, uint64_t seed) {
    uint64_t st = seed * 0x9e3779b97f4a7c15ULL + 3;
    for (int i = 0; i < n; i++) {
        double g = rng_unit(&st) + rng_unit(&st) + rng_unit(&st) - 1.5;
        l[i] = (float)(6.0 * g);
        if (kind == 1) l[i] = floorf(l[i] * 4.0f) / 4.0f;
        if (kind == 2 && rng_unit(&st) < 0.05) l[i] = rng_unit(&st) < 0.5 ? NAN : -INFINITY;
    }
    if (kind == 3) l[rng_next(&st) % (uint64_t)n] = 25.0f;
}

static bool same_summary(const td_sample_summary *a, const td_sample_summary *b) {
    if (a->n != b->n) return false;
    for (int i = 0; i < a->n; i++)
        if (a->id[i] != b->id[i] || memcmp(&a->logit[i], &b->logit[i], sizeof(float)) != 0) return false;
    return true;
}

/* The block against the host definition and the sampler, over sizes below
 * and above the head (2,048), four kinds of row and the filters. */
static void block_matches_definition(void **state) {
    (void)state;
    static const int sizes[] = {300, 5000};
    static const float temps[] = {0.0f, 0.7f, 1.5f};
    static const int32_t ks[] = {0, 5, 3000};
    static const float ps[] = {1.0f, 0.9f, 0.5f};
    float *l = malloc(5000 * sizeof *l);
    assert_non_null(l);
    int decided = 0, both = 0, short_head = 0, cases = 0, tops = 0;
    for (int si = 0; si < 2; si++)
        for (int kind = 0; kind < 4; kind++) {
            const int n = sizes[si];
            make_row(l, n, kind, (uint64_t)(si * 10 + kind));
            for (int a = 0; a < 3; a++)
                for (int b = 0; b < 3; b++)
                    for (int c = 0; c < 3; c++) {
                        if (a == 0 && (b || c)) continue; /* greedy ignores the filters */
                        td_sample_params p = td_sample_defaults();
                        p.temperature = temps[a], p.top_k = ks[b], p.top_p = ps[c];
                        p.min_p = (b + c) % 2 ? 0.05f : 0.0f;
                        p.seed = (uint64_t)(kind * 7 + c);
                        const int64_t pos = 11 + b;
                        td_sample_plan pl;
                        assert_true(td_sample_plan_make(&p, pos, &pl));
                        pl.n_top = (a + b + c) % 3 == 0 ? 0 : (a + b + c) % 3 == 1 ? 1 : TD_SAMPLE_TOP_MAX;
                        td_sample_summary blk, host;
                        block_summarize(&pl, l, n, &blk);
                        assert_int_equal(td_sample_summarize(&pl, l, n, &host), TD_OK);
                        cases++;
                        /* the observations: the host's where the block gives them; the
                         * block gives them wherever the host does on these rows */
                        assert_int_equal(blk.n_top, host.n_top);
                        assert_memory_equal(blk.top, host.top, (size_t)host.n_top * sizeof(int32_t));
                        tops += host.n_top > 0;
                        if (blk.n == 0) {
                            /* only where the answer lies below the head */
                            if (host.n != 0) {
                                assert_true(n > TD_BLK_HEAD);
                                short_head++;
                            }
                            continue;
                        }
                        td_sampler *smp = td_sampler_create(&p, n, NULL);
                        assert_non_null(smp);
                        const int32_t want = td_sampler_pick(smp, l, pos, NULL, 0);
                        td_sampler_destroy(smp);
                        if (td_sample_summary_pick(&pl, &blk) != want)
                            fail_msg("n %d kind %d T %g k %d p %g: block picks %d, sampler %d", n, kind,
                                     (double)p.temperature, p.top_k, (double)p.top_p,
                                     td_sample_summary_pick(&pl, &blk), want);
                        decided++;
                        if (host.n > 0) {
                            assert_true(same_summary(&blk, &host));
                            both++;
                        }
                    }
        }
    fprintf(stderr, "# %d rows: %d decided by the block (%d as the host decided), %d left below its head, %d with "
            "observations\n", cases, decided, both, short_head, tops);
    assert_true(tops > 30);
    assert_true(short_head > 0);          /* top-k 3000 on 5000 tokens reaches below the head */
    assert_true(decided >= cases - 2 * 4 * 3); /* and little else does */
    free(l);
}

/* The same row gives the same summary although the threads race
 * differently; rows the host's rule keeps to itself stay undecided. */
static void block_is_repeatable(void **state) {
    (void)state;
    enum { N = 4000 };
    float *l = malloc(N * sizeof *l);
    assert_non_null(l);
    make_row(l, N, 1, 99); /* ties: the head's order must come from the sort, not the race */
    td_sample_params p = td_sample_defaults();
    p.temperature = 1.0f, p.top_k = 40, p.top_p = 0.9f, p.seed = 5;
    td_sample_plan pl;
    assert_true(td_sample_plan_make(&p, 3, &pl));
    td_sample_summary first, again;
    block_summarize(&pl, l, N, &first);
    assert_true(first.n > 0);
    for (int r = 0; r < 3; r++) {
        block_summarize(&pl, l, N, &again);
        assert_true(same_summary(&first, &again));
    }
    /* three noisy scores within the margin of each other (as in
     * test_sample's near-tie rows): all three come back, in id order */
    for (uint64_t seed = 1;; seed++) {
        bool ok = true;
        for (int i = 0; i < N; i++) l[i] = -40.0f;
        for (int i = 0; i < 3 && ok; i++) {
            double want = td_sample_gumbel(seed, 3, 0) - td_sample_gumbel(seed, 3, i);
            l[i] = (float)want;
            ok = fabs((double)l[i] - want) < 1e-8;
        }
        if (ok) {
            p.seed = seed;
            break;
        }
    }
    p.top_k = 0, p.top_p = 1.0f;
    assert_true(td_sample_plan_make(&p, 3, &pl));
    td_sample_summary host;
    block_summarize(&pl, l, N, &again);
    assert_int_equal(td_sample_summarize(&pl, l, N, &host), TD_OK);
    assert_int_equal(again.n, 3);
    assert_true(same_summary(&again, &host));
    /* 3,000 equal logits, no filters: most noisy scores survive the bound,
     * more than the block keeps aside, so it reads the row a second time */
    for (int i = 0; i < N; i++) l[i] = i < 3000 ? 0.5f : -INFINITY;
    p = td_sample_defaults();
    p.temperature = 1.0f, p.seed = 8;
    assert_true(td_sample_plan_make(&p, 3, &pl));
    block_summarize(&pl, l, N, &again);
    assert_int_equal(td_sample_summarize(&pl, l, N, &host), TD_OK);
    assert_true(again.n > 0);
    assert_true(same_summary(&again, &host));
    td_sampler *smp = td_sampler_create(&p, N, NULL);
    assert_non_null(smp);
    assert_int_equal(td_sample_summary_pick(&pl, &again), td_sampler_pick(smp, l, 3, NULL, 0));
    td_sampler_destroy(smp);
    /* a flat row of 4,000 distinct logits with top-p 0.999: the boundary lies
     * below the 2,048-token head, so the block leaves it to the row */
    for (int i = 0; i < N; i++) l[i] = -0.001f * (float)i;
    p.top_p = 0.999f;
    assert_true(td_sample_plan_make(&p, 3, &pl));
    block_summarize(&pl, l, N, &again);
    assert_int_equal(td_sample_summarize(&pl, l, N, &host), TD_OK);
    assert_true(host.n > 0);
    assert_int_equal(again.n, 0);
    l[17] = INFINITY;
    block_summarize(&pl, l, N, &again);
    assert_int_equal(again.n, 0);
    for (int i = 0; i < N; i++) l[i] = i % 2 ? NAN : -INFINITY;
    block_summarize(&pl, l, N, &again);
    assert_int_equal(again.n, 1);
    assert_int_equal(again.id[0], 0);
    free(l);
}

/* Rejection plans: the block's summary is the host's wherever both decide
 * (the verdict included: the block's z is td_sampler_reject's double), its
 * decided outcome is td_sampler_reject's, over proposals that are the top
 * token (so the residual's bound comes from elsewhere), the runner-up, any
 * token and none. */
static void block_rejects_match_definition(void **state) {
    (void)state;
    static const float temps[] = {0.0f, 0.8f, 1.0f};
    static const int32_t ks[] = {0, 40};
    static const float ps[] = {1.0f, 0.9f};
    float *l = malloc(5000 * sizeof *l);
    assert_non_null(l);
    int cases = 0, decided = 0, accepted = 0, top_rejected = 0, short_head = 0;
    for (int si = 0; si < 2; si++)
        for (int kind = 0; kind < 4; kind++) {
            const int n = si ? 5000 : 300;
            make_row(l, n, kind, (uint64_t)(si * 10 + kind + 40));
            int32_t best[2];
            td_sample_top_ids(l, n, best, 2);
            for (int a = 0; a < 3; a++)
                for (int b = 0; b < 2; b++)
                    for (int c = 0; c < 2; c++) {
                        if (a == 0 && (b || c)) continue;
                        td_sample_params p = td_sample_defaults();
                        p.temperature = temps[a], p.top_k = ks[b], p.top_p = ps[c];
                        p.min_p = (kind + c) % 2 ? 0.05f : 0.0f;
                        p.seed = (uint64_t)(kind * 5 + b);
                        const int e = (a + b + c + kind) % 4;
                        const int32_t x = e == 0 ? best[0] : e == 1 ? best[1] : e == 2 ? -1 : (n * 3 / 7);
                        const double u = (si + c) % 2 ? 0.02 : 0.6;
                        const int64_t pos = 7 + a;
                        td_sample_plan pl;
                        assert_true(td_sample_plan_make_reject(&p, pos, x, u, 1234, a == 2 && b == 1, &pl));
                        td_sample_summary blk, host;
                        block_summarize(&pl, l, n, &blk);
                        assert_int_equal(td_sample_summarize(&pl, l, n, &host), TD_OK);
                        cases++;
                        if (blk.n == 0) {
                            if (host.n != 0) {
                                assert_true(n > TD_BLK_HEAD);
                                short_head++;
                            }
                            continue;
                        }
                        bool acc_b, acc_w;
                        const int32_t got = td_sample_summary_reject(&pl, &blk, &acc_b);
                        td_sampler *smp = td_sampler_create(&p, n, NULL);
                        assert_non_null(smp);
                        const int32_t want = td_sampler_reject(smp, l, NULL, 0, pos, x, u, 1234, a == 2 && b == 1, &acc_w);
                        td_sampler_destroy(smp);
                        if (got != want || acc_b != acc_w)
                            fail_msg("n %d kind %d T %g k %d p %g x %d u %g: block %d/%d, sampler %d/%d", n, kind,
                                     (double)p.temperature, p.top_k, (double)p.top_p, x, u, got, acc_b, want, acc_w);
                        assert_int_equal(host.n > 0, 1);
                        assert_true(same_summary(&blk, &host));
                        assert_int_equal(blk.accepted, host.accepted);
                        decided++;
                        accepted += acc_w;
                        top_rejected += !acc_w && x == best[0] && p.temperature > 0.0f;
                    }
        }
    fprintf(stderr, "# %d rejection rows: %d decided by the block (%d accepted, %d rejections of the top), %d left "
            "below its head\n", cases, decided, accepted, top_rejected, short_head);
    assert_true(decided >= cases - 8);
    assert_true(accepted >= 5 && decided - accepted >= 5 && top_rejected >= 2);
    /* the top rejected with no filters: the bound comes from the best other
     * token (a second argmax); 3,000 equal logits make the block read the
     * row twice; nothing finite: token 0 */
    enum { N = 4000 };
    float *w = malloc(N * sizeof *w);
    assert_non_null(w);
    for (int i = 0; i < N; i++) w[i] = i < 3000 ? 0.5f : -INFINITY;
    w[3] = 0.75f;
    td_sample_params p = td_sample_defaults();
    p.temperature = 1.0f, p.seed = 8;
    td_sample_plan pl;
    td_sample_summary blk, host;
    for (int r = 0; r < 3; r++) {
        const int32_t x = r == 0 ? 3 : r == 1 ? 10 : -1;
        assert_true(td_sample_plan_make_reject(&p, 3, x, 0.999, 55, false, &pl));
        block_summarize(&pl, w, N, &blk);
        assert_int_equal(td_sample_summarize(&pl, w, N, &host), TD_OK);
        assert_true(blk.n > 0);
        assert_true(same_summary(&blk, &host));
        bool acc_b, acc_w;
        td_sampler *smp = td_sampler_create(&p, N, NULL);
        assert_non_null(smp);
        assert_int_equal(td_sample_summary_reject(&pl, &blk, &acc_b),
                         td_sampler_reject(smp, w, NULL, 0, 3, x, 0.999, 55, false, &acc_w));
        td_sampler_destroy(smp);
        assert_false(acc_b);
        assert_false(acc_w);
    }
    /* u at p(x) to the bit (T 1, no filters: p(x) from td_sample_norm_sum):
     * the block's verdict is the sampler's on both sides */
    for (int r = 0, seed = 70; r < 3; r++) {
        /* rows whose z libm's exp would round differently, so that the
         * check can see a block that used it */
        float m;
        double z, z_libm;
        do {
            make_row(w, N, 0, (uint64_t)seed++);
            z = td_sample_norm_sum(w, N, &m);
            double lane[TD_SAMPLE_NORM_LANES] = {0};
            for (int i = 0; i < N; i++) lane[i % TD_SAMPLE_NORM_LANES] += exp((double)w[i] - m);
            z_libm = td_sample_norm_sum_lanes(lane);
        } while (z == z_libm && seed < 2000);
        assert_true(z != z_libm);
        const int32_t x = 100 * r + 1;
        const double px = td_sample_exp((double)w[x] - m) / z;
        for (int side = 0; side < 2; side++) {
            assert_true(td_sample_plan_make_reject(&p, 3, x, side ? px : nextafter(px, 0.0), 55, false, &pl));
            block_summarize(&pl, w, N, &blk);
            assert_int_equal(blk.accepted, side == 0);
            assert_true(blk.n > 0);
        }
    }
    for (int i = 0; i < N; i++) w[i] = -INFINITY;
    assert_true(td_sample_plan_make_reject(&p, 3, 0, 0.5, 55, false, &pl));
    block_summarize(&pl, w, N, &blk);
    assert_int_equal(blk.n, 1);
    assert_int_equal(blk.id[0], 0);
    assert_int_equal(blk.accepted, 1);
    free(w);
    free(l);
}

/* ---- scores ---- */

/* Bit for bit, what the row's score holds (alternatives: as many as both
 * give, from the first). */
static void assert_same_score(const td_sample_score *a, const td_sample_score *b, const char *what) {
    if (memcmp(&a->sum, &b->sum, sizeof a->sum) != 0 && !(isnan(a->sum) && isnan(b->sum)))
        fail_msg("%s: sums %.17g and %.17g", what, a->sum, b->sum);
    if (memcmp(&a->max, &b->max, sizeof a->max) != 0) fail_msg("%s: max %g and %g", what, (double)a->max, (double)b->max);
    if (memcmp(&a->logit, &b->logit, sizeof a->logit) != 0 && !(isnan(a->logit) && isnan(b->logit)))
        fail_msg("%s: target logits %g and %g", what, (double)a->logit, (double)b->logit);
    if (a->argmax != b->argmax) fail_msg("%s: argmax %d and %d", what, a->argmax, b->argmax);
    const int32_t m = a->n_alt < b->n_alt ? a->n_alt : b->n_alt;
    for (int32_t i = 0; i < m; i++)
        if (a->alt_id[i] != b->alt_id[i] || memcmp(&a->alt_logit[i], &b->alt_logit[i], sizeof(float)) != 0)
            fail_msg("%s: alternative %d: %d and %d", what, i, a->alt_id[i], b->alt_id[i]);
}

/* The block's score is td_sample_score_row's bit for bit: the sum in the
 * definition's order (256 lanes, butterflies, warps in turn), the max, the
 * target's logit (none: -1, or past the row), the argmax and 0, 1, 7 or 20
 * alternatives, over sizes around a lane round and the default vocabulary,
 * and rows with ties, NaN, -inf, +inf and signed zeros. NaN sums are equal
 * as NaN: their sign and payload are no promise. */
static void block_scores_match_definition(void **state) {
    (void)state;
    static const int sizes[] = {1, 31, 256, 300, 5000, 49152};
    float *l = malloc(49152 * sizeof *l);
    assert_non_null(l);
    int cases = 0, alts = 0, nans = 0;
    for (int si = 0; si < 6; si++)
        for (int kind = 0; kind < 7; kind++) {
            const int n = sizes[si];
            make_row(l, n, kind < 4 ? kind : 0, (uint64_t)(si * 10 + kind));
            if (kind == 4) l[n / 2] = INFINITY;                               /* the sum is NaN */
            if (kind == 5) for (int i = 0; i < n; i++) l[i] = -INFINITY;      /* so is it here */
            if (kind == 6) for (int i = 0; i < n; i++) l[i] = i % 251 ? -1.0f : ((i / 251) % 2 ? 0.0f : -0.0f); /* zeros on top, -0 first */
            static const int32_t asked[] = {0, 1, 7, TD_SAMPLE_ALT_MAX};
            for (int ai = 0; ai < 4; ai++) {
                const int32_t n_alt = asked[ai];
                /* a target in the row, and none: -1 and past the end */
                const int32_t target =
                    ai == 1 ? -1 : ai == 2 ? n : (int32_t)((uint32_t)(kind * 7919 + ai) % (uint32_t)n);
                td_sample_score blk, host;
                block_score(l, n, target, n_alt, &blk);
                td_sample_score_row(l, n, target, n_alt, &host);
                char what[64];
                snprintf(what, sizeof what, "n %d kind %d alt %d", n, kind, n_alt);
                assert_same_score(&blk, &host, what);
                if (blk.n_alt != host.n_alt) fail_msg("%s: %d and %d alternatives", what, blk.n_alt, host.n_alt);
                cases++;
                alts += host.n_alt > 0;
                nans += isnan(host.sum);
            }
        }
    fprintf(stderr, "# %d scores equal bit for bit, %d with alternatives, %d with a NaN sum\n", cases, alts, nans);
    assert_true(alts > 40);
    assert_true(nans > 10);
    free(l);
}

/* A score is the same from run to run; where more than the block's head of
 * logits tie at the top it leaves the alternatives to the row, and nothing
 * else changes. */
static void block_scores_repeat_and_crowd(void **state) {
    (void)state;
    enum { N = 6000 };
    float *l = malloc(N * sizeof *l);
    assert_non_null(l);
    make_row(l, N, 1, 7); /* a 0.25 grid: ties everywhere */
    td_sample_score first, again, host;
    block_score(l, N, 5, TD_SAMPLE_ALT_MAX, &first);
    assert_int_equal(first.n_alt, TD_SAMPLE_ALT_MAX);
    for (int r = 0; r < 3; r++) {
        block_score(l, N, 5, TD_SAMPLE_ALT_MAX, &again);
        assert_same_score(&again, &first, "again");
    }
    for (int i = 0; i < N; i++) l[i] = i % 5 ? -3.0f - (float)i * 1e-3f : 2.0f; /* 1,200 tied at the top */
    block_score(l, N, 10, 5, &again);
    td_sample_score_row(l, N, 10, 5, &host);
    assert_int_equal(host.n_alt, 5);
    assert_int_equal(again.n_alt, 0);
    assert_same_score(&again, &host, "crowded");
    free(l);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(block_matches_definition),
        cmocka_unit_test(block_is_repeatable),
        cmocka_unit_test(block_rejects_match_definition),
        cmocka_unit_test(block_scores_match_definition),
        cmocka_unit_test(block_scores_repeat_and_crowd),
    };
    struct CMUnitTest kept[sizeof tests / sizeof tests[0]]; /* TD_TEST_FILTER, TD_TEST_SKIP: test_cases.h */
    return test_cases_run("test_sample_block", tests, sizeof tests / sizeof tests[0], kept, NULL, NULL);
}
