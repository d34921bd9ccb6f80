/* nccl_emu.cpp — nccl.h's calls over MPI, for the CPU emulator (the header
 * says what is emulated and what is not). Each returns NCCL's result codes;
 * a refused call leaves a line for ncclGetLastError. */
#include <limits.h>
/* MPI's C API only (OpenMPI and MPICH otherwise pull in C++ bindings that
 * live in a library of their own) */
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
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
    /* unique per call, as NCCL's are: two groups made in one run differ */
    static unsigned calls;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    memset(id, 0, sizeof *id);
    snprintf(id->internal, sizeof id->internal, "cuemu-nccl pid %d time %lld.%09ld call %u", (int)getpid(),
             (long long)ts.tv_sec, ts.tv_nsec, ++calls);
    return ncclSuccess;
}

/* MPI started here (a group bootstrapped from an id alone: nobody else
 * started it) and the communicators open, so the last destroy shuts it down. */
static bool g_started_mpi;
static int g_open;

static int id_color(const ncclUniqueId *id) {
    uint32_t h = 2166136261u; /* FNV-1a over the id's bytes */
    for (size_t i = 0; i < sizeof id->internal; i++) h = (h ^ (uint8_t)id->internal[i]) * 16777619u;
    return (int)(h & 0x7fffffff);
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank) {
    if (!comm) return refuse(ncclInvalidArgument, "no communicator to fill");
    if (nranks < 1 || rank < 0 || rank >= nranks) return refuse(ncclInvalidArgument, "rank outside 0..nranks-1");
    int running = 0;
    MPI_Initialized(&running);
    if (!running) {
        int provided = 0;
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS)
            return refuse(ncclSystemError, "the emulated NCCL runs over MPI, and MPI did not start");
        g_started_mpi = true;
    }
    ncclComm *c = (ncclComm *)calloc(1, sizeof *c);
    if (!c) return refuse(ncclSystemError, "out of memory");
    /* the group is the processes of MPI's world that were given this id,
     * ordered by the rank each was given (every process of the world calls
     * in: the emulation's one rule); each then checks it holds rank 0's id
     * and the rank and size it was given, and all agree on the verdict, so
     * a rank handed the wrong id fails the whole group instead of hanging */
    if (MPI_Comm_split(MPI_COMM_WORLD, id_color(&id), rank, &c->mpi) != MPI_SUCCESS) {
        free(c);
        return refuse(ncclSystemError, "MPI_Comm_split failed");
    }
    MPI_Comm_set_errhandler(c->mpi, MPI_ERRORS_RETURN);
    int gsize = 0, grank = 0;
    MPI_Comm_size(c->mpi, &gsize);
    MPI_Comm_rank(c->mpi, &grank);
    ncclUniqueId root = id;
    MPI_Bcast(root.internal, (int)sizeof root.internal, MPI_BYTE, 0, c->mpi);
    int ok = gsize == nranks && grank == rank && !memcmp(root.internal, id.internal, sizeof id.internal), all = 0;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, c->mpi);
    if (!all) {
        MPI_Comm_free(&c->mpi);
        free(c);
        return refuse(ncclInvalidUsage, "the emulated group does not add up: its processes (those of mpirun's world "
                                        "given this id) must hold rank 0's id and ranks 0..nranks-1 once each");
    }
    c->rank = rank;
    c->size = nranks;
    g_open++;
    *comm = c;
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    if (!comm) return refuse(ncclInvalidArgument, "no communicator");
    MPI_Comm_free(&comm->mpi);
    free(comm);
    if (--g_open == 0 && g_started_mpi) {
        MPI_Finalize();
        g_started_mpi = false;
    }
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
