/* core/config/getters.c — typed reads of one section's keys.
 *
 * Every getter marks the key read and records the text of the value it
 * resolved (as written, or the default) for lathe_config_dump. A value that
 * does not parse or lies outside [min, max] is LATHE_ECONFIG with the
 * message "FILE:LINE: [section] key: what is wrong (got 'value'); what to
 * do", and *out is left alone. Bounds apply to what the user wrote: a
 * default outside them is taken as given, so a component may use one as a
 * sentinel ("-1: not set"). A default that does not parse at all (bytes,
 * choice) is a bug in the component: LATHE_EINVAL. */
#include "config/config_internal.h"

#include <lathe/abi.h>
#include <lathe/status.h>

#include <ctype.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/strutil.h"

/* Longest value quoted back in a message. */
#define SHOW_MAX 120

/* ------------------------------------------------------------------ */
/* Bookkeeping                                                         */

static int bad_args(const char *fn, const lathe_section *s, const char *key)
{
    return lathe_error(LATHE_EINVAL, "%s: %s", fn,
                       !s ? "no section (was lathe_config_section NULL?)" : "no key name or output");
}

/* The key's record, made if absent; marks it read. NULL: out of memory. */
static struct lathe_cfg_key *key_read(lathe_section *s, const char *key)
{
    s->opened = 1;
    struct lathe_cfg_key *k = lathe_config_add_key(s, key);
    if (k && !k->read) {
        k->read = 1;
        k->read_seq = ++s->cfg->read_seq;
    }
    return k;
}

/* Remember `text` as what the key resolved to. Returns the pooled copy
 * (stable until lathe_config_free), or NULL with a message. */
static const char *key_resolve(lathe_section *s, struct lathe_cfg_key *k, const char *text, int is_default)
{
    const char *r;
    if (!is_default && text == k->value)
        r = k->value; /* lives as long as the config (see override) */
    else if (k->resolved && strcmp(k->resolved, text) == 0)
        r = k->resolved;
    else
        r = lathe_config_keep(s->cfg, lathe_str_dup(text));
    if (!r) {
        lathe_error(LATHE_ENOMEM, "out of memory reading [%s] %s", s->name, k->name);
        return NULL;
    }
    k->resolved = r;
    k->resolved_default = is_default;
    return r;
}

/* "WHERE: [section] key: " + the formatted message. */
static int key_fail(int status, const lathe_section *s, const struct lathe_cfg_key *k, const char *key,
                    const char *fmt, va_list ap)
{
    char where[512], msg[2048];
    if (k)
        lathe_config_where(s, k, where, sizeof where);
    else
        snprintf(where, sizeof where, "%s", s->cfg->path);
    vsnprintf(msg, sizeof msg, fmt, ap);
    return lathe_error(status, "%s: [%s] %s: %s", where, s->name, key, msg);
}

static int value_error(const lathe_section *s, const struct lathe_cfg_key *k, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int value_error(const lathe_section *s, const struct lathe_cfg_key *k, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = key_fail(LATHE_ECONFIG, s, k, k->name, fmt, ap);
    va_end(ap);
    return rc;
}

static int default_error(const lathe_section *s, const struct lathe_cfg_key *k, const char *def,
                         const char *what)
{
    return lathe_error(LATHE_EINVAL, "%s: [%s] %s: the default '%s' %s; this is a bug in the component that "
                       "reads [%s]", s->cfg->path, s->name, k->name, def, what, s->name);
}

static int missing(const lathe_section *s, const struct lathe_cfg_key *k)
{
    return value_error(s, k, "required key is missing; add `%s = ...` under [%s] or pass %s.%s=VALUE",
                       k->name, s->name, s->name, k->name);
}

/* Length and ellipsis for quoting a value: "%.*s%s". */
#define SHOWN(v) (int)(strlen(v) > SHOW_MAX ? SHOW_MAX : strlen(v)), (v), (strlen(v) > SHOW_MAX ? "..." : "")

/* Shortest text that reads back as the same double. */
static void fmt_double(char *buf, size_t n, double v)
{
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            return;
    }
}

/* ------------------------------------------------------------------ */
/* Parsers: 1 on success                                               */

