/* tests/check_rewards.c — the reward plugins (lathe-rewards.so: think-answer
 * and length) through the core's [reward.*] instances, and their weighted
 * sum (core/train/rewards.c). The plugin is loaded through the registry from
 * a private directory that holds only a link to it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lathe/lathe.h>

#include "plugin/loader.h"
#include "testutil.h"
#include "train/rewards.h"

static char tmpdir[64];
static struct lathe_registry *reg;

static void write_file(const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    ck_assert_msg(f != NULL, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

/* Runs in each (forked) test. */
static void setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/lathe-rewards.XXXXXX");
    ck_assert(mkdtemp(tmpdir) != NULL);
    const char *dir = getenv("LATHE_PLUGIN_PATH");
    char so[4096], link[256];
    snprintf(so, sizeof so, "%s/lathe-rewards.so", dir && dir[0] ? dir : "plugins/.libs");
    ck_assert_msg(access(so, R_OK) == 0, "%s is not built", so);
    snprintf(link, sizeof link, "%s/plugins", tmpdir);
    mkdir(link, 0700);
    snprintf(link, sizeof link, "%s/plugins/lathe-rewards.so", tmpdir);
    ck_assert(symlink(so, link) == 0);
    snprintf(link, sizeof link, "%s/plugins", tmpdir);
    const char *dirs[] = {link};
    ck_assert_msg(lathe_registry_open(&reg, dirs, 1) == LATHE_OK, "%s", lathe_errmsg());
}

static void teardown(void)
{
    lathe_registry_close(reg);
    reg = NULL;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
}

struct rw {
    lathe_config *cfg;
    struct lathe_reward_inst *r;
    size_t n;
};

/* The rewards of an INI written to tmpdir/run.ini (so that relative
 * reward_template paths resolve there); LATHE_OK or the create status. */
static int rw_make(struct rw *w, const char *ini)
{
    memset(w, 0, sizeof *w);
    write_file("run.ini", ini);
    char path[256];
    snprintf(path, sizeof path, "%s/run.ini", tmpdir);
    w->cfg = lathe_config_load(path);
    ck_assert_msg(w->cfg != NULL, "%s", lathe_errmsg());
    struct lathe_env env = {.size = sizeof env, .output_dir = tmpdir, .batch_size = 1, .grad_accum = 1,
                            .world_size = 1, .config = w->cfg};
    return lathe_rewards_create(w->cfg, reg, &env, &w->r, &w->n);
}

static void rw_free(struct rw *w)
{
    lathe_rewards_destroy(w->r, w->n);
    lathe_config_free(w->cfg);
}

static double rw_score(const struct rw *w, const char *completion, const char *answer)
{
    double total = NAN;
    ck_assert_msg(lathe_rewards_score(w->r, w->n, completion, answer, NULL, NULL, &total) == LATHE_OK, "%s",
                  lathe_errmsg());
    return total;
}

/* One [reward.r] think-answer section with extra keys. */
static double ta(const char *keys, const char *completion, const char *answer)
{
    char ini[1024];
    snprintf(ini, sizeof ini, "[reward.r]\nplugin = think-answer\n%s\n", keys);
    struct rw w;
    ck_assert_msg(rw_make(&w, ini) == LATHE_OK, "%s", lathe_errmsg());
    ck_assert_uint_eq(w.n, 1);
    double v = rw_score(&w, completion, answer);
    rw_free(&w);
    return v;
}

static void expect_fail(const char *ini, const char *n1, const char *n2)
{
    struct rw w;
    int rc = rw_make(&w, ini);
    ck_assert_msg(rc != LATHE_OK, "'%s' was accepted", ini);
    ck_assert_msg(strstr(lathe_errmsg(), n1) != NULL, "message '%s' lacks '%s'", lathe_errmsg(), n1);
    ck_assert_msg(!n2 || strstr(lathe_errmsg(), n2) != NULL, "message '%s' lacks '%s'", lathe_errmsg(), n2);
    ck_assert(w.r == NULL && w.n == 0);
    lathe_config_free(w.cfg);
}

/* A template file in tmpdir and the think-answer score with it. */
static void expect_template_fail(const char *json, const char *field)
{
    write_file("t.json", json);
    expect_fail("[reward.r]\nplugin = think-answer\nreward_template = t.json\n", "t.json", field);
}

/* ---- Core ---------------------------------------------------------- */

