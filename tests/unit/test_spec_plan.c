/* test_spec_plan.c — the planner that sizes each verification pass:
 * acceptance learned per (drafter, class, depth), the row cost learned from
 * pass times, and pruning that keeps whole paths, prefers likelier nodes
 * across sequences and stops where one more row would lower tokens per
 * second. Exactness with the planner on is tested in test_spec. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <string.h>

#include "spec/spec_plan.h"

static void chain(td_draft *d, int8_t *origin, int32_t n, uint8_t conf, int8_t who) {
    memset(d, 0, sizeof *d);
    for (int32_t i = 0; i < n; i++) {
        d->token[i] = 100 + i;
        d->parent[i] = i - 1;
        d->conf[i] = conf;
        origin[i] = who;
    }
    d->n = n;
}

static void teach(td_spec_plan *p, int who, int conf, float rate, int n) {
    for (int depth = 1; depth <= TD_PLAN_DEPTHS; depth++)
        for (int i = 0; i < n; i++) td_spec_plan_learn(p, who, conf, depth, i < rate * n);
}

static void assert_closed(const td_draft *d) {
    for (int32_t i = 0; i < d->n; i++) assert_true(d->parent[i] >= -1 && d->parent[i] < i);
}

static void alpha_learns_and_ages(void **state) {
    (void)state;
    td_spec_plan p;
    td_spec_plan_init(&p, 0.2f);
    float prior = td_spec_plan_alpha(&p, 0, 0, 1);
    assert_true(prior > 0.3f && prior < 0.5f);
    teach(&p, 0, 3, 0.9f, 40);
    teach(&p, 1, 0, 0.1f, 40);
    assert_true(td_spec_plan_alpha(&p, 0, 3, 1) > 0.8f);
    assert_true(td_spec_plan_alpha(&p, 1, 0, 5) < 0.2f);
    assert_true(fabsf(td_spec_plan_alpha(&p, 2, 0, 1) - prior) < 1e-6f); /* untouched cell */
    assert_true(fabsf(td_spec_plan_alpha(&p, 99, 0, 1) - prior) < 1e-6f); /* out of range: prior */
    /* an unreached depth inherits the depth above it */
    for (int i = 0; i < 40; i++) td_spec_plan_learn(&p, 3, 2, 1, i % 10 != 0);
    assert_true(td_spec_plan_alpha(&p, 3, 2, 4) > 0.8f);
    for (int i = 0; i < 40; i++) td_spec_plan_learn(&p, 3, 2, 2, false);
    assert_true(td_spec_plan_alpha(&p, 3, 2, 2) < 0.1f);
    assert_true(td_spec_plan_alpha(&p, 3, 2, 3) < 0.1f);
    for (int i = 0; i < 400; i++) td_spec_plan_age(&p);
    assert_true(fabsf(td_spec_plan_alpha(&p, 1, 0, 5) - prior) < 0.02f); /* back to trying it */
}

static void prune_follows_acceptance(void **state) {
    (void)state;
    td_spec_plan p;
    td_spec_plan_init(&p, 0.2f);
    teach(&p, 0, 3, 0.95f, 60);
    teach(&p, 0, 0, 0.05f, 60);
    td_draft d;
    int8_t origin[TD_DRAFT_MAX];
    td_draft *ds[1] = {&d};
    int8_t *os[1] = {origin};
    td_plan_node scratch[TD_DRAFT_MAX];

    chain(&d, origin, 8, 3, 0);
    assert_int_equal(td_spec_plan_prune(&p, ds, os, 1, scratch), 8); /* sure nodes: keep all */
    assert_int_equal(d.n, 8);
    chain(&d, origin, 8, 0, 0);
    assert_int_equal(td_spec_plan_prune(&p, ds, os, 1, scratch), 0); /* hopeless: plain decoding */
    assert_int_equal(d.n, 0);

    /* Costly rows: even sure nodes stop once a row costs more than it brings. */
    td_spec_plan dear = p;
    dear.row_cost = 1.5;
    chain(&d, origin, 8, 3, 0);
    int32_t kept = td_spec_plan_prune(&dear, ds, os, 1, scratch);
    assert_true(kept < 8);
    assert_int_equal(d.n, kept);

    /* Load: a pass shared with 15 other streams' rows. Middling drafts
     * (acceptance 0.5) pay alone but not when every extra row delays all
     * sixteen streams; sure ones still do. */
    td_spec_plan mid;
    td_spec_plan_init(&mid, 0.2f);
    teach(&mid, 0, 1, 0.5f, 60);
    chain(&d, origin, 1, 1, 0);
    assert_int_equal(td_spec_plan_prune(&mid, ds, os, 1, scratch), 1);
    mid.shared_rows = 15;
    chain(&d, origin, 1, 1, 0);
    assert_int_equal(td_spec_plan_prune(&mid, ds, os, 1, scratch), 0);
    p.shared_rows = 15;
    chain(&d, origin, 8, 3, 0);
    assert_true(td_spec_plan_prune(&p, ds, os, 1, scratch) >= 1);
}

/* A planner whose estimates say "never" still tries the best node now and
 * then, learns from it, and returns to drafting when the drafts are good. */
