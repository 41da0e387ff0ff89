/* lathe/weights.h — Hugging Face model directories: weights in and out.
 *
 * A model directory holds config.json and either model.safetensors or
 * shards model-0000i-of-0000n.safetensors listed by
 * model.safetensors.index.json ({"metadata": {"total_size": N},
 * "weight_map": {tensor name: file name}}). Files are mapped read-only and
 * validated as the reference safetensors implementation does. */
#ifndef LATHE_WEIGHTS_H
#define LATHE_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lathe_weights lathe_weights;

/* Open the weights of model directory `dir` (or one .safetensors file). */
int lathe_weights_open(lathe_weights **out, const char *dir);
void lathe_weights_close(lathe_weights *w);

/* Tensors in the directory, in file then offset order. */
size_t lathe_weights_count(const lathe_weights *w);
/* Name, dtype and shape of tensor i (dtype as the file stores it, shape into
 * shape[LATHE_MAX_DIMS]); returns a status. */
int lathe_weights_info(const lathe_weights *w, size_t i, const char **name, enum lathe_dtype *dtype, int *ndim,
                       int64_t *shape);
int lathe_weights_has(const lathe_weights *w, const char *name);
/* Copy tensor `name` into dst, converting its dtype (BF16/F16/F32 and the
 * integer types); a missing tensor or a shape other than dst's is an error
 * naming the tensor, both shapes and the file. Marks the tensor used. */
int lathe_weights_read(lathe_weights *w, const char *name, lathe_tensor *dst);
/* Same, reading a tensor stored [in, out] into dst [out, in] (GPT-2 Conv1D). */
int lathe_weights_read_transposed(lathe_weights *w, const char *name, lathe_tensor *dst);
/* The first tensor never read whose name does not match any of the
 * NULL-terminated glob patterns in `ignore` (e.g. "*.attn.bias"), or NULL. */
const char *lathe_weights_unused(const lathe_weights *w, const char *const *ignore);

/* Write tensors to `dir` in the Hugging Face layout: model.safetensors, or
 * shards of at most max_shard_bytes (0: one file) named
 * model-0000i-of-0000n.safetensors plus model.safetensors.index.json.
 * Tensors are stored as `dtype` (F32, BF16 or F16), each f32 tensor
 * converted one at a time so memory stays bounded by one tensor.
 * transposed[i] (may be NULL) stores tensor i as [in, out]. Files are written
 * to temporary names and renamed. */
int lathe_weights_write(const char *dir, const char *const *names, lathe_tensor *const *tensors,
                        const uint8_t *transposed, size_t n, enum lathe_dtype dtype, uint64_t max_shard_bytes);

/* Copy the files that travel with a model's weights (tokenizer.json,
 * tokenizer_config.json, generation_config.json, special_tokens_map.json,
 * chat_template.jinja, GPT-2's vocab.json and merges.txt) from src_dir to dst_dir, each through a temporary
 * name; a file src_dir lacks is skipped, and nothing is done when the two
 * directories are the same. */
int lathe_weights_copy_side_files(const char *src_dir, const char *dst_dir);

#ifdef __cplusplus
}
#endif
#endif
