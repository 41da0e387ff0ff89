/* tests/check_tokenizer.c — the tokenizer.json reader (lathe/tokenizer.h)
 * against ids made by the reference `tokenizers` library
 * (tests/fixtures/tokenizers/make_tokenizers.py): small byte-level BPE
 * tokenizers trained there and configured like GPT-2, Qwen2, DeepSeek-V3
 * and Llama 3, on texts in many scripts, code, digits, emoji, white space
 * runs and special tokens. */
#define _GNU_SOURCE /* mkdtemp, nftw */
#include "testutil.h"

#include <lathe/status.h>
#include <lathe/tokenizer.h>

#include <ftw.h>
#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const names[] = {"gpt2", "qwen2", "deepseek-v3", "llama3"};
enum { NTOK = 4 };

static char tmpdir[256];

static void tmp_setup(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/lathe-tok-XXXXXX", base && *base ? base : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static void tmp_teardown(void)
{
    if (tmpdir[0])
        nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    tmpdir[0] = '\0';
}

static const char *fixture(const char *file)
{
    static char buf[4][1024];
    static int k;
    const char *top = getenv("top_srcdir");
    char *b = buf[k++ % 4];
    snprintf(b, sizeof buf[0], "%s/tests/fixtures/tokenizers/%s", top ? top : ".", file);
    return b;
}

static const char *tok_path(const char *name)
{
    char f[128];
    snprintf(f, sizeof f, "%s.json", name);
    return fixture(f);
}

static json_t *load_json(const char *path)
{
    json_error_t e;
    json_t *j = json_load_file(path, JSON_ALLOW_NUL, &e);
    ck_assert_msg(j != NULL, "%s:%d: %s", path, e.line, e.text);
    return j;
}

static lathe_tokenizer *load_tok(const char *name)
{
    lathe_tokenizer *tk = NULL;
    int rc = lathe_tokenizer_load(&tk, tok_path(name));
    ck_assert_msg(rc == LATHE_OK, "%s: %s", name, lathe_errmsg());
    return tk;
}

static void check_ids(const char *name, size_t ti, const char *what, const int32_t *got, size_t n, json_t *want)
{
    size_t wn = json_array_size(want), i = 0;
    while (i < n && i < wn && got[i] == (int32_t)json_integer_value(json_array_get(want, i)))
        i++;
    ck_assert_msg(i == n && n == wn,
                  "%s text %zu (%s): %zu ids, reference %zu; first difference at %zu: %d vs %lld", name, ti, what, n,
                  wn, i, i < n ? got[i] : -1, i < wn ? (long long)json_integer_value(json_array_get(want, i)) : -1LL);
}

/* ---- Core ------------------------------------------------------------------- */
START_TEST(test_reference_ids)
{
    const char *name = names[_i];
    lathe_tokenizer *tk = load_tok(name);
    json_t *texts = load_json(fixture("texts.json"));
    char ef[128];
    snprintf(ef, sizeof ef, "expected-%s.json", name);
    json_t *exp = load_json(fixture(ef));
    json_t *ids = json_object_get(exp, "ids"), *ids_sp = json_object_get(exp, "ids_special");
    json_t *dec = json_object_get(exp, "decoded"), *dec_skip = json_object_get(exp, "decoded_skip");
    ck_assert_uint_eq(json_array_size(texts), json_array_size(ids));
    for (size_t t = 0; t < json_array_size(texts); t++) {
        const char *text = json_string_value(json_array_get(texts, t));
        size_t len = json_string_length(json_array_get(texts, t));
        int32_t *got;
        size_t n;
        int rc = lathe_tokenizer_encode(tk, text, len, 0, &got, &n);
        ck_assert_msg(rc == LATHE_OK, "%s text %zu: %s", name, t, lathe_errmsg());
        check_ids(name, t, "plain", got, n, json_array_get(ids, t));

        char *back;
        ck_assert_int_eq(lathe_tokenizer_decode(tk, got, n, 0, &back), LATHE_OK);
        ck_assert_msg(strcmp(back, json_string_value(json_array_get(dec, t))) == 0, "%s text %zu: decode differs",
                      name, t);
        /* only Qwen2 normalises (NFC), so elsewhere decode(encode(x)) == x */
        if (strcmp(name, "qwen2") != 0)
            ck_assert_msg(back[len] == '\0' && memcmp(back, text, len) == 0, "%s text %zu: no round trip", name, t);
        free(back);
        ck_assert_int_eq(lathe_tokenizer_decode(tk, got, n, 1, &back), LATHE_OK);
        ck_assert_msg(strcmp(back, json_string_value(json_array_get(dec_skip, t))) == 0,
                      "%s text %zu: decode(skip_special) differs", name, t);
        free(back);
        free(got);

        ck_assert_int_eq(lathe_tokenizer_encode(tk, text, len, 1, &got, &n), LATHE_OK);
        check_ids(name, t, "add_special", got, n, json_array_get(ids_sp, t));
        free(got);
    }
    json_decref(exp);
    json_decref(texts);
    lathe_tokenizer_free(tk);
}
END_TEST

/* Components the four files do not use (add_prefix_space, the other Split
 * behaviours, invert, String patterns, Digits, Lowercase, lstrip/rstrip/
 * single_word/normalized added tokens), as edits of a base file. */
START_TEST(test_reference_variants)
{
    json_t *texts = load_json(fixture("texts.json"));
    json_t *vars = load_json(fixture("expected-variants.json"));
    ck_assert_uint_gt(json_array_size(vars), 0);
    for (size_t v = 0; v < json_array_size(vars); v++) {
        json_t *var = json_array_get(vars, v);
        const char *base = json_string_value(json_object_get(var, "base"));
        json_t *j = load_json(tok_path(base));
        ck_assert_int_eq(json_object_update(j, json_object_get(var, "set")), 0);
        char path[512], name[64];
        snprintf(path, sizeof path, "%s/variant%zu.json", tmpdir, v);
        ck_assert_int_eq(json_dump_file(j, path, 0), 0);
        json_decref(j);
        lathe_tokenizer *tk = NULL;
        ck_assert_msg(lathe_tokenizer_load(&tk, path) == LATHE_OK, "variant %zu: %s", v, lathe_errmsg());
        snprintf(name, sizeof name, "variant %zu (%s)", v, base);
        json_t *ids = json_object_get(var, "ids");
        for (size_t t = 0; t < json_array_size(texts); t++) {
            int32_t *got;
            size_t n;
            const char *text = json_string_value(json_array_get(texts, t));
            size_t len = json_string_length(json_array_get(texts, t));
            ck_assert_msg(lathe_tokenizer_encode(tk, text, len, 0, &got, &n) == LATHE_OK, "%s", lathe_errmsg());
            check_ids(name, t, "plain", got, n, json_array_get(ids, t));
            free(got);
        }
        lathe_tokenizer_free(tk);
    }
    json_decref(vars);
    json_decref(texts);
}
END_TEST

START_TEST(test_lookups)
{
    lathe_tokenizer *tk = load_tok("qwen2");
    ck_assert_int_eq(lathe_tokenizer_vocab_size(tk), 2500);
    ck_assert_int_eq(lathe_tokenizer_token_id(tk, "<|endoftext|>"), 0);
    ck_assert_int_eq(lathe_tokenizer_token_id(tk, "<|im_start|>"), 1);
    ck_assert_int_eq(lathe_tokenizer_token_id(tk, "<|im_end|>"), 2);
    ck_assert(lathe_tokenizer_is_special(tk, 1));
    ck_assert_str_eq(lathe_tokenizer_token(tk, 2), "<|im_end|>");
    int32_t the = lathe_tokenizer_token_id(tk, "Ġthe");
    ck_assert_int_ge(the, 3);
    ck_assert_str_eq(lathe_tokenizer_token(tk, the), "Ġthe");
    ck_assert(!lathe_tokenizer_is_special(tk, the));
    ck_assert_int_eq(lathe_tokenizer_token_id(tk, "no such token here"), -1);
    ck_assert_ptr_null(lathe_tokenizer_token(tk, 2500));
    ck_assert_ptr_null(lathe_tokenizer_token(tk, -1));
    /* "\n" is the byte-level character U+010A */
    ck_assert_int_ge(lathe_tokenizer_token_id(tk, "\xc4\x8a"), 0);
    lathe_tokenizer_free(tk);

    /* DeepSeek: BOS at 0, <think> an added token that is not special */
    tk = load_tok("deepseek-v3");
    ck_assert_int_eq(lathe_tokenizer_token_id(tk, "<｜begin▁of▁sentence｜>"), 0);
    ck_assert(lathe_tokenizer_is_special(tk, 0));
    int32_t think = lathe_tokenizer_token_id(tk, "<think>");
    ck_assert_int_ge(think, 2500);
    ck_assert(!lathe_tokenizer_is_special(tk, think));
    ck_assert_int_eq(lathe_tokenizer_vocab_size(tk), think + 2);
    int32_t *ids;
    size_t n;
    ck_assert_int_eq(lathe_tokenizer_encode(tk, "hi", 2, 1, &ids, &n), LATHE_OK);
    ck_assert_uint_ge(n, 2);
    ck_assert_int_eq(ids[0], 0);
    free(ids);
    ck_assert_int_eq(lathe_tokenizer_encode(tk, "", 0, 1, &ids, &n), LATHE_OK);
    ck_assert_uint_eq(n, 1);
    free(ids);
    lathe_tokenizer_free(tk);

    /* Llama 3: specials after the vocabulary, BOS through a Sequence post-processor */
    tk = load_tok("llama3");
    int32_t bot = lathe_tokenizer_token_id(tk, "<|begin_of_text|>");
    ck_assert_int_eq(bot, 2500);
    ck_assert_int_eq(lathe_tokenizer_encode(tk, "", 0, 1, &ids, &n), LATHE_OK);
    ck_assert_uint_eq(n, 1);
    ck_assert_int_eq(ids[0], bot);
    free(ids);
    lathe_tokenizer_free(tk);

    /* GPT-2 / Qwen2: no BOS */
    tk = load_tok("gpt2");
    ck_assert_int_eq(lathe_tokenizer_encode(tk, "", 0, 1, &ids, &n), LATHE_OK);
    ck_assert_uint_eq(n, 0);
    free(ids);
    lathe_tokenizer_free(tk);
}
END_TEST

START_TEST(test_load_directory)
{
    char dst[512];
    snprintf(dst, sizeof dst, "%s/tokenizer.json", tmpdir);
    FILE *in = fopen(tok_path("gpt2"), "rb"), *out = fopen(dst, "wb");
    ck_assert(in && out);
    char buf[4096];
    size_t r;
    while ((r = fread(buf, 1, sizeof buf, in)) > 0)
        fwrite(buf, 1, r, out);
    fclose(in);
    fclose(out);
    lathe_tokenizer *tk;
    ck_assert_msg(lathe_tokenizer_load(&tk, tmpdir) == LATHE_OK, "%s", lathe_errmsg());
    ck_assert_int_eq(lathe_tokenizer_token_id(tk, "<|endoftext|>"), 0);
    lathe_tokenizer_free(tk);
}
END_TEST

/* Several threads share one tokenizer (and its cache) and must get the
 * single-thread answer. */
struct thr {
    const lathe_tokenizer *tk;
    const char *text;
    size_t len;
    const int32_t *want;
    size_t nwant;
    int ok;
};

static void *thr_main(void *p)
{
    struct thr *t = p;
    t->ok = 1;
    for (int r = 0; r < 20 && t->ok; r++) {
        int32_t *ids;
        size_t n;
        if (lathe_tokenizer_encode(t->tk, t->text, t->len, 0, &ids, &n) != LATHE_OK)
            t->ok = 0;
        else if (n != t->nwant || memcmp(ids, t->want, n * sizeof *ids) != 0)
            t->ok = 0;
        free(ids);
    }
    return NULL;
}

START_TEST(test_threads)
{
    lathe_tokenizer *tk = load_tok("qwen2");
    json_t *texts = load_json(fixture("texts.json"));
    /* all texts joined, so the threads hit the cache from many words */
    size_t total = 0;
    for (size_t i = 0; i < json_array_size(texts); i++)
        total += json_string_length(json_array_get(texts, i));
    char *all = malloc(total + 1);
    size_t o = 0;
    for (size_t i = 0; i < json_array_size(texts); i++) {
        size_t l = json_string_length(json_array_get(texts, i));
        memcpy(all + o, json_string_value(json_array_get(texts, i)), l);
        o += l;
    }
    int32_t *want;
    size_t nwant;
    ck_assert_int_eq(lathe_tokenizer_encode(tk, all, total, 0, &want, &nwant), LATHE_OK);
    pthread_t th[4];
    struct thr t[4];
    for (int i = 0; i < 4; i++) {
        t[i] = (struct thr){tk, all, total, want, nwant, 0};
        ck_assert_int_eq(pthread_create(&th[i], NULL, thr_main, &t[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ck_assert(t[i].ok);
    }
    free(want);
    free(all);
    json_decref(texts);
    lathe_tokenizer_free(tk);
}
END_TEST

START_TEST(test_cli)
{
    const char *bin = getenv("LATHE_BIN");
    if (bin == NULL || access(bin, X_OK) != 0)
        return; /* run outside `make check` */
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s' tokenize --model '%s' 'Hello<|im_end|>' 2>&1", bin, tok_path("qwen2"));
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    char out[8192];
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    ck_assert_int_eq(pclose(p), 0);
    ck_assert_msg(strstr(out, "ids:") && strstr(out, "[special] <|im_end|>"), "%s", out);
    snprintf(cmd, sizeof cmd, "'%s' tokenize --model '%s/nonexistent' x 2>&1", bin, tmpdir);
    p = popen(cmd, "r");
    n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    ck_assert_int_eq(WEXITSTATUS(pclose(p)), 1);
    ck_assert_msg(strstr(out, "nonexistent") != NULL, "%s", out);
}
END_TEST

/* ---- Limits ------------------------------------------------------------------- */
START_TEST(test_invalid_utf8)
{
    lathe_tokenizer *tk = load_tok("gpt2");
    static const struct {
        const char *s;
        size_t len, off;
    } bad[] = {
        {"ab\xff" "cd", 5, 2},       /* never valid */
        {"hello \xe4\xbd", 8, 6},    /* truncated at the end */
        {"\xc0\xaf", 2, 0},          /* overlong */
        {"x\xed\xa0\x80y", 5, 1},    /* surrogate */
        {"ok\xf4\x90\x80\x80", 6, 2},/* above U+10FFFF */
        {"abc\x80", 4, 3},           /* lone continuation */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int32_t *ids = (int32_t *)1;
        size_t n = 7;
        ck_assert_int_eq(lathe_tokenizer_encode(tk, bad[i].s, bad[i].len, 0, &ids, &n), LATHE_EINVAL);
        char want[64];
        snprintf(want, sizeof want, "offset %zu", bad[i].off);
        ck_assert_msg(strstr(lathe_errmsg(), want) != NULL, "case %zu: %s", i, lathe_errmsg());
        ck_assert_ptr_null(ids);
        ck_assert_uint_eq(n, 0);
    }
    /* decode: ids out of range are refused; bytes that do not form UTF-8
     * become U+FFFD, as in the reference */
    int32_t out_of_range[] = {5, 2500};
    char *text;
    ck_assert_int_eq(lathe_tokenizer_decode(tk, out_of_range, 2, 0, &text), LATHE_EINVAL);
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "2500"));
    int32_t neg[] = {-1};
    ck_assert_int_eq(lathe_tokenizer_decode(tk, neg, 1, 0, &text), LATHE_EINVAL);
    int32_t half[] = {lathe_tokenizer_token_id(tk, "\xc3\xa4")}; /* the byte 0xE4 alone */
    ck_assert_int_ge(half[0], 0);
    ck_assert_int_eq(lathe_tokenizer_decode(tk, half, 1, 0, &text), LATHE_OK);
    ck_assert_str_eq(text, "\xef\xbf\xbd");
    free(text);
    lathe_tokenizer_free(tk);
}
END_TEST

/* Write the qwen2 fixture changed by `edit` to tmpdir/name; returns the path. */
static const char *mutated(const char *name, void (*edit)(json_t *root))
{
    static char path[512];
    json_t *j = load_json(tok_path("qwen2"));
    edit(j);
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    ck_assert_int_eq(json_dump_file(j, path, 0), 0);
    json_decref(j);
    return path;
}

static void ed_wordpiece(json_t *j)
{
    json_object_set_new(json_object_get(j, "model"), "type", json_string("WordPiece"));
}
static void ed_metaspace(json_t *j)
{
    json_t *pre = json_object_get(json_object_get(j, "pre_tokenizer"), "pretokenizers");
    json_array_set_new(pre, 0, json_pack("{s:s,s:s}", "type", "Metaspace", "replacement", "_"));
}
static void ed_merge_three(json_t *j)
{
    json_array_set_new(json_object_get(json_object_get(j, "model"), "merges"), 5, json_string("a b c"));
}
static void ed_merge_oov(json_t *j)
{
    json_array_set_new(json_object_get(json_object_get(j, "model"), "merges"), 7,
                       json_pack("[s,s]", "zzzzqqq", "e"));
}
static void ed_merge_type(json_t *j)
{
    json_array_set_new(json_object_get(json_object_get(j, "model"), "merges"), 3, json_integer(12));
}
static void ed_byte_fallback(json_t *j)
{
    json_object_set_new(json_object_get(j, "model"), "byte_fallback", json_true());
}
static void ed_unk(json_t *j)
{
    json_object_set_new(json_object_get(j, "model"), "unk_token", json_string("<unk>"));
}
static void ed_nfkc(json_t *j)
{
    json_object_set_new(j, "normalizer", json_pack("{s:s}", "type", "NFKC"));
}
static void ed_bad_regex(json_t *j)
{
    json_t *pre = json_object_get(json_object_get(j, "pre_tokenizer"), "pretokenizers");
    json_object_set_new(json_object_get(json_array_get(pre, 0), "pattern"), "Regex", json_string("(unclosed"));
}
static void ed_behavior(json_t *j)
{
    json_t *pre = json_object_get(json_object_get(j, "pre_tokenizer"), "pretokenizers");
    json_object_set_new(json_array_get(pre, 0), "behavior", json_string("Sideways"));
}
static void ed_no_bytelevel(json_t *j)
{
    json_t *pre = json_object_get(json_object_get(j, "pre_tokenizer"), "pretokenizers");
    json_array_remove(pre, 1);
}
static void ed_decoder(json_t *j)
{
    json_object_set_new(j, "decoder", json_pack("{s:s}", "type", "WordPiece"));
}
static void ed_post(json_t *j)
{
    json_object_set_new(j, "post_processor", json_pack("{s:s}", "type", "BertProcessing"));
}
static void ed_vocab_id(json_t *j)
{
    json_object_set_new(json_object_get(json_object_get(j, "model"), "vocab"), "Ġthe", json_string("x"));
}

START_TEST(test_refusals)
{
    static const struct {
        void (*edit)(json_t *);
        const char *say;
    } cases[] = {
        {ed_wordpiece, "WordPiece"},      {ed_metaspace, "Metaspace"},   {ed_merge_three, "merges[5]"},
        {ed_merge_oov, "merges[7]"},      {ed_merge_type, "merges[3]"},  {ed_byte_fallback, "byte_fallback"},
        {ed_unk, "unk_token"},            {ed_nfkc, "NFKC"},             {ed_bad_regex, "(unclosed"},
        {ed_behavior, "Sideways"},        {ed_no_bytelevel, "ByteLevel"}, {ed_decoder, "decoder"},
        {ed_post, "BertProcessing"},      {ed_vocab_id, "Ġthe"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char name[32];
        snprintf(name, sizeof name, "case%zu.json", i);
        const char *path = mutated(name, cases[i].edit);
        lathe_tokenizer *tk = (lathe_tokenizer *)1;
        int rc = lathe_tokenizer_load(&tk, path);
        ck_assert_msg(rc != LATHE_OK, "case %zu (%s) loaded", i, cases[i].say);
        ck_assert_ptr_null(tk);
        ck_assert_msg(strstr(lathe_errmsg(), cases[i].say) != NULL, "case %zu: %s", i, lathe_errmsg());
        ck_assert_msg(strstr(lathe_errmsg(), name) != NULL, "case %zu does not name the file: %s", i, lathe_errmsg());
    }
}
END_TEST

START_TEST(test_missing_and_garbage)
{
    lathe_tokenizer *tk;
    char path[512];
    snprintf(path, sizeof path, "%s/nope.json", tmpdir);
    ck_assert_int_eq(lathe_tokenizer_load(&tk, path), LATHE_EIO);
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "nope.json"));
    /* a directory without tokenizer.json */
    ck_assert_int_ne(lathe_tokenizer_load(&tk, tmpdir), LATHE_OK);
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "tokenizer.json"));
    snprintf(path, sizeof path, "%s/bad.json", tmpdir);
    FILE *f = fopen(path, "w");
    fputs("{\"model\": {\"vocab\": {\n  \"a\": 0,,}}", f);
    fclose(f);
    ck_assert_int_eq(lathe_tokenizer_load(&tk, path), LATHE_EIO);
    ck_assert_msg(strstr(lathe_errmsg(), "bad.json:2:") != NULL, "%s", lathe_errmsg());
    f = fopen(path, "w");
    fputs("[1, 2]", f);
    fclose(f);
    ck_assert_int_ne(lathe_tokenizer_load(&tk, path), LATHE_OK);
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "model"));
}
END_TEST

static Suite *tokenizer_suite(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *core = tcase_create("Core");
    tcase_add_checked_fixture(core, tmp_setup, tmp_teardown);
    tcase_add_loop_test(core, test_reference_ids, 0, NTOK);
    tcase_add_test(core, test_reference_variants);
    tcase_add_test(core, test_lookups);
    tcase_add_test(core, test_load_directory);
    tcase_add_test(core, test_threads);
    tcase_add_test(core, test_cli);
    suite_add_tcase(s, core);

    TCase *lim = tcase_create("Limits");
    tcase_add_checked_fixture(lim, tmp_setup, tmp_teardown);
    tcase_add_test(lim, test_invalid_utf8);
    tcase_add_test(lim, test_refusals);
    tcase_add_test(lim, test_missing_and_garbage);
    suite_add_tcase(s, lim);
    return s;
}

int main(void)
{
    return lathe_test_run(tokenizer_suite());
}
