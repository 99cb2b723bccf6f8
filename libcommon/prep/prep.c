/* prep.c — normalisation, world-space resampling, grids, pooling and label maps (lm_prep.h). */
#include "lm_prep.h"

#include "io/lm_error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int lm_modality_parse(const char *s, lm_modality *out)
{
    if (!strcmp(s, "ct"))
        *out = LM_MOD_CT;
    else if (!strcmp(s, "mr"))
        *out = LM_MOD_MR;
    else if (!strcmp(s, "raw"))
        *out = LM_MOD_RAW;
    else
        return -1;
    return 0;
}

const char *lm_modality_name(lm_modality m)
{
    return m == LM_MOD_CT ? "ct" : m == LM_MOD_MR ? "mr" : "raw";
}

/* k-th smallest (0-based) of a[0..n-1], reordering a (Hoare quickselect, median of three). */
static float select_kth(float *a, int64_t n, int64_t k)
{
    int64_t lo = 0, hi = n - 1;
    while (hi > lo) {
        int64_t mid = lo + (hi - lo) / 2;
        float x = a[lo], y = a[mid], z = a[hi];
        float piv = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] < piv)
                i++;
            while (a[j] > piv)
                j--;
            if (i <= j) {
                float t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            return a[k];
    }
    return a[k];
}

double lm_percentile_f32(const float *v, int64_t n, double p)
{
    if (n <= 0)
        return NAN;
    float *a = malloc((size_t)n * sizeof *a);
    if (!a)
        return NAN;
    memcpy(a, v, (size_t)n * sizeof *a);
    double rank = p / 100.0 * (double)(n - 1);
    int64_t lo = (int64_t)floor(rank);
    if (lo >= n - 1)
        lo = n - 1;
    double frac = rank - (double)lo;
    double a0 = select_kth(a, n, lo), a1 = a0;
    if (frac > 0 && lo + 1 < n) {
        /* After selection everything above lo is >= a[lo]: the next order statistic is the
         * minimum of that part. */
        a1 = INFINITY;
        for (int64_t i = lo + 1; i < n; i++)
            if (a[i] < a1)
                a1 = a[i];
    }
    free(a);
    return a0 + frac * (a1 - a0); /* numpy's linear interpolation */
}

int lm_normalize(float *v, const int64_t dims[3], lm_modality m, const double window[2],
                 double pct)
{
    int64_t n = dims[0] * dims[1] * dims[2];
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return lm_error_set("non-finite voxel (%g) at (%lld,%lld,%lld)", (double)v[i],
                                (long long)(i / (dims[1] * dims[2])),
                                (long long)(i / dims[2] % dims[1]), (long long)(i % dims[2]));
    double lo = -INFINITY, hi = INFINITY;
    if (m == LM_MOD_CT) {
        lo = window[0];
        hi = window[1];
    } else if (m == LM_MOD_MR) {
        lo = 0;
        hi = lm_percentile_f32(v, n, pct);
    }
    double mn = INFINITY, mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        double x = v[i] < lo ? lo : v[i] > hi ? hi : v[i];
        v[i] = (float)x;
        mn = x < mn ? x : mn;
        mx = x > mx ? x : mx;
    }
    if (!(mx > mn))
        return lm_error_set("image is constant (%g) after the %s intensity window", mn,
                            lm_modality_name(m));
    double s = 1.0 / (mx - mn);
    for (int64_t i = 0; i < n; i++)
        v[i] = (float)(((double)v[i] - mn) * s);
    return 0;
}

/* ---- grids -------------------------------------------------------------------------------- */

