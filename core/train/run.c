/* core/train/run.c — from an INI file to live components.
 *
 * Reads [run], [train] and [log], opens the plugin registry (search order:
 * --plugin-path, $LATHE_PLUGIN_PATH, [plugins] path, the installed
 * directory), and creates one instance per component section: [model],
 * [data], [loss], [optim], [schedule], [peft], and for several processes
 * [parallel] (the strategy) and [comm] (the communicator). Afterwards every
 * key of the file must have been read by someone. */
#include <float.h>
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "io/metrics.h"
#include "train/rewards.h"
#include "train/run_internal.h"

static const char *basename_noext(const char *path, char *buf, size_t n)
{
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    snprintf(buf, n, "%s", b);
    char *dot = strrchr(buf, '.');
    if (dot && dot != buf)
        *dot = '\0';
    return buf;
}

/* [plugins] path entries are relative to the INI file's directory. */
static int plugin_ini_path(struct lathe_run *run, char **out)
{
    *out = NULL;
    lathe_section *s = lathe_config_section(run->cfg, "plugins");
    const char *const *items;
    size_t n;
    int rc = lathe_cfg_list(s, "path", "", &items, &n);
    if (rc != LATHE_OK || n == 0)
        return rc;
    char inidir[PATH_MAX];
    snprintf(inidir, sizeof inidir, "%s", lathe_config_path(run->cfg));
    const char *dir = dirname(inidir);
    size_t cap = 1;
    for (size_t i = 0; i < n; i++)
        cap += strlen(dir) + strlen(items[i]) + 2;
    char *p = calloc(1, cap);
    if (!p)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if (i)
            strcat(p, ":");
        if (items[i][0] != '/') {
            strcat(p, dir);
            strcat(p, "/");
        }
        strcat(p, items[i]);
    }
    *out = p;
    return LATHE_OK;
}

static int open_registry(struct lathe_run *run, const char *cli_path)
{
    char *ini_path = NULL;
    int rc = plugin_ini_path(run, &ini_path);
    char **dirs = NULL;
    size_t n = 0;
    if (rc == LATHE_OK)
        rc = lathe_plugin_dirs(cli_path, ini_path, &dirs, &n);
    if (rc == LATHE_OK)
        rc = lathe_registry_open(&run->reg, (const char *const *)dirs, n);
    lathe_plugin_dirs_free(dirs, n);
    free(ini_path);
    return rc;
}

/* Resolve [section] plugin to a component's ops. def: the default plugin
 * name, or NULL when the section is required. */
static int find_component(struct lathe_run *run, int kind, const char *section, const char *def,
                          struct lathe_component_inst *ci)
{
    lathe_section *s = lathe_config_section(run->cfg, section);
    const char *name;
    int rc = lathe_cfg_string(s, "plugin", def, &name);
    if (rc != LATHE_OK)
        return rc;
    rc = lathe_registry_find(run->reg, kind, name, &ci->ops, &ci->file);
    if (rc != LATHE_OK)
        return lathe_error_prefix(rc, "%s: [%s] plugin = %s", lathe_config_path(run->cfg), section, name);
    ci->kind = kind;
    ci->section = lathe_section_name(s);
    ci->name = name;
    return LATHE_OK;
}

static int created(struct lathe_run *run, const struct lathe_component_inst *ci, int rc)
{
    if (rc == LATHE_OK)
        return rc;
    lathe_error_prefix(rc, "[%s] %s (%s)", ci->section, ci->name, ci->file);
    /* a typo in the section is the likelier cause: report it first */
    char why[1024];
    snprintf(why, sizeof why, "%s", lathe_errmsg());
    if (lathe_section_check_typos(lathe_config_section(run->cfg, ci->section)) != LATHE_OK) {
        char typo[2048];
        snprintf(typo, sizeof typo, "%s", lathe_errmsg());
        return lathe_error(LATHE_ECONFIG, "%s\n  (which may be why: %s)", typo, why);
    }
    return rc;
}

