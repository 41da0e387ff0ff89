/* plugins/zero/zero.c — ZeRO data parallelism (strategy "zero").
 *
 * Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion
 * Parameter Models" (SC 2020), as DeepSpeed implements it (facts in
 * shared/reference/algorithms.md §2). N ranks, Ψ trainable elements.
 *
 * Partition (zero.h). Stages 1 and 2, and stage 3 on a model without
 * segments, use the flat layout: the trainable parameters laid end to end,
 * rank r owning [r·P/N, (r+1)·P/N). Stage 3 on a model with segments (model
 * ops `segments`, ABI 1.2) splits every parameter on its own, as DeepSpeed's
 * stage 3 does, so that one layer's all-gather and reduce-scatter are
 * balanced across ranks whatever the layer's place in the model. The
 * optimizer of rank r is made over one view per piece (parameter ∩ owned
 * range); its grad is the piece of the rank's shard gradient buffer. Views of
 * 2-D+ parameters are [1, len] and of 1-D ones [len], so an optimizer that
 * spares ndim < 2 from weight decay treats each piece as its parameter.
 * Views are named "<param>@<offset>" so optimizer state keys stay unique.
 *
 * Collectives move a group of parameters (all of them, one segment's, or
 * those in no segment): rank r's share is the concatenation of what it owns
 * of each, and each call moves one bucket of every rank's share, padded with
 * zeros to the largest share so that the equal-count collective fits shares
 * that differ (by one element per parameter at most in the per-parameter
 * layout, by one in all in the flat one).
 *
 * Stages 1 and 2, per step (the loop's order):
 *  reduce_grads: the gradients are reduce-scattered (AVG), so rank r
 *    receives the global mean of its own range only (Ψ moved: the paper's
 *    gradient cost). Stage 1 keeps the full-size local gradients allocated
 *    (its gradient memory is not partitioned); stage 2 frees them, so
 *    between steps a rank holds only its shard's gradients. The backward
 *    itself still fills full-size gradients: reducing each bucket as soon as
 *    backward completes it needs a grad-ready hook in the core.
 *  grad_sumsq: this rank's shard gradients' sum of squares, summed across
 *    ranks (the global norm for clipping, as DeepSpeed assembles it).
 *  optimizer step on the views (this rank's 1/N of optimizer state).
 *  sync_params: the updated shards are all-gathered (Ψ moved) into every
 *    rank's whole parameters. In all, 2Ψ a step, as plain data parallelism.
 *
 * Stage 3 with segments (the model runs each transformer block through
 * lathe_segment_run, and the core installs acquire/release as its hooks).
 * Trainable parameters listed in exactly one segment are "segment
 * parameters"; the others (embeddings, final norm, head, LoRA adapters, and
 * any parameter two segments share) are persistent: whole all the time, as
 * in stage 2. A segment parameter's whole buffer exists only between
 * acquire and release: outside, its tensor's data pointer is NULL, and
 * nothing may read it (a read is a crash, not stale numbers). What persists
 * is this rank's shard of it (shard_param), which the optimizer updates.
 *  acquire(seg): fresh whole buffers, filled by one all-gather series of the
 *    segment's shards (one call when the layer fits in bucket_size).
 *  release(seg, 0) after the forward: this rank's piece of each whole buffer
 *    is copied back into the shard (so that a writer between acquire and
 *    release, such as a checkpoint load that gathered the model, is kept;
 *    in training it rewrites the same values), then the buffers are freed.
 *  release(seg, 1) after the segment's backward: its gradients are complete
 *    for this micro-batch, so they are reduce-scattered (AVG) right there and
 *    added into the shard gradients, and the full-size gradients are freed
 *    with the buffers: one layer's full gradients live at a time. Several
 *    micro-batches (grad_accum) add their reduced gradients into the shard,
 *    which the loop zeroes after each optimizer step; the mean over ranks of
 *    sums equals the sum of means.
 *  reduce_grads: the persistent parameters' gradients, as stage 2; it checks
 *    that no segment parameter still holds a full gradient or buffer (a
 *    backward that bypassed the hooks) and reports to the metrics
 *    zero/gathers (segment all-gathers since the previous step, including
 *    any evaluation forwards: 2 × layers × grad_accum for a training step),
 *    zero/gather_bytes and zero/param_bytes_peak (measured).
 *  sync_params: all-gathers only the persistent parameters; segment
 *    parameters are gathered at their next acquire.
 * A step moves Ψ_seg in the forward's gathers, Ψ_seg again in the
 * backward's, Ψ_seg in the gradient reduce-scatters, and 2Ψ_persistent: 3Ψ
 * when nearly everything is in segments (the paper's figure), times
 * grad_accum for the per-segment part. A rank holds its 1/N shard, one
 * gathered segment (two only if the core acquires the next before releasing
 * the last) and the persistent parameters: memory() reports that peak.
 *
 * The core's duties (lathe/segment.h): the model's forward runs every
 * segment through lathe_segment_run (gpt2's cached generation does too),
 * and anything else that reads or writes segment parameters brackets that
 * with acquire of every segment on every rank (acquire is collective) and
 * release(seg, 0) after: lathe_run_whole_params (core/train/checkpoint.c)
 * does it around checkpoint save and load and the final model save. A
 * checkpoint load writes the whole buffers; the release copies them into
 * the shards, and state_load refreshes the shards from whatever is whole.
 *
 * Stage 3 without segments (a model that does not expose them, or
 * [parallel] gather = model) is whole-model gathering: parameters are whole from sync_params (and create)
 * through forward, backward and the reduction, then reduce_grads frees every
 * non-shard byte, so only the rank's 1/N shard persists through the
 * optimizer step. Peak parameter memory equals stage 2's, and the step moves
 * 2Ψ. The log says so. It trades memory for traffic: 2Ψ a step instead of
 * 3Ψ, and for a model that does not run its blocks as segments.
 *
 * Device runs: every buffer of this plugin (shards, staging) is the run's
 * backend memory, moved with that backend's copy2d/zero/sumsq (z->be, kept
 * from create, since the core makes the CPU backend current around the
 * optimizer under cpu_offload); no tensor data is read on the host. The
 * communicator gets those buffers (device memory on a device run, as the
 * nccl communicator needs).
 *
 * cpu_offload: keeps the optimizer state and its step in host memory
 * (ZeRO-Offload: Ren et al., "ZeRO-Offload: Democratizing Billion-Scale
 * Model Training", USENIX ATC 2021, as DeepSpeed's offload_optimizer does).
 * On the CPU backend that is where they already are; the run's memory line
 * reports them as host memory. On a device backend the views handed to the
 * optimizer are host tensors over hparam and hgrad, host copies of this
 * rank's shard, and optim_device says LATHE_DEVICE_CPU, so the core creates
 * the optimizer (its moments in host memory) and runs the norm, clipping,
 * step and zeroing of those views with the CPU backend current. Per step:
 * the gradients are reduce-scattered on the device as without offload,
 * then the shard gradients (Ψ/N) are copied to hgrad and the device shard
 * zeroed for the next step's reductions; grad_sumsq sums hgrad on the host;
 * after the host step sync_params copies hparam (Ψ/N) back into the device
 * shard (stage 3) or this rank's pieces of the whole parameters (stages 1
 * and 2, persistent parameters), then all-gathers as without offload. The
 * device keeps its parameters, the Ψ/N shard gradients and no optimizer
 * state; the host holds the state and 2Ψ/N floats of shard copies.
 *
 * Checkpoints: checkpoint.c.
 *
 * [parallel] keys: plugin = zero, stage = 1 | 2 | 3, cpu_offload = false,
 * bucket_size (bytes moved per collective call, 25M), gather = auto |
 * segment | model (stage 3 only: per segment where the model has segments,
 * per segment or an error, or whole-model; whole-model trades memory for
 * 2Ψ instead of 3Ψ moved per step). */
