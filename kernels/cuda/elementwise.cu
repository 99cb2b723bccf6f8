/* elementwise.cu — add, mul, scale, axpy, fill, copy, dtype casts and the sum / mean / max-abs
 * reductions on CUDA: one grid-stride map per op (own kernels), casts through the bf16/f16
 * conversions of common/lm_kmath.h, sums in double through the fixed-chunk reduction of
 * cuda.cuh. The scalar results stay on the device (out is a buffer).
 * Not here: activations (act.cu), losses (loss.cu).
 */
#include "cuda.cuh"

namespace lm_cu_ew
{

struct add_f {
    float *y;
    const float *a, *b;
    __device__ void operator()(int64_t i) const { y[i] = a[i] + b[i]; }
};
struct mul_f {
    float *y;
    const float *a, *b;
    __device__ void operator()(int64_t i) const { y[i] = a[i] * b[i]; }
};
struct scale_f {
    float *y;
    const float *x;
    float alpha;
    __device__ void operator()(int64_t i) const { y[i] = alpha * x[i]; }
};
struct axpy_f {
    float *y;
    const float *x;
    float alpha;
    /* __fmul_rn/__fadd_rn: no contraction into an fma, so the rounding is the CPU's */
    __device__ void operator()(int64_t i) const { y[i] = __fadd_rn(y[i], __fmul_rn(alpha, x[i])); }
};
struct fill_f {
    float *y;
    float v;
    __device__ void operator()(int64_t i) const { y[i] = v; }
};

__device__ inline double load(const void *x, lm_dtype t, int64_t i)
{
    switch (t) {
    case LM_F32: return ((const float *)x)[i];
    case LM_BF16: return lm_k_bf16_to_f32(((const uint16_t *)x)[i]);
    case LM_F16: return lm_k_f16_to_f32(((const uint16_t *)x)[i]);
    case LM_I32: return ((const int32_t *)x)[i];
    default: return ((const uint8_t *)x)[i];
    }
}

__device__ inline double sat_round(double v, double lo, double hi)
{
    if (isnan(v))
        return 0;
    v = lm_k_round_even(v);
    return v < lo ? lo : v > hi ? hi : v;
}

__device__ inline void store(void *y, lm_dtype t, int64_t i, double v)
{
    switch (t) {
    case LM_F32: ((float *)y)[i] = (float)v; break;
    case LM_BF16: ((uint16_t *)y)[i] = lm_k_f32_to_bf16((float)v); break;
    case LM_F16: ((uint16_t *)y)[i] = lm_k_f32_to_f16((float)v); break;
    case LM_I32: ((int32_t *)y)[i] = (int32_t)sat_round(v, -2147483648.0, 2147483647.0); break;
    default: ((uint8_t *)y)[i] = (uint8_t)sat_round(v, 0, 255); break;
    }
}

struct cast_f {
    void *y;
    const void *x;
    lm_dtype yt, xt;
    __device__ void operator()(int64_t i) const { store(y, yt, i, load(x, xt, i)); }
};

struct sum_r {
    const float *x;
    __device__ void operator()(int64_t, int64_t i, double (&acc)[1]) const { acc[0] += x[i]; }
};

__global__ void finish_kernel(float *out, const double *s, double div)
{
    if (threadIdx.x == 0 && blockIdx.x == 0)
        out[0] = (float)(s[0] / div);
}

/* NaN wins, else the larger */
__device__ inline float nanmax(float m, float v)
{
    return isnan(m) ? m : (v > m || isnan(v)) ? v : m;
}

__global__ void max_abs_partial(float *part, const float *x, int64_t n, int64_t chunk)
{
    __shared__ float sh[LM_CU_THREADS];
    const int64_t i0 = (int64_t)blockIdx.x * chunk, i1 = i0 + chunk < n ? i0 + chunk : n;
    float m = 0.0f;
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x)
        m = nanmax(m, fabsf(x[i]));
    sh[threadIdx.x] = m;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s)
            sh[threadIdx.x] = nanmax(sh[threadIdx.x], sh[threadIdx.x + s]);
        __syncthreads();
    }
    if (threadIdx.x == 0)
        part[blockIdx.x] = sh[0];
}

