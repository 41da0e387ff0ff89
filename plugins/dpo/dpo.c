/* plugins/dpo/dpo.c — Direct Preference Optimisation (Rafailov et al.,
 * 2023), TRL's sigmoid loss with optional label smoothing (conservative
 * DPO). Facts: shared/reference/algorithms.md §1 (DPO).
 *
 * [data] plugin = jsonl-pref: each line {"prompt", "chosen", "rejected"},
 * each a string or a message list; a batch of B rows holds B/2 pairs, the
 * chosen responses in rows [0, B/2) and the rejected ones in [B/2, B)
 * (on N processes, the same within each process's B/N rows),
 * labels on the response tokens only, with the reference policy's
 * log-probabilities. [loss] plugin = dpo. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lathe/lathe.h>

/* Host access to tensors: a device buffer is reached only through the
 * backend's copy; on the CPU the tensor's own buffer is used as is. */
static void *host_write(lathe_tensor *t)
{
    if (t->device == LATHE_DEVICE_CPU)
        return t->data;
    void *h = malloc(lathe_tensor_nbytes(t) + 1);
    if (!h)
        lathe_error(LATHE_ENOMEM, "DPO: out of memory staging a tensor");
    return h;
}

/* Send a host_write buffer to t and release it. */
static int host_put(lathe_tensor *t, void *h)
{
    if (!h)
        return LATHE_ENOMEM;
    if (h == t->data)
        return LATHE_OK;
    int rc = lathe_backend()->copy(t->data, h, lathe_tensor_nbytes(t), 1);
    free(h);
    return rc;
}

struct seq {
    int32_t *ids;
    uint8_t *mask; /* 1 on response tokens */
    size_t n;
};

struct pair {
    struct seq chosen, rejected;
};

struct pref_data {
    const struct lathe_env *env;
    lathe_tokenizer *tk;
    struct pair *p;
    size_t np, ntrain;
    int64_t max_length;
    int format; /* -1: raw text */
    int shuffle;
    lathe_reference *ref;
    int64_t epoch, cursor, eval_cursor;
    int64_t *order;
    lathe_tensor *ref_logps; /* of the last batch (caller-owned) */
};

static void seq_free(struct seq *s)
{
    free(s->ids);
    free(s->mask);
}

/* prompt + response as token ids with the response masked in. */
static int encode_pair_side(struct pref_data *d, json_t *prompt, json_t *resp, struct seq *out, const char *where)
{
    int rc;
    if (d->format < 0) {
        if (!json_is_string(prompt) || !json_is_string(resp))
            return lathe_error(LATHE_EINVAL, "%s: without a chat template, prompt and responses must be strings", where);
        int32_t *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        const char *ps = json_string_value(prompt), *rs = json_string_value(resp);
        rc = lathe_tokenizer_encode(d->tk, ps, strlen(ps), 1, &a, &na);
        if (rc == LATHE_OK)
            rc = lathe_tokenizer_encode(d->tk, rs, strlen(rs), 0, &b, &nb);
        if (rc == LATHE_OK) {
            out->n = na + nb;
            out->ids = malloc(sizeof *out->ids * (out->n ? out->n : 1));
            out->mask = calloc(out->n ? out->n : 1, 1);
            if (!out->ids || !out->mask) {
                rc = lathe_error(LATHE_ENOMEM, "out of memory");
            } else {
                memcpy(out->ids, a, na * sizeof *a);
                memcpy(out->ids + na, b, nb * sizeof *b);
                memset(out->mask + na, 1, nb);
            }
        }
        free(a);
        free(b);
        return rc;
    }
    /* chat: prompt messages (or one user turn) then the assistant response */
    struct lathe_chat_msg m[64];
    size_t n = 0;
    if (json_is_string(prompt)) {
        m[n++] = (struct lathe_chat_msg){.role = "user", .content = json_string_value(prompt)};
    } else if (json_is_array(prompt) && json_array_size(prompt) < 60) {
        for (size_t i = 0; i < json_array_size(prompt); i++) {
            json_t *x = json_array_get(prompt, i);
            m[n].role = json_string_value(json_object_get(x, "role"));
            m[n].content = json_string_value(json_object_get(x, "content"));
            if (!m[n].role || !m[n].content)
                return lathe_error(LATHE_EINVAL, "%s: prompt message %zu needs string \"role\" and \"content\"", where, i + 1);
            n++;
        }
    } else {
        return lathe_error(LATHE_EINVAL, "%s: \"prompt\" must be a string or a list of messages", where);
    }
    if (json_is_string(resp)) {
        m[n++] = (struct lathe_chat_msg){.role = "assistant", .content = json_string_value(resp)};
    } else if (json_is_array(resp) && json_array_size(resp) >= 1) {
        json_t *x = json_array_get(resp, json_array_size(resp) - 1);
        m[n].role = json_string_value(json_object_get(x, "role"));
        m[n].content = json_string_value(json_object_get(x, "content"));
        if (!m[n].role || !m[n].content || strcmp(m[n].role, "assistant") != 0)
            return lathe_error(LATHE_EINVAL, "%s: a response list must end with an assistant message", where);
        n++;
    } else {
        return lathe_error(LATHE_EINVAL, "%s: responses must be strings or message lists", where);
    }
    rc = lathe_chat_encode(d->tk, d->format, m, n, 0, &out->ids, &out->mask, &out->n);
    if (rc == LATHE_OK) {
        /* only the final assistant turn is the response being compared */
        size_t last = out->n;
        while (last > 0 && !out->mask[last - 1])
            last--;
        size_t first = last;
        while (first > 0 && out->mask[first - 1])
            first--;
        for (size_t i = 0; i < first; i++)
            out->mask[i] = 0;
    }
    return rc;
}

