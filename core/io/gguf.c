/* core/io/gguf.c — GGUF reader (mmap, validated at open).
 *
 * Format: ggml-org/ggml docs/gguf.md (formats.md §8). The checks mirror
 * those of ggml's own gguf.cpp reader: known value and tensor types, at most
 * four dimensions, element counts and byte sizes without overflow, rows that
 * are whole blocks, offsets aligned to general.alignment and inside the data
 * section, unique keys and tensor names. Counts are bounded by the bytes
 * left in the file before anything is allocated, so a corrupt count cannot
 * make us allocate gigabytes. The second half of the file imports a llama
 * GGUF into the Hugging Face layout (lathe_gguf_to_hf, used by
 * `lathe convert gguf`). */
#include "io/gguf.h"

#include <lathe/status.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_DEFAULT_ALIGNMENT 32

struct lathe_gguf {
    char *path;
    const uint8_t *map;
    uint64_t size;
    uint32_t version;
    uint64_t alignment;
    uint64_t data_start;
    size_t n_kv;
    struct lathe_gguf_kv *kv;
    size_t n_tensors;
    struct lathe_gguf_tensor *tensors;
};

/* A bounds-checked cursor over the mapping. Every read names what it was
 * reading, so a truncated file says where it ends. */
struct cur {
    const struct lathe_gguf *g;
    uint64_t pos;
};

static int trunc_err(const struct cur *c, uint64_t need, const char *what)
{
    return lathe_error(LATHE_EINVAL,
                       "%s: truncated or corrupt GGUF file: %s needs %llu bytes at offset %llu but the file has "
                       "%llu bytes",
                       c->g->path, what, (unsigned long long)need, (unsigned long long)c->pos,
                       (unsigned long long)c->g->size);
}

static uint64_t remaining(const struct cur *c)
{
    return c->g->size - c->pos;
}

static int rd_bytes(struct cur *c, uint64_t n, const uint8_t **p, const char *what)
{
    if (n > remaining(c))
        return trunc_err(c, n, what);
    *p = c->g->map + c->pos;
    c->pos += n;
    return LATHE_OK;
}

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static int rd_u32(struct cur *c, uint32_t *v, const char *what)
{
    const uint8_t *p;
    int rc = rd_bytes(c, 4, &p, what);
    if (rc == LATHE_OK)
        *v = (uint32_t)le(p, 4);
    return rc;
}

static int rd_u64(struct cur *c, uint64_t *v, const char *what)
{
    const uint8_t *p;
    int rc = rd_bytes(c, 8, &p, what);
    if (rc == LATHE_OK)
        *v = le(p, 8);
    return rc;
}

static int rd_str(struct cur *c, struct lathe_gguf_str *s, const char *what)
{
    uint64_t n;
    const uint8_t *p;
    int rc = rd_u64(c, &n, what);
    if (rc == LATHE_OK)
        rc = rd_bytes(c, n, &p, what);
    if (rc == LATHE_OK) {
        s->ptr = (const char *)p;
        s->len = n;
    }
    return rc;
}

static char *str_dup(const struct lathe_gguf_str *s)
{
    char *d = malloc(s->len + 1);
    if (d) {
        memcpy(d, s->ptr, s->len);
        d[s->len] = '\0';
    }
    return d;
}

static const char *vtype_name(uint32_t t)
{
    static const char *names[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                  "bool", "string", "array", "u64", "i64", "f64"};
    return t < LATHE_GGUF_VTYPE_COUNT ? names[t] : "unknown";
}

