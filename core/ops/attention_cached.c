/* core/ops/attention_cached.c — the two ops of incremental decoding: write
 * new keys/values into a cache, and attend over it. Inference only: nothing
 * is recorded for backward. */
#include <math.h>

#include <lathe/abi.h>

#include "tensor/autograd.h"

lathe_tensor *lathe_sdpa_cached(lathe_tensor *q, lathe_tensor *kcache, lathe_tensor *vcache, int64_t len,
                                lathe_tensor *kseg, float scale)
{
    LATHE_OP_CHECK_INPUTS(q, kcache, vcache);
    char a[96], b[96], c[96];
    if (lathe_op_expect_f32("sdpa_cached", q) || lathe_op_expect_f32("sdpa_cached", kcache) ||
        lathe_op_expect_f32("sdpa_cached", vcache) || (kseg && lathe_op_expect_i32("sdpa_cached", kseg)))
        return NULL;
    if (q->ndim != 4 || kcache->ndim != 4 || !lathe_tensor_same_shape(kcache, vcache) ||
        q->shape[0] != kcache->shape[0] || q->shape[3] != kcache->shape[3]) {
        lathe_error(LATHE_EINVAL, "sdpa_cached: q %s with caches k %s, v %s: expected [B,T,H,D] and [B,Tmax,Hkv,D]",
                    lathe_tensor_shape_str(q, a, sizeof a), lathe_tensor_shape_str(kcache, b, sizeof b),
                    lathe_tensor_shape_str(vcache, c, sizeof c));
        return NULL;
    }
    const int64_t B = q->shape[0], T = q->shape[1], H = q->shape[2], D = q->shape[3];
    const int64_t Tmax = kcache->shape[1], Hkv = kcache->shape[2];
    if (Hkv == 0 || H % Hkv != 0) {
        lathe_error(LATHE_EINVAL, "sdpa_cached: %lld query heads are not a multiple of %lld key/value heads",
                    (long long)H, (long long)Hkv);
        return NULL;
    }
    if (len < T || len > Tmax) {
        lathe_error(LATHE_EINVAL, "sdpa_cached: %lld valid positions for %lld new tokens in a cache of %lld",
                    (long long)len, (long long)T, (long long)Tmax);
        return NULL;
    }
    if (kseg && (kseg->ndim != 2 || kseg->shape[0] != B || kseg->shape[1] != Tmax)) {
        lathe_error(LATHE_EINVAL, "sdpa_cached: segments %s, expected [%lld, %lld]",
                    lathe_tensor_shape_str(kseg, a, sizeof a), (long long)B, (long long)Tmax);
        return NULL;
    }
    const struct lathe_backend_ops *be = lathe_backend();
    if (!LATHE_OPS_HAS(be, struct lathe_backend_ops, attention_cached_forward)) {
        lathe_error(LATHE_EUNSUPPORTED, "sdpa_cached: backend '%s' has no cached attention kernel", be->name);
        return NULL;
    }
    lathe_tensor *out = lathe_op_result(LATHE_F32, 4, q->shape);
    if (!out)
        return NULL;
    /* Under a 16-bit compute dtype (lathe_set_compute_dtype) q and the
     * cache's first len positions enter the kernel rounded to it, as in
     * lathe_sdpa; the rounded copies are temporaries (the cache keeps f32). */
    const enum lathe_dtype dt = lathe_compute_dtype();
    const float *qd = q->data, *kd = kcache->data, *vd = vcache->data;
    float *tmp = NULL;
    if (dt != LATHE_F32) {
        if (!LATHE_OPS_HAS(be, struct lathe_backend_ops, round_to)) {
            lathe_error(LATHE_EUNSUPPORTED, "sdpa_cached: compute dtype %s, but backend '%s' has no round_to slot",
                        lathe_dtype_name(dt), be->name);
            return NULL;
        }
        const int64_t nq = lathe_tensor_numel(q), row = Tmax * Hkv * D, used = len * Hkv * D;
        tmp = be->alloc((size_t)(nq + 2 * B * row) * sizeof *tmp);
        if (!tmp) {
            lathe_error(LATHE_ENOMEM, "sdpa_cached: out of memory rounding q and the cache to %s", lathe_dtype_name(dt));
            return NULL;
        }
        float *rq = tmp, *rk = tmp + nq, *rv = rk + B * row;
        be->round_to(rq, qd, nq, dt);
        /* positions at and past len are never read */
        for (int64_t b = 0; b < B; b++) {
            be->round_to(rk + b * row, kd + b * row, used, dt);
            be->round_to(rv + b * row, vd + b * row, used, dt);
        }
        qd = rq;
        kd = rk;
        vd = rv;
    }
    be->attention_cached_forward(out->data, qd, kd, vd, kseg ? kseg->data : NULL, B, T, H, Hkv, D, Tmax, len,
                                 scale > 0 ? scale : 1.0f / sqrtf((float)D));
    if (tmp) {
        be->free(tmp);
        be->round_to(out->data, out->data, lathe_tensor_numel(out), dt);
    }
    return out;
}

int lathe_write_rows(lathe_tensor *dst, lathe_tensor *src, int64_t at)
{
    char a[96], b[96];
    if (!dst || !src)
        return lathe_error(LATHE_EINVAL, "write_rows: NULL tensor");
    int ok = dst->ndim == src->ndim && dst->ndim >= 2 && dst->dtype == src->dtype &&
             dst->shape[0] == src->shape[0] && at >= 0 && at + src->shape[1] <= dst->shape[1];
    for (int i = 2; ok && i < dst->ndim; i++)
        ok = dst->shape[i] == src->shape[i];
    if (!ok)
        return lathe_error(LATHE_EINVAL, "write_rows: %s into %s at %lld does not fit",
                           lathe_tensor_shape_str(src, a, sizeof a), lathe_tensor_shape_str(dst, b, sizeof b),
                           (long long)at);
    const size_t es = lathe_dtype_size(src->dtype);
    int64_t inner = 1;
    for (int i = 2; i < src->ndim; i++)
        inner *= src->shape[i];
    const size_t block = (size_t)(src->shape[1] * inner) * es;
    const struct lathe_backend_ops *be = lathe_backend();
    for (int64_t r = 0; r < src->shape[0]; r++) {
        char *d = (char *)dst->data + ((size_t)(r * dst->shape[1] + at) * (size_t)inner) * es;
        const char *s = (const char *)src->data + (size_t)r * block;
        /* device to device: copy2d moves 4-byte elements bit for bit (f32
         * keys/values, i32 segments) on any backend */
        if (es == 4) {
            be->copy2d((float *)d, 0, (const float *)s, 0, 1, (int64_t)(block / 4), 0);
        } else if (dst->device == LATHE_DEVICE_CPU) {
            int rc = be->copy(d, s, block, 1);
            if (rc != LATHE_OK)
                return rc;
        } else {
            return lathe_error(LATHE_EUNSUPPORTED, "write_rows: %s on a device", lathe_dtype_name(src->dtype));
        }
    }
    return LATHE_OK;
}
