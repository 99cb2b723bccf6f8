/* test_llm.c — the LLM decoder layer (libcommon/model/lm_llm.h): loading Hugging Face folders,
 * forward and backward with LoRA.
 *
 * Independent sources: Hugging Face transformers' own decoder layers and PyTorch autograd
 * (tests/data/llm_layer_ref.safetensors and the tiny model folders tests/data/llm_tiny_*, written
 * by tests/reference/make_llm_ref.py); the greedy token ids of the real stories260K model
 * (../shared/weights/stories260K-hf/greedy-reference.json); a plain double-precision reference
 * layer written here from MODEL.md §5.2 (its finite differences check the backward); published
 * XXH64 values. Cases that need ../shared skip with a message when it is absent.
 */
#include "model/lm_llm.h"

/* kt.h's gradient checker; GCC 12+ -O2 sees a false "may be used uninitialized" in its
 * constant-propagated clone when called from here */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "../kernels/kt.h"
#pragma GCC diagnostic pop
#include "io/lm_error.h"
#include "io/lm_safetensors.h"
#include "lm_kernels.h"
#include "lm_test.h"
#include "lm_testutil.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- helpers ------------------------------------------------------------------------------ */

static lm_backend *be(void)
{
    return lm_backend_cpu();
}

static char *path2(const char *a, const char *b)
{
    static char buf[4][1024];
    static int k;
    char tmp[1024];
    k = (k + 1) % 4;
    snprintf(tmp, sizeof tmp, "%s/%s", a, b); /* a may be an earlier result */
    memcpy(buf[k], tmp, sizeof tmp);
    return buf[k];
}

static const char *stories_dir(void)
{
    const char *sh = lm_test_shared();
    if (!sh)
        return NULL;
    static char p[1024];
    snprintf(p, sizeof p, "%s/weights/stories260K-hf", sh);
    struct stat st;
    return stat(p, &st) == 0 ? p : NULL;
}

/* max|a-b| / max|b|: the error relative to the reference's scale */
static double rel_err(const float *a, const float *b, int64_t n)
{
    double m = 0, s = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > m || d != d)
            m = d;
        if (fabs(b[i]) > s)
            s = fabs(b[i]);
    }
    return m / (s > 0 ? s : 1);
}

static int contains(const char *hay, const char *needle)
{
    return strstr(hay, needle) != NULL;
}

#define CHECK_ERR(call, needle)                                                                    \
    do {                                                                                           \
        lm_error_clear();                                                                          \
        int rc_ = (call);                                                                          \
        LM_CHECK(rc_ < 0, "%s succeeded", #call);                                                  \
        LM_CHECK(contains(lm_error(), needle), "error '%s' lacks '%s'", lm_error(), needle);       \
    } while (0)

/* a host float copy of a F32 or BF16 matrix */
static float *to_f32(const lm_tensor *t)
{
    int64_t n = lm_tensor_numel(t);
    float *f = malloc((size_t)(n ? n : 1) * sizeof *f);
    for (int64_t i = 0; i < n; i++)
        f[i] = t->dtype == LM_F32 ? ((const float *)t->data)[i]
                                  : lm_bf16_to_f32(((const uint16_t *)t->data)[i]);
    return f;
}

/* the golden file: tensors by name as F32 host arrays */
static lm_st_file golden;
static int golden_ok = -1;

static int golden_open(void)
{
    if (golden_ok < 0)
        golden_ok = lm_st_file_open(&golden,
                                    path2(lm_test_srcdir(), "tests/data/llm_layer_ref.safetensors"),
                                    0) == 0;
    return golden_ok;
}

static float *gold(const char *name, int64_t expect_n)
{
    lm_tensor t;
    if (!golden_open() || lm_st_file_read_name(&golden, name, &t) < 0) {
        lm_test_fail(__FILE__, __LINE__, "golden '%s': %s", name, lm_error());
        return calloc((size_t)(expect_n ? expect_n : 1), sizeof(float));
    }
    LM_CHECK(t.dtype == LM_F32 && lm_tensor_numel(&t) == expect_n, "golden '%s' shape", name);
    float *f = malloc(t.nbytes ? t.nbytes : 1);
    memcpy(f, t.data, t.nbytes);
    lm_tensor_free(&t);
    return f;
}

static float *dev_upload(const float *h, int64_t n)
{
    float *d = lm_backend_alloc(be(), (size_t)(n ? n : 1) * sizeof *d);
    lm_backend_upload(be(), d, h, (size_t)n * sizeof *d);
    return d;
}

/* ---- an independent double-precision reference of the layer (MODEL.md §5.2) --------------- */

typedef struct {
    int D, F, nq, nkv, hd;
    double eps, theta;
    const float *w[LM_LLM_NLIN], *b[LM_LLM_NLIN], *ln_in, *ln_post;
    int r;
    double s;
    const float *A[3], *B[3];
    int rope, causal;
} refspec;

static void ref_linear(double *out, const double *in, const float *W, const float *b, int L, int O,
                       int I)
{
    for (int l = 0; l < L; l++)
        for (int o = 0; o < O; o++) {
            double acc = b ? b[o] : 0.0;
            for (int i = 0; i < I; i++)
                acc += in[(int64_t)l * I + i] * W[(int64_t)o * I + i];
            out[(int64_t)l * O + o] = acc;
        }
}

static void ref_rmsnorm(double *y, const double *x, const float *g, int L, int D, double eps)
{
    for (int l = 0; l < L; l++) {
        double ms = 0;
        for (int c = 0; c < D; c++)
            ms += x[l * D + c] * x[l * D + c];
        double rs = 1.0 / sqrt(ms / D + eps);
        for (int c = 0; c < D; c++)
            y[l * D + c] = g[c] * x[l * D + c] * rs;
    }
}

/* RoPE with the fp32 angle tables HF builds (inv_freq and p·inv_freq in fp32) */
static void ref_rope(double *x, int L, int nh, int hd, double theta)
{
    int half = hd / 2;
    for (int l = 0; l < L; l++)
        for (int i = 0; i < half; i++) {
            float inv = 1.0f / powf((float)theta, (float)(2 * i) / (float)hd);
            float ang = (float)l * inv;
            double c = cos((double)ang), s = sin((double)ang);
            for (int h = 0; h < nh; h++) {
                double *r = x + ((int64_t)l * nh + h) * hd;
                double x1 = r[i], x2 = r[i + half];
                r[i] = x1 * c - x2 * s;
                r[i + half] = x2 * c + x1 * s;
            }
        }
}

/* y [L,D] for the rows with sel[l] (sel NULL: all); other rows are left untouched. */
static void ref_layer(const refspec *s, const float *x, int L, const unsigned char *sel, double *y)
{
    const int D = s->D, F = s->F, qd = s->nq * s->hd, kvd = s->nkv * s->hd;
    const int outd[3] = {qd, kvd, kvd};
    double *xd = malloc(sizeof(double) * L * D), *a = malloc(sizeof(double) * L * D);
    double *proj[3], *o = calloc((size_t)L * qd, sizeof(double));
    double *h1 = malloc(sizeof(double) * D), *bn = malloc(sizeof(double) * D);
    double *g = malloc(sizeof(double) * F), *u = malloc(sizeof(double) * F);
    double *m = malloc(sizeof(double) * D), *sc = malloc(sizeof(double) * L);
    double *t = malloc(sizeof(double) * (s->r > 0 ? s->r : 1));
    for (int64_t i = 0; i < (int64_t)L * D; i++)
        xd[i] = x[i];
    ref_rmsnorm(a, xd, s->ln_in, L, D, s->eps);
    for (int p = 0; p < 3; p++) {
        proj[p] = malloc(sizeof(double) * L * outd[p]);
        ref_linear(proj[p], a, s->w[p], s->b[p], L, outd[p], D);
        for (int l = 0; l < L && s->r > 0; l++) {
            for (int j = 0; j < s->r; j++) {
                double acc = 0;
                for (int i = 0; i < D; i++)
                    acc += a[(int64_t)l * D + i] * s->A[p][(int64_t)j * D + i];
                t[j] = acc;
            }
            for (int oo = 0; oo < outd[p]; oo++) {
                double acc = 0;
                for (int j = 0; j < s->r; j++)
                    acc += t[j] * s->B[p][(int64_t)oo * s->r + j];
                proj[p][(int64_t)l * outd[p] + oo] += s->s * acc;
            }
        }
    }
    if (s->rope) {
        ref_rope(proj[0], L, s->nq, s->hd, s->theta);
        ref_rope(proj[1], L, s->nkv, s->hd, s->theta);
    }
    const int rep = s->nq / s->nkv;
    for (int i = 0; i < L; i++) {
        if (sel && !sel[i])
            continue;
        for (int h = 0; h < s->nq; h++) {
            int gk = h / rep, n = s->causal ? i + 1 : L;
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j < n; j++) {
                double acc = 0;
                for (int d = 0; d < s->hd; d++)
                    acc += proj[0][(int64_t)i * qd + h * s->hd + d] *
                           proj[1][(int64_t)j * kvd + gk * s->hd + d];
                sc[j] = acc / sqrt((double)s->hd);
                mx = sc[j] > mx ? sc[j] : mx;
            }
            for (int j = 0; j < n; j++)
                sum += (sc[j] = exp(sc[j] - mx));
            for (int d = 0; d < s->hd; d++) {
                double acc = 0;
                for (int j = 0; j < n; j++)
                    acc += sc[j] / sum * proj[2][(int64_t)j * kvd + gk * s->hd + d];
                o[(int64_t)i * qd + h * s->hd + d] = acc;
            }
        }
        ref_linear(h1, o + (int64_t)i * qd, s->w[LM_LLM_O], s->b[LM_LLM_O], 1, D, qd);
        for (int c = 0; c < D; c++)
            h1[c] += xd[(int64_t)i * D + c];
        ref_rmsnorm(bn, h1, s->ln_post, 1, D, s->eps);
        ref_linear(g, bn, s->w[LM_LLM_GATE], s->b[LM_LLM_GATE], 1, F, D);
        ref_linear(u, bn, s->w[LM_LLM_UP], s->b[LM_LLM_UP], 1, F, D);
        for (int f = 0; f < F; f++)
            g[f] = g[f] / (1.0 + exp(-g[f])) * u[f];
        ref_linear(m, g, s->w[LM_LLM_DOWN], s->b[LM_LLM_DOWN], 1, D, F);
        for (int c = 0; c < D; c++)
            y[(int64_t)i * D + c] = h1[c] + m[c];
    }
    for (int p = 0; p < 3; p++)
        free(proj[p]);
    free(xd), free(a), free(o), free(h1), free(bn), free(g), free(u), free(m), free(sc), free(t);
}