#include "zero.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { GATHER_AUTO, GATHER_SEGMENT, GATHER_MODEL };

static int64_t range_lo(const struct zero *z, int r) { return (int64_t)r * TOTAL(z) / z->world; }

static int64_t clamp0(int64_t v, int64_t max) { return v < 0 ? 0 : v > max ? max : v; }

static int64_t numel_of(const struct zero *z, size_t i) { return z->off[i + 1] - z->off[i]; }

int64_t zero_own_lo(const struct zero *z, size_t i, int r)
{
    int64_t numel = numel_of(z, i);
    if (z->layout == ZERO_PER_PARAM)
        return (int64_t)r * numel / z->world;
    return clamp0(range_lo(z, r) - z->off[i], numel);
}

/* dst (=, or += when acc) src, n floats, both the run's memory. */
static void dev_copy(const struct zero *z, float *dst, const float *src, int64_t n, int acc)
{
    if (n > 0)
        z->be->copy2d(dst, n, src, n, 1, n, acc);
}

/* ---- groups and their collectives ------------------------------------- */

static int group_init(struct zero *z, struct zgroup *g, const size_t *idx, size_t n)
{
    g->idx = malloc((n ? n : 1) * sizeof *g->idx);
    if (!g->idx)
        return lathe_error(LATHE_ENOMEM, "zero: out of memory");
    memcpy(g->idx, idx, n * sizeof *idx);
    g->n = n;
    g->numel = 0;
    for (size_t k = 0; k < n; k++)
        g->numel += numel_of(z, idx[k]);
    g->width = 0;
    for (int r = 0; r < z->world; r++) {
        int64_t share = 0;
        for (size_t k = 0; k < n; k++)
            share += zero_own_len(z, idx[k], r);
        if (share > g->width)
            g->width = share;
    }
    return LATHE_OK;
}

enum { W_DATA, W_GRAD, W_SRC, W_SHARD_GRAD };

/* Copy elements [at, at+len) of rank r's share of group g between buf and
 * (what) the parameters' whole buffers (W_DATA), their gradients (W_GRAD; a
 * missing one reads as zeros), this rank's current values (W_SRC: the shard
 * of a sharded parameter, the whole buffer of another), or this rank's
 * shard gradients (W_SHARD_GRAD, written with +=). to_buf 1: into buf, zero
 * past the share's end (padding); 0: from buf. Writing W_DATA skips this
 * rank's own pieces of unsharded parameters (they are the source). */
static int pack_copy(struct zero *z, const struct zgroup *g, int r, int64_t at, int64_t len, float *buf, int what,
                     int to_buf)
{
    const struct lathe_backend_ops *be = z->be;
    int64_t pos = 0, done = 0; /* share position of the current parameter; elements of buf handled */
    for (size_t k = 0; k < g->n && pos < at + len; k++) {
        size_t i = g->idx[k];
        int64_t olo = zero_own_lo(z, i, r), olen = zero_own_lo(z, i, r + 1) - olo;
        int64_t a = at > pos ? at : pos, e = at + len < pos + olen ? at + len : pos + olen;
        if (a < e) {
            lathe_tensor *p = z->params[i];
            int64_t in = olo + (a - pos); /* element inside the parameter */
            float *b = buf + (a - at), *t = NULL;
            switch (what) {
            case W_DATA: t = p->data ? (float *)p->data + in : NULL; break;
            case W_GRAD: t = p->grad ? (float *)p->grad->data + in : NULL; break;
            case W_SRC:
                t = z->sharded[i] ? z->shard_param + z->psoff[i] + (in - olo) : p->data ? (float *)p->data + in : NULL;
                break;
            case W_SHARD_GRAD: t = z->shard_grad + z->soff[i] + (in - olo); break;
            }
            if (!t && !(to_buf && what == W_GRAD))
                return lathe_error(LATHE_EINVAL, "zero: internal: '%s' has no %s buffer (rank %d)", p->name,
                                   what == W_GRAD ? "gradient" : "whole", z->rank);
            if (to_buf) {
                if (t)
                    dev_copy(z, b, t, e - a, 0);
                else
                    be->zero(b, (size_t)(e - a) * sizeof(float));
            } else if (!(what == W_DATA && r == z->rank && !z->sharded[i])) {
                dev_copy(z, t, b, e - a, what == W_SHARD_GRAD);
            }
            done = e - at;
        }
        pos += olen;
    }
    if (to_buf && done < len)
        be->zero(buf + done, (size_t)(len - done) * sizeof(float));
    return LATHE_OK;
}

