/* core/text/bpe.c — the BPE model: hash maps for the vocabulary and the
 * merges, the merge loop, and a bounded cache of pre-token → ids.
 *
 * The merge loop follows the `tokenizers` library's model (BPE
 * Word::merge_all): within one pre-token, repeatedly merge the adjacent pair
 * with the lowest rank, the leftmost first among equal ranks. A min-heap of
 * (rank, position) with lazy invalidation makes that O(n log n), so long
 * pre-tokens (runs of CJK text or white space) stay cheap. */
#include <stdlib.h>
#include <string.h>

#include <lathe/status.h>

#include "text/tokenizer_internal.h"

/* ---- hashing --------------------------------------------------------------- */
static inline uint64_t mix64(uint64_t x)
{
    /* splitmix64's finaliser (Steele, Lea & Flood 2014) */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

uint64_t tk_hash(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = mix64(h ^ w);
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = mix64(h ^ w ^ ((uint64_t)n << 59));
    return h ? h : 1;
}

/* ---- byte string → id ----------------------------------------------------- */
static int strmap_grow(struct tk_strmap *m)
{
    size_t ncap = m->cap ? m->cap * 2 : 64;
    struct tk_strmap g = {.cap = ncap};
    g.hash = calloc(ncap, sizeof *g.hash);
    g.key = malloc(ncap * sizeof *g.key);
    g.klen = malloc(ncap * sizeof *g.klen);
    g.val = malloc(ncap * sizeof *g.val);
    if (!g.hash || !g.key || !g.klen || !g.val) {
        tk_strmap_free(&g);
        return lathe_error(LATHE_ENOMEM, "out of memory growing a tokenizer hash map");
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (m->hash[i] == 0)
            continue;
        size_t j = m->hash[i] & (ncap - 1);
        while (g.hash[j])
            j = (j + 1) & (ncap - 1);
        g.hash[j] = m->hash[i];
        g.key[j] = m->key[i];
        g.klen[j] = m->klen[i];
        g.val[j] = m->val[i];
    }
    g.count = m->count;
    tk_strmap_free(m);
    *m = g;
    return LATHE_OK;
}

int tk_strmap_put(struct tk_strmap *m, const char *k, size_t n, int32_t v)
{
    if ((m->count + 1) * 2 > m->cap) {
        int rc = strmap_grow(m);
        if (rc)
            return rc;
    }
    uint64_t h = tk_hash(k, n);
    size_t j = h & (m->cap - 1);
    while (m->hash[j]) {
        if (m->hash[j] == h && m->klen[j] == n && memcmp(m->key[j], k, n) == 0) {
            m->val[j] = v;
            return LATHE_OK;
        }
        j = (j + 1) & (m->cap - 1);
    }
    m->hash[j] = h;
    m->key[j] = k;
    m->klen[j] = (uint32_t)n;
    m->val[j] = v;
    m->count++;
    return LATHE_OK;
}

int32_t tk_strmap_get(const struct tk_strmap *m, const char *k, size_t n)
{
    if (m->cap == 0)
        return -1;
    uint64_t h = tk_hash(k, n);
    size_t j = h & (m->cap - 1);
    while (m->hash[j]) {
        if (m->hash[j] == h && m->klen[j] == n && memcmp(m->key[j], k, n) == 0)
            return m->val[j];
        j = (j + 1) & (m->cap - 1);
    }
    return -1;
}

void tk_strmap_free(struct tk_strmap *m)
{
    free(m->hash);
    free(m->key);
    free(m->klen);
    free(m->val);
    memset(m, 0, sizeof *m);
}

/* ---- (left, right) → (rank, merged) ---------------------------------------- */
static inline uint64_t pair_key(int32_t a, int32_t b)
{
    return (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
}

static int pairmap_grow(struct tk_pairmap *m)
{
    size_t ncap = m->cap ? m->cap * 2 : 1024;
    struct tk_pairmap g = {.cap = ncap};
    g.slot = calloc(ncap, sizeof *g.slot);
    if (g.slot == NULL)
        return lathe_error(LATHE_ENOMEM, "out of memory growing the merge table");
    for (size_t i = 0; i < m->cap; i++) {
        if (m->slot[i].key == 0)
            continue;
        size_t j = mix64(m->slot[i].key) & (ncap - 1);
        while (g.slot[j].key)
            j = (j + 1) & (ncap - 1);
        g.slot[j] = m->slot[i];
    }
    tk_merges_free(m);
    *m = g;
    return LATHE_OK;
}

int tk_merges_put(struct lathe_tokenizer *tk, int32_t a, int32_t b, uint32_t rank, int32_t out)
{
    struct tk_pairmap *m = &tk->merges;
    /* count is not stored: a load factor of at most 1/2 is kept by sizing
     * from the rank, which grows by one per merge */
    if ((size_t)(rank + 1) * 2 > m->cap) {
        int rc = pairmap_grow(m);
        if (rc)
            return rc;
    }
    uint64_t k = pair_key(a, b);
    size_t j = mix64(k) & (m->cap - 1);
    while (m->slot[j].key && m->slot[j].key != k)
        j = (j + 1) & (m->cap - 1);
    /* a repeated merge: the later one wins, as when `tokenizers` collects
     * the list into its hash map */
    m->slot[j] = (struct tk_pair_slot){k, rank, out};
    return LATHE_OK;
}

static inline int merges_get(const struct tk_pairmap *m, int32_t a, int32_t b, uint32_t *rank, int32_t *out)
{
    if (m->cap == 0)
        return 0;
    uint64_t k = pair_key(a, b);
    size_t j = mix64(k) & (m->cap - 1);
    while (m->slot[j].key) {
        if (m->slot[j].key == k) {
            *rank = m->slot[j].rank;
            *out = m->slot[j].out;
            return 1;
        }
        j = (j + 1) & (m->cap - 1);
    }
    return 0;
}

void tk_merges_free(struct tk_pairmap *m)
{
    free(m->slot);
    memset(m, 0, sizeof *m);
}

/* ---- cache -------------------------------------------------------------------- */
int tk_cache_init(struct lathe_tokenizer *tk)
{
    for (int s = 0; s < TK_CACHE_SHARDS; s++) {
        tk->cache[s].slot = calloc(TK_CACHE_SLOTS, sizeof *tk->cache[s].slot);
        if (tk->cache[s].slot == NULL)
            return lathe_error(LATHE_ENOMEM, "out of memory for the tokenizer cache");
        pthread_mutex_init(&tk->cache[s].mu, NULL);
    }
    return LATHE_OK;
}

void tk_cache_free(struct lathe_tokenizer *tk)
{
    for (int s = 0; s < TK_CACHE_SHARDS; s++) {
        if (tk->cache[s].slot == NULL)
            continue;
        for (int i = 0; i < TK_CACHE_SLOTS; i++)
            free(tk->cache[s].slot[i].blob);
        free(tk->cache[s].slot);
        tk->cache[s].slot = NULL;
        pthread_mutex_destroy(&tk->cache[s].mu);
    }
}

#define BLOB_IDS_OFF(klen) (((size_t)(klen) + 3) & ~(size_t)3)

static int ids_reserve(int32_t **ids, size_t *cap, size_t need)
{
    if (need <= *cap)
        return LATHE_OK;
    size_t ncap = *cap ? *cap : 256;
    while (ncap < need)
        ncap *= 2;
    int32_t *p = realloc(*ids, ncap * sizeof *p);
    if (p == NULL)
        return lathe_error(LATHE_ENOMEM, "out of memory for %zu token ids", need);
    *ids = p;
    *cap = ncap;
    return LATHE_OK;
}

/* The cache is shared, so a lookup copies the ids out under the shard's
 * lock (a tokenizer may be used from several threads at once). */
static int cache_get(const struct lathe_tokenizer *tk, uint64_t h, const char *s, size_t n, int32_t **ids,
                     size_t *n_ids, size_t *cap, int *hit)
{
    struct tk_cache_shard *sh = (struct tk_cache_shard *)&tk->cache[h % TK_CACHE_SHARDS];
    struct tk_cache_entry *e = &sh->slot[(h / TK_CACHE_SHARDS) % TK_CACHE_SLOTS];
    *hit = 0;
    pthread_mutex_lock(&sh->mu);
    /* n == 0: an empty piece matches an empty slot, whose blob is NULL */
    if (e->hash == h && e->klen == n && (n == 0 || memcmp(e->blob, s, n) == 0)) {
        int rc = ids_reserve(ids, cap, *n_ids + e->nids);
        if (rc) {
            pthread_mutex_unlock(&sh->mu);
            return rc;
        }
        if (e->nids)
            memcpy(*ids + *n_ids, e->blob + BLOB_IDS_OFF(n), e->nids * sizeof(int32_t));
        *n_ids += e->nids;
        *hit = 1;
    }
    pthread_mutex_unlock(&sh->mu);
    return LATHE_OK;
}

static void cache_put(const struct lathe_tokenizer *tk, uint64_t h, const char *s, size_t n, const int32_t *w,
                      size_t nw)
{
    char *blob = malloc(BLOB_IDS_OFF(n) + nw * sizeof(int32_t));
    if (blob == NULL)
        return; /* the cache is only an optimisation */
    memcpy(blob, s, n);
    memcpy(blob + BLOB_IDS_OFF(n), w, nw * sizeof(int32_t));
    struct tk_cache_shard *sh = (struct tk_cache_shard *)&tk->cache[h % TK_CACHE_SHARDS];
    struct tk_cache_entry *e = &sh->slot[(h / TK_CACHE_SHARDS) % TK_CACHE_SLOTS];
    pthread_mutex_lock(&sh->mu);
    char *old = e->blob;
    e->blob = blob;
    e->hash = h;
    e->klen = (uint16_t)n;
    e->nids = (uint16_t)nw;
    pthread_mutex_unlock(&sh->mu);
    free(old);
}

/* ---- the merge loop --------------------------------------------------------- */
struct heap_item {
    uint32_t rank;
    int32_t pos;
    int32_t out;
};

static inline int item_less(const struct heap_item *a, const struct heap_item *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(struct heap_item *h, size_t *n, struct heap_item it)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!item_less(&it, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = it;
}

static struct heap_item heap_pop(struct heap_item *h, size_t *n)
{
    struct heap_item top = h[0];
    struct heap_item last = h[--(*n)];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m)
            break;
        if (c + 1 < m && item_less(&h[c + 1], &h[c]))
            c++;
        if (!item_less(&h[c], &last))
            break;
        h[i] = h[c];
        i = c;
    }
    if (m > 0)
        h[i] = last;
    return top;
}

/* Merge the symbols sym[0..n) in place; returns the number left in sym. */
static size_t merge_word(const struct tk_pairmap *mg, int32_t *sym, size_t n, int32_t *next, int32_t *prev,
                         struct heap_item *heap)
{
    size_t hn = 0;
    for (size_t i = 0; i < n; i++) {
        next[i] = i + 1 < n ? (int32_t)(i + 1) : -1;
        prev[i] = (int32_t)i - 1;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        struct heap_item it = {.pos = (int32_t)i};
        if (merges_get(mg, sym[i], sym[i + 1], &it.rank, &it.out))
            heap_push(heap, &hn, it);
    }
    while (hn > 0) {
        struct heap_item top = heap_pop(heap, &hn);
        int32_t p = top.pos;
        if (sym[p] < 0)
            continue; /* absorbed into its left neighbour */
        int32_t q = next[p];
        if (q < 0)
            continue;
        uint32_t r;
        int32_t o;
        if (!merges_get(mg, sym[p], sym[q], &r, &o) || o != top.out)
            continue; /* stale: a neighbour changed since this was queued */
        sym[p] = o;
        sym[q] = -1;
        next[p] = next[q];
        if (next[q] >= 0)
            prev[next[q]] = p;
        if (prev[p] >= 0) {
            struct heap_item it = {.pos = prev[p]};
            if (merges_get(mg, sym[prev[p]], sym[p], &it.rank, &it.out))
                heap_push(heap, &hn, it);
        }
        if (next[p] >= 0) {
            struct heap_item it = {.pos = p};
            if (merges_get(mg, sym[p], sym[next[p]], &it.rank, &it.out))
                heap_push(heap, &hn, it);
        }
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (sym[i] >= 0)
            sym[k++] = sym[i];
    return k;
}

int tk_bpe_word(const struct lathe_tokenizer *tk, const char *s, size_t n, int32_t **ids, size_t *n_ids,
                size_t *cap)
{
    if (n == 0)
        return LATHE_OK;
    if (tk->ignore_merges) {
        /* Llama 3: a pre-token that is a whole vocabulary entry is emitted as
         * it is, before any merging */
        int32_t id = tk_strmap_get(&tk->raw, s, n);
        if (id >= 0) {
            int rc = ids_reserve(ids, cap, *n_ids + 1);
            if (rc)
                return rc;
            (*ids)[(*n_ids)++] = id;
            return LATHE_OK;
        }
    }
    uint64_t h = 0;
    if (n <= TK_CACHE_MAXKEY) {
        int hit;
        h = tk_hash(s, n);
        int rc = cache_get(tk, h, s, n, ids, n_ids, cap, &hit);
        if (rc || hit)
            return rc;
    }

    enum { SMALL = 64 };
    int32_t sym_s[SMALL], next_s[SMALL], prev_s[SMALL];
    struct heap_item heap_s[2 * SMALL]; /* the heap holds at most 2n-2 items:
                                        * n-1 pairs, then +1 net per merge */
    int32_t *sym = sym_s, *next = next_s, *prev = prev_s;
    struct heap_item *heap = heap_s;
    void *big = NULL;
    if (n > SMALL) {
        big = malloc(n * (3 * sizeof(int32_t) + 2 * sizeof(struct heap_item)));
        if (big == NULL)
            return lathe_error(LATHE_ENOMEM, "out of memory for a %zu-byte pre-token", n);
        heap = big;
        sym = (int32_t *)(heap + 2 * n);
        next = sym + n;
        prev = next + n;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = tk->byte_id[(unsigned char)s[i]];
        /* `tokenizers` drops a character missing from the vocabulary when
         * there is no unk_token; so do we */
        if (id >= 0)
            sym[m++] = id;
    }
    m = merge_word(&tk->merges, sym, m, next, prev, heap);
    int rc = ids_reserve(ids, cap, *n_ids + m);
    if (rc == LATHE_OK) {
        memcpy(*ids + *n_ids, sym, m * sizeof *sym);
        *n_ids += m;
        if (h)
            cache_put(tk, h, s, n, sym, m);
    }
    free(big);
    return rc;
}
