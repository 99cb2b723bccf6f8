/* llm_load.c — reading decoder layers out of a Hugging Face model folder (lm_llm.h): config.json,
 * the single-file or sharded safetensors layout, the per-architecture tensor names (Phi-3's fused
 * qkv_proj/gate_up_proj are split here), dtype conversion to what the GEMM op takes, and the
 * XXH64 checksum of what was read.
 * Not here: running the layer (llm_layer.c); the generic safetensors reader (io/safetensors.c).
 */
#include "model/lm_llm.h"

#include "io/lm_error.h"

#include <cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- XXH64 (the published algorithm, seed-compatible with xxhash) ------------------------- */

#define P64_1 0x9E3779B185EBCA87ULL
#define P64_2 0xC2B2AE3D27D4EB4FULL
#define P64_3 0x165667B19E3779F9ULL
#define P64_4 0x85EBCA77C2B2AE63ULL
#define P64_5 0x27D4EB2F165667C5ULL

static uint64_t rotl64(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

static uint64_t rd64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint32_t rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t xxh_round(uint64_t acc, uint64_t in)
{
    acc += in * P64_2;
    return rotl64(acc, 31) * P64_1;
}

static uint64_t xxh_merge(uint64_t acc, uint64_t v)
{
    acc ^= xxh_round(0, v);
    return acc * P64_1 + P64_4;
}

uint64_t lm_xxh64(const void *data, size_t len, uint64_t seed)
{
    const unsigned char *p = data, *end = p + len;
    uint64_t h;
    if (len >= 32) {
        uint64_t v1 = seed + P64_1 + P64_2, v2 = seed + P64_2, v3 = seed, v4 = seed - P64_1;
        const unsigned char *limit = end - 32;
        do {
            v1 = xxh_round(v1, rd64(p));
            v2 = xxh_round(v2, rd64(p + 8));
            v3 = xxh_round(v3, rd64(p + 16));
            v4 = xxh_round(v4, rd64(p + 24));
            p += 32;
        } while (p <= limit);
        h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
        h = xxh_merge(h, v1);
        h = xxh_merge(h, v2);
        h = xxh_merge(h, v3);
        h = xxh_merge(h, v4);
    } else {
        h = seed + P64_5;
    }
    h += (uint64_t)len;
    while (p + 8 <= end) {
        h ^= xxh_round(0, rd64(p));
        h = rotl64(h, 27) * P64_1 + P64_4;
        p += 8;
    }
    if (p + 4 <= end) {
        h ^= (uint64_t)rd32(p) * P64_1;
        h = rotl64(h, 23) * P64_2 + P64_3;
        p += 4;
    }
    while (p < end) {
        h ^= (uint64_t)(*p) * P64_5;
        h = rotl64(h, 11) * P64_1;
        p++;
    }
    h ^= h >> 33;
    h *= P64_2;
    h ^= h >> 29;
    h *= P64_3;
    h ^= h >> 32;
    return h;
}

uint64_t lm_llm_checksum_combine(const uint64_t *sums, int n)
{
    unsigned char buf[8];
    uint64_t h = 0;
    for (int i = 0; i < n; i++) {
        for (int b = 0; b < 8; b++)
            buf[b] = (unsigned char)(sums[i] >> (8 * b));
        h = lm_xxh64(buf, 8, h);
    }
    return h;
}

void lm_llm_checksum_str(char out[24], uint64_t sum)
{
    snprintf(out, 24, "xxh64:%016llx", (unsigned long long)sum);
}

/* A growing byte string: the description of every tensor read, hashed at the end. */
typedef struct {
    unsigned char *p;
    size_t n, cap;
} sumbuf;

static int sb_add(sumbuf *s, const void *d, size_t n)
{
    if (s->n + n > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 1024;
        while (cap < s->n + n)
            cap *= 2;
        unsigned char *q = realloc(s->p, cap);
        if (!q)
            return lm_error_set("out of memory");
        s->p = q;
        s->cap = cap;
    }
    memcpy(s->p + s->n, d, n);
    s->n += n;
    return 0;
}

/* name, dtype, shape and the XXH64 of the bytes, all as read from disk */
static int sb_tensor(sumbuf *s, const lm_tensor *t)
{
    unsigned char b[8];
    uint64_t h = lm_xxh64(t->data, t->nbytes, 0);
    const char *dt = lm_dtype_name(t->dtype);
    if (sb_add(s, t->name, strlen(t->name) + 1) < 0 || sb_add(s, dt, strlen(dt) + 1) < 0)
        return -1;
    for (int d = -1; d <= t->ndim; d++) {
        uint64_t v = d < 0 ? (uint64_t)t->ndim : d == t->ndim ? h : (uint64_t)t->shape[d];
        for (int i = 0; i < 8; i++)
            b[i] = (unsigned char)(v >> (8 * i));
        if (sb_add(s, b, 8) < 0)
            return -1;
    }
    return 0;
}

/* ---- config.json ---------------------------------------------------------------------------- */

static const char *const arch_names[] = {"llama", "mistral", "qwen2", "phi3"};

const char *lm_llm_arch_name(lm_llm_arch a)
{
    return (unsigned)a < sizeof arch_names / sizeof *arch_names ? arch_names[a] : "?";
}

/* Integer field: absent or null -> def (or an error when def < 0 means "required"). */
static int json_int(const cJSON *j, const char *key, int def, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!v || cJSON_IsNull(v)) {
        if (def < 0)
            return lm_error_set("config.json: '%s' missing", key);
        *out = def;
        return 0;
    }
    double d = v->valuedouble;
    if (!cJSON_IsNumber(v) || d != (double)(int64_t)d || d < 0 || d > INT_MAX)
        return lm_error_set("config.json: '%s' must be a non-negative integer", key);
    *out = (int)d;
    return 0;
}

