/* conv3d.c — 3-D convolution, kernel 3, padding 1, stride 1 or 2, batch 1, NCDHW, on the CPU.
 * Where the CPU has AVX2 and FMA the forward is direct, but for stride 1 with many input
 * channels over large planes (direct_use): register micro-tiles of output channels × voxels
 * over input planes copied into a padded (stride 1) or phase-split (stride 2) layout, every
 * output element one thread's FMA chains in a fixed order (fwd_direct, below). Through OpenBLAS
 * the small, strided and few-channel layers of the abdomen network ran at 5-35% of the
 * machine's sgemm peak: OpenMP fork/join and waits around many small sgemm calls, im2col
 * copies, N = Cout of 3..32. Otherwise, or with LM_CONV_BLAS=1 in the environment (tests
 * compare the two), the forward goes through OpenBLAS sgemm in one of two forms, chosen by the
 * shape alone:
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
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CONV_HAVE_AVX2 1
#endif

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

#ifdef CONV_HAVE_AVX2
/* ---- The direct AVX2 forward --------------------------------------------------------------
 * Every output element is bias plus FMA chains over its taps in a fixed order (kd, ci, kh, kw;
 * the taps that read planes outside the grid left out), computed in registers: no column
 * matrix, no GEMM library call. The input planes an output plane reads are first copied, per
 * thread, into "prepared" planes whose layout makes every tap a fixed offset from the output
 * position:
 *   stride 1: each plane padded by one zero row/column on every side, rows Wp floats apart;
 *   stride 2: each plane split into its four (row parity, column parity) phases, each with a
 *            leading zero row and column (the odd phases hold x[2j-1] at j), rows Wp apart;
 * so with q = yo·Wp + xo, tap j reads ring[xo[j] + q] for every output voxel of the plane,
 * and consecutive q are consecutive floats (positions with xo >= Wo are computed and thrown
 * away). A micro-tile is mr output channels (weights broadcast) by nv vectors of 8 consecutive
 * q; the taps go in blocks of CONV_KC, each block for all the channels before the next (the
 * tile's inputs then stay in L1), and each block's FMA chain is added to the sum of the
 * blocks before it (one chain over all Cin·27 taps rounds too much for the tests at Cin = 40).
 * Each tap also prefetches the next tile's inputs in its row. Wide rows (Wo >= 16) are tiled
 * block of taps by block over bands of rows (a block's weights and input rows stay in L1
 * across the band's tiles -- dec S1 head 8->3 at 96x80x96, 216 taps, 16-20% faster on 1 and 2
 * threads), narrow ones as one run over the plane -- or,
 * where the output channels fill vectors of 16 (enc conv4, conv5, dec S4), with the channels
 * in the lanes and the positions broadcast (conv_cv_plane, weights transposed by tap per
 * call). Threads take output planes -- on that channels-in-lanes path, groups of 16 output
 * channels first (fwd_direct) -- and a thread keeps the last three input planes it prepared
 * in a ring. Below CONV_PAR_FLOPS one thread
 * does it all: there a second one costs more (fork, join) than it saves. On an idle 2-core
 * machine the 40 MFLOP layer 16->32 24x20x24 s2 takes 0.6 ms on two threads against 0.7 ms on
 * one; when other work keeps a core busy, one thread wins (0.7-1.0 ms against 1.4-1.7 ms), so
 * the bar sits just below that layer. */
#define CONV_MR 4  /* most output channels in a micro-tile */
#define CONV_KC 96 /* taps per block */
#define CONV_PAR_FLOPS (1 << 22)

typedef struct {
    const geom *g;
    const float *x, *b;
    const float *w; /* the weights, [Cout, Cin·27] as given */
    int *wo;        /* [Cin·27] where tap k = (kd·Cin + ci)·9 + kh·3 + kw is in a row of w:
                     * ci·27 + kd·9 + kh·3 + kw */
    float *y;
    int *off;       /* [Cin·9] offset of tap (ci, kh, kw) in a prepared slot */
    int64_t Wp;     /* row pitch of a prepared plane (and of q) */
    int64_t PH;     /* stride 2: floats per phase */
    int64_t PS;     /* floats per channel of a prepared plane, slack included */
    int64_t Q;      /* q range of an output plane: (Ho-1)·Wp + Wo */
    int mr, nv, nw; /* micro-tile: mr output channels by nv vectors (nw = 8·nv voxels) */
    int rowwise;
    int64_t band;    /* rowwise: rows of a band of full tiles (direct_plane) */
    int cv;          /* output channels in vectors, positions broadcast (conv_cv_plane) */
} dctx;

