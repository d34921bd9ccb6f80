/* test_util.c — SHA-256 against FIPS test vectors, CRC-32 against its
 * standard check value and zip archives read back by Python's zipfile, the
 * thread pool's every-thread-runs-once promise, work splitting and error
 * formatting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/util.h"

static void sha256_vectors(void **state) {
    (void)state;
    char hex[65];
    td_sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    td_sha256_hex("", 0, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    /* Two-block message, fed in odd-sized pieces to exercise buffering. */
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    td_sha256 s;
    uint8_t d[32];
    td_sha256_init(&s);
    for (size_t i = 0; i < strlen(m); i += 7)
        td_sha256_update(&s, m + i, strlen(m) - i < 7 ? strlen(m) - i : 7);
    td_sha256_final(&s, d);
    static const uint8_t want[4] = {0x24, 0x8d, 0x6a, 0x61};
    assert_memory_equal(d, want, 4);
}

typedef struct {
    _Atomic int calls[8];
    _Atomic int64_t sum, next;
    _Atomic int claims;
} pool_job;

static void pool_fn(void *ctx, int ith, int nth) {
    pool_job *j = ctx;
    assert_true(ith >= 0 && ith < nth);
    atomic_fetch_add(&j->calls[ith], 1);
    int64_t lo, hi, acc = 0;
    while (td_claim(&j->next, 1000, 7, &lo, &hi)) {
        atomic_fetch_add(&j->claims, 1);
        for (int64_t i = lo; i < hi; i++) acc += i;
    }
    atomic_fetch_add(&j->sum, acc);
}

/* The caller always runs; a worker runs a job at most once, or skips it if
 * the caller finished first; either way the claimed work is done exactly
 * once by the time td_pool_run returns. */
static void crc32_check_value(void **state) {
    (void)state;
    assert_int_equal(td_crc32(0, "123456789", 9), 0xCBF43926u); /* CRC-32/ISO-HDLC's check value */
    assert_int_equal(td_crc32(0, "", 0), 0);
    /* in pieces, continuing from the previous value */
    assert_int_equal(td_crc32(td_crc32(0, "1234", 4), "56789", 5), 0xCBF43926u);
}

/* Two files zipped, then listed and checked (CRC included) by Python's
 * zipfile, an independent reader; bad arguments refused. */
static void zip_read_back(void **state) {
    (void)state;
    static const char big_text[] = "{\"version\": \"1.0\"}\n";
    char *big = malloc(100000);
    assert_non_null(big);
    for (size_t i = 0; i < 100000; i++) big[i] = (char)('a' + i % 26);
    td_zip_file files[3] = {{"tokenizer.json", big, 100000}, {"dir/config.json", big_text, sizeof big_text - 1},
                            {"empty", NULL, 0}};
    uint8_t *zip = NULL;
    size_t len = 0;
    td_err err = {0};
    assert_int_equal(td_zip_store(files, 3, &zip, &len, &err), TD_OK);
    char path[] = "/tmp/td_zip_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, zip, len), (ssize_t)len);
    close(fd);
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); "
             "assert z.testzip() is None; n = z.namelist(); assert n == [\"tokenizer.json\", \"dir/config.json\", \"empty\"], n; "
             "d = z.read(\"tokenizer.json\"); assert len(d) == 100000 and d[:3] == b\"abc\" and d[-1:] == b\"d\"; "
             "assert z.read(\"dir/config.json\") == b\"{\\\"version\\\": \\\"1.0\\\"}\\n\"; assert z.read(\"empty\") == b\"\"' %s",
             path);
    assert_int_equal(system(cmd), 0);
    unlink(path);
    free(zip);
    free(big);
    td_zip_file bad[1] = {{"", "x", 1}};
    assert_int_equal(td_zip_store(bad, 1, &zip, &len, &err), TD_E_ARG);
    assert_null(zip);
    td_zip_file nodata[1] = {{"a", NULL, 5}};
    assert_int_equal(td_zip_store(nodata, 1, &zip, &len, &err), TD_E_ARG);
    assert_int_equal(td_zip_store(NULL, 0, &zip, &len, &err), TD_OK); /* an empty archive */
    assert_int_equal(len, 22);
    free(zip);
}

