/* tests/check_lora.c — the LoRA plugin (plugins/lora) and `lathe merge`.
 *
 * The plugin is loaded from its .so with dlopen and applied to the gpt2 and
 * llama model plugins (and to bare struct lathe_linear layers) through the
 * PEFT interface only. Reference values: adapters made by the real `peft`
 * library and the logits it computes with them (tests/fixtures/lora,
 * make_lora.py); the other direction, an adapter saved here loading in
 * `peft`, is checked by tests/fixtures/lora/check_adapter.py on the files
 * this suite writes when LATHE_LORA_EXPORT names a directory. */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lathe/lathe.h>

#include "testutil.h"
#include "train/run.h"
#include "train/run_internal.h"

/* ---- plumbing ------------------------------------------------------------- */

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

#define LORA() ((const struct lathe_peft_ops *)component("lathe-lora.so", LATHE_KIND_PEFT, "lora"))
#define GPT2() ((const struct lathe_model_ops *)component("lathe-gpt2.so", LATHE_KIND_MODEL, "gpt2"))
#define LLAMA() ((const struct lathe_model_ops *)component("lathe-llama.so", LATHE_KIND_MODEL, "llama"))

static const char *srcdir(void)
{
    const char *top = getenv("top_srcdir");
    return top && top[0] ? top : ".";
}

static char *fx(const char *rel)
{
    static char buf[4][4096];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/tests/fixtures/%s", srcdir(), rel);
    return buf[k];
}

static char *scratch_dir(void)
{
    char *t = strdup("/tmp/lathe-lora-XXXXXX");
    ck_assert(t && mkdtemp(t));
    return t;
}

static void rm_rf(const char *path)
{
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            char p[4200];
            snprintf(p, sizeof p, "%s/%s", path, e->d_name);
            rm_rf(p);
        }
        closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

static struct lathe_env env_for(lathe_config *cfg)
{
    struct lathe_env env = {.size = sizeof env, .output_dir = "/tmp", .seed = 7, .device = LATHE_DEVICE_CPU,
                            .precision = LATHE_PRECISION_FP32, .batch_size = 2, .grad_accum = 1, .steps = 1,
                            .world_size = 1, .config = cfg};
    return env;
}

/* A model (from [model]) and a LoRA (from [peft]) applied to it. */
struct rig {
    lathe_config *cfg;
    struct lathe_env env;
    const struct lathe_model_ops *mo;
    void *model;
    const struct lathe_peft_ops *po;
    void *lora;
    lathe_tensor *const *params; /* the model's */
    size_t nparams;
    struct lathe_linear *const *lin;
    size_t nlin;
};

static void rig_model(struct rig *r, const struct lathe_model_ops *mo, const char *text)
{
    memset(r, 0, sizeof *r);
    r->cfg = lathe_config_load_string("test.ini", text);
    ck_assert_msg(r->cfg != NULL, "config: %s", lathe_errmsg());
    r->env = env_for(r->cfg);
    r->mo = mo;
    const char *plugin; /* what the run reads to pick the component */
    ck_assert_int_eq(lathe_cfg_string(lathe_config_section(r->cfg, "model"), "plugin", "", &plugin), LATHE_OK);
    ck_assert_msg(mo->create(lathe_config_section(r->cfg, "model"), &r->env, &r->model) == LATHE_OK, "model: %s",
                  lathe_errmsg());
    ck_assert_int_eq(mo->params(r->model, &r->params, &r->nparams), LATHE_OK);
    ck_assert_int_eq(mo->linears(r->model, &r->lin, &r->nlin), LATHE_OK);
}

/* Create and apply the LoRA of [peft]; returns the status of the first step
 * that fails. */
static int rig_lora(struct rig *r)
{
    r->po = LORA();
    const char *plugin;
    ck_assert_int_eq(lathe_cfg_string(lathe_config_section(r->cfg, "peft"), "plugin", "", &plugin), LATHE_OK);
    int rc = r->po->create(lathe_config_section(r->cfg, "peft"), &r->env, &r->lora);
    if (rc)
        return rc;
    return r->po->apply(r->lora, r->lin, r->nlin, r->params, r->nparams);
}

static void rig_free(struct rig *r)
{
    if (r->lora)
        r->po->destroy(r->lora);
    if (r->model)
        r->mo->destroy(r->model);
    lathe_config_free(r->cfg);
}

static const char *TINY_GPT2 = "[model]\nlayers = 2\nheads = 2\nembd = 8\nvocab_size = 16\ncontext = 8\n";

static void set_values(lathe_tensor *t, uint64_t seed, double scale)
{
    lathe_rng g;
    lathe_rng_seed(&g, seed);
    float *d = lathe_tensor_f32(t);
    for (int64_t i = 0; i < lathe_tensor_numel(t); i++)
        d[i] = (float)(scale * lathe_rng_normal(&g));
}

static lathe_tensor *ids_tensor(int64_t B, int64_t T, int64_t V, uint64_t seed)
{
    lathe_tensor *ids = lathe_tensor_new2(LATHE_I32, B, T);
    lathe_rng g;
    lathe_rng_seed(&g, seed);
    for (int64_t i = 0; i < B * T; i++)
        lathe_tensor_i32(ids)[i] = (int32_t)lathe_rng_below(&g, (uint64_t)V);
    return ids;
}

static lathe_tensor *forward_ids(struct rig *r, lathe_tensor *ids, int train)
{
    struct lathe_batch b = {.size = sizeof b, .B = ids->shape[0], .T = ids->shape[1], .input_ids = ids};
    lathe_tensor *logits = r->mo->forward(r->model, &b, train);
    ck_assert_msg(logits != NULL, "forward: %s", lathe_errmsg());
    return logits;
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

static lathe_tensor *copy_of(const lathe_tensor *t)
{
    lathe_tensor *c = lathe_tensor_new(LATHE_F32, t->ndim, t->shape);
    memcpy(lathe_tensor_f32(c), lathe_tensor_f32(t), lathe_tensor_nbytes(t));
    return c;
}

static lathe_tensor *find_param(lathe_tensor *const *p, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(p[i]->name, name) == 0)
            return p[i];
    return NULL;
}

/* The named tensor of a safetensors file, read as dt (scoped). */
static lathe_tensor *read_named(const char *file, const char *name, enum lathe_dtype dt)
{
    lathe_weights *w = NULL;
    ck_assert_msg(lathe_weights_open(&w, file) == LATHE_OK, "%s", lathe_errmsg());
    lathe_tensor *t = NULL;
    for (size_t i = 0; i < lathe_weights_count(w) && !t; i++) {
        const char *nm;
        enum lathe_dtype sdt;
        int nd;
        int64_t shape[LATHE_MAX_DIMS];
        ck_assert_int_eq(lathe_weights_info(w, i, &nm, &sdt, &nd, shape), LATHE_OK);
        if (strcmp(nm, name) == 0) {
            t = lathe_tensor_new(dt, nd, shape);
            ck_assert_msg(lathe_weights_read(w, name, t) == LATHE_OK, "%s", lathe_errmsg());
        }
    }
    lathe_weights_close(w);
    ck_assert_msg(t != NULL, "%s has no tensor '%s'", file, name);
    return t;
}

