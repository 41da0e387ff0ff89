/* plugins/nccl/nccl.c — the communicator over NCCL (component "nccl"), for
 * runs whose tensors live on CUDA devices ([run] backend = cuda).
 *
 * Launch: as for the mpi communicator, `mpirun -np N lathe train RUN.ini`.
 * MPI only bootstraps: rank 0 makes the NCCL unique id (ncclGetUniqueId)
 * and MPI_Bcast's it to the others, every rank then joins with
 * ncclCommInitRank. MPI is initialised here when nobody has done it yet
 * (MPI_Init_thread, FUNNELED) and finalised in destroy only in that case.
 *
 * Device: rank r takes device (local rank % device count), the same rule as
 * the cuda backend (plugins/cuda/memory.cu): the local rank comes from
 * OMPI_COMM_WORLD_LOCAL_RANK or LOCAL_RANK, else from the rank within this
 * node (MPI_COMM_TYPE_SHARED). NCCL refuses two ranks of one communicator on
 * one device, so a node needs at least as many GPUs as ranks.
 *
 * Buffers are device pointers (the cuda backend's tensors); a host pointer
 * is refused with a message naming the mpi communicator.
 *
 * Streams: the cuda backend keeps its stream private (a static in
 * plugins/cuda/memory.cu, not exported from its .so), so NCCL cannot be
 * queued behind its kernels directly. Each collective therefore
 * (1) cudaDeviceSynchronize's, so every kernel that wrote the buffers on
 * the backend's stream has finished, (2) queues the NCCL call on this
 * plugin's own non-blocking stream, and (3) waits for that stream before
 * returning, so the backend's next kernel sees the result. Collectives are
 * thus blocking for the host, like the mpi communicator's; overlapping them
 * with compute needs an ABI slot that shares the backend's stream.
 *
 * Collectives: all_reduce → ncclAllReduce (in place), reduce_scatter →
 * ncclReduceScatter, all_gather → ncclAllGather, broadcast → ncclBroadcast,
 * all_to_all → ncclSend/ncclRecv to and from every peer inside one
 * ncclGroupStart/ncclGroupEnd (NCCL has no all-to-all-v), barrier →
 * MPI_Barrier on a private duplicate of MPI_COMM_WORLD (nothing on the
 * devices needs ordering: every collective has finished when it returns).
 *
 * Reductions: F32 (ncclFloat32) and BF16 (ncclBfloat16), SUM and AVG. AVG
 * is ncclAvg (NCCL >= 2.10); with an older NCCL it is SUM, then the
 * received elements are copied to the host, scaled by 1/N and copied back
 * (slow, but this plugin has no kernels of its own); BF16 needs NCCL 2.10
 * (ncclBfloat16) and is refused by name before it. Moving data (all_gather,
 * broadcast, all_to_all) takes F16, I32, I64, U8 and I8 as well.
 *
 * Device pointers cross plugins because both this plugin and the cuda
 * backend link the shared libcudart: one runtime, one context per device.
 *
 * Build: compiled by the C compiler without LATHE_BUILD_CUDA, linking
 * libnccl and libcudart. Its ops take only opaque pointers, so it asks
 * nothing of the host's build: the loader (core/plugin/loader.c) takes a
 * "cuda" build signature only from backend-only plugins, and this plugin's
 * "nogpu" signature is the host's own.
 *
 * Sub-groups (ABI 1.2 `split`): ncclCommSplit (NCCL >= 2.18; refused by
 * name before it) of the NCCL communicator, and MPI_Comm_split of the
 * private MPI one with the same color and key, so the sub's barrier and
 * any later split have an MPI side too. Both order the new ranks by key,
 * then by rank in self (the header's rule); the sub checks that NCCL and
 * MPI gave it the same rank. The sub runs on the parent's device with a
 * stream of its own, is a full instance of these ops and is freed with
 * destroy. color = -1 (NCCL_SPLIT_NOCOLOR) means "in no group": *sub =
 * NULL and LATHE_OK. Any other negative color, or sub == NULL, is refused
 * with LATHE_EINVAL after the rank has still taken part in both splits as
 * a rank in no group (they are collective: an early return would leave
 * the others waiting). A rank whose set-up of the sub fails tells every
 * rank of self (one MPI_Allreduce), and then all of them fail together
 * rather than some holding a sub whose peers have none.
 *
 * Lifetime: MPI is finalised (only when this plugin initialised it) by the
 * destroy of the last live instance, root or sub, in whatever order they
 * go; a sub outlives its parent.
 *
 * [comm] keys: none (the device follows the rule above). */
