/* norm.cu — instance norm (affine=False; per channel over voxels [C,N] or over tokens [N,C]),
 * layer norm and RMSNorm with a frozen weight, forward and backward, on CUDA (own kernels).
 * Statistics are in double, two passes (mean, then the biased variance about it), as on the
 * CPU. Per-channel statistics go through the fixed-chunk reduction of cuda.cuh (columns for
 * the token-major layout, so reads stay coalesced); per-row statistics use one block per row
 * with a fixed reduction tree. Nothing depends on the launch, so the bits are repeatable.
 * Not here: batch norm, running statistics.
 */
#include "cuda.cuh"

namespace lm_cu_norm
{

/* ---- instance norm ---- */
struct in_sum_r {
    const float *x;
    int64_t C, N;
    int tm;
    __device__ void operator()(int64_t s, int64_t i, double (&acc)[1]) const
    {
        acc[0] += tm ? x[i * C + s] : x[s * N + i];
    }
};
struct in_var_r {
    const float *x;
    const double *mu;
    int64_t C, N;
    int tm;
    __device__ void operator()(int64_t s, int64_t i, double (&acc)[1]) const
    {
        double d = (tm ? x[i * C + s] : x[s * N + i]) - mu[s];
        acc[0] += d * d;
    }
};
/* st[c] = st[c] / N (the mean), or 1/√(st[c]/N + eps) (rstd) */
struct in_final_f {
    double *st;
    double N, eps;
    int rstd;
    __device__ void operator()(int64_t c) const
    {
        st[c] = rstd ? 1.0 / sqrt(st[c] / N + eps) : st[c] / N;
    }
};
struct in_apply_f {
    float *y;
    const float *x;
    const double *mu, *rs;
    int64_t C, N;
    int tm;
    __device__ void operator()(int64_t i) const
    {
        int64_t c = tm ? i % C : i / N;
        y[i] = (float)((x[i] - mu[c]) * rs[c]);
    }
};
struct in_out_f {
    float *mean, *rstd;
    const double *mu, *rs;
    __device__ void operator()(int64_t c) const
    {
        if (mean)
            mean[c] = (float)mu[c];
        if (rstd)
            rstd[c] = (float)rs[c];
    }
};
/* Σ dy, Σ dy·x̂ per channel */
struct in_bwd_r {
    const float *dy, *x, *mean, *rstd;
    int64_t C, N;
    int tm;
    __device__ void operator()(int64_t s, int64_t i, double (&acc)[2]) const
    {
        int64_t j = tm ? i * C + s : s * N + i;
        double xh = (x[j] - (double)mean[s]) * rstd[s];
        acc[0] += dy[j];
        acc[1] += dy[j] * xh;
    }
};
struct in_bwd_f {
    float *dx;
    const float *dy, *x, *mean, *rstd;
    const double *s;
    int64_t C, N;
    int tm;
    __device__ void operator()(int64_t i) const
    {
        int64_t c = tm ? i % C : i / N;
        double r = rstd[c], xh = (x[i] - (double)mean[c]) * r;
        dx[i] += (float)(r * (dy[i] - s[2 * c] / (double)N - xh * s[2 * c + 1] / (double)N));
    }
};

/* ---- row norms: one block per row ---- */
__device__ inline double block_allsum(double v)
{
    __shared__ double bc;
    double acc[1] = {v};
    lm_cu_block_sum<1>(acc);
    if (threadIdx.x == 0)
        bc = acc[0];
    __syncthreads();
    double r = bc;
    __syncthreads();
    return r;
}

__global__ void layernorm_fwd_kernel(float *y, float *mean, float *rstd, const float *x,
                                     const float *gamma, const float *beta, int64_t R, int64_t C,
                                     float eps)
{
    for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
        const float *xr = x + r * C;
        float *yr = y + r * C;
        double s = 0;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
            s += xr[c];
        double m = block_allsum(s) / (double)C;
        double v = 0;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
            v += (xr[c] - m) * (xr[c] - m);
        double rs = 1.0 / sqrt(block_allsum(v) / (double)C + eps);
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
            double o = (xr[c] - m) * rs;
            if (gamma)
                o *= gamma[c];
            if (beta)
                o += beta[c];
            yr[c] = (float)o;
        }
        if (threadIdx.x == 0) {
            if (mean)
                mean[r] = (float)m;
            if (rstd)
                rstd[r] = (float)rs;
        }
    }
}

