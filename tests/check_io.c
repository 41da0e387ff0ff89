/* tests/check_io.c — CRC-32C, TensorBoard event files, metrics loggers and
 * safetensors, each checked against an independent reader or a published
 * vector (formats.md §1, §5; RFC 3720 §B.4). */
#define _GNU_SOURCE /* nftw, mkdtemp */
#include "testutil.h"

#include "io/metrics.h"
#include "io/safetensors.h"
#include "io/tensorboard.h"

#include <lathe/status.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------- */
static char tmpdir[256];

static void tmp_setup(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/lathe-io-XXXXXX", base && *base ? base : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static void tmp_teardown(void)
{
    if (tmpdir[0])
        nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    tmpdir[0] = '\0';
}

static char *tmp_path(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "%s/%s", tmpdir, name);
    return buf;
}

/* "1a00 0000" -> bytes; spaces ignored. */
static size_t hex_decode(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = 0;
    int hi = -1;
    for (const char *c = hex; *c; c++) {
        if (*c == ' ')
            continue;
        int v = (*c >= '0' && *c <= '9') ? *c - '0' : (*c | 0x20) - 'a' + 10;
        ck_assert(v >= 0 && v < 16);
        if (hi < 0) {
            hi = v;
        } else {
            ck_assert(n < cap);
            out[n++] = (uint8_t)(hi << 4 | v);
            hi = -1;
        }
    }
    ck_assert_int_eq(hi, -1);
    return n;
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    ck_assert_uint_eq(fwrite(p, 1, n, fp), n);
    ck_assert_int_eq(fclose(fp), 0);
}

static uint8_t *read_bytes(const char *path, size_t *n)
{
    FILE *fp = fopen(path, "rb");
    ck_assert_msg(fp != NULL, "cannot open %s", path);
    fseek(fp, 0, SEEK_END);
    long len = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *p = malloc(len > 0 ? (size_t)len : 1);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq(fread(p, 1, (size_t)len, fp), (size_t)len);
    fclose(fp);
    *n = (size_t)len;
    return p;
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Bit-at-a-time CRC-32C straight from the definition, as the oracle for the
 * table-driven one. */
static uint32_t crc32c_bitwise(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    }
    return ~c;
}

/* ---- a minimal TFRecord + Event reader ------------------------------------ */
struct tb_event {
    double wall_time;
    int64_t step;
    char file_version[64];
    char tag[1024];
    float value;
    int has_version, has_value, has_step;
};

static uint64_t pb_varint(const uint8_t **p, const uint8_t *end)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        ck_assert(*p < end);
        uint8_t b = *(*p)++;
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80))
            return v;
    }
    ck_abort_msg("varint longer than 10 bytes");
    return 0;
}

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* Summary.Value: tag (1) and simple_value (2) are all lathe writes. */
static void decode_value(const uint8_t *p, const uint8_t *end, struct tb_event *ev)
{
    while (p < end) {
        uint64_t key = pb_varint(&p, end);
        if (key == 0x0A) { /* tag */
            uint64_t n = pb_varint(&p, end);
            ck_assert(n < sizeof ev->tag && p + n <= end);
            memcpy(ev->tag, p, n);
            ev->tag[n] = '\0';
            p += n;
        } else if (key == 0x15) { /* simple_value */
            ck_assert(p + 4 <= end);
            uint32_t bits = (uint32_t)le(p, 4);
            memcpy(&ev->value, &bits, 4);
            ev->has_value = 1;
            p += 4;
        } else {
            ck_abort_msg("unexpected Summary.Value field key %llu", (unsigned long long)key);
        }
    }
}

static void decode_event(const uint8_t *p, size_t n, struct tb_event *ev)
{
    const uint8_t *end = p + n;
    memset(ev, 0, sizeof *ev);
    while (p < end) {
        uint64_t key = pb_varint(&p, end);
        if (key == 0x09) {
            ck_assert(p + 8 <= end);
            uint64_t bits = le(p, 8);
            memcpy(&ev->wall_time, &bits, 8);
            p += 8;
        } else if (key == 0x10) {
            ev->step = (int64_t)pb_varint(&p, end);
            ev->has_step = 1;
        } else if (key == 0x1A) {
            uint64_t len = pb_varint(&p, end);
            ck_assert(len < sizeof ev->file_version && p + len <= end);
            memcpy(ev->file_version, p, len);
            ev->has_version = 1;
            p += len;
        } else if (key == 0x2A) { /* summary */
            uint64_t slen = pb_varint(&p, end);
            const uint8_t *send = p + slen;
            ck_assert(send <= end);
            while (p < send) {
                ck_assert_uint_eq(pb_varint(&p, send), 0x0A); /* Summary.value */
                uint64_t vlen = pb_varint(&p, send);
                ck_assert(p + vlen <= send);
                decode_value(p, p + vlen, ev);
                p += vlen;
            }
        } else {
            ck_abort_msg("unexpected Event field key %llu", (unsigned long long)key);
        }
    }
}

/* Parse every record of an event file, checking both CRCs. */
static size_t read_tb_file(const char *path, struct tb_event *evs, size_t max)
{
    size_t len, n = 0, at = 0;
    uint8_t *buf = read_bytes(path, &len);
    while (at < len) {
        ck_assert_msg(at + 12 <= len, "%s: truncated record header", path);
        uint64_t dlen = le(buf + at, 8);
        ck_assert_uint_eq((uint32_t)le(buf + at + 8, 4), lathe_crc32c_mask(crc32c_bitwise(buf + at, 8)));
        ck_assert_msg(at + 16 + dlen <= len, "%s: truncated record", path);
        ck_assert_uint_eq((uint32_t)le(buf + at + 12 + dlen, 4),
                          lathe_crc32c_mask(crc32c_bitwise(buf + at + 12, dlen)));
        ck_assert(n < max);
        decode_event(buf + at + 12, dlen, &evs[n++]);
        at += 16 + dlen;
    }
    free(buf);
    return n;
}

