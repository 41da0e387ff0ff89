/* tests/check_gguf.c — GGUF reading, dequantisation and the import into
 * the Hugging Face layout, against fixtures made with the real `gguf`
 * package (tests/fixtures/gguf/make_gguf.py; formats.md §8).
 *
 * Dequantised values must equal gguf-py's bit for bit (dequant.c evaluates
 * each formula in gguf-py's operation order without fused multiply-add).
 * The Limits case feeds the reader truncated and patched copies of the
 * fixture: every one must be a clear error, never a crash (Check's fork mode
 * turns a crash into a failure). */
#define _GNU_SOURCE /* memmem, mkdtemp, nftw */
#include "testutil.h"

#include "io/gguf.h"
#include "io/safetensors.h"

#include <lathe/status.h>
#include <lathe/tensor.h>

#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------- */
static char tmpdir[256];

static void tmp_setup(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/lathe-gguf-XXXXXX", base && *base ? base : "/tmp");
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

static const char *fixture(const char *name)
{
    static char buf[4][1024];
    static int k;
    const char *top = getenv("top_srcdir");
    char *b = buf[k++ % 4];
    snprintf(b, sizeof buf[0], "%s/tests/fixtures/gguf/%s", top && *top ? top : ".", name);
    return b;
}

static const char *tmp_path(const char *name)
{
    static char buf[4][512];
    static int k;
    char *b = buf[k++ % 4];
    snprintf(b, sizeof buf[0], "%s/%s", tmpdir, name);
    return b;
}

static uint8_t *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)sz + 1);
    ck_assert_ptr_nonnull(b);
    ck_assert_uint_eq(fread(b, 1, (size_t)sz, f), (size_t)sz);
    fclose(f);
    *n = (size_t)sz;
    return b;
}

static void spit(const char *path, const uint8_t *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(b, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
}

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Byte offset of the u32 n_dims field of tensor `name`'s info. */
static size_t info_at(const uint8_t *b, size_t n, const char *name)
{
    const uint8_t *p = memmem(b, n, name, strlen(name));
    ck_assert_msg(p != NULL, "tensor %s not in the file", name);
    return (size_t)(p - b) + strlen(name);
}

/* Open a patched copy; expect failure whose message contains every one of
 * the NULL-terminated fragments. */
static void expect_open_error(const uint8_t *b, size_t n, const char *const *frags)
{
    const char *path = tmp_path("bad.gguf");
    spit(path, b, n);
    struct lathe_gguf *g = (struct lathe_gguf *)1;
    int rc = lathe_gguf_open(&g, path);
    ck_assert_msg(rc != LATHE_OK, "a corrupt file opened");
    ck_assert_ptr_null(g);
    const char *msg = lathe_errmsg();
    ck_assert_msg(strstr(msg, path) != NULL, "message does not name the file: %s", msg);
    for (const char *const *f = frags; *f; f++)
        ck_assert_msg(strstr(msg, *f) != NULL, "message lacks '%s': %s", *f, msg);
}

static void expect_convert_error(const uint8_t *b, size_t n, const char *const *frags)
{
    const char *path = tmp_path("bad.gguf");
    spit(path, b, n);
    int rc = lathe_gguf_to_hf(path, tmp_path("badout"), LATHE_F32, NULL);
    ck_assert_msg(rc != LATHE_OK, "a bad file converted");
    const char *msg = lathe_errmsg();
    ck_assert_msg(strstr(msg, path) != NULL, "message does not name the file: %s", msg);
    for (const char *const *f = frags; *f; f++)
        ck_assert_msg(strstr(msg, *f) != NULL, "message lacks '%s': %s", *f, msg);
}

#define FRAGS(...) ((const char *const[]){__VA_ARGS__, NULL})

/* Compare two f32 buffers bit for bit, naming the first difference. */
static void assert_bits_equal(const char *what, const float *got, const float *want, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t a, b;
        memcpy(&a, &got[i], 4);
        memcpy(&b, &want[i], 4);
        ck_assert_msg(a == b, "%s[%zu]: got %.9g (0x%08x), gguf-py gives %.9g (0x%08x)", what, i, (double)got[i], a,
                      (double)want[i], b);
    }
}