__global__ void layernorm_bwd_dx_kernel(float *dx, const float *dy, const float *x,
                                        const float *mean, const float *rstd, const float *gamma,
                                        int64_t R, int64_t C)
{
    for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
        const float *xr = x + r * C, *gr = dy + r * C;
        const double m = mean[r], rs = rstd[r];
        double sg = 0, sgx = 0;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
            double g = gamma ? (double)gr[c] * gamma[c] : gr[c];
            sg += g;
            sgx += g * (xr[c] - m) * rs;
        }
        sg = block_allsum(sg) / (double)C;
        sgx = block_allsum(sgx) / (double)C;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
            double g = gamma ? (double)gr[c] * gamma[c] : gr[c];
            dx[r * C + c] += (float)(rs * (g - sg - (xr[c] - m) * rs * sgx));
        }
    }
}

struct ln_param_r {
    const float *dy, *x, *mean, *rstd;
    int64_t C;
    __device__ void operator()(int64_t c, int64_t r, double (&acc)[2]) const
    {
        double xh = (x[r * C + c] - (double)mean[r]) * rstd[r];
        acc[0] += dy[r * C + c] * xh;
        acc[1] += dy[r * C + c];
    }
};
struct ln_param_f {
    float *dgamma, *dbeta;
    const double *s;
    __device__ void operator()(int64_t c) const
    {
        if (dgamma)
            dgamma[c] += (float)s[2 * c];
        if (dbeta)
            dbeta[c] += (float)s[2 * c + 1];
    }
};

__global__ void rmsnorm_fwd_kernel(float *y, const float *x, const float *g, int64_t R, int64_t C,
                                   float eps)
{
    for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
        const float *xr = x + r * C;
        float *yr = y + r * C;
        double ms = 0;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
            ms += (double)xr[c] * xr[c];
        double rs = 1.0 / sqrt(block_allsum(ms) / (double)C + eps);
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
            yr[c] = __fmul_rn(g[c], (float)(xr[c] * rs));
    }
}

__global__ void rmsnorm_bwd_kernel(float *dx, const float *dy, const float *x, const float *g,
                                   int64_t R, int64_t C, float eps)
{
    for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
        const float *xr = x + r * C, *gr = dy + r * C;
        double ms = 0, dot = 0;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
            ms += (double)xr[c] * xr[c];
            dot += (double)gr[c] * g[c] * xr[c];
        }
        ms = block_allsum(ms);
        dot = block_allsum(dot);
        double rs = 1.0 / sqrt(ms / (double)C + eps);
        double k = rs * rs * rs * dot / (double)C;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
            dx[r * C + c] += (float)(rs * (double)gr[c] * g[c] - k * xr[c]);
    }
}

} // namespace lm_cu_norm

using namespace lm_cu_norm;

static unsigned row_blocks(int64_t R)
{
    return (unsigned)(R < (1 << 20) ? (R > 0 ? R : 1) : (1 << 20));
}

static int in_check(const lm_instnorm_args *a)
{
    LM_CU_ARG(a->C > 0 && a->N > 0, "instnorm: bad shape C=%lld N=%lld", (long long)a->C,
              (long long)a->N);
    LM_CU_ARG(a->eps >= 0, "instnorm: eps must be >= 0");
    return 0;
}

extern "C" int lm_cuda_instnorm_fwd(lm_backend *be, float *y, float *mean, float *rstd,
                                    const float *x, const lm_instnorm_args *a)
{
    if (in_check(a) < 0)
        return -1;
    LM_CU_ENTER(be);
    const int64_t C = a->C, N = a->N;
    const int tm = a->token_major != 0;
    double *st = (double *)lm_cu_scratch(be, LM_CU_S_RED, (size_t)(2 * C) * sizeof(double));
    if (!st)
        return -1;
    double *mu = st, *rs = st + C;
    if (lm_cu_reduce<1>(be, mu, C, N, tm, in_sum_r{x, C, N, tm}) < 0 ||
        lm_cu_map(be, C, in_final_f{mu, (double)N, (double)a->eps, 0}, "instnorm mean") < 0 ||
        lm_cu_reduce<1>(be, rs, C, N, tm, in_var_r{x, mu, C, N, tm}) < 0 ||
        lm_cu_map(be, C, in_final_f{rs, (double)N, (double)a->eps, 1}, "instnorm rstd") < 0 ||
        lm_cu_map(be, C * N, in_apply_f{y, x, mu, rs, C, N, tm}, "instnorm_fwd") < 0)
        return -1;
    if (mean || rstd)
        return lm_cu_map(be, C, in_out_f{mean, rstd, mu, rs}, "instnorm stats");
    return 0;
}

