/* core/cli/cli.h — the `lathe` command's subcommands. Each returns the
 * process exit status. */
#ifndef LATHE_CLI_H
#define LATHE_CLI_H

#include <stddef.h>

#include "train/run.h"

/* Split argv (after the subcommand) into the INI path, overrides and the
 * options every run-based command takes (--resume, --plugin-path). Options
 * may stand anywhere. Returns 0, or 2 after printing a usage error. */
int lathe_cli_run_args(const char *cmd, int argc, char **argv, struct lathe_run_opts *o, int allow_resume);
void lathe_cli_run_args_free(struct lathe_run_opts *o);
/* Print "lathe: MESSAGE" for the current error and return exit status 1. */
int lathe_cli_fail(void);

int lathe_cmd_train(int argc, char **argv);
int lathe_cmd_config(int argc, char **argv);
int lathe_cmd_plugins(int argc, char **argv);
int lathe_cmd_tokenize(int argc, char **argv);  /* cmd_tokenize.c */
int lathe_cmd_convert(int argc, char **argv);   /* cmd_convert.c */
int lathe_cmd_data(int argc, char **argv);      /* cmd_data.c */
int lathe_cmd_generate(int argc, char **argv);  /* cmd_generate.c */
int lathe_cmd_plan(int argc, char **argv);      /* cmd_plan.c */
int lathe_cmd_merge(int argc, char **argv);     /* cmd_merge.c */
int lathe_cmd_reward(int argc, char **argv);    /* cmd_reward.c */

#endif
