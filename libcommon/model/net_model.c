/* net_model.c — the numbers of the network (MODEL.md §3–§9): encoder (shared, ReLU, no norm),
 * tokeniser (channel concat + flatten), LEBs (Adapter0 = [Linear→IN over tokens→LReLU]×2, then
 * the frozen LLM layer with LoRA), decoder adapters (Linear→IN→LReLU, voxel shuffle; variant F:
 * shuffle by f/2 then trilinear ×2), stages S4..S1 (CBL, flow heads, ×2 flow upsampling,
 * warps, composition or addition), the loss (Dice on trilinearly warped one-hot labels +
 * λ·Grad_L2 of the field used for warping), and the backward of all of it.
 * Every activation lives in a buffer of the plan (net_config.c); the backward walks the same
 * graph in reverse, accumulating (+=) into gradient buffers of the same names.
 * Not here: parameters, init and checkpoints (net_params.c). */
#include "io/lm_error.h"
#include "model/net_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TRY(x)                                                                                 \
    do {                                                                                       \
        if ((x) < 0)                                                                           \
            return -1;                                                                         \
    } while (0)

static const float SLOPE = 0.01f, EPS = 1e-5f;

int net_act_index(const lm_net *n, const char *name)
{
    for (int i = 0; i < n->plan.n; i++)
        if (!strcmp(n->plan.a[i].name, name))
            return n->alias[i] >= 0 ? n->alias[i] : i;
    return -1;
}

/* internal lookups: the plan fixes the names, so a miss is a bug; they abort loudly */
static int IDX(const lm_net *n, const char *name)
{
    int i = net_act_index(n, name);
    if (i < 0) {
        fprintf(stderr, "lm_net: no activation '%s'\n", name);
        abort();
    }
    return i;
}
static float *A(lm_net *n, const char *name)
{
    return n->act[IDX(n, name)];
}
static float *G(lm_net *n, const char *name)
{
    return n->grad[IDX(n, name)];
}
static const lm_net_act_info *INFO(const lm_net *n, const char *name)
{
    return &n->plan.a[IDX(n, name)];
}
static lm_net_param *P(lm_net *n, const char *name)
{
    lm_net_param *p = lm_net_param_find(n, name);
    if (!p) {
        fprintf(stderr, "lm_net: no parameter '%s'\n", name);
        abort();
    }
    return p;
}
static float *PV(lm_net *n, const char *name)
{
    return P(n, name)->value;
}
static float *PG(lm_net *n, const char *name)
{
    return P(n, name)->grad;
}

float *lm_net_act(lm_net *n, const char *name)
{
    if (!strcmp(name, "warped_onehot"))
        return n->have_loss ? n->oh_w : NULL;
    int i = net_act_index(n, name);
    return i < 0 ? NULL : n->act[i];
}

float *lm_net_act_grad(lm_net *n, const char *name)
{
    int i = net_act_index(n, name);
    return i < 0 ? NULL : n->grad[i];
}

static float *scratch(lm_net *n, int slot, int64_t numel)
{
    if (n->scr_cap[slot] < numel) {
        lm_backend_free(n->be, n->scr[slot]);
        n->scr[slot] = lm_backend_alloc(n->be, (size_t)numel * sizeof(float));
        n->scr_cap[slot] = n->scr[slot] ? numel : 0;
        if (!n->scr[slot])
            lm_error_set("out of memory (scratch of %lld floats)", (long long)numel);
    }
    return n->scr[slot];
}

static float *zeroed(lm_net *n, int slot, int64_t numel)
{
    float *p = scratch(n, slot, numel);
    if (p && LM_OP_CALL(n->be, fill, p, 0.0f, numel) < 0)
        return NULL;
    return p;
}

/* mean/rstd buffers of an instance-normalised output (2·C floats) */
static float *stat(lm_net *n, const char *name, int64_t C)
{
    int i = IDX(n, name);
    if (!n->stat[i] && !(n->stat[i] = lm_backend_alloc(n->be, (size_t)(2 * C) * sizeof(float))))
        lm_error_set("out of memory");
    return n->stat[i];
}

static void grid_of(const lm_net_act_info *a, int *g)
{
    g[0] = (int)a->shape[2];
    g[1] = (int)a->shape[3];
    g[2] = (int)a->shape[4];
}

static int64_t vox(const lm_net_act_info *a)
{
    return a->shape[2] * a->shape[3] * a->shape[4];
}

/* ---- blocks ----------------------------------------------------------------------------------- */

static int conv_fwd(lm_net *n, const char *y, const char *x, const char *w, const char *b,
                    int stride)
{
    const lm_net_act_info *ix = INFO(n, x), *iy = INFO(n, y);
    lm_conv3d_args a = {(int)ix->shape[1], (int)iy->shape[1], 0, 0, 0, stride};
    grid_of(ix, &a.D);
    return LM_OP_CALL(n->be, conv3d_fwd, A(n, y), A(n, x), PV(n, w), b ? PV(n, b) : NULL, &a);
}

/* dx += ..., dW, db += ... from dy (a buffer, the gradient of the conv output) */
static int conv_bwd(lm_net *n, const float *dy, const char *x, const char *w, const char *b,
                    int cout, int stride, float *dx)
{
    const lm_net_act_info *ix = INFO(n, x);
    lm_conv3d_args a = {(int)ix->shape[1], cout, 0, 0, 0, stride};
    grid_of(ix, &a.D);
    return LM_OP_CALL(n->be, conv3d_bwd, dx, PG(n, w), b ? PG(n, b) : NULL, dy, A(n, x),
                      PV(n, w), &a);
}

