/* rope_attn.cu — rotary position embedding (HF rotate_half) and multi-head attention with
 * grouped KV heads on CUDA. RoPE is an own kernel (one thread per rotated pair; the inverse
 * frequencies are the CPU's, computed with host powf and passed as a kernel argument; angles
 * in fp32 as HF; cos/sin in double rounded once, which agrees with glibc's cosf/sinf to the
 * last bit in all but rare cases). Attention materialises P, as the op's
 * contract requires (p [n_q,L,L] is an output the backward consumes): S = q kᵀ/√hd and P·v
 * are cuBLAS strided-batched SGEMMs over the query heads of one KV group (the shared K/V head
 * has stride 0), the row softmax and its backward are own kernels in double, one block per
 * row. GQA gradients of a shared KV head are summed head by head, in head order.
 * Not here: the q/k/v/o projections (gemm.cu), a fused flash-style kernel (it would need a
 * contract without P), KV caches.
 */
#include "cuda.cuh"

#include <cmath>

namespace lm_cu_attn
{

#define ROPE_MAX_HALF 256

/* inverse frequencies 1/θ^(2i/hd), computed on the host with the CPU's powf so that both
 * backends start from the same fp32 values (a 1-ulp difference here would be multiplied by
 * the position); passed by value as a kernel argument */
struct rope_inv {
    float v[ROPE_MAX_HALF];
};

/* fp32 angle of position p, pair i, as HF computes it; cos/sin in double, rounded once */
__device__ inline void rope_cs(int64_t p, float inv, float *c, float *s)
{
    float ang = __fmul_rn((float)p, inv);
    *c = (float)cos((double)ang);
    *s = (float)sin((double)ang);
}

struct rope_fwd_f {
    float *y;
    const float *x;
    int64_t pos0;
    int nh, hd;
    rope_inv inv;
    __device__ void operator()(int64_t t) const
    {
        const int half = hd / 2;
        const int i = (int)(t % half);
        const int64_t row = t / half, l = row / nh; /* row = l·nh + h */
        float c, s;
        rope_cs(pos0 + l, inv.v[i], &c, &s);
        const float *xr = x + row * hd;
        float *yr = y + row * hd;
        float x1 = xr[i], x2 = xr[i + half];
        /* HF: q*cos + rotate_half(q)*sin, each product rounded in fp32 (no fma) */
        float a1 = __fmul_rn(x1, c), b1 = __fmul_rn(-x2, s), a2 = __fmul_rn(x2, c),
              b2 = __fmul_rn(x1, s);
        yr[i] = __fadd_rn(a1, b1);
        yr[i + half] = __fadd_rn(a2, b2);
    }
};

struct rope_bwd_f {
    float *dx;
    const float *dy;
    int64_t pos0;
    int nh, hd;
    rope_inv inv;
    __device__ void operator()(int64_t t) const
    {
        const int half = hd / 2;
        const int i = (int)(t % half);
        const int64_t row = t / half, l = row / nh;
        float cf, sf;
        rope_cs(pos0 + l, inv.v[i], &cf, &sf);
        double c = cf, s = sf, g1 = dy[row * hd + i], g2 = dy[row * hd + i + half];
        dx[row * hd + i] += (float)(g1 * c + g2 * s);
        dx[row * hd + i + half] += (float)(g2 * c - g1 * s);
    }
};

/* one block per row r = h·L + i of P [n_q·L, L]: masked softmax in double, in place */
__global__ void softmax_rows_kernel(float *P, int64_t rows, int64_t L, int causal)
{
    __shared__ double sh[LM_CU_THREADS];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        float *row = P + r * L;
        const int64_t n = causal ? r % L + 1 : L;
        double mx = -INFINITY;
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
            mx = row[j] > mx ? row[j] : mx;
        sh[threadIdx.x] = mx;
        __syncthreads();
        for (int w = blockDim.x / 2; w > 0; w >>= 1) {
            if ((int)threadIdx.x < w)
                sh[threadIdx.x] =
                    sh[threadIdx.x + w] > sh[threadIdx.x] ? sh[threadIdx.x + w] : sh[threadIdx.x];
            __syncthreads();
        }
        mx = sh[0];
        __syncthreads();
        double s = 0;
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
            s += exp(row[j] - mx);
        double acc[1] = {s};
        lm_cu_block_sum<1>(acc);
        if (threadIdx.x == 0)
            sh[0] = acc[0];
        __syncthreads();
        s = sh[0];
        __syncthreads();
        for (int64_t j = threadIdx.x; j < L; j += blockDim.x)
            row[j] = j < n ? (float)(exp(row[j] - mx) / s) : 0.0f;
    }
}