/* Host F32 copies of a loaded layer, pointed to by a refspec. */
typedef struct {
    float *w[LM_LLM_NLIN], *b[LM_LLM_NLIN], *ln_in, *ln_post;
} hostw;

static void refspec_from(refspec *s, hostw *h, const lm_llm_config *c, const lm_llm_weights *w)
{
    memset(s, 0, sizeof *s);
    s->D = c->hidden;
    s->F = c->intermediate;
    s->nq = c->n_heads;
    s->nkv = c->n_kv_heads;
    s->hd = c->head_dim;
    s->eps = c->rms_eps;
    s->theta = c->rope_theta;
    s->rope = 1;
    for (int i = 0; i < LM_LLM_NLIN; i++) {
        s->w[i] = h->w[i] = to_f32(&w->w[i]);
        s->b[i] = h->b[i] = w->b[i].data ? to_f32(&w->b[i]) : NULL;
    }
    s->ln_in = h->ln_in = to_f32(&w->ln_in);
    s->ln_post = h->ln_post = to_f32(&w->ln_post);
}

static void hostw_free(hostw *h)
{
    for (int i = 0; i < LM_LLM_NLIN; i++) {
        free(h->w[i]);
        free(h->b[i]);
    }
    free(h->ln_in);
    free(h->ln_post);
}

/* A random layer in memory (no file): F32 weights ~ U(-1,1)/√in, norms 1 ± 0.3, biases per
 * flags. */
static void rand_weights(lm_llm_weights *w, const lm_llm_config *c, int qkv_bias, int other_bias,
                         uint64_t stream)
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
        if (i <= LM_LLM_V ? qkv_bias : other_bias) {
            lm_tensor_alloc(&w->b[i], "b", LM_F32, 1, sh);
            float *q = w->b[i].data;
            for (int64_t k = 0; k < od[i]; k++)
                q[k] = (float)(0.5 * (2 * lm_rng_uniform(&r) - 1));
        }
    }
    int64_t sd[1] = {D};
    lm_tensor_alloc(&w->ln_in, "ln_in", LM_F32, 1, sd);
    lm_tensor_alloc(&w->ln_post, "ln_post", LM_F32, 1, sd);
    for (int64_t k = 0; k < D; k++) {
        ((float *)w->ln_in.data)[k] = (float)(1 + 0.3 * (2 * lm_rng_uniform(&r) - 1));
        ((float *)w->ln_post.data)[k] = (float)(1 + 0.3 * (2 * lm_rng_uniform(&r) - 1));
    }
    w->wdtype = LM_F32;
    w->layer = 0;
}

static lm_llm_config tiny_cfg(int D, int F, int nq, int nkv, int hd)
{
    lm_llm_config c;
    memset(&c, 0, sizeof c);
    c.arch = LM_LLM_LLAMA;
    snprintf(c.model_type, sizeof c.model_type, "llama");
    c.hidden = D;
    c.intermediate = F;
    c.n_layers = 2;
    c.n_heads = nq;
    c.n_kv_heads = nkv;
    c.head_dim = hd;
    c.rms_eps = 1e-5;
    c.rope_theta = 10000.0;
    c.rope_partial = 1.0;
    return c;
}

/* LoRA tensors of a layer: set from host arrays / read back */
static void lora_set(lm_llm_layer *ly, float *const host[6])
{
    lm_llm_param p[6];
    int n = lm_llm_layer_params(ly, p, 6);
    LM_CHECK(n == 6, "params %d", n);
    for (int i = 0; i < n; i++)
        lm_backend_upload(be(), p[i].value, host[i], (size_t)p[i].numel * sizeof(float));
}

/* ---- checksums, config, layer lists ------------------------------------------------------ */

static void t_xxh64(void)
{
    /* published values (xxhash's sanity tests and python-xxhash's README) */
    LM_CHECK(lm_xxh64("", 0, 0) == 0xEF46DB3751D8E999ULL, "%llx",
             (unsigned long long)lm_xxh64("", 0, 0));
    LM_CHECK(lm_xxh64("abc", 3, 0) == 0x44BC2CF5AD770999ULL, "%llx",
             (unsigned long long)lm_xxh64("abc", 3, 0));
    const char *s = "Nobody inspects the spammish repetition";
    LM_CHECK(lm_xxh64(s, strlen(s), 0) == 0xFBCEA83C8A378BF1ULL, "%llx",
             (unsigned long long)lm_xxh64(s, strlen(s), 0));
    char str[24];
    lm_llm_checksum_str(str, 0xEF46DB3751D8E999ULL);
    LM_CHECK(strcmp(str, "xxh64:ef46db3751d8e999") == 0, "%s", str);
    uint64_t a[2] = {1, 2}, b[2] = {2, 1};
    LM_CHECK(lm_llm_checksum_combine(a, 2) != lm_llm_checksum_combine(b, 2), "%s", "");
}

static void t_config(void)
{
    lm_llm_config c;
    LM_CHECK(lm_llm_config_parse(&c, "{\"model_type\":\"llama\",\"hidden_size\":4096,"
                                     "\"intermediate_size\":14336,\"num_hidden_layers\":32,"
                                     "\"num_attention_heads\":32,\"num_key_value_heads\":8,"
                                     "\"rms_norm_eps\":1e-5,\"rope_theta\":500000.0,"
                                     "\"hidden_act\":\"silu\",\"rope_scaling\":null}") == 0,
             "%s", lm_error());
    LM_CHECK(c.arch == LM_LLM_LLAMA && c.hidden == 4096 && c.n_kv_heads == 8 && c.head_dim == 128 &&
                 c.rms_eps == 1e-5 && c.rope_theta == 500000.0 && !c.rope_scaling[0] &&
                 !c.qkv_bias && !c.o_bias && !c.tie_embeddings,
             "%s", "");
    int d[2];
    lm_llm_default_layers(&c, d);
    LM_CHECK(d[0] == 15 && d[1] == 16, "%d %d", d[0], d[1]);
    /* Llama-2: MHA by default; attention_bias -> q/k/v and o biases */
    LM_CHECK(lm_llm_config_parse(&c, "{\"model_type\":\"llama\",\"hidden_size\":64,"
                                     "\"intermediate_size\":96,\"num_hidden_layers\":5,"
                                     "\"num_attention_heads\":8,\"attention_bias\":true}") == 0,
             "%s", "");
    LM_CHECK(c.n_kv_heads == 8 && c.head_dim == 8 && c.qkv_bias && c.o_bias && !c.mlp_bias &&
                 c.rms_eps == 1e-6 && c.rope_theta == 10000.0,
             "%s", "");
    lm_llm_default_layers(&c, d);
    LM_CHECK(d[0] == 1 && d[1] == 2, "%d %d", d[0], d[1]);
    /* Qwen2-7B: q/k/v biases without any flag, 28 layers -> 13, 14 */
    LM_CHECK(lm_llm_config_parse(&c, "{\"model_type\":\"qwen2\",\"hidden_size\":3584,"
                                     "\"intermediate_size\":18944,\"num_hidden_layers\":28,"
                                     "\"num_attention_heads\":28,\"num_key_value_heads\":4,"
                                     "\"rope_theta\":1000000.0,\"rms_norm_eps\":1e-6}") == 0,
             "%s", "");
    LM_CHECK(c.arch == LM_LLM_QWEN2 && c.qkv_bias && !c.o_bias && c.head_dim == 128, "%s", "");
    lm_llm_default_layers(&c, d);
    LM_CHECK(d[0] == 13 && d[1] == 14, "%d %d", d[0], d[1]);
    /* transformers 5 layout: rope_parameters; a LongRoPE config is recorded */
    LM_CHECK(lm_llm_config_parse(&c, "{\"model_type\":\"phi3\",\"hidden_size\":3072,"
                                     "\"intermediate_size\":8192,\"num_hidden_layers\":32,"
                                     "\"num_attention_heads\":32,\"rope_parameters\":"
                                     "{\"rope_theta\":250000.0,\"rope_type\":\"default\","
                                     "\"partial_rotary_factor\":1.0}}") == 0,
             "%s", "");
    LM_CHECK(c.arch == LM_LLM_PHI3 && c.rope_theta == 250000.0 && !c.rope_scaling[0] &&
                 c.rope_partial == 1.0 && c.head_dim == 96 && c.rms_eps == 1e-5,
             "%s", "");
    LM_CHECK(lm_llm_config_parse(&c, "{\"model_type\":\"phi3\",\"hidden_size\":3072,"
                                     "\"intermediate_size\":8192,\"num_hidden_layers\":32,"
                                     "\"num_attention_heads\":32,\"rope_scaling\":{\"type\":"
                                     "\"su\",\"short_factor\":[1]}}") == 0,
             "%s", "");
    LM_CHECK(strcmp(c.rope_scaling, "su") == 0, "'%s'", c.rope_scaling);
    LM_CHECK(lm_llm_config_parse(&c, "{\"model_type\":\"mistral\",\"hidden_size\":4096,"
                                     "\"intermediate_size\":14336,\"num_hidden_layers\":32,"
                                     "\"num_attention_heads\":32,\"num_key_value_heads\":8,"
                                     "\"sliding_window\":4096}") == 0,
             "%s", "");
    LM_CHECK(c.arch == LM_LLM_MISTRAL, "%s", "");
    CHECK_ERR(lm_llm_config_parse(&c, "{\"model_type\":\"gpt2\",\"hidden_size\":8}"),
              "unsupported model_type 'gpt2'");
    CHECK_ERR(lm_llm_config_parse(&c, "{\"model_type\":\"llama\",\"hidden_size\":8,"
                                      "\"intermediate_size\":8,\"num_hidden_layers\":1,"
                                      "\"num_attention_heads\":2,\"hidden_act\":\"gelu\"}"),
              "hidden_act 'gelu' not supported");
    CHECK_ERR(lm_llm_config_parse(&c, "{\"model_type\":\"llama\",\"hidden_size\":8,"
                                      "\"intermediate_size\":8,\"num_hidden_layers\":1,"
                                      "\"num_attention_heads\":4,\"num_key_value_heads\":3}"),
              "not a multiple");
    CHECK_ERR(lm_llm_config_parse(&c, "{\"model_type\":\"llama\",\"hidden_size\":8}"),
              "'intermediate_size' missing");
    CHECK_ERR(lm_llm_config_parse(&c, "{\"model_type\":\"llama\",\"hidden_size\":8.5}"),
              "'hidden_size' must be");
    CHECK_ERR(lm_llm_config_parse(&c, "[1,2]"), "not a JSON object");
    CHECK_ERR(lm_llm_config_parse(&c, "{"), "not a JSON object");
}

