/* plugins/adamw/adamw.c — the AdamW optimizer (component "adamw").
 *
 * Adam with decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight
 * Decay Regularization", 2019), with bias correction, as torch.optim.AdamW:
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  t = step count
 *   p -= lr * (m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps) + wd * p)
 * The arithmetic is the backend's adamw_step, so the same code runs on any
 * device. Parameters with fewer than two dims (LayerNorm gains, biases) get
 * no decay unless decay_norm_and_bias is set, the usual GPT-2 recipe
 * (nanoGPT's configure_optimizers groups parameters the same way).
 *
 * [optim] keys: lr, beta1, beta2, eps, weight_decay, decay_norm_and_bias.
 */
#include <lathe/lathe.h>

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

struct adamw {
    lathe_tensor *const *params; /* borrowed from the core */
    size_t n;
    lathe_tensor **m, **v;       /* first and second moments, one per param */
    double lr, beta1, beta2, eps, weight_decay;
    int decay_norm_and_bias;
    int64_t step;                /* updates done so far */
};

static void adamw_destroy(void *self)
{
    struct adamw *o = self;
    if (!o)
        return;
    for (size_t i = 0; i < o->n; i++) {
        if (o->m)
            lathe_tensor_free(o->m[i]);
        if (o->v)
            lathe_tensor_free(o->v[i]);
    }
    free(o->m);
    free(o->v);
    free(o);
}

static int adamw_read_config(struct adamw *o, lathe_section *cfg)
{
    int rc;
    if ((rc = lathe_cfg_float(cfg, "lr", 1e-3, 0.0, DBL_MAX, &o->lr)))
        return rc;
    if (!(o->lr > 0.0))
        return lathe_cfg_error(cfg, "lr", "lr must be > 0 (got %g)", o->lr);
    if ((rc = lathe_cfg_float(cfg, "beta1", 0.9, 0.0, 1.0, &o->beta1)))
        return rc;
    if ((rc = lathe_cfg_float(cfg, "beta2", 0.999, 0.0, 1.0, &o->beta2)))
        return rc;
    /* beta = 1 would make the bias correction 1 - beta^t zero. */
    if (o->beta1 >= 1.0)
        return lathe_cfg_error(cfg, "beta1", "beta1 must be in [0, 1) (got %g)", o->beta1);
    if (o->beta2 >= 1.0)
        return lathe_cfg_error(cfg, "beta2", "beta2 must be in [0, 1) (got %g)", o->beta2);
    if ((rc = lathe_cfg_float(cfg, "eps", 1e-8, 0.0, DBL_MAX, &o->eps)))
        return rc;
    if ((rc = lathe_cfg_float(cfg, "weight_decay", 0.0, 0.0, DBL_MAX, &o->weight_decay)))
        return rc;
    if ((rc = lathe_cfg_bool(cfg, "decay_norm_and_bias", 0, &o->decay_norm_and_bias)))
        return rc;
    return LATHE_OK;
}

static int adamw_create(lathe_section *cfg, const struct lathe_env *env,
                        lathe_tensor *const *params, size_t n, void **self)
{
    (void)env;
    *self = NULL;
    struct adamw *o = calloc(1, sizeof *o);
    if (!o)
        return lathe_error(LATHE_ENOMEM, "adamw: out of memory");
    int rc = adamw_read_config(o, cfg);
    if (rc) {
        free(o);
        return rc;
    }
    o->params = params;
    o->n = n;
    o->m = calloc(n ? n : 1, sizeof *o->m);
    o->v = calloc(n ? n : 1, sizeof *o->v);
    if (!o->m || !o->v) {
        adamw_destroy(o);
        return lathe_error(LATHE_ENOMEM, "adamw: out of memory for %zu parameters", n);
    }
    for (size_t i = 0; i < n; i++) {
        lathe_tensor *p = params[i];
        if (p->dtype != LATHE_F32) {
            rc = lathe_error(LATHE_EINVAL, "adamw: parameter '%s' is %s; adamw updates f32 "
                             "parameters only", p->name, lathe_dtype_name(p->dtype));
            adamw_destroy(o);
            return rc;
        }
        /* Zeroed by lathe_tensor_new: the moments start at 0 as in Adam. */
        o->m[i] = lathe_tensor_new(LATHE_F32, p->ndim, p->shape);
        o->v[i] = lathe_tensor_new(LATHE_F32, p->ndim, p->shape);
        if (!o->m[i] || !o->v[i]) {
            rc = lathe_error_prefix(LATHE_ENOMEM, "adamw: moments of '%s'", p->name);
            adamw_destroy(o);
            return rc;
        }
    }
    *self = o;
    return LATHE_OK;
}

