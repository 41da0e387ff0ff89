/* core/train/policy.c — policy and reference log-probabilities (policy.h). */
#include <stdlib.h>
#include <string.h>

#include <lathe/lathe.h>

struct lathe_reference {
    const struct lathe_env *env;
    int adapter_off;             /* 1: switch the PEFT adapter off; 0: copy */
    void *copy;                  /* frozen model instance (copy mode) */
};

int lathe_reference_open(lathe_reference **out, const struct lathe_env *env)
{
    *out = NULL;
    if (!env->model_ops || !env->model_self)
        return lathe_error(LATHE_EINVAL, "reference policy: the run's model is not available yet");
    lathe_reference *ref = calloc(1, sizeof *ref);
    if (!ref)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    ref->env = env;
    if (env->peft_ops && LATHE_OPS_HAS(env->peft_ops, struct lathe_peft_ops, set_enabled)) {
        ref->adapter_off = 1;
        *out = ref;
        return LATHE_OK;
    }
    /* a second instance from the same [model] section, then the current
     * weights copied in (a model built from scratch would otherwise differ) */
    const struct lathe_model_ops *mo = env->model_ops;
    int rc = mo->create(lathe_config_section(env->config, "model"), env, &ref->copy);
    lathe_tensor *const *a = NULL, *const *b = NULL;
    size_t na = 0, nb = 0;
    if (rc == LATHE_OK)
        rc = mo->params(env->model_self, &a, &na);
    if (rc == LATHE_OK)
        rc = mo->params(ref->copy, &b, &nb);
    if (rc == LATHE_OK && na != nb)
        rc = lathe_error(LATHE_EINVAL, "reference policy: the copy has %zu parameters, the model %zu", nb, na);
    for (size_t i = 0; rc == LATHE_OK && i < na; i++) {
        rc = lathe_tensor_copy(b[i], a[i]);
        b[i]->requires_grad = 0;
    }
    if (rc != LATHE_OK) {
        lathe_reference_close(ref);
        return lathe_error_prefix(rc, "reference policy (frozen copy of the model)");
    }
    *out = ref;
    return LATHE_OK;
}

void lathe_reference_close(lathe_reference *ref)
{
    if (!ref)
        return;
    if (ref->copy)
        ref->env->model_ops->destroy(ref->copy);
    free(ref);
}

const char *lathe_reference_kind(const lathe_reference *ref)
{
    return ref->adapter_off ? "adapter off" : "frozen copy";
}

/* log-probs of the labels under model `self`, caller-owned [B, T] */
static lathe_tensor *logprobs_of(const struct lathe_model_ops *mo, void *self, const struct lathe_batch *batch,
                                 float temperature)
{
    lathe_tensor *out = lathe_tensor_new_owned(LATHE_F32, 2, (int64_t[]){batch->B, batch->T});
    if (!out)
        return NULL;
    lathe_no_grad_begin();
    lathe_scope_push();
    lathe_tensor *logits = mo->forward(self, batch, 0);
    if (logits && temperature != 1.0f)
        logits = lathe_scale(logits, 1.0f / temperature);
    lathe_tensor *lp = lathe_token_logprobs(logits, batch->labels, LATHE_IGNORE_INDEX);
    int rc = lp ? lathe_tensor_copy(out, lp) : LATHE_EINVAL;
    lathe_scope_pop();
    lathe_no_grad_end();
    if (rc != LATHE_OK) {
        lathe_tensor_free(out);
        lathe_error_prefix(LATHE_EINVAL, "log-probabilities");
        return NULL;
    }
    return out;
}

lathe_tensor *lathe_reference_logprobs(lathe_reference *ref, const struct lathe_batch *batch, float temperature)
{
    const struct lathe_env *env = ref->env;
    if (!ref->adapter_off)
        return logprobs_of(env->model_ops, ref->copy, batch, temperature);
    if (env->peft_ops->set_enabled(env->peft_self, 0) != LATHE_OK)
        return NULL;
    lathe_tensor *out = logprobs_of(env->model_ops, env->model_self, batch, temperature);
    if (env->peft_ops->set_enabled(env->peft_self, 1) != LATHE_OK) {
        lathe_tensor_free(out);
        return NULL;
    }
    return out;
}

lathe_tensor *lathe_policy_logprobs(const struct lathe_env *env, const struct lathe_batch *batch, float temperature)
{
    if (!env->model_ops || !env->model_self) {
        lathe_error(LATHE_EINVAL, "policy log-probabilities: the run's model is not available");
        return NULL;
    }
    return logprobs_of(env->model_ops, env->model_self, batch, temperature);
}
