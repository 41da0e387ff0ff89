/* core/cli/cmd_tokenize.c — `lathe tokenize`: show how a tokenizer cuts a
 * text.
 *
 *   lathe tokenize --model DIR|tokenizer.json [--file F] [--add-special] [TEXT]
 *
 * argv holds the arguments after "tokenize". Prints the number of tokens,
 * the ids on one line, then one line per token: id, the token string and
 * the piece it decodes to (special tokens marked). Exit status 0, 1 with the
 * error message on failure, 2 on bad usage. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lathe/lathe.h>

#include "cli/cli.h"

static void tokenize_usage(FILE *f)
{
    fprintf(f, "usage: lathe tokenize --model DIR|tokenizer.json [--add-special] (--file F | TEXT)\n"
               "Prints the token ids of TEXT (or of the file F) and the piece each token decodes to.\n"
               "  --add-special  prepend/append what the post-processor adds (e.g. a BOS)\n");
}

static int read_file(const char *path, char **buf, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return lathe_error(LATHE_EIO, "%s: cannot open for reading", path);
    size_t cap = 1 << 16, len = 0;
    char *b = malloc(cap);
    while (b) {
        size_t r = fread(b + len, 1, cap - len, f);
        len += r;
        if (len < cap)
            break;
        char *nb = realloc(b, cap *= 2);
        if (nb == NULL)
            free(b);
        b = nb;
    }
    int err = ferror(f);
    fclose(f);
    if (b == NULL)
        return lathe_error(LATHE_ENOMEM, "%s: out of memory", path);
    if (err) {
        free(b);
        return lathe_error(LATHE_EIO, "%s: read error", path);
    }
    *buf = b;
    *n = len;
    return LATHE_OK;
}

/* Print s with control characters escaped, so that each piece stays on one
 * line. */
static void print_escaped(const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '\n')
            fputs("\\n", stdout);
        else if (c == '\r')
            fputs("\\r", stdout);
        else if (c == '\t')
            fputs("\\t", stdout);
        else if (c == '\\')
            fputs("\\\\", stdout);
        else if (c < 0x20 || c == 0x7F)
            printf("\\x%02x", c);
        else
            putchar(c);
    }
}

int lathe_cmd_tokenize(int argc, char **argv)
{
    const char *model = NULL, *file = NULL, *text = NULL;
    int add_special = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if ((strcmp(a, "--model") == 0 || strcmp(a, "--file") == 0) && i + 1 < argc) {
            if (a[2] == 'm')
                model = argv[++i];
            else
                file = argv[++i];
        } else if (strncmp(a, "--model=", 8) == 0) {
            model = a + 8;
        } else if (strncmp(a, "--file=", 7) == 0) {
            file = a + 7;
        } else if (strcmp(a, "--add-special") == 0) {
            add_special = 1;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            tokenize_usage(stdout);
            return 0;
        } else if (a[0] == '-' && a[1] == '-' && text == NULL && strcmp(a, "--") != 0) {
            fprintf(stderr, "lathe tokenize: unknown option %s\n", a);
            tokenize_usage(stderr);
            return 2;
        } else if (strcmp(a, "--") == 0 && i + 1 < argc && text == NULL) {
            text = argv[++i];
        } else if (text == NULL) {
            text = a;
        } else {
            fprintf(stderr, "lathe tokenize: more than one TEXT (quote it)\n");
            return 2;
        }
    }
    if (model == NULL || (text == NULL) == (file == NULL)) {
        fprintf(stderr, "lathe tokenize: needs --model and exactly one of --file F or TEXT\n");
        tokenize_usage(stderr);
        return 2;
    }
    char *buf = NULL;
    size_t len = 0;
    if (file) {
        if (read_file(file, &buf, &len))
            return lathe_cli_fail();
    } else {
        len = strlen(text);
    }
    lathe_tokenizer *tk = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = lathe_tokenizer_load(&tk, model);
    if (rc == LATHE_OK)
        rc = lathe_tokenizer_encode(tk, file ? buf : text, len, add_special, &ids, &n);
    free(buf);
    if (rc) {
        lathe_tokenizer_free(tk);
        return lathe_cli_fail();
    }
    printf("%zu tokens\nids:", n);
    for (size_t i = 0; i < n; i++)
        printf(" %d", ids[i]);
    printf("\n");
    for (size_t i = 0; i < n && rc == LATHE_OK; i++) {
        char *piece = NULL;
        rc = lathe_tokenizer_decode(tk, &ids[i], 1, 0, &piece);
        if (rc)
            break;
        printf("%8d  %s", ids[i], lathe_tokenizer_is_special(tk, ids[i]) ? "[special] " : "");
        print_escaped(lathe_tokenizer_token(tk, ids[i]) ? lathe_tokenizer_token(tk, ids[i]) : "");
        printf("  \"");
        print_escaped(piece);
        printf("\"\n");
        free(piece);
    }
    free(ids);
    lathe_tokenizer_free(tk);
    return rc ? lathe_cli_fail() : 0;
}
