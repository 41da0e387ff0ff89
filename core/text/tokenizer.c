/* core/text/tokenizer.c — loading tokenizer.json, added tokens,
 * normalisation, encode and decode (lathe/tokenizer.h; formats.md §4).
 *
 * The pipeline is the `tokenizers` library's: added tokens are cut out of
 * the raw text first (those with normalized=false; the others after
 * normalisation), each remaining segment is normalised (NFC, Lowercase),
 * split by the pre-tokenizer stages (pretok.c), and each pre-token goes
 * through byte-level BPE (bpe.c). */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>
#include <unicase.h>
#include <unictype.h>
#include <uninorm.h>

#include <lathe/status.h>
#include <lathe/tokenizer.h>

#include "text/tokenizer_internal.h"

/* ---- UTF-8 ------------------------------------------------------------------ */
/* Length of the valid character at s (1-4), or 0 with *bad set to the length
 * of the maximal invalid subpart (Unicode §3.9, Table 3-7; what Rust's
 * from_utf8_lossy replaces with one U+FFFD). */
static size_t utf8_char(const unsigned char *s, size_t n, size_t *bad)
{
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        if (c == 0xF4)
            hi = 0x8F;
    } else {
        *bad = 1;
        return 0;
    }
    for (size_t i = 1; i < len; i++) {
        unsigned b = i < n ? s[i] : 0;
        unsigned l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (i >= n || b < l || b > h) {
            *bad = i;
            return 0;
        }
    }
    return len;
}

static uint32_t utf8_decode(const unsigned char *s, size_t len)
{
    if (len == 1)
        return s[0];
    uint32_t cp = s[0] & (0x7F >> len);
    for (size_t i = 1; i < len; i++)
        cp = cp << 6 | (s[i] & 0x3F);
    return cp;
}

static size_t utf8_encode(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Offset of the first byte that is not valid UTF-8, or n. */
static size_t utf8_check(const char *text, size_t n)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    while (i < n) {
        /* ASCII runs eight bytes at a time */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ULL)
                break;
            i += 8;
        }
        if (i >= n)
            break;
        size_t bad, k = utf8_char(s + i, n - i, &bad);
        if (k == 0)
            return i;
        i += k;
    }
    return n;
}

/* ---- loading ---------------------------------------------------------------- */
static int fail(lathe_tokenizer *tk, int rc)
{
    lathe_tokenizer_free(tk);
    return rc;
}

/* The decoded bytes of a byte-level token string; -1 if a character is not
 * in the byte alphabet. */
static long decode_token(const char *t, size_t n, char *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        size_t bad, l = utf8_char((const unsigned char *)t + i, n - i, &bad);
        if (l == 0)
            return -1;
        int b = tk_char_byte(utf8_decode((const unsigned char *)t + i, l));
        if (b < 0)
            return -1;
        out[k++] = (char)b;
        i += l;
    }
    return (long)k;
}

static int get_id(lathe_tokenizer *tk, json_t *v, const char *what, const char *name, int64_t *id)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX - 1)
        return lathe_error(LATHE_EINVAL, "%s: %s \"%s\" has no valid id (a non-negative integer)", tk->path, what,
                           name);
    *id = json_integer_value(v);
    return LATHE_OK;
}

static int check_model(lathe_tokenizer *tk, json_t *model)
{
    if (!json_is_object(model))
        return lathe_error(LATHE_EINVAL, "%s: no \"model\" object", tk->path);
    const char *type = json_string_value(json_object_get(model, "type"));
    if (type && strcmp(type, "BPE") != 0)
        return lathe_error(LATHE_EUNSUPPORTED, "%s: model type \"%s\" is not supported (only byte-level \"BPE\")",
                           tk->path, type);
    if (!json_is_object(json_object_get(model, "vocab")) || !json_is_array(json_object_get(model, "merges")))
        return lathe_error(LATHE_EINVAL, "%s: model has no \"vocab\" object or no \"merges\" array", tk->path);
    json_t *v;
    if ((v = json_object_get(model, "dropout")) && !json_is_null(v))
        return lathe_error(LATHE_EUNSUPPORTED, "%s: model.dropout must be null (BPE dropout is not supported)",
                           tk->path);
    if ((v = json_object_get(model, "unk_token")) && !json_is_null(v))
        return lathe_error(LATHE_EUNSUPPORTED,
                           "%s: model.unk_token must be null (byte-level BPE has no unknown token)", tk->path);
    if (json_is_true(json_object_get(model, "byte_fallback")))
        return lathe_error(LATHE_EUNSUPPORTED,
                           "%s: model.byte_fallback=true (SentencePiece-style BPE) is not supported", tk->path);
    static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        v = json_object_get(model, affixes[i]);
        if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0))
            return lathe_error(LATHE_EUNSUPPORTED, "%s: model.%s must be null", tk->path, affixes[i]);
    }
    tk->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
    return LATHE_OK;
}

