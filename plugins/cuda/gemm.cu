/* plugins/cuda/gemm.cu — row-major SGEMM through cuBLAS (slot gemm).
 *
 * cuBLAS is column-major. A row-major C[M,N] is the column-major C^T[N,M],
 * and C^T = op(B)^T op(A)^T, so the call swaps the operands (B first) and
 * the sizes (N, M) and keeps each operand's own transpose flag and leading
 * dimension. fp32 compute (CUBLAS_COMPUTE_32F) unless LATHE_ALLOW_TF32=1
 * chose TF32 tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32). */
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <lathe/tensor.h>

#include "common.h"

/* C = beta * C for K = 0 (no products; BLAS semantics), rows of ldc. */
static __global__ void scale_c_kernel(float *C, int64_t M, int64_t N, int64_t ldc, int64_t sc, int64_t batch,
                                      float beta)
{
    int64_t total = batch * M * N;
    LCU_GRID_STRIDE(i, total)
    {
        int64_t b = i / (M * N), r = (i / N) % M, c = i % N;
        float *p = C + b * sc + r * ldc + c;
        *p = beta == 0.0f ? 0.0f : beta * *p;
    }
}

void lathe_cuda_gemm_ld(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                        const float *A, int64_t lda, int64_t sa, const float *B, int64_t ldb, int64_t sb,
                        float beta, float *C, int64_t ldc, int64_t sc, int64_t batch)
{
    if (M <= 0 || N <= 0 || batch <= 0)
        return;
    if (K <= 0) {
        scale_c_kernel<<<lcu_blocks(batch * M * N), LCU_THREADS, 0, lathe_cuda_stream()>>>(C, M, N, ldc, sc, batch,
                                                                                           beta);
        CU_LAUNCHED("gemm scale_c_kernel");
        return;
    }
    if (M > INT32_MAX || N > INT32_MAX || K > INT32_MAX || lda > INT32_MAX || ldb > INT32_MAX ||
        ldc > INT32_MAX || batch > INT32_MAX) {
        lathe_cuda_fail(__FILE__, __LINE__, "gemm: a size exceeds cuBLAS's int range (M %lld, N %lld, K %lld)",
                        (long long)M, (long long)N, (long long)K);
        return;
    }
    int tf32 = lathe_cuda_tf32();
    cublasComputeType_t ct = tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    /* the default math mode never lowers fp32 compute by itself */
    if (CUBLAS_CHECK(cublasSetMathMode(lathe_cuda_blas(), tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH)))
        return;
    cublasOperation_t opa = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t opb = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(lathe_cuda_blas(), opb, opa, (int)N, (int)M, (int)K, &alpha, B,
                                            CUDA_R_32F, (int)ldb, (long long)sb, A, CUDA_R_32F, (int)lda,
                                            (long long)sa, &beta, C, CUDA_R_32F, (int)ldc, (long long)sc,
                                            (int)batch, ct, CUBLAS_GEMM_DEFAULT));
}

extern "C" void lathe_cuda_gemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                                const float *A, const float *B, float beta, float *C, int64_t batch, int64_t sa,
                                int64_t sb, int64_t sc)
{
    CU_ENTER();
    /* A is [M,K] (ld K), or [K,M] (ld M) when transposed; B likewise. */
    lathe_cuda_gemm_ld(trans_a, trans_b, M, N, K, alpha, A, trans_a ? M : K, sa, B, trans_b ? K : N, sb, beta, C,
                       N, sc, batch);
}

/* ---- ABI 1.2: mixed precision (slots gemm_lowp and round_to) ----
 *
 * The operands are converted to 16-bit device temporaries (round to
 * nearest even, __float2bfloat16_rn / __float2half_rn: what the CPU
 * backend's round_to does, overflow to inf and NaN kept) and multiplied by
 * cuBLAS with 16-bit inputs, f32 output and CUBLAS_COMPUTE_32F: tensor
 * cores with f32 accumulation. */

static __device__ __forceinline__ float lcu_round16(float x, int dtype)
{
    return dtype == LATHE_BF16 ? __bfloat162float(__float2bfloat16_rn(x)) : __half2float(__float2half_rn(x));
}

static __device__ __forceinline__ void lcu_store16(__nv_bfloat16 *p, float x) { *p = __float2bfloat16_rn(x); }
static __device__ __forceinline__ void lcu_store16(__half *p, float x) { *p = __float2half_rn(x); }

/* dst (compact: item i at i * n) = src items at stride `stride`, in 16 bits */
template <typename T>
static __global__ void to16_kernel(T *dst, const float *src, int64_t items, int64_t n, int64_t stride)
{
    LCU_GRID_STRIDE(i, items * n)
    lcu_store16(dst + i, src[(i / n) * stride + i % n]);
}

