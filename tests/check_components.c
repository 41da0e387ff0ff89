/* tests/check_components.c — the in-tree component plugins (plugins/):
 * adamw, sgd, the schedules, cross-entropy, mse, text and gpt2, each loaded
 * from its .so with dlopen (not through the loader, which has its own
 * suite) and checked against references written out here in double. */
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lathe/lathe.h>

#include "tensor/state.h"
#include "testutil.h"

/* ---- plugin access ---------------------------------------------------- */

/* The ops of component (kind, name) in LATHE_PLUGIN_PATH/file. Handles stay
 * open for the life of the (forked) test. */
static const void *component(const char *file, int kind, const char *name)
{
    const char *dir = getenv("LATHE_PLUGIN_PATH");
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir && dir[0] ? dir : "plugins/.libs", file);
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    ck_assert_msg(h != NULL, "dlopen %s: %s", path, dlerror());
    lathe_plugin_describe_fn describe = (lathe_plugin_describe_fn)dlsym(h, LATHE_PLUGIN_SYMBOL);
    ck_assert_msg(describe != NULL, "%s exports no %s", path, LATHE_PLUGIN_SYMBOL);
    const struct lathe_plugin_desc *d = describe();
    ck_assert_int_eq(d->abi_major, LATHE_ABI_MAJOR);
    ck_assert_uint_eq(d->size, sizeof(struct lathe_plugin_desc));
    for (const struct lathe_component *c = d->components; c->kind != LATHE_KIND_NONE; c++)
        if (c->kind == kind && strcmp(c->name, name) == 0) {
            ck_assert_uint_ge(*(const uint32_t *)c->ops, sizeof(uint32_t));
            return c->ops;
        }
    ck_abort_msg("%s has no %s component '%s'", path, lathe_kind_name(kind), name);
    return NULL;
}

#define OPTIM_OPS(file, name) ((const struct lathe_optim_ops *)component(file, LATHE_KIND_OPTIMIZER, name))
#define SCHED_OPS(name) ((const struct lathe_sched_ops *)component("lathe-schedules.so", LATHE_KIND_SCHEDULER, name))
#define LOSS_OPS(file, name) ((const struct lathe_loss_ops *)component(file, LATHE_KIND_LOSS, name))
#define DATA_OPS() ((const struct lathe_data_ops *)component("lathe-text.so", LATHE_KIND_DATA, "text"))
#define MODEL_OPS() ((const struct lathe_model_ops *)component("lathe-gpt2.so", LATHE_KIND_MODEL, "gpt2"))

static struct lathe_env make_env(lathe_config *cfg, uint64_t seed)
{
    struct lathe_env env = {
        .size = sizeof env,
        .output_dir = "/tmp",
        .seed = seed,
        .device = LATHE_DEVICE_CPU,
        .precision = LATHE_PRECISION_FP32,
        .batch_size = 2,
        .grad_accum = 1,
        .steps = 10,
        .rank = 0,
        .world_size = 1,
        .config = cfg,
    };
    return env;
}

static lathe_config *ini(const char *text)
{
    lathe_config *cfg = lathe_config_load_string("test.ini", text);
    ck_assert_msg(cfg != NULL, "config: %s", lathe_errmsg());
    return cfg;
}

static lathe_tensor *tensor_from(enum lathe_dtype dt, int ndim, const int64_t *shape, const double *v)
{
    lathe_tensor *t = lathe_tensor_new(dt, ndim, shape);
    ck_assert(t != NULL);
    for (int64_t i = 0; i < lathe_tensor_numel(t); i++) {
        if (dt == LATHE_F32)
            lathe_tensor_f32(t)[i] = (float)v[i];
        else
            lathe_tensor_i32(t)[i] = (int32_t)v[i];
    }
    return t;
}

/* ---- optimizers ------------------------------------------------------- */

/* Two parameters: a matrix (decayed) and a bias (1-D: not decayed by
 * default), with a gradient that changes every step. */
#define NW 12
#define NB 4
struct two_params {
    lathe_tensor *w, *b;
    lathe_tensor *list[2];
};

static void two_params_make(struct two_params *tp)
{
    int64_t ws[2] = {3, 4}, bs[1] = {NB};
    tp->w = lathe_param_new("w", 2, ws);
    tp->b = lathe_param_new("b", 1, bs);
    ck_assert(tp->w && tp->b);
    for (int i = 0; i < NW; i++)
        lathe_tensor_f32(tp->w)[i] = (float)(0.5 * sin(1.0 + i));
    for (int i = 0; i < NB; i++)
        lathe_tensor_f32(tp->b)[i] = (float)(0.3 * cos(2.0 + i));
    tp->list[0] = tp->w;
    tp->list[1] = tp->b;
}

static void two_params_free(struct two_params *tp)
{
    lathe_tensor_free(tp->w);
    lathe_tensor_free(tp->b);
}

static double grad_at(int step, int param, int i)
{
    return 0.1 * sin(0.7 * i + 1.3 * step + 2.1 * param) + 0.02 * (param ? 1 : -1);
}

static void two_params_grads(struct two_params *tp, int step)
{
    float *gw = lathe_tensor_f32(lathe_tensor_grad(tp->w));
    float *gb = lathe_tensor_f32(lathe_tensor_grad(tp->b));
    for (int i = 0; i < NW; i++)
        gw[i] = (float)grad_at(step, 0, i);
    for (int i = 0; i < NB; i++)
        gb[i] = (float)grad_at(step, 1, i);
}

static const double step_lr[3] = {0.1, 0.05, 0.02};

/* torch.optim.AdamW in double (its documented algorithm: decay first,
 * then the bias-corrected Adam step). */
static void adamw_reference(double *p, int np, int param, double wd, double b1, double b2, double eps,
                            double *out)
{
    double m[NW] = {0}, v[NW] = {0};
    for (int i = 0; i < np; i++)
        out[i] = p[i];
    for (int s = 0; s < 3; s++) {
        int t = s + 1;
        for (int i = 0; i < np; i++) {
            double g = (double)(float)grad_at(s, param, i);
            out[i] -= step_lr[s] * wd * out[i];
            m[i] = b1 * m[i] + (1 - b1) * g;
            v[i] = b2 * v[i] + (1 - b2) * g * g;
            double mh = m[i] / (1 - pow(b1, t)), vh = v[i] / (1 - pow(b2, t));
            out[i] -= step_lr[s] * mh / (sqrt(vh) + eps);
        }
    }
}

