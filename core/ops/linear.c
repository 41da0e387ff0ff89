/* core/ops/linear.c — matmul, linear and the hookable linear layer.
 *
 * Mixed precision (lathe_set_compute_dtype): under a BF16 or F16 compute
 * dtype every product here goes through the backend's gemm_lowp, operands
 * rounded to 16 bits and sums kept in f32. Forward outputs are rounded too,
 * as PyTorch autocast's 16-bit result of a matmul/linear would be;
 * backward products accumulate unrounded into the f32 gradients (the
 * masters), which is what the f32 .grad of autocast training holds. */
#include <lathe/abi.h>
#include <lathe/model.h>
#include <lathe/ops.h>

#include "tensor/autograd.h"

/* 0 when the backend can honour the compute dtype; else -1 with the
 * message set (forward ops check before recording anything). */
static int lowp_check(const char *op)
{
    const struct lathe_backend_ops *be = lathe_backend();
    if (lathe_compute_dtype() == LATHE_F32 ||
        (LATHE_OPS_HAS(be, struct lathe_backend_ops, gemm_lowp) && LATHE_OPS_HAS(be, struct lathe_backend_ops, round_to)))
        return 0;
    lathe_error(LATHE_EUNSUPPORTED, "%s: compute dtype %s, but backend '%s' lacks the gemm_lowp or round_to slot; use [run] precision = fp32 "
                                    "or a backend built against ABI 1.2", op, lathe_dtype_name(lathe_compute_dtype()), be->name);
    return -1;
}

/* The backend's gemm at the compute dtype; round_c: round C to it. */
static void gemm_at(int round_c, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                    const float *A, const float *B, float beta, float *C, int64_t batch, int64_t sa, int64_t sb,
                    int64_t sc)
{
    const struct lathe_backend_ops *be = lathe_backend();
    enum lathe_dtype dt = lathe_compute_dtype();
    if (dt != LATHE_F32 && LATHE_OPS_HAS(be, struct lathe_backend_ops, gemm_lowp))
        be->gemm_lowp(dt, round_c, trans_a, trans_b, M, N, K, alpha, A, B, beta, C, batch, sa, sb, sc);
    else
        be->gemm(trans_a, trans_b, M, N, K, alpha, A, B, beta, C, batch, sa, sb, sc);
}

/* ---- matmul --------------------------------------------------------- */

enum { MM_TRANS_B, MM_BATCH, MM_M, MM_N, MM_K, MM_SHARED };

static void matmul_backward(struct lathe_node *nd)
{
    lathe_tensor *a = nd->in[0], *b = nd->in[1];
    const float *dout = nd->out->grad->data; /* [batch, M, N] */
    int trans_b = (int)nd->i[MM_TRANS_B], shared = (int)nd->i[MM_SHARED];
    int64_t batch = nd->i[MM_BATCH], M = nd->i[MM_M], N = nd->i[MM_N], K = nd->i[MM_K];
    float *da = lathe_node_grad(a); /* [batch, M, K] */
    float *db = lathe_node_grad(b); /* [batch?, K, N], or [batch?, N, K] when trans_b */
    /* A shared b sees all batch items as one tall matrix of batch*M rows,
     * so its gradient sums over the batch in one GEMM. */
    int64_t rows = shared ? batch * M : M, items = shared ? 1 : batch;
    if (da) {
        /* da += dout · op(b)^T */
        gemm_at(0, 0, !trans_b, rows, K, N, 1.0f, dout, b->data, 1.0f, da, items, M * N,
                 shared ? 0 : K * N, M * K);
    }
    if (db) {
        if (!trans_b) /* db[K,N] += a^T · dout */
            gemm_at(0, 1, 0, K, N, rows, 1.0f, a->data, dout, 1.0f, db, items, M * K, M * N,
                     K * N);
        else /* db[N,K] += dout^T · a */
            gemm_at(0, 1, 0, N, K, rows, 1.0f, dout, a->data, 1.0f, db, items, M * N, M * K,
                     K * N);
    }
}

