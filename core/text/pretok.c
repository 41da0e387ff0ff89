/* core/text/pretok.c — pre-tokenizers: Split (regex or string, the five
 * behaviours, invert), ByteLevel (prefix space, the GPT-2 regex), Digits and
 * Sequence, as the `tokenizers` library defines them (formats.md §4.2).
 *
 * `tokenizers` runs its regexes with Oniguruma; we use PCRE2 with
 * PCRE2_UTF | PCRE2_UCP, which agrees on the classes these patterns use
 * (\p{L}, \p{N}, \p{P}, \p{S}, \p{M}, (?!\S), (?i:...)) except that PCRE2's
 * \s also takes U+180E. Patterns are rewritten to spell \s as Oniguruma's
 * list (checked against `tokenizers` 0.23 code point by code point). */
#define _GNU_SOURCE /* memmem */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <lathe/status.h>

#include "text/tokenizer_internal.h"

/* GPT-2's split regex, used by ByteLevel when use_regex is true. */
static const char gpt2_regex[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* Oniguruma's Unicode \s: U+0009-000D, U+0020, U+0085 and the Z categories. */
static const char onig_space[] =
    "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";

/* Copy pattern p with \s spelt out; malloc'd. \S inside a class is left to
 * PCRE2 (differs only at U+180E). */
static char *rewrite_space(const char *p)
{
    size_t n = strlen(p), cap = n * 4 + sizeof onig_space * 8 + 16, o = 0;
    /* worst case: every two bytes "\s" become sizeof onig_space + 3 */
    size_t worst = (n / 2 + 1) * (sizeof onig_space + 4) + n + 1;
    if (cap < worst)
        cap = worst;
    char *out = malloc(cap);
    if (out == NULL)
        return NULL;
    int in_class = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char d = p[i + 1];
            if (d == 's' || (d == 'S' && !in_class)) {
                if (!in_class)
                    out[o++] = '[';
                if (d == 'S')
                    out[o++] = '^';
                memcpy(out + o, onig_space, sizeof onig_space - 1);
                o += sizeof onig_space - 1;
                if (!in_class)
                    out[o++] = ']';
            } else {
                out[o++] = c;
                out[o++] = d;
            }
            i++;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = 1;
            out[o++] = c;
            /* a ']' right after '[' or '[^' is a literal */
            if (i + 1 < n && p[i + 1] == '^')
                out[o++] = p[++i];
            if (i + 1 < n && p[i + 1] == ']')
                out[o++] = p[++i];
            continue;
        }
        if (in_class && c == '[' && i + 1 < n && p[i + 1] == ':') {
            const char *end = strstr(p + i + 2, ":]");
            if (end) {
                size_t k = (size_t)(end + 2 - (p + i));
                memcpy(out + o, p + i, k);
                o += k;
                i += k - 1;
                continue;
            }
        }
        if (in_class && c == ']')
            in_class = 0;
        out[o++] = c;
    }
    out[o] = '\0';
    return out;
}

static int compile_regex(const struct lathe_tokenizer *tk, const char *pattern, pcre2_code **out)
{
    char *pat = rewrite_space(pattern);
    if (pat == NULL)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    int err;
    PCRE2_SIZE eoff;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &eoff, NULL);
    free(pat);
    if (re == NULL) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return lathe_error(LATHE_EUNSUPPORTED, "%s: pre_tokenizer regex \"%s\" does not compile with PCRE2: %s",
                           tk->path, pattern, (const char *)msg);
    }
    /* JIT is an optimisation: without it (a platform PCRE2 cannot JIT on)
     * pcre2_match interprets the pattern */
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    *out = re;
    return LATHE_OK;
}

static int add_stage(struct lathe_tokenizer *tk, struct tk_pre st)
{
    struct tk_pre *p = realloc(tk->pre, (tk->n_pre + 1) * sizeof *p);
    if (p == NULL) {
        pcre2_code_free(st.re);
        free(st.literal);
        return lathe_error(LATHE_ENOMEM, "out of memory");
    }
    tk->pre = p;
    tk->pre[tk->n_pre++] = st;
    return LATHE_OK;
}

