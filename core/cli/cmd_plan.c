/* core/cli/cmd_plan.c — `lathe plan --config config.json [...]`: per-device
 * memory of a training setup, with the formula behind every figure, and the
 * smallest device count that fits a given device memory. The figures come
 * from core/plan/plan.c; this file parses options and prints. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lathe/status.h>

#include "cli.h"
#include "plan/plan.h"

#define MAX_DEVICES (1 << 20)

static void usage(FILE *f)
{
    fprintf(f,
        "usage: lathe plan --config PATH/config.json [--strategy ddp|zero1|zero2|zero3] [--offload]\n"
        "                  [--devices N] [--precision bf16|fp16|fp32] [--lora-rank R]\n"
        "                  [--lora-targets all-linear|q_proj,v_proj,...] [--expert-parallel E]\n"
        "                  [--batch B] [--seq T] [--checkpointing] [--flash-attention]\n"
        "                  [--device-memory 80G] [--json]\n"
        "\n"
        "Estimates the memory of one device: parameters, gradients, optimizer state and\n"
        "activations, each with the formula used, and says whether it fits.\n"
        "\n"
        "  --config          a Hugging Face config.json: llama, mistral, qwen2, gpt2 or\n"
        "                    deepseek_v3 (MLA, dense first_k_dense_replace layers, shared and\n"
        "                    routed experts, router). Prints the parameter count by part.\n"
        "  --strategy        ddp (default) or ZeRO stage 1/2/3. With Ψ trainable parameters,\n"
        "                    N devices and mixed-precision Adam (K = 12 bytes: fp32 master + m + v),\n"
        "                    model states per device are (Rajbhandari et al. 2020, ZeRO §3.1, Fig. 1):\n"
        "                      ddp 16Ψ   zero1 4Ψ + 12Ψ/N   zero2 2Ψ + 14Ψ/N   zero3 16Ψ/N\n"
        "  --offload         ZeRO-Offload: the optimizer state (fp32 master, m, v) lives in host\n"
        "                    memory; reported as host bytes per device. Not with ddp.\n"
        "  --devices N       data-parallel devices (default 1, or E). Without it and with\n"
        "                    --device-memory, the smallest N that fits is searched.\n"
        "  --precision       bf16 (default) or fp16: 2-byte params and grads, K = 12;\n"
        "                    fp32: 4-byte params and grads, K = 8 (m + v; no separate master).\n"
        "  --lora-rank R     LoRA: the base is frozen (params only, in the precision's width),\n"
        "                    adapters r·(in+out) per adapted linear are trained with the same\n"
        "                    formulas. --lora-targets: all-linear (PEFT: every linear but the\n"
        "                    output head; on DeepSeek-V3 this includes all routed experts) or a\n"
        "                    comma list of module names (q_proj,v_proj,gate_proj,...).\n"
        "  --expert-parallel E  routed experts (and their adapters) are split E ways; the\n"
        "                    N/E devices holding the same experts shard them by the strategy;\n"
        "                    everything else is sharded over all N. E divides N and the experts.\n"
        "  --batch, --seq    micro-batch size and sequence length per device (default 1 × 2048).\n"
        "                    Activations (Korthikanti et al. 2022, eq. 1): s·b·h·(34 + 5·a·s/h)\n"
        "                    bytes per layer in 16-bit without recomputation (its MLP share\n"
        "                    scaled to the real width I; MoE layers store the top-k routed copies\n"
        "                    of each token and the shared expert); plus 4·s·b·V fp32 logits.\n"
        "  --checkpointing   full activation checkpointing (same paper): 2·s·b·h per layer plus one\n"
        "                    layer recomputed in backward.\n"
        "  --flash-attention drop the 5·a·s²·b attention-score terms (not stored by flash attention).\n"
        "  --device-memory   device memory: 80G or 80GiB = 80·2^30 bytes, 80GB = 80·10^9.\n"
        "  --json            the same figures in bytes: inputs, model counts and per_device\n"
        "                    {params, grads, optimizer, activations, total, host}.\n"
        "\n"
        "Not counted: communication buckets, ZeRO-3's gathered copy of the tensor in use\n"
        "(its largest is printed), allocator fragmentation and the CUDA context.\n");
}

static int bad(const char *opt, const char *v, const char *want)
{
    fprintf(stderr, "lathe plan: %s: '%s' is not %s\n", opt, v, want);
    return 2;
}

static int parse_int(const char *opt, const char *v, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > hi) {
        char want[96];
        snprintf(want, sizeof want, "an integer in [%lld, %lld]", (long long)lo, (long long)hi);
        return bad(opt, v, want);
    }
    *out = x;
    return 0;
}

static const char *commas(char *buf, size_t n, uint64_t v)
{
    char tmp[32];
    snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    size_t len = strlen(tmp), j = 0;
    for (size_t i = 0; i < len && j + 2 < n; i++) {
        if (i && (len - i) % 3 == 0)
            buf[j++] = ',';
        buf[j++] = tmp[i];
    }
    buf[j] = '\0';
    return buf;
}

static double gib(uint64_t v) { return v / 1073741824.0; }

static void print_model(const char *path, const struct lathe_plan_model *m)
{
    char c[40];
    printf("model: %s (%s)\n", path, m->type);
    printf("  %-18s %20s\n", "embeddings", commas(c, sizeof c, m->embed));
    if (m->lm_head)
        printf("  %-18s %20s\n", "lm_head", commas(c, sizeof c, m->lm_head));
    else
        printf("  %-18s %20s   (tied to the embedding)\n", "lm_head", "0");
    printf("  %-18s %20s   (%lld layers)\n", "attention", commas(c, sizeof c, m->attn), (long long)m->layers);
    printf("  %-18s %20s   (%lld layers, intermediate %lld)\n", "dense MLP", commas(c, sizeof c, m->mlp),
           (long long)m->dense_layers, (long long)m->inter);
    if (m->n_routed) {
        printf("  %-18s %20s   (%lld MoE layers × %lld, intermediate %lld)\n", "shared experts",
               commas(c, sizeof c, m->shared), (long long)m->moe_layers, (long long)m->n_shared,
               (long long)(m->n_shared * m->moe_inter));
        printf("  %-18s %20s   (%lld MoE layers × %lld, intermediate %lld)\n", "routed experts",
               commas(c, sizeof c, m->routed), (long long)m->moe_layers, (long long)m->n_routed, (long long)m->moe_inter);
        printf("  %-18s %20s\n", "routers", commas(c, sizeof c, m->router));
    }
    printf("  %-18s %20s\n", "norms", commas(c, sizeof c, m->norms));
    printf("  %-18s %20s   (%.2fB)\n", "total", commas(c, sizeof c, m->total), m->total / 1e9);
    if (m->n_routed)
        printf("  %-18s %20s   (%.2fB: all but the routed experts, plus %lld of %lld of them)\n", "activated/token",
               commas(c, sizeof c, m->active), m->active / 1e9, (long long)m->topk, (long long)m->n_routed);
    /* The published size of DeepSeek-V3/R1 (algorithms.md §3: 671B total,
     * 37B active; README_WEIGHTS.md: 36.7B active incl. embedding and head,
     * 685B on the hub = 671B + 14B MTP). */
    if (!strcmp(m->type, "deepseek_v3") && m->hidden == 7168 && m->n_routed == 256 && m->layers == 61) {
        double d = (double)m->total - 671e9;
        printf("  check: DeepSeek-V3/R1 is published as 671B total, 37B activated; this count is %+.3fB (%+.4f%%):\n"
               "         671B is the rounded main model (embedding, 61 layers, norm, lm_head) that the paper counts.\n",
               d / 1e9, 100.0 * d / 671e9);
    }
    if (m->mtp_unique) {
        /* The hub checkpoint stores layer 61 with its own copies of the
         * embedding and head (README_WEIGHTS.md: 685B = 671B + 14B MTP). */
        uint64_t copies = m->embed + (m->lm_head ? m->lm_head : m->embed);
        printf("  %-18s %20s   (%.2fB) not in the total: %lld MTP module%s stored after layer %lld (one MoE layer,\n"
               "  %-18s %20s    eh_proj, norms); it shares the embedding and head, and HF's model class does not\n"
               "  %-18s %20s    build it. %.2fB + %.2fB + %.2fB for its stored embedding/head copies = %.2fB,\n"
               "  %-18s %20s    the 685B the hub lists.\n",
               "MTP module", commas(c, sizeof c, m->mtp_unique), m->mtp_unique / 1e9, (long long)m->mtp_layers,
               m->mtp_layers == 1 ? "" : "s", (long long)m->layers - 1, "", "", "", "", m->total / 1e9,
               m->mtp_unique / 1e9, copies / 1e9, (m->total + m->mtp_unique + copies) / 1e9, "", "");
    }
}

