/* plugins/mpi/mpi.c — the communicator over MPI (component "mpi").
 *
 * Runs are launched as `mpirun -np N lathe train RUN.ini` (or srun, or a
 * hostfile): this plugin only asks MPI who it is. A process started without
 * a launcher is an MPI singleton of world size 1, so a [parallel] run needs
 * no mpirun on one process.
 *
 * Every collective maps to one MPI call on a private duplicate of
 * MPI_COMM_WORLD (so nothing else in the process can match our messages):
 * all_reduce → MPI_Allreduce(MPI_IN_PLACE), reduce_scatter →
 * MPI_Reduce_scatter_block, all_gather → MPI_Allgather, broadcast →
 * MPI_Bcast, all_to_all → MPI_Alltoallv, barrier → MPI_Barrier.
 *
 * Reductions: F32 with MPI_SUM; AVG is the sum scaled by 1/N afterwards (MPI
 * has no average). BF16 has no MPI type: its elements travel as
 * MPI_UINT16_T and are summed by a user-defined, commutative MPI_Op that
 * widens each pair to f32, adds, and rounds back to bf16 (round to nearest
 * even), as NCCL's bf16 sum does; so a bf16 sum of N ranks rounds N-1 times.
 *
 * Memory: buffers are in the run's memory (a device's under CUDA); MPI
 * gets host copies there (host_of / host_done), the buffers themselves on
 * the CPU.
 *
 * Counts: MPI-3 counts are int; a buffer with more elements than INT_MAX
 * is an error (split it) rather than a silent truncation.
 *
 * Sub-groups (ABI 1.2 `split`): MPI_Comm_split of this communicator. Ranks
 * passing the same color >= 0 form a sub-communicator ordered by key, then
 * by rank in self (MPI's rule, the header's too); it is a full instance of
 * these same ops, with its own reduction op and statistics, and is freed
 * with destroy. color = -1 (MPI_UNDEFINED's role; NCCL_SPLIT_NOCOLOR's
 * value) means "in no group": *sub = NULL and LATHE_OK. Any other negative
 * color, or sub == NULL, is refused with LATHE_EINVAL, but only after the
 * refusing rank has still taken part in MPI_Comm_split as a rank in no
 * group: split is collective, and a rank that returned early would leave
 * the others waiting in it. Subs of subs work the same way.
 *
 * Lifetime: MPI is finalised (only when this plugin initialised it) by the
 * destroy of the last live instance, root or sub, whatever the order, so a
 * parent destroyed before its subs leaves them working until their own
 * destroy. Destroying a sub never finalises MPI while another instance
 * lives.
 *
 * [comm] keys: stats = true|false (default false): at the end of the run
 * every rank prints how many calls and bytes each collective moved, in the
 * ZeRO paper's accounting (all-reduce of n elements = 2n, reduce-scatter and
 * all-gather of a whole buffer of n = n, broadcast n, all-to-all its send
 * total), for bench/comm.sh. The environment variable LATHE_COMM_STATS=1
 * turns it on too. A sub-communicator inherits the setting and prints its
 * own line, "comm-stats sub color C rank r/w:", so that the root's line
 * ("comm-stats rank r/w:") counts the root's traffic alone. */
#include <lathe/lathe.h>

#include <dlfcn.h>
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { C_ALLREDUCE, C_REDUCE_SCATTER, C_ALLGATHER, C_BCAST, C_ALLTOALL, C_BARRIER, C_COUNT };
static const char *const coll_names[C_COUNT] = {"all_reduce", "reduce_scatter", "all_gather",
                                                "broadcast", "all_to_all", "barrier"};

struct mpi_comm {
    MPI_Comm comm;
    int rank, world;
    int is_sub, color; /* made by split, with this color */
    MPI_Op bf16_sum;
    int stats;
    unsigned long long calls[C_COUNT], bytes[C_COUNT];
};

/* Process-wide, because MPI is: whether this plugin called MPI_Init_thread
 * (then MPI_Finalize is ours to call), and how many instances, roots and
 * subs, are alive. Only the main thread calls a communicator (FUNNELED). */
