/* core/gen/generate.h — internal helpers of the sampler, exposed for tests. */
#ifndef LATHE_CORE_GENERATE_H
#define LATHE_CORE_GENERATE_H

#include <lathe/generate.h>

/* Pick a token from logits[V] as s says (greedy when temperature is 0):
 * temperature, then top-k, then top-p (nucleus: the smallest set of tokens
 * whose probability reaches top_p). work: scratch of 2*V floats. */
int32_t lathe_sample_token(const float *logits, int64_t V, const struct lathe_sampling *s, lathe_rng *rng,
                           float *work);

#endif
