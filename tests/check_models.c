/* tests/check_models.c — Hugging Face models in and out: the weights module
 * (core/io/weights.c), the llama plugin (Llama, Qwen2, Mistral) and the
 * gpt2 plugin's pretrained mode, against reference values that
 * tests/fixtures/models/make_models.py made once with transformers.
 *
 * For each fixture model: logits and loss within 1e-4 of transformers', the
 * gradient of every parameter at cosine > 0.99999 with the reference (and
 * its norm within 1e-3), save -> reload giving identical logits, and
 * incremental decoding through the KV cache matching the full forward.
 * The worst numbers are printed. With LATHE_MODELS_SAVE_DIR set, each model
 * is also saved to $LATHE_MODELS_SAVE_DIR/NAME for check_saved.py, which
 * loads them in transformers. */
#include <dlfcn.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lathe/lathe.h>

#include "io/safetensors.h"
#include "testutil.h"

/* ---- plugin and fixture access ----------------------------------------- */

static const void *component(const char *file, int kind, const char *name)
{
    const char *dir = getenv("LATHE_PLUGIN_PATH");
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir && dir[0] ? dir : "plugins/.libs", file);
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    ck_assert_msg(h != NULL, "dlopen %s: %s", path, dlerror());
    lathe_plugin_describe_fn describe = (lathe_plugin_describe_fn)dlsym(h, LATHE_PLUGIN_SYMBOL);
    ck_assert_msg(describe != NULL, "%s exports no %s", path, LATHE_PLUGIN_SYMBOL);
    const struct lathe_plugin_desc *d = describe();
    ck_assert_int_eq(d->abi_major, LATHE_ABI_MAJOR);
    for (const struct lathe_component *c = d->components; c->kind != LATHE_KIND_NONE; c++)
        if (c->kind == kind && strcmp(c->name, name) == 0)
            return c->ops;
    ck_abort_msg("%s has no %s component '%s'", path, lathe_kind_name(kind), name);
    return NULL;
}

struct fixture {
    const char *name;   /* directory under tests/fixtures/models */
    const char *plugin; /* .so */
    const char *comp;   /* component */
};

static const struct fixture fixtures[] = {
    {"llama", "lathe-llama.so", "llama"},
    {"llama3", "lathe-llama.so", "llama"},
    {"qwen2", "lathe-llama.so", "llama"},
    {"mistral", "lathe-llama.so", "llama"},
    {"gpt2", "lathe-gpt2.so", "gpt2"},
};
#define NFIX ((int)(sizeof fixtures / sizeof fixtures[0]))

static const struct lathe_model_ops *ops_of(const struct fixture *f)
{
    return component(f->plugin, LATHE_KIND_MODEL, f->comp);
}

static const char *fixture_dir(const char *name, char *buf, size_t n)
{
    const char *top = getenv("top_srcdir");
    snprintf(buf, n, "%s/tests/fixtures/models/%s", top && top[0] ? top : ".", name);
    return buf;
}

static struct lathe_env make_env(lathe_config *cfg)
{
    struct lathe_env env = {.size = sizeof env, .output_dir = "/tmp", .seed = 1, .device = LATHE_DEVICE_CPU,
                            .precision = LATHE_PRECISION_FP32, .batch_size = 2, .grad_accum = 1, .steps = 1,
                            .world_size = 1, .config = cfg};
    return env;
}

/* Create a model from [model] text; returns the status, the model in *m. */
static int try_create(const struct lathe_model_ops *ops, const char *ini_text, void **m, lathe_config **cfgp)
{
    lathe_config *cfg = lathe_config_load_string("test.ini", ini_text);
    ck_assert_msg(cfg != NULL, "config: %s", lathe_errmsg());
    struct lathe_env env = make_env(cfg);
    int rc = ops->create(lathe_config_section(cfg, "model"), &env, m);
    if (rc == LATHE_OK)
        ck_assert_int_eq(lathe_config_check_unused(cfg), LATHE_OK);
    *cfgp = cfg;
    return rc;
}

static void *create_at(const struct lathe_model_ops *ops, const char *dir, const char *extra, lathe_config **cfg)
{
    char text[8192];
    snprintf(text, sizeof text, "[model]\npretrained = %s\n%s", dir, extra ? extra : "");
    void *m = NULL;
    int rc = try_create(ops, text, &m, cfg);
    ck_assert_msg(rc == LATHE_OK, "create from %s: %s", dir, lathe_errmsg());
    return m;
}

/* The reference batch and values of a fixture (tensors in the current scope). */
struct expected {
    lathe_weights *w;
    struct lathe_batch batch;
    lathe_tensor *logits;
    json_t *json;
};

static lathe_tensor *read_named(lathe_weights *w, const char *name, enum lathe_dtype dt)
{
    size_t n = lathe_weights_count(w);
    for (size_t i = 0; i < n; i++) {
        const char *nm;
        enum lathe_dtype sdt;
        int nd;
        int64_t shape[LATHE_MAX_DIMS];
        ck_assert_int_eq(lathe_weights_info(w, i, &nm, &sdt, &nd, shape), LATHE_OK);
        if (strcmp(nm, name) == 0) {
            lathe_tensor *t = lathe_tensor_new(dt, nd, shape);
            ck_assert_msg(lathe_weights_read(w, name, t) == LATHE_OK, "%s", lathe_errmsg());
            return t;
        }
    }
    return NULL;
}

