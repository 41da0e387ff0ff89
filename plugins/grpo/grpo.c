/* plugins/grpo/grpo.c — Group Relative Policy Optimisation (Shao et al.,
 * "DeepSeekMath", 2024) without a second training loop: a data component
 * that samples rollouts with the current policy and scores them, and a loss
 * component, the clipped surrogate with a KL penalty (TRL's GRPOTrainer
 * formulation; facts in shared/reference/algorithms.md §1).
 *
 * [data] plugin = grpo: every training batch of B rows is B/G prompts with
 * G completions each; rewards come from the run's [reward.*] functions;
 * advantages are group-normalised. [loss] plugin = grpo. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lathe/lathe.h>

/* ------------------------------------------------------------------ */
/* host access to tensors: a device buffer is reached only through the
 * backend's copy; on the CPU the tensor's own buffer is used as is. */

/* A host buffer holding t's values (free with host_done). */
static void *host_read(const lathe_tensor *t)
{
    if (t->device == LATHE_DEVICE_CPU)
        return t->data;
    size_t n = lathe_tensor_nbytes(t);
    void *h = malloc(n ? n : 1);
    if (!h) {
        lathe_error(LATHE_ENOMEM, "GRPO: out of memory reading a %zu-byte tensor", n);
        return NULL;
    }
    if (lathe_backend()->copy(h, t->data, n, 0) != LATHE_OK) {
        free(h);
        return NULL;
    }
    return h;
}

/* A host buffer to fill t through (uninitialised off the CPU); host_put
 * sends it. */
static void *host_write(lathe_tensor *t)
{
    if (t->device == LATHE_DEVICE_CPU)
        return t->data;
    void *h = malloc(lathe_tensor_nbytes(t) + 1);
    if (!h)
        lathe_error(LATHE_ENOMEM, "GRPO: out of memory staging a tensor");
    return h;
}

static void host_done(const lathe_tensor *t, const void *h)
{
    if (t && h != t->data)
        free((void *)h);
}

/* Send a host_write buffer to t and release it. */
static int host_put(lathe_tensor *t, void *h)
{
    if (!h)
        return LATHE_ENOMEM;
    int rc = h == t->data ? LATHE_OK : lathe_backend()->copy(t->data, h, lathe_tensor_nbytes(t), 1);
    host_done(t, h);
    return rc;
}

/* ------------------------------------------------------------------ */
/* prompts                                                             */

struct prompt {
    int32_t *ids;
    size_t n;
    char *answer;  /* may be NULL */
    char *fields;  /* the whole line, for reward plugins */
};

enum { SCALE_GROUP = 0, SCALE_BATCH, SCALE_NONE };

struct grpo_data {
    const struct lathe_env *env;
    lathe_tokenizer *tk;
    struct prompt *p;
    size_t np, ntrain;          /* prompts [0, ntrain) train, the rest eval */
    int64_t G, max_completion, top_k, num_iterations;
    double temperature, top_p, beta;
    int scale;
    int32_t stop[10];
    size_t nstop;
    lathe_reference *ref;
    const char *correct_reward;
    double correct_threshold;
    /* position: a pure function of (seed, epoch, cursor) plus the sampling rng */
    int64_t epoch, cursor, eval_cursor;
    int64_t *order;
    lathe_rng rng;
    /* the last rollouts, reused num_iterations times */
    struct lathe_batch cache;
    int64_t cache_uses;
};

static void prompt_free(struct prompt *p)
{
    free(p->ids);
    free(p->answer);
    free(p->fields);
}

/* One JSONL line: {"prompt": "text" | [messages], "answer": "..."} or
 * {"messages": [...], "answer": ...}. */
