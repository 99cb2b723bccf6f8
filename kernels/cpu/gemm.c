/* gemm.c — linear layers (y = x·Wᵀ + b) and their gradients, and a strided batched GEMM, on the
 * CPU through OpenBLAS sgemm. BF16 weights are widened to f32 in fixed panels of rows, so a
 * frozen 14336×4096 weight never needs a full f32 copy.
 * The forward cuts y into its own fixed tiles (all of M, up to GEMM_FWD_M rows, by GEMM_PANEL
 * columns), each one single-threaded OpenBLAS call on one thread, so the bits depend on the
 * shape alone; a tile's panel of W is widened (BF16) by the thread that uses it, once, a
 * cache-sized block at a time.
 * Not here: attention (rope_attn.c uses sgemm directly), convolutions (conv3d.c).
 */
#include "cpu.h"

#include <cblas.h>
#include <string.h>

/* Rows of W widened per panel (fixed: part of the summation order of the BF16 backward), and
 * the columns of a forward tile. */
#define GEMM_PANEL 512
/* Rows of a forward tile: all of M up to this (OpenBLAS then packs each panel of W once). */
#define GEMM_FWD_M 2048
/* Columns (of K) of a BF16 weight panel widened at a time (part of the BF16 forward's
 * summation order: partial sums over these blocks are added in float). */
#define GEMM_BF16_K 512

static int gemm_check(const lm_gemm_args *a)
{
    LM_CPU_CHECK(a->M >= 0 && a->N >= 0 && a->K >= 0, "gemm: negative size [%lld,%lld,%lld]",
                 (long long)a->M, (long long)a->N, (long long)a->K);
    LM_CPU_CHECK(a->M <= INT32_MAX && a->N <= INT32_MAX && a->K <= INT32_MAX,
                 "gemm: size too large for BLAS");
    LM_CPU_CHECK(a->wdtype == LM_F32 || a->wdtype == LM_BF16,
                 "gemm: weight dtype must be F32 or BF16 (got %s)", lm_cpu_dtype_name(a->wdtype));
    return 0;
}

static void widen_panel(float *dst, const uint16_t *src, int64_t n)
{
#pragma omp parallel for simd schedule(static) if (n >= LM_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        dst[i] = lm_k_bf16_to_f32(src[i]);
}

int lm_cpu_gemm_fwd(lm_backend *be, float *y, const float *x, const void *w, const float *b,
                    const lm_gemm_args *a)
{
    (void)be;
    if (gemm_check(a) < 0)
        return -1;
    const int M = (int)a->M, N = (int)a->N, K = (int)a->K;
    float beta = a->accumulate ? 1.0f : 0.0f;
    if (M == 0 || N == 0)
        return 0;
    if (b) {
#pragma omp parallel for schedule(static) if ((int64_t)M * N >= LM_CPU_PAR_MIN)
        for (int m = 0; m < M; m++) {
            float *row = y + (int64_t)m * N;
            if (a->accumulate)
                for (int n = 0; n < N; n++)
                    row[n] += b[n];
            else
                memcpy(row, b, (size_t)N * sizeof *row);
        }
        beta = 1.0f;
    }
    if (K == 0) {
        if (beta == 0.0f)
            memset(y, 0, (size_t)M * N * sizeof *y);
        return 0;
    }
    /* tiles: tm row blocks of about equal height (at most GEMM_FWD_M) by tn column panels */
    const int tm = (M + GEMM_FWD_M - 1) / GEMM_FWD_M, mb0 = (M + tm - 1) / tm;
    const int tn = (N + GEMM_PANEL - 1) / GEMM_PANEL, bf16 = a->wdtype == LM_BF16;
    int failed = 0;
#pragma omp parallel if (tm * tn > 1 && (double)M * N * K >= 1 << 22)
    {
        float *panel = NULL;
        if (bf16 && !(panel = lm_cpu_scratch((size_t)GEMM_PANEL * GEMM_BF16_K * sizeof *panel))) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int t = 0; t < tm * tn; t++) {
            if (bf16 && !panel)
                continue;
            const int j = t / tm, i = t % tm; /* column panel j, row block i */
            const int n0 = j * GEMM_PANEL, nb = N - n0 < GEMM_PANEL ? N - n0 : GEMM_PANEL;
            const int m0 = i * mb0, mb = M - m0 < mb0 ? M - m0 : mb0;
            float *yt = y + (int64_t)m0 * N + n0;
            const float *xt = x + (int64_t)m0 * K;
            if (!bf16) {
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, mb, nb, K, 1.0f, xt, K,
                            (const float *)w + (int64_t)n0 * K, K, beta, yt, N);
                continue;
            }
            /* BF16: widen GEMM_BF16_K columns of the panel at a time, a block that stays in
             * the core's cache for OpenBLAS to pack, and accumulate over those blocks */
            for (int k0 = 0; k0 < K; k0 += GEMM_BF16_K) {
                const int kb = K - k0 < GEMM_BF16_K ? K - k0 : GEMM_BF16_K;
                for (int r = 0; r < nb; r++) {
                    const uint16_t *src = (const uint16_t *)w + (int64_t)(n0 + r) * K + k0;
                    float *dst = panel + (int64_t)r * kb;
#pragma omp simd
                    for (int e = 0; e < kb; e++)
                        dst[e] = lm_k_bf16_to_f32(src[e]);
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, mb, nb, kb, 1.0f, xt + k0,
                            K, panel, kb, k0 == 0 ? beta : 1.0f, yt, N);
            }
        }
        lm_cpu_scratch_free(panel);
    }
    return failed ? -1 : 0;
}

