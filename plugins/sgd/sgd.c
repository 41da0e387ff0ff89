/* plugins/sgd/sgd.c — stochastic gradient descent (component "sgd").
 *
 * torch.optim.SGD semantics (see its documentation's pseudo-code):
 *   d = g + wd p                       (L2 added to the gradient)
 *   buf = d on the first step, else buf = mu buf + (1 - dampening) d
 *   d = d + mu buf if nesterov, else d = buf        (only when mu != 0)
 *   p -= lr d
 * Built from the backend's scale kernel so that it runs on any device and
 * needs no scratch buffer: each term is accumulated into buf or p directly.
 *
 * [optim] keys: lr, momentum, dampening, nesterov, weight_decay.
 */
#include <lathe/lathe.h>

#include <float.h>
#include <stdio.h>
#include <stdlib.h>

struct sgd {
    lathe_tensor *const *params; /* borrowed from the core */
    size_t n;
    lathe_tensor **buf;          /* momentum buffers (NULL when momentum is 0) */
    unsigned char *started;      /* buf[i] holds a value */
    double lr, momentum, dampening, weight_decay;
    int nesterov;
    int64_t step;
};

static void sgd_destroy(void *self)
{
    struct sgd *o = self;
    if (!o)
        return;
    if (o->buf)
        for (size_t i = 0; i < o->n; i++)
            lathe_tensor_free(o->buf[i]);
    free(o->buf);
    free(o->started);
    free(o);
}

static int sgd_read_config(struct sgd *o, lathe_section *cfg)
{
    int rc;
    if ((rc = lathe_cfg_float(cfg, "lr", 1e-2, 0.0, DBL_MAX, &o->lr)))
        return rc;
    if (!(o->lr > 0.0))
        return lathe_cfg_error(cfg, "lr", "lr must be > 0 (got %g)", o->lr);
    if ((rc = lathe_cfg_float(cfg, "momentum", 0.0, 0.0, 1.0, &o->momentum)))
        return rc;
    if ((rc = lathe_cfg_float(cfg, "dampening", 0.0, 0.0, 1.0, &o->dampening)))
        return rc;
    if ((rc = lathe_cfg_bool(cfg, "nesterov", 0, &o->nesterov)))
        return rc;
    if ((rc = lathe_cfg_float(cfg, "weight_decay", 0.0, 0.0, DBL_MAX, &o->weight_decay)))
        return rc;
    /* PyTorch refuses the same combination: Nesterov's look-ahead is defined
     * for undamped momentum only. */
    if (o->nesterov && (o->momentum <= 0.0 || o->dampening != 0.0))
        return lathe_cfg_error(cfg, "nesterov",
                               "nesterov needs momentum > 0 and dampening = 0 (got momentum %g, "
                               "dampening %g); set nesterov = false or change them",
                               o->momentum, o->dampening);
    return LATHE_OK;
}

static int sgd_create(lathe_section *cfg, const struct lathe_env *env,
                      lathe_tensor *const *params, size_t n, void **self)
{
    (void)env;
    *self = NULL;
    struct sgd *o = calloc(1, sizeof *o);
    if (!o)
        return lathe_error(LATHE_ENOMEM, "sgd: out of memory");
    int rc = sgd_read_config(o, cfg);
    if (rc) {
        free(o);
        return rc;
    }
    o->params = params;
    o->n = n;
    for (size_t i = 0; i < n; i++)
        if (params[i]->dtype != LATHE_F32) {
            rc = lathe_error(LATHE_EINVAL, "sgd: parameter '%s' is %s; sgd updates f32 "
                             "parameters only", params[i]->name,
                             lathe_dtype_name(params[i]->dtype));
            sgd_destroy(o);
            return rc;
        }
    if (o->momentum != 0.0) {
        o->buf = calloc(n ? n : 1, sizeof *o->buf);
        o->started = calloc(n ? n : 1, 1);
        if (!o->buf || !o->started) {
            sgd_destroy(o);
            return lathe_error(LATHE_ENOMEM, "sgd: out of memory for %zu parameters", n);
        }
        for (size_t i = 0; i < n; i++) {
            o->buf[i] = lathe_tensor_new(LATHE_F32, params[i]->ndim, params[i]->shape);
            if (!o->buf[i]) {
                rc = lathe_error_prefix(LATHE_ENOMEM, "sgd: momentum buffer of '%s'",
                                        params[i]->name);
                sgd_destroy(o);
                return rc;
            }
        }
    }
    *self = o;
    return LATHE_OK;
}