/* For the ntl tiles s of 8·NV voxels (out, in and xq + 8·NV·s) and the nb blocks i of MR
 * channels (out + i·MR·ldo, in + i·MR·ldi, b + i·MR, w + i·MR·K27), out[m·ldo + 8j + l] =
 * in[m·ldi + 8j + l] + c (in given) or c, where c is the FMA chain init +
 * Σ_{t in [t0,t1)} w[m·K27 + wo[t]]·xq[xo[t] + 8j + l] in order, init = b[m] (b given) or 0.
 * The NV vectors of x are loaded first, then each weight broadcast; where that needs more than
 * the 16 vector registers, the MR weights first, then each vector. */
#define CONV_UKR(MR, NV)                                                                           \
    __attribute__((target("avx2,fma"))) static void conv_ukr##MR##_##NV(                           \
        float *out, int64_t ldo, const float *in, int64_t ldi, const float *b, const float *xq,    \
        const int *xo, const int *wo, int t0, int t1, const float *w, int64_t K27, int nb,         \
        int ntl)                                                                                   \
    {                                                                                              \
        for (int i = 0; i < nb * ntl; i++) {                                                       \
            const int s = i / nb, ib = i - s * nb;                                                 \
            float *o = out + MR * ib * ldo + 8 * NV * s;                                           \
            const float *a = in ? in + MR * ib * ldi + 8 * NV * s : NULL;                          \
            const float *xs = xq + 8 * NV * s;                                                     \
            __asm__("" : "+r"(xs));                                                                \
            __m256 acc[MR][NV];                                                                    \
            _Pragma("GCC unroll 8") for (int m = 0; m < MR; m++)                                   \
            {                                                                                      \
                const __m256 v = _mm256_set1_ps(b ? b[MR * ib + m] : 0.0f);                        \
                _Pragma("GCC unroll 8") for (int j = 0; j < NV; j++) acc[m][j] = v;                \
            }                                                                                      \
            const float *wm[MR]; /* the rows of the MR channels: a broadcast is one instruction */ \
            _Pragma("GCC unroll 8") for (int m = 0; m < MR; m++)                                   \
            { /* (opaque to GCC, which would otherwise add each row's offset again per tap) */     \
                wm[m] = w + (MR * ib + m) * K27;                                                   \
                __asm__("" : "+r"(wm[m]));                                                         \
            }                                                                                      \
            for (int t = t0; t < t1; t++) {                                                        \
                const float *p = xs + xo[t];                                                       \
                const int wt = wo[t];                                                              \
                _mm_prefetch((const char *)(p + 8 * NV + 16), _MM_HINT_T0);                        \
                if (MR * NV + NV + 1 <= 16) {                                                      \
                    __m256 xv[NV];                                                                 \
                    _Pragma("GCC unroll 8") for (int j = 0; j < NV; j++) xv[j] =                   \
                        _mm256_loadu_ps(p + 8 * j);                                                \
                    _Pragma("GCC unroll 8") for (int m = 0; m < MR; m++)                           \
                    {                                                                              \
                        const __m256 wv = _mm256_broadcast_ss(wm[m] + wt);                         \
                        _Pragma("GCC unroll 8") for (int j = 0; j < NV; j++) acc[m][j] =           \
                            _mm256_fmadd_ps(wv, xv[j], acc[m][j]);                                 \
                    }                                                                              \
                } else {                                                                           \
                    __m256 wv[MR];                                                                 \
                    _Pragma("GCC unroll 8") for (int m = 0; m < MR; m++) wv[m] =                   \
                        _mm256_broadcast_ss(wm[m] + wt);                                           \
                    _Pragma("GCC unroll 8") for (int j = 0; j < NV; j++)                           \
                    {                                                                              \
                        const __m256 xv = _mm256_loadu_ps(p + 8 * j);                              \
                        _Pragma("GCC unroll 8") for (int m = 0; m < MR; m++) acc[m][j] =           \
                            _mm256_fmadd_ps(wv[m], xv, acc[m][j]);                                 \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
            _Pragma("GCC unroll 8") for (int m = 0; m < MR; m++)                                   \
                _Pragma("GCC unroll 8") for (int j = 0; j < NV; j++) _mm256_storeu_ps(             \
                    o + m * ldo + 8 * j,                                                           \
                    a ? _mm256_add_ps(_mm256_loadu_ps(a + m * ldi + 8 * j), acc[m][j])             \
                      : acc[m][j]);                                                                \
        }                                                                                          \
    }
CONV_UKR(1, 3)
CONV_UKR(2, 3)
CONV_UKR(3, 3)
CONV_UKR(4, 3)
CONV_UKR(1, 4)
CONV_UKR(2, 4)
CONV_UKR(3, 4)
CONV_UKR(1, 5)
CONV_UKR(2, 5)

typedef void conv_ukr_fn(float *, int64_t, const float *, int64_t, const float *, const float *,
                         const int *, const int *, int, int, const float *, int64_t, int, int);
/* [nv - 3][mr - 1]; nv 4 takes up to 3 channels, nv 5 up to 2 (16 vector registers) */
static conv_ukr_fn *const conv_ukrs[3][CONV_MR] = {
    {conv_ukr1_3, conv_ukr2_3, conv_ukr3_3, conv_ukr4_3},
    {conv_ukr1_4, conv_ukr2_4, conv_ukr3_4},
    {conv_ukr1_5, conv_ukr2_5}};

/* input plane zi of every channel into a prepared slot (only the data positions are written:
 * the zero borders were set once) */
__attribute__((target("avx2,fma"))) static void direct_prepare(float *slot, const dctx *c,
                                                               int64_t zi)
{
    const geom *g = c->g;
    const int64_t H = g->H, W = g->W, Wp = c->Wp, PH = c->PH;
    for (int64_t ci = 0; ci < g->Cin; ci++) {
        const float *src = c->x + (ci * g->D + zi) * H * W;
        float *dst = slot + ci * c->PS;
        if (g->s == 1) {
            for (int64_t yi = 0; yi < H; yi++)
                memcpy(dst + (yi + 1) * Wp + 1, src + yi * W, (size_t)W * sizeof *dst);
            continue;
        }
        for (int64_t yi = 0; yi < H; yi++) {
            /* row yi is row (yi+1)/2 of the odd phases or yi/2 of the even ones; column 2i
             * goes to the even phase at i, 2i+1 to the odd one at i+1 */
            const int64_t py = yi & 1, jy = (yi + py) / 2;
            float *de = dst + (2 * py) * PH + jy * Wp, *dodd = de + PH + 1;
            const float *sr = src + yi * W;
            int64_t i = 0;
            for (; 2 * i + 16 <= W; i += 8) {
                const __m256 a = _mm256_loadu_ps(sr + 2 * i), b = _mm256_loadu_ps(sr + 2 * i + 8);
                const __m256 e = _mm256_shuffle_ps(a, b, 0x88), o = _mm256_shuffle_ps(a, b, 0xDD);
                _mm256_storeu_ps(
                    de + i, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xD8)));
                _mm256_storeu_ps(
                    dodd + i, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), 0xD8)));
            }
            for (; 2 * i + 8 <= W; i += 4) { /* short rows (enc conv5: 12) */
                const __m128 a = _mm_loadu_ps(sr + 2 * i), b = _mm_loadu_ps(sr + 2 * i + 4);
                _mm_storeu_ps(de + i, _mm_shuffle_ps(a, b, 0x88));
                _mm_storeu_ps(dodd + i, _mm_shuffle_ps(a, b, 0xDD));
            }
            for (; 2 * i < W; i++) {
                de[i] = sr[2 * i];
                if (2 * i + 1 < W)
                    dodd[i] = sr[2 * i + 1];
            }
        }
    }
}