static int mpi_ours;
static int mpi_live;

/* One instance fewer; the last one out finalises MPI if we started it. */
static void mpi_let_go(void)
{
    if (mpi_live > 0)
        mpi_live--;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (mpi_live == 0 && mpi_ours && !finalized)
        MPI_Finalize();
}

/* bf16 sum, widened to f32 per pair (see the file comment). */
static void bf16_sum_fn(void *in, void *inout, int *len, MPI_Datatype *dt)
{
    (void)dt;
    const uint16_t *a = in;
    uint16_t *b = inout;
    for (int i = 0; i < *len; i++)
        b[i] = lathe_f32_to_bf16(lathe_bf16_to_f32(a[i]) + lathe_bf16_to_f32(b[i]));
}

static int mpi_fail(int code, const char *what)
{
    char msg[MPI_MAX_ERROR_STRING];
    int n = 0;
    if (MPI_Error_string(code, msg, &n) != MPI_SUCCESS)
        snprintf(msg, sizeof msg, "MPI error %d", code);
    return lathe_error(LATHE_ERR, "mpi: %s failed: %s", what, msg);
}

/* The MPI type that moves elements of dtype dt (reductions check further). */
static int mpi_type(int dt, MPI_Datatype *out, size_t *esize)
{
    switch (dt) {
    case LATHE_F32: *out = MPI_FLOAT; *esize = 4; return LATHE_OK;
    case LATHE_BF16:
    case LATHE_F16: *out = MPI_UINT16_T; *esize = 2; return LATHE_OK;
    case LATHE_I32: *out = MPI_INT32_T; *esize = 4; return LATHE_OK;
    case LATHE_I64: *out = MPI_INT64_T; *esize = 8; return LATHE_OK;
    case LATHE_U8:
    case LATHE_I8: *out = MPI_BYTE; *esize = 1; return LATHE_OK;
    default: return lathe_error(LATHE_EINVAL, "mpi: unknown dtype %d", dt);
    }
}

static int fits_int(int64_t count, const char *what)
{
    if (count < 0 || count > INT_MAX)
        return lathe_error(LATHE_EINVAL,
                           "mpi: %s of %lld elements: MPI counts are int (at most %d); split the buffer",
                           what, (long long)count, INT_MAX);
    return LATHE_OK;
}

/* The MPI op for a reduction; F32 and BF16 only. */
static int reduce_op(struct mpi_comm *c, int dt, int op, const char *what, MPI_Op *out)
{
    if (op != LATHE_REDUCE_SUM && op != LATHE_REDUCE_AVG)
        return lathe_error(LATHE_EINVAL, "mpi: %s: unknown reduction %d (SUM or AVG)", what, op);
    if (dt == LATHE_F32)
        *out = MPI_SUM;
    else if (dt == LATHE_BF16)
        *out = c->bf16_sum;
    else
        return lathe_error(LATHE_EUNSUPPORTED, "mpi: %s: reductions are implemented for F32 and BF16, not %s",
                           what, lathe_dtype_name((enum lathe_dtype)dt));
    return LATHE_OK;
}

/* AVG = SUM / N, applied to the elements this rank received. */
static void scale_avg(struct mpi_comm *c, void *buf, int64_t count, int dt)
{
    if (c->world == 1)
        return;
    float inv = 1.0f / (float)c->world;
    if (dt == LATHE_F32) {
        float *f = buf;
        for (int64_t i = 0; i < count; i++)
            f[i] *= inv;
    } else {
        uint16_t *h = buf;
        for (int64_t i = 0; i < count; i++)
            h[i] = lathe_f32_to_bf16(lathe_bf16_to_f32(h[i]) * inv);
    }
}

static void count(struct mpi_comm *c, int which, unsigned long long bytes)
{
    c->calls[which]++;
    c->bytes[which] += bytes;
}

