/* plugins/llama/llama.c — Hugging Face Llama-family decoders (component
 * "llama"): LlamaForCausalLM, Qwen2ForCausalLM and MistralForCausalLM loaded
 * from a model directory (config.json + safetensors) and saved back in the
 * same layout.
 *
 * The forward follows transformers' modeling_llama.py (formats.md §3.3):
 * x = embed_tokens[ids]; per layer x += o_proj(attn(rope(q), rope(k), v))
 * on input_layernorm(x), then x += down_proj(silu(gate_proj(h)) * up_proj(h))
 * on post_attention_layernorm(x); logits = lm_head(norm(x)), lm_head tied to
 * embed_tokens when tie_word_embeddings. RMSNorm, rotate-half RoPE and
 * grouped-query attention are the core ops. Qwen2 differs only in its q/k/v
 * biases; Mistral in its optional sliding window, which is honoured by
 * refusing sequences longer than the window (inside it attention is plain
 * causal).
 *
 * Parameters carry the Hugging Face names ("model.layers.0.self_attn.q_proj.
 * weight"), in HF's named_parameters order, so checkpoints, exports and PEFT
 * adapter names line up without a mapping.
 *
 * Shape legend: B batch, T time, C hidden, H query heads, Hkv key/value
 * heads, D head size, I intermediate, V vocabulary.
 *
 * [model] keys: pretrained (the model directory, relative to the INI file),
 * save_dtype (float32 | bfloat16 | float16), max_shard_size (bytes, "5G").
 */
#include <lathe/lathe.h>

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LLAMA_NAME_LEN 64 /* "model.layers.1234.self_attn.q_proj" fits */

enum { ARCH_LLAMA, ARCH_QWEN2, ARCH_MISTRAL };
static const char *const llama_archs[] = {"LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"};

enum { ROPE_DEFAULT, ROPE_LINEAR, ROPE_LLAMA3 };

struct llama_layer {
    lathe_tensor *ln1, *ln2; /* input_layernorm, post_attention_layernorm [C] */
    struct lathe_linear q, k, v, o, gate, up, down;
};

struct llama {
    int arch;
    int64_t V, C, I, L, H, Hkv, D, P, window; /* window 0: none */
    float eps;
    float *inv_freq;              /* [D/2], scalings applied */
    lathe_tensor *embed, *norm;   /* [V, C], [C] */
    struct llama_layer *layers;   /* [L] */
    struct lathe_linear head;     /* lm_head (weight: embed when tied) */
    struct lathe_segment *segs;   /* [L]: one per layer (lathe/segment.h) */
    const struct lathe_segment **seg_list;
    char (*seg_names)[32];
    int tied;
    lathe_tensor **params;
    size_t nparams;
    struct lathe_linear **linears;
    size_t nlinears;
    char (*names)[LLAMA_NAME_LEN];
    json_t *config;               /* config.json as read (written back on save) */
    char *dir;                    /* the pretrained directory */
    enum lathe_dtype save_dtype;
    uint64_t max_shard;
};

static void llama_destroy(void *self)
{
    struct llama *m = self;
    if (!m)
        return;
    for (size_t i = 0; i < m->nparams; i++)
        lathe_tensor_free(m->params[i]);
    free(m->params);
    free(m->linears);
    free(m->names);
    free(m->layers);
    free(m->segs);
    free(m->seg_list);
    free(m->seg_names);
    free(m->inv_freq);
    json_decref(m->config);
    free(m->dir);
    free(m);
}

/* ---- config.json --------------------------------------------------------- */

struct jcfg {
    json_t *root;
    const char *file; /* for messages */
};

/* An integer field; missing or null gives def, or an error when def < 0
 * means required. */
static int j_int(const struct jcfg *j, json_t *obj, const char *key, int64_t def, int64_t min, int64_t *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (def < 0)
            return lathe_error(LATHE_EINVAL, "%s: key '%s' is missing; it is required", j->file, key);
        *out = def;
        return LATHE_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) < min)
        return lathe_error(LATHE_EINVAL, "%s: key '%s' must be an integer >= %lld", j->file, key, (long long)min);
    *out = json_integer_value(v);
    return LATHE_OK;
}

