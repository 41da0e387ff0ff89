/* core/gen/generate.c — batched sampling with a key/value cache.
 *
 * Prompts of different lengths are left-padded; padding gets segment -1 so
 * no real token attends to it, and each row's positions start at 0 at its
 * first real token. One prefill forward over the prompts, then one forward
 * of one token per row per step. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <lathe/lathe.h>

#include "gen/generate.h"

struct cand {
    float p;
    int32_t id;
};

static int by_prob_desc(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->p != y->p)
        return x->p < y->p ? 1 : -1;
    return (x->id > y->id) - (x->id < y->id); /* ties: lower id first, deterministic */
}

int32_t lathe_sample_token(const float *logits, int64_t V, const struct lathe_sampling *s, lathe_rng *rng,
                           float *work)
{
    int64_t best = 0;
    for (int64_t v = 1; v < V; v++)
        if (logits[v] > logits[best])
            best = v;
    if (s->temperature <= 0.0f || s->top_k == 1)
        return (int32_t)best;
    /* softmax at the temperature, in a stable order */
    struct cand *c = (struct cand *)work;
    double sum = 0.0;
    for (int64_t v = 0; v < V; v++) {
        c[v].p = expf((logits[v] - logits[best]) / s->temperature);
        c[v].id = (int32_t)v;
        sum += c[v].p;
    }
    int64_t n = V;
    if (s->top_k > 0 || s->top_p < 1.0f) {
        qsort(c, (size_t)V, sizeof *c, by_prob_desc);
        if (s->top_k > 0 && s->top_k < n)
            n = s->top_k;
        if (s->top_p < 1.0f) {
            double kept = 0.0, total = 0.0;
            for (int64_t i = 0; i < n; i++)
                total += c[i].p;
            for (int64_t i = 0; i < n; i++) {
                kept += c[i].p;
                if (kept >= s->top_p * total) {
                    n = i + 1;
                    break;
                }
            }
        }
        sum = 0.0;
        for (int64_t i = 0; i < n; i++)
            sum += c[i].p;
    }
    double u = lathe_rng_uniform(rng) * sum, acc = 0.0;
    for (int64_t i = 0; i < n; i++) {
        acc += c[i].p;
        if (u < acc)
            return c[i].id;
    }
    return c[n - 1].id;
}

static int is_stop(const struct lathe_sampling *s, int32_t id)
{
    for (size_t i = 0; i < s->nstop; i++)
        if (s->stop_ids[i] == id)
            return 1;
    return 0;
}

/* Host copy of the last position's logits of each row of a [B, T, V]
 * tensor into dst [B, V]: one copy when T is 1 (the rows are adjacent), so
 * a device is synchronised once per token, not once per row. */
static int last_logits(const lathe_tensor *logits, float *dst)
{
    const int64_t B = logits->shape[0], T = logits->shape[1], V = logits->shape[2];
    const struct lathe_backend_ops *be = lathe_backend();
    if (T == 1)
        return be->copy(dst, logits->data, (size_t)(B * V) * sizeof *dst, 0);
    for (int64_t b = 0; b < B; b++) {
        const float *src = (const float *)logits->data + (b * T + T - 1) * V;
        int rc = be->copy(dst + b * V, src, (size_t)V * sizeof *dst, 0);
        if (rc != LATHE_OK)
            return rc;
    }
    return LATHE_OK;
}

static int upload_i32(lathe_tensor *t, const int32_t *host)
{
    return lathe_backend()->copy(t->data, host, lathe_tensor_nbytes(t), 1);
}

