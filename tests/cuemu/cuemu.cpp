/* cuemu.cpp — the CPU emulator's runtime (cuda_runtime.h says what it
 * promises): a block's threads as fibers that change places only at
 * barriers, streams that run their work at once or record it into graphs,
 * and host memory standing in for the device's.
 *
 * The fibers switch with a few instructions on x86-64 (callee-saved
 * registers and the stack pointer; the float control words are never
 * changed by a kernel) and with ucontext elsewhere. Each fiber's stack
 * has a guard page below it, so a kernel that overflows its stack faults
 * instead of overwriting its neighbour's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <vector>

#include "cuda_runtime.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

__thread uint3 threadIdx, blockIdx, blockDim, gridDim;

/* ---- errors ---- */

static thread_local cudaError_t last_error = cudaSuccess;

static cudaError_t fail(cudaError_t e) {
    if (e != cudaSuccess) last_error = e;
    return e;
}

const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorUnknown: return "cudaErrorUnknown";
    }
    return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorUnknown: return "unknown error";
    }
    return "unknown error";
}

cudaError_t cudaGetLastError(void) {
    const cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}

/* ---- the device ---- */

static const size_t DEVICE_BYTES = (size_t)16 << 30;
static const int SMEM_OPTIN = 227 * 1024; /* sm_90's opt-in limit per block */

cudaError_t cudaGetDeviceCount(int *n) {
    *n = 1;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int device) {
    if (device != 0) return fail(cudaErrorInvalidDevice);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "tandem CUDA emulator (CPU)");
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = 1;
    p->totalGlobalMem = DEVICE_BYTES;
    p->sharedMemPerBlock = 48 * 1024;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int device) {
    if (device != 0) return fail(cudaErrorInvalidDevice);
    switch (a) {
    case cudaDevAttrComputeCapabilityMajor: *v = 9; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = SMEM_OPTIN; return cudaSuccess;
    }
    return fail(cudaErrorInvalidValue);
}

cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice); }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }

/* ---- memory: malloc'd, so that AddressSanitizer sees a kernel's reads ---- */

cudaError_t cudaMalloc(void **p, size_t bytes) {
    *p = NULL;
    if (bytes > DEVICE_BYTES) return fail(cudaErrorMemoryAllocation);
    void *q = NULL;
    if (posix_memalign(&q, 256, bytes ? bytes : 1) != 0) return fail(cudaErrorMemoryAllocation);
    memset(q, 0xa5, bytes); /* never zeroed on a device either */
    *p = q;
    return cudaSuccess;
}
cudaError_t cudaFree(void *p) {
    free(p);
    return cudaSuccess;
}
cudaError_t cudaMallocHost(void **p, size_t bytes) { return cudaMalloc(p, bytes); }
cudaError_t cudaFreeHost(void *p) { return cudaFree(p); }

/* ---- streams and graphs ---- */

struct td_cuemu_graph {
    std::vector<std::function<void()>> ops;
};

struct td_cuemu_stream {
    td_cuemu_graph *capture; /* non-NULL while capturing */
    bool invalidated;        /* an error while capturing */
};

/* The default stream (0) never captures. */
static cudaError_t submit(cudaStream_t st, std::function<void()> op) {
    if (st && st->capture) {
        st->capture->ops.push_back(std::move(op));
        return cudaSuccess;
    }
    op();
    return cudaSuccess;
}

