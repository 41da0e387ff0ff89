/* plugins/cuda/softmax.cu — softmax, log-softmax and token cross-entropy
 * over rows, one block per row (formulas and sources in
 * core/cpu/softmax.c).
 *
 * Cross-entropy never materialises probabilities: the forward walks the
 * row once, each thread keeping a running maximum and a rescaled sum of
 * exponentials over its slice of the vocabulary (the online softmax of
 * Milakov & Gimelshein 2018), then the block merges the (max, sum) pairs;
 * it saves only the log-sum-exp. The backward recomputes each probability
 * from the logits and lse as it writes the gradient. */
#include "common.h"

#define SM_THREADS 256

static __global__ void softmax_forward_kernel(float *out, const float *x, int64_t C, int logsm)
{
    __shared__ float sh[32];
    const float *xr = x + (int64_t)blockIdx.x * C;
    float *o = out + (int64_t)blockIdx.x * C;
    float m = -INFINITY;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
        m = fmaxf(m, xr[c]);
    m = lcu_block_max(m, sh);
    float s = 0.0f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
        s += m == -INFINITY ? 0.0f : expf(xr[c] - m);
    s = lcu_block_sum(s, sh);
    if (logsm) {
        float shift = m + logf(s);
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
            o[c] = xr[c] - shift;
    } else {
        /* a row of -inf leaves zeros, as on the CPU */
        float inv = s > 0.0f ? 1.0f / s : 0.0f;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
            o[c] = m == -INFINITY ? 0.0f : expf(xr[c] - m) * inv;
    }
}

/* softmax: dx += out (dout - sum(dout out)); log-softmax: dx += dout -
 * exp(out) sum(dout) */
static __global__ void softmax_backward_kernel(float *dx, const float *dout, const float *out, int64_t C, int logsm)
{
    __shared__ float sh[32];
    int64_t off = (int64_t)blockIdx.x * C;
    const float *d = dout + off, *o = out + off;
    float *g = dx + off;
    float s = 0.0f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
        s += logsm ? d[c] : d[c] * o[c];
    s = lcu_block_sum(s, sh);
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
        g[c] += logsm ? d[c] - expf(o[c]) * s : o[c] * (d[c] - s);
}

static int rows_ok(int64_t N, const char *what)
{
    if (N <= INT32_MAX)
        return 1;
    lathe_cuda_fail(__FILE__, __LINE__, "%s: %lld rows", what, (long long)N);
    return 0;
}

extern "C" void lathe_cuda_softmax_forward(float *out, const float *x, int64_t N, int64_t C)
{
    CU_ENTER();
    if (N <= 0 || C <= 0 || !rows_ok(N, "softmax"))
        return;
    softmax_forward_kernel<<<(unsigned)N, SM_THREADS, 0, lathe_cuda_stream()>>>(out, x, C, 0);
    CU_LAUNCHED("softmax_forward_kernel");
}

extern "C" void lathe_cuda_softmax_backward(float *dx, const float *dout, const float *out, int64_t N, int64_t C)
{
    CU_ENTER();
    if (!dx || N <= 0 || C <= 0 || !rows_ok(N, "softmax"))
        return;
    softmax_backward_kernel<<<(unsigned)N, SM_THREADS, 0, lathe_cuda_stream()>>>(dx, dout, out, C, 0);
    CU_LAUNCHED("softmax_backward_kernel");
}

extern "C" void lathe_cuda_log_softmax_forward(float *out, const float *x, int64_t N, int64_t C)
{
    CU_ENTER();
    if (N <= 0 || C <= 0 || !rows_ok(N, "log_softmax"))
        return;
    softmax_forward_kernel<<<(unsigned)N, SM_THREADS, 0, lathe_cuda_stream()>>>(out, x, C, 1);
    CU_LAUNCHED("softmax_forward_kernel");
}

extern "C" void lathe_cuda_log_softmax_backward(float *dx, const float *dout, const float *out, int64_t N,
                                                int64_t C)
{
    CU_ENTER();
    if (!dx || N <= 0 || C <= 0 || !rows_ok(N, "log_softmax"))
        return;
    softmax_backward_kernel<<<(unsigned)N, SM_THREADS, 0, lathe_cuda_stream()>>>(dx, dout, out, C, 1);
    CU_LAUNCHED("softmax_backward_kernel");
}