static void print_result(const struct lathe_plan_model *m, const struct lathe_plan_opts *o,
                         const struct lathe_plan_result *r)
{
    char c[40];
    printf("\nsetup: %s%s, N = %lld device%s", lathe_plan_strategy_name(o->strategy), o->offload ? " + cpu offload" : "",
           (long long)o->devices, o->devices == 1 ? "" : "s");
    if (o->expert_parallel > 1)
        printf(", expert parallel E = %lld (%lld experts per device)", (long long)o->expert_parallel,
               (long long)(m->n_routed / o->expert_parallel));
    printf(", %s", lathe_plan_precision_name(o->precision));
    if (o->lora_rank)
        printf(", LoRA r = %lld on %s", (long long)o->lora_rank, o->lora_targets);
    printf(", batch %lld × seq %lld%s%s\n", (long long)o->batch, (long long)o->seq,
           o->checkpointing ? ", activation checkpointing" : "", o->flash_attention ? ", flash attention" : "");
    printf("  trainable parameters %s%s\n", commas(c, sizeof c, r->trainable),
           o->lora_rank ? " (LoRA adapters only)" : "");
    for (size_t i = 0; i < r->ngroups; i++) {
        const struct lathe_plan_group *g = &r->group[i];
        printf("  %-4s = %20s  %s, sharded over %s = %lld\n", g->sym, commas(c, sizeof c, g->psi), g->what,
               g->shard == o->devices ? "N" : "N/E", (long long)g->shard);
    }
    printf("\nper device:\n");
    printf("  %-12s %10.2f GiB  %s\n", "params", gib(r->params), r->f_params);
    printf("  %-12s %10.2f GiB  %s\n", "grads", gib(r->grads), r->f_grads);
    printf("  %-12s %10.2f GiB  %s\n", "optimizer", gib(r->optimizer), r->f_optimizer);
    printf("  %-12s %10.2f GiB  %s\n", "activations", gib(r->activations), r->f_activations);
    printf("  %-12s %10.2f GiB  (%s bytes) = params + grads + optimizer + activations\n", "total", gib(r->total),
           commas(c, sizeof c, r->total));
    if (o->offload)
        printf("  %-12s %10.2f GiB  %s\n", "host memory", gib(r->host), r->f_host);
    printf("  not counted: communication buckets, allocator fragmentation, CUDA context%s", o->strategy == 3 ? "" : "\n");
    if (o->strategy == LATHE_PLAN_ZERO3)
        printf(", and ZeRO-3's gathered copy of the tensor in use (largest: %.2f GiB)\n",
               gib(m->largest * (uint64_t)r->bytes_frozen));
}

