/* core/cpu/optim.c — sum of squares, the fused AdamW update and dtype
 * conversion (lathe/backend.h). */
#include <math.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <lathe/tensor.h>

#include "cpu.h"

#define PAR_MIN 32768
#define MAX_PARTS 64
/* Elements converted per step between two 16-bit storage types. */
#define CONVERT_CHUNK 4096

void lathe_cpu_sumsq(double *out /* host scalar */, const float *x /* [n] */, int64_t n)
{
    /* One partial per thread, added in thread order, so a run is
     * reproducible for a given thread count (a reduction clause is not). */
    double part[MAX_PARTS] = {0};
    int nparts = 1;
#ifdef _OPENMP
    int want = omp_get_max_threads() < MAX_PARTS ? omp_get_max_threads() : MAX_PARTS;
#endif
#pragma omp parallel if (n > PAR_MIN) num_threads(want)
    {
#ifdef _OPENMP
        int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
        if (t == 0)
            nparts = (int)nt;
#else
        int64_t nt = 1, t = 0;
#endif
        int64_t lo = n * t / nt, hi = n * (t + 1) / nt;
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t i = lo; i < hi; i++)
            s += (double)x[i] * (double)x[i];
        part[t] = s;
    }
    double s = 0.0;
    for (int t = 0; t < nparts; t++)
        s += part[t];
    *out = s;
}

void lathe_cpu_adamw_step(float *p /* [n] */, const float *g /* [n] */, float *m /* [n] */,
                          float *v /* [n] */, int64_t n, float lr, float b1, float b2, float eps,
                          float wd, float bc1, float bc2)
{
    /* Decoupled weight decay: Loshchilov & Hutter, "Decoupled Weight Decay
     * Regularization" (ICLR 2019), Algorithm 2; moments as in Kingma & Ba,
     * "Adam" (ICLR 2015). One pass reads each array once; the loop is
     * memory-bound, and vectorises where sqrtf need not set errno
     * (-fno-math-errno). */
    const float ib1 = 1.0f - b1, ib2 = 1.0f - b2;
    const float rbc1 = 1.0f / bc1, rbc2 = 1.0f / bc2;
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float gi = g[i];
        float mi = b1 * m[i] + ib1 * gi;
        float vi = b2 * v[i] + ib2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float mhat = mi * rbc1;
        float vhat = vi * rbc2;
        p[i] -= lr * (mhat / (sqrtf(vhat) + eps) + wd * p[i]);
    }
}

void lathe_cpu_convert(void *dst, int dst_dtype, const void *src, int src_dtype, int64_t n)
{
    if (n <= 0)
        return;
    if (dst_dtype == src_dtype) {
        memcpy(dst, src, lathe_dtype_size((enum lathe_dtype)src_dtype) * (size_t)n);
        return;
    }
    if (src_dtype == LATHE_F32) {
        lathe_convert_from_f32(dst, (enum lathe_dtype)dst_dtype, src, (size_t)n);
        return;
    }
    if (dst_dtype == LATHE_F32) {
        lathe_convert_to_f32(dst, src, (enum lathe_dtype)src_dtype, (size_t)n);
        return;
    }
    /* Between two non-f32 types: through f32, a chunk at a time. */
    size_t ssz = lathe_dtype_size((enum lathe_dtype)src_dtype);
    size_t dsz = lathe_dtype_size((enum lathe_dtype)dst_dtype);
    int64_t nchunk = (n + CONVERT_CHUNK - 1) / CONVERT_CHUNK;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t ch = 0; ch < nchunk; ch++) {
        float buf[CONVERT_CHUNK];
        int64_t i0 = ch * CONVERT_CHUNK;
        size_t len = (size_t)(n - i0 < CONVERT_CHUNK ? n - i0 : CONVERT_CHUNK);
        lathe_convert_to_f32(buf, (const char *)src + (size_t)i0 * ssz,
                             (enum lathe_dtype)src_dtype, len);
        lathe_convert_from_f32((char *)dst + (size_t)i0 * dsz, (enum lathe_dtype)dst_dtype, buf,
                               len);
    }
}
