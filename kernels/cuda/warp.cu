/* warp.cu — the spatial transformer of MODEL.md §8 on CUDA (own kernels): trilinear backward
 * warp with zeros or border padding (forward, and backward to the source and to the flow),
 * nearest warp of images or label maps, and flow composition r ⊕ U (§7.4). Coordinates and
 * weights are in double through common/lm_kmath.h's lm_k_lin_axis, with the CPU's corner and
 * summation order, one thread per voxel. The flow gradient is a per-voxel gather; the source
 * gradient is a scatter done with double atomicAdd into a zeroed scratch volume, then added to
 * dsrc in one rounding, as the CPU does — only the order of the double additions varies.
 * Not here: integration of velocity fields, resampling between grids.
 */
#include "cuda.cuh"

namespace lm_cu_warp
{

struct corners {
    int64_t off[8];
    double w[8];
    double dw[3][8];
    int in[8];
};

__device__ inline void corners_at(corners *k, double qz, double qy, double qx, int64_t D, int64_t H,
                                  int64_t W, int border, int want_dw)
{
    int64_t iz[2], iy[2], ix[2];
    double wz[2], wy[2], wx[2], gz[2], gy[2], gx[2];
    int nz[2], ny[2], nx[2];
    lm_k_lin_axis(qz, D, border, iz, wz, gz, nz);
    lm_k_lin_axis(qy, H, border, iy, wy, gy, ny);
    lm_k_lin_axis(qx, W, border, ix, wx, gx, nx);
    int t = 0;
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++)
            for (int e = 0; e < 2; e++, t++) {
                k->in[t] = nz[a] && ny[b] && nx[e];
                k->off[t] = k->in[t] ? (iz[a] * H + iy[b]) * W + ix[e] : 0;
                k->w[t] = wz[a] * wy[b] * wx[e];
                if (want_dw) {
                    k->dw[0][t] = gz[a] * wy[b] * wx[e];
                    k->dw[1][t] = wz[a] * gy[b] * wx[e];
                    k->dw[2][t] = wz[a] * wy[b] * gx[e];
                }
            }
}

/* voxel p of a D×H×W grid -> its sample point p + flow(p) */
__device__ inline void sample_point(int64_t p, const float *flow, int64_t D, int64_t H, int64_t W,
                                    double *qz, double *qy, double *qx)
{
    const int64_t N = D * H * W, xx = p % W, yy = (p / W) % H, z = p / (W * H);
    *qz = (double)z + (double)flow[p];
    *qy = (double)yy + (double)flow[N + p];
    *qx = (double)xx + (double)flow[2 * N + p];
}

struct warp_fwd_f {
    float *y;
    const float *src, *flow;
    int64_t C, D, H, W;
    int border;
    __device__ void operator()(int64_t p) const
    {
        const int64_t N = D * H * W;
        double qz, qy, qx;
        corners k;
        sample_point(p, flow, D, H, W, &qz, &qy, &qx);
        corners_at(&k, qz, qy, qx, D, H, W, border, 0);
        for (int64_t c = 0; c < C; c++) {
            const float *s = src + c * N;
            double v = 0;
            for (int t = 0; t < 8; t++)
                if (k.in[t])
                    v += k.w[t] * s[k.off[t]];
            y[c * N + p] = (float)v;
        }
    }
};

/* dflow[d,p] += Σ_c g[c,p]·Σ_t dw[d][t]·s[c,off]; then, for compose, dflow += g (add_g) */
struct flow_grad_f {
    float *dflow;
    const float *g, *s, *flow;
    int64_t C, D, H, W;
    int border, add_g;
    __device__ void operator()(int64_t p) const
    {
        const int64_t N = D * H * W;
        double qz, qy, qx;
        corners k;
        sample_point(p, flow, D, H, W, &qz, &qy, &qx);
        corners_at(&k, qz, qy, qx, D, H, W, border, 1);
        double acc[3] = {0, 0, 0};
        for (int64_t c = 0; c < C; c++) {
            double gc = g[c * N + p];
            if (gc == 0.0)
                continue;
            const float *sc = s + c * N;
            for (int d = 0; d < 3; d++) {
                double v = 0;
                for (int t = 0; t < 8; t++)
                    if (k.in[t])
                        v += k.dw[d][t] * sc[k.off[t]];
                acc[d] += gc * v;
            }
        }
        for (int d = 0; d < 3; d++) {
            dflow[d * N + p] += (float)acc[d];
            if (add_g)
                dflow[d * N + p] += g[d * N + p];
        }
    }
};

