/* plugins/gpt2/gpt2.c — the GPT-2 decoder (component "gpt2").
 *
 * Radford et al., "Language Models are Unsupervised Multitask Learners"
 * (2019): learned token and position embeddings, pre-LayerNorm blocks of
 * causal self-attention and a 4x GELU MLP, a final LayerNorm, and logits
 * against the token embedding (tied) or a separate lm_head.
 *
 * Parameter names follow Hugging Face's GPT2Model without "transformer.":
 * wte.weight, h.0.attn.c_attn.weight, ..., ln_f.bias. Linear weights are
 * [out, in] (HF's Conv1D stores [in, out]; an exporter transposes them).
 * Initialisation as GPT-2 / llm.c: N(0, init_std) for weights and
 * embeddings, N(0, init_std / sqrt(2 layers)) for the residual projections
 * (attn.c_proj, mlp.c_proj; GPT-2 paper section 2.3), zero biases, unit
 * LayerNorm gains; the draws come from lathe_rng streams seeded by [run]
 * seed (one per parameter and chunk, see gpt2_fill).
 *
 * With `pretrained = DIR` the model is a Hugging Face GPT2LMHeadModel
 * directory instead (formats.md §3.4): the size comes from its config.json,
 * the weights from its safetensors, with or without the "transformer."
 * prefix; Conv1D weights, stored [in, out], are transposed on the way in and
 * back out, and the attn.bias / attn.masked_bias causal-mask buffers are
 * ignored. save(dir) writes that layout back.
 *
 * Shape legend: B batch, T time, C embd, H heads, D = C / H, V vocab.
 *
 * [model] keys: layers, heads, embd, vocab_size, context, dropout, init_std,
 * layernorm_eps, tie_embeddings; or pretrained (then only dropout besides);
 * save_dtype (float32 | bfloat16 | float16) and max_shard_size for save.
 */
#include <lathe/lathe.h>

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define GPT2_NAME_LEN 48 /* "h.4095.attn.c_proj" fits */

struct gpt2_block {
    lathe_tensor *ln1_w, *ln1_b;  /* [C] */
    struct lathe_linear c_attn;   /* [3C, C] */
    struct lathe_linear attn_proj; /* [C, C] */
    lathe_tensor *ln2_w, *ln2_b;  /* [C] */
    struct lathe_linear c_fc;     /* [4C, C] */
    struct lathe_linear mlp_proj; /* [C, 4C] */
};

struct gpt2 {
    int64_t L, H, C, V, P;        /* layers, heads, embd, vocab, context */
    float dropout, eps;
    lathe_tensor *wte;            /* [V, C] */
    lathe_tensor *wpe;            /* [P, C] */
    lathe_tensor *lnf_w, *lnf_b;  /* [C] */
    struct gpt2_block *blocks;    /* [L] */
    struct lathe_segment *segs;   /* [L]: one per block (lathe/segment.h) */
    const struct lathe_segment **seg_list;
    char (*seg_names)[24];
    struct lathe_linear head;     /* weight wte (tied) or lm_head.weight [V, C] */
    lathe_tensor **params;        /* every parameter, in creation order */
    size_t nparams;
    struct lathe_linear **linears;
    size_t nlinears;
    char (*names)[GPT2_NAME_LEN];            /* storage for the linears' names */
    int tied;
    char *dir;                    /* pretrained directory, or NULL */
    json_t *config;               /* its config.json (written back on save) */
    enum lathe_dtype save_dtype;
    uint64_t max_shard;
};

static void gpt2_destroy(void *self)
{
    struct gpt2 *m = self;
    if (!m)
        return;
    for (size_t i = 0; i < m->nparams; i++)
        lathe_tensor_free(m->params[i]);
    free(m->params);
    free(m->linears);
    free(m->names);
    free(m->blocks);
    free(m->segs);
    free(m->seg_list);
    free(m->seg_names);
    free(m->dir);
    json_decref(m->config);
    free(m);
}

/* Fill a device tensor with N(0, std) draws (std > 0) or the constant `c`
 * (std == 0). Chunk k of the tensor draws from its own lathe_rng seeded by
 * (seed, k), so chunks fill in parallel with a result that does not depend
 * on the thread count, and only a chunk-sized host buffer per thread is
 * ever held (nothing the size of the model twice). */
