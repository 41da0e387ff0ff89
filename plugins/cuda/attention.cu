/* plugins/cuda/attention.cu — rotary embedding, causal attention forward
 * and backward with grouped-query heads and segment ids, and attention over
 * a KV cache (lathe/backend.h; the CPU references are core/cpu/attention.c
 * and core/cpu/attention_flash.c).
 *
 * Forward: a tiled flash-style kernel (Dao et al. 2022, "FlashAttention")
 * computes out with an online softmax over key tiles held in shared memory,
 * never storing the T x T scores, and saves the log-sum-exp of each row.
 * The ABI 1.2 slot attention_lse_forward returns that lse and stops there.
 * The ABI 1.1 slot attention_forward also wants the probabilities
 * att[B,H,T,T], so it fills them afterwards from the lse:
 * att = exp(scale q.k - lse) where allowed, 0 elsewhere (one cuBLAS GEMM for
 * the scores, one elementwise pass).
 *
 * Backward from lse (attention_lse_backward, FlashAttention-2: Dao 2023),
 * with Di = rowsum(dO_i * O_i) made first by a small kernel:
 *   P = exp(scale Q K^T - lse),  dP = dO V^T,  dS = P * (dP - Di) * scale,
 *   dV += P^T dO,  dK += dS^T Q  (pass 1: one block per tile of keys of one
 *                                 kv head, walking its group's query heads
 *                                 and the query rows at or after its keys),
 *   dQ += dS K                   (pass 2: one block per tile of query rows,
 *                                 walking the keys up to its last row).
 * Each gradient element is summed by one thread in a fixed order: no
 * atomics, the same bits on every run.
 *
 * Backward from att (attention_backward), with P = att, dO = dout (as on
 * the CPU):
 *   dV += P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(P * dP)) * scale,
 *   dQ += dS K,    dK += dS^T Q,
 * as strided-batched cuBLAS GEMMs over the kv heads of one batch row and
 * one member of each head group at a time: one call never writes a dK/dV
 * row twice, and the calls run in a fixed order, so the result is
 * deterministic. */
#include "common.h"

/* ---- rotary embedding (HF rotate_half layout; core/cpu/rope.c) ---- */

static __global__ void rope_kernel(float *out, const float *x, const int32_t *pos, int64_t pos_bstride,
                                   const float *inv_freq, int64_t B, int64_t T, int64_t H, int64_t D, int dir)
{
    int64_t half = D / 2;
    LCU_GRID_STRIDE(e, B * T * H * half)
    {
        int64_t i = e % half, bth = e / half;
        int64_t bt = bth / H, b = bt / T, t = bt % T;
        float a = (float)pos[b * pos_bstride + t] * inv_freq[i];
        float cs = cosf(a), sn = (float)dir * sinf(a);
        const float *xr = x + bth * D;
        float *o = out + bth * D;
        float x1 = xr[i], x2 = xr[i + half];
        float y1 = x1 * cs - x2 * sn, y2 = x2 * cs + x1 * sn;
        if (dir > 0) {
            o[i] = y1;
            o[i + half] = y2;
        } else {
            o[i] += y1;
            o[i + half] += y2;
        }
    }
}

extern "C" void lathe_cuda_rope_forward(float *out, const float *x, const int32_t *pos, int64_t pos_bstride,
                                        const float *inv_freq, int64_t B, int64_t T, int64_t H, int64_t D)
{
    CU_ENTER();
    int64_t n = B * T * H * (D / 2);
    if (n <= 0)
        return;
    rope_kernel<<<lcu_blocks(n), LCU_THREADS, 0, lathe_cuda_stream()>>>(out, x, pos, pos_bstride, inv_freq, B, T, H,
                                                                       D, 1);
    CU_LAUNCHED("rope_kernel");
}

extern "C" void lathe_cuda_rope_backward(float *dx, const float *dout, const int32_t *pos, int64_t pos_bstride,
                                         const float *inv_freq, int64_t B, int64_t T, int64_t H, int64_t D)
{
    CU_ENTER();
    int64_t n = B * T * H * (D / 2);
    if (!dx || n <= 0)
        return;
    rope_kernel<<<lcu_blocks(n), LCU_THREADS, 0, lathe_cuda_stream()>>>(dx, dout, pos, pos_bstride, inv_freq, B, T,
                                                                       H, D, -1);
    CU_LAUNCHED("rope_kernel");
}

