/* test_warp.c — the spatial transformer (MODEL.md §17 items 2 and 3): identity, integer and
 * half-voxel shifts, nearest warps that invent no labels (round half to even), the flow
 * gradient against an fp64 central difference of an independent double reference (relative
 * error < 1e-6), finite differences of every backward output, border padding, composition
 * identities, bit identity for 1, 2 and 3 threads, and the same bits from the vector and the
 * scalar paths and from the [C,D,H,W] and NIfTI array orders. */
#include "kt.h"

#define IDX(c, z, y, x) ((((int64_t)(c) * D + (z)) * H + (y)) * W + (x))

/* flow with fractional parts in [0.15, 0.85] (away from cell boundaries, where the trilinear
 * map has kinks) */
static float *smooth_flow(int64_t N, double amp, uint64_t stream)
{
    float *f = kt_rand(3 * N, -amp, amp, stream);
    for (int64_t i = 0; i < 3 * N; i++) {
        double fl = floor(f[i]), fr = f[i] - fl;
        if (fr < 0.15 || fr > 0.85)
            f[i] = (float)(fl + 0.15 + 0.7 * (fr < 0.15 ? fr / 0.15 : (fr - 0.85) / 0.15));
    }
    return f;
}

static void t_identity_and_shifts(void)
{
    KT_COVER(warp_fwd);
    const int C = 2, D = 4, H = 5, W = 3;
    const int64_t N = (int64_t)D * H * W;
    float *src = kt_rand(C * N, -1, 1, 1), *flow = kt_alloc(3 * N), *y = kt_alloc(C * N);
    for (int pad = 0; pad < 2; pad++) {
        lm_warp_args a = {C, D, H, W, pad};
        KT_CALL(warp_fwd, y, src, flow, &a);
        LM_CHECK(memcmp(y, src, (size_t)(C * N) * 4) == 0, "u = 0 not bit-exact (pad %d)", pad);
    }
    /* integer shift (1, -2, 0): zeros enter at the border */
    for (int64_t i = 0; i < N; i++)
        flow[i] = 1, flow[N + i] = -2, flow[2 * N + i] = 0;
    lm_warp_args a = {C, D, H, W, LM_PAD_ZEROS};
    KT_CALL(warp_fwd, y, src, flow, &a);
    for (int c = 0; c < C; c++)
        for (int z = 0; z < D; z++)
            for (int yy = 0; yy < H; yy++)
                for (int x = 0; x < W; x++) {
                    int zs = z + 1, ys = yy - 2;
                    float want = zs < D && ys >= 0 ? src[IDX(c, zs, ys, x)] : 0.0f;
                    LM_CHECK(y[IDX(c, z, yy, x)] == want, "shift at %d,%d,%d", z, yy, x);
                }
    /* half-voxel shift along W: the mean of the two neighbours; the last one half-outside */
    for (int64_t i = 0; i < N; i++)
        flow[i] = 0, flow[N + i] = 0, flow[2 * N + i] = 0.5f;
    KT_CALL(warp_fwd, y, src, flow, &a);
    for (int c = 0; c < C; c++)
        for (int z = 0; z < D; z++)
            for (int yy = 0; yy < H; yy++)
                for (int x = 0; x < W; x++) {
                    double want = 0.5 * src[IDX(c, z, yy, x)] +
                                  (x + 1 < W ? 0.5 * src[IDX(c, z, yy, x + 1)] : 0.0);
                    LM_CHECK_CLOSE(y[IDX(c, z, yy, x)], want, 1e-7, 1e-7);
                }
    kt_free(src), kt_free(flow), kt_free(y);
}

