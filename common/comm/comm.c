/* comm.c — td_comm's front end: backend choice, the argument checks every
 * backend relies on (the NCCL options' included), and the single backend
 * (size 1). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm_internal.h"

/* ---- the single backend: one rank, so nothing moves between processes ---- */
static int single_bcast(td_comm *c, void *buf, size_t bytes, int root, td_err *err) {
    (void)c, (void)buf, (void)bytes, (void)root, (void)err;
    return TD_OK;
}
static int single_allreduce(td_comm *c, float *buf, int64_t n, td_err *err) {
    (void)c, (void)buf, (void)n, (void)err;
    return TD_OK; /* the sum of one buffer is itself, bits included */
}
static int single_allgatherv(td_comm *c, const float *send, float *recv, const int64_t *counts,
                             const int64_t *offsets, td_err *err) {
    (void)c, (void)offsets, (void)err;
    if (send != recv) memcpy(recv, send, (size_t)counts[0] * sizeof(float));
    return TD_OK;
}
static int single_barrier(td_comm *c, td_err *err) {
    (void)c, (void)err;
    return TD_OK;
}
static void single_close(td_comm *c) { (void)c; }

static const td_comm_ops single_ops = {
    .name = "single",
    .bcast = single_bcast,
    .bcast_ctrl = NULL,
    .allreduce_sum_f32 = single_allreduce,
    .allgatherv_f32 = single_allgatherv,
    .barrier = single_barrier,
    .close = single_close,
};

bool td_comm_mpi_compiled(void) { return td_comm_mpi_built(); }
bool td_comm_nccl_compiled(void) { return td_comm_nccl_built(); }

int td_comm_device(const td_comm *c) {
    return c && !strcmp(td_comm_backend(c), "nccl") ? td_comm_nccl_device(c) : -1;
}

static bool env_set(const char *name) {
    const char *v = getenv(name);
    return v && v[0];
}

bool td_comm_launched(void) {
    return env_set("OMPI_COMM_WORLD_SIZE") || env_set("PMIX_RANK") || env_set("PMI_RANK") ||
           env_set("PMI_SIZE");
}

/* The tail every open shares: allgather's scratch, offsets then counts
 * (size entries each). Closes c on failure. */
static td_comm *open_finish(td_comm *c, td_err *err) {
    c->offsets = calloc(2 * (size_t)c->size, sizeof *c->offsets);
    if (!c->offsets) {
        td_err_set(err, TD_E_NOMEM, "comm: out of memory");
        td_comm_close(c);
        return NULL;
    }
    c->counts = c->offsets + c->size;
    return c;
}

td_comm *td_comm_open(const char *backend, td_err *err) {
    bool mpi;
    if (!backend || !strcmp(backend, "auto")) {
        mpi = td_comm_launched();
        if (mpi && !td_comm_mpi_built()) {
            /* every rank would run as rank 0 of 1 and compute the whole model
             * side by side: refuse instead */
            td_err_set(err, TD_E_UNSUPPORTED,
                       "comm: started by an MPI launcher, but this tandem was built without MPI "
                       "(install libopenmpi-dev and reconfigure), or choose the \"single\" backend");
            return NULL;
        }
    } else if (!strcmp(backend, "single")) {
        mpi = false;
    } else if (!strcmp(backend, "mpi")) {
        mpi = true;
    } else if (!strcmp(backend, "nccl")) {
        td_comm_nccl_opts o = {.device = -1, .boot = TD_COMM_NCCL_BOOT_MPI};
        return td_comm_open_nccl(&o, err);
    } else {
        td_err_set(err, TD_E_ARG, "comm: unknown backend \"%.64s\" (auto, single, mpi, nccl)", backend);
        return NULL;
    }
    td_comm *c = calloc(1, sizeof *c);
    if (!c) {
        td_err_set(err, TD_E_NOMEM, "comm: out of memory");
        return NULL;
    }
    if (mpi) {
        if (td_comm_mpi_open(c, err) < 0) {
            free(c);
            return NULL;
        }
    } else {
        c->ops = &single_ops;
        c->rank = 0;
        c->size = 1;
    }
    return open_finish(c, err);
}

