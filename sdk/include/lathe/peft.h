/* lathe/peft.h — parameter-efficient fine-tuning (LATHE_KIND_PEFT). */
#ifndef LATHE_PEFT_H
#define LATHE_PEFT_H

#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

struct lathe_peft_ops {
    uint32_t size;
    int (*create)(lathe_section *cfg, const struct lathe_env *env, void **self);
    void (*destroy)(void *self);
    /* Wrap the model: set hooks on the chosen linears, clear requires_grad
     * of frozen base parameters, make the adapter parameters. */
    int (*apply)(void *self, struct lathe_linear *const *linears, size_t nlin,
                 lathe_tensor *const *model_params, size_t nparams);
    /* The adapter's own parameters (owned by the plugin). */
    int (*params)(void *self, lathe_tensor *const **params, size_t *n);
    /* optional: write the adapter to dir. */
    int (*save)(void *self, const char *dir);

    /* ---- ABI 1.1 ---- */
    /* optional: switch the adapter off (0) and on (1): with it off the model
     * computes the base model, which serves as the reference policy of RL
     * fine-tuning without a second copy in memory. */
    int (*set_enabled)(void *self, int enabled);
};

#ifdef __cplusplus
}
#endif
#endif
