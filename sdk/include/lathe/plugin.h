/* lathe/plugin.h — the plugin descriptor.
 *
 * A plugin file (lathe-NAME.so) exports one function, lathe_plugin_describe,
 * returning a pointer to a static descriptor. The descriptor names the ABI it
 * was built against and lists its components {kind, name, ops}; one file may
 * ship several (a loss and a reward, say). Use LATHE_PLUGIN_DEFINE, which
 * fills in the ABI version, size and build signature.
 *
 * Duties
 *  - The descriptor and the ops tables MUST be static const; the host never
 *    writes or frees them, and they live until the file is unloaded.
 *  - Every ops struct MUST begin with `uint32_t size` = sizeof the struct the
 *    plugin was built with, and SHOULD be filled with designated initialisers.
 *  - `create` MUST either succeed (return LATHE_OK and set *self) or free what
 *    it made, leave *self NULL and return a status with lathe_error().
 *  - The host calls `destroy` exactly once for each successful `create`.
 *  - Arguments are borrowed for the call unless a slot says otherwise.
 *  - Nothing calls exit() or abort().
 */
#ifndef LATHE_PLUGIN_H
#define LATHE_PLUGIN_H

#include <stdint.h>

#include "abi.h"

#ifdef __cplusplus
extern "C" {
#endif

enum lathe_kind {
    LATHE_KIND_NONE = 0, /* terminates a component list */
    LATHE_KIND_MODEL,
    LATHE_KIND_PEFT,
    LATHE_KIND_STRATEGY,
    LATHE_KIND_COMM,
    LATHE_KIND_LOSS,
    LATHE_KIND_REWARD,
    LATHE_KIND_DATA,
    LATHE_KIND_OPTIMIZER,
    LATHE_KIND_SCHEDULER,
    LATHE_KIND_BACKEND,
    LATHE_KIND_LOGGER,
    LATHE_KIND_COUNT
};

/* "model", "peft", ... ; "?" for an unknown value. */
const char *lathe_kind_name(int kind);

struct lathe_component {
    int kind;          /* enum lathe_kind; LATHE_KIND_NONE ends the list */
    const char *name;  /* unique per kind across all loaded plugins */
    const void *ops;   /* struct lathe_<kind>_ops *, begins with uint32_t size */
};

struct lathe_plugin_desc {
    uint16_t abi_major;       /* LATHE_ABI_MAJOR the plugin was built with */
    uint16_t abi_minor;       /* LATHE_ABI_MINOR the plugin was built with */
    uint32_t size;            /* sizeof(struct lathe_plugin_desc) */
    const char *name;         /* "lora" */
    const char *version;      /* the plugin's own version, "0.1.0" */
    const char *build_sig;    /* LATHE_BUILD_SIGNATURE */
    const char *license;      /* SPDX id, optional */
    const char *description;  /* one line, optional */
    const struct lathe_component *components; /* ends with {0} */
    void *reserved[4];        /* zero */
};

typedef const struct lathe_plugin_desc *(*lathe_plugin_describe_fn)(void);

#define LATHE_PLUGIN_SYMBOL "lathe_plugin_describe"

/* LATHE_PLUGIN_DEFINE(name_ident, .version = "1.0", .components = list, ...) */
#define LATHE_PLUGIN_DEFINE(ident, ...)                                        \
    static const struct lathe_plugin_desc lathe_plugin_desc_##ident = {        \
        .abi_major = LATHE_ABI_MAJOR,                                          \
        .abi_minor = LATHE_ABI_MINOR,                                          \
        .size = sizeof(struct lathe_plugin_desc),                              \
        .name = #ident,                                                        \
        .build_sig = LATHE_BUILD_SIGNATURE,                                    \
        __VA_ARGS__};                                                          \
    LATHE_EXPORT const struct lathe_plugin_desc *lathe_plugin_describe(void);  \
    LATHE_EXPORT const struct lathe_plugin_desc *lathe_plugin_describe(void)   \
    {                                                                          \
        return &lathe_plugin_desc_##ident;                                     \
    }

#ifdef __cplusplus
}
#endif
#endif