#define GOOD "<think>6 times 7</think><answer>42</answer>"

START_TEST(test_rule)
{
    ck_assert_double_eq(ta("", GOOD, "42"), 10.0);                 /* right */
    ck_assert_double_eq(ta("", GOOD, "41"), 1.0);                  /* wrong answer */
    ck_assert_double_eq(ta("", "<answer>42</answer>", "42"), 0.0); /* missing tags */
    ck_assert_double_eq(ta("", "<think>a</think>42", "42"), 0.0);
    ck_assert_double_eq(ta("", "", "42"), 0.0);
    ck_assert_double_eq(ta("", "<think>a</think><think>b</think><answer>42</answer>", "42"), 0.0); /* twice */
    ck_assert_double_eq(ta("", "<think>a</think><answer>4</answer><answer>42</answer>", "42"), 0.0);
    ck_assert_double_eq(ta("", "</think>a<think><answer>42</answer>", "42"), 0.0);  /* order */
    ck_assert_double_eq(ta("", "<answer>x</answer><think>a</think>", "x"), 0.0);
    ck_assert_double_eq(ta("", "<think>a<answer>42</think></answer>", "42"), 0.0);
    ck_assert_double_eq(ta("", GOOD " ok?", "42"), 0.0);             /* trailing text */
    ck_assert_double_eq(ta("", GOOD ".", "42"), 0.0);
    ck_assert_double_eq(ta("", GOOD " \n\t\r\n", "42"), 10.0);        /* trailing white space */
    ck_assert_double_eq(ta("", "  \nlead <think>x</think> mid <answer>42</answer>", "42"), 10.0);
    ck_assert_double_eq(ta("", GOOD, NULL), 1.0);                     /* no reference answer */
    ck_assert_double_eq(ta("", "<answer>42</answer>", NULL), 0.0);
    ck_assert_double_eq(ta("", "<think></think><answer></answer>", ""), 10.0);
    ck_assert_double_eq(ta("", "<THINK>a</THINK><ANSWER>42</ANSWER>", "42"), 0.0); /* tags are exact */
}
END_TEST

START_TEST(test_text_compare)
{
    ck_assert_double_eq(ta("", "<think>t</think><answer> Forty\tTwo\n</answer>", "fortytwo"), 10.0);
    ck_assert_double_eq(ta("", "<think>t</think><answer>x = 3 y</answer>", " X=3Y "), 10.0);
    ck_assert_double_eq(ta("", "<think>t</think><answer>x = 3 y</answer>", "x=3"), 1.0);
    ck_assert_double_eq(ta("", "<think>t</think><answer>1,234</answer>", "1234"), 1.0); /* text is text */
    ck_assert_double_eq(ta("", "<think>t</think><answer>   </answer>", ""), 10.0);
    ck_assert_double_eq(ta("compare = text", "<think>t</think><answer>Ab</answer>", "aB"), 10.0);
}
END_TEST

START_TEST(test_numeric_compare)
{
    const char *num = "compare = numeric";
#define N(ans) "<think>t</think><answer>" ans "</answer>"
    ck_assert_double_eq(ta(num, N("1,234"), "1234"), 10.0);
    ck_assert_double_eq(ta(num, N("1,234,567.5"), "1234567.5"), 10.0);
    ck_assert_double_eq(ta(num, N(" -3.5 "), "-3.50"), 10.0);
    ck_assert_double_eq(ta(num, N("1e3"), "1000"), 10.0);
    ck_assert_double_eq(ta(num, N("2.5E-1"), ".25"), 10.0);
    ck_assert_double_eq(ta(num, N("42."), "42"), 10.0);
    ck_assert_double_eq(ta(num, N("3.5."), "+3.5"), 10.0);
    ck_assert_double_eq(ta(num, N("0"), "-0"), 10.0);
    ck_assert_double_eq(ta(num, N("1 000"), "1000"), 10.0); /* white space ignored, as in text mode */
    ck_assert_double_eq(ta(num, N("1235"), "1234"), 1.0);
    ck_assert_double_eq(ta(num, N("1234.0000001"), "1234"), 10.0);  /* within 1e-6 relative */
    ck_assert_double_eq(ta(num, N("1234.01"), "1234"), 1.0);        /* 8e-6: outside */
    ck_assert_double_eq(ta("compare = numeric\ntolerance = 1e-3", N("1235"), "1234"), 10.0);
    ck_assert_double_eq(ta("compare = numeric\ntolerance = 1e-4", N("1235"), "1234"), 1.0);
    ck_assert_double_eq(ta("compare = numeric\ntolerance = 0", N("0.1"), "0.1"), 10.0);
    /* not numbers: wrong, never an error */
    ck_assert_double_eq(ta(num, N("forty-two"), "42"), 1.0);
    ck_assert_double_eq(ta(num, N("42"), "forty-two"), 1.0);
    ck_assert_double_eq(ta(num, N("1,23"), "123"), 1.0);     /* not a thousands grouping */
    ck_assert_double_eq(ta(num, N("1234,567"), "1234567"), 1.0);
    ck_assert_double_eq(ta(num, N(",123"), "123"), 1.0);
    ck_assert_double_eq(ta(num, N("1e"), "1"), 1.0);
    ck_assert_double_eq(ta(num, N("inf"), "inf"), 1.0);
    ck_assert_double_eq(ta(num, N("nan"), "nan"), 1.0);
    ck_assert_double_eq(ta(num, N("0x10"), "16"), 1.0);
    ck_assert_double_eq(ta(num, N("1e999"), "1e999"), 1.0);
    ck_assert_double_eq(ta(num, N(""), "0"), 1.0);
    ck_assert_double_eq(ta(num, N("."), "0"), 1.0);
    ck_assert_double_eq(ta(num, N("42"), NULL), 1.0);
#undef N
}
END_TEST

