/* core/io/safetensors.c — safetensors reader (mmap) and atomic writer.
 *
 * Validation follows the reference's SafeTensors::read_metadata and
 * Metadata::validate (huggingface/safetensors, src/tensor.rs; formats.md
 * §1.3): header size bounds, JSON shape, known dtypes, element count times
 * bit size with overflow checks, and offsets that, sorted, tile the data
 * buffer exactly with no gap, overlap or trailing bytes. */
#include "io/safetensors.h"

#include <lathe/backend.h>
#include <lathe/status.h>

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Every dtype string of the reference's Dtype enum, with its size in bits
 * (formats.md §1.2). Those lathe cannot hold still validate, so a file that
 * mixes them in can be opened and its other tensors read. */
static const struct {
    const char *name;
    unsigned bits;
    int dtype; /* enum lathe_dtype, or -1 */
} st_dtypes[] = {
    {"BOOL", 8, -1},
    {"F4", 4, -1},
    {"F6_E2M3", 6, -1},
    {"F6_E3M2", 6, -1},
    {"U8", 8, LATHE_U8},
    {"I8", 8, LATHE_I8},
    {"F8_E5M2", 8, LATHE_F8_E5M2},
    {"F8_E4M3", 8, LATHE_F8_E4M3},
    {"F8_E8M0", 8, -1},
    {"F8_E4M3FNUZ", 8, -1},
    {"F8_E5M2FNUZ", 8, -1},
    {"I16", 16, -1},
    {"U16", 16, -1},
    {"F16", 16, LATHE_F16},
    {"BF16", 16, LATHE_BF16},
    {"I32", 32, LATHE_I32},
    {"U32", 32, -1},
    {"F32", 32, LATHE_F32},
    {"C64", 64, -1},
    {"F64", 64, -1},
    {"I64", 64, LATHE_I64},
    {"U64", 64, -1},
};
#define N_ST_DTYPES (sizeof st_dtypes / sizeof st_dtypes[0])

static int st_dtype_lookup(const char *name)
{
    for (size_t i = 0; i < N_ST_DTYPES; i++)
        if (strcmp(st_dtypes[i].name, name) == 0)
            return (int)i;
    return -1;
}

static int st_dtype_of(enum lathe_dtype dt)
{
    for (size_t i = 0; i < N_ST_DTYPES; i++)
        if (st_dtypes[i].dtype == (int)dt)
            return (int)i;
    return -1;
}

struct st_tensor {
    const char *name;   /* a key of root */
    int dt;             /* index into st_dtypes */
    int ndim;           /* as in the file, may exceed LATHE_MAX_DIMS */
    int64_t shape[LATHE_MAX_DIMS];
    uint64_t begin, end;
};

struct lathe_st_file {
    char *path;
    void *map;
    size_t size;
    const uint8_t *data;        /* map + 8 + N */
    json_t *root;               /* owns the names and metadata strings */
    json_t *meta;               /* borrowed from root, or NULL */
    size_t n;
    struct st_tensor *t;        /* in offset order */
    struct st_tensor **by_name; /* sorted by name, for find */
};

