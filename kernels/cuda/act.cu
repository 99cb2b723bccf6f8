/* act.cu — pointwise activations and their derivatives on CUDA (own kernels; the maths is
 * common/lm_kmath.h, evaluated in double and rounded once, as on the CPU). Forward ops may run
 * in place; backward ops accumulate.
 * Not here: normalisations (norm.cu), softmax (rope_attn.cu).
 */
#include "cuda.cuh"

namespace lm_cu_act
{

struct relu_f {
    float *y;
    const float *x;
    __device__ void operator()(int64_t i) const { y[i] = x[i] < 0.0f ? 0.0f : x[i]; }
};
struct relu_b {
    float *dx;
    const float *dy, *x;
    __device__ void operator()(int64_t i) const
    {
        if (x[i] > 0.0f)
            dx[i] += dy[i];
    }
};
struct leaky_f {
    float *y;
    const float *x;
    float s;
    __device__ void operator()(int64_t i) const { y[i] = x[i] > 0.0f ? x[i] : __fmul_rn(s, x[i]); }
};
struct leaky_b {
    float *dx;
    const float *dy, *x;
    float s;
    __device__ void operator()(int64_t i) const
    {
        dx[i] += x[i] > 0.0f ? dy[i] : __fmul_rn(s, dy[i]);
    }
};
struct silu_f {
    float *y;
    const float *x;
    __device__ void operator()(int64_t i) const { y[i] = (float)lm_k_silu(x[i]); }
};
struct silu_b {
    float *dx;
    const float *dy, *x;
    __device__ void operator()(int64_t i) const { dx[i] += (float)(dy[i] * lm_k_silu_grad(x[i])); }
};
struct swiglu_f {
    float *y;
    const float *g, *u;
    __device__ void operator()(int64_t i) const { y[i] = (float)(lm_k_silu(g[i]) * u[i]); }
};
struct swiglu_b {
    float *dg, *du;
    const float *dy, *g, *u;
    __device__ void operator()(int64_t i) const
    {
        if (dg)
            dg[i] += (float)((double)dy[i] * u[i] * lm_k_silu_grad(g[i]));
        if (du)
            du[i] += (float)((double)dy[i] * lm_k_silu(g[i]));
    }
};
struct gelu_f {
    float *y;
    const float *x;
    __device__ void operator()(int64_t i) const { y[i] = (float)lm_k_gelu(x[i]); }
};
struct gelu_b {
    float *dx;
    const float *dy, *x;
    __device__ void operator()(int64_t i) const { dx[i] += (float)(dy[i] * lm_k_gelu_grad(x[i])); }
};

} // namespace lm_cu_act

using namespace lm_cu_act;

#define ACT(call, what)                                                                            \
    do {                                                                                           \
        LM_CU_ENTER(be);                                                                           \
        return lm_cu_map(be, n, call, what);                                                       \
    } while (0)

extern "C" int lm_cuda_relu_fwd(lm_backend *be, float *y, const float *x, int64_t n)
{
    ACT((relu_f{y, x}), "relu_fwd");
}

extern "C" int lm_cuda_relu_bwd(lm_backend *be, float *dx, const float *dy, const float *x,
                                int64_t n)
{
    if (!dx)
        return 0;
    ACT((relu_b{dx, dy, x}), "relu_bwd");
}

extern "C" int lm_cuda_leaky_relu_fwd(lm_backend *be, float *y, const float *x, float slope,
                                      int64_t n)
{
    ACT((leaky_f{y, x, slope}), "leaky_relu_fwd");
}

extern "C" int lm_cuda_leaky_relu_bwd(lm_backend *be, float *dx, const float *dy, const float *x,
                                      float slope, int64_t n)
{
    if (!dx)
        return 0;
    ACT((leaky_b{dx, dy, x, slope}), "leaky_relu_bwd");
}

extern "C" int lm_cuda_silu_fwd(lm_backend *be, float *y, const float *x, int64_t n)
{
    ACT((silu_f{y, x}), "silu_fwd");
}

extern "C" int lm_cuda_silu_bwd(lm_backend *be, float *dx, const float *dy, const float *x,
                                int64_t n)
{
    if (!dx)
        return 0;
    ACT((silu_b{dx, dy, x}), "silu_bwd");
}

extern "C" int lm_cuda_swiglu_fwd(lm_backend *be, float *y, const float *g, const float *u,
                                  int64_t n)
{
    ACT((swiglu_f{y, g, u}), "swiglu_fwd");
}

extern "C" int lm_cuda_swiglu_bwd(lm_backend *be, float *dg, float *du, const float *dy,
                                  const float *g, const float *u, int64_t n)
{
    if (!dg && !du)
        return 0;
    ACT((swiglu_b{dg, du, dy, g, u}), "swiglu_bwd");
}

extern "C" int lm_cuda_gelu_fwd(lm_backend *be, float *y, const float *x, int64_t n)
{
    ACT((gelu_f{y, x}), "gelu_fwd");
}

extern "C" int lm_cuda_gelu_bwd(lm_backend *be, float *dx, const float *dy, const float *x,
                                int64_t n)
{
    if (!dx)
        return 0;
    ACT((gelu_b{dx, dy, x}), "gelu_bwd");
}
