/* lathe/policy.h — log-probabilities under the policy being trained and
 * under a reference policy, for preference and RL losses (DPO, GRPO).
 *
 * The reference is the model as it was when the reference was opened:
 * with a PEFT plugin that can switch its adapter off, the base model with
 * the adapter off (no second copy in memory); otherwise a frozen copy of
 * the model's parameters. */
#ifndef LATHE_POLICY_H
#define LATHE_POLICY_H

#include "env.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lathe_reference lathe_reference;

/* Needs env->model_ops/model_self (set by the core before data and loss
 * components are created). */
int lathe_reference_open(lathe_reference **out, const struct lathe_env *env);
void lathe_reference_close(lathe_reference *ref);
/* "adapter off" or "frozen copy", for logs. */
const char *lathe_reference_kind(const lathe_reference *ref);

/* log p(labels) per position [B, T] (0 where the label is ignored) of the
 * reference / of the current policy, with the logits divided by
 * temperature (1: plain), computed without recording anything for
 * backward. The result is caller-owned (lathe_tensor_free). */
lathe_tensor *lathe_reference_logprobs(lathe_reference *ref, const struct lathe_batch *batch, float temperature);
lathe_tensor *lathe_policy_logprobs(const struct lathe_env *env, const struct lathe_batch *batch, float temperature);

#ifdef __cplusplus
}
#endif
#endif
