/* core/io/weights.c — Hugging Face model directories: weights in and out
 * (sdk/include/lathe/weights.h), on top of core/io/safetensors.h.
 *
 * Layout (formats.md §1.5): model.safetensors, or shards
 * model-0000i-of-0000n.safetensors listed by model.safetensors.index.json
 * {"metadata": {"total_size": N}, "weight_map": {tensor: file}}. Readers
 * rely only on weight_map; the writer fills total_size with the sum of the
 * tensor data bytes as huggingface_hub does, splits greedily in the given
 * order and gives a tensor larger than the limit a shard of its own. */
#include <lathe/backend.h>
#include <lathe/status.h>
#include <lathe/weights.h>

#include <errno.h>
#include <fnmatch.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "util/strutil.h"

#define WT_INDEX "model.safetensors.index.json"
#define WT_SINGLE "model.safetensors"
/* Elements converted per step, so that nothing the size of a tensor is held
 * twice when reading to the device. */
#define WT_CHUNK ((size_t)1 << 16)

struct wt_tensor {
    const char *name;  /* owned by the file's mapping */
    uint32_t file;     /* index into files */
    uint32_t idx;      /* index within the file (offset order) */
    uint8_t used;
};

struct lathe_weights {
    char *where;                  /* the directory or file given to open */
    struct lathe_st_file **files;
    size_t nfiles;
    struct wt_tensor *t;          /* file then offset order */
    size_t n;
    struct wt_tensor **by_name;   /* into t, sorted by name */
};

