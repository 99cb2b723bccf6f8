/* optim.c — the Adam update (PyTorch torch.optim.Adam, bias-corrected, optional L2 weight
 * decay added to the gradient) on the CPU, element-wise in double.
 * Not here: AdamW's decoupled decay, gradient clipping, learning-rate schedules.
 */
#include "cpu.h"

#include <math.h>

int lm_cpu_adam_step(lm_backend *be, float *p, float *m, float *v, const float *g, int64_t n,
                     const lm_adam_args *a)
{
    (void)be;
    LM_CPU_CHECK(a->step >= 1, "adam: step must be >= 1 (got %lld)", (long long)a->step);
    LM_CPU_CHECK(a->beta1 >= 0 && a->beta1 < 1 && a->beta2 >= 0 && a->beta2 < 1 && a->eps >= 0,
                 "adam: bad hyper-parameters");
    LM_CPU_CHECK(n >= 0, "adam: negative size");
    const double b1 = a->beta1, b2 = a->beta2;
    const double bc1 = 1.0 - pow(b1, (double)a->step), bc2 = 1.0 - pow(b2, (double)a->step);
    const double step = a->lr / bc1, sbc2 = sqrt(bc2);
#pragma omp parallel for schedule(static) if (n >= LM_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        double gi = (double)g[i] + (double)a->weight_decay * p[i];
        double mi = b1 * m[i] + (1.0 - b1) * gi;
        double vi = b2 * v[i] + (1.0 - b2) * gi * gi;
        m[i] = (float)mi;
        v[i] = (float)vi;
        p[i] = (float)(p[i] - step * mi / (sqrt(vi) / sbc2 + a->eps));
    }
    return 0;
}
