/* test_sample.c — unit tests for common/sample: parameter checks, greedy,
 * keyed determinism, that pick() draws from exactly td_sampler_probs (chi-
 * square, with proof the test can fail), each filter's defining property,
 * repetition penalty, NaN/inf logits. Every random input comes from fixed
 * seeds, so no test can flake.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sample/sample.h"
#include "sample/sample_norm.h"

/* ---- helpers ---- */

/* Test-local generator (xorshift64*) for logits; the state is passed in. */
static uint64_t rng_next(uint64_t *st) {
    *st ^= *st >> 12;
    *st ^= *st << 25;
    *st ^= *st >> 27;
    return *st * 0x2545f4914f6cdd1dULL;
}
static double rng_unit(uint64_t *st) { return (double)(rng_next(st) >> 11) * 0x1p-53; }

static void fill_logits(float *l, int n, uint64_t seed, float lo, float hi) {
    uint64_t st = seed * 0x9e3779b97f4a7c15ULL + 1;
    for (int i = 0; i < n; i++)
        l[i] = lo + (hi - lo) * (float)rng_unit(&st);
}

static td_sampler *make(td_sample_params p, int n) {
    td_sampler *s = td_sampler_create(&p, n, NULL);
    assert_non_null(s);
    return s;
}

static td_sample_params tempered(float t, uint64_t seed) {
    td_sample_params p = td_sample_defaults();
    p.temperature = t;
    p.seed = seed;
    return p;
}

/* softmax(l / t) in double, for checking filters against first principles. */
static void softmax(const float *l, int n, double t, double *out) {
    double m = -INFINITY, z = 0.0;
    for (int i = 0; i < n; i++)
        m = fmax(m, l[i] / t);
    for (int i = 0; i < n; i++)
        z += out[i] = exp(l[i] / t - m);
    for (int i = 0; i < n; i++)
        out[i] /= z;
}

/* Chi-square critical values at a 1e-6 false-positive rate, by degrees of
 * freedom (computed from the regularised incomplete gamma function). With
 * fixed seeds the tests are deterministic anyway; the tiny rate means a
 * correct sampler passes for essentially any seed choice. */
static const double chi2_crit_1e6[] = {0, 23.93, 27.63, 30.66, 33.38, 35.89, 38.26, 40.52};

static double chi_square(const long *counts, const double *expect_p, int n, long total,
                         int *dof) {
    double x2 = 0.0;
    int k = 0;
    *dof = 0;
    for (int i = 0; i < n; i++) {
        if (expect_p[i] <= 0.0) {
            if (counts[i] > 0)
                return INFINITY; /* a draw outside the support */
            continue;
        }
        double e = expect_p[i] * (double)total;
        x2 += ((double)counts[i] - e) * ((double)counts[i] - e) / e;
        k++;
    }
    *dof = k - 1;
    assert_true(*dof >= 1 && *dof <= 7); /* the table's range */
    return x2;
}

/* ---- parameters ---- */

static void test_defaults_valid(void **state) {
    (void)state;
    td_sample_params p = td_sample_defaults();
    assert_true(p.temperature == 0.0f && p.top_k == 0 && p.top_p == 1.0f && p.min_p == 0.0f &&
                p.repeat_penalty == 1.0f && p.repeat_last_n == 64 && p.seed == 0);
    td_err err = {0};
    assert_int_equal(td_sample_validate(&p, &err), TD_OK);
    assert_int_equal(td_sample_validate(&p, NULL), TD_OK);
}

static void expect_reject(td_sample_params p, const char *name, const char *value) {
    td_err err = {0};
    assert_int_equal(td_sample_validate(&p, &err), TD_E_ARG);
    assert_non_null(strstr(err.msg, name));
    assert_non_null(strstr(err.msg, value));
    assert_null(td_sampler_create(&p, 16, NULL));
}

static void test_validate_rejects(void **state) {
    (void)state;
    td_sample_params d = td_sample_defaults(), p;
    p = d; p.temperature = -0.5f;          expect_reject(p, "temperature", "-0.5");
    p = d; p.temperature = NAN;            expect_reject(p, "temperature", "nan");
    p = d; p.temperature = INFINITY;       expect_reject(p, "temperature", "inf");
    p = d; p.top_k = -3;                   expect_reject(p, "top_k", "-3");
    p = d; p.top_p = 0.0f;                 expect_reject(p, "top_p", "0");
    p = d; p.top_p = 1.5f;                 expect_reject(p, "top_p", "1.5");
    p = d; p.top_p = NAN;                  expect_reject(p, "top_p", "nan");
    p = d; p.min_p = -0.25f;               expect_reject(p, "min_p", "-0.25");
    p = d; p.min_p = 1.25f;                expect_reject(p, "min_p", "1.25");
    p = d; p.min_p = NAN;                  expect_reject(p, "min_p", "nan");
    p = d; p.repeat_penalty = 0.0f;        expect_reject(p, "repeat_penalty", "0");
    p = d; p.repeat_penalty = -1.0f;       expect_reject(p, "repeat_penalty", "-1");
    p = d; p.repeat_penalty = INFINITY;    expect_reject(p, "repeat_penalty", "inf");
    p = d; p.repeat_last_n = -2;           expect_reject(p, "repeat_last_n", "-2");
    assert_int_equal(td_sample_validate(NULL, NULL), TD_E_ARG);

    /* Boundaries that are allowed. */
    p = d; p.top_p = 1.0f; p.min_p = 1.0f; p.repeat_last_n = 0; p.temperature = 0.0f;
    p.repeat_penalty = 0.01f;
    assert_int_equal(td_sample_validate(&p, NULL), TD_OK);
}

static void test_create_and_set_params(void **state) {
    (void)state;
    assert_null(td_sampler_create(NULL, 0, NULL));
    assert_null(td_sampler_create(NULL, -5, NULL));
    td_sampler *s = td_sampler_create(NULL, 8, NULL); /* NULL = defaults: greedy */
    assert_non_null(s);
    float l[8] = {0, 1, 7, 3, 7, 2, 1, 0};
    assert_int_equal(td_sampler_pick(s, l, 0, NULL, 0), 2);

    td_err err = {0};
    td_sample_params bad = td_sample_defaults();
    bad.top_p = 2.0f;
    assert_int_equal(td_sampler_set_params(s, &bad, &err), TD_E_ARG);
    assert_non_null(strstr(err.msg, "top_p"));
    assert_int_equal(td_sampler_pick(s, l, 0, NULL, 0), 2); /* old params kept */
    td_sample_params p = tempered(1.0f, 5);
    p.top_k = 1;
    assert_int_equal(td_sampler_set_params(s, &p, &err), TD_OK);
    assert_int_equal(td_sampler_pick(s, l, 0, NULL, 0), 2);
    assert_int_equal(td_sampler_set_params(NULL, &p, NULL), TD_E_ARG);
    td_sampler_destroy(s);
    td_sampler_destroy(NULL);
}

/* ---- greedy ---- */

static void test_greedy(void **state) {
    (void)state;
    enum { N = 1000 };
    static float l[N];
    float probs[N];
    td_sampler *s = make(td_sample_defaults(), N);
    for (uint64_t k = 0; k < 20; k++) {
        fill_logits(l, N, k, -10, 10);
        int best = 0;
        for (int i = 1; i < N; i++)
            if (l[i] > l[best])
                best = i;
        for (int64_t pos = 0; pos < 5; pos++)
            assert_int_equal(td_sampler_pick(s, l, pos, NULL, 0), best);
        td_sampler_probs(s, l, NULL, 0, probs);
        for (int i = 0; i < N; i++)
            assert_true(probs[i] == (i == best ? 1.0f : 0.0f));
    }
    /* Ties go to the lowest id, whatever the seed or position. */
    for (int i = 0; i < N; i++)
        l[i] = (float)(i % 7);
    td_sample_params p = td_sample_defaults();
    for (uint64_t seed = 0; seed < 4; seed++) {
        p.seed = seed;
        td_sampler *t = make(p, N);
        assert_int_equal(td_sampler_pick(t, l, (int64_t)seed * 11, NULL, 0), 6);
        td_sampler_destroy(t);
    }
    for (int i = 0; i < N; i++)
        l[i] = 0.0f;
    assert_int_equal(td_sampler_pick(s, l, 3, NULL, 0), 0);
    td_sampler_destroy(s);
}

/* ---- keyed randomness ---- */

