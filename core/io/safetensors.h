/* core/io/safetensors.h — read and write safetensors files.
 *
 * Layout (formats.md §1): u64 LE header length N, N bytes of JSON
 * {"__metadata__": {str: str}, NAME: {"dtype", "shape", "data_offsets"}},
 * then the data buffer; offsets are relative to byte 8+N.
 *
 * Reading maps the file read-only and validates the whole header at open
 * (the rules of the reference's Metadata::validate), so that no later call
 * can read outside the file. Tensor data pointers point into the mapping:
 * valid until lathe_st_close, read-only, little-endian, and NOT necessarily
 * aligned to the element size (third-party files, and our own when dtypes of
 * different sizes are mixed): copy with memcpy or lathe_convert_to_f32
 * before typed access.
 *
 * Writing goes to PATH.tmp, fsyncs, and renames over PATH, so a crash leaves
 * either the old file or the new one, never half of one. */
#ifndef LATHE_IO_SAFETENSORS_H
#define LATHE_IO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include <lathe/abi.h>
#include <lathe/tensor.h>

/* Largest header the reader accepts (the reference's MAX_HEADER_SIZE). */
#define LATHE_ST_MAX_HEADER 100000000u

struct lathe_st_file;

struct lathe_st_info {
    const char *name;       /* valid until close */
    enum lathe_dtype dtype;
    int ndim;
    int64_t shape[LATHE_MAX_DIMS];
    const void *data;       /* into the mapping; see alignment note above */
    size_t nbytes;
};

/* Open and validate. *out is NULL on failure; the message names the file
 * (and the tensor where one is at fault). */
LATHE_EXPORT int lathe_st_open(struct lathe_st_file **out, const char *path);
/* NULL is a no-op. */
LATHE_EXPORT void lathe_st_close(struct lathe_st_file *f);
/* The path given to open (for messages). */
LATHE_EXPORT const char *lathe_st_path(const struct lathe_st_file *f);
/* Number of tensors, __metadata__ excluded. */
LATHE_EXPORT size_t lathe_st_count(const struct lathe_st_file *f);
/* Tensor i, in data-offset order (the order they lie in the file).
 * LATHE_EUNSUPPORTED, naming the tensor, for a dtype enum lathe_dtype cannot
 * hold (F64, BOOL, F8_E4M3, ...) or more than LATHE_MAX_DIMS dims; info->name
 * is filled even then. LATHE_EINVAL if i is out of range. */
LATHE_EXPORT int lathe_st_get(const struct lathe_st_file *f, size_t i, struct lathe_st_info *info);
/* By name; LATHE_EINVAL naming file and tensor if absent, else as get. */
LATHE_EXPORT int lathe_st_find(const struct lathe_st_file *f, const char *name,
                               struct lathe_st_info *info);
/* Whether the file has a tensor of that name (sets no message). */
LATHE_EXPORT int lathe_st_has(const struct lathe_st_file *f, const char *name);
/* A __metadata__ string value; NULL if absent. Valid until close. */
LATHE_EXPORT const char *lathe_st_metadata(const struct lathe_st_file *f, const char *key);

/* One tensor to write. data holds numel * dtype size bytes, row-major. */
struct lathe_st_entry {
    const char *name;
    enum lathe_dtype dtype;
    int ndim;               /* 0..LATHE_MAX_DIMS; 0 is a scalar */
    const int64_t *shape;   /* ndim entries, each >= 0 (NULL if ndim is 0) */
    const void *data;       /* may be NULL only if the tensor has 0 bytes */
    int on_device;          /* nonzero: data is a buffer of the current
                               backend (lathe_backend()), read through its
                               copy; 0: host memory */
};

/* Write n tensors in the given order. The header starts with
 * "__metadata__": {"format": "pt", then meta_kv's pairs in order} (a "format"
 * pair in meta_kv replaces "pt"); meta_kv is a NULL-terminated array of
 * key, value strings, or NULL. Names must be unique, non-empty and not
 * "__metadata__". */
LATHE_EXPORT int lathe_st_write(const char *path, const struct lathe_st_entry *entries, size_t n,
                                const char *const *meta_kv);

#endif
