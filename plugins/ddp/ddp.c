/* plugins/ddp/ddp.c — data parallelism (strategy "ddp").
 *
 * Every rank holds the whole model and optimizer; each computes gradients
 * on its rows of the global batch, and reduce_grads averages them across
 * ranks, so every rank takes the same optimizer step as one process on the
 * whole batch would (the loop makes each rank's loss the mean over its
 * rows). As PyTorch DDP does, gradients travel in buckets: the flat
 * concatenation of all gradients is cut into pieces of bucket_size bytes,
 * each packed into one buffer and all-reduced (AVG) in one call, then copied
 * back (the bucket lives in the backend's memory, so on a GPU nothing
 * leaves the device unless the communicator needs it to). A parameter may
 * straddle two buckets. Unlike PyTorch, reduction
 * starts after the whole backward (the core has no grad-ready hook yet), so
 * communication does not overlap computation.
 *
 * At create, rank 0's parameters are broadcast so that every rank starts
 * from the same weights whatever its initialiser did.
 *
 * [parallel] keys: plugin = ddp, bucket_size (bytes: 25M by default, as
 * PyTorch's bucket_cap_mb = 25). */
#include <lathe/lathe.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ddp {
    const struct lathe_comm_ops *co;
    void *cs;
    int rank, world;
    lathe_tensor *const *params; /* borrowed from the core */
    size_t n;
    int64_t *off;                /* [n+1] flat offset of each parameter */
    float *bucket;               /* `bucket_elems` in the backend's memory */
    int64_t bucket_elems;
};

/* Copy flat elements [from, from+count) of the parameters' gradients (grad
 * = 1) or values (grad = 0) into buf (to_buf = 1) or back (to_buf = 0). A
 * missing gradient reads as zeros and is made before it is written. */
static int flat_copy(struct ddp *d, int grad, int64_t from, int64_t count, float *buf, int to_buf)
{
    const struct lathe_backend_ops *be = lathe_backend();
    size_t i = 0;
    while (i < d->n && d->off[i + 1] <= from)
        i++;
    for (int64_t done = 0; done < count && i < d->n; i++) {
        lathe_tensor *p = d->params[i];
        int64_t at = from + done - d->off[i];
        int64_t len = d->off[i + 1] - d->off[i] - at;
        if (len > count - done)
            len = count - done;
        lathe_tensor *t = p;
        if (grad) {
            if (!p->grad && to_buf) {
                be->zero(buf + done, (size_t)len * sizeof(float));
                done += len;
                continue;
            }
            if (!(t = lathe_tensor_grad(p)))
                return lathe_error(LATHE_ENOMEM, "ddp: out of memory for the gradient of '%s'", p->name);
        }
        /* both sides live in the backend's memory: a device-side copy */
        float *dev = (float *)t->data + at;
        if (to_buf)
            be->copy2d(buf + done, len, dev, len, 1, len, 0);
        else
            be->copy2d(dev, len, buf + done, len, 1, len, 0);
        done += len;
    }
    return LATHE_OK;
}

static void ddp_destroy(void *self)
{
    struct ddp *d = self;
    if (!d)
        return;
    free(d->off);
    if (d->bucket)
        lathe_backend()->free(d->bucket);
    free(d);
}

/* Rank 0's values everywhere, through the bucket. */
static int broadcast_params(struct ddp *d)
{
    int64_t total = d->off[d->n];
    for (int64_t at = 0; at < total; at += d->bucket_elems) {
        int64_t len = total - at < d->bucket_elems ? total - at : d->bucket_elems;
        int rc = flat_copy(d, 0, at, len, d->bucket, 1);
        if (rc == LATHE_OK)
            rc = d->co->broadcast(d->cs, d->bucket, len, LATHE_F32, 0);
        if (rc == LATHE_OK)
            rc = flat_copy(d, 0, at, len, d->bucket, 0);
        if (rc != LATHE_OK)
            return lathe_error_prefix(rc, "ddp: broadcasting rank 0's parameters");
    }
    return LATHE_OK;
}

