/* test_conv3d.c — conv3d k3 p1, stride 1 and 2: values against a direct double loop,
 * finite-difference gradients of x, w, b, odd sizes (prime dims, size-1 axes), an encoder
 * shape at reduced scale, the direct AVX2 forward against the OpenBLAS one (LM_CONV_BLAS=1),
 * and the same bits for any thread count (forward 1 to 5 threads, direct and OpenBLAS paths;
 * backward 1 to 4). */
#include "kt.h"

static double ref_at(const float *x, const float *w, const float *b, const lm_conv3d_args *a,
                     int co, int64_t z, int64_t y, int64_t xx)
{
    double s = b ? b[co] : 0;
    for (int ci = 0; ci < a->Cin; ci++)
        for (int kd = 0; kd < 3; kd++)
            for (int kh = 0; kh < 3; kh++)
                for (int kw = 0; kw < 3; kw++) {
                    int64_t zi = z * a->stride - 1 + kd, yi = y * a->stride - 1 + kh,
                            xi = xx * a->stride - 1 + kw;
                    if (zi < 0 || zi >= a->D || yi < 0 || yi >= a->H || xi < 0 || xi >= a->W)
                        continue;
                    s += (double)w[((co * a->Cin + ci) * 27) + kd * 9 + kh * 3 + kw] *
                         x[((ci * a->D + zi) * a->H + yi) * a->W + xi];
                }
    return s;
}

static void check_values(lm_conv3d_args a, int bias)
{
    KT_COVER(conv3d_fwd);
    int64_t Do = (a.D - 1) / a.stride + 1, Ho = (a.H - 1) / a.stride + 1,
            Wo = (a.W - 1) / a.stride + 1, nin = (int64_t)a.Cin * a.D * a.H * a.W;
    float *x = kt_rand(nin, -1, 1, 1), *w = kt_rand((int64_t)a.Cout * a.Cin * 27, -1, 1, 2);
    float *b = kt_rand(a.Cout, -1, 1, 3), *y = kt_rand(a.Cout * Do * Ho * Wo, -9, 9, 4);
    KT_CALL(conv3d_fwd, y, x, w, bias ? b : NULL, &a);
    for (int co = 0; co < a.Cout; co++)
        for (int64_t z = 0; z < Do; z++)
            for (int64_t yy = 0; yy < Ho; yy++)
                for (int64_t xx = 0; xx < Wo; xx++)
                    LM_CHECK_CLOSE(y[((co * Do + z) * Ho + yy) * Wo + xx],
                                   ref_at(x, w, bias ? b : NULL, &a, co, z, yy, xx), 1e-5, 1e-5);
    kt_free(x), kt_free(w), kt_free(b), kt_free(y);
}

static void t_values_odd(void)
{
    check_values((lm_conv3d_args){2, 3, 5, 3, 7, 1}, 1);
    check_values((lm_conv3d_args){2, 3, 5, 3, 7, 2}, 1);
    check_values((lm_conv3d_args){1, 1, 1, 1, 1, 1}, 1);
    check_values((lm_conv3d_args){3, 2, 1, 4, 1, 2}, 0);
    check_values((lm_conv3d_args){1, 8, 2, 2, 2, 2}, 0);
}

static void t_values_encoder_shape(void)
{
    /* conv1_2 of the encoder (8 -> 16, s2) at 1/4 of the abdomen grid */
    check_values((lm_conv3d_args){8, 16, 24, 20, 24, 2}, 1);
    /* S1 CBL (40 -> 8, s1) at reduced scale */
    check_values((lm_conv3d_args){40, 8, 6, 5, 6, 1}, 1);
}

/* Σ |terms| of output (co, z, y, xx): the scale of its rounding error */
static double ref_abs(const float *x, const float *w, const float *b, const lm_conv3d_args *a,
                      int co, int64_t z, int64_t y, int64_t xx)
{
    double s = b ? fabs(b[co]) : 0;
    for (int ci = 0; ci < a->Cin; ci++)
        for (int k = 0; k < 27; k++) {
            int64_t zi = z * a->stride - 1 + k / 9, yi = y * a->stride - 1 + k / 3 % 3,
                    xi = xx * a->stride - 1 + k % 3;
            if (zi < 0 || zi >= a->D || yi < 0 || yi >= a->H || xi < 0 || xi >= a->W)
                continue;
            s += fabs((double)w[(co * a->Cin + ci) * 27 + k] *
                      x[((ci * a->D + zi) * a->H + yi) * a->W + xi]);
        }
    return s;
}