static int j_num(const struct jcfg *j, json_t *obj, const char *key, double def, int required, double *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (required)
            return lathe_error(LATHE_EINVAL, "%s: key '%s' is missing; it is required", j->file, key);
        *out = def;
        return LATHE_OK;
    }
    if (!json_is_number(v))
        return lathe_error(LATHE_EINVAL, "%s: key '%s' must be a number", j->file, key);
    *out = json_number_value(v);
    return LATHE_OK;
}

static int j_bool(const struct jcfg *j, json_t *obj, const char *key, int def, int *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return LATHE_OK;
    }
    if (!json_is_boolean(v))
        return lathe_error(LATHE_EINVAL, "%s: key '%s' must be true or false", j->file, key);
    *out = json_is_true(v);
    return LATHE_OK;
}

/* The RoPE frequencies, inv_freq[i] = theta^(-2i/D), with the scaling of
 * transformers' modeling_rope_utils.py (formats.md §3.1). Three config forms:
 * top-level rope_theta with rope_scaling {rope_type | type, factor, ...}, or
 * transformers v5's rope_parameters {rope_type, rope_theta, ...}. */
static int llama_rope(struct llama *m, const struct jcfg *j)
{
    json_t *rp = json_object_get(j->root, "rope_parameters");
    json_t *rs = json_object_get(j->root, "rope_scaling");
    json_t *src = NULL;
    const char *srckey = "rope_scaling";
    double theta;
    int rc = j_num(j, j->root, "rope_theta", 10000.0, 0, &theta);
    if (rc)
        return rc;
    if (rp && !json_is_null(rp)) {
        if (!json_is_object(rp) || !json_object_get(rp, "rope_type"))
            return lathe_error(LATHE_EUNSUPPORTED, "%s: key 'rope_parameters' must be one object with "
                               "a rope_type (per-layer-type RoPE is not supported)", j->file);
        src = rp;
        srckey = "rope_parameters";
        if ((rc = j_num(j, rp, "rope_theta", theta, 0, &theta)))
            return rc;
    } else if (rs && !json_is_null(rs)) {
        if (!json_is_object(rs))
            return lathe_error(LATHE_EINVAL, "%s: key 'rope_scaling' must be an object or null", j->file);
        src = rs;
    }
    if (!(theta > 0.0))
        return lathe_error(LATHE_EINVAL, "%s: key 'rope_theta' must be > 0 (got %g)", j->file, theta);
    const char *type = "default";
    if (src) {
        json_t *t = json_object_get(src, "rope_type");
        if (!t)
            t = json_object_get(src, "type"); /* transformers before 4.43 */
        if (!json_is_string(t))
            return lathe_error(LATHE_EINVAL, "%s: key '%s.rope_type' must be a string", j->file, srckey);
        type = json_string_value(t);
    }
    int kind;
    if (strcmp(type, "default") == 0)
        kind = ROPE_DEFAULT;
    else if (strcmp(type, "linear") == 0)
        kind = ROPE_LINEAR;
    else if (strcmp(type, "llama3") == 0)
        kind = ROPE_LLAMA3;
    else
        return lathe_error(LATHE_EUNSUPPORTED, "%s: key '%s.rope_type' = '%s' is not supported (supported: "
                           "default, linear, llama3)", j->file, srckey, type);
    double prf = 1.0;
    if ((rc = j_num(j, j->root, "partial_rotary_factor", 1.0, 0, &prf)) ||
        (src && (rc = j_num(j, src, "partial_rotary_factor", prf, 0, &prf))))
        return rc;
    if (prf != 1.0)
        return lathe_error(LATHE_EUNSUPPORTED, "%s: key 'partial_rotary_factor' = %g is not supported (only 1)",
                           j->file, prf);

    const int64_t half = m->D / 2;
    if (!(m->inv_freq = malloc((size_t)half * sizeof *m->inv_freq)))
        return lathe_error(LATHE_ENOMEM, "llama: out of memory");
    /* in f32 like torch: base ** (arange(0, D, 2).float() / D), then 1 / that */
    for (int64_t i = 0; i < half; i++)
        m->inv_freq[i] = 1.0f / powf((float)theta, (float)(2 * i) / (float)m->D);
    if (kind == ROPE_DEFAULT)
        return LATHE_OK;
    double factor;
    if ((rc = j_num(j, src, "factor", 0, 1, &factor)))
        return rc;
    if (!(factor >= 1.0))
        return lathe_error(LATHE_EINVAL, "%s: key '%s.factor' must be >= 1 (got %g)", j->file, srckey, factor);
    if (kind == ROPE_LINEAR) { /* _compute_linear_scaling_rope_parameters */
        for (int64_t i = 0; i < half; i++)
            m->inv_freq[i] /= (float)factor;
        return LATHE_OK;
    }
    /* _compute_llama3_parameters: keep high frequencies, divide low ones by
     * factor, blend in between */
    double low, high, orig;
    if ((rc = j_num(j, src, "low_freq_factor", 0, 1, &low)) || (rc = j_num(j, src, "high_freq_factor", 0, 1, &high)) ||
        (rc = j_num(j, src, "original_max_position_embeddings", 0, 1, &orig)))
        return rc;
    if (!(high > low) || !(low > 0) || !(orig > 0))
        return lathe_error(LATHE_EINVAL, "%s: '%s' needs high_freq_factor > low_freq_factor > 0 and "
                           "original_max_position_embeddings > 0", j->file, srckey);
    const float low_wl = (float)(orig / low), high_wl = (float)(orig / high);
    for (int64_t i = 0; i < half; i++) {
        float f = m->inv_freq[i], wl = (float)(2.0 * 3.14159265358979323846) / f;
        if (wl < high_wl)
            continue;
        if (wl > low_wl) {
            m->inv_freq[i] = f / (float)factor;
            continue;
        }
        float s = ((float)orig / wl - (float)low) / (float)(high - low);
        m->inv_freq[i] = (1.0f - s) * f / (float)factor + s * f;
    }
    return LATHE_OK;
}

