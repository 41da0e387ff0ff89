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
    int always;                                /* run even if out got no gradient */
};

/* Record `out` as made by an op from `in`, if grad mode is on and any input
 * requires grad: sets out->requires_grad and out->node and returns the node
 * (for saving what backward needs). Otherwise returns NULL. On allocation
 * failure returns NULL and sets an error; callers treat NULL as "nothing to
 * save" — lathe_backward then reports the failure. */
struct lathe_node *lathe_node_record(lathe_tensor *out, lathe_backward_fn fn, int nin,
                                     lathe_tensor *const *in);

/* The same, also when no input requires grad (force: out then requires
 * grad anyway) and, with always, run in the backward pass even if out
 * received no gradient (markers such as segment boundaries). Grad mode
 * must be on; NULL otherwise. */
struct lathe_node *lathe_node_record_ex(lathe_tensor *out, lathe_backward_fn fn, int nin,
                                        lathe_tensor *const *in, int force, int always);

/* Called by a backward function that fails (it cannot return a status):
 * lathe_backward then returns rc with the message already set. */
void lathe_backward_fail(int rc);

/* How many ops inside no_grad regions had an input that requires grad
 * (they would have been recorded). A running count: compare two readings. */
unsigned long lathe_grad_probe(void);

/* Run the backward functions of records [mark, tape end), newest first, as
 * lathe_backward does; for a nested pass started inside a backward
 * function (recomputation). Returns the first failure. */
int lathe_tape_walk(size_t mark);

/* Set the depth of paused recording (0: recording on) and return the old
 * one. Unlike no_grad, lathe_grad_enabled() stays true — what a segment's
 * first forward needs when it will be recomputed with recording on: code
 * that takes grad mode for training mode (adapter dropout) behaves the
 * same both times. */
int lathe_record_pause(int depth);

/* Swap the no_grad nesting depth (0: grad on); returns the old depth. */
int lathe_no_grad_swap(int depth);

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
