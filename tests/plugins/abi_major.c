/* tests/plugins/abi_major.c — built for the next ABI major version.
 * Everything else is valid, so the loader must refuse it for that reason.
 * No liblathe calls: a refusal must not depend on symbol resolution. */
#include <lathe/lathe.h>

static int abi_major_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    *self = NULL;
    return LATHE_EUNSUPPORTED;
}

static void abi_major_destroy(void *self) {}

static const struct lathe_loss_ops abi_major_ops = {
    .size = sizeof abi_major_ops,
    .create = abi_major_create,
    .destroy = abi_major_destroy,
};

static const struct lathe_component abi_major_components[] = {
    {LATHE_KIND_LOSS, "test-abi-major", &abi_major_ops},
    {0},
};

static const struct lathe_plugin_desc abi_major_desc = {
    .abi_major = LATHE_ABI_MAJOR + 1,
    .abi_minor = 0,
    .size = sizeof(struct lathe_plugin_desc),
    .build_sig = LATHE_BUILD_SIGNATURE,
    .name = "abi-major",
    .version = "0.0.1",
    .components = abi_major_components,
};

LATHE_EXPORT const struct lathe_plugin_desc *lathe_plugin_describe(void);
LATHE_EXPORT const struct lathe_plugin_desc *lathe_plugin_describe(void) { return &abi_major_desc; }