/* ---- reading ------------------------------------------------------------- */
static int cmp_offsets(const void *a, const void *b)
{
    const struct st_tensor *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_names(const void *a, const void *b)
{
    const struct st_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

/* A JSON integer >= 0 into *out. */
static int json_uint(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int parse_tensor(const char *path, const char *name, json_t *v, struct st_tensor *t)
{
    t->name = name;
    if (!json_is_object(v))
        return lathe_error(LATHE_EINVAL, "%s: header entry for tensor %s is not an object", path,
                           name);
    json_t *jd = json_object_get(v, "dtype");
    json_t *js = json_object_get(v, "shape");
    json_t *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd))
        return lathe_error(LATHE_EINVAL, "%s: tensor %s has no \"dtype\" string", path, name);
    t->dt = st_dtype_lookup(json_string_value(jd));
    if (t->dt < 0)
        return lathe_error(LATHE_EINVAL,
                           "%s: tensor %s has unknown dtype \"%s\" (not a safetensors dtype)",
                           path, name, json_string_value(jd));
    if (!json_is_array(js))
        return lathe_error(LATHE_EINVAL, "%s: tensor %s has no \"shape\" array", path, name);

    /* nbits = numel * bits, each product checked (ValidationOverflow). */
    uint64_t nbits = st_dtypes[t->dt].bits;
    int overflow = 0;
    t->ndim = (int)json_array_size(js);
    for (size_t d = 0; d < json_array_size(js); d++) {
        uint64_t dim;
        if (json_uint(json_array_get(js, d), &dim) != 0)
            return lathe_error(LATHE_EINVAL,
                               "%s: tensor %s: shape[%zu] is not a non-negative integer", path,
                               name, d);
        if (d < LATHE_MAX_DIMS)
            t->shape[d] = (int64_t)dim;
        overflow |= __builtin_mul_overflow(nbits, dim, &nbits);
    }
    if (overflow)
        return lathe_error(LATHE_EINVAL, "%s: tensor %s: the size of its shape overflows 64 bits",
                           path, name);
    if (nbits % 8 != 0)
        return lathe_error(LATHE_EINVAL,
                           "%s: tensor %s: %s data of this shape is not a whole number of bytes",
                           path, name, st_dtypes[t->dt].name);

    if (!json_is_array(jo) || json_array_size(jo) != 2 ||
        json_uint(json_array_get(jo, 0), &t->begin) != 0 ||
        json_uint(json_array_get(jo, 1), &t->end) != 0)
        return lathe_error(LATHE_EINVAL,
                           "%s: tensor %s: \"data_offsets\" must be [begin, end] with two "
                           "non-negative integers",
                           path, name);
    if (t->begin > t->end)
        return lathe_error(LATHE_EINVAL,
                           "%s: tensor %s: data_offsets [%llu, %llu] end before they begin", path,
                           name, (unsigned long long)t->begin, (unsigned long long)t->end);
    if (t->end - t->begin != nbits / 8)
        return lathe_error(LATHE_EINVAL,
                           "%s: tensor %s: data_offsets span %llu bytes but %s of this shape "
                           "needs %llu",
                           path, name, (unsigned long long)(t->end - t->begin),
                           st_dtypes[t->dt].name, (unsigned long long)(nbits / 8));
    return LATHE_OK;
}

static int parse_metadata(const char *path, json_t *meta)
{
    if (!json_is_object(meta))
        return lathe_error(LATHE_EINVAL, "%s: __metadata__ is not an object", path);
    const char *k;
    json_t *v;
    json_object_foreach(meta, k, v) {
        if (!json_is_string(v))
            return lathe_error(LATHE_EINVAL,
                               "%s: __metadata__ value for \"%s\" is not a string (safetensors "
                               "metadata maps strings to strings)",
                               path, k);
    }
    return LATHE_OK;
}

/* Validate the header of an opened mapping and build the tensor tables. */
static int st_parse(struct lathe_st_file *f)
{
    const uint8_t *m = f->map;
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++)
        hlen |= (uint64_t)m[i] << (8 * i);
    if (hlen > LATHE_ST_MAX_HEADER)
        return lathe_error(LATHE_EINVAL,
                           "%s: header length %llu exceeds the safetensors limit of %u bytes; "
                           "the file is corrupt or not a safetensors file",
                           f->path, (unsigned long long)hlen, LATHE_ST_MAX_HEADER);
    if (hlen > f->size - 8)
        return lathe_error(LATHE_EINVAL,
                           "%s: header length %llu runs past the end of the file (%zu bytes); "
                           "the file is truncated or not a safetensors file",
                           f->path, (unsigned long long)hlen, f->size);

    json_error_t jerr;
    f->root = json_loadb((const char *)m + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!f->root)
        return lathe_error(LATHE_EINVAL, "%s: header is not valid JSON (line %d column %d: %s)",
                           f->path, jerr.line, jerr.column, jerr.text);
    if (!json_is_object(f->root))
        return lathe_error(LATHE_EINVAL, "%s: header is not a JSON object", f->path);
    f->data = m + 8 + hlen;
    uint64_t data_size = f->size - 8 - hlen;

    size_t cap = json_object_size(f->root);
    f->t = calloc(cap ? cap : 1, sizeof *f->t);
    f->by_name = calloc(cap ? cap : 1, sizeof *f->by_name);
    if (!f->t || !f->by_name)
        return lathe_error(LATHE_ENOMEM, "%s: out of memory reading the header", f->path);

    const char *k;
    json_t *v;
    int rc;
    json_object_foreach(f->root, k, v) {
        if (strcmp(k, "__metadata__") == 0) {
            if ((rc = parse_metadata(f->path, v)) != 0)
                return rc;
            f->meta = v;
            continue;
        }
        if ((rc = parse_tensor(f->path, k, v, &f->t[f->n])) != 0)
            return rc;
        f->n++;
    }

    /* Sorted by offsets, each tensor must begin where the previous ended,
     * from 0 to the end of the file: no gap, no overlap, no stray bytes. */
    qsort(f->t, f->n, sizeof *f->t, cmp_offsets);
    uint64_t at = 0;
    for (size_t i = 0; i < f->n; i++) {
        const struct st_tensor *t = &f->t[i];
        if (t->begin != at)
            return lathe_error(LATHE_EINVAL,
                               "%s: tensor %s begins at data byte %llu, but the data before it "
                               "ends at %llu (%s)",
                               f->path, t->name, (unsigned long long)t->begin,
                               (unsigned long long)at,
                               t->begin > at ? "a gap" : "an overlap");
        if (t->end > data_size)
            return lathe_error(LATHE_EINVAL,
                               "%s: tensor %s ends at data byte %llu, past the end of the data "
                               "(%llu bytes); the file is truncated",
                               f->path, t->name, (unsigned long long)t->end,
                               (unsigned long long)data_size);
        at = t->end;
    }
    if (at != data_size)
        return lathe_error(LATHE_EINVAL,
                           "%s: tensors cover %llu data bytes but the file holds %llu; "
                           "the file is corrupt",
                           f->path, (unsigned long long)at, (unsigned long long)data_size);

    for (size_t i = 0; i < f->n; i++)
        f->by_name[i] = &f->t[i];
    qsort(f->by_name, f->n, sizeof *f->by_name, cmp_names);
    return LATHE_OK;
}

