/* comm_nccl_check.c — the NCCL backend on a GPU: a one-rank group (NCCL
 * refuses two ranks on one device, and a lent machine has one), every
 * collective checked bit for bit against a host reference, and the
 * all-reduce's ordered sum on its own over 1..7 parts with inputs where the
 * order of the sum changes the bits (a one-rank group cannot show order).
 * The multi-rank logic (counts, offsets, roots, bootstrap over MPI) is the
 * same front end and the same MPI bootstrap comm_mpi_check runs on 1-3 ranks.
 *
 *   comm_nccl_check          bootstrap by id (no launcher: as under Kubernetes)
 *   mpirun -np 1 comm_nccl_check --mpi      td_comm_open("nccl"): over MPI
 *
 * Option checks run everywhere; without a CUDA device it prints why and exits
 * 77 (CTest's SKIP_RETURN_CODE). A failing check prints and exits 1. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "comm/comm.h"
#include "comm/comm_internal.h" /* td_comm_nccl_ordered_sum */
#include "comm_inputs.h"
#include "check_exit.h"

#define CUDA_OK(call)                                                                    \
    do {                                                                                 \
        cudaError_t e_ = (call);                                                         \
        CHECK(e_ == cudaSuccess, "%s: %s", #call, cudaGetErrorString(e_));              \
    } while (0)

static float *host_f32(int64_t n) {
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof *p);
    CHECK(p, "out of memory (%lld floats)", (long long)n);
    return p;
}

static float *dev_f32(int64_t n) {
    void *p = NULL;
    CUDA_OK(cudaMalloc(&p, (size_t)(n > 0 ? n : 1) * sizeof(float)));
    return p;
}

static void to_dev(float *d, const float *h, int64_t n) {
    CUDA_OK(cudaMemcpy(d, h, (size_t)n * sizeof(float), cudaMemcpyHostToDevice));
}

static void check_dev_bits(const float *d, const float *want, int64_t n, const char *what) {
    float *got = host_f32(n);
    CUDA_OK(cudaMemcpy(got, d, (size_t)n * sizeof(float), cudaMemcpyDeviceToHost));
    for (int64_t i = 0; i < n; i++)
        CHECK(memcmp(&got[i], &want[i], sizeof(float)) == 0, "%s: [%lld] got %.9g want %.9g", what,
              (long long)i, got[i], want[i]);
    free(got);
}

/* The caller's mistakes: the same TD_E_ARG with or without NCCL or a GPU. */
static void check_options(void) {
    td_err err = {0};
    CHECK(!td_comm_open_nccl(NULL, &err) && err.code == TD_E_ARG, "NULL options: %s", err.msg);
    uint8_t id[TD_COMM_NCCL_ID_BYTES] = {0};
    td_comm_nccl_opts bad[] = {
        {.device = 0, .boot = TD_COMM_NCCL_BOOT_ID, .rank = 1, .size = 1, .id = id},
        {.device = 0, .boot = TD_COMM_NCCL_BOOT_ID, .rank = -1, .size = 2, .id = id},
        {.device = 0, .boot = TD_COMM_NCCL_BOOT_ID, .rank = 0, .size = 0, .id = id},
        {.device = 0, .boot = TD_COMM_NCCL_BOOT_ID, .rank = 0, .size = 1, .id = NULL},
        {.device = -2, .boot = TD_COMM_NCCL_BOOT_ID, .rank = 0, .size = 1, .id = id},
        {.device = 0, .boot = (td_comm_nccl_boot)7},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err.code = 0;
        CHECK(!td_comm_open_nccl(&bad[i], &err) && err.code == TD_E_ARG, "bad options %zu: %s", i, err.msg);
    }
    CHECK(td_comm_nccl_compiled(), "a build with this check has NCCL");
}

/* The all-reduce's ordered sum over nparts parts against the host's left to
 * right sum; also that another order would have given other bits (so the
 * inputs can tell). */
static void check_ordered_sum(int device, int nparts, int64_t n) {
    float *h = host_f32(n * nparts), *want = host_f32(n);
    int64_t differ = 0;
    for (int64_t i = 0; i < n; i++) {
        for (int r = 0; r < nparts; r++) h[(int64_t)r * n + i] = comm_input(r, i);
        float acc = h[i], rev = h[(int64_t)(nparts - 1) * n + i];
        for (int r = 1; r < nparts; r++) acc += h[(int64_t)r * n + i];
        for (int r = nparts - 2; r >= 0; r--) rev += h[(int64_t)r * n + i];
        want[i] = acc;
        differ += memcmp(&acc, &rev, sizeof acc) != 0;
    }
    if (nparts >= 3) CHECK(differ > 0, "inputs of %d parts do not depend on the order", nparts);
    float *dp = dev_f32(n * nparts), *dout = dev_f32(n);
    to_dev(dp, h, n * nparts);
    td_err err = {0};
    CHECK(td_comm_nccl_ordered_sum(device, dp, nparts, n, dout, &err) == TD_OK, "%s", err.msg);
    char what[64];
    snprintf(what, sizeof what, "ordered sum of %d parts", nparts);
    check_dev_bits(dout, want, n, what);
    printf("ok: ordered sum, %d parts x %lld floats (%lld would differ in reverse order)\n", nparts,
           (long long)n, (long long)differ);
    cudaFree(dp);
    cudaFree(dout);
    free(h);
    free(want);
}

