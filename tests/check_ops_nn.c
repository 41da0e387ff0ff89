/* tests/check_ops_nn.c — the neural-network ops: norms, activations, rope,
 * attention, softmax and cross-entropy.
 *
 * Forward results are compared with plain double-precision loops written
 * here (for attention a direct masked softmax, for rope the Hugging Face
 * formula); gradients with central finite differences (gradcheck.h) at small
 * sizes, and with double-precision reference backwards at sizes where the
 * kernels block and run in parallel. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lathe/lathe.h>

#include "gradcheck.h"
#include "testutil.h"

#define GC_EPS 1e-2
#define GC_TOL 1e-2

/* ---- helpers --------------------------------------------------------- */

static lathe_tensor *i32_new(int ndim, const int64_t *shape, const int32_t *vals)
{
    lathe_tensor *t = lathe_tensor_new(LATHE_I32, ndim, shape);
    ck_assert_ptr_nonnull(t);
    memcpy(lathe_tensor_i32(t), vals, sizeof(int32_t) * (size_t)lathe_tensor_numel(t));
    return t;
}

/* |got - want| <= tol * max(1, |want|) for every element */
static void assert_close(const char *what, const float *got, const double *want, int64_t n,
                         double tol)
{
    for (int64_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - want[i]) / fmax(1.0, fabs(want[i]));
        ck_assert_msg(err <= tol, "%s: element %lld is %.8g, expected %.8g (err %.3g > %.3g)",
                      what, (long long)i, (double)got[i], want[i], err, tol);
    }
}

static void assert_gradcheck(const char *what, lathe_gc_fn f, lathe_tensor *const *in, int n,
                             void *ctx)
{
    char msg[512];
    int bad = lathe_gradcheck(f, in, n, ctx, GC_EPS, GC_TOL, msg, sizeof msg);
    ck_assert_msg(!bad, "%s gradient: %s", what, msg);
}

/* Runs f without recording, for forward checks. */
static lathe_tensor *forward_only(lathe_gc_fn f, lathe_tensor *const *in, void *ctx)
{
    lathe_no_grad_begin();
    lathe_tensor *out = f(in, ctx);
    lathe_no_grad_end();
    ck_assert_msg(out != NULL, "op failed: %s", lathe_errmsg());
    return out;
}

static void free_all(lathe_tensor **ts, int n)
{
    for (int i = 0; i < n; i++)
        lathe_tensor_free(ts[i]);
}

/* ---- layernorm / rmsnorm --------------------------------------------- */

struct norm_ctx {
    int has_b; /* layernorm: bias given; rmsnorm: weight given */
    float eps;
};

static lathe_tensor *ln_fn(lathe_tensor *const *in, void *vctx)
{
    struct norm_ctx *c = vctx;
    return lathe_layernorm(in[0], in[1], c->has_b ? in[2] : NULL, c->eps);
}

static lathe_tensor *rms_fn(lathe_tensor *const *in, void *vctx)
{
    struct norm_ctx *c = vctx;
    return lathe_rmsnorm(in[0], c->has_b ? in[1] : NULL, c->eps);
}

static void ref_layernorm(double *out, const float *x, const float *w, const float *b, int64_t N,
                          int64_t C, double eps)
{
    for (int64_t n = 0; n < N; n++) {
        double m = 0, v = 0;
        for (int64_t c = 0; c < C; c++)
            m += x[n * C + c];
        m /= (double)C;
        for (int64_t c = 0; c < C; c++)
            v += (x[n * C + c] - m) * (x[n * C + c] - m);
        v /= (double)C;
        for (int64_t c = 0; c < C; c++)
            out[n * C + c] = (x[n * C + c] - m) / sqrt(v + eps) * w[c] + (b ? b[c] : 0.0);
    }
}

static void ref_rmsnorm(double *out, const float *x, const float *w, int64_t N, int64_t C,
                        double eps)
{
    for (int64_t n = 0; n < N; n++) {
        double ss = 0;
        for (int64_t c = 0; c < C; c++)
            ss += (double)x[n * C + c] * x[n * C + c];
        double r = 1.0 / sqrt(ss / (double)C + eps);
        for (int64_t c = 0; c < C; c++)
            out[n * C + c] = x[n * C + c] * r * (w ? w[c] : 1.0);
    }
}

START_TEST(test_layernorm)
{
    int64_t xs[3] = {2, 3, 7}, ws[1] = {7};
    lathe_tensor *in[3] = {lathe_gc_rand(3, xs, -2, 2, 1, 1),
                           lathe_gc_rand(1, ws, 0.5f, 1.5f, 2, 1),
                           lathe_gc_rand(1, ws, -0.5f, 0.5f, 3, 1)};
    for (int has_b = 0; has_b <= 1; has_b++) {
        struct norm_ctx c = {has_b, 1e-5f};
        lathe_scope_push();
        lathe_tensor *out = forward_only(ln_fn, in, &c);
        double want[42];
        ref_layernorm(want, lathe_tensor_f32(in[0]), lathe_tensor_f32(in[1]),
                      has_b ? lathe_tensor_f32(in[2]) : NULL, 6, 7, 1e-5);
        assert_close("layernorm", lathe_tensor_f32(out), want, 42, 1e-5);
        lathe_scope_pop();
        in[2]->requires_grad = has_b;
        assert_gradcheck(has_b ? "layernorm (bias)" : "layernorm", ln_fn, in, 3, &c);
    }
    free_all(in, 3);
}
END_TEST

START_TEST(test_rmsnorm)
{
    int64_t xs[2] = {4, 6}, ws[1] = {6};
    lathe_tensor *in[2] = {lathe_gc_rand(2, xs, -2, 2, 4, 1),
                           lathe_gc_rand(1, ws, 0.5f, 1.5f, 5, 1)};
    for (int has_w = 0; has_w <= 1; has_w++) {
        struct norm_ctx c = {has_w, 1e-6f};
        lathe_scope_push();
        lathe_tensor *out = forward_only(rms_fn, in, &c);
        double want[24];
        ref_rmsnorm(want, lathe_tensor_f32(in[0]), has_w ? lathe_tensor_f32(in[1]) : NULL, 4, 6,
                    1e-6);
        assert_close("rmsnorm", lathe_tensor_f32(out), want, 24, 1e-5);
        lathe_scope_pop();
        in[1]->requires_grad = has_w;
        assert_gradcheck(has_w ? "rmsnorm (weight)" : "rmsnorm", rms_fn, in, 2, &c);
    }
    free_all(in, 2);
}
END_TEST

/* At sizes where the kernels run in parallel (rows for dx, column blocks
 * for dw/db), gradients of L = sum(out * W) against double references. */