static void test_noise(void **state) {
    (void)state;
    double sum = 0.0;
    int n = 0;
    for (uint64_t seed = 0; seed < 4; seed++)
        for (int64_t pos = -2; pos < 50; pos++)
            for (uint64_t salt = 0; salt < 200; salt++) {
                double u = td_sample_uniform(seed, pos, salt);
                assert_true(u > 0.0 && u < 1.0);
                assert_true(u == td_sample_uniform(seed, pos, salt));
                sum += u;
                n++;
            }
    assert_true(fabs(sum / n - 0.5) < 0.01);
    /* Neighbouring keys give unrelated values. */
    assert_true(td_sample_uniform(1, 2, 3) != td_sample_uniform(1, 2, 4));
    assert_true(td_sample_uniform(1, 2, 3) != td_sample_uniform(1, 3, 3));
    assert_true(td_sample_uniform(1, 2, 3) != td_sample_uniform(2, 2, 3));
    for (int32_t t = 0; t < 1000; t++) {
        double g = td_sample_gumbel(9, 4, t);
        assert_true(isfinite(g));
        assert_true(g == -log(-log(td_sample_uniform(9, 4, (uint64_t)t))));
    }
    /* Gumbel(0,1) has mean Euler–Mascheroni gamma = 0.5772. */
    double gs = 0.0;
    for (int32_t t = 0; t < 200000; t++)
        gs += td_sample_gumbel(17, 1, t);
    assert_true(fabs(gs / 200000 - 0.5772156649) < 0.01);
}

static void test_keyed_determinism(void **state) {
    (void)state;
    enum { N = 500, P = 200 };
    static float l[N];
    fill_logits(l, N, 42, -1, 1); /* near flat: many tokens are likely */
    int32_t a[P], b[P], c[P];
    td_sampler *s1 = make(tempered(1.0f, 1234), N);
    td_sampler *s2 = make(tempered(1.0f, 1234), N);
    td_sampler *s3 = make(tempered(1.0f, 1235), N);
    for (int64_t pos = 0; pos < P; pos++)
        a[pos] = td_sampler_pick(s1, l, pos, NULL, 0);
    /* Another sampler, reverse order, repeated calls: the same tokens. */
    for (int64_t pos = P - 1; pos >= 0; pos--) {
        b[pos] = td_sampler_pick(s2, l, pos, NULL, 0);
        assert_int_equal(td_sampler_pick(s2, l, pos, NULL, 0), b[pos]);
    }
    for (int64_t pos = 0; pos < P; pos++)
        c[pos] = td_sampler_pick(s3, l, pos, NULL, 0);
    assert_memory_equal(a, b, sizeof a);
    int differ_seed = 0, distinct = 0;
    static uint8_t seen[N];
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < P; i++) {
        differ_seed += a[i] != c[i];
        distinct += !seen[a[i]];
        seen[a[i]] = 1;
    }
    assert_true(differ_seed > P * 9 / 10); /* ~1/N chance each to agree */
    assert_true(distinct > P / 2);          /* positions are not correlated */
    td_sampler_destroy(s1);
    td_sampler_destroy(s2);
    td_sampler_destroy(s3);
}

/* pick() prunes tokens by a bound on the noise; it must still equal the plain
 * argmax of logit/T + G(seed, pos, x) that any reference would compute. */
static void test_pick_equals_reference_argmax(void **state) {
    (void)state;
    enum { N = 3000 };
    static float l[N];
    const float temps[] = {0.05f, 0.3f, 1.0f, 2.5f, 40.0f};
    const float spreads[] = {0.5f, 8.0f, 60.0f};
    for (int ti = 0; ti < 5; ti++)
        for (int si = 0; si < 3; si++) {
            fill_logits(l, N, (uint64_t)(ti * 10 + si), -spreads[si], spreads[si]);
            td_sampler *s = make(tempered(temps[ti], 77 + (uint64_t)ti), N);
            for (int64_t pos = 0; pos < 40; pos++) {
                int best = 0;
                double bv = -INFINITY;
                for (int x = 0; x < N; x++) {
                    double v = (double)l[x] / (double)temps[ti] +
                               td_sample_gumbel(77 + (uint64_t)ti, pos, x);
                    if (v > bv) {
                        bv = v;
                        best = x;
                    }
                }
                assert_int_equal(td_sampler_pick(s, l, pos, NULL, 0), best);
            }
            td_sampler_destroy(s);
        }
}

/* The same with filters on: the argmax runs over probs()'s support only. */
static void test_pick_equals_reference_filtered(void **state) {
    (void)state;
    enum { N = 4000 };
    static float l[N], probs[N];
    static double sc[N];
    for (int cfg = 0; cfg < 6; cfg++) {
        td_sample_params p = tempered(cfg % 2 ? 0.7f : 1.6f, 500 + (uint64_t)cfg);
        p.top_k = cfg == 0 ? 50 : cfg == 3 ? 1500 : 0;
        p.top_p = cfg == 1 ? 0.9f : cfg == 3 ? 0.97f : cfg == 4 ? 0.5f : 1.0f;
        p.min_p = cfg == 2 ? 0.02f : cfg == 4 ? 0.001f : 0.0f;
        p.repeat_penalty = cfg == 5 ? 1.3f : 1.0f;
        const int32_t hist[] = {1, 2, 3, 5, 8, 13, 21, 34, 55, 89};
        fill_logits(l, N, 900 + (uint64_t)cfg, -4, 4);
        td_sampler *s = make(p, N);
        td_sampler_probs(s, l, hist, 10, probs);
        /* Penalised in double, as the sampler does: (l / penalty) / T. */
        for (int x = 0; x < N; x++)
            sc[x] = l[x];
        for (int i = 0; i < 10; i++)
            sc[hist[i]] = sc[hist[i]] > 0 ? sc[hist[i]] / p.repeat_penalty
                                          : sc[hist[i]] * p.repeat_penalty;
        for (int x = 0; x < N; x++)
            sc[x] /= (double)p.temperature;
        for (int64_t pos = 0; pos < 30; pos++) {
            int best = -1;
            double bv = -INFINITY;
            for (int x = 0; x < N; x++) {
                if (probs[x] == 0.0f)
                    continue;
                double v = sc[x] + td_sample_gumbel(p.seed, pos, x);
                if (v > bv) {
                    bv = v;
                    best = x;
                }
            }
            assert_int_equal(td_sampler_pick(s, l, pos, hist, 10), best);
        }
        td_sampler_destroy(s);
    }
}

/* The noise tail: a token far below the top can still win when its Gumbel
 * value is extreme; pruning must not lose it. Positions are searched for a
 * token-1 Gumbel value 15 above token 0's (about one in 3 million), then the
 * logits are set so that token 1 wins by 0.5. */
static void test_extreme_noise_wins(void **state) {
    (void)state;
    const uint64_t seed = 31337;
    int64_t pos = 0;
    while (td_sample_gumbel(seed, pos, 1) - td_sample_gumbel(seed, pos, 0) <= 15.0)
        pos++;
    double g0 = td_sample_gumbel(seed, pos, 0), g1 = td_sample_gumbel(seed, pos, 1);
    float l[2] = {0.0f, (float)(g0 - g1 + 0.5)};
    assert_true(l[1] < -14.0f);
    td_sampler *s = make(tempered(1.0f, seed), 2);
    assert_int_equal(td_sampler_pick(s, l, pos, NULL, 0), 1);
    l[1] = (float)(g0 - g1 - 0.5); /* now it just loses */
    assert_int_equal(td_sampler_pick(s, l, pos, NULL, 0), 0);
    td_sampler_destroy(s);
}

/* ---- the draw matches td_sampler_probs ---- */

/* Counts draws over positions 0..n_draws-1; pick() re-draws per position. */
static void count_draws(td_sampler *s, const float *l, int n, long n_draws, long *counts) {
    memset(counts, 0, (size_t)n * sizeof *counts);
    for (long pos = 0; pos < n_draws; pos++) {
        int32_t t = td_sampler_pick(s, l, pos, NULL, 0);
        assert_true(t >= 0 && t < n);
        counts[t]++;
    }
}

static void test_chi_square_matches_probs(void **state) {
    (void)state;
    enum { N = 8 };
    const long draws = 200000;
    const float l[N] = {1.2f, -0.3f, 0.4f, 2.0f, -1.5f, 0.9f, 0.0f, -0.8f};
    long counts[N];
    float pf[N];
    double p[N], wrong[N];
    int dof;

    td_sampler *s = make(tempered(0.7f, 2024), N);
    td_sampler_probs(s, l, NULL, 0, pf);
    double sum = 0.0;
    for (int i = 0; i < N; i++)
        sum += p[i] = pf[i];
    assert_true(fabs(sum - 1.0) < 1e-6);
    softmax(l, N, 0.7, wrong); /* probs() is softmax(l/T) when nothing is filtered */
    for (int i = 0; i < N; i++)
        assert_true(fabs(p[i] - wrong[i]) < 1e-6);

    count_draws(s, l, N, draws, counts);
    double x2 = chi_square(counts, p, N, draws, &dof);
    assert_int_equal(dof, 7);
    print_message("chi2 vs probs = %.2f (threshold %.2f)\n", x2, chi2_crit_1e6[dof]);
    assert_true(x2 < chi2_crit_1e6[dof]);

    /* The test can fail: the same counts against a slightly wrong
     * distribution (T = 0.8 instead of 0.7) are far over the threshold... */
    softmax(l, N, 0.8, wrong);
    double x2w = chi_square(counts, wrong, N, draws, &dof);
    print_message("chi2 vs wrong T = %.2f\n", x2w);
    assert_true(x2w > chi2_crit_1e6[dof]);

    /* ...and so are draws from the classic mistake argmax((l + G) / T). */
    long bad[N] = {0};
    for (long pos = 0; pos < draws; pos++) {
        int best = 0;
        double bv = -INFINITY;
        for (int x = 0; x < N; x++) {
            double v = ((double)l[x] + td_sample_gumbel(2024, pos, x)) / 0.7;
            if (v > bv) {
                bv = v;
                best = x;
            }
        }
        bad[best]++;
    }
    double x2b = chi_square(bad, p, N, draws, &dof);
    print_message("chi2 of (l+G)/T draws = %.2f\n", x2b);
    assert_true(x2b > chi2_crit_1e6[dof]);
    td_sampler_destroy(s);
}