static int mpi_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    (void)env;
    *self = NULL;
    struct mpi_comm *c = calloc(1, sizeof *c);
    if (!c)
        return lathe_error(LATHE_ENOMEM, "mpi: out of memory");
    c->comm = MPI_COMM_NULL;
    c->bf16_sum = MPI_OP_NULL;
    int rc = lathe_cfg_bool(cfg, "stats", 0, &c->stats);
    if (rc != LATHE_OK) {
        free(c);
        return rc;
    }
    const char *e = getenv("LATHE_COMM_STATS");
    if (e && e[0] && strcmp(e, "0") != 0)
        c->stats = 1;

    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (finalized) {
        free(c);
        return lathe_error(LATHE_EUNSUPPORTED,
                           "mpi: MPI was finalised by an earlier run in this process, and MPI can be initialised "
                           "only once per process; start a new process");
    }
    if (!inited) {
        /* lathe loads plugins RTLD_LOCAL; Open MPI's own components (dlopened
         * by libmpi) resolve libmpi's symbols globally, so promote it. */
        dlopen("libmpi.so.40", RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
        int provided = 0;
        /* FUNNELED: OpenMP threads compute, only the main thread talks. */
        int err = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
        if (err != MPI_SUCCESS) {
            free(c);
            return lathe_error(LATHE_ERR, "mpi: MPI_Init_thread failed (code %d); is the run launched with mpirun?",
                               err);
        }
        mpi_ours = 1;
    }
    int err = MPI_Comm_dup(MPI_COMM_WORLD, &c->comm);
    if (err == MPI_SUCCESS)
        err = MPI_Comm_set_errhandler(c->comm, MPI_ERRORS_RETURN);
    if (err == MPI_SUCCESS)
        err = MPI_Comm_rank(c->comm, &c->rank);
    if (err == MPI_SUCCESS)
        err = MPI_Comm_size(c->comm, &c->world);
    if (err == MPI_SUCCESS)
        err = MPI_Op_create(bf16_sum_fn, 1, &c->bf16_sum);
    if (err != MPI_SUCCESS) {
        rc = mpi_fail(err, "setting up the communicator");
        if (c->comm != MPI_COMM_NULL)
            MPI_Comm_free(&c->comm);
        mpi_live++;
        mpi_let_go(); /* finalises MPI if we started it and nobody else holds it */
        free(c);
        return rc;
    }
    mpi_live++;
    *self = c;
    return LATHE_OK;
}

static void mpi_destroy(void *self)
{
    struct mpi_comm *c = self;
    if (!c)
        return;
    if (c->stats) {
        if (c->is_sub)
            printf("comm-stats sub color %d rank %d/%d:", c->color, c->rank, c->world);
        else
            printf("comm-stats rank %d/%d:", c->rank, c->world);
        for (int i = 0; i < C_COUNT; i++)
            printf(" %s %llu calls %llu bytes;", coll_names[i], c->calls[i], c->bytes[i]);
        printf("\n");
        fflush(stdout);
    }
    /* after someone else finalised MPI, nothing of it may be called */
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) {
        if (c->bf16_sum != MPI_OP_NULL)
            MPI_Op_free(&c->bf16_sum);
        if (c->comm != MPI_COMM_NULL)
            MPI_Comm_free(&c->comm);
    }
    free(c);
    mpi_let_go();
}

/* Buffers are in the run's memory (parallel.h). MPI reads host memory, so
 * under a device backend each collective stages through host copies (a
 * CUDA-aware MPI could skip that; nothing here relies on one). On the CPU
 * the caller's buffers are used as they are. */
static int staged(void) { return lathe_backend()->device != LATHE_DEVICE_CPU; }

/* A host copy of `bytes` at dev (copied in when `in`), or dev itself on
 * the CPU; NULL with a message on failure. */
static void *host_of(const void *dev, size_t bytes, int in)
{
    if (!staged())
        return (void *)dev;
    void *h = malloc(bytes ? bytes : 1);
    if (!h) {
        lathe_error(LATHE_ENOMEM, "mpi: out of memory staging %zu bytes from the device", bytes);
        return NULL;
    }
    if (in && bytes && lathe_backend()->copy(h, dev, bytes, 0) != LATHE_OK) {
        free(h);
        lathe_error(LATHE_ERR, "mpi: copying %zu bytes from the device", bytes);
        return NULL;
    }
    return h;
}

