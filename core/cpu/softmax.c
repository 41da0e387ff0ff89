/* core/cpu/softmax.c — softmax, log-softmax and token cross-entropy over
 * rows, all max-subtracted so no exponent overflows.
 *
 * Shapes: x, out, dx, dout [N, C]; logits, dlogits [N, V]; targets, loss,
 * lse, dloss [N].
 *
 * Cross-entropy with label smoothing s (Szegedy et al. 2016, the form of
 * torch.nn.functional.cross_entropy): the target distribution is
 * q = (1 - s) onehot(t) + s / V, so
 *   loss = lse - sum_v q_v x_v = lse - (1 - s) x_t - (s / V) sum_v x_v
 *   dloss/dx_v = softmax(x)_v - q_v.
 * For a GPT-2 vocabulary a row is 200 KB, so the forward takes the max and
 * the exponential sum in one sweep (the "online softmax" rescaling of
 * Milakov & Gimelshein 2018, per cache-sized chunk) and the backward is one
 * read of the logits and one read-modify-write of dlogits. */
#include <math.h>

#include "cpu/cpu.h"
#include "cpu/vmath.h"

#define SOFTMAX_PAR_MIN 16384
/* floats per online-softmax chunk: 8 KB, well inside L1 for the second read */
#define CE_CHUNK 2048

LATHE_VINLINE float row_max(const float *x, int64_t n)
{
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t i = 0; i < n; i++)
        m = x[i] > m ? x[i] : m;
    return m;
}

/* ---- per-row workers, built per SIMD level ---- */

LATHE_VCLONES static void softmax_row(float *o, const float *x, int64_t C)
{
    float m = row_max(x, C);
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t c = 0; c < C; c++) {
        o[c] = lathe_vm_expneg(x[c] - m);
        s += o[c];
    }
    /* a row of -inf (m = -inf) would give NaN; leave it all zeros */
    float inv = s > 0.0f ? 1.0f / s : 0.0f;
#pragma omp simd
    for (int64_t c = 0; c < C; c++)
        o[c] *= inv;
}

LATHE_VCLONES static void log_softmax_row(float *o, const float *x, int64_t C)
{
    float m = row_max(x, C);
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t c = 0; c < C; c++)
        s += lathe_vm_expneg(x[c] - m);
    float shift = m + logf(s);
#pragma omp simd
    for (int64_t c = 0; c < C; c++)
        o[c] = x[c] - shift;
}

LATHE_VCLONES static void log_softmax_bwd_row(float *g, const float *d, const float *o, int64_t C)
{
    float sd = 0.0f;
#pragma omp simd reduction(+ : sd)
    for (int64_t c = 0; c < C; c++)
        sd += d[c];
    /* log-softmax values are <= 0, the domain of expneg */
#pragma omp simd
    for (int64_t c = 0; c < C; c++)
        g[c] += d[c] - lathe_vm_expneg(o[c]) * sd;
}

/* loss and log-sum-exp of one kept row x [V] with target t */
LATHE_VCLONES LATHE_STRICT_MATH
static void ce_fwd_row(float *loss, float *lse, const float *x, int64_t V, int32_t t,
                       float smoothing)
{
    float m = -INFINITY;
    double se = 0.0, sx = 0.0;
    for (int64_t c0 = 0; c0 < V; c0 += CE_CHUNK) {
        int64_t len = V - c0 < CE_CHUNK ? V - c0 : CE_CHUNK;
        const float *xc = x + c0;
        float cm = row_max(xc, len);
        if (cm > m) {
            se *= (double)lathe_vm_expneg(m - cm); /* 0 while m = -inf */
            m = cm;
        }
        float ce = 0.0f, cx = 0.0f;
#pragma omp simd reduction(+ : ce, cx)
        for (int64_t v = 0; v < len; v++) {
            ce += lathe_vm_expneg(xc[v] - m);
            cx += xc[v];
        }
        se += ce;
        sx += cx;
    }
    float l = m + logf((float)se);
    *lse = l;
    /* sx also carries any NaN/inf in the row into the loss, even when
     * smoothing is 0 (0 * NaN = NaN): a diverged run must not look fine */
    *loss = l - (1.0f - smoothing) * x[t] - (float)((double)smoothing / (double)V * sx);
}

/* g[V] += dl * (softmax(x) - q) for one kept row */
LATHE_VCLONES static void ce_bwd_row(float *g, const float *x, float dl, float lse, int64_t V,
                                     int32_t t, float smoothing)
{
    float uni = smoothing / (float)V;
#pragma omp simd
    for (int64_t v = 0; v < V; v++)
        g[v] += dl * (lathe_vm_expneg(x[v] - lse) - uni);
    g[t] -= dl * (1.0f - smoothing);
}

/* ---- kernels ---- */

void lathe_cpu_softmax_forward(float *out, const float *x, int64_t N, int64_t C)
{
#pragma omp parallel for schedule(static) if (N * C >= SOFTMAX_PAR_MIN)
    for (int64_t n = 0; n < N; n++)
        softmax_row(out + n * C, x + n * C, C);
}

void lathe_cpu_softmax_backward(float *dx, const float *dout, const float *out, int64_t N,
                                int64_t C)
{
    if (!dx)
        return;
#pragma omp parallel for schedule(static) if (N * C >= SOFTMAX_PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
        const float *d = dout + n * C; /* [C] */
        const float *o = out + n * C;  /* [C] */
        float *g = dx + n * C;         /* [C] */
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t c = 0; c < C; c++)
            dot += d[c] * o[c];
#pragma omp simd
        for (int64_t c = 0; c < C; c++)
            g[c] += o[c] * (d[c] - dot);
    }
}

void lathe_cpu_log_softmax_forward(float *out, const float *x, int64_t N, int64_t C)
{
#pragma omp parallel for schedule(static) if (N * C >= SOFTMAX_PAR_MIN)
    for (int64_t n = 0; n < N; n++)
        log_softmax_row(out + n * C, x + n * C, C);
}

void lathe_cpu_log_softmax_backward(float *dx, const float *dout, const float *out, int64_t N,
                                    int64_t C)
{
    if (!dx)
        return;
#pragma omp parallel for schedule(static) if (N * C >= SOFTMAX_PAR_MIN)
    for (int64_t n = 0; n < N; n++)
        log_softmax_bwd_row(dx + n * C, dout + n * C, out + n * C, C);
}

void lathe_cpu_cross_entropy_forward(float *loss, float *lse, const float *logits,
                                     const int32_t *targets, int64_t N, int64_t V,
                                     int32_t ignore_index, float smoothing)
{
#pragma omp parallel for schedule(static) if (N * V >= SOFTMAX_PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
        int32_t t = targets[n];
        /* out-of-range targets are refused by the op before we run */
        if (t == ignore_index || t < 0 || t >= V) {
            loss[n] = 0.0f;
            lse[n] = 0.0f;
            continue;
        }
        ce_fwd_row(&loss[n], &lse[n], logits + n * V, V, t, smoothing);
    }
}

void lathe_cpu_cross_entropy_backward(float *dlogits, const float *dloss, const float *logits,
                                      const float *lse, const int32_t *targets, int64_t N,
                                      int64_t V, int32_t ignore_index, float smoothing)
{
    if (!dlogits)
        return;
#pragma omp parallel for schedule(static) if (N * V >= SOFTMAX_PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
        int32_t t = targets[n];
        if (t == ignore_index || t < 0 || t >= V)
            continue;
        ce_bwd_row(dlogits + n * V, logits + n * V, dloss[n], lse[n], V, t, smoothing);
    }
}