static void check_group(td_comm *c) {
    td_err err = {0};
    CHECK(!strcmp(td_comm_backend(c), "nccl"), "backend %s", td_comm_backend(c));
    CHECK(td_comm_size(c) == 1 && td_comm_rank(c) == 0, "rank %d of %d", td_comm_rank(c), td_comm_size(c));

    /* control bytes: more than the staging buffer, so it goes in pieces */
    size_t nb = (size_t)200 << 10;
    uint8_t *ctrl = malloc(nb), *copy = malloc(nb);
    CHECK(ctrl && copy, "out of memory");
    for (size_t i = 0; i < nb; i++) ctrl[i] = (uint8_t)comm_inputs_mix((uint32_t)i);
    memcpy(copy, ctrl, nb);
    CHECK(td_comm_bcast_ctrl(c, ctrl, nb, &err) == TD_OK, "bcast_ctrl: %s", err.msg);
    CHECK(!memcmp(ctrl, copy, nb), "bcast_ctrl changed the root's bytes");
    free(ctrl);
    free(copy);
    printf("ok: control broadcast, %zu bytes\n", nb);

    /* all-reduce over more than one chunk (2^20 floats) and a short one:
     * one rank's sum is its buffer, bits included, through gather + kernel */
    int64_t sizes[] = {1, 1000, ((int64_t)1 << 21) + 37};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int64_t n = sizes[s];
        float *h = host_f32(n), *d = dev_f32(n);
        for (int64_t i = 0; i < n; i++) h[i] = comm_input(0, i);
        to_dev(d, h, n);
        CHECK(td_comm_allreduce_sum_f32(c, d, n, &err) == TD_OK, "allreduce: %s", err.msg);
        check_dev_bits(d, h, n, "allreduce (one rank)");
        CHECK(td_comm_bcast_f32(c, d, n, 0, &err) == TD_OK, "bcast_f32: %s", err.msg);
        check_dev_bits(d, h, n, "bcast_f32");
        printf("ok: all-reduce and broadcast, %lld floats\n", (long long)n);
        free(h);
        cudaFree(d);
    }

    /* all-gather: out of place and in place; all-gatherv with a zero count */
    int64_t n = 4099;
    float *h = host_f32(n), *send = dev_f32(n), *recv = dev_f32(n);
    for (int64_t i = 0; i < n; i++) h[i] = comm_input(1, i);
    to_dev(send, h, n);
    CUDA_OK(cudaMemset(recv, 0xff, (size_t)n * sizeof(float)));
    CHECK(td_comm_allgather_f32(c, send, n, recv, &err) == TD_OK, "allgather: %s", err.msg);
    check_dev_bits(recv, h, n, "allgather");
    CHECK(td_comm_allgather_f32(c, recv, n, recv, &err) == TD_OK, "allgather in place: %s", err.msg);
    check_dev_bits(recv, h, n, "allgather in place");
    int64_t counts[1] = {n};
    CUDA_OK(cudaMemset(recv, 0xff, (size_t)n * sizeof(float)));
    CHECK(td_comm_allgatherv_f32(c, send, n, recv, counts, &err) == TD_OK, "allgatherv: %s", err.msg);
    check_dev_bits(recv, h, n, "allgatherv");
    counts[0] = 0;
    CHECK(td_comm_allgatherv_f32(c, send, 0, recv, counts, &err) == TD_OK, "allgatherv of 0: %s", err.msg);
    check_dev_bits(recv, h, n, "allgatherv of 0 leaves recv alone");
    printf("ok: all-gather (in place too) and all-gatherv, %lld floats\n", (long long)n);
    free(h);
    cudaFree(send);
    cudaFree(recv);

    for (int i = 0; i < 3; i++) CHECK(td_comm_barrier(c, &err) == TD_OK, "barrier: %s", err.msg);
    printf("ok: barrier\n");
}

int main(int argc, char **argv) {
    int mpi = argc > 1 && !strcmp(argv[1], "--mpi");
    check_options();
    int ndev = 0;
    cudaError_t e = cudaGetDeviceCount(&ndev);
    if (e != cudaSuccess || ndev < 1) {
        printf("SKIP: no CUDA device (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "count 0");
        return 77;
    }
    td_err err = {0};
    td_comm *c;
    if (mpi) {
        c = td_comm_open("nccl", &err); /* bootstrap over MPI, the launcher's local rank */
        CHECK(c, "td_comm_open(nccl): %s", err.msg);
    } else {
        uint8_t id[TD_COMM_NCCL_ID_BYTES];
        CHECK(td_comm_nccl_unique_id(id, &err) == TD_OK, "%s", err.msg);
        td_comm_nccl_opts o = {.device = 0, .boot = TD_COMM_NCCL_BOOT_ID, .rank = 0, .size = 1, .id = id};
        c = td_comm_open_nccl(&o, &err);
        CHECK(c, "td_comm_open_nccl: %s", err.msg);
    }
    printf("# NCCL group of %d on device 0 of %d, bootstrap %s\n", td_comm_size(c), ndev, mpi ? "MPI" : "by id");
    check_group(c);
    for (int parts = 1; parts <= 7; parts++) check_ordered_sum(0, parts, 100003);
    td_comm_close(c);
    printf("comm_nccl_check: all passed\n");
    return 0;
}
