/* core/cli/cmd_train.c — `lathe train RUN.ini [overrides] [--resume]`. */
#include <stdio.h>

#include "cli.h"

int lathe_cmd_train(int argc, char **argv)
{
    struct lathe_run_opts o;
    int st = lathe_cli_run_args("train", argc, argv, &o, 1);
    if (st != 0) {
        lathe_cli_run_args_free(&o);
        return st;
    }
    struct lathe_run *run = NULL;
    int rc = lathe_run_create(&run, &o);
    if (rc == LATHE_OK)
        rc = lathe_run_train(run);
    if (rc != LATHE_OK)
        st = rc == LATHE_EINTR ? 130 : lathe_cli_fail();
    lathe_run_destroy(run);
    lathe_cli_run_args_free(&o);
    return st;
}
