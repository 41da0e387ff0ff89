/* core/cli/cmd_merge.c — `lathe merge --model DIR --adapter DIR --output DIR`:
 * fold a PEFT LoRA adapter into a Hugging Face model directory.
 *
 * W' = W + scaling · B·A, transposed for fan_in_fan_out layers (GPT-2's
 * Conv1D stores [in, out]); scaling = lora_alpha / r, or / sqrt(r) with
 * use_rslora; the product is done in f32 and rounded once to the stored
 * dtype, and a non-finite result is refused, as PEFT's merge with
 * safe_merge (src/peft/tuners/lora/layer.py, formats.md §2.4). Tensors of
 * modules_to_save replace the base's.
 *
 * Memory: the output keeps the base's files, names, dtypes and sharding,
 * and a merged tensor has the same size as the original, so each output
 * shard is the input shard copied through a small buffer (read/write, not a
 * mapping, so the page cache never counts as this process's memory) with
 * the merged tensors written over their own bytes. What is held at once is
 * the adapter in f32 plus the one tensor being merged, whatever the model's
 * size; never a whole shard, let alone the whole base. The closing line
 * reports that peak (the "buffers" figure). */
#include "cli.h"

#include "io/safetensors.h"
#include "util/strutil.h"

#include <lathe/backend.h>
#include <lathe/status.h>
#include <lathe/tensor.h>

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PEFT_PREFIX "base_model.model."
#define COPY_CHUNK ((size_t)1 << 20)

/* One adapter entry: a LoRA pair (A, B) or a whole tensor to replace. */
struct merge_item {
    char *module;        /* path without PEFT_PREFIX and the .lora_X.weight suffix */
    float *A, *B;        /* [r, in], [out, r]; or A alone: a full tensor */
    int64_t r, in, out;
    int full;            /* modules_to_save tensor (A holds it, shape below) */
    int ndim;
    int64_t shape[LATHE_MAX_DIMS];
    const char *target;  /* the base tensor it changes (owned by the index) */
    int done;
};

struct merge {
    const char *model, *adapter, *output;
    float scaling;
    int fan_in_fan_out;
    struct merge_item *items;
    size_t nitems;
    /* memory accounting: bytes of our own buffers, now and at the peak */
    size_t cur, peak;
    size_t largest_shard;
    size_t merged;
};

static void *acct_alloc(struct merge *m, size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p) {
        m->cur += n;
        if (m->cur > m->peak)
            m->peak = m->cur;
    }
    return p;
}

static void acct_free(struct merge *m, void *p, size_t n)
{
    if (p) {
        free(p);
        m->cur -= n;
    }
}

static int usage(FILE *f)
{
    fprintf(f, "usage: lathe merge --model DIR --adapter DIR --output DIR\n"
               "  Folds a LoRA adapter (adapter_config.json + adapter_model.safetensors, as PEFT\n"
               "  writes them) into the model and writes it to OUTPUT in the same layout, shard\n"
               "  by shard; memory stays about one tensor plus the adapter whatever the size.\n");
    return 2;
}

static char *path2(const char *dir, const char *file)
{
    char *p = lathe_str_printf("%s/%s", dir, file);
    if (!p)
        lathe_error(LATHE_ENOMEM, "out of memory");
    return p;
}

/* ---- the adapter --------------------------------------------------------- */

static int ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && strcmp(s + n - k, suf) == 0;
}

static struct merge_item *item_for(struct merge *m, const char *module, int full)
{
    for (size_t i = 0; i < m->nitems; i++)
        if (m->items[i].full == full && strcmp(m->items[i].module, module) == 0)
            return &m->items[i];
    struct merge_item *it = &m->items[m->nitems++];
    memset(it, 0, sizeof *it);
    it->module = lathe_str_dup(module);
    it->full = full;
    return it->module ? it : NULL;
}

