/* lm_llm.h — pre-trained LLM decoder layers from Hugging Face folders, run as one block of the
 * network (MODEL.md §5.2–§5.7): loading, LoRA on q/k/v, forward and backward.
 *
 * Loading (llm_load.c): a folder with config.json and model.safetensors, or shards listed in
 * model.safetensors.index.json ("weight_map"). Only the tensors of the requested layers are
 * read (pread of their bytes). Architectures: model_type llama, mistral, qwen2 (q/k/v biases)
 * and phi3 (fused qkv_proj and gate_up_proj, split here into q/k/v and gate/up). BF16, F16 and
 * F32 on disk; matrices are kept as BF16 or F32 (what the GEMM op takes), norm weights and
 * biases as F32. Every layer gets a 64-bit checksum (XXH64) of its tensors as stored on disk
 * (names, dtypes, shapes, bytes), which checkpoints record to refuse a different LLM.
 *
 * The layer (llm_layer.c), HF LlamaDecoderLayer semantics with x, y [L, D] token-major f32:
 *     a  = RMSNorm(x; input_layernorm)
 *     q  = a Wqᵀ + bq + s·(a Aqᵀ) Bqᵀ        (k, v alike; s = alpha / r; no LoRA when r = 0)
 *     q, k <- RoPE(q, k; positions 0..L-1, rotate_half, rope_theta)      (unless rope = 0)
 *     o  = softmax(q kᵀ/√hd [+ causal mask]) v  per head, GQA (kv head h / (n_q/n_kv))
 *     h1 = x + o Woᵀ (+ bo)
 *     y  = h1 + (silu(b Wgᵀ) ⊙ (b Wuᵀ)) Wdᵀ,  b = RMSNorm(h1; post_attention_layernorm)
 * The frozen weights get no gradient; the backward gives dx and the LoRA gradients dA, dB.
 * Everything runs through the kernel API (lm_kernels.h) on any backend.
 *
 * Not here: the Adapter0 MLP and the rest of the network, checkpoints, the embedding and the
 * final norm/classifier of a language model (the test builds those from lm_llm_read_extra).
 * Not supported: rope_scaling (Llama-3.1 "llama3", Phi-3 LongRoPE "su"/"longrope", ...): the
 * layer refuses to apply RoPE then (rope = 0 still works); hidden_act other than silu; sliding
 * window attention (irrelevant for the bidirectional default and L <= 4096).
 */
#ifndef LM_LLM_H
#define LM_LLM_H

#include <stddef.h>
#include <stdint.h>

#include "io/lm_safetensors.h"
#include "io/lm_tensor.h"

typedef struct lm_backend lm_backend;

/* ---- config.json ---------------------------------------------------------------------------- */

typedef enum { LM_LLM_LLAMA = 0, LM_LLM_MISTRAL, LM_LLM_QWEN2, LM_LLM_PHI3 } lm_llm_arch;

typedef struct {
    lm_llm_arch arch;
    char model_type[32];   /* as written in config.json */
    int hidden;            /* hidden_size D */
    int intermediate;      /* intermediate_size F */
    int n_layers;          /* num_hidden_layers */
    int n_heads;           /* num_attention_heads */
    int n_kv_heads;        /* num_key_value_heads (default n_heads) */
    int head_dim;          /* head_dim (default hidden / n_heads) */
    int vocab;             /* vocab_size (0 if absent) */
    double rms_eps;        /* rms_norm_eps (default 1e-6, as HF) */
    double rope_theta;     /* rope_theta (default 10000) */
    double rope_partial;   /* partial_rotary_factor (1 = all of head_dim rotates) */
    char rope_scaling[32]; /* "" when null/absent/"default", else its "type"/"rope_type" */
    int tie_embeddings;    /* tie_word_embeddings (default 0, as HF) */
    int qkv_bias;          /* qwen2 always; llama/mistral attention_bias */
    int o_bias;            /* llama attention_bias */
    int mlp_bias;          /* llama mlp_bias */
} lm_llm_config;

