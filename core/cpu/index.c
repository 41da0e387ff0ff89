/* core/cpu/index.c — embedding lookup and per-row gather (lathe/backend.h).
 * Indices are trusted here; the ops check them. */
#include <string.h>

#include "cpu.h"

#define PAR_MIN 32768
/* Channels one thread owns in embedding_backward. */
#define CHAN_BLOCK 64

void lathe_cpu_embedding_forward(float *out /* [N,C] */, const int32_t *ids /* [N] */,
                                 const float *w /* [V,C] */, int64_t N, int64_t C)
{
#pragma omp parallel for schedule(static) if (N * C > PAR_MIN)
    for (int64_t n = 0; n < N; n++)
        memcpy(out + n * C, w + (int64_t)ids[n] * C, sizeof(float) * (size_t)C);
}

void lathe_cpu_embedding_backward(float *dw /* [V,C] */, const float *dout /* [N,C] */,
                                  const int32_t *ids /* [N] */, int64_t N, int64_t C)
{
    if (!dw)
        return;
    /* Rows may repeat an id, so threads split the channels, never the rows:
     * each dw element is then summed by one thread, in row order, and the
     * result is the same for any thread count. */
    int64_t nblk = (C + CHAN_BLOCK - 1) / CHAN_BLOCK;
#pragma omp parallel for schedule(static) if (N * C > PAR_MIN && nblk > 1)
    for (int64_t blk = 0; blk < nblk; blk++) {
        int64_t c0 = blk * CHAN_BLOCK;
        int64_t w = C - c0 < CHAN_BLOCK ? C - c0 : CHAN_BLOCK;
        for (int64_t n = 0; n < N; n++) {
            float *restrict d = dw + (int64_t)ids[n] * C + c0;
            const float *restrict g = dout + n * C + c0;
#pragma omp simd
            for (int64_t c = 0; c < w; c++)
                d[c] += g[c];
        }
    }
}

void lathe_cpu_gather_forward(float *out /* [N,K] */, const float *x /* [N,V] */,
                              const int32_t *idx /* [N,K] */, int64_t N, int64_t V, int64_t K)
{
#pragma omp parallel for schedule(static) if (N * K > PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
        const float *xr = x + n * V;
        const int32_t *ir = idx + n * K;
        float *o = out + n * K;
        for (int64_t k = 0; k < K; k++)
            o[k] = xr[ir[k]];
    }
}

void lathe_cpu_gather_backward(float *dx /* [N,V] */, const float *dout /* [N,K] */,
                               const int32_t *idx /* [N,K] */, int64_t N, int64_t V, int64_t K)
{
    if (!dx)
        return;
    /* Row n of dx is touched only by row n of idx: rows are independent. */
#pragma omp parallel for schedule(static) if (N * K > PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
        float *dr = dx + n * V;
        const int32_t *ir = idx + n * K;
        const float *g = dout + n * K;
        for (int64_t k = 0; k < K; k++)
            dr[ir[k]] += g[k];
    }
}