/* Release a host_of buffer, first copying it back to dev when `out`. */
static int host_done(void *dev, void *h, size_t bytes, int out, int rc)
{
    if (!h || h == dev)
        return rc;
    if (rc == LATHE_OK && out && bytes && lathe_backend()->copy(dev, h, bytes, 1) != LATHE_OK)
        rc = lathe_error(LATHE_ERR, "mpi: copying %zu bytes to the device", bytes);
    free(h);
    return rc;
}

static int mpi_rank(void *self) { return ((struct mpi_comm *)self)->rank; }
static int mpi_world_size(void *self) { return ((struct mpi_comm *)self)->world; }

static int mpi_all_reduce(void *self, void *buf, int64_t n, int dt, int op)
{
    struct mpi_comm *c = self;
    MPI_Datatype t = MPI_BYTE;
    MPI_Op mop;
    size_t es = 1;
    int rc;
    if ((rc = mpi_type(dt, &t, &es)) || (rc = reduce_op(c, dt, op, "all_reduce", &mop)) ||
        (rc = fits_int(n, "all_reduce")))
        return rc;
    size_t bytes = (size_t)n * es;
    void *h = host_of(buf, bytes, 1);
    if (!h)
        return LATHE_ENOMEM;
    int err = MPI_Allreduce(MPI_IN_PLACE, h, (int)n, t, mop, c->comm);
    if (err != MPI_SUCCESS)
        return host_done(buf, h, bytes, 0, mpi_fail(err, "MPI_Allreduce"));
    if (op == LATHE_REDUCE_AVG)
        scale_avg(c, h, n, dt);
    count(c, C_ALLREDUCE, 2ull * (unsigned long long)n * es);
    return host_done(buf, h, bytes, 1, LATHE_OK);
}

static int mpi_reduce_scatter(void *self, const void *send, void *recv, int64_t n, int dt, int op)
{
    struct mpi_comm *c = self;
    MPI_Datatype t = MPI_BYTE;
    MPI_Op mop;
    size_t es = 1;
    int rc;
    if ((rc = mpi_type(dt, &t, &es)) || (rc = reduce_op(c, dt, op, "reduce_scatter", &mop)) ||
        (rc = fits_int(n, "reduce_scatter")))
        return rc;
    size_t rb = (size_t)n * es, sb = rb * (size_t)c->world;
    void *hs = host_of(send, sb, 1), *hr = hs ? host_of(recv, rb, 0) : NULL;
    if (!hr)
        return host_done((void *)send, hs, sb, 0, LATHE_ENOMEM);
    int err = MPI_Reduce_scatter_block(hs, hr, (int)n, t, mop, c->comm);
    rc = err != MPI_SUCCESS ? mpi_fail(err, "MPI_Reduce_scatter_block") : LATHE_OK;
    if (rc == LATHE_OK && op == LATHE_REDUCE_AVG)
        scale_avg(c, hr, n, dt);
    if (rc == LATHE_OK)
        count(c, C_REDUCE_SCATTER, (unsigned long long)n * (unsigned long long)c->world * es);
    rc = host_done(recv, hr, rb, 1, rc);
    return host_done((void *)send, hs, sb, 0, rc);
}