static int llama_config(struct llama *m, const struct jcfg *j)
{
    json_t *root = j->root, *arch = json_object_get(root, "architectures");
    const char *name = json_is_array(arch) && json_array_size(arch) == 1 ? json_string_value(json_array_get(arch, 0))
                                                                            : NULL;
    if (!name)
        return lathe_error(LATHE_EINVAL, "%s: key 'architectures' must list one architecture (LlamaForCausalLM, "
                           "Qwen2ForCausalLM or MistralForCausalLM)", j->file);
    m->arch = -1;
    for (int a = 0; a < 3; a++)
        if (strcmp(name, llama_archs[a]) == 0)
            m->arch = a;
    if (m->arch < 0)
        return lathe_error(LATHE_EUNSUPPORTED, "%s: architecture '%s' is not supported by the llama plugin "
                           "(supported: LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM)", j->file, name);
    if (json_object_get(root, "quantization_config"))
        return lathe_error(LATHE_EUNSUPPORTED, "%s: key 'quantization_config': quantized checkpoints are not "
                           "supported; use a bf16/f16/f32 one", j->file);
    json_t *act = json_object_get(root, "hidden_act");
    if (act && !(json_is_string(act) && strcmp(json_string_value(act), "silu") == 0))
        return lathe_error(LATHE_EUNSUPPORTED, "%s: key 'hidden_act' must be \"silu\"", j->file);
    for (const char *const *k = (const char *const[]){"torch_dtype", "dtype", NULL}; *k; k++) {
        json_t *d = json_object_get(root, *k);
        const char *s = json_string_value(d);
        if (d && !json_is_null(d) &&
            !(s && (!strcmp(s, "float32") || !strcmp(s, "bfloat16") || !strcmp(s, "float16") || !strcmp(s, "auto"))))
            return lathe_error(LATHE_EUNSUPPORTED, "%s: key '%s' must be float32, bfloat16 or float16", j->file, *k);
    }
    int rc;
    int64_t hd;
    if ((rc = j_int(j, root, "vocab_size", -1, 1, &m->V)) || (rc = j_int(j, root, "hidden_size", -1, 1, &m->C)) ||
        (rc = j_int(j, root, "intermediate_size", -1, 1, &m->I)) ||
        (rc = j_int(j, root, "num_hidden_layers", -1, 1, &m->L)) ||
        (rc = j_int(j, root, "num_attention_heads", -1, 1, &m->H)) ||
        (rc = j_int(j, root, "num_key_value_heads", m->H, 1, &m->Hkv)) ||
        (rc = j_int(j, root, "head_dim", 0, 0, &hd)) ||
        (rc = j_int(j, root, "max_position_embeddings", 0, 0, &m->P)))
        return rc;
    if (m->V > INT32_MAX || m->L > 100000)
        return lathe_error(LATHE_EINVAL, "%s: vocab_size or num_hidden_layers is out of range", j->file);
    m->D = hd > 0 ? hd : m->C / m->H;
    if (hd == 0 && m->C % m->H != 0)
        return lathe_error(LATHE_EINVAL, "%s: hidden_size %lld is not a multiple of num_attention_heads %lld and "
                           "no head_dim is given", j->file, (long long)m->C, (long long)m->H);
    if (m->D % 2 != 0)
        return lathe_error(LATHE_EINVAL, "%s: head size %lld must be even for RoPE", j->file, (long long)m->D);
    if (m->H % m->Hkv != 0)
        return lathe_error(LATHE_EINVAL, "%s: num_key_value_heads %lld must divide num_attention_heads %lld",
                           j->file, (long long)m->Hkv, (long long)m->H);
    double eps;
    if ((rc = j_num(j, root, "rms_norm_eps", 1e-6, 0, &eps)) ||
        (rc = j_bool(j, root, "tie_word_embeddings", 0, &m->tied)))
        return rc;
    if (!(eps > 0.0))
        return lathe_error(LATHE_EINVAL, "%s: key 'rms_norm_eps' must be > 0", j->file);
    m->eps = (float)eps;
    if (m->arch == ARCH_QWEN2) {
        int sw;
        if ((rc = j_bool(j, root, "use_sliding_window", 0, &sw)))
            return rc;
        if (sw)
            return lathe_error(LATHE_EUNSUPPORTED, "%s: key 'use_sliding_window' = true is not supported; set it "
                               "to false (the window is then ignored, as in transformers)", j->file);
    }
    if (m->arch == ARCH_MISTRAL && (rc = j_int(j, root, "sliding_window", 0, 1, &m->window)))
        return rc;
    return llama_rope(m, j);
}

