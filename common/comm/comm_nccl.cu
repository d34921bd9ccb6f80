/* comm_nccl.cu — the NCCL backend of td_comm: one rank per CUDA device, every
 * data buffer a device pointer (comm.h, "The NCCL backend", says what each
 * collective does and why). Written in C-style CUDA C++: the only device code
 * is the ordered sum that gives the all-reduce comm.h's fixed rank order.
 *
 * Each collective is enqueued on the communicator's own stream and waited
 * for here; the wait also polls NCCL's asynchronous error, so a peer that
 * died turns into TD_E_IO instead of a hang, and the communicator is then
 * aborted (not destroyed, which would wait for the dead peer) at close. */
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>
#include <nccl.h>

extern "C" {
#include "comm/comm_internal.h"
}

static_assert(sizeof(ncclUniqueId) == TD_COMM_NCCL_ID_BYTES, "comm.h's id size is NCCL's");

/* Floats per rank per step of the all-reduce: scratch is CHUNK x size. */
#define CHUNK ((int64_t)1 << 20)
/* Bytes of the device buffer that stages control broadcasts (host bytes)
 * and holds the barrier's one float. */
#define SMALL_BYTES ((size_t)64 << 10)

struct nccl_impl {
    int device;
    ncclComm_t comm;     /* NULL until ncclCommInitRank succeeded */
    cudaStream_t stream; /* NULL until created */
    float *scratch;      /* (size, CHUNK) floats, allocated on the first all-reduce */
    uint8_t *small;      /* SMALL_BYTES on the device */
    td_comm *mpi;        /* BOOT_MPI: the MPI communicator that carried the id */
    bool broken;         /* a collective failed: abort, not destroy, at close */
};

extern "C" bool td_comm_nccl_built(void) { return true; }
extern "C" int td_comm_nccl_device(const td_comm *c) { return ((const nccl_impl *)c->impl)->device; }

static int cuda_fail(td_err *err, const char *what, cudaError_t e) {
    return td_err_set(err, TD_E_IO, "comm nccl: %s failed: %s (%s)", what, cudaGetErrorString(e),
                      cudaGetErrorName(e));
}

static int nccl_fail(nccl_impl *m, td_err *err, const char *what, ncclResult_t r) {
    /* NCCL's own words on it: a communicator's last error, or, before one
     * exists (ncclCommInitRank), the process's (NCCL takes NULL there) */
    const char *last = ncclGetLastError(m ? m->comm : NULL);
    if (m) m->broken = true;
    return td_err_set(err, TD_E_IO, "comm nccl: %s failed: %s%s%s", what, ncclGetErrorString(r),
                      last && last[0] ? ": " : "", last ? last : "");
}

/* ---- the ordered sum (comm.h's fixed order) ---- */

/* out[i] = ((parts[0][i] + parts[1][i]) + ...) + parts[nparts-1][i], rows
 * `stride` floats apart. __fadd_rn: a plain IEEE f32 add that nvcc may not
 * contract or reassociate (the file is also built with -fmad=false). */
static __global__ void ordered_sum_kernel(const float *__restrict__ parts, int nparts, int64_t stride, int64_t n,
                                   float *__restrict__ out) {
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        float acc = parts[i];
        for (int r = 1; r < nparts; r++) acc = __fadd_rn(acc, parts[(int64_t)r * stride + i]);
        out[i] = acc;
    }
}

static void launch_ordered_sum(const float *parts, int nparts, int64_t stride, int64_t n, float *out,
                               cudaStream_t s) {
    int64_t blocks = (n + 255) / 256;
    if (blocks > 4096) blocks = 4096; /* the grid-stride loop covers the rest */
    /* cudaLaunchKernelEx rather than <<<>>>, which the CPU emulator
     * (tests/cuemu/) has no C++ form of */
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)blocks);
    cfg.blockDim = dim3(256);
    cfg.stream = s;
    (void)cudaLaunchKernelEx(&cfg, ordered_sum_kernel, parts, nparts, stride, n, out); /* cudaGetLastError tells */
}

