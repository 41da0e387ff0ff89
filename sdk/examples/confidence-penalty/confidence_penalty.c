/* A lathe loss plugin built out of tree against the installed SDK:
 * cross-entropy minus beta times the mean entropy of the predictions, the
 * "confidence penalty" of Pereyra et al., "Regularizing Neural Networks by
 * Penalizing Confident Output Distributions" (2017).
 *
 *   cc -std=c99 -fPIC -shared -fvisibility=hidden $(pkg-config --cflags lathe) \
 *      confidence_penalty.c -o lathe-confidence-penalty.so $(pkg-config --libs lathe)
 *
 * and in RUN.ini:  [loss]  plugin = confidence-penalty  beta = 0.1 */
#include <lathe/lathe.h>
#include <stdlib.h>

struct penalty {
    double beta;
};

static int penalty_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    (void)env;
    struct penalty *p = calloc(1, sizeof *p);
    if (!p)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    int rc = lathe_cfg_float(cfg, "beta", 0.1, 0.0, 10.0, &p->beta);
    if (rc != LATHE_OK) {
        free(p);
        return rc;
    }
    *self = p;
    return LATHE_OK;
}

static void penalty_destroy(void *self) { free(self); }

/* logits [B, T, V] -> scalar: CE(logits, labels) - beta * mean_t H(p_t).
 * (The entropy is averaged over every position, padding included.) */
static lathe_tensor *penalty_forward(void *self, lathe_tensor *logits, const struct lathe_batch *batch)
{
    const struct penalty *p = self;
    lathe_tensor *ce = lathe_cross_entropy(logits, batch->labels, LATHE_IGNORE_INDEX, 0.0f);
    /* sum_v p_v log p_v = -H, summed over positions */
    lathe_tensor *neg_h = lathe_sum(lathe_mul(lathe_softmax(logits), lathe_log_softmax(logits)));
    float positions = (float)(batch->B * batch->T);
    return lathe_add(ce, lathe_scale(neg_h, (float)p->beta / positions));
}

static const struct lathe_loss_ops penalty_ops = {
    .size = sizeof(struct lathe_loss_ops),
    .create = penalty_create,
    .destroy = penalty_destroy,
    .forward = penalty_forward,
};

static const struct lathe_component components[] = {
    {.kind = LATHE_KIND_LOSS, .name = "confidence-penalty", .ops = &penalty_ops},
    {0},
};

LATHE_PLUGIN_DEFINE(confidence_penalty, .version = "1.0.0", .license = "MIT",
                    .description = "cross-entropy with a confidence penalty (Pereyra et al. 2017)",
                    .components = components)
