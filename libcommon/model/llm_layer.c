/* llm_layer.c — one pre-trained decoder layer (HF LlamaDecoderLayer semantics) with LoRA on
 * q/k/v, forward and backward, built from the kernel ops of lm_kernels.h (lm_llm.h has the math).
 * The forward keeps what the backward needs in buffers owned by the layer (grown on demand):
 * x, a = RMSNorm(x), the LoRA inner products s·(a Aᵀ), q and k after RoPE, v, the attention
 * probabilities [n_q, L, L], o, h1, b = RMSNorm(h1), gate, up and silu(gate)·up.
 * Not here: loading (llm_load.c), the rest of the LEB (Adapter0), optimisers.
 */
#include "model/lm_llm.h"

#include "cli/lm_rng.h"
#include "io/lm_error.h"
#include "lm_kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum {
    ACT_X,
    ACT_A,
    ACT_Q,
    ACT_K,
    ACT_V,
    ACT_O,
    ACT_H1,
    ACT_B,
    ACT_G,
    ACT_U,
    ACT_M,
    ACT_P,
    ACT_T0,
    ACT_T1,
    ACT_T2,
    ACT_N
};
enum {
    GR_DH1,
    GR_DB,
    GR_DM,
    GR_DG,
    GR_DU,
    GR_DO,
    GR_DQR,
    GR_DKR,
    GR_DV,
    GR_DQ,
    GR_DK,
    GR_DA,
    GR_DT,
    GR_N
};

struct lm_llm_layer {
    lm_backend *be;
    lm_llm_config c;
    lm_llm_layer_opts o;
    int layer;
    uint64_t checksum;
    lm_dtype wdtype;
    int64_t D, F, qd, kvd, out_dim[LM_LLM_NLIN], in_dim[LM_LLM_NLIN];
    float s; /* LoRA scaling alpha / r */
    void *w[LM_LLM_NLIN];
    float *b[LM_LLM_NLIN]; /* NULL: no bias */
    float *ln_in, *ln_post;
    float *A[3], *B[3], *dA[3], *dB[3]; /* LoRA on q, k, v (NULL when rank 0) */
    int64_t cap_L, cap_bwd_L, L;
    int have_fwd;
    float *act[ACT_N];
    float *grd[GR_N];
};

lm_llm_layer_opts lm_llm_layer_opts_default(void)
{
    lm_llm_layer_opts o = {64, 64.0f, 0, 1};
    return o;
}

static float *alloc_f32(lm_backend *be, int64_t n)
{
    return lm_backend_alloc(be, (size_t)(n > 0 ? n : 1) * sizeof(float));
}

static int upload_t(lm_backend *be, void **dst, const lm_tensor *t)
{
    *dst = lm_backend_alloc(be, t->nbytes ? t->nbytes : 1);
    if (!*dst)
        return -1;
    return lm_backend_upload(be, *dst, t->data, t->nbytes);
}

static void free_acts(lm_llm_layer *ly)
{
    for (int i = 0; i < ACT_N; i++) {
        lm_backend_free(ly->be, ly->act[i]);
        ly->act[i] = NULL;
    }
    ly->cap_L = 0;
    ly->have_fwd = 0;
}

static void free_grads(lm_llm_layer *ly)
{
    for (int i = 0; i < GR_N; i++) {
        lm_backend_free(ly->be, ly->grd[i]);
        ly->grd[i] = NULL;
    }
    ly->cap_bwd_L = 0;
}

void lm_llm_layer_free(lm_llm_layer *ly)
{
    if (!ly)
        return;
    free_acts(ly);
    free_grads(ly);
    for (int i = 0; i < LM_LLM_NLIN; i++) {
        lm_backend_free(ly->be, ly->w[i]);
        lm_backend_free(ly->be, ly->b[i]);
    }
    for (int i = 0; i < 3; i++) {
        lm_backend_free(ly->be, ly->A[i]);
        lm_backend_free(ly->be, ly->B[i]);
        lm_backend_free(ly->be, ly->dA[i]);
        lm_backend_free(ly->be, ly->dB[i]);
    }
    lm_backend_free(ly->be, ly->ln_in);
    lm_backend_free(ly->be, ly->ln_post);
    free(ly);
}

