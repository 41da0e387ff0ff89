/* tests/check_cuda.c — the CUDA backend plugin against the CPU backend.
 *
 * Every slot runs on the same random inputs through lathe_backend_cpu()
 * (host buffers) and through the plugin's ops (device buffers, filled and
 * read back with its copy slot); the results must agree within the
 * tolerance written beside each test. Backward slots start from the same
 * non-zero gradient so that accumulation (+=) is checked too. Then a tiny
 * GPT-2 trains 20 steps through the lathe train path with run.device = cpu
 * and = cuda, and the two loss curves must agree within 1e-4.
 *
 * Skips (exit 77) when plugins/.libs holds no lathe-cuda.so (a build
 * without CUDA) or when cudaGetDeviceCount finds no device. CUDA is
 * initialised in this process, so the suite runs with CK_NOFORK: a forked
 * child must never touch a CUDA context its parent made. Never links CUDA:
 * the device count comes from the plugin's own libcudart through dlsym. */
#define _GNU_SOURCE /* nftw */
#include <check.h>
#include <dlfcn.h>
#include <ftw.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lathe/lathe.h>

#include "plugin/loader.h"
#include "testutil.h"
#include "train/run.h"

static const struct lathe_backend_ops *gpu, *cpu;
static void *plugin_dl;

/* ---- buffers held twice: on the host for the CPU, on the device ---- */

struct pair {
    void *h, *d;
    size_t bytes;
};

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float urand(float lo, float hi)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return lo + (hi - lo) * (float)((rng >> 11) * (1.0 / 9007199254740992.0));
}

static struct pair pair_bytes(const void *host, size_t bytes)
{
    struct pair p = {malloc(bytes ? bytes : 1), gpu->alloc(bytes ? bytes : 1), bytes};
    ck_assert(p.h && p.d);
    memcpy(p.h, host, bytes);
    ck_assert_msg(gpu->copy(p.d, host, bytes, 1) == LATHE_OK, "%s", lathe_errmsg());
    return p;
}

static struct pair randf(int64_t n, float lo, float hi)
{
    float *v = malloc(sizeof *v * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++)
        v[i] = urand(lo, hi);
    struct pair p = pair_bytes(v, sizeof *v * (size_t)n);
    free(v);
    return p;
}

static struct pair zerosf(int64_t n)
{
    float *v = calloc((size_t)(n ? n : 1), sizeof *v);
    struct pair p = pair_bytes(v, sizeof *v * (size_t)n);
    free(v);
    return p;
}

static struct pair ints(int64_t n, int32_t lo, int32_t hi)
{
    int32_t *v = malloc(sizeof *v * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++)
        v[i] = lo + (int32_t)(urand(0.0f, 1.0f) * (float)(hi - lo));
    for (int64_t i = 0; i < n; i++)
        if (v[i] >= hi)
            v[i] = hi - 1;
    struct pair p = pair_bytes(v, sizeof *v * (size_t)n);
    free(v);
    return p;
}

static void pair_free(struct pair *p)
{
    free(p->h);
    gpu->free(p->d);
    p->h = p->d = NULL;
}

#define F(p) ((float *)(p).h)
#define G(p) ((float *)(p).d)
#define FI(p) ((int32_t *)(p).h)
#define GI(p) ((int32_t *)(p).d)

/* The device copy of p must match the host copy: |g - c| <= atol + rtol |c|. */
static void expect_close(const char *what, struct pair p, double atol, double rtol)
{
    size_t n = p.bytes / sizeof(float);
    float *g = malloc(p.bytes ? p.bytes : 1);
    ck_assert_msg(gpu->copy(g, p.d, p.bytes, 0) == LATHE_OK, "%s: %s", what, lathe_errmsg());
    const float *c = p.h;
    double worst = 0.0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)g[i] - (double)c[i]) - rtol * fabs((double)c[i]);
        if (!(err <= worst) || isnan(g[i]) != isnan(c[i])) {
            worst = isnan(err) ? INFINITY : err;
            at = i;
        }
    }
    float gv = n ? g[at] : 0.0f, cv = n ? c[at] : 0.0f;
    free(g);
    ck_assert_msg(worst <= atol, "%s: element %zu is %.9g on the GPU, %.9g on the CPU (atol %g, rtol %g)", what, at,
                  gv, cv, atol, rtol);
}

/* ---- GEMM: cuBLAS fp32 vs OpenBLAS; K <= 64 terms of |x| <= 1:
 * atol 1e-5, rtol 1e-5 ---- */

START_TEST(gemm_all_transposes)
{
    const int64_t M = 37, N = 29, K = 53, batch = 3;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int shared_b = 0; shared_b < 2; shared_b++) {
                struct pair A = randf(batch * M * K, -1, 1), B = randf(batch * K * N, -1, 1);
                struct pair C = randf(batch * M * N, -1, 1);
                int64_t sb = shared_b ? 0 : K * N;
                cpu->gemm(ta, tb, M, N, K, 0.7f, F(A), F(B), 0.3f, F(C), batch, M * K, sb, M * N);
                gpu->gemm(ta, tb, M, N, K, 0.7f, G(A), G(B), 0.3f, G(C), batch, M * K, sb, M * N);
                char what[64];
                snprintf(what, sizeof what, "gemm ta=%d tb=%d sb=%lld", ta, tb, (long long)sb);
                expect_close(what, C, 1e-5, 1e-5);
                pair_free(&A);
                pair_free(&B);
                pair_free(&C);
            }
}
END_TEST

START_TEST(gemm_k_zero_scales_c)
{
    struct pair C = randf(6 * 5, -1, 1);
    float dummy = 0.0f;
    cpu->gemm(0, 0, 6, 5, 0, 1.0f, &dummy, &dummy, 0.5f, F(C), 1, 0, 0, 0);
    gpu->gemm(0, 0, 6, 5, 0, 1.0f, G(C), G(C), 0.5f, G(C), 1, 0, 0, 0);
    expect_close("gemm K=0", C, 0, 0);
    pair_free(&C);
}
END_TEST