static int inv4(const double m[16], double out[16])
{
    /* Affine inverse: [R t; 0 1]^-1 = [R^-1, -R^-1 t]. */
    const double a = m[0], b = m[1], c = m[2], d = m[4], e = m[5], f = m[6], g = m[8], h = m[9],
                 i = m[10];
    double det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g);
    if (!(fabs(det) > 1e-12))
        return lm_error_set("singular voxel-to-world affine");
    double r[9] = {(e * i - f * h) / det, (c * h - b * i) / det, (b * f - c * e) / det,
                   (f * g - d * i) / det, (a * i - c * g) / det, (c * d - a * f) / det,
                   (d * h - e * g) / det, (b * g - a * h) / det, (a * e - b * d) / det};
    memset(out, 0, 16 * sizeof *out);
    for (int row = 0; row < 3; row++) {
        for (int col = 0; col < 3; col++)
            out[row * 4 + col] = r[row * 3 + col];
        out[row * 4 + 3] = -(r[row * 3] * m[3] + r[row * 3 + 1] * m[7] + r[row * 3 + 2] * m[11]);
    }
    out[15] = 1;
    return 0;
}

static void mul4(const double a[16], const double b[16], double out[16])
{
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++) {
            double s = 0;
            for (int k = 0; k < 4; k++)
                s += a[r * 4 + k] * b[k * 4 + c];
            out[r * 4 + c] = s;
        }
}

/* M = A_src^-1 A_dst: target voxel -> source voxel. */
static int vox_map(const lm_grid *dst, const lm_grid *src, double m[16])
{
    double inv[16];
    if (inv4(src->affine, inv) < 0)
        return -1;
    mul4(inv, dst->affine, m);
    return 0;
}

int lm_grid_same(const lm_grid *a, const lm_grid *b, double tol_mm)
{
    if (memcmp(a->dims, b->dims, sizeof a->dims))
        return 0;
    for (int i = 0; i < 12; i++)
        if (fabs(a->affine[i] - b->affine[i]) > tol_mm)
            return 0;
    return 1;
}

void lm_grid_spacing(const lm_grid *g, double out[3])
{
    for (int c = 0; c < 3; c++)
        out[c] = sqrt(g->affine[c] * g->affine[c] + g->affine[4 + c] * g->affine[4 + c] +
                      g->affine[8 + c] * g->affine[8 + c]);
}

void lm_grid_reshape(lm_grid *out, const lm_grid *fixed, const int64_t dims[3],
                     const double *spacing)
{
    double sp[3], centre[3];
    lm_grid_spacing(fixed, sp);
    for (int r = 0; r < 3; r++) {
        centre[r] = fixed->affine[r * 4 + 3];
        for (int c = 0; c < 3; c++)
            centre[r] += fixed->affine[r * 4 + c] * ((double)fixed->dims[c] - 1) / 2.0;
    }
    lm_grid g;
    memset(&g, 0, sizeof g);
    for (int c = 0; c < 3; c++) {
        g.dims[c] = dims[c];
        double ns = spacing ? spacing[c] : sp[c] * (double)fixed->dims[c] / (double)dims[c];
        for (int r = 0; r < 3; r++)
            g.affine[r * 4 + c] = fixed->affine[r * 4 + c] / sp[c] * ns;
    }
    for (int r = 0; r < 3; r++) {
        double t = centre[r];
        for (int c = 0; c < 3; c++)
            t -= g.affine[r * 4 + c] * ((double)dims[c] - 1) / 2.0;
        g.affine[r * 4 + 3] = t;
    }
    g.affine[15] = 1;
    *out = g;
}

void lm_grid_crop_pad(lm_grid *out, const lm_grid *fixed, const int64_t dims[3])
{
    lm_grid g = *fixed;
    for (int c = 0; c < 3; c++) {
        int64_t d = fixed->dims[c] - dims[c];
        int64_t off = d >= 0 ? d / 2 : -((-d + 1) / 2); /* floor(d/2) */
        for (int r = 0; r < 3; r++)
            g.affine[r * 4 + 3] += fixed->affine[r * 4 + c] * (double)off;
        g.dims[c] = dims[c];
    }
    *out = g;
}

void lm_grid_half(lm_grid *out, const lm_grid *in)
{
    /* Voxel p of the half grid is the centre of full voxels 2p and 2p+1: 2p + 0.5. */
    lm_grid g = *in;
    for (int c = 0; c < 3; c++) {
        g.dims[c] = in->dims[c] / 2;
        for (int r = 0; r < 3; r++) {
            g.affine[r * 4 + 3] += 0.5 * in->affine[r * 4 + c];
            g.affine[r * 4 + c] = 2 * in->affine[r * 4 + c];
        }
    }
    *out = g;
}

