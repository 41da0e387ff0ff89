/* core/cpu/cpu.h — the CPU backend's kernels (OpenBLAS + OpenMP), one
 * declaration per slot of struct lathe_backend_ops; see lathe/backend.h for
 * the contract of each (outputs first; _backward accumulates; NULL gradient
 * pointers are skipped). Internal to liblathe. */
#ifndef LATHE_CORE_CPU_H
#define LATHE_CORE_CPU_H

#include <lathe/backend.h>

void *lathe_cpu_alloc(size_t n);
void lathe_cpu_free(void *p);
int lathe_cpu_copy(void *dst, const void *src, size_t n, int to_device);
void lathe_cpu_zero(void *p, size_t n);

void lathe_cpu_gemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                    const float *A, const float *B, float beta, float *C, int64_t batch,
                    int64_t sa, int64_t sb, int64_t sc);

void lathe_cpu_bias_forward(float *out, const float *bias, int64_t N, int64_t C);
void lathe_cpu_bias_backward(float *dbias, const float *dout, int64_t N, int64_t C);
void lathe_cpu_binary_forward(int op, float *out, const float *a, const float *b, int64_t N, int64_t M);
void lathe_cpu_binary_backward(int op, float *da, float *db, const float *dout, const float *a,
                               const float *b, int64_t N, int64_t M);
void lathe_cpu_scale(float *out, const float *a, float s, int64_t n, int acc);
void lathe_cpu_sum(float *out, const float *x, int64_t n);
void lathe_cpu_fill_add(float *out, const float *g, float s, int64_t n);

void lathe_cpu_embedding_forward(float *out, const int32_t *ids, const float *w, int64_t N, int64_t C);
void lathe_cpu_embedding_backward(float *dw, const float *dout, const int32_t *ids, int64_t N, int64_t C);

void lathe_cpu_layernorm_forward(float *out, float *mean, float *rstd, const float *x,
                                 const float *w, const float *b, int64_t N, int64_t C, float eps);
void lathe_cpu_layernorm_backward(float *dx, float *dw, float *db, const float *dout,
                                  const float *x, const float *w, const float *mean,
                                  const float *rstd, int64_t N, int64_t C);
void lathe_cpu_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w,
                               int64_t N, int64_t C, float eps);
void lathe_cpu_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x,
                                const float *w, const float *rstd, int64_t N, int64_t C);

void lathe_cpu_gelu_forward(float *out, const float *x, int64_t n);
void lathe_cpu_gelu_backward(float *dx, const float *dout, const float *x, int64_t n);
void lathe_cpu_silu_forward(float *out, const float *x, int64_t n);
void lathe_cpu_silu_backward(float *dx, const float *dout, const float *x, int64_t n);
void lathe_cpu_swiglu_forward(float *out, const float *gate, const float *up, int64_t n);
void lathe_cpu_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                               const float *up, int64_t n);

void lathe_cpu_rope_forward(float *out, const float *x, const int32_t *pos, int64_t pos_bstride,
                            const float *inv_freq, int64_t B, int64_t T, int64_t H, int64_t D);
void lathe_cpu_rope_backward(float *dx, const float *dout, const int32_t *pos, int64_t pos_bstride,
                             const float *inv_freq, int64_t B, int64_t T, int64_t H, int64_t D);

void lathe_cpu_attention_forward(float *out, float *att, const float *q, const float *k,
                                 const float *v, const int32_t *seg, int64_t B, int64_t T,
                                 int64_t H, int64_t Hkv, int64_t D, float scale);
void lathe_cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                                  const float *q, const float *k, const float *v,
                                  const float *att, int64_t B, int64_t T, int64_t H,
                                  int64_t Hkv, int64_t D, float scale);
/* attention_flash.c (ABI 1.2): out and lse [B,H,T] instead of att */
void lathe_cpu_attention_lse_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                     const int32_t *seg, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                                     float scale);
void lathe_cpu_attention_lse_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                      const float *k, const float *v, const float *out, const float *lse,
                                      const int32_t *seg, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                                      float scale);

void lathe_cpu_softmax_forward(float *out, const float *x, int64_t N, int64_t C);
void lathe_cpu_softmax_backward(float *dx, const float *dout, const float *out, int64_t N, int64_t C);
void lathe_cpu_log_softmax_forward(float *out, const float *x, int64_t N, int64_t C);
void lathe_cpu_log_softmax_backward(float *dx, const float *dout, const float *out, int64_t N, int64_t C);
void lathe_cpu_cross_entropy_forward(float *loss, float *lse, const float *logits,
                                     const int32_t *targets, int64_t N, int64_t V,
                                     int32_t ignore_index, float smoothing);
void lathe_cpu_cross_entropy_backward(float *dlogits, const float *dloss, const float *logits,
                                      const float *lse, const int32_t *targets, int64_t N,
                                      int64_t V, int32_t ignore_index, float smoothing);

void lathe_cpu_copy2d(float *dst, int64_t dst_ld, const float *src, int64_t src_ld,
                      int64_t rows, int64_t cols, int acc);
void lathe_cpu_transpose(float *out, const float *x, int ndim, const int64_t *shape, int d0,
                         int d1, int acc);

void lathe_cpu_gather_forward(float *out, const float *x, const int32_t *idx, int64_t N, int64_t V, int64_t K);
void lathe_cpu_gather_backward(float *dx, const float *dout, const int32_t *idx, int64_t N, int64_t V, int64_t K);

void lathe_cpu_sumsq(double *out, const float *x, int64_t n);
void lathe_cpu_adamw_step(float *p, const float *g, float *m, float *v, int64_t n, float lr,
                          float b1, float b2, float eps, float wd, float bc1, float bc2);
void lathe_cpu_convert(void *dst, int dst_dtype, const void *src, int src_dtype, int64_t n);

void lathe_cpu_attention_cached_forward(float *out, const float *q, const float *kc, const float *vc,
                                       const int32_t *kseg, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                                       int64_t D, int64_t Tmax, int64_t len, float scale);
void lathe_cpu_unary_forward(int op, float *out, const float *x, int64_t n, float a, float b);
void lathe_cpu_unary_backward(int op, float *dx, const float *dout, const float *x, const float *out, int64_t n,
                              float a, float b);

/* lowp.c (ABI 1.2) */
void lathe_cpu_gemm_lowp(int dtype, int round_c, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                         float alpha, const float *A, const float *B, float beta, float *C, int64_t batch,
                         int64_t sa, int64_t sb, int64_t sc);
void lathe_cpu_round_to(float *out, const float *x, int64_t n, int dtype);

#endif