void lathe_st_close(struct lathe_st_file *f)
{
    if (!f)
        return;
    if (f->map)
        munmap(f->map, f->size);
    json_decref(f->root);
    free(f->t);
    free(f->by_name);
    free(f->path);
    free(f);
}

int lathe_st_open(struct lathe_st_file **out, const char *path)
{
    *out = NULL;
    struct lathe_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return lathe_error(LATHE_ENOMEM, "out of memory opening %s", path);
    }
    int rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0) {
        rc = lathe_error(LATHE_EIO, "cannot open %s: %s", path, strerror(errno));
        goto fail;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = lathe_error(LATHE_EIO, "%s: not a regular file", path);
        close(fd);
        goto fail;
    }
    if (st.st_size < 8) {
        rc = lathe_error(LATHE_EINVAL,
                         "%s: %lld bytes is too short for a safetensors file (at least the "
                         "8-byte header length); the file is truncated",
                         path, (long long)st.st_size);
        close(fd);
        goto fail;
    }
    f->size = (size_t)st.st_size;
    f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        rc = lathe_error(LATHE_EIO, "cannot map %s: %s", path, strerror(errno));
        goto fail;
    }
    if ((rc = st_parse(f)) != 0)
        goto fail;
    *out = f;
    return LATHE_OK;
