/* test_act.c — relu, leaky_relu, silu, swiglu, gelu: values against libm formulas (and known
 * PyTorch values), finite-difference derivatives away from kinks, in-place use, accumulation,
 * bit identity for 1, 2 and 3 threads of every forward and backward at parallel sizes. */
#include "kt.h"

enum { RELU, LEAKY, SILU, GELU, SWIGLU_G, SWIGLU_U };

typedef struct {
    int kind;
    float *x, *u, *y, *r;
    int64_t n;
} actx;

static void fwd(actx *c)
{
    lm_backend *be = kt_be();
    switch (c->kind) {
    case RELU: be->relu_fwd(be, c->y, c->x, c->n); break;
    case LEAKY: be->leaky_relu_fwd(be, c->y, c->x, 0.01f, c->n); break;
    case SILU: be->silu_fwd(be, c->y, c->x, c->n); break;
    case GELU: be->gelu_fwd(be, c->y, c->x, c->n); break;
    default: be->swiglu_fwd(be, c->y, c->x, c->u, c->n); break;
    }
}

static double a_loss(void *p)
{
    actx *c = p;
    fwd(c);
    return kt_dot(c->y, c->r, c->n);
}

static void fd_one(int kind, const char *what)
{
    const int64_t n = 37;
    actx c = {kind, kt_rand_away(n, 0.05, 3, 1), kt_rand(n, -2, 2, 2), kt_alloc(n),
              kt_rand(n, -1, 1, 3), n};
    float *dx = kt_rand(n, -1, 1, 9), *dx0 = kt_copy(dx, n), *du = kt_alloc(n);
    lm_backend *be = kt_be();
    /* dx starts non-zero: the backward must add, so subtract the start afterwards */
    switch (kind) {
    case RELU: be->relu_bwd(be, dx, c.r, c.x, n); break;
    case LEAKY: be->leaky_relu_bwd(be, dx, c.r, c.x, 0.01f, n); break;
    case SILU: be->silu_bwd(be, dx, c.r, c.x, n); break;
    case GELU: be->gelu_bwd(be, dx, c.r, c.x, n); break;
    default: be->swiglu_bwd(be, dx, du, c.r, c.x, c.u, n); break;
    }
    for (int64_t i = 0; i < n; i++)
        dx[i] -= dx0[i];
    kt_gradcheck(what, c.x, n, dx, a_loss, &c, 1e-3, 1e-3);
    if (kind == SWIGLU_G) {
        char w2[64];
        snprintf(w2, sizeof w2, "%s (up)", what);
        kt_gradcheck(w2, c.u, n, du, a_loss, &c, 1e-3, 1e-3);
    }
    kt_free(c.x), kt_free(c.u), kt_free(c.y), kt_free(c.r), kt_free(dx), kt_free(dx0), kt_free(du);
}

static void t_relu(void)
{
    KT_COVER(relu_fwd);
    KT_COVER(relu_bwd);
    float x[5] = {-2, -0.0f, 0, 1.5f, NAN}, y[5];
    KT_CALL(relu_fwd, y, x, 5);
    LM_CHECK(y[0] == 0 && y[2] == 0 && y[3] == 1.5f && isnan(y[4]), "relu values");
    fd_one(RELU, "relu");
}

static void t_leaky(void)
{
    KT_COVER(leaky_relu_fwd);
    KT_COVER(leaky_relu_bwd);
    float x[3] = {-2, 3, -0.5f};
    KT_CALL(leaky_relu_fwd, x, x, 0.01f, 3); /* in place */
    LM_CHECK(x[0] == -0.02f && x[1] == 3 && x[2] == -0.005f, "leaky values %g %g %g", x[0],
             x[1], x[2]);
    fd_one(LEAKY, "leaky_relu");
}

static void t_silu(void)
{
    KT_COVER(silu_fwd);
    KT_COVER(silu_bwd);
    float x[3] = {1, -1, 0}, y[3];
    KT_CALL(silu_fwd, y, x, 3);
    LM_CHECK_CLOSE(y[0], 0.7310585786, 1e-7, 0);
    LM_CHECK_CLOSE(y[1], -0.2689414214, 1e-7, 0);
    LM_CHECK(y[2] == 0, "silu(0)");
    fd_one(SILU, "silu");
}