static int digit_value(int c, int base)
{
    int d;
    if (c >= '0' && c <= '9')
        d = c - '0';
    else if (c >= 'a' && c <= 'f')
        d = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F')
        d = c - 'A' + 10;
    else
        return -1;
    return d < base ? d : -1;
}

/* Decimal, 0x hex, or a decimal with an exponent (1e3, 2.5e6) that is an
 * exact integer; doubles are exact up to 2^53, so larger exponent forms are
 * refused rather than rounded. */
static int parse_int(const char *t, int64_t *out)
{
    const char *p = t;
    int neg = 0;
    if (*p == '+' || *p == '-')
        neg = *p++ == '-';
    int base = 10;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        base = 16;
        p += 2;
    }
    uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    uint64_t mag = 0;
    const char *digits = p;
    int d;
    for (; (d = digit_value((unsigned char)*p, base)) >= 0; p++) {
        if (mag > (limit - (uint64_t)d) / (uint64_t)base)
            return 0;
        mag = mag * (uint64_t)base + (uint64_t)d;
    }
    if (p != digits && *p == '\0') {
        *out = neg ? (mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag) : (int64_t)mag;
        return 1;
    }
    if (base != 10 || !strpbrk(t, "eE") || strspn(t, "0123456789.eE+-") != strlen(t))
        return 0;
    char *end;
    double v = strtod(t, &end);
    if (end == t || *end || !isfinite(v) || v != trunc(v) || fabs(v) > 9007199254740992.0)
        return 0;
    *out = (int64_t)v;
    return 1;
}

static int parse_bool(const char *t, int *out)
{
    static const char *const yes[] = { "true", "yes", "on", "1" };
    static const char *const no[] = { "false", "no", "off", "0" };
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(t, yes[i]) == 0) {
            *out = 1;
            return 1;
        }
        if (strcasecmp(t, no[i]) == 0) {
            *out = 0;
            return 1;
        }
    }
    return 0;
}

enum { BYTES_OK, BYTES_BAD, BYTES_FRACTION, BYTES_OVERFLOW };

/* digits[.digits] [K|M|G|T|P|E][B|iB] or a bare B, case-insensitive, powers
 * of 1024 (IEC 80000-13 binary prefixes; "MB" is read as MiB, as most
 * training tools do). The arithmetic is in 128 bits so that no step can
 * wrap before the final range check. */
static int parse_bytes(const char *t, uint64_t *out)
{
    const char *p = t;
    unsigned __int128 whole = 0, frac = 0, scale = 1;
    int ndig = 0, overflow = 0;
    for (; *p >= '0' && *p <= '9'; p++, ndig++) {
        whole = whole * 10 + (unsigned)(*p - '0');
        if (whole > UINT64_MAX) {
            overflow = 1;
            whole = (unsigned __int128)UINT64_MAX + 1; /* stays too large */
        }
    }
    if (*p == '.') {
        p++;
        for (int nf = 0; *p >= '0' && *p <= '9'; p++, nf++, ndig++) {
            if (nf >= 18)
                return BYTES_BAD;
            frac = frac * 10 + (unsigned)(*p - '0');
            scale *= 10;
        }
    }
    if (ndig == 0)
        return BYTES_BAD;
    while (*p == ' ' || *p == '\t')
        p++;
    static const char units[] = "kmgtpe";
    int shift = 0;
    const char *u = *p ? strchr(units, tolower((unsigned char)*p)) : NULL;
    if (u) {
        shift = 10 * (int)(u - units + 1);
        p++;
        if (tolower((unsigned char)p[0]) == 'i' && tolower((unsigned char)p[1]) == 'b')
            p += 2;
        else if (tolower((unsigned char)p[0]) == 'b')
            p++;
    } else if (tolower((unsigned char)*p) == 'b')
        p++;
    if (*p)
        return BYTES_BAD;
    if (overflow)
        return BYTES_OVERFLOW;
    unsigned __int128 mult = (unsigned __int128)1 << shift;
    unsigned __int128 part = frac * mult; /* < 10^18 * 2^60 < 2^120 */
    if (part % scale)
        return BYTES_FRACTION;
    unsigned __int128 v = whole * mult + part / scale; /* < 2^124 + 2^60 */
    if (v > UINT64_MAX)
        return BYTES_OVERFLOW;
    *out = (uint64_t)v;
    return BYTES_OK;
}