/* CBL: y.c = conv(x); y = LReLU(IN(y.c)) (MODEL.md §7) */
static int cbl_fwd(lm_net *n, const char *y, const char *x, const char *w, const char *b)
{
    char yc[32];
    snprintf(yc, sizeof yc, "%s.c", y);
    TRY(conv_fwd(n, yc, x, w, b, 1));
    const lm_net_act_info *iy = INFO(n, y);
    const int64_t C = iy->shape[1], N = vox(iy);
    float *st = stat(n, y, C);
    if (!st)
        return -1;
    lm_instnorm_args in = {C, N, 0, EPS};
    TRY(LM_OP_CALL(n->be, instnorm_fwd, A(n, y), st, st + C, A(n, yc), &in));
    return LM_OP_CALL(n->be, leaky_relu_fwd, A(n, y), A(n, y), SLOPE, C * N);
}

static int cbl_bwd(lm_net *n, const char *y, const char *x, const char *w, const char *b)
{
    char yc[32];
    snprintf(yc, sizeof yc, "%s.c", y);
    const lm_net_act_info *iy = INFO(n, y);
    const int64_t C = iy->shape[1], N = vox(iy);
    float *t = zeroed(n, 0, C * N), *st = stat(n, y, C);
    if (!t || !st)
        return -1;
    /* LReLU'(IN out) equals LReLU'(LReLU(IN out)): the sign is kept */
    TRY(LM_OP_CALL(n->be, leaky_relu_bwd, t, G(n, y), A(n, y), SLOPE, C * N));
    lm_instnorm_args in = {C, N, 0, EPS};
    TRY(LM_OP_CALL(n->be, instnorm_bwd, G(n, yc), t, A(n, yc), st, st + C, &in));
    return conv_bwd(n, G(n, yc), x, w, b, (int)C, 1, G(n, x));
}

/* LinearBlock on tokens: y = x Wᵀ + b; a = LReLU(IN_tokens(y)) (MODEL.md §5.1) */
static int lin_fwd(lm_net *n, const char *a, const char *y, const char *x, const char *wb)
{
    char w[48], b[48];
    snprintf(w, sizeof w, "%s.weight", wb);
    snprintf(b, sizeof b, "%s.bias", wb);
    const lm_net_act_info *ix = INFO(n, x), *iy = INFO(n, y);
    const int64_t L = ix->shape[1], K = ix->shape[2], N = iy->shape[2];
    lm_gemm_args g = {L, N, K, LM_F32, 0};
    TRY(LM_OP_CALL(n->be, gemm_fwd, A(n, y), A(n, x), PV(n, w), PV(n, b), &g));
    float *st = stat(n, a, N);
    if (!st)
        return -1;
    lm_instnorm_args in = {N, L, 1, EPS};
    TRY(LM_OP_CALL(n->be, instnorm_fwd, A(n, a), st, st + N, A(n, y), &in));
    return LM_OP_CALL(n->be, leaky_relu_fwd, A(n, a), A(n, a), SLOPE, L * N);
}

static int lin_bwd(lm_net *n, const char *a, const char *y, const char *x, const char *wb)
{
    char w[48], b[48];
    snprintf(w, sizeof w, "%s.weight", wb);
    snprintf(b, sizeof b, "%s.bias", wb);
    const lm_net_act_info *ix = INFO(n, x), *iy = INFO(n, y);
    const int64_t L = ix->shape[1], K = ix->shape[2], N = iy->shape[2];
    float *t = zeroed(n, 0, L * N), *st = stat(n, a, N);
    if (!t || !st)
        return -1;
    TRY(LM_OP_CALL(n->be, leaky_relu_bwd, t, G(n, a), A(n, a), SLOPE, L * N));
    lm_instnorm_args in = {N, L, 1, EPS};
    TRY(LM_OP_CALL(n->be, instnorm_bwd, G(n, y), t, A(n, y), st, st + N, &in));
    lm_gemm_args g = {L, N, K, LM_F32, 0};
    return LM_OP_CALL(n->be, gemm_bwd, G(n, x), PG(n, w), PG(n, b), G(n, y), A(n, x), PV(n, w),
                      &g);
}

static int up_fwd(lm_net *n, const char *y, const char *x, int flow)
{
    const lm_net_act_info *ix = INFO(n, x);
    lm_vol_args v = {(int)ix->shape[1], 0, 0, 0};
    grid_of(ix, &v.D);
    TRY(LM_OP_CALL(n->be, upsample2_fwd, A(n, y), A(n, x), &v));
    if (flow)
        TRY(LM_OP_CALL(n->be, scale, A(n, y), A(n, y), 2.0f, INFO(n, y)->numel));
    return 0;
}

static int up_bwd(lm_net *n, const char *y, const char *x, int flow)
{
    const lm_net_act_info *ix = INFO(n, x);
    lm_vol_args v = {(int)ix->shape[1], 0, 0, 0};
    grid_of(ix, &v.D);
    const float *dy = G(n, y);
    if (flow) {
        const int64_t m = INFO(n, y)->numel;
        float *t = scratch(n, 0, m);
        if (!t)
            return -1;
        TRY(LM_OP_CALL(n->be, scale, t, dy, 2.0f, m));
        dy = t;
    }
    return LM_OP_CALL(n->be, upsample2_bwd, G(n, x), dy, &v);
}

#define MAXCAT 6
static int cat_fwd(lm_net *n, const char *y, const char *const *xs, int k)
{
    const float *b[MAXCAT];
    int64_t ch[MAXCAT];
    for (int i = 0; i < k; i++) {
        b[i] = A(n, xs[i]);
        ch[i] = INFO(n, xs[i])->shape[1];
    }
    return LM_OP_CALL(n->be, concat, A(n, y), b, ch, k, vox(INFO(n, y)));
}

static int cat_bwd(lm_net *n, const char *y, const char *const *xs, int k)
{
    float *b[MAXCAT];
    int64_t ch[MAXCAT];
    for (int i = 0; i < k; i++) {
        b[i] = G(n, xs[i]);
        ch[i] = INFO(n, xs[i])->shape[1];
    }
    return LM_OP_CALL(n->be, split, b, G(n, y), ch, k, vox(INFO(n, y)));
}