static void expected_load(const char *name, struct expected *e)
{
    char dir[4096], path[4200];
    fixture_dir(name, dir, sizeof dir);
    snprintf(path, sizeof path, "%s/expected.safetensors", dir);
    ck_assert_msg(lathe_weights_open(&e->w, path) == LATHE_OK, "%s", lathe_errmsg());
    e->batch = (struct lathe_batch){.size = sizeof e->batch};
    e->batch.input_ids = read_named(e->w, "input_ids", LATHE_I32);
    e->batch.labels = read_named(e->w, "labels", LATHE_I32);
    e->logits = read_named(e->w, "logits", LATHE_F32);
    ck_assert(e->batch.input_ids && e->batch.labels && e->logits);
    e->batch.B = e->batch.input_ids->shape[0];
    e->batch.T = e->batch.input_ids->shape[1];
    for (int64_t i = 0; i < e->batch.B * e->batch.T; i++)
        e->batch.ntokens += lathe_tensor_i32(e->batch.labels)[i] != LATHE_IGNORE_INDEX;
    snprintf(path, sizeof path, "%s/expected.json", dir);
    json_error_t err;
    e->json = json_load_file(path, 0, &err);
    ck_assert_msg(e->json != NULL, "%s: %s", path, err.text);
}

static void expected_free(struct expected *e)
{
    lathe_weights_close(e->w);
    json_decref(e->json);
}

static double max_abs_diff(const lathe_tensor *a, const lathe_tensor *b)
{
    ck_assert_msg(lathe_tensor_same_shape(a, b), "shapes differ");
    double m = 0;
    const float *x = lathe_tensor_f32(a), *y = lathe_tensor_f32(b);
    for (int64_t i = 0; i < lathe_tensor_numel(a); i++)
        m = fmax(m, fabs((double)x[i] - (double)y[i]));
    return m;
}

/* ---- reference comparisons ----------------------------------------------- */

START_TEST(matches_transformers)
{
    const struct fixture *f = &fixtures[_i];
    const struct lathe_model_ops *ops = ops_of(f);
    char dir[4096];
    lathe_config *cfg;
    void *m = create_at(ops, fixture_dir(f->name, dir, sizeof dir), NULL, &cfg);
    lathe_scope_push();
    struct expected e;
    expected_load(f->name, &e);
    lathe_tensor *logits = ops->forward(m, &e.batch, 1);
    ck_assert_msg(logits != NULL, "%s", lathe_errmsg());
    double dlogit = max_abs_diff(logits, e.logits);
    lathe_tensor *loss = lathe_cross_entropy(logits, e.batch.labels, LATHE_IGNORE_INDEX, 0.0f);
    ck_assert(loss != NULL);
    double want = json_number_value(json_object_get(e.json, "loss"));
    double dloss = fabs(lathe_tensor_f32(loss)[0] - want);
    ck_assert_int_eq(lathe_backward(loss, 1.0f), LATHE_OK);

    lathe_tensor *const *p;
    size_t np;
    ck_assert_int_eq(ops->params(m, &p, &np), LATHE_OK);
    json_t *norms = json_object_get(e.json, "grad_norm");
    ck_assert_uint_eq(np, json_object_size(norms)); /* every parameter, no more */
    double worst = 1.0, worst_norm = 0.0;
    const char *worst_name = "";
    for (size_t i = 0; i < np; i++) {
        char key[LATHE_NAME_MAX + 8];
        snprintf(key, sizeof key, "grad.%s", p[i]->name);
        lathe_tensor *ref = read_named(e.w, key, LATHE_F32);
        ck_assert_msg(ref != NULL, "%s: no reference gradient for '%s'", f->name, p[i]->name);
        ck_assert_msg(p[i]->grad != NULL, "%s: '%s' got no gradient", f->name, p[i]->name);
        ck_assert(lathe_tensor_same_shape(ref, p[i]->grad));
        const float *g = lathe_tensor_f32(p[i]->grad), *r = lathe_tensor_f32(ref);
        double dot = 0, gg = 0, rr = 0;
        for (int64_t k = 0; k < lathe_tensor_numel(ref); k++) {
            dot += (double)g[k] * r[k];
            gg += (double)g[k] * g[k];
            rr += (double)r[k] * r[k];
        }
        double cos = (gg == 0 && rr == 0) ? 1.0 : dot / sqrt(gg * rr);
        double wn = json_number_value(json_object_get(norms, p[i]->name));
        double rel = fabs(sqrt(gg) - wn) / fmax(wn, 1e-12);
        if (cos < worst) {
            worst = cos;
            worst_name = p[i]->name;
        }
        worst_norm = fmax(worst_norm, rel);
        ck_assert_msg(cos > 0.99999, "%s: gradient of '%s' has cosine %.8f with transformers'", f->name,
                      p[i]->name, cos);
        ck_assert_msg(rel < 1e-3, "%s: gradient norm of '%s' is %g, transformers' %g", f->name, p[i]->name,
                      sqrt(gg), wn);
    }
    printf("%-8s max |logit diff| %.3g, |loss diff| %.3g, worst grad cosine %.9f (%s), worst grad norm rel "
           "diff %.3g, %zu params\n",
           f->name, dlogit, dloss, worst, worst_name, worst_norm, np);
    fflush(stdout);
    ck_assert_msg(dlogit < 1e-4, "%s: logits differ from transformers' by %g", f->name, dlogit);
    ck_assert_msg(dloss < 1e-4, "%s: loss %.7f, transformers' %.7f", f->name, lathe_tensor_f32(loss)[0], want);
    expected_free(&e);
    lathe_scope_pop();
    ops->destroy(m);
    lathe_config_free(cfg);
}
END_TEST

/* A scratch copy of fixture `name`: links to its files, with config.json
 * rewritten by edit() (NULL: copied as is). Returns the directory. */
