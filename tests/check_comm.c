/* tests/check_comm.c — the mpi communicator's collectives, on however many
 * ranks the test is launched with (tests/e2e_mpi.sh runs it under
 * `mpirun -np 3`; make check runs it as one process, an MPI singleton).
 * Every rank runs the same tests in the same order without forking (a
 * fork after MPI_Init is not allowed), so each collective is matched.
 * Sub-groups (split) are checked on any number of ranks: e2e_mpi.sh also
 * runs the suite on 4 ranks, where the parity groups have 2 each and a sub
 * of a sub is non-trivial.
 * Skips (77) where the mpi plugin was not built, and under sanitizers. */
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lathe/lathe.h>

#include "testutil.h"

static const struct lathe_comm_ops *co;
static void *cs;
static int me, N;

START_TEST(test_rank)
{
    ck_assert_int_ge(N, 1);
    ck_assert_int_ge(me, 0);
    ck_assert_int_lt(me, N);
}
END_TEST

START_TEST(test_all_reduce_f32)
{
    float b[5], a[5];
    for (int i = 0; i < 5; i++)
        b[i] = a[i] = (float)(me + i);
    ck_assert_int_eq(co->all_reduce(cs, b, 5, LATHE_F32, LATHE_REDUCE_SUM), LATHE_OK);
    ck_assert_int_eq(co->all_reduce(cs, a, 5, LATHE_F32, LATHE_REDUCE_AVG), LATHE_OK);
    for (int i = 0; i < 5; i++) {
        float sum = (float)(N * i + N * (N - 1) / 2);
        ck_assert_float_eq_tol(b[i], sum, 1e-5);
        ck_assert_float_eq_tol(a[i], sum / (float)N, 1e-5);
    }
}
END_TEST

START_TEST(test_all_reduce_bf16)
{
    /* small integers and halves are exact in bf16 */
    uint16_t h[4];
    for (int i = 0; i < 4; i++)
        h[i] = lathe_f32_to_bf16((float)(me + i));
    ck_assert_int_eq(co->all_reduce(cs, h, 4, LATHE_BF16, LATHE_REDUCE_SUM), LATHE_OK);
    for (int i = 0; i < 4; i++)
        ck_assert_float_eq(lathe_bf16_to_f32(h[i]), (float)(N * i + N * (N - 1) / 2));
    h[0] = lathe_f32_to_bf16(2.0f * (float)me);
    ck_assert_int_eq(co->all_reduce(cs, h, 1, LATHE_BF16, LATHE_REDUCE_AVG), LATHE_OK);
    ck_assert_float_eq(lathe_bf16_to_f32(h[0]), (float)(N - 1));
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
    ck_assert_int_eq(co->reduce_scatter(cs, send, recv, C, LATHE_F32, LATHE_REDUCE_AVG), LATHE_OK);
    ck_assert_int_eq(co->reduce_scatter(cs, hs, hr, C, LATHE_BF16, LATHE_REDUCE_SUM), LATHE_OK);
    for (int j = 0; j < C; j++) {
        /* mean over ranks of rank*100 is (N-1)*50 */
        ck_assert_float_eq_tol(recv[j], (float)((N - 1) * 50 + me * 10 + j), 1e-4);
        ck_assert_float_eq(lathe_bf16_to_f32(hr[j]), (float)(N * (me + j)));
    }
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
    ck_assert_int_eq(co->all_gather(cs, send, recv, C, LATHE_F32), LATHE_OK);
    for (int r = 0; r < N; r++)
        for (int j = 0; j < C; j++)
            ck_assert_float_eq(recv[r * C + j], (float)(r * 10 + j));
    int64_t v[3] = {me, me, me};
    ck_assert_int_eq(co->broadcast(cs, v, 3, LATHE_I64, N - 1), LATHE_OK);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(v[i], N - 1);
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
    ck_assert_int_eq(co->all_to_all(cs, send, sc, sd, recv, rc, rd, LATHE_I32), LATHE_OK);
    for (int s = 0; s < N; s++)
        for (int64_t k = 0; k < rc[s]; k++)
            ck_assert_int_eq(recv[rd[s] + k], s * 1000 + me * 10 + k);
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
    ck_assert_int_eq(co->all_reduce(cs, i, 2, LATHE_I32, LATHE_REDUCE_SUM), LATHE_EUNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "I32"));
    ck_assert_int_ne(co->all_reduce(cs, f, (int64_t)INT_MAX + 1, LATHE_F32, LATHE_REDUCE_SUM), LATHE_OK);
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "MPI counts are int"));
    ck_assert_int_ne(co->all_reduce(cs, f, 2, LATHE_F32, 7), LATHE_OK);
    ck_assert_int_ne(co->broadcast(cs, f, 2, LATHE_F32, N), LATHE_OK);
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "broadcast from rank"));
    ck_assert_int_ne(co->reduce_scatter(cs, f, f, -1, LATHE_F32, LATHE_REDUCE_SUM), LATHE_OK);
}
END_TEST

