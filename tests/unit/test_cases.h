/* test_cases.h — which of a cmocka program's cases run, the same way in
 * every program that includes it: TD_TEST_FILTER runs only the cases a
 * cmocka pattern names (* and ?), TD_TEST_SKIP leaves out the cases it
 * lists (names, comma separated; CI's sanitizer steps leave a few long ones
 * to the release build). Include after <cmocka.h>. */
#ifndef TD_TEST_CASES_H
#define TD_TEST_CASES_H

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Whether name is one of the comma-separated names in list. */
static inline bool test_case_listed(const char *list, const char *name) {
    const size_t n = strlen(name);
    for (const char *p = list; p && *p;) {
        const char *end = strchr(p, ',');
        const size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && !strncmp(p, name, n)) return true;
        p = end ? end + 1 : NULL;
    }
    return false;
}

/* Runs the cases of all[0..n) the environment keeps; kept has room for n. */
static inline int test_cases_run(const char *group, const struct CMUnitTest *all, size_t n, struct CMUnitTest *kept,
                                 CMFixtureFunction setup, CMFixtureFunction teardown) {
    const char *only = getenv("TD_TEST_FILTER"), *skip = getenv("TD_TEST_SKIP");
    if (only && *only) cmocka_set_test_filter(only);
    size_t n_kept = 0;
    for (size_t i = 0; i < n; i++)
        if (!skip || !test_case_listed(skip, all[i].name)) kept[n_kept++] = all[i];
    return _cmocka_run_group_tests(group, kept, n_kept, setup, teardown);
}

#endif