static int gpt2_fill(lathe_tensor *t, uint64_t seed, double std, float c)
{
    enum { CHUNK = 1 << 14 };
    const struct lathe_backend_ops *be = lathe_backend();
    const int64_t n = lathe_tensor_numel(t), nchunk = (n + CHUNK - 1) / CHUNK;
    int failed = 0;
#pragma omp parallel for schedule(static) if (std > 0.0 && nchunk > 1)
    for (int64_t ch = 0; ch < nchunk; ch++) {
        float buf[CHUNK];
        int64_t off = ch * CHUNK, k = n - off < CHUNK ? n - off : CHUNK;
        if (std > 0.0) {
            lathe_rng rng;
            lathe_rng_seed(&rng, seed + 0x9E3779B97F4A7C15ull * (uint64_t)(ch + 1));
            /* Marsaglia's polar method (Marsaglia & Bray 1964): two normals
             * per accepted pair with one log and no trig, about twice as
             * fast as lathe_rng_normal's Box-Muller; initialisation is most
             * of a large model's start-up. */
            for (int64_t i = 0; i < k; i += 2) {
                double x, y, w;
                do {
                    x = 2.0 * lathe_rng_uniform(&rng) - 1.0;
                    y = 2.0 * lathe_rng_uniform(&rng) - 1.0;
                    w = x * x + y * y;
                } while (w >= 1.0 || w == 0.0);
                double f = std * sqrt(-2.0 * log(w) / w);
                buf[i] = (float)(x * f);
                if (i + 1 < k)
                    buf[i + 1] = (float)(y * f);
            }
        } else {
            for (int64_t i = 0; i < k; i++)
                buf[i] = c;
        }
        if (be->copy((float *)t->data + off, buf, (size_t)k * sizeof(float), 1)) {
#pragma omp atomic write
            failed = 1;
        }
    }
    if (failed)
        return lathe_error(LATHE_ERR, "gpt2: copying the initial values of '%s' to the device "
                           "failed", t->name);
    return LATHE_OK;
}

/* Make, register and initialise one parameter; NULL on failure. */
static lathe_tensor *gpt2_param(struct gpt2 *m, uint64_t seed, double std, float c,
                                int ndim, int64_t d0, int64_t d1, const char *fmt, int layer)
{
    char name[LATHE_NAME_MAX];
    snprintf(name, sizeof name, fmt, layer);
    int64_t shape[2] = {d0, d1};
    lathe_tensor *t = lathe_param_new(name, ndim, shape);
    if (!t) {
        lathe_error_prefix(LATHE_ENOMEM, "gpt2: parameter '%s'", name);
        return NULL;
    }
    /* each parameter its own streams: seed mixed with its index */
    m->params[m->nparams++] = t;
    if (m->dir) /* pretrained: the checkpoint fills it */
        return t;
    if (gpt2_fill(t, seed ^ (0xD1B54A32D192ED03ull * (uint64_t)m->nparams), std, c))
        return NULL;
    return t;
}

static struct lathe_linear *gpt2_linear(struct gpt2 *m, struct lathe_linear *l, const char *fmt,
                                        int layer, lathe_tensor *w, lathe_tensor *b)
{
    char *name = m->names[m->nlinears];
    snprintf(name, GPT2_NAME_LEN, fmt, layer);
    l->name = name;
    l->weight = w;
    l->bias = b;
    l->hook = NULL;
    l->hook_self = NULL;
    m->linears[m->nlinears++] = l;
    return l;
}

static int gpt2_read_pretrained(struct gpt2 *m, lathe_section *cfg, const struct lathe_env *env, const char *pre,
                                int *tie);

