/* lathe/segment.h — segments: a model's repeated unit (a transformer block)
 * run as one piece the core can manage (ABI 1.2).
 *
 * A model runs each block through lathe_segment_run instead of calling it
 * directly. With nothing configured that costs one function call. The run
 * may then, without any code in the model:
 *  - recompute the block in the backward pass instead of keeping its
 *    activations ([train] activation_checkpointing = true): the forward runs
 *    without recording, only the block's input and output stay, and the
 *    backward re-runs the block (same random draws) and back-propagates
 *    through the fresh records;
 *  - gather the block's parameters just before they are used and release
 *    them after, in the forward and again in the backward (a strategy's
 *    acquire/release hooks: ZeRO stage 3).
 *
 * Ownership: the segment and its parameter array belong to the model and
 * must live as long as the model. ctx is copied (ctx_size bytes) and kept
 * until the step's scope pops; pointers inside it must stay valid that long
 * (tensors of the step's scope and the model itself do). */
#ifndef LATHE_SEGMENT_H
#define LATHE_SEGMENT_H

#include <stddef.h>

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

struct lathe_segment {
    const char *name;             /* "layers.3" */
    lathe_tensor *const *params;  /* every parameter the block reads */
    size_t nparams;
};

/* The block: y = fn(ctx, x), made of recorded ops. NULL with a message on
 * error. It must be a pure function of ctx, x, the parameters and the
 * run's generator (lathe_rng_global), so that a recomputation repeats it. */
typedef lathe_tensor *(*lathe_segment_fn)(const void *ctx, lathe_tensor *x);

/* y = fn(ctx, x) under the run's segment policy (above). */
lathe_tensor *lathe_segment_run(const struct lathe_segment *seg, lathe_segment_fn fn, const void *ctx,
                                size_t ctx_size, lathe_tensor *x);

/* What a run installs (the core does it from the configuration and the
 * strategy; a program embedding liblathe may do it itself). */
struct lathe_segment_hooks {
    /* Before the segment's parameters are read, in the forward and in the
     * backward. */
    int (*acquire)(void *self, const struct lathe_segment *seg);
    /* After their last read: backward 0 after the forward, 1 after the
     * segment's backward (its parameters' gradients are then complete for
     * this micro-batch). */
    int (*release)(void *self, const struct lathe_segment *seg, int backward);
    void *self;
};

/* NULL: no hooks. The struct is copied. */
void lathe_segment_set_hooks(const struct lathe_segment_hooks *hooks);
/* 1: recompute segments in the backward (activation checkpointing). */
void lathe_segment_set_recompute(int on);
int lathe_segment_recompute(void);

#ifdef __cplusplus
}
#endif
#endif
