/* backend.cu — the CUDA backend's table: device buffers (cudaMalloc), explicit transfers on the
 * backend's stream, the context (stream, cuBLAS and cuDNN handles, scratch) and the error
 * reporting every call and launch goes through (cuda.cuh). The op slots are filled from ops.def
 * by assignment, so an op without a CUDA definition is a link error, never a NULL slot.
 * Not here: any op maths (the family files of this folder), device discovery (device.cu).
 */
#include "cuda.cuh"

#include <cstdio>
#include <cstdlib>
#include <cstring>

/* ---- error reporting ---- */

static const char *dev_name(void)
{
    int d = -1;
    static thread_local char buf[24];
    if (cudaGetDevice(&d) != cudaSuccess)
        d = -1;
    std::snprintf(buf, sizeof buf, "cuda:%d", d);
    return buf;
}

static const char *base_name(const char *file)
{
    const char *s = std::strrchr(file, '/');
    return s ? s + 1 : file;
}

int lm_cu_rt_status(cudaError_t e, const char *file, int line, const char *expr)
{
    if (e == cudaSuccess)
        return 0;
    (void)cudaGetLastError(); /* clear a non-sticky error so later calls are not blamed */
    return lm_error_set("%s: %s:%d: %s: %s (%s)", dev_name(), base_name(file), line, expr,
                        cudaGetErrorString(e), cudaGetErrorName(e));
}

int lm_cu_blas_status(cublasStatus_t s, const char *file, int line, const char *expr)
{
    if (s == CUBLAS_STATUS_SUCCESS)
        return 0;
    return lm_error_set("%s: %s:%d: %s: %s (%s)", dev_name(), base_name(file), line, expr,
                        cublasGetStatusString(s), cublasGetStatusName(s));
}

int lm_cu_dnn_status(cudnnStatus_t s, const char *file, int line, const char *expr)
{
    if (s == CUDNN_STATUS_SUCCESS)
        return 0;
    char last[256] = "";
    cudnnGetLastErrorString(last, sizeof last);
    return lm_error_set("%s: %s:%d: %s: %s%s%s", dev_name(), base_name(file), line, expr,
                        cudnnGetErrorString(s), last[0] ? ": " : "", last);
}

int lm_cu_launch_status(lm_backend *be, const char *file, int line, const char *what)
{
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess && lm_cu(be)->sync_each)
        e = cudaStreamSynchronize(lm_cu(be)->stream);
    if (e == cudaSuccess)
        return 0;
    (void)cudaGetLastError();
    return lm_error_set("%s: %s:%d: %s: kernel failed: %s (%s)", lm_cu(be)->name, base_name(file),
                        line, what, cudaGetErrorString(e), cudaGetErrorName(e));
}

int lm_cu_enter(lm_backend *be)
{
    int cur = -1;
    if (!LM_CU_OK(cudaGetDevice(&cur)))
        return -1;
    if (cur != lm_cu(be)->device && !LM_CU_OK(cudaSetDevice(lm_cu(be)->device)))
        return -1;
    return 0;
}

void *lm_cu_scratch(lm_backend *be, int slot, size_t nbytes)
{
    lm_cu_ctx *c = lm_cu(be);
    if (nbytes == 0)
        nbytes = 1;
    if (c->scratch_cap[slot] >= nbytes)
        return c->scratch[slot];
    /* grow by 1.5x at least, so a sequence of slowly growing requests stays cheap */
    size_t want = nbytes + nbytes / 2;
    if (want < c->scratch_cap[slot] + c->scratch_cap[slot] / 2)
        want = c->scratch_cap[slot] + c->scratch_cap[slot] / 2;
    want = (want + 255) / 256 * 256;
    /* earlier ops on the stream may still read the old buffer */
    if (c->scratch[slot] &&
        (!LM_CU_OK(cudaStreamSynchronize(c->stream)) || !LM_CU_OK(cudaFree(c->scratch[slot]))))
        return NULL;
    c->scratch[slot] = NULL;
    c->scratch_cap[slot] = 0;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, want);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        lm_error_set("%s: cannot allocate %zu bytes of scratch: %s", c->name, want,
                     cudaGetErrorString(e));
        return NULL;
    }
    c->scratch[slot] = p;
    c->scratch_cap[slot] = want;
    return p;
}

const char *lm_cu_dtype_name(lm_dtype dt)
{
    switch (dt) {
    case LM_BOOL: return "BOOL";
    case LM_U8: return "U8";
    case LM_I8: return "I8";
    case LM_I16: return "I16";
    case LM_U16: return "U16";
    case LM_I32: return "I32";
    case LM_U32: return "U32";
    case LM_I64: return "I64";
    case LM_U64: return "U64";
    case LM_F16: return "F16";
    case LM_BF16: return "BF16";
    case LM_F32: return "F32";
    case LM_F64: return "F64";
    default: return "?";
    }
}

/* ---- buffers ---- */

static void *cu_alloc(lm_backend *be, size_t nbytes)
{
    if (lm_cu_enter(be) < 0)
        return NULL;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, nbytes ? nbytes : 256); /* 256-byte aligned */
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        lm_error_set("%s: cannot allocate %zu bytes: %s", lm_cu(be)->name, nbytes,
                     cudaGetErrorString(e));
        return NULL;
    }
    return p;
}

