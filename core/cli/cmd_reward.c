/* core/cli/cmd_reward.c — `lathe reward --config RUN.ini --input FILE.jsonl`:
 * score completions offline with the run's [reward.*] functions, so that a
 * reward can be debugged without a training run.
 *
 * Only the [reward.*] sections (and [plugins] path, [run] seed) of RUN.ini
 * are read; the other sections are left alone, but an unknown key inside a
 * reward section is still an error. Each input line is a JSON object
 * {"completion": "...", "answer": "..." (optional), ...}; the whole line is
 * what a plugin gets as fields_json. Each output line is that object with
 * "reward" (the weighted sum) and "rewards" {NAME: value} added. */
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lathe/lathe.h>

#include "cli.h"
#include "plugin/loader.h"
#include "train/rewards.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: lathe reward --config RUN.ini --input COMPLETIONS.jsonl [--output OUT.jsonl]\n"
               "                    [--plugin-path DIRS] [reward.NAME.key=value ...]\n"
               "  Scores each line {\"completion\": ..., \"answer\": ...} with the [reward.*] sections of\n"
               "  RUN.ini and writes it back with \"reward\" (the weighted sum) and \"rewards\" added\n"
               "  (stdout unless --output). --input - reads stdin. A summary goes to stderr.\n");
}

/* [plugins] path, its entries relative to the INI file's directory (as a
 * run resolves them), joined with ':'. */
static int ini_plugin_path(lathe_config *cfg, char **out)
{
    *out = NULL;
    const char *const *items;
    size_t n;
    int rc = lathe_cfg_list(lathe_config_section(cfg, "plugins"), "path", "", &items, &n);
    if (rc != LATHE_OK || n == 0)
        return rc;
    char inidir[PATH_MAX];
    snprintf(inidir, sizeof inidir, "%s", lathe_config_path(cfg));
    const char *dir = dirname(inidir);
    size_t cap = 1;
    for (size_t i = 0; i < n; i++)
        cap += strlen(dir) + strlen(items[i]) + 2;
    char *p = calloc(1, cap);
    if (!p)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if (i)
            strcat(p, ":");
        if (items[i][0] != '/') {
            strcat(p, dir);
            strcat(p, "/");
        }
        strcat(p, items[i]);
    }
    *out = p;
    return LATHE_OK;
}

/* After the rewards exist: every key of every [reward.*] section was read.
 * On a failed create, a typo in a reward section is the likelier cause. */
static int check_reward_sections(lathe_config *cfg, int typos_only)
{
    lathe_section *secs[64];
    size_t n = lathe_config_sections(cfg, "reward", secs, 64);
    for (size_t i = 0; i < n && i < 64; i++) {
        int rc = typos_only ? lathe_section_check_typos(secs[i]) : lathe_section_check_unused(secs[i]);
        if (rc != LATHE_OK)
            return rc;
    }
    return LATHE_OK;
}

/* Running mean and variance (Welford 1962). */
struct stat_acc {
    double mean, m2;
    long n, bad; /* bad: non-finite values, left out */
};

static void stat_add(struct stat_acc *s, double v)
{
    if (!isfinite(v)) {
        s->bad++;
        return;
    }
    s->n++;
    double d = v - s->mean;
    s->mean += d / (double)s->n;
    s->m2 += d * (v - s->mean);
}

/* Bessel-corrected, as TRL's reward std; 0 for fewer than two values. */
static double stat_std(const struct stat_acc *s) { return s->n > 1 ? sqrt(s->m2 / (double)(s->n - 1)) : 0.0; }

/* The shortest text that reads back as v (JSON has no inf or nan: null). */
static void fmt_num(char *buf, size_t n, double v)
{
    if (!isfinite(v)) {
        snprintf(buf, n, "null");
        return;
    }
    if (v == trunc(v) && fabs(v) < 1e15) {
        snprintf(buf, n, "%.0f", v); /* 10, not 1e+01 */
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
}

/* A growing string. */
struct sbuf {
    char *s;
    size_t len, cap;
    int oom;
};

static void sb_put(struct sbuf *b, const char *t, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->len + n + 1) * 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, t, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void sb_str(struct sbuf *b, const char *t) { sb_put(b, t, strlen(t)); }

/* The reference answer of a record: a string, a number (as its text), null
 * or absent (NULL). buf holds a number's text. */
static int record_answer(json_t *a, const char *file, long line, char *buf, size_t n, const char **out)
{
    *out = NULL;
    if (!a || json_is_null(a))
        return LATHE_OK;
    if (json_is_string(a)) {
        *out = json_string_value(a);
        return LATHE_OK;
    }
    if (json_is_integer(a)) {
        snprintf(buf, n, "%" JSON_INTEGER_FORMAT, json_integer_value(a));
    } else if (json_is_real(a)) {
        /* the shortest text that reads back as the same double */
        double d = json_real_value(a);
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(buf, n, "%.*g", prec, d);
            if (strtod(buf, NULL) == d)
                break;
        }
    } else {
        return lathe_error(LATHE_EINVAL, "%s:%ld: \"answer\" must be a string, a number or null", file, line);
    }
    *out = buf;
    return LATHE_OK;
}