START_TEST(test_norm_parallel_sizes)
{
    enum { N = 96, C = 300 };
    int64_t xs[2] = {N, C}, ws[1] = {C};
    lathe_tensor *x = lathe_gc_rand(2, xs, -3, 3, 6, 1);
    lathe_tensor *w = lathe_gc_rand(1, ws, 0.5f, 1.5f, 7, 1);
    lathe_tensor *b = lathe_gc_rand(1, ws, -1, 1, 8, 1);
    lathe_tensor *W = lathe_gc_rand(2, xs, -1, 1, 9, 0);
    const float *xd = lathe_tensor_f32(x), *wd = lathe_tensor_f32(w), *Wd = lathe_tensor_f32(W);
    static double want[N * C], dx[N * C], dw[C], db[C];
    for (int rms = 0; rms <= 1; rms++) {
        lathe_tensor_zero_grad(x);
        lathe_tensor_zero_grad(w);
        lathe_tensor_zero_grad(b);
        lathe_scope_push();
        lathe_tensor *out = rms ? lathe_rmsnorm(x, w, 1e-5f) : lathe_layernorm(x, w, b, 1e-5f);
        ck_assert_ptr_nonnull(out);
        if (rms)
            ref_rmsnorm(want, xd, wd, N, C, 1e-5);
        else
            ref_layernorm(want, xd, wd, lathe_tensor_f32(b), N, C, 1e-5);
        assert_close(rms ? "rmsnorm" : "layernorm", lathe_tensor_f32(out), want, N * C, 1e-5);
        ck_assert_int_eq(lathe_backward(lathe_sum(lathe_mul(out, W)), 1.0f), LATHE_OK);
        lathe_scope_pop();
        memset(dw, 0, sizeof dw);
        memset(db, 0, sizeof db);
        for (int n = 0; n < N; n++) {
            const float *xr = xd + n * C;
            const float *g = Wd + n * C;
            double m = 0, v = 0;
            for (int c = 0; c < C; c++)
                m += xr[c];
            m = rms ? 0.0 : m / C;
            for (int c = 0; c < C; c++)
                v += (xr[c] - m) * (xr[c] - m);
            double rs = 1.0 / sqrt(v / C + 1e-5);
            double sg = 0, sgx = 0;
            for (int c = 0; c < C; c++) {
                double xh = (xr[c] - m) * rs;
                sg += g[c] * wd[c];
                sgx += g[c] * wd[c] * xh;
                dw[c] += g[c] * xh;
                db[c] += g[c];
            }
            for (int c = 0; c < C; c++) {
                double xh = (xr[c] - m) * rs;
                dx[n * C + c] = rs * (g[c] * wd[c] - (rms ? 0.0 : sg / C) - xh * sgx / C);
            }
        }
        assert_close("norm dx", lathe_tensor_f32(x->grad), dx, N * C, 1e-4);
        assert_close("norm dw", lathe_tensor_f32(w->grad), dw, C, 1e-4);
        if (!rms)
            assert_close("norm db", lathe_tensor_f32(b->grad), db, C, 1e-4);
    }
    lathe_tensor *all[4] = {x, w, b, W};
    free_all(all, 4);
}
END_TEST

/* ---- activations ----------------------------------------------------- */

static double ref_gelu(double x)
{
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}
static double ref_silu(double x) { return x / (1.0 + exp(-x)); }

static lathe_tensor *gelu_fn(lathe_tensor *const *in, void *ctx) { return lathe_gelu(in[0]); }
static lathe_tensor *silu_fn(lathe_tensor *const *in, void *ctx) { return lathe_silu(in[0]); }
static lathe_tensor *swiglu_fn(lathe_tensor *const *in, void *ctx)
{
    return lathe_swiglu(in[0], in[1]);
}
static lathe_tensor *swiglu_self_fn(lathe_tensor *const *in, void *ctx)
{
    return lathe_swiglu(in[0], in[0]);
}

START_TEST(test_activations)
{
    int64_t s[2] = {3, 11};
    lathe_tensor *x = lathe_gc_rand(2, s, -4, 4, 11, 1);
    lathe_tensor *u = lathe_gc_rand(2, s, -2, 2, 12, 1);
    const float *xd = lathe_tensor_f32(x), *ud = lathe_tensor_f32(u);
    double want[33];
    lathe_tensor *in[2] = {x, u};

    lathe_scope_push();
    for (int i = 0; i < 33; i++)
        want[i] = ref_gelu(xd[i]);
    assert_close("gelu", lathe_tensor_f32(forward_only(gelu_fn, in, NULL)), want, 33, 1e-6);
    for (int i = 0; i < 33; i++)
        want[i] = ref_silu(xd[i]);
    assert_close("silu", lathe_tensor_f32(forward_only(silu_fn, in, NULL)), want, 33, 1e-6);
    for (int i = 0; i < 33; i++)
        want[i] = ref_silu(xd[i]) * ud[i];
    assert_close("swiglu", lathe_tensor_f32(forward_only(swiglu_fn, in, NULL)), want, 33, 1e-6);
    lathe_scope_pop();

    assert_gradcheck("gelu", gelu_fn, in, 1, NULL);
    assert_gradcheck("silu", silu_fn, in, 1, NULL);
    assert_gradcheck("swiglu", swiglu_fn, in, 2, NULL);
    /* one tensor as both gate and up: both gradient terms must land */
    assert_gradcheck("swiglu(x, x)", swiglu_self_fn, in, 1, NULL);
    lathe_tensor_free(x);
    lathe_tensor_free(u);
}
END_TEST

/* Far tails: no NaN/inf from overflowing exponentials, correct limits, and
 * derivatives computed exactly there (where tanh/cosh forms overflow). */
START_TEST(test_activation_tails)
{
    const float v[8] = {-1000.0f, -100.0f, -30.0f, -8.0f, 8.0f, 30.0f, 100.0f, 1000.0f};
    int64_t n = 8;
    lathe_tensor *x = lathe_param_new("x", 1, &n);
    memcpy(lathe_tensor_f32(x), v, sizeof v);
    double want[8], dwant[8];
    for (int k = 0; k < 2; k++) {
        lathe_tensor_zero_grad(x);
        lathe_scope_push();
        lathe_tensor *out = k == 0 ? lathe_gelu(x) : lathe_silu(x);
        ck_assert_ptr_nonnull(out);
        ck_assert_int_eq(lathe_backward(lathe_sum(out), 1.0f), LATHE_OK);
        for (int i = 0; i < 8; i++) {
            double t = v[i];
            want[i] = k == 0 ? ref_gelu(t) : ref_silu(t);
            /* derivatives by the exact formulas, in double */
            if (k == 0) {
                double a = sqrt(2.0 / M_PI), u = a * (t + 0.044715 * t * t * t);
                double th = tanh(u), du = a * (1 + 3 * 0.044715 * t * t);
                dwant[i] = 0.5 * (1 + th) + 0.5 * t * (1 - th * th) * du;
            } else {
                double s = 1.0 / (1.0 + exp(-t));
                dwant[i] = s * (1 + t * (1 - s));
            }
        }
        assert_close(k == 0 ? "gelu tails" : "silu tails", lathe_tensor_f32(out), want, 8, 1e-6);
        assert_close(k == 0 ? "gelu' tails" : "silu' tails", lathe_tensor_f32(x->grad), dwant, 8,
                     1e-6);
        lathe_scope_pop();
    }
    lathe_tensor_free(x);
}
END_TEST