/* Every rank's gradients of g, averaged, added into each owner's shard
 * gradients. */
static int reduce_scatter_group(struct zero *z, const struct zgroup *g)
{
    for (int64_t at = 0; at < g->width; at += z->bucket) {
        int64_t len = g->width - at < z->bucket ? g->width - at : z->bucket;
        int rc = LATHE_OK;
        for (int r = 0; rc == LATHE_OK && r < z->world; r++)
            rc = pack_copy(z, g, r, at, len, z->big + (size_t)r * (size_t)len, W_GRAD, 1);
        if (rc == LATHE_OK && (rc = z->co->reduce_scatter(z->cs, z->big, z->small, len, LATHE_F32,
                                                          LATHE_REDUCE_AVG)) != LATHE_OK)
            rc = lathe_error_prefix(rc, "zero: reduce-scatter of the gradients");
        if (rc == LATHE_OK)
            rc = pack_copy(z, g, z->rank, at, len, z->small, W_SHARD_GRAD, 0);
        if (rc != LATHE_OK)
            return rc;
    }
    return LATHE_OK;
}

/* Every rank's current values of g into every rank's whole buffers. */
static int gather_group(struct zero *z, const struct zgroup *g)
{
    for (int64_t at = 0; at < g->width; at += z->bucket) {
        int64_t len = g->width - at < z->bucket ? g->width - at : z->bucket;
        int rc = pack_copy(z, g, z->rank, at, len, z->small, W_SRC, 1);
        if (rc == LATHE_OK && (rc = z->co->all_gather(z->cs, z->small, z->big, len, LATHE_F32)) != LATHE_OK)
            rc = lathe_error_prefix(rc, "zero: all-gather of the parameters");
        for (int r = 0; rc == LATHE_OK && r < z->world; r++)
            rc = pack_copy(z, g, r, at, len, z->big + (size_t)r * (size_t)len, W_DATA, 0);
        if (rc != LATHE_OK)
            return rc;
    }
    return LATHE_OK;
}

/* Whole buffers for g's sharded parameters (contents undefined). */
static int alloc_whole(struct zero *z, const struct zgroup *g)
{
    const struct lathe_backend_ops *be = z->be;
    for (size_t k = 0; k < g->n; k++) {
        lathe_tensor *p = z->params[g->idx[k]];
        if (!z->sharded[g->idx[k]] || p->data)
            continue;
        if (!(p->data = be->alloc(lathe_tensor_nbytes(p)))) {
            for (size_t j = 0; j < k; j++) /* leave none half-made */
                if (z->sharded[g->idx[j]]) {
                    be->free(z->params[g->idx[j]]->data);
                    z->params[g->idx[j]]->data = NULL;
                }
            return lathe_error(LATHE_ENOMEM, "zero stage 3: out of memory gathering '%s' (%zu bytes)", p->name,
                               lathe_tensor_nbytes(p));
        }
        z->live_bytes += lathe_tensor_nbytes(p);
    }
    if (z->live_bytes > z->peak_bytes)
        z->peak_bytes = z->live_bytes;
    return LATHE_OK;
}

static void free_whole(struct zero *z, const struct zgroup *g)
{
    const struct lathe_backend_ops *be = z->be;
    for (size_t k = 0; k < g->n; k++) {
        lathe_tensor *p = z->params[g->idx[k]];
        if (!z->sharded[g->idx[k]] || !p->data)
            continue;
        be->free(p->data);
        p->data = NULL;
        z->live_bytes -= lathe_tensor_nbytes(p);
    }
}

static void free_grads(struct zero *z, const struct zgroup *g)
{
    for (size_t k = 0; k < g->n; k++) {
        lathe_tensor *p = z->params[g->idx[k]];
        lathe_tensor_free(p->grad);
        p->grad = NULL;
    }
}

/* This rank's own piece of sharded parameter i, from its whole buffer if
 * present. */
static void refresh_one(struct zero *z, size_t i)
{
    if (z->sharded[i] && z->params[i]->data)
        dev_copy(z, z->shard_param + z->psoff[i], (float *)z->params[i]->data + zero_own_lo(z, i, z->rank),
                 zero_own_len(z, i, z->rank), 0);
}

/* The device copy of this rank's piece k: in the persistent shard
 * (sharded parameters) or in the whole buffer. */
static float *piece_on_device(const struct zero *z, size_t k)
{
    const struct piece *pc = &z->pieces[k];
    return z->sharded[pc->param] ? z->shard_param + z->psoff[pc->param] : (float *)z->params[pc->param]->data + pc->poff;
}

/* cpu_offload on a device: this rank's shard between the device and the
 * host copy the optimizer updates (to_device 1: after its step). Pieces
 * adjacent on both sides (the persistent stage-3 shard) move in one copy. */
static int host_shard_copy(struct zero *z, int to_device)
{
    for (size_t k = 0; z->host && k < z->nviews;) {
        float *h = z->hparam + z->pieces[k].soff, *d = piece_on_device(z, k);
        int64_t len = z->pieces[k].len;
        size_t j = k + 1;
        for (; j < z->nviews && piece_on_device(z, j) == d + len && z->pieces[j].soff == z->pieces[k].soff + len; j++)
            len += z->pieces[j].len;
        size_t bytes = (size_t)len * sizeof(float);
        int rc = to_device ? z->be->copy(d, h, bytes, 1) : z->be->copy(h, d, bytes, 0);
        if (rc != LATHE_OK)
            return lathe_error_prefix(rc, "zero: cpu_offload: copying the shard of '%s' %s the host",
                                      z->params[z->pieces[k].param]->name, to_device ? "from" : "to");
        k = j;
    }
    return LATHE_OK;
}

