/* lathe/data.h — data components (LATHE_KIND_DATA). */
#ifndef LATHE_DATA_H
#define LATHE_DATA_H

#include "env.h"

#ifdef __cplusplus
extern "C" {
#endif

struct lathe_data_info {
    int64_t vocab_size;      /* ids lie in [0, vocab_size); 0: unknown */
    int64_t seq_len;         /* T of each batch (0: varies) */
    int64_t train_items;     /* windows/samples in the train split */
    int64_t eval_items;      /* in the eval split (0: none) */
};

struct lathe_data_ops {
    uint32_t size;
    int (*create)(lathe_section *cfg, const struct lathe_env *env, void **self);
    void (*destroy)(void *self);
    int (*info)(void *self, struct lathe_data_info *info);
    /* Fill *batch (its size field set by the caller) with the next B rows.
     * The train split cycles through epochs forever, reshuffled per epoch by
     * seed; the eval split returns LATHE_EOF after one full pass and starts
     * again on the next call. Tensors are made in the caller's scope. */
    int (*next)(void *self, int split, int64_t B, struct lathe_batch *batch);
    /* Save / restore the position (epoch, cursor, RNG) for resume. */
    int (*state_save)(void *self, lathe_state *st);
    int (*state_load)(void *self, lathe_state *st);
};

#ifdef __cplusplus
}
#endif
#endif