int lm_llm_layer_create(lm_llm_layer **out, lm_backend *be, const lm_llm_config *c,
                        const lm_llm_weights *w, const lm_llm_layer_opts *o)
{
    *out = NULL;
    lm_llm_layer_opts def = lm_llm_layer_opts_default();
    if (!o)
        o = &def;
    if (o->rank < 0 || !isfinite(o->alpha))
        return lm_error_set("LoRA rank %d must be >= 0 and alpha finite", o->rank);
    if (o->rope && c->rope_scaling[0])
        return lm_error_set("rope_scaling '%s' in config.json is not supported (only plain "
                            "RoPE); use RoPE off",
                            c->rope_scaling);
    if (o->rope && c->rope_partial != 1.0)
        return lm_error_set("partial_rotary_factor %g in config.json is not supported; use RoPE "
                            "off",
                            c->rope_partial);
    if (w->wdtype != LM_F32 && w->wdtype != LM_BF16)
        return lm_error_set("LLM weights must be F32 or BF16");
    lm_llm_layer *ly = calloc(1, sizeof *ly);
    if (!ly)
        return lm_error_set("out of memory");
    ly->be = be;
    ly->c = *c;
    ly->o = *o;
    ly->layer = w->layer;
    ly->checksum = w->checksum;
    ly->wdtype = w->wdtype;
    ly->D = c->hidden;
    ly->F = c->intermediate;
    ly->qd = (int64_t)c->n_heads * c->head_dim;
    ly->kvd = (int64_t)c->n_kv_heads * c->head_dim;
    const int64_t od[LM_LLM_NLIN] = {ly->qd, ly->kvd, ly->kvd, ly->D, ly->F, ly->F, ly->D};
    const int64_t id[LM_LLM_NLIN] = {ly->D, ly->D, ly->D, ly->qd, ly->D, ly->D, ly->F};
    memcpy(ly->out_dim, od, sizeof od);
    memcpy(ly->in_dim, id, sizeof id);
    ly->s = o->rank > 0 ? o->alpha / (float)o->rank : 0.0f;
    for (int i = 0; i < LM_LLM_NLIN; i++) {
        const lm_tensor *t = &w->w[i];
        if (t->ndim != 2 || t->shape[0] != od[i] || t->shape[1] != id[i] ||
            t->dtype != ly->wdtype) {
            lm_error_set("layer %d: weight %d does not match the config", w->layer, i);
            goto fail;
        }
        if (upload_t(be, &ly->w[i], t) < 0)
            goto fail;
        if (w->b[i].data) {
            if (w->b[i].dtype != LM_F32 || lm_tensor_numel(&w->b[i]) != od[i]) {
                lm_error_set("layer %d: bias %d does not match the config", w->layer, i);
                goto fail;
            }
            if (upload_t(be, (void **)&ly->b[i], &w->b[i]) < 0)
                goto fail;
        }
    }
    if (w->ln_in.dtype != LM_F32 || lm_tensor_numel(&w->ln_in) != ly->D ||
        w->ln_post.dtype != LM_F32 || lm_tensor_numel(&w->ln_post) != ly->D) {
        lm_error_set("layer %d: norm weights do not match the config", w->layer);
        goto fail;
    }
    if (upload_t(be, (void **)&ly->ln_in, &w->ln_in) < 0 ||
        upload_t(be, (void **)&ly->ln_post, &w->ln_post) < 0)
        goto fail;
    if (o->rank > 0) {
        for (int i = 0; i < 3; i++) {
            int64_t na = (int64_t)o->rank * ly->D, nb = od[i] * o->rank;
            if (!(ly->A[i] = alloc_f32(be, na)) || !(ly->B[i] = alloc_f32(be, nb)) ||
                !(ly->dA[i] = alloc_f32(be, na)) || !(ly->dB[i] = alloc_f32(be, nb)))
                goto fail;
            if (LM_OP_CALL(be, fill, ly->A[i], 0.0f, na) < 0 ||
                LM_OP_CALL(be, fill, ly->B[i], 0.0f, nb) < 0 ||
                LM_OP_CALL(be, fill, ly->dA[i], 0.0f, na) < 0 ||
                LM_OP_CALL(be, fill, ly->dB[i], 0.0f, nb) < 0)
                goto fail;
        }
    }
    *out = ly;
    return 0;
fail:
    lm_llm_layer_free(ly);
    return -1;
}

