/* test_loss.c — one-hot, soft Dice with an ignore set and Grad_L2 (MODEL.md §9), and Adam:
 * values against direct formulas, finite-difference gradients, identical-map and size-1
 * cases, bit identity for 1, 2 and 3 threads. */
#include "kt.h"

static void t_onehot(void)
{
    KT_COVER(onehot);
    int32_t lab[6] = {0, 5, 24, 5, 7, 0};
    const int32_t vals[3] = {0, 5, 24};
    float y[18];
    lm_onehot_args a = {3, 6, vals};
    KT_CALL(onehot, y, lab, &a);
    const float want[18] = {1, 0, 0, 0, 0, 1, 0, 1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0};
    LM_CHECK(memcmp(y, want, sizeof want) == 0, "onehot layout [K,N]");
}

static double dice_ref(const float *p, const float *t, const lm_dice_args *a)
{
    double m = 0;
    int nk = 0;
    for (int k = 0; k < a->K; k++) {
        double top = 0, bot = 0;
        for (int64_t i = 0; i < a->N; i++) {
            top += 2.0 * t[k * a->N + i] * p[k * a->N + i];
            bot += (double)t[k * a->N + i] + p[k * a->N + i];
        }
        if (a->kept[k])
            m += top / (bot > 1e-5 ? bot : 1e-5), nk++;
    }
    return -m / nk;
}

static void t_dice_values(void)
{
    KT_COVER(dice_loss_fwd);
    const int K = 4;
    const int64_t N = 37;
    const uint8_t kept[4] = {0, 1, 1, 1};
    lm_dice_args a = {K, N, kept};
    float *p = kt_rand(K * N, 0, 1, 1), *t = kt_alloc(K * N), loss, dice[4];
    lm_rng r;
    lm_rng_init(&r, lm_test_seed(), 7);
    for (int64_t i = 0; i < N; i++)
        t[lm_rng_below(&r, 3) * N + i] = 1.0f; /* class 3 absent from the target */
    KT_CALL(dice_loss_fwd, &loss, dice, p, t, &a);
    LM_CHECK_CLOSE(loss, dice_ref(p, t, &a), 1e-7, 1e-6);
    /* identical one-hot maps: Dice 1 for every present class, loss −(present kept)/kept */
    KT_CALL(dice_loss_fwd, &loss, dice, t, t, &a);
    LM_CHECK(dice[1] == 1.0f && dice[2] == 1.0f && dice[3] == 0.0f, "identical maps");
    LM_CHECK_CLOSE(loss, -2.0 / 3.0, 1e-7, 0);
    lm_backend *be = kt_be();
    const uint8_t none[4] = {0, 0, 0, 0};
    lm_dice_args b = {K, N, none};
    LM_CHECK(be->dice_loss_fwd(be, &loss, NULL, p, t, &b) < 0, "all-ignored accepted");
    kt_free(p), kt_free(t);
}

typedef struct {
    int kind; /* 0 dice, 1 grad */
    float *p, *t, loss;
    lm_dice_args da;
    lm_vol_args va;
} lctx;

static double l_loss(void *pp)
{
    lctx *c = pp;
    if (c->kind == 0)
        KT_CALL(dice_loss_fwd, &c->loss, NULL, c->p, c->t, &c->da);
    else
        KT_CALL(grad_l2_fwd, &c->loss, c->p, &c->va);
    return c->loss;
}

