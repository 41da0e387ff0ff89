/* plugins/cuda/memory.cu — device, stream, cuBLAS handle, error recording,
 * the caching allocator and the memory slots (alloc, free, copy, zero).
 *
 * The allocator never uses managed memory: blocks come from cudaMalloc and
 * go back to a free list of their size class when freed, so a training step
 * that makes and drops the same activations each time stops calling
 * cudaMalloc after the first step. Classes: four per power of two below
 * LARGE_MIN (at most 25 % slack); from LARGE_MIN up, sizes round to 2 MiB
 * and a free block is reused when it is at most 1/8 larger than asked.
 * When cudaMalloc fails, every cached block is released and it is tried
 * once more. One host thread drives the backend (as it drives tensors);
 * all use is ordered by the one stream, so a freed block can be handed out
 * again at once.
 *
 * LATHE_CUDA_STATS=1 prints, at exit, the peak bytes in use and reserved
 * (what bench/gpu-check.sh reports as peak device memory). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lathe/status.h>

#include "common.h"

/* ---- state and errors ---- */

static int g_state;            /* 0 untried, 1 ready, -1 failed */
static cudaStream_t g_stream;
static cublasHandle_t g_blas;

static int g_err;              /* a failure is waiting to be reported */
static char g_errmsg[1024];

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

void lathe_cuda_fail(const char *file, int line, const char *fmt, ...)
{
    if (g_err)
        return; /* the first failure explains the rest */
    int n = snprintf(g_errmsg, sizeof g_errmsg, "plugins/cuda/%s:%d: ", base_name(file), line);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof g_errmsg)
        vsnprintf(g_errmsg + n, sizeof g_errmsg - (size_t)n, fmt, ap);
    va_end(ap);
    g_err = 1;
}

int lathe_cuda_check_rt(cudaError_t e, const char *file, int line, const char *what)
{
    if (e == cudaSuccess)
        return 0;
    lathe_cuda_fail(file, line, "%s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
    return 1;
}

int lathe_cuda_check_blas(cublasStatus_t s, const char *file, int line, const char *what)
{
    if (s == CUBLAS_STATUS_SUCCESS)
        return 0;
    lathe_cuda_fail(file, line, "%s: %s (cuBLAS status %d)", what, cublasGetStatusString(s), (int)s);
    return 1;
}

/* Turns a waiting failure into this thread's lathe error message. */
static int report_pending(void)
{
    if (!g_err)
        return LATHE_OK;
    g_err = 0;
    /* slots return void, so this may be an earlier call's failure */
    return lathe_error(LATHE_ECUDA, "%s (reported by the next copy; CUDA_LAUNCH_BLOCKING=1 ties a kernel fault "
                                    "to its launch)",
                       g_errmsg);
}

/* ---- the caching allocator ---- */

#define NCLASS 256                       /* 4 classes per power of two, 2^0 .. 2^63 */
#define SMALL_MIN ((size_t)512)
#define LARGE_MIN ((size_t)32 << 20)     /* 32 MiB */
#define LARGE_ROUND ((size_t)2 << 20)    /* 2 MiB */
#define NBUCKET 4096                     /* live-block hash buckets */

struct block {
    void *p;
    size_t size;       /* the rounded size cudaMalloc gave */
    struct block *next;
};

static struct block *g_live[NBUCKET];    /* blocks handed out, by address */
static struct block *g_free[NCLASS];     /* cached small blocks, per class */
static struct block *g_free_large;       /* cached large blocks, any size */
static size_t g_in_use, g_peak_in_use, g_reserved, g_peak_reserved;
static int g_stats_registered;

static size_t bucket_of(const void *p) { return ((uintptr_t)p >> 9) % NBUCKET; }

/* Rounded size and class of a request below LARGE_MIN. */
static size_t small_class(size_t n, int *cls)
{
    if (n <= SMALL_MIN) {
        *cls = 9 * 4; /* 2^9 */
        return SMALL_MIN;
    }
    int e = 63 - __builtin_clzll((unsigned long long)(n - 1)); /* 2^e < n <= 2^(e+1) */
    size_t step = (size_t)1 << (e - 2);
    size_t m = (n + step - 1) / step; /* 5..8 */
    *cls = e * 4 + (int)(m - 5);
    return m * step;
}

static void stats_at_exit(void)
{
    fprintf(stderr, "lathe-cuda: peak device memory in use %.3f GiB, reserved %.3f GiB\n",
            (double)g_peak_in_use / (1 << 30), (double)g_peak_reserved / (1 << 30));
}

/* Give every cached block back to the driver. */
static void release_cached(void)
{
    for (int c = 0; c < NCLASS; c++) {
        while (g_free[c]) {
            struct block *b = g_free[c];
            g_free[c] = b->next;
            CU_CHECK(cudaFree(b->p));
            g_reserved -= b->size;
            free(b);
        }
    }
    while (g_free_large) {
        struct block *b = g_free_large;
        g_free_large = b->next;
        CU_CHECK(cudaFree(b->p));
        g_reserved -= b->size;
        free(b);
    }
}

static void *device_malloc(size_t size)
{
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, size);
    if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError(); /* clear it: we try again */
        CU_CHECK(cudaStreamSynchronize(g_stream));
        release_cached();
        e = cudaMalloc(&p, size);
    }
    if (e != cudaSuccess) {
        lathe_cuda_fail(__FILE__, __LINE__, "cudaMalloc(%zu bytes): %s (%.3f GiB in use, %.3f GiB reserved)", size,
                        cudaGetErrorString(e), (double)g_in_use / (1 << 30), (double)g_reserved / (1 << 30));
        cudaGetLastError();
        return NULL;
    }
    g_reserved += size;
    if (g_reserved > g_peak_reserved)
        g_peak_reserved = g_reserved;
    return p;
}