static void t_gelu(void)
{
    KT_COVER(gelu_fwd);
    KT_COVER(gelu_bwd);
    float x[3] = {1, -1, 2}, y[3];
    KT_CALL(gelu_fwd, y, x, 3);
    /* torch.nn.functional.gelu(torch.tensor([1., -1., 2.])) */
    LM_CHECK_CLOSE(y[0], 0.8413447, 1e-6, 0);
    LM_CHECK_CLOSE(y[1], -0.1586553, 1e-6, 0);
    LM_CHECK_CLOSE(y[2], 1.9544997, 1e-6, 0);
    fd_one(GELU, "gelu");
}

static void t_swiglu(void)
{
    KT_COVER(swiglu_fwd);
    KT_COVER(swiglu_bwd);
    float g[2] = {1, -1}, u[2] = {2, 3}, y[2];
    KT_CALL(swiglu_fwd, y, g, u, 2);
    LM_CHECK_CLOSE(y[0], 2 * 0.7310585786, 1e-6, 0);
    LM_CHECK_CLOSE(y[1], 3 * -0.2689414214, 1e-6, 0);
    fd_one(SWIGLU_G, "swiglu");
}

typedef struct {
    float *x, *u, *y, *dx, *du, *dy;
    int64_t n;
} tctx;

static void thr_run(void *p)
{
    tctx *c = p;
    lm_backend *be = kt_be();
    memset(c->dx, 0, (size_t)c->n * 4);
    memset(c->du, 0, (size_t)c->n * 4);
    be->swiglu_fwd(be, c->y, c->x, c->u, c->n);
    be->gelu_fwd(be, c->y, c->y, c->n);
    be->silu_bwd(be, c->dx, c->dy, c->x, c->n);
    be->gelu_bwd(be, c->dx, c->dy, c->x, c->n);
    be->swiglu_bwd(be, c->dx, c->du, c->dy, c->x, c->u, c->n);
    be->leaky_relu_bwd(be, c->du, c->dy, c->x, 0.01f, c->n);
}

static void t_threads(void)
{
    KT_COVER(silu_bwd);
    const int64_t n = 200003;
    KT_PARALLEL(n); /* act.c: PAR, "if (n >= LM_CPU_PAR_MIN)" */
    tctx c = {kt_rand(n, -4, 4, 1), kt_rand(n, -4, 4, 2), kt_alloc(n), kt_alloc(n), kt_alloc(n),
              kt_rand(n, -1, 1, 3), n};
    kt_same_bits("act y", thr_run, &c, c.y, (size_t)n * 4);
    kt_same_bits("act dx", thr_run, &c, c.dx, (size_t)n * 4);
    kt_same_bits("act du", thr_run, &c, c.du, (size_t)n * 4);
    kt_free(c.x), kt_free(c.u), kt_free(c.y), kt_free(c.dx), kt_free(c.du), kt_free(c.dy);
}

/* the ops that thr_run leaves out, each into its own slice of out [4n] */
typedef struct {
    float *x, *dy, *out;
    int64_t n;
} t2ctx;

static void thr_run2(void *p)
{
    t2ctx *c = p;
    const int64_t n = c->n;
    memset(c->out + n, 0, (size_t)n * 4); /* relu_bwd accumulates */
    KT_CALL(relu_fwd, c->out, c->x, n);
    KT_CALL(relu_bwd, c->out + n, c->dy, c->x, n);
    KT_CALL(leaky_relu_fwd, c->out + 2 * n, c->x, 0.01f, n);
    KT_CALL(silu_fwd, c->out + 3 * n, c->x, n);
}

static void t_threads_rest(void)
{
    KT_COVER(relu_fwd);
    KT_COVER(relu_bwd);
    KT_COVER(leaky_relu_fwd);
    KT_COVER(silu_fwd);
    const int64_t n = 32771; /* odd: the static split leaves a remainder */
    KT_PARALLEL(n);
    t2ctx c = {kt_rand(n, -4, 4, 1), kt_rand(n, -1, 1, 3), kt_alloc(4 * n), n};
    kt_same_bits("relu, relu_bwd, leaky_relu, silu", thr_run2, &c, c.out, (size_t)(4 * n) * 4);
    kt_free(c.x), kt_free(c.dy), kt_free(c.out);
}

static const lm_test_case cases[] = {
    {"relu", t_relu},
    {"leaky_relu", t_leaky},
    {"silu", t_silu},
    {"gelu", t_gelu},
    {"swiglu", t_swiglu},
    {"act threads 1, 2, 3", t_threads},
    {"relu fwd and bwd, leaky_relu and silu fwd threads 1, 2, 3", t_threads_rest},
    {0},
};

int main(int argc, char **argv) { return lm_test_run(argc, argv, cases); }