static int load_vocab(lathe_tokenizer *tk, json_t *vocab, json_t *added)
{
    int64_t max_id = -1, id;
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v)
    {
        int rc = get_id(tk, v, "vocab entry", key, &id);
        if (rc)
            return rc;
        if (id > max_id)
            max_id = id;
    }
    size_t i;
    json_array_foreach(added, i, v)
    {
        const char *c = json_string_value(json_object_get(v, "content"));
        if (c == NULL)
            return lathe_error(LATHE_EINVAL, "%s: added_tokens[%zu] has no \"content\" string", tk->path, i);
        int rc = get_id(tk, json_object_get(v, "id"), "added token", c, &id);
        if (rc)
            return rc;
        if (id > max_id)
            max_id = id;
    }
    tk->n_ids = max_id + 1;
    size_t n = (size_t)tk->n_ids ? (size_t)tk->n_ids : 1;
    tk->tok = calloc(n, sizeof *tk->tok);
    tk->tok_len = calloc(n, sizeof *tk->tok_len);
    tk->raw_key = calloc(n, sizeof *tk->raw_key);
    tk->is_special = calloc(n, 1);
    if (!tk->tok || !tk->tok_len || !tk->raw_key || !tk->is_special)
        return lathe_error(LATHE_ENOMEM, "%s: out of memory for %lld tokens", tk->path, (long long)n);
    for (int b = 0; b < 256; b++)
        tk->byte_id[b] = -1;
    json_object_foreach(vocab, key, v)
    {
        id = json_integer_value(v);
        size_t kl = strlen(key);
        if (tk->tok[id])
            return lathe_error(LATHE_EINVAL, "%s: vocab id %lld is given to both \"%s\" and \"%s\"", tk->path,
                               (long long)id, tk->tok[id], key);
        if ((tk->tok[id] = malloc(kl + 1)) == NULL)
            return lathe_error(LATHE_ENOMEM, "out of memory");
        memcpy(tk->tok[id], key, kl + 1);
        tk->tok_len[id] = (uint32_t)kl;
        int rc = tk_strmap_put(&tk->vocab, tk->tok[id], kl, (int32_t)id);
        if (rc)
            return rc;
        char *raw = malloc(kl + 1);
        if (raw == NULL)
            return lathe_error(LATHE_ENOMEM, "out of memory");
        long rl = decode_token(key, kl, raw);
        if (rl < 0) {
            free(raw);
            continue;
        }
        tk->raw_key[id] = raw;
        if ((rc = tk_strmap_put(&tk->raw, raw, (size_t)rl, (int32_t)id)))
            return rc;
        if (rl == 1)
            tk->byte_id[(unsigned char)raw[0]] = (int32_t)id;
    }
    return LATHE_OK;
}