struct scorer {
    const struct lathe_reward_inst *r;
    size_t n;
    double *values;
    struct stat_acc *stats; /* [n + 1]: each reward, then the sum */
    const char *in_name;
};

/* Score one line into an output line (malloc'd JSON text). */
static int score_line(struct scorer *sc, char *text, long line, char **out)
{
    *out = NULL;
    json_error_t e;
    json_t *rec = json_loads(text, JSON_REJECT_DUPLICATES, &e);
    if (!rec)
        return lathe_error(LATHE_EINVAL, "%s:%ld: not JSON (column %d): %s", sc->in_name, line, e.column, e.text);
    int rc = LATHE_OK;
    char numbuf[64];
    const char *answer = NULL;
    json_t *c = json_object_get(rec, "completion");
    if (!json_is_object(rec))
        rc = lathe_error(LATHE_EINVAL, "%s:%ld: expected an object {\"completion\": \"...\", \"answer\": \"...\"}",
                         sc->in_name, line);
    else if (!json_is_string(c))
        rc = lathe_error(LATHE_EINVAL, "%s:%ld: %s", sc->in_name, line,
                         c ? "\"completion\" must be a string" : "no \"completion\" field");
    else if (strlen(json_string_value(c)) != json_string_length(c))
        rc = lathe_error(LATHE_EINVAL, "%s:%ld: \"completion\" holds a NUL character (\\u0000)", sc->in_name, line);
    if (rc == LATHE_OK)
        rc = record_answer(json_object_get(rec, "answer"), sc->in_name, line, numbuf, sizeof numbuf, &answer);
    double total = 0.0;
    if (rc == LATHE_OK &&
        (rc = lathe_rewards_score(sc->r, sc->n, json_string_value(c), answer, text, sc->values, &total)) != LATHE_OK)
        rc = lathe_error_prefix(rc, "%s:%ld", sc->in_name, line);
    if (rc == LATHE_OK) {
        /* The line as given (numbers and key order untouched) with the
         * rewards spliced in before its closing brace; re-dumped only when
         * it already has "reward" or "rewards" (say, an earlier output). */
        char *base = NULL;
        if (json_object_get(rec, "reward") || json_object_get(rec, "rewards")) {
            json_object_del(rec, "reward");
            json_object_del(rec, "rewards");
            base = json_dumps(rec, 0);
        } else {
            base = strdup(text);
        }
        struct sbuf b = {0};
        char num[64];
        if (base) {
            size_t len = strlen(base);
            while (len > 0 && base[len - 1] != '}')
                len--; /* trailing white space; a valid object ends with '}' */
            if (len > 0)
                len--;
            size_t inner = len;
            while (inner > 0 && isspace((unsigned char)base[inner - 1]))
                inner--;
            sb_put(&b, base, len);
            sb_str(&b, base[inner - 1] == '{' ? "\"reward\": " : ", \"reward\": ");
            fmt_num(num, sizeof num, total);
            sb_str(&b, num);
            sb_str(&b, ", \"rewards\": {");
            for (size_t i = 0; i < sc->n; i++) {
                json_t *name = json_string(sc->r[i].name);
                char *q = name ? json_dumps(name, JSON_ENCODE_ANY) : NULL;
                if (!q)
                    b.oom = 1;
                else {
                    sb_str(&b, i ? ", " : "");
                    sb_str(&b, q);
                    sb_str(&b, ": ");
                    fmt_num(num, sizeof num, sc->values[i]);
                    sb_str(&b, num);
                }
                free(q);
                json_decref(name);
                stat_add(&sc->stats[i], sc->values[i]);
            }
            sb_str(&b, "}}");
        }
        stat_add(&sc->stats[sc->n], total);
        free(base);
        if (!base || b.oom) {
            free(b.s);
            rc = lathe_error(LATHE_ENOMEM, "%s:%ld: out of memory", sc->in_name, line);
        } else {
            *out = b.s;
        }
    }
    json_decref(rec);
    return rc;
}

