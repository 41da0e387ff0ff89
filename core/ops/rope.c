/* core/ops/rope.c — rotary position embedding (HF rotate_half layout; the
 * formula is in core/cpu/rope.c). Only x is differentiated: positions are
 * integers and inv_freq is a fixed table the model computes. */
#include <lathe/ops.h>

#include "tensor/autograd.h"

/* in: x, pos, inv_freq; i: B, T, H, D, pos_bstride */
static void rope_backward(struct lathe_node *nd)
{
    lathe_tensor *x = nd->in[0], *pos = nd->in[1], *inv_freq = nd->in[2];
    float *dx = lathe_node_grad(x); /* [B, T, H, D] */
    if (dx)
        lathe_backend()->rope_backward(dx, nd->out->grad->data, pos->data, nd->i[4],
                                       inv_freq->data, nd->i[0], nd->i[1], nd->i[2], nd->i[3]);
}

lathe_tensor *lathe_rope(lathe_tensor *x, lathe_tensor *pos, lathe_tensor *inv_freq)
{
    LATHE_OP_CHECK_INPUTS(x, pos, inv_freq);
    const char *op = "lathe_rope";
    if (lathe_op_expect_f32(op, x) || lathe_op_expect_i32(op, pos) ||
        lathe_op_expect_f32(op, inv_freq))
        return NULL;
    char sx[96], sp[96], sf[96];
    lathe_tensor_shape_str(x, sx, sizeof sx);
    lathe_tensor_shape_str(pos, sp, sizeof sp);
    lathe_tensor_shape_str(inv_freq, sf, sizeof sf);
    if (x->ndim != 4 || x->shape[3] % 2 != 0) {
        lathe_error(LATHE_EINVAL, "%s: x %s must be [B, T, H, D] with an even head size D", op,
                    sx);
        return NULL;
    }
    int64_t B = x->shape[0], T = x->shape[1], H = x->shape[2], D = x->shape[3];
    int64_t pos_bstride;
    if (pos->ndim == 2 && pos->shape[0] == B && pos->shape[1] == T) {
        pos_bstride = T;
    } else if (pos->ndim == 1 && pos->shape[0] == T) {
        pos_bstride = 0;
    } else {
        lathe_error(LATHE_EINVAL,
                    "%s: x %s needs positions of shape [%lld, %lld] or [%lld], got %s", op, sx,
                    (long long)B, (long long)T, (long long)T, sp);
        return NULL;
    }
    if (inv_freq->ndim != 1 || inv_freq->shape[0] != D / 2) {
        lathe_error(LATHE_EINVAL, "%s: x %s needs inv_freq of shape [%lld] (D/2), got %s", op, sx,
                    (long long)(D / 2), sf);
        return NULL;
    }
    lathe_tensor *out = lathe_op_result(LATHE_F32, 4, x->shape);
    if (!out)
        return NULL;
    lathe_backend()->rope_forward(out->data, x->data, pos->data, pos_bstride, inv_freq->data, B,
                                  T, H, D);
    lathe_tensor *in[3] = {x, pos, inv_freq};
    struct lathe_node *nd = lathe_node_record(out, rope_backward, 3, in);
    if (nd) {
        nd->i[0] = B;
        nd->i[1] = T;
        nd->i[2] = H;
        nd->i[3] = D;
        nd->i[4] = pos_bstride;
    }
    return out;
}
