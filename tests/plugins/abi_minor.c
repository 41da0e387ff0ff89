/* tests/plugins/abi_minor.c — built for an ABI minor version newer than the host's.
 * Everything else is valid, so the loader must refuse it for that reason.
 * No liblathe calls: a refusal must not depend on symbol resolution. */
#include <lathe/lathe.h>

static int abi_minor_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    *self = NULL;
    return LATHE_EUNSUPPORTED;
}

static void abi_minor_destroy(void *self) {}

static const struct lathe_loss_ops abi_minor_ops = {
    .size = sizeof abi_minor_ops,
    .create = abi_minor_create,
    .destroy = abi_minor_destroy,
};

static const struct lathe_component abi_minor_components[] = {
    {LATHE_KIND_LOSS, "test-abi-minor", &abi_minor_ops},
    {0},
};

static const struct lathe_plugin_desc abi_minor_desc = {
    .abi_major = LATHE_ABI_MAJOR,
    .abi_minor = LATHE_ABI_MINOR + 1,
    .size = sizeof(struct lathe_plugin_desc),
    .build_sig = LATHE_BUILD_SIGNATURE,
    .name = "abi-minor",
    .version = "0.0.1",
    .components = abi_minor_components,
};

LATHE_EXPORT const struct lathe_plugin_desc *lathe_plugin_describe(void);
LATHE_EXPORT const struct lathe_plugin_desc *lathe_plugin_describe(void) { return &abi_minor_desc; }