static void t_dice_fd(void)
{
    KT_COVER(dice_loss_fwd); /* the loss runs the forward: one check of the pair */
    KT_COVER(dice_loss_bwd);
    const int K = 3;
    const int64_t N = 23;
    const uint8_t kept[3] = {1, 0, 1};
    lctx c = {0, kt_rand(K * N, 0, 1, 1), kt_alloc(K * N), 0, {K, N, kept}, {0}};
    for (int64_t i = 0; i < N; i++)
        c.t[(i % K) * N + i] = 1.0f;
    float *g = kt_alloc(K * N);
    KT_CALL(dice_loss_bwd, g, c.p, c.t, 1.0f, &c.da);
    /* the loss is a float scalar: use a larger step (it is smooth: a ratio of sums) */
    kt_gradcheck("dice", c.p, K * N, g, l_loss, &c, 3e-2, 2e-3);
    float *g2 = kt_alloc(K * N);
    KT_CALL(dice_loss_bwd, g2, c.p, c.t, 0.5f, &c.da);
    for (int64_t i = 0; i < K * N; i++)
        LM_CHECK_CLOSE(g2[i], 0.5 * g[i], 1e-9, 1e-6);
    LM_CHECK(g[N] == 0, "ignored class has a gradient");
    kt_free(c.p), kt_free(c.t), kt_free(g), kt_free(g2);
}

static void t_grad_values(void)
{
    KT_COVER(grad_l2_fwd);
    /* u(p) = (0.5·z, 0, 2·x): forward differences 0.5 along D, 2 along W, 0 elsewhere */
    const int C = 3, D = 4, H = 3, W = 5;
    const int64_t N = (int64_t)D * H * W;
    float *u = kt_alloc(C * N), loss;
    for (int z = 0; z < D; z++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                u[(z * H + y) * W + x] = 0.5f * z;
                u[2 * N + (z * H + y) * W + x] = 2.0f * x;
            }
    lm_vol_args a = {C, D, H, W};
    KT_CALL(grad_l2_fwd, &loss, u, &a);
    /* mean over 3 channels of (diff²): axis D: 0.25/3, axis H: 0, axis W: 4/3 */
    LM_CHECK_CLOSE(loss, (0.25 / 3 + 0 + 4.0 / 3) / 3, 1e-7, 1e-6);
    /* a size-1 axis contributes nothing (and no NaN) */
    lm_vol_args b = {C, 1, H * D, W};
    KT_CALL(grad_l2_fwd, &loss, u, &b);
    LM_CHECK(isfinite(loss), "size-1 axis gave %g", loss);
    kt_free(u);
}

static void t_grad_fd(void)
{
    KT_COVER(grad_l2_fwd); /* the loss runs the forward: one check of the pair */
    KT_COVER(grad_l2_bwd);
    const int C = 3, D = 3, H = 1, W = 5;
    lctx c = {1, kt_rand(C * D * H * W, -1, 1, 1), NULL, 0, {0}, {C, D, H, W}};
    float *g = kt_alloc(C * D * H * W);
    KT_CALL(grad_l2_bwd, g, c.p, 1.0f, &c.va);
    kt_gradcheck("grad_l2", c.p, C * D * H * W, g, l_loss, &c, 3e-2, 2e-3);
    kt_free(c.p), kt_free(g);
}

static void t_adam(void)
{
    KT_COVER(adam_step);
    const int64_t n = 9;
    float *p = kt_rand(n, -1, 1, 1), *m = kt_alloc(n), *v = kt_alloc(n), *g = kt_rand(n, -1, 1, 2);
    double pd[9], md[9] = {0}, vd[9] = {0};
    for (int i = 0; i < n; i++)
        pd[i] = p[i];
    lm_adam_args a = {1e-4f, 0.9f, 0.999f, 1e-8f, 0.0f, 1};
    float p0 = p[0];
    for (int step = 1; step <= 3; step++) {
        a.step = step;
        KT_CALL(adam_step, p, m, v, g, n, &a);
        for (int i = 0; i < n; i++) { /* torch.optim.Adam, in double */
            md[i] = 0.9 * md[i] + 0.1 * g[i];
            vd[i] = 0.999 * vd[i] + 0.001 * (double)g[i] * g[i];
            double den = sqrt(vd[i]) / sqrt(1 - pow(0.999, step)) + 1e-8;
            pd[i] -= 1e-4 / (1 - pow(0.9, step)) * md[i] / den;
        }
        if (step == 1) /* the first step moves every weight by lr·sign(g) */
            LM_CHECK_CLOSE(p[0] - p0, -1e-4 * (g[0] > 0 ? 1 : -1), 1e-9, 1e-3);
    }
    for (int i = 0; i < n; i++)
        LM_CHECK_CLOSE(p[i], pd[i], 1e-7, 1e-6);
    lm_backend *be = kt_be();
    a.step = 0;
    LM_CHECK(be->adam_step(be, p, m, v, g, n, &a) < 0, "step 0 accepted");
    kt_free(p), kt_free(m), kt_free(v), kt_free(g);
}