static int parse_prompt(struct grpo_data *d, int format, const char *path, size_t lineno, const char *line,
                        struct prompt *out)
{
    json_error_t e;
    json_t *o = json_loads(line, 0, &e);
    int rc = LATHE_OK;
    if (!o || !json_is_object(o)) {
        rc = lathe_error(LATHE_EINVAL, "%s:%zu: %s", path, lineno, o ? "expected a JSON object" : e.text);
        json_decref(o);
        return rc;
    }
    json_t *pr = json_object_get(o, "prompt");
    if (!pr)
        pr = json_object_get(o, "messages");
    json_t *ans = json_object_get(o, "answer");
    if (ans && !json_is_string(ans) && !json_is_number(ans))
        rc = lathe_error(LATHE_EINVAL, "%s:%zu: \"answer\" must be a string or a number", path, lineno);
    if (rc == LATHE_OK && ans) {
        char buf[64];
        const char *a = json_is_string(ans) ? json_string_value(ans) : buf;
        if (!json_is_string(ans))
            snprintf(buf, sizeof buf, "%.17g", json_number_value(ans));
        out->answer = strdup(a);
    }
    if (rc == LATHE_OK && json_is_string(pr)) {
        const char *t = json_string_value(pr);
        if (format < 0) {
            rc = lathe_tokenizer_encode(d->tk, t, strlen(t), 1, &out->ids, &out->n);
        } else {
            struct lathe_chat_msg m = {.role = "user", .content = t};
            uint8_t *mask = NULL;
            rc = lathe_chat_encode(d->tk, format, &m, 1, 1, &out->ids, &mask, &out->n);
            free(mask);
        }
    } else if (rc == LATHE_OK && json_is_array(pr)) {
        if (format < 0) {
            rc = lathe_error(LATHE_EINVAL, "%s:%zu: a message list needs a chat template; set [data] template", path,
                             lineno);
        } else {
            size_t n = json_array_size(pr);
            struct lathe_chat_msg *m = calloc(n ? n : 1, sizeof *m);
            for (size_t i = 0; m && rc == LATHE_OK && i < n; i++) {
                json_t *msg = json_array_get(pr, i);
                m[i].role = json_string_value(json_object_get(msg, "role"));
                m[i].content = json_string_value(json_object_get(msg, "content"));
                if (!m[i].role || !m[i].content)
                    rc = lathe_error(LATHE_EINVAL, "%s:%zu: message %zu needs string \"role\" and \"content\"", path,
                                     lineno, i + 1);
            }
            uint8_t *mask = NULL;
            if (!m)
                rc = lathe_error(LATHE_ENOMEM, "out of memory");
            if (rc == LATHE_OK)
                rc = lathe_chat_encode(d->tk, format, m, n, 1, &out->ids, &mask, &out->n);
            free(mask);
            free(m);
        }
    } else if (rc == LATHE_OK) {
        rc = lathe_error(LATHE_EINVAL, "%s:%zu: needs \"prompt\" (a string or a message list) or \"messages\"", path,
                         lineno);
    }
    if (rc == LATHE_OK && !(out->fields = strdup(line)))
        rc = lathe_error(LATHE_ENOMEM, "out of memory");
    if (rc == LATHE_OK && out->n == 0)
        rc = lathe_error(LATHE_EINVAL, "%s:%zu: the prompt is empty", path, lineno);
    if (rc != LATHE_OK && !strstr(lathe_errmsg(), path))
        rc = lathe_error_prefix(rc, "%s:%zu", path, lineno);
    json_decref(o);
    if (rc != LATHE_OK)
        prompt_free(out);
    return rc;
}

static int load_prompts(struct grpo_data *d, const char *path, int format, double eval_fraction)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return lathe_error(LATHE_EIO, "%s: cannot open the prompts file", path);
    char *line = NULL;
    size_t cap = 0, lineno = 0, n = 0, alloc = 0;
    ssize_t len;
    int rc = LATHE_OK;
    while (rc == LATHE_OK && (len = getline(&line, &cap, f)) > 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0)
            continue;
        if (n == alloc) {
            alloc = alloc ? 2 * alloc : 256;
            struct prompt *p = realloc(d->p, alloc * sizeof *p);
            if (!p) {
                rc = lathe_error(LATHE_ENOMEM, "out of memory");
                break;
            }
            d->p = p;
        }
        memset(&d->p[n], 0, sizeof d->p[n]);
        rc = parse_prompt(d, format, path, lineno, line, &d->p[n]);
        if (rc == LATHE_OK)
            n++;
    }
    free(line);
    fclose(f);
    d->np = n;
    if (rc == LATHE_OK && n < 2)
        rc = lathe_error(LATHE_EINVAL, "%s: %zu prompts; GRPO needs at least 2", path, n);
    if (rc == LATHE_OK) {
        size_t ne = (size_t)floor(eval_fraction * (double)n);
        d->ntrain = n - ne;
    }
    return rc;
}

/* ------------------------------------------------------------------ */
/* the data component                                                  */

static void release_cache(struct grpo_data *d)
{
    lathe_tensor *t[] = {d->cache.input_ids, d->cache.labels, d->cache.positions, d->cache.segments,
                         d->cache.advantages, d->cache.old_logps, d->cache.ref_logps};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        lathe_tensor_free(t[i]);
    memset(&d->cache, 0, sizeof d->cache);
    d->cache_uses = 0;
}

static void grpo_data_destroy(void *self)
{
    struct grpo_data *d = self;
    if (!d)
        return;
    release_cache(d);
    for (size_t i = 0; i < d->np; i++)
        prompt_free(&d->p[i]);
    free(d->p);
    free(d->order);
    lathe_reference_close(d->ref);
    lathe_tokenizer_free(d->tk);
    free(d);
}

static void shuffle(struct grpo_data *d)
{
    lathe_rng r;
    lathe_rng_seed(&r, d->env->seed * 1000003ULL + (uint64_t)d->epoch);
    for (size_t i = 0; i < d->ntrain; i++)
        d->order[i] = (int64_t)i;
    for (size_t i = d->ntrain; i > 1; i--) {
        size_t j = lathe_rng_below(&r, i);
        int64_t t = d->order[i - 1];
        d->order[i - 1] = d->order[j];
        d->order[j] = t;
    }
}