/* Byte size of a scalar type; 0 for string and array. */
static unsigned vtype_size(uint32_t t)
{
    static const unsigned sz[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return t < LATHE_GGUF_VTYPE_COUNT ? sz[t] : 0;
}

static void scalar_decode(struct lathe_gguf_kv *kv, const uint8_t *p)
{
    uint64_t raw = le(p, (int)vtype_size(kv->type));
    switch (kv->type) {
    case LATHE_GGUF_U8:
    case LATHE_GGUF_U16:
    case LATHE_GGUF_U32:
    case LATHE_GGUF_U64:
    case LATHE_GGUF_BOOL:
        kv->u = raw;
        kv->i = raw > INT64_MAX ? -1 : (int64_t)raw;
        kv->f = (double)raw;
        break;
    case LATHE_GGUF_I8:
        kv->i = (int8_t)raw;
        break;
    case LATHE_GGUF_I16:
        kv->i = (int16_t)raw;
        break;
    case LATHE_GGUF_I32:
        kv->i = (int32_t)raw;
        break;
    case LATHE_GGUF_I64:
        kv->i = (int64_t)raw;
        break;
    case LATHE_GGUF_F32: {
        uint32_t b = (uint32_t)raw;
        float f;
        memcpy(&f, &b, 4);
        kv->f = f;
        break;
    }
    case LATHE_GGUF_F64:
        memcpy(&kv->f, &raw, 8);
        break;
    default:
        break;
    }
    if (kv->type == LATHE_GGUF_I8 || kv->type == LATHE_GGUF_I16 || kv->type == LATHE_GGUF_I32 ||
        kv->type == LATHE_GGUF_I64) {
        kv->u = kv->i < 0 ? 0 : (uint64_t)kv->i;
        kv->f = (double)kv->i;
    }
}

static int read_kv(struct cur *c, struct lathe_gguf_kv *kv, size_t idx)
{
    struct lathe_gguf_str key;
    uint32_t type;
    char what[128];
    snprintf(what, sizeof what, "metadata key %zu", idx);
    int rc = rd_str(c, &key, what);
    if (rc != LATHE_OK)
        return rc;
    if (!(kv->key = str_dup(&key)))
        return lathe_error(LATHE_ENOMEM, "%s: out of memory reading metadata", c->g->path);
    snprintf(what, sizeof what, "the value of metadata key '%.60s'", kv->key);
    if ((rc = rd_u32(c, &type, what)) != LATHE_OK)
        return rc;
    if (type >= LATHE_GGUF_VTYPE_COUNT)
        return lathe_error(LATHE_EINVAL, "%s: metadata key '%s' has unknown value type %u (corrupt file?)",
                           c->g->path, kv->key, type);
    kv->type = (enum lathe_gguf_vtype)type;
    const uint8_t *p;
    if (type == LATHE_GGUF_STRING)
        return rd_str(c, &kv->s, what);
    if (type != LATHE_GGUF_ARRAY) {
        if ((rc = rd_bytes(c, vtype_size(type), &p, what)) == LATHE_OK)
            scalar_decode(kv, p);
        return rc;
    }
    uint32_t et;
    uint64_t n;
    if ((rc = rd_u32(c, &et, what)) != LATHE_OK || (rc = rd_u64(c, &n, what)) != LATHE_OK)
        return rc;
    if (et >= LATHE_GGUF_VTYPE_COUNT)
        return lathe_error(LATHE_EINVAL, "%s: metadata array '%s' has unknown element type %u (corrupt file?)",
                           c->g->path, kv->key, et);
    if (et == LATHE_GGUF_ARRAY)
        return lathe_error(LATHE_EUNSUPPORTED, "%s: metadata key '%s' is an array of arrays, which is not supported",
                           c->g->path, kv->key);
    kv->arr_type = (enum lathe_gguf_vtype)et;
    kv->arr_n = n;
    if (et != LATHE_GGUF_STRING) {
        uint64_t es = vtype_size(et);
        if (n > remaining(c) / es)
            return lathe_error(LATHE_EINVAL,
                               "%s: metadata array '%s' claims %llu elements of %s, more than the %llu bytes left "
                               "(truncated or corrupt file)",
                               c->g->path, kv->key, (unsigned long long)n, vtype_name(et),
                               (unsigned long long)remaining(c));
        rc = rd_bytes(c, n * es, &kv->arr_raw, what);
        return rc;
    }
    /* Each string takes at least its 8-byte length. */
    if (n > remaining(c) / 8)
        return lathe_error(LATHE_EINVAL,
                           "%s: metadata array '%s' claims %llu strings, more than the %llu bytes left can hold "
                           "(truncated or corrupt file)",
                           c->g->path, kv->key, (unsigned long long)n, (unsigned long long)remaining(c));
    struct lathe_gguf_str *s = calloc(n ? n : 1, sizeof *s);
    if (!s)
        return lathe_error(LATHE_ENOMEM, "%s: out of memory for the %llu strings of '%s'", c->g->path,
                           (unsigned long long)n, kv->key);
    kv->arr_str = s;
    kv->arr_raw = c->g->map + c->pos;
    for (uint64_t i = 0; i < n; i++) {
        snprintf(what, sizeof what, "string %llu of metadata array '%.60s'", (unsigned long long)i, kv->key);
        if ((rc = rd_str(c, &s[i], what)) != LATHE_OK)
            return rc;
    }
    return LATHE_OK;
}

static int read_tensor_info(struct cur *c, struct lathe_gguf_tensor *t, size_t idx)
{
    struct lathe_gguf_str name;
    char what[128];
    snprintf(what, sizeof what, "tensor info %zu", idx);
    int rc = rd_str(c, &name, what);
    if (rc != LATHE_OK)
        return rc;
    if (!(t->name = str_dup(&name)))
        return lathe_error(LATHE_ENOMEM, "%s: out of memory reading tensor infos", c->g->path);
    const char *path = c->g->path;
    snprintf(what, sizeof what, "the info of tensor '%.80s'", t->name);
    uint32_t nd;
    if ((rc = rd_u32(c, &nd, what)) != LATHE_OK)
        return rc;
    if (nd > LATHE_GGUF_MAX_DIMS)
        return lathe_error(LATHE_EINVAL, "%s: tensor '%s' has %u dimensions; GGUF allows at most %d", path, t->name,
                           nd, LATHE_GGUF_MAX_DIMS);
    t->n_dims = (int)nd;
    uint64_t nelem = 1;
    for (int d = 0; d < LATHE_GGUF_MAX_DIMS; d++)
        t->ne[d] = 1;
    for (uint32_t d = 0; d < nd; d++) {
        if ((rc = rd_u64(c, &t->ne[d], what)) != LATHE_OK)
            return rc;
        /* ggml keeps dims as int64_t. */
        if (t->ne[d] > (uint64_t)INT64_MAX || (t->ne[d] && nelem > (uint64_t)INT64_MAX / t->ne[d]))
            return lathe_error(LATHE_EINVAL, "%s: tensor '%s': dimension %u (%llu) makes the element count overflow",
                               path, t->name, d, (unsigned long long)t->ne[d]);
        nelem *= t->ne[d];
    }
    t->nelem = nelem;
    if ((rc = rd_u32(c, &t->type, what)) != LATHE_OK)
        return rc;
    uint64_t be, bb;
    if (!lathe_ggml_type_size(t->type, &be, &bb))
        return lathe_error(LATHE_EINVAL, "%s: tensor '%s' has unknown ggml type %u (corrupt file, or a newer type)",
                           path, t->name, t->type);
    if (t->ne[0] % be != 0)
        return lathe_error(LATHE_EINVAL, "%s: tensor '%s': row length %llu is not a multiple of the %s block size %llu",
                           path, t->name, (unsigned long long)t->ne[0], lathe_ggml_type_name(t->type),
                           (unsigned long long)be);
    /* nelem / be blocks, each bb bytes: nelem <= INT64_MAX and bb < 2^9,
     * yet check anyway rather than reason about it. */
    uint64_t blocks = nelem / be;
    if (blocks > UINT64_MAX / bb)
        return lathe_error(LATHE_EINVAL, "%s: tensor '%s': byte size overflows", path, t->name);
    t->nbytes = blocks * bb;
    return rd_u64(c, &t->offset, what);
}

static int gguf_parse(struct lathe_gguf *g)
{
    struct cur c = {g, 0};
    const uint8_t *magic = NULL;
    int rc = rd_bytes(&c, 4, &magic, "the magic");
    if (rc != LATHE_OK)
        return rc;
    if (memcmp(magic, "GGUF", 4) != 0) {
        char m[20];
        for (int i = 0; i < 4; i++)
            m[i] = magic[i] >= 0x20 && magic[i] < 0x7f ? (char)magic[i] : '?';
        m[4] = '\0';
        return lathe_error(LATHE_EINVAL, "%s: not a GGUF file (magic '%s', expected 'GGUF')", g->path, m);
    }
    if ((rc = rd_u32(&c, &g->version, "the version")) != LATHE_OK)
        return rc;
    if (g->version != 2 && g->version != 3) {
        if (g->version == 1)
            return lathe_error(LATHE_EUNSUPPORTED, "%s: GGUF version 1 is not supported; re-convert the model with a "
                                                   "current llama.cpp",
                               g->path);
        return lathe_error(LATHE_EUNSUPPORTED,
                           "%s: GGUF version %u is not supported (2 and 3 are; a byte-swapped version means a "
                           "big-endian file)",
                           g->path, g->version);
    }
    uint64_t nt, nkv;
    if ((rc = rd_u64(&c, &nt, "the tensor count")) != LATHE_OK || (rc = rd_u64(&c, &nkv, "the key count")) != LATHE_OK)
        return rc;
    /* A key/value pair takes at least 8 (key length) + 4 (type) + 1 bytes,
     * a tensor info at least 8 (name length) + 4 + 4 (type) + 8 (offset). */
    if (nkv > remaining(&c) / 13)
        return lathe_error(LATHE_EINVAL, "%s: metadata key count %llu is impossible for a file of %llu bytes (truncated or corrupt)",
                           g->path, (unsigned long long)nkv, (unsigned long long)g->size);
    if (nt > remaining(&c) / 24)
        return lathe_error(LATHE_EINVAL, "%s: tensor count %llu is impossible for a file of %llu bytes (truncated or corrupt)",
                           g->path, (unsigned long long)nt, (unsigned long long)g->size);
    g->kv = calloc(nkv ? nkv : 1, sizeof *g->kv);
    g->tensors = calloc(nt ? nt : 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors)
        return lathe_error(LATHE_ENOMEM, "%s: out of memory", g->path);
    for (size_t i = 0; i < nkv; i++) {
        g->n_kv = i + 1; /* so close frees what was read */
        if ((rc = read_kv(&c, &g->kv[i], i)) != LATHE_OK)
            return rc;
        for (size_t j = 0; j < i; j++)
            if (strcmp(g->kv[j].key, g->kv[i].key) == 0)
                return lathe_error(LATHE_EINVAL, "%s: metadata key '%s' appears twice", g->path, g->kv[i].key);
    }
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const struct lathe_gguf_kv *al = lathe_gguf_kv_find(g, "general.alignment");
    if (al) {
        if (al->type != LATHE_GGUF_U32)
            return lathe_error(LATHE_EINVAL, "%s: general.alignment is a %s; it must be a u32", g->path,
                               vtype_name(al->type));
        if (al->u == 0 || (al->u & (al->u - 1)) != 0)
            return lathe_error(LATHE_EINVAL, "%s: general.alignment %llu is not a power of two", g->path,
                               (unsigned long long)al->u);
        g->alignment = al->u;
    }
    for (size_t i = 0; i < nt; i++) {
        g->n_tensors = i + 1;
        if ((rc = read_tensor_info(&c, &g->tensors[i], i)) != LATHE_OK)
            return rc;
    }
    /* Duplicate names: quadratic but only over names, once. */
    for (size_t i = 0; i < nt; i++)
        for (size_t j = i + 1; j < nt; j++)
            if (strcmp(g->tensors[i].name, g->tensors[j].name) == 0)
                return lathe_error(LATHE_EINVAL, "%s: tensor '%s' appears twice", g->path, g->tensors[i].name);
    /* The data section starts at the next multiple of the alignment. */
    uint64_t pad = (g->alignment - c.pos % g->alignment) % g->alignment;
    g->data_start = c.pos + pad;
    uint64_t data_size = g->data_start <= g->size ? g->size - g->data_start : 0;
    for (size_t i = 0; i < nt; i++) {
        struct lathe_gguf_tensor *t = &g->tensors[i];
        if (t->offset % g->alignment != 0)
            return lathe_error(LATHE_EINVAL, "%s: tensor '%s': offset %llu is not a multiple of the alignment %llu",
                               g->path, t->name, (unsigned long long)t->offset, (unsigned long long)g->alignment);
        if (t->offset > data_size || t->nbytes > data_size - t->offset)
            return lathe_error(LATHE_EINVAL,
                               "%s: tensor '%s': bytes %llu..%llu of the data section lie past its end (%llu bytes; "
                               "the file is truncated or corrupt)",
                               g->path, t->name, (unsigned long long)t->offset,
                               (unsigned long long)(t->offset + (t->nbytes < UINT64_MAX - t->offset ? t->nbytes : 0)),
                               (unsigned long long)data_size);
        t->data = g->map + g->data_start + t->offset;
    }
    return LATHE_OK;
}

int lathe_gguf_open(struct lathe_gguf **out, const char *path)
{
    *out = NULL;
    struct lathe_gguf *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(path))) {
        free(g);
        return lathe_error(LATHE_ENOMEM, "%s: out of memory", path);
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        lathe_gguf_close(g);
        return lathe_error(LATHE_EIO, "%s: cannot open: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        lathe_gguf_close(g);
        return lathe_error(LATHE_EIO, "%s: not a regular file", path);
    }
    g->size = (uint64_t)st.st_size;
    if (g->size > 0) {
        void *m = mmap(NULL, (size_t)g->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            close(fd);
            g->size = 0;
            lathe_gguf_close(g);
            return lathe_error(LATHE_EIO, "%s: cannot map: %s", path, strerror(e));
        }
        g->map = m;
    }
    close(fd);
    int rc = gguf_parse(g);
    if (rc != LATHE_OK) {
        lathe_gguf_close(g);
        return rc;
    }
    *out = g;
    return LATHE_OK;
}

