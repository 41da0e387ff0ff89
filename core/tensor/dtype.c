/* core/tensor/dtype.c — dtype names, sizes and f32 <-> bf16/f16 conversion. */
#include <lathe/status.h>
#include <lathe/tensor.h>

#include <math.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
} dtypes[LATHE_DTYPE_COUNT] = {
    [LATHE_F32] = {"F32", 4}, [LATHE_BF16] = {"BF16", 2}, [LATHE_F16] = {"F16", 2},
    [LATHE_I32] = {"I32", 4}, [LATHE_I64] = {"I64", 8},   [LATHE_U8] = {"U8", 1},
    [LATHE_I8] = {"I8", 1},         [LATHE_F8_E4M3] = {"F8_E4M3", 1}, [LATHE_F8_E5M2] = {"F8_E5M2", 1},
};

size_t lathe_dtype_size(enum lathe_dtype dt)
{
    return (unsigned)dt < LATHE_DTYPE_COUNT ? dtypes[dt].size : 0;
}

const char *lathe_dtype_name(enum lathe_dtype dt)
{
    return (unsigned)dt < LATHE_DTYPE_COUNT ? dtypes[dt].name : "?";
}

int lathe_dtype_parse(const char *name, enum lathe_dtype *out)
{
    for (int i = 0; i < LATHE_DTYPE_COUNT; i++)
        if (strcmp(name, dtypes[i].name) == 0) {
            *out = (enum lathe_dtype)i;
            return LATHE_OK;
        }
    return lathe_error(LATHE_EINVAL, "unknown dtype '%s'", name);
}

uint16_t lathe_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it quiet, never round to inf */
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

float lathe_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t lathe_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t absx = x & 0x7fffffffu;
    if (absx > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u); /* NaN */
    if (absx >= 0x477ff000u)               /* rounds to >= 65520: inf */
        return (uint16_t)(sign | 0x7c00u);
    if (absx < 0x38800000u) { /* below 2^-14: subnormal or zero */
        float a;
        memcpy(&a, &absx, 4);
        /* scale so that the subnormal step 2^-24 becomes 1, round to even */
        float r = nearbyintf(a * 16777216.0f);
        return (uint16_t)(sign | (uint32_t)r);
    }
    uint32_t mant = absx & 0x7fffffu;
    uint32_t exp = (absx >> 23) - 127 + 15;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        h++;
    return (uint16_t)(sign | h);
}

