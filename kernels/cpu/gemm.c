/* gemm.c — linear layers (y = x·Wᵀ + b) and their gradients, and a strided batched GEMM, on the
 * CPU through OpenBLAS sgemm. BF16 weights are widened to f32 in fixed panels of rows, so a
 * frozen 14336×4096 weight never needs a full f32 copy.
 * Not here: attention (rope_attn.c uses sgemm directly), convolutions (conv3d.c).
 */
#include "cpu.h"

#include <string.h>

/* Rows of W widened per panel (fixed: part of the summation order of the BF16 backward). */
#define GEMM_PANEL 512

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
#pragma omp parallel for schedule(static) if (n >= LM_CPU_PAR_MIN)
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
    if (a->wdtype == LM_F32) {
        lm_cpu_sgemm(0, 1, M, N, K, 1.0f, x, K, (const float *)w,
                    K, beta, y, N);
        return 0;
    }
    int nb = N < GEMM_PANEL ? N : GEMM_PANEL;
    float *panel = lm_cpu_scratch((size_t)nb * K * sizeof *panel);
    if (!panel)
        return -1;
    for (int n0 = 0; n0 < N; n0 += nb) {
        int rows = N - n0 < nb ? N - n0 : nb;
        widen_panel(panel, (const uint16_t *)w + (int64_t)n0 * K, (int64_t)rows * K);
        lm_cpu_sgemm(0, 1, M, rows, K, 1.0f, x, K, panel, K,
                    beta, y + n0, N);
    }
    lm_cpu_scratch_free(panel);
    return 0;
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
