/* test_net.c — the network library (libcommon/model/lm_net.h):
 *   - golden files of the PyTorch reference (tests/reference/NET_GOLDEN.md): every stored
 *     boundary and gradient within the contract's tolerances (skipped while the files or
 *     ../shared are absent), measured errors printed, for variant T, the half-resolution
 *     strategy and every switch and ablation (figure, add, causal, no RoPE, no-leb, one-leb,
 *     no-lora, vit); each golden also shows that one of its gradients 25 % off fails;
 *   - finite differences of the whole loss (directional, float32) w.r.t. parameters of every
 *     part and both input images, on tiny configs of every implemented variant with a tiny
 *     random LLM layer built here, and a wrong gradient shown to fail;
 *   - every shape of MODEL.md §7.1 and the parameter counts of §12 for both paper configs
 *     (shape propagation only);
 *   - identity start (heads N(0, 1e-5)): |φ|∞ small; checkpoint round trip and refusals.
 */
#include "cli/lm_rng.h"
#include "io/lm_error.h"
#include "io/lm_safetensors.h"
#include "lm_kernels.h"
#include "lm_test.h"
#include "model/lm_net.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static lm_backend *be(void)
{
    return lm_backend_cpu();
}

/* ---- a tiny random LLM layer ------------------------------------------------------------------ */

static lm_llm_config tiny_llm_cfg(void)
{
    lm_llm_config c;
    memset(&c, 0, sizeof c);
    c.arch = LM_LLM_LLAMA;
    snprintf(c.model_type, sizeof c.model_type, "llama");
    c.hidden = 16;
    c.intermediate = 24;
    c.n_layers = 4;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 4;
    c.rms_eps = 1e-5;
    c.rope_theta = 10000.0;
    c.rope_partial = 1.0;
    return c;
}

static void rand_weights(lm_llm_weights *w, const lm_llm_config *c, uint64_t stream)
{
    lm_rng r;
    lm_rng_init(&r, lm_test_seed(), stream);
    memset(w, 0, sizeof *w);
    const int64_t D = c->hidden, F = c->intermediate, qd = (int64_t)c->n_heads * c->head_dim,
                  kvd = (int64_t)c->n_kv_heads * c->head_dim;
    const int64_t od[LM_LLM_NLIN] = {qd, kvd, kvd, D, F, F, D};
    const int64_t id[LM_LLM_NLIN] = {D, D, D, qd, D, D, F};
    for (int i = 0; i < LM_LLM_NLIN; i++) {
        int64_t sh[2] = {od[i], id[i]};
        lm_tensor_alloc(&w->w[i], "w", LM_F32, 2, sh);
        float *p = w->w[i].data;
        for (int64_t k = 0; k < od[i] * id[i]; k++)
            p[k] = (float)((2 * lm_rng_uniform(&r) - 1) / sqrt((double)id[i]));
    }
    int64_t sd[1] = {D};
    lm_tensor_alloc(&w->ln_in, "ln_in", LM_F32, 1, sd);
    lm_tensor_alloc(&w->ln_post, "ln_post", LM_F32, 1, sd);
    for (int64_t k = 0; k < D; k++) {
        ((float *)w->ln_in.data)[k] = (float)(1 + 0.3 * (2 * lm_rng_uniform(&r) - 1));
        ((float *)w->ln_post.data)[k] = (float)(1 + 0.3 * (2 * lm_rng_uniform(&r) - 1));
    }
    w->wdtype = LM_F32;
    w->layer = (int)stream;
    w->checksum = 1000 + stream;
}

/* A tiny config: grid g (multiple of 16), the random LLM's widths, LoRA rank 3 alpha 6. */
static lm_net_config tiny_net_cfg(int64_t g0, int64_t g1, int64_t g2, int ablation)
{
    lm_net_config c;
    lm_net_config_preset(&c, "tiny");
    c.shape[0] = g0, c.shape[1] = g1, c.shape[2] = g2;
    lm_llm_config lc = tiny_llm_cfg();
    c.ablation = ablation;
    c.llm_hidden = lc.hidden;
    c.llm_q_dim = lc.n_heads * lc.head_dim;
    c.llm_kv_dim = lc.n_kv_heads * lc.head_dim;
    c.a0_hidden = 12;
    c.llm_heads = lc.n_heads;
    c.lora_rank = ablation == LM_NET_ABL_NO_LORA || ablation == LM_NET_ABL_VIT ? 0 : 3;
    c.lora_alpha = 6;
    c.n_layers = ablation == LM_NET_ABL_NO_LEB || ablation == LM_NET_ABL_VIT ? 0
                 : ablation == LM_NET_ABL_ONE_LEB                              ? 1
                                                                               : 2;
    c.layers[0] = 1, c.layers[1] = 2;
    if (ablation == LM_NET_ABL_VIT)
        c.rope = 0;
    return c;
}

static lm_net *make_net(const lm_net_config *c)
{
    lm_net *n = NULL;
    if (lm_net_create(&n, be(), c) < 0) {
        lm_test_fail(__FILE__, __LINE__, "create: %s", lm_error());
        return NULL;
    }
    if (lm_net_uses_llm_layers(c)) {
        lm_llm_config lc = tiny_llm_cfg();
        lm_llm_layer_opts o = {c->lora_rank, (float)c->lora_alpha, c->causal, c->rope};
        lm_llm_layer *ly[2] = {NULL, NULL};
        for (int k = 0; k < c->n_layers; k++) {
            lm_llm_weights w;
            rand_weights(&w, &lc, 40 + (uint64_t)k);
            LM_CHECK(lm_llm_layer_create(&ly[k], be(), &lc, &w, &o) == 0, "%s", lm_error());
            lm_llm_weights_free(&w);
        }
        LM_CHECK(lm_net_attach_layers(n, ly, c->n_layers) == 0, "%s", lm_error());
    }
    return n;
}

/* inputs per NET_GOLDEN.md: hash with t = 1000/1001, b = 1, then 0.5·(v+1); the label formula */
static void make_inputs(const int64_t d[3], float **m, float **f, int32_t **ms, int32_t **fs)
{
    const int64_t N = d[0] * d[1] * d[2];
    *m = malloc((size_t)N * sizeof **m);
    *f = malloc((size_t)N * sizeof **f);
    *ms = malloc((size_t)N * sizeof **ms);
    *fs = malloc((size_t)N * sizeof **fs);
    for (int64_t j = 0; j < N; j++) {
        (*m)[j] = 0.5f * (lm_net_hash_value(1000, (uint64_t)j, 1.0f) + 1.0f);
        (*f)[j] = 0.5f * (lm_net_hash_value(1001, (uint64_t)j, 1.0f) + 1.0f);
    }
    for (int64_t i = 0; i < d[0]; i++)
        for (int64_t j = 0; j < d[1]; j++)
            for (int64_t k = 0; k < d[2]; k++) {
                int64_t x = (i * d[1] + j) * d[2] + k;
                (*fs)[x] = (int32_t)(((i / 8) + 2 * (j / 8) + 3 * (k / 8)) % 4);
                (*ms)[x] = (int32_t)((((i + 2) / 8) + 2 * ((j + 1) / 8) + 3 * (k / 8)) % 4);
            }
}

