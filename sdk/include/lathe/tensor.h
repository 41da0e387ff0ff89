/* lathe/tensor.h — tensors, scopes and autograd bookkeeping.
 *
 * A tensor is a dtype, a shape (row-major, up to LATHE_MAX_DIMS dims), and a
 * buffer on a device. Compute is f32; bf16 and f16 are storage types that
 * convert to and from f32 (lathe_tensor_to_dtype).
 *
 * Ownership
 *  - A tensor made while a scope is open (lathe_scope_push) belongs to that
 *    scope and is freed by the matching lathe_scope_pop, with its gradient
 *    and the autograd records that mention it. Op results are made this way.
 *  - A tensor made while no scope is open belongs to the caller, who frees it
 *    with lathe_tensor_free (parameters are made this way, by models).
 *  - A view (lathe_reshape of a contiguous tensor) shares its base's buffer
 *    and must not outlive it.
 *  - t->grad belongs to t and is freed with it.
 */
#ifndef LATHE_TENSOR_H
#define LATHE_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LATHE_MAX_DIMS 6
#define LATHE_NAME_MAX 128

enum lathe_dtype {
    LATHE_F32 = 0,
    LATHE_BF16,
    LATHE_F16,
    LATHE_I32,
    LATHE_I64,
    LATHE_U8,
    LATHE_I8,
    /* ABI 1.1: 8-bit floats (OCP FP8, as torch.float8_e4m3fn / e5m2),
     * storage only, e.g. DeepSeek-V3's released weights */
    LATHE_F8_E4M3,
    LATHE_F8_E5M2,
    LATHE_DTYPE_COUNT
};

enum lathe_device {
    LATHE_DEVICE_CPU = 0,
    LATHE_DEVICE_CUDA,
    LATHE_DEVICE_COUNT
};

/* Flags (lathe_tensor.flags); core-maintained, read-only for plugins. */
#define LATHE_TENSOR_OWNS_DATA 0x1u /* buffer freed with the tensor */
#define LATHE_TENSOR_SCOPED 0x2u    /* freed by the scope that made it */
#define LATHE_TENSOR_PARAM 0x4u     /* a trainable leaf (lathe_param_new) */

typedef struct lathe_tensor lathe_tensor;

struct lathe_tensor {
    enum lathe_dtype dtype;
    enum lathe_device device;
    int ndim;
    int64_t shape[LATHE_MAX_DIMS];
    int64_t stride[LATHE_MAX_DIMS]; /* in elements; row-major contiguous
                                       unless a view says otherwise */
    void *data;                     /* device buffer, numel * dtype size */
    lathe_tensor *grad;             /* f32, same shape; NULL until backward */
    int requires_grad;              /* trainable leaf, or made from one */
    unsigned flags;                 /* LATHE_TENSOR_* */
    void *node;                     /* core-private: autograd record */
    lathe_tensor *base;             /* view: whose buffer this is */
    char name[LATHE_NAME_MAX];      /* parameter name ("h.0.attn.c_attn.weight") */
};

size_t lathe_dtype_size(enum lathe_dtype dt);
/* "F32", "BF16", "F16", "I32", "I64", "U8", "I8", "F8_E4M3", "F8_E5M2"
 * (the safetensors names). */
const char *lathe_dtype_name(enum lathe_dtype dt);
/* Parse a safetensors dtype name; returns LATHE_EINVAL if unknown. */
int lathe_dtype_parse(const char *name, enum lathe_dtype *out);

/* New zero-filled tensor on the current backend's device. NULL (with a
 * message) on bad shape or out of memory. Scoped if a scope is open. */
lathe_tensor *lathe_tensor_new(enum lathe_dtype dt, int ndim, const int64_t *shape);
/* Shorthands for 1- to 4-dim tensors. */
lathe_tensor *lathe_tensor_new1(enum lathe_dtype dt, int64_t d0);
lathe_tensor *lathe_tensor_new2(enum lathe_dtype dt, int64_t d0, int64_t d1);
lathe_tensor *lathe_tensor_new3(enum lathe_dtype dt, int64_t d0, int64_t d1, int64_t d2);
lathe_tensor *lathe_tensor_new4(enum lathe_dtype dt, int64_t d0, int64_t d1, int64_t d2, int64_t d3);
/* Like lathe_tensor_new, but caller-owned even inside a scope (state a
 * component keeps across steps, e.g. cached rollouts). */
