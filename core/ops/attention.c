/* core/ops/attention.c — causal scaled-dot-product attention with
 * grouped-query heads and optional segment ids.
 *
 * Two kernel pairs. A backend with the ABI 1.2 attention_lse_* slots
 * (FlashAttention; core/cpu/attention_flash.c) keeps only the row
 * log-sum-exp [B, H, T] beside the output, O(T) memory per layer. Else
 * (a backend built at ABI 1.1) the probabilities [B, H, T, T] are kept
 * (core/cpu/attention.c). Without a gradient to compute, what was saved is
 * freed with the scope. */
#include <math.h>

#include <lathe/abi.h>
#include <lathe/ops.h>

#include "tensor/autograd.h"

/* Mixed precision (lathe_set_compute_dtype): under BF16 or F16 compute, q,
 * k and v enter the kernel rounded to 16 bits, as autocast's attention
 * receives 16-bit tensors; scores, softmax and sums stay f32 like a flash
 * kernel's accumulators, and the output is rounded as a 16-bit result
 * would be. The rounded copies are temporaries, made again for the
 * backward rather than kept as three more activations per layer. */
struct qkv {
    const float *q, *k, *v;
    float *owned[3];
};

/* r gets q, k, v as the kernel should see them. 0, or -1 with the message
 * set (out of memory, or a backend without round_to). */
static int qkv_prepare(struct qkv *r, const lathe_tensor *q, const lathe_tensor *k, const lathe_tensor *v)
{
    *r = (struct qkv){.q = q->data, .k = k->data, .v = v->data};
    enum lathe_dtype dt = lathe_compute_dtype();
    if (dt == LATHE_F32)
        return 0;
    const struct lathe_backend_ops *be = lathe_backend();
    if (!LATHE_OPS_HAS(be, struct lathe_backend_ops, round_to)) {
        lathe_error(LATHE_EUNSUPPORTED, "lathe_sdpa: compute dtype %s, but backend '%s' has no round_to slot; "
                                        "use [run] precision = fp32", lathe_dtype_name(dt), be->name);
        return -1;
    }
    const lathe_tensor *in[3] = {q, k, v};
    const float **dst[3] = {&r->q, &r->k, &r->v};
    for (int i = 0; i < 3; i++) {
        int64_t n = lathe_tensor_numel(in[i]);
        r->owned[i] = be->alloc((size_t)n * sizeof(float));
        if (!r->owned[i]) {
            for (int j = 0; j < i; j++)
                be->free(r->owned[j]);
            lathe_error(LATHE_ENOMEM, "lathe_sdpa: out of memory rounding '%s' to %s", in[i]->name,
                        lathe_dtype_name(dt));
            return -1;
        }
        be->round_to(r->owned[i], in[i]->data, n, dt);
        *dst[i] = r->owned[i];
    }
    return 0;
}

static void qkv_release(struct qkv *r)
{
    for (int i = 0; i < 3; i++)
        if (r->owned[i])
            lathe_backend()->free(r->owned[i]);
}

/* Both slots of the O(T)-memory pair, or none is used. */
static int sdpa_has_lse(const struct lathe_backend_ops *be)
{
    return LATHE_OPS_HAS(be, struct lathe_backend_ops, attention_lse_forward) &&
           LATHE_OPS_HAS(be, struct lathe_backend_ops, attention_lse_backward);
}

static void sdpa_kernel_backward(struct lathe_node *nd, const struct qkv *r, float *dq, float *dk, float *dv)
{
    const struct lathe_backend_ops *be = lathe_backend();
    if (nd->i[5]) {
        /* the kernel's own (unrounded) output: the one its lse belongs to */
        const float *o = nd->saved[1] ? nd->saved[1]->data : nd->out->data;
        const int32_t *seg = nd->nin > 3 ? nd->in[3]->data : NULL;
        be->attention_lse_backward(dq, dk, dv, nd->out->grad->data, r->q, r->k, r->v, o, nd->saved[0]->data, seg,
                                   nd->i[0], nd->i[1], nd->i[2], nd->i[3], nd->i[4], nd->f[0]);
        return;
    }
    be->attention_backward(dq, dk, dv, nd->out->grad->data, r->q, r->k, r->v, nd->saved[0]->data, nd->i[0],
                           nd->i[1], nd->i[2], nd->i[3], nd->i[4], nd->f[0]);
}

/* in: q, k, v[, segments]; i: B, T, H, Hkv, D, lse path; f: scale;
 * saved: lse [B, H, T] and, under a 16-bit compute dtype, the unrounded
 * output (lse path), or att [B, H, T, T] */
static void sdpa_backward(struct lathe_node *nd)
{
    float *dq = lathe_node_grad(nd->in[0]); /* [B, T, H, D] */
    float *dk = lathe_node_grad(nd->in[1]); /* [B, T, Hkv, D] */
    float *dv = lathe_node_grad(nd->in[2]); /* [B, T, Hkv, D] */
    if (!dq && !dk && !dv)
        return;
    struct qkv r;
    if (qkv_prepare(&r, nd->in[0], nd->in[1], nd->in[2]) != 0) {
        /* out of memory (the message is set): the gradient from the
         * unrounded inputs is still a gradient */
        r = (struct qkv){.q = nd->in[0]->data, .k = nd->in[1]->data, .v = nd->in[2]->data};
    }
    /* lathe_sdpa(x, x, x) (H == Hkv) gives one buffer two or three
     * gradients; kernels may assume distinct outputs, so add them in turn */
    if ((dq && (dq == dk || dq == dv)) || (dk && dk == dv)) {
        if (dq)
            sdpa_kernel_backward(nd, &r, dq, NULL, NULL);
        if (dk)
            sdpa_kernel_backward(nd, &r, NULL, dk, NULL);
        if (dv)
            sdpa_kernel_backward(nd, &r, NULL, NULL, dv);
    } else {
        sdpa_kernel_backward(nd, &r, dq, dk, dv);
    }
    qkv_release(&r);
}