static void t_layer_list(void)
{
    lm_llm_config c = tiny_cfg(8, 8, 2, 2, 4);
    c.n_layers = 32;
    int out[4];
    LM_CHECK(lm_llm_layers_parse("15,16", &c, out, 4) == 2 && out[0] == 15 && out[1] == 16, "%s",
             "");
    LM_CHECK(lm_llm_layers_parse("0", &c, out, 4) == 1 && out[0] == 0, "%s", "");
    CHECK_ERR(lm_llm_layers_parse("40", &c, out, 4), "layer 40 not in model (32 layers)");
    CHECK_ERR(lm_llm_layers_parse("-1", &c, out, 4), "layer -1 not in model (32 layers)");
    CHECK_ERR(lm_llm_layers_parse("1,,2", &c, out, 4), "bad layer list");
    CHECK_ERR(lm_llm_layers_parse("15,", &c, out, 4), "bad layer list");
    CHECK_ERR(lm_llm_layers_parse("x", &c, out, 4), "bad layer list");
    CHECK_ERR(lm_llm_layers_parse("", &c, out, 4), "empty layer list");
    CHECK_ERR(lm_llm_layers_parse("1,2,3", &c, out, 2), "too many layers");
}

/* ---- the real model: greedy decoding ----------------------------------------------------- */

static void t_stories_greedy(void)
{
    const char *dir = stories_dir();
    if (!dir) {
        lm_test_skip("../shared/weights/stories260K-hf absent");
        return;
    }
    cJSON *ref = NULL;
    char *txt = lm_tu_slurp(path2(dir, "greedy-reference.json"), NULL);
    ref = txt ? cJSON_Parse(txt) : NULL;
    free(txt);
    const cJSON *gids = cJSON_GetObjectItem(ref, "greedy_ids");
    const cJSON *pids = cJSON_GetObjectItem(ref, "prompt_ids");
    LM_CHECK(cJSON_IsArray(gids) && cJSON_IsArray(pids), "greedy-reference.json unreadable");
    if (!cJSON_IsArray(gids) || !cJSON_IsArray(pids)) {
        cJSON_Delete(ref);
        return;
    }
    int n_ref = cJSON_GetArraySize(gids), n_prompt = cJSON_GetArraySize(pids);
    lm_llm m;
    if (lm_llm_open(&m, dir) < 0) {
        lm_test_fail(__FILE__, __LINE__, "open: %s", lm_error());
        cJSON_Delete(ref);
        return;
    }
    const lm_llm_config *c = &m.cfg;
    const int D = c->hidden, V = c->vocab, NL = c->n_layers;
    LM_CHECK(NL == 5 && D == 64 && V == 512 && c->tie_embeddings, "%s", "");
    lm_llm_layer *ly[8] = {0};
    lm_llm_layer_opts o = {0, 0.0f, 1, 1}; /* no LoRA, causal, RoPE */
    for (int i = 0; i < NL && i < 8; i++)
        LM_CHECK(lm_llm_layer_load(&ly[i], be(), &m, i, LM_F32, &o) == 0, "%s", lm_error());
    lm_tensor emb, norm, head;
    LM_CHECK(lm_llm_read_extra(&m, LM_LLM_EMBED, LM_F32, &emb) == 0, "%s", lm_error());
    LM_CHECK(lm_llm_read_extra(&m, LM_LLM_NORM, LM_F32, &norm) == 0, "%s", lm_error());
    LM_CHECK(lm_llm_read_extra(&m, LM_LLM_LM_HEAD, LM_F32, &head) == 0, "%s", lm_error());
    float *dnorm = dev_upload(norm.data, D), *dhead = dev_upload(head.data, (int64_t)V * D);
    int ids[512], n = 0;
    for (int i = 0; i < n_prompt; i++)
        ids[n++] = cJSON_GetArrayItem(pids, i)->valueint;
    float *x = lm_backend_alloc(be(), (size_t)n_ref * D * sizeof(float));
    float *hn = lm_backend_alloc(be(), (size_t)D * sizeof(float));
    float *logits = lm_backend_alloc(be(), (size_t)V * sizeof(float));
    float *hx = malloc((size_t)n_ref * D * sizeof(float)), *hl = malloc((size_t)V * sizeof(float));
    int ok = 1;
    while (ok && n < n_ref && n < 512) {
        /* the whole sequence again each step (no KV cache): the layer code as the LEB runs it */
        for (int l = 0; l < n; l++)
            memcpy(hx + (int64_t)l * D, (const float *)emb.data + (int64_t)ids[l] * D,
                   (size_t)D * sizeof(float));
        lm_backend_upload(be(), x, hx, (size_t)n * D * sizeof(float));
        for (int i = 0; i < NL && ok; i++)
            ok = ly[i] && lm_llm_layer_fwd(ly[i], x, x, n) == 0;
        lm_rownorm_args rn = {1, D, (float)c->rms_eps};
        lm_gemm_args ga = {1, V, D, LM_F32, 0};
        ok = ok && LM_OP_CALL(be(), rmsnorm_fwd, hn, x + (int64_t)(n - 1) * D, dnorm, &rn) == 0 &&
             LM_OP_CALL(be(), gemm_fwd, logits, hn, dhead, NULL, &ga) == 0;
        LM_CHECK(ok, "forward failed: %s", lm_error());
        lm_backend_download(be(), hl, logits, (size_t)V * sizeof(float));
        int best = 0;
        for (int v = 1; v < V; v++)
            if (hl[v] > hl[best])
                best = v;
        ids[n++] = best;
    }
    int match = 0;
    while (match < n && match < n_ref && ids[match] == cJSON_GetArrayItem(gids, match)->valueint)
        match++;
    LM_CHECK(match == n_ref && n == n_ref, "greedy ids agree for %d of %d tokens", match, n_ref);
    printf("# stories260K greedy from BOS: %d of %d ids equal greedy-reference.json\n", match,
           n_ref);
    free(hx), free(hl);
    lm_backend_free(be(), x), lm_backend_free(be(), hn), lm_backend_free(be(), logits);
    lm_backend_free(be(), dnorm), lm_backend_free(be(), dhead);
    lm_tensor_free(&emb), lm_tensor_free(&norm), lm_tensor_free(&head);
    for (int i = 0; i < NL && i < 8; i++)
        lm_llm_layer_free(ly[i]);
    lm_llm_close(&m);
    cJSON_Delete(ref);
}

/* ---- Hugging Face parity --------------------------------------------------------------- */

