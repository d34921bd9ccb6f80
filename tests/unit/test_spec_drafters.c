/* test_spec_drafters.c — the model-free drafters (prompt lookup, adaptive
 * n-gram, Token Recycling) and the tree helpers: exact proposals on small
 * hand-made histories, the lookup index against a brute-force scan over long
 * random streams with appends and rollbacks, tree validity, and argument
 * checking. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "spec/spec.h"

/* ---- helpers ---- */

static int propose(td_drafter *d, int32_t seq, const int32_t *h, size_t n, int32_t max_nodes,
                   td_draft *out) {
    return d->ops->propose(d, seq, h, n, max_nodes, out);
}

static void accept(td_drafter *d, int32_t seq, const int32_t *h, size_t n, size_t n_new) {
    d->ops->accept(d, seq, h, n, n_new);
}

/* Parents precede children, no two siblings share a token, size in bounds. */
static void assert_valid_tree(const td_draft *d, int32_t cap) {
    assert_true(d->n >= 0 && d->n <= cap && d->n <= TD_DRAFT_MAX);
    for (int32_t i = 0; i < d->n; i++) {
        assert_true(d->parent[i] >= -1 && d->parent[i] < i);
        for (int32_t j = 0; j < i; j++)
            if (d->parent[j] == d->parent[i]) assert_int_not_equal(d->token[j], d->token[i]);
    }
}

static void assert_chain(const td_draft *d, const int32_t *want, int32_t n) {
    assert_int_equal(d->n, n);
    for (int32_t i = 0; i < n; i++) {
        assert_int_equal(d->parent[i], i - 1);
        assert_int_equal(d->token[i], want[i]);
    }
}

/* Follows `want` from the root through matching children; returns how many
 * of its tokens form a path in the tree. */
static int32_t tree_follow(const td_draft *d, const int32_t *want, int32_t n) {
    int32_t cur = -1, k = 0;
    for (; k < n; k++) {
        int32_t next = -1;
        for (int32_t i = cur + 1; i < d->n && next < 0; i++)
            if (d->parent[i] == cur && d->token[i] == want[k]) next = i;
        if (next < 0) break;
        cur = next;
    }
    return k;
}

/* The definition of prompt lookup, by plain scan: newest earlier occurrence
 * of the last g tokens, longest g first; the continuation repeats itself
 * past the end of the history. */
static int32_t brute_lookup(const int32_t *h, int32_t n, int32_t gmin, int32_t gmax, int32_t cap,
                            int32_t *out) {
    for (int32_t g = gmax; g >= gmin; g--) {
        if (n <= g) continue;
        for (int32_t e = n - 1; e >= g; e--) {
            if (memcmp(h + e - g, h + n - g, (size_t)g * sizeof *h) != 0) continue;
            for (int32_t i = 0; i < cap; i++) out[i] = h[e + i % (n - e)];
            return cap;
        }
    }
    return 0;
}

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int32_t rng_int(uint64_t *s, int32_t lo, int32_t hi) { /* [lo, hi] */
    return lo + (int32_t)(rng_next(s) % (uint64_t)(hi - lo + 1));
}

/* ---- prompt lookup ---- */

static void lookup_longest_then_newest(void **state) {
    (void)state;
    td_drafter *d = td_spec_lookup_tree_create(1, 3, 1, NULL);
    assert_non_null(d);
    td_draft out;
    /* [1 2 3] occurs once (followed by 9); the newer [2 3] (followed by 8)
     * is shorter and loses. */
    const int32_t h1[] = {1, 2, 3, 9, 7, 2, 3, 8, 5, 6, 1, 2, 3};
    assert_int_equal(propose(d, 0, h1, 13, 4, &out), TD_OK);
    assert_chain(&out, (const int32_t[]){9, 7, 2, 3}, 4);
    /* Two occurrences of [1 2]: the newest wins, and its continuation runs
     * into the suffix and then repeats it. */
    const int32_t h2[] = {1, 2, 5, 1, 2, 6, 1, 2};
    assert_int_equal(propose(d, 1, h2, 8, 7, &out), TD_OK);
    assert_chain(&out, (const int32_t[]){6, 1, 2, 6, 1, 2, 6}, 7);
    /* A run repeats. */
    const int32_t h3[] = {4, 4};
    assert_int_equal(propose(d, 2, h3, 2, 5, &out), TD_OK);
    assert_chain(&out, (const int32_t[]){4, 4, 4, 4, 4}, 5);
    td_drafter_destroy(d);
}