float lathe_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        float f = ldexpf((float)mant, -24);
        return sign ? -f : f;
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (mant << 13);
    } else {
        u = sign | ((exp - 15 + 127) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- FP8 (OCP 8-bit floating point, 2023) ---- */

/* Decode a float with `mbits` mantissa bits and exponent bias `bias` from
 * its fields; e = 0 is subnormal. */
static float f8_value(int sign, int e, int m, int mbits, int bias)
{
    float v = e == 0 ? ldexpf((float)m, 1 - bias - mbits) : ldexpf((float)((1 << mbits) | m), e - bias - mbits);
    return sign ? -v : v;
}

float lathe_f8e4m3_to_f32(uint8_t v)
{
    int s = v >> 7, e = (v >> 3) & 0xF, m = v & 0x7;
    if (e == 0xF && m == 0x7)
        return NAN;
    return f8_value(s, e, m, 3, 7);
}

float lathe_f8e5m2_to_f32(uint8_t v)
{
    int s = v >> 7, e = (v >> 2) & 0x1F, m = v & 0x3;
    if (e == 0x1F)
        return m ? NAN : (s ? -INFINITY : INFINITY);
    return f8_value(s, e, m, 2, 15);
}

/* Round |f| to the nearest representable code (ties to even) of a format
 * with `mbits` mantissa bits, bias, and largest finite code `maxcode`
 * (magnitude bits). Returns maxcode + 1 when |f| rounds beyond it. */
static unsigned f8_round(float a, int mbits, int bias, unsigned maxcode)
{
    if (a == 0.0f)
        return 0;
    int ex;
    frexpf(a, &ex); /* a = fr * 2^ex, fr in [0.5, 1) */
    int e = ex - 1 + bias; /* biased exponent of a normal encoding */
    if (e < 1)
        e = 1; /* subnormals share the smallest normal's step */
    float step = ldexpf(1.0f, e - bias - mbits);
    float q = a / step;   /* exact: a power-of-two scale */
    float r = nearbyintf(q); /* ties to even under the default rounding mode */
    unsigned mant = (unsigned)r;
    unsigned code;
    if (ex - 1 + bias < 1) {
        code = mant; /* subnormal (or rounds up into the smallest normal) */
    } else {
        if (mant >= (2u << mbits)) { /* rounded up to the next binade */
            mant >>= 1;
            e++;
        }
        code = ((unsigned)e << mbits) | (mant & ((1u << mbits) - 1));
    }
    return code > maxcode ? maxcode + 1 : code;
}

uint8_t lathe_f32_to_f8e4m3(float f)
{
    uint8_t sign = signbit(f) ? 0x80 : 0;
    if (isnan(f) || isinf(f))
        return sign | 0x7F;
    unsigned c = f8_round(fabsf(f), 3, 7, 0x7E); /* 0x7E = 448 */
    return sign | (uint8_t)(c > 0x7E ? 0x7F : c);
}

uint8_t lathe_f32_to_f8e5m2(float f)
{
    uint8_t sign = signbit(f) ? 0x80 : 0;
    if (isnan(f))
        return sign | 0x7F;
    if (isinf(f))
        return sign | 0x7C;
    unsigned c = f8_round(fabsf(f), 2, 15, 0x7B); /* 0x7B = 57344 */
    return sign | (uint8_t)(c > 0x7B ? 0x7C : c);
}

void lathe_convert_to_f32(float *dst, const void *src, enum lathe_dtype src_dt, size_t n)
{
    switch (src_dt) {
    case LATHE_F32: memmove(dst, src, n * 4); break;
    case LATHE_BF16: {
        const uint16_t *s = src;
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++)
            dst[i] = lathe_bf16_to_f32(s[i]);
        break;
    }
    case LATHE_F16: {
        const uint16_t *s = src;
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++)
            dst[i] = lathe_f16_to_f32(s[i]);
        break;
    }
    case LATHE_I32: for (size_t i = 0; i < n; i++) dst[i] = (float)((const int32_t *)src)[i]; break;
    case LATHE_I64: for (size_t i = 0; i < n; i++) dst[i] = (float)((const int64_t *)src)[i]; break;
    case LATHE_U8: for (size_t i = 0; i < n; i++) dst[i] = (float)((const uint8_t *)src)[i]; break;
    case LATHE_I8: for (size_t i = 0; i < n; i++) dst[i] = (float)((const int8_t *)src)[i]; break;
    case LATHE_F8_E4M3: for (size_t i = 0; i < n; i++) dst[i] = lathe_f8e4m3_to_f32(((const uint8_t *)src)[i]); break;
    case LATHE_F8_E5M2: for (size_t i = 0; i < n; i++) dst[i] = lathe_f8e5m2_to_f32(((const uint8_t *)src)[i]); break;
    default: break;
    }
}

void lathe_convert_from_f32(void *dst, enum lathe_dtype dst_dt, const float *src, size_t n)
{
    switch (dst_dt) {
    case LATHE_F32: memmove(dst, src, n * 4); break;
    case LATHE_BF16: {
        uint16_t *d = dst;
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++)
            d[i] = lathe_f32_to_bf16(src[i]);
        break;
    }
    case LATHE_F16: {
        uint16_t *d = dst;
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++)
            d[i] = lathe_f32_to_f16(src[i]);
        break;
    }
    case LATHE_I32: for (size_t i = 0; i < n; i++) ((int32_t *)dst)[i] = (int32_t)lrintf(src[i]); break;
    case LATHE_I64: for (size_t i = 0; i < n; i++) ((int64_t *)dst)[i] = (int64_t)llrintf(src[i]); break;
    case LATHE_U8: for (size_t i = 0; i < n; i++) ((uint8_t *)dst)[i] = (uint8_t)lrintf(src[i]); break;
    case LATHE_I8: for (size_t i = 0; i < n; i++) ((int8_t *)dst)[i] = (int8_t)lrintf(src[i]); break;
    case LATHE_F8_E4M3: for (size_t i = 0; i < n; i++) ((uint8_t *)dst)[i] = lathe_f32_to_f8e4m3(src[i]); break;
    case LATHE_F8_E5M2: for (size_t i = 0; i < n; i++) ((uint8_t *)dst)[i] = lathe_f32_to_f8e5m2(src[i]); break;
    default: break;
    }
}