/* Planes of few positions with many output channels (enc conv5: 6x5x6 positions, 32
 * channels): the tiles of q would compute a quarter of their lanes for nothing, so here the
 * channels are the vector lanes instead: a micro-tile is 16 channels (two vectors of weights
 * wt[k][co..co+15]) by CV_NP positions, each input value broadcast; taps in blocks of CONV_KC
 * as in conv_ukr (the first block's chain starts at the bias, each later one at 0 and is added
 * to the sum of the blocks before it), so every output element is one fixed chain. qs: the
 * q of the plane's positions (pos = yo·Wo + xo at q = yo·Wp + xo), npos of them. Output
 * channels [co0, co1) only, their weights by tap in wt [Cin·27][co1 - co0]. */
#define CV_NP 6
__attribute__((target("avx2,fma"))) static void
conv_cv_plane(const dctx *c, float *yz, const float *ring, const int *xo, int k0, int k1,
              const int *qs, int npos, float *part, const float *wt, int co0, int co1)
{
    const geom *g = c->g;
    const int64_t nout = g->Do * g->P, ldw = co1 - co0;
    for (int p0 = 0; p0 < npos; p0 += CV_NP) {
        const int np = npos - p0 < CV_NP ? npos - p0 : CV_NP;
        /* the positions' input pointers: a tap's broadcast is then one instruction, pointer
         * plus tap offset (ring + q + xo took a lea more each, 36 instructions a tap for 12
         * FMAs where the front end issues about 5 a cycle) */
        const float *xq[CV_NP];
        for (int j = 0; j < CV_NP; j++) /* a short last group repeats its last position */
            xq[j] = ring + qs[p0 + (j < np ? j : np - 1)];
        for (int64_t co = co0; co < co1; co += 16) {
            for (int t0 = k0; t0 < k1; t0 += CONV_KC) {
                const int t1 = k1 - t0 < CONV_KC ? k1 : t0 + CONV_KC;
                __m256 acc[2][CV_NP];
                const int bias = t0 == k0 && c->b;
                const __m256 b0 = bias ? _mm256_loadu_ps(c->b + co) : _mm256_setzero_ps(),
                             b1 = bias ? _mm256_loadu_ps(c->b + co + 8) : _mm256_setzero_ps();
                _Pragma("GCC unroll 8") for (int j = 0; j < CV_NP; j++)
                {
                    acc[0][j] = b0;
                    acc[1][j] = b1;
                }
                const float *w = wt + (int64_t)t0 * ldw + (co - co0);
                for (int t = t0; t < t1; t++, w += ldw) {
                    const int o = xo[t];
                    const __m256 w0 = _mm256_loadu_ps(w), w1 = _mm256_loadu_ps(w + 8);
                    _Pragma("GCC unroll 8") for (int j = 0; j < CV_NP; j++)
                    {
                        const __m256 xv = _mm256_broadcast_ss(xq[j] + o);
                        acc[0][j] = _mm256_fmadd_ps(w0, xv, acc[0][j]);
                        acc[1][j] = _mm256_fmadd_ps(w1, xv, acc[1][j]);
                    }
                }
                /* part[j][16]: the sum of the blocks so far */
                /* (unrolled: acc stays in registers) */
                _Pragma("GCC unroll 8") for (int j = 0; j < CV_NP; j++)
                    _Pragma("GCC unroll 2") for (int v = 0; v < 2; v++)
                {
                    float *pp = part + j * 16 + v * 8;
                    _mm256_storeu_ps(pp, t0 == k0 ? acc[v][j]
                                                  : _mm256_add_ps(_mm256_loadu_ps(pp), acc[v][j]));
                }
            }
            for (int j = 0; j < np; j++)
                for (int m = 0; m < 16; m++)
                    yz[(co + m) * nout + qs[npos + p0 + j]] = part[j * 16 + m];
        }
    }
}