static int mpi_all_gather(void *self, const void *send, void *recv, int64_t n, int dt)
{
    struct mpi_comm *c = self;
    MPI_Datatype t = MPI_BYTE;
    size_t es = 1;
    int rc;
    if ((rc = mpi_type(dt, &t, &es)) || (rc = fits_int(n, "all_gather")) ||
        (rc = fits_int(n * c->world, "all_gather (received)")))
        return rc;
    size_t sb = (size_t)n * es, rb = sb * (size_t)c->world;
    void *hs = host_of(send, sb, 1), *hr = hs ? host_of(recv, rb, 0) : NULL;
    if (!hr)
        return host_done((void *)send, hs, sb, 0, LATHE_ENOMEM);
    int err = MPI_Allgather(hs, (int)n, t, hr, (int)n, t, c->comm);
    rc = err != MPI_SUCCESS ? mpi_fail(err, "MPI_Allgather") : LATHE_OK;
    if (rc == LATHE_OK)
        count(c, C_ALLGATHER, (unsigned long long)n * (unsigned long long)c->world * es);
    rc = host_done(recv, hr, rb, 1, rc);
    return host_done((void *)send, hs, sb, 0, rc);
}

static int mpi_broadcast(void *self, void *buf, int64_t n, int dt, int root)
{
    struct mpi_comm *c = self;
    MPI_Datatype t = MPI_BYTE;
    size_t es = 1;
    int rc;
    if ((rc = mpi_type(dt, &t, &es)) || (rc = fits_int(n, "broadcast")))
        return rc;
    if (root < 0 || root >= c->world)
        return lathe_error(LATHE_EINVAL, "mpi: broadcast from rank %d of %d", root, c->world);
    size_t bytes = (size_t)n * es;
    void *h = host_of(buf, bytes, c->rank == root);
    if (!h)
        return LATHE_ENOMEM;
    int err = MPI_Bcast(h, (int)n, t, root, c->comm);
    if (err != MPI_SUCCESS)
        return host_done(buf, h, bytes, 0, mpi_fail(err, "MPI_Bcast"));
    count(c, C_BCAST, (unsigned long long)n * es);
    return host_done(buf, h, bytes, 1, LATHE_OK);
}

static int mpi_all_to_all(void *self, const void *send, const int64_t *scounts, const int64_t *sdispls,
                          void *recv, const int64_t *rcounts, const int64_t *rdispls, int dt)
{
    struct mpi_comm *c = self;
    MPI_Datatype t = MPI_BYTE;
    size_t es = 1;
    int rc = mpi_type(dt, &t, &es);
    if (rc != LATHE_OK)
        return rc;
    int *v = malloc(4 * (size_t)c->world * sizeof *v);
    if (!v)
        return lathe_error(LATHE_ENOMEM, "mpi: out of memory");
    int *sc = v, *sd = v + c->world, *rcn = v + 2 * c->world, *rd = v + 3 * c->world;
    unsigned long long sent = 0;
    for (int r = 0; rc == LATHE_OK && r < c->world; r++) {
        if ((rc = fits_int(scounts[r], "all_to_all send count")) || (rc = fits_int(sdispls[r], "all_to_all send displacement")) ||
            (rc = fits_int(rcounts[r], "all_to_all receive count")) ||
            (rc = fits_int(rdispls[r], "all_to_all receive displacement")))
            break;
        sc[r] = (int)scounts[r];
        sd[r] = (int)sdispls[r];
        rcn[r] = (int)rcounts[r];
        rd[r] = (int)rdispls[r];
        sent += (unsigned long long)scounts[r] * es;
    }
    /* the extents the counts and displacements reach, for staging */
    size_t sb = 0, rb = 0;
    for (int r = 0; rc == LATHE_OK && r < c->world; r++) {
        size_t se = (size_t)(sdispls[r] + scounts[r]) * es, re = (size_t)(rdispls[r] + rcounts[r]) * es;
        sb = scounts[r] && se > sb ? se : sb;
        rb = rcounts[r] && re > rb ? re : rb;
    }
    if (rc == LATHE_OK) {
        void *hs = host_of(send, sb, 1), *hr = hs ? host_of(recv, rb, 0) : NULL;
        if (!hr) {
            rc = host_done((void *)send, hs, sb, 0, LATHE_ENOMEM);
        } else {
            int err = MPI_Alltoallv(hs, sc, sd, t, hr, rcn, rd, t, c->comm);
            if (err != MPI_SUCCESS)
                rc = mpi_fail(err, "MPI_Alltoallv");
            else
                count(c, C_ALLTOALL, sent);
            rc = host_done(recv, hr, rb, 1, rc);
            rc = host_done((void *)send, hs, sb, 0, rc);
        }
    }
    free(v);
    return rc;
}

