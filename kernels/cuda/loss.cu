/* loss.cu — the training loss of MODEL.md §9 on CUDA (own kernels): one-hot encoding of integer
 * labels, soft Dice over kept classes (MambaMorph Dice) and the L2 gradient loss of a flow (vxm
 * Grad), forward and backward. Sums are in double through the fixed-chunk reduction of
 * cuda.cuh; the scalar loss stays on the device. The small host arrays of the contracts (label
 * values, kept flags) are copied to device scratch on the backend's stream.
 * Not here: evaluation metrics (hard Dice, HD95, Jacobians).
 */
#include "cuda.cuh"

namespace lm_cu_loss
{

struct onehot_f {
    float *y;
    const int32_t *labels, *values;
    int64_t N;
    __device__ void operator()(int64_t t) const
    {
        int64_t k = t / N, i = t % N;
        y[t] = labels[i] == values[k] ? 1.0f : 0.0f;
    }
};

/* Σ t·p, Σ (t + p) per class */
struct dice_r {
    const float *pred, *target;
    int64_t N;
    __device__ void operator()(int64_t k, int64_t i, double (&acc)[2]) const
    {
        double t = target[k * N + i], p = pred[k * N + i];
        acc[0] += t * p;
        acc[1] += t + p;
    }
};

__global__ void dice_final_kernel(float *loss, float *dice, const double *s, const uint8_t *kept,
                                  int K, int nk)
{
    if (threadIdx.x != 0 || blockIdx.x != 0)
        return;
    double m = 0;
    for (int k = 0; k < K; k++) {
        double top = 2.0 * s[2 * k], sb = s[2 * k + 1], b = sb > 1e-5 ? sb : 1e-5;
        double d = top / b;
        if (dice)
            dice[k] = (float)d;
        if (kept[k])
            m += d;
    }
    loss[0] = (float)(-m / nk);
}

struct dice_bwd_f {
    float *dpred;
    const float *target;
    const double *s;
    const uint8_t *kept;
    int64_t N;
    double g; /* -dloss / nk */
    __device__ void operator()(int64_t t) const
    {
        int64_t k = t / N;
        if (!kept[k])
            return;
        double top = 2.0 * s[2 * k], sb = s[2 * k + 1], b = sb > 1e-5 ? sb : 1e-5;
        /* d(top/b)/dp_i = 2 t_i / b − top/b² · [b not clamped] */
        double c1 = g * 2.0 / b, c0 = sb > 1e-5 ? -g * top / (b * b) : 0.0;
        dpred[t] += (float)(c1 * target[t] + c0);
    }
};

/* squared forward differences along D, H, W */
struct gl_r {
    const float *x;
    int64_t D, H, W;
    __device__ void operator()(int64_t, int64_t i, double (&acc)[3]) const
    {
        const int64_t HW = H * W, xx = i % W, yy = (i / W) % H, z = (i / HW) % D;
        if (z + 1 < D) {
            double d = (double)x[i + HW] - x[i];
            acc[0] += d * d;
        }
        if (yy + 1 < H) {
            double d = (double)x[i + W] - x[i];
            acc[1] += d * d;
        }
        if (xx + 1 < W) {
            double d = (double)x[i + 1] - x[i];
            acc[2] += d * d;
        }
    }
};

__global__ void gl_final_kernel(float *loss, const double *s, double c0, double c1, double c2)
{
    if (threadIdx.x != 0 || blockIdx.x != 0)
        return;
    double cnt[3] = {c0, c1, c2}, l = 0;
    for (int k = 0; k < 3; k++)
        if (cnt[k] > 0)
            l += s[k] / cnt[k];
    loss[0] = (float)(l / 3.0);
}

struct gl_bwd_f {
    float *g;
    const float *x;
    int64_t D, H, W;
    double k0, k1, k2;
    __device__ void operator()(int64_t i) const
    {
        const int64_t HW = H * W, xx = i % W, yy = (i / W) % H, z = (i / HW) % D;
        double v = 0, xi = x[i];
        if (z > 0)
            v += k0 * (xi - x[i - HW]);
        if (z + 1 < D)
            v -= k0 * (x[i + HW] - xi);
        if (yy > 0)
            v += k1 * (xi - x[i - W]);
        if (yy + 1 < H)
            v -= k1 * (x[i + W] - xi);
        if (xx > 0)
            v += k2 * (xi - x[i - 1]);
        if (xx + 1 < W)
            v -= k2 * (x[i + 1] - xi);
        g[i] += (float)v;
    }
};

} // namespace lm_cu_loss

using namespace lm_cu_loss;

/* a host array of n bytes into the args scratch slot (stream-ordered) */
static const void *upload_args(lm_backend *be, const void *host, size_t n)
{
    void *d = lm_cu_scratch(be, LM_CU_S_ARGS, n);
    if (!d || !LM_CU_OK(cudaMemcpyAsync(d, host, n, cudaMemcpyHostToDevice, lm_cu(be)->stream)))
        return NULL;
    return d;
}