extern "C" int td_comm_nccl_ordered_sum(int device, const float *parts, int nparts, int64_t n, float *out,
                                        td_err *err) {
    if (!parts || !out || nparts < 1 || n < 0)
        return td_err_set(err, TD_E_ARG, "td_comm_nccl_ordered_sum: bad arguments");
    if (n == 0) return TD_OK;
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess) return cuda_fail(err, "cudaSetDevice", e);
    launch_ordered_sum(parts, nparts, n, n, out, 0);
    e = cudaGetLastError();
    if (e != cudaSuccess) return cuda_fail(err, "the ordered-sum kernel launch", e);
    e = cudaStreamSynchronize(0);
    if (e != cudaSuccess) return cuda_fail(err, "the ordered-sum kernel", e);
    return TD_OK;
}

/* ---- waiting ---- */

/* Waits for the stream; gives up when NCCL reports an asynchronous error
 * (a peer gone, a network error), which a plain synchronize never would. */
static int wait_stream(nccl_impl *m, const char *what, td_err *err) {
    for (;;) {
        cudaError_t e = cudaStreamQuery(m->stream);
        if (e == cudaSuccess) return TD_OK;
        if (e != cudaErrorNotReady) {
            m->broken = true;
            return cuda_fail(err, what, e);
        }
        ncclResult_t ar = ncclSuccess;
        ncclResult_t r = ncclCommGetAsyncError(m->comm, &ar);
        if (r != ncclSuccess) return nccl_fail(m, err, "ncclCommGetAsyncError", r);
        if (ar != ncclSuccess && ar != ncclInProgress) return nccl_fail(m, err, what, ar);
        sched_yield();
    }
}

static int use_device(nccl_impl *m, td_err *err) {
    cudaError_t e = cudaSetDevice(m->device); /* the current device is per thread */
    return e == cudaSuccess ? TD_OK : cuda_fail(err, "cudaSetDevice", e);
}

/* ---- the collectives ---- */

static int nccl_bcast(td_comm *c, void *buf, size_t bytes, int root, td_err *err) {
    nccl_impl *m = (nccl_impl *)c->impl;
    int rc = use_device(m, err);
    if (rc < 0) return rc;
    ncclResult_t r = ncclBroadcast(buf, buf, bytes, ncclUint8, root, m->comm, m->stream);
    if (r != ncclSuccess) return nccl_fail(m, err, "ncclBroadcast", r);
    return wait_stream(m, "broadcast", err);
}

/* Host bytes: staged through m->small, SMALL_BYTES at a time. */
static int nccl_bcast_ctrl(td_comm *c, void *buf, size_t bytes, td_err *err) {
    nccl_impl *m = (nccl_impl *)c->impl;
    int rc = use_device(m, err);
    if (rc < 0) return rc;
    for (size_t off = 0; off < bytes; off += SMALL_BYTES) {
        size_t k = bytes - off < SMALL_BYTES ? bytes - off : SMALL_BYTES;
        uint8_t *h = (uint8_t *)buf + off;
        cudaError_t e;
        if (c->rank == 0) {
            e = cudaMemcpyAsync(m->small, h, k, cudaMemcpyHostToDevice, m->stream);
            if (e != cudaSuccess) return cuda_fail(err, "cudaMemcpyAsync (control, to the device)", e);
        }
        ncclResult_t r = ncclBroadcast(m->small, m->small, k, ncclUint8, 0, m->comm, m->stream);
        if (r != ncclSuccess) return nccl_fail(m, err, "ncclBroadcast (control)", r);
        if (c->rank != 0) {
            e = cudaMemcpyAsync(h, m->small, k, cudaMemcpyDeviceToHost, m->stream);
            if (e != cudaSuccess) return cuda_fail(err, "cudaMemcpyAsync (control, to the host)", e);
        }
        rc = wait_stream(m, "control broadcast", err);
        if (rc < 0) return rc;
    }
    return TD_OK;
}

/* All-gather every rank's chunk into scratch (rank r's at r*k), then the
 * ordered sum back into buf. Stream order makes reusing scratch per chunk
 * safe; one wait at the end. Runs even for size 1 (a copy through scratch,
 * the same bits) so a one-rank group exercises the whole path. */
