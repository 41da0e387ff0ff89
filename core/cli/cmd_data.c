/* core/cli/cmd_data.c — `lathe data check|dedup`: look at chat data before
 * training on it.
 *
 *   lathe data check FILE.jsonl --model DIR [--template NAME] [--max-length N]
 *       every bad line (FILE:LINE: what), counts, token lengths in the
 *       model's chat format, exact duplicates; exit 1 when a line is bad.
 *   lathe data dedup IN.jsonl OUT.jsonl
 *       drop conversations whose messages repeat an earlier line's.
 *
 * Two lines are duplicates when their messages (role and content, after
 * JSON parsing) are equal, whatever their spacing or other keys.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "lathe/lathe.h"

static void data_usage(FILE *f)
{
    fprintf(f, "usage: lathe data check FILE.jsonl --model DIR [--template NAME] [--max-length N]\n"
               "       lathe data dedup IN.jsonl OUT.jsonl\n"
               "\n"
               "check: report every malformed line (FILE:LINE), the counts of conversations and\n"
               "       messages, token lengths in the model's chat format (--template chatml,\n"
               "       deepseek-r1 or llama3; detected from DIR by default) and exact duplicates;\n"
               "       exits 1 when a line is bad. --max-length (default 1024) is the length\n"
               "       beyond which [data] jsonl-chat truncates.\n"
               "dedup: copy IN to OUT without the conversations that repeat an earlier one.\n");
}

/* ---- the file, line by line ----------------------------------------- */

struct lines {
    char *buf;
    size_t len, pos;
    long long lineno;
};

static int lines_open(struct lines *ls, const char *path)
{
    memset(ls, 0, sizeof *ls);
    FILE *f = fopen(path, "rb");
    if (!f)
        return lathe_error(LATHE_EIO, "cannot open '%s': %s", path, strerror(errno));
    size_t cap = 0, got;
    do {
        if (cap - ls->len < 65536) {
            cap = cap ? cap * 2 : 1 << 20;
            char *nb = realloc(ls->buf, cap + 1);
            if (!nb) {
                fclose(f);
                free(ls->buf);
                return lathe_error(LATHE_ENOMEM, "out of memory reading '%s'", path);
            }
            ls->buf = nb;
        }
        got = fread(ls->buf + ls->len, 1, cap - ls->len, f);
        ls->len += got;
    } while (got > 0);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(ls->buf);
        return lathe_error(LATHE_EIO, "error reading '%s'", path);
    }
    ls->buf[ls->len] = '\0';
    return LATHE_OK;
}

/* The next line that is not blank (without its \r\n); 0 at the end. */
static int lines_next(struct lines *ls, const char **s, size_t *n)
{
    while (ls->pos < ls->len) {
        size_t i = ls->pos, e = i;
        while (e < ls->len && ls->buf[e] != '\n')
            e++;
        ls->pos = e + 1;
        ls->lineno++;
        size_t le = e;
        if (le > i && ls->buf[le - 1] == '\r')
            le--;
        for (size_t k = i; k < le; k++)
            if (ls->buf[k] != ' ' && ls->buf[k] != '\t') {
                *s = ls->buf + i;
                *n = le - i;
                return 1;
            }
    }
    return 0;
}

/* ---- exact duplicates ------------------------------------------------ */

/* Conversations keyed by role\0content\0... (JSON strings cannot hold a
 * NUL here: the parser refuses \u0000), in an open-addressing table. */
struct dedup {
    char *keys;
    size_t klen, kcap;
    size_t *koff, *ksize;
    long long *kline;
    size_t n, cap;
    size_t *slot;     /* index + 1 into koff, 0 = empty */
    uint64_t *shash;
    size_t nslot;
};

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return h;
}

static void dedup_free(struct dedup *d)
{
    free(d->keys);
    free(d->koff);
    free(d->ksize);
    free(d->kline);
    free(d->slot);
    free(d->shash);
}