/* The single events file in dir (fails if none or several). */
static void find_tb_file(const char *dir, char *out, size_t cap)
{
    DIR *d = opendir(dir);
    ck_assert_msg(d != NULL, "no directory %s", dir);
    int found = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strstr(e->d_name, "tfevents")) {
            found++;
            snprintf(out, cap, "%s/%s", dir, e->d_name);
        }
    }
    closedir(d);
    ck_assert_int_eq(found, 1);
}

/* ---- CRC-32C ---------------------------------------------------------------- */
START_TEST(test_crc32c_vectors)
{
    ck_assert_uint_eq(lathe_crc32c("123456789", 9), 0xE3069283u);
    ck_assert_uint_eq(lathe_crc32c("", 0), 0u);
    /* RFC 3720 §B.4 */
    uint8_t buf[32];
    memset(buf, 0, 32);
    ck_assert_uint_eq(lathe_crc32c(buf, 32), 0x8A9136AAu);
    memset(buf, 0xFF, 32);
    ck_assert_uint_eq(lathe_crc32c(buf, 32), 0x62A8AB43u);
    for (int i = 0; i < 32; i++)
        buf[i] = (uint8_t)i;
    ck_assert_uint_eq(lathe_crc32c(buf, 32), 0x46DD794Eu);
    for (int i = 0; i < 32; i++)
        buf[i] = (uint8_t)(31 - i);
    ck_assert_uint_eq(lathe_crc32c(buf, 32), 0x113FDB5Cu);
    /* mask is rotate-right-15 plus a constant */
    ck_assert_uint_eq(lathe_crc32c_mask(0), 0xA282EAD8u);
    ck_assert_uint_eq(lathe_crc32c_mask(0x00008000u), 0xA282EAD9u);
}
END_TEST

START_TEST(test_crc32c_matches_bitwise)
{
    uint8_t buf[300];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof buf; i++) {
        x = x * 1103515245u + 12345u;
        buf[i] = (uint8_t)(x >> 16);
    }
    /* every length around the 8-byte blocks, at every alignment */
    for (size_t off = 0; off < 8; off++)
        for (size_t n = 0; n + off <= sizeof buf; n += (n < 40 ? 1 : 37))
            ck_assert_msg(lathe_crc32c(buf + off, n) == crc32c_bitwise(buf + off, n),
                          "off %zu len %zu", off, n);
}
END_TEST

/* ---- TensorBoard encoding ---------------------------------------------------- */
START_TEST(test_tb_golden_version)
{
    uint8_t want[128], ev[64], rec[128];
    size_t wn = hex_decode("1800000000000000 a37f4b22 0900000040fc54d941 "
                           "1a0d627261696e2e4576656e743a32 eced8f9d",
                           want, sizeof want);
    size_t n = lathe_tb_encode_version_event(ev, sizeof ev, 1700000000.0);
    ck_assert_uint_eq(n, 24);
    ck_assert_uint_eq(lathe_tb_encode_version_event(NULL, 0, 1700000000.0), 24);
    size_t rn = lathe_tb_frame_record(rec, sizeof rec, ev, n);
    ck_assert_uint_eq(rn, wn);
    ck_assert_mem_eq(rec, want, wn);
}
END_TEST

START_TEST(test_tb_golden_scalar)
{
    uint8_t want[128], ev[64], rec[128];
    size_t wn = hex_decode("1a00000000000000 129bd82d 0900004040fc54d941 1001 2a0d 0a0b "
                           "0a046c6f7373 150000003f 97d67404",
                           want, sizeof want);
    size_t n = lathe_tb_encode_scalar_event(ev, sizeof ev, 1700000001.0, 1, "loss", 0.5f);
    ck_assert_uint_eq(n, 26);
    ck_assert_uint_eq(lathe_tb_encode_scalar_event(NULL, 0, 1700000001.0, 1, "loss", 0.5f), 26);
    /* too small a buffer: size reported, nothing past cap touched */
    memset(rec, 0xEE, sizeof rec);
    ck_assert_uint_eq(lathe_tb_encode_scalar_event(rec, 10, 1700000001.0, 1, "loss", 0.5f), 26);
    ck_assert_uint_eq(rec[10], 0xEE);
    ck_assert_uint_eq(lathe_tb_frame_record(rec, 20, ev, n), 42);
    ck_assert_uint_eq(rec[0], 0x09); /* untouched by the refused frame */
    size_t rn = lathe_tb_frame_record(rec, sizeof rec, ev, n);
    ck_assert_uint_eq(rn, wn);
    ck_assert_mem_eq(rec, want, wn);
}
END_TEST

START_TEST(test_tb_encode_fields)
{
    uint8_t buf[128];
    struct tb_event ev;
    /* step 0 is omitted (proto3), value 0 is kept (oneof presence) */
    size_t n = lathe_tb_encode_scalar_event(buf, sizeof buf, 5.0, 0, "x", 0.0f);
    decode_event(buf, n, &ev);
    ck_assert(!ev.has_step);
    ck_assert(ev.has_value);
    ck_assert(ev.value == 0.0f);
    ck_assert_str_eq(ev.tag, "x");
    /* multi-byte and negative steps */
    n = lathe_tb_encode_scalar_event(buf, sizeof buf, 5.0, 300, "x", -1.5f);
    decode_event(buf, n, &ev);
    ck_assert_int_eq(ev.step, 300);
    ck_assert(ev.value == -1.5f);
    n = lathe_tb_encode_scalar_event(buf, sizeof buf, 5.0, -2, "x", 1.0f);
    decode_event(buf, n, &ev);
    ck_assert_int_eq(ev.step, -2);
    ck_assert(ev.wall_time == 5.0);
}
END_TEST

