/* core/tensor/state.c — the checkpoint state store (see state.h). */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lathe/status.h>

#include "io/safetensors.h"
#include "tensor/state.h"

enum entry_kind { ENTRY_TENSOR, ENTRY_I64, ENTRY_F64, ENTRY_STR };

struct entry {
    char *key;
    enum entry_kind kind;
    const lathe_tensor *t; /* ENTRY_TENSOR, saving */
    int64_t i;
    double f;
    char *s;
};

struct lathe_state {
    struct entry *e;
    size_t n, cap;
    char prefix[256];
    struct lathe_st_file *file; /* loading: tensors come from here */
    char *dir;                  /* for messages */
};

lathe_state *lathe_state_new(void) { return calloc(1, sizeof(lathe_state)); }

void lathe_state_free(lathe_state *st)
{
    if (!st)
        return;
    for (size_t i = 0; i < st->n; i++) {
        free(st->e[i].key);
        free(st->e[i].s);
    }
    free(st->e);
    if (st->file)
        lathe_st_close(st->file);
    free(st->dir);
    free(st);
}

void lathe_state_set_prefix(lathe_state *st, const char *prefix)
{
    snprintf(st->prefix, sizeof st->prefix, "%s", prefix ? prefix : "");
}

static char *full_key(const lathe_state *st, const char *key)
{
    size_t n = strlen(st->prefix) + strlen(key) + 1;
    char *k = malloc(n);
    if (k)
        snprintf(k, n, "%s%s", st->prefix, key);
    return k;
}

static struct entry *find(const lathe_state *st, const char *key)
{
    char *k = full_key(st, key);
    struct entry *hit = NULL;
    for (size_t i = 0; k && i < st->n; i++)
        if (strcmp(st->e[i].key, k) == 0)
            hit = &st->e[i];
    free(k);
    return hit;
}

static struct entry *add(lathe_state *st, const char *key, enum entry_kind kind)
{
    struct entry *old = find(st, key);
    if (old) {
        free(old->s);
        old->s = NULL;
        old->kind = kind;
        return old;
    }
    if (st->n == st->cap) {
        size_t cap = st->cap ? 2 * st->cap : 64;
        struct entry *e = realloc(st->e, cap * sizeof *e);
        if (!e)
            return NULL;
        st->e = e;
        st->cap = cap;
    }
    struct entry *e = &st->e[st->n];
    memset(e, 0, sizeof *e);
    e->key = full_key(st, key);
    if (!e->key)
        return NULL;
    e->kind = kind;
    st->n++;
    return e;
}

int lathe_state_put_tensor(lathe_state *st, const char *key, const lathe_tensor *t)
{
    struct entry *e = add(st, key, ENTRY_TENSOR);
    if (!e)
        return lathe_error(LATHE_ENOMEM, "state: out of memory");
    e->t = t;
    return LATHE_OK;
}

int lathe_state_put_i64(lathe_state *st, const char *key, int64_t v)
{
    struct entry *e = add(st, key, ENTRY_I64);
    if (!e)
        return lathe_error(LATHE_ENOMEM, "state: out of memory");
    e->i = v;
    return LATHE_OK;
}

int lathe_state_put_f64(lathe_state *st, const char *key, double v)
{
    struct entry *e = add(st, key, ENTRY_F64);
    if (!e)
        return lathe_error(LATHE_ENOMEM, "state: out of memory");
    e->f = v;
    return LATHE_OK;
}

int lathe_state_put_str(lathe_state *st, const char *key, const char *v)
{
    struct entry *e = add(st, key, ENTRY_STR);
    if (!e || !(e->s = strdup(v)))
        return lathe_error(LATHE_ENOMEM, "state: out of memory");
    return LATHE_OK;
}

static const char *where(const lathe_state *st) { return st->dir ? st->dir : "state"; }

static int missing(const lathe_state *st, const char *key, const char *what)
{
    return lathe_error(LATHE_EINVAL, "%s: checkpoint has no %s '%s%s'; was it written by another configuration?",
                       where(st), what, st->prefix, key);
}