int zero_refresh_shard(struct zero *z)
{
    for (size_t i = 0; i < z->n; i++)
        refresh_one(z, i);
    return host_shard_copy(z, 0);
}

/* ---- create / destroy ------------------------------------------------- */

static void group_free(struct zgroup *g) { free(g->idx); }

static void zero_destroy(void *self)
{
    struct zero *z = self;
    if (!z)
        return;
    const struct lathe_backend_ops *be = z->be;
    for (size_t i = 0; i < z->nviews; i++) {
        free(z->views ? z->views[i] : NULL);
        free(z->vgrads ? z->vgrads[i] : NULL);
    }
    free(z->views);
    free(z->vgrads);
    free(z->pieces);
    free(z->off);
    free(z->soff);
    free(z->psoff);
    free(z->sharded);
    be->free(z->big);
    be->free(z->small);
    be->free(z->norm);
    be->free(z->shard_grad);
    be->free(z->shard_param);
    lathe_backend_cpu()->free(z->hparam);
    lathe_backend_cpu()->free(z->hgrad);
    group_free(&z->all);
    group_free(&z->persist);
    for (size_t s = 0; s < z->nsegs; s++)
        group_free(&z->segs[s]);
    free(z->segs);
    free(z);
}

/* A tensor header over someone else's f32 buffer. */
static lathe_tensor *header_over(float *data, const lathe_tensor *like, int64_t len, int device)
{
    lathe_tensor *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->dtype = LATHE_F32;
    t->device = device;
    if (like->ndim >= 2) {
        t->ndim = 2;
        t->shape[0] = 1;
        t->shape[1] = len;
        t->stride[0] = len;
        t->stride[1] = 1;
    } else {
        t->ndim = 1;
        t->shape[0] = len;
        t->stride[0] = 1;
    }
    t->data = data;
    return t;
}

/* One view per piece of an owned parameter (see the file comment). */
static int make_views(struct zero *z)
{
    size_t cap = z->n;
    z->pieces = calloc(cap ? cap : 1, sizeof *z->pieces);
    z->views = calloc(cap ? cap : 1, sizeof *z->views);
    z->vgrads = calloc(cap ? cap : 1, sizeof *z->vgrads);
    if (!z->pieces || !z->views || !z->vgrads)
        return lathe_error(LATHE_ENOMEM, "zero: out of memory");
    for (size_t i = 0; i < z->n; i++) {
        int64_t lo = zero_own_lo(z, i, z->rank), len = zero_own_len(z, i, z->rank);
        if (len <= 0)
            continue;
        lathe_tensor *p = z->params[i];
        struct piece pc = {.param = i, .poff = lo, .len = len, .soff = z->soff[i]};
        float *data = z->sharded[i] ? z->shard_param + z->psoff[i] : (float *)p->data + lo;
        float *grad = z->shard_grad + pc.soff;
        int device = z->device;
        if (z->host) { /* cpu_offload on a device: the host copies */
            data = z->hparam + pc.soff;
            grad = z->hgrad + pc.soff;
            device = LATHE_DEVICE_CPU;
        }
        size_t k = z->nviews;
        lathe_tensor *v = header_over(data, p, len, device);
        lathe_tensor *g = v ? header_over(grad, p, len, device) : NULL;
        if (!v || !g) {
            free(v);
            return lathe_error(LATHE_ENOMEM, "zero: out of memory");
        }
        v->grad = g;
        v->requires_grad = 1;
        z->views[k] = v;
        z->vgrads[k] = g;
        z->pieces[k] = pc;
        z->nviews++;
        int w = snprintf(v->name, sizeof v->name, "%s@%lld", p->name, (long long)lo);
        if (w < 0 || (size_t)w >= sizeof v->name)
            return lathe_error(LATHE_EINVAL, "zero: parameter name '%s' is too long for a shard name (%d bytes at most)",
                               p->name, LATHE_NAME_MAX - 24);
    }
    return LATHE_OK;
}

/* Rank 0's values everywhere, through the staging buffer. */
static int broadcast_params(struct zero *z)
{
    int64_t cap = z->bucket * z->world;
    for (size_t i = 0; i < z->n; i++) {
        float *d = z->params[i]->data;
        for (int64_t at = 0; at < numel_of(z, i); at += cap) {
            int64_t len = numel_of(z, i) - at < cap ? numel_of(z, i) - at : cap;
            dev_copy(z, z->big, d + at, len, 0);
            int rc = z->co->broadcast(z->cs, z->big, len, LATHE_F32, 0);
            if (rc != LATHE_OK)
                return lathe_error_prefix(rc, "zero: broadcasting rank 0's parameters");
            dev_copy(z, d + at, z->big, len, 0);
        }
    }
    return LATHE_OK;
}

static int read_config(struct zero *z, lathe_section *cfg, const struct lathe_env *env, uint64_t *bucket_bytes)
{
    int64_t stage;
    int rc;
    if ((rc = lathe_cfg_require(cfg, "stage")) || (rc = lathe_cfg_int(cfg, "stage", 1, 1, 3, &stage)) ||
        (rc = lathe_cfg_bool(cfg, "cpu_offload", 0, &z->offload)) ||
        (rc = lathe_cfg_bytes(cfg, "bucket_size", "25M", bucket_bytes)))
        return rc;
    z->stage = (int)stage;
    static const char *const gathers[] = {"auto", "segment", "model", NULL};
    if (stage < 3 && lathe_section_has(cfg, "gather"))
        return lathe_cfg_error(cfg, "gather", "gather applies to stage 3 (stage %d keeps parameters whole); remove it",
                               (int)stage);
    if ((rc = lathe_cfg_choice(cfg, "gather", "auto", gathers, &z->gather)))
        return rc;
    if (*bucket_bytes < sizeof(float))
        return lathe_cfg_error(cfg, "bucket_size", "a bucket must hold at least one f32 gradient (4 bytes)");
    z->host = z->offload && env->device != LATHE_DEVICE_CPU;
    return LATHE_OK;
}

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)((const lathe_tensor *const *)a)[0];
    uintptr_t y = (uintptr_t)((const lathe_tensor *const *)b)[0];
    return x < y ? -1 : x > y;
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

