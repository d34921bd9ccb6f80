/* cmd_bench_kernels.c — `tandem bench kernels`: how far the matmul kernels
 * are from this machine's limits. It measures the limits first (one core's
 * peak int8 multiply-adds per second with each dot instruction the kernels
 * can use, and read bandwidth over a buffer larger than the last-level
 * cache), then times td_quant_matmul per weight format, numerics and row
 * count twice: "hot", one matrix that stays in L2 (the compute side:
 * multiply-adds/s against the peak), and "stream", one matrix of the buffer's
 * size read from memory (the bandwidth side: GB/s against the measured
 * read rate). Each row count is also shown as a multiple of one row, the
 * cost of verifying k drafted tokens in one pass. Figures only; it passes or
 * fails on nothing.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "cli.h"
#include "quant/quant.h"

#define MAX_ROWS 16
static const int row_counts[] = {1, 2, 4, 8, 16};
#define N_ROW_COUNTS ((int)(sizeof row_counts / sizeof row_counts[0]))
/* Inputs per weight row: a multiple of every block size (256 for K-quants)
 * and the model's widest projection input. */
#define N_IN 1536

/* ---- the limits ---- */

/* One core's peak of a dot form, multiply-adds per second: the best of 5
 * runs of about 50 ms each (a peak is a maximum, not a typical value). */
static double measure_peak(int form, int64_t macs_per_iter) {
    int64_t iters = 1 << 16;
    volatile int64_t sink = 0;
    for (;;) { /* calibrate: grow until one run takes 20 ms */
        double t0 = td_now_sec();
        sink += td_quant_peak_run(form, iters);
        if (td_now_sec() - t0 > 0.02 || iters > ((int64_t)1 << 40)) break;
        iters *= 2;
    }
    iters = (int64_t)(iters * 2.5);
    double best = 0;
    for (int r = 0; r < 5; r++) {
        double t0 = td_now_sec();
        sink += td_quant_peak_run(form, iters);
        double rate = (double)iters * (double)macs_per_iter / (td_now_sec() - t0);
        if (rate > best) best = rate;
    }
    (void)sink;
    return best;
}

/* ---- the kernels ---- */

typedef struct mm_job {
    td_numerics numerics;
    uint32_t wtype;
    const uint8_t *W;
    const void *T; /* FAST's tiled copy of W, as the engine reads it, or NULL */
    int64_t n_out, n_rows;
    const void *xq;
    float *y;
    _Atomic int64_t next;
    int failed;
} mm_job;

/* Output rows split in claimed chunks, as the engine splits a projection. */
static void mm_worker(void *arg, int ith, int nth) {
    mm_job *j = arg;
    int64_t lo, hi;
    (void)ith;
    int64_t chunk = td_claim_chunk(j->n_out, nth, 4, 32);
    const size_t xs = td_quant_row_bytes(td_quant_traits(j->wtype)->vec_dot_type, N_IN);
    while (td_claim(&j->next, j->n_out, chunk, &lo, &hi)) {
        int rc = j->T ? td_quant_matmul_tiled(j->wtype, j->T, N_IN, j->n_out, 0, N_IN / 32, lo, hi, j->xq, xs,
                                              j->n_rows, j->y, j->n_out)
                      : td_quant_matmul_in(j->numerics, j->wtype, j->W, N_IN, lo, hi, j->xq, j->n_rows, j->y, j->n_out);
        if (rc != TD_OK) j->failed = 1;
    }
}

/* Seconds per matmul (median of `repeats` timings, each of enough calls to
 * last about 5 ms), or a negative value when the kernel refused the shape. */
static double time_matmul(td_pool *pool, mm_job *j, int repeats) {
    double *t = calloc((size_t)repeats, sizeof *t);
    if (!t) return -1;
    double t0 = td_now_sec(); /* one call: warms the caches, sizes the timings */
    atomic_init(&j->next, 0);
    td_pool_run(pool, mm_worker, j);
    double one = td_now_sec() - t0;
    int calls = one >= 0.005 ? 1 : one <= 0.005 / 4096 ? 4096 : (int)(0.005 / one) + 1;
    for (int r = 0; r < repeats; r++) {
        t0 = td_now_sec();
        for (int c = 0; c < calls; c++) {
            atomic_init(&j->next, 0);
            td_pool_run(pool, mm_worker, j);
        }
        t[r] = (td_now_sec() - t0) / calls;
    }
    double m = j->failed ? -1 : td_bench_median(t, repeats);
    free(t);
    return m;
}

