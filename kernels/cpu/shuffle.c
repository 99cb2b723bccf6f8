/* shuffle.c — data movement between the token and volume layouts on the CPU: voxel shuffle /
 * unshuffle (depth-to-space, the index map of MODEL.md §6 in common/lm_kmath.h), 2-D transpose
 * ([C,L] <-> [L,C]) and channel concat / split. Each element is written by one thread only.
 * Not here: any arithmetic beyond `+=` for the adjoints.
 */
#include "cpu.h"

#include <string.h>

static int sh_check(const lm_shuffle_args *a)
{
    LM_CPU_CHECK(a->C > 0 && a->d > 0 && a->h > 0 && a->w > 0 && a->f > 0,
                 "voxel_shuffle: bad shape C=%d grid %dx%dx%d f=%d", a->C, a->d, a->h, a->w,
                 a->f);
    return 0;
}

int lm_cpu_voxel_shuffle(lm_backend *be, float *vol, const float *tok, const lm_shuffle_args *a)
{
    (void)be;
    if (sh_check(a) < 0)
        return -1;
    const int64_t f = a->f, L = (int64_t)a->d * a->h * a->w, Ct = (int64_t)a->C * f * f * f;
#pragma omp parallel for schedule(static) if (L * Ct >= LM_CPU_PAR_MIN)
    for (int64_t l = 0; l < L; l++) {
        const float *t = tok + l * Ct;
        for (int64_t c = 0; c < Ct; c++) {
            int64_t o = lm_k_shuffle_vol_index(l, c, a->d, a->h, a->w, f);
            vol[o] = a->accumulate ? vol[o] + t[c] : t[c];
        }
    }
    return 0;
}

int lm_cpu_voxel_unshuffle(lm_backend *be, float *tok, const float *vol,
                           const lm_shuffle_args *a)
{
    (void)be;
    if (sh_check(a) < 0)
        return -1;
    const int64_t f = a->f, L = (int64_t)a->d * a->h * a->w, Ct = (int64_t)a->C * f * f * f;
#pragma omp parallel for schedule(static) if (L * Ct >= LM_CPU_PAR_MIN)
    for (int64_t l = 0; l < L; l++) {
        float *t = tok + l * Ct;
        for (int64_t c = 0; c < Ct; c++) {
            float v = vol[lm_k_shuffle_vol_index(l, c, a->d, a->h, a->w, f)];
            t[c] = a->accumulate ? t[c] + v : v;
        }
    }
    return 0;
}

int lm_cpu_transpose(lm_backend *be, float *y, const float *x, int64_t rows, int64_t cols,
                     int accumulate)
{
    (void)be;
    LM_CPU_CHECK(rows >= 0 && cols >= 0, "transpose: negative size");
    const int64_t B = 32;
    int64_t nbc = (cols + B - 1) / B;
    /* parallel over blocks of output rows (= input columns) */
#pragma omp parallel for schedule(static) if (rows * cols >= LM_CPU_PAR_MIN)
    for (int64_t bc = 0; bc < nbc; bc++) {
        int64_t c0 = bc * B, c1 = c0 + B < cols ? c0 + B : cols;
        for (int64_t r0 = 0; r0 < rows; r0 += B) {
            int64_t r1 = r0 + B < rows ? r0 + B : rows;
            for (int64_t c = c0; c < c1; c++)
                for (int64_t r = r0; r < r1; r++) {
                    float v = x[r * cols + c];
                    y[c * rows + r] = accumulate ? y[c * rows + r] + v : v;
                }
        }
    }
    return 0;
}

int lm_cpu_concat(lm_backend *be, float *y, const float *const *xs, const int64_t *channels,
                  int n, int64_t N)
{
    (void)be;
    LM_CPU_CHECK(n >= 0 && N >= 0, "concat: bad sizes");
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        LM_CPU_CHECK(channels[i] >= 0, "concat: negative channel count");
        if (channels[i] * N > 0)
            memcpy(y + off * N, xs[i], (size_t)(channels[i] * N) * sizeof *y);
        off += channels[i];
    }
    return 0;
}

int lm_cpu_split(lm_backend *be, float *const *dxs, const float *dy, const int64_t *channels,
                 int n, int64_t N)
{
    (void)be;
    LM_CPU_CHECK(n >= 0 && N >= 0, "split: bad sizes");
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        LM_CPU_CHECK(channels[i] >= 0, "split: negative channel count");
        int64_t m = channels[i] * N;
        float *d = dxs[i];
        const float *s = dy + off * N;
        if (d) {
#pragma omp parallel for schedule(static) if (m >= LM_CPU_PAR_MIN)
            for (int64_t j = 0; j < m; j++)
                d[j] += s[j];
        }
        off += channels[i];
    }
    return 0;
}
