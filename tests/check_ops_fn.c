/* tests/check_ops_fn.c — elementwise functions, min/max and per-token
 * log-probabilities: forwards against plain formulas, backwards against
 * central finite differences. */
#include <lathe/lathe.h>
#include <math.h>
#include <string.h>

#include "gradcheck.h"
#include "testutil.h"

typedef lathe_tensor *(*unary_fn)(lathe_tensor *);

static lathe_tensor *gc_exp(lathe_tensor *const *in, void *ctx) { (void)ctx; return lathe_exp(in[0]); }
static lathe_tensor *gc_log(lathe_tensor *const *in, void *ctx) { (void)ctx; return lathe_log(in[0]); }
static lathe_tensor *gc_relu(lathe_tensor *const *in, void *ctx) { (void)ctx; return lathe_relu(in[0]); }
static lathe_tensor *gc_logsig(lathe_tensor *const *in, void *ctx) { (void)ctx; return lathe_log_sigmoid(in[0]); }
static lathe_tensor *gc_clamp(lathe_tensor *const *in, void *ctx) { (void)ctx; return lathe_clamp(in[0], -0.5f, 0.4f); }
static lathe_tensor *gc_min(lathe_tensor *const *in, void *ctx) { (void)ctx; return lathe_minimum(in[0], in[1]); }
static lathe_tensor *gc_max(lathe_tensor *const *in, void *ctx) { (void)ctx; return lathe_maximum(in[0], in[1]); }

static void check_grad(lathe_gc_fn f, lathe_tensor *const *in, int n)
{
    char msg[512];
    int bad = lathe_gradcheck(f, in, n, NULL, 1e-3, 1e-2, msg, sizeof msg);
    ck_assert_msg(!bad, "%s", msg);
}

/* keep x away from the kinks of relu/clamp so differences are smooth */
static void push_off_kinks(lathe_tensor *x, const float *kinks, int nk)
{
    float *d = lathe_tensor_f32(x);
    for (int64_t i = 0; i < lathe_tensor_numel(x); i++)
        for (int k = 0; k < nk; k++)
            if (fabsf(d[i] - kinks[k]) < 0.01f)
                d[i] = kinks[k] + 0.05f;
}

START_TEST(test_unary_forward)
{
    int64_t shape[] = {3, 5};
    lathe_tensor *x = lathe_gc_rand(2, shape, -4.0f, 4.0f, 11, 0);
    lathe_scope_push();
    const float *xs = lathe_tensor_f32(x);
    lathe_tensor *e = lathe_exp(x), *r = lathe_relu(x), *c = lathe_clamp(x, -1.0f, 2.0f), *ls = lathe_log_sigmoid(x);
    for (int i = 0; i < 15; i++) {
        ck_assert_float_eq_tol(lathe_tensor_f32(e)[i], expf(xs[i]), 1e-5f * expf(xs[i]));
        ck_assert(lathe_tensor_f32(r)[i] == (xs[i] > 0 ? xs[i] : 0));
        ck_assert(lathe_tensor_f32(c)[i] == fminf(fmaxf(xs[i], -1.0f), 2.0f));
        ck_assert_float_eq_tol(lathe_tensor_f32(ls)[i], (float)log(1.0 / (1.0 + exp(-(double)xs[i]))), 1e-6f);
    }
    lathe_tensor *lg = lathe_log(e);
    for (int i = 0; i < 15; i++)
        ck_assert_float_eq_tol(lathe_tensor_f32(lg)[i], xs[i], 1e-5f);
    /* log-sigmoid does not overflow at the extremes */
    lathe_tensor *big = lathe_tensor_new1(LATHE_F32, 2);
    lathe_tensor_f32(big)[0] = 1000.0f;
    lathe_tensor_f32(big)[1] = -1000.0f;
    lathe_tensor *lb = lathe_log_sigmoid(big);
    ck_assert_float_eq_tol(lathe_tensor_f32(lb)[0], 0.0f, 1e-6f);
    ck_assert_float_eq_tol(lathe_tensor_f32(lb)[1], -1000.0f, 1e-3f);
    lathe_scope_pop();
    lathe_tensor_free(x);
}
END_TEST

START_TEST(test_unary_backward)
{
    int64_t shape[] = {2, 6};
    lathe_tensor *x = lathe_gc_rand(2, shape, -2.0f, 2.0f, 5, 1);
    float kinks[] = {0.0f, -0.5f, 0.4f};
    push_off_kinks(x, kinks, 3);
    check_grad(gc_exp, &x, 1);
    check_grad(gc_relu, &x, 1);
    check_grad(gc_clamp, &x, 1);
    check_grad(gc_logsig, &x, 1);
    lathe_tensor *pos = lathe_gc_rand(2, shape, 0.5f, 3.0f, 6, 1);
    check_grad(gc_log, &pos, 1);
    lathe_tensor *y = lathe_gc_rand(2, shape, -2.0f, 2.0f, 7, 1);
    /* a and b apart so the choice does not flip under the nudge */
    for (int i = 0; i < 12; i++)
        if (fabsf(lathe_tensor_f32(x)[i] - lathe_tensor_f32(y)[i]) < 0.05f)
            lathe_tensor_f32(y)[i] += 0.2f;
    lathe_tensor *ab[2] = {x, y};
    check_grad(gc_min, ab, 2);
    check_grad(gc_max, ab, 2);
    lathe_scope_push();
    lathe_tensor *mn = lathe_minimum(x, y), *mx = lathe_maximum(x, y);
    for (int i = 0; i < 12; i++) {
        ck_assert(lathe_tensor_f32(mn)[i] == fminf(lathe_tensor_f32(x)[i], lathe_tensor_f32(y)[i]));
        ck_assert(lathe_tensor_f32(mx)[i] == fmaxf(lathe_tensor_f32(x)[i], lathe_tensor_f32(y)[i]));
    }
    lathe_scope_pop();
    lathe_tensor_free(x);
    lathe_tensor_free(pos);
    lathe_tensor_free(y);
}
END_TEST

