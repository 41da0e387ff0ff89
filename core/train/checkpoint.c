/* core/train/checkpoint.c — save and restore everything a run needs to
 * continue bit for bit: parameters, optimizer state, data position, the
 * global RNG, the step and the early-stopping record.
 *
 * Layout: OUTPUT_DIR/checkpoints/step-00000050/{state.safetensors,state.json}.
 * A checkpoint is written into step-N.tmp/ and renamed into place, so a crash
 * never leaves a half-written checkpoint under a final name. */
#define _XOPEN_SOURCE 700
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tensor/state.h"
#include "train/run_internal.h"
#include "util/strutil.h"

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int rm_rf(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? LATHE_OK : lathe_error(LATHE_EIO, "%s: %s", path, strerror(errno));
    if (nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        return lathe_error(LATHE_EIO, "%s: cannot remove: %s", path, strerror(errno));
    return LATHE_OK;
}

static void fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* Step numbers of complete checkpoints, ascending. */
static int list_checkpoints(const char *root, int64_t **steps, size_t *n)
{
    *steps = NULL;
    *n = 0;
    DIR *d = opendir(root);
    if (!d)
        return errno == ENOENT ? LATHE_OK : lathe_error(LATHE_EIO, "%s: %s", root, strerror(errno));
    size_t cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        long long s;
        char tail;
        if (sscanf(e->d_name, "step-%lld%c", &s, &tail) != 1 || s < 0)
            continue; /* also skips step-N.tmp */
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            int64_t *p = realloc(*steps, cap * sizeof *p);
            if (!p) {
                closedir(d);
                return lathe_error(LATHE_ENOMEM, "out of memory");
            }
            *steps = p;
        }
        (*steps)[(*n)++] = s;
    }
    closedir(d);
    for (size_t i = 1; i < *n; i++) /* insertion sort: few entries */
        for (size_t j = i; j > 0 && (*steps)[j - 1] > (*steps)[j]; j--) {
            int64_t t = (*steps)[j];
            (*steps)[j] = (*steps)[j - 1];
            (*steps)[j - 1] = t;
        }
    return LATHE_OK;
}

int lathe_checkpoint_exists(const struct lathe_run *run)
{
    char root[4200];
    snprintf(root, sizeof root, "%s/checkpoints", run->output_dir);
    int64_t *steps;
    size_t n;
    if (list_checkpoints(root, &steps, &n) != LATHE_OK)
        return 0;
    free(steps);
    return n > 0;
}

/* A sharding strategy saves each rank's optimizer shard itself. */
static int strategy_keeps_optim(const struct lathe_run *run)
{
    return run->strategy.self &&
           LATHE_OPS_HAS((const struct lathe_strategy_ops *)run->strategy.ops, struct lathe_strategy_ops, state_save) &&
           LATHE_OPS_HAS((const struct lathe_strategy_ops *)run->strategy.ops, struct lathe_strategy_ops, state_load);
}

