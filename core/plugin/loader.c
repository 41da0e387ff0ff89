/* core/plugin/loader.c — the plugin search path, dlopen, the descriptor
 * checks and the component index.
 *
 * Every check that refuses a file names the file, both values (the plugin's
 * and this lathe's) and what to do, because the person reading the message
 * is often not the one who built the plugin. */
#include "plugin/loader.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fnmatch.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lathe/lathe.h>

/* A corrupt descriptor without its {0} terminator would send the scan
 * through unrelated memory; no honest plugin ships this many components. */
#define LATHE_MAX_COMPONENTS 256

/* What the not-found message lists before it says "and N more" (the message
 * buffer is 4 KiB). */
#define FIND_LIST_MAX 24
#define FIND_REFUSED_MAX 6

/* ---- kinds ------------------------------------------------------------ */

static const char *const kind_names[LATHE_KIND_COUNT] = {
    [LATHE_KIND_NONE] = "none",       [LATHE_KIND_MODEL] = "model",
    [LATHE_KIND_PEFT] = "peft",       [LATHE_KIND_STRATEGY] = "strategy",
    [LATHE_KIND_COMM] = "comm",       [LATHE_KIND_LOSS] = "loss",
    [LATHE_KIND_REWARD] = "reward",   [LATHE_KIND_DATA] = "data",
    [LATHE_KIND_OPTIMIZER] = "optimizer", [LATHE_KIND_SCHEDULER] = "scheduler",
    [LATHE_KIND_BACKEND] = "backend", [LATHE_KIND_LOGGER] = "logger",
};

/* The ops size of each kind at ABI minor 0. Ops structs only grow at the
 * end, so when a slot is appended (and the minor bumped), the entry for that
 * kind must become offsetof(struct, first appended slot), not sizeof: a
 * plugin built at minor 0 is still welcome. */
static const struct {
    size_t min_size;
    const char *ops_name;
} kind_ops[LATHE_KIND_COUNT] = {
    /* minor 1 appended the generation slots (cache_new ...) */
    [LATHE_KIND_MODEL] = {offsetof(struct lathe_model_ops, cache_new), "struct lathe_model_ops"},
    [LATHE_KIND_PEFT] = {offsetof(struct lathe_peft_ops, set_enabled), "struct lathe_peft_ops"},
    [LATHE_KIND_STRATEGY] = {offsetof(struct lathe_strategy_ops, optim_params), "struct lathe_strategy_ops"},
    /* minor 2 appended split */
    [LATHE_KIND_COMM] = {offsetof(struct lathe_comm_ops, split), "struct lathe_comm_ops"},
    [LATHE_KIND_LOSS] = {sizeof(struct lathe_loss_ops), "struct lathe_loss_ops"},
    [LATHE_KIND_REWARD] = {sizeof(struct lathe_reward_ops), "struct lathe_reward_ops"},
    [LATHE_KIND_DATA] = {sizeof(struct lathe_data_ops), "struct lathe_data_ops"},
    [LATHE_KIND_OPTIMIZER] = {sizeof(struct lathe_optim_ops), "struct lathe_optim_ops"},
    [LATHE_KIND_SCHEDULER] = {sizeof(struct lathe_sched_ops), "struct lathe_sched_ops"},
    [LATHE_KIND_BACKEND] = {offsetof(struct lathe_backend_ops, attention_cached_forward), "struct lathe_backend_ops"},
    [LATHE_KIND_LOGGER] = {sizeof(struct lathe_logger_ops), "struct lathe_logger_ops"},
};

/* Same rule as the ops sizes: frozen at the minor-0 layout. */
static const size_t desc_min_size = sizeof(struct lathe_plugin_desc);

static int kind_valid(int kind) { return kind > LATHE_KIND_NONE && kind < LATHE_KIND_COUNT; }

LATHE_EXPORT const char *lathe_kind_name(int kind)
{
    return kind_valid(kind) ? kind_names[kind] : "?";
}

size_t lathe_kind_ops_min_size(int kind)
{
    return kind_valid(kind) ? kind_ops[kind].min_size : 0;
}