static int read_adapter_config(struct merge *m, double *alpha, int64_t *r, int *rslora)
{
    char *p = path2(m->adapter, "adapter_config.json");
    if (!p)
        return LATHE_ENOMEM;
    json_error_t je;
    json_t *root = json_load_file(p, 0, &je);
    int rc = LATHE_OK;
    if (!root) {
        rc = lathe_error(LATHE_EIO, "%s:%d: %s (is %s a PEFT adapter directory?)", p, je.line, je.text, m->adapter);
        free(p);
        return rc;
    }
    const char *pt = json_string_value(json_object_get(root, "peft_type"));
    json_t *jr = json_object_get(root, "r"), *ja = json_object_get(root, "lora_alpha");
    const char *bias = json_string_value(json_object_get(root, "bias"));
    json_t *rp = json_object_get(root, "rank_pattern"), *ap = json_object_get(root, "alpha_pattern");
    if (!pt || strcmp(pt, "LORA") != 0)
        rc = lathe_error(LATHE_EINVAL, "%s: peft_type is %s; lathe merge folds LORA adapters", p, pt ? pt : "missing");
    else if (!json_is_integer(jr) || json_integer_value(jr) < 1)
        rc = lathe_error(LATHE_EINVAL, "%s: \"r\" must be a positive integer", p);
    else if (ja && !json_is_number(ja))
        rc = lathe_error(LATHE_EINVAL, "%s: \"lora_alpha\" must be a number", p);
    else if (bias && strcmp(bias, "none") != 0)
        rc = lathe_error(LATHE_EUNSUPPORTED, "%s: bias = \"%s\" is not supported (only \"none\")", p, bias);
    else if (json_is_true(json_object_get(root, "use_dora")))
        rc = lathe_error(LATHE_EUNSUPPORTED, "%s: DoRA adapters (use_dora) are not supported", p);
    else if ((json_is_object(rp) && json_object_size(rp)) || (json_is_object(ap) && json_object_size(ap)))
        rc = lathe_error(LATHE_EUNSUPPORTED, "%s: per-module rank_pattern / alpha_pattern are not supported", p);
    if (rc == LATHE_OK) {
        *r = json_integer_value(jr);
        *alpha = ja ? json_number_value(ja) : 8.0; /* PEFT's default */
        *rslora = json_is_true(json_object_get(root, "use_rslora"));
        m->fan_in_fan_out = json_is_true(json_object_get(root, "fan_in_fan_out"));
    }
    json_decref(root);
    free(p);
    return rc;
}

