/* lathe/parallel.h — communicators (LATHE_KIND_COMM) and parallel strategies
 * (LATHE_KIND_STRATEGY). A single process uses neither: the loop's built-in
 * behaviour is one rank holding everything. */
#ifndef LATHE_PARALLEL_H
#define LATHE_PARALLEL_H

#include "env.h"
#include "optim.h"
#include "segment.h"

#ifdef __cplusplus
extern "C" {
#endif

enum lathe_reduce_op { LATHE_REDUCE_SUM = 0, LATHE_REDUCE_AVG };

/* Buffers passed to a communicator are in the run's memory (the current
 * backend's: device memory under CUDA). A communicator that needs host
 * memory (mpi) stages them itself; one that reads device memory (nccl)
 * uses them directly. */
struct lathe_comm_ops {
    uint32_t size;
    int (*create)(lathe_section *cfg, const struct lathe_env *env, void **self);
    void (*destroy)(void *self);
    int (*rank)(void *self);
    int (*world_size)(void *self);
    /* In place on `count` elements of dtype (enum lathe_dtype: F32, BF16). */
    int (*all_reduce)(void *self, void *buf, int64_t count, int dtype, int op);
    /* send [count * world], recv [count]: rank r gets block r reduced. */
    int (*reduce_scatter)(void *self, const void *send, void *recv, int64_t count, int dtype, int op);
    /* send [count], recv [count * world] */
    int (*all_gather)(void *self, const void *send, void *recv, int64_t count, int dtype);
    int (*broadcast)(void *self, void *buf, int64_t count, int dtype, int root);
    /* Uneven all-to-all: element counts and displacements per peer. */
    int (*all_to_all)(void *self, const void *send, const int64_t *send_counts,
                      const int64_t *send_displs, void *recv, const int64_t *recv_counts,
                      const int64_t *recv_displs, int dtype);
    int (*barrier)(void *self);

    /* ---- ABI 1.2 ---- */
    /* Sub-groups: ranks passing the same color form a new communicator
     * (ordered by key, then by rank) served by these same ops; *sub is
     * destroyed with destroy. Every rank of self must call it. color -1:
     * this rank joins no group and *sub = NULL; other negative colors are
     * refused. */
    int (*split)(void *self, int color, int key, void **sub);
};

struct lathe_strategy_ops {
    uint32_t size;
    /* params: trainable parameters; comm: the run's communicator ops and
     * instance (borrowed). */
    int (*create)(lathe_section *cfg, const struct lathe_env *env,
                  const struct lathe_comm_ops *comm, void *comm_self,
                  lathe_tensor *const *params, size_t n, void **self);
    void (*destroy)(void *self);
    /* After backward: make every rank's grads the global mean (or the shard
     * each rank owns). */
    int (*reduce_grads)(void *self);
    /* After the optimizer step: make parameters whole where sharded. */
    int (*sync_params)(void *self);

    /* ---- ABI 1.1 ---- */
    /* The tensors this rank's optimizer updates, each with its grad set
     * after reduce_grads: the parameters themselves (ddp), or views of the
     * shard this rank owns (zero). Owned by the strategy; valid until
     * destroy. The optimizer is created over exactly these. */
    int (*optim_params)(void *self, lathe_tensor *const **params, size_t *n);
    /* optional: the squared norm of the whole (global) gradient after
     * reduce_grads, the same on every rank. NULL: the loop sums the grads of
     * optim_params itself (right when every rank holds all of them). */
    int (*grad_sumsq)(void *self, double *out);
    /* optional: save / load the optimizer state of this rank into the
     * checkpoint directory `dir` (every rank calls it; files of its own
     * naming plus whatever manifest lets a run with another number of
     * processes load it). NULL: rank 0's optimizer state_save is used. */
    int (*state_save)(void *self, const struct lathe_optim_ops *optim, void *optim_self, const char *dir);
    int (*state_load)(void *self, const struct lathe_optim_ops *optim, void *optim_self, const char *dir);
    /* optional: bytes this rank holds of parameters, gradients and optimizer
     * state (reported in the log). */
    int (*memory)(void *self, size_t *param_bytes, size_t *grad_bytes, size_t *optim_bytes);

    /* ---- ABI 1.2: per-segment parameter management (lathe/segment.h) ----
     * optional: installed as the run's segment hooks. acquire makes the
     * segment's parameters whole before use (forward and backward);
     * release frees what acquire made once they are no longer read
     * (backward = 1: after the segment's backward, its gradients are
     * complete for this micro-batch). The model's segments are in
     * env->model_ops->segments. */
    int (*acquire)(void *self, const struct lathe_segment *seg);
    int (*release)(void *self, const struct lathe_segment *seg, int backward);

    /* ---- ABI 1.2: where the optimizer runs ----
     * optional: the device (enum lathe_device) whose memory holds the
     * tensors optim_params hands out (data and grad), and so where the
     * optimizer keeps its state and steps. NULL, or the run's device: the
     * run's backend, as before. LATHE_DEVICE_CPU on a device run (ZeRO
     * cpu_offload): the core makes the CPU backend current around all it
     * does with optim_params and the optimizer (create, the gradient norm
     * when grad_sumsq is NULL, clipping and fp16 unscaling, step, zeroing
     * the grads) and around state_save / state_load, so that a strategy
     * reaches its own device buffers there through the backend it was
     * created under, never through lathe_backend(). Its other slots
     * (reduce_grads, grad_sumsq, sync_params, acquire, release) are called
     * with the run's backend current, as the communicator needs. Any other
     * device is refused. */
    int (*optim_device)(void *self);
};

#ifdef __cplusplus
}
#endif
#endif
