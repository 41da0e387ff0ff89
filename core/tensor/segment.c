/* core/tensor/segment.c — lathe_segment_run: recomputation (activation
 * checkpointing) and the acquire/release hooks around a model's blocks.
 *
 * Three ways through a segment, chosen by the run's settings:
 *  - plain (no hooks, no recompute, or grad off): acquire, y = fn(ctx, x),
 *    release(0) — with no hooks just the call.
 *  - hooks without recompute: the block's records stay on the tape between
 *    two marker records that always run in the backward pass: the later
 *    one (met first going backwards) acquires the parameters again, the
 *    earlier one releases them once the block's records have run. The
 *    markers pass no gradient: the block's ops read x itself.
 *  - recompute (Chen et al., "Training Deep Nets with Sublinear Memory
 *    Cost", 2016): the forward runs with recording paused (grad mode
 *    stays on, so training-only behaviour such as adapter dropout is the
 *    same as in the recomputation) inside its own
 *    scope, so its activations are freed at once; only x and y remain. One
 *    record stands for the whole block; its backward restores the run
 *    generator to its state before the forward (dropout draws the same
 *    masks), runs the block again with recording on over a leaf that
 *    shares x's buffer, back-propagates y's gradient through the fresh
 *    records (parameters' gradients accumulate as usual) and adds the
 *    leaf's gradient into x's. Peak activation memory becomes the block
 *    boundaries plus one block's internals; the price is one more forward
 *    per block. */
#include <stdlib.h>
#include <string.h>

#include <lathe/backend.h>
#include <lathe/rng.h>
#include <lathe/segment.h>
#include <lathe/status.h>

#include "tensor/autograd.h"
#include "tensor/tensor_internal.h"

static struct lathe_segment_hooks hooks;
static int recompute;

void lathe_segment_set_hooks(const struct lathe_segment_hooks *h)
{
    if (h)
        hooks = *h;
    else
        memset(&hooks, 0, sizeof hooks);
}

void lathe_segment_set_recompute(int on) { recompute = on != 0; }
int lathe_segment_recompute(void) { return recompute; }

static int acquire(const struct lathe_segment *seg)
{
    if (!hooks.acquire)
        return LATHE_OK;
    int rc = hooks.acquire(hooks.self, seg);
    return rc == LATHE_OK ? LATHE_OK : lathe_error_prefix(rc, "segment '%s': acquiring its parameters", seg->name);
}

static int release(const struct lathe_segment *seg, int backward)
{
    if (!hooks.release)
        return LATHE_OK;
    int rc = hooks.release(hooks.self, seg, backward);
    return rc == LATHE_OK ? LATHE_OK : lathe_error_prefix(rc, "segment '%s': releasing its parameters", seg->name);
}

/* What a segment record keeps (node->extra, freed with it). */
struct saved {
    const struct lathe_segment *seg;
    lathe_segment_fn fn;
    lathe_rng rng; /* the run generator before the forward */
    size_t ctx_size;
    unsigned char ctx[]; /* copy of the caller's context */
};

/* ---- hooks without recompute: markers ---- */

static void enter_backward(struct lathe_node *nd)
{
    const struct lathe_segment *seg = nd->extra ? ((struct saved *)nd->extra)->seg : NULL;
    int rc = release(seg, 1);
    if (rc != LATHE_OK)
        lathe_backward_fail(rc);
}

static void exit_backward(struct lathe_node *nd)
{
    const struct lathe_segment *seg = ((struct saved *)nd->extra)->seg;
    int rc = acquire(seg);
    if (rc != LATHE_OK)
        lathe_backward_fail(rc);
}

/* A one-element tensor standing for a marker's output. */
static int marker(lathe_backward_fn fn, const struct lathe_segment *seg)
{
    lathe_tensor *dummy = lathe_op_result(LATHE_F32, 1, (int64_t[]){1});
    if (!dummy)
        return LATHE_ENOMEM;
    struct saved *sv = calloc(1, sizeof *sv);
    struct lathe_node *nd = sv ? lathe_node_record_ex(dummy, fn, 0, NULL, 1, 1) : NULL;
    if (!nd) {
        free(sv);
        return lathe_error(LATHE_ENOMEM, "segment '%s': out of memory recording a marker", seg->name);
    }
    sv->seg = seg;
    nd->extra = sv;
    return LATHE_OK;
}

/* ---- recompute ---- */

