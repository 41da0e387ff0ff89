/* tests/check_ops_linalg.c — matmul, linear, embedding, elementwise,
 * reductions, dropout, shape and index ops, and the CPU kernels under them
 * (including AdamW and dtype conversion).
 *
 * Forwards are compared with plain-loop references accumulated in double;
 * backwards with central finite differences (gradcheck.h). Kernel tests use
 * sizes past the threading threshold so the OpenMP paths run too. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <lathe/lathe.h>

#include "gradcheck.h"
#include "testutil.h"

#define GC_EPS 1e-2
#define GC_TOL 1e-2

/* ---- helpers -------------------------------------------------------- */

static lathe_tensor *rnd(int ndim, const int64_t *shape, uint64_t seed, int requires_grad)
{
    lathe_tensor *t = lathe_gc_rand(ndim, shape, -1.0f, 1.0f, seed, requires_grad);
    ck_assert_ptr_nonnull(t);
    return t;
}
#define RND(seed, rg, ...)                                                                         \
    rnd(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t), (int64_t[]){__VA_ARGS__}, seed, rg)

/* A caller-owned I32 tensor holding vals. */
static lathe_tensor *ids_new(int ndim, const int64_t *shape, const int32_t *vals)
{
    lathe_tensor *t = lathe_tensor_new(LATHE_I32, ndim, shape);
    ck_assert_ptr_nonnull(t);
    memcpy(t->data, vals, sizeof(int32_t) * (size_t)lathe_tensor_numel(t));
    return t;
}

static void expect_close(const float *got, const double *want, int64_t n, double tol,
                         const char *what)
{
    for (int64_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - want[i]) / fmax(1.0, fabs(want[i]));
        ck_assert_msg(err <= tol, "%s[%lld]: got %.8g, want %.8g", what, (long long)i,
                      (double)got[i], want[i]);
    }
}

static void expect_equal_f(const float *got, const float *want, int64_t n, const char *what)
{
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(got[i] == want[i], "%s[%lld]: got %.8g, want %.8g", what, (long long)i,
                      (double)got[i], (double)want[i]);
}

static void gc(lathe_gc_fn f, lathe_tensor *const *in, int n, void *ctx, const char *what)
{
    char msg[512];
    int bad = lathe_gradcheck(f, in, n, ctx, GC_EPS, GC_TOL, msg, sizeof msg);
    ck_assert_msg(!bad, "%s: %s", what, msg);
}

static double *dalloc(int64_t n)
{
    double *d = calloc((size_t)(n > 0 ? n : 1), sizeof *d);
    ck_assert_ptr_nonnull(d);
    return d;
}

static float *falloc_rand(int64_t n, uint64_t seed)
{
    float *f = malloc(sizeof *f * (size_t)(n > 0 ? n : 1));
    ck_assert_ptr_nonnull(f);
    lathe_rng r;
    lathe_rng_seed(&r, seed);
    for (int64_t i = 0; i < n; i++)
        f[i] = (float)(lathe_rng_uniform(&r) * 2.0 - 1.0);
    return f;
}

static void expect_error(const void *result, int line, const char *const *needles)
{
    ck_assert_msg(result == NULL, "line %d: the call should have failed", line);
    const char *m = lathe_errmsg();
    for (int k = 0; needles[k]; k++)
        ck_assert_msg(strstr(m, needles[k]), "line %d: message \"%s\" lacks \"%s\"", line, m,
                      needles[k]);
    lathe_error_clear();
}
#define EXPECT_ERROR(result, ...)                                                                  \
    expect_error(result, __LINE__, (const char *const[]){__VA_ARGS__, NULL})

/* ---- matmul --------------------------------------------------------- */

struct mm_case {
    int ndim_a, ndim_b, trans_b;
    int64_t sa[4], sb[4];
};

static const struct mm_case mm_cases[] = {
    {2, 2, 0, {3, 4}, {4, 5}},
    {2, 2, 1, {3, 4}, {5, 4}},
    {3, 3, 0, {2, 3, 4}, {2, 4, 5}},
    {3, 3, 1, {2, 3, 4}, {2, 5, 4}},
    {3, 2, 0, {2, 3, 4}, {4, 5}},
    {4, 2, 1, {2, 2, 3, 4}, {5, 4}},
    {4, 4, 1, {2, 2, 3, 4}, {2, 2, 5, 4}},
};

static void matmul_ref(double *out, const lathe_tensor *a, const lathe_tensor *b, int trans_b)
{
    int na = a->ndim, nb = b->ndim;
    int64_t M = a->shape[na - 2], K = a->shape[na - 1];
    int64_t N = trans_b ? b->shape[nb - 2] : b->shape[nb - 1];
    int64_t batch = lathe_tensor_numel(a) / (M * K);
    const float *A = lathe_tensor_f32(a), *B = lathe_tensor_f32(b);
    for (int64_t t = 0; t < batch; t++) {
        const float *Bt = nb == 2 ? B : B + t * K * N;
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
                double s = 0.0;
                for (int64_t k = 0; k < K; k++)
                    s += (double)A[(t * M + m) * K + k] *
                         (double)(trans_b ? Bt[n * K + k] : Bt[k * N + n]);
                out[(t * M + m) * N + n] = s;
            }
    }
}

static lathe_tensor *mm_fn(lathe_tensor *const *in, void *ctx)
{
    return lathe_matmul(in[0], in[1], *(int *)ctx);
}

START_TEST(test_matmul_forward)
{
    for (size_t c = 0; c < sizeof mm_cases / sizeof mm_cases[0]; c++) {
        const struct mm_case *mc = &mm_cases[c];
        lathe_tensor *a = rnd(mc->ndim_a, mc->sa, 10 + c, 0);
        lathe_tensor *b = rnd(mc->ndim_b, mc->sb, 20 + c, 0);
        lathe_scope_push();
        lathe_tensor *out = lathe_matmul(a, b, mc->trans_b);
        ck_assert_msg(out != NULL, "case %zu: %s", c, lathe_errmsg());
        ck_assert_int_eq(out->ndim, mc->ndim_a);
        int64_t n = lathe_tensor_numel(out);
        double *ref = dalloc(n);
        matmul_ref(ref, a, b, mc->trans_b);
        expect_close(lathe_tensor_f32(out), ref, n, 1e-5, "matmul");
        free(ref);
        lathe_scope_pop();
        lathe_tensor_free(a);
        lathe_tensor_free(b);
    }
}
END_TEST

START_TEST(test_matmul_grad)
{
    for (size_t c = 0; c < sizeof mm_cases / sizeof mm_cases[0]; c++) {
        const struct mm_case *mc = &mm_cases[c];
        lathe_tensor *in[2] = {rnd(mc->ndim_a, mc->sa, 30 + c, 1), rnd(mc->ndim_b, mc->sb, 40 + c, 1)};
        int tb = mc->trans_b;
        gc(mm_fn, in, 2, &tb, "matmul");
        lathe_tensor_free(in[0]);
        lathe_tensor_free(in[1]);
    }
    /* One operand twice: both gradient contributions land in one buffer. */
    lathe_tensor *x = RND(50, 1, 4, 4);
    lathe_tensor *in2[2] = {x, x};
    int tb = 1;
    gc(mm_fn, in2, 2, &tb, "matmul(x, x^T)");
    lathe_tensor_free(x);
}
END_TEST

