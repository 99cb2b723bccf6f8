/* jacobian.c — Jacobian determinant of a displacement field, folding and SDlogJ
 * (lm_metrics.h; MODEL.md §11.3).
 *
 * Both schemes copy the order of operations of the code they stand for, so that the numbers
 * agree to the last bit where that code's arithmetic is fixed:
 *   vxm: J = np.gradient(u + grid) in float64 (the grid is added to every component before
 *     differencing, as vxm does), det = Jdet0 - Jdet1 + Jdet2 with vxm's cofactor grouping.
 *   sitk-mm: ITK's DisplacementFieldJacobianDeterminantFilter::EvaluateAtNeighborhood on the
 *     numpy array as SimpleITK sees it (axes reversed, components not), in the pixel type's
 *     precision, rows J[0..2] into vnl_det's six-term sum.
 * This file must not be built with floating-point contraction (the project never uses
 * fast-math; -std=c11 turns FMA contraction off in GCC).
 * Reductions go per D-slice into an array that is summed in order: the same result for any
 * number of threads.
 */
#include "lm_metrics.h"

#include "io/lm_error.h"

#include <math.h>
#include <stdlib.h>

/* f_c at flat voxel i, for the vxm scheme: u_c + x_c in double (x_c: the index along axis c) */
#define VXM_F(c, i, x) ((double)U[(c)*n + (i)] + (double)(x))

/* np.gradient along one axis of f_c: central inside, one-sided at the ends; along an axis of
 * length 1 (where np.gradient refuses) u is taken as constant, so only the grid's 1 remains. */
#define VXM_GRAD(c, idx, len, stride, xc_here, xc_step)                                            \
    ((len) < 2    ? (double)(xc_step)                                                              \
     : (idx) == 0 ? (VXM_F(c, i + (stride), (xc_here) + (xc_step)) - VXM_F(c, i, (xc_here))) / 1.0 \
     : (idx) == (len)-1                                                                            \
         ? (VXM_F(c, i, (xc_here)) - VXM_F(c, i - (stride), (xc_here) - (xc_step))) / 1.0          \
         : (VXM_F(c, i + (stride), (xc_here) + (xc_step)) -                                        \
            VXM_F(c, i - (stride), (xc_here) - (xc_step))) /                                       \
               2.0)

#define DEFINE_VXM(NAME, T)                                                                        \
    static void NAME(double *det, const T *U, const int64_t dims[3])                               \
    {                                                                                              \
        const int64_t D = dims[0], H = dims[1], W = dims[2], n = D * H * W;                        \
        _Pragma("omp parallel for schedule(static)") for (int64_t d = 0; d < D; d++)               \
        {                                                                                          \
            for (int64_t h = 0; h < H; h++)                                                        \
                for (int64_t w = 0; w < W; w++) {                                                  \
                    const int64_t i = (d * H + h) * W + w;                                         \
                    const int64_t pos[3] = {d, h, w};                                              \
                    double g[3][3]; /* g[axis][component] */                                       \
                    for (int c = 0; c < 3; c++) {                                                  \
                        /* x_c changes by 1 only along axis c */                                   \
                        g[0][c] = VXM_GRAD(c, d, D, H * W, pos[c], c == 0);                        \
                        g[1][c] = VXM_GRAD(c, h, H, W, pos[c], c == 1);                            \
                        g[2][c] = VXM_GRAD(c, w, W, 1, pos[c], c == 2);                            \
                    }                                                                              \
                    const double *dx = g[0], *dy = g[1], *dz = g[2];                               \
                    double j0 = dx[0] * (dy[1] * dz[2] - dy[2] * dz[1]);                           \
                    double j1 = dx[1] * (dy[0] * dz[2] - dy[2] * dz[0]);                           \
                    double j2 = dx[2] * (dy[0] * dz[1] - dy[1] * dz[0]);                           \
                    det[i] = j0 - j1 + j2;                                                         \
                }                                                                                  \
        }                                                                                          \
    }

DEFINE_VXM(jac_vxm_f32, float)
DEFINE_VXM(jac_vxm_f64, double)

/* ITK: J[i][j] = half * (u_j(next along ITK axis i) - u_j(previous)), zero-flux Neumann;
 * ITK axis i is array axis 2-i. J[i][i] += 1.0 is done in double and stored in T, as C++
 * does for `T += double`. */
