/* tests/check_config.c — the INI configuration (lathe/config.h) and the
 * string helpers in core/util/strutil.h. */
#include <lathe/config.h>
#include <lathe/status.h>

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"
#include "util/strutil.h"

/* The last message contains `want`. */
#define ck_msg_has(want)                                                                           \
    ck_assert_msg(strstr(lathe_errmsg(), (want)) != NULL, "message '%s' lacks '%s'", lathe_errmsg(), \
                  (want))

static lathe_config *load(const char *text)
{
    lathe_config *cfg = lathe_config_load_string("run.ini", text);
    ck_assert_msg(cfg != NULL, "load failed: %s", lathe_errmsg());
    return cfg;
}

/* Loading `text` fails with a message containing `want`. */
static void load_fails(const char *text, const char *want)
{
    lathe_error_clear();
    lathe_config *cfg = lathe_config_load_string("run.ini", text);
    ck_assert_msg(cfg == NULL, "'%s' loaded but should fail with '%s'", text, want);
    ck_msg_has(want);
}

/* Write text to a fresh temporary file; returns its malloc'd path. */
static char *temp_ini(const char *text)
{
    char tmpl[] = "/tmp/check_config_XXXXXX";
    int fd = mkstemp(tmpl);
    ck_assert_int_ge(fd, 0);
    size_t n = strlen(text);
    ck_assert_int_eq(write(fd, text, n), (ssize_t)n);
    close(fd);
    return lathe_str_dup(tmpl);
}

/* A [t] section whose key v holds `value`. */
static lathe_config *one_value(const char *value, lathe_section **s)
{
    char text[512];
    snprintf(text, sizeof text, "[t]\nv = %s\n", value);
    lathe_config *cfg = load(text);
    *s = lathe_config_section(cfg, "t");
    ck_assert_ptr_nonnull(*s);
    return cfg;
}

static int64_t int_of(const char *value, int *rc)
{
    lathe_section *s;
    lathe_config *cfg = one_value(value, &s);
    int64_t v = -777;
    *rc = lathe_cfg_int(s, "v", 0, INT64_MIN, INT64_MAX, &v);
    lathe_config_free(cfg);
    return v;
}

static uint64_t bytes_of(const char *value, int *rc)
{
    lathe_section *s;
    lathe_config *cfg = one_value(value, &s);
    uint64_t v = 777;
    *rc = lathe_cfg_bytes(s, "v", "0", &v);
    lathe_config_free(cfg);
    return v;
}

/* ------------------------------------------------------------------ */
/* Core                                                                */

static const char *const RUN_INI =
    "; a run\n"                       /* 1 */
    "[model]\n"                       /* 2 */
    "name = tiny   ; inline comment\n" /* 3 */
    "layers: 4\n"                     /* 4 */
    "\n"                              /* 5 */
    "[train]\n"                       /* 6 */
    "steps = ten\n"                   /* 7 */
    "lr = 3e-4\n"                     /* 8 */
    "fp16 = Yes\n"                    /* 9 */
    "optim = AdamW\n"                 /* 10 */
    "targets = q_proj, k_proj  v_proj,,o_proj\n" /* 11 */
    "budget = 64K\n"                  /* 12 */
    "# done\n";

START_TEST(test_getters_happy)
{
    lathe_config *cfg = load(RUN_INI);
    lathe_section *m = lathe_config_section(cfg, "model");
    lathe_section *t = lathe_config_section(cfg, "train");
    ck_assert_str_eq(lathe_section_name(t), "train");

    const char *name = NULL;
    ck_assert_int_eq(lathe_cfg_string(m, "name", NULL, &name), LATHE_OK);
    ck_assert_str_eq(name, "tiny");
    int64_t layers = 0;
    ck_assert_int_eq(lathe_cfg_int(m, "layers", 2, 1, 64, &layers), LATHE_OK);
    ck_assert_int_eq(layers, 4);
    int64_t heads = 0;
    ck_assert_int_eq(lathe_cfg_int(m, "heads", 8, 1, 64, &heads), LATHE_OK);
    ck_assert_int_eq(heads, 8);

    double lr = 0;
    ck_assert_int_eq(lathe_cfg_float(t, "lr", 1e-3, 0, 1, &lr), LATHE_OK);
    ck_assert_double_eq(lr, 3e-4);
    int fp16 = 0;
    ck_assert_int_eq(lathe_cfg_bool(t, "fp16", 0, &fp16), LATHE_OK);
    ck_assert_int_eq(fp16, 1);
    static const char *const optims[] = { "sgd", "adamw", "lion", NULL };
    int which = -1;
    ck_assert_int_eq(lathe_cfg_choice(t, "optim", "sgd", optims, &which), LATHE_OK);
    ck_assert_int_eq(which, 1);
    const char *const *items = NULL;
    size_t n = 0;
    ck_assert_int_eq(lathe_cfg_list(t, "targets", "", &items, &n), LATHE_OK);
    ck_assert_uint_eq(n, 4);
    ck_assert_str_eq(items[0], "q_proj");
    ck_assert_str_eq(items[1], "k_proj");
    ck_assert_str_eq(items[2], "v_proj");
    ck_assert_str_eq(items[3], "o_proj");
    ck_assert_ptr_null(items[4]);
    uint64_t budget = 0;
    ck_assert_int_eq(lathe_cfg_bytes(t, "budget", "1G", &budget), LATHE_OK);
    ck_assert_uint_eq(budget, 64 * 1024);
    lathe_config_free(cfg);
}
END_TEST

START_TEST(test_int_error_message)
{
    lathe_config *cfg = load(RUN_INI);
    lathe_section *t = lathe_config_section(cfg, "train");
    int64_t steps = 42;
    ck_assert_int_eq(lathe_cfg_int(t, "steps", 100, 1, INT64_MAX, &steps), LATHE_ECONFIG);
    ck_msg_has("run.ini:7: [train] steps: must be an integer >= 1 (got 'ten')");
    ck_assert_int_eq(steps, 42); /* left alone */
    lathe_config_free(cfg);
}
END_TEST

