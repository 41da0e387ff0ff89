/* lathe/rng.h — a small seeded generator whose whole state can be saved.
 *
 * xoshiro256** (Blackman & Vigna, 2018), seeded through splitmix64. Every
 * random choice of a run (initialisation, dropout, shuffling) draws from a
 * lathe_rng, so a run is a pure function of its seed and checkpoints can
 * restore the exact stream. */
#ifndef LATHE_RNG_H
#define LATHE_RNG_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lathe_rng {
    uint64_t s[4];
} lathe_rng;

void lathe_rng_seed(lathe_rng *r, uint64_t seed);
uint64_t lathe_rng_u64(lathe_rng *r);
/* Uniform in [0, 1). */
double lathe_rng_uniform(lathe_rng *r);
/* Uniform integer in [0, n); n > 0. */
uint64_t lathe_rng_below(lathe_rng *r, uint64_t n);
/* Standard normal (Box–Muller). */
double lathe_rng_normal(lathe_rng *r);

/* The run's generator (dropout and anything else drawn during a step). The
 * training loop seeds it from [run] seed and saves it in checkpoints. */
lathe_rng *lathe_rng_global(void);

#ifdef __cplusplus
}
#endif
#endif