#define DEFINE_SITK(NAME, T)                                                                       \
    static void NAME(double *det, const T *U, const int64_t dims[3])                               \
    {                                                                                              \
        const int64_t D = dims[0], H = dims[1], W = dims[2], n = D * H * W;                        \
        const T half = (T)0.5;                                                                     \
        _Pragma("omp parallel for schedule(static)") for (int64_t d = 0; d < D; d++)               \
        {                                                                                          \
            for (int64_t h = 0; h < H; h++)                                                        \
                for (int64_t w = 0; w < W; w++) {                                                  \
                    const int64_t i = (d * H + h) * W + w;                                         \
                    /* ITK axis 0 = array W, 1 = H, 2 = D */                                       \
                    const int64_t nx[3] = {w < W - 1 ? 1 : 0, h < H - 1 ? W : 0,                   \
                                           d < D - 1 ? H * W : 0};                                 \
                    const int64_t px[3] = {w > 0 ? 1 : 0, h > 0 ? W : 0, d > 0 ? H * W : 0};       \
                    T J[3][3];                                                                     \
                    for (int a = 0; a < 3; a++) {                                                  \
                        for (int j = 0; j < 3; j++) {                                              \
                            const T *uj = U + (int64_t)j * n;                                      \
                            T diff = uj[i + nx[a]] - uj[i - px[a]];                                \
                            J[a][j] = half * diff;                                                 \
                        }                                                                          \
                        J[a][a] = (T)((double)J[a][a] + 1.0);                                      \
                    }                                                                              \
                    const T *r0 = J[0], *r1 = J[1], *r2 = J[2];                                    \
                    T v = +r0[0] * r1[1] * r2[2] - r0[0] * r2[1] * r1[2] - r1[0] * r0[1] * r2[2] + \
                          r1[0] * r2[1] * r0[2] + r2[0] * r0[1] * r1[2] - r2[0] * r1[1] * r0[2];   \
                    det[i] = (double)v;                                                            \
                }                                                                                  \
        }                                                                                          \
    }

DEFINE_SITK(jac_sitk_f32, float)
DEFINE_SITK(jac_sitk_f64, double)

int lm_jacobian_det(double *det, const void *u, lm_dtype dt, const int64_t dims[3],
                    lm_jac_mode mode)
{
    if (dt != LM_F32 && dt != LM_F64)
        return lm_error_set("a displacement field must be F32 or F64, not %s", lm_dtype_name(dt));
    if (mode == LM_JAC_SITK_MM) {
        if (dt == LM_F32)
            jac_sitk_f32(det, u, dims);
        else
            jac_sitk_f64(det, u, dims);
    } else {
        if (dt == LM_F32)
            jac_vxm_f32(det, u, dims);
        else
            jac_vxm_f64(det, u, dims);
    }
    return 0;
}

static inline double logclip(double v)
{
    return log(v < 1e-9 ? 1e-9 : v > 1e9 ? 1e9 : v);
}

void lm_jacobian_stats(lm_jac_stats *st, const double *det, int64_t n, lm_jac_mode mode)
{
    /* NC fixed chunks summed in order: deterministic whatever the thread count */
    enum { NC = 256 };
    double s1[NC], s2[NC], mn[NC], mx[NC];
    int64_t cnt[NC];
    int64_t chunk = (n + NC - 1) / NC;
    if (chunk < 1)
        chunk = 1;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < NC; c++) {
        int64_t b = (int64_t)c * chunk, e = b + chunk < n ? b + chunk : n;
        double s = 0, lo = INFINITY, hi = -INFINITY;
        int64_t k = 0;
        for (int64_t i = b; i < e; i++) {
            double v = det[i];
            k += mode == LM_JAC_SITK_MM ? v < 0 : v <= 0;
            s += logclip(v);
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
        s1[c] = s;
        cnt[c] = k;
        mn[c] = lo;
        mx[c] = hi;
    }
    double sum = 0;
    st->n = n;
    st->folded = 0;
    st->min = INFINITY;
    st->max = -INFINITY;
    for (int c = 0; c < NC; c++) {
        sum += s1[c];
        st->folded += cnt[c];
        st->min = mn[c] < st->min ? mn[c] : st->min;
        st->max = mx[c] > st->max ? mx[c] : st->max;
    }
    double mean = n > 0 ? sum / (double)n : NAN;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < NC; c++) {
        int64_t b = (int64_t)c * chunk, e = b + chunk < n ? b + chunk : n;
        double s = 0;
        for (int64_t i = b; i < e; i++) {
            double t = logclip(det[i]) - mean;
            s += t * t;
        }
        s2[c] = s;
    }
    double ss = 0;
    for (int c = 0; c < NC; c++)
        ss += s2[c];
    st->pct = n > 0 ? 100.0 * (double)st->folded / (double)n : NAN;
    st->sdlogj = n > 0 ? sqrt(ss / (double)n) : NAN;
}
