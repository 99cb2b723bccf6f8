/* warp.c — the spatial transformer of MODEL.md §8 on the CPU: trilinear backward warp with
 * zeros or border padding (forward, and backward to the source and to the flow), nearest warp
 * of images or label maps, and flow composition r ⊕ U (§7.4). Coordinates and weights are in
 * double (common/lm_kmath.h, lm_k_lin_axis). The flow gradient is a per-voxel gather
 * (parallel over voxels); the source gradient is a scatter, parallel over channels only, each
 * channel in voxel order, so the bits never depend on the thread count.
 * Not here: integration of velocity fields, resampling between grids.
 */
#include "cpu.h"

#include <math.h>

typedef struct {
    int64_t off[8];
    double w[8];
    double dw[3][8];
    int in[8];
} corners;

static void corners_at(corners *k, double qz, double qy, double qx, int64_t D, int64_t H,
                       int64_t W, int border)
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
                k->dw[0][t] = gz[a] * wy[b] * wx[e];
                k->dw[1][t] = wz[a] * gy[b] * wx[e];
                k->dw[2][t] = wz[a] * wy[b] * gx[e];
            }
}

static int warp_check(int C, int D, int H, int W, const char *what)
{
    LM_CPU_CHECK(C > 0 && D > 0 && H > 0 && W > 0, "%s: bad shape C=%d grid %dx%dx%d", what, C, D,
                 H, W);
    return 0;
}