static void download(float *h, const float *b, int64_t n)
{
    lm_backend_download(be(), h, b, (size_t)n * sizeof(float));
}

/* ---- finite differences ----------------------------------------------------------------------- */

typedef struct {
    lm_net *n;
    int64_t d[3];
    float *m, *f;
    int32_t *ms, *fs;
} fdctx;

static double eval_loss(fdctx *x)
{
    lm_net_loss_value v;
    if (lm_net_set_images(x->n, x->m, x->f, x->d) < 0 || lm_net_forward(x->n) < 0 ||
        lm_net_loss(x->n, &v, x->ms, x->fs, 0, NULL, NULL) < 0) {
        lm_test_fail(__FILE__, __LINE__, "forward: %s", lm_error());
        return NAN;
    }
    return v.loss;
}

/* Directional derivative of the loss along a random ±1 direction (masked to a stride) of the
 * host array x (uploaded by `set` after each change), vs g·v. Returns the relative error. */
typedef void (*setter)(fdctx *c, void *arg, const float *x);

static double fd_dir(fdctx *c, float *x, int64_t n, const float *g, setter set, void *arg,
                     double h, uint64_t stream, double *gv_out, double *fd_out)
{
    lm_rng r;
    lm_rng_init(&r, lm_test_seed(), stream);
    float *v = malloc((size_t)n * sizeof *v), *x0 = malloc((size_t)n * sizeof *x0);
    memcpy(x0, x, (size_t)n * sizeof *x0);
    /* along the gradient (the largest change of the loss against float32 noise) with a
     * random part, so that a gradient off in size or in direction both show */
    double gv = 0, gm = 0;
    for (int64_t i = 0; i < n; i++)
        gm = fmax(gm, fabs(g[i]));
    for (int64_t i = 0; i < n; i++) {
        double u = lm_rng_uniform(&r) < 0.5 ? -0.25 : 0.25;
        v[i] = (float)(gm > 0 ? g[i] / gm + u * fabs(g[i]) / gm : u);
        gv += (double)g[i] * v[i];
    }
    double lp, lm;
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(x0[i] + h * v[i]);
    set(c, arg, x);
    lp = eval_loss(c);
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(x0[i] - h * v[i]);
    set(c, arg, x);
    lm = eval_loss(c);
    memcpy(x, x0, (size_t)n * sizeof *x0);
    set(c, arg, x);
    double fd = (lp - lm) / (2 * h);
    free(v);
    free(x0);
    *gv_out = gv;
    *fd_out = fd;
    return fabs(fd - gv) / fmax(fabs(gv), 1e-6);
}

static void set_param(fdctx *c, void *arg, const float *x)
{
    (void)c;
    lm_net_param *p = arg;
    lm_backend_upload(be(), p->value, x, (size_t)p->numel * sizeof(float));
}

static void set_moving(fdctx *c, void *arg, const float *x)
{
    (void)arg;
    (void)x; /* c->m is x itself */
    (void)c;
}

static double fd_h(void)
{
    const char *e = getenv("LM_NET_FD_H");
    return e ? atof(e) : 3e-4;
}

/* gradients of every tensor of a net after loss + backward */
static void fd_case(const char *what, lm_net_config cfg, const char *const *params, int np,
                    double tol, int show_bad)
{
    lm_net *n = make_net(&cfg);
    if (!n)
        return;
    LM_CHECK(lm_net_fill_hash(n) == 0, "%s", lm_error());
    fdctx c = {n, {0, 0, 0}, NULL, NULL, NULL, NULL};
    for (int i = 0; i < 3; i++)
        c.d[i] = cfg.half ? 2 * cfg.shape[i] : cfg.shape[i];
    make_inputs(c.d, &c.m, &c.f, &c.ms, &c.fs);
    double l0 = eval_loss(&c);
    LM_CHECK(lm_net_zero_grad(n) == 0 && lm_net_backward(n) == 0, "%s", lm_error());
    const int64_t N = c.d[0] * c.d[1] * c.d[2];
    float *gm = malloc((size_t)N * sizeof *gm), *gf = malloc((size_t)N * sizeof *gf);
    LM_CHECK(lm_net_image_grad(n, gm, gf) == 0, "%s", lm_error());
    double worst = 0;
    for (int i = 0; i < np; i++) {
        lm_net_param *p = lm_net_param_find(n, params[i]);
        LM_CHECK(p != NULL, "no parameter %s", params[i]);
        if (!p)
            continue;
        float *x = malloc((size_t)p->numel * sizeof *x), *g = malloc((size_t)p->numel * sizeof *g);
        download(x, p->value, p->numel);
        download(g, p->grad, p->numel);
        double mx = 0;
        for (int64_t k = 0; k < p->numel; k++)
            mx = fmax(mx, fabs(x[k]));
        /* steps that change the loss by about 3e-4, 1e-4 and 3e-5 along v (float32 noise is
         * below), at most 10 % of the tensor's largest value; the best of the three is taken,
         * since ReLU and trilinear kinks at the coarse levels (few values) can fall inside a
         * step */
        double gv0 = 0, gmax = 0;
        for (int64_t k = 0; k < p->numel; k++)
            gmax = fmax(gmax, fabs(g[k]));
        for (int64_t k = 0; k < p->numel; k++)
            gv0 += (double)g[k] * g[k] / fmax(gmax, 1e-30);
        double e = INFINITY, hs[3], gv = 0, fd = 0;
        for (int q = 0; q < 3; q++) {
            hs[q] = fmin(fd_h() / pow(3.0, q) / fmax(gv0, 1e-30), 0.1 * fmax(mx, 1e-3));
            double gq, fq, eq = fd_dir(&c, x, p->numel, g, set_param, p, hs[q], 500 + (uint64_t)i,
                                       &gq, &fq);
            if (eq < e)
                e = eq, gv = gq, fd = fq;
        }
        printf("#   %s %-28s g.v %+.6e  fd %+.6e  rel err %.2e\n", what, p->name, gv, fd, e);
        LM_CHECK(e < tol, "%s: %s: directional derivative %.6e vs finite difference %.6e "
                 "(rel err %.3g)", what, p->name, gv, fd, e);
        worst = fmax(worst, e);
        if (show_bad && i == 0) {
            /* a wrong gradient must fail: the same tensor's gradient 25 % off */
            for (int64_t k = 0; k < p->numel; k++)
                g[k] *= 0.75f;
            double eb = INFINITY;
            for (int q = 0; q < 3; q++)
                eb = fmin(eb, fd_dir(&c, x, p->numel, g, set_param, p, hs[q], 500 + (uint64_t)i,
                                     &gv, &fd));
            printf("#   %s %s with a gradient 25%% off: rel err %.2e (must exceed %.0e)\n",
                   what, p->name, eb, tol);
            LM_CHECK(eb > tol, "a gradient 25%% off passed (err %.3g)", eb);
        }
        free(x);
        free(g);
    }
    double gv = 0, fd = 0;
    double em = fd_dir(&c, c.m, N, gm, set_moving, NULL, 1e-4, 900, &gv, &fd);
    printf("#   %s %-28s g.v %+.6e  fd %+.6e  rel err %.2e\n", what, "moving image", gv, fd, em);
    LM_CHECK(em < tol, "%s: moving image: %.6e vs %.6e (rel err %.3g)", what, gv, fd, em);
    double ef = fd_dir(&c, c.f, N, gf, set_moving, NULL, 1e-4, 901, &gv, &fd);
    printf("#   %s %-28s g.v %+.6e  fd %+.6e  rel err %.2e\n", what, "fixed image", gv, fd, ef);
    LM_CHECK(ef < tol, "%s: fixed image: %.6e vs %.6e (rel err %.3g)", what, gv, fd, ef);
    worst = fmax(worst, fmax(em, ef));
    printf("# %s: loss %.6f, worst directional fd rel err %.2e (tol %.0e)\n", what, l0, worst, tol);
    free(gm), free(gf), free(c.m), free(c.f), free(c.ms), free(c.fs);
    lm_net_free(n);
}