/* Parses config.json text. Errors: bad JSON, unsupported model_type, hidden_act not silu,
 * missing or inconsistent sizes. */
int lm_llm_config_parse(lm_llm_config *c, const char *json);
const char *lm_llm_arch_name(lm_llm_arch a); /* "llama", "mistral", "qwen2", "phi3" */

/* The two middle layers (MODEL.md §5.7): n/2 - 1 and n/2 (15, 16 of 32; 13, 14 of 28). */
void lm_llm_default_layers(const lm_llm_config *c, int out[2]);
/* "15,16" -> out (strict integers, comma-separated, each in [0, n_layers), at most cap); returns
 * the count or -1 ("layer 40 not in model (32 layers)"). */
int lm_llm_layers_parse(const char *s, const lm_llm_config *c, int *out, int cap);

/* ---- a model folder ------------------------------------------------------------------------- */

typedef struct {
    char *dir;
    char *config_json; /* config.json as read (for checkpoint metadata) */
    lm_llm_config cfg;
    char *prefix; /* what precedes "layers.N." in tensor names, usually "model." */
    int n_names;
    char **names;    /* every tensor name of the model */
    int *name_shard; /* names[i] lives in shards[name_shard[i]] */
    int n_shards;
    char **shard_paths;
    lm_st_file *shards; /* opened on first use */
    unsigned char *shard_open;
} lm_llm;

/* Opens dir: reads config.json and the index (or the single file's header). Errors name the
 * file: "DIR/config.json: No such file or directory", "... unsupported model_type 'gpt2'". */
int lm_llm_open(lm_llm *m, const char *dir);
void lm_llm_close(lm_llm *m); /* accepts a zeroed or closed struct */

/* Linear layers of a decoder layer, in this order everywhere. */
enum {
    LM_LLM_Q = 0,
    LM_LLM_K,
    LM_LLM_V,
    LM_LLM_O,
    LM_LLM_GATE,
    LM_LLM_UP,
    LM_LLM_DOWN,
    LM_LLM_NLIN
};

/* Pass as wdtype: keep BF16 as BF16 and F32 as F32, F16 -> F32 (exact). */
#define LM_LLM_WDTYPE_AUTO LM_DTYPE_COUNT

/* One layer's frozen tensors on the host. */
typedef struct {
    int layer;
    lm_dtype wdtype;          /* of every w[] */
    lm_tensor w[LM_LLM_NLIN]; /* [out, in] (PyTorch Linear layout) */
    lm_tensor b[LM_LLM_NLIN]; /* F32 [out]; data NULL where the model has no bias */
    lm_tensor ln_in, ln_post; /* F32 [D] */
    uint64_t checksum;        /* XXH64 of the tensors as read from disk */
} lm_llm_weights;

/* Reads layer `layer` (only its tensors) and converts to wdtype (LM_F32, LM_BF16 or
 * LM_LLM_WDTYPE_AUTO). Shapes are checked against the config ("shape mismatch"). */
int lm_llm_load_layer(lm_llm_weights *w, lm_llm *m, int layer, lm_dtype wdtype);
void lm_llm_weights_free(lm_llm_weights *w);

enum { LM_LLM_EMBED = 0, LM_LLM_NORM, LM_LLM_LM_HEAD };
/* The token embedding [vocab, D], the final norm [D] or the classifier [vocab, D] (the
 * embedding when tie_word_embeddings and no lm_head.weight), converted to dt (F32/BF16). */
int lm_llm_read_extra(lm_llm *m, int which, lm_dtype dt, lm_tensor *out);

/* ---- checksums -------------------------------------------------------------------------- */
uint64_t lm_xxh64(const void *data, size_t len, uint64_t seed);
/* The checksum of several layers (order matters), e.g. the two LEB layers. */
uint64_t lm_llm_checksum_combine(const uint64_t *sums, int n);
/* "xxh64:0123456789abcdef" (23 bytes with the NUL). */
void lm_llm_checksum_str(char out[24], uint64_t sum);