/* [data] stop = \n, </s>: texts that end a completion, each one token
 * (escapes \n, \t and \\ understood). */
static int read_stops(struct grpo_data *d, lathe_section *cfg)
{
    const char *const *items;
    size_t n;
    int rc = lathe_cfg_list(cfg, "stop", "", &items, &n);
    for (size_t i = 0; rc == LATHE_OK && i < n; i++) {
        char text[256];
        size_t k = 0;
        for (const char *c = items[i]; *c && k + 1 < sizeof text; c++) {
            if (*c == '\\' && c[1]) {
                c++;
                text[k++] = *c == 'n' ? '\n' : *c == 't' ? '\t' : *c;
            } else {
                text[k++] = *c;
            }
        }
        text[k] = '\0';
        int32_t *ids = NULL;
        size_t nid = 0;
        rc = lathe_tokenizer_encode(d->tk, text, k, 0, &ids, &nid);
        if (rc == LATHE_OK && nid != 1)
            rc = lathe_cfg_error(cfg, "stop", "'%s' is %zu tokens; each stop must be one token", items[i], nid);
        if (rc == LATHE_OK && d->nstop == sizeof d->stop / sizeof d->stop[0])
            rc = lathe_cfg_error(cfg, "stop", "too many stop tokens");
        if (rc == LATHE_OK)
            d->stop[d->nstop++] = ids[0];
        free(ids);
    }
    return rc;
}