static int json_num(const cJSON *j, const char *key, double def, double *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !(v->valuedouble > 0))
        return lm_error_set("config.json: '%s' must be a positive number", key);
    *out = v->valuedouble;
    return 0;
}

static int json_bool(const cJSON *j, const char *key, int def, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v))
        return lm_error_set("config.json: '%s' must be true or false", key);
    *out = cJSON_IsTrue(v);
    return 0;
}

int lm_llm_config_parse(lm_llm_config *c, const char *json)
{
    int rc = -1;
    memset(c, 0, sizeof *c);
    cJSON *j = cJSON_Parse(json);
    if (!j || !cJSON_IsObject(j)) {
        lm_error_set("config.json: not a JSON object");
        goto done;
    }
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(j, "model_type");
    if (!cJSON_IsString(mt)) {
        lm_error_set("config.json: 'model_type' missing");
        goto done;
    }
    int found = 0;
    for (int a = 0; a < (int)(sizeof arch_names / sizeof *arch_names); a++)
        if (strcmp(mt->valuestring, arch_names[a]) == 0) {
            c->arch = (lm_llm_arch)a;
            found = 1;
        }
    if (!found) {
        lm_error_set("config.json: unsupported model_type '%.40s' (supported: llama, mistral, "
                     "qwen2, phi3)",
                     mt->valuestring);
        goto done;
    }
    snprintf(c->model_type, sizeof c->model_type, "%s", mt->valuestring);
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(j, "hidden_act");
    if (act && !cJSON_IsNull(act) &&
        (!cJSON_IsString(act) ||
         (strcmp(act->valuestring, "silu") != 0 && strcmp(act->valuestring, "swish") != 0))) {
        lm_error_set("config.json: hidden_act '%.40s' not supported (only silu)",
                     cJSON_IsString(act) ? act->valuestring : "?");
        goto done;
    }
    if (json_int(j, "hidden_size", -1, &c->hidden) < 0 ||
        json_int(j, "intermediate_size", -1, &c->intermediate) < 0 ||
        json_int(j, "num_hidden_layers", -1, &c->n_layers) < 0 ||
        json_int(j, "num_attention_heads", -1, &c->n_heads) < 0)
        goto done;
    if (c->hidden <= 0 || c->intermediate <= 0 || c->n_layers <= 0 || c->n_heads <= 0) {
        lm_error_set("config.json: sizes must be positive");
        goto done;
    }
    if (json_int(j, "num_key_value_heads", c->n_heads, &c->n_kv_heads) < 0 ||
        json_int(j, "head_dim", c->hidden / c->n_heads, &c->head_dim) < 0 ||
        json_int(j, "vocab_size", 0, &c->vocab) < 0)
        goto done;
    if (c->n_kv_heads <= 0 || c->n_heads % c->n_kv_heads != 0) {
        lm_error_set("config.json: num_attention_heads %d is not a multiple of "
                     "num_key_value_heads %d",
                     c->n_heads, c->n_kv_heads);
        goto done;
    }
    if (c->head_dim <= 0 || c->head_dim % 2 != 0) {
        lm_error_set("config.json: head_dim %d must be even and positive", c->head_dim);
        goto done;
    }
    /* transformers >= 5 writes rope_theta, rope_type and partial_rotary_factor inside
     * "rope_parameters"; older configs have rope_theta and "rope_scaling" at the top. */
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(j, "rope_parameters");
    if (rp && !cJSON_IsNull(rp) && !cJSON_IsObject(rp)) {
        lm_error_set("config.json: 'rope_parameters' must be an object");
        goto done;
    }
    const cJSON *th = cJSON_GetObjectItemCaseSensitive(j, "rope_theta");
    if ((!th || cJSON_IsNull(th)) && cJSON_IsObject(rp) &&
        cJSON_GetObjectItemCaseSensitive(rp, "rope_theta")) {
        if (json_num(rp, "rope_theta", 10000.0, &c->rope_theta) < 0)
            goto done;
    } else if (json_num(j, "rope_theta", 10000.0, &c->rope_theta) < 0) {
        goto done;
    }
    if (json_num(j, "rms_norm_eps", c->arch == LM_LLM_PHI3 ? 1e-5 : 1e-6, &c->rms_eps) < 0 ||
        json_bool(j, "tie_word_embeddings", 0, &c->tie_embeddings) < 0)
        goto done;
    c->rope_partial = 1.0;
    if (json_num(j, "partial_rotary_factor", 1.0, &c->rope_partial) < 0 ||
        (cJSON_IsObject(rp) && cJSON_GetObjectItemCaseSensitive(rp, "partial_rotary_factor") &&
         json_num(rp, "partial_rotary_factor", 1.0, &c->rope_partial) < 0))
        goto done;
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(j, "rope_scaling");
    if (!rs || cJSON_IsNull(rs))
        rs = rp;
    if (rs && cJSON_IsObject(rs)) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
        if (!cJSON_IsString(t))
            t = cJSON_GetObjectItemCaseSensitive(rs, "type");
        if (cJSON_IsString(t))
            snprintf(c->rope_scaling, sizeof c->rope_scaling, "%s", t->valuestring);
        else if (rs != rp)
            snprintf(c->rope_scaling, sizeof c->rope_scaling, "unknown");
        if (strcmp(c->rope_scaling, "default") == 0)
            c->rope_scaling[0] = '\0';
    } else if (rs && !cJSON_IsNull(rs)) {
        lm_error_set("config.json: 'rope_scaling' must be an object or null");
        goto done;
    }
    int attn_bias = 0, mlp_bias = 0;
    if (json_bool(j, "attention_bias", 0, &attn_bias) < 0 ||
        json_bool(j, "mlp_bias", 0, &mlp_bias) < 0)
        goto done;
    switch (c->arch) {
    case LM_LLM_QWEN2: c->qkv_bias = 1; break; /* Qwen2Attention: q/k/v bias=True, o none */
    case LM_LLM_PHI3: break;                   /* no biases */
    default:
        c->qkv_bias = c->o_bias = attn_bias;
        c->mlp_bias = mlp_bias;
        break;
    }
    rc = 0;