lathe_tensor *lathe_matmul(lathe_tensor *a, lathe_tensor *b, int trans_b)
{
    LATHE_OP_CHECK_INPUTS(a, b);
    if (lathe_op_expect_f32("lathe_matmul", a) || lathe_op_expect_f32("lathe_matmul", b) || lowp_check("lathe_matmul"))
        return NULL;
    char sa[96], sb[96];
    lathe_tensor_shape_str(a, sa, sizeof sa);
    lathe_tensor_shape_str(b, sb, sizeof sb);
    if (a->ndim < 2 || b->ndim < 2) {
        lathe_error(LATHE_EINVAL, "lathe_matmul: a %s and b %s: both need at least 2 dims "
                                  "(reshape a vector to [1, n] or [n, 1])", sa, sb);
        return NULL;
    }
    int na = a->ndim, nb = b->ndim;
    int64_t M = a->shape[na - 2], K = a->shape[na - 1];
    int64_t Kb = trans_b ? b->shape[nb - 1] : b->shape[nb - 2];
    int64_t N = trans_b ? b->shape[nb - 2] : b->shape[nb - 1];
    if (K != Kb) {
        lathe_error(LATHE_EINVAL, "lathe_matmul: a %s and b %s%s: inner dims differ (%lld vs %lld)",
                    sa, sb, trans_b ? " (b transposed)" : "", (long long)K, (long long)Kb);
        return NULL;
    }
    int shared = nb == 2;
    int64_t batch = 1;
    for (int d = 0; d < na - 2; d++)
        batch *= a->shape[d];
    if (!shared) {
        int same = nb == na;
        for (int d = 0; same && d < na - 2; d++)
            same = a->shape[d] == b->shape[d];
        if (!same) {
            lathe_error(LATHE_EINVAL, "lathe_matmul: a %s and b %s: batch dims differ (b must "
                                      "have a's leading dims, or be 2-D and shared)", sa, sb);
            return NULL;
        }
    }
    int64_t shape[LATHE_MAX_DIMS];
    for (int d = 0; d < na - 2; d++)
        shape[d] = a->shape[d];
    shape[na - 2] = M;
    shape[na - 1] = N;
    lathe_tensor *out = lathe_op_result(LATHE_F32, na, shape);
    if (!out)
        return NULL;
    if (shared)
        gemm_at(1, 0, trans_b, batch * M, N, K, 1.0f, a->data, b->data, 0.0f, out->data, 1, 0, 0, 0);
    else
        gemm_at(1, 0, trans_b, M, N, K, 1.0f, a->data, b->data, 0.0f, out->data, batch, M * K, K * N, M * N);
    lathe_tensor *in[2] = {a, b};
    struct lathe_node *nd = lathe_node_record(out, matmul_backward, 2, in);
    if (nd) {
        nd->i[MM_TRANS_B] = trans_b != 0;
        nd->i[MM_BATCH] = batch;
        nd->i[MM_M] = M;
        nd->i[MM_N] = N;
        nd->i[MM_K] = K;
        nd->i[MM_SHARED] = shared;
    }
    return out;
}

/* ---- linear --------------------------------------------------------- */

/* A frozen weight may be stored in bf16/f16 to halve its memory (LoRA's
 * base); each use converts it to a temporary f32 buffer, freed right after,
 * so no f32 copy of the whole model ever lives at once. */
static float *weight_f32(const lathe_tensor *w)
{
    if (w->dtype == LATHE_F32)
        return w->data;
    const struct lathe_backend_ops *be = lathe_backend();
    int64_t n = lathe_tensor_numel(w);
    float *f = be->alloc((size_t)n * sizeof *f);
    if (!f) {
        lathe_error(LATHE_ENOMEM, "lathe_linear: out of memory converting %s weight '%s'",
                    lathe_dtype_name(w->dtype), w->name);
        return NULL;
    }
    be->convert(f, LATHE_F32, w->data, w->dtype, n);
    return f;
}