/* ---- mixed precision (ABI 1.2): round_to is bit for bit the CPU's (both
 * round to nearest even, overflow to inf, keep NaN). gemm_lowp multiplies
 * the same rounded operands, exact products summed in f32 in another
 * order (tensor cores): K = 53 terms of |x| <= 1, atol 1e-4, rtol 1e-4;
 * with round_c the two f32 sums may fall on either side of a rounding
 * boundary, so one 16-bit step more: rtol 2^-7 (bf16), 2^-10 (f16) ---- */

START_TEST(lowp_round_to)
{
    ck_assert(LATHE_OPS_HAS(gpu, struct lathe_backend_ops, round_to));
    enum { N = 4096 };
    float x[N];
    const float edge[] = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-11f, 65504.0f, 65519.0f, 65520.0f,
                          -70000.0f, 3.4e38f, 0x1p-25f, 3 * 0x1p-25f, -1e-10f, -0.0f, NAN, INFINITY};
    const int ne = (int)(sizeof edge / sizeof *edge);
    for (int i = 0; i < N; i++)
        x[i] = i < ne ? edge[i] : urand(-2.0f, 2.0f) * ldexpf(1.0f, (int)urand(-30.0f, 20.0f));
    const int dts[2] = {LATHE_BF16, LATHE_F16};
    for (int d = 0; d < 2; d++) {
        struct pair p = pair_bytes(x, sizeof x);
        float want[N], got[N];
        cpu->round_to(want, x, N, dts[d]);
        gpu->round_to(G(p), G(p), N, dts[d]); /* in place */
        ck_assert_msg(gpu->copy(got, p.d, sizeof got, 0) == LATHE_OK, "%s", lathe_errmsg());
        for (int i = 0; i < N; i++)
            ck_assert_msg(isnan(want[i]) ? isnan(got[i]) : memcmp(&want[i], &got[i], 4) == 0,
                          "round_to %s of %.9g: GPU %.9g, CPU %.9g", lathe_dtype_name(dts[d]), (double)x[i],
                          (double)got[i], (double)want[i]);
        pair_free(&p);
    }
}
END_TEST

START_TEST(lowp_gemm)
{
    ck_assert(LATHE_OPS_HAS(gpu, struct lathe_backend_ops, gemm_lowp));
    const int64_t M = 37, N = 29, K = 53, batch = 3;
    const int dts[2] = {LATHE_BF16, LATHE_F16};
    for (int d = 0; d < 2; d++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int variant = 0; variant < 2; variant++) { /* 0: shared B, beta; 1: round_c */
                    struct pair A = randf(batch * M * K, -1, 1), B = randf(batch * K * N, -1, 1);
                    struct pair C = randf(batch * M * N, -1, 1);
                    int64_t sb = variant == 0 ? 0 : K * N;
                    float beta = variant == 0 ? 0.3f : 0.0f;
                    cpu->gemm_lowp(dts[d], variant, ta, tb, M, N, K, 0.7f, F(A), F(B), beta, F(C), batch, M * K, sb,
                                   M * N);
                    gpu->gemm_lowp(dts[d], variant, ta, tb, M, N, K, 0.7f, G(A), G(B), beta, G(C), batch, M * K, sb,
                                   M * N);
                    char what[96];
                    snprintf(what, sizeof what, "gemm_lowp %s ta=%d tb=%d sb=%lld round_c=%d",
                             lathe_dtype_name(dts[d]), ta, tb, (long long)sb, variant);
                    double rtol = variant ? (dts[d] == LATHE_BF16 ? 0x1p-7 : 0x1p-10) : 1e-4;
                    expect_close(what, C, 1e-4, rtol);
                    expect_close("gemm_lowp leaves A alone", A, 0, 0);
                    pair_free(&A);
                    pair_free(&B);
                    pair_free(&C);
                }
}
END_TEST

/* ---- elementwise: the same float operations; exp/log differ by an ulp or
 * two: atol 1e-6, rtol 1e-5. Sums in double: atol 1e-5, rtol 1e-6 ---- */

START_TEST(bias_binary_scale_sum)
{
    const int64_t N = 300, C = 70;
    struct pair out = randf(N * C, -1, 1), bias = randf(C, -1, 1), dbias = randf(C, -1, 1);
    cpu->bias_forward(F(out), F(bias), N, C);
    gpu->bias_forward(G(out), G(bias), N, C);
    expect_close("bias_forward", out, 1e-6, 1e-6);
    cpu->bias_backward(F(dbias), F(out), N, C);
    gpu->bias_backward(G(dbias), G(out), N, C);
    expect_close("bias_backward", dbias, 1e-5, 1e-6);
    for (int op = 0; op < 3; op++)
        for (int full = 0; full < 2; full++) {
            int64_t M = full ? N * C : C;
            struct pair a = randf(N * C, -2, 2), b = randf(M, -2, 2), o = zerosf(N * C);
            struct pair da = randf(N * C, -1, 1), db = randf(M, -1, 1), g = randf(N * C, -1, 1);
            cpu->binary_forward(op, F(o), F(a), F(b), N * C, M);
            gpu->binary_forward(op, G(o), G(a), G(b), N * C, M);
            char what[64];
            snprintf(what, sizeof what, "binary_forward op %d M %lld", op, (long long)M);
            expect_close(what, o, 1e-6, 1e-6);
            cpu->binary_backward(op, F(da), F(db), F(g), F(a), F(b), N * C, M);
            gpu->binary_backward(op, G(da), G(db), G(g), G(a), G(b), N * C, M);
            snprintf(what, sizeof what, "binary_backward da op %d M %lld", op, (long long)M);
            expect_close(what, da, 1e-6, 1e-6);
            snprintf(what, sizeof what, "binary_backward db op %d M %lld", op, (long long)M);
            expect_close(what, db, 1e-5, 1e-5);
            pair_free(&a), pair_free(&b), pair_free(&o), pair_free(&da), pair_free(&db), pair_free(&g);
        }
    struct pair x = randf(100003, -1, 1), s = randf(100003, -1, 1), one = zerosf(1);
    for (int acc = 0; acc < 2; acc++) {
        cpu->scale(F(s), F(x), 0.37f, 100003, acc);
        gpu->scale(G(s), G(x), 0.37f, 100003, acc);
        expect_close("scale", s, 1e-6, 1e-6);
    }
    cpu->sum(F(one), F(x), 100003);
    gpu->sum(G(one), G(x), 100003);
    expect_close("sum", one, 1e-5, 1e-6);
    cpu->fill_add(F(s), F(one), 0.25f, 100003);
    gpu->fill_add(G(s), G(one), 0.25f, 100003);
    expect_close("fill_add", s, 1e-5, 1e-6);
    pair_free(&out), pair_free(&bias), pair_free(&dbias), pair_free(&x), pair_free(&s), pair_free(&one);
}
END_TEST

