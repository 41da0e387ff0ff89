/* core/tensor/autograd.c — the tape and the reverse pass.
 *
 * Ops append a record (struct lathe_node) when grad mode is on and an input
 * requires grad. lathe_backward walks the records newest first; a record
 * runs only if its output received a gradient. Gradients of scoped
 * intermediates are freed as soon as their record has run, so the backward
 * pass never holds more than one gradient per live activation. */
#include <stdlib.h>
#include <string.h>

#include "tensor/autograd.h"
#include "tensor/tensor_internal.h"

static struct lathe_node **tape;
static size_t tape_n, tape_cap;
static int no_grad_depth;
static int tape_broken; /* a record could not be stored */
static int backward_rc;  /* a backward function failed */
static unsigned long probe_count;
static int pause_depth; /* recording paused while grad mode stays on */

size_t lathe_tape_length(void) { return tape_n; }

static void node_free(struct lathe_node *nd)
{
    if (nd->out && nd->out->node == nd)
        nd->out->node = NULL;
    free(nd->in);
    free(nd->extra);
    free(nd);
}

void lathe_tape_truncate(size_t mark)
{
    while (tape_n > mark)
        node_free(tape[--tape_n]);
    if (tape_n == 0)
        tape_broken = 0;
}

void lathe_no_grad_begin(void) { no_grad_depth++; }
void lathe_no_grad_end(void)
{
    if (no_grad_depth > 0)
        no_grad_depth--;
}
int lathe_grad_enabled(void) { return no_grad_depth == 0; }

int lathe_no_grad_swap(int depth)
{
    int old = no_grad_depth;
    no_grad_depth = depth;
    return old;
}

unsigned long lathe_grad_probe(void) { return probe_count; }

int lathe_record_pause(int depth)
{
    int old = pause_depth;
    pause_depth = depth;
    return old;
}

void lathe_backward_fail(int rc)
{
    if (backward_rc == LATHE_OK)
        backward_rc = rc;
}

struct lathe_node *lathe_node_record(lathe_tensor *out, lathe_backward_fn fn, int nin,
                                     lathe_tensor *const *in)
{
    return lathe_node_record_ex(out, fn, nin, in, 0, 0);
}

struct lathe_node *lathe_node_record_ex(lathe_tensor *out, lathe_backward_fn fn, int nin,
                                        lathe_tensor *const *in, int force, int always)
{
    if (!out)
        return NULL;
    int need = force;
    for (int i = 0; i < nin; i++)
        if (in[i] && in[i]->requires_grad)
            need = 1;
    if (no_grad_depth > 0 || pause_depth > 0) {
        if (need)
            probe_count++;
        return NULL;
    }
    if (!need)
        return NULL;
    if (tape_n == tape_cap) {
        size_t cap = tape_cap ? 2 * tape_cap : 1024;
        struct lathe_node **t = realloc(tape, cap * sizeof *t);
        if (t) {
            tape = t;
            tape_cap = cap;
        }
    }
    struct lathe_node *nd = tape_n < tape_cap ? calloc(1, sizeof *nd) : NULL;
    lathe_tensor **ins = nd ? malloc(sizeof *ins * (size_t)(nin > 0 ? nin : 1)) : NULL;
    if (!ins) {
        free(nd);
        tape_broken = 1;
        lathe_error(LATHE_ENOMEM, "out of memory recording an op for backward");
        return NULL;
    }
    if (nin > 0)
        memcpy(ins, in, sizeof *ins * (size_t)nin);
    nd->backward = fn;
    nd->always = always;
    nd->out = out;
    nd->nin = nin;
    nd->in = ins;
    out->requires_grad = 1;
    out->node = nd;
    tape[tape_n++] = nd;
    return nd;
}

lathe_tensor *lathe_tensor_grad(lathe_tensor *t)
{
    if (!t)
        return NULL;
    if (!t->grad) {
        t->grad = lathe_tensor_alloc(LATHE_F32, t->ndim, t->shape, 0);
        if (!t->grad)
            return NULL;
    }
    return t->grad;
}

float *lathe_node_grad(lathe_tensor *t)
{
    if (!t || !t->requires_grad)
        return NULL;
    lathe_tensor *g = lathe_tensor_grad(t);
    return g ? g->data : NULL;
}

