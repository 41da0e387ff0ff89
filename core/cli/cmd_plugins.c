/* core/cli/cmd_plugins.c — `lathe plugins`: what the search path holds.
 *
 *   int lathe_cmd_plugins(int argc, char **argv);
 *
 * argv holds the arguments after "plugins": in any order,
 * `--plugin-path DIR[:DIR]` (or `--plugin-path=...`, may repeat) and an
 * optional RUN.ini whose [plugins] path joins the search path as it does for
 * `lathe train` (relative entries are relative to the INI's directory). Prints one line per component (file, kind, name, plugin
 * version, ABI, build signature), then the refused files with their reasons,
 * the shadowed files and the directories searched. Exit status: 0 when no
 * file was refused, 1 when one was (or the scan failed), 2 on bad usage. */
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lathe/lathe.h>

#include "cli/cli.h"
#include "plugin/loader.h"

int lathe_cmd_plugins(int argc, char **argv);

static void plugins_usage(FILE *f)
{
    fprintf(f, "usage: lathe plugins [--plugin-path DIR[:DIR...]] [RUN.ini]\n"
               "Lists the plugin components found on the search path: --plugin-path, then\n"
               "$LATHE_PLUGIN_PATH, then [plugins] path of RUN.ini, then %s.\n",
#ifdef LATHE_PLUGINDIR
            LATHE_PLUGINDIR
#else
            "(no installed plugin directory)"
#endif
    );
}

/* Append `add` to the colon-separated list *list. */
static int path_append(char **list, const char *add)
{
    size_t old = *list ? strlen(*list) : 0;
    char *p = realloc(*list, old + 1 + strlen(add) + 1);
    if (p == NULL)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    if (old > 0)
        p[old++] = ':';
    strcpy(p + old, add);
    *list = p;
    return LATHE_OK;
}

/* The [plugins] path of the INI file, colon-joined (NULL when empty), with
 * relative entries taken from the INI's directory, as `lathe train` does. */
static int ini_plugin_path(const char *ini, char **out)
{
    *out = NULL;
    lathe_config *cfg = lathe_config_load(ini);
    if (cfg == NULL)
        return LATHE_ECONFIG;
    const char *const *items = NULL;
    size_t n = 0;
    int st = LATHE_OK;
    if (lathe_config_has_section(cfg, "plugins"))
        st = lathe_cfg_list(lathe_config_section(cfg, "plugins"), "path", "", &items, &n);
    char inidir[PATH_MAX];
    snprintf(inidir, sizeof inidir, "%s", ini);
    const char *dir = dirname(inidir);
    for (size_t i = 0; i < n && st == LATHE_OK; i++) {
        char entry[2 * PATH_MAX + 2];
        if (items[i][0] == '/')
            snprintf(entry, sizeof entry, "%s", items[i]);
        else
            snprintf(entry, sizeof entry, "%s/%s", dir, items[i]);
        st = path_append(out, entry);
    }
    lathe_config_free(cfg);
    if (st != LATHE_OK) {
        free(*out);
        *out = NULL;
    }
    return st;
}

static int column(size_t w) { return w > 60 ? 60 : (int)w; }

static void print_components(const struct lathe_registry *reg)
{
    size_t wfile = strlen("FILE"), wkind = strlen("KIND"), wname = strlen("NAME");
    size_t wver = strlen("VERSION");
    for (size_t i = 0; i < lathe_registry_count(reg); i++) {
        const char *file;
        const struct lathe_plugin_desc *d = lathe_registry_desc(reg, i, &file);
        if (strlen(file) > wfile)
            wfile = strlen(file);
        if (strlen(d->version) > wver)
            wver = strlen(d->version);
        for (const struct lathe_component *c = d->components; c->kind != LATHE_KIND_NONE; c++) {
            if (strlen(lathe_kind_name(c->kind)) > wkind)
                wkind = strlen(lathe_kind_name(c->kind));
            if (strlen(c->name) > wname)
                wname = strlen(c->name);
        }
    }
    printf("%-*s  %-*s  %-*s  %-*s  %-5s  %s\n", column(wfile), "FILE", column(wkind), "KIND",
           column(wname), "NAME", column(wver), "VERSION", "ABI", "BUILD");
    for (size_t i = 0; i < lathe_registry_count(reg); i++) {
        const char *file;
        const struct lathe_plugin_desc *d = lathe_registry_desc(reg, i, &file);
        for (const struct lathe_component *c = d->components; c->kind != LATHE_KIND_NONE; c++) {
            char abi[16];
            snprintf(abi, sizeof abi, "%u.%u", (unsigned)d->abi_major, (unsigned)d->abi_minor);
            printf("%-*s  %-*s  %-*s  %-*s  %-5s  %s\n", column(wfile), file, column(wkind),
                   lathe_kind_name(c->kind), column(wname), c->name, column(wver), d->version,
                   abi, d->build_sig);
        }
    }
}

