/* comm_internal.h — what a comm backend implements: one table of function
 * pointers. comm.c checks every argument before it calls a backend, so an
 * entry may assume valid, non-overlapping buffers (in-place gathers
 * excepted, as comm.h allows), 0 <= root < size, counts that sum without
 * overflow, and n > 0 (empty calls never reach a backend, barrier aside).
 * The NCCL backend's table takes device buffers, and its own bcast_ctrl for
 * host bytes (the other backends leave it NULL: their bcast takes both). */
#ifndef TD_COMM_INTERNAL_H
#define TD_COMM_INTERNAL_H

#include "comm/comm.h"

typedef struct td_comm_ops {
    const char *name;
    int (*bcast)(td_comm *c, void *buf, size_t bytes, int root, td_err *err);
    /* Host bytes from rank 0 (td_comm_bcast_ctrl); NULL: bcast does it. */
    int (*bcast_ctrl)(td_comm *c, void *buf, size_t bytes, td_err *err);
    /* In place, in the fixed left-to-right rank order of comm.h. */
    int (*allreduce_sum_f32)(td_comm *c, float *buf, int64_t n, td_err *err);
    /* counts and offsets (in floats) of every rank; offsets[r] = sum of
     * counts[0..r). send is this rank's counts[rank] floats. */
    int (*allgatherv_f32)(td_comm *c, const float *send, float *recv,
                          const int64_t *counts, const int64_t *offsets, td_err *err);
    int (*barrier)(td_comm *c, td_err *err);
    void (*close)(td_comm *c); /* frees the backend's state, not c */
} td_comm_ops;

struct td_comm {
    const td_comm_ops *ops;
    int rank, size;
    void *impl; /* the backend's state */
    int64_t *offsets, *counts; /* size entries each: allgather's scratch */
};

/* The MPI backend (comm_mpi.c, or comm_mpi_absent.c without MPI): fills
 * c->ops, rank, size and impl. */
int td_comm_mpi_open(td_comm *c, td_err *err);
bool td_comm_mpi_built(void);

/* The NCCL backend (comm_nccl.cu, or comm_nccl_absent.c without NCCL): fills
 * c->ops, rank, size and impl from options comm.c has checked. */
int td_comm_nccl_open(td_comm *c, const td_comm_nccl_opts *o, td_err *err);
bool td_comm_nccl_built(void);
/* The device of an open NCCL communicator c. */
int td_comm_nccl_device(const td_comm *c);
int td_comm_nccl_make_id(uint8_t id[TD_COMM_NCCL_ID_BYTES], td_err *err);

/* The NCCL all-reduce's ordered sum on its own, for the device check (a
 * one-rank group cannot show the order): parts holds nparts device rows of n
 * floats; out[i] = ((parts[0][i] + parts[1][i]) + ...) on device `device`.
 * TD_E_UNSUPPORTED without NCCL. */
int td_comm_nccl_ordered_sum(int device, const float *parts, int nparts, int64_t n, float *out, td_err *err);

#endif