/* Stage 3 on a model with segments: which parameters are segment
 * parameters, and one group per segment plus the persistent group. */
static int plan_segments(struct zero *z, const struct lathe_segment *const *segs, size_t nsegs)
{
    int rc = LATHE_OK;
    /* (pointer, index) pairs sorted by pointer, to find each segment
     * parameter among the trainable ones */
    struct pair {
        lathe_tensor *t;
        size_t i;
    } *by = malloc((z->n ? z->n : 1) * sizeof *by);
    size_t *count = calloc(z->n ? z->n : 1, sizeof *count), *idx = malloc((z->n ? z->n : 1) * sizeof *idx);
    z->segs = calloc(nsegs ? nsegs : 1, sizeof *z->segs);
    if (!by || !count || !idx || !z->segs) {
        rc = lathe_error(LATHE_ENOMEM, "zero: out of memory");
        goto out;
    }
    for (size_t i = 0; i < z->n; i++)
        by[i] = (struct pair){z->params[i], i};
    qsort(by, z->n, sizeof *by, cmp_ptr);
    /* pass 0 counts the segments each parameter is in; pass 1 builds the
     * groups of the parameters in exactly one */
    for (int pass = 0; rc == LATHE_OK && pass < 2; pass++)
        for (size_t s = 0; rc == LATHE_OK && s < nsegs; s++) {
            size_t m = 0;
            for (size_t k = 0; k < segs[s]->nparams; k++) {
                lathe_tensor *key = segs[s]->params[k];
                struct pair *hit = bsearch(&key, by, z->n, sizeof *by, cmp_ptr);
                if (hit && (pass == 0 || count[hit->i] == 1))
                    idx[m++] = hit->i;
            }
            qsort(idx, m, sizeof *idx, cmp_size);
            size_t u = 0; /* a parameter listed twice in one segment counts once */
            for (size_t k = 0; k < m; k++)
                if (u == 0 || idx[u - 1] != idx[k])
                    idx[u++] = idx[k];
            if (pass == 0) {
                for (size_t k = 0; k < u; k++)
                    count[idx[k]]++;
            } else {
                rc = group_init(z, &z->segs[s], idx, u);
                z->segs[s].seg = segs[s];
                z->nsegs = s + 1;
            }
        }
    size_t m = 0;
    for (size_t i = 0; rc == LATHE_OK && i < z->n; i++) {
        z->sharded[i] = count[i] == 1;
        if (!z->sharded[i])
            idx[m++] = i;
    }
    if (rc == LATHE_OK)
        rc = group_init(z, &z->persist, idx, m);
out:
    free(by);
    free(count);
    free(idx);
    return rc;
}

static size_t sharded_bytes(const struct zero *z, const struct zgroup *g)
{
    size_t b = 0;
    for (size_t k = 0; k < g->n; k++)
        if (z->sharded[g->idx[k]])
            b += (size_t)numel_of(z, g->idx[k]) * sizeof(float);
    return b;
}

/* Per-segment stage 3: the largest segment's whole bytes. */
static size_t largest_segment(const struct zero *z)
{
    size_t max = 0;
    for (size_t s = 0; s < z->nsegs; s++)
        if (sharded_bytes(z, &z->segs[s]) > max)
            max = sharded_bytes(z, &z->segs[s]);
    return max;
}

static size_t persistent_bytes(const struct zero *z)
{
    size_t b = 0;
    for (size_t i = 0; i < z->n; i++)
        if (!z->sharded[i])
            b += (size_t)numel_of(z, i) * sizeof(float);
    return b;
}

static void explain(const struct zero *z)
{
    if (z->rank != 0)
        return;
    size_t all = (size_t)TOTAL(z) * sizeof(float), shard = (size_t)z->all.width * sizeof(float);
    printf("[parallel] zero stage %d on %d ranks: each rank owns ~%lld of %lld trainable elements in %zu tensors, "
           "%s layout (optimizer state 1/%d%s%s)\n",
           z->stage, z->world, (long long)z->all.width, (long long)TOTAL(z), z->n,
           z->layout == ZERO_PER_PARAM ? "per-parameter" : "flat", z->world,
           z->stage >= 2 ? ", reduced gradients 1/N" : "",
           z->stage == 3 && (!z->per_segment || z->pmine > 0 || TOTAL(z) == 0) ? ", parameters 1/N" : "");
    if (z->stage == 2 || (z->stage == 3 && !z->per_segment))
        printf("[parallel] zero: the backward still fills full-size gradients (%zu bytes; no grad-ready hook in "
               "the core); after the reduce-scatter each rank keeps only its shard (~%zu bytes)\n",
               all, shard);
    size_t nsharded = 0;
    for (size_t i = 0; i < z->n; i++)
        nsharded += z->sharded[i];
    if (z->stage == 3 && z->per_segment && nsharded == 0)
        printf("[parallel] zero stage 3: no trainable parameter is in a model segment (a PEFT run trains "
               "adapters outside them), so nothing is gathered per segment and stage 3 acts as stage 2: "
               "parameters stay whole\n");
    else if (z->stage == 3 && z->per_segment)
        printf("[parallel] zero stage 3 gathers PER SEGMENT: %zu model segments; each segment's parameters "
               "(%zu tensors in all) are all-gathered before its forward and again before its backward, freed "
               "after each, and its gradients reduce-scattered right after its backward (3x the segment "
               "parameters moved per micro-batch); %zu persistent tensors (%zu bytes, in no segment) stay whole. "
               "Parameters per rank at the peak: shard ~%zu + largest segment %zu + persistent %zu bytes "
               "(whole model %zu)\n",
               z->nsegs, nsharded, z->n - nsharded, persistent_bytes(z), (size_t)z->pmine * sizeof(float),
               largest_segment(z), persistent_bytes(z), all);
    else if (z->stage == 3)
        printf("[parallel] zero stage 3 is WHOLE-MODEL gathering, not per-layer (%s): all parameters are "
               "all-gathered after each optimizer step and stay whole (%zu bytes) through forward and backward; "
               "only the ~%zu-byte shard persists while the optimizer steps. Peak parameter memory equals stage 2's; "
               "the step moves 2x the parameters instead of per-segment gathering's 3x\n",
               z->gather == GATHER_MODEL ? "gather = model" : "the model exposes no segments (model ops `segments`)",
               all, shard);
    if (z->host)
        printf("[parallel] zero: cpu_offload: the optimizer state and step are in host memory, with a host copy "
               "of this rank's shard of parameters and gradients (%zu + %zu bytes on rank 0); each step copies "
               "the reduced shard gradients to the host and the updated shard back to the device. The "
               "optimizer-state bytes below are host memory, not device memory\n",
               (size_t)z->mine * sizeof(float), (size_t)z->mine * sizeof(float));
    else if (z->offload)
        printf("[parallel] zero: cpu_offload: optimizer state and step are in host memory (on the CPU backend, "
               "where they already were); the optimizer-state bytes below are host memory\n");
    fflush(stdout);
}