static char *scratch(const char *name, void (*edit)(json_t *cfg, void *arg), void *arg)
{
    char src[4096], tmpl[] = "/tmp/lathe-models-XXXXXX";
    char *dir = mkdtemp(tmpl);
    ck_assert(dir != NULL);
    dir = strdup(dir);
    fixture_dir(name, src, sizeof src);
    static const char *const files[] = {"model.safetensors", "model.safetensors.index.json",
                                        "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                                        "model-00003-of-00003.safetensors", "generation_config.json", NULL};
    for (const char *const *fl = files; *fl; fl++) {
        char a[4200], b[4200];
        snprintf(a, sizeof a, "%s/%s", src, *fl);
        snprintf(b, sizeof b, "%s/%s", dir, *fl);
        if (access(a, R_OK) == 0)
            ck_assert_int_eq(symlink(a, b), 0);
    }
    char cp[4200], cd[4200];
    snprintf(cp, sizeof cp, "%s/config.json", src);
    snprintf(cd, sizeof cd, "%s/config.json", dir);
    json_error_t err;
    json_t *cfg = json_load_file(cp, 0, &err);
    ck_assert(cfg != NULL);
    if (edit)
        edit(cfg, arg);
    ck_assert_int_eq(json_dump_file(cfg, cd, JSON_INDENT(2)), 0);
    json_decref(cfg);
    return dir;
}

static void rm_rf(const char *dir)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

static void set_linear_rope(json_t *cfg, void *arg)
{
    (void)arg;
    json_object_set_new(cfg, "rope_scaling", json_pack("{s:s,s:f}", "type", "linear", "factor", 2.0));
}

/* v5 form: everything in rope_parameters, no top-level rope_theta */
static void set_rope_parameters(json_t *cfg, void *arg)
{
    (void)arg;
    double theta = json_number_value(json_object_get(cfg, "rope_theta"));
    json_object_del(cfg, "rope_theta");
    json_object_del(cfg, "rope_scaling");
    json_object_del(cfg, "torch_dtype");
    json_object_set_new(cfg, "dtype", json_string("bfloat16"));
    json_object_set_new(cfg, "rope_parameters", json_pack("{s:s,s:f}", "rope_type", "default", "rope_theta", theta));
}

static double logits_diff_at(const struct lathe_model_ops *ops, const char *dir, const char *fixture,
                             const char *key)
{
    lathe_config *cfg;
    void *m = create_at(ops, dir, NULL, &cfg);
    lathe_scope_push();
    struct expected e;
    expected_load(fixture, &e);
    lathe_tensor *logits = ops->forward(m, &e.batch, 0);
    ck_assert_msg(logits != NULL, "%s", lathe_errmsg());
    double d = max_abs_diff(logits, read_named(e.w, key, LATHE_F32));
    expected_free(&e);
    lathe_scope_pop();
    ops->destroy(m);
    lathe_config_free(cfg);
    return d;
}

START_TEST(rope_config_forms)
{
    const struct lathe_model_ops *ops = ops_of(&fixtures[0]);
    char *dir = scratch("llama", set_linear_rope, NULL);
    double d = logits_diff_at(ops, dir, "llama", "logits_linear");
    printf("llama    rope_scaling {type: linear, factor: 2}: max |logit diff| %.3g\n", d);
    ck_assert_msg(d < 1e-4, "linear RoPE: logits differ by %g", d);
    rm_rf(dir);
    free(dir);
    dir = scratch("qwen2", set_rope_parameters, NULL);
    d = logits_diff_at(ops, dir, "qwen2", "logits");
    ck_assert_msg(d < 1e-4, "rope_parameters form: logits differ by %g", d);
    rm_rf(dir);
    free(dir);
}
END_TEST

/* ---- save and reload ------------------------------------------------------ */

static lathe_tensor *forward_logits(const struct lathe_model_ops *ops, void *m, const struct expected *e)
{
    lathe_tensor *l = ops->forward(m, &e->batch, 0);
    ck_assert_msg(l != NULL, "%s", lathe_errmsg());
    return l;
}

START_TEST(save_reload)
{
    const struct fixture *f = &fixtures[_i];
    const struct lathe_model_ops *ops = ops_of(f);
    char dir[4096], tmpl[] = "/tmp/lathe-models-XXXXXX";
    lathe_config *cfg;
    /* small shards, so every model also goes through the index */
    void *m = create_at(ops, fixture_dir(f->name, dir, sizeof dir), f->plugin[6] == 'l' ? "max_shard_size = 24K\n" : NULL,
                        &cfg);
    char *out = mkdtemp(tmpl);
    ck_assert(out != NULL);
    char sub[4200];
    snprintf(sub, sizeof sub, "%s/saved", out);
    ck_assert_msg(ops->save(m, sub) == LATHE_OK, "save: %s", lathe_errmsg());
    const char *keep = getenv("LATHE_MODELS_SAVE_DIR");
    if (keep && keep[0]) {
        char k[4200];
        snprintf(k, sizeof k, "%s/%s", keep, f->name);
        ck_assert_msg(ops->save(m, k) == LATHE_OK, "save: %s", lathe_errmsg());
    }
    lathe_config *cfg2;
    void *m2 = create_at(ops, sub, NULL, &cfg2);
    lathe_scope_push();
    struct expected e;
    expected_load(f->name, &e);
    lathe_tensor *a = forward_logits(ops, m, &e), *b = forward_logits(ops, m2, &e);
    ck_assert_msg(max_abs_diff(a, b) == 0.0, "%s: reloaded logits differ by %g", f->name, max_abs_diff(a, b));
    expected_free(&e);
    lathe_scope_pop();
    char path[4300];
    snprintf(path, sizeof path, "%s/config.json", sub);
    json_error_t err;
    json_t *c = json_load_file(path, 0, &err);
    ck_assert_msg(c != NULL, "%s", err.text);
    ck_assert_str_eq(json_string_value(json_object_get(c, "torch_dtype")), "float32");
    json_decref(c);
    snprintf(path, sizeof path, "%s/generation_config.json", sub);
    ck_assert_msg(access(path, R_OK) == 0, "generation_config.json was not copied");
    if (f->plugin[6] == 'l') {
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", sub);
        ck_assert_msg(access(path, R_OK) == 0, "no index for a sharded save");
    }
    ops->destroy(m2);
    lathe_config_free(cfg2);
    ops->destroy(m);
    lathe_config_free(cfg);
    rm_rf(out);
}
END_TEST

/* A bf16 save of bf16-exact weights reloads exactly. */
START_TEST(save_bf16)
{
    const struct lathe_model_ops *ops = ops_of(&fixtures[1]);
    char dir[4096], tmpl[] = "/tmp/lathe-models-XXXXXX";
    lathe_config *cfg, *cfg2;
    void *m = create_at(ops, fixture_dir("llama3", dir, sizeof dir), "save_dtype = bfloat16\n", &cfg);
    char *out = mkdtemp(tmpl);
    ck_assert(out != NULL);
    ck_assert_msg(ops->save(m, out) == LATHE_OK, "%s", lathe_errmsg());
    char path[4300];
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    struct lathe_st_file *st;
    ck_assert_int_eq(lathe_st_open(&st, path), LATHE_OK);
    struct lathe_st_info info;
    ck_assert_int_eq(lathe_st_find(st, "model.norm.weight", &info), LATHE_OK);
    ck_assert_int_eq(info.dtype, LATHE_BF16);
    ck_assert(!lathe_st_has(st, "lm_head.weight")); /* tied: not written */
    ck_assert_str_eq(lathe_st_metadata(st, "format"), "pt");
    lathe_st_close(st);
    void *m2 = create_at(ops, out, NULL, &cfg2);
    lathe_scope_push();
    struct expected e;
    expected_load("llama3", &e);
    ck_assert(max_abs_diff(forward_logits(ops, m, &e), forward_logits(ops, m2, &e)) == 0.0);
    expected_free(&e);
    lathe_scope_pop();
    ops->destroy(m);
    ops->destroy(m2);
    lathe_config_free(cfg);
    lathe_config_free(cfg2);
    rm_rf(out);
}
END_TEST

/* A GPT-2 made from INI keys with an untied head goes out in the HF layout
 * and comes back through pretrained = with identical logits; with
 * LATHE_MODELS_SAVE_DIR set it is kept as gpt2-untied, with its batch and
 * logits in expected.safetensors, for check_saved.py. */
START_TEST(gpt2_ini_save)
{
    const struct lathe_model_ops *ops = ops_of(&fixtures[NFIX - 1]);
    void *m;
    lathe_config *cfg, *cfg2;
    ck_assert_msg(try_create(ops, "[model]\nlayers = 2\nheads = 2\nembd = 16\nvocab_size = 40\ncontext = 16\n"
                             "tie_embeddings = false\ninit_std = 0.3\n", &m, &cfg) == LATHE_OK, "%s", lathe_errmsg());
    char tmpl[] = "/tmp/lathe-models-XXXXXX", dir[4200];
    const char *keep = getenv("LATHE_MODELS_SAVE_DIR");
    char *out = mkdtemp(tmpl);
    ck_assert(out != NULL);
    snprintf(dir, sizeof dir, "%s/gpt2-untied", keep && keep[0] ? keep : out);
    ck_assert_msg(ops->save(m, dir) == LATHE_OK, "%s", lathe_errmsg());
    char path[4300];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    struct lathe_st_file *st;
    ck_assert_int_eq(lathe_st_open(&st, path), LATHE_OK);
    struct lathe_st_info info;
    ck_assert_int_eq(lathe_st_find(st, "transformer.h.0.mlp.c_fc.weight", &info), LATHE_OK);
    ck_assert_int_eq(info.shape[0], 16); /* Conv1D [in, out] */
    ck_assert_int_eq(info.shape[1], 64);
    ck_assert(lathe_st_has(st, "lm_head.weight"));
    lathe_st_close(st);
    void *m2 = create_at(ops, dir, NULL, &cfg2);
    lathe_scope_push();
    struct lathe_batch b = {.size = sizeof b, .B = 2, .T = 6};
    b.input_ids = lathe_tensor_new2(LATHE_I32, 2, 6);
    for (int i = 0; i < 12; i++)
        lathe_tensor_i32(b.input_ids)[i] = (i * 7 + 3) % 40;
    lathe_tensor *l1 = ops->forward(m, &b, 0), *l2 = ops->forward(m2, &b, 0);
    ck_assert(l1 && l2);
    ck_assert(max_abs_diff(l1, l2) == 0.0);
    const int64_t ls[3] = {2, 6, 40}, is[2] = {2, 6};
    struct lathe_st_entry e[2] = {{"input_ids", LATHE_I32, 2, is, b.input_ids->data},
                                  {"logits", LATHE_F32, 3, ls, l1->data}};
    snprintf(path, sizeof path, "%s/expected.safetensors", dir);
    ck_assert_int_eq(lathe_st_write(path, e, 2, NULL), LATHE_OK);
    lathe_scope_pop();
    ops->destroy(m);
    ops->destroy(m2);
    lathe_config_free(cfg);
    lathe_config_free(cfg2);
    rm_rf(out);
}
END_TEST

/* ---- incremental decoding ----------------------------------------------- */

/* Prompt of P tokens, then N greedy tokens one at a time through the cache;
 * the logits at every step equal the full forward's over the whole
 * sequence, for rows with and without left padding. */
START_TEST(cache_matches_forward)
{
    const struct fixture *f = &fixtures[_i];
    const struct lathe_model_ops *ops = ops_of(f);
    ck_assert(LATHE_OPS_HAS(ops, struct lathe_model_ops, forward_cached));
    char dir[4096];
    lathe_config *cfg;
    void *m = create_at(ops, fixture_dir(f->name, dir, sizeof dir), NULL, &cfg);
    struct lathe_model_info info;
    ck_assert_int_eq(ops->info(m, &info), LATHE_OK);
    const int64_t V = info.vocab_size, P = 5, N = 6, B = 2, S = P + N;
    int32_t seq[2][11];
    for (int b = 0; b < B; b++)
        for (int t = 0; t < P; t++)
            seq[b][t] = (int32_t)((7 * b + 13 * t + 3) % V);
    seq[1][0] = seq[1][1] = 0; /* row 1: two pads on the left */
    void *cache;
    ck_assert_int_eq(ops->cache_new(m, B, S - 1, &cache), LATHE_OK); /* the last token is never fed */
    double worst = 0;
    float *step_logits = malloc(sizeof(float) * (size_t)(B * N * V));
    for (int64_t s = 0; s < N; s++) {
        lathe_scope_push();
        const int64_t T = s == 0 ? P : 1, at = s == 0 ? 0 : P + s - 1;
        struct lathe_batch b = {.size = sizeof b, .B = B, .T = T};
        b.input_ids = lathe_tensor_new2(LATHE_I32, B, T);
        b.positions = lathe_tensor_new2(LATHE_I32, B, T);
        b.segments = lathe_tensor_new2(LATHE_I32, B, T);
        for (int64_t r = 0; r < B; r++)
            for (int64_t t = 0; t < T; t++) {
                int64_t abs_t = at + t, pad = r == 1 ? 2 : 0;
                lathe_tensor_i32(b.input_ids)[r * T + t] = seq[r][abs_t];
                lathe_tensor_i32(b.positions)[r * T + t] = (int32_t)(abs_t >= pad ? abs_t - pad : 0);
                lathe_tensor_i32(b.segments)[r * T + t] = abs_t >= pad ? 0 : -1;
            }
        lathe_tensor *lg = ops->forward_cached(m, cache, &b);
        ck_assert_msg(lg != NULL, "%s", lathe_errmsg());
        ck_assert_int_eq(lg->shape[1], T);
        for (int64_t r = 0; r < B; r++) {
            const float *row = lathe_tensor_f32(lg) + (r * T + T - 1) * V;
            memcpy(step_logits + (r * N + s) * V, row, sizeof(float) * (size_t)V);
            int64_t best = 0;
            for (int64_t v = 1; v < V; v++)
                if (row[v] > row[best])
                    best = v;
            seq[r][P + s] = (int32_t)best;
        }
        lathe_scope_pop();
    }
    /* an overfull cache is refused */
    lathe_scope_push();
    struct lathe_batch over = {.size = sizeof over, .B = B, .T = 1};
    over.input_ids = lathe_tensor_new2(LATHE_I32, B, 1);
    ck_assert_ptr_null(ops->forward_cached(m, cache, &over));
    ck_assert_msg(strstr(lathe_errmsg(), "max_len") != NULL, "%s", lathe_errmsg());
    lathe_scope_pop();
    ops->cache_free(m, cache);

    /* the full forward over each row (row 1 without its pads) */
    for (int64_t r = 0; r < B; r++) {
        lathe_scope_push();
        const int64_t pad = r == 1 ? 2 : 0, T = S - 1 - pad;
        struct lathe_batch b = {.size = sizeof b, .B = 1, .T = T};
        b.input_ids = lathe_tensor_new2(LATHE_I32, 1, T);
        for (int64_t t = 0; t < T; t++)
            lathe_tensor_i32(b.input_ids)[t] = seq[r][pad + t];
        lathe_tensor *lg = ops->forward(m, &b, 0);
        ck_assert_msg(lg != NULL, "%s", lathe_errmsg());
        for (int64_t s = 0; s < N; s++) {
            const float *full = lathe_tensor_f32(lg) + (P - 1 + s - pad) * V;
            for (int64_t v = 0; v < V; v++)
                worst = fmax(worst, fabs((double)full[v] - step_logits[(r * N + s) * V + v]));
        }
        lathe_scope_pop();
    }
    free(step_logits);
    printf("%-8s KV cache vs full forward (prompt %lld + %lld greedy tokens, one row left-padded): max |logit "
           "diff| %.3g\n", f->name, (long long)P, (long long)N, worst);
    ck_assert_msg(worst < 1e-4, "%s: cached logits differ from the full forward by %g", f->name, worst);
    ops->destroy(m);
    lathe_config_free(cfg);
}
END_TEST

/* ---- the weights module ------------------------------------------------- */

START_TEST(weights_round_trip)
{
    char tmpl[] = "/tmp/lathe-models-XXXXXX";
    char *dir = mkdtemp(tmpl);
    ck_assert(dir != NULL);
    lathe_tensor *t[3];
    t[0] = lathe_tensor_new2(LATHE_F32, 3, 4);
    t[1] = lathe_tensor_new2(LATHE_F32, 2, 5);
    t[2] = lathe_tensor_new1(LATHE_F32, 7);
    for (int k = 0; k < 3; k++)
        for (int64_t i = 0; i < lathe_tensor_numel(t[k]); i++)
            lathe_tensor_f32(t[k])[i] = (float)(k * 100 + i) * 0.25f;
    const char *names[3] = {"a.weight", "b.weight", "c.bias"};
    const uint8_t tr[3] = {0, 1, 0};
    /* 48 + 40 + 28 bytes with a 64-byte limit: three shards */
    ck_assert_msg(lathe_weights_write(dir, names, t, tr, 3, LATHE_F32, 64) == LATHE_OK, "%s", lathe_errmsg());
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    json_error_t err;
    json_t *idx = json_load_file(path, 0, &err);
    ck_assert_msg(idx != NULL, "%s", err.text);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(idx, "metadata"), "total_size")), 116);
    json_t *map = json_object_get(idx, "weight_map");
    ck_assert_str_eq(json_string_value(json_object_get(map, "a.weight")), "model-00001-of-00003.safetensors");
    ck_assert_str_eq(json_string_value(json_object_get(map, "c.bias")), "model-00003-of-00003.safetensors");
    json_decref(idx);

    lathe_weights *w;
    ck_assert_msg(lathe_weights_open(&w, dir) == LATHE_OK, "%s", lathe_errmsg());
    ck_assert_uint_eq(lathe_weights_count(w), 3);
    const char *nm;
    enum lathe_dtype dt;
    int nd;
    int64_t shape[LATHE_MAX_DIMS];
    ck_assert_int_eq(lathe_weights_info(w, 1, &nm, &dt, &nd, shape), LATHE_OK);
    ck_assert_str_eq(nm, "b.weight");
    ck_assert_int_eq(nd, 2);
    ck_assert_int_eq(shape[0], 5); /* stored [in, out] */
    ck_assert_int_eq(shape[1], 2);
    ck_assert(lathe_weights_has(w, "c.bias") && !lathe_weights_has(w, "nope"));
    lathe_tensor *a = lathe_tensor_new2(LATHE_F32, 3, 4), *b = lathe_tensor_new2(LATHE_F32, 2, 5);
    lathe_tensor *c = lathe_tensor_new1(LATHE_BF16, 7);
    ck_assert_int_eq(lathe_weights_read(w, "a.weight", a), LATHE_OK);
    ck_assert_str_eq(lathe_weights_unused(w, NULL), "b.weight");
    ck_assert_int_eq(lathe_weights_read_transposed(w, "b.weight", b), LATHE_OK);
    const char *ign[] = {"*.bias", NULL};
    ck_assert_ptr_null(lathe_weights_unused(w, ign));
    ck_assert_int_eq(lathe_weights_read(w, "c.bias", c), LATHE_OK);
    ck_assert_ptr_null(lathe_weights_unused(w, NULL));
    ck_assert(max_abs_diff(a, t[0]) == 0.0 && max_abs_diff(b, t[1]) == 0.0);
    for (int i = 0; i < 7; i++)
        ck_assert_float_eq(lathe_bf16_to_f32(((uint16_t *)c->data)[i]), lathe_tensor_f32(t[2])[i]);
    /* a read of the wrong shape names the tensor, both shapes and the file */
    ck_assert_int_ne(lathe_weights_read(w, "a.weight", b), LATHE_OK);
    ck_assert_msg(strstr(lathe_errmsg(), "'a.weight'") && strstr(lathe_errmsg(), "[3, 4]") &&
                      strstr(lathe_errmsg(), "[2, 5]") && strstr(lathe_errmsg(), "model-00001-of-00003"),
                  "%s", lathe_errmsg());
    ck_assert_int_ne(lathe_weights_read(w, "missing.weight", a), LATHE_OK);
    ck_assert_msg(strstr(lathe_errmsg(), "'missing.weight'"), "%s", lathe_errmsg());
    lathe_weights_close(w);

    /* rewritten as one BF16 file: the index goes, the single file reads */
    ck_assert_int_eq(lathe_weights_write(dir, names, t, NULL, 3, LATHE_BF16, 0), LATHE_OK);
    ck_assert_int_ne(access(path, F_OK), 0);
    ck_assert_int_eq(lathe_weights_open(&w, dir), LATHE_OK);
    ck_assert_int_eq(lathe_weights_info(w, 0, &nm, &dt, &nd, shape), LATHE_OK);
    ck_assert_int_eq(dt, LATHE_BF16);
    ck_assert_int_eq(lathe_weights_read(w, "a.weight", a), LATHE_OK);
    ck_assert(max_abs_diff(a, t[0]) == 0.0); /* multiples of 0.25 below 256: bf16-exact */
    lathe_weights_close(w);
    /* a single .safetensors file opens too */
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ck_assert_int_eq(lathe_weights_open(&w, path), LATHE_OK);
    ck_assert_uint_eq(lathe_weights_count(w), 3);
    lathe_weights_close(w);
    for (int k = 0; k < 3; k++)
        lathe_tensor_free(t[k]);
    lathe_tensor_free(a);
    lathe_tensor_free(b);
    lathe_tensor_free(c);
    rm_rf(dir);
}
END_TEST

