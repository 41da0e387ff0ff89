/* lathe/ops.h — differentiable tensor ops (recorded on the autograd tape).
 *
 * Every op returns a new scoped tensor, or NULL with a message (lathe_errmsg)
 * when a shape or dtype is wrong or memory runs out. Any op given a NULL
 * input returns NULL at once and keeps the first message, so model code can
 * chain ops and check once at the end.
 *
 * Inputs are f32 unless stated; index tensors are I32. When grad mode is on
 * and an input requires grad, the result requires grad and the op records
 * its backward. Shape legend: B batch, T time, C channels, V vocabulary,
 * H query heads, Hkv key/value heads, D head size, N rows, "..." any leading
 * dims (flattened to rows by the op).
 */
#ifndef LATHE_OPS_H
#define LATHE_OPS_H

#include <stdint.h>

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- matmul / linear ------------------------------------------------- */

/* out[..., M, N] = a[..., M, K] · b[..., K, N] (trans_b: b is [..., N, K]).
 * a and b have equal leading (batch) dims, or b is 2-D and shared. */
lathe_tensor *lathe_matmul(lathe_tensor *a, lathe_tensor *b, int trans_b);

/* out[..., OC] = x[..., IC] · w[OC, IC]^T + bias[OC]  (PyTorch layout;
 * bias may be NULL). A frozen w (requires_grad 0) may be stored BF16 or F16:
 * it is converted per call, never kept in f32. */
lathe_tensor *lathe_linear(lathe_tensor *x, lathe_tensor *w, lathe_tensor *bias);

/* y + scale · x[..., IC] · w[OC, IC]^T, written into y's own buffer (the
 * result is a view of y): a low-rank update of a linear's output without a
 * second [.., OC] activation (LoRA). y must be a tensor whose values no
 * recorded backward reads — a lathe_linear output is such a tensor — and
 * nothing may use y after this call except through the result. */
lathe_tensor *lathe_linear_accumulate(lathe_tensor *y, lathe_tensor *x, lathe_tensor *w, float scale);

/* ---- embedding ------------------------------------------------------- */

/* out[..., C] = w[ids[...], :]; ids I32 in [0, V). */
lathe_tensor *lathe_embedding(lathe_tensor *w, lathe_tensor *ids);

/* ---- elementwise ----------------------------------------------------- */

/* out = a + b, a - b, a * b. b has a's shape or a suffix of it (broadcast
 * over a's leading dims, e.g. a [B,T,C] + b [T,C]). */
lathe_tensor *lathe_add(lathe_tensor *a, lathe_tensor *b);
lathe_tensor *lathe_sub(lathe_tensor *a, lathe_tensor *b);
lathe_tensor *lathe_mul(lathe_tensor *a, lathe_tensor *b);
/* out = a * s */
lathe_tensor *lathe_scale(lathe_tensor *a, float s);

/* ---- normalisation --------------------------------------------------- */

/* out[..., C] = (x - mean) / sqrt(var + eps) * w[C] + b[C]  (b may be NULL) */
lathe_tensor *lathe_layernorm(lathe_tensor *x, lathe_tensor *w, lathe_tensor *b, float eps);
/* out[..., C] = x / sqrt(mean(x^2) + eps) * w[C]  (w may be NULL) */
lathe_tensor *lathe_rmsnorm(lathe_tensor *x, lathe_tensor *w, float eps);

/* ---- activations ----------------------------------------------------- */

/* GELU, tanh approximation: 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))) */
lathe_tensor *lathe_gelu(lathe_tensor *x);
/* x * sigmoid(x) */
lathe_tensor *lathe_silu(lathe_tensor *x);
/* silu(gate) * up  (same shapes) */
lathe_tensor *lathe_swiglu(lathe_tensor *gate, lathe_tensor *up);

/* ---- position -------------------------------------------------------- */

/* Rotary embedding, Hugging Face "rotate_half" convention: for pair
 * (x[i], x[i + D/2]), i < D/2, angle = pos * inv_freq[i] (computed in f32).
 * x [B, T, H, D]; pos I32 [B, T] or [T]; inv_freq f32 [D/2] (the model
 * computes it, scalings included). */
lathe_tensor *lathe_rope(lathe_tensor *x, lathe_tensor *pos, lathe_tensor *inv_freq);

/* ---- attention ------------------------------------------------------- */

/* Causal scaled-dot-product attention with grouped-query heads.
 * q [B, T, H, D], k and v [B, T, Hkv, D] with H % Hkv == 0 (query head h
 * reads kv head h / (H / Hkv)); out [B, T, H, D].
 * segments: I32 [B, T] or NULL. With segments, position i attends to j only
 * when j <= i and segments[b,i] == segments[b,j] (packing and padding); a
 * row with nothing to attend to outputs zeros. scale <= 0 means 1/sqrt(D). */
