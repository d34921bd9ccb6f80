/* comm_mpi.c — the MPI backend: the ranks of MPI_COMM_WORLD, on a duplicate
 * of it (so no other MPI user's messages can match ours) whose errors return
 * to us instead of aborting the process. */
#include <limits.h>
#include <stdlib.h>

#include <mpi.h>

#include "comm/comm_internal.h"

/* Floats per step of the chained all-reduce: bounds the receive scratch and
 * keeps every MPI count an int. */
#define CHAIN_CHUNK ((int64_t)1 << 20)
/* Bytes per MPI_Bcast: MPI counts are ints. */
#define BCAST_CHUNK ((size_t)1 << 30)

typedef struct {
    MPI_Comm comm;
    float *scratch; /* CHAIN_CHUNK floats, allocated on first all-reduce */
    int *icounts, *idispls; /* size entries: MPI_Allgatherv's int arguments */
} mpi_impl;

/* Open MPI communicators of this process, and whether td_comm started MPI
 * (then the last close shuts it down). One thread at a time (comm.h). */
static int g_open;
static bool g_started;

bool td_comm_mpi_built(void) { return true; }

static int mpi_fail(td_err *err, const char *what, int rc) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) len = 0;
    msg[len < MPI_MAX_ERROR_STRING ? len : MPI_MAX_ERROR_STRING - 1] = 0;
    return td_err_set(err, TD_E_IO, "comm mpi: %s failed: %s", what, len ? msg : "unknown MPI error");
}

static int mpi_bcast(td_comm *c, void *buf, size_t bytes, int root, td_err *err) {
    mpi_impl *m = c->impl;
    for (size_t off = 0; off < bytes; off += BCAST_CHUNK) {
        size_t k = bytes - off < BCAST_CHUNK ? bytes - off : BCAST_CHUNK;
        int rc = MPI_Bcast((char *)buf + off, (int)k, MPI_BYTE, root, m->comm);
        if (rc != MPI_SUCCESS) return mpi_fail(err, "MPI_Bcast", rc);
    }
    return TD_OK;
}

/* The fixed order, chained: rank r receives the running sum of ranks 0..r-1,
 * adds its own buffer on the right, and passes it on; the last rank holds
 * ((b0 + b1) + ...) + b{N-1} and broadcasts it (a copy: no more arithmetic),
 * so every rank gets the same bits whatever MPI's own algorithms are. */
static int mpi_allreduce(td_comm *c, float *buf, int64_t n, td_err *err) {
    mpi_impl *m = c->impl;
    if (c->size == 1) return TD_OK;
    if (c->rank > 0 && !m->scratch) {
        m->scratch = malloc((size_t)CHAIN_CHUNK * sizeof(float));
        if (!m->scratch) return td_err_set(err, TD_E_NOMEM, "comm mpi: out of memory");
    }
    int last = c->size - 1;
    for (int64_t off = 0; off < n; off += CHAIN_CHUNK) {
        int k = (int)(n - off < CHAIN_CHUNK ? n - off : CHAIN_CHUNK);
        float *b = buf + off;
        int rc;
        if (c->rank > 0) {
            rc = MPI_Recv(m->scratch, k, MPI_FLOAT, c->rank - 1, 0, m->comm, MPI_STATUS_IGNORE);
            if (rc != MPI_SUCCESS) return mpi_fail(err, "MPI_Recv", rc);
            for (int i = 0; i < k; i++) b[i] = m->scratch[i] + b[i];
        }
        if (c->rank < last) {
            rc = MPI_Send(b, k, MPI_FLOAT, c->rank + 1, 0, m->comm);
            if (rc != MPI_SUCCESS) return mpi_fail(err, "MPI_Send", rc);
        }
        rc = MPI_Bcast(b, k, MPI_FLOAT, last, m->comm);
        if (rc != MPI_SUCCESS) return mpi_fail(err, "MPI_Bcast", rc);
    }
    return TD_OK;
}

