/* core/cpu/attention.c — causal scaled-dot-product attention (Vaswani et al.
 * 2017) with grouped-query heads (Ainslie et al. 2023) and optional segment
 * ids for packed sequences.
 *
 * These are the ABI 1.1 slots, which keep att [B, H, T, T]: lathe_sdpa uses
 * them only for a backend without attention_lse_* (the CPU backend has
 * them: core/cpu/attention_flash.c, O(T) memory); the tests compare the two.
 *
 * Shapes: q, out, dq, dout [B, T, H, D]; k, v, dk, dv [B, T, Hkv, D];
 * seg [B, T] or NULL; att [B, H, T, T]. Query head h reads kv head
 * h / (H / Hkv). Row i of att holds softmax_j(scale q_i . k_j) over the j it
 * may attend (j <= i, same segment), and exact zeros elsewhere; the backward
 * relies on those zeros instead of the mask.
 *
 * Each (b, h) is a few matrix products on strided views of the [B,T,H,D]
 * layout (row stride H*D or Hkv*D), done by single-threaded OpenBLAS calls
 * inside our own OpenMP loop (the OpenMP build of OpenBLAS runs serially
 * when called from a parallel region).
 *
 * Query rows go in blocks of ATT_ROWS, each meeting only the keys before its
 * end, so most of the masked upper triangle is never computed.
 *
 * Backward, per (b, h), with P = att, dO = dout:
 *   dV += P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(P * dP)) * scale,
 *   dQ += dS K,    dK += dS^T Q.
 * Query heads that share a kv head add into the same dK/dV, so the work is
 * split over (b, kv head) and each task loops over its group's query heads:
 * no two threads write the same rows, and the order of the sums is fixed. */
#include <math.h>
#include <stdlib.h>

#include "config.h"
#include "cpu/cpu.h"
#include "cpu/vmath.h"

#if defined(HAVE_CBLAS_H)
#include <cblas.h>
#elif defined(HAVE_OPENBLAS_CBLAS_H)
#include <openblas/cblas.h>
#endif

/* Query rows per block: block [i0, i1) only meets keys j < i1, so blocks
 * skip most of the masked upper triangle while the products stay large
 * enough for BLAS to run at speed. */
#define ATT_ROWS 64

/* Softmax of row s[0..n) in place, where n = i + 1 causal candidates;
 * entries masked by segment are set to -inf first. A row left with nothing
 * to attend becomes zeros. */
LATHE_VCLONES static void att_row_softmax(float *s, int64_t n, const int32_t *seg, int64_t i)
{
    if (seg) {
        int32_t si = seg[i];
        for (int64_t j = 0; j < n; j++)
            if (seg[j] != si)
                s[j] = -INFINITY;
    }
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < n; j++)
        m = s[j] > m ? s[j] : m;
    if (m == -INFINITY) {
        for (int64_t j = 0; j < n; j++)
            s[j] = 0.0f;
        return;
    }
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; j++) {
        s[j] = lathe_vm_expneg(s[j] - m); /* -inf -> exactly 0 */
        sum += s[j];
    }
    float inv = 1.0f / sum;
#pragma omp simd
    for (int64_t j = 0; j < n; j++)
        s[j] *= inv;
}

void lathe_cpu_attention_forward(float *out, float *att, const float *q, const float *k,
                                 const float *v, const int32_t *seg, int64_t B, int64_t T,
                                 int64_t H, int64_t Hkv, int64_t D, float scale)
{
    int64_t group = H / Hkv;
    int64_t ldq = H * D, ldk = Hkv * D;
#pragma omp parallel for schedule(dynamic, 1) if (B * H * T * T * D >= 65536)
    for (int64_t bh = 0; bh < B * H; bh++) {
        int64_t b = bh / H, h = bh % H, g = h / group;
        const float *qb = q + b * T * ldq + h * D; /* [T, D] rows ldq apart */
        const float *kb = k + b * T * ldk + g * D; /* [T, D] rows ldk apart */
        const float *vb = v + b * T * ldk + g * D; /* [T, D] rows ldk apart */
        float *ob = out + b * T * ldq + h * D;     /* [T, D] rows ldq apart */
        float *a = att + bh * T * T;               /* [T, T] */
        const int32_t *sb = seg ? seg + b * T : NULL; /* [T] */
        for (int64_t i0 = 0; i0 < T; i0 += ATT_ROWS) {
            int64_t i1 = i0 + ATT_ROWS < T ? i0 + ATT_ROWS : T;
            float *ab = a + i0 * T; /* rows [i0, i1) of att, columns [0, i1) used */
            /* S = scale Q K^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(i1 - i0), (int)i1, (int)D,
                        scale, qb + i0 * ldq, (int)ldq, kb, (int)ldk, 0.0f, ab, (int)T);
            for (int64_t i = i0; i < i1; i++) {
                float *row = a + i * T;
                att_row_softmax(row, i + 1, sb, i);
                for (int64_t j = i + 1; j < T; j++)
                    row[j] = 0.0f;
            }
            /* O = P V */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(i1 - i0), (int)D, (int)i1,
                        1.0f, ab, (int)T, vb, (int)ldk, 0.0f, ob + i0 * ldq, (int)ldq);
        }
    }
}

