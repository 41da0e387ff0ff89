/* core/train/loop.c — the training loop.
 *
 *   for each optimizer step:
 *     grad_accum times: batch = data.next; logits = model.forward;
 *                       loss = loss.forward; backward(loss / grad_accum)
 *     clip the global grad norm; optim.step(base_lr * schedule); zero grads
 *     log; evaluate every eval_every; early stop; checkpoint
 *
 * Deterministic on the CPU for a given seed and thread count, so a resumed
 * run continues the same loss curve. SIGINT/SIGTERM finish the current
 * step, save a checkpoint and return LATHE_EINTR. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "io/metrics.h"
#include "train/report.h"
#include "train/run_internal.h"
#include "util/strutil.h"

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig) { stop_signal = sig; }

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double scalar_of(const lathe_tensor *t)
{
    float v = 0.0f;
    lathe_backend()->copy(&v, t->data, sizeof v, 0);
    return v;
}

#define MODEL(run) ((const struct lathe_model_ops *)(run)->model.ops)
#define DATA(run) ((const struct lathe_data_ops *)(run)->data.ops)
#define LOSS(run) ((const struct lathe_loss_ops *)(run)->loss.ops)
#define OPTIM(run) ((const struct lathe_optim_ops *)(run)->optim.ops)
#define SCHED(run) ((const struct lathe_sched_ops *)(run)->sched.ops)

/* Rows [rank*B/N, (rank+1)*B/N) of a [B, T] tensor (NULL stays NULL). */
static lathe_tensor *rows_of(lathe_tensor *t, int64_t from, int64_t n)
{
    if (!t)
        return NULL;
    int64_t shape[LATHE_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    shape[0] = n;
    lathe_tensor *out = lathe_tensor_new(t->dtype, t->ndim, shape);
    if (!out)
        return NULL;
    size_t row = lathe_tensor_nbytes(t) / (size_t)t->shape[0];
    /* in the backend's memory: its same-dtype convert is the copy */
    lathe_backend()->convert(out->data, (int)t->dtype, (const char *)t->data + (size_t)from * row, (int)t->dtype,
                             (int64_t)((size_t)n * row / lathe_dtype_size(t->dtype)));
    return out;
}

static int batch_shard(struct lathe_batch *b, int rank, int world)
{
    if (b->B % world != 0)
        return lathe_error(LATHE_EINVAL, "a batch of %lld rows does not divide among %d processes", (long long)b->B, world);
    int64_t n = b->B / world, from = (int64_t)rank * n;
    lathe_tensor *ids = rows_of(b->input_ids, from, n), *labels = rows_of(b->labels, from, n);
    if (!ids || (b->labels && !labels))
        return lathe_error(LATHE_ENOMEM, "out of memory sharding a batch");
    b->input_ids = ids;
    b->labels = labels;
    b->positions = rows_of(b->positions, from, n);
    b->segments = rows_of(b->segments, from, n);
    b->targets = rows_of(b->targets, from, n);
    b->advantages = rows_of(b->advantages, from, n);
    b->old_logps = rows_of(b->old_logps, from, n);
    b->ref_logps = rows_of(b->ref_logps, from, n);
    b->B = n;
    if (labels) {
        /* counted on the host: a device tensor is read through the backend */
        int64_t nl = lathe_tensor_numel(labels), cnt = 0;
        int32_t *l = labels->device == LATHE_DEVICE_CPU ? lathe_tensor_i32(labels) : malloc((size_t)nl * sizeof *l + 1);
        if (!l)
            return lathe_error(LATHE_ENOMEM, "out of memory counting a batch's labels");
        if (l != labels->data && lathe_backend()->copy(l, labels->data, (size_t)nl * sizeof *l, 0) != LATHE_OK) {
            free(l);
            return lathe_error_prefix(LATHE_ERR, "reading a batch's labels from the device");
        }
        for (int64_t i = 0; i < nl; i++)
            cnt += l[i] != LATHE_IGNORE_INDEX;
        if (l != labels->data)
            free(l);
        b->ntokens = cnt;
    }
    return LATHE_OK;
}

/* One micro-batch: forward, loss, backward. *loss_out gets the loss value. */
static int micro_step(struct lathe_run *run, int split, int train, float scale, double *loss_out,
                      int64_t *tokens, int64_t *label_tokens)
{
    struct lathe_batch batch = {.size = sizeof batch};
    lathe_scope_push();
    int rc = DATA(run)->next(run->data.self, split, run->train.batch_size, &batch);
    if (rc != LATHE_OK) {
        lathe_scope_pop();
        return rc == LATHE_EOF ? rc : lathe_error_prefix(rc, "[data] %s", run->data.name);
    }
    /* every rank reads the same global batch and keeps its own rows */
    if (train && run->env.world_size > 1 && (rc = batch_shard(&batch, run->env.rank, run->env.world_size)) != LATHE_OK)
        goto out;
    lathe_tensor *logits = MODEL(run)->forward(run->model.self, &batch, train);
    if (!logits) {
        rc = lathe_error_prefix(LATHE_EINVAL, "[model] %s: forward", run->model.name);
        goto out;
    }
    lathe_tensor *loss = LOSS(run)->forward(run->loss.self, logits, &batch);
    if (!loss) {
        rc = lathe_error_prefix(LATHE_EINVAL, "[loss] %s", run->loss.name);
        goto out;
    }
    *loss_out = scalar_of(loss);
    if (!isfinite(*loss_out)) {
        rc = lathe_error(LATHE_EINVAL, "the loss is %g: training diverged (lower [optim] lr or set [train] max_grad_norm)",
                         *loss_out);
        goto out;
    }
    if (train && (rc = lathe_backward(loss, scale)) != LATHE_OK)
        goto out;
    *tokens = batch.B * batch.T;
    *label_tokens = batch.ntokens > 0 ? batch.ntokens : batch.B * batch.T;
out:
    lathe_scope_pop();
    return rc;
}

#define STRATEGY(run) ((const struct lathe_strategy_ops *)(run)->strategy.ops)

static double grad_norm(struct lathe_run *run)
{
    double total = 0.0;
    if (run->strategy.self && LATHE_OPS_HAS(STRATEGY(run), struct lathe_strategy_ops, grad_sumsq)) {
        if (STRATEGY(run)->grad_sumsq(run->strategy.self, &total) != LATHE_OK)
            return NAN;
        return sqrt(total);
    }
    const struct lathe_backend_ops *prev = lathe_run_optim_begin(run);
    const struct lathe_backend_ops *be = lathe_backend();
    for (size_t i = 0; i < run->noptim; i++) {
        lathe_tensor *p = run->optim_params[i];
        if (!p->grad)
            continue;
        double s = 0.0;
        be->sumsq(&s, p->grad->data, lathe_tensor_numel(p->grad));
        total += s;
    }
    lathe_run_optim_end(prev);
    return sqrt(total);
}

/* Global-norm clipping as torch.nn.utils.clip_grad_norm_, of gradients
 * that are still `unscale` times too large (fp16 loss scaling; 1 without):
 * one pass applies both factors. norm: the true (unscaled) norm. */
static void clip_grads(struct lathe_run *run, double norm, double unscale)
{
    double max = run->train.max_grad_norm;
    double c64 = unscale * (max > 0.0 && norm > max ? max / (norm + 1e-6) : 1.0);
    if (c64 == 1.0)
        return;
    float c = (float)c64;
    const struct lathe_backend_ops *prev = lathe_run_optim_begin(run);
    const struct lathe_backend_ops *be = lathe_backend();
    for (size_t i = 0; i < run->noptim; i++) {
        lathe_tensor *g = run->optim_params[i]->grad;
        if (g)
            be->scale(g->data, g->data, c, lathe_tensor_numel(g), 0);
    }
    lathe_run_optim_end(prev);
}

/* Token-weighted mean loss over the eval split (or its first eval_batches). */
static int evaluate(struct lathe_run *run, double *out)
{
    double sum = 0.0;
    int64_t ntok = 0, nb = 0;
    int rc = LATHE_OK;
    lathe_no_grad_begin();
    for (;;) {
        double l;
        int64_t tok, lab;
        if (run->train.eval_batches && nb >= run->train.eval_batches) {
            /* finish the pass so the next evaluation sees the same batches */
            struct lathe_batch b = {.size = sizeof b};
            lathe_scope_push();
            rc = DATA(run)->next(run->data.self, LATHE_SPLIT_EVAL, run->train.batch_size, &b);
            lathe_scope_pop();
            if (rc == LATHE_EOF) {
                rc = LATHE_OK;
                break;
            }
            if (rc != LATHE_OK)
                break;
            continue;
        }
        rc = micro_step(run, LATHE_SPLIT_EVAL, 0, 1.0f, &l, &tok, &lab);
        if (rc == LATHE_EOF) {
            rc = LATHE_OK;
            break;
        }
        if (rc != LATHE_OK)
            break;
        sum += l * (double)lab;
        ntok += lab;
        nb++;
    }
    lathe_no_grad_end();
    if (rc == LATHE_OK && nb == 0)
        rc = lathe_error(LATHE_EINVAL, "[data] %s has no eval split; set [train] eval_every = 0 or give the data an eval split",
                         run->data.name);
    if (rc == LATHE_OK)
        *out = ntok ? sum / (double)ntok : 0.0;
    return rc;
}

static int log_scalars(struct lathe_run *run, int64_t step, const char *const *names, const double *v, size_t n);

/* Evaluate, then log eval/loss and what components reported meanwhile. */
static int evaluate_and_log(struct lathe_run *run, int64_t step, double *el)
{
    int rc = evaluate(run, el);
    if (rc != LATHE_OK)
        return rc;
    const char *names[1 + 64] = {"eval/loss"};
    double ev[1 + 64] = {*el};
    size_t nr = lathe_report_take(names + 1, ev + 1, 64);
    rc = log_scalars(run, step, names, ev, 1 + nr);
    lathe_report_clear();
    return rc;
}

static int log_scalars(struct lathe_run *run, int64_t step, const char *const *names, const double *v, size_t n)
{
    if (run->env.rank != 0)
        return LATHE_OK;
    for (size_t i = 0; i < run->nloggers; i++) {
        int rc = run->log_ops[i]->scalars(run->log_self[i], step, names, v, n);
        if (rc != LATHE_OK)
            return lathe_error_prefix(rc, "logging step %lld", (long long)step);
    }
    return LATHE_OK;
}

static int open_loggers(struct lathe_run *run)
{
    if (run->env.rank != 0)
        return LATHE_OK; /* rank 0 writes the logs */
    if (run->jsonl)
        run->log_ops[run->nloggers++] = &lathe_logger_jsonl;
    if (run->tensorboard)
        run->log_ops[run->nloggers++] = &lathe_logger_tensorboard;
    for (size_t i = 0; i < run->nloggers; i++) {
        int rc = run->log_ops[i]->create(NULL, &run->env, &run->log_self[i]);
        if (rc != LATHE_OK)
            return rc;
    }
    return LATHE_OK;
}

/* What each rank holds (the ZeRO stages' point), in the log. */
static void report_memory(struct lathe_run *run)
{
    size_t pb = 0, gb = 0, ob = 0;
    if (LATHE_OPS_HAS(STRATEGY(run), struct lathe_strategy_ops, memory))
        STRATEGY(run)->memory(run->strategy.self, &pb, &gb, &ob);
    /* the optimizer is made over this rank's optim_params, so its own count
     * is this rank's share; the strategy adds any state it keeps itself */
    if (LATHE_OPS_HAS(OPTIM(run), struct lathe_optim_ops, state_bytes))
        ob += OPTIM(run)->state_bytes(run->optim.self);
    /* every rank reports: the figures differ by rank */
    /* cpu_offload on a device: the optimizer state is not device memory */
    printf("rank %d/%d [parallel] %s: parameters %zu bytes, gradients %zu bytes, optimizer state %zu bytes%s\n",
           run->env.rank, run->env.world_size, run->strategy.name, pb, gb, ob,
           run->optim_backend ? " in host memory" : "");
    fflush(stdout);
}

static size_t param_count(lathe_tensor *const *p, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += (size_t)lathe_tensor_numel(p[i]);
    return c;
}

static int check_shapes(struct lathe_run *run)
{
    struct lathe_model_info mi = {0};
    struct lathe_data_info di = {0};
    int rc = MODEL(run)->info(run->model.self, &mi);
    if (rc == LATHE_OK)
        rc = DATA(run)->info(run->data.self, &di);
    if (rc != LATHE_OK)
        return rc;
    if (di.vocab_size > 0 && mi.vocab_size > 0 && di.vocab_size > mi.vocab_size)
        return lathe_error(LATHE_ECONFIG, "[data] %s yields token ids up to %lld but [model] %s has a vocabulary of %lld",
                           run->data.name, (long long)di.vocab_size - 1, run->model.name, (long long)mi.vocab_size);
    if (di.seq_len > 0 && mi.max_seq_len > 0 && di.seq_len > mi.max_seq_len)
        return lathe_error(LATHE_ECONFIG, "[data] %s makes sequences of %lld tokens but [model] %s handles at most %lld",
                           run->data.name, (long long)di.seq_len, run->model.name, (long long)mi.max_seq_len);
    lathe_progress_note("model %s: %zu parameters, %zu trainable; data %s: %lld train / %lld eval items",
                        run->model.name, param_count(run->params, run->nparams),
                        param_count(run->trainable, run->ntrainable), run->data.name, (long long)di.train_items,
                        (long long)di.eval_items);
    return LATHE_OK;
}

static int prepare_output(struct lathe_run *run, struct lathe_loop_state *ls)
{
    int rc = run->env.rank == 0 ? lathe_mkdir_p(run->output_dir) : LATHE_OK;
    if (rc != LATHE_OK)
        return rc;
    char metrics[4200];
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", run->output_dir);
    if (run->resume) {
        char dir[4300];
        rc = lathe_checkpoint_load_latest(run, ls, dir, sizeof dir);
        if (rc == LATHE_EOF)
            return lathe_error(LATHE_EINVAL, "--resume: no checkpoint under %s/checkpoints to resume from",
                               run->output_dir);
        if (rc != LATHE_OK)
            return rc;
        lathe_progress_note("resumed from %s (step %lld)", dir, (long long)ls->step);
        /* lines logged after that checkpoint are superseded by this run */
        return run->env.rank == 0 ? lathe_metrics_truncate(metrics, ls->step) : LATHE_OK;
    }
    if (lathe_checkpoint_exists(run))
        return lathe_error(LATHE_EINVAL,
                           "%s holds checkpoints of an earlier run; continue it with --resume, or choose another [run] output_dir",
                           run->output_dir);
    return run->env.rank == 0 ? lathe_metrics_set_aside(metrics) : LATHE_OK;
}

int lathe_run_train(struct lathe_run *run)
{
    struct lathe_loop_state ls = {.best_eval = INFINITY};
    const struct lathe_train_settings *t = &run->train;
#ifdef _OPENMP
    if (t->threads > 0)
        omp_set_num_threads((int)t->threads);
#endif
    lathe_rng_seed(lathe_rng_global(), run->env.seed ^ 0x6c617468ULL);
    lathe_progress_set_quiet(run->env.rank != 0);
    int rc = check_shapes(run);
    if (rc == LATHE_OK && run->strategy.self)
        report_memory(run);
    if (rc == LATHE_OK)
        rc = prepare_output(run, &ls);
    if (rc == LATHE_OK)
        rc = open_loggers(run);
    if (rc != LATHE_OK)
        return rc;

    struct sigaction sa = {.sa_handler = on_signal}, old_int, old_term;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    stop_signal = 0;

    const double base_lr = OPTIM(run)->base_lr(run->optim.self);
    const float scale = 1.0f / (float)t->grad_accum;
    struct lathe_loss_scaler *scaler = &run->scaler;
    double started = now_s();
    int64_t first = ls.step;
    lathe_report_clear(); /* nothing reported while components were made counts for step 1 */
    if (rc == LATHE_OK && t->eval_at_start && ls.step == 0) {
        double el;
        rc = evaluate_and_log(run, 0, &el);
        if (rc == LATHE_OK)
            lathe_progress_eval(run, 0, el, 0);
    }
    int stop_early = 0;
    while (rc == LATHE_OK && ls.step < t->steps && !stop_signal && !stop_early) {
        double t0 = now_s();
        double lr = base_lr * SCHED(run)->factor(run->sched.self, ls.step, t->steps);
        double loss_sum = 0.0;
        int64_t tokens = 0;
        for (int64_t m = 0; rc == LATHE_OK && m < t->grad_accum; m++) {
            double l;
            int64_t tok, lab;
            /* fp16: the backward starts from loss x loss scale */
            rc = micro_step(run, LATHE_SPLIT_TRAIN, 1, scaler->enabled ? (float)(scale * scaler->scale) : scale,
                            &l, &tok, &lab);
            if (rc == LATHE_EOF)
                rc = lathe_error(LATHE_EINVAL, "[data] %s: the train split ran dry", run->data.name);
            loss_sum += l;
            tokens += tok;
        }
        if (rc != LATHE_OK)
            break;
        if (run->strategy.self && (rc = STRATEGY(run)->reduce_grads(run->strategy.self)) != LATHE_OK) {
            rc = lathe_error_prefix(rc, "[parallel] %s: reduce_grads", run->strategy.name);
            break;
        }
        /* the global norm (across ranks) is inf or NaN exactly when some
         * gradient is: under fp16 that is the loss scaler's overflow test */
        double norm = grad_norm(run);
        double step_scale = scaler->scale;
        int skip = lathe_loss_scaler_update(scaler, isfinite(norm));
        if (!isfinite(norm) && !scaler->enabled) {
            rc = lathe_error(LATHE_EINVAL, "step %lld: the gradient norm is %g; lower [optim] lr",
                             (long long)ls.step + 1, norm);
            break;
        }
        if (skip && scaler->scale < LATHE_LOSS_SCALE_MIN) {
            rc = lathe_error(LATHE_EINVAL, "step %lld: the gradients are %g at a loss scale of %g: not finite at any "
                                           "scale, training diverged (lower [optim] lr)",
                             (long long)ls.step + 1, norm, step_scale);
            break;
        }
        if (skip) {
            lathe_progress_note("step %lld: gradients overflowed at loss scale %g; update skipped, scale now %g",
                                (long long)ls.step + 1, step_scale, scaler->scale);
        } else {
            if (scaler->enabled)
                norm /= step_scale;
            clip_grads(run, norm, scaler->enabled ? 1.0 / step_scale : 1.0);
            const struct lathe_backend_ops *prev = lathe_run_optim_begin(run);
            rc = OPTIM(run)->step(run->optim.self, lr);
            lathe_run_optim_end(prev);
            if (rc != LATHE_OK) {
                rc = lathe_error_prefix(rc, "[optim] %s", run->optim.name);
                break;
            }
        }
        for (size_t i = 0; i < run->ntrainable; i++)
            lathe_tensor_zero_grad(run->trainable[i]);
        const struct lathe_backend_ops *prev = lathe_run_optim_begin(run);
        for (size_t i = 0; i < run->noptim; i++)
            lathe_tensor_zero_grad(run->optim_params[i]);
        lathe_run_optim_end(prev);
        if (run->strategy.self && (rc = STRATEGY(run)->sync_params(run->strategy.self)) != LATHE_OK) {
            rc = lathe_error_prefix(rc, "[parallel] %s: sync_params", run->strategy.name);
            break;
        }
        /* the logged loss is the global batch's; a signal on any rank stops all */
        double agree[2] = {loss_sum / (double)t->grad_accum, stop_signal ? 1.0 : 0.0};
        if ((rc = lathe_run_allreduce_mean(run, agree, 2)) != LATHE_OK)
            break;
        if (agree[1] > 0 && !stop_signal)
            stop_signal = SIGTERM;
        tokens *= run->env.world_size;
        ls.step++;
        ls.tokens_seen += tokens;
        double dt = now_s() - t0;
        double loss = agree[0];
        double tps = dt > 0 ? (double)tokens / dt : 0.0;
        double eta = (now_s() - started) / (double)(ls.step - first) * (double)(t->steps - ls.step);
        if (ls.step % t->log_every == 0 || ls.step == t->steps) {
            /* the step's own scalars, then what components reported */
            const char *names[6 + 64] = {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s",
                                         "train/loss_scale", "train/skipped_steps"};
            double v[6 + 64] = {loss, lr, norm, tps, step_scale, (double)scaler->skipped_steps};
            size_t nf = scaler->enabled ? 6 : 4; /* the scale used by this step, and the skips so far */
            size_t nr = lathe_report_take(names + nf, v + nf, 64);
            rc = log_scalars(run, ls.step, names, v, nf + nr);
            lathe_progress_step(run, ls.step, loss, lr, norm, tps, eta);
        }
        lathe_report_clear();
        int last = ls.step == t->steps;
        if (rc == LATHE_OK && t->eval_every && (ls.step % t->eval_every == 0 || last)) {
            double el;
            rc = evaluate_and_log(run, ls.step, &el);
            if (rc == LATHE_OK) {
                int improved = el < ls.best_eval - t->min_delta;
                if (improved) {
                    ls.best_eval = el;
                    ls.bad_evals = 0;
                } else {
                    ls.bad_evals++;
                }
                lathe_progress_eval(run, ls.step, el, improved);
                if (t->patience && ls.bad_evals >= t->patience) {
                    lathe_progress_note("early stop at step %lld: eval loss has not improved on %.6f for %lld evaluations",
                                        (long long)ls.step, ls.best_eval, (long long)ls.bad_evals);
                    stop_early = 1;
                }
            }
        }
        if (rc == LATHE_OK && (last || stop_early || stop_signal ||
                               (t->checkpoint_every && ls.step % t->checkpoint_every == 0)))
            rc = lathe_checkpoint_save(run, &ls);
    }
    lathe_progress_done(run);
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) /* ru_maxrss: KiB on Linux */
        lathe_progress_note("peak RSS %.1f MiB", (double)ru.ru_maxrss / 1024.0);
    for (size_t i = 0; i < run->nloggers; i++)
        if (LATHE_OPS_HAS(run->log_ops[i], struct lathe_logger_ops, flush))
            run->log_ops[i]->flush(run->log_self[i]);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (rc == LATHE_OK && stop_signal) {
        lathe_progress_note("stopped by signal %d at step %lld; checkpoint saved, continue with --resume",
                            (int)stop_signal, (long long)ls.step);
        return lathe_error(LATHE_EINTR, "interrupted at step %lld (checkpoint saved)", (long long)ls.step);
    }
    int save_model = rc == LATHE_OK && t->save_final && !run->peft.ops && MODEL(run)->save &&
                     LATHE_OPS_HAS(MODEL(run), struct lathe_model_ops, save);
    /* every rank: ZeRO-3 gathers the segments' parameters collectively */
    if (save_model)
        rc = lathe_run_whole_params(run, 1);
    if (rc == LATHE_OK && run->env.rank == 0 && save_model) {
        char dir[4200];
        snprintf(dir, sizeof dir, "%s/final", run->output_dir);
        rc = lathe_mkdir_p(dir);
        if (rc == LATHE_OK)
            rc = MODEL(run)->save(run->model.self, dir);
        if (rc == LATHE_OK)
            lathe_progress_note("model written to %s", dir);
    }
    if (save_model) {
        int wrc = lathe_run_whole_params(run, 0);
        rc = rc != LATHE_OK ? rc : wrc;
    }
    /* [peft]: the base is unchanged, so only the adapter is written (lathe
     * merge folds it into the base when a full model is wanted). */
    if (rc == LATHE_OK && run->env.rank == 0 && t->save_final && run->peft.ops) {
        const struct lathe_peft_ops *po = run->peft.ops;
        char dir[4200];
        snprintf(dir, sizeof dir, "%s/adapter", run->output_dir);
        if (po->save && LATHE_OPS_HAS(po, struct lathe_peft_ops, save)) {
            rc = lathe_mkdir_p(dir);
            if (rc == LATHE_OK)
                rc = po->save(run->peft.self, dir);
            if (rc == LATHE_OK)
                lathe_progress_note("adapter written to %s (the base model is unchanged and not written again)", dir);
        } else {
            lathe_progress_note("[peft] %s cannot save an adapter; the trained parameters are in the last checkpoint",
                                run->peft.name);
        }
    }
    return rc;
}
