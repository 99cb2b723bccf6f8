/* gemm.cu — linear layers (y = x·Wᵀ + b) and their gradients, and a strided batched GEMM, on
 * CUDA through cuBLAS. F32 weights: cublasSgemm (FP32 maths; TF32 only under LM_CUDA_TF32=1).
 * BF16 weights (the frozen LLM and adapter GEMMs): the f32 activations are rounded to bf16 in
 * scratch and cublasGemmEx multiplies BF16 operands with FP32 accumulation and an f32 output
 * (PyTorch bf16 autocast semantics) — so unlike the CPU reference, which widens W and keeps x
 * in f32, x is rounded to bf16 here: a relative error of about 2^-9 per product, which the
 * parity test allows for. Bias and its gradient are own kernels (the bias sum is in double).
 *
 * Row-major vs column-major, once: cuBLAS is column-major, and a row-major [r,c] matrix with
 * leading dimension ld is the column-major [c,r] matrix of its transpose. So row-major
 * C = op(A)·op(B) is computed as column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: cuBLAS gets B first, then A,
 * with m = N, n = M, and the same transpose flags.
 * Not here: attention (rope_attn.cu calls lm_cu_sgemm), convolutions (conv3d.cu, cuDNN).
 */
#include "cuda.cuh"

namespace lm_cu_gemm
{

struct to_bf16_f {
    uint16_t *y;
    const float *x;
    __device__ void operator()(int64_t i) const { y[i] = lm_k_f32_to_bf16(x[i]); }
};

/* y[m,n] (= or +=) b[n] */
struct bias_f {
    float *y;
    const float *b;
    int64_t N;
    int acc;
    __device__ void operator()(int64_t i) const
    {
        float v = b[i % N];
        y[i] = acc ? y[i] + v : v;
    }
};

/* C[m,n] = beta·C[m,n] (beta 0: C = 0, not read), for K = 0 */
struct scale_c_f {
    float *c;
    int64_t M, N, ldc, sc;
    float beta;
    __device__ void operator()(int64_t i) const
    {
        int64_t n = i % N, m = (i / N) % M, b = i / (N * M);
        float *p = c + b * sc + m * ldc + n;
        *p = beta == 0.0f ? 0.0f : beta * *p;
    }
};

/* column sums of dy [M,N] (token-major reduction) */
struct colsum_r {
    const float *dy;
    int64_t N;
    __device__ void operator()(int64_t s, int64_t i, double (&acc)[1]) const
    {
        acc[0] += dy[i * N + s];
    }
};

struct add_f32_f {
    float *y;
    const double *s;
    __device__ void operator()(int64_t i) const { y[i] += (float)s[i]; }
};

} // namespace lm_cu_gemm

using namespace lm_cu_gemm;

static cublasOperation_t op_of(int t)
{
    return t ? CUBLAS_OP_T : CUBLAS_OP_N;
}

int lm_cu_sgemm(lm_backend *be, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                float alpha, const float *A, int64_t lda, int64_t sa, const float *B, int64_t ldb,
                int64_t sb, float beta, float *C, int64_t ldc, int64_t sc, int64_t batch)
{
    if (M <= 0 || N <= 0 || batch <= 0)
        return 0;
    LM_CU_ARG(M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX && lda <= INT32_MAX &&
                  ldb <= INT32_MAX && ldc <= INT32_MAX && batch <= INT32_MAX,
              "gemm: size too large for cuBLAS");
    if (K <= 0)
        return lm_cu_map(be, batch * M * N, scale_c_f{C, M, N, ldc, sc, beta}, "gemm (K = 0)");
    cublasHandle_t h = lm_cu(be)->blas;
    if (batch == 1) {
        LM_CUBLAS_CHECK(cublasSgemm(h, op_of(trans_b), op_of(trans_a), (int)N, (int)M, (int)K,
                                    &alpha, B, (int)ldb, A, (int)lda, &beta, C, (int)ldc));
        return 0;
    }
    LM_CUBLAS_CHECK(cublasSgemmStridedBatched(
        h, op_of(trans_b), op_of(trans_a), (int)N, (int)M, (int)K, &alpha, B, (int)ldb,
        (long long)sb, A, (int)lda, (long long)sa, &beta, C, (int)ldc, (long long)sc, (int)batch));
    return 0;
}

/* Row-major C [M,N] (ldc) = alpha·A·Bᵀ-or-B + beta·C with A, B bf16 (FP32 accumulation). */
static int bf16_gemm(lm_backend *be, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                     const uint16_t *A, int64_t lda, const uint16_t *B, int64_t ldb, float beta,
                     float *C, int64_t ldc)
{
    const float alpha = 1.0f;
    LM_CUBLAS_CHECK(cublasGemmEx(lm_cu(be)->blas, op_of(trans_b), op_of(trans_a), (int)N, (int)M,
                                 (int)K, &alpha, B, CUDA_R_16BF, (int)ldb, A, CUDA_R_16BF, (int)lda,
                                 &beta, C, CUDA_R_32F, (int)ldc, CUBLAS_COMPUTE_32F,
                                 CUBLAS_GEMM_DEFAULT));
    return 0;
}

