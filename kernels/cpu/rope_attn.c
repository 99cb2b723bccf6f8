/* rope_attn.c — rotary position embedding (HF rotate_half) and multi-head attention with
 * grouped KV heads on the CPU: per head, S = q kᵀ/√hd and P·v through OpenBLAS sgemm, softmax
 * per row in double. Heads run one after another (so the GQA gradients of a shared KV head are
 * summed in head order); rows of a softmax run in parallel. Memory O(n_q·L²) for P.
 * Not here: the q/k/v/o projections (gemm.c), flash-style tiling, KV caches.
 */
#include "cpu.h"

#include <math.h>
#include <string.h>

static int rope_check(const lm_rope_args *a)
{
    LM_CPU_CHECK(a->L >= 0 && a->n_heads > 0 && a->head_dim > 0 && a->head_dim % 2 == 0,
                 "rope: bad shape L=%lld heads=%d head_dim=%d (must be even)", (long long)a->L,
                 a->n_heads, a->head_dim);
    LM_CPU_CHECK(a->theta > 0, "rope: theta must be > 0");
    LM_CPU_CHECK(a->pos0 >= 0, "rope: pos0 must be >= 0");
    return 0;
}

/* cos/sin [L, hd/2], computed in fp32 exactly as HF LlamaRotaryEmbedding does. */
static float *rope_table(const lm_rope_args *a)
{
    int half = a->head_dim / 2;
    float *t = lm_cpu_scratch((size_t)(2 * a->L * half + 1) * sizeof *t);
    if (!t)
        return NULL;
    float *cs = t, *sn = t + a->L * half;
    for (int i = 0; i < half; i++) {
        float inv = 1.0f / powf(a->theta, (float)(2 * i) / (float)a->head_dim);
        for (int64_t l = 0; l < a->L; l++) {
            float ang = (float)(a->pos0 + l) * inv;
            cs[l * half + i] = cosf(ang);
            sn[l * half + i] = sinf(ang);
        }
    }
    return t;
}

int lm_cpu_rope_fwd(lm_backend *be, float *y, const float *x, const lm_rope_args *a)
{
    (void)be;
    if (rope_check(a) < 0)
        return -1;
    float *t = rope_table(a);
    if (!t)
        return -1;
    const int half = a->head_dim / 2, hd = a->head_dim, nh = a->n_heads;
    const float *cs = t, *sn = t + a->L * half;
#pragma omp parallel for schedule(static) if (a->L * nh * hd >= LM_CPU_PAR_MIN)
    for (int64_t l = 0; l < a->L; l++) {
        for (int h = 0; h < nh; h++) {
            const float *xr = x + (l * nh + h) * hd;
            float *yr = y + (l * nh + h) * hd;
            for (int i = 0; i < half; i++) {
                float c = cs[l * half + i], s = sn[l * half + i];
                float x1 = xr[i], x2 = xr[i + half];
                /* HF: q*cos + rotate_half(q)*sin, each product rounded in fp32 */
                float a1 = x1 * c, b1 = -x2 * s, a2 = x2 * c, b2 = x1 * s;
                yr[i] = a1 + b1;
                yr[i + half] = a2 + b2;
            }
        }
    }
    lm_cpu_scratch_free(t);
    return 0;
}

int lm_cpu_rope_bwd(lm_backend *be, float *dx, const float *dy, const lm_rope_args *a)
{
    (void)be;
    if (rope_check(a) < 0)
        return -1;
    float *t = rope_table(a);
    if (!t)
        return -1;
    const int half = a->head_dim / 2, hd = a->head_dim, nh = a->n_heads;
    const float *cs = t, *sn = t + a->L * half;
#pragma omp parallel for schedule(static) if (a->L * nh * hd >= LM_CPU_PAR_MIN)
    for (int64_t l = 0; l < a->L; l++) {
        for (int h = 0; h < nh; h++) {
            const float *gr = dy + (l * nh + h) * hd;
            float *dr = dx + (l * nh + h) * hd;
            for (int i = 0; i < half; i++) {
                double c = cs[l * half + i], s = sn[l * half + i];
                double g1 = gr[i], g2 = gr[i + half];
                dr[i] += (float)(g1 * c + g2 * s);
                dr[i + half] += (float)(g2 * c - g1 * s);
            }
        }
    }
    lm_cpu_scratch_free(t);
    return 0;
}