static int warp_fwd(lm_net *n, const char *y, const char *src, const char *flow)
{
    const lm_net_act_info *is = INFO(n, src);
    lm_warp_args w = {(int)is->shape[1], 0, 0, 0, LM_PAD_ZEROS};
    grid_of(is, &w.D);
    return LM_OP_CALL(n->be, warp_fwd, A(n, y), A(n, src), A(n, flow), &w);
}

static int warp_bwd(lm_net *n, const char *y, const char *src, const char *flow)
{
    const lm_net_act_info *is = INFO(n, src);
    lm_warp_args w = {(int)is->shape[1], 0, 0, 0, LM_PAD_ZEROS};
    grid_of(is, &w.D);
    return LM_OP_CALL(n->be, warp_bwd, G(n, src), G(n, flow), G(n, y), A(n, src), A(n, flow),
                      &w);
}

/* ψ = r ⊕ U (compose) or r + U (add) */
static int combine_fwd(lm_net *n, const char *psi, const char *r, const char *u)
{
    const lm_net_act_info *ir = INFO(n, r);
    if (n->c.combine == LM_NET_COMBINE_ADD)
        return LM_OP_CALL(n->be, add, A(n, psi), A(n, r), A(n, u), ir->numel);
    lm_vol_args v = {3, 0, 0, 0};
    grid_of(ir, &v.D);
    return LM_OP_CALL(n->be, compose_fwd, A(n, psi), A(n, r), A(n, u), &v);
}

static int combine_bwd(lm_net *n, const char *psi, const char *r, const char *u)
{
    const lm_net_act_info *ir = INFO(n, r);
    if (n->c.combine == LM_NET_COMBINE_ADD) {
        TRY(LM_OP_CALL(n->be, axpy, G(n, r), G(n, psi), 1.0f, ir->numel));
        return LM_OP_CALL(n->be, axpy, G(n, u), G(n, psi), 1.0f, ir->numel);
    }
    lm_vol_args v = {3, 0, 0, 0};
    grid_of(ir, &v.D);
    return LM_OP_CALL(n->be, compose_bwd, G(n, r), G(n, u), G(n, psi), A(n, r), A(n, u), &v);
}

static int pool_fwd(lm_net *n, const char *y, const char *x)
{
    const lm_net_act_info *ix = INFO(n, x);
    lm_vol_args v = {(int)ix->shape[1], 0, 0, 0};
    grid_of(ix, &v.D);
    return LM_OP_CALL(n->be, avgpool2_fwd, A(n, y), A(n, x), &v);
}

static int pool_bwd(lm_net *n, const char *y, const char *x)
{
    const lm_net_act_info *ix = INFO(n, x);
    lm_vol_args v = {(int)ix->shape[1], 0, 0, 0};
    grid_of(ix, &v.D);
    return LM_OP_CALL(n->be, avgpool2_bwd, G(n, x), G(n, y), &v);
}

/* ---- images ----------------------------------------------------------------------------------- */

int lm_net_set_images(lm_net *n, const float *moving, const float *fixed, const int64_t dhw[3])
{
    const int64_t *g = n->c.shape;
    if (!memcmp(dhw, g, 3 * sizeof *g)) {
        const int64_t m = g[0] * g[1] * g[2];
        n->img_full = 0;
        TRY(lm_backend_upload(n->be, A(n, "moving"), moving, (size_t)m * sizeof(float)));
        return lm_backend_upload(n->be, A(n, "fixed"), fixed, (size_t)m * sizeof(float));
    }
    if (n->c.half && dhw[0] == 2 * g[0] && dhw[1] == 2 * g[1] && dhw[2] == 2 * g[2]) {
        const int64_t m = dhw[0] * dhw[1] * dhw[2];
        n->img_full = 1;
        TRY(lm_backend_upload(n->be, A(n, "moving_full"), moving, (size_t)m * sizeof(float)));
        TRY(lm_backend_upload(n->be, A(n, "fixed_full"), fixed, (size_t)m * sizeof(float)));
        TRY(pool_fwd(n, "moving", "moving_full"));
        return pool_fwd(n, "fixed", "fixed_full");
    }
    return lm_error_set("image grid [%lld,%lld,%lld] is not the network grid [%lld,%lld,%lld]%s",
                        (long long)dhw[0], (long long)dhw[1], (long long)dhw[2], (long long)g[0],
                        (long long)g[1], (long long)g[2],
                        n->c.half ? " nor twice it" : "");
}

/* ---- encoder (MODEL.md §3) -------------------------------------------------------------------- */

static int enc_fwd(lm_net *n, const char *img, const char *pre)
{
    char y[8], x[8], w[32], b[32];
    for (int s = 1; s <= 5; s++) {
        snprintf(y, sizeof y, "%s%d", pre, s);
        snprintf(x, sizeof x, "%s%d", pre, s - 1);
        snprintf(w, sizeof w, "encoder.conv%d.weight", s);
        snprintf(b, sizeof b, "encoder.conv%d.bias", s);
        TRY(conv_fwd(n, y, s == 1 ? img : x, w, s == 1 ? NULL : b, s == 1 ? 1 : 2));
        TRY(LM_OP_CALL(n->be, relu_fwd, A(n, y), A(n, y), INFO(n, y)->numel));
    }
    return 0;
}

