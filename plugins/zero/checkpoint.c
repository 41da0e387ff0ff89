/* plugins/zero/checkpoint.c — ZeRO optimizer-state checkpoints that resume
 * on any number of ranks.
 *
 * Every rank writes its optimizer state (the optimizer's own state_save,
 * made over this rank's views) to DIR/zero-rank-R/, and rank 0 writes
 * DIR/zero-manifest.json: world size, stage, layout, every parameter's size
 * and every rank's pieces (parameter, offset inside it, length). A piece is
 * named "<param>@<offset>", so every optimizer tensor key ends with the name
 * of the piece it belongs to. A run whose own pieces equal the saved ones of
 * its rank (same world size and layout) reads its own file back; any other
 * run (another number of ranks, or flat vs per-parameter layout) rebuilds
 * each of its pieces from the overlapping pieces of every old rank's file,
 * matched by parameter and element range, so resharding needs no partition
 * rule.
 *
 * Under cpu_offload on a device the core calls both with the CPU backend
 * current (parallel.h, optim_device): the optimizer's tensors and those
 * rebuilt here are host memory; the files are the same as without offload,
 * so a run may resume with or without it. */
#include "zero.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MANIFEST "zero-manifest.json"
#define MANIFEST_FORMAT "lathe-zero/1"

static json_t *manifest_json(const struct zero *z, int64_t step, int have_step)
{
    json_t *root = json_object(), *params = json_array(), *ranks = json_array();
    if (!root || !params || !ranks) {
        json_decref(root);
        json_decref(params);
        json_decref(ranks);
        return NULL;
    }
    json_object_set_new(root, "format", json_string(MANIFEST_FORMAT));
    json_object_set_new(root, "world_size", json_integer(z->world));
    json_object_set_new(root, "stage", json_integer(z->stage));
    json_object_set_new(root, "total_elements", json_integer(TOTAL(z)));
    json_object_set_new(root, "optimizer_step", have_step ? json_integer(step) : json_null());
    for (size_t i = 0; i < z->n; i++)
        json_array_append_new(params, json_pack("{s:s, s:I, s:I}", "name", z->params[i]->name, "numel",
                                                (json_int_t)(z->off[i + 1] - z->off[i]), "offset",
                                                (json_int_t)z->off[i]));
    json_object_set_new(root, "layout", json_string(z->layout == ZERO_PER_PARAM ? "per-parameter" : "flat"));
    /* every rank's pieces follow from the sizes and the layout; they are
     * written out so a reader needs no partition rule */
    for (int r = 0; r < z->world; r++) {
        json_t *pieces = json_array();
        int64_t total = 0;
        for (size_t i = 0; pieces && i < z->n; i++) {
            int64_t a = zero_own_lo(z, i, r), len = zero_own_len(z, i, r);
            if (len <= 0)
                continue;
            char view[LATHE_NAME_MAX + 24];
            snprintf(view, sizeof view, "%s@%lld", z->params[i]->name, (long long)a);
            json_array_append_new(pieces, json_pack("{s:s, s:I, s:I, s:I}", "view", view, "param", (json_int_t)i,
                                                    "param_offset", (json_int_t)a, "length", (json_int_t)len));
            total += len;
        }
        json_t *rk = json_pack("{s:i, s:I, s:o}", "rank", r, "length", (json_int_t)total, "pieces",
                               pieces ? pieces : json_array());
        /* the flat layout's ranges are contiguous: say where (informative) */
        if (rk && z->layout == ZERO_FLAT)
            json_object_set_new(rk, "offset", json_integer((json_int_t)((int64_t)r * TOTAL(z) / z->world)));
        json_array_append_new(ranks, rk);
    }
    json_object_set_new(root, "params", params);
    json_object_set_new(root, "ranks", ranks);
    return root;
}