/* The forward's two implementations, the direct AVX2 one (taken where the CPU has AVX2 and
 * FMA) and the OpenBLAS ones (LM_CONV_BLAS=1, and on other CPUs), differ only in the order of
 * their sums: within a few roundings of each other, relative to Σ|terms|. */
static void paths_case(lm_conv3d_args a)
{
    KT_COVER(conv3d_fwd);
    int64_t Do = (a.D - 1) / a.stride + 1, Ho = (a.H - 1) / a.stride + 1,
            Wo = (a.W - 1) / a.stride + 1, nin = (int64_t)a.Cin * a.D * a.H * a.W;
    int64_t nout = a.Cout * Do * Ho * Wo;
    float *x = kt_rand(nin, -1, 1, 1), *w = kt_rand((int64_t)a.Cout * a.Cin * 27, -1, 1, 2);
    float *b = kt_rand(a.Cout, -1, 1, 3), *y1 = kt_rand(nout, -9, 9, 4),
          *y2 = kt_rand(nout, -9, 9, 5);
    KT_CALL(conv3d_fwd, y1, x, w, b, &a);
    setenv("LM_CONV_BLAS", "1", 1);
    KT_CALL(conv3d_fwd, y2, x, w, b, &a);
    unsetenv("LM_CONV_BLAS");
    for (int co = 0; co < a.Cout; co++)
        for (int64_t z = 0; z < Do; z++)
            for (int64_t yy = 0; yy < Ho; yy++)
                for (int64_t xx = 0; xx < Wo; xx++) {
                    int64_t i = ((co * Do + z) * Ho + yy) * Wo + xx;
                    double tol = 2e-6 * ref_abs(x, w, b, &a, co, z, yy, xx);
                    LM_CHECK_CLOSE(y1[i], y2[i], tol, 0);
                }
    kt_free(x), kt_free(w), kt_free(b), kt_free(y1), kt_free(y2);
}

