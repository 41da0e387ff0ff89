/* plugins/jsonl-chat/jsonl_chat.c — chat conversations in JSON Lines for
 * supervised fine-tuning (component "jsonl-chat").
 *
 * Each line is a list of {"role","content"} messages or an object with
 * "messages" (lathe_chat_parse). Every conversation is rendered in the
 * model's chat format and tokenized once at load (lathe_chat_encode), with
 * the mask of the assistant tokens; loss falls only on those unless
 * train_on_inputs. A sample longer than max_length keeps its start.
 *
 * Rows: without packing one sample per row, padded to the longest row of
 * the batch (segment -1, label -100). With packing, consecutive samples of
 * the visiting order fill rows of exactly max_length; each sample gets its
 * own segment id and its positions restart at 0, so attention never
 * crosses samples and the model sees each as if alone. Labels are shifted
 * here: label[t] = id[t+1] when token t+1 is learnt, and never across the
 * end of a sample.
 *
 * Order: as plugins/text, a Fisher–Yates permutation per epoch from a
 * lathe_rng seeded by (seed, epoch), so the sample at any (epoch, cursor) is
 * a pure function of the seed and resume needs only those two numbers. The
 * eval split (the last eval_fraction of the lines, or eval_path) is read in
 * file order, then LATHE_EOF.
 *
 * [data] keys: path, tokenizer, template, max_length, train_on_inputs,
 * packing, shuffle, eval_fraction, eval_path, on_bad_line.
 */
#include <lathe/lathe.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct chat {
    char *path, *eval_path;      /* resolved, for messages */
    lathe_tokenizer *tk;
    int format;
    char *default_system;        /* the model template's, or NULL */
    int64_t L;                   /* max_length */
    int train_on_inputs, packing, shuffle;
    uint64_t seed;
    /* every kept sample: tokens [off[i], off[i] + len[i]) of ids/mask */
    int32_t *ids;
    uint8_t *mask;
    int64_t ntok, captok;
    int64_t *off;
    int32_t *len;
    int64_t n, capn;
    /* train = samples [0, ntrain), eval = [ntrain, n) */
    int64_t ntrain;
    int64_t *order;              /* sample at each cursor this epoch */
    int64_t order_epoch;
    int64_t epoch, cursor;
    int64_t eval_cursor;
    int32_t pad_id;
    /* load report */
    int64_t skipped, dropped;
    char first_bad[512];
};