/* Split "a b" (legacy) or ["a","b"] (tokenizers >= 0.20) into the two ids. */
static int load_merges(lathe_tokenizer *tk, json_t *merges)
{
    size_t i;
    json_t *m;
    char *buf = NULL;
    size_t bcap = 0;
    int rc = LATHE_OK;
    uint32_t rank = 0;
    json_array_foreach(merges, i, m)
    {
        const char *a, *b;
        size_t al, bl;
        if (json_is_string(m)) {
            const char *s = json_string_value(m);
            if (strncmp(s, "#version", 8) == 0)
                continue;
            const char *sp = strchr(s, ' ');
            if (sp == NULL || strchr(sp + 1, ' ') != NULL) {
                rc = lathe_error(LATHE_EINVAL,
                                 "%s: merges[%zu] \"%s\" is not two tokens separated by one space (BadMerges)",
                                 tk->path, i, s);
                break;
            }
            a = s;
            al = (size_t)(sp - s);
            b = sp + 1;
            bl = strlen(b);
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            al = json_string_length(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            bl = json_string_length(json_array_get(m, 1));
        } else {
            rc = lathe_error(LATHE_EINVAL, "%s: merges[%zu] is neither a \"a b\" string nor a [\"a\", \"b\"] pair",
                             tk->path, i);
            break;
        }
        if (al + bl + 1 > bcap) {
            bcap = (al + bl + 1) * 2;
            char *nb = realloc(buf, bcap);
            if (nb == NULL) {
                rc = lathe_error(LATHE_ENOMEM, "out of memory");
                break;
            }
            buf = nb;
        }
        memcpy(buf, a, al);
        memcpy(buf + al, b, bl);
        int32_t ia = tk_strmap_get(&tk->vocab, a, al), ib = tk_strmap_get(&tk->vocab, b, bl);
        int32_t io = tk_strmap_get(&tk->vocab, buf, al + bl);
        if (ia < 0 || ib < 0 || io < 0) {
            const char *which = ia < 0 ? "first token" : ib < 0 ? "second token" : "merged token";
            rc = lathe_error(LATHE_EINVAL, "%s: merges[%zu] (\"%.*s\" + \"%.*s\"): the %s is not in the vocab",
                             tk->path, i, (int)al, a, (int)bl, b, which);
            break;
        }
        if ((rc = tk_merges_put(tk, ia, ib, rank++, io)))
            break;
    }
    free(buf);
    return rc;
}

static int normalize(const lathe_tokenizer *tk, const char *s, size_t n, char **out, size_t *on);

static int cmp_len_desc(const void *a, const void *b, void *ctx)
{
    const struct tk_added *ad = ctx;
    size_t la = ad[*(const size_t *)a].len, lb = ad[*(const size_t *)b].len;
    return la < lb ? 1 : la > lb ? -1 : 0;
}

static int load_added(lathe_tokenizer *tk, json_t *added)
{
    size_t n = json_array_size(added);
    if (n == 0)
        return LATHE_OK;
    tk->added = calloc(n, sizeof *tk->added);
    if (tk->added == NULL)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    size_t i;
    json_t *v;
    json_array_foreach(added, i, v)
    {
        struct tk_added *a = &tk->added[tk->n_added++];
        json_t *c = json_object_get(v, "content");
        a->id = (int32_t)json_integer_value(json_object_get(v, "id"));
        a->special = json_is_true(json_object_get(v, "special"));
        a->lstrip = json_is_true(json_object_get(v, "lstrip"));
        a->rstrip = json_is_true(json_object_get(v, "rstrip"));
        a->single_word = json_is_true(json_object_get(v, "single_word"));
        a->normalized = json_is_true(json_object_get(v, "normalized"));
        if (json_string_length(c) == 0)
            return lathe_error(LATHE_EINVAL, "%s: added_tokens[%zu] has empty content", tk->path, i);
        if (a->normalized && tk->n_norm) {
            /* matched in normalised text, so compare with normalised content */
            int rc = normalize(tk, json_string_value(c), json_string_length(c), &a->content, &a->len);
            if (rc)
                return rc;
        } else {
            a->len = json_string_length(c);
            if ((a->content = malloc(a->len + 1)) == NULL)
                return lathe_error(LATHE_ENOMEM, "out of memory");
            memcpy(a->content, json_string_value(c), a->len + 1);
        }
        if (tk->tok[a->id] == NULL) {
            size_t cl = json_string_length(c);
            if ((tk->tok[a->id] = malloc(cl + 1)) == NULL)
                return lathe_error(LATHE_ENOMEM, "out of memory");
            memcpy(tk->tok[a->id], json_string_value(c), cl + 1);
            tk->tok_len[a->id] = (uint32_t)cl;
        }
        tk->is_special[a->id] = (uint8_t)a->special;
        int rc = tk_strmap_put(&tk->added_map, tk->tok[a->id], tk->tok_len[a->id], a->id);
        if (rc)
            return rc;
        if (a->normalized)
            tk->n_norm_added++;
    }
    for (int pass = 0; pass < 2; pass++) {
        size_t **lists = pass ? tk->first_norm : tk->first_raw, *counts = pass ? tk->n_first_norm : tk->n_first_raw;
        for (size_t k = 0; k < tk->n_added; k++) {
            struct tk_added *a = &tk->added[k];
            if (a->normalized != pass)
                continue;
            unsigned char b = (unsigned char)a->content[0];
            size_t *l = realloc(lists[b], (counts[b] + 1) * sizeof *l);
            if (l == NULL)
                return lathe_error(LATHE_ENOMEM, "out of memory");
            l[counts[b]++] = k;
            lists[b] = l;
        }
        /* longest first, so the first hit at a position is the longest
         * (tokenizers matches leftmost-longest) */
        for (int b = 0; b < 256; b++)
            if (counts[b] > 1)
                qsort_r(lists[b], counts[b], sizeof(size_t), cmp_len_desc, tk->added);
    }
    return LATHE_OK;
}

static int load_normalizer(lathe_tokenizer *tk, json_t *j)
{
    if (j == NULL || json_is_null(j))
        return LATHE_OK;
    const char *type = json_string_value(json_object_get(j, "type"));
    if (type && strcmp(type, "Sequence") == 0) {
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(j, "normalizers"), i, e)
        {
            int rc = load_normalizer(tk, e);
            if (rc)
                return rc;
        }
        return LATHE_OK;
    }
    uint8_t op = 0;
    if (type && strcmp(type, "NFC") == 0)
        op = TK_NORM_NFC;
    else if (type && strcmp(type, "Lowercase") == 0)
        op = TK_NORM_LOWER;
    else
        return lathe_error(LATHE_EUNSUPPORTED,
                           "%s: normalizer type \"%s\" is not supported (supported: NFC, Lowercase, Sequence)",
                           tk->path, type ? type : "(missing)");
    if (tk->n_norm == sizeof tk->norm)
        return lathe_error(LATHE_EUNSUPPORTED, "%s: more than %zu normalizers", tk->path, sizeof tk->norm);
    tk->norm[tk->n_norm++] = op;
    return LATHE_OK;
}