/* ---- flash forward ---- */

#define FA_ROWS 16 /* query rows per block, one per warp */
#define FA_KEYS 32 /* keys per shared-memory tile, one per lane */
#define FA_MAX_D 256

/* One online-softmax step of a warp over FA_KEYS keys: s is this lane's
 * score (-inf when masked), vrow(jj) the value row of key jj; o[NPL] holds
 * this lane's channels lane + 32 e. */
template <int NPL, typename VRow>
static __device__ __forceinline__ void online_step(float s, float &m, float &l, float (&o)[NPL], int D, VRow vrow)
{
    float mt = lcu_warp_max(s);
    if (mt == -INFINITY)
        return; /* the whole tile is masked for this row */
    float mn = fmaxf(m, mt);
    float p = s == -INFINITY ? 0.0f : expf(s - mn);
    float corr = m == -INFINITY ? 0.0f : expf(m - mn);
    l = l * corr + lcu_warp_sum(p);
#pragma unroll
    for (int e = 0; e < NPL; e++)
        o[e] *= corr;
    int lane = threadIdx.x & 31;
    for (int jj = 0; jj < FA_KEYS; jj++) {
        float pj = __shfl_sync(0xffffffffu, p, jj);
        if (pj == 0.0f)
            continue; /* the same for every lane */
        const float *vr = vrow(jj);
#pragma unroll
        for (int e = 0; e < NPL; e++) {
            int d = lane + 32 * e;
            if (d < D)
                o[e] += pj * vr[d];
        }
    }
    m = mn;
}

/* grid (ceil(T / FA_ROWS), B*H), FA_ROWS warps. Shared: K and V tiles
 * [FA_KEYS][D+1] (padded: lane j reads row j, so rows must fall in
 * different banks) and the block's query rows [FA_ROWS][D]. */
template <int NPL>
static __global__ void flash_forward_kernel(float *out, float *lse, const float *q, const float *k, const float *v,
                                            const int32_t *seg, int T, int H, int Hkv, int D, float scale)
{
    extern __shared__ float smem[];
    const int ldsk = D + 1;
    float *Ks = smem, *Vs = Ks + FA_KEYS * ldsk, *Qs = Vs + FA_KEYS * ldsk;
    int bh = blockIdx.y, b = bh / H, h = bh % H, g = h / (H / Hkv);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int i0 = blockIdx.x * FA_ROWS, i = i0 + warp;
    bool active = i < T;
    int64_t ldq = (int64_t)H * D, ldk = (int64_t)Hkv * D;
    const float *qb = q + (int64_t)b * T * ldq + (int64_t)h * D;
    const float *kb = k + (int64_t)b * T * ldk + (int64_t)g * D;
    const float *vb = v + (int64_t)b * T * ldk + (int64_t)g * D;
    const int32_t *sb = seg ? seg + (int64_t)b * T : NULL;
    float *qs = Qs + warp * D;
    if (active)
        for (int d = lane; d < D; d += 32)
            qs[d] = qb[(int64_t)i * ldq + d];
    int32_t si = sb && active ? sb[i] : 0;
    float o[NPL];
#pragma unroll
    for (int e = 0; e < NPL; e++)
        o[e] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    int last = (i0 + FA_ROWS < T ? i0 + FA_ROWS : T) - 1; /* causal: no key after the block's last row */
    for (int j0 = 0; j0 <= last; j0 += FA_KEYS) {
        __syncthreads();
        for (int e = threadIdx.x; e < FA_KEYS * D; e += blockDim.x) {
            int jj = e / D, d = e % D, j = j0 + jj;
            Ks[jj * ldsk + d] = j < T ? kb[(int64_t)j * ldk + d] : 0.0f;
            Vs[jj * ldsk + d] = j < T ? vb[(int64_t)j * ldk + d] : 0.0f;
        }
        __syncthreads();
        if (!active || j0 > i)
            continue; /* the same for the whole warp */
        int j = j0 + lane;
        float s = -INFINITY;
        if (j <= i && (!sb || sb[j] == si)) {
            float dot = 0.0f;
            const float *kr = Ks + lane * ldsk;
            for (int d = 0; d < D; d++)
                dot += qs[d] * kr[d];
            s = dot * scale;
        }
        online_step<NPL>(s, m, l, o, D, [&](int jj) { return (const float *)(Vs + jj * ldsk); });
    }
    if (!active)
        return;
    /* a row that attends nothing (impossible causally: j = i is always
     * allowed) would be zeros, as on the CPU */
    float inv = l > 0.0f ? 1.0f / l : 0.0f;
    float *orow = out + (int64_t)b * T * ldq + (int64_t)i * ldq + (int64_t)h * D;
#pragma unroll
    for (int e = 0; e < NPL; e++) {
        int d = lane + 32 * e;
        if (d < D)
            orow[d] = o[e] * inv;
    }
    if (lane == 0)
        lse[(int64_t)bh * T + i] = l > 0.0f ? m + logf(l) : -INFINITY;
}

