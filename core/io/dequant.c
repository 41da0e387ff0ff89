/* core/io/dequant.c — ggml tensor types: sizes, names, and dequantisation
 * to f32.
 *
 * Block layouts and formulas: ggml-org/ggml src/ggml-quants.c
 * (dequantize_row_*) and gguf-py's gguf/quants.py (the reference our tests
 * compare with, formats.md §8). Each formula is written in the reference's
 * operation order, e.g. Q4_1 is (d·q) + m and Q4_K is (d·sc)·q − (dmin·m),
 * and floating-point contraction is turned off below, so the results equal
 * gguf-py's numpy float32 arithmetic bit for bit on every platform (a fused
 * multiply-add would round once instead of twice). */
#include "io/gguf.h"

#include <lathe/status.h>
#include <lathe/tensor.h>

#include <string.h>

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

/* Block sizes from gguf-py's GGML_QUANT_SIZES (gguf/constants.py). Types we
 * cannot dequantise are listed too, so a file holding them still opens and
 * the conversion can name the tensor it cannot read. */
static const struct {
    uint32_t type;
    const char *name;
    uint32_t block_elems, block_bytes;
    int dequant;
} ggml_types[] = {
    {0, "F32", 1, 4, 1},         {1, "F16", 1, 2, 1},          {2, "Q4_0", 32, 18, 1},
    {3, "Q4_1", 32, 20, 1},      {6, "Q5_0", 32, 22, 1},       {7, "Q5_1", 32, 24, 1},
    {8, "Q8_0", 32, 34, 1},      {9, "Q8_1", 32, 40, 0},       {10, "Q2_K", 256, 84, 1},
    {11, "Q3_K", 256, 110, 1},   {12, "Q4_K", 256, 144, 1},    {13, "Q5_K", 256, 176, 1},
    {14, "Q6_K", 256, 210, 1},   {15, "Q8_K", 256, 292, 0},    {16, "IQ2_XXS", 256, 66, 0},
    {17, "IQ2_XS", 256, 74, 0},  {18, "IQ3_XXS", 256, 98, 0},  {19, "IQ1_S", 256, 50, 0},
    {20, "IQ4_NL", 32, 18, 0},   {21, "IQ3_S", 256, 110, 0},   {22, "IQ2_S", 256, 82, 0},
    {23, "IQ4_XS", 256, 136, 0}, {24, "I8", 1, 1, 1},          {25, "I16", 1, 2, 1},
    {26, "I32", 1, 4, 1},        {27, "I64", 1, 8, 0},         {28, "F64", 1, 8, 1},
    {29, "IQ1_M", 256, 56, 0},   {30, "BF16", 1, 2, 1},        {34, "TQ1_0", 256, 54, 0},
    {35, "TQ2_0", 256, 66, 0},   {39, "MXFP4", 32, 17, 0},
};
#define N_GGML_TYPES (sizeof ggml_types / sizeof ggml_types[0])

static int type_index(uint32_t type)
{
    for (size_t i = 0; i < N_GGML_TYPES; i++)
        if (ggml_types[i].type == type)
            return (int)i;
    return -1;
}

const char *lathe_ggml_type_name(uint32_t type)
{
    int i = type_index(type);
    return i < 0 ? NULL : ggml_types[i].name;
}

int lathe_ggml_type_size(uint32_t type, uint64_t *block_elems, uint64_t *block_bytes)
{
    int i = type_index(type);
    if (i < 0)
        return 0;
    *block_elems = ggml_types[i].block_elems;
    *block_bytes = ggml_types[i].block_bytes;
    return 1;
}

int lathe_ggml_can_dequantize(uint32_t type)
{
    int i = type_index(type);
    return i >= 0 && ggml_types[i].dequant;
}

/* ---- little-endian loads (data in the mapping is unaligned) ------------- */
static inline uint16_t ld16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t ld32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline float ldf16(const uint8_t *p)
{
    return lathe_f16_to_f32(ld16(p));
}

