/* plugins/cuda/elementwise.cu — bias, broadcast binary ops, scale, sums,
 * GELU/SiLU/SwiGLU and the unary functions (lathe/backend.h; formulas and
 * their sources in core/cpu/elementwise.c, activation.c and unary.c).
 *
 * Reductions are deterministic: a fixed number of blocks each sum a fixed
 * slice (in double, as the CPU does), then one block adds the partials in
 * order. No float atomics anywhere, so two runs give the same bits. */
#include "common.h"

/* sqrt(2/pi) and the cubic coefficient of GPT-2's tanh GELU */
#define GELU_K0 0.7978845608028654f
#define GELU_K1 0.044715f

/* ---- column sums: d[c] += sign * sum_r x[r,c] (* y[r,c]) ---- */

/* rows per partial: one block of COLSUM_TILE x 8 threads walks this many
 * rows of its 32 columns */
#define COLSUM_ROWS 256
#define COLSUM_TILE 32

static __global__ void colsum_partial_kernel(double *part /* [nchunk, C] */, const float *x, const float *y,
                                             int64_t rows, int64_t C)
{
    __shared__ double sh[8][COLSUM_TILE + 1];
    int64_t c = (int64_t)blockIdx.x * COLSUM_TILE + threadIdx.x;
    int64_t r0 = (int64_t)blockIdx.y * COLSUM_ROWS;
    int64_t r1 = r0 + COLSUM_ROWS < rows ? r0 + COLSUM_ROWS : rows;
    double acc = 0.0;
    if (c < C) {
        for (int64_t r = r0 + threadIdx.y; r < r1; r += 8)
            acc += y ? (double)(x[r * C + c] * y[r * C + c]) : (double)x[r * C + c];
    }
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        double s = 0.0;
        for (int k = 0; k < 8; k++)
            s += sh[k][threadIdx.x];
        part[(int64_t)blockIdx.y * C + c] = s;
    }
}

static __global__ void colsum_final_kernel(float *d, float sign, const double *part, int64_t nchunk, int64_t C)
{
    LCU_GRID_STRIDE(c, C)
    {
        double s = 0.0;
        for (int64_t k = 0; k < nchunk; k++)
            s += part[k * C + c];
        d[c] += sign * (float)s;
    }
}

void lathe_cuda_colsum(float *d, float sign, const float *x, const float *y, int64_t rows, int64_t C)
{
    if (rows <= 0 || C <= 0)
        return;
    int64_t nchunk = (rows + COLSUM_ROWS - 1) / COLSUM_ROWS;
    if (nchunk > 65535) {
        lathe_cuda_fail(__FILE__, __LINE__, "column sum over %lld rows: too many", (long long)rows);
        return;
    }
    double *part = (double *)lathe_cuda_scratch(sizeof(double) * (size_t)(nchunk * C));
    if (!part)
        return;
    dim3 grid((unsigned)((C + COLSUM_TILE - 1) / COLSUM_TILE), (unsigned)nchunk);
    colsum_partial_kernel<<<grid, dim3(COLSUM_TILE, 8), 0, lathe_cuda_stream()>>>(part, x, y, rows, C);
    CU_LAUNCHED("colsum_partial_kernel");
    colsum_final_kernel<<<lcu_blocks(C), LCU_THREADS, 0, lathe_cuda_stream()>>>(d, sign, part, nchunk, C);
    CU_LAUNCHED("colsum_final_kernel");
}

/* ---- bias ---- */

static __global__ void bias_forward_kernel(float *out, const float *bias, int64_t N, int64_t C)
{
    LCU_GRID_STRIDE(i, N * C)
    out[i] += bias[i % C];
}

extern "C" void lathe_cuda_bias_forward(float *out, const float *bias, int64_t N, int64_t C)
{
    CU_ENTER();
    if (N <= 0 || C <= 0)
        return;
    bias_forward_kernel<<<lcu_blocks(N * C), LCU_THREADS, 0, lathe_cuda_stream()>>>(out, bias, N, C);
    CU_LAUNCHED("bias_forward_kernel");
}