static int put_components(struct lathe_run *run, lathe_state *st, const struct lathe_loop_state *ls)
{
    int rc = LATHE_OK;
    /* frozen parameters (a PEFT run's base) never change: the model makes
     * them again from its [model] section, so they stay out of checkpoints */
    lathe_state_set_prefix(st, "model.");
    for (size_t i = 0; rc == LATHE_OK && i < run->nparams; i++)
        if (run->params[i]->requires_grad)
            rc = lathe_state_put_tensor(st, run->params[i]->name, run->params[i]);
    if (run->peft.ops && rc == LATHE_OK) {
        lathe_tensor *const *p;
        size_t n;
        rc = ((const struct lathe_peft_ops *)run->peft.ops)->params(run->peft.self, &p, &n);
        lathe_state_set_prefix(st, "peft.");
        for (size_t i = 0; rc == LATHE_OK && i < n; i++)
            rc = lathe_state_put_tensor(st, p[i]->name, p[i]);
    }
    if (rc == LATHE_OK && !strategy_keeps_optim(run)) {
        lathe_state_set_prefix(st, "optim.");
        const struct lathe_backend_ops *prev = lathe_run_optim_begin(run);
        rc = ((const struct lathe_optim_ops *)run->optim.ops)->state_save(run->optim.self, st);
        lathe_run_optim_end(prev);
    }
    if (rc == LATHE_OK) {
        lathe_state_set_prefix(st, "data.");
        rc = ((const struct lathe_data_ops *)run->data.ops)->state_save(run->data.self, st);
    }
    if (rc == LATHE_OK) {
        lathe_state_set_prefix(st, "loop.");
        const lathe_rng *g = lathe_rng_global();
        char key[16];
        rc = lathe_state_put_i64(st, "step", ls->step);
        rc = rc ? rc : lathe_state_put_i64(st, "tokens_seen", ls->tokens_seen);
        rc = rc ? rc : lathe_state_put_i64(st, "bad_evals", ls->bad_evals);
        if (!rc && isfinite(ls->best_eval))
            rc = lathe_state_put_f64(st, "best_eval", ls->best_eval);
        for (int i = 0; rc == LATHE_OK && i < 4; i++) {
            snprintf(key, sizeof key, "rng.%d", i);
            rc = lathe_state_put_i64(st, key, (int64_t)g->s[i]);
        }
        /* fp16: the loss scaler continues where it was (train/scaler.h) */
        const struct lathe_loss_scaler *sc = &run->scaler;
        if (rc == LATHE_OK && sc->enabled) {
            rc = lathe_state_put_f64(st, "loss_scale", sc->scale);
            rc = rc ? rc : lathe_state_put_i64(st, "loss_scale_clean_steps", sc->clean_steps);
            rc = rc ? rc : lathe_state_put_i64(st, "skipped_steps", sc->skipped_steps);
        }
    }
    return rc;
}

static int save_shared(struct lathe_run *run, const struct lathe_loop_state *ls, const char *root, const char *dir,
                       const char *tmp);
static int publish(struct lathe_run *run, const char *root, const char *dir, const char *tmp);

int lathe_run_whole_params(struct lathe_run *run, int whole)
{
    const struct lathe_strategy_ops *so = run->strategy.ops;
    const struct lathe_model_ops *mo = run->model.ops;
    /* LATHE_OPS_HAS(release) also covers acquire's place, not its value */
    if (!run->strategy.self || !LATHE_OPS_HAS(so, struct lathe_strategy_ops, release) || !so->acquire ||
        !LATHE_OPS_HAS(mo, struct lathe_model_ops, segments))
        return LATHE_OK;
    const struct lathe_segment *const *segs;
    size_t n;
    int rc = mo->segments(run->model.self, &segs, &n);
    for (size_t i = 0; rc == LATHE_OK && whole && i < n; i++)
        rc = so->acquire(run->strategy.self, segs[i]);
    for (size_t i = 0; !whole && i < n; i++) { /* release all, whatever fails */
        int r = so->release(run->strategy.self, segs[i], 0);
        rc = rc == LATHE_OK ? r : rc;
    }
    return rc == LATHE_OK ? rc : lathe_error_prefix(rc, "[parallel] %s: %s the model's segments", run->strategy.name,
                                                    whole ? "gathering" : "releasing");
}

/* Every rank calls this. Rank 0 writes the shared state; with a sharding
 * strategy every rank then writes its optimizer shard into the same
 * temporary directory, and rank 0 renames it once all are done. */
