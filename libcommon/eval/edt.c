/* edt.c — 6-connected borders, the exact Euclidean distance transform, numpy's percentile and
 * HD95 (lm_metrics.h).
 *
 * The distance transform is separable (Felzenszwalb & Huttenlocher, "Distance transforms of
 * sampled functions", 2012): the squared distance to the nearest feature is a minimum over the
 * features of a sum of per-axis squares, so it is computed one axis at a time, each line as the
 * lower envelope of parabolas s^2 (q - p)^2 + f(p). It is exact for any spacing, like scipy's
 * Maurer-based distance_transform_edt; only the rounding of the sums may differ (~1 ulp).
 *
 * HD95 works on the bounding box of A or B: every border voxel of both lies in it, and the
 * transform inside a box that holds all features is the transform of the whole volume there,
 * so nothing is lost, and a small organ in a large volume costs only its box.
 */
#include "lm_metrics.h"

#include "io/lm_error.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* Below this many voxels a parallel region costs more than it saves (and under load a
 * barrier can cost a time slice). */
#define LM_PAR_MIN (1 << 16)

void lm_border6(uint8_t *border, const uint8_t *mask, const int64_t dims[3])
{
    const int64_t D = dims[0], H = dims[1], W = dims[2], sh = W, sd = H * W;
#pragma omp parallel for schedule(static) if (D * sd >= LM_PAR_MIN)
    for (int64_t d = 0; d < D; d++)
        for (int64_t h = 0; h < H; h++) {
            const uint8_t *m = mask + d * sd + h * sh;
            uint8_t *o = border + d * sd + h * sh;
            for (int64_t w = 0; w < W; w++) {
                if (!m[w]) {
                    o[w] = 0;
                    continue;
                }
                int in = d > 0 && d < D - 1 && h > 0 && h < H - 1 && w > 0 && w < W - 1 &&
                         m[w - 1] && m[w + 1] && m[w - sh] && m[w + sh] && m[w - sd] && m[w + sd];
                o[w] = !in;
            }
        }
}

/* One line of the lower-envelope pass: out[q] = min_p ((q-p) s)^2 + f[p]. f may hold +inf
 * (no feature reachable); a line of +inf stays +inf. v: n ints, z: n+1 doubles of scratch. */
static void envelope(double *out, const double *f, int64_t n, double s, int64_t *v, double *z)
{
    const double w = s * s;
    int64_t k = -1;
    for (int64_t q = 0; q < n; q++) {
        if (isinf(f[q]))
            continue;
        double sq = 0;
        while (k >= 0) {
            int64_t p = v[k];
            sq = ((f[q] + w * (double)(q * q)) - (f[p] + w * (double)(p * p))) /
                 (2.0 * w * (double)(q - p));
            if (sq <= z[k])
                k--;
            else
                break;
        }
        k++;
        v[k] = q;
        z[k] = k == 0 ? -INFINITY : sq;
        z[k + 1] = INFINITY;
    }
    if (k < 0) {
        for (int64_t q = 0; q < n; q++)
            out[q] = INFINITY;
        return;
    }
    int64_t j = 0;
    for (int64_t q = 0; q < n; q++) {
        while (z[j + 1] < (double)q)
            j++;
        double t = (double)(q - v[j]) * s;
        out[q] = f[v[j]] + t * t;
    }
}

int lm_edt_sq(double *d2, const uint8_t *feat, const int64_t dims[3], const double spacing[3])
{
    const int64_t D = dims[0], H = dims[1], W = dims[2], HW = H * W;
    int64_t maxn = D > H ? D : H;
    maxn = maxn > W ? maxn : W;
    /* axis W: distance to the nearest feature in the row, two scans */
#pragma omp parallel for schedule(static) if (D * HW >= LM_PAR_MIN)
    for (int64_t r = 0; r < D * H; r++) {
        const uint8_t *f = feat + r * W;
        double *o = d2 + r * W;
        int64_t last = -1;
        for (int64_t w = 0; w < W; w++) {
            if (f[w])
                last = w;
            o[w] = last < 0 ? INFINITY : (double)(w - last);
        }
        last = -1;
        for (int64_t w = W - 1; w >= 0; w--) {
            if (f[w])
                last = w;
            if (last >= 0 && (double)(last - w) < o[w])
                o[w] = (double)(last - w);
            if (!isinf(o[w])) {
                double t = o[w] * spacing[2];
                o[w] = t * t;
            }
        }
    }
    /* axes H then D: lower envelopes of parabolas along each column; per-thread scratch */
    const int nt = omp_get_max_threads();
    const size_t per = (size_t)(4 * maxn + 1);
    double *scratch = malloc((size_t)nt * per * sizeof *scratch);
    if (!scratch)
        return lm_error_set("out of memory");
#pragma omp parallel num_threads(nt) if (D * HW >= LM_PAR_MIN)
    {
        double *in = scratch + (size_t)omp_get_thread_num() * per, *out = in + maxn;
        double *z = out + maxn;
        int64_t *v = (int64_t *)(z + maxn + 1); /* same size as a double */
        if (H > 1) {
#pragma omp for schedule(static)
            for (int64_t d = 0; d < D; d++)
                for (int64_t w = 0; w < W; w++) {
                    double *col = d2 + d * HW + w;
                    for (int64_t h = 0; h < H; h++)
                        in[h] = col[h * W];
                    envelope(out, in, H, spacing[1], v, z);
                    for (int64_t h = 0; h < H; h++)
                        col[h * W] = out[h];
                }
        }
        if (D > 1) {
#pragma omp for schedule(static)
            for (int64_t hw = 0; hw < HW; hw++) {
                double *col = d2 + hw;
                for (int64_t d = 0; d < D; d++)
                    in[d] = col[d * HW];
                envelope(out, in, D, spacing[0], v, z);
                for (int64_t d = 0; d < D; d++)
                    col[d * HW] = out[d];
            }
        }
    }
    free(scratch);
    return 0;
}

