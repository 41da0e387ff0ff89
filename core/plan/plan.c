/* core/plan/plan.c — parameter counts from config.json and per-device memory
 * figures for a training setup. Sources are named in plan.h; each figure
 * comes with its formula (f_* strings) so that `lathe plan` shows its
 * working. */
#include "plan/plan.h"

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lathe/status.h>

/* ---- config.json ---------------------------------------------------------- */

struct cfg {
    json_t *root;
    const char *name;
    const char *type;
};

/* An integer field. Missing or null: *out = def, or an error when `need`.
 * A JSON real with an integral value is accepted (some exporters write 1.0). */
static int get_int(const struct cfg *c, const char *key, int need, int64_t def, int64_t lo, int64_t *out)
{
    json_t *v = json_object_get(c->root, key);
    if (!v || json_is_null(v)) {
        if (need)
            return lathe_error(LATHE_ECONFIG, "%s: missing '%s' (needed to count a %s model)", c->name, key, c->type);
        *out = def;
        return LATHE_OK;
    }
    double d;
    if (json_is_integer(v))
        d = (double)json_integer_value(v);
    else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)))
        d = json_real_value(v);
    else
        return lathe_error(LATHE_ECONFIG, "%s: '%s' must be an integer", c->name, key);
    if (d < (double)lo || d > 1e15)
        return lathe_error(LATHE_ECONFIG, "%s: '%s' is %.0f; it must be at least %lld", c->name, key, d, (long long)lo);
    *out = (int64_t)d;
    return LATHE_OK;
}

static int get_bool(const struct cfg *c, const char *key, int def, int *out)
{
    json_t *v = json_object_get(c->root, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return LATHE_OK;
    }
    if (!json_is_boolean(v))
        return lathe_error(LATHE_ECONFIG, "%s: '%s' must be true or false", c->name, key);
    *out = json_is_true(v);
    return LATHE_OK;
}

static void add_linear(struct lathe_plan_model *m, const char *name, int64_t in, int64_t out, int64_t count,
                       int bias, int routed)
{
    if (count <= 0 || m->nlinear >= LATHE_PLAN_MAX_LINEARS)
        return;
    struct lathe_plan_linear *l = &m->linear[m->nlinear++];
    snprintf(l->name, sizeof l->name, "%s", name);
    l->in = in, l->out = out, l->count = count, l->bias = bias, l->routed = routed;
    if ((uint64_t)(in * out) > m->largest)
        m->largest = (uint64_t)(in * out);
}

static uint64_t lin_params(const struct lathe_plan_linear *l)
{
    return (uint64_t)l->count * ((uint64_t)l->in * (uint64_t)l->out + (l->bias ? (uint64_t)l->out : 0));
}

/* Sum of the linears added since index `from`. */
static uint64_t lin_sum(const struct lathe_plan_model *m, size_t from)
{
    uint64_t s = 0;
    for (size_t i = from; i < m->nlinear; i++)
        s += lin_params(&m->linear[i]);
    return s;
}

#define TRY(x)                                                                                                        \
    do {                                                                                                              \
        int rc_ = (x);                                                                                                \
        if (rc_ != LATHE_OK)                                                                                          \
            return rc_;                                                                                               \
    } while (0)

/* llama, mistral, qwen2 (HF modeling_llama.py / modeling_qwen2.py): GQA
 * attention, SwiGLU MLP, RMSNorm without bias. Qwen2 always has q/k/v
 * biases; llama's attention_bias adds them to q/k/v/o, mlp_bias to the MLP. */
static int count_llama(const struct cfg *c, struct lathe_plan_model *m)
{
    int64_t h, L, H, kv, d, I, V;
    int attn_bias = 0, mlp_bias = 0, tied;
    TRY(get_int(c, "hidden_size", 1, 0, 1, &h));
    TRY(get_int(c, "num_hidden_layers", 1, 0, 1, &L));
    TRY(get_int(c, "num_attention_heads", 1, 0, 1, &H));
    TRY(get_int(c, "num_key_value_heads", 0, H, 1, &kv));
    TRY(get_int(c, "intermediate_size", 1, 0, 1, &I));
    TRY(get_int(c, "vocab_size", 1, 0, 1, &V));
    if (!json_object_get(c->root, "head_dim") && h % H != 0)
        return lathe_error(LATHE_ECONFIG, "%s: hidden_size %lld is not a multiple of num_attention_heads %lld; give head_dim",
                           c->name, (long long)h, (long long)H);
    TRY(get_int(c, "head_dim", 0, h / H, 1, &d));
    if (H % kv != 0)
        return lathe_error(LATHE_ECONFIG, "%s: num_attention_heads %lld is not a multiple of num_key_value_heads %lld",
                           c->name, (long long)H, (long long)kv);
    TRY(get_bool(c, "tie_word_embeddings", 0, &tied));
    if (strcmp(c->type, "qwen2") == 0)
        attn_bias = 1;
    else {
        TRY(get_bool(c, "attention_bias", 0, &attn_bias));
        TRY(get_bool(c, "mlp_bias", 0, &mlp_bias));
    }
    m->hidden = h, m->layers = L, m->heads = H, m->kv_heads = kv, m->head_dim = d, m->inter = I, m->vocab = V;
    m->tied = tied, m->dense_layers = L;
    m->embed = (uint64_t)V * (uint64_t)h;
    m->largest = m->embed;
    int o_bias = attn_bias && strcmp(c->type, "qwen2") != 0;
    add_linear(m, "q_proj", h, H * d, L, attn_bias, 0);
    add_linear(m, "k_proj", h, kv * d, L, attn_bias, 0);
    add_linear(m, "v_proj", h, kv * d, L, attn_bias, 0);
    add_linear(m, "o_proj", H * d, h, L, o_bias, 0);
    m->attn = lin_sum(m, 0);
    size_t at = m->nlinear;
    add_linear(m, "gate_proj", h, I, L, mlp_bias, 0);
    add_linear(m, "up_proj", h, I, L, mlp_bias, 0);
    add_linear(m, "down_proj", I, h, L, mlp_bias, 0);
    m->mlp = lin_sum(m, at);
    m->norms = (uint64_t)L * 2 * (uint64_t)h + (uint64_t)h; /* input/post-attention RMSNorm, final norm */
    if (!tied) {
        add_linear(m, "lm_head", h, V, 1, 0, 0);
        m->lm_head = (uint64_t)V * (uint64_t)h;
    }
    return LATHE_OK;
}

