/* test_resample.c — trilinear ×2 upsampling (align_corners=False) and 2×2×2 average pooling:
 * hand-derived PyTorch values, MODEL.md §17 item 4 (a constant field c becomes 2c after
 * upsampling and ×2), adjoint identity and finite differences of the backward, odd and size-1
 * axes, bit identity for 1, 2 and 3 threads with every op's loop parallel. */
#include "kt.h"

static void t_up_values(void)
{
    KT_COVER(upsample2_fwd);
    /* along W only (D = H = 1): [a,b,c] -> [a, .75a+.25b, .25a+.75b, .75b+.25c, .25b+.75c, c] */
    float x[3] = {1, 5, -3}, y[4 * 6];
    lm_vol_args a = {1, 1, 1, 3};
    KT_CALL(upsample2_fwd, y, x, &a);
    const double want[6] = {1, 2, 4, 3, -1, -3};
    for (int r = 0; r < 4; r++) /* the 2×2 copies along D and H are equal */
        for (int i = 0; i < 6; i++)
            LM_CHECK_CLOSE(y[r * 6 + i], want[i], 1e-7, 0);
    /* separable: a 2×2×2 input gives the product of 1-D weights */
    float x8[8], y64[64];
    for (int i = 0; i < 8; i++)
        x8[i] = (float)(i * i);
    lm_vol_args b = {1, 2, 2, 2};
    KT_CALL(upsample2_fwd, y64, x8, &b);
    const double w1[4][2] = {{1, 0}, {0.75, 0.25}, {0.25, 0.75}, {0, 1}};
    for (int z = 0; z < 4; z++)
        for (int yy = 0; yy < 4; yy++)
            for (int xx = 0; xx < 4; xx++) {
                double s = 0;
                for (int i = 0; i < 2; i++)
                    for (int j = 0; j < 2; j++)
                        for (int k = 0; k < 2; k++)
                            s += w1[z][i] * w1[yy][j] * w1[xx][k] * x8[(i * 2 + j) * 2 + k];
                LM_CHECK_CLOSE(y64[(z * 4 + yy) * 4 + xx], s, 1e-6, 0);
            }
}

static void t_flow_constant(void)
{
    KT_COVER(upsample2_fwd);
    KT_COVER(scale);
    /* MODEL.md §17 item 4: constant coarse field c -> 2c at the fine level */
    const int D = 3, H = 5, W = 2;
    float *u = kt_alloc(3 * D * H * W), *up = kt_alloc(3 * 8 * D * H * W);
    const float c[3] = {1.25f, -0.5f, 3.0f};
    for (int ch = 0; ch < 3; ch++)
        for (int i = 0; i < D * H * W; i++)
            u[ch * D * H * W + i] = c[ch];
    lm_vol_args a = {3, D, H, W};
    KT_CALL(upsample2_fwd, up, u, &a);
    KT_CALL(scale, up, up, 2.0f, 3 * 8 * D * H * W);
    for (int ch = 0; ch < 3; ch++)
        for (int i = 0; i < 8 * D * H * W; i++)
            LM_CHECK(up[ch * 8 * D * H * W + i] == 2 * c[ch], "channel %d voxel %d: %g", ch, i,
                     up[ch * 8 * D * H * W + i]);
    kt_free(u), kt_free(up);
}

static void t_pool_values(void)
{
    KT_COVER(avgpool2_fwd);
    const int C = 2, D = 4, H = 3, W = 5; /* odd H, W: floor */
    float *x = kt_rand(C * D * H * W, -1, 1, 1), *y = kt_alloc(C * 2 * 1 * 2);
    lm_vol_args a = {C, D, H, W};
    KT_CALL(avgpool2_fwd, y, x, &a);
    for (int c = 0; c < C; c++)
        for (int z = 0; z < 2; z++)
            for (int xx = 0; xx < 2; xx++) {
                double s = 0;
                for (int i = 0; i < 2; i++)
                    for (int j = 0; j < 2; j++)
                        for (int k = 0; k < 2; k++)
                            s += x[((c * D + 2 * z + i) * H + j) * W + 2 * xx + k];
                LM_CHECK_CLOSE(y[(c * 2 + z) * 2 + xx], s / 8, 1e-7, 1e-6);
            }
    lm_backend *be = kt_be();
    lm_vol_args bad = {1, 1, 2, 2};
    LM_CHECK(be->avgpool2_fwd(be, y, x, &bad) < 0, "size-1 axis pooled");
    kt_free(x), kt_free(y);
}

typedef struct {
    int pool;
    float *x, *y, *r;
    lm_vol_args a;
    int64_t nout;
} rctx;

static double r_loss(void *p)
{
    rctx *c = p;
    if (c->pool)
        KT_CALL(avgpool2_fwd, c->y, c->x, &c->a);
    else
        KT_CALL(upsample2_fwd, c->y, c->x, &c->a);
    return kt_dot(c->y, c->r, c->nout);
}

