/* core/ops/unary.c — elementwise functions (exp, log, relu, clamp,
 * log-sigmoid) and the min/max of two tensors built from them. */
#include <lathe/abi.h>
#include <lathe/ops.h>

#include "tensor/autograd.h"

static void unary_backward(struct lathe_node *nd)
{
    lathe_tensor *x = nd->in[0];
    float *dx = lathe_node_grad(x); /* [n] */
    if (dx)
        lathe_backend()->unary_backward((int)nd->i[0], dx, nd->out->grad->data, x->data, nd->out->data,
                                        lathe_tensor_numel(x), nd->f[0], nd->f[1]);
}

static lathe_tensor *unary(const char *name, int op, lathe_tensor *x, float a, float b)
{
    LATHE_OP_CHECK_INPUTS(x);
    if (lathe_op_expect_f32(name, x))
        return NULL;
    const struct lathe_backend_ops *be = lathe_backend();
    if (!LATHE_OPS_HAS(be, struct lathe_backend_ops, unary_forward) ||
        !LATHE_OPS_HAS(be, struct lathe_backend_ops, unary_backward)) {
        lathe_error(LATHE_EUNSUPPORTED, "%s: backend '%s' has no unary kernels", name, be->name);
        return NULL;
    }
    lathe_tensor *out = lathe_op_result(LATHE_F32, x->ndim, x->shape);
    if (!out)
        return NULL;
    be->unary_forward(op, out->data, x->data, lathe_tensor_numel(x), a, b);
    struct lathe_node *nd = lathe_node_record(out, unary_backward, 1, &x);
    if (nd) {
        nd->i[0] = op;
        nd->f[0] = a;
        nd->f[1] = b;
    }
    return out;
}

lathe_tensor *lathe_exp(lathe_tensor *x) { return unary("lathe_exp", LATHE_UNARY_EXP, x, 0, 0); }
lathe_tensor *lathe_log(lathe_tensor *x) { return unary("lathe_log", LATHE_UNARY_LOG, x, 0, 0); }
lathe_tensor *lathe_relu(lathe_tensor *x) { return unary("lathe_relu", LATHE_UNARY_RELU, x, 0, 0); }
lathe_tensor *lathe_log_sigmoid(lathe_tensor *x) { return unary("lathe_log_sigmoid", LATHE_UNARY_LOG_SIGMOID, x, 0, 0); }

lathe_tensor *lathe_clamp(lathe_tensor *x, float lo, float hi)
{
    if (!(lo <= hi)) {
        lathe_error(LATHE_EINVAL, "lathe_clamp: lower bound %g above upper bound %g", (double)lo, (double)hi);
        return NULL;
    }
    return unary("lathe_clamp", LATHE_UNARY_CLAMP, x, lo, hi);
}

static lathe_tensor *same_shape(const char *name, lathe_tensor *a, lathe_tensor *b)
{
    if (a && b && !lathe_tensor_same_shape(a, b)) {
        char sa[96], sb[96];
        lathe_error(LATHE_EINVAL, "%s: a %s and b %s must have one shape", name, lathe_tensor_shape_str(a, sa, sizeof sa),
                    lathe_tensor_shape_str(b, sb, sizeof sb));
        return NULL;
    }
    return a;
}

/* min(a, b) = a - relu(a - b); max(a, b) = a + relu(b - a): the gradient
 * goes to whichever is chosen (to b on ties for min, to a for max). */
lathe_tensor *lathe_minimum(lathe_tensor *a, lathe_tensor *b)
{
    if (!same_shape("lathe_minimum", a, b))
        return NULL;
    return lathe_sub(a, lathe_relu(lathe_sub(a, b)));
}

lathe_tensor *lathe_maximum(lathe_tensor *a, lathe_tensor *b)
{
    if (!same_shape("lathe_maximum", a, b))
        return NULL;
    return lathe_add(a, lathe_relu(lathe_sub(b, a)));
}
