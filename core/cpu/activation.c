/* core/cpu/activation.c — GELU (tanh form), SiLU and SwiGLU, elementwise.
 *
 * Shapes: every pointer is [n].
 *
 * GELU, tanh approximation (Hendrycks & Gimpel 2016, as in GPT-2):
 *   gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3).
 * Since 0.5 (1 + tanh(u)) = sigmoid(2u), we evaluate x * sigmoid(2u) with the
 * overflow-free sigmoid of vmath.h: no tanhf/coshf whose infinities
 * -ffast-math would assume away (llm.c hit exactly that in its GELU backward).
 * SiLU (Elfwing et al. 2018) is x sigmoid(x); SwiGLU (Shazeer 2020) is
 * silu(gate) * up.
 *
 * Each kernel splits [0, n) into blocks for OpenMP; a block is one call of
 * a worker built per SIMD level (LATHE_VCLONES). The workers keep IEEE
 * semantics under -ffast-math (LATHE_STRICT_MATH): the GELU backward is
 * where llm.c saw fast-math break, and the SiLU derivative
 * s (1 + x (1 - s)) loses its last digits if reassociated. */
#include "cpu/cpu.h"
#include "cpu/vmath.h"

#define ACT_PAR_MIN 32768
#define ACT_BLOCK 8192

/* sqrt(2/pi) */
#define GELU_K0 0.7978845608028654f
#define GELU_K1 0.044715f

/* Runs `call` for each block [lo, lo + len) of [0, n), in parallel when n
 * pays. */
#define ACT_BLOCKS(n, call)                                                              \
    do {                                                                                 \
        const int64_t act_n_ = (n);                                                      \
        const int64_t act_nblk_ = (act_n_ + ACT_BLOCK - 1) / ACT_BLOCK;                  \
        _Pragma("omp parallel for schedule(static) if (act_n_ >= ACT_PAR_MIN)")          \
        for (int64_t b_ = 0; b_ < act_nblk_; b_++) {                                     \
            int64_t lo = b_ * ACT_BLOCK;                                                 \
            int64_t len = act_n_ - lo < ACT_BLOCK ? act_n_ - lo : ACT_BLOCK;             \
            call;                                                                        \
        }                                                                                \
    } while (0)

LATHE_VCLONES LATHE_STRICT_MATH
static void gelu_fwd_block(float *out, const float *x, int64_t n)
{
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        float u = GELU_K0 * (v + GELU_K1 * v * v * v);
        out[i] = v * lathe_vm_sigmoid(2.0f * u);
    }
}

LATHE_VCLONES LATHE_STRICT_MATH
static void gelu_bwd_block(float *dx, const float *dout, const float *x, int64_t n)
{
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        float u = GELU_K0 * (v + GELU_K1 * v * v * v);
        float du = GELU_K0 * (1.0f + 3.0f * GELU_K1 * v * v);
        float s = lathe_vm_sigmoid(2.0f * u);
        /* d/dx [x s(2u)] = s + x s (1 - s) 2 u' */
        dx[i] += dout[i] * (s + v * s * (1.0f - s) * 2.0f * du);
    }
}

LATHE_VCLONES LATHE_STRICT_MATH
static void silu_fwd_block(float *out, const float *x, int64_t n)
{
#pragma omp simd
    for (int64_t i = 0; i < n; i++)
        out[i] = x[i] * lathe_vm_sigmoid(x[i]);
}

LATHE_VCLONES LATHE_STRICT_MATH
static void silu_bwd_block(float *dx, const float *dout, const float *x, int64_t n)
{
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float s = lathe_vm_sigmoid(x[i]);
        dx[i] += dout[i] * s * (1.0f + x[i] * (1.0f - s));
    }
}

LATHE_VCLONES LATHE_STRICT_MATH
static void swiglu_fwd_block(float *out, const float *gate, const float *up, int64_t n)
{
#pragma omp simd
    for (int64_t i = 0; i < n; i++)
        out[i] = gate[i] * lathe_vm_sigmoid(gate[i]) * up[i];
}

/* dgate or dup may be NULL (not both) */
LATHE_VCLONES LATHE_STRICT_MATH
static void swiglu_bwd_block(float *dgate, float *dup, const float *dout, const float *gate,
                             const float *up, int64_t n)
{
    if (dgate && dup) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            float g = gate[i], s = lathe_vm_sigmoid(g);
            dgate[i] += dout[i] * up[i] * s * (1.0f + g * (1.0f - s));
            dup[i] += dout[i] * g * s;
        }
    } else if (dgate) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            float g = gate[i], s = lathe_vm_sigmoid(g);
            dgate[i] += dout[i] * up[i] * s * (1.0f + g * (1.0f - s));
        }
    } else {
#pragma omp simd
        for (int64_t i = 0; i < n; i++)
            dup[i] += dout[i] * gate[i] * lathe_vm_sigmoid(gate[i]);
    }
}

void lathe_cpu_gelu_forward(float *out, const float *x, int64_t n)
{
    ACT_BLOCKS(n, gelu_fwd_block(out + lo, x + lo, len));
}

void lathe_cpu_gelu_backward(float *dx, const float *dout, const float *x, int64_t n)
{
    if (dx)
        ACT_BLOCKS(n, gelu_bwd_block(dx + lo, dout + lo, x + lo, len));
}

void lathe_cpu_silu_forward(float *out, const float *x, int64_t n)
{
    ACT_BLOCKS(n, silu_fwd_block(out + lo, x + lo, len));
}

void lathe_cpu_silu_backward(float *dx, const float *dout, const float *x, int64_t n)
{
    if (dx)
        ACT_BLOCKS(n, silu_bwd_block(dx + lo, dout + lo, x + lo, len));
}

void lathe_cpu_swiglu_forward(float *out, const float *gate, const float *up, int64_t n)
{
    ACT_BLOCKS(n, swiglu_fwd_block(out + lo, gate + lo, up + lo, len));
}

void lathe_cpu_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                               const float *up, int64_t n)
{
    if (dgate || dup)
        ACT_BLOCKS(n, swiglu_bwd_block(dgate ? dgate + lo : NULL, dup ? dup + lo : NULL,
                                       dout + lo, gate + lo, up + lo, len));
}