static int dedup_grow(struct dedup *d)
{
    size_t ns = d->nslot ? d->nslot * 2 : 1024;
    size_t *slot = calloc(ns, sizeof *slot);
    uint64_t *sh = calloc(ns, sizeof *sh);
    if (!slot || !sh) {
        free(slot);
        free(sh);
        return LATHE_ENOMEM;
    }
    for (size_t i = 0; i < d->nslot; i++)
        if (d->slot[i]) {
            size_t j = d->shash[i] & (ns - 1);
            while (slot[j])
                j = (j + 1) & (ns - 1);
            slot[j] = d->slot[i];
            sh[j] = d->shash[i];
        }
    free(d->slot);
    free(d->shash);
    d->slot = slot;
    d->shash = sh;
    d->nslot = ns;
    return LATHE_OK;
}

/* Add the conversation of `line`; *first = the line it repeats, or 0. */
static int dedup_add(struct dedup *d, const struct lathe_chat_msg *m, size_t nm, long long line, long long *first)
{
    *first = 0;
    size_t need = 0;
    for (size_t i = 0; i < nm; i++)
        need += strlen(m[i].role) + strlen(m[i].content) + 2;
    if (d->klen + need > d->kcap) {
        size_t nc = d->kcap ? d->kcap : 1 << 16;
        while (nc < d->klen + need)
            nc *= 2;
        char *nk = realloc(d->keys, nc);
        if (!nk)
            return lathe_error(LATHE_ENOMEM, "out of memory");
        d->keys = nk;
        d->kcap = nc;
    }
    char *k = d->keys + d->klen;
    size_t p = 0;
    for (size_t i = 0; i < nm; i++) {
        size_t a = strlen(m[i].role) + 1, b = strlen(m[i].content) + 1;
        memcpy(k + p, m[i].role, a);
        memcpy(k + p + a, m[i].content, b);
        p += a + b;
    }
    uint64_t h = fnv1a(k, need);
    if ((d->n + 1) * 2 > d->nslot && dedup_grow(d))
        return lathe_error(LATHE_ENOMEM, "out of memory");
    size_t j = h & (d->nslot - 1);
    for (; d->slot[j]; j = (j + 1) & (d->nslot - 1)) {
        size_t e = d->slot[j] - 1;
        if (d->shash[j] == h && d->ksize[e] == need && memcmp(d->keys + d->koff[e], k, need) == 0) {
            *first = d->kline[e];
            return LATHE_OK;
        }
    }
    if (d->n == d->cap) {
        size_t nc = d->cap ? d->cap * 2 : 1024;
        size_t *no = realloc(d->koff, nc * sizeof *no);
        if (no)
            d->koff = no;
        size_t *nsz = no ? realloc(d->ksize, nc * sizeof *nsz) : NULL;
        if (nsz)
            d->ksize = nsz;
        long long *nl = nsz ? realloc(d->kline, nc * sizeof *nl) : NULL;
        if (!nl)
            return lathe_error(LATHE_ENOMEM, "out of memory");
        d->kline = nl;
        d->cap = nc;
    }
    d->koff[d->n] = d->klen;
    d->ksize[d->n] = need;
    d->kline[d->n] = line;
    d->klen += need;
    d->n++;
    d->slot[j] = d->n;
    d->shash[j] = h;
    return LATHE_OK;
}

/* ---- check ------------------------------------------------------------- */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

#define DUP_SHOW 5