static float *st_f32(const struct lathe_st_info *in)
{
    size_t n = in->nbytes / lathe_dtype_size(in->dtype);
    float *f = malloc(n * sizeof *f + 1);
    ck_assert_ptr_nonnull(f);
    lathe_convert_to_f32(f, in->data, in->dtype, n);
    return f;
}

/* ---- Core ---------------------------------------------------------------- */
START_TEST(test_read_metadata)
{
    struct lathe_gguf *g;
    ck_assert_int_eq(lathe_gguf_open(&g, fixture("tiny.gguf")), LATHE_OK);
    ck_assert_uint_eq(lathe_gguf_version(g), 3);
    ck_assert_uint_eq(lathe_gguf_alignment(g), 32);
    ck_assert_uint_eq(lathe_gguf_data_offset(g) % 32, 0);
    struct lathe_gguf_str s;
    ck_assert_int_eq(lathe_gguf_get_str(g, "general.architecture", &s), LATHE_OK);
    ck_assert_uint_eq(s.len, 5);
    ck_assert(memcmp(s.ptr, "llama", 5) == 0);
    uint64_t u;
    ck_assert_int_eq(lathe_gguf_get_uint(g, "llama.block_count", &u), LATHE_OK);
    ck_assert_uint_eq(u, 2);
    ck_assert_int_eq(lathe_gguf_get_uint(g, "llama.attention.head_count_kv", &u), LATHE_OK);
    ck_assert_uint_eq(u, 2);
    double d;
    ck_assert_int_eq(lathe_gguf_get_float(g, "llama.attention.layer_norm_rms_epsilon", &d), LATHE_OK);
    ck_assert(d == (double)1e-5f);
    ck_assert_int_eq(lathe_gguf_get_float(g, "llama.rope.freq_base", &d), LATHE_OK);
    ck_assert(d == 100000.0);
    int bo;
    ck_assert_int_eq(lathe_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &bo), LATHE_OK);
    ck_assert_int_eq(bo, 0);
    /* Arrays of strings, including an empty one and non-ASCII. */
    const struct lathe_gguf_kv *kv;
    ck_assert_int_eq(lathe_gguf_get_arr(g, "test.strings", LATHE_GGUF_STRING, &kv), LATHE_OK);
    ck_assert_uint_eq(kv->arr_n, 3);
    ck_assert_uint_eq(kv->arr_str[1].len, 0);
    ck_assert_uint_eq(kv->arr_str[2].len, strlen("ünïcode"));
    ck_assert(memcmp(kv->arr_str[2].ptr, "ünïcode", kv->arr_str[2].len) == 0);
    ck_assert_int_eq(lathe_gguf_get_arr(g, "tokenizer.ggml.tokens", LATHE_GGUF_STRING, &kv), LATHE_OK);
    ck_assert_uint_eq(kv->arr_n, 42);
    ck_assert(kv->arr_str[1].len == 12 && memcmp(kv->arr_str[1].ptr, "<|im_start|>", 12) == 0);
    ck_assert_int_eq(lathe_gguf_get_arr(g, "tokenizer.ggml.token_type", LATHE_GGUF_I64, &kv), LATHE_OK);
    ck_assert_int_eq(lathe_gguf_arr_int(kv, 0), 3);
    ck_assert_int_eq(lathe_gguf_arr_int(kv, 5), 1);
    ck_assert_int_eq(lathe_gguf_arr_int(kv, 41), 4);
    /* Wrong types and missing keys name the key. */
    ck_assert_int_eq(lathe_gguf_get_str(g, "llama.block_count", &s), LATHE_EINVAL);
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "llama.block_count"));
    ck_assert_int_eq(lathe_gguf_get_uint(g, "no.such.key", &u), LATHE_EINVAL);
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "no.such.key"));
    ck_assert_ptr_null(lathe_gguf_kv_find(g, "no.such.key"));
    /* Tensor infos: dims fastest first. */
    ck_assert_uint_eq(lathe_gguf_tensor_count(g), 20);
    const struct lathe_gguf_tensor *t = lathe_gguf_tensor_find(g, "token_embd.weight");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->n_dims, 2);
    ck_assert_uint_eq(t->ne[0], 32);
    ck_assert_uint_eq(t->ne[1], 42);
    ck_assert_uint_eq(t->type, LATHE_GGML_Q8_0);
    ck_assert_uint_eq(t->nbytes, 42 * 34);
    ck_assert_str_eq(lathe_ggml_type_name(t->type), "Q8_0");
    t = lathe_gguf_tensor_find(g, "blk.0.attn_k.weight");
    ck_assert_uint_eq(t->type, LATHE_GGML_Q4_0);
    ck_assert_uint_eq(t->ne[0], 32);
    ck_assert_uint_eq(t->ne[1], 16);
    ck_assert_ptr_null(lathe_gguf_tensor_find(g, "output.weight"));
    lathe_gguf_close(g);
}
END_TEST

