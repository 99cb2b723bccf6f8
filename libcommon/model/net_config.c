/* net_config.c — the model config (JSON), presets, and the shape plan of the forward
 * (MODEL.md §3, §4, §6, §7.1). The plan is what the forward allocates, so the shape tests of
 * §7.1 assert the shapes the network really uses. Not here: the numbers (net_model.c). */
#include "io/lm_error.h"
#include "model/lm_net.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *abl_names[] = {"none", "no-leb", "one-leb", "no-lora", "vit"};

void lm_net_config_default(lm_net_config *c)
{
    memset(c, 0, sizeof *c);
    c->shape[0] = c->shape[1] = c->shape[2] = 32;
    c->lora_rank = 64;
    c->lora_alpha = 64;
    c->rope = 1;
    c->n_layers = 0;
    static const int enc[5] = {8, 16, 16, 32, 32};
    memcpy(c->enc, enc, sizeof enc);
    c->lambda = 0.1;
}

static void set_classes(lm_net_config *c, int k)
{
    c->n_classes = k;
    for (int i = 0; i < k; i++) {
        c->classes[i] = i;
        c->kept[i] = i != 0;
    }
}

int lm_net_config_preset(lm_net_config *c, const char *name)
{
    lm_net_config_default(c);
    if (!strcmp(name, "abdomen")) {
        c->shape[0] = 96, c->shape[1] = 80, c->shape[2] = 96;
        c->half = 1;
        set_classes(c, 5);
    } else if (!strcmp(name, "srreg")) {
        c->shape[0] = 176, c->shape[1] = 208, c->shape[2] = 192;
    } else if (!strcmp(name, "tiny")) {
        c->lora_rank = 4;
        c->lora_alpha = 8;
        set_classes(c, 4);
    } else {
        return lm_error_set("unknown preset '%s' (abdomen, srreg, tiny)", name);
    }
    return 0;
}

int lm_net_uses_llm(const lm_net_config *c)
{
    return c->ablation != LM_NET_ABL_NO_LEB;
}

int lm_net_uses_llm_layers(const lm_net_config *c)
{
    return c->ablation != LM_NET_ABL_NO_LEB && c->ablation != LM_NET_ABL_VIT;
}

int lm_net_lebs(const lm_net_config *c)
{
    return c->ablation == LM_NET_ABL_NO_LEB ? 0 : c->ablation == LM_NET_ABL_ONE_LEB ? 1 : 2;
}

int64_t lm_net_tokens(const lm_net_config *c)
{
    return (c->shape[0] / 16) * (c->shape[1] / 16) * (c->shape[2] / 16);
}

static int want_layers(const lm_net_config *c)
{
    return lm_net_uses_llm_layers(c) ? lm_net_lebs(c) : 0;
}

int lm_net_config_check(const lm_net_config *c)
{
    for (int i = 0; i < 3; i++)
        if (c->shape[i] < 16 || c->shape[i] % 16 || c->shape[i] > 4096)
            return lm_error_set("config: shape [%lld,%lld,%lld]: every size must be a positive "
                                "multiple of 16 (at most 4096)",
                                (long long)c->shape[0], (long long)c->shape[1],
                                (long long)c->shape[2]);
    for (int i = 0; i < 5; i++)
        if (c->enc[i] < 1 || c->enc[i] > 4096)
            return lm_error_set("config: encoder width %d out of range", c->enc[i]);
    if (c->lora_rank < 0 || c->lora_rank > 65536 || !isfinite(c->lora_alpha))
        return lm_error_set("config: bad LoRA rank %d or alpha", c->lora_rank);
    if (c->ablation == LM_NET_ABL_NO_LORA && c->lora_rank != 0)
        return lm_error_set("config: ablation 'no-lora' needs lora_rank 0");
    if (c->ablation == LM_NET_ABL_VIT && (c->lora_rank != 0 || c->rope || c->causal))
        return lm_error_set("config: ablation 'vit' (standard ViT blocks) has no LoRA, no RoPE "
                            "and no causal mask: lora_rank 0, rope false, mask bidirectional");
    if (!isfinite(c->lambda) || c->lambda < 0)
        return lm_error_set("config: lambda must be a finite number >= 0");
    if (c->n_classes < 0 || c->n_classes > LM_NET_MAX_CLASSES)
        return lm_error_set("config: at most %d classes", LM_NET_MAX_CLASSES);
    if (lm_net_uses_llm(c)) {
        if (c->n_layers != want_layers(c))
            return lm_error_set("config: %s needs %d LLM layer%s, the config has %d",
                                abl_names[c->ablation], want_layers(c),
                                want_layers(c) == 1 ? "" : "s", c->n_layers);
        if (c->llm_hidden < 1 || c->llm_q_dim < 1 || c->llm_kv_dim < 1 || c->a0_hidden < 1)
            return lm_error_set("config: the LLM widths (llm_hidden, llm_q_dim, llm_kv_dim) are "
                                "not set (give --llm)");
        if (c->ablation == LM_NET_ABL_VIT &&
            (c->llm_heads < 1 || c->llm_hidden % c->llm_heads))
            return lm_error_set("config: vit needs the LLM's head count llm_heads (%d), a "
                                "divisor of llm_hidden %d (give --llm)",
                                c->llm_heads, c->llm_hidden);
    }
    return 0;
}

