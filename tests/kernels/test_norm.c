/* test_norm.c — instance norm (volume [C,N] and token [N,C] layouts), layer norm (with and
 * without affine) and RMSNorm: statistics against direct formulas, finite-difference gradients,
 * layouts agreeing with each other, size-1 rows, columns and channels, bit identity for 1, 2
 * and 3 threads at sizes that reach every parallel loop. */
#include "kt.h"

typedef struct {
    int kind; /* 0 instnorm, 1 layernorm, 2 rmsnorm */
    float *x, *y, *r, *g, *b, *mean, *rstd;
    lm_instnorm_args ia;
    lm_rownorm_args ra;
    int64_t n;
} nctx;

static void nfwd(nctx *c)
{
    if (c->kind == 0)
        KT_CALL(instnorm_fwd, c->y, c->mean, c->rstd, c->x, &c->ia);
    else if (c->kind == 1)
        KT_CALL(layernorm_fwd, c->y, c->mean, c->rstd, c->x, c->g, c->b, &c->ra);
    else
        KT_CALL(rmsnorm_fwd, c->y, c->x, c->g, &c->ra);
}

static double n_loss(void *p)
{
    nctx *c = p;
    nfwd(c);
    return kt_dot(c->y, c->r, c->n);
}

static void t_instnorm_values(void)
{
    KT_COVER(instnorm_fwd);
    const int64_t C = 3, N = 29;
    float *x = kt_rand(C * N, -2, 3, 1), *y = kt_alloc(C * N), *m = kt_alloc(C), *s = kt_alloc(C);
    lm_instnorm_args a = {C, N, 0, 1e-5f};
    KT_CALL(instnorm_fwd, y, m, s, x, &a);
    for (int64_t c = 0; c < C; c++) {
        double mu = 0, v = 0;
        for (int64_t i = 0; i < N; i++)
            mu += x[c * N + i];
        mu /= N;
        for (int64_t i = 0; i < N; i++)
            v += (x[c * N + i] - mu) * (x[c * N + i] - mu);
        v /= N;
        LM_CHECK_CLOSE(m[c], mu, 1e-6, 1e-6);
        LM_CHECK_CLOSE(s[c], 1 / sqrt(v + 1e-5), 1e-6, 1e-6);
        for (int64_t i = 0; i < N; i++)
            LM_CHECK_CLOSE(y[c * N + i], (x[c * N + i] - mu) / sqrt(v + 1e-5), 1e-6, 1e-6);
    }
    /* token layout of the transposed data gives the transposed result */
    float *xt = kt_alloc(C * N), *yt = kt_alloc(C * N), *yb = kt_alloc(C * N);
    KT_CALL(transpose, xt, x, C, N, 0);
    lm_instnorm_args at = {C, N, 1, 1e-5f};
    KT_CALL(instnorm_fwd, yt, NULL, NULL, xt, &at);
    KT_CALL(transpose, yb, yt, N, C, 0);
    LM_CHECK(kt_max_abs_diff(yb, y, C * N) <= 1e-6, "token layout differs");
    /* a constant channel normalises to 0 (variance 0, eps keeps it finite) */
    for (int64_t i = 0; i < N; i++)
        x[i] = 4.0f;
    KT_CALL(instnorm_fwd, y, NULL, NULL, x, &a);
    LM_CHECK(y[0] == 0 && y[N - 1] == 0, "constant channel");
    kt_free(x), kt_free(y), kt_free(m), kt_free(s), kt_free(xt), kt_free(yt), kt_free(yb);
}

static void in_fd(int token_major, int64_t C, int64_t N)
{
    KT_COVER(instnorm_bwd);
    nctx c = {0};
    c.kind = 0;
    c.n = C * N;
    c.x = kt_rand(c.n, -2, 2, 1), c.y = kt_alloc(c.n), c.r = kt_rand(c.n, -1, 1, 2);
    /* plus a ramp along each channel: with 3 samples, some of 70 channels drew a variance so
     * small that the loss curved too much for the finite differences' step (seeds 9 and 11) */
    for (int64_t ch = 0; ch < C; ch++)
        for (int64_t k = 0; k < N; k++)
            c.x[token_major ? k * C + ch : ch * N + k] += (float)(0.75 * (k - 0.5 * (N - 1)));
    c.mean = kt_alloc(C), c.rstd = kt_alloc(C);
    c.ia = (lm_instnorm_args){C, N, token_major, 1e-5f};
    nfwd(&c);
    float *dx = kt_alloc(c.n);
    KT_CALL(instnorm_bwd, dx, c.r, c.x, c.mean, c.rstd, &c.ia);
    kt_gradcheck(token_major ? "instnorm tokens" : "instnorm volume", c.x, c.n, dx, n_loss, &c,
                 1e-3, 2e-3);
    kt_free(c.x), kt_free(c.y), kt_free(c.r), kt_free(c.mean), kt_free(c.rstd), kt_free(dx);
}