static void print_report(const struct lathe_registry *reg)
{
    if (lathe_registry_count(reg) == 0)
        printf("no plugins found\n");
    else
        print_components(reg);

    size_t nref = lathe_registry_refused_count(reg);
    if (nref > 0) {
        printf("\nrefused (%zu):\n", nref);
        for (size_t i = 0; i < nref; i++) {
            /* The message begins with the file's path already. */
            printf("  %s\n", lathe_registry_refused(reg, i, NULL));
        }
    }
    size_t nsh = lathe_registry_shadowed_count(reg);
    if (nsh > 0) {
        printf("\nshadowed (%zu), not loaded:\n", nsh);
        for (size_t i = 0; i < nsh; i++) {
            const char *by;
            const char *file = lathe_registry_shadowed(reg, i, &by);
            printf("  %s (by %s)\n", file, by);
        }
    }
    printf("\nsearched:");
    if (lathe_registry_dir_count(reg) == 0)
        printf(" nothing");
    for (size_t i = 0; i < lathe_registry_dir_count(reg); i++) {
        int exists;
        const char *dir = lathe_registry_dir(reg, i, &exists);
        printf("%s %s%s", i ? "," : "", dir, exists ? "" : " (missing)");
    }
    printf("\n");
}

int lathe_cmd_plugins(int argc, char **argv)
{
    char *cli_path = NULL, *ini_path = NULL, **dirs = NULL;
    size_t ndirs = 0;
    const char *ini = NULL;
    struct lathe_registry *reg = NULL;
    int rc = 2, st;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            plugins_usage(stdout);
            free(cli_path);
            return 0;
        } else if (strcmp(a, "--plugin-path") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "lathe plugins: --plugin-path needs a value (DIR[:DIR...])\n");
                goto out;
            }
            val = argv[++i];
        } else if (strncmp(a, "--plugin-path=", 14) == 0) {
            val = a + 14;
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "lathe plugins: unknown option %s\n", a);
            plugins_usage(stderr);
            goto out;
        } else if (ini == NULL) {
            ini = a;
            continue;
        } else {
            fprintf(stderr, "lathe plugins: unexpected argument %s (one RUN.ini at most)\n", a);
            plugins_usage(stderr);
            goto out;
        }
        if (val[0] != '\0' && path_append(&cli_path, val) != LATHE_OK) {
            fprintf(stderr, "lathe plugins: %s\n", lathe_errmsg());
            rc = 1;
            goto out;
        }
    }

    rc = 1;
    if (ini != NULL && ini_plugin_path(ini, &ini_path) != LATHE_OK) {
        fprintf(stderr, "lathe plugins: %s\n", lathe_errmsg());
        goto out;
    }
    st = lathe_plugin_dirs(cli_path, ini_path, &dirs, &ndirs);
    if (st != LATHE_OK) {
        fprintf(stderr, "lathe plugins: %s\n", lathe_errmsg());
        goto out;
    }
    /* A duplicate stops `lathe train`; here it is one more thing to list. */
    st = lathe_registry_open_flags(&reg, (const char *const *)dirs, ndirs,
                                   LATHE_REGISTRY_REFUSE_DUPLICATES);
    if (st != LATHE_OK) {
        fprintf(stderr, "lathe plugins: %s\n", lathe_errmsg());
        goto out;
    }
    print_report(reg);
    rc = lathe_registry_refused_count(reg) > 0 ? 1 : 0;
    lathe_registry_close(reg);
out:
    lathe_plugin_dirs_free(dirs, ndirs);
    free(ini_path);
    free(cli_path);
    return rc;
}
