/* core/ops/activation.c — GELU (tanh form), SiLU, SwiGLU. */
#include <lathe/ops.h>

#include "tensor/autograd.h"

static void gelu_backward(struct lathe_node *nd)
{
    lathe_tensor *x = nd->in[0];
    float *dx = lathe_node_grad(x); /* [n] */
    if (dx)
        lathe_backend()->gelu_backward(dx, nd->out->grad->data, x->data, lathe_tensor_numel(x));
}

lathe_tensor *lathe_gelu(lathe_tensor *x)
{
    LATHE_OP_CHECK_INPUTS(x);
    if (lathe_op_expect_f32("lathe_gelu", x))
        return NULL;
    lathe_tensor *out = lathe_op_result(LATHE_F32, x->ndim, x->shape);
    if (!out)
        return NULL;
    lathe_backend()->gelu_forward(out->data, x->data, lathe_tensor_numel(x));
    lathe_node_record(out, gelu_backward, 1, &x);
    return out;
}

static void silu_backward(struct lathe_node *nd)
{
    lathe_tensor *x = nd->in[0];
    float *dx = lathe_node_grad(x); /* [n] */
    if (dx)
        lathe_backend()->silu_backward(dx, nd->out->grad->data, x->data, lathe_tensor_numel(x));
}

lathe_tensor *lathe_silu(lathe_tensor *x)
{
    LATHE_OP_CHECK_INPUTS(x);
    if (lathe_op_expect_f32("lathe_silu", x))
        return NULL;
    lathe_tensor *out = lathe_op_result(LATHE_F32, x->ndim, x->shape);
    if (!out)
        return NULL;
    lathe_backend()->silu_forward(out->data, x->data, lathe_tensor_numel(x));
    lathe_node_record(out, silu_backward, 1, &x);
    return out;
}

static void swiglu_backward(struct lathe_node *nd)
{
    lathe_tensor *gate = nd->in[0], *up = nd->in[1];
    float *dgate = lathe_node_grad(gate); /* [n] */
    float *dup = lathe_node_grad(up);     /* [n] */
    if (!dgate && !dup)
        return;
    /* lathe_swiglu(x, x): one gradient buffer receives both terms, so run
     * them one after the other rather than through two aliased pointers */
    const struct lathe_backend_ops *be = lathe_backend();
    int64_t n = lathe_tensor_numel(gate);
    if (dgate == dup) {
        be->swiglu_backward(dgate, NULL, nd->out->grad->data, gate->data, up->data, n);
        be->swiglu_backward(NULL, dup, nd->out->grad->data, gate->data, up->data, n);
    } else {
        be->swiglu_backward(dgate, dup, nd->out->grad->data, gate->data, up->data, n);
    }
}

lathe_tensor *lathe_swiglu(lathe_tensor *gate, lathe_tensor *up)
{
    LATHE_OP_CHECK_INPUTS(gate, up);
    if (lathe_op_expect_f32("lathe_swiglu", gate) || lathe_op_expect_f32("lathe_swiglu", up))
        return NULL;
    if (!lathe_tensor_same_shape(gate, up)) {
        char sg[96], su[96];
        lathe_error(LATHE_EINVAL, "lathe_swiglu: gate %s and up %s must have the same shape",
                    lathe_tensor_shape_str(gate, sg, sizeof sg),
                    lathe_tensor_shape_str(up, su, sizeof su));
        return NULL;
    }
    lathe_tensor *out = lathe_op_result(LATHE_F32, gate->ndim, gate->shape);
    if (!out)
        return NULL;
    lathe_backend()->swiglu_forward(out->data, gate->data, up->data, lathe_tensor_numel(gate));
    lathe_tensor *in[2] = {gate, up};
    lathe_node_record(out, swiglu_backward, 2, in);
    return out;
}
