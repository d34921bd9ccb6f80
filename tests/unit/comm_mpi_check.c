/* comm_mpi_check.c — the MPI backend's collectives, run by CTest under
 * `mpirun -np N` (N = 1, 2, 3; argv[1] says N). `comm_mpi_check N nccl`
 * checks the NCCL backend instead (comm_nccl_emu_check: the CPU emulator's
 * NCCL, where buffers from malloc are device memory), bootstrapped over MPI;
 * `nccl-id` the same from an id handed to every rank (TD_COMM_NCCL_BOOT_ID). Every rank knows every rank's
 * input (a function of rank and index), so it checks each collective's
 * result against a plain reference computed locally — bit for bit, the
 * all-reduce included, on inputs where the order of the sum changes it.
 * A failing check prints and exits 1 without shutting MPI down, so mpirun
 * ends the whole job instead of leaving the other ranks waiting. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm.h"
#include "comm_inputs.h"
#include "check_exit.h"

/* The reference: rank 0 + rank 1 + ... left to right. */
static float ref_sum(int size, int64_t i) {
    float acc = comm_input(0, i);
    for (int r = 1; r < size; r++) acc += comm_input(r, i);
    return acc;
}

static float *alloc_f32(int64_t n) {
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof *p);
    CHECK(p, "out of memory");
    return p;
}

static void check_bits(const float *got, const float *want, int64_t n, const char *what) {
    for (int64_t i = 0; i < n; i++)
        CHECK(td_f32_bits(got[i]) == td_f32_bits(want[i]), "%s: index %lld: got %.9g (0x%08x), want %.9g (0x%08x)",
              what, (long long)i, got[i], td_f32_bits(got[i]), want[i], td_f32_bits(want[i]));
}

static void check_allreduce(td_comm *c, int size, int rank, int64_t n) {
    td_err err = {0};
    float *buf = alloc_f32(n), *want = alloc_f32(n);
    for (int64_t i = 0; i < n; i++) {
        buf[i] = comm_input(rank, i);
        want[i] = ref_sum(size, i);
    }
    CHECK(td_comm_allreduce_sum_f32(c, buf, n, &err) == TD_OK, "%s", err.msg);
    check_bits(buf, want, n, "all-reduce");
    free(buf);
    free(want);
}

static void check_bcast(td_comm *c, int size, int rank, int64_t n) {
    td_err err = {0};
    float *buf = alloc_f32(n);
    for (int root = 0; root < size; root++) {
        for (int64_t i = 0; i < n; i++) buf[i] = rank == root ? comm_input(root, i) : -7.0f;
        CHECK(td_comm_bcast_f32(c, buf, n, root, &err) == TD_OK, "%s", err.msg);
        for (int64_t i = 0; i < n; i++)
            CHECK(td_f32_bits(buf[i]) == td_f32_bits(comm_input(root, i)), "bcast from %d: index %lld", root,
                  (long long)i);
    }
    free(buf);
}

/* counts[r] floats from rank r (comm_input(r, i), i < counts[r]) gathered back to
 * back, with a guard after the end that must stay untouched; in_place puts
 * this rank's part in its slot first. */