void lathe_gguf_close(struct lathe_gguf *g)
{
    if (!g)
        return;
    for (size_t i = 0; i < g->n_kv; i++) {
        free((void *)g->kv[i].key);
        free((void *)g->kv[i].arr_str);
    }
    for (size_t i = 0; i < g->n_tensors; i++)
        free((void *)g->tensors[i].name);
    free(g->kv);
    free(g->tensors);
    if (g->map)
        munmap((void *)g->map, (size_t)g->size);
    free(g->path);
    free(g);
}

const char *lathe_gguf_path(const struct lathe_gguf *g)
{
    return g->path;
}
uint32_t lathe_gguf_version(const struct lathe_gguf *g)
{
    return g->version;
}
uint64_t lathe_gguf_alignment(const struct lathe_gguf *g)
{
    return g->alignment;
}
uint64_t lathe_gguf_data_offset(const struct lathe_gguf *g)
{
    return g->data_start;
}
size_t lathe_gguf_kv_count(const struct lathe_gguf *g)
{
    return g->n_kv;
}
const struct lathe_gguf_kv *lathe_gguf_kv_at(const struct lathe_gguf *g, size_t i)
{
    return i < g->n_kv ? &g->kv[i] : NULL;
}

const struct lathe_gguf_kv *lathe_gguf_kv_find(const struct lathe_gguf *g, const char *key)
{
    for (size_t i = 0; i < g->n_kv; i++)
        if (strcmp(g->kv[i].key, key) == 0)
            return &g->kv[i];
    return NULL;
}

static int get_kv(const struct lathe_gguf *g, const char *key, const struct lathe_gguf_kv **kv)
{
    *kv = lathe_gguf_kv_find(g, key);
    if (!*kv)
        return lathe_error(LATHE_EINVAL, "%s: metadata key '%s' is missing", g->path, key);
    return LATHE_OK;
}

static int wrong_type(const struct lathe_gguf *g, const struct lathe_gguf_kv *kv, const char *want)
{
    return lathe_error(LATHE_EINVAL, "%s: metadata key '%s' is a %s; expected %s", g->path, kv->key,
                       vtype_name(kv->type), want);
}

static int is_int_type(uint32_t t)
{
    return t <= LATHE_GGUF_I32 || t == LATHE_GGUF_U64 || t == LATHE_GGUF_I64;
}

int lathe_gguf_get_uint(const struct lathe_gguf *g, const char *key, uint64_t *out)
{
    const struct lathe_gguf_kv *kv;
    int rc = get_kv(g, key, &kv);
    if (rc != LATHE_OK)
        return rc;
    if (!is_int_type(kv->type))
        return wrong_type(g, kv, "an integer");
    int is_signed = kv->type == LATHE_GGUF_I8 || kv->type == LATHE_GGUF_I16 || kv->type == LATHE_GGUF_I32 ||
                    kv->type == LATHE_GGUF_I64;
    if (is_signed && kv->i < 0)
        return lathe_error(LATHE_EINVAL, "%s: metadata key '%s' is %lld; it must not be negative", g->path, key,
                           (long long)kv->i);
    *out = kv->u;
    return LATHE_OK;
}

int lathe_gguf_get_float(const struct lathe_gguf *g, const char *key, double *out)
{
    const struct lathe_gguf_kv *kv;
    int rc = get_kv(g, key, &kv);
    if (rc != LATHE_OK)
        return rc;
    if (kv->type != LATHE_GGUF_F32 && kv->type != LATHE_GGUF_F64 && !is_int_type(kv->type))
        return wrong_type(g, kv, "a number");
    *out = kv->f;
    return LATHE_OK;
}

int lathe_gguf_get_bool(const struct lathe_gguf *g, const char *key, int *out)
{
    const struct lathe_gguf_kv *kv;
    int rc = get_kv(g, key, &kv);
    if (rc != LATHE_OK)
        return rc;
    if (kv->type != LATHE_GGUF_BOOL)
        return wrong_type(g, kv, "a bool");
    *out = kv->u != 0;
    return LATHE_OK;
}

int lathe_gguf_get_str(const struct lathe_gguf *g, const char *key, struct lathe_gguf_str *out)
{
    const struct lathe_gguf_kv *kv;
    int rc = get_kv(g, key, &kv);
    if (rc != LATHE_OK)
        return rc;
    if (kv->type != LATHE_GGUF_STRING)
        return wrong_type(g, kv, "a string");
    *out = kv->s;
    return LATHE_OK;
}

int lathe_gguf_get_arr(const struct lathe_gguf *g, const char *key, enum lathe_gguf_vtype elem,
                       const struct lathe_gguf_kv **out)
{
    int rc = get_kv(g, key, out);
    if (rc != LATHE_OK)
        return rc;
    if ((*out)->type != LATHE_GGUF_ARRAY)
        return wrong_type(g, *out, "an array");
    if (elem != LATHE_GGUF_VTYPE_COUNT && (*out)->arr_type != elem &&
        !(elem == LATHE_GGUF_I64 && is_int_type((*out)->arr_type)))
        return lathe_error(LATHE_EINVAL, "%s: metadata array '%s' holds %s; expected %s", g->path, key,
                           vtype_name((*out)->arr_type), elem == LATHE_GGUF_I64 ? "integers" : vtype_name(elem));
    return LATHE_OK;
}

int64_t lathe_gguf_arr_int(const struct lathe_gguf_kv *kv, uint64_t i)
{
    if (kv->type != LATHE_GGUF_ARRAY || i >= kv->arr_n || !is_int_type(kv->arr_type))
        return 0;
    unsigned es = vtype_size(kv->arr_type);
    uint64_t raw = le(kv->arr_raw + i * es, (int)es);
    switch (kv->arr_type) {
    case LATHE_GGUF_I8:
        return (int8_t)raw;
    case LATHE_GGUF_I16:
        return (int16_t)raw;
    case LATHE_GGUF_I32:
        return (int32_t)raw;
    default:
        return (int64_t)raw;
    }
}

size_t lathe_gguf_tensor_count(const struct lathe_gguf *g)
{
    return g->n_tensors;
}
const struct lathe_gguf_tensor *lathe_gguf_tensor_at(const struct lathe_gguf *g, size_t i)
{
    return i < g->n_tensors ? &g->tensors[i] : NULL;
}
const struct lathe_gguf_tensor *lathe_gguf_tensor_find(const struct lathe_gguf *g, const char *name)
{
    for (size_t i = 0; i < g->n_tensors; i++)
        if (strcmp(g->tensors[i].name, name) == 0)
            return &g->tensors[i];
    return NULL;
}

/* ======================================================================== *
 * Import of a llama-architecture GGUF into a Hugging Face model directory.
 *
 * Sources: llama.cpp convert_hf_to_gguf.py (LlamaModel: the tensor names,
 * the metadata keys, the q/k `permute`), transformers
 * modeling_gguf_pytorch_utils.py (the reverse mapping and
 * `reverse_permute_weights`), llama.cpp llama-vocab.cpp (what each
 * tokenizer.ggml.pre name means). formats.md §3 and §8.
 * ======================================================================== */

#include "util/strutil.h"

#include <lathe/weights.h>

#include <jansson.h>

int lathe_gguf_unpermute_rows(const float *w, float *out, uint64_t rows, uint64_t cols, uint64_t n_head)
{
    if (n_head == 0 || rows % (2 * n_head) != 0)
        return lathe_error(LATHE_EINVAL, "cannot un-permute %llu rows over %llu heads: not a multiple of 2 x heads",
                           (unsigned long long)rows, (unsigned long long)n_head);
    /* GGUF row h·d + 2i + j holds Hugging Face row h·d + j·(d/2) + i. */
    const uint64_t d = rows / n_head, half = d / 2;
    for (uint64_t h = 0; h < n_head; h++)
        for (uint64_t i = 0; i < half; i++)
            for (uint64_t j = 0; j < 2; j++)
                memcpy(out + (h * d + j * half + i) * cols, w + (h * d + 2 * i + j) * cols, cols * sizeof *w);
    return LATHE_OK;
}