START_TEST(test_last_answer_pair)
{
    write_file("t.json", "{\"counts\": {\"<answer>\": 2, \"answer_end\": 2}}");
    const char *k = "reward_template = t.json";
    const char *two = "<think>t</think><answer>3</answer> no, <answer>4</answer>";
    ck_assert_double_eq(ta(k, two, "4"), 10.0);
    ck_assert_double_eq(ta(k, two, "3"), 1.0);
    ck_assert_double_eq(ta(k, GOOD, "42"), 0.0); /* now one pair is too few */
}
END_TEST

START_TEST(test_template)
{
    write_file("t.json", "{\"comment\": [\"custom\"], \"think_start\": \"<reasoning>\", \"think_end\": \"</reasoning>\",\n"
                         " \"answer_start\": \"\\\\boxed{\", \"answer_end\": \"}$\",\n"
                         " \"counts\": {\"think_start\": 2}, \"format_score\": 0.5, \"correct_score\": 2,\n"
                         " \"wrong_format_score\": -1}");
    const char *k = "reward_template = t.json";
    const char *ok = "<reasoning>a<reasoning>b</reasoning> so \\boxed{ 7 }$\n";
    ck_assert_double_eq(ta(k, ok, "7"), 2.0);
    ck_assert_double_eq(ta(k, ok, "8"), 0.5);
    ck_assert_double_eq(ta(k, "<reasoning>b</reasoning> so \\boxed{7}$", "7"), -1.0); /* count 2 */
    ck_assert_double_eq(ta(k, GOOD, "42"), -1.0);
    /* the shipped example holds the defaults */
    char path[4096];
    const char *src = getenv("top_srcdir");
    snprintf(path, sizeof path, "reward_template = %s/examples/reward-template.json", src ? src : ".");
    ck_assert_double_eq(ta(path, GOOD, "42"), 10.0);
    ck_assert_double_eq(ta(path, GOOD, "4"), 1.0);
    ck_assert_double_eq(ta(path, "<answer>42</answer>", "42"), 0.0);
    /* an absolute path is taken as it is */
    snprintf(path, sizeof path, "reward_template = %s/t.json", tmpdir);
    ck_assert_double_eq(ta(path, ok, "7"), 2.0);
}
END_TEST

