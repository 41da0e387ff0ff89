/* core/util/strutil.h — small string and path helpers used across the core.
 *
 * Internal to liblathe (not part of the SDK), but exported so that the
 * lathe command and the test suites can use them too. */
#ifndef LATHE_UTIL_STRUTIL_H
#define LATHE_UTIL_STRUTIL_H

#include <stddef.h>

#include <lathe/abi.h>

/* A malloc'd copy of s (free() it); NULL if s is NULL or memory ran out. */
LATHE_EXPORT char *lathe_str_dup(const char *s);
/* A malloc'd copy of at most n bytes of s, always NUL-terminated. */
LATHE_EXPORT char *lathe_str_ndup(const char *s, size_t n);
/* A malloc'd formatted string (free() it); NULL if memory ran out. */
LATHE_EXPORT char *lathe_str_printf(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

/* Strip leading and trailing white space in place: writes a NUL after the
 * last non-space byte and returns a pointer to the first one (inside s). */
LATHE_EXPORT char *lathe_str_trim(char *s);

/* Case-insensitive (ASCII) Damerau-Levenshtein distance in its "optimal
 * string alignment" form: insertions, deletions, substitutions and swaps of
 * two adjacent characters each cost 1 ("rnak" -> "rank" is 1). SIZE_MAX if
 * memory ran out. Used for "did you mean" hints. */
LATHE_EXPORT size_t lathe_str_edit_distance(const char *a, const char *b);

/* Create `path` and any missing parents (mode 0777 less the umask); an
 * existing directory is fine. LATHE_OK, or LATHE_EIO with a message that
 * names the directory that could not be made and why. */
LATHE_EXPORT int lathe_mkdir_p(const char *path);

/* Join a and b with one '/' into buf (n bytes). An absolute b, or an empty
 * a, gives b alone. LATHE_OK, or LATHE_EINVAL (message set, buf holds "")
 * when the result does not fit. */
LATHE_EXPORT int lathe_path_join(char *buf, size_t n, const char *a, const char *b);

#endif