static int enc_bwd(lm_net *n, const char *img, const char *pre)
{
    char y[8], x[8], w[32], b[32];
    for (int s = 5; s >= 1; s--) {
        snprintf(y, sizeof y, "%s%d", pre, s);
        snprintf(x, sizeof x, "%s%d", pre, s - 1);
        snprintf(w, sizeof w, "encoder.conv%d.weight", s);
        snprintf(b, sizeof b, "encoder.conv%d.bias", s);
        const lm_net_act_info *iy = INFO(n, y);
        float *t = zeroed(n, 1, iy->numel);
        if (!t)
            return -1;
        /* relu'(pre-activation) = relu'(output) */
        TRY(LM_OP_CALL(n->be, relu_bwd, t, G(n, y), A(n, y), iy->numel));
        const char *xs = s == 1 ? img : x;
        TRY(conv_bwd(n, t, xs, w, s == 1 ? NULL : b, (int)iy->shape[1], s == 1 ? 1 : 2,
                     G(n, xs)));
    }
    return 0;
}

int lm_net_encode(lm_net *n)
{
    TRY(enc_fwd(n, "moving", "fm"));
    return enc_fwd(n, "fixed", "ff");
}

/* ---- the ViT block of the vit ablation (MODEL.md §15 row 33; lm_net.h) ---------------------------
 * x = leb<k>.a2 (Adapter0's output), y = leb<k>, tokens [L, D] (D = llm_hidden):
 *   ln1 = LN(x); q|k|v = ln1 Wqkvᵀ + bqkv (rows q | k | v of the one qkv Linear);
 *   o = MHSA(q, k, v) (llm_heads heads, bidirectional, no RoPE); h = x + o Wprojᵀ + bproj;
 *   ln2 = LN(h); m = ln2 W1ᵀ + b1; g = GELU(m); y = h + g W2ᵀ + b2.
 * LayerNorm eps 1e-5 with weight and bias; mean/rstd [L] kept in the stat buffer of ln1/ln2. */

static const float LN_EPS = 1e-5f;

typedef struct {
    char x[24], y[24], ln1[24], q[24], k[24], v[24], p[24], o[24], h[24], ln2[24], m[24], g[24];
    char w[12][48]; /* ln1.w, ln1.b, qkv.w, qkv.b, proj.w, proj.b, ln2.w, ln2.b, fc1.w, ... */
} vit_names;

static void vit_names_for(vit_names *v, int k)
{
    static const char *const parts[6] = {"ln1", "qkv", "proj", "ln2", "fc1", "fc2"};
    snprintf(v->x, sizeof v->x, "leb%d.a2", k);
    snprintf(v->y, sizeof v->y, "leb%d", k);
    snprintf(v->ln1, sizeof v->ln1, "leb%d.ln1", k);
    snprintf(v->q, sizeof v->q, "leb%d.q", k);
    snprintf(v->k, sizeof v->k, "leb%d.k", k);
    snprintf(v->v, sizeof v->v, "leb%d.v", k);
    snprintf(v->p, sizeof v->p, "leb%d.p", k);
    snprintf(v->o, sizeof v->o, "leb%d.o", k);
    snprintf(v->h, sizeof v->h, "leb%d.h", k);
    snprintf(v->ln2, sizeof v->ln2, "leb%d.ln2", k);
    snprintf(v->m, sizeof v->m, "leb%d.m", k);
    snprintf(v->g, sizeof v->g, "leb%d.g", k);
    for (int i = 0; i < 6; i++) {
        snprintf(v->w[2 * i], sizeof v->w[0], "leb%d.vit.%s.weight", k, parts[i]);
        snprintf(v->w[2 * i + 1], sizeof v->w[0], "leb%d.vit.%s.bias", k, parts[i]);
    }
}

enum { VW_LN1, VB_LN1, VW_QKV, VB_QKV, VW_PROJ, VB_PROJ, VW_LN2, VB_LN2, VW_FC1, VB_FC1, VW_FC2,
       VB_FC2 };

static int vit_fwd(lm_net *n, int k, int64_t L)
{
    vit_names v;
    vit_names_for(&v, k);
    const int64_t D = n->c.llm_hidden;
    const int H = n->c.llm_heads;
    lm_rownorm_args rn = {L, D, LN_EPS};
    float *s1 = stat(n, v.ln1, L), *s2 = stat(n, v.ln2, L);
    if (!s1 || !s2)
        return -1;
    TRY(LM_OP_CALL(n->be, layernorm_fwd, A(n, v.ln1), s1, s1 + L, A(n, v.x), PV(n, v.w[VW_LN1]),
                   PV(n, v.w[VB_LN1]), &rn));
    /* q, k, v: row blocks 0, 1, 2 of the qkv Linear */
    const float *wqkv = PV(n, v.w[VW_QKV]), *bqkv = PV(n, v.w[VB_QKV]);
    float *qkv[3] = {A(n, v.q), A(n, v.k), A(n, v.v)};
    lm_gemm_args gd = {L, D, D, LM_F32, 0};
    for (int i = 0; i < 3; i++)
        TRY(LM_OP_CALL(n->be, gemm_fwd, qkv[i], A(n, v.ln1), wqkv + i * D * D, bqkv + i * D,
                       &gd));
    lm_attn_args aa = {L, H, H, (int)(D / H), 0};
    TRY(LM_OP_CALL(n->be, attention_fwd, A(n, v.o), A(n, v.p), qkv[0], qkv[1], qkv[2], &aa));
    TRY(LM_OP_CALL(n->be, gemm_fwd, A(n, v.h), A(n, v.o), PV(n, v.w[VW_PROJ]),
                   PV(n, v.w[VB_PROJ]), &gd));
    TRY(LM_OP_CALL(n->be, add, A(n, v.h), A(n, v.x), A(n, v.h), L * D));
    TRY(LM_OP_CALL(n->be, layernorm_fwd, A(n, v.ln2), s2, s2 + L, A(n, v.h), PV(n, v.w[VW_LN2]),
                   PV(n, v.w[VB_LN2]), &rn));
    lm_gemm_args g1 = {L, 4 * D, D, LM_F32, 0}, g2 = {L, D, 4 * D, LM_F32, 0};
    TRY(LM_OP_CALL(n->be, gemm_fwd, A(n, v.m), A(n, v.ln2), PV(n, v.w[VW_FC1]),
                   PV(n, v.w[VB_FC1]), &g1));
    TRY(LM_OP_CALL(n->be, gelu_fwd, A(n, v.g), A(n, v.m), L * 4 * D));
    TRY(LM_OP_CALL(n->be, gemm_fwd, A(n, v.y), A(n, v.g), PV(n, v.w[VW_FC2]),
                   PV(n, v.w[VB_FC2]), &g2));
    return LM_OP_CALL(n->be, add, A(n, v.y), A(n, v.h), A(n, v.y), L * D);
}

