/* cuda_runtime.h (the CPU emulator's) — the part of the CUDA runtime that
 * tandem's backend (the .cu files of common/cuda/) uses, so that the same files, built
 * as C++ with this folder first on the include path, run their kernels on
 * the CPU: test_cuda's device cases then run on every machine, with no GPU.
 *
 * What it promises:
 * - Kernels run with CUDA's semantics for what tandem relies on: every
 *   thread of a block is a fiber (its own stack and registers) on one host
 *   thread; __syncthreads and the warp shuffles are barriers at which the
 *   fibers change places; __shared__ variables are shared by a block's
 *   fibers and by nothing else running at the same time; dynamic shared
 *   memory is filled with 0xff bytes (NaN floats) before each block, so a
 *   kernel that reads what it never wrote sees garbage, as on a device.
 * - Arithmetic is the host's IEEE float and double (build with
 *   -ffp-contract=off, as nvcc's -fmad=false): the backend's reference
 *   order then gives the CPU reference's bits here exactly as on a GPU.
 * - A deadlock (a barrier that some threads of the block never reach, a
 *   shuffle after some lanes of the warp returned) stops the process with
 *   the kernel's block and thread: a device would hang or be undefined.
 * - Streams run their work at once; capture records it into a graph that
 *   a launch replays. Memory is host memory (one "device", 16 GiB claimed).
 *
 * What it does not: timing of any kind (every figure it gives is the
 * host's), overlap (programmatic dependent launch runs kernels one after
 * another), memory-ordering bugs between concurrently running blocks
 * (blocks run one at a time), libdevice's transcendental functions (exp,
 * log are the host's: tandem's kernels use their own where bits matter).
 */
#ifndef TD_CUEMU_RUNTIME_H
#define TD_CUEMU_RUNTIME_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda_fp16.h"

/* ---- qualifiers ---- */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
/* one instance per host thread; a block's fibers share their host thread,
 * and a host thread runs one block at a time */
#define __shared__ static thread_local

/* ---- indices ---- */
struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

/* Where the running fiber is: the scheduler sets them at every switch.
 * __thread (plain data, no C++ thread_local wrappers), so the sizes are
 * uint3 here (dim3 on a device; kernels read only their members). */
extern __thread uint3 threadIdx, blockIdx, blockDim, gridDim;

/* the vector types the kernels load through */
struct __attribute__((aligned(8))) uint2 {
    unsigned x, y;
};
struct __attribute__((aligned(16))) uint4 {
    unsigned x, y, z, w;
};

/* ---- barriers, shuffles, atomics, integer and bit intrinsics ---- */
void td_cuemu_syncthreads(void);
/* The warp's exchange: every lane of the (whole, live) warp stores v and
 * gets lane src's value back; src outside 0..31 gets its own. */
uint64_t td_cuemu_exchange(unsigned mask, uint64_t v, int src);

#define __syncthreads() td_cuemu_syncthreads()

template <typename T>
static inline T td_cuemu_shfl(unsigned mask, T v, int src) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "a shuffle moves up to 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    bits = td_cuemu_exchange(mask, bits, src);
    T out;
    memcpy(&out, &bits, sizeof out);
    return out;
}
static inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

static inline int td_cuemu_lane(void) { return (int)(threadIdx.x & 31u); }
template <typename T>
static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    const int lane = td_cuemu_lane();
    return td_cuemu_shfl(mask, v, (lane & ~(width - 1)) + (src & (width - 1)));
}
template <typename T>
static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    const int lane = td_cuemu_lane(), src = lane ^ lane_mask;
    /* a source outside the lane's segment of width gives the lane its own */
    return td_cuemu_shfl(mask, v, (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : lane);
}
template <typename T>
static inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int lane = td_cuemu_lane(), src = lane - (int)delta;
    return td_cuemu_shfl(mask, v, src >= (lane & ~(width - 1)) ? src : lane);
}

/* Blocks run one at a time: a read-modify-write is atomic already. */
template <typename T>
static inline T atomicAdd(T *p, T v) {
    const T old = *p;
    *p = old + v;
    return old;
}

static inline int __dp4a(int a, int b, int c) {
    for (int k = 0; k < 4; k++) c += (int)(int8_t)(a >> (8 * k)) * (int)(int8_t)(b >> (8 * k));
    return c;
}
/* the bits of one 32-bit type read as another */
template <typename To, typename From>
static inline To td_cuemu_bits(From v) {
    static_assert(sizeof(To) == sizeof(From), "same size");
    To out;
    memcpy(&out, &v, sizeof out);
    return out;
}
static inline float __uint_as_float(unsigned u) { return td_cuemu_bits<float>(u); }
static inline float __int_as_float(int u) { return td_cuemu_bits<float>(u); }
/* an f32 add rounded to nearest: what the host's add is (nothing to contract) */
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline unsigned __float_as_uint(float f) { return td_cuemu_bits<unsigned>(f); }
static inline int __float_as_int(float f) { return td_cuemu_bits<int>(f); }