/* acc[c, off] += w·g[c,p] (double atomics) */
struct scatter_f {
    double *acc;
    const float *g, *flow;
    int64_t C, D, H, W;
    int border;
    __device__ void operator()(int64_t p) const
    {
        const int64_t N = D * H * W;
        double qz, qy, qx;
        corners k;
        sample_point(p, flow, D, H, W, &qz, &qy, &qx);
        corners_at(&k, qz, qy, qx, D, H, W, border, 0);
        for (int64_t c = 0; c < C; c++) {
            float gp = g[c * N + p];
            if (gp == 0.0f)
                continue;
            for (int t = 0; t < 8; t++)
                if (k.in[t])
                    atomicAdd(acc + c * N + k.off[t], k.w[t] * gp);
        }
    }
};

struct add_acc_f {
    float *d;
    const double *acc;
    __device__ void operator()(int64_t i) const { d[i] += (float)acc[i]; }
};

__device__ inline int64_t near_axis(double q, int64_t n)
{
    if (!(q > -1.0 && q < (double)n)) /* also NaN */
        return -1;
    double r = lm_k_round_even(q);
    return r >= 0 && r < (double)n ? (int64_t)r : -1;
}

/* F32 and I32 are both 4-byte words that are only copied (or zeroed) */
struct nearest_f {
    uint32_t *y;
    const uint32_t *src;
    const float *flow;
    int64_t C, D, H, W;
    __device__ void operator()(int64_t p) const
    {
        const int64_t N = D * H * W;
        double qz, qy, qx;
        sample_point(p, flow, D, H, W, &qz, &qy, &qx);
        int64_t iz = near_axis(qz, D), iy = near_axis(qy, H), ix = near_axis(qx, W);
        int inside = iz >= 0 && iy >= 0 && ix >= 0;
        int64_t o = inside ? (iz * H + iy) * W + ix : 0;
        for (int64_t c = 0; c < C; c++)
            y[c * N + p] = inside ? src[c * N + o] : 0u;
    }
};

struct compose_f {
    float *psi;
    const float *r, *u;
    int64_t D, H, W;
    __device__ void operator()(int64_t p) const
    {
        const int64_t N = D * H * W;
        double qz, qy, qx;
        corners k;
        sample_point(p, r, D, H, W, &qz, &qy, &qx);
        corners_at(&k, qz, qy, qx, D, H, W, 1, 0);
        for (int64_t c = 0; c < 3; c++) {
            double v = 0;
            for (int t = 0; t < 8; t++)
                v += k.w[t] * u[c * N + k.off[t]];
            psi[c * N + p] = (float)((double)r[c * N + p] + v);
        }
    }
};

} // namespace lm_cu_warp

using namespace lm_cu_warp;

static int warp_check(int C, int D, int H, int W, const char *what)
{
    LM_CU_ARG(C > 0 && D > 0 && H > 0 && W > 0, "%s: bad shape C=%d grid %dx%dx%d", what, C, D, H,
              W);
    return 0;
}

/* ds [C,D,H,W] += the scatter of g through flow */
static int scatter_src(lm_backend *be, float *ds, const float *g, const float *flow, int64_t C,
                       int64_t D, int64_t H, int64_t W, int border)
{
    const int64_t N = D * H * W;
    double *acc = (double *)lm_cu_scratch(be, LM_CU_S_A, (size_t)(C * N) * sizeof(double));
    if (!acc)
        return -1;
    LM_CU_CHECK(cudaMemsetAsync(acc, 0, (size_t)(C * N) * sizeof(double), lm_cu(be)->stream));
    if (lm_cu_map(be, N, scatter_f{acc, g, flow, C, D, H, W, border}, "warp: source scatter") < 0)
        return -1;
    return lm_cu_map(be, C * N, add_acc_f{ds, acc}, "warp: source gradient");
}