START_TEST(test_length)
{
    struct rw w;
    ck_assert_msg(rw_make(&w, "[reward.len]\nplugin = length\nmax_length = 10\ncache = 4\npenalty = 2\n") == LATHE_OK,
                  "%s", lathe_errmsg());
    ck_assert_double_eq(rw_score(&w, "", NULL), 0.0);
    ck_assert_double_eq(rw_score(&w, "123456", NULL), 0.0);               /* max - cache */
    ck_assert_double_eq_tol(rw_score(&w, "12345678", NULL), -1.0, 1e-12); /* halfway into the cache */
    ck_assert_double_eq_tol(rw_score(&w, "1234567890", NULL), -2.0, 1e-12);
    ck_assert_double_eq(rw_score(&w, "12345678901", NULL), -2.0);
    ck_assert_double_eq(rw_score(&w, "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", NULL), 0.0); /* 6 chars */
    rw_free(&w);
    ck_assert_msg(rw_make(&w, "[reward.len]\nplugin = length\nmax_length = 4\ncache = 0\nunit = words\n") == LATHE_OK,
                  "%s", lathe_errmsg());
    ck_assert_double_eq(rw_score(&w, "  one two\nthree\tfour ", NULL), 0.0);
    ck_assert_double_eq(rw_score(&w, "one two three four five", NULL), -1.0);
    rw_free(&w);
    ck_assert_msg(rw_make(&w, "[reward.len]\nplugin = length\nmax_length = 8\nunit = bytes\n") == LATHE_OK, "%s",
                  lathe_errmsg());
    ck_assert_double_eq(rw_score(&w, "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", NULL), -1.0); /* 8 bytes, cache 2 */
    ck_assert_double_eq_tol(rw_score(&w, "1234567", NULL), -0.5, 1e-12);
    rw_free(&w);
}
END_TEST

START_TEST(test_weighted_sum)
{
    struct rw w;
    ck_assert_msg(rw_make(&w, "[reward.acc]\nplugin = think-answer\nweight = 2\n"
                              "[reward.len]\nplugin = length\nmax_length = 40\ncache = 10\nweight = 0.5\n") == LATHE_OK,
                  "%s", lathe_errmsg());
    ck_assert_uint_eq(w.n, 2);
    ck_assert_str_eq(w.r[0].name, "acc");
    ck_assert_str_eq(w.r[1].name, "len");
    ck_assert_double_eq(w.r[0].weight, 2.0);
    double v[2], total;
    /* 43 characters: 13 into the 10-character cache: length -1 */
    ck_assert_int_eq(lathe_rewards_score(w.r, w.n, GOOD, "42", "{}", v, &total), LATHE_OK);
    ck_assert_double_eq(v[0], 10.0);
    ck_assert_double_eq(v[1], -1.0);
    ck_assert_double_eq(total, 2 * 10.0 + 0.5 * -1.0);
    const char *mid = "<think>a</think><answer>7</answer>"; /* 34: 4 into the cache */
    ck_assert_int_eq(lathe_rewards_score(w.r, w.n, mid, "8", NULL, v, &total), LATHE_OK);
    ck_assert_double_eq(v[0], 1.0);
    ck_assert_double_eq_tol(v[1], -0.4, 1e-12);
    ck_assert_double_eq_tol(total, 2.0 - 0.2, 1e-12);
    ck_assert_int_eq(lathe_rewards_score(w.r, w.n, mid, "8", NULL, NULL, &total), LATHE_OK);
    ck_assert_double_eq_tol(total, 1.8, 1e-12);
    rw_free(&w);
}
END_TEST

/* ---- Limits -------------------------------------------------------- */

START_TEST(test_template_errors)
{
    expect_template_fail("{\"think_start\": \"<t>\", \"format_scor\": 1}", "'format_scor'");
    expect_template_fail("{\"format_score\": \"1\"}", "'format_score'");
    expect_template_fail("{\"correct_score\": null}", "'correct_score'");
    expect_template_fail("{\"think_end\": 3}", "'think_end'");
    expect_template_fail("{\"answer_start\": \"\"}", "'answer_start'");
    expect_template_fail("{\"answer_start\": \"<t>\", \"think_start\": \"<t>\"}", "same tag");
    expect_template_fail("{\"counts\": [1, 1, 1, 1]}", "'counts'");
    expect_template_fail("{\"counts\": {\"<thinking>\": 1}}", "'<thinking>'");
    expect_template_fail("{\"counts\": {\"<think>\": 0}}", "counts.<think>");
    expect_template_fail("{\"counts\": {\"<think>\": 1.5}}", "counts.<think>");
    expect_template_fail("{\"counts\": {\"<think>\": true}}", "counts.<think>");
    expect_template_fail("{\"comment\": 7}", "'comment'");
    /* counts name the tags of this template, not the defaults */
    expect_template_fail("{\"think_start\": \"<r>\", \"counts\": {\"<think>\": 2}}", "'<think>'");
    expect_template_fail("[1, 2]", "JSON object");
    expect_template_fail("{\"format_score\": 1,}", "t.json:1:");
    expect_template_fail("{\"format_score\": 1, \"format_score\": 2}", "format_score");
    expect_template_fail("", "t.json");
    expect_fail("[reward.r]\nplugin = think-answer\nreward_template = missing.json\n", "missing.json",
                "reward_template");
}
END_TEST