/* Every K-quant type, dequantised from random blocks, equals gguf-py. */
START_TEST(test_dequant_kquants)
{
    struct lathe_gguf *g;
    struct lathe_st_file *st;
    ck_assert_int_eq(lathe_gguf_open(&g, fixture("kquants.gguf")), LATHE_OK);
    ck_assert_int_eq(lathe_st_open(&st, fixture("kquants-expected.safetensors")), LATHE_OK);
    ck_assert_uint_eq(lathe_gguf_tensor_count(g), 5);
    for (size_t i = 0; i < lathe_gguf_tensor_count(g); i++) {
        const struct lathe_gguf_tensor *t = lathe_gguf_tensor_at(g, i);
        struct lathe_st_info in;
        ck_assert_int_eq(lathe_st_find(st, t->name, &in), LATHE_OK);
        ck_assert_uint_eq(t->nelem, 512);
        float got[512];
        float *want = st_f32(&in);
        ck_assert_int_eq(lathe_dequantize(t->type, t->data, got, t->nelem), LATHE_OK);
        assert_bits_equal(t->name, got, want, 512);
        free(want);
    }
    lathe_st_close(st);
    lathe_gguf_close(g);
}
END_TEST

/* The inverse of llama.cpp's permute on a hand-worked case: in each head,
 * GGUF rows (i, j) for i < d/2, j < 2 go back to row j·d/2 + i. */
