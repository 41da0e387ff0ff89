/* core/cpu/elementwise.c — bias, broadcast binary ops, scale and sums
 * (lathe/backend.h). */
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu.h"

/* Loops shorter than this run on one thread: waking the pool costs more
 * than the arithmetic. */
#define PAR_MIN 32768
/* Columns reduced together by one thread (the accumulators stay in L1). */
#define COL_BLOCK 64

/* The slice [*lo, *hi) of n items that this OpenMP thread handles (static
 * split, so the same thread count always gives the same slices). */
static void thread_range(int64_t n, int64_t *lo, int64_t *hi)
{
#ifdef _OPENMP
    int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
#else
    int64_t nt = 1, t = 0;
#endif
    *lo = n * t / nt;
    *hi = n * (t + 1) / nt;
}

void lathe_cpu_bias_forward(float *out /* [N,C] */, const float *bias /* [C] */, int64_t N,
                            int64_t C)
{
#pragma omp parallel for schedule(static) if (N * C > PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
        float *restrict o = out + n * C;
        const float *restrict b = bias;
#pragma omp simd
        for (int64_t c = 0; c < C; c++)
            o[c] += b[c];
    }
}

/* acc[c0..c0+w) = sum over rows of x[r, c] (* y[r, c] when y), in double;
 * rows of length ld. Deterministic: rows are summed in order. */
static void column_sums(double *restrict acc, const float *restrict x, const float *restrict y,
                        int64_t rows, int64_t ld, int64_t c0, int64_t w)
{
    for (int64_t c = 0; c < w; c++)
        acc[c] = 0.0;
    if (y) {
        for (int64_t r = 0; r < rows; r++) {
            const float *restrict xr = x + r * ld + c0;
            const float *restrict yr = y + r * ld + c0;
#pragma omp simd
            for (int64_t c = 0; c < w; c++)
                acc[c] += (double)(xr[c] * yr[c]);
        }
    } else {
        for (int64_t r = 0; r < rows; r++) {
            const float *restrict xr = x + r * ld + c0;
#pragma omp simd
            for (int64_t c = 0; c < w; c++)
                acc[c] += (double)xr[c];
        }
    }
}

/* d[c] += sign * sum_r x[r, c] (* y[r, c]) for c < C, x and y [rows, C].
 * Parallel over column blocks, never over rows, so no two threads write one
 * d[c] and the result does not depend on the thread count. */
static void reduce_rows_into(float *d, float sign, const float *x, const float *y, int64_t rows,
                             int64_t C)
{
    int64_t nblk = (C + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static) if (rows * C > PAR_MIN && nblk > 1)
    for (int64_t blk = 0; blk < nblk; blk++) {
        double acc[COL_BLOCK];
        int64_t c0 = blk * COL_BLOCK;
        int64_t w = C - c0 < COL_BLOCK ? C - c0 : COL_BLOCK;
        column_sums(acc, x, y, rows, C, c0, w);
        for (int64_t c = 0; c < w; c++)
            d[c0 + c] += sign * (float)acc[c];
    }
}

void lathe_cpu_bias_backward(float *dbias /* [C] */, const float *dout /* [N,C] */, int64_t N,
                             int64_t C)
{
    if (dbias)
        reduce_rows_into(dbias, 1.0f, dout, NULL, N, C);
}

/* out[i] = a[i] op b[i % M] for i in [lo, hi), walked as runs of contiguous
 * b so that the inner loops vectorise. */
static void binary_range(int op, float *out, const float *a, const float *b, int64_t lo,
                         int64_t hi, int64_t M)
{
    int64_t i = lo;
    while (i < hi) {
        int64_t j = i % M;
        int64_t len = M - j < hi - i ? M - j : hi - i;
        float *o = out + i;
        const float *x = a + i, *y = b + j;
        switch (op) {
        case 0:
#pragma omp simd
            for (int64_t k = 0; k < len; k++)
                o[k] = x[k] + y[k];
            break;
        case 1:
#pragma omp simd
            for (int64_t k = 0; k < len; k++)
                o[k] = x[k] - y[k];
            break;
        default:
#pragma omp simd
            for (int64_t k = 0; k < len; k++)
                o[k] = x[k] * y[k];
            break;
        }
        i += len;
    }
}

