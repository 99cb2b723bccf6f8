/* cuda.cuh — internal to the CUDA backend: the backend context (device, stream, cuBLAS and
 * cuDNN handles, grow-only scratch buffers), the checking macros every call and launch goes
 * through, the lm_cuda_<op> prototypes (from ops.def), and the two templates most families
 * share: a grid-stride element map and a deterministic segmented reduction in double.
 *
 * Error rule: every CUDA runtime, cuBLAS and cuDNN call is wrapped in LM_CU_OK / LM_CUBLAS_OK /
 * LM_CUDNN_OK (an expression: true on success, else lm_error is set to "cuda:N: file:line:
 * call: reason" and it is false) or in the LM_*_CHECK statement forms that return -1. Every
 * kernel launch is followed by LM_CU_LAUNCHED(be), which checks cudaGetLastError() and, with
 * LM_CUDA_SYNC=1 in the environment, synchronises so that an asynchronous fault is reported
 * at the launch that caused it.
 *
 * Ordering rule: everything runs on the backend's one stream, so scratch buffers can be reused
 * by consecutive ops without synchronisation; a scratch buffer that must grow is freed only
 * after the stream has drained. Within one op, each slot is taken once (a second request for
 * the same slot could move it).
 * Not here: the public entry points (lm_cuda.h), any op (the family files).
 */
#ifndef LM_CUDA_CUH
#define LM_CUDA_CUH

#include <cstddef>
#include <cstdint>

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

extern "C" {
#include "io/lm_error.h"
#include "lm_kernels.h"
}
#include "common/lm_kmath.h"
#include "lm_cuda.h"

#define LM_OP(name, family, grad) extern "C" lm_op_##name##_fn lm_cuda_##name;
#include "ops.def"

/* scratch slots: each op family knows which ones it uses; lm_cu_reduce owns LM_CU_S_PART */
enum {
    LM_CU_S_PART = 0, /* reduction partials (lm_cu_reduce only) */
    LM_CU_S_RED,      /* reduction results (double) */
    LM_CU_S_A,        /* op temporaries */
    LM_CU_S_B,
    LM_CU_S_WS,   /* cuDNN workspace */
    LM_CU_S_ARGS, /* small host arrays uploaded for one op (label values, kept flags) */
    LM_CU_NSCRATCH
};

typedef struct {
    int device;
    int sync_each; /* LM_CUDA_SYNC=1: synchronise after every launch */
    int tf32;      /* LM_CUDA_TF32=1: allow TF32 tensor cores for f32 GEMMs and convolutions */
    int nsm;       /* multiprocessors, for grid sizes */
    cudaStream_t stream;
    cublasHandle_t blas;
    cudnnHandle_t dnn;
    void *scratch[LM_CU_NSCRATCH];
    size_t scratch_cap[LM_CU_NSCRATCH];
    char name[32];
} lm_cu_ctx;

static inline lm_cu_ctx *lm_cu(lm_backend *be)
{
    return (lm_cu_ctx *)be->ctx;
}

/* 0 on success; else sets lm_error ("cuda:N: file:line: expr: reason") and returns -1. */
int lm_cu_rt_status(cudaError_t e, const char *file, int line, const char *expr);
int lm_cu_blas_status(cublasStatus_t s, const char *file, int line, const char *expr);
int lm_cu_dnn_status(cudnnStatus_t s, const char *file, int line, const char *expr);
/* After a launch: cudaGetLastError (and a sync under LM_CUDA_SYNC=1). 0 or -1. */
int lm_cu_launch_status(lm_backend *be, const char *file, int line, const char *what);
/* Makes the backend's device current for this thread; 0 or -1. Every op starts with it. */
int lm_cu_enter(lm_backend *be);
/* Device scratch of at least nbytes in slot (contents undefined), or NULL with lm_error. */
void *lm_cu_scratch(lm_backend *be, int slot, size_t nbytes);

#define LM_CU_OK(call) (lm_cu_rt_status((call), __FILE__, __LINE__, #call) == 0)
#define LM_CUBLAS_OK(call) (lm_cu_blas_status((call), __FILE__, __LINE__, #call) == 0)
#define LM_CUDNN_OK(call) (lm_cu_dnn_status((call), __FILE__, __LINE__, #call) == 0)
#define LM_CU_CHECK(call)                                                                          \
    do {                                                                                           \
        if (!LM_CU_OK(call))                                                                       \
            return -1;                                                                             \
    } while (0)
