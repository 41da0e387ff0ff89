/* core/cli/cmd_config.c — `lathe config RUN.ini [overrides]`: every
 * component is created (so every key is checked), then the resolved
 * configuration is printed with all defaults filled in. */
#include <stdio.h>

#include "cli.h"

int lathe_cmd_config(int argc, char **argv)
{
    struct lathe_run_opts o;
    int st = lathe_cli_run_args("config", argc, argv, &o, 0);
    if (st != 0) {
        lathe_cli_run_args_free(&o);
        return st;
    }
    struct lathe_run *run = NULL;
    int rc = lathe_run_create(&run, &o);
    if (rc == LATHE_OK)
        rc = lathe_run_dump_config(run, stdout);
    if (rc != LATHE_OK)
        st = lathe_cli_fail();
    lathe_run_destroy(run);
    lathe_cli_run_args_free(&o);
    return st;
}
