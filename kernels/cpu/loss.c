/* loss.c — the training loss of MODEL.md §9 on the CPU: one-hot encoding of integer labels,
 * soft Dice over kept classes (MambaMorph Dice) and the L2 gradient loss of a flow (vxm Grad),
 * forward and backward. Sums are in double over fixed chunks, added in chunk order.
 * Not here: evaluation metrics (hard Dice, HD95, Jacobians: libcommon/model or tools).
 */
#include "cpu.h"

#include <string.h>

int lm_cpu_onehot(lm_backend *be, float *y, const int32_t *labels, const lm_onehot_args *a)
{
    (void)be;
    LM_CPU_CHECK(a->K > 0 && a->N >= 0 && a->values, "onehot: bad arguments K=%d N=%lld", a->K,
                 (long long)a->N);
    const int64_t N = a->N;
#pragma omp parallel for schedule(static) if (N * a->K >= LM_CPU_PAR_MIN)
    for (int64_t i = 0; i < N; i++)
        for (int k = 0; k < a->K; k++)
            y[k * N + i] = labels[i] == a->values[k] ? 1.0f : 0.0f;
    return 0;
}

/* top[k] = 2 Σ t·p, bot[k] = Σ (t + p), chunked */
static int dice_sums(double *top, double *bot, const float *pred, const float *target,
                     const lm_dice_args *a)
{
    const int64_t N = a->N, K = a->K, nch = (N + LM_CPU_CHUNK - 1) / LM_CPU_CHUNK;
    double *part = lm_cpu_scratch((size_t)(2 * K * (nch ? nch : 1)) * sizeof *part);
    if (!part)
        return -1;
#pragma omp parallel for collapse(2) schedule(static) if (N * K >= LM_CPU_PAR_MIN)
    for (int64_t k = 0; k < K; k++)
        for (int64_t c = 0; c < nch; c++) {
            const float *p = pred + k * N, *t = target + k * N;
            int64_t e = (c + 1) * LM_CPU_CHUNK < N ? (c + 1) * LM_CPU_CHUNK : N;
            double st = 0, sb = 0;
            for (int64_t i = c * LM_CPU_CHUNK; i < e; i++) {
                st += (double)t[i] * p[i];
                sb += (double)t[i] + p[i];
            }
            part[2 * (k * nch + c)] = st;
            part[2 * (k * nch + c) + 1] = sb;
        }
    for (int64_t k = 0; k < K; k++) {
        double st = 0, sb = 0;
        for (int64_t c = 0; c < nch; c++) {
            st += part[2 * (k * nch + c)];
            sb += part[2 * (k * nch + c) + 1];
        }
        top[k] = 2.0 * st;
        bot[k] = sb;
    }
    lm_cpu_scratch_free(part);
    return 0;
}

static int dice_check(const lm_dice_args *a)
{
    LM_CPU_CHECK(a->K > 0 && a->N > 0 && a->kept, "dice_loss: bad arguments K=%d N=%lld", a->K,
                 (long long)a->N);
    int nk = 0;
    for (int k = 0; k < a->K; k++)
        nk += a->kept[k] != 0;
    LM_CPU_CHECK(nk > 0, "dice_loss: every class is ignored");
    return nk;
}

int lm_cpu_dice_loss_fwd(lm_backend *be, float *loss, float *dice, const float *pred,
                         const float *target, const lm_dice_args *a)
{
    (void)be;
    int nk = dice_check(a);
    if (nk < 0)
        return -1;
    double *s = lm_cpu_scratch((size_t)(2 * a->K) * sizeof *s);
    if (!s)
        return -1;
    if (dice_sums(s, s + a->K, pred, target, a) < 0) {
        lm_cpu_scratch_free(s);
        return -1;
    }
    double m = 0;
    for (int k = 0; k < a->K; k++) {
        double b = s[a->K + k] > 1e-5 ? s[a->K + k] : 1e-5;
        double d = s[k] / b;
        if (dice)
            dice[k] = (float)d;
        if (a->kept[k])
            m += d;
    }
    loss[0] = (float)(-m / nk);
    lm_cpu_scratch_free(s);
    return 0;
}