/* ---- linear --------------------------------------------------------- */

static lathe_tensor *linear_fn(lathe_tensor *const *in, void *ctx)
{
    return lathe_linear(in[0], in[1], ctx ? in[2] : NULL);
}

START_TEST(test_linear)
{
    lathe_tensor *x = RND(1, 1, 2, 3, 4), *w = RND(2, 1, 5, 4), *b = RND(3, 1, 5);
    lathe_scope_push();
    for (int with_bias = 0; with_bias < 2; with_bias++) {
        lathe_tensor *out = lathe_linear(x, w, with_bias ? b : NULL);
        ck_assert_msg(out != NULL, "%s", lathe_errmsg());
        ck_assert_int_eq(out->ndim, 3);
        ck_assert_int_eq(out->shape[2], 5);
        double ref[30];
        const float *X = lathe_tensor_f32(x), *W = lathe_tensor_f32(w), *Bv = lathe_tensor_f32(b);
        for (int n = 0; n < 6; n++)
            for (int o = 0; o < 5; o++) {
                double s = with_bias ? Bv[o] : 0.0;
                for (int i = 0; i < 4; i++)
                    s += (double)X[n * 4 + i] * W[o * 4 + i];
                ref[n * 5 + o] = s;
            }
        expect_close(lathe_tensor_f32(out), ref, 30, 1e-5, "linear");
    }
    lathe_scope_pop();
    lathe_tensor *in[3] = {x, w, b};
    gc(linear_fn, in, 3, (void *)1, "linear with bias");
    gc(linear_fn, in, 2, NULL, "linear without bias");
    lathe_tensor_free(x);
    lathe_tensor_free(w);
    lathe_tensor_free(b);
}
END_TEST

struct hook_seen {
    int calls;
    lathe_tensor *x, *base;
};

static lathe_tensor *double_hook(void *self, struct lathe_linear *l, lathe_tensor *x,
                                 lathe_tensor *base_out)
{
    struct hook_seen *s = self;
    s->calls++;
    s->x = x;
    s->base = base_out;
    return lathe_scale(base_out, 2.0f);
}

START_TEST(test_linear_forward_hook)
{
    lathe_tensor *x = RND(4, 0, 3, 4), *w = RND(5, 1, 2, 4), *b = RND(6, 1, 2);
    struct lathe_linear l = {.name = "h.0.mlp.c_fc", .weight = w, .bias = b};
    lathe_scope_push();
    lathe_tensor *plain = lathe_linear_forward(&l, x);
    ck_assert_ptr_nonnull(plain);
    lathe_tensor *ref = lathe_linear(x, w, b);
    expect_equal_f(lathe_tensor_f32(plain), lathe_tensor_f32(ref), 6, "unhooked");

    struct hook_seen seen = {0};
    l.hook = double_hook;
    l.hook_self = &seen;
    lathe_tensor *hooked = lathe_linear_forward(&l, x);
    ck_assert_ptr_nonnull(hooked);
    ck_assert_int_eq(seen.calls, 1);
    ck_assert_ptr_eq(seen.x, x);
    expect_equal_f(lathe_tensor_f32(seen.base), lathe_tensor_f32(ref), 6, "base given to hook");
    for (int i = 0; i < 6; i++)
        ck_assert_float_eq(lathe_tensor_f32(hooked)[i], 2.0f * lathe_tensor_f32(ref)[i]);

    /* A bad input names the layer. */
    lathe_tensor *bad = lathe_tensor_new2(LATHE_F32, 3, 7);
    EXPECT_ERROR(lathe_linear_forward(&l, bad), "h.0.mlp.c_fc", "lathe_linear", "[3, 7]", "[2, 4]");
    EXPECT_ERROR(lathe_linear_forward(NULL, x), "lathe_linear_forward");
    lathe_scope_pop();
    lathe_tensor_free(x);
    lathe_tensor_free(w);
    lathe_tensor_free(b);
}
END_TEST

/* ---- embedding ------------------------------------------------------ */

static lathe_tensor *emb_fn(lathe_tensor *const *in, void *ctx)
{
    return lathe_embedding(in[0], ctx);
}

START_TEST(test_embedding)
{
    lathe_tensor *w = RND(7, 1, 7, 5);
    /* id 3 three times: its row of dw collects three contributions */
    const int32_t vals[6] = {3, 0, 6, 3, 3, 1};
    lathe_tensor *ids = ids_new(2, (int64_t[]){2, 3}, vals);
    lathe_scope_push();
    lathe_tensor *out = lathe_embedding(w, ids);
    ck_assert_ptr_nonnull(out);
    ck_assert_int_eq(out->ndim, 3);
    ck_assert_int_eq(out->shape[2], 5);
    for (int n = 0; n < 6; n++)
        expect_equal_f(lathe_tensor_f32(out) + n * 5, lathe_tensor_f32(w) + vals[n] * 5, 5,
                       "embedding row");
    lathe_scope_pop();
    gc(emb_fn, &w, 1, ids, "embedding");
    lathe_tensor_free(w);
    lathe_tensor_free(ids);
}
END_TEST

/* ---- elementwise ---------------------------------------------------- */

typedef lathe_tensor *(*binop_fn)(lathe_tensor *, lathe_tensor *);
static const binop_fn binops[3] = {lathe_add, lathe_sub, lathe_mul};

static lathe_tensor *bin_fn(lathe_tensor *const *in, void *ctx)
{
    return binops[*(int *)ctx](in[0], in[1]);
}

START_TEST(test_binary)
{
    /* b shapes against a [2, 3, 4]: equal, suffixes, leading-1 suffix */
    static const struct { int nd; int64_t s[3]; } bshapes[] = {
        {3, {2, 3, 4}}, {2, {3, 4}}, {1, {4}}, {3, {1, 3, 4}},
    };
    lathe_tensor *a = RND(8, 1, 2, 3, 4);
    for (size_t k = 0; k < sizeof bshapes / sizeof bshapes[0]; k++) {
        lathe_tensor *b = rnd(bshapes[k].nd, bshapes[k].s, 9 + k, 1);
        int64_t M = lathe_tensor_numel(b);
        for (int op = 0; op < 3; op++) {
            lathe_scope_push();
            lathe_tensor *out = binops[op](a, b);
            ck_assert_msg(out != NULL, "op %d b %zu: %s", op, k, lathe_errmsg());
            ck_assert(lathe_tensor_same_shape(out, a));
            double ref[24];
            const float *A = lathe_tensor_f32(a), *B = lathe_tensor_f32(b);
            for (int i = 0; i < 24; i++) {
                double x = A[i], y = B[i % M];
                ref[i] = op == 0 ? x + y : op == 1 ? x - y : x * y;
            }
            expect_close(lathe_tensor_f32(out), ref, 24, 1e-6, "binary");
            lathe_scope_pop();
            lathe_tensor *in[2] = {a, b};
            gc(bin_fn, in, 2, &op, "binary op");
        }
        lathe_tensor_free(b);
    }
    /* x op x: both operand gradients go to one buffer */
    lathe_tensor *in2[2] = {a, a};
    for (int op = 0; op < 3; op++)
        gc(bin_fn, in2, 2, &op, "x op x");
    lathe_tensor_free(a);
}
END_TEST