done:
    cJSON_Delete(j);
    return rc;
}

void lm_llm_default_layers(const lm_llm_config *c, int out[2])
{
    int n = c->n_layers;
    out[0] = n / 2 - 1 >= 0 ? n / 2 - 1 : 0;
    out[1] = n / 2 < n ? n / 2 : n - 1;
}

int lm_llm_layers_parse(const char *s, const lm_llm_config *c, int *out, int cap)
{
    int n = 0;
    const char *p = s;
    if (!s || !*s)
        return lm_error_set("empty layer list");
    for (;;) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || (*end != ',' && *end != '\0') || *p == '+' || *p == ' ')
            return lm_error_set("bad layer list '%s' (expected integers like 15,16)", s);
        if (v < 0 || v >= c->n_layers)
            return lm_error_set("layer %ld not in model (%d layers)", v, c->n_layers);
        if (n >= cap)
            return lm_error_set("too many layers in '%s' (at most %d)", s, cap);
        out[n++] = (int)v;
        if (*end == '\0')
            break;
        p = end + 1;
    }
    return n;
}

/* ---- the folder --------------------------------------------------------------------------- */

static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static char *slurp(const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        lm_error_set("%s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            if (cap > (64u << 20)) {
                lm_error_set("%s: larger than 64 MiB", path);
                goto fail;
            }
            char *q = realloc(buf, cap);
            if (!q) {
                lm_error_set("out of memory");
                goto fail;
            }
            buf = q;
        }
        size_t k = fread(buf + n, 1, cap - n - 1, fp);
        n += k;
        if (k == 0)
            break;
    }
    if (ferror(fp)) {
        lm_error_set("%s: read error", path);
        goto fail;
    }
    fclose(fp);
    buf[n] = '\0';
    return buf;