static void recompute_backward(struct lathe_node *nd)
{
    const struct lathe_backend_ops *be = lathe_backend();
    struct saved *sv = nd->extra;
    lathe_tensor *x = nd->in[0], *y = nd->out;
    int rc = acquire(sv->seg);
    if (rc != LATHE_OK) {
        lathe_backward_fail(rc);
        return;
    }
    lathe_rng *g = lathe_rng_global(), now = *g;
    *g = sv->rng;
    int depth = lathe_no_grad_swap(0), paused = lathe_record_pause(0);
    lathe_scope_push();
    size_t mark = lathe_tape_length();
    /* a leaf over x's buffer: the block's records end at it */
    lathe_tensor *xr = lathe_op_view(x, x->ndim, x->shape);
    lathe_tensor *yr = NULL;
    if (xr) {
        xr->requires_grad = x->requires_grad;
        yr = sv->fn(sv->ctx, xr);
    }
    if (!yr) {
        rc = lathe_error_prefix(LATHE_EINVAL, "segment '%s': recomputing the block", sv->seg->name);
    } else if (!lathe_tensor_same_shape(yr, y)) {
        rc = lathe_error(LATHE_EINVAL, "segment '%s': the recomputed block has another shape than the first run "
                                       "(the block is not a pure function of its input)", sv->seg->name);
    } else if (yr->requires_grad) {
        lathe_tensor *gy = lathe_tensor_grad(yr);
        if (!gy)
            rc = lathe_error(LATHE_ENOMEM, "segment '%s': out of memory for a gradient", sv->seg->name);
        else {
            be->scale(gy->data, y->grad->data, 1.0f, lathe_tensor_numel(y), 1);
            rc = lathe_tape_walk(mark);
        }
        float *dx = rc == LATHE_OK ? lathe_node_grad(x) : NULL;
        if (dx && xr->grad)
            be->scale(dx, xr->grad->data, 1.0f, lathe_tensor_numel(x), 1);
    }
    lathe_scope_pop();
    lathe_no_grad_swap(depth);
    lathe_record_pause(paused);
    *g = now;
    if (rc == LATHE_OK)
        rc = release(sv->seg, 1);
    if (rc != LATHE_OK)
        lathe_backward_fail(rc);
}

static lathe_tensor *run_recompute(const struct lathe_segment *seg, lathe_segment_fn fn, const void *ctx,
                                   size_t ctx_size, lathe_tensor *x)
{
    struct saved *sv = malloc(sizeof *sv + ctx_size);
    if (!sv) {
        lathe_error(LATHE_ENOMEM, "segment '%s': out of memory", seg->name);
        return NULL;
    }
    sv->seg = seg;
    sv->fn = fn;
    sv->rng = *lathe_rng_global();
    sv->ctx_size = ctx_size;
    if (ctx_size)
        memcpy(sv->ctx, ctx, ctx_size);

    if (acquire(seg) != LATHE_OK || lathe_scope_push() < 0) {
        free(sv);
        return NULL;
    }
    unsigned long probe = lathe_grad_probe();
    int paused = lathe_record_pause(1);
    lathe_tensor *y = fn(sv->ctx, x);
    lathe_record_pause(paused);
    int needs_grad = x->requires_grad || lathe_grad_probe() != probe;
    int rc = y ? LATHE_OK : LATHE_EINVAL;
    if (y && (y->base || !(y->flags & LATHE_TENSOR_OWNS_DATA) || !(y->flags & LATHE_TENSOR_SCOPED))) {
        /* a view (or x itself): keep a copy of its own */
        lathe_tensor *c = lathe_op_result(LATHE_F32, y->ndim, y->shape);
        if (c && lathe_op_expect_f32("lathe_segment_run", y) == LATHE_OK)
            lathe_backend()->scale(c->data, y->data, 1.0f, lathe_tensor_numel(y), 0);
        else
            c = NULL;
        y = c;
        rc = y ? LATHE_OK : LATHE_EINVAL;
    }
    if (y)
        rc = lathe_scope_keep(y);
    lathe_scope_pop();
    if (rc == LATHE_OK)
        rc = release(seg, 0);
    if (rc != LATHE_OK) {
        lathe_error_prefix(rc, "segment '%s'", seg->name);
        free(sv);
        return NULL; /* y, if kept, belongs to the enclosing scope */
    }
    if (!needs_grad) {
        free(sv);
        return y;
    }
    lathe_tensor *in[1] = {x};
    struct lathe_node *nd = lathe_node_record_ex(y, recompute_backward, 1, in, 1, 0);
    if (!nd) {
        free(sv);
        return lathe_errmsg()[0] ? NULL : y;
    }
    nd->extra = sv;
    return y;
}

lathe_tensor *lathe_segment_run(const struct lathe_segment *seg, lathe_segment_fn fn, const void *ctx,
                                size_t ctx_size, lathe_tensor *x)
{
    if (!seg || !fn || !x) {
        if (!lathe_errmsg()[0] || seg)
            lathe_error(LATHE_EINVAL, "lathe_segment_run: %s is NULL", !seg ? "the segment" : !fn ? "fn" : "x");
        return NULL;
    }
    int grad = lathe_grad_enabled();
    if (!hooks.acquire && !hooks.release && !(recompute && grad))
        return fn(ctx, x);
    if (recompute && grad)
        return run_recompute(seg, fn, ctx, ctx_size, x);
    if (acquire(seg) != LATHE_OK)
        return NULL;
    if (grad && marker(enter_backward, seg) != LATHE_OK)
        return NULL;
    lathe_tensor *y = fn(ctx, x);
    if (!y)
        return NULL;
    if (grad && marker(exit_backward, seg) != LATHE_OK)
        return NULL;
    return release(seg, 0) == LATHE_OK ? y : NULL;
}