static void linear_backward(struct lathe_node *nd)
{
    const struct lathe_backend_ops *be = lathe_backend();
    lathe_tensor *x = nd->in[0], *w = nd->in[1];
    int64_t N = nd->i[0], IC = nd->i[1], OC = nd->i[2];
    const float *dout = nd->out->grad->data; /* [N, OC] */
    float *dx = lathe_node_grad(x);          /* [N, IC] */
    float *dw = lathe_node_grad(w);          /* [OC, IC] */
    if (dx) { /* dx += dout · w */
        float *wf = weight_f32(w);
        if (!wf)
            return; /* out of memory: the message is set; dx stays partial */
        gemm_at(0, 0, 0, N, IC, OC, 1.0f, dout, wf, 1.0f, dx, 1, 0, 0, 0);
        if (wf != w->data)
            be->free(wf);
    }
    if (dw) /* dw += dout^T · x, straight into the gradient (beta = 1) */
        gemm_at(0, 1, 0, OC, IC, N, 1.0f, dout, x->data, 1.0f, dw, 1, 0, 0, 0);
    if (nd->nin > 2) {
        float *db = lathe_node_grad(nd->in[2]); /* [OC] */
        if (db)
            be->bias_backward(db, dout, N, OC);
    }
}

lathe_tensor *lathe_linear(lathe_tensor *x, lathe_tensor *w, lathe_tensor *bias)
{
    LATHE_OP_CHECK_INPUTS(x, w);
    if (lathe_op_expect_f32("lathe_linear", x) || (bias && lathe_op_expect_f32("lathe_linear", bias)) ||
        lowp_check("lathe_linear"))
        return NULL;
    if (w->dtype == LATHE_BF16 || w->dtype == LATHE_F16) {
        if (w->requires_grad) {
            lathe_error(LATHE_EINVAL, "lathe_linear: weight '%s' is %s and trainable; only frozen weights may be "
                                      "held in 16 bits (train in f32)", w->name, lathe_dtype_name(w->dtype));
            return NULL;
        }
        if (!lathe_tensor_is_contiguous(w)) {
            lathe_error(LATHE_EINVAL, "lathe_linear: expected a contiguous weight");
            return NULL;
        }
    } else if (lathe_op_expect_f32("lathe_linear", w)) {
        return NULL;
    }
    char sx[96], sw[96];
    lathe_tensor_shape_str(x, sx, sizeof sx);
    lathe_tensor_shape_str(w, sw, sizeof sw);
    if (w->ndim != 2 || x->shape[x->ndim - 1] != w->shape[1]) {
        lathe_error(LATHE_EINVAL, "lathe_linear: x %s and w %s: w must be [out, in] with in = "
                                  "x's last dim", sx, sw);
        return NULL;
    }
    int64_t IC = w->shape[1], OC = w->shape[0], N = lathe_op_rows(x);
    if (bias && (bias->ndim != 1 || bias->shape[0] != OC)) {
        char sbias[96];
        lathe_error(LATHE_EINVAL, "lathe_linear: bias %s does not match w %s (want [%lld])",
                    lathe_tensor_shape_str(bias, sbias, sizeof sbias), sw, (long long)OC);
        return NULL;
    }
    int64_t shape[LATHE_MAX_DIMS];
    for (int d = 0; d < x->ndim - 1; d++)
        shape[d] = x->shape[d];
    shape[x->ndim - 1] = OC;
    lathe_tensor *out = lathe_op_result(LATHE_F32, x->ndim, shape);
    if (!out)
        return NULL;
    const struct lathe_backend_ops *be = lathe_backend();
    float *wf = weight_f32(w);
    if (!wf)
        return NULL;
    /* with a bias, the rounding to the compute dtype comes after it */
    gemm_at(!bias, 0, 1, N, OC, IC, 1.0f, x->data, wf, 0.0f, out->data, 1, 0, 0, 0);
    if (wf != w->data)
        be->free(wf);
    if (bias) {
        be->bias_forward(out->data, bias->data, N, OC);
        if (lathe_compute_dtype() != LATHE_F32)
            be->round_to(out->data, out->data, N * OC, lathe_compute_dtype());
    }
    lathe_tensor *in[3] = {x, w, bias};
    struct lathe_node *nd = lathe_node_record(out, linear_backward, bias ? 3 : 2, in);
    if (nd) {
        nd->i[0] = N;
        nd->i[1] = IC;
        nd->i[2] = OC;
    }
    return out;
}