/* layer 2 of stories260K against LlamaDecoderLayer + autograd (make_llm_ref.py) */
static void t_stories_hf_layer(void)
{
    const char *dir = stories_dir();
    if (!dir) {
        lm_test_skip("../shared/weights/stories260K-hf absent");
        return;
    }
    const int L = 12, R = 4;
    lm_llm m;
    if (lm_llm_open(&m, dir) < 0) {
        lm_test_fail(__FILE__, __LINE__, "open: %s", lm_error());
        return;
    }
    const int D = m.cfg.hidden;
    const int64_t n = (int64_t)L * D;
    lm_llm_weights w;
    LM_CHECK(lm_llm_load_layer(&w, &m, 2, LM_F32) == 0, "%s", lm_error());
    float *x = gold("stories.x", n), *yb = gold("stories.y_bidir", n),
          *yc = gold("stories.y_causal", n), *yl = gold("stories.y_lora", n),
          *g = gold("stories.g", n), *dx_ref = gold("stories.dx", n);
    float *dx = dev_upload(x, n), *y = lm_backend_alloc(be(), (size_t)n * sizeof(float));
    float *hy = malloc((size_t)n * sizeof(float));
    double e;

    lm_llm_layer *ly = NULL;
    lm_llm_layer_opts o = {0, 0.0f, 0, 1};
    LM_CHECK(lm_llm_layer_create(&ly, be(), &m.cfg, &w, &o) == 0, "%s", lm_error());
    LM_CHECK(lm_llm_layer_fwd(ly, y, dx, L) == 0, "%s", lm_error());
    lm_backend_download(be(), hy, y, (size_t)n * sizeof(float));
    e = rel_err(hy, yb, n);
    printf("# stories layer 2 vs HF LlamaDecoderLayer, bidirectional: rel err %.3g\n", e);
    LM_CHECK(e <= 1e-5, "bidirectional rel err %.3g", e);
    lm_llm_layer_free(ly);

    o.causal = 1;
    LM_CHECK(lm_llm_layer_create(&ly, be(), &m.cfg, &w, &o) == 0, "%s", lm_error());
    LM_CHECK(lm_llm_layer_fwd(ly, y, dx, L) == 0, "%s", lm_error());
    lm_backend_download(be(), hy, y, (size_t)n * sizeof(float));
    e = rel_err(hy, yc, n);
    printf("# stories layer 2 vs HF, causal: rel err %.3g\n", e);
    LM_CHECK(e <= 1e-5, "causal rel err %.3g", e);
    LM_CHECK(rel_err(yb, yc, n) > 1e-2, "the golden masks differ too little to test anything");
    lm_llm_layer_free(ly);

    /* LoRA rank 4, alpha 8 (s = 2), given A/B; gradients of sum(y·g) */
    lm_llm_layer_opts ol = {R, 8.0f, 0, 1};
    LM_CHECK(lm_llm_layer_create(&ly, be(), &m.cfg, &w, &ol) == 0, "%s", lm_error());
    static const char *const pn[6] = {"lora_q.A", "lora_q.B", "lora_k.A",
                                      "lora_k.B", "lora_v.A", "lora_v.B"};
    lm_llm_param p[6];
    LM_CHECK(ly && lm_llm_layer_params(ly, p, 6) == 6, "%s", "");
    float *host[6];
    char name[64];
    for (int i = 0; i < 6; i++) {
        snprintf(name, sizeof name, "stories.%s", pn[i]);
        host[i] = gold(name, p[i].numel);
        LM_CHECK(strcmp(p[i].name, pn[i]) == 0, "param %d is '%s'", i, p[i].name);
    }
    lora_set(ly, host);
    LM_CHECK(lm_llm_layer_fwd(ly, y, dx, L) == 0, "%s", lm_error());
    lm_backend_download(be(), hy, y, (size_t)n * sizeof(float));
    e = rel_err(hy, yl, n);
    printf("# stories layer 2 + LoRA vs HF: forward rel err %.3g\n", e);
    LM_CHECK(e <= 1e-5, "LoRA forward rel err %.3g", e);
    float *dg = dev_upload(g, n), *ddx = lm_backend_alloc(be(), (size_t)n * sizeof(float));
    LM_OP_CALL(be(), fill, ddx, 0.0f, n);
    LM_CHECK(lm_llm_layer_zero_grad(ly) == 0, "%s", "");
    LM_CHECK(lm_llm_layer_bwd(ly, ddx, dg) == 0, "%s", lm_error());
    lm_backend_download(be(), hy, ddx, (size_t)n * sizeof(float));
    e = rel_err(hy, dx_ref, n);
    double emax = e;
    LM_CHECK(e <= 1e-4, "dx rel err %.3g", e);
    for (int i = 0; i < 6; i++) {
        snprintf(name, sizeof name, "stories.lora_%c.d%c", pn[i][5], pn[i][7]);
        float *gref = gold(name, p[i].numel), *got = malloc((size_t)p[i].numel * sizeof(float));
        lm_backend_download(be(), got, p[i].grad, (size_t)p[i].numel * sizeof(float));
        double ei = rel_err(got, gref, p[i].numel);
        LM_CHECK(ei <= 1e-4, "%s rel err %.3g", name, ei);
        emax = ei > emax ? ei : emax;
        free(gref), free(got);
    }
    printf("# stories layer 2 + LoRA vs PyTorch autograd: dx rel err %.3g, max over dx/dA/dB "
           "%.3g\n",
           e, emax);
    lm_llm_layer_free(ly);
    for (int i = 0; i < 6; i++)
        free(host[i]);
    free(x), free(yb), free(yc), free(yl), free(g), free(dx_ref), free(hy);
    lm_backend_free(be(), dx), lm_backend_free(be(), y), lm_backend_free(be(), dg);
    lm_backend_free(be(), ddx);
    lm_llm_weights_free(&w);
    lm_llm_close(&m);
}

/* The tiny folders written by transformers' save_pretrained: BF16 sharded Llama, F16 Qwen2 with
 * q/k/v biases, F32 Phi-3 with fused tensors. No ../shared needed. */
static void tiny_hf(const char *kind, int layer, lm_dtype wdt)
{
    char dir[600], name[64];
    snprintf(dir, sizeof dir, "%s/tests/data/llm_tiny_%s", lm_test_srcdir(), kind);
    lm_llm m;
    if (lm_llm_open(&m, dir) < 0) {
        lm_test_fail(__FILE__, __LINE__, "%s: %s", kind, lm_error());
        return;
    }
    const int L = 7, D = m.cfg.hidden;
    const int64_t n = (int64_t)L * D;
    lm_llm_weights w;
    LM_CHECK(lm_llm_load_layer(&w, &m, layer, wdt) == 0, "%s: %s", kind, lm_error());
    snprintf(name, sizeof name, "%s_tiny.x", kind);
    float *x = gold(name, n), *hy = malloc((size_t)n * sizeof(float));
    float *dx = dev_upload(x, n), *y = lm_backend_alloc(be(), (size_t)n * sizeof(float));
    for (int causal = 0; causal < 2; causal++) {
        lm_llm_layer *ly = NULL;
        lm_llm_layer_opts o = {0, 0.0f, causal, 1};
        LM_CHECK(lm_llm_layer_create(&ly, be(), &m.cfg, &w, &o) == 0, "%s", lm_error());
        LM_CHECK(ly && lm_llm_layer_fwd(ly, y, dx, L) == 0, "%s", lm_error());
        lm_backend_download(be(), hy, y, (size_t)n * sizeof(float));
        snprintf(name, sizeof name, "%s_tiny.y_%s", kind, causal ? "causal" : "bidir");
        float *ref = gold(name, n);
        double e = rel_err(hy, ref, n);
        printf("# tiny %s (%s on disk, %s in memory) layer %d vs HF, %s: rel err %.3g\n", kind,
               lm_dtype_name(m.cfg.arch == LM_LLM_LLAMA   ? LM_BF16
                             : m.cfg.arch == LM_LLM_QWEN2 ? LM_F16
                                                          : LM_F32),
               lm_dtype_name(w.wdtype), layer, causal ? "causal" : "bidirectional", e);
        LM_CHECK(e <= 1e-5, "%s %s rel err %.3g", kind, name, e);
        free(ref);
        lm_llm_layer_free(ly);
    }
    free(x), free(hy);
    lm_backend_free(be(), dx), lm_backend_free(be(), y);
    lm_llm_weights_free(&w);
    lm_llm_close(&m);
}

static void t_tiny_llama_sharded_bf16(void)
{
    tiny_hf("llama", 1, LM_LLM_WDTYPE_AUTO); /* stays BF16 */
    tiny_hf("llama", 1, LM_F32);
}
static void t_tiny_qwen2_bias_f16(void)
{
    tiny_hf("qwen2", 1, LM_LLM_WDTYPE_AUTO);
}
static void t_tiny_phi3_fused(void)
{
    tiny_hf("phi3", 0, LM_LLM_WDTYPE_AUTO);
}

/* the split rows of Phi-3's fused tensors, and Qwen2's biases, against the files' bytes */
static void t_fused_split_and_bias(void)
{
    char dir[600];
    lm_llm m;
    lm_st_file f;
    lm_tensor t;
    lm_llm_weights w;
    snprintf(dir, sizeof dir, "%s/tests/data/llm_tiny_phi3", lm_test_srcdir());
    if (lm_llm_open(&m, dir) < 0 || lm_llm_load_layer(&w, &m, 1, LM_F32) < 0) {
        lm_test_fail(__FILE__, __LINE__, "%s", lm_error());
        return;
    }
    LM_CHECK(lm_st_file_open(&f, path2(dir, "model.safetensors"), 0) == 0, "%s", "");
    const int D = 32, q = 32, kv = 16, F = 40;
    LM_CHECK(lm_st_file_read_name(&f, "model.layers.1.self_attn.qkv_proj.weight", &t) == 0, "%s",
             "");
    const float *fused = t.data;
    LM_CHECK(memcmp(w.w[LM_LLM_Q].data, fused, (size_t)q * D * 4) == 0, "q rows");
    LM_CHECK(memcmp(w.w[LM_LLM_K].data, fused + q * D, (size_t)kv * D * 4) == 0, "k rows");
    LM_CHECK(memcmp(w.w[LM_LLM_V].data, fused + (q + kv) * D, (size_t)kv * D * 4) == 0, "v rows");
    LM_CHECK(w.w[LM_LLM_Q].shape[0] == q && w.w[LM_LLM_K].shape[0] == kv &&
                 w.w[LM_LLM_V].shape[0] == kv,
             "%s", "");
    LM_CHECK(strcmp(w.w[LM_LLM_K].name, "model.layers.1.self_attn.k_proj.weight") == 0, "%s",
             w.w[LM_LLM_K].name);
    lm_tensor_free(&t);
    LM_CHECK(lm_st_file_read_name(&f, "model.layers.1.mlp.gate_up_proj.weight", &t) == 0, "%s", "");
    LM_CHECK(memcmp(w.w[LM_LLM_GATE].data, t.data, (size_t)F * D * 4) == 0, "gate rows");
    LM_CHECK(memcmp(w.w[LM_LLM_UP].data, (float *)t.data + F * D, (size_t)F * D * 4) == 0,
             "up rows");
    for (int i = 0; i < LM_LLM_NLIN; i++)
        LM_CHECK(!w.b[i].data, "phi3 has no biases");
    lm_tensor_free(&t);
    lm_st_file_close(&f);
    lm_llm_weights_free(&w);
    lm_llm_close(&m);

    snprintf(dir, sizeof dir, "%s/tests/data/llm_tiny_qwen2", lm_test_srcdir());
    if (lm_llm_open(&m, dir) < 0 || lm_llm_load_layer(&w, &m, 0, LM_LLM_WDTYPE_AUTO) < 0) {
        lm_test_fail(__FILE__, __LINE__, "%s", lm_error());
        return;
    }
    LM_CHECK(w.wdtype == LM_F32, "F16 on disk is kept as F32 (exact)");
    LM_CHECK(lm_st_file_open(&f, path2(dir, "model.safetensors"), 0) == 0, "%s", "");
    static const char *const bn[3] = {"q_proj", "k_proj", "v_proj"};
    for (int i = 0; i < 3; i++) {
        char nm[96];
        snprintf(nm, sizeof nm, "model.layers.0.self_attn.%s.bias", bn[i]);
        LM_CHECK(lm_st_file_read_name(&f, nm, &t) == 0 && t.dtype == LM_F16, "%s", "");
        LM_CHECK(w.b[i].data && w.b[i].dtype == LM_F32 &&
                     lm_tensor_numel(&w.b[i]) == lm_tensor_numel(&t),
                 "%s", nm);
        int same = w.b[i].data != NULL;
        for (int64_t k = 0; same && k < lm_tensor_numel(&t); k++)
            same = ((float *)w.b[i].data)[k] == lm_f16_to_f32(((uint16_t *)t.data)[k]);
        LM_CHECK(same, "%s values", nm);
        lm_tensor_free(&t);
    }
    LM_CHECK(!w.b[LM_LLM_O].data && !w.b[LM_LLM_GATE].data, "qwen2: no o/mlp biases");
    lm_st_file_close(&f);
    lm_llm_weights_free(&w);
    lm_llm_close(&m);
}