#define LM_CUBLAS_CHECK(call)                                                                      \
    do {                                                                                           \
        if (!LM_CUBLAS_OK(call))                                                                   \
            return -1;                                                                             \
    } while (0)
#define LM_CUDNN_CHECK(call)                                                                       \
    do {                                                                                           \
        if (!LM_CUDNN_OK(call))                                                                    \
            return -1;                                                                             \
    } while (0)
#define LM_CU_LAUNCHED(be)                                                                         \
    do {                                                                                           \
        if (lm_cu_launch_status((be), __FILE__, __LINE__, __func__) < 0)                           \
            return -1;                                                                             \
    } while (0)
/* argument check: returns -1 with the message */
#define LM_CU_ARG(cond, ...)                                                                       \
    do {                                                                                           \
        if (!(cond))                                                                               \
            return lm_error_set(__VA_ARGS__);                                                      \
    } while (0)
#define LM_CU_ENTER(be)                                                                            \
    do {                                                                                           \
        if (lm_cu_enter(be) < 0)                                                                   \
            return -1;                                                                             \
    } while (0)

#define LM_CU_THREADS 256

/* blocks for n independent items at LM_CU_THREADS per block; kernels loop grid-stride */
static inline unsigned lm_cu_blocks(int64_t n)
{
    int64_t b = (n + LM_CU_THREADS - 1) / LM_CU_THREADS;
    if (b < 1)
        b = 1;
    if (b > (1 << 20))
        b = 1 << 20;
    return (unsigned)b;
}

/* "F32", "BF16", ... (without libcommon's tensor.o at link time) */
const char *lm_cu_dtype_name(lm_dtype dt);

/* ---- element map: f(i) for every i < n (grid-stride) ---- */
template <class F> __global__ void lm_cu_map_kernel(int64_t n, F f)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        f(i);
}

template <class F> static inline int lm_cu_map(lm_backend *be, int64_t n, F f, const char *what)
{
    if (n <= 0)
        return 0;
    lm_cu_map_kernel<F><<<lm_cu_blocks(n), LM_CU_THREADS, 0, lm_cu(be)->stream>>>(n, f);
    return lm_cu_launch_status(be, __FILE__, __LINE__, what);
}

/* ---- deterministic segmented reduction in double ----
 * out[s·NV + v] = Σ_i of what f(s, i, acc) adds into acc[v], for segments s < nseg and
 * i < n. Each segment is cut into fixed chunks (a function of n only); chunks are reduced by
 * a fixed tree and their partials added in chunk order, so the bits never depend on the
 * device or the launch. Layout is the caller's business through f; `columns` picks the access
 * pattern: 0 when consecutive i of a segment are contiguous (threads of a block share a
 * segment), 1 when consecutive segments are contiguous (token-major [n, nseg]: one thread per
 * segment walks its rows). out is device memory of nseg·NV doubles. */
template <int NV> __device__ inline void lm_cu_block_sum(double (&acc)[NV])
{
    __shared__ double sh[NV][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int v = 0; v < NV; v++)
        for (int off = 16; off > 0; off >>= 1)
            acc[v] += __shfl_down_sync(0xffffffffu, acc[v], off);
    if (lane == 0)
        for (int v = 0; v < NV; v++)
            sh[v][warp] = acc[v];
    __syncthreads();
    if (warp == 0) {
        for (int v = 0; v < NV; v++) {
            acc[v] = lane < nw ? sh[v][lane] : 0.0;
            for (int off = 16; off > 0; off >>= 1)
                acc[v] += __shfl_down_sync(0xffffffffu, acc[v], off);
        }
    }
    __syncthreads();
}

template <int NV, class F>
__global__ void lm_cu_seg_partial(double *part, int64_t nseg, int64_t n, int64_t chunk,
                                  int64_t nchunk, F f)
{
    for (int64_t b = blockIdx.x; b < nseg * nchunk; b += gridDim.x) {
        const int64_t s = b / nchunk, k = b % nchunk;
        const int64_t i0 = k * chunk, i1 = i0 + chunk < n ? i0 + chunk : n;
        double acc[NV];
        for (int v = 0; v < NV; v++)
            acc[v] = 0.0;
        for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x)
            f(s, i, acc);
        lm_cu_block_sum<NV>(acc);
        if (threadIdx.x == 0)
            for (int v = 0; v < NV; v++)
                part[b * NV + v] = acc[v];
    }
}