fail:
    lathe_st_close(f);
    return rc;
}

const char *lathe_st_path(const struct lathe_st_file *f)
{
    return f->path;
}

size_t lathe_st_count(const struct lathe_st_file *f)
{
    return f->n;
}

static int st_info(const struct lathe_st_file *f, const struct st_tensor *t,
                   struct lathe_st_info *info)
{
    memset(info, 0, sizeof *info);
    info->name = t->name;
    info->data = f->data + t->begin;
    info->nbytes = (size_t)(t->end - t->begin);
    if (st_dtypes[t->dt].dtype < 0)
        return lathe_error(LATHE_EUNSUPPORTED,
                           "%s: tensor %s has dtype %s, which lathe cannot load (supported: F32, "
                           "BF16, F16, I32, I64, U8, I8); convert it first",
                           f->path, t->name, st_dtypes[t->dt].name);
    if (t->ndim > LATHE_MAX_DIMS)
        return lathe_error(LATHE_EUNSUPPORTED, "%s: tensor %s has %d dimensions; lathe holds at most %d",
                           f->path, t->name, t->ndim, LATHE_MAX_DIMS);
    info->dtype = (enum lathe_dtype)st_dtypes[t->dt].dtype;
    info->ndim = t->ndim;
    memcpy(info->shape, t->shape, sizeof info->shape);
    return LATHE_OK;
}

int lathe_st_get(const struct lathe_st_file *f, size_t i, struct lathe_st_info *info)
{
    if (i >= f->n)
        return lathe_error(LATHE_EINVAL, "%s: tensor index %zu out of range (%zu tensors)",
                           f->path, i, f->n);
    return st_info(f, &f->t[i], info);
}

static const struct st_tensor *st_lookup(const struct lathe_st_file *f, const char *name)
{
    struct st_tensor key = {.name = name}, *kp = &key;
    struct st_tensor **hit = bsearch(&kp, f->by_name, f->n, sizeof *f->by_name, cmp_names);
    return hit ? *hit : NULL;
}

int lathe_st_has(const struct lathe_st_file *f, const char *name)
{
    return st_lookup(f, name) != NULL;
}

int lathe_st_find(const struct lathe_st_file *f, const char *name, struct lathe_st_info *info)
{
    const struct st_tensor *t = st_lookup(f, name);
    if (!t)
        return lathe_error(LATHE_EINVAL, "%s: no tensor named %s (the file has %zu tensors)",
                           f->path, name, f->n);
    return st_info(f, t, info);
}

const char *lathe_st_metadata(const struct lathe_st_file *f, const char *key)
{
    return f->meta ? json_string_value(json_object_get(f->meta, key)) : NULL;
}