/* ---- sub-groups (ABI 1.2 split) ----
 * Each test makes every call on every rank before it asserts anything, so
 * a wrong result fails the test instead of leaving ranks out of step (a
 * rank leaving a test early would hang the others in their next call). */

/* Split by rank parity, key = rank: group g holds ranks g, g+2, ... in
 * that order, so this rank is number me/2 of (N - g + 1)/2; its
 * collectives see only the group. */
START_TEST(test_split_parity)
{
    ck_assert(LATHE_OPS_HAS(co, struct lathe_comm_ops, split));
    void *sub = NULL;
    int g = me % 2, n = (N - g + 1) / 2;
    int st = co->split(cs, g, me, &sub);
    ck_assert_int_eq(st, LATHE_OK);
    ck_assert_ptr_nonnull(sub);
    int sn = co->world_size(sub), sr = co->rank(sub);
    float v[2] = {(float)me, 1.0f};
    int st1 = co->all_reduce(sub, v, 2, LATHE_F32, LATHE_REDUCE_SUM);
    uint16_t h = lathe_f32_to_bf16((float)me);
    int st2 = co->all_reduce(sub, &h, 1, LATHE_BF16, LATHE_REDUCE_AVG);
    int32_t mine = me, *all = malloc((size_t)sn * sizeof *all);
    int st3 = co->all_gather(sub, &mine, all, 1, LATHE_I32);
    int64_t b = me;
    int st4 = co->broadcast(sub, &b, 1, LATHE_I64, sn - 1);
    int st5 = co->broadcast(sub, &b, 1, LATHE_I64, sn); /* refused before any message */
    int st6 = co->barrier(sub);
    co->destroy(sub);
    float one = 1;
    int st7 = co->all_reduce(cs, &one, 1, LATHE_F32, LATHE_REDUCE_SUM);

    ck_assert_int_eq(sn, n);
    ck_assert_int_eq(sr, me / 2);
    ck_assert_int_eq(st1, LATHE_OK);
    float want = 0;
    for (int r = g; r < N; r += 2)
        want += (float)r;
    ck_assert_float_eq(v[0], want);
    ck_assert_float_eq(v[1], (float)n);
    ck_assert_int_eq(st2, LATHE_OK);
    ck_assert_float_eq_tol(lathe_bf16_to_f32(h), want / (float)n, 1e-2);
    ck_assert_int_eq(st3, LATHE_OK);
    for (int i = 0; i < n; i++)
        ck_assert_int_eq(all[i], g + 2 * i);
    free(all);
    /* root n-1 of the group is world rank g + 2(n-1) */
    ck_assert_int_eq(st4, LATHE_OK);
    ck_assert_int_eq(b, g + 2 * (n - 1));
    ck_assert_int_eq(st5, LATHE_EINVAL);
    ck_assert_int_eq(st6, LATHE_OK);
    /* the parent is untouched */
    ck_assert_int_eq(st7, LATHE_OK);
    ck_assert_float_eq(one, (float)N);
}
END_TEST