START_TEST(activations_and_unary)
{
    const int64_t n = 50001;
    struct pair x = randf(n, -6, 6), y = randf(n, -3, 3), o = zerosf(n), g = randf(n, -1, 1);
    struct pair dx = randf(n, -1, 1), dy = randf(n, -1, 1);
    cpu->gelu_forward(F(o), F(x), n), gpu->gelu_forward(G(o), G(x), n);
    expect_close("gelu_forward", o, 1e-6, 1e-5);
    cpu->gelu_backward(F(dx), F(g), F(x), n), gpu->gelu_backward(G(dx), G(g), G(x), n);
    expect_close("gelu_backward", dx, 1e-6, 1e-5);
    cpu->silu_forward(F(o), F(x), n), gpu->silu_forward(G(o), G(x), n);
    expect_close("silu_forward", o, 1e-6, 1e-5);
    cpu->silu_backward(F(dx), F(g), F(x), n), gpu->silu_backward(G(dx), G(g), G(x), n);
    expect_close("silu_backward", dx, 1e-6, 1e-5);
    cpu->swiglu_forward(F(o), F(x), F(y), n), gpu->swiglu_forward(G(o), G(x), G(y), n);
    expect_close("swiglu_forward", o, 1e-6, 1e-5);
    cpu->swiglu_backward(F(dx), F(dy), F(g), F(x), F(y), n);
    gpu->swiglu_backward(G(dx), G(dy), G(g), G(x), G(y), n);
    expect_close("swiglu_backward dgate", dx, 1e-6, 1e-5);
    expect_close("swiglu_backward dup", dy, 1e-6, 1e-5);
    cpu->swiglu_backward(NULL, F(dy), F(g), F(x), F(y), n);
    gpu->swiglu_backward(NULL, G(dy), G(g), G(x), G(y), n);
    expect_close("swiglu_backward dup only", dy, 1e-6, 1e-5);
    struct pair pos = randf(n, 0.01f, 5); /* log needs x > 0 */
    for (int op = 0; op < LATHE_UNARY_COUNT; op++) {
        struct pair in = op == LATHE_UNARY_LOG ? pos : x;
        cpu->unary_forward(op, F(o), F(in), n, -0.5f, 0.75f);
        gpu->unary_forward(op, G(o), G(in), n, -0.5f, 0.75f);
        char what[48];
        snprintf(what, sizeof what, "unary_forward op %d", op);
        expect_close(what, o, 1e-6, 1e-5);
        cpu->unary_backward(op, F(dx), F(g), F(in), F(o), n, -0.5f, 0.75f);
        gpu->unary_backward(op, G(dx), G(g), G(in), G(o), n, -0.5f, 0.75f);
        snprintf(what, sizeof what, "unary_backward op %d", op);
        expect_close(what, dx, 1e-6, 1e-5);
    }
    pair_free(&x), pair_free(&y), pair_free(&o), pair_free(&g), pair_free(&dx), pair_free(&dy), pair_free(&pos);
}
END_TEST

/* ---- embedding and indexing: exact copies forward; the embedding
 * gradient sums repeated ids in another order: atol 1e-6, rtol 1e-5 ---- */

START_TEST(embedding_gather_copies)
{
    const int64_t V = 50, C = 33, N = 400;
    struct pair w = randf(V * C, -1, 1), ids = ints(N, 0, V), out = zerosf(N * C), dout = randf(N * C, -1, 1);
    struct pair dw = randf(V * C, -1, 1);
    cpu->embedding_forward(F(out), FI(ids), F(w), N, C);
    gpu->embedding_forward(G(out), GI(ids), G(w), N, C);
    expect_close("embedding_forward", out, 0, 0);
    cpu->embedding_backward(F(dw), F(dout), FI(ids), N, C);
    gpu->embedding_backward(G(dw), G(dout), GI(ids), N, C);
    expect_close("embedding_backward", dw, 1e-5, 1e-5);

    const int64_t R = 17, VV = 91, K = 6;
    struct pair x = randf(R * VV, -1, 1), idx = ints(R * K, 0, VV), go = zerosf(R * K), gd = randf(R * K, -1, 1);
    struct pair gx = randf(R * VV, -1, 1);
    cpu->gather_forward(F(go), F(x), FI(idx), R, VV, K);
    gpu->gather_forward(G(go), G(x), GI(idx), R, VV, K);
    expect_close("gather_forward", go, 0, 0);
    cpu->gather_backward(F(gx), F(gd), FI(idx), R, VV, K);
    gpu->gather_backward(G(gx), G(gd), GI(idx), R, VV, K);
    expect_close("gather_backward", gx, 1e-6, 1e-6);

    struct pair src = randf(40 * 30, -1, 1), dst = randf(40 * 25, -1, 1);
    for (int acc = 0; acc < 2; acc++) {
        cpu->copy2d(F(dst), 25, F(src) + 3, 30, 40, 20, acc);
        gpu->copy2d(G(dst), 25, G(src) + 3, 30, 40, 20, acc);
        expect_close("copy2d", dst, 1e-7, 0);
    }
    const int64_t shape[4] = {2, 3, 4, 5};
    const int swaps[4][2] = {{1, 3}, {0, 1}, {2, 3}, {3, 0}};
    struct pair t = randf(120, -1, 1), tout = randf(120, -1, 1);
    for (int k = 0; k < 4; k++)
        for (int acc = 0; acc < 2; acc++) {
            cpu->transpose(F(tout), F(t), 4, shape, swaps[k][0], swaps[k][1], acc);
            gpu->transpose(G(tout), G(t), 4, shape, swaps[k][0], swaps[k][1], acc);
            expect_close("transpose", tout, 1e-7, 0);
        }
    pair_free(&w), pair_free(&ids), pair_free(&out), pair_free(&dout), pair_free(&dw), pair_free(&x);
    pair_free(&idx), pair_free(&go), pair_free(&gd), pair_free(&gx), pair_free(&src), pair_free(&dst);
    pair_free(&t), pair_free(&tout);
}
END_TEST