#include <lathe/lathe.h>

#include <cuda_runtime.h>
#include <dlfcn.h>
#include <mpi.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct nccl_comm {
    MPI_Comm mpi;
    ncclComm_t comm;
    cudaStream_t stream;
    int rank, world, device;
};

/* Process-wide, because MPI is: whether this plugin called MPI_Init_thread
 * (then MPI_Finalize is ours to call), and how many instances, roots and
 * subs, are alive. Only the main thread calls a communicator. */
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

static int cuda_fail(cudaError_t e, const char *file, int line, const char *what)
{
    return lathe_error(LATHE_ECUDA, "%s:%d: nccl: %s failed: %s (%s)", file, line, what, cudaGetErrorString(e),
                       cudaGetErrorName(e));
}

static int nccl_fail(ncclResult_t r, const char *file, int line, const char *what)
{
    return lathe_error(LATHE_ENCCL, "%s:%d: nccl: %s failed: %s (NCCL_DEBUG=WARN says more)", file, line, what,
                       ncclGetErrorString(r));
}

#define CU(call)                                                                                                   \
    do {                                                                                                           \
        cudaError_t e_ = (call);                                                                                   \
        if (e_ != cudaSuccess)                                                                                     \
            return cuda_fail(e_, __FILE__, __LINE__, #call);                                                       \
    } while (0)
#define NC(call)                                                                                                   \
    do {                                                                                                           \
        ncclResult_t r_ = (call);                                                                                  \
        if (r_ != ncclSuccess)                                                                                     \
            return nccl_fail(r_, __FILE__, __LINE__, #call);                                                       \
    } while (0)

static int mpi_fail(int code, const char *file, int line, const char *what)
{
    char msg[MPI_MAX_ERROR_STRING];
    int n = 0;
    if (MPI_Error_string(code, msg, &n) != MPI_SUCCESS)
        snprintf(msg, sizeof msg, "MPI error %d", code);
    return lathe_error(LATHE_ERR, "%s:%d: nccl: %s failed: %s", file, line, what, msg);
}

/* The NCCL type that moves elements of dtype dt, and their size. */
static int move_type(int dt, ncclDataType_t *out, size_t *esize)
{
    switch (dt) {
    case LATHE_F32: *out = ncclFloat32; *esize = 4; return LATHE_OK;
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 10, 0)
    case LATHE_BF16: *out = ncclBfloat16; *esize = 2; return LATHE_OK;
#else
    case LATHE_BF16: return lathe_error(LATHE_EUNSUPPORTED, "nccl: BF16 needs NCCL 2.10 or newer; this one is %d",
                                        NCCL_VERSION_CODE);
#endif
    case LATHE_F16: *out = ncclFloat16; *esize = 2; return LATHE_OK;
    case LATHE_I32: *out = ncclInt32; *esize = 4; return LATHE_OK;
    case LATHE_I64: *out = ncclInt64; *esize = 8; return LATHE_OK;
    case LATHE_U8:
    case LATHE_I8: *out = ncclUint8; *esize = 1; return LATHE_OK;
    default: return lathe_error(LATHE_EINVAL, "nccl: unknown dtype %d", dt);
    }
}

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 10, 0)
#define HAVE_NCCL_AVG 1
#endif

/* The NCCL op for a reduction; F32 and BF16 only. */
static int reduce_op(int dt, int op, const char *what, ncclRedOp_t *out)
{
    if (dt != LATHE_F32 && dt != LATHE_BF16)
        return lathe_error(LATHE_EUNSUPPORTED, "nccl: %s: reductions are implemented for F32 and BF16, not %s",
                           what, lathe_dtype_name((enum lathe_dtype)dt));
    if (op == LATHE_REDUCE_SUM)
        *out = ncclSum;
    else if (op == LATHE_REDUCE_AVG)
#ifdef HAVE_NCCL_AVG
        *out = ncclAvg;
#else
        *out = ncclSum; /* scaled afterwards: scale_avg */
#endif
    else
        return lathe_error(LATHE_EINVAL, "nccl: %s: unknown reduction %d (SUM or AVG)", what, op);
    return LATHE_OK;
}