/* The components whose create takes (cfg, env, self). */
static int create_simple(struct lathe_run *run, struct lathe_component_inst *ci)
{
    lathe_section *s = lathe_config_section(run->cfg, ci->section);
    const struct lathe_env *env = &run->env;
    int rc;
    switch (ci->kind) {
    case LATHE_KIND_MODEL: rc = ((const struct lathe_model_ops *)ci->ops)->create(s, env, &ci->self); break;
    case LATHE_KIND_DATA: rc = ((const struct lathe_data_ops *)ci->ops)->create(s, env, &ci->self); break;
    case LATHE_KIND_LOSS: rc = ((const struct lathe_loss_ops *)ci->ops)->create(s, env, &ci->self); break;
    case LATHE_KIND_SCHEDULER: rc = ((const struct lathe_sched_ops *)ci->ops)->create(s, env, &ci->self); break;
    case LATHE_KIND_PEFT: rc = ((const struct lathe_peft_ops *)ci->ops)->create(s, env, &ci->self); break;
    case LATHE_KIND_LOGGER: rc = ((const struct lathe_logger_ops *)ci->ops)->create(s, env, &ci->self); break;
    case LATHE_KIND_COMM: rc = ((const struct lathe_comm_ops *)ci->ops)->create(s, env, &ci->self); break;
    default: rc = lathe_error(LATHE_EINVAL, "internal: kind %d has no simple create", ci->kind);
    }
    return created(run, ci, rc);
}

static void destroy_component(struct lathe_component_inst *ci)
{
    if (!ci->self)
        return;
    switch (ci->kind) {
    case LATHE_KIND_MODEL: ((const struct lathe_model_ops *)ci->ops)->destroy(ci->self); break;
    case LATHE_KIND_DATA: ((const struct lathe_data_ops *)ci->ops)->destroy(ci->self); break;
    case LATHE_KIND_LOSS: ((const struct lathe_loss_ops *)ci->ops)->destroy(ci->self); break;
    case LATHE_KIND_OPTIMIZER: ((const struct lathe_optim_ops *)ci->ops)->destroy(ci->self); break;
    case LATHE_KIND_SCHEDULER: ((const struct lathe_sched_ops *)ci->ops)->destroy(ci->self); break;
    case LATHE_KIND_PEFT: ((const struct lathe_peft_ops *)ci->ops)->destroy(ci->self); break;
    case LATHE_KIND_LOGGER: ((const struct lathe_logger_ops *)ci->ops)->destroy(ci->self); break;
    case LATHE_KIND_STRATEGY: ((const struct lathe_strategy_ops *)ci->ops)->destroy(ci->self); break;
    case LATHE_KIND_COMM: ((const struct lathe_comm_ops *)ci->ops)->destroy(ci->self); break;
    default: break;
    }
    ci->self = NULL;
}

/* device = cuda: the registry's backend `name` ("cuda" unless [run]
 * backend names another, e.g. the test backend "fakedev") serves every
 * tensor made from here on (parameters included). allow_tf32 reaches it
 * through the environment (LATHE_ALLOW_TF32), which it reads per GEMM. */
static int use_cuda(struct lathe_run *run, lathe_section *s, const char *name, int allow_tf32)
{
    const void *ops;
    const char *file;
    if (lathe_registry_find(run->reg, LATHE_KIND_BACKEND, name, &ops, &file) != LATHE_OK) {
        char why[2048]; /* the registry's list of what it searched and refused */
        snprintf(why, sizeof why, "%s", lathe_errmsg());
        return lathe_cfg_error(s, "device", "device = cuda: no CUDA backend plugin on the plugin path (backend = %s; "
                                            "build with CUDA: ./configure --with-cuda=DIR); %s", name, why);
    }
    if (((const struct lathe_backend_ops *)ops)->device != LATHE_DEVICE_CUDA)
        return lathe_cfg_error(s, "backend", "backend '%s' (%s) is not a CUDA device backend", name, file);
    if (allow_tf32)
        setenv("LATHE_ALLOW_TF32", "1", 1);
    /* a zero-byte copy starts the device, so that a missing GPU is named
     * here and not as an allocation failure later */
    int rc = ((const struct lathe_backend_ops *)ops)->copy(NULL, NULL, 0, 1);
    if (rc == LATHE_OK)
        rc = lathe_backend_set(ops);
    return rc != LATHE_OK ? lathe_error_prefix(rc, "%s: [run] device = cuda (%s)", lathe_config_path(run->cfg), file)
                          : LATHE_OK;
}

