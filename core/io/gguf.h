/* core/io/gguf.h — read GGUF files (llama.cpp's model format) and
 * dequantise their tensors; import a llama-architecture GGUF into the
 * Hugging Face layout.
 *
 * Layout (formats.md §8; ggml-org/ggml docs/gguf.md): "GGUF", u32 version
 * (2 or 3), u64 tensor count, u64 key/value count, the key/value pairs, the
 * tensor infos, padding to general.alignment (default 32), then the tensor
 * data. All little-endian.
 *
 * The reader maps the file read-only and validates everything at open: every
 * length, count, dimension, type and offset, with overflow checks, so that no
 * later call reads outside the mapping. Pointers it hands out (keys, string
 * values, tensor data) point into the mapping or into memory owned by the
 * file object, and stay valid until lathe_gguf_close. Strings inside the
 * mapping are NOT NUL-terminated: use the lengths. */
#ifndef LATHE_IO_GGUF_H
#define LATHE_IO_GGUF_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <lathe/abi.h>
#include <lathe/tensor.h>

/* Metadata value types (gguf.md, enum gguf_metadata_value_type). */
enum lathe_gguf_vtype {
    LATHE_GGUF_U8 = 0,
    LATHE_GGUF_I8 = 1,
    LATHE_GGUF_U16 = 2,
    LATHE_GGUF_I16 = 3,
    LATHE_GGUF_U32 = 4,
    LATHE_GGUF_I32 = 5,
    LATHE_GGUF_F32 = 6,
    LATHE_GGUF_BOOL = 7,
    LATHE_GGUF_STRING = 8,
    LATHE_GGUF_ARRAY = 9,
    LATHE_GGUF_U64 = 10,
    LATHE_GGUF_I64 = 11,
    LATHE_GGUF_F64 = 12,
    LATHE_GGUF_VTYPE_COUNT
};

/* The ggml tensor types this code names (ggml.h, enum ggml_type). */
enum lathe_ggml_type {
    LATHE_GGML_F32 = 0,
    LATHE_GGML_F16 = 1,
    LATHE_GGML_Q4_0 = 2,
    LATHE_GGML_Q4_1 = 3,
    LATHE_GGML_Q5_0 = 6,
    LATHE_GGML_Q5_1 = 7,
    LATHE_GGML_Q8_0 = 8,
    LATHE_GGML_Q8_1 = 9,
    LATHE_GGML_Q2_K = 10,
    LATHE_GGML_Q3_K = 11,
    LATHE_GGML_Q4_K = 12,
    LATHE_GGML_Q5_K = 13,
    LATHE_GGML_Q6_K = 14,
    LATHE_GGML_Q8_K = 15,
    LATHE_GGML_I8 = 24,
    LATHE_GGML_I16 = 25,
    LATHE_GGML_I32 = 26,
    LATHE_GGML_I64 = 27,
    LATHE_GGML_F64 = 28,
    LATHE_GGML_BF16 = 30
};

#define LATHE_GGUF_MAX_DIMS 4 /* GGML_MAX_DIMS */

struct lathe_gguf;

/* A string: bytes and length, not NUL-terminated. */
struct lathe_gguf_str {
    const char *ptr;
    uint64_t len;
};

struct lathe_gguf_kv {
    const char *key;            /* NUL-terminated copy, owned by the file */
    enum lathe_gguf_vtype type;
    /* Scalars: the value, widened. u holds unsigned and bool, i signed,
     * f floats (f32 widened exactly). For STRING, s. */
    uint64_t u;
    int64_t i;
    double f;
    struct lathe_gguf_str s;
    /* ARRAY: element type, count, and the raw little-endian elements
     * (numeric arrays) or one lathe_gguf_str per element (string arrays). */
    enum lathe_gguf_vtype arr_type;
    uint64_t arr_n;
    const uint8_t *arr_raw;
    const struct lathe_gguf_str *arr_str;
};

struct lathe_gguf_tensor {
    const char *name;           /* NUL-terminated copy, owned by the file */
    uint32_t type;              /* enum lathe_ggml_type (any known ggml type) */
    int n_dims;
    uint64_t ne[LATHE_GGUF_MAX_DIMS]; /* ne[0] fastest-varying (row length); unused = 1 */
    uint64_t nelem;
    uint64_t offset;            /* relative to the data section */
    uint64_t nbytes;
    const void *data;           /* into the mapping */
};

/* Open and validate PATH. *out is NULL on failure; the message names the
 * file and what is wrong (key, tensor, offset). */