START_TEST(test_int_forms)
{
    int rc;
    ck_assert_int_eq(int_of("123", &rc), 123);
    ck_assert_int_eq(rc, LATHE_OK);
    ck_assert_int_eq(int_of("-17", &rc), -17);
    ck_assert_int_eq(int_of("+5", &rc), 5);
    ck_assert_int_eq(int_of("0x1F", &rc), 31);
    ck_assert_int_eq(rc, LATHE_OK);
    ck_assert_int_eq(int_of("-0x10", &rc), -16);
    ck_assert_int_eq(int_of("1e3", &rc), 1000);
    ck_assert_int_eq(rc, LATHE_OK);
    ck_assert_int_eq(int_of("2.5E3", &rc), 2500);
    ck_assert_int_eq(rc, LATHE_OK);
    ck_assert_int_eq(int_of("9223372036854775807", &rc), INT64_MAX);
    ck_assert_int_eq(rc, LATHE_OK);
    ck_assert_int_eq(int_of("-9223372036854775808", &rc), INT64_MIN);
    ck_assert_int_eq(rc, LATHE_OK);

    static const char *const bad[] = { "ten", "12abc", "1.5", "1e-3", "0x", "0xG", "--1", "1 2",
                                       "9223372036854775808", "0x8000000000000000", "1e300", "inf", "nan",
                                       "1.5e0", "0x1p3" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int64_t v = int_of(bad[i], &rc);
        ck_assert_msg(rc == LATHE_ECONFIG, "'%s' accepted as %" PRId64, bad[i], v);
        ck_assert_int_eq(v, -777);
        ck_msg_has("run.ini:2: [t] v: must be an integer");
        ck_msg_has(bad[i]);
    }
}
END_TEST

START_TEST(test_int_range)
{
    lathe_section *s;
    lathe_config *cfg = one_value("65", &s);
    int64_t v = 0;
    ck_assert_int_eq(lathe_cfg_int(s, "v", 1, 1, 64, &v), LATHE_ECONFIG);
    ck_msg_has("run.ini:2: [t] v: must be an integer between 1 and 64 (got '65')");
    ck_assert_int_eq(lathe_cfg_int(s, "v", 1, INT64_MIN, 10, &v), LATHE_ECONFIG);
    ck_msg_has("must be an integer <= 10 (got '65')");
    ck_assert_int_eq(lathe_cfg_int(s, "v", 1, 1, 65, &v), LATHE_OK);
    ck_assert_int_eq(v, 65);
    /* A default outside the bounds is the component's sentinel. */
    ck_assert_int_eq(lathe_cfg_int(s, "w", -1, 1, 10, &v), LATHE_OK);
    ck_assert_int_eq(v, -1);
    lathe_config_free(cfg);
}
END_TEST

START_TEST(test_float)
{
    lathe_section *s;
    lathe_config *cfg = one_value(".5", &s);
    double v = 0;
    ck_assert_int_eq(lathe_cfg_float(s, "v", 0, 0, 1, &v), LATHE_OK);
    ck_assert_double_eq(v, 0.5);
    ck_assert_int_eq(lathe_cfg_float(s, "v", 0, 0.6, 1, &v), LATHE_ECONFIG);
    ck_msg_has("run.ini:2: [t] v: must be a number between 0.6 and 1 (got '.5')");
    ck_assert_double_eq(v, 0.5);
    ck_assert_int_eq(lathe_cfg_float(s, "d", 0.25, 0, 1, &v), LATHE_OK);
    ck_assert_double_eq(v, 0.25);
    lathe_config_free(cfg);

    static const char *const bad[] = { "0.5x", "nan", "inf", "-Infinity", "1e999", "abc", "1,5" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cfg = one_value(bad[i], &s);
        v = 7;
        ck_assert_msg(lathe_cfg_float(s, "v", 0, -HUGE_VAL, HUGE_VAL, &v) == LATHE_ECONFIG, "'%s' accepted",
                      bad[i]);
        ck_assert_double_eq(v, 7);
        ck_msg_has("run.ini:2: [t] v: must be a");
        ck_msg_has(bad[i]);
        lathe_config_free(cfg);
    }
    cfg = one_value("-2", &s);
    ck_assert_int_eq(lathe_cfg_float(s, "v", 0, 0, HUGE_VAL, &v), LATHE_ECONFIG);
    ck_msg_has("must be a number >= 0 (got '-2')");
    lathe_config_free(cfg);
}
END_TEST

START_TEST(test_bool)
{
    static const char *const yes[] = { "true", "TRUE", "yes", "Yes", "on", "ON", "1" };
    static const char *const no[] = { "false", "False", "no", "NO", "off", "Off", "0" };
    lathe_section *s;
    for (size_t i = 0; i < 7; i++) {
        int v = -1;
        lathe_config *cfg = one_value(yes[i], &s);
        ck_assert_int_eq(lathe_cfg_bool(s, "v", 0, &v), LATHE_OK);
        ck_assert_int_eq(v, 1);
        lathe_config_free(cfg);
        cfg = one_value(no[i], &s);
        ck_assert_int_eq(lathe_cfg_bool(s, "v", 1, &v), LATHE_OK);
        ck_assert_int_eq(v, 0);
        lathe_config_free(cfg);
    }
    lathe_config *cfg = one_value("maybe", &s);
    int v = -1;
    ck_assert_int_eq(lathe_cfg_bool(s, "v", 1, &v), LATHE_ECONFIG);
    ck_msg_has("run.ini:2: [t] v: must be true or false (got 'maybe')");
    ck_assert_int_eq(v, -1);
    ck_assert_int_eq(lathe_cfg_bool(s, "absent", 1, &v), LATHE_OK);
    ck_assert_int_eq(v, 1);
    lathe_config_free(cfg);
}
END_TEST