static const char *const fd_params_llm[] = {
    "encoder.conv2.weight",  "encoder.conv1.weight",     "leb1.adapter.fc1.weight",
    "leb1.lora_q.B",         "leb1.lora_k.A",            "leb2.adapter.fc2.bias",
    "leb2.lora_v.B",         "dec.adapter4.weight",      "dec.adapter1.weight",
    "dec.s4.conv.weight",    "dec.s3.head.weight",       "dec.s2.conv.bias",
    "dec.s2.head.bias",      "dec.s1.conv.weight",       "dec.s1.head.weight",
};

static void t_fd_variant_t(void)
{
    fd_case("T", tiny_net_cfg(64, 64, 32, LM_NET_ABL_NONE), fd_params_llm,
            (int)(sizeof fd_params_llm / sizeof *fd_params_llm), 3e-2, 1);
}

static void t_fd_variants(void)
{
    static const char *const pl[] = {"leb1.adapter.fc2.weight", "dec.adapter2.weight",
                                     "dec.s3.conv.weight"};
    lm_net_config c = tiny_net_cfg(64, 32, 64, LM_NET_ABL_NONE);
    c.restore = LM_NET_RESTORE_FIGURE;
    fd_case("F", c, pl, 3, 3e-2, 0);
    c = tiny_net_cfg(64, 32, 64, LM_NET_ABL_NONE);
    c.combine = LM_NET_COMBINE_ADD;
    c.causal = 1;
    c.rope = 0;
    fd_case("add+causal+norope", c, pl, 3, 3e-2, 0);
    c = tiny_net_cfg(64, 32, 64, LM_NET_ABL_ONE_LEB);
    fd_case("one-leb", c, pl, 3, 3e-2, 0);
    c = tiny_net_cfg(64, 32, 64, LM_NET_ABL_NO_LORA);
    fd_case("no-lora", c, pl, 3, 3e-2, 0);
    static const char *const pn[] = {"dec.s4.conv.weight", "dec.s1.head.weight",
                                     "encoder.conv4.weight"};
    c = tiny_net_cfg(64, 32, 64, LM_NET_ABL_NO_LEB);
    fd_case("no-leb", c, pn, 3, 3e-2, 0);
    c = tiny_net_cfg(32, 32, 64, LM_NET_ABL_NONE);
    c.half = 1;
    fd_case("half", c, pl, 3, 3e-2, 0);
}

/* the vit ablation: tensors of both ViT blocks, and a wrong gradient shown to fail (golden_vit
 * compares every tensor with the float64 reference; float32 differences of the whole loss are
 * too noisy for the LayerNorm biases, whose gradients are ~10x smaller: up to 3e-2 here) */
static void t_fd_vit(void)
{
    static const char *const pv[] = {"leb1.vit.qkv.weight", "leb1.vit.ln1.weight",
                                     "leb1.vit.proj.bias",  "leb1.vit.ln2.weight",
                                     "leb1.vit.fc1.weight", "leb2.vit.fc2.weight"};
    fd_case("vit", tiny_net_cfg(64, 32, 64, LM_NET_ABL_VIT), pv, (int)(sizeof pv / sizeof *pv),
            3e-2, 1);
}

/* ---- shapes of MODEL.md §7.1 and counts of §12 -------------------------------------------------- */

static lm_net_config paper_cfg(const char *preset)
{
    lm_net_config c;
    lm_net_config_preset(&c, preset);
    c.llm_hidden = 4096;
    c.llm_q_dim = 4096;
    c.llm_kv_dim = 1024;
    c.a0_hidden = 4096;
    c.llm_heads = 32;
    c.n_layers = 2;
    c.layers[0] = 15, c.layers[1] = 16;
    return c;
}

static void check_shape(const lm_net_plan *p, const char *name, int ndim, const int64_t *want)
{
    const lm_net_act_info *a = lm_net_plan_get(p, name);
    LM_CHECK(a != NULL, "no activation %s", name);
    if (!a)
        return;
    char x[96], y[96];
    LM_CHECK(a->ndim == ndim && !memcmp(a->shape, want, (size_t)ndim * sizeof *want),
             "%s: %s, MODEL.md says %s", name, lm_shape_str(x, sizeof x, a->ndim, a->shape),
             lm_shape_str(y, sizeof y, ndim, want));
}