LATHE_EXPORT int lathe_gguf_open(struct lathe_gguf **out, const char *path);
/* NULL is a no-op. */
LATHE_EXPORT void lathe_gguf_close(struct lathe_gguf *g);
LATHE_EXPORT const char *lathe_gguf_path(const struct lathe_gguf *g);
LATHE_EXPORT uint32_t lathe_gguf_version(const struct lathe_gguf *g);
LATHE_EXPORT uint64_t lathe_gguf_alignment(const struct lathe_gguf *g);
/* File offset of the data section (tensor offsets are relative to it). */
LATHE_EXPORT uint64_t lathe_gguf_data_offset(const struct lathe_gguf *g);

LATHE_EXPORT size_t lathe_gguf_kv_count(const struct lathe_gguf *g);
LATHE_EXPORT const struct lathe_gguf_kv *lathe_gguf_kv_at(const struct lathe_gguf *g, size_t i);
/* NULL (no message) if absent. */
LATHE_EXPORT const struct lathe_gguf_kv *lathe_gguf_kv_find(const struct lathe_gguf *g, const char *key);

/* Typed getters. Absent key: LATHE_EINVAL "FILE: metadata key K is missing"
 * (callers with a default test lathe_gguf_kv_find first). Wrong type:
 * LATHE_EINVAL naming the key and both types. get_uint accepts any integer
 * type holding a value >= 0; get_float any float or integer type; get_bool
 * BOOL only; get_str STRING only (value not NUL-terminated). */
LATHE_EXPORT int lathe_gguf_get_uint(const struct lathe_gguf *g, const char *key, uint64_t *out);
LATHE_EXPORT int lathe_gguf_get_float(const struct lathe_gguf *g, const char *key, double *out);
LATHE_EXPORT int lathe_gguf_get_bool(const struct lathe_gguf *g, const char *key, int *out);
LATHE_EXPORT int lathe_gguf_get_str(const struct lathe_gguf *g, const char *key, struct lathe_gguf_str *out);
/* An array of `elem` type (LATHE_GGUF_VTYPE_COUNT: any). */
LATHE_EXPORT int lathe_gguf_get_arr(const struct lathe_gguf *g, const char *key, enum lathe_gguf_vtype elem,
                                    const struct lathe_gguf_kv **out);
/* Element i of an integer array (any integer element type), widened. */
LATHE_EXPORT int64_t lathe_gguf_arr_int(const struct lathe_gguf_kv *kv, uint64_t i);

LATHE_EXPORT size_t lathe_gguf_tensor_count(const struct lathe_gguf *g);
LATHE_EXPORT const struct lathe_gguf_tensor *lathe_gguf_tensor_at(const struct lathe_gguf *g, size_t i);
/* NULL (no message) if absent. */
LATHE_EXPORT const struct lathe_gguf_tensor *lathe_gguf_tensor_find(const struct lathe_gguf *g, const char *name);

/* ---- ggml types and dequantisation (dequant.c) --------------------------- */

/* Name ("Q4_1") of a ggml type, or NULL if this code does not know it. */
LATHE_EXPORT const char *lathe_ggml_type_name(uint32_t type);
/* Elements per block and bytes per block of a known type; 0 if unknown. */
LATHE_EXPORT int lathe_ggml_type_size(uint32_t type, uint64_t *block_elems, uint64_t *block_bytes);
/* Whether lathe_dequantize handles the type. */
LATHE_EXPORT int lathe_ggml_can_dequantize(uint32_t type);
/* Dequantise n elements (a multiple of the type's block size) from src, laid
 * out as the file stores them, into dst as f32. Results equal the reference
 * (gguf-py's gguf.quants.dequantize) bit for bit: each formula is evaluated
 * in its operation order with no fused multiply-add. LATHE_EUNSUPPORTED for
 * a type it does not handle. */
LATHE_EXPORT int lathe_dequantize(uint32_t type, const void *src, float *dst, uint64_t n);

/* ---- import (gguf.c) ------------------------------------------------------ */

/* Convert a llama-architecture GGUF into a Hugging Face model directory
 * out_dir (created if missing): config.json, model.safetensors (weights as
 * `dtype`: LATHE_F32, LATHE_BF16 or LATHE_F16), tokenizer.json,
 * tokenizer_config.json and generation_config.json. q_proj/k_proj rows are
 * put back from llama.cpp's interleaved-RoPE order into the Hugging Face
 * order. Progress lines go to `log` (may be NULL). */
LATHE_EXPORT int lathe_gguf_to_hf(const char *gguf_path, const char *out_dir, enum lathe_dtype dtype, FILE *log);

/* The inverse of llama.cpp's convert_hf_to_gguf `permute` for one q or k
 * matrix: rows run (n_head, head_dim/2, 2) in w, (n_head, 2, head_dim/2) in
 * the result (formats.md §8). w is [rows, cols] row-major, rows a multiple of
 * 2·n_head. Writes into out (not aliasing w). */
LATHE_EXPORT int lathe_gguf_unpermute_rows(const float *w, float *out, uint64_t rows, uint64_t cols,
                                           uint64_t n_head);

#endif