static lathe_tensor *scale_fn(lathe_tensor *const *in, void *ctx)
{
    return lathe_scale(in[0], -1.75f);
}
static lathe_tensor *sum_fn(lathe_tensor *const *in, void *ctx)
{
    return lathe_sum(in[0]);
}
static lathe_tensor *mean_fn(lathe_tensor *const *in, void *ctx)
{
    return lathe_mean(in[0]);
}

START_TEST(test_scale_sum_mean)
{
    lathe_tensor *x = RND(11, 1, 3, 5);
    const float *X = lathe_tensor_f32(x);
    double s = 0.0, sc[15];
    for (int i = 0; i < 15; i++) {
        s += X[i];
        sc[i] = -1.75 * X[i];
    }
    lathe_scope_push();
    lathe_tensor *o = lathe_scale(x, -1.75f);
    ck_assert_ptr_nonnull(o);
    expect_close(lathe_tensor_f32(o), sc, 15, 1e-6, "scale");
    lathe_tensor *sm = lathe_sum(x), *mn = lathe_mean(x);
    ck_assert(sm && mn && sm->ndim == 1 && sm->shape[0] == 1 && mn->shape[0] == 1);
    double want_mean = s / 15;
    expect_close(lathe_tensor_f32(sm), &s, 1, 1e-6, "sum");
    expect_close(lathe_tensor_f32(mn), &want_mean, 1, 1e-6, "mean");
    lathe_scope_pop();
    gc(scale_fn, &x, 1, NULL, "scale");
    gc(sum_fn, &x, 1, NULL, "sum");
    gc(mean_fn, &x, 1, NULL, "mean");
    lathe_tensor_free(x);
}
END_TEST

/* ---- dropout -------------------------------------------------------- */

static lathe_tensor *dropout_fn(lathe_tensor *const *in, void *ctx)
{
    /* the same mask on every call */
    lathe_rng_seed(lathe_rng_global(), 99);
    return lathe_dropout(in[0], 0.3f, 1);
}

START_TEST(test_dropout)
{
    lathe_tensor *x = RND(12, 1, 100, 100);
    lathe_scope_push();
    ck_assert_ptr_eq(lathe_dropout(x, 0.0f, 1), x);
    ck_assert_ptr_eq(lathe_dropout(x, 0.5f, 0), x);
    lathe_rng_seed(lathe_rng_global(), 5);
    lathe_tensor *o1 = lathe_dropout(x, 0.5f, 1);
    lathe_rng_seed(lathe_rng_global(), 5);
    lathe_tensor *o2 = lathe_dropout(x, 0.5f, 1);
    lathe_tensor *o3 = lathe_dropout(x, 0.5f, 1);
    ck_assert(o1 && o2 && o3);
    ck_assert(o1->requires_grad);
    const float *X = lathe_tensor_f32(x), *O = lathe_tensor_f32(o1);
    int64_t kept = 0, n = 10000;
    for (int64_t i = 0; i < n; i++) {
        ck_assert_msg(O[i] == 0.0f || O[i] == X[i] * 2.0f, "element %lld: %g from %g",
                      (long long)i, (double)O[i], (double)X[i]);
        kept += O[i] != 0.0f;
    }
    ck_assert_msg(kept > 4700 && kept < 5300, "kept %lld of 10000 at p = 0.5", (long long)kept);
    expect_equal_f(lathe_tensor_f32(o2), O, n, "same seed, same mask");
    ck_assert(memcmp(lathe_tensor_f32(o3), O, sizeof(float) * (size_t)n) != 0);
    lathe_scope_pop();
    lathe_tensor *small = RND(13, 1, 4, 6);
    gc(dropout_fn, &small, 1, NULL, "dropout");
    lathe_tensor_free(small);
    lathe_tensor_free(x);
}
END_TEST

/* ---- shape ---------------------------------------------------------- */

static lathe_tensor *reshape_fn(lathe_tensor *const *in, void *ctx)
{
    return lathe_reshape(in[0], 3, (int64_t[]){3, -1, 2});
}

START_TEST(test_reshape)
{
    lathe_tensor *x = RND(14, 1, 4, 6);
    lathe_scope_push();
    lathe_tensor *v = lathe_reshape(x, 3, (int64_t[]){3, -1, 2});
    ck_assert_ptr_nonnull(v);
    ck_assert_int_eq(v->ndim, 3);
    ck_assert_int_eq(v->shape[1], 4);
    ck_assert_ptr_eq(v->data, x->data);
    ck_assert(v->requires_grad);
    /* index tensors reshape too */
    lathe_tensor *ids = lathe_tensor_new2(LATHE_I32, 2, 3);
    lathe_tensor *flat = lathe_reshape(ids, 1, (int64_t[]){-1});
    ck_assert(flat && flat->shape[0] == 6 && flat->dtype == LATHE_I32);
    lathe_scope_pop();
    gc(reshape_fn, &x, 1, NULL, "reshape");
    lathe_tensor_free(x);
}
END_TEST

struct tr_case {
    int ndim;
    int64_t shape[4];
    int d0, d1;
};

static lathe_tensor *transpose_fn(lathe_tensor *const *in, void *ctx)
{
    const struct tr_case *c = ctx;
    return lathe_transpose(in[0], c->d0, c->d1);
}

START_TEST(test_transpose)
{
    static const struct tr_case cases[] = {
        {4, {2, 3, 4, 5}, 1, 2}, {4, {2, 3, 4, 5}, 0, 3}, {4, {2, 3, 4, 5}, 2, 3},
        {4, {2, 3, 4, 5}, -1, -2}, {2, {70, 45}, 0, 1}, {3, {3, 1, 4}, 0, 1},
        {3, {2, 3, 4}, 1, 1},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const struct tr_case *c = &cases[k];
        lathe_tensor *x = rnd(c->ndim, c->shape, 60 + k, 1);
        int d0 = c->d0 < 0 ? c->d0 + c->ndim : c->d0, d1 = c->d1 < 0 ? c->d1 + c->ndim : c->d1;
        lathe_scope_push();
        lathe_tensor *out = lathe_transpose(x, c->d0, c->d1);
        ck_assert_msg(out != NULL, "%s", lathe_errmsg());
        ck_assert_int_eq(out->shape[d0], c->shape[d1]);
        ck_assert_int_eq(out->shape[d1], c->shape[d0]);
        /* walk every x index and find it in out */
        int64_t n = lathe_tensor_numel(x), idx[4] = {0};
        const float *X = lathe_tensor_f32(x), *O = lathe_tensor_f32(out);
        for (int64_t i = 0; i < n; i++) {
            int64_t r = i;
            for (int d = c->ndim - 1; d >= 0; d--) {
                idx[d] = r % c->shape[d];
                r /= c->shape[d];
            }
            int64_t t = idx[d0];
            idx[d0] = idx[d1];
            idx[d1] = t;
            int64_t o = 0;
            for (int d = 0; d < c->ndim; d++)
                o = o * out->shape[d] + idx[d];
            ck_assert_msg(O[o] == X[i], "case %zu: x element %lld", k, (long long)i);
        }
        lathe_scope_pop();
        if (n <= 200)
            gc(transpose_fn, &x, 1, (void *)c, "transpose");
        lathe_tensor_free(x);
    }
}
END_TEST

