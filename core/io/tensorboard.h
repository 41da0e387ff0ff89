/* core/io/tensorboard.h — TensorBoard event files (scalars only).
 *
 * An event file is a sequence of TFRecord frames, each holding one
 * serialized tensorflow.Event protobuf, hand-encoded here (formats.md §5).
 * The first record is Event{wall_time, file_version "brain.Event:2"}; each
 * scalar is Event{wall_time, step, summary{value{tag, simple_value}}}.
 *
 * The pure encoders follow snprintf's contract: they return the number of
 * bytes the encoding needs and write it only if that fits in cap (buf may be
 * NULL when cap is 0), so a caller can size a buffer with a first call. */
#ifndef LATHE_IO_TENSORBOARD_H
#define LATHE_IO_TENSORBOARD_H

#include <stddef.h>
#include <stdint.h>

#include <lathe/abi.h>

/* CRC-32C (Castagnoli) of n bytes: init/final XOR 0xFFFFFFFF, reflected. */
LATHE_EXPORT uint32_t lathe_crc32c(const void *p, size_t n);
/* The TFRecord mask of a CRC: rotate right 15, add 0xA282EAD8. */
LATHE_EXPORT uint32_t lathe_crc32c_mask(uint32_t crc);

/* Event{wall_time, file_version = "brain.Event:2"}. */
LATHE_EXPORT size_t lathe_tb_encode_version_event(uint8_t *buf, size_t cap, double wall_time);
/* Event{wall_time, step, summary{value{tag, simple_value}}}. Zero wall_time
 * and zero step are omitted (proto3); simple_value is always written since
 * it sits in a oneof, where presence is what tells TensorBoard it is a
 * scalar. */
LATHE_EXPORT size_t lathe_tb_encode_scalar_event(uint8_t *buf, size_t cap, double wall_time,
                                                 int64_t step, const char *tag, float value);
/* Frame n bytes of data as a TFRecord: u64 LE length, u32 LE masked CRC of
 * the length bytes, the data, u32 LE masked CRC of the data. Needs n + 16. */
LATHE_EXPORT size_t lathe_tb_frame_record(uint8_t *buf, size_t cap, const void *data, size_t n);

/* A writer for one event file. Not thread-safe. */
struct lathe_tb;

/* Create dir (with parents) and in it a new file
 * events.out.tfevents.{unix time %010d}.{hostname}.{pid}.lathe, and write the
 * file_version record. An existing file is never overwritten: a name that is
 * taken gets a numbered suffix. *out is NULL on failure. */
LATHE_EXPORT int lathe_tb_open(struct lathe_tb **out, const char *dir);
/* Append one scalar (stored as a float, as TensorBoard's simple_value is).
 * tag must be non-empty. Buffered until lathe_tb_flush or close. */
LATHE_EXPORT int lathe_tb_scalar(struct lathe_tb *tb, int64_t step, const char *tag, double value);
LATHE_EXPORT int lathe_tb_flush(struct lathe_tb *tb);
/* The event file's path; valid until close. */
LATHE_EXPORT const char *lathe_tb_path(const struct lathe_tb *tb);
/* Flush and close; NULL is a no-op. */
LATHE_EXPORT void lathe_tb_close(struct lathe_tb *tb);

#endif