static void check_adamw(const char *section, double wd, int decay_bias)
{
    const struct lathe_optim_ops *ops = OPTIM_OPS("lathe-adamw.so", "adamw");
    lathe_config *cfg = ini(section);
    struct lathe_env env = make_env(cfg, 1);
    struct two_params tp;
    two_params_make(&tp);
    double w0[NW], b0[NB], wref[NW], bref[NB];
    for (int i = 0; i < NW; i++)
        w0[i] = lathe_tensor_f32(tp.w)[i];
    for (int i = 0; i < NB; i++)
        b0[i] = lathe_tensor_f32(tp.b)[i];

    void *o;
    ck_assert_msg(ops->create(lathe_config_section(cfg, "optim"), &env, tp.list, 2, &o) == LATHE_OK,
                  "%s", lathe_errmsg());
    ck_assert_int_eq(lathe_config_check_unused(cfg), LATHE_OK);
    ck_assert_double_eq_tol(ops->base_lr(o), 0.1, 1e-12);
    ck_assert_uint_eq(ops->state_bytes(o), 2 * (NW + NB) * sizeof(float));
    for (int s = 0; s < 3; s++) {
        two_params_grads(&tp, s);
        ck_assert_int_eq(ops->step(o, step_lr[s]), LATHE_OK);
    }
    adamw_reference(w0, NW, 0, wd, 0.8, 0.95, 1e-6, wref);
    adamw_reference(b0, NB, 1, decay_bias ? wd : 0.0, 0.8, 0.95, 1e-6, bref);
    for (int i = 0; i < NW; i++)
        ck_assert_double_eq_tol(lathe_tensor_f32(tp.w)[i], wref[i], 2e-6);
    for (int i = 0; i < NB; i++)
        ck_assert_double_eq_tol(lathe_tensor_f32(tp.b)[i], bref[i], 2e-6);
    ops->destroy(o);
    two_params_free(&tp);
    lathe_config_free(cfg);
}

START_TEST(adamw_no_decay)
{
    check_adamw("[optim]\nlr = 0.1\nbeta1 = 0.8\nbeta2 = 0.95\neps = 1e-6\n", 0.0, 0);
}
END_TEST

START_TEST(adamw_decay_skips_norm_and_bias)
{
    check_adamw("[optim]\nlr = 0.1\nbeta1 = 0.8\nbeta2 = 0.95\neps = 1e-6\nweight_decay = 0.5\n",
                0.5, 0);
}
END_TEST

START_TEST(adamw_decay_all)
{
    check_adamw("[optim]\nlr = 0.1\nbeta1 = 0.8\nbeta2 = 0.95\neps = 1e-6\nweight_decay = 0.5\n"
                "decay_norm_and_bias = true\n",
                0.5, 1);
}
END_TEST

/* A resumed optimizer (state saved after 2 steps, loaded into a fresh one
 * over a copy of the parameters) takes the same third step. */
static void check_optim_resume(const char *file, const char *name, const char *section)
{
    const struct lathe_optim_ops *ops = OPTIM_OPS(file, name);
    lathe_config *cfg = ini(section);
    struct lathe_env env = make_env(cfg, 1);
    struct two_params a, b;
    two_params_make(&a);
    two_params_make(&b);
    void *oa, *ob;
    lathe_section *s = lathe_config_section(cfg, "optim");
    ck_assert_int_eq(ops->create(s, &env, a.list, 2, &oa), LATHE_OK);
    ck_assert_int_eq(ops->create(s, &env, b.list, 2, &ob), LATHE_OK);
    for (int st = 0; st < 2; st++) {
        two_params_grads(&a, st);
        ck_assert_int_eq(ops->step(oa, step_lr[st]), LATHE_OK);
    }
    lathe_tensor_copy(b.w, a.w);
    lathe_tensor_copy(b.b, a.b);
    lathe_state *state = lathe_state_new();
    ck_assert(state != NULL);
    lathe_state_set_prefix(state, "optim.");
    ck_assert_msg(ops->state_save(oa, state) == LATHE_OK, "%s", lathe_errmsg());
    ck_assert_msg(ops->state_load(ob, state) == LATHE_OK, "%s", lathe_errmsg());
    two_params_grads(&a, 2);
    two_params_grads(&b, 2);
    ck_assert_int_eq(ops->step(oa, step_lr[2]), LATHE_OK);
    ck_assert_int_eq(ops->step(ob, step_lr[2]), LATHE_OK);
    for (int i = 0; i < NW; i++)
        ck_assert_float_eq(lathe_tensor_f32(a.w)[i], lathe_tensor_f32(b.w)[i]);
    for (int i = 0; i < NB; i++)
        ck_assert_float_eq(lathe_tensor_f32(a.b)[i], lathe_tensor_f32(b.b)[i]);
    lathe_state_free(state);
    ops->destroy(oa);
    ops->destroy(ob);
    two_params_free(&a);
    two_params_free(&b);
    lathe_config_free(cfg);
}

START_TEST(adamw_state_round_trip)
{
    check_optim_resume("lathe-adamw.so", "adamw", "[optim]\nlr = 0.1\nweight_decay = 0.1\n");
}
END_TEST

/* torch.optim.SGD in double. */
static void sgd_reference(double *p, int np, int param, double mu, double damp, double wd,
                          int nesterov, double *out)
{
    double buf[NW] = {0};
    for (int i = 0; i < np; i++)
        out[i] = p[i];
    for (int s = 0; s < 3; s++)
        for (int i = 0; i < np; i++) {
            double d = (double)(float)grad_at(s, param, i) + wd * out[i];
            if (mu != 0.0) {
                buf[i] = s == 0 ? d : mu * buf[i] + (1 - damp) * d;
                d = nesterov ? d + mu * buf[i] : buf[i];
            }
            out[i] -= step_lr[s] * d;
        }
}

static void check_sgd(const char *section, double mu, double damp, double wd, int nesterov)
{
    const struct lathe_optim_ops *ops = OPTIM_OPS("lathe-sgd.so", "sgd");
    lathe_config *cfg = ini(section);
    struct lathe_env env = make_env(cfg, 1);
    struct two_params tp;
    two_params_make(&tp);
    double w0[NW], b0[NB], wref[NW], bref[NB];
    for (int i = 0; i < NW; i++)
        w0[i] = lathe_tensor_f32(tp.w)[i];
    for (int i = 0; i < NB; i++)
        b0[i] = lathe_tensor_f32(tp.b)[i];
    void *o;
    ck_assert_msg(ops->create(lathe_config_section(cfg, "optim"), &env, tp.list, 2, &o) == LATHE_OK,
                  "%s", lathe_errmsg());
    ck_assert_int_eq(lathe_config_check_unused(cfg), LATHE_OK);
    size_t want_bytes = mu != 0.0 ? (NW + NB) * sizeof(float) : 0;
    ck_assert_uint_eq(ops->state_bytes(o), want_bytes);
    for (int s = 0; s < 3; s++) {
        two_params_grads(&tp, s);
        ck_assert_int_eq(ops->step(o, step_lr[s]), LATHE_OK);
    }
    sgd_reference(w0, NW, 0, mu, damp, wd, nesterov, wref);
    sgd_reference(b0, NB, 1, mu, damp, wd, nesterov, bref);
    for (int i = 0; i < NW; i++)
        ck_assert_double_eq_tol(lathe_tensor_f32(tp.w)[i], wref[i], 1e-6);
    for (int i = 0; i < NB; i++)
        ck_assert_double_eq_tol(lathe_tensor_f32(tp.b)[i], bref[i], 1e-6);
    ops->destroy(o);
    two_params_free(&tp);
    lathe_config_free(cfg);
}

START_TEST(sgd_plain)
{
    check_sgd("[optim]\nlr = 0.1\nweight_decay = 0.2\n", 0.0, 0.0, 0.2, 0);
}
END_TEST

START_TEST(sgd_momentum_dampening)
{
    check_sgd("[optim]\nlr = 0.1\nmomentum = 0.9\ndampening = 0.3\nweight_decay = 0.2\n",
              0.9, 0.3, 0.2, 0);
}
END_TEST