START_TEST(test_tb_file_roundtrip)
{
    char dir[512], path[1024];
    tmp_path(dir, sizeof dir, "a/b/tb"); /* parents made as needed */
    struct lathe_tb *tb = NULL;
    time_t t0 = time(NULL);
    ck_assert_int_eq(lathe_tb_open(&tb, dir), LATHE_OK);
    ck_assert_ptr_nonnull(tb);
    const char *base = strrchr(lathe_tb_path(tb), '/') + 1;
    ck_assert_msg(strncmp(base, "events.out.tfevents.", 20) == 0, "%s", base);
    ck_assert(strstr(base, ".lathe") != NULL);

    char longtag[400];
    memset(longtag, 'k', sizeof longtag - 1); /* past the stack buffer */
    longtag[sizeof longtag - 1] = '\0';
    const int64_t steps[] = {0, 1, 2, 300, 1000000};
    for (size_t i = 0; i < 5; i++) {
        ck_assert_int_eq(lathe_tb_scalar(tb, steps[i], "train/loss", 3.0 - 0.25 * (double)i), 0);
        ck_assert_int_eq(lathe_tb_scalar(tb, steps[i], longtag, (double)i * 1e-4), 0);
    }
    ck_assert_int_eq(lathe_tb_flush(tb), 0);
    /* A second writer in the same second gets its own file. */
    struct lathe_tb *tb2 = NULL;
    ck_assert_int_eq(lathe_tb_open(&tb2, dir), LATHE_OK);
    ck_assert_str_ne(lathe_tb_path(tb), lathe_tb_path(tb2));
    snprintf(path, sizeof path, "%s", lathe_tb_path(tb));
    lathe_tb_close(tb);
    lathe_tb_close(tb2);

    struct tb_event ev[16];
    size_t n = read_tb_file(path, ev, 16);
    ck_assert_uint_eq(n, 11);
    ck_assert(ev[0].has_version);
    ck_assert_str_eq(ev[0].file_version, "brain.Event:2");
    ck_assert(ev[0].wall_time >= (double)t0 - 1 && ev[0].wall_time <= (double)time(NULL) + 1);
    for (size_t i = 0; i < 5; i++) {
        const struct tb_event *a = &ev[1 + 2 * i], *b = &ev[2 + 2 * i];
        ck_assert_int_eq(a->step, steps[i]);
        ck_assert_int_eq(a->has_step, steps[i] != 0);
        ck_assert_str_eq(a->tag, "train/loss");
        ck_assert(a->value == (float)(3.0 - 0.25 * (double)i));
        ck_assert(a->wall_time >= ev[0].wall_time);
        ck_assert_int_eq(b->step, steps[i]);
        ck_assert_str_eq(b->tag, longtag);
        ck_assert(b->value == (float)((double)i * 1e-4));
    }
}
END_TEST

/* ---- loggers ------------------------------------------------------------------- */
START_TEST(test_metrics_key)
{
    char k[32];
    ck_assert_int_eq(lathe_metrics_key(k, sizeof k, "train/loss"), 0);
    ck_assert_str_eq(k, "loss");
    ck_assert_int_eq(lathe_metrics_key(k, sizeof k, "train/grad_norm"), 0);
    ck_assert_str_eq(k, "grad_norm");
    ck_assert_int_eq(lathe_metrics_key(k, sizeof k, "train/tokens_per_s"), 0);
    ck_assert_str_eq(k, "tokens_per_s");
    ck_assert_int_eq(lathe_metrics_key(k, sizeof k, "eval/loss"), 0);
    ck_assert_str_eq(k, "eval_loss");
    ck_assert_int_eq(lathe_metrics_key(k, sizeof k, "eval/accuracy"), 0);
    ck_assert_str_eq(k, "eval_accuracy");
    ck_assert_int_eq(lathe_metrics_key(k, sizeof k, "lr"), 0);
    ck_assert_str_eq(k, "lr");
    ck_assert_int_eq(lathe_metrics_key(k, 4, "eval/loss"), LATHE_EINVAL);
}
END_TEST

static const char *const log_names[] = {"train/loss", "train/lr", "eval/loss", "train/grad_norm",
                                        "train/tokens_per_s"};

