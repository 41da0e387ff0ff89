/* tests/plugins/no_symbol.c — a shared library with a valid descriptor
 * exported under another name than lathe_plugin_describe, as a library
 * that is not a lathe plugin (or a misspelt one) would be. */
#include <lathe/lathe.h>

static int no_symbol_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    *self = NULL;
    return LATHE_EUNSUPPORTED;
}

static void no_symbol_destroy(void *self) {}

static const struct lathe_loss_ops no_symbol_ops = {
    .size = sizeof no_symbol_ops,
    .create = no_symbol_create,
    .destroy = no_symbol_destroy,
};

static const struct lathe_component no_symbol_components[] = {
    {LATHE_KIND_LOSS, "test-no-symbol", &no_symbol_ops},
    {0},
};

static const struct lathe_plugin_desc no_symbol_desc = {
    .abi_major = LATHE_ABI_MAJOR,
    .abi_minor = LATHE_ABI_MINOR,
    .size = sizeof(struct lathe_plugin_desc),
    .name = "no-symbol",
    .version = "0.0.1",
    .build_sig = LATHE_BUILD_SIGNATURE,
    .components = no_symbol_components,
};

LATHE_EXPORT const struct lathe_plugin_desc *lathe_plugin_describe_v2(void);
LATHE_EXPORT const struct lathe_plugin_desc *lathe_plugin_describe_v2(void)
{
    return &no_symbol_desc;
}