static void t_instnorm_fd(void)
{
    in_fd(0, 3, 7);
    in_fd(1, 5, 11);
    in_fd(1, 70, 3); /* more than one column block */
}

static void ln_case(int64_t R, int64_t C, int affine)
{
    nctx c = {0};
    c.kind = 1;
    c.n = R * C;
    c.x = kt_rand(c.n, -2, 2, 1), c.y = kt_alloc(c.n), c.r = kt_rand(c.n, -1, 1, 2);
    c.g = affine ? kt_rand(C, 0.5, 1.5, 3) : NULL, c.b = affine ? kt_rand(C, -1, 1, 4) : NULL;
    c.mean = kt_alloc(R), c.rstd = kt_alloc(R);
    c.ra = (lm_rownorm_args){R, C, 1e-5f};
    nfwd(&c);
    for (int64_t i = 0; i < R; i++) { /* every row by hand */
        const float *xr = c.x + i * C;
        double mu = 0, v = 0;
        for (int64_t k = 0; k < C; k++)
            mu += xr[k];
        mu /= C;
        for (int64_t k = 0; k < C; k++)
            v += (xr[k] - mu) * (xr[k] - mu);
        for (int64_t j = 0; j < C; j++) {
            double want = (xr[j] - mu) / sqrt(v / C + 1e-5);
            if (affine)
                want = want * c.g[j] + c.b[j];
            LM_CHECK_CLOSE(c.y[i * C + j], want, 1e-6, 1e-6);
        }
    }
    float *dx = kt_alloc(c.n), *dg = kt_alloc(C), *db = kt_alloc(C);
    KT_CALL(layernorm_bwd, dx, affine ? dg : NULL, affine ? db : NULL, c.r, c.x, c.mean, c.rstd,
            c.g, &c.ra);
    kt_gradcheck("layernorm dx", c.x, c.n, dx, n_loss, &c, 1e-3, 2e-3);
    if (affine) {
        kt_gradcheck("layernorm dgamma", c.g, C, dg, n_loss, &c, 1e-3, 2e-3);
        kt_gradcheck("layernorm dbeta", c.b, C, db, n_loss, &c, 1e-3, 2e-3);
    }
    kt_free(c.x), kt_free(c.y), kt_free(c.r), kt_free(c.g), kt_free(c.b);
    kt_free(c.mean), kt_free(c.rstd), kt_free(dx), kt_free(dg), kt_free(db);
}

static void t_layernorm(void)
{
    KT_COVER(layernorm_fwd);
    KT_COVER(layernorm_bwd);
    for (int affine = 0; affine < 2; affine++) {
        ln_case(4, 13, affine);
        ln_case(1, 13, affine); /* one row */
    }
}

/* x in ±[lo, hi); every row by hand, dx by finite differences with step h */
static void rms_case(int64_t R, int64_t C, double lo, double hi, double h)
{
    nctx c = {0};
    c.kind = 2;
    c.n = R * C;
    c.x = kt_rand_away(c.n, lo, hi, 1), c.y = kt_alloc(c.n), c.r = kt_rand(c.n, -1, 1, 2);
    c.g = kt_rand(C, 0.5, 1.5, 3);
    c.ra = (lm_rownorm_args){R, C, 1e-5f};
    nfwd(&c);
    for (int64_t i = 0; i < R; i++) {
        double ms = 0;
        for (int64_t k = 0; k < C; k++)
            ms += (double)c.x[i * C + k] * c.x[i * C + k];
        for (int64_t k = 0; k < C; k++)
            LM_CHECK_CLOSE(c.y[i * C + k], c.g[k] * c.x[i * C + k] / sqrt(ms / C + 1e-5), 1e-6,
                           1e-6);
    }
    float *dx = kt_alloc(c.n);
    KT_CALL(rmsnorm_bwd, dx, c.r, c.x, c.g, &c.ra);
    kt_gradcheck("rmsnorm dx", c.x, c.n, dx, n_loss, &c, h, 2e-3);
    kt_free(c.x), kt_free(c.y), kt_free(c.r), kt_free(c.g), kt_free(dx);
}