/* ---- JSON ------------------------------------------------------------------------------------- */

static int get_int_array(const cJSON *v, const char *key, int64_t *out, int n, int64_t lo,
                         int64_t hi)
{
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != n)
        return lm_error_set("config: '%s' must be an array of %d integers", key, n);
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v)
    {
        if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) ||
            e->valuedouble < (double)lo || e->valuedouble > (double)hi)
            return lm_error_set("config: '%s' must hold integers in [%lld, %lld]", key,
                                (long long)lo, (long long)hi);
        out[i++] = (int64_t)e->valuedouble;
    }
    return 0;
}

static int get_int(const cJSON *v, const char *key, int *out, int lo, int hi)
{
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi)
        return lm_error_set("config: '%s' must be an integer in [%d, %d]", key, lo, hi);
    *out = (int)v->valuedouble;
    return 0;
}

static int get_choice(const cJSON *v, const char *key, const char *const *names, int n,
                      int *out)
{
    if (cJSON_IsString(v))
        for (int i = 0; i < n; i++)
            if (!strcmp(v->valuestring, names[i])) {
                *out = i;
                return 0;
            }
    char list[200] = "";
    for (int i = 0; i < n; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "",
                 names[i]);
    return lm_error_set("config: '%s' must be one of %s", key, list);
}