/* Same check with every filter on: draws follow probs() on the kept set and
 * never leave it. */
static void test_chi_square_filtered(void **state) {
    (void)state;
    enum { N = 12 };
    const long draws = 100000;
    const float l[N] = {3.0f, 2.6f, 2.5f, 2.2f, 1.9f, 1.5f, 1.0f, 0.2f, -1.0f, 2.4f, 0.5f, -3.0f};
    long counts[N];
    float pf[N];
    double p[N];
    td_sample_params prm = tempered(1.3f, 99);
    prm.top_k = 8;
    prm.top_p = 0.85f;
    prm.min_p = 0.3f;
    td_sampler *s = make(prm, N);
    td_sampler_probs(s, l, NULL, 0, pf);
    int kept = 0;
    for (int i = 0; i < N; i++) {
        p[i] = pf[i];
        kept += pf[i] > 0.0f;
    }
    assert_true(kept >= 3 && kept < 8); /* the filters really cut */
    count_draws(s, l, N, draws, counts);
    int dof;
    double x2 = chi_square(counts, p, N, draws, &dof);
    print_message("filtered: kept %d, chi2 = %.2f (threshold %.2f)\n", kept, x2,
                  chi2_crit_1e6[dof]);
    assert_true(x2 < chi2_crit_1e6[dof]); /* also INFINITY if a draw left the set */
    td_sampler_destroy(s);
}

/* ---- filters ---- */

static int kept_set(td_sampler *s, const float *l, int n, float *probs) {
    td_sampler_probs(s, l, NULL, 0, probs);
    int k = 0;
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        assert_true(probs[i] >= 0.0f);
        k += probs[i] > 0.0f;
        sum += probs[i];
    }
    assert_true(fabs(sum - 1.0) < 1e-5);
    return k;
}

static void test_top_k(void **state) {
    (void)state;
    enum { N = 2000 };
    static float l[N], probs[N];
    fill_logits(l, N, 7, -5, 5);
    for (int i = 0; i < N; i += 10)
        l[i] = 1.0f; /* plenty of ties, some straddling the boundary */
    const int ks[] = {1, 2, 3, 40, 150, 250, 1999, 2000, 5000};
    for (int ki = 0; ki < 9; ki++) {
        td_sample_params p = tempered(1.0f, (uint64_t)ki);
        p.top_k = ks[ki];
        td_sampler *s = make(p, N);
        int k = kept_set(s, l, N, probs);
        assert_int_equal(k, ks[ki] < N ? ks[ki] : N);
        /* Kept = the k best under (logit desc, id asc). */
        for (int a = 0; a < N; a++)
            for (int b = 0; b < N && probs[a] > 0.0f; b += 7)
                if (probs[b] == 0.0f)
                    assert_true(l[a] > l[b] || (l[a] == l[b] && a < b));
        for (int64_t pos = 0; pos < 50; pos++)
            assert_true(probs[td_sampler_pick(s, l, pos, NULL, 0)] > 0.0f);
        td_sampler_destroy(s);
    }
    /* All equal: top-3 keeps ids 0, 1, 2. */
    for (int i = 0; i < N; i++)
        l[i] = 0.5f;
    td_sample_params p = tempered(1.0f, 3);
    p.top_k = 3;
    td_sampler *s = make(p, N);
    assert_int_equal(kept_set(s, l, N, probs), 3);
    assert_true(probs[0] > 0.0f && probs[1] > 0.0f && probs[2] > 0.0f);
    td_sampler_destroy(s);
}

static void test_top_p_smallest_set(void **state) {
    (void)state;
    enum { N = 1500 };
    static float l[N], probs[N];
    static double full[N];
    const float ps[] = {0.01f, 0.2f, 0.5f, 0.9f, 0.95f, 0.999f};
    const float temps[] = {0.5f, 1.0f, 2.0f};
    for (int ti = 0; ti < 3; ti++) {
        fill_logits(l, N, 100 + (uint64_t)ti, -6, 6);
        softmax(l, N, temps[ti], full);
        for (int pi = 0; pi < 6; pi++) {
            td_sample_params p = tempered(temps[ti], 5);
            p.top_p = ps[pi];
            td_sampler *s = make(p, N);
            int k = kept_set(s, l, N, probs);
            assert_true(k >= 1);
            double mass = 0.0, min_kept = 1.0, max_dropped = 0.0;
            for (int i = 0; i < N; i++) {
                if (probs[i] > 0.0f) {
                    mass += full[i];
                    min_kept = fmin(min_kept, full[i]);
                } else {
                    max_dropped = fmax(max_dropped, full[i]);
                }
            }
            /* Enough mass, made of the most likely tokens, and the smallest
             * such set: without its least likely member it falls short. */
            assert_true(mass >= ps[pi] - 1e-9);
            assert_true(min_kept >= max_dropped);
            assert_true(mass - min_kept < ps[pi]);
            /* Renormalised over the kept set, not reshaped. */
            for (int i = 0; i < N; i++)
                if (probs[i] > 0.0f)
                    assert_true(fabs(probs[i] - full[i] / mass) < 1e-5);
            for (int64_t pos = 0; pos < 50; pos++)
                assert_true(probs[td_sampler_pick(s, l, pos, NULL, 0)] > 0.0f);
            td_sampler_destroy(s);
        }
    }
}

/* Large, flat distributions keep thousands of tokens, which exercises the
 * bucket split and the quickselect; the kept set must equal the one a full
 * sort computes. */
typedef struct {
    double key;
    int32_t id;
} keyed;

static int by_key_desc(const void *a, const void *b) {
    const keyed *x = a, *y = b;
    if (x->key != y->key)
        return x->key > y->key ? -1 : 1;
    return x->id < y->id ? -1 : 1;
}

static void test_top_p_matches_full_sort(void **state) {
    (void)state;
    enum { N = 20000, NP = 61 };
    static float l[N], probs[N];
    static double full[N];
    static keyed order[N];
    for (int ti = 0; ti < 2; ti++) {
        fill_logits(l, N, 300 + (uint64_t)ti, ti ? -12.0f : -2.0f, ti ? 12.0f : 2.0f);
        for (int i = 0; i < N - 1; i += 97)
            l[i] = l[i + 1]; /* exact ties, some across the boundary */
        softmax(l, N, 1.0, full);
        for (int i = 0; i < N; i++)
            order[i] = (keyed){full[i], i};
        qsort(order, N, sizeof order[0], by_key_desc);
        td_sampler *s = make(tempered(1.0f, 6), N);
        /* Many p values, so that quickselect pivots land on the boundary. */
        for (int pi = 0; pi < NP; pi++) {
            float top_p = pi < NP - 1 ? (float)((pi + 0.5) / (NP - 1)) : 0.9999f;
            td_sample_params p = tempered(1.0f, 6);
            p.top_p = top_p;
            assert_int_equal(td_sampler_set_params(s, &p, NULL), TD_OK);
            int k = kept_set(s, l, N, probs);
            double cum = 0.0;
            int m = 0;
            while (m < N && cum < top_p)
                cum += order[m++].key;
            assert_int_equal(k, m);
            for (int i = 0; i < m; i++)
                assert_true(probs[order[i].id] > 0.0f);
        }
        td_sampler_destroy(s);
    }
}

