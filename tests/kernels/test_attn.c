/* test_attn.c — RoPE (HF rotate_half) and GQA attention: values against a direct double
 * reference (causal and not), RoPE identities, finite-difference gradients of q, k, v and of
 * the rotation, bit identity for 1, 2 and 3 threads (serial and parallel softmax, single and
 * tiled sgemm). */
#include "kt.h"

static void t_rope_values(void)
{
    KT_COVER(rope_fwd);
    const int64_t L = 7;
    const int nh = 3, hd = 6;
    lm_rope_args a = {L, nh, hd, 10000.0f, 0};
    float *x = kt_rand(L * nh * hd, -1, 1, 1), *y = kt_alloc(L * nh * hd);
    KT_CALL(rope_fwd, y, x, &a);
    for (int64_t l = 0; l < L; l++)
        for (int h = 0; h < nh; h++)
            for (int i = 0; i < hd / 2; i++) {
                const float *xr = x + (l * nh + h) * hd;
                double ang = (double)l * pow(10000.0, -2.0 * i / hd);
                double y1 = xr[i] * cos(ang) - xr[i + hd / 2] * sin(ang);
                double y2 = xr[i + hd / 2] * cos(ang) + xr[i] * sin(ang);
                LM_CHECK_CLOSE(y[(l * nh + h) * hd + i], y1, 2e-6, 1e-5);
                LM_CHECK_CLOSE(y[(l * nh + h) * hd + i + hd / 2], y2, 2e-6, 1e-5);
            }
    /* position 0 is the identity; the rotation keeps norms; in place equals out of place */
    LM_CHECK(memcmp(x, y, (size_t)nh * hd * 4) == 0, "position 0 not identity");
    float *z = kt_copy(x, L * nh * hd);
    KT_CALL(rope_fwd, z, z, &a);
    LM_CHECK(memcmp(z, y, (size_t)(L * nh * hd) * 4) == 0, "in place differs");
    /* Llama-3 theta, L = 180: compare at the last position in double */
    lm_rope_args b = {180, 1, 128, 500000.0f, 0};
    float *xb = kt_rand(180 * 128, -1, 1, 2), *yb = kt_alloc(180 * 128);
    KT_CALL(rope_fwd, yb, xb, &b);
    double n0 = 0, n1 = 0;
    for (int i = 0; i < 128; i++) {
        n0 += (double)xb[179 * 128 + i] * xb[179 * 128 + i];
        n1 += (double)yb[179 * 128 + i] * yb[179 * 128 + i];
    }
    LM_CHECK_CLOSE(n1, n0, 1e-5, 1e-5);
    kt_free(x), kt_free(y), kt_free(z), kt_free(xb), kt_free(yb);
}

typedef struct {
    float *x, *y, *r;
    lm_rope_args a;
    int64_t n;
} rctx;

static double r_loss(void *p)
{
    rctx *c = p;
    KT_CALL(rope_fwd, c->y, c->x, &c->a);
    return kt_dot(c->y, c->r, c->n);
}

static void t_rope_fd(void)
{
    KT_COVER(rope_fwd); /* the loss runs the forward: one check of the pair */
    KT_COVER(rope_bwd);
    rctx c = {kt_rand(5 * 2 * 8, -1, 1, 1), kt_alloc(80), kt_rand(80, -1, 1, 2),
              {5, 2, 8, 500000.0f, 3}, 80};
    float *dx = kt_alloc(80);
    KT_CALL(rope_bwd, dx, c.r, &c.a);
    kt_gradcheck("rope", c.x, 80, dx, r_loss, &c, 1e-2, 1e-3);
    kt_free(c.x), kt_free(c.y), kt_free(c.r), kt_free(dx);
}

static void ref_attn(double *o, const float *q, const float *k, const float *v,
                     const lm_attn_args *a)
{
    const int64_t L = a->L;
    const int hd = a->head_dim, rep = a->n_q / a->n_kv;
    double *s = malloc((size_t)L * sizeof *s);
    for (int h = 0; h < a->n_q; h++) {
        int g = h / rep;
        for (int64_t i = 0; i < L; i++) {
            double mx = -INFINITY, sum = 0;
            for (int64_t j = 0; j < L; j++) {
                double d = 0;
                for (int e = 0; e < hd; e++)
                    d += (double)q[i * a->n_q * hd + h * hd + e] * k[j * a->n_kv * hd + g * hd + e];
                s[j] = (a->causal && j > i) ? -INFINITY : d / sqrt((double)hd);
                mx = s[j] > mx ? s[j] : mx;
            }
            for (int64_t j = 0; j < L; j++)
                sum += (s[j] = exp(s[j] - mx));
            for (int e = 0; e < hd; e++) {
                double acc = 0;
                for (int64_t j = 0; j < L; j++)
                    acc += s[j] / sum * v[j * a->n_kv * hd + g * hd + e];
                o[i * a->n_q * hd + h * hd + e] = acc;
            }
        }
    }
    free(s);
}

