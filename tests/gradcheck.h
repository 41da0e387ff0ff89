/* tests/gradcheck.h — central finite differences against lathe_backward.
 *
 * The loss is L = sum_i out[i] * w[i] with fixed pseudo-random weights w, so
 * every output element matters. For every input that requires grad, each
 * element is nudged by ±eps and (L+ - L-)/(2 eps) (summed in double) is
 * compared with the analytic gradient: |num - ana| <= tol * max(1, |num|, |ana|).
 */
#ifndef LATHE_GRADCHECK_H
#define LATHE_GRADCHECK_H

#include <lathe/lathe.h>
#include <stddef.h>

/* Builds the op's output from the inputs; called inside a scope, many times. */
typedef lathe_tensor *(*lathe_gc_fn)(lathe_tensor *const *inputs, void *ctx);

/* Returns 0 when every checked element agrees; otherwise 1 and a description
 * of the worst element in msg. Inputs must be caller-owned f32 tensors
 * (lathe_param_new, or lathe_tensor_new outside any scope); those with
 * requires_grad are checked. */
int lathe_gradcheck(lathe_gc_fn f, lathe_tensor *const *inputs, int n, void *ctx, double eps,
                    double tol, char *msg, size_t msgn);

/* A caller-owned tensor filled with uniform values in [lo, hi) from seed;
 * requires_grad as given (f32). */
lathe_tensor *lathe_gc_rand(int ndim, const int64_t *shape, float lo, float hi, uint64_t seed,
                            int requires_grad);

#endif