/* ---- norms: float block reductions vs the CPU's sequential float sums:
 * atol 2e-5, rtol 1e-4 ---- */

START_TEST(layernorm_rmsnorm)
{
    const int64_t N = 130, C = 771;
    struct pair x = randf(N * C, -3, 3), w = randf(C, 0.5f, 1.5f), b = randf(C, -1, 1), g = randf(N * C, -1, 1);
    struct pair out = zerosf(N * C), mean = zerosf(N), rstd = zerosf(N);
    struct pair dx = randf(N * C, -1, 1), dw = randf(C, -1, 1), db = randf(C, -1, 1);
    for (int withb = 0; withb < 2; withb++) {
        cpu->layernorm_forward(F(out), F(mean), F(rstd), F(x), F(w), withb ? F(b) : NULL, N, C, 1e-5f);
        gpu->layernorm_forward(G(out), G(mean), G(rstd), G(x), G(w), withb ? G(b) : NULL, N, C, 1e-5f);
        expect_close("layernorm_forward out", out, 2e-5, 1e-4);
        expect_close("layernorm_forward mean", mean, 2e-6, 1e-4);
        expect_close("layernorm_forward rstd", rstd, 2e-6, 1e-4);
    }
    cpu->layernorm_backward(F(dx), F(dw), F(db), F(g), F(x), F(w), F(mean), F(rstd), N, C);
    gpu->layernorm_backward(G(dx), G(dw), G(db), G(g), G(x), G(w), G(mean), G(rstd), N, C);
    expect_close("layernorm_backward dx", dx, 2e-5, 1e-4);
    expect_close("layernorm_backward dw", dw, 1e-4, 1e-4);
    expect_close("layernorm_backward db", db, 1e-4, 1e-4);
    for (int withw = 0; withw < 2; withw++) {
        cpu->rmsnorm_forward(F(out), F(rstd), F(x), withw ? F(w) : NULL, N, C, 1e-6f);
        gpu->rmsnorm_forward(G(out), G(rstd), G(x), withw ? G(w) : NULL, N, C, 1e-6f);
        expect_close("rmsnorm_forward out", out, 2e-5, 1e-4);
        expect_close("rmsnorm_forward rstd", rstd, 2e-6, 1e-4);
        cpu->rmsnorm_backward(F(dx), withw ? F(dw) : NULL, F(g), F(x), withw ? F(w) : NULL, F(rstd), N, C);
        gpu->rmsnorm_backward(G(dx), withw ? G(dw) : NULL, G(g), G(x), withw ? G(w) : NULL, G(rstd), N, C);
        expect_close("rmsnorm_backward dx", dx, 2e-5, 1e-4);
        expect_close("rmsnorm_backward dw", dw, 1e-4, 1e-4);
    }
    pair_free(&x), pair_free(&w), pair_free(&b), pair_free(&g), pair_free(&out), pair_free(&mean);
    pair_free(&rstd), pair_free(&dx), pair_free(&dw), pair_free(&db);
}
END_TEST

/* ---- softmax family and cross-entropy: probabilities atol 1e-6, losses
 * and log-probabilities atol 1e-5, rtol 1e-5 ---- */

START_TEST(softmax_and_cross_entropy)
{
    const int64_t N = 37, C = 1031;
    struct pair x = randf(N * C, -8, 8), o = zerosf(N * C), g = randf(N * C, -1, 1), dx = randf(N * C, -1, 1);
    cpu->softmax_forward(F(o), F(x), N, C), gpu->softmax_forward(G(o), G(x), N, C);
    expect_close("softmax_forward", o, 1e-6, 1e-5);
    cpu->softmax_backward(F(dx), F(g), F(o), N, C), gpu->softmax_backward(G(dx), G(g), G(o), N, C);
    expect_close("softmax_backward", dx, 1e-6, 1e-5);
    cpu->log_softmax_forward(F(o), F(x), N, C), gpu->log_softmax_forward(G(o), G(x), N, C);
    expect_close("log_softmax_forward", o, 1e-5, 1e-5);
    cpu->log_softmax_backward(F(dx), F(g), F(o), N, C), gpu->log_softmax_backward(G(dx), G(g), G(o), N, C);
    expect_close("log_softmax_backward", dx, 1e-5, 1e-5);

    const int64_t V = 5003;
    struct pair lg = randf(N * V, -10, 10), t = ints(N, 0, (int32_t)V), loss = zerosf(N), lse = zerosf(N);
    struct pair dl = randf(N, 0.1f, 1), dlg = randf(N * V, -1e-3f, 1e-3f);
    FI(t)[3] = -100; /* an ignored row */
    ck_assert_int_eq(gpu->copy(t.d, t.h, t.bytes, 1), LATHE_OK);
    for (int k = 0; k < 2; k++) {
        float sm = k ? 0.1f : 0.0f;
        cpu->cross_entropy_forward(F(loss), F(lse), F(lg), FI(t), N, V, -100, sm);
        gpu->cross_entropy_forward(G(loss), G(lse), G(lg), GI(t), N, V, -100, sm);
        expect_close("cross_entropy_forward loss", loss, 1e-5, 1e-5);
        expect_close("cross_entropy_forward lse", lse, 1e-5, 1e-5);
        cpu->cross_entropy_backward(F(dlg), F(dl), F(lg), F(lse), FI(t), N, V, -100, sm);
        gpu->cross_entropy_backward(G(dlg), G(dl), G(lg), G(lse), GI(t), N, V, -100, sm);
        expect_close("cross_entropy_backward", dlg, 1e-6, 1e-5);
    }
    pair_free(&x), pair_free(&o), pair_free(&g), pair_free(&dx), pair_free(&lg), pair_free(&t);
    pair_free(&loss), pair_free(&lse), pair_free(&dl), pair_free(&dlg);
}
END_TEST