START_TEST(test_jsonl_logger)
{
    struct lathe_env env = {.size = sizeof env, .output_dir = tmpdir};
    const struct lathe_logger_ops *ops = &lathe_logger_jsonl;
    ck_assert_uint_eq(ops->size, sizeof *ops);
    double lr = 2e-4 * cos(0.3); /* a double that needs all 17 digits */
    double v1[] = {2.3456f, lr, NAN, 0.1, 1234.5};
    double v2[] = {2.25, lr / 3, 2.5, INFINITY, -1e-300};
    void *lg = NULL;
    ck_assert_int_eq(ops->create(NULL, &env, &lg), 0);
    ck_assert_int_eq(ops->scalars(lg, 1, log_names, v1, 5), 0);
    ck_assert_int_eq(ops->flush(lg), 0);
    ops->destroy(lg);
    /* a resumed run appends */
    ck_assert_int_eq(ops->create(NULL, &env, &lg), 0);
    ck_assert_int_eq(ops->scalars(lg, 2, log_names, v2, 5), 0);
    ck_assert_int_eq(ops->scalars(lg, 3, log_names, v2, 1), 0);
    ops->destroy(lg);

    char path[512];
    FILE *fp = fopen(tmp_path(path, sizeof path, "metrics.jsonl"), "r");
    ck_assert_ptr_nonnull(fp);
    char line[4096];
    const double *vals[] = {v1, v2, v2};
    const size_t counts[] = {5, 5, 1};
    const char *keys[] = {"loss", "lr", "eval_loss", "grad_norm", "tokens_per_s"};
    int nlines = 0;
    while (fgets(line, sizeof line, fp)) {
        ck_assert_int_lt(nlines, 3);
        ck_assert_msg(strncmp(line, "{\"step\":", 8) == 0, "line: %s", line);
        ck_assert(line[strlen(line) - 1] == '\n');
        json_error_t err;
        json_t *o = json_loads(line, 0, &err);
        ck_assert_msg(o != NULL, "line %d not JSON: %s", nlines + 1, err.text);
        ck_assert_uint_eq(json_object_size(o), counts[nlines] + 1);
        ck_assert_int_eq(json_integer_value(json_object_get(o, "step")), nlines + 1);
        for (size_t i = 0; i < counts[nlines]; i++) {
            json_t *v = json_object_get(o, keys[i]);
            ck_assert_msg(v != NULL, "line %d lacks %s", nlines + 1, keys[i]);
            double want = vals[nlines][i];
            if (isfinite(want)) {
                ck_assert_msg(json_is_real(v), "%s not a real", keys[i]);
                ck_assert_msg(json_real_value(v) == want, "%s: %.17g != %.17g", keys[i],
                              json_real_value(v), want);
            } else {
                ck_assert_msg(json_is_null(v), "%s: non-finite not null", keys[i]);
            }
        }
        json_decref(o);
        nlines++;
    }
    fclose(fp);
    ck_assert_int_eq(nlines, 3);
}
END_TEST

START_TEST(test_tb_logger)
{
    struct lathe_env env = {.size = sizeof env, .output_dir = tmpdir};
    const struct lathe_logger_ops *ops = &lathe_logger_tensorboard;
    double v[] = {2.5, 1e-3, 2.75, 0.5, 100.0};
    void *lg = NULL;
    ck_assert_int_eq(ops->create(NULL, &env, &lg), 0);
    ck_assert_int_eq(ops->scalars(lg, 7, log_names, v, 5), 0);
    /* already readable before destroy */
    char dir[512], path[1024];
    find_tb_file(tmp_path(dir, sizeof dir, "tb"), path, sizeof path);
    struct tb_event ev[8];
    ck_assert_uint_eq(read_tb_file(path, ev, 8), 6);
    ck_assert_int_eq(ops->flush(lg), 0);
    ops->destroy(lg);
    for (int i = 0; i < 5; i++) {
        ck_assert_str_eq(ev[1 + i].tag, log_names[i]);
        ck_assert_int_eq(ev[1 + i].step, 7);
        ck_assert(ev[1 + i].value == (float)v[i]);
    }
}
END_TEST

/* ---- safetensors ------------------------------------------------------------ */
static void fill(uint8_t *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (uint8_t)(seed >> 24);
    }
}