/* ---- 32-element blocks ---------------------------------------------------- */

/* Q4_0: f16 d, 16 bytes of nibbles; x = d·(q − 8). Low nibbles are elements
 * 0..15, high nibbles 16..31. */
static void dq_q4_0(const uint8_t *b, float *y, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++, b += 18, y += 32) {
        const float d = ldf16(b);
        const uint8_t *qs = b + 2;
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)((qs[j] & 0x0F) - 8);
            y[j + 16] = d * (float)((qs[j] >> 4) - 8);
        }
    }
}

/* Q4_1: f16 d, f16 m, 16 bytes of nibbles; x = d·q + m. */
static void dq_q4_1(const uint8_t *b, float *y, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++, b += 20, y += 32) {
        const float d = ldf16(b), m = ldf16(b + 2);
        const uint8_t *qs = b + 4;
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)(qs[j] & 0x0F) + m;
            y[j + 16] = d * (float)(qs[j] >> 4) + m;
        }
    }
}

/* Q5_0: f16 d, u32 qh (bit j is the fifth bit of element j), 16 bytes of
 * nibbles; x = d·(q − 16). */
static void dq_q5_0(const uint8_t *b, float *y, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++, b += 22, y += 32) {
        const float d = ldf16(b);
        const uint32_t qh = ld32(b + 2);
        const uint8_t *qs = b + 6;
        for (int j = 0; j < 16; j++) {
            int q0 = (qs[j] & 0x0F) | (int)((qh >> j) & 1u) << 4;
            int q1 = (qs[j] >> 4) | (int)((qh >> (j + 16)) & 1u) << 4;
            y[j] = d * (float)(q0 - 16);
            y[j + 16] = d * (float)(q1 - 16);
        }
    }
}

/* Q5_1: f16 d, f16 m, u32 qh, 16 bytes of nibbles; x = d·q + m. */
static void dq_q5_1(const uint8_t *b, float *y, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++, b += 24, y += 32) {
        const float d = ldf16(b), m = ldf16(b + 2);
        const uint32_t qh = ld32(b + 4);
        const uint8_t *qs = b + 8;
        for (int j = 0; j < 16; j++) {
            int q0 = (qs[j] & 0x0F) | (int)((qh >> j) & 1u) << 4;
            int q1 = (qs[j] >> 4) | (int)((qh >> (j + 16)) & 1u) << 4;
            y[j] = d * (float)q0 + m;
            y[j + 16] = d * (float)q1 + m;
        }
    }
}

/* Q8_0: f16 d, 32 × int8; x = q·d. */
static void dq_q8_0(const uint8_t *b, float *y, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++, b += 34, y += 32) {
        const float d = ldf16(b);
        for (int j = 0; j < 32; j++)
            y[j] = (float)(int8_t)b[2 + j] * d;
    }
}

/* ---- 256-element super-blocks (K-quants) ---------------------------------- */

/* Q2_K: scales[16] (low nibble scale, high nibble min), qs[64] (2 bits),
 * f16 d, f16 dmin; x = (d·sc)·q − (dmin·m), 16 sub-blocks of 16. Element
 * 128h + 32k + l is bits 2k..2k+1 of qs[32h + l]. */
static void dq_q2_k(const uint8_t *b, float *y, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++, b += 84, y += 256) {
        const uint8_t *sc = b, *qs = b + 16;
        const float d = ldf16(b + 80), dmin = ldf16(b + 82);
        for (int e = 0; e < 256; e++) {
            int h = e / 128, k = (e % 128) / 32, l = e % 32, s = e / 16;
            const float dl = d * (float)(sc[s] & 0x0F), ml = dmin * (float)(sc[s] >> 4);
            y[e] = dl * (float)((qs[32 * h + l] >> (2 * k)) & 3) - ml;
        }
    }
}