static int attn_check(const lm_attn_args *a)
{
    LM_CPU_CHECK(a->L > 0 && a->n_q > 0 && a->n_kv > 0 && a->head_dim > 0 &&
                     a->n_q % a->n_kv == 0,
                 "attention: bad shape L=%lld n_q=%d n_kv=%d head_dim=%d", (long long)a->L,
                 a->n_q, a->n_kv, a->head_dim);
    LM_CPU_CHECK(a->L <= INT32_MAX && (int64_t)a->n_q * a->head_dim <= INT32_MAX,
                 "attention: too large for BLAS");
    return 0;
}

int lm_cpu_attention_fwd(lm_backend *be, float *o, float *p, const float *q, const float *k,
                         const float *v, const lm_attn_args *a)
{
    (void)be;
    if (attn_check(a) < 0)
        return -1;
    const int L = (int)a->L, hd = a->head_dim, rep = a->n_q / a->n_kv;
    const int ldq = a->n_q * hd, ldk = a->n_kv * hd;
    const float scale = (float)(1.0 / sqrt((double)hd));
    for (int h = 0; h < a->n_q; h++) {
        int g = h / rep;
        float *P = p + (int64_t)h * L * L;
        lm_cpu_sgemm(0, 1, L, L, hd, scale, q + h * hd, ldq,
                    k + g * hd, ldk, 0.0f, P, L);
#pragma omp parallel for schedule(static) if ((int64_t)L * L >= LM_CPU_PAR_MIN)
        for (int i = 0; i < L; i++) {
            float *row = P + (int64_t)i * L;
            int n = a->causal ? i + 1 : L;
            double mx = -INFINITY, s = 0;
            for (int j = 0; j < n; j++)
                mx = row[j] > mx ? row[j] : mx;
            for (int j = 0; j < n; j++)
                s += exp(row[j] - mx);
            for (int j = 0; j < n; j++)
                row[j] = (float)(exp(row[j] - mx) / s);
            for (int j = n; j < L; j++)
                row[j] = 0.0f;
        }
        lm_cpu_sgemm(0, 0, L, hd, L, 1.0f, P, L, v + g * hd,
                    ldk, 0.0f, o + h * hd, ldq);
    }
    return 0;
}

int lm_cpu_attention_bwd(lm_backend *be, float *dq, float *dk, float *dv, const float *dout,
                         const float *q, const float *k, const float *v, const float *p,
                         const lm_attn_args *a)
{
    (void)be;
    if (attn_check(a) < 0)
        return -1;
    const int L = (int)a->L, hd = a->head_dim, rep = a->n_q / a->n_kv;
    const int ldq = a->n_q * hd, ldk = a->n_kv * hd;
    const float scale = (float)(1.0 / sqrt((double)hd));
    float *dS = lm_cpu_scratch((size_t)L * L * sizeof *dS);
    if (!dS)
        return -1;
    for (int h = 0; h < a->n_q; h++) {
        int g = h / rep;
        const float *P = p + (int64_t)h * L * L;
        const float *dO = dout + h * hd;
        if (dv)
            lm_cpu_sgemm(1, 0, L, hd, L, 1.0f, P, L, dO, ldq,
                        1.0f, dv + g * hd, ldk);
        if (!dq && !dk)
            continue;
        /* dP = dO vᵀ, then dS = P ⊙ (dP − Σ_j P dP) */
        lm_cpu_sgemm(0, 1, L, L, hd, 1.0f, dO, ldq, v + g * hd,
                    ldk, 0.0f, dS, L);
#pragma omp parallel for schedule(static) if ((int64_t)L * L >= LM_CPU_PAR_MIN)
        for (int i = 0; i < L; i++) {
            const float *pr = P + (int64_t)i * L;
            float *dr = dS + (int64_t)i * L;
            double dot = 0;
            for (int j = 0; j < L; j++)
                dot += (double)pr[j] * dr[j];
            for (int j = 0; j < L; j++)
                dr[j] = (float)(pr[j] * (dr[j] - dot));
        }
        if (dq)
            lm_cpu_sgemm(0, 0, L, hd, L, scale, dS, L,
                        k + g * hd, ldk, 1.0f, dq + h * hd, ldq);
        if (dk)
            lm_cpu_sgemm(1, 0, L, hd, L, scale, dS, L,
                        q + h * hd, ldq, 1.0f, dk + g * hd, ldk);
    }
    lm_cpu_scratch_free(dS);
    return 0;
}