static int write_manifest(const struct zero *z, const char *dir, int64_t step, int have_step)
{
    char path[4300], tmp[4400];
    snprintf(path, sizeof path, "%s/" MANIFEST, dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    json_t *root = manifest_json(z, step, have_step);
    if (!root)
        return lathe_error(LATHE_ENOMEM, "zero: out of memory");
    int bad = json_dump_file(root, tmp, JSON_INDENT(1)) != 0;
    json_decref(root);
    if (bad || rename(tmp, path) != 0)
        return lathe_error(LATHE_EIO, "%s: cannot write the ZeRO manifest: %s", path, strerror(errno));
    return LATHE_OK;
}

int zero_state_save(void *self, const struct lathe_optim_ops *optim, void *optim_self, const char *dir)
{
    struct zero *z = self;
    lathe_state *st = lathe_state_create();
    if (!st)
        return lathe_error(LATHE_ENOMEM, "zero: out of memory");
    int rc = optim->state_save(optim_self, st);
    char sub[4300];
    snprintf(sub, sizeof sub, "%s/zero-rank-%d", dir, z->rank);
    if (rc == LATHE_OK)
        rc = lathe_state_save_dir(st, sub);
    if (rc == LATHE_OK && z->rank == 0) {
        int64_t step = 0;
        int have = lathe_state_get_i64(st, "step", &step) == LATHE_OK;
        rc = write_manifest(z, dir, step, have);
    }
    lathe_state_destroy(st);
    return rc == LATHE_OK ? rc : lathe_error_prefix(rc, "zero: saving rank %d's optimizer shard", z->rank);
}

/* One old rank's piece, from the manifest. */
struct old_piece {
    const char *view;
    int64_t param, poff, len;
};

struct manifest {
    json_t *root;
    int world;
    struct old_piece **pieces; /* per old rank */
    size_t *npieces;
};

static void manifest_free(struct manifest *m)
{
    if (m->pieces)
        for (int r = 0; r < m->world; r++)
            free(m->pieces[r]);
    free(m->pieces);
    free(m->npieces);
    json_decref(m->root);
}

static int64_t jint(json_t *o, const char *key, int *ok)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v)) {
        *ok = 0;
        return 0;
    }
    return (int64_t)json_integer_value(v);
}

