/* plugins/cuda/optim.cu — sum of squares (to host), the fused AdamW update
 * and dtype conversion (lathe/backend.h; core/cpu/optim.c).
 *
 * AdamW is one pass over p, g, m, v per tensor (the per-tensor slot of ABI
 * 1.x); a multi-tensor launch over all parameters at once would need a new
 * slot taking lists. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <lathe/tensor.h>

#include "common.h"

extern "C" void lathe_cuda_sumsq(double *out, const float *x, int64_t n)
{
    *out = 0.0;
    CU_ENTER();
    if (n <= 0)
        return;
    /* a device double, read back once the reduction is done */
    double *d = (double *)lathe_cuda_alloc(sizeof(double));
    if (!d)
        return;
    lathe_cuda_reduce(NULL, d, x, n, 1);
    CU_CHECK(cudaMemcpyAsync(out, d, sizeof(double), cudaMemcpyDeviceToHost, lathe_cuda_stream()));
    CU_CHECK(cudaStreamSynchronize(lathe_cuda_stream()));
    lathe_cuda_free(d);
}

/* Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019),
 * with Kingma & Ba's moments, exactly as core/cpu/optim.c orders it. */
static __global__ void adamw_kernel(float *p, const float *g, float *m, float *v, int64_t n, float lr, float b1,
                                    float b2, float eps, float wd, float rbc1, float rbc2)
{
    const float ib1 = 1.0f - b1, ib2 = 1.0f - b2;
    LCU_GRID_STRIDE(i, n)
    {
        float gi = g[i];
        float mi = b1 * m[i] + ib1 * gi;
        float vi = b2 * v[i] + ib2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float mhat = mi * rbc1, vhat = vi * rbc2;
        p[i] -= lr * (mhat / (sqrtf(vhat) + eps) + wd * p[i]);
    }
}

extern "C" void lathe_cuda_adamw_step(float *p, const float *g, float *m, float *v, int64_t n, float lr, float b1,
                                      float b2, float eps, float wd, float bc1, float bc2)
{
    CU_ENTER();
    if (n <= 0)
        return;
    adamw_kernel<<<lcu_blocks(n), LCU_THREADS, 0, lathe_cuda_stream()>>>(p, g, m, v, n, lr, b1, b2, eps, wd,
                                                                        1.0f / bc1, 1.0f / bc2);
    CU_LAUNCHED("adamw_kernel");
}

/* Round-to-nearest-even conversions through f32 (cuda_bf16.h, cuda_fp16.h). */
static __device__ __forceinline__ float load_as_f32(const void *src, int dt, int64_t i)
{
    if (dt == LATHE_BF16)
        return __bfloat162float(((const __nv_bfloat16 *)src)[i]);
    if (dt == LATHE_F16)
        return __half2float(((const __half *)src)[i]);
    return ((const float *)src)[i];
}

static __global__ void convert_kernel(void *dst, int ddt, const void *src, int sdt, int64_t n)
{
    LCU_GRID_STRIDE(i, n)
    {
        float f = load_as_f32(src, sdt, i);
        if (ddt == LATHE_BF16)
            ((__nv_bfloat16 *)dst)[i] = __float2bfloat16_rn(f);
        else if (ddt == LATHE_F16)
            ((__half *)dst)[i] = __float2half_rn(f);
        else
            ((float *)dst)[i] = f;
    }
}

static int float_type(int dt) { return dt == LATHE_F32 || dt == LATHE_BF16 || dt == LATHE_F16; }

extern "C" void lathe_cuda_convert(void *dst, int dst_dtype, const void *src, int src_dtype, int64_t n)
{
    CU_ENTER();
    if (n <= 0)
        return;
    if (dst_dtype == src_dtype) {
        CU_CHECK(cudaMemcpyAsync(dst, src, lathe_dtype_size((enum lathe_dtype)src_dtype) * (size_t)n,
                                 cudaMemcpyDeviceToDevice, lathe_cuda_stream()));
        return;
    }
    if (!float_type(dst_dtype) || !float_type(src_dtype)) {
        lathe_cuda_fail(__FILE__, __LINE__, "convert: %s to %s is not a conversion between f32, bf16 and f16",
                        lathe_dtype_name((enum lathe_dtype)src_dtype), lathe_dtype_name((enum lathe_dtype)dst_dtype));
        return;
    }
    convert_kernel<<<lcu_blocks(n), LCU_THREADS, 0, lathe_cuda_stream()>>>(dst, dst_dtype, src, src_dtype, n);
    CU_LAUNCHED("convert_kernel");
}