lathe_tensor *lathe_tensor_new_owned(enum lathe_dtype dt, int ndim, const int64_t *shape);
/* Frees a caller-owned tensor (and its grad). Scoped tensors: no-op. */
void lathe_tensor_free(lathe_tensor *t);

int64_t lathe_tensor_numel(const lathe_tensor *t);
size_t lathe_tensor_nbytes(const lathe_tensor *t);
int lathe_tensor_is_contiguous(const lathe_tensor *t);
/* Same dims and shape. */
int lathe_tensor_same_shape(const lathe_tensor *a, const lathe_tensor *b);
/* "[4, 64, 768]" into buf (for messages). */
const char *lathe_tensor_shape_str(const lathe_tensor *t, char *buf, size_t n);
/* Typed data pointers; NULL if the dtype differs. */
float *lathe_tensor_f32(const lathe_tensor *t);
int32_t *lathe_tensor_i32(const lathe_tensor *t);

/* A new tensor holding t converted to dt (f32 <-> bf16 <-> f16; ints to and
 * from f32). Not recorded for autograd. */
lathe_tensor *lathe_tensor_to_dtype(const lathe_tensor *t, enum lathe_dtype dt);
/* Convert a caller-owned tensor's storage to dt in place (e.g. a frozen
 * weight to BF16 to halve its memory). Not for scoped tensors or tensors
 * that require grad. */
int lathe_tensor_set_dtype(lathe_tensor *t, enum lathe_dtype dt);
/* Copy src into dst (same numel; dtypes converted). */
int lathe_tensor_copy(lathe_tensor *dst, const lathe_tensor *src);

/* Scalar conversions (round to nearest even). */
uint16_t lathe_f32_to_bf16(float f);
float lathe_bf16_to_f32(uint16_t h);
uint16_t lathe_f32_to_f16(float f);
float lathe_f16_to_f32(uint16_t h);
/* FP8 (OCP): E4M3 "fn" has no infinities, its one NaN code per sign is
 * 0x7F/0xFF and its largest value 448; E5M2 follows IEEE (max 57344, inf).
 * From f32: round to nearest even; beyond the range E4M3 gives NaN and
 * E5M2 infinity (torch's casts do the same). */
uint8_t lathe_f32_to_f8e4m3(float f);
float lathe_f8e4m3_to_f32(uint8_t v);
uint8_t lathe_f32_to_f8e5m2(float f);
float lathe_f8e5m2_to_f32(uint8_t v);
/* Bulk conversions between f32 and a storage dtype (bf16/f16/f8/f32). */
void lathe_convert_to_f32(float *dst, const void *src, enum lathe_dtype src_dt, size_t n);
void lathe_convert_from_f32(void *dst, enum lathe_dtype dst_dt, const float *src, size_t n);

/* A trainable parameter: caller-owned, f32, requires_grad, named. */
lathe_tensor *lathe_param_new(const char *name, int ndim, const int64_t *shape);

/* Scopes nest. push returns the depth; pop frees everything made since the
 * matching push, and the autograd records made within it. */
int lathe_scope_push(void);
void lathe_scope_pop(void);

/* Inside a no_grad region ops record nothing for backward. Regions nest. */
void lathe_no_grad_begin(void);
void lathe_no_grad_end(void);
int lathe_grad_enabled(void);

/* ABI 1.2: mixed precision. The compute dtype (LATHE_F32, the default, or
 * LATHE_BF16 / LATHE_F16) is the precision of matrix products: their
 * operands are rounded to it and products summed in f32 (autocast's
 * policy: norms, softmax, losses and element-wise ops stay f32, and every
 * tensor is still stored in f32 — activations are not halved). Parameters
 * stay f32 and are the master weights. Set by the training loop from
 * [run] precision. */
int lathe_set_compute_dtype(enum lathe_dtype dt);
enum lathe_dtype lathe_compute_dtype(void);

/* Reverse-mode pass from a scalar (numel 1) f32 tensor: seeds d(loss)=scale
 * and accumulates (+=) into the grad of every tensor that requires grad,
 * parameters included. Records stay until the scope pops. */
int lathe_backward(lathe_tensor *loss, float scale);

/* The gradient buffer of t, made (zeroed) if missing. */
lathe_tensor *lathe_tensor_grad(lathe_tensor *t);
/* Zero t->grad if present. */
void lathe_tensor_zero_grad(lathe_tensor *t);

#ifdef __cplusplus
}
#endif
#endif