/* Offsets of each parameter's piece in the shard buffers. */
static int shard_offsets(struct zero *z)
{
    z->soff = calloc(z->n + 1, sizeof *z->soff);
    z->psoff = malloc((z->n ? z->n : 1) * sizeof *z->psoff);
    if (!z->soff || !z->psoff)
        return lathe_error(LATHE_ENOMEM, "zero: out of memory");
    z->pmine = 0;
    for (size_t i = 0; i < z->n; i++) {
        int64_t len = zero_own_len(z, i, z->rank);
        z->soff[i + 1] = z->soff[i] + len;
        z->psoff[i] = z->sharded[i] ? z->pmine : -1;
        if (z->sharded[i])
            z->pmine += len;
    }
    z->mine = z->soff[z->n];
    return LATHE_OK;
}

static int zero_create(lathe_section *cfg, const struct lathe_env *env, const struct lathe_comm_ops *comm,
                       void *comm_self, lathe_tensor *const *params, size_t n, void **self)
{
    *self = NULL;
    const struct lathe_backend_ops *be = lathe_backend();
    struct zero *z = calloc(1, sizeof *z);
    if (!z || !(z->off = calloc(n + 1, sizeof *z->off)) || !(z->sharded = calloc(n ? n : 1, 1))) {
        if (z)
            free(z->off);
        free(z);
        return lathe_error(LATHE_ENOMEM, "zero: out of memory");
    }
    z->be = be;
    uint64_t bucket_bytes;
    int rc = read_config(z, cfg, env, &bucket_bytes);
    if (rc != LATHE_OK) {
        zero_destroy(z);
        return rc;
    }
    z->co = comm;
    z->cs = comm_self;
    z->rank = comm->rank(comm_self);
    z->world = comm->world_size(comm_self);
    z->device = env->device;
    z->params = params;
    z->n = n;
    for (size_t i = 0; i < n; i++) {
        if (params[i]->dtype != LATHE_F32 || !lathe_tensor_is_contiguous(params[i])) {
            zero_destroy(z);
            return lathe_error(LATHE_EUNSUPPORTED, "zero: parameter '%s' must be a contiguous F32 tensor (it is %s)",
                               params[i]->name, lathe_dtype_name(params[i]->dtype));
        }
        z->off[i + 1] = z->off[i] + lathe_tensor_numel(params[i]);
    }

    /* stage 3 gathers per segment where the model has segments */
    const struct lathe_segment *const *segs = NULL;
    size_t nsegs = 0;
    if (z->stage == 3 && z->gather != GATHER_MODEL && env->model_ops &&
        LATHE_OPS_HAS(env->model_ops, struct lathe_model_ops, segments) &&
        env->model_ops->segments &&
        (rc = env->model_ops->segments(env->model_self, &segs, &nsegs)) != LATHE_OK) {
        zero_destroy(z);
        return lathe_error_prefix(rc, "zero stage 3: asking the model for its segments");
    }
    if (z->gather == GATHER_SEGMENT && nsegs == 0) {
        zero_destroy(z);
        return lathe_cfg_error(cfg, "gather",
                               "the model runs no blocks as segments (model ops `segments`), so stage 3 cannot "
                               "gather per segment; set gather = model (or auto)");
    }
    z->per_segment = z->stage == 3 && nsegs > 0;
    z->layout = z->per_segment ? ZERO_PER_PARAM : ZERO_FLAT;
    size_t *every = malloc((n ? n : 1) * sizeof *every);
    if (!every)
        rc = lathe_error(LATHE_ENOMEM, "zero: out of memory");
    for (size_t i = 0; rc == LATHE_OK && i < n; i++)
        every[i] = i;
    if (rc == LATHE_OK)
        rc = group_init(z, &z->all, every, n);
    free(every);
    if (rc == LATHE_OK && z->per_segment)
        rc = plan_segments(z, segs, nsegs);
    else if (rc == LATHE_OK && z->stage == 3)
        memset(z->sharded, 1, n); /* whole-model: every parameter */
    for (size_t i = 0; rc == LATHE_OK && i < n; i++)
        if (z->sharded[i] && !(params[i]->flags & LATHE_TENSOR_OWNS_DATA))
            rc = lathe_error(LATHE_EUNSUPPORTED,
                             "zero stage 3: parameter '%s' does not own its buffer (a view or a mapped file), so its "
                             "whole copy cannot be freed between uses; use stage 2",
                             params[i]->name);
    if (rc == LATHE_OK)
        rc = shard_offsets(z);
    if (rc != LATHE_OK) {
        zero_destroy(z);
        return rc;
    }

    int64_t maxw = z->all.width;
    z->bucket = (int64_t)(bucket_bytes / sizeof(float) / (uint64_t)z->world);
    if (z->bucket < 1)
        z->bucket = 1;
    if (z->bucket > maxw)
        z->bucket = maxw > 0 ? maxw : 1;
    z->big = be->alloc((size_t)z->bucket * (size_t)z->world * sizeof(float));
    z->small = be->alloc((size_t)z->bucket * sizeof(float));
    z->norm = be->alloc(2 * sizeof(float));
    z->shard_grad = be->alloc((z->mine ? (size_t)z->mine : 1) * sizeof(float));
    if (z->stage == 3)
        z->shard_param = be->alloc((z->pmine ? (size_t)z->pmine : 1) * sizeof(float));
    if (z->host) {
        const struct lathe_backend_ops *cpu = lathe_backend_cpu();
        z->hparam = cpu->alloc((z->mine ? (size_t)z->mine : 1) * sizeof(float));
        z->hgrad = cpu->alloc((z->mine ? (size_t)z->mine : 1) * sizeof(float));
        if (z->hgrad)
            cpu->zero(z->hgrad, (size_t)z->mine * sizeof(float));
    }
    if (!z->big || !z->small || !z->norm || !z->shard_grad || (z->stage == 3 && !z->shard_param) ||
        (z->host && (!z->hparam || !z->hgrad))) {
        zero_destroy(z);
        return lathe_error(LATHE_ENOMEM, "zero: out of memory for this rank's shard (%lld elements)",
                           (long long)z->mine);
    }
    be->zero(z->shard_grad, (size_t)z->mine * sizeof(float));
    if (z->world > 1)
        rc = broadcast_params(z);
    /* stage 3: the shard is the persistent copy */
    for (size_t i = 0; rc == LATHE_OK && z->stage == 3 && i < z->n; i++)
        refresh_one(z, i);
    z->live_bytes = (size_t)(z->pmine + TOTAL(z)) * sizeof(float);
    /* per segment: the whole buffers exist only between acquire and
     * release; whole-model: they stay for the first forward */
    for (size_t s = 0; rc == LATHE_OK && s < z->nsegs; s++)
        free_whole(z, &z->segs[s]);
    z->peak_bytes = z->live_bytes;
    z->gathered = 1;
    if (rc == LATHE_OK)
        rc = make_views(z);
    /* cpu_offload on a device: the host copy starts as the shard */
    if (rc == LATHE_OK)
        rc = host_shard_copy(z, 0);
    if (rc != LATHE_OK) {
        zero_destroy(z);
        return rc;
    }
    explain(z);
    *self = z;
    return LATHE_OK;
}

