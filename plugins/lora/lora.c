/* plugins/lora/lora.c — LoRA adapters (component peft "lora").
 *
 * Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (2021),
 * as Hugging Face PEFT implements it (src/peft/tuners/lora/layer.py,
 * formats.md §2): each targeted linear y = W x + b gains a trainable branch
 *
 *     y = W x + b + scaling · B (A dropout(x)),   A [r, in], B [out, r],
 *
 * scaling = alpha / r (alpha / sqrt(r) with use_rslora). A starts
 * Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)) as
 * nn.Linear, and B at zero, so the adapted model starts equal to the base.
 * Every model parameter is frozen except those of modules_to_save.
 *
 * Nothing here knows a model: the plugin sets the hook of the struct
 * lathe_linear layers the model exposes (model.h), so any model plugin that
 * calls lathe_linear_forward gets LoRA.
 *
 * Files are PEFT's: adapter_config.json and adapter_model.safetensors with
 * tensors named "base_model.model." + the Hugging Face module path +
 * ".lora_A.weight" (formats.md §2.3). The Hugging Face module path of a
 * linear is its name, except for the GPT-2 layout (names "h.N...."), whose
 * modules live under "transformer." and whose Conv1D layers PEFT treats as
 * fan_in_fan_out; lora_hf_path() is the one place that knows.
 *
 * [peft] keys: rank, alpha, dropout, use_rslora, target_modules,
 * modules_to_save, bias, init, base_dtype, adapter.
 */
#include <lathe/lathe.h>

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LORA_PREFIX "base_model.model."

enum lora_init { LORA_INIT_KAIMING = 0, LORA_INIT_GAUSSIAN };
enum lora_base { LORA_BASE_F32 = 0, LORA_BASE_BF16 };

struct lora;

/* One wrapped linear. */
struct lora_mod {
    struct lora *lo;
    struct lathe_linear *lin;
    char hf[LATHE_NAME_MAX];   /* Hugging Face module path */
    lathe_tensor *A;           /* [r, in] */
    lathe_tensor *B;           /* [out, r] */
};

/* A model parameter kept trainable and saved (modules_to_save). */
struct lora_saved {
    lathe_tensor *t;           /* owned by the model */
    char hf[LATHE_NAME_MAX];   /* name in the adapter file */
    int conv1d;                /* stored [in, out] in Hugging Face files */
};

struct lora {
    int64_t r;
    double alpha, dropout;
    int rslora, init, base_dtype;
    float scaling;
    uint64_t seed;
    const char *const *targets;   /* from the config (or NULL: see adapter) */
    size_t ntargets;
    int all_linear;
    const char *const *save_mods;
    size_t nsave_mods;
    const char *base_name;        /* [model] pretrained, or NULL */
    lathe_section *cfg;

    /* adapter = DIR */
    const char *adapter;
    json_t *ad_targets;           /* adapter's module paths that have lora_A */
    int targets_from_adapter;     /* target_modules omitted: take the file's */
    json_t *ad_save;              /* adapter's modules_to_save (list) or NULL */

    int gpt2;                     /* GPT-2 layout (transformer., Conv1D) */
    struct lora_mod *mods;
    size_t nmods;
    lathe_tensor **params;        /* A0, B0, A1, B1, ... */
    size_t nparams;
    struct lora_saved *saved;
    size_t nsaved;
    /* names written to adapter_config.json's target_modules */
    json_t *target_list;
};

/* ---- names --------------------------------------------------------------- */

static const char *last_component(const char *name)
{
    const char *d = strrchr(name, '.');
    return d ? d + 1 : name;
}

/* PEFT's check_target_module_exists for a list entry: the full name equals
 * the entry or ends with "." + entry. */
static int peft_suffix_match(const char *name, const char *entry)
{
    size_t n = strlen(name), e = strlen(entry);
    if (n == e)
        return strcmp(name, entry) == 0;
    return n > e && name[n - e - 1] == '.' && strcmp(name + n - e, entry) == 0;
}

/* GPT-2's linears are named as HF's GPT2Model without "transformer."
 * ("h.0.attn.c_attn"); every other shipped model names its linears by their
 * full Hugging Face path already. */
static int is_gpt2_layout(struct lathe_linear *const *lin, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const char *s = lin[i]->name;
        if (s && s[0] == 'h' && s[1] == '.' && s[2] >= '0' && s[2] <= '9')
            return 1;
    }
    return 0;
}

/* The Hugging Face module path of a lathe module path (see the file
 * comment). GPT2LMHeadModel keeps lm_head outside "transformer.". */
static int lora_hf_path(const struct lora *lo, const char *name, char *out, size_t n)
{
    int k;
    if (lo->gpt2 && strcmp(name, "lm_head") != 0 && strncmp(name, "lm_head.", 8) != 0)
        k = snprintf(out, n, "transformer.%s", name);
    else
        k = snprintf(out, n, "%s", name);
    if (k < 0 || (size_t)k >= n)
        return lathe_error(LATHE_EINVAL, "lora: module name '%s' is too long", name);
    return LATHE_OK;
}