int td_comm_nccl_unique_id(uint8_t id[TD_COMM_NCCL_ID_BYTES], td_err *err) {
    if (!id) return td_err_set(err, TD_E_ARG, "td_comm_nccl_unique_id: id is NULL");
    return td_comm_nccl_make_id(id, err);
}

td_comm *td_comm_open_nccl(const td_comm_nccl_opts *o, td_err *err) {
    static const char fn[] = "td_comm_open_nccl";
    /* the options are checked here, identically in every build, so a
     * caller's mistake reads the same with or without NCCL */
    if (!o) {
        td_err_set(err, TD_E_ARG, "%s: options are NULL", fn);
        return NULL;
    }
    if (o->device < -1) {
        td_err_set(err, TD_E_ARG, "%s: device %d is not a device index (-1: the launcher's local rank)", fn,
                   o->device);
        return NULL;
    }
    if (o->boot == TD_COMM_NCCL_BOOT_ID) {
        if (o->size < 1 || o->rank < 0 || o->rank >= o->size) {
            td_err_set(err, TD_E_ARG, "%s: rank %d of size %d is not a rank of the group", fn, o->rank, o->size);
            return NULL;
        }
        if (!o->id) {
            td_err_set(err, TD_E_ARG, "%s: bootstrap by id, but the id is NULL", fn);
            return NULL;
        }
    } else if (o->boot != TD_COMM_NCCL_BOOT_MPI) {
        td_err_set(err, TD_E_ARG, "%s: unknown bootstrap %d (TD_COMM_NCCL_BOOT_MPI or _ID)", fn, (int)o->boot);
        return NULL;
    }
    td_comm *c = calloc(1, sizeof *c);
    if (!c) {
        td_err_set(err, TD_E_NOMEM, "comm: out of memory");
        return NULL;
    }
    if (td_comm_nccl_open(c, o, err) < 0) {
        free(c);
        return NULL;
    }
    return open_finish(c, err);
}

void td_comm_close(td_comm *c) {
    if (!c) return;
    if (c->ops) c->ops->close(c);
    free(c->offsets);
    free(c);
}

int td_comm_rank(const td_comm *c) { return c ? c->rank : 0; }
int td_comm_size(const td_comm *c) { return c ? c->size : 1; }
const char *td_comm_backend(const td_comm *c) { return c ? c->ops->name : "single"; }

/* A float count is usable when its bytes fit a size_t and a pointer offset. */
#define MAX_FLOATS ((int64_t)(PTRDIFF_MAX / (ptrdiff_t)sizeof(float)))

static int check_floats(const char *fn, const void *buf, const char *what, int64_t n, td_err *err) {
    if (n < 0 || n > MAX_FLOATS)
        return td_err_set(err, TD_E_ARG, "%s: %s count %lld out of range", fn, what, (long long)n);
    if (n > 0 && !buf) return td_err_set(err, TD_E_ARG, "%s: %s is NULL (count %lld)", fn, what, (long long)n);
    return TD_OK;
}

int td_comm_bcast_ctrl(td_comm *c, void *buf, size_t bytes, td_err *err) {
    if (!c) return td_err_set(err, TD_E_ARG, "td_comm_bcast_ctrl: communicator is NULL");
    if (bytes > 0 && !buf) return td_err_set(err, TD_E_ARG, "td_comm_bcast_ctrl: buffer is NULL (%zu bytes)", bytes);
    if (bytes == 0) return TD_OK;
    if (c->ops->bcast_ctrl) return c->ops->bcast_ctrl(c, buf, bytes, err);
    return c->ops->bcast(c, buf, bytes, 0, err);
}

int td_comm_allreduce_sum_f32(td_comm *c, float *buf, int64_t n, td_err *err) {
    static const char fn[] = "td_comm_allreduce_sum_f32";
    if (!c) return td_err_set(err, TD_E_ARG, "%s: communicator is NULL", fn);
    int rc = check_floats(fn, buf, "buffer", n, err);
    if (rc < 0 || n == 0) return rc;
    return c->ops->allreduce_sum_f32(c, buf, n, err);
}