/* ---- resampling --------------------------------------------------------------------------- */

static inline float tri(const float *s, const int64_t n[3], double z, double y, double x)
{
    double fz = floor(z), fy = floor(y), fx = floor(x);
    int64_t z0 = (int64_t)fz, y0 = (int64_t)fy, x0 = (int64_t)fx;
    double wz = z - fz, wy = y - fy, wx = x - fx, acc = 0;
    for (int a = 0; a < 2; a++) {
        int64_t zi = z0 + a;
        if (zi < 0 || zi >= n[0])
            continue;
        double w0 = a ? wz : 1 - wz;
        for (int b = 0; b < 2; b++) {
            int64_t yi = y0 + b;
            if (yi < 0 || yi >= n[1])
                continue;
            double w1 = w0 * (b ? wy : 1 - wy);
            const float *row = s + (zi * n[1] + yi) * n[2];
            if (x0 >= 0 && x0 < n[2])
                acc += w1 * (1 - wx) * row[x0];
            if (x0 + 1 >= 0 && x0 + 1 < n[2])
                acc += w1 * wx * row[x0 + 1];
        }
    }
    return (float)acc;
}

static inline int64_t nearest_index(double q, int64_t n)
{
    double r = nearbyint(q); /* round half to even (default rounding mode) */
    return r < 0 || r > (double)(n - 1) ? -1 : (int64_t)r;
}

int lm_resample_f32(float *dst, const lm_grid *dg, const float *src, const lm_grid *sg, int linear)
{
    double m[16];
    if (vox_map(dg, sg, m) < 0)
        return -1;
    const int64_t D = dg->dims[0], H = dg->dims[1], W = dg->dims[2];
#pragma omp parallel for schedule(static)
    for (int64_t d = 0; d < D; d++)
        for (int64_t h = 0; h < H; h++) {
            float *out = dst + (d * H + h) * W;
            for (int64_t w = 0; w < W; w++) {
                double q[3];
                for (int r = 0; r < 3; r++)
                    q[r] = m[r * 4] * (double)d + m[r * 4 + 1] * (double)h +
                           m[r * 4 + 2] * (double)w + m[r * 4 + 3];
                if (linear) {
                    out[w] = tri(src, sg->dims, q[0], q[1], q[2]);
                } else {
                    int64_t a = nearest_index(q[0], sg->dims[0]),
                            b = nearest_index(q[1], sg->dims[1]),
                            c = nearest_index(q[2], sg->dims[2]);
                    out[w] = a < 0 || b < 0 || c < 0
                                 ? 0.0f
                                 : src[(a * sg->dims[1] + b) * sg->dims[2] + c];
                }
            }
        }
    return 0;
}

int lm_resample_i32(int32_t *dst, const lm_grid *dg, const int32_t *src, const lm_grid *sg)
{
    double m[16];
    if (vox_map(dg, sg, m) < 0)
        return -1;
    const int64_t D = dg->dims[0], H = dg->dims[1], W = dg->dims[2];
#pragma omp parallel for schedule(static)
    for (int64_t d = 0; d < D; d++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t w = 0; w < W; w++) {
                double q[3];
                for (int r = 0; r < 3; r++)
                    q[r] = m[r * 4] * (double)d + m[r * 4 + 1] * (double)h +
                           m[r * 4 + 2] * (double)w + m[r * 4 + 3];
                int64_t a = nearest_index(q[0], sg->dims[0]), b = nearest_index(q[1], sg->dims[1]),
                        c = nearest_index(q[2], sg->dims[2]);
                dst[(d * H + h) * W + w] =
                    a < 0 || b < 0 || c < 0 ? 0 : src[(a * sg->dims[1] + b) * sg->dims[2] + c];
            }
    return 0;
}

