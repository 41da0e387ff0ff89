/* core/cli/cmd_generate.c — `lathe generate --model DIR --prompt TEXT`:
 * load a Hugging Face model directory with the model plugin its config.json
 * names, apply its chat format to the prompt, and sample with the KV cache. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lathe/lathe.h>

#include "cli.h"
#include "plugin/loader.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: lathe generate --model DIR --prompt TEXT [--max-new-tokens N] [--temperature T]\n"
               "                      [--top-k K] [--top-p P] [--seed S] [--template NAME|raw]\n"
               "                      [--adapter DIR]  (a PEFT LoRA adapter, e.g. runs/sft-lora/adapter)\n"
               "                      [--system TEXT] [--plugin-path DIRS] [--device cpu|cuda]\n"
               "                      [--backend NAME]  (the device's backend plugin; default cuda)\n"
               "  --template raw feeds the prompt as plain text; otherwise the model's chat\n"
               "  format (detected from tokenizer_config.json, or chatml/deepseek-r1/llama3).\n");
}

/* The model plugin for a Hugging Face directory, from config.json. */
static int plugin_for(const char *dir, const char **name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_error_t e;
    json_t *root = json_load_file(path, 0, &e);
    if (!root)
        return lathe_error(LATHE_EIO, "%s: %s", path, e.text);
    const char *mt = json_string_value(json_object_get(root, "model_type"));
    int rc = LATHE_OK;
    if (mt && strcmp(mt, "gpt2") == 0)
        *name = "gpt2";
    else if (mt && (!strcmp(mt, "llama") || !strcmp(mt, "qwen2") || !strcmp(mt, "mistral")))
        *name = "llama";
    else
        rc = lathe_error(LATHE_EUNSUPPORTED, "%s: model_type '%s' has no model plugin here (llama, qwen2, mistral, gpt2)",
                         path, mt ? mt : "(missing)");
    json_decref(root);
    return rc;
}

static int parse_num(const char *opt, const char *v, double lo, double hi, double *out)
{
    char *end;
    double d = strtod(v, &end);
    if (*v == '\0' || *end != '\0' || !(d >= lo && d <= hi)) {
        fprintf(stderr, "lathe generate: %s: '%s' is not a number in [%g, %g]\n", opt, v, lo, hi);
        return 2;
    }
    *out = d;
    return 0;
}