START_TEST(weights_refusals)
{
    lathe_weights *w;
    ck_assert_int_ne(lathe_weights_open(&w, "/nonexistent/model"), LATHE_OK);
    ck_assert_ptr_null(w);
    ck_assert(strstr(lathe_errmsg(), "/nonexistent/model") != NULL);
    char tmpl[] = "/tmp/lathe-models-XXXXXX";
    char *dir = mkdtemp(tmpl);
    ck_assert(dir != NULL);
    ck_assert_int_ne(lathe_weights_open(&w, dir), LATHE_OK);
    ck_assert_msg(strstr(lathe_errmsg(), "model.safetensors"), "%s", lathe_errmsg());
    /* an index naming a shard that is not there */
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    FILE *fp = fopen(path, "w");
    fputs("{\"metadata\":{},\"weight_map\":{\"x\":\"model-00001-of-00002.safetensors\"}}", fp);
    fclose(fp);
    ck_assert_int_ne(lathe_weights_open(&w, dir), LATHE_OK);
    ck_assert_msg(strstr(lathe_errmsg(), "model-00001-of-00002.safetensors"), "%s", lathe_errmsg());
    /* or a name with a path in it */
    fp = fopen(path, "w");
    fputs("{\"weight_map\":{\"x\":\"../model.safetensors\"}}", fp);
    fclose(fp);
    ck_assert_int_ne(lathe_weights_open(&w, dir), LATHE_OK);
    ck_assert_msg(strstr(lathe_errmsg(), "weight_map[\"x\"]"), "%s", lathe_errmsg());
    lathe_tensor *t = lathe_tensor_new1(LATHE_I32, 2);
    const char *nm[] = {"x"};
    ck_assert_int_ne(lathe_weights_write(dir, nm, &t, NULL, 1, LATHE_F32, 0), LATHE_OK);
    ck_assert_msg(strstr(lathe_errmsg(), "'x'"), "%s", lathe_errmsg());
    ck_assert_int_ne(lathe_weights_write(dir, nm, &t, NULL, 1, LATHE_I32, 0), LATHE_OK);
    lathe_tensor_free(t);
    rm_rf(dir);
}
END_TEST