/* ---- rope ------------------------------------------------------------ */

struct rope_ctx {
    lathe_tensor *pos, *inv_freq;
};

static lathe_tensor *rope_fn(lathe_tensor *const *in, void *vctx)
{
    struct rope_ctx *c = vctx;
    return lathe_rope(in[0], c->pos, c->inv_freq);
}

/* transformers' apply_rotary_pos_emb: x * cos + rotate_half(x) * sin, with
 * rotate_half(x) = cat(-x2, x1) and freqs = inv_freq * pos in f32 */
static void ref_rope(double *out, const float *x, const int32_t *pos, int64_t pos_bstride,
                     const float *inv_freq, int64_t B, int64_t T, int64_t H, int64_t D)
{
    int64_t half = D / 2;
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < H; h++) {
                const float *xr = x + ((b * T + t) * H + h) * D;
                double *o = out + ((b * T + t) * H + h) * D;
                for (int64_t i = 0; i < D; i++) {
                    float ang = (float)pos[b * pos_bstride + t] * inv_freq[i % half];
                    double rot = i < half ? -(double)xr[i + half] : (double)xr[i - half];
                    o[i] = xr[i] * cos((double)ang) + rot * sin((double)ang);
                }
            }
}

START_TEST(test_rope)
{
    enum { B = 2, T = 3, H = 2, D = 8 };
    int64_t xs[4] = {B, T, H, D}, ps2[2] = {B, T}, ps1[1] = {T}, fs[1] = {D / 2};
    /* large positions: an angle formed in double instead of f32 differs by
     * ~1e-3 there, which the comparison below would catch */
    const int32_t p2[B * T] = {0, 1, 2, 4097, 300007, 7};
    const int32_t p1[T] = {5, 0, 1000003};
    lathe_tensor *x = lathe_gc_rand(4, xs, -1, 1, 21, 1);
    lathe_tensor *inv = lathe_tensor_new(LATHE_F32, 1, fs);
    for (int i = 0; i < D / 2; i++)
        lathe_tensor_f32(inv)[i] = (float)(1.0 / pow(10000.0, 2.0 * i / D));
    lathe_tensor *pos[2] = {i32_new(2, ps2, p2), i32_new(1, ps1, p1)};
    for (int k = 0; k < 2; k++) {
        struct rope_ctx c = {pos[k], inv};
        lathe_scope_push();
        lathe_tensor *out = forward_only(rope_fn, &x, &c);
        double want[B * T * H * D];
        ref_rope(want, lathe_tensor_f32(x), lathe_tensor_i32(pos[k]), k == 0 ? T : 0,
                 lathe_tensor_f32(inv), B, T, H, D);
        assert_close(k == 0 ? "rope pos [B,T]" : "rope pos [T]", lathe_tensor_f32(out), want,
                     B * T * H * D, 1e-6);
        lathe_scope_pop();
        assert_gradcheck("rope", rope_fn, &x, 1, &c);
    }
    lathe_tensor *all[4] = {x, inv, pos[0], pos[1]};
    free_all(all, 4);
}
END_TEST

/* ---- attention ------------------------------------------------------- */

struct sdpa_ctx {
    lathe_tensor *seg;
    float scale;
};

static lathe_tensor *sdpa_fn(lathe_tensor *const *in, void *vctx)
{
    struct sdpa_ctx *c = vctx;
    return lathe_sdpa(in[0], in[1], in[2], c->seg, c->scale);
}

static lathe_tensor *sdpa_self_fn(lathe_tensor *const *in, void *vctx)
{
    return lathe_sdpa(in[0], in[0], in[0], NULL, 0.0f);
}

/* Direct masked softmax attention in double, and for L = sum(out * W) the
 * gradients dq, dk, dv (any may be NULL). */
static void ref_sdpa(double *out, double *dq, double *dk, double *dv, const float *q,
                     const float *k, const float *v, const int32_t *seg, const float *W,
                     int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D, double scale)
{
    int64_t group = H / Hkv;
    double p[T > 0 ? T : 1], dp[T > 0 ? T : 1];
    if (dq)
        memset(dq, 0, sizeof *dq * (size_t)(B * T * H * D));
    if (dk)
        memset(dk, 0, sizeof *dk * (size_t)(B * T * Hkv * D));
    if (dv)
        memset(dv, 0, sizeof *dv * (size_t)(B * T * Hkv * D));
#define QI(b, t, h, d) ((((b) * T + (t)) * H + (h)) * D + (d))
#define KI(b, t, g, d) ((((b) * T + (t)) * Hkv + (g)) * D + (d))
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < T; i++) {
                int64_t g = h / group;
                double m = -INFINITY, sum = 0;
                for (int64_t j = 0; j < T; j++) {
                    int ok = j <= i && (!seg || seg[b * T + j] == seg[b * T + i]);
                    p[j] = -INFINITY;
                    if (ok) {
                        double s = 0;
                        for (int64_t d = 0; d < D; d++)
                            s += (double)q[QI(b, i, h, d)] * k[KI(b, j, g, d)];
                        p[j] = s * scale;
                        m = fmax(m, p[j]);
                    }
                }
                for (int64_t j = 0; j < T; j++) {
                    p[j] = p[j] == -INFINITY ? 0.0 : exp(p[j] - m);
                    sum += p[j];
                }
                for (int64_t j = 0; j < T; j++)
                    p[j] = sum > 0 ? p[j] / sum : 0.0;
                for (int64_t d = 0; d < D; d++) {
                    double o = 0;
                    for (int64_t j = 0; j < T; j++)
                        o += p[j] * v[KI(b, j, g, d)];
                    out[QI(b, i, h, d)] = o;
                }
                if (!W)
                    continue;
                double dot = 0;
                for (int64_t j = 0; j < T; j++) {
                    dp[j] = 0;
                    for (int64_t d = 0; d < D; d++)
                        dp[j] += (double)W[QI(b, i, h, d)] * v[KI(b, j, g, d)];
                    dot += p[j] * dp[j];
                }
                for (int64_t j = 0; j < T; j++) {
                    double ds = p[j] * (dp[j] - dot) * scale;
                    for (int64_t d = 0; d < D; d++) {
                        if (dv)
                            dv[KI(b, j, g, d)] += p[j] * W[QI(b, i, h, d)];
                        if (dq)
                            dq[QI(b, i, h, d)] += ds * k[KI(b, j, g, d)];
                        if (dk)
                            dk[KI(b, j, g, d)] += ds * q[QI(b, i, h, d)];
                    }
                }
            }
#undef QI
#undef KI
}