/* Read and check the manifest against this run's parameters. */
static int manifest_read(const struct zero *z, const char *dir, struct manifest *m)
{
    memset(m, 0, sizeof *m);
    char path[4300];
    snprintf(path, sizeof path, "%s/" MANIFEST, dir);
    json_error_t jerr;
    if (!(m->root = json_load_file(path, 0, &jerr)))
        return lathe_error(LATHE_EIO,
                           "%s:%d: cannot read the ZeRO manifest (%s); a checkpoint saved without [parallel] "
                           "plugin = zero cannot resume a zero run",
                           path, jerr.line, jerr.text);
    int ok = 1;
    const char *fmt = json_string_value(json_object_get(m->root, "format"));
    int64_t world = jint(m->root, "world_size", &ok);
    json_t *params = json_object_get(m->root, "params"), *ranks = json_object_get(m->root, "ranks");
    if (!fmt || strcmp(fmt, MANIFEST_FORMAT) != 0 || !ok || world < 1 || world > 1 << 20 || !json_is_array(params) ||
        !json_is_array(ranks) || json_array_size(ranks) != (size_t)world)
        return lathe_error(LATHE_EIO, "%s: not a %s manifest (format, world_size, params or ranks is missing or wrong)",
                           path, MANIFEST_FORMAT);
    if (json_array_size(params) != z->n)
        return lathe_error(LATHE_EINVAL, "%s: the checkpoint has %zu trainable parameters, this run %zu", path,
                           json_array_size(params), z->n);
    for (size_t i = 0; i < z->n; i++) {
        json_t *p = json_array_get(params, i);
        const char *name = json_string_value(json_object_get(p, "name"));
        int64_t numel = jint(p, "numel", &ok);
        if (!name || !ok || strcmp(name, z->params[i]->name) != 0 || numel != z->off[i + 1] - z->off[i])
            return lathe_error(LATHE_EINVAL,
                               "%s: trainable parameter %zu is '%s' of %lld elements in the checkpoint, '%s' of %lld "
                               "in this run",
                               path, i, name ? name : "?", (long long)numel, z->params[i]->name,
                               (long long)(z->off[i + 1] - z->off[i]));
    }
    m->world = (int)world;
    m->pieces = calloc((size_t)world, sizeof *m->pieces);
    m->npieces = calloc((size_t)world, sizeof *m->npieces);
    if (!m->pieces || !m->npieces)
        return lathe_error(LATHE_ENOMEM, "zero: out of memory");
    for (int r = 0; r < m->world; r++) {
        json_t *pcs = json_object_get(json_array_get(ranks, (size_t)r), "pieces");
        if (!json_is_array(pcs))
            return lathe_error(LATHE_EIO, "%s: rank %d has no pieces", path, r);
        m->pieces[r] = calloc(json_array_size(pcs) + 1, sizeof **m->pieces);
        if (!m->pieces[r])
            return lathe_error(LATHE_ENOMEM, "zero: out of memory");
        size_t k;
        json_t *pc;
        json_array_foreach(pcs, k, pc)
        {
            struct old_piece *o = &m->pieces[r][k];
            o->view = json_string_value(json_object_get(pc, "view"));
            o->param = jint(pc, "param", &ok);
            o->poff = jint(pc, "param_offset", &ok);
            o->len = jint(pc, "length", &ok);
            if (!o->view || !ok || o->param < 0 || (size_t)o->param >= z->n || o->poff < 0 || o->len < 1 ||
                o->poff + o->len > z->off[o->param + 1] - z->off[o->param])
                return lathe_error(LATHE_EIO, "%s: rank %d piece %zu is malformed", path, r, k);
        }
        m->npieces[r] = json_array_size(pcs);
    }
    return LATHE_OK;
}

/* The scalars of an old rank's state (state.json), copied into st. */
static int copy_scalars(lathe_state *st, const char *sub)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/state.json", sub);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!json_is_object(root)) {
        json_decref(root);
        return lathe_error(LATHE_EIO, "%s:%d: cannot read: %s", path, jerr.line, jerr.text);
    }
    const char *key;
    json_t *v;
    int rc = LATHE_OK;
    json_object_foreach(root, key, v)
    {
        if (json_is_integer(v))
            rc = lathe_state_put_i64(st, key, (int64_t)json_integer_value(v));
        else if (json_is_real(v))
            rc = lathe_state_put_f64(st, key, json_real_value(v));
        else if (json_is_string(v))
            rc = lathe_state_put_str(st, key, json_string_value(v));
        if (rc != LATHE_OK)
            break;
    }
    json_decref(root);
    return rc;
}

/* New shard moments under construction: one tensor per (key prefix, view). */
struct rebuilt {
    char **prefix;
    size_t nprefix, cap;
    lathe_tensor **t;  /* [nprefix * nviews] */
    int64_t *covered;  /* elements filled */
};

static int prefix_index(struct rebuilt *b, size_t nviews, const char *prefix, size_t plen)
{
    for (size_t i = 0; i < b->nprefix; i++)
        if (strlen(b->prefix[i]) == plen && strncmp(b->prefix[i], prefix, plen) == 0)
            return (int)i;
    size_t nv = nviews ? nviews : 1;
    if (b->nprefix == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 4;
        char **p = realloc(b->prefix, cap * sizeof *p);
        if (p)
            b->prefix = p;
        lathe_tensor **t = p ? realloc(b->t, cap * nv * sizeof *t) : NULL;
        if (t)
            b->t = t;
        int64_t *c = t ? realloc(b->covered, cap * nv * sizeof *c) : NULL;
        if (!c)
            return -1;
        b->covered = c;
        memset(b->t + b->cap * nv, 0, (cap - b->cap) * nv * sizeof *t);
        memset(b->covered + b->cap * nv, 0, (cap - b->cap) * nv * sizeof *c);
        b->cap = cap;
    }
    if (!(b->prefix[b->nprefix] = strndup(prefix, plen)))
        return -1;
    return (int)b->nprefix++;
}