/* dst[j·Co + co] = src[co·K27 + j] for the nine taps j of every channel co (Co a multiple of 8):
 * eight channels at a time, the first eight taps of each by an 8x8 transpose in registers
 * (element by element, this took a sixth of enc conv5's time) */
__attribute__((target("avx2,fma"))) static void wt_taps(float *dst, const float *src, int64_t Co,
                                                        int64_t K27)
{
    for (int64_t co = 0; co < Co; co += 8) {
        const float *s = src + co * K27;
        __m256 r[8], u[8];
        for (int m = 0; m < 8; m++)
            r[m] = _mm256_loadu_ps(s + m * K27); /* taps 0..7 of channel co + m */
        for (int m = 0; m < 8; m += 2) {
            u[m] = _mm256_unpacklo_ps(r[m], r[m + 1]);
            u[m + 1] = _mm256_unpackhi_ps(r[m], r[m + 1]);
        }
        for (int m = 0; m < 8; m += 4) {
            r[m] = _mm256_shuffle_ps(u[m], u[m + 2], _MM_SHUFFLE(1, 0, 1, 0));
            r[m + 1] = _mm256_shuffle_ps(u[m], u[m + 2], _MM_SHUFFLE(3, 2, 3, 2));
            r[m + 2] = _mm256_shuffle_ps(u[m + 1], u[m + 3], _MM_SHUFFLE(1, 0, 1, 0));
            r[m + 3] = _mm256_shuffle_ps(u[m + 1], u[m + 3], _MM_SHUFFLE(3, 2, 3, 2));
        }
        /* r[0..3]: taps 0, 1, 2, 3 (low halves) and 4, 5, 6, 7 (high) of channels co..co+3;
         * r[4..7] the same of co+4..co+7 */
        for (int j = 0; j < 4; j++) {
            _mm256_storeu_ps(dst + j * Co + co, _mm256_permute2f128_ps(r[j], r[j + 4], 0x20));
            _mm256_storeu_ps(dst + (j + 4) * Co + co,
                             _mm256_permute2f128_ps(r[j], r[j + 4], 0x31));
        }
        for (int m = 0; m < 8; m++)
            dst[8 * Co + co + m] = s[m * K27 + 8];
    }
}

