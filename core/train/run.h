/* core/train/run.h — a run: the configuration, the plugin registry and the
 * component instances it names, and the training loop over them. Internal
 * to liblathe; the `lathe` command drives it. */
#ifndef LATHE_CORE_RUN_H
#define LATHE_CORE_RUN_H

#include <stddef.h>
#include <stdio.h>

#include <lathe/lathe.h>

struct lathe_run_opts {
    const char *ini_path;            /* RUN.ini */
    char *const *overrides;          /* "section.key=value", win over the file */
    size_t noverrides;
    const char *plugin_path;         /* --plugin-path (colon-separated) or NULL */
    int resume;                      /* --resume: continue from the newest checkpoint */
};

/* One instance of a component named by a section's `plugin` key. */
struct lathe_component_inst {
    int kind;
    const char *section;             /* "model", "reward.format" */
    const char *name;                /* the plugin component name */
    const char *file;                /* the plugin file that ships it */
    const void *ops;
    void *self;
};

struct lathe_run;

/* Load the configuration and plugins and create every component (the model
 * allocates its parameters). Any key nobody reads is an error here. */
int lathe_run_create(struct lathe_run **out, const struct lathe_run_opts *opts);
void lathe_run_destroy(struct lathe_run *run);
/* Print the resolved configuration (every default filled in). */
int lathe_run_dump_config(struct lathe_run *run, FILE *f);
/* The training loop (loop.c). */
int lathe_run_train(struct lathe_run *run);

#endif