static double adamw_base_lr(void *self)
{
    return ((struct adamw *)self)->lr;
}

static int adamw_step(void *self, double lr)
{
    struct adamw *o = self;
    const struct lathe_backend_ops *be = lathe_backend();
    o->step++;
    float bc1 = (float)(1.0 - pow(o->beta1, (double)o->step));
    float bc2 = (float)(1.0 - pow(o->beta2, (double)o->step));
    for (size_t i = 0; i < o->n; i++) {
        lathe_tensor *p = o->params[i];
        /* No gradient yet (unused in this step's graph): like PyTorch, leave
         * the parameter and its moments alone. */
        if (!p->grad)
            continue;
        double wd = (p->ndim < 2 && !o->decay_norm_and_bias) ? 0.0 : o->weight_decay;
        be->adamw_step(p->data, p->grad->data, o->m[i]->data, o->v[i]->data,
                       lathe_tensor_numel(p), (float)lr, (float)o->beta1, (float)o->beta2,
                       (float)o->eps, (float)wd, bc1, bc2);
    }
    return LATHE_OK;
}

/* State keys are "m.<param>" / "v.<param>"; an unnamed parameter is keyed by
 * its index instead. */
static void adamw_key(char *buf, size_t n, char which, const lathe_tensor *p, size_t i)
{
    if (p->name[0])
        snprintf(buf, n, "%c.%s", which, p->name);
    else
        snprintf(buf, n, "%c.#%zu", which, i);
}

static int adamw_state_save(void *self, lathe_state *st)
{
    struct adamw *o = self;
    char key[LATHE_NAME_MAX + 16];
    int rc = lathe_state_put_i64(st, "step", o->step);
    for (size_t i = 0; !rc && i < o->n; i++) {
        adamw_key(key, sizeof key, 'm', o->params[i], i);
        rc = lathe_state_put_tensor(st, key, o->m[i]);
        if (rc)
            break;
        adamw_key(key, sizeof key, 'v', o->params[i], i);
        rc = lathe_state_put_tensor(st, key, o->v[i]);
    }
    return rc ? lathe_error_prefix(rc, "adamw: saving state") : LATHE_OK;
}

static int adamw_state_load(void *self, lathe_state *st)
{
    struct adamw *o = self;
    char key[LATHE_NAME_MAX + 16];
    int64_t step;
    int rc = lathe_state_get_i64(st, "step", &step);
    if (!rc && step < 0)
        rc = lathe_error(LATHE_EINVAL, "adamw: step count %lld in the checkpoint is negative",
                         (long long)step);
    for (size_t i = 0; !rc && i < o->n; i++) {
        adamw_key(key, sizeof key, 'm', o->params[i], i);
        rc = lathe_state_get_tensor(st, key, o->m[i]);
        if (rc)
            break;
        adamw_key(key, sizeof key, 'v', o->params[i], i);
        rc = lathe_state_get_tensor(st, key, o->v[i]);
    }
    if (rc)
        return lathe_error_prefix(rc, "adamw: loading state");
    o->step = step;
    return LATHE_OK;
}

static size_t adamw_state_bytes(void *self)
{
    struct adamw *o = self;
    size_t total = 0;
    for (size_t i = 0; i < o->n; i++)
        total += lathe_tensor_nbytes(o->m[i]) + lathe_tensor_nbytes(o->v[i]);
    return total;
}

static const struct lathe_optim_ops adamw_ops = {
    .size = sizeof(struct lathe_optim_ops),
    .create = adamw_create,
    .destroy = adamw_destroy,
    .base_lr = adamw_base_lr,
    .step = adamw_step,
    .state_save = adamw_state_save,
    .state_load = adamw_state_load,
    .state_bytes = adamw_state_bytes,
};

static const struct lathe_component adamw_components[] = {
    {.kind = LATHE_KIND_OPTIMIZER, .name = "adamw", .ops = &adamw_ops},
    {0},
};

LATHE_PLUGIN_DEFINE(adamw, .version = "0.1.0",
                    .description = "AdamW with decoupled weight decay (Loshchilov & Hutter)",
                    .components = adamw_components)