static int load_pairs(struct pref_data *d, const char *path, double eval_fraction)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return lathe_error(LATHE_EIO, "%s: cannot open the preference file", path);
    char *line = NULL, where[4200];
    size_t cap = 0, lineno = 0, alloc = 0;
    ssize_t len;
    int rc = LATHE_OK;
    while (rc == LATHE_OK && (len = getline(&line, &cap, f)) > 0) {
        lineno++;
        if (len <= 1 && line[0] == '\n')
            continue;
        snprintf(where, sizeof where, "%s:%zu", path, lineno);
        json_error_t e;
        json_t *o = json_loads(line, 0, &e);
        if (!o || !json_is_object(o)) {
            rc = lathe_error(LATHE_EINVAL, "%s: %s", where, o ? "expected a JSON object" : e.text);
            json_decref(o);
            break;
        }
        json_t *pr = json_object_get(o, "prompt"), *ch = json_object_get(o, "chosen"), *rj = json_object_get(o, "rejected");
        if (!pr || !ch || !rj) {
            rc = lathe_error(LATHE_EINVAL, "%s: needs \"prompt\", \"chosen\" and \"rejected\"", where);
        } else {
            if (d->np == alloc) {
                alloc = alloc ? 2 * alloc : 256;
                struct pair *p = realloc(d->p, alloc * sizeof *p);
                if (!p)
                    rc = lathe_error(LATHE_ENOMEM, "out of memory");
                else
                    d->p = p;
            }
            if (rc == LATHE_OK) {
                struct pair *p = &d->p[d->np];
                memset(p, 0, sizeof *p);
                rc = encode_pair_side(d, pr, ch, &p->chosen, where);
                if (rc == LATHE_OK)
                    rc = encode_pair_side(d, pr, rj, &p->rejected, where);
                if (rc == LATHE_OK)
                    d->np++;
                else {
                    seq_free(&p->chosen);
                    seq_free(&p->rejected);
                }
            }
        }
        json_decref(o);
    }
    free(line);
    fclose(f);
    if (rc == LATHE_OK && d->np < 2)
        rc = lathe_error(LATHE_EINVAL, "%s: %zu preference pairs; need at least 2", path, d->np);
    if (rc == LATHE_OK)
        d->ntrain = d->np - (size_t)floor(eval_fraction * (double)d->np);
    return rc;
}

static void pref_destroy(void *self)
{
    struct pref_data *d = self;
    if (!d)
        return;
    for (size_t i = 0; i < d->np; i++) {
        seq_free(&d->p[i].chosen);
        seq_free(&d->p[i].rejected);
    }
    free(d->p);
    free(d->order);
    lathe_tensor_free(d->ref_logps);
    lathe_reference_close(d->ref);
    lathe_tokenizer_free(d->tk);
    free(d);
}

static void reshuffle(struct pref_data *d)
{
    for (size_t i = 0; i < d->ntrain; i++)
        d->order[i] = (int64_t)i;
    if (!d->shuffle)
        return;
    lathe_rng r;
    lathe_rng_seed(&r, d->env->seed * 1000003ULL + (uint64_t)d->epoch);
    for (size_t i = d->ntrain; i > 1; i--) {
        size_t j = lathe_rng_below(&r, i);
        int64_t t = d->order[i - 1];
        d->order[i - 1] = d->order[j];
        d->order[j] = t;
    }
}

