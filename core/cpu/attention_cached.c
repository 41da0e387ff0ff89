/* core/cpu/attention_cached.c — attention of new queries over a key/value
 * cache, for generation (forward only).
 *
 * B batch, T new tokens, H query heads, Hkv key/value heads, D head size,
 * Tmax cache capacity, len valid cache positions (the new ones last). */
#include <math.h>
#include <stdlib.h>

#include "cpu/cpu.h"

void lathe_cpu_attention_cached_forward(float *out, const float *q, const float *kc, const float *vc,
                                       const int32_t *kseg, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                                       int64_t D, int64_t Tmax, int64_t len, float scale)
{
    const int64_t group = H / Hkv;
#pragma omp parallel
    {
        float *w = malloc(sizeof *w * (size_t)(len > 0 ? len : 1));
#pragma omp for collapse(2) schedule(static)
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++) {
                const int64_t kh = h / group;
                for (int64_t i = 0; i < T; i++) {
                    const int64_t qpos = len - T + i;
                    const float *qi = q + ((b * T + i) * H + h) * D;        /* [D] */
                    float *oi = out + ((b * T + i) * H + h) * D;            /* [D] */
                    const int32_t s = kseg ? kseg[b * Tmax + qpos] : 0;
                    float mx = -INFINITY;
                    for (int64_t j = 0; j <= qpos; j++) {
                        if (kseg && kseg[b * Tmax + j] != s) {
                            w[j] = -INFINITY;
                            continue;
                        }
                        const float *kj = kc + ((b * Tmax + j) * Hkv + kh) * D; /* [D] */
                        float dot = 0.0f;
                        for (int64_t d = 0; d < D; d++)
                            dot += qi[d] * kj[d];
                        w[j] = dot * scale;
                        if (w[j] > mx)
                            mx = w[j];
                    }
                    for (int64_t d = 0; d < D; d++)
                        oi[d] = 0.0f;
                    if (mx == -INFINITY || !w)
                        continue; /* nothing to attend: zeros, as lathe_sdpa */
                    float sum = 0.0f;
                    for (int64_t j = 0; j <= qpos; j++) {
                        w[j] = w[j] == -INFINITY ? 0.0f : expf(w[j] - mx);
                        sum += w[j];
                    }
                    const float inv = 1.0f / sum;
                    for (int64_t j = 0; j <= qpos; j++) {
                        if (w[j] == 0.0f)
                            continue;
                        const float p = w[j] * inv;
                        const float *vj = vc + ((b * Tmax + j) * Hkv + kh) * D; /* [D] */
                        for (int64_t d = 0; d < D; d++)
                            oi[d] += p * vj[d];
                    }
                }
            }
        free(w);
    }
}