int lathe_checkpoint_save(struct lathe_run *run, const struct lathe_loop_state *ls)
{
    char root[4200], dir[4300], tmp[4400];
    snprintf(root, sizeof root, "%s/checkpoints", run->output_dir);
    snprintf(dir, sizeof dir, "%s/step-%08lld", root, (long long)ls->step);
    snprintf(tmp, sizeof tmp, "%s.tmp", dir);
    int rc = lathe_run_whole_params(run, 1);
    if (rc == LATHE_OK && run->env.rank == 0)
        rc = save_shared(run, ls, root, dir, tmp);
    int wrc = lathe_run_whole_params(run, 0);
    rc = rc != LATHE_OK ? rc : wrc;
    /* every rank enters every barrier, whatever failed, so that no
     * collective is left half-entered (barriers are no-ops in one process) */
    int brc = lathe_run_barrier(run);
    if (rc == LATHE_OK && brc == LATHE_OK && strategy_keeps_optim(run)) {
        /* with the optimizer's backend current (parallel.h, optim_device) */
        const struct lathe_backend_ops *prev = lathe_run_optim_begin(run);
        rc = ((const struct lathe_strategy_ops *)run->strategy.ops)
                 ->state_save(run->strategy.self, run->optim.ops, run->optim.self, tmp);
        lathe_run_optim_end(prev);
    }
    if (brc == LATHE_OK)
        brc = lathe_run_barrier(run);
    if (rc == LATHE_OK && brc == LATHE_OK && run->env.rank == 0)
        rc = publish(run, root, dir, tmp);
    if (brc == LATHE_OK)
        brc = lathe_run_barrier(run);
    return rc != LATHE_OK ? rc : brc;
}

/* Write the state every rank shares (parameters, data, loop, and the
 * optimizer unless the strategy keeps it) into tmp. */
static int save_shared(struct lathe_run *run, const struct lathe_loop_state *ls, const char *root, const char *dir,
                       const char *tmp)
{
    int rc = lathe_mkdir_p(root);
    if (rc == LATHE_OK)
        rc = rm_rf(tmp);
    if (rc == LATHE_OK && mkdir(tmp, 0755) != 0)
        rc = lathe_error(LATHE_EIO, "%s: cannot create: %s", tmp, strerror(errno));
    lathe_state *st = rc == LATHE_OK ? lathe_state_new() : NULL;
    if (rc == LATHE_OK && !st)
        rc = lathe_error(LATHE_ENOMEM, "out of memory");
    if (rc == LATHE_OK)
        rc = put_components(run, st, ls);
    if (rc == LATHE_OK)
        rc = lathe_state_write(st, tmp);
    lathe_state_free(st);
    if (rc != LATHE_OK)
        return lathe_error_prefix(rc, "saving checkpoint %s", dir);
    return LATHE_OK;
}

/* Rename tmp into place and drop checkpoints beyond keep_checkpoints. */
static int publish(struct lathe_run *run, const char *root, const char *dir, const char *tmp)
{
    /* the same step saved twice (a signal right after a periodic save) */
    int rc = rm_rf(dir);
    if (rc == LATHE_OK && rename(tmp, dir) != 0)
        rc = lathe_error(LATHE_EIO, "%s: cannot rename into place: %s", dir, strerror(errno));
    if (rc != LATHE_OK)
        return lathe_error_prefix(rc, "saving checkpoint %s", dir);
    fsync_dir(root);

    int64_t *steps;
    size_t n;
    if (list_checkpoints(root, &steps, &n) == LATHE_OK) {
        for (size_t i = 0; i + (size_t)run->train.keep_checkpoints < n; i++) {
            char old[4300];
            snprintf(old, sizeof old, "%s/step-%08lld", root, (long long)steps[i]);
            rm_rf(old);
        }
        free(steps);
    }
    return LATHE_OK;
}

