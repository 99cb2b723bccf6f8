/* norm.c — instance norm (affine=False; per channel over voxels [C,N] or over tokens [N,C]),
 * layer norm (ViT ablation, and --in-mode=token without gamma/beta) and RMSNorm with a frozen
 * weight, forward and backward, on the CPU. Statistics are in double (two passes: mean, then
 * the biased variance about it); token-major column statistics walk rows in order for a block
 * of columns per thread, so the summation order never depends on the thread count.
 * Not here: batch norm, running statistics.
 */
#include "cpu.h"

#include <math.h>
#include <string.h>

#define CBLK 64 /* columns per block for token-major reductions */

static int in_check(const lm_instnorm_args *a)
{
    LM_CPU_CHECK(a->C > 0 && a->N > 0, "instnorm: bad shape C=%lld N=%lld", (long long)a->C,
                 (long long)a->N);
    LM_CPU_CHECK(a->eps >= 0, "instnorm: eps must be >= 0");
    return 0;
}

/* mean and rstd per channel, in double */
static int in_stats(double *mu, double *rs, const float *x, const lm_instnorm_args *a)
{
    const int64_t C = a->C, N = a->N;
    if (!a->token_major) {
        for (int64_t c = 0; c < C; c++) {
            const float *xc = x + c * N;
            double m = lm_cpu_sum_f32(xc, N) / (double)N;
            int64_t nch = (N + LM_CPU_CHUNK - 1) / LM_CPU_CHUNK;
            double v = 0;
            /* chunked like lm_cpu_sum_f32 so the order is fixed */
            double small[256];
            double *part = nch <= 256 ? small : lm_cpu_scratch((size_t)nch * sizeof(double));
            if (!part)
                return -1;
#pragma omp parallel for schedule(static) if (N >= LM_CPU_PAR_MIN)
            for (int64_t k = 0; k < nch; k++) {
                double p = 0;
                int64_t e = (k + 1) * LM_CPU_CHUNK < N ? (k + 1) * LM_CPU_CHUNK : N;
                for (int64_t i = k * LM_CPU_CHUNK; i < e; i++) {
                    double d = xc[i] - m;
                    p += d * d;
                }
                part[k] = p;
            }
            for (int64_t k = 0; k < nch; k++)
                v += part[k];
            if (part != small)
                lm_cpu_scratch_free(part);
            mu[c] = m;
            rs[c] = 1.0 / sqrt(v / (double)N + a->eps);
        }
        return 0;
    }
    int64_t nb = (C + CBLK - 1) / CBLK;
#pragma omp parallel for schedule(static) if (C * N >= LM_CPU_PAR_MIN)
    for (int64_t bk = 0; bk < nb; bk++) {
        int64_t c0 = bk * CBLK, c1 = c0 + CBLK < C ? c0 + CBLK : C;
        double s[CBLK] = {0}, q[CBLK] = {0};
        for (int64_t i = 0; i < N; i++)
            for (int64_t c = c0; c < c1; c++)
                s[c - c0] += x[i * C + c];
        for (int64_t c = c0; c < c1; c++)
            mu[c] = s[c - c0] / (double)N;
        for (int64_t i = 0; i < N; i++)
            for (int64_t c = c0; c < c1; c++) {
                double d = x[i * C + c] - mu[c];
                q[c - c0] += d * d;
            }
        for (int64_t c = c0; c < c1; c++)
            rs[c] = 1.0 / sqrt(q[c - c0] / (double)N + a->eps);
    }
    return 0;
}

int lm_cpu_instnorm_fwd(lm_backend *be, float *y, float *mean, float *rstd, const float *x,
                        const lm_instnorm_args *a)
{
    (void)be;
    if (in_check(a) < 0)
        return -1;
    const int64_t C = a->C, N = a->N;
    double *st = lm_cpu_scratch((size_t)(2 * C) * sizeof *st);
    if (!st)
        return -1;
    double *mu = st, *rs = st + C;
    if (in_stats(mu, rs, x, a) < 0) {
        lm_cpu_scratch_free(st);
        return -1;
    }
    if (!a->token_major) {
        for (int64_t c = 0; c < C; c++) {
            const float *xc = x + c * N;
            float *yc = y + c * N;
            double m = mu[c], r = rs[c];
#pragma omp parallel for schedule(static) if (N >= LM_CPU_PAR_MIN)
            for (int64_t i = 0; i < N; i++)
                yc[i] = (float)((xc[i] - m) * r);
        }
    } else {
#pragma omp parallel for schedule(static) if (C * N >= LM_CPU_PAR_MIN)
        for (int64_t i = 0; i < N; i++)
            for (int64_t c = 0; c < C; c++)
                y[i * C + c] = (float)((x[i * C + c] - mu[c]) * rs[c]);
    }
    for (int64_t c = 0; c < C; c++) {
        if (mean)
            mean[c] = (float)mu[c];
        if (rstd)
            rstd[c] = (float)rs[c];
    }
    lm_cpu_scratch_free(st);
    return 0;
}

