/* core/text/chat.c — chat formats: render a conversation the way the
 * model's chat template does and tokenize it with the mask of the tokens to
 * learn.
 *
 * Templates (formats.md 4.5): Qwen2-Instruct's ChatML, DeepSeek-R1's
 * original template, Meta-Llama-3-Instruct's (content `| trim`med).
 *
 * Tokenization. The rendered text is a list of parts: special tokens (their
 * ids looked up) and text parts flagged "learn" or not. The `tokenizers`
 * library splits raw text around added tokens before anything else, so
 * encoding each run of text between two special tokens on its own gives the
 * ids of the whole rendered string. Inside a run the learn flag may change
 * (ChatML "assistant\n" + content); the token where it changes is found by
 * encoding the run's prefix: if its ids are a prefix of the run's ids the
 * boundary falls between tokens, otherwise a token straddles it (content
 * starting with "\n" merges with the role's newline) and that token is
 * learnt, as it carries assistant bytes.
 */
#include <lathe/lathe.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- names ------------------------------------------------------------ */

static const char *const format_names[LATHE_CHAT_FORMAT_COUNT] = {"chatml", "deepseek-r1", "llama3"};

const char *lathe_chat_format_name(int format)
{
    return format >= 0 && format < LATHE_CHAT_FORMAT_COUNT ? format_names[format] : "unknown";
}

int lathe_chat_format_parse(const char *name, int *format)
{
    for (int f = 0; f < LATHE_CHAT_FORMAT_COUNT; f++)
        if (name && strcmp(name, format_names[f]) == 0) {
            *format = f;
            return LATHE_OK;
        }
    return lathe_error(LATHE_EINVAL, "unknown chat format '%s'; use chatml, deepseek-r1 or llama3",
                       name ? name : "(null)");
}

/* The special tokens of each format (UTF-8: ｜ is U+FF5C, ▁ U+2581). */
#define DS_BOS "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define DS_EOS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define DS_USER "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define DS_ASSISTANT "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"

/* What marks each format in a chat template or a vocabulary. */
static const char *const format_marker[LATHE_CHAT_FORMAT_COUNT] = {"<|im_start|>", DS_ASSISTANT,
                                                                   "<|start_header_id|>"};
static const char *const format_stop[LATHE_CHAT_FORMAT_COUNT] = {"<|im_end|>", DS_EOS, "<|eot_id|>"};

/* Qwen2-Instruct's default system prompt. */
static const char chatml_default_system[] = "You are a helpful assistant.";

int32_t lathe_chat_stop_token(const lathe_tokenizer *tk, int format)
{
    if (!tk || format < 0 || format >= LATHE_CHAT_FORMAT_COUNT)
        return -1;
    return lathe_tokenizer_token_id(tk, format_stop[format]);
}

/* ---- detection ---------------------------------------------------------- */

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            size_t nc = cap ? cap * 2 : 65536;
            char *nb = realloc(buf, nc);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
            cap = nc;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    fclose(f);
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

/* The chat template of model_dir (malloc'd), or NULL when it has none:
 * tokenizer_config.json's chat_template (a string, or a list of
 * {name, template} where "default" wins), else chat_template.jinja. */
static char *read_template(const char *model_dir)
{
    if (!model_dir || !model_dir[0])
        return NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", model_dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    char *out = NULL;
    if (root) {
        json_t *t = json_object_get(root, "chat_template");
        if (json_is_array(t)) {
            json_t *pick = NULL, *e;
            size_t i;
            json_array_foreach(t, i, e) {
                const char *nm = json_string_value(json_object_get(e, "name"));
                if (!pick || (nm && strcmp(nm, "default") == 0))
                    pick = e;
            }
            t = pick ? json_object_get(pick, "template") : NULL;
        }
        if (json_is_string(t))
            out = strdup(json_string_value(t));
        json_decref(root);
    }
    if (!out) {
        snprintf(path, sizeof path, "%s/chat_template.jinja", model_dir);
        out = read_file(path, NULL);
    }
    return out;
}