static void lookup_falls_back_to_shorter(void **state) {
    (void)state;
    td_drafter *d = td_spec_lookup_tree_create(2, 4, 1, NULL);
    assert_non_null(d);
    td_draft out;
    /* Last 4, 3 unseen; [5 6] seen, followed by 7 8. */
    const int32_t h[] = {5, 6, 7, 8, 1, 2, 3, 9, 5, 6};
    assert_int_equal(propose(d, 0, h, 10, 3, &out), TD_OK);
    assert_chain(&out, (const int32_t[]){7, 8, 1}, 3);
    /* Only the last token recurs; min_ngram 2 forbids a 1-gram match. */
    const int32_t h2[] = {5, 6, 7, 8, 1, 2, 3, 9, 4, 6};
    assert_int_equal(propose(d, 1, h2, 10, 3, &out), TD_OK);
    assert_int_equal(out.n, 0);
    td_drafter_destroy(d);

    d = td_spec_lookup_create(1, 4, NULL);
    assert_non_null(d);
    assert_int_equal(propose(d, 1, h2, 10, 3, &out), TD_OK);
    assert_chain(&out, (const int32_t[]){7, 8, 1}, 3);
    td_drafter_destroy(d);
}

static void lookup_no_match_and_limits(void **state) {
    (void)state;
    td_drafter *d = td_spec_lookup_create(1, 3, NULL);
    assert_non_null(d);
    td_draft out;
    const int32_t h[] = {1, 2, 3, 4, 5, 6};
    out.n = 99;
    assert_int_equal(propose(d, 0, h, 6, 8, &out), TD_OK);
    assert_int_equal(out.n, 0);
    out.n = 99;
    assert_int_equal(propose(d, 0, h, 1, 8, &out), TD_OK);
    assert_int_equal(out.n, 0);
    out.n = 99;
    assert_int_equal(propose(d, 0, h, 0, 8, &out), TD_OK);
    assert_int_equal(out.n, 0);

    const int32_t r[] = {7, 7, 7};
    assert_int_equal(propose(d, 3, r, 3, 2, &out), TD_OK);
    assert_chain(&out, (const int32_t[]){7, 7}, 2);
    out.n = 99;
    assert_int_equal(propose(d, 3, r, 3, 0, &out), TD_OK);
    assert_int_equal(out.n, 0);
    assert_int_equal(propose(d, 3, r, 3, 1000, &out), TD_OK);
    assert_int_equal(out.n, TD_DRAFT_MAX);
    assert_valid_tree(&out, TD_DRAFT_MAX);
    td_drafter_destroy(d);
}

/* Older matches with other continuations become short branches. */
static void lookup_branches(void **state) {
    (void)state;
    td_drafter *d = td_spec_lookup_create(1, 2, NULL);
    assert_non_null(d);
    td_draft out;
    const int32_t h[] = {1, 2, 3, 30, 1, 2, 4, 40, 1, 2, 5, 50, 1, 2};
    assert_int_equal(propose(d, 0, h, 14, 16, &out), TD_OK);
    assert_valid_tree(&out, 16);
    assert_int_equal(out.n, 16);
    int32_t roots[4], nr = 0;
    for (int32_t i = 0; i < out.n; i++)
        if (out.parent[i] == -1) roots[nr++] = out.token[i];
    assert_int_equal(nr, 3);
    assert_int_equal(roots[0], 5); /* newest first */
    assert_int_equal(roots[1], 4);
    assert_int_equal(roots[2], 3);
    int32_t want[16];
    assert_int_equal(brute_lookup(h, 14, 1, 2, 16, want), 16);
    assert_true(tree_follow(&out, want, 16) >= 12);
    const int32_t b1[] = {4, 40};
    assert_int_equal(tree_follow(&out, b1, 2), 2);
    /* Small budgets stay chains. */
    assert_int_equal(propose(d, 0, h, 14, 7, &out), TD_OK);
    assert_chain(&out, want, 7);
    td_drafter_destroy(d);
}

/* The incremental index against the plain scan: appends, speculative tails
 * that are later replaced, rollbacks, two interleaved sequences, resets. */