/* ---- per-segment hooks ------------------------------------------------ */

static struct zgroup *find_segment(struct zero *z, const struct lathe_segment *seg)
{
    for (size_t k = 0; k < z->nsegs; k++) {
        size_t s = (z->hint + k) % z->nsegs;
        if (z->segs[s].seg == seg) {
            z->hint = s;
            return &z->segs[s];
        }
    }
    return NULL;
}

static int zero_acquire(void *self, const struct lathe_segment *seg)
{
    struct zero *z = self;
    if (!z->per_segment)
        return LATHE_OK;
    struct zgroup *g = find_segment(z, seg);
    if (!g)
        return lathe_error(LATHE_EINVAL,
                           "zero stage 3: segment '%s' is not one the model listed when the strategy was made; a "
                           "model's segments must stay the same for the whole run",
                           seg && seg->name ? seg->name : "?");
    if (g->n == 0 || g->live++ > 0)
        return LATHE_OK;
    int rc = alloc_whole(z, g);
    if (rc == LATHE_OK)
        rc = gather_group(z, g);
    if (rc != LATHE_OK) {
        free_whole(z, g);
        g->live = 0;
        return lathe_error_prefix(rc, "zero stage 3: gathering segment '%s'", seg->name ? seg->name : "?");
    }
    z->gathers++;
    z->gather_elems += g->numel;
    return LATHE_OK;
}

static int zero_release(void *self, const struct lathe_segment *seg, int backward)
{
    struct zero *z = self;
    if (!z->per_segment)
        return LATHE_OK;
    struct zgroup *g = find_segment(z, seg);
    const char *name = seg && seg->name ? seg->name : "?";
    if (!g)
        return lathe_error(LATHE_EINVAL, "zero stage 3: released segment '%s' is not one of the model's", name);
    if (g->n == 0)
        return LATHE_OK;
    if (g->live == 0)
        return lathe_error(LATHE_EINVAL, "zero stage 3: segment '%s' released without a matching acquire", name);
    if (--g->live > 0)
        return LATHE_OK;
    int rc = LATHE_OK;
    if (backward) {
        rc = reduce_scatter_group(z, g);
        free_grads(z, g);
    } else {
        for (size_t k = 0; k < g->n; k++)
            refresh_one(z, g->idx[k]);
    }
    free_whole(z, g);
    return rc == LATHE_OK ? rc : lathe_error_prefix(rc, "zero stage 3: releasing segment '%s'", name);
}

/* ---- the step --------------------------------------------------------- */

/* cpu_offload on a device: the reduced shard gradients go to the host copy
 * the optimizer reads; the device buffer, which the reduce-scatters add
 * into, starts the next step at zero (the loop zeroes only the host one). */
static int host_grads(struct zero *z)
{
    if (!z->host || z->mine == 0)
        return LATHE_OK;
    size_t bytes = (size_t)z->mine * sizeof(float);
    int rc = z->be->copy(z->hgrad, z->shard_grad, bytes, 0);
    if (rc != LATHE_OK)
        return lathe_error_prefix(rc, "zero: cpu_offload: copying the shard gradients to the host");
    z->be->zero(z->shard_grad, bytes);
    return LATHE_OK;
}

