/* core/ops/reduce.c — scalar sum and mean. */
#include <lathe/ops.h>

#include "tensor/autograd.h"

static void reduce_backward(struct lathe_node *nd)
{
    lathe_tensor *x = nd->in[0];
    float *dx = lathe_node_grad(x);
    if (dx)
        lathe_backend()->fill_add(dx, nd->out->grad->data, nd->f[0], lathe_tensor_numel(x));
}

/* out[0] = s * sum(x). */
static lathe_tensor *reduce(lathe_tensor *x, float s, int mean)
{
    lathe_tensor *out = lathe_op_result(LATHE_F32, 1, (int64_t[]){1});
    if (!out)
        return NULL;
    const struct lathe_backend_ops *be = lathe_backend();
    be->sum(out->data, x->data, lathe_tensor_numel(x));
    if (mean)
        be->scale(out->data, out->data, s, 1, 0);
    struct lathe_node *nd = lathe_node_record(out, reduce_backward, 1, &x);
    if (nd)
        nd->f[0] = s;
    return out;
}

lathe_tensor *lathe_sum(lathe_tensor *x)
{
    LATHE_OP_CHECK_INPUTS(x);
    if (lathe_op_expect_f32("lathe_sum", x))
        return NULL;
    return reduce(x, 1.0f, 0);
}

lathe_tensor *lathe_mean(lathe_tensor *x)
{
    LATHE_OP_CHECK_INPUTS(x);
    if (lathe_op_expect_f32("lathe_mean", x))
        return NULL;
    int64_t n = lathe_tensor_numel(x);
    if (n == 0) {
        char sx[96];
        lathe_error(LATHE_EINVAL, "lathe_mean: x %s has no elements",
                    lathe_tensor_shape_str(x, sx, sizeof sx));
        return NULL;
    }
    return reduce(x, (float)(1.0 / (double)n), 1);
}