static int gpt2_read_config(struct gpt2 *m, lathe_section *cfg, const struct lathe_env *env, double *init_std,
                            int *tie)
{
    static const char *const dtypes[] = {"float32", "bfloat16", "float16", NULL};
    static const enum lathe_dtype dtype_of[] = {LATHE_F32, LATHE_BF16, LATHE_F16};
    double dropout, eps;
    const char *pre;
    int rc, dt;
    if ((rc = lathe_cfg_path(cfg, "pretrained", "", &pre)) ||
        (rc = lathe_cfg_choice(cfg, "save_dtype", "float32", dtypes, &dt)) ||
        (rc = lathe_cfg_bytes(cfg, "max_shard_size", "5G", &m->max_shard)))
        return rc;
    m->save_dtype = dtype_of[dt];
    if (pre[0]) {
        if ((rc = lathe_cfg_float(cfg, "dropout", 0.0, 0.0, 1.0, &dropout)))
            return rc;
        if (dropout >= 1.0)
            return lathe_cfg_error(cfg, "dropout", "dropout must be in [0, 1) (got %g)", dropout);
        m->dropout = (float)dropout;
        *init_std = 0.02;
        return gpt2_read_pretrained(m, cfg, env, pre, tie);
    }
    if ((rc = lathe_cfg_int(cfg, "layers", 12, 1, 4096, &m->L)) ||
        (rc = lathe_cfg_int(cfg, "heads", 12, 1, 4096, &m->H)) ||
        (rc = lathe_cfg_int(cfg, "embd", 768, 1, 1 << 20, &m->C)) ||
        (rc = lathe_cfg_int(cfg, "vocab_size", 50257, 1, INT32_MAX, &m->V)) ||
        (rc = lathe_cfg_int(cfg, "context", 1024, 1, 1 << 24, &m->P)) ||
        (rc = lathe_cfg_float(cfg, "dropout", 0.0, 0.0, 1.0, &dropout)) ||
        (rc = lathe_cfg_float(cfg, "init_std", 0.02, 0.0, 10.0, init_std)) ||
        (rc = lathe_cfg_float(cfg, "layernorm_eps", 1e-5, 0.0, 1.0, &eps)) ||
        (rc = lathe_cfg_bool(cfg, "tie_embeddings", 1, tie)))
        return rc;
    if (dropout >= 1.0)
        return lathe_cfg_error(cfg, "dropout", "dropout must be in [0, 1) (got %g)", dropout);
    if (!(*init_std > 0.0))
        return lathe_cfg_error(cfg, "init_std", "init_std must be > 0 (got %g)", *init_std);
    if (!(eps > 0.0))
        return lathe_cfg_error(cfg, "layernorm_eps", "layernorm_eps must be > 0 (got %g)", eps);
    if (m->C % m->H != 0)
        return lathe_cfg_error(cfg, "heads", "heads (%lld) must divide embd (%lld); e.g. "
                               "embd 768 takes 12 heads of 64", (long long)m->H, (long long)m->C);
    m->dropout = (float)dropout;
    m->eps = (float)eps;
    return LATHE_OK;
}

static int gpt2_json_int(const char *file, json_t *root, const char *key, int64_t def, int64_t *out)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (def < 0)
            return lathe_error(LATHE_EINVAL, "%s: key '%s' is missing; it is required", file, key);
        *out = def;
        return LATHE_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 1)
        return lathe_error(LATHE_EINVAL, "%s: key '%s' must be a positive integer", file, key);
    *out = json_integer_value(v);
    return LATHE_OK;
}

/* The size from DIR/config.json (transformers' GPT2Config); settings this
 * model does not implement are refused, naming the key. */