static void test_min_p(void **state) {
    (void)state;
    enum { N = 6 };
    /* At T = 1, p(x)/p_max = exp(l - 2): 1, 0.61, 0.37, 0.14, 0.05, 0.018. */
    const float l[N] = {2.0f, 1.5f, 1.0f, 0.0f, -1.0f, -2.0f};
    const float mins[] = {0.0f, 0.01f, 0.1f, 0.3f, 0.5f, 0.99f, 1.0f};
    const int expect_kept[] = {6, 6, 4, 3, 2, 1, 1};
    float probs[N];
    for (int mi = 0; mi < 7; mi++) {
        td_sample_params p = tempered(1.0f, 8);
        p.min_p = mins[mi];
        td_sampler *s = make(p, N);
        int k = kept_set(s, l, N, probs);
        assert_int_equal(k, expect_kept[mi]);
        for (int i = 0; i < N; i++)
            assert_true((probs[i] > 0.0f) == (i < k)); /* the likeliest ones */
        /* Relative weights are unchanged among the kept tokens. */
        if (k >= 2)
            assert_true(fabs(probs[1] / probs[0] - exp(-0.5)) < 1e-5);
        td_sampler_destroy(s);
    }
    /* Temperature comes first: at T = 0.5 the same min_p cuts more. */
    td_sample_params p = tempered(0.5f, 8);
    p.min_p = 0.3f; /* ratios are now exp(2(l - 2)): 1, 0.37, 0.14, ... */
    td_sampler *s = make(p, N);
    assert_int_equal(kept_set(s, l, N, probs), 2);
    td_sampler_destroy(s);
}

/* ---- repetition penalty ---- */

static void test_repetition_penalty(void **state) {
    (void)state;
    enum { N = 8 };
    const float l[N] = {0.5f, 1.0f, 2.0f, -2.0f, 0.0f, 1.5f, -0.5f, 0.25f};
    float probs[N];
    double expect[N];
    td_sample_params p = tempered(1.0f, 1);
    p.repeat_penalty = 2.0f;
    p.repeat_last_n = 4;
    td_sampler *s = make(p, N);
    /* Window = last 4: {2, 3, 2, 4}; 7 is just outside it, -1 and 9999 are
     * out of range and ignored. 2 appears twice but is penalised once. */
    const int32_t hist[] = {-1, 9999, 7, 2, 3, 2, 4};
    td_sampler_probs(s, l, hist, 7, probs);
    float pl[N];
    memcpy(pl, l, sizeof pl);
    pl[2] = 2.0f / 2.0f;  /* positive: divided */
    pl[3] = -2.0f * 2.0f; /* negative: multiplied */
    pl[4] = 0.0f;         /* zero stays zero */
    softmax(pl, N, 1.0, expect);
    for (int i = 0; i < N; i++)
        assert_true(fabs(probs[i] - expect[i]) < 1e-6);

    /* Both directions make a repeated token less likely, also under greedy. */
    td_sample_params g = td_sample_defaults();
    g.repeat_penalty = 2.0f;
    td_sampler *sg = make(g, N);
    const float pos_l[N] = {1.0f, 1.5f, 0, 0, 0, 0, 0, 0};
    const int32_t h1[] = {1};
    assert_int_equal(td_sampler_pick(sg, pos_l, 0, NULL, 0), 1);
    assert_int_equal(td_sampler_pick(sg, pos_l, 0, h1, 1), 0); /* 1.5 -> 0.75 */
    const float neg_l[N] = {-1.0f, -0.8f, -9, -9, -9, -9, -9, -9};
    assert_int_equal(td_sampler_pick(sg, neg_l, 0, NULL, 0), 1);
    assert_int_equal(td_sampler_pick(sg, neg_l, 0, h1, 1), 0); /* -0.8 -> -1.6 */
    /* Calls do not leak into each other (stamps are per call). */
    assert_int_equal(td_sampler_pick(sg, neg_l, 0, NULL, 0), 1);
    /* A penalty below 1 rewards repeats instead. */
    g.repeat_penalty = 0.5f;
    assert_int_equal(td_sampler_set_params(sg, &g, NULL), TD_OK);
    const float up_l[N] = {1.0f, 0.6f, 0, 0, 0, 0, 0, 0};
    assert_int_equal(td_sampler_pick(sg, up_l, 0, h1, 1), 1);
    /* repeat_last_n = 0 turns it off. */
    g.repeat_penalty = 2.0f;
    g.repeat_last_n = 0;
    assert_int_equal(td_sampler_set_params(sg, &g, NULL), TD_OK);
    assert_int_equal(td_sampler_pick(sg, pos_l, 0, h1, 1), 1);
    td_sampler_destroy(sg);
    td_sampler_destroy(s);
}

/* ---- NaN / inf ---- */

/* td_sample_argmax is the greedy pick (the function a device computes in
 * its place), on logits with NaN, both infinities and ties. */
static void test_argmax_is_greedy_pick(void **state) {
    (void)state;
    enum { N = 97 };
    td_sampler *gs = make(td_sample_defaults(), N);
    uint64_t r = 0x5151;
    float lg[N];
    for (int trial = 0; trial < 3000; trial++) {
        for (int i = 0; i < N; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            unsigned k = (unsigned)(r >> 59); /* 0..31 */
            lg[i] = k == 0 ? NAN : k == 1 ? -INFINITY : k == 2 && trial % 7 == 0 ? INFINITY
                  : (float)((int)(r >> 40 & 0xFF) % (trial % 5 + 2)); /* few values: ties */
        }
        if (trial % 11 == 0)
            for (int i = 0; i < N; i++) lg[i] = i % 2 ? NAN : -INFINITY; /* nothing above -inf */
        assert_int_equal(td_sample_argmax(lg, N), td_sampler_pick(gs, lg, trial, NULL, 0));
    }
    td_sampler_destroy(gs);
    td_sample_params p = td_sample_defaults();
    assert_true(td_sample_is_plain_greedy(&p));
    p.repeat_penalty = 1.3f;
    assert_false(td_sample_is_plain_greedy(&p));
    p.repeat_last_n = 0; /* a penalty over no tokens is none */
    assert_true(td_sample_is_plain_greedy(&p));
    p.temperature = 0.7f;
    assert_false(td_sample_is_plain_greedy(&p));
}

static void test_nan_inf(void **state) {
    (void)state;
    enum { N = 6 };
    float probs[N];
    td_sampler *gs = make(td_sample_defaults(), N);
    td_sampler *ts = make(tempered(1.0f, 3), N);

    const float with_nan[N] = {0.1f, NAN, 0.3f, NAN, -INFINITY, 0.2f};
    assert_int_equal(td_sampler_pick(gs, with_nan, 0, NULL, 0), 2);
    td_sampler_probs(ts, with_nan, NULL, 0, probs);
    assert_true(probs[1] == 0.0f && probs[3] == 0.0f && probs[4] == 0.0f);
    for (int64_t pos = 0; pos < 300; pos++) {
        int32_t t = td_sampler_pick(ts, with_nan, pos, NULL, 0);
        assert_true(t == 0 || t == 2 || t == 5);
    }

    const float all_nan[N] = {NAN, NAN, NAN, NAN, NAN, NAN};
    const float all_ninf[N] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, NAN};
    assert_int_equal(td_sampler_pick(gs, all_nan, 0, NULL, 0), 0);
    assert_int_equal(td_sampler_pick(ts, all_nan, 1, NULL, 0), 0);
    assert_int_equal(td_sampler_pick(ts, all_ninf, 2, NULL, 0), 0);
    td_sampler_probs(ts, all_ninf, NULL, 0, probs);
    assert_true(probs[0] == 1.0f);

    /* +inf logits take all the mass, shared equally. */
    const float pinf[N] = {5.0f, INFINITY, NAN, INFINITY, 1e30f, 0.0f};
    assert_int_equal(td_sampler_pick(gs, pinf, 0, NULL, 0), 1);
    td_sampler_probs(ts, pinf, NULL, 0, probs);
    assert_true(probs[1] == 0.5f && probs[3] == 0.5f);
    int seen1 = 0, seen3 = 0;
    for (int64_t pos = 0; pos < 100; pos++) {
        int32_t t = td_sampler_pick(ts, pinf, pos, NULL, 0);
        assert_true(t == 1 || t == 3);
        seen1 += t == 1;
        seen3 += t == 3;
    }
    assert_true(seen1 > 20 && seen3 > 20);

    /* T -> 0 is the greedy limit: the noise vanishes below the scores'
     * rounding, and ties go to the lowest id as in greedy. */
    const float big[N] = {1.0f, 2.0f, 3e38f, -5.0f, 3e38f, 0.0f};
    td_sampler *cs = make(tempered(1e-30f, 4), N);
    for (int64_t pos = 0; pos < 20; pos++)
        assert_int_equal(td_sampler_pick(cs, big, pos, NULL, 0), 2);
    td_sampler_destroy(cs);

    /* Extreme but finite logits and temperatures stay finite inside. */
    const float huge[N] = {3e38f, -3e38f, 1e-30f, 3e38f, 0.0f, -1.0f};
    td_sample_params tiny = tempered(1e-30f, 4);
    tiny.repeat_penalty = 1e-6f;
    td_sampler *hs = make(tiny, N);
    const int32_t h[] = {0, 1};
    int32_t t = td_sampler_pick(hs, huge, 9, h, 2);
    assert_true(t == 0 || t == 3);
    td_sampler_probs(hs, huge, h, 2, probs);
    assert_true(fabs(probs[0] + probs[3] - 1.0f) < 1e-6);
    td_sampler_destroy(hs);
    td_sampler_destroy(gs);
    td_sampler_destroy(ts);
}