extern "C" void lathe_cuda_bias_backward(float *dbias, const float *dout, int64_t N, int64_t C)
{
    CU_ENTER();
    if (dbias)
        lathe_cuda_colsum(dbias, 1.0f, dout, NULL, N, C);
}

/* ---- binary with suffix broadcast ---- */

static __global__ void binary_forward_kernel(int op, float *out, const float *a, const float *b, int64_t N,
                                             int64_t M)
{
    LCU_GRID_STRIDE(i, N)
    {
        float x = a[i], y = b[i % M];
        out[i] = op == 0 ? x + y : (op == 1 ? x - y : x * y);
    }
}

extern "C" void lathe_cuda_binary_forward(int op, float *out, const float *a, const float *b, int64_t N, int64_t M)
{
    CU_ENTER();
    if (N <= 0 || M <= 0)
        return;
    binary_forward_kernel<<<lcu_blocks(N), LCU_THREADS, 0, lathe_cuda_stream()>>>(op, out, a, b, N, M);
    CU_LAUNCHED("binary_forward_kernel");
}

/* d[i] += s * g[i] (* y[i % M] when y) */
static __global__ void scaled_acc_kernel(float *d, const float *g, const float *y, float s, int64_t N, int64_t M)
{
    LCU_GRID_STRIDE(i, N)
    d[i] += y ? g[i] * y[i % M] : s * g[i];
}

extern "C" void lathe_cuda_binary_backward(int op, float *da, float *db, const float *dout, const float *a,
                                           const float *b, int64_t N, int64_t M)
{
    CU_ENTER();
    if (N <= 0 || M <= 0)
        return;
    /* da and db may be one buffer (lathe_add(x, x)): separate passes, which
     * the stream runs in order */
    if (da) {
        scaled_acc_kernel<<<lcu_blocks(N), LCU_THREADS, 0, lathe_cuda_stream()>>>(da, dout, op == 2 ? b : NULL,
                                                                                   1.0f, N, M);
        CU_LAUNCHED("scaled_acc_kernel");
    }
    if (!db)
        return;
    float sign = op == 1 ? -1.0f : 1.0f;
    if (N == M) {
        /* for mul the sign is 1 and y carries the factor */
        scaled_acc_kernel<<<lcu_blocks(N), LCU_THREADS, 0, lathe_cuda_stream()>>>(db, dout, op == 2 ? a : NULL,
                                                                                   sign, N, N);
        CU_LAUNCHED("scaled_acc_kernel");
        return;
    }
    lathe_cuda_colsum(db, sign, dout, op == 2 ? a : NULL, N / M, M);
}

/* ---- scale, sum, fill_add ---- */

static __global__ void scale_kernel(float *out, const float *a, float s, int64_t n, int acc)
{
    LCU_GRID_STRIDE(i, n)
    {
        float v = a[i] * s;
        out[i] = acc ? out[i] + v : v;
    }
}

extern "C" void lathe_cuda_scale(float *out, const float *a, float s, int64_t n, int acc)
{
    CU_ENTER();
    if (n <= 0)
        return;
    scale_kernel<<<lcu_blocks(n), LCU_THREADS, 0, lathe_cuda_stream()>>>(out, a, s, n, acc);
    CU_LAUNCHED("scale_kernel");
}

/* Fixed partition for the deterministic sums (independent of the device). */
#define SUM_BLOCKS 512
#define SUM_THREADS 256

/* part[blockIdx.x] = sum of x[i] (or x[i]^2 when sq) over this block's
 * grid-stride slice, in double. */
static __global__ void sum_partial_kernel(double *part, const float *x, int64_t n, int sq)
{
    __shared__ double sh[SUM_THREADS / 32];
    double s = 0.0;
    for (int64_t i = (int64_t)blockIdx.x * SUM_THREADS + threadIdx.x; i < n; i += (int64_t)SUM_BLOCKS * SUM_THREADS) {
        double v = (double)x[i];
        s += sq ? v * v : v;
    }
    s = lcu_warp_sum_d(s);
    if ((threadIdx.x & 31) == 0)
        sh[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int w = 0; w < SUM_THREADS / 32; w++)
            t += sh[w];
        part[blockIdx.x] = t;
    }
}