/* ---- the layer against the double reference; finite differences ------------------------ */

typedef struct {
    refspec s;
    float *x;
    const float *r; /* loss weights */
    int L;
} fdctx;

static double fd_loss(void *vctx)
{
    fdctx *c = vctx;
    int64_t n = (int64_t)c->L * c->s.D;
    double *y = malloc((size_t)n * sizeof *y), f = 0;
    ref_layer(&c->s, c->x, c->L, NULL, y);
    for (int64_t i = 0; i < n; i++)
        f += c->r[i] * y[i];
    free(y);
    return f;
}

/* A tiny random layer with every bias, GQA 4/2, LoRA rank 3 (s = 2, random B): forward against
 * the reference, then dx, dA, dB against central differences of the reference. */
static void grad_case(int causal, int rope)
{
    lm_llm_config c = tiny_cfg(16, 24, 4, 2, 4);
    c.qkv_bias = c.o_bias = c.mlp_bias = 1;
    const int L = 5, R = 3;
    const int64_t n = (int64_t)L * c.hidden;
    lm_llm_weights w;
    rand_weights(&w, &c, 1, 1, 10 + causal);
    lm_llm_layer *ly = NULL;
    lm_llm_layer_opts o = {R, 6.0f, causal, rope};
    LM_CHECK(lm_llm_layer_create(&ly, be(), &c, &w, &o) == 0, "%s", lm_error());
    if (!ly) {
        lm_llm_weights_free(&w);
        return;
    }
    lm_llm_param p[6];
    LM_CHECK(lm_llm_layer_params(ly, p, 6) == 6, "%s", "");
    float *host[6];
    for (int i = 0; i < 6; i++)
        host[i] = kt_rand(p[i].numel, -0.5, 0.5, 20 + i);
    lora_set(ly, host);
    float *x = kt_rand(n, -1.5, 1.5, 30), *r = kt_rand(n, -1, 1, 31);
    float *y = kt_alloc(n), *dx = kt_alloc(n);
    double *yr = malloc((size_t)n * sizeof *yr);
    hostw hw;
    fdctx ctx;
    refspec_from(&ctx.s, &hw, &c, &w);
    ctx.s.r = R;
    ctx.s.s = 2.0;
    ctx.s.rope = rope;
    ctx.s.causal = causal;
    for (int i = 0; i < 3; i++) {
        ctx.s.A[i] = host[2 * i];
        ctx.s.B[i] = host[2 * i + 1];
    }
    ctx.x = x;
    ctx.r = r;
    ctx.L = L;
    /* forward */
    LM_CHECK(lm_llm_layer_fwd(ly, y, x, L) == 0, "%s", lm_error());
    ref_layer(&ctx.s, x, L, NULL, yr);
    float *yrf = malloc((size_t)n * sizeof *yrf);
    for (int64_t i = 0; i < n; i++)
        yrf[i] = (float)yr[i];
    double e = rel_err(y, yrf, n);
    LM_CHECK(e <= 1e-5, "forward vs double reference: rel err %.3g", e);
    /* backward */
    LM_CHECK(lm_llm_layer_bwd(ly, dx, r) == 0, "%s", lm_error());
    char what[64];
    snprintf(what, sizeof what, "dx (causal %d rope %d)", causal, rope);
    kt_fd r0 = kt_gradcheck(what, x, n, dx, fd_loss, &ctx, 1e-3, 1e-4);
    double worst = r0.err;
    float *ga = NULL;
    for (int i = 0; i < 6; i++) {
        free(ga);
        ga = malloc((size_t)p[i].numel * sizeof *ga);
        lm_backend_download(be(), ga, p[i].grad, (size_t)p[i].numel * sizeof *ga);
        snprintf(what, sizeof what, "%s (causal %d rope %d)", p[i].name, causal, rope);
        kt_fd ri = kt_gradcheck(what, host[i], p[i].numel, ga, fd_loss, &ctx, 1e-3, 1e-4);
        worst = ri.err > worst ? ri.err : worst;
    }
    printf("# tiny layer (causal %d, rope %d): forward rel err %.3g vs double; worst fd err "
           "%.3g (tol 1e-4)\n",
           causal, rope, e, worst);
    /* the same check must reject a plausible bug: the gradient of a layer whose RoPE (or mask)
     * is off, i.e. a backward that forgets to undo the rotation (or the mask) */
    lm_llm_layer *bad = NULL;
    lm_llm_layer_opts ob = o;
    if (rope)
        ob.rope = 0;
    else
        ob.causal = !causal;
    LM_CHECK(lm_llm_layer_create(&bad, be(), &c, &w, &ob) == 0, "%s", "");
    lora_set(bad, host);
    float *dxb = kt_alloc(n);
    LM_CHECK(lm_llm_layer_fwd(bad, y, x, L) == 0 && lm_llm_layer_bwd(bad, dxb, r) == 0, "%s", "");
    double eb = kt_fd_error(x, n, dxb, fd_loss, &ctx, 1e-3);
    LM_CHECK(eb > 1e-2, "a wrong dx passed the check (err %.3g)", eb);
    /* and a LoRA scale forgotten in the backward: dA off by the factor s = 2 */
    free(ga);
    ga = malloc((size_t)p[0].numel * sizeof *ga);
    lm_backend_download(be(), ga, p[0].grad, (size_t)p[0].numel * sizeof *ga);
    for (int64_t k = 0; k < p[0].numel; k++)
        ga[k] *= 0.5f;
    double es = kt_fd_error(host[0], p[0].numel, ga, fd_loss, &ctx, 1e-3);
    LM_CHECK(es > 1e-2, "dA/s passed the check (err %.3g)", es);
    free(ga);
    kt_free(dxb);
    lm_llm_layer_free(bad);
    for (int i = 0; i < 6; i++)
        kt_free(host[i]);
    kt_free(x), kt_free(r), kt_free(y), kt_free(dx);
    free(yr), free(yrf);
    hostw_free(&hw);
    lm_llm_layer_free(ly);
    lm_llm_weights_free(&w);
}

static void t_grad_bidir_rope(void)
{
    grad_case(0, 1);
}
static void t_grad_causal_rope(void)
{
    grad_case(1, 1);
}
static void t_grad_bidir_norope(void)
{
    grad_case(0, 0);
}