/* x items of n elements at stride `stride`, rounded to dtype in place */
static __global__ void round_items_kernel(float *x, int64_t items, int64_t n, int64_t stride, int dtype)
{
    LCU_GRID_STRIDE(i, items * n)
    {
        float *p = x + (i / n) * stride + i % n;
        *p = lcu_round16(*p, dtype);
    }
}

static __global__ void round_kernel(float *out, const float *x, int64_t n, int dtype)
{
    LCU_GRID_STRIDE(i, n)
    out[i] = lcu_round16(x[i], dtype);
}

extern "C" void lathe_cuda_round_to(float *out, const float *x, int64_t n, int dtype)
{
    CU_ENTER();
    if (n <= 0)
        return;
    if (dtype != LATHE_BF16 && dtype != LATHE_F16) {
        if (out != x)
            CU_CHECK(cudaMemcpyAsync(out, x, (size_t)n * sizeof *out, cudaMemcpyDeviceToDevice, lathe_cuda_stream()));
        return;
    }
    round_kernel<<<lcu_blocks(n), LCU_THREADS, 0, lathe_cuda_stream()>>>(out, x, n, dtype);
    CU_LAUNCHED("round_kernel");
}

/* items of n floats at stride from src into a new 16-bit temporary (caching
 * allocator); NULL after recording an error. */
static void *to16(const float *src, int64_t items, int64_t n, int64_t stride, int dtype)
{
    void *t = lathe_cuda_alloc((size_t)(items * n) * 2);
    if (!t) {
        lathe_cuda_fail(__FILE__, __LINE__, "gemm_lowp: out of device memory for a %lld-element %s operand",
                        (long long)(items * n), dtype == LATHE_BF16 ? "bf16" : "f16");
        return NULL;
    }
    if (dtype == LATHE_BF16)
        to16_kernel<__nv_bfloat16><<<lcu_blocks(items * n), LCU_THREADS, 0, lathe_cuda_stream()>>>(
            (__nv_bfloat16 *)t, src, items, n, stride);
    else
        to16_kernel<__half><<<lcu_blocks(items * n), LCU_THREADS, 0, lathe_cuda_stream()>>>((__half *)t, src, items,
                                                                                            n, stride);
    CU_LAUNCHED("to16_kernel");
    return t;
}

extern "C" void lathe_cuda_gemm_lowp(int dtype, int round_c, int trans_a, int trans_b, int64_t M, int64_t N,
                                     int64_t K, float alpha, const float *A, const float *B, float beta, float *C,
                                     int64_t batch, int64_t sa, int64_t sb, int64_t sc)
{
    CU_ENTER();
    if (M <= 0 || N <= 0 || batch <= 0)
        return;
    if ((dtype != LATHE_BF16 && dtype != LATHE_F16) || K <= 0) {
        /* f32, or no products (C = beta C, then rounded below) */
        lathe_cuda_gemm_ld(trans_a, trans_b, M, N, K, alpha, A, trans_a ? M : K, sa, B, trans_b ? K : N, sb, beta,
                           C, N, sc, batch);
    } else if (M > INT32_MAX || N > INT32_MAX || K > INT32_MAX || batch > INT32_MAX) {
        lathe_cuda_fail(__FILE__, __LINE__, "gemm_lowp: a size exceeds cuBLAS's int range (M %lld, N %lld, K %lld)",
                        (long long)M, (long long)N, (long long)K);
        return;
    } else {
        /* a stride of 0 shares one item across the batch: convert it once */
        int64_t na = sa ? batch : 1, nb = sb ? batch : 1;
        void *a16 = to16(A, na, M * K, sa, dtype);
        void *b16 = a16 ? to16(B, nb, K * N, sb, dtype) : NULL;
        if (a16 && b16 && !CUBLAS_CHECK(cublasSetMathMode(lathe_cuda_blas(), CUBLAS_DEFAULT_MATH))) {
            cudaDataType_t t = dtype == LATHE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
            /* row-major as column-major transposed: B first (see the top of this file) */
            CUBLAS_CHECK(cublasGemmStridedBatchedEx(
                lathe_cuda_blas(), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, (int)N,
                (int)M, (int)K, &alpha, b16, t, (int)(trans_b ? K : N), (long long)(sb ? K * N : 0), a16, t,
                (int)(trans_a ? M : K), (long long)(sa ? M * K : 0), &beta, C, CUDA_R_32F, (int)N, (long long)sc,
                (int)batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        }
        /* the caching allocator hands these out again only to later work on
         * the same stream, which runs after the GEMM */
        lathe_cuda_free(a16);
        lathe_cuda_free(b16);
    }
    if (round_c) {
        round_items_kernel<<<lcu_blocks(batch * M * N), LCU_THREADS, 0, lathe_cuda_stream()>>>(C, batch, M * N, sc,
                                                                                              dtype);
        CU_LAUNCHED("round_items_kernel");
    }
}