static void lookup_matches_brute_force(void **state) {
    (void)state;
    enum { MAXN = 1400 };
    static int32_t hist[2][MAXN + 16];
    for (int32_t variant = 0; variant < 2; variant++) {
        td_drafter *d = td_spec_lookup_tree_create(1, 4, variant ? 3 : 1, NULL);
        assert_non_null(d);
        uint64_t rs = 12345 + (uint64_t)variant;
        int32_t n[2] = {0, 0};
        for (int32_t step = 0; step < 6000; step++) {
            int32_t q = (int32_t)(rng_next(&rs) & 1);
            int32_t seq = q ? 7 : 0;
            int32_t vocab = q ? 3 : 6;
            int32_t *h = hist[q];
            int32_t op = rng_int(&rs, 0, 9);
            if (n[q] > MAXN - 8) {
                d->ops->reset(d, seq);
                n[q] = 0;
            } else if (op < 6) {
                int32_t k = rng_int(&rs, 1, 4);
                for (int32_t i = 0; i < k; i++) h[n[q]++] = rng_int(&rs, 0, vocab - 1);
                accept(d, seq, h, (size_t)n[q], (size_t)k);
            } else if (op < 8) {
                /* Speculative tail: proposed on, then replaced. */
                int32_t k = rng_int(&rs, 1, 6);
                for (int32_t i = 0; i < k; i++) h[n[q] + i] = rng_int(&rs, 0, vocab - 1);
                td_draft out;
                int32_t want[TD_DRAFT_MAX];
                int32_t cap = rng_int(&rs, 1, 20);
                assert_int_equal(propose(d, seq, h, (size_t)(n[q] + k), cap, &out), TD_OK);
                int32_t nw = brute_lookup(h, n[q] + k, 1, 4, cap, want);
                if (variant == 0) assert_chain(&out, want, nw);
            } else {
                n[q] -= n[q] < 5 ? n[q] : rng_int(&rs, 1, 5);
            }
            int32_t cap = rng_int(&rs, 1, 40);
            td_draft out;
            int32_t want[TD_DRAFT_MAX];
            assert_int_equal(propose(d, seq, h, (size_t)n[q], cap, &out), TD_OK);
            int32_t nw = brute_lookup(h, n[q], 1, 4, cap, want);
            if (variant == 0) {
                assert_chain(&out, want, nw);
            } else {
                assert_valid_tree(&out, cap);
                assert_int_equal(out.n, nw);
                int32_t reserve = cap >= 8 ? 2 * (cap / 8 < 4 ? cap / 8 : 4) : 0;
                assert_true(tree_follow(&out, want, nw) >= nw - reserve);
            }
        }
        td_drafter_destroy(d);
    }
}

static void lookup_reset_forgets(void **state) {
    (void)state;
    td_drafter *d = td_spec_lookup_tree_create(1, 3, 1, NULL);
    td_drafter *fresh = td_spec_lookup_tree_create(1, 3, 1, NULL);
    assert_non_null(d);
    assert_non_null(fresh);
    const int32_t a[] = {1, 2, 3, 1, 2};
    const int32_t b[] = {9, 8, 9};
    td_draft out, ref;
    assert_int_equal(propose(d, 5, a, 5, 4, &out), TD_OK);
    assert_chain(&out, (const int32_t[]){3, 1, 2, 3}, 4);
    d->ops->reset(d, 5);
    d->ops->reset(d, 6); /* unknown: no effect */
    assert_int_equal(propose(d, 5, b, 3, 4, &out), TD_OK);
    assert_int_equal(propose(fresh, 5, b, 3, 4, &ref), TD_OK);
    assert_int_equal(out.n, ref.n);
    assert_memory_equal(out.token, ref.token, (size_t)ref.n * sizeof(int32_t));
    assert_chain(&out, (const int32_t[]){8, 9, 8, 9}, 4);
    td_drafter_destroy(d);
    td_drafter_destroy(fresh);
}

/* ---- adaptive n-gram ---- */

static void ngram_counts_follow_accepted_text(void **state) {
    (void)state;
    td_drafter *d = td_spec_ngram_create(3, 4, NULL);
    assert_non_null(d);
    td_draft out;
    int32_t h[64] = {5, 6, 5, 7, 5, 7, 5};
    size_t n = 7;
    /* After 5: 7 twice, 6 once. */
    assert_int_equal(propose(d, 0, h, n, 1, &out), TD_OK);
    assert_chain(&out, (const int32_t[]){7}, 1);
    /* Accept 6, 5, 6, 5: now 6 three times after 5 and newest on ties. */
    const int32_t more[] = {6, 5, 6, 5};
    for (int i = 0; i < 4; i++) h[n++] = more[i];
    accept(d, 0, h, n, 4);
    assert_int_equal(propose(d, 0, h, n, 1, &out), TD_OK);
    assert_chain(&out, (const int32_t[]){6}, 1);
    /* Another sequence is independent. */
    const int32_t o[] = {5, 7, 5, 7, 5};
    assert_int_equal(propose(d, 3, o, 5, 1, &out), TD_OK);
    assert_chain(&out, (const int32_t[]){7}, 1);
    td_drafter_destroy(d);
}

static void ngram_backs_off_and_chains(void **state) {
    (void)state;
    td_drafter *d = td_spec_ngram_create(4, 1, NULL);
    assert_non_null(d);
    td_draft out;
    /* The 3- and 2-token contexts ending the history are new; the 1-token
     * context [2] was followed by 3 twice. */
    const int32_t h[] = {2, 3, 1, 2, 3, 8, 9, 2};
    assert_int_equal(propose(d, 0, h, 8, 1, &out), TD_OK);
    assert_chain(&out, (const int32_t[]){3}, 1);
    /* A long repeated text gives a long confident chain built from its own
     * predictions: the count-3 contexts carry it past the stop threshold. */
    int32_t r[40];
    for (int i = 0; i < 40; i++) r[i] = 10 + i % 5;
    td_drafter_destroy(d);
    d = td_spec_ngram_create(3, 1, NULL);
    assert_int_equal(propose(d, 0, r, 40, 10, &out), TD_OK);
    assert_chain(&out, (const int32_t[]){10, 11, 12, 13, 14, 10, 11, 12, 13, 14}, 10);
    /* Reset forgets: an unrelated history predicts nothing from the old one. */
    d->ops->reset(d, 0);
    const int32_t u[] = {12};
    assert_int_equal(propose(d, 0, u, 1, 4, &out), TD_OK);
    assert_int_equal(out.n, 0);
    td_drafter_destroy(d);
}

