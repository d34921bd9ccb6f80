/* test_comm.c — the single backend's collectives against a plain reference,
 * backend choice from the environment, and a caller's mistakes (NULL
 * buffers, negative counts, counts that do not match) answered with TD_E_ARG
 * and a message. The MPI backend is checked under mpirun by comm_mpi_check
 * (CTest: comm_mpi_np1/2/3). The NCCL backend's option checks run here in
 * every build; in a build without NCCL every way in says "built without
 * NCCL"; its collectives run on a GPU (comm_nccl_check). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "comm/comm.h"

static const char *const launcher_vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"};

static void clear_launcher_env(void) {
    for (size_t i = 0; i < sizeof launcher_vars / sizeof launcher_vars[0]; i++) unsetenv(launcher_vars[i]);
}

static float val(int64_t i) { return (float)(i * 37 % 101) * 0.37f - 11.0f; }

static void open_single(void **state) {
    (void)state;
    clear_launcher_env();
    td_err err = {0};
    const char *names[] = {"single", "auto", NULL};
    for (int k = 0; k < 3; k++) {
        td_comm *c = td_comm_open(names[k], &err);
        assert_non_null(c);
        assert_int_equal(td_comm_rank(c), 0);
        assert_int_equal(td_comm_size(c), 1);
        assert_string_equal(td_comm_backend(c), "single");
        assert_int_equal(td_comm_device(c), -1); /* host buffers */
        td_comm_close(c);
    }
    td_comm_close(NULL);
    assert_int_equal(td_comm_rank(NULL), 0);
    assert_int_equal(td_comm_size(NULL), 1);
    assert_int_equal(td_comm_device(NULL), -1);
}

static void launcher_detection(void **state) {
    (void)state;
    clear_launcher_env();
    assert_false(td_comm_launched());
    for (size_t i = 0; i < sizeof launcher_vars / sizeof launcher_vars[0]; i++) {
        setenv(launcher_vars[i], "2", 1);
        assert_true(td_comm_launched());
        unsetenv(launcher_vars[i]);
        assert_false(td_comm_launched());
    }
    setenv("OMPI_COMM_WORLD_SIZE", "", 1); /* set but empty: not a launcher */
    assert_false(td_comm_launched());
    clear_launcher_env();
}

static void unknown_and_absent_backends(void **state) {
    (void)state;
    clear_launcher_env();
    td_err err = {0};
    assert_null(td_comm_open("gloo", &err));
    assert_int_equal(err.code, TD_E_ARG);
    assert_non_null(strstr(err.msg, "gloo"));
    assert_non_null(strstr(err.msg, "nccl")); /* the list of backends */
    assert_null(td_comm_open("gloo", NULL)); /* no err: still no crash */
    if (td_comm_mpi_compiled()) {
        /* starting MPI here (a singleton) is left to comm_mpi_np1 */
        skip();
    }
    memset(&err, 0, sizeof err);
    assert_null(td_comm_open("mpi", &err));
    assert_int_equal(err.code, TD_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "built without MPI"));
    /* under a launcher, "auto" must not quietly run every rank as rank 0 */
    setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
    memset(&err, 0, sizeof err);
    assert_null(td_comm_open(NULL, &err));
    assert_int_equal(err.code, TD_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "built without MPI"));
    /* an explicit "single" is the caller's choice */
    td_comm *c = td_comm_open("single", &err);
    assert_non_null(c);
    td_comm_close(c);
    clear_launcher_env();
}

/* The NCCL backend's options: a caller's mistakes are TD_E_ARG in every
 * build; without NCCL, "nccl", td_comm_open_nccl and td_comm_nccl_unique_id
 * say so (with NCCL they would start MPI or look for a GPU: comm_nccl_check). */
