/* plugins/cuda/kernels.h — the CUDA backend's slots, one declaration per
 * slot of struct lathe_backend_ops (lathe/backend.h has each contract;
 * core/cpu/ has the reference semantics). Shared by plugin.c (C) and the
 * .cu files (C++ with C linkage). Internal to lathe-cuda.so.
 *
 * Errors: slots return void, so a failing CUDA or cuBLAS call is recorded
 * in a backend-global ("file:line: call: reason", the first one wins) and
 * reported by the next slot that returns a status: copy, which every
 * training step calls to read the loss. alloc reports by returning NULL. */
#ifndef LATHE_PLUGINS_CUDA_KERNELS_H
#define LATHE_PLUGINS_CUDA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* memory.cu */
void *lathe_cuda_alloc(size_t n);
void lathe_cuda_free(void *p);
int lathe_cuda_copy(void *dst, const void *src, size_t n, int to_device);
void lathe_cuda_zero(void *p, size_t n);

/* gemm.cu */
void lathe_cuda_gemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                     const float *A, const float *B, float beta, float *C, int64_t batch,
                     int64_t sa, int64_t sb, int64_t sc);

/* gemm.cu, ABI 1.2 mixed precision */
void lathe_cuda_gemm_lowp(int dtype, int round_c, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                          float alpha, const float *A, const float *B, float beta, float *C, int64_t batch,
                          int64_t sa, int64_t sb, int64_t sc);
void lathe_cuda_round_to(float *out, const float *x, int64_t n, int dtype);

/* elementwise.cu */
void lathe_cuda_bias_forward(float *out, const float *bias, int64_t N, int64_t C);
void lathe_cuda_bias_backward(float *dbias, const float *dout, int64_t N, int64_t C);
void lathe_cuda_binary_forward(int op, float *out, const float *a, const float *b, int64_t N, int64_t M);
void lathe_cuda_binary_backward(int op, float *da, float *db, const float *dout, const float *a,
                                const float *b, int64_t N, int64_t M);
void lathe_cuda_scale(float *out, const float *a, float s, int64_t n, int acc);
void lathe_cuda_sum(float *out, const float *x, int64_t n);
void lathe_cuda_fill_add(float *out, const float *g, float s, int64_t n);
void lathe_cuda_gelu_forward(float *out, const float *x, int64_t n);
void lathe_cuda_gelu_backward(float *dx, const float *dout, const float *x, int64_t n);
void lathe_cuda_silu_forward(float *out, const float *x, int64_t n);
void lathe_cuda_silu_backward(float *dx, const float *dout, const float *x, int64_t n);
void lathe_cuda_swiglu_forward(float *out, const float *gate, const float *up, int64_t n);
void lathe_cuda_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                                const float *up, int64_t n);
void lathe_cuda_unary_forward(int op, float *out, const float *x, int64_t n, float a, float b);
void lathe_cuda_unary_backward(int op, float *dx, const float *dout, const float *x, const float *out,
                               int64_t n, float a, float b);

/* index.cu */
void lathe_cuda_embedding_forward(float *out, const int32_t *ids, const float *w, int64_t N, int64_t C);
void lathe_cuda_embedding_backward(float *dw, const float *dout, const int32_t *ids, int64_t N, int64_t C);
void lathe_cuda_gather_forward(float *out, const float *x, const int32_t *idx, int64_t N, int64_t V, int64_t K);
void lathe_cuda_gather_backward(float *dx, const float *dout, const int32_t *idx, int64_t N, int64_t V, int64_t K);
void lathe_cuda_copy2d(float *dst, int64_t dst_ld, const float *src, int64_t src_ld, int64_t rows,
                       int64_t cols, int acc);
void lathe_cuda_transpose(float *out, const float *x, int ndim, const int64_t *shape, int d0, int d1,
                          int acc);

/* norm.cu */
void lathe_cuda_layernorm_forward(float *out, float *mean, float *rstd, const float *x, const float *w,
                                  const float *b, int64_t N, int64_t C, float eps);
void lathe_cuda_layernorm_backward(float *dx, float *dw, float *db, const float *dout, const float *x,
                                   const float *w, const float *mean, const float *rstd, int64_t N,
                                   int64_t C);
void lathe_cuda_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int64_t N,
                                int64_t C, float eps);
void lathe_cuda_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                                 const float *rstd, int64_t N, int64_t C);

/* softmax.cu */
void lathe_cuda_softmax_forward(float *out, const float *x, int64_t N, int64_t C);
void lathe_cuda_softmax_backward(float *dx, const float *dout, const float *out, int64_t N, int64_t C);
void lathe_cuda_log_softmax_forward(float *out, const float *x, int64_t N, int64_t C);
void lathe_cuda_log_softmax_backward(float *dx, const float *dout, const float *out, int64_t N, int64_t C);
void lathe_cuda_cross_entropy_forward(float *loss, float *lse, const float *logits, const int32_t *targets,
                                      int64_t N, int64_t V, int32_t ignore_index, float smoothing);
void lathe_cuda_cross_entropy_backward(float *dlogits, const float *dloss, const float *logits,
                                       const float *lse, const int32_t *targets, int64_t N, int64_t V,
                                       int32_t ignore_index, float smoothing);

/* attention.cu */
void lathe_cuda_rope_forward(float *out, const float *x, const int32_t *pos, int64_t pos_bstride,
                             const float *inv_freq, int64_t B, int64_t T, int64_t H, int64_t D);
void lathe_cuda_rope_backward(float *dx, const float *dout, const int32_t *pos, int64_t pos_bstride,
                              const float *inv_freq, int64_t B, int64_t T, int64_t H, int64_t D);
void lathe_cuda_attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                                  const int32_t *seg, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                                  int64_t D, float scale);
void lathe_cuda_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                   const float *k, const float *v, const float *att, int64_t B, int64_t T,
                                   int64_t H, int64_t Hkv, int64_t D, float scale);
void lathe_cuda_attention_lse_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                      const int32_t *seg, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                                      float scale);
void lathe_cuda_attention_lse_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                       const float *k, const float *v, const float *out, const float *lse,
                                       const int32_t *seg, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                                       float scale);
void lathe_cuda_attention_cached_forward(float *out, const float *q, const float *kc, const float *vc,
                                         const int32_t *kseg, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                                         int64_t D, int64_t Tmax, int64_t len, float scale);

/* optim.cu */
void lathe_cuda_sumsq(double *out, const float *x, int64_t n);
void lathe_cuda_adamw_step(float *p, const float *g, float *m, float *v, int64_t n, float lr, float b1,
                           float b2, float eps, float wd, float bc1, float bc2);
void lathe_cuda_convert(void *dst, int dst_dtype, const void *src, int src_dtype, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