__global__ void max_abs_final(float *out, const float *part, int64_t np)
{
    if (threadIdx.x != 0 || blockIdx.x != 0)
        return;
    float m = 0.0f;
    for (int64_t i = 0; i < np; i++)
        m = nanmax(m, part[i]);
    out[0] = m;
}

} // namespace lm_cu_ew

using namespace lm_cu_ew;

extern "C" int lm_cuda_add(lm_backend *be, float *y, const float *a_, const float *b, int64_t n)
{
    LM_CU_ENTER(be);
    return lm_cu_map(be, n, add_f{y, a_, b}, "add");
}

extern "C" int lm_cuda_mul(lm_backend *be, float *y, const float *a_, const float *b, int64_t n)
{
    LM_CU_ENTER(be);
    return lm_cu_map(be, n, mul_f{y, a_, b}, "mul");
}

extern "C" int lm_cuda_scale(lm_backend *be, float *y, const float *x, float alpha, int64_t n)
{
    LM_CU_ENTER(be);
    return lm_cu_map(be, n, scale_f{y, x, alpha}, "scale");
}

extern "C" int lm_cuda_axpy(lm_backend *be, float *y, const float *x, float alpha, int64_t n)
{
    LM_CU_ENTER(be);
    return lm_cu_map(be, n, axpy_f{y, x, alpha}, "axpy");
}

extern "C" int lm_cuda_fill(lm_backend *be, float *y, float value, int64_t n)
{
    LM_CU_ENTER(be);
    return lm_cu_map(be, n, fill_f{y, value}, "fill");
}

extern "C" int lm_cuda_copy(lm_backend *be, float *y, const float *x, int64_t n)
{
    LM_CU_ENTER(be);
    if (n <= 0 || y == x)
        return 0;
    LM_CU_CHECK(
        cudaMemcpyAsync(y, x, (size_t)n * sizeof *y, cudaMemcpyDeviceToDevice, lm_cu(be)->stream));
    return 0;
}

static int cast_ok(lm_dtype t)
{
    return t == LM_F32 || t == LM_BF16 || t == LM_F16 || t == LM_I32 || t == LM_U8;
}

extern "C" int lm_cuda_cast(lm_backend *be, void *y, lm_dtype ydt, const void *x, lm_dtype xdt,
                            int64_t n)
{
    LM_CU_ARG(cast_ok(ydt) && cast_ok(xdt), "cast: unsupported dtypes %s -> %s",
              lm_cu_dtype_name(xdt), lm_cu_dtype_name(ydt));
    LM_CU_ENTER(be);
    return lm_cu_map(be, n, cast_f{y, x, ydt, xdt}, "cast");
}

static int sum_to(lm_backend *be, float *out, const float *x, int64_t n, double div)
{
    double *s = (double *)lm_cu_scratch(be, LM_CU_S_RED, sizeof(double));
    if (!s)
        return -1;
    if (lm_cu_reduce<1>(be, s, 1, n > 0 ? n : 0, 0, sum_r{x}) < 0)
        return -1;
    finish_kernel<<<1, 32, 0, lm_cu(be)->stream>>>(out, s, div);
    LM_CU_LAUNCHED(be);
    return 0;
}

extern "C" int lm_cuda_sum(lm_backend *be, float *out, const float *x, int64_t n)
{
    LM_CU_ENTER(be);
    return sum_to(be, out, x, n, 1.0);
}

extern "C" int lm_cuda_mean(lm_backend *be, float *out, const float *x, int64_t n)
{
    LM_CU_ARG(n > 0, "mean: empty input");
    LM_CU_ENTER(be);
    return sum_to(be, out, x, n, (double)n);
}

extern "C" int lm_cuda_max_abs(lm_backend *be, float *out, const float *x, int64_t n)
{
    LM_CU_ENTER(be);
    const int64_t chunk = 16384;
    int64_t np = n > 0 ? (n + chunk - 1) / chunk : 0;
    float *part = (float *)lm_cu_scratch(be, LM_CU_S_A, (size_t)(np > 0 ? np : 1) * sizeof(float));
    if (!part)
        return -1;
    cudaStream_t st = lm_cu(be)->stream;
    if (np > 0) {
        max_abs_partial<<<(unsigned)np, LM_CU_THREADS, 0, st>>>(part, x, n, chunk);
        LM_CU_LAUNCHED(be);
    }
    max_abs_final<<<1, 32, 0, st>>>(out, part, np);
    LM_CU_LAUNCHED(be);
    return 0;
}