/* Every line of `in`; blank lines are skipped (and kept out of the counts). */
static int score_file(struct scorer *sc, FILE *in, FILE *out, long *nlines)
{
    char *buf = NULL;
    size_t cap = 0;
    ssize_t len;
    long line = 0;
    int rc = LATHE_OK;
    *nlines = 0;
    while (rc == LATHE_OK && (len = getline(&buf, &cap, in)) >= 0) {
        line++;
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
            buf[--len] = '\0';
        if (strspn(buf, " \t") == (size_t)len)
            continue;
        if (strlen(buf) != (size_t)len) {
            rc = lathe_error(LATHE_EINVAL, "%s:%ld: a NUL byte in the line", sc->in_name, line);
            break;
        }
        char *o;
        if ((rc = score_line(sc, buf, line, &o)) != LATHE_OK)
            break;
        if (fputs(o, out) == EOF || fputc('\n', out) == EOF)
            rc = lathe_error(LATHE_EIO, "writing the output: %s", strerror(errno));
        free(o);
        ++*nlines;
    }
    if (rc == LATHE_OK && ferror(in))
        rc = lathe_error(LATHE_EIO, "%s: read error: %s", sc->in_name, strerror(errno));
    free(buf);
    return rc;
}

static void print_summary(const struct scorer *sc, long nlines)
{
    fprintf(stderr, "lathe reward: %ld line%s scored\n", nlines, nlines == 1 ? "" : "s");
    fprintf(stderr, "  %-20s %8s %12s %12s\n", "reward", "weight", "mean", "std");
    for (size_t i = 0; i <= sc->n; i++) {
        const struct stat_acc *s = &sc->stats[i];
        char w[32];
        if (i < sc->n)
            snprintf(w, sizeof w, "%g", sc->r[i].weight);
        else
            snprintf(w, sizeof w, "-");
        fprintf(stderr, "  %-20s %8s %12.6g %12.6g", i < sc->n ? sc->r[i].name : "(weighted sum)", w, s->mean,
                stat_std(s));
        if (s->bad)
            fprintf(stderr, "  (%ld non-finite values left out)", s->bad);
        fputc('\n', stderr);
    }
}

/* --name VALUE or --name=VALUE; 1 when argv[*i] is that option. */
static int opt_value(const char *name, int argc, char **argv, int *i, const char **v, int *bad)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0)
        return 0;
    if (argv[*i][n] == '=') {
        *v = argv[*i] + n + 1;
        return 1;
    }
    if (argv[*i][n] != '\0')
        return 0;
    if (*i + 1 >= argc) {
        fprintf(stderr, "lathe reward: %s needs a value\n", name);
        *bad = 1;
        return 1;
    }
    *v = argv[++*i];
    return 1;
}