static int ddp_create(lathe_section *cfg, const struct lathe_env *env, const struct lathe_comm_ops *comm,
                      void *comm_self, lathe_tensor *const *params, size_t n, void **self)
{
    (void)env;
    *self = NULL;
    uint64_t bucket_bytes;
    int rc = lathe_cfg_bytes(cfg, "bucket_size", "25M", &bucket_bytes);
    if (rc != LATHE_OK)
        return rc;
    if (bucket_bytes < sizeof(float))
        return lathe_cfg_error(cfg, "bucket_size", "a bucket must hold at least one f32 gradient (4 bytes)");
    struct ddp *d = calloc(1, sizeof *d);
    if (!d || !(d->off = calloc(n + 1, sizeof *d->off))) {
        free(d);
        return lathe_error(LATHE_ENOMEM, "ddp: out of memory");
    }
    d->co = comm;
    d->cs = comm_self;
    d->rank = comm->rank(comm_self);
    d->world = comm->world_size(comm_self);
    d->params = params;
    d->n = n;
    for (size_t i = 0; i < n; i++) {
        if (params[i]->dtype != LATHE_F32) {
            ddp_destroy(d);
            return lathe_error(LATHE_EUNSUPPORTED, "ddp: parameter '%s' is %s; trainable parameters must be F32",
                               params[i]->name, lathe_dtype_name(params[i]->dtype));
        }
        d->off[i + 1] = d->off[i] + lathe_tensor_numel(params[i]);
    }
    d->bucket_elems = (int64_t)(bucket_bytes / sizeof(float));
    if (d->bucket_elems > d->off[n])
        d->bucket_elems = d->off[n] > 0 ? d->off[n] : 1; /* no bigger than the model */
    /* in the run's memory (a device's under CUDA): communicators take
     * buffers there (NCCL reads device memory; the mpi plugin stages) */
    if (!(d->bucket = lathe_backend()->alloc((size_t)d->bucket_elems * sizeof(float)))) {
        long long want = (long long)d->bucket_elems;
        ddp_destroy(d);
        return lathe_error(LATHE_ENOMEM, "ddp: out of memory for a bucket of %lld gradients", want);
    }
    if (d->world > 1 && (rc = broadcast_params(d)) != LATHE_OK) {
        ddp_destroy(d);
        return rc;
    }
    *self = d;
    return LATHE_OK;
}

static int ddp_reduce_grads(void *self)
{
    struct ddp *d = self;
    if (d->world == 1)
        return LATHE_OK;
    int64_t total = d->off[d->n];
    for (int64_t at = 0; at < total; at += d->bucket_elems) {
        int64_t len = total - at < d->bucket_elems ? total - at : d->bucket_elems;
        int rc = flat_copy(d, 1, at, len, d->bucket, 1);
        if (rc == LATHE_OK)
            rc = d->co->all_reduce(d->cs, d->bucket, len, LATHE_F32, LATHE_REDUCE_AVG);
        if (rc == LATHE_OK)
            rc = flat_copy(d, 1, at, len, d->bucket, 0);
        if (rc != LATHE_OK)
            return rc;
    }
    return LATHE_OK;
}

/* Every rank took the same step on the same gradients: nothing to do. */
static int ddp_sync_params(void *self)
{
    (void)self;
    return LATHE_OK;
}

static int ddp_optim_params(void *self, lathe_tensor *const **params, size_t *n)
{
    struct ddp *d = self;
    *params = d->params;
    *n = d->n;
    return LATHE_OK;
}

/* Parameters and gradients whole on every rank, plus the bucket; the
 * optimizer's state (whole too) is its own to report. */
static int ddp_memory(void *self, size_t *param_bytes, size_t *grad_bytes, size_t *optim_bytes)
{
    struct ddp *d = self;
    size_t all = (size_t)d->off[d->n] * sizeof(float);
    *param_bytes = all;
    *grad_bytes = all + (size_t)d->bucket_elems * sizeof(float);
    *optim_bytes = 0;
    return LATHE_OK;
}

static const struct lathe_strategy_ops ddp_ops = {
    .size = sizeof(struct lathe_strategy_ops),
    .create = ddp_create,
    .destroy = ddp_destroy,
    .reduce_grads = ddp_reduce_grads,
    .sync_params = ddp_sync_params,
    .optim_params = ddp_optim_params,
    .memory = ddp_memory,
};

static const struct lathe_component ddp_components[] = {
    {.kind = LATHE_KIND_STRATEGY, .name = "ddp", .ops = &ddp_ops},
    {0},
};

LATHE_PLUGIN_DEFINE(ddp, .version = "0.1.0",
                    .description = "Data parallelism: gradients all-reduced (AVG) in buckets",
                    .components = ddp_components)