/* gpt2 (HF modeling_gpt2.py): learned positions, LayerNorm with bias, Conv1D
 * projections with bias, GELU MLP of width n_inner (default 4h), tied head. */
static int count_gpt2(const struct cfg *c, struct lathe_plan_model *m)
{
    int64_t h, L, H, P, V, I;
    int tied;
    TRY(get_int(c, "n_embd", 1, 0, 1, &h));
    TRY(get_int(c, "n_layer", 1, 0, 1, &L));
    TRY(get_int(c, "n_head", 1, 0, 1, &H));
    TRY(get_int(c, "n_positions", 1, 0, 1, &P));
    TRY(get_int(c, "vocab_size", 1, 0, 1, &V));
    TRY(get_int(c, "n_inner", 0, 4 * h, 1, &I));
    TRY(get_bool(c, "tie_word_embeddings", 1, &tied));
    m->hidden = h, m->layers = L, m->heads = H, m->kv_heads = H, m->head_dim = h / H, m->inter = I, m->vocab = V;
    m->positions = P, m->tied = tied, m->dense_layers = L;
    m->embed = (uint64_t)V * (uint64_t)h + (uint64_t)P * (uint64_t)h;
    m->largest = (uint64_t)V * (uint64_t)h;
    add_linear(m, "c_attn", h, 3 * h, L, 1, 0);
    add_linear(m, "c_proj", h, h, L, 1, 0);
    m->attn = lin_sum(m, 0);
    size_t at = m->nlinear;
    add_linear(m, "c_fc", h, I, L, 1, 0);
    add_linear(m, "c_proj", I, h, L, 1, 0);
    m->mlp = lin_sum(m, at);
    m->norms = (uint64_t)L * 4 * (uint64_t)h + 2 * (uint64_t)h; /* ln_1, ln_2 (weight + bias), ln_f */
    if (!tied) {
        add_linear(m, "lm_head", h, V, 1, 0, 0);
        m->lm_head = (uint64_t)V * (uint64_t)h;
    }
    return LATHE_OK;
}

/* deepseek_v3 (HF modeling_deepseek.py, DeepseekV3Config):
 * - MLA: q_a_proj h->q_lora, q_a_layernorm, q_b_proj q_lora->H·(nope+rope)
 *   (or one q_proj when q_lora_rank is null); kv_a_proj_with_mqa
 *   h->kv_lora+rope, kv_a_layernorm, kv_b_proj kv_lora->H·(nope+v); o_proj
 *   H·v->h. attention_bias puts biases on q_a/q, kv_a and o.
 * - Layer i is MoE when i >= first_k_dense_replace and i % moe_layer_freq
 *   == 0, else a dense SwiGLU MLP of intermediate_size.
 * - MoE: n_routed_experts SwiGLU experts of moe_intermediate_size; the
 *   shared experts are one SwiGLU of moe_intermediate_size·n_shared_experts;
 *   the gate is an n_routed x h weight plus, for topk_method noaux_tc, the
 *   e_score_correction_bias (n_routed).
 * - MTP (num_nextn_predict_layers, stored as layers 61+): per module one
 *   more MoE decoder layer plus enorm, hnorm, eh_proj (2h->h) and
 *   shared_head.norm; it shares the embedding and head (README_WEIGHTS.md:
 *   "11.5B unique parameters, excluding the shared 0.9B Embedding and 0.9B
 *   output Head"). HF's DeepseekV3ForCausalLM does not build it, so it is
 *   reported (mtp_unique) but kept out of the total. */
