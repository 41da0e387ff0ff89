/* core/train/run_internal.h — the run's fields, shared by run.c, loop.c and
 * checkpoint.c. */
#ifndef LATHE_CORE_RUN_INTERNAL_H
#define LATHE_CORE_RUN_INTERNAL_H

#include "plugin/loader.h"
#include "train/run.h"
#include "train/scaler.h"

#define LATHE_MAX_LOGGERS 8

struct lathe_train_settings {
    int64_t steps, batch_size, grad_accum;
    double max_grad_norm;            /* 0: no clipping */
    int64_t eval_every, eval_batches;
    int eval_at_start;               /* evaluate once before the first step */
    int save_final;                  /* export the model (or adapter) at the end */
    int64_t log_every, checkpoint_every, keep_checkpoints;
    int64_t patience;                /* evaluations without improvement; 0: off */
    double min_delta;
    int64_t threads;
    int activation_checkpointing;    /* recompute segments in the backward */
};

struct lathe_run {
    lathe_config *cfg;
    struct lathe_registry *reg;
    struct lathe_env env;
    struct lathe_train_settings train;
    char output_dir[4096];
    int resume;
    int tensorboard, jsonl;

    struct lathe_component_inst model, data, loss, optim, sched, peft;
    /* several processes: [parallel] names the strategy, [comm] the
     * communicator (default mpi); both absent in a single process */
    struct lathe_component_inst comm, strategy;
    /* what the optimizer updates: the trainable parameters, or the shard
     * views the strategy hands out */
    lathe_tensor *const *optim_params;
    size_t noptim;
    /* the CPU backend when the strategy keeps optim_params in host memory
     * on a device run (optim_device: ZeRO cpu_offload); NULL: the run's */
    const struct lathe_backend_ops *optim_backend;
    struct lathe_reward_inst *rewards; /* [reward.*] */
    size_t nrewards;
    /* every parameter, and the trainable ones (what the optimizer sees) */
    lathe_tensor *const *params;
    size_t nparams;
    lathe_tensor **trainable;
    size_t ntrainable;
    /* precision = fp16: the loss scaler (run.c sets it up, loop.c runs it,
     * checkpoint.c keeps its state) */
    struct lathe_loss_scaler scaler;
    /* loggers: the built-in metrics.jsonl and TensorBoard writers */
    const struct lathe_logger_ops *log_ops[LATHE_MAX_LOGGERS];
    void *log_self[LATHE_MAX_LOGGERS];
    size_t nloggers;
};

/* Loop state that checkpoints carry besides the components' own. */
struct lathe_loop_state {
    int64_t step;                    /* optimizer updates done */
    int64_t tokens_seen;
    double best_eval;                /* +inf until the first evaluation */
    int64_t bad_evals;               /* evaluations since the best */
};

/* run.c: everything done with optim_params or the optimizer sits between
 * these two: begin makes the optimizer's backend current (the CPU's under
 * ZeRO cpu_offload on a device run; nothing changes otherwise) and returns
 * the backend that end restores. */
const struct lathe_backend_ops *lathe_run_optim_begin(const struct lathe_run *run);
void lathe_run_optim_end(const struct lathe_backend_ops *prev);

/* Collectives through the run's communicator; no-ops in one process. */
int lathe_run_barrier(struct lathe_run *run);
int lathe_run_allreduce_mean(struct lathe_run *run, double *v, int n);

/* checkpoint.c */
int lathe_checkpoint_save(struct lathe_run *run, const struct lathe_loop_state *ls);
/* Whether OUTPUT_DIR/checkpoints holds a complete checkpoint. */
int lathe_checkpoint_exists(const struct lathe_run *run);
/* Finds the newest complete checkpoint under output_dir; LATHE_EOF if none. */
int lathe_checkpoint_load_latest(struct lathe_run *run, struct lathe_loop_state *ls, char *dir, size_t n);
/* whole 1: every model segment's parameters acquired through the
 * strategy's segment hooks (ZeRO-3 keeps them whole only in use), so the
 * whole model can be read or written; 0: released again. Every rank calls
 * it (acquire is collective). A no-op without such a strategy. */
int lathe_run_whole_params(struct lathe_run *run, int whole);

/* progress.c: metrics.jsonl housekeeping. Drop the lines of steps after
 * `step` (a resumed run logs them again). */
int lathe_metrics_truncate(const char *path, int64_t step);
/* A fresh run keeps an earlier metrics file as PATH.N (first free N). */
int lathe_metrics_set_aside(const char *path);

/* progress.c: what a person watching sees. */
void lathe_progress_step(const struct lathe_run *run, int64_t step, double loss, double lr,
                         double grad_norm, double tokens_per_s, double eta_s);
void lathe_progress_eval(const struct lathe_run *run, int64_t step, double eval_loss, int improved);
void lathe_progress_done(const struct lathe_run *run);
/* Ranks other than 0 print nothing. */
void lathe_progress_set_quiet(int quiet);
void lathe_progress_note(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

#endif