START_TEST(test_string_required)
{
    lathe_config *cfg = load("[model]\nname = x\n");
    lathe_section *m = lathe_config_section(cfg, "model");
    const char *p = "unchanged";
    ck_assert_int_eq(lathe_cfg_string(m, "pretrained", NULL, &p), LATHE_ECONFIG);
    ck_msg_has("run.ini: [model] pretrained: required key is missing");
    ck_assert_str_eq(p, "unchanged");
    ck_assert_int_eq(lathe_cfg_require(m, "layers"), LATHE_ECONFIG);
    ck_msg_has("run.ini: [model] layers: required key is missing");
    ck_assert_int_eq(lathe_cfg_require(m, "name"), LATHE_OK);

    /* A default is copied: it outlives the caller's buffer. */
    char def[16];
    strcpy(def, "fallback");
    ck_assert_int_eq(lathe_cfg_string(m, "tok", def, &p), LATHE_OK);
    strcpy(def, "XXXXXXXX");
    ck_assert_str_eq(p, "fallback");
    ck_assert_ptr_ne(p, def);
    lathe_config_free(cfg);
}
END_TEST

START_TEST(test_choice)
{
    static const char *const kinds[] = { "cosine", "linear", "constant", NULL };
    lathe_section *s;
    lathe_config *cfg = one_value("cosin", &s);
    int v = -1;
    ck_assert_int_eq(lathe_cfg_choice(s, "v", "linear", kinds, &v), LATHE_ECONFIG);
    ck_msg_has("run.ini:2: [t] v: must be one of cosine, linear, constant (got 'cosin')");
    ck_msg_has("did you mean 'cosine'?");
    ck_assert_int_eq(v, -1);
    ck_assert_int_eq(lathe_cfg_choice(s, "w", "constant", kinds, &v), LATHE_OK);
    ck_assert_int_eq(v, 2);
    ck_assert_int_eq(lathe_cfg_choice(s, "x", NULL, kinds, &v), LATHE_ECONFIG);
    ck_msg_has("run.ini: [t] x: required key is missing");
    ck_assert_int_eq(lathe_cfg_choice(s, "y", "bogus", kinds, &v), LATHE_EINVAL);
    ck_msg_has("default 'bogus'");
    lathe_config_free(cfg);

    cfg = one_value("zzzzzzzzzz", &s);
    ck_assert_int_eq(lathe_cfg_choice(s, "v", "linear", kinds, &v), LATHE_ECONFIG);
    ck_assert_ptr_null(strstr(lathe_errmsg(), "did you mean"));
    lathe_config_free(cfg);
}
END_TEST

START_TEST(test_list)
{
    lathe_config *cfg = load("[t]\n"
                             "a = x\n"
                             "b = , ,\n"
                             "c =\n"
                             "    one, two\n"
                             "    three\n"
                             "d = p\tq , r\n");
    lathe_section *s = lathe_config_section(cfg, "t");
    const char *const *it = NULL;
    size_t n = 99;
    ck_assert_int_eq(lathe_cfg_list(s, "a", NULL, &it, &n), LATHE_OK);
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(it[0], "x");
    ck_assert_int_eq(lathe_cfg_list(s, "b", NULL, &it, &n), LATHE_OK);
    ck_assert_uint_eq(n, 0);
    ck_assert_ptr_null(it[0]);
    ck_assert_int_eq(lathe_cfg_list(s, "c", NULL, &it, &n), LATHE_OK);
    ck_assert_uint_eq(n, 3);
    ck_assert_str_eq(it[0], "one");
    ck_assert_str_eq(it[1], "two");
    ck_assert_str_eq(it[2], "three");
    const char *const *first = it;
    ck_assert_int_eq(lathe_cfg_list(s, "d", NULL, &it, &n), LATHE_OK);
    ck_assert_uint_eq(n, 3);
    ck_assert_str_eq(it[1], "q");
    ck_assert_str_eq(first[2], "three"); /* still valid */
    ck_assert_int_eq(lathe_cfg_list(s, "e", "", &it, &n), LATHE_OK);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(lathe_cfg_list(s, "f", "u,v", &it, &n), LATHE_OK);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(it[1], "v");
    n = 42;
    ck_assert_int_eq(lathe_cfg_list(s, "g", NULL, &it, &n), LATHE_ECONFIG);
    ck_msg_has("run.ini: [t] g: required key is missing");
    ck_assert_uint_eq(n, 42);
    lathe_config_free(cfg);
}
END_TEST

START_TEST(test_bytes)
{
    static const struct {
        const char *text;
        uint64_t want;
    } ok[] = {
        { "512", 512 },
        { "1K", 1024 },
        { "1k", 1024 },
        { "64K", 64ull << 10 },
        { "512M", 512ull << 20 },
        { "2G", 2ull << 30 },
        { "1T", 1ull << 40 },
        { "1KiB", 1024 },
        { "1kb", 1024 },
        { "3MB", 3ull << 20 },
        { "7B", 7 },
        { "1.5K", 1536 },
        { "2 G", 2ull << 30 },
        { "0", 0 },
        { "15E", 15ull << 60 },
        { "18446744073709551615", UINT64_MAX },
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        int rc;
        uint64_t v = bytes_of(ok[i].text, &rc);
        ck_assert_msg(rc == LATHE_OK, "'%s' refused: %s", ok[i].text, lathe_errmsg());
        ck_assert_msg(v == ok[i].want, "'%s' gave %" PRIu64 ", not %" PRIu64, ok[i].text, v, ok[i].want);
    }
    lathe_section *s;
    lathe_config *cfg = one_value("12Q", &s);
    uint64_t v = 5;
    ck_assert_int_eq(lathe_cfg_bytes(s, "v", "1K", &v), LATHE_ECONFIG);
    ck_msg_has("run.ini:2: [t] v: must be a size in bytes");
    ck_msg_has("(got '12Q')");
    ck_assert_uint_eq(v, 5);
    ck_assert_int_eq(lathe_cfg_bytes(s, "w", "2M", &v), LATHE_OK);
    ck_assert_uint_eq(v, 2u << 20);
    ck_assert_int_eq(lathe_cfg_bytes(s, "x", "lots", &v), LATHE_EINVAL);
    ck_assert_int_eq(lathe_cfg_bytes(s, "y", NULL, &v), LATHE_ECONFIG);
    ck_msg_has("required key is missing");
    lathe_config_free(cfg);
}
END_TEST

