/* comm.h — a communicator for a group of processes (ranks) that run one
 * model split between them: who am I (rank, size), a host-side control
 * broadcast (rank 0 tells the others which step to run) and the data
 * collectives a tensor-parallel pass needs on f32 buffers: all-reduce (sum),
 * broadcast, all-gather (equal or unequal counts) and barrier.
 *
 * Backends, chosen at run time by td_comm_open:
 *   "single" — size 1: every collective is a copy or a no-op;
 *   "mpi"    — MPI_COMM_WORLD of the job mpirun started (OpenMPI);
 *   "auto"   — (or NULL) "mpi" when the environment says an MPI launcher
 *              started this process (td_comm_launched), else "single";
 *   "nccl"   — NCCL on CUDA devices, its buffers DEVICE pointers (see "The
 *              NCCL backend" below; td_comm_open_nccl for every option).
 * MPI is compiled in when CMake finds it; a build without it says "built
 * without MPI" for "mpi", and refuses "auto" under a launcher rather than
 * letting every rank believe it is rank 0 of 1.
 *
 * Each backend is a small table of function pointers (comm_internal.h);
 * this front end checks every argument once, so a backend sees only valid
 * calls.
 *
 * Fixed reduction order. td_comm_allreduce_sum_f32 computes, on every rank,
 *     out[i] = ((b0[i] + b1[i]) + b2[i]) + ... + b{N-1}[i]
 * (b_r: rank r's buffer), left to right in rank order, in f32. Float addition
 * does not regroup, so this is what makes a result identical on every rank
 * and every run, and lets a split model reproduce an unsplit one's bits when
 * it sums its per-chunk partials in the same order. MPI_Allreduce leaves the
 * order to the library (and to the number of ranks), so it is not used: the
 * MPI backend chains the sum through the ranks in order and broadcasts the
 * total.
 *
 * Calls are collective: every rank of the group makes the same calls in the
 * same order with the same counts (and the same root). Which arguments can
 * be checked locally are (NULL buffers, negative counts, a counts array that
 * does not sum, or whose own entry differs from this rank's count): those
 * return TD_E_ARG on the rank that made the mistake, before any message is
 * sent — its peers then wait in the call, as with any collective one rank
 * skips. A failed collective (TD_E_IO) leaves the group unusable: close it.
 *
 * Threads: a td_comm belongs to one thread at a time, not necessarily the
 * same one (the MPI backend asks for MPI_THREAD_SERIALIZED). One MPI
 * communicator per process: MPI cannot be started again after it was shut
 * down, so after td_comm_close of an MPI
 * communicator that started MPI, opening "mpi" again fails (TD_E_UNSUPPORTED).
 *
 * The NCCL backend (comm_nccl.cu; compiled with -DTANDEM_CUDA=ON where CMake
 * finds nccl.h and libnccl, else comm_nccl_absent.c says "built without
 * NCCL"). One rank per CUDA device (NCCL refuses two ranks on one device).
 * Every f32 buffer of the data collectives is a DEVICE pointer on the
 * communicator's device; td_comm_bcast_ctrl stays on HOST bytes (they are
 * staged through a small device buffer and broadcast by NCCL, so control and
 * data share one transport and one order). A collective runs on the
 * communicator's own stream and returns when it has finished (the stream is
 * synchronized): the caller must have finished writing its buffers (e.g.
 * synchronized its own stream) before the call.
 *   all-reduce: NCCL's reductions have no fixed summation order, so every
 *     rank's buffer is all-gathered (ncclAllGather) into device scratch and
 *     a kernel sums rank 0 .. N-1 left to right per element, in f32 without
 *     contraction: bitwise the order above, the MPI backend's bits. Done in
 *     chunks of 2^20 floats per rank, so scratch is 4 MiB x size.
 *   all-gather(v): NCCL has no all-gatherv; one ncclBroadcast per rank (root
 *     r sends its counts[r] floats into its slot), all in one NCCL group, so
 *     no padding and no compaction copy; counts are size_t (no 2^31 limit).
 *   barrier: a one-float all-reduce on the stream, then synchronize.
 * Bootstrap (how the ranks learn the group's 128-byte ncclUniqueId):
 *   TD_COMM_NCCL_BOOT_MPI — under an MPI launcher: rank and size are MPI's,
 *     rank 0 calls ncclGetUniqueId and the MPI backend broadcasts it. The
 *     MPI communicator stays open until td_comm_close (which shuts MPI down
 *     if it started it); it carries nothing else.
 *   TD_COMM_NCCL_BOOT_ID — no launcher (Kubernetes): the caller gives rank,
 *     size and the id bytes. Rank 0 makes them with td_comm_nccl_unique_id and
 *     publishes them; the etcd rendezvous that does so lives in common/net
 *     (td_etcd_rdv_publish / td_etcd_rdv_wait in net/etcd.h) because this
 *     library does not link gRPC.
 * Opening waits in ncclCommInitRank until every rank has joined, with no
 * timeout of its own (NCCL's blocking init): a rank that never comes leaves
 * the others waiting, as with any collective one rank skips.
 */
#ifndef TD_COMM_H
#define TD_COMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/util.h"

typedef struct td_comm td_comm;

