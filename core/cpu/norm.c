/* core/cpu/norm.c — LayerNorm (Ba et al. 2016) and RMSNorm (Zhang &
 * Sennrich 2019) on rows of C channels.
 *
 * Shapes: x, out, dx, dout [N, C]; w, b, dw, db [C]; mean, rstd [N].
 * Rows are independent in the forward and in dx, so those loops run in
 * parallel over rows. dw and db sum over rows; they run in parallel over
 * column blocks instead, each thread walking every row for its own columns,
 * so the sums never race and come out the same for any thread count. */
#include <math.h>

#include "cpu/cpu.h"

/* below this many elements a parallel region costs more than it saves */
#define NORM_PAR_MIN 16384
/* columns per parameter-gradient task: 64 floats, one cache-line multiple */
#define NORM_COL_BLOCK 64

void lathe_cpu_layernorm_forward(float *out, float *mean, float *rstd, const float *x,
                                 const float *w, const float *b, int64_t N, int64_t C, float eps)
{
#pragma omp parallel for schedule(static) if (N * C >= NORM_PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
        const float *xr = x + n * C; /* [C] */
        float *o = out + n * C;      /* [C] */
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t c = 0; c < C; c++)
            s += xr[c];
        float m = s / (float)C;
        /* two passes: the variance of centred values does not cancel */
        float v = 0.0f;
#pragma omp simd reduction(+ : v)
        for (int64_t c = 0; c < C; c++) {
            float d = xr[c] - m;
            v += d * d;
        }
        float rs = 1.0f / sqrtf(v / (float)C + eps);
        if (b) {
#pragma omp simd
            for (int64_t c = 0; c < C; c++)
                o[c] = (xr[c] - m) * rs * w[c] + b[c];
        } else {
#pragma omp simd
            for (int64_t c = 0; c < C; c++)
                o[c] = (xr[c] - m) * rs * w[c];
        }
        mean[n] = m;
        rstd[n] = rs;
    }
}

void lathe_cpu_layernorm_backward(float *dx, float *dw, float *db, const float *dout,
                                  const float *x, const float *w, const float *mean,
                                  const float *rstd, int64_t N, int64_t C)
{
    /* With xh = (x - mean) rstd and g = dout * w:
     * dx = rstd (g - mean(g) - xh mean(g xh)) */
    if (dx) {
#pragma omp parallel for schedule(static) if (N * C >= NORM_PAR_MIN)
        for (int64_t n = 0; n < N; n++) {
            const float *xr = x + n * C;    /* [C] */
            const float *dr = dout + n * C; /* [C] */
            float *dxr = dx + n * C;        /* [C] */
            float m = mean[n], rs = rstd[n];
            float sg = 0.0f, sgx = 0.0f;
#pragma omp simd reduction(+ : sg, sgx)
            for (int64_t c = 0; c < C; c++) {
                float g = dr[c] * w[c];
                sg += g;
                sgx += g * (xr[c] - m) * rs;
            }
            sg /= (float)C;
            sgx /= (float)C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                float xh = (xr[c] - m) * rs;
                dxr[c] += rs * (dr[c] * w[c] - sg - xh * sgx);
            }
        }
    }
    if (dw || db) {
        int64_t nblk = (C + NORM_COL_BLOCK - 1) / NORM_COL_BLOCK;
#pragma omp parallel for schedule(static) if (N * C >= NORM_PAR_MIN)
        for (int64_t blk = 0; blk < nblk; blk++) {
            int64_t c0 = blk * NORM_COL_BLOCK;
            int64_t c1 = c0 + NORM_COL_BLOCK < C ? c0 + NORM_COL_BLOCK : C;
            float aw[NORM_COL_BLOCK] = {0}, ab[NORM_COL_BLOCK] = {0};
            for (int64_t n = 0; n < N; n++) {
                const float *xr = x + n * C + c0;
                const float *dr = dout + n * C + c0;
                float m = mean[n], rs = rstd[n];
#pragma omp simd
                for (int64_t c = 0; c < c1 - c0; c++) {
                    aw[c] += dr[c] * (xr[c] - m) * rs;
                    ab[c] += dr[c];
                }
            }
            for (int64_t c = c0; c < c1; c++) {
                if (dw)
                    dw[c] += aw[c - c0];
                if (db)
                    db[c] += ab[c - c0];
            }
        }
    }
}

void lathe_cpu_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w,
                               int64_t N, int64_t C, float eps)
{
#pragma omp parallel for schedule(static) if (N * C >= NORM_PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
        const float *xr = x + n * C; /* [C] */
        float *o = out + n * C;      /* [C] */
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int64_t c = 0; c < C; c++)
            ss += xr[c] * xr[c];
        float rs = 1.0f / sqrtf(ss / (float)C + eps);
        if (w) {
#pragma omp simd
            for (int64_t c = 0; c < C; c++)
                o[c] = xr[c] * rs * w[c];
        } else {
#pragma omp simd
            for (int64_t c = 0; c < C; c++)
                o[c] = xr[c] * rs;
        }
        rstd[n] = rs;
    }
}

void lathe_cpu_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x,
                                const float *w, const float *rstd, int64_t N, int64_t C)
{
    /* With xh = x rstd and g = dout * w: dx = rstd (g - xh mean(g xh)) */
    if (dx) {
#pragma omp parallel for schedule(static) if (N * C >= NORM_PAR_MIN)
        for (int64_t n = 0; n < N; n++) {
            const float *xr = x + n * C;    /* [C] */
            const float *dr = dout + n * C; /* [C] */
            float *dxr = dx + n * C;        /* [C] */
            float rs = rstd[n];
            float sgx = 0.0f;
            if (w) {
#pragma omp simd reduction(+ : sgx)
                for (int64_t c = 0; c < C; c++)
                    sgx += dr[c] * w[c] * xr[c];
            } else {
#pragma omp simd reduction(+ : sgx)
                for (int64_t c = 0; c < C; c++)
                    sgx += dr[c] * xr[c];
            }
            /* mean(g xh) = rstd sgx / C; times xh = x rstd */
            float k = sgx * rs * rs / (float)C;
            if (w) {
#pragma omp simd
                for (int64_t c = 0; c < C; c++)
                    dxr[c] += rs * (dr[c] * w[c] - xr[c] * k);
            } else {
#pragma omp simd
                for (int64_t c = 0; c < C; c++)
                    dxr[c] += rs * (dr[c] - xr[c] * k);
            }
        }
    }
    if (dw) {
        int64_t nblk = (C + NORM_COL_BLOCK - 1) / NORM_COL_BLOCK;
#pragma omp parallel for schedule(static) if (N * C >= NORM_PAR_MIN)
        for (int64_t blk = 0; blk < nblk; blk++) {
            int64_t c0 = blk * NORM_COL_BLOCK;
            int64_t c1 = c0 + NORM_COL_BLOCK < C ? c0 + NORM_COL_BLOCK : C;
            float aw[NORM_COL_BLOCK] = {0};
            for (int64_t n = 0; n < N; n++) {
                const float *xr = x + n * C + c0;
                const float *dr = dout + n * C + c0;
                float rs = rstd[n];
#pragma omp simd
                for (int64_t c = 0; c < c1 - c0; c++)
                    aw[c] += dr[c] * xr[c] * rs;
            }
            for (int64_t c = c0; c < c1; c++)
                dw[c] += aw[c - c0];
        }
    }
}