static void nccl_options(void **state) {
    (void)state;
    clear_launcher_env();
    td_err err = {0};
    uint8_t id[TD_COMM_NCCL_ID_BYTES] = {0};
    assert_null(td_comm_open_nccl(NULL, &err));
    assert_int_equal(err.code, TD_E_ARG);
    const td_comm_nccl_opts bad[] = {
        {.device = 0, .boot = TD_COMM_NCCL_BOOT_ID, .rank = 2, .size = 2, .id = id},
        {.device = 0, .boot = TD_COMM_NCCL_BOOT_ID, .rank = -1, .size = 2, .id = id},
        {.device = 0, .boot = TD_COMM_NCCL_BOOT_ID, .rank = 0, .size = 0, .id = id},
        {.device = 0, .boot = TD_COMM_NCCL_BOOT_ID, .rank = 0, .size = 1, .id = NULL},
        {.device = -2, .boot = TD_COMM_NCCL_BOOT_ID, .rank = 0, .size = 1, .id = id},
        {.device = 0, .boot = (td_comm_nccl_boot)9, .rank = 0, .size = 1, .id = id},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&err, 0, sizeof err);
        assert_null(td_comm_open_nccl(&bad[i], &err));
        assert_int_equal(err.code, TD_E_ARG);
        assert_non_null(strstr(err.msg, "td_comm_open_nccl"));
    }
    memset(&err, 0, sizeof err);
    assert_int_equal(td_comm_nccl_unique_id(NULL, &err), TD_E_ARG);
    if (td_comm_nccl_compiled()) skip();
    memset(&err, 0, sizeof err);
    assert_null(td_comm_open("nccl", &err));
    assert_int_equal(err.code, TD_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "built without NCCL"));
    const td_comm_nccl_opts good = {.device = 0, .boot = TD_COMM_NCCL_BOOT_ID, .rank = 0, .size = 1, .id = id};
    memset(&err, 0, sizeof err);
    assert_null(td_comm_open_nccl(&good, &err));
    assert_int_equal(err.code, TD_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "built without NCCL"));
    memset(&err, 0, sizeof err);
    assert_int_equal(td_comm_nccl_unique_id(id, &err), TD_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "built without NCCL"));
}

/* Size 1: the sum is the buffer itself (bits included: -0.0 stays -0.0), a
 * broadcast leaves it, a gather copies it to the right place and nowhere
 * else. */
static void single_collectives(void **state) {
    (void)state;
    td_err err = {0};
    td_comm *c = td_comm_open("single", &err);
    assert_non_null(c);
    enum { N = 37, GUARD = 4 };
    float buf[N], want[N], recv[N + GUARD];
    for (int i = 0; i < N; i++) want[i] = buf[i] = val(i);
    buf[5] = want[5] = -0.0f;
    assert_int_equal(td_comm_allreduce_sum_f32(c, buf, N, &err), TD_OK);
    assert_memory_equal(buf, want, sizeof buf);
    assert_int_equal(td_comm_allreduce_sum_f32(c, NULL, 0, &err), TD_OK);
    assert_int_equal(td_comm_bcast_f32(c, buf, N, 0, &err), TD_OK);
    assert_memory_equal(buf, want, sizeof buf);

    unsigned char step[24], step_want[24];
    for (int i = 0; i < 24; i++) step[i] = step_want[i] = (unsigned char)(i * 11);
    assert_int_equal(td_comm_bcast_ctrl(c, step, sizeof step, &err), TD_OK);
    assert_memory_equal(step, step_want, sizeof step);
    assert_int_equal(td_comm_bcast_ctrl(c, NULL, 0, &err), TD_OK);

    for (int i = 0; i < N + GUARD; i++) recv[i] = 99.0f;
    assert_int_equal(td_comm_allgather_f32(c, buf, N, recv, &err), TD_OK);
    assert_memory_equal(recv, want, sizeof want);
    for (int i = N; i < N + GUARD; i++) assert_true(recv[i] == 99.0f);

    int64_t counts[1] = {N - 3};
    for (int i = 0; i < N + GUARD; i++) recv[i] = 99.0f;
    assert_int_equal(td_comm_allgatherv_f32(c, buf, N - 3, recv, counts, &err), TD_OK);
    assert_memory_equal(recv, want, (N - 3) * sizeof(float));
    for (int i = N - 3; i < N + GUARD; i++) assert_true(recv[i] == 99.0f);
    /* in place: the send buffer is this rank's slot of recv */
    assert_int_equal(td_comm_allgatherv_f32(c, recv, N - 3, recv, counts, &err), TD_OK);
    assert_memory_equal(recv, want, (N - 3) * sizeof(float));
    counts[0] = 0;
    assert_int_equal(td_comm_allgatherv_f32(c, NULL, 0, NULL, counts, &err), TD_OK);

    assert_int_equal(td_comm_barrier(c, &err), TD_OK);
    td_comm_close(c);
}

/* Each mistake: TD_E_ARG returned and in err->code, a message naming the
 * call, and nothing written. */
static void expect_arg(int rc, td_err *err, const char *fn) {
    assert_int_equal(rc, TD_E_ARG);
    assert_int_equal(err->code, TD_E_ARG);
    assert_non_null(strstr(err->msg, fn));
    memset(err, 0, sizeof *err);
}

