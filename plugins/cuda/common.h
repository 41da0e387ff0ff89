/* plugins/cuda/common.h — what every .cu file of the CUDA backend shares:
 * the stream and cuBLAS handle, error recording, the scratch buffer, launch
 * sizes and warp/block reductions. CUDA C++ only; internal.
 *
 * One stream per process (rank): every kernel, copy and cuBLAS call goes to
 * it, so the caching allocator may hand a freed block to the next request
 * without waiting, and kernels never need a device-wide sync except where
 * the host reads a result (copy to host, sumsq). */
#ifndef LATHE_PLUGINS_CUDA_COMMON_H
#define LATHE_PLUGINS_CUDA_COMMON_H

#ifndef __CUDACC__
#error "plugins/cuda/common.h is for the .cu files"
#endif

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "kernels.h"

/* ---- state (memory.cu) ---- */

/* Initialises the device, stream and cuBLAS handle on first use; 0 when
 * ready, -1 after recording why not. */
int lathe_cuda_ready(void);
cudaStream_t lathe_cuda_stream(void);
cublasHandle_t lathe_cuda_blas(void);
/* TF32 tensor cores for fp32 GEMMs: LATHE_ALLOW_TF32=1 (or true) in the
 * environment, which `[run] allow_tf32 = true` sets; default off. */
int lathe_cuda_tf32(void);

/* Record the first failure (file:line: what: reason); returns 1 on error. */
int lathe_cuda_check_rt(cudaError_t e, const char *file, int line, const char *what);
int lathe_cuda_check_blas(cublasStatus_t s, const char *file, int line, const char *what);
void lathe_cuda_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define CU_CHECK(call) lathe_cuda_check_rt((call), __FILE__, __LINE__, #call)
#define CUBLAS_CHECK(call) lathe_cuda_check_blas((call), __FILE__, __LINE__, #call)
/* After a kernel launch: a bad configuration shows here, a fault later. */
#define CU_LAUNCHED(name) lathe_cuda_check_rt(cudaGetLastError(), __FILE__, __LINE__, name)
/* Slot prologue: nothing to do without a device. */
#define CU_ENTER()                                                                                 \
    do {                                                                                           \
        if (lathe_cuda_ready() != 0)                                                               \
            return;                                                                                \
    } while (0)

/* A device buffer of at least n bytes owned by the backend, valid until the
 * next call of lathe_cuda_scratch (the stream orders its uses). Slots that
 * need two regions take one buffer and carve it. NULL after recording an
 * error. */
void *lathe_cuda_scratch(size_t n);

/* General strided-batched row-major SGEMM with explicit leading dimensions
 * (gemm.cu): C[i] = alpha op(A[i]) op(B[i]) + beta C[i]. */
void lathe_cuda_gemm_ld(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                        const float *A, int64_t lda, int64_t sa, const float *B, int64_t ldb,
                        int64_t sb, float beta, float *C, int64_t ldc, int64_t sc, int64_t batch);

/* d[c] (+)= sign * sum_r x[r*C + c] (* y[r*C + c] when y), r < rows, in
 * double, deterministic (fixed row chunks, then the chunks in order);
 * elementwise.cu. */
void lathe_cuda_colsum(float *d, float sign, const float *x, const float *y, int64_t rows, int64_t C);

/* *out (device float) and/or *outd (device double) = sum x[i], or sum
 * x[i]^2 when sq; deterministic two-pass reduction in double. */
void lathe_cuda_reduce(float *out, double *outd, const float *x, int64_t n, int sq);

/* ---- launch sizes ---- */

#define LCU_THREADS 256
/* Grid-stride loops cover any n; more blocks than this only add
 * scheduling. */
#define LCU_MAX_BLOCKS 65536

static inline unsigned lcu_blocks(int64_t n, int threads = LCU_THREADS)
{
    int64_t b = (n + threads - 1) / threads;
    if (b < 1)
        b = 1;
    return (unsigned)(b > LCU_MAX_BLOCKS ? LCU_MAX_BLOCKS : b);
}

#define LCU_GRID_STRIDE(i, n)                                                                      \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                      \
         i += (int64_t)gridDim.x * blockDim.x)

/* ---- device helpers ---- */

static __device__ __forceinline__ float lcu_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ double lcu_warp_sum_d(double v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float lcu_warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024); every
 * thread gets the result. `sh` holds 32 floats. The tree is fixed, so the
 * result is the same on every run. */
static __device__ __forceinline__ float lcu_block_sum(float v, float *sh)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = lcu_warp_sum(v);
    __syncthreads(); /* sh may still be read from a previous call */
    if (lane == 0)
        sh[w] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0f;
    return lcu_warp_sum(v);
}

static __device__ __forceinline__ float lcu_block_max(float v, float *sh)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = lcu_warp_max(v);
    __syncthreads();
    if (lane == 0)
        sh[w] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : -INFINITY;
    return lcu_warp_max(v);
}

/* 1 / (1 + e^-z) without overflow: from e^-|z| as in core/cpu/vmath.h. */
static __device__ __forceinline__ float lcu_sigmoid(float z)
{
    float e = expf(-fabsf(z));
    return (z >= 0.0f ? 1.0f : e) / (1.0f + e);
}

#endif