static const char *bytes_problem(int r)
{
    switch (r) {
    case BYTES_FRACTION:
        return "is not a whole number of bytes";
    case BYTES_OVERFLOW:
        return "is too large: the most is 16E - 1 (2^64 - 1 bytes)";
    default:
        return "must be a size in bytes such as 512, 64K, 512M or 2G";
    }
}

/* ------------------------------------------------------------------ */
/* Getters                                                             */

static void int_range(char *buf, size_t n, int64_t min, int64_t max)
{
    if (min == INT64_MIN && max == INT64_MAX)
        snprintf(buf, n, "must be an integer");
    else if (max == INT64_MAX)
        snprintf(buf, n, "must be an integer >= %" PRId64, min);
    else if (min == INT64_MIN)
        snprintf(buf, n, "must be an integer <= %" PRId64, max);
    else
        snprintf(buf, n, "must be an integer between %" PRId64 " and %" PRId64, min, max);
}

LATHE_EXPORT int lathe_cfg_int(lathe_section *s, const char *key, int64_t def, int64_t min, int64_t max,
                               int64_t *out)
{
    if (!s || !key || !out)
        return bad_args("lathe_cfg_int", s, key);
    struct lathe_cfg_key *k = key_read(s, key);
    if (!k)
        return LATHE_ENOMEM;
    if (!k->value) {
        char buf[32];
        snprintf(buf, sizeof buf, "%" PRId64, def);
        if (!key_resolve(s, k, buf, 1))
            return LATHE_ENOMEM;
        *out = def;
        return LATHE_OK;
    }
    int64_t v;
    int ok = parse_int(k->value, &v);
    if (!ok || v < min || v > max) {
        char range[128];
        int_range(range, sizeof range, min, max);
        return value_error(s, k, "%s (got '%.*s%s')%s", range, SHOWN(k->value),
                           ok ? "" : "; write it in digits, e.g. 100, 0x40 or 1e3");
    }
    if (!key_resolve(s, k, k->value, 0))
        return LATHE_ENOMEM;
    *out = v;
    return LATHE_OK;
}

static void float_range(char *buf, size_t n, const char *what, double min, double max)
{
    char a[32], b[32];
    fmt_double(a, sizeof a, min);
    fmt_double(b, sizeof b, max);
    int lo = min > -DBL_MAX, hi = max < DBL_MAX; /* NaN bounds count as none */
    if (lo && hi)
        snprintf(buf, n, "must be a %s between %s and %s", what, a, b);
    else if (lo)
        snprintf(buf, n, "must be a %s >= %s", what, a);
    else if (hi)
        snprintf(buf, n, "must be a %s <= %s", what, b);
    else
        snprintf(buf, n, "must be a %s", what);
}

LATHE_EXPORT int lathe_cfg_float(lathe_section *s, const char *key, double def, double min, double max,
                                 double *out)
{
    if (!s || !key || !out)
        return bad_args("lathe_cfg_float", s, key);
    struct lathe_cfg_key *k = key_read(s, key);
    if (!k)
        return LATHE_ENOMEM;
    if (!k->value) {
        char buf[32];
        fmt_double(buf, sizeof buf, def);
        if (!key_resolve(s, k, buf, 1))
            return LATHE_ENOMEM;
        *out = def;
        return LATHE_OK;
    }
    char *end;
    const char *t = k->value;
    double v = strtod(t, &end);
    int parsed = end != t && *end == '\0';
    if (!parsed || !isfinite(v) || v < min || v > max) {
        char range[160];
        float_range(range, sizeof range, parsed && !isfinite(v) ? "finite number" : "number", min, max);
        return value_error(s, k, "%s (got '%.*s%s')%s", range, SHOWN(t),
                           parsed ? "" : "; write it like 0.5, 3e-4 or 10");
    }
    if (!key_resolve(s, k, t, 0))
        return LATHE_ENOMEM;
    *out = v;
    return LATHE_OK;
}

