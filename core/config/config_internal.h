/* core/config/config_internal.h — the configuration's data, shared by the
 * parser (config.c) and the getters (getters.c).
 *
 * Sections and keys are kept in the order they were first seen (file order,
 * then overrides, then sections and keys made by readers), in arrays of
 * pointers so that a lathe_section* stays valid while more are added.
 * Nothing a caller was handed is freed before lathe_config_free: replaced
 * strings go to cfg->pool. */
#ifndef LATHE_CONFIG_INTERNAL_H
#define LATHE_CONFIG_INTERNAL_H

#include <lathe/config.h>

#include <stddef.h>

/* Where a key's value (or a section header) came from. */
enum lathe_cfg_origin {
    LATHE_CFG_NONE = 0, /* not given: a reader asked for it (default used) */
    LATHE_CFG_FILE,     /* the INI text, at `line` */
    LATHE_CFG_CMDLINE   /* an override, "<command line>" in messages */
};

struct lathe_cfg_key {
    char *name;
    char *value;        /* as given (NULL when origin is NONE) */
    int origin;
    int line;           /* for LATHE_CFG_FILE */
    int read;           /* a getter (or lathe_cfg_require) asked for it */
    long read_seq;      /* when it was first read, for the dump's order */
    const char *resolved; /* text of the value last handed out (pooled) */
    int resolved_default;
};

struct lathe_section {
    lathe_config *cfg;
    char *name;
    int origin;         /* NONE: made by lathe_config_section */
    int line;
    int opened;         /* a reader asked for the section */
    struct lathe_cfg_key **keys;
    size_t nkeys, cap;
};

struct lathe_config {
    char *path;
    lathe_section **sections;
    size_t nsections, cap;
    void **pool;        /* freed by lathe_config_free */
    size_t npool, poolcap;
    long read_seq;
};

/* Shared by config.c and getters.c only: kept out of liblathe's exports
 * (which take every lathe_ symbol that is visible). */
#if defined(__GNUC__)
#define LATHE_CFG_HIDDEN __attribute__((visibility("hidden")))
#else
#define LATHE_CFG_HIDDEN
#endif

/* The name used for overrides in messages. */
#define LATHE_CFG_CMDLINE_NAME "<command line>"

/* Lookups; NULL when absent. */
LATHE_CFG_HIDDEN lathe_section *lathe_config_find_section(const lathe_config *cfg, const char *name);
LATHE_CFG_HIDDEN struct lathe_cfg_key *lathe_config_find_key(const lathe_section *s, const char *name);
/* Find or append; NULL when memory ran out (message set). */
LATHE_CFG_HIDDEN lathe_section *lathe_config_add_section(lathe_config *cfg, const char *name, int origin,
                                                         int line);
LATHE_CFG_HIDDEN struct lathe_cfg_key *lathe_config_add_key(lathe_section *s, const char *name);

/* Keep p until lathe_config_free (frees p and returns NULL if that fails). */
LATHE_CFG_HIDDEN void *lathe_config_keep(lathe_config *cfg, void *p);

/* "run.ini:7", "<command line>" or "run.ini" (key absent) into buf. */
LATHE_CFG_HIDDEN const char *lathe_config_where(const lathe_section *s, const struct lathe_cfg_key *k,
                                                char *buf, size_t n);

#endif
