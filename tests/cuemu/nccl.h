/* nccl.h (CPU emulator) — the part of NCCL's API that common/comm/comm_nccl.cu
 * calls, implemented over MPI in nccl_emu.cpp, so that the NCCL backend of
 * td_comm runs on the CPU emulator with several ranks under mpirun (a GPU
 * takes one rank, and a lent machine has one GPU). The emulator's device
 * memory is host memory, so a collective is MPI's on the same pointers, run
 * when it is called (the emulator's streams run their work at once too);
 * groups (ncclGroupStart/End) change nothing, since every rank makes the
 * same calls in the same order. A communicator is the processes of
 * MPI_COMM_WORLD given the same id, in the order of the ranks they were
 * given, so both bootstraps run: the id broadcast over MPI, and an id that
 * came some other way (etcd's rendezvous) — the ranks must still be started
 * by mpirun, and every process of its world calls ncclCommInitRank (MPI is
 * started there if nobody did, and shut down with the last communicator).
 * A rank whose id, rank or size does not match rank 0's group fails the
 * whole group (ncclInvalidUsage), where NCCL would wait. Names, types and
 * enum values are NCCL's; only what comm_nccl.cu uses is here. */
#ifndef TD_CUEMU_NCCL_H
#define TD_CUEMU_NCCL_H

#include <stddef.h>

#include "cuda_runtime.h"

#define NCCL_UNIQUE_ID_BYTES 128
typedef struct {
    char internal[NCCL_UNIQUE_ID_BYTES];
} ncclUniqueId;

typedef struct ncclComm *ncclComm_t;

typedef enum {
    ncclSuccess = 0,
    ncclUnhandledCudaError = 1,
    ncclSystemError = 2,
    ncclInternalError = 3,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5,
    ncclRemoteError = 6,
    ncclInProgress = 7,
} ncclResult_t;

typedef enum { ncclInt8 = 0, ncclUint8 = 1, ncclInt32 = 2, ncclUint32 = 3, ncclFloat32 = 7 } ncclDataType_t;
#define ncclFloat ncclFloat32

typedef enum { ncclSum = 0 } ncclRedOp_t;

const char *ncclGetErrorString(ncclResult_t r);
const char *ncclGetLastError(ncclComm_t comm);
ncclResult_t ncclGetUniqueId(ncclUniqueId *id);
ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank);
ncclResult_t ncclCommDestroy(ncclComm_t comm);
ncclResult_t ncclCommAbort(ncclComm_t comm);
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *async);
ncclResult_t ncclGroupStart(void);
ncclResult_t ncclGroupEnd(void);
ncclResult_t ncclAllGather(const void *send, void *recv, size_t count, ncclDataType_t type, ncclComm_t comm,
                           cudaStream_t st);
ncclResult_t ncclBroadcast(const void *send, void *recv, size_t count, ncclDataType_t type, int root,
                           ncclComm_t comm, cudaStream_t st);
ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t st);

#endif