int lm_cpu_instnorm_bwd(lm_backend *be, float *dx, const float *dy, const float *x,
                        const float *mean, const float *rstd, const lm_instnorm_args *a)
{
    (void)be;
    if (in_check(a) < 0)
        return -1;
    if (!dx)
        return 0;
    const int64_t C = a->C, N = a->N;
    if (!a->token_major) {
#pragma omp parallel for schedule(static) if (C * N >= LM_CPU_PAR_MIN)
        for (int64_t c = 0; c < C; c++) {
            const float *xc = x + c * N, *gc = dy + c * N;
            float *dc = dx + c * N;
            double m = mean[c], r = rstd[c], sg = 0, sgx = 0;
            for (int64_t i = 0; i < N; i++) {
                double xh = (xc[i] - m) * r;
                sg += gc[i];
                sgx += gc[i] * xh;
            }
            sg /= (double)N;
            sgx /= (double)N;
            for (int64_t i = 0; i < N; i++) {
                double xh = (xc[i] - m) * r;
                dc[i] += (float)(r * (gc[i] - sg - xh * sgx));
            }
        }
        return 0;
    }
    int64_t nb = (C + CBLK - 1) / CBLK;
#pragma omp parallel for schedule(static) if (C * N >= LM_CPU_PAR_MIN)
    for (int64_t bk = 0; bk < nb; bk++) {
        int64_t c0 = bk * CBLK, c1 = c0 + CBLK < C ? c0 + CBLK : C;
        double sg[CBLK] = {0}, sgx[CBLK] = {0};
        for (int64_t i = 0; i < N; i++)
            for (int64_t c = c0; c < c1; c++) {
                double xh = (x[i * C + c] - (double)mean[c]) * rstd[c];
                sg[c - c0] += dy[i * C + c];
                sgx[c - c0] += dy[i * C + c] * xh;
            }
        for (int64_t i = 0; i < N; i++)
            for (int64_t c = c0; c < c1; c++) {
                double xh = (x[i * C + c] - (double)mean[c]) * rstd[c];
                dx[i * C + c] += (float)(rstd[c] * (dy[i * C + c] - sg[c - c0] / (double)N -
                                                    xh * sgx[c - c0] / (double)N));
            }
    }
    return 0;
}

static int rn_check(const lm_rownorm_args *a, const char *what)
{
    LM_CPU_CHECK(a->rows >= 0 && a->cols > 0, "%s: bad shape [%lld,%lld]", what,
                 (long long)a->rows, (long long)a->cols);
    LM_CPU_CHECK(a->eps >= 0, "%s: eps must be >= 0", what);
    return 0;
}

int lm_cpu_layernorm_fwd(lm_backend *be, float *y, float *mean, float *rstd, const float *x,
                         const float *gamma, const float *beta, const lm_rownorm_args *a)
{
    (void)be;
    if (rn_check(a, "layernorm") < 0)
        return -1;
    const int64_t R = a->rows, C = a->cols;
#pragma omp parallel for schedule(static) if (R * C >= LM_CPU_PAR_MIN)
    for (int64_t r = 0; r < R; r++) {
        const float *xr = x + r * C;
        float *yr = y + r * C;
        double m = 0, v = 0;
        for (int64_t c = 0; c < C; c++)
            m += xr[c];
        m /= (double)C;
        for (int64_t c = 0; c < C; c++)
            v += (xr[c] - m) * (xr[c] - m);
        double rs = 1.0 / sqrt(v / (double)C + a->eps);
        for (int64_t c = 0; c < C; c++) {
            double o = (xr[c] - m) * rs;
            if (gamma)
                o *= gamma[c];
            if (beta)
                o += beta[c];
            yr[c] = (float)o;
        }
        if (mean)
            mean[r] = (float)m;
        if (rstd)
            rstd[r] = (float)rs;
    }
    return 0;
}

