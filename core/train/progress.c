/* core/train/progress.c — the progress line, and metrics.jsonl upkeep.
 *
 * On a terminal one line is redrawn in place (step/total, loss, lr, tokens/s,
 * ETA); otherwise every logged step is a plain line, for log files. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "train/run_internal.h"

static int on_tty = -1;
static int line_open;
static int quiet;

void lathe_progress_set_quiet(int q) { quiet = q; }

static int tty(void)
{
    if (on_tty < 0)
        on_tty = isatty(STDOUT_FILENO) && !getenv("LATHE_PLAIN");
    return on_tty;
}

static const char *fmt_eta(double s, char *buf, size_t n)
{
    if (!(s >= 0) || s > 1e8) {
        snprintf(buf, n, "--");
        return buf;
    }
    long v = (long)(s + 0.5);
    if (v >= 3600)
        snprintf(buf, n, "%ldh%02ldm", v / 3600, (v / 60) % 60);
    else if (v >= 60)
        snprintf(buf, n, "%ldm%02lds", v / 60, v % 60);
    else
        snprintf(buf, n, "%lds", v);
    return buf;
}

void lathe_progress_step(const struct lathe_run *run, int64_t step, double loss, double lr, double grad_norm,
                         double tokens_per_s, double eta_s)
{
    if (quiet)
        return;
    char eta[32];
    if (tty()) {
        printf("\r\033[Kstep %lld/%lld | loss %.6f | lr %.3e | grad %.3f | %.0f tok/s | ETA %s", (long long)step,
               (long long)run->train.steps, loss, lr, grad_norm, tokens_per_s, fmt_eta(eta_s, eta, sizeof eta));
        line_open = 1;
    } else {
        printf("step %lld/%lld loss %.6f lr %.3e grad_norm %.4f tokens/s %.0f eta %s\n", (long long)step,
               (long long)run->train.steps, loss, lr, grad_norm, tokens_per_s, fmt_eta(eta_s, eta, sizeof eta));
    }
    fflush(stdout);
}

void lathe_progress_eval(const struct lathe_run *run, int64_t step, double eval_loss, int improved)
{
    if (quiet)
        return;
    (void)run;
    if (line_open)
        printf("\n");
    line_open = 0;
    printf("eval step %lld eval_loss %.6f%s\n", (long long)step, eval_loss, improved ? " (best)" : "");
    fflush(stdout);
}

void lathe_progress_done(const struct lathe_run *run)
{
    (void)run;
    if (line_open)
        printf("\n");
    line_open = 0;
    fflush(stdout);
}

void lathe_progress_note(const char *fmt, ...)
{
    if (quiet)
        return;
    if (line_open)
        printf("\n");
    line_open = 0;
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

int lathe_metrics_truncate(const char *path, int64_t step)
{
    FILE *in = fopen(path, "r");
    if (!in)
        return errno == ENOENT ? LATHE_OK : lathe_error(LATHE_EIO, "%s: %s", path, strerror(errno));
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *out = fopen(tmp, "w");
    if (!out) {
        fclose(in);
        return lathe_error(LATHE_EIO, "%s: %s", tmp, strerror(errno));
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, in)) > 0) {
        json_t *o = json_loads(line, 0, NULL);
        json_t *s = o ? json_object_get(o, "step") : NULL;
        int keep = !s || !json_is_integer(s) || json_integer_value(s) <= step;
        json_decref(o);
        if (keep)
            fwrite(line, 1, (size_t)len, out);
    }
    free(line);
    fclose(in);
    if (fclose(out) != 0 || rename(tmp, path) != 0)
        return lathe_error(LATHE_EIO, "%s: cannot rewrite: %s", path, strerror(errno));
    return LATHE_OK;
}

int lathe_metrics_set_aside(const char *path)
{
    if (access(path, F_OK) != 0)
        return LATHE_OK;
    char dst[4300];
    for (int i = 1; i < 100000; i++) {
        snprintf(dst, sizeof dst, "%s.%d", path, i);
        if (access(dst, F_OK) != 0) {
            if (rename(path, dst) != 0)
                return lathe_error(LATHE_EIO, "%s: cannot move aside: %s", path, strerror(errno));
            lathe_progress_note("an earlier %s was kept as %s", path, dst);
            return LATHE_OK;
        }
    }
    return lathe_error(LATHE_EIO, "%s: too many earlier metrics files", path);
}