static int gpt2_read_pretrained(struct gpt2 *m, lathe_section *cfg, const struct lathe_env *env, const char *pre,
                                int *tie)
{
    static const char *const size_keys[] = {"layers", "heads", "embd", "vocab_size", "context",
                                            "init_std", "layernorm_eps", "tie_embeddings", NULL};
    char given[160] = "";
    const char *first = NULL;
    for (const char *const *k = size_keys; *k; k++)
        if (lathe_section_has(cfg, *k)) {
            if (!first)
                first = *k;
            size_t n = strlen(given);
            snprintf(given + n, sizeof given - n, "%s%s", n ? ", " : "", *k);
        }
    if (first)
        return lathe_cfg_error(cfg, first, "pretrained = %s takes the model's size from its config.json; "
                               "remove %s", pre, given);
    if (!(m->dir = strdup(pre)))
        return lathe_error(LATHE_ENOMEM, "gpt2: out of memory");
    char file[4200];
    snprintf(file, sizeof file, "%s/config.json", m->dir);
    json_error_t err;
    json_t *root = m->config = json_load_file(file, 0, &err);
    if (!root)
        return lathe_error(LATHE_EINVAL, "%s:%d: %s; check [model] pretrained (relative paths start at the INI "
                           "file's directory)", file, err.line, err.text);
    if (!json_is_object(root))
        return lathe_error(LATHE_EINVAL, "%s: not a JSON object", file);
    json_t *arch = json_object_get(root, "architectures");
    if (arch && !json_is_null(arch)) {
        const char *a = json_is_array(arch) && json_array_size(arch) == 1 ? json_string_value(json_array_get(arch, 0))
                                                                           : NULL;
        if (!a || (strcmp(a, "GPT2LMHeadModel") != 0 && strcmp(a, "GPT2Model") != 0))
            return lathe_error(LATHE_EUNSUPPORTED, "%s: architecture '%s' is not supported by the gpt2 plugin "
                               "(supported: GPT2LMHeadModel)", file, a ? a : "?");
    } else {
        const char *mt = json_string_value(json_object_get(root, "model_type"));
        if (!mt || strcmp(mt, "gpt2") != 0)
            return lathe_error(LATHE_EUNSUPPORTED, "%s: key 'model_type' must be \"gpt2\"", file);
    }
    int rc;
    int64_t inner;
    if ((rc = gpt2_json_int(file, root, "n_embd", -1, &m->C)) || (rc = gpt2_json_int(file, root, "n_head", -1, &m->H)) ||
        (rc = gpt2_json_int(file, root, "n_layer", -1, &m->L)) ||
        (rc = gpt2_json_int(file, root, "n_positions", -1, &m->P)) ||
        (rc = gpt2_json_int(file, root, "vocab_size", -1, &m->V)) ||
        (rc = gpt2_json_int(file, root, "n_inner", 0, &inner)))
        return rc;
    if (m->C % m->H != 0)
        return lathe_error(LATHE_EINVAL, "%s: n_head %lld must divide n_embd %lld", file, (long long)m->H,
                           (long long)m->C);
    if (inner != 0 && inner != 4 * m->C)
        return lathe_error(LATHE_EUNSUPPORTED, "%s: key 'n_inner' = %lld is not supported (only null or 4 * n_embd)",
                           file, (long long)inner);
    json_t *eps = json_object_get(root, "layer_norm_epsilon");
    m->eps = 1e-5f;
    if (eps && !json_is_null(eps)) {
        if (!json_is_number(eps) || !(json_number_value(eps) > 0))
            return lathe_error(LATHE_EINVAL, "%s: key 'layer_norm_epsilon' must be a number > 0", file);
        m->eps = (float)json_number_value(eps);
    }
    const char *act = json_string_value(json_object_get(root, "activation_function"));
    if (json_object_get(root, "activation_function") &&
        !(act && (strcmp(act, "gelu_new") == 0 || strcmp(act, "gelu_pytorch_tanh") == 0)))
        return lathe_error(LATHE_EUNSUPPORTED, "%s: key 'activation_function' must be \"gelu_new\" (the tanh "
                           "approximation)", file);
    /* flags that would change the attention */
    static const struct { const char *key; int want; } flags[] = {
        {"scale_attn_weights", 1}, {"scale_attn_by_inverse_layer_idx", 0}, {"add_cross_attention", 0}};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        json_t *v = json_object_get(root, flags[i].key);
        if (v && !json_is_null(v) && (!json_is_boolean(v) || json_is_true(v) != flags[i].want))
            return lathe_error(LATHE_EUNSUPPORTED, "%s: key '%s' must be %s", file, flags[i].key,
                               flags[i].want ? "true" : "false");
    }
    json_t *t = json_object_get(root, "tie_word_embeddings");
    *tie = !t || json_is_null(t) || json_is_true(t);
    return LATHE_OK;
}

/* GPT-2's Conv1D layers store their weight [in, out]. */
static int gpt2_is_conv1d(const char *name)
{
    static const char *const suffix[] = {"attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
                                         "mlp.c_proj.weight"};
    size_t n = strlen(name);
    for (int i = 0; i < 4; i++) {
        size_t k = strlen(suffix[i]);
        if (n >= k && strcmp(name + n - k, suffix[i]) == 0)
            return 1;
    }
    return 0;
}

static int gpt2_load(struct gpt2 *m)
{
    lathe_weights *w;
    int rc = lathe_weights_open(&w, m->dir);
    if (rc)
        return rc;
    /* distilgpt2-style files carry the "transformer." prefix, the
     * openai-community/gpt2 one does not; lm_head never has it */
    const char *prefix = lathe_weights_has(w, "transformer.wte.weight") ? "transformer." : "";
    for (size_t i = 0; i < m->nparams && !rc; i++) {
        const char *name = m->params[i]->name;
        char hf[LATHE_NAME_MAX + 16];
        snprintf(hf, sizeof hf, "%s%s", strcmp(name, "lm_head.weight") == 0 ? "" : prefix, name);
        rc = gpt2_is_conv1d(name) ? lathe_weights_read_transposed(w, hf, m->params[i])
                                  : lathe_weights_read(w, hf, m->params[i]);
    }
    if (!rc) {
        /* the causal-mask buffers; a tied head's copy, which transformers
         * ignores too */
        const char *ignore[] = {"*.attn.bias", "*.attn.masked_bias", m->tied ? "lm_head.weight" : NULL, NULL};
        const char *extra = lathe_weights_unused(w, ignore);
        if (extra)
            rc = lathe_error(LATHE_EINVAL, "%s: tensor '%s' is not part of a GPT2LMHeadModel with this "
                             "config.json; the checkpoint and config do not match", m->dir, extra);
    }
    lathe_weights_close(w);
    return rc;
}