extern "C" int lm_cuda_warp_fwd(lm_backend *be, float *y, const float *src, const float *flow,
                                const lm_warp_args *a)
{
    if (warp_check(a->C, a->D, a->H, a->W, "warp") < 0)
        return -1;
    LM_CU_ARG(a->padding == LM_PAD_ZEROS || a->padding == LM_PAD_BORDER, "warp: unknown padding %d",
              a->padding);
    LM_CU_ENTER(be);
    const int64_t N = (int64_t)a->D * a->H * a->W;
    return lm_cu_map(be, N,
                     warp_fwd_f{y, src, flow, a->C, a->D, a->H, a->W, a->padding == LM_PAD_BORDER},
                     "warp_fwd");
}

extern "C" int lm_cuda_warp_bwd(lm_backend *be, float *dsrc, float *dflow, const float *dy,
                                const float *src, const float *flow, const lm_warp_args *a)
{
    if (warp_check(a->C, a->D, a->H, a->W, "warp") < 0)
        return -1;
    LM_CU_ARG(a->padding == LM_PAD_ZEROS || a->padding == LM_PAD_BORDER, "warp: unknown padding %d",
              a->padding);
    LM_CU_ENTER(be);
    const int border = a->padding == LM_PAD_BORDER;
    const int64_t N = (int64_t)a->D * a->H * a->W;
    if (dflow &&
        lm_cu_map(be, N, flow_grad_f{dflow, dy, src, flow, a->C, a->D, a->H, a->W, border, 0},
                  "warp_bwd: flow") < 0)
        return -1;
    if (dsrc && scatter_src(be, dsrc, dy, flow, a->C, a->D, a->H, a->W, border) < 0)
        return -1;
    return 0;
}

extern "C" int lm_cuda_warp_nearest(lm_backend *be, void *y, const void *src, const float *flow,
                                    lm_dtype dt, const lm_warp_args *a)
{
    if (warp_check(a->C, a->D, a->H, a->W, "warp_nearest") < 0)
        return -1;
    LM_CU_ARG(a->padding == LM_PAD_ZEROS, "warp_nearest: only zeros padding");
    LM_CU_ARG(dt == LM_F32 || dt == LM_I32, "warp_nearest: dtype must be F32 or I32 (got %s)",
              lm_cu_dtype_name(dt));
    LM_CU_ENTER(be);
    const int64_t N = (int64_t)a->D * a->H * a->W;
    return lm_cu_map(be, N,
                     nearest_f{(uint32_t *)y, (const uint32_t *)src, flow, a->C, a->D, a->H, a->W},
                     "warp_nearest");
}

extern "C" int lm_cuda_compose_fwd(lm_backend *be, float *psi, const float *r, const float *u,
                                   const lm_vol_args *a)
{
    if (warp_check(a->C, a->D, a->H, a->W, "compose") < 0)
        return -1;
    LM_CU_ARG(a->C == 3, "compose: fields must have 3 channels (got %d)", a->C);
    LM_CU_ENTER(be);
    const int64_t N = (int64_t)a->D * a->H * a->W;
    return lm_cu_map(be, N, compose_f{psi, r, u, a->D, a->H, a->W}, "compose_fwd");
}

extern "C" int lm_cuda_compose_bwd(lm_backend *be, float *dr, float *du, const float *dpsi,
                                   const float *r, const float *u, const lm_vol_args *a)
{
    if (warp_check(a->C, a->D, a->H, a->W, "compose") < 0)
        return -1;
    LM_CU_ARG(a->C == 3, "compose: fields must have 3 channels (got %d)", a->C);
    LM_CU_ENTER(be);
    const int64_t N = (int64_t)a->D * a->H * a->W;
    if (dr && lm_cu_map(be, N, flow_grad_f{dr, dpsi, u, r, 3, a->D, a->H, a->W, 1, 1},
                        "compose_bwd: r") < 0)
        return -1;
    if (du && scatter_src(be, du, dpsi, r, 3, a->D, a->H, a->W, 1) < 0)
        return -1;
    return 0;
}
