/* pool.c — the process-wide thread pool.
 *
 * A decode step runs a few hundred short parallel jobs (one per matmul or
 * attention block), so a futex wake per job would cost more than the work.
 * Workers therefore spin on a generation counter for a while after each job
 * and only then sleep on a condition variable.
 *
 * Work is claimed from counters inside each job, so the caller can finish a
 * job alone. It then closes the job and waits only for workers already inside
 * it: a worker that the scheduler kept off the CPU (another process on its
 * core) must not stall every one of a pass's few hundred jobs for a slice,
 * which made two threads 15x slower than one on a busy two-core machine.
 * A worker enters by counting itself active and then checking the job is
 * still open; the caller closes and then reads the count: with sequentially
 * consistent atomics one of the two sees the other. Promise: td_pool_run
 * returns only after every thread that entered fn left it; jobs never overlap.
 * Callers on several threads (contexts of one server sharing the pool) take
 * turns: run_mu is held for a whole job, so the job fields are written by
 * one caller at a time and a job never starts before the last one closed.
 */
#include "util/util.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define td_cpu_relax() _mm_pause()
#else
#define td_cpu_relax() ((void)0)
#endif

/* Spins before a worker sleeps: long enough to bridge the gap between the
 * jobs of one forward pass, short enough not to burn a core when idle. */
#define SPIN_BEFORE_SLEEP 50000
/* The caller yields its core now and then while waiting, so a worker that
 * was descheduled on a busy machine gets to finish. */
#define SPIN_BEFORE_YIELD 2000

typedef struct worker {
    struct td_pool *pool;
    int ith;
} worker;

struct td_pool {
    int n;
    pthread_t *threads;
    worker *workers;
    td_pool_fn fn;
    void *ctx;
    _Atomic uint64_t gen;     /* id of the current job, bumped once per job */
    _Atomic uint64_t closed;  /* id of the last job the caller finished */
    _Atomic int active;       /* workers inside fn (or about to check) */
    _Atomic int sleepers;
    _Atomic bool stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_mutex_t run_mu;   /* one td_pool_run at a time */
};

static void *worker_main(void *arg) {
    worker *w = arg;
    struct td_pool *p = w->pool;
    uint64_t seen = 0;
    for (;;) {
        uint64_t g;
        int spins = 0;
        while ((g = atomic_load(&p->gen)) == seen && !atomic_load(&p->stop)) {
            if (++spins < SPIN_BEFORE_SLEEP) {
                td_cpu_relax();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while (atomic_load(&p->gen) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
            spins = 0;
        }
        if (atomic_load(&p->stop)) break;
        seen = g;
        atomic_fetch_add(&p->active, 1);
        /* fn and ctx stay valid while we count as active and the job is open */
        if (atomic_load(&p->gen) == g && atomic_load(&p->closed) < g) p->fn(p->ctx, w->ith, p->n);
        atomic_fetch_sub(&p->active, 1);
    }
    return NULL;
}

td_pool *td_pool_create(int n_threads, td_err *err) {
    if (n_threads < 1) {
        td_err_set(err, TD_E_ARG, "thread pool: %d threads (at least 1)", n_threads);
        return NULL;
    }
    td_pool *p = calloc(1, sizeof *p);
    if (!p) goto nomem;
    p->n = n_threads;
    atomic_init(&p->gen, 0);
    atomic_init(&p->closed, 0);
    atomic_init(&p->active, 0);
    atomic_init(&p->sleepers, 0);
    atomic_init(&p->stop, false);
    if (pthread_mutex_init(&p->mu, NULL) != 0) { free(p); goto nomem; }
    if (pthread_cond_init(&p->cv, NULL) != 0) {
        pthread_mutex_destroy(&p->mu);
        free(p);
        goto nomem;
    }
    if (pthread_mutex_init(&p->run_mu, NULL) != 0) {
        pthread_cond_destroy(&p->cv);
        pthread_mutex_destroy(&p->mu);
        free(p);
        goto nomem;
    }
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    p->workers = calloc((size_t)n_threads, sizeof *p->workers);
    if (!p->threads || !p->workers) {
        p->n = 1; /* no thread started: destroy joins none */
        td_pool_destroy(p);
        goto nomem;
    }
    for (int i = 1; i < n_threads; i++) {
        p->workers[i].pool = p;
        p->workers[i].ith = i;
        int rc = pthread_create(&p->threads[i], NULL, worker_main, &p->workers[i]);
        if (rc != 0) {
            p->n = i; /* destroy joins only the threads that started */
            td_pool_destroy(p);
            td_err_set(err, TD_E_IO, "thread pool: cannot start thread %d of %d (error %d)", i + 1, n_threads, rc);
            return NULL;
        }
    }
    return p;
nomem:
    td_err_set(err, TD_E_NOMEM, "thread pool: out of memory");
    return NULL;
}

void td_pool_destroy(td_pool *p) {
    if (!p) return;
    if (p->threads) {
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->stop, true);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        for (int i = 1; i < p->n; i++) pthread_join(p->threads[i], NULL);
    }
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->run_mu);
    free(p->threads);
    free(p->workers);
    free(p);
}

int td_pool_size(const td_pool *p) { return p ? p->n : 1; }

