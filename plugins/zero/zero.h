/* plugins/zero/zero.h — what the ZeRO strategy (zero.c) and its checkpoint
 * code (checkpoint.c) share. The design is in zero.c's file comment. */
#ifndef LATHE_PLUGIN_ZERO_H
#define LATHE_PLUGIN_ZERO_H

#include <lathe/lathe.h>

/* How the Ψ trainable elements are split among the ranks. */
enum zero_layout {
    /* The parameters laid end to end in one flat space of P elements; rank
     * r owns [r·P/N, (r+1)·P/N) (a parameter may straddle ranks). */
    ZERO_FLAT = 0,
    /* Every parameter split on its own: rank r owns elements
     * [r·n/N, (r+1)·n/N) of each parameter of n elements (DeepSpeed's
     * stage-3 partition), so that any set of parameters (one layer) is
     * gathered and reduce-scattered in balanced collectives. */
    ZERO_PER_PARAM,
};

/* This rank's piece of one parameter: the optimizer sees one view per
 * piece. */
struct piece {
    size_t param;  /* index into params */
    int64_t poff;  /* offset inside the parameter */
    int64_t len;
    int64_t soff;  /* offset inside this rank's gradient shard */
};

/* Parameters moved together: rank r's share of the group is the
 * concatenation, in parameter order, of what r owns of each. */
struct zgroup {
    size_t *idx;     /* parameter indices, ascending */
    size_t n;
    int64_t width;   /* the largest rank's share: the collective's block */
    int64_t numel;   /* elements of all the group's parameters */
    const struct lathe_segment *seg; /* the model's segment, or NULL */
    int live;        /* acquire depth: > 0 while the buffers are whole */
};

struct zero {
    const struct lathe_comm_ops *co;
    void *cs;
    /* the run's backend, current at create: every buffer of this plugin
     * but the host shard copies is its memory, reached through it even
     * while the core has the CPU backend current for the optimizer */
    const struct lathe_backend_ops *be;
    int rank, world, stage, offload, device;
    /* cpu_offload on a device run: the optimizer's views are over hparam
     * and hgrad, host copies of this rank's shard ([mine] each) */
    int host;
    float *hparam, *hgrad;
    enum zero_layout layout;
    int gather;                  /* [parallel] gather: auto, segment, model */
    int per_segment;             /* stage 3 gathering per model segment */
    lathe_tensor *const *params; /* borrowed from the core */
    size_t n;
    int64_t *off;                /* [n+1] flat offset of each parameter */
    int64_t *soff;               /* [n+1] offset of each parameter's piece in shard_grad */
    int64_t *psoff;              /* [n] ... in shard_param (sharded parameters; -1 others) */
    unsigned char *sharded;      /* [n] 1: the whole buffer exists only while gathered */
    int64_t mine, pmine;         /* elements of shard_grad, of shard_param */
    int64_t bucket;              /* elements per rank per collective call */
    float *big, *small;          /* staging (backend memory): [world * bucket], [bucket] */
    float *norm;                 /* [2] (backend memory): the gradient norm's all-reduce */
    float *shard_grad;           /* [mine] */
    float *shard_param;          /* stage 3: [pmine], the persistent copy */
    int gathered;                /* whole-model stage 3: whole parameters are present */
    struct zgroup all;           /* every parameter */
    struct zgroup persist;       /* per-segment stage 3: those in no segment */
    struct zgroup *segs;         /* per-segment stage 3: one per model segment */
    size_t nsegs;
    size_t hint;                 /* the segment acquired last (lookup start) */
    struct piece *pieces;
    lathe_tensor **views, **vgrads;
    size_t nviews;
    /* per-segment counters, reported in the metrics at each reduce_grads */
    int64_t gathers;             /* segment all-gathers since the last report */
    int64_t gather_elems;
    size_t live_bytes, peak_bytes; /* whole or shard parameter bytes held now, at most */
};

#define TOTAL(z) ((z)->off[(z)->n])

/* First element of parameter i that rank r owns (r = world: its end). */
int64_t zero_own_lo(const struct zero *z, size_t i, int r);
static inline int64_t zero_own_len(const struct zero *z, size_t i, int r)
{
    return zero_own_lo(z, i, r + 1) - zero_own_lo(z, i, r);
}

/* checkpoint.c: the strategy's state_save / state_load slots. */
int zero_state_save(void *self, const struct lathe_optim_ops *optim, void *optim_self, const char *dir);
int zero_state_load(void *self, const struct lathe_optim_ops *optim, void *optim_self, const char *dir);
/* zero.c: refresh this rank's shard of the sharded parameters from their
 * whole buffers, where they are present (after the core loaded them), and
 * under cpu_offload on a device the host copy of the whole shard. */
int zero_refresh_shard(struct zero *z);

#endif