/* ---- writing ------------------------------------------------------------- */
static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int write_all(int fd, const void *p, size_t n)
{
    const uint8_t *s = p;
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

/* A device buffer goes to the file through a host buffer of at most
 * LATHE_ST_STAGE bytes, read with the backend's copy. */
#define LATHE_ST_STAGE ((size_t)64 << 20)

static int write_device(int fd, const void *dev, size_t n, uint8_t **stage)
{
    const struct lathe_backend_ops *be = lathe_backend();
    size_t cap = n < LATHE_ST_STAGE ? n : LATHE_ST_STAGE;
    if (!*stage && !(*stage = malloc(LATHE_ST_STAGE))) {
        errno = ENOMEM;
        return -1;
    }
    for (size_t at = 0; at < n; at += cap) {
        size_t k = n - at < cap ? n - at : cap;
        if (be->copy(*stage, (const uint8_t *)dev + at, k, 0) != LATHE_OK)
            return -2; /* the backend's message stands */
        if (write_all(fd, *stage, k))
            return -1;
    }
    return 0;
}

/* Checks every entry and returns the header JSON (malloc'd by jansson). */
static int st_build_header(const char *path, const struct lathe_st_entry *e, size_t n,
                           const char *const *meta_kv, char **out)
{
    *out = NULL;
    int rc = LATHE_OK;
    const char **names = NULL;
    json_t *root = json_object(), *meta = json_object();
    if (!root || !meta || json_object_set_new(meta, "format", json_string("pt")) != 0 ||
        json_object_set(root, "__metadata__", meta) != 0)
        goto oom;
    for (size_t i = 0; meta_kv && meta_kv[i]; i += 2) {
        if (!meta_kv[i + 1]) {
            rc = lathe_error(LATHE_EINVAL, "%s: metadata key \"%s\" has no value", path,
                             meta_kv[i]);
            goto out;
        }
        json_t *s = json_string(meta_kv[i + 1]);
        if (!s || json_object_set_new(meta, meta_kv[i], s) != 0) {
            rc = lathe_error(LATHE_EINVAL, "%s: metadata \"%s\" is not valid UTF-8", path,
                             meta_kv[i]);
            goto out;
        }
    }

    uint64_t at = 0;
    for (size_t i = 0; i < n; i++) {
        const struct lathe_st_entry *t = &e[i];
        if (!t->name || !*t->name || strcmp(t->name, "__metadata__") == 0) {
            rc = lathe_error(LATHE_EINVAL, "%s: tensor %zu has no usable name (\"%s\")", path, i,
                             t->name ? t->name : "(null)");
            goto out;
        }
        int dt = st_dtype_of(t->dtype);
        if (dt < 0 || t->ndim < 0 || t->ndim > LATHE_MAX_DIMS || (t->ndim > 0 && !t->shape)) {
            rc = lathe_error(LATHE_EINVAL, "%s: tensor %s: bad dtype (%d) or ndim (%d)", path,
                             t->name, (int)t->dtype, t->ndim);
            goto out;
        }
        uint64_t nbytes = st_dtypes[dt].bits / 8;
        int overflow = 0;
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] < 0) {
                rc = lathe_error(LATHE_EINVAL, "%s: tensor %s: shape[%d] = %lld is negative",
                                 path, t->name, d, (long long)t->shape[d]);
                goto out;
            }
            overflow |= __builtin_mul_overflow(nbytes, (uint64_t)t->shape[d], &nbytes);
        }
        overflow |= __builtin_add_overflow(at, nbytes, &at);
        if (overflow || at > (uint64_t)INT64_MAX) {
            rc = lathe_error(LATHE_EINVAL, "%s: tensor %s: size overflows", path, t->name);
            goto out;
        }
        if (nbytes > 0 && !t->data) {
            rc = lathe_error(LATHE_EINVAL, "%s: tensor %s has no data", path, t->name);
            goto out;
        }

        /* jansson's *_new calls consume the value even when they fail, so
         * only ent needs freeing here. */
        json_t *ent = json_object(), *shape = json_array(), *offs = json_array();
        int bad = 0;
        for (int d = 0; d < t->ndim; d++)
            bad |= json_array_append_new(shape, json_integer((json_int_t)t->shape[d])) != 0;
        bad |= json_array_append_new(offs, json_integer((json_int_t)(at - nbytes))) != 0;
        bad |= json_array_append_new(offs, json_integer((json_int_t)at)) != 0;
        bad |= json_object_set_new(ent, "dtype", json_string(st_dtypes[dt].name)) != 0;
        bad |= json_object_set_new(ent, "shape", shape) != 0;
        bad |= json_object_set_new(ent, "data_offsets", offs) != 0;
        if (bad) {
            json_decref(ent);
            goto oom;
        }
        if (json_object_set_new(root, t->name, ent) != 0) {
            rc = lathe_error(LATHE_EINVAL, "%s: tensor name %s is not valid UTF-8", path, t->name);
            goto out;
        }
    }
    if (json_object_size(root) != n + 1) {
        /* A repeated name replaced an earlier entry; find it for the message. */
        names = malloc(n * sizeof *names);
        if (!names)
            goto oom;
        for (size_t i = 0; i < n; i++)
            names[i] = e[i].name;
        qsort(names, n, sizeof *names, cmp_cstr);
        const char *dup = "?";
        for (size_t i = 1; i < n; i++)
            if (strcmp(names[i - 1], names[i]) == 0)
                dup = names[i];
        rc = lathe_error(LATHE_EINVAL, "%s: tensor name %s appears more than once", path, dup);
        goto out;
    }
    *out = json_dumps(root, JSON_COMPACT);
    if (!*out)
        goto oom;
    goto out;
