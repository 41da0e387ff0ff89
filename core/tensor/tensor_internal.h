/* core/tensor/tensor_internal.h — tensor internals shared inside core. */
#ifndef LATHE_CORE_TENSOR_INTERNAL_H
#define LATHE_CORE_TENSOR_INTERNAL_H

#include <lathe/tensor.h>

/* Allocate a zeroed tensor; scoped = 0 makes it caller-owned even inside a
 * scope. */
lathe_tensor *lathe_tensor_alloc(enum lathe_dtype dt, int ndim, const int64_t *shape, int scoped);
/* The same with zero = 0 leaving the contents undefined (op results). */
lathe_tensor *lathe_tensor_alloc_raw(enum lathe_dtype dt, int ndim, const int64_t *shape, int scoped, int zero);
/* Free t, its grad and (if owned) its buffer, whatever its flags. */
void lathe_tensor_destroy(lathe_tensor *t);
int lathe_scope_depth(void);
/* Move t (an owning, non-view tensor of the innermost scope) into the
 * enclosing scope, or to the caller when there is none, so that it
 * survives the next lathe_scope_pop. */
int lathe_scope_keep(lathe_tensor *t);

size_t lathe_tape_length(void);
/* Free the records from index `mark` on. */
void lathe_tape_truncate(size_t mark);

#endif