START_TEST(test_sdpa_small)
{
    enum { B = 2, T = 5, H = 4, Hkv = 2, D = 3 };
    int64_t qs[4] = {B, T, H, D}, ks[4] = {B, T, Hkv, D}, ss[2] = {B, T};
    /* row 0: two packed samples; row 1: one sample then padding (its own
     * segment id, so padding attends only to padding) */
    const int32_t sv[B * T] = {0, 0, 1, 1, 1, 3, 3, 3, -1, -1};
    lathe_tensor *in[3] = {lathe_gc_rand(4, qs, -1.5f, 1.5f, 31, 1),
                           lathe_gc_rand(4, ks, -1.5f, 1.5f, 32, 1),
                           lathe_gc_rand(4, ks, -1, 1, 33, 1)};
    lathe_tensor *seg = i32_new(2, ss, sv);
    const struct {
        lathe_tensor *seg;
        float scale;
        const char *what;
    } cases[3] = {{NULL, 0.0f, "causal GQA"},
                  {seg, 0.0f, "GQA with segments"},
                  {seg, 0.9f, "segments, explicit scale"}};
    double want[B * T * H * D];
    for (int k = 0; k < 3; k++) {
        struct sdpa_ctx c = {cases[k].seg, cases[k].scale};
        double scale = cases[k].scale > 0 ? cases[k].scale : 1.0 / sqrt((double)D);
        lathe_scope_push();
        lathe_tensor *out = forward_only(sdpa_fn, in, &c);
        ref_sdpa(want, NULL, NULL, NULL, lathe_tensor_f32(in[0]), lathe_tensor_f32(in[1]),
                 lathe_tensor_f32(in[2]), cases[k].seg ? lathe_tensor_i32(seg) : NULL, NULL, B,
                 T, H, Hkv, D, scale);
        assert_close(cases[k].what, lathe_tensor_f32(out), want, B * T * H * D, 1e-5);
        lathe_scope_pop();
        assert_gradcheck(cases[k].what, sdpa_fn, in, 3, &c);
    }
    lathe_tensor *all[4] = {in[0], in[1], in[2], seg};
    free_all(all, 4);
}
END_TEST

START_TEST(test_sdpa_self)
{
    /* q = k = v = x (H == Hkv): one gradient buffer gets all three terms */
    int64_t xs[4] = {1, 4, 2, 3};
    lathe_tensor *x = lathe_gc_rand(4, xs, -1, 1, 34, 1);
    assert_gradcheck("sdpa(x, x, x)", sdpa_self_fn, &x, 1, NULL);
    lathe_tensor_free(x);
}
END_TEST

/* T beyond one block of query rows, sizes that run in parallel; gradients
 * against the double reference. */
START_TEST(test_sdpa_parallel_sizes)
{
    enum { B = 2, T = 70, H = 4, Hkv = 2, D = 8 };
    int64_t qs[4] = {B, T, H, D}, ks[4] = {B, T, Hkv, D}, ss[2] = {B, T};
    int32_t sv[B * T];
    for (int t = 0; t < T; t++) {
        sv[t] = t < 40 ? 0 : 1; /* samples of 40 and 30 tokens */
        sv[T + t] = t < 66 ? 5 : 9;
    }
    lathe_tensor *q = lathe_gc_rand(4, qs, -2, 2, 41, 1);
    lathe_tensor *k = lathe_gc_rand(4, ks, -2, 2, 42, 1);
    lathe_tensor *v = lathe_gc_rand(4, ks, -1, 1, 43, 1);
    lathe_tensor *W = lathe_gc_rand(4, qs, -1, 1, 44, 0);
    lathe_tensor *seg = i32_new(2, ss, sv);
    static double out[B * T * H * D], dq[B * T * H * D], dk[B * T * Hkv * D],
        dv[B * T * Hkv * D];
    for (int use_seg = 0; use_seg <= 1; use_seg++) {
        lathe_tensor_zero_grad(q);
        lathe_tensor_zero_grad(k);
        lathe_tensor_zero_grad(v);
        lathe_scope_push();
        lathe_tensor *o = lathe_sdpa(q, k, v, use_seg ? seg : NULL, 0.0f);
        ck_assert_msg(o != NULL, "%s", lathe_errmsg());
        ck_assert_int_eq(lathe_backward(lathe_sum(lathe_mul(o, W)), 1.0f), LATHE_OK);
        ref_sdpa(out, dq, dk, dv, lathe_tensor_f32(q), lathe_tensor_f32(k), lathe_tensor_f32(v),
                 use_seg ? sv : NULL, lathe_tensor_f32(W), B, T, H, Hkv, D, 1.0 / sqrt((double)D));
        assert_close("sdpa out", lathe_tensor_f32(o), out, B * T * H * D, 1e-5);
        assert_close("sdpa dq", lathe_tensor_f32(q->grad), dq, B * T * H * D, 1e-4);
        assert_close("sdpa dk", lathe_tensor_f32(k->grad), dk, B * T * Hkv * D, 1e-4);
        assert_close("sdpa dv", lathe_tensor_f32(v->grad), dv, B * T * Hkv * D, 1e-4);
        lathe_scope_pop();
    }
    lathe_tensor *all[5] = {q, k, v, W, seg};
    free_all(all, 5);
}
END_TEST

/* ---- attention: the O(T)-memory slots against the att kernels -------- */

static uint64_t flash_rng = 0x2545f4914f6cdd1dull;

static float *flash_rand(int64_t n, float lo, float hi)
{
    float *v = malloc(sizeof *v * (size_t)n);
    ck_assert_ptr_nonnull(v);
    for (int64_t i = 0; i < n; i++) {
        flash_rng = flash_rng * 6364136223846793005ull + 1442695040888963407ull;
        v[i] = lo + (hi - lo) * (float)((flash_rng >> 40) * (1.0 / 16777216.0));
    }
    return v;
}

static float *flash_copy(const float *x, int64_t n)
{
    float *v = malloc(sizeof *v * (size_t)n);
    ck_assert_ptr_nonnull(v);
    memcpy(v, x, sizeof *v * (size_t)n);
    return v;
}

/* |a - b| <= tol * max(1, |b|): relative, floored at 1 for values near 0 */
static void flash_expect(const char *what, const float *a, const float *b, int64_t n, double tol)
{
    for (int64_t i = 0; i < n; i++) {
        double err = fabs((double)a[i] - b[i]) / fmax(1.0, fabs((double)b[i]));
        ck_assert_msg(err <= tol, "%s: element %lld is %.8g, the att kernel gives %.8g", what, (long long)i,
                      (double)a[i], (double)b[i]);
    }
}

/* One shape through both CPU kernel pairs, called directly. seg_kind 0:
 * none; 1: packed samples then a padded tail of -1 (padding attends only
 * to padding). Backward grads start non-zero: both must accumulate. */
