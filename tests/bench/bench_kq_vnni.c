/* bench_kq_vnni.c — the K-quant matmuls (Q4_K, Q5_K, Q6_K) of the AVX2 build
 * against the AVX512-VNNI build, alternated call by call in one process, so
 * that the load of a shared machine falls on both alike (separate runs with
 * TD_KERNELS=avx2 move by up to 2x on a busy 2-vCPU VM). One thread, one
 * 1536-input matrix of 512 KiB (it stays in L2, as `tandem bench kernels`
 * "hot"), 1, 2, 4, 8 and 16 activation rows; medians of the samples. Both
 * builds give the same bits (test_quant_vnni); this only times them.
 * Prints figures only; nothing passes or fails. Needs a CPU with
 * AVX512-VNNI and AVX512-VL.
 *
 * Not built by CMake; the build command is at the end of this file.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "quant/quant_impl.h"

#define N_IN 1536
#define HOT_BYTES (512 << 10)
#define MAX_ROWS 16

typedef struct kq_pair {
    const char *name;
    uint32_t type;
    td_matmul_fn avx2, vnni;
} kq_pair;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const int samples = argc > 1 ? atoi(argv[1]) : 301;
    if (samples < 1 || !__builtin_cpu_supports("avx512vnni") || !__builtin_cpu_supports("avx512vl")) {
        fprintf(stderr, "usage: bench_kq_vnni [samples]  (needs AVX512-VNNI and AVX512-VL)\n");
        return 2;
    }
    static const kq_pair pairs[] = {
        {"Q4_K", TD_TYPE_Q4_K, td_quant_avx2_matmul_q4_k, td_quant_avx512_matmul_q4_k},
        {"Q5_K", TD_TYPE_Q5_K, td_quant_avx2_matmul_q5_k, td_quant_avx512_matmul_q5_k},
        {"Q6_K", TD_TYPE_Q6_K, td_quant_avx2_matmul_q6_k, td_quant_avx512_matmul_q6_k},
    };
    static const int rows[] = {1, 2, 4, 8, 16};
    const size_t xrow = td_quant_row_bytes(TD_TYPE_Q8_K, N_IN);
    float *w = malloc(sizeof(float) * N_IN), *x = malloc(sizeof(float) * N_IN * MAX_ROWS);
    float *y = malloc(sizeof(float) * MAX_ROWS * (HOT_BYTES / 144));
    uint8_t *W = malloc(HOT_BYTES), *X = malloc(xrow * MAX_ROWS);
    double *t2 = malloc(sizeof(double) * (size_t)samples), *t5 = malloc(sizeof(double) * (size_t)samples);
    if (!w || !x || !y || !W || !X || !t2 || !t5) return 1;
    uint64_t s = 0x2545f4914f6cdd1dULL;
    for (int i = 0; i < N_IN * MAX_ROWS; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        x[i] = (float)(s >> 40) / 8388608.0f - 1.0f;
    }
    for (int r = 0; r < MAX_ROWS; r++) td_quant_ref_from_q8_k(x + r * N_IN, X + (size_t)r * xrow, N_IN);
    printf("one thread, a %d-input matrix of %d KiB, medians of %d calls of each build, alternated\n", N_IN,
           HOT_BYTES >> 10, samples);
    for (size_t p = 0; p < sizeof pairs / sizeof pairs[0]; p++) {
        const size_t wrow = td_quant_row_bytes(pairs[p].type, N_IN);
        const int64_t n_out = (int64_t)(HOT_BYTES / wrow);
        for (int64_t o = 0; o < n_out; o++) { /* each weight row from its own random values */
            for (int i = 0; i < N_IN; i++) {
                s ^= s << 13, s ^= s >> 7, s ^= s << 17;
                w[i] = (float)(s >> 40) / 8388608.0f - 1.0f;
            }
            td_quant_traits_ref(pairs[p].type)->from_float(w, W + (size_t)o * wrow, N_IN);
        }
        printf("%s, %lld outputs:", pairs[p].name, (long long)n_out);
        for (size_t k = 0; k < sizeof rows / sizeof rows[0]; k++) {
            for (int i = 0; i < 2 * samples; i++) { /* avx2, vnni, vnni, avx2, ...: neither always first */
                const bool vnni = (i & 1) ^ ((i >> 1) & 1);
                double t0 = now();
                (vnni ? pairs[p].vnni : pairs[p].avx2)(W, wrow, N_IN, 0, n_out, X, xrow, rows[k], y, n_out);
                (vnni ? t5 : t2)[i / 2] = now() - t0;
            }
            qsort(t2, (size_t)samples, sizeof *t2, by_value);
            qsort(t5, (size_t)samples, sizeof *t5, by_value);
            double a = t2[samples / 2], v = t5[samples / 2];
            printf("  %d: %.4f / %.4f ms (%.2fx)", rows[k], a * 1e3, v * 1e3, a / v);
        }
        printf("   [avx2 / avx512vnni]\n");
    }
    free(w); free(x); free(y); free(W); free(X); free(t2); free(t5);
    return 0;
}

// Build (from the repository root, after the CMake build):
//   gcc -std=c11 -O2 -D_GNU_SOURCE -Icommon tests/bench/bench_kq_vnni.c build/libtandem.a -lm -lpthread
//       -o /tmp/bench_kq_vnni
//   /tmp/bench_kq_vnni [samples]