/* ---- hyper-parameters ---------------------------------------------------- */
struct llama_hp {
    uint64_t n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim, n_ctx, n_vocab;
    double eps, theta, rope_factor;
    int rope_linear;
};

static int hp_uint(const struct lathe_gguf *g, const char *key, uint64_t def, int required, uint64_t *out)
{
    if (!required && !lathe_gguf_kv_find(g, key)) {
        *out = def;
        return LATHE_OK;
    }
    int rc = lathe_gguf_get_uint(g, key, out);
    if (rc == LATHE_OK && (*out == 0 || *out > (uint64_t)1 << 40))
        rc = lathe_error(LATHE_EINVAL, "%s: metadata key '%s' is %llu, which is not a usable size", g->path, key,
                         (unsigned long long)*out);
    return rc;
}

static int read_hparams(const struct lathe_gguf *g, struct llama_hp *hp)
{
    int rc;
    memset(hp, 0, sizeof *hp);
    if ((rc = hp_uint(g, "llama.block_count", 0, 1, &hp->n_layer)) ||
        (rc = hp_uint(g, "llama.embedding_length", 0, 1, &hp->n_embd)) ||
        (rc = hp_uint(g, "llama.feed_forward_length", 0, 1, &hp->n_ff)) ||
        (rc = hp_uint(g, "llama.attention.head_count", 0, 1, &hp->n_head)) ||
        (rc = hp_uint(g, "llama.attention.head_count_kv", hp->n_head, 0, &hp->n_head_kv)) ||
        (rc = hp_uint(g, "llama.context_length", 2048, 0, &hp->n_ctx)))
        return rc;
    if (hp->n_embd % hp->n_head != 0 && !lathe_gguf_kv_find(g, "llama.attention.key_length"))
        return lathe_error(LATHE_EINVAL, "%s: embedding_length %llu is not a multiple of head_count %llu", g->path,
                           (unsigned long long)hp->n_embd, (unsigned long long)hp->n_head);
    if ((rc = hp_uint(g, "llama.attention.key_length", hp->n_embd / hp->n_head, 0, &hp->head_dim)))
        return rc;
    uint64_t vlen, rot;
    if ((rc = hp_uint(g, "llama.attention.value_length", hp->head_dim, 0, &vlen)) ||
        (rc = hp_uint(g, "llama.rope.dimension_count", hp->head_dim, 0, &rot)))
        return rc;
    if (vlen != hp->head_dim)
        return lathe_error(LATHE_EUNSUPPORTED, "%s: attention.key_length %llu differs from value_length %llu; "
                           "Llama needs them equal", g->path, (unsigned long long)hp->head_dim,
                           (unsigned long long)vlen);
    if (rot != hp->head_dim)
        return lathe_error(LATHE_EUNSUPPORTED, "%s: llama.rope.dimension_count %llu differs from the head size %llu "
                           "(partial rotary embeddings are not Llama)", g->path, (unsigned long long)rot,
                           (unsigned long long)hp->head_dim);
    if (hp->head_dim % 2 != 0)
        return lathe_error(LATHE_EINVAL, "%s: head size %llu is odd; RoPE needs an even head size", g->path,
                           (unsigned long long)hp->head_dim);
    if (hp->n_head % hp->n_head_kv != 0)
        return lathe_error(LATHE_EINVAL, "%s: head_count %llu is not a multiple of head_count_kv %llu", g->path,
                           (unsigned long long)hp->n_head, (unsigned long long)hp->n_head_kv);
    if ((rc = lathe_gguf_get_float(g, "llama.attention.layer_norm_rms_epsilon", &hp->eps)))
        return rc;
    hp->theta = 10000.0;
    if (lathe_gguf_kv_find(g, "llama.rope.freq_base") && (rc = lathe_gguf_get_float(g, "llama.rope.freq_base", &hp->theta)))
        return rc;
    const struct lathe_gguf_kv *st = lathe_gguf_kv_find(g, "llama.rope.scaling.type");
    if (st) {
        struct lathe_gguf_str s;
        if ((rc = lathe_gguf_get_str(g, "llama.rope.scaling.type", &s)))
            return rc;
        if (s.len == 6 && memcmp(s.ptr, "linear", 6) == 0) {
            if ((rc = lathe_gguf_get_float(g, "llama.rope.scaling.factor", &hp->rope_factor)))
                return rc;
            hp->rope_linear = 1;
        } else if (!(s.len == 4 && memcmp(s.ptr, "none", 4) == 0)) {
            return lathe_error(LATHE_EUNSUPPORTED, "%s: llama.rope.scaling.type '%.*s' is not supported (none, linear)",
                               g->path, (int)(s.len > 64 ? 64 : s.len), s.ptr);
        }
    }
    return LATHE_OK;
}

/* ---- tensor names -------------------------------------------------------- */
enum { PERM_NONE = 0, PERM_Q, PERM_K };

static const struct {
    const char *gguf, *hf;
    int perm;
} blk_names[] = {
    {"attn_norm", "input_layernorm", PERM_NONE},    {"attn_q", "self_attn.q_proj", PERM_Q},
    {"attn_k", "self_attn.k_proj", PERM_K},         {"attn_v", "self_attn.v_proj", PERM_NONE},
    {"attn_output", "self_attn.o_proj", PERM_NONE}, {"ffn_norm", "post_attention_layernorm", PERM_NONE},
    {"ffn_gate", "mlp.gate_proj", PERM_NONE},       {"ffn_up", "mlp.up_proj", PERM_NONE},
    {"ffn_down", "mlp.down_proj", PERM_NONE},
};
#define N_BLK_NAMES (sizeof blk_names / sizeof blk_names[0])

struct mapped {
    const struct lathe_gguf_tensor *src;
    char hf[128];
    int perm;
    long order;       /* canonical Hugging Face order */
    int64_t rows, cols; /* expected [rows, cols]; cols = 0 for a vector */
};

/* Map one GGUF name; 0 if it is not a llama tensor name. */
static int map_name(const char *name, const struct llama_hp *hp, uint64_t n_vocab, struct mapped *m)
{
    const char *dot = strrchr(name, '.');
    if (!dot || (strcmp(dot, ".weight") != 0 && strcmp(dot, ".bias") != 0))
        return 0;
    int bias = strcmp(dot, ".bias") == 0;
    size_t stem = (size_t)(dot - name);
    int64_t H = (int64_t)hp->n_embd, I = (int64_t)hp->n_ff, V = (int64_t)n_vocab;
    int64_t Q = (int64_t)(hp->n_head * hp->head_dim), KV = (int64_t)(hp->n_head_kv * hp->head_dim);
    m->perm = PERM_NONE;
    if (strncmp(name, "blk.", 4) == 0) {
        char *end;
        errno = 0;
        unsigned long long L = strtoull(name + 4, &end, 10);
        if (end == name + 4 || *end != '.' || errno || L >= hp->n_layer || !(name[4] >= '0' && name[4] <= '9'))
            return 0;
        const char *part = end + 1;
        size_t plen = (size_t)(dot - part);
        for (size_t k = 0; k < N_BLK_NAMES; k++) {
            if (strlen(blk_names[k].gguf) != plen || memcmp(part, blk_names[k].gguf, plen) != 0)
                continue;
            snprintf(m->hf, sizeof m->hf, "model.layers.%llu.%s%s", L, blk_names[k].hf, dot);
            m->perm = blk_names[k].perm;
            m->order = ((long)L + 1) * 100 + (long)k * 2 + bias;
            int64_t r, c;
            switch (k) {
            case 0: case 5: r = H; c = 0; break;
            case 1: r = Q; c = H; break;
            case 2: case 3: r = KV; c = H; break;
            case 4: r = H; c = Q; break;
            case 6: case 7: r = I; c = H; break;
            default: r = H; c = I; break;
            }
            m->rows = r;
            m->cols = bias ? 0 : c;
            return 1;
        }
        return 0;
    }
    static const struct {
        const char *gguf, *hf;
        long order;
        int vec;
    } top[] = {{"token_embd", "model.embed_tokens", 0, 0}, {"output_norm", "model.norm", 1000000000L, 1},
               {"output", "lm_head", 1000000001L, 0}};
    for (size_t k = 0; k < 3; k++) {
        if (strlen(top[k].gguf) != stem || memcmp(name, top[k].gguf, stem) != 0 || bias)
            continue;
        snprintf(m->hf, sizeof m->hf, "%s.weight", top[k].hf);
        m->order = top[k].order;
        m->rows = top[k].vec ? H : V;
        m->cols = top[k].vec ? 0 : H;
        return 1;
    }
    return 0;
}