/* Fills `bytes` of W with rows of wtype quantized from random values: one
 * slab of 64 rows made by the reference quantizer, copied over the rest. */
static int fill_weights(uint32_t wtype, uint8_t *W, int64_t n_out) {
    const td_type_traits *t = td_quant_traits(wtype);
    size_t row = td_quant_row_bytes(wtype, N_IN);
    float *x = malloc(sizeof(float) * N_IN);
    if (!x || !t || !t->from_float) {
        free(x);
        return -1;
    }
    uint64_t s = 0x9e3779b97f4a7c15ULL;
    int64_t slab = n_out < 64 ? n_out : 64;
    for (int64_t o = 0; o < slab; o++) {
        for (int i = 0; i < N_IN; i++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            x[i] = (float)(s >> 40) / 8388608.0f - 1.0f;
        }
        t->from_float(x, W + (size_t)o * row, N_IN);
    }
    for (int64_t o = slab; o < n_out; o += slab) {
        int64_t n = n_out - o < slab ? n_out - o : slab;
        memcpy(W + (size_t)o * row, W, (size_t)n * row);
    }
    free(x);
    return 0;
}

typedef struct kopts {
    int repeats;
    size_t stream_bytes, hot_bytes;
    double peak, bandwidth; /* the best peak of one core; the pool's read rate */
    int threads;
} kopts;

/* One line per (format, numerics, place): time of each row count, its
 * multiple of one row, and the share of the limit reached. */
static int bench_format(td_pool *pool, const kopts *o, uint32_t wtype, td_numerics numerics, const char *place,
                        uint8_t *W, size_t w_bytes, const void *xq, float *y) {
    size_t row = td_quant_row_bytes(wtype, N_IN);
    int64_t n_out = (int64_t)(w_bytes / row) / 32 * 32;
    if (n_out < 32) n_out = 32;
    mm_job j = {.numerics = numerics, .wtype = wtype, .W = W, .n_out = n_out, .xq = xq, .y = y};
    /* FAST on a tiled copy where the engine would make one (the copy is what streams) */
    void *T = NULL;
    size_t tb = numerics == TD_NUMERICS_FAST ? td_quant_tiled_bytes(wtype, N_IN, n_out) : 0;
    if (tb) {
        T = td_alloc(tb);
        if (!T || td_quant_tile(wtype, W, N_IN, n_out, T) != TD_OK) {
            td_free(T);
            fprintf(stderr, "tandem bench kernels: no memory for a tiled copy of %zu bytes\n", tb);
            return -1;
        }
        j.T = T;
    }
    double t[N_ROW_COUNTS];
    for (int k = 0; k < N_ROW_COUNTS; k++) {
        j.n_rows = row_counts[k];
        t[k] = time_matmul(pool, &j, o->repeats);
        if (t[k] < 0) {
            fprintf(stderr, "tandem bench kernels: %s matmul refused %lld x %d\n", td_quant_traits(wtype)->name,
                    (long long)n_out, N_IN);
            td_free(T);
            return -1;
        }
    }
    td_free(T);
    bool hot = !strcmp(place, "hot");
    printf("%-5s %-9s %-6s %6.2f MB", td_quant_traits(wtype)->name, td_numerics_name(numerics), place,
           (double)n_out * (double)row / 1e6);
    for (int k = 0; k < N_ROW_COUNTS; k++) {
        double macs = (double)n_out * N_IN * row_counts[k] / t[k];
        double gbs = (double)n_out * (double)row / t[k];
        double share = hot ? macs / (o->peak * o->threads) : gbs / o->bandwidth;
        printf(" | %2d: %8.3f ms %5.2fx %4.0f%%", row_counts[k], t[k] * 1e3, t[k] / t[0], 100 * share);
    }
    printf("\n");
    return 0;
}

static bool parse_formats(const char *list, uint32_t *out, int *n) {
    static const uint32_t known[] = {TD_TYPE_Q4_0, TD_TYPE_Q4_1, TD_TYPE_Q5_0, TD_TYPE_Q5_1,
                                     TD_TYPE_Q8_0, TD_TYPE_Q4_K, TD_TYPE_Q5_K, TD_TYPE_Q6_K};
    *n = 0;
    for (const char *p = list; *p;) {
        size_t len = strcspn(p, ",");
        bool found = false;
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
            const char *name = td_quant_traits(known[i])->name;
            if (strlen(name) == len && !strncasecmp(p, name, len) && *n < 16) {
                out[(*n)++] = known[i];
                found = true;
            }
        }
        if (!found) {
            fprintf(stderr, "tandem bench kernels: unknown format '%.*s' (Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K)\n",
                    (int)len, p);
            return false;
        }
        p += len;
        if (*p == ',') p++;
    }
    return *n > 0;
}