int lm_net_config_parse(lm_net_config *c, const char *json)
{
    cJSON *j = cJSON_Parse(json);
    if (!j || !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return lm_error_set("config: not a JSON object");
    }
    int rc = 0, have_kept = 0, have_ignore = 0;
    int64_t v64[LM_NET_MAX_CLASSES];
    static const char *const masks[] = {"bidirectional", "causal"};
    static const char *const restores[] = {"text", "figure"};
    static const char *const combines[] = {"compose", "add"};
    const cJSON *e;
    cJSON_ArrayForEach(e, j)
    {
        const char *k = e->string;
        int iv;
        if (rc < 0)
            break;
        if (!strcmp(k, "shape")) {
            rc = get_int_array(e, k, c->shape, 3, 16, 4096);
        } else if (!strcmp(k, "half")) {
            if (!cJSON_IsBool(e))
                rc = lm_error_set("config: 'half' must be true or false");
            c->half = cJSON_IsTrue(e);
        } else if (!strcmp(k, "rope")) {
            if (!cJSON_IsBool(e))
                rc = lm_error_set("config: 'rope' must be true or false");
            c->rope = cJSON_IsTrue(e);
        } else if (!strcmp(k, "llm")) {
            if (!cJSON_IsString(e) || strlen(e->valuestring) >= sizeof c->llm)
                rc = lm_error_set("config: 'llm' must be a folder name");
            else
                snprintf(c->llm, sizeof c->llm, "%s", e->valuestring);
        } else if (!strcmp(k, "layers")) {
            int n = cJSON_IsArray(e) ? cJSON_GetArraySize(e) : -1;
            if (n < 0 || n > 2)
                rc = lm_error_set("config: 'layers' must be an array of at most 2 integers");
            else if ((rc = get_int_array(e, k, v64, n, 0, 100000)) == 0) {
                c->n_layers = n;
                for (int i = 0; i < n; i++)
                    c->layers[i] = (int)v64[i];
            }
        } else if (!strcmp(k, "llm_hidden")) {
            rc = get_int(e, k, &c->llm_hidden, 1, 1 << 20);
        } else if (!strcmp(k, "llm_q_dim")) {
            rc = get_int(e, k, &c->llm_q_dim, 1, 1 << 20);
        } else if (!strcmp(k, "llm_kv_dim")) {
            rc = get_int(e, k, &c->llm_kv_dim, 1, 1 << 20);
        } else if (!strcmp(k, "llm_heads")) {
            rc = get_int(e, k, &c->llm_heads, 0, 1 << 20);
        } else if (!strcmp(k, "a0_hidden")) {
            rc = get_int(e, k, &c->a0_hidden, 1, 1 << 20);
        } else if (!strcmp(k, "lora_rank")) {
            rc = get_int(e, k, &c->lora_rank, 0, 65536);
        } else if (!strcmp(k, "lora_alpha")) {
            if (!cJSON_IsNumber(e) || !isfinite(e->valuedouble))
                rc = lm_error_set("config: 'lora_alpha' must be a number");
            c->lora_alpha = e->valuedouble;
        } else if (!strcmp(k, "lambda")) {
            if (!cJSON_IsNumber(e) || !(e->valuedouble >= 0))
                rc = lm_error_set("config: 'lambda' must be a number >= 0");
            c->lambda = e->valuedouble;
        } else if (!strcmp(k, "mask")) {
            rc = get_choice(e, k, masks, 2, &c->causal);
        } else if (!strcmp(k, "restore")) {
            rc = get_choice(e, k, restores, 2, &c->restore);
        } else if (!strcmp(k, "combine")) {
            rc = get_choice(e, k, combines, 2, &c->combine);
        } else if (!strcmp(k, "ablation")) {
            rc = get_choice(e, k, abl_names, 5, &c->ablation);
            if (rc == 0 && c->ablation == LM_NET_ABL_NO_LORA)
                c->lora_rank = 0;
            if (rc == 0 && c->ablation == LM_NET_ABL_VIT) {
                /* a standard ViT block: no LoRA, no RoPE, no LLM layers */
                c->lora_rank = 0;
                c->rope = 0;
                c->n_layers = 0;
            }
        } else if (!strcmp(k, "encoder")) {
            if ((rc = get_int_array(e, k, v64, 5, 1, 4096)) == 0)
                for (int i = 0; i < 5; i++)
                    c->enc[i] = (int)v64[i];
        } else if (!strcmp(k, "classes")) {
            int n = cJSON_IsArray(e) ? cJSON_GetArraySize(e) : -1;
            if (n < 1 || n > LM_NET_MAX_CLASSES)
                rc = lm_error_set("config: 'classes' must be an array of 1 to %d label values",
                                  LM_NET_MAX_CLASSES);
            else if ((rc = get_int_array(e, k, v64, n, INT32_MIN, INT32_MAX)) == 0) {
                c->n_classes = n;
                for (int i = 0; i < n; i++) {
                    c->classes[i] = (int32_t)v64[i];
                    if (!have_kept && !have_ignore)
                        c->kept[i] = v64[i] != 0;
                }
            }
        } else if (!strcmp(k, "kept") || !strcmp(k, "ignore")) {
            int n = cJSON_IsArray(e) ? cJSON_GetArraySize(e) : -1;
            if (n < 0 || n > LM_NET_MAX_CLASSES)
                rc = lm_error_set("config: '%s' must be an array of label values", k);
            else
                rc = get_int_array(e, k, v64, n, INT32_MIN, INT32_MAX);
            if (rc == 0 && !c->n_classes)
                rc = lm_error_set("config: '%s' must come after 'classes'", k);
            int is_kept = !strcmp(k, "kept");
            for (int i = 0; rc == 0 && i < c->n_classes; i++) {
                int in = 0;
                for (int q = 0; q < n; q++)
                    in |= v64[q] == c->classes[i];
                c->kept[i] = (uint8_t)(is_kept ? in : !in);
            }
            have_kept |= is_kept;
            have_ignore |= !is_kept;
        } else if (!strcmp(k, "name") || !strcmp(k, "comment")) {
            /* free text */
        } else {
            rc = lm_error_set("config: unknown key '%s'", k);
        }
        (void)iv;
    }
    cJSON_Delete(j);
    if (rc == 0 && c->a0_hidden == 0)
        c->a0_hidden = c->llm_hidden;
    return rc;
}

