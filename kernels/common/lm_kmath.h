/* lm_kmath.h — per-element maths shared by the CPU and CUDA backends (static inline LM_HD).
 *
 * Only scalar functions live here: activations and their derivatives, bf16 widening and
 * rounding, round-half-to-even, the trilinear-upsampling source index, and the voxel-shuffle
 * index map. Loops, threads and memory are each backend's business.
 */
#ifndef LM_KMATH_H
#define LM_KMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define LM_HD __host__ __device__
#else
#define LM_HD
#endif

/* ---- activations (computed in double, the caller rounds) ---- */
static inline LM_HD double lm_k_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
static inline LM_HD double lm_k_silu(double x) { return x * lm_k_sigmoid(x); }
/* d/dx x·σ(x) = σ(x)·(1 + x·(1−σ(x))) */
static inline LM_HD double lm_k_silu_grad(double x)
{
    double s = lm_k_sigmoid(x);
    return s * (1.0 + x * (1.0 - s));
}
/* exact GELU: x·Φ(x), Φ(x) = (1 + erf(x/√2))/2 */
static inline LM_HD double lm_k_gelu(double x) { return 0.5 * x * (1.0 + erf(x * 0.70710678118654752440)); }
static inline LM_HD double lm_k_gelu_grad(double x)
{
    double cdf = 0.5 * (1.0 + erf(x * 0.70710678118654752440));
    double pdf = 0.39894228040143267794 * exp(-0.5 * x * x);
    return cdf + x * pdf;
}

/* ---- bf16 ---- */
static inline LM_HD float lm_k_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
/* round to nearest even; NaN stays a (quiet) NaN */
static inline LM_HD uint16_t lm_k_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* ---- f16 (IEEE half): round to nearest even, overflow to inf, NaN kept ---- */
static inline LM_HD uint16_t lm_k_f32_to_f16(float f)
{
    const uint32_t f32inf = 255u << 23, f16max = (127u + 16u) << 23;
    const uint32_t denorm_magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = x & 0x80000000u;
    uint16_t o;
    x ^= sign;
    if (x >= f16max) {
        o = x > f32inf ? 0x7e00u : 0x7c00u;
    } else if (x < (113u << 23)) {
        float v, m;
        uint32_t u;
        memcpy(&v, &x, 4);
        memcpy(&m, &denorm_magic, 4);
        v += m;
        memcpy(&u, &v, 4);
        o = (uint16_t)(u - denorm_magic);
    } else {
        uint32_t odd = (x >> 13) & 1u;
        x += ((uint32_t)(15 - 127) << 23) + 0xfffu;
        x += odd;
        o = (uint16_t)(x >> 13);
    }
    return (uint16_t)(o | (sign >> 16));
}

static inline LM_HD float lm_k_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, u;
    float f;
    if (e == 0) {
        f = (float)m * (1.0f / 16777216.0f);
        return sign ? -f : f;
    }
    u = e == 31 ? sign | 0x7f800000u | (m << 13) : sign | ((e + 112u) << 23) | (m << 13);
    memcpy(&f, &u, 4);
    return f;
}

/* ---- rounding ---- */
/* round half to even (grid_sample nearest uses nearbyint in the default rounding mode) */
static inline LM_HD double lm_k_round_even(double x) { return nearbyint(x); }

/* ---- trilinear ×2 upsampling, align_corners=False (PyTorch area_pixel_compute_source_index)
 * Output index j of an axis of input size n: source i0, i1 and weight of i1. */
static inline LM_HD void lm_k_up2_src(int64_t j, int64_t n, int64_t *i0, int64_t *i1, double *w1)
{
    double src = 0.5 * ((double)j + 0.5) - 0.5;
    if (src < 0)
        src = 0;
    int64_t a = (int64_t)src; /* src >= 0: truncation is floor */
    *i0 = a;
    *i1 = a + 1 < n ? a + 1 : n - 1;
    *w1 = src - (double)a;
}

/* ---- voxel shuffle index map (MODEL.md §6) ----
 * Token l = (i·h + j)·w + k, channel c = co·f³ + (p1·f + p2)·f + p3  <->  volume index
 * ((co·(d f) + i f + p1)·(h f) + j f + p2)·(w f) + k f + p3. Returns the volume offset of the
 * token element (l, c). */
static inline LM_HD int64_t lm_k_shuffle_vol_index(int64_t l, int64_t c, int64_t d, int64_t h,
                                                   int64_t w, int64_t f)
{
    int64_t f3 = f * f * f;
    int64_t co = c / f3, r = c % f3;
    int64_t p1 = r / (f * f), p2 = (r / f) % f, p3 = r % f;
    int64_t k = l % w, j = (l / w) % h, i = l / (w * h);
    return ((co * (d * f) + i * f + p1) * (h * f) + j * f + p2) * (w * f) + k * f + p3;
}

/* ---- trilinear sampling along one axis (MODEL.md §8) ----
 * Sample coordinate q on an axis of n voxels. Fills the two corner indices, their weights, the
 * weights' derivatives d w / d q, and whether each corner is inside (zeros padding: an outside
 * corner contributes 0). Border padding clamps q to [0, n-1] first (grid_sample
 * padding_mode='border'; the derivative is 0 where q was clamped) and clamps the indices. */
static inline LM_HD void lm_k_lin_axis(double q, int64_t n, int border, int64_t idx[2],
                                       double w[2], double dw[2], int in[2])
{
    double g = 1.0;
    if (!border && !(q >= -2.0 && q <= (double)n + 1.0))
        q = -2.0; /* far outside, NaN included: both corners outside, sample 0 */
    if (border && q != q)
        q = 0.0;
    if (border) {
        double hi = (double)(n - 1);
        if (q <= 0.0) {
            q = 0.0;
            g = 0.0;
        } else if (q >= hi) {
            q = hi;
            g = 0.0;
        }
    }
    double f = floor(q);
    int64_t i0 = (int64_t)f;
    double t = q - f;
    idx[0] = i0;
    idx[1] = i0 + 1;
    w[0] = 1.0 - t;
    w[1] = t;
    dw[0] = -g;
    dw[1] = g;
    in[0] = i0 >= 0 && i0 < n;
    in[1] = i0 + 1 >= 0 && i0 + 1 < n;
    if (border) { /* only idx[1] = n can fall outside, with weight 0 */
        if (!in[1])
            idx[1] = n - 1;
        in[0] = in[1] = 1;
    }
}

#endif
