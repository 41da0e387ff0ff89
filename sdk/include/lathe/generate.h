/* lathe/generate.h — sampling from a model with a key/value cache. The same
 * code serves `lathe generate` and the rollouts of RL fine-tuning. */
#ifndef LATHE_GENERATE_H
#define LATHE_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "rng.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A key/value cache for incremental decoding, shared by model plugins:
 * per layer k, v [B, max_len, Hkv, D] and the segments [B, max_len] of the
 * tokens held. A model's forward_cached calls begin once, attend in every
 * layer, and commit at the end. Owned by whoever made it (kv_cache_free). */
struct lathe_kv_cache {
    int64_t B, max_len, len, layers;
    lathe_tensor **k, **v;
    lathe_tensor *seg;
};

int lathe_kv_cache_new(int64_t layers, int64_t B, int64_t max_len, int64_t Hkv, int64_t D,
                       struct lathe_kv_cache **out);
void lathe_kv_cache_free(struct lathe_kv_cache *c);
/* Check that the batch's B rows of T tokens fit after what the cache holds
 * and record their segments (NULL: one segment). */
int lathe_kv_cache_begin(struct lathe_kv_cache *c, const struct lathe_batch *batch);
/* Layer `layer`: append k, v [B, T, Hkv, D] of the new tokens and return the
 * attention of q [B, T, H, D] over everything the cache holds. */
lathe_tensor *lathe_kv_cache_attend(struct lathe_kv_cache *c, int64_t layer, lathe_tensor *q, lathe_tensor *k,
                                    lathe_tensor *v);
/* After the last layer: the T new tokens now count as held. */
void lathe_kv_cache_commit(struct lathe_kv_cache *c, int64_t T);

struct lathe_sampling {
    uint32_t size;            /* sizeof(struct lathe_sampling) */
    int64_t max_new_tokens;   /* > 0 */
    float temperature;        /* 0: greedy */
    int64_t top_k;            /* 0: off */
    float top_p;              /* 1: off */
    const int32_t *stop_ids;  /* generation of a row ends after one of these */
    size_t nstop;
};

/* Complete B prompts (prompt_ids[b], prompt_len[b] tokens each) with the
 * model (ops/self) and its KV-cache slots. out_ids[b] (malloc'd) receives the
 * new tokens only, out_len[b] their count (stop token included). Draws from
 * rng; a given seed gives the same completions. */
int lathe_generate(const struct lathe_model_ops *ops, void *self, const int32_t *const *prompt_ids,
                   const size_t *prompt_len, size_t B, const struct lathe_sampling *s, lathe_rng *rng,
                   int32_t **out_ids, size_t *out_len);

#ifdef __cplusplus
}
#endif
#endif
