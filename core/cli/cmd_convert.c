/* core/cli/cmd_convert.c — `lathe convert gguf FILE.gguf OUT_DIR`: import a
 * llama.cpp GGUF model into the Hugging Face layout (core/io/gguf.c). */
#include "cli.h"

#include "io/gguf.h"

#include <lathe/status.h>

#include <stdio.h>
#include <string.h>
#include <time.h>

static int usage(FILE *f)
{
    fprintf(f, "usage: lathe convert gguf FILE.gguf OUT_DIR [--dtype float32|bfloat16|float16]\n"
               "  Writes config.json, model.safetensors, tokenizer.json, tokenizer_config.json and\n"
               "  generation_config.json for a llama-architecture GGUF; quantised weights are\n"
               "  dequantised (default float32).\n");
    return 2;
}

int lathe_cmd_convert(int argc, char **argv)
{
    if (argc >= 1 && (strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc < 1 || strcmp(argv[0], "gguf") != 0) {
        if (argc >= 1)
            fprintf(stderr, "lathe convert: unknown source format '%s' (gguf is the one there is)\n", argv[0]);
        return usage(stderr);
    }
    const char *in = NULL, *out = NULL;
    enum lathe_dtype dtype = LATHE_F32;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (strcmp(a, "--dtype") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "lathe convert: --dtype needs a value\n");
                return usage(stderr);
            }
            v = argv[++i];
        } else if (strncmp(a, "--dtype=", 8) == 0) {
            v = a + 8;
        } else if (a[0] == '-' && a[1] == '-') {
            fprintf(stderr, "lathe convert: unknown option '%s'\n", a);
            return usage(stderr);
        } else if (!in) {
            in = a;
        } else if (!out) {
            out = a;
        } else {
            fprintf(stderr, "lathe convert: unexpected argument '%s'\n", a);
            return usage(stderr);
        }
        if (v) {
            if (strcmp(v, "float32") == 0 || strcmp(v, "f32") == 0)
                dtype = LATHE_F32;
            else if (strcmp(v, "bfloat16") == 0 || strcmp(v, "bf16") == 0)
                dtype = LATHE_BF16;
            else if (strcmp(v, "float16") == 0 || strcmp(v, "f16") == 0)
                dtype = LATHE_F16;
            else {
                fprintf(stderr, "lathe convert: --dtype '%s' is not float32, bfloat16 or float16\n", v);
                return 2;
            }
        }
    }
    if (!in || !out) {
        fprintf(stderr, "lathe convert gguf: needs FILE.gguf and OUT_DIR\n");
        return usage(stderr);
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (lathe_gguf_to_hf(in, out, dtype, stdout) != LATHE_OK)
        return lathe_cli_fail();
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("wrote %s (%.1f s)\n", out, (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9);
    return 0;
}
