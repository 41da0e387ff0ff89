/* core/util/strutil.c — small string and path helpers (see strutil.h). */
#include "util/strutil.h"

#include <lathe/status.h>

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

char *lathe_str_dup(const char *s)
{
    if (!s)
        return NULL;
    return lathe_str_ndup(s, strlen(s));
}

char *lathe_str_ndup(const char *s, size_t n)
{
    if (!s)
        return NULL;
    size_t len = strnlen(s, n);
    char *p = malloc(len + 1);
    if (!p)
        return NULL;
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

char *lathe_str_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (len < 0)
        return NULL;
    char *p = malloc((size_t)len + 1);
    if (!p)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(p, (size_t)len + 1, fmt, ap);
    va_end(ap);
    return p;
}

char *lathe_str_trim(char *s)
{
    if (!s)
        return NULL;
    while (*s && isspace((unsigned char)*s))
        s++;
    char *end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1]))
        end--;
    *end = '\0';
    return s;
}

static size_t min3(size_t a, size_t b, size_t c)
{
    size_t m = a < b ? a : b;
    return m < c ? m : c;
}

/* Optimal string alignment distance (Damerau 1964's adjacent transposition
 * added to Levenshtein 1966), kept to three rows of the usual DP table:
 * row i-2 is needed for the transposition case. */
size_t lathe_str_edit_distance(const char *a, const char *b)
{
    size_t n = strlen(a), m = strlen(b);
    if (n == 0)
        return m;
    if (m == 0)
        return n;
    size_t *rows = malloc(3 * (m + 1) * sizeof *rows);
    if (!rows)
        return SIZE_MAX;
    size_t *pp = rows, *p = rows + (m + 1), *c = rows + 2 * (m + 1);
    for (size_t j = 0; j <= m; j++)
        p[j] = j;
    for (size_t i = 1; i <= n; i++) {
        int ai = tolower((unsigned char)a[i - 1]);
        c[0] = i;
        for (size_t j = 1; j <= m; j++) {
            int bj = tolower((unsigned char)b[j - 1]);
            size_t cost = ai == bj ? 0 : 1;
            size_t d = min3(p[j] + 1, c[j - 1] + 1, p[j - 1] + cost);
            if (i > 1 && j > 1 && ai == tolower((unsigned char)b[j - 2]) &&
                tolower((unsigned char)a[i - 2]) == bj && pp[j - 2] + 1 < d)
                d = pp[j - 2] + 1;
            c[j] = d;
        }
        size_t *t = pp;
        pp = p;
        p = c;
        c = t;
    }
    size_t d = p[m];
    free(rows);
    return d;
}

static int mkdir_one(const char *dir, const char *full)
{
    if (mkdir(dir, 0777) == 0)
        return LATHE_OK;
    int e = errno;
    struct stat st;
    if (e == EEXIST) {
        if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode))
            return LATHE_OK;
        return lathe_error(LATHE_EIO, "cannot create directory '%s': '%s' exists and is not a directory; "
                           "remove it or choose another path", full, dir);
    }
    if (strcmp(dir, full) == 0)
        return lathe_error(LATHE_EIO, "cannot create directory '%s': %s; check the path and its permissions",
                           full, strerror(e));
    return lathe_error(LATHE_EIO, "cannot create directory '%s' (making '%s'): %s; check the path and its "
                       "permissions", full, dir, strerror(e));
}

int lathe_mkdir_p(const char *path)
{
    if (!path || !*path)
        return lathe_error(LATHE_EINVAL, "lathe_mkdir_p: empty path");
    char *buf = lathe_str_dup(path);
    if (!buf)
        return lathe_error(LATHE_ENOMEM, "lathe_mkdir_p: out of memory");
    size_t len = strlen(buf);
    while (len > 1 && buf[len - 1] == '/')
        buf[--len] = '\0';
    int rc = LATHE_OK;
    /* Make each parent in turn; the root and "." need no mkdir. */
    for (char *q = buf + 1; *q && rc == LATHE_OK; q++) {
        if (*q != '/' || q[-1] == '/')
            continue;
        *q = '\0';
        rc = mkdir_one(buf, path);
        *q = '/';
    }
    if (rc == LATHE_OK)
        rc = mkdir_one(buf, path);
    free(buf);
    return rc;
}

int lathe_path_join(char *buf, size_t n, const char *a, const char *b)
{
    if (!buf || n == 0)
        return lathe_error(LATHE_EINVAL, "lathe_path_join: no buffer");
    buf[0] = '\0';
    if (!a)
        a = "";
    if (!b)
        b = "";
    int len;
    if (b[0] == '/' || a[0] == '\0')
        len = snprintf(buf, n, "%s", b);
    else if (b[0] == '\0')
        len = snprintf(buf, n, "%s", a);
    else
        len = snprintf(buf, n, "%s%s%s", a, a[strlen(a) - 1] == '/' ? "" : "/", b);
    if (len < 0 || (size_t)len >= n) {
        buf[0] = '\0';
        return lathe_error(LATHE_EINVAL, "path '%s' + '%s' is longer than %zu bytes; use a shorter directory",
                           a, b, n - 1);
    }
    return LATHE_OK;
}