/* ---- rotary: same f32 angle, cosf/sinf within an ulp: atol 1e-5 ---- */

START_TEST(rope)
{
    const int64_t B = 2, T = 9, H = 3, D = 16;
    struct pair x = randf(B * T * H * D, -1, 1), o = zerosf(B * T * H * D), dx = randf(B * T * H * D, -1, 1);
    struct pair pos = ints(B * T, 0, 2000), inv = randf(D / 2, 0.0001f, 1);
    for (int per_row = 0; per_row < 2; per_row++) {
        int64_t bs = per_row ? T : 0;
        cpu->rope_forward(F(o), F(x), FI(pos), bs, F(inv), B, T, H, D);
        gpu->rope_forward(G(o), G(x), GI(pos), bs, G(inv), B, T, H, D);
        expect_close("rope_forward", o, 1e-5, 1e-5);
        cpu->rope_backward(F(dx), F(x), FI(pos), bs, F(inv), B, T, H, D);
        gpu->rope_backward(G(dx), G(x), GI(pos), bs, G(inv), B, T, H, D);
        expect_close("rope_backward", dx, 1e-5, 1e-5);
    }
    pair_free(&x), pair_free(&o), pair_free(&dx), pair_free(&pos), pair_free(&inv);
}
END_TEST

/* ---- attention: online softmax (flash) vs two-pass, GEMM orders differ:
 * out, att atol 2e-5, rtol 1e-4; gradients atol 5e-5, rtol 1e-4 ---- */

static void attention_case(int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D, int with_seg)
{
    float scale = 1.0f / sqrtf((float)D);
    int64_t nq = B * T * H * D, nk = B * T * Hkv * D;
    struct pair q = randf(nq, -1, 1), k = randf(nk, -1, 1), v = randf(nk, -1, 1);
    struct pair out = zerosf(nq), att = zerosf(B * H * T * T), dout = randf(nq, -1, 1);
    struct pair dq = randf(nq, -1, 1), dk = randf(nk, -1, 1), dv = randf(nk, -1, 1);
    struct pair seg = ints(B * T, 0, 1);
    for (int64_t i = 0; i < B * T; i++)
        FI(seg)[i] = (int32_t)((i % T) * 3 / T); /* three packed sequences per row */
    ck_assert_int_eq(gpu->copy(seg.d, seg.h, seg.bytes, 1), LATHE_OK);
    const int32_t *sh = with_seg ? FI(seg) : NULL, *sd = with_seg ? GI(seg) : NULL;
    char what[96];
    cpu->attention_forward(F(out), F(att), F(q), F(k), F(v), sh, B, T, H, Hkv, D, scale);
    gpu->attention_forward(G(out), G(att), G(q), G(k), G(v), sd, B, T, H, Hkv, D, scale);
    snprintf(what, sizeof what, "attention_forward out (T %lld H %lld/%lld D %lld seg %d)", (long long)T,
             (long long)H, (long long)Hkv, (long long)D, with_seg);
    expect_close(what, out, 2e-5, 1e-4);
    expect_close("attention_forward att", att, 2e-5, 1e-4);
    cpu->attention_backward(F(dq), F(dk), F(dv), F(dout), F(q), F(k), F(v), F(att), B, T, H, Hkv, D, scale);
    gpu->attention_backward(G(dq), G(dk), G(dv), G(dout), G(q), G(k), G(v), G(att), B, T, H, Hkv, D, scale);
    expect_close("attention_backward dq", dq, 5e-5, 1e-4);
    expect_close("attention_backward dk", dk, 5e-5, 1e-4);
    expect_close("attention_backward dv", dv, 5e-5, 1e-4);
    pair_free(&q), pair_free(&k), pair_free(&v), pair_free(&out), pair_free(&att), pair_free(&dout);
    pair_free(&dq), pair_free(&dk), pair_free(&dv), pair_free(&seg);
}

START_TEST(attention_fwd_bwd)
{
    attention_case(2, 37, 4, 2, 16, 0);
    attention_case(2, 37, 4, 2, 16, 1);
    attention_case(1, 70, 2, 2, 64, 0);
    attention_case(1, 45, 6, 2, 80, 1); /* D not a multiple of 32 */
    attention_case(1, 20, 2, 1, 256, 0);
}
END_TEST

/* ---- attention from lse (ABI 1.2): the flash forward and the two-pass
 * backward against core/cpu/attention_flash.c. Sums run in other orders:
 * out atol 2e-5, rtol 1e-4; lse atol 2e-5, rtol 1e-5; gradients atol 5e-5,
 * rtol 1e-4 (as the att pair above). The device backward must also give
 * the same bits twice. ---- */