static void shapes_case(const char *preset, int64_t L, const int64_t g[3])
{
    lm_net_config c = paper_cfg(preset);
    lm_net_plan p;
    LM_CHECK(lm_net_plan_make(&p, &c) == 0, "%s", lm_error());
    LM_CHECK(lm_net_tokens(&c) == L, "L = %lld", (long long)lm_net_tokens(&c));
    int64_t s[5][3];
    for (int k = 0; k < 5; k++)
        for (int i = 0; i < 3; i++)
            s[k][i] = g[i] >> k;
    struct {
        const char *name;
        int64_t C;
        int lev; /* 0 = full, 1 = 1/2, ... */
    } vols[] = {
        {"fm1", 8, 0},     {"fm2", 16, 1},    {"fm3", 16, 2},   {"fm4", 32, 3},
        {"fm5", 32, 4},    {"ff1", 8, 0},     {"ff5", 32, 4},   {"f4", 32, 3},
        {"f3", 16, 2},     {"f2", 8, 1},      {"f1", 4, 0},     {"x4", 96, 3},
        {"s4", 32, 3},     {"x3", 80, 2},     {"s3", 16, 2},    {"phi3", 3, 2},
        {"phi3.up", 3, 1}, {"warp2", 1, 1},   {"x2", 60, 1},    {"s2", 16, 1},
        {"r2", 3, 1},      {"psi2", 3, 1},    {"psi2.up", 3, 0}, {"warp1", 1, 0},
        {"x1", 40, 0},     {"s1", 8, 0},      {"r1", 3, 0},     {"phi", 3, 0},
    };
    for (size_t i = 0; i < sizeof vols / sizeof *vols; i++) {
        int64_t w[5] = {1, vols[i].C, s[vols[i].lev][0], s[vols[i].lev][1], s[vols[i].lev][2]};
        check_shape(&p, vols[i].name, 5, w);
    }
    int64_t x0[3] = {1, L, 64}, t[3] = {1, L, 4096};
    check_shape(&p, "x0", 3, x0);
    check_shape(&p, "leb1", 3, t);
    check_shape(&p, "t", 3, t);
    for (int j = 4; j >= 1; j--) {
        char nm[8];
        snprintf(nm, sizeof nm, "a%d", j);
        int64_t a[3] = {1, L, 256LL << (2 * (4 - j))};
        check_shape(&p, nm, 3, a);
    }
    if (c.half) {
        int64_t w[5] = {1, 3, 2 * g[0], 2 * g[1], 2 * g[2]};
        check_shape(&p, "phi_full", 5, w);
    } else {
        LM_CHECK(lm_net_plan_get(&p, "phi_full") == NULL, "phi_full without half");
    }
    /* §12: parameter counts, §18 shapes */
    lm_net_param pt[64];
    int np = lm_net_params_plan(&c, pt, 64);
    LM_CHECK(np == 51, "%d parameters", np);
    int64_t tot = 0, enc = 0, dec = 0;
    for (int i = 0; i < np; i++) {
        tot += pt[i].numel;
        if (!strncmp(pt[i].name, "encoder.", 8))
            enc += pt[i].numel;
        if (!strncmp(pt[i].name, "dec.s", 5))
            dec += pt[i].numel;
    }
    LM_CHECK(tot == 142327729, "trainable %lld, MODEL.md §12 says 142,327,729", (long long)tot);
    LM_CHECK(enc == 52152 && dec == 155385, "encoder %lld decoder %lld", (long long)enc,
             (long long)dec);
    lm_net_param *a1 = NULL, *q = NULL, *kb = NULL, *s2 = NULL;
    for (int i = 0; i < np; i++) {
        a1 = !strcmp(pt[i].name, "dec.adapter1.weight") ? &pt[i] : a1;
        q = !strcmp(pt[i].name, "leb2.lora_q.B") ? &pt[i] : q;
        kb = !strcmp(pt[i].name, "leb1.lora_k.B") ? &pt[i] : kb;
        s2 = !strcmp(pt[i].name, "dec.s2.conv.weight") ? &pt[i] : s2;
    }
    LM_CHECK(a1 && a1->shape[0] == 16384 && a1->shape[1] == 4096, "dec.adapter1.weight");
    LM_CHECK(q && q->shape[0] == 4096 && q->shape[1] == 64, "leb2.lora_q.B");
    LM_CHECK(kb && kb->shape[0] == 1024 && kb->shape[1] == 64, "leb1.lora_k.B");
    LM_CHECK(s2 && s2->ndim == 5 && s2->shape[0] == 16 && s2->shape[1] == 60 && s2->shape[4] == 3,
             "dec.s2.conv.weight");
    printf("# %s: L = %lld, %d activations, %lld trainable parameters\n", preset, (long long)L,
           p.n, (long long)tot);
    c.restore = LM_NET_RESTORE_FIGURE;
    np = lm_net_params_plan(&c, pt, 64);
    tot = 0;
    for (int i = 0; i < np; i++)
        tot += pt[i].numel;
    LM_CHECK(tot == 143010561, "variant F: %lld trainable, MODEL.md §12 says 143,010,561",
             (long long)tot);
    /* the ablations, from §12's parts: LoRA 2,359,296; Adapter0b 33,562,624; decoder adapters
     * 89,150,720; no-leb also drops F_j's input channels of the stage convs; vit adds two ViT
     * blocks of 12·4096² + 13·4096 (qkv, proj, fc1, fc2, two LayerNorms) */
    static const struct {
        int abl;
        int64_t want;
    } ab[] = {
        {LM_NET_ABL_NO_LORA, 142327729LL - 2359296},
        {LM_NET_ABL_ONE_LEB, 142327729LL - 33562624 - 2359296 / 2},
        {LM_NET_ABL_NO_LEB,
         142327729LL - 17047552 - 33562624 - 2359296 - 89150720 - (32 * 32 + 16 * 16 + 16 * 8 + 8 * 4) * 27},
        {LM_NET_ABL_VIT, 142327729LL - 2359296 + 2 * (12LL * 4096 * 4096 + 13 * 4096)},
    };
    for (size_t i = 0; i < sizeof ab / sizeof *ab; i++) {
        c = paper_cfg(preset);
        c.ablation = ab[i].abl;
        c.lora_rank = ab[i].abl == LM_NET_ABL_ONE_LEB ? 64 : 0;
        c.n_layers = ab[i].abl == LM_NET_ABL_ONE_LEB ? 1 : ab[i].abl == LM_NET_ABL_NO_LORA ? 2 : 0;
        c.rope = ab[i].abl != LM_NET_ABL_VIT;
        np = lm_net_params_plan(&c, pt, 64);
        LM_CHECK(np > 0, "%s", lm_error());
        tot = 0;
        for (int k = 0; k < np; k++)
            tot += pt[k].numel;
        LM_CHECK(tot == ab[i].want, "ablation %d: %lld trainable, expected %lld", ab[i].abl,
                 (long long)tot, (long long)ab[i].want);
    }
}

static void t_shapes_abdomen(void)
{
    int64_t g[3] = {96, 80, 96};
    shapes_case("abdomen", 180, g);
}

static void t_shapes_srreg(void)
{
    int64_t g[3] = {176, 208, 192};
    shapes_case("srreg", 1716, g);
}

/* ---- identity start, checkpoint ---------------------------------------------------------------- */

static void t_identity_start(void)
{
    lm_net_config c = tiny_net_cfg(32, 32, 32, LM_NET_ABL_NONE);
    lm_net *n = make_net(&c);
    if (!n)
        return;
    LM_CHECK(lm_net_init(n, 7) == 0, "%s", lm_error());
    int64_t d[3] = {32, 32, 32};
    float *m, *f;
    int32_t *ms, *fs;
    make_inputs(d, &m, &f, &ms, &fs);
    LM_CHECK(lm_net_set_images(n, m, f, d) == 0 && lm_net_forward(n) == 0, "%s", lm_error());
    const int64_t N = 3 * 32 * 32 * 32;
    float *phi = malloc((size_t)N * sizeof *phi);
    download(phi, lm_net_act(n, "phi"), N);
    double mx = 0;
    for (int64_t i = 0; i < N; i++)
        mx = fmax(mx, fabs(phi[i]));
    printf("# identity start: |phi|inf = %.3g voxels\n", mx);
    LM_CHECK(mx > 0 && mx < 1e-2, "|phi|inf = %.3g", mx);
    /* LoRA B = 0 at the start */
    lm_net_param *b = lm_net_param_find(n, "leb2.lora_v.B");
    float *hb = malloc((size_t)b->numel * sizeof *hb);
    download(hb, b->value, b->numel);
    int zero = 1;
    for (int64_t i = 0; i < b->numel; i++)
        zero &= hb[i] == 0.0f;
    LM_CHECK(zero, "LoRA B is not zero after init");
    free(hb), free(phi), free(m), free(f), free(ms), free(fs);
    lm_net_free(n);
}