/* dQ, dK for one (b, h) without scratch memory: dP_ij is recomputed as a
 * dot product where needed. Used only when the scratch allocation fails. */
static void att_ds_unbuffered(float *dqb, float *dkb, const float *pa, const float *dob,
                              const float *qb, const float *kb, const float *vb, int64_t T,
                              int64_t D, int64_t ldq, int64_t ldk, float scale)
{
    for (int64_t i = 0; i < T; i++) {
        const float *p = pa + i * T;
        const float *doi = dob + i * ldq;
        float dot = 0.0f;
        for (int64_t j = 0; j <= i; j++) {
            float dp = 0.0f;
            for (int64_t d = 0; d < D; d++)
                dp += doi[d] * vb[j * ldk + d];
            dot += p[j] * dp;
        }
        for (int64_t j = 0; j <= i; j++) {
            if (p[j] == 0.0f)
                continue;
            float dp = 0.0f;
            for (int64_t d = 0; d < D; d++)
                dp += doi[d] * vb[j * ldk + d];
            float dsij = p[j] * (dp - dot) * scale;
            for (int64_t d = 0; d < D; d++) {
                if (dqb)
                    dqb[i * ldq + d] += dsij * kb[j * ldk + d];
                if (dkb)
                    dkb[j * ldk + d] += dsij * qb[i * ldq + d];
            }
        }
    }
}

void lathe_cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                                  const float *q, const float *k, const float *v,
                                  const float *att, int64_t B, int64_t T, int64_t H,
                                  int64_t Hkv, int64_t D, float scale)
{
    if (!dq && !dk && !dv)
        return;
    int64_t group = H / Hkv;
    int64_t ldq = H * D, ldk = Hkv * D;
    int64_t rows = T < ATT_ROWS ? T : ATT_ROWS;
    int need_ds = dq || dk;
#pragma omp parallel if (B * H * T * T * D >= 65536)
    {
        /* dP, then dS in place, for one block of query rows: [rows, T] */
        float *ds = need_ds ? malloc(sizeof *ds * (size_t)(rows * T)) : NULL;
#pragma omp for schedule(dynamic, 1)
        for (int64_t bg = 0; bg < B * Hkv; bg++) {
            int64_t b = bg / Hkv, g = bg % Hkv;
            const float *kb = k + b * T * ldk + g * D; /* [T, D] rows ldk apart */
            const float *vb = v + b * T * ldk + g * D; /* [T, D] rows ldk apart */
            float *dkb = dk ? dk + b * T * ldk + g * D : NULL; /* [T, D] rows ldk apart */
            float *dvb = dv ? dv + b * T * ldk + g * D : NULL; /* [T, D] rows ldk apart */
            for (int64_t h = g * group; h < (g + 1) * group; h++) {
                const float *pa = att + (b * H + h) * T * T;  /* [T, T] */
                const float *qb = q + b * T * ldq + h * D;     /* [T, D] rows ldq apart */
                const float *dob = dout + b * T * ldq + h * D; /* [T, D] rows ldq apart */
                float *dqb = dq ? dq + b * T * ldq + h * D : NULL; /* [T, D] rows ldq apart */
                if (need_ds && !ds)
                    att_ds_unbuffered(dqb, dkb, pa, dob, qb, kb, vb, T, D, ldq, ldk, scale);
                for (int64_t i0 = 0; i0 < T; i0 += ATT_ROWS) {
                    int64_t i1 = i0 + ATT_ROWS < T ? i0 + ATT_ROWS : T;
                    int r = (int)(i1 - i0), c = (int)i1;
                    const float *pb = pa + i0 * T; /* rows [i0, i1), columns [0, i1) */
                    /* dV[0:i1] += P^T dO */
                    if (dvb)
                        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, c, (int)D, r, 1.0f,
                                    pb, (int)T, dob + i0 * ldq, (int)ldq, 1.0f, dvb, (int)ldk);
                    if (!need_ds || !ds)
                        continue;
                    /* dP = dO V^T, ld c */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r, c, (int)D, 1.0f,
                                dob + i0 * ldq, (int)ldq, vb, (int)ldk, 0.0f, ds, c);
                    for (int64_t i = i0; i < i1; i++) {
                        const float *p = pa + i * T;
                        float *dr = ds + (i - i0) * c;
                        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                        for (int64_t j = 0; j <= i; j++)
                            dot += p[j] * dr[j];
#pragma omp simd
                        for (int64_t j = 0; j <= i; j++)
                            dr[j] = p[j] * (dr[j] - dot) * scale;
                        for (int64_t j = i + 1; j < c; j++)
                            dr[j] = 0.0f;
                    }
                    /* dQ[i0:i1] += dS K[0:i1];  dK[0:i1] += dS^T Q[i0:i1] */
                    if (dqb)
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r, (int)D, c, 1.0f,
                                    ds, c, kb, (int)ldk, 1.0f, dqb + i0 * ldq, (int)ldq);
                    if (dkb)
                        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, c, (int)D, r, 1.0f,
                                    ds, c, qb + i0 * ldq, (int)ldq, 1.0f, dkb, (int)ldk);
                }
            }
        }
        free(ds);
    }
}