static lathe_tensor *concat_fn(lathe_tensor *const *in, void *ctx)
{
    return lathe_concat(in, 3, *(int *)ctx);
}

/* Split along dim 1 into {1, 3, 2} and join the parts in reverse. */
static lathe_tensor *split_fn(lathe_tensor *const *in, void *ctx)
{
    lathe_tensor *parts[3];
    if (lathe_split(in[0], 1, (int64_t[]){1, 3, 2}, 3, parts) != LATHE_OK)
        return NULL;
    lathe_tensor *rev[3] = {parts[2], parts[1], parts[0]};
    return lathe_concat(rev, 3, 1);
}

static lathe_tensor *narrow_fn(lathe_tensor *const *in, void *ctx)
{
    return lathe_narrow(in[0], -1, 1, 2);
}

START_TEST(test_concat_split_narrow)
{
    /* concat along each dim of [2, 3, 4]-like pieces */
    for (int dim = 0; dim < 3; dim++) {
        int64_t s[3][3] = {{2, 3, 4}, {2, 3, 4}, {2, 3, 4}};
        for (int k = 0; k < 3; k++)
            s[k][dim] = k + 1;
        lathe_tensor *xs[3] = {rnd(3, s[0], 70, 1), rnd(3, s[1], 71, 1), rnd(3, s[2], 72, 1)};
        lathe_scope_push();
        lathe_tensor *out = lathe_concat(xs, 3, dim);
        ck_assert_msg(out != NULL, "%s", lathe_errmsg());
        ck_assert_int_eq(out->shape[dim], 6);
        for (int64_t i = 0; i < lathe_tensor_numel(out); i++) {
            int64_t c[3], r = i;
            for (int d = 2; d >= 0; d--) {
                c[d] = r % out->shape[d];
                r /= out->shape[d];
            }
            int k = 0;
            while (c[dim] >= s[k][dim])
                c[dim] -= s[k++][dim];
            float want = lathe_tensor_f32(xs[k])[(c[0] * s[k][1] + c[1]) * s[k][2] + c[2]];
            ck_assert_msg(lathe_tensor_f32(out)[i] == want, "dim %d element %lld", dim,
                          (long long)i);
        }
        lathe_scope_pop();
        gc(concat_fn, xs, 3, &dim, "concat");
        for (int k = 0; k < 3; k++)
            lathe_tensor_free(xs[k]);
    }

    lathe_tensor *x = RND(73, 1, 2, 6, 3);
    lathe_scope_push();
    lathe_tensor *parts[3];
    ck_assert_int_eq(lathe_split(x, 1, (int64_t[]){1, 3, 2}, 3, parts), LATHE_OK);
    int64_t off = 0, len[3] = {1, 3, 2};
    for (int k = 0; k < 3; k++) {
        ck_assert_int_eq(parts[k]->shape[1], len[k]);
        for (int64_t b = 0; b < 2; b++)
            for (int64_t t = 0; t < len[k]; t++)
                for (int64_t c = 0; c < 3; c++)
                    ck_assert(lathe_tensor_f32(parts[k])[(b * len[k] + t) * 3 + c] ==
                              lathe_tensor_f32(x)[(b * 6 + off + t) * 3 + c]);
        off += len[k];
    }
    lathe_tensor *nr = lathe_narrow(x, -1, 1, 2);
    ck_assert(nr && nr->shape[2] == 2);
    for (int64_t r = 0; r < 12; r++)
        for (int64_t c = 0; c < 2; c++)
            ck_assert(lathe_tensor_f32(nr)[r * 2 + c] == lathe_tensor_f32(x)[r * 3 + 1 + c]);
    lathe_scope_pop();
    gc(split_fn, &x, 1, NULL, "split");
    gc(narrow_fn, &x, 1, NULL, "narrow");
    lathe_tensor_free(x);
}
END_TEST

/* ---- indexing ------------------------------------------------------- */

static lathe_tensor *gather_fn(lathe_tensor *const *in, void *ctx)
{
    return lathe_gather(in[0], ctx);
}
static lathe_tensor *scatter_fn(lathe_tensor *const *in, void *ctx)
{
    return lathe_scatter_add(in[0], ctx, in[1]);
}

START_TEST(test_gather_scatter)
{
    /* x [2, 3, 5], idx [2, 3, 4] with repeats within a row */
    lathe_tensor *x = RND(80, 1, 2, 3, 5);
    int32_t vals[24];
    lathe_rng r;
    lathe_rng_seed(&r, 81);
    for (int i = 0; i < 24; i++)
        vals[i] = (int32_t)lathe_rng_below(&r, 5);
    vals[1] = vals[0]; /* at least one repeat */
    lathe_tensor *idx = ids_new(3, (int64_t[]){2, 3, 4}, vals);
    lathe_tensor *src = RND(82, 1, 2, 3, 4);
    lathe_scope_push();
    lathe_tensor *g = lathe_gather(x, idx);
    lathe_tensor *s = lathe_scatter_add(x, idx, src);
    ck_assert(g && s);
    double ref_s[30];
    for (int i = 0; i < 30; i++)
        ref_s[i] = lathe_tensor_f32(x)[i];
    for (int n = 0; n < 6; n++)
        for (int k = 0; k < 4; k++) {
            ck_assert(lathe_tensor_f32(g)[n * 4 + k] == lathe_tensor_f32(x)[n * 5 + vals[n * 4 + k]]);
            ref_s[n * 5 + vals[n * 4 + k]] += lathe_tensor_f32(src)[n * 4 + k];
        }
    expect_close(lathe_tensor_f32(s), ref_s, 30, 1e-6, "scatter_add");
    lathe_scope_pop();
    gc(gather_fn, &x, 1, idx, "gather");
    lathe_tensor *in[2] = {x, src};
    gc(scatter_fn, in, 2, idx, "scatter_add");
    lathe_tensor_free(x);
    lathe_tensor_free(idx);
    lathe_tensor_free(src);
}
END_TEST

/* ---- kernels at threaded sizes -------------------------------------- */