static void rebuilt_free(struct rebuilt *b, size_t nviews)
{
    for (size_t i = 0; i < b->nprefix; i++) {
        free(b->prefix[i]);
        for (size_t j = 0; j < nviews; j++)
            lathe_tensor_free(b->t[i * nviews + j]);
    }
    free(b->prefix);
    free(b->t);
    free(b->covered);
}

/* The old piece whose view name ends key (the longest such), or NULL. */
static const struct old_piece *match_piece(const struct manifest *m, int r, const char *key)
{
    const struct old_piece *best = NULL;
    size_t kl = strlen(key), bl = 0;
    for (size_t k = 0; k < m->npieces[r]; k++) {
        size_t vl = strlen(m->pieces[r][k].view);
        if (vl <= kl && vl > bl && strcmp(key + kl - vl, m->pieces[r][k].view) == 0) {
            best = &m->pieces[r][k];
            bl = vl;
        }
    }
    return best;
}

/* Copy the overlap of one old rank's tensors with this rank's views. */
static int reshard_rank(struct zero *z, const struct manifest *m, int r, const char *dir, struct rebuilt *b)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/zero-rank-%d/state.safetensors", dir, r);
    lathe_weights *w;
    int rc = lathe_weights_open(&w, path);
    if (rc != LATHE_OK)
        return rc;
    for (size_t i = 0; rc == LATHE_OK && i < lathe_weights_count(w); i++) {
        const char *name;
        enum lathe_dtype dt;
        int ndim;
        int64_t shape[LATHE_MAX_DIMS];
        if ((rc = lathe_weights_info(w, i, &name, &dt, &ndim, shape)) != LATHE_OK)
            break;
        const struct old_piece *op = match_piece(m, r, name);
        lathe_tensor *old = lathe_tensor_new(LATHE_F32, ndim, shape);
        if (!old) {
            rc = lathe_error(LATHE_ENOMEM, "zero: out of memory reading '%s'", name);
            break;
        }
        if (!op) {
            /* a tensor of no parameter (none in adamw or sgd) cannot be
             * split by element ranges */
            lathe_tensor_free(old);
            rc = lathe_error(LATHE_EUNSUPPORTED,
                             "%s: optimizer state '%s' belongs to no parameter piece of the manifest; resharding "
                             "it onto another number of ranks is not implemented (resume on %d ranks)",
                             path, name, m->world);
            break;
        }
        if (lathe_tensor_numel(old) != op->len) {
            lathe_tensor_free(old);
            rc = lathe_error(LATHE_EIO, "%s: '%s' holds %lld elements, its piece %lld", path, name,
                             (long long)lathe_tensor_numel(old), (long long)op->len);
            break;
        }
        int pi = prefix_index(b, z->nviews, name, strlen(name) - strlen(op->view));
        if (pi < 0) {
            lathe_tensor_free(old);
            rc = lathe_error(LATHE_ENOMEM, "zero: out of memory");
            break;
        }
        int loaded = 0;
        for (size_t j = 0; rc == LATHE_OK && j < z->nviews; j++) {
            const struct piece *np = &z->pieces[j];
            if ((int64_t)np->param != op->param)
                continue;
            int64_t a = np->poff > op->poff ? np->poff : op->poff;
            int64_t e = np->poff + np->len < op->poff + op->len ? np->poff + np->len : op->poff + op->len;
            if (a >= e)
                continue;
            if (!loaded && (rc = lathe_weights_read(w, name, old)) != LATHE_OK)
                break;
            loaded = 1;
            lathe_tensor **slot = &b->t[(size_t)pi * z->nviews + j];
            if (!*slot && !(*slot = lathe_tensor_new(LATHE_F32, z->views[j]->ndim, z->views[j]->shape))) {
                rc = lathe_error(LATHE_ENOMEM, "zero: out of memory");
                break;
            }
            /* both made by the current backend (the CPU's when the
             * optimizer is offloaded to the host): its copy */
            lathe_backend()->copy2d(lathe_tensor_f32(*slot) + (a - np->poff), e - a,
                                    lathe_tensor_f32(old) + (a - op->poff), e - a, 1, e - a, 0);
            b->covered[(size_t)pi * z->nviews + j] += e - a;
        }
        lathe_tensor_free(old);
    }
    lathe_weights_close(w);
    return rc;
}

