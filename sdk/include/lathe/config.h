/* lathe/config.h — typed access to the run's INI configuration.
 *
 * The core parses RUN.ini (through the packaged inih, with line numbers) and
 * the command-line overrides (`section.key=value`, which win). Each component
 * reads its own section through these getters. Every getter:
 *  - marks the key as read (a key nobody reads is an error naming file:line,
 *    with the closest known key of that section as a hint);
 *  - records the resolved value, or the default, for `lathe config`;
 *  - on a bad value returns LATHE_ECONFIG with a message naming file:line,
 *    [section] and key, and leaves *out unchanged.
 * Strings handed out stay valid until the config is freed.
 */
#ifndef LATHE_CONFIG_H
#define LATHE_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lathe_config lathe_config;
typedef struct lathe_section lathe_section;

/* Parse `path`. NULL with a message on failure (file:line of the bad line). */
lathe_config *lathe_config_load(const char *path);
/* An empty configuration (tests, tools). */
lathe_config *lathe_config_new(void);
/* Parse INI text held in memory; `name` is used in messages. */
lathe_config *lathe_config_load_string(const char *name, const char *text);
void lathe_config_free(lathe_config *cfg);
/* Apply "section.key=value" (section may contain dots: reward.format.weight
 * sets [reward.format] weight). Overrides win over the file. */
int lathe_config_override(lathe_config *cfg, const char *assignment);
/* The file name given to load ("<command line>" style names for others). */
const char *lathe_config_path(const lathe_config *cfg);

/* The section named `name` (made, empty, if the file has none). Never NULL
 * for a valid cfg. */
lathe_section *lathe_config_section(lathe_config *cfg, const char *name);
/* Whether the file (or an override) has the section. */
int lathe_config_has_section(const lathe_config *cfg, const char *name);
/* Sections named `prefix` or `prefix.*` in file order; returns the count and
 * fills up to max entries of out. */
size_t lathe_config_sections(lathe_config *cfg, const char *prefix, lathe_section **out, size_t max);
const char *lathe_section_name(const lathe_section *s);
/* Whether the key is present (marks nothing). */
int lathe_section_has(const lathe_section *s, const char *key);

/* Getters: a missing key yields the default. min/max bound the value
 * (inclusive); a value outside is an error. */
int lathe_cfg_int(lathe_section *s, const char *key, int64_t def, int64_t min, int64_t max, int64_t *out);
int lathe_cfg_float(lathe_section *s, const char *key, double def, double min, double max, double *out);
/* true/false, yes/no, on/off, 1/0 */
int lathe_cfg_bool(lathe_section *s, const char *key, int def, int *out);
/* def == NULL makes the key required. */
int lathe_cfg_string(lathe_section *s, const char *key, const char *def, const char **out);
/* One of `choices` (NULL-terminated); *out is its index. */
int lathe_cfg_choice(lathe_section *s, const char *key, const char *def,
                     const char *const *choices, int *out);
/* Comma- or space-separated list; *items and its strings stay valid until the
 * config is freed. def may be "" (empty list) or NULL (required). */
int lathe_cfg_list(lathe_section *s, const char *key, const char *def,
                   const char *const **items, size_t *n);
/* A file or directory path: the string as given when absolute, otherwise
 * relative to the directory of the INI file (so a run file can name its data
 * next to it). *out stays valid until the config is freed. def == NULL makes
 * the key required; def == "" leaves *out "" when the key is absent. */
int lathe_cfg_path(lathe_section *s, const char *key, const char *def, const char **out);
/* Byte size: 512, 64K, 512M, 2G, 1T (powers of 1024; optional B or iB). */
int lathe_cfg_bytes(lathe_section *s, const char *key, const char *def, uint64_t *out);

/* Error unless `key` is present (use before a numeric getter for a key that
 * has no sensible default). */
int lathe_cfg_require(lathe_section *s, const char *key);

/* An error naming file:line, [section] and key, for checks the getters do
 * not know (returns LATHE_ECONFIG). */
int lathe_cfg_error(lathe_section *s, const char *key, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* After every component has read its section: the first key nobody read is
 * an error ("run.ini:12: unknown key 'rnak' in [peft]; did you mean
 * 'rank'?"). A section nobody opened is an error too. */
int lathe_config_check_unused(const lathe_config *cfg);

/* The first key of `s` that nobody has read but that is close to a key
 * somebody did read (a likely typo), as the same error as
 * lathe_config_check_unused gives; LATHE_OK if there is none. The core calls
 * it when a component fails, so that "hedas = 4" is reported as the typo it
 * is rather than as the default of "heads" it caused. */
int lathe_section_check_typos(const lathe_section *s);

/* Print the resolved configuration (every read key with its value or
 * default, in section order) as INI text. */
int lathe_config_dump(const lathe_config *cfg, void *file /* FILE* */);

/* lathe_config_check_unused for one section only: the first key of `s`
 * that nobody has read is an error (same message). For tools that use a
 * few sections of a file and ignore the rest (`lathe reward`). */
int lathe_section_check_unused(const lathe_section *s);

#ifdef __cplusplus
}
#endif
#endif