static void pool_runs_claimed_work_once(void **state) {
    (void)state;
    for (int n = 1; n <= 4; n++) {
        td_pool *p = td_pool_create(n, NULL);
        assert_non_null(p);
        assert_int_equal(td_pool_size(p), n);
        for (int rep = 0; rep < 2000; rep++) {
            pool_job j;
            memset(&j, 0, sizeof j);
            td_pool_run(p, pool_fn, &j);
            assert_int_equal(atomic_load(&j.calls[0]), 1);
            for (int t = 1; t < n; t++) assert_true(atomic_load(&j.calls[t]) <= 1);
            assert_int_equal(atomic_load(&j.sum), 999 * 1000 / 2);
            assert_int_equal(atomic_load(&j.claims), (1000 + 6) / 7);
        }
        td_pool_destroy(p);
    }
    assert_null(td_pool_create(0, NULL));
}

static void claim_chunks_cover_range(void **state) {
    (void)state;
    for (int64_t n = 0; n <= 70; n += 7)
        for (int nth = 1; nth <= 5; nth++)
            for (int per = 1; per <= 4; per++)
                for (int64_t align = 1; align <= 32; align *= 4) {
                    int64_t chunk = td_claim_chunk(n, nth, per, align), lo, hi, covered = 0;
                    assert_true(chunk >= align && chunk % align == 0);
                    if (n > 0 && align == 1) assert_true((n + chunk - 1) / chunk <= (int64_t)nth * per);
                    _Atomic int64_t next;
                    atomic_init(&next, 0);
                    while (td_claim(&next, n, chunk, &lo, &hi)) {
                        assert_int_equal(lo, covered);
                        assert_true(hi > lo && hi - lo <= chunk);
                        covered = hi;
                    }
                    assert_int_equal(covered, n);
                }
}

/* The claims played out the plain way, for checking td_claim_plan: nth
 * threads, each unit to the thread free first (lowest index on ties). */
static double naive_busiest(const td_claim_span *sp, int n_sp, int nth, int64_t chunk, double per_claim) {
    double t[64] = {0}, total = 0;
    for (int i = 0; i < n_sp; i++) {
        total += (double)sp[i].n * sp[i].cost;
        for (int64_t lo = 0; lo < sp[i].n; lo += chunk) {
            int first = 0;
            for (int k = 1; k < nth; k++)
                if (t[k] < t[first]) first = k;
            t[first] += per_claim + (double)(sp[i].n - lo < chunk ? sp[i].n - lo : chunk) * sp[i].cost;
        }
    }
    double most = 0;
    for (int k = 0; k < nth; k++)
        if (t[k] > most) most = t[k];
    return most / (total / nth);
}

static void claim_plan_evens_out(void **state) {
    (void)state;
    /* the default model's wo on 16 threads: 36 tiles of 16 columns. One
     * claim per thread rounds to 64 columns: 9 claims, the step takes 64
     * columns' time against an even 36. Chunks of 48 (12 claims) take 48. */
    td_claim_span wo = {576, 360};
    assert_int_equal(td_claim_chunk(576, 16, 1, 32), 64);
    assert_int_equal(td_claim_plan(&wo, 1, 16, 16, 16384), 48);
    assert_true(fabs(td_claim_busiest(&wo, 1, 16, 48, 0) - 48.0 / 36.0) < 1e-12);
    assert_true(fabs(td_claim_busiest(&wo, 1, 16, 64, 0) - 64.0 / 36.0) < 1e-12);
    /* a free claim would split q/k/v on 4 threads into 20 slivers; a costly
     * one keeps about one per thread */
    td_claim_span qkv[3] = {{576, 360}, {192, 360}, {192, 360}};
    assert_int_equal(td_claim_plan(qkv, 3, 4, 16, 0), 48);
    assert_true(td_claim_plan(qkv, 3, 4, 16, 16384) >= 240);
    /* edges: one thread takes each span whole; nothing to claim; align 0 */
    assert_int_equal(td_claim_plan(qkv, 3, 1, 32, 100), 576);
    assert_int_equal(td_claim_plan(NULL, 0, 8, 16, 100), 16);
    assert_int_equal(td_claim_plan(&wo, 1, 8, 0, 0), 72);
    assert_true(td_claim_busiest(&wo, 1, 0, 48, 0) == 1.0);
}