static int is_output_head(const char *name)
{
    return strcmp(last_component(name), "lm_head") == 0;
}

/* Does the config's target list select the linear with HF path `hf`? */
static int lora_targets(const struct lora *lo, const char *hf)
{
    if (lo->targets_from_adapter) {
        size_t i;
        json_t *v;
        json_array_foreach(lo->ad_targets, i, v)
            if (strcmp(json_string_value(v), hf) == 0)
                return 1;
        return 0;
    }
    if (lo->all_linear)
        return !is_output_head(hf);
    for (size_t i = 0; i < lo->ntargets; i++)
        if (peft_suffix_match(hf, lo->targets[i]))
            return 1;
    return 0;
}

/* ---- tensors ------------------------------------------------------------ */

static int put_f32(lathe_tensor *t, const float *src)
{
    if (lathe_backend()->copy(t->data, src, lathe_tensor_nbytes(t), 1))
        return lathe_error(LATHE_ERR, "lora: copying '%s' to the device failed", t->name);
    return LATHE_OK;
}

/* A [r, in]: PEFT's reset_lora_parameters. "kaiming": kaiming_uniform_ with
 * a = sqrt(5): bound = gain * sqrt(3 / fan_in), gain = sqrt(2 / (1 + a^2)),
 * which is 1 / sqrt(in). "gaussian": N(0, (1/r)^2). B stays zero. */
static int lora_init_A(struct lora *lo, lathe_tensor *A, size_t idx)
{
    const int64_t r = A->shape[0], in = A->shape[1], n = r * in;
    float *buf = malloc((size_t)n * sizeof *buf);
    if (!buf)
        return lathe_error(LATHE_ENOMEM, "lora: out of memory initialising '%s'", A->name);
    lathe_rng rng;
    lathe_rng_seed(&rng, lo->seed ^ (0x9E3779B97F4A7C15ull * (uint64_t)(idx + 1)) ^ 0x4C6F5241ull);
    const double bound = 1.0 / sqrt((double)in), std = 1.0 / (double)r;
    for (int64_t i = 0; i < n; i++)
        buf[i] = lo->init == LORA_INIT_KAIMING ? (float)((2.0 * lathe_rng_uniform(&rng) - 1.0) * bound)
                                               : (float)(lathe_rng_normal(&rng) * std);
    int rc = put_f32(A, buf);
    free(buf);
    return rc;
}

/* ---- the hook ----------------------------------------------------------- */

/* y = base + scaling · (dropout(x) A^T) B^T. The scaling multiplies the
 * [..., r] intermediate rather than the [..., out] result: the same product,
 * r/out of the work. Dropout follows the grad mode: the loop evaluates and
 * generates under no_grad, and the hook is not told `train`. */
static lathe_tensor *lora_hook(void *self, struct lathe_linear *l, lathe_tensor *x, lathe_tensor *base)
{
    struct lora_mod *m = self;
    const struct lora *lo = m->lo;
    lathe_tensor *h = x;
    if (lo->dropout > 0.0)
        h = lathe_dropout(x, (float)lo->dropout, lathe_grad_enabled());
    /* base + scaling · (h Aᵀ) Bᵀ, the rank-r product added into the base
     * output's own buffer: no second activation of the layer's width */
    lathe_tensor *a = lathe_linear(h, m->A, NULL);
    lathe_tensor *out = lathe_linear_accumulate(base, a, m->B, (float)lo->scaling);
    if (!out && x && base)
        lathe_error_prefix(LATHE_EINVAL, "lora %s", l->name ? l->name : "?");
    return out;
}

/* ---- adapter files ------------------------------------------------------- */

static int adapter_path(const char *dir, const char *file, char *out, size_t n)
{
    int k = snprintf(out, n, "%s/%s", dir, file);
    if (k < 0 || (size_t)k >= n)
        return lathe_error(LATHE_EINVAL, "lora: path '%s/%s' is too long", dir, file);
    return LATHE_OK;
}

static int json_number(json_t *v, double *out)
{
    if (!json_is_number(v))
        return 0;
    *out = json_number_value(v);
    return 1;
}

/* Read DIR/adapter_config.json and the module list of
 * DIR/adapter_model.safetensors. Fills the adapter's r, alpha and rslora. */