char *lm_net_config_json(const lm_net_config *c)
{
    cJSON *j = cJSON_CreateObject();
    double sh[3] = {(double)c->shape[0], (double)c->shape[1], (double)c->shape[2]};
    cJSON_AddStringToObject(j, "ablation", abl_names[c->ablation]);
    cJSON_AddItemToObject(j, "shape", cJSON_CreateDoubleArray(sh, 3));
    cJSON_AddBoolToObject(j, "half", c->half);
    cJSON_AddStringToObject(j, "llm", c->llm);
    int ly[2] = {c->layers[0], c->layers[1]};
    cJSON_AddItemToObject(j, "layers", cJSON_CreateIntArray(ly, c->n_layers));
    cJSON_AddNumberToObject(j, "llm_hidden", c->llm_hidden);
    cJSON_AddNumberToObject(j, "llm_q_dim", c->llm_q_dim);
    cJSON_AddNumberToObject(j, "llm_kv_dim", c->llm_kv_dim);
    cJSON_AddNumberToObject(j, "llm_heads", c->llm_heads);
    cJSON_AddNumberToObject(j, "a0_hidden", c->a0_hidden);
    cJSON_AddNumberToObject(j, "lora_rank", c->lora_rank);
    cJSON_AddNumberToObject(j, "lora_alpha", c->lora_alpha);
    cJSON_AddStringToObject(j, "mask", c->causal ? "causal" : "bidirectional");
    cJSON_AddBoolToObject(j, "rope", c->rope);
    cJSON_AddStringToObject(j, "restore", c->restore ? "figure" : "text");
    cJSON_AddStringToObject(j, "combine", c->combine ? "add" : "compose");
    cJSON_AddItemToObject(j, "encoder", cJSON_CreateIntArray(c->enc, 5));
    cJSON_AddNumberToObject(j, "lambda", c->lambda);
    if (c->n_classes) {
        cJSON *cl = cJSON_CreateArray(), *kp = cJSON_CreateArray();
        for (int i = 0; i < c->n_classes; i++) {
            cJSON_AddItemToArray(cl, cJSON_CreateNumber(c->classes[i]));
            if (c->kept[i])
                cJSON_AddItemToArray(kp, cJSON_CreateNumber(c->classes[i]));
        }
        cJSON_AddItemToObject(j, "classes", cl);
        cJSON_AddItemToObject(j, "kept", kp);
    }
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!s)
        lm_error_set("out of memory");
    return s;
}