int td_comm_bcast_f32(td_comm *c, float *buf, int64_t n, int root, td_err *err) {
    static const char fn[] = "td_comm_bcast_f32";
    if (!c) return td_err_set(err, TD_E_ARG, "%s: communicator is NULL", fn);
    if (root < 0 || root >= c->size)
        return td_err_set(err, TD_E_ARG, "%s: root %d is not a rank of this group (size %d)", fn, root, c->size);
    int rc = check_floats(fn, buf, "buffer", n, err);
    if (rc < 0 || n == 0) return rc;
    return c->ops->bcast(c, buf, (size_t)n * sizeof(float), root, err);
}

/* Checks counts (size entries, none negative, counts[rank] == n, a sum that
 * fits), fills c->offsets, and checks the buffers: send must lie outside
 * recv unless it is this rank's own slot of recv. */
static int gather_common(td_comm *c, const char *fn, const float *send, int64_t n, float *recv,
                         const int64_t *counts, td_err *err) {
    int64_t total = 0;
    for (int r = 0; r < c->size; r++) {
        if (counts[r] < 0 || counts[r] > MAX_FLOATS - total)
            return td_err_set(err, TD_E_ARG, "%s: count of rank %d (%lld) is negative or overflows the total",
                              fn, r, (long long)counts[r]);
        c->offsets[r] = total;
        total += counts[r];
    }
    int rc = check_floats(fn, send, "send buffer", n, err);
    if (rc < 0) return rc;
    if (counts[c->rank] != n)
        return td_err_set(err, TD_E_ARG, "%s: rank %d sends %lld floats but counts[%d] says %lld", fn,
                          c->rank, (long long)n, c->rank, (long long)counts[c->rank]);
    rc = check_floats(fn, recv, "receive buffer", total, err);
    if (rc < 0 || total == 0) return rc;
    if (n > 0 && send != recv + c->offsets[c->rank]) {
        /* compared as integers: the buffers may be unrelated objects */
        uintptr_t s0 = (uintptr_t)send, s1 = s0 + (uintptr_t)n * sizeof(float);
        uintptr_t r0 = (uintptr_t)recv, r1 = r0 + (uintptr_t)total * sizeof(float);
        if (s0 < r1 && r0 < s1)
            return td_err_set(err, TD_E_ARG,
                              "%s: send buffer overlaps the receive buffer other than at this rank's slot", fn);
    }
    return c->ops->allgatherv_f32(c, send, recv, counts, c->offsets, err);
}

int td_comm_allgatherv_f32(td_comm *c, const float *send, int64_t n, float *recv, const int64_t *counts,
                           td_err *err) {
    static const char fn[] = "td_comm_allgatherv_f32";
    if (!c) return td_err_set(err, TD_E_ARG, "%s: communicator is NULL", fn);
    if (!counts) return td_err_set(err, TD_E_ARG, "%s: counts is NULL", fn);
    return gather_common(c, fn, send, n, recv, counts, err);
}

int td_comm_allgather_f32(td_comm *c, const float *send, int64_t n, float *recv, td_err *err) {
    static const char fn[] = "td_comm_allgather_f32";
    if (!c) return td_err_set(err, TD_E_ARG, "%s: communicator is NULL", fn);
    if (n < 0 || n > MAX_FLOATS / c->size)
        return td_err_set(err, TD_E_ARG, "%s: count %lld out of range for %d ranks", fn, (long long)n, c->size);
    for (int r = 0; r < c->size; r++) c->counts[r] = n;
    return gather_common(c, fn, send, n, recv, c->counts, err);
}

int td_comm_barrier(td_comm *c, td_err *err) {
    if (!c) return td_err_set(err, TD_E_ARG, "td_comm_barrier: communicator is NULL");
    return c->ops->barrier(c, err);
}
