/* core/io/metrics.c — metrics.jsonl and TensorBoard loggers (see metrics.h).
 *
 * Why 17 significant digits (JSON_REAL_PRECISION(17)) rather than 9: the
 * logger interface carries doubles, and some values are true doubles (the
 * learning rate from a schedule, tokens per second), so only 17 digits
 * guarantee that a reader gets back exactly what the loop logged, which lets
 * a resumed run's lines be compared bit for bit with an uninterrupted one.
 * The price is long tails on values that began as floats (a float loss of
 * 2.3456 prints as 2.3455998897552490). */
#include "io/metrics.h"
#include "io/tensorboard.h"

#include <lathe/status.h>

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int lathe_metrics_key(char *out, size_t cap, const char *name)
{
    const char *src = name;
    if (strncmp(name, "train/", 6) == 0 && name[6] != '\0')
        src = name + 6;
    size_t n = strlen(src);
    if (n + 1 > cap)
        return lathe_error(LATHE_EINVAL, "metric name %s is too long (%zu bytes, limit %zu)",
                           name, n, cap ? cap - 1 : 0);
    memcpy(out, src, n + 1);
    if (src == name) {
        char *slash = strchr(out, '/');
        if (slash && slash != out)
            *slash = '_';
    }
    return LATHE_OK;
}

static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int check_env(const struct lathe_env *env, const char *what)
{
    if (!env || !env->output_dir || !*env->output_dir)
        return lathe_error(LATHE_EINVAL, "%s logger: no output directory ([run] output_dir)",
                           what);
    return LATHE_OK;
}

/* ---- metrics.jsonl ------------------------------------------------------- */
struct jsonl_logger {
    FILE *fp;
    char *path;
};

static void jsonl_destroy(void *self)
{
    struct jsonl_logger *lg = self;
    if (!lg)
        return;
    if (lg->fp)
        fclose(lg->fp);
    free(lg->path);
    free(lg);
}

static int jsonl_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    *self = NULL;
    int rc = check_env(env, "metrics.jsonl");
    if (rc)
        return rc;
    struct jsonl_logger *lg = calloc(1, sizeof *lg);
    if (!lg || !(lg->path = path_join(env->output_dir, "metrics.jsonl"))) {
        free(lg);
        return lathe_error(LATHE_ENOMEM, "out of memory creating the metrics.jsonl logger");
    }
    /* Append: a resumed run continues the same file. */
    lg->fp = fopen(lg->path, "a");
    if (!lg->fp) {
        rc = lathe_error(LATHE_EIO, "cannot open %s for appending: %s", lg->path,
                         strerror(errno));
        jsonl_destroy(lg);
        return rc;
    }
    *self = lg;
    return LATHE_OK;
}

static int jsonl_scalars(void *self, int64_t step, const char *const *names,
                         const double *values, size_t n)
{
    struct jsonl_logger *lg = self;
    int rc = LATHE_OK;
    char *key = NULL, *line = NULL;
    json_t *obj = json_object();
    if (!obj || json_object_set_new(obj, "step", json_integer((json_int_t)step)) != 0) {
        rc = lathe_error(LATHE_ENOMEM, "out of memory writing %s", lg->path);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (!names[i] || !*names[i]) {
            rc = lathe_error(LATHE_EINVAL, "%s: metric %zu of step %lld has no name", lg->path,
                             i, (long long)step);
            goto out;
        }
        size_t cap = strlen(names[i]) + 1; /* a key is never longer than its name */
        free(key);
        if (!(key = malloc(cap))) {
            rc = lathe_error(LATHE_ENOMEM, "out of memory writing %s", lg->path);
            goto out;
        }
        if ((rc = lathe_metrics_key(key, cap, names[i])) != 0)
            goto out;
        /* JSON has no NaN or infinity (and jansson refuses them): null keeps
         * the key, so a diverging run still shows where it diverged. */
        json_t *v = isfinite(values[i]) ? json_real(values[i]) : json_null();
        if (!v || json_object_set_new(obj, key, v) != 0) {
            rc = lathe_error(LATHE_ENOMEM, "out of memory writing %s", lg->path);
            goto out;
        }
    }
    line = json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(17));
    if (!line) {
        rc = lathe_error(LATHE_ENOMEM, "out of memory writing %s", lg->path);
        goto out;
    }
    if (fputs(line, lg->fp) == EOF || fputc('\n', lg->fp) == EOF || fflush(lg->fp) != 0)
        rc = lathe_error(LATHE_EIO, "cannot write %s: %s", lg->path, strerror(errno));
out:
    free(line);
    free(key);
    json_decref(obj);
    return rc;
}

/* Durable at checkpoints: each line is already flushed to the kernel. */
static int jsonl_flush(void *self)
{
    struct jsonl_logger *lg = self;
    if (fflush(lg->fp) != 0 || fsync(fileno(lg->fp)) != 0)
        return lathe_error(LATHE_EIO, "cannot flush %s: %s", lg->path, strerror(errno));
    return LATHE_OK;
}

const struct lathe_logger_ops lathe_logger_jsonl = {
    .size = sizeof(struct lathe_logger_ops),
    .create = jsonl_create,
    .destroy = jsonl_destroy,
    .scalars = jsonl_scalars,
    .flush = jsonl_flush,
};

/* ---- TensorBoard ---------------------------------------------------------- */
static int tb_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    *self = NULL;
    int rc = check_env(env, "TensorBoard");
    if (rc)
        return rc;
    char *dir = path_join(env->output_dir, "tb");
    if (!dir)
        return lathe_error(LATHE_ENOMEM, "out of memory creating the TensorBoard logger");
    struct lathe_tb *tb;
    rc = lathe_tb_open(&tb, dir);
    free(dir);
    if (rc)
        return rc;
    *self = tb;
    return LATHE_OK;
}

static void tb_destroy(void *self)
{
    lathe_tb_close(self);
}

static int tb_scalars(void *self, int64_t step, const char *const *names, const double *values,
                      size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int rc = lathe_tb_scalar(self, step, names[i], values[i]);
        if (rc)
            return rc;
    }
    /* TensorBoard tails the file; flushing per step makes progress visible
     * while the run is going and bounds what a crash loses. */
    return lathe_tb_flush(self);
}

static int tb_flush(void *self)
{
    return lathe_tb_flush(self);
}

const struct lathe_logger_ops lathe_logger_tensorboard = {
    .size = sizeof(struct lathe_logger_ops),
    .create = tb_create,
    .destroy = tb_destroy,
    .scalars = tb_scalars,
    .flush = tb_flush,
};