/* Sub-ranks follow key, then rank in the parent. */
START_TEST(test_split_key_order)
{
    void *a = NULL, *b = NULL;
    int st1 = co->split(cs, 7, -me, &a);
    int st2 = co->split(cs, 0, me / 2, &b); /* ties (pairs share a key) go by rank */
    ck_assert_int_eq(st1, LATHE_OK);
    ck_assert_int_eq(st2, LATHE_OK);
    int an = co->world_size(a), ar = co->rank(a), br = co->rank(b);
    int32_t mine = me, *all = malloc((size_t)an * sizeof *all);
    int st3 = co->all_gather(a, &mine, all, 1, LATHE_I32);
    co->destroy(a);
    co->destroy(b);
    ck_assert_int_eq(an, N);
    ck_assert_int_eq(ar, N - 1 - me);
    ck_assert_int_eq(br, me);
    ck_assert_int_eq(st3, LATHE_OK);
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(all[i], N - 1 - i);
    free(all);
}
END_TEST

/* Split the parity groups again by sub-rank parity: world rank r lands in
 * group (r%2, (r/2)%2), as rank r/4 of it. */
START_TEST(test_split_of_split)
{
    void *a = NULL, *b = NULL;
    int st = co->split(cs, me % 2, me, &a);
    ck_assert_int_eq(st, LATHE_OK);
    int ar = co->rank(a);
    st = co->split(a, ar % 2, ar, &b);
    ck_assert_int_eq(st, LATHE_OK);
    int bn = co->world_size(b), br = co->rank(b);
    float v = (float)me, w = 1;
    int st1 = co->all_reduce(b, &v, 1, LATHE_F32, LATHE_REDUCE_SUM);
    /* the parent goes first: its child keeps working */
    co->destroy(a);
    int st2 = co->all_reduce(b, &w, 1, LATHE_F32, LATHE_REDUCE_SUM);
    co->destroy(b);

    int n = 0;
    float want = 0;
    for (int r = 0; r < N; r++)
        if (r % 2 == me % 2 && (r / 2) % 2 == (me / 2) % 2) {
            n++;
            want += (float)r;
        }
    ck_assert_int_eq(br, me / 4);
    ck_assert_int_eq(bn, n);
    ck_assert_int_eq(st1, LATHE_OK);
    ck_assert_float_eq(v, want);
    ck_assert_int_eq(st2, LATHE_OK);
    ck_assert_float_eq(w, (float)n);
}
END_TEST

/* color -1: in no group, no sub, no error; the others group without it. */
START_TEST(test_split_no_group)
{
    void *sub = (void *)&sub;
    int st = co->split(cs, me == 0 ? -1 : 3, 0, &sub);
    int sn = -1, sr = -1, st1 = LATHE_OK;
    float v = (float)me;
    if (me != 0 && st == LATHE_OK && sub) {
        sn = co->world_size(sub);
        sr = co->rank(sub);
        st1 = co->all_reduce(sub, &v, 1, LATHE_F32, LATHE_REDUCE_SUM);
        co->destroy(sub);
    }
    int st2 = co->barrier(cs);
    ck_assert_int_eq(st, LATHE_OK);
    if (me == 0) {
        ck_assert_ptr_null(sub);
    } else {
        ck_assert_int_eq(sn, N - 1);
        ck_assert_int_eq(sr, me - 1);
        ck_assert_int_eq(st1, LATHE_OK);
        ck_assert_float_eq(v, (float)(N * (N - 1) / 2));
    }
    ck_assert_int_eq(st2, LATHE_OK);
}
END_TEST