static void t_nearest(void)
{
    KT_COVER(warp_nearest);
    const int D = 6, H = 5, W = 7;
    const int64_t N = (int64_t)D * H * W;
    int32_t *lab = lm_backend_alloc(kt_be(), (size_t)N * 4), *out = lm_backend_alloc(kt_be(), (size_t)N * 4);
    lm_rng r;
    lm_rng_init(&r, lm_test_seed(), 9);
    const int32_t vals[4] = {0, 5, 24, 60};
    for (int64_t i = 0; i < N; i++)
        lab[i] = vals[lm_rng_below(&r, 4)];
    float *flow = kt_rand(3 * N, -2.5, 2.5, 3);
    lm_warp_args a = {1, D, H, W, LM_PAD_ZEROS};
    KT_CALL(warp_nearest, out, lab, flow, LM_I32, &a);
    int newlab = 0;
    for (int64_t i = 0; i < N; i++)
        newlab += out[i] != 0 && out[i] != 5 && out[i] != 24 && out[i] != 60;
    LM_CHECK(newlab == 0, "%d voxels got a label that was not there", newlab);
    /* float path agrees; round half to even: q = x + 0.5 picks x for even x, x+1 for odd x */
    float *labf = kt_alloc(N), *outf = kt_alloc(N);
    KT_CALL(cast, labf, LM_F32, lab, LM_I32, N);
    KT_CALL(warp_nearest, outf, labf, flow, LM_F32, &a);
    for (int64_t i = 0; i < N; i++)
        LM_CHECK(outf[i] == (float)out[i], "F32 and I32 paths differ at %lld", (long long)i);
    for (int64_t i = 0; i < N; i++)
        flow[i] = 0, flow[N + i] = 0, flow[2 * N + i] = 0.5f;
    for (int64_t i = 0; i < N; i++)
        labf[i] = (float)(i % W);
    KT_CALL(warp_nearest, outf, labf, flow, LM_F32, &a);
    for (int x = 0; x < W; x++) {
        int want = x % 2 == 0 ? x : x + 1;
        LM_CHECK(outf[x] == (want < W ? (float)want : 0.0f), "half-even at x=%d: %g", x, outf[x]);
    }
    lm_backend *be = kt_be();
    lm_warp_args ab = {1, D, H, W, LM_PAD_BORDER};
    LM_CHECK(be->warp_nearest(be, outf, labf, flow, LM_F32, &ab) < 0, "border nearest accepted");
    kt_free(lab), kt_free(out), kt_free(flow), kt_free(labf), kt_free(outf);
}

/* an independent double trilinear sampler (zeros padding), written from MODEL.md §8 */
static double ref_sample(const float *s, int D, int H, int W, double qz, double qy, double qx)
{
    double z0 = floor(qz), y0 = floor(qy), x0 = floor(qx), v = 0;
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++)
            for (int e = 0; e < 2; e++) {
                int z = (int)z0 + a, yy = (int)y0 + b, x = (int)x0 + e;
                if (z < 0 || z >= D || yy < 0 || yy >= H || x < 0 || x >= W)
                    continue;
                double w = (a ? qz - z0 : 1 - (qz - z0)) * (b ? qy - y0 : 1 - (qy - y0)) *
                           (e ? qx - x0 : 1 - (qx - x0));
                v += w * s[(z * H + yy) * W + x];
            }
    return v;
}

static void t_flow_grad_fp64(void)
{
    KT_COVER(warp_bwd);
    const int C = 2, D = 5, H = 4, W = 6;
    const int64_t N = (int64_t)D * H * W;
    float *src = kt_rand(C * N, -1, 1, 1), *flow = smooth_flow(N, 1.6, 2);
    float *g = kt_rand(C * N, -1, 1, 3), *dflow = kt_alloc(3 * N);
    lm_warp_args a = {C, D, H, W, LM_PAD_ZEROS};
    KT_CALL(warp_bwd, NULL, dflow, g, src, flow, &a);
    double worst = 0, scale = 0;
    const double h = 1e-6;
    for (int64_t p = 0; p < N; p++) {
        int z = (int)(p / (H * W)), yy = (int)(p / W % H), x = (int)(p % W);
        for (int d = 0; d < 3; d++) {
            double q[3] = {z + (double)flow[p], yy + (double)flow[N + p], x + (double)flow[2 * N + p]};
            double fd = 0;
            for (int c = 0; c < C; c++) {
                double qp[3] = {q[0], q[1], q[2]}, qm[3] = {q[0], q[1], q[2]};
                qp[d] += h, qm[d] -= h;
                fd += g[c * N + p] *
                      (ref_sample(src + c * N, D, H, W, qp[0], qp[1], qp[2]) -
                       ref_sample(src + c * N, D, H, W, qm[0], qm[1], qm[2])) / (2 * h);
            }
            double an = dflow[d * N + p];
            double rel = fabs(an - fd) / (fabs(fd) > 1e-3 ? fabs(fd) : 1e-3);
            worst = rel > worst ? rel : worst;
            scale = fabs(fd) > scale ? fabs(fd) : scale;
        }
    }
    LM_CHECK(worst < 1e-6, "flow gradient relative error %.3g >= 1e-6 (fp64 reference)", worst);
    LM_CHECK(scale > 0.1, "degenerate test (gradient scale %g)", scale);
    if (getenv("KT_VERBOSE"))
        fprintf(stderr, "  warp dflow vs fp64 fd: max rel err %.3g\n", worst);
    kt_free(src), kt_free(flow), kt_free(g), kt_free(dflow);
}