static int append_special_ids(lathe_tokenizer *tk, json_t *specials, const char *name, int32_t **arr, size_t *n)
{
    json_t *ids = json_object_get(json_object_get(specials, name), "ids");
    if (!json_is_array(ids))
        return lathe_error(LATHE_EINVAL,
                           "%s: post_processor TemplateProcessing names \"%s\" but special_tokens has no ids for it",
                           tk->path, name);
    size_t i;
    json_t *v;
    json_array_foreach(ids, i, v)
    {
        int32_t *p = realloc(*arr, (*n + 1) * sizeof *p);
        if (p == NULL)
            return lathe_error(LATHE_ENOMEM, "out of memory");
        *arr = p;
        p[(*n)++] = (int32_t)json_integer_value(v);
    }
    return LATHE_OK;
}

static int load_post(lathe_tokenizer *tk, json_t *j)
{
    if (j == NULL || json_is_null(j))
        return LATHE_OK;
    const char *type = json_string_value(json_object_get(j, "type"));
    if (type && strcmp(type, "ByteLevel") == 0)
        return LATHE_OK; /* only moves offsets */
    if (type && strcmp(type, "Sequence") == 0) {
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(j, "processors"), i, e)
        {
            int rc = load_post(tk, e);
            if (rc)
                return rc;
        }
        return LATHE_OK;
    }
    if (type && strcmp(type, "TemplateProcessing") == 0) {
        json_t *single = json_object_get(j, "single"), *specials = json_object_get(j, "special_tokens");
        int seen_seq = 0;
        size_t i;
        json_t *e;
        json_array_foreach(single, i, e)
        {
            json_t *st = json_object_get(e, "SpecialToken");
            if (json_object_get(e, "Sequence")) {
                seen_seq = 1;
                continue;
            }
            const char *name = json_string_value(json_object_get(st, "id"));
            if (name == NULL)
                return lathe_error(LATHE_EINVAL, "%s: post_processor TemplateProcessing single[%zu] is malformed",
                                   tk->path, i);
            int rc = seen_seq ? append_special_ids(tk, specials, name, &tk->suffix, &tk->n_suffix)
                              : append_special_ids(tk, specials, name, &tk->prefix, &tk->n_prefix);
            if (rc)
                return rc;
        }
        return LATHE_OK;
    }
    return lathe_error(LATHE_EUNSUPPORTED,
                       "%s: post_processor type \"%s\" is not supported (supported: ByteLevel, TemplateProcessing, "
                       "Sequence)",
                       tk->path, type ? type : "(missing)");
}