START_TEST(test_key_errors)
{
    expect_fail("[reward.r]\nplugin = think-answer\ncompare = fuzzy\n", "compare", "fuzzy");
    expect_fail("[reward.r]\nplugin = think-answer\ntolerance = -1\n", "tolerance", NULL);
    expect_fail("[reward.r]\nplugin = length\n", "max_length", NULL);
    expect_fail("[reward.r]\nplugin = length\nmax_length = 10\ncache = 11\n", "cache", NULL);
    expect_fail("[reward.r]\nplugin = length\nmax_length = 10\nunit = tokens\n", "unit", NULL);
    expect_fail("[reward.r]\nplugin = think-answr\n", "think-answr", "think-answer");
    expect_fail("[reward]\nplugin = think-answer\n", "[reward.NAME]", NULL);
    /* a key nobody read: the per-section check lathe reward uses */
    struct rw w;
    ck_assert_int_eq(rw_make(&w, "[reward.r]\nplugin = think-answer\ncomapre = numeric\n[model]\nx = 1\n"), LATHE_OK);
    lathe_section *s = lathe_config_section(w.cfg, "reward.r");
    ck_assert_int_ne(lathe_section_check_unused(s), LATHE_OK);
    ck_assert_msg(strstr(lathe_errmsg(), "comapre") && strstr(lathe_errmsg(), "'compare'") &&
                      strstr(lathe_errmsg(), "run.ini:3"),
                  "%s", lathe_errmsg());
    rw_free(&w);
    ck_assert_int_eq(rw_make(&w, "[reward.r]\nplugin = think-answer\n[model]\nx = 1\n"), LATHE_OK);
    ck_assert_int_eq(lathe_section_check_unused(lathe_config_section(w.cfg, "reward.r")), LATHE_OK);
    rw_free(&w);
}
END_TEST

START_TEST(test_odd_input)
{
    struct rw w;
    ck_assert_int_eq(rw_make(&w, "[reward.r]\nplugin = think-answer\n[reward.l]\nplugin = length\nmax_length = 5\n"),
                     LATHE_OK);
    double total;
    ck_assert_int_ne(lathe_rewards_score(w.r, w.n, NULL, "1", NULL, NULL, &total), LATHE_OK);
    ck_assert_msg(strstr(lathe_errmsg(), "[reward.r]") != NULL, "%s", lathe_errmsg());
    /* nested, unbalanced and long inputs are scored, not crashed on */
    ck_assert_double_eq(rw_score(&w, "<think><think></think></answer><answer>", "x"), -1.0);
    size_t big = 1 << 20;
    char *s = malloc(big + 64);
    ck_assert(s != NULL);
    strcpy(s, "<think>");
    memset(s + 7, 'a', big);
    strcpy(s + 7 + big, "</think><answer>x</answer>");
    ck_assert_double_eq(rw_score(&w, s, "X"), 10.0 - 1.0);
    free(s);
    rw_free(&w);
    ck_assert_int_eq(rw_make(&w, "[run]\nseed = 1\n"), LATHE_OK); /* no rewards: none made */
    ck_assert(w.r == NULL && w.n == 0);
    rw_free(&w);
}
END_TEST

static Suite *rewards_suite(void)
{
    Suite *s = suite_create("rewards");
    TCase *core = tcase_create("Core");
    tcase_add_checked_fixture(core, setup, teardown);
    tcase_add_test(core, test_rule);
    tcase_add_test(core, test_text_compare);
    tcase_add_test(core, test_numeric_compare);
    tcase_add_test(core, test_last_answer_pair);
    tcase_add_test(core, test_template);
    tcase_add_test(core, test_length);
    tcase_add_test(core, test_weighted_sum);
    suite_add_tcase(s, core);
    TCase *lim = tcase_create("Limits");
    tcase_add_checked_fixture(lim, setup, teardown);
    tcase_add_test(lim, test_template_errors);
    tcase_add_test(lim, test_key_errors);
    tcase_add_test(lim, test_odd_input);
    suite_add_tcase(s, lim);
    return s;
}

int main(void) { return lathe_test_run(rewards_suite()); }