int lathe_cmd_generate(int argc, char **argv)
{
    const char *model = NULL, *prompt = NULL, *tmpl = NULL, *system = NULL, *plugin_path = NULL, *adapter = NULL;
    const char *device = "cpu", *backend = NULL;
    double max_new = 128, temp = 0.0, top_k = 0, top_p = 1.0, seed = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int st = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (a[0] != '-' || !v) {
            fprintf(stderr, "lathe generate: %s '%s'\n", a[0] == '-' ? "missing value for" : "unexpected argument", a);
            usage(stderr);
            return 2;
        }
        i++;
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--prompt")) prompt = v;
        else if (!strcmp(a, "--template")) tmpl = v;
        else if (!strcmp(a, "--system")) system = v;
        else if (!strcmp(a, "--plugin-path")) plugin_path = v;
        else if (!strcmp(a, "--max-new-tokens")) st = parse_num(a, v, 1, 1 << 20, &max_new);
        else if (!strcmp(a, "--temperature")) st = parse_num(a, v, 0, 100, &temp);
        else if (!strcmp(a, "--top-k")) st = parse_num(a, v, 0, 1e9, &top_k);
        else if (!strcmp(a, "--top-p")) st = parse_num(a, v, 1e-6, 1, &top_p);
        else if (!strcmp(a, "--seed")) st = parse_num(a, v, 0, 9e15, &seed);
        else if (!strcmp(a, "--adapter")) adapter = v;
        else if (!strcmp(a, "--device")) device = v;
        else if (!strcmp(a, "--backend")) backend = v;
        else {
            fprintf(stderr, "lathe generate: unknown option '%s'\n", a);
            return 2;
        }
        if (st)
            return st;
    }
    if (!model || !prompt) {
        usage(stderr);
        return 2;
    }
    /* as [run] device and backend of a training run (core/train/run.c) */
    int on_device = !strcmp(device, "cuda");
    if ((!on_device && strcmp(device, "cpu") != 0) || (!on_device && backend)) {
        fprintf(stderr, "lathe generate: --device is cpu or cuda%s\n", backend ? "; --backend needs --device cuda" : "");
        return 2;
    }

    const char *plugin = NULL;
    struct lathe_registry *reg = NULL;
    lathe_tokenizer *tk = NULL;
    lathe_config *cfg = NULL;
    const struct lathe_model_ops *ops = NULL;
    void *self = NULL;
    char **dirs = NULL;
    size_t ndirs = 0;
    int32_t *ids = NULL, *out = NULL;
    uint8_t *mask = NULL;
    size_t n = 0, nout = 0;
    char *text = NULL;
    int rc = plugin_for(model, &plugin);
    if (rc == LATHE_OK)
        rc = lathe_plugin_dirs(plugin_path, NULL, &dirs, &ndirs);
    if (rc == LATHE_OK)
        rc = lathe_registry_open(&reg, (const char *const *)dirs, ndirs);
    const struct lathe_backend_ops *be = NULL;
    if (rc == LATHE_OK && on_device) {
        const char *name = backend ? backend : "cuda";
        rc = lathe_registry_find(reg, LATHE_KIND_BACKEND, name, (const void **)&be, NULL);
        if (rc == LATHE_OK && be->device != LATHE_DEVICE_CUDA)
            rc = lathe_error(LATHE_EINVAL, "--backend %s is not a CUDA device backend", name);
        if (rc == LATHE_OK) /* a zero-byte copy starts the device */
            rc = be->copy(NULL, NULL, 0, 1);
        if (rc == LATHE_OK)
            rc = lathe_backend_set(be);
        if (rc != LATHE_OK)
            lathe_error_prefix(rc, "--device cuda (backend %s)", name);
    }
    if (rc == LATHE_OK)
        rc = lathe_registry_find(reg, LATHE_KIND_MODEL, plugin, (const void **)&ops, NULL);
    if (rc == LATHE_OK) {
        char ini[8192];
        int len = snprintf(ini, sizeof ini, "[model]\nplugin = %s\npretrained = %s\n", plugin, model);
        if (adapter)
            snprintf(ini + len, sizeof ini - (size_t)len, "[peft]\nplugin = lora\nadapter = %s\n", adapter);
        cfg = lathe_config_load_string("<generate>", ini);
        if (!cfg)
            rc = LATHE_ECONFIG;
    }
    struct lathe_env env = {.size = sizeof env, .output_dir = ".", .seed = (uint64_t)seed, .batch_size = 1,
                            .grad_accum = 1, .steps = 0, .world_size = 1,
                            .device = on_device ? LATHE_DEVICE_CUDA : LATHE_DEVICE_CPU};
    env.config = cfg;
    if (rc == LATHE_OK) {
        lathe_section *s = lathe_config_section(cfg, "model");
        const char *ignored;
        lathe_cfg_string(s, "plugin", NULL, &ignored);
        rc = ops->create(s, &env, &self);
    }
    /* an adapter: the PEFT plugin wraps the model's linear layers */
    const struct lathe_peft_ops *pops = NULL;
    void *pself = NULL;
    if (rc == LATHE_OK && adapter)
        rc = lathe_registry_find(reg, LATHE_KIND_PEFT, "lora", (const void **)&pops, NULL);
    if (rc == LATHE_OK && adapter) {
        lathe_section *ps = lathe_config_section(cfg, "peft");
        const char *ignored;
        lathe_cfg_string(ps, "plugin", NULL, &ignored);
        rc = pops->create(ps, &env, &pself);
        struct lathe_linear *const *lin = NULL;
        lathe_tensor *const *params = NULL;
        size_t nlin = 0, np = 0;
        if (rc == LATHE_OK && !LATHE_OPS_HAS(ops, struct lathe_model_ops, linears))
            rc = lathe_error(LATHE_EUNSUPPORTED, "--adapter: model plugin '%s' exposes no linear layers", plugin);
        if (rc == LATHE_OK)
            rc = ops->linears(self, &lin, &nlin);
        if (rc == LATHE_OK)
            rc = ops->params(self, &params, &np);
        if (rc == LATHE_OK)
            rc = pops->apply(pself, lin, nlin, params, np);
        if (rc != LATHE_OK)
            lathe_error_prefix(rc, "--adapter %s", adapter);
    }
    if (rc == LATHE_OK)
        rc = lathe_tokenizer_load(&tk, model);
    int format = -1;
    if (rc == LATHE_OK && (!tmpl || strcmp(tmpl, "raw") != 0))
        rc = tmpl ? lathe_chat_format_parse(tmpl, &format) : lathe_chat_format_detect(model, tk, &format);
    if (rc == LATHE_OK) {
        if (format < 0) {
            rc = lathe_tokenizer_encode(tk, prompt, strlen(prompt), 1, &ids, &n);
        } else {
            struct lathe_chat_msg msgs[2];
            size_t nm = 0;
            if (system)
                msgs[nm++] = (struct lathe_chat_msg){.role = "system", .content = system};
            msgs[nm++] = (struct lathe_chat_msg){.role = "user", .content = prompt};
            rc = lathe_chat_encode(tk, format, msgs, nm, 1, &ids, &mask, &n);
        }
    }
    int32_t stops[2];
    size_t nstop = 0;
    if (rc == LATHE_OK && format >= 0 && lathe_chat_stop_token(tk, format) >= 0)
        stops[nstop++] = lathe_chat_stop_token(tk, format);
    struct lathe_sampling sp = {.size = sizeof sp, .max_new_tokens = (int64_t)max_new, .temperature = (float)temp,
                                .top_k = (int64_t)top_k, .top_p = (float)top_p, .stop_ids = stops, .nstop = nstop};
    lathe_rng rng;
    lathe_rng_seed(&rng, (uint64_t)seed);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (rc == LATHE_OK) {
        const int32_t *p = ids;
        rc = lathe_generate(ops, self, &p, &n, 1, &sp, &rng, &out, &nout);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (rc == LATHE_OK)
        rc = lathe_tokenizer_decode(tk, out, nout, 1, &text);
    int status = 0;
    if (rc == LATHE_OK) {
        double dt = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        printf("%s\n", text);
        fprintf(stderr, "[%zu prompt tokens, %zu new tokens in %.2f s: %.1f tokens/s]\n", n, nout, dt,
                dt > 0 ? (double)nout / dt : 0.0);
    } else {
        status = lathe_cli_fail();
    }
    free(text);
    free(out);
    free(ids);
    free(mask);
    if (pself)
        pops->destroy(pself);
    if (self)
        ops->destroy(self);
    if (on_device) /* before its plugin is closed */
        lathe_backend_set(lathe_backend_cpu());
    lathe_tokenizer_free(tk);
    lathe_config_free(cfg);
    lathe_registry_close(reg);
    lathe_plugin_dirs_free(dirs, ndirs);
    return status;
}