const char *lathe_kind_ops_name(int kind)
{
    return kind_valid(kind) ? kind_ops[kind].ops_name : "?";
}

int lathe_kind_parse(const char *name)
{
    if (name == NULL)
        return LATHE_KIND_NONE;
    for (int k = LATHE_KIND_NONE + 1; k < LATHE_KIND_COUNT; k++)
        if (strcmp(name, kind_names[k]) == 0)
            return k;
    return LATHE_KIND_NONE;
}

/* ---- small helpers ---------------------------------------------------- */

static char *str_dup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p != NULL)
        memcpy(p, s, n);
    return p;
}

static const char *path_base(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash != NULL ? slash + 1 : path;
}

/* Make room for one more element of `elem` bytes in *arr. */
static int grow(void *arr, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return LATHE_OK;
    size_t ncap = *cap ? *cap * 2 : 8;
    void *p = realloc(*(void **)arr, ncap * elem);
    if (p == NULL)
        return lathe_error(LATHE_ENOMEM, "out of memory while loading plugins");
    *(void **)arr = p;
    *cap = ncap;
    return LATHE_OK;
}

/* A growing string for messages that list things. Out of memory leaves a
 * shorter message, never a failure: the message is already the error path. */
struct sbuf {
    char *p;
    size_t len, cap;
};

