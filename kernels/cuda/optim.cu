/* optim.cu — the Adam update (PyTorch torch.optim.Adam, bias-corrected, optional L2 weight
 * decay added to the gradient) on CUDA: one own element-wise kernel in double, the bias
 * corrections computed on the host exactly as the CPU reference does.
 * Not here: AdamW's decoupled decay, gradient clipping, learning-rate schedules.
 */
#include "cuda.cuh"

#include <cmath>

namespace lm_cu_optim
{

struct adam_f {
    float *p, *m, *v;
    const float *g;
    double b1, b2, step, sbc2, wd, eps;
    __device__ void operator()(int64_t i) const
    {
        double gi = (double)g[i] + wd * p[i];
        double mi = b1 * m[i] + (1.0 - b1) * gi;
        double vi = b2 * v[i] + (1.0 - b2) * gi * gi;
        m[i] = (float)mi;
        v[i] = (float)vi;
        p[i] = (float)(p[i] - step * mi / (sqrt(vi) / sbc2 + eps));
    }
};

} // namespace lm_cu_optim

extern "C" int lm_cuda_adam_step(lm_backend *be, float *p, float *m, float *v, const float *g,
                                 int64_t n, const lm_adam_args *a)
{
    LM_CU_ARG(a->step >= 1, "adam: step must be >= 1 (got %lld)", (long long)a->step);
    LM_CU_ARG(a->beta1 >= 0 && a->beta1 < 1 && a->beta2 >= 0 && a->beta2 < 1 && a->eps >= 0,
              "adam: bad hyper-parameters");
    LM_CU_ARG(n >= 0, "adam: negative size");
    LM_CU_ENTER(be);
    const double b1 = a->beta1, b2 = a->beta2;
    const double bc1 = 1.0 - std::pow(b1, (double)a->step),
                 bc2 = 1.0 - std::pow(b2, (double)a->step);
    lm_cu_optim::adam_f f = {
        p, m, v, g, b1, b2, a->lr / bc1, std::sqrt(bc2), (double)a->weight_decay, (double)a->eps};
    return lm_cu_map(be, n, f, "adam_step");
}
