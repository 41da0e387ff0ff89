/* core/plan/plan.h — the memory planner behind `lathe plan`.
 *
 * Counts the parameters of a Hugging Face config.json (llama, mistral,
 * qwen2, gpt2, deepseek_v3) and estimates, per device, the bytes of
 * parameters, gradients, optimizer state and activations for a strategy
 * (ddp, ZeRO stage 1/2/3, CPU offload), precision, LoRA rank, expert-parallel
 * size and device count.
 *
 * Sources:
 * - Model states: Rajbhandari et al. 2020, "ZeRO: Memory Optimizations
 *   Toward Training Trillion Parameter Models", §3.1 and Fig. 1: mixed-precision Adam
 *   keeps 2Ψ 16-bit params + 2Ψ 16-bit grads + KΨ (K = 12: fp32 master,
 *   m, v); ddp 16Ψ, stage 1 4Ψ + 12Ψ/N, stage 2 2Ψ + 14Ψ/N, stage 3 16Ψ/N.
 * - Activations: Korthikanti et al. 2022, "Reducing Activation Recomputation
 *   in Large Transformer Models" (arXiv:2205.05198), eq. 1: s·b·h·(34 + 5·a·s/h) bytes
 *   per layer in 16-bit without recomputation; 2·s·b·h per layer with full
 *   recomputation; 4·s·b·v for the fp32 logits of the loss.
 * - DeepSeek-V3 layout: HF modeling_deepseek.py (MLA, first_k_dense_replace,
 *   shared + routed experts, MoEGate), ../shared/reference/algorithms.md §3.
 *
 * Internal to liblathe (not part of the SDK), exported for the lathe
 * command and the tests. Every struct here is plain data; nothing to free. */
#ifndef LATHE_PLAN_PLAN_H
#define LATHE_PLAN_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include <lathe/abi.h>

/* One kind of linear layer: `count` instances of an in x out matrix
 * (plus an `out` bias when `bias`). `routed` marks routed-expert weights,
 * the ones expert parallelism divides. */
struct lathe_plan_linear {
    char name[32];     /* module name as in HF weight names: "q_proj", "gate_proj" */
    int64_t in, out;
    int64_t count;     /* instances in the whole model */
    int bias;
    int routed;
};

#define LATHE_PLAN_MAX_LINEARS 24

struct lathe_plan_model {
    char type[32];          /* model_type */
    /* Dimensions (0 where the architecture has none). */
    int64_t hidden, layers, heads, kv_heads, head_dim, inter, vocab, positions;
    int tied;               /* lm_head shares the embedding */
    int64_t dense_layers, moe_layers;
    int64_t n_routed, n_shared, topk, moe_inter;
    int64_t mtp_layers;     /* deepseek num_nextn_predict_layers */
    /* Parameter counts by part (elements). */
    uint64_t embed;         /* token (+ position) embeddings */
    uint64_t lm_head;       /* 0 when tied */
    uint64_t attn;          /* all attention projections (+ biases, MLA norms) */
    uint64_t mlp;           /* dense MLPs */
    uint64_t shared;        /* shared experts */
    uint64_t routed;        /* routed experts: what expert parallelism splits */
    uint64_t router;        /* MoE gates (+ correction bias) */
    uint64_t norms;         /* layer norms outside attention */
    uint64_t total;
    uint64_t active;        /* per token: total - routed + routed·topk/n_routed */
    uint64_t mtp_unique;    /* MTP module, not in total (see plan.c) */
    uint64_t largest;       /* largest single tensor (ZeRO-3 gathers it whole) */
    size_t nlinear;
    struct lathe_plan_linear linear[LATHE_PLAN_MAX_LINEARS];
};

enum lathe_plan_strategy { LATHE_PLAN_DDP = 0, LATHE_PLAN_ZERO1 = 1, LATHE_PLAN_ZERO2 = 2, LATHE_PLAN_ZERO3 = 3 };
enum lathe_plan_precision { LATHE_PLAN_BF16 = 0, LATHE_PLAN_FP16 = 1, LATHE_PLAN_FP32 = 2 };

