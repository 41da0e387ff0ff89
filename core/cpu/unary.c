/* core/cpu/unary.c — elementwise unary functions and their derivatives
 * (n elements; backward accumulates). */
#include <math.h>

#include "cpu/cpu.h"

#define PAR _Pragma("omp parallel for schedule(static) if (n > 32768)")

void lathe_cpu_unary_forward(int op, float *restrict out, const float *restrict x, int64_t n, float a, float b)
{
    switch (op) {
    case LATHE_UNARY_EXP:
        PAR for (int64_t i = 0; i < n; i++) out[i] = expf(x[i]);
        break;
    case LATHE_UNARY_LOG:
        PAR for (int64_t i = 0; i < n; i++) out[i] = logf(x[i]);
        break;
    case LATHE_UNARY_RELU:
        PAR for (int64_t i = 0; i < n; i++) out[i] = x[i] > 0.0f ? x[i] : 0.0f;
        break;
    case LATHE_UNARY_CLAMP:
        PAR for (int64_t i = 0; i < n; i++) out[i] = x[i] < a ? a : (x[i] > b ? b : x[i]);
        break;
    case LATHE_UNARY_LOG_SIGMOID:
        /* log σ(x) = min(x, 0) - log1p(e^-|x|): no overflow either side */
        PAR for (int64_t i = 0; i < n; i++) out[i] = fminf(x[i], 0.0f) - log1pf(expf(-fabsf(x[i])));
        break;
    default: break;
    }
}

void lathe_cpu_unary_backward(int op, float *restrict dx, const float *restrict dout, const float *restrict x,
                              const float *restrict out, int64_t n, float a, float b)
{
    switch (op) {
    case LATHE_UNARY_EXP:
        PAR for (int64_t i = 0; i < n; i++) dx[i] += dout[i] * out[i];
        break;
    case LATHE_UNARY_LOG:
        PAR for (int64_t i = 0; i < n; i++) dx[i] += dout[i] / x[i];
        break;
    case LATHE_UNARY_RELU:
        PAR for (int64_t i = 0; i < n; i++) dx[i] += x[i] > 0.0f ? dout[i] : 0.0f;
        break;
    case LATHE_UNARY_CLAMP:
        PAR for (int64_t i = 0; i < n; i++) dx[i] += (x[i] >= a && x[i] <= b) ? dout[i] : 0.0f;
        break;
    case LATHE_UNARY_LOG_SIGMOID:
        /* d/dx log σ(x) = σ(-x) = 1 - e^{log σ(x)} */
        PAR for (int64_t i = 0; i < n; i++) dx[i] += dout[i] * (1.0f - expf(out[i]));
        break;
    default: break;
    }
}