START_TEST(test_unpermute_rows)
{
    const float w[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    float out[8];
    ck_assert_int_eq(lathe_gguf_unpermute_rows(w, out, 8, 1, 2), LATHE_OK);
    const float want[8] = {0, 2, 1, 3, 4, 6, 5, 7};
    assert_bits_equal("unpermute", out, want, 8);
    /* d = 8: rows 0..7 of one head -> 0 2 4 6 1 3 5 7; two columns move as
     * a row. */
    float w2[16], o2[16];
    for (int i = 0; i < 16; i++)
        w2[i] = (float)i;
    ck_assert_int_eq(lathe_gguf_unpermute_rows(w2, o2, 8, 2, 1), LATHE_OK);
    const int rows[8] = {0, 2, 4, 6, 1, 3, 5, 7};
    for (int r = 0; r < 8; r++) {
        ck_assert(o2[2 * r] == (float)(2 * rows[r]));
        ck_assert(o2[2 * r + 1] == (float)(2 * rows[r] + 1));
    }
    ck_assert_int_eq(lathe_gguf_unpermute_rows(w, out, 6, 1, 2), LATHE_EINVAL);
}
END_TEST

static json_t *load_json(const char *name)
{
    json_error_t err;
    json_t *j = json_load_file(tmp_path(name), 0, &err);
    ck_assert_msg(j != NULL, "%s: %s", name, err.text);
    return j;
}

static json_int_t jint(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    ck_assert_msg(json_is_integer(v), "%s is not an integer", k);
    return json_integer_value(v);
}

/* The whole import of the tiny llama: every tensor renamed and equal to
 * gguf-py's dequantisation (q/k un-permuted; blk.1's lossless q and k equal
 * the Hugging Face originals), and the config and tokenizer files. */
START_TEST(test_convert_tiny)
{
    const char *out = tmp_path("hf");
    ck_assert_msg(lathe_gguf_to_hf(fixture("tiny.gguf"), out, LATHE_F32, NULL) == LATHE_OK, "%s", lathe_errmsg());
    struct lathe_st_file *got, *want;
    ck_assert_int_eq(lathe_st_open(&got, tmp_path("hf/model.safetensors")), LATHE_OK);
    ck_assert_int_eq(lathe_st_open(&want, fixture("tiny-expected.safetensors")), LATHE_OK);
    ck_assert_uint_eq(lathe_st_count(got), lathe_st_count(want));
    ck_assert_uint_eq(lathe_st_count(got), 20);
    for (size_t i = 0; i < lathe_st_count(want); i++) {
        struct lathe_st_info w, g;
        ck_assert_int_eq(lathe_st_get(want, i, &w), LATHE_OK);
        ck_assert_msg(lathe_st_find(got, w.name, &g) == LATHE_OK, "%s missing: %s", w.name, lathe_errmsg());
        ck_assert_int_eq(g.dtype, LATHE_F32);
        ck_assert_int_eq(g.ndim, w.ndim);
        for (int d = 0; d < w.ndim; d++)
            ck_assert_int_eq(g.shape[d], w.shape[d]);
        float *a = st_f32(&g), *b = st_f32(&w);
        assert_bits_equal(w.name, a, b, w.nbytes / 4);
        free(a);
        free(b);
    }
    ck_assert(!lathe_st_has(got, "lm_head.weight"));
    lathe_st_close(got);

    json_t *c = load_json("hf/config.json");
    ck_assert_str_eq(json_string_value(json_array_get(json_object_get(c, "architectures"), 0)), "LlamaForCausalLM");
    ck_assert_str_eq(json_string_value(json_object_get(c, "model_type")), "llama");
    ck_assert_int_eq(jint(c, "hidden_size"), 32);
    ck_assert_int_eq(jint(c, "intermediate_size"), 64);
    ck_assert_int_eq(jint(c, "num_hidden_layers"), 2);
    ck_assert_int_eq(jint(c, "num_attention_heads"), 4);
    ck_assert_int_eq(jint(c, "num_key_value_heads"), 2);
    ck_assert_int_eq(jint(c, "max_position_embeddings"), 256);
    ck_assert_int_eq(jint(c, "vocab_size"), 42);
    ck_assert_int_eq(jint(c, "bos_token_id"), 1);
    ck_assert_int_eq(jint(c, "eos_token_id"), 2);
    ck_assert(json_real_value(json_object_get(c, "rms_norm_eps")) == 1e-5);
    ck_assert(json_real_value(json_object_get(c, "rope_theta")) == 100000.0);
    ck_assert(json_is_true(json_object_get(c, "tie_word_embeddings")));
    ck_assert_str_eq(json_string_value(json_object_get(c, "hidden_act")), "silu");
    ck_assert_ptr_null(json_object_get(c, "head_dim")); /* = hidden / heads */
    json_decref(c);

    json_t *gc = load_json("hf/generation_config.json");
    ck_assert_int_eq(jint(gc, "bos_token_id"), 1);
    ck_assert_int_eq(jint(gc, "eos_token_id"), 2);
    json_decref(gc);

    json_t *tk = load_json("hf/tokenizer.json");
    json_t *model = json_object_get(tk, "model");
    ck_assert_str_eq(json_string_value(json_object_get(model, "type")), "BPE");
    json_t *vocab = json_object_get(model, "vocab");
    ck_assert_uint_eq(json_object_size(vocab), 42);
    ck_assert_int_eq(jint(vocab, "<|im_end|>"), 2);
    ck_assert_int_eq(jint(vocab, "\xc4\xa0world"), 40); /* "Ġworld" */
    json_t *merges = json_object_get(model, "merges");
    ck_assert_uint_eq(json_array_size(merges), 10);
    ck_assert_str_eq(json_string_value(json_array_get(merges, 0)), "h e");
    json_t *added = json_object_get(tk, "added_tokens");
    ck_assert_uint_eq(json_array_size(added), 4);
    ck_assert(json_is_true(json_object_get(json_array_get(added, 0), "special")));
    ck_assert_int_eq(jint(json_array_get(added, 3), "id"), 41);
    ck_assert(json_is_false(json_object_get(json_array_get(added, 3), "special"))); /* user-defined */
    /* "smollm": digits split one by one, then GPT-2 ByteLevel. */
    json_t *pre = json_object_get(tk, "pre_tokenizer");
    ck_assert_str_eq(json_string_value(json_object_get(pre, "type")), "Sequence");
    json_t *p0 = json_array_get(json_object_get(pre, "pretokenizers"), 0);
    json_t *p1 = json_array_get(json_object_get(pre, "pretokenizers"), 1);
    ck_assert_str_eq(json_string_value(json_object_get(p0, "type")), "Split");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(p0, "pattern"), "Regex")), "\\p{N}");
    ck_assert_str_eq(json_string_value(json_object_get(p0, "behavior")), "Isolated");
    ck_assert_str_eq(json_string_value(json_object_get(p1, "type")), "ByteLevel");
    ck_assert(json_is_true(json_object_get(p1, "use_regex")));
    ck_assert(json_is_false(json_object_get(p1, "add_prefix_space")));
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(tk, "decoder"), "type")), "ByteLevel");
    json_decref(tk);

    json_t *tc = load_json("hf/tokenizer_config.json");
    ck_assert_str_eq(json_string_value(json_object_get(tc, "bos_token")), "<|im_start|>");
    ck_assert_str_eq(json_string_value(json_object_get(tc, "eos_token")), "<|im_end|>");
    ck_assert_str_eq(json_string_value(json_object_get(tc, "pad_token")), "<|im_end|>");
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(tc, "chat_template")), "<|im_start|>"));
    ck_assert(json_is_false(json_object_get(tc, "add_bos_token")));
    json_decref(tc);

    /* --dtype bfloat16: the same values rounded to bf16. */
    ck_assert_int_eq(lathe_gguf_to_hf(fixture("tiny.gguf"), tmp_path("hf16"), LATHE_BF16, NULL), LATHE_OK);
    ck_assert_int_eq(lathe_st_open(&got, tmp_path("hf16/model.safetensors")), LATHE_OK);
    struct lathe_st_info g16, w32;
    ck_assert_int_eq(lathe_st_find(got, "model.layers.0.self_attn.q_proj.weight", &g16), LATHE_OK);
    ck_assert_int_eq(lathe_st_find(want, "model.layers.0.self_attn.q_proj.weight", &w32), LATHE_OK);
    ck_assert_int_eq(g16.dtype, LATHE_BF16);
    float *a = st_f32(&g16), *b = st_f32(&w32);
    for (size_t i = 0; i < w32.nbytes / 4; i++)
        ck_assert(a[i] == lathe_bf16_to_f32(lathe_f32_to_bf16(b[i])));
    free(a);
    free(b);
    lathe_st_close(got);
    lathe_st_close(want);
    c = load_json("hf16/config.json");
    ck_assert_str_eq(json_string_value(json_object_get(c, "torch_dtype")), "bfloat16");
    json_decref(c);
}
END_TEST