static void starved_planner_probes(void **state) {
    (void)state;
    td_spec_plan p;
    td_spec_plan_init(&p, 0.6f); /* a row dearer than the prior's 0.4 gain */
    td_draft d;
    int8_t origin[TD_DRAFT_MAX];
    td_draft *ds[1] = {&d};
    int8_t *os[1] = {origin};
    td_plan_node scratch[TD_DRAFT_MAX];
    int probes = 0, first_probe = -1;
    for (int pass = 0; pass < 3 * TD_PLAN_PROBE_EVERY; pass++) {
        chain(&d, origin, 4, 2, 0);
        int32_t kept = td_spec_plan_prune(&p, ds, os, 1, scratch);
        assert_int_equal(d.n, kept);
        if (kept == 0) continue;
        assert_int_equal(kept, 1);
        assert_int_equal(d.parent[0], -1); /* the probe is a root child */
        if (first_probe < 0) first_probe = pass;
        probes++;
        /* verification rejected the probe: learn it, as spec_run does */
        td_spec_plan_learn(&p, 0, 2, 1, false);
    }
    assert_int_equal(first_probe, TD_PLAN_PROBE_EVERY - 1);
    assert_int_equal(probes, 3);
    /* with evidence that the class is always right, drafting resumes */
    teach(&p, 0, 2, 1.0f, 60);
    chain(&d, origin, 4, 2, 0);
    assert_true(td_spec_plan_prune(&p, ds, os, 1, scratch) >= 2);
    /* nothing drafted: no probe, and the count starts over */
    p.starved = TD_PLAN_PROBE_EVERY - 1;
    d.n = 0;
    assert_int_equal(td_spec_plan_prune(&p, ds, os, 1, scratch), 0);
    assert_int_equal(p.starved, 0);
}

static void prune_keeps_paths_and_remaps(void **state) {
    (void)state;
    td_spec_plan p;
    td_spec_plan_init(&p, 0.1f);
    teach(&p, 0, 3, 0.9f, 60);
    teach(&p, 0, 0, 0.02f, 60);
    /* root chain a(3) -> b(3) -> c(3); a weak branch x(0) under a with a sure
     * child y(3): y's path goes through x, so y must go when x goes. */
    td_draft d = {0};
    int8_t origin[TD_DRAFT_MAX] = {0};
    const int32_t parent[] = {-1, 0, 0, 1, 2};
    const uint8_t conf[] = {3, 0, 3, 3, 3};
    for (int32_t i = 0; i < 5; i++) {
        d.token[i] = 10 + i;
        d.parent[i] = parent[i];
        d.conf[i] = conf[i];
    }
    d.n = 5; /* order: a x b y c */
    td_draft *ds[1] = {&d};
    int8_t *os[1] = {origin};
    td_plan_node scratch[TD_DRAFT_MAX];
    td_spec_plan_prune(&p, ds, os, 1, scratch);
    assert_closed(&d);
    assert_int_equal(d.n, 3);
    assert_int_equal(d.token[0], 10);
    assert_int_equal(d.token[1], 12);
    assert_int_equal(d.parent[1], 0);
    assert_int_equal(d.token[2], 14);
    assert_int_equal(d.parent[2], 1);
}

static void prune_shares_rows_across_sequences(void **state) {
    (void)state;
    td_spec_plan p;
    td_spec_plan_init(&p, 0.25f);
    teach(&p, 0, 3, 0.9f, 60);
    teach(&p, 1, 1, 0.3f, 60);
    td_draft a, b;
    int8_t oa[TD_DRAFT_MAX], ob[TD_DRAFT_MAX];
    chain(&a, oa, 6, 3, 0);
    chain(&b, ob, 6, 1, 1);
    td_draft *ds[2] = {&a, &b};
    int8_t *os[2] = {oa, ob};
    td_plan_node scratch[2 * TD_DRAFT_MAX];
    int32_t kept = td_spec_plan_prune(&p, ds, os, 2, scratch);
    assert_int_equal(kept, a.n + b.n);
    assert_true(a.n > b.n); /* the likelier sequence gets the rows */
    assert_true(a.n >= 4);
    assert_closed(&a);
    assert_closed(&b);
}

static void row_cost_is_learned(void **state) {
    (void)state;
    td_spec_plan p;
    td_spec_plan_init(&p, 0.0f); /* learn */
    for (int i = 0; i < 400; i++) {
        int32_t rows = 1 + i % 8;
        td_spec_plan_time(&p, rows, 0.010 * (1.0 + 0.35 * (rows - 1)));
    }
    assert_true(fabs(p.row_cost - 0.35) < 0.03);
    assert_true(fabs(p.base_sec - 0.010) < 0.001);
    td_spec_plan fixed;
    td_spec_plan_init(&fixed, 0.5f);
    for (int i = 0; i < 50; i++) td_spec_plan_time(&fixed, 4, 0.02);
    assert_true(fabs(fixed.row_cost - 0.5) < 1e-9); /* a given cost stays */
    td_spec_plan_time(&p, 0, 1.0);                   /* nonsense is ignored */
    td_spec_plan_time(&p, 3, -1.0);
    td_spec_plan_time(&p, 3, NAN);
    assert_true(fabs(p.row_cost - 0.35) < 0.03);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(alpha_learns_and_ages),
        cmocka_unit_test(prune_follows_acceptance),
        cmocka_unit_test(starved_planner_probes),
        cmocka_unit_test(prune_keeps_paths_and_remaps),
        cmocka_unit_test(prune_shares_rows_across_sequences),
        cmocka_unit_test(row_cost_is_learned),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