/* ---- hooks, freezing, initialisation ---------------------------------------- */

START_TEST(hooks_only_on_targets)
{
    static const struct {
        const char *targets;
        const char *want[8]; /* linears that get a hook */
    } cases[] = {
        {"c_attn", {"h.0.attn.c_attn", "h.1.attn.c_attn"}},
        {"c_proj", {"h.0.attn.c_proj", "h.0.mlp.c_proj", "h.1.attn.c_proj", "h.1.mlp.c_proj"}},
        {"attn.c_proj", {"h.0.attn.c_proj", "h.1.attn.c_proj"}},
        {"all-linear",
         {"h.0.attn.c_attn", "h.0.attn.c_proj", "h.0.mlp.c_fc", "h.0.mlp.c_proj", "h.1.attn.c_attn",
          "h.1.attn.c_proj", "h.1.mlp.c_fc", "h.1.mlp.c_proj"}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char text[512];
        snprintf(text, sizeof text, "%s[peft]\nplugin = lora\nrank = 2\ntarget_modules = %s\n", TINY_GPT2,
                 cases[c].targets);
        struct rig r;
        rig_model(&r, GPT2(), text);
        ck_assert_msg(rig_lora(&r) == LATHE_OK, "%s: %s", cases[c].targets, lathe_errmsg());
        size_t nwant = 0;
        while (nwant < 8 && cases[c].want[nwant])
            nwant++;
        size_t hooked = 0;
        for (size_t i = 0; i < r.nlin; i++) {
            int want = 0;
            for (size_t k = 0; k < nwant; k++)
                want |= strcmp(r.lin[i]->name, cases[c].want[k]) == 0;
            ck_assert_msg((r.lin[i]->hook != NULL) == want, "%s: %s hooked = %d", cases[c].targets, r.lin[i]->name,
                          r.lin[i]->hook != NULL);
            hooked += r.lin[i]->hook != NULL;
        }
        ck_assert_uint_eq(hooked, nwant);
        /* one A and one B per target, with PEFT's names and shapes */
        lathe_tensor *const *p;
        size_t np;
        ck_assert_int_eq(r.po->params(r.lora, &p, &np), LATHE_OK);
        ck_assert_uint_eq(np, 2 * nwant);
        char name[256];
        snprintf(name, sizeof name, "base_model.model.transformer.%s.lora_A.weight", cases[c].want[0]);
        ck_assert_str_eq(p[0]->name, name);
        snprintf(name, sizeof name, "base_model.model.transformer.%s.lora_B.weight", cases[c].want[0]);
        ck_assert_str_eq(p[1]->name, name);
        ck_assert_int_eq(p[0]->shape[0], 2);
        ck_assert_int_eq(p[0]->shape[1], r.lin[0]->weight->shape[1]);
        ck_assert_int_eq(p[1]->shape[1], 2);
        for (size_t i = 0; i < np; i++)
            ck_assert(p[i]->requires_grad);
        /* the base is frozen */
        for (size_t i = 0; i < r.nparams; i++)
            ck_assert_msg(!r.params[i]->requires_grad, "%s still trainable", r.params[i]->name);
        ck_assert_int_eq(lathe_config_check_unused(r.cfg), LATHE_OK);
        rig_free(&r);
    }
}
END_TEST

/* PEFT's init: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform_, a = sqrt(5)),
 * or N(0, 1/r) for "gaussian"; B = 0, so the model is unchanged. */
START_TEST(zero_B_keeps_base_logits)
{
    const char *inits[] = {"kaiming", "gaussian"};
    for (int k = 0; k < 2; k++) {
        char text[512];
        snprintf(text, sizeof text, "%s[peft]\nplugin = lora\nrank = 4\ntarget_modules = all-linear\ninit = %s\n",
                 TINY_GPT2, inits[k]);
        struct rig r;
        rig_model(&r, GPT2(), text);
        lathe_scope_push();
        lathe_tensor *ids = ids_tensor(2, 8, 16, 3);
        lathe_tensor *base = copy_of(forward_ids(&r, ids, 0));
        ck_assert_msg(rig_lora(&r) == LATHE_OK, "%s", lathe_errmsg());
        lathe_tensor *after = forward_ids(&r, ids, 1);
        ck_assert_double_eq(max_abs_diff(base, after), 0.0);
        lathe_tensor *const *p;
        size_t np;
        ck_assert_int_eq(r.po->params(r.lora, &p, &np), LATHE_OK);
        double amax = 0, sum2 = 0;
        int64_t n = 0;
        for (size_t i = 0; i < np; i += 2) {
            const float *a = lathe_tensor_f32(p[i]), *b = lathe_tensor_f32(p[i + 1]);
            double bound = 1.0 / sqrt((double)p[i]->shape[1]);
            for (int64_t j = 0; j < lathe_tensor_numel(p[i]); j++) {
                if (k == 0)
                    ck_assert_msg(fabs(a[j]) <= bound, "A outside the Kaiming bound");
                amax = fmax(amax, fabs(a[j]));
                sum2 += (double)a[j] * a[j];
                n++;
            }
            for (int64_t j = 0; j < lathe_tensor_numel(p[i + 1]); j++)
                ck_assert(b[j] == 0.0f);
        }
        ck_assert(amax > 0);
        if (k == 1) /* std 1/r = 0.25 */
            ck_assert_msg(fabs(sqrt(sum2 / (double)n) - 0.25) < 0.03, "gaussian std %g", sqrt(sum2 / (double)n));
        lathe_scope_pop();
        rig_free(&r);
    }
}
END_TEST

/* A bare linear, to check the hook's arithmetic against doubles. */
struct bare {
    struct lathe_linear lin;
    struct lathe_linear *linp;
    lathe_tensor *params[2];
    lathe_config *cfg;
    struct lathe_env env;
    const struct lathe_peft_ops *po;
    void *lora;
    lathe_tensor *A, *B;
};

static int bare_make(struct bare *b, int64_t in, int64_t out, const char *peft)
{
    memset(b, 0, sizeof *b);
    int64_t ws[2] = {out, in};
    b->params[0] = lathe_param_new("model.layers.0.self_attn.q_proj.weight", 2, ws);
    b->params[1] = lathe_param_new("model.layers.0.self_attn.q_proj.bias", 1, &out);
    set_values(b->params[0], 11, 0.5);
    set_values(b->params[1], 12, 0.5);
    b->lin = (struct lathe_linear){.name = "model.layers.0.self_attn.q_proj", .weight = b->params[0],
                                   .bias = b->params[1]};
    b->linp = &b->lin;
    char text[512];
    snprintf(text, sizeof text, "[peft]\nplugin = lora\ntarget_modules = q_proj\n%s", peft);
    b->cfg = lathe_config_load_string("test.ini", text);
    ck_assert(b->cfg);
    b->env = env_for(b->cfg);
    b->po = LORA();
    int rc = b->po->create(lathe_config_section(b->cfg, "peft"), &b->env, &b->lora);
    if (rc == LATHE_OK)
        rc = b->po->apply(b->lora, &b->linp, 1, b->params, 2);
    if (rc == LATHE_OK) {
        lathe_tensor *const *p;
        size_t np;
        ck_assert_int_eq(b->po->params(b->lora, &p, &np), LATHE_OK);
        ck_assert_uint_eq(np, 2);
        b->A = p[0];
        b->B = p[1];
    }
    return rc;
}

static void bare_free(struct bare *b)
{
    if (b->lora)
        b->po->destroy(b->lora);
    lathe_tensor_free(b->params[0]);
    lathe_tensor_free(b->params[1]);
    lathe_config_free(b->cfg);
}

START_TEST(scaling_and_rslora)
{
    static const struct {
        const char *peft;
        double scaling;
    } cases[] = {
        {"rank = 4\nalpha = 16\n", 16.0 / 4},
        {"rank = 4\nalpha = 16\nuse_rslora = true\n", 16.0 / 2},
        {"rank = 3\nalpha = 5\n", 5.0 / 3},
        {"rank = 9\nalpha = 5\nuse_rslora = yes\n", 5.0 / 3},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int64_t in = 6, out = 5, N = 3;
        struct bare b;
        ck_assert_msg(bare_make(&b, in, out, cases[c].peft) == LATHE_OK, "%s", lathe_errmsg());
        int64_t r = b.A->shape[0];
        set_values(b.B, 21, 0.3); /* B non-zero */
        lathe_scope_push();
        lathe_tensor *x = lathe_tensor_new2(LATHE_F32, N, in);
        set_values(x, 22, 1.0);
        lathe_tensor *y = lathe_linear_forward(&b.lin, x);
        ck_assert_msg(y != NULL, "%s", lathe_errmsg());
        const float *W = lathe_tensor_f32(b.params[0]), *bias = lathe_tensor_f32(b.params[1]);
        const float *A = lathe_tensor_f32(b.A), *Bm = lathe_tensor_f32(b.B), *xv = lathe_tensor_f32(x);
        double worst = 0;
        for (int64_t n = 0; n < N; n++)
            for (int64_t o = 0; o < out; o++) {
                double want = bias[o];
                for (int64_t i = 0; i < in; i++)
                    want += (double)W[o * in + i] * xv[n * in + i];
                for (int64_t k = 0; k < r; k++) {
                    double ax = 0;
                    for (int64_t i = 0; i < in; i++)
                        ax += (double)A[k * in + i] * xv[n * in + i];
                    want += cases[c].scaling * Bm[o * r + k] * ax;
                }
                worst = fmax(worst, fabs(want - lathe_tensor_f32(y)[n * out + o]));
            }
        ck_assert_msg(worst < 1e-5, "%s: max error %g", cases[c].peft, worst);
        lathe_scope_pop();
        bare_free(&b);
    }
}
END_TEST

/* Dropout acts on the adapter's input only (PEFT's lora_dropout): with A = B
 * = I and scaling 1 the adapter adds dropout(x) itself, whose elements are 0
 * or x / (1 - p); the base path is never dropped; under no_grad (eval,
 * generation) the adapter sees x whole. */
START_TEST(dropout_on_adapter_input_only)
{
    const int64_t d = 4, N = 64;
    struct bare b;
    ck_assert_msg(bare_make(&b, d, d, "rank = 4\nalpha = 4\ndropout = 0.5\n") == LATHE_OK, "%s", lathe_errmsg());
    float *A = lathe_tensor_f32(b.A), *B = lathe_tensor_f32(b.B);
    for (int64_t i = 0; i < d * d; i++)
        A[i] = B[i] = (i / d == i % d) ? 1.0f : 0.0f;
    lathe_scope_push();
    lathe_tensor *x = lathe_tensor_new2(LATHE_F32, N, d);
    set_values(x, 5, 1.0);
    lathe_tensor *base = lathe_linear(x, b.params[0], b.params[1]);
    lathe_tensor *y = lathe_linear_forward(&b.lin, x); /* grad mode on: training */
    ck_assert(y && base);
    int zeros = 0, kept = 0;
    for (int64_t i = 0; i < N * d; i++) {
        double delta = (double)lathe_tensor_f32(y)[i] - lathe_tensor_f32(base)[i];
        double xv = lathe_tensor_f32(x)[i];
        if (fabs(delta) < 1e-6)
            zeros++;
        else {
            ck_assert_msg(fabs(delta - 2.0 * xv) < 1e-5, "element %lld: %g is neither 0 nor x/(1-p) = %g",
                          (long long)i, delta, 2.0 * xv);
            kept++;
        }
    }
    ck_assert_msg(zeros > N * d / 4 && kept > N * d / 4, "dropped %d kept %d of %lld", zeros, kept,
                  (long long)(N * d));
    /* B = 0: the output is the base exactly, so the base path saw no dropout */
    memset(B, 0, (size_t)(d * d) * sizeof *B);
    ck_assert_double_eq(max_abs_diff(lathe_linear_forward(&b.lin, x), base), 0.0);
    for (int64_t i = 0; i < d * d; i++)
        B[i] = (i / d == i % d) ? 1.0f : 0.0f;
    /* eval: no dropout */
    lathe_no_grad_begin();
    lathe_tensor *ye = lathe_linear_forward(&b.lin, x);
    lathe_no_grad_end();
    for (int64_t i = 0; i < N * d; i++)
        ck_assert(fabs((double)lathe_tensor_f32(ye)[i] - lathe_tensor_f32(base)[i] - lathe_tensor_f32(x)[i]) < 1e-5);
    lathe_scope_pop();
    bare_free(&b);
}
END_TEST

/* Gradients reach A and B and the modules to save, nothing frozen. */
START_TEST(gradients_only_into_adapter)
{
    char text[512];
    snprintf(text, sizeof text, "%s[peft]\nplugin = lora\nrank = 2\ntarget_modules = c_attn, c_fc\n"
             "modules_to_save = wpe\n", TINY_GPT2);
    struct rig r;
    rig_model(&r, GPT2(), text);
    ck_assert_msg(rig_lora(&r) == LATHE_OK, "%s", lathe_errmsg());
    lathe_tensor *const *p;
    size_t np;
    ck_assert_int_eq(r.po->params(r.lora, &p, &np), LATHE_OK);
    for (size_t i = 1; i < np; i += 2)
        set_values(p[i], 40 + i, 0.1);
    lathe_tensor *wpe = find_param(r.params, r.nparams, "wpe.weight");
    ck_assert(wpe && wpe->requires_grad);
    for (size_t i = 0; i < r.nparams; i++)
        ck_assert_msg(r.params[i]->requires_grad == (r.params[i] == wpe), "%s", r.params[i]->name);
    lathe_scope_push();
    lathe_tensor *ids = ids_tensor(2, 8, 16, 9);
    lathe_tensor *logits = forward_ids(&r, ids, 1);
    lathe_tensor *loss = lathe_cross_entropy(logits, ids, LATHE_IGNORE_INDEX, 0.0f);
    ck_assert_int_eq(lathe_backward(loss, 1.0f), LATHE_OK);
    for (size_t i = 0; i < np; i++) {
        ck_assert_msg(p[i]->grad != NULL, "%s has no gradient", p[i]->name);
        double g = 0;
        for (int64_t j = 0; j < lathe_tensor_numel(p[i]); j++)
            g += fabs(lathe_tensor_f32(p[i]->grad)[j]);
        ck_assert_msg(g > 0, "%s: zero gradient", p[i]->name);
    }
    ck_assert(wpe->grad != NULL);
    for (size_t i = 0; i < r.nparams; i++)
        if (r.params[i] != wpe)
            ck_assert_msg(r.params[i]->grad == NULL, "frozen %s got a gradient", r.params[i]->name);
    lathe_scope_pop();
    rig_free(&r);
}
END_TEST

/* Through a whole run: the optimizer is given the adapter (and the modules
 * to save) only, training moves them, and the run ends by writing the
 * adapter instead of the full model. */
START_TEST(run_trains_adapter_only)
{
    char *dir = scratch_dir();
    char path[4200], ini[4200], text[2048];
    snprintf(path, sizeof path, "%s/corpus.txt", dir);
    FILE *f = fopen(path, "w");
    ck_assert(f);
    for (int i = 0; i < 200; i++)
        fprintf(f, "abcabd abca %d\n", i % 7);
    fclose(f);
    snprintf(text, sizeof text,
             "[run]\noutput_dir = %s/out\nseed = 3\n"
             "[model]\nplugin = gpt2\nlayers = 2\nheads = 2\nembd = 16\nvocab_size = 256\ncontext = 16\n"
             "[data]\nplugin = text\npath = %s\nseq_len = 16\neval_fraction = 0.1\n"
             "[optim]\nplugin = adamw\nlr = 1e-2\n"
             "[peft]\nplugin = lora\nrank = 4\nalpha = 8\ntarget_modules = c_attn, c_proj\nmodules_to_save = ln_f\n"
             "[train]\nsteps = 3\nbatch_size = 2\nlog_every = 1\n[log]\ntensorboard = false\njsonl = false\n",
             dir, path);
    snprintf(ini, sizeof ini, "%s/run.ini", dir);
    f = fopen(ini, "w");
    ck_assert(f);
    fputs(text, f);
    fclose(f);
    struct lathe_run_opts o = {.ini_path = ini};
    struct lathe_run *run = NULL;
    ck_assert_msg(lathe_run_create(&run, &o) == LATHE_OK, "%s", lathe_errmsg());
    /* 2 layers x (c_attn, attn.c_proj, mlp.c_proj) x (A, B) + ln_f weight and bias */
    ck_assert_uint_eq(run->ntrainable, 2 * 3 * 2 + 2);
    const struct lathe_peft_ops *po = run->peft.ops;
    lathe_tensor *const *p;
    size_t np;
    ck_assert_int_eq(po->params(run->peft.self, &p, &np), LATHE_OK);
    ck_assert_uint_eq(np, 12);
    for (size_t i = 0; i < run->ntrainable; i++) {
        int ok = strncmp(run->trainable[i]->name, "ln_f.", 5) == 0;
        for (size_t k = 0; k < np; k++)
            ok |= run->trainable[i] == p[k];
        ck_assert_msg(ok, "the optimizer sees '%s'", run->trainable[i]->name);
    }
    lathe_tensor *B0 = p[1];
    ck_assert_msg(lathe_run_train(run) == LATHE_OK, "%s", lathe_errmsg());
    double moved = 0;
    for (int64_t j = 0; j < lathe_tensor_numel(B0); j++)
        moved += fabs(lathe_tensor_f32(B0)[j]);
    ck_assert_msg(moved > 0, "lora_B did not move");
    lathe_run_destroy(run);
    struct stat st;
    snprintf(path, sizeof path, "%s/out/adapter/adapter_config.json", dir);
    ck_assert_msg(stat(path, &st) == 0, "%s missing", path);
    snprintf(path, sizeof path, "%s/out/adapter/adapter_model.safetensors", dir);
    ck_assert_msg(stat(path, &st) == 0, "%s missing", path);
    snprintf(path, sizeof path, "%s/out/final", dir);
    ck_assert_msg(stat(path, &st) != 0, "the full model was written too (%s)", path);
    rm_rf(dir);
    free(dir);
}
END_TEST

/* base_dtype = bfloat16: frozen linear weights are stored BF16 (half the
 * bytes), the tied head keeps the f32 embedding, and the logits are those
 * of the bf16-rounded weights. */
START_TEST(base_weights_in_bf16)
{
    char text[512];
    snprintf(text, sizeof text, "%s[peft]\nplugin = lora\nrank = 2\nbase_dtype = bfloat16\n", TINY_GPT2);
    struct rig r;
    rig_model(&r, GPT2(), text);
    lathe_scope_push();
    lathe_tensor *ids = ids_tensor(2, 8, 16, 4);
    lathe_tensor *f32 = copy_of(forward_ids(&r, ids, 0));
    ck_assert_msg(rig_lora(&r) == LATHE_OK, "%s", lathe_errmsg());
    size_t bf = 0;
    for (size_t i = 0; i < r.nlin; i++) {
        lathe_tensor *w = r.lin[i]->weight;
        if (strcmp(r.lin[i]->name, "lm_head") == 0)
            ck_assert_int_eq(w->dtype, LATHE_F32); /* tied to wte */
        else {
            ck_assert_msg(w->dtype == LATHE_BF16, "%s is %s", w->name, lathe_dtype_name(w->dtype));
            bf++;
        }
    }
    ck_assert_uint_eq(bf, 8);
    lathe_tensor *half = forward_ids(&r, ids, 1);
    double d = max_abs_diff(f32, half);
    ck_assert_msg(d > 0 && d < 0.05, "bf16 base: logits differ by %g", d);
    lathe_tensor *loss = lathe_cross_entropy(half, ids, LATHE_IGNORE_INDEX, 0.0f);
    ck_assert_int_eq(lathe_backward(loss, 1.0f), LATHE_OK);
    lathe_tensor *const *p;
    size_t np;
    ck_assert_int_eq(r.po->params(r.lora, &p, &np), LATHE_OK);
    ck_assert(p[1]->grad != NULL); /* B learns through a bf16 base */
    lathe_scope_pop();
    rig_free(&r);
}
END_TEST

/* ---- files ------------------------------------------------------------------- */

static void export_logits(const char *sub, const char *adapter_src, lathe_tensor *ids, lathe_tensor *logits)
{
    /* for check_adapter.py: LATHE_LORA_EXPORT/SUB/{adapter/, lathe.safetensors} */
    const char *root = getenv("LATHE_LORA_EXPORT");
    if (!root || !root[0])
        return;
    char dir[4200], cmd[9000];
    snprintf(dir, sizeof dir, "%s/%s", root, sub);
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && rm -rf '%s/adapter' && cp -r '%s' '%s/adapter'", dir, dir,
             adapter_src, dir);
    ck_assert_int_eq(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s/tmp", dir);
    const char *names[] = {"input_ids", "logits"};
    lathe_tensor *idf = lathe_tensor_to_dtype(ids, LATHE_F32);
    lathe_tensor *ts[] = {idf, logits};
    ck_assert_int_eq(lathe_weights_write(cmd, names, ts, NULL, 2, LATHE_F32, 0), LATHE_OK);
    char from[4300], to[4300];
    snprintf(from, sizeof from, "%s/model.safetensors", cmd);
    snprintf(to, sizeof to, "%s/lathe.safetensors", dir);
    ck_assert_int_eq(rename(from, to), 0);
    rmdir(cmd);
}

/* Save, read the files back as PEFT would, load into a fresh model. */
START_TEST(save_load_round_trip)
{
    char *dir = scratch_dir();
    char text[1024], path[4200];
    snprintf(text, sizeof text, "%s[peft]\nplugin = lora\nrank = 3\nalpha = 6\nuse_rslora = true\n"
             "target_modules = all-linear\nmodules_to_save = ln_f\n", TINY_GPT2);
    struct rig r;
    rig_model(&r, GPT2(), text);
    ck_assert_msg(rig_lora(&r) == LATHE_OK, "%s", lathe_errmsg());
    lathe_tensor *const *p;
    size_t np;
    ck_assert_int_eq(r.po->params(r.lora, &p, &np), LATHE_OK);
    for (size_t i = 0; i < np; i++)
        set_values(p[i], 60 + i, 0.2);
    lathe_tensor *lnf = find_param(r.params, r.nparams, "ln_f.weight");
    set_values(lnf, 70, 1.0);
    ck_assert_msg(r.po->save(r.lora, dir) == LATHE_OK, "%s", lathe_errmsg());
    lathe_scope_push();
    lathe_tensor *ids = ids_tensor(2, 8, 16, 5);
    lathe_tensor *want = copy_of(forward_ids(&r, ids, 0));

    /* adapter_config.json: PEFT's fields */
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    json_error_t je;
    json_t *c = json_load_file(path, 0, &je);
    ck_assert_msg(c != NULL, "%s: %s", path, je.text);
    ck_assert_str_eq(json_string_value(json_object_get(c, "peft_type")), "LORA");
    ck_assert_str_eq(json_string_value(json_object_get(c, "task_type")), "CAUSAL_LM");
    ck_assert_int_eq(json_integer_value(json_object_get(c, "r")), 3);
    ck_assert_int_eq(json_integer_value(json_object_get(c, "lora_alpha")), 6);
    ck_assert(json_is_true(json_object_get(c, "use_rslora")));
    ck_assert(json_is_true(json_object_get(c, "fan_in_fan_out"))); /* GPT-2's Conv1D */
    ck_assert(json_is_true(json_object_get(c, "inference_mode")));
    ck_assert_str_eq(json_string_value(json_object_get(c, "bias")), "none");
    ck_assert(json_is_null(json_object_get(c, "revision")));
    json_t *tm = json_object_get(c, "target_modules");
    ck_assert_uint_eq(json_array_size(tm), 3); /* c_attn, c_proj, c_fc: all-linear without lm_head */
    ck_assert_str_eq(json_string_value(json_array_get(json_object_get(c, "modules_to_save"), 0)), "ln_f");
    json_decref(c);
    /* tensor names: base_model.model. + the HF path, no ".default" */
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    lathe_tensor *a0 = read_named(path, "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight", LATHE_F32);
    ck_assert_double_eq(max_abs_diff(a0, p[0]), 0.0);
    read_named(path, "base_model.model.transformer.h.1.mlp.c_proj.lora_B.weight", LATHE_F32);
    lathe_tensor *l = read_named(path, "base_model.model.transformer.ln_f.weight", LATHE_F32);
    ck_assert_double_eq(max_abs_diff(l, lnf), 0.0);

    /* a fresh model with adapter = DIR (rank, alpha, targets omitted) */
    char text2[1024];
    snprintf(text2, sizeof text2, "%s[peft]\nplugin = lora\nadapter = %s\n", TINY_GPT2, dir);
    struct rig r2;
    rig_model(&r2, GPT2(), text2);
    ck_assert_msg(rig_lora(&r2) == LATHE_OK, "%s", lathe_errmsg());
    lathe_tensor *const *p2;
    size_t np2;
    ck_assert_int_eq(r2.po->params(r2.lora, &p2, &np2), LATHE_OK);
    ck_assert_uint_eq(np2, np);
    for (size_t i = 0; i < np; i++) {
        ck_assert_str_eq(p2[i]->name, p[i]->name);
        ck_assert_double_eq(max_abs_diff(p2[i], p[i]), 0.0);
    }
    ck_assert(find_param(r2.params, r2.nparams, "ln_f.weight")->requires_grad);
    ck_assert_double_eq(max_abs_diff(forward_ids(&r2, ids, 0), want), 0.0);
    /* the same keys given explicitly agree */
    rig_free(&r2);
    snprintf(text2, sizeof text2, "%s[peft]\nplugin = lora\nadapter = %s\nrank = 3\nalpha = 6\nuse_rslora = true\n"
             "target_modules = all-linear\n", TINY_GPT2, dir);
    rig_model(&r2, GPT2(), text2);
    ck_assert_msg(rig_lora(&r2) == LATHE_OK, "%s", lathe_errmsg());
    ck_assert_double_eq(max_abs_diff(forward_ids(&r2, ids, 0), want), 0.0);
    /* set_enabled(0) gives the base back */
    ck_assert_int_eq(r2.po->set_enabled(r2.lora, 0), LATHE_OK);
    ck_assert(max_abs_diff(forward_ids(&r2, ids, 0), want) > 1e-3);
    ck_assert_int_eq(r2.po->set_enabled(r2.lora, 1), LATHE_OK);
    ck_assert_double_eq(max_abs_diff(forward_ids(&r2, ids, 0), want), 0.0);
    lathe_scope_pop();
    rig_free(&r2);
    rig_free(&r);
    rm_rf(dir);
    free(dir);
}
END_TEST

/* ---- against the real peft library --------------------------------------------- */

static const char *GPT2_PRE = "[model]\nplugin = gpt2\npretrained = %s\n[peft]\nplugin = lora\nadapter = %s\n%s";
static const char *LLAMA_PRE = "[model]\nplugin = llama\npretrained = %s\n[peft]\nplugin = lora\nadapter = %s\n%s";

static double peft_fixture(const char *name, const struct lathe_model_ops *mo, const char *fmt)
{
    char text[8192], sub[64], ad[64], ex[64];
    snprintf(sub, sizeof sub, "models/%s", name);
    snprintf(ad, sizeof ad, "lora/%s-adapter", name);
    snprintf(ex, sizeof ex, "lora/%s-expected.safetensors", name);
    snprintf(text, sizeof text, fmt, fx(sub), fx(ad), "");
    struct rig r;
    rig_model(&r, mo, text);
    ck_assert_msg(rig_lora(&r) == LATHE_OK, "%s: %s", name, lathe_errmsg());
    lathe_scope_push();
    lathe_tensor *ids = read_named(fx(ex), "input_ids", LATHE_I32);
    lathe_tensor *want = read_named(fx(ex), "logits", LATHE_F32);
    lathe_tensor *got = forward_ids(&r, ids, 0);
    double d = max_abs_diff(got, want);
    printf("peft adapter %s: max |logit - peft| = %.3g\n", name, d);

    /* the other direction: perturb, save, export for check_adapter.py */
    lathe_tensor *const *p;
    size_t np;
    ck_assert_int_eq(r.po->params(r.lora, &p, &np), LATHE_OK);
    for (size_t i = 0; i < np; i++)
        set_values(p[i], 80 + i, 0.15);
    char *dir = scratch_dir();
    ck_assert_msg(r.po->save(r.lora, dir) == LATHE_OK, "%s", lathe_errmsg());
    export_logits(name, dir, ids, forward_ids(&r, ids, 0));
    rm_rf(dir);
    free(dir);
    lathe_scope_pop();
    rig_free(&r);
    return d;
}

START_TEST(matches_peft_gpt2)
{
    double d = peft_fixture("gpt2", GPT2(), GPT2_PRE);
    ck_assert_msg(d < 1e-4, "gpt2 + peft adapter: max logit difference %g", d);
}
END_TEST

START_TEST(matches_peft_llama)
{
    double d = peft_fixture("llama", LLAMA(), LLAMA_PRE);
    ck_assert_msg(d < 1e-4, "llama + peft adapter: max logit difference %g", d);
}
END_TEST

/* ---- lathe merge ----------------------------------------------------------------- */

/* Run `lathe ARGS...` in a child; its exit status, and its peak RSS in KiB. */
static int run_lathe(long *maxrss_kb, const char *const *args, int quiet)
{
    const char *bin = getenv("LATHE_BIN");
    ck_assert_msg(bin && bin[0], "LATHE_BIN is not set (run through make check)");
    fflush(stdout); /* or the child's freopen writes our buffer a second time */
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        char *argv[16];
        int n = 0;
        argv[n++] = (char *)bin;
        for (; args[n - 1] && n < 15; n++)
            argv[n] = (char *)args[n - 1];
        argv[n] = NULL;
        if (quiet) {
            freopen("/dev/null", "w", stdout);
            freopen("/dev/null", "w", stderr);
        }
        execv(bin, argv);
        _exit(127);
    }
    int status = 0;
    struct rusage ru;
    ck_assert(wait4(pid, &status, 0, &ru) == pid);
    if (maxrss_kb)
        *maxrss_kb = ru.ru_maxrss;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

START_TEST(merge_equals_adapter_logits)
{
    char *dir = scratch_dir();
    char out[4200];
    snprintf(out, sizeof out, "%s/llama", dir);
    const char *args[] = {"merge", "--model", fx("models/llama"), "--adapter", fx("lora/llama-adapter"),
                          "--output", out, NULL};
    ck_assert_int_eq(run_lathe(NULL, args, 1), 0);
    /* same layout: three shards and the index */
    struct stat st;
    char path[4300];
    snprintf(path, sizeof path, "%s/model-00003-of-00003.safetensors", out);
    ck_assert_msg(stat(path, &st) == 0, "%s missing", path);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", out);
    ck_assert_msg(stat(path, &st) == 0, "%s missing", path);
    snprintf(path, sizeof path, "%s/config.json", out);
    ck_assert_msg(stat(path, &st) == 0, "%s missing", path);
    /* the merged model alone gives peft's logits with the adapter */
    char text[8192];
    snprintf(text, sizeof text, "[model]\nplugin = llama\npretrained = %s\n", out);
    struct rig r;
    rig_model(&r, LLAMA(), text);
    lathe_scope_push();
    lathe_tensor *ids = read_named(fx("lora/llama-expected.safetensors"), "input_ids", LATHE_I32);
    lathe_tensor *want = read_named(fx("lora/llama-expected.safetensors"), "logits", LATHE_F32);
    double d = max_abs_diff(forward_ids(&r, ids, 0), want);
    printf("merged llama: max |logit - peft with adapter| = %.3g\n", d);
    ck_assert_msg(d < 1e-4, "merged llama: max logit difference %g", d);
    lathe_scope_pop();
    rig_free(&r);

    /* GPT-2 (BF16, Conv1D: fan_in_fan_out): each merged weight is
     * W + s (B A)^T rounded once to bf16 */
    snprintf(out, sizeof out, "%s/gpt2", dir);
    const char *args2[] = {"merge", "--model", fx("models/gpt2"), "--adapter", fx("lora/gpt2-adapter"),
                           "--output", out, NULL};
    ck_assert_int_eq(run_lathe(NULL, args2, 1), 0);
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    lathe_scope_push();
    const char *ad = fx("lora/gpt2-adapter/adapter_model.safetensors");
    const char *base = fx("models/gpt2/model.safetensors");
    const double s = 8.0 / sqrt(4.0); /* rsLoRA */
    const char *mods[] = {"h.0.attn.c_attn", "h.1.mlp.c_fc"};
    for (int m = 0; m < 2; m++) {
        char n[256];
        snprintf(n, sizeof n, "base_model.model.transformer.%s.lora_A.weight", mods[m]);
        lathe_tensor *A = read_named(ad, n, LATHE_F32);
        snprintf(n, sizeof n, "base_model.model.transformer.%s.lora_B.weight", mods[m]);
        lathe_tensor *B = read_named(ad, n, LATHE_F32);
        snprintf(n, sizeof n, "transformer.%s.weight", mods[m]);
        lathe_tensor *W = read_named(base, n, LATHE_F32), *M = read_named(path, n, LATHE_F32);
        int64_t in = W->shape[0], o = W->shape[1], rk = A->shape[0];
        double worst = 0;
        for (int64_t i = 0; i < in; i++)
            for (int64_t j = 0; j < o; j++) {
                double v = lathe_tensor_f32(W)[i * o + j];
                for (int64_t k = 0; k < rk; k++)
                    v += s * lathe_tensor_f32(B)[j * rk + k] * lathe_tensor_f32(A)[k * in + i];
                double err = fabs(v - lathe_tensor_f32(M)[i * o + j]) / fmax(fabs(v), 1e-3);
                worst = fmax(worst, err);
            }
        ck_assert_msg(worst <= 1.0 / 256, "%s: merged weight off by %g relative (bf16 half-ulp is 1/256)", mods[m],
                      worst);
    }
    lathe_scope_pop();
    rm_rf(dir);
    free(dir);
}
END_TEST

/* A model of many shards: merging holds about one tensor plus the adapter,
 * never a shard, let alone the model. Measured as the peak RSS of the lathe
 * process (getrusage of the child), against a merge of a one-shard model of
 * the same code path, so that the binary, BLAS and OpenMP set-up cancel. */
static void write_sharded_model(const char *dir, int layers, int64_t C, uint64_t shard)
{
    const char *kinds[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
    size_t n = (size_t)layers * 7;
    char **names = calloc(n, sizeof *names);
    lathe_tensor **ts = calloc(n, sizeof *ts);
    for (int l = 0; l < layers; l++)
        for (int k = 0; k < 7; k++) {
            size_t i = (size_t)l * 7 + (size_t)k;
            names[i] = malloc(96);
            snprintf(names[i], 96, "model.layers.%d.%s.weight", l, kinds[k]);
            ts[i] = lathe_tensor_new2(LATHE_F32, C, C);
            set_values(ts[i], i, 0.02);
        }
    ck_assert_msg(lathe_weights_write(dir, (const char *const *)names, ts, NULL, n, LATHE_F32, shard) == LATHE_OK,
                  "%s", lathe_errmsg());
    for (size_t i = 0; i < n; i++) {
        lathe_tensor_free(ts[i]);
        free(names[i]);
    }
    free(names);
    free(ts);
    char p[4200];
    snprintf(p, sizeof p, "%s/config.json", dir);
    FILE *f = fopen(p, "w");
    fputs("{\"architectures\": [\"LlamaForCausalLM\"]}\n", f);
    fclose(f);
}

static void write_adapter(const char *dir, int layers, int64_t C, int64_t r)
{
    size_t n = (size_t)layers * 4;
    char **names = calloc(n, sizeof *names);
    lathe_tensor **ts = calloc(n, sizeof *ts);
    for (int l = 0; l < layers; l++)
        for (int k = 0; k < 4; k++) {
            size_t i = (size_t)l * 4 + (size_t)k;
            names[i] = malloc(128);
            snprintf(names[i], 128, "base_model.model.model.layers.%d.self_attn.%s_proj.lora_%c.weight", l,
                     k < 2 ? "q" : "v", k % 2 ? 'B' : 'A');
            ts[i] = k % 2 ? lathe_tensor_new2(LATHE_F32, C, r) : lathe_tensor_new2(LATHE_F32, r, C);
            set_values(ts[i], 100 + i, 0.1);
        }
    char tmp[4200], from[4300], to[4300];
    snprintf(tmp, sizeof tmp, "%s/tmp", dir);
    ck_assert_int_eq(lathe_weights_write(tmp, (const char *const *)names, ts, NULL, n, LATHE_F32, 0), LATHE_OK);
    snprintf(from, sizeof from, "%s/model.safetensors", tmp);
    snprintf(to, sizeof to, "%s/adapter_model.safetensors", dir);
    ck_assert_int_eq(rename(from, to), 0);
    rmdir(tmp);
    for (size_t i = 0; i < n; i++) {
        lathe_tensor_free(ts[i]);
        free(names[i]);
    }
    free(names);
    free(ts);
    snprintf(to, sizeof to, "%s/adapter_config.json", dir);
    FILE *f = fopen(to, "w");
    fprintf(f, "{\"peft_type\": \"LORA\", \"r\": %lld, \"lora_alpha\": 16, \"target_modules\": [\"q_proj\", "
               "\"v_proj\"], \"bias\": \"none\"}\n", (long long)r);
    fclose(f);
}

START_TEST(merge_memory_bound)
{
    char *dir = scratch_dir();
    char big[4200], small[4200], ad[4200], out1[4200], out2[4200];
    snprintf(big, sizeof big, "%s/big", dir);
    snprintf(small, sizeof small, "%s/small", dir);
    snprintf(ad, sizeof ad, "%s/adapter", dir);
    snprintf(out1, sizeof out1, "%s/out-big", dir);
    snprintf(out2, sizeof out2, "%s/out-small", dir);
    const int64_t C = 256;                    /* 256 KiB per tensor */
    const uint64_t shard = (uint64_t)7 << 19; /* 3.5 MiB: two layers of 7 tensors */
    write_sharded_model(big, 16, C, shard);  /* 16 layers: 8 shards, 28 MiB */
    write_sharded_model(small, 2, C, 0);     /* one file, 3.5 MiB */
    mkdir(ad, 0777);
    write_adapter(ad, 16, C, 8);
    /* the merge refuses modules it cannot find: the small model has its own */
    char ad2[4200];
    snprintf(ad2, sizeof ad2, "%s/adapter-small", dir);
    mkdir(ad2, 0777);
    write_adapter(ad2, 2, C, 8);
    struct stat st;
    char p[4300];
    snprintf(p, sizeof p, "%s/model-00008-of-00008.safetensors", big);
    ck_assert_msg(stat(p, &st) == 0, "expected 8 shards in %s", big);
    long rss_big = 0, rss_small = 0;
    const char *a1[] = {"merge", "--model", big, "--adapter", ad, "--output", out1, NULL};
    const char *a2[] = {"merge", "--model", small, "--adapter", ad2, "--output", out2, NULL};
    ck_assert_int_eq(run_lathe(&rss_small, a2, 1), 0);
    ck_assert_int_eq(run_lathe(&rss_big, a1, 1), 0);
    snprintf(p, sizeof p, "%s/model-00008-of-00008.safetensors", out1);
    ck_assert_msg(stat(p, &st) == 0, "merged shard 8 missing");
    const double shard_mib = (double)shard / (1 << 20), model_mib = 16 * 7 * (double)(C * C * 4) / (1 << 20);
    double growth = (double)(rss_big - rss_small) / 1024.0;
    printf("merge peak RSS: %.1f MiB for a %.0f MiB model in 8 shards of %.1f MiB, %.1f MiB for one shard "
           "(growth %.1f MiB)\n",
           rss_big / 1024.0, model_mib, shard_mib, rss_small / 1024.0, growth);
    /* the bound: one shard (the adapter is 0.25 MiB) */
    ck_assert_msg(growth < shard_mib, "merging 8 shards took %.1f MiB more than merging one; the bound is one shard "
                  "(%.1f MiB)", growth, shard_mib);
    /* spot check: a merged tensor equals W + s B A */
    lathe_scope_push();
    snprintf(p, sizeof p, "%s/model-00008-of-00008.safetensors", out1);
    lathe_tensor *M = read_named(p, "model.layers.15.self_attn.v_proj.weight", LATHE_F32);
    snprintf(p, sizeof p, "%s/model-00008-of-00008.safetensors", big);
    lathe_tensor *W = read_named(p, "model.layers.15.self_attn.v_proj.weight", LATHE_F32);
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", ad);
    lathe_tensor *A = read_named(p, "base_model.model.model.layers.15.self_attn.v_proj.lora_A.weight", LATHE_F32);
    lathe_tensor *B = read_named(p, "base_model.model.model.layers.15.self_attn.v_proj.lora_B.weight", LATHE_F32);
    double worst = 0;
    for (int64_t o = 0; o < C; o += 7)
        for (int64_t i = 0; i < C; i += 5) {
            double v = lathe_tensor_f32(W)[o * C + i];
            for (int k = 0; k < 8; k++)
                v += 2.0 * lathe_tensor_f32(B)[o * 8 + k] * lathe_tensor_f32(A)[k * C + i];
            worst = fmax(worst, fabs(v - lathe_tensor_f32(M)[o * C + i]));
        }
    ck_assert_msg(worst < 1e-5, "merged weight off by %g", worst);
    snprintf(p, sizeof p, "%s/model-00001-of-00008.safetensors", out1);
    lathe_tensor *K = read_named(p, "model.layers.0.self_attn.k_proj.weight", LATHE_F32);
    snprintf(p, sizeof p, "%s/model-00001-of-00008.safetensors", big);
    ck_assert_double_eq(max_abs_diff(K, read_named(p, "model.layers.0.self_attn.k_proj.weight", LATHE_F32)), 0.0);
    lathe_scope_pop();
    rm_rf(dir);
    free(dir);
}
END_TEST

/* ---- errors -------------------------------------------------------------------------- */

static void expect_error(const char *peft, const char *needle1, const char *needle2)
{
    char text[2048];
    snprintf(text, sizeof text, "%s[peft]\nplugin = lora\n%s", TINY_GPT2, peft);
    struct rig r;
    rig_model(&r, GPT2(), text);
    int rc = rig_lora(&r);
    ck_assert_msg(rc != LATHE_OK, "accepted: %s", peft);
    ck_assert_msg(strstr(lathe_errmsg(), needle1) && (!needle2 || strstr(lathe_errmsg(), needle2)),
                  "for %s: message '%s' lacks '%s'/'%s'", peft, lathe_errmsg(), needle1, needle2 ? needle2 : "");
    rig_free(&r);
}

START_TEST(config_errors)
{
    expect_error("bias = all\n", "bias", "none");
    expect_error("bias = lora_only\n", "bias", NULL);
    expect_error("target_modules = q_projj\n", "q_projj", "c_attn, c_proj, c_fc, lm_head");
    expect_error("target_modules = c_attn, c_fcc\n", "c_fcc", "matches no linear");
    expect_error("target_modules = all-linear, c_attn\n", "all-linear", NULL);
    expect_error("init = xavier\n", "init", NULL);
    expect_error("rank = 0\n", "rank", NULL);
    expect_error("dropout = 1\n", "dropout", NULL);
    expect_error("base_dtype = float16\n", "base_dtype", NULL);
    expect_error("modules_to_save = embed_tokens\n", "embed_tokens", "wte.weight");
    expect_error("target_modules = c_attn\nmodules_to_save = c_attn\n", "c_attn", "modules_to_save");
    expect_error("adapter = /nonexistent/adapter\n", "/nonexistent/adapter/adapter_config.json", NULL);
}
END_TEST

/* An adapter's r / alpha / targets come from its files: a key that says
 * otherwise is an error that explains the rule. */
START_TEST(adapter_disagreements)
{
    char *dir = scratch_dir();
    char text[2048];
    snprintf(text, sizeof text, "%s[peft]\nplugin = lora\nrank = 4\nalpha = 8\ntarget_modules = c_attn\n", TINY_GPT2);
    struct rig r;
    rig_model(&r, GPT2(), text);
    ck_assert_int_eq(rig_lora(&r), LATHE_OK);
    ck_assert_int_eq(r.po->save(r.lora, dir), LATHE_OK);
    rig_free(&r);
    static const char *bad[][2] = {
        {"rank = 8\n", "rank"},
        {"alpha = 16\n", "alpha"},
        {"use_rslora = true\n", "use_rslora"},
        {"target_modules = c_attn, c_fc\n", "target_modules"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char peft[1024];
        snprintf(peft, sizeof peft, "adapter = %s\n%s", dir, bad[i][0]);
        expect_error(peft, bad[i][1], "omit them or give the adapter's values");
    }
    /* an adapter for another model */
    char peft[4300];
    snprintf(peft, sizeof peft, "adapter = %s\n", fx("lora/llama-adapter"));
    expect_error(peft, "embed_tokens", "adapter");
    rm_rf(dir);
    free(dir);
}
END_TEST

START_TEST(merge_errors)
{
    char *dir = scratch_dir();
    char out[4200];
    snprintf(out, sizeof out, "%s/o", dir);
    /* an adapter for another model: refused before anything is written */
    const char *a1[] = {"merge", "--model", fx("models/gpt2"), "--adapter", fx("lora/llama-adapter"), "--output",
                        out, NULL};
    ck_assert_int_eq(run_lathe(NULL, a1, 1), 1);
    struct stat st;
    ck_assert(stat(out, &st) != 0);
    /* output = model */
    const char *a2[] = {"merge", "--model", fx("models/gpt2"), "--adapter", fx("lora/gpt2-adapter"), "--output",
                        fx("models/gpt2"), NULL};
    ck_assert_int_eq(run_lathe(NULL, a2, 1), 1);
    /* missing arguments, a directory that is no model */
    const char *a3[] = {"merge", "--model", fx("models/gpt2"), NULL};
    ck_assert_int_eq(run_lathe(NULL, a3, 1), 2);
    const char *a4[] = {"merge", "--model", dir, "--adapter", fx("lora/gpt2-adapter"), "--output", out, NULL};
    ck_assert_int_eq(run_lathe(NULL, a4, 1), 1);
    rm_rf(dir);
    free(dir);
}
END_TEST

static Suite *lora_suite(void)
{
    Suite *s = suite_create("lora");
    TCase *core = tcase_create("Core");
    tcase_set_timeout(core, 120);
    tcase_add_test(core, hooks_only_on_targets);
    tcase_add_test(core, zero_B_keeps_base_logits);
    tcase_add_test(core, scaling_and_rslora);
    tcase_add_test(core, dropout_on_adapter_input_only);
    tcase_add_test(core, gradients_only_into_adapter);
    tcase_add_test(core, run_trains_adapter_only);
    tcase_add_test(core, base_weights_in_bf16);
    tcase_add_test(core, save_load_round_trip);
    tcase_add_test(core, matches_peft_gpt2);
    tcase_add_test(core, matches_peft_llama);
    tcase_add_test(core, merge_equals_adapter_logits);
    suite_add_tcase(s, core);
    TCase *limits = tcase_create("Limits");
    tcase_set_timeout(limits, 120);
    tcase_add_test(limits, merge_memory_bound);
    tcase_add_test(limits, config_errors);
    tcase_add_test(limits, adapter_disagreements);
    tcase_add_test(limits, merge_errors);
    suite_add_tcase(s, limits);
    return s;
}

int main(void)
{
    return lathe_test_run(lora_suite());
}