/* ---- errors ---- */
enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevice = 101,
    cudaErrorNoDevice = 100,
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorNotReady = 600,
    cudaErrorStreamCaptureInvalidated = 901,
    cudaErrorUnknown = 999,
};
typedef enum cudaError cudaError_t;
const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetLastError(void);

/* ---- devices ---- */
struct cudaDeviceProp {
    char name[256];
    int major, minor, multiProcessorCount;
    size_t totalGlobalMem, sharedMemPerBlock;
};
enum cudaDeviceAttr {
    cudaDevAttrComputeCapabilityMajor = 75,
    cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int device);
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaDeviceSynchronize(void);

/* ---- memory ---- */
enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};
cudaError_t cudaMalloc(void **p, size_t bytes);
template <typename T>
static inline cudaError_t cudaMalloc(T **p, size_t bytes) {
    return cudaMalloc((void **)p, bytes);
}
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t bytes);
cudaError_t cudaFreeHost(void *p);

/* ---- streams, graphs, events ---- */
struct td_cuemu_stream;
struct td_cuemu_graph;
struct td_cuemu_event;
typedef td_cuemu_stream *cudaStream_t;
typedef td_cuemu_graph *cudaGraph_t;
typedef td_cuemu_graph *cudaGraphExec_t;
typedef td_cuemu_event *cudaEvent_t;
enum cudaStreamCaptureMode {
    cudaStreamCaptureModeGlobal = 0,
    cudaStreamCaptureModeThreadLocal = 1,
    cudaStreamCaptureModeRelaxed = 2,
};
#define cudaStreamDefault 0x0u
#define cudaStreamNonBlocking 0x1u

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t st = 0);
cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind kind, cudaStream_t st = 0);
cudaError_t cudaMemset(void *p, int value, size_t bytes);

cudaError_t cudaStreamCreate(cudaStream_t *st);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *st, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t st);
cudaError_t cudaStreamSynchronize(cudaStream_t st);
cudaError_t cudaStreamQuery(cudaStream_t st);
cudaError_t cudaStreamBeginCapture(cudaStream_t st, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t st, cudaGraph_t *g);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t g, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t st);
cudaError_t cudaGraphDestroy(cudaGraph_t g);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);

cudaError_t cudaEventCreate(cudaEvent_t *ev);
cudaError_t cudaEventDestroy(cudaEvent_t ev);
cudaError_t cudaEventRecord(cudaEvent_t ev, cudaStream_t st = 0);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b);

/* ---- launches ---- */
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
template <typename F>
static inline cudaError_t cudaFuncSetAttribute(F *kernel, cudaFuncAttribute attr, int value) {
    (void)kernel, (void)attr;
    return value >= 0 ? cudaSuccess : cudaErrorInvalidValue;
}

enum cudaLaunchAttributeID { cudaLaunchAttributeProgrammaticStreamSerialization = 5 };
union cudaLaunchAttributeValue {
    int programmaticStreamSerializationAllowed;
};
struct cudaLaunchAttribute {
    cudaLaunchAttributeID id;
    cudaLaunchAttributeValue val;
};
struct cudaLaunchConfig_t {
    dim3 gridDim, blockDim;
    size_t dynamicSmemBytes;
    cudaStream_t stream;
    cudaLaunchAttribute *attrs;
    unsigned numAttrs;
};

/* Runs body once per thread of every block (or records it while the stream
 * captures). The body is the kernel with its arguments, copied as a
 * device's launch copies them. */
cudaError_t td_cuemu_launch(dim3 grid, dim3 block, size_t smem, cudaStream_t st,
                            std::function<void()> body);
/* The block's dynamic shared memory (extern __shared__ in CUDA). */
void *td_cuemu_dynamic_smem(void);

template <typename... KArgs, typename... Args>
static inline cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t *cfg, void (*kernel)(KArgs...),
                                             Args &&...args) {
    std::tuple<typename std::decay<KArgs>::type...> params(static_cast<KArgs>(args)...);
    return td_cuemu_launch(cfg->gridDim, cfg->blockDim, cfg->dynamicSmemBytes, cfg->stream,
                           [kernel, params]() { std::apply(kernel, params); });
}

#endif