int lathe_generate(const struct lathe_model_ops *ops, void *self, const int32_t *const *prompt_ids,
                   const size_t *prompt_len, size_t B, const struct lathe_sampling *s, lathe_rng *rng,
                   int32_t **out_ids, size_t *out_len)
{
    if (!LATHE_OPS_HAS(ops, struct lathe_model_ops, cache_new) ||
        !LATHE_OPS_HAS(ops, struct lathe_model_ops, forward_cached) ||
        !LATHE_OPS_HAS(ops, struct lathe_model_ops, cache_free))
        return lathe_error(LATHE_EUNSUPPORTED, "generate: this model plugin has no key/value cache (ABI 1.1 slots)");
    if (B == 0 || s->max_new_tokens <= 0)
        return lathe_error(LATHE_EINVAL, "generate: nothing to do (%zu prompts, max_new_tokens %lld)", B,
                           (long long)s->max_new_tokens);
    if (s->temperature < 0 || !(s->top_p > 0.0f && s->top_p <= 1.0f) || s->top_k < 0)
        return lathe_error(LATHE_EINVAL, "generate: temperature must be >= 0, top_p in (0, 1], top_k >= 0");
    size_t L = 0;
    for (size_t b = 0; b < B; b++) {
        if (prompt_len[b] == 0)
            return lathe_error(LATHE_EINVAL, "generate: prompt %zu is empty", b);
        if (prompt_len[b] > L)
            L = prompt_len[b];
    }
    struct lathe_model_info info = {0};
    int rc = ops->info(self, &info);
    if (rc != LATHE_OK)
        return rc;
    const int64_t V = info.vocab_size;
    const int64_t cap = (int64_t)L + s->max_new_tokens;
    if (info.max_seq_len > 0 && cap > info.max_seq_len)
        return lathe_error(LATHE_EINVAL, "generate: prompt (%zu) + max_new_tokens (%lld) exceed the model's context of %lld",
                           L, (long long)s->max_new_tokens, (long long)info.max_seq_len);

    void *cache = NULL;
    int32_t *ids = calloc(B * L, sizeof *ids), *pos = calloc(B * L, sizeof *pos), *seg = calloc(B * L, sizeof *seg);
    float *lg = malloc(sizeof *lg * (size_t)V * B), *work = malloc(sizeof(struct cand) * (size_t)V);
    int32_t *next = calloc(B, sizeof *next);
    uint8_t *done = calloc(B, 1);
    for (size_t b = 0; b < B; b++) {
        out_ids[b] = calloc((size_t)s->max_new_tokens, sizeof **out_ids);
        out_len[b] = 0;
    }
    for (size_t b = 0; b < B && rc == LATHE_OK; b++)
        if (!out_ids[b])
            rc = lathe_error(LATHE_ENOMEM, "generate: out of memory");
    if (!ids || !pos || !seg || !lg || !work || !next || !done)
        rc = lathe_error(LATHE_ENOMEM, "generate: out of memory");
    if (rc == LATHE_OK)
        rc = ops->cache_new(self, (int64_t)B, cap, &cache);
    if (rc == LATHE_OK) {
        for (size_t b = 0; b < B; b++) {
            size_t pad = L - prompt_len[b];
            for (size_t t = 0; t < L; t++) {
                int real = t >= pad;
                ids[b * L + t] = real ? prompt_ids[b][t - pad] : 0;
                pos[b * L + t] = real ? (int32_t)(t - pad) : 0;
                seg[b * L + t] = real ? 0 : -1;
            }
        }
    }
    lathe_no_grad_begin();
    for (int64_t step = 0; rc == LATHE_OK && step < s->max_new_tokens; step++) {
        const int64_t T = step == 0 ? (int64_t)L : 1;
        lathe_scope_push();
        struct lathe_batch batch = {.size = sizeof batch, .B = (int64_t)B, .T = T};
        batch.input_ids = lathe_tensor_new2(LATHE_I32, (int64_t)B, T);
        batch.positions = lathe_tensor_new2(LATHE_I32, (int64_t)B, T);
        batch.segments = lathe_tensor_new2(LATHE_I32, (int64_t)B, T);
        if (!batch.input_ids || !batch.positions || !batch.segments) {
            rc = LATHE_ENOMEM;
        } else if (step == 0) {
            if ((rc = upload_i32(batch.input_ids, ids)) == LATHE_OK && (rc = upload_i32(batch.positions, pos)) == LATHE_OK)
                rc = upload_i32(batch.segments, seg);
        } else {
            for (size_t b = 0; b < B; b++) {
                ids[b] = next[b];
                pos[b] = (int32_t)(prompt_len[b] + (size_t)step - 1);
                seg[b] = 0;
            }
            if ((rc = upload_i32(batch.input_ids, ids)) == LATHE_OK && (rc = upload_i32(batch.positions, pos)) == LATHE_OK)
                rc = upload_i32(batch.segments, seg);
        }
        lathe_tensor *logits = rc == LATHE_OK ? ops->forward_cached(self, cache, &batch) : NULL;
        if (rc == LATHE_OK && !logits)
            rc = lathe_error_prefix(LATHE_EINVAL, "generate: forward");
        if (rc == LATHE_OK && (logits->ndim != 3 || logits->shape[2] != V || logits->shape[1] != T))
            rc = lathe_error(LATHE_EINVAL, "generate: the model returned logits of the wrong shape");
        if (rc == LATHE_OK && (rc = last_logits(logits, lg)) != LATHE_OK)
            lathe_error_prefix(rc, "generate: reading the logits");
        size_t active = 0;
        for (size_t b = 0; rc == LATHE_OK && b < B; b++) {
            if (done[b])
                continue;
            int32_t tok = lathe_sample_token(lg + (size_t)b * (size_t)V, V, s, rng, work);
            out_ids[b][out_len[b]++] = tok;
            next[b] = tok;
            if (is_stop(s, tok))
                done[b] = 1;
            else
                active++;
        }
        lathe_scope_pop();
        if (rc == LATHE_OK && active == 0)
            break;
    }
    lathe_no_grad_end();
    if (cache)
        ops->cache_free(self, cache);
    free(ids);
    free(pos);
    free(seg);
    free(lg);
    free(work);
    free(next);
    free(done);
    if (rc != LATHE_OK)
        for (size_t b = 0; b < B; b++) {
            free(out_ids[b]);
            out_ids[b] = NULL;
            out_len[b] = 0;
        }
    return rc;
}
