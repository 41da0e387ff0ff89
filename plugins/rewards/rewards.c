/* plugins/rewards/rewards.c — rule-based rewards for RL fine-tuning
 * (plugin file lathe-rewards.so, components of kind "reward").
 *
 * think-answer: the format-and-accuracy rule of ColossalChat's legacy GRPO
 * tutorial (coati/utils/reward_score/competition.py, whose format check
 * comes from Logic-RL's validate_response_structure):
 *   - the format is valid when each of <think>, </think>, <answer>,
 *     </answer> occurs exactly its template count (1) times, their first
 *     occurrences come in that order, and </answer> ends the response
 *     (trailing white space aside);
 *   - the answer is the text inside the last <answer>...</answer> pair;
 *   - score: wrong_format_score (0) for an invalid format, format_score (1)
 *     for a valid one, correct_score (10, the total, not a bonus on top) for
 *     a valid one whose answer equals the reference.
 *   A NULL reference answer can only earn format_score.
 *   [reward.NAME] keys: reward_template (JSON file, relative to the INI's
 *   directory; see examples/reward-template.json), compare = text | numeric,
 *   tolerance (relative, numeric mode).
 *
 * length: DAPO's soft overlong punishment (Yu et al. 2025, "DAPO", eq. 13):
 *   0 up to max_length - cache, then falling linearly to -penalty at
 *   max_length, and -penalty beyond. Length in unicode characters, words or
 *   bytes (no tokenizer is at hand when scoring offline).
 *   [reward.NAME] keys: max_length (required), cache (max_length / 4),
 *   penalty (1.0), unit = chars | words | bytes.
 */
#include <lathe/lathe.h>

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the reward template ---------------------------------------------- */

enum { TA_THINK_START, TA_THINK_END, TA_ANSWER_START, TA_ANSWER_END, TA_NTAGS };

static const char *const ta_fields[TA_NTAGS] = {"think_start", "think_end", "answer_start", "answer_end"};
static const char *const ta_default_tags[TA_NTAGS] = {"<think>", "</think>", "<answer>", "</answer>"};

enum { TA_TEXT = 0, TA_NUMERIC = 1 };

struct think_answer {
    char *tag[TA_NTAGS];
    size_t taglen[TA_NTAGS];
    int64_t count[TA_NTAGS];
    double format_score, correct_score, wrong_format_score;
    int compare;      /* TA_TEXT or TA_NUMERIC */
    double tolerance; /* relative, numeric mode */
};

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* counts may name a tag by its text ("<think>") or by its field
 * ("think_start"); -1 when it is neither. */
static int ta_tag_index(const struct think_answer *t, const char *key)
{
    for (int i = 0; i < TA_NTAGS; i++)
        if (strcmp(key, t->tag[i]) == 0 || strcmp(key, ta_fields[i]) == 0)
            return i;
    return -1;
}

static int ta_set_tag(struct think_answer *t, int i, const char *text)
{
    char *d = strdup(text);
    if (!d)
        return lathe_error(LATHE_ENOMEM, "think-answer: out of memory");
    free(t->tag[i]);
    t->tag[i] = d;
    t->taglen[i] = strlen(d);
    return LATHE_OK;
}

#define TA_FIELD_LIST "think_start, think_end, answer_start, answer_end, counts, format_score, " \
                      "correct_score, wrong_format_score, comment"