/* ---- building and loading ------------------------------------------------ */

static lathe_tensor *llama_param(struct llama *m, const char *name, int ndim, int64_t d0, int64_t d1)
{
    int64_t shape[2] = {d0, d1};
    lathe_tensor *t = lathe_param_new(name, ndim, shape);
    if (!t) {
        lathe_error_prefix(LATHE_ENOMEM, "llama: parameter '%s'", name);
        return NULL;
    }
    m->params[m->nparams++] = t;
    return t;
}

/* A linear [out, in] with an optional bias, named "<path>.weight/.bias". */
static int llama_linear(struct llama *m, struct lathe_linear *l, const char *path, int64_t out, int64_t in,
                        int bias)
{
    char *name = m->names[m->nlinears], buf[LLAMA_NAME_LEN + 8];
    snprintf(name, LLAMA_NAME_LEN, "%s", path);
    l->name = name;
    l->hook = NULL;
    l->hook_self = NULL;
    l->bias = NULL;
    snprintf(buf, sizeof buf, "%s.weight", path);
    if (!(l->weight = llama_param(m, buf, 2, out, in)))
        return LATHE_ENOMEM;
    snprintf(buf, sizeof buf, "%s.bias", path);
    if (bias && !(l->bias = llama_param(m, buf, 1, out, 0)))
        return LATHE_ENOMEM;
    m->linears[m->nlinears++] = l;
    return LATHE_OK;
}

