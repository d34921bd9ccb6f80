/* util.h — small shared services for every tandem module: error reporting,
 * the process-wide thread pool, hashing, timing and checked arithmetic.
 *
 * Errors: library code never prints or exits. A function that can fail takes
 * a `td_err *` (may be NULL), returns a negative TD_E* status on failure and
 * writes one human-readable line into the buffer, and the status into its
 * code. Constructors that return a pointer (NULL on failure) report the same
 * way: err->code tells a caller's mistake (TD_E_ARG) from running out of
 * memory (TD_E_NOMEM) or anything else, err->msg says which.
 */
#ifndef TD_UTIL_H
#define TD_UTIL_H

#include <stdarg.h>
#ifndef __cplusplus /* the CUDA backend's C++ files include this header too */
#include <stdatomic.h>
#endif
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum {
    TD_OK = 0,
    TD_E_IO = -1,      /* open/read/mmap failed */
    TD_E_FORMAT = -2,  /* input is malformed or corrupt */
    TD_E_UNSUPPORTED = -3, /* well formed but not something we handle */
    TD_E_NOMEM = -4,
    TD_E_ARG = -5,     /* caller passed an invalid argument */
    TD_E_RANGE = -6,   /* a limit was exceeded (context, buffer) */
};

typedef struct td_err {
    char msg[512];
    int code; /* the status of the last td_err_set */
} td_err;

/* Writes a formatted message into err (no-op when err is NULL); returns code
 * so that `return td_err_set(err, TD_E_FORMAT, "...")` reads naturally. */