static void t_attn_values(void)
{
    KT_COVER(attention_fwd);
    for (int causal = 0; causal < 2; causal++) {
        lm_attn_args a = {7, 4, 2, 5, causal};
        int64_t nq = a.L * a.n_q * a.head_dim, nk = a.L * a.n_kv * a.head_dim;
        float *q = kt_rand(nq, -1, 1, 1), *k = kt_rand(nk, -1, 1, 2), *v = kt_rand(nk, -1, 1, 3);
        float *o = kt_alloc(nq), *p = kt_alloc(a.n_q * a.L * a.L);
        double *want = malloc((size_t)nq * sizeof *want);
        KT_CALL(attention_fwd, o, p, q, k, v, &a);
        ref_attn(want, q, k, v, &a);
        for (int64_t i = 0; i < nq; i++)
            LM_CHECK_CLOSE(o[i], want[i], 1e-6, 1e-5);
        for (int64_t r = 0; r < a.n_q * a.L; r++) {
            double s = 0;
            for (int64_t j = 0; j < a.L; j++)
                s += p[r * a.L + j];
            LM_CHECK_CLOSE(s, 1.0, 1e-6, 0);
        }
        if (causal)
            LM_CHECK(p[1] == 0 && p[a.L * a.L - 2] != 0, "causal mask");
        kt_free(q), kt_free(k), kt_free(v), kt_free(o), kt_free(p);
        free(want);
    }
    /* L = 1: the output is v of the group */
    lm_attn_args b = {1, 2, 1, 3, 0};
    float q1[6] = {1, 2, 3, 4, 5, 6}, k1[3] = {1, 1, 1}, v1[3] = {7, 8, 9}, o1[6], p1[2];
    KT_CALL(attention_fwd, o1, p1, q1, k1, v1, &b);
    LM_CHECK(o1[0] == 7 && o1[4] == 8 && p1[0] == 1, "L = 1");
}

typedef struct {
    float *q, *k, *v, *o, *p, *r;
    lm_attn_args a;
    int64_t nq;
} actx;

static double at_loss(void *pp)
{
    actx *c = pp;
    KT_CALL(attention_fwd, c->o, c->p, c->q, c->k, c->v, &c->a);
    return kt_dot(c->o, c->r, c->nq);
}

static void t_attn_fd(void)
{
    KT_COVER(attention_fwd); /* the loss runs the forward: one check of the pair */
    KT_COVER(attention_bwd);
    for (int causal = 0; causal < 2; causal++) {
        lm_attn_args a = {5, 6, 2, 3, causal};
        int64_t nq = a.L * a.n_q * a.head_dim, nk = a.L * a.n_kv * a.head_dim;
        actx c = {kt_rand(nq, -1, 1, 1), kt_rand(nk, -1, 1, 2), kt_rand(nk, -1, 1, 3),
                  kt_alloc(nq), kt_alloc(a.n_q * a.L * a.L), kt_rand(nq, -1, 1, 4), a, nq};
        float *dq = kt_alloc(nq), *dk = kt_alloc(nk), *dv = kt_alloc(nk);
        at_loss(&c);
        KT_CALL(attention_bwd, dq, dk, dv, c.r, c.q, c.k, c.v, c.p, &c.a);
        kt_gradcheck(causal ? "attention dq causal" : "attention dq", c.q, nq, dq, at_loss, &c,
                     1e-3, 2e-3);
        kt_gradcheck(causal ? "attention dk causal" : "attention dk", c.k, nk, dk, at_loss, &c,
                     1e-3, 2e-3);
        kt_gradcheck(causal ? "attention dv causal" : "attention dv", c.v, nk, dv, at_loss, &c,
                     1e-3, 2e-3);
        kt_free(c.q), kt_free(c.k), kt_free(c.v), kt_free(c.o), kt_free(c.p), kt_free(c.r);
        kt_free(dq), kt_free(dk), kt_free(dv);
    }
}

typedef struct {
    float *q, *k, *v, *o, *p, *dq, *dk, *dv, *dout;
    lm_attn_args a;
    int64_t nq, nk;
} tctx;