/* Merge running (max, sum of e^(x - max)) pairs. */
static __device__ __forceinline__ void online_merge(float &m, float &s, float m2, float s2)
{
    if (m2 == -INFINITY)
        return;
    if (m == -INFINITY) {
        m = m2;
        s = s2;
        return;
    }
    float mm = fmaxf(m, m2);
    s = s * expf(m - mm) + s2 * expf(m2 - mm);
    m = mm;
}

static __global__ void ce_forward_kernel(float *loss, float *lse, const float *logits, const int32_t *targets,
                                         int64_t V, int32_t ignore_index, float smoothing)
{
    __shared__ float shm[32], shs[32], shx[32];
    int64_t n = blockIdx.x;
    int32_t t = targets[n];
    if (t == ignore_index || t < 0 || t >= V) {
        if (threadIdx.x == 0)
            loss[n] = lse[n] = 0.0f;
        return; /* uniform across the block */
    }
    const float *x = logits + n * V;
    float m = -INFINITY, s = 0.0f, sx = 0.0f;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
        float xv = x[v];
        if (xv > m) {
            s = (m == -INFINITY ? 0.0f : s * expf(m - xv)) + 1.0f;
            m = xv;
        } else if (m != -INFINITY) {
            s += expf(xv - m);
        }
        sx += xv; /* carries NaN/inf into the loss, as on the CPU */
    }
    /* warp merge, then the warps' results through shared memory */
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        online_merge(m, s, m2, s2);
        sx += __shfl_xor_sync(0xffffffffu, sx, o);
    }
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) {
        shm[w] = m;
        shs[w] = s;
        shx[w] = sx;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float M = -INFINITY, S = 0.0f;
        double SX = 0.0;
        for (int k = 0; k < nw; k++) {
            online_merge(M, S, shm[k], shs[k]);
            SX += shx[k];
        }
        float l = M + logf(S);
        lse[n] = l;
        loss[n] = l - (1.0f - smoothing) * x[t] - (float)((double)smoothing / (double)V * SX);
    }
}

static __global__ void ce_backward_kernel(float *dlogits, const float *dloss, const float *logits, const float *lse,
                                          const int32_t *targets, int64_t V, int32_t ignore_index, float smoothing)
{
    int64_t n = blockIdx.x;
    int32_t t = targets[n];
    if (t == ignore_index || t < 0 || t >= V)
        return;
    const float *x = logits + n * V;
    float *g = dlogits + n * V;
    float dl = dloss[n], l = lse[n], uni = smoothing / (float)V;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
        float d = dl * (expf(x[v] - l) - uni);
        if (v == t)
            d -= dl * (1.0f - smoothing);
        g[v] += d;
    }
}

extern "C" void lathe_cuda_cross_entropy_forward(float *loss, float *lse, const float *logits, const int32_t *targets,
                                                 int64_t N, int64_t V, int32_t ignore_index, float smoothing)
{
    CU_ENTER();
    if (N <= 0 || !rows_ok(N, "cross_entropy"))
        return;
    ce_forward_kernel<<<(unsigned)N, 512, 0, lathe_cuda_stream()>>>(loss, lse, logits, targets, V, ignore_index,
                                                                    smoothing);
    CU_LAUNCHED("ce_forward_kernel");
}

extern "C" void lathe_cuda_cross_entropy_backward(float *dlogits, const float *dloss, const float *logits,
                                                  const float *lse, const int32_t *targets, int64_t N, int64_t V,
                                                  int32_t ignore_index, float smoothing)
{
    CU_ENTER();
    if (!dlogits || N <= 0 || !rows_ok(N, "cross_entropy"))
        return;
    ce_backward_kernel<<<(unsigned)N, 512, 0, lathe_cuda_stream()>>>(dlogits, dloss, logits, lse, targets, V,
                                                                     ignore_index, smoothing);
    CU_LAUNCHED("ce_backward_kernel");
}
