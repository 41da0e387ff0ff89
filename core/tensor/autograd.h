/* core/tensor/autograd.h — what op implementations use to record the tape.
 * Internal to liblathe.
 *
 * An op (in core/ops/) follows one pattern:
 *
 *   lathe_tensor *lathe_gelu(lathe_tensor *x) {
 *       LATHE_OP_CHECK_INPUTS(x);                 // NULL in -> NULL out
 *       if (lathe_op_expect_f32("gelu", x)) return NULL;
 *       lathe_tensor *out = lathe_op_result(LATHE_F32, x->ndim, x->shape);
 *       if (!out) return NULL;
 *       be->gelu_forward(out->data, x->data, n);
 *       struct lathe_node *nd = lathe_node_record(out, gelu_backward, 1, &x);
 *       // nd is NULL when nothing needs a gradient (no_grad, frozen inputs):
 *       // then save nothing.
 *       return out;
 *   }
 *   static void gelu_backward(struct lathe_node *nd) {
 *       lathe_tensor *x = nd->in[0];
 *       float *dx = lathe_node_grad(x);          // NULL: x needs no grad
 *       if (dx) be->gelu_backward(dx, nd->out->grad->data, x->data, n);
 *   }
 *
 * Inputs named in lathe_node_record must stay alive until the scope pops;
 * scoped tensors and parameters do.
 */
#ifndef LATHE_CORE_AUTOGRAD_H
#define LATHE_CORE_AUTOGRAD_H

#include <lathe/backend.h>
#include <lathe/status.h>
#include <lathe/tensor.h>

#define LATHE_NODE_MAX_SAVED 4

struct lathe_node;
typedef void (*lathe_backward_fn)(struct lathe_node *nd);

struct lathe_node {
    lathe_backward_fn backward;
    lathe_tensor *out;                         /* the op's result */
    int nin;
    lathe_tensor **in;                         /* nin inputs (owned array) */
    lathe_tensor *saved[LATHE_NODE_MAX_SAVED]; /* scoped buffers kept for backward */
    float f[4];                                /* scalar arguments */
    int64_t i[8];                              /* integer arguments */
    void *extra;                               /* free()d with the node */
};

/* Record `out` as made by an op from `in`, if grad mode is on and any input
 * requires grad: sets out->requires_grad and out->node and returns the node
 * (for saving what backward needs). Otherwise returns NULL. On allocation
 * failure returns NULL and sets an error; callers treat NULL as "nothing to
 * save" — lathe_backward then reports the failure. */
struct lathe_node *lathe_node_record(lathe_tensor *out, lathe_backward_fn fn, int nin,
                                     lathe_tensor *const *in);

/* The f32 gradient buffer of t (made zeroed if needed), or NULL if t does not
 * require grad. For use inside backward functions. */
float *lathe_node_grad(lathe_tensor *t);

/* A new scoped tensor for an op's result or saved buffer; contents are
 * undefined (the kernel writes all of it). NULL with an error on failure. */
lathe_tensor *lathe_op_result(enum lathe_dtype dt, int ndim, const int64_t *shape);

/* A scoped tensor whose data points into base's buffer (views). */
lathe_tensor *lathe_op_view(lathe_tensor *base, int ndim, const int64_t *shape);

/* Set an error naming the op unless x is f32 and contiguous; returns status. */
int lathe_op_expect_f32(const char *op, const lathe_tensor *x);
int lathe_op_expect_i32(const char *op, const lathe_tensor *x);

/* Rows of x when its last dim is the feature dim: numel / shape[ndim-1]. */
int64_t lathe_op_rows(const lathe_tensor *x);

/* Return NULL from the calling op if any argument is NULL (the first error
 * message is kept). */
#define LATHE_OP_CHECK_INPUTS(...)                                             \
    do {                                                                       \
        const lathe_tensor *lathe_op_in_[] = {__VA_ARGS__};                    \
        for (size_t lathe_i_ = 0; lathe_i_ < sizeof lathe_op_in_ / sizeof lathe_op_in_[0]; lathe_i_++) \
            if (!lathe_op_in_[lathe_i_]) {                                     \
                if (!lathe_errmsg()[0])                                        \
                    lathe_error(LATHE_EINVAL, "%s: input %zu is NULL", __func__, lathe_i_); \
                return NULL;                                                   \
            }                                                                  \
    } while (0)

#endif