static bool capturing(cudaStream_t st) { return st && st->capture; }

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    (void)kind;
    if (bytes && (!dst || !src)) return fail(cudaErrorInvalidValue);
    memmove(dst, src, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t st) {
    (void)kind;
    if (bytes && (!dst || !src)) return fail(cudaErrorInvalidValue);
    return submit(st, [dst, src, bytes]() { memmove(dst, src, bytes); });
}
cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind kind, cudaStream_t st) {
    (void)kind;
    if (width > dpitch || width > spitch) return fail(cudaErrorInvalidValue);
    if (width && height && (!dst || !src)) return fail(cudaErrorInvalidValue);
    return submit(st, [=]() {
        for (size_t i = 0; i < height; i++)
            memmove((char *)dst + i * dpitch, (const char *)src + i * spitch, width);
    });
}
cudaError_t cudaMemset(void *p, int value, size_t bytes) {
    if (bytes && !p) return fail(cudaErrorInvalidValue);
    memset(p, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *st) {
    *st = (td_cuemu_stream *)calloc(1, sizeof(td_cuemu_stream));
    return *st ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *st, unsigned flags) {
    (void)flags;
    return cudaStreamCreate(st);
}
cudaError_t cudaStreamDestroy(cudaStream_t st) {
    if (st) delete st->capture;
    free(st);
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t st) {
    return capturing(st) ? fail(cudaErrorStreamCaptureUnsupported) : cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t st) {
    return capturing(st) ? fail(cudaErrorStreamCaptureUnsupported) : cudaSuccess;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t st, cudaStreamCaptureMode mode) {
    (void)mode;
    if (!st || st->capture) return fail(cudaErrorInvalidValue);
    st->capture = new (std::nothrow) td_cuemu_graph;
    st->invalidated = false;
    return st->capture ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}
cudaError_t cudaStreamEndCapture(cudaStream_t st, cudaGraph_t *g) {
    *g = NULL;
    if (!st || !st->capture) return fail(cudaErrorInvalidValue);
    td_cuemu_graph *graph = st->capture;
    st->capture = NULL;
    if (st->invalidated) {
        delete graph;
        return fail(cudaErrorStreamCaptureInvalidated);
    }
    *g = graph;
    return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t g, unsigned long long flags) {
    (void)flags;
    *exec = NULL;
    if (!g) return fail(cudaErrorInvalidValue);
    *exec = new (std::nothrow) td_cuemu_graph(*g);
    return *exec ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t st) {
    if (!exec || capturing(st)) return fail(cudaErrorInvalidValue);
    for (auto &op : exec->ops) op();
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) {
    delete g;
    return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    delete exec;
    return cudaSuccess;
}

struct td_cuemu_event {
    double sec;
};
static double now_sec(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
cudaError_t cudaEventCreate(cudaEvent_t *ev) {
    *ev = (td_cuemu_event *)calloc(1, sizeof(td_cuemu_event));
    return *ev ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}
cudaError_t cudaEventDestroy(cudaEvent_t ev) {
    free(ev);
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t ev, cudaStream_t st) {
    if (!ev) return fail(cudaErrorInvalidValue);
    return submit(st, [ev]() { ev->sec = now_sec(); });
}
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    if (!a || !b) return fail(cudaErrorInvalidValue);
    *ms = (float)(1e3 * (b->sec - a->sec));
    return cudaSuccess;
}

/* ---- fibers ----
 * A fiber runs until it waits at a barrier or returns, then hands the host
 * thread straight to the next runnable fiber of the block (round robin).
 * The last thread to reach a barrier opens it and runs on; so a warp
 * shuffle costs one switch per lane and no scan of the block. */

enum fiber_state { F_RUN, F_WARP_BAR, F_BLOCK_BAR, F_DONE };

struct fiber {
#if defined(__x86_64__)
    void *sp;
#else
    ucontext_t uc;
#endif
    unsigned tid;
    fiber_state state;
    unsigned shuffles; /* this lane's count: which exchange buffer is next */
};

/* One host thread's block runner: fibers and stacks made once, reused. */
enum { MAX_THREADS = 1024, MAX_WARPS = MAX_THREADS / 32, STACK_BYTES = 256 * 1024 };
struct runner {
    fiber fibers[MAX_THREADS];
    unsigned char *stacks; /* MAX_THREADS * (guard page + STACK_BYTES) */
    size_t page;
#if defined(__x86_64__)
    void *sched_sp;
#else
    ucontext_t sched;
#endif
    fiber *cur;
    const std::function<void()> *body;
    int n_threads, live, at_block;
    int warp_live[MAX_WARPS], warp_waiting[MAX_WARPS];
    uint64_t slots[2][MAX_THREADS]; /* the warps' exchange, two buffers: one per lane */
    std::vector<unsigned char> smem;
};

static thread_local runner *R;

#if defined(__x86_64__)
/* td_cuemu_switch(save, to): saves the callee-saved registers on the
 * current stack, the stack pointer in *save, and resumes the stack `to`. */
extern "C" void td_cuemu_switch(void **save, void *to);
__asm__(".text\n"
        ".globl td_cuemu_switch\n"
        ".type td_cuemu_switch,@function\n"
        "td_cuemu_switch:\n"
        "  pushq %rbp\n"
        "  pushq %rbx\n"
        "  pushq %r12\n"
        "  pushq %r13\n"
        "  pushq %r14\n"
        "  pushq %r15\n"
        "  movq %rsp, (%rdi)\n"
        "  movq %rsi, %rsp\n"
        "  popq %r15\n"
        "  popq %r14\n"
        "  popq %r13\n"
        "  popq %r12\n"
        "  popq %rbx\n"
        "  popq %rbp\n"
        "  ret\n"
        ".size td_cuemu_switch, .-td_cuemu_switch\n");
#endif

/* Stops the process; in a kernel, says where (the block, and the thread
 * that was running or that the message names). */
static void die(const char *what) {
    if (R && R->body)
        fprintf(stderr, "cuemu: %s (block %u,%u,%u of %u,%u,%u; thread %u of %u)\n", what, blockIdx.x, blockIdx.y,
                blockIdx.z, gridDim.x, gridDim.y, gridDim.z, threadIdx.x, blockDim.x);
    else
        fprintf(stderr, "cuemu: %s\n", what);
    abort();
}

static void fiber_main(void);

/* A thread's runner goes with the thread: each holds MAX_THREADS guarded
 * stacks (two memory maps apiece), and a server's pool threads come and
 * go — kept, they would use up the process's map count (vm.max_map_count). */
struct runner_release {
    ~runner_release() {
        if (!R) return;
        munmap(R->stacks, (R->page + STACK_BYTES) * MAX_THREADS);
        delete R;
        R = nullptr;
    }
};
static thread_local runner_release runner_owner;

static runner *runner_get(void) {
    if (R) return R;
    (void)&runner_owner; /* odr-use: constructs it, so its destructor runs at thread exit */
    runner *r = new (std::nothrow) runner();
    if (!r) die("out of memory for a block runner");
    r->page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t each = r->page + STACK_BYTES;
    void *m = mmap(NULL, each * MAX_THREADS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) die("cannot map fiber stacks");
    r->stacks = (unsigned char *)m;
    for (int i = 0; i < MAX_THREADS; i++)
        if (mprotect(r->stacks + (size_t)i * each, r->page, PROT_NONE) != 0) die("cannot protect a stack guard");
    R = r;
    return r;
}

static void fiber_start(runner *r, int i) {
    fiber *f = &r->fibers[i];
    unsigned char *base = r->stacks + (size_t)i * (r->page + STACK_BYTES) + r->page;
    f->tid = (unsigned)i;
    f->state = F_RUN;
    f->shuffles = 0;
#if defined(__x86_64__)
    /* the frame td_cuemu_switch pops: six registers, then fiber_main as the
     * return address; above it a zero return slot, so that fiber_main
     * starts with the stack aligned as after a call. The tops are staggered
     * (multiples of 16 bytes): stacks a power of two apart would put every
     * fiber's hot frames in the same cache sets. */
    void **top = (void **)(base + STACK_BYTES - (size_t)(i % 61) * 208);
    top -= 2;
    top[0] = (void *)fiber_main;
    top[1] = NULL;
    top -= 6;
    for (int k = 0; k < 6; k++) top[k] = NULL;
    f->sp = top;
#else
    if (getcontext(&f->uc) != 0) die("getcontext failed");
    f->uc.uc_stack.ss_sp = base;
    f->uc.uc_stack.ss_size = STACK_BYTES;
    f->uc.uc_link = NULL;
    makecontext(&f->uc, fiber_main, 0);
#endif
}

/* Hands the host thread from fiber `from` (or the scheduler, NULL) to
 * fiber `to` (or back to the scheduler, NULL). */
static void hand_over(fiber *from, fiber *to) {
    R->cur = to;
    if (to) threadIdx = uint3{to->tid, 0, 0};
#if defined(__x86_64__)
    td_cuemu_switch(from ? &from->sp : &R->sched_sp, to ? to->sp : R->sched_sp);
#else
    swapcontext(from ? &from->uc : &R->sched, to ? &to->uc : &R->sched);
#endif
}

/* The next runnable fiber after f, round robin; NULL when none is. */
static fiber *next_runnable(const fiber *f) {
    const int n = R->n_threads;
    for (int k = 1; k <= n; k++) {
        fiber *g = &R->fibers[((int)f->tid + k) % n];
        if (g->state == F_RUN) return g;
    }
    return NULL;
}

static void open_block_barrier(void) {
    for (int i = 0; i < R->n_threads; i++)
        if (R->fibers[i].state == F_BLOCK_BAR) R->fibers[i].state = F_RUN;
    R->at_block = 0;
}

/* The running fiber waits at a barrier of its warp (warp) or block; it
 * returns once the barrier has opened. */
static void wait_at(bool warp) {
    fiber *f = R->cur;
    const int w = (int)f->tid / 32;
    if (warp) {
        f->state = F_WARP_BAR;
        if (++R->warp_waiting[w] == R->warp_live[w]) {
            if (R->warp_live[w] < 32 && 32 * w + 32 <= R->n_threads)
                die("a shuffle after some lanes of the warp returned");
            for (int i = 32 * w; i < 32 * w + 32 && i < R->n_threads; i++) R->fibers[i].state = F_RUN;
            R->warp_waiting[w] = 0;
            return;
        }
    } else {
        f->state = F_BLOCK_BAR;
        if (++R->at_block == R->live) {
            open_block_barrier();
            return;
        }
    }
    fiber *g = next_runnable(f);
    if (!g) die("deadlock: the threads of the block wait at different barriers");
    hand_over(f, g);
}

static void fiber_main(void) {
    (*R->body)();
    fiber *f = R->cur;
    const int w = (int)f->tid / 32;
    f->state = F_DONE;
    R->live--;
    R->warp_live[w]--;
    if (R->warp_waiting[w] > 0) die("a lane returned while the others of its warp wait at a shuffle");
    if (R->at_block > 0 && R->at_block == R->live) open_block_barrier();
    fiber *g = next_runnable(f);
    if (!g && R->live > 0) die("deadlock: the threads of the block wait at different barriers");
    hand_over(f, g); /* the scheduler when the block is done; never resumed */
    abort();
}

void td_cuemu_syncthreads(void) {
    if (!R || !R->cur) die("__syncthreads outside a kernel");
    wait_at(false);
}

uint64_t td_cuemu_exchange(unsigned mask, uint64_t v, int src) {
    if (!R || !R->cur) die("a shuffle outside a kernel");
    if (mask != 0xffffffffu) die("a shuffle with a partial mask (not emulated)");
    /* one barrier per exchange: the buffers alternate, and a lane can only
     * write this buffer again after every lane has passed the next
     * exchange's barrier, so after they all read this one */
    fiber *f = R->cur;
    uint64_t *slots = R->slots[f->shuffles++ & 1u];
    const int t = (int)f->tid, base = t & ~31;
    slots[t] = v;
    wait_at(true); /* every lane has stored */
    return src >= 0 && src < 32 && base + src < R->n_threads ? slots[base + src] : v;
}

void *td_cuemu_dynamic_smem(void) {
    if (!R) die("dynamic shared memory outside a kernel");
    return R->smem.data();
}

static void run_block(runner *r, int n) {
    for (int i = 0; i < n; i++) fiber_start(r, i);
    for (int w = 0; w < (n + 31) / 32; w++) {
        r->warp_live[w] = n - 32 * w < 32 ? n - 32 * w : 32;
        r->warp_waiting[w] = 0;
    }
    r->live = n;
    r->at_block = 0;
    hand_over(NULL, &r->fibers[0]); /* back when every thread has returned */
}

static void run_kernel(dim3 grid, dim3 block, size_t smem, const std::function<void()> &body) {
    runner *r = runner_get();
    const int n = (int)(block.x * block.y * block.z);
    if (block.y != 1 || block.z != 1) die("blocks of more than one dimension (not emulated)");
    const uint3 outside = threadIdx;
    r->body = &body;
    r->n_threads = n;
    r->smem.assign(smem ? smem : 1, 0xff);
    blockDim = uint3{block.x, block.y, block.z};
    gridDim = uint3{grid.x, grid.y, grid.z};
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                blockIdx = uint3{bx, by, bz};
                if (smem) memset(r->smem.data(), 0xff, smem);
                run_block(r, n);
            }
    r->body = NULL;
    threadIdx = outside;
}

cudaError_t td_cuemu_launch(dim3 grid, dim3 block, size_t smem, cudaStream_t st, std::function<void()> body) {
    const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (threads == 0 || threads > MAX_THREADS || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
        smem > (size_t)SMEM_OPTIN) {
        if (capturing(st)) st->invalidated = true;
        return fail(cudaErrorInvalidConfiguration);
    }
    return submit(st, [grid, block, smem, body]() { run_kernel(grid, block, smem, body); });
}