static void sb_printf(struct sbuf *sb, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void sb_printf(struct sbuf *sb, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (sb->len + (size_t)n + 1 > sb->cap) {
        size_t ncap = (sb->len + (size_t)n + 1) * 2;
        char *p = realloc(sb->p, ncap);
        if (p == NULL)
            return;
        sb->p = p;
        sb->cap = ncap;
    }
    va_start(ap, fmt);
    vsnprintf(sb->p + sb->len, sb->cap - sb->len, fmt, ap);
    va_end(ap);
    sb->len += (size_t)n;
}

/* Levenshtein distance (Levenshtein 1966), two-row form; SIZE_MAX when a
 * name is too long to be worth comparing. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    if (na > 64 || nb > 64)
        return SIZE_MAX;
    size_t prev[65], cur[65];
    for (size_t j = 0; j <= nb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= na; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= nb; j++) {
            size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, (nb + 1) * sizeof prev[0]);
    }
    return prev[nb];
}

/* ---- one file ----------------------------------------------------------- */

static int check_component(const char *path, const struct lathe_plugin_desc *d, size_t i)
{
    const struct lathe_component *c = &d->components[i];
    if (!kind_valid(c->kind))
        return lathe_error(LATHE_EABI,
                           "%s: component %zu has unknown kind %d (this lathe knows kinds 1..%d, "
                           "model..logger); rebuild it against this SDK",
                           path, i, c->kind, LATHE_KIND_COUNT - 1);
    const char *kn = kind_names[c->kind];
    if (c->name == NULL || c->name[0] == '\0')
        return lathe_error(LATHE_EABI,
                           "%s: component %zu (a %s) has no name; give every component a "
                           "name, the one the INI selects it by",
                           path, i, kn);
    if (c->ops == NULL)
        return lathe_error(LATHE_EABI,
                           "%s: %s component \"%s\" has no ops; point .ops at its static const %s",
                           path, kn, c->name, kind_ops[c->kind].ops_name);
    uint32_t size;
    memcpy(&size, c->ops, sizeof size); /* every ops struct begins with it */
    size_t min = kind_ops[c->kind].min_size;
    if (size == 0)
        return lathe_error(LATHE_EABI,
                           "%s: %s component \"%s\": ops size is 0, this lathe needs at least %zu; "
                           "set .size = sizeof(%s)",
                           path, kn, c->name, min, kind_ops[c->kind].ops_name);
    if (size < min)
        return lathe_error(LATHE_EABI,
                           "%s: %s component \"%s\": ops size %u is smaller than this lathe's "
                           "%s (%zu bytes); rebuild it against this SDK",
                           path, kn, c->name, (unsigned)size, kind_ops[c->kind].ops_name, min);
    for (size_t j = 0; j < i; j++) {
        const struct lathe_component *o = &d->components[j];
        if (o->kind == c->kind && strcmp(o->name, c->name) == 0)
            return lathe_error(LATHE_EABI,
                               "%s: lists %s component \"%s\" twice (entries %zu and %zu); "
                               "remove one or rename it",
                               path, kn, c->name, j, i);
    }
    return LATHE_OK;
}

/* A GPU backend plugin brings its own runtime: the host only calls its ops
 * table, so a host built without the GPU runtime takes it when the pointer
 * size agrees and it ships backends alone. Any other component built for a
 * GPU runtime may assume one in the host and is refused. */
static int gpu_backend_welcome(const struct lathe_plugin_desc *d)
{
    const char *semi = strchr(LATHE_BUILD_SIGNATURE, ';');
    size_t ptr_len = (size_t)(semi - LATHE_BUILD_SIGNATURE) + 1; /* "ptr8;" */
    if (strncmp(d->build_sig, LATHE_BUILD_SIGNATURE, ptr_len) != 0 || d->components == NULL)
        return 0;
    size_t i = 0;
    for (; i < LATHE_MAX_COMPONENTS && d->components[i].kind != LATHE_KIND_NONE; i++)
        if (d->components[i].kind != LATHE_KIND_BACKEND)
            return 0;
    return i > 0 && i < LATHE_MAX_COMPONENTS;
}

int lathe_plugin_desc_check(const char *path, const struct lathe_plugin_desc *d)
{
    if (path == NULL)
        path = "(plugin)";
    if (d == NULL)
        return lathe_error(LATHE_EABI,
                           "%s: lathe_plugin_describe returned NULL; it must return its static "
                           "descriptor (use LATHE_PLUGIN_DEFINE)",
                           path);
    /* abi_major, abi_minor and size open every descriptor of every ABI, so
     * they are the only fields read before size is known to be enough. */
    if (d->abi_major != LATHE_ABI_MAJOR)
        return lathe_error(LATHE_EABI,
                           "%s: built for ABI %u.%u but this lathe is %d.%d (the major versions "
                           "must match); rebuild it against this SDK",
                           path, (unsigned)d->abi_major, (unsigned)d->abi_minor, LATHE_ABI_MAJOR,
                           LATHE_ABI_MINOR);
    if (d->abi_minor > LATHE_ABI_MINOR)
        return lathe_error(LATHE_EABI,
                           "%s: built for ABI %u.%u, newer than this lathe: this lathe is %d.%d; "
                           "rebuild it against this SDK or upgrade lathe",
                           path, (unsigned)d->abi_major, (unsigned)d->abi_minor, LATHE_ABI_MAJOR,
                           LATHE_ABI_MINOR);
    if (d->size < desc_min_size)
        return lathe_error(LATHE_EABI,
                           "%s: descriptor size %u is smaller than this lathe's struct "
                           "lathe_plugin_desc (%zu bytes); define the descriptor with "
                           "LATHE_PLUGIN_DEFINE, which sets .size, and rebuild it against this SDK",
                           path, (unsigned)d->size, desc_min_size);
    if (d->build_sig == NULL)
        return lathe_error(LATHE_EABI,
                           "%s: descriptor has no build signature; this lathe is \"%s\"; define "
                           "the descriptor with LATHE_PLUGIN_DEFINE, which sets it",
                           path, LATHE_BUILD_SIGNATURE);
    if (strcmp(d->build_sig, LATHE_BUILD_SIGNATURE) != 0 && !gpu_backend_welcome(d))
        return lathe_error(LATHE_EABI,
                           "%s: build signature \"%s\" does not match this lathe's \"%s\" "
                           "(pointer size; GPU runtime); rebuild it against this SDK for the "
                           "same target and with the same CUDA setting",
                           path, d->build_sig, LATHE_BUILD_SIGNATURE);
    if (d->name == NULL || d->name[0] == '\0')
        return lathe_error(LATHE_EABI,
                           "%s: descriptor has no name; define it with LATHE_PLUGIN_DEFINE", path);
    if (d->version == NULL)
        return lathe_error(LATHE_EABI,
                           "%s: plugin \"%s\" has no version; set .version in LATHE_PLUGIN_DEFINE",
                           path, d->name);
    if (d->components == NULL)
        return lathe_error(LATHE_EABI,
                           "%s: plugin \"%s\" lists no components (.components is NULL); set "
                           ".components to a list ending with {0}",
                           path, d->name);
    size_t i = 0;
    for (; i < LATHE_MAX_COMPONENTS && d->components[i].kind != LATHE_KIND_NONE; i++) {
        int st = check_component(path, d, i);
        if (st != LATHE_OK)
            return st;
    }
    if (i == LATHE_MAX_COMPONENTS)
        return lathe_error(LATHE_EABI,
                           "%s: plugin \"%s\": no {0} at the end of .components within %d "
                           "entries; end the list with {0}",
                           path, d->name, LATHE_MAX_COMPONENTS);
    if (i == 0)
        return lathe_error(LATHE_EABI,
                           "%s: plugin \"%s\" lists no components (.components starts with {0})",
                           path, d->name);
    return LATHE_OK;
}

int lathe_plugin_validate_file(const char *path, void **dl_handle,
                               const struct lathe_plugin_desc **desc)
{
    if (dl_handle != NULL)
        *dl_handle = NULL;
    if (desc != NULL)
        *desc = NULL;
    if (path == NULL || dl_handle == NULL || desc == NULL)
        return lathe_error(LATHE_EINVAL, "lathe_plugin_validate_file: NULL argument");

    /* A name without a slash would make dlopen search the library path
     * instead of opening the file the user named. */
    char *local = NULL;
    const char *open_path = path;
    if (strchr(path, '/') == NULL) {
        local = malloc(strlen(path) + 3);
        if (local == NULL)
            return lathe_error(LATHE_ENOMEM, "out of memory while loading %s", path);
        strcpy(local, "./");
        strcat(local, path);
        open_path = local;
    }
    dlerror();
    void *h = dlopen(open_path, RTLD_NOW | RTLD_LOCAL);
    free(local);
    if (h == NULL) {
        const char *why = dlerror();
        return lathe_error(LATHE_EIO,
                           "%s: cannot load: %s; check that it is a shared library built for "
                           "this machine against this lathe",
                           path, why != NULL ? why : "unknown dlopen error");
    }

    dlerror();
    void *sym = dlsym(h, LATHE_PLUGIN_SYMBOL);
    if (sym == NULL) {
        dlclose(h);
        return lathe_error(LATHE_EABI,
                           "%s: no %s symbol; is it a lathe plugin? (plugins define it with "
                           "LATHE_PLUGIN_DEFINE from <lathe/plugin.h>)",
                           path, LATHE_PLUGIN_SYMBOL);
    }
    lathe_plugin_describe_fn describe;
    /* POSIX guarantees this conversion works for dlsym results; memcpy keeps
     * ISO C's object/function pointer rule out of it. */
    memcpy(&describe, &sym, sizeof describe);
    const struct lathe_plugin_desc *d = describe();
    int st = lathe_plugin_desc_check(path, d);
    if (st != LATHE_OK) {
        dlclose(h); /* the message was formatted before, so it holds no plugin strings */
        return st;
    }
    *dl_handle = h;
    *desc = d;
    return LATHE_OK;
}

/* ---- the registry ------------------------------------------------------- */

struct plugin_file {
    char *path;
    void *dl;
    const struct lathe_plugin_desc *desc;
};

struct refused_file {
    char *path;
    char *msg;
};

struct shadowed_file {
    char *path;
    size_t by; /* index in files */
};

struct component_entry {
    int kind;
    const char *name; /* the plugin's string */
    const void *ops;
    size_t file; /* index in files */
};

struct search_dir {
    char *path;
    char *real; /* realpath, NULL if missing */
};

struct lathe_registry {
    struct plugin_file *files;
    size_t nfiles, capfiles;
    struct refused_file *refused;
    size_t nrefused, caprefused;
    struct shadowed_file *shadowed;
    size_t nshadowed, capshadowed;
    struct component_entry *comps;
    size_t ncomps, capcomps;
    struct search_dir *dirs;
    size_t ndirs, capdirs;
    unsigned flags; /* LATHE_REGISTRY_* */
};

void lathe_registry_close(struct lathe_registry *reg)
{
    if (reg == NULL)
        return;
    /* Unload in reverse order of loading, as a stack of dependencies would be. */
    for (size_t i = reg->nfiles; i-- > 0;) {
        if (reg->files[i].dl != NULL)
            dlclose(reg->files[i].dl);
        free(reg->files[i].path);
    }
    for (size_t i = 0; i < reg->nrefused; i++) {
        free(reg->refused[i].path);
        free(reg->refused[i].msg);
    }
    for (size_t i = 0; i < reg->nshadowed; i++)
        free(reg->shadowed[i].path);
    for (size_t i = 0; i < reg->ndirs; i++) {
        free(reg->dirs[i].path);
        free(reg->dirs[i].real);
    }
    free(reg->files);
    free(reg->refused);
    free(reg->shadowed);
    free(reg->comps);
    free(reg->dirs);
    free(reg);
}

static int record_refused(struct lathe_registry *reg, const char *path, const char *msg)
{
    if (grow(&reg->refused, &reg->caprefused, reg->nrefused, sizeof *reg->refused) != LATHE_OK)
        return LATHE_ENOMEM;
    char *p = str_dup(path), *m = str_dup(msg);
    if (p == NULL || m == NULL) {
        free(p);
        free(m);
        return lathe_error(LATHE_ENOMEM, "out of memory while loading plugins");
    }
    reg->refused[reg->nrefused++] = (struct refused_file){p, m};
    return LATHE_OK;
}

/* Index the components of the file just appended to reg->files. */
static int index_components(struct lathe_registry *reg, size_t fi)
{
    const struct lathe_plugin_desc *d = reg->files[fi].desc;
    for (const struct lathe_component *c = d->components; c->kind != LATHE_KIND_NONE; c++) {
        for (size_t j = 0; j < reg->ncomps; j++) {
            const struct component_entry *e = &reg->comps[j];
            if (e->kind == c->kind && strcmp(e->name, c->name) == 0)
                return lathe_error(LATHE_EINVAL,
                                   "%s component \"%s\" is shipped by two plugin files, %s and %s; "
                                   "remove one of them from the plugin path",
                                   kind_names[c->kind], c->name, reg->files[e->file].path,
                                   reg->files[fi].path);
        }
        if (grow(&reg->comps, &reg->capcomps, reg->ncomps, sizeof *reg->comps) != LATHE_OK)
            return LATHE_ENOMEM;
        reg->comps[reg->ncomps++] = (struct component_entry){c->kind, c->name, c->ops, fi};
    }
    return LATHE_OK;
}

static int load_one(struct lathe_registry *reg, const char *path)
{
    const char *base = path_base(path);
    for (size_t i = 0; i < reg->nfiles; i++) {
        if (strcmp(path_base(reg->files[i].path), base) == 0) {
            if (grow(&reg->shadowed, &reg->capshadowed, reg->nshadowed, sizeof *reg->shadowed) !=
                LATHE_OK)
                return LATHE_ENOMEM;
            char *p = str_dup(path);
            if (p == NULL)
                return lathe_error(LATHE_ENOMEM, "out of memory while loading plugins");
            reg->shadowed[reg->nshadowed++] = (struct shadowed_file){p, i};
            return LATHE_OK;
        }
    }

    void *dl;
    const struct lathe_plugin_desc *desc;
    int st = lathe_plugin_validate_file(path, &dl, &desc);
    if (st == LATHE_ENOMEM)
        return st;
    if (st != LATHE_OK)
        return record_refused(reg, path, lathe_errmsg());

    char *p = str_dup(path);
    if (p == NULL ||
        grow(&reg->files, &reg->capfiles, reg->nfiles, sizeof *reg->files) != LATHE_OK) {
        free(p);
        dlclose(dl);
        return lathe_error(LATHE_ENOMEM, "out of memory while loading plugins");
    }
    size_t fi = reg->nfiles++;
    reg->files[fi] = (struct plugin_file){p, dl, desc};
    st = index_components(reg, fi);
    if (st == LATHE_EINVAL && (reg->flags & LATHE_REGISTRY_REFUSE_DUPLICATES)) {
        /* Undo this file: its components so far, then the file itself. */
        while (reg->ncomps > 0 && reg->comps[reg->ncomps - 1].file == fi)
            reg->ncomps--;
        reg->nfiles--;
        dlclose(dl);
        free(p);
        return record_refused(reg, path, lathe_errmsg());
    }
    return st;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int scan_dir(struct lathe_registry *reg, const char *dir)
{
    DIR *dp = opendir(dir);
    if (dp == NULL)
        return lathe_error(LATHE_EIO, "cannot read plugin directory %s: %s; check its permissions",
                           dir, strerror(errno));
    char **names = NULL;
    size_t n = 0, cap = 0;
    int st = LATHE_OK;
    struct dirent *de;
    while ((de = readdir(dp)) != NULL) {
        if (fnmatch("lathe-*.so", de->d_name, FNM_PERIOD) != 0)
            continue;
        if ((st = grow(&names, &cap, n, sizeof *names)) != LATHE_OK)
            break;
        size_t len = strlen(dir) + 1 + strlen(de->d_name) + 1;
        names[n] = malloc(len);
        if (names[n] == NULL) {
            st = lathe_error(LATHE_ENOMEM, "out of memory while loading plugins");
            break;
        }
        snprintf(names[n], len, "%s/%s", dir, de->d_name);
        n++;
    }
    closedir(dp);
    /* readdir order depends on the file system; the load order decides
     * which file a duplicate message names first, so make it stable. */
    if (st == LATHE_OK)
        qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n && st == LATHE_OK; i++) {
        struct stat sb;
        /* stat, not lstat: a link to a plugin (as tests and packagers
         * make) is a plugin; a directory or a dangling link is not. */
        if (stat(names[i], &sb) != 0 || !S_ISREG(sb.st_mode))
            continue;
        st = load_one(reg, names[i]);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return st;
}

int lathe_registry_open(struct lathe_registry **out, const char *const *dirs, size_t ndirs)
{
    return lathe_registry_open_flags(out, dirs, ndirs, 0);
}

int lathe_registry_open_flags(struct lathe_registry **out, const char *const *dirs, size_t ndirs,
                              unsigned flags)
{
    if (out == NULL)
        return lathe_error(LATHE_EINVAL, "lathe_registry_open: NULL out");
    *out = NULL;
    if (dirs == NULL && ndirs > 0)
        return lathe_error(LATHE_EINVAL, "lathe_registry_open: NULL dirs");
    struct lathe_registry *reg = calloc(1, sizeof *reg);
    if (reg == NULL)
        return lathe_error(LATHE_ENOMEM, "out of memory while loading plugins");
    reg->flags = flags;

    int st = LATHE_OK;
    for (size_t i = 0; i < ndirs && st == LATHE_OK; i++) {
        const char *dir = dirs[i];
        if (dir == NULL || dir[0] == '\0')
            continue;
        struct stat sb;
        int exists = stat(dir, &sb) == 0;
        if (!exists && errno != ENOENT && errno != ENOTDIR) {
            st = lathe_error(LATHE_EIO, "plugin directory %s: %s", dir, strerror(errno));
            break;
        }
        if (exists && !S_ISDIR(sb.st_mode)) {
            st = lathe_error(LATHE_EINVAL,
                             "plugin path entry %s is not a directory; list directories that "
                             "hold lathe-*.so files, not the files",
                             dir);
            break;
        }
        char *real = exists ? realpath(dir, NULL) : NULL;
        int seen = 0;
        for (size_t j = 0; j < reg->ndirs && !seen; j++) {
            const struct search_dir *o = &reg->dirs[j];
            seen = real != NULL ? o->real != NULL && strcmp(o->real, real) == 0
                                : strcmp(o->path, dir) == 0;
        }
        if (seen) {
            free(real);
            continue;
        }
        char *copy = str_dup(dir);
        if (copy == NULL || (exists && real == NULL) ||
            grow(&reg->dirs, &reg->capdirs, reg->ndirs, sizeof *reg->dirs) != LATHE_OK) {
            free(copy);
            free(real);
            st = lathe_error(LATHE_ENOMEM, "out of memory while loading plugins");
            break;
        }
        reg->dirs[reg->ndirs++] = (struct search_dir){copy, real};
        if (exists)
            st = scan_dir(reg, dir);
    }
    if (st != LATHE_OK) {
        lathe_registry_close(reg);
        return st;
    }
    *out = reg;
    return LATHE_OK;
}

/* ---- lookups -------------------------------------------------------------- */

size_t lathe_registry_count(const struct lathe_registry *reg) { return reg ? reg->nfiles : 0; }

const struct lathe_plugin_desc *lathe_registry_desc(const struct lathe_registry *reg, size_t i,
                                                    const char **file)
{
    if (reg == NULL || i >= reg->nfiles)
        return NULL;
    if (file != NULL)
        *file = reg->files[i].path;
    return reg->files[i].desc;
}

size_t lathe_registry_refused_count(const struct lathe_registry *reg)
{
    return reg ? reg->nrefused : 0;
}

const char *lathe_registry_refused(const struct lathe_registry *reg, size_t i, const char **file)
{
    if (reg == NULL || i >= reg->nrefused)
        return NULL;
    if (file != NULL)
        *file = reg->refused[i].path;
    return reg->refused[i].msg;
}

size_t lathe_registry_shadowed_count(const struct lathe_registry *reg)
{
    return reg ? reg->nshadowed : 0;
}

const char *lathe_registry_shadowed(const struct lathe_registry *reg, size_t i, const char **by)
{
    if (reg == NULL || i >= reg->nshadowed)
        return NULL;
    if (by != NULL)
        *by = reg->files[reg->shadowed[i].by].path;
    return reg->shadowed[i].path;
}

size_t lathe_registry_dir_count(const struct lathe_registry *reg) { return reg ? reg->ndirs : 0; }

const char *lathe_registry_dir(const struct lathe_registry *reg, size_t i, int *exists)
{
    if (reg == NULL || i >= reg->ndirs)
        return NULL;
    if (exists != NULL)
        *exists = reg->dirs[i].real != NULL;
    return reg->dirs[i].path;
}

int lathe_registry_find(const struct lathe_registry *reg, int kind, const char *name,
                        const void **ops, const char **file)
{
    if (ops != NULL)
        *ops = NULL;
    if (file != NULL)
        *file = NULL;
    if (reg == NULL || name == NULL || ops == NULL)
        return lathe_error(LATHE_EINVAL, "lathe_registry_find: NULL argument");
    if (!kind_valid(kind))
        return lathe_error(LATHE_EINVAL, "lathe_registry_find: unknown component kind %d", kind);
    for (size_t i = 0; i < reg->ncomps; i++) {
        const struct component_entry *e = &reg->comps[i];
        if (e->kind == kind && strcmp(e->name, name) == 0) {
            *ops = e->ops;
            if (file != NULL)
                *file = reg->files[e->file].path;
            return LATHE_OK;
        }
    }

    const char *kn = kind_names[kind];
    struct sbuf sb = {0};
    sb_printf(&sb, "no %s component named \"%s\"", kn, name);
    const char *best = NULL;
    size_t best_d = SIZE_MAX, navail = 0;
    for (size_t i = 0; i < reg->ncomps; i++) {
        if (reg->comps[i].kind != kind)
            continue;
        navail++;
        size_t d = edit_distance(name, reg->comps[i].name);
        if (d < best_d) {
            best_d = d;
            best = reg->comps[i].name;
        }
    }
    /* Close enough to be a typo: a third of the name, and at least two
     * edits so that short names still get a hint. */
    size_t tol = strlen(name) / 3 > 2 ? strlen(name) / 3 : 2;
    if (best != NULL && best_d <= tol)
        sb_printf(&sb, "; did you mean \"%s\"?", best);
    if (navail == 0) {
        sb_printf(&sb, "; no %s components are loaded", kn);
    } else {
        sb_printf(&sb, "; available %s components:", kn);
        size_t shown = 0;
        for (size_t i = 0; i < reg->ncomps && shown < FIND_LIST_MAX; i++)
            if (reg->comps[i].kind == kind)
                sb_printf(&sb, "%s %s", shown++ ? "," : "", reg->comps[i].name);
        if (navail > shown)
            sb_printf(&sb, " and %zu more (see `lathe plugins`)", navail - shown);
    }
    if (reg->nrefused > 0) {
        sb_printf(&sb, "; refused plugin files (one of them may ship it):");
        for (size_t i = 0; i < reg->nrefused && i < FIND_REFUSED_MAX; i++)
            sb_printf(&sb, " [%s]", reg->refused[i].msg);
        if (reg->nrefused > FIND_REFUSED_MAX)
            sb_printf(&sb, " and %zu more (see `lathe plugins`)", reg->nrefused - FIND_REFUSED_MAX);
    }
    if (reg->ndirs == 0) {
        sb_printf(&sb, "; no plugin directories were searched");
    } else {
        sb_printf(&sb, "; searched:");
        for (size_t i = 0; i < reg->ndirs; i++)
            sb_printf(&sb, "%s %s%s", i ? "," : "", reg->dirs[i].path,
                      reg->dirs[i].real ? "" : " (missing)");
    }
    sb_printf(&sb, "; put its lathe-NAME.so in one of these or add its directory with "
                   "--plugin-path or LATHE_PLUGIN_PATH");
    int st = lathe_error(LATHE_EINVAL, "%s",
                         sb.p != NULL ? sb.p : "component not found (out of memory for details)");
    free(sb.p);
    return st;
}

/* ---- the search path ------------------------------------------------------ */

struct dirlist {
    char **v;
    size_t n, cap;
};

static int dirlist_add_split(struct dirlist *l, const char *s)
{
    if (s == NULL)
        return LATHE_OK;
    while (1) {
        const char *end = strchr(s, ':');
        size_t len = end != NULL ? (size_t)(end - s) : strlen(s);
        int dup = len == 0;
        for (size_t i = 0; i < l->n && !dup; i++)
            dup = strlen(l->v[i]) == len && memcmp(l->v[i], s, len) == 0;
        if (!dup) {
            if (grow(&l->v, &l->cap, l->n, sizeof *l->v) != LATHE_OK)
                return LATHE_ENOMEM;
            char *p = malloc(len + 1);
            if (p == NULL)
                return lathe_error(LATHE_ENOMEM, "out of memory building the plugin path");
            memcpy(p, s, len);
            p[len] = '\0';
            l->v[l->n++] = p;
        }
        if (end == NULL)
            return LATHE_OK;
        s = end + 1;
    }
}

int lathe_plugin_dirs(const char *cli_path, const char *ini_path, char ***dirs, size_t *n)
{
    if (dirs == NULL || n == NULL)
        return lathe_error(LATHE_EINVAL, "lathe_plugin_dirs: NULL argument");
    *dirs = NULL;
    *n = 0;
    struct dirlist l = {0};
    int st = dirlist_add_split(&l, cli_path);
    if (st == LATHE_OK)
        st = dirlist_add_split(&l, getenv("LATHE_PLUGIN_PATH"));
    if (st == LATHE_OK)
        st = dirlist_add_split(&l, ini_path);
#ifdef LATHE_PLUGINDIR
    /* The installed directory is one entry even if its name has a colon. */
    if (st == LATHE_OK && LATHE_PLUGINDIR[0] != '\0') {
        int dup = 0;
        for (size_t i = 0; i < l.n && !dup; i++)
            dup = strcmp(l.v[i], LATHE_PLUGINDIR) == 0;
        if (!dup) {
            st = grow(&l.v, &l.cap, l.n, sizeof *l.v);
            if (st == LATHE_OK) {
                l.v[l.n] = str_dup(LATHE_PLUGINDIR);
                if (l.v[l.n] == NULL)
                    st = lathe_error(LATHE_ENOMEM, "out of memory building the plugin path");
                else
                    l.n++;
            }
        }
    }
#endif
    if (st != LATHE_OK) {
        lathe_plugin_dirs_free(l.v, l.n);
        return st;
    }
    *dirs = l.v;
    *n = l.n;
    return LATHE_OK;
}

void lathe_plugin_dirs_free(char **dirs, size_t n)
{
    if (dirs == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        free(dirs[i]);
    free(dirs);
}