START_TEST(test_st_roundtrip)
{
    /* every lathe dtype; U8 of odd length leaves the later tensors unaligned,
     * which the reader must still hand out correctly */
    static const int64_t s_f32[] = {2, 3}, s_bf16[] = {4}, s_f16[] = {1, 2, 3}, s_i64[] = {3},
                         s_u8[] = {5}, s_i8[] = {2, 2, 2, 1, 1, 3}, s_zero[] = {2, 0};
    static const int64_t *shapes[] = {s_f32, s_bf16, s_f16, NULL, s_i64, s_u8, s_i8, s_zero};
    static const int ndims[] = {2, 1, 3, 0, 1, 1, 6, 2};
    static const enum lathe_dtype dts[] = {LATHE_F32, LATHE_BF16, LATHE_F16, LATHE_I32,
                                           LATHE_I64, LATHE_U8,   LATHE_I8,  LATHE_F32};
    static const size_t nbytes[] = {24, 8, 12, 4, 24, 5, 24, 0};
    const char *names[] = {"model.w", "b.bf16", "c.f16", "d.scalar_i32", "e.i64", "f.u8",
                           "g.i8", "h.empty"};
    enum { N = 8 };
    uint8_t data[N][32];
    struct lathe_st_entry e[N];
    for (int i = 0; i < N; i++) {
        fill(data[i], sizeof data[i], (uint32_t)i + 1);
        e[i] = (struct lathe_st_entry){names[i], dts[i], ndims[i], shapes[i], data[i]};
    }
    const char *meta[] = {"step", "42", "note", "h\xc3\xa9llo \"q\"", NULL};
    char path[512], tmpp[600];
    tmp_path(path, sizeof path, "m.safetensors");
    ck_assert_int_eq(lathe_st_write(path, e, N, meta), LATHE_OK);
    snprintf(tmpp, sizeof tmpp, "%s.tmp", path);
    ck_assert(!file_exists(tmpp));

    /* layout: N % 8 == 0, header starts with the metadata, pad is spaces */
    size_t flen;
    uint8_t *raw = read_bytes(path, &flen);
    uint64_t hn = le(raw, 8);
    ck_assert_uint_eq(hn % 8, 0);
    size_t total = 0;
    for (int i = 0; i < N; i++)
        total += nbytes[i];
    ck_assert_uint_eq(flen, 8 + hn + total);
    ck_assert(memcmp(raw + 8, "{\"__metadata__\":{\"format\":\"pt\",\"step\":\"42\"", 42) == 0);
    size_t hend = 8 + hn;
    while (raw[hend - 1] == ' ')
        hend--;
    ck_assert_uint_eq(raw[hend - 1], '}');
    ck_assert_uint_lt(8 + hn - hend, 8);
    /* tensors lie in the given order */
    size_t at = 8 + hn;
    for (int i = 0; i < N; i++) {
        ck_assert(memcmp(raw + at, data[i], nbytes[i]) == 0);
        at += nbytes[i];
    }
    free(raw);

    struct lathe_st_file *f = NULL;
    ck_assert_int_eq(lathe_st_open(&f, path), LATHE_OK);
    ck_assert_uint_eq(lathe_st_count(f), N);
    ck_assert_str_eq(lathe_st_metadata(f, "format"), "pt");
    ck_assert_str_eq(lathe_st_metadata(f, "step"), "42");
    ck_assert_str_eq(lathe_st_metadata(f, "note"), "h\xc3\xa9llo \"q\"");
    ck_assert_ptr_null(lathe_st_metadata(f, "absent"));
    for (int i = 0; i < N; i++) {
        struct lathe_st_info a, b;
        /* the empty tensor shares its offset with nothing after it, so the
         * offset order is the written order */
        ck_assert_int_eq(lathe_st_get(f, (size_t)i, &a), LATHE_OK);
        ck_assert_int_eq(lathe_st_find(f, names[i], &b), LATHE_OK);
        ck_assert(lathe_st_has(f, names[i]));
        ck_assert_str_eq(a.name, names[i]);
        ck_assert_ptr_eq(a.data, b.data);
        ck_assert_int_eq(a.dtype, dts[i]);
        ck_assert_int_eq(a.ndim, ndims[i]);
        for (int d = 0; d < ndims[i]; d++)
            ck_assert_int_eq(a.shape[d], shapes[i][d]);
        ck_assert_uint_eq(a.nbytes, nbytes[i]);
        ck_assert(memcmp(a.data, data[i], nbytes[i]) == 0);
    }
    ck_assert(!lathe_st_has(f, "nope"));
    lathe_st_close(f);

    /* rewriting replaces the file whole */
    e[0].data = data[1];
    ck_assert_int_eq(lathe_st_write(path, e, 1, NULL), LATHE_OK);
    ck_assert_int_eq(lathe_st_open(&f, path), LATHE_OK);
    ck_assert_uint_eq(lathe_st_count(f), 1);
    struct lathe_st_info a;
    ck_assert_int_eq(lathe_st_get(f, 0, &a), LATHE_OK);
    ck_assert(memcmp(a.data, data[1], 24) == 0);
    ck_assert_str_eq(lathe_st_metadata(f, "format"), "pt");
    ck_assert_ptr_null(lathe_st_metadata(f, "step"));
    lathe_st_close(f);

    /* no tensors at all is a valid file */
    ck_assert_int_eq(lathe_st_write(path, NULL, 0, NULL), LATHE_OK);
    ck_assert_int_eq(lathe_st_open(&f, path), LATHE_OK);
    ck_assert_uint_eq(lathe_st_count(f), 0);
    lathe_st_close(f);
}
END_TEST

/* Header text + data length -> a file at path. */
static void make_st(const char *path, const char *header, size_t datalen)
{
    size_t hn = strlen(header);
    uint8_t *buf = calloc(1, 8 + hn + datalen + 1);
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)((uint64_t)hn >> (8 * i));
    memcpy(buf + 8, header, hn);
    fill(buf + 8 + hn, datalen, 7);
    write_bytes(path, buf, 8 + hn + datalen);
    free(buf);
}

START_TEST(test_st_reference_example)
{
    char path[512];
    tmp_path(path, sizeof path, "ref.safetensors");
    /* formats.md §1.4: N = 60, no padding, no metadata */
    const char *h = "{\"test\":{\"dtype\":\"I32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";
    ck_assert_uint_eq(strlen(h), 60);
    make_st(path, h, 16);
    struct lathe_st_file *f;
    ck_assert_int_eq(lathe_st_open(&f, path), LATHE_OK);
    struct lathe_st_info a;
    ck_assert_int_eq(lathe_st_find(f, "test", &a), LATHE_OK);
    ck_assert_int_eq(a.dtype, LATHE_I32);
    ck_assert_int_eq(a.ndim, 2);
    ck_assert_int_eq(a.shape[0] * a.shape[1], 4);
    ck_assert_uint_eq(a.nbytes, 16);
    ck_assert_ptr_null(lathe_st_metadata(f, "format"));
    lathe_st_close(f);

    /* JSON whitespace around the object, and JSON order unlike offset order */
    make_st(path,
            " \n{\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[4,8]},"
            "\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}\r\t\n ",
            8);
    ck_assert_int_eq(lathe_st_open(&f, path), LATHE_OK);
    ck_assert_int_eq(lathe_st_get(f, 0, &a), LATHE_OK);
    ck_assert_str_eq(a.name, "a");
    ck_assert_int_eq(lathe_st_get(f, 1, &a), LATHE_OK);
    ck_assert_str_eq(a.name, "b");
    ck_assert_int_eq(lathe_st_get(f, 2, &a), LATHE_EINVAL);
    lathe_st_close(f);
}
END_TEST