static void t_rmsnorm(void)
{
    KT_COVER(rmsnorm_fwd);
    KT_COVER(rmsnorm_bwd);
    rms_case(3, 17, 0, 2, 1e-3);
    rms_case(1, 17, 0, 2, 1e-3); /* one row */
}

/* one column: layer norm gives x̂ = 0 (variance 0, rstd = 1/√eps), so y = beta and dx = dgamma
 * = 0, dbeta = Σ dy; RMSNorm gives g·x/√(x²+eps), derivative g·eps/(x²+eps)^{3/2}, checked by
 * finite differences with |x| near √eps where that is not vanishingly small */
static void t_rownorm_one_col(void)
{
    KT_COVER(layernorm_fwd);
    KT_COVER(layernorm_bwd);
    const int64_t R = 5;
    const float eps = 1e-5f;
    nctx c = {0};
    c.kind = 1;
    c.n = R;
    c.x = kt_rand(R, -2, 2, 1), c.y = kt_alloc(R), c.r = kt_rand(R, -1, 1, 2);
    c.g = kt_rand(1, 0.5, 1.5, 3), c.b = kt_rand(1, -1, 1, 4);
    c.mean = kt_alloc(R), c.rstd = kt_alloc(R);
    c.ra = (lm_rownorm_args){R, 1, eps};
    nfwd(&c);
    double sdy = 0;
    for (int64_t i = 0; i < R; i++) {
        LM_CHECK(c.y[i] == c.b[0] && c.mean[i] == c.x[i], "row %lld: y %g mean %g", (long long)i,
                 c.y[i], c.mean[i]);
        LM_CHECK_CLOSE(c.rstd[i], 1 / sqrt((double)eps), 0, 1e-7);
        sdy += c.r[i];
    }
    KT_CALL(layernorm_fwd, c.y, NULL, NULL, c.x, NULL, NULL, &c.ra);
    LM_CHECK(c.y[0] == 0 && c.y[R - 1] == 0, "no affine: y %g %g", c.y[0], c.y[R - 1]);
    float *dx = kt_alloc(R), *dg = kt_alloc(1), *db = kt_alloc(1);
    KT_CALL(layernorm_bwd, dx, dg, db, c.r, c.x, c.mean, c.rstd, c.g, &c.ra);
    for (int64_t i = 0; i < R; i++)
        LM_CHECK(dx[i] == 0, "dx[%lld] = %g", (long long)i, dx[i]);
    LM_CHECK(dg[0] == 0, "dgamma %g", dg[0]);
    LM_CHECK_CLOSE(db[0], sdy, 1e-7, 1e-6);
    kt_gradcheck("layernorm one column dbeta", c.b, 1, db, n_loss, &c, 1e-3, 2e-3);
    kt_free(c.x), kt_free(c.y), kt_free(c.r), kt_free(c.g), kt_free(c.b);
    kt_free(c.mean), kt_free(c.rstd), kt_free(dx), kt_free(dg), kt_free(db);

    KT_COVER(rmsnorm_fwd);
    KT_COVER(rmsnorm_bwd);
    nctx m = {0};
    m.kind = 2;
    m.n = R;
    m.x = kt_rand_away(R, 1e-3, 1e-2, 5), m.y = kt_alloc(R), m.r = kt_rand(R, -1, 1, 6);
    m.g = kt_rand(1, 0.5, 1.5, 7);
    m.ra = (lm_rownorm_args){R, 1, eps};
    nfwd(&m);
    float *dm = kt_alloc(R);
    KT_CALL(rmsnorm_bwd, dm, m.r, m.x, m.g, &m.ra);
    for (int64_t i = 0; i < R; i++) {
        double x = m.x[i], q = x * x + eps;
        LM_CHECK_CLOSE(m.y[i], m.g[0] * x / sqrt(q), 1e-7, 1e-6);
        LM_CHECK_CLOSE(dm[i], m.r[i] * m.g[0] * eps / (q * sqrt(q)), 0, 1e-5);
    }
    kt_gradcheck("rmsnorm one column dx", m.x, R, dm, n_loss, &m, 1e-5, 2e-3);
    rms_case(1, 1, 1e-3, 1e-2, 1e-5); /* one row of one column */
    kt_free(m.x), kt_free(m.y), kt_free(m.r), kt_free(m.g), kt_free(dm);
}

/* ---- instance norm against a double reference; thread bits where the sizes are parallel ---- */
typedef struct {
    float *x, *dy, *y, *m, *s, *dx;
    lm_instnorm_args a;
} ictx;