static int ta_load_template(struct think_answer *t, const char *path)
{
    json_error_t e;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &e);
    if (!root && e.line < 0) /* not read at all */
        return lathe_error(LATHE_ECONFIG, "%s (relative paths start at the INI file's directory)", e.text);
    if (!root)
        return lathe_error(LATHE_ECONFIG, "%s:%d:%d: %s", path, e.line, e.column, e.text);
    int rc = LATHE_OK;
    if (!json_is_object(root)) {
        rc = lathe_error(LATHE_ECONFIG, "%s: the reward template must be a JSON object, not %s", path,
                         json_kind(root));
        goto done;
    }
    const char *key;
    json_t *v;
    /* tags first: counts may name them by their text */
    json_object_foreach(root, key, v) {
        int tag = -1;
        for (int i = 0; i < TA_NTAGS; i++)
            if (strcmp(key, ta_fields[i]) == 0)
                tag = i;
        double *score = !strcmp(key, "format_score")         ? &t->format_score
                        : !strcmp(key, "correct_score")      ? &t->correct_score
                        : !strcmp(key, "wrong_format_score") ? &t->wrong_format_score
                                                             : NULL;
        if (tag >= 0) {
            if (!json_is_string(v) || json_string_length(v) == 0) {
                rc = lathe_error(LATHE_ECONFIG, "%s: field '%s' must be a non-empty string, not %s", path, key,
                                 json_is_string(v) ? "an empty one" : json_kind(v));
                goto done;
            }
            if (strlen(json_string_value(v)) != json_string_length(v)) {
                rc = lathe_error(LATHE_ECONFIG, "%s: field '%s' holds a NUL character", path, key);
                goto done;
            }
            if ((rc = ta_set_tag(t, tag, json_string_value(v))) != LATHE_OK)
                goto done;
        } else if (score) {
            if (!json_is_number(v) || !isfinite(json_number_value(v))) {
                rc = lathe_error(LATHE_ECONFIG, "%s: field '%s' must be a number, not %s", path, key, json_kind(v));
                goto done;
            }
            *score = json_number_value(v);
        } else if (strcmp(key, "comment") == 0) {
            /* JSON has no comments: this field holds the file's own notes */
            int ok = json_is_string(v);
            if (json_is_array(v)) {
                ok = 1;
                for (size_t i = 0; i < json_array_size(v); i++)
                    ok &= json_is_string(json_array_get(v, i));
            }
            if (!ok) {
                rc = lathe_error(LATHE_ECONFIG, "%s: field 'comment' must be a string or an array of strings",
                                 path);
                goto done;
            }
        } else if (strcmp(key, "counts") != 0) {
            rc = lathe_error(LATHE_ECONFIG, "%s: unknown field '%s'; the fields are: " TA_FIELD_LIST, path, key);
            goto done;
        }
    }
    for (int i = 0; i < TA_NTAGS; i++)
        for (int j = 0; j < i; j++)
            if (strcmp(t->tag[i], t->tag[j]) == 0) {
                rc = lathe_error(LATHE_ECONFIG, "%s: fields '%s' and '%s' are the same tag '%s'; the four tags "
                                 "must differ", path, ta_fields[j], ta_fields[i], t->tag[i]);
                goto done;
            }
    json_t *counts = json_object_get(root, "counts");
    if (counts && !json_is_object(counts)) {
        rc = lathe_error(LATHE_ECONFIG, "%s: field 'counts' must be an object {\"%s\": 1, ...}, not %s", path,
                         t->tag[0], json_kind(counts));
        goto done;
    }
    if (counts)
        json_object_foreach(counts, key, v) {
            int i = ta_tag_index(t, key);
            if (i < 0) {
                rc = lathe_error(LATHE_ECONFIG, "%s: field 'counts' names '%s', which is none of the tags %s %s %s %s",
                                 path, key, t->tag[0], t->tag[1], t->tag[2], t->tag[3]);
                goto done;
            }
            if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 1000) {
                rc = lathe_error(LATHE_ECONFIG, "%s: field 'counts.%s' must be an integer in [1, 1000], not %s",
                                 path, key, json_is_integer(v) ? "out of range" : json_kind(v));
                goto done;
            }
            t->count[i] = json_integer_value(v);
        }
done:
    json_decref(root);
    return rc;
}

static void ta_destroy(void *self)
{
    struct think_answer *t = self;
    if (!t)
        return;
    for (int i = 0; i < TA_NTAGS; i++)
        free(t->tag[i]);
    free(t);
}

static int ta_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    (void)env;
    *self = NULL;
    static const char *const modes[] = {"text", "numeric", NULL};
    const char *tmpl;
    int compare;
    double tol;
    int rc = lathe_cfg_path(cfg, "reward_template", "", &tmpl);
    if (rc == LATHE_OK)
        rc = lathe_cfg_choice(cfg, "compare", "text", modes, &compare);
    if (rc == LATHE_OK)
        rc = lathe_cfg_float(cfg, "tolerance", 1e-6, 0.0, 1.0, &tol);
    if (rc != LATHE_OK)
        return rc;
    struct think_answer *t = calloc(1, sizeof *t);
    if (!t)
        return lathe_error(LATHE_ENOMEM, "think-answer: out of memory");
    t->format_score = 1.0;
    t->correct_score = 10.0;
    t->wrong_format_score = 0.0;
    t->compare = compare;
    t->tolerance = tol;
    for (int i = 0; i < TA_NTAGS && rc == LATHE_OK; i++) {
        t->count[i] = 1;
        rc = ta_set_tag(t, i, ta_default_tags[i]);
    }
    if (rc == LATHE_OK && tmpl[0] && (rc = ta_load_template(t, tmpl)) != LATHE_OK) {
        char msg[2048];
        snprintf(msg, sizeof msg, "%s", lathe_errmsg());
        rc = lathe_cfg_error(cfg, "reward_template", "%s", msg); /* names the INI line too */
    }
    if (rc != LATHE_OK) {
        ta_destroy(t);
        return rc;
    }
    *self = t;
    return LATHE_OK;
}