static int llama_build(struct llama *m, int qkv_bias, int o_bias, int mlp_bias)
{
    const int64_t C = m->C, D = m->D, I = m->I;
    size_t maxp = 2 + (size_t)m->L * 16 + 1, maxl = (size_t)m->L * 7 + 1;
    m->params = calloc(maxp, sizeof *m->params);
    m->linears = calloc(maxl, sizeof *m->linears);
    m->names = calloc(maxl, sizeof *m->names);
    m->layers = calloc((size_t)m->L, sizeof *m->layers);
    m->segs = calloc((size_t)m->L, sizeof *m->segs);
    m->seg_list = calloc((size_t)m->L, sizeof *m->seg_list);
    m->seg_names = calloc((size_t)m->L, sizeof *m->seg_names);
    if (!m->params || !m->linears || !m->names || !m->layers || !m->segs || !m->seg_list || !m->seg_names)
        return lathe_error(LATHE_ENOMEM, "llama: out of memory");
    if (!(m->embed = llama_param(m, "model.embed_tokens.weight", 2, m->V, C)))
        return LATHE_ENOMEM;
    char p[LATHE_NAME_MAX];
    int rc = LATHE_OK;
    for (int64_t i = 0; i < m->L && !rc; i++) {
        struct llama_layer *y = &m->layers[i];
        size_t first = m->nparams;
        /* HF's named_parameters order: self_attn, mlp, then the norms */
#define LIN(field, path, out, in, b)                                                 \
    if (!rc) {                                                                       \
        snprintf(p, sizeof p, "model.layers.%lld.%s", (long long)i, path);           \
        rc = llama_linear(m, &y->field, p, out, in, b);                              \
    }
        LIN(q, "self_attn.q_proj", m->H * D, C, qkv_bias)
        LIN(k, "self_attn.k_proj", m->Hkv * D, C, qkv_bias)
        LIN(v, "self_attn.v_proj", m->Hkv * D, C, qkv_bias)
        LIN(o, "self_attn.o_proj", C, m->H * D, o_bias)
        LIN(gate, "mlp.gate_proj", I, C, mlp_bias)
        LIN(up, "mlp.up_proj", I, C, mlp_bias)
        LIN(down, "mlp.down_proj", C, I, mlp_bias)
#undef LIN
        if (rc)
            break;
        snprintf(p, sizeof p, "model.layers.%lld.input_layernorm.weight", (long long)i);
        if (!(y->ln1 = llama_param(m, p, 1, C, 0)))
            return LATHE_ENOMEM;
        snprintf(p, sizeof p, "model.layers.%lld.post_attention_layernorm.weight", (long long)i);
        if (!(y->ln2 = llama_param(m, p, 1, C, 0)))
            return LATHE_ENOMEM;
        /* the layer's parameters are the ones just appended */
        snprintf(m->seg_names[i], sizeof m->seg_names[i], "layers.%lld", (long long)i);
        m->segs[i] = (struct lathe_segment){.name = m->seg_names[i], .params = m->params + first,
                                            .nparams = m->nparams - first};
        m->seg_list[i] = &m->segs[i];
    }
    if (rc)
        return rc;
    if (!(m->norm = llama_param(m, "model.norm.weight", 1, C, 0)))
        return LATHE_ENOMEM;
    lathe_tensor *hw = m->embed;
    if (!m->tied && !(hw = llama_param(m, "lm_head.weight", 2, m->V, C)))
        return LATHE_ENOMEM;
    m->head = (struct lathe_linear){.name = "lm_head", .weight = hw};
    m->linears[m->nlinears++] = &m->head;
    return LATHE_OK;
}

static int llama_load(struct llama *m)
{
    lathe_weights *w;
    int rc = lathe_weights_open(&w, m->dir);
    if (rc)
        return rc;
    for (size_t i = 0; i < m->nparams && !rc; i++)
        rc = lathe_weights_read(w, m->params[i]->name, m->params[i]);
    if (!rc) {
        /* old checkpoints keep the RoPE table as a buffer; a tied model may
         * still carry the head, which transformers ignores too */
        const char *ignore[] = {"*.rotary_emb.inv_freq", m->tied ? "lm_head.weight" : NULL, NULL};
        const char *extra = lathe_weights_unused(w, ignore);
        if (extra)
            rc = lathe_error(LATHE_EINVAL, "%s: tensor '%s' is not part of a %s with this config.json; "
                             "the checkpoint and config do not match", m->dir, extra, llama_archs[m->arch]);
    }
    lathe_weights_close(w);
    return rc;
}