/* A context whose predictions keep failing is passed over; one hit brings
 * it back. */
static void ngram_demotes_failing_context(void **state) {
    (void)state;
    td_drafter *d = td_spec_ngram_create(2, 1, NULL);
    assert_non_null(d);
    td_draft out;
    int32_t h[64] = {1, 2, 1, 2, 1, 2, 1, 2, 1};
    size_t n = 9;
    assert_int_equal(propose(d, 0, h, n, 1, &out), TD_OK);
    assert_chain(&out, (const int32_t[]){2}, 1);
    /* After 1 come 3, 4, 5: three misses of the prediction "2". */
    const int32_t miss[] = {3, 1, 4, 1, 5, 1};
    for (int i = 0; i < 6; i++) {
        h[n++] = miss[i];
        accept(d, 0, h, n, 1);
    }
    assert_int_equal(propose(d, 0, h, n, 1, &out), TD_OK);
    assert_int_equal(out.n, 0);
    /* One hit halves the miss count: trusted again. */
    h[n++] = 2;
    h[n++] = 1;
    accept(d, 0, h, n, 2);
    assert_int_equal(propose(d, 0, h, n, 1, &out), TD_OK);
    assert_chain(&out, (const int32_t[]){2}, 1);
    td_drafter_destroy(d);
}

static void ngram_limits(void **state) {
    (void)state;
    td_drafter *d = td_spec_ngram_create(3, 2, NULL);
    assert_non_null(d);
    int32_t r[300];
    for (int i = 0; i < 300; i++) r[i] = i % 3;
    td_draft out;
    assert_int_equal(propose(d, 1, r, 300, 1000, &out), TD_OK);
    assert_int_equal(out.n, TD_DRAFT_MAX);
    assert_valid_tree(&out, TD_DRAFT_MAX);
    assert_int_equal(propose(d, 1, r, 300, 0, &out), TD_OK);
    assert_int_equal(out.n, 0);
    out.n = 5;
    assert_int_equal(propose(d, 2, r, 300, 4, &out), TD_E_ARG); /* seq >= max_seqs */
    assert_int_equal(out.n, 0);
    out.n = 5;
    assert_int_equal(propose(d, 0, r, 0, 4, &out), TD_OK);
    assert_int_equal(out.n, 0);
    td_drafter_destroy(d);
}

/* ---- Token Recycling ---- */

static void recycle_fill(td_drafter *d, int32_t n_vocab, int32_t k) {
    int32_t top[8];
    for (int32_t t = 0; t < n_vocab; t++) {
        for (int32_t j = 0; j < k; j++) top[j] = (t + 1 + j) % n_vocab;
        td_observation o = {t, top, k, {-1, -1}};
        d->ops->observe(d, 0, &o, 1);
    }
}

static void recycle_tree_shape(void **state) {
    (void)state;
    td_drafter *d = td_spec_recycle_create_scoped(100, 8, TD_DRAFTER_SHARED, NULL);
    assert_non_null(d);
    td_draft out;
    const int32_t h[] = {3, 0};
    /* Nothing observed yet. */
    assert_int_equal(propose(d, 0, h, 2, 16, &out), TD_OK);
    assert_int_equal(out.n, 0);
    recycle_fill(d, 100, 8);
    static const int32_t sizes[] = {8, 16, 64};
    static const int32_t shapes[3][7] = {
        {4, 3, 1, 0}, {6, 5, 4, 1, 0}, {8, 21, 19, 9, 6, 1, 0}};
    for (int s = 0; s < 3; s++) {
        assert_int_equal(propose(d, 0, h, 2, sizes[s], &out), TD_OK);
        assert_int_equal(out.n, sizes[s]);
        assert_valid_tree(&out, sizes[s]);
        int32_t depth[TD_DRAFT_MAX], count[TD_DRAFT_MAX + 1] = {0};
        td_draft_depths(&out, depth);
        for (int32_t i = 0; i < out.n; i++) {
            count[depth[i]]++;
            /* Each child comes from its parent's row: parent + 1..8. */
            int32_t from = out.parent[i] < 0 ? 0 : out.token[out.parent[i]];
            int32_t off = (out.token[i] - from + 100) % 100;
            assert_true(off >= 1 && off <= 8);
        }
        for (int32_t k = 0; shapes[s][k]; k++) assert_int_equal(count[k + 1], shapes[s][k]);
        /* Best-ranked candidates come first. */
        assert_int_equal(out.token[0], 1);
        assert_int_equal(out.parent[0], -1);
    }
    /* A row with a repeat and a hole: one child, the tree goes on below it. */
    const int32_t row[] = {5, 5, -1, 5};
    td_observation o = {0, row, 4, {-1, -1}};
    d->ops->observe(d, 0, &o, 1);
    assert_int_equal(propose(d, 0, h, 2, 16, &out), TD_OK);
    assert_valid_tree(&out, 16);
    assert_int_equal(out.n, 16);
    int32_t roots = 0;
    for (int32_t i = 0; i < out.n; i++) roots += out.parent[i] == -1;
    assert_int_equal(roots, 1);
    assert_int_equal(out.token[0], 5);
    /* Shared scope: reset keeps the table, other sequences share it. */
    d->ops->reset(d, 0);
    td_draft other;
    assert_int_equal(propose(d, 9, h, 2, 16, &other), TD_OK);
    assert_int_equal(other.n, out.n);
    assert_memory_equal(other.token, out.token, (size_t)out.n * sizeof(int32_t));
    /* Unknown or out-of-range last token. */
    const int32_t bad[] = {100};
    assert_int_equal(propose(d, 0, bad, 1, 16, &out), TD_OK);
    assert_int_equal(out.n, 0);
    td_drafter_destroy(d);
}

