/* conv3d.c — 3-D convolution, kernel 3, padding 1, stride 1 or 2, batch 1, NCDHW, on the CPU,
 * through OpenBLAS sgemm. The forward has two forms, chosen by the shape alone:
 *   - stride 1 with Cin >= PLANES_MIN_CIN (the decoder): one GEMM per output plane with the
 *     nine in-plane taps as its rows and (depth tap, input channel) as its inner dimension, read
 *     from a ring of copied input planes, then a shift-and-add of the nine taps (fwd_s1_planes);
 *   - otherwise (stride 2, few input channels): im2col over tiles of output rows, each tile
 *     one independent GEMM y[:, tile] = W·col (fwd_im2col).
 * Either way every output element is computed by one thread in a fixed order. The backward
 * does im2col over a fixed number of output planes at a time (so the column buffer stays small
 * at 96×80×96 with 40 channels) and gathers (col2im as a gather, parallel over input planes)
 * so no two threads ever add into the same element; every reduction order is fixed, so the bits
 * do not depend on the thread count.
 * Not here: transposed or dilated convolutions, other kernel sizes.
 */
#include "cpu.h"

#include <cblas.h>
#include <string.h>

/* Target size of one column buffer; the chunk of output planes is derived from the shape
 * alone (never from the thread count). */
#define COL_BYTES (16u << 20)
/* im2col forward: target size of one tile's column buffer (about the core's L2), and the
 * fewest tiles a large enough output is cut into (so two or more threads share it evenly). */
#define FWD_COL_BYTES (256 << 10)
#define FWD_MIN_TILES 16
/* Input channels from which a stride-1 forward goes plane by plane (below, the inner
 * dimension 3·Cin of its GEMMs is too short for OpenBLAS to be fast). */
#define PLANES_MIN_CIN 4

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

/* Stride-2 input rows split by column parity: each row of W floats becomes its even
 * columns (ne = (W+1)/2 floats) followed by its odd ones, so a stride-2 tap row is a copy. */
typedef struct {
    const float *rows; /* rows (ci, kd, j): input plane z·2-1+kd, row y_base + j */
    int64_t y_base, nj;
} deint;

/* Output rows [r0, r0+nr) (row r = zo·Ho + yo, Wo voxels each) of the column matrix:
 * col[k, (r-r0)·Wo + xo] for k = ci·27 + kd·9 + kh·3 + kw, ld floats between the rows k, for the
 * groups kg = ci·9 + kd·3 + kh in [kg0, kg1) (three rows k each). A row of col is a copy of a run
 * of x (stride 1, or stride 2 from the split rows of di) between zeros; without di, stride 2
 * gathers from x. */
static void im2col_rows(float *col, int64_t ld, const float *x, const deint *di, const geom *g,
                        int64_t r0, int64_t nr, int64_t kg0, int64_t kg1)
{
    const int64_t s = g->s, Wo = g->Wo, W = g->W, ne = (W + 1) / 2;
    int64_t lo[3], hi[3]; /* xo in [lo, hi) read x at xo·s - 1 + kw; zeros elsewhere */
    for (int kw = 0; kw < 3; kw++) {
        lo[kw] = kw == 0 ? 1 : 0;
        hi[kw] = W - kw < 0 ? 0 : (W - kw) / s + 1;
        if (hi[kw] > Wo)
            hi[kw] = Wo;
        if (lo[kw] > hi[kw])
            lo[kw] = hi[kw];
    }
    for (int64_t kg = kg0; kg < kg1; kg++) {
        const int64_t ci = kg / 9, kd = kg / 3 % 3, kh = kg % 3;
        float *rows = col + kg * 3 * ld;
        for (int64_t rr = 0; rr < nr; rr++) {
            const int64_t zo = (r0 + rr) / g->Ho, yo = (r0 + rr) % g->Ho;
            const int64_t zi = zo * s - 1 + kd, yi = yo * s - 1 + kh;
            if (zi < 0 || zi >= g->D || yi < 0 || yi >= g->H) {
                for (int kw = 0; kw < 3; kw++)
                    memset(rows + kw * ld + rr * Wo, 0, (size_t)Wo * sizeof *rows);
                continue;
            }
            const float *xr = di ? di->rows + ((ci * 3 + kd) * di->nj + yi - di->y_base) * W
                                 : x + ((ci * g->D + zi) * g->H + yi) * W;
            for (int kw = 0; kw < 3; kw++) {
                float *d = rows + kw * ld + rr * Wo;
                const int64_t a = lo[kw], e = hi[kw];
                for (int64_t xo = 0; xo < a; xo++)
                    d[xo] = 0.0f;
                if (s == 1) /* d[xo] = x[xo - 1 + kw] */
                    memcpy(d + a, xr + a - 1 + kw, (size_t)(e - a) * sizeof *d);
                else if (di) /* kw 1: even column xo; kw 2: odd xo; kw 0: odd xo - 1 */
                    memcpy(d + a, xr + (kw == 1 ? a : ne + a - (kw == 0)),
                           (size_t)(e - a) * sizeof *d);
                else
                    for (int64_t xo = a; xo < e; xo++)
                        d[xo] = xr[2 * xo - 1 + kw];
                for (int64_t xo = e; xo < Wo; xo++)
                    d[xo] = 0.0f;
            }
        }
    }
}