fail:
    fclose(fp);
    free(buf);
    return NULL;
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int add_shard(lm_llm *m, const char *file)
{
    for (int i = 0; i < m->n_shards; i++)
        if (strcmp(m->shard_paths[i] + strlen(m->dir) + 1, file) == 0)
            return i;
    if (!*file || strchr(file, '/') || strcmp(file, "..") == 0 || strcmp(file, ".") == 0)
        return lm_error_set("bad shard file name '%.60s'", file);
    char **sp = realloc(m->shard_paths, (size_t)(m->n_shards + 1) * sizeof *sp);
    if (!sp)
        return lm_error_set("out of memory");
    m->shard_paths = sp;
    if (!(sp[m->n_shards] = path_join(m->dir, file)))
        return lm_error_set("out of memory");
    return m->n_shards++;
}

static int add_name(lm_llm *m, const char *name, int shard, int *cap)
{
    if (m->n_names == *cap) {
        int nc = *cap ? *cap * 2 : 256;
        char **nn = realloc(m->names, (size_t)nc * sizeof *nn);
        if (!nn)
            return lm_error_set("out of memory");
        m->names = nn;
        int *ns = realloc(m->name_shard, (size_t)nc * sizeof *ns);
        if (!ns)
            return lm_error_set("out of memory");
        m->name_shard = ns;
        *cap = nc;
    }
    if (!(m->names[m->n_names] = strdup(name)))
        return lm_error_set("out of memory");
    m->name_shard[m->n_names++] = shard;
    return 0;
}

static int find_name(const lm_llm *m, const char *name)
{
    for (int i = 0; i < m->n_names; i++)
        if (strcmp(m->names[i], name) == 0)
            return i;
    return -1;
}

/* The prefix before "layers.N.": "model." when present, else whatever precedes the first
 * "layers.<digits>.input_layernorm.weight" (e.g. "language_model.model."). */
static int find_prefix(lm_llm *m)
{
    const char *best = NULL;
    size_t blen = 0;
    for (int i = 0; i < m->n_names; i++) {
        const char *nm = m->names[i];
        for (const char *s = strstr(nm, "layers."); s; s = strstr(s + 1, "layers.")) {
            if (s != nm && s[-1] != '.')
                continue;
            const char *d = s + 7;
            if (*d < '0' || *d > '9')
                continue;
            while (*d >= '0' && *d <= '9')
                d++;
            if (strcmp(d, ".input_layernorm.weight") != 0)
                continue;
            size_t len = (size_t)(s - nm);
            if (len == 6 && strncmp(nm, "model.", 6) == 0) {
                best = nm;
                blen = len;
                goto found;
            }
            if (!best) {
                best = nm;
                blen = len;
            }
        }
    }
    if (!best)
        return lm_error_set("no decoder layers found (no tensor named "
                            "'model.layers.N.input_layernorm.weight')");
found:
    m->prefix = malloc(blen + 1);
    if (!m->prefix)
        return lm_error_set("out of memory");
    memcpy(m->prefix, best, blen);
    m->prefix[blen] = '\0';
    return 0;
}

