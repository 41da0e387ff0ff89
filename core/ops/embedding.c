/* core/ops/embedding.c — token embedding lookup. */
#include <lathe/ops.h>

#include "tensor/autograd.h"

static void embedding_backward(struct lathe_node *nd)
{
    lathe_tensor *w = nd->in[0], *ids = nd->in[1];
    float *dw = lathe_node_grad(w); /* [V, C] */
    if (dw)
        lathe_backend()->embedding_backward(dw, nd->out->grad->data, ids->data,
                                            lathe_tensor_numel(ids), w->shape[1]);
}

lathe_tensor *lathe_embedding(lathe_tensor *w, lathe_tensor *ids)
{
    LATHE_OP_CHECK_INPUTS(w, ids);
    if (lathe_op_expect_f32("lathe_embedding", w) || lathe_op_expect_i32("lathe_embedding", ids))
        return NULL;
    char sw[96], si[96];
    lathe_tensor_shape_str(w, sw, sizeof sw);
    lathe_tensor_shape_str(ids, si, sizeof si);
    if (w->ndim != 2 || ids->ndim + 1 > LATHE_MAX_DIMS) {
        lathe_error(LATHE_EINVAL, "lathe_embedding: w %s and ids %s: w must be [V, C] and ids "
                                  "at most %d-D", sw, si, LATHE_MAX_DIMS - 1);
        return NULL;
    }
    int64_t V = w->shape[0], C = w->shape[1], N = lathe_tensor_numel(ids);
    /* An id out of range would read outside w; ids in host memory are
     * checked here (a device backend's kernel must guard its own). */
    if (ids->device == LATHE_DEVICE_CPU) {
        const int32_t *id = ids->data;
        for (int64_t n = 0; n < N; n++)
            if (id[n] < 0 || id[n] >= V) {
                lathe_error(LATHE_EINVAL, "lathe_embedding: ids %s element %lld is %d, outside "
                                          "[0, %lld) of w %s; check the tokenizer's vocabulary size",
                            si, (long long)n, id[n], (long long)V, sw);
                return NULL;
            }
    }
    int64_t shape[LATHE_MAX_DIMS];
    for (int d = 0; d < ids->ndim; d++)
        shape[d] = ids->shape[d];
    shape[ids->ndim] = C;
    lathe_tensor *out = lathe_op_result(LATHE_F32, ids->ndim + 1, shape);
    if (!out)
        return NULL;
    lathe_backend()->embedding_forward(out->data, ids->data, w->data, N, C);
    lathe_tensor *in[2] = {w, ids};
    lathe_node_record(out, embedding_backward, 2, in);
    return out;
}