static void recycle_observe_checks(void **state) {
    (void)state;
    td_drafter *d = td_spec_recycle_create(10, 3, NULL);
    assert_non_null(d);
    /* Out-of-range ids are dropped, short lists leave -1, empty ones and bad
     * tokens are ignored, and top_k truncates. */
    const int32_t t1[] = {4, 77, 6, 7, 8};
    td_observation obs[] = {
        {2, t1, 5, {-1, -1}},
        {-1, t1, 5, {-1, -1}},
        {12, t1, 5, {-1, -1}},
        {3, NULL, 2, {-1, -1}},
        {3, t1, 0, {-1, -1}},
    };
    d->ops->observe(d, 0, obs, 5);
    d->ops->observe(d, 0, NULL, 3);
    td_draft out;
    const int32_t h[] = {2};
    assert_int_equal(propose(d, 0, h, 1, 1, &out), TD_OK);
    assert_chain(&out, (const int32_t[]){4}, 1);
    assert_int_equal(propose(d, 0, h, 1, 8, &out), TD_OK);
    assert_valid_tree(&out, 8);
    assert_int_equal(out.n, 2); /* 4 and 6; nothing known after them */
    assert_int_equal(out.token[1], 6);
    const int32_t h3[] = {3};
    assert_int_equal(propose(d, 0, h3, 1, 8, &out), TD_OK);
    assert_int_equal(out.n, 0);
    /* A newer observation overwrites the row. */
    const int32_t t2[] = {9};
    td_observation o2 = {2, t2, 1, {-1, -1}};
    d->ops->observe(d, 0, &o2, 1);
    assert_int_equal(propose(d, 0, h, 1, 8, &out), TD_OK);
    assert_chain(&out, (const int32_t[]){9}, 1);
    td_drafter_destroy(d);
}

/* Per request scope (the default): what one request's verifications taught
 * never reaches another request, in the same batch (another sequence) or
 * after it (reset at the next request's start); per tenant keeps it. Before
 * scopes, every request read one shared table. */
static void recycle_scopes(void **state) {
    (void)state;
    const int32_t top[] = {7, 8, 9};
    td_observation o[] = {{2, top, 3, {1, 5}}};
    const int32_t h[] = {5, 1, 2};
    td_draft out;
    td_drafter *req = td_spec_recycle_create(20, 3, NULL); /* default scope */
    td_drafter *ten = td_spec_recycle_create_scoped(20, 3, TD_DRAFTER_PER_TENANT, NULL);
    assert_non_null(req);
    assert_non_null(ten);
    td_drafter *ds[2] = {req, ten};
    for (int k = 0; k < 2; k++) {
        td_drafter *d = ds[k];
        d->ops->reset(d, 0);
        d->ops->reset(d, 1);
        d->ops->observe(d, 0, o, 1); /* request on sequence 0 learns */
        assert_int_equal(propose(d, 0, h, 3, 1, &out), TD_OK);
        assert_chain(&out, (const int32_t[]){7}, 1); /* it uses what it learnt */
        /* another request of the same batch */
        assert_int_equal(propose(d, 1, h, 3, 4, &out), TD_OK);
        assert_int_equal(out.n, k == 0 ? 0 : 3);
        /* the next request on sequence 0 */
        d->ops->reset(d, 0);
        assert_int_equal(propose(d, 0, h, 3, 4, &out), TD_OK);
        assert_int_equal(out.n, k == 0 ? 0 : 3);
    }
    td_err e = {0};
    assert_null(td_spec_recycle_create_scoped(20, 3, (td_drafter_scope)7, &e));
    assert_int_equal(e.code, TD_E_ARG);
    td_drafter_destroy(req);
    td_drafter_destroy(ten);
}