static void attention_lse_case(int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D, int seg_kind)
{
    ck_assert(LATHE_OPS_HAS(gpu, struct lathe_backend_ops, attention_lse_forward));
    ck_assert(LATHE_OPS_HAS(gpu, struct lathe_backend_ops, attention_lse_backward));
    float scale = 1.0f / sqrtf((float)D);
    int64_t nq = B * T * H * D, nk = B * T * Hkv * D;
    struct pair q = randf(nq, -1, 1), k = randf(nk, -1, 1), v = randf(nk, -1, 1);
    struct pair out = zerosf(nq), lse = zerosf(B * H * T), dout = randf(nq, -1, 1);
    struct pair dq = randf(nq, -1, 1), dk = randf(nk, -1, 1), dv = randf(nk, -1, 1);
    struct pair seg = ints(B * T, 0, 1);
    for (int64_t i = 0; i < B * T; i++) /* packed samples, the last fifth of each row padding (-1) */
        FI(seg)[i] = i % T >= T - T / 5 ? -1 : (int32_t)((i % T) * 3 / T);
    ck_assert_int_eq(gpu->copy(seg.d, seg.h, seg.bytes, 1), LATHE_OK);
    const int32_t *sh = seg_kind ? FI(seg) : NULL, *sd = seg_kind ? GI(seg) : NULL;
    char what[112];
    snprintf(what, sizeof what, "attention_lse_forward out (T %lld H %lld/%lld D %lld seg %d)", (long long)T,
             (long long)H, (long long)Hkv, (long long)D, seg_kind);
    cpu->attention_lse_forward(F(out), F(lse), F(q), F(k), F(v), sh, B, T, H, Hkv, D, scale);
    gpu->attention_lse_forward(G(out), G(lse), G(q), G(k), G(v), sd, B, T, H, Hkv, D, scale);
    expect_close(what, out, 2e-5, 1e-4);
    expect_close("attention_lse_forward lse", lse, 2e-5, 1e-5);
    /* both backwards read the CPU's out and lse, so only the backward differs */
    ck_assert_int_eq(gpu->copy(out.d, out.h, out.bytes, 1), LATHE_OK);
    ck_assert_int_eq(gpu->copy(lse.d, lse.h, lse.bytes, 1), LATHE_OK);
    cpu->attention_lse_backward(F(dq), F(dk), F(dv), F(dout), F(q), F(k), F(v), F(out), F(lse), sh, B, T, H, Hkv,
                                D, scale);
    gpu->attention_lse_backward(G(dq), G(dk), G(dv), G(dout), G(q), G(k), G(v), G(out), G(lse), sd, B, T, H, Hkv,
                                D, scale);
    expect_close("attention_lse_backward dq", dq, 5e-5, 1e-4);
    expect_close("attention_lse_backward dk", dk, 5e-5, 1e-4);
    expect_close("attention_lse_backward dv", dv, 5e-5, 1e-4);
    /* deterministic: from zero twice, the same bits */
    size_t bq = sizeof(float) * (size_t)nq, bk = sizeof(float) * (size_t)nk;
    float *run[2][3];
    for (int pass = 0; pass < 2; pass++) {
        gpu->zero(G(dq), bq), gpu->zero(G(dk), bk), gpu->zero(G(dv), bk);
        gpu->attention_lse_backward(G(dq), G(dk), G(dv), G(dout), G(q), G(k), G(v), G(out), G(lse), sd, B, T, H,
                                    Hkv, D, scale);
        run[pass][0] = malloc(bq), run[pass][1] = malloc(bk), run[pass][2] = malloc(bk);
        ck_assert(run[pass][0] && run[pass][1] && run[pass][2]);
        ck_assert_int_eq(gpu->copy(run[pass][0], G(dq), bq, 0), LATHE_OK);
        ck_assert_int_eq(gpu->copy(run[pass][1], G(dk), bk, 0), LATHE_OK);
        ck_assert_int_eq(gpu->copy(run[pass][2], G(dv), bk, 0), LATHE_OK);
    }
    ck_assert_msg(memcmp(run[0][0], run[1][0], bq) == 0 && memcmp(run[0][1], run[1][1], bk) == 0 &&
                      memcmp(run[0][2], run[1][2], bk) == 0,
                  "%s: the device backward differs between two runs", what);
    for (int pass = 0; pass < 2; pass++)
        free(run[pass][0]), free(run[pass][1]), free(run[pass][2]);
    pair_free(&q), pair_free(&k), pair_free(&v), pair_free(&out), pair_free(&lse), pair_free(&dout);
    pair_free(&dq), pair_free(&dk), pair_free(&dv), pair_free(&seg);
}

START_TEST(attention_lse_fwd_bwd)
{
    attention_lse_case(2, 37, 4, 2, 16, 0);
    attention_lse_case(2, 37, 4, 2, 16, 1);
    attention_lse_case(1, 300, 6, 2, 64, 1); /* several tiles of every kind, GQA */
    attention_lse_case(1, 70, 2, 2, 64, 0);
    attention_lse_case(1, 45, 6, 2, 80, 1); /* D not a multiple of 32 */
    attention_lse_case(1, 20, 2, 1, 256, 0);
    attention_lse_case(1, 1, 1, 1, 8, 0);
}
END_TEST

START_TEST(attention_cached)
{
    const int64_t B = 2, T = 3, H = 4, Hkv = 2, D = 40, Tmax = 24, len = 13;
    float scale = 0.15f;
    struct pair q = randf(B * T * H * D, -1, 1), kc = randf(B * Tmax * Hkv * D, -1, 1);
    struct pair vc = randf(B * Tmax * Hkv * D, -1, 1), out = zerosf(B * T * H * D), seg = ints(B * Tmax, 0, 2);
    for (int k = 0; k < 2; k++) {
        cpu->attention_cached_forward(F(out), F(q), F(kc), F(vc), k ? FI(seg) : NULL, B, T, H, Hkv, D, Tmax, len,
                                      scale);
        gpu->attention_cached_forward(G(out), G(q), G(kc), G(vc), k ? GI(seg) : NULL, B, T, H, Hkv, D, Tmax, len,
                                      scale);
        expect_close("attention_cached_forward", out, 2e-5, 1e-4);
    }
    pair_free(&q), pair_free(&kc), pair_free(&vc), pair_free(&out), pair_free(&seg);
}
END_TEST

