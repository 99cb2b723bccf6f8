/* test_gemm.c — linear layers (F32 and BF16 weights) and the batched GEMM: values against a
 * double reference, finite-difference gradients, odd sizes, reduced real shapes, both forward
 * paths (the AVX2 micro-tiles and OpenBLAS, LM_GEMM_BLAS=1), and the same bits with 1 and 2
 * threads. */
#include "kt.h"

static double ref_y(const float *x, const float *w, const float *b, int64_t K, int64_t m,
                    int64_t n)
{
    double s = b ? b[n] : 0;
    for (int64_t k = 0; k < K; k++)
        s += (double)x[m * K + k] * w[n * K + k];
    return s;
}

static void check_fwd(int64_t M, int64_t N, int64_t K, int bias, int accumulate)
{
    KT_COVER(gemm_fwd);
    float *x = kt_rand(M * K, -1, 1, 1), *w = kt_rand(N * K, -1, 1, 2), *b = kt_rand(N, -1, 1, 3);
    float *y = kt_rand(M * N, -1, 1, 4), *y0 = kt_copy(y, M * N);
    lm_gemm_args a = {M, N, K, LM_F32, accumulate};
    KT_CALL(gemm_fwd, y, x, w, bias ? b : NULL, &a);
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double want = ref_y(x, w, bias ? b : NULL, K, m, n) + (accumulate ? y0[m * N + n] : 0);
            LM_CHECK_CLOSE(y[m * N + n], want, 1e-5 * (double)(K + 1), 1e-5);
        }
    kt_free(x), kt_free(w), kt_free(b), kt_free(y), kt_free(y0);
}

static void t_fwd_odd(void)
{
    check_fwd(7, 13, 5, 1, 0);
    check_fwd(1, 1, 1, 1, 0);
    check_fwd(3, 11, 1, 0, 0);
    check_fwd(5, 3, 17, 1, 1);
    check_fwd(2, 2, 0, 1, 0); /* K = 0: y = b */
}

/* sizes that are not multiples of the AVX2 path's micro-tile (6 rows of x, 16 of W, 8 along
 * K) nor of its block (256 along K), several tiles per call, bias and accumulation */
static void t_fwd_edges(void)
{
    check_fwd(13, 37, 300, 1, 1);
    check_fwd(6, 16, 8, 0, 0);
    check_fwd(5, 17, 9, 0, 1);
    check_fwd(181, 200, 520, 1, 0);
    check_fwd(1, 600, 257, 1, 1);
    check_fwd(7, 40, 600, 0, 0);
}

/* the same cases through OpenBLAS, which the AVX2 path otherwise takes at these sizes */
static void t_fwd_blas_path(void)
{
    setenv("LM_GEMM_BLAS", "1", 1);
    t_fwd_odd();
    t_fwd_edges();
    unsetenv("LM_GEMM_BLAS");
}

static void t_fwd_adapter_shape(void)
{
    /* Adapter0a at reduced scale: L = 180 tokens, 64 -> 512 */
    check_fwd(180, 512, 64, 1, 0);
}