static int gpt2_build(struct gpt2 *m, const struct lathe_env *env, double std, int tie)
{
    const int64_t C = m->C, V = m->V, P = m->P;
    const double res_std = std / sqrt(2.0 * (double)m->L);
    const uint64_t seed = env->seed;

    size_t maxp = 2 + 12 * (size_t)m->L + 2 + 1;
    size_t maxl = 4 * (size_t)m->L + 1;
    m->params = calloc(maxp, sizeof *m->params);
    m->linears = calloc(maxl, sizeof *m->linears);
    m->names = calloc(maxl, sizeof *m->names);
    m->blocks = calloc((size_t)m->L, sizeof *m->blocks);
    m->segs = calloc((size_t)m->L, sizeof *m->segs);
    m->seg_list = calloc((size_t)m->L, sizeof *m->seg_list);
    m->seg_names = calloc((size_t)m->L, sizeof *m->seg_names);
    if (!m->params || !m->linears || !m->names || !m->blocks || !m->segs || !m->seg_list || !m->seg_names)
        return lathe_error(LATHE_ENOMEM, "gpt2: out of memory");

#define P1(std_, c_, d0, fmt, i) gpt2_param(m, seed, std_, c_, 1, d0, 0, fmt, i)
#define P2(std_, d0, d1, fmt, i) gpt2_param(m, seed, std_, 0.0f, 2, d0, d1, fmt, i)
    if (!(m->wte = P2(std, V, C, "wte.weight", 0)) || !(m->wpe = P2(std, P, C, "wpe.weight", 0)))
        return LATHE_ENOMEM;
    for (int i = 0; i < (int)m->L; i++) {
        struct gpt2_block *b = &m->blocks[i];
        size_t first = m->nparams;
        lathe_tensor *aw, *ab, *pw, *pb, *fw, *fb, *mw, *mb;
        if (!(b->ln1_w = P1(0.0, 1.0f, C, "h.%d.ln_1.weight", i)) ||
            !(b->ln1_b = P1(0.0, 0.0f, C, "h.%d.ln_1.bias", i)) ||
            !(aw = P2(std, 3 * C, C, "h.%d.attn.c_attn.weight", i)) ||
            !(ab = P1(0.0, 0.0f, 3 * C, "h.%d.attn.c_attn.bias", i)) ||
            !(pw = P2(res_std, C, C, "h.%d.attn.c_proj.weight", i)) ||
            !(pb = P1(0.0, 0.0f, C, "h.%d.attn.c_proj.bias", i)) ||
            !(b->ln2_w = P1(0.0, 1.0f, C, "h.%d.ln_2.weight", i)) ||
            !(b->ln2_b = P1(0.0, 0.0f, C, "h.%d.ln_2.bias", i)) ||
            !(fw = P2(std, 4 * C, C, "h.%d.mlp.c_fc.weight", i)) ||
            !(fb = P1(0.0, 0.0f, 4 * C, "h.%d.mlp.c_fc.bias", i)) ||
            !(mw = P2(res_std, C, 4 * C, "h.%d.mlp.c_proj.weight", i)) ||
            !(mb = P1(0.0, 0.0f, C, "h.%d.mlp.c_proj.bias", i)))
            return LATHE_ENOMEM;
        gpt2_linear(m, &b->c_attn, "h.%d.attn.c_attn", i, aw, ab);
        gpt2_linear(m, &b->attn_proj, "h.%d.attn.c_proj", i, pw, pb);
        gpt2_linear(m, &b->c_fc, "h.%d.mlp.c_fc", i, fw, fb);
        gpt2_linear(m, &b->mlp_proj, "h.%d.mlp.c_proj", i, mw, mb);
        /* the block's parameters are the ones just made */
        snprintf(m->seg_names[i], sizeof m->seg_names[i], "h.%d", i);
        m->segs[i] = (struct lathe_segment){.name = m->seg_names[i], .params = m->params + first,
                                            .nparams = m->nparams - first};
        m->seg_list[i] = &m->segs[i];
    }
    if (!(m->lnf_w = P1(0.0, 1.0f, C, "ln_f.weight", 0)) ||
        !(m->lnf_b = P1(0.0, 0.0f, C, "ln_f.bias", 0)))
        return LATHE_ENOMEM;
    lathe_tensor *head_w = m->wte;
    if (!tie && !(head_w = P2(std, V, C, "lm_head.weight", 0)))
        return LATHE_ENOMEM;
#undef P1
#undef P2
    gpt2_linear(m, &m->head, "lm_head", 0, head_w, NULL);
    return LATHE_OK;
}