static int cmp_mapped(const void *a, const void *b)
{
    long x = ((const struct mapped *)a)->order, y = ((const struct mapped *)b)->order;
    return (x > y) - (x < y);
}

/* ---- JSON helpers -------------------------------------------------------- */

/* The shortest decimal that reads back as the same f32 (metadata floats are
 * f32: 1e-05, not 9.999999747378752e-06). */
static json_t *json_f32(double v)
{
    float f = (float)v;
    char buf[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, (double)f);
        if (strtof(buf, NULL) == f)
            break;
    }
    return json_real(strtod(buf, NULL));
}

static int write_json(const char *dir, const char *name, json_t *root)
{
    char *path = lathe_str_printf("%s/%s", dir, name), *tmp = lathe_str_printf("%s/%s.tmp", dir, name);
    int rc = LATHE_OK;
    if (!root || !path || !tmp) {
        rc = lathe_error(LATHE_ENOMEM, "out of memory writing %s/%s", dir, name);
    } else if (json_dump_file(root, tmp, JSON_INDENT(2) | JSON_REAL_PRECISION(15)) != 0) {
        rc = lathe_error(LATHE_EIO, "cannot write %s: %s", tmp, strerror(errno));
    } else {
        FILE *f = fopen(tmp, "a");
        if (!f || fputc('\n', f) == EOF || fclose(f) != 0)
            rc = lathe_error(LATHE_EIO, "cannot write %s: %s", tmp, strerror(errno));
        else if (rename(tmp, path) != 0)
            rc = lathe_error(LATHE_EIO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    }
    if (rc != LATHE_OK && tmp)
        unlink(tmp);
    free(path);
    free(tmp);
    return rc;
}

/* ---- tokenizer ----------------------------------------------------------- */

/* llama.cpp token types (llama.h, enum llama_token_type). */
enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER_DEFINED = 4, TT_UNUSED = 5, TT_BYTE = 6 };

/* What each tokenizer.ggml.pre name means, from llama-vocab.cpp's table of
 * regexes, written as the tokenizers-library pre-tokenizer that the model's
 * own tokenizer.json uses. */
#define GPT2_REGEX "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define LLAMA3_REGEX                                                                                                \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|" \
    "\\s+(?!\\S)|\\s+"
#define QWEN2_REGEX                                                                                                 \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"   \
    "\\s+(?!\\S)|\\s+"

enum pre_family { PRE_GPT2, PRE_DIGITS_GPT2, PRE_LLAMA3, PRE_QWEN2 };
static const struct {
    const char *name;
    enum pre_family fam;
} pre_names[] = {
    {"gpt2", PRE_GPT2},           {"mpt", PRE_GPT2},          {"olmo", PRE_GPT2},
    {"jais", PRE_GPT2},           {"starcoder", PRE_DIGITS_GPT2}, {"refact", PRE_DIGITS_GPT2},
    {"command-r", PRE_DIGITS_GPT2}, {"smollm", PRE_DIGITS_GPT2}, {"codeshell", PRE_DIGITS_GPT2},
    {"llama-bpe", PRE_LLAMA3},    {"llama3", PRE_LLAMA3},     {"qwen2", PRE_QWEN2},
    {"deepseek-r1-qwen", PRE_QWEN2},
};

static json_t *split_regex(const char *re)
{
    return json_pack("{s:s,s:{s:s},s:s,s:b}", "type", "Split", "pattern", "Regex", re, "behavior", "Isolated",
                     "invert", 0);
}

static json_t *byte_level(int use_regex)
{
    return json_pack("{s:s,s:b,s:b,s:b}", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1,
                     "use_regex", use_regex);
}

static json_t *make_pre_tokenizer(enum pre_family fam)
{
    switch (fam) {
    case PRE_GPT2:
        return byte_level(1);
    case PRE_DIGITS_GPT2:
        /* llama.cpp splits "\p{N}" first; the model's tokenizer.json has
         * Digits(individual_digits=true), which is the same split (Rust's
         * char::is_numeric is \p{N}) written as a regex Split. */
        return json_pack("{s:s,s:[o,o]}", "type", "Sequence", "pretokenizers", split_regex("\\p{N}"), byte_level(1));
    case PRE_LLAMA3:
        return json_pack("{s:s,s:[o,o]}", "type", "Sequence", "pretokenizers", split_regex(LLAMA3_REGEX),
                         byte_level(0));
    case PRE_QWEN2:
        return json_pack("{s:s,s:[o,o]}", "type", "Sequence", "pretokenizers", split_regex(QWEN2_REGEX),
                         byte_level(0));
    }
    return NULL;
}

struct tok_meta {
    const struct lathe_gguf_kv *tokens, *types, *merges;
    int64_t bos, eos, pad, unk;
    int add_bos, add_eos;
    struct lathe_gguf_str chat_template;
    int has_template;
    enum pre_family pre;
};

static int64_t opt_id(const struct lathe_gguf *g, const char *key, int *rc)
{
    uint64_t v;
    if (*rc != LATHE_OK || !lathe_gguf_kv_find(g, key))
        return -1;
    *rc = lathe_gguf_get_uint(g, key, &v);
    if (*rc == LATHE_OK && v >= (uint64_t)INT32_MAX)
        *rc = lathe_error(LATHE_EINVAL, "%s: %s %llu is out of range", g->path, key, (unsigned long long)v);
    return (int64_t)v;
}

static int opt_bool(const struct lathe_gguf *g, const char *key, int def, int *out)
{
    *out = def;
    return lathe_gguf_kv_find(g, key) ? lathe_gguf_get_bool(g, key, out) : LATHE_OK;
}

static int read_tok_meta(const struct lathe_gguf *g, struct tok_meta *tm)
{
    memset(tm, 0, sizeof *tm);
    struct lathe_gguf_str model, pre;
    int rc = lathe_gguf_get_str(g, "tokenizer.ggml.model", &model);
    if (rc)
        return rc;
    if (!(model.len == 4 && memcmp(model.ptr, "gpt2", 4) == 0))
        return lathe_error(LATHE_EUNSUPPORTED, "%s: tokenizer.ggml.model '%.*s' is not supported; only 'gpt2' "
                           "(byte-level BPE) converts to tokenizer.json",
                           g->path, (int)(model.len > 64 ? 64 : model.len), model.ptr);
    if ((rc = lathe_gguf_get_str(g, "tokenizer.ggml.pre", &pre)))
        return rc;
    size_t k;
    for (k = 0; k < sizeof pre_names / sizeof pre_names[0]; k++)
        if (strlen(pre_names[k].name) == pre.len && memcmp(pre_names[k].name, pre.ptr, pre.len) == 0)
            break;
    if (k == sizeof pre_names / sizeof pre_names[0])
        return lathe_error(LATHE_EUNSUPPORTED, "%s: tokenizer.ggml.pre '%.*s' is not a pre-tokenizer lathe knows "
                           "(gpt2, mpt, olmo, jais, starcoder, refact, command-r, smollm, codeshell, llama-bpe, "
                           "qwen2, deepseek-r1-qwen)",
                           g->path, (int)(pre.len > 64 ? 64 : pre.len), pre.ptr);
    tm->pre = pre_names[k].fam;
    if ((rc = lathe_gguf_get_arr(g, "tokenizer.ggml.tokens", LATHE_GGUF_STRING, &tm->tokens)) ||
        (rc = lathe_gguf_get_arr(g, "tokenizer.ggml.merges", LATHE_GGUF_STRING, &tm->merges)))
        return rc;
    if (tm->tokens->arr_n == 0 || tm->tokens->arr_n > INT32_MAX)
        return lathe_error(LATHE_EINVAL, "%s: tokenizer.ggml.tokens has %llu entries", g->path,
                           (unsigned long long)tm->tokens->arr_n);
    if (lathe_gguf_kv_find(g, "tokenizer.ggml.token_type")) {
        if ((rc = lathe_gguf_get_arr(g, "tokenizer.ggml.token_type", LATHE_GGUF_I64, &tm->types)))
            return rc;
        if (tm->types->arr_n != tm->tokens->arr_n)
            return lathe_error(LATHE_EINVAL, "%s: tokenizer.ggml.token_type has %llu entries but there are %llu "
                               "tokens", g->path, (unsigned long long)tm->types->arr_n,
                               (unsigned long long)tm->tokens->arr_n);
    }
    tm->bos = opt_id(g, "tokenizer.ggml.bos_token_id", &rc);
    tm->eos = opt_id(g, "tokenizer.ggml.eos_token_id", &rc);
    tm->pad = opt_id(g, "tokenizer.ggml.padding_token_id", &rc);
    tm->unk = opt_id(g, "tokenizer.ggml.unknown_token_id", &rc);
    if (rc)
        return rc;
    const char *idkeys[] = {"bos_token_id", "eos_token_id", "padding_token_id", "unknown_token_id"};
    int64_t ids[] = {tm->bos, tm->eos, tm->pad, tm->unk};
    for (int i = 0; i < 4; i++)
        if (ids[i] >= (int64_t)tm->tokens->arr_n)
            return lathe_error(LATHE_EINVAL, "%s: tokenizer.ggml.%s %lld is past the %llu tokens", g->path,
                               idkeys[i], (long long)ids[i], (unsigned long long)tm->tokens->arr_n);
    if ((rc = opt_bool(g, "tokenizer.ggml.add_bos_token", 0, &tm->add_bos)) ||
        (rc = opt_bool(g, "tokenizer.ggml.add_eos_token", 0, &tm->add_eos)))
        return rc;
    if (tm->add_bos && tm->bos < 0)
        return lathe_error(LATHE_EINVAL, "%s: tokenizer.ggml.add_bos_token is true but there is no bos_token_id",
                           g->path);
    if (lathe_gguf_kv_find(g, "tokenizer.chat_template")) {
        if ((rc = lathe_gguf_get_str(g, "tokenizer.chat_template", &tm->chat_template)))
            return rc;
        tm->has_template = 1;
    }
    return LATHE_OK;
}