/* ---- pick() never leaves the candidate set, whatever the parameters ---- */

static void test_pick_in_candidate_set(void **state) {
    (void)state;
    enum { N = 700 };
    static float l[N], probs[N];
    int32_t hist[100];
    uint64_t st = 12345;
    for (int round = 0; round < 300; round++) {
        td_sample_params p = td_sample_defaults();
        p.temperature = (rng_next(&st) % 4 == 0) ? 0.0f : (float)(0.05 + 3.0 * rng_unit(&st));
        p.top_k = (int32_t)(rng_next(&st) % 3 == 0 ? 0 : rng_next(&st) % 60);
        p.top_p = rng_next(&st) % 3 == 0 ? 1.0f : (float)(0.05 + 0.95 * rng_unit(&st));
        p.min_p = rng_next(&st) % 3 == 0 ? 0.0f : (float)rng_unit(&st);
        p.repeat_penalty = (float)(0.5 + 1.5 * rng_unit(&st));
        p.repeat_last_n = (int32_t)(rng_next(&st) % 100);
        p.seed = rng_next(&st);
        assert_int_equal(td_sample_validate(&p, NULL), TD_OK);
        fill_logits(l, N, (uint64_t)round, -8, 8);
        for (int i = 0; i < N; i += 1 + (int)(rng_next(&st) % 50))
            l[i] = (rng_next(&st) & 1) ? NAN : -INFINITY;
        for (int i = 0; i < 100; i++)
            hist[i] = (int32_t)(rng_next(&st) % (N + 20)) - 10;
        size_t nh = (size_t)(rng_next(&st) % 101);
        td_sampler *s = make(p, N);
        td_sampler_probs(s, l, hist, nh, probs);
        for (int64_t pos = 0; pos < 20; pos++) {
            int32_t t = td_sampler_pick(s, l, pos + round * 1000, hist, nh);
            assert_true(t >= 0 && t < N);
            assert_true(probs[t] > 0.0f);
        }
        td_sampler_destroy(s);
    }
}

/* A caller's mistake is an error, never an abort (assert policy). */
static void test_bad_arguments_are_errors(void **state) {
    (void)state;
    td_sample_params p = td_sample_defaults();
    td_sampler *s = td_sampler_create(&p, 4, NULL);
    assert_non_null(s);
    float logits[4] = {0, 1, 2, 3}, probs[4];
    assert_int_equal(td_sampler_pick(NULL, logits, 0, NULL, 0), TD_E_ARG);
    assert_int_equal(td_sampler_pick(s, NULL, 0, NULL, 0), TD_E_ARG);
    assert_int_equal(td_sampler_pick(s, logits, 0, NULL, 3), TD_E_ARG);
    assert_int_equal(td_sampler_pick(s, logits, -1, NULL, 0), TD_E_ARG);
    assert_int_equal(td_sampler_pick(s, logits, 0, NULL, 0), 3);
    assert_int_equal(td_sampler_probs(s, logits, NULL, 0, NULL), TD_E_ARG);
    assert_int_equal(td_sampler_probs(NULL, logits, NULL, 0, probs), TD_E_ARG);
    assert_int_equal(td_sampler_probs(s, logits, NULL, 0, probs), TD_OK);
    assert_true(probs[3] == 1.0f);
    td_sampler_destroy(s);
}

/* ---- picking from a device's summary ---- */

/* Rows of four kinds: 0 spread-out logits, 1 peaked (one far ahead), 2 on a
 * 0.25 grid (ties everywhere, also across top-k's boundary), 3 spread-out
 * with NaN and -inf sprinkled in. */
static void summary_row(float *l, int n, int kind, uint64_t seed) {
    uint64_t st = seed * 0x9e3779b97f4a7c15ULL + 7;
    for (int i = 0; i < n; i++) {
        double g = rng_unit(&st) + rng_unit(&st) + rng_unit(&st) - 1.5; /* bell-shaped */
        l[i] = (float)(6.0 * g);
        if (kind == 2) l[i] = floorf(l[i] * 4.0f) / 4.0f;
        if (kind == 3 && rng_unit(&st) < 0.05) l[i] = rng_unit(&st) < 0.5 ? NAN : -INFINITY;
    }
    if (kind == 1) l[rng_next(&st) % (uint64_t)n] = 30.0f;
}

/* Every decided summary gives td_sampler_pick's token, over a grid of
 * temperatures and filters; rows without ties are always decided, rows
 * full of ties nearly always. */
static void test_summary_matches_pick(void **state) {
    (void)state;
    static const float temps[] = {0.0f, 0.35f, 1.0f, 1.7f};
    static const int32_t ks[] = {0, 1, 3, 40};
    static const float ps[] = {1.0f, 0.3f, 0.9f, 0.95f};
    static const float mins[] = {0.0f, 0.05f};
    static const int sizes[] = {50, 1000};
    long decided = 0, undecided[4] = {0}, multi = 0;
    float l[1000];
    for (int si = 0; si < 2; si++)
        for (int kind = 0; kind < 4; kind++)
            for (int row = 0; row < 3; row++) {
                const int n = sizes[si];
                summary_row(l, n, kind, (uint64_t)(si * 100 + kind * 10 + row));
                for (int a = 0; a < 4; a++)
                    for (int b = 0; b < 4; b++)
                        for (int c = 0; c < 4; c++)
                            for (int d = 0; d < 2; d++) {
                                td_sample_params p = td_sample_defaults();
                                p.temperature = temps[a];
                                p.top_k = ks[b];
                                p.top_p = ps[c];
                                p.min_p = mins[d];
                                p.seed = (uint64_t)(row * 31 + a);
                                td_sampler *smp = make(p, n);
                                for (int64_t pos = 0; pos < 3; pos++) {
                                    td_sample_plan pl;
                                    assert_true(td_sample_plan_make(&p, pos, &pl));
                                    td_sample_summary sum;
                                    td_sample_summarize(&pl, l, n, &sum);
                                    int32_t want = td_sampler_pick(smp, l, pos, NULL, 0);
                                    int32_t got = td_sample_summary_pick(&pl, &sum);
                                    if (sum.n == 0) {
                                        assert_int_equal(got, -1);
                                        undecided[kind]++;
                                        continue;
                                    }
                                    if (got != want)
                                        fail_msg("n %d kind %d row %d T %g k %d p %g min_p %g pos %d: summary %d (of %d), "
                                                 "pick %d", n, kind, row, (double)p.temperature, p.top_k,
                                                 (double)p.top_p, (double)p.min_p, (int)pos, got, sum.n, want);
                                    decided++;
                                    multi += sum.n > 1;
                                }
                                td_sampler_destroy(smp);
                            }
            }
    /* 2 sizes x 3 rows x 128 settings x 3 positions per kind; ties are
     * ranked as sample.c ranks them, so only a top-p target within rounding
     * of a prefix's mass can leave a row undecided */
    fprintf(stderr, "# %ld decided (%ld with near-ties), undecided %ld %ld %ld %ld\n", decided, multi, undecided[0],
            undecided[1], undecided[2], undecided[3]);
    assert_int_equal(undecided[0] + undecided[1] + undecided[3], 0);
    assert_true(undecided[2] <= 2 * 3 * 128 * 3 / 100);
}

/* The default model's vocabulary with the settings people use. */
static void test_summary_large_vocab(void **state) {
    (void)state;
    enum { N = 49152 };
    float *l = malloc(N * sizeof *l);
    assert_non_null(l);
    for (int row = 0; row < 4; row++) {
        summary_row(l, N, row == 3 ? 3 : 0, (uint64_t)(900 + row));
        td_sample_params p = td_sample_defaults();
        p.temperature = 0.8f;
        p.top_k = row == 1 ? 0 : 40;
        p.top_p = row == 2 ? 1.0f : 0.95f;
        p.min_p = 0.05f;
        p.seed = 42;
        td_sampler *smp = make(p, N);
        for (int64_t pos = 100; pos < 104; pos++) {
            td_sample_plan pl;
            assert_true(td_sample_plan_make(&p, pos, &pl));
            td_sample_summary sum;
            td_sample_summarize(&pl, l, N, &sum);
            assert_true(sum.n >= 1);
            assert_int_equal(td_sample_summary_pick(&pl, &sum), td_sampler_pick(smp, l, pos, NULL, 0));
        }
        td_sampler_destroy(smp);
    }
    free(l);
}