int lathe_state_get_tensor(lathe_state *st, const char *key, lathe_tensor *dst)
{
    char a[96], b[96];
    struct entry *e = find(st, key);
    if (e && e->kind == ENTRY_TENSOR && e->t) {
        if (lathe_tensor_numel(e->t) != lathe_tensor_numel(dst) || !lathe_tensor_same_shape(e->t, dst))
            return lathe_error(LATHE_EINVAL, "%s: tensor '%s%s' is %s, expected %s", where(st), st->prefix, key,
                               lathe_tensor_shape_str(e->t, a, sizeof a), lathe_tensor_shape_str(dst, b, sizeof b));
        return lathe_tensor_copy(dst, e->t);
    }
    if (!st->file)
        return missing(st, key, "tensor");
    char *k = full_key(st, key);
    if (!k)
        return lathe_error(LATHE_ENOMEM, "state: out of memory");
    struct lathe_st_info info;
    int rc = lathe_st_find(st->file, k, &info);
    free(k);
    if (rc != LATHE_OK)
        return missing(st, key, "tensor");
    lathe_tensor view = {.dtype = info.dtype, .ndim = info.ndim, .data = (void *)info.data};
    memcpy(view.shape, info.shape, sizeof view.shape);
    if (!lathe_tensor_same_shape(&view, dst))
        return lathe_error(LATHE_EINVAL, "%s: tensor '%s%s' is %s, expected %s", where(st), st->prefix, key,
                           lathe_tensor_shape_str(&view, a, sizeof a), lathe_tensor_shape_str(dst, b, sizeof b));
    return lathe_tensor_copy(dst, &view);
}

int lathe_state_get_i64(lathe_state *st, const char *key, int64_t *v)
{
    struct entry *e = find(st, key);
    if (!e || e->kind != ENTRY_I64)
        return missing(st, key, "integer");
    *v = e->i;
    return LATHE_OK;
}

int lathe_state_get_f64(lathe_state *st, const char *key, double *v)
{
    struct entry *e = find(st, key);
    if (!e || (e->kind != ENTRY_F64 && e->kind != ENTRY_I64))
        return missing(st, key, "number");
    *v = e->kind == ENTRY_F64 ? e->f : (double)e->i;
    return LATHE_OK;
}

int lathe_state_get_str(lathe_state *st, const char *key, const char **v)
{
    struct entry *e = find(st, key);
    if (!e || e->kind != ENTRY_STR)
        return missing(st, key, "string");
    *v = e->s;
    return LATHE_OK;
}

int lathe_state_write(const lathe_state *st, const char *dir)
{
    size_t nt = 0;
    for (size_t i = 0; i < st->n; i++)
        nt += st->e[i].kind == ENTRY_TENSOR;
    struct lathe_st_entry *ents = calloc(nt ? nt : 1, sizeof *ents);
    json_t *root = json_object();
    if (!ents || !root) {
        free(ents);
        json_decref(root);
        return lathe_error(LATHE_ENOMEM, "state: out of memory");
    }
    size_t k = 0;
    int rc = LATHE_OK;
    for (size_t i = 0; i < st->n && rc == LATHE_OK; i++) {
        const struct entry *e = &st->e[i];
        switch (e->kind) {
        case ENTRY_TENSOR:
            ents[k++] = (struct lathe_st_entry){.name = e->key, .dtype = e->t->dtype, .ndim = e->t->ndim,
                                                .shape = e->t->shape, .data = e->t->data,
                                                .on_device = e->t->device != LATHE_DEVICE_CPU};
            break;
        case ENTRY_I64: rc = json_object_set_new(root, e->key, json_integer(e->i)) ? LATHE_ENOMEM : LATHE_OK; break;
        case ENTRY_F64: rc = json_object_set_new(root, e->key, json_real(e->f)) ? LATHE_ENOMEM : LATHE_OK; break;
        case ENTRY_STR: rc = json_object_set_new(root, e->key, json_string(e->s)) ? LATHE_ENOMEM : LATHE_OK; break;
        }
    }
    char path[4096], tmp[4200];
    if (rc == LATHE_OK) {
        snprintf(path, sizeof path, "%s/state.safetensors", dir);
        rc = lathe_st_write(path, ents, nt, NULL);
    }
    if (rc == LATHE_OK) {
        snprintf(path, sizeof path, "%s/state.json", dir);
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        FILE *f = fopen(tmp, "w");
        if (!f || json_dumpf(root, f, JSON_INDENT(1) | JSON_SORT_KEYS | JSON_REAL_PRECISION(17)) != 0 ||
            fputc('\n', f) == EOF || fflush(f) != 0 || fsync(fileno(f)) != 0) {
            rc = lathe_error(LATHE_EIO, "%s: cannot write the checkpoint state", tmp);
        }
        if (f && fclose(f) != 0 && rc == LATHE_OK)
            rc = lathe_error(LATHE_EIO, "%s: cannot write the checkpoint state", tmp);
        if (rc == LATHE_OK && rename(tmp, path) != 0)
            rc = lathe_error(LATHE_EIO, "%s: cannot rename into place", path);
    }
    free(ents);
    json_decref(root);
    return rc;
}