int lathe_chat_format_detect(const char *model_dir, const lathe_tokenizer *tk, int *format)
{
    const char *where = model_dir && model_dir[0] ? model_dir : "(no directory)";
    char *tpl = read_template(model_dir);
    int found = -1, nfound = 0;
    if (tpl) {
        for (int f = 0; f < LATHE_CHAT_FORMAT_COUNT; f++)
            if (strstr(tpl, format_marker[f])) {
                found = f;
                nfound++;
            }
        free(tpl);
        if (nfound == 1) {
            *format = found;
            return LATHE_OK;
        }
    }
    /* No usable template: the format whose turn tokens the vocabulary has,
     * when only one does. */
    int tfound = -1, ntfound = 0;
    char names[128] = "";
    for (int f = 0; tk && f < LATHE_CHAT_FORMAT_COUNT; f++)
        if (lathe_tokenizer_token_id(tk, format_marker[f]) >= 0 &&
            lathe_tokenizer_token_id(tk, format_stop[f]) >= 0) {
            tfound = f;
            ntfound++;
            size_t l = strlen(names);
            snprintf(names + l, sizeof names - l, "%s%s", l ? ", " : "", format_names[f]);
        }
    if (ntfound == 1) {
        *format = tfound;
        return LATHE_OK;
    }
    return lathe_error(LATHE_EINVAL,
                       "cannot tell the chat format of '%s': %s, and the tokenizer's special tokens "
                       "fit %s; name it (template = chatml, deepseek-r1 or llama3; --template NAME)",
                       where,
                       nfound > 1 ? "its chat template has the markers of several formats"
                                  : "it has no chat template (tokenizer_config.json chat_template) with "
                                    "<|im_start|>, <\xef\xbd\x9c" "Assistant\xef\xbd\x9c> or <|start_header_id|>",
                       ntfound ? names : "none of them");
}

int lathe_chat_default_system(const char *model_dir, int format, char **text)
{
    *text = NULL;
    if (format != LATHE_CHAT_CHATML)
        return LATHE_OK;
    char *tpl = read_template(model_dir);
    if (!tpl)
        return LATHE_OK;
    /* The default turn is a Jinja string literal
     * '<|im_start|>system\nTEXT<|im_end|>\n'; other "<|im_start|>system"
     * occurrences are followed by an expression (quotes, braces). */
    static const char head[] = "<|im_start|>system";
    for (const char *p = strstr(tpl, head); p; p = strstr(p + 1, head)) {
        const char *s = p + sizeof head - 1;
        if (s[0] == '\n')
            s += 1;
        else if (s[0] == '\\' && s[1] == 'n')
            s += 2;
        else
            continue;
        const char *e = strstr(s, "<|im_end|>");
        if (!e || e == s || memchr(s, '{', (size_t)(e - s)) || memchr(s, '}', (size_t)(e - s)))
            continue;
        int literal = 1;
        for (const char *q = s; q < e && literal; q++)
            literal = !((*q == '\'' || *q == '"') && (q == s || q[-1] != '\\'));
        if (!literal)
            continue;
        char *out = malloc((size_t)(e - s) + 1);
        if (!out) {
            free(tpl);
            return lathe_error(LATHE_ENOMEM, "chat: out of memory");
        }
        /* undo the Jinja string escapes */
        size_t n = 0;
        for (const char *q = s; q < e; q++) {
            if (q[0] == '\\' && q + 1 < e) {
                q++;
                out[n++] = *q == 'n' ? '\n' : *q == 't' ? '\t' : *q;
            } else {
                out[n++] = *q;
            }
        }
        out[n] = '\0';
        *text = out;
        break;
    }
    free(tpl);
    return LATHE_OK;
}

/* ---- parsing ---------------------------------------------------------- */

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "a list";
    case JSON_STRING: return "a string";
    case JSON_INTEGER:
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static int role_known(const char *r)
{
    return strcmp(r, "system") == 0 || strcmp(r, "user") == 0 || strcmp(r, "assistant") == 0;
}