/* ---- Limits -------------------------------------------------------------- */

/* Every prefix that cuts into the header or a tensor's data is an error. */
START_TEST(test_truncated)
{
    size_t n;
    uint8_t *b = slurp(fixture("tiny.gguf"), &n);
    struct lathe_gguf *g;
    ck_assert_int_eq(lathe_gguf_open(&g, fixture("tiny.gguf")), LATHE_OK);
    uint64_t need = lathe_gguf_data_offset(g), data0 = need;
    for (size_t i = 0; i < lathe_gguf_tensor_count(g); i++) {
        const struct lathe_gguf_tensor *t = lathe_gguf_tensor_at(g, i);
        if (data0 + t->offset + t->nbytes > need)
            need = data0 + t->offset + t->nbytes;
    }
    lathe_gguf_close(g);
    for (size_t len = 0; len < need; len += (len < data0 ? 1 : 97)) {
        const char *path = tmp_path("cut.gguf");
        spit(path, b, len);
        int rc = lathe_gguf_open(&g, path);
        ck_assert_msg(rc != LATHE_OK, "a file cut to %zu of %zu bytes opened", len, (size_t)need);
        ck_assert_msg(strstr(lathe_errmsg(), path) != NULL, "%s", lathe_errmsg());
        if (len >= 4 && len < data0)
            ck_assert_msg(strstr(lathe_errmsg(), "truncated") != NULL, "%zu: %s", len, lathe_errmsg());
    }
    expect_open_error(b, need - 1, FRAGS("past its end"));
    free(b);
}
END_TEST

