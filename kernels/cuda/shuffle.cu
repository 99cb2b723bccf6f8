/* shuffle.cu — data movement between the token and volume layouts on CUDA (own kernels): voxel
 * shuffle / unshuffle (the index map of MODEL.md §6 in common/lm_kmath.h, one thread per token
 * element, reads or writes of tokens coalesced), a 32×32 shared-memory tiled transpose, and
 * channel concat (device-to-device copies) / split (accumulating adds). Each output element is
 * written by one thread, so the results are bit-identical to the CPU's.
 * Not here: any arithmetic beyond `+=` for the adjoints.
 */
#include "cuda.cuh"

namespace lm_cu_shuffle
{

struct shuffle_f {
    float *vol;
    const float *tok;
    int64_t Ct, d, h, w, f;
    int acc;
    __device__ void operator()(int64_t t) const
    {
        int64_t l = t / Ct, c = t % Ct;
        int64_t o = lm_k_shuffle_vol_index(l, c, d, h, w, f);
        vol[o] = acc ? vol[o] + tok[t] : tok[t];
    }
};

struct unshuffle_f {
    float *tok;
    const float *vol;
    int64_t Ct, d, h, w, f;
    int acc;
    __device__ void operator()(int64_t t) const
    {
        int64_t l = t / Ct, c = t % Ct;
        float v = vol[lm_k_shuffle_vol_index(l, c, d, h, w, f)];
        tok[t] = acc ? tok[t] + v : v;
    }
};

struct add_into_f {
    float *d;
    const float *s;
    __device__ void operator()(int64_t i) const { d[i] += s[i]; }
};

#define TILE 32
#define TROWS 8

/* y [cols,rows] (=/+=) xᵀ; tiles flattened over grid.x (row tile major) */
__global__ void transpose_kernel(float *y, const float *x, int64_t rows, int64_t cols, int acc)
{
    __shared__ float t[TILE][TILE + 1];
    const int64_t tr = (rows + TILE - 1) / TILE, tc = (cols + TILE - 1) / TILE;
    for (int64_t b = blockIdx.x; b < tr * tc; b += gridDim.x) {
        const int64_t r0 = (b / tc) * TILE, c0 = (b % tc) * TILE;
        for (int k = threadIdx.y; k < TILE; k += TROWS) {
            int64_t r = r0 + k, c = c0 + threadIdx.x;
            if (r < rows && c < cols)
                t[k][threadIdx.x] = x[r * cols + c];
        }
        __syncthreads();
        for (int k = threadIdx.y; k < TILE; k += TROWS) {
            int64_t c = c0 + k, r = r0 + threadIdx.x; /* output row c, column r */
            if (r < rows && c < cols) {
                float v = t[threadIdx.x][k];
                y[c * rows + r] = acc ? y[c * rows + r] + v : v;
            }
        }
        __syncthreads();
    }
}

} // namespace lm_cu_shuffle

using namespace lm_cu_shuffle;

static int sh_check(const lm_shuffle_args *a)
{
    LM_CU_ARG(a->C > 0 && a->d > 0 && a->h > 0 && a->w > 0 && a->f > 0,
              "voxel_shuffle: bad shape C=%d grid %dx%dx%d f=%d", a->C, a->d, a->h, a->w, a->f);
    return 0;
}

extern "C" int lm_cuda_voxel_shuffle(lm_backend *be, float *vol, const float *tok,
                                     const lm_shuffle_args *a)
{
    if (sh_check(a) < 0)
        return -1;
    LM_CU_ENTER(be);
    const int64_t f = a->f, L = (int64_t)a->d * a->h * a->w, Ct = (int64_t)a->C * f * f * f;
    return lm_cu_map(be, L * Ct, shuffle_f{vol, tok, Ct, a->d, a->h, a->w, f, a->accumulate},
                     "voxel_shuffle");
}

extern "C" int lm_cuda_voxel_unshuffle(lm_backend *be, float *tok, const float *vol,
                                       const lm_shuffle_args *a)
{
    if (sh_check(a) < 0)
        return -1;
    LM_CU_ENTER(be);
    const int64_t f = a->f, L = (int64_t)a->d * a->h * a->w, Ct = (int64_t)a->C * f * f * f;
    return lm_cu_map(be, L * Ct, unshuffle_f{tok, vol, Ct, a->d, a->h, a->w, f, a->accumulate},
                     "voxel_unshuffle");
}

extern "C" int lm_cuda_transpose(lm_backend *be, float *y, const float *x, int64_t rows,
                                 int64_t cols, int accumulate)
{
    LM_CU_ARG(rows >= 0 && cols >= 0, "transpose: negative size");
    LM_CU_ENTER(be);
    if (rows == 0 || cols == 0)
        return 0;
    int64_t nt = ((rows + TILE - 1) / TILE) * ((cols + TILE - 1) / TILE);
    dim3 blk(TILE, TROWS);
    transpose_kernel<<<(unsigned)(nt < (1 << 20) ? nt : (1 << 20)), blk, 0, lm_cu(be)->stream>>>(
        y, x, rows, cols, accumulate);
    LM_CU_LAUNCHED(be);
    return 0;
}

extern "C" int lm_cuda_concat(lm_backend *be, float *y, const float *const *xs,
                              const int64_t *channels, int n, int64_t N)
{
    LM_CU_ARG(n >= 0 && N >= 0, "concat: bad sizes");
    for (int i = 0; i < n; i++)
        LM_CU_ARG(channels[i] >= 0, "concat: negative channel count");
    LM_CU_ENTER(be);
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        if (channels[i] * N > 0)
            LM_CU_CHECK(cudaMemcpyAsync(y + off * N, xs[i], (size_t)(channels[i] * N) * sizeof *y,
                                        cudaMemcpyDeviceToDevice, lm_cu(be)->stream));
        off += channels[i];
    }
    return 0;
}

extern "C" int lm_cuda_split(lm_backend *be, float *const *dxs, const float *dy,
                             const int64_t *channels, int n, int64_t N)
{
    LM_CU_ARG(n >= 0 && N >= 0, "split: bad sizes");
    for (int i = 0; i < n; i++)
        LM_CU_ARG(channels[i] >= 0, "split: negative channel count");
    LM_CU_ENTER(be);
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        if (dxs[i] && lm_cu_map(be, channels[i] * N, add_into_f{dxs[i], dy + off * N}, "split") < 0)
            return -1;
        off += channels[i];
    }
    return 0;
}