static int pref_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    struct pref_data *d = calloc(1, sizeof *d);
    if (!d)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    d->env = env;
    static const char *const templates[] = {"auto", "raw", "chatml", "deepseek-r1", "llama3", NULL};
    const char *path, *tok;
    int tmpl;
    double eval_fraction;
    int rc;
    if ((rc = lathe_cfg_path(cfg, "path", NULL, &path)) || (rc = lathe_cfg_path(cfg, "tokenizer", "", &tok)) ||
        (rc = lathe_cfg_choice(cfg, "template", "auto", templates, &tmpl)) ||
        (rc = lathe_cfg_int(cfg, "max_length", 512, 2, 1 << 20, &d->max_length)) ||
        (rc = lathe_cfg_float(cfg, "eval_fraction", 0.1, 0.0, 0.5, &eval_fraction)) ||
        (rc = lathe_cfg_bool(cfg, "shuffle", 1, &d->shuffle)))
        goto fail;
    if (env->batch_size % (2 * env->world_size) != 0) {
        rc = lathe_cfg_error(cfg, "plugin", "[train] batch_size %lld must be a multiple of %d: each pair takes two rows%s",
                             (long long)env->batch_size, 2 * env->world_size,
                             env->world_size > 1 ? " and every process the same number of pairs" : "");
        goto fail;
    }
    if (!tok[0]) {
        lathe_section *ms = lathe_config_section(env->config, "model");
        if (!lathe_section_has(ms, "pretrained")) {
            rc = lathe_cfg_error(cfg, "tokenizer", "no tokenizer: set it, or use a [model] with pretrained = DIR");
            goto fail;
        }
        if ((rc = lathe_cfg_path(ms, "pretrained", NULL, &tok)))
            goto fail;
    }
    if ((rc = lathe_tokenizer_load(&d->tk, tok)))
        goto fail;
    d->format = -1;
    if (tmpl == 0 && lathe_chat_format_detect(tok, d->tk, &d->format) != LATHE_OK)
        d->format = -1;
    else if (tmpl >= 2)
        d->format = tmpl == 2 ? LATHE_CHAT_CHATML : tmpl == 3 ? LATHE_CHAT_DEEPSEEK_R1 : LATHE_CHAT_LLAMA3;
    if ((rc = load_pairs(d, path, eval_fraction)))
        goto fail;
    if ((rc = lathe_reference_open(&d->ref, env)))
        goto fail;
    if (!(d->order = calloc(d->ntrain, sizeof *d->order))) {
        rc = lathe_error(LATHE_ENOMEM, "out of memory");
        goto fail;
    }
    reshuffle(d);
    *self = d;
    return LATHE_OK;
fail:
    pref_destroy(d);
    return rc;
}

/* Rows: chosen of each pair, then rejected; truncated to max_length. With
 * `blocks` > 1 (a training batch that the loop shares among that many
 * processes, each taking a contiguous block of rows) the layout repeats per
 * block, so that every process holds whole pairs: chosen of its pairs,
 * then their rejected. */