static int lora_read_adapter(struct lora *lo, int64_t *r, double *alpha, int *rslora)
{
    char path[4200];
    int rc = adapter_path(lo->adapter, "adapter_config.json", path, sizeof path);
    if (rc)
        return rc;
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root)
        return lathe_cfg_error(lo->cfg, "adapter", "%s:%d: %s (is this a PEFT adapter directory?)", path,
                               je.line, je.text);
    rc = LATHE_OK;
    const char *pt = json_string_value(json_object_get(root, "peft_type"));
    double v = 0;
    if (!json_is_object(root) || !pt || strcmp(pt, "LORA") != 0)
        rc = lathe_cfg_error(lo->cfg, "adapter", "%s: peft_type is %s, not \"LORA\"", path, pt ? pt : "missing");
    else if (!json_number(json_object_get(root, "r"), &v) || v < 1 || v != floor(v))
        rc = lathe_cfg_error(lo->cfg, "adapter", "%s: \"r\" must be a positive integer", path);
    if (rc == LATHE_OK) {
        *r = (int64_t)v;
        json_t *a = json_object_get(root, "lora_alpha");
        *alpha = 8.0; /* PEFT's default when the key is absent */
        if (a && !json_number(a, alpha))
            rc = lathe_cfg_error(lo->cfg, "adapter", "%s: \"lora_alpha\" must be a number", path);
        *rslora = json_is_true(json_object_get(root, "use_rslora"));
        const char *bias = json_string_value(json_object_get(root, "bias"));
        json_t *rp = json_object_get(root, "rank_pattern"), *ap = json_object_get(root, "alpha_pattern");
        if (rc == LATHE_OK && bias && strcmp(bias, "none") != 0)
            rc = lathe_cfg_error(lo->cfg, "adapter", "%s: bias = \"%s\" is not supported (only \"none\")", path, bias);
        else if (rc == LATHE_OK && json_is_true(json_object_get(root, "use_dora")))
            rc = lathe_cfg_error(lo->cfg, "adapter", "%s: DoRA adapters (use_dora) are not supported", path);
        else if (rc == LATHE_OK && ((json_is_object(rp) && json_object_size(rp)) ||
                                    (json_is_object(ap) && json_object_size(ap))))
            rc = lathe_cfg_error(lo->cfg, "adapter", "%s: per-module rank_pattern / alpha_pattern are not "
                                 "supported", path);
        json_t *ms = json_object_get(root, "modules_to_save");
        if (rc == LATHE_OK && json_is_array(ms))
            lo->ad_save = json_incref(ms);
    }
    json_decref(root);
    if (rc)
        return rc;

    /* the targeted modules: those with a lora_A tensor in the file */
    if ((rc = adapter_path(lo->adapter, "adapter_model.safetensors", path, sizeof path)))
        return rc;
    lathe_weights *w = NULL;
    if ((rc = lathe_weights_open(&w, path)))
        return lathe_error_prefix(rc, "[peft] adapter");
    lo->ad_targets = json_array();
    static const char suffix[] = ".lora_A.weight";
    const size_t pl = strlen(LORA_PREFIX), sl = strlen(suffix);
    for (size_t i = 0; i < lathe_weights_count(w) && rc == LATHE_OK; i++) {
        const char *name;
        enum lathe_dtype dt;
        int nd;
        int64_t shape[LATHE_MAX_DIMS];
        if ((rc = lathe_weights_info(w, i, &name, &dt, &nd, shape)))
            break;
        size_t n = strlen(name);
        if (n > pl + sl && strncmp(name, LORA_PREFIX, pl) == 0 && strcmp(name + n - sl, suffix) == 0) {
            if (nd != 2 || shape[0] != *r) {
                rc = lathe_cfg_error(lo->cfg, "adapter", "%s: '%s' has %d dims and %lld rows, but the "
                                     "adapter's r is %lld", path, name, nd, (long long)(nd ? shape[0] : 0),
                                     (long long)*r);
                break;
            }
            json_array_append_new(lo->ad_targets, json_stringn(name + pl, n - pl - sl));
        }
    }
    lathe_weights_close(w);
    if (rc == LATHE_OK && json_array_size(lo->ad_targets) == 0)
        rc = lathe_cfg_error(lo->cfg, "adapter", "%s holds no '" LORA_PREFIX "*.lora_A.weight' tensor", path);
    return rc;
}

/* Load A, B and the modules_to_save from the adapter file into the
 * parameters made by apply(). */
static int lora_load_tensors(struct lora *lo)
{
    char path[4200], name[LATHE_NAME_MAX + 32];
    int rc = adapter_path(lo->adapter, "adapter_model.safetensors", path, sizeof path);
    if (rc)
        return rc;
    lathe_weights *w = NULL;
    if ((rc = lathe_weights_open(&w, path)))
        return lathe_error_prefix(rc, "[peft] adapter");
    for (size_t i = 0; i < lo->nparams && rc == LATHE_OK; i++)
        rc = lathe_weights_read(w, lo->params[i]->name, lo->params[i]);
    for (size_t i = 0; i < lo->nsaved && rc == LATHE_OK; i++) {
        snprintf(name, sizeof name, "%s", lo->saved[i].hf);
        if (!lathe_weights_has(w, name))
            continue; /* a module to save that the adapter did not train */
        rc = lo->saved[i].conv1d ? lathe_weights_read_transposed(w, name, lo->saved[i].t)
                                 : lathe_weights_read(w, name, lo->saved[i].t);
    }
    const char *extra = rc == LATHE_OK ? lathe_weights_unused(w, NULL) : NULL;
    if (extra)
        rc = lathe_cfg_error(lo->cfg, "adapter", "%s: tensor '%s' belongs to no wrapped module or module to "
                             "save of this model (is the adapter for another model?)", path, extra);
    lathe_weights_close(w);
    return rc ? lathe_error_prefix(rc, "[peft] adapter") : LATHE_OK;
}