START_TEST(test_bad_header)
{
    size_t n;
    uint8_t *b = slurp(fixture("tiny.gguf"), &n);
    uint8_t *c = malloc(n);
    memcpy(c, b, n);
    c[0] = 'G', c[1] = 'G', c[2] = 'M', c[3] = 'L';
    expect_open_error(c, n, FRAGS("not a GGUF file", "GGML"));
    memcpy(c, b, n);
    put_u32(c + 4, 1);
    expect_open_error(c, n, FRAGS("version 1"));
    put_u32(c + 4, 0x03000000u);
    expect_open_error(c, n, FRAGS("version"));
    memcpy(c, b, n);
    put_u64(c + 8, (uint64_t)1 << 60);
    expect_open_error(c, n, FRAGS("tensor count"));
    memcpy(c, b, n);
    put_u64(c + 16, UINT64_MAX);
    expect_open_error(c, n, FRAGS("key count"));
    /* The first key's length made huge. */
    memcpy(c, b, n);
    put_u64(c + 24, (uint64_t)1 << 62);
    expect_open_error(c, n, FRAGS("truncated", "metadata key 0"));
    /* A value type past the known ones. */
    memcpy(c, b, n);
    uint64_t klen = 0;
    for (int i = 7; i >= 0; i--)
        klen = klen << 8 | c[24 + i];
    put_u32(c + 32 + klen, 77);
    expect_open_error(c, n, FRAGS("unknown value type 77"));
    free(c);
    free(b);
}
END_TEST

START_TEST(test_bad_tensor_info)
{
    size_t n;
    uint8_t *b = slurp(fixture("tiny.gguf"), &n);
    uint8_t *c = malloc(n);
    const char *name = "blk.1.ffn_down.weight"; /* Q4_0 [64 -> 32] */
    size_t at = info_at(b, n, name);
    /* n_dims u32, 2 × u64 dims, type u32, offset u64 */
    memcpy(c, b, n);
    put_u32(c + at + 4 + 16, 99);
    expect_open_error(c, n, FRAGS(name, "unknown ggml type 99"));
    memcpy(c, b, n);
    put_u32(c + at, 7);
    expect_open_error(c, n, FRAGS(name, "7 dimensions"));
    memcpy(c, b, n);
    put_u64(c + at + 4, (uint64_t)1 << 40);
    put_u64(c + at + 12, (uint64_t)1 << 40);
    expect_open_error(c, n, FRAGS(name, "overflow"));
    memcpy(c, b, n);
    put_u64(c + at + 4, 48); /* not whole Q4_0 blocks */
    expect_open_error(c, n, FRAGS(name, "block size"));
    memcpy(c, b, n);
    put_u64(c + at + 4 + 16 + 4, (uint64_t)1 << 50);
    expect_open_error(c, n, FRAGS(name, "past its end"));
    memcpy(c, b, n);
    put_u64(c + at + 4 + 16 + 4, UINT64_MAX - 31);
    expect_open_error(c, n, FRAGS(name, "past its end"));
    memcpy(c, b, n);
    c[at + 4 + 16 + 4] += 4; /* misaligned */
    expect_open_error(c, n, FRAGS(name, "alignment"));
    /* A second tensor of the same name. */
    memcpy(c, b, n);
    memcpy(c + at - strlen(name), "blk.0.ffn_down.weight", strlen(name));
    expect_open_error(c, n, FRAGS("blk.0.ffn_down.weight", "twice"));
    free(c);
    free(b);
}
END_TEST

