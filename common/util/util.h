/* util.h — small shared services for every tandem module: error reporting,
 * the process-wide thread pool, hashing, timing and checked arithmetic.
 *
 * Errors: library code never prints or exits. A function that can fail takes
 * a `td_err *` (may be NULL), returns a negative TD_E* status on failure and
 * writes one human-readable line into the buffer.
 */
#ifndef TD_UTIL_H
#define TD_UTIL_H

#include <stdarg.h>
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

/* ---- FNV-1a 64-bit, for cheap content hashes (vocabulary hash) ---- */
uint64_t td_fnv1a64(uint64_t h, const void *data, size_t n);
#define TD_FNV1A64_INIT 0xcbf29ce484222325ULL

/* ---- thread pool ----
 * One pool per process (the CLI creates it and passes it down). td_pool_run
 * calls fn(ctx, ith, nth) on nth threads (the caller is thread 0) and returns
 * when all are done. Workers spin briefly between jobs, then sleep, so the
 * many small jobs of a decode step do not pay a futex wake each. */
typedef struct td_pool td_pool;
typedef void (*td_pool_fn)(void *ctx, int ith, int nth);
td_pool *td_pool_create(int n_threads); /* NULL on failure; n_threads >= 1 */
void td_pool_destroy(td_pool *p);       /* accepts NULL */
int td_pool_size(const td_pool *p);     /* 1 for a NULL pool */
void td_pool_run(td_pool *p, td_pool_fn fn, void *ctx); /* NULL pool: runs fn(ctx,0,1) */

/* Splits [0, n) into nth near-equal chunks; chunk ith is [*lo, *hi). */
static inline void td_split(int64_t n, int ith, int nth, int64_t *lo, int64_t *hi) {
    int64_t per = n / nth, rem = n % nth;
    *lo = ith * per + (ith < rem ? ith : rem);
    *hi = *lo + per + (ith < rem ? 1 : 0);
}

/* Number of online CPUs (>= 1). */
int td_cpu_count(void);

#endif
