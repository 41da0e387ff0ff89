/* core/cpu/attention_flash.c — causal attention in O(T) memory: the
 * attention_lse_forward / attention_lse_backward slots (lathe/backend.h).
 *
 * The same attention as core/cpu/attention.c (causal, grouped-query heads,
 * segment ids; shapes q, out, dq, dout [B,T,H,D], k, v, dk, dv [B,T,Hkv,D],
 * seg [B,T] or NULL) without the [B,H,T,T] probabilities: the forward saves
 * out and the row log-sum-exp lse [B,H,T], the backward recomputes P tile
 * by tile from q, k and lse. The schemes are FlashAttention (Dao et al.
 * 2022) and, for the backward, FlashAttention-2 (Dao 2023), done with
 * single-threaded OpenBLAS products on tiles of FL_ROWS query rows by
 * FL_KEYS keys inside our own OpenMP loop.
 *
 * Forward, per tile of query rows [i0, i1) and key tiles [j0, j1) with
 * j0 < i1 (causal: later keys are never met), online softmax:
 *   S = scale Q K^T,  m' = max(m, rowmax S),  P = exp(S - m'),
 *   l' = l e^(m - m') + rowsum P,  O' = O e^(m - m') + P V;
 * at the end O /= l and lse = m + log l. O accumulates in the out rows.
 *
 * Backward, per tile, with Di = rowsum(dO_i * O_i) (equal to
 * rowsum(P_i * dP_i) since O = P V, so it needs no full row of P):
 *   P = exp(S - lse),  dV += P^T dO,  dP = dO V^T,
 *   dS = P * (dP - Di) * scale,  dQ += dS K,  dK += dS^T Q.
 * The work is split over (b, kv head); each task walks its group's query
 * heads, query tiles and key tiles in a fixed order, so every dK/dV row is
 * written by one thread in one order: deterministic without atomics. */
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

/* Tile sizes: products of 64 x 256 x D keep BLAS near full speed, and a
 * query tile meets at most a key tile past its diagonal. Per-thread
 * scratch is one (forward) or two (backward) [FL_ROWS, FL_KEYS] tiles. */
#define FL_ROWS 64
#define FL_KEYS 256
/* Tiles on the stack when the scratch allocation fails (slower, same
 * results up to rounding). */
#define FL_SMALL_ROWS 16
#define FL_SMALL_KEYS 64

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Keys [j0, j0 + c) that row i may attend by causality: the first n. */
static int64_t fl_causal_n(int64_t i, int64_t j0, int64_t c)
{
    int64_t n = i - j0 + 1;
    return n < 0 ? 0 : n > c ? c : n;
}

/* One online-softmax step over a tile s[r, c] of scaled scores for rows
 * i0.. and keys j0..: s becomes P (exact zeros where masked), m and l are
 * updated and corr[ii] = e^(m_old - m_new) is what the row's O must be
 * multiplied by before O += P V. */
LATHE_VCLONES static void fl_online_tile(float *s, int64_t r, int64_t c, int64_t i0, int64_t j0,
                                         const int32_t *sb, float *m, float *l, float *corr)
{
    for (int64_t ii = 0; ii < r; ii++) {
        int64_t i = i0 + ii, n = fl_causal_n(i, j0, c);
        float *row = s + ii * c;
        if (sb) {
            int32_t si = sb[i];
            for (int64_t jj = 0; jj < n; jj++)
                if (sb[j0 + jj] != si)
                    row[jj] = -INFINITY;
        }
        float mt = -INFINITY;
#pragma omp simd reduction(max : mt)
        for (int64_t jj = 0; jj < n; jj++)
            mt = row[jj] > mt ? row[jj] : mt;
        float mn = mt > m[ii] ? mt : m[ii];
        if (mn == -INFINITY) { /* nothing allowed so far */
            for (int64_t jj = 0; jj < c; jj++)
                row[jj] = 0.0f;
            corr[ii] = 1.0f;
            continue;
        }
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t jj = 0; jj < n; jj++) {
            row[jj] = lathe_vm_expneg(row[jj] - mn); /* -inf -> exactly 0 */
            sum += row[jj];
        }
        for (int64_t jj = n; jj < c; jj++)
            row[jj] = 0.0f;
        corr[ii] = m[ii] == -INFINITY ? 0.0f : lathe_vm_expneg(m[ii] - mn);
        l[ii] = l[ii] * corr[ii] + sum;
        m[ii] = mn;
    }
}

