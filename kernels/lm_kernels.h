/* lm_kernels.h — the op library's API: buffers, the backend table and every op's contract.
 *
 * A backend (lm_backend) is a table of function pointers, one slot per op of ops.def plus the
 * buffer functions. lm_backend_cpu() returns the CPU reference table; a CUDA backend fills the
 * same slots. Callers never touch a buffer's memory directly: they allocate it with
 * lm_backend_alloc(), fill it with lm_backend_upload() and read it with lm_backend_download().
 * The pointers ops take are such buffers (device memory on CUDA, host memory on the CPU).
 *
 * Conventions for every op:
 *   - call as be->op(be, outputs..., inputs..., args) or LM_OP_CALL(be, op, ...);
 *   - returns 0, or a negative value with lm_error() set (bad shape, bad dtype, no memory);
 *   - all activations are f32; GEMM weights may be F32 or BF16 (lm_gemm_args.wdtype);
 *   - volumes are [C,D,H,W] with W fastest (batch 1, MODEL.md §0); tokens are [L,C] with C
 *     fastest; a flow is [3,D,H,W] in voxels of its own grid, channel 0 along D;
 *   - `=` means the output is overwritten; `+=` means it is accumulated into (the caller
 *     zeroes it first). Every *_bwd output is `+=` and may be NULL when that gradient is
 *     not wanted;
 *   - outputs may not alias inputs unless the contract says so.
 * Not here: the network (libcommon/model), host tensors (libcommon/io/lm_tensor.h).
 */
#ifndef LM_KERNELS_H
#define LM_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "io/lm_tensor.h" /* lm_dtype */

typedef struct lm_backend lm_backend;

/* ---- argument structs --------------------------------------------------------------------- */

typedef struct {
    int64_t M, N, K;   /* x [M,K], W [N,K], y [M,N] */
    lm_dtype wdtype;   /* LM_F32 or LM_BF16 */
    int accumulate;    /* 0: y = x·Wᵀ + b;  1: y += x·Wᵀ + b */
} lm_gemm_args;

typedef struct {
    int64_t batch, M, N, K;
    int trans_a, trans_b;         /* op(A) = A or Aᵀ: op(A) is [M,K], op(B) is [K,N] */
    float alpha, beta;            /* beta 0: C is not read */
    int64_t lda, ldb, ldc;        /* row-major leading dimensions */
    int64_t stride_a, stride_b, stride_c; /* elements between consecutive batch items */
} lm_gemm_batched_args;

typedef struct {
    int Cin, Cout;
    int D, H, W;  /* input grid; kernel 3, padding 1 */
    int stride;   /* 1 or 2; output grid (D-1)/stride+1 etc. */
} lm_conv3d_args;

typedef struct {
    int64_t C, N;    /* channels, samples per channel (voxels or tokens) */
    int token_major; /* 0: x is [C,N] (volume);  1: x is [N,C] (tokens) */
    float eps;       /* 1e-5 for MODEL.md */
} lm_instnorm_args;

typedef struct {
    int64_t rows, cols; /* normalised over cols, per row */
    float eps;
} lm_rownorm_args;

typedef struct {
    int64_t L;          /* positions 0..L-1 (plus pos0) */
    int n_heads, head_dim;
    float theta;        /* 500000 for Llama-3 */
    int64_t pos0;       /* position of row 0 (0 in MODEL.md) */
} lm_rope_args;

typedef struct {
    int64_t L;
    int n_q, n_kv, head_dim; /* n_q % n_kv == 0; q head h uses kv head h / (n_q/n_kv) */
    int causal;              /* 1: key j > query i is masked */
} lm_attn_args;

typedef struct {
    int C;           /* output channels co of the volume */
    int d, h, w;     /* token grid; L = d*h*w */
    int f;           /* factor >= 1; tokens are [L, C*f^3], volume [C, d*f, h*f, w*f] */
    int accumulate;  /* 0: =,  1: += */
} lm_shuffle_args;

typedef struct {
    int C;
    int D, H, W; /* grid of the op's input x */
} lm_vol_args;

