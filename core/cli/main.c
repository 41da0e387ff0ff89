/* core/cli/main.c — `lathe COMMAND ...`. */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "config.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: lathe COMMAND [ARGS]\n"
            "\n"
            "commands:\n"
            "  train RUN.ini [section.key=value ...] [--resume] [--plugin-path DIRS]\n"
            "                      train as RUN.ini says; overrides win over the file;\n"
            "                      --resume continues from the newest checkpoint\n"
            "  config RUN.ini [section.key=value ...] [--plugin-path DIRS]\n"
            "                      print the resolved configuration, defaults filled in\n"
            "  plugins [--plugin-path DIRS]\n"
            "                      list every plugin found on the search path\n"
            "  tokenize --model DIR TEXT\n"
            "                      print the token ids and pieces of TEXT\n"
            "  convert gguf FILE.gguf OUT_DIR\n"
            "                      import a GGUF model into the Hugging Face layout\n"
            "  data check FILE.jsonl --model DIR | data dedup IN.jsonl OUT.jsonl\n"
            "                      validate chat data (counts, lengths, duplicates); drop duplicates\n"
            "  generate --model DIR [--adapter DIR] --prompt TEXT [options]\n"
            "                      sample a completion (see lathe generate --help)\n"
            "  merge --model DIR --adapter DIR --output DIR\n"
            "                      fold a LoRA adapter into the model, shard by shard\n"
            "  reward --config RUN.ini --input FILE.jsonl [--output OUT.jsonl]\n"
            "                      score completions with RUN.ini's [reward.*] functions\n"
            "  plan --config config.json [options]\n"
            "                      per-device memory of a training setup (see lathe plan --help)\n"
            "  version             print the version\n"
            "\n"
            "Plugins are searched in --plugin-path, $LATHE_PLUGIN_PATH, the INI's\n"
            "[plugins] path, then %s.\n",
            LATHE_PLUGINDIR);
}

int lathe_cli_fail(void)
{
    fprintf(stderr, "lathe: %s\n", lathe_errmsg()[0] ? lathe_errmsg() : "failed");
    return 1;
}

int lathe_cli_run_args(const char *cmd, int argc, char **argv, struct lathe_run_opts *o, int allow_resume)
{
    memset(o, 0, sizeof *o);
    char **ov = calloc((size_t)argc + 1, sizeof *ov);
    if (!ov) {
        fprintf(stderr, "lathe: out of memory\n");
        return 2;
    }
    o->overrides = ov;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--resume") == 0 && allow_resume) {
            o->resume = 1;
        } else if (strcmp(a, "--plugin-path") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "lathe %s: --plugin-path needs a value\n", cmd);
                return 2;
            }
            o->plugin_path = argv[++i];
        } else if (strncmp(a, "--plugin-path=", 14) == 0) {
            o->plugin_path = a + 14;
        } else if (a[0] == '-' && a[1] == '-') {
            fprintf(stderr, "lathe %s: unknown option '%s'\n", cmd, a);
            return 2;
        } else if (!o->ini_path && !strchr(a, '=')) {
            o->ini_path = a;
        } else if (strchr(a, '=')) {
            ov[o->noverrides++] = argv[i];
        } else {
            fprintf(stderr, "lathe %s: unexpected argument '%s' (overrides look like section.key=value)\n", cmd, a);
            return 2;
        }
    }
    if (!o->ini_path) {
        fprintf(stderr, "lathe %s: no RUN.ini given\n", cmd);
        return 2;
    }
    return 0;
}

void lathe_cli_run_args_free(struct lathe_run_opts *o) { free((void *)o->overrides); }

int main(int argc, char **argv)
{
    /* Keep freed activation buffers in the heap between steps instead of
     * returning them to the kernel (each step would fault them back in). */
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "train") == 0)
        return lathe_cmd_train(argc - 2, argv + 2);
    if (strcmp(cmd, "config") == 0)
        return lathe_cmd_config(argc - 2, argv + 2);
    if (strcmp(cmd, "plugins") == 0)
        return lathe_cmd_plugins(argc - 2, argv + 2);
    if (strcmp(cmd, "tokenize") == 0)
        return lathe_cmd_tokenize(argc - 2, argv + 2);
    if (strcmp(cmd, "convert") == 0)
        return lathe_cmd_convert(argc - 2, argv + 2);
    if (strcmp(cmd, "data") == 0)
        return lathe_cmd_data(argc - 2, argv + 2);
    if (strcmp(cmd, "plan") == 0)
        return lathe_cmd_plan(argc - 2, argv + 2);
    if (strcmp(cmd, "generate") == 0)
        return lathe_cmd_generate(argc - 2, argv + 2);
    if (strcmp(cmd, "merge") == 0)
        return lathe_cmd_merge(argc - 2, argv + 2);
    if (strcmp(cmd, "reward") == 0)
        return lathe_cmd_reward(argc - 2, argv + 2);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("lathe %s (plugin ABI %d.%d, %s)\n", PACKAGE_VERSION, LATHE_ABI_MAJOR, LATHE_ABI_MINOR,
               LATHE_BUILD_SIGNATURE);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "lathe: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
