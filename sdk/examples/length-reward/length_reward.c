/* A lathe reward plugin built out of tree against the installed SDK: a
 * completion earns 1 at `target` characters, falling linearly to 0 at none
 * and at twice the target (a shaped reward to steer answer length).
 *
 *   cc -std=c99 -fPIC -shared -fvisibility=hidden $(pkg-config --cflags lathe) \
 *      length_reward.c -o lathe-length-reward.so $(pkg-config --libs lathe)
 *
 * and in RUN.ini:  [reward.len]  plugin = length-reward  target = 200  weight = 0.5 */
#include <lathe/lathe.h>
#include <stdlib.h>

struct length_reward {
    int64_t target; /* characters (UTF-8 code points) */
};

static int lr_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    (void)env;
    struct length_reward *r = calloc(1, sizeof *r);
    if (!r)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    int rc = lathe_cfg_int(cfg, "target", 200, 1, 1000000000, &r->target);
    if (rc != LATHE_OK) {
        free(r);
        return rc;
    }
    *self = r;
    return LATHE_OK;
}

static void lr_destroy(void *self) { free(self); }

/* The answer and the other fields of the record are not needed here. */
static int lr_score(void *self, const char *completion, const char *answer, const char *fields_json,
                    double *reward)
{
    const struct length_reward *r = self;
    (void)answer, (void)fields_json;
    if (!completion)
        return lathe_error(LATHE_EINVAL, "length-reward: no completion to score");
    int64_t n = 0;
    for (const unsigned char *p = (const unsigned char *)completion; *p; p++)
        n += (*p & 0xC0) != 0x80; /* count UTF-8 lead bytes */
    double off = (double)(n > r->target ? n - r->target : r->target - n) / (double)r->target;
    *reward = off < 1.0 ? 1.0 - off : 0.0;
    return LATHE_OK;
}

static const struct lathe_reward_ops lr_ops = {
    .size = sizeof(struct lathe_reward_ops),
    .create = lr_create,
    .destroy = lr_destroy,
    .score = lr_score,
};

static const struct lathe_component lr_components[] = {
    {.kind = LATHE_KIND_REWARD, .name = "length-reward", .ops = &lr_ops},
    {0},
};

LATHE_PLUGIN_DEFINE(length_reward, .version = "0.1.0", .license = "MIT",
                    .description = "example: reward a completion for being close to a target length",
                    .components = lr_components)