enum { LM_PAD_ZEROS = 0, LM_PAD_BORDER = 1 };
/* Or'ed into lm_warp_args.padding, for warp_fwd with zeros padding and warp_nearest on the CPU:
 * src, flow and y are in NIfTI's array order [C,W,H,D] (D fastest) instead of [C,D,H,W]; the
 * values are voxel for voxel the same, bit for bit (lm-warp warps NIfTI files untransposed). */
enum { LM_WARP_NIFTI_ORDER = 0x100 };

typedef struct {
    int C;        /* source channels */
    int D, H, W;  /* grid of source, flow and output (all the same) */
    int padding;  /* LM_PAD_ZEROS or LM_PAD_BORDER (trilinear only) */
} lm_warp_args;

typedef struct {
    int K;                 /* classes */
    int64_t N;             /* voxels */
    const int32_t *values; /* host array of K label values; class k is label values[k] */
} lm_onehot_args;

typedef struct {
    int K;
    int64_t N;
    const uint8_t *kept;   /* host array of K flags: 1 = class enters the mean */
} lm_dice_args;

typedef struct {
    float lr, beta1, beta2, eps, weight_decay; /* MODEL.md: 1e-4, 0.9, 0.999, 1e-8, 0 */
    int64_t step;                              /* 1 for the first step (bias correction) */
} lm_adam_args;

/* ---- op function types: the contracts ----------------------------------------------------- */

/* gemm.c */
/* y [M,N] = x [M,K] · Wᵀ + b (or += with accumulate); W [N,K] F32 or BF16 (widened to f32);
 * b [N] or NULL. */
typedef int lm_op_gemm_fwd_fn(lm_backend *be, float *y, const float *x, const void *w,
                              const float *b, const lm_gemm_args *a);
/* dx [M,K] += dy·W; dw [N,K] += dyᵀ·x (W must be F32 if dw is wanted); db [N] += Σ_m dy. */
typedef int lm_op_gemm_bwd_fn(lm_backend *be, float *dx, float *dw, float *db, const float *dy,
                              const float *x, const void *w, const lm_gemm_args *a);
/* for i < batch: C_i = alpha·op(A_i)·op(B_i) + beta·C_i; row-major, f32. Its own adjoint:
 * dA = dC·op(B)ᵀ, dB = op(A)ᵀ·dC are calls of this op. */
typedef int lm_op_gemm_batched_fn(lm_backend *be, float *c, const float *a_, const float *b,
                                  const lm_gemm_batched_args *a);

/* conv3d.c */
/* y [Cout,Do,Ho,Wo] = conv3d(x [Cin,D,H,W], w [Cout,Cin,3,3,3]) + b [Cout] (b may be NULL);
 * kernel 3, padding 1 (zeros), stride 1 or 2; Do = (D-1)/stride+1. y is overwritten. */
typedef int lm_op_conv3d_fwd_fn(lm_backend *be, float *y, const float *x, const float *w,
                                const float *b, const lm_conv3d_args *a);
/* dx [Cin,D,H,W] +=, dw [Cout,Cin,27] +=, db [Cout] += the gradients from dy [Cout,Do,Ho,Wo]. */
typedef int lm_op_conv3d_bwd_fn(lm_backend *be, float *dx, float *dw, float *db, const float *dy,
                                const float *x, const float *w, const lm_conv3d_args *a);

/* act.c — n elements; forward outputs are overwritten (=) and may alias x (in place); backwards
 * accumulate, dx += dy·f'(x). */
/* y = max(x, 0); f'(0) = 0 */
typedef int lm_op_relu_fwd_fn(lm_backend *be, float *y, const float *x, int64_t n);
typedef int lm_op_relu_bwd_fn(lm_backend *be, float *dx, const float *dy, const float *x,
                              int64_t n);
/* y = x > 0 ? x : slope·x (MODEL.md: slope 0.01) */
typedef int lm_op_leaky_relu_fwd_fn(lm_backend *be, float *y, const float *x, float slope,
                                    int64_t n);
typedef int lm_op_leaky_relu_bwd_fn(lm_backend *be, float *dx, const float *dy, const float *x,
                                    float slope, int64_t n);
