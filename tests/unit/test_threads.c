/* test_threads.c — the concurrency contract (model.h, util.h): one model
 * shared read-only by contexts on different threads, and one pool shared by
 * callers on different threads. Each check compares with a single-threaded
 * run, and the ThreadSanitizer build (scripts/test.sh) runs this file to
 * catch races that happen not to change a result. The shared-pool checks
 * failed before: td_pool_run wrote its job fields without a lock, so two
 * callers could run each other's job or return while it still ran.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf/gguf.h"
#include "model/model.h"
#include "util/util.h"

/* ---- one pool, two callers ---- */

enum { JOB_N = 4096, JOBS = 300 };

typedef struct count_job {
    _Atomic int64_t next;
    _Atomic int hits[JOB_N];
} count_job;

static void count_fn(void *ctx, int ith, int nth) {
    (void)ith;
    (void)nth;
    count_job *j = ctx;
    int64_t lo, hi;
    while (td_claim(&j->next, JOB_N, 64, &lo, &hi))
        for (int64_t i = lo; i < hi; i++) atomic_fetch_add(&j->hits[i], 1);
}

typedef struct caller_arg {
    td_pool *pool;
    int id;
    int bad; /* jobs whose indices were not each done exactly once */
} caller_arg;

static void *caller_main(void *p) {
    caller_arg *a = p;
    count_job *j = malloc(sizeof *j);
    if (!j) { a->bad = -1; return NULL; }
    for (int r = 0; r < JOBS; r++) {
        atomic_store(&j->next, 0);
        for (int i = 0; i < JOB_N; i++) atomic_store(&j->hits[i], 0);
        td_pool_run(a->pool, count_fn, j);
        for (int i = 0; i < JOB_N; i++)
            if (atomic_load(&j->hits[i]) != 1) { a->bad++; break; }
    }
    free(j);
    return NULL;
}

