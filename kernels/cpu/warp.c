/* warp.c — the spatial transformer of MODEL.md §8 on the CPU: trilinear backward warp with
 * zeros or border padding (forward, and backward to the source and to the flow), nearest warp
 * of images or label maps, and flow composition r ⊕ U (§7.4). Coordinates and weights are in
 * double (common/lm_kmath.h, lm_k_lin_axis). The flow gradient is a per-voxel gather
 * (parallel over voxels); the source gradient is a scatter, parallel over channels only, each
 * channel in voxel order, so the bits never depend on the thread count. The zeros-padding
 * forward has an eight-voxel vector path for AVX2 CPUs that gives the scalar code's bits.
 * Not here: integration of velocity fields, resampling between grids.
 */
#include "cpu.h"

#include <math.h>
#include <string.h>

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
 * weights, corner order and summation order, hence the same bits. One voxel, all channels. */
static inline void warp_voxel_zeros(float *y, const float *src, const float *flow, int64_t C,
                                    int64_t D, int64_t H, int64_t W, int64_t z, int64_t yy,
                                    int64_t xx)
{
    const int64_t N = D * H * W, HW = H * W, p = (z * H + yy) * W + xx;
    double qz = (double)z + (double)flow[p], qy = (double)yy + (double)flow[N + p],
           qx = (double)xx + (double)flow[2 * N + p];
    if (!(qz > -1.0 && qz < (double)D && qy > -1.0 && qy < (double)H && qx > -1.0 &&
          qx < (double)W)) { /* every corner outside (NaN too) */
        for (int64_t c = 0; c < C; c++)
            y[c * N + p] = 0.0f;
        return;
    }
    /* floor without a libm call: q > -1 here, so truncation is floor for q >= 0 and floor is
     * -1 below 0 */
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
        return;
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
                        v += wz[a] * wy[b] * wx[e] * sc[(z0 + a) * HW + (y0 + b) * W + (x0 + e)];
        y[c * N + p] = (float)v;
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* The vector path, for CPUs with AVX2: eight voxels of a row at a time in GCC/Clang vector
 * extensions, compiled for AVX2 without FMA, so that every lane does the scalar code's double
 * operations, in its order, with its rounding: the bits are the same as warp_voxel_zeros'.
 * Integer tests replace the double ones: with t = trunc(q), q > -1 and q < n exactly when
 * 0 <= t <= n-1, and floor(q) = t - 1 exactly where q < 0, i.e. where the float flow f < -p
 * (p + f in double keeps the sign of the exact sum). A group of eight whose corners are all
 * inside takes the short path; any other group masks the corners outside (value 0: adding
 * w·0 = +0 to v changes nothing, as v is never -0). Flows beyond ±(n+2), NaN included, are
 * replaced by -p-2 (outside, as the scalar code finds them) so that the conversions stay in
 * range. Needs D·H·W < 2^31 and every n < 2^24. */
typedef double warp_vd __attribute__((vector_size(64)));
typedef float warp_vf __attribute__((vector_size(32)));
typedef int32_t warp_vi __attribute__((vector_size(32)));

/* lane-wise a if m else b, m all ones or all zeros */
#define WARP_SEL(m, a, b) ((warp_vf)(((warp_vi)(a) & (m)) | ((warp_vi)(b) & ~(m))))

/* the eight values src[o[l]] (where m[l]), converted to double */
#define WARP_GATHER(s, o, m)                                                                   \
    __builtin_convertvector((warp_vf)((warp_vi)((warp_vf){s[o[0]], s[o[1]], s[o[2]], s[o[3]],  \
                                                          s[o[4]], s[o[5]], s[o[6]], s[o[7]]}) \
                                      & (m)),                                                  \
                            warp_vd)

__attribute__((target("avx2"))) static void
warp_fwd_zeros_avx2(float *y, const float *src, const float *flow, int64_t C, int64_t D,
                    int64_t H, int64_t W)
{
    const int64_t N = D * H * W;
    const int32_t Di = (int32_t)D, Hi = (int32_t)H, Wi = (int32_t)W, HWi = Hi * Wi;
#pragma omp parallel for collapse(2) schedule(static) if (N >= 4096)
    for (int64_t z = 0; z < D; z++)
        for (int64_t yy = 0; yy < H; yy++) {
            const int64_t row = (z * H + yy) * W;
            const float *fz = flow + row, *fy = flow + N + row, *fx = flow + 2 * N + row;
            int64_t xx = 0;
            for (; xx + 8 <= W; xx += 8) {
                warp_vf lz, ly, lx;
                memcpy(&lz, fz + xx, sizeof lz);
                memcpy(&ly, fy + xx, sizeof ly);
                memcpy(&lx, fx + xx, sizeof lx);
                const warp_vf zero = {0, 0, 0, 0, 0, 0, 0, 0};
                const warp_vf pz = zero + (float)z, py = zero + (float)yy,
                              px = (float)xx + (warp_vf){0, 1, 2, 3, 4, 5, 6, 7};
                const warp_vi sz = (lz >= -(float)(D + 2)) & (lz <= (float)(D + 2)),
                              sy = (ly >= -(float)(H + 2)) & (ly <= (float)(H + 2)),
                              sx = (lx >= -(float)(W + 2)) & (lx <= (float)(W + 2));
                lz = WARP_SEL(sz, lz, -2.0f - pz);
                ly = WARP_SEL(sy, ly, -2.0f - py);
                lx = WARP_SEL(sx, lx, -2.0f - px);
                const warp_vd qz = (double)z + __builtin_convertvector(lz, warp_vd),
                              qy = (double)yy + __builtin_convertvector(ly, warp_vd),
                              qx = (double)xx + (warp_vd){0, 1, 2, 3, 4, 5, 6, 7} +
                                   __builtin_convertvector(lx, warp_vd);
                const warp_vi tz = __builtin_convertvector(qz, warp_vi),
                              ty = __builtin_convertvector(qy, warp_vi),
                              tx = __builtin_convertvector(qx, warp_vi);
                const warp_vi z0 = tz + (lz < -pz), y0 = ty + (ly < -py), x0 = tx + (lx < -px);
                const warp_vd dz = qz - __builtin_convertvector(z0, warp_vd),
                              dy = qy - __builtin_convertvector(y0, warp_vd),
                              dx = qx - __builtin_convertvector(x0, warp_vd);
                const warp_vd wz0 = 1.0 - dz, wy0 = 1.0 - dy, wx0 = 1.0 - dx;
                const warp_vd w00 = wz0 * wy0, w01 = wz0 * dy, w10 = dz * wy0, w11 = dz * dy;
                const warp_vi o = z0 * HWi + y0 * Wi + x0;
                const warp_vi inner = (z0 >= 0) & (z0 <= Di - 2) & (y0 >= 0) & (y0 <= Hi - 2) &
                                      (x0 >= 0) & (x0 <= Wi - 2);
                uint64_t g[4];
                memcpy(g, &inner, sizeof g);
                if ((g[0] & g[1] & g[2] & g[3]) == UINT64_MAX) { /* all corners inside */
/* channel c of the eight voxels, all corners inside */
#define CORNER(d)                                                                              \
    __builtin_convertvector(((warp_vf){b0[d], b1[d], b2[d], b3[d], b4[d], b5[d], b6[d], b7[d]}), \
                            warp_vd)
#define WARP_INNER(c)                                                                          \
    do {                                                                                       \
        const float *s = src + (c) * N;                                                        \
        const float *b0 = s + o[0], *b1 = s + o[1], *b2 = s + o[2], *b3 = s + o[3],             \
                    *b4 = s + o[4], *b5 = s + o[5], *b6 = s + o[6], *b7 = s + o[7];             \
        warp_vd v = {0, 0, 0, 0, 0, 0, 0, 0}; /* as the scalar v = 0 */                         \
        v += w00 * wx0 * CORNER(0);                                                            \
        v += w00 * dx * CORNER(1);                                                             \
        v += w01 * wx0 * CORNER(Wi);                                                           \
        v += w01 * dx * CORNER(Wi + 1);                                                        \
        v += w10 * wx0 * CORNER(HWi);                                                          \
        v += w10 * dx * CORNER(HWi + 1);                                                       \
        v += w11 * wx0 * CORNER(HWi + Wi);                                                     \
        v += w11 * dx * CORNER(HWi + Wi + 1);                                                  \
        const warp_vf r = __builtin_convertvector(v, warp_vf);                                 \
        memcpy(y + (c) * N + row + xx, &r, sizeof r);                                          \
    } while (0)
                    if (C == 1) /* a channel loop here costs registers the one channel needs */
                        WARP_INNER(0);
                    else
                        for (int64_t c = 0; c < C; c++)
                            WARP_INNER(c);
#undef WARP_INNER
#undef CORNER
                    continue;
                }
                const warp_vi in = (tz >= 0) & (tz <= Di - 1) & (ty >= 0) & (ty <= Hi - 1) &
                                   (tx >= 0) & (tx <= Wi - 1);
                const warp_vi vz0 = in & (z0 >= 0), vz1 = in & (z0 <= Di - 2), vy0 = y0 >= 0,
                              vy1 = y0 <= Hi - 2, vx0 = x0 >= 0, vx1 = x0 <= Wi - 2;
                const warp_vi m0 = vz0 & vy0 & vx0, m1 = vz0 & vy0 & vx1, m2 = vz0 & vy1 & vx0,
                              m3 = vz0 & vy1 & vx1, m4 = vz1 & vy0 & vx0, m5 = vz1 & vy0 & vx1,
                              m6 = vz1 & vy1 & vx0, m7 = vz1 & vy1 & vx1;
                const warp_vi o0 = o & m0, o1 = (o + 1) & m1, o2 = (o + Wi) & m2,
                              o3 = (o + Wi + 1) & m3, o4 = (o + HWi) & m4,
                              o5 = (o + HWi + 1) & m5, o6 = (o + HWi + Wi) & m6,
                              o7 = (o + HWi + Wi + 1) & m7;
#define WARP_MASKED(c)                                                                         \
    do {                                                                                       \
        const float *s = src + (c) * N;                                                        \
        warp_vd v = {0, 0, 0, 0, 0, 0, 0, 0};                                                  \
        v += w00 * wx0 * WARP_GATHER(s, o0, m0);                                               \
        v += w00 * dx * WARP_GATHER(s, o1, m1);                                                \
        v += w01 * wx0 * WARP_GATHER(s, o2, m2);                                               \
        v += w01 * dx * WARP_GATHER(s, o3, m3);                                                \
        v += w10 * wx0 * WARP_GATHER(s, o4, m4);                                               \
        v += w10 * dx * WARP_GATHER(s, o5, m5);                                                \
        v += w11 * wx0 * WARP_GATHER(s, o6, m6);                                               \
        v += w11 * dx * WARP_GATHER(s, o7, m7);                                                \
        const warp_vf r = __builtin_convertvector(v, warp_vf);                                 \
        memcpy(y + (c) * N + row + xx, &r, sizeof r);                                          \
    } while (0)
                if (C == 1)
                    WARP_MASKED(0);
                else
                    for (int64_t c = 0; c < C; c++)
                        WARP_MASKED(c);
#undef WARP_MASKED
            }
            for (; xx < W; xx++)
                warp_voxel_zeros(y, src, flow, C, D, H, W, z, yy, xx);
        }
}
#define WARP_HAVE_AVX2 1
#endif

static void warp_fwd_zeros(float *y, const float *src, const float *flow, int64_t C, int64_t D,
                           int64_t H, int64_t W)
{
#ifdef WARP_HAVE_AVX2
    const int64_t lim = (int64_t)1 << 24;
    if (D * H * W < INT32_MAX && D < lim && H < lim && W < lim &&
        __builtin_cpu_supports("avx2")) {
        warp_fwd_zeros_avx2(y, src, flow, C, D, H, W);
        return;
    }
#endif
#pragma omp parallel for collapse(2) schedule(static) if (D * H * W >= 4096)
    for (int64_t z = 0; z < D; z++)
        for (int64_t yy = 0; yy < H; yy++)
            for (int64_t xx = 0; xx < W; xx++)
                warp_voxel_zeros(y, src, flow, C, D, H, W, z, yy, xx);
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
