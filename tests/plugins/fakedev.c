/* tests/plugins/fakedev.c — a pretend device for tests (backend "fakedev").
 *
 * It says it is LATHE_DEVICE_CUDA and does the CPU backend's arithmetic, but
 * the buffers it hands out are *tagged*: the real address XOR bit 62, which
 * x86-64 (48- and 57-bit virtual addresses alike) refuses as non-canonical.
 * Every slot untags its pointer arguments and calls the CPU slot; copy
 * untags only the device side. So any host code that reads or writes a
 * device buffer directly, instead of through the backend's copy, crashes
 * here as it would read garbage on a GPU — on a machine without one.
 * Select it with `[run] backend = fakedev` beside `device = cuda`
 * (tests/e2e_fakedev.sh). Not installed. */
#include <lathe/lathe.h>

#define TAG ((uintptr_t)1 << 62)

/* the built-in CPU backend does the arithmetic */
#define cpu lathe_backend_cpu()

/* NULL stays NULL: slots take NULL for "not needed". */
static void *tag(void *p) { return p ? (void *)((uintptr_t)p ^ TAG) : NULL; }
#define U(p) ((__typeof__(&*(p)))((p) ? (void *)((uintptr_t)(p) ^ TAG) : NULL))

static void *fd_alloc(size_t n) { return tag(cpu->alloc(n)); }
static void fd_free(void *p)
{
    if (p)
        cpu->free(U((char *)p));
}
static int fd_copy(void *dst, const void *src, size_t n, int to_device)
{
    if (!n)
        return LATHE_OK; /* the device "starts" (run.c's zero-byte copy) */
    return to_device ? cpu->copy(U((char *)dst), src, n, 1) : cpu->copy(dst, U((const char *)src), n, 0);
}
static void fd_zero(void *p, size_t n) { cpu->zero(U((char *)p), n); }

