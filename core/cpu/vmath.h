/* core/cpu/vmath.h — exp and sigmoid written so that GCC vectorises them
 * inside `#pragma omp simd` loops at the default -O2.
 *
 * Why not expf: glibc only offers vector expf under -ffast-math, and at -O2
 * GCC will not if-convert float comparisons (-ftrapping-math), so a loop
 * calling expf or clamping with `x < lo ? lo : x` stays scalar. Here every
 * select is an integer operation on the float's bits, and no step can make
 * an infinity or NaN, so -ffast-math (finite-math-only) cannot change the
 * result either.
 *
 * Method: Cody–Waite range reduction x = n ln2 + r, |r| <= ln2/2, then the
 * degree-7 Taylor polynomial of e^r (truncation error < 1e-8 relative) and
 * 2^n built in the exponent field. Measured against glibc expf over every
 * float in [-87, 0]: worst relative error 1.2e-7 (one ulp). */
#ifndef LATHE_CORE_CPU_VMATH_H
#define LATHE_CORE_CPU_VMATH_H

#include <stdint.h>
#include <string.h>

#if defined(__GNUC__)
#define LATHE_VINLINE static inline __attribute__((always_inline))
#else
#define LATHE_VINLINE static inline
#endif

/* The default x86-64 target has only 4-wide SSE2, where these loops run
 * 3-4x slower than with AVX2/AVX-512. LATHE_VCLONES on a (non-OpenMP)
 * function makes GCC build it for each level and pick one at load time
 * (an ifunc), so a plain build runs at the speed of -march=native. Put it
 * on the per-row or per-block worker that an OpenMP loop calls: OpenMP
 * outlines its loop bodies before cloning happens. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__ELF__) && \
    !defined(LATHE_NO_CLONES)
#if __GNUC__ >= 11
#define LATHE_VCLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LATHE_VCLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#else
#define LATHE_VCLONES
#endif

/* IEEE semantics for a function even in a -ffast-math build: for formulas
 * that cancel (s (1 + x (1 - s)) near s = 1) or must pass NaN through. */
#if defined(__GNUC__) && !defined(__clang__)
#define LATHE_STRICT_MATH __attribute__((optimize("no-fast-math")))
#else
#define LATHE_STRICT_MATH
#endif

LATHE_VINLINE int32_t lathe_vm_bits(float f)
{
    int32_t i;
    memcpy(&i, &f, sizeof i);
    return i;
}

LATHE_VINLINE float lathe_vm_float(int32_t i)
{
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}

/* e^(-|x|): exp of a non-positive argument (the sign of x is ignored).
 * Exactly 0 below -87 (where e^x nears the smallest normal float) and for
 * -inf; 1 for ±0. */
LATHE_VINLINE float lathe_vm_expneg(float x)
{
    /* As int32, a negative float's bits grow with its magnitude, so the
     * clamp at -87 is an integer min (0xC2AE0000 is -87.0f). */
    const int32_t lo = (int32_t)0xC2AE0000;
    int32_t xb = lathe_vm_bits(x) | INT32_MIN;
    int32_t keep = xb > lo ? 0 : -1;
    xb = xb > lo ? lo : xb;
    float xc = lathe_vm_float(xb);
    /* n = round(x / ln2) for x <= 0, by truncating the positive 0.5 - t */
    float t = xc * 1.44269504f;
    int32_t n = -(int32_t)(0.5f - t);
    float fn = (float)n;
    /* ln2 split in a high part exact in n * hi and a low correction */
    float r = xc - fn * 0.693145752f;
    r = r - fn * 1.42860677e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* n >= -126 here, so n + 127 is a normal biased exponent */
    float s = lathe_vm_float(((n + 127) << 23) & keep);
    return p * s;
}

/* 1 / (1 + e^-z) for any finite z, from e^-|z| so nothing overflows:
 * z >= 0: 1 / (1 + e), z < 0: e / (1 + e). */
LATHE_VINLINE float lathe_vm_sigmoid(float z)
{
    float e = lathe_vm_expneg(z);
    int32_t neg = lathe_vm_bits(z) >> 31; /* all ones when z < 0 */
    int32_t num = (lathe_vm_bits(1.0f) & ~neg) | (lathe_vm_bits(e) & neg);
    return lathe_vm_float(num) / (1.0f + e);
}

#endif