static void in_run(void *p)
{
    ictx *c = p;
    memset(c->dx, 0, (size_t)(c->a.C * c->a.N) * 4);
    KT_CALL(instnorm_fwd, c->y, c->m, c->s, c->x, &c->a);
    KT_CALL(instnorm_bwd, c->dx, c->dy, c->x, c->m, c->s, &c->a);
}

/* the worst |got − want| / (1 + |want|): LM_CHECK_CLOSE(got, want, e, e) holds iff it is <= e */
static void in_err(double *worst, int64_t *at, double got, double want, int64_t i)
{
    double e = fabs(got - want) / (1 + fabs(want));
    if (e > *worst || e != e)
        *worst = e, *at = i;
}

/* mean, rstd, y and dx (from 0) of in_run against per-channel statistics in double */
static void in_ref(const ictx *c, const char *what)
{
    const int64_t C = c->a.C, N = c->a.N, st = c->a.token_major ? C : 1;
    double ey = 0, ed = 0, es = 0;
    int64_t iy = -1, id = -1, is = -1;
    for (int64_t ch = 0; ch < C; ch++) {
        const int64_t o = c->a.token_major ? ch : ch * N; /* element i is o + i·st */
        double mu = 0, v = 0, sg = 0, sgx = 0;
        for (int64_t i = 0; i < N; i++)
            mu += c->x[o + i * st];
        mu /= N;
        for (int64_t i = 0; i < N; i++)
            v += (c->x[o + i * st] - mu) * (c->x[o + i * st] - mu);
        double r = 1 / sqrt(v / N + c->a.eps);
        for (int64_t i = 0; i < N; i++) {
            double xh = (c->x[o + i * st] - mu) * r;
            sg += c->dy[o + i * st];
            sgx += c->dy[o + i * st] * xh;
        }
        sg /= N, sgx /= N;
        in_err(&es, &is, c->m[ch], mu, ch);
        in_err(&es, &is, c->s[ch], r, ch);
        for (int64_t i = 0; i < N; i++) {
            int64_t e = o + i * st;
            double xh = (c->x[e] - mu) * r;
            in_err(&ey, &iy, c->y[e], xh, e);
            in_err(&ed, &id, c->dx[e], r * (c->dy[e] - sg - xh * sgx), e);
        }
    }
    /* statistics: a few float roundings; y and dx also carry the float mean and rstd */
    LM_CHECK(es <= 2e-7, "%s: mean or rstd of channel %lld off by %.3g", what, (long long)is, es);
    LM_CHECK(ey <= 1e-6, "%s: y[%lld] off by %.3g", what, (long long)iy, ey);
    LM_CHECK(ed <= 1e-6, "%s: dx[%lld] off by %.3g", what, (long long)id, ed);
}

static ictx in_new(lm_instnorm_args a)
{
    const int64_t n = a.C * a.N;
    ictx c = {0};
    c.x = kt_rand(n, -1, 3, 1), c.dy = kt_rand(n, -1, 1, 2), c.y = kt_alloc(n);
    c.m = kt_alloc(a.C), c.s = kt_alloc(a.C), c.dx = kt_alloc(n);
    c.a = a;
    return c;
}

static void in_free(ictx *c)
{
    kt_free(c->x), kt_free(c->dy), kt_free(c->y), kt_free(c->m), kt_free(c->s), kt_free(c->dx);
}

static void in_case(const char *what, lm_instnorm_args a, int threads)
{
    const int64_t n = a.C * a.N;
    ictx c = in_new(a);
    in_run(&c);
    in_ref(&c, what);
    if (threads) {
        kt_same_bits("instnorm y", in_run, &c, c.y, (size_t)n * 4);
        kt_same_bits("instnorm mean", in_run, &c, c.m, (size_t)a.C * 4);
        kt_same_bits("instnorm rstd", in_run, &c, c.s, (size_t)a.C * 4);
        kt_same_bits("instnorm dx", in_run, &c, c.dx, (size_t)n * 4);
    }
    in_free(&c);
}

static void t_instnorm_parallel(void)
{
    KT_COVER(instnorm_fwd);
    KT_COVER(instnorm_bwd);
    /* volume: the S2 CBL's InstanceNorm3d on the abdomen's 1/2 grid, 48×40×48 (MODEL.md §7.1;
     * 4 of F'2's 16 channels); the per-channel statistics (norm.c in_stats) and y loops test N,
     * the backward's channel loop C·N */
    lm_instnorm_args v = {4, 48 * 40 * 48, 0, 1e-5f};
    KT_PARALLEL(v.N);
    KT_PARALLEL(v.C * v.N);
    in_case("instnorm volume 4 x 48x40x48", v, 1);
    /* tokens: decoder adapter A4's [L, 256] at the abdomen's L = 180 (MODEL.md §6); every
     * token-major loop tests C·N */
    lm_instnorm_args t = {256, 180, 1, 1e-5f};
    KT_PARALLEL(t.C * t.N);
    in_case("instnorm tokens 180 x 256", t, 1);
}