/* ---- the rule ---------------------------------------------------------- */

/* Non-overlapping occurrences of `tag` in s (as Python's str.count) and the
 * offset of the first (-1 if none). */
static int64_t ta_count(const char *s, const char *tag, size_t taglen, ptrdiff_t *first)
{
    int64_t n = 0;
    *first = -1;
    for (const char *p = strstr(s, tag); p; p = strstr(p + taglen, tag)) {
        if (n++ == 0)
            *first = p - s;
    }
    return n;
}

static int ta_well_formed(const struct think_answer *t, const char *c)
{
    ptrdiff_t first[TA_NTAGS];
    for (int i = 0; i < TA_NTAGS; i++)
        if (ta_count(c, t->tag[i], t->taglen[i], &first[i]) != t->count[i])
            return 0;
    for (int i = 1; i < TA_NTAGS; i++)
        if (first[i - 1] >= first[i])
            return 0;
    size_t len = strlen(c);
    while (len > 0 && isspace((unsigned char)c[len - 1]))
        len--;
    size_t el = t->taglen[TA_ANSWER_END];
    return len >= el && memcmp(c + len - el, t->tag[TA_ANSWER_END], el) == 0;
}

/* The text inside the last answer_start ... answer_end pair: [*a, *b). */
static int ta_extract(const struct think_answer *t, const char *c, const char **a, const char **b)
{
    const char *last = NULL;
    for (const char *p = strstr(c, t->tag[TA_ANSWER_START]); p; p = strstr(p + 1, t->tag[TA_ANSWER_START]))
        last = p;
    if (!last)
        return 0;
    *a = last + t->taglen[TA_ANSWER_START];
    *b = strstr(*a, t->tag[TA_ANSWER_END]);
    return *b != NULL;
}

/* Equal ignoring ASCII case and all white space (the tutorial strips spaces
 * and lowercases). */
static int ta_text_equal(const char *a, const char *aend, const char *b)
{
    for (;;) {
        while (a < aend && isspace((unsigned char)*a))
            a++;
        while (*b && isspace((unsigned char)*b))
            b++;
        if (a == aend || !*b)
            return a == aend && !*b;
        if (tolower((unsigned char)*a) != tolower((unsigned char)*b))
            return 0;
        a++, b++;
    }
}

/* A number as people write answers: optional sign, digits with optional
 * thousands commas ("1,234,567"), optional fraction, optional exponent, an
 * optional final period ("42."), white space anywhere ignored. 0 when it is
 * not one. */
static int ta_parse_number(const char *s, const char *end, double *out)
{
    char buf[128];
    size_t n = 0;
    for (const char *p = s; p < end; p++) {
        if (isspace((unsigned char)*p))
            continue;
        if (n + 1 >= sizeof buf)
            return 0;
        buf[n++] = *p;
    }
    buf[n] = '\0';
    if (n > 1 && buf[n - 1] == '.' && isdigit((unsigned char)buf[n - 2]))
        buf[--n] = '\0'; /* "3.5." ends a sentence */
    char clean[128];
    size_t k = 0, i = 0;
    if (buf[i] == '+' || buf[i] == '-')
        clean[k++] = buf[i++];
    size_t digits = 0, group = 0;
    int commas = 0;
    for (; isdigit((unsigned char)buf[i]) || buf[i] == ','; i++) {
        if (buf[i] == ',') {
            /* the first group has 1-3 digits, every later one exactly 3 */
            if ((commas == 0 && (group < 1 || group > 3)) || (commas > 0 && group != 3))
                return 0;
            commas++;
            group = 0;
            continue;
        }
        clean[k++] = buf[i];
        digits++;
        group++;
    }
    if (commas > 0 && group != 3)
        return 0;
    if (buf[i] == '.') {
        clean[k++] = buf[i++];
        for (; isdigit((unsigned char)buf[i]); i++, digits++)
            clean[k++] = buf[i];
    }
    if (digits == 0)
        return 0;
    if (buf[i] == 'e' || buf[i] == 'E') {
        clean[k++] = buf[i++];
        if (buf[i] == '+' || buf[i] == '-')
            clean[k++] = buf[i++];
        if (!isdigit((unsigned char)buf[i]))
            return 0;
        for (; isdigit((unsigned char)buf[i]); i++)
            clean[k++] = buf[i];
    }
    if (buf[i] != '\0')
        return 0;
    clean[k] = '\0';
    double d = strtod(clean, NULL);
    if (!isfinite(d))
        return 0;
    *out = d;
    return 1;
}