START_TEST(test_st_unsupported_dtypes)
{
    char path[512];
    tmp_path(path, sizeof path, "mixed.safetensors");
    make_st(path,
            "{\"__metadata__\":{\"format\":\"pt\"},"
            "\"d\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]},"
            "\"q\":{\"dtype\":\"F8_E8M0\",\"shape\":[3],\"data_offsets\":[16,19]},"
            "\"m\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[19,20]},"
            "\"f4\":{\"dtype\":\"F4\",\"shape\":[2,3],\"data_offsets\":[20,23]},"
            "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[23,27]},"
            "\"x\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1],\"data_offsets\":[27,28]}}",
            28);
    struct lathe_st_file *f;
    ck_assert_int_eq(lathe_st_open(&f, path), LATHE_OK);
    ck_assert_uint_eq(lathe_st_count(f), 6);
    struct lathe_st_info a;
    ck_assert_int_eq(lathe_st_find(f, "w", &a), LATHE_OK);
    ck_assert_int_eq(a.dtype, LATHE_F32);
    const char *bad[][2] = {{"d", "F64"}, {"q", "F8_E8M0"}, {"m", "BOOL"}, {"f4", "F4"}};
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(lathe_st_find(f, bad[i][0], &a), LATHE_EUNSUPPORTED);
        ck_assert_str_eq(a.name, bad[i][0]);
        ck_assert_msg(strstr(lathe_errmsg(), bad[i][1]) && strstr(lathe_errmsg(), path), "%s",
                      lathe_errmsg());
    }
    ck_assert_int_eq(lathe_st_find(f, "x", &a), LATHE_EUNSUPPORTED);
    ck_assert_int_eq(lathe_st_find(f, "missing.weight", &a), LATHE_EINVAL);
    ck_assert(strstr(lathe_errmsg(), "missing.weight") && strstr(lathe_errmsg(), path));
    lathe_st_close(f);
}
END_TEST

/* ---- Limits: every reader rule, each an error that names the file ----------- */
static void expect_open_fails(const char *path, const char *needle)
{
    struct lathe_st_file *f = (struct lathe_st_file *)1;
    lathe_error_clear();
    int rc = lathe_st_open(&f, path);
    ck_assert_msg(rc != LATHE_OK, "%s opened but should not (%s)", path, needle);
    ck_assert_ptr_null(f);
    ck_assert_msg(strstr(lathe_errmsg(), path) != NULL, "message does not name the file: %s",
                  lathe_errmsg());
    if (needle)
        ck_assert_msg(strstr(lathe_errmsg(), needle) != NULL, "message lacks \"%s\": %s",
                      needle, lathe_errmsg());
}

static void expect_header_fails(const char *header, size_t datalen, const char *needle)
{
    char path[512];
    tmp_path(path, sizeof path, "bad.safetensors");
    make_st(path, header, datalen);
    expect_open_fails(path, needle);
}

#define T1(name, dtype, shape, b, e)                                                           \
    "\"" name "\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e  \
    "]}"

START_TEST(test_st_limits_size)
{
    char path[512];
    tmp_path(path, sizeof path, "short.safetensors");
    write_bytes(path, "", 0);
    expect_open_fails(path, "short");
    write_bytes(path, "\x10\0\0\0\0\0\0", 7);
    expect_open_fails(path, "short");
    /* header length past the limit, and a u64 that would overflow 8+N */
    uint8_t buf[64] = {0};
    uint64_t n = 100000001;
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)(n >> (8 * i));
    write_bytes(path, buf, sizeof buf);
    expect_open_fails(path, "limit");
    memset(buf, 0xFF, 8);
    write_bytes(path, buf, sizeof buf);
    expect_open_fails(path, "limit");
    /* within the limit but past the end */
    memset(buf, 0, 8);
    buf[0] = 57;
    memcpy(buf + 8, "{}", 2);
    write_bytes(path, buf, sizeof buf);
    expect_open_fails(path, "past the end");
    /* missing file, directory */
    tmp_path(path, sizeof path, "absent.safetensors");
    expect_open_fails(path, NULL);
    expect_open_fails(tmpdir, NULL);
}
END_TEST

START_TEST(test_st_limits_json)
{
    expect_header_fails("{\"a\":", 0, "JSON");
    expect_header_fails("", 0, "JSON");
    expect_header_fails("[1,2]", 0, "object");
    expect_header_fails("{} x", 0, "JSON");
    expect_header_fails("{\"a\":1}", 0, "a");
    expect_header_fails("{\"bad\xff\":{}}", 0, "JSON");                      /* not UTF-8 */
    expect_header_fails("{" T1("a", "F32", "[1]", 0, 4) "," T1("a", "F32", "[1]", 4, 8) "}", 8,
                        "JSON");                                              /* duplicate */
    expect_header_fails("{\"__metadata__\":[1]," T1("a", "U8", "[1]", 0, 1) "}", 1, "__metadata__");
    expect_header_fails("{\"__metadata__\":{\"k\":1}}", 0, "__metadata__");
    expect_header_fails("{\"__metadata__\":{\"k\":{\"n\":\"v\"}}}", 0, "__metadata__");
}
END_TEST

