/* warp.c — the spatial transformer of MODEL.md §8 on the CPU: trilinear backward warp with
 * zeros or border padding (forward, and backward to the source and to the flow), nearest warp
 * of images or label maps, and flow composition r ⊕ U (§7.4). Coordinates and weights are in
 * double (common/lm_kmath.h, lm_k_lin_axis). The flow gradient is a per-voxel gather
 * (parallel over voxels); the source gradient is a scatter, parallel over channels only, each
 * channel in voxel order, so the bits never depend on the thread count. The zeros-padding
 * forward and the nearest warp have four-voxel vector paths for AVX2 CPUs that give the scalar
 * code's bits, and both also run on volumes in NIfTI's array order (D
 * fastest; LM_WARP_NIFTI_ORDER), voxel for voxel the same values, so that lm-warp needs no
 * transposes.
 * Not here: integration of velocity fields, resampling between grids.
 */
#include "cpu.h"

#include <math.h>
#include <stdlib.h>
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

/* Where voxel (z, y, x) of a channel lies -- z along D, y along H, x along W: element
 * z·sz + y·sy + x·sx, in either array order (LM_WARP_NIFTI_ORDER). */
typedef struct {
    int64_t D, H, W, N, sz, sy, sx;
    int nifti; /* NIfTI order: rows run along D (sz = 1); else along W (sx = 1) */
} warp_grid;

static warp_grid grid_of(const lm_warp_args *a)
{
    warp_grid g = {a->D, a->H, a->W, (int64_t)a->D * a->H * a->W, 0, 0, 0,
                   (a->padding & LM_WARP_NIFTI_ORDER) != 0};
    if (g.nifti) {
        g.sz = 1, g.sy = g.D, g.sx = g.D * g.H;
    } else {
        g.sz = g.H * g.W, g.sy = g.W, g.sx = 1;
    }
    return g;
}

/* Zero padding, the common case, without the derivative bookkeeping of corners_at: the same
 * weights, corner order and summation order, hence the same bits. One voxel, all channels. */
static inline void warp_voxel_zeros(float *y, const float *src, const float *flow, int64_t C,
                                    const warp_grid *g, int64_t z, int64_t yy, int64_t xx)
{
    const int64_t N = g->N, D = g->D, H = g->H, W = g->W, sz = g->sz, sy = g->sy, sx = g->sx;
    const int64_t p = z * sz + yy * sy + xx * sx;
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
        const int64_t o = z0 * sz + y0 * sy + x0 * sx;
        for (int64_t c = 0; c < C; c++) {
            const float *b = src + c * N + o;
            double v = 0;
            v += w00 * wx0 * b[0];
            v += w00 * tx * b[sx];
            v += w01 * wx0 * b[sy];
            v += w01 * tx * b[sy + sx];
            v += w10 * wx0 * b[sz];
            v += w10 * tx * b[sz + sx];
            v += w11 * wx0 * b[sz + sy];
            v += w11 * tx * b[sz + sy + sx];
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
                        v += wz[a] * wy[b] * wx[e] *
                             sc[(z0 + a) * sz + (y0 + b) * sy + (x0 + e) * sx];
        y[c * N + p] = (float)v;
    }
}

/* Nearest index along one axis, or -1 outside (NaN too). round(q) in [0, n) implies
 * q in (-1, n), the scalar test of the trilinear warp. */
static inline int64_t near_axis(double q, int64_t n)
{
    double r = lm_k_round_even(q);
    return r >= 0 && r < (double)n ? (int64_t)r : -1;
}

static inline void warp_voxel_nearest(void *y, const void *src, const float *flow, int64_t C,
                                      const warp_grid *g, int64_t z, int64_t yy, int64_t xx)
{
    const int64_t N = g->N, p = z * g->sz + yy * g->sy + xx * g->sx;
    int64_t iz = near_axis((double)z + (double)flow[p], g->D),
            iy = near_axis((double)yy + (double)flow[N + p], g->H),
            ix = near_axis((double)xx + (double)flow[2 * N + p], g->W);
    int inside = iz >= 0 && iy >= 0 && ix >= 0;
    int64_t o = inside ? iz * g->sz + iy * g->sy + ix * g->sx : 0;
    for (int64_t c = 0; c < C; c++) /* F32 and I32 alike: the 32 bits are copied */
        ((uint32_t *)y)[c * N + p] = inside ? ((const uint32_t *)src)[c * N + o] : 0;
}