static void t_paths(void)
{
    paths_case((lm_conv3d_args){1, 8, 9, 7, 40, 1});   /* Cin 1; rows of 40: tiles 24 + 16 */
    paths_case((lm_conv3d_args){8, 3, 6, 5, 33, 1});   /* 3 channels (3 × 4 vectors) */
    paths_case((lm_conv3d_args){5, 7, 5, 6, 7, 1});    /* 7 = 4 + 3 channels; narrow rows */
    paths_case((lm_conv3d_args){40, 8, 4, 6, 18, 1});  /* 1080 taps: several blocks */
    /* several blocks of taps over rows with full tiles, by bands of rows: 16 x 100 partial
     * sums a row, bands of 20 rows (20 + 20 + 5), rows of 4 tiles + 4; 3 channels (tiles of
     * 32, 2 + 6 a row, one band); stride 2 (1 tile + 6) */
    paths_case((lm_conv3d_args){8, 16, 3, 45, 100, 1});
    /* (review) a short last group on the band path (7 = 4 + 3, bands of 46 + 14 rows), bands
     * of one row (64 x 551 partial sums a row, stride 2, odd sizes), one output row */
    paths_case((lm_conv3d_args){8, 7, 3, 60, 100, 1});
    paths_case((lm_conv3d_args){4, 64, 3, 5, 1101, 2});
    paths_case((lm_conv3d_args){8, 8, 3, 1, 100, 1});
    /* one block of taps, channel group by group over the rows: 7 = 4 + 3 channels, rows of
     * 2 tiles + 12 */
    paths_case((lm_conv3d_args){2, 7, 4, 9, 60, 1});
    paths_case((lm_conv3d_args){8, 3, 4, 30, 70, 1});
    paths_case((lm_conv3d_args){16, 16, 5, 20, 60, 2});
    paths_case((lm_conv3d_args){16, 6, 9, 11, 13, 2}); /* stride 2, odd sizes, 6 = 4 + 2 */
    paths_case((lm_conv3d_args){3, 5, 7, 40, 41, 2});  /* stride 2, rows of 21, 5 = 4 + 1 */
    /* planes of 34 positions: one tile of 2 channels by 5 vectors (40) beats 24s and 32s */
    paths_case((lm_conv3d_args){32, 32, 12, 10, 12, 2}); /* enc conv5 */
    paths_case((lm_conv3d_args){6, 5, 7, 9, 11, 2});     /* 5 = 2 + 2 + 1 channels */
    paths_case((lm_conv3d_args){4, 3, 5, 9, 11, 2});     /* 3 channels: 2 + 1 */
    /* channels in the lanes (16 by 6 positions): 25 positions (groups 6+6+6+6+1), 48
     * channels, a stride-1 plane of 3x3 */
    paths_case((lm_conv3d_args){8, 16, 7, 9, 10, 2});
    paths_case((lm_conv3d_args){24, 48, 3, 9, 9, 2});
    /* 48 channels: on 2 threads groups of 16 and 32 channels, each thread all planes; on 3
     * one group each; on 4, 16 + 32 channels by 2 + 2 planes */
    for (int nt = 2; nt <= 4; nt++) {
        lm_backend_set_threads(kt_be(), nt);
        paths_case((lm_conv3d_args){24, 48, 7, 9, 9, 2});
    }
    lm_backend_set_threads(kt_be(), 2);
    paths_case((lm_conv3d_args){16, 32, 4, 3, 3, 1});
    paths_case((lm_conv3d_args){16, 32, 24, 20, 24, 2}); /* enc conv4 */
    paths_case((lm_conv3d_args){2, 2, 3, 3, 3, 2});
    paths_case((lm_conv3d_args){1, 1, 1, 1, 1, 1});
    paths_case((lm_conv3d_args){3, 2, 1, 4, 1, 2});
}

typedef struct {
    float *y, *x, *w, *b, *r;
    lm_conv3d_args a;
    int64_t nout;
} cctx;

static double c_loss(void *p)
{
    cctx *c = p;
    lm_backend *be = kt_be();
    be->conv3d_fwd(be, c->y, c->x, c->w, c->b, &c->a);
    return kt_dot(c->y, c->r, c->nout);
}

static void fd_case(lm_conv3d_args a)
{
    KT_COVER(conv3d_fwd); /* the loss runs the forward: one check of the pair */
    KT_COVER(conv3d_bwd);
    int64_t Do = (a.D - 1) / a.stride + 1, Ho = (a.H - 1) / a.stride + 1,
            Wo = (a.W - 1) / a.stride + 1, nin = (int64_t)a.Cin * a.D * a.H * a.W,
            nw = (int64_t)a.Cout * a.Cin * 27, nout = a.Cout * Do * Ho * Wo;
    cctx c = {kt_alloc(nout), kt_rand(nin, -1, 1, 1), kt_rand(nw, -1, 1, 2),
              kt_rand(a.Cout, -1, 1, 3), kt_rand(nout, -1, 1, 4), a, nout};
    float *dx = kt_alloc(nin), *dw = kt_alloc(nw), *db = kt_alloc(a.Cout);
    KT_CALL(conv3d_bwd, dx, dw, db, c.r, c.x, c.w, &c.a);
    char what[64];
    snprintf(what, sizeof what, "conv3d s%d dx", a.stride);
    kt_gradcheck(what, c.x, nin, dx, c_loss, &c, 1e-2, 1e-3);
    snprintf(what, sizeof what, "conv3d s%d dw", a.stride);
    kt_gradcheck(what, c.w, nw, dw, c_loss, &c, 1e-2, 1e-3);
    snprintf(what, sizeof what, "conv3d s%d db", a.stride);
    kt_gradcheck(what, c.b, a.Cout, db, c_loss, &c, 1e-2, 1e-3);
    kt_free(c.y), kt_free(c.x), kt_free(c.w), kt_free(c.b), kt_free(c.r);
    kt_free(dx), kt_free(dw), kt_free(db);
}