/* Logits that put m tokens' noisy scores within the margin of each other:
 * l_i = G_0 - G_i rounded to a float, kept when the rounding moved it by
 * under 1e-8 (sought over seeds); the other tokens far below. Returns the
 * seed found. */
static uint64_t near_tie_row(float *l, int n, int m, int64_t pos) {
    for (uint64_t seed = 1;; seed++) {
        bool ok = true;
        for (int i = 0; i < n; i++) l[i] = -40.0f;
        for (int i = 0; i < m && ok; i++) {
            double want = td_sample_gumbel(seed, pos, 0) - td_sample_gumbel(seed, pos, i);
            l[i] = (float)want;
            ok = fabs((double)l[i] - want) < 1e-8;
        }
        if (ok) return seed;
    }
}

/* Near-ties come back together and the host's exact scores choose, in
 * whatever order the entries arrive; more than fit leave the row undecided. */
static void test_summary_near_ties(void **state) {
    (void)state;
    float l[64];
    td_sample_params p = td_sample_defaults();
    p.temperature = 1.0f;
    p.seed = near_tie_row(l, 64, 3, 9);
    td_sample_plan pl;
    td_sample_summary sum;
    assert_true(td_sample_plan_make(&p, 9, &pl));
    assert_int_equal(td_sample_summarize(&pl, l, 64, &sum), TD_OK);
    assert_int_equal(sum.n, 3);
    td_sampler *smp = make(p, 64);
    const int32_t want = td_sampler_pick(smp, l, 9, NULL, 0);
    assert_int_equal(td_sample_summary_pick(&pl, &sum), want);
    td_sample_summary rev = sum; /* entries reversed */
    for (int i = 0; i < 3; i++) rev.id[i] = sum.id[2 - i], rev.logit[i] = sum.logit[2 - i];
    assert_int_equal(td_sample_summary_pick(&pl, &rev), want);
    td_sampler_destroy(smp);
    /* TD_SAMPLE_SUMMARY_MAX + 1 of them */
    p.seed = near_tie_row(l, 64, TD_SAMPLE_SUMMARY_MAX + 1, 9);
    assert_true(td_sample_plan_make(&p, 9, &pl));
    assert_int_equal(td_sample_summarize(&pl, l, 64, &sum), TD_OK);
    assert_int_equal(sum.n, 0);
    assert_int_equal(td_sample_summary_pick(&pl, &sum), -1);
}

/* Observations in the summary: td_sample_top_ids, or none where a NaN or
 * too few logits above -inf would make the list depend on the row's order. */
static void test_summary_top_ids(void **state) {
    (void)state;
    float l[300];
    summary_row(l, 300, 2, 5); /* ties */
    td_sample_params p = td_sample_defaults();
    p.temperature = 0.9f;
    td_sample_plan pl;
    td_sample_summary sum;
    for (int32_t k = 1; k <= TD_SAMPLE_TOP_MAX; k += 5) {
        assert_true(td_sample_plan_make(&p, 4, &pl));
        assert_int_equal(pl.n_top, 0);
        pl.n_top = k;
        assert_int_equal(td_sample_summarize(&pl, l, 300, &sum), TD_OK);
        assert_int_equal(sum.n_top, k);
        int32_t want[TD_SAMPLE_TOP_MAX];
        td_sample_top_ids(l, 300, want, k);
        assert_memory_equal(sum.top, want, (size_t)k * sizeof *want);
    }
    l[100] = NAN;
    assert_int_equal(td_sample_summarize(&pl, l, 300, &sum), TD_OK);
    assert_int_equal(sum.n_top, 0);
    for (int i = 0; i < 300; i++) l[i] = i < 3 ? 1.0f : -INFINITY;
    pl.n_top = 4;
    assert_int_equal(td_sample_summarize(&pl, l, 300, &sum), TD_OK);
    assert_int_equal(sum.n_top, 0);
    pl.n_top = 3;
    assert_int_equal(td_sample_summarize(&pl, l, 300, &sum), TD_OK);
    assert_int_equal(sum.n_top, 3);
}

/* What the summary must leave to the logits, and malformed summaries. */
static void test_summary_undecided(void **state) {
    (void)state;
    td_sample_params p = td_sample_defaults();
    p.temperature = 1.0f;
    td_sample_plan pl;
    td_sample_summary sum;
    /* +inf: sample.c's rule (the +inf tokens share the mass) stays there */
    float inf_row[4] = {0.0f, INFINITY, 1.0f, INFINITY};
    assert_true(td_sample_plan_make(&p, 5, &pl));
    td_sample_summarize(&pl, inf_row, 4, &sum);
    assert_int_equal(sum.n, 0);
    /* a tie across top-k's boundary: ids 1 and 2 share the second place,
     * and the lower id stays (sample.c's order), whichever seed */
    float tie_row[4] = {3.0f, 2.0f, 2.0f, 1.0f};
    p.top_k = 2;
    for (uint64_t seed = 0; seed < 64; seed++) {
        p.seed = seed;
        assert_true(td_sample_plan_make(&p, 5, &pl));
        assert_int_equal(td_sample_summarize(&pl, tie_row, 4, &sum), TD_OK);
        assert_true(sum.n >= 1);
        int32_t got = td_sample_summary_pick(&pl, &sum);
        assert_true(got == 0 || got == 1);
        td_sampler *smp = make(p, 4);
        assert_int_equal(got, td_sampler_pick(smp, tie_row, 5, NULL, 0));
        td_sampler_destroy(smp);
    }
    /* top-p's target within rounding of a boundary: z = 1 + e^-1e-9, need =
     * z / 2 = 1 - 5e-10, and the second token's better mass is 1 */
    float near_row[3] = {0.0f, -1e-9f, -INFINITY};
    p = td_sample_defaults();
    p.temperature = 1.0f;
    p.top_p = 0.5f;
    assert_true(td_sample_plan_make(&p, 5, &pl));
    td_sample_summarize(&pl, near_row, 3, &sum);
    assert_int_equal(sum.n, 0);
    p.top_p = 0.25f; /* far from it: decided, and only the first token is kept */
    assert_true(td_sample_plan_make(&p, 5, &pl));
    td_sample_summarize(&pl, near_row, 3, &sum);
    assert_int_equal(sum.n, 1);
    assert_int_equal(sum.id[0], 0);
    /* nothing finite: token 0, as td_sampler_pick */
    float none[3] = {NAN, -INFINITY, NAN};
    td_sample_summarize(&pl, none, 3, &sum);
    assert_int_equal(td_sample_summary_pick(&pl, &sum), 0);
    /* a repetition penalty reads the history: no plan */
    p.repeat_penalty = 1.1f;
    assert_false(td_sample_plan_make(&p, 5, &pl));
    p.repeat_last_n = 0;
    assert_true(td_sample_plan_make(&p, 5, &pl));
    assert_false(td_sample_plan_make(&p, -1, &pl));
    /* malformed summaries are refused */
    td_sample_summary bad = {.n = TD_SAMPLE_SUMMARY_MAX + 1};
    assert_int_equal(td_sample_summary_pick(&pl, &bad), -1);
    bad = (td_sample_summary){.n = 2, .id = {3, -1}};
    assert_int_equal(td_sample_summary_pick(&pl, &bad), -1);
    assert_int_equal(td_sample_summary_pick(NULL, &bad), -1);
}

/* ---- the normalizer and scores ---- */

static double ulps_from(double got, double want) {
    return fabs(got - want) / (nextafter(want, INFINITY) - want);
}

/* td_sample_exp (basic operations only, so that a device gives its bits)
 * within an ulp of glibc's exp over its range, and its edges. */
/* Rejection plans: every decided summary gives td_sampler_reject's token
 * and verdict, over temperatures, filters, proposals (the top token, the
 * runner-up, any token, none) and keep_x; the verdict is exact even where
 * u lies at p(x) to the last bit (T 1 without filters, where p(x) is known
 * from td_sample_norm_sum). */