START_TEST(sgd_nesterov)
{
    check_sgd("[optim]\nlr = 0.1\nmomentum = 0.8\nnesterov = yes\nweight_decay = 0.1\n",
              0.8, 0.0, 0.1, 1);
}
END_TEST

START_TEST(sgd_state_round_trip)
{
    check_optim_resume("lathe-sgd.so", "sgd", "[optim]\nlr = 0.1\nmomentum = 0.9\n");
}
END_TEST

/* create() must fail with LATHE_ECONFIG and a message naming `key`. */
static void expect_optim_refusal(const char *file, const char *name, const char *section,
                                 const char *key)
{
    const struct lathe_optim_ops *ops = OPTIM_OPS(file, name);
    lathe_config *cfg = ini(section);
    struct lathe_env env = make_env(cfg, 1);
    struct two_params tp;
    two_params_make(&tp);
    void *o = (void *)1;
    int rc = ops->create(lathe_config_section(cfg, "optim"), &env, tp.list, 2, &o);
    ck_assert_int_eq(rc, LATHE_ECONFIG);
    ck_assert_ptr_null(o);
    ck_assert_msg(strstr(lathe_errmsg(), key) != NULL, "message '%s' does not name '%s'",
                  lathe_errmsg(), key);
    two_params_free(&tp);
    lathe_config_free(cfg);
}

START_TEST(optim_refusals)
{
    expect_optim_refusal("lathe-sgd.so", "sgd", "[optim]\nnesterov = true\n", "nesterov");
    expect_optim_refusal("lathe-sgd.so", "sgd",
                         "[optim]\nnesterov = true\nmomentum = 0.9\ndampening = 0.1\n", "nesterov");
    expect_optim_refusal("lathe-sgd.so", "sgd", "[optim]\nlr = 0\n", "lr");
    expect_optim_refusal("lathe-adamw.so", "adamw", "[optim]\nlr = -1\n", "lr");
    expect_optim_refusal("lathe-adamw.so", "adamw", "[optim]\nbeta2 = 1\n", "beta2");
    expect_optim_refusal("lathe-adamw.so", "adamw", "[optim]\nweight_decay = -0.1\n",
                         "weight_decay");
}
END_TEST

START_TEST(optim_unknown_key)
{
    const struct lathe_optim_ops *ops = OPTIM_OPS("lathe-adamw.so", "adamw");
    lathe_config *cfg = ini("[optim]\nlr = 0.1\nmomentum = 0.9\n");
    struct lathe_env env = make_env(cfg, 1);
    struct two_params tp;
    two_params_make(&tp);
    void *o;
    ck_assert_int_eq(ops->create(lathe_config_section(cfg, "optim"), &env, tp.list, 2, &o), LATHE_OK);
    /* adamw has no momentum: the key stays unread and the run refuses it */
    ck_assert_int_ne(lathe_config_check_unused(cfg), LATHE_OK);
    ck_assert(strstr(lathe_errmsg(), "momentum") != NULL);
    ops->destroy(o);
    two_params_free(&tp);
    lathe_config_free(cfg);
}
END_TEST

/* ---- schedules -------------------------------------------------------- */

static void *sched_make(const struct lathe_sched_ops *ops, lathe_config *cfg)
{
    struct lathe_env env = make_env(cfg, 1);
    void *s;
    ck_assert_msg(ops->create(lathe_config_section(cfg, "scheduler"), &env, &s) == LATHE_OK, "%s",
                  lathe_errmsg());
    ck_assert_int_eq(lathe_config_check_unused(cfg), LATHE_OK);
    return s;
}

START_TEST(schedules_formulas)
{
    const int W = 10, total = 110;
    const double r = 0.1;
    const int64_t steps[] = {0, 4, 9, 10, 35, 60, 85, 109, 110, 500};
    const char *names[] = {"constant", "linear", "cosine"};
    for (int k = 0; k < 3; k++) {
        const struct lathe_sched_ops *ops = SCHED_OPS(names[k]);
        lathe_config *cfg = ini(k == 0 ? "[scheduler]\nwarmup_steps = 10\n"
                                       : "[scheduler]\nwarmup_steps = 10\nmin_lr_ratio = 0.1\n");
        void *s = sched_make(ops, cfg);
        for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
            int64_t t = steps[i];
            double want;
            if (t < W) {
                want = (t + 1.0) / W;
            } else {
                double p = fmin(1.0, (double)(t - W) / (total - W));
                want = k == 0 ? 1.0 : k == 1 ? r + (1 - r) * (1 - p)
                                             : r + (1 - r) * 0.5 * (1 + cos(M_PI * p));
            }
            ck_assert_msg(fabs(ops->factor(s, t, total) - want) < 1e-12,
                          "%s: factor(%lld) = %g, want %g", names[k], (long long)t,
                          ops->factor(s, t, total), want);
        }
        /* spot values that do not depend on the formula above */
        ck_assert_double_eq_tol(ops->factor(s, 0, total), 0.1, 1e-12);
        ck_assert_double_eq_tol(ops->factor(s, 10, total), 1.0, 1e-12);
        ck_assert_double_eq_tol(ops->factor(s, 60, total), k == 0 ? 1.0 : 0.55, 1e-12);
        ck_assert_double_eq_tol(ops->factor(s, 110, total), k == 0 ? 1.0 : 0.1, 1e-12);
        ops->destroy(s);
        lathe_config_free(cfg);
    }
}
END_TEST

START_TEST(schedules_defaults)
{
    /* no warmup, decay to 0: cosine at a quarter is (1 + cos(pi/4)) / 2 */
    lathe_config *cfg = ini("[scheduler]\n");
    const struct lathe_sched_ops *ops = SCHED_OPS("cosine");
    void *s = sched_make(ops, cfg);
    ck_assert_double_eq_tol(ops->factor(s, 0, 100), 1.0, 1e-12);
    ck_assert_double_eq_tol(ops->factor(s, 25, 100), 0.5 * (1 + sqrt(0.5)), 1e-12);
    ck_assert_double_eq_tol(ops->factor(s, 100, 100), 0.0, 1e-12);
    ops->destroy(s);
    lathe_config_free(cfg);
}
END_TEST

START_TEST(schedules_refusals)
{
    struct lathe_env env;
    void *s;
    /* min_lr_ratio out of range */
    lathe_config *cfg = ini("[scheduler]\nmin_lr_ratio = 1.5\n");
    env = make_env(cfg, 1);
    ck_assert_int_eq(SCHED_OPS("linear")->create(lathe_config_section(cfg, "scheduler"), &env, &s),
                     LATHE_ECONFIG);
    ck_assert(strstr(lathe_errmsg(), "min_lr_ratio") != NULL);
    lathe_config_free(cfg);
    /* constant has no floor: the key is left unread and refused */
    cfg = ini("[scheduler]\nmin_lr_ratio = 0.5\n");
    env = make_env(cfg, 1);
    const struct lathe_sched_ops *ops = SCHED_OPS("constant");
    ck_assert_int_eq(ops->create(lathe_config_section(cfg, "scheduler"), &env, &s), LATHE_OK);
    ck_assert_int_ne(lathe_config_check_unused(cfg), LATHE_OK);
    ck_assert(strstr(lathe_errmsg(), "min_lr_ratio") != NULL);
    ops->destroy(s);
    lathe_config_free(cfg);
    cfg = ini("[scheduler]\nwarmup_steps = -1\n");
    env = make_env(cfg, 1);
    ck_assert_int_eq(SCHED_OPS("cosine")->create(lathe_config_section(cfg, "scheduler"), &env, &s),
                     LATHE_ECONFIG);
    lathe_config_free(cfg);
}
END_TEST

