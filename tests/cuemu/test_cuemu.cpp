/* test_cuemu.cpp — the CPU emulator keeps the CUDA semantics that
 * tandem's kernels rely on (cuda_runtime.h lists them): warp shuffles and
 * block barriers, shared memory per block, dynamic shared memory that starts
 * as garbage, 2-D grids, capture into graphs and their replay, launch
 * errors, half conversions; and it stops a kernel whose threads could never
 * meet, as a device would hang.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
extern "C" {
#include <cmocka.h>
}

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cuda_runtime.h>

extern "C" {
#include "quant/quant.h" /* td_f32_to_fp16: the CPU's conversion */
}

template <typename... KArgs, typename... Args>
static cudaError_t launch(void (*k)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t st, Args... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    return cudaLaunchKernelEx(&cfg, k, args...);
}

/* ---- warps ---- */

__global__ void k_warp(int *sum, int *scan, int *bcast, double *dsum) {
    const int lane = threadIdx.x & 31;
    int v = (int)threadIdx.x;
    for (int off = 16; off; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    sum[threadIdx.x] = v;
    int s = lane + 1; /* inclusive scan of 1..32 */
    for (int off = 1; off < 32; off <<= 1) {
        const int up = __shfl_up_sync(0xffffffffu, s, off);
        if (lane >= off) s += up;
    }
    scan[threadIdx.x] = s;
    bcast[threadIdx.x] = __shfl_sync(0xffffffffu, (int)threadIdx.x * 10, 5);
    double d = 0.5 * lane;
    for (int off = 16; off; off >>= 1) d += __shfl_xor_sync(0xffffffffu, d, off);
    dsum[threadIdx.x] = d;
}

static void warp_shuffles(void **state) {
    (void)state;
    enum { N = 64 };
    int *sum, *scan, *bcast;
    double *dsum;
    assert_int_equal(cudaMalloc(&sum, N * sizeof(int)), cudaSuccess);
    assert_int_equal(cudaMalloc(&scan, N * sizeof(int)), cudaSuccess);
    assert_int_equal(cudaMalloc(&bcast, N * sizeof(int)), cudaSuccess);
    assert_int_equal(cudaMalloc(&dsum, N * sizeof(double)), cudaSuccess);
    assert_int_equal(launch(k_warp, dim3(1), dim3(N), 0, NULL, sum, scan, bcast, dsum), cudaSuccess);
    for (int t = 0; t < N; t++) {
        const int w = t / 32, lane = t % 32;
        assert_int_equal(sum[t], 32 * 32 * w + 496); /* the warp's thread ids added */
        assert_int_equal(scan[t], (lane + 1) * (lane + 2) / 2);
        assert_int_equal(bcast[t], (32 * w + 5) * 10);
        assert_true(dsum[t] == 248.0);
    }
    cudaFree(sum), cudaFree(scan), cudaFree(bcast), cudaFree(dsum);
}

/* ---- blocks: barriers, shared memory, grids ---- */

__global__ void k_reverse(const int *in, int *out, int *seen_dyn) {
    __shared__ int buf[256];
    int *dyn = (int *)td_cuemu_dynamic_smem();
    const int t = (int)threadIdx.x, n = (int)blockDim.x;
    const int b = (int)(blockIdx.y * gridDim.x + blockIdx.x);
    if (t == 0) seen_dyn[b] = dyn[0]; /* before anything wrote it */
    buf[t] = in[b * n + t];
    __syncthreads();
    out[b * n + t] = buf[n - 1 - t];
    __syncthreads();
    dyn[t] = t;
    if (t >= n / 2) return; /* half the block leaves; the rest still meet */
    __syncthreads();
    out[b * n + t] += dyn[t + n / 2] - (t + n / 2);
}

static void block_barriers(void **state) {
    (void)state;
    enum { T = 256, GX = 3, GY = 2, B = GX * GY };
    int *in, *out, *seen;
    assert_int_equal(cudaMalloc(&in, B * T * sizeof(int)), cudaSuccess);
    assert_int_equal(cudaMalloc(&out, B * T * sizeof(int)), cudaSuccess);
    assert_int_equal(cudaMalloc(&seen, B * sizeof(int)), cudaSuccess);
    for (int i = 0; i < B * T; i++) in[i] = i * 7;
    assert_int_equal(launch(k_reverse, dim3(GX, GY), dim3(T), T * sizeof(int), NULL, (const int *)in, out, seen),
                     cudaSuccess);
    for (int b = 0; b < B; b++) {
        assert_int_equal(seen[b], -1); /* 0xff bytes: every block starts with garbage */
        for (int t = 0; t < T; t++) assert_int_equal(out[b * T + t], in[b * T + T - 1 - t]);
    }
    cudaFree(in), cudaFree(out), cudaFree(seen);
}

/* ---- streams: capture records, a graph replays ---- */

__global__ void k_add(int *x, int v) {
    if (threadIdx.x == 0) *x += v;
}

static void capture_and_replay(void **state) {
    (void)state;
    cudaStream_t st;
    assert_int_equal(cudaStreamCreate(&st), cudaSuccess);
    int *x, *host;
    assert_int_equal(cudaMalloc(&x, sizeof(int)), cudaSuccess);
    assert_int_equal(cudaMallocHost((void **)&host, sizeof(int)), cudaSuccess);
    *x = 0;
    *host = 100;
    cudaGraph_t g;
    cudaGraphExec_t exec;
    assert_int_equal(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    assert_int_equal(cudaMemcpyAsync(x, host, sizeof(int), cudaMemcpyHostToDevice, st), cudaSuccess);
    assert_int_equal(launch(k_add, dim3(1), dim3(32), 0, st, x, 5), cudaSuccess);
    assert_int_equal(*x, 0); /* recorded, not run */
    assert_int_equal(cudaStreamSynchronize(st), cudaErrorStreamCaptureUnsupported);
    assert_int_equal(cudaGetLastError(), cudaErrorStreamCaptureUnsupported);
    assert_int_equal(cudaGetLastError(), cudaSuccess); /* read once */
    assert_int_equal(cudaStreamEndCapture(st, &g), cudaSuccess);
    assert_int_equal(cudaGraphInstantiate(&exec, g, 0), cudaSuccess);
    assert_int_equal(cudaGraphLaunch(exec, st), cudaSuccess);
    assert_int_equal(*x, 105);
    *host = 7; /* the copy reads its source when the graph runs */
    assert_int_equal(cudaGraphLaunch(exec, st), cudaSuccess);
    assert_int_equal(*x, 12);
    /* a bad launch while capturing spoils the capture */
    assert_int_equal(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    assert_int_equal(launch(k_add, dim3(1), dim3(2048), 0, st, x, 1), cudaErrorInvalidConfiguration);
    cudaGraph_t spoiled;
    assert_int_equal(cudaStreamEndCapture(st, &spoiled), cudaErrorStreamCaptureInvalidated);
    assert_null(spoiled);
    cudaGetLastError();
    /* the default stream runs at once */
    assert_int_equal(launch(k_add, dim3(1), dim3(32), 0, NULL, x, 1), cudaSuccess);
    assert_int_equal(*x, 13);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(g);
    cudaStreamDestroy(st);
    cudaFree(x);
    cudaFreeHost(host);
}

static void launch_errors(void **state) {
    (void)state;
    int *x;
    assert_int_equal(cudaMalloc(&x, sizeof(int)), cudaSuccess);
    assert_int_equal(launch(k_add, dim3(0), dim3(32), 0, NULL, x, 1), cudaErrorInvalidConfiguration);
    assert_int_equal(launch(k_add, dim3(1), dim3(1025), 0, NULL, x, 1), cudaErrorInvalidConfiguration);
    assert_int_equal(launch(k_add, dim3(1), dim3(32), 300 * 1024, NULL, x, 1), cudaErrorInvalidConfiguration);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidConfiguration);
    assert_int_equal(cudaSetDevice(1), cudaErrorInvalidDevice);
    cudaGetLastError();
    void *huge = (void *)1;
    assert_int_equal(cudaMalloc(&huge, (size_t)1 << 40), cudaErrorMemoryAllocation);
    assert_null(huge);
    cudaGetLastError();
    cudaFree(x);
}

/* ---- kernels that could never finish on a device: stopped ---- */

/* thread 40 waits at the block's barrier, the rest of its warp at a
 * shuffle that needs it */
__global__ void k_split_barriers(int *x) {
    if (threadIdx.x < 32 || threadIdx.x == 40) {
        __syncthreads();
    } else {
        x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
        __syncthreads();
    }
}

__global__ void k_lane_leaves(int *x) {
    if (threadIdx.x == 3) return;
    x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
}

/* Runs kernel k in a child process; the child must die of SIGABRT with a
 * message naming `what`. */
static void expect_stopped(void (*k)(int *), const char *what) {
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(NULL);
    const pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        int *x;
        cudaMalloc(&x, 64 * sizeof(int));
        launch(k, dim3(1), dim3(64), 0, NULL, x);
        _exit(0);
    }
    close(fds[1]);
    char msg[512] = {0};
    size_t got = 0;
    ssize_t r;
    while (got < sizeof msg - 1 && (r = read(fds[0], msg + got, sizeof msg - 1 - got)) > 0) got += (size_t)r;
    close(fds[0]);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
    if (!strstr(msg, what)) fail_msg("expected \"%s\" in: %s", what, msg);
}

static void stuck_kernels_stop(void **state) {
    (void)state;
    expect_stopped(k_split_barriers, "deadlock");
    expect_stopped(k_lane_leaves, "lane");
}

/* ---- halves ---- */

static void half_conversions(void **state) {
    (void)state;
    for (uint32_t b = 0; b < 65536; b++) { /* every half and back */
        __half_raw r;
        r.x = (unsigned short)b;
        const float f = __half2float(__half(r));
        assert_true(f == td_fp16_to_f32((uint16_t)b) || (f != f && td_fp16_to_f32((uint16_t)b) != td_fp16_to_f32((uint16_t)b)));
        if (f == f) assert_int_equal(__float2half_rn(f).bits, b);
    }
    /* rounding: floats between halves, ties to even, overflow, subnormals */
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 2000000; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t u = (uint32_t)(s >> 32);
        if (i % 3 == 0) u = (u & 0x80000000u) | (0x33000000u + (u & 0x0fffffffu) % 0x14800000u); /* the half range */
        float f;
        memcpy(&f, &u, sizeof f);
        if (f != f) continue; /* a NaN: the device's canonical one, not the CPU's */
        assert_int_equal(__float2half_rn(f).bits, td_f32_to_fp16(f));
    }
    const float nan = __uint_as_float(0x7fc01234u);
    assert_int_equal(__float2half_rn(nan).bits, 0x7fff);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(warp_shuffles),     cmocka_unit_test(block_barriers),
        cmocka_unit_test(capture_and_replay), cmocka_unit_test(launch_errors),
        cmocka_unit_test(stuck_kernels_stop), cmocka_unit_test(half_conversions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