/* y = x·sigmoid(x) */
typedef int lm_op_silu_fwd_fn(lm_backend *be, float *y, const float *x, int64_t n);
typedef int lm_op_silu_bwd_fn(lm_backend *be, float *dx, const float *dy, const float *x,
                              int64_t n);
/* y = silu(g)·u (the LLaMA MLP gate); y may alias g or u. */
typedef int lm_op_swiglu_fwd_fn(lm_backend *be, float *y, const float *g, const float *u,
                                int64_t n);
/* dg += dy·u·silu'(g); du += dy·silu(g). */
typedef int lm_op_swiglu_bwd_fn(lm_backend *be, float *dg, float *du, const float *dy,
                                const float *g, const float *u, int64_t n);
/* y = x·Φ(x), the exact erf form (PyTorch nn.GELU default). */
typedef int lm_op_gelu_fwd_fn(lm_backend *be, float *y, const float *x, int64_t n);
typedef int lm_op_gelu_bwd_fn(lm_backend *be, float *dx, const float *dy, const float *x,
                              int64_t n);

/* norm.c */
/* Instance norm, affine=False: per channel over its N samples, biased variance;
 * y = (x-μ)·rstd, rstd = 1/√(σ²+eps). Layout per a->token_major. mean, rstd [C] (= ; either may
 * be NULL). y is overwritten and may alias x. */
typedef int lm_op_instnorm_fwd_fn(lm_backend *be, float *y, float *mean, float *rstd,
                                  const float *x, const lm_instnorm_args *a);
/* dx += rstd·(dy − mean(dy) − x̂·mean(dy·x̂)) per channel, x̂ = (x−mean)·rstd. */
typedef int lm_op_instnorm_bwd_fn(lm_backend *be, float *dx, const float *dy, const float *x,
                                  const float *mean, const float *rstd,
                                  const lm_instnorm_args *a);
/* Layer norm per row of x [rows,cols]: y = x̂·gamma + beta (gamma/beta [cols] may be NULL:
 * 1 and 0, i.e. the --in-mode=token instance norm). mean, rstd [rows] = (may be NULL). */
typedef int lm_op_layernorm_fwd_fn(lm_backend *be, float *y, float *mean, float *rstd,
                                   const float *x, const float *gamma, const float *beta,
                                   const lm_rownorm_args *a);
/* dx [rows,cols] +=, dgamma [cols] +=, dbeta [cols] +=. */
typedef int lm_op_layernorm_bwd_fn(lm_backend *be, float *dx, float *dgamma, float *dbeta,
                                   const float *dy, const float *x, const float *mean,
                                   const float *rstd, const float *gamma,
                                   const lm_rownorm_args *a);
/* RMSNorm (HF LlamaRMSNorm): y = g ⊙ (x·rsqrt(mean_cols(x²)+eps)), x [rows,cols], g [cols]
 * frozen. y is overwritten and may alias x. */
typedef int lm_op_rmsnorm_fwd_fn(lm_backend *be, float *y, const float *x, const float *g,
                                 const lm_rownorm_args *a);
/* dx += the gradient of y w.r.t. x (no dg: the weight is frozen). */
typedef int lm_op_rmsnorm_bwd_fn(lm_backend *be, float *dx, const float *dy, const float *x,
                                 const float *g, const lm_rownorm_args *a);

/* rope_attn.c */
/* RoPE, HF rotate_half: x [L, n_heads, head_dim]; for i < head_dim/2, position p = pos0+l,
 * ang = p·theta^(-2i/head_dim) (fp32 as HF): y[i] = x[i]·cos − x[i+h/2]·sin,
 * y[i+h/2] = x[i+h/2]·cos + x[i]·sin. y is overwritten and may alias x. */
typedef int lm_op_rope_fwd_fn(lm_backend *be, float *y, const float *x, const lm_rope_args *a);
/* dx += Rᵀ·dy (the inverse rotation); dx may not alias dy. */
typedef int lm_op_rope_bwd_fn(lm_backend *be, float *dx, const float *dy, const lm_rope_args *a);
/* Attention with GQA: q [L, n_q·hd], k, v [L, n_kv·hd], o [L, n_q·hd] (token-major, head h at
 * columns h·hd..); S = q_h k_gᵀ/√hd, optional causal mask, P = softmax_row(S) (fp32 out,
 * double inside), o_h = P v_g. p [n_q, L, L] receives P (=) for the backward. o is overwritten. */