/* ---- losses ----------------------------------------------------------- */

/* logits [2,3,5] with fixed values; labels [2,3] with one ignored. */
static const double xent_logits[30] = {
    0.1, -0.4, 1.2, 0.3, -1.0, 2.0, 0.5, -0.3, 0.0, 0.7, -0.2, 0.9, 0.4, -1.5, 0.2,
    1.1, 0.0, -0.6, 0.8, 0.3, -0.9, 0.6, 1.4, -0.1, 0.05, 0.3, 0.3, -0.7, 1.8, -0.4};
static const double xent_labels[6] = {2, 0, LATHE_IGNORE_INDEX, 3, 1, 4};

static void *loss_make(const struct lathe_loss_ops *ops, lathe_config *cfg)
{
    struct lathe_env env = make_env(cfg, 1);
    void *l;
    ck_assert_msg(ops->create(lathe_config_section(cfg, "loss"), &env, &l) == LATHE_OK, "%s",
                  lathe_errmsg());
    ck_assert_int_eq(lathe_config_check_unused(cfg), LATHE_OK);
    return l;
}

START_TEST(cross_entropy_matches_op)
{
    const struct lathe_loss_ops *ops = LOSS_OPS("lathe-cross-entropy.so", "cross-entropy");
    const char *sections[] = {"[loss]\n", "[loss]\nlabel_smoothing = 0.2\n",
                              "[loss]\nignore_index = 3\nlabel_smoothing = 0.1\n"};
    const int32_t ignore[] = {LATHE_IGNORE_INDEX, LATHE_IGNORE_INDEX, 3};
    const float smooth[] = {0.0f, 0.2f, 0.1f};
    for (int k = 0; k < 3; k++) {
        lathe_config *cfg = ini(sections[k]);
        void *l = loss_make(ops, cfg);
        lathe_scope_push();
        int64_t ls[3] = {2, 3, 5}, bs[2] = {2, 3};
        lathe_tensor *logits = tensor_from(LATHE_F32, 3, ls, xent_logits);
        struct lathe_batch batch = {.size = sizeof batch, .B = 2, .T = 3};
        double labels[6];
        for (int n = 0; n < 6; n++)
            labels[n] = xent_labels[n] == LATHE_IGNORE_INDEX ? ignore[k] : xent_labels[n];
        batch.labels = tensor_from(LATHE_I32, 2, bs, labels);
        lathe_tensor *got = ops->forward(l, logits, &batch);
        lathe_tensor *want = lathe_cross_entropy(logits, batch.labels, ignore[k], smooth[k]);
        ck_assert_msg(got && want, "%s", lathe_errmsg());
        ck_assert_int_eq(lathe_tensor_numel(got), 1);
        ck_assert_float_eq_tol(lathe_tensor_f32(got)[0], lathe_tensor_f32(want)[0], 1e-6);
        ck_assert(lathe_tensor_f32(got)[0] > 0.5f);
        lathe_scope_pop();
        ops->destroy(l);
        lathe_config_free(cfg);
    }
    /* and against a hand computation for the plain case */
    lathe_config *cfg = ini("[loss]\n");
    void *l = loss_make(ops, cfg);
    lathe_scope_push();
    int64_t ls[3] = {2, 3, 5}, bs[2] = {2, 3};
    struct lathe_batch batch = {.size = sizeof batch, .B = 2, .T = 3};
    batch.labels = tensor_from(LATHE_I32, 2, bs, xent_labels);
    lathe_tensor *got = ops->forward(l, tensor_from(LATHE_F32, 3, ls, xent_logits), &batch);
    double sum = 0;
    int count = 0;
    for (int n = 0; n < 6; n++) {
        if (xent_labels[n] == LATHE_IGNORE_INDEX)
            continue;
        double mx = -1e30, z = 0;
        for (int v = 0; v < 5; v++)
            mx = fmax(mx, xent_logits[n * 5 + v]);
        for (int v = 0; v < 5; v++)
            z += exp(xent_logits[n * 5 + v] - mx);
        sum += mx + log(z) - xent_logits[n * 5 + (int)xent_labels[n]];
        count++;
    }
    ck_assert_double_eq_tol(lathe_tensor_f32(got)[0], sum / count, 1e-5);
    lathe_scope_pop();
    ops->destroy(l);
    lathe_config_free(cfg);
}
END_TEST

START_TEST(cross_entropy_refusals)
{
    const struct lathe_loss_ops *ops = LOSS_OPS("lathe-cross-entropy.so", "cross-entropy");
    lathe_config *cfg = ini("[loss]\nlabel_smoothing = 1.0\n");
    struct lathe_env env = make_env(cfg, 1);
    void *l;
    ck_assert_int_eq(ops->create(lathe_config_section(cfg, "loss"), &env, &l), LATHE_ECONFIG);
    ck_assert(strstr(lathe_errmsg(), "label_smoothing") != NULL);
    lathe_config_free(cfg);
    /* a batch without labels */
    cfg = ini("[loss]\n");
    l = loss_make(ops, cfg);
    lathe_scope_push();
    int64_t ls[3] = {2, 3, 5};
    struct lathe_batch batch = {.size = sizeof batch, .B = 2, .T = 3};
    ck_assert_ptr_null(ops->forward(l, tensor_from(LATHE_F32, 3, ls, xent_logits), &batch));
    ck_assert(strstr(lathe_errmsg(), "labels") != NULL);
    lathe_scope_pop();
    ops->destroy(l);
    lathe_config_free(cfg);
}
END_TEST

START_TEST(mse_regression)
{
    const struct lathe_loss_ops *ops = LOSS_OPS("lathe-mse.so", "mse");
    lathe_config *cfg = ini("[loss]\n");
    void *l = loss_make(ops, cfg);
    lathe_scope_push();
    const double y[6] = {0.5, -1.0, 2.0, 0.25, 0.0, 3.0}, t[6] = {1.0, -1.5, 2.0, 0.0, 1.0, 1.0};
    int64_t shape[2] = {2, 3};
    lathe_tensor *logits = tensor_from(LATHE_F32, 2, shape, y);
    struct lathe_batch batch = {.size = sizeof batch, .B = 2, .T = 3};
    batch.targets = tensor_from(LATHE_F32, 2, shape, t);
    lathe_tensor *loss = ops->forward(l, logits, &batch);
    ck_assert_msg(loss != NULL, "%s", lathe_errmsg());
    double want = 0;
    for (int i = 0; i < 6; i++)
        want += (y[i] - t[i]) * (y[i] - t[i]) / 6.0;
    ck_assert_double_eq_tol(lathe_tensor_f32(loss)[0], want, 1e-6);
    /* targets of another shape are refused */
    int64_t other[2] = {3, 2};
    batch.targets = tensor_from(LATHE_F32, 2, other, t);
    ck_assert_ptr_null(ops->forward(l, logits, &batch));
    ck_assert(strstr(lathe_errmsg(), "[3, 2]") != NULL);
    lathe_scope_pop();
    ops->destroy(l);
    lathe_config_free(cfg);
}
END_TEST