lathe_tensor *lathe_sdpa(lathe_tensor *q, lathe_tensor *k, lathe_tensor *v,
                         lathe_tensor *segments, float scale);

/* Attention of T new queries over a key/value cache, for generation (not
 * recorded for backward). q [B, T, H, D]; kcache, vcache [B, Tmax, Hkv, D]
 * whose first `len` positions are valid, the new tokens' keys and values
 * already written at len - T .. len - 1. Query i attends cache positions
 * j <= len - T + i whose kseg[b, j] equals its own (kseg I32 [B, Tmax] or
 * NULL). out [B, T, H, D]. scale <= 0 means 1/sqrt(D). */
lathe_tensor *lathe_sdpa_cached(lathe_tensor *q, lathe_tensor *kcache, lathe_tensor *vcache, int64_t len,
                                lathe_tensor *kseg, float scale);
/* Write src [B, T, ...] into dst [B, Tmax, ...] at positions at .. at+T-1
 * of dim 1 (a cache update; not recorded). Returns a status. */
int lathe_write_rows(lathe_tensor *dst, lathe_tensor *src, int64_t at);

/* ---- softmax family -------------------------------------------------- */

/* Over the last dim. */
lathe_tensor *lathe_softmax(lathe_tensor *x);
lathe_tensor *lathe_log_softmax(lathe_tensor *x);

/* Mean token cross-entropy of logits [..., V] against targets I32 [...];
 * positions whose target equals ignore_index are left out of the mean.
 * label_smoothing in [0, 1) mixes the one-hot target with uniform. Returns a
 * scalar (shape [1]); 0 when every position is ignored. */
lathe_tensor *lathe_cross_entropy(lathe_tensor *logits, lathe_tensor *targets,
                                  int32_t ignore_index, float label_smoothing);

/* Per-token log-probabilities log softmax(logits)[target], shape of
 * targets; 0 where the target is ignore_index. For policy-gradient losses. */
lathe_tensor *lathe_token_logprobs(lathe_tensor *logits, lathe_tensor *targets, int32_t ignore_index);

/* ---- elementwise functions ------------------------------------------- */

lathe_tensor *lathe_exp(lathe_tensor *x);
lathe_tensor *lathe_log(lathe_tensor *x);
lathe_tensor *lathe_relu(lathe_tensor *x);
/* min(max(x, lo), hi); no gradient where clamped */
lathe_tensor *lathe_clamp(lathe_tensor *x, float lo, float hi);
/* log(sigmoid(x)), stable for large |x| (DPO's loss) */
lathe_tensor *lathe_log_sigmoid(lathe_tensor *x);
/* Elementwise min / max of two tensors of one shape. */
lathe_tensor *lathe_minimum(lathe_tensor *a, lathe_tensor *b);
lathe_tensor *lathe_maximum(lathe_tensor *a, lathe_tensor *b);

/* ---- reductions ------------------------------------------------------ */

/* Scalar [1] sum / mean of all elements. */
lathe_tensor *lathe_sum(lathe_tensor *x);
lathe_tensor *lathe_mean(lathe_tensor *x);

/* ---- regularisation -------------------------------------------------- */

/* Inverted dropout with probability p, drawn from lathe_rng_global().
 * Identity when p == 0 or when `train` is 0. */
lathe_tensor *lathe_dropout(lathe_tensor *x, float p, int train);

/* ---- shape ----------------------------------------------------------- */

/* Same data, new shape (numel equal; one dim may be -1). */
lathe_tensor *lathe_reshape(lathe_tensor *x, int ndim, const int64_t *shape);
/* Swap dims d0 and d1 (a contiguous copy). */
lathe_tensor *lathe_transpose(lathe_tensor *x, int d0, int d1);
/* Join n tensors along dim (all other dims equal). */
lathe_tensor *lathe_concat(lathe_tensor *const *xs, int n, int dim);
/* Cut x along dim into n parts of the given sizes (summing to the dim);
 * writes the n results to out[]. Returns 0 or a status. */
int lathe_split(lathe_tensor *x, int dim, const int64_t *sizes, int n, lathe_tensor **out);
/* The slice [start, start + len) of dim (a copy). */
lathe_tensor *lathe_narrow(lathe_tensor *x, int dim, int64_t start, int64_t len);

/* ---- indexing -------------------------------------------------------- */

/* out[..., k] = x[..., idx[..., k]]  (x [..., V], idx I32 [..., K]) */
lathe_tensor *lathe_gather(lathe_tensor *x, lathe_tensor *idx);
/* out = x; out[..., idx[..., k]] += src[..., k]
 * (x [..., V], idx I32 [..., K], src [..., K]) */
lathe_tensor *lathe_scatter_add(lathe_tensor *x, lathe_tensor *idx, lathe_tensor *src);

#ifdef __cplusplus
}
#endif
#endif