static void flash_case(int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D, int seg_kind)
{
    const struct lathe_backend_ops *cpu = lathe_backend_cpu();
    ck_assert(LATHE_OPS_HAS(cpu, struct lathe_backend_ops, attention_lse_forward));
    ck_assert(LATHE_OPS_HAS(cpu, struct lathe_backend_ops, attention_lse_backward));
    float scale = 1.0f / sqrtf((float)D);
    int64_t nq = B * T * H * D, nk = B * T * Hkv * D;
    float *q = flash_rand(nq, -2, 2), *k = flash_rand(nk, -2, 2), *v = flash_rand(nk, -1, 1);
    float *dout = flash_rand(nq, -1, 1);
    float *dq0 = flash_rand(nq, -1, 1), *dk0 = flash_rand(nk, -1, 1), *dv0 = flash_rand(nk, -1, 1);
    float *dq1 = flash_copy(dq0, nq), *dk1 = flash_copy(dk0, nk), *dv1 = flash_copy(dv0, nk);
    float *out0 = malloc(sizeof(float) * (size_t)nq), *out1 = malloc(sizeof(float) * (size_t)nq);
    float *att = malloc(sizeof(float) * (size_t)(B * H * T * T)), *lse = malloc(sizeof(float) * (size_t)(B * H * T));
    int32_t *seg = malloc(sizeof(int32_t) * (size_t)(B * T));
    ck_assert(out0 && out1 && att && lse && seg);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) /* samples of 3T/10 tokens, the last fifth padding */
            seg[b * T + t] = t >= T - T / 5 ? -1 : (int32_t)(t * 10 / (3 * T) + b);
    const int32_t *sg = seg_kind ? seg : NULL;
    char what[128];
    snprintf(what, sizeof what, "B %lld T %lld H %lld/%lld D %lld seg %d", (long long)B, (long long)T,
             (long long)H, (long long)Hkv, (long long)D, seg_kind);

    cpu->attention_forward(out0, att, q, k, v, sg, B, T, H, Hkv, D, scale);
    cpu->attention_lse_forward(out1, lse, q, k, v, sg, B, T, H, Hkv, D, scale);
    flash_expect(what, out1, out0, nq, 1e-5);
    /* lse against a double log-sum-exp */
    int64_t group = H / Hkv;
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < T; i++) {
                double m = -INFINITY, sum = 0.0, sc[T];
                for (int64_t j = 0; j <= i; j++) {
                    sc[j] = -INFINITY;
                    if (sg && sg[b * T + j] != sg[b * T + i])
                        continue;
                    double dot = 0.0;
                    for (int64_t d = 0; d < D; d++)
                        dot += (double)q[((b * T + i) * H + h) * D + d] * k[((b * T + j) * Hkv + h / group) * D + d];
                    sc[j] = dot * scale;
                    m = fmax(m, sc[j]);
                }
                for (int64_t j = 0; j <= i; j++)
                    sum += sc[j] == -INFINITY ? 0.0 : exp(sc[j] - m);
                double want = m + log(sum), got = lse[(b * H + h) * T + i];
                ck_assert_msg(fabs(got - want) <= 1e-5 * fmax(1.0, fabs(want)), "%s: lse[%lld,%lld,%lld] %.8g, want %.8g",
                              what, (long long)b, (long long)h, (long long)i, got, want);
            }

    cpu->attention_backward(dq0, dk0, dv0, dout, q, k, v, att, B, T, H, Hkv, D, scale);
    cpu->attention_lse_backward(dq1, dk1, dv1, dout, q, k, v, out1, lse, sg, B, T, H, Hkv, D, scale);
    flash_expect("dq", dq1, dq0, nq, 1e-5);
    flash_expect("dk", dk1, dk0, nk, 1e-5);
    flash_expect("dv", dv1, dv0, nk, 1e-5);

    /* deterministic: the same bits again, also for one gradient alone */
    float *dq2 = calloc((size_t)nq, sizeof(float)), *dk2 = calloc((size_t)nk, sizeof(float));
    float *dq3 = calloc((size_t)nq, sizeof(float)), *dk3 = calloc((size_t)nk, sizeof(float));
    ck_assert(dq2 && dk2 && dq3 && dk3);
    cpu->attention_lse_backward(dq2, dk2, NULL, dout, q, k, v, out1, lse, sg, B, T, H, Hkv, D, scale);
    cpu->attention_lse_backward(dq3, dk3, NULL, dout, q, k, v, out1, lse, sg, B, T, H, Hkv, D, scale);
    ck_assert_msg(memcmp(dq2, dq3, sizeof(float) * (size_t)nq) == 0, "%s: dq differs between calls", what);
    ck_assert_msg(memcmp(dk2, dk3, sizeof(float) * (size_t)nk) == 0, "%s: dk differs between calls", what);

    float *all[] = {q, k, v, dout, dq0, dk0, dv0, dq1, dk1, dv1, out0, out1, att, lse, dq2, dk2, dq3, dk3};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        free(all[i]);
    free(seg);
}

START_TEST(test_sdpa_flash_equals_att_kernels)
{
    flash_case(2, 5, 4, 2, 3, 1);    /* smaller than a tile */
    flash_case(2, 70, 4, 2, 8, 0);   /* past one tile of 64 query rows */
    flash_case(1, 300, 6, 2, 16, 1); /* past one key tile of 256: online rescaling */
    flash_case(1, 300, 6, 2, 16, 0);
    flash_case(2, 129, 3, 3, 24, 1); /* no grouping, D not a power of two */
    flash_case(1, 1, 2, 1, 4, 0);
}
END_TEST

/* A backend without the ABI 1.2 slots (built at ABI 1.1) takes the att
 * path through lathe_sdpa and gets the same results. */
