/* bench_quant.c — single-thread timings of td_quant_matmul on the default
 * model's shapes (SmolLM2-135M: Q4_1 layers, Q8_0 output), for 1..16
 * activation rows. Prints figures only; nothing passes or fails.
 *
 * "hot": one matrix called repeatedly (it stays in L2/L3). "forward": the
 * 30 layers' matrices plus the output matrix, each called once in model
 * order, so weights stream from memory as in a real decode step.
 *
 * With a path to llama.cpp's libggml-cpu.so (e.g. from llama-cpp-python's
 * wheel) as third argument, the same shapes are also timed with ggml's own
 * vec_dot, one call per (activation row, weight row) as its CPU matmul does
 * for these types, on the same blocks: a side-by-side kernel comparison.
 *
 * A fourth argument runs the forward section on that many threads (output
 * rows split as the engine does); the hot section is always single-thread.
 *
 * Not built by CMake; the build command is at the end of this file.
 */
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "quant/quant.h"

typedef struct shape {
    const char *name;
    uint32_t type;
    int64_t n_in, n_out;
} shape;

static const shape layer_shapes[] = {
    {"attn_q", TD_TYPE_Q4_1, 576, 576},     {"attn_k", TD_TYPE_Q4_1, 576, 192},
    {"attn_v", TD_TYPE_Q4_1, 576, 192},     {"attn_output", TD_TYPE_Q4_1, 576, 576},
    {"ffn_gate", TD_TYPE_Q4_1, 576, 1536},  {"ffn_up", TD_TYPE_Q4_1, 576, 1536},
    {"ffn_down", TD_TYPE_Q4_1, 1536, 576},
};
#define N_LAYER_SHAPES (sizeof layer_shapes / sizeof layer_shapes[0])
static const shape output_shape = {"output", TD_TYPE_Q8_0, 576, 49152};
enum { N_LAYERS = 30, MAX_ROWS = 16 };

static uint64_t rng = 88172645463325252ULL;
static float rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)(rng >> 40) / 8388608.0f - 1.0f;
}