/* Files that open but cannot be converted say why, naming what. */
START_TEST(test_convert_refusals)
{
    size_t n;
    uint8_t *b = slurp(fixture("tiny.gguf"), &n);
    uint8_t *c = malloc(n);
    uint8_t *p;
    memcpy(c, b, n);
    p = memmem(c, n, "smollm", 6);
    ck_assert_ptr_nonnull(p);
    memcpy(p, "smolxx", 6);
    expect_convert_error(c, n, FRAGS("tokenizer.ggml.pre", "'smolxx'"));
    memcpy(c, b, n);
    p = memmem(c, n, "general.architecture", 20);
    ck_assert_ptr_nonnull(p);
    memcpy(p + 20 + 4 + 8, "gpt99", 5);
    expect_convert_error(c, n, FRAGS("general.architecture", "gpt99"));
    memcpy(c, b, n);
    p = memmem(c, n, "blk.1.ffn_up.weight", 19);
    memcpy(p, "blk.1.ffn_zz.weight", 19);
    expect_convert_error(c, n, FRAGS("blk.1.ffn_zz.weight"));
    /* IQ4_NL has Q4_0's block size, so the file still opens. */
    memcpy(c, b, n);
    size_t at = info_at(c, n, "blk.1.ffn_down.weight");
    put_u32(c + at + 4 + 16, 20);
    expect_convert_error(c, n, FRAGS("blk.1.ffn_down.weight", "IQ4_NL", "cannot dequantize"));
    /* A shape that disagrees with the metadata. */
    memcpy(c, b, n);
    p = memmem(c, n, "llama.feed_forward_length", 25);
    put_u32(p + 25 + 4, 96);
    expect_convert_error(c, n, FRAGS("blk.0.ffn_gate.weight", "[64, 32]", "[96, 32]"));
    /* A merge whose parts are not tokens. */
    memcpy(c, b, n);
    p = memmem(c, n, "he ll", 5);
    memcpy(p, "he zz", 5);
    expect_convert_error(c, n, FRAGS("tokenizer.ggml.merges[2]", "zz"));
    free(c);
    free(b);
    float out[32];
    ck_assert_int_eq(lathe_dequantize(99, out, out, 32), LATHE_EUNSUPPORTED);
    ck_assert_int_eq(lathe_dequantize(LATHE_GGML_Q4_1, out, out, 31), LATHE_EINVAL);
    ck_assert_int_eq(lathe_gguf_to_hf(fixture("kquants.gguf"), tmp_path("k"), LATHE_F32, NULL), LATHE_EUNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "general.architecture"));
}
END_TEST

/* Random byte flips in the header: open and convert must fail cleanly or
 * succeed, never crash or read outside the file. */
START_TEST(test_fuzz_header)
{
    size_t n;
    uint8_t *b = slurp(fixture("tiny.gguf"), &n);
    struct lathe_gguf *g;
    ck_assert_int_eq(lathe_gguf_open(&g, fixture("tiny.gguf")), LATHE_OK);
    size_t hdr = (size_t)lathe_gguf_data_offset(g);
    lathe_gguf_close(g);
    uint8_t *c = malloc(n);
    uint64_t s = 88172645463325252ull;
    int opened = 0, converted = 0;
    for (int it = 0; it < 400; it++) {
        memcpy(c, b, n);
        int flips = 1 + it % 4;
        for (int k = 0; k < flips; k++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            c[s % hdr] ^= (uint8_t)(1u << ((s >> 32) % 8));
        }
        const char *path = tmp_path("fuzz.gguf");
        spit(path, c, n);
        if (lathe_gguf_open(&g, path) == LATHE_OK) {
            opened++;
            lathe_gguf_close(g);
            /* Converting writes and syncs files: a few suffice. */
            if (converted++ < 20)
                (void)lathe_gguf_to_hf(path, tmp_path("fuzzout"), LATHE_F32, NULL);
        } else {
            ck_assert_msg(strstr(lathe_errmsg(), path) != NULL, "%s", lathe_errmsg());
        }
    }
    ck_assert_int_gt(opened, 0); /* flips in values leave the file valid */
    free(c);
    free(b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gguf");
    TCase *core = tcase_create("Core");
    tcase_add_checked_fixture(core, tmp_setup, tmp_teardown);
    tcase_set_timeout(core, 60);
    tcase_add_test(core, test_read_metadata);
    tcase_add_test(core, test_dequant_kquants);
    tcase_add_test(core, test_unpermute_rows);
    tcase_add_test(core, test_convert_tiny);
    suite_add_tcase(s, core);
    TCase *lim = tcase_create("Limits");
    tcase_add_checked_fixture(lim, tmp_setup, tmp_teardown);
    tcase_set_timeout(lim, 60);
    tcase_add_test(lim, test_truncated);
    tcase_add_test(lim, test_bad_header);
    tcase_add_test(lim, test_bad_tensor_info);
    tcase_add_test(lim, test_convert_refusals);
    tcase_add_test(lim, test_fuzz_header);
    suite_add_tcase(s, lim);
    return lathe_test_run(s);
}