static int gpt2_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    *self = NULL;
    struct gpt2 *m = calloc(1, sizeof *m);
    if (!m)
        return lathe_error(LATHE_ENOMEM, "gpt2: out of memory");
    double std;
    int tie;
    int rc = gpt2_read_config(m, cfg, env, &std, &tie);
    m->tied = tie;
    if (!rc)
        rc = gpt2_build(m, env, std, tie);
    if (!rc && m->dir)
        rc = gpt2_load(m);
    if (rc) {
        gpt2_destroy(m);
        return rc;
    }
    *self = m;
    return LATHE_OK;
}

static int gpt2_info(void *self, struct lathe_model_info *info)
{
    const struct gpt2 *m = self;
    info->vocab_size = m->V;
    info->max_seq_len = m->P;
    return LATHE_OK;
}

static int gpt2_params(void *self, lathe_tensor *const **params, size_t *n)
{
    struct gpt2 *m = self;
    *params = m->params;
    *n = m->nparams;
    return LATHE_OK;
}

static int gpt2_linears(void *self, struct lathe_linear *const **out, size_t *n)
{
    struct gpt2 *m = self;
    *out = m->linears;
    *n = m->nlinears;
    return LATHE_OK;
}

/* start..start+T-1 as an I32 [T] tensor in the current scope. */
static lathe_tensor *gpt2_positions(int64_t start, int64_t T)
{
    lathe_tensor *pos = lathe_tensor_new1(LATHE_I32, T);
    int32_t *host = malloc((size_t)T * sizeof *host);
    if (!pos || !host) {
        free(host);
        if (pos)
            lathe_error(LATHE_ENOMEM, "gpt2: out of memory for %lld positions", (long long)T);
        return NULL;
    }
    for (int64_t t = 0; t < T; t++)
        host[t] = (int32_t)(start + t);
    int rc = lathe_backend()->copy(pos->data, host, (size_t)T * sizeof *host, 1);
    free(host);
    if (rc) {
        lathe_error_prefix(LATHE_ERR, "gpt2: copying positions to the device");
        return NULL;
    }
    return pos;
}

/* x [B,T,C] -> x + proj(sdpa(q, k, v)); with a cache, k and v are appended
 * to layer l's cache and q attends over all of it. */
static lathe_tensor *gpt2_attention(struct gpt2 *m, struct gpt2_block *b, lathe_tensor *x,
                                    lathe_tensor *segments, int train, int64_t B, int64_t T,
                                    struct lathe_kv_cache *c, int64_t l)
{
    const int64_t C = m->C, H = m->H, D = C / H;
    lathe_tensor *h = lathe_layernorm(x, b->ln1_w, b->ln1_b, m->eps);
    lathe_tensor *qkv = lathe_linear_forward(&b->c_attn, h); /* [B,T,3C] */
    if (!qkv)
        return NULL;
    lathe_tensor *parts[3];
    const int64_t sizes[3] = {C, C, C};
    if (lathe_split(qkv, 2, sizes, 3, parts))
        return NULL;
    const int64_t heads[4] = {B, T, H, D};
    lathe_tensor *q = lathe_reshape(parts[0], 4, heads);
    lathe_tensor *k = lathe_reshape(parts[1], 4, heads);
    lathe_tensor *v = lathe_reshape(parts[2], 4, heads);
    lathe_tensor *y;
    if (c) {
        y = lathe_kv_cache_attend(c, l, q, k, v);
    } else {
        y = lathe_sdpa(q, k, v, segments, 0.0f); /* [B,T,H,D] */
    }
    const int64_t flat[3] = {B, T, C};
    y = lathe_linear_forward(&b->attn_proj, lathe_reshape(y, 3, flat));
    return lathe_add(x, lathe_dropout(y, m->dropout, train));
}

/* x [B,T,C] -> x + mlp_proj(gelu(c_fc(ln_2(x)))) */
static lathe_tensor *gpt2_mlp(struct gpt2 *m, struct gpt2_block *b, lathe_tensor *x, int train)
{
    lathe_tensor *h = lathe_layernorm(x, b->ln2_w, b->ln2_b, m->eps);
    h = lathe_gelu(lathe_linear_forward(&b->c_fc, h)); /* [B,T,4C] */
    h = lathe_linear_forward(&b->mlp_proj, h);        /* [B,T,C] */
    return lathe_add(x, lathe_dropout(h, m->dropout, train));
}