LATHE_EXPORT int lathe_cfg_bool(lathe_section *s, const char *key, int def, int *out)
{
    if (!s || !key || !out)
        return bad_args("lathe_cfg_bool", s, key);
    struct lathe_cfg_key *k = key_read(s, key);
    if (!k)
        return LATHE_ENOMEM;
    if (!k->value) {
        if (!key_resolve(s, k, def ? "true" : "false", 1))
            return LATHE_ENOMEM;
        *out = def ? 1 : 0;
        return LATHE_OK;
    }
    int v;
    if (!parse_bool(k->value, &v))
        return value_error(s, k,
                           "must be true or false (got '%.*s%s'); use true/false, yes/no, on/off or 1/0",
                           SHOWN(k->value));
    if (!key_resolve(s, k, k->value, 0))
        return LATHE_ENOMEM;
    *out = v;
    return LATHE_OK;
}

LATHE_EXPORT int lathe_cfg_string(lathe_section *s, const char *key, const char *def, const char **out)
{
    if (!s || !key || !out)
        return bad_args("lathe_cfg_string", s, key);
    struct lathe_cfg_key *k = key_read(s, key);
    if (!k)
        return LATHE_ENOMEM;
    if (!k->value && !def)
        return missing(s, k);
    const char *r = key_resolve(s, k, k->value ? k->value : def, !k->value);
    if (!r)
        return LATHE_ENOMEM;
    *out = r;
    return LATHE_OK;
}

LATHE_EXPORT int lathe_cfg_choice(lathe_section *s, const char *key, const char *def,
                                  const char *const *choices, int *out)
{
    if (!s || !key || !out)
        return bad_args("lathe_cfg_choice", s, key);
    if (!choices || !choices[0])
        return lathe_error(LATHE_EINVAL, "lathe_cfg_choice: [%s] %s: no choices given", s->name, key);
    struct lathe_cfg_key *k = key_read(s, key);
    if (!k)
        return LATHE_ENOMEM;
    if (!k->value && !def)
        return missing(s, k);
    const char *t = k->value ? k->value : def;
    size_t n = 0;
    int found = -1;
    for (; choices[n]; n++)
        if (found < 0 && strcasecmp(t, choices[n]) == 0)
            found = (int)n;
    if (found < 0) {
        char list[1024];
        size_t used = 0;
        list[0] = '\0';
        for (size_t i = 0; i < n && used + 1 < sizeof list; i++) {
            int w = snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", choices[i]);
            if (w < 0)
                break;
            used += (size_t)w;
        }
        if (!k->value)
            return default_error(s, k, def, "is not one of the choices");
        /* A near miss gets a hint, as unknown keys do. */
        size_t len = strlen(t), limit = len / 3 > 2 ? len / 3 : 2, bestd = SIZE_MAX;
        const char *best = NULL;
        for (size_t i = 0; i < n; i++) {
            size_t d = lathe_str_edit_distance(t, choices[i]);
            if (d < bestd) {
                bestd = d;
                best = choices[i];
            }
        }
        if (bestd <= limit)
            return value_error(s, k, "must be one of %s (got '%.*s%s'); did you mean '%s'?", list, SHOWN(t),
                               best);
        return value_error(s, k, "must be one of %s (got '%.*s%s')", list, SHOWN(t));
    }
    /* The dump shows the choice as the component spells it. */
    if (!key_resolve(s, k, k->value ? k->value : choices[found], !k->value))
        return LATHE_ENOMEM;
    *out = found;
    return LATHE_OK;
}

LATHE_EXPORT int lathe_cfg_list(lathe_section *s, const char *key, const char *def,
                                const char *const **items, size_t *n)
{
    if (!s || !key || !items || !n)
        return bad_args("lathe_cfg_list", s, key);
    struct lathe_cfg_key *k = key_read(s, key);
    if (!k)
        return LATHE_ENOMEM;
    if (!k->value && !def)
        return missing(s, k);
    const char *t = k->value ? k->value : def;
    static const char seps[] = ", \t\r\n";
    /* One block: the NULL-terminated pointer array, then the strings. */
    size_t len = strlen(t), count = 0;
    for (const char *p = t; *p;) {
        p += strspn(p, seps);
        if (!*p)
            break;
        count++;
        p += strcspn(p, seps);
    }
    char **arr = lathe_config_keep(s->cfg, malloc((count + 1) * sizeof(char *) + len + 1));
    if (!arr)
        return lathe_error(LATHE_ENOMEM, "out of memory reading [%s] %s", s->name, key);
    char *text = (char *)(arr + count + 1);
    memcpy(text, t, len + 1);
    size_t i = 0;
    for (char *p = text; *p;) {
        p += strspn(p, seps);
        if (!*p)
            break;
        arr[i++] = p;
        p += strcspn(p, seps);
        if (*p)
            *p++ = '\0';
    }
    arr[i] = NULL;
    if (!key_resolve(s, k, t, !k->value))
        return LATHE_ENOMEM;
    *items = (const char *const *)arr;
    *n = count;
    return LATHE_OK;
}