static int read_adapter(struct merge *m)
{
    double alpha = 8.0;
    int64_t r = 1;
    int rslora = 0;
    int rc = read_adapter_config(m, &alpha, &r, &rslora);
    if (rc)
        return rc;
    m->scaling = (float)(rslora ? alpha / sqrt((double)r) : alpha / (double)r);
    char *p = path2(m->adapter, "adapter_model.safetensors");
    if (!p)
        return LATHE_ENOMEM;
    struct lathe_st_file *f = NULL;
    if ((rc = lathe_st_open(&f, p))) {
        free(p);
        return rc;
    }
    size_t n = lathe_st_count(f);
    m->items = calloc(n ? n : 1, sizeof *m->items);
    if (!m->items)
        rc = lathe_error(LATHE_ENOMEM, "out of memory");
    const size_t pl = strlen(PEFT_PREFIX);
    for (size_t i = 0; i < n && rc == LATHE_OK; i++) {
        struct lathe_st_info info;
        if ((rc = lathe_st_get(f, i, &info)))
            break;
        if (strncmp(info.name, PEFT_PREFIX, pl) != 0) {
            rc = lathe_error(LATHE_EINVAL, "%s: tensor '%s' does not start with '" PEFT_PREFIX "' (not a PEFT "
                             "adapter for a causal LM?)", p, info.name);
            break;
        }
        if (info.dtype != LATHE_F32 && info.dtype != LATHE_BF16 && info.dtype != LATHE_F16) {
            rc = lathe_error(LATHE_EUNSUPPORTED, "%s: tensor '%s' is %s; adapters hold floats", p, info.name,
                             lathe_dtype_name(info.dtype));
            break;
        }
        char mod[1024];
        int is_a = ends_with(info.name, ".lora_A.weight"), is_b = ends_with(info.name, ".lora_B.weight");
        size_t len = strlen(info.name) - pl - (is_a || is_b ? strlen(".lora_A.weight") : 0);
        if (len >= sizeof mod) {
            rc = lathe_error(LATHE_EINVAL, "%s: tensor name '%s' is too long", p, info.name);
            break;
        }
        memcpy(mod, info.name + pl, len);
        mod[len] = '\0';
        if (!is_a && !is_b && (strstr(mod, "lora_") || strstr(mod, "magnitude"))) {
            rc = lathe_error(LATHE_EUNSUPPORTED, "%s: tensor '%s' is a LoRA variant lathe merge does not know "
                             "(DoRA magnitudes, LoRA biases)", p, info.name);
            break;
        }
        struct merge_item *it = item_for(m, mod, !is_a && !is_b);
        if (!it) {
            rc = lathe_error(LATHE_ENOMEM, "out of memory");
            break;
        }
        size_t numel = lathe_dtype_size(info.dtype) ? info.nbytes / lathe_dtype_size(info.dtype) : 0;
        float *buf = acct_alloc(m, numel * sizeof(float));
        if (!buf) {
            rc = lathe_error(LATHE_ENOMEM, "out of memory reading '%s'", info.name);
            break;
        }
        lathe_convert_to_f32(buf, info.data, info.dtype, numel);
        if ((is_a || is_b) && info.ndim != 2) {
            acct_free(m, buf, numel * sizeof(float));
            rc = lathe_error(LATHE_EINVAL, "%s: '%s' must be 2-D", p, info.name);
            break;
        }
        if (is_a) {
            it->A = buf;
            it->r = info.shape[0];
            it->in = info.shape[1];
        } else if (is_b) {
            it->B = buf;
            it->out = info.shape[0];
            if (it->r && info.shape[1] != it->r)
                rc = lathe_error(LATHE_EINVAL, "%s: '%s' has rank %lld but its lora_A has %lld", p, info.name,
                                 (long long)info.shape[1], (long long)it->r);
            it->r = info.shape[1];
        } else {
            it->A = buf;
            it->ndim = info.ndim;
            memcpy(it->shape, info.shape, sizeof it->shape);
        }
    }
    for (size_t i = 0; i < m->nitems && rc == LATHE_OK; i++)
        if (!m->items[i].full && (!m->items[i].A || !m->items[i].B))
            rc = lathe_error(LATHE_EINVAL, "%s: module '%s' has lora_%s but no lora_%s", p, m->items[i].module,
                             m->items[i].A ? "A" : "B", m->items[i].A ? "B" : "A");
    if (rc == LATHE_OK && m->nitems == 0)
        rc = lathe_error(LATHE_EINVAL, "%s holds no tensor", p);
    lathe_st_close(f);
    free(p);
    return rc;
}

/* ---- the base's files ------------------------------------------------------ */

struct base_files {
    json_t *index;          /* model.safetensors.index.json, or NULL */
    char **files;           /* shard file names, in order */
    size_t nfiles;
    char **names;           /* every tensor name */
    char **file_of;         /* its file (points into files) */
    size_t nnames;
};

