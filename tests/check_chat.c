/* tests/check_chat.c — chat formats (core/text/chat.c), the jsonl-chat data
 * plugin and `lathe data check|dedup`.
 *
 * Reference: tests/fixtures/chat/expected.json, made by make_tokenizer.py
 * beside it with the `tokenizers` library and the real chat templates (run
 * through Jinja): the rendered text, its ids and the mask of the tokens
 * that overlap assistant content or the token ending the turn. */
#include <dlfcn.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lathe/lathe.h>

#include "tensor/state.h"
#include "testutil.h"

#define ck_msg_has(want)                                                                           \
    ck_assert_msg(strstr(lathe_errmsg(), (want)) != NULL, "message '%s' lacks '%s'", lathe_errmsg(), \
                  (want))

/* ---- fixtures ---------------------------------------------------------- */

static const char *fixture(const char *name)
{
    static char path[8][1024];
    static int k;
    const char *top = getenv("top_srcdir");
    char *p = path[k++ % 8];
    snprintf(p, sizeof path[0], "%s/tests/fixtures/chat/%s", top && top[0] ? top : ".", name);
    return p;
}

static lathe_tokenizer *tok(const char *name)
{
    lathe_tokenizer *tk = NULL;
    ck_assert_msg(lathe_tokenizer_load(&tk, fixture(name)) == LATHE_OK, "%s", lathe_errmsg());
    return tk;
}

static json_t *expected(void)
{
    json_error_t e;
    json_t *root = json_load_file(fixture("expected.json"), 0, &e);
    ck_assert_msg(root != NULL, "expected.json: %s", e.text);
    return root;
}

/* The messages of a fixture case (strings borrowed from the JSON). */
static size_t case_msgs(json_t *c, struct lathe_chat_msg *m, size_t max)
{
    json_t *list = json_object_get(c, "messages"), *v;
    size_t i;
    ck_assert_uint_le(json_array_size(list), max);
    json_array_foreach(list, i, v) {
        m[i].role = json_string_value(json_object_get(v, "role"));
        m[i].content = json_string_value(json_object_get(v, "content"));
    }
    return json_array_size(list);
}