/* A NUL-terminated, valid-UTF-8 JSON string of token i, or NULL with an
 * error naming it. */
static json_t *token_json(const struct lathe_gguf *g, const struct lathe_gguf_kv *arr, uint64_t i, const char *what)
{
    const struct lathe_gguf_str *s = &arr->arr_str[i];
    json_t *j = json_stringn(s->ptr, s->len);
    if (!j)
        lathe_error(LATHE_EINVAL, "%s: %s %llu is not valid UTF-8", g->path, what, (unsigned long long)i);
    return j;
}

static int token_type(const struct tok_meta *tm, uint64_t i)
{
    return tm->types ? (int)lathe_gguf_arr_int(tm->types, i) : TT_NORMAL;
}

static int added_token(const struct tok_meta *tm, uint64_t i)
{
    int t = token_type(tm, i);
    return t == TT_CONTROL || t == TT_USER_DEFINED || t == TT_UNKNOWN;
}

static json_t *tok_str(const struct tok_meta *tm, int64_t id)
{
    if (id < 0)
        return json_null();
    const struct lathe_gguf_str *s = &tm->tokens->arr_str[id];
    json_t *j = json_stringn(s->ptr, s->len);
    return j ? j : json_null();
}

static int write_tokenizer(const struct lathe_gguf *g, const struct tok_meta *tm, const char *dir, uint64_t n_ctx,
                           FILE *log)
{
    int rc = LATHE_OK;
    const uint64_t n = tm->tokens->arr_n;
    json_t *vocab = json_object(), *added = json_array(), *merges = json_array(), *decoder_map = json_object();
    char *key = NULL;
    size_t keycap = 0;
    uint64_t dups = 0;
    if (!vocab || !added || !merges || !decoder_map) {
        rc = lathe_error(LATHE_ENOMEM, "out of memory building tokenizer.json");
        goto out;
    }
    for (uint64_t i = 0; i < n && rc == LATHE_OK; i++) {
        const struct lathe_gguf_str *s = &tm->tokens->arr_str[i];
        if (s->len + 1 > keycap) {
            keycap = s->len + 64;
            char *k2 = realloc(key, keycap);
            if (!k2) {
                rc = lathe_error(LATHE_ENOMEM, "out of memory building tokenizer.json");
                break;
            }
            key = k2;
        }
        memcpy(key, s->ptr, s->len);
        key[s->len] = '\0';
        if (memchr(s->ptr, '\0', s->len)) {
            rc = lathe_error(LATHE_EINVAL, "%s: token %llu contains a NUL byte", g->path, (unsigned long long)i);
            break;
        }
        /* A repeated string keeps its first id, as a JSON object can map a
         * string to one id only. */
        if (json_object_get(vocab, key)) {
            dups++;
        } else if (json_object_set_new(vocab, key, json_integer((json_int_t)i)) != 0) {
            rc = lathe_error(LATHE_EINVAL, "%s: token %llu is not valid UTF-8", g->path, (unsigned long long)i);
            break;
        }
        if (added_token(tm, i)) {
            int special = token_type(tm, i) != TT_USER_DEFINED;
            json_t *content = token_json(g, tm->tokens, i, "token");
            if (!content) {
                rc = LATHE_EINVAL;
                break;
            }
            json_t *e = json_pack("{s:I,s:O,s:b,s:b,s:b,s:b,s:b}", "id", (json_int_t)i, "content", content,
                                  "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", !special, "special",
                                  special);
            json_t *d = json_pack("{s:o,s:b,s:b,s:b,s:b,s:b}", "content", content, "lstrip", 0, "normalized",
                                  !special, "rstrip", 0, "single_word", 0, "special", special);
            char idbuf[24];
            snprintf(idbuf, sizeof idbuf, "%llu", (unsigned long long)i);
            if (!e || !d || json_array_append_new(added, e) || json_object_set_new(decoder_map, idbuf, d))
                rc = lathe_error(LATHE_ENOMEM, "out of memory building tokenizer.json");
        }
    }
    if (rc)
        goto out;
    if (dups && log)
        fprintf(log, "note: %llu repeated token strings keep their first id in tokenizer.json\n",
                (unsigned long long)dups);
    /* Merges stay in the legacy "a b" string form, which every tokenizers
     * version reads; GGUF stores them that way. Both sides and the merged
     * token must be in the vocabulary, as tokenizers checks on load. */
    for (uint64_t i = 0; i < tm->merges->arr_n; i++) {
        const struct lathe_gguf_str *s = &tm->merges->arr_str[i];
        /* llama.cpp splits at the first space after the first byte. */
        const char *sp = s->len > 1 ? memchr(s->ptr + 1, ' ', s->len - 1) : NULL;
        size_t la = sp ? (size_t)(sp - s->ptr) : 0, lb = sp ? s->len - la - 1 : 0;
        if (!sp || lb == 0 || memchr(sp + 1, ' ', lb) || s->len + 1 > 4096) {
            rc = lathe_error(LATHE_EINVAL, "%s: tokenizer.ggml.merges[%llu] '%.*s' is not two tokens split by one "
                             "space", g->path, (unsigned long long)i, (int)(s->len > 64 ? 64 : s->len), s->ptr);
            goto out;
        }
        char buf[4096];
        const char *parts[3][2] = {{s->ptr, sp}, {sp + 1, s->ptr + s->len}, {NULL, NULL}};
        for (int p = 0; p < 3; p++) {
            size_t len = 0;
            if (p < 2) {
                len = (size_t)(parts[p][1] - parts[p][0]);
                memcpy(buf, parts[p][0], len);
            } else {
                memcpy(buf, s->ptr, la);
                memcpy(buf + la, sp + 1, lb);
                len = la + lb;
            }
            buf[len] = '\0';
            if (!json_object_get(vocab, buf)) {
                rc = lathe_error(LATHE_EINVAL, "%s: tokenizer.ggml.merges[%llu] '%.*s': %s '%s' is not a token",
                                 g->path, (unsigned long long)i, (int)s->len, s->ptr,
                                 p == 2 ? "the merged token" : "its part", buf);
                goto out;
            }
        }
        json_t *m = token_json(g, tm->merges, i, "tokenizer.ggml.merges entry");
        if (!m || json_array_append_new(merges, m)) {
            rc = m ? lathe_error(LATHE_ENOMEM, "out of memory") : LATHE_EINVAL;
            goto out;
        }
    }

    json_t *post;
    if (tm->add_bos || tm->add_eos) {
        /* BOS/EOS through a template, as the tokenizers library writes it. */
        json_t *single = json_array(), *pair = json_array(), *specials = json_object();
        const int64_t sids[2] = {tm->add_bos ? tm->bos : -1, tm->add_eos ? tm->eos : -1};
        for (int pass = 0; pass < 2; pass++) {
            json_t *seq = pass ? pair : single;
            if (sids[0] >= 0)
                json_array_append_new(seq, json_pack("{s:{s:o,s:i}}", "SpecialToken", "id", tok_str(tm, sids[0]),
                                                     "type_id", 0));
            json_array_append_new(seq, json_pack("{s:{s:s,s:i}}", "Sequence", "id", "A", "type_id", 0));
            if (sids[1] >= 0)
                json_array_append_new(seq, json_pack("{s:{s:o,s:i}}", "SpecialToken", "id", tok_str(tm, sids[1]),
                                                     "type_id", 0));
            if (pass) {
                if (sids[0] >= 0)
                    json_array_append_new(seq, json_pack("{s:{s:o,s:i}}", "SpecialToken", "id",
                                                         tok_str(tm, sids[0]), "type_id", 1));
                json_array_append_new(seq, json_pack("{s:{s:s,s:i}}", "Sequence", "id", "B", "type_id", 1));
                if (sids[1] >= 0)
                    json_array_append_new(seq, json_pack("{s:{s:o,s:i}}", "SpecialToken", "id",
                                                         tok_str(tm, sids[1]), "type_id", 1));
            }
        }
        for (int k = 0; k < 2; k++)
            if (sids[k] >= 0) {
                json_t *ts = tok_str(tm, sids[k]);
                json_object_set_new(specials, json_string_value(ts) ? json_string_value(ts) : "",
                                    json_pack("{s:O,s:[I],s:[O]}", "id", ts, "ids", (json_int_t)sids[k], "tokens",
                                              ts));
                json_decref(ts);
            }
        post = json_pack("{s:s,s:o,s:o,s:o}", "type", "TemplateProcessing", "single", single, "pair", pair,
                         "special_tokens", specials);
    } else {
        post = json_pack("{s:s,s:b,s:b,s:b}", "type", "ByteLevel", "add_prefix_space", 1, "trim_offsets", 0,
                         "use_regex", 1);
    }
    json_t *model = json_pack("{s:s,s:n,s:n,s:n,s:n,s:b,s:b,s:b,s:O,s:O}", "type", "BPE", "dropout", "unk_token",
                              "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk", 0, "byte_fallback", 0,
                              "ignore_merges", tm->pre == PRE_LLAMA3, "vocab", vocab, "merges", merges);
    json_t *normalizer = tm->pre == PRE_QWEN2 ? json_pack("{s:s}", "type", "NFC") : json_null();
    json_t *root = json_pack("{s:s,s:n,s:n,s:O,s:o,s:o,s:o,s:o,s:o}", "version", "1.0", "truncation", "padding",
                             "added_tokens", added, "normalizer", normalizer, "pre_tokenizer",
                             make_pre_tokenizer(tm->pre), "post_processor", post, "decoder",
                             json_pack("{s:s,s:b,s:b,s:b}", "type", "ByteLevel", "add_prefix_space", 1,
                                       "trim_offsets", 1, "use_regex", 1),
                             "model", model);
    rc = write_json(dir, "tokenizer.json", root);
    json_decref(root);
    if (rc)
        goto out;

    /* tokenizer_config.json: what transformers' AutoTokenizer and lathe's
     * chat code read beside tokenizer.json. */
    json_t *tc = json_object();
    json_object_set_new(tc, "add_bos_token", json_boolean(tm->add_bos));
    json_object_set_new(tc, "add_eos_token", json_boolean(tm->add_eos));
    json_object_set(tc, "added_tokens_decoder", decoder_map);
    if (tm->bos >= 0)
        json_object_set_new(tc, "bos_token", tok_str(tm, tm->bos));
    if (tm->has_template) {
        json_t *t = json_stringn(tm->chat_template.ptr, tm->chat_template.len);
        if (!t) {
            json_decref(tc);
            rc = lathe_error(LATHE_EINVAL, "%s: tokenizer.chat_template is not valid UTF-8", g->path);
            goto out;
        }
        json_object_set_new(tc, "chat_template", t);
    }
    json_object_set_new(tc, "clean_up_tokenization_spaces", json_false());
    if (tm->eos >= 0)
        json_object_set_new(tc, "eos_token", tok_str(tm, tm->eos));
    json_object_set_new(tc, "model_max_length", json_integer((json_int_t)n_ctx));
    if (tm->pad >= 0)
        json_object_set_new(tc, "pad_token", tok_str(tm, tm->pad));
    json_object_set_new(tc, "tokenizer_class", json_string("PreTrainedTokenizerFast"));
    if (tm->unk >= 0)
        json_object_set_new(tc, "unk_token", tok_str(tm, tm->unk));
    rc = write_json(dir, "tokenizer_config.json", tc);
    json_decref(tc);
out:
    free(key);
    json_decref(vocab);
    json_decref(added);
    json_decref(merges);
    json_decref(decoder_map);
    return rc;
}

