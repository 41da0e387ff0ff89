/* tests/plugins/ops_small.c — a loss whose ops struct is shorter than the
 * host's struct lathe_loss_ops, as if built against an older header that
 * lacked forward. The descriptor itself is valid.
 * No liblathe calls: a refusal must not depend on symbol resolution. */
#include <lathe/lathe.h>

/* The first two slots of struct lathe_loss_ops, same layout. */
struct short_loss_ops {
    uint32_t size;
    int (*create)(lathe_section *cfg, const struct lathe_env *env, void **self);
};

static int ops_small_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    *self = NULL;
    return LATHE_EUNSUPPORTED;
}

static const struct short_loss_ops ops_small_ops = {
    .size = sizeof ops_small_ops,
    .create = ops_small_create,
};

static const struct lathe_component ops_small_components[] = {
    {LATHE_KIND_LOSS, "test-ops-small", &ops_small_ops},
    {0},
};

LATHE_PLUGIN_DEFINE(ops_small, .version = "0.0.1", .components = ops_small_components)