static int pack(struct pref_data *d, const struct pair *const *pairs, int64_t P, int64_t blocks,
                struct lathe_batch *b)
{
    if (P % blocks != 0)
        return lathe_error(LATHE_EINVAL, "jsonl-pref: %lld pairs do not divide among %lld processes", (long long)P,
                           (long long)blocks);
    const int64_t Pb = P / blocks;
    int64_t B = 2 * P, T = 1;
    for (int64_t i = 0; i < P; i++) {
        int64_t a = (int64_t)pairs[i]->chosen.n, r = (int64_t)pairs[i]->rejected.n;
        T = a > T ? a : T;
        T = r > T ? r : T;
    }
    if (T > d->max_length)
        T = d->max_length;
    b->B = B;
    b->T = T;
    b->input_ids = lathe_tensor_new2(LATHE_I32, B, T);
    b->labels = lathe_tensor_new2(LATHE_I32, B, T);
    b->positions = lathe_tensor_new2(LATHE_I32, B, T);
    b->segments = lathe_tensor_new2(LATHE_I32, B, T);
    if (!b->input_ids || !b->labels || !b->positions || !b->segments)
        return LATHE_ENOMEM;
    int32_t *hids = host_write(b->input_ids), *hlab = host_write(b->labels);
    int32_t *hpos = host_write(b->positions), *hseg = host_write(b->segments);
    int64_t ntok = 0;
    for (int64_t r = 0; hids && hlab && hpos && hseg && r < B; r++) {
        int64_t w = r / (2 * Pb), k = r % (2 * Pb);
        const struct seq *s = k < Pb ? &pairs[w * Pb + k]->chosen : &pairs[w * Pb + k - Pb]->rejected;
        int64_t n = (int64_t)s->n < T ? (int64_t)s->n : T;
        int32_t *ids = hids + r * T, *lab = hlab + r * T;
        int32_t *pos = hpos + r * T, *seg = hseg + r * T;
        for (int64_t t = 0; t < T; t++) {
            ids[t] = t < n ? s->ids[t] : 0;
            pos[t] = t < n ? (int32_t)t : 0;
            seg[t] = t < n ? 0 : -1;
            lab[t] = t + 1 < n && s->mask[t + 1] ? s->ids[t + 1] : LATHE_IGNORE_INDEX;
            ntok += lab[t] != LATHE_IGNORE_INDEX;
        }
    }
    /* every buffer goes (host_put frees a staging one) before any error */
    int r1 = host_put(b->input_ids, hids), r2 = host_put(b->labels, hlab);
    int r3 = host_put(b->positions, hpos), r4 = host_put(b->segments, hseg);
    if (r1 || r2 || r3 || r4)
        return r1 ? r1 : r2 ? r2 : r3 ? r3 : r4;
    b->ntokens = ntok;
    lathe_tensor_free(d->ref_logps);
    d->ref_logps = lathe_reference_logprobs(d->ref, b, 1.0f);
    if (!d->ref_logps)
        return lathe_error_prefix(LATHE_EINVAL, "DPO reference log-probs");
    b->ref_logps = d->ref_logps;
    return LATHE_OK;
}

static int pref_next(void *self, int split, int64_t B, struct lathe_batch *batch)
{
    struct pref_data *d = self;
    int64_t P = B / 2;
    if (P < 1)
        return lathe_error(LATHE_EINVAL, "jsonl-pref: a batch needs at least 2 rows (one pair)");
    const struct pair **ps = calloc((size_t)P, sizeof *ps);
    if (!ps)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    int64_t n = 0;
    if (split == LATHE_SPLIT_EVAL) {
        int64_t neval = (int64_t)(d->np - d->ntrain);
        if (d->eval_cursor >= neval) {
            d->eval_cursor = 0;
            free(ps);
            return LATHE_EOF;
        }
        for (; n < P && d->eval_cursor < neval; n++)
            ps[n] = &d->p[d->ntrain + (size_t)d->eval_cursor++];
    } else {
        for (; n < P; n++) {
            if (d->cursor == (int64_t)d->ntrain) {
                d->epoch++;
                d->cursor = 0;
                reshuffle(d);
            }
            ps[n] = &d->p[d->order[d->cursor++]];
        }
    }
    /* training batches are shared among the processes (the loop gives
     * each a contiguous block of rows); evaluation runs whole everywhere */
    int rc = pack(d, ps, n, split == LATHE_SPLIT_TRAIN ? d->env->world_size : 1, batch);
    free(ps);
    return rc;
}

static int pref_info(void *self, struct lathe_data_info *info)
{
    struct pref_data *d = self;
    info->vocab_size = lathe_tokenizer_vocab_size(d->tk);
    info->seq_len = 0;
    info->train_items = (int64_t)d->ntrain;
    info->eval_items = (int64_t)(d->np - d->ntrain);
    return LATHE_OK;
}

static int pref_save(void *self, lathe_state *st)
{
    struct pref_data *d = self;
    int rc = lathe_state_put_i64(st, "epoch", d->epoch);
    rc = rc ? rc : lathe_state_put_i64(st, "cursor", d->cursor);
    return rc ? rc : lathe_state_put_i64(st, "pairs", (int64_t)d->np);
}

static int pref_load(void *self, lathe_state *st)
{
    struct pref_data *d = self;
    int64_t np;
    int rc = lathe_state_get_i64(st, "pairs", &np);
    if (rc == LATHE_OK && np != (int64_t)d->np)
        return lathe_error(LATHE_EINVAL, "the checkpoint was made with %lld pairs, the file now has %zu; resume with the same data",
                           (long long)np, d->np);
    rc = rc ? rc : lathe_state_get_i64(st, "epoch", &d->epoch);
    rc = rc ? rc : lathe_state_get_i64(st, "cursor", &d->cursor);
    if (rc == LATHE_OK)
        reshuffle(d);
    return rc;
}

static const struct lathe_data_ops pref_ops = {
    .size = sizeof(struct lathe_data_ops),
    .create = pref_create,
    .destroy = pref_destroy,
    .info = pref_info,
    .next = pref_next,
    .state_save = pref_save,
    .state_load = pref_load,
};