static int count_deepseek(const struct cfg *c, struct lathe_plan_model *m)
{
    int64_t h, L, H, I, V, Im, nr, ns, k, first, freq, qr, kvr, nope, rope, vd, mtp;
    int attn_bias, tied;
    TRY(get_int(c, "hidden_size", 1, 0, 1, &h));
    TRY(get_int(c, "num_hidden_layers", 1, 0, 1, &L));
    TRY(get_int(c, "num_attention_heads", 1, 0, 1, &H));
    TRY(get_int(c, "intermediate_size", 1, 0, 1, &I));
    TRY(get_int(c, "vocab_size", 1, 0, 1, &V));
    TRY(get_int(c, "kv_lora_rank", 1, 0, 1, &kvr));
    TRY(get_int(c, "qk_nope_head_dim", 1, 0, 0, &nope));
    TRY(get_int(c, "qk_rope_head_dim", 1, 0, 0, &rope));
    TRY(get_int(c, "v_head_dim", 1, 0, 1, &vd));
    TRY(get_int(c, "q_lora_rank", 0, 0, 1, &qr)); /* null: plain q_proj (V2-Lite) */
    TRY(get_int(c, "n_routed_experts", 0, 0, 0, &nr));
    TRY(get_int(c, "n_shared_experts", 0, 0, 0, &ns));
    TRY(get_int(c, "first_k_dense_replace", 0, 0, 0, &first));
    TRY(get_int(c, "moe_layer_freq", 0, 1, 1, &freq));
    TRY(get_int(c, "num_nextn_predict_layers", 0, 0, 0, &mtp));
    if (nr > 0) {
        TRY(get_int(c, "moe_intermediate_size", 1, 0, 1, &Im));
        TRY(get_int(c, "num_experts_per_tok", 1, 0, 1, &k));
        if (k > nr)
            return lathe_error(LATHE_ECONFIG, "%s: num_experts_per_tok %lld exceeds n_routed_experts %lld", c->name,
                               (long long)k, (long long)nr);
    } else {
        Im = 0, k = 0, ns = 0;
    }
    TRY(get_bool(c, "attention_bias", 0, &attn_bias));
    TRY(get_bool(c, "tie_word_embeddings", 0, &tied));
    json_t *tm = json_object_get(c->root, "topk_method");
    int corr_bias = json_is_string(tm) && strcmp(json_string_value(tm), "noaux_tc") == 0;

    int64_t nmoe = 0;
    for (int64_t i = 0; i < L; i++)
        nmoe += nr > 0 && i >= first && i % freq == 0;
    int64_t ndense = L - nmoe;
    m->hidden = h, m->layers = L, m->heads = H, m->kv_heads = H, m->head_dim = nope + rope, m->inter = I;
    m->vocab = V, m->tied = tied, m->dense_layers = ndense, m->moe_layers = nmoe;
    m->n_routed = nr, m->n_shared = ns, m->topk = k, m->moe_inter = Im, m->mtp_layers = mtp;
    m->embed = (uint64_t)V * (uint64_t)h;
    m->largest = m->embed;

    /* Attention of every layer (MTP layers counted separately below). */
    if (qr > 0) {
        add_linear(m, "q_a_proj", h, qr, L, attn_bias, 0);
        add_linear(m, "q_b_proj", qr, H * (nope + rope), L, 0, 0);
    } else {
        add_linear(m, "q_proj", h, H * (nope + rope), L, 0, 0);
    }
    add_linear(m, "kv_a_proj_with_mqa", h, kvr + rope, L, attn_bias, 0);
    add_linear(m, "kv_b_proj", kvr, H * (nope + vd), L, 0, 0);
    add_linear(m, "o_proj", H * vd, h, L, attn_bias, 0);
    uint64_t attn_norms = (uint64_t)(qr > 0 ? qr : 0) + (uint64_t)kvr; /* q_a_layernorm, kv_a_layernorm */
    uint64_t attn_layer = lin_sum(m, 0) / (uint64_t)L + attn_norms;
    m->attn = attn_layer * (uint64_t)L;

    size_t at = m->nlinear;
    add_linear(m, "gate_proj", h, I, ndense, 0, 0);
    add_linear(m, "up_proj", h, I, ndense, 0, 0);
    add_linear(m, "down_proj", I, h, ndense, 0, 0);
    m->mlp = lin_sum(m, at);

    uint64_t moe_mlp_layer = 0;
    if (nr > 0) {
        at = m->nlinear;
        add_linear(m, "gate_proj", h, Im * ns, nmoe, 0, 0); /* shared experts */
        add_linear(m, "up_proj", h, Im * ns, nmoe, 0, 0);
        add_linear(m, "down_proj", Im * ns, h, nmoe, 0, 0);
        m->shared = lin_sum(m, at);
        at = m->nlinear;
        add_linear(m, "gate_proj", h, Im, nr * nmoe, 0, 1); /* routed experts */
        add_linear(m, "up_proj", h, Im, nr * nmoe, 0, 1);
        add_linear(m, "down_proj", Im, h, nr * nmoe, 0, 1);
        m->routed = lin_sum(m, at);
        uint64_t gate = (uint64_t)nr * (uint64_t)h + (corr_bias ? (uint64_t)nr : 0);
        m->router = gate * (uint64_t)nmoe;
        if (nmoe > 0)
            moe_mlp_layer = (m->shared + m->routed) / (uint64_t)nmoe + gate;
    }
    m->norms = (uint64_t)L * 2 * (uint64_t)h + (uint64_t)h;
    if (!tied) {
        add_linear(m, "lm_head", h, V, 1, 0, 0);
        m->lm_head = (uint64_t)V * (uint64_t)h;
    }
    if (mtp > 0 && nr > 0)
        m->mtp_unique = (uint64_t)mtp * (attn_layer + 2 * (uint64_t)h + moe_mlp_layer /* decoder layer */
                                         + 3 * (uint64_t)h                         /* enorm, hnorm, head norm */
                                         + 2 * (uint64_t)h * (uint64_t)h);         /* eh_proj */
    return LATHE_OK;
}