template <int NV, class F>
__global__ void lm_cu_col_partial(double *part, int64_t nseg, int64_t n, int64_t chunk,
                                  int64_t nchunk, F f)
{
    const int64_t ncb = (nseg + blockDim.x - 1) / blockDim.x;
    for (int64_t b = blockIdx.x; b < ncb * nchunk; b += gridDim.x) {
        const int64_t cb = b % ncb, k = b / ncb, s = cb * blockDim.x + threadIdx.x;
        if (s >= nseg)
            continue;
        const int64_t i0 = k * chunk, i1 = i0 + chunk < n ? i0 + chunk : n;
        double acc[NV];
        for (int v = 0; v < NV; v++)
            acc[v] = 0.0;
        for (int64_t i = i0; i < i1; i++)
            f(s, i, acc);
        for (int v = 0; v < NV; v++)
            part[(s * nchunk + k) * NV + v] = acc[v];
    }
}

template <int NV>
__global__ void lm_cu_seg_final(double *out, const double *part, int64_t nseg, int64_t nchunk)
{
    for (int64_t s = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; s < nseg;
         s += (int64_t)gridDim.x * blockDim.x)
        for (int v = 0; v < NV; v++) {
            double t = 0.0;
            for (int64_t k = 0; k < nchunk; k++)
                t += part[(s * nchunk + k) * NV + v];
            out[s * NV + v] = t;
        }
}

/* chunk lengths: part of the numerical definition (fixed, never device-derived) */
#define LM_CU_SEG_CHUNK 16384
#define LM_CU_COL_CHUNK 64

template <int NV, class F>
static inline int lm_cu_reduce(lm_backend *be, double *out, int64_t nseg, int64_t n, int columns,
                               F f)
{
    if (nseg <= 0)
        return 0;
    const int64_t chunk = columns ? LM_CU_COL_CHUNK : LM_CU_SEG_CHUNK;
    int64_t nchunk = (n + chunk - 1) / chunk;
    if (nchunk < 1)
        nchunk = 1;
    double *part =
        (double *)lm_cu_scratch(be, LM_CU_S_PART, (size_t)(nseg * nchunk * NV) * sizeof(double));
    if (!part)
        return -1;
    cudaStream_t st = lm_cu(be)->stream;
    if (columns) {
        int64_t nb = (nseg + LM_CU_THREADS - 1) / LM_CU_THREADS * nchunk;
        unsigned g = (unsigned)(nb < (1 << 20) ? nb : (1 << 20));
        lm_cu_col_partial<NV, F><<<g, LM_CU_THREADS, 0, st>>>(part, nseg, n, chunk, nchunk, f);
    } else {
        int64_t nb = nseg * nchunk;
        unsigned g = (unsigned)(nb < (1 << 20) ? nb : (1 << 20));
        lm_cu_seg_partial<NV, F><<<g, LM_CU_THREADS, 0, st>>>(part, nseg, n, chunk, nchunk, f);
    }
    if (lm_cu_launch_status(be, __FILE__, __LINE__, "reduce partials") < 0)
        return -1;
    lm_cu_seg_final<NV><<<lm_cu_blocks(nseg), LM_CU_THREADS, 0, st>>>(out, part, nseg, nchunk);
    return lm_cu_launch_status(be, __FILE__, __LINE__, "reduce final");
}

/* ---- GEMM helpers shared by gemm.cu, rope_attn.cu (gemm.cu) ----
 * Row-major C [M,N] (ldc) = alpha·op(A)·op(B) + beta·C for `batch` items with element strides
 * sa, sb, sc (0 allowed for A or B: a shared operand), all f32; FP32 maths unless LM_CUDA_TF32.
 * beta = 0: C is not read. K = 0 is handled (C = beta·C). */
int lm_cu_sgemm(lm_backend *be, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                float alpha, const float *A, int64_t lda, int64_t sa, const float *B, int64_t ldb,
                int64_t sb, float beta, float *C, int64_t ldc, int64_t sc, int64_t batch);

#endif