static void check_gatherv(td_comm *c, int size, int rank, const int64_t *counts, bool equal, bool in_place) {
    td_err err = {0};
    int64_t total = 0, off = 0;
    for (int r = 0; r < size; r++) {
        if (r == rank) off = total;
        total += counts[r];
    }
    const int64_t guard = 3;
    float *recv = alloc_f32(total + guard), *send = alloc_f32(counts[rank]);
    for (int64_t i = 0; i < total + guard; i++) recv[i] = -3.0f;
    for (int64_t i = 0; i < counts[rank]; i++) send[i] = comm_input(rank, i);
    const float *src = send;
    if (in_place) {
        memcpy(recv + off, send, (size_t)counts[rank] * sizeof *send);
        src = recv + off;
    }
    int rc = equal ? td_comm_allgather_f32(c, src, counts[rank], recv, &err)
                   : td_comm_allgatherv_f32(c, src, counts[rank], recv, counts, &err);
    CHECK(rc == TD_OK, "%s", err.msg);
    int64_t at = 0;
    for (int r = 0; r < size; r++)
        for (int64_t i = 0; i < counts[r]; i++, at++)
            CHECK(td_f32_bits(recv[at]) == td_f32_bits(comm_input(r, i)), "gather%s%s: rank %d's index %lld",
                  equal ? "" : "v", in_place ? " in place" : "", r, (long long)i);
    for (int64_t i = 0; i < guard; i++) CHECK(recv[total + i] == -3.0f, "gather wrote past its end");
    free(recv);
    free(send);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    td_err err = {0};
    CHECK(argc == 2 || (argc == 3 && (!strcmp(argv[2], "nccl") || !strcmp(argv[2], "nccl-id"))),
          "usage: comm_mpi_check N [nccl|nccl-id] (run under mpirun -np N)");
    int want_size = atoi(argv[1]);
    bool by_id = argc == 3 && !strcmp(argv[2], "nccl-id");
    const char *backend = argc == 3 ? "nccl" : "mpi";
    CHECK(td_comm_mpi_compiled(), "built without MPI");
    CHECK(td_comm_launched(), "no MPI launcher in the environment");
    td_comm *c, *boot = NULL;
    if (by_id) {
        /* nccl-id: the bootstrap without a launcher's help (TD_COMM_NCCL_BOOT_ID),
         * rank 0's id handed over as etcd's rendezvous would, here by MPI */
        boot = td_comm_open("mpi", &err);
        CHECK(boot, "td_comm_open mpi: %s", err.msg);
        uint8_t id[TD_COMM_NCCL_ID_BYTES] = {0};
        if (td_comm_rank(boot) == 0) CHECK(td_comm_nccl_unique_id(id, &err) == TD_OK, "%s", err.msg);
        CHECK(td_comm_bcast_ctrl(boot, id, sizeof id, &err) == TD_OK, "%s", err.msg);
        td_comm_nccl_opts o = {.device = -1, .boot = TD_COMM_NCCL_BOOT_ID, .rank = td_comm_rank(boot),
                               .size = td_comm_size(boot), .id = id};
        c = td_comm_open_nccl(&o, &err);
        CHECK(c, "td_comm_open_nccl (BOOT_ID): %s", err.msg);
    } else {
        /* auto must pick MPI under mpirun; "nccl" boots over MPI */
        c = td_comm_open(argc == 3 ? backend : NULL, &err);
        CHECK(c, "td_comm_open: %s", err.msg);
    }
    int rank = td_comm_rank(c), size = td_comm_size(c);
    check_rank = rank;
    CHECK(!strcmp(td_comm_backend(c), backend), "backend %s", td_comm_backend(c));
    /* MPI's buffers are host memory; the emulator's one device holds NCCL's */
    CHECK(td_comm_device(c) == (argc == 3 ? 0 : -1), "buffers on device %d", td_comm_device(c));
    CHECK(size == want_size, "size %d, want %d", size, want_size);
    CHECK(size <= 3, "written for 1 to 3 ranks");
    CHECK(rank >= 0 && rank < size, "rank %d", rank);

    /* the order matters on the tricky inputs once there are 3 ranks: the
     * reference must differ from another association, or the bitwise check
     * below could not catch a wrong order */
    if (size == 3) {
        float other = (comm_input(0, 0) + comm_input(2, 0)) + comm_input(1, 0);
        CHECK(td_f32_bits(other) != td_f32_bits(ref_sum(3, 0)), "inputs do not depend on the order");
    }

    /* control broadcast: a step descriptor from rank 0 */
    struct step {
        int32_t op, n_rows;
        int64_t pos[5];
        char name[13];
    } st;
    memset(&st, 0, sizeof st);
    if (rank == 0) {
        st.op = 4;
        st.n_rows = 5;
        for (int i = 0; i < 5; i++) st.pos[i] = 1000 + 17 * i;
        memcpy(st.name, "verify-step", 12);
    }
    CHECK(td_comm_bcast_ctrl(c, &st, sizeof st, &err) == TD_OK, "%s", err.msg);
    CHECK(st.op == 4 && st.n_rows == 5 && st.pos[4] == 1068 && !strcmp(st.name, "verify-step"),
          "step descriptor not received");
    CHECK(td_comm_bcast_ctrl(c, NULL, 0, &err) == TD_OK, "%s", err.msg);

    /* all-reduce: sizes below, at and above the backend's chunk (2^20) */
    const int64_t ns[] = {1, 3, 4, 7, 576, 49152, ((int64_t)1 << 20) + 5};
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) check_allreduce(c, size, rank, ns[k]);
    /* twice more: the same bits every call */
    check_allreduce(c, size, rank, 576);
    check_allreduce(c, size, rank, 576);

    check_bcast(c, size, rank, 1);
    check_bcast(c, size, rank, 1000);

    /* all-gather, equal counts */
    int64_t counts[3];
    for (int64_t n = 0; n <= 65; n += 13) {
        for (int r = 0; r < size; r++) counts[r] = n;
        check_gatherv(c, size, rank, counts, true, false);
        check_gatherv(c, size, rank, counts, true, true);
    }
    /* unequal: 3 KV-head groups of 64 over the ranks (2 + 1 on 2 ranks), and
     * a pattern with an empty rank */
    for (int r = 0; r < size; r++) counts[r] = 64 * (3 / size + (r < 3 % size));
    check_gatherv(c, size, rank, counts, false, false);
    check_gatherv(c, size, rank, counts, false, true);
    for (int r = 0; r < size; r++) counts[r] = r == 1 ? 0 : 5 + r;
    check_gatherv(c, size, rank, counts, false, false);
    check_gatherv(c, size, rank, counts, false, true);

    /* a caller's mistake fails on its own rank before anything is sent (all
     * ranks make it here, then carry on with a good collective) */
    float x[4] = {0};
    for (int r = 0; r < size; r++) counts[r] = 4;
    counts[rank] = 3;
    CHECK(td_comm_allgatherv_f32(c, x, 4, x, counts, &err) == TD_E_ARG, "mismatched counts accepted");
    CHECK(td_comm_allreduce_sum_f32(c, NULL, 4, &err) == TD_E_ARG, "NULL buffer accepted");
    CHECK(td_comm_bcast_f32(c, x, 4, size, &err) == TD_E_ARG, "root out of range accepted");
    check_allreduce(c, size, rank, 7);

    /* barrier: nobody leaves before the last rank arrives. Rank 0 arrives
     * 200 ms late and says when; CLOCK_MONOTONIC is one clock for every
     * process of a host (CTest runs the ranks on one), so each rank's leaving
     * time must be later, however the ranks are scheduled. */
    CHECK(td_comm_barrier(c, &err) == TD_OK, "%s", err.msg);
    double arrived = 0;
    if (rank == 0) {
        struct timespec d = {0, 200 * 1000 * 1000};
        nanosleep(&d, NULL);
        arrived = now();
    }
    CHECK(td_comm_barrier(c, &err) == TD_OK, "%s", err.msg);
    double left = now();
    CHECK(td_comm_bcast_ctrl(c, &arrived, sizeof arrived, &err) == TD_OK, "%s", err.msg);
    CHECK(left >= arrived, "left the barrier %.3f s before rank 0 arrived", arrived - left);

    td_comm_close(c);
    td_comm_close(boot);
    printf("rank %d of %d: comm collectives ok (%s%s)\n", rank, size, backend, by_id ? ", bootstrapped from an id" : "");
    return 0;
}