static int parse_one(struct lathe_tokenizer *tk, json_t *j, int *seen_bytelevel)
{
    const char *type = json_string_value(json_object_get(j, "type"));
    if (type == NULL)
        return lathe_error(LATHE_EINVAL, "%s: pre_tokenizer has no \"type\"", tk->path);
    if (*seen_bytelevel)
        return lathe_error(LATHE_EUNSUPPORTED,
                           "%s: pre_tokenizer %s after ByteLevel is not supported (ByteLevel must come last)",
                           tk->path, type);
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(j, "pretokenizers");
        if (!json_is_array(list))
            return lathe_error(LATHE_EINVAL, "%s: pre_tokenizer Sequence has no \"pretokenizers\" array", tk->path);
        size_t i;
        json_t *e;
        json_array_foreach(list, i, e)
        {
            int rc = parse_one(tk, e, seen_bytelevel);
            if (rc)
                return rc;
        }
        return LATHE_OK;
    }
    if (strcmp(type, "ByteLevel") == 0) {
        *seen_bytelevel = 1;
        json_t *aps = json_object_get(j, "add_prefix_space"), *ur = json_object_get(j, "use_regex");
        if (json_is_true(aps)) {
            int rc = add_stage(tk, (struct tk_pre){.kind = TK_PRE_BYTELEVEL, .add_prefix_space = 1});
            if (rc)
                return rc;
        }
        if (ur == NULL || json_is_true(ur)) { /* use_regex defaults to true */
            struct tk_pre st = {.kind = TK_PRE_SPLIT, .behavior = TK_ISOLATED};
            int rc = compile_regex(tk, gpt2_regex, &st.re);
            if (rc == LATHE_OK)
                rc = add_stage(tk, st);
            return rc;
        }
        return LATHE_OK;
    }
    if (strcmp(type, "Digits") == 0) {
        /* `tokenizers` splits on char::is_numeric, i.e. \p{N} */
        struct tk_pre st = {.kind = TK_PRE_SPLIT};
        st.behavior = json_is_true(json_object_get(j, "individual_digits")) ? TK_ISOLATED : TK_CONTIGUOUS;
        int rc = compile_regex(tk, "\\p{N}", &st.re);
        if (rc == LATHE_OK)
            rc = add_stage(tk, st);
        return rc;
    }
    if (strcmp(type, "Split") == 0) {
        struct tk_pre st = {.kind = TK_PRE_SPLIT};
        const char *b = json_string_value(json_object_get(j, "behavior"));
        static const char *const names[] = {"Isolated", "Removed", "MergedWithPrevious", "MergedWithNext",
                                            "Contiguous"};
        int found = 0;
        for (int k = 0; k < 5 && b; k++)
            if (strcmp(b, names[k]) == 0) {
                st.behavior = (enum tk_behavior)k;
                found = 1;
            }
        if (!found)
            return lathe_error(LATHE_EUNSUPPORTED,
                               "%s: pre_tokenizer Split behavior \"%s\" is not one of Isolated, Removed, "
                               "MergedWithPrevious, MergedWithNext, Contiguous",
                               tk->path, b ? b : "(missing)");
        st.invert = json_is_true(json_object_get(j, "invert"));
        json_t *pat = json_object_get(j, "pattern");
        const char *rx = json_string_value(json_object_get(pat, "Regex"));
        const char *lit = json_string_value(json_object_get(pat, "String"));
        if (rx) {
            int rc = compile_regex(tk, rx, &st.re);
            if (rc)
                return rc;
        } else if (lit && *lit) {
            st.literal_len = json_string_length(json_object_get(pat, "String"));
            st.literal = malloc(st.literal_len + 1);
            if (st.literal == NULL)
                return lathe_error(LATHE_ENOMEM, "out of memory");
            memcpy(st.literal, lit, st.literal_len + 1);
        } else {
            return lathe_error(LATHE_EINVAL,
                               "%s: pre_tokenizer Split needs \"pattern\": {\"Regex\": \"...\"} or a non-empty "
                               "{\"String\": \"...\"}",
                               tk->path);
        }
        return add_stage(tk, st);
    }
    return lathe_error(LATHE_EUNSUPPORTED,
                       "%s: pre_tokenizer type \"%s\" is not supported (supported: ByteLevel, Split, Digits, "
                       "Sequence)",
                       tk->path, type);
}