static void t_checkpoint(void)
{
    lm_net_config c = tiny_net_cfg(32, 16, 16, LM_NET_ABL_NONE);
    lm_net *n = make_net(&c);
    if (!n)
        return;
    LM_CHECK(lm_net_fill_hash(n) == 0, "%s", lm_error());
    char path[600];
    snprintf(path, sizeof path, "%s/ck.safetensors", lm_test_tmpdir());
    LM_CHECK(lm_net_save(n, path, "{\"model_type\":\"llama\"}", 3, 42, "test") == 0, "%s",
             lm_error());
    lm_net *m = NULL;
    LM_CHECK(lm_net_load(&m, be(), path) == 0, "%s", lm_error());
    if (m) {
        LM_CHECK(!strcmp(lm_net_ckpt_llm_checksum(m), lm_net_llm_checksum(n)), "checksum '%s'",
                 lm_net_ckpt_llm_checksum(m));
        LM_CHECK(lm_net_param_count(m) == lm_net_param_count(n), "count");
        int same = 1;
        for (int i = 0; i < lm_net_param_count(n); i++) {
            lm_net_param *a = lm_net_param_at(n, i), *b = lm_net_param_at(m, i);
            same &= !strcmp(a->name, b->name) && a->numel == b->numel;
            if (b->value) { /* LoRA stays pending until the layers come */
                float *x = malloc((size_t)a->numel * 4), *y = malloc((size_t)a->numel * 4);
                download(x, a->value, a->numel);
                download(y, b->value, b->numel);
                same &= !memcmp(x, y, (size_t)a->numel * 4);
                free(x), free(y);
            }
        }
        LM_CHECK(same, "tensors differ after the round trip");
        const lm_net_config *mc = lm_net_get_config(m);
        LM_CHECK(mc->lora_rank == 3 && mc->n_layers == 2 && mc->shape[1] == 16 &&
                     mc->n_classes == 4 && mc->kept[0] == 0 && mc->kept[3] == 1,
                 "config after the round trip");
        lm_net_free(m);
    }
    /* a file that is not a checkpoint, a tensor of the wrong shape */
    lm_record r;
    lm_record_init(&r);
    int64_t sh[1] = {4};
    lm_tensor t;
    lm_tensor_alloc(&t, "x", LM_F32, 1, sh);
    lm_record_put(&r, &t);
    snprintf(path, sizeof path, "%s/bad.safetensors", lm_test_tmpdir());
    lm_st_write_file(path, &r);
    lm_record_free(&r);
    m = NULL;
    LM_CHECK(lm_net_load(&m, be(), path) < 0 && strstr(lm_error(), "not a network checkpoint"),
             "%s", lm_error());
    lm_net_free(n);
}

/* vit: PyTorch-default init (LayerNorm 1/0, Linears U(±1/√in)), identity start, checkpoint
 * round trip without LLM layers or checksum */
static void t_vit_init_checkpoint(void)
{
    lm_net_config c = tiny_net_cfg(32, 32, 32, LM_NET_ABL_VIT);
    lm_net *n = make_net(&c);
    if (!n)
        return;
    LM_CHECK(lm_net_init(n, 5) == 0, "%s", lm_error());
    LM_CHECK(lm_net_param_count(n) == 63, "%d tensors", lm_net_param_count(n));
    struct {
        const char *name;
        double lo, hi;
    } want[] = {{"leb2.vit.ln1.weight", 1, 1},        {"leb2.vit.ln1.bias", 0, 0},
                {"leb1.vit.ln2.weight", 1, 1},        {"leb1.vit.ln2.bias", 0, 0},
                {"leb1.vit.qkv.weight", -0.25, 0.25}, {"leb1.vit.qkv.bias", -0.25, 0.25},
                {"leb2.vit.fc2.weight", -0.125, 0.125}};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        lm_net_param *p = lm_net_param_find(n, want[i].name);
        LM_CHECK(p != NULL, "no %s", want[i].name);
        if (!p)
            continue;
        float *h = malloc((size_t)p->numel * sizeof *h);
        download(h, p->value, p->numel);
        double lo = INFINITY, hi = -INFINITY;
        for (int64_t k = 0; k < p->numel; k++)
            lo = fmin(lo, h[k]), hi = fmax(hi, h[k]);
        int ok = want[i].lo == want[i].hi ? lo == want[i].lo && hi == want[i].hi
                                          : lo >= want[i].lo && hi <= want[i].hi && hi - lo >
                                                                                       0.5 * (want[i].hi - want[i].lo);
        LM_CHECK(ok, "%s in [%g, %g] after init", want[i].name, lo, hi);
        free(h);
    }
    int64_t d[3] = {32, 32, 32};
    float *m, *f;
    int32_t *ms, *fs;
    make_inputs(d, &m, &f, &ms, &fs);
    LM_CHECK(lm_net_set_images(n, m, f, d) == 0 && lm_net_forward(n) == 0, "%s", lm_error());
    const int64_t N = 3 * 32 * 32 * 32;
    float *phi = malloc((size_t)N * sizeof *phi);
    download(phi, lm_net_act(n, "phi"), N);
    double mx = 0;
    for (int64_t i = 0; i < N; i++)
        mx = fmax(mx, fabs(phi[i]));
    LM_CHECK(mx > 0 && mx < 1e-2, "vit identity start: |phi|inf = %.3g", mx);
    char path[600];
    snprintf(path, sizeof path, "%s/vit.safetensors", lm_test_tmpdir());
    LM_CHECK(lm_net_save(n, path, "{\"model_type\":\"llama\"}", 0, 5, "test") == 0, "%s",
             lm_error());
    lm_net *r = NULL;
    LM_CHECK(lm_net_load(&r, be(), path) == 0, "%s", lm_error());
    if (r) {
        LM_CHECK(lm_net_get_config(r)->ablation == LM_NET_ABL_VIT &&
                     lm_net_get_config(r)->llm_heads == 4 && !lm_net_ckpt_llm_checksum(r)[0],
                 "vit config / checksum after the round trip");
        int same = lm_net_param_count(r) == lm_net_param_count(n);
        for (int i = 0; same && i < lm_net_param_count(n); i++) {
            lm_net_param *a = lm_net_param_at(n, i), *b = lm_net_param_at(r, i);
            float *x = malloc((size_t)a->numel * 4), *y = malloc((size_t)a->numel * 4);
            download(x, a->value, a->numel);
            download(y, b->value, b->numel);
            same = !strcmp(a->name, b->name) && !memcmp(x, y, (size_t)a->numel * 4);
            free(x), free(y);
        }
        LM_CHECK(same, "vit tensors differ after the round trip");
        /* runs without any LLM attached: the same field */
        float *phi2 = malloc((size_t)N * sizeof *phi2);
        LM_CHECK(lm_net_set_images(r, m, f, d) == 0 && lm_net_forward(r) == 0, "%s", lm_error());
        download(phi2, lm_net_act(r, "phi"), N);
        LM_CHECK(!memcmp(phi, phi2, (size_t)N * sizeof *phi), "loaded vit net: another field");
        free(phi2);
        lm_net_free(r);
    }
    free(phi), free(m), free(f), free(ms), free(fs);
    lm_net_free(n);
}