static void thr_run(void *pp)
{
    tctx *c = pp;
    lm_rope_args r = {c->a.L, c->a.n_q, c->a.head_dim, 500000.0f, 0};
    memset(c->dq, 0, (size_t)c->nq * 4);
    memset(c->dk, 0, (size_t)c->nk * 4);
    memset(c->dv, 0, (size_t)c->nk * 4);
    KT_CALL(attention_fwd, c->o, c->p, c->q, c->k, c->v, &c->a);
    KT_CALL(rope_fwd, c->o, c->o, &r);
    KT_CALL(attention_bwd, c->dq, c->dk, c->dv, c->dout, c->q, c->k, c->v, c->p, &c->a);
    KT_CALL(rope_bwd, c->dq, c->dout, &r);
}

/* one buffer holds o, dq, dk, dv and p (in that order), so one kt_same_bits checks them all */
static void attn_threads(lm_attn_args a)
{
    tctx c = {0};
    c.a = a;
    c.nq = a.L * a.n_q * a.head_dim, c.nk = a.L * a.n_kv * a.head_dim;
    int64_t np = a.n_q * a.L * a.L, nout = 2 * c.nq + 2 * c.nk + np;
    c.q = kt_rand(c.nq, -1, 1, 1), c.k = kt_rand(c.nk, -1, 1, 2), c.v = kt_rand(c.nk, -1, 1, 3);
    c.dout = kt_rand(c.nq, -1, 1, 4);
    c.o = kt_alloc(nout), c.dq = c.o + c.nq, c.dk = c.dq + c.nq, c.dv = c.dk + c.nk;
    c.p = c.dv + c.nk;
    kt_same_bits("attention o, dq, dk, dv, p", thr_run, &c, c.o, (size_t)nout * 4);
    kt_free(c.q), kt_free(c.k), kt_free(c.v), kt_free(c.o), kt_free(c.dout);
}

static void t_threads(void)
{
    KT_COVER(attention_fwd);
    attn_threads((lm_attn_args){180, 8, 2, 32, 0}); /* abdomen L: serial softmax (L² < min) */
}

static void t_threads_par_softmax(void)
{
    KT_COVER(attention_fwd);
    KT_COVER(attention_bwd);
    for (int causal = 0; causal < 2; causal++) {
        /* GQA, 2 q heads per kv head; L² is what the softmax row loops of attention_fwd and
         * attention_bwd test */
        lm_attn_args a = {193, 4, 2, 64, causal};
        KT_PARALLEL(a.L * a.L);
        attn_threads(a);
    }
}

static void t_threads_tiled(void)
{
    KT_COVER(attention_fwd);
    KT_COVER(attention_bwd);
    /* head_dim and GQA ratio of Llama-3-8B. Every sgemm here has M = L and M·N·K = L²·hd;
     * lm_cpu_sgemm (backend.c) makes a single OpenBLAS call when "(double)M * N * K <=
     * SMALL_GEMM || (M <= TILE_M && N <= TILE_N)", SMALL_GEMM = 1 << 22, TILE_M = 256; here it
     * cuts C into 2 row tiles computed in parallel */
    lm_attn_args a = {257, 4, 1, 128, 0};
    KT_PARALLEL(a.L * a.L);
    if (!((double)a.L * a.L * a.head_dim > (1 << 22) && a.L > 256))
        lm_test_fail(__FILE__, __LINE__, "L = %lld, head_dim %d: lm_cpu_sgemm would not tile",
                     (long long)a.L, a.head_dim);
    attn_threads(a);
}

static void t_bad(void)
{
    KT_COVER(attention_fwd);
    lm_backend *be = kt_be();
    float b[8] = {0};
    lm_attn_args a = {2, 3, 2, 1, 0}; /* 3 % 2 != 0 */
    LM_CHECK(be->attention_fwd(be, b, b, b, b, b, &a) < 0, "n_q %% n_kv != 0 accepted");
    lm_rope_args r = {1, 1, 3, 1e4f, 0};
    LM_CHECK(be->rope_fwd(be, b, b, &r) < 0, "odd head_dim accepted");
}

static const lm_test_case cases[] = {
    {"rope values", t_rope_values},
    {"rope_bwd fd", t_rope_fd},
    {"attention values gqa causal", t_attn_values},
    {"attention_bwd fd", t_attn_fd},
    {"attention threads 1, 2, 3, abdomen L = 180", t_threads},
    {"attention threads 1, 2, 3, parallel softmax, causal and not", t_threads_par_softmax},
    {"attention threads 1, 2, 3, tiled sgemm", t_threads_tiled},
    {"attention bad arguments", t_bad},
    {0},
};

int main(int argc, char **argv) { return lm_test_run(argc, argv, cases); }