/* A block of at least n bytes, from the cache or the driver. */
static struct block *block_get(size_t n)
{
    struct block *b = NULL;
    size_t size;
    if (n < LARGE_MIN) {
        int cls;
        size = small_class(n, &cls);
        if (g_free[cls]) {
            b = g_free[cls];
            g_free[cls] = b->next;
        }
    } else {
        size = (n + LARGE_ROUND - 1) / LARGE_ROUND * LARGE_ROUND;
        struct block **best = NULL;
        for (struct block **pp = &g_free_large; *pp; pp = &(*pp)->next)
            if ((*pp)->size >= size && (*pp)->size <= size + size / 8 && (!best || (*pp)->size < (*best)->size))
                best = pp;
        if (best) {
            b = *best;
            *best = b->next;
        }
    }
    if (!b) {
        void *p = device_malloc(size);
        if (!p)
            return NULL;
        b = (struct block *)malloc(sizeof *b);
        if (!b) {
            cudaFree(p);
            g_reserved -= size;
            lathe_cuda_fail(__FILE__, __LINE__, "out of host memory for the allocator's records");
            return NULL;
        }
        b->p = p;
        b->size = size;
    }
    size_t h = bucket_of(b->p);
    b->next = g_live[h];
    g_live[h] = b;
    g_in_use += b->size;
    if (g_in_use > g_peak_in_use)
        g_peak_in_use = g_in_use;
    return b;
}

void *lathe_cuda_scratch(size_t n)
{
    static struct block *cur;
    if (cur && cur->size >= n)
        return cur->p;
    if (cur)
        lathe_cuda_free(cur->p); /* the stream orders earlier uses before any reuse */
    cur = block_get(n ? n : 1);
    return cur ? cur->p : NULL;
}

/* ---- initialisation ---- */