/* The Brier score of logits x [6,5] against xent_labels, in double. */
static double brier(const double *x)
{
    double sum = 0;
    int count = 0;
    for (int n = 0; n < 6; n++) {
        if (xent_labels[n] == LATHE_IGNORE_INDEX)
            continue;
        double mx = -1e30, z = 0;
        for (int v = 0; v < 5; v++)
            mx = fmax(mx, x[n * 5 + v]);
        for (int v = 0; v < 5; v++)
            z += exp(x[n * 5 + v] - mx);
        for (int v = 0; v < 5; v++) {
            double d = exp(x[n * 5 + v] - mx) / z - (v == (int)xent_labels[n]);
            sum += d * d;
        }
        count++;
    }
    return sum / count;
}

START_TEST(mse_brier)
{
    const struct lathe_loss_ops *ops = LOSS_OPS("lathe-mse.so", "mse");
    lathe_config *cfg = ini("[loss]\n");
    void *l = loss_make(ops, cfg);
    int64_t ls[3] = {2, 3, 5}, bs[2] = {2, 3};
    lathe_tensor *logits = lathe_param_new("logits", 3, ls);
    for (int i = 0; i < 30; i++)
        lathe_tensor_f32(logits)[i] = (float)xent_logits[i];
    lathe_scope_push();
    struct lathe_batch batch = {.size = sizeof batch, .B = 2, .T = 3};
    batch.labels = tensor_from(LATHE_I32, 2, bs, xent_labels);
    lathe_tensor *loss = ops->forward(l, logits, &batch);
    ck_assert_msg(loss != NULL, "%s", lathe_errmsg());
    ck_assert_double_eq_tol(lathe_tensor_f32(loss)[0], brier(xent_logits), 1e-6);
    /* differentiable: the gradient matches central differences */
    ck_assert_int_eq(lathe_backward(loss, 1.0f), LATHE_OK);
    const float *g = lathe_tensor_f32(logits->grad);
    for (int i = 0; i < 30; i++) {
        double x[30];
        memcpy(x, xent_logits, sizeof x);
        x[i] += 1e-4;
        double up = brier(x);
        x[i] -= 2e-4;
        double num = (up - brier(x)) / 2e-4;
        ck_assert_msg(fabs(g[i] - num) < 1e-4, "d/dx[%d]: %g vs %g", i, g[i], num);
    }
    /* the ignored row (n = 2) gets no gradient */
    for (int v = 0; v < 5; v++)
        ck_assert_float_eq(g[10 + v], 0.0f);
    lathe_scope_pop();
    lathe_tensor_free(logits);
    ops->destroy(l);
    lathe_config_free(cfg);
}
END_TEST

/* ---- text data -------------------------------------------------------- */

#define TEXT_BYTES 1000
#define TEXT_T 8
/* 900 train bytes -> 112 windows; 100 eval bytes -> 12 windows */
#define TEXT_TRAIN_WIN 112
#define TEXT_EVAL_WIN 12

static unsigned char text_content[TEXT_BYTES];

/* A corpus whose 8-byte windows are all distinct, in a fresh directory;
 * returns the directory. */
static const char *text_write(char *dir, size_t n)
{
    strcpy(dir, "/tmp/lathe-text-XXXXXX");
    ck_assert(mkdtemp(dir) != NULL);
    uint32_t x = 12345;
    for (int i = 0; i < TEXT_BYTES; i++) {
        x = x * 1103515245u + 12345u;
        text_content[i] = (unsigned char)(x >> 16);
    }
    char path[512];
    snprintf(path, sizeof path, "%s/corpus.txt", dir);
    FILE *f = fopen(path, "wb");
    ck_assert(f != NULL);
    ck_assert_uint_eq(fwrite(text_content, 1, n, f), n);
    fclose(f);
    return dir;
}

