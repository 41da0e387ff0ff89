/* tests/plugins/dup.c — a valid plugin whose loss "test-mean" has the kind
 * and name of good.c's: loading both must fail and name both files. */
#include <lathe/lathe.h>

static int dup_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    *self = NULL;
    return lathe_error(LATHE_EUNSUPPORTED, "test-mean (dup): not meant to be created");
}

static void dup_destroy(void *self) {}

static lathe_tensor *dup_forward(void *self, lathe_tensor *logits, const struct lathe_batch *batch)
{
    return NULL;
}

static const struct lathe_loss_ops dup_loss_ops = {
    .size = sizeof dup_loss_ops,
    .create = dup_create,
    .destroy = dup_destroy,
    .forward = dup_forward,
};

static const struct lathe_component dup_components[] = {
    {LATHE_KIND_LOSS, "test-mean", &dup_loss_ops},
    {0},
};

LATHE_PLUGIN_DEFINE(dup, .version = "0.0.1", .components = dup_components)
