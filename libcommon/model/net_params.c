/* net_params.c — the network object: parameter table under the canonical names of MODEL.md
 * §18 (PyTorch shapes, §18 order), activation buffers of the plan, attaching the frozen LLM
 * layers, seeded PyTorch-style init, the NET_GOLDEN.md hash fill, and checkpoints.
 * Not here: the forward and backward (net_model.c). */
#include "cli/lm_rng.h"
#include "io/lm_atomic.h"
#include "io/lm_error.h"
#include "io/lm_safetensors.h"
#include "model/net_internal.h"

#include <cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the table -------------------------------------------------------------------------------- */

static void addp(lm_net *n, const char *name, int kind, int64_t fan_in, int ndim, int64_t a,
                 int64_t b, int64_t c)
{
    lm_net_param *p = &n->p[n->np++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->kind = kind;
    p->fan_in = fan_in;
    p->ndim = ndim;
    const int64_t s[5] = {a, b, 3, 3, 3};
    (void)c;
    p->numel = 1;
    for (int i = 0; i < ndim; i++) {
        p->shape[i] = s[i];
        p->numel *= s[i];
    }
}

static void conv(lm_net *n, const char *base, int64_t cout, int64_t cin, int bias, int head)
{
    char nm[48];
    snprintf(nm, sizeof nm, "%s.weight", base);
    addp(n, nm, head ? LM_NET_P_HEAD_W : LM_NET_P_WEIGHT, cin * 27, 5, cout, cin, 0);
    if (bias) {
        snprintf(nm, sizeof nm, "%s.bias", base);
        addp(n, nm, head ? LM_NET_P_HEAD_B : LM_NET_P_BIAS, cin * 27, 1, cout, 0, 0);
    }
}

static void linear(lm_net *n, const char *base, int64_t out, int64_t in)
{
    char nm[48];
    snprintf(nm, sizeof nm, "%s.weight", base);
    addp(n, nm, LM_NET_P_WEIGHT, in, 2, out, in, 0);
    snprintf(nm, sizeof nm, "%s.bias", base);
    addp(n, nm, LM_NET_P_BIAS, in, 1, out, 0, 0);
}

/* LayerNorm(D) with elementwise affine: weight [D] (init 1), bias [D] (init 0) */
static void layernorm(lm_net *n, const char *base, int64_t D)
{
    char nm[48];
    snprintf(nm, sizeof nm, "%s.weight", base);
    addp(n, nm, LM_NET_P_LN_W, D, 1, D, 0, 0);
    snprintf(nm, sizeof nm, "%s.bias", base);
    addp(n, nm, LM_NET_P_LN_B, D, 1, D, 0, 0);
}

static int64_t chans(const lm_net *n, const char *act)
{
    return lm_net_plan_get(&n->plan, act)->shape[1];
}

static void build_table(lm_net *n)
{
    const lm_net_config *c = &n->c;
    const int *e = c->enc;
    char nm[48];
    conv(n, "encoder.conv1", e[0], 1, 0, 0);
    for (int i = 2; i <= 5; i++) {
        snprintf(nm, sizeof nm, "encoder.conv%d", i);
        conv(n, nm, e[i - 1], e[i - 2], 1, 0);
    }
    if (lm_net_uses_llm(c)) {
        const int64_t D = c->llm_hidden, H = c->a0_hidden, r = c->lora_rank;
        for (int k = 1; k <= lm_net_lebs(c); k++) {
            snprintf(nm, sizeof nm, "leb%d.adapter.fc1", k);
            linear(n, nm, H, k == 1 ? 2 * e[4] : D);
            snprintf(nm, sizeof nm, "leb%d.adapter.fc2", k);
            linear(n, nm, D, H);
            if (c->ablation == LM_NET_ABL_VIT) { /* §18 leb<k>.vit.* */
                snprintf(nm, sizeof nm, "leb%d.vit.ln1", k);
                layernorm(n, nm, D);
                snprintf(nm, sizeof nm, "leb%d.vit.qkv", k);
                linear(n, nm, 3 * D, D);
                snprintf(nm, sizeof nm, "leb%d.vit.proj", k);
                linear(n, nm, D, D);
                snprintf(nm, sizeof nm, "leb%d.vit.ln2", k);
                layernorm(n, nm, D);
                snprintf(nm, sizeof nm, "leb%d.vit.fc1", k);
                linear(n, nm, 4 * D, D);
                snprintf(nm, sizeof nm, "leb%d.vit.fc2", k);
                linear(n, nm, D, 4 * D);
            } else if (r > 0) {
                static const char *qkv = "qkv";
                for (int i = 0; i < 3; i++) {
                    snprintf(nm, sizeof nm, "leb%d.lora_%c.A", k, qkv[i]);
                    addp(n, nm, LM_NET_P_LORA_A, D, 2, r, D, 0);
                    snprintf(nm, sizeof nm, "leb%d.lora_%c.B", k, qkv[i]);
                    addp(n, nm, LM_NET_P_LORA_B, r, 2, i == 0 ? c->llm_q_dim : c->llm_kv_dim, r,
                         0);
                }
            }
        }
        for (int j = 4; j >= 1; j--) {
            snprintf(nm, sizeof nm, "dec.adapter%d", j);
            linear(n, nm, 256LL << (2 * (4 - j)), D);
        }
    }
    conv(n, "dec.s4.conv", chans(n, "s4"), chans(n, "x4"), 1, 0);
    conv(n, "dec.s3.conv", chans(n, "s3"), chans(n, "x3"), 1, 0);
    conv(n, "dec.s3.head", 3, chans(n, "s3"), 1, 1);
    conv(n, "dec.s2.conv", chans(n, "s2"), chans(n, "x2"), 1, 0);
    conv(n, "dec.s2.head", 3, chans(n, "s2"), 1, 1);
    conv(n, "dec.s1.conv", chans(n, "s1"), chans(n, "x1"), 1, 0);
    conv(n, "dec.s1.head", 3, chans(n, "s1"), 1, 1);
}

int lm_net_params_plan(const lm_net_config *c, lm_net_param *out, int cap)
{
    lm_net *n = calloc(1, sizeof *n);
    if (!n)
        return lm_error_set("out of memory");
    n->c = *c;
    int rc = lm_net_plan_make(&n->plan, c);
    if (rc == 0) {
        build_table(n);
        if (n->np > cap)
            rc = lm_error_set("room for %d parameters needed", n->np);
        else
            memcpy(out, n->p, (size_t)n->np * sizeof *out);
    }
    rc = rc < 0 ? -1 : n->np;
    free(n);
    return rc;
}

static int is_lora(const lm_net_param *p)
{
    return p->kind == LM_NET_P_LORA_A || p->kind == LM_NET_P_LORA_B;
}

int lm_net_create(lm_net **out, lm_backend *be, const lm_net_config *c)
{
    *out = NULL;
    lm_net *n = calloc(1, sizeof *n);
    if (!n)
        return lm_error_set("out of memory");
    n->be = be;
    n->c = *c;
    if (lm_net_plan_make(&n->plan, c) < 0) {
        free(n);
        return -1;
    }
    build_table(n);
    int rc = 0;
    for (int i = 0; i < n->np && rc == 0; i++) {
        lm_net_param *p = &n->p[i];
        if (is_lora(p))
            continue;
        p->value = lm_backend_alloc_zero(be, (size_t)p->numel * sizeof(float));
        p->grad = lm_backend_alloc_zero(be, (size_t)p->numel * sizeof(float));
        if (!p->value || !p->grad)
            rc = lm_error_set("out of memory for %s", p->name);
    }
    int last_leb = -1;
    for (int i = 0; i < n->plan.n; i++) {
        n->alias[i] = -1;
        if (!strncmp(n->plan.a[i].name, "leb", 3) && !strchr(n->plan.a[i].name, '.'))
            last_leb = i;
    }
    for (int i = 0; i < n->plan.n && rc == 0; i++) {
        if (!strcmp(n->plan.a[i].name, "t")) {
            n->alias[i] = last_leb;
            continue;
        }
        /* zeroed without touching on the CPU: a stage program uses a part of the plan */
        n->act[i] = lm_backend_alloc_zero(be, (size_t)n->plan.a[i].numel * sizeof(float));
        if (!n->act[i])
            rc = lm_error_set("out of memory for activation %s (%lld floats)",
                              n->plan.a[i].name, (long long)n->plan.a[i].numel);
    }
    if (rc < 0) {
        lm_net_free(n);
        return -1;
    }
    *out = n;
    return 0;
}

void lm_net_free(lm_net *n)
{
    if (!n)
        return;
    for (int i = 0; i < n->np; i++) {
        if (!is_lora(&n->p[i])) {
            lm_backend_free(n->be, n->p[i].value);
            lm_backend_free(n->be, n->p[i].grad);
        }
        free(n->pending[i]);
    }
    for (int i = 0; i < n->plan.n; i++)
        if (n->alias[i] < 0) {
            lm_backend_free(n->be, n->act[i]);
            lm_backend_free(n->be, n->grad[i]);
            lm_backend_free(n->be, n->stat[i]);
        }
    for (int i = 0; i < 3; i++)
        lm_backend_free(n->be, n->scr[i]);
    for (int k = 0; k < n->nly; k++)
        lm_llm_layer_free(n->ly[k]);
    lm_backend_free(n->be, n->full_m);
    lm_backend_free(n->be, n->full_f);
    lm_backend_free(n->be, n->oh_m);
    lm_backend_free(n->be, n->oh_f);
    lm_backend_free(n->be, n->oh_w);
    lm_backend_free(n->be, n->scal);
    lm_backend_free(n->be, n->lab);
    free(n);
}

const lm_net_config *lm_net_get_config(const lm_net *n)
{
    return &n->c;
}
const lm_net_plan *lm_net_get_plan(const lm_net *n)
{
    return &n->plan;
}
int lm_net_param_count(const lm_net *n)
{
    return n->np;
}
lm_net_param *lm_net_param_at(lm_net *n, int i)
{
    return i >= 0 && i < n->np ? &n->p[i] : NULL;
}
lm_net_param *lm_net_param_find(lm_net *n, const char *name)
{
    for (int i = 0; i < n->np; i++)
        if (!strcmp(n->p[i].name, name))
            return &n->p[i];
    return NULL;
}
int lm_net_has_llm(const lm_net *n)
{
    return n->nly > 0;
}
const char *lm_net_llm_checksum(const lm_net *n)
{
    return n->llm_sum;
}
const char *lm_net_ckpt_llm_checksum(const lm_net *n)
{
    return n->ckpt_sum;
}

int lm_net_zero_grad(lm_net *n)
{
    for (int i = 0; i < n->np; i++)
        if (n->p[i].grad && LM_OP_CALL(n->be, fill, n->p[i].grad, 0.0f, n->p[i].numel) < 0)
            return -1;
    return 0;
}

/* ---- LLM layers ------------------------------------------------------------------------------- */

static int upload_host(lm_net *n, lm_net_param *p, const float *h)
{
    return lm_backend_upload(n->be, p->value, h, (size_t)p->numel * sizeof(float));
}

int lm_net_attach_layers(lm_net *n, lm_llm_layer **layers, int count)
{
    if (count != (lm_net_uses_llm_layers(&n->c) ? n->c.n_layers : 0))
        return lm_error_set("the config needs %d LLM layers, %d given",
                            lm_net_uses_llm_layers(&n->c) ? n->c.n_layers : 0, count);
    if (count == 0)
        return lm_net_zero_grad(n);
    uint64_t sums[2];
    for (int k = 0; k < count; k++) {
        if (lm_llm_layer_width(layers[k]) != n->c.llm_hidden)
            return lm_error_set("LLM layer %d has width %d, the config %d",
                                lm_llm_layer_index(layers[k]), lm_llm_layer_width(layers[k]),
                                n->c.llm_hidden);
        sums[k] = lm_llm_layer_checksum(layers[k]);
    }
    for (int k = 0; k < count; k++) {
        lm_llm_param lp[6];
        int m = lm_llm_layer_params(layers[k], lp, 6);
        if (m < 0)
            return -1;
        if (m != (n->c.lora_rank > 0 ? 6 : 0))
            return lm_error_set("LLM layer has %d LoRA tensors, the config wants rank %d", m,
                                n->c.lora_rank);
        for (int i = 0; i < m; i++) {
            char nm[48];
            snprintf(nm, sizeof nm, "leb%d.%s", k + 1, lp[i].name);
            lm_net_param *p = lm_net_param_find(n, nm);
            if (!p || p->shape[0] != lp[i].shape[0] || p->shape[1] != lp[i].shape[1])
                return lm_error_set("%s: shape of the LLM layer differs from the config's", nm);
            p->value = lp[i].value;
            p->grad = lp[i].grad;
        }
    }
    for (int k = 0; k < count; k++)
        n->ly[k] = layers[k];
    n->nly = count;
    lm_llm_checksum_str(n->llm_sum, lm_llm_checksum_combine(sums, count));
    for (int i = 0; i < n->np; i++) {
        lm_net_param *p = &n->p[i];
        if (is_lora(p) && n->pending[i]) {
            if (upload_host(n, p, n->pending[i]) < 0)
                return -1;
            free(n->pending[i]);
            n->pending[i] = NULL;
        }
    }
    if (n->pending_init) {
        for (int k = 0; k < count; k++)
            if (lm_llm_layer_lora_init(n->ly[k], n->init_seed, (1ULL << 32) | (uint64_t)(16 * (k + 1))) < 0)
                return -1;
        n->pending_init = 0;
    }
    return lm_net_zero_grad(n);
}

int lm_net_attach_llm(lm_net *n, lm_llm *m, lm_dtype wdtype, const char *expect)
{
    if (!lm_net_uses_llm(&n->c))
        return 0;
    if (!lm_net_uses_llm_layers(&n->c)) {
        /* vit: the folder only gave the width and the head count of the ViT blocks */
        if (m->cfg.hidden != n->c.llm_hidden ||
            (n->c.llm_heads && m->cfg.n_heads != n->c.llm_heads))
            return lm_error_set("%s: width %d with %d heads, the checkpoint's ViT blocks have "
                                "width %d with %d heads",
                                m->dir, m->cfg.hidden, m->cfg.n_heads, n->c.llm_hidden,
                                n->c.llm_heads);
        return 0;
    }
    if (n->nly)
        return lm_error_set("LLM layers already attached");
    lm_llm_layer_opts o = {n->c.lora_rank, (float)n->c.lora_alpha, n->c.causal, n->c.rope};
    lm_llm_layer *ly[2] = {NULL, NULL};
    int k, rc = 0;
    for (k = 0; k < n->c.n_layers && rc == 0; k++)
        rc = lm_llm_layer_load(&ly[k], n->be, m, n->c.layers[k], wdtype, &o);
    if (rc == 0 && expect && *expect) {
        uint64_t s[2] = {ly[0] ? lm_llm_layer_checksum(ly[0]) : 0,
                         ly[1] ? lm_llm_layer_checksum(ly[1]) : 0};
        char got[24];
        lm_llm_checksum_str(got, lm_llm_checksum_combine(s, n->c.n_layers));
        if (strcmp(got, expect))
            rc = lm_error_set("%s: LLM layers %d%s%.0d differ from those the checkpoint was made "
                              "with (checksum %s, checkpoint %s)",
                              m->dir, n->c.layers[0], n->c.n_layers > 1 ? "," : "",
                              n->c.n_layers > 1 ? n->c.layers[1] : 0, got, expect);
    }
    if (rc == 0)
        rc = lm_net_attach_layers(n, ly, n->c.n_layers);
    if (rc < 0) {
        if (n->nly == 0)
            for (int i = 0; i < 2; i++)
                lm_llm_layer_free(ly[i]);
        return -1;
    }
    return 0;
}

/* ---- init ------------------------------------------------------------------------------------- */

float lm_net_hash_value(uint64_t t, uint64_t j, float b)
{
    uint64_t z = ((t << 32) | j) + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z = z ^ (z >> 31);
    float u = (float)(z >> 40) * (float)(1.0 / 16777216.0);
    return (2.0f * u - 1.0f) * b;
}

static float hash_bound(const lm_net *n, const lm_net_param *p)
{
    switch (p->kind) {
    case LM_NET_P_HEAD_W:
    case LM_NET_P_HEAD_B:
    case LM_NET_P_LORA_B:
        return 0.05f;
    case LM_NET_P_LORA_A:
        return (float)(1.0 / sqrt((double)n->c.llm_hidden));
    case LM_NET_P_LN_W:
        return 0.25f; /* 1 + hash */
    case LM_NET_P_LN_B:
        return 0.1f;
    default:
        return (float)(1.0 / sqrt((double)p->fan_in));
    }
}

int lm_net_fill_hash(lm_net *n)
{
    int rc = 0;
    for (int t = 0; t < n->np && rc == 0; t++) {
        lm_net_param *p = &n->p[t];
        if (!p->value)
            return lm_error_set("%s: attach the LLM layers before filling LoRA", p->name);
        float *h = malloc((size_t)p->numel * sizeof *h);
        if (!h)
            return lm_error_set("out of memory");
        float b = hash_bound(n, p);
        for (int64_t j = 0; j < p->numel; j++)
            h[j] = lm_net_hash_value((uint64_t)t, (uint64_t)j, b);
        if (p->kind == LM_NET_P_LN_W)
            for (int64_t j = 0; j < p->numel; j++)
                h[j] = 1.0f + h[j];
        rc = upload_host(n, p, h);
        free(h);
    }
    return rc;
}

int lm_net_init(lm_net *n, uint64_t seed)
{
    int rc = 0;
    n->init_seed = seed;
    for (int t = 0; t < n->np && rc == 0; t++) {
        lm_net_param *p = &n->p[t];
        if (is_lora(p))
            continue;
        float *h = malloc((size_t)p->numel * sizeof *h);
        if (!h)
            return lm_error_set("out of memory");
        lm_rng r;
        lm_rng_init(&r, seed, (uint64_t)t);
        const double b = 1.0 / sqrt((double)p->fan_in);
        for (int64_t j = 0; j < p->numel; j++) {
            if (p->kind == LM_NET_P_HEAD_W)
                h[j] = (float)(1e-5 * lm_rng_normal(&r));
            else if (p->kind == LM_NET_P_HEAD_B || p->kind == LM_NET_P_LN_B)
                h[j] = 0.0f;
            else if (p->kind == LM_NET_P_LN_W)
                h[j] = 1.0f;
            else
                h[j] = (float)(-b + 2.0 * b * lm_rng_uniform(&r));
        }
        rc = upload_host(n, p, h);
        free(h);
    }
    if (rc < 0)
        return -1;
    for (int k = 0; k < n->nly; k++)
        if (lm_llm_layer_lora_init(n->ly[k], seed, (1ULL << 32) | (uint64_t)(16 * (k + 1))) < 0)
            return -1;
    n->pending_init = n->nly == 0 && lm_net_uses_llm(&n->c) && n->c.lora_rank > 0;
    return 0;
}

/* ---- checkpoints ------------------------------------------------------------------------------ */

static int put_meta(lm_record *rec, const char *k, const char *v)
{
    return lm_record_meta_set(rec, k, v);
}

int lm_net_save(lm_net *n, const char *path, const char *llm_config_json, long step,
                uint64_t seed, const char *history)
{
    lm_record rec;
    lm_record_init(&rec);
    int rc = 0;
    for (int i = 0; i < n->np && rc == 0; i++) {
        lm_net_param *p = &n->p[i];
        lm_tensor t;
        if (lm_tensor_alloc(&t, p->name, LM_F32, p->ndim, p->shape) < 0) {
            rc = -1;
            break;
        }
        if (p->value)
            rc = lm_backend_download(n->be, t.data, p->value, t.nbytes);
        else if (n->pending[i])
            memcpy(t.data, n->pending[i], t.nbytes);
        else if (n->pending_init)
            rc = lm_error_set("%s: LoRA not drawn yet (attach the LLM first)", p->name);
        if (rc == 0)
            rc = lm_record_put(&rec, &t);
        lm_tensor_free(&t);
    }
    char *cj = rc == 0 ? lm_net_config_json(&n->c) : NULL;
    if (rc == 0 && !cj)
        rc = -1;
    if (rc == 0)
        rc = put_meta(&rec, "lm.config", cj);
    free(cj);
    if (rc == 0 && lm_net_uses_llm(&n->c)) {
        cJSON *j = cJSON_CreateObject();
        cJSON *lc = llm_config_json ? cJSON_Parse(llm_config_json) : NULL;
        if (lc)
            cJSON_AddItemToObject(j, "config", lc);
        int ly[2] = {n->c.layers[0], n->c.layers[1]};
        cJSON_AddItemToObject(j, "layers", cJSON_CreateIntArray(ly, n->c.n_layers));
        /* vit uses no LLM tensor: no checksum (its width and heads are in lm.config) */
        if (lm_net_uses_llm_layers(&n->c))
            cJSON_AddStringToObject(j, "checksum", n->nly ? n->llm_sum : n->ckpt_sum);
        char *s = cJSON_PrintUnformatted(j);
        cJSON_Delete(j);
        rc = s ? put_meta(&rec, "lm.llm", s) : lm_error_set("out of memory");
        free(s);
    }
    char buf[64];
    snprintf(buf, sizeof buf, "%ld", step);
    if (rc == 0)
        rc = put_meta(&rec, "lm.step", buf);
    snprintf(buf, sizeof buf, "%" PRIu64, seed);
    if (rc == 0)
        rc = put_meta(&rec, "lm.seed", buf);
    if (rc == 0 && history)
        rc = put_meta(&rec, "lm.history", history);
    if (rc == 0) {
        lm_atomic_durable(1);
        rc = lm_st_write_file(path, &rec);
    }
    lm_record_free(&rec);
    return rc < 0 ? -1 : 0;
}

static const char *meta_of(const lm_st_header *h, const char *k)
{
    for (int i = 0; i < h->nmeta; i++)
        if (!strcmp(h->meta[i].key, k))
            return h->meta[i].value;
    return NULL;
}

int lm_net_load(lm_net **out, lm_backend *be, const char *path)
{
    *out = NULL;
    lm_st_file f;
    if (lm_st_file_open(&f, path, 0) < 0)
        return -1;
    lm_net *n = NULL;
    int rc = 0;
    const char *cj = meta_of(&f.h, "lm.config");
    lm_net_config c;
    lm_net_config_default(&c);
    if (!cj)
        rc = lm_error_set("not a network checkpoint (no lm.config metadata)");
    else if (lm_net_config_parse(&c, cj) < 0 || lm_net_create(&n, be, &c) < 0)
        rc = -1;
    const char *lj = rc == 0 ? meta_of(&f.h, "lm.llm") : NULL;
    if (rc == 0 && lm_net_uses_llm_layers(&c)) {
        cJSON *j = lj ? cJSON_Parse(lj) : NULL;
        const cJSON *s = j ? cJSON_GetObjectItemCaseSensitive(j, "checksum") : NULL;
        if (!cJSON_IsString(s) || strlen(s->valuestring) >= sizeof n->ckpt_sum)
            rc = lm_error_set("lm.llm metadata has no checksum of the LLM layers");
        else
            snprintf(n->ckpt_sum, sizeof n->ckpt_sum, "%s", s->valuestring);
        cJSON_Delete(j);
    }
    for (int i = 0; rc == 0 && i < f.h.n; i++) {
        const char *nm = f.h.e[i].name;
        if (!strncmp(nm, "adam.", 5))
            continue;
        if (!lm_net_param_find(n, nm))
            rc = lm_error_set("unexpected tensor '%s' for this config", nm);
    }
    for (int i = 0; rc == 0 && i < n->np; i++) {
        lm_net_param *p = &n->p[i];
        int e = lm_st_header_find(&f.h, p->name);
        if (e < 0) {
            rc = lm_error_set("no tensor '%s'", p->name);
            break;
        }
        const lm_st_entry *en = &f.h.e[e];
        if (en->dtype != LM_F32 || en->ndim != p->ndim ||
            memcmp(en->shape, p->shape, (size_t)p->ndim * sizeof(int64_t))) {
            char a[80], b[80];
            rc = lm_error_set("%s: %s %s, expected F32 %s", p->name, lm_dtype_name(en->dtype),
                              lm_shape_str(a, sizeof a, en->ndim, en->shape),
                              lm_shape_str(b, sizeof b, p->ndim, p->shape));
            break;
        }
        lm_tensor t;
        if (lm_st_file_read(&f, e, &t) < 0) {
            rc = lm_error_prefix("%s", p->name);
            break;
        }
        if (is_lora(p)) {
            n->pending[i] = t.data;
            t.owns = 0;
        } else {
            rc = upload_host(n, p, t.data);
        }
        lm_tensor_free(&t);
    }
    lm_st_file_close(&f);
    if (rc < 0) {
        lm_net_free(n);
        return -1;
    }
    *out = n;
    return 0;
}
