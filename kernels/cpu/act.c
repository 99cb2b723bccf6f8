/* act.c — pointwise activations and their derivatives on the CPU (maths in common/lm_kmath.h,
 * evaluated in double and rounded once). Forward ops may run in place; backward ops accumulate.
 * Not here: normalisations (norm.c), softmax (rope_attn.c).
 */
#include "cpu.h"

#define PAR _Pragma("omp parallel for schedule(static) if (n >= LM_CPU_PAR_MIN)")

int lm_cpu_relu_fwd(lm_backend *be, float *y, const float *x, int64_t n)
{
    (void)be;
    PAR for (int64_t i = 0; i < n; i++) y[i] = x[i] < 0.0f ? 0.0f : x[i]; /* NaN passes, as in PyTorch */
    return 0;
}

int lm_cpu_relu_bwd(lm_backend *be, float *dx, const float *dy, const float *x, int64_t n)
{
    (void)be;
    PAR for (int64_t i = 0; i < n; i++) if (x[i] > 0.0f) dx[i] += dy[i];
    return 0;
}

int lm_cpu_leaky_relu_fwd(lm_backend *be, float *y, const float *x, float slope, int64_t n)
{
    (void)be;
    PAR for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : slope * x[i];
    return 0;
}

int lm_cpu_leaky_relu_bwd(lm_backend *be, float *dx, const float *dy, const float *x,
                          float slope, int64_t n)
{
    (void)be;
    PAR for (int64_t i = 0; i < n; i++) dx[i] += x[i] > 0.0f ? dy[i] : slope * dy[i];
    return 0;
}

int lm_cpu_silu_fwd(lm_backend *be, float *y, const float *x, int64_t n)
{
    (void)be;
    PAR for (int64_t i = 0; i < n; i++) y[i] = (float)lm_k_silu(x[i]);
    return 0;
}

int lm_cpu_silu_bwd(lm_backend *be, float *dx, const float *dy, const float *x, int64_t n)
{
    (void)be;
    PAR for (int64_t i = 0; i < n; i++) dx[i] += (float)(dy[i] * lm_k_silu_grad(x[i]));
    return 0;
}

int lm_cpu_swiglu_fwd(lm_backend *be, float *y, const float *g, const float *u, int64_t n)
{
    (void)be;
    PAR for (int64_t i = 0; i < n; i++) y[i] = (float)(lm_k_silu(g[i]) * u[i]);
    return 0;
}

int lm_cpu_swiglu_bwd(lm_backend *be, float *dg, float *du, const float *dy, const float *g,
                      const float *u, int64_t n)
{
    (void)be;
    PAR for (int64_t i = 0; i < n; i++) {
        if (dg)
            dg[i] += (float)((double)dy[i] * u[i] * lm_k_silu_grad(g[i]));
        if (du)
            du[i] += (float)((double)dy[i] * lm_k_silu(g[i]));
    }
    return 0;
}

int lm_cpu_gelu_fwd(lm_backend *be, float *y, const float *x, int64_t n)
{
    (void)be;
    PAR for (int64_t i = 0; i < n; i++) y[i] = (float)lm_k_gelu(x[i]);
    return 0;
}

int lm_cpu_gelu_bwd(lm_backend *be, float *dx, const float *dy, const float *x, int64_t n)
{
    (void)be;
    PAR for (int64_t i = 0; i < n; i++) dx[i] += (float)(dy[i] * lm_k_gelu_grad(x[i]));
    return 0;
}