static int open_index(lm_llm *m, const char *ipath)
{
    int rc = -1, cap = 0;
    char *text = slurp(ipath);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    if (!text)
        return -1;
    const cJSON *wm = j ? cJSON_GetObjectItemCaseSensitive(j, "weight_map") : NULL;
    if (!cJSON_IsObject(wm)) {
        lm_error_set("%s: no \"weight_map\" object", ipath);
        goto done;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, wm)
    {
        if (!cJSON_IsString(e)) {
            lm_error_set("%s: weight_map['%.60s'] is not a file name", ipath, e->string);
            goto done;
        }
        int s = add_shard(m, e->valuestring);
        if (s < 0) {
            lm_error_prefix("%s", ipath);
            goto done;
        }
        if (add_name(m, e->string, s, &cap) < 0)
            goto done;
    }
    rc = 0;
done:
    cJSON_Delete(j);
    free(text);
    return rc;
}

static int shard_get(lm_llm *m, int s, lm_st_file **out)
{
    if (!m->shard_open[s]) {
        if (lm_st_file_open(&m->shards[s], m->shard_paths[s], 0) < 0)
            return lm_error_prefix("%s", m->shard_paths[s]);
        m->shard_open[s] = 1;
    }
    *out = &m->shards[s];
    return 0;
}