struct lathe_plan_opts {
    int strategy;              /* enum lathe_plan_strategy */
    int offload;               /* optimizer state in host memory (ZeRO only) */
    int precision;             /* enum lathe_plan_precision */
    int64_t devices;           /* N, data-parallel world size */
    int64_t expert_parallel;   /* E: routed experts split over E devices; N % E == 0 */
    int64_t lora_rank;         /* 0: full fine-tuning */
    char lora_targets[256];    /* "all-linear" or "q_proj,v_proj,..." */
    int64_t batch, seq;        /* micro-batch size and sequence length per device */
    int checkpointing;         /* full activation recomputation */
    int flash_attention;       /* drop the s² attention terms */
};

/* Defaults: ddp, bf16, N = 1, E = 1, no LoRA, batch 1, seq 2048. */
LATHE_EXPORT void lathe_plan_opts_init(struct lathe_plan_opts *o);

/* One group of parameters placed the same way: `psi` elements per device
 * before sharding, sharded `shard` ways where the strategy shards. */
struct lathe_plan_group {
    char sym[8];               /* "Ψ", "Ψd", "Ψr", "Ψa", "Ψar" */
    char what[96];
    uint64_t psi;
    int64_t shard;
    int trainable;
};

struct lathe_plan_result {
    /* Per device, bytes. total = params + grads + optimizer + activations;
     * host is separate (offloaded optimizer state). */
    uint64_t params, grads, optimizer, activations, total, host;
    uint64_t trainable;        /* trainable parameters in the whole model */
    uint64_t adapter;          /* LoRA parameters in the whole model */
    int bytes_param, bytes_grad, bytes_optim, bytes_frozen;  /* per element */
    size_t ngroups;
    struct lathe_plan_group group[4];
    /* Activation parts (bytes, per device). */
    uint64_t act_layer_dense, act_layer_moe, act_logits, act_stored;
    /* The formula behind each figure, with its numbers. */
    char f_params[1024], f_grads[1024], f_optimizer[1024], f_activations[1024], f_host[1024];
};

/* Read config.json at `path` (or parse `text`; `name` names it in messages).
 * LATHE_OK, or LATHE_EIO / LATHE_ECONFIG naming the file and the missing or
 * bad key, or LATHE_EUNSUPPORTED for a model_type it does not know. */
LATHE_EXPORT int lathe_plan_model_load(const char *path, struct lathe_plan_model *m);
LATHE_EXPORT int lathe_plan_model_parse(const char *text, const char *name, struct lathe_plan_model *m);
/* A model that is only Ψ = psi dense parameters and no layers (no
 * activations): for checking the ZeRO formulas alone. */
LATHE_EXPORT void lathe_plan_model_raw(struct lathe_plan_model *m, uint64_t psi);

/* The per-device figures. LATHE_EINVAL naming the option for settings that
 * cannot be honoured (offload with ddp, E not dividing N or the experts, E
 * on a model without experts, a LoRA target the model lacks). */
LATHE_EXPORT int lathe_plan_compute(const struct lathe_plan_model *m, const struct lathe_plan_opts *o,
                                    struct lathe_plan_result *r);

/* The smallest N (a multiple of E) whose per-device total fits in
 * `device_bytes`, searched up to `max_devices`; *n = 0 when none does. */
LATHE_EXPORT int lathe_plan_min_devices(const struct lathe_plan_model *m, const struct lathe_plan_opts *o,
                                        uint64_t device_bytes, int64_t max_devices, int64_t *n);

/* "80G", "80GiB" (2^30), "80GB" (10^9), "512M", "81920MiB", "1.5T", plain
 * bytes. LATHE_EINVAL for anything else. */
LATHE_EXPORT int lathe_plan_parse_bytes(const char *s, uint64_t *out);

/* Names, for printing and parsing. */
LATHE_EXPORT const char *lathe_plan_strategy_name(int s);
LATHE_EXPORT const char *lathe_plan_precision_name(int p);

#endif
