/* tests/check_loader.c — the plugin loader: search path, descriptor checks,
 * refusals (one deliberately broken plugin each, in tests/plugins/) and the
 * registry (shadowing, duplicates, lookups and their messages).
 *
 * The broken plugins are found in $LATHE_TEST_PLUGINS (set by `make check`),
 * else tests/.libs under the current directory (the build directory). */
#include <dlfcn.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lathe/lathe.h>

#include "plugin/loader.h"
#include "testutil.h"

/* ---- helpers ------------------------------------------------------------ */

/* Absolute path of tests/.libs/lathe-NAME.so, into a static buffer per call
 * site's choice of `buf`. */
static const char *plugin_path(char *buf, size_t n, const char *name)
{
    const char *dir = getenv("LATHE_TEST_PLUGINS");
    if (dir == NULL || dir[0] == '\0')
        dir = "tests/.libs";
    char real[PATH_MAX];
    if (realpath(dir, real) == NULL)
        ck_abort_msg("test plugin directory %s does not exist; build the test plugins (make check) "
                     "or set LATHE_TEST_PLUGINS",
                     dir);
    snprintf(buf, n, "%s/lathe-%s.so", real, name);
    ck_assert_msg(access(buf, R_OK) == 0, "%s is missing; build it with make check", buf);
    return buf;
}

#define PLUGIN(name) plugin_path((char[PATH_MAX + 64]){0}, PATH_MAX + 64, (name))

/* A fresh directory holding links to the named test plugins (NULL ends the
 * list), so that each test sees exactly the files it needs. */
static char *dir_with(const char *first, ...)
{
    char tmpl[] = "/tmp/lathe-check-loader-XXXXXX";
    ck_assert_msg(mkdtemp(tmpl) != NULL, "mkdtemp failed");
    va_list ap;
    va_start(ap, first);
    for (const char *name = first; name != NULL; name = va_arg(ap, const char *)) {
        char link[PATH_MAX];
        snprintf(link, sizeof link, "%s/lathe-%s.so", tmpl, name);
        ck_assert_msg(symlink(PLUGIN(name), link) == 0, "symlink %s failed", link);
    }
    va_end(ap);
    return strdup(tmpl);
}

