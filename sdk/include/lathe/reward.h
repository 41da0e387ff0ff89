/* lathe/reward.h — reward functions (LATHE_KIND_REWARD) for RL fine-tuning. */
#ifndef LATHE_REWARD_H
#define LATHE_REWARD_H

#include "env.h"

#ifdef __cplusplus
extern "C" {
#endif

struct lathe_reward_ops {
    uint32_t size;
    int (*create)(lathe_section *cfg, const struct lathe_env *env, void **self);
    void (*destroy)(void *self);
    /* Score one completion. answer: the reference answer or NULL; fields:
     * the whole input record as JSON text (for extra fields) or NULL. */
    int (*score)(void *self, const char *completion, const char *answer,
                 const char *fields_json, double *reward);
};

#ifdef __cplusplus
}
#endif
#endif
