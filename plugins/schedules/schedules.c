/* plugins/schedules/schedules.c — learning-rate schedules "constant",
 * "linear" and "cosine" (LATHE_KIND_SCHEDULER).
 *
 * factor(step, total) for update `step` (0-based) of `total`, W = warmup_steps,
 * r = min_lr_ratio:
 *   step < W:   (step + 1) / W      linear warmup that reaches 1 at step W-1
 *                                   (unlike Hugging Face's step / W, the
 *                                   first update does not get lr 0)
 *   otherwise:  p = clamp((step - W) / max(1, total - W), 0, 1)
 *     constant: 1
 *     linear:   r + (1 - r)(1 - p)
 *     cosine:   r + (1 - r) 0.5 (1 + cos(pi p))
 * p is Hugging Face's progress (transformers' get_cosine_schedule_with_warmup
 * and get_linear_schedule_with_warmup): it reaches 1 at step == total, so
 * the last update (total - 1) still has a small positive lr when r = 0.
 *
 * [scheduler] keys: warmup_steps; min_lr_ratio (linear and cosine only).
 */
#include <lathe/lathe.h>

#include <math.h>
#include <stdlib.h>

enum sched_shape { SCHED_CONSTANT, SCHED_LINEAR, SCHED_COSINE };

struct sched {
    enum sched_shape shape;
    int64_t warmup;
    double min_ratio;
};

static int sched_create(enum sched_shape shape, lathe_section *cfg, void **self)
{
    *self = NULL;
    struct sched *s = calloc(1, sizeof *s);
    if (!s)
        return lathe_error(LATHE_ENOMEM, "scheduler: out of memory");
    s->shape = shape;
    int rc = lathe_cfg_int(cfg, "warmup_steps", 0, 0, INT64_MAX, &s->warmup);
    if (!rc && shape != SCHED_CONSTANT)
        rc = lathe_cfg_float(cfg, "min_lr_ratio", 0.0, 0.0, 1.0, &s->min_ratio);
    if (rc) {
        free(s);
        return rc;
    }
    *self = s;
    return LATHE_OK;
}

static int constant_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    (void)env;
    return sched_create(SCHED_CONSTANT, cfg, self);
}

static int linear_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    (void)env;
    return sched_create(SCHED_LINEAR, cfg, self);
}

static int cosine_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    (void)env;
    return sched_create(SCHED_COSINE, cfg, self);
}

static void sched_destroy(void *self)
{
    free(self);
}

static double sched_factor(void *self, int64_t step, int64_t total)
{
    const struct sched *s = self;
    if (step < 0)
        step = 0;
    if (step < s->warmup)
        return (double)(step + 1) / (double)s->warmup;
    if (s->shape == SCHED_CONSTANT)
        return 1.0;
    int64_t span = total - s->warmup;
    double p = (double)(step - s->warmup) / (double)(span > 1 ? span : 1);
    if (p > 1.0)
        p = 1.0;
    double r = s->min_ratio;
    if (s->shape == SCHED_LINEAR)
        return r + (1.0 - r) * (1.0 - p);
    return r + (1.0 - r) * 0.5 * (1.0 + cos(M_PI * p));
}

static const struct lathe_sched_ops constant_ops = {
    .size = sizeof(struct lathe_sched_ops),
    .create = constant_create,
    .destroy = sched_destroy,
    .factor = sched_factor,
};

static const struct lathe_sched_ops linear_ops = {
    .size = sizeof(struct lathe_sched_ops),
    .create = linear_create,
    .destroy = sched_destroy,
    .factor = sched_factor,
};

static const struct lathe_sched_ops cosine_ops = {
    .size = sizeof(struct lathe_sched_ops),
    .create = cosine_create,
    .destroy = sched_destroy,
    .factor = sched_factor,
};

static const struct lathe_component schedules_components[] = {
    {.kind = LATHE_KIND_SCHEDULER, .name = "constant", .ops = &constant_ops},
    {.kind = LATHE_KIND_SCHEDULER, .name = "linear", .ops = &linear_ops},
    {.kind = LATHE_KIND_SCHEDULER, .name = "cosine", .ops = &cosine_ops},
    {0},
};

LATHE_PLUGIN_DEFINE(schedules, .version = "0.1.0",
                    .description = "constant, linear and cosine learning-rate schedules with warmup",
                    .components = schedules_components)