static int llama_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    *self = NULL;
    static const char *const dtypes[] = {"float32", "bfloat16", "float16", NULL};
    static const enum lathe_dtype dtype_of[] = {LATHE_F32, LATHE_BF16, LATHE_F16};
    const char *pre;
    int dt, rc;
    uint64_t shard;
    if ((rc = lathe_cfg_path(cfg, "pretrained", NULL, &pre)) ||
        (rc = lathe_cfg_choice(cfg, "save_dtype", "float32", dtypes, &dt)) ||
        (rc = lathe_cfg_bytes(cfg, "max_shard_size", "5G", &shard)))
        return rc;
    struct llama *m = calloc(1, sizeof *m);
    if (!m || !(m->dir = strdup(pre))) {
        free(m);
        return lathe_error(LATHE_ENOMEM, "llama: out of memory");
    }
    m->save_dtype = dtype_of[dt];
    m->max_shard = shard;
    char file[4096];
    snprintf(file, sizeof file, "%s/config.json", m->dir);
    json_error_t err;
    struct jcfg j = {.file = file};
    if (!(m->config = json_load_file(file, 0, &err))) {
        rc = lathe_error(LATHE_EINVAL, "%s:%d: %s; check [model] pretrained (relative paths start at the INI "
                         "file's directory)", file, err.line, err.text);
    } else if (!json_is_object(m->config)) {
        rc = lathe_error(LATHE_EINVAL, "%s: not a JSON object", file);
    } else {
        j.root = m->config;
        rc = llama_config(m, &j);
    }
    int ab = 0, mb = 0;
    if (!rc && m->arch == ARCH_LLAMA)
        rc = j_bool(&j, m->config, "attention_bias", 0, &ab);
    if (!rc && m->arch == ARCH_LLAMA)
        rc = j_bool(&j, m->config, "mlp_bias", 0, &mb);
    if (!rc)
        rc = llama_build(m, ab || m->arch == ARCH_QWEN2, ab, mb);
    if (!rc)
        rc = llama_load(m);
    if (rc) {
        llama_destroy(m);
        return rc;
    }
    *self = m;
    return LATHE_OK;
}

static int llama_info(void *self, struct lathe_model_info *info)
{
    const struct llama *m = self;
    info->vocab_size = m->V;
    info->max_seq_len = m->P;
    if (m->window > 0 && (info->max_seq_len == 0 || m->window < info->max_seq_len))
        info->max_seq_len = m->window;
    return LATHE_OK;
}

static int llama_params(void *self, lathe_tensor *const **params, size_t *n)
{
    struct llama *m = self;
    *params = m->params;
    *n = m->nparams;
    return LATHE_OK;
}

static int llama_linears(void *self, struct lathe_linear *const **out, size_t *n)
{
    struct llama *m = self;
    *out = m->linears;
    *n = m->nlinears;
    return LATHE_OK;
}

/* ---- forward ------------------------------------------------------------- */

/* A device tensor of n host values in the current scope. */
static lathe_tensor *llama_upload(enum lathe_dtype dt, int ndim, const int64_t *shape, const void *host)
{
    lathe_tensor *t = lathe_tensor_new(dt, ndim, shape);
    if (t && lathe_backend()->copy(t->data, host, lathe_tensor_nbytes(t), 1)) {
        lathe_error(LATHE_ERR, "llama: copying to the device failed");
        return NULL;
    }
    return t;
}

/* start, start+1, ... as I32 [T]. */
static lathe_tensor *llama_positions(int64_t start, int64_t T)
{
    int32_t *p = malloc((size_t)T * sizeof *p);
    if (!p) {
        lathe_error(LATHE_ENOMEM, "llama: out of memory");
        return NULL;
    }
    for (int64_t t = 0; t < T; t++)
        p[t] = (int32_t)(start + t);
    lathe_tensor *r = llama_upload(LATHE_I32, 1, (int64_t[]){T}, p);
    free(p);
    return r;
}