void lathe_tensor_zero_grad(lathe_tensor *t)
{
    if (t && t->grad)
        lathe_backend()->zero(t->grad->data, lathe_tensor_nbytes(t->grad));
}

static int walk(size_t mark, const lathe_tensor *keep);

int lathe_backward(lathe_tensor *loss, float scale)
{
    if (!loss)
        return lathe_error(LATHE_EINVAL, "backward: loss is NULL (%s)", lathe_errmsg());
    if (lathe_tensor_numel(loss) != 1 || loss->dtype != LATHE_F32)
        return lathe_error(LATHE_EINVAL, "backward: the loss must be one f32 value");
    if (!loss->requires_grad)
        return lathe_error(LATHE_EINVAL,
                           "backward: the loss does not depend on any trainable parameter");
    if (tape_broken)
        return lathe_error(LATHE_ENOMEM, "backward: the tape is incomplete (an op could not be recorded)");
    float *g = lathe_node_grad(loss);
    if (!g)
        return lathe_error(LATHE_ENOMEM, "backward: out of memory");
    /* the seed goes through the backend so the loss may live on a device */
    float seed = scale;
    float cur;
    const struct lathe_backend_ops *be = lathe_backend();
    be->copy(&cur, g, sizeof cur, 0);
    cur += seed;
    be->copy(g, &cur, sizeof cur, 1);
    backward_rc = LATHE_OK;
    return walk(0, loss);
}

/* Records [mark, tape_n) newest first. A backward function may append
 * records and walk them itself (recomputation) as long as it truncates
 * the tape back before returning; tape[i] is re-read every time because
 * such appends may move the array. */
static int walk(size_t mark, const lathe_tensor *keep)
{
    for (size_t i = tape_n; i-- > mark;) {
        struct lathe_node *nd = tape[i];
        if (!nd->out->grad && !nd->always)
            continue;
        nd->backward(nd);
        if (backward_rc != LATHE_OK)
            return backward_rc;
        /* an intermediate's gradient is spent once its record has run */
        if (nd->out->grad && (nd->out->flags & LATHE_TENSOR_SCOPED) && nd->out != keep) {
            lathe_tensor_destroy(nd->out->grad);
            nd->out->grad = NULL;
        }
    }
    return LATHE_OK;
}

int lathe_tape_walk(size_t mark) { return walk(mark, NULL); }

/* ---- shared op helpers ---- */

int lathe_op_expect_f32(const char *op, const lathe_tensor *x)
{
    if (x->dtype != LATHE_F32)
        return lathe_error(LATHE_EINVAL, "%s: expected an F32 tensor, got %s", op, lathe_dtype_name(x->dtype));
    if (!lathe_tensor_is_contiguous(x))
        return lathe_error(LATHE_EINVAL, "%s: expected a contiguous tensor", op);
    return LATHE_OK;
}

int lathe_op_expect_i32(const char *op, const lathe_tensor *x)
{
    if (x->dtype != LATHE_I32)
        return lathe_error(LATHE_EINVAL, "%s: expected an I32 index tensor, got %s", op, lathe_dtype_name(x->dtype));
    if (!lathe_tensor_is_contiguous(x))
        return lathe_error(LATHE_EINVAL, "%s: expected a contiguous tensor", op);
    return LATHE_OK;
}

int64_t lathe_op_rows(const lathe_tensor *x)
{
    int64_t last = x->shape[x->ndim - 1];
    return last ? lathe_tensor_numel(x) / last : 0;
}

/* ---- compute precision (lathe/tensor.h) ---- */

static enum lathe_dtype compute_dtype = LATHE_F32;

int lathe_set_compute_dtype(enum lathe_dtype dt)
{
    if (dt != LATHE_F32 && dt != LATHE_BF16 && dt != LATHE_F16)
        return lathe_error(LATHE_EINVAL, "compute dtype must be F32, BF16 or F16, not %s", lathe_dtype_name(dt));
    compute_dtype = dt;
    return LATHE_OK;
}

enum lathe_dtype lathe_compute_dtype(void) { return compute_dtype; }