/* over every voxel p = (z, yy, xx) of the grid D×H×W (locals of the caller) */
#define VOXEL_LOOP_BEGIN                                                                       \
    _Pragma("omp parallel for collapse(2) schedule(static) if (D * H * W >= 4096)")            \
    for (int64_t z = 0; z < D; z++)                                                            \
        for (int64_t yy = 0; yy < H; yy++)                                                     \
            for (int64_t xx = 0; xx < W; xx++) {                                               \
                const int64_t p = (z * H + yy) * W + xx;
#define VOXEL_LOOP_END }

/* Zero padding, the common case, without the derivative bookkeeping of corners_at: the same
 * weights, corner order and summation order, hence the same bits. */
static void warp_fwd_zeros(float *y, const float *src, const float *flow, int64_t C, int64_t D,
                           int64_t H, int64_t W)
{
    const int64_t N = D * H * W, HW = H * W;
#pragma omp parallel for schedule(static) if (N >= 4096)
    for (int64_t z = 0; z < D; z++)
        for (int64_t yy = 0; yy < H; yy++)
            for (int64_t xx = 0; xx < W; xx++) {
                const int64_t p = (z * H + yy) * W + xx;
                double qz = (double)z + (double)flow[p], qy = (double)yy + (double)flow[N + p],
                       qx = (double)xx + (double)flow[2 * N + p];
                if (!(qz > -1.0 && qz < (double)D && qy > -1.0 && qy < (double)H && qx > -1.0 &&
                      qx < (double)W)) { /* every corner outside (NaN too) */
                    for (int64_t c = 0; c < C; c++)
                        y[c * N + p] = 0.0f;
                    continue;
                }
                /* floor without a libm call: q > -1 here, so truncation is floor for q >= 0
                 * and floor is -1 below 0 */
                int64_t z0 = qz >= 0 ? (int64_t)qz : -1, y0 = qy >= 0 ? (int64_t)qy : -1,
                        x0 = qx >= 0 ? (int64_t)qx : -1;
                double tz = qz - (double)z0, ty = qy - (double)y0, tx = qx - (double)x0;
                double wz0 = 1.0 - tz, wy0 = 1.0 - ty, wx0 = 1.0 - tx;
                if (z0 >= 0 && z0 + 1 < D && y0 >= 0 && y0 + 1 < H && x0 >= 0 && x0 + 1 < W) {
                    /* all eight corners inside */
                    const double w00 = wz0 * wy0, w01 = wz0 * ty, w10 = tz * wy0, w11 = tz * ty;
                    const int64_t o = z0 * HW + y0 * W + x0;
                    for (int64_t c = 0; c < C; c++) {
                        const float *b = src + c * N + o;
                        double v = 0;
                        v += w00 * wx0 * b[0];
                        v += w00 * tx * b[1];
                        v += w01 * wx0 * b[W];
                        v += w01 * tx * b[W + 1];
                        v += w10 * wx0 * b[HW];
                        v += w10 * tx * b[HW + 1];
                        v += w11 * wx0 * b[HW + W];
                        v += w11 * tx * b[HW + W + 1];
                        y[c * N + p] = (float)v;
                    }
                    continue;
                }
                double wz[2] = {wz0, tz}, wy[2] = {wy0, ty}, wx[2] = {wx0, tx};
                int inz[2] = {z0 >= 0, z0 + 1 < D}, iny[2] = {y0 >= 0, y0 + 1 < H},
                    inx[2] = {x0 >= 0, x0 + 1 < W};
                for (int64_t c = 0; c < C; c++) {
                    const float *sc = src + c * N;
                    double v = 0;
                    for (int a = 0; a < 2; a++)
                        for (int b = 0; b < 2; b++)
                            for (int e = 0; e < 2; e++)
                                if (inz[a] && iny[b] && inx[e])
                                    v += wz[a] * wy[b] * wx[e] *
                                         sc[(z0 + a) * HW + (y0 + b) * W + (x0 + e)];
                    y[c * N + p] = (float)v;
                }
            }
}

int lm_cpu_warp_fwd(lm_backend *be, float *y, const float *src, const float *flow,
                    const lm_warp_args *a)
{
    (void)be;
    if (warp_check(a->C, a->D, a->H, a->W, "warp") < 0)
        return -1;
    LM_CPU_CHECK(a->padding == LM_PAD_ZEROS || a->padding == LM_PAD_BORDER,
                 "warp: unknown padding %d", a->padding);
    const int64_t D = a->D, H = a->H, W = a->W, N = D * H * W;
    if (a->padding == LM_PAD_ZEROS) {
        warp_fwd_zeros(y, src, flow, a->C, D, H, W);
        return 0;
    }
    VOXEL_LOOP_BEGIN
        corners k;
        corners_at(&k, z + (double)flow[p], yy + (double)flow[N + p], xx + (double)flow[2 * N + p],
                   D, H, W, a->padding == LM_PAD_BORDER);
        for (int64_t c = 0; c < a->C; c++) {
            const float *s = src + c * N;
            double v = 0;
            for (int t = 0; t < 8; t++)
                if (k.in[t])
                    v += k.w[t] * s[k.off[t]];
            y[c * N + p] = (float)v;
        }
    VOXEL_LOOP_END
    return 0;
}

/* dflow[d,p] += Σ_c g[c,p]·Σ_t dw[d][t]·s[c,off] */
static void flow_grad(float *dflow, const float *g, const float *s, const float *flow, int C,
                      int64_t D, int64_t H, int64_t W, int border)
{
    const int64_t N = D * H * W;
    VOXEL_LOOP_BEGIN
        corners k;
        corners_at(&k, z + (double)flow[p], yy + (double)flow[N + p], xx + (double)flow[2 * N + p],
                   D, H, W, border);
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
        for (int d = 0; d < 3; d++)
            dflow[d * N + p] += (float)acc[d];
    VOXEL_LOOP_END
}

/* ds[c, off] += w·g[c,p], channel-parallel, voxel order within a channel. */
static int scatter_src(float *ds, const float *g, const float *flow, int C, int64_t D, int64_t H,
                       int64_t W, int border)
{
    const int64_t N = D * H * W;
    double *acc = lm_cpu_scratch((size_t)(C * N) * sizeof *acc);
    if (!acc)
        return -1;
#pragma omp parallel for schedule(static) if (C > 1 && C * N >= LM_CPU_PAR_MIN)
    for (int64_t c = 0; c < C; c++) {
        double *ac = acc + c * N;
        const float *gc = g + c * N;
        for (int64_t i = 0; i < N; i++)
            ac[i] = 0;
        for (int64_t z = 0; z < D; z++)
            for (int64_t yy = 0; yy < H; yy++)
                for (int64_t xx = 0; xx < W; xx++) {
                    int64_t p = (z * H + yy) * W + xx;
                    if (gc[p] == 0.0f)
                        continue;
                    corners k;
                    corners_at(&k, z + (double)flow[p], yy + (double)flow[N + p],
                               xx + (double)flow[2 * N + p], D, H, W, border);
                    for (int t = 0; t < 8; t++)
                        if (k.in[t])
                            ac[k.off[t]] += k.w[t] * gc[p];
                }
        float *dc = ds + c * N;
        for (int64_t i = 0; i < N; i++)
            dc[i] += (float)ac[i];
    }
    lm_cpu_scratch_free(acc);
    return 0;
}

int lm_cpu_warp_bwd(lm_backend *be, float *dsrc, float *dflow, const float *dy, const float *src,
                    const float *flow, const lm_warp_args *a)
{
    (void)be;
    if (warp_check(a->C, a->D, a->H, a->W, "warp") < 0)
        return -1;
    LM_CPU_CHECK(a->padding == LM_PAD_ZEROS || a->padding == LM_PAD_BORDER,
                 "warp: unknown padding %d", a->padding);
    int border = a->padding == LM_PAD_BORDER;
    const int64_t D = a->D, H = a->H, W = a->W;
    if (dflow)
        flow_grad(dflow, dy, src, flow, a->C, D, H, W, border);
    if (dsrc && scatter_src(dsrc, dy, flow, a->C, a->D, a->H, a->W, border) < 0)
        return -1;
    return 0;
}

static int64_t near_axis(double q, int64_t n)
{
    if (!(q > -1.0 && q < (double)n)) /* also NaN */
        return -1;
    double r = lm_k_round_even(q);
    return r >= 0 && r < (double)n ? (int64_t)r : -1;
}

int lm_cpu_warp_nearest(lm_backend *be, void *y, const void *src, const float *flow, lm_dtype dt,
                        const lm_warp_args *a)
{
    (void)be;
    if (warp_check(a->C, a->D, a->H, a->W, "warp_nearest") < 0)
        return -1;
    LM_CPU_CHECK(a->padding == LM_PAD_ZEROS, "warp_nearest: only zeros padding");
    LM_CPU_CHECK(dt == LM_F32 || dt == LM_I32, "warp_nearest: dtype must be F32 or I32 (got %s)",
                 lm_cpu_dtype_name(dt));
    const int64_t D = a->D, H = a->H, W = a->W, N = D * H * W;
    VOXEL_LOOP_BEGIN
        int64_t iz = near_axis(z + (double)flow[p], D), iy = near_axis(yy + (double)flow[N + p], H),
                ix = near_axis(xx + (double)flow[2 * N + p], W);
        int inside = iz >= 0 && iy >= 0 && ix >= 0;
        int64_t o = inside ? (iz * H + iy) * W + ix : 0;
        for (int64_t c = 0; c < a->C; c++) {
            if (dt == LM_F32)
                ((float *)y)[c * N + p] = inside ? ((const float *)src)[c * N + o] : 0.0f;
            else
                ((int32_t *)y)[c * N + p] = inside ? ((const int32_t *)src)[c * N + o] : 0;
        }
    VOXEL_LOOP_END
    return 0;
}

int lm_cpu_compose_fwd(lm_backend *be, float *psi, const float *r, const float *u,
                       const lm_vol_args *a)
{
    (void)be;
    if (warp_check(a->C, a->D, a->H, a->W, "compose") < 0)
        return -1;
    LM_CPU_CHECK(a->C == 3, "compose: fields must have 3 channels (got %d)", a->C);
    const int64_t D = a->D, H = a->H, W = a->W, N = D * H * W;
    VOXEL_LOOP_BEGIN
        corners k;
        corners_at(&k, z + (double)r[p], yy + (double)r[N + p], xx + (double)r[2 * N + p], D, H, W,
                   1);
        for (int64_t c = 0; c < 3; c++) {
            double v = 0;
            for (int t = 0; t < 8; t++)
                v += k.w[t] * u[c * N + k.off[t]];
            psi[c * N + p] = (float)((double)r[c * N + p] + v);
        }
    VOXEL_LOOP_END
    return 0;
}

int lm_cpu_compose_bwd(lm_backend *be, float *dr, float *du, const float *dpsi, const float *r,
                       const float *u, const lm_vol_args *a)
{
    (void)be;
    if (warp_check(a->C, a->D, a->H, a->W, "compose") < 0)
        return -1;
    LM_CPU_CHECK(a->C == 3, "compose: fields must have 3 channels (got %d)", a->C);
    const int64_t N = (int64_t)a->D * a->H * a->W;
    if (dr) {
        flow_grad(dr, dpsi, u, r, 3, a->D, a->H, a->W, 1);
#pragma omp parallel for schedule(static) if (3 * N >= LM_CPU_PAR_MIN)
        for (int64_t i = 0; i < 3 * N; i++)
            dr[i] += dpsi[i];
    }
    if (du && scatter_src(du, dpsi, r, 3, a->D, a->H, a->W, 1) < 0)
        return -1;
    return 0;
}