/* ---- refusals of the model plugins ---------------------------------------- */

static void set_arch(json_t *cfg, void *arg)
{
    json_object_set_new(cfg, "architectures", json_pack("[s]", (const char *)arg));
}

static void set_rope_yarn(json_t *cfg, void *arg)
{
    (void)arg;
    json_object_set_new(cfg, "rope_scaling", json_pack("{s:s,s:f}", "rope_type", "yarn", "factor", 4.0));
}

static void set_sliding(json_t *cfg, void *arg)
{
    (void)arg;
    json_object_set_new(cfg, "use_sliding_window", json_true());
}

static void drop_key(json_t *cfg, void *arg)
{
    json_object_del(cfg, (const char *)arg);
}

/* The error of creating the llama plugin from dir, which must fail. */
static const char *refusal(const struct lathe_model_ops *ops, const char *dir, const char *extra)
{
    char text[8192];
    snprintf(text, sizeof text, "[model]\npretrained = %s\n%s", dir, extra ? extra : "");
    void *m = (void *)1;
    lathe_config *cfg;
    int rc = try_create(ops, text, &m, &cfg);
    ck_assert_msg(rc != LATHE_OK, "%s: create should have failed", dir);
    ck_assert_ptr_null(m);
    lathe_config_free(cfg);
    return lathe_errmsg();
}