int lathe_cmd_reward(int argc, char **argv)
{
    const char *ini = NULL, *input = NULL, *output = NULL, *plugin_path = NULL;
    char **overrides = calloc((size_t)argc + 1, sizeof *overrides);
    size_t nov = 0;
    if (!overrides) {
        fprintf(stderr, "lathe reward: out of memory\n");
        return 2;
    }
    for (int i = 0; i < argc; i++) {
        int bad = 0;
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            free(overrides);
            return 0;
        }
        if (opt_value("--config", argc, argv, &i, &ini, &bad) || opt_value("--input", argc, argv, &i, &input, &bad) ||
            opt_value("--output", argc, argv, &i, &output, &bad) ||
            opt_value("--plugin-path", argc, argv, &i, &plugin_path, &bad)) {
            if (!bad)
                continue;
        } else if (a[0] != '-' && strchr(a, '=')) {
            overrides[nov++] = argv[i];
            continue;
        } else {
            fprintf(stderr, "lathe reward: %s '%s'\n", a[0] == '-' ? "unknown option" : "unexpected argument", a);
        }
        usage(stderr);
        free(overrides);
        return 2;
    }
    if (!ini || !input) {
        fprintf(stderr, "lathe reward: %s\n", !ini ? "no --config RUN.ini given" : "no --input FILE given");
        usage(stderr);
        free(overrides);
        return 2;
    }

    lathe_config *cfg = lathe_config_load(ini);
    struct lathe_registry *reg = NULL;
    struct lathe_reward_inst *rw = NULL;
    size_t nrw = 0;
    char **dirs = NULL, *ini_path = NULL, *tmp = NULL;
    size_t ndirs = 0;
    FILE *in = NULL, *out = NULL;
    struct scorer sc = {.in_name = strcmp(input, "-") ? input : "<stdin>"};
    long nlines = 0;
    int rc = cfg ? LATHE_OK : LATHE_ECONFIG;
    for (size_t i = 0; i < nov && rc == LATHE_OK; i++)
        rc = lathe_config_override(cfg, overrides[i]);
    int64_t seed = 0;
    if (rc == LATHE_OK)
        rc = lathe_cfg_int(lathe_config_section(cfg, "run"), "seed", 0, 0, INT64_MAX, &seed);
    if (rc == LATHE_OK)
        rc = ini_plugin_path(cfg, &ini_path);
    if (rc == LATHE_OK)
        rc = lathe_plugin_dirs(plugin_path, ini_path, &dirs, &ndirs);
    if (rc == LATHE_OK)
        rc = lathe_registry_open(&reg, (const char *const *)dirs, ndirs);
    struct lathe_env env = {.size = sizeof env, .output_dir = ".", .seed = (uint64_t)seed, .batch_size = 1,
                            .grad_accum = 1, .world_size = 1, .config = cfg};
    if (rc == LATHE_OK && (rc = lathe_rewards_create(cfg, reg, &env, &rw, &nrw)) != LATHE_OK) {
        char why[2048];
        snprintf(why, sizeof why, "%s", lathe_errmsg());
        if (check_reward_sections(cfg, 1) != LATHE_OK) {
            char typo[2048];
            snprintf(typo, sizeof typo, "%s", lathe_errmsg());
            lathe_error(LATHE_ECONFIG, "%s\n  (which may be why: %s)", typo, why);
        }
    }
    env.rewards = rw;
    env.nrewards = nrw;
    if (rc == LATHE_OK && nrw == 0)
        rc = lathe_error(LATHE_ECONFIG, "%s: no [reward.NAME] sections; add one, e.g. [reward.format] with "
                         "plugin = think-answer", ini);
    if (rc == LATHE_OK)
        rc = check_reward_sections(cfg, 0);
    if (rc == LATHE_OK) {
        sc.r = rw;
        sc.n = nrw;
        sc.values = calloc(nrw, sizeof *sc.values);
        sc.stats = calloc(nrw + 1, sizeof *sc.stats);
        if (!sc.values || !sc.stats)
            rc = lathe_error(LATHE_ENOMEM, "out of memory");
    }
    if (rc == LATHE_OK) {
        in = strcmp(input, "-") ? fopen(input, "r") : stdin;
        if (!in)
            rc = lathe_error(LATHE_EIO, "cannot open --input '%s': %s", input, strerror(errno));
    }
    /* the output appears whole or not at all: a temp file beside it, renamed */
    if (rc == LATHE_OK && output) {
        size_t n = strlen(output) + 16;
        tmp = malloc(n);
        int fd = -1;
        if (tmp) {
            snprintf(tmp, n, "%s.tmp.XXXXXX", output);
            fd = mkstemp(tmp);
        }
        if (fd < 0 || !(out = fdopen(fd, "w"))) {
            rc = lathe_error(LATHE_EIO, "cannot create a file beside --output '%s': %s", output,
                             tmp ? strerror(errno) : "out of memory");
            if (fd >= 0)
                close(fd);
            if (fd >= 0)
                unlink(tmp);
            free(tmp);
            tmp = NULL;
        }
    } else if (rc == LATHE_OK) {
        out = stdout;
    }
    if (rc == LATHE_OK)
        rc = score_file(&sc, in, out, &nlines);
    if (out && out != stdout) {
        if (fclose(out) != 0 && rc == LATHE_OK)
            rc = lathe_error(LATHE_EIO, "writing '%s': %s", tmp, strerror(errno));
        if (rc == LATHE_OK && rename(tmp, output) != 0)
            rc = lathe_error(LATHE_EIO, "cannot rename '%s' to '%s': %s", tmp, output, strerror(errno));
        if (rc != LATHE_OK)
            unlink(tmp);
    } else if (out == stdout && fflush(stdout) != 0 && rc == LATHE_OK) {
        rc = lathe_error(LATHE_EIO, "writing the output: %s", strerror(errno));
    }
    if (rc == LATHE_OK)
        print_summary(&sc, nlines);
    if (in && in != stdin)
        fclose(in);
    free(tmp);
    free(sc.values);
    free(sc.stats);
    lathe_rewards_destroy(rw, nrw);
    lathe_registry_close(reg);
    lathe_plugin_dirs_free(dirs, ndirs);
    free(ini_path);
    lathe_config_free(cfg);
    free(overrides);
    return rc == LATHE_OK ? 0 : lathe_cli_fail();
}
