/* lathe/env.h — what the core hands every component: the run environment,
 * batches, and the checkpoint state store. */
#ifndef LATHE_ENV_H
#define LATHE_ENV_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

struct lathe_model_ops;
struct lathe_peft_ops;
struct lathe_reward_ops;

enum lathe_precision { LATHE_PRECISION_FP32 = 0, LATHE_PRECISION_BF16, LATHE_PRECISION_FP16 };

/* Borrowed by every create(); valid for the life of the run. */
struct lathe_env {
    uint32_t size;             /* sizeof(struct lathe_env) of the host */
    const char *output_dir;    /* [run] output_dir, exists */
    uint64_t seed;             /* [run] seed */
    int device;                /* enum lathe_device */
    int precision;             /* enum lathe_precision */
    int64_t batch_size;        /* rows per micro-batch ([train] batch_size) */
    int64_t grad_accum;        /* micro-batches per optimizer step */
    int64_t steps;             /* optimizer steps of the run */
    int rank, world_size;      /* this process among the run's processes */
    lathe_config *config;      /* the whole configuration */

    /* ---- ABI 1.1: what components that sample or score need ---- */
    /* The run's model, set once it exists (NULL while the model itself is
     * being created): data components that sample from the policy (RL
     * rollouts) use it through its ops. */
    const struct lathe_model_ops *model_ops;
    void *model_self;
    /* The [peft] instance or NULL (e.g. to switch an adapter off for a
     * reference policy). */
    const struct lathe_peft_ops *peft_ops;
    void *peft_self;
    /* The [reward.*] instances, in file order. */
    const struct lathe_reward_inst *rewards;
    size_t nrewards;
};

/* One configured reward function ([reward.NAME] plugin = ..., weight = ...). */
struct lathe_reward_inst {
    const char *name;                    /* "format" of [reward.format] */
    const struct lathe_reward_ops *ops;
    void *self;
    double weight;                       /* [reward.NAME] weight (1.0) */
};

enum lathe_split { LATHE_SPLIT_TRAIN = 0, LATHE_SPLIT_EVAL = 1 };

#define LATHE_IGNORE_INDEX (-100)

/* One micro-batch. Tensors are made by the data component inside the
 * caller's scope, so they are freed when the step's scope pops. */
struct lathe_batch {
    uint32_t size;             /* sizeof(struct lathe_batch) of the host */
    int64_t B, T;
    lathe_tensor *input_ids;   /* I32 [B,T] */
    lathe_tensor *labels;      /* I32 [B,T]: the target of each position
                                  (already shifted), LATHE_IGNORE_INDEX = none */
    lathe_tensor *positions;   /* I32 [B,T] or NULL (0..T-1 in each row) */
    lathe_tensor *segments;    /* I32 [B,T] or NULL: attention stays inside a
                                  segment (packing, padding) */
    lathe_tensor *targets;     /* F32 regression targets or NULL */
    int64_t ntokens;           /* labels that are not ignored */

    /* ---- ABI 1.1: policy-gradient losses (GRPO); NULL otherwise ---- */
    lathe_tensor *advantages;  /* F32 [B,T]: each row's advantage, on every position */
    lathe_tensor *old_logps;   /* F32 [B,T]: log-prob of each label under the sampling policy */
    lathe_tensor *ref_logps;   /* F32 [B,T]: ... under the reference policy (or NULL) */
};

/* ---- checkpoint state --------------------------------------------------
 * Components save and restore their state through a lathe_state. The core
 * gives each component keys of its own (it prefixes them), writes tensors to
 * a safetensors file and scalars to JSON. */
typedef struct lathe_state lathe_state;

/* Saving: the tensor is read when the checkpoint is written, before the
 * save call of the next component returns to the loop; keep it alive until
 * then (parameters and optimizer moments are). */
int lathe_state_put_tensor(lathe_state *st, const char *key, const lathe_tensor *t);
int lathe_state_put_i64(lathe_state *st, const char *key, int64_t v);
int lathe_state_put_f64(lathe_state *st, const char *key, double v);
int lathe_state_put_str(lathe_state *st, const char *key, const char *v);
/* Loading: copies into dst (shape must match; dtype converted). A missing
 * key is an error naming the checkpoint and key. */
int lathe_state_get_tensor(lathe_state *st, const char *key, lathe_tensor *dst);
int lathe_state_get_i64(lathe_state *st, const char *key, int64_t *v);
int lathe_state_get_f64(lathe_state *st, const char *key, double *v);
/* The string stays valid while the state lives. */
int lathe_state_get_str(lathe_state *st, const char *key, const char **v);

/* ---- a state of a component's own (ABI 1.1) ----
 * For files a component writes beside the checkpoint's shared state, e.g. a
 * sharding strategy saving each rank's optimizer shard (the optimizer's
 * state_save fills the state; the strategy writes it under a name of its
 * own). The layout is the checkpoint's: DIR/state.safetensors holds the
 * tensors, DIR/state.json the scalars. */
/* An empty state with no prefix, owned by the caller; NULL when out of
 * memory. */
lathe_state *lathe_state_create(void);
void lathe_state_destroy(lathe_state *st);
/* Write the state into dir (made if missing; its parent must exist).
 * Tensors put into the state must still be alive. */
int lathe_state_save_dir(const lathe_state *st, const char *dir);
/* Read a state written by lathe_state_save_dir (or a checkpoint directory);
 * *out is the caller's, freed with lathe_state_destroy. */
int lathe_state_load_dir(lathe_state **out, const char *dir);

#ifdef __cplusplus
}
#endif
#endif