template <int NPL>
static void flash_launch(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *seg,
                         int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D, float scale)
{
    size_t smem = sizeof(float) * (size_t)(2 * FA_KEYS * (D + 1) + FA_ROWS * D);
    if (smem > 48 * 1024 &&
        CU_CHECK(cudaFuncSetAttribute(flash_forward_kernel<NPL>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)smem)))
        return;
    dim3 grid((unsigned)((T + FA_ROWS - 1) / FA_ROWS), (unsigned)(B * H));
    flash_forward_kernel<NPL><<<grid, FA_ROWS * 32, smem, lathe_cuda_stream()>>>(out, lse, q, k, v, seg, (int)T,
                                                                                 (int)H, (int)Hkv, (int)D, scale);
    CU_LAUNCHED("flash_forward_kernel");
}

/* att[bh, i, j] holds scale q_i.k_j; make it exp(that - lse_i) where j may
 * be attended, else 0. */
static __global__ void att_fill_kernel(float *att, const float *lse, const int32_t *seg, int64_t BH, int64_t T,
                                       int64_t H)
{
    LCU_GRID_STRIDE(e, BH * T * T)
    {
        int64_t j = e % T, r = e / T, i = r % T, bh = r / T, b = bh / H;
        bool ok = j <= i && (!seg || seg[b * T + j] == seg[b * T + i]);
        float l = lse[r];
        att[e] = ok && l != -INFINITY ? expf(att[e] - l) : 0.0f;
    }
}

static void flash_dispatch(float *out, float *lse, const float *q, const float *k, const float *v,
                           const int32_t *seg, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D, float scale)
{
    if (D <= 32)
        flash_launch<1>(out, lse, q, k, v, seg, B, T, H, Hkv, D, scale);
    else if (D <= 64)
        flash_launch<2>(out, lse, q, k, v, seg, B, T, H, Hkv, D, scale);
    else if (D <= 128)
        flash_launch<4>(out, lse, q, k, v, seg, B, T, H, Hkv, D, scale);
    else
        flash_launch<8>(out, lse, q, k, v, seg, B, T, H, Hkv, D, scale);
}

static int attention_sizes_ok(int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D)
{
    if (Hkv <= 0 || H % Hkv != 0) {
        lathe_cuda_fail(__FILE__, __LINE__, "attention: %lld query heads do not group over %lld kv heads",
                        (long long)H, (long long)Hkv);
        return 0;
    }
    if (D > FA_MAX_D || T > INT32_MAX || B * H > 65535) {
        lathe_cuda_fail(__FILE__, __LINE__,
                        "attention: head size %lld (at most %d), T %lld or B*H %lld is beyond this kernel",
                        (long long)D, FA_MAX_D, (long long)T, (long long)(B * H));
        return 0;
    }
    return 1;
}

extern "C" void lathe_cuda_attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                                             const int32_t *seg, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                                             int64_t D, float scale)
{
    CU_ENTER();
    if (B <= 0 || T <= 0 || H <= 0 || D <= 0 || !attention_sizes_ok(B, T, H, Hkv, D))
        return;
    float *lse = (float *)lathe_cuda_scratch(sizeof(float) * (size_t)(B * H * T));
    if (!lse)
        return;
    flash_dispatch(out, lse, q, k, v, seg, B, T, H, Hkv, D, scale);
    if (!att)
        return;
    /* the probabilities the ABI 1.x backward reads: scores by GEMM per
     * (batch row, member of a head group), batched over the kv heads */
    int64_t group = H / Hkv, ldq = H * D, ldk = Hkv * D;
    for (int64_t b = 0; b < B; b++)
        for (int64_t r = 0; r < group; r++)
            lathe_cuda_gemm_ld(0, 1, T, T, D, scale, q + b * T * ldq + r * D, ldq, group * D, k + b * T * ldk, ldk,
                               D, 0.0f, att + (b * H + r) * T * T, T, group * T * T, Hkv);
    att_fill_kernel<<<lcu_blocks(B * H * T * T), LCU_THREADS, 0, lathe_cuda_stream()>>>(att, lse, seg, B * H, T, H);
    CU_LAUNCHED("att_fill_kernel");
}

