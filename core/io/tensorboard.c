/* core/io/tensorboard.c — TensorBoard event-file writer.
 *
 * Field numbers and wire types are those of tensorboard/compat/proto/
 * event.proto and summary.proto (formats.md §5.3): Event.wall_time = 1
 * (double), step = 2 (int64), file_version = 3 (string), summary = 5;
 * Summary.value = 1; Summary.Value.tag = 1, simple_value = 2 (float). */
#include "io/tensorboard.h"

#include <lathe/status.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Protobuf wire types. */
#define WT_VARINT 0
#define WT_I64 1
#define WT_LEN 2
#define WT_I32 5
#define PB_KEY(field, wt) ((uint8_t)((field) << 3 | (wt)))

static const char FILE_VERSION[] = "brain.Event:2";

/* ---- encoding ----------------------------------------------------------
 * A cursor that counts every byte but stores only those that fit, so one
 * pass both sizes and writes. */
struct pb {
    uint8_t *buf;
    size_t cap, len;
};

static void pb_byte(struct pb *w, uint8_t b)
{
    if (w->len < w->cap)
        w->buf[w->len] = b;
    w->len++;
}

static void pb_bytes(struct pb *w, const void *p, size_t n)
{
    const uint8_t *s = p;
    for (size_t i = 0; i < n; i++)
        pb_byte(w, s[i]);
}

static void pb_varint(struct pb *w, uint64_t v)
{
    while (v >= 0x80) {
        pb_byte(w, (uint8_t)(v | 0x80));
        v >>= 7;
    }
    pb_byte(w, (uint8_t)v);
}

static size_t varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static void pb_le(struct pb *w, uint64_t v, int nbytes)
{
    for (int i = 0; i < nbytes; i++)
        pb_byte(w, (uint8_t)(v >> (8 * i)));
}

static void pb_double(struct pb *w, int field, double d)
{
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    pb_byte(w, PB_KEY(field, WT_I64));
    pb_le(w, bits, 8);
}

static void pb_wall_time(struct pb *w, double wall_time)
{
    uint64_t bits;
    memcpy(&bits, &wall_time, sizeof bits);
    if (bits != 0) /* proto3: a default (+0.0) scalar is not written */
        pb_double(w, 1, wall_time);
}

size_t lathe_tb_encode_version_event(uint8_t *buf, size_t cap, double wall_time)
{
    struct pb w = {buf, buf ? cap : 0, 0};
    pb_wall_time(&w, wall_time);
    pb_byte(&w, PB_KEY(3, WT_LEN));
    pb_varint(&w, sizeof FILE_VERSION - 1);
    pb_bytes(&w, FILE_VERSION, sizeof FILE_VERSION - 1);
    return w.len;
}

size_t lathe_tb_encode_scalar_event(uint8_t *buf, size_t cap, double wall_time, int64_t step,
                                    const char *tag, float value)
{
    struct pb w = {buf, buf ? cap : 0, 0};
    size_t taglen = tag ? strlen(tag) : 0;
    /* Summary.Value{tag, simple_value} */
    size_t vlen = (taglen ? 1 + varint_len(taglen) + taglen : 0) + 1 + 4;
    /* Summary{value} */
    size_t slen = 1 + varint_len(vlen) + vlen;
    uint32_t fbits;
    memcpy(&fbits, &value, sizeof fbits);

    pb_wall_time(&w, wall_time);
    if (step != 0) { /* a negative step is a 10-byte varint, as for any int64 */
        pb_byte(&w, PB_KEY(2, WT_VARINT));
        pb_varint(&w, (uint64_t)step);
    }
    pb_byte(&w, PB_KEY(5, WT_LEN));
    pb_varint(&w, slen);
    pb_byte(&w, PB_KEY(1, WT_LEN));
    pb_varint(&w, vlen);
    if (taglen) {
        pb_byte(&w, PB_KEY(1, WT_LEN));
        pb_varint(&w, taglen);
        pb_bytes(&w, tag, taglen);
    }
    pb_byte(&w, PB_KEY(2, WT_I32));
    pb_le(&w, fbits, 4);
    return w.len;
}

size_t lathe_tb_frame_record(uint8_t *buf, size_t cap, const void *data, size_t n)
{
    size_t need = n + 16;
    if (!buf || cap < need)
        return need;
    memmove(buf + 12, data, n); /* first, in case data lies inside buf */
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)((uint64_t)n >> (8 * i));
    uint32_t hcrc = lathe_crc32c_mask(lathe_crc32c(buf, 8));
    for (int i = 0; i < 4; i++)
        buf[8 + i] = (uint8_t)(hcrc >> (8 * i));
    uint32_t dcrc = lathe_crc32c_mask(lathe_crc32c(buf + 12, n));
    for (int i = 0; i < 4; i++)
        buf[12 + n + i] = (uint8_t)(dcrc >> (8 * i));
    return need;
}

/* ---- the writer ---------------------------------------------------------- */
struct lathe_tb {
    FILE *fp;
    char *path;
};