typedef struct {
    float *src, *flow, *y, *r, *u;
    lm_warp_args a;
    int compose;
    int64_t n;
} wctx;

static double w_loss(void *p)
{
    wctx *c = p;
    if (c->compose) {
        lm_vol_args v = {3, c->a.D, c->a.H, c->a.W};
        KT_CALL(compose_fwd, c->y, c->flow, c->u, &v);
    } else {
        KT_CALL(warp_fwd, c->y, c->src, c->flow, &c->a);
    }
    return kt_dot(c->y, c->r, c->n);
}

static void t_warp_fd(void)
{
    KT_COVER(warp_fwd); /* the loss runs the forward: one check of the pair */
    KT_COVER(warp_bwd);
    for (int pad = 0; pad < 2; pad++) {
        const int C = 3, D = 3, H = 5, W = 4;
        const int64_t N = (int64_t)D * H * W;
        wctx c = {kt_rand(C * N, -1, 1, 1), smooth_flow(N, pad ? 2.4 : 1.6, 2), kt_alloc(C * N),
                  kt_rand(C * N, -1, 1, 3), NULL, {C, D, H, W, pad}, 0, C * N};
        if (pad) /* border: keep samples inside or well outside, off the clamp edges */
            for (int64_t i = 0; i < 3 * N; i++)
                if (fabs(c.flow[i]) > 1.0f && fabs(c.flow[i]) < 1.3f)
                    c.flow[i] *= 2.0f;
        float *ds = kt_alloc(C * N), *df = kt_alloc(3 * N);
        KT_CALL(warp_bwd, ds, df, c.r, c.src, c.flow, &c.a);
        kt_gradcheck(pad ? "warp border dsrc" : "warp dsrc", c.src, C * N, ds, w_loss, &c, 1e-2,
                     1e-3);
        kt_gradcheck(pad ? "warp border dflow" : "warp dflow", c.flow, 3 * N, df, w_loss, &c,
                     1e-3, 1e-3);
        kt_free(c.src), kt_free(c.flow), kt_free(c.y), kt_free(c.r), kt_free(ds), kt_free(df);
    }
}

static void t_compose_identities(void)
{
    KT_COVER(compose_fwd);
    const int D = 4, H = 3, W = 5;
    const int64_t N = (int64_t)D * H * W;
    lm_vol_args a = {3, D, H, W};
    float *r = smooth_flow(N, 1.5, 1), *u = smooth_flow(N, 1.5, 2), *zero = kt_alloc(3 * N);
    float *psi = kt_alloc(3 * N);
    KT_CALL(compose_fwd, psi, r, zero, &a);
    LM_CHECK(memcmp(psi, r, (size_t)(3 * N) * 4) == 0, "r + 0 != r");
    KT_CALL(compose_fwd, psi, zero, u, &a);
    LM_CHECK(memcmp(psi, u, (size_t)(3 * N) * 4) == 0, "0 + U != U");
    /* two constant shifts: a + b = a + b (border padding samples the constant everywhere) */
    const float sa[3] = {1.5f, -2.25f, 0.75f}, sb[3] = {-0.5f, 4.0f, 2.5f};
    for (int d = 0; d < 3; d++)
        for (int64_t i = 0; i < N; i++)
            r[d * N + i] = sa[d], u[d * N + i] = sb[d];
    KT_CALL(compose_fwd, psi, r, u, &a);
    for (int d = 0; d < 3; d++)
        for (int64_t i = 0; i < N; i++)
            LM_CHECK(psi[d * N + i] == sa[d] + sb[d], "constant shifts, channel %d", d);
    kt_free(r), kt_free(u), kt_free(zero), kt_free(psi);
}