static int data_check(const char *file, const char *model, const char *tpl_name, long long max_len)
{
    lathe_tokenizer *tk = NULL;
    char *sys = NULL, *mdir = NULL;
    int64_t *lens = NULL;
    struct lines ls;
    struct dedup dd = {0};
    int format, rc;
    if ((rc = lathe_tokenizer_load(&tk, model)))
        return lathe_cli_fail();
    /* the directory that holds tokenizer_config.json */
    struct stat sb;
    mdir = strdup(model);
    if (mdir && stat(model, &sb) == 0 && !S_ISDIR(sb.st_mode)) {
        char *slash = strrchr(mdir, '/');
        if (slash)
            *slash = '\0';
        else
            strcpy(mdir, ".");
    }
    if (!mdir)
        rc = lathe_error(LATHE_ENOMEM, "out of memory");
    else if (tpl_name)
        rc = lathe_chat_format_parse(tpl_name, &format);
    else
        rc = lathe_chat_format_detect(mdir, tk, &format);
    if (rc || (rc = lathe_chat_default_system(mdir, format, &sys)) || (rc = lines_open(&ls, file))) {
        lathe_tokenizer_free(tk);
        free(mdir);
        return lathe_cli_fail();
    }

    long long bad = 0, convs = 0, msgs_by[3] = {0}, over = 0;
    long long dups = 0, dup_line[DUP_SHOW], dup_first[DUP_SHOW];
    int64_t total_tok = 0, asst_tok = 0;
    size_t ncap = 0;
    static const char *const roles[3] = {"system", "user", "assistant"};
    const char *s;
    size_t n;
    int fatal = 0;
    while (!fatal && lines_next(&ls, &s, &n)) {
        struct lathe_chat_msg *m;
        size_t nm;
        if (lathe_chat_parse(s, n, 1, &m, &nm)) {
            fprintf(stderr, "%s:%lld: %s\n", file, ls.lineno, lathe_errmsg());
            bad++;
            continue;
        }
        for (size_t i = 0; i < nm; i++)
            for (int r = 0; r < 3; r++)
                msgs_by[r] += strcmp(m[i].role, roles[r]) == 0;
        long long first;
        if (dedup_add(&dd, m, nm, ls.lineno, &first)) {
            free(m);
            fatal = 1;
            break;
        }
        if (first) {
            if (dups < DUP_SHOW) {
                dup_line[dups] = ls.lineno;
                dup_first[dups] = first;
            }
            dups++;
        }
        /* render as jsonl-chat does, with the template's own default system */
        struct lathe_chat_msg *use = m;
        size_t nu = nm;
        if (sys && strcmp(m[0].role, "system") != 0 && (use = malloc((nm + 1) * sizeof *use))) {
            use[0] = (struct lathe_chat_msg){"system", sys};
            memcpy(use + 1, m, nm * sizeof *m);
            nu = nm + 1;
        }
        int32_t *ids = NULL;
        uint8_t *mask = NULL;
        size_t nt = 0;
        rc = use ? lathe_chat_encode(tk, format, use, nu, 0, &ids, &mask, &nt)
                 : lathe_error(LATHE_ENOMEM, "out of memory");
        if (use != m)
            free(use);
        free(m);
        if (rc) {
            lathe_error_prefix(rc, "%s:%lld", file, ls.lineno);
            fatal = 1;
            break;
        }
        for (size_t t = 0; t < nt; t++)
            asst_tok += mask[t];
        free(ids);
        free(mask);
        if ((size_t)convs == ncap) {
            ncap = ncap ? ncap * 2 : 1024;
            int64_t *nl = realloc(lens, ncap * sizeof *nl);
            if (!nl) {
                lathe_error(LATHE_ENOMEM, "out of memory");
                fatal = 1;
                break;
            }
            lens = nl;
        }
        lens[convs++] = (int64_t)nt;
        total_tok += (int64_t)nt;
        over += (long long)nt > max_len;
    }
    int status = 0;
    if (fatal) {
        status = lathe_cli_fail();
    } else {
        printf("%s: %lld conversation%s, %lld bad line%s\n", file, convs, convs == 1 ? "" : "s", bad,
               bad == 1 ? "" : "s");
        printf("messages: %lld system, %lld user, %lld assistant\n", msgs_by[0], msgs_by[1], msgs_by[2]);
        printf("tokens (%s): %lld in all, %lld assistant (learnt)\n", lathe_chat_format_name(format),
               (long long)total_tok, (long long)asst_tok);
        if (convs > 0) {
            qsort(lens, (size_t)convs, sizeof *lens, cmp_i64);
            double median = convs % 2 ? (double)lens[convs / 2]
                                      : 0.5 * (double)(lens[convs / 2 - 1] + lens[convs / 2]);
            /* nearest rank */
            long long r95 = (95 * convs + 99) / 100;
            printf("length: min %lld, mean %.1f, median %g, p95 %lld, max %lld; %lld over max_length %lld\n",
                   (long long)lens[0], (double)total_tok / (double)convs, median, (long long)lens[r95 - 1],
                   (long long)lens[convs - 1], over, max_len);
        }
        printf("duplicates: %lld", dups);
        for (long long i = 0; i < dups && i < DUP_SHOW; i++)
            printf("%s line %lld = line %lld", i ? "," : ";", dup_line[i], dup_first[i]);
        printf("%s\n", dups > DUP_SHOW ? ", ..." : "");
        if (dups)
            printf("  (lathe data dedup %s OUT.jsonl removes them)\n", file);
        status = bad ? 1 : 0;
    }
    free(ls.buf);
    free(lens);
    free(sys);
    free(mdir);
    dedup_free(&dd);
    lathe_tokenizer_free(tk);
    return status;
}