/* Q3_K: hmask[32], qs[64] (2 low bits), scales[12] (16 six-bit signed
 * scales), f16 d; x = (d·(sc − 32))·(q − 4·!hbit). Element 128h + 32k + l:
 * low bits 2k of qs[32h + l]; high bit (e/32) of hmask[l]. */
static void dq_q3_k(const uint8_t *b, float *y, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++, b += 110, y += 256) {
        const uint8_t *hm = b, *qs = b + 32, *sc = b + 96;
        const float d = ldf16(b + 108);
        float dl[16];
        for (int s = 0; s < 16; s++) {
            int lo = (s < 8 ? sc[s] : sc[s - 8] >> 4) & 0x0F;
            int hi = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
            dl[s] = d * (float)((int8_t)(uint8_t)(lo | hi << 4) - 32);
        }
        for (int e = 0; e < 256; e++) {
            int h = e / 128, k = (e % 128) / 32, l = e % 32;
            int ql = (qs[32 * h + l] >> (2 * k)) & 3;
            int qh = ((hm[l] >> (e / 32)) & 1) ^ 1;
            y[e] = dl[e / 16] * (float)(ql - (qh << 2));
        }
    }
}

/* The eight 6-bit scales and mins of Q4_K/Q5_K, packed in 12 bytes
 * (ggml-quants.c get_scale_min_k4). */
static void k4_scale_min(const uint8_t *s, uint8_t sc[8], uint8_t mn[8])
{
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 0x3F;
        mn[j] = s[j + 4] & 0x3F;
        sc[j + 4] = (uint8_t)((s[j + 8] & 0x0F) | ((s[j] >> 2) & 0x30));
        mn[j + 4] = (uint8_t)((s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30));
    }
}

/* Q4_K: f16 d, f16 dmin, scales[12], qs[128]; 8 sub-blocks of 32; sub-block
 * 2c holds the low nibbles of qs[32c..32c+31], 2c+1 the high ones. */
static void dq_q4_k(const uint8_t *b, float *y, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++, b += 144, y += 256) {
        const float d = ldf16(b), dmin = ldf16(b + 2);
        uint8_t sc[8], mn[8];
        k4_scale_min(b + 4, sc, mn);
        const uint8_t *qs = b + 16;
        for (int s = 0; s < 8; s++) {
            const float dl = d * (float)sc[s], ml = dmin * (float)mn[s];
            const uint8_t *q = qs + 32 * (s / 2);
            int shift = 4 * (s % 2);
            for (int l = 0; l < 32; l++)
                y[32 * s + l] = dl * (float)((q[l] >> shift) & 0x0F) - ml;
        }
    }
}

/* Q5_K: as Q4_K plus qh[32]: bit s of qh[l] is the fifth bit of element
 * 32s + l. */
static void dq_q5_k(const uint8_t *b, float *y, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++, b += 176, y += 256) {
        const float d = ldf16(b), dmin = ldf16(b + 2);
        uint8_t sc[8], mn[8];
        k4_scale_min(b + 4, sc, mn);
        const uint8_t *qh = b + 16, *qs = b + 48;
        for (int s = 0; s < 8; s++) {
            const float dl = d * (float)sc[s], ml = dmin * (float)mn[s];
            const uint8_t *q = qs + 32 * (s / 2);
            int shift = 4 * (s % 2);
            for (int l = 0; l < 32; l++) {
                int v = ((q[l] >> shift) & 0x0F) | ((qh[l] >> s) & 1) << 4;
                y[32 * s + l] = dl * (float)v - ml;
            }
        }
    }
}

/* Q6_K: ql[128], qh[64], int8 scales[16], f16 d; x = (d·sc)·(q − 32), 16
 * sub-blocks of 16. In each half h (128 elements), row u (32 elements) takes
 * nibble u/2 of ql[64h + 32(u%2) + l] and bits 2u of qh[32h + l]. */