static void t_compose_fd(void)
{
    KT_COVER(compose_fwd); /* the loss runs the forward: one check of the pair */
    KT_COVER(compose_bwd);
    const int D = 4, H = 3, W = 5;
    const int64_t N = (int64_t)D * H * W;
    wctx c = {NULL, smooth_flow(N, 0.9, 1), kt_alloc(3 * N), kt_rand(3 * N, -1, 1, 3),
              kt_rand(3 * N, -1, 1, 2), {3, D, H, W, LM_PAD_BORDER}, 1, 3 * N};
    /* keep p + r strictly inside the grid (border clamps have zero derivative) */
    for (int64_t p = 0; p < N; p++) {
        int64_t pos[3] = {p / (H * W), p / W % H, p % W}, n[3] = {D, H, W};
        for (int d = 0; d < 3; d++) {
            double q = pos[d] + c.flow[d * N + p];
            if (q < 0.1 || q > n[d] - 1.1)
                c.flow[d * N + p] = (float)(pos[d] == 0 ? 0.35 : -0.35);
        }
    }
    float *dr = kt_alloc(3 * N), *du = kt_alloc(3 * N);
    lm_vol_args a = {3, D, H, W};
    KT_CALL(compose_bwd, dr, du, c.r, c.flow, c.u, &a);
    kt_gradcheck("compose dr", c.flow, 3 * N, dr, w_loss, &c, 1e-3, 1e-3);
    kt_gradcheck("compose du", c.u, 3 * N, du, w_loss, &c, 1e-2, 1e-3);
    kt_free(c.flow), kt_free(c.y), kt_free(c.r), kt_free(c.u), kt_free(dr), kt_free(du);
}

typedef struct {
    float *src, *flow, *y, *g, *ds, *df, *psi;
    lm_warp_args a;
    int64_t N;
} tctx;

static void thr_run(void *p)
{
    tctx *c = p;
    lm_vol_args v = {3, c->a.D, c->a.H, c->a.W};
    memset(c->ds, 0, (size_t)(3 * c->N) * 4);
    memset(c->df, 0, (size_t)(3 * c->N) * 4);
    KT_CALL(warp_fwd, c->y, c->src, c->flow, &c->a);
    KT_CALL(warp_bwd, c->ds, c->df, c->g, c->src, c->flow, &c->a);
    KT_CALL(compose_fwd, c->psi, c->flow, c->src, &v);
    KT_CALL(compose_bwd, c->df, c->ds, c->g, c->flow, c->src, &v);
}

/* warp_fwd, warp_bwd and compose on 3 channels, with zeros and with border padding: the
 * forward and the flow gradient are parallel over rows of voxels (from 4096 voxels), the
 * source gradient over channels (from LM_CPU_PAR_MIN elements), compose's sum over elements */
static void t_threads(void)
{
    KT_COVER(warp_fwd);
    KT_COVER(warp_bwd);
    const int D = 24, H = 20, W = 24;
    const int64_t N = (int64_t)D * H * W;
    KT_PARALLEL(3 * N);
    for (int pad = 0; pad < 2; pad++) {
        tctx c = {kt_rand(3 * N, -1, 1, 1), kt_rand(3 * N, -3, 3, 2), kt_alloc(3 * N),
                  kt_rand(3 * N, -1, 1, 3), kt_alloc(3 * N), kt_alloc(3 * N), kt_alloc(3 * N),
                  {3, D, H, W, pad ? LM_PAD_BORDER : LM_PAD_ZEROS}, N};
        const char *pn = pad ? "border" : "zeros";
        char what[64];
        snprintf(what, sizeof what, "warp y (%s)", pn);
        kt_same_bits(what, thr_run, &c, c.y, (size_t)(3 * N) * 4);
        snprintf(what, sizeof what, "warp dsrc (%s)", pn);
        kt_same_bits(what, thr_run, &c, c.ds, (size_t)(3 * N) * 4);
        snprintf(what, sizeof what, "warp dflow (%s)", pn);
        kt_same_bits(what, thr_run, &c, c.df, (size_t)(3 * N) * 4);
        kt_same_bits("compose", thr_run, &c, c.psi, (size_t)(3 * N) * 4);
        kt_free(c.src), kt_free(c.flow), kt_free(c.y), kt_free(c.g), kt_free(c.ds);
        kt_free(c.df), kt_free(c.psi);
    }
}