/* ---- dedup ------------------------------------------------------------- */

static int data_dedup(const char *in, const char *out)
{
    struct stat si, so;
    if (strcmp(in, out) == 0 ||
        (stat(in, &si) == 0 && stat(out, &so) == 0 && si.st_dev == so.st_dev && si.st_ino == so.st_ino)) {
        fprintf(stderr, "lathe data dedup: OUT '%s' is the input file; write to another file\n", out);
        return 2;
    }
    struct lines ls;
    if (lines_open(&ls, in))
        return lathe_cli_fail();
    /* first pass: which lines to keep; a bad line stops everything */
    size_t cap = 1024, nkeep = 0;
    size_t *keep_off = malloc(cap * sizeof *keep_off), *keep_len = malloc(cap * sizeof *keep_len);
    struct dedup dd = {0};
    long long bad = 0, total = 0, removed = 0;
    int fatal = !keep_off || !keep_len;
    const char *s;
    size_t n;
    while (!fatal && lines_next(&ls, &s, &n)) {
        struct lathe_chat_msg *m;
        size_t nm;
        if (lathe_chat_parse(s, n, 0, &m, &nm)) {
            fprintf(stderr, "%s:%lld: %s\n", in, ls.lineno, lathe_errmsg());
            bad++;
            continue;
        }
        total++;
        long long first;
        fatal = dedup_add(&dd, m, nm, ls.lineno, &first) != LATHE_OK;
        free(m);
        if (fatal || first) {
            removed += !fatal;
            continue;
        }
        if (nkeep == cap) {
            cap *= 2;
            size_t *a = realloc(keep_off, cap * sizeof *a);
            if (a)
                keep_off = a;
            size_t *b = a ? realloc(keep_len, cap * sizeof *b) : NULL;
            if (!b) {
                fatal = 1;
                break;
            }
            keep_len = b;
        }
        keep_off[nkeep] = (size_t)(s - ls.buf);
        keep_len[nkeep++] = n;
    }
    dedup_free(&dd);
    int status = 0;
    if (fatal) {
        fprintf(stderr, "lathe data dedup: out of memory\n");
        status = 1;
    } else if (bad) {
        fprintf(stderr, "lathe data dedup: %lld bad line%s in '%s'; fix or remove %s first (nothing written)\n",
                bad, bad == 1 ? "" : "s", in, bad == 1 ? "it" : "them");
        status = 1;
    } else {
        /* write next to OUT, then rename: OUT is whole or untouched */
        size_t ol = strlen(out);
        char *tmp = malloc(ol + 16);
        int fd = -1;
        FILE *f = NULL;
        if (tmp) {
            snprintf(tmp, ol + 16, "%s.tmp.XXXXXX", out);
            fd = mkstemp(tmp);
        }
        if (fd >= 0) {
            mode_t um = umask(0);
            umask(um);
            fchmod(fd, 0666 & ~um);
            f = fdopen(fd, "wb");
        }
        int ok = f != NULL;
        for (size_t i = 0; ok && i < nkeep; i++)
            ok = fwrite(ls.buf + keep_off[i], 1, keep_len[i], f) == keep_len[i] && fputc('\n', f) != EOF;
        if (f) {
            ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
            ok = (fclose(f) == 0) && ok;
        } else if (fd >= 0) {
            close(fd);
        }
        if (ok && rename(tmp, out) != 0)
            ok = 0;
        if (!ok) {
            fprintf(stderr, "lathe data dedup: cannot write '%s': %s\n", out, strerror(errno));
            if (fd >= 0)
                unlink(tmp);
            status = 1;
        } else {
            printf("%s: %lld conversations, removed %lld duplicate%s; wrote %zu to %s\n", in, total, removed,
                   removed == 1 ? "" : "s", nkeep, out);
        }
        free(tmp);
    }
    free(keep_off);
    free(keep_len);
    free(ls.buf);
    return status;
}

