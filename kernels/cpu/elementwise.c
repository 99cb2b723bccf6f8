/* elementwise.c — add, mul, scale, axpy, fill, copy, dtype casts and the sum / mean / max-abs
 * reductions on the CPU. Reductions are in double over fixed chunks (thread-count independent).
 * Not here: activations (act.c), losses (loss.c).
 */
#include "cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PAR _Pragma("omp parallel for schedule(static) if (n >= LM_CPU_PAR_MIN)")

int lm_cpu_add(lm_backend *be, float *y, const float *a_, const float *b, int64_t n)
{
    (void)be;
    PAR for (int64_t i = 0; i < n; i++) y[i] = a_[i] + b[i];
    return 0;
}

int lm_cpu_mul(lm_backend *be, float *y, const float *a_, const float *b, int64_t n)
{
    (void)be;
    PAR for (int64_t i = 0; i < n; i++) y[i] = a_[i] * b[i];
    return 0;
}

int lm_cpu_scale(lm_backend *be, float *y, const float *x, float alpha, int64_t n)
{
    (void)be;
    PAR for (int64_t i = 0; i < n; i++) y[i] = alpha * x[i];
    return 0;
}

int lm_cpu_axpy(lm_backend *be, float *y, const float *x, float alpha, int64_t n)
{
    (void)be;
    PAR for (int64_t i = 0; i < n; i++) y[i] += alpha * x[i];
    return 0;
}

int lm_cpu_fill(lm_backend *be, float *y, float value, int64_t n)
{
    (void)be;
    PAR for (int64_t i = 0; i < n; i++) y[i] = value;
    return 0;
}

int lm_cpu_copy(lm_backend *be, float *y, const float *x, int64_t n)
{
    (void)be;
    if (n > 0 && y != x)
        memmove(y, x, (size_t)n * sizeof *y);
    return 0;
}

static int cast_ok(lm_dtype t)
{
    return t == LM_F32 || t == LM_BF16 || t == LM_F16 || t == LM_I32 || t == LM_U8;
}

static double load(const void *x, lm_dtype t, int64_t i)
{
    switch (t) {
    case LM_F32: return ((const float *)x)[i];
    case LM_BF16: return lm_k_bf16_to_f32(((const uint16_t *)x)[i]);
    case LM_F16: return lm_k_f16_to_f32(((const uint16_t *)x)[i]);
    case LM_I32: return ((const int32_t *)x)[i];
    default: return ((const uint8_t *)x)[i];
    }
}

static double sat_round(double v, double lo, double hi)
{
    if (isnan(v))
        return 0;
    v = lm_k_round_even(v);
    return v < lo ? lo : v > hi ? hi : v;
}

static void store(void *y, lm_dtype t, int64_t i, double v)
{
    switch (t) {
    case LM_F32: ((float *)y)[i] = (float)v; break;
    case LM_BF16: ((uint16_t *)y)[i] = lm_k_f32_to_bf16((float)v); break;
    case LM_F16: ((uint16_t *)y)[i] = lm_k_f32_to_f16((float)v); break;
    case LM_I32: ((int32_t *)y)[i] = (int32_t)sat_round(v, -2147483648.0, 2147483647.0); break;
    default: ((uint8_t *)y)[i] = (uint8_t)sat_round(v, 0, 255); break;
    }
}

int lm_cpu_cast(lm_backend *be, void *y, lm_dtype ydt, const void *x, lm_dtype xdt, int64_t n)
{
    (void)be;
    LM_CPU_CHECK(cast_ok(ydt) && cast_ok(xdt), "cast: unsupported dtypes %s -> %s",
                 lm_cpu_dtype_name(xdt), lm_cpu_dtype_name(ydt));
    /* double holds every value of every supported dtype exactly, and f32 -> bf16/f16 rounds
     * once from the f32 value, so going through double changes nothing. */
    PAR for (int64_t i = 0; i < n; i++) store(y, ydt, i, load(x, xdt, i));
    return 0;
}

int lm_cpu_sum(lm_backend *be, float *out, const float *x, int64_t n)
{
    (void)be;
    out[0] = (float)lm_cpu_sum_f32(x, n);
    return 0;
}

int lm_cpu_mean(lm_backend *be, float *out, const float *x, int64_t n)
{
    (void)be;
    LM_CPU_CHECK(n > 0, "mean: empty input");
    out[0] = (float)(lm_cpu_sum_f32(x, n) / (double)n);
    return 0;
}

int lm_cpu_max_abs(lm_backend *be, float *out, const float *x, int64_t n)
{
    (void)be;
    /* max is order-independent, so chunks only serve the parallel split */
    int64_t nch = (n + LM_CPU_CHUNK - 1) / LM_CPU_CHUNK;
    float *part = lm_cpu_scratch((size_t)(nch > 0 ? nch : 1) * sizeof *part);
    if (!part)
        return -1;
#pragma omp parallel for schedule(static) if (n >= LM_CPU_PAR_MIN)
    for (int64_t c = 0; c < nch; c++) {
        float m = 0.0f;
        int64_t e = (c + 1) * LM_CPU_CHUNK < n ? (c + 1) * LM_CPU_CHUNK : n;
        for (int64_t i = c * LM_CPU_CHUNK; i < e; i++) {
            float v = fabsf(x[i]);
            if (v > m || isnan(v))
                m = isnan(m) ? m : v;
        }
        part[c] = m;
    }
    float m = 0.0f;
    for (int64_t c = 0; c < nch; c++)
        if (part[c] > m || isnan(part[c]))
            m = isnan(m) ? m : part[c];
    lm_cpu_scratch_free(part);
    out[0] = m;
    return 0;
}
