/* core/cpu/copy.c — strided 2-D copies and dim swaps (lathe/backend.h). */
#include <string.h>

#include "cpu.h"

#define PAR_MIN 32768
/* Side of the square tiles used when the swapped dims are the innermost
 * ones (a plain matrix transpose), so reads and writes both stay in cache. */
#define TILE 32

void lathe_cpu_copy2d(float *dst /* [rows, dst_ld] */, int64_t dst_ld,
                      const float *src /* [rows, src_ld] */, int64_t src_ld, int64_t rows,
                      int64_t cols, int acc)
{
    if (rows <= 0 || cols <= 0)
        return;
    if (!acc && dst_ld == cols && src_ld == cols && rows * cols <= PAR_MIN) {
        memcpy(dst, src, sizeof(float) * (size_t)(rows * cols));
        return;
    }
    if (rows == 1) {
        /* One long row: split it so that both threads work. */
        if (acc) {
#pragma omp parallel for simd schedule(static) if (cols > PAR_MIN)
            for (int64_t c = 0; c < cols; c++)
                dst[c] += src[c];
        } else {
#pragma omp parallel for simd schedule(static) if (cols > PAR_MIN)
            for (int64_t c = 0; c < cols; c++)
                dst[c] = src[c];
        }
        return;
    }
#pragma omp parallel for schedule(static) if (rows * cols > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        float *restrict d = dst + r * dst_ld;
        const float *restrict s = src + r * src_ld;
        if (acc) {
#pragma omp simd
            for (int64_t c = 0; c < cols; c++)
                d[c] += s[c];
        } else {
            memcpy(d, s, sizeof(float) * (size_t)cols);
        }
    }
}

/* Rows [i0, i0 + TILE) of the matrix x[S0, S1] written transposed into
 * out[S1, S0], tile by tile so that reads and writes both stay in cache. */
static void transpose_tile_rows(float *restrict out /* [S1, S0] */,
                                const float *restrict x /* [S0, S1] */, int64_t S0, int64_t S1,
                                int64_t i0, int acc)
{
    int64_t i1 = i0 + TILE < S0 ? i0 + TILE : S0;
    for (int64_t j0 = 0; j0 < S1; j0 += TILE) {
        int64_t j1 = j0 + TILE < S1 ? j0 + TILE : S1;
        for (int64_t j = j0; j < j1; j++) {
            float *o = out + j * S0;
            if (acc)
                for (int64_t i = i0; i < i1; i++)
                    o[i] += x[i * S1 + j];
            else
                for (int64_t i = i0; i < i1; i++)
                    o[i] = x[i * S1 + j];
        }
    }
}

void lathe_cpu_transpose(float *out /* shape with d0, d1 swapped */,
                         const float *x /* shape[ndim] */, int ndim, const int64_t *shape,
                         int d0, int d1, int acc)
{
    if (d0 > d1) {
        int t = d0;
        d0 = d1;
        d1 = t;
    }
    /* x viewed as [A, S0, B, S1, C]; out is [A, S1, B, S0, C]. */
    int64_t A = 1, B = 1, C = 1;
    for (int d = 0; d < d0; d++)
        A *= shape[d];
    for (int d = d0 + 1; d < d1; d++)
        B *= shape[d];
    for (int d = d1 + 1; d < ndim; d++)
        C *= shape[d];
    int64_t S0 = shape[d0], S1 = shape[d1];
    int64_t total = A * S0 * B * (d0 == d1 ? 1 : S1) * C;
    if (total <= 0)
        return;
    if (d0 == d1 || S0 == 1 || S1 == 1) {
        /* Swapping a dim of size 1 moves nothing. */
        lathe_cpu_copy2d(out, total, x, total, 1, total, acc);
        return;
    }
    if (B == 1 && C == 1) {
        /* Innermost matrices [S0, S1], A of them; threads take bands of
         * TILE source rows, which write disjoint parts of out. */
        int64_t bands = (S0 + TILE - 1) / TILE;
#pragma omp parallel for schedule(static) if (total > PAR_MIN)
        for (int64_t ab = 0; ab < A * bands; ab++) {
            int64_t a = ab / bands;
            transpose_tile_rows(out + a * S0 * S1, x + a * S0 * S1, S0, S1, (ab % bands) * TILE,
                                acc);
        }
        return;
    }
    /* General case: rows of C contiguous elements, out walked in order. */
    int64_t outer = A * S1;
#pragma omp parallel for schedule(static) if (total > PAR_MIN)
    for (int64_t o = 0; o < outer; o++) {
        int64_t a = o / S1, j = o % S1;
        for (int64_t b = 0; b < B; b++) {
            for (int64_t i = 0; i < S0; i++) {
                float *restrict dst = out + (((a * S1 + j) * B + b) * S0 + i) * C;
                const float *restrict src = x + (((a * S0 + i) * B + b) * S1 + j) * C;
                if (acc) {
#pragma omp simd
                    for (int64_t c = 0; c < C; c++)
                        dst[c] += src[c];
                } else {
                    memcpy(dst, src, sizeof(float) * (size_t)C);
                }
            }
        }
    }
}