static void text_cleanup(const char *dir)
{
    char path[512];
    snprintf(path, sizeof path, "%s/corpus.txt", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/run.ini", dir);
    unlink(path);
    rmdir(dir);
}

/* A config file in dir with the given [data] body; loaded from disk so that
 * relative paths resolve against dir. */
static lathe_config *text_config(const char *dir, const char *body)
{
    char path[512];
    snprintf(path, sizeof path, "%s/run.ini", dir);
    FILE *f = fopen(path, "w");
    ck_assert(f != NULL);
    fprintf(f, "[data]\n%s", body);
    fclose(f);
    lathe_config *cfg = lathe_config_load(path);
    ck_assert_msg(cfg != NULL, "%s", lathe_errmsg());
    return cfg;
}

static void *text_make(lathe_config *cfg, uint64_t seed)
{
    struct lathe_env env = make_env(cfg, seed);
    void *d;
    ck_assert_msg(DATA_OPS()->create(lathe_config_section(cfg, "data"), &env, &d) == LATHE_OK, "%s",
                  lathe_errmsg());
    return d;
}

/* The window index each row of a batch holds (checking inputs and labels
 * against the file); base is 0 for train, 900 for eval. */
static void text_rows(const struct lathe_batch *b, int base, int nwin, int *win)
{
    ck_assert_int_eq(b->T, TEXT_T);
    ck_assert_int_eq(b->input_ids->ndim, 2);
    ck_assert_int_eq(b->input_ids->shape[0], b->B);
    ck_assert_int_eq(b->input_ids->shape[1], TEXT_T);
    ck_assert_int_eq(b->ntokens, b->B * TEXT_T);
    ck_assert_ptr_null(b->positions);
    ck_assert_ptr_null(b->segments);
    const int32_t *in = lathe_tensor_i32(b->input_ids), *lab = lathe_tensor_i32(b->labels);
    for (int64_t r = 0; r < b->B; r++) {
        win[r] = -1;
        for (int w = 0; w < nwin && win[r] < 0; w++) {
            int ok = 1;
            for (int t = 0; t < TEXT_T && ok; t++)
                ok = in[r * TEXT_T + t] == text_content[base + w * TEXT_T + t];
            if (ok)
                win[r] = w;
        }
        ck_assert_msg(win[r] >= 0, "row %lld is no window of the split", (long long)r);
        for (int t = 0; t < TEXT_T; t++)
            ck_assert_int_eq(lab[r * TEXT_T + t], text_content[base + win[r] * TEXT_T + t + 1]);
    }
}

/* The next n train windows, batch by batch (B rows each). */
static void text_take(void *d, int n, int B, int *out)
{
    for (int i = 0; i < n; i += B) {
        lathe_scope_push();
        struct lathe_batch b = {.size = sizeof b};
        ck_assert_int_eq(DATA_OPS()->next(d, LATHE_SPLIT_TRAIN, B, &b), LATHE_OK);
        ck_assert_int_eq(b.B, B);
        text_rows(&b, 0, TEXT_TRAIN_WIN, out + i);
        lathe_scope_pop();
    }
}

START_TEST(text_train_windows)
{
    char dir[64];
    text_write(dir, TEXT_BYTES);
    lathe_config *cfg = text_config(dir, "path = corpus.txt\nseq_len = 8\n");
    void *d = text_make(cfg, 7);
    ck_assert_int_eq(lathe_config_check_unused(cfg), LATHE_OK);
    struct lathe_data_info info;
    ck_assert_int_eq(DATA_OPS()->info(d, &info), LATHE_OK);
    ck_assert_int_eq(info.vocab_size, 256);
    ck_assert_int_eq(info.seq_len, TEXT_T);
    ck_assert_int_eq(info.train_items, TEXT_TRAIN_WIN);
    ck_assert_int_eq(info.eval_items, TEXT_EVAL_WIN);

    /* two epochs of 4-row batches: each a permutation, shuffled, different */
    int e1[TEXT_TRAIN_WIN], e2[TEXT_TRAIN_WIN];
    text_take(d, TEXT_TRAIN_WIN, 4, e1);
    text_take(d, TEXT_TRAIN_WIN, 4, e2);
    int seen1[TEXT_TRAIN_WIN] = {0}, seen2[TEXT_TRAIN_WIN] = {0}, inorder = 0, same = 0;
    for (int i = 0; i < TEXT_TRAIN_WIN; i++) {
        seen1[e1[i]]++;
        seen2[e2[i]]++;
        inorder += e1[i] == i;
        same += e1[i] == e2[i];
    }
    for (int i = 0; i < TEXT_TRAIN_WIN; i++) {
        ck_assert_int_eq(seen1[i], 1);
        ck_assert_int_eq(seen2[i], 1);
    }
    ck_assert_int_lt(inorder, 10);
    ck_assert_int_lt(same, 10);

    /* the same seed gives the same stream; another seed another one */
    void *d2 = text_make(cfg, 7), *d3 = text_make(cfg, 8);
    int f2[TEXT_TRAIN_WIN], f3[TEXT_TRAIN_WIN];
    text_take(d2, TEXT_TRAIN_WIN, 4, f2);
    text_take(d3, TEXT_TRAIN_WIN, 4, f3);
    ck_assert_mem_eq(e1, f2, sizeof e1);
    ck_assert(memcmp(e1, f3, sizeof e1) != 0);
    DATA_OPS()->destroy(d);
    DATA_OPS()->destroy(d2);
    DATA_OPS()->destroy(d3);
    text_cleanup(dir);
    lathe_config_free(cfg);
}
END_TEST

START_TEST(text_no_shuffle_and_eval)
{
    char dir[64];
    text_write(dir, TEXT_BYTES);
    char body[600];
    snprintf(body, sizeof body, "path = %s/corpus.txt\nseq_len = 8\nshuffle = false\n", dir);
    lathe_config *cfg = text_config(dir, body);
    void *d = text_make(cfg, 7);
    int w[8];
    text_take(d, 8, 4, w);
    for (int i = 0; i < 8; i++)
        ck_assert_int_eq(w[i], i);

    /* eval: 12 windows as 5 + 5 + 2 in order, then EOF, then again */
    for (int pass = 0; pass < 2; pass++) {
        int next = 0;
        const int rows[3] = {5, 5, 2};
        for (int k = 0; k < 3; k++) {
            lathe_scope_push();
            struct lathe_batch b = {.size = sizeof b};
            ck_assert_int_eq(DATA_OPS()->next(d, LATHE_SPLIT_EVAL, 5, &b), LATHE_OK);
            ck_assert_int_eq(b.B, rows[k]);
            int win[5];
            text_rows(&b, TEXT_BYTES - 100, TEXT_EVAL_WIN, win);
            for (int r = 0; r < rows[k]; r++)
                ck_assert_int_eq(win[r], next++);
            lathe_scope_pop();
        }
        struct lathe_batch b = {.size = sizeof b};
        ck_assert_int_eq(DATA_OPS()->next(d, LATHE_SPLIT_EVAL, 5, &b), LATHE_EOF);
    }
    DATA_OPS()->destroy(d);
    text_cleanup(dir);
    lathe_config_free(cfg);
}
END_TEST

START_TEST(text_state_resume)
{
    char dir[64];
    text_write(dir, TEXT_BYTES);
    lathe_config *cfg = text_config(dir, "path = corpus.txt\nseq_len = 8\n");
    /* stop mid-epoch and right at the end of one */
    const int stops[2] = {40, TEXT_TRAIN_WIN};
    for (int k = 0; k < 2; k++) {
        void *a = text_make(cfg, 3), *b = text_make(cfg, 3);
        int skip[TEXT_TRAIN_WIN], wa[8], wb[8];
        text_take(a, stops[k], 4, skip);
        lathe_state *st = lathe_state_new();
        lathe_state_set_prefix(st, "data.");
        ck_assert_int_eq(DATA_OPS()->state_save(a, st), LATHE_OK);
        ck_assert_msg(DATA_OPS()->state_load(b, st) == LATHE_OK, "%s", lathe_errmsg());
        text_take(a, 8, 4, wa);
        text_take(b, 8, 4, wb);
        ck_assert_mem_eq(wa, wb, sizeof wa);
        lathe_state_free(st);
        DATA_OPS()->destroy(a);
        DATA_OPS()->destroy(b);
    }
    text_cleanup(dir);
    lathe_config_free(cfg);
}
END_TEST

static void expect_text_refusal(size_t nbytes, const char *body, const char *needle)
{
    char dir[64];
    text_write(dir, nbytes);
    lathe_config *cfg = text_config(dir, body);
    struct lathe_env env = make_env(cfg, 1);
    void *d = (void *)1;
    int rc = DATA_OPS()->create(lathe_config_section(cfg, "data"), &env, &d);
    ck_assert_int_ne(rc, LATHE_OK);
    ck_assert_ptr_null(d);
    ck_assert_msg(strstr(lathe_errmsg(), needle) != NULL, "message '%s' lacks '%s'",
                  lathe_errmsg(), needle);
    text_cleanup(dir);
    lathe_config_free(cfg);
}

START_TEST(text_refusals)
{
    expect_text_refusal(TEXT_BYTES, "path = missing.txt\n", "missing.txt");
    expect_text_refusal(0, "path = corpus.txt\n", "corpus.txt");
    /* 100 bytes, seq_len 64: 90 train bytes < 65 is fine, 10 eval bytes not */
    expect_text_refusal(100, "path = corpus.txt\n", "10 eval bytes");
    expect_text_refusal(60, "path = corpus.txt\neval_fraction = 0\n", "60 bytes");
    expect_text_refusal(TEXT_BYTES, "path = corpus.txt\nseq_len = 0\n", "seq_len");
    expect_text_refusal(TEXT_BYTES, "path = corpus.txt\neval_fraction = 0.6\n", "eval_fraction");
    expect_text_refusal(TEXT_BYTES, "seq_len = 8\n", "path");
}
END_TEST

/* ---- gpt2 ------------------------------------------------------------- */

#define G_L 2
#define G_H 2
#define G_C 16
#define G_V 32
#define G_P 16
#define GPT2_TINY "[model]\nlayers = 2\nheads = 2\nembd = 16\nvocab_size = 32\ncontext = 16\n"

static void *gpt2_make(lathe_config *cfg, uint64_t seed)
{
    struct lathe_env env = make_env(cfg, seed);
    void *m;
    ck_assert_msg(MODEL_OPS()->create(lathe_config_section(cfg, "model"), &env, &m) == LATHE_OK,
                  "%s", lathe_errmsg());
    return m;
}

static lathe_tensor *find_param(void *m, const char *name)
{
    lathe_tensor *const *p;
    size_t n;
    ck_assert_int_eq(MODEL_OPS()->params(m, &p, &n), LATHE_OK);
    for (size_t i = 0; i < n; i++)
        if (strcmp(p[i]->name, name) == 0)
            return p[i];
    ck_abort_msg("no parameter '%s'", name);
    return NULL;
}

static int64_t count_params(void *m)
{
    lathe_tensor *const *p;
    size_t n;
    ck_assert_int_eq(MODEL_OPS()->params(m, &p, &n), LATHE_OK);
    int64_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += lathe_tensor_numel(p[i]);
    return total;
}

/* A batch of B rows of T pseudo-random ids (labels: the next id). */
static struct lathe_batch gpt2_batch(int64_t B, int64_t T, uint32_t seed)
{
    struct lathe_batch b = {.size = sizeof b, .B = B, .T = T};
    b.input_ids = lathe_tensor_new2(LATHE_I32, B, T);
    b.labels = lathe_tensor_new2(LATHE_I32, B, T);
    uint32_t x = seed;
    for (int64_t i = 0; i <= B * T; i++) {
        x = x * 1664525u + 1013904223u;
        int32_t id = (int32_t)((x >> 20) % G_V);
        if (i > 0)
            lathe_tensor_i32(b.labels)[i - 1] = id;
        if (i < B * T)
            lathe_tensor_i32(b.input_ids)[i] = id;
    }
    b.ntokens = B * T;
    return b;
}

START_TEST(gpt2_shapes_and_names)
{
    lathe_config *cfg = ini(GPT2_TINY);
    void *m = gpt2_make(cfg, 1);
    ck_assert_int_eq(lathe_config_check_unused(cfg), LATHE_OK);
    struct lathe_model_info info;
    ck_assert_int_eq(MODEL_OPS()->info(m, &info), LATHE_OK);
    ck_assert_int_eq(info.vocab_size, G_V);
    ck_assert_int_eq(info.max_seq_len, G_P);
    /* V C + P C + L (12 C^2 + 13 C) + 2 C (GPT-2 with tied embeddings) */
    ck_assert_int_eq(count_params(m),
                     G_V * G_C + G_P * G_C + G_L * (12 * G_C * G_C + 13 * G_C) + 2 * G_C);
    ck_assert_int_eq(find_param(m, "wte.weight")->shape[0], G_V);
    ck_assert_int_eq(find_param(m, "wpe.weight")->shape[0], G_P);
    lathe_tensor *ca = find_param(m, "h.1.attn.c_attn.weight");
    ck_assert_int_eq(ca->shape[0], 3 * G_C);
    ck_assert_int_eq(ca->shape[1], G_C);
    lathe_tensor *mp = find_param(m, "h.0.mlp.c_proj.weight");
    ck_assert_int_eq(mp->shape[0], G_C);
    ck_assert_int_eq(mp->shape[1], 4 * G_C);
    find_param(m, "h.1.ln_2.bias");
    find_param(m, "ln_f.weight");

    struct lathe_linear *const *lin;
    size_t nlin;
    ck_assert_int_eq(MODEL_OPS()->linears(m, &lin, &nlin), LATHE_OK);
    ck_assert_uint_ge(nlin, 4 * G_L);
    ck_assert_str_eq(lin[0]->name, "h.0.attn.c_attn");
    ck_assert_ptr_eq(lin[0]->weight, find_param(m, "h.0.attn.c_attn.weight"));
    ck_assert_ptr_eq(lin[0]->bias, find_param(m, "h.0.attn.c_attn.bias"));
    ck_assert_str_eq(lin[7]->name, "h.1.mlp.c_proj");

    lathe_scope_push();
    struct lathe_batch b = gpt2_batch(2, 8, 5);
    lathe_tensor *logits = MODEL_OPS()->forward(m, &b, 0);
    ck_assert_msg(logits != NULL, "%s", lathe_errmsg());
    ck_assert_int_eq(logits->ndim, 3);
    ck_assert_int_eq(logits->shape[0], 2);
    ck_assert_int_eq(logits->shape[1], 8);
    ck_assert_int_eq(logits->shape[2], G_V);
    /* explicit positions 0..T-1 are the default */
    float first = lathe_tensor_f32(logits)[37];
    b.positions = lathe_tensor_new1(LATHE_I32, 8);
    for (int t = 0; t < 8; t++)
        lathe_tensor_i32(b.positions)[t] = t;
    lathe_tensor *again = MODEL_OPS()->forward(m, &b, 0);
    ck_assert(again != NULL);
    ck_assert_float_eq(lathe_tensor_f32(again)[37], first);
    lathe_scope_pop();
    MODEL_OPS()->destroy(m);
    lathe_config_free(cfg);

    /* an untied head adds lm_head.weight [V, C] */
    cfg = ini(GPT2_TINY "tie_embeddings = false\n");
    m = gpt2_make(cfg, 1);
    ck_assert_int_eq(count_params(m), G_V * G_C * 2 + G_P * G_C +
                                          G_L * (12 * G_C * G_C + 13 * G_C) + 2 * G_C);
    ck_assert_int_eq(find_param(m, "lm_head.weight")->shape[1], G_C);
    MODEL_OPS()->destroy(m);
    lathe_config_free(cfg);
}
END_TEST

static void moments(const lathe_tensor *t, double *mean, double *std)
{
    double s = 0, s2 = 0;
    int64_t n = lathe_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) {
        double x = lathe_tensor_f32(t)[i];
        s += x;
        s2 += x * x;
    }
    *mean = s / n;
    *std = sqrt(fmax(0.0, s2 / n - *mean * *mean));
}

