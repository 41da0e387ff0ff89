/* lathe/optim.h — optimizers (LATHE_KIND_OPTIMIZER) and learning-rate
 * schedules (LATHE_KIND_SCHEDULER). */
#ifndef LATHE_OPTIM_H
#define LATHE_OPTIM_H

#include "env.h"

#ifdef __cplusplus
extern "C" {
#endif

struct lathe_optim_ops {
    uint32_t size;
    /* params: the trainable parameters only (borrowed; they outlive the
     * optimizer). Their grads hold the summed gradient at step time. */
    int (*create)(lathe_section *cfg, const struct lathe_env *env,
                  lathe_tensor *const *params, size_t n, void **self);
    void (*destroy)(void *self);
    /* The configured peak learning rate ([optim] lr). */
    double (*base_lr)(void *self);
    /* One update with learning rate lr (the schedule applied). Does not zero
     * the grads; the loop does. */
    int (*step)(void *self, double lr);
    int (*state_save)(void *self, lathe_state *st);
    int (*state_load)(void *self, lathe_state *st);
    /* optional: bytes of optimizer state (for memory reports); NULL: 0 */
    size_t (*state_bytes)(void *self);
};

struct lathe_sched_ops {
    uint32_t size;
    int (*create)(lathe_section *cfg, const struct lathe_env *env, void **self);
    void (*destroy)(void *self);
    /* Multiplier of the base lr for update `step` (0-based) of `total`.
     * A pure function of its arguments, so resuming needs no saved state. */
    double (*factor)(void *self, int64_t step, int64_t total);
};

#ifdef __cplusplus
}
#endif
#endif