/* G(y) -> G(x) += ..., the twelve parameter gradients += ... (activation gradients start 0) */
static int vit_bwd(lm_net *n, int k, int64_t L)
{
    vit_names v;
    vit_names_for(&v, k);
    const int64_t D = n->c.llm_hidden;
    const int H = n->c.llm_heads;
    lm_rownorm_args rn = {L, D, LN_EPS};
    float *s1 = stat(n, v.ln1, L), *s2 = stat(n, v.ln2, L);
    if (!s1 || !s2)
        return -1;
    lm_gemm_args gd = {L, D, D, LM_F32, 0};
    lm_gemm_args g1 = {L, 4 * D, D, LM_F32, 0}, g2 = {L, D, 4 * D, LM_F32, 0};
    /* y = h + fc2(GELU(fc1(LN2(h)))) */
    TRY(LM_OP_CALL(n->be, axpy, G(n, v.h), G(n, v.y), 1.0f, L * D));
    TRY(LM_OP_CALL(n->be, gemm_bwd, G(n, v.g), PG(n, v.w[VW_FC2]), PG(n, v.w[VB_FC2]), G(n, v.y),
                   A(n, v.g), PV(n, v.w[VW_FC2]), &g2));
    TRY(LM_OP_CALL(n->be, gelu_bwd, G(n, v.m), G(n, v.g), A(n, v.m), L * 4 * D));
    TRY(LM_OP_CALL(n->be, gemm_bwd, G(n, v.ln2), PG(n, v.w[VW_FC1]), PG(n, v.w[VB_FC1]),
                   G(n, v.m), A(n, v.ln2), PV(n, v.w[VW_FC1]), &g1));
    TRY(LM_OP_CALL(n->be, layernorm_bwd, G(n, v.h), PG(n, v.w[VW_LN2]), PG(n, v.w[VB_LN2]),
                   G(n, v.ln2), A(n, v.h), s2, s2 + L, PV(n, v.w[VW_LN2]), &rn));
    /* h = x + proj(MHSA(LN1(x))) */
    TRY(LM_OP_CALL(n->be, axpy, G(n, v.x), G(n, v.h), 1.0f, L * D));
    TRY(LM_OP_CALL(n->be, gemm_bwd, G(n, v.o), PG(n, v.w[VW_PROJ]), PG(n, v.w[VB_PROJ]),
                   G(n, v.h), A(n, v.o), PV(n, v.w[VW_PROJ]), &gd));
    lm_attn_args aa = {L, H, H, (int)(D / H), 0};
    TRY(LM_OP_CALL(n->be, attention_bwd, G(n, v.q), G(n, v.k), G(n, v.v), G(n, v.o), A(n, v.q),
                   A(n, v.k), A(n, v.v), A(n, v.p), &aa));
    const float *wqkv = PV(n, v.w[VW_QKV]);
    float *dw = PG(n, v.w[VW_QKV]), *db = PG(n, v.w[VB_QKV]);
    const float *dqkv[3] = {G(n, v.q), G(n, v.k), G(n, v.v)};
    for (int i = 0; i < 3; i++)
        TRY(LM_OP_CALL(n->be, gemm_bwd, G(n, v.ln1), dw + i * D * D, db + i * D, dqkv[i],
                       A(n, v.ln1), wqkv + i * D * D, &gd));
    return LM_OP_CALL(n->be, layernorm_bwd, G(n, v.x), PG(n, v.w[VW_LN1]), PG(n, v.w[VB_LN1]),
                      G(n, v.ln1), A(n, v.x), s1, s1 + L, PV(n, v.w[VW_LN1]), &rn);
}

/* ---- tokeniser + LEBs (MODEL.md §4, §5) ------------------------------------------------------- */

int lm_net_leb(lm_net *n)
{
    if (!lm_net_uses_llm(&n->c))
        return 0;
    if (n->nly != n->c.n_layers)
        return lm_error_set("the LLM layers are not attached");
    const lm_net_act_info *i5 = INFO(n, "fm5");
    const int64_t C = i5->shape[1], L = vox(i5);
    float *t = scratch(n, 0, 2 * C * L);
    if (!t)
        return -1;
    const float *xs[2] = {A(n, "fm5"), A(n, "ff5")};
    int64_t ch[2] = {C, C};
    TRY(LM_OP_CALL(n->be, concat, t, xs, ch, 2, L));
    TRY(LM_OP_CALL(n->be, transpose, A(n, "x0"), t, 2 * C, L, 0));
    for (int k = 1; k <= lm_net_lebs(&n->c); k++) {
        char a1[24], y1[24], a2[24], y2[24], out[24], in[24], fc[40];
        snprintf(a1, sizeof a1, "leb%d.a1", k);
        snprintf(y1, sizeof y1, "leb%d.y1", k);
        snprintf(a2, sizeof a2, "leb%d.a2", k);
        snprintf(y2, sizeof y2, "leb%d.y2", k);
        snprintf(out, sizeof out, "leb%d", k);
        if (k == 1)
            snprintf(in, sizeof in, "x0");
        else
            snprintf(in, sizeof in, "leb%d", k - 1);
        snprintf(fc, sizeof fc, "leb%d.adapter.fc1", k);
        TRY(lin_fwd(n, a1, y1, in, fc));
        snprintf(fc, sizeof fc, "leb%d.adapter.fc2", k);
        TRY(lin_fwd(n, a2, y2, a1, fc));
        if (n->c.ablation == LM_NET_ABL_VIT)
            TRY(vit_fwd(n, k, L));
        else
            TRY(lm_llm_layer_fwd(n->ly[k - 1], A(n, out), A(n, a2), L));
    }
    return 0;
}