int lm_cpu_gemm_bwd(lm_backend *be, float *dx, float *dw, float *db, const float *dy,
                    const float *x, const void *w, const lm_gemm_args *a)
{
    (void)be;
    if (gemm_check(a) < 0)
        return -1;
    const int M = (int)a->M, N = (int)a->N, K = (int)a->K;
    LM_CPU_CHECK(!dw || a->wdtype == LM_F32, "gemm: dW wanted for a BF16 (frozen) weight");
    if (db) {
#pragma omp parallel for schedule(static) if ((int64_t)M * N >= LM_CPU_PAR_MIN)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int m = 0; m < M; m++)
                s += dy[(int64_t)m * N + n];
            db[n] += (float)s;
        }
    }
    if (M == 0 || N == 0 || K == 0)
        return 0;
    if (dw)
        lm_cpu_sgemm(1, 0, N, K, M, 1.0f, dy, N, x, K, 1.0f, dw,
                    K);
    if (!dx)
        return 0;
    if (a->wdtype == LM_F32) {
        lm_cpu_sgemm(0, 0, M, K, N, 1.0f, dy, N,
                    (const float *)w, K, 1.0f, dx, K);
        return 0;
    }
    int nb = N < GEMM_PANEL ? N : GEMM_PANEL;
    float *panel = lm_cpu_scratch((size_t)nb * K * sizeof *panel);
    if (!panel)
        return -1;
    for (int n0 = 0; n0 < N; n0 += nb) {
        int rows = N - n0 < nb ? N - n0 : nb;
        widen_panel(panel, (const uint16_t *)w + (int64_t)n0 * K, (int64_t)rows * K);
        lm_cpu_sgemm(0, 0, M, K, rows, 1.0f, dy + n0, N, panel,
                    K, 1.0f, dx, K);
    }
    lm_cpu_scratch_free(panel);
    return 0;
}

int lm_cpu_gemm_batched(lm_backend *be, float *c, const float *a_, const float *b,
                        const lm_gemm_batched_args *a)
{
    (void)be;
    LM_CPU_CHECK(a->batch >= 0 && a->M >= 0 && a->N >= 0 && a->K >= 0 && a->M <= INT32_MAX &&
                     a->N <= INT32_MAX && a->K <= INT32_MAX,
                 "gemm_batched: bad sizes");
    int64_t ra = a->trans_a ? a->M : a->K, rb = a->trans_b ? a->K : a->N; /* row lengths */
    LM_CPU_CHECK(a->lda >= (ra > 1 ? ra : 1) && a->ldb >= (rb > 1 ? rb : 1) &&
                     a->ldc >= (a->N > 1 ? a->N : 1),
                 "gemm_batched: leading dimension too small");
    for (int64_t i = 0; i < a->batch; i++) {
        float *ci = c + i * a->stride_c;
        if (a->K == 0 || a->M == 0 || a->N == 0) {
            for (int64_t m = 0; m < a->M; m++)
                for (int64_t n = 0; n < a->N; n++)
                    ci[m * a->ldc + n] = a->beta == 0.0f ? 0.0f : a->beta * ci[m * a->ldc + n];
            continue;
        }
        lm_cpu_sgemm(a->trans_a,
                    a->trans_b, (int)a->M, (int)a->N, (int)a->K,
                    a->alpha, a_ + i * a->stride_a, (int)a->lda, b + i * a->stride_b, (int)a->ldb,
                    a->beta, ci, (int)a->ldc);
    }
    return 0;
}