static int is_dir(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static int is_file(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

void lathe_weights_close(lathe_weights *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->nfiles; i++)
        lathe_st_close(w->files[i]);
    free(w->files);
    free(w->t);
    free(w->by_name);
    free(w->where);
    free(w);
}

static int wt_add_file(lathe_weights *w, const char *path)
{
    struct lathe_st_file **nf = realloc(w->files, (w->nfiles + 1) * sizeof *nf);
    if (!nf)
        return lathe_error(LATHE_ENOMEM, "%s: out of memory", path);
    w->files = nf;
    int rc = lathe_st_open(&w->files[w->nfiles], path);
    if (rc)
        return rc;
    w->nfiles++;
    return LATHE_OK;
}

static int wt_cmp_name(const void *a, const void *b)
{
    return strcmp((*(struct wt_tensor *const *)a)->name, (*(struct wt_tensor *const *)b)->name);
}

/* Index every tensor of every file; a name in two files is an error (which
 * one a reader meant cannot be known). */
static int wt_index(lathe_weights *w)
{
    size_t total = 0;
    for (size_t f = 0; f < w->nfiles; f++)
        total += lathe_st_count(w->files[f]);
    w->t = calloc(total ? total : 1, sizeof *w->t);
    w->by_name = calloc(total ? total : 1, sizeof *w->by_name);
    if (!w->t || !w->by_name)
        return lathe_error(LATHE_ENOMEM, "%s: out of memory indexing %zu tensors", w->where, total);
    for (size_t f = 0; f < w->nfiles; f++) {
        size_t c = lathe_st_count(w->files[f]);
        for (size_t i = 0; i < c; i++) {
            struct lathe_st_info info;
            /* an unsupported dtype still has a name; reading it fails later */
            int rc = lathe_st_get(w->files[f], i, &info);
            if (rc && rc != LATHE_EUNSUPPORTED)
                return rc;
            lathe_error_clear();
            w->t[w->n] = (struct wt_tensor){.name = info.name, .file = (uint32_t)f, .idx = (uint32_t)i};
            w->n++;
        }
    }
    for (size_t i = 0; i < w->n; i++) /* t is complete: pointers into it stay valid */
        w->by_name[i] = &w->t[i];
    qsort(w->by_name, w->n, sizeof *w->by_name, wt_cmp_name);
    for (size_t i = 1; i < w->n; i++) {
        const struct wt_tensor *a = w->by_name[i - 1], *b = w->by_name[i];
        if (strcmp(a->name, b->name) == 0)
            return lathe_error(LATHE_EINVAL, "%s: tensor '%s' is in both %s and %s; remove one copy",
                               w->where, a->name, lathe_st_path(w->files[a->file]),
                               lathe_st_path(w->files[b->file]));
    }
    return LATHE_OK;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Open the shards named by the index, in file-name order (the shard number
 * order for the usual names), and check that each listed tensor is in the
 * file the index names. */
static int wt_open_index(lathe_weights *w, const char *dir, const char *index)
{
    json_error_t err;
    json_t *root = json_load_file(index, 0, &err);
    if (!root)
        return lathe_error(LATHE_EINVAL, "%s:%d: %s", index, err.line, err.text);
    int rc = LATHE_OK;
    const char **names = NULL;
    json_t *map = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
    if (!json_is_object(map)) {
        rc = lathe_error(LATHE_EINVAL, "%s: no \"weight_map\" object; the index must look like "
                         "{\"metadata\": {...}, \"weight_map\": {\"tensor\": \"file\"}}", index);
        goto out;
    }
    size_t nmap = json_object_size(map), nuniq = 0;
    names = calloc(nmap ? nmap : 1, sizeof *names);
    if (!names) {
        rc = lathe_error(LATHE_ENOMEM, "%s: out of memory", index);
        goto out;
    }
    const char *key;
    json_t *val;
    json_object_foreach(map, key, val) {
        const char *file = json_string_value(val);
        if (!file || !file[0] || strchr(file, '/') || strcmp(file, "..") == 0) {
            rc = lathe_error(LATHE_EINVAL, "%s: weight_map[\"%s\"] must be a file name in the same "
                             "directory", index, key);
            goto out;
        }
        names[nuniq++] = file;
    }
    qsort(names, nuniq, sizeof *names, cmp_str);
    size_t k = 0;
    for (size_t i = 0; i < nuniq; i++)
        if (k == 0 || strcmp(names[k - 1], names[i]) != 0)
            names[k++] = names[i];
    for (size_t i = 0; i < k && !rc; i++) {
        char *p = lathe_str_printf("%s/%s", dir, names[i]);
        if (!p) {
            rc = lathe_error(LATHE_ENOMEM, "%s: out of memory", index);
            break;
        }
        if (!is_file(p))
            rc = lathe_error(LATHE_EIO, "%s: shard '%s' listed in the index is missing", index, p);
        else
            rc = wt_add_file(w, p);
        free(p);
    }
    if (rc)
        goto out;
    json_object_foreach(map, key, val) {
        const char *file = json_string_value(val);
        int found = 0;
        for (size_t f = 0; f < w->nfiles && !found; f++) {
            const char *p = lathe_st_path(w->files[f]);
            const char *base = strrchr(p, '/');
            if (strcmp(base ? base + 1 : p, file) == 0) {
                if (!lathe_st_has(w->files[f], key)) {
                    rc = lathe_error(LATHE_EINVAL, "%s: the index puts tensor '%s' in %s, which does "
                                     "not hold it", index, key, p);
                    goto out;
                }
                found = 1;
            }
        }
    }
out:
    free(names);
    json_decref(root);
    return rc;
}

int lathe_weights_open(lathe_weights **out, const char *dir)
{
    *out = NULL;
    if (!dir || !dir[0])
        return lathe_error(LATHE_EINVAL, "weights: no model directory given");
    lathe_weights *w = calloc(1, sizeof *w);
    if (!w || !(w->where = lathe_str_dup(dir))) {
        free(w);
        return lathe_error(LATHE_ENOMEM, "weights: out of memory");
    }
    int rc;
    if (is_dir(dir)) {
        char *index = lathe_str_printf("%s/%s", dir, WT_INDEX);
        char *single = lathe_str_printf("%s/%s", dir, WT_SINGLE);
        if (!index || !single)
            rc = lathe_error(LATHE_ENOMEM, "weights: out of memory");
        else if (is_file(single)) /* transformers prefers the single file too */
            rc = wt_add_file(w, single);
        else if (is_file(index))
            rc = wt_open_index(w, dir, index);
        else
            rc = lathe_error(LATHE_EIO, "%s: neither %s nor %s is there; a Hugging Face model "
                             "directory holds one of them (.bin checkpoints must be converted to "
                             "safetensors first)", dir, WT_SINGLE, WT_INDEX);
        free(index);
        free(single);
    } else if (is_file(dir)) {
        rc = wt_add_file(w, dir);
    } else {
        rc = lathe_error(LATHE_EIO, "%s: no such directory or safetensors file", dir);
    }
    if (!rc)
        rc = wt_index(w);
    if (rc) {
        lathe_weights_close(w);
        return rc;
    }
    *out = w;
    return LATHE_OK;
}

size_t lathe_weights_count(const lathe_weights *w)
{
    return w ? w->n : 0;
}

int lathe_weights_info(const lathe_weights *w, size_t i, const char **name, enum lathe_dtype *dtype, int *ndim,
                       int64_t *shape)
{
    if (!w || i >= w->n)
        return lathe_error(LATHE_EINVAL, "weights: tensor index %zu out of range (%zu tensors)", i,
                           w ? w->n : 0);
    struct lathe_st_info info;
    int rc = lathe_st_get(w->files[w->t[i].file], w->t[i].idx, &info);
    if (name)
        *name = w->t[i].name;
    if (rc)
        return rc;
    if (dtype)
        *dtype = info.dtype;
    if (ndim)
        *ndim = info.ndim;
    if (shape)
        for (int d = 0; d < info.ndim; d++)
            shape[d] = info.shape[d];
    return LATHE_OK;
}

static struct wt_tensor *wt_find(const lathe_weights *w, const char *name)
{
    size_t lo = 0, hi = w->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        struct wt_tensor *t = w->by_name[mid];
        int c = strcmp(t->name, name);
        if (c == 0)
            return t;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

int lathe_weights_has(const lathe_weights *w, const char *name)
{
    return w && name && wt_find(w, name) != NULL;
}

static void shape_str(char *buf, size_t n, int ndim, const int64_t *shape)
{
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < ndim && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (k < n)
        snprintf(buf + k, n - k, "]");
}

/* Look the tensor up and check it can be read into dst with shape `want`. */
static int wt_prepare(lathe_weights *w, const char *name, const lathe_tensor *dst, int ndim,
                      const int64_t *want, struct wt_tensor **tp, struct lathe_st_info *info)
{
    if (!w || !name || !dst)
        return lathe_error(LATHE_EINVAL, "weights: read needs weights, a name and a tensor");
    struct wt_tensor *t = wt_find(w, name);
    if (!t)
        return lathe_error(LATHE_EINVAL, "%s: tensor '%s' is missing; the checkpoint does not match "
                           "this model's configuration", w->where, name);
    const char *path = lathe_st_path(w->files[t->file]);
    int rc = lathe_st_get(w->files[t->file], t->idx, info);
    if (rc)
        return rc;
    int same = info->ndim == ndim;
    for (int d = 0; same && d < ndim; d++)
        same = info->shape[d] == want[d];
    if (!same) {
        char a[96], b[96];
        shape_str(a, sizeof a, info->ndim, info->shape);
        shape_str(b, sizeof b, ndim, want);
        return lathe_error(LATHE_EINVAL, "%s: tensor '%s' has shape %s, the model expects %s; the "
                           "checkpoint does not match config.json", path, name, a, b);
    }
    int fsrc = info->dtype == LATHE_F32 || info->dtype == LATHE_BF16 || info->dtype == LATHE_F16;
    int fdst = dst->dtype == LATHE_F32 || dst->dtype == LATHE_BF16 || dst->dtype == LATHE_F16;
    if (fdst && !fsrc && dst->dtype != LATHE_F32)
        return lathe_error(LATHE_EUNSUPPORTED, "%s: tensor '%s' is %s and cannot be read as %s", path,
                           name, lathe_dtype_name(info->dtype), lathe_dtype_name(dst->dtype));
    if (!fdst && dst->dtype != info->dtype)
        return lathe_error(LATHE_EUNSUPPORTED, "%s: tensor '%s' is %s and cannot be read as %s", path,
                           name, lathe_dtype_name(info->dtype), lathe_dtype_name(dst->dtype));
    *tp = t;
    return LATHE_OK;
}

/* n elements of src (stored as dt, possibly unaligned) to f32. */
static void wt_to_f32(float *dst, const void *src, enum lathe_dtype dt, size_t n, void *bounce)
{
    size_t es = lathe_dtype_size(dt);
    if ((uintptr_t)src % es != 0) { /* the converters read typed elements */
        memcpy(bounce, src, n * es);
        src = bounce;
    }
    lathe_convert_to_f32(dst, src, dt, n);
}

int lathe_weights_read(lathe_weights *w, const char *name, lathe_tensor *dst)
{
    struct wt_tensor *t;
    struct lathe_st_info info;
    int rc = wt_prepare(w, name, dst, dst ? dst->ndim : 0, dst ? dst->shape : NULL, &t, &info);
    if (rc)
        return rc;
    const struct lathe_backend_ops *be = lathe_backend();
    const size_t n = (size_t)lathe_tensor_numel(dst), es = lathe_dtype_size(info.dtype);
    const size_t des = lathe_dtype_size(dst->dtype);
    if (dst->dtype == info.dtype) { /* a plain copy, in chunks of bytes */
        const size_t total = n * es, step = WT_CHUNK * 16;
        for (size_t off = 0; off < total && !rc; off += step) {
            size_t k = total - off < step ? total - off : step;
            if (dst->device == LATHE_DEVICE_CPU)
                memcpy((char *)dst->data + off, (const char *)info.data + off, k);
            else
                rc = be->copy((char *)dst->data + off, (const char *)info.data + off, k, 1);
        }
    } else {
        float *f = malloc(WT_CHUNK * sizeof *f);
        void *bounce = malloc(WT_CHUNK * 8), *conv = malloc(WT_CHUNK * 8);
        if (!f || !bounce || !conv)
            rc = lathe_error(LATHE_ENOMEM, "weights: out of memory reading '%s'", name);
        for (size_t off = 0; off < n && !rc; off += WT_CHUNK) {
            size_t k = n - off < WT_CHUNK ? n - off : WT_CHUNK;
            wt_to_f32(f, (const char *)info.data + off * es, info.dtype, k, bounce);
            const void *src = f;
            if (dst->dtype != LATHE_F32) {
                lathe_convert_from_f32(conv, dst->dtype, f, k);
                src = conv;
            }
            if (dst->device == LATHE_DEVICE_CPU)
                memcpy((char *)dst->data + off * des, src, k * des);
            else
                rc = be->copy((char *)dst->data + off * des, src, k * des, 1);
        }
        free(f);
        free(bounce);
        free(conv);
    }
    if (rc)
        return rc == LATHE_ENOMEM ? rc : lathe_error(LATHE_ERR, "weights: copying '%s' to the device failed", name);
    t->used = 1;
    return LATHE_OK;
}

int lathe_weights_read_transposed(lathe_weights *w, const char *name, lathe_tensor *dst)
{
    if (dst && dst->ndim != 2)
        return lathe_error(LATHE_EINVAL, "weights: '%s' read transposed needs a 2-D tensor", name ? name : "?");
    struct wt_tensor *t;
    struct lathe_st_info info;
    int64_t want[2] = {dst ? dst->shape[1] : 0, dst ? dst->shape[0] : 0}; /* stored [in, out] */
    int rc = wt_prepare(w, name, dst, 2, want, &t, &info);
    if (rc)
        return rc;
    if (dst->dtype != LATHE_F32)
        return lathe_error(LATHE_EUNSUPPORTED, "weights: '%s' read transposed needs an F32 tensor", name);
    const size_t in = (size_t)want[0], outd = (size_t)want[1], n = in * outd;
    float *src = malloc((n ? n : 1) * sizeof *src), *tr = malloc((n ? n : 1) * sizeof *tr);
    void *bounce = malloc((n ? n : 1) * 8);
    if (!src || !tr || !bounce) {
        free(src);
        free(tr);
        free(bounce);
        return lathe_error(LATHE_ENOMEM, "weights: out of memory reading '%s'", name);
    }
    wt_to_f32(src, info.data, info.dtype, n, bounce);
    for (size_t i = 0; i < in; i++)
        for (size_t o = 0; o < outd; o++)
            tr[o * in + i] = src[i * outd + o];
    if (dst->device == LATHE_DEVICE_CPU)
        memcpy(dst->data, tr, n * sizeof *tr);
    else
        rc = lathe_backend()->copy(dst->data, tr, n * sizeof *tr, 1);
    free(src);
    free(tr);
    free(bounce);
    if (rc)
        return lathe_error(LATHE_ERR, "weights: copying '%s' to the device failed", name);
    t->used = 1;
    return LATHE_OK;
}

const char *lathe_weights_unused(const lathe_weights *w, const char *const *ignore)
{
    for (size_t i = 0; w && i < w->n; i++) {
        if (w->t[i].used)
            continue;
        int skip = 0;
        for (const char *const *p = ignore; p && *p && !skip; p++)
            skip = fnmatch(*p, w->t[i].name, 0) == 0;
        if (!skip)
            return w->t[i].name;
    }
    return NULL;
}

/* ---- writing ------------------------------------------------------------ */

/* Tensor i's data as `dtype` in host memory: the tensor's own buffer when
 * that already is the answer (f32 on the CPU, not transposed), else
 * converted into buf (at least nbytes). */
static int wt_stage(lathe_tensor *t, int transposed, enum lathe_dtype dtype, void *buf, const void **out)
{
    const size_t n = (size_t)lathe_tensor_numel(t);
    if (t->device == LATHE_DEVICE_CPU && t->dtype == dtype && !transposed && lathe_tensor_is_contiguous(t)) {
        *out = t->data;
        return LATHE_OK;
    }
    if (!lathe_tensor_is_contiguous(t))
        return lathe_error(LATHE_EINVAL, "weights: tensor '%s' is not contiguous", t->name);
    /* host f32 copy, transposed if asked, then to the storage dtype */
    float *f = malloc((n ? n : 1) * sizeof *f);
    if (!f)
        return lathe_error(LATHE_ENOMEM, "weights: out of memory staging '%s'", t->name);
    const void *host = t->data;
    void *hbuf = NULL;
    if (t->device != LATHE_DEVICE_CPU) {
        size_t nb = lathe_tensor_nbytes(t);
        if (!(hbuf = malloc(nb ? nb : 1)) || lathe_backend()->copy(hbuf, t->data, nb, 0)) {
            free(hbuf);
            free(f);
            return lathe_error(LATHE_ERR, "weights: copying '%s' from the device failed", t->name);
        }
        host = hbuf;
    }
    lathe_convert_to_f32(f, host, t->dtype, n);
    free(hbuf);
    if (transposed) { /* [out, in] -> [in, out] */
        const size_t o = (size_t)t->shape[0], in = (size_t)t->shape[1];
        float *tr = malloc((n ? n : 1) * sizeof *tr);
        if (!tr) {
            free(f);
            return lathe_error(LATHE_ENOMEM, "weights: out of memory staging '%s'", t->name);
        }
        for (size_t r = 0; r < o; r++)
            for (size_t c = 0; c < in; c++)
                tr[c * o + r] = f[r * in + c];
        free(f);
        f = tr;
    }
    lathe_convert_from_f32(buf, dtype, f, n);
    free(f);
    *out = buf;
    return LATHE_OK;
}

static int wt_write_json(const char *path, json_t *root)
{
    char *tmp = lathe_str_printf("%s.tmp", path);
    if (!tmp)
        return lathe_error(LATHE_ENOMEM, "out of memory writing %s", path);
    int rc = LATHE_OK;
    /* transformers writes its index with indent 2, sorted keys and a final
     * newline (formats.md §1.5) */
    if (json_dump_file(root, tmp, JSON_INDENT(2) | JSON_SORT_KEYS) != 0) {
        rc = lathe_error(LATHE_EIO, "cannot write %s: %s", tmp, strerror(errno));
    } else {
        FILE *f = fopen(tmp, "a");
        if (!f || fputc('\n', f) == EOF || fclose(f) != 0)
            rc = lathe_error(LATHE_EIO, "cannot write %s: %s", tmp, strerror(errno));
        else if (rename(tmp, path) != 0)
            rc = lathe_error(LATHE_EIO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    }
    if (rc)
        unlink(tmp);
    free(tmp);
    return rc;
}

int lathe_weights_write(const char *dir, const char *const *names, lathe_tensor *const *tensors,
                        const uint8_t *transposed, size_t n, enum lathe_dtype dtype, uint64_t max_shard_bytes)
{
    if (!dir || !dir[0] || (n && (!names || !tensors)))
        return lathe_error(LATHE_EINVAL, "weights: write needs a directory, names and tensors");
    if (dtype != LATHE_F32 && dtype != LATHE_BF16 && dtype != LATHE_F16)
        return lathe_error(LATHE_EUNSUPPORTED, "weights: cannot store weights as %s; use F32, BF16 or F16",
                           lathe_dtype_name(dtype));
    for (size_t i = 0; i < n; i++) {
        if (!names[i] || !tensors[i])
            return lathe_error(LATHE_EINVAL, "weights: tensor %zu has no name or data", i);
        int ft = tensors[i]->dtype;
        if (ft != LATHE_F32 && ft != LATHE_BF16 && ft != LATHE_F16)
            return lathe_error(LATHE_EUNSUPPORTED, "weights: '%s' is %s; only float tensors are written",
                               names[i], lathe_dtype_name(tensors[i]->dtype));
        if (transposed && transposed[i] && tensors[i]->ndim != 2)
            return lathe_error(LATHE_EINVAL, "weights: '%s' is stored transposed but is not 2-D", names[i]);
    }
    int rc = lathe_mkdir_p(dir);
    if (rc)
        return rc;

    /* greedy split in the given order (huggingface_hub's rule) */
    const size_t es = lathe_dtype_size(dtype);
    size_t *shard = calloc(n ? n : 1, sizeof *shard);
    if (!shard)
        return lathe_error(LATHE_ENOMEM, "weights: out of memory");
    size_t nshards = 0;
    uint64_t cur = 0, total = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t nb = (uint64_t)lathe_tensor_numel(tensors[i]) * es;
        if (nshards == 0 || (max_shard_bytes > 0 && cur > 0 && cur + nb > max_shard_bytes)) {
            nshards++;
            cur = 0;
        }
        shard[i] = nshards - 1;
        cur += nb;
        total += nb;
    }
    if (nshards == 0)
        nshards = 1;

    struct lathe_st_entry *e = calloc(n ? n : 1, sizeof *e);
    char **fnames = calloc(nshards, sizeof *fnames);
    json_t *map = json_object();
    char *path = NULL;
    if (!e || !fnames || !map) {
        rc = lathe_error(LATHE_ENOMEM, "weights: out of memory");
        goto out;
    }
    for (size_t s = 0; s < nshards; s++) {
        fnames[s] = nshards == 1 ? lathe_str_dup(WT_SINGLE)
                                 : lathe_str_printf("model-%05zu-of-%05zu.safetensors", s + 1, nshards);
        if (!fnames[s]) {
            rc = lathe_error(LATHE_ENOMEM, "weights: out of memory");
            goto out;
        }
    }
    /* One shard at a time: its converted tensors live in one buffer, so the
     * peak is one shard (or one tensor larger than the limit). */
    for (size_t s = 0, i0 = 0; s < nshards && !rc; s++) {
        size_t i1 = i0, need = 0;
        while (i1 < n && shard[i1] == s)
            need += (size_t)lathe_tensor_numel(tensors[i1++]) * es;
        char *buf = malloc(need ? need : 1);
        if (!buf) {
            rc = lathe_error(LATHE_ENOMEM, "weights: out of memory for a shard of %zu bytes; lower "
                             "the maximum shard size", need);
            break;
        }
        size_t off = 0;
        for (size_t i = i0; i < i1 && !rc; i++) {
            lathe_tensor *t = tensors[i];
            int tr = transposed && transposed[i];
            e[i].name = names[i];
            e[i].dtype = dtype;
            e[i].ndim = t->ndim;
            e[i].shape = t->shape;
            rc = wt_stage(t, tr, dtype, buf + off, &e[i].data);
            off += (size_t)lathe_tensor_numel(t) * es;
        }
        /* transposed tensors are stored [in, out]; give their entries shapes
         * of their own */
        int64_t(*tshape)[2] = calloc(i1 - i0 ? i1 - i0 : 1, sizeof *tshape);
        if (!tshape && !rc)
            rc = lathe_error(LATHE_ENOMEM, "weights: out of memory");
        for (size_t i = i0; i < i1 && !rc; i++)
            if (transposed && transposed[i]) {
                tshape[i - i0][0] = tensors[i]->shape[1];
                tshape[i - i0][1] = tensors[i]->shape[0];
                e[i].shape = tshape[i - i0];
            }
        if (!rc) {
            free(path);
            path = lathe_str_printf("%s/%s", dir, fnames[s]);
            if (!path)
                rc = lathe_error(LATHE_ENOMEM, "weights: out of memory");
            else
                rc = lathe_st_write(path, e + i0, i1 - i0, NULL);
        }
        for (size_t i = i0; i < i1 && !rc; i++)
            if (json_object_set_new(map, names[i], json_string(fnames[s])))
                rc = lathe_error(LATHE_ENOMEM, "weights: out of memory");
        free(tshape);
        free(buf);
        i0 = i1;
    }
    if (rc)
        goto out;

    /* The other layout's files would shadow or contradict what was just
     * written (transformers prefers model.safetensors over an index), so
     * they go. */
    free(path);
    path = lathe_str_printf("%s/%s", dir, nshards == 1 ? WT_INDEX : WT_SINGLE);
    if (!path) {
        rc = lathe_error(LATHE_ENOMEM, "weights: out of memory");
        goto out;
    }
    if (unlink(path) != 0 && errno != ENOENT) {
        rc = lathe_error(LATHE_EIO, "cannot remove the stale %s: %s", path, strerror(errno));
        goto out;
    }
    if (nshards > 1) {
        json_t *root = json_pack("{s:{s:I},s:O}", "metadata", "total_size", (json_int_t)total, "weight_map", map);
        free(path);
        path = lathe_str_printf("%s/%s", dir, WT_INDEX);
        if (!root || !path)
            rc = lathe_error(LATHE_ENOMEM, "weights: out of memory");
        else
            rc = wt_write_json(path, root);
        json_decref(root);
    }
out:
    if (fnames)
        for (size_t s = 0; s < nshards; s++)
            free(fnames[s]);
    free(fnames);
    free(path);
    free(e);
    free(shard);
    json_decref(map);
    return rc;
}

/* ---- files that travel with the weights -------------------------------- */

static int copy_one(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb");
    if (!in)
        return errno == ENOENT ? LATHE_OK : lathe_error(LATHE_EIO, "cannot read %s: %s", from, strerror(errno));
    char tmp[4400];
    snprintf(tmp, sizeof tmp, "%s.tmp", to);
    FILE *out = fopen(tmp, "wb");
    int rc = LATHE_OK;
    if (!out) {
        rc = lathe_error(LATHE_EIO, "cannot create %s: %s", tmp, strerror(errno));
    } else {
        char buf[65536];
        size_t k;
        int bad = 0;
        while (!bad && (k = fread(buf, 1, sizeof buf, in)) > 0)
            bad = fwrite(buf, 1, k, out) != k;
        if (bad || ferror(in) || fclose(out) != 0 || rename(tmp, to) != 0) {
            rc = lathe_error(LATHE_EIO, "cannot copy %s to %s: %s", from, to, strerror(errno));
            unlink(tmp);
        }
    }
    fclose(in);
    return rc;
}

LATHE_EXPORT int lathe_weights_copy_side_files(const char *src_dir, const char *dst_dir)
{
    static const char *const files[] = {"tokenizer.json", "tokenizer_config.json", "generation_config.json",
                                        "special_tokens_map.json", "chat_template.jinja", "vocab.json",
                                        "merges.txt", NULL};
    char a[4200], b[4200];
    int rc = LATHE_OK;
    for (const char *const *f = files; *f && rc == LATHE_OK; f++) {
        snprintf(a, sizeof a, "%s/%s", src_dir, *f);
        snprintf(b, sizeof b, "%s/%s", dst_dir, *f);
        if (strcmp(a, b) != 0)
            rc = copy_one(a, b);
    }
    return rc;
}