static void dir_remove(char *dir)
{
    char cmd[PATH_MAX + 16];
    /* Only directories this suite made under /tmp, holding links. */
    ck_assert(strncmp(dir, "/tmp/lathe-check-loader-", 24) == 0);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
    free(dir);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

#define ASSERT_MSG_HAS(needle)                                                                     \
    ck_assert_msg(strstr(lathe_errmsg(), (needle)) != NULL, "message lacks \"%s\": %s", (needle),  \
                  lathe_errmsg())

/* Validate a broken plugin: refused with `status`, nothing left loaded, and
 * a message that names the file. */
static void expect_refused(const char *name, int status, const char *path)
{
    void *h = (void *)1;
    const struct lathe_plugin_desc *d = (const void *)1;
    int st = lathe_plugin_validate_file(path, &h, &d);
    ck_assert_msg(st == status, "%s: status %d, want %d (%s)", name, st, status, lathe_errmsg());
    ck_assert_ptr_null(h);
    ck_assert_ptr_null(d);
    ASSERT_MSG_HAS(path);
    /* The refused file was dlclosed: nothing else holds it, so it is gone. */
    ck_assert_msg(dlopen(path, RTLD_LAZY | RTLD_NOLOAD) == NULL, "%s still loaded after refusal",
                  path);
}

/* ---- Core --------------------------------------------------------------- */

START_TEST(test_kind_names)
{
    ck_assert_str_eq(lathe_kind_name(LATHE_KIND_LOSS), "loss");
    ck_assert_str_eq(lathe_kind_name(LATHE_KIND_OPTIMIZER), "optimizer");
    ck_assert_str_eq(lathe_kind_name(LATHE_KIND_NONE), "?");
    ck_assert_str_eq(lathe_kind_name(LATHE_KIND_COUNT), "?");
    ck_assert_str_eq(lathe_kind_name(-1), "?");
    for (int k = LATHE_KIND_NONE + 1; k < LATHE_KIND_COUNT; k++) {
        ck_assert_int_eq(lathe_kind_parse(lathe_kind_name(k)), k);
        ck_assert_uint_gt(lathe_kind_ops_min_size(k), sizeof(uint32_t));
        for (int j = LATHE_KIND_NONE + 1; j < k; j++)
            ck_assert_str_ne(lathe_kind_name(j), lathe_kind_name(k));
    }
    ck_assert_int_eq(lathe_kind_parse("lossy"), LATHE_KIND_NONE);
    ck_assert_uint_eq(lathe_kind_ops_min_size(LATHE_KIND_LOSS), sizeof(struct lathe_loss_ops));
    ck_assert_uint_eq(lathe_kind_ops_min_size(LATHE_KIND_SCHEDULER), sizeof(struct lathe_sched_ops));
    /* kinds that grew in ABI 1.1 still take plugins built at 1.0 */
    ck_assert_uint_eq(lathe_kind_ops_min_size(LATHE_KIND_MODEL), offsetof(struct lathe_model_ops, cache_new));
    ck_assert_uint_eq(lathe_kind_ops_min_size(LATHE_KIND_BACKEND),
                      offsetof(struct lathe_backend_ops, attention_cached_forward));
    ck_assert_uint_eq(lathe_kind_ops_min_size(LATHE_KIND_STRATEGY), offsetof(struct lathe_strategy_ops, optim_params));
    ck_assert_uint_eq(lathe_kind_ops_min_size(LATHE_KIND_PEFT), offsetof(struct lathe_peft_ops, set_enabled));
    ck_assert_uint_eq(lathe_kind_ops_min_size(LATHE_KIND_NONE), 0);
    ck_assert_uint_eq(lathe_kind_ops_min_size(LATHE_KIND_COUNT), 0);
}
END_TEST

START_TEST(test_validate_good)
{
    const char *path = PLUGIN("good");
    void *h = NULL;
    const struct lathe_plugin_desc *d = NULL;
    int st = lathe_plugin_validate_file(path, &h, &d);
    ck_assert_msg(st == LATHE_OK, "%s", lathe_errmsg());
    ck_assert_ptr_nonnull(h);
    ck_assert_ptr_nonnull(d);
    ck_assert_str_eq(d->name, "good");
    ck_assert_str_eq(d->version, "1.2.3");
    ck_assert_str_eq(d->build_sig, LATHE_BUILD_SIGNATURE);
    ck_assert_int_eq(d->components[0].kind, LATHE_KIND_LOSS);
    ck_assert_str_eq(d->components[0].name, "test-mean");
    ck_assert_int_eq(d->components[1].kind, LATHE_KIND_NONE);

    /* The component works through its ops, with lathe_mean resolved from
     * this process's liblathe. */
    const struct lathe_loss_ops *ops = d->components[0].ops;
    ck_assert_uint_eq(ops->size, sizeof *ops);
    void *self = NULL;
    ck_assert_int_eq(ops->create(NULL, NULL, &self), LATHE_OK);
    ck_assert_ptr_nonnull(self);
    lathe_scope_push();
    lathe_tensor *x = lathe_tensor_new2(LATHE_F32, 2, 3);
    ck_assert_msg(x != NULL, "%s", lathe_errmsg());
    float *xv = lathe_tensor_f32(x);
    float sum = 0.0f;
    for (int i = 0; i < 6; i++) {
        xv[i] = 0.5f * (float)i - 1.0f;
        sum += xv[i];
    }
    lathe_tensor *loss = ops->forward(self, x, NULL);
    ck_assert_msg(loss != NULL, "%s", lathe_errmsg());
    ck_assert_int_eq(lathe_tensor_numel(loss), 1);
    ck_assert_float_eq_tol(lathe_tensor_f32(loss)[0], sum / 6.0f, 1e-6f);
    lathe_scope_pop();
    ops->destroy(self);
    ck_assert_int_eq(dlclose(h), 0);
}
END_TEST

START_TEST(test_registry_find)
{
    char *dir = dir_with("good", NULL);
    struct lathe_registry *reg = NULL;
    const char *dirs[] = {dir};
    ck_assert_msg(lathe_registry_open(&reg, dirs, 1) == LATHE_OK, "%s", lathe_errmsg());
    ck_assert_uint_eq(lathe_registry_count(reg), 1);
    ck_assert_uint_eq(lathe_registry_refused_count(reg), 0);
    ck_assert_uint_eq(lathe_registry_shadowed_count(reg), 0);
    const char *file = NULL;
    const struct lathe_plugin_desc *d = lathe_registry_desc(reg, 0, &file);
    ck_assert_ptr_nonnull(d);
    ck_assert_str_eq(d->name, "good");
    ck_assert(ends_with(file, "/lathe-good.so"));
    ck_assert_ptr_null(lathe_registry_desc(reg, 1, NULL));

    const void *ops = NULL;
    file = NULL;
    ck_assert_int_eq(lathe_registry_find(reg, LATHE_KIND_LOSS, "test-mean", &ops, &file), LATHE_OK);
    ck_assert_ptr_eq(ops, d->components[0].ops);
    ck_assert(strncmp(file, dir, strlen(dir)) == 0);
    /* Names are per kind: the same name of another kind is not there. */
    ck_assert_int_eq(lathe_registry_find(reg, LATHE_KIND_OPTIMIZER, "test-mean", &ops, NULL),
                     LATHE_EINVAL);
    ck_assert_ptr_null(ops);
    lathe_registry_close(reg);
    dir_remove(dir);
}
END_TEST

START_TEST(test_find_message)
{
    char *dir = dir_with("good", NULL);
    const char *dirs[] = {dir, "/nonexistent/lathe-plugins"};
    struct lathe_registry *reg = NULL;
    ck_assert_msg(lathe_registry_open(&reg, dirs, 2) == LATHE_OK, "%s", lathe_errmsg());
    ck_assert_uint_eq(lathe_registry_dir_count(reg), 2);
    int exists = -1;
    ck_assert_str_eq(lathe_registry_dir(reg, 1, &exists), "/nonexistent/lathe-plugins");
    ck_assert_int_eq(exists, 0);

    const void *ops = (const void *)1;
    ck_assert_int_eq(lathe_registry_find(reg, LATHE_KIND_LOSS, "test-maen", &ops, NULL),
                     LATHE_EINVAL);
    ck_assert_ptr_null(ops);
    ASSERT_MSG_HAS("no loss component named \"test-maen\"");
    ASSERT_MSG_HAS("did you mean \"test-mean\"?");
    ASSERT_MSG_HAS("available loss components: test-mean");
    ASSERT_MSG_HAS(dir);
    ASSERT_MSG_HAS("/nonexistent/lathe-plugins (missing)");

    /* Far from every name: no suggestion, but still the list. */
    ck_assert_int_eq(lathe_registry_find(reg, LATHE_KIND_LOSS, "kl-divergence", &ops, NULL),
                     LATHE_EINVAL);
    ck_assert_ptr_null(strstr(lathe_errmsg(), "did you mean"));
    ASSERT_MSG_HAS("test-mean");

    ck_assert_int_eq(lathe_registry_find(reg, LATHE_KIND_OPTIMIZER, "adamw", &ops, NULL),
                     LATHE_EINVAL);
    ASSERT_MSG_HAS("no optimizer components are loaded");
    lathe_registry_close(reg);
    dir_remove(dir);
}
END_TEST

START_TEST(test_shadowing)
{
    char *first = dir_with("good", NULL), *second = dir_with("good", NULL);
    const char *dirs[] = {first, second, first};
    struct lathe_registry *reg = NULL;
    ck_assert_msg(lathe_registry_open(&reg, dirs, 3) == LATHE_OK, "%s", lathe_errmsg());
    ck_assert_uint_eq(lathe_registry_count(reg), 1);
    /* The repeated first directory is scanned once, so it shadows nothing. */
    ck_assert_uint_eq(lathe_registry_dir_count(reg), 2);
    ck_assert_uint_eq(lathe_registry_shadowed_count(reg), 1);
    const char *by = NULL;
    const char *shadowed = lathe_registry_shadowed(reg, 0, &by);
    ck_assert(strncmp(shadowed, second, strlen(second)) == 0);
    ck_assert(strncmp(by, first, strlen(first)) == 0);
    const void *ops = NULL;
    const char *file = NULL;
    ck_assert_int_eq(lathe_registry_find(reg, LATHE_KIND_LOSS, "test-mean", &ops, &file), LATHE_OK);
    ck_assert(strncmp(file, first, strlen(first)) == 0);
    lathe_registry_close(reg);
    dir_remove(first);
    dir_remove(second);
}
END_TEST

START_TEST(test_refused_does_not_stop_scan)
{
    char *dir = dir_with("abi-major", "good", "no-symbol", NULL);
    const char *dirs[] = {dir};
    struct lathe_registry *reg = NULL;
    ck_assert_msg(lathe_registry_open(&reg, dirs, 1) == LATHE_OK, "%s", lathe_errmsg());
    ck_assert_uint_eq(lathe_registry_count(reg), 1);
    ck_assert_uint_eq(lathe_registry_refused_count(reg), 2);
    /* Files load in name order. */
    const char *file = NULL;
    const char *msg = lathe_registry_refused(reg, 0, &file);
    ck_assert(ends_with(file, "/lathe-abi-major.so"));
    ck_assert_ptr_nonnull(strstr(msg, "rebuild it against this SDK"));
    msg = lathe_registry_refused(reg, 1, &file);
    ck_assert(ends_with(file, "/lathe-no-symbol.so"));
    ck_assert_ptr_nonnull(strstr(msg, "no lathe_plugin_describe symbol"));
    ck_assert_ptr_null(lathe_registry_refused(reg, 2, NULL));

    /* A missing component points at the refused files. */
    const void *ops = NULL;
    ck_assert_int_eq(lathe_registry_find(reg, LATHE_KIND_LOSS, "test-abi-major", &ops, NULL),
                     LATHE_EINVAL);
    ASSERT_MSG_HAS("refused plugin files");
    ASSERT_MSG_HAS("lathe-abi-major.so: built for ABI");
    lathe_registry_close(reg);
    dir_remove(dir);
}
END_TEST

START_TEST(test_plugin_dirs)
{
    char **dirs = NULL;
    size_t n = 0;
    setenv("LATHE_PLUGIN_PATH", "/e1::/e2:/a", 1);
    ck_assert_int_eq(lathe_plugin_dirs("/a:/b:", "/i1:/e1", &dirs, &n), LATHE_OK);
    const char *want[] = {"/a", "/b", "/e1", "/e2", "/i1"};
    size_t nwant = sizeof want / sizeof want[0];
    ck_assert_uint_eq(n, nwant + 1);
    for (size_t i = 0; i < nwant; i++)
        ck_assert_str_eq(dirs[i], want[i]);
    ck_assert_str_eq(dirs[nwant], LATHE_PLUGINDIR);
    lathe_plugin_dirs_free(dirs, n);

    unsetenv("LATHE_PLUGIN_PATH");
    ck_assert_int_eq(lathe_plugin_dirs(NULL, NULL, &dirs, &n), LATHE_OK);
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(dirs[0], LATHE_PLUGINDIR);
    lathe_plugin_dirs_free(dirs, n);
}
END_TEST

/* ---- Limits: one broken plugin each -------------------------------------- */

START_TEST(test_refuse_no_symbol)
{
    const char *path = PLUGIN("no-symbol");
    expect_refused("no-symbol", LATHE_EABI, path);
    char want[PATH_MAX + 128];
    snprintf(want, sizeof want, "%s: no lathe_plugin_describe symbol; is it a lathe plugin?", path);
    ASSERT_MSG_HAS(want);
}
END_TEST

START_TEST(test_refuse_abi_major)
{
    const char *path = PLUGIN("abi-major");
    expect_refused("abi-major", LATHE_EABI, path);
    char want[64];
    snprintf(want, sizeof want, "ABI %d.0", LATHE_ABI_MAJOR + 1);
    ASSERT_MSG_HAS(want);
    snprintf(want, sizeof want, "this lathe is %d.%d", LATHE_ABI_MAJOR, LATHE_ABI_MINOR);
    ASSERT_MSG_HAS(want);
    ASSERT_MSG_HAS("rebuild it against this SDK");
}
END_TEST

START_TEST(test_refuse_abi_minor)
{
    const char *path = PLUGIN("abi-minor");
    expect_refused("abi-minor", LATHE_EABI, path);
    char want[64];
    snprintf(want, sizeof want, "ABI %d.%d", LATHE_ABI_MAJOR, LATHE_ABI_MINOR + 1);
    ASSERT_MSG_HAS(want);
    snprintf(want, sizeof want, "this lathe is %d.%d", LATHE_ABI_MAJOR, LATHE_ABI_MINOR);
    ASSERT_MSG_HAS(want);
    ASSERT_MSG_HAS("rebuild it against this SDK");
}
END_TEST

START_TEST(test_refuse_size_zero)
{
    const char *path = PLUGIN("size-zero");
    expect_refused("size-zero", LATHE_EABI, path);
    char want[96];
    snprintf(want, sizeof want, "descriptor size 0 is smaller than this lathe's struct "
                                "lathe_plugin_desc (%zu bytes)",
             sizeof(struct lathe_plugin_desc));
    ASSERT_MSG_HAS(want);
    ASSERT_MSG_HAS("LATHE_PLUGIN_DEFINE");
}
END_TEST

START_TEST(test_refuse_bad_sig)
{
    const char *path = PLUGIN("bad-sig");
    expect_refused("bad-sig", LATHE_EABI, path);
    ASSERT_MSG_HAS("\"ptr4;cuda\"");
    ASSERT_MSG_HAS("\"" LATHE_BUILD_SIGNATURE "\"");
    ASSERT_MSG_HAS("rebuild it against this SDK");
}
END_TEST

START_TEST(test_refuse_ops_small)
{
    const char *path = PLUGIN("ops-small");
    expect_refused("ops-small", LATHE_EABI, path);
    /* ops_small.c's struct holds the first two slots of the loss ops. */
    char want[160];
    snprintf(want, sizeof want,
             "loss component \"test-ops-small\": ops size %zu is smaller than this lathe's "
             "struct lathe_loss_ops (%zu bytes)",
             offsetof(struct lathe_loss_ops, destroy), lathe_kind_ops_min_size(LATHE_KIND_LOSS));
    ASSERT_MSG_HAS(want);
}
END_TEST

START_TEST(test_refuse_missing_file)
{
    void *h = NULL;
    const struct lathe_plugin_desc *d = NULL;
    ck_assert_int_eq(lathe_plugin_validate_file("/nonexistent/lathe-x.so", &h, &d), LATHE_EIO);
    ck_assert_ptr_null(h);
    ASSERT_MSG_HAS("/nonexistent/lathe-x.so: cannot load");
    ck_assert_int_eq(lathe_plugin_validate_file(NULL, &h, &d), LATHE_EINVAL);
}
END_TEST

START_TEST(test_duplicate_component)
{
    char *dir = dir_with("dup", "good", NULL);
    const char *dirs[] = {dir};
    struct lathe_registry *reg = (void *)1;
    ck_assert_int_eq(lathe_registry_open(&reg, dirs, 1), LATHE_EINVAL);
    ck_assert_ptr_null(reg);
    ASSERT_MSG_HAS("loss component \"test-mean\"");
    char want[PATH_MAX];
    snprintf(want, sizeof want, "%s/lathe-dup.so", dir);
    ASSERT_MSG_HAS(want);
    snprintf(want, sizeof want, "%s/lathe-good.so", dir);
    ASSERT_MSG_HAS(want);
    dir_remove(dir);

    /* For `lathe plugins`: the later file (in name order) is refused instead,
     * and the earlier one stays loaded. */
    dir = dir_with("dup", "good", NULL);
    const char *again[] = {dir};
    ck_assert_int_eq(lathe_registry_open_flags(&reg, again, 1, LATHE_REGISTRY_REFUSE_DUPLICATES),
                     LATHE_OK);
    ck_assert_uint_eq(lathe_registry_count(reg), 1);
    ck_assert_uint_eq(lathe_registry_refused_count(reg), 1);
    const char *file = NULL;
    const char *msg = lathe_registry_refused(reg, 0, &file);
    ck_assert(ends_with(file, "/lathe-good.so"));
    ck_assert_ptr_nonnull(strstr(msg, "lathe-dup.so"));
    ck_assert_ptr_nonnull(strstr(msg, "lathe-good.so"));
    const void *ops = NULL;
    ck_assert_int_eq(lathe_registry_find(reg, LATHE_KIND_LOSS, "test-mean", &ops, &file), LATHE_OK);
    ck_assert(ends_with(file, "/lathe-dup.so"));
    lathe_registry_close(reg);
    dir_remove(dir);

    /* Across directories too, with different file names. */
    char *a = dir_with("good", NULL), *b = dir_with("dup", NULL);
    const char *two[] = {a, b};
    ck_assert_int_eq(lathe_registry_open(&reg, two, 2), LATHE_EINVAL);
    ASSERT_MSG_HAS(a);
    ASSERT_MSG_HAS(b);
    dir_remove(a);
    dir_remove(b);
}
END_TEST

START_TEST(test_dir_not_directory)
{
    const char *file = PLUGIN("good");
    const char *dirs[] = {file};
    struct lathe_registry *reg = NULL;
    ck_assert_int_eq(lathe_registry_open(&reg, dirs, 1), LATHE_EINVAL);
    ck_assert_ptr_null(reg);
    ASSERT_MSG_HAS(file);
    ASSERT_MSG_HAS("is not a directory");

    /* A missing directory is not an error: the installed one often is. */
    const char *missing[] = {"/nonexistent/lathe-plugins"};
    ck_assert_int_eq(lathe_registry_open(&reg, missing, 1), LATHE_OK);
    ck_assert_uint_eq(lathe_registry_count(reg), 0);
    lathe_registry_close(reg);
    ck_assert_int_eq(lathe_registry_open(&reg, NULL, 0), LATHE_OK);
    ck_assert_uint_eq(lathe_registry_count(reg), 0);
    const void *ops;
    ck_assert_int_eq(lathe_registry_find(reg, LATHE_KIND_LOSS, "x", &ops, NULL), LATHE_EINVAL);
    ck_assert_int_eq(lathe_registry_find(reg, 99, "x", &ops, NULL), LATHE_EINVAL);
    lathe_registry_close(reg);
}
END_TEST

/* ---- Limits: descriptors built in memory ---------------------------------- */

static const struct lathe_loss_ops mem_ops = {.size = sizeof mem_ops};

static struct lathe_plugin_desc mem_desc(const struct lathe_component *comps)
{
    return (struct lathe_plugin_desc){
        .abi_major = LATHE_ABI_MAJOR,
        .abi_minor = LATHE_ABI_MINOR,
        .size = sizeof(struct lathe_plugin_desc),
        .name = "mem",
        .version = "0",
        .build_sig = LATHE_BUILD_SIGNATURE,
        .components = comps,
    };
}

static void expect_desc_refused(const struct lathe_plugin_desc *d, const char *needle)
{
    ck_assert_int_eq(lathe_plugin_desc_check("mem.so", d), LATHE_EABI);
    ASSERT_MSG_HAS("mem.so: ");
    ASSERT_MSG_HAS(needle);
}

START_TEST(test_desc_components)
{
    const struct lathe_component ok[] = {{LATHE_KIND_LOSS, "a", &mem_ops}, {0}};
    struct lathe_plugin_desc d = mem_desc(ok);
    ck_assert_msg(lathe_plugin_desc_check("mem.so", &d) == LATHE_OK, "%s", lathe_errmsg());

    const struct lathe_component unknown[] = {{LATHE_KIND_COUNT, "a", &mem_ops}, {0}};
    d = mem_desc(unknown);
    char want[64];
    snprintf(want, sizeof want, "unknown kind %d", LATHE_KIND_COUNT);
    expect_desc_refused(&d, want);
    const struct lathe_component negative[] = {{-3, "a", &mem_ops}, {0}};
    d = mem_desc(negative);
    expect_desc_refused(&d, "unknown kind -3");

    const struct lathe_component noname[] = {{LATHE_KIND_LOSS, NULL, &mem_ops}, {0}};
    d = mem_desc(noname);
    expect_desc_refused(&d, "component 0 (a loss) has no name");
    const struct lathe_component emptyname[] = {{LATHE_KIND_LOSS, "", &mem_ops}, {0}};
    d = mem_desc(emptyname);
    expect_desc_refused(&d, "has no name");

    const struct lathe_component noops[] = {{LATHE_KIND_LOSS, "a", &mem_ops},
                                            {LATHE_KIND_DATA, "b", NULL}, {0}};
    d = mem_desc(noops);
    expect_desc_refused(&d, "data component \"b\" has no ops");

    const struct lathe_component twice[] = {{LATHE_KIND_LOSS, "a", &mem_ops},
                                            {LATHE_KIND_LOSS, "a", &mem_ops}, {0}};
    d = mem_desc(twice);
    expect_desc_refused(&d, "lists loss component \"a\" twice");

    /* Only the size is read from an ops struct: a lone uint32_t will do
     * (a sanitizer build catches a read past it). */
    uint32_t *tiny = malloc(sizeof *tiny);
    *tiny = 0;
    const struct lathe_component zero[] = {{LATHE_KIND_LOSS, "a", tiny}, {0}};
    d = mem_desc(zero);
    expect_desc_refused(&d, "ops size is 0");
    *tiny = 4;
    expect_desc_refused(&d, "ops size 4 is smaller");
    free(tiny);

    d = mem_desc(NULL);
    expect_desc_refused(&d, "lists no components");
    const struct lathe_component none[] = {{0}};
    d = mem_desc(none);
    expect_desc_refused(&d, "lists no components");
}
END_TEST

START_TEST(test_desc_no_terminator)
{
    /* More components than any plugin ships and no {0}: the check stops. */
    enum { N = 300 };
    struct lathe_component *comps = calloc(N, sizeof *comps);
    char(*names)[8] = calloc(N, sizeof *names);
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "c%d", i);
        comps[i] = (struct lathe_component){LATHE_KIND_LOSS, names[i], &mem_ops};
    }
    struct lathe_plugin_desc d = mem_desc(comps);
    expect_desc_refused(&d, "no {0} at the end of .components");
    free(comps);
    free(names);
}
END_TEST