/* The longer contexts: after (1, 2) and after (5, 2) the target said
 * different things; the one-token row of 2 holds only the newest. */
static void recycle_longer_contexts(void **state) {
    (void)state;
    td_drafter *d = td_spec_recycle_create(20, 2, NULL);
    assert_non_null(d);
    const int32_t after12[] = {7, 9}, after52[] = {8, 9}, after27[] = {11, 12};
    td_observation obs[] = {{2, after12, 2, {1, -1}}, {2, after52, 2, {5, -1}}, {7, after27, 2, {2, -1}}};
    d->ops->observe(d, 0, obs, 3);
    td_draft out;
    /* known pair: its row first, then the one-token row's other entries */
    assert_int_equal(propose(d, 0, (const int32_t[]){1, 2}, 2, 1, &out), TD_OK);
    assert_chain(&out, (const int32_t[]){7}, 1);
    assert_int_equal(propose(d, 0, (const int32_t[]){1, 2}, 2, 3, &out), TD_OK);
    assert_valid_tree(&out, 3);
    assert_int_equal(out.token[0], 7);
    bool has8 = false;
    for (int32_t i = 0; i < out.n; i++) has8 |= out.token[i] == 8 && out.parent[i] == -1;
    assert_true(has8); /* the one-token row's 8 fills the second rank */
    assert_int_equal(propose(d, 0, (const int32_t[]){5, 2}, 2, 1, &out), TD_OK);
    assert_chain(&out, (const int32_t[]){8}, 1);
    /* unknown pair or no token before: the one-token row (newest: 8) */
    assert_int_equal(propose(d, 0, (const int32_t[]){3, 2}, 2, 1, &out), TD_OK);
    assert_chain(&out, (const int32_t[]){8}, 1);
    assert_int_equal(propose(d, 0, (const int32_t[]){2}, 1, 1, &out), TD_OK);
    assert_chain(&out, (const int32_t[]){8}, 1);
    /* inside the tree a child's context is (its grandparent, its parent):
     * below 7 (after 2) comes the (2, 7) row */
    assert_int_equal(propose(d, 0, (const int32_t[]){1, 2}, 2, 8, &out), TD_OK);
    assert_valid_tree(&out, 8);
    for (int32_t i = 0; i < out.n; i++)
        if (out.parent[i] >= 0 && out.token[out.parent[i]] == 7 && out.parent[out.parent[i]] < 0)
            assert_true(out.token[i] == 11 || out.token[i] == 12);
    /* three tokens: after (4, 1, 2) the three-token row leads, then the
     * two-token row of (1, 2), then the one-token row */
    const int32_t after412[] = {13, 7};
    td_observation o3 = {2, after412, 2, {1, 4}};
    d->ops->observe(d, 0, &o3, 1);
    assert_int_equal(propose(d, 0, (const int32_t[]){4, 1, 2}, 3, 1, &out), TD_OK);
    assert_chain(&out, (const int32_t[]){13}, 1);
    /* (9, 5, 2) is unknown: the (5, 2) row */
    assert_int_equal(propose(d, 0, (const int32_t[]){9, 5, 2}, 3, 1, &out), TD_OK);
    assert_chain(&out, (const int32_t[]){8}, 1);
    td_drafter_destroy(d);
}

/* ---- tree helpers ---- */

static td_draft make_tree(int32_t n, const int32_t *tok, const int32_t *par) {
    td_draft d;
    memset(&d, 0, sizeof d);
    d.n = n;
    if (n > 0) {
        memcpy(d.token, tok, (size_t)n * sizeof *tok);
        memcpy(d.parent, par, (size_t)n * sizeof *par);
    }
    return d;
}