/* ---- create / destroy ------------------------------------------------------ */

static void lora_destroy(void *self)
{
    struct lora *lo = self;
    if (!lo)
        return;
    for (size_t i = 0; i < lo->nparams; i++)
        lathe_tensor_free(lo->params[i]);
    free(lo->params);
    free(lo->mods);
    free(lo->saved);
    json_decref(lo->ad_targets);
    json_decref(lo->ad_save);
    json_decref(lo->target_list);
    free(lo);
}

/* A key that an adapter also sets must be omitted or agree with it. */
static int adapter_disagrees(struct lora *lo, const char *key, const char *mine, const char *theirs)
{
    return lathe_cfg_error(lo->cfg, key,
                           "%s = %s, but the adapter %s was trained with %s. With adapter set, rank, alpha, "
                           "use_rslora and target_modules come from the adapter: omit them or give the "
                           "adapter's values", key, mine, lo->adapter, theirs);
}

static int lora_read_config(struct lora *lo, lathe_section *s, const struct lathe_env *env)
{
    static const char *const inits[] = {"kaiming", "gaussian", NULL};
    static const char *const bases[] = {"float32", "bfloat16", NULL};
    int rc;
    const char *bias;
    if ((rc = lathe_cfg_string(s, "adapter", "", &lo->adapter)))
        return rc;
    if (!lo->adapter[0])
        lo->adapter = NULL;
    int64_t ad_r = 8;
    double ad_alpha = 16.0;
    int ad_rslora = 0;
    if (lo->adapter && (rc = lora_read_adapter(lo, &ad_r, &ad_alpha, &ad_rslora)))
        return rc;
    int has_r = lathe_section_has(s, "rank"), has_a = lathe_section_has(s, "alpha");
    int has_rs = lathe_section_has(s, "use_rslora"), has_t = lathe_section_has(s, "target_modules");
    if ((rc = lathe_cfg_int(s, "rank", ad_r, 1, 1 << 20, &lo->r)) ||
        (rc = lathe_cfg_float(s, "alpha", ad_alpha, 1e-12, 1e12, &lo->alpha)) ||
        (rc = lathe_cfg_float(s, "dropout", 0.0, 0.0, 1.0, &lo->dropout)) ||
        (rc = lathe_cfg_bool(s, "use_rslora", ad_rslora, &lo->rslora)) ||
        (rc = lathe_cfg_list(s, "target_modules", "", &lo->targets, &lo->ntargets)) ||
        (rc = lathe_cfg_list(s, "modules_to_save", "", &lo->save_mods, &lo->nsave_mods)) ||
        (rc = lathe_cfg_string(s, "bias", "none", &bias)) ||
        (rc = lathe_cfg_choice(s, "init", "kaiming", inits, &lo->init)) ||
        (rc = lathe_cfg_choice(s, "base_dtype", "float32", bases, &lo->base_dtype)))
        return rc;
    if (lo->dropout >= 1.0)
        return lathe_cfg_error(s, "dropout", "dropout must be in [0, 1) (got %g)", lo->dropout);
    if (strcmp(bias, "none") != 0)
        return lathe_cfg_error(s, "bias", "bias = %s is not supported: LoRA here trains no base bias; use "
                               "bias = none (or list the module in modules_to_save)", bias);
    for (size_t i = 0; i < lo->ntargets; i++)
        if (strcmp(lo->targets[i], "all-linear") == 0) {
            if (lo->ntargets != 1)
                return lathe_cfg_error(s, "target_modules", "all-linear stands alone; it cannot be combined "
                                       "with module names");
            lo->all_linear = 1;
        }
    if (lo->adapter) {
        char a[64], b[64];
        if (has_r && lo->r != ad_r) {
            snprintf(a, sizeof a, "%lld", (long long)lo->r);
            snprintf(b, sizeof b, "r = %lld", (long long)ad_r);
            return adapter_disagrees(lo, "rank", a, b);
        }
        if (has_a && lo->alpha != ad_alpha) {
            snprintf(a, sizeof a, "%g", lo->alpha);
            snprintf(b, sizeof b, "lora_alpha = %g", ad_alpha);
            return adapter_disagrees(lo, "alpha", a, b);
        }
        if (has_rs && lo->rslora != ad_rslora)
            return adapter_disagrees(lo, "use_rslora", lo->rslora ? "true" : "false",
                                     ad_rslora ? "use_rslora = true" : "use_rslora = false");
        lo->targets_from_adapter = !has_t;
        if (!lathe_section_has(s, "modules_to_save") && lo->ad_save) {
            /* keep the adapter's list: its tensors are in the file */
            lo->save_mods = NULL;
            lo->nsave_mods = json_array_size(lo->ad_save);
        }
    }
    lo->scaling = (float)(lo->rslora ? lo->alpha / sqrt((double)lo->r) : lo->alpha / (double)lo->r);
    lo->seed = env ? env->seed : 0;
    /* base_model_name_or_path: the model's own source, when it has one */
    if (env && env->config && lathe_config_has_section(env->config, "model")) {
        lathe_section *ms = lathe_config_section(env->config, "model");
        if (lathe_section_has(ms, "pretrained") && lathe_cfg_string(ms, "pretrained", "", &lo->base_name))
            return LATHE_ECONFIG;
    }
    return LATHE_OK;
}