#ifndef HAVE_NCCL_AVG
/* AVG without ncclAvg: SUM / N through the host (see the file comment). */
static int scale_avg(struct nccl_comm *c, void *buf, int64_t n, int dt)
{
    size_t es = dt == LATHE_F32 ? 4 : 2;
    void *h = malloc((size_t)n * es);
    if (!h)
        return lathe_error(LATHE_ENOMEM, "nccl: out of memory scaling an average of %lld elements", (long long)n);
    cudaError_t e = cudaMemcpy(h, buf, (size_t)n * es, cudaMemcpyDeviceToHost);
    if (e == cudaSuccess) {
        float inv = 1.0f / (float)c->world;
        for (int64_t i = 0; i < n; i++) {
            if (dt == LATHE_F32)
                ((float *)h)[i] *= inv;
            else
                ((uint16_t *)h)[i] = lathe_f32_to_bf16(lathe_bf16_to_f32(((uint16_t *)h)[i]) * inv);
        }
        e = cudaMemcpy(buf, h, (size_t)n * es, cudaMemcpyHostToDevice);
    }
    free(h);
    if (e != cudaSuccess)
        return cuda_fail(e, __FILE__, __LINE__, "cudaMemcpy (average)");
    return LATHE_OK;
}
#endif

static int check_count(int64_t n, const char *what)
{
    if (n < 0)
        return lathe_error(LATHE_EINVAL, "nccl: %s of %lld elements: the count must be >= 0", what, (long long)n);
    return LATHE_OK;
}

/* NCCL moves device memory only; say so before it fails obscurely. */
static int check_device(const void *p, const char *what)
{
    if (p == NULL)
        return lathe_error(LATHE_EINVAL, "nccl: %s: buffer is NULL", what);
    struct cudaPointerAttributes a;
    cudaError_t e = cudaPointerGetAttributes(&a, p);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* clear it: the error is not sticky */
        return cuda_fail(e, __FILE__, __LINE__, "cudaPointerGetAttributes");
    }
    if (a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeManaged)
        return lathe_error(LATHE_EINVAL,
                           "nccl: %s: the buffer is host memory; the nccl communicator moves device memory "
                           "([run] backend = cuda); for a CPU run use [comm] plugin = mpi",
                           what);
    return LATHE_OK;
}

/* Step (1) of the file comment: the backend's writes have landed. */
static int before(struct nccl_comm *c)
{
    (void)c;
    CU(cudaDeviceSynchronize());
    return LATHE_OK;
}

/* Step (3): the result is in place before the caller goes on. */
static int after(struct nccl_comm *c)
{
    CU(cudaStreamSynchronize(c->stream));
    return LATHE_OK;
}

/* This process's rank within its node, for the device choice. */
static int local_rank(struct nccl_comm *c, int *out)
{
    const char *lr = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    if (!lr)
        lr = getenv("LOCAL_RANK");
    if (lr) {
        *out = atoi(lr);
        return LATHE_OK;
    }
    MPI_Comm node;
    int err = MPI_Comm_split_type(c->mpi, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &node);
    if (err == MPI_SUCCESS) {
        err = MPI_Comm_rank(node, out);
        MPI_Comm_free(&node);
    }
    if (err != MPI_SUCCESS)
        return mpi_fail(err, __FILE__, __LINE__, "finding the rank within this node (MPI_Comm_split_type)");
    return LATHE_OK;
}