static void fd_gemm(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, const float *B,
                    float beta, float *C, int64_t batch, int64_t sa, int64_t sb, int64_t sc)
{
    cpu->gemm(ta, tb, M, N, K, alpha, U(A), U(B), beta, U(C), batch, sa, sb, sc);
}
static void fd_bias_forward(float *out, const float *bias, int64_t N, int64_t C)
{
    cpu->bias_forward(U(out), U(bias), N, C);
}
static void fd_bias_backward(float *dbias, const float *dout, int64_t N, int64_t C)
{
    cpu->bias_backward(U(dbias), U(dout), N, C);
}
static void fd_binary_forward(int op, float *out, const float *a, const float *b, int64_t N, int64_t M)
{
    cpu->binary_forward(op, U(out), U(a), U(b), N, M);
}
static void fd_binary_backward(int op, float *da, float *db, const float *dout, const float *a, const float *b,
                               int64_t N, int64_t M)
{
    cpu->binary_backward(op, U(da), U(db), U(dout), U(a), U(b), N, M);
}
static void fd_scale(float *out, const float *a, float s, int64_t n, int acc) { cpu->scale(U(out), U(a), s, n, acc); }
static void fd_sum(float *out, const float *x, int64_t n) { cpu->sum(U(out), U(x), n); }
static void fd_fill_add(float *out, const float *g, float s, int64_t n) { cpu->fill_add(U(out), U(g), s, n); }
static void fd_embedding_forward(float *out, const int32_t *ids, const float *w, int64_t N, int64_t C)
{
    cpu->embedding_forward(U(out), U(ids), U(w), N, C);
}
static void fd_embedding_backward(float *dw, const float *dout, const int32_t *ids, int64_t N, int64_t C)
{
    cpu->embedding_backward(U(dw), U(dout), U(ids), N, C);
}
static void fd_layernorm_forward(float *out, float *mean, float *rstd, const float *x, const float *w, const float *b,
                                 int64_t N, int64_t C, float eps)
{
    cpu->layernorm_forward(U(out), U(mean), U(rstd), U(x), U(w), U(b), N, C, eps);
}
static void fd_layernorm_backward(float *dx, float *dw, float *db, const float *dout, const float *x, const float *w,
                                  const float *mean, const float *rstd, int64_t N, int64_t C)
{
    cpu->layernorm_backward(U(dx), U(dw), U(db), U(dout), U(x), U(w), U(mean), U(rstd), N, C);
}
static void fd_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int64_t N, int64_t C, float eps)
{
    cpu->rmsnorm_forward(U(out), U(rstd), U(x), U(w), N, C, eps);
}
static void fd_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                                const float *rstd, int64_t N, int64_t C)
{
    cpu->rmsnorm_backward(U(dx), U(dw), U(dout), U(x), U(w), U(rstd), N, C);
}
static void fd_gelu_forward(float *out, const float *x, int64_t n) { cpu->gelu_forward(U(out), U(x), n); }
static void fd_gelu_backward(float *dx, const float *dout, const float *x, int64_t n)
{
    cpu->gelu_backward(U(dx), U(dout), U(x), n);
}
static void fd_silu_forward(float *out, const float *x, int64_t n) { cpu->silu_forward(U(out), U(x), n); }
static void fd_silu_backward(float *dx, const float *dout, const float *x, int64_t n)
{
    cpu->silu_backward(U(dx), U(dout), U(x), n);
}
static void fd_swiglu_forward(float *out, const float *gate, const float *up, int64_t n)
{
    cpu->swiglu_forward(U(out), U(gate), U(up), n);
}
static void fd_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                               int64_t n)
{
    cpu->swiglu_backward(U(dgate), U(dup), U(dout), U(gate), U(up), n);
}
static void fd_rope_forward(float *out, const float *x, const int32_t *pos, int64_t pb, const float *inv_freq,
                            int64_t B, int64_t T, int64_t H, int64_t D)
{
    cpu->rope_forward(U(out), U(x), U(pos), pb, U(inv_freq), B, T, H, D);
}
static void fd_rope_backward(float *dx, const float *dout, const int32_t *pos, int64_t pb, const float *inv_freq,
                             int64_t B, int64_t T, int64_t H, int64_t D)
{
    cpu->rope_backward(U(dx), U(dout), U(pos), pb, U(inv_freq), B, T, H, D);
}
static void fd_attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                                 const int32_t *seg, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                                 float scale)
{
    cpu->attention_forward(U(out), U(att), U(q), U(k), U(v), U(seg), B, T, H, Hkv, D, scale);
}
static void fd_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                                  const float *v, const float *att, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                                  int64_t D, float scale)
{
    cpu->attention_backward(U(dq), U(dk), U(dv), U(dout), U(q), U(k), U(v), U(att), B, T, H, Hkv, D, scale);
}
static void fd_attention_lse_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                     const int32_t *seg, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                                     float scale)
{
    cpu->attention_lse_forward(U(out), U(lse), U(q), U(k), U(v), U(seg), B, T, H, Hkv, D, scale);
}
static void fd_attention_lse_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                      const float *k, const float *v, const float *out, const float *lse,
                                      const int32_t *seg, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                                      float scale)
{
    cpu->attention_lse_backward(U(dq), U(dk), U(dv), U(dout), U(q), U(k), U(v), U(out), U(lse), U(seg), B, T, H,
                                Hkv, D, scale);
}
static void fd_softmax_forward(float *out, const float *x, int64_t N, int64_t C)
{
    cpu->softmax_forward(U(out), U(x), N, C);
}
static void fd_softmax_backward(float *dx, const float *dout, const float *out, int64_t N, int64_t C)
{
    cpu->softmax_backward(U(dx), U(dout), U(out), N, C);
}
static void fd_log_softmax_forward(float *out, const float *x, int64_t N, int64_t C)
{
    cpu->log_softmax_forward(U(out), U(x), N, C);
}
static void fd_log_softmax_backward(float *dx, const float *dout, const float *out, int64_t N, int64_t C)
{
    cpu->log_softmax_backward(U(dx), U(dout), U(out), N, C);
}
static void fd_cross_entropy_forward(float *loss, float *lse, const float *logits, const int32_t *targets, int64_t N,
                                     int64_t V, int32_t ignore, float smoothing)
{
    cpu->cross_entropy_forward(U(loss), U(lse), U(logits), U(targets), N, V, ignore, smoothing);
}
static void fd_cross_entropy_backward(float *dlogits, const float *dloss, const float *logits, const float *lse,
                                      const int32_t *targets, int64_t N, int64_t V, int32_t ignore, float smoothing)
{
    cpu->cross_entropy_backward(U(dlogits), U(dloss), U(logits), U(lse), U(targets), N, V, ignore, smoothing);
}
static void fd_copy2d(float *dst, int64_t dst_ld, const float *src, int64_t src_ld, int64_t rows, int64_t cols,
                      int acc)
{
    cpu->copy2d(U(dst), dst_ld, U(src), src_ld, rows, cols, acc);
}
/* shape is a host array of dims, not a buffer */
static void fd_transpose(float *out, const float *x, int ndim, const int64_t *shape, int d0, int d1, int acc)
{
    cpu->transpose(U(out), U(x), ndim, shape, d0, d1, acc);
}
static void fd_gather_forward(float *out, const float *x, const int32_t *idx, int64_t N, int64_t V, int64_t K)
{
    cpu->gather_forward(U(out), U(x), U(idx), N, V, K);
}
static void fd_gather_backward(float *dx, const float *dout, const int32_t *idx, int64_t N, int64_t V, int64_t K)
{
    cpu->gather_backward(U(dx), U(dout), U(idx), N, V, K);
}
/* out is host memory (backend.h) */
static void fd_sumsq(double *out, const float *x, int64_t n) { cpu->sumsq(out, U(x), n); }
static void fd_adamw_step(float *p, const float *g, float *m, float *v, int64_t n, float lr, float b1, float b2,
                          float eps, float wd, float bc1, float bc2)
{
    cpu->adamw_step(U(p), U(g), U(m), U(v), n, lr, b1, b2, eps, wd, bc1, bc2);
}
static void fd_convert(void *dst, int dst_dtype, const void *src, int src_dtype, int64_t n)
{
    cpu->convert(U((char *)dst), dst_dtype, U((const char *)src), src_dtype, n);
}
static void fd_attention_cached_forward(float *out, const float *q, const float *kc, const float *vc,
                                        const int32_t *kseg, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                                        int64_t Tmax, int64_t len, float scale)
{
    cpu->attention_cached_forward(U(out), U(q), U(kc), U(vc), U(kseg), B, T, H, Hkv, D, Tmax, len, scale);
}
static void fd_unary_forward(int op, float *out, const float *x, int64_t n, float a, float b)
{
    cpu->unary_forward(op, U(out), U(x), n, a, b);
}
static void fd_unary_backward(int op, float *dx, const float *dout, const float *x, const float *out, int64_t n,
                              float a, float b)
{
    cpu->unary_backward(op, U(dx), U(dout), U(x), U(out), n, a, b);
}
static void fd_gemm_lowp(int dtype, int round_c, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                         const float *A, const float *B, float beta, float *C, int64_t batch, int64_t sa, int64_t sb,
                         int64_t sc)
{
    cpu->gemm_lowp(dtype, round_c, ta, tb, M, N, K, alpha, U(A), U(B), beta, U(C), batch, sa, sb, sc);
}
static void fd_round_to(float *out, const float *x, int64_t n, int dtype) { cpu->round_to(U(out), U(x), n, dtype); }