/* ---- config.json, generation_config.json ---------------------------------- */
static int write_configs(const char *dir, const struct llama_hp *hp, const struct tok_meta *tm, int tied,
                         enum lathe_dtype dtype)
{
    json_t *c = json_object();
    json_object_set_new(c, "architectures", json_pack("[s]", "LlamaForCausalLM"));
    json_object_set_new(c, "attention_bias", json_false());
    json_object_set_new(c, "attention_dropout", json_real(0.0));
    if (tm->bos >= 0)
        json_object_set_new(c, "bos_token_id", json_integer(tm->bos));
    if (tm->eos >= 0)
        json_object_set_new(c, "eos_token_id", json_integer(tm->eos));
    if (hp->head_dim != hp->n_embd / hp->n_head)
        json_object_set_new(c, "head_dim", json_integer((json_int_t)hp->head_dim));
    json_object_set_new(c, "hidden_act", json_string("silu"));
    json_object_set_new(c, "hidden_size", json_integer((json_int_t)hp->n_embd));
    json_object_set_new(c, "initializer_range", json_real(0.02));
    json_object_set_new(c, "intermediate_size", json_integer((json_int_t)hp->n_ff));
    json_object_set_new(c, "max_position_embeddings", json_integer((json_int_t)hp->n_ctx));
    json_object_set_new(c, "mlp_bias", json_false());
    json_object_set_new(c, "model_type", json_string("llama"));
    json_object_set_new(c, "num_attention_heads", json_integer((json_int_t)hp->n_head));
    json_object_set_new(c, "num_hidden_layers", json_integer((json_int_t)hp->n_layer));
    json_object_set_new(c, "num_key_value_heads", json_integer((json_int_t)hp->n_head_kv));
    if (tm->pad >= 0)
        json_object_set_new(c, "pad_token_id", json_integer(tm->pad));
    json_object_set_new(c, "pretraining_tp", json_integer(1));
    json_object_set_new(c, "rms_norm_eps", json_f32(hp->eps));
    json_object_set_new(c, "rope_scaling", hp->rope_linear ? json_pack("{s:s,s:o}", "rope_type", "linear", "factor",
                                                                       json_f32(hp->rope_factor))
                                                           : json_null());
    json_object_set_new(c, "rope_theta", json_f32(hp->theta));
    json_object_set_new(c, "tie_word_embeddings", json_boolean(tied));
    json_object_set_new(c, "torch_dtype", json_string(dtype == LATHE_BF16 ? "bfloat16"
                                                      : dtype == LATHE_F16 ? "float16" : "float32"));
    json_object_set_new(c, "use_cache", json_true());
    json_object_set_new(c, "vocab_size", json_integer((json_int_t)hp->n_vocab));
    int rc = write_json(dir, "config.json", c);
    json_decref(c);
    if (rc)
        return rc;
    json_t *gc = json_object();
    json_object_set_new(gc, "_from_model_config", json_true());
    if (tm->bos >= 0)
        json_object_set_new(gc, "bos_token_id", json_integer(tm->bos));
    if (tm->eos >= 0)
        json_object_set_new(gc, "eos_token_id", json_integer(tm->eos));
    if (tm->pad >= 0)
        json_object_set_new(gc, "pad_token_id", json_integer(tm->pad));
    rc = write_json(dir, "generation_config.json", gc);
    json_decref(gc);
    return rc;
}