/* dS = P ⊙ (dP − Σ_j P·dP) per row, in place in dS; rows of one KV group */
__global__ void softmax_bwd_rows_kernel(float *dS, const float *P, int64_t rows, int64_t L)
{
    __shared__ double bc;
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *pr = P + r * L;
        float *dr = dS + r * L;
        double dot = 0;
        for (int64_t j = threadIdx.x; j < L; j += blockDim.x)
            dot += (double)pr[j] * dr[j];
        double acc[1] = {dot};
        lm_cu_block_sum<1>(acc);
        if (threadIdx.x == 0)
            bc = acc[0];
        __syncthreads();
        dot = bc;
        __syncthreads();
        for (int64_t j = threadIdx.x; j < L; j += blockDim.x)
            dr[j] = (float)(pr[j] * (dr[j] - dot));
    }
}

} // namespace lm_cu_attn

using namespace lm_cu_attn;

static int rope_check(const lm_rope_args *a)
{
    LM_CU_ARG(a->L >= 0 && a->n_heads > 0 && a->head_dim > 0 && a->head_dim % 2 == 0,
              "rope: bad shape L=%lld heads=%d head_dim=%d (must be even)", (long long)a->L,
              a->n_heads, a->head_dim);
    LM_CU_ARG(a->theta > 0, "rope: theta must be > 0");
    LM_CU_ARG(a->pos0 >= 0, "rope: pos0 must be >= 0");
    LM_CU_ARG(a->head_dim / 2 <= ROPE_MAX_HALF, "rope: head_dim %d > %d is not supported on CUDA",
              a->head_dim, 2 * ROPE_MAX_HALF);
    return 0;
}

static rope_inv rope_table(const lm_rope_args *a)
{
    rope_inv t = {};
    for (int i = 0; i < a->head_dim / 2; i++)
        t.v[i] = 1.0f / powf(a->theta, (float)(2 * i) / (float)a->head_dim);
    return t;
}

extern "C" int lm_cuda_rope_fwd(lm_backend *be, float *y, const float *x, const lm_rope_args *a)
{
    if (rope_check(a) < 0)
        return -1;
    LM_CU_ENTER(be);
    const int64_t n = a->L * a->n_heads * (a->head_dim / 2);
    return lm_cu_map(be, n, rope_fwd_f{y, x, a->pos0, a->n_heads, a->head_dim, rope_table(a)},
                     "rope_fwd");
}

extern "C" int lm_cuda_rope_bwd(lm_backend *be, float *dx, const float *dy, const lm_rope_args *a)
{
    if (rope_check(a) < 0)
        return -1;
    if (!dx)
        return 0;
    LM_CU_ENTER(be);
    const int64_t n = a->L * a->n_heads * (a->head_dim / 2);
    return lm_cu_map(be, n, rope_bwd_f{dx, dy, a->pos0, a->n_heads, a->head_dim, rope_table(a)},
                     "rope_bwd");
}

static int attn_check(const lm_attn_args *a)
{
    LM_CU_ARG(a->L > 0 && a->n_q > 0 && a->n_kv > 0 && a->head_dim > 0 && a->n_q % a->n_kv == 0,
              "attention: bad shape L=%lld n_q=%d n_kv=%d head_dim=%d", (long long)a->L, a->n_q,
              a->n_kv, a->head_dim);
    LM_CU_ARG(a->L <= INT32_MAX && (int64_t)a->n_q * a->head_dim <= INT32_MAX,
              "attention: too large for BLAS");
    return 0;
}

static unsigned row_blocks(int64_t R)
{
    return (unsigned)(R < (1 << 20) ? R : (1 << 20));
}

