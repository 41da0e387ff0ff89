/* lathe/chat.h — chat formats: messages to the token ids a chat model was
 * trained on, with the mask of the tokens to learn.
 *
 * Formats (facts: Qwen2 ChatML, DeepSeek-R1, Llama 3 templates):
 *  - LATHE_CHAT_CHATML:  <|im_start|>ROLE\nCONTENT<|im_end|>\n per message;
 *    a default system turn when the first message is not "system";
 *    generation prompt <|im_start|>assistant\n; stop at <|im_end|>.
 *  - LATHE_CHAT_DEEPSEEK_R1: BOS, system text bare, <｜User｜>CONTENT,
 *    <｜Assistant｜>CONTENT<｜end▁of▁sentence｜>; earlier assistant turns keep
 *    only the text after their last </think>; prompt <｜Assistant｜>.
 *  - LATHE_CHAT_LLAMA3: <|begin_of_text|> then per message
 *    <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>; prompt
 *    <|start_header_id|>assistant<|end_header_id|>\n\n; stop at <|eot_id|>.
 */
#ifndef LATHE_CHAT_H
#define LATHE_CHAT_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

enum lathe_chat_format {
    LATHE_CHAT_CHATML = 0,
    LATHE_CHAT_DEEPSEEK_R1,
    LATHE_CHAT_LLAMA3,
    LATHE_CHAT_FORMAT_COUNT
};

struct lathe_chat_msg {
    const char *role;     /* "system", "user", "assistant" */
    const char *content;  /* UTF-8 */
};

/* "chatml", "deepseek-r1", "llama3" <-> enum; parse returns LATHE_EINVAL
 * listing the names. */
const char *lathe_chat_format_name(int format);
int lathe_chat_format_parse(const char *name, int *format);
/* Guess the format from a model directory's tokenizer_config.json
 * (chat_template) or, failing that, from the tokenizer's special tokens. */
int lathe_chat_format_detect(const char *model_dir, const lathe_tokenizer *tk, int *format);

/* Render and tokenize a conversation. *ids and *mask (n entries each) are
 * malloc'd; mask[i] = 1 for tokens to learn (assistant content and the
 * token that ends the assistant turn), 0 otherwise. add_generation_prompt
 * appends the assistant prompt (for generation; the mask stays 0 there). */
int lathe_chat_encode(const lathe_tokenizer *tk, int format, const struct lathe_chat_msg *msgs, size_t n,
                      int add_generation_prompt, int32_t **ids, uint8_t **mask, size_t *ntok);
/* The token id that ends an assistant turn (generation stops there). */
int32_t lathe_chat_stop_token(const lathe_tokenizer *tk, int format);

/* ---- chat data (jsonl-chat, lathe data) ---- */
/* Parse one conversation written in JSON: a list of {"role","content"}
 * messages or an object whose "messages" is such a list. Roles are
 * "system", "user" and "assistant"; contents are strings. On success *msgs
 * (*n entries) is one malloc'd block that holds the strings too: free(*msgs).
 * A malformed conversation is LATHE_EINVAL with a message that says what is
 * wrong (the column of bad JSON, the index of a bad message, the unknown
 * role) but not where: the caller prefixes "FILE:LINE: ".
 * require_assistant: a conversation without an assistant message is bad. */
int lathe_chat_parse(const char *json, size_t len, int require_assistant, struct lathe_chat_msg **msgs,
                     size_t *n);
/* The default system prompt that a model's chat template inserts when a
 * conversation has none (ChatML templates such as Qwen2.5's and SmolLM2's
 * carry their own), read from model_dir's tokenizer_config.json. *text is
 * malloc'd (the caller frees it), or NULL when the template has none or the
 * directory has no template; lathe_chat_encode itself uses Qwen2's. */
int lathe_chat_default_system(const char *model_dir, int format, char **text);

#ifdef __cplusplus
}
#endif
#endif
