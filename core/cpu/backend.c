/* core/cpu/backend.c — the CPU backend's ops table and memory, and the
 * current-backend switch. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <lathe/status.h>
#include <lathe/tensor.h>

#include "cpu/cpu.h"

void *lathe_cpu_alloc(size_t n)
{
    /* 64-byte aligned for AVX-512 loads; contents undefined */
    size_t rounded = (n + 63) & ~(size_t)63;
    return aligned_alloc(64, rounded ? rounded : 64);
}

void lathe_cpu_free(void *p) { free(p); }

int lathe_cpu_copy(void *dst, const void *src, size_t n, int to_device)
{
    (void)to_device;
    memmove(dst, src, n);
    return LATHE_OK;
}

void lathe_cpu_zero(void *p, size_t n) { memset(p, 0, n); }

static const struct lathe_backend_ops cpu_ops = {
    .size = sizeof(struct lathe_backend_ops),
    .name = "cpu",
    .device = LATHE_DEVICE_CPU,
    .alloc = lathe_cpu_alloc,
    .free = lathe_cpu_free,
    .copy = lathe_cpu_copy,
    .zero = lathe_cpu_zero,
    .gemm = lathe_cpu_gemm,
    .bias_forward = lathe_cpu_bias_forward,
    .bias_backward = lathe_cpu_bias_backward,
    .binary_forward = lathe_cpu_binary_forward,
    .binary_backward = lathe_cpu_binary_backward,
    .scale = lathe_cpu_scale,
    .sum = lathe_cpu_sum,
    .fill_add = lathe_cpu_fill_add,
    .embedding_forward = lathe_cpu_embedding_forward,
    .embedding_backward = lathe_cpu_embedding_backward,
    .layernorm_forward = lathe_cpu_layernorm_forward,
    .layernorm_backward = lathe_cpu_layernorm_backward,
    .rmsnorm_forward = lathe_cpu_rmsnorm_forward,
    .rmsnorm_backward = lathe_cpu_rmsnorm_backward,
    .gelu_forward = lathe_cpu_gelu_forward,
    .gelu_backward = lathe_cpu_gelu_backward,
    .silu_forward = lathe_cpu_silu_forward,
    .silu_backward = lathe_cpu_silu_backward,
    .swiglu_forward = lathe_cpu_swiglu_forward,
    .swiglu_backward = lathe_cpu_swiglu_backward,
    .rope_forward = lathe_cpu_rope_forward,
    .rope_backward = lathe_cpu_rope_backward,
    .attention_forward = lathe_cpu_attention_forward,
    .attention_backward = lathe_cpu_attention_backward,
    .softmax_forward = lathe_cpu_softmax_forward,
    .softmax_backward = lathe_cpu_softmax_backward,
    .log_softmax_forward = lathe_cpu_log_softmax_forward,
    .log_softmax_backward = lathe_cpu_log_softmax_backward,
    .cross_entropy_forward = lathe_cpu_cross_entropy_forward,
    .cross_entropy_backward = lathe_cpu_cross_entropy_backward,
    .copy2d = lathe_cpu_copy2d,
    .transpose = lathe_cpu_transpose,
    .gather_forward = lathe_cpu_gather_forward,
    .gather_backward = lathe_cpu_gather_backward,
    .sumsq = lathe_cpu_sumsq,
    .adamw_step = lathe_cpu_adamw_step,
    .convert = lathe_cpu_convert,
    .attention_cached_forward = lathe_cpu_attention_cached_forward,
    .unary_forward = lathe_cpu_unary_forward,
    .unary_backward = lathe_cpu_unary_backward,
    .gemm_lowp = lathe_cpu_gemm_lowp,
    .round_to = lathe_cpu_round_to,
    .attention_lse_forward = lathe_cpu_attention_lse_forward,
    .attention_lse_backward = lathe_cpu_attention_lse_backward,
};

static const struct lathe_backend_ops *current = &cpu_ops;

const struct lathe_backend_ops *lathe_backend_cpu(void) { return &cpu_ops; }
const struct lathe_backend_ops *lathe_backend(void) { return current; }

int lathe_backend_set(const struct lathe_backend_ops *ops)
{
    if (!ops)
        return lathe_error(LATHE_EINVAL, "backend: NULL ops");
    /* A backend built against an older minor ABI lacks the slots appended
     * since; every caller tests those with LATHE_OPS_HAS, so the minor-0
     * slots are all a backend must hold (the loader's rule too). */
    size_t need = offsetof(struct lathe_backend_ops, attention_cached_forward);
    if (ops->size < need)
        return lathe_error(LATHE_EINVAL, "backend '%s': ops size %u is smaller than the %zu of ABI minor 0; rebuild it against this SDK",
                           ops->name ? ops->name : "?", ops->size, need);
    current = ops;
    return LATHE_OK;
}