START_TEST(test_kernels_large)
{
    const struct lathe_backend_ops *be = lathe_backend();
    /* broadcast binary backward: N = 80 rows of M = 1000 */
    int64_t M = 1000, R = 80, N = M * R;
    float *a = falloc_rand(N, 1), *b = falloc_rand(M, 2), *dout = falloc_rand(N, 3);
    for (int op = 0; op < 3; op++) {
        float *out = calloc((size_t)N, sizeof *out), *da = falloc_rand(N, 4), *db = falloc_rand(M, 5);
        double *rda = dalloc(N), *rdb = dalloc(M), *rout = dalloc(N);
        for (int64_t i = 0; i < N; i++)
            rda[i] = da[i];
        for (int64_t j = 0; j < M; j++)
            rdb[j] = db[j];
        for (int64_t i = 0; i < N; i++) {
            int64_t j = i % M;
            rout[i] = op == 0 ? (double)a[i] + b[j] : op == 1 ? (double)a[i] - b[j] : (double)a[i] * b[j];
            rda[i] += op == 2 ? (double)dout[i] * b[j] : dout[i];
            rdb[j] += op == 0 ? dout[i] : op == 1 ? -(double)dout[i] : (double)dout[i] * a[i];
        }
        be->binary_forward(op, out, a, b, N, M);
        be->binary_backward(op, da, db, dout, a, b, N, M);
        expect_close(out, rout, N, 1e-6, "binary_forward");
        expect_close(da, rda, N, 1e-6, "binary_backward da");
        expect_close(db, rdb, M, 1e-5, "binary_backward db");
        free(out), free(da), free(db), free(rda), free(rdb), free(rout);
    }
    /* bias backward and sum */
    float *dbias = calloc((size_t)M, sizeof *dbias), total;
    be->bias_backward(dbias, dout, R, M);
    double *rbias = dalloc(M), rsum = 0.0;
    for (int64_t i = 0; i < N; i++) {
        rbias[i % M] += dout[i];
        rsum += dout[i];
    }
    expect_close(dbias, rbias, M, 1e-5, "bias_backward");
    be->sum(&total, dout, N);
    expect_close(&total, &rsum, 1, 1e-6, "sum");
    double sq, rsq = 0.0;
    for (int64_t i = 0; i < N; i++)
        rsq += (double)a[i] * a[i];
    be->sumsq(&sq, a, N);
    ck_assert_msg(fabs(sq - rsq) <= 1e-10 * rsq, "sumsq %.17g vs %.17g", sq, rsq);

    /* embedding backward with many repeated ids is exact and deterministic */
    int64_t V = 7, C = 300, T = 250;
    int32_t *ids = malloc(sizeof *ids * (size_t)T);
    for (int64_t t = 0; t < T; t++)
        ids[t] = (int32_t)((t * 5) % V);
    float *dw = calloc((size_t)(V * C), sizeof *dw);
    double *rdw = dalloc(V * C);
    be->embedding_backward(dw, a, ids, T, C);
    for (int64_t t = 0; t < T; t++)
        for (int64_t c = 0; c < C; c++)
            rdw[ids[t] * C + c] += a[t * C + c];
    expect_close(dw, rdw, V * C, 1e-5, "embedding_backward");

    /* transpose of a big matrix and of [B, T, H, D] heads, with accumulation */
    int64_t shape[4] = {4, 50, 5, 64};
    float *tr = calloc((size_t)N, sizeof *tr), *back = calloc((size_t)N, sizeof *back);
    be->transpose(tr, a, 4, shape, 1, 2, 0);
    be->transpose(back, tr, 4, (int64_t[]){4, 5, 50, 64}, 1, 2, 0);
    expect_equal_f(back, a, 4 * 50 * 5 * 64, "heads round trip");
    be->transpose(tr, a, 2, (int64_t[]){250, 320}, 0, 1, 0);
    for (int64_t i = 0; i < 250; i++)
        for (int64_t j = 0; j < 320; j++)
            ck_assert(tr[j * 250 + i] == a[i * 320 + j]);
    be->transpose(tr, a, 2, (int64_t[]){250, 320}, 0, 1, 1);
    for (int64_t i = 0; i < 250; i++)
        ck_assert(tr[7 * 250 + i] == 2.0f * a[i * 320 + 7]);

    /* many small GEMMs (threaded over the batch) and one large one */
    int64_t bm = 9, bn = 7, bk = 5, batch = 40;
    float *C1 = falloc_rand(batch * bm * bn, 6);
    double *rC = dalloc(batch * bm * bn);
    for (int64_t t = 0; t < batch; t++)
        for (int64_t m = 0; m < bm; m++)
            for (int64_t n = 0; n < bn; n++) {
                double s = 0.0;
                for (int64_t k = 0; k < bk; k++)
                    s += (double)a[t * bk * bm + k * bm + m] * b[n * bk + k];
                rC[(t * bm + m) * bn + n] = 0.5 * s + 2.0 * C1[(t * bm + m) * bn + n];
            }
    /* A^T per item ([K, M] stored), B shared and transposed ([N, K]) */
    be->gemm(1, 1, bm, bn, bk, 0.5f, a, b, 2.0f, C1, batch, bk * bm, 0, bm * bn);
    expect_close(C1, rC, batch * bm * bn, 1e-5, "batched gemm");
    int64_t gm = 64, gn = 96, gk = 128;
    float *C2 = calloc((size_t)(gm * gn), sizeof *C2);
    double *rC2 = dalloc(gm * gn);
    for (int64_t m = 0; m < gm; m++)
        for (int64_t n = 0; n < gn; n++) {
            double s = 0.0;
            for (int64_t k = 0; k < gk; k++)
                s += (double)a[m * gk + k] * dout[k * gn + n];
            rC2[m * gn + n] = s;
        }
    be->gemm(0, 0, gm, gn, gk, 1.0f, a, dout, 0.0f, C2, 1, 0, 0, 0);
    expect_close(C2, rC2, gm * gn, 1e-4, "gemm");

    free(a), free(b), free(dout), free(dbias), free(rbias), free(ids), free(dw), free(rdw);
    free(tr), free(back), free(C1), free(rC), free(C2), free(rC2);
}
END_TEST

START_TEST(test_adamw)
{
    const struct lathe_backend_ops *be = lathe_backend();
    int64_t n = 50000; /* past the threading threshold */
    float *p = falloc_rand(n, 1), *m = calloc((size_t)n, sizeof *m), *v = calloc((size_t)n, sizeof *v);
    double *rp = dalloc(n), *rm = dalloc(n), *rv = dalloc(n);
    for (int64_t i = 0; i < n; i++)
        rp[i] = p[i];
    const double lr = 1e-2, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
    for (int step = 1; step <= 5; step++) {
        float *g = falloc_rand(n, 100 + step);
        double bc1 = 1.0 - pow(b1, step), bc2 = 1.0 - pow(b2, step);
        for (int64_t i = 0; i < n; i++) {
            rm[i] = b1 * rm[i] + (1 - b1) * g[i];
            rv[i] = b2 * rv[i] + (1 - b2) * (double)g[i] * g[i];
            rp[i] -= lr * ((rm[i] / bc1) / (sqrt(rv[i] / bc2) + eps) + wd * rp[i]);
        }
        be->adamw_step(p, g, m, v, n, (float)lr, (float)b1, (float)b2, (float)eps, (float)wd,
                       (float)bc1, (float)bc2);
        free(g);
    }
    expect_close(p, rp, n, 2e-5, "adamw p");
    expect_close(m, rm, n, 1e-5, "adamw m");
    expect_close(v, rv, n, 1e-5, "adamw v");
    free(p), free(m), free(v), free(rp), free(rm), free(rv);
}
END_TEST

