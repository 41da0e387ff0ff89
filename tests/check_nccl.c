/* tests/check_nccl.c — the nccl communicator's collectives on device
 * buffers: every result equals the sum (or mean, gather, copy) computed
 * here on the host.
 *
 * Ranks: started by make check as one process, it re-executes itself under
 * `mpirun -np 2` where configure found mpirun and two GPUs are visible
 * (NCCL refuses two ranks of one communicator on one device); with one GPU
 * it runs as a single rank. Every rank runs the same tests in the same
 * order without forking (no fork after CUDA or MPI is initialised), so
 * each collective is matched.
 *
 * Before any GPU is touched, the loader must take the plugin (its build
 * signature is the CPU host's: see plugins/nccl/nccl.c). Skips (77) where
 * the plugin was not built, where there is no GPU (the device count comes
 * from the plugin's own libcudart through dlsym: this test never links
 * CUDA), and under sanitizers. */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lathe/lathe.h>

#include "plugin/loader.h"
#include "testutil.h"

#ifndef LATHE_MPIRUN
#define LATHE_MPIRUN "no"
#endif

/* the CUDA runtime of the plugin, through dlsym */
static int (*cu_count)(int *);
static int (*cu_malloc)(void **, size_t);
static int (*cu_free)(void *);
static int (*cu_memcpy)(void *, const void *, size_t, int);
enum { H2D = 1, D2H = 2 }; /* cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost */

static const struct lathe_comm_ops *co;
static void *cs;
static int me, N;

static void *up(const void *host, size_t bytes)
{
    void *d = NULL;
    ck_assert_int_eq(cu_malloc(&d, bytes ? bytes : 1), 0);
    if (bytes)
        ck_assert_int_eq(cu_memcpy(d, host, bytes, H2D), 0);
    return d;
}

static void down(void *host, const void *dev, size_t bytes)
{
    ck_assert_int_eq(cu_memcpy(host, dev, bytes, D2H), 0);
}

START_TEST(test_rank)
{
    ck_assert_int_ge(N, 1);
    ck_assert_int_ge(me, 0);
    ck_assert_int_lt(me, N);
}
END_TEST

START_TEST(test_all_reduce_f32)
{
    enum { C = 1000 };
    float h[C];
    for (int i = 0; i < C; i++)
        h[i] = (float)(me + i);
    float *b = up(h, sizeof h), *a = up(h, sizeof h);
    ck_assert_int_eq(co->all_reduce(cs, b, C, LATHE_F32, LATHE_REDUCE_SUM), LATHE_OK);
    ck_assert_int_eq(co->all_reduce(cs, a, C, LATHE_F32, LATHE_REDUCE_AVG), LATHE_OK);
    float hb[C], ha[C];
    down(hb, b, sizeof hb);
    down(ha, a, sizeof ha);
    for (int i = 0; i < C; i++) {
        float sum = (float)(N * i + N * (N - 1) / 2);
        ck_assert_float_eq_tol(hb[i], sum, 1e-3);
        ck_assert_float_eq_tol(ha[i], sum / (float)N, 1e-3);
    }
    cu_free(a);
    cu_free(b);
}
END_TEST

START_TEST(test_all_reduce_bf16)
{
    /* small integers and halves are exact in bf16 */
    uint16_t h[4];
    for (int i = 0; i < 4; i++)
        h[i] = lathe_f32_to_bf16((float)(me + i));
    uint16_t *d = up(h, sizeof h);
    ck_assert_int_eq(co->all_reduce(cs, d, 4, LATHE_BF16, LATHE_REDUCE_SUM), LATHE_OK);
    down(h, d, sizeof h);
    for (int i = 0; i < 4; i++)
        ck_assert_float_eq(lathe_bf16_to_f32(h[i]), (float)(N * i + N * (N - 1) / 2));
    h[0] = lathe_f32_to_bf16(2.0f * (float)me);
    ck_assert_int_eq(cu_memcpy(d, h, 2, H2D), 0);
    ck_assert_int_eq(co->all_reduce(cs, d, 1, LATHE_BF16, LATHE_REDUCE_AVG), LATHE_OK);
    down(h, d, 2);
    ck_assert_float_eq(lathe_bf16_to_f32(h[0]), (float)(N - 1));
    cu_free(d);
}
END_TEST