/* Every voxel of the warp_grid *g in scope, in memory order: rows along the fastest axis, the
 * row (r1, r2) being (z, y) = (r1, r2) in the DHW order and (x, y) = (r1, r2) in the NIfTI
 * order. Rows are shared out among the threads; each voxel is computed alone, so the bits
 * never depend on the thread count. */
#define WARP_ROWS(...)                                                                         \
    do {                                                                                       \
        const int64_t R1_ = g->nifti ? g->W : g->D, R2_ = g->H;                                \
        _Pragma("omp parallel for collapse(2) schedule(static) if (g->N >= 4096)")             \
        for (int64_t r1 = 0; r1 < R1_; r1++)                                                   \
            for (int64_t r2 = 0; r2 < R2_; r2++) {                                             \
                __VA_ARGS__                                                                    \
            }                                                                                  \
    } while (0)

static void warp_zeros_scalar(float *y, const float *src, const float *flow, int64_t C,
                              const warp_grid *g)
{
    const int64_t L = g->nifti ? g->D : g->W;
    WARP_ROWS(for (int64_t l = 0; l < L; l++) {
        if (g->nifti)
            warp_voxel_zeros(y, src, flow, C, g, l, r2, r1);
        else
            warp_voxel_zeros(y, src, flow, C, g, r1, r2, l);
    });
}