/* [run] precision: the compute dtype of matrix products (lathe/tensor.h,
 * lathe_set_compute_dtype), and for fp16 the loss scaler (train/scaler.h):
 *   loss_scale = dynamic (default) | NUMBER (a fixed scale)
 *   loss_scale_init = 65536, loss_scale_growth_interval = 2000 (dynamic) */
static int read_precision(struct lathe_run *run, lathe_section *s, int precision)
{
    static const char *const scale_keys[] = {"loss_scale", "loss_scale_init", "loss_scale_growth_interval"};
    static const enum lathe_dtype dtypes[] = {LATHE_F32, LATHE_BF16, LATHE_F16};
    struct lathe_loss_scaler *sc = &run->scaler;
    *sc = (struct lathe_loss_scaler){.scale = 1.0};
    if (precision != LATHE_PRECISION_FP16) {
        for (size_t i = 0; i < sizeof scale_keys / sizeof *scale_keys; i++)
            if (lathe_section_has(s, scale_keys[i]))
                return lathe_cfg_error(s, scale_keys[i], "loss scaling is for precision = fp16 only (bf16 keeps f32's "
                                                         "exponent range and needs none); remove the key");
    } else {
        const char *mode;
        int rc = lathe_cfg_string(s, "loss_scale", "dynamic", &mode);
        if (rc)
            return rc;
        sc->enabled = 1;
        sc->dynamic = strcmp(mode, "dynamic") == 0;
        if (!sc->dynamic) {
            char *end;
            sc->scale = strtod(mode, &end);
            if (end == mode || *end || !(sc->scale > 0.0) || sc->scale > FLT_MAX)
                return lathe_cfg_error(s, "loss_scale", "'%s' is neither 'dynamic' nor a positive number up to %g",
                                       mode, (double)FLT_MAX);
            for (size_t i = 1; i < sizeof scale_keys / sizeof *scale_keys; i++)
                if (lathe_section_has(s, scale_keys[i]))
                    return lathe_cfg_error(s, scale_keys[i], "only for loss_scale = dynamic (this run has a fixed "
                                                             "loss_scale = %s); remove the key", mode);
        } else if ((rc = lathe_cfg_float(s, "loss_scale_init", 65536.0, 0x1p-24, FLT_MAX, &sc->scale)) ||
                   (rc = lathe_cfg_int(s, "loss_scale_growth_interval", 2000, 1, INT64_MAX, &sc->growth_interval))) {
            return rc;
        }
    }
    return lathe_set_compute_dtype(dtypes[precision]);
}