static int grpo_data_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    struct grpo_data *d = calloc(1, sizeof *d);
    if (!d)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    d->env = env;
    static const char *const scales[] = {"group", "batch", "none", NULL};
    static const char *const templates[] = {"auto", "raw", "chatml", "deepseek-r1", "llama3", NULL};
    const char *path, *tok;
    int tmpl;
    double eval_fraction;
    lathe_section *ls = lathe_config_section(env->config, "loss");
    int rc;
    if ((rc = lathe_cfg_path(cfg, "path", NULL, &path)) ||
        (rc = lathe_cfg_path(cfg, "tokenizer", "", &tok)) ||
        (rc = lathe_cfg_choice(cfg, "template", "auto", templates, &tmpl)) ||
        (rc = lathe_cfg_int(cfg, "num_generations", 4, 2, 1024, &d->G)) ||
        (rc = lathe_cfg_int(cfg, "max_completion_length", 64, 1, 1 << 20, &d->max_completion)) ||
        (rc = lathe_cfg_float(cfg, "temperature", 1.0, 1e-3, 100.0, &d->temperature)) ||
        (rc = lathe_cfg_float(cfg, "top_p", 1.0, 1e-6, 1.0, &d->top_p)) ||
        (rc = lathe_cfg_int(cfg, "top_k", 0, 0, 1 << 30, &d->top_k)) ||
        (rc = lathe_cfg_choice(cfg, "scale_rewards", "group", scales, &d->scale)) ||
        (rc = lathe_cfg_int(cfg, "num_iterations", 1, 1, 1000, &d->num_iterations)) ||
        (rc = lathe_cfg_float(cfg, "eval_fraction", 0.0, 0.0, 0.5, &eval_fraction)) ||
        (rc = lathe_cfg_string(cfg, "correct_reward", "", &d->correct_reward)) ||
        (rc = lathe_cfg_float(cfg, "correct_threshold", 10.0, -1e30, 1e30, &d->correct_threshold)) ||
        /* the loss's beta decides whether a reference policy is needed */
        (rc = lathe_cfg_float(ls, "beta", 0.04, 0.0, 1e6, &d->beta)))
        goto fail;
    if (env->nrewards == 0) {
        rc = lathe_cfg_error(cfg, "plugin", "GRPO needs reward functions: add [reward.NAME] sections (plugin = think-answer, ...)");
        goto fail;
    }
    if (d->correct_reward[0]) {
        size_t r = 0;
        while (r < env->nrewards && strcmp(env->rewards[r].name, d->correct_reward) != 0)
            r++;
        if (r == env->nrewards) {
            rc = lathe_cfg_error(cfg, "correct_reward", "no [reward.%s] section", d->correct_reward);
            goto fail;
        }
    }
    if (env->batch_size % d->G != 0) {
        rc = lathe_cfg_error(cfg, "num_generations", "[train] batch_size %lld must be a multiple of num_generations %lld",
                             (long long)env->batch_size, (long long)d->G);
        goto fail;
    }
    if (d->num_iterations > 1 && env->grad_accum > 1) {
        rc = lathe_cfg_error(cfg, "num_iterations", "reusing rollouts with [train] grad_accum > 1 is not supported; "
                                                   "use grad_accum = 1 or num_iterations = 1");
        goto fail;
    }
    if (!tok[0]) { /* the model's own directory */
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
    int format = -1;
    if (tmpl == 0) {
        /* a directory may say which chat format; a bare tokenizer file, raw */
        if (lathe_chat_format_detect(tok, d->tk, &format) != LATHE_OK)
            format = -1;
    } else if (tmpl >= 2) {
        format = tmpl == 2 ? LATHE_CHAT_CHATML : tmpl == 3 ? LATHE_CHAT_DEEPSEEK_R1 : LATHE_CHAT_LLAMA3;
    }
    if (format >= 0 && lathe_chat_stop_token(d->tk, format) >= 0)
        d->stop[d->nstop++] = lathe_chat_stop_token(d->tk, format);
    int32_t eos = lathe_tokenizer_token_id(d->tk, "<|endoftext|>");
    if (eos >= 0 && (d->nstop == 0 || d->stop[0] != eos))
        d->stop[d->nstop++] = eos;
    if ((rc = read_stops(d, cfg)))
        goto fail;
    if ((rc = load_prompts(d, path, format, eval_fraction)))
        goto fail;
    if (d->beta > 0 && (rc = lathe_reference_open(&d->ref, env)))
        goto fail;
    d->order = calloc(d->ntrain, sizeof *d->order);
    if (!d->order) {
        rc = lathe_error(LATHE_ENOMEM, "out of memory");
        goto fail;
    }
    shuffle(d);
    lathe_rng_seed(&d->rng, env->seed ^ 0x67727021ULL);
    *self = d;
    return LATHE_OK;
fail:
    grpo_data_destroy(d);
    return rc;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static const struct prompt *next_prompt(struct grpo_data *d)
{
    if (d->cursor == (int64_t)d->ntrain) {
        d->epoch++;
        d->cursor = 0;
        shuffle(d);
    }
    return &d->p[d->order[d->cursor++]];
}

/* Score one completion with every reward: total (weighted) and each. */
static int score(struct grpo_data *d, const char *text, const struct prompt *p, double *each, double *total)
{
    *total = 0.0;
    for (size_t r = 0; r < d->env->nrewards; r++) {
        const struct lathe_reward_inst *ri = &d->env->rewards[r];
        int rc = ri->ops->score(ri->self, text, p->answer, p->fields, &each[r]);
        if (rc != LATHE_OK)
            return lathe_error_prefix(rc, "[reward.%s]", ri->name);
        *total += ri->weight * each[r];
    }
    return LATHE_OK;
}

/* "Correct": the reward named by correct_reward (default: the first)
 * reaches correct_threshold (default 10, the tutorial's right-answer score). */
static int correct(const struct grpo_data *d, const double *each)
{
    for (size_t r = 0; r < d->env->nrewards; r++)
        if (d->correct_reward[0] && strcmp(d->env->rewards[r].name, d->correct_reward) == 0)
            return each[r] >= d->correct_threshold;
    return each[0] >= d->correct_threshold;
}

/* Sample, score and pack B rows (prompts[b] with completion b). Fills
 * d->cache with caller-owned tensors. eval: greedy, advantages 0. */
static int rollout(struct grpo_data *d, const struct prompt **prompts, int64_t B, int eval)
{
    release_cache(d);
    const struct lathe_env *env = d->env;
    int32_t **out = calloc((size_t)B, sizeof *out);
    size_t *olen = calloc((size_t)B, sizeof *olen);
    const int32_t **pin = calloc((size_t)B, sizeof *pin);
    size_t *plen = calloc((size_t)B, sizeof *plen);
    double *reward = calloc((size_t)B, sizeof *reward), *adv = calloc((size_t)B, sizeof *adv);
    size_t nr = env->nrewards;
    double *each = calloc((size_t)B * nr, sizeof *each);
    int rc = LATHE_OK;
    if (!out || !olen || !pin || !plen || !reward || !adv || !each)
        rc = lathe_error(LATHE_ENOMEM, "out of memory");
    for (int64_t b = 0; rc == LATHE_OK && b < B; b++) {
        pin[b] = prompts[b]->ids;
        plen[b] = prompts[b]->n;
    }
    struct lathe_sampling s = {.size = sizeof s, .max_new_tokens = d->max_completion,
                               .temperature = eval ? 0.0f : (float)d->temperature, .top_k = d->top_k,
                               .top_p = (float)d->top_p, .stop_ids = d->stop, .nstop = d->nstop};
    double t0 = now_s();
    if (rc == LATHE_OK)
        rc = lathe_generate(env->model_ops, env->model_self, pin, plen, (size_t)B, &s, &d->rng, out, olen);
    double t1 = now_s();
    size_t gen_tokens = 0;
    int64_t right = 0;
    for (int64_t b = 0; rc == LATHE_OK && b < B; b++) {
        char *text = NULL;
        gen_tokens += olen[b];
        rc = lathe_tokenizer_decode(d->tk, out[b], olen[b], 1, &text);
        if (rc == LATHE_OK)
            rc = score(d, text, prompts[b], each + (size_t)b * nr, &reward[b]);
        if (rc == LATHE_OK)
            right += correct(d, each + (size_t)b * nr);
        free(text);
    }
    double t2 = now_s();
    /* group-normalised advantages (r - mean) / (std + eps), TRL's eps 1e-4 */
    if (rc == LATHE_OK && !eval) {
        double bm = 0, bs = 0;
        for (int64_t b = 0; b < B; b++)
            bm += reward[b];
        bm /= (double)B;
        for (int64_t b = 0; b < B; b++)
            bs += (reward[b] - bm) * (reward[b] - bm);
        bs = sqrt(bs / (double)(B > 1 ? B - 1 : 1));
        for (int64_t g = 0; g < B / d->G; g++) {
            double m = 0, sd = 0;
            for (int64_t i = 0; i < d->G; i++)
                m += reward[g * d->G + i];
            m /= (double)d->G;
            for (int64_t i = 0; i < d->G; i++)
                sd += (reward[g * d->G + i] - m) * (reward[g * d->G + i] - m);
            sd = sqrt(sd / (double)(d->G - 1)); /* unbiased, as torch.std */
            for (int64_t i = 0; i < d->G; i++) {
                double a = reward[g * d->G + i] - m;
                adv[g * d->G + i] = d->scale == SCALE_GROUP ? a / (sd + 1e-4) : d->scale == SCALE_BATCH ? a / (bs + 1e-4) : a;
            }
        }
    }
    /* pack: prompt ++ completion, right-padded; labels on the completion */
    int64_t T = 1;
    for (int64_t b = 0; b < B; b++)
        if ((int64_t)(plen[b] + olen[b]) > T)
            T = (int64_t)(plen[b] + olen[b]);
    struct lathe_batch *c = &d->cache;
    c->size = sizeof *c;
    c->B = B;
    c->T = T;
    if (rc == LATHE_OK) {
        int64_t shape[2] = {B, T};
        c->input_ids = lathe_tensor_new_owned(LATHE_I32, 2, shape);
        c->labels = lathe_tensor_new_owned(LATHE_I32, 2, shape);
        c->positions = lathe_tensor_new_owned(LATHE_I32, 2, shape);
        c->segments = lathe_tensor_new_owned(LATHE_I32, 2, shape);
        c->advantages = lathe_tensor_new_owned(LATHE_F32, 2, shape);
        if (!c->input_ids || !c->labels || !c->positions || !c->segments || !c->advantages)
            rc = lathe_error(LATHE_ENOMEM, "out of memory packing rollouts");
    }
    int64_t ntok = 0;
    int32_t *hids = NULL, *hlab = NULL, *hpos = NULL, *hseg = NULL;
    float *hav = NULL;
    if (rc == LATHE_OK && (!(hids = host_write(c->input_ids)) || !(hlab = host_write(c->labels)) ||
                           !(hpos = host_write(c->positions)) || !(hseg = host_write(c->segments)) ||
                           !(hav = host_write(c->advantages))))
        rc = LATHE_ENOMEM;
    for (int64_t b = 0; rc == LATHE_OK && b < B; b++) {
        int32_t *ids = hids + b * T, *lab = hlab + b * T;
        int32_t *pos = hpos + b * T, *seg = hseg + b * T;
        float *av = hav + b * T;
        int64_t len = (int64_t)(plen[b] + olen[b]);
        for (int64_t t = 0; t < T; t++) {
            int real = t < len;
            ids[t] = !real ? 0 : t < (int64_t)plen[b] ? pin[b][t] : out[b][t - (int64_t)plen[b]];
            pos[t] = real ? (int32_t)t : 0;
            seg[t] = real ? 0 : -1;
            av[t] = (float)adv[b];
            lab[t] = LATHE_IGNORE_INDEX;
        }
        for (int64_t t = (int64_t)plen[b] - 1; t + 1 < len; t++) {
            lab[t] = ids[t + 1];
            ntok++;
        }
    }
    if (rc == LATHE_OK) {
        int r1 = host_put(c->input_ids, hids), r2 = host_put(c->labels, hlab), r3 = host_put(c->positions, hpos);
        int r4 = host_put(c->segments, hseg), r5 = host_put(c->advantages, hav);
        rc = r1 ? r1 : r2 ? r2 : r3 ? r3 : r4 ? r4 : r5;
    } else {
        host_done(c->input_ids, hids);
        host_done(c->labels, hlab);
        host_done(c->positions, hpos);
        host_done(c->segments, hseg);
        host_done(c->advantages, hav);
    }
    c->ntokens = ntok;
    if (rc == LATHE_OK && !(c->old_logps = lathe_policy_logprobs(env, c, (float)d->temperature)))
        rc = lathe_error_prefix(LATHE_EINVAL, "GRPO: old log-probs");
    if (rc == LATHE_OK && d->ref && !(c->ref_logps = lathe_reference_logprobs(d->ref, c, (float)d->temperature)))
        rc = lathe_error_prefix(LATHE_EINVAL, "GRPO: reference log-probs");
    double t3 = now_s();
    if (rc == LATHE_OK) {
        /* what a person tuning rewards wants to see, per step */
        const char *pre = eval ? "grpo/eval_" : "grpo/";
        char name[96];
        double m = 0, sd = 0, len = 0;
        for (int64_t b = 0; b < B; b++) {
            m += reward[b];
            len += (double)olen[b];
        }
        m /= (double)B;
        for (int64_t b = 0; b < B; b++)
            sd += (reward[b] - m) * (reward[b] - m);
        sd = sqrt(sd / (double)B);
        snprintf(name, sizeof name, "%sreward_mean", pre);
        lathe_report_scalar(name, m);
        snprintf(name, sizeof name, "%sreward_std", pre);
        lathe_report_scalar(name, sd);
        snprintf(name, sizeof name, "%saccuracy", pre);
        lathe_report_scalar(name, (double)right / (double)B);
        snprintf(name, sizeof name, "%scompletion_length", pre);
        lathe_report_scalar(name, len / (double)B);
        for (size_t r = 0; r < nr; r++) {
            double rm = 0, rs = 0;
            for (int64_t b = 0; b < B; b++)
                rm += each[(size_t)b * nr + r];
            rm /= (double)B;
            for (int64_t b = 0; b < B; b++)
                rs += (each[(size_t)b * nr + r] - rm) * (each[(size_t)b * nr + r] - rm);
            snprintf(name, sizeof name, "%sreward_%s_mean", pre, env->rewards[r].name);
            lathe_report_scalar(name, rm);
            snprintf(name, sizeof name, "%sreward_%s_std", pre, env->rewards[r].name);
            lathe_report_scalar(name, sqrt(rs / (double)B));
        }
        if (!eval) {
            lathe_report_scalar("grpo/generation_seconds", t1 - t0);
            lathe_report_scalar("grpo/reward_seconds", t2 - t1);
            lathe_report_scalar("grpo/logprob_seconds", t3 - t2);
            lathe_report_scalar("grpo/rollout_tokens_per_s", t1 > t0 ? (double)gen_tokens / (t1 - t0) : 0.0);
        }
    }
    for (int64_t b = 0; out && b < B; b++)
        free(out[b]);
    free(out);
    free(olen);
    free(pin);
    free(plen);
    free(reward);
    free(adv);
    free(each);
    if (rc != LATHE_OK)
        release_cache(d);
    return rc;
}

static int grpo_data_next(void *self, int split, int64_t B, struct lathe_batch *batch)
{
    struct grpo_data *d = self;
    int rc;
    if (split == LATHE_SPLIT_EVAL) {
        size_t neval = d->np - d->ntrain;
        if (neval == 0)
            return LATHE_EOF;
        if (d->eval_cursor >= (int64_t)neval) {
            d->eval_cursor = 0;
            return LATHE_EOF;
        }
        int64_t n = (int64_t)neval - d->eval_cursor < B ? (int64_t)neval - d->eval_cursor : B;
        const struct prompt **ps = calloc((size_t)n, sizeof *ps);
        if (!ps)
            return lathe_error(LATHE_ENOMEM, "out of memory");
        for (int64_t i = 0; i < n; i++)
            ps[i] = &d->p[d->ntrain + (size_t)d->eval_cursor + (size_t)i];
        d->eval_cursor += n;
        rc = rollout(d, ps, n, 1);
        free(ps);
    } else if (d->cache.input_ids && d->cache_uses < d->num_iterations && d->cache.B == B) {
        rc = LATHE_OK; /* the same rollouts again (num_iterations) */
    } else {
        int64_t P = B / d->G;
        const struct prompt **ps = calloc((size_t)B, sizeof *ps);
        if (!ps)
            return lathe_error(LATHE_ENOMEM, "out of memory");
        for (int64_t i = 0; i < P; i++) {
            const struct prompt *p = next_prompt(d);
            for (int64_t g = 0; g < d->G; g++)
                ps[i * d->G + g] = p;
        }
        rc = rollout(d, ps, B, 0);
        free(ps);
    }
    if (rc != LATHE_OK)
        return rc;
    d->cache_uses++;
    uint32_t size = batch->size;
    *batch = d->cache;
    batch->size = size;
    return LATHE_OK;
}

static int grpo_data_info(void *self, struct lathe_data_info *info)
{
    struct grpo_data *d = self;
    info->vocab_size = lathe_tokenizer_vocab_size(d->tk);
    info->seq_len = 0;
    info->train_items = (int64_t)d->ntrain;
    info->eval_items = (int64_t)(d->np - d->ntrain);
    return LATHE_OK;
}

static int grpo_data_save(void *self, lathe_state *st)
{
    struct grpo_data *d = self;
    int rc = lathe_state_put_i64(st, "epoch", d->epoch);
    rc = rc ? rc : lathe_state_put_i64(st, "cursor", d->cursor);
    rc = rc ? rc : lathe_state_put_i64(st, "prompts", (int64_t)d->np);
    for (int i = 0; rc == LATHE_OK && i < 4; i++) {
        char k[16];
        snprintf(k, sizeof k, "rng.%d", i);
        rc = lathe_state_put_i64(st, k, (int64_t)d->rng.s[i]);
    }
    return rc;
}

static int grpo_data_load(void *self, lathe_state *st)
{
    struct grpo_data *d = self;
    int64_t np;
    int rc = lathe_state_get_i64(st, "prompts", &np);
    if (rc == LATHE_OK && np != (int64_t)d->np)
        return lathe_error(LATHE_EINVAL, "the checkpoint was made with %lld prompts, the file now has %zu; resume with the same data",
                           (long long)np, d->np);
    rc = rc ? rc : lathe_state_get_i64(st, "epoch", &d->epoch);
    rc = rc ? rc : lathe_state_get_i64(st, "cursor", &d->cursor);
    for (int i = 0; rc == LATHE_OK && i < 4; i++) {
        char k[16];
        int64_t v;
        snprintf(k, sizeof k, "rng.%d", i);
        rc = lathe_state_get_i64(st, k, &v);
        d->rng.s[i] = (uint64_t)v;
    }
    if (rc == LATHE_OK) {
        shuffle(d);
        release_cache(d); /* rollouts are made again after a resume */
    }
    return rc;
}

static const struct lathe_data_ops grpo_data_ops = {
    .size = sizeof(struct lathe_data_ops),
    .create = grpo_data_create,
    .destroy = grpo_data_destroy,
    .info = grpo_data_info,
    .next = grpo_data_next,
    .state_save = grpo_data_save,
    .state_load = grpo_data_load,
};

/* ------------------------------------------------------------------ */
/* the loss component                                                  */

enum { LOSS_GRPO = 0, LOSS_BNPO, LOSS_DR_GRPO, LOSS_DAPO };

struct grpo_loss {
    double eps_low, eps_high, beta, temperature;
    int type;
    int64_t max_completion;
};

static int grpo_loss_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    struct grpo_loss *l = calloc(1, sizeof *l);
    if (!l)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    static const char *const types[] = {"grpo", "bnpo", "dr_grpo", "dapo", NULL};
    lathe_section *ds = lathe_config_section(env->config, "data");
    int rc;
    if ((rc = lathe_cfg_float(cfg, "epsilon", 0.2, 0.0, 10.0, &l->eps_low)) ||
        (rc = lathe_cfg_float(cfg, "epsilon_high", l->eps_low, 0.0, 10.0, &l->eps_high)) ||
        (rc = lathe_cfg_float(cfg, "beta", 0.04, 0.0, 1e6, &l->beta)) ||
        (rc = lathe_cfg_choice(cfg, "loss_type", "grpo", types, &l->type)) ||
        /* the ratio is taken at the sampling temperature (the data's) */
        (rc = lathe_cfg_float(ds, "temperature", 1.0, 1e-3, 100.0, &l->temperature)) ||
        (rc = lathe_cfg_int(ds, "max_completion_length", 64, 1, 1 << 20, &l->max_completion))) {
        free(l);
        return rc;
    }
    *self = l;
    return LATHE_OK;
}