START_TEST(test_desc_header)
{
    ck_assert_int_eq(lathe_plugin_desc_check("mem.so", NULL), LATHE_EABI);
    ASSERT_MSG_HAS("returned NULL");

    /* A descriptor that is only its 8-byte header: nothing past size may be
     * read (a sanitizer build catches a read past the allocation). */
    struct {
        uint16_t major, minor;
        uint32_t size;
    } head = {LATHE_ABI_MAJOR, LATHE_ABI_MINOR, 8};
    void *hdr = malloc(sizeof head);
    memcpy(hdr, &head, sizeof head);
    expect_desc_refused(hdr, "descriptor size 8 is smaller");
    free(hdr);

    struct lathe_plugin_desc d = mem_desc(NULL);
    d.build_sig = NULL;
    expect_desc_refused(&d, "no build signature");
    d = mem_desc(NULL);
    d.name = NULL;
    expect_desc_refused(&d, "descriptor has no name");
    d = mem_desc(NULL);
    d.version = NULL;
    expect_desc_refused(&d, "plugin \"mem\" has no version");
    /* A newer size from the same minor is harmless: the host reads its own. */
    const struct lathe_component ok[] = {{LATHE_KIND_LOSS, "a", &mem_ops}, {0}};
    d = mem_desc(ok);
    d.size += 16;
    ck_assert_int_eq(lathe_plugin_desc_check("mem.so", &d), LATHE_OK);
}
END_TEST