/* ---- backward ---- */

/* Rows of T: dS = P * (dP - sum_j P dP) * scale in place of dP; zero past
 * the diagonal (row index i = row % T). */
static __global__ void att_ds_kernel(float *ds, const float *att, int64_t T, int64_t att_group_stride,
                                     float scale)
{
    __shared__ float sh[32];
    int64_t row = blockIdx.x, g = row / T, i = row % T;
    const float *p = att + g * att_group_stride + i * T;
    float *d = ds + row * T;
    float dot = 0.0f;
    for (int64_t j = threadIdx.x; j <= i; j += blockDim.x)
        dot += p[j] * d[j];
    dot = lcu_block_sum(dot, sh);
    for (int64_t j = threadIdx.x; j < T; j += blockDim.x)
        d[j] = j <= i ? p[j] * (d[j] - dot) * scale : 0.0f;
}

extern "C" void lathe_cuda_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                              const float *k, const float *v, const float *att, int64_t B, int64_t T,
                                              int64_t H, int64_t Hkv, int64_t D, float scale)
{
    CU_ENTER();
    if ((!dq && !dk && !dv) || B <= 0 || T <= 0 || H <= 0 || D <= 0 || !attention_sizes_ok(B, T, H, Hkv, D))
        return;
    int64_t group = H / Hkv, ldq = H * D, ldk = Hkv * D, TT = T * T;
    int need_ds = dq || dk;
    float *ds = NULL;
    if (need_ds) {
        if (Hkv * T > INT32_MAX) {
            lathe_cuda_fail(__FILE__, __LINE__, "attention backward: %lld rows", (long long)(Hkv * T));
            return;
        }
        ds = (float *)lathe_cuda_scratch(sizeof(float) * (size_t)(Hkv * TT)); /* [Hkv, T, T] */
        if (!ds)
            return;
    }
    for (int64_t b = 0; b < B; b++) {
        for (int64_t r = 0; r < group; r++) {
            /* items g = 0..Hkv-1 are query head g*group + r and kv head g */
            const float *P = att + (b * H + r) * TT;   /* stride group*TT */
            const float *dO = dout + b * T * ldq + r * D; /* stride group*D, ld ldq */
            const float *Q = q + b * T * ldq + r * D;
            const float *K = k + b * T * ldk, *V = v + b * T * ldk; /* stride D, ld ldk */
            if (dv)
                lathe_cuda_gemm_ld(1, 0, T, D, T, 1.0f, P, T, group * TT, dO, ldq, group * D, 1.0f,
                                   dv + b * T * ldk, ldk, D, Hkv);
            if (!need_ds)
                continue;
            lathe_cuda_gemm_ld(0, 1, T, T, D, 1.0f, dO, ldq, group * D, V, ldk, D, 0.0f, ds, T, TT, Hkv);
            att_ds_kernel<<<(unsigned)(Hkv * T), LCU_THREADS, 0, lathe_cuda_stream()>>>(ds, P, T, group * TT, scale);
            CU_LAUNCHED("att_ds_kernel");
            if (dq)
                lathe_cuda_gemm_ld(0, 0, T, D, T, 1.0f, ds, T, TT, K, ldk, D, 1.0f, dq + b * T * ldq + r * D, ldq,
                                   group * D, Hkv);
            if (dk)
                lathe_cuda_gemm_ld(1, 0, T, D, T, 1.0f, ds, T, TT, Q, ldq, group * D, 1.0f, dk + b * T * ldk, ldk, D,
                                   Hkv);
        }
    }
}

/* ---- O(T)-memory slots (ABI 1.2): lse saved, P recomputed ---- */