extern "C" int lm_cuda_instnorm_bwd(lm_backend *be, float *dx, const float *dy, const float *x,
                                    const float *mean, const float *rstd, const lm_instnorm_args *a)
{
    if (in_check(a) < 0)
        return -1;
    if (!dx)
        return 0;
    LM_CU_ENTER(be);
    const int64_t C = a->C, N = a->N;
    const int tm = a->token_major != 0;
    double *s = (double *)lm_cu_scratch(be, LM_CU_S_RED, (size_t)(2 * C) * sizeof(double));
    if (!s)
        return -1;
    if (lm_cu_reduce<2>(be, s, C, N, tm, in_bwd_r{dy, x, mean, rstd, C, N, tm}) < 0)
        return -1;
    return lm_cu_map(be, C * N, in_bwd_f{dx, dy, x, mean, rstd, s, C, N, tm}, "instnorm_bwd");
}

static int rn_check(const lm_rownorm_args *a, const char *what)
{
    LM_CU_ARG(a->rows >= 0 && a->cols > 0, "%s: bad shape [%lld,%lld]", what, (long long)a->rows,
              (long long)a->cols);
    LM_CU_ARG(a->eps >= 0, "%s: eps must be >= 0", what);
    return 0;
}

extern "C" int lm_cuda_layernorm_fwd(lm_backend *be, float *y, float *mean, float *rstd,
                                     const float *x, const float *gamma, const float *beta,
                                     const lm_rownorm_args *a)
{
    if (rn_check(a, "layernorm") < 0)
        return -1;
    LM_CU_ENTER(be);
    if (a->rows == 0)
        return 0;
    layernorm_fwd_kernel<<<row_blocks(a->rows), LM_CU_THREADS, 0, lm_cu(be)->stream>>>(
        y, mean, rstd, x, gamma, beta, a->rows, a->cols, a->eps);
    LM_CU_LAUNCHED(be);
    return 0;
}

extern "C" int lm_cuda_layernorm_bwd(lm_backend *be, float *dx, float *dgamma, float *dbeta,
                                     const float *dy, const float *x, const float *mean,
                                     const float *rstd, const float *gamma,
                                     const lm_rownorm_args *a)
{
    if (rn_check(a, "layernorm") < 0)
        return -1;
    LM_CU_ENTER(be);
    const int64_t R = a->rows, C = a->cols;
    if (dx && R > 0) {
        layernorm_bwd_dx_kernel<<<row_blocks(R), LM_CU_THREADS, 0, lm_cu(be)->stream>>>(
            dx, dy, x, mean, rstd, gamma, R, C);
        LM_CU_LAUNCHED(be);
    }
    if (dgamma || dbeta) {
        double *s = (double *)lm_cu_scratch(be, LM_CU_S_RED, (size_t)(2 * C) * sizeof(double));
        if (!s || lm_cu_reduce<2>(be, s, C, R, 1, ln_param_r{dy, x, mean, rstd, C}) < 0)
            return -1;
        return lm_cu_map(be, C, ln_param_f{dgamma, dbeta, s}, "layernorm_bwd params");
    }
    return 0;
}

extern "C" int lm_cuda_rmsnorm_fwd(lm_backend *be, float *y, const float *x, const float *g,
                                   const lm_rownorm_args *a)
{
    if (rn_check(a, "rmsnorm") < 0)
        return -1;
    LM_CU_ENTER(be);
    if (a->rows == 0)
        return 0;
    rmsnorm_fwd_kernel<<<row_blocks(a->rows), LM_CU_THREADS, 0, lm_cu(be)->stream>>>(
        y, x, g, a->rows, a->cols, a->eps);
    LM_CU_LAUNCHED(be);
    return 0;
}

extern "C" int lm_cuda_rmsnorm_bwd(lm_backend *be, float *dx, const float *dy, const float *x,
                                   const float *g, const lm_rownorm_args *a)
{
    if (rn_check(a, "rmsnorm") < 0)
        return -1;
    if (!dx)
        return 0;
    LM_CU_ENTER(be);
    if (a->rows == 0)
        return 0;
    rmsnorm_bwd_kernel<<<row_blocks(a->rows), LM_CU_THREADS, 0, lm_cu(be)->stream>>>(
        dx, dy, x, g, a->rows, a->cols, a->eps);
    LM_CU_LAUNCHED(be);
    return 0;
}