extern "C" int lm_cuda_attention_fwd(lm_backend *be, float *o, float *p, const float *q,
                                     const float *k, const float *v, const lm_attn_args *a)
{
    if (attn_check(a) < 0)
        return -1;
    LM_CU_ENTER(be);
    const int64_t L = a->L, hd = a->head_dim, rep = a->n_q / a->n_kv, LL = L * L;
    const int64_t ldq = (int64_t)a->n_q * hd, ldk = (int64_t)a->n_kv * hd;
    const float scale = (float)(1.0 / std::sqrt((double)hd));
    for (int g = 0; g < a->n_kv; g++) /* S_h = scale·q_h k_gᵀ for the rep heads of group g */
        if (lm_cu_sgemm(be, 0, 1, L, L, hd, scale, q + g * rep * hd, ldq, hd, k + g * hd, ldk, 0,
                        0.0f, p + g * rep * LL, L, LL, rep) < 0)
            return -1;
    softmax_rows_kernel<<<row_blocks(a->n_q * L), LM_CU_THREADS, 0, lm_cu(be)->stream>>>(
        p, a->n_q * L, L, a->causal);
    LM_CU_LAUNCHED(be);
    for (int g = 0; g < a->n_kv; g++) /* o_h = P_h v_g */
        if (lm_cu_sgemm(be, 0, 0, L, hd, L, 1.0f, p + g * rep * LL, L, LL, v + g * hd, ldk, 0, 0.0f,
                        o + g * rep * hd, ldq, hd, rep) < 0)
            return -1;
    return 0;
}

extern "C" int lm_cuda_attention_bwd(lm_backend *be, float *dq, float *dk, float *dv,
                                     const float *dout, const float *q, const float *k,
                                     const float *v, const float *p, const lm_attn_args *a)
{
    if (attn_check(a) < 0)
        return -1;
    LM_CU_ENTER(be);
    const int64_t L = a->L, hd = a->head_dim, rep = a->n_q / a->n_kv, LL = L * L;
    const int64_t ldq = (int64_t)a->n_q * hd, ldk = (int64_t)a->n_kv * hd;
    const float scale = (float)(1.0 / std::sqrt((double)hd));
    float *dS = NULL;
    if (dq || dk) {
        dS = (float *)lm_cu_scratch(be, LM_CU_S_A, (size_t)(rep * LL) * sizeof(float));
        if (!dS)
            return -1;
    }
    for (int g = 0; g < a->n_kv; g++) {
        const int64_t h0 = g * rep;
        const float *P = p + h0 * LL;
        if (dv) /* dv_g += Σ_h P_hᵀ dO_h, head by head */
            for (int64_t h = h0; h < h0 + rep; h++)
                if (lm_cu_sgemm(be, 1, 0, L, hd, L, 1.0f, p + h * LL, L, 0, dout + h * hd, ldq, 0,
                                1.0f, dv + g * hd, ldk, 0, 1) < 0)
                    return -1;
        if (!dq && !dk)
            continue;
        /* dP_h = dO_h v_gᵀ, then dS = P ⊙ (dP − Σ_j P dP) */
        if (lm_cu_sgemm(be, 0, 1, L, L, hd, 1.0f, dout + h0 * hd, ldq, hd, v + g * hd, ldk, 0, 0.0f,
                        dS, L, LL, rep) < 0)
            return -1;
        softmax_bwd_rows_kernel<<<row_blocks(rep * L), LM_CU_THREADS, 0, lm_cu(be)->stream>>>(
            dS, P, rep * L, L);
        LM_CU_LAUNCHED(be);
        if (dq && lm_cu_sgemm(be, 0, 0, L, hd, L, scale, dS, L, LL, k + g * hd, ldk, 0, 1.0f,
                              dq + h0 * hd, ldq, hd, rep) < 0)
            return -1;
        if (dk) /* dk_g += Σ_h scale·dS_hᵀ q_h, head by head */
            for (int64_t h = h0; h < h0 + rep; h++)
                if (lm_cu_sgemm(be, 1, 0, L, hd, L, scale, dS + (h - h0) * LL, L, 0, q + h * hd,
                                ldq, 0, 1.0f, dk + g * hd, ldk, 0, 1) < 0)
                    return -1;
    }
    return 0;
}