static void cu_free(lm_backend *be, void *p)
{
    if (!p || lm_cu_enter(be) < 0)
        return;
    /* ops still queued may use p; a failure here is sticky and shows at the next call */
    if (LM_CU_OK(cudaStreamSynchronize(lm_cu(be)->stream)))
        (void)LM_CU_OK(cudaFree(p));
}

/* Transfers are stream-ordered after every op launched before them and complete when the call
 * returns, so host memory may be reused at once and downloaded data is final. */
static int cu_upload(lm_backend *be, void *dst, const void *src, size_t nbytes)
{
    LM_CU_ENTER(be);
    if (!nbytes)
        return 0;
    cudaStream_t st = lm_cu(be)->stream;
    LM_CU_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, st));
    LM_CU_CHECK(cudaStreamSynchronize(st));
    return 0;
}

static int cu_download(lm_backend *be, void *dst, const void *src, size_t nbytes)
{
    LM_CU_ENTER(be);
    if (!nbytes)
        return 0;
    cudaStream_t st = lm_cu(be)->stream;
    LM_CU_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, st));
    LM_CU_CHECK(cudaStreamSynchronize(st));
    return 0;
}

static int cu_sync(lm_backend *be)
{
    LM_CU_ENTER(be);
    LM_CU_CHECK(cudaStreamSynchronize(lm_cu(be)->stream));
    return 0;
}

static int cu_set_threads(lm_backend *be, int n)
{
    if (n < 1)
        return lm_error_set("%s: thread count must be at least 1 (got %d)", be->name, n);
    return 0; /* host threads play no part in the CUDA backend */
}

/* ---- the table ---- */

static int env_on(const char *name)
{
    const char *s = std::getenv(name);
    return s && std::strcmp(s, "1") == 0;
}

static void ctx_release(lm_cu_ctx *c)
{
    for (int i = 0; i < LM_CU_NSCRATCH; i++)
        if (c->scratch[i])
            (void)cudaFree(c->scratch[i]);
    if (c->dnn)
        (void)cudnnDestroy(c->dnn);
    if (c->blas)
        (void)cublasDestroy(c->blas);
    if (c->stream)
        (void)cudaStreamDestroy(c->stream);
}

extern "C" lm_backend *lm_backend_cuda(int device)
{
    char why[256] = "";
    int n = lm_cuda_device_count(why, sizeof why);
    if (n < 0) {
        lm_error_set("cuda: %s", why);
        return NULL;
    }
    if (device < 0 || device >= n) {
        lm_error_set("cuda:%d: no such CUDA device (%d available%s%s)", device, n,
                     why[0] ? ": " : "", why);
        return NULL;
    }
    lm_backend *be = (lm_backend *)std::calloc(1, sizeof *be);
    lm_cu_ctx *c = (lm_cu_ctx *)std::calloc(1, sizeof *c);
    if (!be || !c) {
        std::free(be);
        std::free(c);
        lm_error_set("cuda:%d: out of memory", device);
        return NULL;
    }
    c->device = device;
    c->sync_each = env_on("LM_CUDA_SYNC");
    c->tf32 = env_on("LM_CUDA_TF32");
    std::snprintf(c->name, sizeof c->name, "cuda:%d", device);
    be->name = c->name;
    be->kind = LM_BACKEND_CUDA;
    be->ctx = c;
    be->alloc = cu_alloc;
    be->free = cu_free;
    be->upload = cu_upload;
    be->download = cu_download;
    be->sync = cu_sync;
    be->set_threads = cu_set_threads;
#define LM_OP(name, family, grad) be->name = lm_cuda_##name;
#include "ops.def"
    int ok = LM_CU_OK(cudaSetDevice(device)) &&
             LM_CU_OK(cudaDeviceGetAttribute(&c->nsm, cudaDevAttrMultiProcessorCount, device)) &&
             LM_CU_OK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) &&
             LM_CUBLAS_OK(cublasCreate(&c->blas)) &&
             LM_CUBLAS_OK(cublasSetStream(c->blas, c->stream)) &&
             LM_CUBLAS_OK(cublasSetMathMode(c->blas, c->tf32 ? CUBLAS_TF32_TENSOR_OP_MATH
                                                             : CUBLAS_DEFAULT_MATH)) &&
             LM_CUBLAS_OK(cublasSetPointerMode(c->blas, CUBLAS_POINTER_MODE_HOST)) &&
             LM_CUDNN_OK(cudnnCreate(&c->dnn)) && LM_CUDNN_OK(cudnnSetStream(c->dnn, c->stream));
    if (!ok) {
        lm_error_prefix("cuda:%d: cannot start the backend", device);
        ctx_release(c);
        std::free(c);
        std::free(be);
        return NULL;
    }
    return be;
}

extern "C" void lm_backend_cuda_free(lm_backend *be)
{
    if (!be)
        return;
    lm_cu_ctx *c = lm_cu(be);
    if (c) {
        if (cudaSetDevice(c->device) == cudaSuccess && c->stream)
            (void)cudaStreamSynchronize(c->stream);
        ctx_release(c);
        std::free(c);
    }
    std::free(be);
}

extern "C" int lm_backend_cuda_mem(lm_backend *be, size_t *free_bytes, size_t *total_bytes)
{
    LM_CU_ENTER(be);
    size_t f = 0, t = 0;
    LM_CU_CHECK(cudaMemGetInfo(&f, &t));
    if (free_bytes)
        *free_bytes = f;
    if (total_bytes)
        *total_bytes = t;
    return 0;
}
