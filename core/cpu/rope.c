/* core/cpu/rope.c — rotary position embedding (Su et al. 2021, RoFormer) in
 * the Hugging Face "rotate_half" layout (transformers' apply_rotary_pos_emb):
 * channel i < D/2 pairs with i + D/2, and
 *   out[i]       = x[i] cos - x[i + D/2] sin
 *   out[i + D/2] = x[i + D/2] cos + x[i] sin,   angle = pos * inv_freq[i].
 * Like HF, the angle is the f32 product of the position and inv_freq, and its
 * cos/sin are taken in f32, so checkpoints see the same rotation as there.
 *
 * Shapes: x, out, dx, dout [B, T, H, D]; pos [B, T] (pos_bstride = T) or [T]
 * (pos_bstride = 0); inv_freq [D/2]. One (b, t) shares its angles across the
 * H heads, so cos/sin are computed once per (b, t). */
#include <math.h>

#include "cpu/cpu.h"

#define ROPE_PAR_MIN 16384
/* cos/sin of up to this many channel pairs at a time, on the stack */
#define ROPE_CHUNK 128

/* dir = +1 rotates by +angle (forward, =); dir = -1 rotates by -angle and
 * accumulates (backward: the rotation's transpose is its inverse). */
static void rope_apply(float *out, const float *x, const int32_t *pos, int64_t pos_bstride,
                       const float *inv_freq, int64_t B, int64_t T, int64_t H, int64_t D,
                       int dir)
{
    int64_t half = D / 2;
#pragma omp parallel for schedule(static) if (B * T * H * D >= ROPE_PAR_MIN)
    for (int64_t bt = 0; bt < B * T; bt++) {
        int64_t b = bt / T, t = bt % T;
        float p = (float)pos[b * pos_bstride + t];
        float cs[ROPE_CHUNK], sn[ROPE_CHUNK];
        for (int64_t i0 = 0; i0 < half; i0 += ROPE_CHUNK) {
            int64_t m = half - i0 < ROPE_CHUNK ? half - i0 : ROPE_CHUNK;
            for (int64_t i = 0; i < m; i++) {
                float a = p * inv_freq[i0 + i];
                cs[i] = cosf(a);
                sn[i] = (float)dir * sinf(a);
            }
            for (int64_t h = 0; h < H; h++) {
                const float *xr = x + (bt * H + h) * D + i0; /* [D] from i0 */
                float *o = out + (bt * H + h) * D + i0;      /* [D] from i0 */
                if (dir > 0) {
#pragma omp simd
                    for (int64_t i = 0; i < m; i++) {
                        float x1 = xr[i], x2 = xr[i + half];
                        o[i] = x1 * cs[i] - x2 * sn[i];
                        o[i + half] = x2 * cs[i] + x1 * sn[i];
                    }
                } else {
#pragma omp simd
                    for (int64_t i = 0; i < m; i++) {
                        float x1 = xr[i], x2 = xr[i + half];
                        o[i] += x1 * cs[i] - x2 * sn[i];
                        o[i + half] += x2 * cs[i] + x1 * sn[i];
                    }
                }
            }
        }
    }
}

void lathe_cpu_rope_forward(float *out, const float *x, const int32_t *pos, int64_t pos_bstride,
                            const float *inv_freq, int64_t B, int64_t T, int64_t H, int64_t D)
{
    rope_apply(out, x, pos, pos_bstride, inv_freq, B, T, H, D, 1);
}

void lathe_cpu_rope_backward(float *dx, const float *dout, const int32_t *pos, int64_t pos_bstride,
                             const float *inv_freq, int64_t B, int64_t T, int64_t H, int64_t D)
{
    if (dx)
        rope_apply(dx, dout, pos, pos_bstride, inv_freq, B, T, H, D, -1);
}
