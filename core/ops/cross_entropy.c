/* core/ops/cross_entropy.c — mean token cross-entropy with ignore_index and
 * label smoothing, and per-token log-probabilities (the same kernels;
 * kernel and formula in core/cpu/softmax.c).
 *
 * The targets are read on the host once per call: to refuse out-of-range
 * ids with their position, and to count the rows that enter the mean. */
#include <stdlib.h>

#include <lathe/ops.h>

#include "tensor/autograd.h"

/* in: logits, targets; saved: loss rows [N], lse [N], dloss rows [N];
 * i: N, V, ignore_index, count; f: smoothing */
static void cross_entropy_backward(struct lathe_node *nd)
{
    lathe_tensor *logits = nd->in[0], *targets = nd->in[1];
    float *dlogits = lathe_node_grad(logits); /* [N, V] */
    int64_t N = nd->i[0], V = nd->i[1], count = nd->i[3];
    if (!dlogits || count == 0)
        return; /* every row ignored: the gradient is zero */
    const struct lathe_backend_ops *be = lathe_backend();
    float *dloss = nd->saved[2]->data; /* [N] */
    /* d(mean)/d(row loss) = 1/count; ignored rows are skipped by the kernel */
    be->zero(dloss, sizeof(float) * (size_t)N);
    be->fill_add(dloss, nd->out->grad->data, 1.0f / (float)count, N);
    be->cross_entropy_backward(dlogits, dloss, logits->data, nd->saved[1]->data, targets->data,
                               N, V, (int32_t)nd->i[2], nd->f[0]);
}

/* Checks every target is ignore_index or in [0, V); *count = rows kept. */
static int count_targets(const lathe_tensor *targets, int64_t N, int64_t V, int32_t ignore_index,
                         int64_t *count)
{
    const struct lathe_backend_ops *be = lathe_backend();
    int32_t *t = malloc(sizeof *t * (size_t)(N > 0 ? N : 1));
    if (!t)
        return lathe_error(LATHE_ENOMEM, "lathe_cross_entropy: out of memory reading %lld targets",
                           (long long)N);
    int rc = be->copy(t, targets->data, sizeof *t * (size_t)N, 0);
    if (rc != LATHE_OK) {
        free(t);
        return lathe_error_prefix(rc, "lathe_cross_entropy: reading the targets");
    }
    int64_t c = 0;
    for (int64_t n = 0; n < N; n++) {
        if (t[n] == ignore_index)
            continue;
        if (t[n] < 0 || t[n] >= V) {
            rc = lathe_error(LATHE_EINVAL, "lathe_cross_entropy: target %d at position %lld is "
                                           "outside the vocabulary [0, %lld) and is not the "
                                           "ignore_index %d", (int)t[n], (long long)n,
                             (long long)V, (int)ignore_index);
            free(t);
            return rc;
        }
        c++;
    }
    free(t);
    *count = c;
    return LATHE_OK;
}

lathe_tensor *lathe_cross_entropy(lathe_tensor *logits, lathe_tensor *targets,
                                  int32_t ignore_index, float label_smoothing)
{
    LATHE_OP_CHECK_INPUTS(logits, targets);
    const char *op = "lathe_cross_entropy";
    if (lathe_op_expect_f32(op, logits) || lathe_op_expect_i32(op, targets))
        return NULL;
    int64_t N = lathe_op_rows(logits), V = logits->shape[logits->ndim - 1];
    char sl[96], st[96];
    lathe_tensor_shape_str(logits, sl, sizeof sl);
    lathe_tensor_shape_str(targets, st, sizeof st);
    int lead_ok = targets->ndim == logits->ndim - 1;
    for (int d = 0; lead_ok && d < targets->ndim; d++)
        lead_ok = targets->shape[d] == logits->shape[d];
    /* [B, T, V] against [B*T] is accepted too: rows are what matter */
    if (!lead_ok && lathe_tensor_numel(targets) != N) {
        lathe_error(LATHE_EINVAL, "%s: logits %s need targets of shape %s without its last dim "
                                  "(%lld values), got %s", op, sl, sl, (long long)N, st);
        return NULL;
    }
    if (V == 0) {
        lathe_error(LATHE_EINVAL, "%s: logits %s have an empty vocabulary dim", op, sl);
        return NULL;
    }
    if (!(label_smoothing >= 0.0f && label_smoothing < 1.0f)) {
        lathe_error(LATHE_EINVAL, "%s: label_smoothing must be in [0, 1), got %g", op,
                    (double)label_smoothing);
        return NULL;
    }
    int64_t count = 0;
    if (count_targets(targets, N, V, ignore_index, &count) != LATHE_OK)
        return NULL;
    int64_t one = 1;
    int grad = lathe_grad_enabled() && logits->requires_grad;
    lathe_tensor *out = lathe_op_result(LATHE_F32, 1, &one);
    lathe_tensor *rows = lathe_op_result(LATHE_F32, 1, &N);
    lathe_tensor *lse = lathe_op_result(LATHE_F32, 1, &N);
    lathe_tensor *dloss = grad ? lathe_op_result(LATHE_F32, 1, &N) : NULL;
    if (!out || !rows || !lse || (grad && !dloss))
        return NULL;
    const struct lathe_backend_ops *be = lathe_backend();
    be->cross_entropy_forward(rows->data, lse->data, logits->data, targets->data, N, V,
                              ignore_index, label_smoothing);
    if (count > 0) {
        be->sum(out->data, rows->data, N);
        be->scale(out->data, out->data, 1.0f / (float)count, 1, 0);
    } else {
        be->zero(out->data, sizeof(float));
    }
    lathe_tensor *in[2] = {logits, targets};
    struct lathe_node *nd = lathe_node_record(out, cross_entropy_backward, 2, in);
    if (nd) {
        nd->saved[0] = rows;
        nd->saved[1] = lse;
        nd->saved[2] = dloss;
        nd->i[0] = N;
        nd->i[1] = V;
        nd->i[2] = ignore_index;
        nd->i[3] = count;
        nd->f[0] = label_smoothing;
    }
    return out;
}