oom:
    rc = lathe_error(LATHE_ENOMEM, "%s: out of memory building the header", path);
out:
    free(names);
    json_decref(meta);
    json_decref(root);
    return rc;
}

/* Make the rename itself durable (best effort: some filesystems refuse
 * fsync on a directory, and the data is already safe in the file). */
static void fsync_parent(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir)
        return;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(dir);
}

int lathe_st_write(const char *path, const struct lathe_st_entry *entries, size_t n,
                   const char *const *meta_kv)
{
    char *header = NULL, *tmp = NULL;
    int rc = st_build_header(path, entries, n, meta_kv, &header);
    if (rc)
        return rc;
    size_t hlen = strlen(header);
    size_t padded = (hlen + 7) & ~(size_t)7; /* data starts 8-aligned */
    if (padded > LATHE_ST_MAX_HEADER) {
        free(header);
        return lathe_error(LATHE_EINVAL,
                           "%s: header of %zu bytes exceeds the safetensors limit of %u; split "
                           "the tensors over several files",
                           path, padded, LATHE_ST_MAX_HEADER);
    }
    size_t tlen = strlen(path) + 5;
    if (!(tmp = malloc(tlen))) {
        free(header);
        return lathe_error(LATHE_ENOMEM, "out of memory writing %s", path);
    }
    snprintf(tmp, tlen, "%s.tmp", path);

    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) {
        rc = lathe_error(LATHE_EIO, "cannot create %s: %s", tmp, strerror(errno));
        goto out;
    }
    uint8_t lenbytes[8];
    for (int i = 0; i < 8; i++)
        lenbytes[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    static const char spaces[8] = "        ";
    int bad = write_all(fd, lenbytes, 8) || write_all(fd, header, hlen) ||
              write_all(fd, spaces, padded - hlen);
    uint8_t *stage = NULL;
    for (size_t i = 0; i < n && !bad; i++) {
        const struct lathe_st_entry *t = &entries[i];
        size_t nbytes = st_dtypes[st_dtype_of(t->dtype)].bits / 8;
        for (int d = 0; d < t->ndim; d++)
            nbytes *= (size_t)t->shape[d]; /* checked in st_build_header */
        if (nbytes > 0 && t->on_device) {
            int w = write_device(fd, t->data, nbytes, &stage);
            if (w == -2) {
                rc = lathe_error_prefix(LATHE_EIO, "cannot write %s: reading tensor %s from the device", tmp, t->name);
                free(stage);
                close(fd);
                unlink(tmp);
                goto out;
            }
            bad = w != 0;
        } else {
            bad = nbytes > 0 && write_all(fd, t->data, nbytes);
        }
    }
    free(stage);
    if (bad || fsync(fd) != 0) {
        rc = lathe_error(LATHE_EIO, "cannot write %s: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        goto out;
    }
    if (close(fd) != 0) {
        rc = lathe_error(LATHE_EIO, "cannot write %s: %s", tmp, strerror(errno));
        unlink(tmp);
        goto out;
    }
    if (rename(tmp, path) != 0) {
        rc = lathe_error(LATHE_EIO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        unlink(tmp);
        goto out;
    }
    fsync_parent(path);
out:
    free(tmp);
    free(header);
    return rc;
}
