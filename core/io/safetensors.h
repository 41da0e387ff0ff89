/* core/io/safetensors.h — safetensors reader (mmap, validated) and writer.
 * Internal to liblathe. (Header written by the lead from the agreed API so
 * the core links; the io module owns it from here.) */
#ifndef LATHE_CORE_SAFETENSORS_H
#define LATHE_CORE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include <lathe/tensor.h>

struct lathe_st_file; /* an opened file, mmap'd read-only */

int lathe_st_open(struct lathe_st_file **out, const char *path);
void lathe_st_close(struct lathe_st_file *f);
size_t lathe_st_count(const struct lathe_st_file *f);

struct lathe_st_info {
    const char *name;
    enum lathe_dtype dtype;
    int ndim;
    int64_t shape[LATHE_MAX_DIMS];
    const void *data;
    size_t nbytes;
};

int lathe_st_get(const struct lathe_st_file *f, size_t i, struct lathe_st_info *info);
/* LATHE_EINVAL naming file and tensor if absent */
int lathe_st_find(const struct lathe_st_file *f, const char *name, struct lathe_st_info *info);
/* __metadata__ string values, NULL if absent */
const char *lathe_st_metadata(const struct lathe_st_file *f, const char *key);

/* Writer: tensors written in the given order */
struct lathe_st_entry {
    const char *name;
    enum lathe_dtype dtype;
    int ndim;
    const int64_t *shape;
    const void *data;
};
/* meta_kv: NULL-terminated key, value pairs, or NULL */
int lathe_st_write(const char *path, const struct lathe_st_entry *entries, size_t n,
                   const char *const *meta_kv);

#endif