START_TEST(test_reduce_scatter)
{
    enum { C = 3 };
    float *send = malloc((size_t)N * C * sizeof *send), recv[C];
    uint16_t *hs = malloc((size_t)N * C * sizeof *hs), hr[C];
    for (int r = 0; r < N; r++)
        for (int j = 0; j < C; j++) {
            send[r * C + j] = (float)(me * 100 + r * 10 + j);
            hs[r * C + j] = lathe_f32_to_bf16((float)(r + j));
        }
    void *ds = up(send, (size_t)N * C * sizeof *send), *dr = up(NULL, sizeof recv);
    void *dhs = up(hs, (size_t)N * C * sizeof *hs), *dhr = up(NULL, sizeof hr);
    ck_assert_int_eq(co->reduce_scatter(cs, ds, dr, C, LATHE_F32, LATHE_REDUCE_AVG), LATHE_OK);
    ck_assert_int_eq(co->reduce_scatter(cs, dhs, dhr, C, LATHE_BF16, LATHE_REDUCE_SUM), LATHE_OK);
    down(recv, dr, sizeof recv);
    down(hr, dhr, sizeof hr);
    for (int j = 0; j < C; j++) {
        /* mean over ranks of rank*100 is (N-1)*50 */
        ck_assert_float_eq_tol(recv[j], (float)((N - 1) * 50 + me * 10 + j), 1e-4);
        ck_assert_float_eq(lathe_bf16_to_f32(hr[j]), (float)(N * (me + j)));
    }
    cu_free(ds);
    cu_free(dr);
    cu_free(dhs);
    cu_free(dhr);
    free(send);
    free(hs);
}
END_TEST

START_TEST(test_all_gather_broadcast)
{
    enum { C = 2 };
    float send[C], *recv = malloc((size_t)N * C * sizeof *recv);
    for (int j = 0; j < C; j++)
        send[j] = (float)(me * 10 + j);
    void *ds = up(send, sizeof send), *dr = up(NULL, (size_t)N * C * sizeof *recv);
    ck_assert_int_eq(co->all_gather(cs, ds, dr, C, LATHE_F32), LATHE_OK);
    down(recv, dr, (size_t)N * C * sizeof *recv);
    for (int r = 0; r < N; r++)
        for (int j = 0; j < C; j++)
            ck_assert_float_eq(recv[r * C + j], (float)(r * 10 + j));
    int64_t v[3] = {me, me, me};
    void *dv = up(v, sizeof v);
    ck_assert_int_eq(co->broadcast(cs, dv, 3, LATHE_I64, N - 1), LATHE_OK);
    down(v, dv, sizeof v);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(v[i], N - 1);
    cu_free(ds);
    cu_free(dr);
    cu_free(dv);
    free(recv);
}
END_TEST