START_TEST(test_convert)
{
    const struct lathe_backend_ops *be = lathe_backend();
    int64_t n = 40000;
    float *x = falloc_rand(n, 7), *y = malloc(sizeof *y * (size_t)n);
    uint16_t *h = malloc(sizeof *h * (size_t)n), *h2 = malloc(sizeof *h2 * (size_t)n);
    for (int64_t i = 0; i < n; i++) /* normal range of both types */
        x[i] = x[i] * 100.0f + (x[i] < 0 ? -1e-3f : 1e-3f);
    /* random values: within half an ulp of the storage type */
    static const struct { int dt; double rel; } kinds[] = {{LATHE_BF16, 0x1p-8}, {LATHE_F16, 0x1p-11}};
    for (int k = 0; k < 2; k++) {
        be->convert(h, kinds[k].dt, x, LATHE_F32, n);
        be->convert(y, LATHE_F32, h, kinds[k].dt, n);
        for (int64_t i = 0; i < n; i++)
            ck_assert_msg(fabs((double)y[i] - x[i]) <= kinds[k].rel * fabs(x[i]),
                          "dtype %d: %.8g became %.8g", kinds[k].dt, (double)x[i], (double)y[i]);
        /* values already representable survive exactly */
        be->convert(h2, kinds[k].dt, y, LATHE_F32, n);
        ck_assert(memcmp(h, h2, sizeof *h * (size_t)n) == 0);
    }
    /* values exact in both 16-bit types: bf16 -> f16 -> bf16 is lossless */
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)((i % 255) - 127) / 64.0f;
    be->convert(h, LATHE_BF16, x, LATHE_F32, n);
    be->convert(h2, LATHE_F16, h, LATHE_BF16, n);
    be->convert(y, LATHE_F32, h2, LATHE_F16, n);
    expect_equal_f(y, x, n, "bf16 -> f16");
    be->convert(h, LATHE_BF16, h2, LATHE_F16, n);
    be->convert(y, LATHE_F32, h, LATHE_BF16, n);
    expect_equal_f(y, x, n, "f16 -> bf16");
    /* f32 -> f32 is a copy */
    memset(y, 0, sizeof *y * (size_t)n);
    be->convert(y, LATHE_F32, x, LATHE_F32, n);
    expect_equal_f(y, x, n, "f32 copy");
    free(x), free(y), free(h), free(h2);
}
END_TEST

/* ---- limits --------------------------------------------------------- */

START_TEST(test_bad_shapes)
{
    lathe_scope_push();
    lathe_tensor *a = lathe_tensor_new2(LATHE_F32, 3, 4), *b = lathe_tensor_new2(LATHE_F32, 5, 6);
    lathe_tensor *c3 = lathe_tensor_new3(LATHE_F32, 2, 3, 4), *d3 = lathe_tensor_new3(LATHE_F32, 3, 4, 5);
    lathe_tensor *ids = lathe_tensor_new1(LATHE_I32, 2);
    lathe_tensor_i32(ids)[1] = 5; /* == V: the first id past the end */
    EXPECT_ERROR(lathe_matmul(a, b, 0), "lathe_matmul", "[3, 4]", "[5, 6]");
    EXPECT_ERROR(lathe_matmul(c3, d3, 0), "lathe_matmul", "[2, 3, 4]", "[3, 4, 5]");
    EXPECT_ERROR(lathe_matmul(lathe_tensor_new1(LATHE_F32, 4), a, 0), "lathe_matmul", "[4]");
    EXPECT_ERROR(lathe_linear(a, b, NULL), "lathe_linear", "[3, 4]", "[5, 6]");
    EXPECT_ERROR(lathe_linear(a, lathe_tensor_new2(LATHE_F32, 2, 4), lathe_tensor_new1(LATHE_F32, 3)),
                 "lathe_linear", "[3]", "[2, 4]");
    EXPECT_ERROR(lathe_add(a, b), "lathe_add", "[3, 4]", "[5, 6]");
    EXPECT_ERROR(lathe_mul(c3, lathe_tensor_new1(LATHE_F32, 3)), "lathe_mul", "[2, 3, 4]", "[3]");
    EXPECT_ERROR(lathe_sub(a, c3), "lathe_sub", "[3, 4]", "[2, 3, 4]");
    EXPECT_ERROR(lathe_add(a, ids), "lathe_add", "I32");
    EXPECT_ERROR(lathe_embedding(b, ids), "lathe_embedding", "is 5,", "[5, 6]");
    EXPECT_ERROR(lathe_embedding(b, a), "lathe_embedding", "F32");
    EXPECT_ERROR(lathe_reshape(a, 2, (int64_t[]){5, 3}), "lathe_reshape", "[3, 4]", "[5, 3]");
    EXPECT_ERROR(lathe_reshape(a, 2, (int64_t[]){-1, 5}), "lathe_reshape", "[3, 4]", "[-1, 5]");
    EXPECT_ERROR(lathe_reshape(a, 2, (int64_t[]){-1, -1}), "lathe_reshape", "[-1, -1]");
    EXPECT_ERROR(lathe_transpose(a, 0, 2), "lathe_transpose", "[3, 4]");
    lathe_tensor *cat[2] = {a, b};
    EXPECT_ERROR(lathe_concat(cat, 2, 0), "lathe_concat", "[3, 4]", "[5, 6]");
    EXPECT_ERROR(lathe_concat(cat, 0, 0), "lathe_concat");
    EXPECT_ERROR(lathe_narrow(a, 1, 3, 2), "lathe_narrow", "[3, 4]");
    lathe_tensor *parts[2] = {a, a};
    ck_assert_int_eq(lathe_split(a, 1, (int64_t[]){1, 2}, 2, parts), LATHE_EINVAL);
    ck_assert_ptr_null(parts[0]);
    ck_assert_ptr_null(parts[1]);
    ck_assert(strstr(lathe_errmsg(), "lathe_split") && strstr(lathe_errmsg(), "[3, 4]"));
    lathe_error_clear();
    lathe_tensor *idx = lathe_tensor_new2(LATHE_I32, 3, 2);
    lathe_tensor_i32(idx)[3] = 4;
    EXPECT_ERROR(lathe_gather(a, idx), "lathe_gather", "[3, 2]", "[3, 4]", "outside");
    EXPECT_ERROR(lathe_gather(c3, idx), "lathe_gather", "[2, 3, 4]", "[3, 2]");
    lathe_tensor_i32(idx)[3] = 1;
    EXPECT_ERROR(lathe_scatter_add(a, idx, a), "lathe_scatter_add", "[3, 2]", "[3, 4]");
    EXPECT_ERROR(lathe_dropout(a, 1.0f, 1), "lathe_dropout");
    EXPECT_ERROR(lathe_dropout(a, -0.1f, 1), "lathe_dropout");
    EXPECT_ERROR(lathe_mean(lathe_tensor_new1(LATHE_F32, 0)), "lathe_mean");
    lathe_scope_pop();
}
END_TEST