/* What one decoder layer needs besides its input (a segment's context). */
struct llama_block {
    struct llama *m;
    int64_t l;
    lathe_tensor *pos, *inv, *seg; /* positions, rope frequencies, segments */
    struct lathe_kv_cache *c;      /* generation only */
};

/* One decoder layer: x [B,T,C] -> [B,T,C]. */
static lathe_tensor *llama_block(const void *ctx, lathe_tensor *x)
{
    const struct llama_block *b = ctx;
    const struct llama *m = b->m;
    struct llama_layer *y = &m->layers[b->l];
    const int64_t B = x->shape[0], T = x->shape[1], H = m->H, Hkv = m->Hkv, D = m->D;
    const int64_t qshape[4] = {B, T, H, D}, kvshape[4] = {B, T, Hkv, D}, flat[3] = {B, T, H * D};
    lathe_tensor *h = lathe_rmsnorm(x, y->ln1, m->eps);
    lathe_tensor *q = lathe_reshape(lathe_linear_forward(&y->q, h), 4, qshape);
    lathe_tensor *k = lathe_reshape(lathe_linear_forward(&y->k, h), 4, kvshape);
    lathe_tensor *v = lathe_reshape(lathe_linear_forward(&y->v, h), 4, kvshape);
    q = lathe_rope(q, b->pos, b->inv);
    k = lathe_rope(k, b->pos, b->inv);
    lathe_tensor *a = b->c ? lathe_kv_cache_attend(b->c, b->l, q, k, v)
                           : lathe_sdpa(q, k, v, b->seg, 0.0f); /* [B,T,H,D] */
    x = lathe_add(x, lathe_linear_forward(&y->o, lathe_reshape(a, 3, flat)));
    h = lathe_rmsnorm(x, y->ln2, m->eps);
    h = lathe_swiglu(lathe_linear_forward(&y->gate, h), lathe_linear_forward(&y->up, h)); /* [B,T,I] */
    return lathe_add(x, lathe_linear_forward(&y->down, h));
}

/* logits [B, T, V] of the batch; with a cache, its tokens follow what the
 * cache holds and their keys and values are appended. */
static lathe_tensor *llama_run(struct llama *m, const struct lathe_batch *batch, struct lathe_kv_cache *c)
{
    lathe_tensor *ids = batch->input_ids;
    char s[64];
    if (!ids || ids->ndim != 2 || ids->dtype != LATHE_I32) {
        lathe_error(LATHE_EINVAL, "llama: input_ids must be I32 [B, T] (got %s)",
                    ids ? lathe_tensor_shape_str(ids, s, sizeof s) : "none");
        return NULL;
    }
    const int64_t T = ids->shape[1], D = m->D;
    const int64_t start = c ? c->len : 0;
    if (c && lathe_kv_cache_begin(c, batch) != LATHE_OK)
        return NULL;
    if (m->window > 0 && start + T > m->window) {
        lathe_error(LATHE_EUNSUPPORTED, "llama: %lld tokens exceed the sliding_window of %lld in %s/config.json; "
                    "attention beyond the window is not supported, use shorter sequences",
                    (long long)(start + T), (long long)m->window, m->dir);
        return NULL;
    }
    lathe_tensor *pos = batch->positions ? batch->positions : llama_positions(start, T);
    lathe_tensor *inv = llama_upload(LATHE_F32, 1, (int64_t[]){D / 2}, m->inv_freq);
    if (!pos || !inv)
        return NULL;
    lathe_tensor *x = lathe_embedding(m->embed, ids); /* [B,T,C] */
    struct llama_block b = {.m = m, .pos = pos, .inv = inv, .seg = batch->segments, .c = c};
    for (b.l = 0; b.l < m->L && x; b.l++)
        x = lathe_segment_run(&m->segs[b.l], llama_block, &b, sizeof b, x);
    x = lathe_rmsnorm(x, m->norm, m->eps);
    lathe_tensor *logits = lathe_linear_forward(&m->head, x); /* [B,T,V] */
    if (!logits)
        lathe_error_prefix(LATHE_EINVAL, "llama forward");
    return logits;
}

static lathe_tensor *llama_forward(void *self, const struct lathe_batch *batch, int train)
{
    (void)train; /* no dropout: the checkpoints this loads are trained without */
    return llama_run(self, batch, NULL);
}