/* ---- the layer on a backend ---------------------------------------------------------------- */

typedef struct {
    int rank;    /* LoRA r on q, k, v; 0 = no LoRA (Table 2 "w/o LoRA") */
    float alpha; /* s = alpha / rank (MODEL.md §5.5: alpha = r, s = 1) */
    int causal;  /* 0: bidirectional (default, MODEL.md §5.4); 1: causal */
    int rope;    /* 1: RoPE on (default); 0: none (LM4V style) */
} lm_llm_layer_opts;

/* rank 64, alpha 64, bidirectional, RoPE on. */
lm_llm_layer_opts lm_llm_layer_opts_default(void);

typedef struct lm_llm_layer lm_llm_layer;

/* A trainable tensor of the layer: backend buffers for its value and its gradient. */
typedef struct {
    const char *name; /* "lora_q.A", "lora_q.B", ... (prefix with "leb1." for MODEL.md §18) */
    int ndim;
    int64_t shape[2]; /* A [r, D]; B [out, r] */
    int64_t numel;
    float *value, *grad;
} lm_llm_param;

/* Uploads w's tensors to be (w may be freed afterwards). LoRA A and B start at 0; call
 * lm_llm_layer_lora_init for the seeded start. Fails for rope = 1 with a rope_scaling config. */
int lm_llm_layer_create(lm_llm_layer **out, lm_backend *be, const lm_llm_config *c,
                        const lm_llm_weights *w, const lm_llm_layer_opts *o);
void lm_llm_layer_free(lm_llm_layer *ly); /* accepts NULL */
/* lm_llm_load_layer + lm_llm_layer_create, without keeping the host copy. */
int lm_llm_layer_load(lm_llm_layer **out, lm_backend *be, lm_llm *m, int layer, lm_dtype wdtype,
                      const lm_llm_layer_opts *o);

/* The PEFT start (MODEL.md §5.5): A ~ U(-1/√D, 1/√D) (kaiming_uniform a=√5 on [r, D]), B = 0.
 * A_q, A_k, A_v draw from Philox streams stream, stream+1, stream+2 of seed, row-major order,
 * value = -b + 2b·u with u = lm_rng_uniform. */
int lm_llm_layer_lora_init(lm_llm_layer *ly, uint64_t seed, uint64_t stream);
/* The trainable tensors (6 with LoRA, 0 without) in the order q.A, q.B, k.A, k.B, v.A, v.B. */
int lm_llm_layer_params(lm_llm_layer *ly, lm_llm_param *out, int cap);
int lm_llm_layer_zero_grad(lm_llm_layer *ly);

/* Allocates the activations for sequences up to L (done on demand by fwd; call it up front to
 * fail early, e.g. for L = 1716). */
int lm_llm_layer_reserve(lm_llm_layer *ly, int64_t L);
/* y [L, D] = layer(x [L, D]) (=); y may alias x. Keeps the activations for lm_llm_layer_bwd. */
int lm_llm_layer_fwd(lm_llm_layer *ly, float *y, const float *x, int64_t L);
/* After fwd: dx [L, D] += ∂/∂x (dx may be NULL, may not alias dy); LoRA grads += ∂/∂A, ∂/∂B.
 * dy [L, D]. Frozen weights get no gradient. */
int lm_llm_layer_bwd(lm_llm_layer *ly, float *dx, const float *dy);

/* Sizes of the layer (for callers that build around it). */
int lm_llm_layer_width(const lm_llm_layer *ly); /* D */
uint64_t lm_llm_layer_checksum(const lm_llm_layer *ly);
int lm_llm_layer_index(const lm_llm_layer *ly);

/* A seeded random LLaMA-architecture folder (config.json + model.safetensors, F32): real shapes
 * and names, meaningless weights, for demos and tests without a pre-trained model. */
typedef struct {
    int hidden, ffn, layers, heads, kv_heads, vocab;
} lm_llm_random_shape;
int lm_llm_write_random(const char *dir, const lm_llm_random_shape *s, uint64_t seed);

#endif
