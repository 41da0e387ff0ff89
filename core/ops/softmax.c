/* core/ops/softmax.c — softmax and log-softmax over the last dim. Both
 * backwards need only the op's own output, so nothing extra is saved. */
#include <lathe/ops.h>

#include "tensor/autograd.h"

static void softmax_backward(struct lathe_node *nd)
{
    lathe_tensor *x = nd->in[0];
    float *dx = lathe_node_grad(x); /* [N, C] */
    if (dx)
        lathe_backend()->softmax_backward(dx, nd->out->grad->data, nd->out->data,
                                          lathe_op_rows(x), x->shape[x->ndim - 1]);
}

static void log_softmax_backward(struct lathe_node *nd)
{
    lathe_tensor *x = nd->in[0];
    float *dx = lathe_node_grad(x); /* [N, C] */
    if (dx)
        lathe_backend()->log_softmax_backward(dx, nd->out->grad->data, nd->out->data,
                                              lathe_op_rows(x), x->shape[x->ndim - 1]);
}

static lathe_tensor *softmax_op(const char *op, lathe_tensor *x, int log)
{
    if (lathe_op_expect_f32(op, x))
        return NULL;
    lathe_tensor *out = lathe_op_result(LATHE_F32, x->ndim, x->shape);
    if (!out)
        return NULL;
    const struct lathe_backend_ops *be = lathe_backend();
    int64_t N = lathe_op_rows(x), C = x->shape[x->ndim - 1];
    if (log)
        be->log_softmax_forward(out->data, x->data, N, C);
    else
        be->softmax_forward(out->data, x->data, N, C);
    lathe_node_record(out, log ? log_softmax_backward : softmax_backward, 1, &x);
    return out;
}

lathe_tensor *lathe_softmax(lathe_tensor *x)
{
    LATHE_OP_CHECK_INPUTS(x);
    return softmax_op("lathe_softmax", x, 0);
}

lathe_tensor *lathe_log_softmax(lathe_tensor *x)
{
    LATHE_OP_CHECK_INPUTS(x);
    return softmax_op("lathe_log_softmax", x, 1);
}