static void base_free(struct base_files *b)
{
    for (size_t i = 0; i < b->nfiles; i++)
        free(b->files[i]);
    for (size_t i = 0; i < b->nnames; i++)
        free(b->names[i]);
    free(b->files);
    free(b->names);
    free(b->file_of);
    json_decref(b->index);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int base_list(const char *dir, struct base_files *b)
{
    memset(b, 0, sizeof *b);
    char *ip = path2(dir, "model.safetensors.index.json"), *sp = path2(dir, "model.safetensors");
    int rc = ip && sp ? LATHE_OK : LATHE_ENOMEM;
    struct stat st;
    if (rc == LATHE_OK && stat(ip, &st) == 0) {
        json_error_t je;
        b->index = json_load_file(ip, 0, &je);
        json_t *wm = b->index ? json_object_get(b->index, "weight_map") : NULL;
        if (!b->index)
            rc = lathe_error(LATHE_EIO, "%s:%d: %s", ip, je.line, je.text);
        else if (!json_is_object(wm))
            rc = lathe_error(LATHE_EINVAL, "%s: no \"weight_map\" object", ip);
        size_t n = rc ? 0 : json_object_size(wm);
        b->names = calloc(n + 1, sizeof *b->names);
        b->file_of = calloc(n + 1, sizeof *b->file_of);
        b->files = calloc(n + 1, sizeof *b->files);
        if (rc == LATHE_OK && (!b->names || !b->file_of || !b->files))
            rc = lathe_error(LATHE_ENOMEM, "out of memory");
        const char *key;
        json_t *v;
        json_object_foreach(wm, key, v) {
            if (rc)
                break;
            const char *fn = json_string_value(v);
            if (!fn || strchr(fn, '/') || strcmp(fn, "..") == 0) {
                rc = lathe_error(LATHE_EINVAL, "%s: weight_map[\"%s\"] must be a file name in the directory", ip, key);
                break;
            }
            size_t k = 0;
            while (k < b->nfiles && strcmp(b->files[k], fn) != 0)
                k++;
            if (k == b->nfiles && !(b->files[b->nfiles++] = lathe_str_dup(fn)))
                rc = lathe_error(LATHE_ENOMEM, "out of memory");
            b->names[b->nnames] = lathe_str_dup(key);
            b->file_of[b->nnames++] = b->files[k];
            if (!b->names[b->nnames - 1])
                rc = lathe_error(LATHE_ENOMEM, "out of memory");
        }
        if (rc == LATHE_OK) {
            /* shard order: the names sort as the shards count (-0000i-of-) */
            char **sorted = malloc((b->nfiles + 1) * sizeof *sorted);
            if (!sorted) {
                rc = lathe_error(LATHE_ENOMEM, "out of memory");
            } else {
                memcpy(sorted, b->files, b->nfiles * sizeof *sorted);
                qsort(sorted, b->nfiles, sizeof *sorted, cmp_str);
                memcpy(b->files, sorted, b->nfiles * sizeof *sorted);
                free(sorted);
            }
        }
    } else if (rc == LATHE_OK && stat(sp, &st) == 0) {
        struct lathe_st_file *f = NULL;
        if (!(rc = lathe_st_open(&f, sp))) {
            size_t n = lathe_st_count(f);
            b->files = calloc(1, sizeof *b->files);
            b->names = calloc(n + 1, sizeof *b->names);
            b->file_of = calloc(n + 1, sizeof *b->file_of);
            if (!b->files || !b->names || !b->file_of || !(b->files[0] = lathe_str_dup("model.safetensors")))
                rc = lathe_error(LATHE_ENOMEM, "out of memory");
            else
                b->nfiles = 1;
            for (size_t i = 0; i < n && rc == LATHE_OK; i++) {
                struct lathe_st_info info;
                lathe_st_get(f, i, &info); /* name is filled even for dtypes we pass through */
                if (!(b->names[b->nnames] = lathe_str_dup(info.name)))
                    rc = lathe_error(LATHE_ENOMEM, "out of memory");
                b->file_of[b->nnames++] = b->files[0];
            }
            lathe_st_close(f);
        }
    } else if (rc == LATHE_OK) {
        rc = lathe_error(LATHE_EIO, "%s has neither model.safetensors nor model.safetensors.index.json; is it a "
                         "Hugging Face model directory?", dir);
    }
    free(ip);
    free(sp);
    return rc;
}

static const char *base_find(const struct base_files *b, const char *name)
{
    for (size_t i = 0; i < b->nnames; i++)
        if (strcmp(b->names[i], name) == 0)
            return b->names[i];
    return NULL;
}

/* The base tensor an item changes. GPT-2 adapters name modules under
 * "transformer." while the published GPT-2 files have no such prefix
 * (formats.md §3.4): accept both. */
static int resolve_targets(struct merge *m, const struct base_files *b)
{
    for (size_t i = 0; i < m->nitems; i++) {
        struct merge_item *it = &m->items[i];
        char want[1100];
        snprintf(want, sizeof want, it->full ? "%s" : "%s.weight", it->module);
        const char *t = base_find(b, want);
        if (!t && strncmp(want, "transformer.", 12) == 0)
            t = base_find(b, want + 12);
        if (!t)
            return lathe_error(LATHE_EINVAL, "the adapter changes '%s' but the model in %s has no tensor '%s'%s "
                               "(is the adapter for another model?)", it->module, m->model, want,
                               strstr(want, "lm_head") ? " (a model with tied embeddings has no lm_head of its own)"
                                                       : "");
        for (size_t j = 0; j < i; j++)
            if (m->items[j].target == t)
                return lathe_error(LATHE_EINVAL, "the adapter changes '%s' twice (a LoRA pair and a saved module)", t);
        it->target = t;
    }
    return LATHE_OK;
}

/* ---- one shard ------------------------------------------------------------ */

static int copy_bytes(struct merge *m, int in, int out, size_t n, const char *src, const char *dst, char *buf)
{
    while (n > 0) {
        size_t k = n < COPY_CHUNK ? n : COPY_CHUNK;
        ssize_t got = read(in, buf, k);
        if (got <= 0)
            return lathe_error(LATHE_EIO, "%s: read failed: %s", src, got < 0 ? strerror(errno) : "file is short");
        for (ssize_t off = 0; off < got;) {
            ssize_t put = write(out, buf + off, (size_t)(got - off));
            if (put < 0)
                return lathe_error(LATHE_EIO, "%s: write failed: %s", dst, strerror(errno));
            off += put;
        }
        n -= (size_t)got;
    }
    (void)m;
    return LATHE_OK;
}

/* W (stored as the file has it) += scaling · B·A, in place in `bytes`. */
static int merge_tensor(struct merge *m, struct merge_item *it, const struct lathe_st_info *info, void *bytes,
                        const char *src)
{
    const int64_t numel = (int64_t)(info->nbytes / lathe_dtype_size(info->dtype));
    if (info->dtype != LATHE_F32 && info->dtype != LATHE_BF16 && info->dtype != LATHE_F16)
        return lathe_error(LATHE_EUNSUPPORTED, "%s: '%s' is %s; merging needs F32, BF16 or F16 weights", src,
                           info->name, lathe_dtype_name(info->dtype));
    if (it->full) {
        int same = info->ndim == it->ndim;
        for (int d = 0; same && d < it->ndim; d++)
            same = info->shape[d] == it->shape[d];
        if (!same)
            return lathe_error(LATHE_EINVAL, "the adapter's saved '%s' does not have the shape of the model's '%s' "
                               "in %s", it->module, info->name, src);
        lathe_convert_from_f32(bytes, info->dtype, it->A, (size_t)numel);
        return LATHE_OK;
    }
    if (info->ndim != 2)
        return lathe_error(LATHE_EINVAL, "%s: '%s' is not 2-D; LoRA merges into linear weights", src, info->name);
    /* orientation: [out, in], or [in, out] for fan_in_fan_out (Conv1D).
     * PEFT turns fan_in_fan_out off for a plain Linear such as GPT-2's
     * lm_head; a shape that fits only one way settles it. */
    int fits_plain = info->shape[0] == it->out && info->shape[1] == it->in;
    int fits_fan = info->shape[0] == it->in && info->shape[1] == it->out;
    int fan = m->fan_in_fan_out && !ends_with(it->module, "lm_head");
    if (fan && !fits_fan && fits_plain)
        fan = 0;
    else if (!fan && !fits_plain && fits_fan)
        fan = 1;
    if (!fits_plain && !fits_fan)
        return lathe_error(LATHE_EINVAL, "%s: '%s' is [%lld, %lld] but the adapter's lora_B·lora_A for '%s' is "
                           "[%lld, %lld] (is the adapter for another model?)", src, info->name,
                           (long long)info->shape[0], (long long)info->shape[1], it->module, (long long)it->out,
                           (long long)it->in);
    float *w = acct_alloc(m, (size_t)numel * sizeof *w);
    if (!w)
        return lathe_error(LATHE_ENOMEM, "out of memory merging '%s'", info->name);
    lathe_convert_to_f32(w, bytes, info->dtype, (size_t)numel);
    const struct lathe_backend_ops *be = lathe_backend();
    if (!fan) /* W[out, in] += s · B[out, r] · A[r, in] */
        be->gemm(0, 0, it->out, it->in, it->r, m->scaling, it->B, it->A, 1.0f, w, 1, 0, 0, 0);
    else /* W[in, out] += s · A^T · B^T */
        be->gemm(1, 1, it->in, it->out, it->r, m->scaling, it->A, it->B, 1.0f, w, 1, 0, 0, 0);
    int rc = LATHE_OK;
    for (int64_t i = 0; i < numel; i++)
        if (!isfinite(w[i])) {
            rc = lathe_error(LATHE_EINVAL, "merging the adapter into '%s' gives a non-finite value at element "
                             "%lld; the adapter is broken (NaN/Inf weights), nothing was written for it",
                             info->name, (long long)i);
            break;
        }
    if (rc == LATHE_OK)
        lathe_convert_from_f32(bytes, info->dtype, w, (size_t)numel);
    acct_free(m, w, (size_t)numel * sizeof *w);
    return rc;
}

static int merge_shard(struct merge *m, const char *file)
{
    char *src = path2(m->model, file), *dst = path2(m->output, file);
    char *tmp = dst ? lathe_str_printf("%s.tmp", dst) : NULL;
    if (!src || !dst || !tmp) {
        free(src);
        free(dst);
        return lathe_error(LATHE_ENOMEM, "out of memory");
    }
    struct lathe_st_file *f = NULL;
    int in = -1, out = -1, rc = lathe_st_open(&f, src); /* the reader's validation, header only */
    char *buf = rc ? NULL : acct_alloc(m, COPY_CHUNK);
    if (rc == LATHE_OK && !buf)
        rc = lathe_error(LATHE_ENOMEM, "out of memory");
    if (rc == LATHE_OK && (in = open(src, O_RDONLY)) < 0)
        rc = lathe_error(LATHE_EIO, "%s: %s", src, strerror(errno));
    if (rc == LATHE_OK && (out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644)) < 0)
        rc = lathe_error(LATHE_EIO, "%s: %s", tmp, strerror(errno));
    uint8_t hl[8];
    uint64_t hlen = 0;
    if (rc == LATHE_OK && pread(in, hl, 8, 0) != 8)
        rc = lathe_error(LATHE_EIO, "%s: cannot read the header length", src);
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | hl[i];
    /* the header (and the data that no item changes) as it is */
    struct stat st;
    if (rc == LATHE_OK && fstat(in, &st) == 0 && (size_t)st.st_size > m->largest_shard)
        m->largest_shard = (size_t)st.st_size;
    if (rc == LATHE_OK)
        rc = copy_bytes(m, in, out, (size_t)st.st_size, src, tmp, buf);
    /* then each changed tensor over its own bytes: offsets are contiguous
     * from the end of the header (checked at open) */
    uint64_t off = 8 + hlen;
    for (size_t i = 0; rc == LATHE_OK && i < lathe_st_count(f); i++) {
        struct lathe_st_info info;
        int grc = lathe_st_get(f, i, &info);
        struct merge_item *it = NULL;
        for (size_t k = 0; k < m->nitems && !it; k++)
            if (strcmp(m->items[k].target, info.name) == 0)
                it = &m->items[k];
        if (it) {
            if (grc) {
                rc = grc;
                break;
            }
            void *bytes = acct_alloc(m, info.nbytes);
            if (!bytes)
                rc = lathe_error(LATHE_ENOMEM, "out of memory merging '%s'", info.name);
            else if (pread(in, bytes, info.nbytes, (off_t)off) != (ssize_t)info.nbytes)
                rc = lathe_error(LATHE_EIO, "%s: cannot read '%s'", src, info.name);
            if (rc == LATHE_OK)
                rc = merge_tensor(m, it, &info, bytes, src);
            if (rc == LATHE_OK && pwrite(out, bytes, info.nbytes, (off_t)off) != (ssize_t)info.nbytes)
                rc = lathe_error(LATHE_EIO, "%s: write failed: %s", tmp, strerror(errno));
            acct_free(m, bytes, info.nbytes);
            it->done = 1;
            m->merged++;
        }
        off += info.nbytes;
    }
    if (rc == LATHE_OK && fsync(out) != 0)
        rc = lathe_error(LATHE_EIO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (out >= 0 && close(out) != 0 && rc == LATHE_OK)
        rc = lathe_error(LATHE_EIO, "%s: close failed: %s", tmp, strerror(errno));
    if (in >= 0)
        close(in);
    if (rc == LATHE_OK && rename(tmp, dst) != 0)
        rc = lathe_error(LATHE_EIO, "cannot rename %s to %s: %s", tmp, dst, strerror(errno));
    if (rc)
        unlink(tmp);
    acct_free(m, buf, COPY_CHUNK);
    lathe_st_close(f);
    free(src);
    free(dst);
    free(tmp);
    return rc;
}

/* config.json, the index and the tokenizer's files, as they are. */
static int copy_side_files(struct merge *m, int has_index)
{
    static const char *const files[] = {"config.json", "generation_config.json", "tokenizer.json",
                                        "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                                        "merges.txt", "tokenizer.model", "added_tokens.json",
                                        "chat_template.jinja", "chat_template.json", NULL};
    char *buf = acct_alloc(m, COPY_CHUNK);
    int rc = buf ? LATHE_OK : lathe_error(LATHE_ENOMEM, "out of memory");
    for (int i = -1; rc == LATHE_OK && (i < 0 || files[i]); i++) {
        const char *name = i < 0 ? "model.safetensors.index.json" : files[i];
        if (i < 0 && !has_index)
            continue;
        char *src = path2(m->model, name), *dst = path2(m->output, name);
        struct stat st;
        int in = -1, out = -1;
        if (!src || !dst)
            rc = LATHE_ENOMEM;
        else if (stat(src, &st) == 0 && S_ISREG(st.st_mode)) {
            if ((in = open(src, O_RDONLY)) < 0)
                rc = lathe_error(LATHE_EIO, "%s: %s", src, strerror(errno));
            else if ((out = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0644)) < 0)
                rc = lathe_error(LATHE_EIO, "%s: %s", dst, strerror(errno));
            else
                rc = copy_bytes(m, in, out, (size_t)st.st_size, src, dst, buf);
            if (in >= 0)
                close(in);
            if (out >= 0 && close(out) != 0 && rc == LATHE_OK)
                rc = lathe_error(LATHE_EIO, "%s: close failed: %s", dst, strerror(errno));
        }
        free(src);
        free(dst);
    }
    acct_free(m, buf, COPY_CHUNK);
    return rc;
}