static void t_fd_s1(void) { fd_case((lm_conv3d_args){2, 3, 5, 3, 4, 1}); }
static void t_fd_s2(void) { fd_case((lm_conv3d_args){2, 3, 5, 4, 7, 2}); }
static void t_fd_size1(void) { fd_case((lm_conv3d_args){3, 2, 1, 5, 1, 1}); }

typedef struct {
    float *y, *x, *w, *b, *dy, *dx, *dw, *db;
    lm_conv3d_args a;
    int64_t nin, nw, nout;
} tctx;

/* sizes, forward operands (x, w, b random), and with grads the backward ones (dy random) */
static tctx tctx_new(lm_conv3d_args a, int grads)
{
    const int s = a.stride;
    const int64_t Do = (a.D - 1) / s + 1, Ho = (a.H - 1) / s + 1, Wo = (a.W - 1) / s + 1;
    tctx c = {0};
    c.a = a;
    c.nin = (int64_t)a.Cin * a.D * a.H * a.W, c.nw = (int64_t)a.Cout * a.Cin * 27;
    c.nout = a.Cout * Do * Ho * Wo;
    c.y = kt_alloc(c.nout), c.x = kt_rand(c.nin, -1, 1, 1), c.w = kt_rand(c.nw, -1, 1, 2);
    c.b = kt_rand(a.Cout, -1, 1, 3);
    if (grads) {
        c.dy = kt_rand(c.nout, -1, 1, 4);
        c.dx = kt_alloc(c.nin), c.dw = kt_alloc(c.nw), c.db = kt_alloc(a.Cout);
    }
    return c;
}

static void tctx_free(tctx *c)
{
    kt_free(c->y), kt_free(c->x), kt_free(c->w), kt_free(c->b);
    if (c->dy)
        kt_free(c->dy), kt_free(c->dx), kt_free(c->dw), kt_free(c->db);
}

/* Fails the case where conv3d_fwd could run a shape on one thread whatever the count, on any
 * of its paths (kernels/cpu/conv3d.c): the direct one stays serial below CONV_PAR_FLOPS = 2^22
 * flops or with one output plane, the OpenBLAS ones (per plane, im2col) below LM_CPU_PAR_MIN
 * rows (Cin·27) times output voxels of a channel, or with one plane */
static void conv_parallel(const tctx *c)
{
    const double flops = 2.0 * (double)c->nout * c->a.Cin * 27;
    const int64_t Do = (c->a.D - 1) / c->a.stride + 1,
                  rows_out = c->a.Cin * 27 * (c->nout / c->a.Cout);
    if (flops < (double)(1 << 22) || Do < 2 || rows_out < LM_CPU_PAR_MIN)
        lm_test_fail(__FILE__, __LINE__,
                     "conv3d %dx%d %dx%dx%d s%d: %.0f flops, %lld rows x outputs, %lld planes: "
                     "serial",
                     c->a.Cin, c->a.Cout, c->a.D, c->a.H, c->a.W, c->a.stride, flops,
                     (long long)rows_out, (long long)Do);
}

static void thr_run(void *p)
{
    tctx *c = p;
    KT_CALL(conv3d_fwd, c->y, c->x, c->w, c->b, &c->a);
    memset(c->dx, 0, (size_t)c->nin * 4);
    memset(c->dw, 0, (size_t)c->nw * 4);
    memset(c->db, 0, (size_t)c->a.Cout * 4);
    KT_CALL(conv3d_bwd, c->dx, c->dw, c->db, c->dy, c->x, c->w, &c->a);
}

static void t_threads(void)
{
    KT_COVER(conv3d_fwd);
    KT_COVER(conv3d_bwd);
    for (int s = 1; s <= 2; s++) {
        tctx c = tctx_new((lm_conv3d_args){16, 16, 24, 20, 24, s}, 1);
        conv_parallel(&c);
        kt_same_bits_upto("conv3d y", thr_run, &c, c.y, (size_t)c.nout * 4, 4);
        kt_same_bits_upto("conv3d dx", thr_run, &c, c.dx, (size_t)c.nin * 4, 4);
        kt_same_bits_upto("conv3d dw", thr_run, &c, c.dw, (size_t)c.nw * 4, 4);
        kt_same_bits_upto("conv3d db", thr_run, &c, c.db, (size_t)c.a.Cout * 4, 4);
        tctx_free(&c);
    }
}