START_TEST(test_override)
{
    lathe_config *cfg = load("[train]\nsteps = 10\n[reward.format]\nweight = 1\n");
    ck_assert_int_eq(lathe_config_override(cfg, "train.steps=20"), LATHE_OK);
    ck_assert_int_eq(lathe_config_override(cfg, "reward.format.weight = 2"), LATHE_OK);
    ck_assert_int_eq(lathe_config_override(cfg, "train.seed=7"), LATHE_OK);
    ck_assert_int_eq(lathe_config_override(cfg, "eval.every=5"), LATHE_OK);
    ck_assert_int_eq(lathe_config_override(cfg, "train.note=a=b"), LATHE_OK);
    ck_assert(lathe_config_has_section(cfg, "eval"));

    lathe_section *t = lathe_config_section(cfg, "train");
    int64_t v = 0;
    ck_assert_int_eq(lathe_cfg_int(t, "steps", 1, 1, 1000, &v), LATHE_OK);
    ck_assert_int_eq(v, 20);
    ck_assert_int_eq(lathe_cfg_int(t, "seed", 1, 0, 1000, &v), LATHE_OK);
    ck_assert_int_eq(v, 7);
    const char *note;
    ck_assert_int_eq(lathe_cfg_string(t, "note", "", &note), LATHE_OK);
    ck_assert_str_eq(note, "a=b");
    double w = 0;
    lathe_section *rf = lathe_config_section(cfg, "reward.format");
    ck_assert_int_eq(lathe_cfg_float(rf, "weight", 1, 0, 10, &w), LATHE_OK);
    ck_assert_double_eq(w, 2);
    ck_assert_int_eq(lathe_cfg_int(lathe_config_section(cfg, "eval"), "every", 1, 1, 100, &v), LATHE_OK);
    ck_assert_int_eq(v, 5);

    /* Messages about an override name the command line. */
    ck_assert_int_eq(lathe_config_override(cfg, "train.steps=lots"), LATHE_OK);
    ck_assert_int_eq(lathe_cfg_int(t, "steps", 1, 1, 1000, &v), LATHE_ECONFIG);
    ck_msg_has("<command line>: [train] steps: must be an integer between 1 and 1000 (got 'lots')");

    static const char *const bad[] = { "foo", "=x", ".k=v", "a.=v", "k=v", "", "a..b=1" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ck_assert_msg(lathe_config_override(cfg, bad[i]) == LATHE_ECONFIG, "'%s' accepted", bad[i]);
        ck_msg_has("<command line>: cannot apply override");
    }
    lathe_config_free(cfg);

    /* On an empty configuration too. */
    cfg = lathe_config_new();
    ck_assert_ptr_nonnull(cfg);
    ck_assert(!lathe_config_has_section(cfg, "train"));
    ck_assert_int_eq(lathe_config_override(cfg, "train.steps=3"), LATHE_OK);
    ck_assert(lathe_config_has_section(cfg, "train"));
    ck_assert(lathe_section_has(lathe_config_section(cfg, "train"), "steps"));
    ck_assert_int_eq(lathe_cfg_int(lathe_config_section(cfg, "train"), "steps", 1, 1, 10, &v), LATHE_OK);
    ck_assert_int_eq(v, 3);
    ck_assert_int_eq(lathe_config_check_unused(cfg), LATHE_OK);
    lathe_config_free(cfg);
}
END_TEST

START_TEST(test_sections)
{
    lathe_config *cfg = load("[reward.format]\nweight = 1\n"
                             "[rewardish]\n"
                             "[reward]\nkind = sum\n"
                             "[train]\n"
                             "[reward.length]\nmax = 10\n");
    ck_assert(lathe_config_has_section(cfg, "train")); /* empty, but given */
    ck_assert(!lathe_config_has_section(cfg, "model"));
    lathe_section *out[8];
    size_t n = lathe_config_sections(cfg, "reward", out, 8);
    ck_assert_uint_eq(n, 3);
    ck_assert_str_eq(lathe_section_name(out[0]), "reward.format");
    ck_assert_str_eq(lathe_section_name(out[1]), "reward");
    ck_assert_str_eq(lathe_section_name(out[2]), "reward.length");
    ck_assert_uint_eq(lathe_config_sections(cfg, "reward", out, 1), 3);
    ck_assert_uint_eq(lathe_config_sections(cfg, "reward.format", NULL, 0), 1);
    ck_assert_uint_eq(lathe_config_sections(cfg, "nothing", out, 8), 0);

    /* A section the file lacks is made empty; it does not count as given. */
    lathe_section *m = lathe_config_section(cfg, "model");
    ck_assert_ptr_nonnull(m);
    ck_assert(!lathe_config_has_section(cfg, "model"));
    ck_assert(lathe_config_section(cfg, "model") == m);
    ck_assert(!lathe_section_has(m, "name"));
    lathe_config_free(cfg);
}
END_TEST

