/* bench_measure.c — what the `tandem bench` commands share: the median of a
 * set of timings, and read bandwidth over a caller's buffer (the yardstick
 * decode and the stream kernels are held against).
 */
#include <stdlib.h>

#include "cli.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double td_bench_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

typedef struct bw_job {
    const uint64_t *buf;
    int64_t n;
    _Atomic int64_t next;
    uint64_t sums[64];
} bw_job;

static void bw_worker(void *arg, int ith, int nth) {
    bw_job *j = arg;
    int64_t lo, hi;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    (void)nth;
    while (td_claim(&j->next, j->n, (int64_t)1 << 17, &lo, &hi)) /* 1 MiB at a time */
        for (int64_t i = lo; i + 4 <= hi; i += 4) {
            s0 += j->buf[i];
            s1 += j->buf[i + 1];
            s2 += j->buf[i + 2];
            s3 += j->buf[i + 3];
        }
    j->sums[ith & 63] = s0 + s1 + s2 + s3; /* keeps the reads alive */
}

double td_bench_read_bandwidth(td_pool *pool, const uint64_t *buf, size_t bytes) {
    bw_job j = {.buf = buf, .n = (int64_t)(bytes / 8)};
    double t[5];
    for (int r = 0; r < 5; r++) {
        atomic_init(&j.next, 0);
        double t0 = td_now_sec();
        td_pool_run(pool, bw_worker, &j);
        t[r] = td_now_sec() - t0;
    }
    return (double)bytes / td_bench_median(t, 5);
}