int td_err_set(td_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Name of a status code, e.g. "format error". */
const char *td_err_name(int code);

/* ---- float bits ---- */
/* The bits of a float and back (memcpy: no aliasing games). */
static inline uint32_t td_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float td_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- checked arithmetic (returns false on overflow) ---- */
static inline bool td_add_u64(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_add_overflow(a, b, out);
}
static inline bool td_mul_u64(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}

/* ---- allocation: 64-byte aligned, zeroed; NULL on failure ---- */
void *td_alloc(size_t size);
void td_free(void *p);

/* ---- time ---- */
double td_now_sec(void); /* monotonic seconds */
int64_t td_now_ns(void);  /* the same clock in integer nanoseconds */

/* ---- SHA-256 ---- */
typedef struct td_sha256 {
    uint32_t h[8];
    uint64_t len;
    uint8_t buf[64];
    size_t nbuf;
} td_sha256;
void td_sha256_init(td_sha256 *s);
void td_sha256_update(td_sha256 *s, const void *data, size_t n);
void td_sha256_final(td_sha256 *s, uint8_t out[32]);
/* Hex digest (65 bytes incl. NUL) of a memory range. */
void td_sha256_hex(const void *data, size_t n, char out[65]);

/* ---- CRC-32 and zip archives of stored files (zip.c) ---- */
uint32_t td_crc32(uint32_t crc, const void *data, size_t n); /* start with crc = 0 */
typedef struct td_zip_file {
    const char *name;  /* UTF-8 path inside the archive */
    const void *data;
    size_t size;
} td_zip_file;
/* A zip of the files, uncompressed, in one malloc'd buffer (*out; caller
 * frees). TD_E_ARG past zip's 4 GiB / 65535-file limits. */
int td_zip_store(const td_zip_file *files, size_t n, uint8_t **out, size_t *out_len, td_err *err);

/* ---- FNV-1a 64-bit, for cheap content hashes (vocabulary hash) ---- */
uint64_t td_fnv1a64(uint64_t h, const void *data, size_t n);
#define TD_FNV1A64_INIT 0xcbf29ce484222325ULL

/* ---- thread pool ----
 * One pool per process (the CLI creates it and passes it down). td_pool_run
 * calls fn(ctx, ith, nth) on up to nth threads (the caller is thread 0, and
 * always runs) and returns when every thread that started fn has returned.
 * A worker that has not started fn by the time the caller's call returns
 * skips the job: on a busy machine a descheduled worker must not hold up the
 * pass for a scheduler slice. So fn takes its work from a shared counter
 * (td_claim), never by ith: the caller alone must be able to do all of it.
 * ith only picks per-thread scratch. Workers spin briefly between jobs, then
 * sleep, so the many small jobs of a decode step do not pay a futex wake each.
 * Threads: td_pool_run may be called from several threads at once (say two
 * contexts sharing the process's pool); the calls take turns, one job at a
 * time. fn must not call td_pool_run on the same pool (it would wait for
 * itself). td_pool_create/destroy: one owner; destroy only when no call runs. */
typedef struct td_pool td_pool;
typedef void (*td_pool_fn)(void *ctx, int ith, int nth);
/* NULL on failure (err: TD_E_ARG for n_threads < 1, TD_E_NOMEM, TD_E_IO when
 * a thread cannot start). */
td_pool *td_pool_create(int n_threads, td_err *err);
void td_pool_destroy(td_pool *p);       /* accepts NULL */
int td_pool_size(const td_pool *p);     /* 1 for a NULL pool */
/* Pins worker i (1 .. n-1) to the i-th CPU the process may run on, so each
 * keeps its caches and its slice of a pass's work lands on one core; the
 * calling thread (worker 0) stays free to move. Refused (TD_E_ARG) when
 * the process may use fewer CPUs than the pool has threads, where pinned
 * workers would share cores; TD_E_IO when the OS refuses. Call right after
 * td_pool_create. A NULL or one-thread pool has nothing to pin. */
int td_pool_pin(td_pool *p, td_err *err);
void td_pool_run(td_pool *p, td_pool_fn fn, void *ctx); /* NULL pool: runs fn(ctx,0,1) */

#ifndef __cplusplus
/* A job of ordered phases, run in one td_pool_run: threads stay inside it
 * and go from phase to phase, each phase's work claimed in chunks of its
 * units, and a phase's first claim waits only until every unit of the last
 * phase before it with units is done — not for the threads to leave and
 * re-enter the pool,
 * as one job per phase would. A thread that enters late starts at the phase
 * the others reached. The promise of td_pool_run holds: the caller alone
 * can do every phase, and a phase of one unit is always the caller's. Fill
 * kind/arg/n_units/chunk (chunk >= 1); the runner
 * resets the counters. fn(ctx, phase, lo, hi, ith) does units [lo, hi). */
typedef struct td_phase {
    int32_t kind, arg;   /* the caller's: which work, on what */
    int64_t n_units;     /* may be 0: the phase is then done at once */
    int64_t chunk;       /* units per claim */
    /* Own cache lines: threads waiting on one phase's count must not slow
     * the claims of the next (keep arrays of phases 64-byte aligned). */
    _Alignas(64) _Atomic int64_t next; /* first unit not yet claimed */
    _Alignas(64) _Atomic int64_t done; /* units finished */
} td_phase;
typedef void (*td_phase_fn)(void *ctx, const td_phase *phase, int64_t lo, int64_t hi, int ith);
void td_pool_run_phases(td_pool *p, td_phase *phases, int64_t n_phases, td_phase_fn fn, void *ctx);
/* The same, and each thread ith adds to ns[(ith * n_phases + k) * 2] the
 * nanoseconds it spent waiting for phase k to finish, and to [... + 1]
 * those it spent on phase k's units (claims included). ns holds
 * td_pool_size(p) * n_phases * 2 counts, zeroed by the caller. Time a
 * thread spends outside the job (entering late, leaving early) is in
 * neither: the wall time of the call, times the threads, less both sums. */
void td_pool_run_phases_timed(td_pool *p, td_phase *phases, int64_t n_phases, td_phase_fn fn, void *ctx,
                              int64_t *ns);
#endif

#ifndef __cplusplus
/* Takes the next chunk of [0, n) from *next (start it at 0): false when none
 * is left, else [*lo, *hi) is this thread's. */
static inline bool td_claim(_Atomic int64_t *next, int64_t n, int64_t chunk, int64_t *lo, int64_t *hi) {
    int64_t l = atomic_fetch_add_explicit(next, chunk, memory_order_relaxed);
    if (l >= n) return false;
    *lo = l;
    *hi = l + chunk < n ? l + chunk : n;
    return true;
}
#endif

/* A chunk size giving each of nth threads at most `per_thread` claims of
 * [0, n) when all take part, rounded up to a multiple of `align` (>= 1). */
static inline int64_t td_claim_chunk(int64_t n, int nth, int per_thread, int64_t align) {
    int64_t parts = (int64_t)nth * per_thread, c = (n + parts - 1) / parts;
    c = (c + align - 1) / align * align;
    return c < align ? align : c;
}

/* ---- claim plans (claim_plan.c) ----
 * A span is n items claimed in chunks (its last chunk short), each item
 * costing `cost`; a phase's spans are claimed one after the other. */
typedef struct td_claim_span {
    int64_t n;
    double cost;
} td_claim_span;
/* The multiple of align (>= 1) at which nth equally fast threads, each
 * claiming the next chunk as soon as it is free and paying per_claim for
 * each claim, finish the spans soonest; ties go to the larger chunk, and no
 * chunk finer than 8 claims per thread is tried. Without memory to plan,
 * td_claim_chunk's one claim per thread. */
int64_t td_claim_plan(const td_claim_span *spans, int n_spans, int nth, int64_t align, double per_claim);
/* The busiest thread's cost (claims included) over an even share of the
 * items' cost, for a given chunk: 1.0 is a perfect split; -1 without
 * memory. */
double td_claim_busiest(const td_claim_span *spans, int n_spans, int nth, int64_t chunk, double per_claim);

/* Number of online CPUs (>= 1). */
int td_cpu_count(void);

/* ---- logging (log.c): one line per event on stderr ----
 * "2026-12-04T20:01:02.123Z worker[1234] INFO req=ab12 message". Library
 * code below the service layer never logs (it returns td_err); the service
 * programs do. td_log_setup names the process and the least level printed:
 * the process's only log configuration, set once in main. */
typedef enum td_log_level { TD_LOG_DEBUG = 0, TD_LOG_INFO = 1, TD_LOG_WARN = 2, TD_LOG_ERROR = 3 } td_log_level;
void td_log_setup(const char *process_name, td_log_level min_level);
/* req may be NULL or "" (no request). */
void td_log(td_log_level level, const char *req, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Parses "debug|info|warn|error"; false otherwise. */
bool td_log_level_parse(const char *s, td_log_level *out);

#endif
