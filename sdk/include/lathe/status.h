/* lathe/status.h — status codes and the error message kept by the core.
 *
 * Every call that can fail returns an int from enum lathe_status. The
 * message that explains a failure is copied into a thread-local buffer owned
 * by liblathe (no message memory crosses a library boundary); read it with
 * lathe_errmsg(), valid until the next failing call on the same thread. */
#ifndef LATHE_STATUS_H
#define LATHE_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

enum lathe_status {
    LATHE_OK = 0,
    LATHE_ERR = -1,          /* generic failure */
    LATHE_ENOMEM = -2,       /* allocation failed */
    LATHE_EINVAL = -3,       /* bad argument, shape or value */
    LATHE_EIO = -4,          /* file or stream error */
    LATHE_ECUDA = -5,        /* CUDA runtime or cuBLAS error */
    LATHE_ENCCL = -6,        /* NCCL error */
    LATHE_EUNSUPPORTED = -7, /* a setting or op this build/plugin cannot honour */
    LATHE_EABI = -8,         /* plugin ABI mismatch */
    LATHE_ECONFIG = -9,      /* configuration error (file:line in the message) */
    LATHE_EINTR = -10,       /* interrupted by a signal; state was saved */
    LATHE_EOF = 1            /* not an error: a stream has no more items */
};

/* A short constant name for a status ("invalid argument"). Never NULL. */
const char *lathe_status_str(int status);

/* Record a formatted message for `status` and return `status`, so that
 * callers can write `return lathe_error(LATHE_EINVAL, "rank must be > 0");`. */
int lathe_error(int status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Prefix the current message with "prefix: " (adds context while an error
 * travels up) and return `status`. */
int lathe_error_prefix(int status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* The last message recorded on this thread ("" if none). Owned by liblathe. */
const char *lathe_errmsg(void);

/* Forget the last message. */
void lathe_error_clear(void);

#ifdef __cplusplus
}
#endif
#endif
