/* plugins/text/text.c — a byte-level text corpus (component "text").
 *
 * The token ids are the file's bytes (vocabulary 256), so any file trains
 * without a tokenizer. The last eval_fraction of the bytes is the eval split,
 * the rest the train split. A split of n bytes holds (n - 1) / seq_len
 * windows: window i is the tokens [i*T, i*T + T + 1), inputs its first T and
 * labels its last T (the next token of each input).
 *
 * Train order: every epoch visits each window once, in a Fisher–Yates
 * permutation drawn from a lathe_rng seeded by (seed, epoch), so the window
 * at any (epoch, cursor) is a pure function of the seed and resume needs only
 * those two numbers. Eval: the windows in file order, then LATHE_EOF.
 *
 * [data] keys: path, seq_len, eval_fraction, shuffle.
 */
#include <lathe/lathe.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct text {
    char *path;                 /* resolved path, for messages */
    const unsigned char *bytes; /* the whole file, mapped read-only */
    size_t nbytes;
    int64_t T;
    int shuffle;
    uint64_t seed;
    /* train split: bytes [0, train_bytes) */
    int64_t train_bytes, train_windows;
    int64_t *order;             /* window index at each cursor this epoch */
    int64_t order_epoch;        /* the epoch `order` was drawn for */
    int64_t epoch, cursor;
    /* eval split: bytes [train_bytes, nbytes) */
    int64_t eval_windows, eval_cursor;
};

static void text_destroy(void *self)
{
    struct text *d = self;
    if (!d)
        return;
    if (d->bytes)
        munmap((void *)d->bytes, d->nbytes);
    free(d->order);
    free(d->path);
    free(d);
}

static int text_map(struct text *d)
{
    int fd = open(d->path, O_RDONLY);
    if (fd < 0)
        return lathe_error(LATHE_EIO, "text: cannot open '%s': %s; check [data] path (relative "
                           "paths start at the INI file's directory)", d->path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return lathe_error(LATHE_EIO, "text: '%s' is not a regular file", d->path);
    }
    if (sb.st_size == 0) {
        close(fd);
        return lathe_error(LATHE_EINVAL, "text: '%s' is empty (0 bytes)", d->path);
    }
    void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return lathe_error(LATHE_EIO, "text: cannot map '%s' (%lld bytes): %s", d->path,
                           (long long)sb.st_size, strerror(errno));
    d->bytes = p;
    d->nbytes = (size_t)sb.st_size;
    return LATHE_OK;
}

static int text_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    *self = NULL;
    const char *path;
    int64_t T;
    double eval_fraction;
    int shuffle;
    int rc;
    if ((rc = lathe_cfg_path(cfg, "path", NULL, &path)) ||
        (rc = lathe_cfg_int(cfg, "seq_len", 64, 1, INT32_MAX, &T)) ||
        (rc = lathe_cfg_float(cfg, "eval_fraction", 0.1, 0.0, 0.5, &eval_fraction)) ||
        (rc = lathe_cfg_bool(cfg, "shuffle", 1, &shuffle)))
        return rc;
    if (!path[0])
        return lathe_cfg_error(cfg, "path", "path is empty; name the text file to train on");

    struct text *d = calloc(1, sizeof *d);
    if (!d || !(d->path = strdup(path))) {
        free(d);
        return lathe_error(LATHE_ENOMEM, "text: out of memory");
    }
    d->T = T;
    d->shuffle = shuffle;
    d->seed = env->seed;
    d->order_epoch = -1;
    if ((rc = text_map(d))) {
        text_destroy(d);
        return rc;
    }

    int64_t n = (int64_t)d->nbytes;
    int64_t eval_bytes = (int64_t)((double)n * eval_fraction);
    d->train_bytes = n - eval_bytes;
    d->train_windows = (d->train_bytes - 1) / T;
    d->eval_windows = eval_bytes > 0 ? (eval_bytes - 1) / T : 0;
    if (d->train_windows < 1 || (eval_fraction > 0.0 && d->eval_windows < 1)) {
        rc = lathe_error(LATHE_EINVAL,
                         "text: '%s' (%lld bytes) is too short: with seq_len %lld each split "
                         "needs at least %lld bytes, and eval_fraction %g leaves %lld train and "
                         "%lld eval bytes; use a longer file, a smaller seq_len or eval_fraction",
                         d->path, (long long)n, (long long)T, (long long)T + 1, eval_fraction,
                         (long long)d->train_bytes, (long long)eval_bytes);
        text_destroy(d);
        return rc;
    }
    d->order = malloc((size_t)d->train_windows * sizeof *d->order);
    if (!d->order) {
        text_destroy(d);
        return lathe_error(LATHE_ENOMEM, "text: out of memory for %lld windows",
                           (long long)d->train_windows);
    }
    *self = d;
    return LATHE_OK;
}

static int text_info(void *self, struct lathe_data_info *info)
{
    const struct text *d = self;
    info->vocab_size = 256;
    info->seq_len = d->T;
    info->train_items = d->train_windows;
    info->eval_items = d->eval_windows;
    return LATHE_OK;
}

/* Draw the visiting order of `epoch`. The golden-ratio step keeps nearby
 * (seed, epoch) pairs apart; lathe_rng_seed mixes further (splitmix64). */
static void text_order(struct text *d, int64_t epoch)
{
    if (d->order_epoch == epoch)
        return;
    int64_t n = d->train_windows;
    for (int64_t i = 0; i < n; i++)
        d->order[i] = i;
    if (d->shuffle) {
        lathe_rng rng;
        lathe_rng_seed(&rng, d->seed + 0x9E3779B97F4A7C15ull * (uint64_t)(epoch + 1));
        for (int64_t i = n - 1; i > 0; i--) {
            int64_t j = (int64_t)lathe_rng_below(&rng, (uint64_t)i + 1);
            int64_t t = d->order[i];
            d->order[i] = d->order[j];
            d->order[j] = t;
        }
    }
    d->order_epoch = epoch;
}