static double wall_clock(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* mkdir -p: each missing component is made; one that exists as a directory
 * is fine. */
static int make_dirs(const char *dir)
{
    size_t n = strlen(dir);
    char *p = malloc(n + 1);
    if (!p)
        return lathe_error(LATHE_ENOMEM, "out of memory creating directory %s", dir);
    memcpy(p, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != '\0')
            continue;
        char c = p[i];
        p[i] = '\0';
        struct stat st;
        if (mkdir(p, 0777) != 0 && errno != EEXIST) {
            int e = errno;
            free(p);
            return lathe_error(LATHE_EIO, "cannot create directory %.*s: %s", (int)i, dir,
                               strerror(e));
        }
        if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) {
            free(p);
            return lathe_error(LATHE_EIO, "%.*s exists and is not a directory", (int)i, dir);
        }
        p[i] = c;
    }
    free(p);
    return LATHE_OK;
}

/* Write one framed record through the stdio buffer. */
static int tb_write_record(struct lathe_tb *tb, const uint8_t *data, size_t n)
{
    uint8_t stackbuf[512];
    size_t need = n + 16;
    uint8_t *rec = need <= sizeof stackbuf ? stackbuf : malloc(need);
    if (!rec)
        return lathe_error(LATHE_ENOMEM, "out of memory writing %s", tb->path);
    lathe_tb_frame_record(rec, need, data, n);
    size_t put = fwrite(rec, 1, need, tb->fp);
    if (rec != stackbuf)
        free(rec);
    if (put != need)
        return lathe_error(LATHE_EIO, "cannot write %s: %s", tb->path, strerror(errno));
    return LATHE_OK;
}

int lathe_tb_open(struct lathe_tb **out, const char *dir)
{
    *out = NULL;
    if (!dir || !*dir)
        return lathe_error(LATHE_EINVAL, "TensorBoard: no directory given");
    int rc = make_dirs(dir);
    if (rc)
        return rc;

    char host[256] = "localhost";
    if (gethostname(host, sizeof host - 1) != 0 || !host[0])
        strcpy(host, "localhost");
    host[sizeof host - 1] = '\0';
    for (char *h = host; *h; h++)
        if (*h == '/')
            *h = '_';

    struct lathe_tb *tb = calloc(1, sizeof *tb);
    size_t cap = strlen(dir) + strlen(host) + 96;
    if (!tb || !(tb->path = malloc(cap))) {
        free(tb);
        return lathe_error(LATHE_ENOMEM, "out of memory opening a TensorBoard file in %s", dir);
    }
    double now = wall_clock();
    int fd = -1;
    /* Two writers in one second from one process (a logger re-created after
     * an eval, say) would get the same name; a numbered suffix keeps both,
     * and sorts after the first, which is the order TensorBoard reads in. */
    for (int k = 0; k < 1000 && fd < 0; k++) {
        int len = snprintf(tb->path, cap, "%s/events.out.tfevents.%010lld.%s.%ld.lathe", dir,
                           (long long)now, host, (long)getpid());
        if (k > 0)
            snprintf(tb->path + len, cap - (size_t)len, ".%03d", k);
        fd = open(tb->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0 && errno != EEXIST)
            break;
    }
    if (fd < 0 || !(tb->fp = fdopen(fd, "wb"))) {
        rc = lathe_error(LATHE_EIO, "cannot create TensorBoard file %s: %s", tb->path,
                         strerror(errno));
        if (fd >= 0)
            close(fd);
        free(tb->path);
        free(tb);
        return rc;
    }

    uint8_t ev[64];
    size_t n = lathe_tb_encode_version_event(ev, sizeof ev, now);
    if ((rc = tb_write_record(tb, ev, n)) != 0 || (rc = lathe_tb_flush(tb)) != 0) {
        lathe_tb_close(tb);
        return rc;
    }
    *out = tb;
    return LATHE_OK;
}

int lathe_tb_scalar(struct lathe_tb *tb, int64_t step, const char *tag, double value)
{
    if (!tag || !*tag)
        return lathe_error(LATHE_EINVAL, "%s: a TensorBoard scalar needs a non-empty tag",
                           tb->path);
    double now = wall_clock();
    uint8_t stackbuf[256];
    size_t need = lathe_tb_encode_scalar_event(NULL, 0, now, step, tag, (float)value);
    uint8_t *ev = need <= sizeof stackbuf ? stackbuf : malloc(need);
    if (!ev)
        return lathe_error(LATHE_ENOMEM, "out of memory writing %s", tb->path);
    lathe_tb_encode_scalar_event(ev, need, now, step, tag, (float)value);
    int rc = tb_write_record(tb, ev, need);
    if (ev != stackbuf)
        free(ev);
    return rc;
}

int lathe_tb_flush(struct lathe_tb *tb)
{
    if (fflush(tb->fp) != 0)
        return lathe_error(LATHE_EIO, "cannot write %s: %s", tb->path, strerror(errno));
    return LATHE_OK;
}

const char *lathe_tb_path(const struct lathe_tb *tb)
{
    return tb->path;
}

void lathe_tb_close(struct lathe_tb *tb)
{
    if (!tb)
        return;
    fclose(tb->fp);
    free(tb->path);
    free(tb);
}
