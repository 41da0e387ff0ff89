/* lathe/abi.h — ABI versions, export macro, build signature. */
#ifndef LATHE_ABI_H
#define LATHE_ABI_H

#include <stddef.h>

/* Bump MINOR when a slot is appended to any ops struct or a field to a
 * public struct; bump MAJOR (and reset MINOR) for any other change. */
#define LATHE_ABI_MAJOR 1
#define LATHE_ABI_MINOR 2

#if defined(__GNUC__)
#define LATHE_EXPORT __attribute__((visibility("default")))
#else
#define LATHE_EXPORT
#endif

/* What a plugin and the host must agree on beyond the ABI version: pointer
 * size and the GPU runtime they were built for. A plugin built with
 * LATHE_BUILD_CUDA defined records it; the host refuses a mismatch. */
#define LATHE_STR_(x) #x
#define LATHE_STR(x) LATHE_STR_(x)
#if defined(LATHE_BUILD_CUDA)
#define LATHE_BUILD_SIG_GPU "cuda"
#else
#define LATHE_BUILD_SIG_GPU "nogpu"
#endif
#define LATHE_BUILD_SIGNATURE "ptr" LATHE_STR(__SIZEOF_POINTER__) ";" LATHE_BUILD_SIG_GPU

/* True when `ops` (a pointer to an ops struct whose first member is
 * `uint32_t size`) is large enough to hold `field` and the slot is set.
 * Use it before calling any slot appended after minor 0. */
#define LATHE_OPS_HAS(ops, type, field)                                        \
    ((ops) != NULL &&                                                          \
     offsetof(type, field) + sizeof(((type *)0)->field) <= (ops)->size &&       \
     (ops)->field != NULL)

#endif
