/* lathe/tokenizer.h — Hugging Face tokenizer.json (byte-level BPE).
 *
 * Reproduces the `tokenizers` library for the byte-level BPE tokenizers of
 * GPT-2, Llama 3, Qwen2/Qwen3, DeepSeek-V3/R1 and SmolLM: added/special
 * tokens matched in the raw text first, the normalizer (NFC or none), the
 * pre-tokenizer (Split regexes through PCRE2 with Unicode properties,
 * Sequence, ByteLevel), BPE merges (string or pair form), and the ByteLevel
 * decoder. The post-processor's BOS (when the file asks for one) is added by
 * lathe_tokenizer_encode only when add_special is true.
 *
 * A tokenizer is immutable after loading and may be used from several
 * threads at once. */
#ifndef LATHE_TOKENIZER_H
#define LATHE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lathe_tokenizer lathe_tokenizer;

/* path: a tokenizer.json file, or a directory holding one. Errors name the
 * file and what is unsupported (a WordPiece model, an unknown pre-tokenizer,
 * ...). */
int lathe_tokenizer_load(lathe_tokenizer **out, const char *path);
void lathe_tokenizer_free(lathe_tokenizer *tk);

/* Encode len bytes of UTF-8 text (invalid UTF-8 is an error naming the byte
 * offset). *ids is malloc'd; the caller frees it. Added tokens in the text
 * are recognised (as the `tokenizers` library does with special tokens
 * enabled). add_special: prepend the BOS the post-processor asks for. */
int lathe_tokenizer_encode(const lathe_tokenizer *tk, const char *text, size_t len, int add_special,
                           int32_t **ids, size_t *n);
/* Decode ids to UTF-8 (*text malloc'd, NUL-terminated; the caller frees it).
 * skip_special: leave out special added tokens. Ids out of range are an
 * error. */
int lathe_tokenizer_decode(const lathe_tokenizer *tk, const int32_t *ids, size_t n, int skip_special,
                           char **text);

/* Number of ids (vocabulary plus added tokens; the largest id + 1). */
int64_t lathe_tokenizer_vocab_size(const lathe_tokenizer *tk);
/* The id of a token string (vocabulary or added token), or -1. */
int32_t lathe_tokenizer_token_id(const lathe_tokenizer *tk, const char *token);
/* The token string of an id (in the vocabulary's byte-level alphabet), or
 * NULL. Owned by the tokenizer. */
const char *lathe_tokenizer_token(const lathe_tokenizer *tk, int32_t id);
/* Whether id is a special added token. */
int lathe_tokenizer_is_special(const lathe_tokenizer *tk, int32_t id);

#ifdef __cplusplus
}
#endif
#endif