static void pool_shared_by_two_callers(void **state) {
    (void)state;
    td_pool *pool = td_pool_create(3, NULL);
    assert_non_null(pool);
    caller_arg a[2] = {{pool, 1, 0}, {pool, 2, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) assert_int_equal(pthread_create(&t[i], NULL, caller_main, &a[i]), 0);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    assert_int_equal(a[0].bad, 0);
    assert_int_equal(a[1].bad, 0);
    td_pool_destroy(pool);
}

/* ---- one model, two contexts on two threads ---- */

enum { N_PROMPT = 24, N_DECODE = 16 };

static struct {
    char dir[64], path[128];
    td_gguf *g;
    td_model *m;
    int32_t n_vocab;
    float *want; /* (N_DECODE + 1, n_vocab): logits after the prompt and each decoded token */
} M;

/* Prefill a fixed prompt, then decode greedily; logits of every step. */
static int run_sequence(td_ctx *c, td_kv *kv, float *out) {
    td_err err = {0};
    td_row rows[N_PROMPT];
    for (int32_t i = 0; i < N_PROMPT; i++) rows[i] = td_row_linear(0, i, (i * 37 + 11) % M.n_vocab, i == N_PROMPT - 1);
    int rc = td_model_forward(c, kv, rows, N_PROMPT, out, &err);
    for (int32_t s = 0; s < N_DECODE && !rc; s++) {
        const float *lg = out + (size_t)s * M.n_vocab;
        int32_t best = 0;
        for (int32_t v = 1; v < M.n_vocab; v++) if (lg[v] > lg[best]) best = v;
        td_row r = td_row_linear(0, N_PROMPT + s, best, true);
        rc = td_model_forward(c, kv, &r, 1, out + (size_t)(s + 1) * M.n_vocab, &err);
    }
    if (rc) fprintf(stderr, "# %s\n", err.msg);
    return rc;
}

typedef struct ctx_arg {
    td_pool *pool; /* shared by both threads, or NULL */
    int rounds;
    int mismatches, errors;
} ctx_arg;

static void *ctx_main(void *p) {
    ctx_arg *a = p;
    td_ctx *c = td_ctx_create(M.m, 64, a->pool, NULL);
    td_kv *kv = td_kv_create(M.m, 1, 128, NULL);
    float *got = malloc((size_t)(N_DECODE + 1) * M.n_vocab * sizeof *got);
    if (!c || !kv || !got) a->errors++;
    for (int r = 0; r < a->rounds && !a->errors; r++) {
        td_kv_truncate(kv, 0, 0);
        if (run_sequence(c, kv, got)) { a->errors++; break; }
        if (memcmp(got, M.want, (size_t)(N_DECODE + 1) * M.n_vocab * sizeof *got) != 0) a->mismatches++;
    }
    free(got);
    td_kv_destroy(kv);
    td_ctx_destroy(c);
    return NULL;
}

static int model_setup(void **s) {
    (void)s;
    snprintf(M.dir, sizeof M.dir, "/tmp/td_threads_XXXXXX");
    if (!mkdtemp(M.dir)) return -1;
    snprintf(M.path, sizeof M.path, "%s/tiny.gguf", M.dir);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s/td-mktiny %s > /dev/null", TD_BINARY_DIR, M.path);
    if (system(cmd) != 0) return -1;
    td_err err = {0};
    if (td_gguf_open(M.path, &M.g, &err) || td_model_load(M.g, &M.m, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    M.n_vocab = td_model_hparams(M.m)->n_vocab;
    M.want = malloc((size_t)(N_DECODE + 1) * M.n_vocab * sizeof *M.want);
    td_ctx *c = td_ctx_create(M.m, 64, NULL, NULL);
    td_kv *kv = td_kv_create(M.m, 1, 128, NULL);
    int rc = !M.want || !c || !kv || run_sequence(c, kv, M.want);
    td_ctx_destroy(c);
    td_kv_destroy(kv);
    return rc ? -1 : 0;
}

static int model_teardown(void **s) {
    (void)s;
    free(M.want);
    td_model_free(M.m);
    td_gguf_close(M.g);
    unlink(M.path);
    rmdir(M.dir);
    return 0;
}

static void two_contexts(td_pool *pool) {
    ctx_arg a[2] = {{pool, 6, 0, 0}, {pool, 6, 0, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) assert_int_equal(pthread_create(&t[i], NULL, ctx_main, &a[i]), 0);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(a[i].errors, 0);
        assert_int_equal(a[i].mismatches, 0);
    }
}

static void two_contexts_one_model(void **state) {
    (void)state;
    two_contexts(NULL);
}

/* The same with both contexts on one shared pool: their jobs take turns. */
static void two_contexts_one_model_one_pool(void **state) {
    (void)state;
    td_pool *pool = td_pool_create(2, NULL);
    assert_non_null(pool);
    two_contexts(pool);
    td_pool_destroy(pool);
}

/* ---- a job of phases ----
 * Phase k's unit u writes v[k][u] = u + the sum of every v[k-1]: a unit
 * that ran before the whole phase before it was done would read a value not
 * yet written (the arrays start as NaN). Empty phases and chunks of several
 * units in between; pools of 1, 2 and 4 threads (4 on a 2-core machine:
 * workers enter late or not at all); against the sums computed here. */
#define PH_N 9
#define PH_UNITS 37

typedef struct phase_arg {
    double v[PH_N][PH_UNITS];
} phase_arg;

static void phase_fn(void *ctx, const td_phase *ph, int64_t lo, int64_t hi, int ith) {
    phase_arg *a = ctx;
    (void)ith;
    for (int64_t u = lo; u < hi; u++) {
        double prev = 0;
        if (ph->arg > 0)
            for (int i = 0; i < PH_UNITS; i++) prev += a->v[ph->arg - 1][i];
        a->v[ph->arg][u] = (double)u + prev;
    }
}

static void phases_run_in_order(void **state) {
    (void)state;
    double want[PH_N][PH_UNITS];
    for (int k = 0; k < PH_N; k++) {
        double prev = 0;
        for (int i = 0; k > 0 && i < PH_UNITS; i++) prev += want[k - 1][i];
        for (int u = 0; u < PH_UNITS; u++) want[k][u] = u + prev;
    }
    int sizes[3] = {1, 2, 4};
    for (int t = 0; t < 3; t++) {
        td_pool *pool = td_pool_create(sizes[t], NULL);
        assert_non_null(pool);
        td_phase ph[2 * PH_N];
        phase_arg *a = malloc(sizeof *a);
        assert_non_null(a);
        int64_t *ns = calloc((size_t)sizes[t] * 2 * PH_N * 2, sizeof *ns);
        assert_non_null(ns);
        for (int rep = 0; rep < 200; rep++) {
            int64_t n = 0;
            for (int k = 0; k < PH_N; k++) {
                if (k % 3 == 1) ph[n++] = (td_phase){.kind = 1, .arg = k, .n_units = 0, .chunk = 1};
                ph[n++] = (td_phase){.kind = 0, .arg = k, .n_units = PH_UNITS, .chunk = 1 + k % 4};
            }
            for (int k = 0; k < PH_N; k++)
                for (int u = 0; u < PH_UNITS; u++) a->v[k][u] = NAN;
            if (rep % 2 == 0) {
                td_pool_run_phases(pool, ph, n, phase_fn, a);
            } else { /* timed: the same order, and the times add up */
                memset(ns, 0, (size_t)sizes[t] * (size_t)n * 2 * sizeof *ns);
                int64_t t0 = td_now_ns();
                td_pool_run_phases_timed(pool, ph, n, phase_fn, a, ns);
                int64_t wall = td_now_ns() - t0;
                int64_t caller_work = 0;
                for (int th = 0; th < sizes[t]; th++) {
                    int64_t sum = 0;
                    for (int64_t i = 0; i < 2 * n; i++) {
                        assert_true(ns[(size_t)th * (size_t)n * 2 + (size_t)i] >= 0);
                        sum += ns[(size_t)th * (size_t)n * 2 + (size_t)i];
                    }
                    /* a thread's intervals are disjoint and inside the call */
                    assert_true(sum <= wall);
                }
                for (int64_t i = 0; i < n; i++) {
                    if (ph[i].n_units == 0) assert_int_equal(ns[2 * i] + ns[2 * i + 1], 0);
                    caller_work += ns[2 * i + 1];
                }
                assert_true(caller_work > 0); /* the caller always works: every phase may be its alone */
            }
            assert_memory_equal(a->v, want, sizeof want);
        }
        free(ns);
        free(a);
        td_pool_destroy(pool);
    }
}

/* ---- pinning ----
 * A pinned worker may run on one CPU only (its own affinity, read from
 * inside a job); more threads than CPUs is refused with the reason. */
static void affinity_fn(void *ctx, int ith, int nth) {
    _Atomic int *cpus_of_1 = ctx;
    (void)nth;
    cpu_set_t set;
    if (ith == 1 && sched_getaffinity(0, sizeof set, &set) == 0) atomic_store(cpus_of_1, CPU_COUNT(&set));
    /* the caller holds the job open (up to 10 s) until the worker came: a
     * worker may skip a job it comes late to, as on a busy machine */
    for (double t0 = td_now_sec(); ith == 0 && atomic_load(cpus_of_1) == 0 && td_now_sec() - t0 < 10;)
        sched_yield();
}

static void pool_pinning(void **state) {
    (void)state;
    td_err err;
    assert_int_equal(td_pool_pin(NULL, &err), TD_OK);
    cpu_set_t allowed;
    assert_int_equal(sched_getaffinity(0, sizeof allowed, &allowed), 0);
    int n = CPU_COUNT(&allowed);
    td_pool *over = td_pool_create(n + 1, NULL);
    assert_non_null(over);
    assert_int_equal(td_pool_pin(over, &err), TD_E_ARG);
    assert_non_null(strstr(err.msg, "CPUs to pin them to"));
    td_pool_destroy(over);
    if (n < 2) return; /* nothing more to pin on one CPU */
    td_pool *pool = td_pool_create(2, NULL);
    assert_non_null(pool);
    assert_int_equal(td_pool_pin(pool, &err), TD_OK);
    _Atomic int cpus_of_1 = 0;
    td_pool_run(pool, affinity_fn, &cpus_of_1);
    assert_int_equal(atomic_load(&cpus_of_1), 1);
    td_pool_destroy(pool);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(pool_shared_by_two_callers),
        cmocka_unit_test(phases_run_in_order),
        cmocka_unit_test(pool_pinning),
        cmocka_unit_test_setup_teardown(two_contexts_one_model, model_setup, model_teardown),
        cmocka_unit_test_setup_teardown(two_contexts_one_model_one_pool, model_setup, model_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