/* one channel (the rows of eight voxels of the vector path, and their scalar tails) and the
 * nearest warp of F32 images and I32 label maps, in both array orders */
typedef struct {
    float *src, *flow, *y, *g, *ds, *df, *ynear;
    int32_t *lab, *ylab;
    lm_warp_args a;
} t1ctx;

static void thr1_run(void *p)
{
    t1ctx *c = p;
    const int64_t N = (int64_t)c->a.D * c->a.H * c->a.W;
    lm_warp_args zeros = c->a;
    zeros.padding = LM_PAD_ZEROS | (c->a.padding & LM_WARP_NIFTI_ORDER);
    if (!(c->a.padding & LM_WARP_NIFTI_ORDER)) { /* the backward takes [C,D,H,W] only */
        memset(c->ds, 0, (size_t)N * 4);
        memset(c->df, 0, (size_t)(3 * N) * 4);
        KT_CALL(warp_fwd, c->y, c->src, c->flow, &c->a);
        KT_CALL(warp_bwd, c->ds, c->df, c->g, c->src, c->flow, &c->a);
    } else {
        KT_CALL(warp_fwd, c->y, c->src, c->flow, &zeros);
    }
    KT_CALL(warp_nearest, c->ylab, c->lab, c->flow, LM_I32, &zeros);
    KT_CALL(warp_nearest, c->ynear, c->src, c->flow, LM_F32, &zeros);
}

static void t_threads_one_channel(void)
{
    KT_COVER(warp_nearest);
    const int D = 23, H = 19, W = 29; /* rows of 29: three groups of 8 and an overlapping one */
    const int64_t N = (int64_t)D * H * W;
    for (int mode = 0; mode < 3; mode++) { /* zeros, border, zeros in the NIfTI order */
        t1ctx c = {kt_rand(N, -1, 1, 1), kt_rand(3 * N, -3, 3, 2), kt_alloc(N),
                   kt_rand(N, -1, 1, 3), kt_alloc(N), kt_alloc(3 * N), kt_alloc(N),
                   (int32_t *)kt_alloc(N), (int32_t *)kt_alloc(N),
                   {1, D, H, W, mode == 1 ? LM_PAD_BORDER
                                : mode == 2 ? LM_PAD_ZEROS | LM_WARP_NIFTI_ORDER
                                            : LM_PAD_ZEROS}};
        for (int64_t i = 0; i < N; i++)
            c.lab[i] = (int32_t)(i * 7 % 5);
        static const char *const mn[3] = {"zeros", "border", "zeros, NIfTI order"};
        char what[64];
        snprintf(what, sizeof what, "warp y, 1 channel (%s)", mn[mode]);
        kt_same_bits(what, thr1_run, &c, c.y, (size_t)N * 4);
        if (mode < 2) {
            snprintf(what, sizeof what, "warp dsrc, 1 channel (%s)", mn[mode]);
            kt_same_bits(what, thr1_run, &c, c.ds, (size_t)N * 4);
            snprintf(what, sizeof what, "warp dflow, 1 channel (%s)", mn[mode]);
            kt_same_bits(what, thr1_run, &c, c.df, (size_t)(3 * N) * 4);
        }
        snprintf(what, sizeof what, "nearest I32 (%s)", mn[mode]);
        kt_same_bits(what, thr1_run, &c, c.ylab, (size_t)N * 4);
        snprintf(what, sizeof what, "nearest F32 (%s)", mn[mode]);
        kt_same_bits(what, thr1_run, &c, c.ynear, (size_t)N * 4);
        kt_free(c.src), kt_free(c.flow), kt_free(c.y), kt_free(c.g), kt_free(c.ds);
        kt_free(c.df), kt_free(c.ynear), kt_free(c.lab), kt_free(c.ylab);
    }
}

/* [C,D,H,W] -> NIfTI order [C,W,H,D], and back */
static void to_nifti(float *t, const float *s, int C, int D, int H, int W)
{
    for (int c = 0; c < C; c++)
        for (int z = 0; z < D; z++)
            for (int yy = 0; yy < H; yy++)
                for (int x = 0; x < W; x++)
                    t[(((int64_t)c * W + x) * H + yy) * D + z] = s[IDX(c, z, yy, x)];
}

