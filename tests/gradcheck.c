/* tests/gradcheck.c — see gradcheck.h. */
#include "gradcheck.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static double weighted_sum(const lathe_tensor *out, const float *w)
{
    const float *o = lathe_tensor_f32(out);
    double s = 0.0;
    for (int64_t i = 0; i < lathe_tensor_numel(out); i++)
        s += (double)o[i] * (double)w[i];
    return s;
}

static float *weights_for(int64_t n)
{
    float *w = malloc(sizeof *w * (size_t)(n > 0 ? n : 1));
    lathe_rng r;
    lathe_rng_seed(&r, 777);
    for (int64_t i = 0; i < n; i++)
        w[i] = (float)(lathe_rng_uniform(&r) * 2.0 - 1.0);
    return w;
}

static double eval_loss(lathe_gc_fn f, lathe_tensor *const *inputs, void *ctx, const float *w,
                        int *ok)
{
    lathe_scope_push();
    lathe_no_grad_begin();
    lathe_tensor *out = f(inputs, ctx);
    double L = out ? weighted_sum(out, w) : NAN;
    if (!out)
        *ok = 0;
    lathe_no_grad_end();
    lathe_scope_pop();
    return L;
}

int lathe_gradcheck(lathe_gc_fn f, lathe_tensor *const *inputs, int n, void *ctx, double eps,
                    double tol, char *msg, size_t msgn)
{
    /* analytic pass */
    for (int k = 0; k < n; k++)
        lathe_tensor_zero_grad(inputs[k]);
    lathe_scope_push();
    lathe_tensor *out = f(inputs, ctx);
    if (!out) {
        snprintf(msg, msgn, "op failed: %s", lathe_errmsg());
        lathe_scope_pop();
        return 1;
    }
    int64_t nout = lathe_tensor_numel(out);
    float *w = weights_for(nout);
    lathe_tensor *wt = lathe_tensor_new(LATHE_F32, out->ndim, out->shape);
    for (int64_t i = 0; i < nout; i++)
        lathe_tensor_f32(wt)[i] = w[i];
    lathe_tensor *loss = lathe_sum(lathe_mul(out, wt));
    if (!loss || lathe_backward(loss, 1.0f) != LATHE_OK) {
        snprintf(msg, msgn, "backward failed: %s", lathe_errmsg());
        lathe_scope_pop();
        free(w);
        return 1;
    }
    lathe_scope_pop();

    double worst = 0.0;
    int bad = 0;
    int ok = 1;
    for (int k = 0; k < n; k++) {
        lathe_tensor *x = inputs[k];
        if (!x->requires_grad)
            continue;
        if (!x->grad) {
            snprintf(msg, msgn, "input %d got no gradient", k);
            free(w);
            return 1;
        }
        float *xd = lathe_tensor_f32(x);
        const float *g = lathe_tensor_f32(x->grad);
        for (int64_t i = 0; i < lathe_tensor_numel(x); i++) {
            float keep = xd[i];
            xd[i] = keep + (float)eps;
            double lp = eval_loss(f, inputs, ctx, w, &ok);
            xd[i] = keep - (float)eps;
            double lm = eval_loss(f, inputs, ctx, w, &ok);
            xd[i] = keep;
            double h = ((double)(keep + (float)eps) - (double)(keep - (float)eps));
            double num = (lp - lm) / h;
            double ana = g[i];
            double scale = fmax(1.0, fmax(fabs(num), fabs(ana)));
            double err = fabs(num - ana) / scale;
            if (err > worst) {
                worst = err;
                if (err > tol) {
                    bad = 1;
                    snprintf(msg, msgn, "input %d element %lld: numeric %.6g analytic %.6g (err %.3g > %.3g)",
                             k, (long long)i, num, ana, err, tol);
                }
            }
        }
    }
    free(w);
    if (!ok) {
        snprintf(msg, msgn, "op failed during finite differences: %s", lathe_errmsg());
        return 1;
    }
    if (!bad)
        snprintf(msg, msgn, "ok (worst relative error %.3g)", worst);
    return bad;
}

lathe_tensor *lathe_gc_rand(int ndim, const int64_t *shape, float lo, float hi, uint64_t seed,
                            int requires_grad)
{
    lathe_tensor *t = requires_grad ? lathe_param_new("gc", ndim, shape)
                                    : lathe_tensor_new(LATHE_F32, ndim, shape);
    if (!t)
        return NULL;
    lathe_rng r;
    lathe_rng_seed(&r, seed);
    float *d = lathe_tensor_f32(t);
    for (int64_t i = 0; i < lathe_tensor_numel(t); i++)
        d[i] = lo + (hi - lo) * (float)lathe_rng_uniform(&r);
    return t;
}