/* True when this build has the MPI backend. */
bool td_comm_mpi_compiled(void);

/* True when the environment says an MPI launcher started this process:
 * OMPI_COMM_WORLD_SIZE (OpenMPI's mpirun), PMIX_RANK (any PMIx launcher),
 * PMI_RANK / PMI_SIZE (MPICH's hydra, Slurm's PMI). */
bool td_comm_launched(void);

/* True when this build has the NCCL backend. */
bool td_comm_nccl_compiled(void);

/* Opens a communicator. backend: "auto" or NULL, "single", "mpi", "nccl"
 * (see the top of this file; "nccl" = td_comm_open_nccl with MPI bootstrap on
 * device OMPI_COMM_WORLD_LOCAL_RANK modulo the device count, 0 without it).
 * NULL on failure: TD_E_ARG for an unknown backend name, TD_E_UNSUPPORTED for
 * "mpi" ("nccl") in a build without MPI (NCCL) (or after MPI was shut down),
 * TD_E_IO when MPI, CUDA or NCCL does not start, TD_E_NOMEM. */
td_comm *td_comm_open(const char *backend, td_err *err);

/* ---- the NCCL backend's options ---- */
#define TD_COMM_NCCL_ID_BYTES 128 /* sizeof(ncclUniqueId) */

typedef enum td_comm_nccl_boot {
    TD_COMM_NCCL_BOOT_MPI = 0, /* rank, size from MPI; the id broadcast over MPI */
    TD_COMM_NCCL_BOOT_ID = 1,  /* rank, size and id from the caller */
} td_comm_nccl_boot;

typedef struct td_comm_nccl_opts {
    int device; /* CUDA device index of this rank; -1: the launcher's local rank modulo the device count */
    td_comm_nccl_boot boot;
    /* BOOT_ID only: */
    int rank, size;    /* 0 <= rank < size; e.g. a StatefulSet ordinal and replicas */
    const uint8_t *id; /* TD_COMM_NCCL_ID_BYTES bytes, the same on every rank; copied */
} td_comm_nccl_opts;

/* Rank 0's new group id (ncclGetUniqueId: it names rank 0's bootstrap
 * socket, so make it on the host that will be rank 0, once per group start).
 * TD_E_UNSUPPORTED without NCCL, TD_E_IO when NCCL fails. */
int td_comm_nccl_unique_id(uint8_t id[TD_COMM_NCCL_ID_BYTES], td_err *err);

/* Opens an NCCL communicator (collective: every rank of the group calls it;
 * NCCL's initialisation waits for all of them). NULL on failure: TD_E_ARG for
 * bad options, TD_E_UNSUPPORTED in a build without NCCL (or without MPI for
 * BOOT_MPI), TD_E_IO when CUDA, MPI or NCCL fails, TD_E_NOMEM. */
td_comm *td_comm_open_nccl(const td_comm_nccl_opts *o, td_err *err);

/* Leaves the group (shuts MPI down if td_comm_open started it). Collective
 * for MPI: every rank closes. Accepts NULL. */
void td_comm_close(td_comm *c);

int td_comm_rank(const td_comm *c);         /* 0 .. size-1; 0 for NULL */
int td_comm_size(const td_comm *c);         /* >= 1; 1 for NULL */
const char *td_comm_backend(const td_comm *c); /* "single", "mpi", "nccl" */
/* The CUDA device whose memory the data collectives take (NCCL's), or -1
 * where they take host memory (single, MPI; and NULL). */
int td_comm_device(const td_comm *c);

/* Control broadcast: `bytes` bytes of buf from rank 0 to every rank (a step
 * descriptor). Every rank passes the same `bytes`; on rank 0 buf is read,
 * elsewhere written. bytes == 0 is a no-op (buf may then be NULL). */
int td_comm_bcast_ctrl(td_comm *c, void *buf, size_t bytes, td_err *err);

/* Sum of every rank's buf[0..n), in place, in the fixed order above; every
 * rank ends with the same bits. */
int td_comm_allreduce_sum_f32(td_comm *c, float *buf, int64_t n, td_err *err);

/* buf[0..n) of rank `root` to every rank. */
int td_comm_bcast_f32(td_comm *c, float *buf, int64_t n, int root, td_err *err);

/* Every rank sends send[0..n); recv[0 .. n*size) receives them in rank order
 * (rank r's at r*n). send may equal recv + rank*n (in place); otherwise the
 * two must not overlap. */
int td_comm_allgather_f32(td_comm *c, const float *send, int64_t n, float *recv, td_err *err);

/* Unequal counts: rank r sends counts[r] floats (n on this rank, which must
 * equal counts[rank]); recv receives them back to back in rank order, rank
 * r's at counts[0] + ... + counts[r-1]. counts has size() entries, the same on
 * every rank; a count may be 0. In place as above (send == recv + offset).
 * The MPI backend refuses a total over 2^31 - 1 floats (TD_E_RANGE: MPI's
 * counts are ints). */
int td_comm_allgatherv_f32(td_comm *c, const float *send, int64_t n, float *recv,
                           const int64_t *counts, td_err *err);

/* Returns when every rank has called it. */
int td_comm_barrier(td_comm *c, td_err *err);

#endif