int lm_net_config_set_llm(lm_net_config *c, const lm_llm *m, const int *layers, int n)
{
    const lm_llm_config *lc = &m->cfg;
    int want = want_layers(c);
    if (n > 0) {
        if (c->ablation == LM_NET_ABL_VIT)
            return lm_error_set("vit uses no LLM layers (its ViT blocks only take the LLM's "
                                "width and head count); %d given", n);
        if (n != want)
            return lm_error_set("%s needs %d LLM layer%s, %d given", abl_names[c->ablation],
                                want, want == 1 ? "" : "s", n);
        for (int i = 0; i < n; i++)
            c->layers[i] = layers[i];
        c->n_layers = n;
    } else if (c->n_layers != want) {
        int d[2];
        lm_llm_default_layers(lc, d);
        c->n_layers = want;
        c->layers[0] = d[0];
        c->layers[1] = d[1];
    }
    for (int i = 0; i < c->n_layers; i++)
        if (c->layers[i] < 0 || c->layers[i] >= lc->n_layers)
            return lm_error_set("layer %d not in model (%d layers)", c->layers[i], lc->n_layers);
    if (c->rope && lc->rope_scaling[0])
        return lm_error_set("the LLM's rope_scaling '%s' is not supported; use \"rope\": false",
                            lc->rope_scaling);
    int a0_was_default = c->a0_hidden == 0 || c->a0_hidden == c->llm_hidden;
    c->llm_hidden = lc->hidden;
    c->llm_q_dim = lc->n_heads * lc->head_dim;
    c->llm_kv_dim = lc->n_kv_heads * lc->head_dim;
    c->llm_heads = lc->n_heads;
    if (c->ablation == LM_NET_ABL_VIT && c->llm_hidden % c->llm_heads)
        return lm_error_set("vit: the LLM's width %d is not a multiple of its %d heads",
                            c->llm_hidden, c->llm_heads);
    if (a0_was_default)
        c->a0_hidden = lc->hidden;
    if (!c->llm[0])
        snprintf(c->llm, sizeof c->llm, "%s", m->dir);
    return 0;
}

/* ---- the plan --------------------------------------------------------------------------------- */

static void add(lm_net_plan *p, const char *name, int ndim, int64_t a, int64_t b, int64_t cc,
                int64_t d, int64_t e)
{
    lm_net_act_info *x = &p->a[p->n++];
    snprintf(x->name, sizeof x->name, "%s", name);
    x->ndim = ndim;
    int64_t s[5] = {a, b, cc, d, e};
    x->numel = 1;
    for (int i = 0; i < ndim; i++) {
        x->shape[i] = s[i];
        x->numel *= s[i];
    }
}

static void vol(lm_net_plan *p, const char *name, int64_t C, const int64_t *g)
{
    add(p, name, 5, 1, C, g[0], g[1], g[2]);
}

