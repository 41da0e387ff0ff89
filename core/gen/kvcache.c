/* core/gen/kvcache.c — the key/value cache of incremental decoding, one for
 * every model plugin (generate.h). */
#include <stdlib.h>

#include <lathe/lathe.h>

void lathe_kv_cache_free(struct lathe_kv_cache *c)
{
    if (!c)
        return;
    for (int64_t l = 0; l < c->layers; l++) {
        if (c->k)
            lathe_tensor_free(c->k[l]);
        if (c->v)
            lathe_tensor_free(c->v[l]);
    }
    lathe_tensor_free(c->seg);
    free(c->k);
    free(c->v);
    free(c);
}

int lathe_kv_cache_new(int64_t layers, int64_t B, int64_t max_len, int64_t Hkv, int64_t D,
                       struct lathe_kv_cache **out)
{
    *out = NULL;
    if (layers <= 0 || B <= 0 || max_len <= 0 || Hkv <= 0 || D <= 0)
        return lathe_error(LATHE_EINVAL, "kv cache: layers, B, max_len, heads and head size must be > 0");
    struct lathe_kv_cache *c = calloc(1, sizeof *c);
    if (!c)
        return lathe_error(LATHE_ENOMEM, "kv cache: out of memory");
    c->B = B;
    c->max_len = max_len;
    c->layers = layers;
    c->k = calloc((size_t)layers, sizeof *c->k);
    c->v = calloc((size_t)layers, sizeof *c->v);
    /* caller-owned even inside a scope: the cache outlives a step */
    int ok = c->k && c->v && (c->seg = lathe_tensor_new_owned(LATHE_I32, 2, (int64_t[]){B, max_len}));
    for (int64_t l = 0; l < layers && ok; l++)
        ok = (c->k[l] = lathe_tensor_new_owned(LATHE_F32, 4, (int64_t[]){B, max_len, Hkv, D})) &&
             (c->v[l] = lathe_tensor_new_owned(LATHE_F32, 4, (int64_t[]){B, max_len, Hkv, D}));
    if (!ok) {
        lathe_kv_cache_free(c);
        return lathe_error(LATHE_ENOMEM, "kv cache: out of memory for %lld layers of %lld x %lld tokens",
                           (long long)layers, (long long)B, (long long)max_len);
    }
    *out = c;
    return LATHE_OK;
}

int lathe_kv_cache_begin(struct lathe_kv_cache *c, const struct lathe_batch *batch)
{
    const int64_t B = batch->input_ids->shape[0], T = batch->input_ids->shape[1];
    if (B != c->B || c->len + T > c->max_len)
        return lathe_error(LATHE_EINVAL, "kv cache: %lld rows of %lld tokens after %lld do not fit the cache of %lld "
                           "rows and max_len %lld", (long long)B, (long long)T, (long long)c->len, (long long)c->B,
                           (long long)c->max_len);
    lathe_tensor *seg = batch->segments ? batch->segments : lathe_tensor_new2(LATHE_I32, B, T); /* one segment */
    if (!seg)
        return LATHE_ENOMEM;
    return lathe_write_rows(c->seg, seg, c->len);
}

lathe_tensor *lathe_kv_cache_attend(struct lathe_kv_cache *c, int64_t layer, lathe_tensor *q, lathe_tensor *k,
                                    lathe_tensor *v)
{
    if (!q || !k || !v)
        return NULL;
    if (layer < 0 || layer >= c->layers) {
        lathe_error(LATHE_EINVAL, "kv cache: layer %lld of %lld", (long long)layer, (long long)c->layers);
        return NULL;
    }
    const int64_t T = k->shape[1];
    if (lathe_write_rows(c->k[layer], k, c->len) || lathe_write_rows(c->v[layer], v, c->len))
        return NULL;
    return lathe_sdpa_cached(q, c->k[layer], c->v[layer], c->len + T, c->seg, 0.0f);
}

void lathe_kv_cache_commit(struct lathe_kv_cache *c, int64_t T) { c->len += T; }