static int check_decoder(lathe_tokenizer *tk, json_t *j)
{
    const char *type = json_string_value(json_object_get(j, "type"));
    if (type && strcmp(type, "ByteLevel") == 0)
        return LATHE_OK;
    if (type && strcmp(type, "Sequence") == 0) {
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(j, "decoders"), i, e)
        {
            int rc = check_decoder(tk, e);
            if (rc)
                return rc;
        }
        return LATHE_OK;
    }
    return lathe_error(LATHE_EUNSUPPORTED, "%s: decoder %s%s%s is not supported (only ByteLevel)", tk->path,
                       type ? "type \"" : "", type ? type : "null", type ? "\"" : "");
}

int lathe_tokenizer_load(lathe_tokenizer **out, const char *path)
{
    *out = NULL;
    if (path == NULL)
        return lathe_error(LATHE_EINVAL, "lathe_tokenizer_load: path is NULL");
    lathe_tokenizer *tk = calloc(1, sizeof *tk);
    if (tk == NULL)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    struct stat st;
    if (stat(path, &st) != 0)
        return fail(tk, lathe_error(LATHE_EIO, "%s: %s", path, strerror(errno)));
    size_t pl = strlen(path);
    tk->path = malloc(pl + sizeof "/tokenizer.json");
    if (tk->path == NULL)
        return fail(tk, lathe_error(LATHE_ENOMEM, "out of memory"));
    strcpy(tk->path, path);
    if (S_ISDIR(st.st_mode))
        strcpy(tk->path + pl, pl && path[pl - 1] == '/' ? "tokenizer.json" : "/tokenizer.json");

    json_error_t jerr;
    json_t *root = json_load_file(tk->path, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return fail(tk, lathe_error(LATHE_EIO, "%s:%d:%d: %s", tk->path, jerr.line, jerr.column, jerr.text));
    json_t *model = json_object_get(root, "model"), *added = json_object_get(root, "added_tokens");
    if (added && !json_is_array(added) && !json_is_null(added)) {
        json_decref(root);
        return fail(tk, lathe_error(LATHE_EINVAL, "%s: \"added_tokens\" is not an array", tk->path));
    }
    int rc = check_model(tk, model);
    if (rc == LATHE_OK)
        rc = load_normalizer(tk, json_object_get(root, "normalizer"));
    if (rc == LATHE_OK)
        rc = load_vocab(tk, json_object_get(model, "vocab"), added);
    if (rc == LATHE_OK)
        rc = load_merges(tk, json_object_get(model, "merges"));
    if (rc == LATHE_OK)
        rc = load_added(tk, added);
    if (rc == LATHE_OK)
        rc = tk_pre_parse(tk, json_object_get(root, "pre_tokenizer"));
    if (rc == LATHE_OK)
        rc = load_post(tk, json_object_get(root, "post_processor"));
    if (rc == LATHE_OK)
        rc = check_decoder(tk, json_object_get(root, "decoder"));
    if (rc == LATHE_OK)
        rc = tk_cache_init(tk);
    json_decref(root);
    if (rc)
        return fail(tk, rc);
    *out = tk;
    return LATHE_OK;
}

void lathe_tokenizer_free(lathe_tokenizer *tk)
{
    if (tk == NULL)
        return;
    tk_cache_free(tk);
    tk_pre_free(tk);
    for (int64_t i = 0; i < tk->n_ids; i++) {
        free(tk->tok ? tk->tok[i] : NULL);
        free(tk->raw_key ? tk->raw_key[i] : NULL);
    }
    free(tk->tok);
    free(tk->tok_len);
    free(tk->raw_key);
    free(tk->is_special);
    tk_strmap_free(&tk->vocab);
    tk_strmap_free(&tk->raw);
    tk_strmap_free(&tk->added_map);
    tk_merges_free(&tk->merges);
    for (size_t i = 0; i < tk->n_added; i++)
        free(tk->added[i].content);
    free(tk->added);
    for (int b = 0; b < 256; b++) {
        free(tk->first_raw[b]);
        free(tk->first_norm[b]);
    }
    free(tk->prefix);
    free(tk->suffix);
    free(tk->path);
    free(tk);
}

/* ---- normalisation ---------------------------------------------------------- */
static int is_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80)
            return 0;
    return 1;
}