/* B = 0 (the PEFT start): output equals the frozen layer bit for bit; the seeded A. */
static void t_lora_identity(void)
{
    lm_llm_config c = tiny_cfg(32, 48, 4, 2, 8);
    const int L = 9;
    const int64_t n = (int64_t)L * c.hidden;
    lm_llm_weights w;
    rand_weights(&w, &c, 0, 0, 40);
    lm_llm_layer *frozen = NULL, *lora = NULL, *lora2 = NULL;
    lm_llm_layer_opts of = {0, 0.0f, 0, 1}, ol = lm_llm_layer_opts_default();
    ol.rank = 8;
    ol.alpha = 8.0f;
    LM_CHECK(lm_llm_layer_create(&frozen, be(), &c, &w, &of) == 0, "%s", lm_error());
    LM_CHECK(lm_llm_layer_create(&lora, be(), &c, &w, &ol) == 0, "%s", lm_error());
    LM_CHECK(lm_llm_layer_create(&lora2, be(), &c, &w, &ol) == 0, "%s", lm_error());
    if (!frozen || !lora || !lora2)
        goto done;
    lm_llm_param pf[6], p[6], p2[6];
    LM_CHECK(lm_llm_layer_params(frozen, pf, 6) == 0, "rank 0: no trainable tensors");
    LM_CHECK(lm_llm_layer_params(lora, p, 6) == 6 && lm_llm_layer_params(lora2, p2, 6) == 6, "%s",
             "");
    LM_CHECK(lm_llm_layer_lora_init(lora, 77, 5) == 0 && lm_llm_layer_lora_init(lora2, 77, 5) == 0,
             "%s", "");
    float *x = kt_rand(n, -2, 2, 41), *y0 = kt_alloc(n), *y1 = kt_alloc(n);
    LM_CHECK(lm_llm_layer_fwd(frozen, y0, x, L) == 0 && lm_llm_layer_fwd(lora, y1, x, L) == 0, "%s",
             "");
    LM_CHECK(memcmp(y0, y1, (size_t)n * sizeof *y0) == 0, "B = 0 changes the output");
    /* A: U(-1/√D, 1/√D), reproducible from (seed, stream), the three streams differ; B = 0 */
    const float *A = p[0].value;
    double bound = 1.0 / sqrt(32.0), mx = 0, mean = 0;
    for (int64_t k = 0; k < p[0].numel; k++) {
        mx = fabs(A[k]) > mx ? fabs(A[k]) : mx;
        mean += A[k] / (double)p[0].numel;
    }
    LM_CHECK(mx <= bound && mx > 0.9 * bound, "max |A| %.4g, bound %.4g", mx, bound);
    LM_CHECK(fabs(mean) < 0.1 * bound, "mean A %.3g", mean);
    LM_CHECK(p[0].shape[0] == 8 && p[0].shape[1] == 32 && p[1].shape[0] == 32 &&
                 p[1].shape[1] == 8 && p[3].shape[0] == 16 && p[5].shape[0] == 16,
             "%s", "");
    for (int i = 0; i < 6; i++)
        LM_CHECK(memcmp(p[i].value, p2[i].value, (size_t)p[i].numel * 4) == 0, "seeded %d", i);
    LM_CHECK(memcmp(p[0].value, p[2].value, (size_t)p[0].numel * 4) != 0, "A_q == A_k");
    for (int i = 1; i < 6; i += 2) {
        int zero = 1;
        for (int64_t k = 0; k < p[i].numel; k++)
            zero &= ((const float *)p[i].value)[k] == 0.0f;
        LM_CHECK(zero, "%s not 0", p[i].name);
    }
    /* a nonzero B changes the output; the first backward gives dB != 0 and dA = 0 */
    float *ones = kt_rand(n, 0.5, 1, 42), *dx = kt_alloc(n);
    LM_CHECK(lm_llm_layer_bwd(lora, dx, ones) == 0, "%s", "");
    double sa = 0, sb = 0;
    for (int64_t k = 0; k < p[0].numel; k++)
        sa += fabs(p[0].grad[k]);
    for (int64_t k = 0; k < p[1].numel; k++)
        sb += fabs(p[1].grad[k]);
    LM_CHECK(sa == 0 && sb > 0, "|dA| %.3g |dB| %.3g", sa, sb);
    p[1].value[0] = 0.25f;
    LM_CHECK(lm_llm_layer_fwd(lora, y1, x, L) == 0, "%s", "");
    LM_CHECK(memcmp(y0, y1, (size_t)n * sizeof *y0) != 0, "B != 0 leaves the output unchanged");
    /* zero_grad; backward before forward is an error */
    LM_CHECK(lm_llm_layer_zero_grad(lora) == 0 && p[1].grad[0] == 0.0f, "%s", "");
    CHECK_ERR(lm_llm_layer_bwd(lora2, dx, ones), "backward without a forward");
    CHECK_ERR(lm_llm_layer_reserve(lora2, 0), "must be positive");
    kt_free(x), kt_free(y0), kt_free(y1), kt_free(ones), kt_free(dx);
done:
    lm_llm_layer_free(frozen);
    lm_llm_layer_free(lora);
    lm_llm_layer_free(lora2);
    lm_llm_weights_free(&w);
}

/* SR-Reg's sequence length (1716 tokens) through a narrow layer: selected rows against the
 * reference, both masks. */
static void t_long_sequence(void)
{
    lm_llm_config c = tiny_cfg(32, 40, 4, 2, 8);
    c.rope_theta = 500000.0;
    const int L = 1716;
    const int64_t n = (int64_t)L * c.hidden;
    lm_llm_weights w;
    rand_weights(&w, &c, 0, 0, 50);
    float *x = kt_rand(n, -1, 1, 51), *y = kt_alloc(n), *yf = kt_alloc(n);
    double *yr = calloc((size_t)n, sizeof *yr);
    unsigned char *sel = calloc(L, 1);
    const int rows[] = {0, 1, 17, 500, 1000, 1714, 1715};
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++)
        sel[rows[i]] = 1;
    hostw hw;
    refspec s;
    refspec_from(&s, &hw, &c, &w);
    for (int causal = 0; causal < 2; causal++) {
        lm_llm_layer *ly = NULL;
        lm_llm_layer_opts o = {0, 0.0f, causal, 1};
        LM_CHECK(lm_llm_layer_create(&ly, be(), &c, &w, &o) == 0, "%s", lm_error());
        LM_CHECK(ly && lm_llm_layer_reserve(ly, L) == 0 && lm_llm_layer_fwd(ly, y, x, L) == 0, "%s",
                 lm_error());
        s.causal = causal;
        ref_layer(&s, x, L, sel, yr);
        double m = 0, sc = 0;
        for (int64_t i = 0; i < n; i++)
            if (sel[i / c.hidden]) {
                double d = fabs(y[i] - yr[i]);
                m = d > m ? d : m;
                sc = fabs(yr[i]) > sc ? fabs(yr[i]) : sc;
            }
        printf("# L = 1716 layer (causal %d) vs double reference: rel err %.3g\n", causal, m / sc);
        LM_CHECK(m / sc <= 1e-5, "L = 1716 (causal %d): rel err %.3g", causal, m / sc);
        lm_llm_layer_free(ly);
    }
    hostw_free(&hw);
    kt_free(x), kt_free(y), kt_free(yf);
    free(yr), free(sel);
    lm_llm_weights_free(&w);
}

/* Inputs of size 1e-3: mean(x²) << eps, so rms_norm_eps must be the config's. */
static void t_small_inputs_eps(void)
{
    lm_llm_config c = tiny_cfg(16, 24, 4, 2, 4);
    c.rms_eps = 1e-5;
    const int L = 4;
    const int64_t n = (int64_t)L * c.hidden;
    lm_llm_weights w;
    rand_weights(&w, &c, 0, 0, 80);
    float *x = kt_rand(n, -1e-3, 1e-3, 81), *y = kt_alloc(n), *yf = kt_alloc(n);
    double *yr = malloc((size_t)n * sizeof *yr);
    hostw hw;
    refspec s;
    refspec_from(&s, &hw, &c, &w);
    lm_llm_layer *ly = NULL;
    lm_llm_layer_opts o = {0, 0.0f, 0, 1};
    LM_CHECK(lm_llm_layer_create(&ly, be(), &c, &w, &o) == 0, "%s", lm_error());
    LM_CHECK(ly && lm_llm_layer_fwd(ly, y, x, L) == 0, "%s", lm_error());
    ref_layer(&s, x, L, NULL, yr);
    for (int64_t i = 0; i < n; i++)
        yf[i] = (float)yr[i];
    double e = rel_err(y, yf, n);
    LM_CHECK(e <= 1e-5, "rel err %.3g", e);
    s.eps = 1e-6; /* the check notices a different eps */
    ref_layer(&s, x, L, NULL, yr);
    for (int64_t i = 0; i < n; i++)
        yf[i] = (float)yr[i];
    LM_CHECK(rel_err(y, yf, n) > 1e-3, "eps has no effect at this scale");
    lm_llm_layer_free(ly);
    hostw_free(&hw);
    kt_free(x), kt_free(y), kt_free(yf);
    free(yr);
    lm_llm_weights_free(&w);
}

/* ---- loading: synthetic folders, dtypes, checksums, errors --------------------------------- */

typedef struct {
    const char *model_type;
    int D, F, nq, nkv, hd, nlayers;
    lm_dtype dt;
    int qkv_bias, fused;
    const char *prefix;    /* "model." unless given */
    const char *skip;      /* a tensor name suffix to leave out */
    const char *bad;       /* a tensor name suffix written with a wrong shape */
    const char *int_dtype; /* a tensor name suffix written as I8 */
    const char *extra_cfg; /* appended inside the config object */
    int perturb;           /* 1: change one value of layer 0's q_proj */
} synth;

static void put_rand(lm_record *rec, const char *name, lm_dtype dt, int ndim, int64_t d0,
                     int64_t d1, lm_rng *r)
{
    lm_tensor t;
    int64_t sh[2] = {d0, d1};
    lm_tensor_alloc(&t, name, dt, ndim, sh);
    int64_t n = lm_tensor_numel(&t);
    for (int64_t i = 0; i < n; i++) {
        float v = (float)(2 * lm_rng_uniform(r) - 1);
        if (dt == LM_F32)
            ((float *)t.data)[i] = v;
        else if (dt == LM_BF16)
            ((uint16_t *)t.data)[i] = lm_f32_to_bf16(v);
        else if (dt == LM_F16)
            ((uint16_t *)t.data)[i] = lm_f32_to_f16(v);
        else
            ((int8_t *)t.data)[i] = (int8_t)(v * 100);
    }
    lm_record_put(rec, &t);
}

static int ends(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return suf && a >= b && strcmp(s + a - b, suf) == 0;
}