/* This rank's pieces are the ones its namesake saved. */
static int same_pieces(const struct zero *z, const struct manifest *m)
{
    if (m->world != z->world || m->npieces[z->rank] != z->nviews)
        return 0;
    for (size_t k = 0; k < z->nviews; k++) {
        const struct old_piece *o = &m->pieces[z->rank][k];
        const struct piece *p = &z->pieces[k];
        if (o->param != (int64_t)p->param || o->poff != p->poff || o->len != p->len)
            return 0;
    }
    return 1;
}

int zero_state_load(void *self, const struct lathe_optim_ops *optim, void *optim_self, const char *dir)
{
    struct zero *z = self;
    struct manifest m;
    int rc = manifest_read(z, dir, &m);
    /* the core has just loaded the parameters: stage 3 refreshes the
     * persistent shard from those whose whole buffers it loaded into, and
     * cpu_offload on a device the host copy of the shard (every stage) */
    if (rc == LATHE_OK)
        rc = zero_refresh_shard(z);
    lathe_state *st = NULL;
    char sub[4300];
    if (rc == LATHE_OK && same_pieces(z, &m)) {
        /* same partition (same world size and layout): this rank's own file */
        snprintf(sub, sizeof sub, "%s/zero-rank-%d", dir, z->rank);
        rc = lathe_state_load_dir(&st, sub);
        if (rc == LATHE_OK)
            rc = optim->state_load(optim_self, st);
    } else if (rc == LATHE_OK) {
        struct rebuilt b = {0};
        if (!(st = lathe_state_create()))
            rc = lathe_error(LATHE_ENOMEM, "zero: out of memory");
        snprintf(sub, sizeof sub, "%s/zero-rank-0", dir);
        if (rc == LATHE_OK)
            rc = copy_scalars(st, sub);
        for (int r = 0; rc == LATHE_OK && r < m.world; r++)
            rc = reshard_rank(z, &m, r, dir, &b);
        for (size_t i = 0; rc == LATHE_OK && i < b.nprefix; i++)
            for (size_t j = 0; rc == LATHE_OK && j < z->nviews; j++) {
                lathe_tensor *t = b.t[i * z->nviews + j];
                if (!t || b.covered[i * z->nviews + j] != z->pieces[j].len) {
                    rc = lathe_error(LATHE_EIO, "%s: the old shards cover %lld of the %lld elements of '%s%s'", dir,
                                     (long long)b.covered[i * z->nviews + j], (long long)z->pieces[j].len,
                                     b.prefix[i], z->views[j]->name);
                    break;
                }
                char key[LATHE_NAME_MAX + 256];
                snprintf(key, sizeof key, "%s%s", b.prefix[i], z->views[j]->name);
                rc = lathe_state_put_tensor(st, key, t);
            }
        if (rc == LATHE_OK)
            rc = optim->state_load(optim_self, st);
        if (rc == LATHE_OK && z->rank == 0)
            printf("[parallel] zero: optimizer state of %d ranks resharded onto %d (%s layout)\n", m.world, z->world,
                   z->layout == ZERO_PER_PARAM ? "per-parameter" : "flat");
        rebuilt_free(&b, z->nviews);
    }
    lathe_state_destroy(st);
    manifest_free(&m);
    return rc == LATHE_OK ? rc : lathe_error_prefix(rc, "zero: loading rank %d's optimizer shard", z->rank);
}