#define ASSERT_MSG_HAS(msg, s) ck_assert_msg(strstr((msg), (s)) != NULL, "message lacks '%s': %s", (s), (msg))

/* Write the fixture's tensors to dir/model.safetensors, with tensor
 * `drop` left out, `bad` given one more row, and `add` added. */
static void write_variant(const char *fixture, const char *dir, const char *drop, const char *bad, const char *add)
{
    char src[4096];
    fixture_dir(fixture, src, sizeof src);
    lathe_weights *w;
    ck_assert_int_eq(lathe_weights_open(&w, src), LATHE_OK);
    size_t n = lathe_weights_count(w), k = 0;
    const char **names = calloc(n + 1, sizeof *names);
    lathe_tensor **ts = calloc(n + 1, sizeof *ts);
    for (size_t i = 0; i < n; i++) {
        const char *nm;
        enum lathe_dtype dt;
        int nd;
        int64_t shape[LATHE_MAX_DIMS];
        ck_assert_int_eq(lathe_weights_info(w, i, &nm, &dt, &nd, shape), LATHE_OK);
        if (drop && strcmp(nm, drop) == 0)
            continue;
        lathe_tensor *t = lathe_tensor_new(LATHE_F32, nd, shape);
        ck_assert_int_eq(lathe_weights_read(w, nm, t), LATHE_OK);
        if (bad && strcmp(nm, bad) == 0) {
            lathe_tensor_free(t);
            shape[0]++;
            t = lathe_tensor_new(LATHE_F32, nd, shape);
        }
        names[k] = nm;
        ts[k++] = t;
    }
    if (add) {
        names[k] = add;
        ts[k++] = lathe_tensor_new1(LATHE_F32, 4);
    }
    char out[4200];
    snprintf(out, sizeof out, "%s/model.safetensors.index.json", dir);
    unlink(out); /* the scratch links to the fixture's shards */
    ck_assert_msg(lathe_weights_write(dir, names, ts, NULL, k, LATHE_F32, 0) == LATHE_OK, "%s", lathe_errmsg());
    for (size_t i = 0; i < k; i++)
        lathe_tensor_free(ts[i]);
    free(names);
    free(ts);
    lathe_weights_close(w);
}