/* A random weight matrix, quantized with the reference quantizer. */
static void *make_weights(const shape *s) {
    size_t rb = td_quant_row_bytes(s->type, s->n_in);
    uint8_t *w = td_alloc(rb * (size_t)s->n_out);
    float *row = malloc((size_t)s->n_in * sizeof(float));
    for (int64_t o = 0; o < s->n_out; o++) {
        for (int64_t i = 0; i < s->n_in; i++)
            row[i] = rnd() * 0.05f;
        td_quant_traits_ref(s->type)->from_float(row, w + (size_t)o * rb, s->n_in);
    }
    free(row);
    return w;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The few pieces of ggml's CPU ABI used here (ggml-cpu.h): the per-type
 * traits with the activation quantizer and the dot product. Block layouts
 * and type ids are GGUF's, the same as ours. */
typedef void (*ggml_from_float)(const float *x, void *y, int64_t k);
typedef void (*ggml_vec_dot)(int n, float *s, size_t bs, const void *x, size_t bx, const void *y,
                             size_t by, int nrc);
typedef struct ggml_traits_cpu {
    ggml_from_float from_float;
    ggml_vec_dot vec_dot;
    int vec_dot_type;
    int64_t nrows;
} ggml_traits_cpu;
static const ggml_traits_cpu *(*ggml_traits)(int type);

/* One td_quant_matmul call of a benchmark run. */
typedef struct job {
    const shape *s;
    const void *W;
    const void *xq;
    int64_t n_rows;
    float *y;
    _Atomic int64_t next; /* next output row to take (pool runs) */
} job;

static bool use_ggml; /* time ggml's vec_dot instead of td_quant_matmul */

static void run_ggml(const job *j) {
    ggml_vec_dot dot = ggml_traits((int)j->s->type)->vec_dot;
    size_t wrb = td_quant_row_bytes(j->s->type, j->s->n_in);
    size_t xrb = td_quant_row_bytes(td_quant_traits(j->s->type)->vec_dot_type, j->s->n_in);
    for (int64_t o = 0; o < j->s->n_out; o++)
        for (int64_t r = 0; r < j->n_rows; r++)
            dot((int)j->s->n_in, &j->y[r * j->s->n_out + o], 0, (const uint8_t *)j->W + o * wrb, 0,
                (const uint8_t *)j->xq + r * xrb, 0, 1);
}

/* Multi-threaded runs ("threads" > 1): each job's output rows are split
 * over the pool, as the engine does. */
static td_pool *pool;

static void pool_job(void *ctx, int ith, int nth) {
    job *j = ctx;
    int64_t lo, hi, chunk = td_claim_chunk(j->s->n_out, nth, 1, 32);
    (void)ith;
    while (td_claim(&j->next, j->s->n_out, chunk, &lo, &hi)) {
        if (!use_ggml) {
            td_quant_matmul(j->s->type, j->W, j->s->n_in, lo, hi, j->xq, j->n_rows, j->y, j->s->n_out);
            continue;
        }
        ggml_vec_dot dot = ggml_traits((int)j->s->type)->vec_dot;
        size_t wrb = td_quant_row_bytes(j->s->type, j->s->n_in);
        size_t xrb = td_quant_row_bytes(td_quant_traits(j->s->type)->vec_dot_type, j->s->n_in);
        for (int64_t o = lo; o < hi; o++)
            for (int64_t r = 0; r < j->n_rows; r++)
                dot((int)j->s->n_in, &j->y[r * j->s->n_out + o], 0, (const uint8_t *)j->W + o * wrb, 0,
                    (const uint8_t *)j->xq + r * xrb, 0, 1);
    }
}

static void run_jobs(job *jobs, int n) {
    if (pool) {
        for (int i = 0; i < n; i++) {
            atomic_init(&jobs[i].next, 0);
            td_pool_run(pool, pool_job, &jobs[i]);
        }
        return;
    }
    if (use_ggml) {
        for (int i = 0; i < n; i++)
            run_ggml(&jobs[i]);
        return;
    }
    for (int i = 0; i < n; i++)
        td_quant_matmul(jobs[i].s->type, jobs[i].W, jobs[i].s->n_in, 0, jobs[i].s->n_out,
                        jobs[i].xq, jobs[i].n_rows, jobs[i].y, jobs[i].s->n_out);
}

/* Thread CPU time instead of wall time ("cpu" argument): steadier when the
 * machine is shared, though caches are still shared. */
static bool use_cpu_time;

static double now(void) {
    if (!use_cpu_time)
        return td_now_sec();
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Median over reps of one pass over all jobs. */
static double time_jobs(const job *jobs, int n, int reps) {
    double t[64];
    if (reps > 64)
        reps = 64;
    run_jobs(jobs, n); /* warm-up */
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        run_jobs(jobs, n);
        t[r] = now() - t0;
    }
    qsort(t, (size_t)reps, sizeof t[0], cmp_double);
    return t[reps / 2];
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 21;
    use_cpu_time = argc > 2 && strcmp(argv[2], "cpu") == 0;
    int threads = argc > 4 ? atoi(argv[4]) : 1;
    if (argc > 3 && strcmp(argv[3], "-") != 0) {
        void *lib = dlopen(argv[3], RTLD_NOW);
        void (*init)(void) = lib ? (void (*)(void))dlsym(lib, "ggml_cpu_init") : NULL;
        ggml_traits = lib ? (const ggml_traits_cpu *(*)(int))dlsym(lib, "ggml_get_type_traits_cpu") : NULL;
        if (!init || !ggml_traits) {
            fprintf(stderr, "cannot use %s: %s\n", argv[3], dlerror());
            return 1;
        }
        init();
    }
    static const int rows[] = {1, 2, 4, 8, 16};
    const int n_rowset = (int)(sizeof rows / sizeof rows[0]);
    printf("kernels: %s, median of %d, %s time\n", td_quant_kernel_name(), reps,
           use_cpu_time ? "thread cpu" : "wall");

    /* activations: one buffer per input width, MAX_ROWS rows */
    float *x = malloc((size_t)MAX_ROWS * 1536 * sizeof(float));
    for (int i = 0; i < MAX_ROWS * 1536; i++)
        x[i] = rnd();
    void *xq41_576 = td_alloc(td_quant_row_bytes(TD_TYPE_Q8_1, 576) * MAX_ROWS);
    void *xq41_1536 = td_alloc(td_quant_row_bytes(TD_TYPE_Q8_1, 1536) * MAX_ROWS);
    void *xq80_576 = td_alloc(td_quant_row_bytes(TD_TYPE_Q8_0, 576) * MAX_ROWS);
    td_quant_activations(TD_TYPE_Q4_1, x, 576, MAX_ROWS, xq41_576);
    td_quant_activations(TD_TYPE_Q4_1, x, 1536, MAX_ROWS, xq41_1536);
    td_quant_activations(TD_TYPE_Q8_0, x, 576, MAX_ROWS, xq80_576);
    float *y = malloc((size_t)MAX_ROWS * 49152 * sizeof(float));

    /* activation quantization (on the decode path before every matmul) */
    {
        double t0 = now();
        int n = 20000;
        for (int i = 0; i < n; i++)
            td_quant_activations(TD_TYPE_Q4_1, x, 576, 1, xq41_576);
        double t1 = now();
        for (int i = 0; i < n; i++)
            td_quant_activations(TD_TYPE_Q4_1, x, 1536, 1, xq41_1536);
        double t2 = now();
        printf("quantize one row to Q8_1: 576: %.2f us, 1536: %.2f us\n", (t1 - t0) / n * 1e6,
               (t2 - t1) / n * 1e6);
    }

    /* numerics against ggml on the same inputs: its activation quantizer,
     * and its dot products on our quantized rows */
    if (ggml_traits) {
        static const uint32_t wt[] = {TD_TYPE_Q4_1, TD_TYPE_Q8_0};
        for (int i = 0; i < 2; i++) {
            uint32_t vt = td_quant_traits(wt[i])->vec_dot_type;
            size_t rb = td_quant_row_bytes(vt, 1536);
            uint8_t *a = malloc(rb * MAX_ROWS), *b = malloc(rb * MAX_ROWS);
            td_quant_activations(wt[i], x, 1536, MAX_ROWS, a);
            for (int r = 0; r < MAX_ROWS; r++)
                ggml_traits((int)vt)->from_float(x + r * 1536, b + r * rb, 1536);
            size_t diff = 0;
            for (size_t k = 0; k < rb * MAX_ROWS; k++)
                diff += a[k] != b[k];
            shape s = {"check", wt[i], 1536, 64};
            void *W = make_weights(&s);
            float *y1 = malloc(64 * MAX_ROWS * sizeof(float)), *y2 = malloc(64 * MAX_ROWS * sizeof(float));
            job j = {&s, W, a, MAX_ROWS, y1};
            run_jobs(&j, 1);
            use_ggml = true;
            j.y = y2;
            run_jobs(&j, 1);
            use_ggml = false;
            double worst = 0;
            for (int k = 0; k < 64 * MAX_ROWS; k++)
                worst = fmax(worst, fabs((double)y1[k] - y2[k]) / (fabs((double)y2[k]) + 1e-3));
            printf("vs ggml %s: activation bytes differing %zu of %zu; dot products max rel diff %.2g\n",
                   td_quant_traits(vt)->name, diff, rb * MAX_ROWS, worst);
            td_free(W);
            free(a);
            free(b);
            free(y1);
            free(y2);
        }
    }
    const int n_eng = ggml_traits ? 2 : 1;
    static const char *eng_name[2] = {"tandem", "ggml"};

    /* hot: one matrix repeatedly */
    printf("\nhot (one matrix, repeated): GB/s of weights read, time per call, ratio to rows=1\n");
    printf("%-12s %-6s %-5s %11s", "shape", "engine", "type", "n_in x n_out");
    for (int k = 0; k < n_rowset; k++)
        printf("   rows=%-2d         ", rows[k]);
    printf("\n");
    for (size_t si = 0; si <= N_LAYER_SHAPES; si++) {
        const shape *s = si < N_LAYER_SHAPES ? &layer_shapes[si] : &output_shape;
        if (si == 1 || si == 3 || si == 5) /* k/v/o/up repeat q/gate's shape */
            continue;
        void *W = make_weights(s);
        double bytes = (double)td_quant_row_bytes(s->type, s->n_in) * (double)s->n_out;
        double t[2][8];
        for (int k = 0; k < n_rowset; k++) {
            const void *xq = s->type == TD_TYPE_Q8_0 ? xq80_576 : s->n_in == 576 ? xq41_576 : xq41_1536;
            job j = {s, W, xq, rows[k], y};
            for (int e = 0; e < n_eng; e++) { /* interleaved: same machine state */
                use_ggml = e == 1;
                t[e][k] = time_jobs(&j, 1, s->n_out > 10000 ? reps / 2 + 1 : reps * 4);
            }
            use_ggml = false;
        }
        for (int e = 0; e < n_eng; e++) {
            printf("%-12s %-6s %-5s %5lldx%-5lld", s->name, eng_name[e], td_quant_traits(s->type)->name,
                   (long long)s->n_in, (long long)s->n_out);
            for (int k = 0; k < n_rowset; k++)
                printf("  %6.2f %7.1fus %4.2fx", bytes / t[e][k] / 1e9, t[e][k] * 1e6, t[e][k] / t[e][0]);
            printf("\n");
        }
        td_free(W);
    }

    /* forward: every matrix of the model once, weights streamed from memory */
    if (threads > 1)
        pool = td_pool_create(threads, NULL);
    printf("\nforward (30 layers x 7 matrices + output, each once; weights not cache-resident; "
           "%d thread%s)\n", threads, threads > 1 ? "s" : "");
    job jobs[N_LAYERS * N_LAYER_SHAPES + 1];
    int nj = 0;
    double total_bytes = 0;
    for (int l = 0; l < N_LAYERS; l++)
        for (size_t si = 0; si < N_LAYER_SHAPES; si++) {
            const shape *s = &layer_shapes[si];
            jobs[nj++] = (job){s, make_weights(s), s->n_in == 576 ? xq41_576 : xq41_1536, 1, y};
            total_bytes += (double)td_quant_row_bytes(s->type, s->n_in) * (double)s->n_out;
        }
    jobs[nj++] = (job){&output_shape, make_weights(&output_shape), xq80_576, 1, y};
    total_bytes += (double)td_quant_row_bytes(TD_TYPE_Q8_0, 576) * 49152.0;
    double base[2] = {0, 0}, t_all[2] = {0, 0};
    for (int k = 0; k < n_rowset; k++) {
        for (int i = 0; i < nj; i++)
            jobs[i].n_rows = rows[k];
        for (int e = 0; e < n_eng; e++) {
            use_ggml = e == 1;
            t_all[e] = time_jobs(jobs, nj, reps / 2 + 1);
            if (k == 0)
                base[e] = t_all[e];
        }
        use_ggml = false;
        for (int e = 0; e < n_eng; e++)
            printf("rows=%-2d %-6s %7.2f ms  %6.2f GB/s  %5.2fx rows=1%s\n", rows[k], eng_name[e],
                   t_all[e] * 1e3, total_bytes / t_all[e] / 1e9, t_all[e] / base[e],
                   e == 1 ? "" : "");
        if (n_eng == 2)
            printf("rows=%-2d tandem/ggml time ratio %.2f\n", rows[k], t_all[0] / t_all[1]);
    }
    printf("weights per forward: %.1f MB\n", total_bytes / 1e6);
    td_pool_destroy(pool);
    for (int i = 0; i < nj; i++)
        td_free((void *)jobs[i].W);
    td_free(xq41_576);
    td_free(xq41_1536);
    td_free(xq80_576);
    free(x);
    free(y);
    return 0;
}

// Build (from the repository root):
//   mkdir -p /tmp/bq && for f in common/quant/*.c common/util/*.c; do
//     case $f in *_avx2.c) fl="-mavx2 -mfma -mf16c";;
//       *_avx512.c) fl="-mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512vnni";; *) fl="";; esac;
//     gcc -std=c11 -O2 -D_GNU_SOURCE -Icommon $fl -c $f -o /tmp/bq/$(basename $f .c).o; done
//   gcc -std=c11 -O2 -D_GNU_SOURCE -Icommon tests/bench/bench_quant.c /tmp/bq/*.o -lm -lpthread
//       -o /tmp/bq/bench_quant
//   /tmp/bq/bench_quant [reps] [cpu|wall] [path/to/libggml-cpu.so|-] [forward threads]
