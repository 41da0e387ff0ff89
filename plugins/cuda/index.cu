/* plugins/cuda/index.cu — embedding lookup and its gradient, per-row
 * gather/scatter, strided 2-D copies and dim swaps (lathe/backend.h).
 *
 * The embedding gradient is deterministic without float atomics, by a
 * segmented sum: the (id, position) pairs are sorted by id with CUB's stable
 * radix sort, so the rows that share an id form one run in position order;
 * the block that finds the start of a run sums its rows in that order and
 * adds the total to dw[id] once. No two blocks write one row of dw.
 *
 * The slots do not receive the vocabulary size: core checks ids on the
 * host when they live there; here negative ids are skipped (forward: zero
 * rows) and the caller must keep ids below V. */
#include <cub/device/device_radix_sort.cuh>

#include "common.h"

static __global__ void embedding_forward_kernel(float *out, const int32_t *ids, const float *w, int64_t N,
                                                int64_t C)
{
    LCU_GRID_STRIDE(i, N * C)
    {
        int64_t n = i / C, c = i % C;
        int32_t id = ids[n];
        out[i] = id >= 0 ? w[(int64_t)id * C + c] : 0.0f;
    }
}

extern "C" void lathe_cuda_embedding_forward(float *out, const int32_t *ids, const float *w, int64_t N, int64_t C)
{
    CU_ENTER();
    if (N <= 0 || C <= 0)
        return;
    embedding_forward_kernel<<<lcu_blocks(N * C), LCU_THREADS, 0, lathe_cuda_stream()>>>(out, ids, w, N, C);
    CU_LAUNCHED("embedding_forward_kernel");
}

static __global__ void iota_kernel(int32_t *v, int64_t n)
{
    LCU_GRID_STRIDE(i, n)
    v[i] = (int32_t)i;
}

/* Block s owns sorted position s if it starts a run of equal ids; it sums
 * the run's rows of dout, in position order, into dw[id]. */
static __global__ void embedding_segment_kernel(float *dw, const float *dout, const int32_t *sid,
                                                const int32_t *spos, int64_t N, int64_t C)
{
    int64_t s = blockIdx.x;
    int32_t id = sid[s];
    if (id < 0 || (s > 0 && sid[s - 1] == id))
        return;
    int64_t e = s + 1;
    while (e < N && sid[e] == id)
        e++;
    float *d = dw + (int64_t)id * C;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = 0.0f;
        for (int64_t r = s; r < e; r++)
            acc += dout[(int64_t)spos[r] * C + c];
        d[c] += acc;
    }
}

extern "C" void lathe_cuda_embedding_backward(float *dw, const float *dout, const int32_t *ids, int64_t N, int64_t C)
{
    CU_ENTER();
    if (!dw || N <= 0 || C <= 0)
        return;
    if (N > INT32_MAX) {
        lathe_cuda_fail(__FILE__, __LINE__, "embedding backward: %lld ids exceed the sort's int range", (long long)N);
        return;
    }
    cudaStream_t st = lathe_cuda_stream();
    size_t tmp = 0;
    if (CU_CHECK(cub::DeviceRadixSort::SortPairs(NULL, tmp, (const int32_t *)NULL, (int32_t *)NULL,
                                                 (const int32_t *)NULL, (int32_t *)NULL, (int)N, 0, 32, st)))
        return;
    /* scratch: sorted ids, positions in, positions out, CUB's temporary */
    size_t a = ((size_t)N * sizeof(int32_t) + 255) & ~(size_t)255;
    char *base = (char *)lathe_cuda_scratch(3 * a + tmp);
    if (!base)
        return;
    int32_t *sid = (int32_t *)base, *pin = (int32_t *)(base + a), *pout = (int32_t *)(base + 2 * a);
    iota_kernel<<<lcu_blocks(N), LCU_THREADS, 0, st>>>(pin, N);
    CU_LAUNCHED("iota_kernel");
    /* all 32 bits: negative ids sort first and are skipped */
    if (CU_CHECK(cub::DeviceRadixSort::SortPairs(base + 3 * a, tmp, ids, sid, pin, pout, (int)N, 0, 32, st)))
        return;
    embedding_segment_kernel<<<(unsigned)N, C < 256 ? 128 : 256, 0, st>>>(dw, dout, sid, pout, N, C);
    CU_LAUNCHED("embedding_segment_kernel");
}

/* ---- gather along the last dim ---- */

static __global__ void gather_forward_kernel(float *out, const float *x, const int32_t *idx, int64_t N, int64_t V,
                                             int64_t K)
{
    LCU_GRID_STRIDE(i, N * K)
    {
        int64_t n = i / K;
        int32_t j = idx[i];
        out[i] = j >= 0 && j < V ? x[n * V + j] : 0.0f;
    }
}

/* One thread per row: a row may name the same index twice, and its sums
 * then happen in k order, as on the CPU. */