START_TEST(test_unknown_key)
{
    lathe_config *cfg = load("[peft]\n"
                             "rank = 8\n"
                             "alpha = 16\n"
                             "rnak = 4\n"
                             "dropuot = 0.1\n");
    lathe_section *p = lathe_config_section(cfg, "peft");
    ck_assert(lathe_section_has(p, "rnak"));
    int64_t v;
    double d;
    ck_assert_int_eq(lathe_cfg_int(p, "rank", 8, 1, 1024, &v), LATHE_OK);
    ck_assert_int_eq(lathe_cfg_int(p, "alpha", 8, 1, 1024, &v), LATHE_OK);
    ck_assert_int_eq(lathe_cfg_float(p, "dropout", 0, 0, 1, &d), LATHE_OK);
    ck_assert_int_eq(lathe_config_check_unused(cfg), LATHE_ECONFIG);
    ck_msg_has("run.ini:4: unknown key 'rnak' in [peft]; did you mean 'rank'?");
    lathe_config_free(cfg);

    cfg = load("[peft]\nrank = 8\nbananas = 3\n");
    p = lathe_config_section(cfg, "peft");
    ck_assert_int_eq(lathe_cfg_int(p, "rank", 8, 1, 1024, &v), LATHE_OK);
    ck_assert_int_eq(lathe_cfg_int(p, "alpha", 8, 1, 1024, &v), LATHE_OK);
    ck_assert_int_eq(lathe_config_check_unused(cfg), LATHE_ECONFIG);
    ck_msg_has("run.ini:3: unknown key 'bananas' in [peft]");
    ck_msg_has("rank, alpha");
    ck_assert_ptr_null(strstr(lathe_errmsg(), "did you mean"));
    lathe_config_free(cfg);

    /* Case differences are close too; overrides are named as such. */
    cfg = load("[peft]\nrank = 8\n");
    ck_assert_int_eq(lathe_config_override(cfg, "peft.Alpha=3"), LATHE_OK);
    p = lathe_config_section(cfg, "peft");
    ck_assert_int_eq(lathe_cfg_int(p, "rank", 8, 1, 1024, &v), LATHE_OK);
    ck_assert_int_eq(lathe_cfg_int(p, "alpha", 8, 1, 1024, &v), LATHE_OK);
    ck_assert_int_eq(v, 8);
    ck_assert_int_eq(lathe_config_check_unused(cfg), LATHE_ECONFIG);
    ck_msg_has("<command line>: unknown key 'Alpha' in [peft]; did you mean 'alpha'?");
    lathe_config_free(cfg);
}
END_TEST

START_TEST(test_unknown_section)
{
    lathe_config *cfg = load("[train]\nsteps = 1\n\n[trian]\nsteps = 2\n");
    int64_t v;
    ck_assert_int_eq(lathe_cfg_int(lathe_config_section(cfg, "train"), "steps", 1, 1, 9, &v), LATHE_OK);
    lathe_config_section(cfg, "model");
    ck_assert_int_eq(lathe_config_check_unused(cfg), LATHE_ECONFIG);
    ck_msg_has("run.ini:4: unknown section [trian]; did you mean [train]?");
    lathe_config_free(cfg);

    /* No close one: the sections in use are listed. A section the file
     * lacks but a reader opened counts as known. */
    cfg = load("[zzzzzz]\n");
    lathe_config_section(cfg, "train");
    ck_assert_int_eq(lathe_config_check_unused(cfg), LATHE_ECONFIG);
    ck_msg_has("run.ini:1: unknown section [zzzzzz]");
    ck_msg_has("[train]");
    ck_assert_ptr_null(strstr(lathe_errmsg(), "did you mean"));
    lathe_config_free(cfg);

    cfg = load("[train]\n");
    ck_assert_int_eq(lathe_config_override(cfg, "trainn.steps=1"), LATHE_OK);
    lathe_config_section(cfg, "train");
    ck_assert_int_eq(lathe_config_check_unused(cfg), LATHE_ECONFIG);
    ck_msg_has("<command line>: unknown section [trainn]; did you mean [train]?");
    lathe_config_free(cfg);

    /* Sections handed out by lathe_config_sections count as opened. */
    cfg = load("[reward.format]\nweight = 1\n");
    lathe_section *r[2];
    ck_assert_uint_eq(lathe_config_sections(cfg, "reward", r, 2), 1);
    ck_assert_int_eq(lathe_cfg_float(r[0], "weight", 1, 0, 9, &(double){ 0 }), LATHE_OK);
    ck_assert_int_eq(lathe_config_check_unused(cfg), LATHE_OK);
    lathe_config_free(cfg);
}
END_TEST

START_TEST(test_parse_errors)
{
    load_fails("[train]\nsteps = 1\nlr = 2\nsteps = 3\n", "run.ini:4: [train] steps: key given twice in one "
                                                          "section (first on line 2)");
    load_fails("steps = 1\n[train]\n", "run.ini:1: key 'steps' comes before any [section]");
    load_fails("[train]\nsteps = 1\njunk here\n", "run.ini:3: expected `key = value`");
    load_fails("[train]\nsteps = 1\njunk here\nok = 1\n", "run.ini:3: expected `key = value`");
    load_fails("[train]\n[model\n", "run.ini:2: section header has no closing ']'");
    load_fails("[train]\n[train]\n", "run.ini:2: section [train] is given twice (first on line 1)");
    load_fails("[]\n", "run.ini:1: the section name is empty");
    load_fails("[a..b]\n", "run.ini:1: the section name has an empty part");
    load_fails("[t]\n= 3\n", "run.ini:2: [t]: the key name before '=' is missing");
    load_fails("[t]\na.b = 3\n", "run.ini:2: [t] a.b: key names cannot contain '.'");
    load_fails("[t] junk\n", "run.ini:1: unexpected text after the section header");
    /* An indented key after a key would vanish into the value before it. */
    load_fails("[t]\na = 1\n  b = 2\n", "run.ini:3: [t] a: this indented line would continue");

    /* A file: the path is in the messages. */
    char *path = temp_ini("[train]\n\nsteps = 1\n\n\n\nsteps = 2\n");
    lathe_error_clear();
    ck_assert_ptr_null(lathe_config_load(path));
    char want[256];
    snprintf(want, sizeof want, "%s:7: [train] steps: key given twice", path);
    ck_msg_has(want);
    unlink(path);
    free(path);
}
END_TEST