/* Rows [i0, i1) of one (b, h): out rows ldq apart, lse [T] of this head. */
static void fl_forward_rows(float *ob, float *lseb, const float *qb, const float *kb, const float *vb,
                            const int32_t *sb, int64_t i0, int64_t i1, int64_t D, int64_t ldq, int64_t ldk,
                            float scale, float *s, int64_t keys, float *m, float *l, float *corr)
{
    int64_t r = i1 - i0;
    for (int64_t ii = 0; ii < r; ii++) {
        m[ii] = -INFINITY;
        l[ii] = 0.0f;
    }
    for (int64_t j0 = 0; j0 < i1; j0 += keys) {
        int64_t c = min64(keys, i1 - j0);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)r, (int)c, (int)D, scale, qb + i0 * ldq,
                    (int)ldq, kb + j0 * ldk, (int)ldk, 0.0f, s, (int)c);
        fl_online_tile(s, r, c, i0, j0, sb, m, l, corr);
        if (j0 > 0)
            for (int64_t ii = 0; ii < r; ii++) {
                float *o = ob + (i0 + ii) * ldq, cf = corr[ii];
                if (cf != 1.0f)
                    for (int64_t d = 0; d < D; d++)
                        o[d] *= cf;
            }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)r, (int)D, (int)c, 1.0f, s, (int)c,
                    vb + j0 * ldk, (int)ldk, j0 > 0 ? 1.0f : 0.0f, ob + i0 * ldq, (int)ldq);
    }
    for (int64_t ii = 0; ii < r; ii++) {
        float *o = ob + (i0 + ii) * ldq;
        float inv = l[ii] > 0.0f ? 1.0f / l[ii] : 0.0f; /* nothing to attend: zeros */
        for (int64_t d = 0; d < D; d++)
            o[d] *= inv;
        lseb[i0 + ii] = l[ii] > 0.0f ? m[ii] + logf(l[ii]) : -INFINITY;
    }
}

void lathe_cpu_attention_lse_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                     const int32_t *seg, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                                     float scale)
{
    if (B <= 0 || T <= 0 || H <= 0 || D <= 0)
        return;
    int64_t group = H / Hkv;
    int64_t ldq = H * D, ldk = Hkv * D;
    int64_t tiles = (T + FL_ROWS - 1) / FL_ROWS;
#pragma omp parallel if (B * H * T * T * D >= 65536)
    {
        float *s = malloc(sizeof *s * (size_t)(FL_ROWS * FL_KEYS + 3 * FL_ROWS));
        float small[FL_SMALL_ROWS * FL_SMALL_KEYS + 3 * FL_SMALL_ROWS];
        int64_t rows = s ? FL_ROWS : FL_SMALL_ROWS, keys = s ? FL_KEYS : FL_SMALL_KEYS;
        float *buf = s ? s : small;
        float *m = buf + rows * keys, *l = m + rows, *corr = l + rows;
        /* tasks are (b, h, tile of FL_ROWS rows): all rows of one task
         * are independent of other tasks, so any split is deterministic */
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < B * H * tiles; task++) {
            int64_t bh = task / tiles, t = task % tiles;
            int64_t b = bh / H, h = bh % H, g = h / group;
            const float *qb = q + b * T * ldq + h * D; /* [T, D] rows ldq apart */
            const float *kb = k + b * T * ldk + g * D; /* [T, D] rows ldk apart */
            const float *vb = v + b * T * ldk + g * D; /* [T, D] rows ldk apart */
            float *ob = out + b * T * ldq + h * D;     /* [T, D] rows ldq apart */
            const int32_t *sb = seg ? seg + b * T : NULL;
            int64_t end = min64((t + 1) * FL_ROWS, T);
            for (int64_t i0 = t * FL_ROWS; i0 < end; i0 += rows)
                fl_forward_rows(ob, lse + bh * T, qb, kb, vb, sb, i0, min64(i0 + rows, end), D, ldq, ldk, scale,
                                buf, keys, m, l, corr);
        }
        free(s);
    }
}

/* s[r, c] = scaled scores of rows i0.. and keys j0.. in, P out:
 * exp(s - lse_i) where allowed, exact zeros elsewhere. */
LATHE_VCLONES static void fl_recompute_p(float *s, int64_t r, int64_t c, int64_t i0, int64_t j0,
                                         const int32_t *sb, const float *lse)
{
    for (int64_t ii = 0; ii < r; ii++) {
        int64_t i = i0 + ii, n = fl_causal_n(i, j0, c);
        float *row = s + ii * c, li = lse[i];
        if (li == -INFINITY)
            n = 0;
        /* s - lse <= 0 up to rounding (lse >= the row's max); expneg takes
         * -|x|, so a rounding excess x ~ 1e-7 gives e^-x for e^x: an error
         * of 2x, the size of the excess itself. (A clamp here keeps GCC
         * from vectorising the loop.) */
#pragma omp simd
        for (int64_t jj = 0; jj < n; jj++)
            row[jj] = lathe_vm_expneg(row[jj] - li);
        if (sb) {
            int32_t si = sb[i];
            for (int64_t jj = 0; jj < n; jj++)
                if (sb[j0 + jj] != si)
                    row[jj] = 0.0f;
        }
        for (int64_t jj = n; jj < c; jj++)
            row[jj] = 0.0f;
    }
}