static __global__ void gather_backward_kernel(float *dx, const float *dout, const int32_t *idx, int64_t N,
                                              int64_t V, int64_t K)
{
    LCU_GRID_STRIDE(n, N)
    {
        for (int64_t k = 0; k < K; k++) {
            int32_t j = idx[n * K + k];
            if (j >= 0 && j < V)
                dx[n * V + j] += dout[n * K + k];
        }
    }
}

extern "C" void lathe_cuda_gather_forward(float *out, const float *x, const int32_t *idx, int64_t N, int64_t V,
                                          int64_t K)
{
    CU_ENTER();
    if (N <= 0 || K <= 0)
        return;
    gather_forward_kernel<<<lcu_blocks(N * K), LCU_THREADS, 0, lathe_cuda_stream()>>>(out, x, idx, N, V, K);
    CU_LAUNCHED("gather_forward_kernel");
}

extern "C" void lathe_cuda_gather_backward(float *dx, const float *dout, const int32_t *idx, int64_t N, int64_t V,
                                           int64_t K)
{
    CU_ENTER();
    if (!dx || N <= 0 || K <= 0)
        return;
    gather_backward_kernel<<<lcu_blocks(N), LCU_THREADS, 0, lathe_cuda_stream()>>>(dx, dout, idx, N, V, K);
    CU_LAUNCHED("gather_backward_kernel");
}

/* ---- copies ---- */

static __global__ void copy2d_kernel(float *dst, int64_t dst_ld, const float *src, int64_t src_ld, int64_t rows,
                                     int64_t cols, int acc)
{
    LCU_GRID_STRIDE(i, rows * cols)
    {
        int64_t r = i / cols, c = i % cols;
        float v = src[r * src_ld + c];
        float *d = dst + r * dst_ld + c;
        *d = acc ? *d + v : v;
    }
}

extern "C" void lathe_cuda_copy2d(float *dst, int64_t dst_ld, const float *src, int64_t src_ld, int64_t rows,
                                  int64_t cols, int acc)
{
    CU_ENTER();
    if (rows <= 0 || cols <= 0)
        return;
    if (!acc) {
        CU_CHECK(cudaMemcpy2DAsync(dst, (size_t)dst_ld * sizeof(float), src, (size_t)src_ld * sizeof(float),
                                   (size_t)cols * sizeof(float), (size_t)rows, cudaMemcpyDeviceToDevice,
                                   lathe_cuda_stream()));
        return;
    }
    copy2d_kernel<<<lcu_blocks(rows * cols), LCU_THREADS, 0, lathe_cuda_stream()>>>(dst, dst_ld, src, src_ld, rows,
                                                                                   cols, acc);
    CU_LAUNCHED("copy2d_kernel");
}

/* x viewed as [A, S0, B, S1, C] -> out [A, S1, B, S0, C]; one thread per
 * output element, so writes are coalesced along C (and along S0 when C is 1
 * the reads stride, which a tiled kernel would fix if it ever shows). */
static __global__ void transpose_kernel(float *out, const float *x, int64_t A, int64_t S0, int64_t Bm, int64_t S1,
                                        int64_t C, int acc)
{
    int64_t total = A * S1 * Bm * S0 * C;
    LCU_GRID_STRIDE(o, total)
    {
        int64_t c = o % C, t = o / C;
        int64_t i = t % S0;
        t /= S0;
        int64_t b = t % Bm;
        t /= Bm;
        int64_t j = t % S1, a = t / S1;
        float v = x[(((a * S0 + i) * Bm + b) * S1 + j) * C + c];
        out[o] = acc ? out[o] + v : v;
    }
}

extern "C" void lathe_cuda_transpose(float *out, const float *x, int ndim, const int64_t *shape, int d0, int d1,
                                     int acc)
{
    CU_ENTER();
    if (d0 > d1) {
        int t = d0;
        d0 = d1;
        d1 = t;
    }
    int64_t A = 1, Bm = 1, C = 1;
    for (int d = 0; d < d0; d++)
        A *= shape[d];
    for (int d = d0 + 1; d < d1; d++)
        Bm *= shape[d];
    for (int d = d1 + 1; d < ndim; d++)
        C *= shape[d];
    int64_t S0 = shape[d0], S1 = d0 == d1 ? 1 : shape[d1];
    int64_t total = A * S0 * Bm * S1 * C;
    if (total <= 0)
        return;
    if (d0 == d1 || S0 == 1 || S1 == 1) {
        lathe_cuda_copy2d(out, total, x, total, 1, total, acc); /* nothing moves */
        return;
    }
    transpose_kernel<<<lcu_blocks(total), LCU_THREADS, 0, lathe_cuda_stream()>>>(out, x, A, S0, Bm, S1, C, acc);
    CU_LAUNCHED("transpose_kernel");
}
