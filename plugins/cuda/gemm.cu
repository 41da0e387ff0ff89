/* plugins/cuda/gemm.cu — row-major SGEMM through cuBLAS (slot gemm).
 *
 * cuBLAS is column-major. A row-major C[M,N] is the column-major C^T[N,M],
 * and C^T = op(B)^T op(A)^T, so the call swaps the operands (B first) and
 * the sizes (N, M) and keeps each operand's own transpose flag and leading
 * dimension. fp32 compute (CUBLAS_COMPUTE_32F) unless LATHE_ALLOW_TF32=1
 * chose TF32 tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32). */
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
