/* core/plugin/loader.h — finding, loading and checking plugin files.
 *
 * A registry is the set of plugin files found on the search path: the files
 * that loaded (their descriptors and components indexed by kind and name),
 * the files refused (with the reason), and the files shadowed by a file of
 * the same name earlier on the path. Components are looked up by kind and
 * name; the ops pointers stay valid until lathe_registry_close, which unloads
 * every file, so close the registry only after every component instance has
 * been destroyed.
 *
 * These are internal (not in the SDK) but exported from liblathe with
 * LATHE_EXPORT, since the build hides everything else (-fvisibility=hidden)
 * and the lathe command and the tests call them.
 *
 * Messages: every failing call sets lathe_errmsg() and names the file. The
 * strings handed out (paths, refusal messages) are owned by the registry.
 */
#ifndef LATHE_CORE_PLUGIN_LOADER_H
#define LATHE_CORE_PLUGIN_LOADER_H

#include <stddef.h>

#include <lathe/plugin.h>

struct lathe_registry;

/* Scan `dirs` in order and load every regular file (or link to one) named
 * lathe-*.so, in name order within a directory, with
 * dlopen(RTLD_NOW | RTLD_LOCAL).
 *  - A directory that does not exist is skipped (it is listed as missing in
 *    lathe_registry_find's messages); a path that exists but is not a
 *    directory is an error naming it. A directory listed twice is scanned
 *    once.
 *  - A file whose name was already loaded from an earlier directory is
 *    shadowed: not loaded, recorded (lathe_registry_shadowed).
 *  - A file that fails lathe_plugin_validate_file is refused: unloaded,
 *    recorded with its message; the scan goes on.
 * Fails (and leaves *out NULL) on out of memory, on an unreadable or
 * non-directory entry of `dirs`, or when two files ship a component of the
 * same kind and name (the message names both files). */
LATHE_EXPORT int lathe_registry_open(struct lathe_registry **out, const char *const *dirs,
                                     size_t ndirs);
/* lathe_registry_open with options. LATHE_REGISTRY_REFUSE_DUPLICATES: a
 * file with a component already shipped by an earlier file is refused (the
 * message names both files) instead of failing the whole scan, so that
 * `lathe plugins` can show everything that is wrong at once. */
#define LATHE_REGISTRY_REFUSE_DUPLICATES 0x1u
LATHE_EXPORT int lathe_registry_open_flags(struct lathe_registry **out, const char *const *dirs,
                                           size_t ndirs, unsigned flags);
/* dlclose every loaded file and free the registry. NULL is a no-op. */
LATHE_EXPORT void lathe_registry_close(struct lathe_registry *reg);

/* The ops of component (kind, name) and, if `file` is not NULL, the path of
 * the file that ships it. Not found: LATHE_EINVAL, with a message listing the
 * names of that kind that are available (and the closest one as "did you
 * mean"), the refused files with their reasons, and the directories
 * searched. */
LATHE_EXPORT int lathe_registry_find(const struct lathe_registry *reg, int kind, const char *name,
                                     const void **ops, const char **file);

/* Loaded files, in load order. `file` (if not NULL) receives the path. */
LATHE_EXPORT size_t lathe_registry_count(const struct lathe_registry *reg);
LATHE_EXPORT const struct lathe_plugin_desc *
lathe_registry_desc(const struct lathe_registry *reg, size_t i, const char **file);
/* Refused files: returns the message; `file` (if not NULL) receives the path. */
LATHE_EXPORT size_t lathe_registry_refused_count(const struct lathe_registry *reg);
LATHE_EXPORT const char *lathe_registry_refused(const struct lathe_registry *reg, size_t i,
                                                const char **file);
/* Shadowed files: returns the path; `by` (if not NULL) receives the path of
 * the loaded file of the same name that shadows it. */
LATHE_EXPORT size_t lathe_registry_shadowed_count(const struct lathe_registry *reg);
LATHE_EXPORT const char *lathe_registry_shadowed(const struct lathe_registry *reg, size_t i,
                                                 const char **by);
/* The directories searched, in order; `exists` (if not NULL) receives 0 for
 * one that was missing. */
LATHE_EXPORT size_t lathe_registry_dir_count(const struct lathe_registry *reg);
LATHE_EXPORT const char *lathe_registry_dir(const struct lathe_registry *reg, size_t i,
                                            int *exists);

/* Load one file and check it: the lathe_plugin_describe symbol, then the
 * descriptor (lathe_plugin_desc_check). On success *dl_handle is the dlopen
 * handle (dlclose it when done) and *desc the descriptor, valid until then.
 * On refusal both are NULL, the file is unloaded, and the status is
 * LATHE_EIO (the file does not load) or LATHE_EABI (it loads but is not a
 * plugin this lathe can use), with a message naming `path`. */
LATHE_EXPORT int lathe_plugin_validate_file(const char *path, void **dl_handle,
                                            const struct lathe_plugin_desc **desc);
/* Check a descriptor already in memory (`path` names it in messages): ABI
 * version, descriptor size, build signature, required strings, and every
 * component (known kind, name, ops, ops size, no name twice for a kind).
 * Fields past desc->size are never read, nor components of a descriptor
 * whose header is refused. LATHE_OK or LATHE_EABI with a message. */
LATHE_EXPORT int lathe_plugin_desc_check(const char *path, const struct lathe_plugin_desc *desc);

/* The smallest ops size accepted for `kind`: sizeof its ops struct at ABI
 * minor 0 (which, at minor 0, is sizeof the struct). 0 for an unknown kind. */
LATHE_EXPORT size_t lathe_kind_ops_min_size(int kind);
/* "struct lathe_loss_ops" and so on, for messages; "?" for an unknown kind. */
LATHE_EXPORT const char *lathe_kind_ops_name(int kind);
/* The kind whose lathe_kind_name is `name`; LATHE_KIND_NONE if none. */
LATHE_EXPORT int lathe_kind_parse(const char *name);

/* The search path, in order: the --plugin-path value (colon-separated; may be
 * NULL), $LATHE_PLUGIN_PATH (colon-separated), the INI's [plugins] path
 * (colon-separated; join a lathe_cfg_list with ':'; may be NULL), then
 * LATHE_PLUGINDIR (the installed plugin directory, compiled in). Empty
 * entries are dropped and a repeated entry is kept only the first time.
 * *dirs and its strings belong to the caller: free with
 * lathe_plugin_dirs_free. */
LATHE_EXPORT int lathe_plugin_dirs(const char *cli_path, const char *ini_path, char ***dirs,
                                   size_t *n);
LATHE_EXPORT void lathe_plugin_dirs_free(char **dirs, size_t n);

#endif