int lm_llm_open(lm_llm *m, const char *dir)
{
    char *cpath = NULL, *ipath = NULL, *spath = NULL;
    int cap = 0;
    memset(m, 0, sizeof *m);
    struct stat st;
    if (stat(dir, &st) < 0)
        return lm_error_set("%s: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return lm_error_set("%s: not a directory (expected a Hugging Face model folder)", dir);
    if (!(m->dir = strdup(dir)) || !(cpath = path_join(dir, "config.json")) ||
        !(ipath = path_join(dir, "model.safetensors.index.json")) ||
        !(spath = path_join(dir, "model.safetensors"))) {
        lm_error_set("out of memory");
        goto fail;
    }
    if (!(m->config_json = slurp(cpath)))
        goto fail;
    if (lm_llm_config_parse(&m->cfg, m->config_json) < 0) {
        lm_error_prefix("%s", dir);
        goto fail;
    }
    if (file_exists(ipath)) {
        if (open_index(m, ipath) < 0)
            goto fail;
    } else if (file_exists(spath)) {
        if (add_shard(m, "model.safetensors") < 0)
            goto fail;
    } else {
        lm_error_set("%s: neither model.safetensors nor model.safetensors.index.json", dir);
        goto fail;
    }
    m->shards = calloc((size_t)m->n_shards, sizeof *m->shards);
    m->shard_open = calloc((size_t)m->n_shards, 1);
    if (!m->shards || !m->shard_open) {
        lm_error_set("out of memory");
        goto fail;
    }
    if (m->n_names == 0) { /* single file: its header is the list of names */
        lm_st_file *f;
        if (shard_get(m, 0, &f) < 0)
            goto fail;
        for (int i = 0; i < f->h.n; i++)
            if (add_name(m, f->h.e[i].name, 0, &cap) < 0)
                goto fail;
    }
    if (find_prefix(m) < 0) {
        lm_error_prefix("%s", dir);
        goto fail;
    }
    free(cpath);
    free(ipath);
    free(spath);
    return 0;
fail:
    free(cpath);
    free(ipath);
    free(spath);
    lm_llm_close(m);
    return -1;
}

void lm_llm_close(lm_llm *m)
{
    if (!m)
        return;
    for (int i = 0; i < m->n_shards; i++) {
        if (m->shard_open && m->shard_open[i])
            lm_st_file_close(&m->shards[i]);
        free(m->shard_paths[i]);
    }
    for (int i = 0; i < m->n_names; i++)
        free(m->names[i]);
    free(m->names);
    free(m->name_shard);
    free(m->shard_paths);
    free(m->shards);
    free(m->shard_open);
    free(m->prefix);
    free(m->config_json);
    free(m->dir);
    memset(m, 0, sizeof *m);
}

/* Reads a tensor as stored (owned, disk dtype). Errors name the tensor and the file. */
static int read_raw(lm_llm *m, const char *name, lm_tensor *out)
{
    memset(out, 0, sizeof *out);
    int i = find_name(m, name);
    if (i < 0)
        return lm_error_set("%s: tensor '%s' not found", m->dir, name);
    lm_st_file *f;
    if (shard_get(m, m->name_shard[i], &f) < 0)
        return -1;
    int e = lm_st_header_find(&f->h, name);
    if (e < 0)
        return lm_error_set("%s: tensor '%s' is listed in the index but not in the file",
                            m->shard_paths[m->name_shard[i]], name);
    lm_dtype dt = f->h.e[e].dtype;
    if (dt != LM_F32 && dt != LM_BF16 && dt != LM_F16)
        return lm_error_set("%s: tensor '%s' has dtype %s (supported: F32, BF16, F16)",
                            m->shard_paths[m->name_shard[i]], name, lm_dtype_name(dt));
    if (lm_st_file_read(f, e, out) < 0)
        return lm_error_prefix("%s", m->shard_paths[m->name_shard[i]]);
    return 0;
}

/* out = in converted between the float dtypes F32, BF16, F16 (to F32 or BF16). */
static int convert(lm_tensor *out, const lm_tensor *in, lm_dtype dt)
{
    if (lm_tensor_alloc(out, in->name, dt, in->ndim, in->shape) < 0)
        return -1;
    int64_t n = lm_tensor_numel(in);
    if (in->dtype == dt) {
        memcpy(out->data, in->data, in->nbytes);
        return 0;
    }
    const uint16_t *s16 = in->data;
    const float *s32 = in->data;
    if (dt == LM_F32) {
        float *o = out->data;
        if (in->dtype == LM_BF16)
            for (int64_t i = 0; i < n; i++)
                o[i] = lm_bf16_to_f32(s16[i]);
        else
            for (int64_t i = 0; i < n; i++)
                o[i] = lm_f16_to_f32(s16[i]);
    } else {
        uint16_t *o = out->data;
        if (in->dtype == LM_F32)
            for (int64_t i = 0; i < n; i++)
                o[i] = lm_f32_to_bf16(s32[i]);
        else
            for (int64_t i = 0; i < n; i++)
                o[i] = lm_f32_to_bf16(lm_f16_to_f32(s16[i]));
    }
    return 0;
}

static lm_dtype auto_dtype(lm_dtype disk, lm_dtype want)
{
    if (want == LM_F32 || want == LM_BF16)
        return want;
    return disk == LM_BF16 ? LM_BF16 : LM_F32;
}

static int check_shape(const lm_tensor *t, int ndim, int64_t d0, int64_t d1)
{
    int ok = t->ndim == ndim && t->shape[0] == d0 && (ndim == 1 || t->shape[1] == d1);
    if (ok)
        return 0;
    char got[96], want[64];
    int64_t ws[2] = {d0, d1};
    lm_shape_str(got, sizeof got, t->ndim, t->shape);
    lm_shape_str(want, sizeof want, ndim, ws);
    return lm_error_set("tensor '%s': shape mismatch: %s, expected %s from config.json", t->name,
                        got, want);
}

/* Copies rows [r0, r0+rows) of a 2-D tensor into a new tensor named `name`. */
static int slice_rows(lm_tensor *out, const lm_tensor *in, int64_t r0, int64_t rows,
                      const char *name)
{
    int64_t sh[2] = {rows, in->shape[1]};
    if (lm_tensor_alloc(out, name, in->dtype, 2, sh) < 0)
        return -1;
    size_t row = (size_t)in->shape[1] * lm_dtype_size(in->dtype);
    memcpy(out->data, (const unsigned char *)in->data + (size_t)r0 * row, (size_t)rows * row);
    return 0;
}

void lm_llm_weights_free(lm_llm_weights *w)
{
    if (!w)
        return;
    for (int i = 0; i < LM_LLM_NLIN; i++) {
        lm_tensor_free(&w->w[i]);
        lm_tensor_free(&w->b[i]);
    }
    lm_tensor_free(&w->ln_in);
    lm_tensor_free(&w->ln_post);
    memset(w, 0, sizeof *w);
}

static const char *const lin_names[LM_LLM_NLIN] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

typedef struct {
    lm_llm *m;
    int layer;
    sumbuf sb;
    char name[512];
} loadctx;

static const char *lname(loadctx *lc, const char *suffix)
{
    snprintf(lc->name, sizeof lc->name, "%slayers.%d.%s", lc->m->prefix, lc->layer, suffix);
    return lc->name;
}

/* Reads a tensor of the layer, checks its shape, adds it to the checksum. */
static int read_checked(loadctx *lc, const char *suffix, int ndim, int64_t d0, int64_t d1,
                        lm_tensor *raw)
{
    if (read_raw(lc->m, lname(lc, suffix), raw) < 0)
        return -1;
    if (check_shape(raw, ndim, d0, d1) < 0 || sb_tensor(&lc->sb, raw) < 0) {
        lm_tensor_free(raw);
        return lm_error_prefix("%s", lc->m->dir);
    }
    return 0;
}

static int read_conv(loadctx *lc, const char *suffix, int ndim, int64_t d0, int64_t d1,
                     lm_dtype want, lm_tensor *out)
{
    lm_tensor raw;
    if (read_checked(lc, suffix, ndim, d0, d1, &raw) < 0)
        return -1;
    int rc = convert(out, &raw, auto_dtype(raw.dtype, want));
    lm_tensor_free(&raw);
    return rc;
}

int lm_llm_load_layer(lm_llm_weights *w, lm_llm *m, int layer, lm_dtype wdtype)
{
    const lm_llm_config *c = &m->cfg;
    loadctx lc = {m, layer, {NULL, 0, 0}, {0}};
    lm_tensor raw = {0};
    memset(w, 0, sizeof *w);
    if (wdtype != LM_F32 && wdtype != LM_BF16 && wdtype != LM_LLM_WDTYPE_AUTO)
        return lm_error_set("LLM weights can be kept as F32 or BF16, not %s",
                            lm_dtype_name(wdtype));
    if (layer < 0 || layer >= c->n_layers)
        return lm_error_set("layer %d not in model (%d layers)", layer, c->n_layers);
    w->layer = layer;
    const int64_t D = c->hidden, F = c->intermediate;
    const int64_t qd = (int64_t)c->n_heads * c->head_dim,
                  kvd = (int64_t)c->n_kv_heads * c->head_dim;
    const int64_t out_dim[LM_LLM_NLIN] = {qd, kvd, kvd, D, F, F, D};
    const int64_t in_dim[LM_LLM_NLIN] = {D, D, D, qd, D, D, F};
    char suffix[96];

    if (read_conv(&lc, "input_layernorm.weight", 1, D, 0, LM_F32, &w->ln_in) < 0 ||
        read_conv(&lc, "post_attention_layernorm.weight", 1, D, 0, LM_F32, &w->ln_post) < 0)
        goto fail;
    for (int i = 0; i < LM_LLM_NLIN; i++) {
        int fused_qkv = c->arch == LM_LLM_PHI3 && i <= LM_LLM_V;
        int fused_gu = c->arch == LM_LLM_PHI3 && (i == LM_LLM_GATE || i == LM_LLM_UP);
        if (fused_qkv || fused_gu) {
            /* Phi-3: rows q | k | v of qkv_proj and gate | up of gate_up_proj */
            if (i != LM_LLM_Q && i != LM_LLM_GATE)
                continue;
            const char *fname = fused_qkv ? "self_attn.qkv_proj.weight" : "mlp.gate_up_proj.weight";
            int64_t rows = fused_qkv ? qd + 2 * kvd : 2 * F;
            if (read_checked(&lc, fname, 2, rows, D, &raw) < 0)
                goto fail;
            int first = i, count = fused_qkv ? 3 : 2;
            int64_t r0 = 0;
            for (int k = first; k < first + count; k++) {
                lm_tensor part = {0};
                snprintf(suffix, sizeof suffix, "%s.weight", lin_names[k]);
                if (slice_rows(&part, &raw, r0, out_dim[k], lname(&lc, suffix)) < 0)
                    goto fail;
                r0 += out_dim[k];
                int rc = convert(&w->w[k], &part, auto_dtype(part.dtype, wdtype));
                lm_tensor_free(&part);
                if (rc < 0)
                    goto fail;
            }
            lm_tensor_free(&raw);
            continue;
        }
        snprintf(suffix, sizeof suffix, "%s.weight", lin_names[i]);
        if (read_conv(&lc, suffix, 2, out_dim[i], in_dim[i], wdtype, &w->w[i]) < 0)
            goto fail;
    }
    w->wdtype = w->w[0].dtype;
    for (int i = 1; i < LM_LLM_NLIN; i++)
        if (w->w[i].dtype != w->wdtype) {
            /* mixed dtypes on disk (rare): keep one dtype for the whole layer */
            lm_tensor t = {0};
            if (convert(&t, &w->w[i], w->wdtype) < 0)
                goto fail;
            lm_tensor_free(&w->w[i]);
            w->w[i] = t;
        }
    for (int i = 0; i < LM_LLM_NLIN; i++) {
        int has = i <= LM_LLM_V ? c->qkv_bias : i == LM_LLM_O ? c->o_bias : c->mlp_bias;
        if (!has)
            continue;
        snprintf(suffix, sizeof suffix, "%s.bias", lin_names[i]);
        if (read_conv(&lc, suffix, 1, out_dim[i], 0, LM_F32, &w->b[i]) < 0)
            goto fail;
    }
    w->checksum = lm_xxh64(lc.sb.p, lc.sb.n, 0);
    free(lc.sb.p);
    return 0;
fail:
    lm_tensor_free(&raw);
    free(lc.sb.p);
    lm_llm_weights_free(w);
    return -1;
}

int lm_llm_read_extra(lm_llm *m, int which, lm_dtype dt, lm_tensor *out)
{
    char name[512];
    lm_tensor raw;
    memset(out, 0, sizeof *out);
    if (dt != LM_F32 && dt != LM_BF16)
        return lm_error_set("extra tensors can be read as F32 or BF16 only");
    const int64_t D = m->cfg.hidden, V = m->cfg.vocab;
    int ndim = 2;
    if (which == LM_LLM_NORM) {
        snprintf(name, sizeof name, "%snorm.weight", m->prefix);
        ndim = 1;
    } else if (which == LM_LLM_EMBED) {
        snprintf(name, sizeof name, "%sembed_tokens.weight", m->prefix);
    } else if (which == LM_LLM_LM_HEAD) {
        /* lm_head sits beside the "model." prefix: strip its last component */
        size_t pl = strlen(m->prefix);
        size_t keep = pl >= 6 && strcmp(m->prefix + pl - 6, "model.") == 0 ? pl - 6 : pl;
        snprintf(name, sizeof name, "%.*slm_head.weight", (int)keep, m->prefix);
        if (find_name(m, name) < 0) {
            if (!m->cfg.tie_embeddings)
                return lm_error_set("%s: no '%s' and tie_word_embeddings is false", m->dir, name);
            snprintf(name, sizeof name, "%sembed_tokens.weight", m->prefix);
        }
    } else {
        return lm_error_set("lm_llm_read_extra: bad selector %d", which);
    }
    if (read_raw(m, name, &raw) < 0)
        return -1;
    int bad = ndim == 1 ? (raw.ndim != 1 || raw.shape[0] != D)
                        : (raw.ndim != 2 || raw.shape[1] != D || (V && raw.shape[0] != V));
    if (bad) {
        char got[96];
        lm_shape_str(got, sizeof got, raw.ndim, raw.shape);
        lm_tensor_free(&raw);
        return lm_error_set("%s: tensor '%s': shape mismatch: %s (hidden_size %lld, vocab_size "
                            "%lld)",
                            m->dir, name, got, (long long)D, (long long)V);
    }
    int rc = convert(out, &raw, dt);
    lm_tensor_free(&raw);
    return rc;
}