static void accept_path_cases(void **state) {
    (void)state;
    int32_t path[TD_DRAFT_MAX];
    /* Chain fully accepted: target has the bonus token at the end. */
    td_draft c = make_tree(3, (int32_t[]){10, 11, 12}, (int32_t[]){-1, 0, 1});
    assert_int_equal(td_draft_accept_path(&c, (int32_t[]){10, 11, 12, 13}, path), 3);
    assert_memory_equal(path, ((int32_t[]){0, 1, 2}), 3 * sizeof(int32_t));
    /* Partly accepted; mismatch at the root. */
    assert_int_equal(td_draft_accept_path(&c, (int32_t[]){10, 11, 99, 0}, path), 2);
    assert_memory_equal(path, ((int32_t[]){0, 1}), 2 * sizeof(int32_t));
    assert_int_equal(td_draft_accept_path(&c, (int32_t[]){9, 11, 12, 13}, path), 0);

    /* Branch chosen by the target: roots 1 and 2; 1 -> 3, 2 -> 4, 2 -> 5.
     * target[k+1] is what the target produced after node k. */
    td_draft t = make_tree(5, (int32_t[]){1, 2, 3, 4, 5}, (int32_t[]){-1, -1, 0, 1, 1});
    assert_int_equal(td_draft_accept_path(&t, (int32_t[]){2, 3, 5, 0, 0, 0}, path), 2);
    assert_memory_equal(path, ((int32_t[]){1, 4}), 2 * sizeof(int32_t));
    assert_int_equal(td_draft_accept_path(&t, (int32_t[]){1, 3, 5, 0, 0, 0}, path), 2);
    assert_memory_equal(path, ((int32_t[]){0, 2}), 2 * sizeof(int32_t));
    assert_int_equal(td_draft_accept_path(&t, (int32_t[]){1, 4, 5, 0, 0, 0}, path), 1);
    assert_memory_equal(path, ((int32_t[]){0}), sizeof(int32_t));

    /* Duplicate siblings: the first is taken... */
    td_draft u = make_tree(4, (int32_t[]){7, 7, 8, 8}, (int32_t[]){-1, -1, 0, 1});
    assert_int_equal(td_draft_accept_path(&u, (int32_t[]){7, 8, 8, 0, 0}, path), 2);
    assert_memory_equal(path, ((int32_t[]){0, 2}), 2 * sizeof(int32_t));
    /* ...unless only the second leads further (longest path wins). */
    td_draft v = make_tree(4, (int32_t[]){7, 7, 8, 9}, (int32_t[]){-1, -1, 0, 1});
    assert_int_equal(td_draft_accept_path(&v, (int32_t[]){7, 9, 9, 0, 0}, path), 2);
    assert_memory_equal(path, ((int32_t[]){1, 3}), 2 * sizeof(int32_t));

    /* Malformed: a parent after its child is never accepted; bad args. */
    td_draft m = make_tree(2, (int32_t[]){1, 2}, (int32_t[]){1, -1});
    assert_int_equal(td_draft_accept_path(&m, (int32_t[]){2, 1, 0}, path), 1);
    assert_int_equal(path[0], 1);
    assert_int_equal(td_draft_accept_path(NULL, (int32_t[]){1}, path), 0);
    td_draft e = make_tree(0, NULL, NULL);
    assert_int_equal(td_draft_accept_path(&e, (int32_t[]){1}, path), 0);
    e.n = -3;
    assert_int_equal(td_draft_accept_path(&e, (int32_t[]){1}, path), 0);
}

static void depths_cases(void **state) {
    (void)state;
    td_draft t = make_tree(6, (int32_t[]){1, 2, 3, 4, 5, 6}, (int32_t[]){-1, -1, 0, 2, 1, 7});
    int32_t depth[TD_DRAFT_MAX];
    td_draft_depths(&t, depth);
    assert_memory_equal(depth, ((int32_t[]){1, 1, 2, 3, 2, 0}), 6 * sizeof(int32_t));
    td_draft_depths(NULL, depth); /* no crash */
}

static void context_cases(void **state) {
    (void)state;
    /* history 7 8 9; tree: 1 (root child), 2 under 1, 3 under 2, 4 (root child) */
    td_draft t = make_tree(4, (int32_t[]){1, 2, 3, 4}, (int32_t[]){-1, 0, 1, -1});
    const int32_t h[] = {7, 8, 9};
    int32_t ctx[4];
    td_draft_context(&t, 2, h, 3, 4, ctx); /* 3 <- 2 <- 1 <- 9 */
    assert_memory_equal(ctx, ((int32_t[]){3, 2, 1, 9}), 4 * sizeof(int32_t));
    td_draft_context(&t, 3, h, 3, 3, ctx); /* 4, then the history */
    assert_memory_equal(ctx, ((int32_t[]){4, 9, 8}), 3 * sizeof(int32_t));
    td_draft_context(&t, -1, h, 3, 4, ctx); /* the history's end; one short */
    assert_memory_equal(ctx, ((int32_t[]){9, 8, 7, -1}), 4 * sizeof(int32_t));
    td_draft_context(&t, 0, h, 0, 3, ctx); /* no history */
    assert_memory_equal(ctx, ((int32_t[]){1, -1, -1}), 3 * sizeof(int32_t));
}

/* ---- arguments ---- */

/* Constructors say why they failed: the code tells a caller's mistake from
 * running out of memory, the message names the drafter and the parameter. */