int lathe_state_read(lathe_state **out, const char *dir)
{
    *out = NULL;
    lathe_state *st = lathe_state_new();
    if (!st || !(st->dir = strdup(dir))) {
        lathe_state_free(st);
        return lathe_error(LATHE_ENOMEM, "state: out of memory");
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/state.json", dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        lathe_state_free(st);
        return lathe_error(LATHE_EIO, "%s:%d: cannot read the checkpoint state: %s", path, jerr.line, jerr.text);
    }
    const char *key;
    json_t *v;
    int rc = LATHE_OK;
    json_object_foreach(root, key, v)
    {
        struct entry *e = NULL;
        if (json_is_integer(v)) {
            if ((e = add(st, key, ENTRY_I64)))
                e->i = json_integer_value(v);
        } else if (json_is_real(v)) {
            if ((e = add(st, key, ENTRY_F64)))
                e->f = json_real_value(v);
        } else if (json_is_string(v)) {
            if ((e = add(st, key, ENTRY_STR)) && !(e->s = strdup(json_string_value(v))))
                e = NULL;
        } else {
            rc = lathe_error(LATHE_EIO, "%s: key '%s' is neither a number nor a string", path, key);
            break;
        }
        if (!e) {
            rc = lathe_error(LATHE_ENOMEM, "state: out of memory");
            break;
        }
    }
    json_decref(root);
    if (rc == LATHE_OK) {
        snprintf(path, sizeof path, "%s/state.safetensors", dir);
        rc = lathe_st_open(&st->file, path);
    }
    if (rc != LATHE_OK) {
        lathe_state_free(st);
        return rc;
    }
    *out = st;
    return LATHE_OK;
}

/* The public face of the store for components' own files (env.h). */
lathe_state *lathe_state_create(void) { return lathe_state_new(); }

void lathe_state_destroy(lathe_state *st) { lathe_state_free(st); }

int lathe_state_save_dir(const lathe_state *st, const char *dir)
{
    if (!st || !dir || !dir[0])
        return lathe_error(LATHE_EINVAL, "state: no state or directory to save to");
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        if (errno != ENOENT || mkdir(dir, 0755) != 0)
            return lathe_error(LATHE_EIO, "%s: cannot create the state directory: %s", dir, strerror(errno));
    } else if (!S_ISDIR(sb.st_mode)) {
        return lathe_error(LATHE_EIO, "%s: exists and is not a directory", dir);
    }
    return lathe_state_write(st, dir);
}

int lathe_state_load_dir(lathe_state **out, const char *dir)
{
    if (!out || !dir || !dir[0])
        return lathe_error(LATHE_EINVAL, "state: no directory to load from");
    return lathe_state_read(out, dir);
}
