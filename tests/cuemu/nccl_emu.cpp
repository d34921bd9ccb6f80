/* nccl_emu.cpp — nccl.h's calls over MPI, for the CPU emulator (the header
 * says what is emulated and what is not). Each returns NCCL's result codes;
 * a refused call leaves a line for ncclGetLastError. */
#include <limits.h>
/* MPI's C API only (OpenMPI and MPICH otherwise pull in C++ bindings that
 * live in a library of their own) */
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nccl.h"

struct ncclComm {
    MPI_Comm mpi;
    int rank, size;
};

/* The last refusal's reason (ncclGetLastError), one per process as NCCL
 * keeps it; tests run one thread of collectives per rank. */
static char g_last[256];

static ncclResult_t refuse(ncclResult_t r, const char *why) {
    snprintf(g_last, sizeof g_last, "%s", why);
    return r;
}

const char *ncclGetErrorString(ncclResult_t r) {
    switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    }
    return "unknown result code";
}

const char *ncclGetLastError(ncclComm_t comm) {
    (void)comm;
    return g_last;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    if (!id) return refuse(ncclInvalidArgument, "no id");
    memset(id, 0, sizeof *id);
    snprintf(id->internal, sizeof id->internal, "cuemu-nccl pid %d", (int)getpid());
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank) {
    (void)id; /* the world is the group */
    int running = 0, wsize = 0, wrank = 0;
    MPI_Initialized(&running);
    if (!comm) return refuse(ncclInvalidArgument, "no communicator to fill");
    if (!running) return refuse(ncclInvalidUsage, "the emulated NCCL runs over MPI: start the ranks under mpirun");
    MPI_Comm_size(MPI_COMM_WORLD, &wsize);
    MPI_Comm_rank(MPI_COMM_WORLD, &wrank);
    if (nranks != wsize || rank != wrank)
        return refuse(ncclInvalidArgument, "the emulated NCCL's group is MPI's world: rank and size must be its");
    ncclComm *c = (ncclComm *)calloc(1, sizeof *c);
    if (!c) return refuse(ncclSystemError, "out of memory");
    if (MPI_Comm_dup(MPI_COMM_WORLD, &c->mpi) != MPI_SUCCESS) {
        free(c);
        return refuse(ncclSystemError, "MPI_Comm_dup failed");
    }
    MPI_Comm_set_errhandler(c->mpi, MPI_ERRORS_RETURN);
    c->rank = rank;
    c->size = nranks;
    *comm = c;
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    if (!comm) return refuse(ncclInvalidArgument, "no communicator");
    MPI_Comm_free(&comm->mpi);
    free(comm);
    return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) { return ncclCommDestroy(comm); }

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *async) {
    if (!comm || !async) return refuse(ncclInvalidArgument, "no communicator or result");
    *async = ncclSuccess; /* every collective has finished when its call returns */
    return ncclSuccess;
}

ncclResult_t ncclGroupStart(void) { return ncclSuccess; }
ncclResult_t ncclGroupEnd(void) { return ncclSuccess; }

static bool mpi_type(ncclDataType_t t, MPI_Datatype *out, size_t *bytes) {
    switch (t) {
    case ncclInt8: *out = MPI_INT8_T, *bytes = 1; return true;
    case ncclUint8: *out = MPI_UINT8_T, *bytes = 1; return true;
    case ncclInt32: *out = MPI_INT32_T, *bytes = 4; return true;
    case ncclUint32: *out = MPI_UINT32_T, *bytes = 4; return true;
    case ncclFloat32: *out = MPI_FLOAT, *bytes = 4; return true;
    }
    return false;
}

/* The checks every data collective makes; MPI counts are ints. */
static ncclResult_t args_ok(ncclComm_t comm, size_t count, ncclDataType_t type, MPI_Datatype *mt, size_t *bytes) {
    if (!comm) return refuse(ncclInvalidArgument, "no communicator");
    if (!mpi_type(type, mt, bytes)) return refuse(ncclInvalidArgument, "a data type the emulation does not have");
    if (count > (size_t)INT_MAX) return refuse(ncclInvalidArgument, "more than INT_MAX elements (MPI's counts)");
    return ncclSuccess;
}

ncclResult_t ncclAllGather(const void *send, void *recv, size_t count, ncclDataType_t type, ncclComm_t comm,
                           cudaStream_t st) {
    (void)st;
    MPI_Datatype mt;
    size_t bytes;
    ncclResult_t r = args_ok(comm, count, type, &mt, &bytes);
    if (r != ncclSuccess) return r;
    const bool in_place = send == (const char *)recv + (size_t)comm->rank * count * bytes;
    int e = MPI_Allgather(in_place ? MPI_IN_PLACE : send, (int)count, mt, recv, (int)count, mt, comm->mpi);
    return e == MPI_SUCCESS ? ncclSuccess : refuse(ncclSystemError, "MPI_Allgather failed");
}

ncclResult_t ncclBroadcast(const void *send, void *recv, size_t count, ncclDataType_t type, int root,
                           ncclComm_t comm, cudaStream_t st) {
    (void)st;
    MPI_Datatype mt;
    size_t bytes;
    ncclResult_t r = args_ok(comm, count, type, &mt, &bytes);
    if (r != ncclSuccess) return r;
    if (root < 0 || root >= comm->size) return refuse(ncclInvalidArgument, "root out of range");
    if (comm->rank == root && send != recv && count) memmove(recv, send, count * bytes);
    int e = MPI_Bcast(recv, (int)count, mt, root, comm->mpi);
    return e == MPI_SUCCESS ? ncclSuccess : refuse(ncclSystemError, "MPI_Bcast failed");
}

ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t st) {
    (void)st;
    MPI_Datatype mt;
    size_t bytes;
    ncclResult_t r = args_ok(comm, count, type, &mt, &bytes);
    if (r != ncclSuccess) return r;
    if (op != ncclSum) return refuse(ncclInvalidArgument, "only ncclSum is emulated");
    int e = MPI_Allreduce(send == recv ? MPI_IN_PLACE : send, recv, (int)count, mt, MPI_SUM, comm->mpi);
    return e == MPI_SUCCESS ? ncclSuccess : refuse(ncclSystemError, "MPI_Allreduce failed");
}