/* A refusing rank still takes part as "no group", so nobody hangs. */
START_TEST(test_split_refusals)
{
    void *sub = (void *)&sub;
    ck_assert_int_eq(co->split(cs, -2, me, &sub), LATHE_EINVAL);
    ck_assert_ptr_null(sub);
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "color -2"));
    ck_assert_int_eq(co->split(cs, 0, me, NULL), LATHE_EINVAL);
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "NULL"));
    /* only the last rank refuses: the others form a group without it */
    int last = me == N - 1;
    int st = co->split(cs, last ? -9 : 0, me, &sub), sn = -1;
    if (st == LATHE_OK && sub) {
        sn = co->world_size(sub);
        co->destroy(sub);
    }
    int st2 = co->barrier(cs);
    if (last) {
        ck_assert_int_eq(st, LATHE_EINVAL);
        ck_assert_ptr_null(sub);
    } else {
        ck_assert_int_eq(st, LATHE_OK);
        ck_assert_int_eq(sn, N - 1);
    }
    ck_assert_int_eq(st2, LATHE_OK);
}
END_TEST

static Suite *comm_suite(void)
{
    Suite *s = suite_create("comm");
    TCase *c = tcase_create("Core");
    tcase_add_test(c, test_rank);
    tcase_add_test(c, test_all_reduce_f32);
    tcase_add_test(c, test_all_reduce_bf16);
    tcase_add_test(c, test_reduce_scatter);
    tcase_add_test(c, test_all_gather_broadcast);
    tcase_add_test(c, test_all_to_all_uneven);
    tcase_add_test(c, test_split_parity);
    tcase_add_test(c, test_split_key_order);
    tcase_add_test(c, test_split_of_split);
    tcase_add_test(c, test_split_no_group);
    suite_add_tcase(s, c);
    TCase *l = tcase_create("Limits");
    tcase_add_test(l, test_refusals);
    tcase_add_test(l, test_split_refusals);
    suite_add_tcase(s, l);
    return s;
}

int main(void)
{
    if (getenv("LATHE_SANITIZED")) {
        printf("SKIP: Open MPI's memory hooks and the sanitizers do not mix\n");
        return 77;
    }
    const char *dir = getenv("LATHE_PLUGIN_PATH");
    char path[4096];
    snprintf(path, sizeof path, "%s/lathe-mpi.so", dir ? dir : "plugins/.libs");
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        printf("SKIP: %s\n", dlerror());
        return 77;
    }
    lathe_plugin_describe_fn describe = (lathe_plugin_describe_fn)dlsym(h, LATHE_PLUGIN_SYMBOL);
    const struct lathe_plugin_desc *d = describe ? describe() : NULL;
    if (!d || !d->components || d->components[0].kind != LATHE_KIND_COMM) {
        printf("FAIL: %s describes no communicator\n", path);
        return 1;
    }
    co = d->components[0].ops;
    lathe_config *cfg = lathe_config_load_string("comm.ini", "[comm]\nplugin = mpi\n");
    struct lathe_env env = {.size = sizeof env, .world_size = 1};
    if (!cfg || co->create(lathe_config_section(cfg, "comm"), &env, &cs) != LATHE_OK) {
        printf("FAIL: mpi create: %s\n", lathe_errmsg());
        return 1;
    }
    me = co->rank(cs);
    N = co->world_size(cs);
    setenv("CK_FORK", "no", 1); /* no fork after MPI_Init */
    int rc = lathe_test_run(comm_suite());
    /* every rank's verdict, so that mpirun's status is the suite's; it
     * travels over a sub of the whole world made before the root is
     * destroyed, so a sub outliving the root (and the last destroy
     * finalising MPI) is tested too */
    float bad = rc != 0;
    void *all = NULL;
    if (co->split(cs, 0, me, &all) != LATHE_OK || !all) {
        printf("FAIL: split for the verdict: %s\n", lathe_errmsg());
        bad = 1;
        co->all_reduce(cs, &bad, 1, LATHE_F32, LATHE_REDUCE_SUM);
        co->destroy(cs);
    } else {
        co->destroy(cs);
        if (co->all_reduce(all, &bad, 1, LATHE_F32, LATHE_REDUCE_SUM) != LATHE_OK) {
            printf("FAIL: the verdict's all_reduce on a sub after the root's destroy: %s\n", lathe_errmsg());
            bad = 1;
        }
        co->destroy(all);
    }
    lathe_config_free(cfg);
    dlclose(h);
    return bad > 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
