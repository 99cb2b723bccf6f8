/* conv3d.c — 3-D convolution, kernel 3, padding 1, stride 1 or 2, batch 1, NCDHW, on the CPU:
 * im2col over a fixed number of output planes at a time (so the column buffer stays small
 * at 96×80×96 with 40 channels), then OpenBLAS sgemm. The backward gathers (col2im as a
 * gather, parallel over input planes) so no two threads ever add into the same element; every
 * reduction order is fixed, so the bits do not depend on the thread count.
 * Not here: transposed or dilated convolutions, other kernel sizes.
 */
#include "cpu.h"

#include <string.h>

/* Target size of one column buffer; the chunk of output planes is derived from the shape
 * alone (never from the thread count). */
#define COL_BYTES (16u << 20)

typedef struct {
    int64_t D, H, W, Do, Ho, Wo, P; /* P = Ho·Wo */
    int s, Cin, Cout;
    int64_t rows; /* Cin·27 */
    int nz;       /* output planes per chunk */
} geom;

static int geom_init(geom *g, const lm_conv3d_args *a)
{
    LM_CPU_CHECK(a->Cin > 0 && a->Cout > 0 && a->D > 0 && a->H > 0 && a->W > 0,
                 "conv3d: bad shape Cin=%d Cout=%d grid %dx%dx%d", a->Cin, a->Cout, a->D, a->H,
                 a->W);
    LM_CPU_CHECK(a->stride == 1 || a->stride == 2, "conv3d: stride must be 1 or 2 (got %d)",
                 a->stride);
    g->s = a->stride;
    g->Cin = a->Cin;
    g->Cout = a->Cout;
    g->D = a->D, g->H = a->H, g->W = a->W;
    g->Do = (a->D - 1) / g->s + 1, g->Ho = (a->H - 1) / g->s + 1, g->Wo = (a->W - 1) / g->s + 1;
    g->P = g->Ho * g->Wo;
    g->rows = (int64_t)a->Cin * 27;
    int64_t plane_bytes = g->rows * g->P * (int64_t)sizeof(float);
    int64_t nz = (int64_t)COL_BYTES / plane_bytes;
    if (nz < 1)
        nz = 1;
    if (nz > g->Do)
        nz = g->Do;
    g->nz = (int)nz;
    LM_CPU_CHECK(g->rows <= INT32_MAX && g->Do * g->P <= INT32_MAX, "conv3d: too large for BLAS");
    return 0;
}

/* col [rows, nz·P] for output planes z0..z0+nz-1 */
static void im2col(float *col, const float *x, const geom *g, int64_t z0, int64_t nz)
{
    int64_t ncol = nz * g->P;
#pragma omp parallel for collapse(2) schedule(static) if (g->rows * ncol >= LM_CPU_PAR_MIN)
    for (int64_t r = 0; r < g->rows; r++) {
        for (int64_t zz = 0; zz < nz; zz++) {
            int64_t ci = r / 27, k = r % 27, kd = k / 9, kh = (k / 3) % 3, kw = k % 3;
            int64_t zi = (z0 + zz) * g->s - 1 + kd;
            float *dst = col + r * ncol + zz * g->P;
            if (zi < 0 || zi >= g->D) {
                memset(dst, 0, (size_t)g->P * sizeof *dst);
                continue;
            }
            const float *xp = x + (ci * g->D + zi) * g->H * g->W;
            for (int64_t yo = 0; yo < g->Ho; yo++) {
                int64_t yi = yo * g->s - 1 + kh;
                float *d = dst + yo * g->Wo;
                if (yi < 0 || yi >= g->H) {
                    memset(d, 0, (size_t)g->Wo * sizeof *d);
                    continue;
                }
                const float *xr = xp + yi * g->W;
                for (int64_t xo = 0; xo < g->Wo; xo++) {
                    int64_t xi = xo * g->s - 1 + kw;
                    d[xo] = xi >= 0 && xi < g->W ? xr[xi] : 0.0f;
                }
            }
        }
    }
}

int lm_cpu_conv3d_fwd(lm_backend *be, float *y, const float *x, const float *w, const float *b,
                      const lm_conv3d_args *a)
{
    (void)be;
    geom g;
    if (geom_init(&g, a) < 0)
        return -1;
    int64_t nout = g.Do * g.P;
#pragma omp parallel for schedule(static) if (g.Cout * nout >= LM_CPU_PAR_MIN)
    for (int co = 0; co < g.Cout; co++) {
        float v = b ? b[co] : 0.0f;
        float *yc = y + co * nout;
        for (int64_t i = 0; i < nout; i++)
            yc[i] = v;
    }
    float *col = lm_cpu_scratch((size_t)(g.rows * g.nz * g.P) * sizeof *col);
    if (!col)
        return -1;
    for (int64_t z0 = 0; z0 < g.Do; z0 += g.nz) {
        int64_t nz = g.Do - z0 < g.nz ? g.Do - z0 : g.nz;
        im2col(col, x, &g, z0, nz);
        lm_cpu_sgemm(0, 0, g.Cout, (int)(nz * g.P),
                    (int)g.rows, 1.0f, w, (int)g.rows, col, (int)(nz * g.P), 1.0f,
                    y + z0 * g.P, (int)nout);
    }
    lm_cpu_scratch_free(col);
    return 0;
}