lathe_tensor *lathe_linear_forward(struct lathe_linear *l, lathe_tensor *x)
{
    if (!l) {
        lathe_error(LATHE_EINVAL, "lathe_linear_forward: layer is NULL");
        return NULL;
    }
    lathe_tensor *out = lathe_linear(x, l->weight, l->bias);
    if (!out) {
        /* Name the layer when the failure is its own, not an upstream NULL. */
        if (x && l->weight && l->name)
            lathe_error_prefix(LATHE_EINVAL, "%s", l->name);
        return NULL;
    }
    return l->hook ? l->hook(l->hook_self, l, x, out) : out;
}

/* ---- in-place low-rank accumulate ------------------------------------ */

/* in: y, x, w; i: N, IC, OC; f: scale */
static void linear_accumulate_backward(struct lathe_node *nd)
{
    const struct lathe_backend_ops *be = lathe_backend();
    lathe_tensor *y = nd->in[0], *x = nd->in[1], *w = nd->in[2];
    int64_t N = nd->i[0], IC = nd->i[1], OC = nd->i[2];
    float s = nd->f[0];
    const float *dout = nd->out->grad->data; /* [N, OC] */
    float *dy = lathe_node_grad(y);          /* [N, OC] */
    float *dx = lathe_node_grad(x);          /* [N, IC] */
    float *dw = lathe_node_grad(w);          /* [OC, IC] */
    if (dy)
        be->scale(dy, dout, 1.0f, N * OC, 1);
    if (dx)
        gemm_at(0, 0, 0, N, IC, OC, s, dout, w->data, 1.0f, dx, 1, 0, 0, 0);
    if (dw)
        gemm_at(0, 1, 0, OC, IC, N, s, dout, x->data, 1.0f, dw, 1, 0, 0, 0);
}

lathe_tensor *lathe_linear_accumulate(lathe_tensor *y, lathe_tensor *x, lathe_tensor *w, float scale)
{
    LATHE_OP_CHECK_INPUTS(y, x, w);
    const char *op = "lathe_linear_accumulate";
    if (lathe_op_expect_f32(op, y) || lathe_op_expect_f32(op, x) || lathe_op_expect_f32(op, w) || lowp_check(op))
        return NULL;
    char sy[96], sx[96], sw[96];
    int64_t IC = w->ndim == 2 ? w->shape[1] : -1, OC = w->ndim == 2 ? w->shape[0] : -1;
    int ok = w->ndim == 2 && x->shape[x->ndim - 1] == IC && y->shape[y->ndim - 1] == OC &&
             lathe_op_rows(x) == lathe_op_rows(y);
    if (!ok) {
        lathe_error(LATHE_EINVAL, "%s: y %s, x %s, w %s: expected y [..., OC], x [..., IC], w [OC, IC] with equal rows", op,
                    lathe_tensor_shape_str(y, sy, sizeof sy), lathe_tensor_shape_str(x, sx, sizeof sx),
                    lathe_tensor_shape_str(w, sw, sizeof sw));
        return NULL;
    }
    int64_t N = lathe_op_rows(y);
    lathe_tensor *out = lathe_op_view(y, y->ndim, y->shape);
    if (!out)
        return NULL;
    /* y + scale * x w^T rounded as a whole: autocast's 16-bit y plus a
     * 16-bit update rounds once more in the addition */
    gemm_at(1, 0, 1, N, OC, IC, scale, x->data, w->data, 1.0f, out->data, 1, 0, 0, 0);
    lathe_tensor *in[3] = {y, x, w};
    struct lathe_node *nd = lathe_node_record(out, linear_accumulate_backward, 3, in);
    if (nd) {
        nd->i[0] = N;
        nd->i[1] = IC;
        nd->i[2] = OC;
        nd->f[0] = scale;
    }
    return out;
}