static json_t *result_json(const char *path, const struct lathe_plan_model *m, const struct lathe_plan_opts *o,
                           const struct lathe_plan_result *r, uint64_t mem, int64_t min_n)
{
    json_t *in = json_pack("{s:s, s:s, s:s, s:b, s:I, s:s, s:I, s:s, s:I, s:I, s:I, s:b, s:b}", "config", path,
                           "model_type", m->type, "strategy", lathe_plan_strategy_name(o->strategy), "offload",
                           o->offload, "devices", (json_int_t)o->devices, "precision",
                           lathe_plan_precision_name(o->precision), "lora_rank", (json_int_t)o->lora_rank,
                           "lora_targets", o->lora_rank ? o->lora_targets : "", "expert_parallel",
                           (json_int_t)o->expert_parallel, "batch", (json_int_t)o->batch, "seq", (json_int_t)o->seq,
                           "checkpointing", o->checkpointing, "flash_attention", o->flash_attention);
    json_object_set_new(in, "device_memory", mem ? json_integer((json_int_t)mem) : json_null());
    json_t *model = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I}", "total", (json_int_t)m->total, "active",
                              (json_int_t)m->active, "routed", (json_int_t)m->routed, "trainable",
                              (json_int_t)r->trainable, "adapter", (json_int_t)r->adapter, "mtp_unique",
                              (json_int_t)m->mtp_unique);
    json_t *dev = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I}", "params", (json_int_t)r->params, "grads",
                            (json_int_t)r->grads, "optimizer", (json_int_t)r->optimizer, "activations",
                            (json_int_t)r->activations, "total", (json_int_t)r->total, "host", (json_int_t)r->host);
    json_t *formulas = json_pack("{s:s, s:s, s:s, s:s, s:s}", "params", r->f_params, "grads", r->f_grads, "optimizer",
                                 r->f_optimizer, "activations", r->f_activations, "host", o->offload ? r->f_host : "");
    json_t *root = json_pack("{s:o, s:o, s:o, s:o}", "inputs", in, "model", model, "per_device", dev, "formulas",
                             formulas);
    if (mem) {
        json_object_set_new(root, "fits", json_boolean(r->total <= mem));
        json_object_set_new(root, "min_devices", min_n ? json_integer((json_int_t)min_n) : json_null());
    }
    return root;
}

