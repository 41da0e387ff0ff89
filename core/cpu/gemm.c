/* core/cpu/gemm.c — row-major SGEMM through OpenBLAS (lathe/backend.h,
 * slot gemm). */
#include "config.h"

#ifdef HAVE_CBLAS_H
#include <cblas.h>
#else
#include <openblas/cblas.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu.h"

/* Below this many multiply-adds OpenBLAS runs an item on one thread anyway
 * (its own threshold is 64^3), so batches of such items always spread over
 * OpenMP threads; inside a parallel region the OpenMP build of OpenBLAS runs
 * serially, so the two never oversubscribe the cores. */
#define GEMM_SMALL_ITEM (64 * 64 * 64)

/* C[M,N] = alpha * op(A) · op(B) + beta * C for one item. */
static void gemm_one(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                     const float *A, const float *B, float beta, float *C)
{
    if (K == 0) {
        /* CBLAS rejects a leading dimension of 0 (xerbla prints and returns
         * without touching C); the contract says C = beta * C. */
        for (int64_t i = 0; i < M * N; i++)
            C[i] = beta == 0.0f ? 0.0f : beta * C[i];
        return;
    }
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, (blasint)M, (blasint)N, (blasint)K, alpha,
                A, (blasint)(trans_a ? M : K), B, (blasint)(trans_b ? K : N), beta, C,
                (blasint)N);
}

void lathe_cpu_gemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                    const float *A, const float *B, float beta, float *C, int64_t batch,
                    int64_t sa, int64_t sb, int64_t sc)
{
    if (M <= 0 || N <= 0 || batch <= 0)
        return;
    if (batch == 1) {
        gemm_one(trans_a, trans_b, M, N, K, alpha, A, B, beta, C);
        return;
    }
    /* Whole items per thread beat one item split across threads (measured
     * 1.5-3x on attention-sized items, 48 x [256..1024]^2 x 64, 2 cores)
     * whenever the items divide evenly or are many; a few large uneven items
     * are better left to BLAS's own threads. */
#ifdef _OPENMP
    int64_t nt = omp_get_max_threads();
#else
    int64_t nt = 1;
#endif
    int per_item = M * N * K <= GEMM_SMALL_ITEM || batch % nt == 0 || batch >= 4 * nt;
#pragma omp parallel for schedule(static) if (per_item)
    for (int64_t i = 0; i < batch; i++)
        gemm_one(trans_a, trans_b, M, N, K, alpha, A + i * sa, B + i * sb, beta, C + i * sc);
}