static void from_nifti(float *s, const float *t, int C, int D, int H, int W)
{
    for (int c = 0; c < C; c++)
        for (int z = 0; z < D; z++)
            for (int yy = 0; yy < H; yy++)
                for (int x = 0; x < W; x++)
                    s[IDX(c, z, yy, x)] = t[(((int64_t)c * W + x) * H + yy) * D + z];
}

/* y = warp (nearest: dt F32 or I32, else trilinear) in the given order, on the vector path or
 * the scalar one (LM_WARP_SCALAR=1); inputs and output in [C,D,H,W] */
static void warp_any(float *y, const float *src, const float *flow, int C, int D, int H, int W,
                     int nearest, lm_dtype dt, int nifti, int scalar)
{
    const int64_t N = (int64_t)D * H * W;
    float *s = kt_alloc(C * N), *f = kt_alloc(3 * N), *o = kt_alloc(C * N);
    if (nifti) {
        to_nifti(s, src, C, D, H, W);
        to_nifti(f, flow, 3, D, H, W);
    } else {
        memcpy(s, src, (size_t)(C * N) * 4);
        memcpy(f, flow, (size_t)(3 * N) * 4);
    }
    if (scalar)
        setenv("LM_WARP_SCALAR", "1", 1);
    lm_warp_args a = {C, D, H, W, LM_PAD_ZEROS | (nifti ? LM_WARP_NIFTI_ORDER : 0)};
    if (nearest)
        KT_CALL(warp_nearest, o, s, f, dt, &a);
    else
        KT_CALL(warp_fwd, o, s, f, &a);
    unsetenv("LM_WARP_SCALAR");
    if (nifti)
        from_nifti(y, o, C, D, H, W);
    else
        memcpy(y, o, (size_t)(C * N) * 4);
    kt_free(s), kt_free(f), kt_free(o);
}

/* The AVX2 paths give the scalar code's bits, in both array orders, on fields with every kind
 * of sample: all corners inside, some, none, exactly on the edges (q = -1, 0, n-1, n), halves
 * (rounding to even), -0, tiny, huge, infinite and NaN displacements; grids whose rows are no
 * multiple of the vector width. */
