/* conv3d.cu — 3-D convolution, kernel 3, padding 1, stride 1 or 2, batch 1, NCDHW, f32, on CUDA
 * through cuDNN 9's legacy convolution API: cudnnConvolutionForward + cudnnAddTensor (bias),
 * cudnnConvolutionBackwardData, cudnnConvolutionBackwardFilter and
 * cudnnConvolutionBackwardBias (all with beta = 1 for the += gradients).
 *
 * Algorithms: cuDNN's heuristic list (the *_v7 queries) is tried in order; a candidate that
 * cuDNN refuses at run time (NOT_SUPPORTED) or whose workspace cannot be allocated is skipped
 * for the next, so a shape that one algorithm cannot do is not an error. Backward algorithms
 * prefer deterministic ones. Maths is FMA only (no TF32) unless LM_CUDA_TF32=1.
 * Descriptors are built per call (host-side work only; cheap next to the convolution).
 * Not here: transposed or dilated convolutions, other kernel sizes.
 */
#include "cuda.cuh"

typedef struct {
    cudnnTensorDescriptor_t x, y, b;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
} descs;

static void descs_free(descs *d)
{
    if (d->x)
        (void)cudnnDestroyTensorDescriptor(d->x);
    if (d->y)
        (void)cudnnDestroyTensorDescriptor(d->y);
    if (d->b)
        (void)cudnnDestroyTensorDescriptor(d->b);
    if (d->w)
        (void)cudnnDestroyFilterDescriptor(d->w);
    if (d->conv)
        (void)cudnnDestroyConvolutionDescriptor(d->conv);
}

static int tensor5(cudnnTensorDescriptor_t t, int c, int d, int h, int w)
{
    int dims[5] = {1, c, d, h, w};
    int str[5] = {c * d * h * w, d * h * w, h * w, w, 1};
    LM_CUDNN_CHECK(cudnnSetTensorNdDescriptor(t, CUDNN_DATA_FLOAT, 5, dims, str));
    return 0;
}

static int conv_check(const lm_conv3d_args *a)
{
    LM_CU_ARG(a->Cin > 0 && a->Cout > 0 && a->D > 0 && a->H > 0 && a->W > 0,
              "conv3d: bad shape Cin=%d Cout=%d grid %dx%dx%d", a->Cin, a->Cout, a->D, a->H, a->W);
    LM_CU_ARG(a->stride == 1 || a->stride == 2, "conv3d: stride must be 1 or 2 (got %d)",
              a->stride);
    LM_CU_ARG((int64_t)a->Cin * a->D * a->H * a->W <= INT32_MAX &&
                  (int64_t)a->Cout * a->D * a->H * a->W <= INT32_MAX,
              "conv3d: tensor too large for cuDNN");
    return 0;
}

