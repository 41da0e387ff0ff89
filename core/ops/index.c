/* core/ops/index.c — gather and scatter_add along the last dim. */
#include <lathe/ops.h>

#include "tensor/autograd.h"

/* Checks x [..., V] against idx [..., K] (same leading dims) and, in host
 * memory, that every index is in [0, V). */
static int check_index(const char *op, const lathe_tensor *x, const lathe_tensor *idx)
{
    char sx[96], si[96];
    lathe_tensor_shape_str(x, sx, sizeof sx);
    lathe_tensor_shape_str(idx, si, sizeof si);
    int same = x->ndim == idx->ndim;
    for (int d = 0; same && d < x->ndim - 1; d++)
        same = x->shape[d] == idx->shape[d];
    if (!same)
        return lathe_error(LATHE_EINVAL, "%s: x %s and idx %s: leading dims must be equal", op,
                           sx, si);
    int64_t V = x->shape[x->ndim - 1], n = lathe_tensor_numel(idx);
    if (idx->device == LATHE_DEVICE_CPU) {
        const int32_t *id = idx->data;
        for (int64_t i = 0; i < n; i++)
            if (id[i] < 0 || id[i] >= V)
                return lathe_error(LATHE_EINVAL, "%s: idx %s element %lld is %d, outside [0, %lld) "
                                                 "of x %s", op, si, (long long)i, id[i],
                                   (long long)V, sx);
    }
    return LATHE_OK;
}

static void gather_backward(struct lathe_node *nd)
{
    lathe_tensor *x = nd->in[0], *idx = nd->in[1];
    float *dx = lathe_node_grad(x); /* [N, V] */
    if (dx)
        lathe_backend()->gather_backward(dx, nd->out->grad->data, idx->data, lathe_op_rows(idx),
                                         x->shape[x->ndim - 1], idx->shape[idx->ndim - 1]);
}

lathe_tensor *lathe_gather(lathe_tensor *x, lathe_tensor *idx)
{
    LATHE_OP_CHECK_INPUTS(x, idx);
    if (lathe_op_expect_f32("lathe_gather", x) || lathe_op_expect_i32("lathe_gather", idx) ||
        check_index("lathe_gather", x, idx))
        return NULL;
    lathe_tensor *out = lathe_op_result(LATHE_F32, idx->ndim, idx->shape);
    if (!out)
        return NULL;
    lathe_backend()->gather_forward(out->data, x->data, idx->data, lathe_op_rows(idx),
                                    x->shape[x->ndim - 1], idx->shape[idx->ndim - 1]);
    lathe_tensor *in[2] = {x, idx};
    lathe_node_record(out, gather_backward, 2, in);
    return out;
}

static void scatter_add_backward(struct lathe_node *nd)
{
    const struct lathe_backend_ops *be = lathe_backend();
    lathe_tensor *x = nd->in[0], *idx = nd->in[1], *src = nd->in[2];
    const float *dout = nd->out->grad->data; /* [N, V] */
    int64_t n = lathe_tensor_numel(x), N = lathe_op_rows(idx), V = x->shape[x->ndim - 1];
    int64_t K = idx->shape[idx->ndim - 1];
    float *dx = lathe_node_grad(x); /* [N, V] */
    if (dx)
        be->copy2d(dx, n, dout, n, 1, n, 1);
    float *dsrc = lathe_node_grad(src); /* [N, K] */
    if (dsrc && N * K > 0) {
        /* dsrc += dout gathered at idx; gather writes, so through a
         * temporary (not a scoped tensor: backward may run outside the
         * scope that made this node). */
        float *tmp = be->alloc(sizeof(float) * (size_t)(N * K));
        if (!tmp) {
            lathe_error(LATHE_ENOMEM, "lathe_scatter_add backward: out of memory");
            return;
        }
        be->gather_forward(tmp, dout, idx->data, N, V, K);
        be->copy2d(dsrc, N * K, tmp, N * K, 1, N * K, 1);
        be->free(tmp);
    }
}

lathe_tensor *lathe_scatter_add(lathe_tensor *x, lathe_tensor *idx, lathe_tensor *src)
{
    LATHE_OP_CHECK_INPUTS(x, idx, src);
    if (lathe_op_expect_f32("lathe_scatter_add", x) ||
        lathe_op_expect_i32("lathe_scatter_add", idx) ||
        lathe_op_expect_f32("lathe_scatter_add", src) || check_index("lathe_scatter_add", x, idx))
        return NULL;
    if (!lathe_tensor_same_shape(idx, src)) {
        char si[96], ss[96];
        lathe_error(LATHE_EINVAL, "lathe_scatter_add: idx %s and src %s must have one shape",
                    lathe_tensor_shape_str(idx, si, sizeof si),
                    lathe_tensor_shape_str(src, ss, sizeof ss));
        return NULL;
    }
    lathe_tensor *out = lathe_op_result(LATHE_F32, x->ndim, x->shape);
    if (!out)
        return NULL;
    const struct lathe_backend_ops *be = lathe_backend();
    int64_t n = lathe_tensor_numel(x);
    be->copy2d(out->data, n, x->data, n, 1, n, 0);
    be->gather_backward(out->data, src->data, idx->data, lathe_op_rows(idx),
                        x->shape[x->ndim - 1], idx->shape[idx->ndim - 1]);
    lathe_tensor *in[3] = {x, idx, src};
    lathe_node_record(out, scatter_add_backward, 3, in);
    return out;
}
