/* core/cpu/lowp.c — 16-bit compute emulated in f32 (lathe/backend.h, slots
 * gemm_lowp and round_to).
 *
 * Why emulation is exact: a bf16 value has an 8-bit significand and an f16
 * value an 11-bit one, so the product of two of either kind has at most 16
 * or 22 significant bits and fits the 24 of an f32 exactly (f16 exponents,
 * 2^-24 to 2^15, keep every such product inside f32's normal range; bf16
 * shares f32's exponent range, so a product can overflow or underflow there
 * exactly as it would on a tensor core accumulating in f32). Rounding A and
 * B into temporaries and calling the f32 GEMM therefore gives precisely a
 * GEMM of 16-bit inputs with f32 accumulation, up to the order in which the
 * f32 sums are taken. The cost is the rounding passes and the temporaries,
 * each the size of its operand. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <lathe/tensor.h>

#include "cpu.h"

/* Below this many elements a rounding pass stays on one thread. */
#define ROUND_PARALLEL_MIN (1 << 15)

/* Round to nearest even at bit 16: the bf16 value kept in an f32. A NaN
 * stays a (quiet) NaN whose bits bf16 can hold, as lathe_f32_to_bf16 makes
 * it; f32 values beyond bf16's largest finite value round to +-inf. */
static inline float round_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        u = (u & 0xffff0000u) | 0x00400000u;
    else
        u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

/* IEEE binary16 round to nearest even, kept in an f32: 11 significant
 * bits for normal values, the fixed step 2^-24 below 2^-14 (subnormals),
 * +-inf from 65520 up (65520 is the tie between 65504 and 2^16, and ties go
 * to the even 2^16, which overflows). NaN stays NaN. Every case is computed
 * and one selected, so that the loop vectorises: 0.5 ns per element
 * against 6 with branches and nearbyintf (gradients are full of values
 * in f16's subnormal range; one core, SSE2). */
static inline float round_f16(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    uint32_t a = u & 0x7fffffffu, s = u ^ a;
    float af;
    memcpy(&af, &a, 4);
    /* normal: round at bit 13 */
    uint32_t r = (a + 0xfffu + ((a >> 13) & 1u)) & ~0x1fffu;
    /* below 2^-14: in [0.5, 1) an f32's step is 2^-24, so adding and
     * removing 0.5 rounds to that step, ties to even (exact otherwise) */
    float sf = (af + 0.5f) - 0.5f;
    uint32_t sub;
    memcpy(&sub, &sf, 4);
    /* selections as masks: GCC leaves ?: as branches here */
    uint32_t m = 0u - (uint32_t)(a < 0x38800000u);
    r = (sub & m) | (r & ~m);
    m = 0u - (uint32_t)(a >= 0x477ff000u);
    r = (0x7f800000u & m) | (r & ~m);
    m = 0u - (uint32_t)(a > 0x7f800000u);
    r = (((a & 0xffffe000u) | 0x00400000u) & m) | (r & ~m);
    u = s | r;
    memcpy(&x, &u, 4);
    return x;
}

void lathe_cpu_round_to(float *out, const float *x, int64_t n, int dtype)
{
    if (dtype == LATHE_BF16) {
#pragma omp parallel for simd schedule(static) if (n >= ROUND_PARALLEL_MIN)
        for (int64_t i = 0; i < n; i++)
            out[i] = round_bf16(x[i]);
    } else if (dtype == LATHE_F16) {
#pragma omp parallel for simd schedule(static) if (n >= ROUND_PARALLEL_MIN)
        for (int64_t i = 0; i < n; i++)
            out[i] = round_f16(x[i]);
    } else if (out != x) {
        /* F32: nothing to round */
        memmove(out, x, (size_t)n * sizeof *out);
    }
}

/* `items` blocks of `n` elements at stride `stride` from x, rounded into a
 * compact buffer (block i at i * n). */
static void round_items(float *dst, const float *x, int64_t items, int64_t n, int64_t stride, int dtype)
{
    if (items == 1 || stride == n) {
        lathe_cpu_round_to(dst, x, items * n, dtype);
        return;
    }
    for (int64_t i = 0; i < items; i++)
        lathe_cpu_round_to(dst + i * n, x + i * stride, n, dtype);
}

void lathe_cpu_gemm_lowp(int dtype, int round_c, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                         float alpha, const float *A, const float *B, float beta, float *C, int64_t batch,
                         int64_t sa, int64_t sb, int64_t sc)
{
    if (M <= 0 || N <= 0 || batch <= 0)
        return;
    if (dtype != LATHE_BF16 && dtype != LATHE_F16) {
        lathe_cpu_gemm(trans_a, trans_b, M, N, K, alpha, A, B, beta, C, batch, sa, sb, sc);
        return;
    }
    /* a stride of 0 shares one item across the batch: round it once */
    int64_t na = sa ? batch : 1, nb = sb ? batch : 1;
    /* one temporary for both operands; glibc serves repeated large
     * requests from its heap after the first (its mmap threshold adapts),
     * so this costs no page faults per call (a buffer kept between calls
     * measured no faster) */
    float *ra = K > 0 ? lathe_cpu_alloc((size_t)(na * M * K + nb * K * N) * sizeof *ra) : NULL;
    if (K > 0 && !ra) {
        /* slots return void, so out of memory cannot be reported here; the
         * product is still made, with f32 operands (the next allocation of
         * the op that called will fail and report) */
        lathe_cpu_gemm(trans_a, trans_b, M, N, K, alpha, A, B, beta, C, batch, sa, sb, sc);
    } else {
        float *rb = ra ? ra + na * M * K : NULL;
        if (K > 0) {
            round_items(ra, A, na, M * K, sa, dtype);
            round_items(rb, B, nb, K * N, sb, dtype);
        }
        lathe_cpu_gemm(trans_a, trans_b, M, N, K, alpha, ra ? ra : A, rb ? rb : B, beta, C, batch,
                       sa ? M * K : 0, sb ? K * N : 0, sc);
        lathe_cpu_free(ra);
    }
    if (round_c) {
        if (batch == 1 || sc == M * N)
            lathe_cpu_round_to(C, C, batch * M * N, dtype);
        else
            for (int64_t i = 0; i < batch; i++)
                lathe_cpu_round_to(C + i * sc, C + i * sc, M * N, dtype);
    }
}