int lm_cpu_dice_loss_bwd(lm_backend *be, float *dpred, const float *pred, const float *target,
                         float dloss, const lm_dice_args *a)
{
    (void)be;
    int nk = dice_check(a);
    if (nk < 0)
        return -1;
    if (!dpred)
        return 0;
    double *s = lm_cpu_scratch((size_t)(2 * a->K) * sizeof *s);
    if (!s)
        return -1;
    if (dice_sums(s, s + a->K, pred, target, a) < 0) {
        lm_cpu_scratch_free(s);
        return -1;
    }
    const int64_t N = a->N;
    for (int k = 0; k < a->K; k++) {
        if (!a->kept[k])
            continue;
        double top = s[k], sb = s[a->K + k], b = sb > 1e-5 ? sb : 1e-5;
        double g = -(double)dloss / nk;
        /* d(top/b)/dp_i = 2 t_i / b − top/b² · [b not clamped] */
        double c1 = g * 2.0 / b, c0 = sb > 1e-5 ? -g * top / (b * b) : 0.0;
        const float *t = target + k * N;
        float *d = dpred + k * N;
#pragma omp parallel for schedule(static) if (N >= LM_CPU_PAR_MIN)
        for (int64_t i = 0; i < N; i++)
            d[i] += (float)(c1 * t[i] + c0);
    }
    lm_cpu_scratch_free(s);
    return 0;
}

static int gl_check(const lm_vol_args *a)
{
    LM_CPU_CHECK(a->C > 0 && a->D > 0 && a->H > 0 && a->W > 0, "grad_l2: bad shape C=%d %dx%dx%d",
                 a->C, a->D, a->H, a->W);
    return 0;
}

int lm_cpu_grad_l2_fwd(lm_backend *be, float *loss, const float *flow, const lm_vol_args *a)
{
    (void)be;
    if (gl_check(a) < 0)
        return -1;
    const int64_t C = a->C, D = a->D, H = a->H, W = a->W, HW = H * W, nrow = C * D * H;
    double *part = lm_cpu_scratch((size_t)(3 * nrow) * sizeof *part);
    if (!part)
        return -1;
    /* one partial per (c, z, y) row, per axis */
#pragma omp parallel for schedule(static) if (nrow * W >= LM_CPU_PAR_MIN)
    for (int64_t r = 0; r < nrow; r++) {
        int64_t yy = r % H, z = (r / H) % D;
        const float *x = flow + r * W;
        double sd = 0, sh = 0, sw = 0;
        for (int64_t i = 0; i < W; i++) {
            if (z + 1 < D) {
                double d = (double)x[i + HW] - x[i];
                sd += d * d;
            }
            if (yy + 1 < H) {
                double d = (double)x[i + W] - x[i];
                sh += d * d;
            }
            if (i + 1 < W) {
                double d = (double)x[i + 1] - x[i];
                sw += d * d;
            }
        }
        part[3 * r] = sd, part[3 * r + 1] = sh, part[3 * r + 2] = sw;
    }
    double s[3] = {0, 0, 0};
    for (int64_t r = 0; r < nrow; r++)
        for (int k = 0; k < 3; k++)
            s[k] += part[3 * r + k];
    lm_cpu_scratch_free(part);
    double cnt[3] = {(double)C * (D - 1) * H * W, (double)C * D * (H - 1) * W,
                     (double)C * D * H * (W - 1)};
    double l = 0;
    for (int k = 0; k < 3; k++)
        if (cnt[k] > 0)
            l += s[k] / cnt[k];
    loss[0] = (float)(l / 3.0);
    return 0;
}

int lm_cpu_grad_l2_bwd(lm_backend *be, float *dflow, const float *flow, float dloss,
                       const lm_vol_args *a)
{
    (void)be;
    if (gl_check(a) < 0)
        return -1;
    if (!dflow)
        return 0;
    const int64_t C = a->C, D = a->D, H = a->H, W = a->W, HW = H * W, nrow = C * D * H;
    /* ∂/∂x_i of Σ_j (x_{j+1}−x_j)² / cnt = 2[(x_i−x_{i−1}) − (x_{i+1}−x_i)] / cnt */
    double k3[3] = {0, 0, 0};
    double cnt[3] = {(double)C * (D - 1) * H * W, (double)C * D * (H - 1) * W,
                     (double)C * D * H * (W - 1)};
    for (int k = 0; k < 3; k++)
        k3[k] = cnt[k] > 0 ? 2.0 * dloss / (3.0 * cnt[k]) : 0.0;
#pragma omp parallel for schedule(static) if (nrow * W >= LM_CPU_PAR_MIN)
    for (int64_t r = 0; r < nrow; r++) {
        int64_t yy = r % H, z = (r / H) % D;
        const float *x = flow + r * W;
        float *g = dflow + r * W;
        for (int64_t i = 0; i < W; i++) {
            double v = 0, xi = x[i];
            if (z > 0)
                v += k3[0] * (xi - x[i - HW]);
            if (z + 1 < D)
                v -= k3[0] * (x[i + HW] - xi);
            if (yy > 0)
                v += k3[1] * (xi - x[i - W]);
            if (yy + 1 < H)
                v -= k3[1] * (x[i + W] - xi);
            if (i > 0)
                v += k3[2] * (xi - x[i - 1]);
            if (i + 1 < W)
                v -= k3[2] * (x[i + 1] - xi);
            g[i] += (float)v;
        }
    }
    return 0;
}