static void fd_case(int pool, lm_vol_args a)
{
    int64_t nin = (int64_t)a.C * a.D * a.H * a.W;
    int64_t nout = pool ? (int64_t)a.C * (a.D / 2) * (a.H / 2) * (a.W / 2) : 8 * nin;
    rctx c = {pool, kt_rand(nin, -1, 1, 1), kt_alloc(nout), kt_rand(nout, -1, 1, 2), a, nout};
    float *dx = kt_rand(nin, -1, 1, 3), *dx0 = kt_copy(dx, nin);
    if (pool)
        KT_CALL(avgpool2_bwd, dx, c.r, &a);
    else
        KT_CALL(upsample2_bwd, dx, c.r, &a);
    for (int64_t i = 0; i < nin; i++)
        dx[i] -= dx0[i];
    r_loss(&c);
    LM_CHECK_CLOSE(kt_dot(c.y, c.r, nout), kt_dot(c.x, dx, nin), 1e-6, 1e-5); /* adjoint */
    kt_gradcheck(pool ? "avgpool2" : "upsample2", c.x, nin, dx, r_loss, &c, 1e-2, 1e-3);
    kt_free(c.x), kt_free(c.y), kt_free(c.r), kt_free(dx), kt_free(dx0);
}

static void t_up_fd(void)
{
    KT_COVER(upsample2_fwd); /* the loss runs the forward: one check of the pair */
    KT_COVER(upsample2_bwd);
    fd_case(0, (lm_vol_args){2, 3, 1, 5});
    fd_case(0, (lm_vol_args){1, 2, 7, 2});
}

static void t_pool_fd(void)
{
    KT_COVER(avgpool2_fwd); /* the loss runs the forward: one check of the pair */
    KT_COVER(avgpool2_bwd);
    fd_case(1, (lm_vol_args){2, 4, 5, 2});
}

typedef struct {
    float *x, *y, *dx, *xp, *p, *dp;
    lm_vol_args a, f; /* upsample2 input grid, avgpool2 input grid */
    int64_t n, np;    /* elements of those grids */
} tctx;

static void thr_run(void *pp)
{
    tctx *c = pp;
    memset(c->dx, 0, (size_t)c->n * 4);
    memset(c->dp, 0, (size_t)c->np * 4);
    KT_CALL(upsample2_fwd, c->y, c->x, &c->a);
    KT_CALL(upsample2_bwd, c->dx, c->y, &c->a);
    KT_CALL(avgpool2_fwd, c->p, c->xp, &c->f);
    KT_CALL(avgpool2_bwd, c->dp, c->p, &c->f);
}

static void t_threads(void)
{
    KT_COVER(upsample2_fwd);
    KT_COVER(upsample2_bwd);
    KT_COVER(avgpool2_fwd);
    KT_COVER(avgpool2_bwd);
    /* odd extents near the abdomen's F'4 grid (16 × 12×10×12, whose 1/4 grid is too small for
     * the parallel loop); pooling floors 27×23×31 to the same 13×11×15 */
    lm_vol_args a = {16, 13, 11, 15}, f = {16, 27, 23, 31};
    int64_t n = (int64_t)a.C * a.D * a.H * a.W, np = (int64_t)f.C * f.D * f.H * f.W;
    int64_t npool = (int64_t)f.C * (f.D / 2) * (f.H / 2) * (f.W / 2);
    /* resample.c sep_apply's loop tests C·yd·yh·yw, the grid it writes: the output grid for
     * the forwards, the input grid for the backwards */
    KT_PARALLEL(8 * n); /* upsample2_fwd */
    KT_PARALLEL(n);     /* upsample2_bwd */
    KT_PARALLEL(npool); /* avgpool2_fwd */
    KT_PARALLEL(np);    /* avgpool2_bwd */
    tctx c = {0};
    c.x = kt_rand(n, -1, 1, 1), c.y = kt_alloc(8 * n), c.dx = kt_alloc(n);
    c.xp = kt_rand(np, -1, 1, 2), c.p = kt_alloc(npool), c.dp = kt_alloc(np);
    c.a = a, c.f = f, c.n = n, c.np = np;
    kt_same_bits("upsample y", thr_run, &c, c.y, (size_t)(8 * n) * 4);
    kt_same_bits("upsample dx", thr_run, &c, c.dx, (size_t)n * 4);
    kt_same_bits("avgpool", thr_run, &c, c.p, (size_t)npool * 4);
    kt_same_bits("avgpool dx", thr_run, &c, c.dp, (size_t)np * 4);
    kt_free(c.x), kt_free(c.y), kt_free(c.dx), kt_free(c.xp), kt_free(c.p), kt_free(c.dp);
}

static const lm_test_case cases[] = {
    {"upsample2 values", t_up_values},
    {"upsample2 constant flow (MODEL §17.4)", t_flow_constant},
    {"avgpool2 values", t_pool_values},
    {"upsample2_bwd adjoint and fd", t_up_fd},
    {"avgpool2_bwd adjoint and fd", t_pool_fd},
    {"resample threads 1, 2, 3", t_threads},
    {0},
};

int main(int argc, char **argv) { return lm_test_run(argc, argv, cases); }