static int mpi_barrier(void *self)
{
    struct mpi_comm *c = self;
    int err = MPI_Barrier(c->comm);
    if (err != MPI_SUCCESS)
        return mpi_fail(err, "MPI_Barrier");
    count(c, C_BARRIER, 0);
    return LATHE_OK;
}

/* See "Sub-groups" in the file comment. */
static int mpi_split(void *self, int color, int key, void **sub)
{
    struct mpi_comm *c = self;
    int rc = LATHE_OK;
    if (!sub)
        rc = lathe_error(LATHE_EINVAL, "mpi: split: the pointer for the sub-communicator (sub) is NULL");
    else
        *sub = NULL;
    if (rc == LATHE_OK && color < -1)
        rc = lathe_error(LATHE_EINVAL,
                         "mpi: split: color %d on rank %d: a color is >= 0, or -1 for a rank in no sub-group", color,
                         c->rank);
    /* a refusing rank still takes part (in no group): see the file comment */
    MPI_Comm nc = MPI_COMM_NULL;
    int err = MPI_Comm_split(c->comm, rc == LATHE_OK && color >= 0 ? color : MPI_UNDEFINED, key, &nc);
    if (rc != LATHE_OK) {
        if (err == MPI_SUCCESS && nc != MPI_COMM_NULL)
            MPI_Comm_free(&nc);
        return rc;
    }
    if (err != MPI_SUCCESS)
        return mpi_fail(err, "MPI_Comm_split");
    if (nc == MPI_COMM_NULL)
        return LATHE_OK; /* color -1: in no group */
    struct mpi_comm *s = calloc(1, sizeof *s);
    if (!s) {
        MPI_Comm_free(&nc);
        return lathe_error(LATHE_ENOMEM, "mpi: split: out of memory");
    }
    s->comm = nc;
    s->bf16_sum = MPI_OP_NULL;
    s->is_sub = 1;
    s->color = color;
    s->stats = c->stats;
    err = MPI_Comm_set_errhandler(s->comm, MPI_ERRORS_RETURN);
    if (err == MPI_SUCCESS)
        err = MPI_Comm_rank(s->comm, &s->rank);
    if (err == MPI_SUCCESS)
        err = MPI_Comm_size(s->comm, &s->world);
    if (err == MPI_SUCCESS)
        err = MPI_Op_create(bf16_sum_fn, 1, &s->bf16_sum);
    if (err != MPI_SUCCESS) {
        rc = mpi_fail(err, "setting up the sub-communicator");
        if (s->bf16_sum != MPI_OP_NULL)
            MPI_Op_free(&s->bf16_sum);
        MPI_Comm_free(&s->comm);
        free(s);
        return rc;
    }
    mpi_live++;
    *sub = s;
    return LATHE_OK;
}

static const struct lathe_comm_ops mpi_ops = {
    .size = sizeof(struct lathe_comm_ops),
    .create = mpi_create,
    .destroy = mpi_destroy,
    .rank = mpi_rank,
    .world_size = mpi_world_size,
    .all_reduce = mpi_all_reduce,
    .reduce_scatter = mpi_reduce_scatter,
    .all_gather = mpi_all_gather,
    .broadcast = mpi_broadcast,
    .all_to_all = mpi_all_to_all,
    .barrier = mpi_barrier,
    .split = mpi_split,
};

static const struct lathe_component mpi_components[] = {
    {.kind = LATHE_KIND_COMM, .name = "mpi", .ops = &mpi_ops},
    {0},
};

LATHE_PLUGIN_DEFINE(mpi, .version = "0.2.0",
                    .description = "Communicator over MPI (Open MPI): all-reduce, reduce-scatter, all-gather, "
                                   "broadcast, all-to-all, barrier on F32 and BF16; sub-groups (split)",
                    .components = mpi_components)
