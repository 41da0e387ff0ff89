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