/* ------------------------------------------------------------------ */

struct dpo {
    double beta, smoothing;
};

static int dpo_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    (void)env;
    struct dpo *l = calloc(1, sizeof *l);
    if (!l)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    int rc;
    if ((rc = lathe_cfg_float(cfg, "beta", 0.1, 1e-6, 1e6, &l->beta)) ||
        (rc = lathe_cfg_float(cfg, "label_smoothing", 0.0, 0.0, 0.5, &l->smoothing))) {
        free(l);
        return rc;
    }
    *self = l;
    return LATHE_OK;
}

static void dpo_destroy(void *self) { free(self); }

/* z = beta ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)));
 * loss = mean(-(1 - s) log σ(z) - s log σ(-z)). */
static lathe_tensor *dpo_forward(void *self, lathe_tensor *logits, const struct lathe_batch *b)
{
    struct dpo *l = self;
    if (!b->ref_logps || b->B % 2 != 0) {
        lathe_error(LATHE_EINVAL, "[loss] dpo: the batch holds no preference pairs; use [data] plugin = jsonl-pref");
        return NULL;
    }
    const int64_t B = b->B, T = b->T, P = B / 2;
    lathe_tensor *ones = lathe_tensor_new2(LATHE_F32, T, 1);
    float *h1 = ones ? host_write(ones) : NULL;
    for (int64_t t = 0; h1 && t < T; t++)
        h1[t] = 1.0f;
    if (!h1 || host_put(ones, h1) != LATHE_OK)
        return NULL;
    lathe_tensor *logp = lathe_token_logprobs(logits, b->labels, LATHE_IGNORE_INDEX);
    /* per-row sums of (policy - reference) log-probs: [B, T] · 1 = [B, 1] */
    lathe_tensor *rows = lathe_reshape(lathe_matmul(lathe_sub(logp, b->ref_logps), ones, 0), 1, (int64_t[]){B});
    lathe_tensor *chosen = lathe_narrow(rows, 0, 0, P), *rejected = lathe_narrow(rows, 0, P, P);
    lathe_tensor *z = lathe_scale(lathe_sub(chosen, rejected), (float)l->beta);
    lathe_tensor *loss = lathe_scale(lathe_mean(lathe_log_sigmoid(z)), -(float)(1.0 - l->smoothing));
    if (l->smoothing > 0)
        loss = lathe_sub(loss, lathe_scale(lathe_mean(lathe_log_sigmoid(lathe_scale(z, -1.0f))), (float)l->smoothing));
    if (!loss)
        return NULL;
    /* TRL's diagnostics: implicit rewards beta * (policy - reference);
     * the B row sums come to the host */
    float *hr = malloc((size_t)B * sizeof *hr);
    if (!hr) {
        lathe_error(LATHE_ENOMEM, "DPO: out of memory reading the row sums");
        return NULL;
    }
    if (lathe_backend()->copy(hr, rows->data, (size_t)B * sizeof *hr, 0) != LATHE_OK) {
        free(hr);
        lathe_error_prefix(LATHE_ERR, "DPO: reading the row sums from the device");
        return NULL;
    }
    const float *c = hr, *r = hr + P;
    double cm = 0, rm = 0, acc = 0;
    for (int64_t i = 0; i < P; i++) {
        cm += l->beta * c[i];
        rm += l->beta * r[i];
        acc += c[i] > r[i];
    }
    lathe_report_scalar("dpo/chosen_reward", cm / (double)P);
    lathe_report_scalar("dpo/rejected_reward", rm / (double)P);
    lathe_report_scalar("dpo/reward_margin", (cm - rm) / (double)P);
    lathe_report_scalar("dpo/reward_accuracy", acc / (double)P);
    free(hr);
    return loss;
}

static const struct lathe_loss_ops dpo_ops = {
    .size = sizeof(struct lathe_loss_ops),
    .create = dpo_create,
    .destroy = dpo_destroy,
    .forward = dpo_forward,
};

static const struct lathe_component components[] = {
    {.kind = LATHE_KIND_DATA, .name = "jsonl-pref", .ops = &pref_ops},
    {.kind = LATHE_KIND_LOSS, .name = "dpo", .ops = &dpo_ops},
    {0},
};

LATHE_PLUGIN_DEFINE(dpo, .version = "0.1.0", .license = "MIT",
                    .description = "DPO: preference pairs with reference log-probs, and the sigmoid DPO loss",
                    .components = components)