/* ---- per-token log-probabilities -------------------------------------- */

/* in: logits, targets; saved: lse [N], scratch [N]; i: N, V, ignore_index.
 * logp = -(per-row cross-entropy), so dlogits += (-dlogp) (softmax - onehot),
 * the cross-entropy kernel with dloss = -dlogp. */
static void token_logprobs_backward(struct lathe_node *nd)
{
    lathe_tensor *logits = nd->in[0], *targets = nd->in[1];
    float *dlogits = lathe_node_grad(logits); /* [N, V] */
    if (!dlogits)
        return;
    const struct lathe_backend_ops *be = lathe_backend();
    int64_t N = nd->i[0], V = nd->i[1];
    float *dl = nd->saved[1]->data; /* [N] */
    be->scale(dl, nd->out->grad->data, -1.0f, N, 0);
    be->cross_entropy_backward(dlogits, dl, logits->data, nd->saved[0]->data, targets->data, N, V,
                               (int32_t)nd->i[2], 0.0f);
}

lathe_tensor *lathe_token_logprobs(lathe_tensor *logits, lathe_tensor *targets, int32_t ignore_index)
{
    LATHE_OP_CHECK_INPUTS(logits, targets);
    const char *op = "lathe_token_logprobs";
    if (lathe_op_expect_f32(op, logits) || lathe_op_expect_i32(op, targets))
        return NULL;
    int64_t N = lathe_op_rows(logits), V = logits->shape[logits->ndim - 1];
    int lead_ok = targets->ndim == logits->ndim - 1;
    for (int d = 0; lead_ok && d < targets->ndim; d++)
        lead_ok = targets->shape[d] == logits->shape[d];
    if (!lead_ok || V == 0) {
        char sl[96], st[96];
        lathe_error(LATHE_EINVAL, "%s: logits %s need targets of their shape without the last dim, got %s", op,
                    lathe_tensor_shape_str(logits, sl, sizeof sl), lathe_tensor_shape_str(targets, st, sizeof st));
        return NULL;
    }
    int64_t count;
    if (count_targets(targets, N, V, ignore_index, &count) != LATHE_OK)
        return NULL;
    lathe_tensor *out = lathe_op_result(LATHE_F32, targets->ndim, targets->shape);
    lathe_tensor *lse = lathe_op_result(LATHE_F32, 1, &N);
    lathe_tensor *scratch = lathe_op_result(LATHE_F32, 1, &N);
    if (!out || !lse || !scratch)
        return NULL;
    const struct lathe_backend_ops *be = lathe_backend();
    be->cross_entropy_forward(scratch->data, lse->data, logits->data, targets->data, N, V, ignore_index, 0.0f);
    be->scale(out->data, scratch->data, -1.0f, N, 0);
    lathe_tensor *in[2] = {logits, targets};
    struct lathe_node *nd = lathe_node_record(out, token_logprobs_backward, 2, in);
    if (nd) {
        nd->saved[0] = lse;
        nd->saved[1] = scratch;
        nd->i[0] = N;
        nd->i[1] = V;
        nd->i[2] = ignore_index;
    }
    return out;
}