typedef int lm_op_attention_fwd_fn(lm_backend *be, float *o, float *p, const float *q,
                                   const float *k, const float *v, const lm_attn_args *a);
/* dq [L,n_q·hd] +=, dk, dv [L,n_kv·hd] += from dout [L,n_q·hd]; p from attention_fwd. */
typedef int lm_op_attention_bwd_fn(lm_backend *be, float *dq, float *dk, float *dv,
                                   const float *dout, const float *q, const float *k,
                                   const float *v, const float *p, const lm_attn_args *a);

/* shuffle.c — pure permutations; each is the other's adjoint (use accumulate=1 there). */
/* Voxel shuffle (depth-to-space, MODEL.md §6): token (i,j,k) = l = (i·h+j)·w+k, channel
 * c = co·f³ + (p1·f+p2)·f + p3  ->  vol[co, i·f+p1, j·f+p2, k·f+p3].
 * tok [L, C·f³] -> vol [C, d·f, h·f, w·f]. f = 1 is the token -> volume transpose. */
typedef int lm_op_voxel_shuffle_fn(lm_backend *be, float *vol, const float *tok,
                                   const lm_shuffle_args *a);
/* The inverse map: vol [C, d·f, h·f, w·f] -> tok [L, C·f³]. */
typedef int lm_op_voxel_unshuffle_fn(lm_backend *be, float *tok, const float *vol,
                                     const lm_shuffle_args *a);
/* y [cols,rows] (= or += with accumulate) xᵀ, x [rows,cols]; e.g. volume [C,L] <-> tokens
 * [L,C]. */
typedef int lm_op_transpose_fn(lm_backend *be, float *y, const float *x, int64_t rows,
                               int64_t cols, int accumulate);
/* y [Σ channels[i], N] = cat(xs[0] [channels[0],N], ...) along channels (=). xs and channels
 * are host arrays of n entries; xs[i] are buffers. */
typedef int lm_op_concat_fn(lm_backend *be, float *y, const float *const *xs,
                            const int64_t *channels, int n, int64_t N);
/* The adjoint of concat: dxs[i] [channels[i],N] += slice i of dy; a NULL dxs[i] is skipped. */
typedef int lm_op_split_fn(lm_backend *be, float *const *dxs, const float *dy,
                           const int64_t *channels, int n, int64_t N);

/* resample.c */
/* Trilinear ×2 upsampling, align_corners=False (nn.Upsample(scale_factor=2,'trilinear')):
 * x [C,D,H,W] -> y [C,2D,2H,2W], y overwritten. Flows: multiply by 2 afterwards (scale). */
typedef int lm_op_upsample2_fwd_fn(lm_backend *be, float *y, const float *x,
                                   const lm_vol_args *a);
/* dx [C,D,H,W] += adjoint applied to dy [C,2D,2H,2W]; a describes x. */
typedef int lm_op_upsample2_bwd_fn(lm_backend *be, float *dx, const float *dy,
                                   const lm_vol_args *a);
/* 2×2×2 average pooling, floor: x [C,D,H,W] -> y [C,D/2,H/2,W/2], y overwritten. */
typedef int lm_op_avgpool2_fwd_fn(lm_backend *be, float *y, const float *x, const lm_vol_args *a);
/* dx [C,D,H,W] += dy/8 spread over each 2×2×2 cell; a describes x. */
typedef int lm_op_avgpool2_bwd_fn(lm_backend *be, float *dx, const float *dy,
                                  const lm_vol_args *a);

/* warp.c (MODEL.md §8) */
/* Trilinear backward warp: y[c,p] = src[c, p + flow(p)]; flow [3,D,H,W] voxels, channel 0 along
 * D; corners outside [0,N-1] are 0 (LM_PAD_ZEROS, vxm SpatialTransformer / grid_sample
 * align_corners=True) or clamped (LM_PAD_BORDER). src, y [C,D,H,W]; y overwritten. */
