/* plugins/cross-entropy/cross_entropy.c — the token cross-entropy loss
 * (component "cross-entropy"): the mean over positions whose label is not
 * ignore_index, optionally with label smoothing (Szegedy et al. 2016, as
 * torch.nn.functional.cross_entropy's label_smoothing).
 *
 * [loss] keys: label_smoothing, ignore_index.
 */
#include <lathe/lathe.h>

#include <stdlib.h>

struct xent {
    float label_smoothing;
    int32_t ignore_index;
};

static int xent_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    (void)env;
    *self = NULL;
    double smoothing;
    int64_t ignore;
    int rc = lathe_cfg_float(cfg, "label_smoothing", 0.0, 0.0, 1.0, &smoothing);
    if (rc)
        return rc;
    /* At 1 the target is uniform and carries no label at all. */
    if (smoothing >= 1.0)
        return lathe_cfg_error(cfg, "label_smoothing",
                               "label_smoothing must be in [0, 1) (got %g)", smoothing);
    if ((rc = lathe_cfg_int(cfg, "ignore_index", LATHE_IGNORE_INDEX, INT32_MIN, INT32_MAX, &ignore)))
        return rc;
    struct xent *x = calloc(1, sizeof *x);
    if (!x)
        return lathe_error(LATHE_ENOMEM, "cross-entropy: out of memory");
    x->label_smoothing = (float)smoothing;
    x->ignore_index = (int32_t)ignore;
    *self = x;
    return LATHE_OK;
}

static void xent_destroy(void *self)
{
    free(self);
}

static lathe_tensor *xent_forward(void *self, lathe_tensor *logits, const struct lathe_batch *batch)
{
    const struct xent *x = self;
    if (!batch->labels) {
        lathe_error(LATHE_EINVAL, "cross-entropy: the batch has no labels; use a data "
                    "component that makes labels, or a loss for its targets");
        return NULL;
    }
    lathe_tensor *loss = lathe_cross_entropy(logits, batch->labels, x->ignore_index,
                                             x->label_smoothing);
    if (!loss)
        lathe_error_prefix(LATHE_EINVAL, "cross-entropy");
    return loss;
}

static const struct lathe_loss_ops xent_ops = {
    .size = sizeof(struct lathe_loss_ops),
    .create = xent_create,
    .destroy = xent_destroy,
    .forward = xent_forward,
};

static const struct lathe_component xent_components[] = {
    {.kind = LATHE_KIND_LOSS, .name = "cross-entropy", .ops = &xent_ops},
    {0},
};

LATHE_PLUGIN_DEFINE(cross_entropy, .version = "0.1.0",
                    .description = "token cross-entropy with ignore_index and label smoothing",
                    .components = xent_components)
