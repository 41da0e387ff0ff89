/* core/util/status.c — status names and the thread-local error message. */
#include <lathe/status.h>

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define LATHE_ERRMSG_MAX 4096

static _Thread_local char errbuf[LATHE_ERRMSG_MAX];

const char *lathe_status_str(int status)
{
    switch (status) {
    case LATHE_OK: return "ok";
    case LATHE_ERR: return "error";
    case LATHE_ENOMEM: return "out of memory";
    case LATHE_EINVAL: return "invalid argument";
    case LATHE_EIO: return "input/output error";
    case LATHE_ECUDA: return "CUDA error";
    case LATHE_ENCCL: return "NCCL error";
    case LATHE_EUNSUPPORTED: return "unsupported";
    case LATHE_EABI: return "plugin ABI mismatch";
    case LATHE_ECONFIG: return "configuration error";
    case LATHE_EINTR: return "interrupted";
    case LATHE_EOF: return "end of data";
    default: return "unknown status";
    }
}

int lathe_error(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, sizeof errbuf, fmt, ap);
    va_end(ap);
    return status;
}

int lathe_error_prefix(int status, const char *fmt, ...)
{
    char prefix[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    char old[LATHE_ERRMSG_MAX];
    memcpy(old, errbuf, sizeof old);
    snprintf(errbuf, sizeof errbuf, "%s: %s", prefix, old[0] ? old : lathe_status_str(status));
    return status;
}

const char *lathe_errmsg(void) { return errbuf; }

void lathe_error_clear(void) { errbuf[0] = '\0'; }