/* col [rows, nz·P] for output planes z0..z0+nz-1 (the backward's chunks), parallel over the
 * groups of three rows */
static void im2col(float *col, const float *x, const geom *g, int64_t z0, int64_t nz)
{
    const int64_t ncol = nz * g->P, ngroups = (int64_t)g->Cin * 9;
#pragma omp parallel for schedule(static) if (g->rows * ncol >= LM_CPU_PAR_MIN)
    for (int64_t kg = 0; kg < ngroups; kg++)
        im2col_rows(col, ncol, x, NULL, g, z0 * g->Ho, nz * g->Ho, kg, kg + 1);
}

/* Output rows per forward tile (im2col path): tiles never cross an output plane; their height
 * depends on the shape only. */
static int64_t fwd_tile_rows(const geom *g)
{
    int64_t r = (int64_t)FWD_COL_BYTES / (g->rows * g->Wo * (int64_t)sizeof(float));
    int64_t cap = (g->Do * g->Ho + FWD_MIN_TILES - 1) / FWD_MIN_TILES; /* enough tiles */
    if (r > cap)
        r = cap;
    if (r > g->Ho)
        r = g->Ho;
    return r < 1 ? 1 : r;
}

/* The forward for stride 2 and for few input channels: the output is cut into tiles of whole
 * output rows within a plane, each an independent im2col + sgemm (y[:, tile] = W·col), so the
 * bits do not depend on which thread computes a tile. With stride 2 a tile first splits the
 * input rows it reads by column parity (deint), once, instead of gathering for every tap. */
static int fwd_im2col(float *y, const float *x, const float *w, const float *b, const geom *g)
{
    const int64_t nout = g->Do * g->P, rpt = fwd_tile_rows(g), nb = (g->Ho + rpt - 1) / rpt;
    const int64_t ntiles = g->Do * nb, nj = 2 * rpt + 1, W = g->W, ne = (W + 1) / 2;
    int failed = 0;
#pragma omp parallel if (ntiles > 1 && g->rows * nout >= LM_CPU_PAR_MIN)
    {
        float *col = lm_cpu_scratch((size_t)(g->rows * rpt * g->Wo) * sizeof *col);
        float *rows = g->s == 2 ? lm_cpu_scratch((size_t)(g->Cin * 3 * nj * W) * sizeof *rows)
                                : NULL;
        if (!col || (g->s == 2 && !rows)) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < ntiles; t++) {
            if (!col || (g->s == 2 && !rows))
                continue;
            const int64_t z = t / nb, y0 = t % nb * rpt;
            const int64_t nr = g->Ho - y0 < rpt ? g->Ho - y0 : rpt;
            const int64_t r0 = z * g->Ho + y0, v0 = r0 * g->Wo, nv = nr * g->Wo;
            deint di = {rows, 2 * y0 - 1, nj};
            if (g->s == 2) {
                for (int64_t ci = 0; ci < g->Cin; ci++)
                    for (int kd = 0; kd < 3; kd++) {
                        const int64_t zi = 2 * z - 1 + kd;
                        if (zi < 0 || zi >= g->D)
                            continue;
                        for (int64_t j = 0; j < 2 * nr + 1; j++) {
                            const int64_t yi = di.y_base + j;
                            if (yi < 0 || yi >= g->H)
                                continue;
                            const float *xr = x + ((ci * g->D + zi) * g->H + yi) * W;
                            float *d = rows + ((ci * 3 + kd) * nj + j) * W;
#pragma omp simd
                            for (int64_t i = 0; i < ne; i++)
                                d[i] = xr[2 * i];
#pragma omp simd
                            for (int64_t i = 0; i < W / 2; i++)
                                d[ne + i] = xr[2 * i + 1];
                        }
                    }
            }
            im2col_rows(col, nv, x, g->s == 2 ? &di : NULL, g, r0, nr, 0, (int64_t)g->Cin * 9);
            for (int co = 0; co < g->Cout; co++) {
                float v = b ? b[co] : 0.0f, *yc = y + co * nout + v0;
#pragma omp simd
                for (int64_t i = 0; i < nv; i++)
                    yc[i] = v;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, g->Cout, (int)nv,
                        (int)g->rows, 1.0f, w, (int)g->rows, col, (int)nv, 1.0f, y + v0,
                        (int)nout);
        }
        lm_cpu_scratch_free(col);
        lm_cpu_scratch_free(rows);
    }
    return failed ? -1 : 0;
}

