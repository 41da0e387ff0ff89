/* tests/plugins/bad_sig.c — a build signature no 64-bit host has (32-bit pointers, CUDA).
 * Everything else is valid, so the loader must refuse it for that reason.
 * No liblathe calls: a refusal must not depend on symbol resolution. */
#include <lathe/lathe.h>

static int bad_sig_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    *self = NULL;
    return LATHE_EUNSUPPORTED;
}

static void bad_sig_destroy(void *self) {}

static const struct lathe_loss_ops bad_sig_ops = {
    .size = sizeof bad_sig_ops,
    .create = bad_sig_create,
    .destroy = bad_sig_destroy,
};

static const struct lathe_component bad_sig_components[] = {
    {LATHE_KIND_LOSS, "test-bad-sig", &bad_sig_ops},
    {0},
};

static const struct lathe_plugin_desc bad_sig_desc = {
    .abi_major = LATHE_ABI_MAJOR,
    .abi_minor = LATHE_ABI_MINOR,
    .size = sizeof(struct lathe_plugin_desc),
    .build_sig = "ptr4;cuda",
    .name = "bad-sig",
    .version = "0.0.1",
    .components = bad_sig_components,
};

LATHE_EXPORT const struct lathe_plugin_desc *lathe_plugin_describe(void);
LATHE_EXPORT const struct lathe_plugin_desc *lathe_plugin_describe(void) { return &bad_sig_desc; }