int lathe_cmd_plan(int argc, char **argv)
{
    const char *config = NULL, *mem_s = NULL;
    int as_json = 0, have_devices = 0;
    struct lathe_plan_opts o;
    lathe_plan_opts_init(&o);
    for (int i = 0; i < argc; i++) {
        char *a = argv[i], *v = NULL, abuf[64];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        /* --opt=value or --opt value */
        char *eq = strncmp(a, "--", 2) == 0 ? strchr(a, '=') : NULL;
        if (eq && (size_t)(eq - a) < sizeof abuf) {
            memcpy(abuf, a, (size_t)(eq - a));
            abuf[eq - a] = '\0';
            a = abuf, v = eq + 1;
        }
        if (!strcmp(a, "--offload")) { o.offload = 1; continue; }
        if (!strcmp(a, "--checkpointing")) { o.checkpointing = 1; continue; }
        if (!strcmp(a, "--flash-attention")) { o.flash_attention = 1; continue; }
        if (!strcmp(a, "--json")) { as_json = 1; continue; }
        static const char *valued[] = { "--config", "--strategy", "--devices", "--precision", "--lora-rank",
                                        "--lora-targets", "--expert-parallel", "--batch", "--seq", "--device-memory",
                                        NULL };
        int known = 0;
        for (int k = 0; valued[k]; k++)
            known |= !strcmp(a, valued[k]);
        if (!known) {
            fprintf(stderr, "lathe plan: %s '%s' (see lathe plan --help)\n",
                    a[0] == '-' ? "unknown option" : "unexpected argument", argv[i]);
            return 2;
        }
        if (!v) {
            if (i + 1 >= argc) {
                fprintf(stderr, "lathe plan: %s needs a value\n", a);
                return 2;
            }
            v = argv[++i];
        }
        int st = 0;
        if (!strcmp(a, "--config")) config = v;
        else if (!strcmp(a, "--device-memory")) mem_s = v;
        else if (!strcmp(a, "--strategy")) {
            const char *names[] = { "ddp", "zero1", "zero2", "zero3" };
            int found = -1;
            for (int k = 0; k < 4; k++)
                if (!strcmp(v, names[k]))
                    found = k;
            if (found < 0)
                return bad(a, v, "a strategy (ddp, zero1, zero2, zero3)");
            o.strategy = found;
        } else if (!strcmp(a, "--precision")) {
            if (!strcmp(v, "bf16")) o.precision = LATHE_PLAN_BF16;
            else if (!strcmp(v, "fp16")) o.precision = LATHE_PLAN_FP16;
            else if (!strcmp(v, "fp32")) o.precision = LATHE_PLAN_FP32;
            else return bad(a, v, "a precision (bf16, fp16, fp32)");
        } else if (!strcmp(a, "--lora-targets")) {
            if (!*v || strlen(v) >= sizeof o.lora_targets)
                return bad(a, v, "a list of module names or all-linear");
            snprintf(o.lora_targets, sizeof o.lora_targets, "%s", v);
        } else if (!strcmp(a, "--devices")) {
            st = parse_int(a, v, 1, MAX_DEVICES, &o.devices);
            have_devices = 1;
        }
        else if (!strcmp(a, "--lora-rank")) st = parse_int(a, v, 0, 65536, &o.lora_rank);
        else if (!strcmp(a, "--expert-parallel")) st = parse_int(a, v, 1, 65536, &o.expert_parallel);
        else if (!strcmp(a, "--batch")) st = parse_int(a, v, 1, 1 << 20, &o.batch);
        else if (!strcmp(a, "--seq")) st = parse_int(a, v, 1, 1 << 24, &o.seq);
        if (st)
            return st;
    }
    if (!config) {
        fprintf(stderr, "lathe plan: --config PATH/config.json is required\n");
        usage(stderr);
        return 2;
    }
    uint64_t mem = 0;
    if (mem_s && lathe_plan_parse_bytes(mem_s, &mem) != LATHE_OK) {
        fprintf(stderr, "lathe plan: --device-memory: %s\n", lathe_errmsg());
        return 2;
    }
    if (!have_devices)
        o.devices = o.expert_parallel;

    struct lathe_plan_model m;
    if (lathe_plan_model_load(config, &m) != LATHE_OK) {
        fprintf(stderr, "lathe plan: %s\n", lathe_errmsg());
        return 1;
    }
    struct lathe_plan_result r;
    int64_t min_n = 0;
    if (mem && lathe_plan_min_devices(&m, &o, mem, MAX_DEVICES, &min_n) != LATHE_OK) {
        fprintf(stderr, "lathe plan: %s\n", lathe_errmsg());
        return 2;
    }
    /* No --devices: show the plan at the smallest N that fits. */
    if (!have_devices && min_n)
        o.devices = min_n;
    if (lathe_plan_compute(&m, &o, &r) != LATHE_OK) {
        fprintf(stderr, "lathe plan: %s\n", lathe_errmsg());
        return 2;
    }

    if (as_json) {
        json_t *root = result_json(config, &m, &o, &r, mem, min_n);
        char *s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        json_decref(root);
        if (!s) {
            fprintf(stderr, "lathe plan: out of memory\n");
            return 1;
        }
        puts(s);
        free(s);
        return 0;
    }
    print_model(config, &m);
    print_result(&m, &o, &r);
    if (mem) {
        char dm[64];
        snprintf(dm, sizeof dm, "%.2f GiB (%s)", gib(mem), mem_s);
        printf("\n");
        if (r.total <= mem)
            printf("fits on %s: %.2f GiB per device (%.1f%%) with N = %lld%s\n", dm, gib(r.total),
                   100.0 * r.total / mem, (long long)o.devices,
                   !have_devices ? ", the smallest N that fits" : "");
        else if (min_n)
            printf("does not fit on %s with N = %lld: needs %lld devices\n", dm, (long long)o.devices, (long long)min_n);
        else
            printf("does not fit on %s at any N up to %d: %s\n", dm, MAX_DEVICES,
                   o.strategy == LATHE_PLAN_DDP ? "ddp keeps everything on every device"
                   : o.strategy < LATHE_PLAN_ZERO3 ? "ZeRO-1/2 keep the 16-bit parameters (and what does not shard) whole"
                                                  : "what does not shard (activations) alone exceeds it");
        if (r.total <= mem && have_devices && min_n && min_n < o.devices)
            printf("  (the smallest N that fits is %lld)\n", (long long)min_n);
    }
    return 0;
}
