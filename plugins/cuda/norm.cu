/* plugins/cuda/norm.cu — LayerNorm (Ba et al. 2016) and RMSNorm (Zhang &
 * Sennrich 2019), fused: one block per row does the statistics (block
 * reductions) and the normalisation in one kernel; the backward computes dx
 * per row the same way, and the parameter gradients as deterministic column
 * sums (fixed row chunks, then the chunks in order). Formulas as in
 * core/cpu/norm.c:
 *   LayerNorm dx = rstd (g - mean(g) - xh mean(g xh)),  g = dout w
 *   RMSNorm   dx = rstd (g - xh mean(g xh)),            xh = x rstd */
#include "common.h"

#define NORM_THREADS 256
#define NORM_ROWS 128  /* rows per partial of the parameter gradients */
#define NORM_TILE 32

static __global__ void layernorm_forward_kernel(float *out, float *mean, float *rstd, const float *x, const float *w,
                                                const float *b, int64_t C, float eps)
{
    __shared__ float sh[32];
    int64_t n = blockIdx.x;
    const float *xr = x + n * C;
    float *o = out + n * C;
    float s = 0.0f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
        s += xr[c];
    float m = lcu_block_sum(s, sh) / (float)C;
    /* two passes: the variance of centred values does not cancel */
    float v = 0.0f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        float d = xr[c] - m;
        v += d * d;
    }
    float rs = 1.0f / sqrtf(lcu_block_sum(v, sh) / (float)C + eps);
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        float y = (xr[c] - m) * rs * w[c];
        o[c] = b ? y + b[c] : y;
    }
    if (threadIdx.x == 0) {
        mean[n] = m;
        rstd[n] = rs;
    }
}

extern "C" void lathe_cuda_layernorm_forward(float *out, float *mean, float *rstd, const float *x, const float *w,
                                             const float *b, int64_t N, int64_t C, float eps)
{
    CU_ENTER();
    if (N <= 0 || C <= 0)
        return;
    if (N > INT32_MAX) {
        lathe_cuda_fail(__FILE__, __LINE__, "layernorm: %lld rows", (long long)N);
        return;
    }
    layernorm_forward_kernel<<<(unsigned)N, NORM_THREADS, 0, lathe_cuda_stream()>>>(out, mean, rstd, x, w, b, C, eps);
    CU_LAUNCHED("layernorm_forward_kernel");
}

/* mean may be NULL (RMSNorm), w may be NULL (RMSNorm without weight) */
static __global__ void norm_dx_kernel(float *dx, const float *dout, const float *x, const float *w,
                                      const float *mean, const float *rstd, int64_t C)
{
    __shared__ float sh[32];
    int64_t n = blockIdx.x;
    const float *xr = x + n * C, *dr = dout + n * C;
    float *dxr = dx + n * C;
    float m = mean ? mean[n] : 0.0f, rs = rstd[n];
    float sg = 0.0f, sgx = 0.0f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        float g = w ? dr[c] * w[c] : dr[c];
        sg += g;
        sgx += g * (xr[c] - m) * rs;
    }
    sgx = lcu_block_sum(sgx, sh) / (float)C;
    sg = mean ? lcu_block_sum(sg, sh) / (float)C : 0.0f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        float g = w ? dr[c] * w[c] : dr[c];
        float xh = (xr[c] - m) * rs;
        dxr[c] += rs * (g - sg - xh * sgx);
    }
}

/* Partial column sums over NORM_ROWS rows: pw[chunk, c] = sum dout xh,
 * pb[chunk, c] = sum dout (when pb). */
static __global__ void norm_dparam_partial_kernel(float *pw, float *pb, const float *dout, const float *x,
                                                  const float *mean, const float *rstd, int64_t N, int64_t C)
{
    __shared__ float shw[8][NORM_TILE + 1], shb[8][NORM_TILE + 1];
    int64_t c = (int64_t)blockIdx.x * NORM_TILE + threadIdx.x;
    int64_t r0 = (int64_t)blockIdx.y * NORM_ROWS, r1 = r0 + NORM_ROWS < N ? r0 + NORM_ROWS : N;
    float aw = 0.0f, ab = 0.0f;
    if (c < C)
        for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
            float d = dout[r * C + c];
            aw += d * (x[r * C + c] - (mean ? mean[r] : 0.0f)) * rstd[r];
            ab += d;
        }
    shw[threadIdx.y][threadIdx.x] = aw;
    shb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float sw = 0.0f, sb = 0.0f;
        for (int k = 0; k < 8; k++) {
            sw += shw[k][threadIdx.x];
            sb += shb[k][threadIdx.x];
        }
        pw[(int64_t)blockIdx.y * C + c] = sw;
        if (pb)
            pb[(int64_t)blockIdx.y * C + c] = sb;
    }
}