/* The device, the stream and the NCCL communicator (after MPI is up). */
static int pick_device(struct nccl_comm *c, int lr)
{
    int ndev = 0;
    CU(cudaGetDeviceCount(&ndev));
    if (ndev == 0)
        return lathe_error(LATHE_ECUDA, "%s:%d: nccl: no CUDA device is visible (check CUDA_VISIBLE_DEVICES); "
                                        "for a CPU run use [comm] plugin = mpi",
                           __FILE__, __LINE__);
    c->device = lr % ndev;
    CU(cudaSetDevice(c->device));
    CU(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    return LATHE_OK;
}

static int join(struct nccl_comm *c)
{
    int lr = 0, rc;
    if ((rc = local_rank(c, &lr)) != LATHE_OK)
        return rc;
    /* every rank learns whether any rank lacks its device, so that none
     * waits for the id (or in ncclCommInitRank) for a rank that gave up */
    rc = pick_device(c, lr);
    int bad = rc != LATHE_OK;
    int err = MPI_Allreduce(MPI_IN_PLACE, &bad, 1, MPI_INT, MPI_MAX, c->mpi);
    if (rc != LATHE_OK)
        return rc;
    if (err != MPI_SUCCESS)
        return mpi_fail(err, __FILE__, __LINE__, "MPI_Allreduce of the device status");
    if (bad)
        return lathe_error(LATHE_ECUDA, "%s:%d: nccl: another rank could not set up its CUDA device; see its message",
                           __FILE__, __LINE__);

    /* rank 0's status travels with the id, so that the other ranks stop
     * rather than wait in ncclCommInitRank for a rank that gave up */
    struct {
        int32_t status;
        ncclUniqueId id;
    } boot;
    memset(&boot, 0, sizeof boot);
    ncclResult_t got = ncclSuccess;
    if (c->rank == 0)
        boot.status = (int32_t)(got = ncclGetUniqueId(&boot.id));
    err = MPI_Bcast(&boot, (int)sizeof boot, MPI_BYTE, 0, c->mpi);
    if (err != MPI_SUCCESS)
        return mpi_fail(err, __FILE__, __LINE__, "MPI_Bcast of the NCCL unique id");
    if (got != ncclSuccess)
        return nccl_fail(got, __FILE__, __LINE__, "ncclGetUniqueId");
    if (boot.status != ncclSuccess)
        return lathe_error(LATHE_ENCCL, "%s:%d: nccl: rank 0 could not make the NCCL unique id (%s); see its message",
                           __FILE__, __LINE__, ncclGetErrorString((ncclResult_t)boot.status));
    NC(ncclCommInitRank(&c->comm, c->world, boot.id, c->rank));
    return LATHE_OK;
}

static void nccl_destroy(void *self);

static int nccl_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    (void)cfg; /* no keys (see the file comment) */
    (void)env;
    *self = NULL;
    struct nccl_comm *c = calloc(1, sizeof *c);
    if (!c)
        return lathe_error(LATHE_ENOMEM, "nccl: out of memory");
    c->mpi = MPI_COMM_NULL;

    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (finalized) {
        free(c);
        return lathe_error(LATHE_EUNSUPPORTED,
                           "nccl: MPI (which carries NCCL's unique id) was finalised by an earlier run in this "
                           "process, and MPI can be initialised only once per process; start a new process");
    }
    if (!inited) {
        /* lathe loads plugins RTLD_LOCAL; Open MPI's own components (dlopened
         * by libmpi) resolve libmpi's symbols globally, so promote it. */
        dlopen("libmpi.so.40", RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
        int provided = 0;
        int err = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
        if (err != MPI_SUCCESS) {
            free(c);
            return lathe_error(LATHE_ERR, "nccl: MPI_Init_thread failed (code %d); is the run launched with mpirun?",
                               err);
        }
        mpi_ours = 1;
    }
    mpi_live++; /* held from here: nccl_destroy lets go, also on failure */
    int err = MPI_Comm_dup(MPI_COMM_WORLD, &c->mpi);
    if (err == MPI_SUCCESS)
        err = MPI_Comm_set_errhandler(c->mpi, MPI_ERRORS_RETURN);
    if (err == MPI_SUCCESS)
        err = MPI_Comm_rank(c->mpi, &c->rank);
    if (err == MPI_SUCCESS)
        err = MPI_Comm_size(c->mpi, &c->world);
    int rc = err == MPI_SUCCESS ? join(c) : mpi_fail(err, __FILE__, __LINE__, "setting up the MPI communicator");
    if (rc != LATHE_OK) {
        nccl_destroy(c);
        return rc;
    }
    *self = c;
    return LATHE_OK;
}

static void nccl_destroy(void *self)
{
    struct nccl_comm *c = self;
    if (!c)
        return;
    if (c->comm)
        ncclCommDestroy(c->comm);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    /* after someone else finalised MPI, nothing of it may be called */
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (c->mpi != MPI_COMM_NULL && !finalized)
        MPI_Comm_free(&c->mpi);
    free(c);
    mpi_let_go();
}

static int nccl_rank(void *self) { return ((struct nccl_comm *)self)->rank; }
static int nccl_world_size(void *self) { return ((struct nccl_comm *)self)->world; }

static int nccl_all_reduce(void *self, void *buf, int64_t n, int dt, int op)
{
    struct nccl_comm *c = self;
    ncclDataType_t t = ncclUint8;
    ncclRedOp_t rop;
    size_t es = 1;
    int rc;
    if ((rc = move_type(dt, &t, &es)) || (rc = reduce_op(dt, op, "all_reduce", &rop)) ||
        (rc = check_count(n, "all_reduce")))
        return rc;
    if (n == 0)
        return LATHE_OK;
    if ((rc = check_device(buf, "all_reduce")) || (rc = before(c)))
        return rc;
    NC(ncclAllReduce(buf, buf, (size_t)n, t, rop, c->comm, c->stream));
    if ((rc = after(c)))
        return rc;
#ifndef HAVE_NCCL_AVG
    if (op == LATHE_REDUCE_AVG && c->world > 1)
        return scale_avg(c, buf, n, dt);
#endif
    return LATHE_OK;
}

static int nccl_reduce_scatter(void *self, const void *send, void *recv, int64_t n, int dt, int op)
{
    struct nccl_comm *c = self;
    ncclDataType_t t = ncclUint8;
    ncclRedOp_t rop;
    size_t es = 1;
    int rc;
    if ((rc = move_type(dt, &t, &es)) || (rc = reduce_op(dt, op, "reduce_scatter", &rop)) ||
        (rc = check_count(n, "reduce_scatter")))
        return rc;
    if (n == 0)
        return LATHE_OK;
    if ((rc = check_device(send, "reduce_scatter (send)")) || (rc = check_device(recv, "reduce_scatter (recv)")) ||
        (rc = before(c)))
        return rc;
    NC(ncclReduceScatter(send, recv, (size_t)n, t, rop, c->comm, c->stream));
    if ((rc = after(c)))
        return rc;
#ifndef HAVE_NCCL_AVG
    if (op == LATHE_REDUCE_AVG && c->world > 1)
        return scale_avg(c, recv, n, dt);
#endif
    return LATHE_OK;
}

static int nccl_all_gather(void *self, const void *send, void *recv, int64_t n, int dt)
{
    struct nccl_comm *c = self;
    ncclDataType_t t = ncclUint8;
    size_t es = 1;
    int rc;
    if ((rc = move_type(dt, &t, &es)) || (rc = check_count(n, "all_gather")))
        return rc;
    if (n == 0)
        return LATHE_OK;
    if ((rc = check_device(send, "all_gather (send)")) || (rc = check_device(recv, "all_gather (recv)")) ||
        (rc = before(c)))
        return rc;
    NC(ncclAllGather(send, recv, (size_t)n, t, c->comm, c->stream));
    return after(c);
}

static int nccl_broadcast(void *self, void *buf, int64_t n, int dt, int root)
{
    struct nccl_comm *c = self;
    ncclDataType_t t = ncclUint8;
    size_t es = 1;
    int rc;
    if ((rc = move_type(dt, &t, &es)) || (rc = check_count(n, "broadcast")))
        return rc;
    if (root < 0 || root >= c->world)
        return lathe_error(LATHE_EINVAL, "nccl: broadcast from rank %d of %d", root, c->world);
    if (n == 0)
        return LATHE_OK;
    if ((rc = check_device(buf, "broadcast")) || (rc = before(c)))
        return rc;
    NC(ncclBroadcast(buf, buf, (size_t)n, t, root, c->comm, c->stream));
    return after(c);
}

static int nccl_all_to_all(void *self, const void *send, const int64_t *scounts, const int64_t *sdispls,
                           void *recv, const int64_t *rcounts, const int64_t *rdispls, int dt)
{
    struct nccl_comm *c = self;
    ncclDataType_t t = ncclUint8;
    size_t es = 1;
    int rc = move_type(dt, &t, &es);
    if (rc != LATHE_OK)
        return rc;
    /* Every check before the group, so a refusal leaves no half-posted
     * sends; a rank that refuses still leaves its peers waiting, as with
     * any collective one rank skips. */
    int64_t ns = 0, nr = 0;
    for (int r = 0; r < c->world; r++) {
        if ((rc = check_count(scounts[r], "all_to_all send")) || (rc = check_count(rcounts[r], "all_to_all receive")) ||
            (rc = check_count(sdispls[r], "all_to_all send displacement")) ||
            (rc = check_count(rdispls[r], "all_to_all receive displacement")))
            return rc;
        ns += scounts[r];
        nr += rcounts[r];
    }
    if ((ns > 0 && (rc = check_device(send, "all_to_all (send)"))) ||
        (nr > 0 && (rc = check_device(recv, "all_to_all (recv)"))) || (rc = before(c)))
        return rc;
    const char *sb = send;
    char *rb = recv;
    NC(ncclGroupStart());
    ncclResult_t r = ncclSuccess;
    /* a peer with nothing to exchange posts nothing, on both sides alike */
    for (int p = 0; p < c->world && r == ncclSuccess; p++) {
        if (scounts[p] > 0)
            r = ncclSend(sb + (size_t)sdispls[p] * es, (size_t)scounts[p], t, p, c->comm, c->stream);
        if (r == ncclSuccess && rcounts[p] > 0)
            r = ncclRecv(rb + (size_t)rdispls[p] * es, (size_t)rcounts[p], t, p, c->comm, c->stream);
    }
    ncclResult_t end = ncclGroupEnd(); /* always closes the group */
    if (r != ncclSuccess)
        return nccl_fail(r, __FILE__, __LINE__, "ncclSend/ncclRecv (all_to_all)");
    if (end != ncclSuccess)
        return nccl_fail(end, __FILE__, __LINE__, "ncclGroupEnd (all_to_all)");
    return after(c);
}

static int nccl_barrier(void *self)
{
    struct nccl_comm *c = self;
    int err = MPI_Barrier(c->mpi);
    if (err != MPI_SUCCESS)
        return mpi_fail(err, __FILE__, __LINE__, "MPI_Barrier");
    return LATHE_OK;
}

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0)
#define HAVE_NCCL_SPLIT 1
#endif