static void t_config_json(void)
{
    lm_net_config c, d;
    lm_net_config_preset(&c, "abdomen");
    c.llm_hidden = 64, c.llm_q_dim = 64, c.llm_kv_dim = 32, c.a0_hidden = 64, c.n_layers = 2;
    c.restore = 1, c.combine = 1, c.causal = 1, c.rope = 0;
    char *j = lm_net_config_json(&c);
    lm_net_config_default(&d);
    LM_CHECK(lm_net_config_parse(&d, j) == 0, "%s", lm_error());
    LM_CHECK(!memcmp(&c, &d, sizeof c), "config JSON round trip: %s", j);
    free(j);
    lm_net_config_default(&d);
    LM_CHECK(lm_net_config_parse(&d, "{\"shape\":[32,32,33]}") == 0 &&
                 lm_net_config_check(&d) < 0 && strstr(lm_error(), "multiple of 16"),
             "%s", lm_error());
    LM_CHECK(lm_net_config_parse(&d, "{\"combine\":\"multiply\"}") < 0 &&
                 strstr(lm_error(), "compose, add"),
             "%s", lm_error());
    LM_CHECK(lm_net_config_parse(&d, "{\"bogus\":1}") < 0 && strstr(lm_error(), "unknown key"),
             "%s", lm_error());
    /* vit: no LoRA, no RoPE, no LLM layers; the head count comes with the LLM's widths */
    lm_net_config_preset(&d, "tiny");
    LM_CHECK(lm_net_config_parse(&d, "{\"ablation\":\"vit\"}") == 0 && d.lora_rank == 0 &&
                 d.rope == 0 && d.n_layers == 0 && lm_net_config_check(&d) < 0 &&
                 strstr(lm_error(), "give --llm"),
             "%s", lm_error());
    d.llm_hidden = 64, d.llm_q_dim = 64, d.llm_kv_dim = 32, d.a0_hidden = 64, d.llm_heads = 8;
    LM_CHECK(lm_net_config_check(&d) == 0, "%s", lm_error());
    j = lm_net_config_json(&d);
    lm_net_config_default(&c);
    LM_CHECK(lm_net_config_parse(&c, j) == 0 && !memcmp(&c, &d, sizeof c), "vit round trip: %s",
             j);
    free(j);
    d.llm_heads = 6;
    LM_CHECK(lm_net_config_check(&d) < 0 && strstr(lm_error(), "divisor"), "%s", lm_error());
    lm_net_config_preset(&d, "tiny");
    LM_CHECK(lm_net_config_parse(&d, "{\"ablation\":\"vit\",\"rope\":true,\"llm_hidden\":64,"
                                     "\"llm_q_dim\":64,\"llm_kv_dim\":32,\"llm_heads\":8}") == 0 &&
                 lm_net_config_check(&d) < 0 && strstr(lm_error(), "no RoPE"),
             "%s", lm_error());
}

/* ---- golden files ----------------------------------------------------------------------------- */

typedef struct {
    double worst_fwd, worst_grad, worst_ratio; /* errors, and the largest error / tolerance */
    int n, above_floor;
    cJSON *tol; /* metadata golden.tol: key -> [tolerance, scale] */
} gstats;

static const double *gsum(lm_st_file *f, const char *key, const char *suf, double *out)
{
    char nm[160];
    snprintf(nm, sizeof nm, "%s.%s", key, suf);
    lm_tensor t;
    if (lm_st_file_read_name(f, nm, &t) < 0)
        return NULL;
    *out = lm_tensor_get(&t, 0);
    lm_tensor_free(&t);
    return out;
}

/* Compares our host tensor x[numel] with the golden `key` (full, or `.sample` at the flat
 * indices (m·2654435761) mod numel plus `.sum`/`.sumsq`), as NET_GOLDEN.md "Tolerances" says:
 * err = max |x - golden| / scale over the stored elements (and, sampled, the relative errors of
 * the sum and of the sum of squares), checked against the tensor's own tolerance. Tolerance and
 * scale come from golden.tol (the generator measured how far float32 evaluations of the network
 * land from the float64 golden: kinks of ReLU/LeakyReLU/warp cells within float32 rounding of
 * the golden point make some gradients ill-conditioned); floors 1e-4 forward / 1e-3 gradients.
 * The scale of a bias of exact gradient 0 (entry [tol, scale, 0]: it feeds an instance norm, or
 * it is a ViT block's last bias) is its weight's gradient scale, and its sums are not compared
 * (rounding noise). Without an entry: the floors and scale max |golden|. Returns the error
 * (-1 when the golden lacks the key) and the tolerance in *tol_out; checks nothing. */
static double gerr(lm_st_file *f, const char *key, const float *x, int64_t numel, int grad,
                   const cJSON *tolj, double *tol_out, int quiet)
{
    const double floor = grad ? 1e-3 : 1e-4;
    double tol = floor, scale = -1, mx = 0, md = 0, err = 0;
    int zero = 0; /* exact value 0: no sum/sumsq */
    const cJSON *e = tolj ? cJSON_GetObjectItemCaseSensitive(tolj, key) : NULL;
    if (cJSON_IsArray(e) && cJSON_GetArraySize(e) >= 2) {
        tol = cJSON_GetArrayItem(e, 0)->valuedouble;
        scale = cJSON_GetArrayItem(e, 1)->valuedouble;
        zero = cJSON_GetArraySize(e) == 3;
    }
    *tol_out = tol;
    lm_tensor t;
    if (lm_st_file_read_name(f, key, &t) == 0) {
        if (lm_tensor_numel(&t) != numel) {
            lm_tensor_free(&t);
            return INFINITY;
        }
        for (int64_t i = 0; i < numel; i++) {
            double r = lm_tensor_get(&t, i);
            mx = fmax(mx, fabs(r));
            md = fmax(md, fabs(r - x[i]));
        }
        lm_tensor_free(&t);
        return md / fmax(scale > 0 ? scale : mx, 1e-300);
    }
    char nm[160];
    snprintf(nm, sizeof nm, "%s.sample", key);
    if (lm_st_file_read_name(f, nm, &t) < 0)
        return -1;
    const int64_t ns = lm_tensor_numel(&t);
    for (int64_t m = 0; m < ns; m++) {
        uint64_t i = ((uint64_t)m * 2654435761ULL) % (uint64_t)numel;
        double r = lm_tensor_get(&t, m);
        mx = fmax(mx, fabs(r));
        md = fmax(md, fabs(r - x[i]));
    }
    lm_tensor_free(&t);
    err = md / fmax(scale > 0 ? scale : mx, 1e-300);
    if (zero)
        return err;
    double s_ref = 0, q_ref = 0, s = 0, q = 0;
    for (int64_t i = 0; i < numel; i++) {
        s += x[i];
        q += (double)x[i] * x[i];
    }
    if (!gsum(f, key, "sum", &s_ref) || !gsum(f, key, "sumsq", &q_ref))
        return -1;
    double es = fabs(s - s_ref) / fmax(fmax(fabs(s_ref), sqrt(q_ref)), 1e-300),
           eq = fabs(q - q_ref) / fmax(q_ref, 1e-300);
    if (fmax(es, eq) > tol && !quiet)
        printf("#   %s: sum %.9g vs %.9g, sumsq %.9g vs %.9g\n", key, s, s_ref, q, q_ref);
    return fmax(err, fmax(es, eq));
}