static int read_run_settings(struct lathe_run *run)
{
    lathe_section *s = lathe_config_section(run->cfg, "run");
    char base[256], def_out[512];
    snprintf(def_out, sizeof def_out, "runs/%s",
             basename_noext(lathe_config_path(run->cfg), base, sizeof base));
    const char *out;
    int64_t seed;
    int device, precision, allow_tf32;
    static const char *const devices[] = {"cpu", "cuda", NULL};
    static const char *const precisions[] = {"fp32", "bf16", "fp16", NULL};
    int rc;
    if ((rc = lathe_cfg_string(s, "output_dir", def_out, &out)) ||
        (rc = lathe_cfg_int(s, "seed", 1234, 0, INT64_MAX, &seed)) ||
        (rc = lathe_cfg_choice(s, "device", "cpu", devices, &device)) ||
        (rc = lathe_cfg_choice(s, "precision", "fp32", precisions, &precision)) ||
        (rc = lathe_cfg_bool(s, "allow_tf32", 0, &allow_tf32)))
        return rc;
    if ((rc = read_precision(run, s, precision)))
        return rc;
    snprintf(run->output_dir, sizeof run->output_dir, "%s", out);
    run->env.size = sizeof run->env;
    run->env.output_dir = run->output_dir;
    run->env.seed = (uint64_t)seed;
    /* [run] backend: which backend component serves the device (tests
     * name "fakedev"); the CPU device has only the built-in one */
    const char *backend;
    if ((rc = lathe_cfg_string(s, "backend", device == LATHE_DEVICE_CUDA ? "cuda" : "cpu", &backend)))
        return rc;
    if (device == LATHE_DEVICE_CPU && strcmp(backend, "cpu") != 0)
        return lathe_cfg_error(s, "backend", "device = cpu uses the built-in backend 'cpu'; set device = cuda "
                                             "for backend = %s", backend);
    if (device == LATHE_DEVICE_CUDA && (rc = use_cuda(run, s, backend, allow_tf32)))
        return rc;
    const struct lathe_backend_ops *be = lathe_backend();
    if (precision != LATHE_PRECISION_FP32 && !(LATHE_OPS_HAS(be, struct lathe_backend_ops, gemm_lowp) &&
                                               LATHE_OPS_HAS(be, struct lathe_backend_ops, round_to)))
        return lathe_cfg_error(s, "precision", "backend '%s' has no 16-bit matrix products (gemm_lowp, round_to; "
                               "ABI 1.2); use precision = fp32", be->name);
    run->env.device = device;
    run->env.precision = precision;
    run->env.rank = 0;
    run->env.world_size = 1;
    run->env.config = run->cfg;

    struct lathe_train_settings *t = &run->train;
    s = lathe_config_section(run->cfg, "train");
    if ((rc = lathe_cfg_require(s, "steps")) ||
        (rc = lathe_cfg_int(s, "steps", 0, 1, INT64_MAX / 2, &t->steps)) ||
        (rc = lathe_cfg_int(s, "batch_size", 8, 1, 1 << 20, &t->batch_size)) ||
        (rc = lathe_cfg_int(s, "grad_accum", 1, 1, 1 << 20, &t->grad_accum)) ||
        (rc = lathe_cfg_float(s, "max_grad_norm", 1.0, 0.0, 1e30, &t->max_grad_norm)) ||
        (rc = lathe_cfg_int(s, "eval_every", 0, 0, INT64_MAX, &t->eval_every)) ||
        (rc = lathe_cfg_int(s, "eval_batches", 0, 0, INT64_MAX, &t->eval_batches)) ||
        (rc = lathe_cfg_bool(s, "eval_at_start", 0, &t->eval_at_start)) ||
        (rc = lathe_cfg_bool(s, "save_final", 1, &t->save_final)) ||
        (rc = lathe_cfg_int(s, "log_every", 1, 1, INT64_MAX, &t->log_every)) ||
        (rc = lathe_cfg_int(s, "checkpoint_every", 0, 0, INT64_MAX, &t->checkpoint_every)) ||
        (rc = lathe_cfg_int(s, "keep_checkpoints", 2, 1, 1000000, &t->keep_checkpoints)) ||
        (rc = lathe_cfg_int(s, "early_stopping_patience", 0, 0, INT64_MAX, &t->patience)) ||
        (rc = lathe_cfg_float(s, "early_stopping_min_delta", 0.0, 0.0, 1e30, &t->min_delta)) ||
        (rc = lathe_cfg_int(s, "threads", 0, 0, 4096, &t->threads)) ||
        (rc = lathe_cfg_bool(s, "activation_checkpointing", 0, &t->activation_checkpointing)))
        return rc;
    if (t->eval_at_start && t->eval_every == 0)
        return lathe_cfg_error(s, "eval_at_start", "set eval_every > 0 too (evaluations need a schedule)");
    if (t->patience > 0 && t->eval_every == 0)
        return lathe_cfg_error(s, "early_stopping_patience",
                               "early stopping needs evaluations; set eval_every > 0");
    run->env.batch_size = t->batch_size;
    run->env.grad_accum = t->grad_accum;
    run->env.steps = t->steps;

    s = lathe_config_section(run->cfg, "log");
    if ((rc = lathe_cfg_bool(s, "tensorboard", 1, &run->tensorboard)) ||
        (rc = lathe_cfg_bool(s, "jsonl", 1, &run->jsonl)))
        return rc;
    return LATHE_OK;
}

