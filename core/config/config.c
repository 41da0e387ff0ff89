/* core/config/config.c — loading RUN.ini, overrides, unused-key checks and
 * the dump. The typed getters are in getters.c.
 *
 * Parsing goes through the packaged inih (ini_parse_stream). Its handler is
 * not told line numbers (Debian builds it without INI_HANDLER_LINENO), so
 * our reader callback hands inih one line at a time and counts them; the
 * handler runs before inih asks for the next line, so the count is the line
 * of the key being handled. The reader also classifies each line the way
 * inih will (same rules, same runtime options), because inih does not tell
 * the handler about section headers (so an empty [peft] would be lost) nor
 * about lines it could not parse, and it reports a continuation line as a
 * second call for the same key.
 *
 * Rules, beyond inih's own (`key = value` or `key: value`, ';' and '#'
 * comments, " ;" starts an inline comment):
 *  - a key before any [section], a key given twice in one section, and a
 *    section header given twice are errors; section names are trimmed, must
 *    be at most 49 characters (inih truncates longer ones) and may contain
 *    dots ([reward.format]) but no empty part; key names may not contain '.'
 *    (an override splits section.key at the last dot);
 *  - an indented line after a key continues that key's value (inih follows
 *    Python's configparser here): it is appended after one space, so a long
 *    list may be spread over several lines; " ;" comments are dropped from
 *    it as from any value. An indented line that looks like
 *    `name = value` is an error instead, since it is almost always a key
 *    that was indented by mistake and would otherwise vanish into the
 *    previous value;
 *  - a line must fit inih's line buffer (ini_max_line, 200 bytes by
 *    default, less the newline and NUL); a longer one is an error, where
 *    inih alone would silently cut it into several lines. */
#include "config/config_internal.h"

#include <lathe/abi.h>
#include <lathe/status.h>

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/strutil.h"

/* inih copies section names into a buffer of this size (MAX_SECTION). */
#define INIH_MAX_SECTION 50
/* Longest value quoted back in a message. */
#define SHOW_MAX 120

/* ------------------------------------------------------------------ */
/* Storage                                                             */

void *lathe_config_keep(lathe_config *cfg, void *p)
{
    if (!p)
        return NULL;
    if (cfg->npool == cfg->poolcap) {
        size_t cap = cfg->poolcap ? 2 * cfg->poolcap : 16;
        void **np = realloc(cfg->pool, cap * sizeof *np);
        if (!np) {
            free(p);
            return NULL;
        }
        cfg->pool = np;
        cfg->poolcap = cap;
    }
    cfg->pool[cfg->npool++] = p;
    return p;
}

lathe_section *lathe_config_find_section(const lathe_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->nsections; i++)
        if (strcmp(cfg->sections[i]->name, name) == 0)
            return cfg->sections[i];
    return NULL;
}

struct lathe_cfg_key *lathe_config_find_key(const lathe_section *s, const char *name)
{
    for (size_t i = 0; i < s->nkeys; i++)
        if (strcmp(s->keys[i]->name, name) == 0)
            return s->keys[i];
    return NULL;
}

lathe_section *lathe_config_add_section(lathe_config *cfg, const char *name, int origin, int line)
{
    lathe_section *s = lathe_config_find_section(cfg, name);
    if (s)
        return s;
    if (cfg->nsections == cfg->cap) {
        size_t cap = cfg->cap ? 2 * cfg->cap : 8;
        lathe_section **ns = realloc(cfg->sections, cap * sizeof *ns);
        if (!ns)
            goto nomem;
        cfg->sections = ns;
        cfg->cap = cap;
    }
    s = calloc(1, sizeof *s);
    if (!s)
        goto nomem;
    s->name = lathe_str_dup(name);
    if (!s->name) {
        free(s);
        goto nomem;
    }
    s->cfg = cfg;
    s->origin = origin;
    s->line = line;
    cfg->sections[cfg->nsections++] = s;
    return s;
nomem:
    lathe_error(LATHE_ENOMEM, "%s: out of memory adding section [%s]", cfg->path, name);
    return NULL;
}

