/* core/train/scaler.h — dynamic loss scaling for precision = fp16.
 *
 * f16 holds magnitudes from 2^-24 to 65504 only, so small gradients vanish
 * in it. The loss is multiplied by `scale` before the backward pass (the
 * gradients grow by the same factor), and the gradients are divided by it
 * again before clipping and the optimizer. When any gradient comes out inf
 * or NaN, the scale was too large: the step is skipped and the scale halves;
 * after `growth_interval` clean steps in a row it doubles. This is
 * torch.amp.GradScaler's rule (init 2^16, growth 2, backoff 0.5, interval
 * 2000 are its defaults and the numbers). A fixed scale (loss_scale
 * = NUMBER) never changes but still skips non-finite steps.
 *
 * A skipped step still counts as a step: its batch is consumed, the
 * schedule advances and the step is logged, only the optimizer update is
 * left out (the optimizer's own step count, and so Adam's bias correction,
 * does not advance), as in a torch loop that calls scheduler.step() after
 * scaler.step(optimizer). The state below is saved in checkpoints, so a
 * resumed run continues with the same scale. Internal to liblathe. */
#ifndef LATHE_CORE_TRAIN_SCALER_H
#define LATHE_CORE_TRAIN_SCALER_H

#include <float.h>
#include <stdint.h>

#define LATHE_LOSS_SCALE_GROWTH 2.0
#define LATHE_LOSS_SCALE_BACKOFF 0.5
/* Below this the scale cannot help any more: the gradients are not finite
 * at any scale (a NaN in the forward pass, or a diverged run). */
#define LATHE_LOSS_SCALE_MIN 0x1p-24

struct lathe_loss_scaler {
    int enabled;             /* precision = fp16 */
    int dynamic;             /* 0: a fixed scale */
    double scale;            /* the current scale (a value an f32 holds) */
    int64_t growth_interval; /* clean steps in a row before the scale doubles */
    int64_t clean_steps;     /* clean steps since the scale last changed */
    int64_t skipped_steps;   /* steps skipped for non-finite gradients, in total */
};

/* After a step's gradients are complete (reduced across ranks); finite:
 * whether every gradient is finite. Returns 1 when the optimizer step must
 * be skipped, 0 otherwise. */
static inline int lathe_loss_scaler_update(struct lathe_loss_scaler *s, int finite)
{
    if (!s->enabled)
        return 0;
    if (!finite) {
        s->skipped_steps++;
        s->clean_steps = 0;
        if (s->dynamic)
            s->scale *= LATHE_LOSS_SCALE_BACKOFF;
        return 1;
    }
    if (s->dynamic && ++s->clean_steps >= s->growth_interval) {
        /* the seed of the backward pass is an f32: the scale stays one */
        if (s->scale * LATHE_LOSS_SCALE_GROWTH <= FLT_MAX)
            s->scale *= LATHE_LOSS_SCALE_GROWTH;
        s->clean_steps = 0;
    }
    return 0;
}

#endif