extern "C" void lathe_cuda_attention_lse_forward(float *out, float *lse, const float *q, const float *k,
                                                 const float *v, const int32_t *seg, int64_t B, int64_t T, int64_t H,
                                                 int64_t Hkv, int64_t D, float scale)
{
    CU_ENTER();
    if (B <= 0 || T <= 0 || H <= 0 || D <= 0 || !attention_sizes_ok(B, T, H, Hkv, D))
        return;
    flash_dispatch(out, lse, q, k, v, seg, B, T, H, Hkv, D, scale);
}

#define FB_KEYS 16 /* key rows per block of the dK/dV pass, one per warp */
#define FB_ROWS 32 /* query rows per shared tile of that pass, one per lane */

/* di[B,H,T] = rowsum(dout * out): one warp per row of [B,T,H]. */
static __global__ void flash_di_kernel(float *di, const float *dout, const float *out, int64_t B, int64_t T,
                                       int64_t H, int D)
{
    int64_t wid = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (wid >= B * T * H)
        return; /* whole warps leave together */
    int64_t h = wid % H, bt = wid / H, b = bt / T, i = bt % T;
    const float *a = dout + wid * D, *o = out + wid * D;
    float acc = 0.0f;
    for (int d = lane; d < D; d += 32)
        acc += a[d] * o[d];
    acc = lcu_warp_sum(acc);
    if (lane == 0)
        di[(b * H + h) * T + i] = acc;
}

/* Pass 1. grid (ceil(T / FB_KEYS), B*Hkv), FB_KEYS warps; warp w owns key
 * j = j0 + w and sums its dK, dV rows in registers (channels lane + 32 e)
 * over every query head of its group and every query row i >= j0, lane ii
 * taking row i0 + ii of a shared tile. Shared: Q and dO tiles
 * [FB_ROWS][D+1] (padded: lane ii reads row ii), the block's K and V rows
 * [FB_KEYS][D]. */
template <int NPL>
static __global__ void flash_dkdv_kernel(float *dk, float *dv, const float *dout, const float *q, const float *k,
                                         const float *v, const float *lse, const float *di, const int32_t *seg,
                                         int T, int H, int Hkv, int D, float scale)
{
    extern __shared__ float smem[];
    __shared__ float lse_s[FB_ROWS], di_s[FB_ROWS];
    const int ldt = D + 1;
    float *Qs = smem, *dOs = Qs + FB_ROWS * ldt, *Ks = dOs + FB_ROWS * ldt, *Vs = Ks + FB_KEYS * D;
    int bg = blockIdx.y, b = bg / Hkv, g = bg % Hkv, group = H / Hkv;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int j0 = blockIdx.x * FB_KEYS, j = j0 + warp;
    bool active = j < T;
    int64_t ldq = (int64_t)H * D, ldk = (int64_t)Hkv * D;
    const float *kb = k + (int64_t)b * T * ldk + (int64_t)g * D;
    const float *vb = v + (int64_t)b * T * ldk + (int64_t)g * D;
    const int32_t *sb = seg ? seg + (int64_t)b * T : NULL;
    float *ks = Ks + warp * D, *vs = Vs + warp * D;
    if (active)
        for (int d = lane; d < D; d += 32) {
            ks[d] = kb[(int64_t)j * ldk + d];
            vs[d] = vb[(int64_t)j * ldk + d];
        }
    int32_t sj = sb && active ? sb[j] : 0;
    float ak[NPL], av[NPL];
#pragma unroll
    for (int e = 0; e < NPL; e++)
        ak[e] = av[e] = 0.0f;
    for (int r = 0; r < group; r++) {
        int h = g * group + r;
        const float *qb = q + (int64_t)b * T * ldq + (int64_t)h * D;
        const float *dob = dout + (int64_t)b * T * ldq + (int64_t)h * D;
        const float *lb = lse + ((int64_t)b * H + h) * T, *db = di + ((int64_t)b * H + h) * T;
        for (int i0 = j0; i0 < T; i0 += FB_ROWS) { /* causal: no query row before the block's first key */
            __syncthreads();
            for (int e = threadIdx.x; e < FB_ROWS * D; e += blockDim.x) {
                int ii = e / D, d = e % D, i = i0 + ii;
                Qs[ii * ldt + d] = i < T ? qb[(int64_t)i * ldq + d] : 0.0f;
                dOs[ii * ldt + d] = i < T ? dob[(int64_t)i * ldq + d] : 0.0f;
            }
            if (threadIdx.x < FB_ROWS) {
                int i = i0 + threadIdx.x;
                lse_s[threadIdx.x] = i < T ? lb[i] : -INFINITY;
                di_s[threadIdx.x] = i < T ? db[i] : 0.0f;
            }
            __syncthreads();
            if (!active)
                continue; /* the same for the whole warp */
            int i = i0 + lane;
            float li = lse_s[lane], p = 0.0f, ds = 0.0f;
            if (i < T && i >= j && li != -INFINITY && (!sb || sb[i] == sj)) {
                const float *qr = Qs + lane * ldt, *dr = dOs + lane * ldt;
                float s = 0.0f, dp = 0.0f;
                for (int d = 0; d < D; d++) {
                    s += qr[d] * ks[d];
                    dp += dr[d] * vs[d];
                }
                p = expf(s * scale - li);
                ds = p * (dp - di_s[lane]) * scale;
            }
            for (int ii = 0; ii < FB_ROWS; ii++) {
                float pi = __shfl_sync(0xffffffffu, p, ii), dsi = __shfl_sync(0xffffffffu, ds, ii);
                if (pi == 0.0f && dsi == 0.0f)
                    continue; /* the same for every lane */
                const float *qr = Qs + ii * ldt, *dr = dOs + ii * ldt;
#pragma unroll
                for (int e = 0; e < NPL; e++) {
                    int d = lane + 32 * e;
                    if (d < D) {
                        av[e] += pi * dr[d];
                        ak[e] += dsi * qr[d];
                    }
                }
            }
        }
    }
    if (!active)
        return;
#pragma unroll
    for (int e = 0; e < NPL; e++) {
        int d = lane + 32 * e;
        if (d >= D)
            continue;
        if (dk)
            dk[(int64_t)b * T * ldk + (int64_t)j * ldk + (int64_t)g * D + d] += ak[e];
        if (dv)
            dv[(int64_t)b * T * ldk + (int64_t)j * ldk + (int64_t)g * D + d] += av[e];
    }
}