/* One block adds the SUM_BLOCKS partials in a fixed tree. */
static __global__ void sum_final_kernel(float *outf, double *outd, const double *part)
{
    __shared__ double sh[SUM_THREADS / 32];
    double s = 0.0;
    for (int i = threadIdx.x; i < SUM_BLOCKS; i += SUM_THREADS)
        s += part[i];
    s = lcu_warp_sum_d(s);
    if ((threadIdx.x & 31) == 0)
        sh[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int w = 0; w < SUM_THREADS / 32; w++)
            t += sh[w];
        if (outf)
            *outf = (float)t;
        if (outd)
            *outd = t;
    }
}

/* out (device float) or outd (device double) = sum x (or sum x^2). */
void lathe_cuda_reduce(float *out, double *outd, const float *x, int64_t n, int sq)
{
    double *part = (double *)lathe_cuda_scratch(sizeof(double) * SUM_BLOCKS);
    if (!part)
        return;
    sum_partial_kernel<<<SUM_BLOCKS, SUM_THREADS, 0, lathe_cuda_stream()>>>(part, x, n, sq);
    CU_LAUNCHED("sum_partial_kernel");
    sum_final_kernel<<<1, SUM_THREADS, 0, lathe_cuda_stream()>>>(out, outd, part);
    CU_LAUNCHED("sum_final_kernel");
}

extern "C" void lathe_cuda_sum(float *out, const float *x, int64_t n)
{
    CU_ENTER();
    lathe_cuda_reduce(out, NULL, x, n > 0 ? n : 0, 0);
}

static __global__ void fill_add_kernel(float *out, const float *g, float s, int64_t n)
{
    float v = g[0] * s;
    LCU_GRID_STRIDE(i, n)
    out[i] += v;
}

extern "C" void lathe_cuda_fill_add(float *out, const float *g, float s, int64_t n)
{
    CU_ENTER();
    if (n <= 0)
        return;
    fill_add_kernel<<<lcu_blocks(n), LCU_THREADS, 0, lathe_cuda_stream()>>>(out, g, s, n);
    CU_LAUNCHED("fill_add_kernel");
}

/* ---- activations (core/cpu/activation.c has the formulas' sources) ---- */

static __global__ void gelu_forward_kernel(float *out, const float *x, int64_t n)
{
    LCU_GRID_STRIDE(i, n)
    {
        float v = x[i];
        float u = GELU_K0 * (v + GELU_K1 * v * v * v);
        out[i] = v * lcu_sigmoid(2.0f * u); /* 0.5 (1 + tanh u) = sigmoid(2u) */
    }
}

static __global__ void gelu_backward_kernel(float *dx, const float *dout, const float *x, int64_t n)
{
    LCU_GRID_STRIDE(i, n)
    {
        float v = x[i];
        float u = GELU_K0 * (v + GELU_K1 * v * v * v);
        float du = GELU_K0 * (1.0f + 3.0f * GELU_K1 * v * v);
        float s = lcu_sigmoid(2.0f * u);
        dx[i] += dout[i] * (s + v * s * (1.0f - s) * 2.0f * du);
    }
}

static __global__ void silu_forward_kernel(float *out, const float *x, int64_t n)
{
    LCU_GRID_STRIDE(i, n)
    out[i] = x[i] * lcu_sigmoid(x[i]);
}

static __global__ void silu_backward_kernel(float *dx, const float *dout, const float *x, int64_t n)
{
    LCU_GRID_STRIDE(i, n)
    {
        float s = lcu_sigmoid(x[i]);
        dx[i] += dout[i] * s * (1.0f + x[i] * (1.0f - s));
    }
}

static __global__ void swiglu_forward_kernel(float *out, const float *gate, const float *up, int64_t n)
{
    LCU_GRID_STRIDE(i, n)
    out[i] = gate[i] * lcu_sigmoid(gate[i]) * up[i];
}

static __global__ void swiglu_backward_kernel(float *dgate, float *dup, const float *dout, const float *gate,
                                              const float *up, int64_t n)
{
    LCU_GRID_STRIDE(i, n)
    {
        float g = gate[i], s = lcu_sigmoid(g);
        if (dgate)
            dgate[i] += dout[i] * up[i] * s * (1.0f + g * (1.0f - s));
        if (dup)
            dup[i] += dout[i] * g * s;
    }
}