static int leb_bwd(lm_net *n)
{
    const int64_t Lt = vox(INFO(n, "fm5"));
    for (int k = lm_net_lebs(&n->c); k >= 1; k--) {
        char a1[24], y1[24], a2[24], y2[24], out[24], in[24], fc[40];
        snprintf(a1, sizeof a1, "leb%d.a1", k);
        snprintf(y1, sizeof y1, "leb%d.y1", k);
        snprintf(a2, sizeof a2, "leb%d.a2", k);
        snprintf(y2, sizeof y2, "leb%d.y2", k);
        snprintf(out, sizeof out, "leb%d", k);
        if (k == 1)
            snprintf(in, sizeof in, "x0");
        else
            snprintf(in, sizeof in, "leb%d", k - 1);
        if (n->c.ablation == LM_NET_ABL_VIT)
            TRY(vit_bwd(n, k, Lt));
        else
            TRY(lm_llm_layer_bwd(n->ly[k - 1], G(n, a2), G(n, out)));
        snprintf(fc, sizeof fc, "leb%d.adapter.fc2", k);
        TRY(lin_bwd(n, a2, y2, a1, fc));
        snprintf(fc, sizeof fc, "leb%d.adapter.fc1", k);
        TRY(lin_bwd(n, a1, y1, in, fc));
    }
    const lm_net_act_info *i5 = INFO(n, "fm5");
    const int64_t C = i5->shape[1], L = vox(i5);
    float *t = scratch(n, 0, 2 * C * L);
    if (!t)
        return -1;
    TRY(LM_OP_CALL(n->be, transpose, t, G(n, "x0"), L, 2 * C, 0));
    float *ds[2] = {G(n, "fm5"), G(n, "ff5")};
    int64_t ch[2] = {C, C};
    return LM_OP_CALL(n->be, split, ds, t, ch, 2, L);
}

/* ---- decoder (MODEL.md §6, §7) ---------------------------------------------------------------- */

static int shuffle_args(lm_net *n, int j, lm_shuffle_args *s, const char **vol)
{
    const int fig = n->c.restore == LM_NET_RESTORE_FIGURE;
    static char name[16];
    snprintf(name, sizeof name, fig ? "f%d.s" : "f%d", j);
    const lm_net_act_info *i5 = INFO(n, "fm5"), *iv = INFO(n, name);
    s->C = (int)iv->shape[1];
    grid_of(i5, &s->d);
    s->f = fig ? 1 << (4 - j) : 1 << (5 - j);
    s->accumulate = 0;
    *vol = name;
    return 0;
}

static int adapters_fwd(lm_net *n)
{
    for (int j = 4; j >= 1; j--) {
        char a[8], y[8], wb[32], f[8];
        snprintf(a, sizeof a, "a%d", j);
        snprintf(y, sizeof y, "a%d.y", j);
        snprintf(wb, sizeof wb, "dec.adapter%d", j);
        snprintf(f, sizeof f, "f%d", j);
        TRY(lin_fwd(n, a, y, "t", wb));
        lm_shuffle_args s;
        const char *vol;
        shuffle_args(n, j, &s, &vol);
        TRY(LM_OP_CALL(n->be, voxel_shuffle, A(n, vol), A(n, a), &s));
        if (n->c.restore == LM_NET_RESTORE_FIGURE)
            TRY(up_fwd(n, f, vol, 0));
    }
    return 0;
}

static int adapters_bwd(lm_net *n)
{
    for (int j = 1; j <= 4; j++) {
        char a[8], y[8], wb[32], f[8];
        snprintf(a, sizeof a, "a%d", j);
        snprintf(y, sizeof y, "a%d.y", j);
        snprintf(wb, sizeof wb, "dec.adapter%d", j);
        snprintf(f, sizeof f, "f%d", j);
        lm_shuffle_args s;
        const char *vol;
        shuffle_args(n, j, &s, &vol);
        if (n->c.restore == LM_NET_RESTORE_FIGURE)
            TRY(up_bwd(n, f, vol, 0));
        s.accumulate = 1;
        TRY(LM_OP_CALL(n->be, voxel_unshuffle, G(n, a), G(n, vol), &s));
        TRY(lin_bwd(n, a, y, "t", wb));
    }
    return 0;
}

/* Stages S2 and S1 (MODEL.md §7.1), k = 2, 1: with Û = 2·up(u) the coarser field upsampled and
 * I' = warp(moving_k, Û), x_k = cat(up(s_{k+1}), F_k, Fm_k, Ff_k, I', Û), s_k = CBL(x_k),
 * r_k = Head(s_k) and out = r_k ⊕ Û. The backward runs the same steps in reverse, in a fixed
 * order (the gradients of Û and s_{k+1} are sums). */
typedef struct {
    /* room for any int k: -O1 (check-asan) checks the snprintf sizes over int's range */
    char sup[24], s[16], x[16], f[16], fm[16], ff[16], warp[24], r[16], uup[48];
    char cw[40], cb[40], hw[40], hb[40];
} stage_names;

