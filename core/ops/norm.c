/* core/ops/norm.c — LayerNorm and RMSNorm over the last dim. */
#include <lathe/ops.h>

#include "tensor/autograd.h"

/* w (and b) must be [C] for x [..., C]; names the op and both shapes. */
static int expect_channels(const char *op, const char *what, const lathe_tensor *x,
                           const lathe_tensor *p)
{
    if (lathe_op_expect_f32(op, p))
        return LATHE_EINVAL;
    int64_t C = x->shape[x->ndim - 1];
    if (p->ndim != 1 || p->shape[0] != C) {
        char sx[96], sp[96];
        return lathe_error(LATHE_EINVAL, "%s: x %s needs %s of shape [%lld], got %s", op,
                           lathe_tensor_shape_str(x, sx, sizeof sx), what, (long long)C,
                           lathe_tensor_shape_str(p, sp, sizeof sp));
    }
    return LATHE_OK;
}

/* x [..., C] with C > 0 (a mean over no channels is undefined) and eps >= 0 */
static int expect_x_eps(const char *op, const lathe_tensor *x, float eps)
{
    if (lathe_op_expect_f32(op, x))
        return LATHE_EINVAL;
    if (x->shape[x->ndim - 1] == 0) {
        char sx[96];
        return lathe_error(LATHE_EINVAL, "%s: x %s has no channels to normalise over", op,
                           lathe_tensor_shape_str(x, sx, sizeof sx));
    }
    if (!(eps >= 0.0f))
        return lathe_error(LATHE_EINVAL, "%s: eps must be >= 0, got %g", op, (double)eps);
    return LATHE_OK;
}

/* in: x, w[, b]; saved: mean [N], rstd [N] */
static void layernorm_backward(struct lathe_node *nd)
{
    lathe_tensor *x = nd->in[0], *w = nd->in[1], *b = nd->nin > 2 ? nd->in[2] : NULL;
    float *dx = lathe_node_grad(x); /* [N, C] */
    float *dw = lathe_node_grad(w); /* [C] */
    float *db = lathe_node_grad(b); /* [C] */
    if (dx || dw || db)
        lathe_backend()->layernorm_backward(dx, dw, db, nd->out->grad->data, x->data, w->data,
                                            nd->saved[0]->data, nd->saved[1]->data, nd->i[0],
                                            nd->i[1]);
}

lathe_tensor *lathe_layernorm(lathe_tensor *x, lathe_tensor *w, lathe_tensor *b, float eps)
{
    LATHE_OP_CHECK_INPUTS(x, w);
    const char *op = "lathe_layernorm";
    if (expect_x_eps(op, x, eps) || expect_channels(op, "weight", x, w) ||
        (b && expect_channels(op, "bias", x, b)))
        return NULL;
    int64_t N = lathe_op_rows(x), C = x->shape[x->ndim - 1];
    lathe_tensor *out = lathe_op_result(LATHE_F32, x->ndim, x->shape);
    lathe_tensor *mean = lathe_op_result(LATHE_F32, 1, &N);
    lathe_tensor *rstd = lathe_op_result(LATHE_F32, 1, &N);
    if (!out || !mean || !rstd)
        return NULL;
    lathe_backend()->layernorm_forward(out->data, mean->data, rstd->data, x->data, w->data,
                                       b ? b->data : NULL, N, C, eps);
    lathe_tensor *in[3] = {x, w, b};
    struct lathe_node *nd = lathe_node_record(out, layernorm_backward, b ? 3 : 2, in);
    if (nd) {
        nd->saved[0] = mean;
        nd->saved[1] = rstd;
        nd->i[0] = N;
        nd->i[1] = C;
    }
    return out;
}

/* in: x[, w]; saved: rstd [N] */
static void rmsnorm_backward(struct lathe_node *nd)
{
    lathe_tensor *x = nd->in[0], *w = nd->nin > 1 ? nd->in[1] : NULL;
    float *dx = lathe_node_grad(x); /* [N, C] */
    float *dw = lathe_node_grad(w); /* [C] */
    if (dx || dw)
        lathe_backend()->rmsnorm_backward(dx, dw, nd->out->grad->data, x->data,
                                          w ? w->data : NULL, nd->saved[0]->data, nd->i[0],
                                          nd->i[1]);
}

lathe_tensor *lathe_rmsnorm(lathe_tensor *x, lathe_tensor *w, float eps)
{
    LATHE_OP_CHECK_INPUTS(x);
    const char *op = "lathe_rmsnorm";
    if (expect_x_eps(op, x, eps) || (w && expect_channels(op, "weight", x, w)))
        return NULL;
    int64_t N = lathe_op_rows(x), C = x->shape[x->ndim - 1];
    lathe_tensor *out = lathe_op_result(LATHE_F32, x->ndim, x->shape);
    lathe_tensor *rstd = lathe_op_result(LATHE_F32, 1, &N);
    if (!out || !rstd)
        return NULL;
    lathe_backend()->rmsnorm_forward(out->data, rstd->data, x->data, w ? w->data : NULL, N, C,
                                     eps);
    lathe_tensor *in[2] = {x, w};
    struct lathe_node *nd = lathe_node_record(out, rmsnorm_backward, w ? 2 : 1, in);
    if (nd) {
        nd->saved[0] = rstd;
        nd->i[0] = N;
        nd->i[1] = C;
    }
    return out;
}