/* ---- optimizer and utilities: AdamW the same float formula (atol 1e-6,
 * rtol 1e-5); sumsq in double (rtol 1e-10); conversions exact ---- */

START_TEST(sumsq_adamw_convert)
{
    const int64_t n = 70001;
    struct pair x = randf(n, -2, 2);
    double hc = 0, hg = 0;
    cpu->sumsq(&hc, F(x), n);
    gpu->sumsq(&hg, G(x), n);
    ck_assert_msg(fabs(hc - hg) <= 1e-10 * hc, "sumsq %.17g on the GPU, %.17g on the CPU", hg, hc);
    struct pair p = randf(n, -1, 1), g = randf(n, -1, 1), m = randf(n, -0.1f, 0.1f), v = randf(n, 0, 0.01f);
    for (int step = 1; step <= 3; step++) {
        float bc1 = 1.0f - powf(0.9f, (float)step), bc2 = 1.0f - powf(0.999f, (float)step);
        cpu->adamw_step(F(p), F(g), F(m), F(v), n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, bc1, bc2);
        gpu->adamw_step(G(p), G(g), G(m), G(v), n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, bc1, bc2);
    }
    expect_close("adamw p", p, 1e-6, 1e-5);
    expect_close("adamw m", m, 1e-7, 1e-5);
    expect_close("adamw v", v, 1e-8, 1e-5);
    const int dts[2] = {LATHE_BF16, LATHE_F16};
    for (int k = 0; k < 2; k++) {
        struct pair half = pair_bytes(F(x), 2 * (size_t)n), back = zerosf(n);
        cpu->convert(half.h, dts[k], F(x), LATHE_F32, n);
        gpu->convert(half.d, dts[k], G(x), LATHE_F32, n);
        cpu->convert(F(back), LATHE_F32, half.h, dts[k], n);
        gpu->convert(G(back), LATHE_F32, half.d, dts[k], n);
        expect_close(k ? "convert f16 round trip" : "convert bf16 round trip", back, 0, 0);
        struct pair other = pair_bytes(F(x), 2 * (size_t)n);
        cpu->convert(other.h, dts[1 - k], half.h, dts[k], n);
        gpu->convert(other.d, dts[1 - k], half.d, dts[k], n);
        cpu->convert(F(back), LATHE_F32, other.h, dts[1 - k], n);
        gpu->convert(G(back), LATHE_F32, other.d, dts[1 - k], n);
        expect_close("convert between bf16 and f16", back, 0, 0);
        pair_free(&half), pair_free(&back), pair_free(&other);
    }
    pair_free(&x), pair_free(&p), pair_free(&g), pair_free(&m), pair_free(&v);
}
END_TEST

/* ---- the train path: the same INI on each device ---- */

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void rm_tree(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

/* The "loss" of each metrics.jsonl line that has one, in order. */
static int read_losses(const char *path, double *loss, int max)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char line[4096];
    int n = 0;
    while (n < max && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"loss\""); /* the train/ prefix is dropped there */
        if (p && (p = strchr(p, ':')))
            loss[n++] = strtod(p + 1, NULL);
    }
    fclose(f);
    return n;
}

static int train_once(const char *dir, const char *device, double *loss, int max)
{
    char ini[4200], corpus[4200], text[12288];
    const char *top = getenv("top_srcdir");
    snprintf(corpus, sizeof corpus, "%s/examples/data/tiny-corpus.txt", top ? top : ".");
    snprintf(ini, sizeof ini, "%s/%s.ini", dir, device);
    snprintf(text, sizeof text,
             "[run]\noutput_dir = %s/%s\nseed = 7\ndevice = %s\n"
             "[model]\nplugin = gpt2\nlayers = 2\nheads = 2\nembd = 32\nvocab_size = 256\ncontext = 32\n"
             "dropout = 0.0\n"
             "[data]\nplugin = text\npath = %s\nseq_len = 32\neval_fraction = 0.0\n"
             "[optim]\nplugin = adamw\nlr = 3e-3\n"
             "[train]\nsteps = 20\nbatch_size = 4\nmax_grad_norm = 1.0\nlog_every = 1\n"
             "[log]\ntensorboard = false\n",
             dir, device, device, corpus);
    FILE *f = fopen(ini, "w");
    ck_assert(f);
    fputs(text, f);
    fclose(f);
    struct lathe_run_opts o = {.ini_path = ini};
    struct lathe_run *run = NULL;
    ck_assert_msg(lathe_run_create(&run, &o) == LATHE_OK, "%s: %s", device, lathe_errmsg());
    int rc = lathe_run_train(run);
    if (rc != LATHE_OK)
        fprintf(stderr, "check_cuda: the %s run ended with: %s\n", device, lathe_errmsg());
    lathe_run_destroy(run);
    char metrics[4300];
    snprintf(metrics, sizeof metrics, "%s/%s/metrics.jsonl", dir, device);
    return read_losses(metrics, loss, max);
}

START_TEST(train_20_steps_follows_cpu)
{
    char tmpl[] = "/tmp/check_cuda.XXXXXX";
    char *dir = mkdtemp(tmpl);
    ck_assert(dir);
    double lc[32], lg[32];
    int nc = train_once(dir, "cpu", lc, 32);
    /* The GPU run may end with an error after its last step: writing the
     * checkpoint reads tensors on the host (see the report); the losses of
     * all 20 steps are logged before that. */
    int ng = train_once(dir, "cuda", lg, 32);
    ck_assert_int_eq(nc, 20);
    ck_assert_int_eq(ng, 20);
    for (int i = 0; i < 20; i++)
        ck_assert_msg(fabs(lc[i] - lg[i]) <= 1e-4, "step %d: loss %.7f on the GPU, %.7f on the CPU", i + 1, lg[i],
                      lc[i]);
    ck_assert_msg(lc[19] < lc[0], "the loss did not fall (%.4f -> %.4f)", lc[0], lc[19]);
    rm_tree(dir); /* no system("rm -rf"): this process holds a CUDA context and must not fork */
}
END_TEST

/* ---- limits ---- */