/* output plane zo, all channels (on the channels-in-lanes path, channels [cv0, cv1) with
 * their weights by tap in wt; elsewhere wt is NULL); xo: this thread's tap offsets (Cin·27),
 * acc: its partial sums */
__attribute__((target("avx2,fma"))) static void direct_plane(const dctx *c, int64_t zo, float *ring,
                                                             int64_t tags[3], int *xo, float *acc,
                                                             const float *wt, int cv0, int cv1)
{
    const geom *g = c->g;
    const int64_t nout = g->Do * g->P, Wo = g->Wo, Wp = c->Wp, K27 = (int64_t)g->Cin * 27;
    int64_t so[3];
    int kd0 = 3, kd1 = 0; /* the planes inside the grid */
    for (int kd = 0; kd < 3; kd++) {
        const int64_t zi = zo * g->s - 1 + kd;
        if (zi < 0 || zi >= g->D)
            continue;
        so[kd] = zi % 3 * g->Cin * c->PS;
        if (tags[zi % 3] != zi) {
            direct_prepare(ring + so[kd], c, zi);
            tags[zi % 3] = zi;
        }
        kd0 = kd < kd0 ? kd : kd0;
        kd1 = kd + 1;
    }
    /* the taps k = (kd·Cin + ci)·9 + kh·3 + kw, those of the planes inside: [k0, k1) */
    const int nk = g->Cin * 9, k0 = kd0 * nk, k1 = kd1 * nk;
    for (int kd = kd0; kd < kd1; kd++)
        for (int i = 0; i < nk; i++)
            xo[kd * nk + i] = (int)so[kd] + c->off[i];
    float *yz = c->y + zo * g->P;
    if (c->cv) { /* acc: the positions' q, then their output index, then the partial sums */
        int *qs = (int *)acc, npos = 0;
        for (int64_t yo = 0; yo < g->Ho; yo++)
            for (int64_t x = 0; x < Wo; x++, npos++)
                qs[npos] = (int)(yo * Wp + x), qs[g->P + npos] = (int)(yo * Wo + x);
        conv_cv_plane(c, yz, ring, xo, k0, k1, qs, npos, acc + 2 * g->P, wt, cv0, cv1);
        return;
    }
    const int NW = c->nw;
    conv_ukr_fn *const *ukr = conv_ukrs[c->nv - 3];
    const int64_t nrow = c->rowwise ? g->Ho : 1, rlen = c->rowwise ? Wo : c->Q;
    const int64_t ntl = Wo / NW; /* full tiles of a row */
    if (c->rowwise && ntl > 0) {
        /* the rows' full tiles block of taps by block over bands of c->band rows, so that a
         * block's weights and input rows stay in L1 from one tile and row to the next (tile by
         * tile, every block's weights and rows come in again for each tile); the partial sums
         * of a band in acc [Cout][band·Wo]. The last (or only) block writes the output one
         * group of mr channels at a time over the band's rows: mr output rows written at once,
         * not all Cout (enc conv1, one block, 20-25% faster on 1 and 2 threads than all
         * channels row by row; enc conv2 5-6%) */
        for (int64_t r0 = 0; r0 < g->Ho; r0 += c->band) {
            const int64_t nb_r = g->Ho - r0 < c->band ? g->Ho - r0 : c->band, ld = nb_r * Wo;
            for (int t0 = k0; t0 < k1; t0 += CONV_KC) {
                const int t1 = k1 - t0 < CONV_KC ? k1 : t0 + CONV_KC;
                const float *b = c->b && t0 == k0 ? c->b : NULL;
                if (t1 < k1) {
                    for (int64_t r = r0; r < r0 + nb_r; r++)
                        for (int co0 = 0; co0 < g->Cout;) {
                            const int mr = g->Cout - co0 < c->mr ? g->Cout - co0 : c->mr;
                            const int nb = mr < c->mr ? 1 : (g->Cout - co0) / mr;
                            float *a = acc + co0 * ld + (r - r0) * Wo;
                            ukr[mr - 1](a, ld, t0 > k0 ? a : NULL, ld, b ? b + co0 : NULL,
                                        ring + r * Wp, xo, c->wo, t0, t1, c->w + co0 * K27, K27,
                                        nb, (int)ntl);
                            co0 += nb * mr;
                        }
                    continue;
                }
                for (int co0 = 0; co0 < g->Cout;) {
                    const int mr = g->Cout - co0 < c->mr ? g->Cout - co0 : c->mr;
                    for (int64_t r = r0; r < r0 + nb_r; r++) {
                        const float *a = acc + co0 * ld + (r - r0) * Wo;
                        ukr[mr - 1](yz + co0 * nout + r * Wo, nout, t0 > k0 ? a : NULL, ld,
                                    b ? b + co0 : NULL, ring + r * Wp, xo, c->wo, t0, t1,
                                    c->w + co0 * K27, K27, 1, (int)ntl);
                    }
                    co0 += mr;
                }
            }
        }
    }
    for (int64_t r = 0; r < nrow; r++) {
        /* the rows' full tiles are done above */
        for (int64_t x0 = c->rowwise ? ntl * NW : 0; x0 < rlen; x0 += NW) {
            const int64_t q = r * Wp + x0;
            const int direct = c->rowwise && x0 + NW <= Wo;
            for (int t0 = k0; t0 < k1; t0 += CONV_KC) {
                const int t1 = k1 - t0 < CONV_KC ? k1 : t0 + CONV_KC, last = t1 == k1;
                /* the full blocks of mr channels in one call, then the rest */
                for (int co0 = 0; co0 < g->Cout;) {
                    const int mr = g->Cout - co0 < c->mr ? g->Cout - co0 : c->mr;
                    const int nb = mr < c->mr ? 1 : (g->Cout - co0) / mr;
                    float *a = acc + co0 * NW;
                    ukr[mr - 1](last && direct ? yz + co0 * nout + r * Wo + x0 : a,
                                last && direct ? nout : NW, t0 > k0 ? a : NULL, NW,
                                c->b && t0 == k0 ? c->b + co0 : NULL, ring + q, xo, c->wo, t0,
                                t1, c->w + co0 * K27, K27, nb, 1);
                    co0 += nb * mr;
                }
            }
            if (direct)
                continue;
            /* the lanes q .. q+NW-1 that are output voxels, a run per output row */
            for (int64_t l = 0; l < NW;) {
                const int64_t ql = q + l, yo = ql / Wp, xl = ql % Wp;
                if (yo >= g->Ho)
                    break;
                int64_t n = Wo - xl; /* valid lanes from here in this row */
                if (n <= 0) {
                    l += Wp - xl;
                    continue;
                }
                if (n > NW - l)
                    n = NW - l;
                for (int co = 0; co < g->Cout; co++) { /* runs of a few floats: no memcpy */
                    float *d = yz + co * nout + yo * Wo + xl;
                    const float *a = acc + co * NW + l;
                    for (int64_t i = 0; i < n; i++)
                        d[i] = a[i];
                }
                l += n;
            }
        }
    }
}