/* Rank s sends s + d + 1 elements to rank d: every count differs. */
START_TEST(test_all_to_all_uneven)
{
    int64_t *sc = calloc((size_t)N, sizeof *sc), *sd = calloc((size_t)N, sizeof *sd);
    int64_t *rc = calloc((size_t)N, sizeof *rc), *rd = calloc((size_t)N, sizeof *rd);
    int64_t ns = 0, nr = 0;
    for (int d = 0; d < N; d++) {
        sc[d] = me + d + 1;
        sd[d] = ns;
        ns += sc[d];
        rc[d] = d + me + 1;
        rd[d] = nr;
        nr += rc[d];
    }
    int32_t *send = malloc((size_t)ns * sizeof *send), *recv = malloc((size_t)nr * sizeof *recv);
    for (int d = 0; d < N; d++)
        for (int64_t k = 0; k < sc[d]; k++)
            send[sd[d] + k] = (int32_t)(me * 1000 + d * 10 + k);
    void *ds = up(send, (size_t)ns * sizeof *send), *dr = up(NULL, (size_t)nr * sizeof *recv);
    ck_assert_int_eq(co->all_to_all(cs, ds, sc, sd, dr, rc, rd, LATHE_I32), LATHE_OK);
    down(recv, dr, (size_t)nr * sizeof *recv);
    for (int s = 0; s < N; s++)
        for (int64_t k = 0; k < rc[s]; k++)
            ck_assert_int_eq(recv[rd[s] + k], s * 1000 + me * 10 + k);
    cu_free(ds);
    cu_free(dr);
    free(sc);
    free(sd);
    free(rc);
    free(rd);
    free(send);
    free(recv);
    ck_assert_int_eq(co->barrier(cs), LATHE_OK);
}
END_TEST

/* Refusals happen before any message, so ranks stay matched. */
START_TEST(test_refusals)
{
    int32_t i[2] = {1, 2};
    float f[2] = {1, 2};
    void *di = up(i, sizeof i), *df = up(f, sizeof f);
    ck_assert_int_eq(co->all_reduce(cs, di, 2, LATHE_I32, LATHE_REDUCE_SUM), LATHE_EUNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "I32"));
    ck_assert_int_ne(co->all_reduce(cs, f, 2, LATHE_F32, LATHE_REDUCE_SUM), LATHE_OK);
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "host memory"));
    ck_assert_int_ne(co->all_reduce(cs, df, 2, LATHE_F32, 7), LATHE_OK);
    ck_assert_int_ne(co->broadcast(cs, df, 2, LATHE_F32, N), LATHE_OK);
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "broadcast from rank"));
    ck_assert_int_ne(co->reduce_scatter(cs, df, df, -1, LATHE_F32, LATHE_REDUCE_SUM), LATHE_OK);
    ck_assert_int_ne(co->all_gather(cs, df, df, 2, 99), LATHE_OK);
    cu_free(di);
    cu_free(df);
}
END_TEST

/* ---- sub-groups (ABI 1.2 split; tests/check_comm.c has the same on the
 * mpi communicator, where more ranks are cheap) ---- */

/* Split by rank parity, key = rank: group g holds ranks g, g+2, ... */
START_TEST(test_split_parity)
{
    ck_assert(LATHE_OPS_HAS(co, struct lathe_comm_ops, split));
    void *sub = NULL;
    int g = me % 2, n = (N - g + 1) / 2;
    ck_assert_int_eq(co->split(cs, g, me, &sub), LATHE_OK);
    ck_assert_ptr_nonnull(sub);
    ck_assert_int_eq(co->world_size(sub), n);
    ck_assert_int_eq(co->rank(sub), me / 2);
    float v[2] = {(float)me, 1.0f};
    float *dv = up(v, sizeof v);
    ck_assert_int_eq(co->all_reduce(sub, dv, 2, LATHE_F32, LATHE_REDUCE_SUM), LATHE_OK);
    down(v, dv, sizeof v);
    float want = 0;
    for (int r = g; r < N; r += 2)
        want += (float)r;
    ck_assert_float_eq(v[0], want);
    ck_assert_float_eq(v[1], (float)n);
    int32_t mine = me, *all = malloc((size_t)n * sizeof *all);
    void *dm = up(&mine, sizeof mine), *da = up(NULL, (size_t)n * sizeof *all);
    ck_assert_int_eq(co->all_gather(sub, dm, da, 1, LATHE_I32), LATHE_OK);
    down(all, da, (size_t)n * sizeof *all);
    for (int i = 0; i < n; i++)
        ck_assert_int_eq(all[i], g + 2 * i);
    int64_t b = me;
    void *db = up(&b, sizeof b);
    ck_assert_int_eq(co->broadcast(sub, db, 1, LATHE_I64, n - 1), LATHE_OK);
    down(&b, db, sizeof b);
    ck_assert_int_eq(b, g + 2 * (n - 1));
    ck_assert_int_eq(co->barrier(sub), LATHE_OK);
    co->destroy(sub);
    cu_free(dv);
    cu_free(dm);
    cu_free(da);
    cu_free(db);
    free(all);
}
END_TEST