static void constructors_say_why(void **state) {
    (void)state;
    td_err e = {0};
    assert_null(td_spec_lookup_create(0, 3, &e));
    assert_int_equal(e.code, TD_E_ARG);
    assert_non_null(strstr(e.msg, "lookup"));
    e = (td_err){0};
    assert_null(td_spec_lookup_tree_create(1, 3, 9, &e));
    assert_int_equal(e.code, TD_E_ARG);
    assert_non_null(strstr(e.msg, "branches"));
    e = (td_err){0};
    assert_null(td_spec_ngram_create(1, 4, &e));
    assert_int_equal(e.code, TD_E_ARG);
    assert_non_null(strstr(e.msg, "n-gram"));
    e = (td_err){0};
    assert_null(td_spec_recycle_create(INT32_MAX, 64, &e));
    assert_int_equal(e.code, TD_E_ARG);
    assert_non_null(strstr(e.msg, "recycle"));
    e = (td_err){0};
    assert_null(td_sampler_create(NULL, 0, &e));
    assert_int_equal(e.code, TD_E_ARG);
    td_sample_params bad = td_sample_defaults();
    bad.top_p = 2;
    e = (td_err){0};
    assert_null(td_sampler_create(&bad, 10, &e));
    assert_int_equal(e.code, TD_E_ARG);
    assert_non_null(strstr(e.msg, "top_p"));
    e = (td_err){0};
    assert_null(td_pool_create(0, &e));
    assert_int_equal(e.code, TD_E_ARG);
    e = (td_err){0};
    assert_null(td_kv_create(NULL, 1, 1, &e));
    assert_int_equal(e.code, TD_E_ARG);
    e = (td_err){0};
    assert_null(td_ctx_create(NULL, 1, NULL, &e));
    assert_int_equal(e.code, TD_E_ARG);
    const char *stops[1] = {NULL};
    e = (td_err){0};
    assert_null(td_textout_create(stops, 1, NULL, NULL, &e));
    assert_int_equal(e.code, TD_E_ARG);
}

static void bad_arguments(void **state) {
    (void)state;
    assert_null(td_spec_lookup_create(0, 3, NULL));
    assert_null(td_spec_lookup_create(3, 2, NULL));
    assert_null(td_spec_lookup_create(-1, -1, NULL));
    assert_null(td_spec_lookup_create(1, 100, NULL));
    assert_null(td_spec_lookup_tree_create(1, 3, 0, NULL));
    assert_null(td_spec_lookup_tree_create(1, 3, 9, NULL));
    assert_null(td_spec_ngram_create(1, 4, NULL));
    assert_null(td_spec_ngram_create(3, 0, NULL));
    assert_null(td_spec_ngram_create(3, -5, NULL));
    assert_null(td_spec_ngram_create(99, 4, NULL));
    assert_null(td_spec_recycle_create(0, 8, NULL));
    assert_null(td_spec_recycle_create(100, 0, NULL));
    assert_null(td_spec_recycle_create(-100, 8, NULL));
    assert_null(td_spec_recycle_create(100, 1000, NULL));
    assert_null(td_spec_recycle_create(INT32_MAX, 64, NULL));
    td_drafter_destroy(NULL);

    td_drafter *ds[3] = {td_spec_lookup_create(1, 4, NULL), td_spec_ngram_create(3, 8, NULL),
                         td_spec_recycle_create(50, 4, NULL)};
    const int32_t h[] = {1, 2, 1, 2, 1};
    for (int i = 0; i < 3; i++) {
        td_drafter *d = ds[i];
        assert_non_null(d);
        assert_non_null(d->ops->name);
        td_draft out;
        out.n = 7;
        assert_int_equal(propose(d, -1, h, 5, 4, &out), TD_E_ARG);
        assert_int_equal(out.n, 0);
        out.n = 7;
        assert_int_equal(propose(d, 0, NULL, 5, 4, &out), TD_E_ARG);
        assert_int_equal(out.n, 0);
        out.n = 7;
        assert_int_equal(propose(d, 0, h, 5, -1, &out), TD_E_ARG);
        assert_int_equal(out.n, 0);
        assert_int_equal(propose(d, 0, h, 5, 4, NULL), TD_E_ARG);
        out.n = 7;
        assert_int_equal(propose(d, 0, NULL, 0, 4, &out), TD_OK);
        assert_int_equal(out.n, 0);
        /* Harmless no-ops; accept and observe may be absent. */
        if (d->ops->accept) {
            d->ops->accept(d, -1, h, 5, 1);
            d->ops->accept(d, 0, NULL, 5, 1);
        }
        if (d->ops->observe) d->ops->observe(d, 0, NULL, 4);
        d->ops->reset(d, -4);
        td_drafter_destroy(d);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(lookup_longest_then_newest),
        cmocka_unit_test(lookup_falls_back_to_shorter),
        cmocka_unit_test(lookup_no_match_and_limits),
        cmocka_unit_test(lookup_branches),
        cmocka_unit_test(lookup_matches_brute_force),
        cmocka_unit_test(lookup_reset_forgets),
        cmocka_unit_test(ngram_counts_follow_accepted_text),
        cmocka_unit_test(ngram_backs_off_and_chains),
        cmocka_unit_test(ngram_demotes_failing_context),
        cmocka_unit_test(ngram_limits),
        cmocka_unit_test(recycle_tree_shape),
        cmocka_unit_test(recycle_observe_checks),
        cmocka_unit_test(recycle_longer_contexts),
        cmocka_unit_test(recycle_scopes),
        cmocka_unit_test(accept_path_cases),
        cmocka_unit_test(depths_cases),
        cmocka_unit_test(context_cases),
        cmocka_unit_test(bad_arguments),
        cmocka_unit_test(constructors_say_why),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
