/* bench/tokenizer_bench.c — encode a text file with lathe's tokenizer and
 * print the throughput; built and run by bench/tokenizer.sh.
 *   tokenizer_bench TOKENIZER.json TEXT_FILE IDS_OUT [REPEATS]
 * Prints "first MB/s" (a cold cache), "best MB/s" over REPEATS runs and the
 * token count, then the same line by line; writes the ids, one per line, to IDS_OUT for the agreement
 * check against the reference. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <lathe/status.h>
#include <lathe/tokenizer.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s TOKENIZER.json TEXT_FILE IDS_OUT [REPEATS]\n", argv[0]);
        return 2;
    }
    int repeats = argc > 4 ? atoi(argv[4]) : 5;
    FILE *f = fopen(argv[2], "rb");
    if (f == NULL) {
        perror(argv[2]);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)len + 1);
    if (text == NULL || fread(text, 1, (size_t)len, f) != (size_t)len) {
        fprintf(stderr, "%s: read failed\n", argv[2]);
        return 1;
    }
    fclose(f);
    lathe_tokenizer *tk;
    double t0 = now();
    if (lathe_tokenizer_load(&tk, argv[1]) != LATHE_OK) {
        fprintf(stderr, "lathe: %s\n", lathe_errmsg());
        return 1;
    }
    double load = now() - t0, first = 0, best = 1e30;
    int32_t *ids = NULL;
    size_t n = 0;
    for (int r = 0; r < repeats; r++) {
        free(ids);
        t0 = now();
        if (lathe_tokenizer_encode(tk, text, (size_t)len, 0, &ids, &n) != LATHE_OK) {
            fprintf(stderr, "lathe: %s\n", lathe_errmsg());
            return 1;
        }
        double dt = now() - t0;
        if (r == 0)
            first = dt;
        if (dt < best)
            best = dt;
    }
    printf("lathe      : %.2f MB/s (best of %d), %.2f MB/s first run (cold cache); %zu tokens; load %.0f ms\n",
           len / best / 1e6, repeats, len / first / 1e6, n, load * 1e3);
    /* line by line (each line with its newline), as data loaders call it */
    double best_l = 1e30;
    for (int r = 0; r < 3; r++) {
        t0 = now();
        for (long a = 0; a < len;) {
            long b = a;
            while (b < len && text[b] != '\n')
                b++;
            if (b < len)
                b++;
            int32_t *li;
            size_t ln;
            if (lathe_tokenizer_encode(tk, text + a, (size_t)(b - a), 0, &li, &ln) != LATHE_OK) {
                fprintf(stderr, "lathe: %s\n", lathe_errmsg());
                return 1;
            }
            free(li);
            a = b;
        }
        double dt = now() - t0;
        if (dt < best_l)
            best_l = dt;
    }
    printf("lathe      : %.2f MB/s line by line (best of 3)\n", len / best_l / 1e6);
    FILE *o = fopen(argv[3], "w");
    for (size_t i = 0; o && i < n; i++)
        fprintf(o, "%d\n", ids[i]);
    if (o)
        fclose(o);
    free(ids);
    free(text);
    lathe_tokenizer_free(tk);
    return 0;
}