START_TEST(test_st_limits_entries)
{
    expect_header_fails("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype");
    expect_header_fails("{\"w\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype");
    expect_header_fails("{" T1("w", "F33", "[1]", 0, 4) "}", 4, "F33");
    expect_header_fails("{" T1("w", "f32", "[1]", 0, 4) "}", 4, "f32");
    expect_header_fails("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "shape");
    expect_header_fails("{" T1("w", "F32", "[-1]", 0, 4) "}", 4, "shape");
    expect_header_fails("{" T1("w", "F32", "[1.0]", 0, 4) "}", 4, "shape");
    expect_header_fails("{" T1("w", "F32", "\"1\"", 0, 4) "}", 4, "shape");
    expect_header_fails("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "data_offsets");
    expect_header_fails("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4,
                        "data_offsets");
    expect_header_fails("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8,
                        "data_offsets");
    expect_header_fails("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,\"4\"]}}",
                        4, "data_offsets");
    expect_header_fails("{" T1("w", "F32", "[1]", -4, 0) "}", 4, "data_offsets");
    expect_header_fails("{" T1("w", "F32", "[0]", 8, 4) "}", 8, "w");         /* begin > end */
    expect_header_fails("{" T1("w", "F32", "[2]", 0, 4) "}", 4, "needs 8");   /* wrong size */
    expect_header_fails("{" T1("w", "BF16", "[3]", 0, 8) "}", 8, "needs 6");
    expect_header_fails("{" T1("w", "F32", "[4294967296,4294967296,16]", 0, 4) "}", 4,
                        "overflow");
    expect_header_fails("{" T1("w", "F4", "[3]", 0, 1) "}", 1, "whole number of bytes");
}
END_TEST

START_TEST(test_st_limits_offsets)
{
    /* gap */
    expect_header_fails("{" T1("a", "F32", "[2]", 0, 8) "," T1("b", "F32", "[2]", 12, 20) "}", 20,
                        "gap");
    /* overlap */
    expect_header_fails("{" T1("a", "F32", "[2]", 0, 8) "," T1("b", "F32", "[2]", 4, 12) "}", 12,
                        "overlap");
    /* does not start at 0 */
    expect_header_fails("{" T1("a", "F32", "[2]", 4, 12) "}", 12, "a");
    /* past the end of the data (truncated file) */
    expect_header_fails("{" T1("a", "F32", "[4]", 0, 16) "}", 8, "past the end");
    expect_header_fails("{" T1("a", "F32", "[1]", 0, 4) "," T1("b", "F32", "[4]", 4, 20) "}", 12,
                        "b");
    /* trailing bytes not covered */
    expect_header_fails("{" T1("a", "F32", "[2]", 0, 8) "}", 12, "cover");
    expect_header_fails("{}", 4, "cover");
}
END_TEST

/* Every truncation of a valid file fails cleanly; random byte flips never
 * crash and, when a file still opens, every tensor lies inside it. */
START_TEST(test_st_limits_fuzz)
{
    char good[512], path[512];
    tmp_path(good, sizeof good, "good.safetensors");
    tmp_path(path, sizeof path, "fuzz.safetensors");
    uint8_t d[64];
    fill(d, sizeof d, 3);
    static const int64_t s1[] = {2, 2}, s2[] = {3};
    struct lathe_st_entry e[] = {{"a", LATHE_F32, 2, s1, d}, {"b", LATHE_U8, 1, s2, d + 16},
                                 {"c", LATHE_I64, 1, s2, d + 19}};
    const char *meta[] = {"k", "v", NULL};
    ck_assert_int_eq(lathe_st_write(good, e, 3, meta), LATHE_OK);
    size_t n;
    uint8_t *raw = read_bytes(good, &n);
    for (size_t len = 0; len < n; len++) {
        write_bytes(path, raw, len);
        expect_open_fails(path, NULL);
    }
    uint8_t *mut = malloc(n);
    uint32_t x = 99;
    for (int iter = 0; iter < 400; iter++) {
        memcpy(mut, raw, n);
        for (int k = 0; k < 1 + iter % 3; k++) {
            x = x * 1103515245u + 12345u;
            size_t pos = (x >> 8) % n;
            x = x * 1103515245u + 12345u;
            mut[pos] = (uint8_t)(x >> 16);
        }
        write_bytes(path, mut, n);
        struct lathe_st_file *f = NULL;
        if (lathe_st_open(&f, path) == LATHE_OK) {
            for (size_t i = 0; i < lathe_st_count(f); i++) {
                struct lathe_st_info a;
                lathe_st_get(f, i, &a);
                ck_assert_uint_le(a.nbytes, n);
                if (a.nbytes) {
                    volatile uint8_t sink = ((const uint8_t *)a.data)[a.nbytes - 1];
                    (void)sink;
                }
            }
            lathe_st_close(f);
        } else {
            ck_assert(strstr(lathe_errmsg(), path) != NULL);
        }
    }
    free(mut);
    free(raw);
}
END_TEST

START_TEST(test_st_limits_writer)
{
    char path[512], tmpp[600];
    tmp_path(path, sizeof path, "w.safetensors");
    snprintf(tmpp, sizeof tmpp, "%s.tmp", path);
    float d[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    static const int64_t s2[] = {2}, sneg[] = {-1}, s7[] = {1, 1, 1, 1, 1, 1, 1};
    struct lathe_st_entry ok = {"w", LATHE_F32, 1, s2, d};
    ck_assert_int_eq(lathe_st_write(path, &ok, 1, NULL), LATHE_OK);

    struct lathe_st_entry dup[] = {{"w", LATHE_F32, 1, s2, d}, {"v", LATHE_F32, 1, s2, d},
                                   {"w", LATHE_F32, 1, s2, d}};
    struct lathe_st_entry bad[] = {
        {"n", LATHE_F32, 1, sneg, d},          {"z", LATHE_F32, 1, s2, NULL},
        {"x", LATHE_F32, 7, s7, d},            {"__metadata__", LATHE_F32, 1, s2, d},
        {"", LATHE_F32, 1, s2, d},             {NULL, LATHE_F32, 1, s2, d},
        {"t", LATHE_DTYPE_COUNT, 1, s2, d},    {"u\xff", LATHE_F32, 1, s2, d},
        {"s", LATHE_F32, -1, s2, d},
    };
    ck_assert_int_eq(lathe_st_write(path, dup, 3, NULL), LATHE_EINVAL);
    ck_assert_msg(strstr(lathe_errmsg(), "w") && strstr(lathe_errmsg(), "more than once"), "%s",
                  lathe_errmsg());
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(lathe_st_write(path, &bad[i], 1, NULL) == LATHE_EINVAL, "entry %zu", i);
        ck_assert(strstr(lathe_errmsg(), path) != NULL);
    }
    const char *odd_meta[] = {"k", NULL};
    ck_assert_int_eq(lathe_st_write(path, &ok, 1, odd_meta), LATHE_EINVAL);
    const char *bad_meta[] = {"k", "\xff", NULL};
    ck_assert_int_eq(lathe_st_write(path, &ok, 1, bad_meta), LATHE_EINVAL);
    /* the earlier good file is untouched and no temporary is left */
    struct lathe_st_file *f;
    ck_assert_int_eq(lathe_st_open(&f, path), LATHE_OK);
    ck_assert_uint_eq(lathe_st_count(f), 1);
    lathe_st_close(f);
    ck_assert(!file_exists(tmpp));
    /* an unwritable place */
    tmp_path(path, sizeof path, "no/such/dir/w.safetensors");
    ck_assert_int_eq(lathe_st_write(path, &ok, 1, NULL), LATHE_EIO);
    ck_assert(strstr(lathe_errmsg(), "no/such/dir") != NULL);
}
END_TEST

START_TEST(test_io_limits_writers)
{
    char path[512];
    /* a TensorBoard directory whose parent is a file */
    tmp_path(path, sizeof path, "file");
    write_bytes(path, "x", 1);
    tmp_path(path, sizeof path, "file/tb");
    struct lathe_tb *tb = (struct lathe_tb *)1;
    ck_assert_int_ne(lathe_tb_open(&tb, path), LATHE_OK);
    ck_assert_ptr_null(tb);
    ck_assert(strstr(lathe_errmsg(), "file") != NULL);
    ck_assert_int_ne(lathe_tb_open(&tb, ""), LATHE_OK);
    /* empty tags are refused */
    ck_assert_int_eq(lathe_tb_open(&tb, tmp_path(path, sizeof path, "tb")), LATHE_OK);
    ck_assert_int_eq(lathe_tb_scalar(tb, 1, "", 1.0), LATHE_EINVAL);
    ck_assert_int_eq(lathe_tb_scalar(tb, 1, NULL, 1.0), LATHE_EINVAL);
    lathe_tb_close(tb);
    lathe_tb_close(NULL);
    /* loggers without a usable output directory */
    void *lg = (void *)1;
    struct lathe_env env = {.size = sizeof env, .output_dir = NULL};
    ck_assert_int_eq(lathe_logger_jsonl.create(NULL, &env, &lg), LATHE_EINVAL);
    ck_assert_ptr_null(lg);
    ck_assert_int_eq(lathe_logger_tensorboard.create(NULL, &env, &lg), LATHE_EINVAL);
    env.output_dir = tmp_path(path, sizeof path, "missing/dir");
    ck_assert_int_eq(lathe_logger_jsonl.create(NULL, &env, &lg), LATHE_EIO);
    ck_assert(strstr(lathe_errmsg(), "missing/dir/metrics.jsonl") != NULL);
    /* a nameless metric is an error, not a crash */
    env.output_dir = tmpdir;
    ck_assert_int_eq(lathe_logger_jsonl.create(NULL, &env, &lg), LATHE_OK);
    const char *names[] = {"train/loss", NULL};
    double v[] = {1.0, 2.0};
    ck_assert_int_eq(lathe_logger_jsonl.scalars(lg, 1, names, v, 2), LATHE_EINVAL);
    lathe_logger_jsonl.destroy(lg);
}
END_TEST

static Suite *io_suite(void)
{
    Suite *s = suite_create("io");
    TCase *core = tcase_create("Core");
    tcase_add_checked_fixture(core, tmp_setup, tmp_teardown);
    tcase_add_test(core, test_crc32c_vectors);
    tcase_add_test(core, test_crc32c_matches_bitwise);
    tcase_add_test(core, test_tb_golden_version);
    tcase_add_test(core, test_tb_golden_scalar);
    tcase_add_test(core, test_tb_encode_fields);
    tcase_add_test(core, test_tb_file_roundtrip);
    tcase_add_test(core, test_metrics_key);
    tcase_add_test(core, test_jsonl_logger);
    tcase_add_test(core, test_tb_logger);
    tcase_add_test(core, test_st_roundtrip);
    tcase_add_test(core, test_st_reference_example);
    tcase_add_test(core, test_st_unsupported_dtypes);
    suite_add_tcase(s, core);

    TCase *lim = tcase_create("Limits");
    tcase_add_checked_fixture(lim, tmp_setup, tmp_teardown);
    tcase_add_test(lim, test_st_limits_size);
    tcase_add_test(lim, test_st_limits_json);
    tcase_add_test(lim, test_st_limits_entries);
    tcase_add_test(lim, test_st_limits_offsets);
    tcase_add_test(lim, test_st_limits_fuzz);
    tcase_add_test(lim, test_st_limits_writer);
    tcase_add_test(lim, test_io_limits_writers);
    suite_add_tcase(s, lim);
    return s;
}

int main(void)
{
    return lathe_test_run(io_suite());
}