int lm_net_plan_make(lm_net_plan *p, const lm_net_config *c)
{
    if (lm_net_config_check(c) < 0)
        return -1;
    memset(p, 0, sizeof *p);
    int64_t g[6][3]; /* g[1] full .. g[5] 1/16; g[0] = 2x (half) */
    for (int i = 0; i < 3; i++) {
        g[1][i] = c->shape[i];
        g[0][i] = 2 * c->shape[i];
        for (int s = 2; s <= 5; s++)
            g[s][i] = (g[s - 1][i] - 1) / 2 + 1;
    }
    const int *e = c->enc; /* Fm_i has e[i-1] channels */
    const int64_t L = lm_net_tokens(c);
    const int llm = lm_net_uses_llm(c), fig = c->restore == LM_NET_RESTORE_FIGURE;
    char nm[24];
    vol(p, "moving", 1, g[1]);
    vol(p, "fixed", 1, g[1]);
    vol(p, "moving2", 1, g[2]);
    for (int s = 1; s <= 5; s++) {
        snprintf(nm, sizeof nm, "fm%d", s);
        vol(p, nm, e[s - 1], g[s]);
    }
    for (int s = 1; s <= 5; s++) {
        snprintf(nm, sizeof nm, "ff%d", s);
        vol(p, nm, e[s - 1], g[s]);
    }
    int64_t cf[5] = {0, 0, 0, 0, 0}; /* channels of F_j */
    if (llm) {
        const int64_t D = c->llm_hidden, H = c->a0_hidden;
        add(p, "x0", 3, 1, L, 2 * e[4], 0, 0);
        for (int k = 1; k <= lm_net_lebs(c); k++) {
            snprintf(nm, sizeof nm, "leb%d.y1", k);
            add(p, nm, 3, 1, L, H, 0, 0);
            snprintf(nm, sizeof nm, "leb%d.a1", k);
            add(p, nm, 3, 1, L, H, 0, 0);
            snprintf(nm, sizeof nm, "leb%d.y2", k);
            add(p, nm, 3, 1, L, D, 0, 0);
            snprintf(nm, sizeof nm, "leb%d.a2", k);
            add(p, nm, 3, 1, L, D, 0, 0);
            if (c->ablation == LM_NET_ABL_VIT) { /* the ViT block's activations */
                static const char *const tk[] = {"ln1", "q", "k", "v", "o", "h", "ln2"};
                for (int i = 0; i < 7; i++) {
                    snprintf(nm, sizeof nm, "leb%d.%s", k, tk[i]);
                    add(p, nm, 3, 1, L, D, 0, 0);
                }
                snprintf(nm, sizeof nm, "leb%d.p", k);
                add(p, nm, 4, 1, c->llm_heads, L, L, 0);
                snprintf(nm, sizeof nm, "leb%d.m", k);
                add(p, nm, 3, 1, L, 4 * D, 0, 0);
                snprintf(nm, sizeof nm, "leb%d.g", k);
                add(p, nm, 3, 1, L, 4 * D, 0, 0);
            }
            snprintf(nm, sizeof nm, "leb%d", k);
            add(p, nm, 3, 1, L, D, 0, 0);
        }
        add(p, "t", 3, 1, L, D, 0, 0); /* alias of the last LEB's output */
        for (int j = 4; j >= 1; j--) {
            int64_t Cj = 256LL << (2 * (4 - j));
            int f = fig ? 1 << (4 - j) : 1 << (5 - j);
            cf[j] = Cj / ((int64_t)f * f * f);
            snprintf(nm, sizeof nm, "a%d.y", j);
            add(p, nm, 3, 1, L, Cj, 0, 0);
            snprintf(nm, sizeof nm, "a%d", j);
            add(p, nm, 3, 1, L, Cj, 0, 0);
            if (fig) {
                snprintf(nm, sizeof nm, "f%d.s", j);
                vol(p, nm, cf[j], g[j + 1]);
            }
            snprintf(nm, sizeof nm, "f%d", j);
            vol(p, nm, cf[j], g[j]);
        }
    }
    const int64_t w4 = fig ? 64 : 32, w3 = fig ? 32 : 16, w2 = 16, w1 = fig ? 16 : 8;
    vol(p, "x4", cf[4] + 2 * e[3], g[4]);
    vol(p, "s4.c", w4, g[4]);
    vol(p, "s4", w4, g[4]);
    vol(p, "s4.up", w4, g[3]);
    vol(p, "x3", w4 + cf[3] + 2 * e[2], g[3]);
    vol(p, "s3.c", w3, g[3]);
    vol(p, "s3", w3, g[3]);
    vol(p, "phi3", 3, g[3]);
    vol(p, "phi3.up", 3, g[2]);
    vol(p, "warp2", 1, g[2]);
    vol(p, "s3.up", w3, g[2]);
    vol(p, "x2", w3 + cf[2] + 2 * e[1] + 4, g[2]);
    vol(p, "s2.c", w2, g[2]);
    vol(p, "s2", w2, g[2]);
    vol(p, "r2", 3, g[2]);
    vol(p, "psi2", 3, g[2]);
    vol(p, "psi2.up", 3, g[1]);
    vol(p, "warp1", 1, g[1]);
    vol(p, "s2.up", w2, g[1]);
    vol(p, "x1", w2 + cf[1] + 2 * e[0] + 4, g[1]);
    vol(p, "s1.c", w1, g[1]);
    vol(p, "s1", w1, g[1]);
    vol(p, "r1", 3, g[1]);
    vol(p, "phi", 3, g[1]);
    if (c->half) {
        vol(p, "phi_full", 3, g[0]);
        vol(p, "moving_full", 1, g[0]);
        vol(p, "fixed_full", 1, g[0]);
    }
    return 0;
}

const lm_net_act_info *lm_net_plan_get(const lm_net_plan *p, const char *name)
{
    for (int i = 0; i < p->n; i++)
        if (!strcmp(p->a[i].name, name))
            return &p->a[i];
    return NULL;
}