static void stage_names_for(stage_names *m, int k, const char *u)
{
    snprintf(m->sup, sizeof m->sup, "s%d.up", k + 1);
    snprintf(m->s, sizeof m->s, "s%d", k);
    snprintf(m->x, sizeof m->x, "x%d", k);
    snprintf(m->f, sizeof m->f, "f%d", k);
    snprintf(m->fm, sizeof m->fm, "fm%d", k);
    snprintf(m->ff, sizeof m->ff, "ff%d", k);
    snprintf(m->warp, sizeof m->warp, "warp%d", k);
    snprintf(m->r, sizeof m->r, "r%d", k);
    snprintf(m->uup, sizeof m->uup, "%s.up", u);
    snprintf(m->cw, sizeof m->cw, "dec.s%d.conv.weight", k);
    snprintf(m->cb, sizeof m->cb, "dec.s%d.conv.bias", k);
    snprintf(m->hw, sizeof m->hw, "dec.s%d.head.weight", k);
    snprintf(m->hb, sizeof m->hb, "dec.s%d.head.bias", k);
}

static int residual_stage_fwd(lm_net *n, int k, const char *out, const char *u,
                              const char *moving)
{
    const int llm = lm_net_uses_llm(&n->c);
    stage_names m;
    stage_names_for(&m, k, u);
    TRY(up_fwd(n, m.uup, u, 1));
    TRY(warp_fwd(n, m.warp, moving, m.uup));
    char sk1[16];
    snprintf(sk1, sizeof sk1, "s%d", k + 1);
    TRY(up_fwd(n, m.sup, sk1, 0));
    const char *xs[] = {m.sup, m.f, m.fm, m.ff, m.warp, m.uup},
               *xn[] = {m.sup, m.fm, m.ff, m.warp, m.uup};
    TRY(cat_fwd(n, m.x, llm ? xs : xn, 6 - !llm));
    TRY(cbl_fwd(n, m.s, m.x, m.cw, m.cb));
    TRY(conv_fwd(n, m.r, m.s, m.hw, m.hb, 1));
    TRY(combine_fwd(n, out, m.r, m.uup));
    return 0;
}

static int residual_stage_bwd(lm_net *n, int k, const char *out, const char *u,
                              const char *moving)
{
    const int llm = lm_net_uses_llm(&n->c);
    stage_names m;
    stage_names_for(&m, k, u);
    TRY(combine_bwd(n, out, m.r, m.uup));
    TRY(conv_bwd(n, G(n, m.r), m.s, m.hw, m.hb, 3, 1, G(n, m.s)));
    TRY(cbl_bwd(n, m.s, m.x, m.cw, m.cb));
    const char *xs[] = {m.sup, m.f, m.fm, m.ff, m.warp, m.uup},
               *xn[] = {m.sup, m.fm, m.ff, m.warp, m.uup};
    TRY(cat_bwd(n, m.x, llm ? xs : xn, 6 - !llm));
    char sk1[16];
    snprintf(sk1, sizeof sk1, "s%d", k + 1);
    TRY(up_bwd(n, m.sup, sk1, 0));
    TRY(warp_bwd(n, m.warp, moving, m.uup));
    TRY(up_bwd(n, m.uup, u, 1));
    return 0;
}

int lm_net_decode(lm_net *n)
{
    const int llm = lm_net_uses_llm(&n->c);
    if (llm)
        TRY(adapters_fwd(n));
    TRY(pool_fwd(n, "moving2", "moving"));
    /* S4 */
    const char *x4[] = {"f4", "fm4", "ff4"};
    TRY(cat_fwd(n, "x4", x4 + !llm, 3 - !llm));
    TRY(cbl_fwd(n, "s4", "x4", "dec.s4.conv.weight", "dec.s4.conv.bias"));
    /* S3 */
    TRY(up_fwd(n, "s4.up", "s4", 0));
    const char *x3[] = {"s4.up", "f3", "fm3", "ff3"}, *x3n[] = {"s4.up", "fm3", "ff3"};
    TRY(cat_fwd(n, "x3", llm ? x3 : x3n, 4 - !llm));
    TRY(cbl_fwd(n, "s3", "x3", "dec.s3.conv.weight", "dec.s3.conv.bias"));
    TRY(conv_fwd(n, "phi3", "s3", "dec.s3.head.weight", "dec.s3.head.bias", 1));
    /* S2, S1: residual fields on the upsampled coarser ones */
    TRY(residual_stage_fwd(n, 2, "psi2", "phi3", "moving2"));
    TRY(residual_stage_fwd(n, 1, "phi", "psi2", "moving"));
    if (n->c.half)
        TRY(up_fwd(n, "phi_full", "phi", 1));
    return 0;
}

static int decode_bwd(lm_net *n)
{
    const int llm = lm_net_uses_llm(&n->c);
    if (n->c.half)
        TRY(up_bwd(n, "phi_full", "phi", 1));
    TRY(residual_stage_bwd(n, 1, "phi", "psi2", "moving"));
    TRY(residual_stage_bwd(n, 2, "psi2", "phi3", "moving2"));
    /* S3 */
    TRY(conv_bwd(n, G(n, "phi3"), "s3", "dec.s3.head.weight", "dec.s3.head.bias", 3, 1,
                 G(n, "s3")));
    TRY(cbl_bwd(n, "s3", "x3", "dec.s3.conv.weight", "dec.s3.conv.bias"));
    const char *x3[] = {"s4.up", "f3", "fm3", "ff3"}, *x3n[] = {"s4.up", "fm3", "ff3"};
    TRY(cat_bwd(n, "x3", llm ? x3 : x3n, 4 - !llm));
    TRY(up_bwd(n, "s4.up", "s4", 0));
    /* S4 */
    TRY(cbl_bwd(n, "s4", "x4", "dec.s4.conv.weight", "dec.s4.conv.bias"));
    const char *x4[] = {"f4", "fm4", "ff4"};
    TRY(cat_bwd(n, "x4", x4 + !llm, 3 - !llm));
    TRY(pool_bwd(n, "moving2", "moving"));
    if (llm)
        TRY(adapters_bwd(n));
    return 0;
}

int lm_net_forward(lm_net *n)
{
    n->have_loss = 0;
    TRY(lm_net_encode(n));
    TRY(lm_net_leb(n));
    return lm_net_decode(n);
}

