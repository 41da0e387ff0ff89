/* core/train/rewards.h — the run's reward functions. Internal to liblathe. */
#ifndef LATHE_CORE_REWARDS_H
#define LATHE_CORE_REWARDS_H

#include <lathe/lathe.h>

#include "plugin/loader.h"

/* Create one instance per [reward.NAME] section (in file order). *out is
 * NULL and *n 0 when there are none. */
int lathe_rewards_create(lathe_config *cfg, const struct lathe_registry *reg, const struct lathe_env *env,
                         struct lathe_reward_inst **out, size_t *n);
void lathe_rewards_destroy(struct lathe_reward_inst *r, size_t n);
/* Score one completion with every reward: values[i] (may be NULL) each,
 * *total the weighted sum. */
int lathe_rewards_score(const struct lathe_reward_inst *r, size_t n, const char *completion, const char *answer,
                        const char *fields_json, double *values, double *total);

#endif