int tk_pre_parse(struct lathe_tokenizer *tk, const void *json)
{
    json_t *j = (json_t *)json;
    int seen = 0;
    if (j == NULL || json_is_null(j))
        return lathe_error(LATHE_EUNSUPPORTED,
                           "%s: pre_tokenizer is null; only byte-level BPE (a ByteLevel pre-tokenizer) is supported",
                           tk->path);
    int rc = parse_one(tk, j, &seen);
    if (rc == LATHE_OK && !seen)
        rc = lathe_error(LATHE_EUNSUPPORTED,
                         "%s: pre_tokenizer has no ByteLevel stage; only byte-level BPE is supported", tk->path);
    return rc;
}

void tk_pre_free(struct lathe_tokenizer *tk)
{
    for (size_t i = 0; i < tk->n_pre; i++) {
        pcre2_code_free(tk->pre[i].re);
        free(tk->pre[i].literal);
    }
    free(tk->pre);
    tk->pre = NULL;
    tk->n_pre = 0;
}

/* ---- pieces ---------------------------------------------------------------- */
int tk_pieces_add(struct tk_pieces *p, const char *s, size_t n, int prefix_space)
{
    size_t need = p->len + n + (prefix_space ? 1 : 0);
    if (need > p->cap) {
        size_t c = p->cap ? p->cap : 1024;
        while (c < need)
            c *= 2;
        char *b = realloc(p->buf, c);
        if (b == NULL)
            return lathe_error(LATHE_ENOMEM, "out of memory splitting text");
        p->buf = b;
        p->cap = c;
    }
    if (p->n == p->ncap) {
        size_t c = p->ncap ? p->ncap * 2 : 256;
        size_t *o = realloc(p->off, c * sizeof *o);
        if (o)
            p->off = o;
        size_t *l = o ? realloc(p->plen, c * sizeof *l) : NULL;
        if (l == NULL)
            return lathe_error(LATHE_ENOMEM, "out of memory splitting text");
        p->plen = l;
        p->ncap = c;
    }
    p->off[p->n] = p->len;
    p->plen[p->n] = n + (prefix_space ? 1 : 0);
    if (prefix_space)
        p->buf[p->len++] = ' ';
    memcpy(p->buf + p->len, s, n);
    p->len += n;
    p->n++;
    return LATHE_OK;
}

void tk_pieces_free(struct tk_pieces *p)
{
    free(p->buf);
    free(p->off);
    free(p->plen);
    memset(p, 0, sizeof *p);
}

/* ---- splitting ------------------------------------------------------------- */
struct span {
    size_t s, e;
    int m;
};
struct spans {
    struct span *v;
    size_t n, cap;
};

static int spans_push(struct spans *sp, size_t s, size_t e, int m)
{
    if (sp->n == sp->cap) {
        size_t c = sp->cap ? sp->cap * 2 : 64;
        struct span *v = realloc(sp->v, c * sizeof *v);
        if (v == NULL)
            return lathe_error(LATHE_ENOMEM, "out of memory splitting text");
        sp->v = v;
        sp->cap = c;
    }
    sp->v[sp->n++] = (struct span){s, e, m};
    return LATHE_OK;
}