/* Sub-ranks follow key (reversed here); a sub of the sub; the parent
 * destroyed before its child. */
START_TEST(test_split_key_nested)
{
    void *a = NULL, *b = NULL;
    ck_assert_int_eq(co->split(cs, 5, -me, &a), LATHE_OK);
    ck_assert_int_eq(co->world_size(a), N);
    ck_assert_int_eq(co->rank(a), N - 1 - me);
    ck_assert_int_eq(co->split(a, 0, co->rank(a), &b), LATHE_OK);
    ck_assert_int_eq(co->rank(b), N - 1 - me);
    co->destroy(a);
    float v = (float)me;
    float *dv = up(&v, sizeof v);
    ck_assert_int_eq(co->all_reduce(b, dv, 1, LATHE_F32, LATHE_REDUCE_SUM), LATHE_OK);
    down(&v, dv, sizeof v);
    ck_assert_float_eq(v, (float)(N * (N - 1) / 2));
    co->destroy(b);
    cu_free(dv);
}
END_TEST

/* color -1: no group and no error; other negatives and a NULL sub are
 * refused after taking part, so nobody hangs. */
START_TEST(test_split_refusals)
{
    void *sub = (void *)&sub;
    ck_assert_int_eq(co->split(cs, -1, me, &sub), LATHE_OK);
    ck_assert_ptr_null(sub);
    sub = (void *)&sub;
    ck_assert_int_eq(co->split(cs, -2, me, &sub), LATHE_EINVAL);
    ck_assert_ptr_null(sub);
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "color -2"));
    ck_assert_int_eq(co->split(cs, 0, me, NULL), LATHE_EINVAL);
    ck_assert_int_eq(co->barrier(cs), LATHE_OK);
}
END_TEST

static Suite *nccl_suite(void)
{
    Suite *s = suite_create("nccl");
    TCase *c = tcase_create("Core");
    tcase_set_timeout(c, 120);
    tcase_add_test(c, test_rank);
    tcase_add_test(c, test_all_reduce_f32);
    tcase_add_test(c, test_all_reduce_bf16);
    tcase_add_test(c, test_reduce_scatter);
    tcase_add_test(c, test_all_gather_broadcast);
    tcase_add_test(c, test_all_to_all_uneven);
    tcase_add_test(c, test_split_parity);
    tcase_add_test(c, test_split_key_nested);
    suite_add_tcase(s, c);
    TCase *l = tcase_create("Limits");
    tcase_add_test(l, test_refusals);
    tcase_add_test(l, test_split_refusals);
    suite_add_tcase(s, l);
    return s;
}

static void *sym(void *dl, const char *name)
{
    void *p = dlsym(dl, name);
    if (!p)
        fprintf(stderr, "check_nccl: the plugin's libcudart has no %s\n", name);
    return p;
}

