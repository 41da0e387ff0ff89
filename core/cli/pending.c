/* TEMPORARY while the tokenizer, chat and weights modules are written: weak
 * definitions so the command links; the real ones override them. This file
 * is removed when those modules land. */
#include <lathe/lathe.h>

#define PENDING(what) lathe_error(LATHE_EUNSUPPORTED, "%s is not built yet", what)

__attribute__((weak)) int lathe_tokenizer_load(lathe_tokenizer **out, const char *path) { (void)out, (void)path; return PENDING("the tokenizer"); }
__attribute__((weak)) void lathe_tokenizer_free(lathe_tokenizer *tk) { (void)tk; }
__attribute__((weak)) int lathe_tokenizer_encode(const lathe_tokenizer *tk, const char *t, size_t l, int a, int32_t **i, size_t *n) { (void)tk, (void)t, (void)l, (void)a, (void)i, (void)n; return PENDING("the tokenizer"); }
__attribute__((weak)) int lathe_tokenizer_decode(const lathe_tokenizer *tk, const int32_t *i, size_t n, int s, char **t) { (void)tk, (void)i, (void)n, (void)s, (void)t; return PENDING("the tokenizer"); }
__attribute__((weak)) int lathe_chat_format_parse(const char *name, int *f) { (void)name, (void)f; return PENDING("chat formats"); }
__attribute__((weak)) int lathe_chat_format_detect(const char *d, const lathe_tokenizer *tk, int *f) { (void)d, (void)tk, (void)f; return PENDING("chat formats"); }
__attribute__((weak)) int lathe_chat_encode(const lathe_tokenizer *tk, int f, const struct lathe_chat_msg *m, size_t n, int g, int32_t **i, uint8_t **k, size_t *nt) { (void)tk, (void)f, (void)m, (void)n, (void)g, (void)i, (void)k, (void)nt; return PENDING("chat formats"); }
__attribute__((weak)) int32_t lathe_chat_stop_token(const lathe_tokenizer *tk, int f) { (void)tk, (void)f; return -1; }
__attribute__((weak)) int lathe_cmd_tokenize(int argc, char **argv) { (void)argc, (void)argv; return 2; }
__attribute__((weak)) int lathe_cmd_convert(int argc, char **argv) { (void)argc, (void)argv; return 2; }
__attribute__((weak)) int lathe_cmd_data(int argc, char **argv) { (void)argc, (void)argv; return 2; }