/* ---- arguments ------------------------------------------------------- */

/* --name VALUE or --name=VALUE at argv[*i]; NULL if argv[*i] is another. */
static const char *opt_value(int argc, char **argv, int *i, const char *name, int *missing)
{
    size_t l = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, l) != 0)
        return NULL;
    if (a[l] == '=')
        return a + l + 1;
    if (a[l] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        *missing = 1;
        return NULL;
    }
    return argv[++*i];
}

int lathe_cmd_data(int argc, char **argv)
{
    if (argc < 1 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
        data_usage(argc < 1 ? stderr : stdout);
        return argc < 1 ? 2 : 0;
    }
    if (strcmp(argv[0], "dedup") == 0) {
        if (argc != 3) {
            fprintf(stderr, "lathe data dedup: expected IN.jsonl OUT.jsonl\n");
            data_usage(stderr);
            return 2;
        }
        return data_dedup(argv[1], argv[2]);
    }
    if (strcmp(argv[0], "check") != 0) {
        fprintf(stderr, "lathe data: unknown subcommand '%s' (check or dedup)\n", argv[0]);
        data_usage(stderr);
        return 2;
    }
    const char *file = NULL, *model = NULL, *tpl = NULL, *v;
    long long max_len = 1024;
    for (int i = 1; i < argc; i++) {
        int missing = 0;
        if ((v = opt_value(argc, argv, &i, "--model", &missing))) {
            model = v;
        } else if ((v = opt_value(argc, argv, &i, "--template", &missing))) {
            tpl = v;
        } else if ((v = opt_value(argc, argv, &i, "--max-length", &missing))) {
            char *end;
            errno = 0;
            max_len = strtoll(v, &end, 10);
            if (errno || *end || end == v || max_len < 1) {
                fprintf(stderr, "lathe data check: --max-length '%s' is not a positive integer\n", v);
                return 2;
            }
        } else if (missing) {
            fprintf(stderr, "lathe data check: %s needs a value\n", argv[i]);
            return 2;
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            fprintf(stderr, "lathe data check: unknown option '%s'\n", argv[i]);
            return 2;
        } else if (!file) {
            file = argv[i];
        } else {
            fprintf(stderr, "lathe data check: unexpected argument '%s' (one FILE.jsonl)\n", argv[i]);
            return 2;
        }
    }
    if (!file || !model) {
        fprintf(stderr, "lathe data check: %s\n", !file ? "no FILE.jsonl given" : "--model DIR is required (its "
                "tokenizer measures the lengths)");
        data_usage(stderr);
        return 2;
    }
    return data_check(file, model, tpl, max_len);
}