static void t_paths_and_orders(void)
{
    KT_COVER(warp_fwd);
    KT_COVER(warp_nearest);
    /* the size-1 axes: an AVX2 path once read out of bounds there (its n-2 limit wrapped) */
    static const int grids[][3] = {{7, 5, 13}, {9, 6, 8}, {16, 12, 20}, {5, 3, 4},
                                   {1, 5, 19}, {9, 1, 17}, {6, 7, 1},   {1, 1, 24},
                                   /* extents of 2 on rows of 8 or more in either order: the
                                    * clamped edge path at n - 2 = 0 */
                                   {2, 2, 16}, {16, 2, 2}, {2, 9, 8},   {8, 2, 9}};
    for (int gi = 0; gi < (int)(sizeof grids / sizeof *grids); gi++)
        for (int C = 1; C <= 3; C += 2)
            for (int amp = 0; amp < 2; amp++) {
                const int D = grids[gi][0], H = grids[gi][1], W = grids[gi][2];
                const int64_t N = (int64_t)D * H * W;
                float *src = kt_rand(C * N, -1, 1, 20 + gi), *lab = kt_alloc(C * N);
                float *flow = kt_rand(3 * N, amp ? -4.5 : -0.45, amp ? 4.5 : 0.45, 30 + gi);
                lm_rng r;
                lm_rng_init(&r, lm_test_seed(), 40 + gi);
                for (int64_t i = 0; i < C * N; i++) {
                    int32_t v = (int32_t)lm_rng_below(&r, 1000) - 500;
                    memcpy(&lab[i], &v, 4); /* I32 labels in float buffers */
                }
                const float special[] = {NAN, INFINITY, -INFINITY, 1e30f, -1e30f, -0.0f,
                                         1e-30f, -1e-30f, 0.5f, -0.5f, 1.5f, -1.5f};
                for (int64_t i = 0; i < 3 * N; i++) {
                    const int64_t p = i % N, c = i / N, n = c == 0 ? D : c == 1 ? H : W;
                    const int64_t pos = c == 0 ? p / ((int64_t)H * W)
                                               : c == 1 ? p / W % H : p % W;
                    switch (lm_rng_below(&r, 24)) {
                    case 0: flow[i] = special[lm_rng_below(&r, 12)]; break;
                    case 1: flow[i] = (float)(-1 - pos); break;           /* q = -1 */
                    case 2: flow[i] = (float)(-pos); break;               /* q = 0 */
                    case 3: flow[i] = (float)(n - 1 - pos); break;        /* q = n-1 */
                    case 4: flow[i] = (float)(n - pos); break;            /* q = n */
                    case 5: flow[i] = (float)(n - pos) - 0.5f; break;     /* q = n - 1/2 */
                    case 6: flow[i] = (float)(-pos) - 0.75f; break;       /* q in (-1, 0) */
                    default: break;
                    }
                }
                float *want = kt_alloc(C * N), *got = kt_alloc(C * N);
                for (int kind = 0; kind < 3; kind++) {
                    const int nearest = kind > 0;
                    const lm_dtype dt = kind == 2 ? LM_I32 : LM_F32;
                    const float *in = kind == 2 ? lab : src;
                    warp_any(want, in, flow, C, D, H, W, nearest, dt, 0, 1);
                    for (int v = 0; v < 3; v++) { /* vector DHW, scalar NIfTI, vector NIfTI */
                        warp_any(got, in, flow, C, D, H, W, nearest, dt, v > 0, v == 1);
                        int64_t bad = 0, first = -1;
                        for (int64_t i = 0; i < C * N; i++)
                            if (memcmp(&got[i], &want[i], 4)) {
                                bad++;
                                first = first < 0 ? i : first;
                            }
                        LM_CHECK(bad == 0,
                                 "%s, grid %dx%dx%d C=%d amp %d, %s %s path: %lld voxels differ "
                                 "from the scalar [C,D,H,W] path (first %lld)",
                                 kind == 0   ? "trilinear"
                                 : kind == 1 ? "nearest F32"
                                             : "nearest I32",
                                 D, H, W, C, amp, v == 1 ? "scalar" : "vector",
                                 v ? "NIfTI-order" : "[C,D,H,W]", (long long)bad,
                                 (long long)first);
                    }
                }
                kt_free(src), kt_free(lab), kt_free(flow), kt_free(want), kt_free(got);
            }
    /* the NIfTI order is for the forward warps with zeros padding only */
    const int64_t N = 2 * 3 * 4;
    float *s = kt_alloc(N), *f = kt_alloc(3 * N), *y = kt_alloc(N), *d = kt_alloc(3 * N);
    memset(f, 0, (size_t)(3 * N) * 4);
    lm_backend *be = kt_be();
    lm_warp_args ab = {1, 2, 3, 4, LM_PAD_BORDER | LM_WARP_NIFTI_ORDER};
    lm_warp_args az = {1, 2, 3, 4, LM_PAD_ZEROS | LM_WARP_NIFTI_ORDER};
    LM_CHECK(be->warp_fwd(be, y, s, f, &ab) < 0, "border padding in NIfTI order accepted");
    LM_CHECK(be->warp_bwd(be, y, d, y, s, f, &az) < 0, "warp_bwd in NIfTI order accepted");
    kt_free(s), kt_free(f), kt_free(y), kt_free(d);
}

static const lm_test_case cases[] = {
    {"warp identity and shifts (MODEL §17.2)", t_identity_and_shifts},
    {"warp_nearest labels", t_nearest},
    {"warp dflow vs fp64 reference", t_flow_grad_fp64},
    {"warp_bwd fd zeros and border", t_warp_fd},
    {"compose identities (MODEL §17.3)", t_compose_identities},
    {"compose_bwd fd", t_compose_fd},
    {"warp threads 1, 2, 3: 3 channels, zeros and border", t_threads},
    {"warp threads 1, 2, 3: 1 channel, nearest, NIfTI order", t_threads_one_channel},
    {"warp vector and scalar paths, both array orders: same bits", t_paths_and_orders},
    {0},
};

int main(int argc, char **argv) { return lm_test_run(argc, argv, cases); }