struct lathe_cfg_key *lathe_config_add_key(lathe_section *s, const char *name)
{
    struct lathe_cfg_key *k = lathe_config_find_key(s, name);
    if (k)
        return k;
    if (s->nkeys == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 8;
        struct lathe_cfg_key **nk = realloc(s->keys, cap * sizeof *nk);
        if (!nk)
            goto nomem;
        s->keys = nk;
        s->cap = cap;
    }
    k = calloc(1, sizeof *k);
    if (!k)
        goto nomem;
    k->name = lathe_str_dup(name);
    if (!k->name) {
        free(k);
        goto nomem;
    }
    s->keys[s->nkeys++] = k;
    return k;
nomem:
    lathe_error(LATHE_ENOMEM, "%s: out of memory adding [%s] %s", s->cfg->path, s->name, name);
    return NULL;
}

const char *lathe_config_where(const lathe_section *s, const struct lathe_cfg_key *k, char *buf,
                               size_t n)
{
    int origin = k ? k->origin : s->origin;
    int line = k ? k->line : s->line;
    if (origin == LATHE_CFG_FILE)
        snprintf(buf, n, "%s:%d", s->cfg->path, line);
    else if (origin == LATHE_CFG_CMDLINE)
        snprintf(buf, n, "%s", LATHE_CFG_CMDLINE_NAME);
    else
        snprintf(buf, n, "%s", s->cfg->path);
    return buf;
}

static lathe_config *config_named(const char *name)
{
    lathe_config *cfg = calloc(1, sizeof *cfg);
    if (cfg)
        cfg->path = lathe_str_dup(name);
    if (!cfg || !cfg->path) {
        free(cfg);
        lathe_error(LATHE_ENOMEM, "out of memory creating a configuration");
        return NULL;
    }
    return cfg;
}

LATHE_EXPORT lathe_config *lathe_config_new(void)
{
    return config_named(LATHE_CFG_CMDLINE_NAME);
}

LATHE_EXPORT void lathe_config_free(lathe_config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < cfg->nsections; i++) {
        lathe_section *s = cfg->sections[i];
        for (size_t j = 0; j < s->nkeys; j++) {
            free(s->keys[j]->name);
            free(s->keys[j]->value);
            free(s->keys[j]);
        }
        free(s->keys);
        free(s->name);
        free(s);
    }
    for (size_t i = 0; i < cfg->npool; i++)
        free(cfg->pool[i]);
    free(cfg->pool);
    free(cfg->sections);
    free(cfg->path);
    free(cfg);
}

LATHE_EXPORT const char *lathe_config_path(const lathe_config *cfg)
{
    return cfg ? cfg->path : NULL;
}