static int collect_params(struct lathe_run *run)
{
    const struct lathe_model_ops *mo = run->model.ops;
    int rc = mo->params(run->model.self, &run->params, &run->nparams);
    if (rc != LATHE_OK)
        return created(run, &run->model, rc);
    if (run->peft.ops) {
        const struct lathe_peft_ops *po = run->peft.ops;
        struct lathe_linear *const *lin = NULL;
        size_t nlin = 0;
        if (!LATHE_OPS_HAS(mo, struct lathe_model_ops, linears))
            return lathe_error(LATHE_EUNSUPPORTED, "[peft] %s: model '%s' exposes no linear layers to wrap",
                               run->peft.name, run->model.name);
        if ((rc = mo->linears(run->model.self, &lin, &nlin)) != LATHE_OK)
            return created(run, &run->model, rc);
        if ((rc = po->apply(run->peft.self, lin, nlin, run->params, run->nparams)) != LATHE_OK)
            return created(run, &run->peft, rc);
    }
    lathe_tensor *const *extra = NULL;
    size_t nextra = 0;
    if (run->peft.ops && (rc = ((const struct lathe_peft_ops *)run->peft.ops)->params(run->peft.self, &extra, &nextra)))
        return created(run, &run->peft, rc);
    run->trainable = calloc(run->nparams + nextra + 1, sizeof *run->trainable);
    if (!run->trainable)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    for (size_t i = 0; i < run->nparams; i++)
        if (run->params[i]->requires_grad)
            run->trainable[run->ntrainable++] = run->params[i];
    for (size_t i = 0; i < nextra; i++)
        if (extra[i]->requires_grad)
            run->trainable[run->ntrainable++] = extra[i];
    if (run->ntrainable == 0)
        return lathe_error(LATHE_EINVAL, "the model has no trainable parameter");
    return LATHE_OK;
}

/* [comm] when [parallel] asks for a strategy: the ranks are known before
 * any other component is made. */
static int create_comm(struct lathe_run *run)
{
    if (!lathe_config_has_section(run->cfg, "parallel"))
        return lathe_config_has_section(run->cfg, "comm")
                   ? lathe_error(LATHE_ECONFIG, "%s: [comm] without [parallel]: name a strategy (plugin = ddp | zero)",
                                 lathe_config_path(run->cfg))
                   : LATHE_OK;
    int rc = find_component(run, LATHE_KIND_COMM, "comm", "mpi", &run->comm);
    if (rc == LATHE_OK)
        rc = create_simple(run, &run->comm);
    if (rc != LATHE_OK)
        return rc;
    const struct lathe_comm_ops *co = run->comm.ops;
    run->env.rank = co->rank(run->comm.self);
    run->env.world_size = co->world_size(run->comm.self);
    if (run->train.batch_size % run->env.world_size != 0)
        return lathe_error(LATHE_ECONFIG, "%s: [train] batch_size %lld is the global batch; it must divide among %d processes",
                           lathe_config_path(run->cfg), (long long)run->train.batch_size, run->env.world_size);
    return LATHE_OK;
}

/* [parallel] wraps the trainable parameters; the optimizer then sees what
 * the strategy hands out. Without one, the optimizer sees them all. */
static int create_strategy(struct lathe_run *run)
{
    run->optim_params = run->trainable;
    run->noptim = run->ntrainable;
    if (!run->comm.self)
        return LATHE_OK;
    int rc = find_component(run, LATHE_KIND_STRATEGY, "parallel", NULL, &run->strategy);
    if (rc != LATHE_OK)
        return rc;
    const struct lathe_strategy_ops *so = run->strategy.ops;
    rc = created(run, &run->strategy,
                 so->create(lathe_config_section(run->cfg, "parallel"), &run->env, run->comm.ops, run->comm.self,
                            run->trainable, run->ntrainable, &run->strategy.self));
    if (rc == LATHE_OK && LATHE_OPS_HAS(so, struct lathe_strategy_ops, optim_params))
        rc = created(run, &run->strategy, so->optim_params(run->strategy.self, &run->optim_params, &run->noptim));
    /* the optimizer follows its tensors: host memory under cpu_offload */
    if (rc == LATHE_OK && LATHE_OPS_HAS(so, struct lathe_strategy_ops, optim_device) && so->optim_device) {
        int dev = so->optim_device(run->strategy.self);
        if (dev == LATHE_DEVICE_CPU && run->env.device != LATHE_DEVICE_CPU)
            run->optim_backend = lathe_backend_cpu();
        else if (dev != run->env.device)
            rc = lathe_error(LATHE_EUNSUPPORTED,
                             "[parallel] %s: optim_device asks for device %d (enum lathe_device), but the run is on "
                             "%s; only the run's device or the host (cpu_offload) can hold the optimizer",
                             run->strategy.name, dev, run->env.device == LATHE_DEVICE_CPU ? "the CPU" : "CUDA");
    }
    /* a strategy that gathers parameters per segment (ZeRO-3) does it
     * through the segment hooks */
    if (rc == LATHE_OK && (LATHE_OPS_HAS(so, struct lathe_strategy_ops, acquire) ||
                           LATHE_OPS_HAS(so, struct lathe_strategy_ops, release))) {
        struct lathe_segment_hooks h = {
            .acquire = LATHE_OPS_HAS(so, struct lathe_strategy_ops, acquire) ? so->acquire : NULL,
            .release = LATHE_OPS_HAS(so, struct lathe_strategy_ops, release) ? so->release : NULL,
            .self = run->strategy.self,
        };
        lathe_segment_set_hooks(&h);
    }
    return rc;
}

