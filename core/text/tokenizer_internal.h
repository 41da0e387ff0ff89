/* core/text/tokenizer_internal.h — the parts of the tokenizer shared by
 * tokenizer.c (loading, added tokens, normalisation, encode/decode),
 * pretok.c (pre-tokenizers through PCRE2) and bpe.c (hash maps, merges and
 * the merge loop with its cache). Facts: formats.md §4. */
#ifndef LATHE_TEXT_TOKENIZER_INTERNAL_H
#define LATHE_TEXT_TOKENIZER_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <lathe/tokenizer.h>

/* ---- byte string → int32 hash map (open addressing, power-of-2 size) ---- */
struct tk_strmap {
    size_t cap;              /* slots; 0 when empty */
    size_t count;
    uint64_t *hash;          /* 0 = empty slot */
    const char **key;        /* not owned: points into the tokenizer's strings */
    uint32_t *klen;
    int32_t *val;
};
uint64_t tk_hash(const void *p, size_t n);
int tk_strmap_put(struct tk_strmap *m, const char *k, size_t n, int32_t v); /* overwrites */
int32_t tk_strmap_get(const struct tk_strmap *m, const char *k, size_t n);  /* -1 if absent */
void tk_strmap_free(struct tk_strmap *m);

/* ---- (left id, right id) → (rank, merged id) ---- */
struct tk_pair_slot {
    uint64_t key;            /* (left << 32 | right) + 1; 0 = empty */
    uint32_t rank;
    int32_t out;
};
struct tk_pairmap {
    size_t cap;
    struct tk_pair_slot *slot; /* one cache line access per probe */
};

/* ---- the pre-token → ids cache (bounded, shared, thread-safe) ---- */
#define TK_CACHE_SHARDS 16
#define TK_CACHE_SLOTS 4096  /* per shard, direct mapped */
#define TK_CACHE_MAXKEY 48   /* longer pre-tokens are not cached */
struct tk_cache_entry {
    uint64_t hash;           /* 0 = empty */
    uint16_t klen, nids;
    char *blob;              /* klen key bytes, then nids int32 ids (aligned) */
};
struct tk_cache_shard {
    pthread_mutex_t mu;
    struct tk_cache_entry *slot;
};

/* ---- pre-tokenizers ---- */
enum tk_behavior { TK_ISOLATED, TK_REMOVED, TK_MERGED_PREV, TK_MERGED_NEXT, TK_CONTIGUOUS };
enum tk_pre_kind { TK_PRE_SPLIT, TK_PRE_BYTELEVEL };
struct tk_pre {
    enum tk_pre_kind kind;
    /* Split (also ByteLevel's use_regex and Digits, which are splits) */
    pcre2_code *re;          /* NULL for a String pattern */
    char *literal;           /* String pattern */
    size_t literal_len;
    enum tk_behavior behavior;
    int invert;
    /* ByteLevel */
    int add_prefix_space;
};

/* A list of pieces: spans into one byte buffer. */
struct tk_pieces {
    char *buf;
    size_t len, cap;
    size_t *off, *plen;
    size_t n, ncap;
};

struct tk_added {
    char *content;
    size_t len;
    int32_t id;
    int special, lstrip, rstrip, single_word, normalized;
};

struct lathe_tokenizer {
    char *path;              /* the tokenizer.json, for messages */
    /* vocabulary */
    int64_t n_ids;           /* largest id + 1 */
    char **tok;              /* by id: the token string (byte-level alphabet); NULL for holes */
    uint32_t *tok_len;
    struct tk_strmap vocab;  /* token string → id (model vocabulary) */
    struct tk_strmap raw;    /* decoded bytes → id (tokens wholly in the byte alphabet) */
    char **raw_key;          /* owned decoded-byte strings backing `raw` */
    int32_t byte_id[256];    /* id of the one-character token of each byte; -1 if absent */
    struct tk_pairmap merges;
    int ignore_merges;
    /* added tokens */
    struct tk_added *added;
    size_t n_added;
    struct tk_strmap added_map;
    uint8_t *is_special;     /* by id */
    size_t *first_raw[256], n_first_raw[256];   /* indices into added, longest first */
    size_t *first_norm[256], n_first_norm[256];
    size_t n_norm_added;
    /* normalizer: steps in order */
#define TK_NORM_NFC 1
#define TK_NORM_LOWER 2
    uint8_t norm[8];
    size_t n_norm;
    /* pre-tokenizer */
    struct tk_pre *pre;
    size_t n_pre;
    /* post-processor: ids around the sequence when add_special */
    int32_t *prefix, *suffix;
    size_t n_prefix, n_suffix;
    /* cache */
    struct tk_cache_shard cache[TK_CACHE_SHARDS];
};

/* byte-level alphabet (formats.md §4.2): bytes 0x21-0x7E, 0xA1-0xAC and
 * 0xAE-0xFF stand for themselves; the other 68, in order, become U+0100+n. */
static inline uint32_t tk_byte_char(unsigned b)
{
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)
        return b;
    if (b <= 0x20)
        return 0x100 + b;
    if (b <= 0xA0)
        return 0x100 + 33 + (b - 0x7F);
    return 0x100 + 67; /* 0xAD */
}
static inline int tk_char_byte(uint32_t cp)
{
    if (cp < 0x100)
        return tk_byte_char(cp) == cp ? (int)cp : -1;
    if (cp <= 0x120)
        return (int)(cp - 0x100);
    if (cp <= 0x142)
        return (int)(cp - 0x100 - 33 + 0x7F);
    return cp == 0x143 ? 0xAD : -1;
}

/* bpe.c */
int tk_merges_put(struct lathe_tokenizer *tk, int32_t a, int32_t b, uint32_t rank, int32_t out);
void tk_merges_free(struct tk_pairmap *m);
int tk_cache_init(struct lathe_tokenizer *tk);
void tk_cache_free(struct lathe_tokenizer *tk);
/* Append the ids of one pre-token (raw bytes) to *ids. */
int tk_bpe_word(const struct lathe_tokenizer *tk, const char *s, size_t n, int32_t **ids, size_t *n_ids,
                size_t *cap);

/* pretok.c; the json argument is a jansson json_t *. */
int tk_pre_parse(struct lathe_tokenizer *tk, const void *json);
void tk_pre_free(struct lathe_tokenizer *tk);
/* Run all stages over one segment; the result goes to *out (reset first). */
int tk_pre_run(const struct lathe_tokenizer *tk, const char *s, size_t n, struct tk_pieces *out,
               struct tk_pieces *tmp, pcre2_match_data **md);

int tk_pieces_add(struct tk_pieces *p, const char *s, size_t n, int prefix_space);
void tk_pieces_free(struct tk_pieces *p);

#endif
