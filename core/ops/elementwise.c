/* core/ops/elementwise.c — add, sub, mul (with suffix broadcast) and scale. */
#include <lathe/ops.h>

#include "tensor/autograd.h"

enum { OP_ADD = 0, OP_SUB = 1, OP_MUL = 2 };

static void binary_backward(struct lathe_node *nd)
{
    lathe_tensor *a = nd->in[0], *b = nd->in[1];
    /* lathe_node_grad may return one buffer twice (lathe_add(x, x)); the
     * kernel accumulates both contributions. */
    float *da = lathe_node_grad(a); /* [N] */
    float *db = lathe_node_grad(b); /* [M] */
    if (da || db)
        lathe_backend()->binary_backward((int)nd->i[0], da, db, nd->out->grad->data, a->data,
                                         b->data, lathe_tensor_numel(a), lathe_tensor_numel(b));
}

/* b matches a when its dims, leading 1s aside ([1, T, C] reads as [T, C]),
 * are a suffix of a's. */
static int is_suffix(const lathe_tensor *a, const lathe_tensor *b)
{
    int lead = 0;
    while (lead < b->ndim - 1 && b->shape[lead] == 1)
        lead++;
    int nb = b->ndim - lead;
    if (nb > a->ndim)
        return 0;
    for (int d = 0; d < nb; d++)
        if (b->shape[lead + d] != a->shape[a->ndim - nb + d])
            return 0;
    return 1;
}

static lathe_tensor *binary(const char *name, int op, lathe_tensor *a, lathe_tensor *b)
{
    if (lathe_op_expect_f32(name, a) || lathe_op_expect_f32(name, b))
        return NULL;
    if (!is_suffix(a, b)) {
        char sa[96], sb[96];
        lathe_error(LATHE_EINVAL, "%s: a %s and b %s: b must have a's shape or a suffix of it "
                                  "(broadcast over a's leading dims)",
                    name, lathe_tensor_shape_str(a, sa, sizeof sa),
                    lathe_tensor_shape_str(b, sb, sizeof sb));
        return NULL;
    }
    lathe_tensor *out = lathe_op_result(LATHE_F32, a->ndim, a->shape);
    if (!out)
        return NULL;
    lathe_backend()->binary_forward(op, out->data, a->data, b->data, lathe_tensor_numel(a),
                                    lathe_tensor_numel(b));
    lathe_tensor *in[2] = {a, b};
    struct lathe_node *nd = lathe_node_record(out, binary_backward, 2, in);
    if (nd)
        nd->i[0] = op;
    return out;
}

lathe_tensor *lathe_add(lathe_tensor *a, lathe_tensor *b)
{
    LATHE_OP_CHECK_INPUTS(a, b);
    return binary("lathe_add", OP_ADD, a, b);
}

lathe_tensor *lathe_sub(lathe_tensor *a, lathe_tensor *b)
{
    LATHE_OP_CHECK_INPUTS(a, b);
    return binary("lathe_sub", OP_SUB, a, b);
}

lathe_tensor *lathe_mul(lathe_tensor *a, lathe_tensor *b)
{
    LATHE_OP_CHECK_INPUTS(a, b);
    return binary("lathe_mul", OP_MUL, a, b);
}

static void scale_backward(struct lathe_node *nd)
{
    lathe_tensor *a = nd->in[0];
    float *da = lathe_node_grad(a);
    if (da)
        lathe_backend()->scale(da, nd->out->grad->data, nd->f[0], lathe_tensor_numel(a), 1);
}

lathe_tensor *lathe_scale(lathe_tensor *a, float s)
{
    LATHE_OP_CHECK_INPUTS(a);
    if (lathe_op_expect_f32("lathe_scale", a))
        return NULL;
    lathe_tensor *out = lathe_op_result(LATHE_F32, a->ndim, a->shape);
    if (!out)
        return NULL;
    lathe_backend()->scale(out->data, a->data, s, lathe_tensor_numel(a), 0);
    struct lathe_node *nd = lathe_node_record(out, scale_backward, 1, &a);
    if (nd)
        nd->f[0] = s;
    return out;
}