static int nccl_allreduce(td_comm *c, float *buf, int64_t n, td_err *err) {
    nccl_impl *m = (nccl_impl *)c->impl;
    int rc = use_device(m, err);
    if (rc < 0) return rc;
    if (!m->scratch) {
        cudaError_t e = cudaMalloc((void **)&m->scratch, (size_t)CHUNK * (size_t)c->size * sizeof(float));
        if (e != cudaSuccess) {
            m->scratch = NULL;
            return e == cudaErrorMemoryAllocation
                       ? td_err_set(err, TD_E_NOMEM, "comm nccl: out of device memory for all-reduce scratch")
                       : cuda_fail(err, "cudaMalloc", e);
        }
    }
    for (int64_t off = 0; off < n; off += CHUNK) {
        int64_t k = n - off < CHUNK ? n - off : CHUNK;
        ncclResult_t r = ncclAllGather(buf + off, m->scratch, (size_t)k, ncclFloat, m->comm, m->stream);
        if (r != ncclSuccess) return nccl_fail(m, err, "ncclAllGather (all-reduce)", r);
        launch_ordered_sum(m->scratch, c->size, k, k, buf + off, m->stream);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) {
            m->broken = true;
            return cuda_fail(err, "the ordered-sum kernel launch", e);
        }
    }
    return wait_stream(m, "all-reduce", err);
}

/* No ncclAllGatherv: one broadcast per rank that sends anything, rooted at
 * it, into its slot of recv, all in one group (NCCL runs them together). */
static int nccl_allgatherv(td_comm *c, const float *send, float *recv, const int64_t *counts,
                           const int64_t *offsets, td_err *err) {
    nccl_impl *m = (nccl_impl *)c->impl;
    int rc = use_device(m, err);
    if (rc < 0) return rc;
    ncclResult_t r = ncclGroupStart();
    if (r != ncclSuccess) return nccl_fail(m, err, "ncclGroupStart", r);
    for (int q = 0; q < c->size && r == ncclSuccess; q++) {
        if (counts[q] == 0) continue;
        const float *sb = q == c->rank ? send : recv + offsets[q]; /* read on the root only */
        r = ncclBroadcast(sb, recv + offsets[q], (size_t)counts[q], ncclFloat, q, m->comm, m->stream);
    }
    ncclResult_t r2 = ncclGroupEnd(); /* always closes the group it opened */
    if (r != ncclSuccess) return nccl_fail(m, err, "ncclBroadcast (all-gather)", r);
    if (r2 != ncclSuccess) return nccl_fail(m, err, "ncclGroupEnd (all-gather)", r2);
    return wait_stream(m, "all-gather", err);
}

static int nccl_barrier(td_comm *c, td_err *err) {
    nccl_impl *m = (nccl_impl *)c->impl;
    int rc = use_device(m, err);
    if (rc < 0) return rc;
    /* the value is never read: only that every rank took part */
    ncclResult_t r = ncclAllReduce(m->small, m->small, 1, ncclFloat, ncclSum, m->comm, m->stream);
    if (r != ncclSuccess) return nccl_fail(m, err, "ncclAllReduce (barrier)", r);
    return wait_stream(m, "barrier", err);
}

static void nccl_close(td_comm *c) {
    nccl_impl *m = (nccl_impl *)c->impl;
    if (!m) return;
    cudaSetDevice(m->device);
    if (m->comm) {
        if (m->broken) ncclCommAbort(m->comm); /* destroy would wait for a dead peer */
        else ncclCommDestroy(m->comm);
    }
    if (m->scratch) cudaFree(m->scratch);
    if (m->small) cudaFree(m->small);
    if (m->stream) cudaStreamDestroy(m->stream);
    td_comm_close(m->mpi); /* shuts MPI down if that open started it */
    free(m);
    c->impl = NULL;
}

static const td_comm_ops nccl_ops = {
    "nccl", nccl_bcast, nccl_bcast_ctrl, nccl_allreduce, nccl_allgatherv, nccl_barrier, nccl_close,
};

/* ---- opening ---- */

extern "C" int td_comm_nccl_make_id(uint8_t id[TD_COMM_NCCL_ID_BYTES], td_err *err) {
    ncclUniqueId u;
    ncclResult_t r = ncclGetUniqueId(&u);
    if (r != ncclSuccess) return nccl_fail(NULL, err, "ncclGetUniqueId", r);
    memcpy(id, &u, sizeof u);
    return TD_OK;
}