int lm_cpu_layernorm_bwd(lm_backend *be, float *dx, float *dgamma, float *dbeta, const float *dy,
                         const float *x, const float *mean, const float *rstd, const float *gamma,
                         const lm_rownorm_args *a)
{
    (void)be;
    if (rn_check(a, "layernorm") < 0)
        return -1;
    const int64_t R = a->rows, C = a->cols;
    if (dx) {
#pragma omp parallel for schedule(static) if (R * C >= LM_CPU_PAR_MIN)
        for (int64_t r = 0; r < R; r++) {
            const float *xr = x + r * C, *gr = dy + r * C;
            double m = mean[r], rs = rstd[r], sg = 0, sgx = 0;
            for (int64_t c = 0; c < C; c++) {
                double g = gamma ? (double)gr[c] * gamma[c] : gr[c];
                sg += g;
                sgx += g * (xr[c] - m) * rs;
            }
            sg /= (double)C;
            sgx /= (double)C;
            for (int64_t c = 0; c < C; c++) {
                double g = gamma ? (double)gr[c] * gamma[c] : gr[c];
                dx[r * C + c] += (float)(rs * (g - sg - (xr[c] - m) * rs * sgx));
            }
        }
    }
    if (dgamma || dbeta) {
        int64_t nb = (C + CBLK - 1) / CBLK;
#pragma omp parallel for schedule(static) if (R * C >= LM_CPU_PAR_MIN)
        for (int64_t bk = 0; bk < nb; bk++) {
            int64_t c0 = bk * CBLK, c1 = c0 + CBLK < C ? c0 + CBLK : C;
            double sg[CBLK] = {0}, sb[CBLK] = {0};
            for (int64_t r = 0; r < R; r++)
                for (int64_t c = c0; c < c1; c++) {
                    double xh = (x[r * C + c] - (double)mean[r]) * rstd[r];
                    sg[c - c0] += dy[r * C + c] * xh;
                    sb[c - c0] += dy[r * C + c];
                }
            for (int64_t c = c0; c < c1; c++) {
                if (dgamma)
                    dgamma[c] += (float)sg[c - c0];
                if (dbeta)
                    dbeta[c] += (float)sb[c - c0];
            }
        }
    }
    return 0;
}

int lm_cpu_rmsnorm_fwd(lm_backend *be, float *y, const float *x, const float *g,
                       const lm_rownorm_args *a)
{
    (void)be;
    if (rn_check(a, "rmsnorm") < 0)
        return -1;
    const int64_t R = a->rows, C = a->cols;
#pragma omp parallel for schedule(static) if (R * C >= LM_CPU_PAR_MIN)
    for (int64_t r = 0; r < R; r++) {
        const float *xr = x + r * C;
        float *yr = y + r * C;
        double ms = 0;
        for (int64_t c = 0; c < C; c++)
            ms += (double)xr[c] * xr[c];
        double rs = 1.0 / sqrt(ms / (double)C + a->eps);
        /* HF: normalise in fp32, cast to the compute dtype (f32 here), then times the weight */
        for (int64_t c = 0; c < C; c++)
            yr[c] = g[c] * (float)(xr[c] * rs);
    }
    return 0;
}

int lm_cpu_rmsnorm_bwd(lm_backend *be, float *dx, const float *dy, const float *x, const float *g,
                       const lm_rownorm_args *a)
{
    (void)be;
    if (rn_check(a, "rmsnorm") < 0)
        return -1;
    if (!dx)
        return 0;
    const int64_t R = a->rows, C = a->cols;
#pragma omp parallel for schedule(static) if (R * C >= LM_CPU_PAR_MIN)
    for (int64_t r = 0; r < R; r++) {
        const float *xr = x + r * C, *gr = dy + r * C;
        double ms = 0, dot = 0;
        for (int64_t c = 0; c < C; c++) {
            ms += (double)xr[c] * xr[c];
            dot += (double)gr[c] * g[c] * xr[c];
        }
        double rs = 1.0 / sqrt(ms / (double)C + a->eps);
        double k = rs * rs * rs * dot / (double)C;
        for (int64_t c = 0; c < C; c++)
            dx[r * C + c] += (float)(rs * (double)gr[c] * g[c] - k * xr[c]);
    }
    return 0;
}
