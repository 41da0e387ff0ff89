/* core/io/metrics.h — the core's built-in metric loggers.
 *
 * Both are ordinary struct lathe_logger_ops, so the loop drives them exactly
 * as it drives a logger plugin. create() ignores cfg (may be NULL) and writes
 * under env->output_dir:
 *  - lathe_logger_jsonl: metrics.jsonl, opened for appending (a resumed run
 *    continues the file), one JSON object per scalars() call, flushed after
 *    each line: {"step":N,"loss":...,"lr":...}. Keys come from the names:
 *    "train/X" -> "X", "eval/X" -> "eval_X", and in general the first '/'
 *    of any other prefix becomes '_' ("grpo/reward" -> "grpo_reward"); a
 *    name without '/' is kept. Reals are written with 17 significant digits,
 *    so every double reads back bit for bit; NaN and infinities (which JSON
 *    cannot hold) are written as null.
 *  - lathe_logger_tensorboard: an event file in output_dir/tb/, one scalar
 *    per name with the name as given as its tag, flushed after each call.
 */
#ifndef LATHE_IO_METRICS_H
#define LATHE_IO_METRICS_H

#include <stddef.h>

#include <lathe/abi.h>
#include <lathe/logger.h>

LATHE_EXPORT extern const struct lathe_logger_ops lathe_logger_jsonl;
LATHE_EXPORT extern const struct lathe_logger_ops lathe_logger_tensorboard;

/* The metrics.jsonl key for a metric name (rules above) into out; returns
 * LATHE_EINVAL if it does not fit. */
LATHE_EXPORT int lathe_metrics_key(char *out, size_t cap, const char *name);

#endif