int lm_llm_layer_load(lm_llm_layer **out, lm_backend *be, lm_llm *m, int layer, lm_dtype wdtype,
                      const lm_llm_layer_opts *o)
{
    lm_llm_weights w;
    *out = NULL;
    if (lm_llm_load_layer(&w, m, layer, wdtype) < 0)
        return -1;
    int rc = lm_llm_layer_create(out, be, &m->cfg, &w, o);
    lm_llm_weights_free(&w);
    return rc;
}

int lm_llm_layer_lora_init(lm_llm_layer *ly, uint64_t seed, uint64_t stream)
{
    if (ly->o.rank == 0)
        return 0;
    const int64_t na = (int64_t)ly->o.rank * ly->D;
    const double bound = 1.0 / sqrt((double)ly->D); /* kaiming_uniform(a=√5), fan_in = D */
    float *h = malloc((size_t)na * sizeof *h);
    if (!h)
        return lm_error_set("out of memory");
    int rc = 0;
    for (int i = 0; i < 3 && rc == 0; i++) {
        lm_rng r;
        lm_rng_init(&r, seed, stream + (uint64_t)i);
        for (int64_t j = 0; j < na; j++)
            h[j] = (float)(-bound + 2.0 * bound * lm_rng_uniform(&r));
        rc = lm_backend_upload(ly->be, ly->A[i], h, (size_t)na * sizeof *h);
        if (rc == 0)
            rc = LM_OP_CALL(ly->be, fill, ly->B[i], 0.0f, ly->out_dim[i] * ly->o.rank);
    }
    free(h);
    return rc < 0 ? -1 : 0;
}

int lm_llm_layer_params(lm_llm_layer *ly, lm_llm_param *out, int cap)
{
    static const char *const names[6] = {"lora_q.A", "lora_q.B", "lora_k.A",
                                         "lora_k.B", "lora_v.A", "lora_v.B"};
    if (ly->o.rank == 0)
        return 0;
    if (cap < 6)
        return lm_error_set("lm_llm_layer_params: room for 6 parameters needed");
    for (int i = 0; i < 3; i++) {
        lm_llm_param *pa = &out[2 * i], *pb = &out[2 * i + 1];
        pa->name = names[2 * i];
        pa->ndim = 2;
        pa->shape[0] = ly->o.rank;
        pa->shape[1] = ly->D;
        pa->value = ly->A[i];
        pa->grad = ly->dA[i];
        pb->name = names[2 * i + 1];
        pb->ndim = 2;
        pb->shape[0] = ly->out_dim[i];
        pb->shape[1] = ly->o.rank;
        pb->value = ly->B[i];
        pb->grad = ly->dB[i];
        pa->numel = pa->shape[0] * pa->shape[1];
        pb->numel = pb->shape[0] * pb->shape[1];
    }
    return 6;
}

int lm_llm_layer_zero_grad(lm_llm_layer *ly)
{
    for (int i = 0; i < 3 && ly->o.rank > 0; i++)
        if (LM_OP_CALL(ly->be, fill, ly->dA[i], 0.0f, (int64_t)ly->o.rank * ly->D) < 0 ||
            LM_OP_CALL(ly->be, fill, ly->dB[i], 0.0f, ly->out_dim[i] * ly->o.rank) < 0)
            return -1;
    return 0;
}

int lm_llm_layer_width(const lm_llm_layer *ly)
{
    return (int)ly->D;
}
uint64_t lm_llm_layer_checksum(const lm_llm_layer *ly)
{
    return ly->checksum;
}
int lm_llm_layer_index(const lm_llm_layer *ly)
{
    return ly->layer;
}

/* Elements of activation buffer i for L tokens. */
static int64_t act_size(const lm_llm_layer *ly, int i, int64_t L)
{
    switch (i) {
    case ACT_X:
    case ACT_A:
    case ACT_H1:
    case ACT_B: return L * ly->D;
    case ACT_Q:
    case ACT_O: return L * ly->qd;
    case ACT_K:
    case ACT_V: return L * ly->kvd;
    case ACT_G:
    case ACT_U:
    case ACT_M: return L * ly->F;
    case ACT_P: return (int64_t)ly->c.n_heads * L * L;
    default: return L * ly->o.rank; /* ACT_T*: 0 without LoRA */
    }
}