static int lora_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    *self = NULL;
    struct lora *lo = calloc(1, sizeof *lo);
    if (!lo)
        return lathe_error(LATHE_ENOMEM, "lora: out of memory");
    lo->cfg = cfg;
    lo->target_list = json_array();
    int rc = lora_read_config(lo, cfg, env);
    if (rc) {
        lora_destroy(lo);
        return rc;
    }
    *self = lo;
    return LATHE_OK;
}

/* ---- apply ------------------------------------------------------------ */

static const char *save_mod(const struct lora *lo, size_t i)
{
    return lo->save_mods ? lo->save_mods[i] : json_string_value(json_array_get(lo->ad_save, i));
}

/* "no linear matches": list what there is, one entry per last name. */
static int no_match_error(struct lora *lo, struct lathe_linear *const *lin, size_t nlin, const char *what)
{
    char avail[1024] = "";
    size_t used = 0;
    for (size_t i = 0; i < nlin; i++) {
        const char *last = last_component(lin[i]->name);
        int seen = 0;
        for (size_t j = 0; j < i && !seen; j++)
            seen = strcmp(last_component(lin[j]->name), last) == 0;
        if (!seen && used + strlen(last) + 8 < sizeof avail)
            used += (size_t)snprintf(avail + used, sizeof avail - used, "%s%s", used ? ", " : "", last);
    }
    char example[LATHE_NAME_MAX] = "";
    if (nlin)
        lora_hf_path(lo, lin[0]->name, example, sizeof example);
    return lathe_cfg_error(lo->cfg, "target_modules", "%s matches no linear layer of the model; its linear "
                           "layers are named %s (or all-linear; full paths such as %s also match)", what,
                           avail, example);
}

/* The trainable whole modules (modules_to_save): a parameter P.weight or
 * P.bias whose module path P is, or ends with ".", an entry. */
static int lora_apply_saved(struct lora *lo, struct lathe_linear *const *lin, size_t nlin,
                            lathe_tensor *const *params, size_t nparams)
{
    lo->saved = calloc(nparams ? nparams : 1, sizeof *lo->saved);
    if (!lo->saved)
        return lathe_error(LATHE_ENOMEM, "lora: out of memory");
    for (size_t k = 0; k < lo->nsave_mods; k++) {
        const char *entry = save_mod(lo, k);
        char want[LATHE_NAME_MAX];
        size_t found = 0;
        for (size_t i = 0; i < nparams; i++) {
            char mod[LATHE_NAME_MAX], hf[LATHE_NAME_MAX];
            snprintf(mod, sizeof mod, "%s", params[i]->name);
            char *dot = strrchr(mod, '.');
            if (!dot)
                continue;
            *dot = '\0';
            int rc = lora_hf_path(lo, mod, hf, sizeof hf);
            if (rc)
                return rc;
            /* entries may be lathe's or Hugging Face's module paths */
            if (!peft_suffix_match(mod, entry) && !peft_suffix_match(hf, entry))
                continue;
            found++;
            int dup = 0;
            for (size_t j = 0; j < lo->nsaved; j++)
                dup |= lo->saved[j].t == params[i];
            if (dup)
                continue;
            struct lora_saved *sv = &lo->saved[lo->nsaved++];
            sv->t = params[i];
            int n = snprintf(sv->hf, sizeof sv->hf, LORA_PREFIX "%s.%s", hf, dot + 1);
            if (n < 0 || (size_t)n >= sizeof sv->hf)
                return lathe_error(LATHE_EINVAL, "lora: name of '%s' is too long", params[i]->name);
            /* GPT-2's Conv1D weights are [in, out] in Hugging Face files */
            for (size_t j = 0; lo->gpt2 && j < nlin; j++)
                if (strcmp(lin[j]->name, mod) == 0 && lin[j]->weight == params[i] && !is_output_head(mod))
                    sv->conv1d = params[i]->ndim == 2;
        }
        if (!found) {
            snprintf(want, sizeof want, "%s", entry);
            char avail[1024] = "";
            size_t used = 0;
            for (size_t i = 0; i < nparams && used + 64 < sizeof avail; i++)
                used += (size_t)snprintf(avail + used, sizeof avail - used, "%s%s", used ? ", " : "",
                                         params[i]->name);
            return lathe_cfg_error(lo->cfg, lo->save_mods ? "modules_to_save" : "adapter",
                                   "'%s'%s matches no parameter of the model; it has %s%s", want,
                                   lo->save_mods ? "" : " (in the adapter's modules_to_save)", avail,
                                   used + 64 >= sizeof avail ? ", ..." : "");
        }
    }
    for (size_t j = 0; j < lo->nsaved; j++)
        lo->saved[j].t->requires_grad = 1;
    return LATHE_OK;
}