/* The direct path where the CPU has AVX2 and FMA (LM_CONV_BLAS=1 in the environment forces
 * OpenBLAS, for tests that compare the two), except at stride 1 with at least
 * PLANES_OVER_CIN input channels over planes of at least PLANES_OVER_HW voxels (the decoder's
 * S3, S2 and S1 CBL layers): there one OpenBLAS GEMM per plane (fwd_s1_planes) has the long
 * inner dimension and wide panels it needs, ran as fast as the direct path on the 2-core AVX2
 * machine, and uses wider vectors than AVX2 where the CPU has them. */
#define PLANES_OVER_CIN 32
#define PLANES_OVER_HW 256
static int direct_use(const geom *g)
{
    if (g->s == 1 && g->Cin >= PLANES_OVER_CIN && g->H * g->W >= PLANES_OVER_HW)
        return 0;
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
        return 0;
    const char *e = getenv("LM_CONV_BLAS");
    return !(e && *e == '1');
}

static int fwd_direct(float *y, const float *x, const float *w, const float *b, const geom *g)
{
    const int Cin = g->Cin;
    dctx c = {.g = g, .x = x, .b = b, .y = y};
    if (g->s == 1) {
        c.Wp = g->W + 2;
        c.PH = 0;
        c.PS = (g->H + 2) * c.Wp;
    } else {
        c.Wp = g->Wo + 1;
        c.PH = (g->Ho + 1) * c.Wp;
        c.PS = 4 * c.PH;
    }
    c.Q = (g->Ho - 1) * c.Wp + g->Wo;
    c.nv = g->Cout <= 3 ? 4 : 3; /* 3 channels: 3 by 4 vectors rather than 3 by 3 */
    c.mr = g->Cout <= 3 ? g->Cout : CONV_MR;
    c.rowwise = g->Wo >= 16;
    /* a plane done as one run of q: where tiles of 40 lanes (2 channels by 5 vectors) waste
     * fewer lanes than those of 24, take them (enc conv5 at 6x5x6: one tile of 40 for the 34
     * positions, against two of 24, each lane computed for nothing costing as much as one
     * that counts) */
    if (!c.rowwise && g->Cout >= 2 &&
        (c.Q + 39) / 40 * 40 < (c.Q + 8 * c.nv - 1) / (8 * c.nv) * (8 * c.nv))
        c.nv = 5, c.mr = 2;
    c.nw = 8 * c.nv;
    /* planes done as one run whose channels fill vectors of 16: the channels go in the lanes
     * (conv_cv_plane), no lane computed for nothing. Measured on the 2-core AVX2 machine, 1 and 2
     * threads, against the runs of q: enc conv5 (32->32 6x5x6 out, a fifth of the lanes wasted)
     * 0.19 -> 0.16 ms on one thread; enc conv4 (16->32 12x10x12 out) 1.17 -> 0.59-0.94 ms on one,
     * 0.47-0.63 -> 0.48-0.49 ms on two; dec S4 (96->32 12x10x12, stride 1) 6.0-6.4 -> 5.1-5.4 ms
     * on one, 2.6-3.2 -> 2.5-2.9 ms on two (medians of 200-2000 calls) */
    c.cv = !c.rowwise && g->Cout % 16 == 0;
    /* bands of rows whose partial sums (Cout by band·Wo) fit in 128 KiB, in L2 */
    c.band = 32768 / (g->Cout * g->Wo);
    c.band = c.band < 1 ? 1 : c.band > g->Ho ? g->Ho : c.band;
    /* the last tile reads up to nw - 1 past the end of the q range, beyond any tap */
    c.PS += c.nw;
    LM_CPU_CHECK(3 * Cin * c.PS <= INT32_MAX, "conv3d: planes too large");
    const int64_t K27 = (int64_t)Cin * 27;
    c.off = lm_cpu_scratch((size_t)Cin * 9 * sizeof *c.off);
    c.wo = lm_cpu_scratch((size_t)K27 * sizeof *c.wo);
    if (!c.off || !c.wo) {
        lm_cpu_scratch_free(c.off);
        lm_cpu_scratch_free(c.wo);
        return -1;
    }
    /* the weights are read in place (packing them cost a fifth of the 6x5x6 layer's time) */
    c.w = w;
    for (int kd = 0; kd < 3; kd++)
        for (int ci = 0; ci < Cin; ci++)
            for (int j = 0; j < 9; j++)
                c.wo[(kd * Cin + ci) * 9 + j] = ci * 27 + kd * 9 + j;
    for (int ci = 0; ci < Cin; ci++)
        for (int t = 0; t < 9; t++) {
            const int kh = t / 3, kw = t % 3;
            int64_t o;
            if (g->s == 1)
                o = kh * c.Wp + kw;
            else /* kh 1: even rows at jy = yo; 0: odd rows at yo; 2: odd rows at yo + 1 */
                o = ((kh != 1) * 2 + (kw != 1)) * c.PH + (kh == 2) * c.Wp + (kw == 2);
            c.off[ci * 9 + t] = (int)(ci * c.PS + o);
        }
    /* (the paths other than channels-in-lanes) planes to a thread at a time: a thread's
     * consecutive planes share input planes (two of three at stride 1, one at stride 2), so few
     * planes go in one block per thread (6 planes on 2 threads: 3 each); the bits do not
     * depend on who computes a plane */
    const int64_t nth = omp_get_max_threads() > 0 ? omp_get_max_threads() : 1;
    const int64_t chunk = g->Do < 4 * nth ? (g->Do + nth - 1) / nth : (g->Do + 15) / 16;
    const double flops = 2.0 * g->Cout * 27.0 * Cin * (double)(g->Do * g->P);
    int failed = 0;
#pragma omp parallel if (g->Do > 1 && flops >= CONV_PAR_FLOPS)
    {
        const size_t nring = (size_t)(3 * Cin * c.PS);
        float *ring = lm_cpu_scratch(nring * sizeof *ring);
        int *xo = lm_cpu_scratch((size_t)Cin * 27 * sizeof *xo);
        const int64_t nacc = c.cv ? 2 * g->P + 16 * CV_NP
                                  : g->Cout * (c.rowwise ? c.band * g->Wo : 0) + g->Cout * c.nw;
        float *acc = lm_cpu_scratch((size_t)nacc * sizeof *acc);
        const int ok = ring && xo && acc;
        int64_t tags[3] = {-1, -1, -1};
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        } else
            memset(ring, 0, nring * sizeof *ring);
        if (c.cv) {
            /* channels-in-lanes: the threads split the groups of 16 output channels first
             * (into ncg parts, the most that divides the thread count), then the planes; each
             * transposes its channels' weights by tap into a block of its own
             * (wt[k·n + co - co0]). Sharing the planes of all channels instead, with one
             * transpose shared out, cost a barrier and the transposed weights crossing
             * between the cores' caches at every call: enc conv5 took longer on two threads
             * than on one */
            const int nt = omp_get_num_threads(), th = omp_get_thread_num(), cb = g->Cout / 16;
            int ncg = nt < cb ? nt : cb;
            while (nt % ncg)
                ncg--;
            const int npg = nt / ncg, cg = th % ncg, pg = th / ncg;
            const int co0 = 16 * (cb * cg / ncg), co1 = 16 * (cb * (cg + 1) / ncg), n = co1 - co0;
            const int64_t z0 = g->Do * pg / npg, z1 = g->Do * (pg + 1) / npg;
            float *wtp = z1 > z0 ? lm_cpu_scratch((size_t)(K27 * n) * sizeof *wtp) : NULL;
            if (z1 > z0 && !wtp) {
#pragma omp atomic write
                failed = 1;
            }
            if (ok && wtp) {
                for (int64_t kc = 0; kc < 3 * (int64_t)Cin; kc++) { /* per (kd, ci): 9 taps */
                    const int64_t kd = kc / Cin, ci = kc % Cin;
                    wt_taps(wtp + kc * 9 * n, w + co0 * K27 + ci * 27 + kd * 9, n, K27);
                }
                for (int64_t zo = z0; zo < z1; zo++)
                    direct_plane(&c, zo, ring, tags, xo, acc, wtp, co0, co1);
            }
            lm_cpu_scratch_free(wtp);
        } else {
#pragma omp for schedule(dynamic, chunk) nowait
            for (int64_t zo = 0; zo < g->Do; zo++)
                if (ok)
                    direct_plane(&c, zo, ring, tags, xo, acc, NULL, 0, g->Cout);
        }
        lm_cpu_scratch_free(ring);
        lm_cpu_scratch_free(xo);
        lm_cpu_scratch_free(acc);
    }
    lm_cpu_scratch_free(c.off);
    lm_cpu_scratch_free(c.wo);
    return failed ? -1 : 0;
}
#endif

int lm_cpu_conv3d_fwd(lm_backend *be, float *y, const float *x, const float *w, const float *b,
                      const lm_conv3d_args *a)
{
    (void)be;
    geom g;
    if (geom_init(&g, a) < 0)
        return -1;
#ifdef CONV_HAVE_AVX2
    if (direct_use(&g))
        return fwd_direct(y, x, w, b, &g);
#endif
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
