/* core/ops/shape.c — reshape (a view), transpose, concat, split, narrow. */
#include <stdio.h>

#include <lathe/ops.h>

#include "tensor/autograd.h"

/* "[2, -1, 4]" for a shape that is not a tensor's yet. */
static const char *dims_str(int ndim, const int64_t *shape, char *buf, size_t n)
{
    size_t k = 0;
    k += (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < ndim && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (k < n)
        snprintf(buf + k, n - k, "]");
    return buf;
}

/* Python-style dim: -1 is the last. Returns -1 (with an error) if out of
 * range. */
static int norm_dim(const char *op, const lathe_tensor *x, int dim)
{
    int d = dim < 0 ? dim + x->ndim : dim;
    if (d < 0 || d >= x->ndim) {
        char sx[96];
        lathe_error(LATHE_EINVAL, "%s: dim %d is out of range for x %s", op, dim,
                    lathe_tensor_shape_str(x, sx, sizeof sx));
        return -1;
    }
    return d;
}

/* x viewed as [outer, shape[dim], inner]. */
static void split_at(const lathe_tensor *x, int dim, int64_t *outer, int64_t *inner)
{
    *outer = 1;
    *inner = 1;
    for (int d = 0; d < dim; d++)
        *outer *= x->shape[d];
    for (int d = dim + 1; d < x->ndim; d++)
        *inner *= x->shape[d];
}

/* ---- reshape -------------------------------------------------------- */

static void reshape_backward(struct lathe_node *nd)
{
    lathe_tensor *x = nd->in[0];
    float *dx = lathe_node_grad(x);
    int64_t n = lathe_tensor_numel(x);
    if (dx)
        lathe_backend()->copy2d(dx, n, nd->out->grad->data, n, 1, n, 1);
}

lathe_tensor *lathe_reshape(lathe_tensor *x, int ndim, const int64_t *shape)
{
    LATHE_OP_CHECK_INPUTS(x);
    char sx[96], ss[160];
    lathe_tensor_shape_str(x, sx, sizeof sx);
    if (!shape || ndim < 1 || ndim > LATHE_MAX_DIMS) {
        lathe_error(LATHE_EINVAL, "lathe_reshape: x %s: a new shape needs 1..%d dims, got %d",
                    sx, LATHE_MAX_DIMS, ndim);
        return NULL;
    }
    dims_str(ndim, shape, ss, sizeof ss);
    int64_t dims[LATHE_MAX_DIMS], known = 1, numel = lathe_tensor_numel(x);
    int infer = -1;
    for (int d = 0; d < ndim; d++) {
        dims[d] = shape[d];
        if (shape[d] == -1 && infer < 0) {
            infer = d;
            continue;
        }
        if (shape[d] < 0) {
            lathe_error(LATHE_EINVAL, "lathe_reshape: x %s to %s: only one dim may be -1 and "
                                      "none may be negative", sx, ss);
            return NULL;
        }
        known *= shape[d];
    }
    if (infer >= 0) {
        if (known == 0 || numel % known) {
            lathe_error(LATHE_EINVAL, "lathe_reshape: x %s (%lld elements) to %s: the -1 dim "
                                      "cannot be inferred", sx, (long long)numel, ss);
            return NULL;
        }
        dims[infer] = numel / known;
        known = numel;
    }
    if (known != numel) {
        lathe_error(LATHE_EINVAL, "lathe_reshape: x %s has %lld elements, shape %s has %lld",
                    sx, (long long)numel, ss, (long long)known);
        return NULL;
    }
    if (!lathe_tensor_is_contiguous(x)) {
        lathe_error(LATHE_EINVAL, "lathe_reshape: x %s is not contiguous", sx);
        return NULL;
    }
    lathe_tensor *out = lathe_op_view(x, ndim, dims);
    if (!out)
        return NULL;
    /* Index tensors reshape too; only f32 ones can carry a gradient. */
    if (x->dtype == LATHE_F32)
        lathe_node_record(out, reshape_backward, 1, &x);
    return out;
}

/* ---- transpose ------------------------------------------------------ */

static void transpose_backward(struct lathe_node *nd)
{
    lathe_tensor *x = nd->in[0];
    float *dx = lathe_node_grad(x);
    if (dx)
        lathe_backend()->transpose(dx, nd->out->grad->data, nd->out->ndim, nd->out->shape,
                                   (int)nd->i[0], (int)nd->i[1], 1);
}

lathe_tensor *lathe_transpose(lathe_tensor *x, int d0, int d1)
{
    LATHE_OP_CHECK_INPUTS(x);
    if (lathe_op_expect_f32("lathe_transpose", x))
        return NULL;
    int a = norm_dim("lathe_transpose", x, d0);
    int b = a < 0 ? -1 : norm_dim("lathe_transpose", x, d1);
    if (b < 0)
        return NULL;
    int64_t shape[LATHE_MAX_DIMS];
    for (int d = 0; d < x->ndim; d++)
        shape[d] = x->shape[d];
    shape[a] = x->shape[b];
    shape[b] = x->shape[a];
    lathe_tensor *out = lathe_op_result(LATHE_F32, x->ndim, shape);
    if (!out)
        return NULL;
    lathe_backend()->transpose(out->data, x->data, x->ndim, x->shape, a, b, 0);
    struct lathe_node *nd = lathe_node_record(out, transpose_backward, 1, &x);
    if (nd) {
        nd->i[0] = a;
        nd->i[1] = b;
    }
    return out;
}

/* ---- concat --------------------------------------------------------- */

enum { CAT_DIM, CAT_OUTER, CAT_INNER, CAT_TOTAL };

static void concat_backward(struct lathe_node *nd)
{
    const struct lathe_backend_ops *be = lathe_backend();
    int dim = (int)nd->i[CAT_DIM];
    int64_t outer = nd->i[CAT_OUTER], inner = nd->i[CAT_INNER], total = nd->i[CAT_TOTAL];
    const float *dout = nd->out->grad->data; /* [outer, total, inner] */
    int64_t off = 0;
    for (int k = 0; k < nd->nin; k++) {
        int64_t len = nd->in[k]->shape[dim];
        float *dx = lathe_node_grad(nd->in[k]); /* [outer, len, inner] */
        if (dx)
            be->copy2d(dx, len * inner, dout + off * inner, total * inner, outer, len * inner, 1);
        off += len;
    }
}

lathe_tensor *lathe_concat(lathe_tensor *const *xs, int n, int dim)
{
    if (!xs || n < 1) {
        lathe_error(LATHE_EINVAL, "lathe_concat: needs at least one tensor (got %d)", xs ? n : 0);
        return NULL;
    }
    for (int k = 0; k < n; k++) {
        if (!xs[k]) {
            if (!lathe_errmsg()[0])
                lathe_error(LATHE_EINVAL, "lathe_concat: input %d is NULL", k);
            return NULL;
        }
        if (lathe_op_expect_f32("lathe_concat", xs[k]))
            return NULL;
    }
    int d = norm_dim("lathe_concat", xs[0], dim);
    if (d < 0)
        return NULL;
    int64_t total = 0;
    for (int k = 0; k < n; k++) {
        int same = xs[k]->ndim == xs[0]->ndim;
        for (int j = 0; same && j < xs[0]->ndim; j++)
            same = j == d || xs[k]->shape[j] == xs[0]->shape[j];
        if (!same) {
            char s0[96], sk[96];
            lathe_error(LATHE_EINVAL, "lathe_concat: xs[0] %s and xs[%d] %s differ outside dim %d",
                        lathe_tensor_shape_str(xs[0], s0, sizeof s0), k,
                        lathe_tensor_shape_str(xs[k], sk, sizeof sk), d);
            return NULL;
        }
        total += xs[k]->shape[d];
    }
    int64_t shape[LATHE_MAX_DIMS], outer, inner;
    for (int j = 0; j < xs[0]->ndim; j++)
        shape[j] = xs[0]->shape[j];
    shape[d] = total;
    split_at(xs[0], d, &outer, &inner);
    lathe_tensor *out = lathe_op_result(LATHE_F32, xs[0]->ndim, shape);
    if (!out)
        return NULL;
    const struct lathe_backend_ops *be = lathe_backend();
    int64_t off = 0;
    for (int k = 0; k < n; k++) {
        int64_t len = xs[k]->shape[d];
        be->copy2d((float *)out->data + off * inner, total * inner, xs[k]->data, len * inner,
                   outer, len * inner, 0);
        off += len;
    }
    struct lathe_node *nd = lathe_node_record(out, concat_backward, n, xs);
    if (nd) {
        nd->i[CAT_DIM] = d;
        nd->i[CAT_OUTER] = outer;
        nd->i[CAT_INNER] = inner;
        nd->i[CAT_TOTAL] = total;
    }
    return out;
}

/* ---- narrow and split ----------------------------------------------- */

enum { NAR_START, NAR_LEN, NAR_OUTER, NAR_INNER, NAR_DIMLEN };

static void narrow_backward(struct lathe_node *nd)
{
    lathe_tensor *x = nd->in[0];
    float *dx = lathe_node_grad(x); /* [outer, S, inner] */
    if (!dx)
        return;
    int64_t start = nd->i[NAR_START], outer = nd->i[NAR_OUTER], inner = nd->i[NAR_INNER];
    int64_t S = nd->i[NAR_DIMLEN], len = nd->i[NAR_LEN];
    lathe_backend()->copy2d(dx + start * inner, S * inner, nd->out->grad->data, len * inner,
                            outer, len * inner, 1);
}

lathe_tensor *lathe_narrow(lathe_tensor *x, int dim, int64_t start, int64_t len)
{
    LATHE_OP_CHECK_INPUTS(x);
    if (lathe_op_expect_f32("lathe_narrow", x))
        return NULL;
    int d = norm_dim("lathe_narrow", x, dim);
    if (d < 0)
        return NULL;
    int64_t S = x->shape[d];
    if (start < 0 || len < 0 || start > S - len) {
        char sx[96];
        lathe_error(LATHE_EINVAL, "lathe_narrow: [%lld, %lld) of dim %d is outside x %s",
                    (long long)start, (long long)(start + len), d,
                    lathe_tensor_shape_str(x, sx, sizeof sx));
        return NULL;
    }
    int64_t shape[LATHE_MAX_DIMS], outer, inner;
    for (int j = 0; j < x->ndim; j++)
        shape[j] = x->shape[j];
    shape[d] = len;
    split_at(x, d, &outer, &inner);
    lathe_tensor *out = lathe_op_result(LATHE_F32, x->ndim, shape);
    if (!out)
        return NULL;
    lathe_backend()->copy2d(out->data, len * inner, (const float *)x->data + start * inner,
                            S * inner, outer, len * inner, 0);
    struct lathe_node *nd = lathe_node_record(out, narrow_backward, 1, &x);
    if (nd) {
        nd->i[NAR_START] = start;
        nd->i[NAR_LEN] = len;
        nd->i[NAR_OUTER] = outer;
        nd->i[NAR_INNER] = inner;
        nd->i[NAR_DIMLEN] = S;
    }
    return out;
}

int lathe_split(lathe_tensor *x, int dim, const int64_t *sizes, int n, lathe_tensor **out)
{
    if (!out || !sizes || n < 1)
        return lathe_error(LATHE_EINVAL, "lathe_split: needs sizes and out arrays of n >= 1 "
                                         "(got n = %d)", n);
    for (int k = 0; k < n; k++)
        out[k] = NULL;
    if (!x) {
        if (!lathe_errmsg()[0])
            lathe_error(LATHE_EINVAL, "lathe_split: x is NULL");
        return LATHE_EINVAL;
    }
    if (lathe_op_expect_f32("lathe_split", x))
        return LATHE_EINVAL;
    int d = norm_dim("lathe_split", x, dim);
    if (d < 0)
        return LATHE_EINVAL;
    int64_t sum = 0;
    int neg = 0;
    for (int k = 0; k < n; k++) {
        sum += sizes[k];
        neg |= sizes[k] < 0;
    }
    if (neg || sum != x->shape[d]) {
        char sx[96], ss[160];
        return lathe_error(LATHE_EINVAL, "lathe_split: sizes %s do not add up to dim %d of x %s",
                           dims_str(n < LATHE_MAX_DIMS * 2 ? n : LATHE_MAX_DIMS * 2, sizes, ss,
                                    sizeof ss),
                           d, lathe_tensor_shape_str(x, sx, sizeof sx));
    }
    int64_t off = 0;
    for (int k = 0; k < n; k++) {
        out[k] = lathe_narrow(x, d, off, sizes[k]);
        if (!out[k]) {
            for (int j = 0; j < k; j++)
                out[j] = NULL;
            return LATHE_ENOMEM;
        }
        off += sizes[k];
    }
    return LATHE_OK;
}