/* The launcher's rank on this node (OpenMPI, MPICH's hydra, Slurm), or -1. */
static int local_rank(void) {
    static const char *const names[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *v = getenv(names[i]);
        if (!v || !v[0]) continue;
        char *end;
        errno = 0;
        long x = strtol(v, &end, 10);
        if (!errno && !*end && x >= 0 && x <= INT_MAX) return (int)x;
    }
    return -1;
}

/* BOOT_MPI: rank 0 makes the id and broadcasts [ok byte, id] over MPI, so a
 * rank 0 that could not make one fails every rank instead of leaving them
 * waiting. */
static int boot_mpi(nccl_impl *m, td_comm *c, uint8_t id[TD_COMM_NCCL_ID_BYTES], td_err *err) {
    m->mpi = td_comm_open("mpi", err);
    if (!m->mpi) return err ? err->code : TD_E_IO;
    c->rank = td_comm_rank(m->mpi);
    c->size = td_comm_size(m->mpi);
    uint8_t msg[1 + TD_COMM_NCCL_ID_BYTES] = {0};
    td_err idErr = {{0}, 0};
    if (c->rank == 0) msg[0] = td_comm_nccl_make_id(msg + 1, &idErr) == TD_OK;
    int rc = td_comm_bcast_ctrl(m->mpi, msg, sizeof msg, err);
    if (rc < 0) return rc;
    if (!msg[0])
        return c->rank == 0 ? td_err_set(err, idErr.code, "%s", idErr.msg)
                            : td_err_set(err, TD_E_IO, "comm nccl: rank 0 could not make the group's NCCL id");
    memcpy(id, msg + 1, TD_COMM_NCCL_ID_BYTES);
    return TD_OK;
}

extern "C" int td_comm_nccl_open(td_comm *c, const td_comm_nccl_opts *o, td_err *err) {
    nccl_impl *m = (nccl_impl *)calloc(1, sizeof *m);
    if (!m) return td_err_set(err, TD_E_NOMEM, "comm: out of memory");
    c->impl = m;
    c->ops = &nccl_ops; /* from here nccl_close undoes everything */
    uint8_t id[TD_COMM_NCCL_ID_BYTES];
    int rc;
    if (o->boot == TD_COMM_NCCL_BOOT_MPI) {
        rc = boot_mpi(m, c, id, err);
        if (rc < 0) goto fail;
    } else {
        c->rank = o->rank;
        c->size = o->size;
        memcpy(id, o->id, sizeof id);
    }
    {
        int ndev = 0;
        cudaError_t e = cudaGetDeviceCount(&ndev);
        if (e != cudaSuccess || ndev < 1) {
            rc = e != cudaSuccess ? cuda_fail(err, "cudaGetDeviceCount (no CUDA device?)", e)
                                  : td_err_set(err, TD_E_IO, "comm nccl: no CUDA device");
            goto fail;
        }
        int lr = local_rank();
        m->device = o->device >= 0 ? o->device : (lr >= 0 ? lr % ndev : 0);
        if (m->device >= ndev) {
            rc = td_err_set(err, TD_E_ARG, "comm nccl: device %d, but this host has %d", m->device, ndev);
            goto fail;
        }
        e = cudaSetDevice(m->device);
        if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&m->stream, cudaStreamNonBlocking);
        if (e != cudaSuccess) {
            m->stream = NULL;
            rc = cuda_fail(err, "CUDA device setup", e);
            goto fail;
        }
        e = cudaMalloc((void **)&m->small, SMALL_BYTES);
        if (e == cudaSuccess) e = cudaMemset(m->small, 0, SMALL_BYTES);
        if (e != cudaSuccess) {
            rc = cuda_fail(err, "cudaMalloc (control buffer)", e);
            goto fail;
        }
        ncclUniqueId u;
        memcpy(&u, id, sizeof u);
        ncclComm_t comm = NULL;
        ncclResult_t r = ncclCommInitRank(&comm, c->size, u, c->rank);
        if (r != ncclSuccess) {
            rc = nccl_fail(m, err, "ncclCommInitRank", r);
            m->broken = false; /* nothing to abort: comm was not made */
            goto fail;
        }
        m->comm = comm;
    }
    return TD_OK;
fail:
    nccl_close(c);
    c->ops = NULL;
    return rc;
}