typedef int lm_op_warp_fwd_fn(lm_backend *be, float *y, const float *src, const float *flow,
                              const lm_warp_args *a);
/* dsrc [C,D,H,W] += wᵀ·dy (scatter), dflow [3,D,H,W] += Σ_c dy·∂y/∂flow. */
typedef int lm_op_warp_bwd_fn(lm_backend *be, float *dsrc, float *dflow, const float *dy,
                              const float *src, const float *flow, const lm_warp_args *a);
/* Nearest warp: y[c,p] = src[c, round(p + flow(p))], round half to even, 0 outside (padding
 * must be LM_PAD_ZEROS). dt: LM_F32 or LM_I32 for both src and y. No gradient. */
typedef int lm_op_warp_nearest_fn(lm_backend *be, void *y, const void *src, const float *flow,
                                  lm_dtype dt, const lm_warp_args *a);
/* Composition ψ = r ⊕ U: ψ(p) = r(p) + U(p + r(p)), U sampled trilinearly with border padding
 * (MODEL.md §7.4). psi, r, u [3,D,H,W]; a->C must be 3 (padding ignored). psi overwritten. */
typedef int lm_op_compose_fwd_fn(lm_backend *be, float *psi, const float *r, const float *u,
                                 const lm_vol_args *a);
/* dr +=, du += from dpsi. */
typedef int lm_op_compose_bwd_fn(lm_backend *be, float *dr, float *du, const float *dpsi,
                                 const float *r, const float *u, const lm_vol_args *a);

/* loss.c (MODEL.md §9) */
/* y [K,N] f32 = (labels[i] == values[k]); labels [N] i32. y overwritten. */
typedef int lm_op_onehot_fn(lm_backend *be, float *y, const int32_t *labels,
                            const lm_onehot_args *a);
/* Soft Dice (MambaMorph Dice): top_k = 2Σ t·p, bottom_k = max(Σ(t+p), 1e-5),
 * loss[0] = −mean_{k kept} top_k/bottom_k (=); dice [K] = top_k/bottom_k (= , may be NULL).
 * pred, target [K,N]. */
typedef int lm_op_dice_loss_fwd_fn(lm_backend *be, float *loss, float *dice, const float *pred,
                                   const float *target, const lm_dice_args *a);
/* dpred [K,N] += dloss·∂loss/∂pred (dloss a host scalar). */
typedef int lm_op_dice_loss_bwd_fn(lm_backend *be, float *dpred, const float *pred,
                                   const float *target, float dloss, const lm_dice_args *a);
/* Grad_L2 (vxm Grad('l2')): loss[0] = (1/3) Σ_axes mean over channels and valid positions of
 * (forward difference)²; flow [C,D,H,W]. An axis of size 1 contributes 0 (PyTorch: NaN). */
typedef int lm_op_grad_l2_fwd_fn(lm_backend *be, float *loss, const float *flow,
                                 const lm_vol_args *a);
/* dflow += dloss·∂loss/∂flow. */
typedef int lm_op_grad_l2_bwd_fn(lm_backend *be, float *dflow, const float *flow, float dloss,
                                 const lm_vol_args *a);

/* optim.c */
/* Adam (PyTorch, bias-corrected, L2 weight decay added to g): m = β1 m + (1-β1) g;
 * v = β2 v + (1-β2) g²; p -= lr/(1-β1^t) · m / (√v/√(1-β2^t) + eps). p, m, v updated in place;
 * g [n] read only. */
typedef int lm_op_adam_step_fn(lm_backend *be, float *p, float *m, float *v, const float *g,
                               int64_t n, const lm_adam_args *a);