static size_t utf8_len(unsigned char c)
{
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

/* Next match at or after `from`: 1 found, 0 none, <0 error. */
static int find_next(const struct tk_pre *st, const char *s, size_t n, size_t from, pcre2_match_data *md,
                     size_t *ms, size_t *me)
{
    if (st->re == NULL) {
        const char *p = memmem(s + from, n - from, st->literal, st->literal_len);
        if (p == NULL)
            return 0;
        *ms = (size_t)(p - s);
        *me = *ms + st->literal_len;
        return 1;
    }
    /* the text was checked as UTF-8 once, up front */
    int rc = pcre2_match(st->re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, md, NULL);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
        rc = pcre2_match(st->re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH)
        return 0;
    if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        return lathe_error(LATHE_ERR, "pre-tokenizer regex failed at byte %zu: %s", from, (const char *)msg);
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    *ms = ov[0];
    *me = ov[1];
    return 1;
}

/* The matches and gaps of one piece, as `tokenizers` finds them
 * (Pattern::find_matches over Oniguruma's find_iter: an empty match right
 * where the previous one ended is skipped by stepping one character). */
static int find_matches(const struct tk_pre *st, const char *s, size_t n, pcre2_match_data *md, struct spans *sp)
{
    sp->n = 0;
    size_t prev = 0, last_end = 0;
    int have_last = 0;
    size_t last_match_end = 0;
    while (last_end <= n) {
        size_t ms, me;
        int f = find_next(st, s, n, last_end, md, &ms, &me);
        if (f < 0)
            return f;
        if (f == 0)
            break;
        if (ms == me && have_last && last_match_end == me) {
            last_end += last_end < n ? utf8_len((unsigned char)s[last_end]) : 1;
            continue;
        }
        last_end = me;
        last_match_end = me;
        have_last = 1;
        int rc;
        if (prev != ms && (rc = spans_push(sp, prev, ms, 0)))
            return rc;
        if ((rc = spans_push(sp, ms, me, 1)))
            return rc;
        prev = me;
    }
    if (prev != n)
        return spans_push(sp, prev, n, 0);
    return LATHE_OK;
}

/* Apply the behaviour to the matches in place (tokenizers'
 * NormalizedString::split); m becomes "remove this span". */
static void apply_behavior(enum tk_behavior b, int invert, struct spans *sp)
{
    for (size_t i = 0; i < sp->n; i++)
        sp->v[i].m ^= invert;
    if (b == TK_ISOLATED || b == TK_REMOVED) {
        if (b == TK_ISOLATED)
            for (size_t i = 0; i < sp->n; i++)
                sp->v[i].m = 0;
        return;
    }
    size_t k = 0;
    int prev_m = 0;
    if (b == TK_MERGED_NEXT) {
        /* built from the right: a match joins the span after it */
        size_t w = sp->n;
        for (size_t i = sp->n; i-- > 0;) {
            struct span c = sp->v[i];
            if (c.m && !prev_m && w < sp->n)
                sp->v[w].s = c.s;
            else
                sp->v[--w] = (struct span){c.s, c.e, 0};
            prev_m = c.m;
        }
        memmove(sp->v, sp->v + w, (sp->n - w) * sizeof *sp->v);
        sp->n -= w;
        return;
    }
    for (size_t i = 0; i < sp->n; i++) {
        struct span c = sp->v[i];
        int join = b == TK_CONTIGUOUS ? (c.m == prev_m) : (c.m && !prev_m);
        if (join && k > 0)
            sp->v[k - 1].e = c.e;
        else
            sp->v[k++] = (struct span){c.s, c.e, 0};
        prev_m = c.m;
    }
    sp->n = k;
}

int tk_pre_run(const struct lathe_tokenizer *tk, const char *s, size_t n, struct tk_pieces *out,
               struct tk_pieces *tmp, pcre2_match_data **md)
{
    struct tk_pieces *src = tmp, *dst = out;
    struct spans sp = {0};
    int rc = LATHE_OK;
    src->n = src->len = 0;
    if ((rc = tk_pieces_add(src, s, n, 0)))
        return rc;
    for (size_t k = 0; k < tk->n_pre && rc == LATHE_OK; k++) {
        const struct tk_pre *st = &tk->pre[k];
        dst->n = dst->len = 0;
        for (size_t i = 0; i < src->n && rc == LATHE_OK; i++) {
            const char *p = src->buf + src->off[i];
            size_t pn = src->plen[i];
            if (st->kind == TK_PRE_BYTELEVEL) {
                rc = tk_pieces_add(dst, p, pn, pn == 0 || p[0] != ' ');
                continue;
            }
            if ((rc = find_matches(st, p, pn, md[k], &sp)))
                break;
            apply_behavior(st->behavior, st->invert, &sp);
            for (size_t j = 0; j < sp.n && rc == LATHE_OK; j++)
                if (!sp.v[j].m && sp.v[j].e > sp.v[j].s)
                    rc = tk_pieces_add(dst, p + sp.v[j].s, sp.v[j].e - sp.v[j].s, 0);
        }
        struct tk_pieces *t = src;
        src = dst;
        dst = t;
    }
    free(sp.v);
    if (rc == LATHE_OK && src != out) {
        struct tk_pieces t = *out;
        *out = *src;
        *src = t;
    }
    return rc;
}