int lathe_cuda_ready(void)
{
    if (g_state == 1)
        return 0;
    if (g_state == -1)
        return -1;
    g_state = -1;
    int ndev = 0;
    if (CU_CHECK(cudaGetDeviceCount(&ndev)))
        return -1;
    if (ndev == 0) {
        lathe_cuda_fail(__FILE__, __LINE__, "no CUDA device is visible (check CUDA_VISIBLE_DEVICES)");
        return -1;
    }
    /* Several ranks on one node each take their own device when the
     * launcher says which rank this is; otherwise device 0 (or what
     * CUDA_VISIBLE_DEVICES leaves first). */
    const char *lr = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    if (!lr)
        lr = getenv("LOCAL_RANK");
    int dev = lr ? atoi(lr) % ndev : 0;
    if (CU_CHECK(cudaSetDevice(dev)) || CU_CHECK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking)) ||
        CUBLAS_CHECK(cublasCreate(&g_blas)) || CUBLAS_CHECK(cublasSetStream(g_blas, g_stream)))
        return -1;
    const char *st = getenv("LATHE_CUDA_STATS");
    if (st && st[0] == '1' && !g_stats_registered) {
        g_stats_registered = 1;
        atexit(stats_at_exit);
    }
    g_state = 1;
    return 0;
}

cudaStream_t lathe_cuda_stream(void) { return g_stream; }
cublasHandle_t lathe_cuda_blas(void) { return g_blas; }
/* Read per call, so that a run in the same process that sets
 * `allow_tf32 = true` after an earlier one takes effect. */
int lathe_cuda_tf32(void)
{
    const char *tf = getenv("LATHE_ALLOW_TF32");
    return tf && (strcmp(tf, "1") == 0 || strcmp(tf, "true") == 0);
}

/* ---- the memory slots ---- */

extern "C" void *lathe_cuda_alloc(size_t n)
{
    if (lathe_cuda_ready() != 0)
        return NULL;
    /* contents undefined, as the contract allows: core zeroes what needs it */
    struct block *b = block_get(n ? n : 1);
    return b ? b->p : NULL;
}

extern "C" void lathe_cuda_free(void *p)
{
    if (!p)
        return;
    size_t h = bucket_of(p);
    for (struct block **pp = &g_live[h]; *pp; pp = &(*pp)->next) {
        struct block *b = *pp;
        if (b->p != p)
            continue;
        *pp = b->next;
        g_in_use -= b->size;
        if (b->size >= LARGE_MIN) {
            b->next = g_free_large;
            g_free_large = b;
        } else {
            int cls;
            small_class(b->size, &cls);
            b->next = g_free[cls];
            g_free[cls] = b;
        }
        return;
    }
    /* Not one of ours. A tensor made by the CPU backend before a run
     * switched to this one holds a host buffer from aligned_alloc; free it
     * as the CPU backend would. Anything else is a caller's bug: record it. */
    cudaPointerAttributes at;
    if (cudaPointerGetAttributes(&at, p) == cudaSuccess && at.type == cudaMemoryTypeUnregistered) {
        free(p);
        return;
    }
    cudaGetLastError();
    lathe_cuda_fail(__FILE__, __LINE__, "free(%p): not a buffer of this backend", p);
}

extern "C" void lathe_cuda_zero(void *p, size_t n)
{
    CU_ENTER();
    if (p && n)
        CU_CHECK(cudaMemsetAsync(p, 0, n, g_stream));
}

static int is_device(const void *p)
{
    cudaPointerAttributes at;
    if (cudaPointerGetAttributes(&at, p) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return at.type == cudaMemoryTypeDevice || at.type == cudaMemoryTypeManaged;
}

extern "C" int lathe_cuda_copy(void *dst, const void *src, size_t n, int to_device)
{
    if (lathe_cuda_ready() != 0) {
        int rc = report_pending();
        return rc != LATHE_OK ? rc
                              : lathe_error(LATHE_ECUDA, "CUDA backend: no usable device (the reason was reported "
                                                         "by an earlier call)");
    }
    if (n) {
        /* cudaMemcpyDefault lets unified addressing tell host from device:
         * core also copies device to device through this slot (a batch's
         * rows for one rank). */
        CU_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDefault, g_stream));
        /* The host reads dst (to host), or may reuse src (from host) as
         * soon as we return; only device-to-device copies stay queued. */
        if (!to_device || !is_device(src))
            CU_CHECK(cudaStreamSynchronize(g_stream));
    }
    return report_pending();
}