/* Pass 2. grid (ceil(T / FA_ROWS), B*H), FA_ROWS warps; warp w owns query
 * row i = i0 + w and sums its dQ row over key tiles [FA_KEYS][D+1] in
 * shared memory (lane jj: key j0 + jj), as the forward walks them. */
template <int NPL>
static __global__ void flash_dq_kernel(float *dq, const float *dout, const float *q, const float *k, const float *v,
                                       const float *lse, const float *di, const int32_t *seg, int T, int H, int Hkv,
                                       int D, float scale)
{
    extern __shared__ float smem[];
    const int ldsk = D + 1;
    float *Ks = smem, *Vs = Ks + FA_KEYS * ldsk, *Qs = Vs + FA_KEYS * ldsk, *dOs = Qs + FA_ROWS * D;
    int bh = blockIdx.y, b = bh / H, h = bh % H, g = h / (H / Hkv);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int i0 = blockIdx.x * FA_ROWS, i = i0 + warp;
    bool active = i < T;
    int64_t ldq = (int64_t)H * D, ldk = (int64_t)Hkv * D;
    const float *qb = q + (int64_t)b * T * ldq + (int64_t)h * D;
    const float *dob = dout + (int64_t)b * T * ldq + (int64_t)h * D;
    const float *kb = k + (int64_t)b * T * ldk + (int64_t)g * D;
    const float *vb = v + (int64_t)b * T * ldk + (int64_t)g * D;
    const int32_t *sb = seg ? seg + (int64_t)b * T : NULL;
    float *qs = Qs + warp * D, *dos = dOs + warp * D;
    if (active)
        for (int d = lane; d < D; d += 32) {
            qs[d] = qb[(int64_t)i * ldq + d];
            dos[d] = dob[(int64_t)i * ldq + d];
        }
    int32_t si = sb && active ? sb[i] : 0;
    float li = active ? lse[(int64_t)bh * T + i] : -INFINITY, dii = active ? di[(int64_t)bh * T + i] : 0.0f;
    float acc[NPL];
#pragma unroll
    for (int e = 0; e < NPL; e++)
        acc[e] = 0.0f;
    int last = (i0 + FA_ROWS < T ? i0 + FA_ROWS : T) - 1;
    for (int j0 = 0; j0 <= last; j0 += FA_KEYS) {
        __syncthreads();
        for (int e = threadIdx.x; e < FA_KEYS * D; e += blockDim.x) {
            int jj = e / D, d = e % D, j = j0 + jj;
            Ks[jj * ldsk + d] = j < T ? kb[(int64_t)j * ldk + d] : 0.0f;
            Vs[jj * ldsk + d] = j < T ? vb[(int64_t)j * ldk + d] : 0.0f;
        }
        __syncthreads();
        if (!active || j0 > i || li == -INFINITY)
            continue; /* the same for the whole warp */
        int j = j0 + lane;
        float ds = 0.0f;
        if (j <= i && (!sb || sb[j] == si)) {
            const float *kr = Ks + lane * ldsk, *vr = Vs + lane * ldsk;
            float s = 0.0f, dp = 0.0f;
            for (int d = 0; d < D; d++) {
                s += qs[d] * kr[d];
                dp += dos[d] * vr[d];
            }
            float p = expf(s * scale - li);
            ds = p * (dp - dii) * scale;
        }
        for (int jj = 0; jj < FA_KEYS; jj++) {
            float dsj = __shfl_sync(0xffffffffu, ds, jj);
            if (dsj == 0.0f)
                continue; /* the same for every lane */
            const float *kr = Ks + jj * ldsk;
#pragma unroll
            for (int e = 0; e < NPL; e++) {
                int d = lane + 32 * e;
                if (d < D)
                    acc[e] += dsj * kr[d];
            }
        }
    }
    if (!active)
        return;
    float *dqr = dq + (int64_t)b * T * ldq + (int64_t)i * ldq + (int64_t)h * D;
#pragma unroll
    for (int e = 0; e < NPL; e++) {
        int d = lane + 32 * e;
        if (d < D)
            dqr[d] += acc[e];
    }
}

