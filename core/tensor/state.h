/* core/tensor/state.h — the checkpoint state store behind lathe_state_*
 * (env.h). Internal to liblathe.
 *
 * A state maps keys to tensors and scalars. Saving: components put entries
 * (tensors are borrowed until lathe_state_write returns), then the core
 * writes DIR/state.safetensors (tensors) and DIR/state.json (scalars).
 * Loading: lathe_state_read maps the files, and components get entries
 * back. Entries are namespaced by a prefix the core sets before handing the
 * state to each component ("optim.", "data.", ...). */
#ifndef LATHE_CORE_STATE_H
#define LATHE_CORE_STATE_H

#include <lathe/env.h>

lathe_state *lathe_state_new(void);
void lathe_state_free(lathe_state *st);
/* Prefix for the keys of following put/get calls ("" or NULL: none). */
void lathe_state_set_prefix(lathe_state *st, const char *prefix);
/* Write state.safetensors and state.json into dir (which must exist). */
int lathe_state_write(const lathe_state *st, const char *dir);
/* Read a state written by lathe_state_write. */
int lathe_state_read(lathe_state **out, const char *dir);

#endif