/* Plane z of y: y[co, z, yo, xo] = b[co] + Σ_{kh,kw} t[(co·3+kh)·3+kw, (yo-1+kh, xo-1+kw)]
 * over the in-range positions, added in this fixed order (kh, then kw); t holds the nine
 * in-plane taps of the plane, ldt = H·W apart. Interior rows and columns take all nine terms in
 * one pass; the edges skip the terms outside, keeping the order. */
static void shift_add(float *yz, int64_t nout, const float *t, const float *b, const geom *g)
{
    const int64_t H = g->H, W = g->W, ldt = H * W;
    for (int co = 0; co < g->Cout; co++) {
        const float v = b ? b[co] : 0.0f;
        const float *tc = t + (int64_t)co * 9 * ldt; /* tc[m·ldt + yi·W + xi] */
        for (int64_t yo = 0; yo < H; yo++) {
            float *restrict r = yz + co * nout + yo * W;
            if (yo > 0 && yo + 1 < H && W > 2) {
                /* tap (kh,kw) at row yo-1+kh: p_kh_kw[xo - 1 + kw] */
                const float *restrict p00 = tc + (yo - 1) * W, *restrict p01 = p00 + ldt,
                                      *restrict p02 = p01 + ldt;
                const float *restrict p10 = p02 + ldt + W, *restrict p11 = p10 + ldt,
                                      *restrict p12 = p11 + ldt;
                const float *restrict p20 = p12 + ldt + W, *restrict p21 = p20 + ldt,
                                      *restrict p22 = p21 + ldt;
#pragma omp simd
                for (int64_t xo = 1; xo < W - 1; xo++)
                    r[xo] = v + p00[xo - 1] + p01[xo] + p02[xo + 1] + p10[xo - 1] + p11[xo] +
                            p12[xo + 1] + p20[xo - 1] + p21[xo] + p22[xo + 1];
                for (int64_t xo = 0; xo < W; xo += W - 1) { /* the two edge columns */
                    float sum = v;
                    for (int kh = 0; kh < 3; kh++)
                        for (int kw = 0; kw < 3; kw++) {
                            const int64_t xi = xo - 1 + kw;
                            if (xi >= 0 && xi < W)
                                sum += tc[(kh * 3 + kw) * ldt + (yo - 1 + kh) * W + xi];
                        }
                    r[xo] = sum;
                }
                continue;
            }
            for (int64_t xo = 0; xo < W; xo++) {
                float sum = v;
                for (int kh = 0; kh < 3; kh++) {
                    const int64_t yi = yo - 1 + kh;
                    if (yi < 0 || yi >= H)
                        continue;
                    for (int kw = 0; kw < 3; kw++) {
                        const int64_t xi = xo - 1 + kw;
                        if (xi >= 0 && xi < W)
                            sum += tc[(kh * 3 + kw) * ldt + yi * W + xi];
                    }
                }
                r[xo] = sum;
            }
        }
    }
}