static int mpi_allgatherv(td_comm *c, const float *send, float *recv, const int64_t *counts,
                          const int64_t *offsets, td_err *err) {
    mpi_impl *m = c->impl;
    int64_t total = offsets[c->size - 1] + counts[c->size - 1];
    if (total > INT_MAX)
        return td_err_set(err, TD_E_RANGE, "comm mpi: all-gather of %lld floats exceeds MPI's int counts",
                          (long long)total);
    for (int r = 0; r < c->size; r++) {
        m->icounts[r] = (int)counts[r];
        m->idispls[r] = (int)offsets[r];
    }
    /* in place when this rank's part already sits in its slot (comm.h) */
    const void *sb = send == recv + offsets[c->rank] ? MPI_IN_PLACE : (const void *)send;
    int rc = MPI_Allgatherv(sb, m->icounts[c->rank], MPI_FLOAT, recv, m->icounts, m->idispls, MPI_FLOAT,
                            m->comm);
    if (rc != MPI_SUCCESS) return mpi_fail(err, "MPI_Allgatherv", rc);
    return TD_OK;
}

static int mpi_barrier(td_comm *c, td_err *err) {
    mpi_impl *m = c->impl;
    int rc = MPI_Barrier(m->comm);
    if (rc != MPI_SUCCESS) return mpi_fail(err, "MPI_Barrier", rc);
    return TD_OK;
}

static void mpi_close(td_comm *c) {
    mpi_impl *m = c->impl;
    if (!m) return;
    if (m->comm != MPI_COMM_NULL) MPI_Comm_free(&m->comm);
    free(m->scratch);
    free(m->icounts);
    free(m->idispls);
    free(m);
    c->impl = NULL;
    if (--g_open == 0 && g_started) {
        int fin = 0;
        MPI_Finalized(&fin);
        if (!fin) MPI_Finalize();
    }
}

static const td_comm_ops mpi_ops = {
    .name = "mpi",
    .bcast = mpi_bcast,
    .allreduce_sum_f32 = mpi_allreduce,
    .allgatherv_f32 = mpi_allgatherv,
    .barrier = mpi_barrier,
    .close = mpi_close,
};

int td_comm_mpi_open(td_comm *c, td_err *err) {
    int fin = 0, init = 0;
    MPI_Finalized(&fin);
    if (fin)
        return td_err_set(err, TD_E_UNSUPPORTED,
                          "comm mpi: MPI was already shut down in this process and cannot start again");
    MPI_Initialized(&init);
    if (!init) {
        int provided = 0;
        /* SERIALIZED: one thread at a time makes MPI calls, not always the
         * same one (comm.h's threads rule: a server's passes run on its
         * call threads in turn) */
        int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
        if (rc != MPI_SUCCESS) return mpi_fail(err, "MPI_Init_thread", rc);
        g_started = true;
    }
    mpi_impl *m = calloc(1, sizeof *m);
    if (!m) return td_err_set(err, TD_E_NOMEM, "comm mpi: out of memory");
    m->comm = MPI_COMM_NULL;
    c->impl = m;
    c->ops = &mpi_ops;
    g_open++; /* from here mpi_close undoes everything, MPI included */
    int st;
    int rc = MPI_Comm_dup(MPI_COMM_WORLD, &m->comm);
    if (rc != MPI_SUCCESS) {
        m->comm = MPI_COMM_NULL;
        st = mpi_fail(err, "MPI_Comm_dup", rc);
        goto fail;
    }
    rc = MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN);
    if (rc == MPI_SUCCESS) rc = MPI_Comm_rank(m->comm, &c->rank);
    if (rc == MPI_SUCCESS) rc = MPI_Comm_size(m->comm, &c->size);
    if (rc != MPI_SUCCESS) {
        st = mpi_fail(err, "MPI communicator setup", rc);
        goto fail;
    }
    m->icounts = calloc((size_t)c->size, sizeof *m->icounts);
    m->idispls = calloc((size_t)c->size, sizeof *m->idispls);
    if (!m->icounts || !m->idispls) {
        st = td_err_set(err, TD_E_NOMEM, "comm mpi: out of memory");
        goto fail;
    }
    return TD_OK;
fail:
    mpi_close(c);
    c->ops = NULL;
    return st;
}
