/* tests/plugins/good.c — a minimal valid plugin: one loss, "test-mean",
 * whose value is the mean of the logits. The loader tests load it, and
 * dup.c ships a component of the same kind and name to clash with it.
 *
 * Built without linking liblathe: lathe_mean resolves from the host
 * process (the test program links liblathe) when the file is dlopened. */
#include <stdlib.h>

#include <lathe/lathe.h>

struct good_loss {
    int calls; /* forward calls, so a test can tell instances apart */
};

static int good_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    struct good_loss *g = calloc(1, sizeof *g);
    if (g == NULL) {
        *self = NULL;
        return lathe_error(LATHE_ENOMEM, "test-mean: out of memory");
    }
    *self = g;
    return LATHE_OK;
}

static void good_destroy(void *self) { free(self); }

static lathe_tensor *good_forward(void *self, lathe_tensor *logits, const struct lathe_batch *batch)
{
    struct good_loss *g = self;
    g->calls++;
    return lathe_mean(logits);
}

static const struct lathe_loss_ops good_loss_ops = {
    .size = sizeof good_loss_ops,
    .create = good_create,
    .destroy = good_destroy,
    .forward = good_forward,
};

static const struct lathe_component good_components[] = {
    {LATHE_KIND_LOSS, "test-mean", &good_loss_ops},
    {0},
};

LATHE_PLUGIN_DEFINE(good, .version = "1.2.3", .license = "MIT",
                    .description = "the loader tests' valid plugin",
                    .components = good_components)