static int model_from_root(json_t *root, const char *name, struct lathe_plan_model *m)
{
    memset(m, 0, sizeof *m);
    if (!json_is_object(root))
        return lathe_error(LATHE_ECONFIG, "%s: the top level must be a JSON object", name);
    json_t *mt = json_object_get(root, "model_type");
    if (!json_is_string(mt))
        return lathe_error(LATHE_ECONFIG, "%s: missing 'model_type' (llama, mistral, qwen2, gpt2 or deepseek_v3)", name);
    struct cfg c = { root, name, json_string_value(mt) };
    snprintf(m->type, sizeof m->type, "%s", c.type);
    int rc;
    if (!strcmp(c.type, "llama") || !strcmp(c.type, "mistral") || !strcmp(c.type, "qwen2"))
        rc = count_llama(&c, m);
    else if (!strcmp(c.type, "gpt2"))
        rc = count_gpt2(&c, m);
    else if (!strcmp(c.type, "deepseek_v3"))
        rc = count_deepseek(&c, m);
    else
        return lathe_error(LATHE_EUNSUPPORTED,
                           "%s: model_type '%s' is not known to the planner (llama, mistral, qwen2, gpt2, deepseek_v3)",
                           name, c.type);
    if (rc != LATHE_OK)
        return rc;
    m->total = m->embed + m->lm_head + m->attn + m->mlp + m->shared + m->routed + m->router + m->norms;
    m->active = m->total;
    if (m->n_routed > 0)
        m->active = m->total - m->routed + m->routed / (uint64_t)m->n_routed * (uint64_t)m->topk;
    return LATHE_OK;
}

int lathe_plan_model_parse(const char *text, const char *name, struct lathe_plan_model *m)
{
    json_error_t e;
    json_t *root = json_loads(text, 0, &e);
    if (!root)
        return lathe_error(LATHE_ECONFIG, "%s:%d: %s", name, e.line, e.text);
    int rc = model_from_root(root, name, m);
    json_decref(root);
    return rc;
}

int lathe_plan_model_load(const char *path, struct lathe_plan_model *m)
{
    json_error_t e;
    json_t *root = json_load_file(path, 0, &e);
    if (!root) {
        memset(m, 0, sizeof *m);
        if (e.line <= 0)
            return lathe_error(LATHE_EIO, "%s: %s", path, e.text);
        return lathe_error(LATHE_ECONFIG, "%s:%d: %s", path, e.line, e.text);
    }
    int rc = model_from_root(root, path, m);
    json_decref(root);
    return rc;
}

void lathe_plan_model_raw(struct lathe_plan_model *m, uint64_t psi)
{
    memset(m, 0, sizeof *m);
    snprintf(m->type, sizeof m->type, "raw");
    m->total = m->active = m->largest = psi;
}

/* ---- options -------------------------------------------------------------- */

void lathe_plan_opts_init(struct lathe_plan_opts *o)
{
    memset(o, 0, sizeof *o);
    o->strategy = LATHE_PLAN_DDP;
    o->precision = LATHE_PLAN_BF16;
    o->devices = 1;
    o->expert_parallel = 1;
    o->batch = 1;
    o->seq = 2048;
    snprintf(o->lora_targets, sizeof o->lora_targets, "all-linear");
}

const char *lathe_plan_strategy_name(int s)
{
    static const char *n[] = { "ddp", "zero1", "zero2", "zero3" };
    return s >= 0 && s <= 3 ? n[s] : "?";
}

const char *lathe_plan_precision_name(int p)
{
    static const char *n[] = { "bf16", "fp16", "fp32" };
    return p >= 0 && p <= 2 ? n[p] : "?";
}

int lathe_plan_parse_bytes(const char *s, uint64_t *out)
{
    char *end;
    if (!s || !*s || isspace((unsigned char)*s) || *s == '-')
        return lathe_error(LATHE_EINVAL, "'%s' is not a size (e.g. 80G, 80GiB, 80GB, 81920M)", s ? s : "");
    double d = strtod(s, &end);
    double mul = 1;
    char u = (char)toupper((unsigned char)*end);
    const char *rest = end;
    if (u == 'K' || u == 'M' || u == 'G' || u == 'T') {
        int p = u == 'K' ? 1 : u == 'M' ? 2 : u == 'G' ? 3 : 4;
        rest = end + 1;
        if ((rest[0] == 'i' || rest[0] == 'I') && (rest[1] == 'B' || rest[1] == 'b') && !rest[2])
            mul = pow(1024, p), rest += 2;
        else if ((rest[0] == 'B' || rest[0] == 'b') && !rest[1])
            mul = pow(1000, p), rest += 1; /* GB: decimal, as disk and marketing sizes */
        else
            mul = pow(1024, p); /* G: binary, as nvidia-smi and allocators count */
    } else if (u == 'B') {
        rest = end + 1;
    }
    if (end == s || *rest || !(d > 0) || d * mul > 1.8e19)
        return lathe_error(LATHE_EINVAL, "'%s' is not a size (e.g. 80G, 80GiB, 80GB, 81920M)", s);
    *out = (uint64_t)llround(d * mul);
    return LATHE_OK;
}