static double sgd_base_lr(void *self)
{
    return ((struct sgd *)self)->lr;
}

static int sgd_step(void *self, double lr)
{
    struct sgd *o = self;
    const struct lathe_backend_ops *be = lathe_backend();
    const float wd = (float)o->weight_decay, mu = (float)o->momentum;
    o->step++;
    for (size_t i = 0; i < o->n; i++) {
        lathe_tensor *pt = o->params[i];
        if (!pt->grad)
            continue;
        float *p = pt->data;
        const float *g = pt->grad->data;
        int64_t n = lathe_tensor_numel(pt);
        float *buf = NULL;
        if (o->buf) {
            buf = o->buf[i]->data;
            /* buf = mu buf + (1 - dampening)(g + wd p); the first step takes
             * d undamped, as PyTorch's clone does. p is still the old one. */
            float c = o->started[i] ? (float)(1.0 - o->dampening) : 1.0f;
            if (o->started[i]) {
                be->scale(buf, buf, mu, n, 0);
                be->scale(buf, g, c, n, 1);
            } else {
                be->scale(buf, g, 1.0f, n, 0);
            }
            if (wd != 0.0f)
                be->scale(buf, p, c * wd, n, 1);
            o->started[i] = 1;
        }
        /* p -= lr d, with the decay term applied first while p is the old
         * value: p = p (1 - lr wd) - lr (rest). */
        float lrf = (float)lr;
        int decay_in_d = !buf || o->nesterov;
        if (decay_in_d && wd != 0.0f)
            be->scale(p, p, 1.0f - lrf * wd, n, 0);
        if (!buf) {
            be->scale(p, g, -lrf, n, 1);
        } else if (o->nesterov) {
            be->scale(p, g, -lrf, n, 1);
            be->scale(p, buf, -lrf * mu, n, 1);
        } else {
            be->scale(p, buf, -lrf, n, 1);
        }
    }
    return LATHE_OK;
}

static int sgd_state_save(void *self, lathe_state *st)
{
    struct sgd *o = self;
    char key[LATHE_NAME_MAX + 16];
    int rc = lathe_state_put_i64(st, "step", o->step);
    for (size_t i = 0; !rc && o->buf && i < o->n; i++) {
        if (o->params[i]->name[0])
            snprintf(key, sizeof key, "buf.%s", o->params[i]->name);
        else
            snprintf(key, sizeof key, "buf.#%zu", i);
        rc = lathe_state_put_tensor(st, key, o->buf[i]);
    }
    return rc ? lathe_error_prefix(rc, "sgd: saving state") : LATHE_OK;
}

static int sgd_state_load(void *self, lathe_state *st)
{
    struct sgd *o = self;
    char key[LATHE_NAME_MAX + 16];
    int64_t step;
    int rc = lathe_state_get_i64(st, "step", &step);
    for (size_t i = 0; !rc && o->buf && i < o->n; i++) {
        if (o->params[i]->name[0])
            snprintf(key, sizeof key, "buf.%s", o->params[i]->name);
        else
            snprintf(key, sizeof key, "buf.#%zu", i);
        rc = lathe_state_get_tensor(st, key, o->buf[i]);
    }
    if (rc)
        return lathe_error_prefix(rc, "sgd: loading state");
    o->step = step;
    /* A saved buffer after at least one update holds momentum; before it,
     * the next step must start it from d. */
    for (size_t i = 0; o->buf && i < o->n; i++)
        o->started[i] = step > 0;
    return LATHE_OK;
}

static size_t sgd_state_bytes(void *self)
{
    struct sgd *o = self;
    size_t total = 0;
    for (size_t i = 0; o->buf && i < o->n; i++)
        total += lathe_tensor_nbytes(o->buf[i]);
    return total;
}

static const struct lathe_optim_ops sgd_ops = {
    .size = sizeof(struct lathe_optim_ops),
    .create = sgd_create,
    .destroy = sgd_destroy,
    .base_lr = sgd_base_lr,
    .step = sgd_step,
    .state_save = sgd_state_save,
    .state_load = sgd_state_load,
    .state_bytes = sgd_state_bytes,
};

static const struct lathe_component sgd_components[] = {
    {.kind = LATHE_KIND_OPTIMIZER, .name = "sgd", .ops = &sgd_ops},
    {0},
};

LATHE_PLUGIN_DEFINE(sgd, .version = "0.1.0",
                    .description = "SGD with momentum, dampening, Nesterov and L2 (PyTorch semantics)",
                    .components = sgd_components)
