/* warp.c — the spatial transformer of MODEL.md §8 on the CPU: trilinear backward warp with
 * zeros or border padding (forward, and backward to the source and to the flow), nearest warp
 * of images or label maps, and flow composition r ⊕ U (§7.4). Coordinates and weights are in
 * double (common/lm_kmath.h, lm_k_lin_axis) but for the zeros-padding forward, which works in
 * float, as PyTorch's grid_sample does (the CUDA backend keeps double). The flow gradient is a
 * per-voxel gather (parallel over voxels); the source gradient is a scatter, parallel over
 * channels only, each channel in voxel order, so the bits never depend on the thread count. The
 * zeros-padding forward interpolates along x, then y, then z (fma, in float) and has an
 * eight-voxel vector path for AVX2+FMA CPUs; the nearest warp has a four-voxel one for AVX2
 * CPUs; both vector paths give the scalar code's bits, and both also run on volumes in NIfTI's
 * array order (D fastest; LM_WARP_NIFTI_ORDER), voxel for voxel the same values, so that
 * lm-warp needs no transposes.
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

/* One axis of a sample point q = pos + f: i = floor(q) = pos + floor(f), exact, and
 * t = q - floor(q) = f - floor(f) in float (exact but where f is tiny and negative, then
 * rounded once, possibly to 1: corner i then weighs 0, i + 1 = pos all). Returns whether q is
 * in (-1, n), the test that some corner is inside; NaN, infinite and huge f (floor outside the
 * int32 range, where the vector code's conversion gives INT32_MIN) are outside. */
static inline int warp_axis(float f, int64_t pos, int64_t n, int64_t *i, float *t)
{
    const float fl = floorf(f);
    if (!(fl >= -2147483648.0f && fl < 2147483648.0f))
        return 0;
    *i = pos + (int64_t)fl;
    *t = f - fl;
    return *i >= -1 && *i <= n - 1 && !(*i == -1 && f == fl);
}

/* (1 - t)·a + t·b as fma(t, b, w·a), w = 1 - t */
#define WARP_LERP(w, t, a, b) fmaf(t, b, (w) * (a))

/* Zero padding, the common case, without the derivative bookkeeping of corners_at: nested
 * linear interpolation in float, along x, then y, then z, a corner outside reading 0; the
 * vector path does the same operations, hence the same bits. One voxel, all channels. */