START_TEST(test_sdpa_without_lse_slots)
{
    enum { B = 2, T = 70, H = 4, Hkv = 2, D = 8 };
    int64_t qs[4] = {B, T, H, D}, ks[4] = {B, T, Hkv, D}, ss[2] = {B, T};
    int32_t sv[B * T];
    for (int t = 0; t < B * T; t++)
        sv[t] = t % T < 30 ? 0 : t % T < 60 ? 1 : -1;
    lathe_tensor *q = lathe_gc_rand(4, qs, -2, 2, 61, 1);
    lathe_tensor *k = lathe_gc_rand(4, ks, -2, 2, 62, 1);
    lathe_tensor *v = lathe_gc_rand(4, ks, -1, 1, 63, 1);
    lathe_tensor *W = lathe_gc_rand(4, qs, -1, 1, 64, 0);
    lathe_tensor *seg = i32_new(2, ss, sv);
    /* pass 1: the slots NULL; pass 2: a struct that ends before them */
    static struct lathe_backend_ops old[2];
    old[0] = old[1] = *lathe_backend_cpu();
    old[0].attention_lse_forward = NULL;
    old[0].attention_lse_backward = NULL;
    old[1].size = (uint32_t)offsetof(struct lathe_backend_ops, attention_lse_forward);
    static float res[3][4][B * T * H * D];
    for (int pass = 0; pass < 3; pass++) {
        ck_assert_int_eq(lathe_backend_set(pass ? &old[pass - 1] : lathe_backend_cpu()), LATHE_OK);
        lathe_tensor_zero_grad(q), lathe_tensor_zero_grad(k), lathe_tensor_zero_grad(v);
        lathe_scope_push();
        lathe_tensor *o = lathe_sdpa(q, k, v, seg, 0.0f);
        ck_assert_msg(o != NULL, "%s", lathe_errmsg());
        ck_assert_int_eq(lathe_backward(lathe_sum(lathe_mul(o, W)), 1.0f), LATHE_OK);
        memcpy(res[pass][0], o->data, sizeof(float) * B * T * H * D);
        memcpy(res[pass][1], lathe_tensor_f32(q->grad), sizeof(float) * B * T * H * D);
        memcpy(res[pass][2], lathe_tensor_f32(k->grad), sizeof(float) * B * T * Hkv * D);
        memcpy(res[pass][3], lathe_tensor_f32(v->grad), sizeof(float) * B * T * Hkv * D);
        lathe_scope_pop();
    }
    ck_assert_int_eq(lathe_backend_set(lathe_backend_cpu()), LATHE_OK);
    for (int pass = 1; pass < 3; pass++) {
        flash_expect("sdpa out", res[0][0], res[pass][0], B * T * H * D, 1e-5);
        flash_expect("sdpa dq", res[0][1], res[pass][1], B * T * H * D, 1e-5);
        flash_expect("sdpa dk", res[0][2], res[pass][2], B * T * Hkv * D, 1e-5);
        flash_expect("sdpa dv", res[0][3], res[pass][3], B * T * Hkv * D, 1e-5);
    }
    /* a struct without the minor-0 slots is still refused */
    old[1].size = (uint32_t)offsetof(struct lathe_backend_ops, convert);
    ck_assert_int_eq(lathe_backend_set(&old[1]), LATHE_EINVAL);
    ck_assert_ptr_eq(lathe_backend(), lathe_backend_cpu());
    lathe_tensor *all[5] = {q, k, v, W, seg};
    free_all(all, 5);
}
END_TEST

/* ---- softmax family -------------------------------------------------- */

static lathe_tensor *softmax_fn(lathe_tensor *const *in, void *ctx) { return lathe_softmax(in[0]); }
static lathe_tensor *log_softmax_fn(lathe_tensor *const *in, void *ctx)
{
    return lathe_log_softmax(in[0]);
}

START_TEST(test_softmax)
{
    enum { N = 6, C = 9 };
    int64_t s[3] = {2, 3, C};
    lathe_tensor *x = lathe_gc_rand(3, s, -3, 3, 51, 1);
    float *xd = lathe_tensor_f32(x);
    xd[C] += 80.0f; /* a row with one large value: max subtraction matters */
    double want[N * C], lwant[N * C];
    for (int n = 0; n < N; n++) {
        double m = -INFINITY, sum = 0;
        for (int c = 0; c < C; c++)
            m = fmax(m, xd[n * C + c]);
        for (int c = 0; c < C; c++)
            sum += exp(xd[n * C + c] - m);
        for (int c = 0; c < C; c++) {
            want[n * C + c] = exp(xd[n * C + c] - m) / sum;
            lwant[n * C + c] = xd[n * C + c] - m - log(sum);
        }
    }
    lathe_scope_push();
    assert_close("softmax", lathe_tensor_f32(forward_only(softmax_fn, &x, NULL)), want, N * C,
                 1e-6);
    assert_close("log_softmax", lathe_tensor_f32(forward_only(log_softmax_fn, &x, NULL)), lwant,
                 N * C, 1e-6);
    lathe_scope_pop();
    xd[C] -= 80.0f;
    assert_gradcheck("softmax", softmax_fn, &x, 1, NULL);
    assert_gradcheck("log_softmax", log_softmax_fn, &x, 1, NULL);
    lathe_tensor_free(x);
}
END_TEST

/* ---- cross-entropy --------------------------------------------------- */

struct ce_ctx {
    lathe_tensor *targets;
    int32_t ignore;
    float smoothing;
};

static lathe_tensor *ce_fn(lathe_tensor *const *in, void *vctx)
{
    struct ce_ctx *c = vctx;
    return lathe_cross_entropy(in[0], c->targets, c->ignore, c->smoothing);
}

/* Mean over kept rows of lse - sum_v q_v x_v, q = (1-s) onehot + s/V; and
 * its gradient (softmax - q) / count into grad (may be NULL). */
static double ref_ce(double *grad, const float *x, const int32_t *t, int64_t N, int64_t V,
                     int32_t ignore, double s)
{
    double total = 0;
    int64_t count = 0;
    for (int64_t n = 0; n < N; n++)
        count += t[n] != ignore;
    for (int64_t n = 0; n < N; n++) {
        const float *r = x + n * V;
        if (grad)
            for (int64_t v = 0; v < V; v++)
                grad[n * V + v] = 0.0;
        if (t[n] == ignore)
            continue;
        double m = -INFINITY, sum = 0, sx = 0;
        for (int64_t v = 0; v < V; v++)
            m = fmax(m, r[v]);
        for (int64_t v = 0; v < V; v++) {
            sum += exp(r[v] - m);
            sx += r[v];
        }
        double lse = m + log(sum);
        total += lse - (1 - s) * r[t[n]] - s / (double)V * sx;
        if (grad)
            for (int64_t v = 0; v < V; v++)
                grad[n * V + v] = (exp(r[v] - lse) - s / (double)V - (v == t[n] ? 1 - s : 0.0)) /
                                  (double)count;
    }
    return count ? total / (double)count : 0.0;
}

START_TEST(test_cross_entropy)
{
    enum { N = 6, V = 7 };
    int64_t ls[3] = {2, 3, V}, ts[2] = {2, 3};
    const int32_t tv[N] = {3, -100, 0, 6, -100, 2};
    lathe_tensor *x = lathe_gc_rand(3, ls, -3, 3, 61, 1);
    lathe_tensor *t = i32_new(2, ts, tv);
    const float smooth[2] = {0.0f, 0.1f};
    for (int k = 0; k < 2; k++) {
        struct ce_ctx c = {t, -100, smooth[k]};
        lathe_scope_push();
        lathe_tensor *out = forward_only(ce_fn, &x, &c);
        ck_assert_int_eq(out->ndim, 1);
        ck_assert_int_eq(out->shape[0], 1);
        double want = ref_ce(NULL, lathe_tensor_f32(x), tv, N, V, -100, smooth[k]);
        assert_close(k ? "cross_entropy (smoothing 0.1)" : "cross_entropy",
                     lathe_tensor_f32(out), &want, 1, 1e-6);
        lathe_scope_pop();
        assert_gradcheck(k ? "cross_entropy (smoothing 0.1)" : "cross_entropy", ce_fn, &x, 1, &c);
        /* ignored rows get exactly no gradient */
        const float *g = lathe_tensor_f32(x->grad);
        for (int v = 0; v < V; v++)
            ck_assert(g[1 * V + v] == 0.0f && g[4 * V + v] == 0.0f);
    }
    lathe_tensor_free(x);
    lathe_tensor_free(t);
}
END_TEST