static void test_summary_reject(void **state) {
    (void)state;
    static const float temps[] = {0.0f, 0.6f, 1.0f, 1.5f};
    static const int32_t ks[] = {0, 1, 40};
    static const float ps[] = {1.0f, 0.9f};
    static const float mins[] = {0.0f, 0.05f};
    long decided = 0, undecided = 0, accepted = 0, rejected = 0, top_rejected = 0, multi = 0;
    float l[1000];
    for (int kind = 0; kind < 4; kind++)
        for (int row = 0; row < 2; row++) {
            const int n = row ? 1000 : 60;
            summary_row(l, n, kind, (uint64_t)(kind * 10 + row + 500));
            int32_t best[2];
            td_sample_top_ids(l, n, best, 2);
            for (int a = 0; a < 4; a++)
                for (int b = 0; b < 3; b++)
                    for (int c = 0; c < 2; c++)
                        for (int d = 0; d < 2; d++) {
                            td_sample_params p = td_sample_defaults();
                            p.temperature = temps[a], p.top_k = ks[b], p.top_p = ps[c], p.min_p = mins[d];
                            p.seed = (uint64_t)(row * 7 + a + 1);
                            td_sampler *smp = make(p, n);
                            uint64_t st = (uint64_t)(kind * 1000 + a * 100 + b * 10 + c * 2 + d + 1);
                            for (int e = 0; e < 10; e++) {
                                const int32_t x = e % 5 == 0 ? best[0] : e % 5 == 1 ? best[1] : e % 5 == 2 ? -1
                                                                                                  : (int32_t)(rng_next(&st) % (uint64_t)n);
                                const double u = e < 5 ? rng_unit(&st) : 0.05 * rng_unit(&st); /* small u: accepts */
                                const bool keep_x = e == 9;
                                const int64_t pos = 20 + e;
                                td_sample_plan pl;
                                assert_true(td_sample_plan_make_reject(&p, pos, x, u, p.seed ^ 99, keep_x, &pl));
                                td_sample_summary sum;
                                assert_int_equal(td_sample_summarize(&pl, l, n, &sum), TD_OK);
                                bool acc_s, acc_w;
                                const int32_t got = td_sample_summary_reject(&pl, &sum, &acc_s);
                                assert_int_equal(td_sample_summary_pick(&pl, &sum), -1); /* not a plain plan */
                                if (sum.n == 0) {
                                    assert_int_equal(got, -1);
                                    undecided++;
                                    continue;
                                }
                                const int32_t want = td_sampler_reject(smp, l, NULL, 0, pos, x, u, p.seed ^ 99, keep_x, &acc_w);
                                if (got != want || acc_s != acc_w)
                                    fail_msg("n %d kind %d T %g k %d p %g min_p %g x %d u %g: summary %d/%d (of %d), "
                                             "sampler %d/%d", n, kind, (double)p.temperature, p.top_k, (double)p.top_p,
                                             (double)p.min_p, x, u, got, acc_s, sum.n, want, acc_w);
                                decided++;
                                multi += sum.n > 1;
                                accepted += acc_w;
                                rejected += !acc_w;
                                top_rejected += !acc_w && x == best[0] && p.temperature > 0.0f;
                            }
                            td_sampler_destroy(smp);
                        }
        }
    fprintf(stderr, "# reject summaries: %ld decided (%ld accepted, %ld rejected, %ld of them the top; %ld with "
            "near-ties), %ld undecided\n", decided, accepted, rejected, top_rejected, multi, undecided);
    assert_true(undecided * 50 <= decided);
    assert_true(accepted > 200 && rejected > 200 && top_rejected > 20);
    /* at p(x) to the bit: T 1, no filters */
    enum { N = 3000 };
    float *w = malloc(N * sizeof *w);
    assert_non_null(w);
    td_sample_params p = tempered(1.0f, 4);
    for (int32_t x = 0; x < 40 * N; x += 997) {
        float m;
        if (x % N < 997) fill_logits(w, N, (uint64_t)(23 + x), -3.0f, 5.0f); /* a new row, a new z */
        const double z = td_sample_norm_sum(w, N, &m);
        const double px = td_sample_exp((double)w[x % N] - m) / z;
        for (int side = 0; side < 2; side++) {
            td_sample_plan pl;
            assert_true(td_sample_plan_make_reject(&p, 3, x % N, side ? px : nextafter(px, 0.0), 8, false, &pl));
            td_sample_summary sum;
            assert_int_equal(td_sample_summarize(&pl, w, N, &sum), TD_OK);
            bool acc;
            const int32_t got = td_sample_summary_reject(&pl, &sum, &acc);
            assert_int_equal(acc, side == 0);
            if (acc) assert_int_equal(got, x % N);
            else assert_true(got >= 0 && got != x % N);
        }
    }
    /* nothing finite: token 0, accepted when it is x; +inf: undecided */
    for (int i = 0; i < N; i++) w[i] = -INFINITY;
    td_sample_plan pl;
    td_sample_summary sum;
    bool acc;
    assert_true(td_sample_plan_make_reject(&p, 3, 0, 0.7, 8, false, &pl));
    assert_int_equal(td_sample_summarize(&pl, w, N, &sum), TD_OK);
    assert_int_equal(td_sample_summary_reject(&pl, &sum, &acc), 0);
    assert_true(acc);
    assert_true(td_sample_plan_make_reject(&p, 3, 5, 0.7, 8, false, &pl));
    assert_int_equal(td_sample_summarize(&pl, w, N, &sum), TD_OK);
    assert_int_equal(td_sample_summary_reject(&pl, &sum, &acc), 0);
    assert_false(acc);
    w[9] = INFINITY;
    assert_int_equal(td_sample_summarize(&pl, w, N, &sum), TD_OK);
    assert_int_equal(sum.n, 0);
    /* malformed or mismatched: -1 */
    td_sample_plan plain;
    assert_true(td_sample_plan_make(&p, 3, &plain));
    sum = (td_sample_summary){.n = 1, .accepted = 1, .id = {6}};
    assert_int_equal(td_sample_summary_reject(&pl, &sum, &acc), -1); /* accepted, but not x */
    assert_false(acc);
    assert_int_equal(td_sample_summary_reject(&plain, &sum, &acc), -1);
    assert_int_equal(td_sample_summary_reject(&pl, &sum, NULL), -1);
    assert_false(td_sample_plan_make_reject(&p, 3, -2, 0.5, 8, false, &pl));
    free(w);
}

static void test_norm_exp(void **state) {
    (void)state;
    double worst = 0.0;
    uint64_t st = 11;
    for (int i = 0; i < 2000000; i++) {
        const double x = i < 1000000 ? -708.0 * rng_unit(&st) : (i < 1900000 ? -2.0 * rng_unit(&st) : 709.0 * rng_unit(&st));
        const double u = ulps_from(td_sample_exp(x), exp(x));
        if (u > worst) worst = u;
    }
    fprintf(stderr, "# td_sample_exp: within %.2f ulp of glibc over 2M points\n", worst);
    assert_true(worst <= 1.0);
    assert_true(td_sample_exp(0.0) == 1.0);
    assert_true(td_sample_exp(-0.0) == 1.0);
    assert_true(td_sample_exp(-INFINITY) == 0.0);
    assert_true(td_sample_exp(-708.5) == 0.0);
    assert_true(td_sample_exp(-707.9) > 0.0);
    assert_true(isinf(td_sample_exp(709.0)) && isinf(td_sample_exp(INFINITY)));
    assert_true(isnan(td_sample_exp(NAN)));
}

/* The normalizer against a long-double sum of glibc's exp, and its edges:
 * the largest logit other than NaN, +0 for a zero, NaN sums where the
 * log-softmax is undefined. */
static void test_norm_sum(void **state) {
    (void)state;
    static const int sizes[] = {1, 2, 255, 256, 257, 1000, 49152};
    float *l = malloc(49152 * sizeof *l);
    assert_non_null(l);
    for (int si = 0; si < 7; si++)
        for (uint64_t seed = 1; seed <= 3; seed++) {
            const int n = sizes[si];
            fill_logits(l, n, seed * 31 + (uint64_t)si, -20.0f, 15.0f);
            float m;
            const double sum = td_sample_norm_sum(l, n, &m);
            float want_m = l[0];
            for (int i = 1; i < n; i++) want_m = fmaxf(want_m, l[i]);
            long double ref = 0;
            for (int i = 0; i < n; i++) ref += expl((long double)l[i] - want_m);
            assert_true(m == want_m);
            assert_true(fabsl(sum - ref) <= 1e-15L * ref);
            float lm;
            double ls;
            td_sample_log_norm(l, n, &lm, &ls);
            assert_true(lm == m && ls == log(sum));
        }
    /* the host's vector widths give the plain loop's bits, lane by lane,
     * specials included */
    fill_logits(l, 4096, 5, -800.0f, 20.0f);
    l[3] = NAN, l[700] = -INFINITY, l[1000] = -0.0f;
    double plain[TD_SAMPLE_NORM_LANES] = {0}, wide[TD_SAMPLE_NORM_LANES] = {0};
    assert_int_equal(td_sample_norm_rounds(l, 4000, 20.0f, plain), 3840);
    if (__builtin_cpu_supports("avx2")) {
        assert_int_equal(td_sample_norm_rounds_avx2(l, 4000, 20.0f, wide), 3840);
        assert_memory_equal(wide, plain, sizeof wide);
    }
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw")) {
        memset(wide, 0, sizeof wide);
        assert_int_equal(td_sample_norm_rounds_avx512(l, 4000, 20.0f, wide), 3840);
        assert_memory_equal(wide, plain, sizeof wide);
    }
    l[0] = NAN, l[1] = -0.0f, l[2] = -1.0f;
    float m;
    assert_true(isnan(td_sample_norm_sum(l, 3, &m)));
    assert_true(m == 0.0f && !signbit(m)); /* NaN skipped; the zero is +0 */
    l[0] = -0.0f;
    assert_true(td_sample_norm_sum(l, 3, &m) == 2.0 + td_sample_exp(-1.0));
    assert_true(!signbit(m));
    l[1] = INFINITY;
    assert_true(isnan(td_sample_norm_sum(l, 3, &m)) && m == INFINITY);
    l[0] = l[1] = l[2] = -INFINITY;
    assert_true(isnan(td_sample_norm_sum(l, 3, &m)) && m == -INFINITY);
    free(l);
}