/* The sub's own MPI side, stream and rank (after both splits). */
static int sub_setup(struct nccl_comm *s, int device)
{
    int err = MPI_Comm_set_errhandler(s->mpi, MPI_ERRORS_RETURN);
    if (err == MPI_SUCCESS)
        err = MPI_Comm_rank(s->mpi, &s->rank);
    if (err == MPI_SUCCESS)
        err = MPI_Comm_size(s->mpi, &s->world);
    if (err != MPI_SUCCESS)
        return mpi_fail(err, __FILE__, __LINE__, "setting up the sub-communicator's MPI side");
    int nr = -1, nn = -1;
    NC(ncclCommUserRank(s->comm, &nr));
    NC(ncclCommCount(s->comm, &nn));
    if (nr != s->rank || nn != s->world)
        return lathe_error(LATHE_ENCCL,
                           "%s:%d: nccl: split: NCCL made this rank %d of %d, MPI %d of %d; they must agree (the "
                           "same color and key go to both)",
                           __FILE__, __LINE__, nr, nn, s->rank, s->world);
    s->device = device;
    CU(cudaSetDevice(device));
    CU(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
    return LATHE_OK;
}

/* See "Sub-groups" in the file comment. */
static int nccl_split(void *self, int color, int key, void **sub)
{
    struct nccl_comm *c = self;
#ifndef HAVE_NCCL_SPLIT
    (void)c, (void)color, (void)key;
    if (sub)
        *sub = NULL;
    return lathe_error(LATHE_EUNSUPPORTED,
                       "nccl: split: sub-groups need ncclCommSplit (NCCL 2.18 or newer); this NCCL is %d; use a "
                       "newer NCCL",
                       NCCL_VERSION_CODE);
#else
    int arg = LATHE_OK;
    if (!sub)
        arg = lathe_error(LATHE_EINVAL, "nccl: split: the pointer for the sub-communicator (sub) is NULL");
    else
        *sub = NULL;
    if (arg == LATHE_OK && color < -1)
        arg = lathe_error(LATHE_EINVAL,
                          "nccl: split: color %d on rank %d: a color is >= 0, or -1 for a rank in no sub-group",
                          color, c->rank);
    int in = arg == LATHE_OK && color >= 0;
    /* both splits on every rank, whatever happened: they are collective */
    ncclComm_t nc = NULL;
    ncclResult_t nr = ncclCommSplit(c->comm, in ? color : NCCL_SPLIT_NOCOLOR, key, &nc, NULL);
    MPI_Comm mc = MPI_COMM_NULL;
    int err = MPI_Comm_split(c->mpi, in ? color : MPI_UNDEFINED, key, &mc);
    int rc = LATHE_OK;
    struct nccl_comm *s = NULL;
    if (nr != ncclSuccess)
        rc = nccl_fail(nr, __FILE__, __LINE__, "ncclCommSplit");
    else if (err != MPI_SUCCESS)
        rc = mpi_fail(err, __FILE__, __LINE__, "MPI_Comm_split");
    else if (in && (!nc || mc == MPI_COMM_NULL))
        rc = lathe_error(LATHE_ENCCL, "%s:%d: nccl: split: color %d gave no %s communicator", __FILE__, __LINE__,
                         color, nc ? "MPI" : "NCCL");
    else if (in && !(s = calloc(1, sizeof *s)))
        rc = lathe_error(LATHE_ENOMEM, "nccl: split: out of memory");
    if (s) {
        s->comm = nc;
        s->mpi = mc;
        nc = NULL;
        mc = MPI_COMM_NULL;
        mpi_live++; /* nccl_destroy of s lets go */
        rc = sub_setup(s, c->device);
    }
    /* every rank learns whether any set-up failed (see the file comment) */
    int bad = rc != LATHE_OK;
    int aerr = MPI_Allreduce(MPI_IN_PLACE, &bad, 1, MPI_INT, MPI_MAX, c->mpi);
    if (rc == LATHE_OK && aerr != MPI_SUCCESS)
        rc = mpi_fail(aerr, __FILE__, __LINE__, "MPI_Allreduce of the split status");
    else if (rc == LATHE_OK && bad)
        rc = lathe_error(LATHE_ENCCL, "%s:%d: nccl: split: another rank could not set up its sub-communicator; see "
                                      "its message",
                         __FILE__, __LINE__);
    if (rc != LATHE_OK || arg != LATHE_OK) {
        if (s)
            nccl_destroy(s);
        if (nc)
            ncclCommDestroy(nc);
        if (mc != MPI_COMM_NULL)
            MPI_Comm_free(&mc);
        return arg != LATHE_OK ? arg : rc;
    }
    *sub = s; /* NULL for color -1 */
    return LATHE_OK;
#endif
}

static const struct lathe_comm_ops nccl_ops = {
    .size = sizeof(struct lathe_comm_ops),
    .create = nccl_create,
    .destroy = nccl_destroy,
    .rank = nccl_rank,
    .world_size = nccl_world_size,
    .all_reduce = nccl_all_reduce,
    .reduce_scatter = nccl_reduce_scatter,
    .all_gather = nccl_all_gather,
    .broadcast = nccl_broadcast,
    .all_to_all = nccl_all_to_all,
    .barrier = nccl_barrier,
    .split = nccl_split,
};

static const struct lathe_component nccl_components[] = {
    {.kind = LATHE_KIND_COMM, .name = "nccl", .ops = &nccl_ops},
    {0},
};

LATHE_PLUGIN_DEFINE(nccl, .version = "0.2.0",
                    .description = "Communicator over NCCL on CUDA devices (unique id over MPI): all-reduce, "
                                   "reduce-scatter, all-gather, broadcast, all-to-all, barrier on F32 and BF16; "
                                   "sub-groups (split)",
                    .components = nccl_components)