int td_pool_pin(td_pool *p, td_err *err) {
    if (!p || p->n == 1) return TD_OK;
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0)
        return td_err_set(err, TD_E_IO, "thread pool: cannot read the CPUs this process may use");
    int n_cpus = CPU_COUNT(&allowed);
    if (n_cpus < p->n)
        return td_err_set(err, TD_E_ARG, "thread pool: %d threads but %d CPUs to pin them to", p->n, n_cpus);
    for (int i = 1, cpu = -1; i < p->n; i++) {
        int k = 0; /* the i-th allowed CPU: worker 0's is left to the caller */
        for (cpu = 0; cpu < CPU_SETSIZE; cpu++)
            if (CPU_ISSET(cpu, &allowed) && k++ == i) break;
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        int rc = pthread_setaffinity_np(p->threads[i], sizeof one, &one);
        if (rc != 0) return td_err_set(err, TD_E_IO, "thread pool: cannot pin thread %d to CPU %d (error %d)", i, cpu, rc);
    }
    return TD_OK;
}

void td_pool_run(td_pool *p, td_pool_fn fn, void *ctx) {
    if (!p || p->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_mutex_lock(&p->run_mu);
    p->fn = fn;
    p->ctx = ctx;
    uint64_t g = atomic_fetch_add(&p->gen, 1) + 1;
    /* A worker either saw the new generation or is counted in sleepers
     * (both orders are sequentially consistent), so no wake-up is lost. */
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    fn(ctx, 0, p->n);
    atomic_store(&p->closed, g);
    for (int spins = 0; atomic_load(&p->active) > 0; spins++) {
        if (spins % SPIN_BEFORE_YIELD == SPIN_BEFORE_YIELD - 1) sched_yield();
        else td_cpu_relax();
    }
    pthread_mutex_unlock(&p->run_mu);
}

/* ---- jobs of ordered phases ---- */

typedef struct phases_job {
    td_phase *phases;
    int64_t n;
    td_phase_fn fn;
    void *ctx;
    int64_t *ns; /* NULL, or td_pool_run_phases_timed's (thread, phase, wait|work) */
    _Atomic int64_t reached; /* the furthest phase any thread started */
} phases_job;

/* Every unit of s is done. The acquire pairs with the release of each
 * unit's count, so the unit's writes are visible here. */
static void wait_phase(const td_phase *s) {
    for (int spins = 0; atomic_load_explicit(&s->done, memory_order_acquire) < s->n_units; spins++) {
        if (spins % SPIN_BEFORE_YIELD == SPIN_BEFORE_YIELD - 1) sched_yield();
        else td_cpu_relax();
    }
}

static void phases_worker(void *arg, int ith, int nth) {
    phases_job *j = arg;
    (void)nth;
    int64_t *ns = j->ns ? j->ns + (size_t)ith * (size_t)j->n * 2 : NULL; /* this thread's row */
    for (int64_t i = atomic_load_explicit(&j->reached, memory_order_relaxed); i < j->n; i++) {
        td_phase *s = &j->phases[i];
        /* the last phase with units: an empty one orders nothing */
        int64_t t0 = ns ? td_now_ns() : 0, k = i - 1;
        for (; k >= 0; k--) {
            wait_phase(&j->phases[k]);
            if (j->phases[k].n_units > 0) break;
        }
        if (ns && k >= 0) ns[2 * k] += td_now_ns() - t0; /* the wait is the awaited phase's */
        int64_t seen = atomic_load_explicit(&j->reached, memory_order_relaxed);
        while (seen < i && !atomic_compare_exchange_weak_explicit(&j->reached, &seen, i, memory_order_relaxed,
                                                                  memory_order_relaxed)) {
        }
        /* one unit (a one-row pass's norm, say) is the caller's: its cache
         * holds the row, and a race for it slowed one-row passes by ~5 % */
        if (s->n_units == 1 && ith != 0) continue;
        if (s->n_units == 0) continue; /* nothing to claim, nothing to time */
        /* a look before the claim: a phase that others have taken whole
         * costs a read, not a write to their line */
        int64_t lo, hi, w0 = ns ? td_now_ns() : 0;
        while (atomic_load_explicit(&s->next, memory_order_relaxed) < s->n_units &&
               td_claim(&s->next, s->n_units, s->chunk, &lo, &hi)) {
            j->fn(j->ctx, s, lo, hi, ith);
            atomic_fetch_add_explicit(&s->done, hi - lo, memory_order_acq_rel);
        }
        if (ns) ns[2 * i + 1] += td_now_ns() - w0;
    }
}

void td_pool_run_phases_timed(td_pool *p, td_phase *phases, int64_t n_phases, td_phase_fn fn, void *ctx,
                              int64_t *ns) {
    for (int64_t i = 0; i < n_phases; i++) {
        atomic_init(&phases[i].next, 0);
        atomic_init(&phases[i].done, 0);
    }
    phases_job j = {.phases = phases, .n = n_phases, .fn = fn, .ctx = ctx, .ns = ns};
    atomic_init(&j.reached, 0);
    td_pool_run(p, phases_worker, &j);
}

void td_pool_run_phases(td_pool *p, td_phase *phases, int64_t n_phases, td_phase_fn fn, void *ctx) {
    td_pool_run_phases_timed(p, phases, n_phases, fn, ctx, NULL);
}