static void chat_destroy(void *self)
{
    struct chat *d = self;
    if (!d)
        return;
    lathe_tokenizer_free(d->tk);
    free(d->path);
    free(d->eval_path);
    free(d->default_system);
    free(d->ids);
    free(d->mask);
    free(d->off);
    free(d->len);
    free(d->order);
    free(d);
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        lathe_error(LATHE_EIO, "jsonl-chat: cannot open '%s': %s; check [data] path (relative paths "
                    "start at the INI file's directory)", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t cap = 0, n = 0, got;
    do {
        if (cap - n < 65536) {
            cap = cap ? cap * 2 : 1 << 20;
            char *nb = realloc(buf, cap + 1);
            if (!nb) {
                free(buf);
                fclose(f);
                lathe_error(LATHE_ENOMEM, "jsonl-chat: out of memory reading '%s'", path);
                return NULL;
            }
            buf = nb;
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
    } while (got > 0);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        lathe_error(LATHE_EIO, "jsonl-chat: error reading '%s'", path);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static int add_sample(struct chat *d, const int32_t *ids, const uint8_t *mask, int64_t n)
{
    if (d->n == d->capn) {
        int64_t nc = d->capn ? d->capn * 2 : 256;
        int64_t *no = realloc(d->off, (size_t)nc * sizeof *no);
        if (no)
            d->off = no;
        int32_t *nl = no ? realloc(d->len, (size_t)nc * sizeof *nl) : NULL;
        if (!nl)
            return lathe_error(LATHE_ENOMEM, "jsonl-chat: out of memory for %lld samples", (long long)nc);
        d->len = nl;
        d->capn = nc;
    }
    if (d->ntok + n > d->captok) {
        int64_t nc = d->captok ? d->captok : 65536;
        while (nc < d->ntok + n)
            nc *= 2;
        int32_t *ni = realloc(d->ids, (size_t)nc * sizeof *ni);
        if (ni)
            d->ids = ni;
        uint8_t *nm = ni ? realloc(d->mask, (size_t)nc) : NULL;
        if (!nm)
            return lathe_error(LATHE_ENOMEM, "jsonl-chat: out of memory for %lld tokens", (long long)nc);
        d->mask = nm;
        d->captok = nc;
    }
    memcpy(d->ids + d->ntok, ids, (size_t)n * sizeof *ids);
    memcpy(d->mask + d->ntok, mask, (size_t)n);
    d->off[d->n] = d->ntok;
    d->len[d->n] = (int32_t)n;
    d->ntok += n;
    d->n++;
    return LATHE_OK;
}

/* One line: parse, render, tokenize, truncate, keep. A bad line is an
 * error "FILE:LINE: what". */
static int load_line(struct chat *d, const char *path, int64_t lineno, const char *s, size_t len)
{
    struct lathe_chat_msg *msgs = NULL;
    size_t nm = 0;
    int rc = lathe_chat_parse(s, len, 1, &msgs, &nm);
    if (rc)
        return lathe_error_prefix(rc, "%s:%lld", path, (long long)lineno);
    const struct lathe_chat_msg *use = msgs;
    struct lathe_chat_msg *with_sys = NULL;
    if (d->default_system && strcmp(msgs[0].role, "system") != 0) {
        /* the model's own default system turn, as its template inserts it */
        with_sys = malloc((nm + 1) * sizeof *with_sys);
        if (!with_sys) {
            free(msgs);
            return lathe_error(LATHE_ENOMEM, "jsonl-chat: out of memory");
        }
        with_sys[0] = (struct lathe_chat_msg){"system", d->default_system};
        memcpy(with_sys + 1, msgs, nm * sizeof *msgs);
        use = with_sys;
        nm++;
    }
    int32_t *ids = NULL;
    uint8_t *mask = NULL;
    size_t n = 0;
    rc = lathe_chat_encode(d->tk, d->format, use, nm, 0, &ids, &mask, &n);
    free(with_sys);
    free(msgs);
    if (rc)
        return lathe_error_prefix(rc, "%s:%lld", path, (long long)lineno);
    if ((int64_t)n > d->L)
        n = (size_t)d->L;
    if (d->train_on_inputs)
        memset(mask, 1, n);
    /* a label exists for token t >= 1 only */
    int learn = 0;
    for (size_t t = 1; t < n && !learn; t++)
        learn = mask[t];
    if (learn)
        rc = add_sample(d, ids, mask, (int64_t)n);
    else
        d->dropped++;
    free(ids);
    free(mask);
    return rc;
}

static int load_file(struct chat *d, const char *path, int skip_bad)
{
    size_t len;
    char *buf = read_all(path, &len);
    if (!buf)
        return lathe_errmsg()[0] ? LATHE_EIO : LATHE_ENOMEM;
    int rc = LATHE_OK;
    int64_t lineno = 0;
    for (size_t i = 0; i < len && !rc;) {
        size_t e = i;
        while (e < len && buf[e] != '\n')
            e++;
        lineno++;
        size_t le = e;
        if (le > i && buf[le - 1] == '\r')
            le--;
        int blank = 1;
        for (size_t k = i; k < le && blank; k++)
            blank = buf[k] == ' ' || buf[k] == '\t';
        if (!blank) {
            rc = load_line(d, path, lineno, buf + i, le - i);
            if (rc == LATHE_EINVAL && skip_bad) {
                if (d->skipped++ == 0)
                    snprintf(d->first_bad, sizeof d->first_bad, "%s", lathe_errmsg());
                lathe_error_clear();
                rc = LATHE_OK;
            }
        }
        i = e + 1;
    }
    free(buf);
    return rc;
}

static int chat_create(lathe_section *cfg, const struct lathe_env *env, void **self)
{
    *self = NULL;
    static const char *const templates[] = {"auto", "chatml", "deepseek-r1", "llama3", NULL};
    static const char *const bad_modes[] = {"error", "skip", NULL};
    const char *path, *tok = NULL, *eval_path;
    int tpl, bad_mode, train_on_inputs, packing, shuffle;
    int64_t L;
    double eval_fraction;
    int rc;
    if ((rc = lathe_cfg_path(cfg, "path", NULL, &path)) ||
        (rc = lathe_cfg_choice(cfg, "template", "auto", templates, &tpl)) ||
        (rc = lathe_cfg_int(cfg, "max_length", 1024, 2, INT32_MAX, &L)) ||
        (rc = lathe_cfg_bool(cfg, "train_on_inputs", 0, &train_on_inputs)) ||
        (rc = lathe_cfg_bool(cfg, "packing", 0, &packing)) ||
        (rc = lathe_cfg_bool(cfg, "shuffle", 1, &shuffle)) ||
        (rc = lathe_cfg_float(cfg, "eval_fraction", 0.05, 0.0, 0.5, &eval_fraction)) ||
        (rc = lathe_cfg_path(cfg, "eval_path", "", &eval_path)) ||
        (rc = lathe_cfg_choice(cfg, "on_bad_line", "error", bad_modes, &bad_mode)))
        return rc;
    if (!path[0])
        return lathe_cfg_error(cfg, "path", "path is empty; name the JSONL file of conversations");
    if (eval_path[0] && lathe_section_has(cfg, "eval_fraction"))
        return lathe_cfg_error(cfg, "eval_path", "set eval_path or eval_fraction, not both");
    if (lathe_section_has(cfg, "tokenizer")) {
        if ((rc = lathe_cfg_path(cfg, "tokenizer", NULL, &tok)))
            return rc;
    } else if (env->config && lathe_config_has_section(env->config, "model")) {
        /* the model's own directory holds its tokenizer */
        if ((rc = lathe_cfg_path(lathe_config_section(env->config, "model"), "pretrained", "", &tok)))
            return rc;
    }
    if (!tok || !tok[0])
        return lathe_cfg_error(cfg, "tokenizer", "no tokenizer: set tokenizer = DIR or FILE "
                               "(tokenizer.json), or [model] pretrained = DIR");

    struct chat *d = calloc(1, sizeof *d);
    char *tkpath = NULL;
    if (!d || !(d->path = strdup(path)) || !(tkpath = strdup(tok)) ||
        (eval_path[0] && !(d->eval_path = strdup(eval_path)))) {
        free(tkpath);
        chat_destroy(d);
        return lathe_error(LATHE_ENOMEM, "jsonl-chat: out of memory");
    }
    d->L = L;
    d->train_on_inputs = train_on_inputs;
    d->packing = packing;
    d->shuffle = shuffle;
    d->seed = env->seed;
    d->order_epoch = -1;

    if ((rc = lathe_tokenizer_load(&d->tk, tkpath))) {
        rc = lathe_error_prefix(rc, "jsonl-chat: [data] tokenizer");
        goto fail;
    }
    /* the directory that holds tokenizer_config.json */
    struct stat sb;
    if (stat(tkpath, &sb) == 0 && !S_ISDIR(sb.st_mode)) {
        char *slash = strrchr(tkpath, '/');
        if (slash)
            *slash = '\0';
        else
            strcpy(tkpath, ".");
    }
    if (tpl == 0)
        rc = lathe_chat_format_detect(tkpath, d->tk, &d->format);
    else
        d->format = tpl - 1;
    if (rc) {
        rc = lathe_error_prefix(rc, "jsonl-chat: template = auto");
        goto fail;
    }
    if ((rc = lathe_chat_default_system(tkpath, d->format, &d->default_system)))
        goto fail;
    int32_t stop = lathe_chat_stop_token(d->tk, d->format);
    d->pad_id = stop >= 0 ? stop : 0;

    if ((rc = load_file(d, d->path, bad_mode == 1)))
        goto fail;
    d->ntrain = d->n;
    if (d->eval_path) {
        if ((rc = load_file(d, d->eval_path, bad_mode == 1)))
            goto fail;
    } else if (eval_fraction > 0.0) {
        int64_t ne = (int64_t)((double)d->n * eval_fraction);
        if (ne == 0 && d->n >= 2)
            ne = 1;
        d->ntrain = d->n - ne;
    }
    if (d->skipped) {
        printf("jsonl-chat: skipped %lld bad line%s (on_bad_line = skip); the first: %s\n",
               (long long)d->skipped, d->skipped == 1 ? "" : "s", d->first_bad);
    }
    if (d->dropped)
        printf("jsonl-chat: dropped %lld conversation%s with no assistant token within max_length %lld\n",
               (long long)d->dropped, d->dropped == 1 ? "" : "s", (long long)L);
    fflush(stdout);
    if (d->ntrain < 1) {
        rc = lathe_error(LATHE_EINVAL, "jsonl-chat: '%s' leaves no training conversation (%lld kept, "
                         "%lld for eval, %lld bad lines skipped, %lld with nothing to learn); add data "
                         "or lower eval_fraction", d->path, (long long)d->n, (long long)(d->n - d->ntrain),
                         (long long)d->skipped, (long long)d->dropped);
        goto fail;
    }
    if (!(d->order = malloc((size_t)d->ntrain * sizeof *d->order))) {
        rc = lathe_error(LATHE_ENOMEM, "jsonl-chat: out of memory");
        goto fail;
    }
    free(tkpath);
    *self = d;
    return LATHE_OK;
fail:
    free(tkpath);
    chat_destroy(d);
    return rc;
}

static int chat_info(void *self, struct lathe_data_info *info)
{
    const struct chat *d = self;
    info->vocab_size = lathe_tokenizer_vocab_size(d->tk);
    info->seq_len = d->packing ? d->L : 0;
    info->train_items = d->ntrain;
    info->eval_items = d->n - d->ntrain;
    return LATHE_OK;
}

/* The visiting order of `epoch` (as plugins/text). */
static void chat_order(struct chat *d, int64_t epoch)
{
    if (d->order_epoch == epoch)
        return;
    int64_t n = d->ntrain;
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

/* The next sample of a split, or -1 at the end of the eval pass. peek:
 * do not advance. */
static int64_t next_sample(struct chat *d, int split, int peek)
{
    if (split == LATHE_SPLIT_EVAL) {
        int64_t i = d->ntrain + d->eval_cursor;
        if (i >= d->n)
            return -1;
        if (!peek)
            d->eval_cursor++;
        return i;
    }
    if (d->cursor >= d->ntrain) {
        d->epoch++;
        d->cursor = 0;
    }
    chat_order(d, d->epoch);
    int64_t i = d->order[d->cursor];
    if (!peek) {
        /* step into the next epoch eagerly, so that a state saved now names
         * the sample that comes next */
        if (++d->cursor >= d->ntrain) {
            d->epoch++;
            d->cursor = 0;
        }
    }
    return i;
}

/* Write sample s into row r at column c, as segment seg. */
static void place(const struct chat *d, int64_t s, int32_t seg, int32_t *ids, int32_t *lab, int32_t *pos,
                  int32_t *segs, int64_t c)
{
    const int32_t *si = d->ids + d->off[s];
    const uint8_t *sm = d->mask + d->off[s];
    int64_t n = d->len[s];
    for (int64_t t = 0; t < n; t++) {
        ids[c + t] = si[t];
        lab[c + t] = (t + 1 < n && sm[t + 1]) ? si[t + 1] : LATHE_IGNORE_INDEX;
        pos[c + t] = (int32_t)t;
        segs[c + t] = seg;
    }
}

static int chat_next(void *self, int split, int64_t B, struct lathe_batch *batch)
{
    struct chat *d = self;
    if (B < 1)
        return lathe_error(LATHE_EINVAL, "jsonl-chat: batch size %lld must be >= 1", (long long)B);
    if (split != LATHE_SPLIT_TRAIN && split != LATHE_SPLIT_EVAL)
        return lathe_error(LATHE_EINVAL, "jsonl-chat: unknown split %d", split);
    if (split == LATHE_SPLIT_EVAL && d->ntrain + d->eval_cursor >= d->n) {
        d->eval_cursor = 0;
        return LATHE_EOF;
    }
    /* choose the samples of each row first: rows[r] lists them */
    int64_t *pick = malloc((size_t)B * (size_t)(d->packing ? d->L : 1) * sizeof *pick);
    int64_t *row_start = malloc((size_t)(B + 1) * sizeof *row_start);
    if (!pick || !row_start) {
        free(pick);
        free(row_start);
        return lathe_error(LATHE_ENOMEM, "jsonl-chat: out of memory for a batch of %lld rows", (long long)B);
    }
    int64_t rows = 0, np = 0, T = 0;
    for (; rows < B; rows++) {
        row_start[rows] = np;
        int64_t used = 0;
        for (;;) {
            int64_t s = next_sample(d, split, 1);
            if (s < 0 || (used > 0 && (!d->packing || used + d->len[s] > d->L)))
                break;
            next_sample(d, split, 0);
            pick[np++] = s;
            used += d->len[s];
            if (!d->packing)
                break;
        }
        if (used == 0)
            break;
        if (used > T)
            T = used;
    }
    row_start[rows] = np;
    if (d->packing)
        T = d->L;

    size_t cells = (size_t)(rows * T);
    int32_t *host = malloc(4 * cells * sizeof *host);
    if (!host) {
        free(pick);
        free(row_start);
        return lathe_error(LATHE_ENOMEM, "jsonl-chat: out of memory for a [%lld, %lld] batch", (long long)rows,
                           (long long)T);
    }
    int32_t *hid = host, *hlab = host + cells, *hpos = host + 2 * cells, *hseg = host + 3 * cells;
    for (size_t i = 0; i < cells; i++) {
        hid[i] = d->pad_id;
        hlab[i] = LATHE_IGNORE_INDEX;
        hpos[i] = 0;
        hseg[i] = -1;
    }
    int64_t ntokens = 0;
    for (int64_t r = 0; r < rows; r++) {
        int64_t c = r * T;
        for (int64_t k = row_start[r]; k < row_start[r + 1]; k++) {
            int64_t s = pick[k];
            place(d, s, (int32_t)(k - row_start[r]), hid, hlab, hpos, hseg, c);
            c += d->len[s];
        }
    }
    for (size_t i = 0; i < cells; i++)
        ntokens += hlab[i] != LATHE_IGNORE_INDEX;
    free(pick);
    free(row_start);

    lathe_tensor *t[4];
    const struct lathe_backend_ops *be = lathe_backend();
    int rc = LATHE_OK;
    for (int k = 0; k < 4; k++) {
        t[k] = lathe_tensor_new2(LATHE_I32, rows, T);
        if (!t[k])
            rc = LATHE_ENOMEM;
        else if (!rc && be->copy(t[k]->data, host + (size_t)k * cells, cells * sizeof *host, 1))
            rc = lathe_error(LATHE_ERR, "jsonl-chat: copying a batch to the device failed");
    }
    free(host);
    if (rc)
        return rc == LATHE_ENOMEM ? lathe_error_prefix(rc, "jsonl-chat: batch") : rc;
    batch->B = rows;
    batch->T = T;
    batch->input_ids = t[0];
    batch->labels = t[1];
    batch->positions = t[2];
    batch->segments = t[3];
    batch->targets = NULL;
    batch->ntokens = ntokens;
    return LATHE_OK;
}

static int chat_state_save(void *self, lathe_state *st)
{
    struct chat *d = self;
    int rc;
    if ((rc = lathe_state_put_i64(st, "epoch", d->epoch)) ||
        (rc = lathe_state_put_i64(st, "cursor", d->cursor)) ||
        (rc = lathe_state_put_i64(st, "train_items", d->ntrain)))
        return lathe_error_prefix(rc, "jsonl-chat: saving state");
    return LATHE_OK;
}

static int chat_state_load(void *self, lathe_state *st)
{
    struct chat *d = self;
    int64_t epoch, cursor, items;
    int rc;
    if ((rc = lathe_state_get_i64(st, "epoch", &epoch)) ||
        (rc = lathe_state_get_i64(st, "cursor", &cursor)) ||
        (rc = lathe_state_get_i64(st, "train_items", &items)))
        return lathe_error_prefix(rc, "jsonl-chat: loading state");
    if (items != d->ntrain)
        return lathe_error(LATHE_EINVAL, "jsonl-chat: the checkpoint was made with %lld training "
                           "conversations but '%s' now gives %lld; resume with the same file and "
                           "[data] settings", (long long)items, d->path, (long long)d->ntrain);
    if (epoch < 0 || cursor < 0 || cursor > d->ntrain)
        return lathe_error(LATHE_EINVAL, "jsonl-chat: checkpoint position epoch %lld cursor %lld is out "
                           "of range (%lld conversations)", (long long)epoch, (long long)cursor,
                           (long long)d->ntrain);
    d->epoch = epoch;
    d->cursor = cursor;
    return LATHE_OK;
}

static const struct lathe_data_ops chat_ops = {
    .size = sizeof(struct lathe_data_ops),
    .create = chat_create,
    .destroy = chat_destroy,
    .info = chat_info,
    .next = chat_next,
    .state_save = chat_state_save,
    .state_load = chat_state_load,
};

static const struct lathe_component chat_components[] = {
    {.kind = LATHE_KIND_DATA, .name = "jsonl-chat", .ops = &chat_ops},
    {0},
};

LATHE_PLUGIN_DEFINE(jsonl_chat, .version = "0.1.0",
                    .description = "chat conversations (JSONL) in the model's chat format, masked to "
                                   "the assistant turns, with optional packing",
                    .components = chat_components)