/* ---- LoRA targets --------------------------------------------------------- */

/* Adapter parameters r·(in + out) per adapted linear (PEFT LoRA: A is r x in,
 * B is out x r). "all-linear" follows PEFT: every linear but the output
 * head. Splits the count into routed-expert adapters and the rest. */
static int lora_params(const struct lathe_plan_model *m, int64_t r, const char *targets, uint64_t *dense,
                       uint64_t *routed)
{
    *dense = *routed = 0;
    int all = strcmp(targets, "all-linear") == 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", targets);
    int used[LATHE_PLAN_MAX_LINEARS] = { 0 };
    if (!all) {
        for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            while (*t == ' ')
                t++;
            int hit = 0;
            for (size_t i = 0; i < m->nlinear; i++)
                if (!strcmp(m->linear[i].name, t))
                    used[i] = 1, hit = 1;
            if (!hit) {
                char names[512] = "";
                for (size_t i = 0; i < m->nlinear; i++)
                    if (!strstr(names, m->linear[i].name) && strlen(names) + strlen(m->linear[i].name) + 3 < sizeof names)
                        strcat(strcat(names, names[0] ? ", " : ""), m->linear[i].name);
                return lathe_error(LATHE_EINVAL, "--lora-targets: '%s' is no linear layer of this %s model (its linears: %s; or all-linear)",
                                   t, m->type, names);
            }
        }
    }
    for (size_t i = 0; i < m->nlinear; i++) {
        const struct lathe_plan_linear *l = &m->linear[i];
        if (all ? !strcmp(l->name, "lm_head") : !used[i])
            continue;
        uint64_t n = (uint64_t)l->count * (uint64_t)r * (uint64_t)(l->in + l->out);
        *(l->routed ? routed : dense) += n;
    }
    if (*dense + *routed == 0)
        return lathe_error(LATHE_EINVAL, "--lora-targets '%s': this %s model has no linear layer to adapt", targets, m->type);
    return LATHE_OK;
}

/* ---- figures -------------------------------------------------------------- */

static uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

/* Human count: 671.03B, 494.03M. */
static void hnum(char *buf, size_t n, uint64_t v)
{
    if (v >= 1000000000ull)
        snprintf(buf, n, "%.2fB", v / 1e9);
    else if (v >= 1000000ull)
        snprintf(buf, n, "%.2fM", v / 1e6);
    else if (v >= 1000ull)
        snprintf(buf, n, "%.2fK", v / 1e3);
    else
        snprintf(buf, n, "%llu", (unsigned long long)v);
}

static void gib(char *buf, size_t n, uint64_t v) { snprintf(buf, n, "%.2f GiB", v / 1073741824.0); }

static void cat(char *dst, size_t n, const char *fmt, ...)
{
    size_t len = strlen(dst);
    if (len + 1 >= n)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst + len, n - len, fmt, ap);
    va_end(ap);
}

enum item { IT_PARAMS, IT_GRADS, IT_OPTIM };

/* Bytes of one item (params/grads/optimizer) for one group on one device,
 * and its formula terms appended to sym ("2·Ψd/N") and num ("2×17.13B/24").
 * The stage decides whether the item is sharded: optimizer from stage 1,
 * gradients from 2, parameters at 3 (ZeRO §3.1 and Fig. 1). Shards are padded to whole
 * elements, as DeepSpeed pads its flat partitions. */
static uint64_t item_bytes(const struct lathe_plan_group *g, enum item it, int stage, int bytes, int64_t N,
                           int64_t E, char *sym, char *num, size_t n)
{
    int sharded = it == IT_PARAMS ? stage >= 3 : it == IT_GRADS ? stage >= 2 : stage >= 1;
    uint64_t elems = sharded ? ceil_div(g->psi, (uint64_t)g->shard) : g->psi;
    char hn[32];
    hnum(hn, sizeof hn, g->psi);
    const char *plus = sym[0] ? " + " : "";
    if (!sharded)
        cat(sym, n, "%s%d·%s", plus, bytes, g->sym), cat(num, n, "%s%d×%s", plus, bytes, hn);
    else if (g->shard == N)
        cat(sym, n, "%s%d·%s/N", plus, bytes, g->sym), cat(num, n, "%s%d×%s/%lld", plus, bytes, hn, (long long)g->shard);
    else
        cat(sym, n, "%s%d·%s/(N/E)", plus, bytes, g->sym), cat(num, n, "%s%d×%s/%lld", plus, bytes, hn, (long long)g->shard);
    (void)E;
    return (uint64_t)bytes * elems;
}