int lathe_chat_parse(const char *text, size_t len, int require_assistant, struct lathe_chat_msg **msgs,
                     size_t *n)
{
    *msgs = NULL;
    *n = 0;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_DECODE_ANY, &jerr);
    if (!root)
        return lathe_error(LATHE_EINVAL, "invalid JSON at column %d: %s", jerr.column, jerr.text);
    int rc = LATHE_OK;
    json_t *list = root;
    if (json_is_object(root)) {
        list = json_object_get(root, "messages");
        if (!list) {
            rc = lathe_error(LATHE_EINVAL, "the object has no \"messages\" key (a line is a list of "
                             "{\"role\", \"content\"} messages or an object with \"messages\")");
            goto out;
        }
        if (!json_is_array(list)) {
            rc = lathe_error(LATHE_EINVAL, "\"messages\" is %s, not a list of messages", json_kind(list));
            goto out;
        }
    } else if (!json_is_array(root)) {
        rc = lathe_error(LATHE_EINVAL, "the line is %s, not a list of {\"role\", \"content\"} messages "
                         "or an object with \"messages\"", json_kind(root));
        goto out;
    }
    size_t count = json_array_size(list);
    if (count == 0) {
        rc = lathe_error(LATHE_EINVAL, "the conversation has no messages");
        goto out;
    }
    size_t bytes = count * sizeof(struct lathe_chat_msg);
    int assistant = 0;
    for (size_t i = 0; i < count; i++) {
        json_t *m = json_array_get(list, i);
        if (!json_is_object(m)) {
            rc = lathe_error(LATHE_EINVAL, "message %zu is %s, not an object with \"role\" and \"content\"",
                             i + 1, json_kind(m));
            goto out;
        }
        json_t *r = json_object_get(m, "role"), *c = json_object_get(m, "content");
        if (!r) {
            rc = lathe_error(LATHE_EINVAL, "message %zu has no \"role\"", i + 1);
            goto out;
        }
        if (!json_is_string(r)) {
            rc = lathe_error(LATHE_EINVAL, "message %zu: \"role\" is %s, not a string", i + 1, json_kind(r));
            goto out;
        }
        if (!role_known(json_string_value(r))) {
            rc = lathe_error(LATHE_EINVAL, "message %zu: unknown role '%s' (use system, user or assistant)",
                             i + 1, json_string_value(r));
            goto out;
        }
        if (!c) {
            rc = lathe_error(LATHE_EINVAL, "message %zu (%s) has no \"content\"", i + 1, json_string_value(r));
            goto out;
        }
        if (!json_is_string(c)) {
            rc = lathe_error(LATHE_EINVAL, "message %zu (%s): \"content\" is %s, not a string", i + 1,
                             json_string_value(r), json_kind(c));
            goto out;
        }
        assistant |= strcmp(json_string_value(r), "assistant") == 0;
        bytes += json_string_length(r) + json_string_length(c) + 2;
    }
    if (require_assistant && !assistant) {
        rc = lathe_error(LATHE_EINVAL, "the conversation has no assistant message (nothing to learn)");
        goto out;
    }
    struct lathe_chat_msg *out = malloc(bytes);
    if (!out) {
        rc = lathe_error(LATHE_ENOMEM, "chat: out of memory for a conversation of %zu messages", count);
        goto out;
    }
    char *p = (char *)(out + count);
    for (size_t i = 0; i < count; i++) {
        json_t *m = json_array_get(list, i);
        json_t *vals[2] = {json_object_get(m, "role"), json_object_get(m, "content")};
        const char **dst[2] = {&out[i].role, &out[i].content};
        for (int k = 0; k < 2; k++) {
            size_t l = json_string_length(vals[k]);
            memcpy(p, json_string_value(vals[k]), l);
            p[l] = '\0';
            *dst[k] = p;
            p += l + 1;
        }
    }
    *msgs = out;
    *n = count;
out:
    json_decref(root);
    return rc;
}

/* ---- rendering -------------------------------------------------------- */

struct part {
    const char *s;
    size_t len;
    uint8_t special; /* s names a special token */
    uint8_t learn;
};

struct parts {
    struct part *v;
    size_t n, cap;
    int oom;
};

static void put(struct parts *ps, const char *s, size_t len, int special, int learn)
{
    if (!special && len == 0)
        return;
    if (ps->n == ps->cap) {
        size_t nc = ps->cap ? ps->cap * 2 : 32;
        struct part *nv = realloc(ps->v, nc * sizeof *nv);
        if (!nv) {
            ps->oom = 1;
            return;
        }
        ps->v = nv;
        ps->cap = nc;
    }
    ps->v[ps->n++] = (struct part){s, len, (uint8_t)special, (uint8_t)learn};
}

static void put_text(struct parts *ps, const char *s, int learn) { put(ps, s, strlen(s), 0, learn); }
static void put_special(struct parts *ps, const char *tok, int learn) { put(ps, tok, strlen(tok), 1, learn); }

/* Python's str.strip() (what Jinja's trim does): Unicode whitespace at
 * both ends. Returns the length of the UTF-8 sequence at s if it is white
 * space, else 0. */