static int zero_reduce_grads(void *self)
{
    struct zero *z = self;
    if (z->per_segment) {
        for (size_t s = 0; s < z->nsegs; s++)
            if (z->segs[s].live)
                return lathe_error(LATHE_EINVAL,
                                   "zero stage 3: segment '%s' is still gathered at the end of the backward (an "
                                   "acquire without its release)",
                                   z->segs[s].seg->name ? z->segs[s].seg->name : "?");
        for (size_t i = 0; i < z->n; i++)
            if (z->sharded[i] && z->params[i]->grad)
                return lathe_error(LATHE_EINVAL,
                                   "zero stage 3: '%s' has a gradient its segment's release did not reduce: the "
                                   "backward ran outside the segment hooks (lathe/segment.h)",
                                   z->params[i]->name);
        int rc = reduce_scatter_group(z, &z->persist);
        if (rc != LATHE_OK)
            return rc;
        free_grads(z, &z->persist);
        lathe_report_scalar("zero/gathers", (double)z->gathers);
        lathe_report_scalar("zero/gather_bytes", (double)z->gather_elems * sizeof(float));
        lathe_report_scalar("zero/param_bytes_peak", (double)z->peak_bytes);
        z->gathers = z->gather_elems = 0;
        z->peak_bytes = z->live_bytes;
        return host_grads(z);
    }
    int rc = reduce_scatter_group(z, &z->all);
    if (rc != LATHE_OK)
        return rc;
    if (z->stage >= 2)
        free_grads(z, &z->all);
    if (z->stage == 3) {
        free_whole(z, &z->all);
        z->gathered = 0;
    }
    return host_grads(z);
}

static int zero_grad_sumsq(void *self, double *out)
{
    struct zero *z = self;
    double s = 0.0;
    /* where the reduced shard gradients are now (host under offload) */
    if (z->mine > 0 && z->host)
        lathe_backend_cpu()->sumsq(&s, z->hgrad, z->mine);
    else if (z->mine > 0)
        z->be->sumsq(&s, z->shard_grad, z->mine);
    /* the comm reduces f32: send the double as a high and a low part */
    float hl[2];
    hl[0] = (float)s;
    hl[1] = (float)(s - (double)hl[0]);
    /* through backend memory, as every buffer given to the comm */
    float *dev = z->norm;
    int rc = z->be->copy(dev, hl, sizeof hl, 1);
    if (rc == LATHE_OK)
        rc = z->co->all_reduce(z->cs, dev, 2, LATHE_F32, LATHE_REDUCE_SUM);
    if (rc == LATHE_OK)
        rc = z->be->copy(hl, dev, sizeof hl, 0);
    if (rc != LATHE_OK)
        return lathe_error_prefix(rc, "zero: all-reduce of the gradient norm");
    *out = (double)hl[0] + (double)hl[1];
    return LATHE_OK;
}

static int zero_sync_params(void *self)
{
    struct zero *z = self;
    /* cpu_offload on a device: the step updated the host copy; the device
     * shard (or this rank's piece of a whole buffer) is what is gathered */
    int hrc = host_shard_copy(z, 1);
    if (hrc != LATHE_OK)
        return hrc;
    if (z->per_segment) /* segment parameters are gathered at their next acquire */
        return z->world == 1 ? LATHE_OK : gather_group(z, &z->persist);
    if (z->stage != 3 && z->world == 1)
        return LATHE_OK; /* the step wrote the only copy */
    if (z->stage == 3 && !z->gathered) {
        int rc = alloc_whole(z, &z->all);
        if (rc != LATHE_OK)
            return rc;
    }
    int rc = gather_group(z, &z->all);
    if (rc == LATHE_OK)
        z->gathered = 1;
    return rc;
}

static int zero_optim_device(void *self)
{
    const struct zero *z = self;
    return z->host ? LATHE_DEVICE_CPU : z->device;
}

static int zero_optim_params(void *self, lathe_tensor *const **params, size_t *n)
{
    struct zero *z = self;
    *params = z->views;
    *n = z->nviews;
    return LATHE_OK;
}

/* Parameter bytes: stages 1-2 the whole model; whole-model stage 3 the
 * shard it keeps between steps; per-segment stage 3 its peak (shard +
 * largest segment + persistent). Gradient bytes: stage 1 the full-size
 * gradients and the shard; stage 2 and whole-model stage 3 the shard kept
 * between steps; per-segment stage 3 its peak (shard + one segment's
 * full-size gradients + the persistent ones). The optimizer reports its own
 * state (made over the views, so it is this rank's 1/N). Under cpu_offload
 * on a device these figures are the device's; the optimizer state and the
 * host copies of the shard (explain's line) are host memory. */
static int zero_memory(void *self, size_t *param_bytes, size_t *grad_bytes, size_t *optim_bytes)
{
    struct zero *z = self;
    size_t all = (size_t)TOTAL(z) * sizeof(float), shard = (size_t)z->mine * sizeof(float);
    if (z->per_segment) {
        size_t extra = largest_segment(z) + persistent_bytes(z);
        *param_bytes = (size_t)z->pmine * sizeof(float) + extra;
        *grad_bytes = shard + extra;
    } else {
        *param_bytes = z->stage == 3 ? shard : all;
        *grad_bytes = z->stage == 1 ? all + shard : shard;
    }
    *optim_bytes = 0;
    return LATHE_OK;
}

static const struct lathe_strategy_ops zero_ops = {
    .size = sizeof(struct lathe_strategy_ops),
    .create = zero_create,
    .destroy = zero_destroy,
    .reduce_grads = zero_reduce_grads,
    .sync_params = zero_sync_params,
    .optim_params = zero_optim_params,
    .grad_sumsq = zero_grad_sumsq,
    .state_save = zero_state_save,
    .state_load = zero_state_load,
    .memory = zero_memory,
    .acquire = zero_acquire,
    .release = zero_release,
    .optim_device = zero_optim_device,
};

static const struct lathe_component zero_components[] = {
    {.kind = LATHE_KIND_STRATEGY, .name = "zero", .ops = &zero_ops},
    {0},
};

LATHE_PLUGIN_DEFINE(zero, .version = "0.2.0",
                    .description = "ZeRO stages 1-3 (optimizer state, gradients, parameters sharded across ranks; "
                                   "stage 3 gathers each model segment when used)",
                    .components = zero_components)