static void t_fwd_bf16(void)
{
    KT_COVER(gemm_fwd);
    const int64_t M = 3, N = 600, K = 17; /* N > one widening panel */
    float *x = kt_rand(M * K, -1, 1, 1), *wf = kt_rand(N * K, -1, 1, 2), *b = kt_rand(N, -1, 1, 3);
    uint16_t *wb = lm_backend_alloc(kt_be(), (size_t)(N * K) * 2);
    KT_CALL(cast, wb, LM_BF16, wf, LM_F32, N * K);
    KT_CALL(cast, wf, LM_F32, wb, LM_BF16, N * K); /* wf := widened bf16 */
    float *y1 = kt_alloc(M * N), *y2 = kt_alloc(M * N);
    lm_gemm_args af = {M, N, K, LM_F32, 0}, ab = {M, N, K, LM_BF16, 0};
    for (int blas = 0; blas < 2; blas++) {
        if (blas)
            setenv("LM_GEMM_BLAS", "1", 1);
        KT_CALL(gemm_fwd, y1, x, wf, b, &af);
        KT_CALL(gemm_fwd, y2, x, wb, b, &ab);
        for (int64_t i = 0; i < M * N; i++)
            LM_CHECK_CLOSE(y2[i], ref_y(x, wf, b, K, i / N, i % N), 2e-5, 1e-5);
        LM_CHECK(kt_max_abs_diff(y1, y2, M * N) <= 1e-5, "bf16 and widened f32 paths differ");
    }
    unsetenv("LM_GEMM_BLAS");
    /* dW of a BF16 (frozen) weight is refused */
    lm_backend *be = kt_be();
    float *dw = kt_alloc(N * K);
    LM_CHECK(be->gemm_bwd(be, NULL, dw, NULL, y1, x, wb, &ab) < 0, "dW of BF16 accepted");
    lm_gemm_args bad = {M, N, K, LM_F16, 0};
    LM_CHECK(be->gemm_fwd(be, y1, x, wb, b, &bad) < 0, "F16 weight accepted");
    kt_free(x), kt_free(wf), kt_free(b), kt_free(wb), kt_free(y1), kt_free(y2), kt_free(dw);
}

typedef struct {
    float *y, *x, *w, *b, *r;
    lm_gemm_args a;
} gctx;

static double g_loss(void *p)
{
    gctx *c = p;
    lm_backend *be = kt_be();
    be->gemm_fwd(be, c->y, c->x, c->w, c->b, &c->a);
    return kt_dot(c->y, c->r, c->a.M * c->a.N);
}

static void t_bwd_fd(void)
{
    KT_COVER(gemm_fwd); /* the loss runs the forward: one check of the pair */
    KT_COVER(gemm_bwd);
    const int64_t M = 5, N = 7, K = 3;
    gctx c = {kt_alloc(M * N), kt_rand(M * K, -1, 1, 1), kt_rand(N * K, -1, 1, 2),
              kt_rand(N, -1, 1, 3), kt_rand(M * N, -1, 1, 4), {M, N, K, LM_F32, 0}};
    float *dx = kt_alloc(M * K), *dw = kt_alloc(N * K), *db = kt_alloc(N);
    KT_CALL(gemm_bwd, dx, dw, db, c.r, c.x, c.w, &c.a);
    kt_gradcheck("gemm dx", c.x, M * K, dx, g_loss, &c, 1e-2, 1e-3);
    kt_gradcheck("gemm dw", c.w, N * K, dw, g_loss, &c, 1e-2, 1e-3);
    kt_gradcheck("gemm db", c.b, N, db, g_loss, &c, 1e-2, 1e-3);
    /* accumulation: a second call adds the same again */
    float *dx2 = kt_copy(dx, M * K);
    KT_CALL(gemm_bwd, dx2, NULL, NULL, c.r, c.x, c.w, &c.a);
    for (int64_t i = 0; i < M * K; i++)
        LM_CHECK_CLOSE(dx2[i], 2.0 * dx[i], 1e-6, 1e-6);
    kt_free(c.y), kt_free(c.x), kt_free(c.w), kt_free(c.b), kt_free(c.r);
    kt_free(dx), kt_free(dw), kt_free(db), kt_free(dx2);
}

static void t_bwd_bf16_dx(void)
{
    KT_COVER(gemm_bwd);
    const int64_t M = 4, N = 520, K = 3;
    float *wf = kt_rand(N * K, -1, 1, 2), *dy = kt_rand(M * N, -1, 1, 4), *x = kt_rand(M * K, -1, 1, 1);
    uint16_t *wb = lm_backend_alloc(kt_be(), (size_t)(N * K) * 2);
    KT_CALL(cast, wb, LM_BF16, wf, LM_F32, N * K);
    KT_CALL(cast, wf, LM_F32, wb, LM_BF16, N * K);
    float *d1 = kt_alloc(M * K), *d2 = kt_alloc(M * K);
    lm_gemm_args af = {M, N, K, LM_F32, 0}, ab = {M, N, K, LM_BF16, 0};
    KT_CALL(gemm_bwd, d1, NULL, NULL, dy, x, wf, &af);
    KT_CALL(gemm_bwd, d2, NULL, NULL, dy, x, wb, &ab);
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < K; k++) {
            double s = 0;
            for (int64_t n = 0; n < N; n++)
                s += (double)dy[m * N + n] * wf[n * K + k];
            LM_CHECK_CLOSE(d2[m * K + k], s, 1e-4, 1e-5);
        }
    LM_CHECK(kt_max_abs_diff(d1, d2, M * K) <= 1e-4, "bf16 dx differs from f32 dx");
    kt_free(wf), kt_free(dy), kt_free(x), kt_free(wb), kt_free(d1), kt_free(d2);
}