typedef struct {
    float *p, *t, *dp, *out, *m, *v;
    int32_t *lab;
    int64_t N;
} tctx;

static void thr_run(void *pp)
{
    tctx *c = pp;
    const int32_t vals[5] = {0, 1, 2, 3, 4};
    const uint8_t kept[5] = {0, 1, 1, 1, 1};
    lm_onehot_args oa = {5, c->N, vals};
    lm_dice_args da = {5, c->N, kept};
    lm_vol_args va = {3, 40, 48, 50};
    lm_adam_args aa = {1e-4f, 0.9f, 0.999f, 1e-8f, 0.0f, 2};
    memset(c->dp, 0, (size_t)(5 * c->N) * 4);
    KT_CALL(onehot, c->t, c->lab, &oa);
    KT_CALL(dice_loss_fwd, c->out, c->out + 1, c->p, c->t, &da);
    KT_CALL(dice_loss_bwd, c->dp, c->p, c->t, 1.0f, &da);
    KT_CALL(grad_l2_fwd, c->out + 6, c->p, &va);
    KT_CALL(grad_l2_bwd, c->dp, c->p, 0.1f, &va);
    /* Adam on a parameter copy of p with the gradient just computed (moments start at 0) */
    memcpy(c->m, c->p, (size_t)(5 * c->N) * 4);
    memset(c->v, 0, (size_t)(5 * c->N) * 4);
    memset(c->t, 0, (size_t)(5 * c->N) * 4);
    KT_CALL(adam_step, c->m, c->t, c->v, c->dp, 5 * c->N, &aa);
}

static void t_threads(void)
{
    KT_COVER(dice_loss_fwd);
    const int64_t N = 96000;
    tctx c = {kt_rand(5 * N, 0, 1, 1), kt_alloc(5 * N), kt_alloc(5 * N), kt_alloc(8),
              kt_alloc(5 * N), kt_alloc(5 * N), lm_backend_alloc(kt_be(), (size_t)N * 4), N};
    lm_rng r;
    lm_rng_init(&r, lm_test_seed(), 5);
    for (int64_t i = 0; i < N; i++)
        c.lab[i] = (int32_t)lm_rng_below(&r, 5);
    kt_same_bits("loss values", thr_run, &c, c.out, 7 * 4);
    kt_same_bits("loss gradient", thr_run, &c, c.dp, (size_t)(5 * N) * 4);
    kt_same_bits("adam", thr_run, &c, c.m, (size_t)(5 * N) * 4);
    kt_free(c.p), kt_free(c.t), kt_free(c.dp), kt_free(c.out), kt_free(c.m), kt_free(c.v);
    kt_free(c.lab);
}

static const lm_test_case cases[] = {
    {"onehot", t_onehot},
    {"dice_loss values and ignore set", t_dice_values},
    {"dice_loss_bwd fd", t_dice_fd},
    {"grad_l2 values", t_grad_values},
    {"grad_l2_bwd fd", t_grad_fd},
    {"adam_step vs torch formula", t_adam},
    {"loss threads 1, 2, 3", t_threads},
    {0},
};

int main(int argc, char **argv) { return lm_test_run(argc, argv, cases); }