START_TEST(llama_refusals)
{
    const struct lathe_model_ops *ops = ops_of(&fixtures[0]);
    char *dir = scratch("llama", set_arch, "GPTNeoXForCausalLM");
    const char *msg = refusal(ops, dir, NULL);
    ASSERT_MSG_HAS(msg, "GPTNeoXForCausalLM");
    ASSERT_MSG_HAS(msg, "config.json");
    rm_rf(dir);
    free(dir);

    dir = scratch("llama", set_rope_yarn, NULL);
    msg = refusal(ops, dir, NULL);
    ASSERT_MSG_HAS(msg, "'yarn'");
    ASSERT_MSG_HAS(msg, "rope_scaling.rope_type");
    rm_rf(dir);
    free(dir);

    dir = scratch("qwen2", set_sliding, NULL);
    msg = refusal(ops, dir, NULL);
    ASSERT_MSG_HAS(msg, "use_sliding_window");
    rm_rf(dir);
    free(dir);

    dir = scratch("llama", drop_key, "hidden_size");
    msg = refusal(ops, dir, NULL);
    ASSERT_MSG_HAS(msg, "'hidden_size'");
    rm_rf(dir);
    free(dir);

    dir = scratch("llama", NULL, NULL);
    write_variant("llama", dir, "model.layers.1.mlp.up_proj.weight", NULL, NULL);
    msg = refusal(ops, dir, NULL);
    ASSERT_MSG_HAS(msg, "'model.layers.1.mlp.up_proj.weight'");
    ASSERT_MSG_HAS(msg, "missing");
    write_variant("llama", dir, NULL, "model.layers.0.self_attn.k_proj.weight", NULL);
    msg = refusal(ops, dir, NULL);
    ASSERT_MSG_HAS(msg, "'model.layers.0.self_attn.k_proj.weight'");
    ASSERT_MSG_HAS(msg, "[17, 32]");
    ASSERT_MSG_HAS(msg, "[16, 32]");
    ASSERT_MSG_HAS(msg, "model.safetensors");
    write_variant("llama", dir, NULL, NULL, "model.layers.0.mlp.extra.weight");
    msg = refusal(ops, dir, NULL);
    ASSERT_MSG_HAS(msg, "'model.layers.0.mlp.extra.weight'");
    /* an old RoPE buffer is ignored */
    write_variant("llama", dir, NULL, NULL, "model.layers.0.self_attn.rotary_emb.inv_freq");
    lathe_config *cfg;
    void *m = create_at(ops, dir, NULL, &cfg);
    ops->destroy(m);
    lathe_config_free(cfg);
    rm_rf(dir);
    free(dir);

    msg = refusal(ops, "/nonexistent/model", NULL);
    ASSERT_MSG_HAS(msg, "/nonexistent/model/config.json");
    char fx[4096];
    msg = refusal(ops, fixture_dir("llama", fx, sizeof fx), "save_dtype = int8\n");
    ASSERT_MSG_HAS(msg, "save_dtype");
}
END_TEST