START_TEST(gpt2_init)
{
    lathe_config *cfg = ini("[model]\nlayers = 8\nheads = 4\nembd = 64\nvocab_size = 100\n"
                            "context = 32\ninit_std = 0.05\n");
    void *m = gpt2_make(cfg, 11);
    double mean, std;
    moments(find_param(m, "h.0.attn.c_attn.weight"), &mean, &std);
    ck_assert_double_eq_tol(std, 0.05, 0.05 * 0.05);
    ck_assert_double_lt(fabs(mean), 0.002);
    moments(find_param(m, "h.3.mlp.c_proj.weight"), &mean, &std);
    ck_assert_double_eq_tol(std, 0.05 / 4.0, 0.05 / 4.0 * 0.05); /* sqrt(2 * 8) = 4 */
    moments(find_param(m, "h.5.attn.c_proj.weight"), &mean, &std);
    ck_assert_double_eq_tol(std, 0.05 / 4.0, 0.05 / 4.0 * 0.05);
    moments(find_param(m, "wte.weight"), &mean, &std);
    ck_assert_double_eq_tol(std, 0.05, 0.05 * 0.05);
    moments(find_param(m, "h.2.ln_1.weight"), &mean, &std);
    ck_assert_double_eq_tol(mean, 1.0, 1e-12);
    ck_assert_double_eq_tol(std, 0.0, 1e-6);
    moments(find_param(m, "h.2.mlp.c_fc.bias"), &mean, &std);
    ck_assert_double_eq_tol(mean, 0.0, 1e-12);
    ck_assert_double_eq_tol(std, 0.0, 1e-12);
    /* the same seed builds the same model, another seed another */
    void *m2 = gpt2_make(cfg, 11), *m3 = gpt2_make(cfg, 12);
    lathe_tensor *w1 = find_param(m, "h.1.mlp.c_fc.weight");
    ck_assert_mem_eq(w1->data, find_param(m2, "h.1.mlp.c_fc.weight")->data, lathe_tensor_nbytes(w1));
    ck_assert(memcmp(w1->data, find_param(m3, "h.1.mlp.c_fc.weight")->data,
                     lathe_tensor_nbytes(w1)) != 0);
    MODEL_OPS()->destroy(m);
    MODEL_OPS()->destroy(m2);
    MODEL_OPS()->destroy(m3);
    lathe_config_free(cfg);
}
END_TEST