static void dq_q6_k(const uint8_t *b, float *y, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++, b += 210, y += 256) {
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *sc = (const int8_t *)(b + 192);
        const float d = ldf16(b + 208);
        for (int h = 0; h < 2; h++)
            for (int u = 0; u < 4; u++)
                for (int l = 0; l < 32; l++) {
                    int lo = (ql[64 * h + 32 * (u % 2) + l] >> (4 * (u / 2))) & 0x0F;
                    int hi = (qh[32 * h + l] >> (2 * u)) & 3;
                    int e = 128 * h + 32 * u + l;
                    y[e] = (d * (float)sc[e / 16]) * (float)((lo | hi << 4) - 32);
                }
    }
}

int lathe_dequantize(uint32_t type, const void *src, float *dst, uint64_t n)
{
    uint64_t be, bb;
    if (!lathe_ggml_type_size(type, &be, &bb) || !lathe_ggml_can_dequantize(type)) {
        const char *name = lathe_ggml_type_name(type);
        return name ? lathe_error(LATHE_EUNSUPPORTED, "cannot dequantize ggml type %s (%u) yet", name, type)
                    : lathe_error(LATHE_EUNSUPPORTED, "unknown ggml type %u", type);
    }
    if (n % be != 0)
        return lathe_error(LATHE_EINVAL, "%llu elements are not a whole number of %s blocks of %llu",
                           (unsigned long long)n, lathe_ggml_type_name(type), (unsigned long long)be);
    const uint8_t *b = src;
    const uint64_t nb = n / be;
    switch (type) {
    case LATHE_GGML_F32:
        memcpy(dst, src, n * 4);
        break;
    case LATHE_GGML_F16:
        for (uint64_t i = 0; i < n; i++)
            dst[i] = ldf16(b + 2 * i);
        break;
    case LATHE_GGML_BF16:
        for (uint64_t i = 0; i < n; i++)
            dst[i] = lathe_bf16_to_f32(ld16(b + 2 * i));
        break;
    case LATHE_GGML_F64:
        for (uint64_t i = 0; i < n; i++) {
            double v;
            memcpy(&v, b + 8 * i, 8);
            dst[i] = (float)v;
        }
        break;
    case LATHE_GGML_I8:
        for (uint64_t i = 0; i < n; i++)
            dst[i] = (float)(int8_t)b[i];
        break;
    case LATHE_GGML_I16:
        for (uint64_t i = 0; i < n; i++)
            dst[i] = (float)(int16_t)ld16(b + 2 * i);
        break;
    case LATHE_GGML_I32:
        for (uint64_t i = 0; i < n; i++)
            dst[i] = (float)(int32_t)ld32(b + 4 * i);
        break;
    case LATHE_GGML_Q4_0:
        dq_q4_0(b, dst, nb);
        break;
    case LATHE_GGML_Q4_1:
        dq_q4_1(b, dst, nb);
        break;
    case LATHE_GGML_Q5_0:
        dq_q5_0(b, dst, nb);
        break;
    case LATHE_GGML_Q5_1:
        dq_q5_1(b, dst, nb);
        break;
    case LATHE_GGML_Q8_0:
        dq_q8_0(b, dst, nb);
        break;
    case LATHE_GGML_Q2_K:
        dq_q2_k(b, dst, nb);
        break;
    case LATHE_GGML_Q3_K:
        dq_q3_k(b, dst, nb);
        break;
    case LATHE_GGML_Q4_K:
        dq_q4_k(b, dst, nb);
        break;
    case LATHE_GGML_Q5_K:
        dq_q5_k(b, dst, nb);
        break;
    case LATHE_GGML_Q6_K:
        dq_q6_k(b, dst, nb);
        break;
    default:
        return lathe_error(LATHE_EUNSUPPORTED, "cannot dequantize ggml type %u", type);
    }
    return LATHE_OK;
}