static int gemm_check(const lm_gemm_args *a)
{
    LM_CU_ARG(a->M >= 0 && a->N >= 0 && a->K >= 0, "gemm: negative size [%lld,%lld,%lld]",
              (long long)a->M, (long long)a->N, (long long)a->K);
    LM_CU_ARG(a->M <= INT32_MAX && a->N <= INT32_MAX && a->K <= INT32_MAX,
              "gemm: size too large for BLAS");
    LM_CU_ARG(a->wdtype == LM_F32 || a->wdtype == LM_BF16,
              "gemm: weight dtype must be F32 or BF16 (got %s)", lm_cu_dtype_name(a->wdtype));
    return 0;
}

/* x (n f32) rounded to bf16 in scratch slot */
static const uint16_t *as_bf16(lm_backend *be, int slot, const float *x, int64_t n)
{
    uint16_t *t = (uint16_t *)lm_cu_scratch(be, slot, (size_t)n * sizeof(uint16_t));
    if (!t)
        return NULL;
    if (lm_cu_map(be, n, to_bf16_f{t, x}, "gemm: round to bf16") < 0)
        return NULL;
    return t;
}

extern "C" int lm_cuda_gemm_fwd(lm_backend *be, float *y, const float *x, const void *w,
                                const float *b, const lm_gemm_args *a)
{
    if (gemm_check(a) < 0)
        return -1;
    LM_CU_ENTER(be);
    const int64_t M = a->M, N = a->N, K = a->K;
    float beta = a->accumulate ? 1.0f : 0.0f;
    if (M == 0 || N == 0)
        return 0;
    if (b) {
        if (lm_cu_map(be, M * N, bias_f{y, b, N, a->accumulate}, "gemm_fwd: bias") < 0)
            return -1;
        beta = 1.0f;
    }
    if (a->wdtype == LM_F32 || K == 0)
        return lm_cu_sgemm(be, 0, 1, M, N, K, 1.0f, x, K, 0, (const float *)w, K, 0, beta, y, N, 0,
                           1);
    const uint16_t *xb = as_bf16(be, LM_CU_S_A, x, M * K);
    if (!xb)
        return -1;
    return bf16_gemm(be, 0, 1, M, N, K, xb, K, (const uint16_t *)w, K, beta, y, N);
}

extern "C" int lm_cuda_gemm_bwd(lm_backend *be, float *dx, float *dw, float *db, const float *dy,
                                const float *x, const void *w, const lm_gemm_args *a)
{
    if (gemm_check(a) < 0)
        return -1;
    LM_CU_ARG(!dw || a->wdtype == LM_F32, "gemm: dW wanted for a BF16 (frozen) weight");
    LM_CU_ENTER(be);
    const int64_t M = a->M, N = a->N, K = a->K;
    if (db && N > 0) {
        double *s = (double *)lm_cu_scratch(be, LM_CU_S_RED, (size_t)N * sizeof(double));
        if (!s || lm_cu_reduce<1>(be, s, N, M, 1, colsum_r{dy, N}) < 0 ||
            lm_cu_map(be, N, add_f32_f{db, s}, "gemm_bwd: db") < 0)
            return -1;
    }
    if (M == 0 || N == 0 || K == 0)
        return 0;
    /* dw [N,K] += dyᵀ·x */
    if (dw && lm_cu_sgemm(be, 1, 0, N, K, M, 1.0f, dy, N, 0, x, K, 0, 1.0f, dw, K, 0, 1) < 0)
        return -1;
    if (!dx)
        return 0;
    /* dx [M,K] += dy·W */
    if (a->wdtype == LM_F32)
        return lm_cu_sgemm(be, 0, 0, M, K, N, 1.0f, dy, N, 0, (const float *)w, K, 0, 1.0f, dx, K,
                           0, 1);
    const uint16_t *dyb = as_bf16(be, LM_CU_S_A, dy, M * N);
    if (!dyb)
        return -1;
    return bf16_gemm(be, 0, 0, M, K, N, dyb, N, (const uint16_t *)w, K, 1.0f, dx, K);
}

extern "C" int lm_cuda_gemm_batched(lm_backend *be, float *c, const float *a_, const float *b,
                                    const lm_gemm_batched_args *a)
{
    LM_CU_ARG(a->batch >= 0 && a->M >= 0 && a->N >= 0 && a->K >= 0 && a->M <= INT32_MAX &&
                  a->N <= INT32_MAX && a->K <= INT32_MAX,
              "gemm_batched: bad sizes");
    int64_t ra = a->trans_a ? a->M : a->K, rb = a->trans_b ? a->K : a->N; /* row lengths */
    LM_CU_ARG(a->lda >= (ra > 1 ? ra : 1) && a->ldb >= (rb > 1 ? rb : 1) &&
                  a->ldc >= (a->N > 1 ? a->N : 1),
              "gemm_batched: leading dimension too small");
    LM_CU_ENTER(be);
    return lm_cu_sgemm(be, a->trans_a, a->trans_b, a->M, a->N, a->K, a->alpha, a_, a->lda,
                       a->stride_a, b, a->ldb, a->stride_b, a->beta, c, a->ldc, a->stride_c,
                       a->batch);
}