/* What one block needs besides its input (a segment's context). */
struct gpt2_ctx {
    struct gpt2 *m;
    lathe_tensor *segments;
    int train;
    int64_t B, T, l;
    struct lathe_kv_cache *c; /* generation only */
};

/* One block: x [B,T,C] -> [B,T,C]. */
static lathe_tensor *gpt2_block_fn(const void *ctx, lathe_tensor *x)
{
    const struct gpt2_ctx *b = ctx;
    struct gpt2_block *blk = &b->m->blocks[b->l];
    x = gpt2_attention(b->m, blk, x, b->segments, b->train, b->B, b->T, b->c, b->l);
    return gpt2_mlp(b->m, blk, x, b->train);
}

static lathe_tensor *gpt2_run(struct gpt2 *m, const struct lathe_batch *batch, int train,
                              struct lathe_kv_cache *c)
{
    lathe_tensor *ids = batch->input_ids; /* [B,T] */
    char s[64];
    if (!ids || ids->ndim != 2 || ids->dtype != LATHE_I32) {
        lathe_error(LATHE_EINVAL, "gpt2: input_ids must be I32 [B, T] (got %s)",
                    ids ? lathe_tensor_shape_str(ids, s, sizeof s) : "none");
        return NULL;
    }
    const int64_t B = ids->shape[0], T = ids->shape[1];
    if (T > m->P) {
        lathe_error(LATHE_EINVAL, "gpt2: sequence length T = %lld exceeds the model's context "
                    "%lld; shorten [data] seq_len or raise [model] context",
                    (long long)T, (long long)m->P);
        return NULL;
    }
    lathe_tensor *pos = batch->positions ? batch->positions : gpt2_positions(c ? c->len : 0, T);
    if (c && lathe_kv_cache_begin(c, batch) != LATHE_OK)
        return NULL;
    /* x [B,T,C] = wte[ids] + wpe[pos] (pos [T] broadcasts over B) */
    lathe_tensor *x = lathe_add(lathe_embedding(m->wte, ids), lathe_embedding(m->wpe, pos));
    x = lathe_dropout(x, m->dropout, train);
    struct gpt2_ctx bc = {.m = m, .segments = batch->segments, .train = train, .B = B, .T = T, .c = c};
    for (bc.l = 0; bc.l < m->L && x; bc.l++)
        x = lathe_segment_run(&m->segs[bc.l], gpt2_block_fn, &bc, sizeof bc, x);
    x = lathe_layernorm(x, m->lnf_w, m->lnf_b, m->eps);
    lathe_tensor *logits = lathe_linear_forward(&m->head, x); /* [B,T,V] */
    if (!logits)
        lathe_error_prefix(LATHE_EINVAL, "gpt2 forward");
    return logits;
}

static lathe_tensor *gpt2_forward(void *self, const struct lathe_batch *batch, int train)
{
    return gpt2_run(self, batch, train, NULL);
}

/* ---- generation cache (ABI 1.1) ---- */

static void gpt2_cache_free(void *self, void *cache)
{
    (void)self;
    lathe_kv_cache_free(cache);
}

static int gpt2_cache_new(void *self, int64_t B, int64_t max_len, void **cache)
{
    struct gpt2 *m = self;
    *cache = NULL;
    if (max_len > m->P)
        return lathe_error(LATHE_EINVAL, "gpt2: a cache of max_len %lld exceeds the context %lld", (long long)max_len,
                           (long long)m->P);
    return lathe_kv_cache_new(m->L, B, max_len, m->H, m->C / m->H, (struct lathe_kv_cache **)cache);
}

static lathe_tensor *gpt2_forward_cached(void *self, void *cache, const struct lathe_batch *batch)
{
    struct lathe_kv_cache *c = cache;
    if (!c) {
        lathe_error(LATHE_EINVAL, "gpt2: forward_cached needs a cache from cache_new");
        return NULL;
    }
    lathe_no_grad_begin();
    lathe_tensor *logits = gpt2_run(self, batch, 0, c);
    lathe_no_grad_end();
    if (logits)
        lathe_kv_cache_commit(c, batch->input_ids->shape[1]);
    return logits;
}

/* ---- save: the Hugging Face layout ---- */