/* A section name as written, trimmed, checked; NULL (message in why) if bad. */
static const char *section_name_problem(const char *name)
{
    if (!*name)
        return "the section name is empty";
    if (strlen(name) >= INIH_MAX_SECTION)
        return "the section name is longer than 49 characters (the INI parser's limit); shorten it";
    if (name[0] == '.' || name[strlen(name) - 1] == '.' || strstr(name, ".."))
        return "the section name has an empty part between dots; write it like [reward.format]";
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Parsing                                                             */

enum line_kind { LINE_NONE, LINE_BLANK, LINE_CONT, LINE_HEADER, LINE_KEY };

struct parse {
    lathe_config *cfg;
    FILE *fp;          /* either a file ... */
    const char *text;  /* ... or the rest of a string */
    char *raw;         /* the current line, without its newline */
    size_t rawcap;
    int lineno;
    int kind;          /* enum line_kind of the current line */
    int handled;       /* inih called the handler for the current line */
    int in_key;        /* mirrors inih's prev_name: a key since the header */
    lathe_section *cur;
    struct lathe_cfg_key *last;
    int status;        /* first error (message set), LATHE_OK while fine */
    int read_errno;
};

static int parse_fail(struct parse *ps, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int parse_fail(struct parse *ps, int line, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ps->status = lathe_error(LATHE_ECONFIG, "%s:%d: %s", ps->cfg->path, line, msg);
    return ps->status;
}

/* inih's rule for where a key ends or an inline comment starts: a comment
 * prefix counts only after white space. Same runtime options as inih. */
static const char *find_chars_or_comment(const char *s, const char *chars)
{
    int was_space = 0;
    while (*s && (!chars || !strchr(chars, *s)) &&
           !(ini_allow_inline_comments && was_space && strchr(ini_inline_comment_prefixes, *s))) {
        was_space = isspace((unsigned char)*s);
        s++;
    }
    return s;
}

/* Read one line into ps->raw. 1: got one; 0: end of input; -1: error. */
static int read_raw(struct parse *ps, size_t *len)
{
    if (ps->fp) {
        errno = 0;
        ssize_t n = getline(&ps->raw, &ps->rawcap, ps->fp);
        if (n < 0) {
            if (errno == ENOMEM)
                return -1; /* read_errno 0: reported as out of memory */
            if (ferror(ps->fp)) {
                ps->read_errno = errno ? errno : EIO;
                return -1;
            }
            return 0;
        }
        *len = (size_t)n;
    } else {
        if (!*ps->text)
            return 0;
        const char *nl = strchr(ps->text, '\n');
        size_t n = nl ? (size_t)(nl - ps->text) + 1 : strlen(ps->text);
        if (n + 1 > ps->rawcap) {
            char *r = realloc(ps->raw, n + 1);
            if (!r)
                return -1;
            ps->raw = r;
            ps->rawcap = n + 1;
        }
        memcpy(ps->raw, ps->text, n);
        ps->raw[n] = '\0';
        ps->text += n;
        *len = n;
    }
    if (*len && ps->raw[*len - 1] == '\n')
        ps->raw[--*len] = '\0';
    return 1;
}

/* A [section] header line; start points at '['. */
static int parse_header(struct parse *ps, char *start)
{
    const char *end = find_chars_or_comment(start + 1, "]");
    if (*end != ']')
        return parse_fail(ps, ps->lineno,
                          "section header has no closing ']' (got '%.*s'); write it as [name]", SHOW_MAX,
                          start);
    const char *rest = end + 1;
    while (isspace((unsigned char)*rest))
        rest++;
    if (*rest && *rest != ';' && *rest != '#')
        return parse_fail(ps, ps->lineno, "unexpected text after the section header (got '%.*s'); "
                          "put only a comment after ']'", SHOW_MAX, start);
    char name[256];
    size_t n = (size_t)(end - (start + 1));
    if (n >= sizeof name)
        n = sizeof name - 1;
    memcpy(name, start + 1, n);
    name[n] = '\0';
    char *nm = lathe_str_trim(name);
    const char *why = section_name_problem(nm);
    if (why)
        return parse_fail(ps, ps->lineno, "%s (got '[%.*s]')", why, SHOW_MAX, nm);
    lathe_section *old = lathe_config_find_section(ps->cfg, nm);
    if (old)
        return parse_fail(ps, ps->lineno, "section [%s] is given twice (first on line %d); merge the two",
                          nm, old->line);
    lathe_section *s = lathe_config_add_section(ps->cfg, nm, LATHE_CFG_FILE, ps->lineno);
    if (!s)
        return ps->status = LATHE_ENOMEM;
    ps->cur = s;
    ps->in_key = 0;
    ps->last = NULL;
    return LATHE_OK;
}

static char *reader(char *str, int num, void *stream)
{
    struct parse *ps = stream;
    if (ps->status)
        return NULL;
    /* inih calls the handler for every `key = value` line; a key line it
     * did not report had no '=' or ':'. */
    if (ps->kind == LINE_KEY && !ps->handled) {
        parse_fail(ps, ps->lineno, "expected `key = value`, a [section] header or a comment (got '%.*s')",
                   SHOW_MAX, ps->raw);
        return NULL;
    }
    size_t len;
    int r = read_raw(ps, &len);
    if (r <= 0) {
        if (r < 0 && !ps->read_errno)
            ps->status = lathe_error(LATHE_ENOMEM, "%s: out of memory reading line %d", ps->cfg->path,
                                     ps->lineno + 1);
        else if (r < 0)
            ps->status = lathe_error(LATHE_EIO, "%s: cannot read line %d: %s", ps->cfg->path, ps->lineno + 1,
                                     strerror(ps->read_errno));
        ps->kind = LINE_NONE;
        return NULL;
    }
    ps->lineno++;
    ps->handled = 0;
    if (strlen(ps->raw) != len) {
        parse_fail(ps, ps->lineno, "the line contains a NUL byte; is this a text file?");
        return NULL;
    }
    if (num < 3 || len + 2 > (size_t)num) {
        parse_fail(ps, ps->lineno, "the line is %zu characters long, more than the INI parser's limit of %d; "
                   "shorten it (a list can go on over indented lines)", len, num - 2 > 0 ? num - 2 : 0);
        return NULL;
    }

    /* Classify exactly as inih will (see ini_parse_stream): comment or
     * blank, continuation, header, else a key line. */
    char *start = ps->raw;
    if (ini_allow_bom && ps->lineno == 1 && (unsigned char)start[0] == 0xEF &&
        (unsigned char)start[1] == 0xBB && (unsigned char)start[2] == 0xBF)
        start += 3;
    while (*start && isspace((unsigned char)*start))
        start++;
    if (strchr(ini_start_comment_prefixes, *start))
        ps->kind = LINE_BLANK; /* *start == '\0' matches too, as in inih */
    else if (ini_allow_multiline && ps->in_key && start > ps->raw)
        ps->kind = LINE_CONT;
    else if (*start == '[') {
        ps->kind = LINE_HEADER;
        if (parse_header(ps, start))
            return NULL;
    } else
        ps->kind = LINE_KEY;

    memcpy(str, ps->raw, len);
    str[len] = '\n';
    str[len + 1] = '\0';
    return str;
}

/* An indented line that reads `name = ...` is a mistyped key, not more of
 * the value before it. */
static int looks_like_key(const char *v)
{
    const char *eq = strchr(v, '=');
    if (!eq || eq == v)
        return 0;
    const char *e = eq;
    while (e > v && isspace((unsigned char)e[-1]))
        e--;
    if (e == v)
        return 0;
    for (const char *p = v; p < e; p++)
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-' && *p != '.')
            return 0;
    return 1;
}

/* Continue k's value with one more (indented) line. */
static void append_value(struct parse *ps, struct lathe_cfg_key *k, const char *more)
{
    if (looks_like_key(more)) {
        parse_fail(ps, ps->lineno, "[%s] %s: this indented line would continue the value of '%s' "
                   "(got '%.*s'); remove the indentation if it is a key of its own",
                   ps->cur->name, k->name, k->name, SHOW_MAX, more);
        return;
    }
    if (!*more)
        return;
    char *nv = *k->value ? lathe_str_printf("%s %s", k->value, more) : lathe_str_dup(more);
    if (!nv) {
        ps->status = lathe_error(LATHE_ENOMEM, "%s:%d: out of memory", ps->cfg->path, ps->lineno);
        return;
    }
    free(k->value);
    k->value = nv;
}

static int on_pair(void *user, const char *section, const char *name, const char *value)
{
    struct parse *ps = user;
    if (ps->status)
        return 1; /* the error is ours to report; keep inih's count clean */
    ps->handled = 1;
    if (ps->kind == LINE_CONT && ps->last) {
        struct lathe_cfg_key *k = ps->last;
        /* inih 55 keeps inline comments on continuation lines; drop them
         * so that every line of a value follows the same rule. */
        char *part = lathe_str_dup(value);
        if (!part) {
            ps->status = lathe_error(LATHE_ENOMEM, "%s:%d: out of memory", ps->cfg->path, ps->lineno);
            return 1;
        }
        *(char *)find_chars_or_comment(part, NULL) = '\0';
        value = lathe_str_trim(part);
        append_value(ps, k, value);
        free(part);
        return 1;
    }
    if (ps->kind != LINE_KEY) {
        parse_fail(ps, ps->lineno, "cannot make sense of this line (got '%.*s'); check its syntax",
                   SHOW_MAX, ps->raw);
        return 1;
    }
    ps->in_key = name[0] != '\0';
    if (!ps->cur) {
        parse_fail(ps, ps->lineno, "key '%s' comes before any [section] header; move it under the section "
                   "it belongs to", name);
        return 1;
    }
    char sec[INIH_MAX_SECTION + 1];
    snprintf(sec, sizeof sec, "%s", section);
    if (strcmp(lathe_str_trim(sec), ps->cur->name) != 0) {
        parse_fail(ps, ps->lineno, "the INI parser places this key in [%s], not [%s]; check the section "
                   "header above it", section, ps->cur->name);
        return 1;
    }
    if (!name[0]) {
        parse_fail(ps, ps->lineno, "[%s]: the key name before '=' is missing (got '%.*s')", ps->cur->name,
                   SHOW_MAX, ps->raw);
        return 1;
    }
    if (strchr(name, '.')) {
        parse_fail(ps, ps->lineno, "[%s] %s: key names cannot contain '.' (an override section.key=value "
                   "splits at the last dot); rename the key", ps->cur->name, name);
        return 1;
    }
    struct lathe_cfg_key *k = lathe_config_find_key(ps->cur, name);
    if (k) {
        parse_fail(ps, ps->lineno, "[%s] %s: key given twice in one section (first on line %d); keep one",
                   ps->cur->name, name, k->line);
        return 1;
    }
    k = lathe_config_add_key(ps->cur, name);
    if (k)
        k->value = lathe_str_dup(value);
    if (!k || !k->value) {
        ps->status = lathe_error(LATHE_ENOMEM, "%s:%d: out of memory", ps->cfg->path, ps->lineno);
        return 1;
    }
    k->origin = LATHE_CFG_FILE;
    k->line = ps->lineno;
    ps->last = k;
    return 1;
}

static lathe_config *parse_into(lathe_config *cfg, FILE *fp, const char *text)
{
    struct parse ps = { .cfg = cfg, .fp = fp, .text = text };
    int r = ini_parse_stream(reader, &ps, on_pair, &ps);
    free(ps.raw);
    if (!ps.status && r == -2)
        ps.status = lathe_error(LATHE_ENOMEM, "%s: out of memory while parsing", cfg->path);
    else if (!ps.status && r != 0)
        ps.status = lathe_error(LATHE_ECONFIG, "%s:%d: cannot parse this line; expected `key = value`, a "
                                "[section] header or a comment", cfg->path, r);
    if (ps.status) {
        lathe_config_free(cfg);
        return NULL;
    }
    return cfg;
}

LATHE_EXPORT lathe_config *lathe_config_load(const char *path)
{
    if (!path) {
        lathe_error(LATHE_EINVAL, "lathe_config_load: no path given");
        return NULL;
    }
    FILE *fp = fopen(path, "r");
    if (!fp) {
        lathe_error(LATHE_EIO, "cannot open config '%s': %s; check the path", path, strerror(errno));
        return NULL;
    }
    lathe_config *cfg = config_named(path);
    if (cfg)
        cfg = parse_into(cfg, fp, NULL);
    fclose(fp);
    return cfg;
}

LATHE_EXPORT lathe_config *lathe_config_load_string(const char *name, const char *text)
{
    lathe_config *cfg = config_named(name ? name : "<string>");
    if (!cfg)
        return NULL;
    return parse_into(cfg, NULL, text ? text : "");
}

/* ------------------------------------------------------------------ */
/* Overrides                                                           */

LATHE_EXPORT int lathe_config_override(lathe_config *cfg, const char *assignment)
{
    if (!cfg || !assignment)
        return lathe_error(LATHE_EINVAL, "lathe_config_override: no config or no assignment");
    const char *eq = strchr(assignment, '=');
    char *lhs = lathe_str_ndup(assignment, eq ? (size_t)(eq - assignment) : strlen(assignment));
    char *val = lathe_str_dup(eq ? eq + 1 : "");
    if (!lhs || !val) {
        free(lhs);
        free(val);
        return lathe_error(LATHE_ENOMEM, "out of memory applying an override");
    }
    int rc = LATHE_OK;
    char *l = lathe_str_trim(lhs);
    char *dot = strrchr(l, '.');
    if (!eq || !dot || dot == l || !dot[1]) {
        rc = lathe_error(LATHE_ECONFIG, "%s: cannot apply override '%.*s': expected section.key=value, e.g. "
                         "train.steps=100", LATHE_CFG_CMDLINE_NAME, SHOW_MAX, assignment);
        goto out;
    }
    *dot = '\0';
    char *sec = lathe_str_trim(l);
    char *key = lathe_str_trim(dot + 1);
    const char *why = section_name_problem(sec);
    if (!why && !*key)
        why = "the key name is empty";
    if (why) {
        rc = lathe_error(LATHE_ECONFIG, "%s: cannot apply override '%.*s': %s", LATHE_CFG_CMDLINE_NAME,
                         SHOW_MAX, assignment, why);
        goto out;
    }
    lathe_section *s = lathe_config_add_section(cfg, sec, LATHE_CFG_CMDLINE, 0);
    struct lathe_cfg_key *k = s ? lathe_config_add_key(s, key) : NULL;
    char *v = lathe_str_dup(lathe_str_trim(val));
    if (!k || !v) {
        free(v);
        rc = lathe_error(LATHE_ENOMEM, "out of memory applying override '%s'", assignment);
        goto out;
    }
    /* A section made by a reader (lathe_config_section) now exists. */
    if (s->origin == LATHE_CFG_NONE)
        s->origin = LATHE_CFG_CMDLINE;
    /* The old value may have been handed out already: keep it alive. */
    if (k->value && !lathe_config_keep(cfg, k->value)) {
        free(v);
        rc = lathe_error(LATHE_ENOMEM, "out of memory applying override '%s'", assignment);
        goto out;
    }
    k->value = v;
    k->origin = LATHE_CFG_CMDLINE;
    k->line = 0;
out:
    free(lhs);
    free(val);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Sections                                                            */

LATHE_EXPORT lathe_section *lathe_config_section(lathe_config *cfg, const char *name)
{
    if (!cfg || !name) {
        lathe_error(LATHE_EINVAL, "lathe_config_section: no config or no name");
        return NULL;
    }
    lathe_section *s = lathe_config_add_section(cfg, name, LATHE_CFG_NONE, 0);
    if (s)
        s->opened = 1;
    return s;
}

LATHE_EXPORT int lathe_config_has_section(const lathe_config *cfg, const char *name)
{
    if (!cfg || !name)
        return 0;
    const lathe_section *s = lathe_config_find_section(cfg, name);
    return s && s->origin != LATHE_CFG_NONE;
}

static int has_prefix(const char *name, const char *prefix)
{
    size_t n = strlen(prefix);
    return strncmp(name, prefix, n) == 0 && (name[n] == '\0' || name[n] == '.');
}

LATHE_EXPORT size_t lathe_config_sections(lathe_config *cfg, const char *prefix, lathe_section **out,
                                          size_t max)
{
    if (!cfg || !prefix)
        return 0;
    size_t count = 0;
    for (size_t i = 0; i < cfg->nsections; i++) {
        lathe_section *s = cfg->sections[i];
        if (s->origin == LATHE_CFG_NONE || !has_prefix(s->name, prefix))
            continue;
        /* Handing a section out counts as opening it. */
        if (out && count < max) {
            out[count] = s;
            s->opened = 1;
        }
        count++;
    }
    return count;
}

LATHE_EXPORT const char *lathe_section_name(const lathe_section *s)
{
    return s ? s->name : NULL;
}

LATHE_EXPORT int lathe_section_has(const lathe_section *s, const char *key)
{
    if (!s || !key)
        return 0;
    const struct lathe_cfg_key *k = lathe_config_find_key(s, key);
    return k && k->origin != LATHE_CFG_NONE;
}

/* ------------------------------------------------------------------ */
/* Unused keys and sections                                            */

/* Closest name among n candidates, or NULL when none is close enough:
 * distance <= max(2, len/3) of the misspelt name. */
static const char *closest(const char *name, const char *const *cands, size_t n)
{
    size_t len = strlen(name);
    size_t limit = len / 3 > 2 ? len / 3 : 2;
    const char *best = NULL;
    size_t bestd = SIZE_MAX;
    for (size_t i = 0; i < n; i++) {
        size_t d = lathe_str_edit_distance(name, cands[i]);
        if (d < bestd) {
            bestd = d;
            best = cands[i];
        }
    }
    return bestd <= limit ? best : NULL;
}

/* "a, b, c" of up to n names into buf, with brackets for sections. */
static void join_names(char *buf, size_t size, const char *const *names, size_t n, int brackets)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n && used + 1 < size; i++) {
        int w = snprintf(buf + used, size - used, "%s%s%s%s", i ? ", " : "", brackets ? "[" : "", names[i],
                         brackets ? "]" : "");
        if (w < 0)
            break;
        used += (size_t)w;
    }
}

static int unknown_key(const lathe_section *s, const struct lathe_cfg_key *k)
{
    char where[512], list[1024];
    const char **known = calloc(s->nkeys + 1, sizeof *known);
    if (!known)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    size_t n = 0;
    for (size_t i = 0; i < s->nkeys; i++)
        if (s->keys[i]->read)
            known[n++] = s->keys[i]->name;
    lathe_config_where(s, k, where, sizeof where);
    const char *best = closest(k->name, known, n);
    int rc;
    if (best)
        rc = lathe_error(LATHE_ECONFIG, "%s: unknown key '%s' in [%s]; did you mean '%s'?", where, k->name,
                         s->name, best);
    else if (n) {
        join_names(list, sizeof list, known, n, 0);
        rc = lathe_error(LATHE_ECONFIG, "%s: unknown key '%s' in [%s]; the known keys are: %s", where,
                         k->name, s->name, list);
    } else
        rc = lathe_error(LATHE_ECONFIG,
                         "%s: unknown key '%s' in [%s]; nothing reads keys from [%s], remove it", where,
                         k->name, s->name, s->name);
    free(known);
    return rc;
}

static int unknown_section(const lathe_config *cfg, const lathe_section *s)
{
    char where[512], list[1024];
    const char **known = calloc(cfg->nsections + 1, sizeof *known);
    if (!known)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    size_t n = 0;
    for (size_t i = 0; i < cfg->nsections; i++)
        if (cfg->sections[i]->opened)
            known[n++] = cfg->sections[i]->name;
    lathe_config_where(s, NULL, where, sizeof where);
    const char *best = closest(s->name, known, n);
    int rc;
    if (best)
        rc = lathe_error(LATHE_ECONFIG, "%s: unknown section [%s]; did you mean [%s]?", where, s->name, best);
    else if (n) {
        join_names(list, sizeof list, known, n, 1);
        rc = lathe_error(LATHE_ECONFIG, "%s: unknown section [%s]; the sections in use are: %s", where,
                         s->name, list);
    } else
        rc = lathe_error(LATHE_ECONFIG, "%s: unknown section [%s]; nothing reads it, remove it", where,
                         s->name);
    free(known);
    return rc;
}

LATHE_EXPORT int lathe_section_check_typos(const lathe_section *s)
{
    if (!s)
        return LATHE_OK;
    const char **known = calloc(s->nkeys + 1, sizeof *known);
    if (!known)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    size_t n = 0;
    for (size_t i = 0; i < s->nkeys; i++)
        if (s->keys[i]->read)
            known[n++] = s->keys[i]->name;
    int rc = LATHE_OK;
    for (size_t j = 0; j < s->nkeys && rc == LATHE_OK; j++) {
        const struct lathe_cfg_key *k = s->keys[j];
        if (k->origin != LATHE_CFG_NONE && !k->read && closest(k->name, known, n))
            rc = unknown_key(s, k);
    }
    free(known);
    return rc;
}

LATHE_EXPORT int lathe_config_check_unused(const lathe_config *cfg)
{
    if (!cfg)
        return lathe_error(LATHE_EINVAL, "lathe_config_check_unused: no config");
    for (size_t i = 0; i < cfg->nsections; i++) {
        const lathe_section *s = cfg->sections[i];
        if (!s->opened)
            return unknown_section(cfg, s);
        for (size_t j = 0; j < s->nkeys; j++) {
            const struct lathe_cfg_key *k = s->keys[j];
            if (k->origin != LATHE_CFG_NONE && !k->read)
                return unknown_key(s, k);
        }
    }
    return LATHE_OK;
}

/* ------------------------------------------------------------------ */
/* Dump                                                                */

static int by_read_seq(const void *a, const void *b)
{
    const struct lathe_cfg_key *x = *(const struct lathe_cfg_key *const *)a;
    const struct lathe_cfg_key *y = *(const struct lathe_cfg_key *const *)b;
    return (x->read_seq > y->read_seq) - (x->read_seq < y->read_seq);
}

LATHE_EXPORT int lathe_config_dump(const lathe_config *cfg, void *file)
{
    if (!cfg)
        return lathe_error(LATHE_EINVAL, "lathe_config_dump: no config");
    FILE *f = file ? file : stdout;
    int first = 1;
    for (size_t i = 0; i < cfg->nsections; i++) {
        const lathe_section *s = cfg->sections[i];
        struct lathe_cfg_key **keys = malloc((s->nkeys + 1) * sizeof *keys);
        if (!keys)
            return lathe_error(LATHE_ENOMEM, "out of memory dumping the configuration");
        size_t n = 0;
        for (size_t j = 0; j < s->nkeys; j++)
            if (s->keys[j]->read)
                keys[n++] = s->keys[j];
        qsort(keys, n, sizeof *keys, by_read_seq);
        fprintf(f, "%s[%s]%s\n", first ? "" : "\n", s->name, s->opened ? "" : " ; unknown section");
        first = 0;
        for (size_t j = 0; j < n; j++) {
            const struct lathe_cfg_key *k = keys[j];
            const char *v = k->resolved ? k->resolved : k->value;
            if (!v)
                continue; /* a required key that was missing */
            fprintf(f, "%s = %s%s\n", k->name, v, k->resolved && k->resolved_default ? " ; default" : "");
        }
        for (size_t j = 0; j < s->nkeys; j++) {
            const struct lathe_cfg_key *k = s->keys[j];
            if (!k->read && k->origin != LATHE_CFG_NONE)
                fprintf(f, "%s = %s ; unknown key\n", k->name, k->value);
        }
        free(keys);
    }
    if (fflush(f) != 0 || ferror(f))
        return lathe_error(LATHE_EIO, "cannot write the configuration: %s", strerror(errno));
    return LATHE_OK;
}

LATHE_EXPORT int lathe_section_check_unused(const lathe_section *s)
{
    if (!s)
        return lathe_error(LATHE_EINVAL, "lathe_section_check_unused: no section");
    for (size_t j = 0; j < s->nkeys; j++) {
        const struct lathe_cfg_key *k = s->keys[j];
        if (k->origin != LATHE_CFG_NONE && !k->read)
            return unknown_key(s, k);
    }
    return LATHE_OK;
}
