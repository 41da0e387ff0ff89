/* core/tensor/tensor.c — tensor allocation, scopes and small utilities.
 *
 * Tensors and the autograd tape are process-global state driven by one
 * thread (kernels may use many); see tensor.h for ownership. */
#include <lathe/backend.h>
#include <lathe/status.h>
#include <lathe/tensor.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tensor/autograd.h"
#include "tensor/tensor_internal.h"

#define LATHE_SCOPE_MAX 64

struct scope {
    lathe_tensor **items;
    size_t n, cap;
    size_t tape_mark; /* tape length when the scope opened */
};

static struct scope scopes[LATHE_SCOPE_MAX];
static int scope_depth;

static int scope_add(lathe_tensor *t)
{
    struct scope *s = &scopes[scope_depth - 1];
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 256;
        lathe_tensor **items = realloc(s->items, cap * sizeof *items);
        if (!items)
            return lathe_error(LATHE_ENOMEM, "out of memory recording a tensor in its scope");
        s->items = items;
        s->cap = cap;
    }
    s->items[s->n++] = t;
    t->flags |= LATHE_TENSOR_SCOPED;
    return LATHE_OK;
}

static int shape_ok(int ndim, const int64_t *shape, int64_t *numel)
{
    if (ndim < 1 || ndim > LATHE_MAX_DIMS)
        return lathe_error(LATHE_EINVAL, "tensor: %d dims (must be 1..%d)", ndim, LATHE_MAX_DIMS);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return lathe_error(LATHE_EINVAL, "tensor: dim %d is negative (%lld)", i, (long long)shape[i]);
        if (shape[i] && n > INT64_MAX / 8 / shape[i])
            return lathe_error(LATHE_EINVAL, "tensor: shape overflows");
        n *= shape[i];
    }
    *numel = n;
    return LATHE_OK;
}

static void set_contiguous(lathe_tensor *t, int ndim, const int64_t *shape)
{
    t->ndim = ndim;
    int64_t st = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        t->shape[i] = shape[i];
        t->stride[i] = st;
        st *= shape[i];
    }
}

lathe_tensor *lathe_tensor_alloc_raw(enum lathe_dtype dt, int ndim, const int64_t *shape, int scoped, int zero)
{
    int64_t numel;
    if ((unsigned)dt >= LATHE_DTYPE_COUNT) {
        lathe_error(LATHE_EINVAL, "tensor: unknown dtype %d", (int)dt);
        return NULL;
    }
    if (shape_ok(ndim, shape, &numel) != LATHE_OK)
        return NULL;
    const struct lathe_backend_ops *be = lathe_backend();
    lathe_tensor *t = calloc(1, sizeof *t);
    size_t nbytes = (size_t)numel * lathe_dtype_size(dt);
    void *data = t ? be->alloc(nbytes ? nbytes : 1) : NULL;
    if (!data) {
        free(t);
        lathe_error(LATHE_ENOMEM, "out of memory allocating a tensor of %zu bytes", nbytes);
        return NULL;
    }
    if (zero)
        be->zero(data, nbytes);
    t->dtype = dt;
    t->device = (enum lathe_device)be->device;
    t->data = data;
    t->flags = LATHE_TENSOR_OWNS_DATA;
    set_contiguous(t, ndim, shape);
    if (scoped && scope_depth > 0 && scope_add(t) != LATHE_OK) {
        be->free(data);
        free(t);
        return NULL;
    }
    return t;
}

lathe_tensor *lathe_tensor_alloc(enum lathe_dtype dt, int ndim, const int64_t *shape, int scoped)
{
    return lathe_tensor_alloc_raw(dt, ndim, shape, scoped, 1);
}

lathe_tensor *lathe_tensor_new(enum lathe_dtype dt, int ndim, const int64_t *shape)
{
    return lathe_tensor_alloc(dt, ndim, shape, 1);
}

lathe_tensor *lathe_tensor_new_owned(enum lathe_dtype dt, int ndim, const int64_t *shape)
{
    return lathe_tensor_alloc(dt, ndim, shape, 0);
}