START_TEST(test_null_propagates)
{
    lathe_scope_push();
    lathe_tensor *x = lathe_tensor_new2(LATHE_F32, 2, 2);
    lathe_error(LATHE_EINVAL, "the first failure");
    ck_assert_ptr_null(lathe_add(NULL, x));
    ck_assert_ptr_null(lathe_mul(x, NULL));
    ck_assert_ptr_null(lathe_matmul(NULL, x, 0));
    ck_assert_ptr_null(lathe_linear(x, NULL, NULL));
    ck_assert_ptr_null(lathe_embedding(NULL, NULL));
    ck_assert_ptr_null(lathe_scale(NULL, 2.0f));
    ck_assert_ptr_null(lathe_sum(NULL));
    ck_assert_ptr_null(lathe_mean(NULL));
    ck_assert_ptr_null(lathe_dropout(NULL, 0.1f, 1));
    ck_assert_ptr_null(lathe_reshape(NULL, 1, (int64_t[]){4}));
    ck_assert_ptr_null(lathe_transpose(NULL, 0, 1));
    ck_assert_ptr_null(lathe_narrow(NULL, 0, 0, 1));
    ck_assert_ptr_null(lathe_concat((lathe_tensor *[]){x, NULL}, 2, 0));
    ck_assert_ptr_null(lathe_gather(x, NULL));
    ck_assert_ptr_null(lathe_scatter_add(x, NULL, x));
    lathe_tensor *parts[1];
    ck_assert_int_ne(lathe_split(NULL, 0, (int64_t[]){2}, 1, parts), LATHE_OK);
    ck_assert_str_eq(lathe_errmsg(), "the first failure");
    /* a chain fails once, with the innermost message */
    lathe_error_clear();
    lathe_tensor *w = lathe_tensor_new2(LATHE_F32, 3, 3);
    ck_assert_ptr_null(lathe_mean(lathe_scale(lathe_add(lathe_matmul(x, w, 0), x), 2.0f)));
    ck_assert(strstr(lathe_errmsg(), "lathe_matmul"));
    lathe_scope_pop();
}
END_TEST

START_TEST(test_no_grad)
{
    lathe_tensor *x = RND(90, 1, 3, 4), *w = RND(91, 1, 2, 4), *c = RND(92, 0, 3, 4);
    lathe_scope_push();
    lathe_no_grad_begin();
    lathe_tensor *outs[] = {
        lathe_linear(x, w, NULL), lathe_matmul(x, w, 1), lathe_add(x, x), lathe_mul(x, x),
        lathe_scale(x, 2.0f), lathe_sum(x), lathe_mean(x), lathe_dropout(x, 0.5f, 1),
        lathe_reshape(x, 1, (int64_t[]){12}), lathe_transpose(x, 0, 1), lathe_narrow(x, 1, 0, 2),
        lathe_concat((lathe_tensor *[]){x, x}, 2, 0),
    };
    lathe_no_grad_end();
    for (size_t k = 0; k < sizeof outs / sizeof outs[0]; k++) {
        ck_assert_msg(outs[k] != NULL, "op %zu: %s", k, lathe_errmsg());
        ck_assert_msg(!outs[k]->requires_grad && !outs[k]->node, "op %zu recorded under no_grad", k);
    }
    ck_assert_int_ne(lathe_backward(outs[5], 1.0f), LATHE_OK);
    lathe_error_clear();
    /* frozen inputs record nothing either */
    lathe_tensor *o = lathe_mul(c, c);
    ck_assert(!o->requires_grad && !o->node);
    lathe_scope_pop();
    ck_assert_ptr_null(x->grad);
    lathe_tensor_free(x);
    lathe_tensor_free(w);
    lathe_tensor_free(c);
}
END_TEST

START_TEST(test_accumulation)
{
    lathe_tensor *x = RND(93, 1, 2, 3);
    const float *X = lathe_tensor_f32(x);
    /* d/dx sum(x + x) = 2, d/dx sum(x * x) = 2x, summed over two passes */
    for (int pass = 0; pass < 2; pass++) {
        lathe_scope_push();
        ck_assert_int_eq(lathe_backward(lathe_sum(lathe_add(x, x)), 1.0f), LATHE_OK);
        lathe_scope_pop();
    }
    for (int i = 0; i < 6; i++)
        ck_assert_float_eq_tol(lathe_tensor_f32(x->grad)[i], 4.0f, 1e-6f);
    lathe_tensor_zero_grad(x);
    lathe_scope_push();
    ck_assert_int_eq(lathe_backward(lathe_sum(lathe_mul(x, x)), 1.0f), LATHE_OK);
    lathe_scope_pop();
    for (int i = 0; i < 6; i++)
        ck_assert_float_eq_tol(lathe_tensor_f32(x->grad)[i], 2.0f * X[i], 1e-6f);
    /* x reaching the loss by three routes: view, narrow and itself */
    lathe_tensor_zero_grad(x);
    lathe_scope_push();
    lathe_tensor *v = lathe_reshape(x, 1, (int64_t[]){6});
    lathe_tensor *loss = lathe_add(lathe_add(lathe_sum(v), lathe_sum(lathe_narrow(x, 1, 0, 1))),
                                   lathe_mean(x));
    ck_assert_int_eq(lathe_backward(loss, 2.0f), LATHE_OK);
    lathe_scope_pop();
    for (int i = 0; i < 6; i++) {
        float want = 2.0f * (1.0f + (i % 3 == 0 ? 1.0f : 0.0f) + 1.0f / 6.0f);
        ck_assert_float_eq_tol(lathe_tensor_f32(x->grad)[i], want, 1e-6f);
    }
    lathe_tensor_free(x);
}
END_TEST

START_TEST(test_kernel_edges)
{
    const struct lathe_backend_ops *be = lathe_backend();
    /* K == 0: C = beta * C, for one item and for a batch */
    float C[6] = {1, 2, 3, 4, 5, 6}, A[1] = {0}, B[1] = {0};
    be->gemm(0, 0, 2, 3, 0, 1.0f, A, B, 0.5f, C, 1, 0, 0, 0);
    for (int i = 0; i < 6; i++)
        ck_assert_float_eq(C[i], 0.5f * (float)(i + 1));
    be->gemm(0, 1, 1, 3, 0, 1.0f, A, B, 0.0f, C, 2, 0, 0, 3);
    for (int i = 0; i < 6; i++)
        ck_assert_float_eq(C[i], 0.0f);
    /* empty inputs touch nothing */
    float out[2] = {7, 7};
    be->sum(out, A, 0);
    ck_assert_float_eq(out[0], 0.0f);
    out[0] = 7;
    be->binary_forward(0, out, A, B, 0, 1);
    be->copy2d(out, 1, A, 1, 0, 1, 0);
    be->transpose(out, A, 2, (int64_t[]){0, 2}, 0, 1, 0);
    be->gemm(0, 0, 0, 2, 2, 1.0f, A, B, 0.0f, out, 1, 0, 0, 0);
    ck_assert(out[0] == 7 && out[1] == 7);
    /* a swap of one dim with itself is a copy */
    float x[6] = {1, 2, 3, 4, 5, 6}, y[6] = {0};
    be->transpose(y, x, 2, (int64_t[]){2, 3}, 1, 1, 0);
    expect_equal_f(y, x, 6, "transpose(d, d)");
}
END_TEST

