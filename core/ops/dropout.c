/* core/ops/dropout.c — inverted dropout (Srivastava et al., "Dropout", JMLR
 * 2014; scaling kept at training time so inference is the identity). */
#include <stdlib.h>

#include <lathe/ops.h>
#include <lathe/rng.h>

#include "tensor/autograd.h"

enum { SAVED_MASK = 0 };

static void dropout_backward(struct lathe_node *nd)
{
    lathe_tensor *x = nd->in[0], *mask = nd->saved[SAVED_MASK];
    float *dx = lathe_node_grad(x);
    int64_t n = lathe_tensor_numel(x);
    if (dx) /* dx += dout * mask */
        lathe_backend()->binary_backward(2, dx, NULL, nd->out->grad->data, x->data, mask->data,
                                         n, n);
}

lathe_tensor *lathe_dropout(lathe_tensor *x, float p, int train)
{
    LATHE_OP_CHECK_INPUTS(x);
    if (!(p >= 0.0f && p < 1.0f)) {
        lathe_error(LATHE_EINVAL, "lathe_dropout: p = %g must be in [0, 1)", (double)p);
        return NULL;
    }
    if (p == 0.0f || !train)
        return x;
    if (lathe_op_expect_f32("lathe_dropout", x))
        return NULL;
    lathe_tensor *mask = lathe_op_result(LATHE_F32, x->ndim, x->shape);
    lathe_tensor *out = mask ? lathe_op_result(LATHE_F32, x->ndim, x->shape) : NULL;
    if (!out)
        return NULL;
    const struct lathe_backend_ops *be = lathe_backend();
    int64_t n = lathe_tensor_numel(x);
    /* The mask is drawn on the host, in element order, from the run's
     * generator, so a run is reproducible whatever the backend. */
    int on_host = mask->device == LATHE_DEVICE_CPU;
    float *m = on_host ? mask->data : malloc(sizeof(float) * (size_t)(n ? n : 1));
    if (!m) {
        lathe_error(LATHE_ENOMEM, "lathe_dropout: out of memory for a mask of %lld elements",
                    (long long)n);
        return NULL;
    }
    lathe_rng *rng = lathe_rng_global();
    const float keep = 1.0f / (1.0f - p);
    for (int64_t i = 0; i < n; i++)
        m[i] = lathe_rng_uniform(rng) < (double)p ? 0.0f : keep;
    if (!on_host) {
        int rc = be->copy(mask->data, m, sizeof(float) * (size_t)n, 1);
        free(m);
        if (rc != LATHE_OK) {
            lathe_error_prefix(rc, "lathe_dropout: copying the mask to the device");
            return NULL;
        }
    }
    be->binary_forward(2, out->data, x->data, mask->data, n, n);
    struct lathe_node *nd = lathe_node_record(out, dropout_backward, 1, &x);
    if (nd)
        nd->saved[SAVED_MASK] = mask;
    return out;
}