/* A row's score: each field is what the row says, and log-probabilities
 * from it are the row's bit for bit; alternatives are left to the row
 * where it holds a NaN or too few logits above -inf. */
static void test_score_row(void **state) {
    (void)state;
    enum { N = 3000 };
    float *l = malloc(N * sizeof *l);
    assert_non_null(l);
    for (uint64_t seed = 1; seed <= 20; seed++) {
        fill_logits(l, N, seed, -10.0f, 10.0f);
        if (seed % 4 == 0)
            for (int i = 0; i < N; i++) l[i] = floorf(l[i]); /* ties */
        const int32_t target = (int32_t)(seed * 131 % N), n_alt = (int32_t)(seed % (TD_SAMPLE_ALT_MAX + 1));
        td_sample_score sc;
        td_sample_score_row(l, N, target, n_alt, &sc);
        float m;
        double ls;
        td_sample_log_norm(l, N, &m, &ls);
        assert_true(sc.max == m && log(sc.sum) == ls);
        assert_int_equal(sc.argmax, td_sample_argmax(l, N));
        const double lp = td_sample_logprob_of(sc.logit, sc.max, log(sc.sum));
        assert_true(lp == td_sample_logprob_at(l, m, ls, target));
        assert_int_equal(sc.n_alt, n_alt);
        int32_t ids[TD_SAMPLE_ALT_MAX];
        if (n_alt > 0) td_sample_top_ids(l, N, ids, n_alt);
        for (int32_t a = 0; a < n_alt; a++) {
            assert_int_equal(sc.alt_id[a], ids[a]);
            assert_true(sc.alt_logit[a] == l[ids[a]]);
        }
    }
    td_sample_score sc;
    td_sample_score_row(l, N, -1, 3, &sc);
    assert_true(sc.logit == 0.0f && sc.n_alt == 3);
    l[7] = NAN;
    td_sample_score_row(l, N, 7, 3, &sc);
    assert_int_equal(sc.n_alt, 0);
    assert_true(isnan(sc.sum) && isnan(sc.logit));
    for (int i = 0; i < N; i++) l[i] = i < 2 ? 1.0f : -INFINITY;
    td_sample_score_row(l, N, 1, 3, &sc);
    assert_int_equal(sc.n_alt, 0); /* two above -inf */
    td_sample_score_row(l, N, 1, 2, &sc);
    assert_int_equal(sc.n_alt, 2);
    assert_true(sc.sum == 2.0 && sc.argmax == 0);
    free(l);
}

/* Rejection against a point mass: x is accepted exactly when u is below
 * p(x) = e_x / z by the normalizer's definition (at T 1 without filters,
 * td_sample_norm_sum's z to the bit); the rest never returns x and stays in
 * the kept set; greedy is the top token's point mass. */
static void test_reject(void **state) {
    (void)state;
    enum { N = 3000 };
    float *l = malloc(N * sizeof *l), *probs = malloc(N * sizeof *probs);
    assert_non_null(l);
    assert_non_null(probs);
    fill_logits(l, N, 17, -4.0f, 6.0f);
    td_sampler *s = make(tempered(1.0f, 3), N);
    float m;
    const double z = td_sample_norm_sum(l, N, &m);
    bool acc;
    for (int32_t x = 0; x < N; x++) {
        const double px = td_sample_exp((double)l[x] - m) / z;
        assert_int_equal(td_sampler_reject(s, l, NULL, 0, 5, x, nextafter(px, 0.0), 1, false, &acc), x);
        assert_true(acc);
        const int32_t r = td_sampler_reject(s, l, NULL, 0, 5, x, px, 1, false, &acc);
        assert_false(acc);
        assert_true(r != x && r >= 0 && r < N);
    }
    /* filtered: the decision follows td_sampler_probs's p(x) wherever u is
     * not within float rounding of it; the rest stays in the kept set */
    td_sample_params p = tempered(0.8f, 9);
    p.top_k = 50, p.top_p = 0.9f, p.min_p = 0.02f;
    l[10] = 9.0f, l[20] = 8.5f, l[30] = 8.0f; /* a peak, so that both outcomes are common */
    assert_int_equal(td_sampler_set_params(s, &p, NULL), TD_OK);
    assert_int_equal(td_sampler_probs(s, l, NULL, 0, probs), TD_OK);
    uint64_t st = 5;
    int accepted = 0, rejected = 0;
    int32_t best[4];
    td_sample_top_ids(l, N, best, 4);
    for (int i = 0; i < 4000; i++) { /* the likeliest tokens, and any */
        const int32_t x = i % 2 ? best[i / 2 % 4] : (int32_t)(rng_next(&st) % N);
        const double u = rng_unit(&st);
        if (fabs(u - probs[x]) < 1e-6) continue;
        const int32_t r = td_sampler_reject(s, l, NULL, 0, 100 + i, x, u, 77, false, &acc);
        assert_int_equal(acc, u < probs[x]);
        if (acc) {
            assert_int_equal(r, x);
            accepted++;
        } else {
            assert_true(r != x && probs[r] > 0.0f);
            rejected++;
        }
    }
    fprintf(stderr, "# reject: %d accepted, %d rejected\n", accepted, rejected);
    assert_true(accepted > 100 && rejected > 100);
    /* keep_x (the broken variant test_spec shows): a rejected x comes back */
    int again = 0;
    for (int i = 0; i < 200; i++) {
        const int32_t x = td_sample_argmax(l, N);
        again += td_sampler_reject(s, l, NULL, 0, 9000 + i, x, 0.9999999, 77, true, &acc) == x && !acc;
    }
    assert_true(again > 0);
    /* greedy: the point mass at the top */
    td_sample_params g = td_sample_defaults();
    assert_int_equal(td_sampler_set_params(s, &g, NULL), TD_OK);
    const int32_t top = td_sample_argmax(l, N);
    assert_int_equal(td_sampler_reject(s, l, NULL, 0, 1, top, 0.999, 1, false, &acc), top);
    assert_true(acc);
    assert_int_equal(td_sampler_reject(s, l, NULL, 0, 1, (top + 1) % N, 0.001, 1, false, &acc), top);
    assert_false(acc);
    assert_int_equal(td_sampler_reject(s, l, NULL, 0, 1, -1, 0.5, 1, false, &acc), top);
    assert_false(acc);
    assert_int_equal(td_sampler_reject(s, l, NULL, 0, 1, N, 0.5, 1, false, &acc), TD_E_ARG);
    assert_int_equal(td_sampler_reject(s, l, NULL, 0, 1, 0, 0.5, 1, false, NULL), TD_E_ARG);
    td_sampler_destroy(s);
    free(l), free(probs);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_valid),
        cmocka_unit_test(test_norm_exp),
        cmocka_unit_test(test_norm_sum),
        cmocka_unit_test(test_score_row),
        cmocka_unit_test(test_reject),
        cmocka_unit_test(test_bad_arguments_are_errors),
        cmocka_unit_test(test_validate_rejects),
        cmocka_unit_test(test_create_and_set_params),
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_noise),
        cmocka_unit_test(test_keyed_determinism),
        cmocka_unit_test(test_pick_equals_reference_argmax),
        cmocka_unit_test(test_pick_equals_reference_filtered),
        cmocka_unit_test(test_extreme_noise_wins),
        cmocka_unit_test(test_chi_square_matches_probs),
        cmocka_unit_test(test_chi_square_filtered),
        cmocka_unit_test(test_top_k),
        cmocka_unit_test(test_top_p_smallest_set),
        cmocka_unit_test(test_top_p_matches_full_sort),
        cmocka_unit_test(test_min_p),
        cmocka_unit_test(test_repetition_penalty),
        cmocka_unit_test(test_nan_inf),
        cmocka_unit_test(test_argmax_is_greedy_pick),
        cmocka_unit_test(test_pick_in_candidate_set),
        cmocka_unit_test(test_summary_matches_pick),
        cmocka_unit_test(test_summary_large_vocab),
        cmocka_unit_test(test_summary_undecided),
        cmocka_unit_test(test_summary_near_ties),
        cmocka_unit_test(test_summary_top_ids),
        cmocka_unit_test(test_summary_reject),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