lathe_tensor *lathe_sdpa(lathe_tensor *q, lathe_tensor *k, lathe_tensor *v,
                         lathe_tensor *segments, float scale)
{
    LATHE_OP_CHECK_INPUTS(q, k, v);
    const char *op = "lathe_sdpa";
    if (lathe_op_expect_f32(op, q) || lathe_op_expect_f32(op, k) || lathe_op_expect_f32(op, v) ||
        (segments && lathe_op_expect_i32(op, segments)))
        return NULL;
    char sq[96], sk[96], sv[96], ss[96];
    lathe_tensor_shape_str(q, sq, sizeof sq);
    lathe_tensor_shape_str(k, sk, sizeof sk);
    lathe_tensor_shape_str(v, sv, sizeof sv);
    if (q->ndim != 4 || k->ndim != 4 || v->ndim != 4) {
        lathe_error(LATHE_EINVAL, "%s: q %s, k %s, v %s must all be 4-D: q [B, T, H, D], "
                                  "k and v [B, T, Hkv, D]", op, sq, sk, sv);
        return NULL;
    }
    int64_t B = q->shape[0], T = q->shape[1], H = q->shape[2], D = q->shape[3];
    int64_t Hkv = k->shape[2];
    if (k->shape[0] != B || k->shape[1] != T || k->shape[3] != D ||
        !lathe_tensor_same_shape(k, v)) {
        lathe_error(LATHE_EINVAL, "%s: q %s needs k and v of shape [%lld, %lld, Hkv, %lld], "
                                  "got k %s, v %s", op, sq, (long long)B, (long long)T,
                    (long long)D, sk, sv);
        return NULL;
    }
    if (D == 0) {
        lathe_error(LATHE_EINVAL, "%s: q %s has an empty head size D", op, sq);
        return NULL;
    }
    if (Hkv == 0 || H % Hkv != 0) {
        lathe_error(LATHE_EINVAL, "%s: q %s has %lld heads and k %s has %lld kv heads; the query "
                                  "heads must be a multiple of the kv heads", op, sq,
                    (long long)H, sk, (long long)Hkv);
        return NULL;
    }
    if (segments && (segments->ndim != 2 || segments->shape[0] != B || segments->shape[1] != T)) {
        lathe_error(LATHE_EINVAL, "%s: q %s needs segments of shape [%lld, %lld], got %s", op, sq,
                    (long long)B, (long long)T,
                    lathe_tensor_shape_str(segments, ss, sizeof ss));
        return NULL;
    }
    if (T > INT32_MAX || H * D > INT32_MAX) {
        lathe_error(LATHE_EINVAL,
                    "%s: q %s is too large: T and H*D must fit the 32-bit sizes of BLAS", op, sq);
        return NULL;
    }
    if (!(scale > 0.0f))
        scale = 1.0f / sqrtf((float)D);
    const struct lathe_backend_ops *be = lathe_backend();
    enum lathe_dtype dt = lathe_compute_dtype();
    int use_lse = sdpa_has_lse(be);
    lathe_tensor *out = lathe_op_result(LATHE_F32, 4, q->shape);
    /* lse path: saved[0] lse [B, H, T]; the backward's rowsum(dO * O) must
     * see the output the kernel made, so under 16-bit compute (where out
     * is then rounded) that output is kept as saved[1]. Else att. */
    int64_t sshape[4] = {B, H, T, T};
    lathe_tensor *saved = lathe_op_result(LATHE_F32, use_lse ? 3 : 4, sshape);
    lathe_tensor *kout = use_lse && dt != LATHE_F32 ? lathe_op_result(LATHE_F32, 4, q->shape) : out;
    if (!out || !saved || !kout)
        return NULL;
    struct qkv r;
    if (qkv_prepare(&r, q, k, v) != 0)
        return NULL;
    const int32_t *seg = segments ? segments->data : NULL;
    if (use_lse)
        be->attention_lse_forward(kout->data, saved->data, r.q, r.k, r.v, seg, B, T, H, Hkv, D, scale);
    else
        be->attention_forward(out->data, saved->data, r.q, r.k, r.v, seg, B, T, H, Hkv, D, scale);
    qkv_release(&r);
    if (dt != LATHE_F32)
        be->round_to(out->data, kout->data, lathe_tensor_numel(out), dt);
    lathe_tensor *in[4] = {q, k, v, segments};
    struct lathe_node *nd = lathe_node_record(out, sdpa_backward, segments ? 4 : 3, in);
    if (nd) {
        nd->saved[0] = saved;
        nd->saved[1] = kout != out ? kout : NULL;
        nd->i[5] = use_lse;
        nd->i[0] = B;
        nd->i[1] = T;
        nd->i[2] = H;
        nd->i[3] = Hkv;
        nd->i[4] = D;
        nd->f[0] = scale;
    }
    return out;
}