static const char *synth_write(const char *name, const synth *s)
{
    static char dir[4][700];
    static int k;
    k = (k + 1) % 4;
    snprintf(dir[k], sizeof dir[k], "%s/%s", lm_test_tmpdir(), name);
    mkdir(dir[k], 0755);
    FILE *fp = fopen(path2(dir[k], "config.json"), "w");
    fprintf(fp,
            "{\"model_type\":\"%s\",\"hidden_size\":%d,\"intermediate_size\":%d,"
            "\"num_hidden_layers\":%d,\"num_attention_heads\":%d,\"num_key_value_heads\":%d,"
            "\"head_dim\":%d,\"rms_norm_eps\":1e-5,\"rope_theta\":10000.0,\"vocab_size\":12,"
            "\"tie_word_embeddings\":true%s%s}",
            s->model_type, s->D, s->F, s->nlayers, s->nq, s->nkv, s->hd, s->extra_cfg ? "," : "",
            s->extra_cfg ? s->extra_cfg : "");
    fclose(fp);
    lm_record rec;
    lm_record_init(&rec);
    lm_rng r;
    lm_rng_init(&r, lm_test_seed(), 60);
    const char *pre = s->prefix ? s->prefix : "model.";
    char nm[256];
    const int qd = s->nq * s->hd, kvd = s->nkv * s->hd;
    snprintf(nm, sizeof nm, "%sembed_tokens.weight", pre);
    put_rand(&rec, nm, s->dt, 2, 12, s->D, &r);
    snprintf(nm, sizeof nm, "%snorm.weight", pre);
    put_rand(&rec, nm, s->dt, 1, s->D, 0, &r);
    for (int l = 0; l < s->nlayers; l++) {
        struct {
            const char *suf;
            int ndim;
            int64_t d0, d1;
        } t[] = {
            {"input_layernorm.weight", 1, s->D, 0},
            {"post_attention_layernorm.weight", 1, s->D, 0},
            {"self_attn.q_proj.weight", 2, qd, s->D},
            {"self_attn.k_proj.weight", 2, kvd, s->D},
            {"self_attn.v_proj.weight", 2, kvd, s->D},
            {"self_attn.qkv_proj.weight", 2, qd + 2 * kvd, s->D},
            {"self_attn.o_proj.weight", 2, s->D, qd},
            {"mlp.gate_proj.weight", 2, s->F, s->D},
            {"mlp.up_proj.weight", 2, s->F, s->D},
            {"mlp.gate_up_proj.weight", 2, 2 * s->F, s->D},
            {"mlp.down_proj.weight", 2, s->D, s->F},
            {"self_attn.q_proj.bias", 1, qd, 0},
            {"self_attn.k_proj.bias", 1, kvd, 0},
            {"self_attn.v_proj.bias", 1, kvd, 0},
        };
        for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
            int fused_name = strstr(t[i].suf, "qkv_proj") || strstr(t[i].suf, "gate_up");
            int unfused_name =
                !fused_name && (strstr(t[i].suf, "q_proj.w") || strstr(t[i].suf, "k_proj.w") ||
                                strstr(t[i].suf, "v_proj.w") || strstr(t[i].suf, "gate_proj") ||
                                strstr(t[i].suf, "up_proj"));
            if ((fused_name && !s->fused) || (unfused_name && s->fused))
                continue;
            if (strstr(t[i].suf, ".bias") && !s->qkv_bias)
                continue;
            snprintf(nm, sizeof nm, "%slayers.%d.%s", pre, l, t[i].suf);
            if (s->skip && l == s->nlayers - 1 && ends(nm, s->skip))
                continue;
            int64_t d0 = t[i].d0 + (s->bad && ends(nm, s->bad) ? 1 : 0);
            lm_dtype dt = s->int_dtype && ends(nm, s->int_dtype) ? LM_I8 : s->dt;
            put_rand(&rec, nm, dt, t[i].ndim, d0, t[i].d1, &r);
            if (s->perturb && l == 0 && strstr(nm, "q_proj.weight")) {
                lm_tensor *tt = lm_record_get(&rec, nm);
                ((unsigned char *)tt->data)[0] ^= 1;
            }
        }
    }
    if (lm_st_write_file(path2(dir[k], "model.safetensors"), &rec) < 0)
        lm_test_fail(__FILE__, __LINE__, "write: %s", lm_error());
    lm_record_free(&rec);
    return dir[k];
}

static synth synth_llama(void)
{
    synth s = {"llama", 16, 24, 4, 2, 4, 2, LM_F32, 0, 0, NULL, NULL, NULL, NULL, NULL, 0};
    return s;
}

static void t_load_synthetic(void)
{
    lm_llm m;
    lm_llm_weights w, w2;
    synth s = synth_llama();
    const char *d = synth_write("llama_f32", &s);
    LM_CHECK(lm_llm_open(&m, d) == 0, "%s", lm_error());
    LM_CHECK(strcmp(m.prefix, "model.") == 0 && m.n_shards == 1, "prefix '%s'", m.prefix);
    LM_CHECK(lm_llm_load_layer(&w, &m, 1, LM_LLM_WDTYPE_AUTO) == 0, "%s", lm_error());
    LM_CHECK(w.wdtype == LM_F32 && w.layer == 1, "%s", "");
    /* values as in the file */
    lm_st_file f;
    lm_tensor t;
    LM_CHECK(lm_st_file_open(&f, path2(d, "model.safetensors"), 0) == 0, "%s", "");
    LM_CHECK(lm_st_file_read_name(&f, "model.layers.1.mlp.down_proj.weight", &t) == 0, "%s", "");
    LM_CHECK(memcmp(t.data, w.w[LM_LLM_DOWN].data, t.nbytes) == 0, "down_proj bytes");
    lm_tensor_free(&t);
    lm_st_file_close(&f);
    /* BF16 in memory: round to nearest even of the F32 values; same checksum (what was read) */
    LM_CHECK(lm_llm_load_layer(&w2, &m, 1, LM_BF16) == 0, "%s", lm_error());
    int same = 1;
    for (int64_t k = 0; k < lm_tensor_numel(&w.w[LM_LLM_Q]); k++)
        same &= ((uint16_t *)w2.w[LM_LLM_Q].data)[k] ==
                lm_f32_to_bf16(((float *)w.w[LM_LLM_Q].data)[k]);
    LM_CHECK(same && w2.wdtype == LM_BF16 && w2.ln_in.dtype == LM_F32, "%s", "");
    LM_CHECK(w.checksum == w2.checksum, "checksum depends on the memory dtype");
    /* forward with BF16 weights stays close to F32 */
    {
        lm_llm_layer *a = NULL, *b = NULL;
        lm_llm_layer_opts o = {0, 0.0f, 0, 1};
        const int L = 6;
        const int64_t n = (int64_t)L * 16;
        float *x = kt_rand(n, -1, 1, 70), *ya = kt_alloc(n), *yb = kt_alloc(n);
        LM_CHECK(lm_llm_layer_create(&a, be(), &m.cfg, &w, &o) == 0 &&
                     lm_llm_layer_create(&b, be(), &m.cfg, &w2, &o) == 0,
                 "%s", "");
        LM_CHECK(a && b && lm_llm_layer_fwd(a, ya, x, L) == 0 && lm_llm_layer_fwd(b, yb, x, L) == 0,
                 "%s", "");
        double e = rel_err(yb, ya, n);
        LM_CHECK(e < 2e-2 && e > 0, "BF16 vs F32 weights: rel err %.3g", e);
        LM_CHECK(lm_llm_layer_checksum(a) == w.checksum && lm_llm_layer_index(a) == 1 &&
                     lm_llm_layer_width(a) == 16,
                 "%s", "");
        lm_llm_layer_free(a), lm_llm_layer_free(b);
        kt_free(x), kt_free(ya), kt_free(yb);
    }
    lm_llm_weights_free(&w2);
    /* checksums: per layer, stable, sensitive to one bit */
    LM_CHECK(lm_llm_load_layer(&w2, &m, 0, LM_F32) == 0, "%s", "");
    LM_CHECK(w2.checksum != w.checksum, "layers 0 and 1 share a checksum");
    uint64_t c0 = w2.checksum;
    lm_llm_weights_free(&w2);
    LM_CHECK(lm_llm_load_layer(&w2, &m, 0, LM_F32) == 0 && w2.checksum == c0, "not stable");
    lm_llm_weights_free(&w2);
    /* extras: tied classifier = embedding */
    lm_tensor e1, e2, nrm;
    LM_CHECK(lm_llm_read_extra(&m, LM_LLM_EMBED, LM_F32, &e1) == 0 &&
                 lm_llm_read_extra(&m, LM_LLM_LM_HEAD, LM_F32, &e2) == 0 &&
                 lm_llm_read_extra(&m, LM_LLM_NORM, LM_BF16, &nrm) == 0,
             "%s", lm_error());
    LM_CHECK(e1.shape[0] == 12 && e1.shape[1] == 16 && memcmp(e1.data, e2.data, e1.nbytes) == 0,
             "%s", "");
    LM_CHECK(nrm.dtype == LM_BF16 && nrm.ndim == 1 && nrm.shape[0] == 16, "%s", "");
    lm_tensor_free(&e1), lm_tensor_free(&e2), lm_tensor_free(&nrm);
    lm_llm_weights_free(&w);
    lm_llm_close(&m);

    s.perturb = 1;
    d = synth_write("llama_f32_bit", &s);
    LM_CHECK(lm_llm_open(&m, d) == 0 && lm_llm_load_layer(&w, &m, 0, LM_F32) == 0, "%s", "");
    LM_CHECK(w.checksum != c0, "a flipped bit keeps the checksum");
    lm_llm_weights_free(&w);
    lm_llm_close(&m);

    /* BF16 and F16 on disk, "language_model.model." prefix, Phi-3 and Qwen2 layouts */
    s = synth_llama();
    s.dt = LM_BF16;
    s.prefix = "language_model.model.";
    d = synth_write("llava_bf16", &s);
    LM_CHECK(lm_llm_open(&m, d) == 0, "%s", lm_error());
    LM_CHECK(strcmp(m.prefix, "language_model.model.") == 0, "prefix '%s'", m.prefix);
    LM_CHECK(lm_llm_load_layer(&w, &m, 0, LM_LLM_WDTYPE_AUTO) == 0 && w.wdtype == LM_BF16, "%s",
             lm_error());
    LM_CHECK(lm_llm_read_extra(&m, LM_LLM_LM_HEAD, LM_F32, &e1) == 0, "%s", lm_error());
    lm_tensor_free(&e1);
    lm_llm_weights_free(&w);
    lm_llm_close(&m);
    s = synth_llama();
    s.dt = LM_F16;
    s.model_type = "qwen2";
    s.qkv_bias = 1;
    d = synth_write("qwen2_f16", &s);
    LM_CHECK(lm_llm_open(&m, d) == 0 && lm_llm_load_layer(&w, &m, 1, LM_BF16) == 0, "%s",
             lm_error());
    LM_CHECK(w.wdtype == LM_BF16 && w.b[LM_LLM_K].data && w.b[LM_LLM_K].dtype == LM_F32 &&
                 w.b[LM_LLM_K].shape[0] == 8 && !w.b[LM_LLM_O].data,
             "%s", "");
    lm_llm_weights_free(&w);
    lm_llm_close(&m);
    s = synth_llama();
    s.model_type = "phi3";
    s.fused = 1;
    s.nkv = 4;
    d = synth_write("phi3_mha", &s);
    LM_CHECK(lm_llm_open(&m, d) == 0 && lm_llm_load_layer(&w, &m, 1, LM_F32) == 0, "%s",
             lm_error());
    LM_CHECK(w.w[LM_LLM_K].shape[0] == 16 && w.w[LM_LLM_UP].shape[0] == 24, "%s", "");
    lm_llm_weights_free(&w);
    lm_llm_close(&m);
}