/* ---- batched ---- */
static double bat_ref(const float *A, const float *B, const lm_gemm_batched_args *a, int64_t i,
                      int64_t m, int64_t n)
{
    double s = 0;
    for (int64_t k = 0; k < a->K; k++) {
        double av = a->trans_a ? A[i * a->stride_a + k * a->lda + m] : A[i * a->stride_a + m * a->lda + k];
        double bv = a->trans_b ? B[i * a->stride_b + n * a->ldb + k] : B[i * a->stride_b + k * a->ldb + n];
        s += av * bv;
    }
    return s;
}

static void t_batched_values(void)
{
    KT_COVER(gemm_batched);
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            const int64_t bt = 3, M = 5, N = 7, K = 4;
            lm_gemm_batched_args a = {bt, M, N, K, ta, tb, 0.5f, 0.25f,
                                      (ta ? M : K) + 2, (tb ? K : N) + 1, N + 3, 0, 0, 0};
            a.stride_a = (ta ? K : M) * a.lda + 1;
            a.stride_b = (tb ? N : K) * a.ldb;
            a.stride_c = M * a.ldc + 5;
            float *A = kt_rand(bt * a.stride_a, -1, 1, 1), *B = kt_rand(bt * a.stride_b, -1, 1, 2);
            float *C = kt_rand(bt * a.stride_c, -1, 1, 3), *C0 = kt_copy(C, bt * a.stride_c);
            KT_CALL(gemm_batched, C, A, B, &a);
            for (int64_t i = 0; i < bt; i++)
                for (int64_t m = 0; m < M; m++)
                    for (int64_t n = 0; n < N; n++) {
                        int64_t o = i * a.stride_c + m * a.ldc + n;
                        LM_CHECK_CLOSE(C[o], 0.5 * bat_ref(A, B, &a, i, m, n) + 0.25 * C0[o], 1e-5,
                                       1e-5);
                    }
            /* padding between rows is untouched */
            LM_CHECK(C[a.ldc - 1] == C0[a.ldc - 1], "ldc padding written");
            kt_free(A), kt_free(B), kt_free(C), kt_free(C0);
        }
}

typedef struct {
    float *A, *B, *C, *r;
    lm_gemm_batched_args a;
} bctx;

static double b_loss(void *p)
{
    bctx *c = p;
    lm_backend *be = kt_be();
    be->gemm_batched(be, c->C, c->A, c->B, &c->a);
    return kt_dot(c->C, c->r, c->a.batch * c->a.stride_c);
}

static void t_batched_adjoint_fd(void)
{
    KT_COVER(gemm_batched);
    /* C = A·Bᵀ (the attention score shape); dA = dC·B and dB = dCᵀ·A are batched GEMMs too */
    const int64_t bt = 2, M = 3, N = 5, K = 4;
    bctx c = {kt_rand(bt * M * K, -1, 1, 1), kt_rand(bt * N * K, -1, 1, 2), kt_alloc(bt * M * N),
              kt_rand(bt * M * N, -1, 1, 3),
              {bt, M, N, K, 0, 1, 1.0f, 0.0f, K, K, N, M * K, N * K, M * N}};
    float *dA = kt_alloc(bt * M * K), *dB = kt_alloc(bt * N * K);
    lm_gemm_batched_args da = {bt, M, K, N, 0, 0, 1.0f, 0.0f, N, K, K, M * N, N * K, M * K};
    lm_gemm_batched_args db = {bt, N, K, M, 1, 0, 1.0f, 0.0f, N, K, K, M * N, M * K, N * K};
    KT_CALL(gemm_batched, dA, c.r, c.B, &da);
    KT_CALL(gemm_batched, dB, c.r, c.A, &db);
    kt_gradcheck("batched dA", c.A, bt * M * K, dA, b_loss, &c, 1e-2, 1e-3);
    kt_gradcheck("batched dB", c.B, bt * N * K, dB, b_loss, &c, 1e-2, 1e-3);
    kt_free(c.A), kt_free(c.B), kt_free(c.C), kt_free(c.r), kt_free(dA), kt_free(dB);
}