static Suite *loader_suite(void)
{
    Suite *s = suite_create("loader");
    TCase *core = tcase_create("Core");
    tcase_add_test(core, test_kind_names);
    tcase_add_test(core, test_validate_good);
    tcase_add_test(core, test_registry_find);
    tcase_add_test(core, test_find_message);
    tcase_add_test(core, test_shadowing);
    tcase_add_test(core, test_refused_does_not_stop_scan);
    tcase_add_test(core, test_plugin_dirs);
    suite_add_tcase(s, core);
    TCase *limits = tcase_create("Limits");
    tcase_add_test(limits, test_refuse_no_symbol);
    tcase_add_test(limits, test_refuse_abi_major);
    tcase_add_test(limits, test_refuse_abi_minor);
    tcase_add_test(limits, test_refuse_size_zero);
    tcase_add_test(limits, test_refuse_bad_sig);
    tcase_add_test(limits, test_refuse_ops_small);
    tcase_add_test(limits, test_refuse_missing_file);
    tcase_add_test(limits, test_duplicate_component);
    tcase_add_test(limits, test_dir_not_directory);
    tcase_add_test(limits, test_desc_components);
    tcase_add_test(limits, test_desc_no_terminator);
    tcase_add_test(limits, test_desc_header);
    suite_add_tcase(s, limits);
    return s;
}

int main(void) { return lathe_test_run(loader_suite()); }