static void fwd_run(void *p)
{
    tctx *c = p;
    KT_CALL(conv3d_fwd, c->y, c->x, c->w, c->b, &c->a);
}

/* "Bit-identical for any thread count": forward shapes with enough work for every thread, run
 * on 1 to 5 threads (the direct path's work split depends on the thread count: channel groups
 * of 16 over divisors of it, then planes; 5 threads on 2 cores share them unevenly): stride 2,
 * narrow rows, 3 channels, channels in the lanes, and the decoder's OpenBLAS path (stride 1,
 * Cin >= 32 over planes of >= 256 voxels: S3 and S1 at reduced scale) */
static void t_threads_fwd(void)
{
    KT_COVER(conv3d_fwd);
    static const lm_conv3d_args shapes[] = {
        {16, 32, 48, 40, 48, 2}, {96, 32, 12, 10, 12, 1}, {8, 3, 24, 80, 96, 1},
        {32, 32, 12, 10, 12, 2}, {1, 8, 24, 20, 96, 1},  {24, 48, 7, 9, 9, 2},
        {32, 16, 12, 10, 12, 2}, /* 16 channels: the threads split the planes */
        {48, 32, 9, 20, 24, 2},  /* 2 groups of 16 channels */
        {96, 16, 6, 20, 24, 1},  /* S3 (96 -> 16), OpenBLAS per plane */
        {40, 8, 5, 20, 26, 1}};  /* S1 CBL (40 -> 8), OpenBLAS per plane */
    /* then all through OpenBLAS (LM_CONV_BLAS=1, the path of CPUs without AVX2): im2col
     * tiles, and planes at stride 1 */
    for (int blas = 0; blas < 2; blas++) {
        if (blas)
            setenv("LM_CONV_BLAS", "1", 1);
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
            tctx c = tctx_new(shapes[i], 0);
            const lm_conv3d_args *a = &shapes[i];
            conv_parallel(&c);
            char what[96];
            snprintf(what, sizeof what, "conv3d y %dx%d %dx%dx%d s%d%s", a->Cin, a->Cout, a->D,
                     a->H, a->W, a->stride, blas ? " (LM_CONV_BLAS=1)" : "");
            kt_same_bits_upto(what, fwd_run, &c, c.y, (size_t)c.nout * 4, 5);
            tctx_free(&c);
        }
        unsetenv("LM_CONV_BLAS");
    }
}

static void t_bad_args(void)
{
    KT_COVER(conv3d_fwd);
    lm_backend *be = kt_be();
    float v[4] = {0};
    lm_conv3d_args a = {1, 1, 1, 1, 1, 3};
    LM_CHECK(be->conv3d_fwd(be, v, v, v, NULL, &a) < 0, "stride 3 accepted");
    lm_conv3d_args z = {0, 1, 1, 1, 1, 1};
    LM_CHECK(be->conv3d_fwd(be, v, v, v, NULL, &z) < 0, "Cin 0 accepted");
}

static const lm_test_case cases[] = {
    {"conv3d_fwd odd sizes", t_values_odd},
    {"conv3d_fwd encoder shapes", t_values_encoder_shape},
    {"conv3d_bwd fd stride 1", t_fd_s1},
    {"conv3d_bwd fd stride 2", t_fd_s2},
    {"conv3d_bwd fd size-1 axes", t_fd_size1},
    {"conv3d_fwd direct vs OpenBLAS", t_paths},
    {"conv3d threads 1 to 4", t_threads},
    {"conv3d_fwd threads 1 to 5", t_threads_fwd},
    {"conv3d bad arguments", t_bad_args},
    {0},
};

int main(int argc, char **argv) { return lm_test_run(argc, argv, cases); }