static size_t space_len(const unsigned char *s, size_t left)
{
    if (left >= 1 && ((s[0] >= 0x09 && s[0] <= 0x0D) || (s[0] >= 0x1C && s[0] <= 0x20)))
        return 1;
    if (left >= 2 && s[0] == 0xC2 && (s[1] == 0x85 || s[1] == 0xA0))
        return 2;
    if (left >= 3) {
        unsigned cp = ((unsigned)(s[0] & 0x0F) << 12) | ((unsigned)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        if ((s[0] & 0xF0) == 0xE0 &&
            (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
             cp == 0x205F || cp == 0x3000))
            return 3;
    }
    return 0;
}

static void trim(const char *s, const char **start, size_t *len)
{
    const unsigned char *b = (const unsigned char *)s, *e = b + strlen(s);
    size_t k;
    while (b < e && (k = space_len(b, (size_t)(e - b))))
        b += k;
    /* from the end: step back over whole UTF-8 sequences */
    for (;;) {
        const unsigned char *p = e;
        while (p > b && (p[-1] & 0xC0) == 0x80 && e - p < 3)
            p--;
        if (p > b)
            p--;
        if (p < e && p >= b && space_len(p, (size_t)(e - p)) == (size_t)(e - p)) {
            e = p;
            continue;
        }
        break;
    }
    *start = (const char *)b;
    *len = (size_t)(e - b);
}

static void render(int format, const struct lathe_chat_msg *m, size_t n, int gen, struct parts *ps)
{
    switch (format) {
    case LATHE_CHAT_CHATML:
        if (n == 0 || strcmp(m[0].role, "system") != 0) {
            put_special(ps, "<|im_start|>", 0);
            put_text(ps, "system\n", 0);
            put_text(ps, chatml_default_system, 0);
            put_special(ps, "<|im_end|>", 0);
            put_text(ps, "\n", 0);
        }
        for (size_t i = 0; i < n; i++) {
            int a = strcmp(m[i].role, "assistant") == 0;
            put_special(ps, "<|im_start|>", 0);
            put_text(ps, m[i].role, 0);
            put_text(ps, "\n", 0);
            put_text(ps, m[i].content, a);
            put_special(ps, "<|im_end|>", a);
            put_text(ps, "\n", 0);
        }
        if (gen) {
            put_special(ps, "<|im_start|>", 0);
            put_text(ps, "assistant\n", 0);
        }
        break;
    case LATHE_CHAT_DEEPSEEK_R1: {
        /* The template gathers every system message up front, joined by a
         * blank line. The final assistant message of a training sample
         * keeps its reasoning; earlier ones keep only what follows their
         * last </think>, as the template renders history. */
        size_t final = (!gen && n > 0 && strcmp(m[n - 1].role, "assistant") == 0) ? n - 1 : (size_t)-1;
        put_special(ps, DS_BOS, 0);
        int first = 1;
        for (size_t i = 0; i < n; i++)
            if (strcmp(m[i].role, "system") == 0) {
                if (!first)
                    put_text(ps, "\n\n", 0);
                put_text(ps, m[i].content, 0);
                first = 0;
            }
        for (size_t i = 0; i < n; i++) {
            if (strcmp(m[i].role, "user") == 0) {
                put_special(ps, DS_USER, 0);
                put_text(ps, m[i].content, 0);
            } else if (strcmp(m[i].role, "assistant") == 0) {
                const char *c = m[i].content;
                if (i != final) {
                    for (const char *t = strstr(c, "</think>"); t; t = strstr(t + 1, "</think>"))
                        c = t + strlen("</think>");
                }
                put_special(ps, DS_ASSISTANT, 0);
                put_text(ps, c, 1);
                put_special(ps, DS_EOS, 1);
            }
        }
        if (gen)
            put_special(ps, DS_ASSISTANT, 0);
        break;
    }
    case LATHE_CHAT_LLAMA3:
        put_special(ps, "<|begin_of_text|>", 0);
        for (size_t i = 0; i < n; i++) {
            int a = strcmp(m[i].role, "assistant") == 0;
            const char *c;
            size_t cl;
            trim(m[i].content, &c, &cl);
            put_special(ps, "<|start_header_id|>", 0);
            put_text(ps, m[i].role, 0);
            put_special(ps, "<|end_header_id|>", 0);
            put_text(ps, "\n\n", 0);
            put(ps, c, cl, 0, a);
            put_special(ps, "<|eot_id|>", a);
        }
        if (gen) {
            put_special(ps, "<|start_header_id|>", 0);
            put_text(ps, "assistant", 0);
            put_special(ps, "<|end_header_id|>", 0);
            put_text(ps, "\n\n", 0);
        }
        break;
    }
}

/* ---- tokenizing ------------------------------------------------------- */

struct outbuf {
    int32_t *ids;
    uint8_t *mask;
    size_t n, cap;
};

static int out_reserve(struct outbuf *o, size_t more)
{
    if (o->n + more <= o->cap)
        return LATHE_OK;
    size_t nc = o->cap ? o->cap : 256;
    while (nc < o->n + more)
        nc *= 2;
    int32_t *ni = realloc(o->ids, nc * sizeof *ni);
    if (ni)
        o->ids = ni;
    uint8_t *nm = ni ? realloc(o->mask, nc) : NULL;
    if (!ni || !nm)
        return lathe_error(LATHE_ENOMEM, "chat: out of memory for %zu tokens", nc);
    o->mask = nm;
    o->cap = nc;
    return LATHE_OK;
}

/* Encode text parts p[0..np) (no special token among them) as one run. */
static int encode_run(const lathe_tokenizer *tk, const struct part *p, size_t np, struct outbuf *o)
{
    size_t total = 0;
    for (size_t i = 0; i < np; i++)
        total += p[i].len;
    if (total == 0)
        return LATHE_OK;
    char *buf = malloc(total);
    if (!buf)
        return lathe_error(LATHE_ENOMEM, "chat: out of memory for %zu bytes of text", total);
    size_t off = 0;
    for (size_t i = 0; i < np; i++) {
        memcpy(buf + off, p[i].s, p[i].len);
        off += p[i].len;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = lathe_tokenizer_encode(tk, buf, total, 0, &ids, &n);
    if (rc || (rc = out_reserve(o, n))) {
        free(buf);
        free(ids);
        return rc;
    }
    uint8_t *mask = o->mask + o->n;
    memset(mask, p[0].learn, n);
    off = p[0].len;
    int cur = p[0].learn;
    for (size_t i = 1; i < np; off += p[i].len, i++) {
        if (p[i].learn == cur)
            continue;
        int32_t *pids = NULL;
        size_t pn = 0;
        if ((rc = lathe_tokenizer_encode(tk, buf, off, 0, &pids, &pn))) {
            free(buf);
            free(ids);
            return rc;
        }
        size_t s = 0;
        while (s < pn && s < n && pids[s] == ids[s])
            s++;
        free(pids);
        /* s < pn: token s straddles the boundary; it is learnt */
        size_t start = (s < pn && !p[i].learn) ? s + 1 : s;
        if (start < n)
            memset(mask + start, p[i].learn, n - start);
        cur = p[i].learn;
    }
    memcpy(o->ids + o->n, ids, n * sizeof *ids);
    o->n += n;
    free(buf);
    free(ids);
    return LATHE_OK;
}

int lathe_chat_encode(const lathe_tokenizer *tk, int format, const struct lathe_chat_msg *msgs, size_t n,
                      int add_generation_prompt, int32_t **ids, uint8_t **mask, size_t *ntok)
{
    *ids = NULL;
    *mask = NULL;
    *ntok = 0;
    if (!tk)
        return lathe_error(LATHE_EINVAL, "chat: no tokenizer");
    if (format < 0 || format >= LATHE_CHAT_FORMAT_COUNT)
        return lathe_error(LATHE_EINVAL, "chat: unknown format %d; use chatml, deepseek-r1 or llama3", format);
    if (n > 0 && !msgs)
        return lathe_error(LATHE_EINVAL, "chat: %zu messages but no array", n);
    for (size_t i = 0; i < n; i++) {
        if (!msgs[i].role || !msgs[i].content)
            return lathe_error(LATHE_EINVAL, "chat: message %zu has no %s", i + 1,
                               msgs[i].role ? "content" : "role");
        if (!role_known(msgs[i].role))
            return lathe_error(LATHE_EINVAL, "chat: message %zu: unknown role '%s' (use system, user or "
                               "assistant)", i + 1, msgs[i].role);
    }
    struct parts ps = {0};
    render(format, msgs, n, add_generation_prompt, &ps);
    if (ps.oom) {
        free(ps.v);
        return lathe_error(LATHE_ENOMEM, "chat: out of memory rendering %zu messages", n);
    }
    struct outbuf o = {0};
    int rc = LATHE_OK;
    for (size_t i = 0; i < ps.n && !rc;) {
        if (ps.v[i].special) {
            int32_t id = lathe_tokenizer_token_id(tk, ps.v[i].s);
            if (id < 0)
                rc = lathe_error(LATHE_EINVAL, "chat: the tokenizer has no %s token, which the %s format "
                                 "needs; choose the template of this model (chatml, deepseek-r1, llama3)",
                                 ps.v[i].s, format_names[format]);
            else if (!(rc = out_reserve(&o, 1))) {
                o.ids[o.n] = id;
                o.mask[o.n++] = ps.v[i].learn;
            }
            i++;
            continue;
        }
        size_t j = i;
        while (j < ps.n && !ps.v[j].special)
            j++;
        rc = encode_run(tk, ps.v + i, j - i, &o);
        i = j;
    }
    free(ps.v);
    if (rc) {
        free(o.ids);
        free(o.mask);
        return rc;
    }
    *ids = o.ids;
    *mask = o.mask;
    *ntok = o.n;
    return LATHE_OK;
}