static void warp_nearest_scalar(void *y, const void *src, const float *flow, int64_t C,
                                const warp_grid *g)
{
    const int64_t L = g->nifti ? g->D : g->W;
    WARP_ROWS(for (int64_t l = 0; l < L; l++) {
        if (g->nifti)
            warp_voxel_nearest(y, src, flow, C, g, l, r2, r1);
        else
            warp_voxel_nearest(y, src, flow, C, g, r1, r2, l);
    });
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
/* The vector paths, for CPUs with AVX2: four voxels of a row at a time, in double as the scalar
 * code, without FMA (target avx2 only), each lane doing the scalar code's operations in its
 * order with its rounding, so the bits are the same:
 *  - floor(q) is the scalar code's "truncation, or -1 below 0" wherever q > -1, and q - floor(q)
 *    the same difference;
 *  - a group whose 32 corners are all inside is found with integer tests on the floors
 *    (unsigned z0 <= D-2 and so on; a NaN, infinite or huge q converts to INT32_MIN and fails)
 *    and sums its corners, loaded as adjacent pairs along the memory-fastest axis, in the
 *    scalar order;
 *  - any other group takes the scalar test q in (-1, n) per axis and masked gathers: a corner
 *    outside reads 0, and adding w·0 = +0 to v changes nothing (v starts at +0 and is never -0),
 *    which is the scalar code skipping it; a lane with every corner outside is set to 0.
 * Offsets are int32: needs D·H·W plus a plane, a row and a voxel < 2^31. */
typedef struct {
    __m128i sz, sy, sx, dlim, hlim, wlim, dmax, hmax, wmax;
    __m256d dn, hn, wn;
    int32_t oz, oy, ox; /* the scalar strides */
} warp_vconst;

/* 4-lane masks from a 4-bit movemask */
static const int32_t warp_lane_masks[16][4] __attribute__((aligned(16))) = {
    {0, 0, 0, 0},   {-1, 0, 0, 0},   {0, -1, 0, 0},   {-1, -1, 0, 0},
    {0, 0, -1, 0},  {-1, 0, -1, 0},  {0, -1, -1, 0},  {-1, -1, -1, 0},
    {0, 0, 0, -1},  {-1, 0, 0, -1},  {0, -1, 0, -1},  {-1, -1, 0, -1},
    {0, 0, -1, -1}, {-1, 0, -1, -1}, {0, -1, -1, -1}, {-1, -1, -1, -1}};

__attribute__((target("avx2"))) static warp_vconst warp_vconst_of(const warp_grid *g)
{
    warp_vconst k;
    k.oz = (int32_t)g->sz, k.oy = (int32_t)g->sy, k.ox = (int32_t)g->sx;
    k.sz = _mm_set1_epi32(k.oz), k.sy = _mm_set1_epi32(k.oy), k.sx = _mm_set1_epi32(k.ox);
    k.dlim = _mm_set1_epi32((int32_t)g->D - 2), k.hlim = _mm_set1_epi32((int32_t)g->H - 2);
    k.wlim = _mm_set1_epi32((int32_t)g->W - 2);
    k.dmax = _mm_set1_epi32((int32_t)g->D - 1), k.hmax = _mm_set1_epi32((int32_t)g->H - 1);
    k.wmax = _mm_set1_epi32((int32_t)g->W - 1);
    k.dn = _mm256_set1_pd((double)g->D), k.hn = _mm256_set1_pd((double)g->H);
    k.wn = _mm256_set1_pd((double)g->W);
    return k;
}

/* v + w·(double)value, the scalar code's "v += w00 * wx0 * b[..]" with w = w00·wx0 */
#define WARP_ACC(v, w, x) _mm256_add_pd(v, _mm256_mul_pd(w, _mm256_cvtps_pd(x)))

/* The corner pairs (s[o_l], s[o_l + 1]) of the four lanes: lo = the first of each pair, hi =
 * the second, as floats in lane order. */
#define WARP_PAIRS(s, o, lo, hi)                                                               \
    do {                                                                                       \
        __m128 a_ = _mm_castpd_ps(_mm_load_sd((const double *)((s) + (o)[0])));                 \
        a_ = _mm_loadh_pi(a_, (const __m64 *)((s) + (o)[1]));                                   \
        __m128 b_ = _mm_castpd_ps(_mm_load_sd((const double *)((s) + (o)[2])));                 \
        b_ = _mm_loadh_pi(b_, (const __m64 *)((s) + (o)[3]));                                   \
        lo = _mm_shuffle_ps(a_, b_, _MM_SHUFFLE(2, 0, 2, 0));                                   \
        hi = _mm_shuffle_ps(a_, b_, _MM_SHUFFLE(3, 1, 3, 1));                                   \
    } while (0)

/* Four voxels at positions (qz, qy, qx) = (pz, py, px) + flow, lanes at p .. p+3 in memory.
 * nifti is a constant where this is inlined. */
__attribute__((target("avx2"), always_inline)) static inline void
warp4_zeros(float *y, const float *src, const float *flow, int64_t C, int64_t N, int64_t p,
            __m256d pz, __m256d py, __m256d px, const warp_vconst *k, const int nifti)
{
    const __m256d qz = _mm256_add_pd(pz, _mm256_cvtps_pd(_mm_loadu_ps(flow + p)));
    const __m256d qy = _mm256_add_pd(py, _mm256_cvtps_pd(_mm_loadu_ps(flow + N + p)));
    const __m256d qx = _mm256_add_pd(px, _mm256_cvtps_pd(_mm_loadu_ps(flow + 2 * N + p)));
    const __m256d fz = _mm256_floor_pd(qz), fy = _mm256_floor_pd(qy), fx = _mm256_floor_pd(qx);
    const __m128i iz = _mm256_cvttpd_epi32(fz), iy = _mm256_cvttpd_epi32(fy),
                  ix = _mm256_cvttpd_epi32(fx);
    const __m256d one = _mm256_set1_pd(1.0);
    const __m256d tz = _mm256_sub_pd(qz, fz), ty = _mm256_sub_pd(qy, fy),
                  tx = _mm256_sub_pd(qx, fx);
    const __m256d wz0 = _mm256_sub_pd(one, tz), wy0 = _mm256_sub_pd(one, ty),
                  wx0 = _mm256_sub_pd(one, tx);
    const __m256d w00 = _mm256_mul_pd(wz0, wy0), w01 = _mm256_mul_pd(wz0, ty),
                  w10 = _mm256_mul_pd(tz, wy0), w11 = _mm256_mul_pd(tz, ty);
    const __m128i o = _mm_add_epi32(_mm_add_epi32(_mm_mullo_epi32(iz, k->sz),
                                                  _mm_mullo_epi32(iy, k->sy)),
                                    _mm_mullo_epi32(ix, k->sx));
    const __m128i inner = _mm_and_si128(
        _mm_and_si128(_mm_cmpeq_epi32(_mm_min_epu32(iz, k->dlim), iz),
                      _mm_cmpeq_epi32(_mm_min_epu32(iy, k->hlim), iy)),
        _mm_cmpeq_epi32(_mm_min_epu32(ix, k->wlim), ix));
    if (_mm_movemask_ps(_mm_castsi128_ps(inner)) == 15) {
        int32_t oi[4];
        _mm_storeu_si128((__m128i *)oi, o);
        /* the corner weights, in the scalar order: (z, y, x) = 000, 001, 010, ..., 111 */
        const __m256d k0 = _mm256_mul_pd(w00, wx0), k1 = _mm256_mul_pd(w00, tx),
                      k2 = _mm256_mul_pd(w01, wx0), k3 = _mm256_mul_pd(w01, tx),
                      k4 = _mm256_mul_pd(w10, wx0), k5 = _mm256_mul_pd(w10, tx),
                      k6 = _mm256_mul_pd(w11, wx0), k7 = _mm256_mul_pd(w11, tx);
        /* the four rows of corner pairs: offsets 0, r1, r2, r1 + r2 */
        const int32_t r1 = nifti ? k->ox : k->oy, r2 = nifti ? k->oy : k->oz;
        for (int64_t c = 0; c < C; c++) {
            const float *s = src + c * N;
            /* The hardware prefetchers follow the four rows of corners while the field keeps
             * them, but lose them where it moves them (a smooth field does so all along a row):
             * ask for the lines 256 bytes ahead on the rows of this group. */
            const char *pf = (const char *)(s + oi[3] + 64);
            _mm_prefetch(pf, _MM_HINT_T0);
            _mm_prefetch(pf + 4 * r1, _MM_HINT_T0);
            _mm_prefetch(pf + 4 * r2, _MM_HINT_T0);
            _mm_prefetch(pf + 4 * (r1 + r2), _MM_HINT_T0);
            __m256d v = _mm256_setzero_pd(); /* as the scalar v = 0 */
            __m128 a0, a1, b0, b1, c0, c1, d0, d1;
            WARP_PAIRS(s, oi, a0, a1);
            WARP_PAIRS(s + r1, oi, b0, b1);
            WARP_PAIRS(s + r2, oi, c0, c1);
            WARP_PAIRS(s + r2 + r1, oi, d0, d1);
            if (!nifti) { /* pairs along x: corners (0,1), (2,3), (4,5), (6,7) */
                v = WARP_ACC(v, k0, a0), v = WARP_ACC(v, k1, a1);
                v = WARP_ACC(v, k2, b0), v = WARP_ACC(v, k3, b1);
                v = WARP_ACC(v, k4, c0), v = WARP_ACC(v, k5, c1);
                v = WARP_ACC(v, k6, d0), v = WARP_ACC(v, k7, d1);
            } else { /* pairs along z: corners (0,4), (1,5), (2,6), (3,7) */
                v = WARP_ACC(v, k0, a0), v = WARP_ACC(v, k1, b0);
                v = WARP_ACC(v, k2, c0), v = WARP_ACC(v, k3, d0);
                v = WARP_ACC(v, k4, a1), v = WARP_ACC(v, k5, b1);
                v = WARP_ACC(v, k6, c1), v = WARP_ACC(v, k7, d1);
            }
            _mm_storeu_ps(y + c * N + p, _mm256_cvtpd_ps(v));
        }
        return;
    }
    const __m256d m1 = _mm256_set1_pd(-1.0);
    const __m256d ok = _mm256_and_pd(
        _mm256_and_pd(_mm256_and_pd(_mm256_cmp_pd(qz, m1, _CMP_GT_OQ),
                                    _mm256_cmp_pd(qz, k->dn, _CMP_LT_OQ)),
                      _mm256_and_pd(_mm256_cmp_pd(qy, m1, _CMP_GT_OQ),
                                    _mm256_cmp_pd(qy, k->hn, _CMP_LT_OQ))),
        _mm256_and_pd(_mm256_cmp_pd(qx, m1, _CMP_GT_OQ), _mm256_cmp_pd(qx, k->wn, _CMP_LT_OQ)));
    const int okm = _mm256_movemask_pd(ok);
    if (!okm) {
        for (int64_t c = 0; c < C; c++)
            _mm_storeu_ps(y + c * N + p, _mm_setzero_ps());
        return;
    }
    /* lanes with q in (-1, n) on every axis have floors in [-1, n-1] */
    const __m128i okv = _mm_load_si128((const __m128i *)warp_lane_masks[okm]),
                  mone = _mm_set1_epi32(-1);
    const __m128i z0 = _mm_and_si128(okv, _mm_cmpgt_epi32(iz, mone)),
                  z1 = _mm_and_si128(okv, _mm_cmpgt_epi32(k->dmax, iz)),
                  y0 = _mm_cmpgt_epi32(iy, mone), y1 = _mm_cmpgt_epi32(k->hmax, iy),
                  x0 = _mm_cmpgt_epi32(ix, mone), x1 = _mm_cmpgt_epi32(k->wmax, ix);
    const __m128i m0 = _mm_and_si128(_mm_and_si128(z0, y0), x0),
                  m1_ = _mm_and_si128(_mm_and_si128(z0, y0), x1),
                  m2 = _mm_and_si128(_mm_and_si128(z0, y1), x0),
                  m3 = _mm_and_si128(_mm_and_si128(z0, y1), x1),
                  m4 = _mm_and_si128(_mm_and_si128(z1, y0), x0),
                  m5 = _mm_and_si128(_mm_and_si128(z1, y0), x1),
                  m6 = _mm_and_si128(_mm_and_si128(z1, y1), x0),
                  m7 = _mm_and_si128(_mm_and_si128(z1, y1), x1);
    const __m128i o1 = _mm_add_epi32(o, k->sx), o2 = _mm_add_epi32(o, k->sy),
                  o3 = _mm_add_epi32(o2, k->sx), o4 = _mm_add_epi32(o, k->sz),
                  o5 = _mm_add_epi32(o4, k->sx), o6 = _mm_add_epi32(o4, k->sy),
                  o7 = _mm_add_epi32(o6, k->sx);
    const __m256d k0 = _mm256_mul_pd(w00, wx0), k1 = _mm256_mul_pd(w00, tx),
                  k2 = _mm256_mul_pd(w01, wx0), k3 = _mm256_mul_pd(w01, tx),
                  k4 = _mm256_mul_pd(w10, wx0), k5 = _mm256_mul_pd(w10, tx),
                  k6 = _mm256_mul_pd(w11, wx0), k7 = _mm256_mul_pd(w11, tx);
    const __m128 zf = _mm_setzero_ps();
#define WARP_MG(off, m) _mm_mask_i32gather_ps(zf, s, off, _mm_castsi128_ps(m), 4)
    for (int64_t c = 0; c < C; c++) {
        const float *s = src + c * N;
        __m256d v = _mm256_setzero_pd();
        v = WARP_ACC(v, k0, WARP_MG(o, m0)), v = WARP_ACC(v, k1, WARP_MG(o1, m1_));
        v = WARP_ACC(v, k2, WARP_MG(o2, m2)), v = WARP_ACC(v, k3, WARP_MG(o3, m3));
        v = WARP_ACC(v, k4, WARP_MG(o4, m4)), v = WARP_ACC(v, k5, WARP_MG(o5, m5));
        v = WARP_ACC(v, k6, WARP_MG(o6, m6)), v = WARP_ACC(v, k7, WARP_MG(o7, m7));
        v = _mm256_and_pd(v, ok); /* NaN weights of lanes outside */
        _mm_storeu_ps(y + c * N + p, _mm256_cvtpd_ps(v));
    }
#undef WARP_MG
}

/* the rows of warp_zeros_avx2, nifti and C constants where they are literals */
#define WARP_ZEROS_ROWS(nifti, C)                                                              \
    WARP_ROWS({                                                                                \
        const __m256d a = _mm256_set1_pd((double)r1), b = _mm256_set1_pd((double)r2);          \
        const int64_t row = r1 * ((nifti) ? g->sx : g->sz) + r2 * g->sy;                       \
        __m256d lanes = iota;                                                                  \
        int64_t l = 0;                                                                         \
        for (; l + 4 <= L; l += 4, lanes = _mm256_add_pd(lanes, four))                         \
            warp4_zeros(y, src, flow, C, N, row + l, (nifti) ? lanes : a, b,                   \
                        (nifti) ? a : lanes, &k, nifti);                                       \
        for (; l < L; l++)                                                                     \
            warp_voxel_zeros(y, src, flow, C, g, (nifti) ? l : r1, r2, (nifti) ? r1 : l);      \
    })

__attribute__((target("avx2"))) static void
warp_zeros_avx2(float *y, const float *src, const float *flow, int64_t C, const warp_grid *g)
{
    const warp_vconst k = warp_vconst_of(g);
    const __m256d iota = _mm256_set_pd(3, 2, 1, 0), four = _mm256_set1_pd(4.0);
    const int64_t N = g->N, L = g->nifti ? g->D : g->W;
    if (!g->nifti && C == 1) /* one channel, the common case, without a channel loop */
        WARP_ZEROS_ROWS(0, 1);
    else if (!g->nifti)
        WARP_ZEROS_ROWS(0, C);
    else if (C == 1)
        WARP_ZEROS_ROWS(1, 1);
    else
        WARP_ZEROS_ROWS(1, C);
}
#undef WARP_ZEROS_ROWS

/* Nearest, four voxels: r = round(q) in the current rounding mode (nearbyint's), inside when
 * 0 <= r < n on every axis; a masked gather copies the 32 bits (F32 or I32). */
__attribute__((target("avx2"), always_inline)) static inline void
warp4_nearest(uint32_t *y, const uint32_t *src, const float *flow, int64_t C, int64_t N,
              int64_t p, __m256d pz, __m256d py, __m256d px, const warp_vconst *k)
{
    const int rm = _MM_FROUND_CUR_DIRECTION;
    const __m256d rz =
        _mm256_round_pd(_mm256_add_pd(pz, _mm256_cvtps_pd(_mm_loadu_ps(flow + p))), rm);
    const __m256d ry =
        _mm256_round_pd(_mm256_add_pd(py, _mm256_cvtps_pd(_mm_loadu_ps(flow + N + p))), rm);
    const __m256d rx =
        _mm256_round_pd(_mm256_add_pd(px, _mm256_cvtps_pd(_mm_loadu_ps(flow + 2 * N + p))), rm);
    const __m256d zero = _mm256_setzero_pd();
    const __m256d in = _mm256_and_pd(
        _mm256_and_pd(_mm256_and_pd(_mm256_cmp_pd(rz, zero, _CMP_GE_OQ),
                                    _mm256_cmp_pd(rz, k->dn, _CMP_LT_OQ)),
                      _mm256_and_pd(_mm256_cmp_pd(ry, zero, _CMP_GE_OQ),
                                    _mm256_cmp_pd(ry, k->hn, _CMP_LT_OQ))),
        _mm256_and_pd(_mm256_cmp_pd(rx, zero, _CMP_GE_OQ), _mm256_cmp_pd(rx, k->wn, _CMP_LT_OQ)));
    const int inm = _mm256_movemask_pd(in);
    if (!inm) {
        for (int64_t c = 0; c < C; c++)
            _mm_storeu_si128((__m128i *)(y + c * N + p), _mm_setzero_si128());
        return;
    }
    const __m128i o = _mm_add_epi32(
        _mm_add_epi32(_mm_mullo_epi32(_mm256_cvttpd_epi32(rz), k->sz),
                      _mm_mullo_epi32(_mm256_cvttpd_epi32(ry), k->sy)),
        _mm_mullo_epi32(_mm256_cvttpd_epi32(rx), k->sx));
    /* four scalar loads (lanes outside read element 0, then masked) beat a masked gather;
     * the line 256 bytes ahead is asked for, as in warp4_zeros */
    const __m128i m = _mm_load_si128((const __m128i *)warp_lane_masks[inm]);
    int32_t oi[4];
    _mm_storeu_si128((__m128i *)oi, _mm_and_si128(o, m));
    for (int64_t c = 0; c < C; c++) {
        const int32_t *s = (const int32_t *)(src + c * N);
        _mm_prefetch((const char *)(s + oi[3] + 64), _MM_HINT_T0);
        _mm_storeu_si128((__m128i *)(y + c * N + p),
                         _mm_and_si128(_mm_setr_epi32(s[oi[0]], s[oi[1]], s[oi[2]], s[oi[3]]), m));
    }
}

__attribute__((target("avx2"))) static void
warp_nearest_avx2(uint32_t *y, const uint32_t *src, const float *flow, int64_t C,
                  const warp_grid *g)
{
    const warp_vconst k = warp_vconst_of(g);
    const __m256d iota = _mm256_set_pd(3, 2, 1, 0);
    const int64_t N = g->N, L = g->nifti ? g->D : g->W;
    WARP_ROWS({
        const __m256d a = _mm256_set1_pd((double)r1), b = _mm256_set1_pd((double)r2);
        const int64_t row = r1 * (g->nifti ? g->sx : g->sz) + r2 * g->sy;
        int64_t l = 0;
        for (; l + 4 <= L; l += 4) {
            const __m256d lanes = _mm256_add_pd(_mm256_set1_pd((double)l), iota);
            if (g->nifti)
                warp4_nearest(y, src, flow, C, N, row + l, lanes, b, a, &k);
            else
                warp4_nearest(y, src, flow, C, N, row + l, a, b, lanes, &k);
        }
        for (; l < L; l++) {
            if (g->nifti)
                warp_voxel_nearest(y, src, flow, C, g, l, r2, r1);
            else
                warp_voxel_nearest(y, src, flow, C, g, r1, r2, l);
        }
    });
}
#define WARP_HAVE_AVX2 1
#endif

/* The vector paths, where the CPU has AVX2 and the offsets fit (LM_WARP_SCALAR=1 in the
 * environment forces the scalar code, for tests that compare the two). */
static int warp_use_avx2(const warp_grid *g)
{
#ifdef WARP_HAVE_AVX2
    if (g->N + g->sz + g->sy + g->sx < INT32_MAX && __builtin_cpu_supports("avx2")) {
        const char *e = getenv("LM_WARP_SCALAR");
        return !(e && *e == '1');
    }
#else
    (void)g;
#endif
    return 0;
}

int lm_cpu_warp_fwd(lm_backend *be, float *y, const float *src, const float *flow,
                    const lm_warp_args *a)
{
    (void)be;
    if (warp_check(a->C, a->D, a->H, a->W, "warp") < 0)
        return -1;
    LM_CPU_CHECK(a->padding == LM_PAD_ZEROS || a->padding == LM_PAD_BORDER ||
                     a->padding == (LM_PAD_ZEROS | LM_WARP_NIFTI_ORDER),
                 "warp: unknown padding %d", a->padding);
    const int64_t D = a->D, H = a->H, W = a->W, N = D * H * W;
    if (a->padding != LM_PAD_BORDER) {
        const warp_grid g = grid_of(a);
#ifdef WARP_HAVE_AVX2
        if (warp_use_avx2(&g)) {
            warp_zeros_avx2(y, src, flow, a->C, &g);
            return 0;
        }
#endif
        warp_zeros_scalar(y, src, flow, a->C, &g);
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

int lm_cpu_warp_nearest(lm_backend *be, void *y, const void *src, const float *flow, lm_dtype dt,
                        const lm_warp_args *a)
{
    (void)be;
    if (warp_check(a->C, a->D, a->H, a->W, "warp_nearest") < 0)
        return -1;
    LM_CPU_CHECK((a->padding & ~LM_WARP_NIFTI_ORDER) == LM_PAD_ZEROS,
                 "warp_nearest: only zeros padding");
    LM_CPU_CHECK(dt == LM_F32 || dt == LM_I32, "warp_nearest: dtype must be F32 or I32 (got %s)",
                 lm_cpu_dtype_name(dt));
    const warp_grid g = grid_of(a);
#ifdef WARP_HAVE_AVX2
    if (warp_use_avx2(&g)) {
        warp_nearest_avx2(y, src, flow, a->C, &g);
        return 0;
    }
#endif
    warp_nearest_scalar(y, src, flow, a->C, &g);
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