/* *out is malloc'd (the caller frees it). */
static int normalize(const lathe_tokenizer *tk, const char *s, size_t n, char **out, size_t *on)
{
    char *cur = malloc(n + 1);
    if (cur == NULL)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    memcpy(cur, s, n);
    size_t cn = n;
    for (size_t k = 0; k < tk->n_norm; k++) {
        int ascii = is_ascii(cur, cn);
        if (tk->norm[k] == TK_NORM_NFC && ascii)
            continue; /* ASCII is already NFC */
        if (tk->norm[k] == TK_NORM_LOWER && ascii) {
            for (size_t i = 0; i < cn; i++)
                if (cur[i] >= 'A' && cur[i] <= 'Z')
                    cur[i] = (char)(cur[i] + 32);
            continue;
        }
        size_t rn = 0;
        uint8_t *r = tk->norm[k] == TK_NORM_NFC
                         ? u8_normalize(UNINORM_NFC, (const uint8_t *)cur, cn, NULL, &rn)
                         : u8_tolower((const uint8_t *)cur, cn, NULL, NULL, NULL, &rn);
        if (r == NULL) {
            free(cur);
            return lathe_error(LATHE_ENOMEM, "normalising %zu bytes of text failed: %s", cn, strerror(errno));
        }
        free(cur);
        cur = (char *)r;
        cn = rn;
    }
    *out = cur;
    *on = cn;
    return LATHE_OK;
}