/* config.json of a model made from INI keys (transformers' GPT2Config). */
static json_t *gpt2_new_config(const struct gpt2 *m)
{
    return json_pack("{s:[s],s:s,s:I,s:I,s:I,s:I,s:I,s:f,s:s,s:n,s:b,s:f,s:f,s:f}", "architectures",
                     "GPT2LMHeadModel", "model_type", "gpt2", "n_embd", (json_int_t)m->C, "n_head",
                     (json_int_t)m->H, "n_layer", (json_int_t)m->L, "n_positions", (json_int_t)m->P, "vocab_size",
                     (json_int_t)m->V, "layer_norm_epsilon", (double)m->eps, "activation_function", "gelu_new",
                     "n_inner", "tie_word_embeddings", m->tied, "resid_pdrop", (double)m->dropout, "embd_pdrop",
                     (double)m->dropout, "attn_pdrop", (double)m->dropout);
}

static int gpt2_save(void *self, const char *dir)
{
    struct gpt2 *m = self;
    char **names = calloc(m->nparams, sizeof *names);
    uint8_t *tr = calloc(m->nparams, 1);
    int rc = names && tr ? LATHE_OK : lathe_error(LATHE_ENOMEM, "gpt2: out of memory");
    /* Tied, the body is written without "transformer." as the published
     * gpt2 checkpoint is; untied it needs the prefix, because transformers
     * refuses a prefix-less body next to a separate lm_head.weight. */
    const char *prefix = m->tied ? "" : "transformer.";
    for (size_t i = 0; i < m->nparams && !rc; i++) {
        const char *name = m->params[i]->name;
        size_t n = strlen(prefix) + strlen(name) + 1;
        if (!(names[i] = malloc(n)))
            rc = lathe_error(LATHE_ENOMEM, "gpt2: out of memory");
        else
            snprintf(names[i], n, "%s%s", strcmp(name, "lm_head.weight") == 0 ? "" : prefix, name);
        tr[i] = (uint8_t)gpt2_is_conv1d(name);
    }
    if (!rc)
        rc = lathe_weights_write(dir, (const char *const *)names, m->params, tr, m->nparams, m->save_dtype,
                                 m->max_shard);
    for (size_t i = 0; names && i < m->nparams; i++)
        free(names[i]);
    free(names);
    free(tr);
    if (rc)
        return rc;
    json_t *cfg = m->config ? json_deep_copy(m->config) : gpt2_new_config(m);
    const char *dt = m->save_dtype == LATHE_BF16 ? "bfloat16" : m->save_dtype == LATHE_F16 ? "float16" : "float32";
    char path[4200], from[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    snprintf(from, sizeof from, "%s/config.json.tmp", dir);
    if (!cfg || json_object_set_new(cfg, "torch_dtype", json_string(dt)) ||
        (json_object_get(cfg, "dtype") && json_object_set_new(cfg, "dtype", json_string(dt))))
        rc = lathe_error(LATHE_ENOMEM, "gpt2: out of memory");
    else if (json_dump_file(cfg, from, JSON_INDENT(2) | JSON_SORT_KEYS) != 0 || rename(from, path) != 0)
        rc = lathe_error(LATHE_EIO, "cannot write %s: %s", path, strerror(errno));
    json_decref(cfg);
    /* the tokenizer travels with the model, so the directory is complete */
    if (!rc && m->dir)
        rc = lathe_weights_copy_side_files(m->dir, dir);
    return rc;
}

static int gpt2_segments(void *self, const struct lathe_segment *const **segs, size_t *n)
{
    struct gpt2 *m = self;
    *segs = m->seg_list;
    *n = (size_t)m->L;
    return LATHE_OK;
}

static const struct lathe_model_ops gpt2_ops = {
    .size = sizeof(struct lathe_model_ops),
    .create = gpt2_create,
    .destroy = gpt2_destroy,
    .info = gpt2_info,
    .params = gpt2_params,
    .forward = gpt2_forward,
    .linears = gpt2_linears,
    .save = gpt2_save,
    .cache_new = gpt2_cache_new,
    .cache_free = gpt2_cache_free,
    .forward_cached = gpt2_forward_cached,
    .segments = gpt2_segments,
};

static const struct lathe_component gpt2_components[] = {
    {.kind = LATHE_KIND_MODEL, .name = "gpt2", .ops = &gpt2_ops},
    {0},
};

LATHE_PLUGIN_DEFINE(gpt2, .version = "0.1.0",
                    .description = "GPT-2 decoder (Radford et al. 2019), configured from INI",
                    .components = gpt2_components)