int main(int argc, char **argv)
{
    (void)argc;
    if (getenv("LATHE_SANITIZED")) {
        printf("SKIP: Open MPI's memory hooks and the sanitizers do not mix\n");
        return 77;
    }
    const char *dir = getenv("LATHE_PLUGIN_PATH");
    char path[4096];
    snprintf(path, sizeof path, "%s/lathe-nccl.so", dir ? dir : "plugins/.libs");
    if (access(path, F_OK) != 0) {
        printf("SKIP: %s was not built (configure found no CUDA, NCCL or MPI)\n", path);
        return 77;
    }
    /* through the loader's own checks: a CPU-only host must take it */
    void *dl = NULL;
    const struct lathe_plugin_desc *d = NULL;
    if (lathe_plugin_validate_file(path, &dl, &d) != LATHE_OK) {
        printf("FAIL: %s\n", lathe_errmsg());
        return 1;
    }
    if (!d->components || d->components[0].kind != LATHE_KIND_COMM || strcmp(d->components[0].name, "nccl") != 0) {
        printf("FAIL: %s describes no communicator \"nccl\"\n", path);
        return 1;
    }
    co = d->components[0].ops;
    void *p;
    if (!(p = sym(dl, "cudaGetDeviceCount")))
        return 1;
    memcpy(&cu_count, &p, sizeof p);
    if (!(p = sym(dl, "cudaMalloc")))
        return 1;
    memcpy(&cu_malloc, &p, sizeof p);
    if (!(p = sym(dl, "cudaFree")))
        return 1;
    memcpy(&cu_free, &p, sizeof p);
    if (!(p = sym(dl, "cudaMemcpy")))
        return 1;
    memcpy(&cu_memcpy, &p, sizeof p);
    int ndev = 0;
    if (cu_count(&ndev) != 0 || ndev == 0) {
        /* create must refuse with a message naming its file and line (it
         * initialises MPI as a singleton and finalises it again) */
        lathe_config *cfg = lathe_config_load_string("comm.ini", "[comm]\nplugin = nccl\n");
        struct lathe_env env = {.size = sizeof env, .world_size = 1};
        void *self = NULL;
        int st = cfg ? co->create(lathe_config_section(cfg, "comm"), &env, &self) : LATHE_ERR;
        if (st != LATHE_ECUDA || self != NULL || !strstr(lathe_errmsg(), "nccl.c:")) {
            printf("FAIL: nccl create without a GPU gave %d: %s\n", st, lathe_errmsg());
            return 1;
        }
        printf("create without a GPU: %s\n", lathe_errmsg());
        lathe_config_free(cfg);
        printf("SKIP: no CUDA device (cudaGetDeviceCount); the plugin loads and describes \"nccl\"\n");
        return 77;
    }
    int launched = getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
    if (!launched && ndev >= 2 && strcmp(LATHE_MPIRUN, "no") != 0 && !getenv("LATHE_NCCL_ONE_RANK")) {
        /* exec, not fork: nothing of this process's CUDA state survives */
        if (getuid() == 0) {
            setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
            setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
        }
        fflush(stdout);
        char *args[] = {(char *)LATHE_MPIRUN, "--oversubscribe", "-np", "2", argv[0], NULL};
        execv(LATHE_MPIRUN, args);
        printf("check_nccl: could not run %s (%s); going on as one rank\n", LATHE_MPIRUN, strerror(errno));
    }
    lathe_config *cfg = lathe_config_load_string("comm.ini", "[comm]\nplugin = nccl\n");
    struct lathe_env env = {.size = sizeof env, .world_size = 1};
    if (!cfg || co->create(lathe_config_section(cfg, "comm"), &env, &cs) != LATHE_OK) {
        printf("FAIL: nccl create: %s\n", lathe_errmsg());
        return 1;
    }
    me = co->rank(cs);
    N = co->world_size(cs);
    printf("check_nccl: rank %d of %d, %d device(s) visible\n", me, N, ndev);
    setenv("CK_FORK", "no", 1); /* no fork after CUDA and MPI are initialised */
    int rc = lathe_test_run(nccl_suite());
    /* every rank's verdict, so that mpirun's status is the suite's */
    float bad = rc != 0;
    void *db = NULL;
    if (cu_malloc(&db, sizeof bad) == 0 && cu_memcpy(db, &bad, sizeof bad, H2D) == 0 &&
        co->all_reduce(cs, db, 1, LATHE_F32, LATHE_REDUCE_SUM) == LATHE_OK)
        cu_memcpy(&bad, db, sizeof bad, D2H);
    else
        bad = 1;
    cu_free(db);
    co->destroy(cs);
    lathe_config_free(cfg);
    dlclose(dl);
    return bad > 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