/* elementwise.c — n elements; outputs may alias inputs; = unless marked +=. */
/* y = a + b */
typedef int lm_op_add_fn(lm_backend *be, float *y, const float *a_, const float *b, int64_t n);
/* y = a ⊙ b */
typedef int lm_op_mul_fn(lm_backend *be, float *y, const float *a_, const float *b, int64_t n);
/* y = alpha·x */
typedef int lm_op_scale_fn(lm_backend *be, float *y, const float *x, float alpha, int64_t n);
/* y += alpha·x */
typedef int lm_op_axpy_fn(lm_backend *be, float *y, const float *x, float alpha, int64_t n);
/* y = value */
typedef int lm_op_fill_fn(lm_backend *be, float *y, float value, int64_t n);
/* y = x */
typedef int lm_op_copy_fn(lm_backend *be, float *y, const float *x, int64_t n);
/* y (ydt) = x (xdt) converted; dtypes F32, BF16, F16, I32, U8; floats to integers round half
 * to even and saturate, NaN -> 0. y may not alias x. */
typedef int lm_op_cast_fn(lm_backend *be, void *y, lm_dtype ydt, const void *x, lm_dtype xdt,
                          int64_t n);
/* out[0] = Σ x, in double with a fixed order (= ; out is a buffer of 1 float). */
typedef int lm_op_sum_fn(lm_backend *be, float *out, const float *x, int64_t n);
/* out[0] = Σ x / n, the sum as above, in double (= ; n > 0, else an error) */
typedef int lm_op_mean_fn(lm_backend *be, float *out, const float *x, int64_t n);
/* out[0] = max |x| (NaN if any x is NaN; 0 for n = 0). */
typedef int lm_op_max_abs_fn(lm_backend *be, float *out, const float *x, int64_t n);

/* ---- the backend table -------------------------------------------------------------------- */

enum { LM_BACKEND_CPU = 0, LM_BACKEND_CUDA = 1 };

struct lm_backend {
    const char *name; /* "cpu", "cuda:0" */
    int kind;         /* LM_BACKEND_* */
    void *ctx;        /* backend-private state (streams, handles, workspaces) */
    /* buffers: alloc returns 64-byte aligned memory with undefined contents, or NULL */
    void *(*alloc)(lm_backend *be, size_t nbytes);
    void (*free)(lm_backend *be, void *p); /* accepts NULL */
    /* optional (NULL: alloc, then the fill op): as alloc, zeroed; the CPU's leaves untouched
     * pages to the kernel's zero-fill, so memory never used costs nothing */
    void *(*alloc_zero)(lm_backend *be, size_t nbytes);
    int (*upload)(lm_backend *be, void *dst, const void *host_src, size_t nbytes);
    int (*download)(lm_backend *be, void *host_dst, const void *src, size_t nbytes);
    int (*sync)(lm_backend *be);
    int (*set_threads)(lm_backend *be, int n); /* CPU: OpenMP and OpenBLAS threads */
#define LM_OP(name, family, grad) lm_op_##name##_fn *name;
#include "ops.def"
};

#define LM_OP_CALL(be, op, ...) ((be)->op((be), __VA_ARGS__))

/* The CPU reference backend (a static table; never freed). */
lm_backend *lm_backend_cpu(void);

/* Thin wrappers over the table (set lm_error on failure). */
void *lm_backend_alloc(lm_backend *be, size_t nbytes);
/* As lm_backend_alloc, the buffer zeroed (nbytes a multiple of 4 without an alloc_zero slot). */
void *lm_backend_alloc_zero(lm_backend *be, size_t nbytes);
void lm_backend_free(lm_backend *be, void *p);
int lm_backend_upload(lm_backend *be, void *dst, const void *host_src, size_t nbytes);
int lm_backend_download(lm_backend *be, void *host_dst, const void *src, size_t nbytes);
int lm_backend_sync(lm_backend *be);
int lm_backend_set_threads(lm_backend *be, int n);
/* 0 when every slot is filled, else -1 with lm_error naming the first empty one. */
int lm_backend_check(const lm_backend *be);

/* The ops of ops.def, in order. */
enum {
#define LM_OP(name, family, grad) LM_OPID_##name,
#include "ops.def"
    LM_OP_COUNT
};
typedef struct {
    const char *name;
    const char *family;
    const char *grad; /* "FD", "LINEAR" or "NONE" */
} lm_op_info;
extern const lm_op_info lm_op_table[LM_OP_COUNT];

#endif