static void t_instnorm_size1(void)
{
    KT_COVER(instnorm_fwd);
    KT_COVER(instnorm_bwd);
    for (int tm = 0; tm < 2; tm++) {
        /* one sample per channel: variance 0, so y = 0, mean = x, rstd = 1/√eps, dx = 0 */
        const int64_t C = 3;
        lm_instnorm_args a = {C, 1, tm, 1e-5f};
        ictx c = in_new(a);
        in_run(&c);
        for (int64_t i = 0; i < C; i++) {
            LM_CHECK(c.y[i] == 0 && c.dx[i] == 0 && c.m[i] == c.x[i],
                     "N = 1 layout %d channel %lld: y %g dx %g mean %g", tm, (long long)i, c.y[i],
                     c.dx[i], c.m[i]);
            LM_CHECK_CLOSE(c.s[i], 1 / sqrt((double)a.eps), 0, 1e-7);
        }
        in_ref(&c, tm ? "instnorm tokens N = 1" : "instnorm volume N = 1");
        in_free(&c);
        /* one channel */
        in_case(tm ? "instnorm tokens C = 1" : "instnorm volume C = 1",
                (lm_instnorm_args){1, 9, tm, 1e-5f}, 0);
        in_fd(tm, 1, 9);
    }
}

typedef struct {
    float *x, *y, *dy, *dx, *m, *s, *g;
    int64_t C, N;
} tctx;

static void thr_run(void *p)
{
    tctx *c = p;
    lm_instnorm_args v = {c->C, c->N, 0, 1e-5f}, t = {c->C, c->N, 1, 1e-5f};
    lm_rownorm_args r = {c->N, c->C, 1e-5f};
    memset(c->dx, 0, (size_t)(c->C * c->N) * 4);
    KT_CALL(instnorm_fwd, c->y, c->m, c->s, c->x, &v);
    KT_CALL(instnorm_bwd, c->dx, c->dy, c->x, c->m, c->s, &v);
    KT_CALL(instnorm_fwd, c->y, c->m, c->s, c->y, &t);
    KT_CALL(instnorm_bwd, c->dx, c->dy, c->x, c->m, c->s, &t);
    KT_CALL(rmsnorm_fwd, c->y, c->y, c->g, &r);
    KT_CALL(rmsnorm_bwd, c->dx, c->dy, c->x, c->g, &r);
    KT_CALL(layernorm_fwd, c->y, c->m, c->s, c->y, c->g, NULL, &r);
    KT_CALL(layernorm_bwd, c->dx, NULL, NULL, c->dy, c->x, c->m, c->s, c->g, &r);
}

static void t_threads(void)
{
    KT_COVER(instnorm_fwd);
    const int64_t C = 96, N = 180 * 8;
    /* C·N (rows·cols) reaches the token-major, volume-backward and row loops; the volume
     * statistics and y loops test N, serial here (t_instnorm_parallel reaches them) */
    KT_PARALLEL(C * N);
    tctx c = {kt_rand(C * N, -2, 2, 1), kt_alloc(C * N), kt_rand(C * N, -1, 1, 2),
              kt_alloc(C * N), kt_alloc(N), kt_alloc(N), kt_rand(N, 0.5, 1.5, 3), C, N};
    kt_same_bits("norm y", thr_run, &c, c.y, (size_t)(C * N) * 4);
    kt_same_bits("norm dx", thr_run, &c, c.dx, (size_t)(C * N) * 4);
    kt_free(c.x), kt_free(c.y), kt_free(c.dy), kt_free(c.dx), kt_free(c.m), kt_free(c.s);
    kt_free(c.g);
}

static const lm_test_case cases[] = {
    {"instnorm values and layouts", t_instnorm_values},
    {"instnorm_bwd fd", t_instnorm_fd},
    {"instnorm size 1 (N = 1, C = 1)", t_instnorm_size1},
    {"layernorm", t_layernorm},
    {"rmsnorm", t_rmsnorm},
    {"layernorm and rmsnorm one column", t_rownorm_one_col},
    {"instnorm at parallel sizes: reference and threads 1, 2, 3", t_instnorm_parallel},
    {"norm threads 1, 2, 3", t_threads},
    {0},
};

int main(int argc, char **argv) { return lm_test_run(argc, argv, cases); }