/* ---- numpy.percentile ---- */

static inline void swapd(double *x, int64_t i, int64_t j)
{
    double t = x[i];
    x[i] = x[j];
    x[j] = t;
}

/* The k-th smallest (0-based); afterwards x[k+1..n) >= x[k] (three-way quickselect, so the
 * many equal distances of a voxel grid cost nothing). */
static double select_k(double *x, int64_t n, int64_t k)
{
    int64_t l = 0, r = n - 1;
    while (l < r) {
        double a = x[l], b = x[l + (r - l) / 2], c = x[r], p;
        if (a < b)
            p = b < c ? b : (a < c ? c : a);
        else
            p = a < c ? a : (b < c ? c : b);
        int64_t lt = l, i = l, gt = r;
        while (i <= gt) {
            if (x[i] < p)
                swapd(x, lt++, i++);
            else if (x[i] > p)
                swapd(x, i, gt--);
            else
                i++;
        }
        if (k < lt)
            r = lt - 1;
        else if (k > gt)
            l = gt + 1;
        else
            return p;
    }
    return x[k];
}

double lm_percentile(double *x, int64_t n, double q)
{
    /* numpy: virtual index (n-1)*(q/100), floor, gamma, then _lerp(a, b, gamma) which
     * computes b - (b-a)(1-g) instead of a + (b-a)g when g >= 0.5 */
    double vi = (double)(n - 1) * (q / 100.0);
    double fl = floor(vi);
    int64_t lo = (int64_t)fl;
    if (lo < 0)
        lo = 0;
    if (lo > n - 1)
        lo = n - 1;
    double g = vi - fl;
    double a = select_k(x, n, lo), b = a;
    if (lo + 1 < n) {
        b = x[lo + 1];
        for (int64_t i = lo + 2; i < n; i++)
            if (x[i] < b)
                b = x[i];
    }
    double diff = b - a;
    return g >= 0.5 ? b - diff * (1.0 - g) : a + diff * g;
}

/* ---- HD95 ---- */

int lm_hd95(double *out, const int32_t *a, const int32_t *b, const int64_t dims[3],
            const double spacing[3], const lm_label_stats *s, lm_hd_mode mode)
{
    *out = NAN;
    if (s->na == 0 || s->nb == 0)
        return 1;
    const int32_t L = s->label;
    int64_t bd[3];
    for (int x = 0; x < 3; x++)
        bd[x] = s->hi[x] - s->lo[x] + 1;
    const int64_t n = bd[0] * bd[1] * bd[2];
    int rc = -1;
    uint8_t *ma = malloc((size_t)n), *mb = malloc((size_t)n);
    uint8_t *ba = malloc((size_t)n), *bb = malloc((size_t)n);
    double *d2 = malloc((size_t)n * sizeof *d2), *dist = NULL;
    if (!ma || !mb || !ba || !bb || !d2) {
        lm_error_set("out of memory");
        goto out;
    }
    const int64_t H = dims[1], W = dims[2];
#pragma omp parallel for schedule(static) if (n >= LM_PAR_MIN)
    for (int64_t d = 0; d < bd[0]; d++)
        for (int64_t h = 0; h < bd[1]; h++) {
            int64_t src = ((s->lo[0] + d) * H + s->lo[1] + h) * W + s->lo[2];
            int64_t dst = (d * bd[1] + h) * bd[2];
            for (int64_t w = 0; w < bd[2]; w++) {
                ma[dst + w] = a[src + w] == L;
                mb[dst + w] = b[src + w] == L;
            }
        }
    lm_border6(ba, ma, bd);
    lm_border6(bb, mb, bd);
    int64_t nba = 0, nbb = 0;
    for (int64_t i = 0; i < n; i++) {
        nba += ba[i];
        nbb += bb[i];
    }
    dist = malloc((size_t)(nba + nbb) * sizeof *dist);
    if (!dist) {
        lm_error_set("out of memory");
        goto out;
    }
    /* d_AB: distances from A's border to B's border, then d_BA */
    if (lm_edt_sq(d2, bb, bd, spacing) < 0)
        goto out;
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++)
        if (ba[i])
            dist[k++] = sqrt(d2[i]);
    if (lm_edt_sq(d2, ba, bd, spacing) < 0)
        goto out;
    for (int64_t i = 0; i < n; i++)
        if (bb[i])
            dist[k++] = sqrt(d2[i]);
    if (mode == LM_HD_MONAI) {
        double p1 = lm_percentile(dist, nba, 95.0), p2 = lm_percentile(dist + nba, nbb, 95.0);
        *out = p1 > p2 ? p1 : p2;
    } else {
        *out = lm_percentile(dist, nba + nbb, 95.0);
    }
    rc = 0;
out:
    free(ma);
    free(mb);
    free(ba);
    free(bb);
    free(d2);
    free(dist);
    return rc;
}