static void malformed_calls(void **state) {
    (void)state;
    td_err err = {0};
    td_comm *c = td_comm_open("single", &err);
    assert_non_null(c);
    float buf[8] = {1, 2, 3, 4, 5, 6, 7, 8}, recv[16];
    for (int i = 0; i < 16; i++) recv[i] = -1.0f;
    int64_t counts[1] = {8};

    expect_arg(td_comm_allreduce_sum_f32(NULL, buf, 8, &err), &err, "td_comm_allreduce_sum_f32");
    expect_arg(td_comm_allreduce_sum_f32(c, NULL, 8, &err), &err, "td_comm_allreduce_sum_f32");
    expect_arg(td_comm_allreduce_sum_f32(c, buf, -1, &err), &err, "td_comm_allreduce_sum_f32");
    expect_arg(td_comm_allreduce_sum_f32(c, buf, INT64_MAX, &err), &err, "td_comm_allreduce_sum_f32");

    expect_arg(td_comm_bcast_ctrl(NULL, buf, 4, &err), &err, "td_comm_bcast_ctrl");
    expect_arg(td_comm_bcast_ctrl(c, NULL, 4, &err), &err, "td_comm_bcast_ctrl");

    expect_arg(td_comm_bcast_f32(NULL, buf, 8, 0, &err), &err, "td_comm_bcast_f32");
    expect_arg(td_comm_bcast_f32(c, NULL, 8, 0, &err), &err, "td_comm_bcast_f32");
    expect_arg(td_comm_bcast_f32(c, buf, -8, 0, &err), &err, "td_comm_bcast_f32");
    expect_arg(td_comm_bcast_f32(c, buf, 8, 1, &err), &err, "td_comm_bcast_f32");  /* no rank 1 */
    expect_arg(td_comm_bcast_f32(c, buf, 8, -1, &err), &err, "td_comm_bcast_f32");

    expect_arg(td_comm_allgather_f32(NULL, buf, 8, recv, &err), &err, "td_comm_allgather_f32");
    expect_arg(td_comm_allgather_f32(c, NULL, 8, recv, &err), &err, "td_comm_allgather_f32");
    expect_arg(td_comm_allgather_f32(c, buf, 8, NULL, &err), &err, "td_comm_allgather_f32");
    expect_arg(td_comm_allgather_f32(c, buf, -2, recv, &err), &err, "td_comm_allgather_f32");
    /* overlapping, but not at this rank's slot */
    expect_arg(td_comm_allgather_f32(c, recv + 2, 8, recv, &err), &err, "td_comm_allgather_f32");

    expect_arg(td_comm_allgatherv_f32(NULL, buf, 8, recv, counts, &err), &err, "td_comm_allgatherv_f32");
    expect_arg(td_comm_allgatherv_f32(c, buf, 8, recv, NULL, &err), &err, "td_comm_allgatherv_f32");
    expect_arg(td_comm_allgatherv_f32(c, NULL, 8, recv, counts, &err), &err, "td_comm_allgatherv_f32");
    expect_arg(td_comm_allgatherv_f32(c, buf, 8, NULL, counts, &err), &err, "td_comm_allgatherv_f32");
    /* counts that disagree with the count sent */
    expect_arg(td_comm_allgatherv_f32(c, buf, 7, recv, counts, &err), &err, "td_comm_allgatherv_f32");
    counts[0] = -8;
    expect_arg(td_comm_allgatherv_f32(c, buf, -8, recv, counts, &err), &err, "td_comm_allgatherv_f32");
    counts[0] = INT64_MAX;
    expect_arg(td_comm_allgatherv_f32(c, buf, INT64_MAX, recv, counts, &err), &err, "td_comm_allgatherv_f32");
    counts[0] = 8;
    expect_arg(td_comm_allgatherv_f32(c, recv + 1, 8, recv, counts, &err), &err, "td_comm_allgatherv_f32");

    expect_arg(td_comm_barrier(NULL, &err), &err, "td_comm_barrier");

    /* a NULL err is allowed; the status still says what happened */
    assert_int_equal(td_comm_allreduce_sum_f32(c, NULL, 8, NULL), TD_E_ARG);

    /* nothing was written by a refused call */
    for (int i = 0; i < 8; i++) assert_true(buf[i] == (float)(i + 1));
    for (int i = 0; i < 16; i++) assert_true(recv[i] == -1.0f);
    td_comm_close(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(open_single),
        cmocka_unit_test(launcher_detection),
        cmocka_unit_test(unknown_and_absent_backends),
        cmocka_unit_test(nccl_options),
        cmocka_unit_test(single_collectives),
        cmocka_unit_test(malformed_calls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