static const struct lathe_backend_ops fakedev_ops = {
    .size = sizeof(struct lathe_backend_ops),
    .name = "fakedev",
    .device = LATHE_DEVICE_CUDA,
    .alloc = fd_alloc,
    .free = fd_free,
    .copy = fd_copy,
    .zero = fd_zero,
    .gemm = fd_gemm,
    .bias_forward = fd_bias_forward,
    .bias_backward = fd_bias_backward,
    .binary_forward = fd_binary_forward,
    .binary_backward = fd_binary_backward,
    .scale = fd_scale,
    .sum = fd_sum,
    .fill_add = fd_fill_add,
    .embedding_forward = fd_embedding_forward,
    .embedding_backward = fd_embedding_backward,
    .layernorm_forward = fd_layernorm_forward,
    .layernorm_backward = fd_layernorm_backward,
    .rmsnorm_forward = fd_rmsnorm_forward,
    .rmsnorm_backward = fd_rmsnorm_backward,
    .gelu_forward = fd_gelu_forward,
    .gelu_backward = fd_gelu_backward,
    .silu_forward = fd_silu_forward,
    .silu_backward = fd_silu_backward,
    .swiglu_forward = fd_swiglu_forward,
    .swiglu_backward = fd_swiglu_backward,
    .rope_forward = fd_rope_forward,
    .rope_backward = fd_rope_backward,
    .attention_forward = fd_attention_forward,
    .attention_backward = fd_attention_backward,
    .softmax_forward = fd_softmax_forward,
    .softmax_backward = fd_softmax_backward,
    .log_softmax_forward = fd_log_softmax_forward,
    .log_softmax_backward = fd_log_softmax_backward,
    .cross_entropy_forward = fd_cross_entropy_forward,
    .cross_entropy_backward = fd_cross_entropy_backward,
    .copy2d = fd_copy2d,
    .transpose = fd_transpose,
    .gather_forward = fd_gather_forward,
    .gather_backward = fd_gather_backward,
    .sumsq = fd_sumsq,
    .adamw_step = fd_adamw_step,
    .convert = fd_convert,
    .attention_cached_forward = fd_attention_cached_forward,
    .unary_forward = fd_unary_forward,
    .unary_backward = fd_unary_backward,
    .gemm_lowp = fd_gemm_lowp,
    .round_to = fd_round_to,
    .attention_lse_forward = fd_attention_lse_forward,
    .attention_lse_backward = fd_attention_lse_backward,
};

static const struct lathe_component fakedev_components[] = {
    {.kind = LATHE_KIND_BACKEND, .name = "fakedev", .ops = &fakedev_ops},
    {0},
};

LATHE_PLUGIN_DEFINE(fakedev, .version = "0.0.1",
                    .description = "test backend: the CPU's arithmetic behind tagged (unreadable) device pointers",
                    .components = fakedev_components)