static void grpo_loss_destroy(void *self) { free(self); }

/* Per-token loss -min(r A, clip(r, 1-eps, 1+eps_high) A) + beta KL, with
 * KL the k3 estimate exp(ref - logp) - (ref - logp) - 1 (Schulman), summed
 * with constant weights that encode the reduction:
 *   grpo    mean over rows of the mean over each row's tokens
 *   bnpo    mean over all completion tokens of the batch
 *   dr_grpo sum over tokens / (B * max_completion_length)
 *   dapo    mean over all completion tokens (of the global batch). */
static lathe_tensor *grpo_loss_forward(void *self, lathe_tensor *logits, const struct lathe_batch *b)
{
    struct grpo_loss *l = self;
    if (!b->advantages || !b->old_logps || (l->beta > 0 && !b->ref_logps)) {
        lathe_error(LATHE_EINVAL, "[loss] grpo: the batch has no rollouts; use [data] plugin = grpo%s",
                    l->beta > 0 && b->advantages ? " (and beta > 0 needs reference log-probs)" : "");
        return NULL;
    }
    const int64_t B = b->B, T = b->T;
    lathe_tensor *w = lathe_tensor_new2(LATHE_F32, B, T);
    lathe_tensor *ones = lathe_tensor_new2(LATHE_F32, B, T);
    if (!w || !ones)
        return NULL;
    const int32_t *lab = host_read(b->labels);
    float *wd = host_write(w), *od = host_write(ones);
    if (!lab || !wd || !od) {
        host_done(b->labels, lab);
        host_done(w, wd);
        host_done(ones, od);
        return NULL;
    }
    int64_t total = 0;
    for (int64_t i = 0; i < B * T; i++) {
        total += lab[i] != LATHE_IGNORE_INDEX;
        od[i] = 1.0f;
    }
    for (int64_t r = 0; r < B; r++) {
        int64_t n = 0;
        for (int64_t t = 0; t < T; t++)
            n += lab[r * T + t] != LATHE_IGNORE_INDEX;
        for (int64_t t = 0; t < T; t++) {
            float m = lab[r * T + t] != LATHE_IGNORE_INDEX;
            double den = l->type == LOSS_GRPO ? (double)(n ? n : 1) * (double)B
                         : l->type == LOSS_DR_GRPO ? (double)B * (double)l->max_completion
                                                   : (double)(total ? total : 1);
            wd[r * T + t] = (float)(m / den);
        }
    }
    int r1 = host_put(w, wd), r2 = host_put(ones, od);
    if (r1 || r2) {
        host_done(b->labels, lab);
        return NULL;
    }
    lathe_tensor *lg = l->temperature != 1.0 ? lathe_scale(logits, (float)(1.0 / l->temperature)) : logits;
    lathe_tensor *logp = lathe_token_logprobs(lg, b->labels, LATHE_IGNORE_INDEX);
    lathe_tensor *ratio = lathe_exp(lathe_sub(logp, b->old_logps));
    lathe_tensor *s1 = lathe_mul(ratio, b->advantages);
    lathe_tensor *s2 = lathe_mul(lathe_clamp(ratio, (float)(1.0 - l->eps_low), (float)(1.0 + l->eps_high)), b->advantages);
    lathe_tensor *per_tok = lathe_scale(lathe_minimum(s1, s2), -1.0f);
    lathe_tensor *kl = NULL;
    if (l->beta > 0) {
        lathe_tensor *dr = lathe_sub(b->ref_logps, logp);
        kl = lathe_sub(lathe_sub(lathe_exp(dr), dr), ones);
        per_tok = lathe_add(per_tok, lathe_scale(kl, (float)l->beta));
    }
    lathe_tensor *loss = lathe_sum(lathe_mul(per_tok, w));
    if (!loss) {
        host_done(b->labels, lab);
        return NULL;
    }
    /* diagnostics over completion tokens */
    const float *rd = ratio ? host_read(ratio) : NULL, *kd = kl ? host_read(kl) : NULL;
    double clipped = 0, klsum = 0;
    for (int64_t i = 0; rd && i < B * T; i++) {
        if (lab[i] == LATHE_IGNORE_INDEX)
            continue;
        clipped += rd[i] < 1.0 - l->eps_low || rd[i] > 1.0 + l->eps_high;
        if (kd)
            klsum += kd[i];
    }
    if (total) {
        lathe_report_scalar("grpo/clip_fraction", clipped / (double)total);
        if (kd)
            lathe_report_scalar("grpo/kl", klsum / (double)total);
        /* entropy of the policy at the completion tokens: -sum p log p */
        lathe_no_grad_begin();
        lathe_tensor *lsm = lathe_log_softmax(lg);
        lathe_tensor *ent = lsm ? lathe_mul(lathe_softmax(lg), lsm) : NULL;
        /* summed over the vocabulary where ent lives (a product with a
         * column of ones): only [B, T] values come to the host */
        int64_t V = ent ? ent->shape[2] : 0;
        lathe_tensor *col = ent ? lathe_tensor_new2(LATHE_F32, V, 1) : NULL;
        float *hc = col ? host_write(col) : NULL;
        for (int64_t v = 0; hc && v < V; v++)
            hc[v] = 1.0f;
        lathe_tensor *rows = hc && host_put(col, hc) == LATHE_OK ? lathe_matmul(ent, col, 0) : NULL;
        const float *e = rows ? host_read(rows) : NULL;
        if (e) {
            double hs = 0;
            for (int64_t i = 0; i < B * T; i++)
                if (lab[i] != LATHE_IGNORE_INDEX)
                    hs -= e[i];
            lathe_report_scalar("grpo/entropy", hs / (double)total);
            host_done(rows, e);
        }
        lathe_no_grad_end();
    }
    host_done(ratio, rd);
    host_done(kl, kd);
    host_done(b->labels, lab);
    return loss;
}

static const struct lathe_loss_ops grpo_loss_ops = {
    .size = sizeof(struct lathe_loss_ops),
    .create = grpo_loss_create,
    .destroy = grpo_loss_destroy,
    .forward = grpo_loss_forward,
};

static const struct lathe_component components[] = {
    {.kind = LATHE_KIND_DATA, .name = "grpo", .ops = &grpo_data_ops},
    {.kind = LATHE_KIND_LOSS, .name = "grpo", .ops = &grpo_loss_ops},
    {0},
};

LATHE_PLUGIN_DEFINE(grpo, .version = "0.1.0", .license = "MIT",
                    .description = "GRPO: rollouts with group-normalised advantages, and the clipped surrogate loss",
                    .components = components)
