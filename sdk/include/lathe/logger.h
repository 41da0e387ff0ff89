/* lathe/logger.h — metric sinks (LATHE_KIND_LOGGER). The core's own
 * metrics.jsonl and TensorBoard writers use this same struct. */
#ifndef LATHE_LOGGER_H
#define LATHE_LOGGER_H

#include "env.h"

#ifdef __cplusplus
extern "C" {
#endif

struct lathe_logger_ops {
    uint32_t size;
    int (*create)(lathe_section *cfg, const struct lathe_env *env, void **self);
    void (*destroy)(void *self);
    /* n scalars of one step ("train/loss", ...). Names borrowed. */
    int (*scalars)(void *self, int64_t step, const char *const *names,
                   const double *values, size_t n);
    /* optional: NULL means writes are already durable. */
    int (*flush)(void *self);
};

/* Any component may report a scalar of the current training step
 * ("grpo/reward_mean", "zero/bytes_sent", ...): the loop logs it with the
 * step's own scalars to every logger (metrics.jsonl, TensorBoard), as the
 * mean of the values reported during the step. The name is copied. */
int lathe_report_scalar(const char *name, double value);

#ifdef __cplusplus
}
#endif
#endif
