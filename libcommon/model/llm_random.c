/* llm_random.c — a seeded random LLaMA-architecture model folder in the Hugging Face layout
 * (config.json + model.safetensors, F32), for demos and tests where no pre-trained LLM is at
 * hand (ARCHITECTURE.md §7). The weights mean nothing; the shapes, names and config are real,
 * so the loader, the layer code and checksums exercise the same paths as for a real model.
 */
#include "lm_llm.h"

#include "cli/lm_rng.h"
#include "io/lm_atomic.h"
#include "io/lm_error.h"
#include "io/lm_safetensors.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static int put(lm_record *rec, const char *name, int64_t rows, int64_t cols, int norm,
               uint64_t seed, uint64_t stream)
{
    lm_tensor t;
    int64_t shape[2] = {rows, cols};
    if (lm_tensor_alloc(&t, name, LM_F32, cols ? 2 : 1, shape) < 0)
        return -1;
    lm_rng r;
    lm_rng_init(&r, seed, stream);
    float *v = t.data;
    for (int64_t i = 0; i < lm_tensor_numel(&t); i++)
        v[i] = norm ? 1.0f + 0.2f * (2 * lm_rng_uniformf(&r) - 1)
                    : 0.4f * (2 * lm_rng_uniformf(&r) - 1);
    return lm_record_put(rec, &t);
}

int lm_llm_write_random(const char *dir, const lm_llm_random_shape *s, uint64_t seed)
{
    char path[4096];
    lm_record rec;
    int rc = -1;
    const int D = s->hidden, F = s->ffn, nq = s->heads, nkv = s->kv_heads;
    if (D <= 0 || F <= 0 || nq <= 0 || nkv <= 0 || D % nq || nq % nkv || s->layers <= 0)
        return lm_error_set("random LLM: inconsistent shape (hidden %d, heads %d, kv %d)", D, nq,
                            nkv);
    const int hd = D / nq;
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return lm_error_set("%s: %s", dir, strerror(errno));
    lm_record_init(&rec);
    uint64_t stream = 0;
    int err = put(&rec, "model.embed_tokens.weight", s->vocab, D, 0, seed, stream++) < 0 ||
              put(&rec, "model.norm.weight", D, 0, 1, seed, stream++) < 0;
    for (int l = 0; l < s->layers && !err; l++) {
        char n[9][96];
        const char *suffix[9] = {"input_layernorm.weight", "post_attention_layernorm.weight",
                                 "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                 "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                                 "mlp.gate_proj.weight", "mlp.up_proj.weight",
                                 "mlp.down_proj.weight"};
        const int64_t rows[9] = {D, D, (int64_t)nq * hd, (int64_t)nkv * hd, (int64_t)nkv * hd, D,
                                 F, F, D};
        const int64_t cols[9] = {0, 0, D, D, D, (int64_t)nq * hd, D, D, F};
        for (int k = 0; k < 9 && !err; k++) {
            snprintf(n[k], sizeof n[k], "model.layers.%d.%s", l, suffix[k]);
            err = put(&rec, n[k], rows[k], cols[k], k < 2, seed, stream++) < 0;
        }
    }
    if (err || lm_record_meta_set(&rec, "format", "pt") < 0)
        goto done;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (lm_st_write_file(path, &rec) < 0) {
        lm_error_prefix("%s", path);
        goto done;
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *tmp = NULL;
    FILE *fp = lm_atomic_open(path, &tmp);
    if (!fp) {
        lm_error_prefix("%s", path);
        goto done;
    }
    fprintf(fp,
            "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", "
            "\"hidden_size\": %d, \"intermediate_size\": %d, \"num_hidden_layers\": %d, "
            "\"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"head_dim\": %d, "
            "\"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, \"hidden_act\": \"silu\", "
            "\"vocab_size\": %d, \"tie_word_embeddings\": true, \"torch_dtype\": \"float32\", "
            "\"llm_morph_random_seed\": %llu}\n",
            D, F, s->layers, nq, nkv, hd, s->vocab, (unsigned long long)seed);
    if (lm_atomic_commit(fp, tmp, path) < 0) {
        lm_error_prefix("%s", path);
        goto done;
    }
    rc = 0;
done:
    lm_record_free(&rec);
    return rc;
}