static int text_next(void *self, int split, int64_t B, struct lathe_batch *batch)
{
    struct text *d = self;
    if (B < 1)
        return lathe_error(LATHE_EINVAL, "text: batch size %lld must be >= 1", (long long)B);
    if (split != LATHE_SPLIT_TRAIN && split != LATHE_SPLIT_EVAL)
        return lathe_error(LATHE_EINVAL, "text: unknown split %d", split);
    int64_t rows = B;
    if (split == LATHE_SPLIT_EVAL) {
        /* eval_fraction 0: nothing to evaluate, the pass is over at once */
        if (d->eval_cursor >= d->eval_windows) {
            d->eval_cursor = 0;
            return LATHE_EOF;
        }
        /* the last batch of a pass may be short, so each window counts once */
        if (rows > d->eval_windows - d->eval_cursor)
            rows = d->eval_windows - d->eval_cursor;
    }
    const int64_t T = d->T;
    int32_t *host = malloc((size_t)(2 * rows * T) * sizeof *host);
    if (!host)
        return lathe_error(LATHE_ENOMEM, "text: out of memory for a [%lld, %lld] batch",
                           (long long)rows, (long long)T);
    for (int64_t r = 0; r < rows; r++) {
        const unsigned char *w;
        if (split == LATHE_SPLIT_TRAIN) {
            if (d->cursor >= d->train_windows) {
                d->epoch++;
                d->cursor = 0;
            }
            text_order(d, d->epoch);
            w = d->bytes + d->order[d->cursor++] * T;
        } else {
            w = d->bytes + d->train_bytes + d->eval_cursor++ * T;
        }
        int32_t *in = host + r * T, *lab = host + (rows + r) * T;
        for (int64_t t = 0; t < T; t++) {
            in[t] = w[t];
            lab[t] = w[t + 1];
        }
    }
    /* Move on to the next epoch eagerly, so that a state saved now names
     * the batch that comes next. */
    if (split == LATHE_SPLIT_TRAIN && d->cursor >= d->train_windows) {
        d->epoch++;
        d->cursor = 0;
    }

    lathe_tensor *ids = lathe_tensor_new2(LATHE_I32, rows, T);
    lathe_tensor *labels = lathe_tensor_new2(LATHE_I32, rows, T);
    const struct lathe_backend_ops *be = lathe_backend();
    size_t half = (size_t)(rows * T) * sizeof *host;
    int rc = (!ids || !labels) ? LATHE_ENOMEM : LATHE_OK;
    if (!rc && (be->copy(ids->data, host, half, 1) || be->copy(labels->data, host + rows * T, half, 1)))
        rc = lathe_error(LATHE_ERR, "text: copying a batch to the device failed");
    free(host);
    if (rc)
        return rc == LATHE_ENOMEM ? lathe_error_prefix(rc, "text: batch") : rc;
    batch->B = rows;
    batch->T = T;
    batch->input_ids = ids;
    batch->labels = labels;
    batch->positions = NULL;
    batch->segments = NULL;
    batch->targets = NULL;
    batch->ntokens = rows * T;
    return LATHE_OK;
}

static int text_state_save(void *self, lathe_state *st)
{
    struct text *d = self;
    int rc;
    if ((rc = lathe_state_put_i64(st, "epoch", d->epoch)) ||
        (rc = lathe_state_put_i64(st, "cursor", d->cursor)) ||
        (rc = lathe_state_put_i64(st, "train_windows", d->train_windows)))
        return lathe_error_prefix(rc, "text: saving state");
    return LATHE_OK;
}

static int text_state_load(void *self, lathe_state *st)
{
    struct text *d = self;
    int64_t epoch, cursor, windows;
    int rc;
    if ((rc = lathe_state_get_i64(st, "epoch", &epoch)) ||
        (rc = lathe_state_get_i64(st, "cursor", &cursor)) ||
        (rc = lathe_state_get_i64(st, "train_windows", &windows)))
        return lathe_error_prefix(rc, "text: loading state");
    if (windows != d->train_windows)
        return lathe_error(LATHE_EINVAL, "text: the checkpoint was made with %lld train windows "
                           "but '%s' with seq_len %lld gives %lld; resume with the same file "
                           "and [data] settings", (long long)windows, d->path, (long long)d->T,
                           (long long)d->train_windows);
    if (epoch < 0 || cursor < 0 || cursor > d->train_windows)
        return lathe_error(LATHE_EINVAL, "text: checkpoint position epoch %lld cursor %lld is "
                           "out of range (%lld windows)", (long long)epoch, (long long)cursor,
                           (long long)d->train_windows);
    d->epoch = epoch;
    d->cursor = cursor;
    return LATHE_OK;
}

static const struct lathe_data_ops text_ops = {
    .size = sizeof(struct lathe_data_ops),
    .create = text_create,
    .destroy = text_destroy,
    .info = text_info,
    .next = text_next,
    .state_save = text_state_save,
    .state_load = text_state_load,
};

static const struct lathe_component text_components[] = {
    {.kind = LATHE_KIND_DATA, .name = "text", .ops = &text_ops},
    {0},
};

LATHE_PLUGIN_DEFINE(text, .version = "0.1.0",
                    .description = "byte-level text corpus with shuffled fixed-length windows",
                    .components = text_components)