/* base_dtype = bfloat16: hold every frozen linear weight in bf16 (halving
 * its memory); lathe_linear converts it per call. A weight that a linear
 * borrows from another module (a tied output head reading the embedding)
 * stays f32: the embedding op needs it so. */
static int lora_base_to_bf16(struct lora *lo, struct lathe_linear *const *lin, size_t nlin)
{
    for (size_t i = 0; i < nlin; i++) {
        lathe_tensor *w = lin[i]->weight;
        char own[LATHE_NAME_MAX + 8];
        snprintf(own, sizeof own, "%s.weight", lin[i]->name);
        if (!w || w->requires_grad || w->dtype != LATHE_F32 || strcmp(w->name, own) != 0)
            continue;
        int rc = lathe_tensor_set_dtype(w, LATHE_BF16);
        if (rc)
            return lathe_error_prefix(rc, "[peft] base_dtype = bfloat16: '%s'", w->name);
    }
    (void)lo;
    return LATHE_OK;
}

static int lora_apply(void *self, struct lathe_linear *const *lin, size_t nlin, lathe_tensor *const *params,
                      size_t nparams)
{
    struct lora *lo = self;
    if (lo->mods)
        return lathe_error(LATHE_EINVAL, "lora: apply called twice");
    lo->gpt2 = is_gpt2_layout(lin, nlin);
    /* PEFT's per-architecture default targets */
    static const char *const gpt2_default[] = {"c_attn"};
    static const char *const llama_default[] = {"q_proj", "v_proj"};
    if (!lo->targets_from_adapter && lo->ntargets == 0) {
        lo->targets = lo->gpt2 ? gpt2_default : llama_default;
        lo->ntargets = lo->gpt2 ? 1 : 2;
    }
    for (size_t i = 0; i < nparams; i++)
        params[i]->requires_grad = 0;
    int rc = lora_apply_saved(lo, lin, nlin, params, nparams);
    if (rc)
        return rc;

    lo->mods = calloc(nlin ? nlin : 1, sizeof *lo->mods);
    lo->params = calloc(2 * (nlin ? nlin : 1), sizeof *lo->params);
    if (!lo->mods || !lo->params)
        return lathe_error(LATHE_ENOMEM, "lora: out of memory");
    for (size_t i = 0; i < nlin; i++) {
        char hf[LATHE_NAME_MAX];
        if ((rc = lora_hf_path(lo, lin[i]->name, hf, sizeof hf)))
            return rc;
        if (!lora_targets(lo, hf))
            continue;
        lathe_tensor *w = lin[i]->weight;
        if (!w || w->ndim != 2)
            return lathe_error(LATHE_EINVAL, "lora: linear '%s' has no 2-D weight", lin[i]->name);
        for (size_t k = 0; k < lo->nsaved; k++)
            if (lo->saved[k].t == w)
                return lathe_cfg_error(lo->cfg, "modules_to_save", "'%s' is both a LoRA target and a module "
                                       "to save; remove it from one of target_modules and modules_to_save",
                                       lin[i]->name);
        struct lora_mod *m = &lo->mods[lo->nmods];
        m->lo = lo;
        m->lin = lin[i];
        snprintf(m->hf, sizeof m->hf, "%s", hf);
        char na[LATHE_NAME_MAX + 32], nb[LATHE_NAME_MAX + 32];
        snprintf(na, sizeof na, LORA_PREFIX "%s.lora_A.weight", hf);
        snprintf(nb, sizeof nb, LORA_PREFIX "%s.lora_B.weight", hf);
        if (strlen(na) >= LATHE_NAME_MAX)
            return lathe_error(LATHE_EINVAL, "lora: tensor name '%s' is longer than %d bytes", na,
                               LATHE_NAME_MAX - 1);
        int64_t sa[2] = {lo->r, w->shape[1]}, sb[2] = {w->shape[0], lo->r};
        m->A = lathe_param_new(na, 2, sa);
        if (m->A)
            lo->params[lo->nparams++] = m->A;
        m->B = lathe_param_new(nb, 2, sb);
        if (m->B)
            lo->params[lo->nparams++] = m->B;
        if (!m->A || !m->B)
            return lathe_error_prefix(LATHE_ENOMEM, "lora: '%s'", lin[i]->name);
        lo->nmods++;
        if (!lo->adapter && (rc = lora_init_A(lo, m->A, lo->nmods - 1)))
            return rc;
        /* what adapter_config.json lists: the user's entries as given;
         * all-linear (as PEFT does) and adapter-given sets as the distinct
         * last names of the wrapped modules */
        if (lo->all_linear || lo->targets_from_adapter) {
            const char *last = last_component(hf);
            int seen = 0;
            size_t j;
            json_t *v;
            json_array_foreach(lo->target_list, j, v)
                seen |= strcmp(json_string_value(v), last) == 0;
            if (!seen)
                json_array_append_new(lo->target_list, json_string(last));
        }
    }
    if (lo->nmods == 0) {
        char what[256] = "";
        size_t used = 0;
        for (size_t i = 0; !lo->targets_from_adapter && i < lo->ntargets && used + 40 < sizeof what; i++)
            used += (size_t)snprintf(what + used, sizeof what - used, "%s%s", i ? ", " : "", lo->targets[i]);
        if (lo->targets_from_adapter)
            snprintf(what, sizeof what, "the adapter's modules (e.g. %s)",
                     json_string_value(json_array_get(lo->ad_targets, 0)));
        return no_match_error(lo, lin, nlin, what);
    }
    /* every listed name must select something (a typo would otherwise
     * silently train fewer layers) */
    for (size_t t = 0; !lo->targets_from_adapter && !lo->all_linear && t < lo->ntargets; t++) {
        int hit = 0;
        for (size_t i = 0; i < lo->nmods && !hit; i++)
            hit = peft_suffix_match(lo->mods[i].hf, lo->targets[t]);
        if (!hit)
            return no_match_error(lo, lin, nlin, lo->targets[t]);
        json_array_append_new(lo->target_list, json_string(lo->targets[t]));
    }
    /* an adapter given with target_modules: both must pick the same set */
    if (lo->adapter && !lo->targets_from_adapter) {
        if (json_array_size(lo->ad_targets) != lo->nmods)
            return adapter_disagrees(lo, "target_modules", "(the list given)", "a different set of modules");
        for (size_t i = 0; i < lo->nmods; i++) {
            int hit = 0;
            size_t j;
            json_t *v;
            json_array_foreach(lo->ad_targets, j, v)
                hit |= strcmp(json_string_value(v), lo->mods[i].hf) == 0;
            if (!hit)
                return adapter_disagrees(lo, "target_modules", lo->mods[i].hf, "no LoRA weights for that module");
        }
    }
    if (lo->targets_from_adapter && json_array_size(lo->ad_targets) != lo->nmods) {
        size_t j;
        json_t *v;
        json_array_foreach(lo->ad_targets, j, v) {
            int hit = 0;
            for (size_t i = 0; i < lo->nmods && !hit; i++)
                hit = strcmp(json_string_value(v), lo->mods[i].hf) == 0;
            if (!hit)
                return lathe_cfg_error(lo->cfg, "adapter", "%s: module '%s' is not a linear layer of this model "
                                       "(is the adapter for another model?)", lo->adapter, json_string_value(v));
        }
    }
    if (lo->adapter && (rc = lora_load_tensors(lo)))
        return rc;
    if (lo->base_dtype == LORA_BASE_BF16 && (rc = lora_base_to_bf16(lo, lin, nlin)))
        return rc;
    for (size_t i = 0; i < lo->nmods; i++) {
        lo->mods[i].lin->hook = lora_hook;
        lo->mods[i].lin->hook_self = &lo->mods[i];
    }
    return LATHE_OK;
}