/* A vocabulary over several online-softmax chunks, rows enough to run in
 * parallel, large logits; forward and gradient against double. */
START_TEST(test_cross_entropy_large)
{
    enum { N = 8, V = 5003 };
    int64_t ls[2] = {N, V}, ts[1] = {N};
    int32_t tv[N] = {0, 5002, 17, -1, 2048, 2047, 4096, 999};
    lathe_tensor *x = lathe_gc_rand(2, ls, -8, 8, 71, 1);
    float *xd = lathe_tensor_f32(x);
    xd[0 * V + 4500] = 60.0f; /* the max sits in a later chunk */
    xd[2 * V + 3] = 55.0f;    /* ... or in the first */
    lathe_tensor *t = i32_new(1, ts, tv);
    static double grad[N * V];
    for (int k = 0; k < 2; k++) {
        float s = k ? 0.2f : 0.0f;
        lathe_tensor_zero_grad(x);
        lathe_scope_push();
        lathe_tensor *out = lathe_cross_entropy(x, t, -1, s);
        ck_assert_msg(out != NULL, "%s", lathe_errmsg());
        double want = ref_ce(grad, xd, tv, N, V, -1, s);
        assert_close("cross_entropy large", lathe_tensor_f32(out), &want, 1, 1e-5);
        ck_assert_int_eq(lathe_backward(out, 1.0f), LATHE_OK);
        assert_close("cross_entropy large grad", lathe_tensor_f32(x->grad), grad, N * V, 1e-6);
        lathe_scope_pop();
    }
    lathe_tensor_free(x);
    lathe_tensor_free(t);
}
END_TEST

/* ---- limits ---------------------------------------------------------- */