/* ---- generation cache ---------------------------------------------------- */

static void llama_cache_free(void *self, void *cache)
{
    (void)self;
    lathe_kv_cache_free(cache);
}

static int llama_cache_new(void *self, int64_t B, int64_t max_len, void **cache)
{
    struct llama *m = self;
    *cache = NULL;
    if (m->window > 0 && max_len > m->window)
        return lathe_error(LATHE_EUNSUPPORTED, "llama: max_len %lld exceeds the sliding_window of %lld in "
                           "%s/config.json", (long long)max_len, (long long)m->window, m->dir);
    return lathe_kv_cache_new(m->L, B, max_len, m->Hkv, m->D, (struct lathe_kv_cache **)cache);
}

static lathe_tensor *llama_forward_cached(void *self, void *cache, const struct lathe_batch *batch)
{
    struct lathe_kv_cache *c = cache;
    if (!c) {
        lathe_error(LATHE_EINVAL, "llama: forward_cached needs a cache from cache_new");
        return NULL;
    }
    lathe_no_grad_begin();
    lathe_tensor *logits = llama_run(self, batch, c);
    lathe_no_grad_end();
    if (logits)
        lathe_kv_cache_commit(c, batch->input_ids->shape[1]);
    return logits;
}

/* ---- save ---------------------------------------------------------------- */

static int llama_save(void *self, const char *dir)
{
    struct llama *m = self;
    const char **names = malloc(m->nparams * sizeof *names);
    if (!names)
        return lathe_error(LATHE_ENOMEM, "llama: out of memory");
    for (size_t i = 0; i < m->nparams; i++)
        names[i] = m->params[i]->name;
    /* tied: lm_head is not a parameter of its own and is not written, as
     * transformers' save_pretrained does */
    int rc = lathe_weights_write(dir, names, m->params, NULL, m->nparams, m->save_dtype, m->max_shard);
    free(names);
    if (rc)
        return rc;
    json_t *cfg = json_deep_copy(m->config);
    const char *dt = m->save_dtype == LATHE_BF16 ? "bfloat16" : m->save_dtype == LATHE_F16 ? "float16" : "float32";
    char path[4200], from[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    snprintf(from, sizeof from, "%s/config.json.tmp", dir);
    if (!cfg || json_object_set_new(cfg, "torch_dtype", json_string(dt)) ||
        (json_object_get(cfg, "dtype") && json_object_set_new(cfg, "dtype", json_string(dt))))
        rc = lathe_error(LATHE_ENOMEM, "llama: out of memory");
    else if (json_dump_file(cfg, from, JSON_INDENT(2) | JSON_SORT_KEYS) != 0 || rename(from, path) != 0)
        rc = lathe_error(LATHE_EIO, "cannot write %s: %s", path, strerror(errno));
    json_decref(cfg);
    /* the tokenizer travels with the model, so the directory is complete */
    if (!rc && m->dir)
        rc = lathe_weights_copy_side_files(m->dir, dir);
    return rc;
}

static int llama_segments(void *self, const struct lathe_segment *const **segs, size_t *n)
{
    struct llama *m = self;
    *segs = m->seg_list;
    *n = (size_t)m->L;
    return LATHE_OK;
}

static const struct lathe_model_ops llama_ops = {
    .size = sizeof(struct lathe_model_ops),
    .create = llama_create,
    .destroy = llama_destroy,
    .info = llama_info,
    .params = llama_params,
    .forward = llama_forward,
    .linears = llama_linears,
    .save = llama_save,
    .cache_new = llama_cache_new,
    .cache_free = llama_cache_free,
    .forward_cached = llama_forward_cached,
    .segments = llama_segments,
};

static const struct lathe_component llama_components[] = {
    {.kind = LATHE_KIND_MODEL, .name = "llama", .ops = &llama_ops},
    {0},
};

LATHE_PLUGIN_DEFINE(llama, .version = "0.1.0",
                    .description = "Hugging Face Llama, Qwen2 and Mistral decoders (config.json + safetensors)",
                    .components = llama_components)