START_TEST(test_load_file)
{
    char *path = temp_ini("[train]\r\nsteps = 5\r\n  ; comment\r\nname = run one\r\n");
    lathe_config *cfg = lathe_config_load(path);
    ck_assert_msg(cfg != NULL, "%s", lathe_errmsg());
    ck_assert_str_eq(lathe_config_path(cfg), path);
    lathe_section *t = lathe_config_section(cfg, "train");
    int64_t v = 0;
    ck_assert_int_eq(lathe_cfg_int(t, "steps", 1, 1, 10, &v), LATHE_OK);
    ck_assert_int_eq(v, 5);
    const char *name;
    ck_assert_int_eq(lathe_cfg_string(t, "name", NULL, &name), LATHE_OK);
    ck_assert_str_eq(name, "run one");
    ck_assert_int_eq(lathe_cfg_int(t, "name", 1, 1, 10, &v), LATHE_ECONFIG);
    char want[256];
    snprintf(want, sizeof want, "%s:4: [train] name: must be an integer between 1 and 10 (got 'run one')",
             path);
    ck_msg_has(want);
    ck_assert_int_eq(lathe_cfg_error(t, "steps", "must be even, got %d", 5), LATHE_ECONFIG);
    snprintf(want, sizeof want, "%s:2: [train] steps: must be even, got 5", path);
    ck_msg_has(want);
    ck_assert_int_eq(lathe_config_check_unused(cfg), LATHE_OK);
    lathe_config_free(cfg);
    unlink(path);
    free(path);

    lathe_error_clear();
    ck_assert_ptr_null(lathe_config_load("/nonexistent/dir/run.ini"));
    ck_msg_has("/nonexistent/dir/run.ini");
}
END_TEST

/* The dump of cfg as a malloc'd string. */
static char *dump_of(const lathe_config *cfg)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(lathe_config_dump(cfg, f), LATHE_OK);
    fclose(f);
    return buf;
}

START_TEST(test_dump)
{
    lathe_config *cfg = load("[train]\nsteps = 100\nlr = 0.1\n[model]\nname = tiny\n[extra]\nx = 1\n");
    ck_assert_int_eq(lathe_config_override(cfg, "train.seed=9"), LATHE_OK);
    lathe_section *t = lathe_config_section(cfg, "train");
    lathe_section *m = lathe_config_section(cfg, "model");
    lathe_section *o = lathe_config_section(cfg, "optim");
    int64_t v;
    double d;
    const char *str;
    ck_assert_int_eq(lathe_cfg_float(t, "lr", 1, 0, 1, &d), LATHE_OK);
    ck_assert_int_eq(lathe_cfg_int(t, "steps", 1, 1, 1000, &v), LATHE_OK);
    ck_assert_int_eq(lathe_cfg_int(t, "warmup", 10, 0, 1000, &v), LATHE_OK);
    ck_assert_int_eq(lathe_cfg_int(t, "steps", 1, 1, 1000, &v), LATHE_OK); /* read again: same place */
    ck_assert_int_eq(lathe_cfg_float(o, "beta2", 0.999, 0, 1, &d), LATHE_OK);
    ck_assert_int_eq(lathe_cfg_float(o, "eps", 3e-8, 0, 1, &d), LATHE_OK);
    ck_assert_int_eq(lathe_cfg_bool(o, "fused", 0, &(int){ 0 }), LATHE_OK);
    ck_assert_int_eq(lathe_cfg_bytes(o, "bucket", "25M", &(uint64_t){ 0 }), LATHE_OK);
    ck_assert_int_eq(lathe_cfg_string(m, "name", NULL, &str), LATHE_OK);
    ck_assert_int_eq(lathe_cfg_string(m, "pretrained", NULL, &str), LATHE_ECONFIG);

    char *text = dump_of(cfg);
    ck_assert_msg(strstr(text, "[train]\nlr = 0.1\nsteps = 100\nwarmup = 10 ; default\n"
                               "seed = 9 ; unknown key\n"),
                  "dump:\n%s", text);
    ck_assert_msg(strstr(text, "[model]\nname = tiny\n\n"), "dump:\n%s", text);
    ck_assert_msg(strstr(text, "[extra] ; unknown section\nx = 1 ; unknown key\n"), "dump:\n%s", text);
    ck_assert_msg(strstr(text, "[optim]\nbeta2 = 0.999 ; default\neps = 3e-08 ; default\n"
                               "fused = false ; default\nbucket = 25M ; default\n"),
                  "dump:\n%s", text);
    ck_assert_ptr_null(strstr(text, "pretrained"));

    /* The dump is INI text that reads back to the same values. */
    lathe_config *back = load(text);
    lathe_section *bo = lathe_config_section(back, "optim");
    ck_assert_int_eq(lathe_cfg_float(bo, "eps", 1, 0, 1, &d), LATHE_OK);
    ck_assert_double_eq(d, 3e-8);
    ck_assert_int_eq(lathe_cfg_int(lathe_config_section(back, "train"), "warmup", 0, 0, 1000, &v), LATHE_OK);
    ck_assert_int_eq(v, 10);
    lathe_config_free(back);
    free(text);
    lathe_config_free(cfg);
}
END_TEST

START_TEST(test_continuation)
{
    lathe_config *cfg = load("[t]\n"
                             "msg = hello\n"
                             "   big  world ; comment\n"
                             "\n"
                             "   again\n"
                             "n = 3\n");
    lathe_section *s = lathe_config_section(cfg, "t");
    const char *msg;
    ck_assert_int_eq(lathe_cfg_string(s, "msg", NULL, &msg), LATHE_OK);
    ck_assert_str_eq(msg, "hello big  world again");
    int64_t v;
    ck_assert_int_eq(lathe_cfg_int(s, "n", 0, 0, 9, &v), LATHE_OK);
    ck_assert_int_eq(v, 3);
    lathe_config_free(cfg);

    /* The first key of a section may be indented. */
    cfg = load("[t]\n  n = 4\n");
    ck_assert_int_eq(lathe_cfg_int(lathe_config_section(cfg, "t"), "n", 0, 0, 9, &v), LATHE_OK);
    ck_assert_int_eq(v, 4);
    lathe_config_free(cfg);
}
END_TEST