/* ---- loss (MODEL.md §9) ----------------------------------------------------------------------- */

int lm_net_loss(lm_net *n, lm_net_loss_value *out, const int32_t *mseg, const int32_t *fseg, int K,
                const int32_t *classes, const uint8_t *kept)
{
    if (K <= 0) {
        K = n->c.n_classes;
        classes = n->c.classes;
        kept = n->c.kept;
    }
    if (K <= 0 || K > LM_NET_MAX_CLASSES)
        return lm_error_set("no label classes for the loss (the config has none)");
    const char *fname = n->c.half ? "phi_full" : "phi";
    const lm_net_act_info *fi = INFO(n, fname);
    const int64_t N = vox(fi);
    n->K = K;
    memcpy(n->classes, classes, (size_t)K * sizeof *classes);
    memcpy(n->kept, kept, (size_t)K);
    if (n->oh_cap < (int64_t)K * N) {
        lm_backend_free(n->be, n->oh_m);
        lm_backend_free(n->be, n->oh_f);
        lm_backend_free(n->be, n->oh_w);
        lm_backend_free(n->be, n->lab);
        n->oh_m = lm_backend_alloc(n->be, (size_t)K * (size_t)N * sizeof(float));
        n->oh_f = lm_backend_alloc(n->be, (size_t)K * (size_t)N * sizeof(float));
        n->oh_w = lm_backend_alloc(n->be, (size_t)K * (size_t)N * sizeof(float));
        n->lab = lm_backend_alloc(n->be, (size_t)N * sizeof(int32_t));
        n->oh_cap = n->oh_m && n->oh_f && n->oh_w && n->lab ? (int64_t)K * N : 0;
        if (!n->oh_cap)
            return lm_error_set("out of memory for the one-hot labels");
    }
    if (!n->scal && !(n->scal = lm_backend_alloc(n->be, (4 + LM_NET_MAX_CLASSES) * sizeof(float))))
        return lm_error_set("out of memory");
    n->nl = N;
    lm_onehot_args oa = {K, N, classes};
    TRY(lm_backend_upload(n->be, n->lab, mseg, (size_t)N * sizeof(int32_t)));
    TRY(LM_OP_CALL(n->be, onehot, n->oh_m, n->lab, &oa));
    TRY(lm_backend_upload(n->be, n->lab, fseg, (size_t)N * sizeof(int32_t)));
    TRY(LM_OP_CALL(n->be, onehot, n->oh_f, n->lab, &oa));
    lm_warp_args w = {K, 0, 0, 0, LM_PAD_ZEROS};
    grid_of(fi, &w.D);
    TRY(LM_OP_CALL(n->be, warp_fwd, n->oh_w, n->oh_m, A(n, fname), &w));
    lm_dice_args da = {K, N, kept};
    TRY(LM_OP_CALL(n->be, dice_loss_fwd, n->scal, n->scal + 4, n->oh_w, n->oh_f, &da));
    lm_vol_args v = {3, w.D, w.H, w.W};
    TRY(LM_OP_CALL(n->be, grad_l2_fwd, n->scal + 1, A(n, fname), &v));
    float s[2];
    TRY(lm_backend_download(n->be, s, n->scal, sizeof s));
    out->dice = -(double)s[0];
    out->grad_l2 = s[1];
    out->loss = (double)s[0] + n->c.lambda * (double)s[1];
    n->have_loss = 1;
    return 0;
}

int lm_net_backward(lm_net *n)
{
    if (!n->have_loss)
        return lm_error_set("lm_net_backward: no loss computed since the last forward");
    for (int i = 0; i < n->plan.n; i++) {
        if (n->alias[i] >= 0)
            continue;
        if (!n->grad[i] &&
            !(n->grad[i] = lm_backend_alloc(n->be, (size_t)n->plan.a[i].numel * sizeof(float))))
            return lm_error_set("out of memory for gradients");
        TRY(LM_OP_CALL(n->be, fill, n->grad[i], 0.0f, n->plan.a[i].numel));
    }
    const char *fname = n->c.half ? "phi_full" : "phi";
    const lm_net_act_info *fi = INFO(n, fname);
    const int K = n->K;
    const int64_t N = n->nl;
    float *dp = zeroed(n, 2, (int64_t)K * N);
    if (!dp)
        return -1;
    lm_dice_args da = {K, N, n->kept};
    TRY(LM_OP_CALL(n->be, dice_loss_bwd, dp, n->oh_w, n->oh_f, 1.0f, &da));
    lm_warp_args w = {K, 0, 0, 0, LM_PAD_ZEROS};
    grid_of(fi, &w.D);
    TRY(LM_OP_CALL(n->be, warp_bwd, NULL, G(n, fname), dp, n->oh_m, A(n, fname), &w));
    lm_vol_args v = {3, w.D, w.H, w.W};
    TRY(LM_OP_CALL(n->be, grad_l2_bwd, G(n, fname), A(n, fname), (float)n->c.lambda, &v));
    TRY(decode_bwd(n));
    if (lm_net_uses_llm(&n->c))
        TRY(leb_bwd(n));
    TRY(enc_bwd(n, "moving", "fm"));
    TRY(enc_bwd(n, "fixed", "ff"));
    if (n->img_full) {
        TRY(pool_bwd(n, "moving", "moving_full"));
        TRY(pool_bwd(n, "fixed", "fixed_full"));
    }
    return 0;
}

int lm_net_image_grad(lm_net *n, float *dm, float *df)
{
    const char *m = n->img_full ? "moving_full" : "moving", *f = n->img_full ? "fixed_full" : "fixed";
    if (!G(n, m))
        return lm_error_set("no gradients yet (run lm_net_backward)");
    const size_t b = (size_t)INFO(n, m)->numel * sizeof(float);
    TRY(lm_backend_download(n->be, dm, G(n, m), b));
    return lm_backend_download(n->be, df, G(n, f), b);
}