/* dx[ci, zi, :, :] += Σ_k dcol[ci·27+k, output voxel hitting (zi,yi,xi) through tap k], for the
 * input planes that output planes z0..z0+nz-1 touch. */
static void col2im_gather(float *dx, const float *dcol, const geom *g, int64_t z0, int64_t nz)
{
    int64_t ncol = nz * g->P;
    int64_t zlo = z0 * g->s - 1, zhi = (z0 + nz - 1) * g->s + 1;
    if (zlo < 0)
        zlo = 0;
    if (zhi > g->D - 1)
        zhi = g->D - 1;
    int64_t nzi = zhi - zlo + 1;
#pragma omp parallel for collapse(2) schedule(static) if (g->Cin * nzi * g->H * g->W >= 4096)
    for (int64_t ci = 0; ci < g->Cin; ci++) {
        for (int64_t zi = zlo; zi <= zhi; zi++) {
            float *dxp = dx + (ci * g->D + zi) * g->H * g->W;
            const float *dc = dcol + ci * 27 * ncol;
            for (int64_t yi = 0; yi < g->H; yi++) {
                for (int64_t xi = 0; xi < g->W; xi++) {
                    double s = 0;
                    for (int kd = 0; kd < 3; kd++) {
                        int64_t tz = zi + 1 - kd; /* = zo·s */
                        if (tz < 0 || tz % g->s)
                            continue;
                        int64_t zo = tz / g->s;
                        if (zo < z0 || zo >= z0 + nz || zo >= g->Do)
                            continue;
                        for (int kh = 0; kh < 3; kh++) {
                            int64_t ty = yi + 1 - kh;
                            if (ty < 0 || ty % g->s)
                                continue;
                            int64_t yo = ty / g->s;
                            if (yo >= g->Ho)
                                continue;
                            for (int kw = 0; kw < 3; kw++) {
                                int64_t tx = xi + 1 - kw;
                                if (tx < 0 || tx % g->s)
                                    continue;
                                int64_t xo = tx / g->s;
                                if (xo >= g->Wo)
                                    continue;
                                int k = kd * 9 + kh * 3 + kw;
                                s += dc[k * ncol + (zo - z0) * g->P + yo * g->Wo + xo];
                            }
                        }
                    }
                    dxp[yi * g->W + xi] += (float)s;
                }
            }
        }
    }
}

int lm_cpu_conv3d_bwd(lm_backend *be, float *dx, float *dw, float *db, const float *dy,
                      const float *x, const float *w, const lm_conv3d_args *a)
{
    (void)be;
    geom g;
    int rc = -1;
    float *col = NULL, *tmp = NULL;
    double *acc = NULL;
    if (geom_init(&g, a) < 0)
        return -1;
    int64_t nout = g.Do * g.P;
    if (db) {
        for (int co = 0; co < g.Cout; co++)
            db[co] += (float)lm_cpu_sum_f32(dy + co * nout, nout);
    }
    if (!dw && !dx)
        return 0;
    col = lm_cpu_scratch((size_t)(g.rows * g.nz * g.P) * sizeof *col);
    if (!col)
        goto out;
    if (dw) {
        tmp = lm_cpu_scratch((size_t)(g.Cout * g.rows) * sizeof *tmp);
        acc = lm_cpu_scratch((size_t)(g.Cout * g.rows) * sizeof *acc);
        if (!tmp || !acc)
            goto out;
        memset(acc, 0, (size_t)(g.Cout * g.rows) * sizeof *acc);
    }
    for (int64_t z0 = 0; z0 < g.Do; z0 += g.nz) {
        int64_t nz = g.Do - z0 < g.nz ? g.Do - z0 : g.nz;
        int ncol = (int)(nz * g.P);
        if (dw) {
            im2col(col, x, &g, z0, nz);
            lm_cpu_sgemm(0, 1, g.Cout, (int)g.rows, ncol, 1.0f,
                        dy + z0 * g.P, (int)nout, col, ncol, 0.0f, tmp, (int)g.rows);
            for (int64_t i = 0; i < g.Cout * g.rows; i++)
                acc[i] += tmp[i];
        }
        if (dx) {
            lm_cpu_sgemm(1, 0, (int)g.rows, ncol, g.Cout, 1.0f,
                        w, (int)g.rows, dy + z0 * g.P, (int)nout, 0.0f, col, ncol);
            col2im_gather(dx, col, &g, z0, nz);
        }
    }
    if (dw)
        for (int64_t i = 0; i < g.Cout * g.rows; i++)
            dw[i] += (float)acc[i];
    rc = 0;
out:
    lm_cpu_scratch_free(col);
    lm_cpu_scratch_free(tmp);
    lm_cpu_scratch_free(acc);
    return rc;
}