static int ta_numeric_equal(double tol, const char *a, const char *aend, const char *b)
{
    double x, y;
    if (!ta_parse_number(a, aend, &x) || !ta_parse_number(b, b + strlen(b), &y))
        return 0;
    return x == y || fabs(x - y) <= tol * fmax(fabs(x), fabs(y));
}

static int ta_score(void *self, const char *completion, const char *answer, const char *fields_json,
                    double *reward)
{
    (void)fields_json;
    const struct think_answer *t = self;
    if (!completion)
        return lathe_error(LATHE_EINVAL, "think-answer: no completion to score");
    if (!ta_well_formed(t, completion)) {
        *reward = t->wrong_format_score;
        return LATHE_OK;
    }
    const char *a, *b;
    int right = 0;
    if (answer && ta_extract(t, completion, &a, &b))
        right = t->compare == TA_NUMERIC ? ta_numeric_equal(t->tolerance, a, b, answer)
                                         : ta_text_equal(a, b, answer);
    *reward = right ? t->correct_score : t->format_score;
    return LATHE_OK;
}

/* ---- length ------------------------------------------------------------ */

enum { LEN_CHARS = 0, LEN_WORDS, LEN_BYTES };

struct length {
    int64_t max_length, cache;
    double penalty;
    int unit;
};

static int len_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    (void)env;
    *self = NULL;
    static const char *const units[] = {"chars", "words", "bytes", NULL};
    struct length l;
    int rc = lathe_cfg_require(cfg, "max_length");
    if (rc == LATHE_OK)
        rc = lathe_cfg_int(cfg, "max_length", 0, 1, INT64_C(1) << 40, &l.max_length);
    if (rc == LATHE_OK)
        rc = lathe_cfg_int(cfg, "cache", l.max_length / 4, 0, l.max_length, &l.cache);
    if (rc == LATHE_OK)
        rc = lathe_cfg_float(cfg, "penalty", 1.0, 0.0, 1e6, &l.penalty);
    if (rc == LATHE_OK)
        rc = lathe_cfg_choice(cfg, "unit", "chars", units, &l.unit);
    if (rc != LATHE_OK)
        return rc;
    struct length *p = malloc(sizeof *p);
    if (!p)
        return lathe_error(LATHE_ENOMEM, "length: out of memory");
    *p = l;
    *self = p;
    return LATHE_OK;
}

static void len_destroy(void *self) { free(self); }

static int64_t len_measure(int unit, const char *s)
{
    int64_t n = 0;
    if (unit == LEN_BYTES)
        return (int64_t)strlen(s);
    if (unit == LEN_CHARS) {
        for (; *s; s++)
            n += ((unsigned char)*s & 0xC0) != 0x80; /* UTF-8: count lead bytes */
        return n;
    }
    for (int in = 0; *s; s++) {
        int sp = isspace((unsigned char)*s);
        n += !sp && !in;
        in = !sp;
    }
    return n;
}

static int len_score(void *self, const char *completion, const char *answer, const char *fields_json,
                     double *reward)
{
    (void)answer, (void)fields_json;
    const struct length *l = self;
    if (!completion)
        return lathe_error(LATHE_EINVAL, "length: no completion to score");
    int64_t n = len_measure(l->unit, completion);
    int64_t soft = l->max_length - l->cache;
    if (n <= soft)
        *reward = 0.0;
    else if (n <= l->max_length)
        *reward = -l->penalty * (double)(n - soft) / (double)l->cache;
    else
        *reward = -l->penalty;
    return LATHE_OK;
}

/* ---- the plugin -------------------------------------------------------- */

static const struct lathe_reward_ops ta_ops = {
    .size = sizeof(struct lathe_reward_ops),
    .create = ta_create,
    .destroy = ta_destroy,
    .score = ta_score,
};

static const struct lathe_reward_ops len_ops = {
    .size = sizeof(struct lathe_reward_ops),
    .create = len_create,
    .destroy = len_destroy,
    .score = len_score,
};

static const struct lathe_component rewards_components[] = {
    {.kind = LATHE_KIND_REWARD, .name = "think-answer", .ops = &ta_ops},
    {.kind = LATHE_KIND_REWARD, .name = "length", .ops = &len_ops},
    {0},
};

LATHE_PLUGIN_DEFINE(rewards, .version = "0.1.0",
                    .description = "rule rewards: think-answer format and accuracy, length penalty",
                    .components = rewards_components)