/* Korthikanti et al. 2022 (arXiv:2205.05198) eq. 1, one transformer layer, in bytes, with the
 * 16-bit element size `ab` as a parameter (4 for fp32 activations):
 *   attention 11sbh + 5as²b = sbh(5ab + 1) + as²b(2ab + 1)
 *   two layer norms 4sbh    = 2ab·sbh
 *   MLP 19sbh               = sbh(ab + 1) + 2ab·sbI   (I = 4h in the paper)
 * so a dense layer is sbh(8ab + 2) + 2ab·sbI + (2ab + 1)as²b, which is
 * sbh(34 + 5as/h) for ab = 2 and I = 4h. An MoE layer keeps the attention
 * and norms; its MLP stores, for each of the k routed copies of a token and
 * for the shared expert, the 16-bit expert input (ab·h) and the two
 * expert-width tensors (2ab·I_moe), plus the dropout-mask byte per h and the
 * fp32 router scores (4·n_routed). */
static uint64_t attn_s2(const struct lathe_plan_model *m, int64_t s, int64_t b, int ab, int fa)
{
    return fa ? 0 : (uint64_t)(2 * ab + 1) * (uint64_t)m->heads * (uint64_t)s * (uint64_t)s * (uint64_t)b;
}

static uint64_t act_dense(const struct lathe_plan_model *m, int64_t s, int64_t b, int ab, int fa)
{
    uint64_t sb = (uint64_t)s * (uint64_t)b;
    return sb * ((uint64_t)(8 * ab + 2) * (uint64_t)m->hidden + (uint64_t)(2 * ab) * (uint64_t)m->inter) +
           attn_s2(m, s, b, ab, fa);
}

static uint64_t act_moe(const struct lathe_plan_model *m, int64_t s, int64_t b, int ab, int fa)
{
    uint64_t sb = (uint64_t)s * (uint64_t)b, h = (uint64_t)m->hidden;
    uint64_t copies = (uint64_t)m->topk + (m->n_shared > 0 ? 1 : 0);
    uint64_t width = (uint64_t)m->topk * (uint64_t)m->moe_inter + (uint64_t)m->n_shared * (uint64_t)m->moe_inter;
    uint64_t mlp = copies * (uint64_t)ab * h + (uint64_t)(2 * ab) * width + h + 4 * (uint64_t)m->n_routed;
    return sb * ((uint64_t)(7 * ab + 1) * h + mlp) + attn_s2(m, s, b, ab, fa);
}

static void activations(const struct lathe_plan_model *m, const struct lathe_plan_opts *o, struct lathe_plan_result *r)
{
    if (m->layers == 0) {
        snprintf(r->f_activations, sizeof r->f_activations, "none (no layers given)");
        return;
    }
    int ab = o->precision == LATHE_PLAN_FP32 ? 4 : 2;
    int64_t s = o->seq, b = o->batch;
    int fa = o->flash_attention;
    uint64_t h = (uint64_t)m->hidden;
    r->act_layer_dense = m->dense_layers ? act_dense(m, s, b, ab, fa) : 0;
    r->act_layer_moe = m->moe_layers ? act_moe(m, s, b, ab, fa) : 0;
    /* Korthikanti et al.: the loss keeps its logits in fp32, 4·s·b·v. */
    r->act_logits = 4 * (uint64_t)s * (uint64_t)b * (uint64_t)m->vocab;
    char g1[32], g2[32], g3[32], g4[32], dense_f[192] = "", moe_f[192] = "";
    gib(g3, sizeof g3, r->act_logits);
    /* The dense layer's coefficients, folded to the paper's 34 when I = 4h. */
    char s2h[32] = "", s2[32] = "";
    if (!fa) {
        snprintf(s2h, sizeof s2h, " + %d·a·s/h", 2 * ab + 1);
        snprintf(s2, sizeof s2, " + %d·a·s", 2 * ab + 1);
    }
    if (m->dense_layers) {
        gib(g1, sizeof g1, r->act_layer_dense);
        if (m->inter == 4 * m->hidden)
            snprintf(dense_f, sizeof dense_f, "s·b·h·(%d%s)", 16 * ab + 2, s2h);
        else
            snprintf(dense_f, sizeof dense_f, "s·b·h·(%d + %d·I/h%s), I/h = %.3f", 8 * ab + 2, 2 * ab, s2h,
                     (double)m->inter / (double)h);
    }
    if (m->moe_layers) {
        gib(g2, sizeof g2, r->act_layer_moe);
        snprintf(moe_f, sizeof moe_f, "s·b·(%d·h%s + %lld·%d·h + %d·(%lld+%lld)·I_moe + h + 4·n_routed)", 7 * ab + 1,
                 s2, (long long)(m->topk + (m->n_shared > 0)), ab, 2 * ab, (long long)m->topk, (long long)m->n_shared);
    }
    const char *src = fa ? "Korthikanti et al. 2022 eq. 1, s² terms dropped for flash attention"
                         : "Korthikanti et al. 2022 eq. 1";
    if (!o->checkpointing) {
        r->activations = (uint64_t)m->dense_layers * r->act_layer_dense + (uint64_t)m->moe_layers * r->act_layer_moe +
                         r->act_logits;
        snprintf(r->f_activations, sizeof r->f_activations, "%s, s=%lld b=%lld h=%lld a=%lld: ", src, (long long)s,
                 (long long)b, (long long)h, (long long)m->heads);
        if (m->dense_layers)
            cat(r->f_activations, sizeof r->f_activations, "%lld dense × %s [%s each] + ", (long long)m->dense_layers,
                dense_f, g1);
        if (m->moe_layers)
            cat(r->f_activations, sizeof r->f_activations, "%lld MoE (k=%lld routed + %lld shared) × %s [%s each] + ",
                (long long)m->moe_layers, (long long)m->topk, (long long)m->n_shared, moe_f, g2);
        cat(r->f_activations, sizeof r->f_activations, "fp32 logits 4·s·b·V [%s]", g3);
    } else {
        /* Korthikanti et al., full recomputation: each layer keeps its input (2sbh in
         * 16-bit); backward recomputes one layer at a time, so one layer's
         * full activations are live on top. */
        r->act_stored = (uint64_t)ab * (uint64_t)s * (uint64_t)b * h * (uint64_t)m->layers;
        uint64_t peak = r->act_layer_dense > r->act_layer_moe ? r->act_layer_dense : r->act_layer_moe;
        r->activations = r->act_stored + peak + r->act_logits;
        gib(g1, sizeof g1, r->act_stored);
        gib(g4, sizeof g4, peak);
        snprintf(r->f_activations, sizeof r->f_activations,
                 "checkpointing (Korthikanti et al. 2022, full recomputation), s=%lld b=%lld h=%lld: "
                 "%d·s·b·h × %lld layers [%s] + one layer recomputed in backward, %s [%s] + fp32 logits 4·s·b·V [%s]",
                 (long long)s, (long long)b, (long long)h, ab, (long long)m->layers, g1,
                 r->act_layer_moe >= r->act_layer_dense ? moe_f : dense_f, g4, g3);
    }
}

