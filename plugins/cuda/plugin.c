/* plugins/cuda/plugin.c — the CUDA backend (component "cuda", kind
 * backend): every slot of struct lathe_backend_ops on one NVIDIA GPU, for
 * `[run] device = cuda`. Built with -DLATHE_BUILD_CUDA, so its build
 * signature says "cuda"; a CPU-only host loads it all the same because it
 * ships nothing but a backend (core/plugin/loader.c).
 *
 * The kernels live in the .cu files beside this one (kernels.h lists
 * them). Slots return void, so a CUDA failure is recorded and reported by
 * the next copy (see kernels.h). Environment: LATHE_ALLOW_TF32=1 lets fp32
 * GEMMs use TF32 tensor cores (`[run] allow_tf32 = true` sets it);
 * LATHE_CUDA_STATS=1 prints peak device memory at exit. */
#include <lathe/lathe.h>

#include "kernels.h"

static const struct lathe_backend_ops cuda_ops = {
    .size = sizeof(struct lathe_backend_ops),
    .name = "cuda",
    .device = LATHE_DEVICE_CUDA,
    .alloc = lathe_cuda_alloc,
    .free = lathe_cuda_free,
    .copy = lathe_cuda_copy,
    .zero = lathe_cuda_zero,
    .gemm = lathe_cuda_gemm,
    .bias_forward = lathe_cuda_bias_forward,
    .bias_backward = lathe_cuda_bias_backward,
    .binary_forward = lathe_cuda_binary_forward,
    .binary_backward = lathe_cuda_binary_backward,
    .scale = lathe_cuda_scale,
    .sum = lathe_cuda_sum,
    .fill_add = lathe_cuda_fill_add,
    .embedding_forward = lathe_cuda_embedding_forward,
    .embedding_backward = lathe_cuda_embedding_backward,
    .layernorm_forward = lathe_cuda_layernorm_forward,
    .layernorm_backward = lathe_cuda_layernorm_backward,
    .rmsnorm_forward = lathe_cuda_rmsnorm_forward,
    .rmsnorm_backward = lathe_cuda_rmsnorm_backward,
    .gelu_forward = lathe_cuda_gelu_forward,
    .gelu_backward = lathe_cuda_gelu_backward,
    .silu_forward = lathe_cuda_silu_forward,
    .silu_backward = lathe_cuda_silu_backward,
    .swiglu_forward = lathe_cuda_swiglu_forward,
    .swiglu_backward = lathe_cuda_swiglu_backward,
    .rope_forward = lathe_cuda_rope_forward,
    .rope_backward = lathe_cuda_rope_backward,
    .attention_forward = lathe_cuda_attention_forward,
    .attention_backward = lathe_cuda_attention_backward,
    .softmax_forward = lathe_cuda_softmax_forward,
    .softmax_backward = lathe_cuda_softmax_backward,
    .log_softmax_forward = lathe_cuda_log_softmax_forward,
    .log_softmax_backward = lathe_cuda_log_softmax_backward,
    .cross_entropy_forward = lathe_cuda_cross_entropy_forward,
    .cross_entropy_backward = lathe_cuda_cross_entropy_backward,
    .copy2d = lathe_cuda_copy2d,
    .transpose = lathe_cuda_transpose,
    .gather_forward = lathe_cuda_gather_forward,
    .gather_backward = lathe_cuda_gather_backward,
    .sumsq = lathe_cuda_sumsq,
    .adamw_step = lathe_cuda_adamw_step,
    .convert = lathe_cuda_convert,
    .attention_cached_forward = lathe_cuda_attention_cached_forward,
    .unary_forward = lathe_cuda_unary_forward,
    .unary_backward = lathe_cuda_unary_backward,
    .gemm_lowp = lathe_cuda_gemm_lowp,
    .round_to = lathe_cuda_round_to,
    .attention_lse_forward = lathe_cuda_attention_lse_forward,
    .attention_lse_backward = lathe_cuda_attention_lse_backward,
};

static const struct lathe_component cuda_components[] = {
    {.kind = LATHE_KIND_BACKEND, .name = "cuda", .ops = &cuda_ops},
    {0},
};

LATHE_PLUGIN_DEFINE(cuda, .version = "0.1.0",
                    .description = "NVIDIA GPU backend: cuBLAS GEMMs and CUDA kernels for every op (f32 storage; bf16/fp16 matrix products)",
                    .components = cuda_components)