typedef struct {
    float *y, *x, *w, *b, *dx, *dw, *db, *dy;
    const void *wq; /* w, or its BF16 copy (then no dw: the weight is frozen) */
    lm_gemm_args a;
} tctx;

static void thr_run(void *p)
{
    tctx *c = p;
    KT_CALL(gemm_fwd, c->y, c->x, c->wq, c->b, &c->a);
    memset(c->dx, 0, (size_t)(c->a.M * c->a.K) * 4);
    memset(c->dw, 0, (size_t)(c->a.N * c->a.K) * 4);
    memset(c->db, 0, (size_t)c->a.N * 4);
    KT_CALL(gemm_bwd, c->dx, c->a.wdtype == LM_F32 ? c->dw : NULL, c->db, c->dy, c->x, c->wq,
            &c->a);
}

/* forward and backward: 180 tokens (dx = dy·W one untiled sgemm), 300 (dx in row tiles of
 * lm_cpu_sgemm: more than 256 rows and 2^22 multiply-adds), and 300 with a BF16 weight (dx
 * through panels widened per tile) */
static void t_threads(void)
{
    KT_COVER(gemm_fwd);
    KT_COVER(gemm_bwd);
    static const struct {
        int64_t M;
        int bf16;
    } cases_[] = {{180, 0}, {300, 0}, {300, 1}};
    const int64_t N = 384, K = 256;
    for (int i = 0; i < 3; i++) {
        const int64_t M = cases_[i].M;
        tctx c = {kt_alloc(M * N), kt_rand(M * K, -1, 1, 1), kt_rand(N * K, -1, 1, 2),
                  kt_rand(N, -1, 1, 3), kt_alloc(M * K), kt_alloc(N * K), kt_alloc(N),
                  kt_rand(M * N, -1, 1, 4), NULL, {M, N, K, cases_[i].bf16 ? LM_BF16 : LM_F32, 0}};
        uint16_t *wb = lm_backend_alloc(kt_be(), (size_t)(N * K) * 2);
        KT_CALL(cast, wb, LM_BF16, c.w, LM_F32, N * K);
        c.wq = cases_[i].bf16 ? (const void *)wb : (const void *)c.w;
        KT_PARALLEL(M * N);
        const char *wt = cases_[i].bf16 ? ", BF16" : "";
        char what[64];
        snprintf(what, sizeof what, "gemm y (M %lld%s)", (long long)M, wt);
        kt_same_bits(what, thr_run, &c, c.y, (size_t)(M * N) * 4);
        snprintf(what, sizeof what, "gemm dx (M %lld%s)", (long long)M, wt);
        kt_same_bits(what, thr_run, &c, c.dx, (size_t)(M * K) * 4);
        if (!cases_[i].bf16)
            kt_same_bits("gemm dw", thr_run, &c, c.dw, (size_t)(N * K) * 4);
        kt_same_bits("gemm db", thr_run, &c, c.db, (size_t)N * 4);
        kt_free(c.y), kt_free(c.x), kt_free(c.w), kt_free(c.b), kt_free(c.dx), kt_free(c.dw);
        kt_free(c.db), kt_free(c.dy), kt_free(wb);
    }
}

typedef struct {
    float *y, *x, *b;
    const void *w;
    lm_gemm_args a;
} fctx;

static void fwd_run(void *p)
{
    fctx *c = p;
    lm_backend *be = kt_be();
    be->gemm_fwd(be, c->y, c->x, c->w, c->b, &c->a);
}

