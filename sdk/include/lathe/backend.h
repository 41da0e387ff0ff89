/* lathe/backend.h — the compute backend: memory and kernels.
 *
 * The autograd ops (ops.h) check shapes, allocate results and record the
 * tape; the arithmetic happens here, through one ops struct per device. The
 * CPU backend is built into liblathe; a GPU backend is a plugin of kind
 * LATHE_KIND_BACKEND filling the same struct with device kernels, so model
 * code never changes.
 *
 * Conventions (every kernel):
 *  - all float pointers are f32 device buffers, contiguous, row-major;
 *  - `_forward` writes (=) its outputs; `_backward` ACCUMULATES (+=) into its
 *    gradient outputs, so a tensor used twice collects both contributions;
 *  - a NULL gradient pointer in a `_backward` means "not needed: skip";
 *  - outputs come first, then inputs, then sizes (llm.c's order).
 * Shape legend as in ops.h.
 */
#ifndef LATHE_BACKEND_H
#define LATHE_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct lathe_backend_ops {
    uint32_t size;      /* sizeof(struct lathe_backend_ops) of the builder */
    const char *name;   /* "cpu", "cuda" */
    int device;         /* enum lathe_device */

    /* ---- memory (all required) ---- */
    /* A buffer of n bytes (contents undefined), or NULL. */
    void *(*alloc)(size_t n);
    void (*free)(void *p);
    /* Host <-> device copies; to_device 1: host src -> device dst. */
    int (*copy)(void *dst, const void *src, size_t n, int to_device);
    void (*zero)(void *p, size_t n);

    /* ---- GEMM ---- */
    /* Row-major C[M,N] = alpha * op(A) · op(B) + beta * C, op(X) = X or X^T
     * (A is [M,K], or [K,M] when trans_a; B is [K,N], or [N,K] when trans_b).
     * Repeated `batch` times with element strides sa, sb, sc between items
     * (sb = 0 shares B). */
    void (*gemm)(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                 float alpha, const float *A, const float *B, float beta, float *C,
                 int64_t batch, int64_t sa, int64_t sb, int64_t sc);

    /* ---- bias / broadcast elementwise ---- */
    /* out[N,C] += bias[C] */
    void (*bias_forward)(float *out, const float *bias, int64_t N, int64_t C);
    /* dbias[C] += sum_n dout[N,C] */
    void (*bias_backward)(float *dbias, const float *dout, int64_t N, int64_t C);
    /* op 0 add, 1 sub, 2 mul: out[n] = a[n] op b[n % M]  (N % M == 0) */
    void (*binary_forward)(int op, float *out, const float *a, const float *b, int64_t N, int64_t M);
    /* da[N], db[M] (+=) for out = a op b; a, b needed only for mul */
    void (*binary_backward)(int op, float *da, float *db, const float *dout,
                            const float *a, const float *b, int64_t N, int64_t M);
    /* out[n] = a[n] * s  (used for scale and its backward, with +=: acc) */
    void (*scale)(float *out, const float *a, float s, int64_t n, int acc);
    /* out[0] = sum x[n] (written, not accumulated); computed in double */
    void (*sum)(float *out, const float *x, int64_t n);
    /* out[n] += g[0] * s (backward of sum/mean) */
    void (*fill_add)(float *out, const float *g, float s, int64_t n);

    /* ---- embedding ---- */
    /* out[N,C] = w[ids[n], :] */
    void (*embedding_forward)(float *out, const int32_t *ids, const float *w, int64_t N, int64_t C);
    /* dw[ids[n], :] += dout[n, :] */
    void (*embedding_backward)(float *dw, const float *dout, const int32_t *ids, int64_t N, int64_t C);

    /* ---- normalisation ---- */
    /* out[N,C], mean[N], rstd[N] from x[N,C], w[C], b[C] (b may be NULL) */
    void (*layernorm_forward)(float *out, float *mean, float *rstd, const float *x,
                              const float *w, const float *b, int64_t N, int64_t C, float eps);
    void (*layernorm_backward)(float *dx, float *dw, float *db, const float *dout,
                               const float *x, const float *w, const float *mean,
                               const float *rstd, int64_t N, int64_t C);
    /* out[N,C], rstd[N] from x[N,C], w[C] (w may be NULL) */
    void (*rmsnorm_forward)(float *out, float *rstd, const float *x, const float *w,
                            int64_t N, int64_t C, float eps);
    void (*rmsnorm_backward)(float *dx, float *dw, const float *dout, const float *x,
                             const float *w, const float *rstd, int64_t N, int64_t C);

    /* ---- activations, n elements ---- */
    void (*gelu_forward)(float *out, const float *x, int64_t n);
    void (*gelu_backward)(float *dx, const float *dout, const float *x, int64_t n);
    void (*silu_forward)(float *out, const float *x, int64_t n);
    void (*silu_backward)(float *dx, const float *dout, const float *x, int64_t n);
    void (*swiglu_forward)(float *out, const float *gate, const float *up, int64_t n);
    void (*swiglu_backward)(float *dgate, float *dup, const float *dout,
                            const float *gate, const float *up, int64_t n);

    /* ---- rotary embedding ---- */
    /* x, out [B,T,H,D]; pos [B,T] (pos_bstride = T) or [T] (pos_bstride = 0);
     * inv_freq [D/2]. backward rotates dout by the negative angle into dx. */
    void (*rope_forward)(float *out, const float *x, const int32_t *pos, int64_t pos_bstride,
                         const float *inv_freq, int64_t B, int64_t T, int64_t H, int64_t D);
    void (*rope_backward)(float *dx, const float *dout, const int32_t *pos, int64_t pos_bstride,
                          const float *inv_freq, int64_t B, int64_t T, int64_t H, int64_t D);

    /* ---- attention ---- */
    /* out [B,T,H,D]; att [B,H,T,T] saved probabilities (row i: weights over
     * j, zero where masked); q [B,T,H,D]; k, v [B,T,Hkv,D]; seg [B,T] or NULL */
    void (*attention_forward)(float *out, float *att, const float *q, const float *k,
                              const float *v, const int32_t *seg, int64_t B, int64_t T,
                              int64_t H, int64_t Hkv, int64_t D, float scale);
    void (*attention_backward)(float *dq, float *dk, float *dv, const float *dout,
                               const float *q, const float *k, const float *v,
                               const float *att, int64_t B, int64_t T, int64_t H,
                               int64_t Hkv, int64_t D, float scale);

    /* ---- softmax family, rows of C ---- */
    void (*softmax_forward)(float *out, const float *x, int64_t N, int64_t C);
    /* dx += out * (dout - sum(dout * out)) */
    void (*softmax_backward)(float *dx, const float *dout, const float *out, int64_t N, int64_t C);
    void (*log_softmax_forward)(float *out, const float *x, int64_t N, int64_t C);
    /* dx += dout - exp(out) * sum(dout) */
    void (*log_softmax_backward)(float *dx, const float *dout, const float *out, int64_t N, int64_t C);
    /* loss[N] per row (0 where ignored), lse[N] log-sum-exp, from logits[N,V] */
    void (*cross_entropy_forward)(float *loss, float *lse, const float *logits,
                                  const int32_t *targets, int64_t N, int64_t V,
                                  int32_t ignore_index, float smoothing);
    /* dlogits[N,V] += dloss[n] * (softmax - target distribution); dloss[N] */
    void (*cross_entropy_backward)(float *dlogits, const float *dloss, const float *logits,
                                   const float *lse, const int32_t *targets, int64_t N,
                                   int64_t V, int32_t ignore_index, float smoothing);

    /* ---- copies ---- */
    /* dst[r*dst_ld + c] (=, or += when acc) src[r*src_ld + c], r < rows, c < cols */
    void (*copy2d)(float *dst, int64_t dst_ld, const float *src, int64_t src_ld,
                   int64_t rows, int64_t cols, int acc);
    /* out = x with dims d0 and d1 swapped; x of `ndim` dims `shape`;
     * acc: += into out */
    void (*transpose)(float *out, const float *x, int ndim, const int64_t *shape,
                      int d0, int d1, int acc);

    /* ---- indexing ---- */
    /* out[N,K] = x[n, idx[n,k]] for x[N,V] */
    void (*gather_forward)(float *out, const float *x, const int32_t *idx, int64_t N, int64_t V, int64_t K);
    /* dx[n, idx[n,k]] += dout[n,k]   (also the forward of scatter_add) */
    void (*gather_backward)(float *dx, const float *dout, const int32_t *idx, int64_t N, int64_t V, int64_t K);

    /* ---- optimizer and utilities ---- */
    /* sum of squares of x[n] in double, written to *out (host memory) */
    void (*sumsq)(double *out, const float *x, int64_t n);
    /* AdamW on n elements, Loshchilov & Hutter decoupled decay:
     * m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
     * p -= lr * (m/bc1 / (sqrt(v/bc2) + eps) + wd * p), bc = 1 - beta^t */
    void (*adamw_step)(float *p, const float *g, float *m, float *v, int64_t n, float lr,
                       float b1, float b2, float eps, float wd, float bc1, float bc2);
    /* dtype conversion between f32 and bf16/f16 (enum lathe_dtype) */
    void (*convert)(void *dst, int dst_dtype, const void *src, int src_dtype, int64_t n);

    /* ---- ABI 1.1 ---- */
    /* Attention of T new queries over a KV cache (generation; no backward).
     * out [B,T,H,D]; q [B,T,H,D]; kc, vc [B,Tmax,Hkv,D] valid up to len;
     * query i sits at position len-T+i and attends j <= that position with
     * kseg[b,j] == kseg[b,len-T+i] (kseg [B,Tmax] or NULL: all). */
    void (*attention_cached_forward)(float *out, const float *q, const float *kc, const float *vc,
                                     const int32_t *kseg, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                                     int64_t D, int64_t Tmax, int64_t len, float scale);
    /* Elementwise unary functions of n elements (enum lathe_unary_op);
     * a, b: the op's parameters (clamp bounds). backward: dx += dout *
     * f'(x), given x and out = f(x). */
    void (*unary_forward)(int op, float *out, const float *x, int64_t n, float a, float b);
    void (*unary_backward)(int op, float *dx, const float *dout, const float *x, const float *out, int64_t n,
                           float a, float b);

    /* ---- ABI 1.2: mixed precision ---- */
    /* gemm (same arguments after the first two) whose A and B are first
     * rounded to `dtype` (LATHE_BF16 or LATHE_F16) with products summed in
     * f32: the numerics of a 16-bit tensor-core GEMM. round_c: C (after
     * alpha and beta) is then rounded to dtype too (an F16 overflow becomes
     * +-inf). Inputs are not modified. */
    void (*gemm_lowp)(int dtype, int round_c, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                      float alpha, const float *A, const float *B, float beta, float *C,
                      int64_t batch, int64_t sa, int64_t sb, int64_t sc);
    /* out[n] = x[n] rounded to dtype's nearest value (round to nearest
     * even), kept in f32; out may equal x. */
    void (*round_to)(float *out, const float *x, int64_t n, int dtype);

    /* ---- ABI 1.2: attention in O(T) memory (FlashAttention) ---- */
    /* The same attention as attention_forward (causal, grouped-query heads,
     * seg [B,T] or NULL: row i attends j <= i with seg[b,j] == seg[b,i])
     * but it saves only out [B,T,H,D] and lse [B,H,T], the natural log of
     * each row's softmax denominator, lse_i = log sum_j exp(scale q_i.k_j)
     * over the allowed j (-INFINITY for a row that may attend nothing; its
     * out row is zeros). No [B,H,T,T] buffer exists anywhere: the
     * probabilities are made tile by tile with an online softmax (Dao et
     * al. 2022, "FlashAttention"). Optional (NULL: lathe_sdpa falls back
     * to attention_forward/_backward); a backend fills both or neither. */
    void (*attention_lse_forward)(float *out, float *lse, const float *q, const float *k, const float *v,
                                  const int32_t *seg, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                                  float scale);
    /* dq [B,T,H,D], dk, dv [B,T,Hkv,D] (+=; NULL: skip) from dout, the
     * forward's inputs, its out and lse: P is recomputed from q, k and lse
     * (P_ij = exp(scale q_i.k_j - lse_i), 0 where masked) and
     * dS = P * (dO V^T - rowsum(dO * out)) * scale (Dao 2023,
     * "FlashAttention-2"). Deterministic: the same inputs give the same
     * bits on every call (no atomics; query heads sharing a kv head add
     * into dk/dv in a fixed order). */
    void (*attention_lse_backward)(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                   const float *k, const float *v, const float *out, const float *lse,
                                   const int32_t *seg, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                                   float scale);
};

enum lathe_unary_op {
    LATHE_UNARY_EXP = 0,        /* e^x */
    LATHE_UNARY_LOG,            /* ln x */
    LATHE_UNARY_RELU,           /* max(x, 0) */
    LATHE_UNARY_CLAMP,          /* min(max(x, a), b); gradient 0 outside */
    LATHE_UNARY_LOG_SIGMOID,    /* ln(1 / (1 + e^-x)), computed stably */
    LATHE_UNARY_COUNT
};

/* The backend ops now serving new tensors and ops (the CPU backend unless a
 * run selected another). */
const struct lathe_backend_ops *lathe_backend(void);
/* Select a backend; returns LATHE_EINVAL if ops->size is smaller than the
 * ABI minor-0 layout (slots appended since are optional: callers test them
 * with LATHE_OPS_HAS). */
int lathe_backend_set(const struct lathe_backend_ops *ops);
/* The built-in CPU backend (OpenBLAS + OpenMP). */
const struct lathe_backend_ops *lathe_backend_cpu(void);

#ifdef __cplusplus
}
#endif
#endif