LATHE_EXPORT int lathe_cfg_bytes(lathe_section *s, const char *key, const char *def, uint64_t *out)
{
    if (!s || !key || !out)
        return bad_args("lathe_cfg_bytes", s, key);
    struct lathe_cfg_key *k = key_read(s, key);
    if (!k)
        return LATHE_ENOMEM;
    if (!k->value && !def)
        return missing(s, k);
    const char *t = k->value ? k->value : def;
    uint64_t v;
    int r = parse_bytes(t, &v);
    if (r != BYTES_OK) {
        if (!k->value)
            return default_error(s, k, def, bytes_problem(r));
        return value_error(s, k,
                           "%s (got '%.*s%s'); K, M, G, T, P and E are powers of 1024, B or iB may follow",
                           bytes_problem(r), SHOWN(t));
    }
    if (!key_resolve(s, k, t, !k->value))
        return LATHE_ENOMEM;
    *out = v;
    return LATHE_OK;
}

LATHE_EXPORT int lathe_cfg_require(lathe_section *s, const char *key)
{
    if (!s || !key)
        return bad_args("lathe_cfg_require", s, key);
    struct lathe_cfg_key *k = key_read(s, key);
    if (!k)
        return LATHE_ENOMEM;
    return k->value ? LATHE_OK : missing(s, k);
}

LATHE_EXPORT int lathe_cfg_error(lathe_section *s, const char *key, const char *fmt, ...)
{
    if (!s || !fmt)
        return lathe_error(LATHE_ECONFIG, "configuration error (lathe_cfg_error called without a section)");
    const struct lathe_cfg_key *k = key ? lathe_config_find_key(s, key) : NULL;
    if (k && k->origin == LATHE_CFG_NONE)
        k = NULL;
    va_list ap;
    va_start(ap, fmt);
    int rc;
    if (key)
        rc = key_fail(LATHE_ECONFIG, s, k, key, fmt, ap);
    else {
        char where[512], msg[2048];
        vsnprintf(msg, sizeof msg, fmt, ap);
        rc = lathe_error(LATHE_ECONFIG, "%s: [%s]: %s", lathe_config_where(s, NULL, where, sizeof where),
                         s->name, msg);
    }
    va_end(ap);
    return rc;
}

LATHE_EXPORT int lathe_cfg_path(lathe_section *s, const char *key, const char *def, const char **out)
{
    const char *v;
    int rc = lathe_cfg_string(s, key, def, &v);
    if (rc != LATHE_OK)
        return rc;
    const struct lathe_cfg_key *k = lathe_config_find_key(s, key);
    /* absolute, empty, or given on the command line: as is (a path typed
     * at the prompt means the working directory) */
    if (!v[0] || v[0] == '/' || !k || k->origin != LATHE_CFG_FILE || !s->cfg->path) {
        *out = v;
        return LATHE_OK;
    }
    const char *slash = strrchr(s->cfg->path, '/');
    if (!slash) {
        *out = v;
        return LATHE_OK;
    }
    size_t dirlen = (size_t)(slash - s->cfg->path) + 1;
    char *p = malloc(dirlen + strlen(v) + 1);
    if (!p)
        return lathe_error(LATHE_ENOMEM, "out of memory");
    memcpy(p, s->cfg->path, dirlen);
    strcpy(p + dirlen, v);
    if (!(p = lathe_config_keep(s->cfg, p)))
        return LATHE_ENOMEM;
    *out = p;
    return LATHE_OK;
}