static void t_load_errors(void)
{
    lm_llm m;
    lm_llm_weights w;
    synth s = synth_llama();
    const char *d = synth_write("ok", &s);
    LM_CHECK(lm_llm_open(&m, d) == 0, "%s", lm_error());
    CHECK_ERR(lm_llm_load_layer(&w, &m, 2, LM_F32), "layer 2 not in model (2 layers)");
    CHECK_ERR(lm_llm_load_layer(&w, &m, -1, LM_F32), "layer -1 not in model (2 layers)");
    CHECK_ERR(lm_llm_load_layer(&w, &m, 0, LM_F16), "F32 or BF16");
    lm_llm_close(&m);

    s.bad = "self_attn.k_proj.weight";
    d = synth_write("bad_shape", &s);
    LM_CHECK(lm_llm_open(&m, d) == 0, "%s", lm_error());
    CHECK_ERR(lm_llm_load_layer(&w, &m, 0, LM_F32),
              "'model.layers.0.self_attn.k_proj.weight': shape mismatch: [9,16], expected [8,16]");
    lm_llm_close(&m);

    s = synth_llama();
    s.skip = "mlp.up_proj.weight";
    d = synth_write("missing_tensor", &s);
    LM_CHECK(lm_llm_open(&m, d) == 0, "%s", lm_error());
    LM_CHECK(lm_llm_load_layer(&w, &m, 0, LM_F32) == 0, "layer 0 is complete: %s", lm_error());
    lm_llm_weights_free(&w);
    CHECK_ERR(lm_llm_load_layer(&w, &m, 1, LM_F32),
              "tensor 'model.layers.1.mlp.up_proj.weight' not found");
    lm_llm_close(&m);

    s = synth_llama();
    s.int_dtype = "mlp.down_proj.weight";
    d = synth_write("int8", &s);
    LM_CHECK(lm_llm_open(&m, d) == 0, "%s", lm_error());
    CHECK_ERR(lm_llm_load_layer(&w, &m, 0, LM_F32), "has dtype I8");
    lm_llm_close(&m);

    s = synth_llama();
    s.model_type = "gemma";
    d = synth_write("gemma", &s);
    CHECK_ERR(lm_llm_open(&m, d), "unsupported model_type 'gemma'");
    LM_CHECK(contains(lm_error(), "gemma"), "%s", lm_error());

    /* Qwen2 without its biases; Phi-3 folder with unfused tensors */
    s = synth_llama();
    s.model_type = "qwen2";
    d = synth_write("qwen2_nobias", &s);
    LM_CHECK(lm_llm_open(&m, d) == 0, "%s", "");
    CHECK_ERR(lm_llm_load_layer(&w, &m, 0, LM_F32), "self_attn.q_proj.bias' not found");
    lm_llm_close(&m);
    s = synth_llama();
    s.model_type = "phi3";
    d = synth_write("phi3_unfused", &s);
    LM_CHECK(lm_llm_open(&m, d) == 0, "%s", "");
    CHECK_ERR(lm_llm_load_layer(&w, &m, 0, LM_F32), "qkv_proj.weight' not found");
    lm_llm_close(&m);

    /* rope_scaling: loads, but RoPE cannot be applied; RoPE off works */
    s = synth_llama();
    s.extra_cfg = "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0}";
    d = synth_write("llama31", &s);
    LM_CHECK(lm_llm_open(&m, d) == 0 && lm_llm_load_layer(&w, &m, 0, LM_F32) == 0, "%s",
             lm_error());
    lm_llm_layer *ly = NULL;
    lm_llm_layer_opts o = lm_llm_layer_opts_default();
    CHECK_ERR(lm_llm_layer_create(&ly, be(), &m.cfg, &w, &o), "rope_scaling 'llama3'");
    o.rope = 0;
    LM_CHECK(lm_llm_layer_create(&ly, be(), &m.cfg, &w, &o) == 0, "%s", lm_error());
    lm_llm_layer_free(ly);
    lm_llm_weights_free(&w);
    lm_llm_close(&m);

    /* missing files and folders */
    char p[800];
    snprintf(p, sizeof p, "%s/nonexistent", lm_test_tmpdir());
    CHECK_ERR(lm_llm_open(&m, p), "No such file or directory");
    snprintf(p, sizeof p, "%s/config_only", lm_test_tmpdir());
    mkdir(p, 0755);
    FILE *fp = fopen(path2(p, "config.json"), "w");
    fputs("{\"model_type\":\"llama\",\"hidden_size\":16,\"intermediate_size\":24,"
          "\"num_hidden_layers\":2,\"num_attention_heads\":4}",
          fp);
    fclose(fp);
    CHECK_ERR(lm_llm_open(&m, p), "neither model.safetensors nor model.safetensors.index.json");
    snprintf(p, sizeof p, "%s/no_config", lm_test_tmpdir());
    mkdir(p, 0755);
    CHECK_ERR(lm_llm_open(&m, p), "config.json: No such file or directory");
    CHECK_ERR(lm_llm_open(&m, path2(d, "config.json")), "not a directory");
    /* an index naming an absent shard: opens, fails when a tensor of that shard is read */
    s = synth_llama();
    d = synth_write("index_missing_shard", &s);
    fp = fopen(path2(d, "model.safetensors.index.json"), "w");
    fputs("{\"metadata\":{},\"weight_map\":{"
          "\"model.layers.0.input_layernorm.weight\":\"model-00002-of-00002.safetensors\","
          "\"model.layers.0.post_attention_layernorm.weight\":\"model.safetensors\"}}",
          fp);
    fclose(fp);
    LM_CHECK(lm_llm_open(&m, d) == 0, "%s", lm_error());
    CHECK_ERR(lm_llm_load_layer(&w, &m, 0, LM_F32), "model-00002-of-00002.safetensors");
    LM_CHECK(contains(lm_error(), "No such file"), "%s", lm_error());
    lm_llm_close(&m);
    fp = fopen(path2(d, "model.safetensors.index.json"), "w");
    fputs("{\"weight_map\":{\"model.layers.0.input_layernorm.weight\":\"../x.safetensors\"}}", fp);
    fclose(fp);
    CHECK_ERR(lm_llm_open(&m, d), "bad shard file name");
    fp = fopen(path2(d, "model.safetensors.index.json"), "w");
    fputs("{\"metadata\":{}}", fp);
    fclose(fp);
    CHECK_ERR(lm_llm_open(&m, d), "no \"weight_map\"");
    /* a folder without decoder layers */
    s = synth_llama();
    s.nlayers = 0;
    s.extra_cfg = NULL;
    d = synth_write("no_layers", &s);
    CHECK_ERR(lm_llm_open(&m, d), "sizes must be positive");
    lm_llm_close(&m); /* closing a failed/zeroed handle is fine */
}

static const lm_test_case cases[] = {
    {"xxh64", t_xxh64},
    {"config", t_config},
    {"layer_list", t_layer_list},
    {"load_synthetic", t_load_synthetic},
    {"load_errors", t_load_errors},
    {"fused_split_and_bias", t_fused_split_and_bias},
    {"tiny_llama_sharded_bf16", t_tiny_llama_sharded_bf16},
    {"tiny_qwen2_bias_f16", t_tiny_qwen2_bias_f16},
    {"tiny_phi3_fused", t_tiny_phi3_fused},
    {"grad_bidir_rope", t_grad_bidir_rope},
    {"grad_causal_rope", t_grad_causal_rope},
    {"grad_bidir_norope", t_grad_bidir_norope},
    {"lora_identity", t_lora_identity},
    {"long_sequence", t_long_sequence},
    {"small_inputs_eps", t_small_inputs_eps},
    {"stories_hf_layer", t_stories_hf_layer},
    {"stories_greedy", t_stories_greedy},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    int rc = lm_test_run(argc, argv, cases);
    if (golden_ok > 0)
        lm_st_file_close(&golden);
    return rc;
}
