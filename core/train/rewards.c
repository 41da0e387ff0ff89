/* core/train/rewards.c — the [reward.NAME] sections: one reward component
 * each (`plugin = ...`, `weight = 1.0`), combined as a weighted sum. */
#include <stdlib.h>
#include <string.h>

#include "train/rewards.h"

#define LATHE_MAX_REWARDS 32

int lathe_rewards_create(lathe_config *cfg, const struct lathe_registry *reg, const struct lathe_env *env,
                         struct lathe_reward_inst **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    lathe_section *secs[LATHE_MAX_REWARDS];
    size_t ns = lathe_config_sections(cfg, "reward", secs, LATHE_MAX_REWARDS);
    if (ns > LATHE_MAX_REWARDS)
        return lathe_error(LATHE_ECONFIG, "%s: at most %d [reward.*] sections", lathe_config_path(cfg), LATHE_MAX_REWARDS);
    if (ns == 0)
        return LATHE_OK;
    struct lathe_reward_inst *r = calloc(ns, sizeof *r);
    if (!r)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    int rc = LATHE_OK;
    size_t k = 0;
    for (size_t i = 0; i < ns && rc == LATHE_OK; i++) {
        const char *sname = lathe_section_name(secs[i]);
        if (strcmp(sname, "reward") == 0) {
            rc = lathe_error(LATHE_ECONFIG, "%s: name each reward: [reward.NAME] (e.g. [reward.format])",
                             lathe_config_path(cfg));
            break;
        }
        const char *plugin;
        const void *ops = NULL;
        const char *file = NULL;
        rc = lathe_cfg_string(secs[i], "plugin", NULL, &plugin);
        if (rc == LATHE_OK)
            rc = lathe_cfg_float(secs[i], "weight", 1.0, -1e9, 1e9, &r[k].weight);
        if (rc == LATHE_OK && (rc = lathe_registry_find(reg, LATHE_KIND_REWARD, plugin, &ops, &file)) != LATHE_OK)
            rc = lathe_error_prefix(rc, "%s: [%s] plugin = %s", lathe_config_path(cfg), sname, plugin);
        if (rc != LATHE_OK)
            break;
        r[k].name = sname + strlen("reward.");
        r[k].ops = ops;
        rc = r[k].ops->create(secs[i], env, &r[k].self);
        if (rc != LATHE_OK) {
            rc = lathe_error_prefix(rc, "[%s] %s (%s)", sname, plugin, file);
            break;
        }
        k++;
    }
    if (rc != LATHE_OK) {
        lathe_rewards_destroy(r, k);
        return rc;
    }
    *out = r;
    *n = k;
    return LATHE_OK;
}

void lathe_rewards_destroy(struct lathe_reward_inst *r, size_t n)
{
    for (size_t i = 0; r && i < n; i++)
        if (r[i].self)
            r[i].ops->destroy(r[i].self);
    free(r);
}

int lathe_rewards_score(const struct lathe_reward_inst *r, size_t n, const char *completion, const char *answer,
                        const char *fields_json, double *values, double *total)
{
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) {
        double v = 0.0;
        int rc = r[i].ops->score(r[i].self, completion, answer, fields_json, &v);
        if (rc != LATHE_OK)
            return lathe_error_prefix(rc, "[reward.%s]", r[i].name);
        if (values)
            values[i] = v;
        sum += r[i].weight * v;
    }
    *total = sum;
    return LATHE_OK;
}