/* the forward alone, F32 and BF16 weights, on both paths: many tiles, K past one block */
static void t_threads_fwd(void)
{
    KT_COVER(gemm_fwd);
    static const int64_t shapes[3][3] = {{180, 600, 600}, {520, 1100, 64}, {7, 1000, 700}};
    for (int s = 0; s < 3; s++)
        for (int bf = 0; bf < 2; bf++) {
            const int64_t M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
            float *wf = kt_rand(N * K, -1, 1, 2);
            uint16_t *wb = lm_backend_alloc(kt_be(), (size_t)(N * K) * 2);
            KT_CALL(cast, wb, LM_BF16, wf, LM_F32, N * K);
            fctx c = {kt_alloc(M * N), kt_rand(M * K, -1, 1, 1), kt_rand(N, -1, 1, 3),
                      bf ? (const void *)wb : (const void *)wf,
                      {M, N, K, bf ? LM_BF16 : LM_F32, 0}};
            kt_same_bits(bf ? "gemm_fwd y (BF16 W)" : "gemm_fwd y", fwd_run, &c, c.y,
                             (size_t)(M * N) * 4);
            kt_free(c.y), kt_free(c.x), kt_free(c.b), kt_free(wf), kt_free(wb);
        }
}

typedef struct {
    float *c, *c0, *a_, *b;
    lm_gemm_batched_args a;
    int64_t nc;
} btctx;

static void batched_run(void *p)
{
    btctx *c = p;
    memcpy(c->c, c->c0, (size_t)c->nc * 4); /* beta != 0: the same C every run */
    KT_CALL(gemm_batched, c->c, c->a_, c->b, &c->a);
}

/* gemm_batched: each item is one lm_cpu_sgemm, which cuts C into fixed tiles (256 x 512, from
 * 2^22 multiply-adds: kernels/cpu/backend.c) that the threads share; 300 x 520 gives four, in
 * each of op(A), op(B) = A or Aᵀ, B or Bᵀ, with alpha and beta */
static void t_threads_batched(void)
{
    KT_COVER(gemm_batched);
    const int64_t batch = 2, M = 300, N = 520, K = 41;
    if (M * N * K <= (1 << 22) || (M <= 256 && N <= 512))
        lm_test_fail(__FILE__, __LINE__, "gemm_batched %lldx%lldx%lld: one tile, serial",
                     (long long)M, (long long)N, (long long)K);
    for (int t = 0; t < 3; t++) {
        const int ta = t == 1, tb = t == 2;
        const int64_t lda = ta ? M : K, ldb = tb ? K : N;
        btctx c = {kt_alloc(batch * M * N), kt_rand(batch * M * N, -1, 1, 5),
                  kt_rand(batch * M * K, -1, 1, 6), kt_rand(batch * K * N, -1, 1, 7),
                  {batch, M, N, K, ta, tb, 0.7f, 0.5f, lda, ldb, N, M * K, K * N, M * N},
                  batch * M * N};
        char what[64];
        snprintf(what, sizeof what, "gemm_batched C (trans_a %d, trans_b %d)", ta, tb);
        kt_same_bits(what, batched_run, &c, c.c, (size_t)c.nc * 4);
        kt_free(c.c), kt_free(c.c0), kt_free(c.a_), kt_free(c.b);
    }
}

static const lm_test_case cases[] = {
    {"gemm_fwd odd sizes", t_fwd_odd},
    {"gemm_fwd edge sizes", t_fwd_edges},
    {"gemm_fwd OpenBLAS path", t_fwd_blas_path},
    {"gemm_fwd adapter shape", t_fwd_adapter_shape},
    {"gemm_fwd bf16 weights", t_fwd_bf16},
    {"gemm_bwd finite differences", t_bwd_fd},
    {"gemm_bwd bf16 dx", t_bwd_bf16_dx},
    {"gemm_batched values", t_batched_values},
    {"gemm_batched adjoint fd", t_batched_adjoint_fd},
    {"gemm threads 1, 2, 3", t_threads},
    {"gemm_fwd threads 1, 2, 3", t_threads_fwd},
    {"gemm_batched threads 1, 2, 3", t_threads_batched},
    {0},
};

int main(int argc, char **argv) { return lm_test_run(argc, argv, cases); }