/* all descriptors of one convolution; the math type follows LM_CUDA_TF32 */
static int descs_init(lm_backend *be, descs *d, const lm_conv3d_args *a)
{
    const int s = a->stride, Do = (a->D - 1) / s + 1, Ho = (a->H - 1) / s + 1,
              Wo = (a->W - 1) / s + 1;
    int wdims[5] = {a->Cout, a->Cin, 3, 3, 3};
    int pad[3] = {1, 1, 1}, str[3] = {s, s, s}, dil[3] = {1, 1, 1}, out[5];
    if (!LM_CUDNN_OK(cudnnCreateTensorDescriptor(&d->x)) ||
        !LM_CUDNN_OK(cudnnCreateTensorDescriptor(&d->y)) ||
        !LM_CUDNN_OK(cudnnCreateTensorDescriptor(&d->b)) ||
        !LM_CUDNN_OK(cudnnCreateFilterDescriptor(&d->w)) ||
        !LM_CUDNN_OK(cudnnCreateConvolutionDescriptor(&d->conv)))
        return -1;
    if (tensor5(d->x, a->Cin, a->D, a->H, a->W) < 0 || tensor5(d->y, a->Cout, Do, Ho, Wo) < 0 ||
        tensor5(d->b, a->Cout, 1, 1, 1) < 0)
        return -1;
    LM_CUDNN_CHECK(cudnnSetFilterNdDescriptor(d->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, 5, wdims));
    LM_CUDNN_CHECK(cudnnSetConvolutionNdDescriptor(d->conv, 3, pad, str, dil,
                                                   CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    LM_CUDNN_CHECK(cudnnSetConvolutionMathType(d->conv, lm_cu(be)->tf32 ? CUDNN_DEFAULT_MATH
                                                                        : CUDNN_FMA_MATH));
    LM_CUDNN_CHECK(cudnnGetConvolutionNdForwardOutputDim(d->conv, d->x, d->w, 5, out));
    if (out[0] != 1 || out[1] != a->Cout || out[2] != Do || out[3] != Ho || out[4] != Wo)
        return lm_error_set("conv3d: cuDNN output grid %dx%dx%d differs from %dx%dx%d", out[2],
                            out[3], out[4], Do, Ho, Wo);
    return 0;
}

/* Under TF32 a candidate runs with the math type cuDNN paired it with; otherwise FMA only. */
static int set_math(lm_backend *be, descs *d, cudnnMathType_t m)
{
    LM_CUDNN_CHECK(cudnnSetConvolutionMathType(d->conv, lm_cu(be)->tf32 ? m : CUDNN_FMA_MATH));
    return 0;
}

/* Reorders perf results so that deterministic candidates come first (stable). */
template <class P> static void deterministic_first(P *p, int n)
{
    P tmp[16];
    int k = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n && k < 16; i++)
            if ((p[i].determinism == CUDNN_DETERMINISTIC) == (pass == 0))
                tmp[k++] = p[i];
    for (int i = 0; i < k; i++)
        p[i] = tmp[i];
}

#define NCAND 16

extern "C" int lm_cuda_conv3d_fwd(lm_backend *be, float *y, const float *x, const float *w,
                                  const float *b, const lm_conv3d_args *a)
{
    if (conv_check(a) < 0)
        return -1;
    LM_CU_ENTER(be);
    cudnnHandle_t h = lm_cu(be)->dnn;
    descs d = {};
    int rc = -1, n = 0, done = 0;
    cudnnConvolutionFwdAlgoPerf_t perf[NCAND];
    const float one = 1.0f, zero = 0.0f;
    if (descs_init(be, &d, a) < 0)
        goto out;
    if (!LM_CUDNN_OK(
            cudnnGetConvolutionForwardAlgorithm_v7(h, d.x, d.w, d.conv, d.y, NCAND, &n, perf)))
        goto out;
    for (int i = 0; i < n && !done; i++) {
        if (perf[i].status != CUDNN_STATUS_SUCCESS)
            continue;
        size_t ws = 0;
        if (set_math(be, &d, perf[i].mathType) < 0)
            goto out;
        if (cudnnGetConvolutionForwardWorkspaceSize(h, d.x, d.w, d.conv, d.y, perf[i].algo, &ws) !=
            CUDNN_STATUS_SUCCESS)
            continue;
        void *wsp = lm_cu_scratch(be, LM_CU_S_WS, ws);
        if (!wsp)
            continue;
        cudnnStatus_t st = cudnnConvolutionForward(h, &one, d.x, x, d.w, w, d.conv, perf[i].algo,
                                                   wsp, ws, &zero, d.y, y);
        if (st == CUDNN_STATUS_NOT_SUPPORTED)
            continue;
        if (!LM_CUDNN_OK(st))
            goto out;
        done = 1;
    }
    if (!done) {
        lm_error_set("conv3d_fwd: no cuDNN algorithm runs Cin=%d Cout=%d grid %dx%dx%d stride %d",
                     a->Cin, a->Cout, a->D, a->H, a->W, a->stride);
        goto out;
    }
    if (b && !LM_CUDNN_OK(cudnnAddTensor(h, &one, d.b, b, &one, d.y, y)))
        goto out;
    rc = 0;
out:
    descs_free(&d);
    return rc;
}

static int bwd_data(lm_backend *be, descs *d, float *dx, const float *dy, const float *w,
                    const lm_conv3d_args *a)
{
    cudnnHandle_t h = lm_cu(be)->dnn;
    cudnnConvolutionBwdDataAlgoPerf_t perf[NCAND];
    int n = 0;
    const float one = 1.0f;
    LM_CUDNN_CHECK(
        cudnnGetConvolutionBackwardDataAlgorithm_v7(h, d->w, d->y, d->conv, d->x, NCAND, &n, perf));
    deterministic_first(perf, n);
    for (int i = 0; i < n; i++) {
        if (perf[i].status != CUDNN_STATUS_SUCCESS)
            continue;
        size_t ws = 0;
        if (set_math(be, d, perf[i].mathType) < 0)
            return -1;
        if (cudnnGetConvolutionBackwardDataWorkspaceSize(h, d->w, d->y, d->conv, d->x, perf[i].algo,
                                                         &ws) != CUDNN_STATUS_SUCCESS)
            continue;
        void *wsp = lm_cu_scratch(be, LM_CU_S_WS, ws);
        if (!wsp)
            continue;
        cudnnStatus_t st = cudnnConvolutionBackwardData(h, &one, d->w, w, d->y, dy, d->conv,
                                                        perf[i].algo, wsp, ws, &one, d->x, dx);
        if (st == CUDNN_STATUS_NOT_SUPPORTED)
            continue;
        return LM_CUDNN_OK(st) ? 0 : -1;
    }
    return lm_error_set("conv3d_bwd: no cuDNN backward-data algorithm runs Cin=%d Cout=%d grid "
                        "%dx%dx%d stride %d",
                        a->Cin, a->Cout, a->D, a->H, a->W, a->stride);
}

static int bwd_filter(lm_backend *be, descs *d, float *dw, const float *dy, const float *x,
                      const lm_conv3d_args *a)
{
    cudnnHandle_t h = lm_cu(be)->dnn;
    cudnnConvolutionBwdFilterAlgoPerf_t perf[NCAND];
    int n = 0;
    const float one = 1.0f;
    LM_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, d->x, d->y, d->conv, d->w,
                                                                 NCAND, &n, perf));
    deterministic_first(perf, n);
    for (int i = 0; i < n; i++) {
        if (perf[i].status != CUDNN_STATUS_SUCCESS)
            continue;
        size_t ws = 0;
        if (set_math(be, d, perf[i].mathType) < 0)
            return -1;
        if (cudnnGetConvolutionBackwardFilterWorkspaceSize(
                h, d->x, d->y, d->conv, d->w, perf[i].algo, &ws) != CUDNN_STATUS_SUCCESS)
            continue;
        void *wsp = lm_cu_scratch(be, LM_CU_S_WS, ws);
        if (!wsp)
            continue;
        cudnnStatus_t st = cudnnConvolutionBackwardFilter(h, &one, d->x, x, d->y, dy, d->conv,
                                                          perf[i].algo, wsp, ws, &one, d->w, dw);
        if (st == CUDNN_STATUS_NOT_SUPPORTED)
            continue;
        return LM_CUDNN_OK(st) ? 0 : -1;
    }
    return lm_error_set("conv3d_bwd: no cuDNN backward-filter algorithm runs Cin=%d Cout=%d "
                        "grid %dx%dx%d stride %d",
                        a->Cin, a->Cout, a->D, a->H, a->W, a->stride);
}

extern "C" int lm_cuda_conv3d_bwd(lm_backend *be, float *dx, float *dw, float *db, const float *dy,
                                  const float *x, const float *w, const lm_conv3d_args *a)
{
    if (conv_check(a) < 0)
        return -1;
    LM_CU_ENTER(be);
    descs d = {};
    int rc = -1;
    const float one = 1.0f;
    if (descs_init(be, &d, a) < 0)
        goto out;
    if (db &&
        !LM_CUDNN_OK(cudnnConvolutionBackwardBias(lm_cu(be)->dnn, &one, d.y, dy, &one, d.b, db)))
        goto out;
    if (dw && bwd_filter(be, &d, dw, dy, x, a) < 0)
        goto out;
    if (dx && bwd_data(be, &d, dx, dy, w, a) < 0)
        goto out;
    rc = 0;
out:
    descs_free(&d);
    return rc;
}