static int same_dir(const char *a, const char *b)
{
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

static int run_merge(struct merge *m)
{
    struct base_files b;
    int rc = read_adapter(m);
    if (rc)
        return rc;
    if ((rc = base_list(m->model, &b)))
        return rc;
    if ((rc = resolve_targets(m, &b)) == LATHE_OK && (rc = lathe_mkdir_p(m->output)) == LATHE_OK &&
        same_dir(m->model, m->output))
        rc = lathe_error(LATHE_EINVAL, "--output is the model directory %s; write the merged model elsewhere",
                         m->model);
    for (size_t i = 0; rc == LATHE_OK && i < b.nfiles; i++)
        rc = merge_shard(m, b.files[i]);
    for (size_t i = 0; rc == LATHE_OK && i < m->nitems; i++)
        if (!m->items[i].done)
            rc = lathe_error(LATHE_EINVAL, "'%s' is listed in the index but was not found in its shard",
                             m->items[i].target);
    if (rc == LATHE_OK)
        rc = copy_side_files(m, b.index != NULL);
    if (rc == LATHE_OK)
        printf("merged %zu tensors of %s into %s in %zu file%s (scaling %g; peak buffers %.1f MiB, largest "
               "shard %.1f MiB)\n",
               m->merged, m->adapter, m->output, b.nfiles, b.nfiles == 1 ? "" : "s", (double)m->scaling,
               (double)m->peak / (1 << 20), (double)m->largest_shard / (1 << 20));
    base_free(&b);
    return rc;
}

int lathe_cmd_merge(int argc, char **argv)
{
    struct merge m = {0};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], **slot = NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        const char *opts[] = {"--model", "--adapter", "--output"};
        const char **slots[] = {&m.model, &m.adapter, &m.output};
        const char *v = NULL;
        for (int k = 0; k < 3 && !slot; k++) {
            size_t n = strlen(opts[k]);
            if (strcmp(a, opts[k]) == 0) {
                if (i + 1 >= argc) {
                    fprintf(stderr, "lathe merge: %s needs a value\n", opts[k]);
                    return usage(stderr);
                }
                slot = slots[k];
                v = argv[++i];
            } else if (strncmp(a, opts[k], n) == 0 && a[n] == '=') {
                slot = slots[k];
                v = a + n + 1;
            }
        }
        if (!slot) {
            fprintf(stderr, "lathe merge: unexpected argument '%s'\n", a);
            return usage(stderr);
        }
        *slot = v;
    }
    if (!m.model || !m.adapter || !m.output) {
        fprintf(stderr, "lathe merge: --model, --adapter and --output are all needed\n");
        return usage(stderr);
    }
    int rc = run_merge(&m);
    for (size_t i = 0; i < m.nitems; i++) {
        free(m.items[i].module);
        free(m.items[i].A);
        free(m.items[i].B);
    }
    free(m.items);
    return rc ? lathe_cli_fail() : 0;
}