extern "C" int lm_cuda_onehot(lm_backend *be, float *y, const int32_t *labels,
                              const lm_onehot_args *a)
{
    LM_CU_ARG(a->K > 0 && a->N >= 0 && a->values, "onehot: bad arguments K=%d N=%lld", a->K,
              (long long)a->N);
    LM_CU_ENTER(be);
    if (a->N == 0)
        return 0;
    const int32_t *vals =
        (const int32_t *)upload_args(be, a->values, (size_t)a->K * sizeof(int32_t));
    if (!vals)
        return -1;
    return lm_cu_map(be, (int64_t)a->K * a->N, onehot_f{y, labels, vals, a->N}, "onehot");
}

static int dice_check(const lm_dice_args *a)
{
    LM_CU_ARG(a->K > 0 && a->N > 0 && a->kept, "dice_loss: bad arguments K=%d N=%lld", a->K,
              (long long)a->N);
    int nk = 0;
    for (int k = 0; k < a->K; k++)
        nk += a->kept[k] != 0;
    LM_CU_ARG(nk > 0, "dice_loss: every class is ignored");
    return nk;
}

/* per-class sums into LM_CU_S_RED and the kept flags into LM_CU_S_ARGS */
static int dice_prep(lm_backend *be, const double **s, const uint8_t **kept, const float *pred,
                     const float *target, const lm_dice_args *a)
{
    double *sums = (double *)lm_cu_scratch(be, LM_CU_S_RED, (size_t)(2 * a->K) * sizeof(double));
    if (!sums || lm_cu_reduce<2>(be, sums, a->K, a->N, 0, dice_r{pred, target, a->N}) < 0)
        return -1;
    *kept = (const uint8_t *)upload_args(be, a->kept, (size_t)a->K);
    *s = sums;
    return *kept ? 0 : -1;
}

extern "C" int lm_cuda_dice_loss_fwd(lm_backend *be, float *loss, float *dice, const float *pred,
                                     const float *target, const lm_dice_args *a)
{
    int nk = dice_check(a);
    if (nk < 0)
        return -1;
    LM_CU_ENTER(be);
    const double *s;
    const uint8_t *kept;
    if (dice_prep(be, &s, &kept, pred, target, a) < 0)
        return -1;
    dice_final_kernel<<<1, 32, 0, lm_cu(be)->stream>>>(loss, dice, s, kept, a->K, nk);
    LM_CU_LAUNCHED(be);
    return 0;
}

extern "C" int lm_cuda_dice_loss_bwd(lm_backend *be, float *dpred, const float *pred,
                                     const float *target, float dloss, const lm_dice_args *a)
{
    int nk = dice_check(a);
    if (nk < 0)
        return -1;
    if (!dpred)
        return 0;
    LM_CU_ENTER(be);
    const double *s;
    const uint8_t *kept;
    if (dice_prep(be, &s, &kept, pred, target, a) < 0)
        return -1;
    return lm_cu_map(be, (int64_t)a->K * a->N,
                     dice_bwd_f{dpred, target, s, kept, a->N, -(double)dloss / nk},
                     "dice_loss_bwd");
}

static int gl_check(const lm_vol_args *a)
{
    LM_CU_ARG(a->C > 0 && a->D > 0 && a->H > 0 && a->W > 0, "grad_l2: bad shape C=%d %dx%dx%d",
              a->C, a->D, a->H, a->W);
    return 0;
}

extern "C" int lm_cuda_grad_l2_fwd(lm_backend *be, float *loss, const float *flow,
                                   const lm_vol_args *a)
{
    if (gl_check(a) < 0)
        return -1;
    LM_CU_ENTER(be);
    const int64_t C = a->C, D = a->D, H = a->H, W = a->W;
    double *s = (double *)lm_cu_scratch(be, LM_CU_S_RED, 3 * sizeof(double));
    if (!s || lm_cu_reduce<3>(be, s, 1, C * D * H * W, 0, gl_r{flow, D, H, W}) < 0)
        return -1;
    gl_final_kernel<<<1, 32, 0, lm_cu(be)->stream>>>(loss, s, (double)C * (D - 1) * H * W,
                                                     (double)C * D * (H - 1) * W,
                                                     (double)C * D * H * (W - 1));
    LM_CU_LAUNCHED(be);
    return 0;
}

extern "C" int lm_cuda_grad_l2_bwd(lm_backend *be, float *dflow, const float *flow, float dloss,
                                   const lm_vol_args *a)
{
    if (gl_check(a) < 0)
        return -1;
    if (!dflow)
        return 0;
    LM_CU_ENTER(be);
    const int64_t C = a->C, D = a->D, H = a->H, W = a->W;
    double cnt[3] = {(double)C * (D - 1) * H * W, (double)C * D * (H - 1) * W,
                     (double)C * D * H * (W - 1)};
    double k3[3];
    for (int k = 0; k < 3; k++)
        k3[k] = cnt[k] > 0 ? 2.0 * dloss / (3.0 * cnt[k]) : 0.0;
    return lm_cu_map(be, C * D * H * W, gl_bwd_f{dflow, flow, D, H, W, k3[0], k3[1], k3[2]},
                     "grad_l2_bwd");
}