/* [train] activation_checkpointing: the model must run its blocks as
 * segments, or there is nothing to recompute. */
static int setup_recompute(struct lathe_run *run)
{
    const struct lathe_model_ops *mo = run->model.ops;
    lathe_segment_set_recompute(0);
    if (!run->train.activation_checkpointing)
        return LATHE_OK;
    const struct lathe_segment *const *segs = NULL;
    size_t n = 0;
    int rc = LATHE_OPS_HAS(mo, struct lathe_model_ops, segments) ? mo->segments(run->model.self, &segs, &n)
                                                                  : LATHE_EUNSUPPORTED;
    if (rc != LATHE_OK || n == 0)
        return lathe_cfg_error(lathe_config_section(run->cfg, "train"), "activation_checkpointing",
                               "model plugin '%s' does not run its blocks as segments (lathe/segment.h), so "
                               "there is nothing to recompute; set it to false",
                               run->model.name);
    lathe_segment_set_recompute(1);
    if (run->env.rank == 0)
        printf("[train] activation_checkpointing: the %zu segments of model '%s' are recomputed in the backward "
               "pass (one more forward per step; activations kept only at segment boundaries)\n",
               n, run->model.name);
    return LATHE_OK;
}

const struct lathe_backend_ops *lathe_run_optim_begin(const struct lathe_run *run)
{
    const struct lathe_backend_ops *prev = lathe_backend();
    /* setting a backend fails only for one with a short ops struct; the CPU
     * backend and the one that was current are neither */
    if (run->optim_backend)
        (void)lathe_backend_set(run->optim_backend);
    return prev;
}

void lathe_run_optim_end(const struct lathe_backend_ops *prev)
{
    if (prev != lathe_backend())
        (void)lathe_backend_set(prev);
}

int lathe_run_barrier(struct lathe_run *run)
{
    if (!run->comm.self)
        return LATHE_OK;
    return ((const struct lathe_comm_ops *)run->comm.ops)->barrier(run->comm.self);
}

int lathe_run_allreduce_mean(struct lathe_run *run, double *v, int n)
{
    if (!run->comm.self || run->env.world_size == 1)
        return LATHE_OK;
    float buf[16];
    if (n > 16)
        return lathe_error(LATHE_EINVAL, "internal: allreduce of %d values", n);
    for (int i = 0; i < n; i++)
        buf[i] = (float)v[i];
    /* communicators take buffers in the run's memory (parallel.h) */
    const struct lathe_backend_ops *be = lathe_backend();
    float *dev = be->alloc(sizeof buf);
    if (!dev)
        return lathe_error(LATHE_ENOMEM, "out of memory for a %d-value all-reduce", n);
    int rc = be->copy(dev, buf, (size_t)n * sizeof *buf, 1);
    if (rc == LATHE_OK)
        rc = ((const struct lathe_comm_ops *)run->comm.ops)->all_reduce(run->comm.self, dev, n, LATHE_F32,
                                                                        LATHE_REDUCE_AVG);
    if (rc == LATHE_OK)
        rc = be->copy(buf, dev, (size_t)n * sizeof *buf, 0);
    be->free(dev);
    for (int i = 0; rc == LATHE_OK && i < n; i++)
        v[i] = buf[i];
    return rc;
}

