/* resample.cu — trilinear ×2 upsampling (align_corners=False) and 2×2×2 average pooling on
 * CUDA, forward and adjoint (own kernels). As on the CPU, each is a separable linear map whose
 * axis matrices have at most 2 (forward) or 4 (adjoint) taps per row; every output element is
 * a gather over the product of its three axes' taps, in the CPU's tap order, summed in double
 * and rounded once, so no kernel ever scatters.
 * Not here: flow value scaling (multiply by 2 with the scale op), other factors.
 */
#include "cuda.cuh"

namespace lm_cu_resample
{

#define MAXT 4

/* Taps of row `row` of one axis map: input size n; up: ×2 trilinear, else 2× average pool;
 * tr: the transposed map (rows are input indices). Same taps, weights and order as the CPU's
 * ax_build (duplicate taps merged). Returns the tap count. */
__device__ inline int axis_taps(int64_t row, int64_t n, int up, int tr, int64_t idx[MAXT],
                                double w[MAXT])
{
    int cnt = 0;
    if (!tr) {
        if (up) {
            int64_t i0, i1;
            double w1;
            lm_k_up2_src(row, n, &i0, &i1, &w1);
            idx[0] = i0;
            w[0] = 1.0 - w1;
            cnt = 1;
            if (w1 != 0.0) {
                if (i1 == i0)
                    w[0] += w1;
                else {
                    idx[1] = i1;
                    w[1] = w1;
                    cnt = 2;
                }
            }
        } else {
            idx[0] = 2 * row;
            idx[1] = 2 * row + 1;
            w[0] = w[1] = 0.5;
            cnt = 2;
        }
        return cnt;
    }
    if (!up) {
        if (row / 2 < n / 2) {
            idx[0] = row / 2;
            w[0] = 0.5;
            cnt = 1;
        }
        return cnt;
    }
    const int64_t no = 2 * n;
    for (int64_t j = 2 * row - 2; j <= 2 * row + 3; j++) {
        if (j < 0 || j >= no)
            continue;
        int64_t i0, i1;
        double w1, wj = 0.0;
        int hit = 0;
        lm_k_up2_src(j, n, &i0, &i1, &w1);
        if (i0 == row) {
            wj = 1.0 - w1;
            hit = 1;
        }
        if (w1 != 0.0 && i1 == row) {
            wj = hit ? wj + w1 : w1;
            hit = 1;
        }
        if (hit && cnt < MAXT) {
            idx[cnt] = j;
            w[cnt] = wj;
            cnt++;
        }
    }
    return cnt;
}

/* y [C, od, oh, ow] (=, or += in double when acc) from x [C, xd, xh, xw];
 * (nd, nh, nw) is the forward op's input grid, which the taps are defined on. */
struct resample_f {
    float *y;
    const float *x;
    int64_t od, oh, ow, xd, xh, xw, nd, nh, nw;
    int up, tr, acc;
    __device__ void operator()(int64_t t) const
    {
        const int64_t xx = t % ow, yy = (t / ow) % oh, z = (t / (ow * oh)) % od,
                      c = t / (ow * oh * od);
        int64_t iD[MAXT], iH[MAXT], iW[MAXT];
        double wD[MAXT], wH[MAXT], wW[MAXT];
        const int cD = axis_taps(z, nd, up, tr, iD, wD), cH = axis_taps(yy, nh, up, tr, iH, wH),
                  cW = axis_taps(xx, nw, up, tr, iW, wW);
        const float *xc = x + c * xd * xh * xw;
        double s = 0;
        for (int ta = 0; ta < cD; ta++) {
            const float *xp = xc + iD[ta] * xh * xw;
            double wa = wD[ta];
            for (int tb = 0; tb < cH; tb++) {
                const float *xq = xp + iH[tb] * xw;
                double wb = wa * wH[tb];
                for (int te = 0; te < cW; te++)
                    s += wb * wW[te] * xq[iW[te]];
            }
        }
        y[t] = acc ? (float)(y[t] + s) : (float)s;
    }
};

} // namespace lm_cu_resample

using namespace lm_cu_resample;

static int resample(lm_backend *be, float *y, const float *x, const lm_vol_args *a, int up, int tr,
                    const char *what)
{
    LM_CU_ARG(a->C > 0 && a->D > 0 && a->H > 0 && a->W > 0, "%s: bad shape C=%d %dx%dx%d", what,
              a->C, a->D, a->H, a->W);
    LM_CU_ARG(up || (a->D >= 2 && a->H >= 2 && a->W >= 2), "%s: every axis must be >= 2", what);
    LM_CU_ENTER(be);
    const int64_t n[3] = {a->D, a->H, a->W};
    int64_t other[3];
    for (int i = 0; i < 3; i++)
        other[i] = up ? 2 * n[i] : n[i] / 2;
    resample_f f;
    f.y = y;
    f.x = x;
    f.nd = n[0], f.nh = n[1], f.nw = n[2];
    if (tr) { /* y is dx on the input grid, x is dy on the output grid */
        f.od = n[0], f.oh = n[1], f.ow = n[2];
        f.xd = other[0], f.xh = other[1], f.xw = other[2];
    } else {
        f.od = other[0], f.oh = other[1], f.ow = other[2];
        f.xd = n[0], f.xh = n[1], f.xw = n[2];
    }
    f.up = up, f.tr = tr, f.acc = tr;
    return lm_cu_map(be, (int64_t)a->C * f.od * f.oh * f.ow, f, what);
}

extern "C" int lm_cuda_upsample2_fwd(lm_backend *be, float *y, const float *x, const lm_vol_args *a)
{
    return resample(be, y, x, a, 1, 0, "upsample2");
}

extern "C" int lm_cuda_upsample2_bwd(lm_backend *be, float *dx, const float *dy,
                                     const lm_vol_args *a)
{
    return resample(be, dx, dy, a, 1, 1, "upsample2");
}

extern "C" int lm_cuda_avgpool2_fwd(lm_backend *be, float *y, const float *x, const lm_vol_args *a)
{
    return resample(be, y, x, a, 0, 0, "avgpool2");
}

extern "C" int lm_cuda_avgpool2_bwd(lm_backend *be, float *dx, const float *dy,
                                    const lm_vol_args *a)
{
    return resample(be, dx, dy, a, 0, 1, "avgpool2");
}