/* ---- params / enable / save ---------------------------------------------- */

static int lora_params(void *self, lathe_tensor *const **params, size_t *n)
{
    struct lora *lo = self;
    *params = lo->params;
    *n = lo->nparams;
    return LATHE_OK;
}

/* Off: the hooks are removed, so the model computes the base exactly (the
 * reference policy of RL fine-tuning). */
static int lora_set_enabled(void *self, int enabled)
{
    struct lora *lo = self;
    for (size_t i = 0; i < lo->nmods; i++) {
        lo->mods[i].lin->hook = enabled ? lora_hook : NULL;
        lo->mods[i].lin->hook_self = enabled ? &lo->mods[i] : NULL;
    }
    return LATHE_OK;
}

/* adapter_config.json with the fields PEFT writes (LoraConfig's asdict,
 * formats.md §2.2), limited to those every PEFT since 0.9 knows: an older
 * PEFT rejects keys it has no field for, a newer one fills in what is
 * missing with its defaults. */
static json_t *lora_config_json(const struct lora *lo)
{
    json_t *o = json_object();
    json_t *ms = json_null();
    if (lo->nsave_mods) {
        ms = json_array();
        for (size_t i = 0; i < lo->nsave_mods; i++)
            json_array_append_new(ms, json_string(save_mod(lo, i)));
    }
    json_object_set_new(o, "alpha_pattern", json_object());
    json_object_set_new(o, "auto_mapping", json_null());
    json_object_set_new(o, "base_model_name_or_path", lo->base_name ? json_string(lo->base_name) : json_null());
    json_object_set_new(o, "bias", json_string("none"));
    json_object_set_new(o, "fan_in_fan_out", json_boolean(lo->gpt2));
    json_object_set_new(o, "inference_mode", json_true());
    json_object_set_new(o, "init_lora_weights",
                        lo->init == LORA_INIT_GAUSSIAN ? json_string("gaussian") : json_true());
    json_object_set_new(o, "layers_pattern", json_null());
    json_object_set_new(o, "layers_to_transform", json_null());
    json_object_set_new(o, "loftq_config", json_object());
    json_object_set_new(o, "lora_alpha", lo->alpha == floor(lo->alpha) && fabs(lo->alpha) < 1e15
                                             ? json_integer((json_int_t)lo->alpha) : json_real(lo->alpha));
    json_object_set_new(o, "lora_dropout", json_real(lo->dropout));
    json_object_set_new(o, "megatron_config", json_null());
    json_object_set_new(o, "megatron_core", json_string("megatron.core"));
    json_object_set_new(o, "modules_to_save", ms);
    json_object_set_new(o, "peft_type", json_string("LORA"));
    json_object_set_new(o, "r", json_integer(lo->r));
    json_object_set_new(o, "rank_pattern", json_object());
    json_object_set_new(o, "revision", json_null());
    json_object_set_new(o, "target_modules", json_deep_copy(lo->target_list));
    json_object_set_new(o, "task_type", json_string("CAUSAL_LM"));
    json_object_set_new(o, "use_dora", json_false());
    json_object_set_new(o, "use_rslora", json_boolean(lo->rslora));
    return o;
}