/* ---- the conversion ------------------------------------------------------ */
static int convert_tensors(const struct lathe_gguf *g, const struct llama_hp *hp, const char *dir,
                           enum lathe_dtype dtype, int *tied, FILE *log)
{
    const size_t nt = g->n_tensors;
    struct mapped *m = calloc(nt ? nt : 1, sizeof *m);
    lathe_tensor **ts = calloc(nt ? nt : 1, sizeof *ts);
    const char **names = calloc(nt ? nt : 1, sizeof *names);
    float *tmp = NULL;
    int rc = LATHE_OK;
    if (!m || !ts || !names) {
        rc = lathe_error(LATHE_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < nt; i++) {
        const struct lathe_gguf_tensor *t = &g->tensors[i];
        if (!map_name(t->name, hp, hp->n_vocab, &m[i])) {
            rc = lathe_error(LATHE_EUNSUPPORTED, "%s: tensor '%s' has no Hugging Face Llama counterpart (%s)",
                             g->path, t->name,
                             strcmp(t->name, "rope_freqs.weight") == 0
                                 ? "llama3 rope scaling factors are not supported"
                                 : "not a llama tensor name, or a layer past llama.block_count");
            goto out;
        }
        m[i].src = t;
        /* GGUF dims run fastest first: [ne0] is a vector, [ne0, ne1] the
         * row-major matrix [ne1, ne0]. */
        int want_nd = m[i].cols ? 2 : 1;
        int64_t r = (int64_t)(want_nd == 2 ? t->ne[1] : t->ne[0]), c = want_nd == 2 ? (int64_t)t->ne[0] : 0;
        if (t->n_dims != want_nd || r != m[i].rows || c != m[i].cols) {
            char got[96];
            int o = snprintf(got, sizeof got, "[");
            for (int d = t->n_dims - 1; d >= 0; d--)
                o += snprintf(got + o, sizeof got - (size_t)o, "%llu%s", (unsigned long long)t->ne[d], d ? ", " : "");
            snprintf(got + o, sizeof got - (size_t)o, "]");
            if (m[i].cols)
                rc = lathe_error(LATHE_EINVAL, "%s: tensor '%s' (%s) has shape %s; the metadata implies [%lld, %lld]",
                                 g->path, t->name, m[i].hf, got, (long long)m[i].rows, (long long)m[i].cols);
            else
                rc = lathe_error(LATHE_EINVAL, "%s: tensor '%s' (%s) has shape %s; the metadata implies [%lld]",
                                 g->path, t->name, m[i].hf, got, (long long)m[i].rows);
            goto out;
        }
        if (!lathe_ggml_can_dequantize(t->type)) {
            const char *tn = lathe_ggml_type_name(t->type);
            rc = lathe_error(LATHE_EUNSUPPORTED, "%s: tensor '%s' is %s, which lathe cannot dequantize yet", g->path,
                             t->name, tn ? tn : "an unknown type");
            goto out;
        }
    }
    qsort(m, nt, sizeof *m, cmp_mapped);
    /* Every weight a Llama needs must be there. */
    {
        char need[160];
        const char *missing = NULL;
        for (uint64_t L = 0; L <= hp->n_layer && !missing; L++)
            for (size_t k = 0; k < (L < hp->n_layer ? N_BLK_NAMES : 2) && !missing; k++) {
                if (L < hp->n_layer)
                    snprintf(need, sizeof need, "model.layers.%llu.%s.weight", (unsigned long long)L,
                             blk_names[k].hf);
                else
                    snprintf(need, sizeof need, "%s", k == 0 ? "model.embed_tokens.weight" : "model.norm.weight");
                size_t i;
                for (i = 0; i < nt && strcmp(m[i].hf, need) != 0; i++)
                    ;
                if (i == nt)
                    missing = need;
            }
        if (missing) {
            rc = lathe_error(LATHE_EINVAL, "%s: no tensor for %s", g->path, missing);
            goto out;
        }
    }
    *tied = 1;
    uint64_t params = 0;
    for (size_t i = 0; i < nt; i++) {
        const struct lathe_gguf_tensor *t = m[i].src;
        if (strcmp(m[i].hf, "lm_head.weight") == 0)
            *tied = 0;
        int64_t shape[2] = {m[i].rows, m[i].cols};
        ts[i] = lathe_tensor_new(LATHE_F32, m[i].cols ? 2 : 1, shape);
        names[i] = m[i].hf;
        if (!ts[i]) {
            rc = lathe_error_prefix(LATHE_ENOMEM, "%s: tensor '%s'", g->path, t->name);
            goto out;
        }
        float *dst = lathe_tensor_f32(ts[i]);
        if (m[i].perm != PERM_NONE) {
            free(tmp);
            if (!(tmp = malloc(t->nelem * sizeof *tmp))) {
                rc = lathe_error(LATHE_ENOMEM, "out of memory");
                goto out;
            }
        }
        rc = lathe_dequantize(t->type, t->data, m[i].perm != PERM_NONE ? tmp : dst, t->nelem);
        if (rc == LATHE_OK && m[i].perm != PERM_NONE)
            rc = lathe_gguf_unpermute_rows(tmp, dst, (uint64_t)m[i].rows, m[i].cols ? (uint64_t)m[i].cols : 1,
                                           m[i].perm == PERM_Q ? hp->n_head : hp->n_head_kv);
        if (rc) {
            rc = lathe_error_prefix(rc, "%s: tensor '%s'", g->path, t->name);
            goto out;
        }
        /* Narrow now rather than in the writer, so that peak memory is the
         * stored size plus one shard, not the f32 size plus one shard. */
        if (dtype != LATHE_F32) {
            lathe_tensor *nt16 = lathe_tensor_to_dtype(ts[i], dtype);
            if (!nt16) {
                rc = lathe_error_prefix(LATHE_ENOMEM, "%s: tensor '%s'", g->path, t->name);
                goto out;
            }
            lathe_tensor_free(ts[i]);
            ts[i] = nt16;
        }
        params += t->nelem;
    }
    if (log)
        fprintf(log, "dequantized %zu tensors (%llu parameters); writing %s/model.safetensors\n", nt,
                (unsigned long long)params, dir);
    rc = lathe_weights_write(dir, names, ts, NULL, nt, dtype, 0);
out:
    if (ts)
        for (size_t i = 0; i < nt; i++)
            lathe_tensor_free(ts[i]);
    free(ts);
    free(names);
    free(m);
    free(tmp);
    return rc;
}

int lathe_gguf_to_hf(const char *gguf_path, const char *out_dir, enum lathe_dtype dtype, FILE *log)
{
    if (dtype != LATHE_F32 && dtype != LATHE_BF16 && dtype != LATHE_F16)
        return lathe_error(LATHE_EINVAL, "convert: weights can be stored as float32, bfloat16 or float16");
    struct lathe_gguf *g;
    int rc = lathe_gguf_open(&g, gguf_path);
    if (rc)
        return rc;
    struct lathe_gguf_str arch;
    struct llama_hp hp;
    struct tok_meta tm;
    int tied = 1;
    if ((rc = lathe_gguf_get_str(g, "general.architecture", &arch)))
        goto out;
    if (!(arch.len == 5 && memcmp(arch.ptr, "llama", 5) == 0)) {
        rc = lathe_error(LATHE_EUNSUPPORTED, "%s: general.architecture is '%.*s'; only 'llama' can be converted",
                         g->path, (int)(arch.len > 64 ? 64 : arch.len), arch.ptr);
        goto out;
    }
    if ((rc = read_hparams(g, &hp)) || (rc = read_tok_meta(g, &tm)))
        goto out;
    /* The vocabulary size is the token list's; an embedding padded past it
     * wins, since the weights must fit the config. */
    hp.n_vocab = tm.tokens->arr_n;
    const struct lathe_gguf_tensor *emb = lathe_gguf_tensor_find(g, "token_embd.weight");
    if (emb && emb->n_dims == 2 && emb->ne[1] != hp.n_vocab) {
        if (emb->ne[1] < hp.n_vocab) {
            rc = lathe_error(LATHE_EINVAL, "%s: token_embd.weight has %llu rows but there are %llu tokens", g->path,
                             (unsigned long long)emb->ne[1], (unsigned long long)hp.n_vocab);
            goto out;
        }
        if (log)
            fprintf(log, "note: the embedding has %llu rows for %llu tokens; vocab_size is %llu\n",
                    (unsigned long long)emb->ne[1], (unsigned long long)hp.n_vocab, (unsigned long long)emb->ne[1]);
        hp.n_vocab = emb->ne[1];
    }
    if (log)
        fprintf(log, "%s: GGUF v%u, %zu tensors; llama: %llu layers, hidden %llu, ffn %llu, heads %llu/%llu, "
                "vocab %llu\n", g->path, g->version, g->n_tensors, (unsigned long long)hp.n_layer,
                (unsigned long long)hp.n_embd, (unsigned long long)hp.n_ff, (unsigned long long)hp.n_head,
                (unsigned long long)hp.n_head_kv, (unsigned long long)hp.n_vocab);
    if ((rc = lathe_mkdir_p(out_dir)) || (rc = convert_tensors(g, &hp, out_dir, dtype, &tied, log)) ||
        (rc = write_configs(out_dir, &hp, &tm, tied, dtype)) ||
        (rc = write_tokenizer(g, &tm, out_dir, hp.n_ctx, log)))
        goto out;
out:
    lathe_gguf_close(g);
    return rc;
}
