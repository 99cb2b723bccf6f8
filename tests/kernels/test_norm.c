/* test_norm.c — instance norm (volume [C,N] and token [N,C] layouts), layer norm (with and
 * without affine) and RMSNorm: statistics against direct formulas, finite-difference gradients,
 * layouts agreeing with each other, bit identity for 1 and 2 threads. */
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

static void t_layernorm(void)
{
    KT_COVER(layernorm_fwd);
    KT_COVER(layernorm_bwd);
    for (int affine = 0; affine < 2; affine++) {
        const int64_t R = 4, C = 13;
        nctx c = {0};
        c.kind = 1;
        c.n = R * C;
        c.x = kt_rand(c.n, -2, 2, 1), c.y = kt_alloc(c.n), c.r = kt_rand(c.n, -1, 1, 2);
        c.g = affine ? kt_rand(C, 0.5, 1.5, 3) : NULL, c.b = affine ? kt_rand(C, -1, 1, 4) : NULL;
        c.mean = kt_alloc(R), c.rstd = kt_alloc(R);
        c.ra = (lm_rownorm_args){R, C, 1e-5f};
        nfwd(&c);
        for (int64_t j = 0; j < C; j++) { /* row 0 by hand */
            double mu = 0, v = 0;
            for (int64_t k = 0; k < C; k++)
                mu += c.x[k];
            mu /= C;
            for (int64_t k = 0; k < C; k++)
                v += (c.x[k] - mu) * (c.x[k] - mu);
            double want = (c.x[j] - mu) / sqrt(v / C + 1e-5);
            if (affine)
                want = want * c.g[j] + c.b[j];
            LM_CHECK_CLOSE(c.y[j], want, 1e-6, 1e-6);
        }
        float *dx = kt_alloc(c.n), *dg = kt_alloc(C), *db = kt_alloc(C);
        KT_CALL(layernorm_bwd, dx, affine ? dg : NULL, affine ? db : NULL, c.r, c.x, c.mean,
                c.rstd, c.g, &c.ra);
        kt_gradcheck("layernorm dx", c.x, c.n, dx, n_loss, &c, 1e-3, 2e-3);
        if (affine) {
            kt_gradcheck("layernorm dgamma", c.g, C, dg, n_loss, &c, 1e-3, 2e-3);
            kt_gradcheck("layernorm dbeta", c.b, C, db, n_loss, &c, 1e-3, 2e-3);
        }
        kt_free(c.x), kt_free(c.y), kt_free(c.r), kt_free(c.g), kt_free(c.b);
        kt_free(c.mean), kt_free(c.rstd), kt_free(dx), kt_free(dg), kt_free(db);
    }
}

static void t_rmsnorm(void)
{
    KT_COVER(rmsnorm_fwd);
    KT_COVER(rmsnorm_bwd);
    const int64_t R = 3, C = 17;
    nctx c = {0};
    c.kind = 2;
    c.n = R * C;
    c.x = kt_rand(c.n, -2, 2, 1), c.y = kt_alloc(c.n), c.r = kt_rand(c.n, -1, 1, 2);
    c.g = kt_rand(C, 0.5, 1.5, 3);
    c.ra = (lm_rownorm_args){R, C, 1e-5f};
    nfwd(&c);
    double ms = 0;
    for (int64_t k = 0; k < C; k++)
        ms += (double)c.x[C + k] * c.x[C + k];
    for (int64_t k = 0; k < C; k++)
        LM_CHECK_CLOSE(c.y[C + k], c.g[k] * c.x[C + k] / sqrt(ms / C + 1e-5), 1e-6, 1e-6);
    float *dx = kt_alloc(c.n);
    KT_CALL(rmsnorm_bwd, dx, c.r, c.x, c.g, &c.ra);
    kt_gradcheck("rmsnorm dx", c.x, c.n, dx, n_loss, &c, 1e-3, 2e-3);
    kt_free(c.x), kt_free(c.y), kt_free(c.r), kt_free(c.g), kt_free(dx);
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
    {"layernorm", t_layernorm},
    {"rmsnorm", t_rmsnorm},
    {"norm threads 1 vs 2", t_threads},
    {0},
};

int main(int argc, char **argv) { return lm_test_run(argc, argv, cases); }