template <int NPL>
static void flash_backward_launch(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                                  const float *v, const float *lse, const float *di, const int32_t *seg, int64_t B,
                                  int64_t T, int64_t H, int64_t Hkv, int64_t D, float scale)
{
    cudaStream_t st = lathe_cuda_stream();
    if (dk || dv) {
        size_t smem = sizeof(float) * (size_t)(2 * FB_ROWS * (D + 1) + 2 * FB_KEYS * D);
        if (smem > 48 * 1024 &&
            CU_CHECK(cudaFuncSetAttribute(flash_dkdv_kernel<NPL>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          (int)smem)))
            return;
        dim3 grid((unsigned)((T + FB_KEYS - 1) / FB_KEYS), (unsigned)(B * Hkv));
        flash_dkdv_kernel<NPL><<<grid, FB_KEYS * 32, smem, st>>>(dk, dv, dout, q, k, v, lse, di, seg, (int)T,
                                                                  (int)H, (int)Hkv, (int)D, scale);
        if (CU_LAUNCHED("flash_dkdv_kernel"))
            return;
    }
    if (dq) {
        size_t smem = sizeof(float) * (size_t)(2 * FA_KEYS * (D + 1) + 2 * FA_ROWS * D);
        if (smem > 48 * 1024 &&
            CU_CHECK(cudaFuncSetAttribute(flash_dq_kernel<NPL>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          (int)smem)))
            return;
        dim3 grid((unsigned)((T + FA_ROWS - 1) / FA_ROWS), (unsigned)(B * H));
        flash_dq_kernel<NPL><<<grid, FA_ROWS * 32, smem, st>>>(dq, dout, q, k, v, lse, di, seg, (int)T, (int)H,
                                                                (int)Hkv, (int)D, scale);
        CU_LAUNCHED("flash_dq_kernel");
    }
}