int td_cmd_bench_kernels(int argc, char **argv) {
    const char *cmd = "bench kernels";
    const char *formats_arg = "Q4_0,Q4_1,Q5_0,Q5_1,Q8_0,Q4_K,Q5_K,Q6_K", *numerics_arg = "fast,reference";
    long repeats = 5, threads = 1, stream_mib = 0;
    bool no_stream = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            puts("usage: tandem bench kernels [--formats LIST] [--numerics LIST] [--threads N] [--repeats N]\n"
                 "                            [--stream-mib N] [--no-stream]\n\n"
                 "How far the matmul kernels are from this machine's limits. First the limits: one\n"
                 "core's peak int8 multiply-adds/s with each dot instruction this CPU runs\n"
                 "(vpdpbusd zmm/ymm with AVX512-VNNI, vpmaddubsw+vpmaddwd with AVX2), and read\n"
                 "bandwidth on N threads over a buffer of --stream-mib MiB (default: twice the\n"
                 "last-level cache, at least 256). Then, per weight format and numerics, one\n"
                 "matmul of 1, 2, 4, 8 and 16 activation rows by a 1536-input matrix:\n"
                 "  hot     a 512 KiB matrix that stays in L2: time, multiple of one row, and\n"
                 "          multiply-adds/s as a share of the best peak times N threads;\n"
                 "  stream  a matrix of the buffer's size, read from memory: time, multiple of one\n"
                 "          row, and GB/s of weights as a share of the measured bandwidth.\n"
                 "Medians of --repeats timings (default 5). --formats: comma list of Q4_0 Q4_1\n"
                 "Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K (default all); --numerics: fast,reference\n"
                 "(default both); fast runs Q4_1/Q8_0 on the tiled copy the engine makes of them.\n"
                 "--threads N (default 1) splits output rows as the engine does.\n"
                 "Figures only; nothing passes or fails.");
            return 0;
        }
        if (!strcmp(a, "--formats")) { if (!(formats_arg = td_cli_value(cmd, argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--numerics")) { if (!(numerics_arg = td_cli_value(cmd, argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--threads")) { if (!(v = td_cli_value(cmd, argc, argv, &i)) || !td_cli_int(cmd, a, v, 1, 256, &threads)) return 2; }
        else if (!strcmp(a, "--repeats")) { if (!(v = td_cli_value(cmd, argc, argv, &i)) || !td_cli_int(cmd, a, v, 1, 1000, &repeats)) return 2; }
        else if (!strcmp(a, "--stream-mib")) { if (!(v = td_cli_value(cmd, argc, argv, &i)) || !td_cli_int(cmd, a, v, 16, 65536, &stream_mib)) return 2; }
        else if (!strcmp(a, "--no-stream")) no_stream = true;
        else { fprintf(stderr, "tandem bench kernels: unknown option '%s'\n", a); return 2; }
    }
    uint32_t formats[16];
    int n_formats;
    if (!parse_formats(formats_arg, formats, &n_formats)) return 2;
    td_numerics numerics[4];
    int n_numerics = 0;
    for (const char *p = numerics_arg; *p && n_numerics < 4;) {
        char one[32];
        size_t len = strcspn(p, ",");
        snprintf(one, sizeof one, "%.*s", (int)(len < 31 ? len : 31), p);
        if (!td_cli_numerics(cmd, one, &numerics[n_numerics])) return 2;
        n_numerics++;
        p += len;
        if (*p == ',') p++;
    }
    long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE), llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (stream_mib == 0) {
        long twice_llc = llc > 0 ? 2 * llc / (1 << 20) : 0;
        stream_mib = twice_llc > 256 ? twice_llc : 256;
    }

    td_err err = {0};
    td_pool *pool = td_pool_create((int)threads, &err);
    kopts o = {.repeats = (int)repeats, .stream_bytes = (size_t)stream_mib << 20, .hot_bytes = 512 << 10,
               .threads = (int)threads};
    uint8_t *W = NULL;
    void *xq = NULL;
    float *x = NULL, *y = NULL;
    uint64_t *bwbuf = NULL;
    int status = 1;
    if (!pool) {
        fprintf(stderr, "tandem bench kernels: %s\n", err.msg);
        goto out;
    }
    printf("kernels %s%s; L2 %ld KiB, last-level cache %ld MiB; %ld thread%s\n", td_quant_kernel_name(),
           td_quant_uses_amx() ? " (fast tiled: AMX tiles from 6 rows; TD_KERNELS=avx512 without)" : "",
           l2 > 0 ? l2 >> 10 : -1, llc > 0 ? llc >> 20 : -1, threads, threads == 1 ? "" : "s");
    o.peak = 0;
    for (int f = 0; f < 8; f++) { /* forms this CPU lacks are skipped */
        const char *name;
        int64_t per_iter;
        if (!td_quant_peak_form(f, &name, &per_iter)) continue;
        double p = measure_peak(f, per_iter);
        printf("peak, one core: %-24s %7.1f G int8 multiply-adds/s\n", name, p / 1e9);
        if (p > o.peak) o.peak = p;
    }
    if (o.peak == 0) printf("peak: no integer dot instruction measured on this CPU; hot shares are against 1 GMAC/s\n");
    if (o.peak == 0) o.peak = 1e9;

    /* buffers for the largest case: the narrowest weight rows give the most
     * outputs, the widest activation rows the most bytes */
    size_t w_bytes = no_stream ? o.hot_bytes : o.stream_bytes, min_row = SIZE_MAX, max_xrow = 0;
    for (int f = 0; f < n_formats; f++) {
        size_t r = td_quant_row_bytes(formats[f], N_IN);
        size_t xr = td_quant_row_bytes(td_quant_traits(formats[f])->vec_dot_type, N_IN);
        if (r < min_row) min_row = r;
        if (xr > max_xrow) max_xrow = xr;
    }
    W = malloc(w_bytes);
    x = malloc(sizeof(float) * N_IN * MAX_ROWS);
    y = malloc(sizeof(float) * MAX_ROWS * (w_bytes / min_row + 32));
    xq = malloc(max_xrow * MAX_ROWS);
    if (!W || !x || !y || !xq) {
        fprintf(stderr, "tandem bench kernels: out of memory (%zu MiB of weights)\n", w_bytes >> 20);
        goto out;
    }
    if (!no_stream) {
        bwbuf = (uint64_t *)W; /* the weight buffer doubles as the bandwidth buffer */
        for (size_t i = 0; i < o.stream_bytes / 8; i++) bwbuf[i] = i;
        o.bandwidth = td_bench_read_bandwidth(pool, bwbuf, o.stream_bytes);
        printf("read bandwidth, %ld thread%s, %ld MiB buffer: %.1f GB/s\n", threads, threads == 1 ? "" : "s",
               stream_mib, o.bandwidth / 1e9);
    }
    printf("per format: time of one matmul of 1/2/4/8/16 rows x %d inputs, multiple of 1 row, share of the limit\n"
           "(hot: of %.1f G multiply-adds/s x %ld; stream: of the read bandwidth)\n",
           N_IN, o.peak / 1e9, threads);
    uint64_t s = 0x2545f4914f6cdd1dULL;
    for (int i = 0; i < N_IN * MAX_ROWS; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        x[i] = (float)(s >> 40) / 8388608.0f - 1.0f;
    }
    for (int f = 0; f < n_formats; f++) {
        uint32_t wt = formats[f];
        if (td_quant_activations(wt, x, N_IN, MAX_ROWS, xq) != TD_OK) {
            fprintf(stderr, "tandem bench kernels: cannot quantize activations for %s\n", td_quant_traits(wt)->name);
            goto out;
        }
        size_t row = td_quant_row_bytes(wt, N_IN);
        int64_t rows_all = (int64_t)((no_stream ? o.hot_bytes : o.stream_bytes) / row);
        if (fill_weights(wt, W, rows_all)) {
            fprintf(stderr, "tandem bench kernels: cannot quantize %s weights\n", td_quant_traits(wt)->name);
            goto out;
        }
        for (int n = 0; n < n_numerics; n++) {
            if (bench_format(pool, &o, wt, numerics[n], "hot", W, o.hot_bytes, xq, y)) goto out;
            if (!no_stream && bench_format(pool, &o, wt, numerics[n], "stream", W, o.stream_bytes, xq, y)) goto out;
        }
    }
    status = 0;
out:
    free(W);
    free(x);
    free(y);
    free(xq);
    td_pool_destroy(pool);
    return status;
}