/* Stride 1 with Cin >= PLANES_MIN_CIN, one output plane z at a time: the nine in-plane taps
 * (kh,kw) become rows of the GEMM and the depth taps and input channels its inner dimension,
 * so each packed element of x feeds 9·Cout products where an im2col would copy x 27 times:
 *   t[(co,kh,kw), q] = Σ_{kd,ci} w[co,ci,kd,kh,kw] · x[ci, z-1+kd, q]   (q over the plane)
 * then shift_add. Each thread keeps the input planes z-1, z, z+1 (all channels) in a ring of
 * three slots, slot zi mod 3, so consecutive planes copy one new input plane each; the inner
 * index of the GEMM is (slot, ci), and wk[r] orders the weights for the rotation r = (z-1) mod 3.
 * Planes outside the grid are zero slots. Plane z's sums depend on z and the shape alone.
 * (Cutting the plane into row chunks so that t stays in L2 measured no faster.) */
static int fwd_s1_planes(float *y, const float *x, const float *w, const float *b, const geom *g)
{
    const int64_t H = g->H, W = g->W, HW = H * W, DHW = g->D * HW, nout = DHW;
    const int64_t ldp = (HW + 15) / 16 * 16 + 16; /* slab row stride, off a power of two */
    const int Cin = g->Cin, M = 9 * g->Cout, K3 = 3 * Cin;
    /* planes per scheduling chunk: consecutive planes share two ring slots, but keep at least
     * about 16 chunks for the threads to share */
    const int64_t chunk = (g->D + 15) / 16 < 4 ? (g->D + 15) / 16 : 4;
    float *wk = lm_cpu_scratch((size_t)3 * M * K3 * sizeof *wk);
    int failed = 0;
    if (!wk)
        return -1;
    for (int r = 0; r < 3; r++) /* wk[r] [(co,kh,kw), (slot,ci)], slot = (r + kd) mod 3 */
        for (int co = 0; co < g->Cout; co++)
            for (int ci = 0; ci < Cin; ci++)
                for (int k = 0; k < 27; k++)
                    wk[((int64_t)r * M + co * 9 + k % 9) * K3 + (r + k / 9) % 3 * Cin + ci] =
                        w[((int64_t)co * Cin + ci) * 27 + k];
#pragma omp parallel if (g->D > 1 && g->rows * nout >= LM_CPU_PAR_MIN)
    {
        float *slab = lm_cpu_scratch((size_t)(3 * Cin * ldp) * sizeof *slab);
        float *t = lm_cpu_scratch((size_t)(M * HW) * sizeof *t);
        int64_t have = -3; /* planes have-1..have+1 are in the ring */
        if (!slab || !t) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, chunk)
        for (int64_t z = 0; z < g->D; z++) {
            if (!slab || !t)
                continue;
            for (int64_t zi = z == have + 1 ? z + 1 : z - 1; zi <= z + 1; zi++) {
                float *sl = slab + (zi + 3) % 3 * Cin * ldp;
                for (int ci = 0; ci < Cin; ci++) {
                    if (zi < 0 || zi >= g->D)
                        memset(sl + ci * ldp, 0, (size_t)HW * sizeof *sl);
                    else
                        memcpy(sl + ci * ldp, x + (ci * g->D + zi) * HW, (size_t)HW * sizeof *sl);
                }
            }
            have = z;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, (int)HW, K3, 1.0f,
                        wk + (z + 2) % 3 * M * K3, K3, slab, (int)ldp, 0.0f, t, (int)HW);
            shift_add(y + z * HW, nout, t, b, g);
        }
        lm_cpu_scratch_free(slab);
        lm_cpu_scratch_free(t);
    }
    lm_cpu_scratch_free(wk);
    return failed ? -1 : 0;
}

int lm_cpu_conv3d_fwd(lm_backend *be, float *y, const float *x, const float *w, const float *b,
                      const lm_conv3d_args *a)
{
    (void)be;
    geom g;
    if (geom_init(&g, a) < 0)
        return -1;
    if (g.s == 1 && g.Cin >= PLANES_MIN_CIN)
        return fwd_s1_planes(y, x, w, b, &g);
    return fwd_im2col(y, x, w, b, &g);
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