START_TEST(test_strutil)
{
    ck_assert_uint_eq(lathe_str_edit_distance("kitten", "sitting"), 3);
    ck_assert_uint_eq(lathe_str_edit_distance("rnak", "rank"), 1);
    ck_assert_uint_eq(lathe_str_edit_distance("trian", "train"), 1);
    ck_assert_uint_eq(lathe_str_edit_distance("Rank", "rANK"), 0);
    ck_assert_uint_eq(lathe_str_edit_distance("", "abc"), 3);
    ck_assert_uint_eq(lathe_str_edit_distance("abc", ""), 3);
    ck_assert_uint_eq(lathe_str_edit_distance("ca", "abc"), 3); /* OSA, not unrestricted Damerau */
    ck_assert_uint_eq(lathe_str_edit_distance("dropout", "dropuot"), 1);

    char buf[32] = "  \t padded \n ";
    ck_assert_str_eq(lathe_str_trim(buf), "padded");
    char empty[] = "   ";
    ck_assert_str_eq(lathe_str_trim(empty), "");

    char *d = lathe_str_dup("abc");
    ck_assert_str_eq(d, "abc");
    free(d);
    ck_assert_ptr_null(lathe_str_dup(NULL));
    d = lathe_str_printf("%s-%d", "x", 42);
    ck_assert_str_eq(d, "x-42");
    free(d);

    char p[16];
    ck_assert_int_eq(lathe_path_join(p, sizeof p, "a", "b"), LATHE_OK);
    ck_assert_str_eq(p, "a/b");
    ck_assert_int_eq(lathe_path_join(p, sizeof p, "a/", "b"), LATHE_OK);
    ck_assert_str_eq(p, "a/b");
    ck_assert_int_eq(lathe_path_join(p, sizeof p, "a", "/abs"), LATHE_OK);
    ck_assert_str_eq(p, "/abs");
    ck_assert_int_eq(lathe_path_join(p, sizeof p, "", "b"), LATHE_OK);
    ck_assert_str_eq(p, "b");
    ck_assert_int_eq(lathe_path_join(p, sizeof p, "a", ""), LATHE_OK);
    ck_assert_str_eq(p, "a");
    ck_assert_int_eq(lathe_path_join(p, sizeof p, "0123456789", "abcdef"), LATHE_EINVAL);
    ck_assert_str_eq(p, "");

    char tmpl[] = "/tmp/check_config_dir_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(tmpl));
    char deep[256];
    snprintf(deep, sizeof deep, "%s/a/b//c/", tmpl);
    ck_assert_int_eq(lathe_mkdir_p(deep), LATHE_OK);
    ck_assert_int_eq(lathe_mkdir_p(deep), LATHE_OK); /* already there */
    struct stat st;
    snprintf(deep, sizeof deep, "%s/a/b/c", tmpl);
    ck_assert_int_eq(stat(deep, &st), 0);
    ck_assert(S_ISDIR(st.st_mode));
    char file[256];
    snprintf(file, sizeof file, "%s/a/f", tmpl);
    FILE *f = fopen(file, "w");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    snprintf(deep, sizeof deep, "%s/a/f/g", tmpl);
    ck_assert_int_eq(lathe_mkdir_p(deep), LATHE_EIO);
    ck_msg_has(deep);
    unlink(file);
    snprintf(deep, sizeof deep, "%s/a/b/c", tmpl);
    rmdir(deep);
    snprintf(deep, sizeof deep, "%s/a/b", tmpl);
    rmdir(deep);
    snprintf(deep, sizeof deep, "%s/a", tmpl);
    rmdir(deep);
    rmdir(tmpl);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Limits                                                              */

START_TEST(test_bytes_limits)
{
    static const char *const bad[] = { "12Q", "16E", "18446744073709551616", "99999999999999999999999K",
                                       "-1K", "+1K", "K", "", "1iB", "0.1K", "1.5", "1KK", "1 K B", "1e3",
                                       "1.0000000000000000001K" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc;
        uint64_t v = bytes_of(bad[i], &rc);
        ck_assert_msg(rc == LATHE_ECONFIG, "'%s' accepted as %" PRIu64, bad[i], v);
        ck_assert_uint_eq(v, 777);
        ck_msg_has("run.ini:2: [t] v:");
    }
    int rc;
    bytes_of("16E", &rc);
    ck_msg_has("too large");
    bytes_of("0.1K", &rc);
    ck_msg_has("not a whole number of bytes");
    ck_assert_uint_eq(bytes_of("0.5K", &rc), 512);
    ck_assert_int_eq(rc, LATHE_OK);
    ck_assert_uint_eq(bytes_of("16383.999999999999999P", &rc), 777); /* more than 18 decimals */
    ck_assert_uint_eq(bytes_of("15.5E", &rc), 15ull * (1ull << 60) + (1ull << 59));
    ck_assert_int_eq(rc, LATHE_OK);
}
END_TEST

START_TEST(test_int_limits)
{
    int rc;
    ck_assert_int_eq(int_of("9007199254740992e0", &rc), 9007199254740992LL);
    ck_assert_int_eq(rc, LATHE_OK);
    ck_assert_int_eq(int_of("1e16", &rc), -777); /* beyond 2^53: not exact in a double */
    ck_assert_int_eq(rc, LATHE_ECONFIG);
    ck_assert_int_eq(int_of("0x7fffffffffffffff", &rc), INT64_MAX);
    ck_assert_int_eq(rc, LATHE_OK);
    ck_assert_int_eq(int_of("-0x8000000000000000", &rc), INT64_MIN);
    ck_assert_int_eq(rc, LATHE_OK);
    ck_assert_int_eq(int_of("-9223372036854775809", &rc), -777);
    ck_assert_int_eq(rc, LATHE_ECONFIG);
    ck_assert_int_eq(int_of("007", &rc), 7); /* decimal, not octal */
}
END_TEST

START_TEST(test_line_limits)
{
    /* Longer than inih's line buffer: refused with the line named, where
     * inih alone would cut it into several lines. */
    char text[1024];
    int n = snprintf(text, sizeof text, "[t]\nok = 1\nv = ");
    memset(text + n, 'x', 600);
    strcpy(text + n + 600, "\n");
    load_fails(text, "run.ini:3: the line is 604 characters long");
    /* inih's default buffer (200) holds 198 characters, newline and NUL. */
    n = snprintf(text, sizeof text, "[t]\nv = ");
    memset(text + n, 'y', 194);
    strcpy(text + n + 194, "\n");
    lathe_config *cfg = load(text);
    const char *str;
    ck_assert_int_eq(lathe_cfg_string(lathe_config_section(cfg, "t"), "v", NULL, &str), LATHE_OK);
    ck_assert_uint_eq(strlen(str), 194);
    lathe_config_free(cfg);
    strcpy(text + n + 194, "y\n");
    load_fails(text, "run.ini:2: the line is 199 characters long, more than the INI parser's limit of 198");

    char nul[] = "[t]\nv = 1\0junk\n";
    char *path = temp_ini("");
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    fwrite(nul, 1, sizeof nul - 1, f);
    fclose(f);
    lathe_error_clear();
    ck_assert_ptr_null(lathe_config_load(path));
    ck_msg_has(":2: the line contains a NUL byte");
    unlink(path);
    free(path);

    /* A directory is not a config. */
    lathe_error_clear();
    ck_assert_ptr_null(lathe_config_load("/tmp"));
    ck_msg_has("/tmp");

    /* Empty text, a BOM, no final newline. */
    cfg = load("");
    ck_assert_int_eq(lathe_config_check_unused(cfg), LATHE_OK);
    lathe_config_free(cfg);
    cfg = load("\xEF\xBB\xBF[t]\nv = 5");
    int64_t v;
    ck_assert_int_eq(lathe_cfg_int(lathe_config_section(cfg, "t"), "v", 0, 0, 9, &v), LATHE_OK);
    ck_assert_int_eq(v, 5);
    lathe_config_free(cfg);
    load_fails("[t]\nv = 5\nw", "run.ini:3: expected `key = value`");

    /* Section names: 49 characters fit inih's buffer, 50 do not. */
    char sec[128];
    snprintf(sec, sizeof sec, "[%.*s]\nv = 1\n", 49, "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijXYZ");
    cfg = load(sec);
    ck_assert(lathe_config_has_section(cfg, "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghi"));
    lathe_config_free(cfg);
    snprintf(sec, sizeof sec, "[%.*s]\nv = 1\n", 50, "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijXYZ");
    load_fails(sec, "run.ini:1: the section name is longer than 49 characters");
}
END_TEST

START_TEST(test_lifetimes)
{
    lathe_config *cfg = load("[t]\nname = first\n");
    lathe_section *t = lathe_config_section(cfg, "t");
    const char *a, *b;
    ck_assert_int_eq(lathe_cfg_string(t, "name", NULL, &a), LATHE_OK);
    /* Many more sections: earlier section pointers and strings survive. */
    for (int i = 0; i < 200; i++) {
        char name[32];
        snprintf(name, sizeof name, "s%d", i);
        ck_assert_ptr_nonnull(lathe_config_section(cfg, name));
        ck_assert_int_eq(lathe_cfg_int(lathe_config_section(cfg, name), "k", i, 0, 1000, &(int64_t){ 0 }),
                         LATHE_OK);
    }
    ck_assert_int_eq(lathe_config_override(cfg, "t.name=second"), LATHE_OK);
    ck_assert_int_eq(lathe_cfg_string(t, "name", NULL, &b), LATHE_OK);
    ck_assert_str_eq(a, "first");
    ck_assert_str_eq(b, "second");
    ck_assert(lathe_config_section(cfg, "t") == t);
    ck_assert_int_eq(lathe_config_check_unused(cfg), LATHE_OK);
    lathe_config_free(cfg);
    lathe_config_free(NULL);

    /* Bad arguments are errors, not crashes. */
    ck_assert_int_eq(lathe_cfg_int(NULL, "k", 0, 0, 1, &(int64_t){ 0 }), LATHE_EINVAL);
    ck_assert_ptr_null(lathe_config_section(NULL, "t"));
    ck_assert_int_eq(lathe_config_override(NULL, "a.b=c"), LATHE_EINVAL);
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *core = tcase_create("Core");
    tcase_add_test(core, test_getters_happy);
    tcase_add_test(core, test_int_error_message);
    tcase_add_test(core, test_int_forms);
    tcase_add_test(core, test_int_range);
    tcase_add_test(core, test_float);
    tcase_add_test(core, test_bool);
    tcase_add_test(core, test_string_required);
    tcase_add_test(core, test_choice);
    tcase_add_test(core, test_list);
    tcase_add_test(core, test_bytes);
    tcase_add_test(core, test_override);
    tcase_add_test(core, test_sections);
    tcase_add_test(core, test_unknown_key);
    tcase_add_test(core, test_unknown_section);
    tcase_add_test(core, test_parse_errors);
    tcase_add_test(core, test_load_file);
    tcase_add_test(core, test_dump);
    tcase_add_test(core, test_continuation);
    tcase_add_test(core, test_strutil);
    suite_add_tcase(s, core);
    TCase *limits = tcase_create("Limits");
    tcase_add_test(limits, test_bytes_limits);
    tcase_add_test(limits, test_int_limits);
    tcase_add_test(limits, test_line_limits);
    tcase_add_test(limits, test_lifetimes);
    suite_add_tcase(s, limits);
    return s;
}

int main(void)
{
    return lathe_test_run(config_suite());
}
