/* lathe/model.h — model components (LATHE_KIND_MODEL). */
#ifndef LATHE_MODEL_H
#define LATHE_MODEL_H

#include "env.h"
#include "segment.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A linear layer a model exposes so that PEFT plugins can wrap it without
 * code in the model: the model calls lathe_linear_forward(l, x) and a PEFT
 * plugin sets `hook`. Owned by the model. */
struct lathe_linear {
    const char *name;       /* module path, "h.0.attn.c_attn" */
    lathe_tensor *weight;   /* [out, in] */
    lathe_tensor *bias;     /* [out] or NULL */
    /* Set by a PEFT plugin (NULL: plain linear). Returns the layer's output
     * given the input x and the frozen base output. */
    lathe_tensor *(*hook)(void *hook_self, struct lathe_linear *l, lathe_tensor *x,
                          lathe_tensor *base_out);
    void *hook_self;
};

/* x [..., in] -> [..., out]: the base linear, then the hook if set. */
lathe_tensor *lathe_linear_forward(struct lathe_linear *l, lathe_tensor *x);

struct lathe_model_info {
    int64_t vocab_size;
    int64_t max_seq_len;   /* 0: no limit */
};

struct lathe_model_ops {
    uint32_t size;
    /* Build the model from its section ([model]); parameters are made with
     * lathe_param_new and owned by the model. */
    int (*create)(lathe_section *cfg, const struct lathe_env *env, void **self);
    void (*destroy)(void *self);
    int (*info)(void *self, struct lathe_model_info *info);
    /* Every parameter, in a stable order. The array and tensors stay owned
     * by the model and valid until destroy. */
    int (*params)(void *self, lathe_tensor *const **params, size_t *n);
    /* logits [B, T, V] for the batch, recorded on the tape. train: dropout
     * on. NULL with a message on error. */
    lathe_tensor *(*forward)(void *self, const struct lathe_batch *batch, int train);
    /* optional: NULL means the model exposes no linear layers to PEFT. */
    int (*linears)(void *self, struct lathe_linear *const **out, size_t *n);
    /* optional: NULL means the model cannot be exported; the checkpoint of
     * the run still holds its parameters. Writes the model to `dir`. */
    int (*save)(void *self, const char *dir);

    /* ---- ABI 1.1: incremental decoding (generation). Check with
     * LATHE_OPS_HAS before use; NULL means the model cannot generate. ---- */
    /* A key/value cache for B rows of up to max_len tokens; owned by the
     * caller, freed with cache_free. */
    int (*cache_new)(void *self, int64_t B, int64_t max_len, void **cache);
    void (*cache_free)(void *self, void *cache);
    /* Run the batch's T new tokens of every row after what the cache holds,
     * append their keys and values, and return logits [B, T, V] (scoped;
     * nothing recorded for backward). batch->positions give each token's
     * position (NULL: continuing 0, 1, ...); batch->segments mark padding
     * (segment -1 attends nothing and is attended by nothing else). An
     * overfull cache is an error naming max_len. */
    lathe_tensor *(*forward_cached)(void *self, void *cache, const struct lathe_batch *batch);

    /* ---- ABI 1.2 ---- */
    /* optional: the segments (lathe/segment.h) forward runs its blocks
     * through, in forward order; owned by the model. Parameters in no
     * segment (embeddings, final norm, head) are used for the whole step. */
    int (*segments)(void *self, const struct lathe_segment *const **segs, size_t *n);
};

#ifdef __cplusplus
}
#endif
#endif