int lathe_plan_compute(const struct lathe_plan_model *m, const struct lathe_plan_opts *o, struct lathe_plan_result *r)
{
    memset(r, 0, sizeof *r);
    int64_t N = o->devices, E = o->expert_parallel;
    if (o->strategy < LATHE_PLAN_DDP || o->strategy > LATHE_PLAN_ZERO3)
        return lathe_error(LATHE_EINVAL, "--strategy: unknown strategy %d (ddp, zero1, zero2, zero3)", o->strategy);
    if (o->precision < LATHE_PLAN_BF16 || o->precision > LATHE_PLAN_FP32)
        return lathe_error(LATHE_EINVAL, "--precision: unknown precision %d (bf16, fp16, fp32)", o->precision);
    if (N < 1)
        return lathe_error(LATHE_EINVAL, "--devices must be at least 1 (got %lld)", (long long)N);
    if (E < 1)
        return lathe_error(LATHE_EINVAL, "--expert-parallel must be at least 1 (got %lld)", (long long)E);
    if (o->batch < 1 || o->seq < 1)
        return lathe_error(LATHE_EINVAL, "--batch and --seq must be at least 1 (got %lld and %lld)", (long long)o->batch,
                           (long long)o->seq);
    if (o->lora_rank < 0)
        return lathe_error(LATHE_EINVAL, "--lora-rank must be at least 0 (got %lld)", (long long)o->lora_rank);
    if (o->offload && o->strategy == LATHE_PLAN_DDP)
        return lathe_error(LATHE_EINVAL, "--offload needs a ZeRO strategy (zero1, zero2 or zero3): ddp keeps the optimizer "
                                         "on every device and cannot offload it");
    if (E > 1) {
        if (m->n_routed == 0 || m->moe_layers == 0)
            return lathe_error(LATHE_EINVAL, "--expert-parallel %lld: this %s model has no routed experts to split",
                               (long long)E, m->type);
        if (m->n_routed % E != 0)
            return lathe_error(LATHE_EINVAL, "--expert-parallel %lld does not divide the %lld routed experts",
                               (long long)E, (long long)m->n_routed);
        if (N % E != 0)
            return lathe_error(LATHE_EINVAL,
                               "--expert-parallel %lld does not divide --devices %lld (each expert-parallel group of E "
                               "devices holds all experts once; N must be a multiple of E)",
                               (long long)E, (long long)N);
    }

    /* Bytes per element (ZeRO §3.1 and Fig. 1; algorithms.md §5). Mixed precision:
     * 16-bit params and grads, K = 12 (fp32 master + m + v). fp32: 4-byte
     * params and grads, K = 8 (m + v; the params are the master). */
    int fp32 = o->precision == LATHE_PLAN_FP32;
    r->bytes_param = fp32 ? 4 : 2;
    r->bytes_grad = fp32 ? 4 : 2;
    r->bytes_optim = fp32 ? 8 : 12;
    r->bytes_frozen = fp32 ? 4 : 2;

    uint64_t ad = 0, ar = 0;
    if (o->lora_rank > 0) {
        int rc = lora_params(m, o->lora_rank, o->lora_targets, &ad, &ar);
        if (rc != LATHE_OK)
            return rc;
    }
    r->adapter = ad + ar;
    int lora = o->lora_rank > 0;
    r->trainable = lora ? r->adapter : m->total;

    /* Groups: routed experts (and their adapters) go E ways first, then the
     * strategy shards them over the N/E devices holding the same experts;
     * everything else is sharded over all N. */
    struct lathe_plan_group *g = r->group;
    size_t ng = 0;
#define GROUP(SYM, WHAT, PSI, SHARD, TRAIN)                                                                           \
    do {                                                                                                              \
        snprintf(g[ng].sym, sizeof g[ng].sym, "%s", SYM);                                                             \
        snprintf(g[ng].what, sizeof g[ng].what, "%s", WHAT);                                                          \
        g[ng].psi = (PSI), g[ng].shard = (SHARD), g[ng].trainable = (TRAIN);                                          \
        ng++;                                                                                                         \
    } while (0)
    if (E > 1) {
        GROUP("Ψd", lora ? "frozen base, all but routed experts" : "all but routed experts", m->total - m->routed, N, !lora);
        GROUP("Ψr", lora ? "frozen routed experts on one EP rank (routed/E)" : "routed experts on one EP rank (routed/E)",
              m->routed / (uint64_t)E, N / E, !lora);
        if (lora) {
            GROUP("Ψa", "LoRA adapters outside routed experts", ad, N, 1);
            if (ar)
                GROUP("Ψar", "LoRA adapters of routed experts on one EP rank (/E)", ar / (uint64_t)E, N / E, 1);
        }
    } else {
        GROUP("Ψ", lora ? "frozen base model" : "model", m->total, N, !lora);
        if (lora)
            GROUP("Ψa", "LoRA adapters", ad + ar, N, 1);
    }
#undef GROUP
    r->ngroups = ng;

    char sym[3][256] = { "", "", "" }, num[3][256] = { "", "", "" }, hsym[256] = "", hnumb[256] = "";
    int stage = o->strategy;
    for (size_t i = 0; i < ng; i++) {
        r->params += item_bytes(&g[i], IT_PARAMS, stage, g[i].trainable ? r->bytes_param : r->bytes_frozen, N, E,
                                sym[0], num[0], 256);
        if (!g[i].trainable)
            continue;
        r->grads += item_bytes(&g[i], IT_GRADS, stage, r->bytes_grad, N, E, sym[1], num[1], 256);
        if (o->offload)
            r->host += item_bytes(&g[i], IT_OPTIM, stage, r->bytes_optim, N, E, hsym, hnumb, 256);
        else
            r->optimizer += item_bytes(&g[i], IT_OPTIM, stage, r->bytes_optim, N, E, sym[2], num[2], 256);
    }
    activations(m, o, r);
    r->total = r->params + r->grads + r->optimizer + r->activations;

    const char *why_p = stage >= 3 ? "ZeRO-3 shards parameters" : "parameters replicated";
    const char *why_g = stage >= 2 ? "ZeRO-2/3 shard gradients" : "gradients replicated";
    const char *why_o = stage >= 1 ? "ZeRO-1/2/3 shard optimizer state" : "optimizer state replicated";
    char k_what[64];
    snprintf(k_what, sizeof k_what, fp32 ? "K = 8: Adam m + v in fp32" : "K = 12: fp32 master + Adam m + v");
    snprintf(r->f_params, sizeof r->f_params, "%s = %s  (%s%s)", sym[0], num[0], why_p,
             lora ? (fp32 ? "; frozen base fp32" : "; frozen base 16-bit") : "");
    if (r->trainable && sym[1][0])
        snprintf(r->f_grads, sizeof r->f_grads, "%s = %s  (%s%s)", sym[1], num[1], why_g,
                 lora ? "; adapters only" : "");
    else
        snprintf(r->f_grads, sizeof r->f_grads, "0");
    if (o->offload) {
        snprintf(r->f_optimizer, sizeof r->f_optimizer, "0  (offloaded to host)");
        snprintf(r->f_host, sizeof r->f_host, "%s = %s  (%s; %s; ZeRO-Offload keeps it in host memory)", hsym, hnumb,
                 k_what, why_o);
    } else {
        snprintf(r->f_optimizer, sizeof r->f_optimizer, "%s = %s  (%s; %s)", sym[2], num[2], k_what, why_o);
    }
    return LATHE_OK;
}

int lathe_plan_min_devices(const struct lathe_plan_model *m, const struct lathe_plan_opts *o, uint64_t device_bytes,
                           int64_t max_devices, int64_t *n)
{
    *n = 0;
    struct lathe_plan_opts t = *o;
    struct lathe_plan_result r;
    int64_t E = o->expert_parallel < 1 ? 1 : o->expert_parallel;
    int64_t hi = max_devices / E;
    if (hi < 1)
        return LATHE_OK;
    /* Every per-device figure is non-increasing in N (ceil(Ψ/N) only falls,
     * activations do not depend on N), so bisect over multiples of E. */
    t.devices = hi * E;
    int rc = lathe_plan_compute(m, &t, &r);
    if (rc != LATHE_OK)
        return rc;
    if (r.total > device_bytes)
        return LATHE_OK;
    int64_t lo = 1;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        t.devices = mid * E;
        rc = lathe_plan_compute(m, &t, &r);
        if (rc != LATHE_OK)
            return rc;
        if (r.total <= device_bytes)
            hi = mid;
        else
            lo = mid + 1;
    }
    *n = lo * E;
    return LATHE_OK;
}