static int64_t grd_size(const lm_llm_layer *ly, int i, int64_t L)
{
    switch (i) {
    case GR_DH1:
    case GR_DB:
    case GR_DA: return L * ly->D;
    case GR_DM:
    case GR_DG:
    case GR_DU: return L * ly->F;
    case GR_DO:
    case GR_DQR:
    case GR_DQ: return L * ly->qd;
    case GR_DKR:
    case GR_DV:
    case GR_DK: return L * ly->kvd;
    default: return L * ly->o.rank; /* GR_DT */
    }
}

int lm_llm_layer_reserve(lm_llm_layer *ly, int64_t L)
{
    if (L <= 0)
        return lm_error_set("LLM layer: sequence length %lld must be positive", (long long)L);
    if (L <= ly->cap_L)
        return 0;
    free_acts(ly);
    for (int i = 0; i < ACT_N; i++) {
        int64_t n = act_size(ly, i, L);
        if (n == 0)
            continue;
        if (!(ly->act[i] = alloc_f32(ly->be, n))) {
            free_acts(ly);
            return lm_error_prefix("LLM layer: activations for L = %lld", (long long)L);
        }
    }
    ly->cap_L = L;
    return 0;
}

static int reserve_bwd(lm_llm_layer *ly, int64_t L)
{
    if (L <= ly->cap_bwd_L)
        return 0;
    free_grads(ly);
    for (int i = 0; i < GR_N; i++) {
        int64_t n = grd_size(ly, i, L);
        if (n == 0)
            continue;
        if (!(ly->grd[i] = alloc_f32(ly->be, n))) {
            free_grads(ly);
            return lm_error_prefix("LLM layer: gradient buffers for L = %lld", (long long)L);
        }
    }
    ly->cap_bwd_L = L;
    return 0;
}

#define TRY(call)                                                                                  \
    do {                                                                                           \
        if ((call) < 0)                                                                            \
            return lm_error_prefix("LLM layer %d", ly->layer);                                     \
    } while (0)

static lm_gemm_args gargs(const lm_llm_layer *ly, int64_t M, int i, int acc)
{
    lm_gemm_args a = {M, ly->out_dim[i], ly->in_dim[i], ly->wdtype, acc};
    return a;
}