/* ---- added tokens --------------------------------------------------------------- */
static int is_white(uint32_t c)
{
    /* Rust's char::is_whitespace (Unicode White_Space) */
    return (c >= 9 && c <= 13) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

static int is_word(uint32_t c)
{
    /* Rust's char::is_alphanumeric */
    return uc_is_property_alphabetic(c) || uc_is_general_category(c, UC_CATEGORY_N);
}

/* The character that ends at s+end (end > 0), assuming valid UTF-8. */
static uint32_t char_before(const char *s, size_t end)
{
    size_t b = end - 1;
    while (b > 0 && ((unsigned char)s[b] & 0xC0) == 0x80)
        b--;
    return utf8_decode((const unsigned char *)s + b, end - b);
}

static uint32_t char_at(const char *s, size_t n, size_t at, size_t *len)
{
    size_t bad;
    *len = utf8_char((const unsigned char *)s + at, n - at, &bad);
    if (*len == 0)
        *len = 1;
    return utf8_decode((const unsigned char *)s + at, *len);
}

/* Next added token in s[from..n): 1 with [*ms, *me) the span to cut (with
 * lstrip/rstrip white space) and *id, or 0. `floor` is where the previous
 * cut ended, below which lstrip may not reach. */
static int find_added(const lathe_tokenizer *tk, size_t *const *lists, const size_t *counts, const char *s, size_t n,
                      size_t from, size_t floor, size_t *ms, size_t *me, int32_t *id)
{
    for (size_t i = from; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        size_t nc = counts[b];
        if (nc == 0)
            continue;
        for (size_t k = 0; k < nc; k++) {
            const struct tk_added *a = &tk->added[lists[b][k]];
            if (a->len > n - i || memcmp(s + i, a->content, a->len) != 0)
                continue;
            size_t start = i, stop = i + a->len;
            if (a->single_word) {
                /* a word character right before or after: not this token;
                 * go on after it, as the Aho-Corasick scan does */
                size_t l;
                if ((start > 0 && is_word(char_before(s, start))) || (stop < n && is_word(char_at(s, n, stop, &l)))) {
                    i = stop - 1;
                    break;
                }
            }
            if (a->lstrip) {
                while (start > floor && is_white(char_before(s, start))) {
                    size_t b0 = start - 1;
                    while (b0 > 0 && ((unsigned char)s[b0] & 0xC0) == 0x80)
                        b0--;
                    start = b0;
                }
            }
            if (a->rstrip) {
                size_t l;
                while (stop < n && is_white(char_at(s, n, stop, &l)))
                    stop += l;
            }
            *ms = start;
            *me = stop;
            *id = a->id;
            return 1;
        }
    }
    return 0;
}

/* ---- encode ------------------------------------------------------------------- */
struct enc {
    const lathe_tokenizer *tk;
    int32_t *ids;
    size_t n, cap;
    struct tk_pieces pieces, tmp;
    pcre2_match_data **md;
};

static int push_id(struct enc *e, int32_t id)
{
    if (e->n == e->cap) {
        size_t c = e->cap ? e->cap * 2 : 256;
        int32_t *p = realloc(e->ids, c * sizeof *p);
        if (p == NULL)
            return lathe_error(LATHE_ENOMEM, "out of memory for token ids");
        e->ids = p;
        e->cap = c;
    }
    e->ids[e->n++] = id;
    return LATHE_OK;
}

static int encode_plain(struct enc *e, const char *s, size_t n)
{
    if (n == 0)
        return LATHE_OK;
    int rc = tk_pre_run(e->tk, s, n, &e->pieces, &e->tmp, e->md);
    for (size_t i = 0; i < e->pieces.n && rc == LATHE_OK; i++)
        rc = tk_bpe_word(e->tk, e->pieces.buf + e->pieces.off[i], e->pieces.plen[i], &e->ids, &e->n, &e->cap);
    return rc;
}

/* Cut s at the added tokens of one kind; the gaps go to `next`. */
static int split_added(struct enc *e, const char *s, size_t n, int normalized,
                       int (*next)(struct enc *, const char *, size_t))
{
    const lathe_tokenizer *tk = e->tk;
    size_t *const *lists = normalized ? tk->first_norm : tk->first_raw;
    const size_t *counts = normalized ? tk->n_first_norm : tk->n_first_raw;
    size_t pos = 0;
    size_t ms, me;
    int32_t id;
    while (pos < n && find_added(tk, lists, counts, s, n, pos, pos, &ms, &me, &id)) {
        int rc = next(e, s + pos, ms - pos);
        if (rc == LATHE_OK)
            rc = push_id(e, id);
        if (rc)
            return rc;
        pos = me;
    }
    return next(e, s + pos, n - pos);
}

static int encode_normalized(struct enc *e, const char *s, size_t n)
{
    if (e->tk->n_norm_added == 0)
        return encode_plain(e, s, n);
    return split_added(e, s, n, 1, encode_plain);
}

static int encode_segment(struct enc *e, const char *s, size_t n)
{
    if (n == 0)
        return LATHE_OK;
    if (e->tk->n_norm == 0)
        return encode_normalized(e, s, n);
    char *ns;
    size_t nn;
    int rc = normalize(e->tk, s, n, &ns, &nn);
    if (rc)
        return rc;
    rc = encode_normalized(e, ns, nn);
    free(ns);
    return rc;
}

int lathe_tokenizer_encode(const lathe_tokenizer *tk, const char *text, size_t len, int add_special, int32_t **ids,
                           size_t *n)
{
    *ids = NULL;
    *n = 0;
    if (text == NULL && len > 0)
        return lathe_error(LATHE_EINVAL, "lathe_tokenizer_encode: text is NULL");
    size_t bad = utf8_check(text, len);
    if (bad < len)
        return lathe_error(LATHE_EINVAL, "text is not valid UTF-8 at byte offset %zu (byte 0x%02X); fix the input "
                           "encoding", bad, (unsigned char)text[bad]);
    struct enc e = {.tk = tk};
    int rc = LATHE_OK;
    e.md = calloc(tk->n_pre ? tk->n_pre : 1, sizeof *e.md);
    if (e.md == NULL)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    for (size_t k = 0; k < tk->n_pre && rc == LATHE_OK; k++)
        if (tk->pre[k].re && (e.md[k] = pcre2_match_data_create(1, NULL)) == NULL)
            rc = lathe_error(LATHE_ENOMEM, "out of memory");
    for (size_t k = 0; add_special && k < tk->n_prefix && rc == LATHE_OK; k++)
        rc = push_id(&e, tk->prefix[k]);
    if (rc == LATHE_OK)
        rc = split_added(&e, text, len, 0, encode_segment);
    for (size_t k = 0; add_special && k < tk->n_suffix && rc == LATHE_OK; k++)
        rc = push_id(&e, tk->suffix[k]);
    for (size_t k = 0; k < tk->n_pre; k++)
        pcre2_match_data_free(e.md[k]);
    free(e.md);
    tk_pieces_free(&e.pieces);
    tk_pieces_free(&e.tmp);
    if (rc) {
        free(e.ids);
        return rc;
    }
    if (e.ids == NULL && (e.ids = malloc(sizeof *e.ids)) == NULL)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    *ids = e.ids;
    *n = e.n;
    return LATHE_OK;
}

/* ---- decode ------------------------------------------------------------------- */
int lathe_tokenizer_decode(const lathe_tokenizer *tk, const int32_t *ids, size_t n, int skip_special, char **text)
{
    *text = NULL;
    size_t cap = 64, len = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= tk->n_ids)
            return lathe_error(LATHE_EINVAL, "token id %d at position %zu is out of range (the vocabulary has %lld ids)",
                               ids[i], i, (long long)tk->n_ids);
        if (tk->tok[ids[i]])
            cap += tk->tok_len[ids[i]];
    }
    char *bytes = malloc(cap);
    if (bytes == NULL)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        /* `tokenizers` skips ids without a token */
        if (tk->tok[id] == NULL || (skip_special && tk->is_special[id]))
            continue;
        /* the ByteLevel decoder maps each character back to its byte; a
         * token with a character outside the alphabet (an added token such
         * as <｜User｜>) goes out as its UTF-8 */
        long k = decode_token(tk->tok[id], tk->tok_len[id], bytes + len);
        if (k < 0) {
            memcpy(bytes + len, tk->tok[id], tk->tok_len[id]);
            k = tk->tok_len[id];
        }
        len += (size_t)k;
    }
    /* bytes → UTF-8, each maximal invalid subpart as U+FFFD (what
     * String::from_utf8_lossy does in the ByteLevel decoder) */
    char *out = malloc(len * 3 + 1);
    if (out == NULL) {
        free(bytes);
        return lathe_error(LATHE_ENOMEM, "out of memory");
    }
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t bad, k = utf8_char((const unsigned char *)bytes + i, len - i, &bad);
        if (k) {
            memcpy(out + o, bytes + i, k);
            o += k;
            i += k;
        } else {
            o += utf8_encode(0xFFFD, out + o);
            i += bad;
        }
    }
    out[o] = '\0';
    free(bytes);
    *text = out;
    return LATHE_OK;
}

/* ---- lookups ------------------------------------------------------------------ */
int64_t lathe_tokenizer_vocab_size(const lathe_tokenizer *tk)
{
    return tk->n_ids;
}

int32_t lathe_tokenizer_token_id(const lathe_tokenizer *tk, const char *token)
{
    if (token == NULL)
        return -1;
    size_t n = strlen(token);
    int32_t id = tk_strmap_get(&tk->added_map, token, n);
    return id >= 0 ? id : tk_strmap_get(&tk->vocab, token, n);
}

const char *lathe_tokenizer_token(const lathe_tokenizer *tk, int32_t id)
{
    return id >= 0 && id < tk->n_ids ? tk->tok[id] : NULL;
}

int lathe_tokenizer_is_special(const lathe_tokenizer *tk, int32_t id)
{
    return id >= 0 && id < tk->n_ids && tk->is_special[id];
}