/* gerr, checked: within the key's tolerance (and the tolerance not below the floor) */
static void gcmp(lm_st_file *f, const char *key, const float *x, int64_t numel, int grad,
                 gstats *st)
{
    const double floor = grad ? 1e-3 : 1e-4;
    double tol;
    const cJSON *e = st->tol ? cJSON_GetObjectItemCaseSensitive(st->tol, key) : NULL;
    LM_CHECK(e != NULL || !strncmp(key, "in.", 3), "golden.tol has no entry for %s", key);
    double err = gerr(f, key, x, numel, grad, st->tol, &tol, 0);
    LM_CHECK(tol >= floor, "%s: tolerance %.3g below the floor %.0e", key, tol, floor);
    if (err < 0) {
        lm_test_fail(__FILE__, __LINE__, "golden has no %s (or its .sum / .sumsq)", key);
        return;
    }
    printf("#   %-34s rel err %.2e  tol %.1e%s\n", key, err, tol, err <= tol ? "" : "  FAIL");
    LM_CHECK(err <= tol, "%s: rel err %.3g > tol %.3g", key, err, tol);
    if (grad)
        st->worst_grad = fmax(st->worst_grad, err);
    else
        st->worst_fwd = fmax(st->worst_fwd, err);
    st->worst_ratio = fmax(st->worst_ratio, err / tol);
    st->above_floor += tol > floor;
    st->n++;
}

/* golden file, and the gradient that is shown to fail when 25 % off (NULL: none) */
static void golden_case(const char *file, const char *bad_grad)
{
    char path[700], llmdir[700];
    snprintf(path, sizeof path, "%s/tests/data/%s", lm_test_srcdir(), file);
    struct stat sb;
    if (stat(path, &sb) < 0) {
        lm_test_skip("tests/data/%s does not exist yet (tests/reference/make_net_golden.py)", file);
        return;
    }
    const char *sh = lm_test_shared();
    if (!sh) {
        lm_test_skip("../shared (stories260K-hf) is absent");
        return;
    }
    snprintf(llmdir, sizeof llmdir, "%s/weights/stories260K-hf", sh);
    lm_st_file f;
    if (lm_st_file_open(&f, path, 0) < 0) {
        lm_test_fail(__FILE__, __LINE__, "%s: %s", path, lm_error());
        return;
    }
    const char *gc = NULL, *gp = NULL, *gt = NULL;
    for (int i = 0; i < f.h.nmeta; i++) {
        if (!strcmp(f.h.meta[i].key, "golden.tol"))
            gt = f.h.meta[i].value;
        if (!strcmp(f.h.meta[i].key, "golden.config"))
            gc = f.h.meta[i].value;
        if (!strcmp(f.h.meta[i].key, "golden.params"))
            gp = f.h.meta[i].value;
    }
    LM_CHECK(gc && gp, "golden metadata missing");
    cJSON *j = gc ? cJSON_Parse(gc) : NULL;
    lm_net_config c;
    lm_net_config_preset(&c, "tiny");
    int layers[2] = {2, 3}, nl = 2, heads = 0;
    if (j) {
        /* the contract's keys map onto ours (ablation first: it sets the rank and RoPE of
         * no-lora and vit); the LLM is the shared stories260K-hf */
        cJSON *o = cJSON_CreateObject();
        const char *keys[] = {"ablation", "shape", "half", "lora_rank", "lora_alpha", "mask",
                              "rope", "restore", "combine", "lambda", "classes", "kept"};
        for (size_t k = 0; k < sizeof keys / sizeof *keys; k++) {
            cJSON *v = cJSON_GetObjectItemCaseSensitive(j, keys[k]);
            if (v)
                cJSON_AddItemToObject(o, keys[k], cJSON_Duplicate(v, 1));
        }
        cJSON *ly = cJSON_GetObjectItemCaseSensitive(j, "layers");
        nl = 0;
        cJSON *e;
        cJSON_ArrayForEach(e, ly) if (nl < 2) layers[nl++] = e->valueint;
        cJSON *hv = cJSON_GetObjectItemCaseSensitive(j, "heads");
        heads = cJSON_IsNumber(hv) ? hv->valueint : 0;
        char *s = cJSON_PrintUnformatted(o);
        LM_CHECK(lm_net_config_parse(&c, s) == 0, "golden.config: %s", lm_error());
        free(s);
        /* the contract's "shape" is the input's; with "half" the network runs at its half */
        if (c.half)
            for (int i = 0; i < 3; i++)
                c.shape[i] /= 2;
        cJSON_Delete(o);
        cJSON_Delete(j);
    }
    lm_llm m;
    lm_net *n = NULL;
    if (lm_llm_open(&m, llmdir) < 0) {
        lm_test_fail(__FILE__, __LINE__, "%s", lm_error());
        lm_st_file_close(&f);
        return;
    }
    LM_CHECK(lm_net_config_set_llm(&c, &m, layers, nl) == 0, "%s", lm_error());
    LM_CHECK(!heads || heads == c.llm_heads, "golden heads %d, the LLM's %d", heads, c.llm_heads);
    LM_CHECK(lm_net_create(&n, be(), &c) == 0, "%s", lm_error());
    if (!n)
        goto out;
    LM_CHECK(lm_net_attach_llm(n, &m, LM_F32, NULL) == 0, "%s", lm_error());
    /* golden.params: name by name, shape by shape */
    cJSON *pj = gp ? cJSON_Parse(gp) : NULL;
    int k = 0, agree = pj != NULL;
    cJSON *e;
    cJSON_ArrayForEach(e, pj)
    {
        lm_net_param *p = lm_net_param_at(n, k++);
        cJSON *nm = cJSON_GetArrayItem(e, 0), *shp = cJSON_GetArrayItem(e, 1);
        int ok = p && cJSON_IsString(nm) && !strcmp(nm->valuestring, p->name) &&
                 cJSON_GetArraySize(shp) == p->ndim;
        for (int d = 0; ok && d < p->ndim; d++)
            ok = (int64_t)cJSON_GetArrayItem(shp, d)->valuedouble == p->shape[d];
        LM_CHECK(ok, "golden.params[%d] = %s, ours %s", k - 1,
                 cJSON_IsString(nm) ? nm->valuestring : "?", p ? p->name : "(none)");
        agree &= ok;
    }
    LM_CHECK(k == lm_net_param_count(n), "golden has %d parameters, ours %d", k,
             lm_net_param_count(n));
    cJSON_Delete(pj);
    if (!agree)
        goto out;
    LM_CHECK(lm_net_fill_hash(n) == 0, "%s", lm_error());
    int64_t d[3];
    for (int i = 0; i < 3; i++)
        d[i] = c.half ? 2 * c.shape[i] : c.shape[i];
    float *mv, *fx;
    int32_t *ms, *fs;
    make_inputs(d, &mv, &fx, &ms, &fs);
    const int64_t N = d[0] * d[1] * d[2];
    gstats st = {0, 0, 0, 0, 0, gt ? cJSON_Parse(gt) : NULL};
    LM_CHECK(st.tol != NULL, "golden metadata golden.tol missing or not JSON");
    gcmp(&f, "in.moving", mv, N, 0, &st);
    lm_net_loss_value lv;
    double t0 = (double)clock();
    LM_CHECK(lm_net_set_images(n, mv, fx, d) == 0 && lm_net_forward(n) == 0 &&
                 lm_net_loss(n, &lv, ms, fs, 0, NULL, NULL) == 0 && lm_net_zero_grad(n) == 0 &&
                 lm_net_backward(n) == 0,
             "%s", lm_error());
    printf("# %s: loss %.9g dice %.9g grad_l2 %.9g (forward+backward %.2f s CPU)\n", file,
           lv.loss, lv.dice, lv.grad_l2, ((double)clock() - t0) / CLOCKS_PER_SEC);
    static const char *outs[] = {"fm1", "fm2", "fm3", "fm4", "fm5", "ff1", "ff2", "ff3", "ff4",
                                 "ff5", "x0", "leb1", "t", "f4", "f3", "f2", "f1", "s4", "phi3",
                                 "psi2", "phi", "phi_full", "warped_onehot"};
    const lm_net_plan *pl = lm_net_get_plan(n);
    for (size_t i = 0; i < sizeof outs / sizeof *outs; i++) {
        const lm_net_act_info *a = lm_net_plan_get(pl, outs[i]);
        char key[64];
        snprintf(key, sizeof key, "out.%s", outs[i]);
        if (!a && strcmp(outs[i], "warped_onehot")) {
            /* not in this variant (no-leb: no tokens; phi_full: half only): nor in the golden */
            lm_tensor t;
            char ks[80];
            snprintf(ks, sizeof ks, "%s.sample", key);
            int has = lm_st_file_read_name(&f, key, &t) == 0 ||
                      lm_st_file_read_name(&f, ks, &t) == 0;
            if (has)
                lm_tensor_free(&t);
            LM_CHECK(!has, "the golden has %s, our variant has no such tensor", key);
            continue;
        }
        int64_t cnt = a ? a->numel : (int64_t)c.n_classes * N;
        float *h = malloc((size_t)cnt * sizeof *h);
        download(h, lm_net_act(n, outs[i]), cnt);
        gcmp(&f, key, h, cnt, 0, &st);
        free(h);
    }
    float sc[3] = {(float)lv.loss, (float)lv.dice, (float)lv.grad_l2};
    gcmp(&f, "out.loss", sc, 1, 0, &st);
    gcmp(&f, "out.dice", sc + 1, 1, 0, &st);
    gcmp(&f, "out.grad_l2", sc + 2, 1, 0, &st);
    int bad_seen = 0;
    for (int i = 0; i < lm_net_param_count(n); i++) {
        lm_net_param *p = lm_net_param_at(n, i);
        float *h = malloc((size_t)p->numel * sizeof *h);
        download(h, p->grad, p->numel);
        char key[80];
        snprintf(key, sizeof key, "grad.%s", p->name);
        gcmp(&f, key, h, p->numel, 1, &st);
        if (bad_grad && !strcmp(key, bad_grad)) {
            /* a wrong gradient must fail: the same tensor 25 % off */
            for (int64_t q = 0; q < p->numel; q++)
                h[q] *= 0.75f;
            double tol, eb = gerr(&f, key, h, p->numel, 1, st.tol, &tol, 1);
            printf("#   %s with the gradient 25%% off: rel err %.2e (must exceed its tol %.1e)\n",
                   key, eb, tol);
            LM_CHECK(eb > tol, "%s 25%% off passed (err %.3g, tol %.3g)", key, eb, tol);
            bad_seen = 1;
        }
        free(h);
    }
    LM_CHECK(!bad_grad || bad_seen, "no %s in this variant", bad_grad);
    float *gm = malloc((size_t)N * sizeof *gm), *gf = malloc((size_t)N * sizeof *gf);
    LM_CHECK(lm_net_image_grad(n, gm, gf) == 0, "%s", lm_error());
    gcmp(&f, "grad.in.moving", gm, N, 1, &st);
    gcmp(&f, "grad.in.fixed", gf, N, 1, &st);
    printf("# %s: %d tensors compared (%d with a tolerance above the floor); worst forward rel "
           "err %.2e, worst gradient rel err %.2e, worst err/tol %.2f\n",
           file, st.n, st.above_floor, st.worst_fwd, st.worst_grad, st.worst_ratio);
    cJSON_Delete(st.tol);
    free(gm), free(gf), free(mv), free(fx), free(ms), free(fs);
out:
    lm_net_free(n);
    lm_llm_close(&m);
    lm_st_file_close(&f);
}

