/* resample.c — trilinear ×2 upsampling (align_corners=False) and 2×2×2 average pooling on the
 * CPU, forward and adjoint. Both are separable linear maps: each axis is a small sparse matrix
 * (≤ 2 taps per output row); the forward gathers with it and the backward gathers with its
 * transpose (≤ 4 taps per input row), so neither ever scatters. Sums in double, fixed order.
 * Not here: flow value scaling (multiply by 2 with the scale op), other factors.
 */
#include "cpu.h"

#include <stdlib.h>

#define MAXT 4

typedef struct {
    int64_t n;        /* rows */
    int *cnt;         /* [n] taps per row */
    int64_t *idx;     /* [n·MAXT] */
    double *w;        /* [n·MAXT] */
} axmap;

static void ax_free(axmap *m)
{
    free(m->cnt);
    free(m->idx);
    free(m->w);
}

static int ax_alloc(axmap *m, int64_t n)
{
    m->n = n;
    m->cnt = calloc((size_t)(n ? n : 1), sizeof *m->cnt);
    m->idx = calloc((size_t)(n ? n : 1) * MAXT, sizeof *m->idx);
    m->w = calloc((size_t)(n ? n : 1) * MAXT, sizeof *m->w);
    if (!m->cnt || !m->idx || !m->w) {
        ax_free(m);
        return lm_error_set("resample: out of memory");
    }
    return 0;
}

static void ax_add(axmap *m, int64_t row, int64_t col, double w)
{
    for (int t = 0; t < m->cnt[row]; t++)
        if (m->idx[row * MAXT + t] == col) { /* merge duplicate taps (clamped edges) */
            m->w[row * MAXT + t] += w;
            return;
        }
    m->idx[row * MAXT + m->cnt[row]] = col;
    m->w[row * MAXT + m->cnt[row]] = w;
    m->cnt[row]++;
}

/* forward map of one axis: input size n -> output size (up ? 2n : n/2); transposed if tr */
static int ax_build(axmap *m, int64_t n, int up, int tr)
{
    int64_t no = up ? 2 * n : n / 2;
    if (ax_alloc(m, tr ? n : no) < 0)
        return -1;
    for (int64_t j = 0; j < no; j++) {
        if (up) {
            int64_t i0, i1;
            double w1;
            lm_k_up2_src(j, n, &i0, &i1, &w1);
            if (tr) {
                ax_add(m, i0, j, 1.0 - w1);
                if (w1 != 0.0)
                    ax_add(m, i1, j, w1);
            } else {
                ax_add(m, j, i0, 1.0 - w1);
                if (w1 != 0.0)
                    ax_add(m, j, i1, w1);
            }
        } else {
            for (int64_t i = 2 * j; i < 2 * j + 2; i++) {
                if (tr)
                    ax_add(m, i, j, 0.5);
                else
                    ax_add(m, j, i, 0.5);
            }
        }
    }
    return 0;
}

/* y[c, a, b, e] (+)= Σ mD[a]·mH[b]·mW[e]·x[c, ·, ·, ·]; x has grid (xd, xh, xw). */
static void sep_apply(float *y, const float *x, int C, const axmap *mD, const axmap *mH,
                      const axmap *mW, int64_t xd, int64_t xh, int64_t xw, int acc)
{
    const int64_t yd = mD->n, yh = mH->n, yw = mW->n;
#pragma omp parallel for collapse(2) schedule(static) if (C * yd * yh * yw >= LM_CPU_PAR_MIN)
    for (int64_t c = 0; c < C; c++)
        for (int64_t z = 0; z < yd; z++) {
            const float *xc = x + c * xd * xh * xw;
            for (int64_t yy = 0; yy < yh; yy++) {
                float *yr = y + ((c * yd + z) * yh + yy) * yw;
                for (int64_t xx = 0; xx < yw; xx++) {
                    double s = 0;
                    for (int ta = 0; ta < mD->cnt[z]; ta++) {
                        const float *xp = xc + mD->idx[z * MAXT + ta] * xh * xw;
                        double wa = mD->w[z * MAXT + ta];
                        for (int tb = 0; tb < mH->cnt[yy]; tb++) {
                            const float *xq = xp + mH->idx[yy * MAXT + tb] * xw;
                            double wb = wa * mH->w[yy * MAXT + tb];
                            for (int te = 0; te < mW->cnt[xx]; te++)
                                s += wb * mW->w[xx * MAXT + te] * xq[mW->idx[xx * MAXT + te]];
                        }
                    }
                    yr[xx] = acc ? (float)(yr[xx] + s) : (float)s;
                }
            }
        }
}

static int resample(float *y, const float *x, const lm_vol_args *a, int up, int tr,
                    const char *what)
{
    LM_CPU_CHECK(a->C > 0 && a->D > 0 && a->H > 0 && a->W > 0, "%s: bad shape C=%d %dx%dx%d",
                 what, a->C, a->D, a->H, a->W);
    LM_CPU_CHECK(up || (a->D >= 2 && a->H >= 2 && a->W >= 2), "%s: every axis must be >= 2",
                 what);
    axmap m[3] = {{0}, {0}, {0}};
    int64_t dims[3] = {a->D, a->H, a->W}, other[3];
    int rc = -1;
    for (int i = 0; i < 3; i++) {
        if (ax_build(&m[i], dims[i], up, tr) < 0)
            goto out;
        other[i] = up ? 2 * dims[i] : dims[i] / 2;
    }
    if (tr) /* y is dx on the input grid, x is dy on the output grid */
        sep_apply(y, x, a->C, &m[0], &m[1], &m[2], other[0], other[1], other[2], 1);
    else
        sep_apply(y, x, a->C, &m[0], &m[1], &m[2], dims[0], dims[1], dims[2], 0);
    rc = 0;
out:
    for (int i = 0; i < 3; i++)
        ax_free(&m[i]);
    return rc;
}

int lm_cpu_upsample2_fwd(lm_backend *be, float *y, const float *x, const lm_vol_args *a)
{
    (void)be;
    return resample(y, x, a, 1, 0, "upsample2");
}

int lm_cpu_upsample2_bwd(lm_backend *be, float *dx, const float *dy, const lm_vol_args *a)
{
    (void)be;
    return resample(dx, dy, a, 1, 1, "upsample2");
}

int lm_cpu_avgpool2_fwd(lm_backend *be, float *y, const float *x, const lm_vol_args *a)
{
    (void)be;
    return resample(y, x, a, 0, 0, "avgpool2");
}

int lm_cpu_avgpool2_bwd(lm_backend *be, float *dx, const float *dy, const lm_vol_args *a)
{
    (void)be;
    return resample(dx, dy, a, 0, 1, "avgpool2");
}