/* The plan is the best aligned chunk by an independent simulation, and
 * never worse than one claim per thread. */
static void claim_plan_is_the_best_chunk(void **state) {
    (void)state;
    int checked = 0;
    for (int nth = 1; nth <= 40; nth += 3)
        for (int64_t n0 = 1; n0 <= 1600; n0 = n0 * 3 + 7)
            for (int shape = 0; shape < 3; shape++) {
                td_claim_span sp[3] = {{n0, 1.0}, {n0 / 3 + 1, 1.0}, {n0 / 3 + 1, 2.5}};
                int n_sp = shape == 0 ? 1 : 3;
                if (shape == 2) sp[0].cost = 0.5;
                for (int64_t align = 1; align <= 32; align *= 4)
                    for (int pc = 0; pc < 2; pc++) {
                        double per_claim = pc ? 40.0 : 0.0;
                        int64_t plan = td_claim_plan(sp, n_sp, nth, align, per_claim);
                        assert_true(plan >= align && plan % align == 0);
                        double got = naive_busiest(sp, n_sp, nth, plan, per_claim);
                        assert_true(fabs(got - td_claim_busiest(sp, n_sp, nth, plan, per_claim)) < 1e-9);
                        int64_t one = td_claim_chunk(n0, nth, 1, align);
                        assert_true(got <= naive_busiest(sp, n_sp, nth, one, per_claim) + 1e-9);
                        for (int64_t c = align; c <= (n0 + align - 1) / align * align; c += align) {
                            int64_t claims = 0;
                            for (int i = 0; i < n_sp; i++) claims += (sp[i].n + c - 1) / c;
                            if (nth > 1 && claims <= 8 * nth)
                                assert_true(got <= naive_busiest(sp, n_sp, nth, c, per_claim) + 1e-9);
                        }
                        checked++;
                    }
            }
    assert_true(checked > 500);
}

static void err_formats(void **state) {
    (void)state;
    td_err e;
    assert_int_equal(td_err_set(&e, TD_E_FORMAT, "bad %s at %d", "key", 7), TD_E_FORMAT);
    assert_string_equal(e.msg, "bad key at 7");
    assert_int_equal(td_err_set(NULL, TD_E_IO, "ignored"), TD_E_IO);
    assert_string_equal(td_err_name(TD_E_NOMEM), "out of memory");
    uint64_t r;
    assert_false(td_mul_u64(UINT64_MAX / 2, 3, &r));
    assert_true(td_add_u64(1, 2, &r));
    assert_int_equal(r, 3);
}

/* The assert policy (docs/engine.md): assert() guards internal invariants in
 * every build, the sanitizer build included, so no build type may define
 * NDEBUG (CMake's RelWithDebInfo and MinSizeRel do by default). */
static void asserts_are_live(void **state) {
    (void)state;
#ifdef NDEBUG
    fail_msg("built with NDEBUG: internal invariants are not checked in this build");
#endif
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sha256_vectors),
        cmocka_unit_test(crc32_check_value),
        cmocka_unit_test(zip_read_back),
        cmocka_unit_test(pool_runs_claimed_work_once),
        cmocka_unit_test(claim_chunks_cover_range),
        cmocka_unit_test(claim_plan_evens_out),
        cmocka_unit_test(claim_plan_is_the_best_chunk),
        cmocka_unit_test(err_formats),
        cmocka_unit_test(asserts_are_live),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
