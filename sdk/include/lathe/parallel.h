/* lathe/parallel.h — communicators (LATHE_KIND_COMM) and parallel strategies
 * (LATHE_KIND_STRATEGY). A single process uses neither: the loop's built-in
 * behaviour is one rank holding everything. */
#ifndef LATHE_PARALLEL_H
#define LATHE_PARALLEL_H

#include "env.h"

#ifdef __cplusplus
extern "C" {
#endif

enum lathe_reduce_op { LATHE_REDUCE_SUM = 0, LATHE_REDUCE_AVG };

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
};

#ifdef __cplusplus
}
#endif
#endif