lathe_tensor *lathe_tensor_new1(enum lathe_dtype dt, int64_t d0)
{
    return lathe_tensor_new(dt, 1, (int64_t[]){d0});
}
lathe_tensor *lathe_tensor_new2(enum lathe_dtype dt, int64_t d0, int64_t d1)
{
    return lathe_tensor_new(dt, 2, (int64_t[]){d0, d1});
}
lathe_tensor *lathe_tensor_new3(enum lathe_dtype dt, int64_t d0, int64_t d1, int64_t d2)
{
    return lathe_tensor_new(dt, 3, (int64_t[]){d0, d1, d2});
}
lathe_tensor *lathe_tensor_new4(enum lathe_dtype dt, int64_t d0, int64_t d1, int64_t d2, int64_t d3)
{
    return lathe_tensor_new(dt, 4, (int64_t[]){d0, d1, d2, d3});
}

lathe_tensor *lathe_op_result(enum lathe_dtype dt, int ndim, const int64_t *shape)
{
    /* the kernel writes every element: no zeroing pass */
    return lathe_tensor_alloc_raw(dt, ndim, shape, 1, 0);
}

lathe_tensor *lathe_op_view(lathe_tensor *base, int ndim, const int64_t *shape)
{
    int64_t numel;
    if (shape_ok(ndim, shape, &numel) != LATHE_OK)
        return NULL;
    lathe_tensor *t = calloc(1, sizeof *t);
    if (!t) {
        lathe_error(LATHE_ENOMEM, "out of memory making a view");
        return NULL;
    }
    t->dtype = base->dtype;
    t->device = base->device;
    t->data = base->data;
    t->base = base->base ? base->base : base;
    set_contiguous(t, ndim, shape);
    if (scope_depth > 0) {
        if (scope_add(t) != LATHE_OK) {
            free(t);
            return NULL;
        }
    }
    return t;
}

void lathe_tensor_destroy(lathe_tensor *t)
{
    if (!t)
        return;
    if (t->grad)
        lathe_tensor_destroy(t->grad);
    /* a host tensor may outlive a device backend's reign, and the reverse */
    if (t->flags & LATHE_TENSOR_OWNS_DATA) {
        const struct lathe_backend_ops *be = lathe_backend();
        if ((int)t->device != be->device && t->device == LATHE_DEVICE_CPU)
            be = lathe_backend_cpu();
        be->free(t->data);
    }
    free(t);
}

void lathe_tensor_free(lathe_tensor *t)
{
    if (!t || (t->flags & LATHE_TENSOR_SCOPED))
        return;
    lathe_tensor_destroy(t);
}

lathe_tensor *lathe_param_new(const char *name, int ndim, const int64_t *shape)
{
    lathe_tensor *t = lathe_tensor_alloc(LATHE_F32, ndim, shape, 0);
    if (!t)
        return NULL;
    t->requires_grad = 1;
    t->flags |= LATHE_TENSOR_PARAM;
    snprintf(t->name, sizeof t->name, "%s", name ? name : "");
    return t;
}

int64_t lathe_tensor_numel(const lathe_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

size_t lathe_tensor_nbytes(const lathe_tensor *t)
{
    return (size_t)lathe_tensor_numel(t) * lathe_dtype_size(t->dtype);
}

int lathe_tensor_is_contiguous(const lathe_tensor *t)
{
    int64_t st = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != st)
            return 0;
        st *= t->shape[i];
    }
    return 1;
}

int lathe_tensor_same_shape(const lathe_tensor *a, const lathe_tensor *b)
{
    if (a->ndim != b->ndim)
        return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return 0;
    return 1;
}

const char *lathe_tensor_shape_str(const lathe_tensor *t, char *buf, size_t n)
{
    size_t off = 0;
    if (!t) {
        snprintf(buf, n, "(null)");
        return buf;
    }
    off += (size_t)snprintf(buf + off, off < n ? n - off : 0, "[");
    for (int i = 0; i < t->ndim; i++)
        off += (size_t)snprintf(buf + off, off < n ? n - off : 0, "%s%lld", i ? ", " : "",
                                (long long)t->shape[i]);
    snprintf(buf + off, off < n ? n - off : 0, "]");
    return buf;
}