/* NULL and a message that names the op and contains each of the strings */
#define ASSERT_REFUSED(expr, ...)                                                       \
    do {                                                                                \
        lathe_error_clear();                                                            \
        lathe_tensor *r_ = (expr);                                                      \
        ck_assert_msg(r_ == NULL, "%s was accepted", #expr);                            \
        const char *want_[] = {__VA_ARGS__};                                            \
        for (size_t i_ = 0; i_ < sizeof want_ / sizeof want_[0]; i_++)                  \
            ck_assert_msg(strstr(lathe_errmsg(), want_[i_]) != NULL,                    \
                          "%s: message \"%s\" lacks \"%s\"", #expr, lathe_errmsg(), want_[i_]); \
    } while (0)

START_TEST(test_bad_shapes)
{
    lathe_scope_push();
    lathe_tensor *x = lathe_tensor_new3(LATHE_F32, 2, 3, 8);
    lathe_tensor *w6 = lathe_tensor_new1(LATHE_F32, 6);
    lathe_tensor *w8 = lathe_tensor_new1(LATHE_F32, 8);
    ASSERT_REFUSED(lathe_layernorm(x, w6, NULL, 1e-5f), "lathe_layernorm", "[2, 3, 8]", "[6]");
    ASSERT_REFUSED(lathe_layernorm(x, w8, w6, 1e-5f), "lathe_layernorm", "bias", "[6]");
    ASSERT_REFUSED(lathe_rmsnorm(x, w6, 1e-5f), "lathe_rmsnorm", "[2, 3, 8]", "[6]");
    ASSERT_REFUSED(lathe_layernorm(x, w8, NULL, -1.0f), "lathe_layernorm", "eps");
    ASSERT_REFUSED(lathe_swiglu(x, w8), "lathe_swiglu", "[2, 3, 8]", "[8]");
    lathe_tensor *ix = lathe_tensor_new3(LATHE_I32, 2, 3, 8);
    ASSERT_REFUSED(lathe_gelu(ix), "lathe_gelu", "I32");

    /* rope */
    lathe_tensor *x4 = lathe_tensor_new4(LATHE_F32, 2, 3, 2, 8);
    lathe_tensor *x4odd = lathe_tensor_new4(LATHE_F32, 2, 3, 2, 7);
    lathe_tensor *pos = lathe_tensor_new2(LATHE_I32, 2, 3);
    lathe_tensor *posbad = lathe_tensor_new1(LATHE_I32, 4);
    lathe_tensor *f4 = lathe_tensor_new1(LATHE_F32, 4);
    ASSERT_REFUSED(lathe_rope(x, pos, f4), "lathe_rope", "[2, 3, 8]");
    ASSERT_REFUSED(lathe_rope(x4odd, pos, f4), "lathe_rope", "[2, 3, 2, 7]", "even");
    ASSERT_REFUSED(lathe_rope(x4, posbad, f4), "lathe_rope", "[2, 3, 2, 8]", "[4]");
    ASSERT_REFUSED(lathe_rope(x4, pos, w8), "lathe_rope", "inv_freq", "[8]");
    ASSERT_REFUSED(lathe_rope(x4, w8, f4), "lathe_rope", "I32");

    /* attention: q [2, 3, 6, 4], k/v [2, 3, 4, 4] -> 6 % 4 != 0 */
    lathe_tensor *q = lathe_tensor_new4(LATHE_F32, 2, 3, 6, 4);
    lathe_tensor *k4 = lathe_tensor_new4(LATHE_F32, 2, 3, 4, 4);
    lathe_tensor *k2 = lathe_tensor_new4(LATHE_F32, 2, 3, 2, 4);
    lathe_tensor *kT = lathe_tensor_new4(LATHE_F32, 2, 5, 2, 4);
    lathe_tensor *seg = lathe_tensor_new2(LATHE_I32, 2, 5);
    ASSERT_REFUSED(lathe_sdpa(q, k4, k4, NULL, 0.0f), "lathe_sdpa", "[2, 3, 6, 4]",
                   "[2, 3, 4, 4]", "multiple");
    ASSERT_REFUSED(lathe_sdpa(q, kT, kT, NULL, 0.0f), "lathe_sdpa", "[2, 3, 6, 4]",
                   "[2, 5, 2, 4]");
    ASSERT_REFUSED(lathe_sdpa(q, k2, k4, NULL, 0.0f), "lathe_sdpa", "[2, 3, 2, 4]",
                   "[2, 3, 4, 4]");
    ASSERT_REFUSED(lathe_sdpa(q, k2, k2, seg, 0.0f), "lathe_sdpa", "segments", "[2, 5]");
    ASSERT_REFUSED(lathe_sdpa(x, k2, k2, NULL, 0.0f), "lathe_sdpa", "[2, 3, 8]", "4-D");
    ck_assert_ptr_nonnull(lathe_sdpa(q, k2, k2, NULL, 0.0f));

    /* cross-entropy */
    lathe_tensor *logits = lathe_tensor_new3(LATHE_F32, 2, 3, 5);
    lathe_tensor *tgt = lathe_tensor_new2(LATHE_I32, 2, 3);
    lathe_tensor *tgtbad = lathe_tensor_new2(LATHE_I32, 3, 3);
    ASSERT_REFUSED(lathe_cross_entropy(logits, tgtbad, -100, 0.0f), "lathe_cross_entropy",
                   "[2, 3, 5]", "[3, 3]");
    ASSERT_REFUSED(lathe_cross_entropy(logits, tgt, -100, 1.0f), "lathe_cross_entropy",
                   "label_smoothing");
    lathe_tensor_i32(tgt)[4] = 5;
    ASSERT_REFUSED(lathe_cross_entropy(logits, tgt, -100, 0.0f), "lathe_cross_entropy",
                   "target 5", "position 4");
    lathe_tensor_i32(tgt)[4] = -7;
    ASSERT_REFUSED(lathe_cross_entropy(logits, tgt, -100, 0.0f), "target -7");
    lathe_tensor_i32(tgt)[4] = -100;
    ck_assert_ptr_nonnull(lathe_cross_entropy(logits, tgt, -100, 0.0f));

    /* a NULL input (a failed earlier op) passes through as NULL */
    ck_assert_ptr_null(lathe_gelu(NULL));
    ck_assert_ptr_null(lathe_sdpa(q, NULL, k2, NULL, 0.0f));
    ck_assert_ptr_null(lathe_cross_entropy(NULL, tgt, -100, 0.0f));
    lathe_scope_pop();
}
END_TEST

START_TEST(test_ce_all_ignored)
{
    int64_t ls[2] = {3, 4}, ts[1] = {3};
    const int32_t tv[3] = {-100, -100, -100};
    lathe_tensor *x = lathe_gc_rand(2, ls, -1, 1, 81, 1);
    lathe_tensor *t = i32_new(1, ts, tv);
    lathe_scope_push();
    lathe_tensor *loss = lathe_cross_entropy(x, t, -100, 0.1f);
    ck_assert_ptr_nonnull(loss);
    ck_assert(lathe_tensor_f32(loss)[0] == 0.0f);
    ck_assert_int_eq(lathe_backward(loss, 1.0f), LATHE_OK);
    ck_assert_ptr_nonnull(x->grad);
    for (int i = 0; i < 12; i++)
        ck_assert(lathe_tensor_f32(x->grad)[i] == 0.0f);
    lathe_scope_pop();
    lathe_tensor_free(x);
    lathe_tensor_free(t);
}
END_TEST

/* isnan() by the bits: a -ffast-math build folds isnan() to 0 */
static int is_nan_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0;
}

START_TEST(test_ce_nan_visible)
{
    /* a NaN anywhere in a kept row makes the loss NaN, not a finite number */
    int64_t ls[2] = {2, 3000}, ts[1] = {2};
    const int32_t tv[2] = {1, 2};
    lathe_tensor *x = lathe_gc_rand(2, ls, -1, 1, 82, 0);
    lathe_tensor *t = i32_new(1, ts, tv);
    lathe_tensor_f32(x)[3000 + 2500] = NAN;
    lathe_scope_push();
    lathe_tensor *loss = lathe_cross_entropy(x, t, -100, 0.0f);
    ck_assert_ptr_nonnull(loss);
    ck_assert_msg(is_nan_bits(lathe_tensor_f32(loss)[0]), "loss %g is not NaN",
                  (double)lathe_tensor_f32(loss)[0]);
    lathe_scope_pop();
    lathe_tensor_free(x);
    lathe_tensor_free(t);
}
END_TEST

START_TEST(test_no_grad_records_nothing)
{
    int64_t xs[4] = {1, 3, 2, 4}, cs[1] = {4}, ts[2] = {1, 3}, fs[1] = {2};
    lathe_tensor *x = lathe_gc_rand(4, xs, -1, 1, 91, 1);
    lathe_tensor *w = lathe_gc_rand(1, cs, -1, 1, 92, 1);
    lathe_tensor *p3 = lathe_tensor_new(LATHE_I32, 1, (const int64_t[]){3});
    lathe_tensor *inv = lathe_tensor_new(LATHE_F32, 1, fs);
    lathe_tensor *tg = lathe_tensor_new(LATHE_I32, 2, ts);
    lathe_scope_push();
    lathe_no_grad_begin();
    lathe_tensor *rs[10] = {
        lathe_layernorm(x, w, w, 1e-5f), lathe_rmsnorm(x, w, 1e-5f), lathe_gelu(x),
        lathe_silu(x), lathe_swiglu(x, x), lathe_rope(x, p3, inv),
        lathe_sdpa(x, x, x, NULL, 0.0f), lathe_softmax(x), lathe_log_softmax(x),
        lathe_cross_entropy(lathe_reshape(x, 3, (const int64_t[]){1, 3, 8}), tg, -100, 0.0f),
    };
    lathe_no_grad_end();
    for (int i = 0; i < 10; i++) {
        ck_assert_msg(rs[i] != NULL, "op %d failed: %s", i, lathe_errmsg());
        ck_assert_msg(!rs[i]->requires_grad && rs[i]->node == NULL, "op %d recorded under no_grad",
                      i);
    }
    /* and with grad on, the same call records */
    lathe_tensor *g = lathe_gelu(x);
    ck_assert(g->requires_grad && g->node != NULL);
    lathe_scope_pop();
    lathe_tensor *all[5] = {x, w, p3, inv, tg};
    free_all(all, 5);
}
END_TEST

static Suite *ops_nn_suite(void)
{
    Suite *s = suite_create("ops_nn");
    TCase *core = tcase_create("Core");
    tcase_set_timeout(core, 60);
    tcase_add_test(core, test_layernorm);
    tcase_add_test(core, test_rmsnorm);
    tcase_add_test(core, test_norm_parallel_sizes);
    tcase_add_test(core, test_activations);
    tcase_add_test(core, test_activation_tails);
    tcase_add_test(core, test_rope);
    tcase_add_test(core, test_sdpa_small);
    tcase_add_test(core, test_sdpa_self);
    tcase_add_test(core, test_sdpa_parallel_sizes);
    tcase_add_test(core, test_sdpa_flash_equals_att_kernels);
    tcase_add_test(core, test_sdpa_without_lse_slots);
    tcase_add_test(core, test_softmax);
    tcase_add_test(core, test_cross_entropy);
    tcase_add_test(core, test_cross_entropy_large);
    suite_add_tcase(s, core);
    TCase *lim = tcase_create("Limits");
    tcase_set_timeout(lim, 60);
    tcase_add_test(lim, test_bad_shapes);
    tcase_add_test(lim, test_ce_all_ignored);
    tcase_add_test(lim, test_ce_nan_visible);
    tcase_add_test(lim, test_no_grad_records_nothing);
    suite_add_tcase(s, lim);
    return s;
}

int main(void) { return lathe_test_run(ops_nn_suite()); }
