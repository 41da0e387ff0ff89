/* lathe/loss.h — loss components (LATHE_KIND_LOSS). */
#ifndef LATHE_LOSS_H
#define LATHE_LOSS_H

#include "env.h"

#ifdef __cplusplus
extern "C" {
#endif

struct lathe_loss_ops {
    uint32_t size;
    int (*create)(lathe_section *cfg, const struct lathe_env *env, void **self);
    void (*destroy)(void *self);
    /* A scalar [1] loss for the batch, built from ops so that it is on the
     * tape; NULL with a message on error. logits [B, T, V]. */
    lathe_tensor *(*forward)(void *self, lathe_tensor *logits, const struct lathe_batch *batch);
};

#ifdef __cplusplus
}
#endif
#endif