START_TEST(gpt2_refusals)
{
    const struct lathe_model_ops *ops = ops_of(&fixtures[NFIX - 1]);
    char fx[4096];
    fixture_dir("gpt2", fx, sizeof fx);
    const char *msg = refusal(ops, fx, "layers = 2\nembd = 32\n");
    ASSERT_MSG_HAS(msg, "pretrained");
    ASSERT_MSG_HAS(msg, "layers");
    ASSERT_MSG_HAS(msg, "embd");
    char *dir = scratch("gpt2", set_arch, "GPT2DoubleHeadsModel");
    msg = refusal(ops, dir, NULL);
    ASSERT_MSG_HAS(msg, "GPT2DoubleHeadsModel");
    rm_rf(dir);
    free(dir);
    dir = scratch("gpt2", NULL, NULL);
    write_variant("gpt2", dir, "transformer.h.1.mlp.c_fc.weight", NULL, NULL);
    msg = refusal(ops, dir, NULL);
    ASSERT_MSG_HAS(msg, "h.1.mlp.c_fc.weight");
    write_variant("gpt2", dir, NULL, "transformer.h.0.attn.c_attn.weight", NULL);
    msg = refusal(ops, dir, NULL);
    ASSERT_MSG_HAS(msg, "h.0.attn.c_attn.weight");
    ASSERT_MSG_HAS(msg, "[33, 96]");
    write_variant("gpt2", dir, NULL, NULL, "transformer.h.0.attn.extra");
    msg = refusal(ops, dir, NULL);
    ASSERT_MSG_HAS(msg, "transformer.h.0.attn.extra");
    /* the causal-mask buffers are ignored */
    write_variant("gpt2", dir, NULL, NULL, "transformer.h.0.attn.bias");
    lathe_config *cfg;
    void *m = create_at(ops, dir, NULL, &cfg);
    ops->destroy(m);
    lathe_config_free(cfg);
    rm_rf(dir);
    free(dir);
}
END_TEST

static Suite *models_suite(void)
{
    Suite *s = suite_create("models");
    TCase *core = tcase_create("Core");
    tcase_set_timeout(core, 60);
    tcase_add_loop_test(core, matches_transformers, 0, NFIX);
    tcase_add_test(core, rope_config_forms);
    tcase_add_loop_test(core, save_reload, 0, NFIX);
    tcase_add_test(core, save_bf16);
    tcase_add_test(core, gpt2_ini_save);
    tcase_add_loop_test(core, cache_matches_forward, 0, NFIX);
    tcase_add_test(core, weights_round_trip);
    suite_add_tcase(s, core);
    TCase *limits = tcase_create("Limits");
    tcase_set_timeout(limits, 60);
    tcase_add_test(limits, weights_refusals);
    tcase_add_test(limits, llama_refusals);
    tcase_add_test(limits, gpt2_refusals);
    suite_add_tcase(s, limits);
    return s;
}

int main(void)
{
    return lathe_test_run(models_suite());
}