int lm_llm_layer_fwd(lm_llm_layer *ly, float *y, const float *x, int64_t L)
{
    lm_backend *be = ly->be;
    if (lm_llm_layer_reserve(ly, L) < 0)
        return -1;
    ly->have_fwd = 0;
    ly->L = L;
    float **t = ly->act;
    const int64_t D = ly->D, F = ly->F;
    const int r = ly->o.rank;
    lm_rownorm_args rn = {L, D, (float)ly->c.rms_eps};
    float *proj[3] = {t[ACT_Q], t[ACT_K], t[ACT_V]};
    float *tl[3] = {t[ACT_T0], t[ACT_T1], t[ACT_T2]};

    TRY(LM_OP_CALL(be, copy, t[ACT_X], x, L * D));
    TRY(LM_OP_CALL(be, rmsnorm_fwd, t[ACT_A], t[ACT_X], ly->ln_in, &rn));
    for (int i = 0; i < 3; i++) {
        lm_gemm_args g = gargs(ly, L, i, 0);
        TRY(LM_OP_CALL(be, gemm_fwd, proj[i], t[ACT_A], ly->w[i], ly->b[i], &g));
        if (r > 0) {
            /* PEFT: base(a) + B(A(a))·s — s applied to the r-wide inner product */
            lm_gemm_args ga = {L, r, D, LM_F32, 0};
            lm_gemm_args gb = {L, ly->out_dim[i], r, LM_F32, 1};
            TRY(LM_OP_CALL(be, gemm_fwd, tl[i], t[ACT_A], ly->A[i], NULL, &ga));
            TRY(LM_OP_CALL(be, scale, tl[i], tl[i], ly->s, L * r));
            TRY(LM_OP_CALL(be, gemm_fwd, proj[i], tl[i], ly->B[i], NULL, &gb));
        }
    }
    if (ly->o.rope) {
        lm_rope_args rq = {L, ly->c.n_heads, ly->c.head_dim, (float)ly->c.rope_theta, 0};
        lm_rope_args rk = {L, ly->c.n_kv_heads, ly->c.head_dim, (float)ly->c.rope_theta, 0};
        TRY(LM_OP_CALL(be, rope_fwd, t[ACT_Q], t[ACT_Q], &rq));
        TRY(LM_OP_CALL(be, rope_fwd, t[ACT_K], t[ACT_K], &rk));
    }
    lm_attn_args aa = {L, ly->c.n_heads, ly->c.n_kv_heads, ly->c.head_dim, ly->o.causal};
    TRY(LM_OP_CALL(be, attention_fwd, t[ACT_O], t[ACT_P], t[ACT_Q], t[ACT_K], t[ACT_V], &aa));
    lm_gemm_args go = gargs(ly, L, LM_LLM_O, 0);
    TRY(LM_OP_CALL(be, gemm_fwd, t[ACT_H1], t[ACT_O], ly->w[LM_LLM_O], ly->b[LM_LLM_O], &go));
    TRY(LM_OP_CALL(be, add, t[ACT_H1], t[ACT_X], t[ACT_H1], L * D));
    TRY(LM_OP_CALL(be, rmsnorm_fwd, t[ACT_B], t[ACT_H1], ly->ln_post, &rn));
    lm_gemm_args gg = gargs(ly, L, LM_LLM_GATE, 0), gu = gargs(ly, L, LM_LLM_UP, 0);
    TRY(LM_OP_CALL(be, gemm_fwd, t[ACT_G], t[ACT_B], ly->w[LM_LLM_GATE], ly->b[LM_LLM_GATE], &gg));
    TRY(LM_OP_CALL(be, gemm_fwd, t[ACT_U], t[ACT_B], ly->w[LM_LLM_UP], ly->b[LM_LLM_UP], &gu));
    TRY(LM_OP_CALL(be, swiglu_fwd, t[ACT_M], t[ACT_G], t[ACT_U], L * F));
    /* y = h1 + m Wdᵀ: written as a fresh product then the residual, as HF adds them */
    lm_gemm_args gd = gargs(ly, L, LM_LLM_DOWN, 0);
    TRY(LM_OP_CALL(be, gemm_fwd, y, t[ACT_M], ly->w[LM_LLM_DOWN], ly->b[LM_LLM_DOWN], &gd));
    TRY(LM_OP_CALL(be, add, y, t[ACT_H1], y, L * D));
    ly->have_fwd = 1;
    return 0;
}

