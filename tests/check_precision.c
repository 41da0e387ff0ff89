/* tests/check_precision.c — mixed precision: the CPU backend's round_to and
 * gemm_lowp slots, the ops under a 16-bit compute dtype, the fp16 loss
 * scaler and the [run] precision keys.
 *
 * Tolerances (relative Frobenius error of an op's result under a 16-bit
 * compute dtype against f32, inputs uniform in [-1, 1), K = 96):
 *   bf16 (8 significant bits, unit roundoff 2^-8 = 3.9e-3): 1e-2
 *   f16 (11 significant bits, unit roundoff 2^-11 = 4.9e-4): 2e-3
 * Each operand element carries a relative error of at most one unit
 * roundoff; over a K-term sum of random signs the errors partly cancel,
 * and rounding the output adds one more: measured about 3e-3 and 4e-4. */
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lathe/lathe.h>

#include "gradcheck.h"
#include "testutil.h"
#include "train/run_internal.h"

static float bits_f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* The reference rounding: the conversions of core/tensor/dtype.c. */
static float ref_round(float x, int dt)
{
    return dt == LATHE_BF16 ? lathe_bf16_to_f32(lathe_f32_to_bf16(x)) : lathe_f16_to_f32(lathe_f32_to_f16(x));
}

static float round1(float x, int dt)
{
    float out;
    lathe_backend_cpu()->round_to(&out, &x, 1, dt);
    return out;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint32_t rnd32(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

static float rndf(void) { return (float)((rnd32() & 0xffffff) / 8388608.0 - 1.0); }

/* ---- round_to -------------------------------------------------------- */

START_TEST(round_bf16_edges)
{
    const int dt = LATHE_BF16;
    /* ties go to the even neighbour: 1 + 2^-8 lies halfway between 1
     * (even) and 1 + 2^-7; 1 + 3 * 2^-8 between 1 + 2^-7 (odd) and 1 + 2^-6 */
    ck_assert_float_eq(round1(1.0f + 0x1p-8f, dt), 1.0f);
    ck_assert_float_eq(round1(1.0f + 3 * 0x1p-8f, dt), 1.0f + 0x1p-6f);
    ck_assert_float_eq(round1(1.0f + 0x1p-8f + 0x1p-20f, dt), 1.0f + 0x1p-7f); /* past the tie */
    ck_assert_float_eq(round1(-(1.0f + 3 * 0x1p-8f), dt), -(1.0f + 0x1p-6f));
    /* beyond bf16's largest finite value (0x7f7f0000) rounds to inf */
    ck_assert(isinf(round1(3.4e38f, dt)) && round1(3.4e38f, dt) > 0);
    ck_assert(isinf(round1(-3.4e38f, dt)) && round1(-3.4e38f, dt) < 0);
    ck_assert_float_eq(round1(bits_f(0x7f7f0000u), dt), bits_f(0x7f7f0000u));
    ck_assert(isinf(round1(INFINITY, dt)));
    /* NaN stays NaN, even one whose payload lies in the low bits only */
    ck_assert(isnan(round1(NAN, dt)));
    ck_assert(isnan(round1(bits_f(0x7f800001u), dt)));
    /* subnormals: bf16 has f32's exponent range, so they keep 7 bits */
    ck_assert_float_eq(round1(bits_f(0x00010000u), dt), bits_f(0x00010000u));
    ck_assert_float_eq(round1(bits_f(0x00000001u), dt), 0.0f);
    ck_assert_uint_eq(f_bits(round1(-0.0f, dt)), 0x80000000u);
    /* every rounding agrees with the f32 -> bf16 -> f32 conversion */
    enum { N = 1 << 20 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
    ck_assert(x && y);
    for (int i = 0; i < N; i++)
        x[i] = bits_f(rnd32() ^ (rnd32() << 16));
    lathe_backend_cpu()->round_to(y, x, N, dt);
    for (int i = 0; i < N; i++) {
        float r = ref_round(x[i], dt);
        ck_assert_msg(isnan(r) ? isnan(y[i]) : f_bits(r) == f_bits(y[i]), "bf16 of 0x%08x: got 0x%08x, want 0x%08x",
                      f_bits(x[i]), f_bits(y[i]), f_bits(r));
    }
    /* in place */
    memcpy(y, x, N * sizeof *x);
    lathe_backend_cpu()->round_to(y, y, N, dt);
    for (int i = 0; i < N; i++)
        ck_assert(isnan(y[i]) || f_bits(y[i]) == f_bits(ref_round(x[i], dt)));
    free(x);
    free(y);
}
END_TEST

START_TEST(round_f16_edges)
{
    const int dt = LATHE_F16;
    ck_assert_float_eq(round1(1.0f + 0x1p-11f, dt), 1.0f);                 /* tie to even */
    ck_assert_float_eq(round1(1.0f + 3 * 0x1p-11f, dt), 1.0f + 0x1p-9f);   /* tie to even */
    ck_assert_float_eq(round1(65504.0f, dt), 65504.0f);                    /* largest finite */
    ck_assert_float_eq(round1(65519.0f, dt), 65504.0f);
    ck_assert(isinf(round1(65520.0f, dt)) && round1(65520.0f, dt) > 0); /* the tie goes to 2^16: inf */
    ck_assert(isinf(round1(-70000.0f, dt)) && round1(-70000.0f, dt) < 0);
    ck_assert(isinf(round1(1e30f, dt)));
    ck_assert(isnan(round1(NAN, dt)));
    ck_assert(isnan(round1(bits_f(0xff800001u), dt)));
    /* subnormals: steps of 2^-24 below 2^-14 */
    ck_assert_float_eq(round1(0x1p-24f, dt), 0x1p-24f);
    ck_assert_float_eq(round1(0x1p-25f, dt), 0.0f);              /* tie between 0 and 2^-24: 0 */
    ck_assert_float_eq(round1(3 * 0x1p-25f, dt), 0x1p-23f);      /* tie between 1 and 2 steps: 2 */
    ck_assert_float_eq(round1(0x1p-14f - 0x1p-30f, dt), 0x1p-14f); /* rounds up into the normals */
    ck_assert_float_eq(round1(1e-10f, dt), 0.0f);
    ck_assert_uint_eq(f_bits(round1(-1e-10f, dt)), 0x80000000u); /* the sign of an underflow stays */
    enum { N = 1 << 20 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
    ck_assert(x && y);
    for (int i = 0; i < N; i++) {
        /* exponents around f16's range, where every case lives */
        uint32_t e = 100 + rnd32() % 60;
        x[i] = i % 16 == 0 ? bits_f(rnd32() ^ (rnd32() << 16)) : bits_f((rnd32() & 0x807fffffu) | (e << 23));
    }
    lathe_backend_cpu()->round_to(y, x, N, dt);
    for (int i = 0; i < N; i++) {
        float r = ref_round(x[i], dt);
        ck_assert_msg(isnan(r) ? isnan(y[i]) : f_bits(r) == f_bits(y[i]), "f16 of 0x%08x: got 0x%08x, want 0x%08x",
                      f_bits(x[i]), f_bits(y[i]), f_bits(r));
    }
    free(x);
    free(y);
}
END_TEST

/* ---- gemm_lowp -------------------------------------------------------- */

/* Random values on a coarse grid (multiples of 2^-4 in [-4, 4)), each
 * nudged by less than half a 16-bit step so that rounding must remove the
 * nudge: with K <= 64 every product and partial sum of grid values is exact
 * in f32, so gemm_lowp must equal the reference bit for bit, whatever the
 * summation order. */
static void fill_nudged(float *x, float *grid, int64_t n, int dt)
{
    float half = dt == LATHE_BF16 ? 0x1p-9f : 0x1p-12f; /* relative, below half a unit */
    for (int64_t i = 0; i < n; i++) {
        float g = (float)((int)(rnd32() % 128) - 64) / 16.0f;
        grid[i] = g;
        x[i] = g + g * half * (float)(rnd32() % 1000) / 1000.0f;
    }
}

/* C[b] = alpha op(A[b]) op(B[b]) + beta C[b] in double, row-major. */
static void ref_gemm(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, const float *B,
                     float beta, float *C, int64_t batch, int64_t sa, int64_t sb, int64_t sc)
{
    for (int64_t b = 0; b < batch; b++)
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                double s = 0;
                for (int64_t k = 0; k < K; k++) {
                    double a = ta ? A[b * sa + k * M + i] : A[b * sa + i * K + k];
                    double bb = tb ? B[b * sb + j * K + k] : B[b * sb + k * N + j];
                    s += a * bb;
                }
                float *c = &C[b * sc + i * N + j];
                *c = (float)(alpha * s + (beta == 0.0f ? 0.0 : beta * (double)*c));
            }
}

START_TEST(gemm_lowp_exact)
{
    const struct lathe_backend_ops *be = lathe_backend_cpu();
    ck_assert(LATHE_OPS_HAS(be, struct lathe_backend_ops, gemm_lowp));
    const int dts[2] = {LATHE_BF16, LATHE_F16};
    for (int d = 0; d < 2; d++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int shared = 0; shared < 2; shared++) {
                    int dt = dts[d];
                    int64_t M = 37, N = 29, K = 64, batch = 3;
                    int64_t sa = M * K, sb = shared ? 0 : K * N, sc = M * N;
                    int64_t na = batch * sa, nb = shared ? K * N : batch * sb, nc = batch * sc;
                    float *A = malloc(na * 4), *Ag = malloc(na * 4), *B = malloc(nb * 4), *Bg = malloc(nb * 4);
                    float *C = malloc(nc * 4), *R = malloc(nc * 4), *A0 = malloc(na * 4);
                    ck_assert(A && Ag && B && Bg && C && R && A0);
                    fill_nudged(A, Ag, na, dt);
                    fill_nudged(B, Bg, nb, dt);
                    memcpy(A0, A, na * 4);
                    for (int64_t i = 0; i < nc; i++)
                        C[i] = R[i] = (float)((int)(rnd32() % 64) - 32) / 8.0f;
                    /* beta = 1 accumulates, alpha a power of two keeps it exact */
                    be->gemm_lowp(dt, 0, ta, tb, M, N, K, 0.5f, A, B, 1.0f, C, batch, sa, sb, sc);
                    ref_gemm(ta, tb, M, N, K, 0.5f, Ag, Bg, 1.0f, R, batch, sa, sb, sc);
                    for (int64_t i = 0; i < nc; i++)
                        ck_assert_msg(C[i] == R[i], "dt %d ta %d tb %d shared %d: C[%lld] %.9g, want %.9g", dt, ta,
                                      tb, shared, (long long)i, (double)C[i], (double)R[i]);
                    ck_assert_msg(memcmp(A, A0, na * 4) == 0, "gemm_lowp modified its input A");
                    /* round_c: the result is the rounded reference */
                    be->gemm_lowp(dt, 1, ta, tb, M, N, K, 1.0f, A, B, 0.0f, C, batch, sa, sb, sc);
                    ref_gemm(ta, tb, M, N, K, 1.0f, Ag, Bg, 0.0f, R, batch, sa, sb, sc);
                    for (int64_t i = 0; i < nc; i++)
                        ck_assert_msg(C[i] == ref_round(R[i], dt), "round_c: C[%lld] %.9g, want %.9g", (long long)i,
                                      (double)C[i], (double)ref_round(R[i], dt));
                    /* and the f32 GEMM of the nudged inputs differs: the rounding happened */
                    be->gemm(ta, tb, M, N, K, 1.0f, A, B, 0.0f, C, batch, sa, sb, sc);
                    int differs = 0;
                    for (int64_t i = 0; i < nc; i++)
                        differs |= C[i] != R[i];
                    ck_assert(differs);
                    free(A), free(Ag), free(B), free(Bg), free(C), free(R), free(A0);
                }
}
END_TEST

/* Random (not grid) inputs: gemm_lowp equals the double-precision product
 * of explicitly rounded operands up to f32 summation. */
START_TEST(gemm_lowp_random)
{
    const struct lathe_backend_ops *be = lathe_backend_cpu();
    int64_t M = 70, N = 90, K = 300;
    float *A = malloc(M * K * 4), *B = malloc(K * N * 4), *Ar = malloc(M * K * 4), *Br = malloc(K * N * 4);
    float *C = malloc(M * N * 4), *R = malloc(M * N * 4);
    ck_assert(A && B && Ar && Br && C && R);
    for (int64_t i = 0; i < M * K; i++)
        A[i] = rndf();
    for (int64_t i = 0; i < K * N; i++)
        B[i] = rndf();
    const int dts[2] = {LATHE_BF16, LATHE_F16};
    for (int d = 0; d < 2; d++) {
        for (int64_t i = 0; i < M * K; i++)
            Ar[i] = ref_round(A[i], dts[d]);
        for (int64_t i = 0; i < K * N; i++)
            Br[i] = ref_round(B[i], dts[d]);
        be->gemm_lowp(dts[d], 0, 0, 1, M, N, K, 1.0f, A, B, 0.0f, C, 1, 0, 0, 0);
        /* B used as [N, K] transposed: same buffer, read as such */
        ref_gemm(0, 1, M, N, K, 1.0f, Ar, Br, 0.0f, R, 1, 0, 0, 0);
        for (int64_t i = 0; i < M * N; i++)
            /* f32 summation of K products of magnitude <= 1: K * 2^-24 bounds the order's effect */
            ck_assert_msg(fabsf(C[i] - R[i]) <= (float)K * 0x1p-24f * 4, "C[%lld] %.9g vs %.9g", (long long)i,
                          (double)C[i], (double)R[i]);
    }
    free(A), free(B), free(Ar), free(Br), free(C), free(R);
}
END_TEST

/* ---- ops under a 16-bit compute dtype -------------------------------- */

static double rel_err(const float *a, const float *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static lathe_tensor *rand_t(int ndim, const int64_t *shape, uint64_t seed, int rg)
{
    lathe_tensor *t = lathe_gc_rand(ndim, shape, -1.0f, 1.0f, seed, rg);
    ck_assert_ptr_nonnull(t);
    return t;
}

/* out and the gradients of x and w for L = sum(out * g), under dt */
struct lin_result {
    float out[64 * 48], dx[64 * 96], dw[48 * 96], db[48];
};

static void run_linear(int dt, int matmul, lathe_tensor *x, lathe_tensor *w, lathe_tensor *b, lathe_tensor *g,
                       struct lin_result *r)
{
    ck_assert_int_eq(lathe_set_compute_dtype(dt), LATHE_OK);
    lathe_tensor_zero_grad(x);
    lathe_tensor_zero_grad(w);
    if (b)
        lathe_tensor_zero_grad(b);
    lathe_scope_push();
    lathe_tensor *y = matmul ? lathe_matmul(x, w, 1) : lathe_linear(x, w, b);
    ck_assert_msg(y != NULL, "%s", lathe_errmsg());
    memcpy(r->out, y->data, sizeof r->out);
    lathe_tensor *l = lathe_sum(lathe_mul(y, g));
    ck_assert_ptr_nonnull(l);
    ck_assert_int_eq(lathe_backward(l, 1.0f), LATHE_OK);
    memcpy(r->dx, lathe_tensor_grad(x)->data, sizeof r->dx);
    if (w->requires_grad)
        memcpy(r->dw, lathe_tensor_grad(w)->data, sizeof r->dw);
    if (b)
        memcpy(r->db, lathe_tensor_grad(b)->data, sizeof r->db);
    lathe_scope_pop();
    lathe_set_compute_dtype(LATHE_F32);
}

START_TEST(linear_bf16_f16_close_to_f32)
{
    int64_t xs[2] = {64, 96}, ws[2] = {48, 96}, bs[1] = {48}, gs[2] = {64, 48};
    lathe_tensor *x = rand_t(2, xs, 1, 1), *w = rand_t(2, ws, 2, 1), *b = rand_t(1, bs, 3, 1);
    lathe_tensor *g = rand_t(2, gs, 4, 0);
    static struct lin_result ref, got;
    const int dts[2] = {LATHE_BF16, LATHE_F16};
    const double tol[2] = {1e-2, 2e-3};
    for (int matmul = 0; matmul < 2; matmul++) {
        run_linear(LATHE_F32, matmul, x, w, matmul ? NULL : b, g, &ref);
        for (int d = 0; d < 2; d++) {
            run_linear(dts[d], matmul, x, w, matmul ? NULL : b, g, &got);
            double eo = rel_err(got.out, ref.out, 64 * 48), ex = rel_err(got.dx, ref.dx, 64 * 96),
                   ew = rel_err(got.dw, ref.dw, 48 * 96);
            ck_assert_msg(eo < tol[d] && ex < tol[d] && ew < tol[d],
                          "%s %s: relative errors out %.3g dx %.3g dw %.3g (tolerance %g)",
                          matmul ? "matmul" : "linear", lathe_dtype_name(dts[d]), eo, ex, ew, tol[d]);
            /* and not the f32 numbers: the products really were 16-bit */
            ck_assert_msg(eo > 1e-6 && ew > 1e-6, "no rounding seen (%g, %g)", eo, ew);
            /* the forward result is a 16-bit value, as autocast's would be */
            for (int i = 0; i < 64 * 48; i++)
                ck_assert_float_eq(got.out[i], ref_round(got.out[i], dts[d]));
            if (!matmul)
                ck_assert(rel_err(got.db, ref.db, 48) < 1e-6); /* the bias gradient is a plain f32 sum */
        }
    }
    /* inputs untouched, and f32 compute gives the f32 numbers again */
    run_linear(LATHE_F32, 1, x, w, NULL, g, &got);
    ck_assert(memcmp(got.out, ref.out, sizeof got.out) == 0);
    lathe_tensor_free(x), lathe_tensor_free(w), lathe_tensor_free(b), lathe_tensor_free(g);
}
END_TEST

/* A frozen bf16 weight (LoRA's base) under bf16 compute: the weight is
 * already a bf16 value, so only x is rounded. */
START_TEST(linear_frozen_bf16_weight)
{
    int64_t xs[2] = {64, 96}, ws[2] = {48, 96}, gs[2] = {64, 48};
    lathe_tensor *x = rand_t(2, xs, 11, 1), *w = rand_t(2, ws, 12, 0), *g = rand_t(2, gs, 13, 0);
    ck_assert_int_eq(lathe_tensor_set_dtype(w, LATHE_BF16), LATHE_OK);
    static struct lin_result ref, got;
    run_linear(LATHE_F32, 0, x, w, NULL, g, &ref);
    run_linear(LATHE_BF16, 0, x, w, NULL, g, &got);
    ck_assert(rel_err(got.out, ref.out, 64 * 48) < 1e-2);
    ck_assert(rel_err(got.dx, ref.dx, 64 * 96) < 1e-2);
    lathe_tensor_free(x), lathe_tensor_free(w), lathe_tensor_free(g);
}
END_TEST

START_TEST(linear_accumulate_bf16)
{
    int64_t ys[2] = {32, 48}, xs[2] = {32, 96}, ws[2] = {48, 96};
    lathe_tensor *y0 = rand_t(2, ys, 21, 0), *x = rand_t(2, xs, 22, 0), *w = rand_t(2, ws, 23, 0);
    float ref[32 * 48], got[32 * 48];
    for (int pass = 0; pass < 2; pass++) {
        lathe_set_compute_dtype(pass ? LATHE_BF16 : LATHE_F32);
        lathe_scope_push();
        lathe_tensor *y = lathe_scale(y0, 1.0f);
        lathe_tensor *o = lathe_linear_accumulate(y, x, w, 0.5f);
        ck_assert_msg(o != NULL, "%s", lathe_errmsg());
        memcpy(pass ? got : ref, o->data, sizeof got);
        lathe_scope_pop();
    }
    lathe_set_compute_dtype(LATHE_F32);
    ck_assert(rel_err(got, ref, 32 * 48) < 1e-2 && rel_err(got, ref, 32 * 48) > 1e-6);
    lathe_tensor_free(y0), lathe_tensor_free(x), lathe_tensor_free(w);
}
END_TEST

START_TEST(sdpa_bf16_close_to_f32)
{
    int64_t s[4] = {2, 16, 4, 8}, skv[4] = {2, 16, 2, 8};
    lathe_tensor *q = rand_t(4, s, 31, 1), *k = rand_t(4, skv, 32, 1), *v = rand_t(4, skv, 33, 1);
    lathe_tensor *g = rand_t(4, s, 34, 0);
    int64_t nq = lathe_tensor_numel(q), nk = lathe_tensor_numel(k);
    float *q0 = malloc(nq * 4), *out[2], *dq[2], *dk[2];
    ck_assert(q0);
    memcpy(q0, q->data, nq * 4);
    for (int pass = 0; pass < 2; pass++) {
        out[pass] = malloc(nq * 4), dq[pass] = malloc(nq * 4), dk[pass] = malloc(nk * 4);
        lathe_set_compute_dtype(pass ? LATHE_BF16 : LATHE_F32);
        lathe_tensor_zero_grad(q), lathe_tensor_zero_grad(k), lathe_tensor_zero_grad(v);
        lathe_scope_push();
        lathe_tensor *o = lathe_sdpa(q, k, v, NULL, 0.0f);
        ck_assert_msg(o != NULL, "%s", lathe_errmsg());
        memcpy(out[pass], o->data, nq * 4);
        ck_assert_int_eq(lathe_backward(lathe_sum(lathe_mul(o, g)), 1.0f), LATHE_OK);
        memcpy(dq[pass], lathe_tensor_grad(q)->data, nq * 4);
        memcpy(dk[pass], lathe_tensor_grad(k)->data, nk * 4);
        lathe_scope_pop();
    }
    lathe_set_compute_dtype(LATHE_F32);
    ck_assert_msg(memcmp(q0, q->data, nq * 4) == 0, "lathe_sdpa modified q");
    double eo = rel_err(out[1], out[0], nq), eq = rel_err(dq[1], dq[0], nq), ek = rel_err(dk[1], dk[0], nk);
    ck_assert_msg(eo < 1e-2 && eq < 2e-2 && ek < 2e-2 && eo > 1e-6, "sdpa bf16: out %.3g dq %.3g dk %.3g", eo, eq, ek);
    for (int64_t i = 0; i < nq; i++)
        ck_assert_float_eq(out[1][i], ref_round(out[1][i], LATHE_BF16));
    for (int p = 0; p < 2; p++)
        free(out[p]), free(dq[p]), free(dk[p]);
    free(q0);
    lathe_tensor_free(q), lathe_tensor_free(k), lathe_tensor_free(v), lathe_tensor_free(g);
}
END_TEST

static lathe_tensor *gc_linear(lathe_tensor *const *in, void *ctx)
{
    (void)ctx;
    return lathe_linear(in[0], in[1], in[2]);
}

/* After a 16-bit phase, f32 mode is f32 again: finite differences agree. */
START_TEST(gradcheck_f32_after_lowp)
{
    lathe_set_compute_dtype(LATHE_BF16);
    lathe_set_compute_dtype(LATHE_F32);
    ck_assert_int_eq(lathe_compute_dtype(), LATHE_F32);
    int64_t xs[2] = {5, 7}, ws[2] = {4, 7}, bs[1] = {4};
    lathe_tensor *in[3] = {rand_t(2, xs, 41, 1), rand_t(2, ws, 42, 1), rand_t(1, bs, 43, 1)};
    char msg[512];
    ck_assert_msg(lathe_gradcheck(gc_linear, in, 3, NULL, 1e-2, 1e-2, msg, sizeof msg) == 0, "%s", msg);
    /* and under bf16 the same check fails: the finite differences see the rounding */
    lathe_set_compute_dtype(LATHE_BF16);
    int bad = lathe_gradcheck(gc_linear, in, 3, NULL, 1e-3, 1e-3, msg, sizeof msg);
    lathe_set_compute_dtype(LATHE_F32);
    ck_assert_msg(bad, "bf16 rounding went unseen by finite differences");
    for (int i = 0; i < 3; i++)
        lathe_tensor_free(in[i]);
}
END_TEST

START_TEST(compute_dtype_refuses_others)
{
    ck_assert_int_ne(lathe_set_compute_dtype(LATHE_I32), LATHE_OK);
    ck_assert_int_eq(lathe_compute_dtype(), LATHE_F32);
}
END_TEST

/* ---- the loss scaler -------------------------------------------------- */

START_TEST(scaler_rule)
{
    struct lathe_loss_scaler s = {.enabled = 1, .dynamic = 1, .scale = 65536.0, .growth_interval = 3};
    ck_assert_int_eq(lathe_loss_scaler_update(&s, 1), 0);
    ck_assert_int_eq(lathe_loss_scaler_update(&s, 1), 0);
    ck_assert(s.scale == 65536.0 && s.clean_steps == 2);
    ck_assert_int_eq(lathe_loss_scaler_update(&s, 0), 1); /* overflow: skip, halve, count again from 0 */
    ck_assert(s.scale == 32768.0 && s.clean_steps == 0 && s.skipped_steps == 1);
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(lathe_loss_scaler_update(&s, 1), 0);
    ck_assert(s.scale == 32768.0);
    ck_assert_int_eq(lathe_loss_scaler_update(&s, 1), 0); /* the third clean step in a row: grow */
    ck_assert(s.scale == 65536.0 && s.clean_steps == 0);
    /* a fixed scale skips but never changes */
    struct lathe_loss_scaler f = {.enabled = 1, .scale = 1024.0, .growth_interval = 1};
    ck_assert_int_eq(lathe_loss_scaler_update(&f, 0), 1);
    ck_assert_int_eq(lathe_loss_scaler_update(&f, 1), 0);
    ck_assert(f.scale == 1024.0 && f.skipped_steps == 1);
    /* growth stops short of f32 overflow */
    struct lathe_loss_scaler big = {.enabled = 1, .dynamic = 1, .scale = 0x1p127, .growth_interval = 1};
    lathe_loss_scaler_update(&big, 1);
    ck_assert(big.scale == 0x1p127);
    /* disabled: never skips */
    struct lathe_loss_scaler off = {0};
    ck_assert_int_eq(lathe_loss_scaler_update(&off, 0), 0);
}
END_TEST

/* ---- runs ------------------------------------------------------------- */

static char *scratch_dir(void)
{
    char *t = strdup("/tmp/lathe-prec-XXXXXX");
    ck_assert(t && mkdtemp(t));
    return t;
}

static void rm_rf(const char *path)
{
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                char p[4300];
                snprintf(p, sizeof p, "%s/%s", path, e->d_name);
                rm_rf(p);
            }
        closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

/* A small run's INI in dir with `extra_run` lines in [run]; returns its path. */
static const char *write_ini(const char *dir, const char *name, const char *extra_run, int steps)
{
    static char ini[4200];
    char path[4200];
    snprintf(path, sizeof path, "%s/corpus.txt", dir);
    FILE *f = fopen(path, "w");
    ck_assert(f);
    for (int i = 0; i < 200; i++)
        fprintf(f, "abcabd abca %d\n", i % 7);
    fclose(f);
    snprintf(ini, sizeof ini, "%s/%s.ini", dir, name);
    f = fopen(ini, "w");
    ck_assert(f);
    fprintf(f,
            "[run]\noutput_dir = %s/%s\nseed = 3\n%s\n"
            "[model]\nplugin = gpt2\nlayers = 1\nheads = 2\nembd = 16\nvocab_size = 256\ncontext = 16\n"
            "[data]\nplugin = text\npath = %s\nseq_len = 16\neval_fraction = 0.1\n"
            "[optim]\nplugin = adamw\nlr = 1e-2\n"
            "[train]\nsteps = %d\nbatch_size = 2\nlog_every = 1\ncheckpoint_every = 3\nsave_final = false\n"
            "[log]\ntensorboard = false\njsonl = false\n",
            dir, name, extra_run, path, steps);
    fclose(f);
    return ini;
}

static int plugins_present(void)
{
    const char *p = getenv("LATHE_PLUGIN_PATH");
    return p && *p;
}

/* Each refused setting names its key. */
START_TEST(config_keys)
{
    char *dir = scratch_dir();
    struct {
        const char *run, *want;
    } cases[] = {
        {"precision = bf16\nloss_scale = dynamic", "loss_scale"},
        {"precision = fp32\nloss_scale_init = 1024", "loss_scale_init"},
        {"precision = bf16\nloss_scale_growth_interval = 3", "loss_scale_growth_interval"},
        {"precision = fp16\nloss_scale = huge", "loss_scale"},
        {"precision = fp16\nloss_scale = -4", "loss_scale"},
        {"precision = fp16\nloss_scale = 1024\nloss_scale_init = 4096", "loss_scale_init"},
        {"precision = fp16\nloss_scale_growth_interval = 0", "loss_scale_growth_interval"},
        {"precision = fp8", "precision"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct lathe_run_opts o = {.ini_path = write_ini(dir, "bad", cases[i].run, 3)};
        struct lathe_run *run = NULL;
        ck_assert_msg(lathe_run_create(&run, &o) != LATHE_OK, "accepted: %s", cases[i].run);
        ck_assert_msg(strstr(lathe_errmsg(), cases[i].want), "'%s': message does not name %s: %s", cases[i].run,
                      cases[i].want, lathe_errmsg());
        ck_assert_int_eq(lathe_compute_dtype(), LATHE_F32); /* a failed run leaves f32 behind */
    }
    rm_rf(dir);
    free(dir);
}
END_TEST

static void train(const char *ini, int resume, struct lathe_loss_scaler *sc, float *p0)
{
    struct lathe_run_opts o = {.ini_path = ini, .resume = resume};
    struct lathe_run *run = NULL;
    ck_assert_msg(lathe_run_create(&run, &o) == LATHE_OK, "%s", lathe_errmsg());
    ck_assert_int_eq(lathe_compute_dtype(), LATHE_F16);
    ck_assert_msg(lathe_run_train(run) == LATHE_OK, "%s", lathe_errmsg());
    *sc = run->scaler;
    *p0 = lathe_tensor_f32(run->trainable[0])[0];
    lathe_run_destroy(run);
    ck_assert_int_eq(lathe_compute_dtype(), LATHE_F32);
}

/* An fp16 run: the scale grows every 2 clean steps; a resumed run
 * continues with the checkpoint's scale to the same parameters. */
START_TEST(fp16_run_grows_and_resumes)
{
    if (!plugins_present())
        return;
    char *dir = scratch_dir();
    struct lathe_loss_scaler a, b;
    float pa, pb;
    const char *fp16 = "precision = fp16\nloss_scale_init = 1024\nloss_scale_growth_interval = 2";
    train(write_ini(dir, "full", fp16, 6), 0, &a, &pa);
    ck_assert_msg(a.skipped_steps == 0 && a.scale == 1024.0 * 8 && a.clean_steps == 0,
                  "after 6 clean steps with interval 2: scale %g (want 8192), clean %lld, skipped %lld", a.scale,
                  (long long)a.clean_steps, (long long)a.skipped_steps);
    train(write_ini(dir, "half", fp16, 3), 0, &b, &pb);
    ck_assert(b.scale == 2048.0 && b.clean_steps == 1);
    train(write_ini(dir, "half", fp16, 6), 1, &b, &pb);
    ck_assert_msg(b.scale == a.scale && b.clean_steps == a.clean_steps && pa == pb,
                  "resumed: scale %g vs %g, param %.9g vs %.9g", b.scale, a.scale, (double)pb, (double)pa);
    rm_rf(dir);
    free(dir);
}
END_TEST

/* An absurd initial scale overflows: steps are skipped and the scale
 * halves until it fits. */
START_TEST(fp16_run_backs_off)
{
    if (!plugins_present())
        return;
    char *dir = scratch_dir();
    struct lathe_loss_scaler a;
    float pa;
    /* 2^36: the gradients reach f16's range after about 20 halvings */
    train(write_ini(dir, "big", "precision = fp16\nloss_scale_init = 68719476736", 30), 0, &a, &pa);
    ck_assert_msg(a.skipped_steps > 0 && a.skipped_steps < 30, "skipped %lld, scale %g", (long long)a.skipped_steps,
                  a.scale);
    /* every skip halved the scale (no growth within 2000 steps) */
    ck_assert(a.scale == ldexp(1.0, 36 - (int)a.skipped_steps));
    rm_rf(dir);
    free(dir);
}
END_TEST

static Suite *precision_suite(void)
{
    Suite *s = suite_create("precision");
    TCase *c = tcase_create("Core");
    tcase_set_timeout(c, 120);
    tcase_add_test(c, round_bf16_edges);
    tcase_add_test(c, round_f16_edges);
    tcase_add_test(c, gemm_lowp_exact);
    tcase_add_test(c, gemm_lowp_random);
    tcase_add_test(c, linear_bf16_f16_close_to_f32);
    tcase_add_test(c, linear_frozen_bf16_weight);
    tcase_add_test(c, linear_accumulate_bf16);
    tcase_add_test(c, sdpa_bf16_close_to_f32);
    tcase_add_test(c, gradcheck_f32_after_lowp);
    tcase_add_test(c, scaler_rule);
    tcase_add_test(c, fp16_run_grows_and_resumes);
    tcase_add_test(c, fp16_run_backs_off);
    suite_add_tcase(s, c);
    TCase *l = tcase_create("Limits");
    tcase_add_test(l, compute_dtype_refuses_others);
    tcase_add_test(l, config_keys);
    suite_add_tcase(s, l);
    return s;
}

int main(void) { return lathe_test_run(precision_suite()); }