/* A run that asks for a device without the plugin names what to do. */
START_TEST(device_cuda_without_plugin_path)
{
    char tmpl[] = "/tmp/check_cuda.XXXXXX";
    char *dir = mkdtemp(tmpl);
    ck_assert(dir);
    char ini[4200];
    snprintf(ini, sizeof ini, "%s/run.ini", dir);
    FILE *f = fopen(ini, "w");
    ck_assert(f);
    fprintf(f, "[run]\ndevice = cuda\n[plugins]\n[model]\nplugin = gpt2\n[data]\nplugin = text\n[train]\nsteps = 1\n");
    fclose(f);
    const char *saved = getenv("LATHE_PLUGIN_PATH");
    char *keep = saved ? strdup(saved) : NULL;
    setenv("LATHE_PLUGIN_PATH", dir, 1); /* an empty directory: no plugins */
    struct lathe_run_opts o = {.ini_path = ini};
    struct lathe_run *run = NULL;
    int rc = lathe_run_create(&run, &o);
    if (keep) {
        setenv("LATHE_PLUGIN_PATH", keep, 1);
        free(keep);
    }
#ifdef LATHE_PLUGINDIR
    /* an installed lathe-cuda.so in the plugin directory would be found */
    if (rc == LATHE_OK) {
        lathe_run_destroy(run);
        unlink(ini);
        rmdir(dir);
        return;
    }
#endif
    ck_assert_int_ne(rc, LATHE_OK);
    ck_assert_msg(strstr(lathe_errmsg(), "no CUDA backend plugin on the plugin path") != NULL, "%s", lathe_errmsg());
    ck_assert_msg(strstr(lathe_errmsg(), "--with-cuda=DIR") != NULL, "%s", lathe_errmsg());
    unlink(ini);
    rmdir(dir);
}
END_TEST

/* A failing CUDA call inside a void slot comes back from the next copy. */
START_TEST(errors_reach_copy)
{
    /* a head size beyond the attention kernel is refused and recorded */
    float *d = gpu->alloc(64);
    ck_assert(d);
    gpu->attention_forward(d, NULL, d, d, d, NULL, 1, 1, 1, 1, 1000, 1.0f);
    float h[16];
    int rc = gpu->copy(h, d, sizeof h, 0);
    ck_assert_int_eq(rc, LATHE_ECUDA);
    ck_assert_msg(strstr(lathe_errmsg(), "plugins/cuda/attention.cu:") != NULL, "%s", lathe_errmsg());
    /* reported once: the next copy is clean */
    ck_assert_int_eq(gpu->copy(h, d, sizeof h, 0), LATHE_OK);
    gpu->free(d);
}
END_TEST

/* ---- setup ---- */

/* 0: a device is there and the plugin loaded; 77: skip. */
static int find_gpu(void)
{
    const char *pp = getenv("LATHE_PLUGIN_PATH");
    if (!pp) {
        fprintf(stderr, "check_cuda: LATHE_PLUGIN_PATH is not set; skipping\n");
        return 77;
    }
    char path[4200];
    const char *end = strchr(pp, ':');
    snprintf(path, sizeof path, "%.*s/lathe-cuda.so", (int)(end ? end - pp : (long)strlen(pp)), pp);
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "check_cuda: no %s (built without CUDA); skipping\n", path);
        return 77;
    }
    const struct lathe_plugin_desc *desc = NULL;
    /* through the loader's own checks: a CPU-only host must take it */
    if (lathe_plugin_validate_file(path, &plugin_dl, &desc) != LATHE_OK) {
        fprintf(stderr, "check_cuda: %s\n", lathe_errmsg());
        return 1;
    }
    for (const struct lathe_component *c = desc->components; c->kind; c++)
        if (c->kind == LATHE_KIND_BACKEND && strcmp(c->name, "cuda") == 0)
            gpu = c->ops;
    if (!gpu || gpu->device != LATHE_DEVICE_CUDA) {
        fprintf(stderr, "check_cuda: %s has no backend \"cuda\" for LATHE_DEVICE_CUDA\n", path);
        return 1;
    }
    /* the plugin's libcudart, found through its dependencies */
    int (*count)(int *) = NULL;
    void *sym = dlsym(plugin_dl, "cudaGetDeviceCount");
    memcpy(&count, &sym, sizeof count);
    int n = 0;
    if (!count || count(&n) != 0 || n == 0) {
        fprintf(stderr, "check_cuda: no CUDA device (cudaGetDeviceCount); skipping\n");
        return 77;
    }
    cpu = lathe_backend_cpu();
    return 0;
}

int main(void)
{
    int st = find_gpu();
    if (st != 0)
        return st;
    Suite *s = suite_create("cuda");
    TCase *core = tcase_create("Core");
    tcase_set_timeout(core, 120);
    tcase_add_test(core, gemm_all_transposes);
    tcase_add_test(core, gemm_k_zero_scales_c);
    tcase_add_test(core, lowp_round_to);
    tcase_add_test(core, lowp_gemm);
    tcase_add_test(core, bias_binary_scale_sum);
    tcase_add_test(core, activations_and_unary);
    tcase_add_test(core, embedding_gather_copies);
    tcase_add_test(core, layernorm_rmsnorm);
    tcase_add_test(core, softmax_and_cross_entropy);
    tcase_add_test(core, rope);
    tcase_add_test(core, attention_fwd_bwd);
    tcase_add_test(core, attention_lse_fwd_bwd);
    tcase_add_test(core, attention_cached);
    tcase_add_test(core, sumsq_adamw_convert);
    tcase_add_test(core, train_20_steps_follows_cpu);
    suite_add_tcase(s, core);
    TCase *lim = tcase_create("Limits");
    tcase_add_test(lim, device_cuda_without_plugin_path);
    tcase_add_test(lim, errors_reach_copy);
    suite_add_tcase(s, lim);
    SRunner *sr = srunner_create(s);
    /* CUDA lives in this process: never fork (a child cannot use it) */
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