static lathe_tensor *targets;

static lathe_tensor *gc_tlp(lathe_tensor *const *in, void *ctx)
{
    (void)ctx;
    return lathe_token_logprobs(in[0], targets, -100);
}

START_TEST(test_token_logprobs)
{
    int64_t shape[] = {2, 3, 7};
    lathe_tensor *logits = lathe_gc_rand(3, shape, -3.0f, 3.0f, 21, 1);
    targets = lathe_tensor_new2(LATHE_I32, 2, 3);
    int32_t t[] = {0, 6, -100, 3, 3, 1};
    memcpy(targets->data, t, sizeof t);
    lathe_scope_push();
    lathe_tensor *lp = lathe_token_logprobs(logits, targets, -100);
    ck_assert_ptr_nonnull(lp);
    ck_assert_int_eq(lp->ndim, 2);
    for (int r = 0; r < 6; r++) {
        const float *row = lathe_tensor_f32(logits) + r * 7;
        double z = 0;
        for (int v = 0; v < 7; v++)
            z += exp(row[v]);
        double want = t[r] == -100 ? 0.0 : row[t[r]] - log(z);
        ck_assert_float_eq_tol(lathe_tensor_f32(lp)[r], (float)want, 1e-5f);
    }
    lathe_scope_pop();
    check_grad(gc_tlp, &logits, 1);
    lathe_tensor_free(logits);
    lathe_tensor_free(targets);
}
END_TEST

START_TEST(test_limits)
{
    lathe_scope_push();
    lathe_tensor *a = lathe_tensor_new1(LATHE_F32, 3), *b = lathe_tensor_new1(LATHE_F32, 4);
    ck_assert_ptr_null(lathe_minimum(a, b));
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "[3]"));
    ck_assert_ptr_null(lathe_clamp(a, 1.0f, 0.0f));
    ck_assert_ptr_null(lathe_exp(NULL));
    lathe_tensor *ids = lathe_tensor_new1(LATHE_I32, 3);
    ck_assert_ptr_null(lathe_exp(ids));
    lathe_tensor *logits = lathe_tensor_new2(LATHE_F32, 3, 5);
    lathe_tensor *bad = lathe_tensor_new1(LATHE_I32, 3);
    lathe_tensor_i32(bad)[1] = 9; /* outside [0, 5) */
    ck_assert_ptr_null(lathe_token_logprobs(logits, bad, -100));
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "position 1"));
    lathe_no_grad_begin();
    lathe_tensor *p = lathe_param_new("p", 1, (int64_t[]){3});
    lathe_tensor *e = lathe_exp(p);
    ck_assert(!e->requires_grad);
    lathe_no_grad_end();
    lathe_scope_pop();
    lathe_tensor_free(p);
}
END_TEST

/* y = x0 W0^T, then y + 0.7 x1 W1^T in y's buffer */
static lathe_tensor *gc_acc(lathe_tensor *const *in, void *ctx)
{
    (void)ctx;
    return lathe_linear_accumulate(lathe_linear(in[0], in[1], NULL), in[2], in[3], 0.7f);
}

START_TEST(test_linear_accumulate)
{
    lathe_tensor *x0 = lathe_gc_rand(2, (int64_t[]){3, 4}, -1, 1, 31, 1);
    lathe_tensor *w0 = lathe_gc_rand(2, (int64_t[]){5, 4}, -1, 1, 32, 1);
    lathe_tensor *x1 = lathe_gc_rand(2, (int64_t[]){3, 2}, -1, 1, 33, 1);
    lathe_tensor *w1 = lathe_gc_rand(2, (int64_t[]){5, 2}, -1, 1, 34, 1);
    lathe_tensor *in[4] = {x0, w0, x1, w1};
    lathe_scope_push();
    lathe_tensor *y = gc_acc(in, NULL);
    ck_assert_ptr_nonnull(y);
    for (int n = 0; n < 3; n++)
        for (int o = 0; o < 5; o++) {
            double want = 0;
            for (int i = 0; i < 4; i++)
                want += lathe_tensor_f32(x0)[n * 4 + i] * lathe_tensor_f32(w0)[o * 4 + i];
            for (int i = 0; i < 2; i++)
                want += 0.7 * lathe_tensor_f32(x1)[n * 2 + i] * lathe_tensor_f32(w1)[o * 2 + i];
            ck_assert_float_eq_tol(lathe_tensor_f32(y)[n * 5 + o], (float)want, 1e-5f);
        }
    /* shapes that do not line up are refused */
    ck_assert_ptr_null(lathe_linear_accumulate(y, x0, w1, 1.0f));
    lathe_scope_pop();
    check_grad(gc_acc, in, 4);
    for (int i = 0; i < 4; i++)
        lathe_tensor_free(in[i]);
}
END_TEST

static Suite *fn_suite(void)
{
    Suite *s = suite_create("ops_fn");
    TCase *core = tcase_create("Core");
    tcase_add_test(core, test_unary_forward);
    tcase_add_test(core, test_unary_backward);
    tcase_add_test(core, test_token_logprobs);
    tcase_add_test(core, test_linear_accumulate);
    suite_add_tcase(s, core);
    TCase *lim = tcase_create("Limits");
    tcase_add_test(lim, test_limits);
    suite_add_tcase(s, lim);
    return s;
}

int main(void) { return lathe_test_run(fn_suite()); }
