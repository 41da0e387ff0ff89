/* plugins/mse/mse.c — the mean squared error loss (component "mse").
 *
 * With regression targets (batch->targets, the logits' shape): the mean of
 * (logits - targets)^2 over all elements, as torch.nn.MSELoss.
 * Without: the Brier score (Brier 1950) of the predicted token distribution,
 * the mean over labelled positions of sum_v (softmax(logits)_v - onehot_v)^2.
 * Both are built from ops, so the gradient comes from autograd.
 *
 * [loss] keys: ignore_index (labels to leave out of the Brier mean).
 */
#include <lathe/lathe.h>

#include <stdlib.h>

struct mse {
    int32_t ignore_index;
};

static int mse_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    (void)env;
    *self = NULL;
    int64_t ignore;
    int rc = lathe_cfg_int(cfg, "ignore_index", LATHE_IGNORE_INDEX, INT32_MIN, INT32_MAX, &ignore);
    if (rc)
        return rc;
    struct mse *m = calloc(1, sizeof *m);
    if (!m)
        return lathe_error(LATHE_ENOMEM, "mse: out of memory");
    m->ignore_index = (int32_t)ignore;
    *self = m;
    return LATHE_OK;
}

static void mse_destroy(void *self)
{
    free(self);
}

static lathe_tensor *mse_regression(lathe_tensor *logits, lathe_tensor *targets)
{
    char a[64], b[64];
    if (!lathe_tensor_same_shape(logits, targets)) {
        lathe_error(LATHE_EINVAL, "mse: targets %s do not match the model output %s; the data "
                    "must give one target per output",
                    lathe_tensor_shape_str(targets, a, sizeof a),
                    lathe_tensor_shape_str(logits, b, sizeof b));
        return NULL;
    }
    if (targets->dtype != LATHE_F32) {
        lathe_error(LATHE_EINVAL, "mse: targets are %s; they must be F32",
                    lathe_dtype_name(targets->dtype));
        return NULL;
    }
    lathe_tensor *d = lathe_sub(logits, targets);
    return lathe_mean(lathe_mul(d, d));
}

/* A scoped device tensor holding host data. */
static lathe_tensor *mse_upload(enum lathe_dtype dt, int64_t d0, int64_t d1, const void *host)
{
    lathe_tensor *t = lathe_tensor_new2(dt, d0, d1);
    if (t && lathe_backend()->copy(t->data, host, lathe_tensor_nbytes(t), 1)) {
        lathe_error_prefix(LATHE_ERR, "mse: copying to the device");
        return NULL;
    }
    return t;
}

static lathe_tensor *mse_brier(const struct mse *m, lathe_tensor *logits, lathe_tensor *labels)
{
    const struct lathe_backend_ops *be = lathe_backend();
    char a[64], b[64];
    if (labels->dtype != LATHE_I32 || logits->ndim < 1 ||
        labels->ndim != logits->ndim - 1 ||
        lathe_tensor_numel(labels) * logits->shape[logits->ndim - 1] != lathe_tensor_numel(logits)) {
        lathe_error(LATHE_EINVAL, "mse: labels %s %s do not fit the model output %s; expected "
                    "I32 labels with the output's shape less its last dim",
                    lathe_dtype_name(labels->dtype), lathe_tensor_shape_str(labels, a, sizeof a),
                    lathe_tensor_shape_str(logits, b, sizeof b));
        return NULL;
    }
    int64_t V = logits->shape[logits->ndim - 1];
    int64_t N = lathe_tensor_numel(labels);

    /* Host-side index, weight and mask for the one-hot rows: an ignored
     * position scatters a 0 at index 0 and is masked out of the mean. */
    int32_t *lab = malloc((size_t)N * sizeof *lab);
    int32_t *idx = malloc((size_t)N * sizeof *idx);
    float *hot = malloc((size_t)N * sizeof *hot);
    float *ones = malloc((size_t)V * sizeof *ones);
    lathe_tensor *loss = NULL;
    if (!lab || !idx || !hot || !ones) {
        lathe_error(LATHE_ENOMEM, "mse: out of memory for %lld labels", (long long)N);
        goto done;
    }
    if (be->copy(lab, labels->data, (size_t)N * sizeof *lab, 0)) {
        lathe_error_prefix(LATHE_ERR, "mse: reading the labels");
        goto done;
    }
    int64_t count = 0;
    for (int64_t n = 0; n < N; n++) {
        int keep = lab[n] != m->ignore_index;
        if (keep && (lab[n] < 0 || lab[n] >= V)) {
            lathe_error(LATHE_EINVAL, "mse: label %d at position %lld is outside [0, %lld); "
                        "the data's vocabulary is larger than the model's",
                        lab[n], (long long)n, (long long)V);
            goto done;
        }
        idx[n] = keep ? lab[n] : 0;
        hot[n] = keep ? 1.0f : 0.0f;
        count += keep;
    }
    for (int64_t v = 0; v < V; v++)
        ones[v] = 1.0f;

    lathe_tensor *idx_t = mse_upload(LATHE_I32, N, 1, idx);
    lathe_tensor *hot_t = mse_upload(LATHE_F32, N, 1, hot);
    lathe_tensor *ones_t = mse_upload(LATHE_F32, V, 1, ones);
    lathe_tensor *zeros = lathe_tensor_new2(LATHE_F32, N, V);
    /* onehot [N,V]: zeros with hot[n] added at column idx[n] */
    lathe_tensor *onehot = lathe_scatter_add(zeros, idx_t, hot_t);
    int64_t rows[2] = {N, V};
    lathe_tensor *p = lathe_softmax(lathe_reshape(logits, 2, rows));
    lathe_tensor *d = lathe_sub(p, onehot);
    /* Row sums of d^2 as [N,V]·ones[V,1] -> [N,1], then the mask (hot is
     * also the keep mask) drops the ignored rows. */
    lathe_tensor *row = lathe_matmul(lathe_mul(d, d), ones_t, 0);
    lathe_tensor *total = lathe_sum(lathe_mul(row, hot_t));
    loss = lathe_scale(total, count > 0 ? 1.0f / (float)count : 0.0f);
done:
    free(lab);
    free(idx);
    free(hot);
    free(ones);
    return loss;
}

static lathe_tensor *mse_forward(void *self, lathe_tensor *logits, const struct lathe_batch *batch)
{
    const struct mse *m = self;
    if (!logits)
        return NULL;
    if (batch->targets)
        return mse_regression(logits, batch->targets);
    if (batch->labels)
        return mse_brier(m, logits, batch->labels);
    lathe_error(LATHE_EINVAL, "mse: the batch has neither targets nor labels");
    return NULL;
}

static const struct lathe_loss_ops mse_ops = {
    .size = sizeof(struct lathe_loss_ops),
    .create = mse_create,
    .destroy = mse_destroy,
    .forward = mse_forward,
};

static const struct lathe_component mse_components[] = {
    {.kind = LATHE_KIND_LOSS, .name = "mse", .ops = &mse_ops},
    {0},
};

LATHE_PLUGIN_DEFINE(mse, .version = "0.1.0",
                    .description = "mean squared error, or the Brier score against token labels",
                    .components = mse_components)