static __global__ void norm_dparam_final_kernel(float *dw, float *db, const float *pw, const float *pb,
                                                int64_t nchunk, int64_t C)
{
    LCU_GRID_STRIDE(c, C)
    {
        float sw = 0.0f, sb = 0.0f;
        for (int64_t k = 0; k < nchunk; k++) {
            sw += pw[k * C + c];
            if (pb)
                sb += pb[k * C + c];
        }
        if (dw)
            dw[c] += sw;
        if (db)
            db[c] += sb;
    }
}

static void norm_backward(float *dx, float *dw, float *db, const float *dout, const float *x, const float *w,
                          const float *mean, const float *rstd, int64_t N, int64_t C)
{
    if (N <= 0 || C <= 0)
        return;
    if (N > INT32_MAX) {
        lathe_cuda_fail(__FILE__, __LINE__, "norm backward: %lld rows", (long long)N);
        return;
    }
    cudaStream_t st = lathe_cuda_stream();
    if (dx) {
        norm_dx_kernel<<<(unsigned)N, NORM_THREADS, 0, st>>>(dx, dout, x, w, mean, rstd, C);
        CU_LAUNCHED("norm_dx_kernel");
    }
    if (!dw && !db)
        return;
    int64_t nchunk = (N + NORM_ROWS - 1) / NORM_ROWS;
    if (nchunk > 65535) {
        lathe_cuda_fail(__FILE__, __LINE__, "norm backward: %lld rows are too many for the parameter sums",
                        (long long)N);
        return;
    }
    float *pw = (float *)lathe_cuda_scratch(sizeof(float) * (size_t)(2 * nchunk * C));
    if (!pw)
        return;
    float *pb = db ? pw + nchunk * C : NULL;
    dim3 grid((unsigned)((C + NORM_TILE - 1) / NORM_TILE), (unsigned)nchunk);
    norm_dparam_partial_kernel<<<grid, dim3(NORM_TILE, 8), 0, st>>>(pw, pb, dout, x, mean, rstd, N, C);
    CU_LAUNCHED("norm_dparam_partial_kernel");
    norm_dparam_final_kernel<<<lcu_blocks(C), LCU_THREADS, 0, st>>>(dw, db, pw, pb, nchunk, C);
    CU_LAUNCHED("norm_dparam_final_kernel");
}

extern "C" void lathe_cuda_layernorm_backward(float *dx, float *dw, float *db, const float *dout, const float *x,
                                              const float *w, const float *mean, const float *rstd, int64_t N,
                                              int64_t C)
{
    CU_ENTER();
    norm_backward(dx, dw, db, dout, x, w, mean, rstd, N, C);
}

static __global__ void rmsnorm_forward_kernel(float *out, float *rstd, const float *x, const float *w, int64_t C,
                                              float eps)
{
    __shared__ float sh[32];
    int64_t n = blockIdx.x;
    const float *xr = x + n * C;
    float *o = out + n * C;
    float ss = 0.0f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
        ss += xr[c] * xr[c];
    float rs = 1.0f / sqrtf(lcu_block_sum(ss, sh) / (float)C + eps);
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
        o[c] = w ? xr[c] * rs * w[c] : xr[c] * rs;
    if (threadIdx.x == 0)
        rstd[n] = rs;
}

extern "C" void lathe_cuda_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int64_t N,
                                           int64_t C, float eps)
{
    CU_ENTER();
    if (N <= 0 || C <= 0)
        return;
    if (N > INT32_MAX) {
        lathe_cuda_fail(__FILE__, __LINE__, "rmsnorm: %lld rows", (long long)N);
        return;
    }
    rmsnorm_forward_kernel<<<(unsigned)N, NORM_THREADS, 0, lathe_cuda_stream()>>>(out, rstd, x, w, C, eps);
    CU_LAUNCHED("rmsnorm_forward_kernel");
}

extern "C" void lathe_cuda_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                                            const float *rstd, int64_t N, int64_t C)
{
    CU_ENTER();
    norm_backward(dx, dw, NULL, dout, x, w, NULL, rstd, N, C);
}