void lathe_cpu_binary_forward(int op, float *out /* [N] */, const float *a /* [N] */,
                              const float *b /* [M] */, int64_t N, int64_t M)
{
    if (N <= 0 || M <= 0)
        return;
#pragma omp parallel if (N > PAR_MIN)
    {
        int64_t lo, hi;
        thread_range(N, &lo, &hi);
        binary_range(op, out, a, b, lo, hi, M);
    }
}

/* da[i] += dout[i] * s (b == NULL) or dout[i] * b[i % M], i in [lo, hi). */
static void scaled_acc_range(float *da, const float *dout, const float *b, float s, int64_t lo,
                             int64_t hi, int64_t M)
{
    if (!b) {
#pragma omp simd
        for (int64_t i = lo; i < hi; i++)
            da[i] += s * dout[i];
        return;
    }
    int64_t i = lo;
    while (i < hi) {
        int64_t j = i % M;
        int64_t len = M - j < hi - i ? M - j : hi - i;
        float *d = da + i;
        const float *g = dout + i, *y = b + j;
#pragma omp simd
        for (int64_t k = 0; k < len; k++)
            d[k] += g[k] * y[k];
        i += len;
    }
}

void lathe_cpu_binary_backward(int op, float *da /* [N] */, float *db /* [M] */,
                               const float *dout /* [N] */, const float *a /* [N] */,
                               const float *b /* [M] */, int64_t N, int64_t M)
{
    if (N <= 0 || M <= 0)
        return;
    /* da and db may be the same buffer (lathe_add(x, x)), so they are
     * updated in separate passes. */
    if (da) {
#pragma omp parallel if (N > PAR_MIN)
        {
            int64_t lo, hi;
            thread_range(N, &lo, &hi);
            scaled_acc_range(da, dout, op == 2 ? b : NULL, 1.0f, lo, hi, M);
        }
    }
    if (!db)
        return;
    float sign = op == 1 ? -1.0f : 1.0f;
    if (N == M) {
#pragma omp parallel if (N > PAR_MIN)
        {
            int64_t lo, hi;
            thread_range(N, &lo, &hi);
            scaled_acc_range(db, dout, op == 2 ? a : NULL, sign, lo, hi, N);
        }
        return;
    }
    reduce_rows_into(db, sign, dout, op == 2 ? a : NULL, N / M, M);
}

void lathe_cpu_scale(float *out /* [n] */, const float *a /* [n] */, float s, int64_t n, int acc)
{
    if (acc) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            out[i] += a[i] * s;
    } else {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            out[i] = a[i] * s;
    }
}

/* Sum of x[lo, hi) in double; `omp simd` lets the compiler keep several
 * partial sums in vector lanes (a fixed order for a given build). */
static double sum_range(const float *x, int64_t lo, int64_t hi)
{
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = lo; i < hi; i++)
        s += (double)x[i];
    return s;
}

#define MAX_PARTS 64

void lathe_cpu_sum(float *out /* [1] */, const float *x /* [n] */, int64_t n)
{
    /* One partial per thread, added in thread order: reproducible for a
     * given thread count, unlike an OpenMP reduction clause. */
    double part[MAX_PARTS] = {0};
    int nparts = 1;
#ifdef _OPENMP
    int want = omp_get_max_threads() < MAX_PARTS ? omp_get_max_threads() : MAX_PARTS;
#endif
#pragma omp parallel if (n > PAR_MIN) num_threads(want)
    {
        int64_t lo, hi;
        thread_range(n, &lo, &hi);
#ifdef _OPENMP
        int t = omp_get_thread_num();
        if (t == 0)
            nparts = omp_get_num_threads();
#else
        int t = 0;
#endif
        part[t] = sum_range(x, lo, hi);
    }
    double s = 0.0;
    for (int t = 0; t < nparts; t++)
        s += part[t];
    out[0] = (float)s;
}

void lathe_cpu_fill_add(float *out /* [n] */, const float *g /* [1] */, float s, int64_t n)
{
    float v = g[0] * s;
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        out[i] += v;
}