float *lathe_tensor_f32(const lathe_tensor *t)
{
    return t && t->dtype == LATHE_F32 ? (float *)t->data : NULL;
}

int32_t *lathe_tensor_i32(const lathe_tensor *t)
{
    return t && t->dtype == LATHE_I32 ? (int32_t *)t->data : NULL;
}

/* Host-to-host copy with dtype conversion (both buffers on the host). */
static int host_convert(void *dst, enum lathe_dtype ddt, const void *src, enum lathe_dtype sdt, size_t n)
{
    if (sdt == ddt) {
        memcpy(dst, src, n * lathe_dtype_size(sdt));
        return LATHE_OK;
    }
    if (ddt == LATHE_F32) {
        lathe_convert_to_f32(dst, src, sdt, n);
        return LATHE_OK;
    }
    if (sdt == LATHE_F32) {
        lathe_convert_from_f32(dst, ddt, src, n);
        return LATHE_OK;
    }
    float *tmp = malloc(n * sizeof *tmp + 1);
    if (!tmp)
        return lathe_error(LATHE_ENOMEM, "copy: out of memory");
    lathe_convert_to_f32(tmp, src, sdt, n);
    lathe_convert_from_f32(dst, ddt, tmp, n);
    free(tmp);
    return LATHE_OK;
}

static int is_float16(enum lathe_dtype dt) { return dt == LATHE_F32 || dt == LATHE_BF16 || dt == LATHE_F16; }

int lathe_tensor_copy(lathe_tensor *dst, const lathe_tensor *src)
{
    int64_t n = lathe_tensor_numel(src);
    if (n != lathe_tensor_numel(dst)) {
        char a[96], b[96];
        return lathe_error(LATHE_EINVAL, "copy: %s into %s: sizes differ",
                           lathe_tensor_shape_str(src, a, sizeof a), lathe_tensor_shape_str(dst, b, sizeof b));
    }
    int sdev = src->device != LATHE_DEVICE_CPU, ddev = dst->device != LATHE_DEVICE_CPU;
    if (!sdev && !ddev)
        return host_convert(dst->data, dst->dtype, src->data, src->dtype, (size_t)n);
    /* A device buffer is reached only through its backend (the current
     * one): never by the host directly. */
    const struct lathe_backend_ops *be = lathe_backend();
    if (sdev && ddev && (src->dtype == dst->dtype || (is_float16(src->dtype) && is_float16(dst->dtype)))) {
        be->convert(dst->data, (int)dst->dtype, src->data, (int)src->dtype, n);
        return LATHE_OK;
    }
    if (!sdev && src->dtype == dst->dtype)
        return be->copy(dst->data, src->data, lathe_tensor_nbytes(src), 1);
    if (!ddev && src->dtype == dst->dtype)
        return be->copy(dst->data, src->data, lathe_tensor_nbytes(src), 0);
    /* conversion on the host between staging buffers */
    void *hs = sdev ? malloc(lathe_tensor_nbytes(src) + 1) : src->data;
    void *hd = ddev ? malloc(lathe_tensor_nbytes(dst) + 1) : dst->data;
    int rc = hs && hd ? LATHE_OK : lathe_error(LATHE_ENOMEM, "copy: out of memory staging a device tensor");
    if (rc == LATHE_OK && sdev)
        rc = be->copy(hs, src->data, lathe_tensor_nbytes(src), 0);
    if (rc == LATHE_OK)
        rc = host_convert(hd, dst->dtype, hs, src->dtype, (size_t)n);
    if (rc == LATHE_OK && ddev)
        rc = be->copy(dst->data, hd, lathe_tensor_nbytes(dst), 1);
    if (sdev)
        free(hs);
    if (ddev)
        free(hd);
    return rc;
}