int lathe_run_create(struct lathe_run **out, const struct lathe_run_opts *o)
{
    *out = NULL;
    struct lathe_run *run = calloc(1, sizeof *run);
    if (!run)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    run->resume = o->resume;
    int rc = LATHE_OK;
    run->cfg = lathe_config_load(o->ini_path);
    if (!run->cfg)
        rc = LATHE_ECONFIG;
    for (size_t i = 0; rc == LATHE_OK && i < o->noverrides; i++)
        rc = lathe_config_override(run->cfg, o->overrides[i]);
    /* the registry first: device = cuda finds its backend there */
    if (rc == LATHE_OK)
        rc = open_registry(run, o->plugin_path);
    if (rc == LATHE_OK)
        rc = read_run_settings(run);
    if (rc == LATHE_OK)
        rc = create_comm(run);
    /* model first: the others may ask it (vocabulary, context) */
    if (rc == LATHE_OK && !(rc = find_component(run, LATHE_KIND_MODEL, "model", NULL, &run->model)))
        rc = create_simple(run, &run->model);
    if (rc == LATHE_OK && lathe_config_has_section(run->cfg, "peft") &&
        !(rc = find_component(run, LATHE_KIND_PEFT, "peft", NULL, &run->peft)))
        rc = create_simple(run, &run->peft);
    if (rc == LATHE_OK)
        rc = collect_params(run);
    if (rc == LATHE_OK)
        rc = setup_recompute(run);
    if (rc == LATHE_OK) {
        /* what sampling and scoring components need (RL rollouts) */
        run->env.model_ops = run->model.ops;
        run->env.model_self = run->model.self;
        run->env.peft_ops = run->peft.ops;
        run->env.peft_self = run->peft.self;
        rc = lathe_rewards_create(run->cfg, run->reg, &run->env, &run->rewards, &run->nrewards);
        run->env.rewards = run->rewards;
        run->env.nrewards = run->nrewards;
    }
    if (rc == LATHE_OK && !(rc = find_component(run, LATHE_KIND_DATA, "data", NULL, &run->data)))
        rc = create_simple(run, &run->data);
    if (rc == LATHE_OK && !(rc = find_component(run, LATHE_KIND_LOSS, "loss", "cross-entropy", &run->loss)))
        rc = create_simple(run, &run->loss);
    if (rc == LATHE_OK && !(rc = find_component(run, LATHE_KIND_SCHEDULER, "schedule", "constant", &run->sched)))
        rc = create_simple(run, &run->sched);
    if (rc == LATHE_OK)
        rc = create_strategy(run);
    if (rc == LATHE_OK && !(rc = find_component(run, LATHE_KIND_OPTIMIZER, "optim", "adamw", &run->optim))) {
        const struct lathe_optim_ops *oo = run->optim.ops;
        /* its state in the memory of the tensors it updates */
        const struct lathe_backend_ops *prev = lathe_run_optim_begin(run);
        rc = created(run, &run->optim, oo->create(lathe_config_section(run->cfg, "optim"), &run->env,
                                                  run->optim_params, run->noptim, &run->optim.self));
        lathe_run_optim_end(prev);
    }
    if (rc == LATHE_OK)
        rc = lathe_config_check_unused(run->cfg);
    if (rc != LATHE_OK) {
        lathe_run_destroy(run);
        return rc;
    }
    *out = run;
    return LATHE_OK;
}

void lathe_run_destroy(struct lathe_run *run)
{
    if (!run)
        return;
    lathe_set_compute_dtype(LATHE_F32); /* the precision is the run's, not the process's */
    lathe_segment_set_hooks(NULL);
    lathe_segment_set_recompute(0);
    for (size_t i = 0; i < run->nloggers; i++)
        if (run->log_self[i])
            run->log_ops[i]->destroy(run->log_self[i]);
    /* the optimizer frees its state through the backend it made it with */
    const struct lathe_backend_ops *prev = lathe_run_optim_begin(run);
    destroy_component(&run->optim);
    lathe_run_optim_end(prev);
    destroy_component(&run->strategy);
    destroy_component(&run->sched);
    destroy_component(&run->loss);
    destroy_component(&run->data);
    lathe_rewards_destroy(run->rewards, run->nrewards);
    destroy_component(&run->peft);
    destroy_component(&run->model);
    free(run->trainable);
    destroy_component(&run->comm); /* last: others may talk through it while going */
    if (run->env.device == LATHE_DEVICE_CUDA) /* before its plugin is closed */
        lathe_backend_set(lathe_backend_cpu());
    lathe_registry_close(run->reg);
    lathe_config_free(run->cfg);
    free(run);
}

int lathe_run_dump_config(struct lathe_run *run, FILE *f)
{
    return lathe_config_dump(run->cfg, f);
}