#define LAUNCH_N(kernel, n, ...)                                                                   \
    do {                                                                                           \
        if ((n) > 0) {                                                                             \
            kernel<<<lcu_blocks(n), LCU_THREADS, 0, lathe_cuda_stream()>>>(__VA_ARGS__);          \
            CU_LAUNCHED(#kernel);                                                                  \
        }                                                                                          \
    } while (0)

extern "C" void lathe_cuda_gelu_forward(float *out, const float *x, int64_t n)
{
    CU_ENTER();
    LAUNCH_N(gelu_forward_kernel, n, out, x, n);
}

extern "C" void lathe_cuda_gelu_backward(float *dx, const float *dout, const float *x, int64_t n)
{
    CU_ENTER();
    if (dx)
        LAUNCH_N(gelu_backward_kernel, n, dx, dout, x, n);
}

extern "C" void lathe_cuda_silu_forward(float *out, const float *x, int64_t n)
{
    CU_ENTER();
    LAUNCH_N(silu_forward_kernel, n, out, x, n);
}

extern "C" void lathe_cuda_silu_backward(float *dx, const float *dout, const float *x, int64_t n)
{
    CU_ENTER();
    if (dx)
        LAUNCH_N(silu_backward_kernel, n, dx, dout, x, n);
}

extern "C" void lathe_cuda_swiglu_forward(float *out, const float *gate, const float *up, int64_t n)
{
    CU_ENTER();
    LAUNCH_N(swiglu_forward_kernel, n, out, gate, up, n);
}

extern "C" void lathe_cuda_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                                           const float *up, int64_t n)
{
    CU_ENTER();
    if (dgate || dup)
        LAUNCH_N(swiglu_backward_kernel, n, dgate, dup, dout, gate, up, n);
}

/* ---- unary functions (enum lathe_unary_op in lathe/backend.h) ---- */

enum { U_EXP = 0, U_LOG, U_RELU, U_CLAMP, U_LOG_SIGMOID };

static __global__ void unary_forward_kernel(int op, float *out, const float *x, int64_t n, float a, float b)
{
    LCU_GRID_STRIDE(i, n)
    {
        float v = x[i], r;
        switch (op) {
        case U_EXP: r = expf(v); break;
        case U_LOG: r = logf(v); break;
        case U_RELU: r = v > 0.0f ? v : 0.0f; break;
        case U_CLAMP: r = v < a ? a : (v > b ? b : v); break;
        /* log sigma(x) = min(x, 0) - log1p(e^-|x|) */
        default: r = fminf(v, 0.0f) - log1pf(expf(-fabsf(v))); break;
        }
        out[i] = r;
    }
}

static __global__ void unary_backward_kernel(int op, float *dx, const float *dout, const float *x,
                                             const float *out, int64_t n, float a, float b)
{
    LCU_GRID_STRIDE(i, n)
    {
        float g = dout[i], r;
        switch (op) {
        case U_EXP: r = g * out[i]; break;
        case U_LOG: r = g / x[i]; break;
        case U_RELU: r = x[i] > 0.0f ? g : 0.0f; break;
        case U_CLAMP: r = (x[i] >= a && x[i] <= b) ? g : 0.0f; break;
        default: r = g * (1.0f - expf(out[i])); break; /* sigma(-x) = 1 - e^{log sigma(x)} */
        }
        dx[i] += r;
    }
}

extern "C" void lathe_cuda_unary_forward(int op, float *out, const float *x, int64_t n, float a, float b)
{
    CU_ENTER();
    if (op < U_EXP || op > U_LOG_SIGMOID)
        return; /* the CPU backend does nothing for an unknown op either */
    LAUNCH_N(unary_forward_kernel, n, op, out, x, n, a, b);
}

extern "C" void lathe_cuda_unary_backward(int op, float *dx, const float *dout, const float *x, const float *out,
                                          int64_t n, float a, float b)
{
    CU_ENTER();
    if (!dx || op < U_EXP || op > U_LOG_SIGMOID)
        return;
    LAUNCH_N(unary_backward_kernel, n, op, dx, dout, x, out, n, a, b);
}