void lm_avgpool2(float *dst, const float *src, const int64_t dims[3])
{
    const int64_t D = dims[0] / 2, H = dims[1] / 2, W = dims[2] / 2, h1 = dims[1], w1 = dims[2];
#pragma omp parallel for schedule(static)
    for (int64_t d = 0; d < D; d++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t w = 0; w < W; w++) {
                double s = 0;
                for (int a = 0; a < 2; a++)
                    for (int b = 0; b < 2; b++)
                        for (int c = 0; c < 2; c++)
                            s += src[((2 * d + a) * h1 + 2 * h + b) * w1 + 2 * w + c];
                dst[(d * H + h) * W + w] = (float)(s / 8.0);
            }
}

/* ---- labels ------------------------------------------------------------------------------- */

void lm_labels_from_channels(int32_t *dst, const int32_t *src, int64_t C, int64_t nvox)
{
    memset(dst, 0, (size_t)nvox * sizeof *dst);
    for (int64_t c = 0; c < C; c++)
        for (int64_t i = 0; i < nvox; i++)
            if (src[c * nvox + i])
                dst[i] = (int32_t)(c + 1);
}

void lm_labels_remap(int32_t *v, int64_t n, const long *keep, int k)
{
    for (int64_t i = 0; i < n; i++) {
        int32_t out = 0;
        for (int j = 0; j < k; j++)
            if (v[i] == keep[j]) {
                out = j + 1;
                break;
            }
        v[i] = out;
    }
}

static int cmp_long(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return x < y ? -1 : x > y;
}

int lm_labels_present(const int32_t *v, int64_t n, long *out, int cap)
{
    /* Labels are small non-negative ids in practice: count with a bitmap over [min,max]. */
    if (n <= 0)
        return 0;
    int32_t mn = v[0], mx = v[0];
    for (int64_t i = 1; i < n; i++) {
        mn = v[i] < mn ? v[i] : mn;
        mx = v[i] > mx ? v[i] : mx;
    }
    int count = 0;
    uint64_t range = (uint64_t)((int64_t)mx - (int64_t)mn) + 1;
    if (range <= (1u << 24)) {
        unsigned char *seen = calloc((size_t)range, 1);
        if (!seen)
            return -1;
        for (int64_t i = 0; i < n; i++)
            seen[v[i] - mn] = 1;
        for (int64_t x = mn; x <= mx; x++)
            if (seen[x - mn] && x != 0) {
                if (count < cap)
                    out[count] = (long)x;
                count++;
            }
        free(seen);
        return count;
    }
    /* Rare wide ranges: collect distinct values by sorting a copy. */
    long *all = malloc((size_t)n * sizeof *all);
    if (!all)
        return -1;
    for (int64_t i = 0; i < n; i++)
        all[i] = v[i];
    qsort(all, (size_t)n, sizeof *all, cmp_long);
    for (int64_t i = 0; i < n; i++)
        if (all[i] != 0 && (i == 0 || all[i] != all[i - 1])) {
            if (count < cap)
                out[count] = all[i];
            count++;
        }
    free(all);
    return count;
}

/* ---- displacement fields ------------------------------------------------------------------ */

void lm_field_vox_to_lps_mm(float *out, const float *flow, int64_t n, const double affine[16])
{
    static const double lps[3] = {-1, -1, 1};
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        double u[3] = {flow[i], flow[n + i], flow[2 * n + i]}, v[3];
        for (int r = 0; r < 3; r++)
            v[r] = lps[r] * (affine[r * 4] * u[0] + affine[r * 4 + 1] * u[1] +
                             affine[r * 4 + 2] * u[2]);
        for (int r = 0; r < 3; r++)
            out[r * n + i] = (float)v[r];
    }
}

int lm_field_lps_mm_to_vox(float *out, const float *field, int64_t n, const double affine[16])
{
    double inv[16];
    if (inv4(affine, inv) < 0)
        return -1;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        double w[3] = {-(double)field[i], -(double)field[n + i], field[2 * n + i]}, v[3];
        for (int r = 0; r < 3; r++)
            v[r] = inv[r * 4] * w[0] + inv[r * 4 + 1] * w[1] + inv[r * 4 + 2] * w[2];
        for (int r = 0; r < 3; r++)
            out[r * n + i] = (float)v[r];
    }
    return 0;
}