int lathe_tensor_set_dtype(lathe_tensor *t, enum lathe_dtype dt)
{
    if (!t)
        return lathe_error(LATHE_EINVAL, "set_dtype: NULL tensor");
    if (t->dtype == dt)
        return LATHE_OK;
    if ((t->flags & LATHE_TENSOR_SCOPED) || t->requires_grad || !(t->flags & LATHE_TENSOR_OWNS_DATA))
        return lathe_error(LATHE_EINVAL, "set_dtype: '%s' must be a caller-owned tensor that needs no gradient",
                           t->name);
    if ((unsigned)dt >= LATHE_DTYPE_COUNT)
        return lathe_error(LATHE_EINVAL, "set_dtype: unknown dtype %d", (int)dt);
    const struct lathe_backend_ops *be = t->device == LATHE_DEVICE_CPU ? lathe_backend_cpu() : lathe_backend();
    lathe_tensor tmp = *t;
    tmp.dtype = dt;
    tmp.data = be->alloc(lathe_tensor_nbytes(&tmp) + 1);
    if (!tmp.data)
        return lathe_error(LATHE_ENOMEM, "set_dtype: out of memory converting '%s'", t->name);
    int rc = lathe_tensor_copy(&tmp, t);
    if (rc != LATHE_OK) {
        be->free(tmp.data);
        return rc;
    }
    be->free(t->data);
    t->data = tmp.data;
    t->dtype = dt;
    if (t->grad) {
        lathe_tensor_destroy(t->grad);
        t->grad = NULL;
    }
    return LATHE_OK;
}

lathe_tensor *lathe_tensor_to_dtype(const lathe_tensor *t, enum lathe_dtype dt)
{
    if (!t)
        return NULL;
    lathe_tensor *out = lathe_tensor_new(dt, t->ndim, t->shape);
    if (!out)
        return NULL;
    if (lathe_tensor_copy(out, t) != LATHE_OK) {
        lathe_tensor_free(out);
        return NULL;
    }
    return out;
}

/* ---- scopes ---- */

int lathe_scope_push(void)
{
    if (scope_depth == LATHE_SCOPE_MAX)
        return lathe_error(LATHE_EINVAL, "scopes nested deeper than %d", LATHE_SCOPE_MAX);
    struct scope *s = &scopes[scope_depth++];
    s->n = 0;
    s->tape_mark = lathe_tape_length();
    return scope_depth;
}

void lathe_scope_pop(void)
{
    if (scope_depth == 0)
        return;
    struct scope *s = &scopes[--scope_depth];
    lathe_tape_truncate(s->tape_mark);
    /* views first never matters: only owners free buffers */
    for (size_t i = s->n; i-- > 0;)
        lathe_tensor_destroy(s->items[i]);
    s->n = 0;
    if (s->cap > 4096) { /* give back an unusually large list */
        free(s->items);
        s->items = NULL;
        s->cap = 0;
    }
}

int lathe_scope_depth(void) { return scope_depth; }

int lathe_scope_keep(lathe_tensor *t)
{
    if (!t || scope_depth == 0 || !(t->flags & LATHE_TENSOR_SCOPED))
        return lathe_error(LATHE_EINVAL, "lathe_scope_keep: not a tensor of the open scope");
    if (t->base || !(t->flags & LATHE_TENSOR_OWNS_DATA))
        return lathe_error(LATHE_EINVAL, "lathe_scope_keep: a view cannot outlive its base");
    struct scope *s = &scopes[scope_depth - 1];
    size_t i = s->n;
    while (i > 0 && s->items[i - 1] != t)
        i--;
    if (i == 0)
        return lathe_error(LATHE_EINVAL, "lathe_scope_keep: '%s' was not made in the innermost scope", t->name);
    memmove(&s->items[i - 1], &s->items[i], (s->n - i) * sizeof *s->items);
    s->n--;
    t->flags &= ~LATHE_TENSOR_SCOPED;
    if (scope_depth == 1)
        return LATHE_OK; /* now the caller's */
    scope_depth--;
    int rc = scope_add(t);
    scope_depth++;
    return rc;
}
