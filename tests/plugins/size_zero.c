/* tests/plugins/size_zero.c — a descriptor whose size field is 0.
 * Everything else is valid, so the loader must refuse it for that reason.
 * No liblathe calls: a refusal must not depend on symbol resolution. */
#include <lathe/lathe.h>

static int size_zero_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    *self = NULL;
    return LATHE_EUNSUPPORTED;
}

static void size_zero_destroy(void *self) {}

static const struct lathe_loss_ops size_zero_ops = {
    .size = sizeof size_zero_ops,
    .create = size_zero_create,
    .destroy = size_zero_destroy,
};

static const struct lathe_component size_zero_components[] = {
    {LATHE_KIND_LOSS, "test-size-zero", &size_zero_ops},
    {0},
};

static const struct lathe_plugin_desc size_zero_desc = {
    .abi_major = LATHE_ABI_MAJOR,
    .abi_minor = LATHE_ABI_MINOR,
    .size = 0,
    .build_sig = LATHE_BUILD_SIGNATURE,
    .name = "size-zero",
    .version = "0.0.1",
    .components = size_zero_components,
};

LATHE_EXPORT const struct lathe_plugin_desc *lathe_plugin_describe(void);
LATHE_EXPORT const struct lathe_plugin_desc *lathe_plugin_describe(void) { return &size_zero_desc; }