/* ds[r, c] = dP in, dS out: P * (dP - Di) * scale. */
LATHE_VCLONES static void fl_ds(float *ds, const float *p, const float *di, int64_t r, int64_t c, float scale)
{
    for (int64_t ii = 0; ii < r; ii++) {
        const float *pr = p + ii * c;
        float *dr = ds + ii * c, dii = di[ii];
#pragma omp simd
        for (int64_t jj = 0; jj < c; jj++)
            dr[jj] = pr[jj] * (dr[jj] - dii) * scale;
    }
}

void lathe_cpu_attention_lse_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                      const float *k, const float *v, const float *out, const float *lse,
                                      const int32_t *seg, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                                      float scale)
{
    if ((!dq && !dk && !dv) || B <= 0 || T <= 0 || H <= 0 || D <= 0)
        return;
    int64_t group = H / Hkv;
    int64_t ldq = H * D, ldk = Hkv * D;
    int need_ds = dq || dk;
#pragma omp parallel if (B * H * T * T * D >= 65536)
    {
        /* P and dS tiles, then Di per row */
        float *s = malloc(sizeof *s * (size_t)(2 * FL_ROWS * FL_KEYS + FL_ROWS));
        float small[2 * FL_SMALL_ROWS * FL_SMALL_KEYS + FL_SMALL_ROWS];
        int64_t rows = s ? FL_ROWS : FL_SMALL_ROWS, keys = s ? FL_KEYS : FL_SMALL_KEYS;
        float *p = s ? s : small, *ds = p + rows * keys, *di = ds + rows * keys;
#pragma omp for schedule(dynamic, 1)
        for (int64_t bg = 0; bg < B * Hkv; bg++) {
            int64_t b = bg / Hkv, g = bg % Hkv;
            const float *kb = k + b * T * ldk + g * D; /* [T, D] rows ldk apart */
            const float *vb = v + b * T * ldk + g * D;
            float *dkb = dk ? dk + b * T * ldk + g * D : NULL;
            float *dvb = dv ? dv + b * T * ldk + g * D : NULL;
            const int32_t *sb = seg ? seg + b * T : NULL;
            for (int64_t h = g * group; h < (g + 1) * group; h++) {
                const float *qb = q + b * T * ldq + h * D; /* [T, D] rows ldq apart */
                const float *ob = out + b * T * ldq + h * D;
                const float *dob = dout + b * T * ldq + h * D;
                float *dqb = dq ? dq + b * T * ldq + h * D : NULL;
                const float *lseb = lse + (b * H + h) * T; /* [T] */
                for (int64_t i0 = 0; i0 < T; i0 += rows) {
                    int64_t i1 = min64(i0 + rows, T), r = i1 - i0;
                    if (need_ds)
                        for (int64_t ii = 0; ii < r; ii++) {
                            const float *o = ob + (i0 + ii) * ldq, *dor = dob + (i0 + ii) * ldq;
                            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                            for (int64_t d = 0; d < D; d++)
                                acc += dor[d] * o[d];
                            di[ii] = acc;
                        }
                    for (int64_t j0 = 0; j0 < i1; j0 += keys) {
                        int ri = (int)r, c = (int)min64(keys, i1 - j0);
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, ri, c, (int)D, scale, qb + i0 * ldq,
                                    (int)ldq, kb + j0 * ldk, (int)ldk, 0.0f, p, c);
                        fl_recompute_p(p, r, c, i0, j0, sb, lseb);
                        /* dV[j0:] += P^T dO */
                        if (dvb)
                            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, c, (int)D, ri, 1.0f, p, c,
                                        dob + i0 * ldq, (int)ldq, 1.0f, dvb + j0 * ldk, (int)ldk);
                        if (!need_ds)
                            continue;
                        /* dP = dO V^T, then dS in its place */
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, ri, c, (int)D, 1.0f, dob + i0 * ldq,
                                    (int)ldq, vb + j0 * ldk, (int)ldk, 0.0f, ds, c);
                        fl_ds(ds, p, di, r, c, scale);
                        /* dQ[i0:i1] += dS K[j0:];  dK[j0:] += dS^T Q[i0:i1] */
                        if (dqb)
                            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ri, (int)D, c, 1.0f, ds, c,
                                        kb + j0 * ldk, (int)ldk, 1.0f, dqb + i0 * ldq, (int)ldq);
                        if (dkb)
                            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, c, (int)D, ri, 1.0f, ds, c,
                                        qb + i0 * ldq, (int)ldq, 1.0f, dkb + j0 * ldk, (int)ldk);
                    }
                }
            }
        }
        free(s);
    }
}