static int get_components(struct lathe_run *run, lathe_state *st, struct lathe_loop_state *ls)
{
    int rc = LATHE_OK;
    lathe_state_set_prefix(st, "model.");
    for (size_t i = 0; rc == LATHE_OK && i < run->nparams; i++)
        if (run->params[i]->requires_grad)
            rc = lathe_state_get_tensor(st, run->params[i]->name, run->params[i]);
    if (run->peft.ops && rc == LATHE_OK) {
        lathe_tensor *const *p;
        size_t n;
        rc = ((const struct lathe_peft_ops *)run->peft.ops)->params(run->peft.self, &p, &n);
        lathe_state_set_prefix(st, "peft.");
        for (size_t i = 0; rc == LATHE_OK && i < n; i++)
            rc = lathe_state_get_tensor(st, p[i]->name, p[i]);
    }
    if (rc == LATHE_OK && !strategy_keeps_optim(run)) {
        lathe_state_set_prefix(st, "optim.");
        const struct lathe_backend_ops *prev = lathe_run_optim_begin(run);
        rc = ((const struct lathe_optim_ops *)run->optim.ops)->state_load(run->optim.self, st);
        lathe_run_optim_end(prev);
    }
    if (rc == LATHE_OK) {
        lathe_state_set_prefix(st, "data.");
        rc = ((const struct lathe_data_ops *)run->data.ops)->state_load(run->data.self, st);
    }
    if (rc == LATHE_OK) {
        lathe_state_set_prefix(st, "loop.");
        lathe_rng *g = lathe_rng_global();
        char key[16];
        rc = lathe_state_get_i64(st, "step", &ls->step);
        rc = rc ? rc : lathe_state_get_i64(st, "tokens_seen", &ls->tokens_seen);
        rc = rc ? rc : lathe_state_get_i64(st, "bad_evals", &ls->bad_evals);
        if (!rc && lathe_state_get_f64(st, "best_eval", &ls->best_eval) != LATHE_OK)
            ls->best_eval = INFINITY;
        for (int i = 0; rc == LATHE_OK && i < 4; i++) {
            int64_t v;
            snprintf(key, sizeof key, "rng.%d", i);
            rc = lathe_state_get_i64(st, key, &v);
            g->s[i] = (uint64_t)v;
        }
        /* a checkpoint of an fp32 or bf16 run has no scaler: an fp16 run
         * resumed from it starts from the configured scale */
        struct lathe_loss_scaler *sc = &run->scaler;
        double scale;
        if (rc == LATHE_OK && sc->enabled && lathe_state_get_f64(st, "loss_scale", &scale) == LATHE_OK) {
            rc = lathe_state_get_i64(st, "loss_scale_clean_steps", &sc->clean_steps);
            rc = rc ? rc : lathe_state_get_i64(st, "skipped_steps", &sc->skipped_steps);
            /* a fixed scale is the configuration's, whatever the checkpoint says */
            if (sc->dynamic)
                sc->scale = scale;
        }
    }
    return rc;
}

int lathe_checkpoint_load_latest(struct lathe_run *run, struct lathe_loop_state *ls, char *dir, size_t dn)
{
    char root[4200];
    snprintf(root, sizeof root, "%s/checkpoints", run->output_dir);
    int64_t *steps;
    size_t n;
    int rc = list_checkpoints(root, &steps, &n);
    if (rc != LATHE_OK)
        return rc;
    if (n == 0)
        return LATHE_EOF;
    snprintf(dir, dn, "%s/step-%08lld", root, (long long)steps[n - 1]);
    free(steps);
    lathe_state *st;
    rc = lathe_run_whole_params(run, 1);
    if (rc == LATHE_OK && (rc = lathe_state_read(&st, dir)) == LATHE_OK) {
        rc = get_components(run, st, ls);
        lathe_state_free(st);
    }
    if (rc == LATHE_OK && strategy_keeps_optim(run)) {
        const struct lathe_backend_ops *prev = lathe_run_optim_begin(run);
        rc = ((const struct lathe_strategy_ops *)run->strategy.ops)
                 ->state_load(run->strategy.self, run->optim.ops, run->optim.self, dir);
        lathe_run_optim_end(prev);
    }
    int wrc = lathe_run_whole_params(run, 0);
    rc = rc != LATHE_OK ? rc : wrc;
    if (rc != LATHE_OK)
        return lathe_error_prefix(rc, "resuming from %s", dir);
    return LATHE_OK;
}