START_TEST(gpt2_learns)
{
    lathe_config *cfg = ini(GPT2_TINY "[optim]\nlr = 0.01\n[loss]\n");
    void *m = gpt2_make(cfg, 1);
    lathe_tensor *const *params;
    size_t np;
    ck_assert_int_eq(MODEL_OPS()->params(m, &params, &np), LATHE_OK);
    const struct lathe_optim_ops *adamw = OPTIM_OPS("lathe-adamw.so", "adamw");
    const struct lathe_loss_ops *xent = LOSS_OPS("lathe-cross-entropy.so", "cross-entropy");
    struct lathe_env env = make_env(cfg, 1);
    void *opt, *loss_fn;
    ck_assert_int_eq(adamw->create(lathe_config_section(cfg, "optim"), &env, params, np, &opt), LATHE_OK);
    ck_assert_int_eq(xent->create(lathe_config_section(cfg, "loss"), &env, &loss_fn), LATHE_OK);
    ck_assert_int_eq(lathe_config_check_unused(cfg), LATHE_OK);

    float first = 0, last = 0;
    for (int step = 0; step < 30; step++) {
        lathe_scope_push();
        struct lathe_batch b = gpt2_batch(2, 12, 99);
        lathe_tensor *loss = xent->forward(loss_fn, MODEL_OPS()->forward(m, &b, 1), &b);
        ck_assert_msg(loss != NULL, "%s", lathe_errmsg());
        last = lathe_tensor_f32(loss)[0];
        if (step == 0) {
            first = last;
            /* small random logits: about ln V at init */
            ck_assert_msg(fabs(first - log(G_V)) < 0.05, "initial loss %g, ln V %g", first, log(G_V));
        }
        for (size_t i = 0; i < np; i++)
            lathe_tensor_zero_grad(params[i]);
        ck_assert_int_eq(lathe_backward(loss, 1.0f), LATHE_OK);
        ck_assert_int_eq(adamw->step(opt, 0.01), LATHE_OK);
        lathe_scope_pop();
    }
    ck_assert_msg(last < first - 1.5f, "loss %g -> %g after 30 steps", first, last);
    adamw->destroy(opt);
    xent->destroy(loss_fn);
    MODEL_OPS()->destroy(m);
    lathe_config_free(cfg);
}
END_TEST

START_TEST(gpt2_dropout)
{
    lathe_config *cfg = ini(GPT2_TINY "dropout = 0.5\n");
    void *m = gpt2_make(cfg, 1);
    lathe_scope_push();
    struct lathe_batch b = gpt2_batch(1, 8, 3);
    lathe_tensor *e1 = MODEL_OPS()->forward(m, &b, 0), *e2 = MODEL_OPS()->forward(m, &b, 0);
    lathe_tensor *t1 = MODEL_OPS()->forward(m, &b, 1);
    ck_assert(e1 && e2 && t1);
    ck_assert_mem_eq(e1->data, e2->data, lathe_tensor_nbytes(e1));
    ck_assert(memcmp(e1->data, t1->data, lathe_tensor_nbytes(e1)) != 0);
    lathe_scope_pop();
    MODEL_OPS()->destroy(m);
    lathe_config_free(cfg);
}
END_TEST

static void expect_gpt2_refusal(const char *text, const char *n1, const char *n2)
{
    lathe_config *cfg = ini(text);
    struct lathe_env env = make_env(cfg, 1);
    void *m = (void *)1;
    ck_assert_int_eq(MODEL_OPS()->create(lathe_config_section(cfg, "model"), &env, &m), LATHE_ECONFIG);
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(lathe_errmsg(), n1) != NULL, "message '%s' lacks '%s'", lathe_errmsg(), n1);
    if (n2)
        ck_assert_msg(strstr(lathe_errmsg(), n2) != NULL, "message '%s' lacks '%s'", lathe_errmsg(), n2);
    lathe_config_free(cfg);
}

START_TEST(gpt2_refusals)
{
    expect_gpt2_refusal("[model]\nlayers = 1\nheads = 3\nembd = 16\nvocab_size = 8\ncontext = 8\n",
                        "heads", "16");
    expect_gpt2_refusal(GPT2_TINY "dropout = 1\n", "dropout", NULL);
    expect_gpt2_refusal(GPT2_TINY "init_std = 0\n", "init_std", NULL);
    expect_gpt2_refusal("[model]\nlayers = 0\n", "layers", NULL);
    expect_gpt2_refusal("[model]\nembd = big\n", "embd", NULL);

    /* an unknown key: create reads only its own, the check names the stray */
    lathe_config *cfg = ini(GPT2_TINY "layerz = 3\n");
    void *m = gpt2_make(cfg, 1);
    ck_assert_int_ne(lathe_config_check_unused(cfg), LATHE_OK);
    ck_assert(strstr(lathe_errmsg(), "layerz") != NULL);

    /* T beyond the context */
    lathe_scope_push();
    struct lathe_batch b = gpt2_batch(1, 20, 1);
    ck_assert_ptr_null(MODEL_OPS()->forward(m, &b, 0));
    ck_assert(strstr(lathe_errmsg(), "20") && strstr(lathe_errmsg(), "16"));
    lathe_scope_pop();
    MODEL_OPS()->destroy(m);
    lathe_config_free(cfg);
}
END_TEST

static Suite *components_suite(void)
{
    Suite *s = suite_create("Components");
    TCase *core = tcase_create("Core");
    tcase_set_timeout(core, 60);
    tcase_add_test(core, adamw_no_decay);
    tcase_add_test(core, adamw_decay_skips_norm_and_bias);
    tcase_add_test(core, adamw_decay_all);
    tcase_add_test(core, adamw_state_round_trip);
    tcase_add_test(core, sgd_plain);
    tcase_add_test(core, sgd_momentum_dampening);
    tcase_add_test(core, sgd_nesterov);
    tcase_add_test(core, sgd_state_round_trip);
    tcase_add_test(core, schedules_formulas);
    tcase_add_test(core, schedules_defaults);
    tcase_add_test(core, cross_entropy_matches_op);
    tcase_add_test(core, mse_regression);
    tcase_add_test(core, mse_brier);
    tcase_add_test(core, text_train_windows);
    tcase_add_test(core, text_no_shuffle_and_eval);
    tcase_add_test(core, text_state_resume);
    tcase_add_test(core, gpt2_shapes_and_names);
    tcase_add_test(core, gpt2_init);
    tcase_add_test(core, gpt2_learns);
    tcase_add_test(core, gpt2_dropout);
    suite_add_tcase(s, core);

    TCase *limits = tcase_create("Limits");
    tcase_add_test(limits, optim_refusals);
    tcase_add_test(limits, optim_unknown_key);
    tcase_add_test(limits, schedules_refusals);
    tcase_add_test(limits, cross_entropy_refusals);
    tcase_add_test(limits, text_refusals);
    tcase_add_test(limits, gpt2_refusals);
    suite_add_tcase(s, limits);
    return s;
}

int main(void)
{
    return lathe_test_run(components_suite());
}