int lm_llm_layer_bwd(lm_llm_layer *ly, float *dx, const float *dy)
{
    lm_backend *be = ly->be;
    if (!ly->have_fwd)
        return lm_error_set("LLM layer %d: backward without a forward", ly->layer);
    const int64_t L = ly->L, D = ly->D, F = ly->F;
    const int r = ly->o.rank;
    if (reserve_bwd(ly, L) < 0)
        return -1;
    float **t = ly->act, **g = ly->grd;
    lm_rownorm_args rn = {L, D, (float)ly->c.rms_eps};
    float *proj_in = t[ACT_A];
    float *tl[3] = {t[ACT_T0], t[ACT_T1], t[ACT_T2]};
    float *dproj[3] = {g[GR_DQ], g[GR_DK], g[GR_DV]};

    /* MLP: y = h1 + swiglu(b Wgᵀ, b Wuᵀ) Wdᵀ */
    TRY(LM_OP_CALL(be, copy, g[GR_DH1], dy, L * D));
    TRY(LM_OP_CALL(be, fill, g[GR_DM], 0.0f, L * F));
    lm_gemm_args gd = gargs(ly, L, LM_LLM_DOWN, 0);
    TRY(LM_OP_CALL(be, gemm_bwd, g[GR_DM], NULL, NULL, dy, t[ACT_M], ly->w[LM_LLM_DOWN], &gd));
    TRY(LM_OP_CALL(be, fill, g[GR_DG], 0.0f, L * F));
    TRY(LM_OP_CALL(be, fill, g[GR_DU], 0.0f, L * F));
    TRY(LM_OP_CALL(be, swiglu_bwd, g[GR_DG], g[GR_DU], g[GR_DM], t[ACT_G], t[ACT_U], L * F));
    TRY(LM_OP_CALL(be, fill, g[GR_DB], 0.0f, L * D));
    lm_gemm_args gg = gargs(ly, L, LM_LLM_GATE, 0), gu = gargs(ly, L, LM_LLM_UP, 0);
    TRY(LM_OP_CALL(be, gemm_bwd, g[GR_DB], NULL, NULL, g[GR_DG], t[ACT_B], ly->w[LM_LLM_GATE],
                   &gg));
    TRY(LM_OP_CALL(be, gemm_bwd, g[GR_DB], NULL, NULL, g[GR_DU], t[ACT_B], ly->w[LM_LLM_UP], &gu));
    TRY(LM_OP_CALL(be, rmsnorm_bwd, g[GR_DH1], g[GR_DB], t[ACT_H1], ly->ln_post, &rn));

    /* attention: h1 = x + o Woᵀ */
    if (dx)
        TRY(LM_OP_CALL(be, axpy, dx, g[GR_DH1], 1.0f, L * D));
    TRY(LM_OP_CALL(be, fill, g[GR_DO], 0.0f, L * ly->qd));
    lm_gemm_args go = gargs(ly, L, LM_LLM_O, 0);
    TRY(LM_OP_CALL(be, gemm_bwd, g[GR_DO], NULL, NULL, g[GR_DH1], t[ACT_O], ly->w[LM_LLM_O], &go));
    float *dq_r = ly->o.rope ? g[GR_DQR] : g[GR_DQ];
    float *dk_r = ly->o.rope ? g[GR_DKR] : g[GR_DK];
    TRY(LM_OP_CALL(be, fill, dq_r, 0.0f, L * ly->qd));
    TRY(LM_OP_CALL(be, fill, dk_r, 0.0f, L * ly->kvd));
    TRY(LM_OP_CALL(be, fill, g[GR_DV], 0.0f, L * ly->kvd));
    lm_attn_args aa = {L, ly->c.n_heads, ly->c.n_kv_heads, ly->c.head_dim, ly->o.causal};
    TRY(LM_OP_CALL(be, attention_bwd, dq_r, dk_r, g[GR_DV], g[GR_DO], t[ACT_Q], t[ACT_K], t[ACT_V],
                   t[ACT_P], &aa));
    if (ly->o.rope) {
        lm_rope_args rq = {L, ly->c.n_heads, ly->c.head_dim, (float)ly->c.rope_theta, 0};
        lm_rope_args rk = {L, ly->c.n_kv_heads, ly->c.head_dim, (float)ly->c.rope_theta, 0};
        TRY(LM_OP_CALL(be, fill, g[GR_DQ], 0.0f, L * ly->qd));
        TRY(LM_OP_CALL(be, fill, g[GR_DK], 0.0f, L * ly->kvd));
        TRY(LM_OP_CALL(be, rope_bwd, g[GR_DQ], dq_r, &rq));
        TRY(LM_OP_CALL(be, rope_bwd, g[GR_DK], dk_r, &rk));
    }

    /* q/k/v projections with LoRA, into da; then the input RMSNorm */
    TRY(LM_OP_CALL(be, fill, g[GR_DA], 0.0f, L * D));
    for (int i = 0; i < 3; i++) {
        lm_gemm_args gp = gargs(ly, L, i, 0);
        TRY(LM_OP_CALL(be, gemm_bwd, g[GR_DA], NULL, NULL, dproj[i], proj_in, ly->w[i], &gp));
        if (r > 0) {
            lm_gemm_args ga = {L, r, D, LM_F32, 0};
            lm_gemm_args gb = {L, ly->out_dim[i], r, LM_F32, 0};
            /* proj += ts Bᵀ, ts = s·(a Aᵀ): dB += dprojᵀ ts, dts = dproj B */
            TRY(LM_OP_CALL(be, fill, g[GR_DT], 0.0f, L * r));
            TRY(LM_OP_CALL(be, gemm_bwd, g[GR_DT], ly->dB[i], NULL, dproj[i], tl[i], ly->B[i],
                           &gb));
            TRY(LM_OP_CALL(be, scale, g[GR_DT], g[GR_DT], ly->s, L * r));
            TRY(LM_OP_CALL(be, gemm_bwd, g[GR_DA], ly->dA[i], NULL, g[GR_DT], proj_in, ly->A[i],
                           &ga));
        }
    }
    if (dx)
        TRY(LM_OP_CALL(be, rmsnorm_bwd, dx, g[GR_DA], t[ACT_X], ly->ln_in, &rn));
    return 0;
}