static int lora_save(void *self, const char *dir)
{
    struct lora *lo = self;
    char path[4200], tmp[4200], tmpdir[4200];
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return lathe_error(LATHE_EIO, "lora: cannot create %s: %s", dir, strerror(errno));
    /* tensors: A/B under their PEFT names, then the modules to save */
    size_t n = lo->nparams + lo->nsaved;
    const char **names = calloc(n ? n : 1, sizeof *names);
    lathe_tensor **ts = calloc(n ? n : 1, sizeof *ts);
    uint8_t *tr = calloc(n ? n : 1, 1);
    int rc = names && ts && tr ? LATHE_OK : lathe_error(LATHE_ENOMEM, "lora: out of memory");
    for (size_t i = 0; rc == LATHE_OK && i < lo->nparams; i++) {
        names[i] = lo->params[i]->name;
        ts[i] = lo->params[i];
    }
    for (size_t i = 0; rc == LATHE_OK && i < lo->nsaved; i++) {
        names[lo->nparams + i] = lo->saved[i].hf;
        ts[lo->nparams + i] = lo->saved[i].t;
        tr[lo->nparams + i] = (uint8_t)lo->saved[i].conv1d;
    }
    /* lathe_weights_write names its single file model.safetensors: write it
     * in a private folder, then rename it to PEFT's name */
    if (rc == LATHE_OK && !(rc = adapter_path(dir, ".adapter.tmp", tmpdir, sizeof tmpdir)))
        rc = lathe_weights_write(tmpdir, names, ts, tr, n, LATHE_F32, 0);
    if (rc == LATHE_OK && !(rc = adapter_path(tmpdir, "model.safetensors", tmp, sizeof tmp)) &&
        !(rc = adapter_path(dir, "adapter_model.safetensors", path, sizeof path)) && rename(tmp, path) != 0)
        rc = lathe_error(LATHE_EIO, "lora: cannot rename %s to %s: %s", tmp, path, strerror(errno));
    if (tmpdir[0])
        rmdir(tmpdir);
    free(names);
    free(ts);
    free(tr);
    if (rc)
        return rc;

    json_t *cfg = lora_config_json(lo);
    if ((rc = adapter_path(dir, "adapter_config.json.tmp", tmp, sizeof tmp)) ||
        (rc = adapter_path(dir, "adapter_config.json", path, sizeof path))) {
        json_decref(cfg);
        return rc;
    }
    /* PEFT writes json.dumps(indent=2, sort_keys=True) */
    if (json_dump_file(cfg, tmp, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(17)) != 0)
        rc = lathe_error(LATHE_EIO, "lora: cannot write %s", tmp);
    else if (rename(tmp, path) != 0)
        rc = lathe_error(LATHE_EIO, "lora: cannot rename %s to %s: %s", tmp, path, strerror(errno));
    json_decref(cfg);
    return rc;
}

static const struct lathe_peft_ops lora_ops = {
    .size = sizeof(struct lathe_peft_ops),
    .create = lora_create,
    .destroy = lora_destroy,
    .apply = lora_apply,
    .params = lora_params,
    .save = lora_save,
    .set_enabled = lora_set_enabled,
};

static const struct lathe_component lora_components[] = {
    {LATHE_KIND_PEFT, "lora", &lora_ops},
    {0},
};

LATHE_PLUGIN_DEFINE(lora, .version = "0.1.0",
                    .description = "LoRA adapters compatible with Hugging Face PEFT",
                    .components = lora_components)