static void t_golden_tiny(void)
{
    golden_case("net_tiny.safetensors", "grad.leb1.lora_q.A");
}

static void t_golden_tiny_half(void)
{
    golden_case("net_tiny_half.safetensors", "grad.dec.adapter1.weight");
}

/* the switches and ablations (NET_GOLDEN.md): each with a gradient of what it changes */
static void t_golden_figure(void)
{
    golden_case("net_tiny_figure.safetensors", "grad.dec.adapter3.weight");
}
static void t_golden_add(void)
{
    golden_case("net_tiny_add.safetensors", "grad.dec.s2.head.weight");
}
static void t_golden_causal(void)
{
    golden_case("net_tiny_causal.safetensors", "grad.leb2.lora_q.A");
}
static void t_golden_norope(void)
{
    golden_case("net_tiny_norope.safetensors", "grad.leb1.lora_k.A");
}
static void t_golden_noleb(void)
{
    golden_case("net_tiny_noleb.safetensors", "grad.dec.s4.conv.weight");
}
static void t_golden_oneleb(void)
{
    golden_case("net_tiny_oneleb.safetensors", "grad.leb1.lora_v.B");
}
static void t_golden_nolora(void)
{
    golden_case("net_tiny_nolora.safetensors", "grad.leb1.adapter.fc2.weight");
}
static void t_golden_vit(void)
{
    golden_case("net_tiny_vit.safetensors", "grad.leb1.vit.qkv.weight");
}

static const lm_test_case cases[] = {
    {"shapes_abdomen", t_shapes_abdomen},
    {"shapes_srreg", t_shapes_srreg},
    {"config_json", t_config_json},
    {"identity_start", t_identity_start},
    {"checkpoint", t_checkpoint},
    {"vit_init_checkpoint", t_vit_init_checkpoint},
    {"fd_variant_t", t_fd_variant_t},
    {"fd_variants", t_fd_variants},
    {"fd_vit", t_fd_vit},
    {"golden_tiny", t_golden_tiny},
    {"golden_tiny_half", t_golden_tiny_half},
    {"golden_figure", t_golden_figure},
    {"golden_add", t_golden_add},
    {"golden_causal", t_golden_causal},
    {"golden_norope", t_golden_norope},
    {"golden_noleb", t_golden_noleb},
    {"golden_oneleb", t_golden_oneleb},
    {"golden_nolora", t_golden_nolora},
    {"golden_vit", t_golden_vit},
    {0},
};

int main(int argc, char **argv)
{
    return lm_test_run(argc, argv, cases);
}