static inline void warp_voxel_zeros(float *y, const float *src, const float *flow, int64_t C,
                                    const warp_grid *g, int64_t z, int64_t yy, int64_t xx)
{
    const int64_t N = g->N, D = g->D, H = g->H, W = g->W, sz = g->sz, sy = g->sy, sx = g->sx;
    const int64_t p = z * sz + yy * sy + xx * sx;
    int64_t z0 = 0, y0 = 0, x0 = 0;
    float tz = 0, ty = 0, tx = 0;
    if (!(warp_axis(flow[p], z, D, &z0, &tz) & warp_axis(flow[N + p], yy, H, &y0, &ty) &
          warp_axis(flow[2 * N + p], xx, W, &x0, &tx))) { /* every corner outside */
        for (int64_t c = 0; c < C; c++)
            y[c * N + p] = 0.0f;
        return;
    }
    const float wz = 1.0f - tz, wy = 1.0f - ty, wx = 1.0f - tx;
    const int inz[2] = {z0 >= 0, z0 + 1 < D}, iny[2] = {y0 >= 0, y0 + 1 < H},
              inx[2] = {x0 >= 0, x0 + 1 < W};
    for (int64_t c = 0; c < C; c++) {
        const float *sc = src + c * N;
        float s[2][2][2];
        for (int a = 0; a < 2; a++)
            for (int b = 0; b < 2; b++)
                for (int e = 0; e < 2; e++)
                    s[a][b][e] = inz[a] && iny[b] && inx[e]
                                     ? sc[(z0 + a) * sz + (y0 + b) * sy + (x0 + e) * sx]
                                     : 0.0f;
        const float h00 = WARP_LERP(wx, tx, s[0][0][0], s[0][0][1]),
                    h01 = WARP_LERP(wx, tx, s[0][1][0], s[0][1][1]),
                    h10 = WARP_LERP(wx, tx, s[1][0][0], s[1][0][1]),
                    h11 = WARP_LERP(wx, tx, s[1][1][0], s[1][1][1]);
        const float g0 = WARP_LERP(wy, ty, h00, h01), g1 = WARP_LERP(wy, ty, h10, h11);
        y[c * N + p] = WARP_LERP(wz, tz, g0, g1);
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
/* The trilinear vector path (zeros padding), for CPUs with AVX2 and FMA: eight voxels of a row
 * at a time (in halves of four where some corner is outside). Each lane does the scalar code's
 * operations in its order with its rounding, so the bits are the same:
 *  - per axis, floor(f) in float, converted to int32 (NaN, infinite and huge f give INT32_MIN)
 *    and added to the lane's position, wrapping: what wraps is far outside, as it is for the
 *    scalar code in int64; t = f - floor(f), w = 1 - t, in float;
 *  - eight voxels whose 64 corners are all inside (0 <= i <= n-2 on every axis, tested as the
 *    sign of i | (n-2-i)) read their corners as adjacent pairs along the memory-fastest axis
 *    (the pair axis P; rows of pairs along the other two) and interpolate as WARP_LERP;
 *  - any other eight read the same rows of pairs from clamped places and put the corners
 *    right (warp8_clamp), or, on grids with an axis of extent 1, four at a time take masked
 *    gathers (warp4_edge). Both take the scalar test q in (-1, n) per axis: a corner outside reads 0,
 *    as in the scalar code, and a lane with every corner outside is set to 0.
 * A row is done in chunks of up to WARP_CHUNK groups of eight, in two passes: the first finds
 * the groups' first corners and whether they are all inside, the second reads and interpolates,
 * so that the reads of one group need not wait for the address arithmetic of the next.
 * Offsets are int32: needs D·H·W plus a plane, a row and a voxel < 2^31. */
typedef struct {
    __m256i n[3], nm1[3], nm2[3]; /* n, n - 1 and n - 2 per axis (z, y, x) */
    __m256i sz, sy, sx;           /* the strides */
    int32_t oz, oy, ox;
    int all2; /* every extent >= 2: warp8_clamp can take any eight voxels */
} warp_tconst;

__attribute__((target("avx2"))) static warp_tconst warp_tconst_of(const warp_grid *g)
{
    warp_tconst k;
    const int64_t n[3] = {g->D, g->H, g->W};
    for (int d = 0; d < 3; d++) {
        k.n[d] = _mm256_set1_epi32((int32_t)n[d]);
        k.nm1[d] = _mm256_set1_epi32((int32_t)n[d] - 1);
        k.nm2[d] = _mm256_set1_epi32((int32_t)n[d] - 2);
    }
    k.oz = (int32_t)g->sz, k.oy = (int32_t)g->sy, k.ox = (int32_t)g->sx;
    k.sz = _mm256_set1_epi32(k.oz), k.sy = _mm256_set1_epi32(k.oy), k.sx = _mm256_set1_epi32(k.ox);
    k.all2 = g->D >= 2 && g->H >= 2 && g->W >= 2;
    return k;
}

/* WARP_LERP of four lanes, and of eight */
#define WARP_VLERP(w, t, a, b) _mm_fmadd_ps(t, b, _mm_mul_ps(w, a))
#define WARP_VLERP8(w, t, a, b) _mm256_fmadd_ps(t, b, _mm256_mul_ps(w, a))

/* The interpolation of four (eight) voxels from their eight corners c[zyx], with the weights
 * w*, t* in scope: along x, then y, then z, as the scalar code (L: the lerp of four or eight) */
#define WARP_INTERP_L(L, c000, c001, c010, c011, c100, c101, c110, c111)                      \
    L(wz, tz, L(wy, ty, L(wx, tx, c000, c001), L(wx, tx, c010, c011)),                         \
      L(wy, ty, L(wx, tx, c100, c101), L(wx, tx, c110, c111)))
#define WARP_INTERP4(...) WARP_INTERP_L(WARP_VLERP, __VA_ARGS__)
#define WARP_INTERP8(...) WARP_INTERP_L(WARP_VLERP8, __VA_ARGS__)

/* The same from the rows of pairs of WARP_ROWS4: pairs along x, rows y0, y1, then z1 in the
 * DHW order; pairs along z, rows x0, x1, then y1 in the NIfTI order */
#define WARP_INTERP_ROWS(nifti)                                                                \
    ((nifti) ? WARP_INTERP4(a0, b0, c0, d0, a1, b1, c1, d1)                                    \
             : WARP_INTERP4(a0, a1, b0, b1, c0, c1, d0, d1))
#define WARP_INTERP_ROWS8(nifti)                                                               \
    ((nifti) ? WARP_INTERP8(a0, b0, c0, d0, a1, b1, c1, d1)                                    \
             : WARP_INTERP8(a0, a1, b0, b1, c0, c1, d0, d1))

/* t = f - floor(f) of four lanes, and of eight */
__attribute__((target("avx2"), always_inline)) static inline __m128 warp_t(__m128 f)
{
    return _mm_sub_ps(f, _mm_floor_ps(f));
}
__attribute__((target("avx2"), always_inline)) static inline __m256 warp_t8(__m256 f)
{
    return _mm256_sub_ps(f, _mm256_floor_ps(f));
}

/* w = 1 - t of the three axes, in scope; four lanes, and eight */
#define WARP_W                                                                                 \
    const __m128 one_ = _mm_set1_ps(1.0f), wz = _mm_sub_ps(one_, tz), wy = _mm_sub_ps(one_, ty), \
                 wx = _mm_sub_ps(one_, tx)
#define WARP_W8                                                                                \
    const __m256 one_ = _mm256_set1_ps(1.0f), wz = _mm256_sub_ps(one_, tz),                    \
                 wy = _mm256_sub_ps(one_, ty), wx = _mm256_sub_ps(one_, tx)

/* The four rows of corner pairs of four lanes, at s + o[l] + {0, r1, r2, r12}:
 * the firsts a0, b0, c0, d0 and the seconds a1, b1, c1, d1 of the rows; loaded lane by lane,
 * lanes 0 and 1 into the low and high halves of x*, lanes 2 and 3 into w* */
#define WARP_ROWS4(s, o, r1, r2, r12)                                                          \
    const float *q_ = (s) + (o)[0];                                                            \
    __m128 x0_ = _mm_castpd_ps(_mm_load_sd((const double *)q_)),                               \
           x1_ = _mm_castpd_ps(_mm_load_sd((const double *)(q_ + (r1)))),                      \
           x2_ = _mm_castpd_ps(_mm_load_sd((const double *)(q_ + (r2)))),                      \
           x3_ = _mm_castpd_ps(_mm_load_sd((const double *)(q_ + (r12))));                     \
    q_ = (s) + (o)[1];                                                                         \
    x0_ = _mm_loadh_pi(x0_, (const __m64 *)q_);                                                \
    x1_ = _mm_loadh_pi(x1_, (const __m64 *)(q_ + (r1)));                                       \
    x2_ = _mm_loadh_pi(x2_, (const __m64 *)(q_ + (r2)));                                       \
    x3_ = _mm_loadh_pi(x3_, (const __m64 *)(q_ + (r12)));                                      \
    q_ = (s) + (o)[2];                                                                         \
    __m128 w0_ = _mm_castpd_ps(_mm_load_sd((const double *)q_)),                               \
           w1_ = _mm_castpd_ps(_mm_load_sd((const double *)(q_ + (r1)))),                      \
           w2_ = _mm_castpd_ps(_mm_load_sd((const double *)(q_ + (r2)))),                      \
           w3_ = _mm_castpd_ps(_mm_load_sd((const double *)(q_ + (r12))));                     \
    q_ = (s) + (o)[3];                                                                         \
    w0_ = _mm_loadh_pi(w0_, (const __m64 *)q_);                                                \
    w1_ = _mm_loadh_pi(w1_, (const __m64 *)(q_ + (r1)));                                       \
    w2_ = _mm_loadh_pi(w2_, (const __m64 *)(q_ + (r2)));                                       \
    w3_ = _mm_loadh_pi(w3_, (const __m64 *)(q_ + (r12)));                                      \
    __m128 a0 = _mm_shuffle_ps(x0_, w0_, _MM_SHUFFLE(2, 0, 2, 0)),                             \
           a1 = _mm_shuffle_ps(x0_, w0_, _MM_SHUFFLE(3, 1, 3, 1)),                             \
           b0 = _mm_shuffle_ps(x1_, w1_, _MM_SHUFFLE(2, 0, 2, 0)),                             \
           b1 = _mm_shuffle_ps(x1_, w1_, _MM_SHUFFLE(3, 1, 3, 1)),                             \
           c0 = _mm_shuffle_ps(x2_, w2_, _MM_SHUFFLE(2, 0, 2, 0)),                             \
           c1 = _mm_shuffle_ps(x2_, w2_, _MM_SHUFFLE(3, 1, 3, 1)),                             \
           d0 = _mm_shuffle_ps(x3_, w3_, _MM_SHUFFLE(2, 0, 2, 0)),                             \
           d1 = _mm_shuffle_ps(x3_, w3_, _MM_SHUFFLE(3, 1, 3, 1))

/* Two pairs, at q + o[l] and q + o[m], in the low and high halves of an __m128 */
#define WARP_PAIR2(q, o, l, m)                                                                 \
    _mm_loadh_pi(_mm_castpd_ps(_mm_load_sd((const double *)((q) + (o)[l]))),                   \
                 (const __m64 *)((q) + (o)[m]))
/* The same for eight lanes: the firsts f and seconds s of the pairs of row q of the lanes
 * o[0..7], lanes in order (shuffle_ps works within 128-bit halves: lanes 0, 1, 4, 5 in one
 * register, 2, 3, 6, 7 in the other) */
#define WARP_ROW8(q, o, f, s)                                                                  \
    const __m256 f##A_ = _mm256_set_m128(WARP_PAIR2(q, o, 4, 5), WARP_PAIR2(q, o, 0, 1)),       \
                 f##B_ = _mm256_set_m128(WARP_PAIR2(q, o, 6, 7), WARP_PAIR2(q, o, 2, 3));       \
    const __m256 f = _mm256_shuffle_ps(f##A_, f##B_, _MM_SHUFFLE(2, 0, 2, 0)),                 \
                 s = _mm256_shuffle_ps(f##A_, f##B_, _MM_SHUFFLE(3, 1, 3, 1))
#define WARP_ROWS8(s_, o, r1, r2, r12)                                                         \
    WARP_ROW8((s_), o, a0, a1);                                                                \
    WARP_ROW8((s_) + (r1), o, b0, b1);                                                         \
    WARP_ROW8((s_) + (r2), o, c0, c1);                                                         \
    WARP_ROW8((s_) + (r12), o, d0, d1)

/* Four voxels, all of whose corners are inside, at element p: o = their first corners,
 * t* = their fractions, r1 and r2 the offsets of the second and third rows of corner pairs
 * (the fourth at r1 + r2). nifti is a constant where this is inlined. */
__attribute__((target("avx2,fma"), always_inline)) static inline void
warp4_inner(float *y, const float *src, int64_t C, int64_t N, int64_t p, const int32_t *o,
            __m128 tz, __m128 ty, __m128 tx, const int64_t r1, const int64_t r2, const int nifti)
{
    WARP_W;
    const int64_t r12 = r1 + r2;
    for (int64_t c = 0; c < C; c++) {
        WARP_ROWS4(src + c * N, o, r1, r2, r12);
        _mm_storeu_ps(y + c * N + p, WARP_INTERP_ROWS(nifti));
    }
}

/* The same for eight voxels */
__attribute__((target("avx2,fma"), always_inline)) static inline void
warp8_inner_rows(float *y, const float *src, int64_t C, int64_t N, int64_t p, const int32_t *o,
                 __m256 tz, __m256 ty, __m256 tx, const int64_t r1, const int64_t r2,
                 const int nifti)
{
    WARP_W8;
    const int64_t r12 = r1 + r2;
    for (int64_t c = 0; c < C; c++) {
        const float *s = src + c * N;
        WARP_ROWS8(s, o, r1, r2, r12);
        _mm256_storeu_ps(y + c * N + p, WARP_INTERP_ROWS8(nifti));
    }
}

/* Any four voxels: the scalar test and masked gathers. o = the first corners, f* the
 * displacements, l* their floors, i* the floors of the sample points. */
__attribute__((target("avx2,fma"), always_inline)) static inline void
warp4_edge(float *y, const float *src, int64_t C, int64_t N, int64_t p, __m128i o, __m128i iz,
           __m128i iy, __m128i ix, __m128 fz, __m128 fy, __m128 fx, __m128 lz, __m128 ly,
           __m128 lx, const warp_tconst *k)
{
    const __m128i mone = _mm_set1_epi32(-1);
    const __m128 zf = _mm_setzero_ps();
    /* q in (-1, n): -1 <= i <= n - 1, and not q = -1 (i = -1, f integral) */
#define WARP_OK(i, f, l, d)                                                                    \
    _mm_andnot_si128(_mm_and_si128(_mm_cmpeq_epi32(i, mone),                                   \
                                   _mm_castps_si128(_mm_cmpeq_ps(f, l))),                      \
                     _mm_and_si128(_mm_cmpgt_epi32(i, _mm_set1_epi32(-2)),                     \
                                   _mm_cmpgt_epi32(_mm256_castsi256_si128(k->n[d]), i)))
    const __m128i ok = _mm_and_si128(_mm_and_si128(WARP_OK(iz, fz, lz, 0), WARP_OK(iy, fy, ly, 1)),
                                     WARP_OK(ix, fx, lx, 2));
#undef WARP_OK
    if (_mm_testz_si128(ok, ok)) {
        for (int64_t c = 0; c < C; c++)
            _mm_storeu_ps(y + c * N + p, zf);
        return;
    }
    const __m128 tz = warp_t(fz), ty = warp_t(fy), tx = warp_t(fx);
    WARP_W;
    const __m128i z0 = _mm_and_si128(ok, _mm_cmpgt_epi32(iz, mone)),
                  z1 = _mm_and_si128(ok, _mm_cmpgt_epi32(_mm256_castsi256_si128(k->nm1[0]), iz)),
                  y0 = _mm_cmpgt_epi32(iy, mone),
                  y1 = _mm_cmpgt_epi32(_mm256_castsi256_si128(k->nm1[1]), iy),
                  x0 = _mm_cmpgt_epi32(ix, mone),
                  x1 = _mm_cmpgt_epi32(_mm256_castsi256_si128(k->nm1[2]), ix);
    const __m128i m0 = _mm_and_si128(_mm_and_si128(z0, y0), x0),
                  m1 = _mm_and_si128(_mm_and_si128(z0, y0), x1),
                  m2 = _mm_and_si128(_mm_and_si128(z0, y1), x0),
                  m3 = _mm_and_si128(_mm_and_si128(z0, y1), x1),
                  m4 = _mm_and_si128(_mm_and_si128(z1, y0), x0),
                  m5 = _mm_and_si128(_mm_and_si128(z1, y0), x1),
                  m6 = _mm_and_si128(_mm_and_si128(z1, y1), x0),
                  m7 = _mm_and_si128(_mm_and_si128(z1, y1), x1);
    const __m128i sz = _mm_set1_epi32(k->oz), sy = _mm_set1_epi32(k->oy),
                  sx = _mm_set1_epi32(k->ox);
    const __m128i o1 = _mm_add_epi32(o, sx), o2 = _mm_add_epi32(o, sy), o3 = _mm_add_epi32(o2, sx),
                  o4 = _mm_add_epi32(o, sz), o5 = _mm_add_epi32(o4, sx),
                  o6 = _mm_add_epi32(o4, sy), o7 = _mm_add_epi32(o6, sx);
    const __m128 okd = _mm_castsi128_ps(ok);
#define WARP_MG(off, m) _mm_mask_i32gather_ps(zf, s, off, _mm_castsi128_ps(m), 4)
    for (int64_t c = 0; c < C; c++) {
        const float *s = src + c * N;
        const __m128 c000 = WARP_MG(o, m0), c001 = WARP_MG(o1, m1), c010 = WARP_MG(o2, m2),
                      c011 = WARP_MG(o3, m3), c100 = WARP_MG(o4, m4), c101 = WARP_MG(o5, m5),
                      c110 = WARP_MG(o6, m6), c111 = WARP_MG(o7, m7);
        /* lanes outside: NaN weights */
        const __m128 v = WARP_INTERP4(c000, c001, c010, c011, c100, c101, c110, c111);
        _mm_storeu_ps(y + c * N + p, _mm_and_ps(v, okd));
    }
#undef WARP_MG
}

/* Any eight voxels, on a grid whose extents are all >= 2: the scalar test q in (-1, n) per axis,
 * and the corners read as the rows of pairs of warp8_inner, from where they start at
 * c = clamp(i, 0, n - 2) on every axis (so inside the volume), then put right axis by axis:
 * where i = -1 the second corner is the one read first and the first is outside (0); where
 * i = n - 1 the first is the one read second and the second is outside. i* are the floors of
 * the sample points, f* the displacements, l* their floors; r1, r2 as for warp4_inner. A lane
 * whose corners are all inside reads them where warp8_inner does and no fix changes them, so it
 * gets the same bits. (Four lanes at a time, with the halves whose corners were all inside done
 * apart, took a quarter of the 192x160x192 white-noise warp's time in these groups.) */
__attribute__((target("avx2,fma"), always_inline)) static inline void
warp8_clamp(float *y, const float *src, int64_t C, int64_t N, int64_t p, __m256i iz, __m256i iy,
            __m256i ix, __m256 fz, __m256 fy, __m256 fx, __m256 lz, __m256 ly, __m256 lx,
            const warp_tconst *k, const int64_t r1, const int64_t r2, const int nifti)
{
    const __m256i mone = _mm256_set1_epi32(-1);
    const __m256i ii[3] = {iz, iy, ix};
    const __m256 ff[3] = {fz, fy, fx}, ll[3] = {lz, ly, lx};
    __m256i ok = mone, cc[3];
    __m256 lo[3], hi[3], sf[3], ss[3];
    for (int d = 0; d < 3; d++) {
        const __m256i i = ii[d], n = k->n[d], nm1 = k->nm1[d], nm2 = k->nm2[d];
        /* q in (-1, n): -1 <= i <= n - 1, and not q = -1 (i = -1, f integral) */
        ok = _mm256_and_si256(
            ok, _mm256_andnot_si256(
                    _mm256_and_si256(_mm256_cmpeq_epi32(i, mone),
                                     _mm256_castps_si256(_mm256_cmp_ps(ff[d], ll[d], _CMP_EQ_OQ))),
                    _mm256_and_si256(_mm256_cmpgt_epi32(i, _mm256_set1_epi32(-2)),
                                     _mm256_cmpgt_epi32(n, i))));
        cc[d] = _mm256_min_epi32(_mm256_max_epi32(i, _mm256_setzero_si256()), nm2);
        lo[d] = _mm256_castsi256_ps(_mm256_cmpgt_epi32(i, mone)); /* corner i inside */
        hi[d] = _mm256_castsi256_ps(_mm256_cmpgt_epi32(nm1, i));  /* corner i + 1 inside */
        sf[d] = _mm256_castsi256_ps(_mm256_cmpeq_epi32(i, nm1));
        ss[d] = _mm256_castsi256_ps(_mm256_cmpeq_epi32(i, mone));
    }
    if (_mm256_testz_si256(ok, ok)) {
        for (int64_t c = 0; c < C; c++)
            _mm256_storeu_ps(y + c * N + p, _mm256_setzero_ps());
        return;
    }
    const __m256 okf = _mm256_castsi256_ps(ok);
    const __m256 tz = warp_t8(fz), ty = warp_t8(fy), tx = warp_t8(fx);
    WARP_W8;
    int32_t oc[8];
    _mm256_storeu_si256(
        (__m256i *)oc,
        _mm256_add_epi32(_mm256_add_epi32(_mm256_mullo_epi32(cc[0], _mm256_set1_epi32(k->oz)),
                                          _mm256_mullo_epi32(cc[1], _mm256_set1_epi32(k->oy))),
                         _mm256_mullo_epi32(cc[2], _mm256_set1_epi32(k->ox))));
    /* the pair axis P, then the axes of r1 and of r2 */
    const int axP = nifti ? 0 : 2, ax1 = nifti ? 2 : 1, ax2 = nifti ? 1 : 0;
    const int64_t r12 = r1 + r2;
#define WARP_FIX(f, s, ax)                                                                     \
    do {                                                                                       \
        const __m256 f_ = f;                                                                   \
        f = _mm256_and_ps(_mm256_blendv_ps(f_, s, sf[ax]), lo[ax]);                            \
        s = _mm256_and_ps(_mm256_blendv_ps(s, f_, ss[ax]), hi[ax]);                            \
    } while (0)
    for (int64_t c = 0; c < C; c++) {
        const float *sc = src + c * N;
        WARP_ROW8(sc, oc, a0r, a1r);
        WARP_ROW8(sc + r1, oc, b0r, b1r);
        WARP_ROW8(sc + r2, oc, c0r, c1r);
        WARP_ROW8(sc + r12, oc, d0r, d1r);
        __m256 a0 = a0r, a1 = a1r, b0 = b0r, b1 = b1r, c0 = c0r, c1 = c1r, d0 = d0r, d1 = d1r;
        WARP_FIX(a0, a1, axP);
        WARP_FIX(b0, b1, axP);
        WARP_FIX(c0, c1, axP);
        WARP_FIX(d0, d1, axP);
        WARP_FIX(a0, b0, ax1);
        WARP_FIX(a1, b1, ax1);
        WARP_FIX(c0, d0, ax1);
        WARP_FIX(c1, d1, ax1);
        WARP_FIX(a0, c0, ax2);
        WARP_FIX(a1, c1, ax2);
        WARP_FIX(b0, d0, ax2);
        WARP_FIX(b1, d1, ax2);
        /* lanes outside: NaN weights */
        _mm256_storeu_ps(y + c * N + p, _mm256_and_ps(WARP_INTERP_ROWS8(nifti), okf));
    }
#undef WARP_FIX
}

/* The displacements (f*), their floors (l*), the floors of the sample points (i*: l* as int32
 * plus the positions p*) and the first corners (o) of the eight voxels at element p */
#define WARP8_COORDS                                                                           \
    const __m256 fz = _mm256_loadu_ps(flow + p), fy = _mm256_loadu_ps(flow + N + p),           \
                 fx = _mm256_loadu_ps(flow + 2 * N + p);                                       \
    const __m256 lz = _mm256_floor_ps(fz), ly = _mm256_floor_ps(fy), lx = _mm256_floor_ps(fx); \
    const __m256i iz = _mm256_add_epi32(pz, _mm256_cvttps_epi32(lz)),                          \
                  iy = _mm256_add_epi32(py, _mm256_cvttps_epi32(ly)),                          \
                  ix = _mm256_add_epi32(px, _mm256_cvttps_epi32(lx));                          \
    /* nifti: sz = 1, else sx = 1 */                                                           \
    const __m256i o =                                                                          \
        nifti ? _mm256_add_epi32(_mm256_add_epi32(iz, _mm256_mullo_epi32(iy, k->sy)),          \
                                 _mm256_mullo_epi32(ix, k->sx))                                \
              : _mm256_add_epi32(_mm256_add_epi32(_mm256_mullo_epi32(iz, k->sz),               \
                                                  _mm256_mullo_epi32(iy, k->sy)),              \
                                 ix);

#define WARP_LO(v) _mm256_castsi256_si128(v)
#define WARP_HI(v) _mm256_extracti128_si256(v, 1)
#define WARP_LOF(v) _mm256_castps256_ps128(v)
#define WARP_HIF(v) _mm256_extractf128_ps(v, 1)

/* Eight voxels of which some corner is outside: by warp8_clamp, or on grids with an axis of
 * extent 1 each half by warp4_inner where its corners are all inside, else by warp4_edge */
__attribute__((target("avx2,fma"), noinline)) static void
warp8_mixed(float *y, const float *src, const float *flow, int64_t C, int64_t N, int64_t p,
            __m256i pz, __m256i py, __m256i px, const warp_tconst *k, const int nifti)
{
    WARP8_COORDS
    const int64_t r1 = nifti ? k->ox : k->oy, r2 = nifti ? k->oy : k->oz;
    int32_t oi[8];
    _mm256_storeu_si256((__m256i *)oi, o);
    const __m256i mone = _mm256_set1_epi32(-1);
    const int m = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_and_si256(
        _mm256_and_si256(_mm256_and_si256(_mm256_cmpgt_epi32(iz, mone),
                                          _mm256_cmpgt_epi32(k->nm1[0], iz)),
                         _mm256_and_si256(_mm256_cmpgt_epi32(iy, mone),
                                          _mm256_cmpgt_epi32(k->nm1[1], iy))),
        _mm256_and_si256(_mm256_cmpgt_epi32(ix, mone), _mm256_cmpgt_epi32(k->nm1[2], ix)))));
    if (k->all2) {
        warp8_clamp(y, src, C, N, p, iz, iy, ix, fz, fy, fx, lz, ly, lx, k, r1, r2, nifti);
        return;
    }
    for (int h = 0; h < 2; h++) {
        const int64_t ph = p + 4 * h;
        const __m128i oh = h ? WARP_HI(o) : WARP_LO(o);
        const __m128 tzh = warp_t(_mm_loadu_ps(flow + ph)),
                      tyh = warp_t(_mm_loadu_ps(flow + N + ph)),
                      txh = warp_t(_mm_loadu_ps(flow + 2 * N + ph));
        if (((m >> (4 * h)) & 15) == 15)
            warp4_inner(y, src, C, N, ph, oi + 4 * h, tzh, tyh, txh, r1, r2, nifti);
        else
            warp4_edge(y, src, C, N, ph, oh, h ? WARP_HI(iz) : WARP_LO(iz),
                       h ? WARP_HI(iy) : WARP_LO(iy), h ? WARP_HI(ix) : WARP_LO(ix),
                       h ? WARP_HIF(fz) : WARP_LOF(fz), h ? WARP_HIF(fy) : WARP_LOF(fy),
                       h ? WARP_HIF(fx) : WARP_LOF(fx), h ? WARP_HIF(lz) : WARP_LOF(lz),
                       h ? WARP_HIF(ly) : WARP_LOF(ly), h ? WARP_HIF(lx) : WARP_LOF(lx), k);
    }
}

/* A chunk of up to WARP_CHUNK groups of eight voxels of a row, after the first pass */
#define WARP_CHUNK 8
typedef struct {
    int32_t o[8 * WARP_CHUNK]; /* first corners */
    int m[WARP_CHUNK];         /* nonzero where some corner of the group is outside */
} warp_chunk;

/* The first pass over group j of a chunk: the eight voxels at element p, positions
 * (pz, py, px) */
__attribute__((target("avx2,fma"), always_inline)) static inline void
warp8_prep(warp_chunk *b, int j, const float *flow, int64_t N, int64_t p, __m256i pz,
           __m256i py, __m256i px, const warp_tconst *k, const int nifti)
{
    WARP8_COORDS
    /* inside: 0 <= i <= n - 2 on every axis, the sign bits of i | (n - 2 - i) clear */
    const __m256i out = _mm256_or_si256(
        _mm256_or_si256(_mm256_or_si256(iz, _mm256_sub_epi32(k->nm2[0], iz)),
                        _mm256_or_si256(iy, _mm256_sub_epi32(k->nm2[1], iy))),
        _mm256_or_si256(ix, _mm256_sub_epi32(k->nm2[2], ix)));
    b->m[j] = _mm256_movemask_ps(_mm256_castsi256_ps(out));
    _mm256_store_si256((__m256i *)(b->o + 8 * j), o);
}
#undef WARP8_COORDS

/* The second pass over group j of a chunk: the eight voxels at element p, where every corner
 * is inside; r1, r2 as for warp4_inner */
__attribute__((target("avx2,fma"), always_inline)) static inline void
warp8_inner(float *y, const float *src, const float *flow, int64_t C, int64_t N, int64_t p,
            const warp_chunk *b, int j, const int64_t r1, const int64_t r2, const int nifti)
{
    /* The hardware prefetchers follow the four rows of corners while the field keeps them,
     * but lose them where it moves them (a smooth field does so all along a row): ask for the
     * lines 256 bytes ahead on the rows of this group. */
    const int32_t *o = b->o + 8 * j;
    for (int64_t c = 0; c < C; c++) {
        const float *pf = src + c * N + o[7] + 64;
        _mm_prefetch((const char *)pf, _MM_HINT_T0);
        _mm_prefetch((const char *)(pf + r1), _MM_HINT_T0);
        _mm_prefetch((const char *)(pf + r2), _MM_HINT_T0);
        _mm_prefetch((const char *)(pf + r1 + r2), _MM_HINT_T0);
    }
    warp8_inner_rows(y, src, C, N, p, o, warp_t8(_mm256_loadu_ps(flow + p)),
                     warp_t8(_mm256_loadu_ps(flow + N + p)),
                     warp_t8(_mm256_loadu_ps(flow + 2 * N + p)), r1, r2, nifti);
}

/* One row of voxels: (z, y) = (r1, r2) in the DHW order, (x, y) = (r1, r2) in the NIfTI order;
 * in chunks of up to WARP_CHUNK groups of eight. The last group of a row ends at the row's end,
 * overlapping the one before where the row is no multiple of eight (the same values written
 * again); rows shorter than eight are done by the scalar code. nifti and C are constants where
 * this is inlined. */
__attribute__((target("avx2,fma"), always_inline)) static inline void
warp_row_zeros(float *y, const float *src, const float *flow, const int64_t C, const warp_grid *g,
               const warp_tconst *k, int64_t r1, int64_t r2, const int nifti)
{
    const int64_t N = g->N, L = nifti ? g->D : g->W;
    const int64_t row = r1 * (nifti ? g->sx : g->sz) + r2 * g->sy;
    if (L < 8) {
        for (int64_t l = 0; l < L; l++)
            warp_voxel_zeros(y, src, flow, C, g, nifti ? l : r1, r2, nifti ? r1 : l);
        return;
    }
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i a = _mm256_set1_epi32((int32_t)r1), b = _mm256_set1_epi32((int32_t)r2);
    const int64_t r1s = nifti ? g->sx : g->sy, r2s = nifti ? g->sy : g->sz;
    warp_chunk ch __attribute__((aligned(32)));
    for (int64_t l0 = 0; l0 < L; l0 += 8 * WARP_CHUNK) {
        const int ng = (int)((L - l0 + 7) / 8 < WARP_CHUNK ? (L - l0 + 7) / 8 : WARP_CHUNK);
        for (int j = 0; j < ng; j++) {
            const int64_t l = l0 + 8 * j < L - 8 ? l0 + 8 * j : L - 8;
            const __m256i lanes = _mm256_add_epi32(_mm256_set1_epi32((int32_t)l), iota);
            warp8_prep(&ch, j, flow, N, row + l, nifti ? lanes : a, b, nifti ? a : lanes, k,
                       nifti);
        }
        for (int j = 0; j < ng; j++) {
            const int64_t l = l0 + 8 * j < L - 8 ? l0 + 8 * j : L - 8;
            if (ch.m[j]) {
                const __m256i lanes = _mm256_add_epi32(_mm256_set1_epi32((int32_t)l), iota);
                warp8_mixed(y, src, flow, C, N, row + l, nifti ? lanes : a, b, nifti ? a : lanes,
                            k, nifti);
            } else {
                warp8_inner(y, src, flow, C, N, row + l, &ch, j, r1s, r2s, nifti);
            }
        }
    }
}

typedef void warp_row_fn(float *y, const float *src, const float *flow, int64_t C,
                         const warp_grid *g, const warp_tconst *k, int64_t r1, int64_t r2);
#define WARP_ROW_FN(name, nifti, CC)                                                           \
    __attribute__((target("avx2,fma"), noinline)) static void name(                             \
        float *y, const float *src, const float *flow, int64_t C, const warp_grid *g,          \
        const warp_tconst *k, int64_t r1, int64_t r2)                                          \
    {                                                                                          \
        (void)C;                                                                               \
        warp_row_zeros(y, src, flow, CC, g, k, r1, r2, nifti);                                 \
    }
/* one channel, the common case, without a channel loop */
WARP_ROW_FN(warp_row_dhw1, 0, 1)
WARP_ROW_FN(warp_row_dhw, 0, C)
WARP_ROW_FN(warp_row_nifti1, 1, 1)
WARP_ROW_FN(warp_row_nifti, 1, C)
#undef WARP_ROW_FN

__attribute__((target("avx2,fma"))) static void
warp_zeros_avx2(float *y, const float *src, const float *flow, int64_t C, const warp_grid *g)
{
    const warp_tconst k = warp_tconst_of(g);
    warp_row_fn *const row = g->nifti ? (C == 1 ? warp_row_nifti1 : warp_row_nifti)
                                      : (C == 1 ? warp_row_dhw1 : warp_row_dhw);
    WARP_ROWS(row(y, src, flow, C, g, &k, r1, r2););
}

/* The nearest warp's vector constants: strides and extents, four lanes */
typedef struct {
    __m128i sz, sy, sx;
    __m256d dn, hn, wn;
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
    k.sz = _mm_set1_epi32((int32_t)g->sz), k.sy = _mm_set1_epi32((int32_t)g->sy);
    k.sx = _mm_set1_epi32((int32_t)g->sx);
    k.dn = _mm256_set1_pd((double)g->D), k.hn = _mm256_set1_pd((double)g->H);
    k.wn = _mm256_set1_pd((double)g->W);
    return k;
}

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
     * the line 256 bytes ahead is asked for, as in warp8_inner */
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

/* The vector paths, where the CPU has AVX2 (and FMA, for the trilinear one) and the offsets
 * fit (LM_WARP_SCALAR=1 in the environment forces the scalar code, for tests that compare the
 * two). */
static int warp_use_avx2(const warp_grid *g, int fma)
{
#ifdef WARP_HAVE_AVX2
    if (g->N + g->sz + g->sy + g->sx < INT32_MAX && __builtin_cpu_supports("avx2") &&
        (!fma || __builtin_cpu_supports("fma"))) {
        const char *e = getenv("LM_WARP_SCALAR");
        return !(e && *e == '1');
    }
#else
    (void)g, (void)fma;
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
        if (warp_use_avx2(&g, 1)) {
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
    if (warp_use_avx2(&g, 0)) {
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