/* One backward pass of sum(f(in) * wt) for a fixed random wt. */
static void backward_once(lathe_gc_fn f, lathe_tensor *const *in, void *ctx)
{
    lathe_scope_push();
    lathe_tensor *out = f(in, ctx);
    ck_assert_msg(out != NULL, "%s", lathe_errmsg());
    /* made inside the scope, so the scope frees it */
    lathe_tensor *wt = lathe_gc_rand(out->ndim, out->shape, -1.0f, 1.0f, 4242, 0);
    lathe_tensor *loss = lathe_sum(lathe_mul(out, wt));
    ck_assert_int_eq(lathe_backward(loss, 1.0f), LATHE_OK);
    lathe_scope_pop();
}

/* A second backward pass must add to the gradients, not replace them. */
static void expect_accumulates(const char *what, lathe_gc_fn f, lathe_tensor *const *in, int n,
                               void *ctx)
{
    float *first[4] = {0};
    for (int k = 0; k < n; k++)
        lathe_tensor_zero_grad(in[k]);
    backward_once(f, in, ctx);
    for (int k = 0; k < n; k++) {
        if (!in[k]->requires_grad)
            continue;
        ck_assert_msg(in[k]->grad != NULL, "%s: input %d got no gradient", what, k);
        int64_t m = lathe_tensor_numel(in[k]);
        first[k] = malloc(sizeof(float) * (size_t)m);
        memcpy(first[k], lathe_tensor_f32(in[k]->grad), sizeof(float) * (size_t)m);
    }
    backward_once(f, in, ctx);
    for (int k = 0; k < n; k++) {
        if (!first[k])
            continue;
        int64_t m = lathe_tensor_numel(in[k]);
        const float *g = lathe_tensor_f32(in[k]->grad);
        for (int64_t i = 0; i < m; i++)
            ck_assert_msg(fabsf(g[i] - 2.0f * first[k][i]) <= 1e-5f * fmaxf(1.0f, fabsf(g[i])),
                          "%s: input %d element %lld: %g after two passes, %g after one", what,
                          k, (long long)i, (double)g[i], (double)first[k][i]);
        free(first[k]);
    }
}

START_TEST(test_backward_accumulates)
{
    lathe_tensor *a3 = RND(100, 1, 2, 3, 4), *b3 = RND(101, 1, 2, 4, 5), *w = RND(102, 1, 5, 4);
    lathe_tensor *bias = RND(103, 1, 5), *t34 = RND(104, 1, 3, 4), *src = RND(105, 1, 2, 3, 2);
    int tb0 = 0, tb1 = 1, op, dim = 1;
    expect_accumulates("matmul batched", mm_fn, (lathe_tensor *[]){a3, b3}, 2, &tb0);
    expect_accumulates("matmul shared", mm_fn, (lathe_tensor *[]){a3, w}, 2, &tb1);
    expect_accumulates("linear", linear_fn, (lathe_tensor *[]){a3, w, bias}, 3, (void *)1);
    for (op = 0; op < 3; op++) {
        expect_accumulates("binary broadcast", bin_fn, (lathe_tensor *[]){a3, t34}, 2, &op);
        expect_accumulates("binary same shape", bin_fn, (lathe_tensor *[]){a3, a3}, 2, &op);
    }
    expect_accumulates("scale", scale_fn, &a3, 1, NULL);
    expect_accumulates("sum", sum_fn, &a3, 1, NULL);
    expect_accumulates("mean", mean_fn, &a3, 1, NULL);
    expect_accumulates("dropout", dropout_fn, &a3, 1, NULL);
    expect_accumulates("reshape", reshape_fn, &a3, 1, NULL);
    struct tr_case tc = {3, {2, 3, 4}, 0, 2};
    expect_accumulates("transpose", transpose_fn, &a3, 1, &tc);
    expect_accumulates("concat", concat_fn, (lathe_tensor *[]){a3, a3, a3}, 3, &dim);
    lathe_tensor *x6 = RND(106, 1, 2, 6, 3);
    expect_accumulates("split", split_fn, &x6, 1, NULL);
    expect_accumulates("narrow", narrow_fn, &x6, 1, NULL);
    lathe_tensor *ids = ids_new(2, (int64_t[]){2, 3}, (const int32_t[]){1, 1, 4, 0, 2, 1});
    expect_accumulates("embedding", emb_fn, &w, 1, ids);
    lathe_tensor *idx = ids_new(3, (int64_t[]){2, 3, 2}, (const int32_t[]){0, 0, 3, 1, 2, 2, 1, 3, 0, 1, 2, 3});
    expect_accumulates("gather", gather_fn, &a3, 1, idx);
    expect_accumulates("scatter_add", scatter_fn, (lathe_tensor *[]){a3, src}, 2, idx);
    lathe_tensor *all[] = {a3, b3, w, bias, t34, src, x6, ids, idx};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
        lathe_tensor_free(all[k]);
}
END_TEST

static Suite *ops_linalg_suite(void)
{
    Suite *s = suite_create("ops_linalg");
    TCase *core = tcase_create("Core");
    tcase_set_timeout(core, 30);
    tcase_add_test(core, test_matmul_forward);
    tcase_add_test(core, test_matmul_grad);
    tcase_add_test(core, test_linear);
    tcase_add_test(core, test_linear_forward_hook);
    tcase_add_test(core, test_embedding);
    tcase_add_test(core, test_binary);
    tcase_add_test(core, test_scale_sum_mean);
    tcase_add_test(core, test_dropout);
    tcase_add_test(core, test_reshape);
    tcase_add_test(core, test_transpose);
    tcase_add_test(core, test_concat_split_narrow);
    tcase_add_test(core, test_gather_scatter);
    tcase_add_test(core, test_kernels_large);
    tcase_add_test(core, test_adamw);
    tcase_add_test(core, test_convert);
    suite_add_tcase(s, core);
    TCase *limits = tcase_create("Limits");
    tcase_add_test(limits, test_bad_shapes);
    tcase_add_test(limits, test_null_propagates);
    tcase_add_test(limits, test_no_grad);
    tcase_add_test(limits, test_accumulation);
    tcase_add_test(limits, test_backward_accumulates);
    tcase_add_test(limits, test_kernel_edges);
    suite_add_tcase(s, limits);
    return s;
}

int main(void)
{
    return lathe_test_run(ops_linalg_suite());
}