extern "C" void lathe_cuda_attention_lse_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                                  const float *k, const float *v, const float *out, const float *lse,
                                                  const int32_t *seg, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                                                  int64_t D, float scale)
{
    CU_ENTER();
    if ((!dq && !dk && !dv) || B <= 0 || T <= 0 || H <= 0 || D <= 0 || !attention_sizes_ok(B, T, H, Hkv, D))
        return;
    float *di = (float *)lathe_cuda_scratch(sizeof(float) * (size_t)(B * H * T)); /* [B, H, T] */
    if (!di)
        return;
    int64_t rows = B * T * H;
    flash_di_kernel<<<(unsigned)((rows + 7) / 8), 256, 0, lathe_cuda_stream()>>>(di, dout, out, B, T, H, (int)D);
    if (CU_LAUNCHED("flash_di_kernel"))
        return;
    if (D <= 32)
        flash_backward_launch<1>(dq, dk, dv, dout, q, k, v, lse, di, seg, B, T, H, Hkv, D, scale);
    else if (D <= 64)
        flash_backward_launch<2>(dq, dk, dv, dout, q, k, v, lse, di, seg, B, T, H, Hkv, D, scale);
    else if (D <= 128)
        flash_backward_launch<4>(dq, dk, dv, dout, q, k, v, lse, di, seg, B, T, H, Hkv, D, scale);
    else
        flash_backward_launch<8>(dq, dk, dv, dout, q, k, v, lse, di, seg, B, T, H, Hkv, D, scale);
}

/* ---- attention over a KV cache (generation) ---- */

/* One warp per (b, i, h) query; lanes take keys in tiles of 32 as in the
 * flash kernel, reading the cache from global memory. */
template <int NPL>
static __global__ void cached_kernel(float *out, const float *q, const float *kc, const float *vc,
                                     const int32_t *kseg, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                                     int64_t Tmax, int64_t len, float scale)
{
    int64_t wid = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (wid >= B * T * H)
        return; /* whole warps leave together */
    int64_t h = wid % H, bi = wid / H, i = bi % T, b = bi / T;
    int64_t kh = h / (H / Hkv), qpos = len - T + i;
    const float *qi = q + wid * D;
    int32_t s0 = kseg ? kseg[b * Tmax + qpos] : 0;
    float o[NPL];
#pragma unroll
    for (int e = 0; e < NPL; e++)
        o[e] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int64_t j0 = 0; j0 <= qpos; j0 += FA_KEYS) {
        int64_t j = j0 + lane;
        float s = -INFINITY;
        if (j <= qpos && (!kseg || kseg[b * Tmax + j] == s0)) {
            const float *kj = kc + ((b * Tmax + j) * Hkv + kh) * D;
            float dot = 0.0f;
            for (int64_t d = 0; d < D; d++)
                dot += qi[d] * kj[d];
            s = dot * scale;
        }
        online_step<NPL>(s, m, l, o, (int)D,
                         [&](int jj) { return vc + ((b * Tmax + j0 + jj) * Hkv + kh) * D; });
    }
    float inv = l > 0.0f ? 1.0f / l : 0.0f; /* nothing to attend: zeros */
    float *oi = out + wid * D;
#pragma unroll
    for (int e = 0; e < NPL; e++) {
        int d = lane + 32 * e;
        if (d < D)
            oi[d] = o[e] * inv;
    }
}

extern "C" void lathe_cuda_attention_cached_forward(float *out, const float *q, const float *kc, const float *vc,
                                                    const int32_t *kseg, int64_t B, int64_t T, int64_t H,
                                                    int64_t Hkv, int64_t D, int64_t Tmax, int64_t len, float scale)
{
    CU_ENTER();
    if (B <= 0 || T <= 0 || H <= 0 || D <= 0 || !attention_sizes_ok(B, T, H, Hkv, D))
        return;
    int64_t warps = B * T * H;
    unsigned blocks = (unsigned)((warps + 7) / 8);
    cudaStream_t st = lathe_cuda_stream();
    if (D <= 32)
        cached_kernel<1><<<blocks, 256, 0, st>>>(out, q, kc, vc, kseg, B, T, H, Hkv, D, Tmax, len, scale);
    else if (D <= 64)
        cached_kernel<2><<<blocks, 256, 0, st>>>(out, q, kc, vc, kseg, B, T, H, Hkv, D, Tmax, len, scale);
    else if (D <= 128)
        cached_kernel<4><<<blocks, 256, 0, st>>>(out, q, kc, vc, kseg, B, T, H, Hkv, D, Tmax, len, scale);
    else
        cached_kernel<8><<<blocks, 256, 0, st>>>(out, q, kc, vc, kseg, B, T, H, Hkv, D, Tmax, len, scale);
    CU_LAUNCHED("cached_kernel");
}