static void make_dir(char dir[64])
{
    strcpy(dir, "/tmp/check_chat.XXXXXX");
    ck_assert(mkdtemp(dir) != NULL);
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    ck_assert_msg(f != NULL, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot read %s", path);
    char *buf = malloc(1 << 20);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void remove_dir(const char *dir)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* ---- formats against the reference -------------------------------------- */

START_TEST(reference_ids_and_masks)
{
    lathe_tokenizer *tk = tok("tokenizer.json");
    json_t *root = expected(), *c;
    ck_assert_int_eq(lathe_tokenizer_vocab_size(tk), json_integer_value(json_object_get(root, "vocab_size")));
    size_t k;
    int seen[LATHE_CHAT_FORMAT_COUNT] = {0};
    json_array_foreach(json_object_get(root, "cases"), k, c) {
        int fmt;
        ck_assert_int_eq(lathe_chat_format_parse(json_string_value(json_object_get(c, "format")), &fmt), LATHE_OK);
        seen[fmt]++;
        struct lathe_chat_msg m[8];
        size_t n = case_msgs(c, m, 8);
        int gen = json_is_true(json_object_get(c, "add_generation_prompt"));
        int32_t *ids;
        uint8_t *mask;
        size_t nt;
        ck_assert_msg(lathe_chat_encode(tk, fmt, m, n, gen, &ids, &mask, &nt) == LATHE_OK, "case %zu: %s", k,
                      lathe_errmsg());
        json_t *want = json_object_get(c, "ids"), *wmask = json_object_get(c, "mask");
        ck_assert_msg(nt == json_array_size(want), "case %zu (%s): %zu ids, reference %zu", k,
                      lathe_chat_format_name(fmt), nt, json_array_size(want));
        for (size_t i = 0; i < nt; i++) {
            ck_assert_msg(ids[i] == json_integer_value(json_array_get(want, i)), "case %zu: id %zu is %d, "
                          "reference %lld", k, i, ids[i], (long long)json_integer_value(json_array_get(want, i)));
            ck_assert_msg(mask[i] == json_integer_value(json_array_get(wmask, i)), "case %zu: mask %zu is %d",
                          k, i, mask[i]);
        }
        /* the ids are those of the whole rendered string, too */
        const char *text = json_string_value(json_object_get(c, "text"));
        int32_t *whole;
        size_t nw;
        ck_assert_int_eq(lathe_tokenizer_encode(tk, text, strlen(text), 0, &whole, &nw), LATHE_OK);
        ck_assert_uint_eq(nw, nt);
        ck_assert_mem_eq(whole, ids, nt * sizeof *ids);
        /* and decode back to it */
        char *back;
        ck_assert_int_eq(lathe_tokenizer_decode(tk, ids, nt, 0, &back), LATHE_OK);
        ck_assert_str_eq(back, text);
        /* the learnt tokens end with the format's end of turn */
        size_t last = nt;
        for (size_t i = 0; i < nt; i++)
            if (mask[i])
                last = i;
        if (last < nt)
            ck_assert_int_eq(ids[last], lathe_chat_stop_token(tk, fmt));
        else
            ck_assert(gen);
        free(back);
        free(whole);
        free(ids);
        free(mask);
    }
    for (int f = 0; f < LATHE_CHAT_FORMAT_COUNT; f++)
        ck_assert_int_ge(seen[f], 2);
    json_decref(root);
    lathe_tokenizer_free(tk);
}
END_TEST

/* Decode only the tokens with mask == want. */
static char *masked_text(const lathe_tokenizer *tk, const int32_t *ids, const uint8_t *mask, size_t n, int want)
{
    int32_t *sel = malloc(n * sizeof *sel);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (mask[i] == want)
            sel[k++] = ids[i];
    char *text;
    ck_assert_int_eq(lathe_tokenizer_decode(tk, sel, k, 0, &text), LATHE_OK);
    free(sel);
    return text;
}

START_TEST(deepseek_think_stripping)
{
    lathe_tokenizer *tk = tok("tokenizer.json");
    const struct lathe_chat_msg m[] = {
        {"user", "What is 6 times 7?"},
        {"assistant", "<think>\n6 * 7 = 42\n</think>\n\nThe answer is 42."},
        {"user", "Half of it?"},
        {"assistant", "<think>\nfirst</think>\nmid</think>\n42 / 2 = 21\n</think>\n\nIt is 21."},
    };
    int32_t *ids;
    uint8_t *mask;
    size_t n;
    ck_assert_int_eq(lathe_chat_encode(tk, LATHE_CHAT_DEEPSEEK_R1, m, 4, 0, &ids, &mask, &n), LATHE_OK);
    char *all, *learn;
    ck_assert_int_eq(lathe_tokenizer_decode(tk, ids, n, 0, &all), LATHE_OK);
    /* history keeps only what follows the last </think>; the final turn all */
    ck_assert_ptr_null(strstr(all, "6 * 7 = 42"));
    ck_assert_ptr_nonnull(strstr(all, "\n\nThe answer is 42."));
    ck_assert_ptr_nonnull(strstr(all, "<think>\nfirst</think>\nmid</think>\n42 / 2 = 21\n</think>\n\nIt is 21."));
    ck_assert_int_eq(ids[0], lathe_tokenizer_token_id(tk, "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"));
    learn = masked_text(tk, ids, mask, n, 1);
    ck_assert_str_eq(learn, "\n\nThe answer is 42.<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
                            "<think>\nfirst</think>\nmid</think>\n42 / 2 = 21\n</think>\n\nIt is 21."
                            "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>");
    free(all);
    free(learn);
    free(ids);
    free(mask);

    /* with a generation prompt every assistant turn is history */
    ck_assert_int_eq(lathe_chat_encode(tk, LATHE_CHAT_DEEPSEEK_R1, m, 4, 1, &ids, &mask, &n), LATHE_OK);
    ck_assert_int_eq(lathe_tokenizer_decode(tk, ids, n, 0, &all), LATHE_OK);
    ck_assert_ptr_null(strstr(all, "42 / 2"));
    ck_assert_int_eq(mask[n - 1], 0);
    ck_assert_int_eq(ids[n - 1], lathe_tokenizer_token_id(tk, "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"));
    free(all);
    free(ids);
    free(mask);
    lathe_tokenizer_free(tk);
}
END_TEST

START_TEST(masks_per_format)
{
    lathe_tokenizer *tk = tok("tokenizer.json");
    const struct lathe_chat_msg m[] = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello there"}};
    const char *want[LATHE_CHAT_FORMAT_COUNT] = {
        "Hello there<|im_end|>",
        "Hello there<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
        "Hello there<|eot_id|>",
    };
    const char *prompt[LATHE_CHAT_FORMAT_COUNT] = {
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n\n",
        "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>Be brief.<\xef\xbd\x9cUser\xef\xbd\x9c>Hi"
        "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>",
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user"
        "<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    };
    for (int f = 0; f < LATHE_CHAT_FORMAT_COUNT; f++) {
        int32_t *ids;
        uint8_t *mask;
        size_t n;
        ck_assert_int_eq(lathe_chat_encode(tk, f, m, 3, 0, &ids, &mask, &n), LATHE_OK);
        char *learn = masked_text(tk, ids, mask, n, 1), *rest = masked_text(tk, ids, mask, n, 0);
        ck_assert_str_eq(learn, want[f]);
        ck_assert_str_eq(rest, prompt[f]);
        /* ChatML ends the turn with "\n" after <|im_end|> */
        ck_assert_int_eq(ids[n - (f == LATHE_CHAT_CHATML ? 2 : 1)], lathe_chat_stop_token(tk, f));
        free(learn);
        free(rest);
        free(ids);
        free(mask);
    }
    lathe_tokenizer_free(tk);
}
END_TEST

START_TEST(format_names)
{
    for (int f = 0; f < LATHE_CHAT_FORMAT_COUNT; f++) {
        int g = -1;
        ck_assert_int_eq(lathe_chat_format_parse(lathe_chat_format_name(f), &g), LATHE_OK);
        ck_assert_int_eq(g, f);
    }
    int g = 7;
    ck_assert_int_eq(lathe_chat_format_parse("chatML", &g), LATHE_EINVAL);
    ck_msg_has("unknown chat format 'chatML'; use chatml, deepseek-r1 or llama3");
    ck_assert_int_eq(g, 7);
    ck_assert_str_eq(lathe_chat_format_name(99), "unknown");
}
END_TEST

/* tokenizer_config.json with a chat_template (JSON-quoted by the caller). */
static void write_config(const char *dir, const char *template_json)
{
    char buf[2048];
    snprintf(buf, sizeof buf, "{\"add_bos_token\": false, \"chat_template\": %s}\n", template_json);
    write_file(dir, "tokenizer_config.json", buf);
}

START_TEST(detection)
{
    lathe_tokenizer *all = tok("tokenizer.json"), *chatml = tok("tokenizer-chatml.json");
    char dir[64];
    make_dir(dir);
    int f = -1;
    /* SmolLM2-style ChatML with its own default system turn */
    write_config(dir, "\"{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                      "{{ '<|im_start|>system\\nYou are a small test bot<|im_end|>\\n' }}{% endif %}"
                      "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
                      "{% endfor %}\"");
    ck_assert_int_eq(lathe_chat_format_detect(dir, all, &f), LATHE_OK);
    ck_assert_int_eq(f, LATHE_CHAT_CHATML);
    char *sys;
    ck_assert_int_eq(lathe_chat_default_system(dir, f, &sys), LATHE_OK);
    ck_assert_str_eq(sys, "You are a small test bot");
    free(sys);
    /* Qwen2.5-style: escapes kept in the Jinja literal; the first
     * <|im_start|>system is followed by an expression, not a default */
    write_config(dir, "\"{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\\\n' + "
                      "messages[0]['content'] + '<|im_end|>\\\\n' }}{%- else %}{{- '<|im_start|>system\\\\n"
                      "You are Qwen, a \\\\'test\\\\' model.<|im_end|>\\\\n' }}{%- endif %}\"");
    ck_assert_int_eq(lathe_chat_format_detect(dir, all, &f), LATHE_OK);
    ck_assert_int_eq(f, LATHE_CHAT_CHATML);
    ck_assert_int_eq(lathe_chat_default_system(dir, f, &sys), LATHE_OK);
    ck_assert_str_eq(sys, "You are Qwen, a 'test' model.");
    free(sys);
    write_config(dir, "\"{{- '<|im_start|>system\\\\nYou are Qwen.\\\\tHi<|im_end|>\\\\n' }}\"");
    ck_assert_int_eq(lathe_chat_default_system(dir, f, &sys), LATHE_OK);
    ck_assert_str_eq(sys, "You are Qwen.\tHi");
    free(sys);
    /* DeepSeek-R1 */
    write_config(dir, "\"{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
                      "{{'<\xef\xbd\x9cUser\xef\xbd\x9c>' + m['content']}}{% else %}{{'<\xef\xbd\x9c"
                      "Assistant\xef\xbd\x9c>' + m['content']}}{% endif %}{% endfor %}\"");
    ck_assert_int_eq(lathe_chat_format_detect(dir, all, &f), LATHE_OK);
    ck_assert_int_eq(f, LATHE_CHAT_DEEPSEEK_R1);
    ck_assert_int_eq(lathe_chat_default_system(dir, f, &sys), LATHE_OK);
    ck_assert_ptr_null(sys);
    /* Llama 3, as a list of named templates */
    write_config(dir, "[{\"name\": \"tool_use\", \"template\": \"<|im_start|>\"}, {\"name\": \"default\", "
                      "\"template\": \"{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\\\n\\\\n' }}\"}]");
    ck_assert_int_eq(lathe_chat_format_detect(dir, all, &f), LATHE_OK);
    ck_assert_int_eq(f, LATHE_CHAT_LLAMA3);
    /* chat_template.jinja beside a config without one */
    write_file(dir, "tokenizer_config.json", "{\"bos_token\": null}");
    write_file(dir, "chat_template.jinja", "{{ '<|start_header_id|>' }}");
    ck_assert_int_eq(lathe_chat_format_detect(dir, all, &f), LATHE_OK);
    ck_assert_int_eq(f, LATHE_CHAT_LLAMA3);
    char jinja[128];
    snprintf(jinja, sizeof jinja, "%s/chat_template.jinja", dir);
    unlink(jinja);
    /* no template: the special tokens decide when only one format fits */
    f = -1;
    ck_assert_int_eq(lathe_chat_format_detect(dir, chatml, &f), LATHE_OK);
    ck_assert_int_eq(f, LATHE_CHAT_CHATML);
    ck_assert_int_eq(lathe_chat_format_detect(NULL, chatml, &f), LATHE_OK);
    ck_assert_int_eq(lathe_chat_format_detect(dir, all, &f), LATHE_EINVAL);
    ck_msg_has(dir);
    ck_msg_has("fit chatml, deepseek-r1, llama3");
    ck_msg_has("template = chatml, deepseek-r1 or llama3");
    remove_dir(dir);
    ck_assert_int_eq(lathe_chat_format_detect(dir, NULL, &f), LATHE_EINVAL);
    ck_msg_has("cannot tell the chat format of '/tmp/check_chat.");
    lathe_tokenizer_free(all);
    lathe_tokenizer_free(chatml);
}
END_TEST

START_TEST(parse_forms)
{
    struct lathe_chat_msg *m;
    size_t n;
    const char *a = "[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"yo\\u00e9\"}]";
    ck_assert_int_eq(lathe_chat_parse(a, strlen(a), 1, &m, &n), LATHE_OK);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(m[0].role, "user");
    ck_assert_str_eq(m[1].content, "yo\xc3\xa9");
    free(m);
    const char *b = "{\"id\": 3, \"messages\": [{\"role\":\"system\",\"content\":\"\",\"name\":\"x\"},"
                    "{\"role\":\"user\",\"content\":\"q\"}]}";
    ck_assert_int_eq(lathe_chat_parse(b, strlen(b), 0, &m, &n), LATHE_OK);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(m[0].content, "");
    free(m);
}
END_TEST

/* ---- the data plugin --------------------------------------------------- */

static const struct lathe_data_ops *data_ops(void)
{
    static const struct lathe_data_ops *ops;
    if (ops)
        return ops;
    const char *dir = getenv("LATHE_PLUGIN_PATH");
    char path[4096];
    snprintf(path, sizeof path, "%s/lathe-jsonl-chat.so", dir && dir[0] ? dir : "plugins/.libs");
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    ck_assert_msg(h != NULL, "dlopen %s: %s", path, dlerror());
    lathe_plugin_describe_fn describe = (lathe_plugin_describe_fn)dlsym(h, LATHE_PLUGIN_SYMBOL);
    ck_assert(describe != NULL);
    const struct lathe_plugin_desc *d = describe();
    for (const struct lathe_component *c = d->components; c->kind != LATHE_KIND_NONE; c++)
        if (c->kind == LATHE_KIND_DATA && strcmp(c->name, "jsonl-chat") == 0)
            return ops = c->ops;
    ck_abort_msg("%s has no data component jsonl-chat", path);
    return NULL;
}

/* Conversation k of the test file: distinct, some with a system turn, one
 * in three written as an object with "messages". */
#define NCONV 12
static void conv_json(int k, char *buf, size_t size)
{
    char body[512];
    snprintf(body, sizeof body,
             "%s{\"role\": \"user\", \"content\": \"Question %d: what is %d plus %d?\"}, "
             "{\"role\": \"assistant\", \"content\": \"<think>\\n%d + %d = %d\\n</think>\\n<answer>%d</answer>%s\"}",
             k % 4 == 1 ? "{\"role\": \"system\", \"content\": \"Add numbers.\"}, " : "", k, k, 3 * k, k, 3 * k,
             4 * k, 4 * k, k % 5 == 2 ? " That is a longer answer with quite a few more words in it." : "");
    if (k % 3 == 0)
        snprintf(buf, size, "{\"messages\": [%s], \"id\": %d}", body, k);
    else
        snprintf(buf, size, "[%s]", body);
}

/* The reference encoding of conversation k (ChatML, Qwen2's system turn). */
struct ref {
    int32_t *ids;
    uint8_t *mask;
    size_t n;
};

static struct ref conv_ref(const lathe_tokenizer *tk, int k)
{
    char line[1024];
    conv_json(k, line, sizeof line);
    struct lathe_chat_msg *m;
    size_t n;
    ck_assert_int_eq(lathe_chat_parse(line, strlen(line), 1, &m, &n), LATHE_OK);
    struct ref r;
    ck_assert_int_eq(lathe_chat_encode(tk, LATHE_CHAT_CHATML, m, n, 0, &r.ids, &r.mask, &r.n), LATHE_OK);
    free(m);
    return r;
}

/* dir/data.jsonl with conversations [0, n), and extra lines after line `at`. */
static void write_data(const char *dir, const char *name, int from, int to)
{
    char path[512], line[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    ck_assert(f != NULL);
    for (int k = from; k < to; k++) {
        conv_json(k, line, sizeof line);
        fprintf(f, "%s\n", line);
        if (k == from + 2)
            fputs("\n   \n", f); /* blank lines are not conversations */
    }
    fclose(f);
}

static lathe_config *data_config(const char *dir, const char *body)
{
    char path[512], text[2048];
    snprintf(path, sizeof path, "%s/run.ini", dir);
    snprintf(text, sizeof text, "[data]\npath = data.jsonl\n%s", body);
    write_file(dir, "run.ini", text);
    lathe_config *cfg = lathe_config_load(path);
    ck_assert_msg(cfg != NULL, "%s", lathe_errmsg());
    return cfg;
}

static struct lathe_env make_env(lathe_config *cfg, uint64_t seed)
{
    struct lathe_env env = {.size = sizeof env, .output_dir = "/tmp", .seed = seed, .device = LATHE_DEVICE_CPU,
                            .batch_size = 2, .grad_accum = 1, .steps = 10, .world_size = 1, .config = cfg};
    return env;
}

static void *data_make(lathe_config *cfg, uint64_t seed)
{
    struct lathe_env env = make_env(cfg, seed);
    void *d = NULL;
    ck_assert_msg(data_ops()->create(lathe_config_section(cfg, "data"), &env, &d) == LATHE_OK, "%s",
                  lathe_errmsg());
    return d;
}

static int data_refuse(lathe_config *cfg)
{
    struct lathe_env env = make_env(cfg, 1);
    void *d = (void *)1;
    int rc = data_ops()->create(lathe_config_section(cfg, "data"), &env, &d);
    ck_assert_int_ne(rc, LATHE_OK);
    ck_assert_ptr_null(d);
    return rc;
}

static char tk_line[1200];
static const char *tk_key(void)
{
    snprintf(tk_line, sizeof tk_line, "tokenizer = %s\ntemplate = chatml\n", fixture("tokenizer.json"));
    return tk_line;
}

/* Which conversation a row segment holds (by its tokens), checking its
 * labels, positions and segment id on the way; -1 if none. */
static int identify(const struct ref *refs, int nref, const int32_t *ids, const int32_t *lab, const int32_t *pos,
                    const int32_t *seg, int64_t len, int32_t want_seg, int64_t maxlen)
{
    for (int k = 0; k < nref; k++) {
        int64_t n = (int64_t)refs[k].n < maxlen ? (int64_t)refs[k].n : maxlen;
        if (n != len || memcmp(ids, refs[k].ids, (size_t)n * sizeof *ids) != 0)
            continue;
        for (int64_t t = 0; t < n; t++) {
            int32_t want = (t + 1 < n && refs[k].mask[t + 1]) ? refs[k].ids[t + 1] : LATHE_IGNORE_INDEX;
            ck_assert_int_eq(lab[t], want);
            ck_assert_int_eq(pos[t], t);
            ck_assert_int_eq(seg[t], want_seg);
        }
        return k;
    }
    return -1;
}

/* Split each row at segment changes and identify every sample; returns the
 * number of samples and fills out[] with their conversation indices. */
static int batch_samples(const struct lathe_batch *b, const struct ref *refs, int nref, int64_t maxlen, int *out)
{
    ck_assert_ptr_nonnull(b->positions);
    ck_assert_ptr_nonnull(b->segments);
    const int32_t *ids = lathe_tensor_i32(b->input_ids), *lab = lathe_tensor_i32(b->labels),
                  *pos = lathe_tensor_i32(b->positions), *seg = lathe_tensor_i32(b->segments);
    int count = 0;
    int64_t learnt = 0;
    for (int64_t i = 0; i < b->B * b->T; i++)
        learnt += lab[i] != LATHE_IGNORE_INDEX;
    ck_assert_int_eq(b->ntokens, learnt);
    for (int64_t r = 0; r < b->B; r++) {
        int64_t o = r * b->T, t = 0;
        int32_t s = 0;
        while (t < b->T && seg[o + t] >= 0) {
            int64_t e = t;
            while (e < b->T && seg[o + e] == seg[o + t])
                e++;
            ck_assert_int_eq(seg[o + t], s);
            int k = identify(refs, nref, ids + o + t, lab + o + t, pos + o + t, seg + o + t, e - t, s, maxlen);
            ck_assert_msg(k >= 0, "row %lld, tokens %lld..%lld are no conversation", (long long)r, (long long)t,
                          (long long)e);
            out[count++] = k;
            s++;
            t = e;
        }
        ck_assert_msg(t > 0, "row %lld is empty", (long long)r);
        for (; t < b->T; t++) { /* padding */
            ck_assert_int_eq(seg[o + t], -1);
            ck_assert_int_eq(lab[o + t], LATHE_IGNORE_INDEX);
        }
    }
    return count;
}

static void load_refs(const lathe_tokenizer *tk, struct ref *refs)
{
    for (int k = 0; k < NCONV; k++)
        refs[k] = conv_ref(tk, k);
}

static void free_refs(struct ref *refs)
{
    for (int k = 0; k < NCONV; k++) {
        free(refs[k].ids);
        free(refs[k].mask);
    }
}

/* Take n train samples in batches of B; returns their conversation ids. */
static void take(void *d, int B, int n, const struct ref *refs, int64_t maxlen, int *out)
{
    int got = 0;
    while (got < n) {
        lathe_scope_push();
        struct lathe_batch b = {.size = sizeof b};
        ck_assert_int_eq(data_ops()->next(d, LATHE_SPLIT_TRAIN, B, &b), LATHE_OK);
        int k[64];
        int m = batch_samples(&b, refs, NCONV, maxlen, k);
        for (int i = 0; i < m && got < n; i++)
            out[got++] = k[i];
        lathe_scope_pop();
    }
}

START_TEST(plugin_batches)
{
    lathe_tokenizer *tk = tok("tokenizer.json");
    struct ref refs[NCONV];
    load_refs(tk, refs);
    char dir[64], body[2048];
    make_dir(dir);
    write_data(dir, "data.jsonl", 0, NCONV);
    snprintf(body, sizeof body, "%sshuffle = false\neval_fraction = 0.25\n", tk_key());
    lathe_config *cfg = data_config(dir, body);
    void *d = data_make(cfg, 5);
    ck_assert_int_eq(lathe_config_check_unused(cfg), LATHE_OK);
    struct lathe_data_info info;
    ck_assert_int_eq(data_ops()->info(d, &info), LATHE_OK);
    ck_assert_int_eq(info.vocab_size, lathe_tokenizer_vocab_size(tk));
    ck_assert_int_eq(info.seq_len, 0);
    ck_assert_int_eq(info.train_items, 9);
    ck_assert_int_eq(info.eval_items, 3);

    /* one conversation per row, in file order, padded to the longest */
    lathe_scope_push();
    struct lathe_batch b = {.size = sizeof b};
    ck_assert_int_eq(data_ops()->next(d, LATHE_SPLIT_TRAIN, 3, &b), LATHE_OK);
    ck_assert_int_eq(b.B, 3);
    size_t longest = 0;
    for (int k = 0; k < 3; k++)
        longest = refs[k].n > longest ? refs[k].n : longest;
    ck_assert_int_eq(b.T, (int64_t)longest);
    ck_assert_int_eq(b.labels->shape[1], b.T);
    int k3[3];
    ck_assert_int_eq(batch_samples(&b, refs, NCONV, 1 << 30, k3), 3);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(k3[i], i);
    /* the learnt labels are the assistant reply and <|im_end|> */
    const int32_t *lab = lathe_tensor_i32(b.labels);
    int32_t im_end = lathe_tokenizer_token_id(tk, "<|im_end|>");
    int64_t last = -1;
    for (int64_t t = 0; t < b.T; t++)
        if (lab[t] != LATHE_IGNORE_INDEX)
            last = t;
    ck_assert_int_eq(lab[last], im_end);
    ck_assert_int_eq(last, (int64_t)refs[0].n - 3); /* then "\n": not learnt */
    lathe_scope_pop();

    /* eval: the last 3 lines in order, 2 + 1, then EOF, twice */
    for (int pass = 0; pass < 2; pass++) {
        int want = 9;
        for (int step = 0; step < 2; step++) {
            lathe_scope_push();
            struct lathe_batch e = {.size = sizeof e};
            ck_assert_int_eq(data_ops()->next(d, LATHE_SPLIT_EVAL, 2, &e), LATHE_OK);
            ck_assert_int_eq(e.B, step == 0 ? 2 : 1);
            int k[2];
            int m = batch_samples(&e, refs, NCONV, 1 << 30, k);
            for (int i = 0; i < m; i++)
                ck_assert_int_eq(k[i], want++);
            lathe_scope_pop();
        }
        struct lathe_batch e = {.size = sizeof e};
        ck_assert_int_eq(data_ops()->next(d, LATHE_SPLIT_EVAL, 2, &e), LATHE_EOF);
    }
    data_ops()->destroy(d);
    lathe_config_free(cfg);

    /* train_on_inputs: every next token of a sample is a label */
    snprintf(body, sizeof body, "%sshuffle = false\ntrain_on_inputs = true\n", tk_key());
    cfg = data_config(dir, body);
    d = data_make(cfg, 5);
    lathe_scope_push();
    b = (struct lathe_batch){.size = sizeof b};
    ck_assert_int_eq(data_ops()->next(d, LATHE_SPLIT_TRAIN, 2, &b), LATHE_OK);
    ck_assert_int_eq(b.ntokens, (int64_t)(refs[0].n - 1 + refs[1].n - 1));
    const int32_t *in = lathe_tensor_i32(b.input_ids);
    lab = lathe_tensor_i32(b.labels);
    for (int64_t t = 0; t + 1 < (int64_t)refs[0].n; t++)
        ck_assert_int_eq(lab[t], in[t + 1]);
    lathe_scope_pop();
    data_ops()->destroy(d);
    lathe_config_free(cfg);
    free_refs(refs);
    remove_dir(dir);
    lathe_tokenizer_free(tk);
}
END_TEST

START_TEST(plugin_shuffle_and_resume)
{
    lathe_tokenizer *tk = tok("tokenizer.json");
    struct ref refs[NCONV];
    load_refs(tk, refs);
    char dir[64], body[2048];
    make_dir(dir);
    write_data(dir, "data.jsonl", 0, NCONV);
    snprintf(body, sizeof body, "%seval_fraction = 0\n", tk_key());
    lathe_config *cfg = data_config(dir, body);
    void *a = data_make(cfg, 11), *a2 = data_make(cfg, 11), *c = data_make(cfg, 12);
    int e1[NCONV], e2[NCONV], f1[NCONV], g1[NCONV];
    take(a, 3, NCONV, refs, 1 << 30, e1);
    take(a, 4, NCONV, refs, 1 << 30, e2);
    take(a2, 2, NCONV, refs, 1 << 30, f1);
    take(c, 3, NCONV, refs, 1 << 30, g1);
    int seen[NCONV] = {0}, inorder = 0;
    for (int i = 0; i < NCONV; i++) {
        seen[e1[i]]++;
        seen[e2[i]] += 16;
        inorder += e1[i] == i;
    }
    for (int i = 0; i < NCONV; i++)
        ck_assert_int_eq(seen[i], 17); /* each epoch visits each once */
    ck_assert_int_lt(inorder, NCONV);
    ck_assert(memcmp(e1, e2, sizeof e1) != 0);    /* reshuffled per epoch */
    ck_assert_mem_eq(e1, f1, sizeof e1);           /* a pure function of the seed */
    ck_assert(memcmp(e1, g1, sizeof e1) != 0);

    /* resume mid-epoch and at an epoch's end */
    const int stops[2] = {5, NCONV};
    for (int s = 0; s < 2; s++) {
        void *x = data_make(cfg, 4), *y = data_make(cfg, 4);
        int skip[NCONV], wx[8], wy[8];
        take(x, 1, stops[s], refs, 1 << 30, skip);
        lathe_state *st = lathe_state_new();
        lathe_state_set_prefix(st, "data.");
        ck_assert_int_eq(data_ops()->state_save(x, st), LATHE_OK);
        ck_assert_msg(data_ops()->state_load(y, st) == LATHE_OK, "%s", lathe_errmsg());
        take(x, 2, 8, refs, 1 << 30, wx);
        take(y, 2, 8, refs, 1 << 30, wy);
        ck_assert_mem_eq(wx, wy, sizeof wx);
        lathe_state_free(st);
        data_ops()->destroy(x);
        data_ops()->destroy(y);
    }
    data_ops()->destroy(a);
    data_ops()->destroy(a2);
    data_ops()->destroy(c);
    lathe_config_free(cfg);
    free_refs(refs);
    remove_dir(dir);
    lathe_tokenizer_free(tk);
}
END_TEST

START_TEST(plugin_packing_and_truncation)
{
    lathe_tokenizer *tk = tok("tokenizer.json");
    struct ref refs[NCONV];
    load_refs(tk, refs);
    char dir[64], body[2048];
    make_dir(dir);
    write_data(dir, "data.jsonl", 0, NCONV);
    size_t longest = 0;
    for (int k = 0; k < NCONV; k++)
        longest = refs[k].n > longest ? refs[k].n : longest;
    const int64_t L = (int64_t)longest + 40;
    snprintf(body, sizeof body, "%spacking = true\nmax_length = %lld\neval_fraction = 0\nshuffle = false\n", tk_key(),
             (long long)L);
    lathe_config *cfg = data_config(dir, body);
    void *d = data_make(cfg, 3);
    struct lathe_data_info info;
    ck_assert_int_eq(data_ops()->info(d, &info), LATHE_OK);
    ck_assert_int_eq(info.seq_len, L);
    /* two epochs: every row full length, several samples in a row, each
     * its own segment, positions from 0, no label across a boundary */
    int order[4 * NCONV], got = 0, multi = 0;
    while (got < 2 * NCONV) {
        lathe_scope_push();
        struct lathe_batch b = {.size = sizeof b};
        ck_assert_int_eq(data_ops()->next(d, LATHE_SPLIT_TRAIN, 2, &b), LATHE_OK);
        ck_assert_int_eq(b.T, L);
        ck_assert_int_eq(b.B, 2);
        const int32_t *seg = lathe_tensor_i32(b.segments), *lab = lathe_tensor_i32(b.labels);
        for (int64_t i = 0; i + 1 < b.B * b.T; i++)
            if ((i + 1) % b.T && seg[i] != seg[i + 1])
                ck_assert_int_eq(lab[i], LATHE_IGNORE_INDEX);
        int k[64];
        int m = batch_samples(&b, refs, NCONV, L, k);
        multi += m > 2;
        for (int i = 0; i < m; i++)
            order[got++] = k[i];
        lathe_scope_pop();
    }
    ck_assert_int_gt(multi, 0);
    for (int i = 0; i < 2 * NCONV; i++)
        ck_assert_int_eq(order[i], i % NCONV);
    data_ops()->destroy(d);
    lathe_config_free(cfg);

    /* truncation keeps the start: cut a little after each prompt */
    int64_t cut = 0;
    for (int k = 0; k < 4; k++) {
        int64_t first = 0;
        while (!refs[k].mask[first])
            first++;
        cut = first + 4 > cut ? first + 4 : cut;
    }
    ck_assert_uint_gt(refs[0].n, (size_t)cut);
    snprintf(body, sizeof body, "%smax_length = %lld\neval_fraction = 0\nshuffle = false\n", tk_key(),
             (long long)cut);
    cfg = data_config(dir, body);
    d = data_make(cfg, 3);
    lathe_scope_push();
    struct lathe_batch b = {.size = sizeof b};
    ck_assert_int_eq(data_ops()->next(d, LATHE_SPLIT_TRAIN, 4, &b), LATHE_OK);
    ck_assert_int_eq(b.T, cut);
    int k[8];
    ck_assert_int_eq(batch_samples(&b, refs, NCONV, cut, k), 4);
    lathe_scope_pop();
    data_ops()->destroy(d);
    lathe_config_free(cfg);
    free_refs(refs);
    remove_dir(dir);
    lathe_tokenizer_free(tk);
}
END_TEST

/* Run create with stdout captured into *out (malloc'd). */
static int create_capture(lathe_config *cfg, void **d, char **out)
{
    char path[] = "/tmp/check_chat_out.XXXXXX";
    int fd = mkstemp(path);
    ck_assert(fd >= 0);
    fflush(stdout);
    int saved = dup(1);
    dup2(fd, 1);
    close(fd);
    struct lathe_env env = make_env(cfg, 1);
    int rc = data_ops()->create(lathe_config_section(cfg, "data"), &env, d);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    *out = read_text(path);
    unlink(path);
    return rc;
}

static const char *const bad_lines[][2] = {
    {"[{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\" \"content\": \"x\"}]",
     "data.jsonl:4: invalid JSON at column 66"},
    {"42", "data.jsonl:4: the line is a number, not a list"},
    {"{\"conversation\": []}", "data.jsonl:4: the object has no \"messages\" key"},
    {"[{\"role\": \"user\", \"content\": \"hi\"}, {\"content\": \"x\"}]", "data.jsonl:4: message 2 has no \"role\""},
    {"[{\"role\": \"user\"}, {\"role\": \"assistant\", \"content\": \"x\"}]",
     "data.jsonl:4: message 1 (user) has no \"content\""},
    {"[{\"role\": \"user\", \"content\": [\"hi\"]}, {\"role\": \"assistant\", \"content\": \"x\"}]",
     "data.jsonl:4: message 1 (user): \"content\" is a list, not a string"},
    {"[{\"role\": \"tool\", \"content\": \"{}\"}, {\"role\": \"assistant\", \"content\": \"x\"}]",
     "data.jsonl:4: message 1: unknown role 'tool'"},
    {"[{\"role\": \"user\", \"content\": \"hi\"}]", "data.jsonl:4: the conversation has no assistant message"},
    {"[\"hi\"]", "data.jsonl:4: message 1 is a string, not an object"},
    {"[]", "data.jsonl:4: the conversation has no messages"},
};

START_TEST(plugin_bad_lines)
{
    char dir[64], body[2048], line[1024];
    make_dir(dir);
    for (size_t i = 0; i < sizeof bad_lines / sizeof bad_lines[0]; i++) {
        /* lines 1-2 good, 3 blank, 4 bad, then good again */
        char path[512];
        snprintf(path, sizeof path, "%s/data.jsonl", dir);
        FILE *f = fopen(path, "w");
        for (int k = 0; k < 6; k++) {
            conv_json(k, line, sizeof line);
            fprintf(f, "%s\n", k == 2 ? "" : k == 3 ? bad_lines[i][0] : line);
        }
        fclose(f);
        snprintf(body, sizeof body, "%s", tk_key());
        lathe_config *cfg = data_config(dir, body);
        ck_assert_int_eq(data_refuse(cfg), LATHE_EINVAL);
        ck_msg_has(bad_lines[i][1]);
        ck_msg_has(dir);
        lathe_config_free(cfg);

        /* skip: loads the rest and says so once, on stdout */
        snprintf(body, sizeof body, "%son_bad_line = skip\neval_fraction = 0\n", tk_key());
        cfg = data_config(dir, body);
        void *d = NULL;
        char *out;
        ck_assert_msg(create_capture(cfg, &d, &out) == LATHE_OK, "%s", lathe_errmsg());
        ck_assert_msg(strstr(out, "jsonl-chat: skipped 1 bad line (on_bad_line = skip); the first: ") && 
                      strstr(out, bad_lines[i][1]), "stdout: %s", out);
        struct lathe_data_info info;
        data_ops()->info(d, &info);
        ck_assert_int_eq(info.train_items, 4);
        free(out);
        data_ops()->destroy(d);
        lathe_config_free(cfg);
    }
    remove_dir(dir);
}
END_TEST

START_TEST(plugin_eval_path_and_model_tokenizer)
{
    lathe_tokenizer *tk = tok("tokenizer.json");
    char dir[64], body[2048];
    make_dir(dir);
    write_data(dir, "data.jsonl", 0, 8);
    write_data(dir, "eval.jsonl", 8, 11);
    /* the model's directory: its tokenizer and a template with its own
     * default system turn */
    char mdir[128], cmd[1200];
    snprintf(mdir, sizeof mdir, "%s/model", dir);
    ck_assert_int_eq(mkdir(mdir, 0755), 0);
    snprintf(cmd, sizeof cmd, "cp '%s' '%s/tokenizer.json'", fixture("tokenizer.json"), mdir);
    ck_assert_int_eq(system(cmd), 0);
    write_config(mdir, "\"{{ '<|im_start|>system\\nYou are a test bot.<|im_end|>\\n' }}{% for m in messages %}"
                       "{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}{% endfor %}\"");
    snprintf(body, sizeof body, "eval_path = eval.jsonl\nshuffle = false\n[model]\npretrained = model\n");
    lathe_config *cfg = data_config(dir, body);
    void *d = data_make(cfg, 1);
    struct lathe_data_info info;
    ck_assert_int_eq(data_ops()->info(d, &info), LATHE_OK);
    ck_assert_int_eq(info.train_items, 8);
    ck_assert_int_eq(info.eval_items, 3);
    lathe_scope_push();
    struct lathe_batch b = {.size = sizeof b};
    ck_assert_int_eq(data_ops()->next(d, LATHE_SPLIT_EVAL, 8, &b), LATHE_OK);
    ck_assert_int_eq(b.B, 3);
    const int32_t *ids = lathe_tensor_i32(b.input_ids), *seg = lathe_tensor_i32(b.segments);
    int64_t n = 0;
    while (n < b.T && seg[n] == 0)
        n++;
    char *text;
    ck_assert_int_eq(lathe_tokenizer_decode(tk, ids, (size_t)n, 0, &text), LATHE_OK);
    const char *head = "<|im_start|>system\nYou are a test bot.<|im_end|>\n<|im_start|>user\nQuestion 8:";
    ck_assert_msg(strncmp(text, head, strlen(head)) == 0, "%s", text);
    free(text);
    lathe_scope_pop();
    data_ops()->destroy(d);
    lathe_config_free(cfg);

    /* both eval_path and eval_fraction */
    cfg = data_config(dir, "eval_path = eval.jsonl\neval_fraction = 0.1\n[model]\npretrained = model\n");
    ck_assert_int_eq(data_refuse(cfg), LATHE_ECONFIG);
    ck_msg_has("set eval_path or eval_fraction, not both");
    lathe_config_free(cfg);
    remove_dir(dir);
    lathe_tokenizer_free(tk);
}
END_TEST

/* ---- the CLI ----------------------------------------------------------- */

static int run_cli(const char *args, char **out, char **err)
{
    const char *bin = getenv("LATHE_BIN");
    char cmd[4096], po[] = "/tmp/check_chat_o.XXXXXX", pe[] = "/tmp/check_chat_e.XXXXXX";
    close(mkstemp(po));
    close(mkstemp(pe));
    snprintf(cmd, sizeof cmd, "'%s' %s >%s 2>%s", bin && bin[0] ? bin : "./lathe", args, po, pe);
    int st = system(cmd);
    *out = read_text(po);
    *err = read_text(pe);
    unlink(po);
    unlink(pe);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

START_TEST(cli_check_and_dedup)
{
    char dir[64], line[1024], args[2048];
    make_dir(dir);
    char path[512];
    snprintf(path, sizeof path, "%s/in.jsonl", dir);
    FILE *f = fopen(path, "w");
    /* 0 1 2 | dup of 0 (respaced, keys reordered, another key) | bad | 3 | dup of 2 | bad */
    for (int k = 0; k < 3; k++) {
        conv_json(k, line, sizeof line);
        fprintf(f, "%s\n", line);
    }
    fprintf(f, "{\"messages\": [{\"content\": \"Question 0: what is 0 plus 0?\", \"role\": \"user\"},"
               "{\"role\":\"assistant\",\"content\":\"<think>\\n0 + 0 = 0\\n</think>\\n<answer>0</answer>\"}], \"x\": 1}\n");
    fprintf(f, "[{\"role\": \"bot\", \"content\": \"x\"}]\n");
    conv_json(3, line, sizeof line);
    fprintf(f, "%s\n", line);
    conv_json(2, line, sizeof line);
    fprintf(f, "%s\n", line);
    fprintf(f, "[{\"role\": \"user\", \"content\": \"hi\"\n");
    fclose(f);

    char *out, *err;
    snprintf(args, sizeof args, "data check %s --model %s --template chatml --max-length 40", path,
             fixture("tokenizer.json"));
    ck_assert_int_eq(run_cli(args, &out, &err), 1);
    ck_assert_msg(strstr(err, "in.jsonl:5: message 1: unknown role 'bot'"), "%s", err);
    ck_assert_msg(strstr(err, "in.jsonl:8: invalid JSON at column"), "%s", err);
    ck_assert_msg(strstr(out, "6 conversations, 2 bad lines"), "%s", out);
    ck_assert_msg(strstr(out, "messages: 1 system, 6 user, 6 assistant"), "%s", out);
    ck_assert_msg(strstr(out, "over max_length 40"), "%s", out);
    ck_assert_msg(strstr(out, "duplicates: 2; line 4 = line 1, line 7 = line 3"), "%s", out);
    free(out);
    free(err);

    /* dedup refuses bad input and writing over its input */
    char outp[512];
    snprintf(outp, sizeof outp, "%s/out.jsonl", dir);
    snprintf(args, sizeof args, "data dedup %s %s", path, outp);
    ck_assert_int_eq(run_cli(args, &out, &err), 1);
    ck_assert_msg(strstr(err, "2 bad lines") && access(outp, F_OK) != 0, "%s", err);
    free(out);
    free(err);
    snprintf(args, sizeof args, "data dedup %s %s/../%s/in.jsonl", path, dir, strrchr(dir, '/') + 1);
    ck_assert_int_eq(run_cli(args, &out, &err), 2);
    ck_assert_msg(strstr(err, "is the input file"), "%s", err);
    free(out);
    free(err);

    /* without the bad lines: 2 removed, the first of each kept */
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "sed -i '5d;8d' '%s'", path);
    ck_assert_int_eq(system(cmd), 0);
    snprintf(args, sizeof args, "data dedup %s %s", path, outp);
    ck_assert_int_eq(run_cli(args, &out, &err), 0);
    ck_assert_msg(strstr(out, "6 conversations, removed 2 duplicates; wrote 4 to"), "%s", out);
    free(out);
    free(err);
    char *kept = read_text(outp), want[4096] = "";
    for (int k = 0; k < 4; k++) {
        conv_json(k, line, sizeof line);
        strcat(want, line);
        strcat(want, "\n");
    }
    ck_assert_str_eq(kept, want);
    free(kept);
    /* and the result checks clean */
    snprintf(args, sizeof args, "data check %s --model=%s --template=chatml", outp, fixture("tokenizer.json"));
    ck_assert_int_eq(run_cli(args, &out, &err), 0);
    ck_assert_msg(strstr(out, "4 conversations, 0 bad lines") && strstr(out, "duplicates: 0\n"), "%s", out);
    free(out);
    free(err);
    /* usage errors */
    ck_assert_int_eq(run_cli("data check x.jsonl", &out, &err), 2);
    ck_assert_msg(strstr(err, "--model DIR is required"), "%s", err);
    free(out);
    free(err);
    ck_assert_int_eq(run_cli("data prune a b", &out, &err), 2);
    ck_assert_msg(strstr(err, "unknown subcommand 'prune'"), "%s", err);
    free(out);
    free(err);
    remove_dir(dir);
}
END_TEST

/* ---- limits -------------------------------------------------------------- */

START_TEST(encode_refusals)
{
    lathe_tokenizer *tk = tok("tokenizer.json"), *small = tok("tokenizer-chatml.json");
    int32_t *ids = (int32_t *)1;
    uint8_t *mask;
    size_t n = 9;
    const struct lathe_chat_msg bad_role[] = {{"user", "hi"}, {"function", "x"}};
    ck_assert_int_eq(lathe_chat_encode(tk, LATHE_CHAT_CHATML, bad_role, 2, 0, &ids, &mask, &n), LATHE_EINVAL);
    ck_msg_has("message 2: unknown role 'function'");
    ck_assert_ptr_null(ids);
    ck_assert_uint_eq(n, 0);
    const struct lathe_chat_msg no_content[] = {{"user", NULL}};
    ck_assert_int_eq(lathe_chat_encode(tk, LATHE_CHAT_CHATML, no_content, 1, 0, &ids, &mask, &n), LATHE_EINVAL);
    ck_msg_has("message 1 has no content");
    const struct lathe_chat_msg ok[] = {{"user", "hi"}, {"assistant", "yo"}};
    ck_assert_int_eq(lathe_chat_encode(tk, 17, ok, 2, 0, &ids, &mask, &n), LATHE_EINVAL);
    ck_msg_has("unknown format 17");
    ck_assert_int_eq(lathe_chat_encode(small, LATHE_CHAT_LLAMA3, ok, 2, 0, &ids, &mask, &n), LATHE_EINVAL);
    ck_msg_has("the tokenizer has no <|begin_of_text|> token, which the llama3 format needs");
    ck_assert_int_eq(lathe_chat_stop_token(small, LATHE_CHAT_DEEPSEEK_R1), -1);
    ck_assert_int_eq(lathe_chat_stop_token(small, LATHE_CHAT_CHATML), lathe_tokenizer_token_id(small, "<|im_end|>"));
    /* an empty conversation still renders (ChatML's default system turn) */
    ck_assert_int_eq(lathe_chat_encode(tk, LATHE_CHAT_CHATML, NULL, 0, 1, &ids, &mask, &n), LATHE_OK);
    ck_assert_uint_gt(n, 5);
    free(ids);
    free(mask);
    /* Llama 3 trims Unicode white space too */
    const struct lathe_chat_msg sp[] = {{"user", "\xe3\x80\x80 \xc2\xa0q\xe2\x80\x83"}, {"assistant", "\t\n"}};
    ck_assert_int_eq(lathe_chat_encode(tk, LATHE_CHAT_LLAMA3, sp, 2, 0, &ids, &mask, &n), LATHE_OK);
    char *text;
    ck_assert_int_eq(lathe_tokenizer_decode(tk, ids, n, 0, &text), LATHE_OK);
    ck_assert_str_eq(text, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nq<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\n<|eot_id|>");
    ck_assert_int_eq(mask[n - 1], 1);
    free(text);
    free(ids);
    free(mask);
    lathe_tokenizer_free(tk);
    lathe_tokenizer_free(small);
}
END_TEST

START_TEST(parse_refusals)
{
    struct lathe_chat_msg *m = (void *)1;
    size_t n = 5;
    const char *nul = "[{\"role\": \"user\", \"content\": \"a\\u0000b\"}]";
    ck_assert_int_eq(lathe_chat_parse(nul, strlen(nul), 0, &m, &n), LATHE_EINVAL);
    ck_msg_has("invalid JSON at column");
    ck_assert_ptr_null(m);
    ck_assert_uint_eq(n, 0);
    const char *two = "[] []";
    ck_assert_int_eq(lathe_chat_parse(two, strlen(two), 0, &m, &n), LATHE_EINVAL);
    ck_msg_has("invalid JSON");
    const char *mnot = "{\"messages\": {\"role\": \"user\"}}";
    ck_assert_int_eq(lathe_chat_parse(mnot, strlen(mnot), 0, &m, &n), LATHE_EINVAL);
    ck_msg_has("\"messages\" is an object, not a list of messages");
    const char *rnum = "[{\"role\": 1, \"content\": \"x\"}]";
    ck_assert_int_eq(lathe_chat_parse(rnum, strlen(rnum), 0, &m, &n), LATHE_EINVAL);
    ck_msg_has("message 1: \"role\" is a number, not a string");
    ck_assert_int_eq(lathe_chat_parse("", 0, 0, &m, &n), LATHE_EINVAL);
    ck_msg_has("invalid JSON at column");
}
END_TEST

START_TEST(plugin_refusals)
{
    char dir[64], body[2048];
    make_dir(dir);
    write_data(dir, "data.jsonl", 0, 4);
    /* no tokenizer anywhere */
    lathe_config *cfg = data_config(dir, "template = chatml\n");
    ck_assert_int_eq(data_refuse(cfg), LATHE_ECONFIG);
    ck_msg_has("no tokenizer: set tokenizer = DIR or FILE");
    lathe_config_free(cfg);
    /* a missing file */
    snprintf(body, sizeof body, "%s", tk_key());
    char path[512];
    snprintf(path, sizeof path, "%s/run.ini", dir);
    char text[3072];
    snprintf(text, sizeof text, "[data]\npath = nowhere.jsonl\n%s", body);
    write_file(dir, "run.ini", text);
    cfg = lathe_config_load(path);
    ck_assert_int_eq(data_refuse(cfg), LATHE_EIO);
    ck_msg_has("nowhere.jsonl");
    lathe_config_free(cfg);
    /* auto cannot tell with a tokenizer that has every format's tokens */
    snprintf(body, sizeof body, "tokenizer = %s\n", fixture("tokenizer.json"));
    cfg = data_config(dir, body);
    ck_assert_int_eq(data_refuse(cfg), LATHE_EINVAL);
    ck_msg_has("template = auto");
    ck_msg_has("cannot tell the chat format");
    lathe_config_free(cfg);
    /* a bad template name and on_bad_line mode */
    snprintf(body, sizeof body, "tokenizer = %s\ntemplate = chatml3\n", fixture("tokenizer.json"));
    cfg = data_config(dir, body);
    ck_assert_int_eq(data_refuse(cfg), LATHE_ECONFIG);
    lathe_config_free(cfg);
    /* everything skipped: nothing left to train on */
    write_file(dir, "data.jsonl", "[1]\n{}\n");
    snprintf(body, sizeof body, "%son_bad_line = skip\n", tk_key());
    cfg = data_config(dir, body);
    void *d = NULL;
    char *out;
    ck_assert_int_eq(create_capture(cfg, &d, &out), LATHE_EINVAL);
    ck_msg_has("leaves no training conversation");
    ck_assert_ptr_nonnull(strstr(out, "skipped 2 bad lines"));
    free(out);
    lathe_config_free(cfg);
    /* the prompt alone fills max_length: nothing to learn, dropped */
    write_data(dir, "data.jsonl", 0, 4);
    snprintf(body, sizeof body, "%smax_length = 8\neval_fraction = 0\n", tk_key());
    cfg = data_config(dir, body);
    ck_assert_int_eq(create_capture(cfg, &d, &out), LATHE_EINVAL);
    ck_assert_msg(strstr(out, "dropped 4 conversations with no assistant token within max_length 8"), "%s", out);
    free(out);
    lathe_config_free(cfg);
    /* a checkpoint of another data set */
    write_data(dir, "data.jsonl", 0, 6);
    snprintf(body, sizeof body, "%seval_fraction = 0\n", tk_key());
    cfg = data_config(dir, body);
    void *a = data_make(cfg, 1);
    lathe_state *st = lathe_state_new();
    ck_assert_int_eq(data_ops()->state_save(a, st), LATHE_OK);
    data_ops()->destroy(a);
    lathe_config_free(cfg);
    write_data(dir, "data.jsonl", 0, 5);
    cfg = data_config(dir, body);
    a = data_make(cfg, 1);
    ck_assert_int_eq(data_ops()->state_load(a, st), LATHE_EINVAL);
    ck_msg_has("made with 6 training conversations but");
    lathe_state_free(st);
    struct lathe_batch b = {.size = sizeof b};
    ck_assert_int_eq(data_ops()->next(a, LATHE_SPLIT_TRAIN, 0, &b), LATHE_EINVAL);
    ck_assert_int_eq(data_ops()->next(a, 5, 1, &b), LATHE_EINVAL);
    /* eval_fraction 0: the eval pass is empty */
    ck_assert_int_eq(data_ops()->next(a, LATHE_SPLIT_EVAL, 1, &b), LATHE_EOF);
    data_ops()->destroy(a);
    lathe_config_free(cfg);
    remove_dir(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("chat");
    TCase *core = tcase_create("Core");
    tcase_set_timeout(core, 60);
    tcase_add_test(core, reference_ids_and_masks);
    tcase_add_test(core, deepseek_think_stripping);
    tcase_add_test(core, masks_per_format);
    tcase_add_test(core, format_names);
    tcase_add_test(core, detection);
    tcase_add_test(core, parse_forms);
    tcase_add_test(core, plugin_batches);
    tcase_add_test(core, plugin_shuffle_and_resume);
    tcase_add_test(core, plugin_packing_and_truncation);
    tcase_add_test(core, plugin_bad_lines);
    tcase_add_test(core, plugin_eval_path_and_model_tokenizer);
    tcase_add_test(core, cli_check_and_dedup);
    suite_add_tcase(s, core);
    TCase *limits = tcase_create("Limits");
    tcase_set_timeout(limits, 60);
    tcase_add_test(limits, encode_refusals);
    tcase_add_test(limits, parse_refusals);
    tcase_add_test(limits, plugin_refusals);
    suite_add_tcase(s, limits);
    return lathe_test_run(s);
}
