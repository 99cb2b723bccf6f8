/* lm_net.h — the LLM-Morph network (MODEL.md §1, §3–§9): model config, parameters under the
 * canonical names of §18, forward with the §17 boundary tensors kept, loss, backward to every
 * trainable tensor and both input images, seeded initialisation, checkpoints, and the stage
 * functions the programs lm-encode, lm-leb, lm-decode and lm-register are built from.
 *
 * Pieces (all through the kernel API, on any backend; nothing here touches buffer memory):
 *   net_config.c  the config (JSON in a checkpoint's lm.config), presets, the shape plan
 *   net_params.c  the parameter table, hash fill (tests/reference/NET_GOLDEN.md), PyTorch-style
 *                 seeded init, checkpoints (§18 names, lm.config, lm.llm, atomic)
 *   net_model.c   encoder, tokeniser, LEBs (Adapter0 + LLM layer + LoRA), decoder adapters,
 *                 restoration, stages S4..S1, loss; forward and backward
 *   net_stage.c   record in -> record out for each stage program, backend selection
 *
 * Variants (config "ablation"): "none" (variant T or F by "restore"), "no-leb" (Table 2: no
 * LEBs and adapters; F_j dropped from every stage), "one-leb" (only LEB1 with the first of
 * the layers), "no-lora" (rank 0), "vit" (Table 2 ablation 2, MODEL.md §15 row 33: in each
 * LEB the frozen LLM layer + LoRA is replaced by a trainable pre-LN ViT block of width
 * D = llm_hidden; Adapter0 stays):
 *     y = h + fc2(GELU(fc1(LN2(h)))),   h = x + proj(MHSA(LN1(x)))
 * with LayerNorm eps 1e-5 and elementwise affine (PyTorch nn.LayerNorm defaults; timm and
 * torchvision ViTs use 1e-6), MHSA over llm_heads heads (the LLM's head count: 32 at 4096)
 * of width D/llm_heads with one qkv Linear(D, 3D) with bias whose rows are q | k | v (heads
 * contiguous in each, as timm/nn.MultiheadAttention), scores q·kᵀ/√(D/heads), bidirectional,
 * no RoPE and no position embedding (a standard ViT block; the config holds rope false, mask
 * bidirectional, lora_rank 0, layers []), proj Linear(D, D), GELU in the exact erf form
 * (nn.GELU default), MLP width 4D. Tensors leb{1,2}.vit.{ln1,qkv,proj,ln2,fc1,fc2}.{weight,
 * bias} (§18); init as PyTorch's modules: Linears U(±1/√in) for weight and bias, LayerNorm
 * weight 1 and bias 0 (timm would draw trunc-normal(0.02) weights and zero biases). Position
 * embeddings belong to a ViT's patch embedding, not to its blocks, and the tokeniser here has
 * none: attention in these blocks is position-blind (each token still restores to its own
 * voxels). The LLM folder only gives D and the head count: no layer is loaded, the
 * checkpoint's lm.llm holds the folder's config.json and "layers": [] but no checksum, and
 * attaching an LLM folder to a vit net only checks its width and head count.
 *
 * Not here: the LLM layer itself (lm_llm.h), training loop and optimiser state (lm-train).
 */
#ifndef LM_NET_H
#define LM_NET_H

#include <stddef.h>
#include <stdint.h>

#include "io/lm_tensor.h"
#include "model/lm_llm.h"
#include "prep/lm_prep.h"

typedef struct lm_backend lm_backend;

/* ---- config ----------------------------------------------------------------------------------- */

enum { LM_NET_ABL_NONE = 0, LM_NET_ABL_NO_LEB, LM_NET_ABL_ONE_LEB, LM_NET_ABL_NO_LORA,
       LM_NET_ABL_VIT };
enum { LM_NET_RESTORE_TEXT = 0, LM_NET_RESTORE_FIGURE = 1 };
enum { LM_NET_COMBINE_COMPOSE = 0, LM_NET_COMBINE_ADD = 1 };

#define LM_NET_MAX_CLASSES 256

typedef struct {
    int64_t shape[3];     /* network grid D,H,W (each a multiple of 16) */
    int half;             /* images and labels at 2x the grid; flow_full = 2·up(flow) */
    char llm[1024];       /* the LLM folder given at init (informational: stages take --llm) */
    int n_layers;         /* LLM layers: 2, or 1 for one-leb, 0 for no-leb and vit */
    int layers[2];        /* LLM layer ids of LEB1, LEB2 */
    int llm_hidden;       /* D of the LLM; q/kv output widths for the LoRA B shapes */
    int llm_q_dim, llm_kv_dim;
    int llm_heads;        /* the LLM's attention heads (the ViT blocks' head count); 0 unknown */
    int a0_hidden;        /* Adapter0 inner width (default D) */
    int lora_rank;        /* 0 = no LoRA */
    double lora_alpha;
    int causal, rope;
    int restore, combine, ablation;
    int enc[5];           /* encoder channels (8,16,16,32,32) */
    double lambda;        /* Grad_L2 weight (0.1) */
    int n_classes;        /* label values for the loss, 0 when not fixed by the config */
    int32_t classes[LM_NET_MAX_CLASSES];
    uint8_t kept[LM_NET_MAX_CLASSES]; /* 1 = enters the Dice mean */
} lm_net_config;

/* Defaults of MODEL.md (variant T, rank 64, alpha 64, bidirectional, RoPE, compose, λ 0.1) with
 * the given grid; LLM fields zero. */
void lm_net_config_default(lm_net_config *c);
/* "abdomen" (96×80×96 half, labels 0..4 kept 1..4), "srreg" (176×208×192), "tiny" (32³, rank 4,
 * alpha 8, labels 0..3 kept 1..3). -1 for an unknown name. */
int lm_net_config_preset(lm_net_config *c, const char *name);
/* Parses JSON over the defaults (unknown keys are an error, so are bad values). */
int lm_net_config_parse(lm_net_config *c, const char *json);
/* JSON of the config (malloc'ed). */
char *lm_net_config_json(const lm_net_config *c);
/* Fills the LLM fields from an opened model: widths, and layers when n_layers is 0 for a
 * variant that needs them (the two middle ones; one for one-leb). Checks layer ids and that
 * the LoRA/RoPE choices are usable. */
int lm_net_config_set_llm(lm_net_config *c, const lm_llm *m, const int *layers, int n);
/* Consistency: grid multiple of 16, widths, implemented variant. */
int lm_net_config_check(const lm_net_config *c);
/* 1 when the config has the LEB path (Adapter0s, LEB blocks, decoder adapters) and takes its
 * widths from an LLM folder: every variant but no-leb. */
int lm_net_uses_llm(const lm_net_config *c);
/* 1 when frozen LLM layers are attached and run (not no-leb, not vit). */
int lm_net_uses_llm_layers(const lm_net_config *c);
/* Number of LEBs: 2, 1 for one-leb, 0 for no-leb. */
int lm_net_lebs(const lm_net_config *c);
int64_t lm_net_tokens(const lm_net_config *c); /* L = (D/16)(H/16)(W/16) */

/* ---- shape plan: every activation of the forward, by name ------------------------------------- */

#define LM_NET_MAX_ACT 128
typedef struct {
    char name[24];
    int ndim;
    int64_t shape[5]; /* PyTorch shapes: volumes [1,C,D,H,W], tokens [1,L,C] */
    int64_t numel;
} lm_net_act_info;

typedef struct {
    int n;
    lm_net_act_info a[LM_NET_MAX_ACT];
} lm_net_plan;

/* The activations of the forward of config c (names below), without allocating anything:
 *   moving fixed moving2 fm1..fm5 ff1..ff5 x0 leb1.* leb1 leb2.* t a4..a1 f4..f1 x4 s4.c s4
 *   s4.up x3 s3.c s3 phi3 phi3.up warp2 s3.up x2 s2.c s2 r2 psi2 psi2.up warp1 s2.up x1 s1.c
 *   s1 r1 phi [phi_full]
 * (vit: leb<k>.ln1 .q .k .v .p [1,heads,L,L] .o .h .ln2 .m .g of the ViT block, before leb<k>)
 * (MODEL.md §7.1: x4 = X4, s4 = F'4, phi3.up = φ̂3, warp2 = I_m²', psi2.up = ψ̂2, ...). */
int lm_net_plan_make(lm_net_plan *p, const lm_net_config *c);
const lm_net_act_info *lm_net_plan_get(const lm_net_plan *p, const char *name);

/* ---- the network ------------------------------------------------------------------------------ */

typedef struct {
    char name[48];    /* MODEL.md §18 */
    int ndim;
    int64_t shape[5]; /* PyTorch shape */
    int64_t numel;
    int64_t fan_in;   /* for the PyTorch init bound 1/√fan_in */
    int kind;         /* LM_NET_P_* */
    float *value, *grad; /* backend buffers (LoRA: the layer's; NULL until the LLM is attached) */
} lm_net_param;

enum { LM_NET_P_WEIGHT = 0, LM_NET_P_BIAS, LM_NET_P_HEAD_W, LM_NET_P_HEAD_B, LM_NET_P_LORA_A,
       LM_NET_P_LORA_B, LM_NET_P_LN_W, LM_NET_P_LN_B };

typedef struct lm_net lm_net;

/* Allocates the trainable tensors (zeroed) and the activations of the plan. The LLM layers
 * are attached separately (only lm-leb, lm-register and training need them). */
int lm_net_create(lm_net **out, lm_backend *be, const lm_net_config *c);
void lm_net_free(lm_net *n); /* accepts NULL */
const lm_net_config *lm_net_get_config(const lm_net *n);
const lm_net_plan *lm_net_get_plan(const lm_net *n);

/* Loads the config's layers from m (BF16 stays BF16 unless wdtype says otherwise) with the
 * config's LoRA/mask/RoPE options. With expect_checksum (a "xxh64:..." string, or NULL), a
 * different checksum of the layers is an error. Pending LoRA values (from a checkpoint) are
 * uploaded into the layers. No-leb: nothing. Vit: no layer is loaded; m's width and head count
 * must be the config's (expect_checksum is ignored: a vit checkpoint records none). */
int lm_net_attach_llm(lm_net *n, lm_llm *m, lm_dtype wdtype, const char *expect_checksum);
/* Attaches already created layers (tests): n->layers take ownership. */
int lm_net_attach_layers(lm_net *n, lm_llm_layer **layers, int count);
int lm_net_has_llm(const lm_net *n);
/* "xxh64:..." of the attached layers (combined). */
const char *lm_net_llm_checksum(const lm_net *n);

/* The parameter table of config c (names, shapes, kinds; no buffers), without allocating:
 * returns the count, or -1 when cap is too small or the config is bad. */
int lm_net_params_plan(const lm_net_config *c, lm_net_param *out, int cap);

/* Parameters in §18 order (the order of NET_GOLDEN.md). */
int lm_net_param_count(const lm_net *n);
lm_net_param *lm_net_param_at(lm_net *n, int i);
lm_net_param *lm_net_param_find(lm_net *n, const char *name);
int lm_net_zero_grad(lm_net *n);

/* PyTorch-default init (MODEL.md §3, §5.5, §7): conv/linear U(±1/√fan_in) for weights and
 * biases (the vit blocks' Linears too: nn.Linear's kaiming_uniform(a=√5) and bias bound),
 * LayerNorm weight 1 and bias 0 (nn.LayerNorm), heads N(0, 1e-5²) weights and zero bias,
 * LoRA A U(±1/√D), B = 0. Tensor t (in §18
 * order) draws from Philox stream t of seed (row-major); LoRA of LEB k through
 * lm_llm_layer_lora_init(seed, 1<<32 | 16k). Needs the LLM attached when LoRA is on, else the
 * LoRA tensors stay pending and are drawn on attach. */
int lm_net_init(lm_net *n, uint64_t seed);
/* The hash fill of tests/reference/NET_GOLDEN.md (needs the LLM attached for LoRA); vit
 * LayerNorm weights are 1 + hash (bound 0.25), their biases hash (bound 0.1). */
int lm_net_fill_hash(lm_net *n);
/* One element of the NET_GOLDEN.md hash: tensor t, element j, bound b. */
float lm_net_hash_value(uint64_t t, uint64_t j, float b);

/* ---- forward, loss, backward ------------------------------------------------------------------ */

/* Activation buffer (backend memory) of a plan name, or NULL. */
float *lm_net_act(lm_net *n, const char *name);
/* Its gradient buffer after lm_net_backward (NULL before). */
float *lm_net_act_grad(lm_net *n, const char *name);

/* Images from host memory: shape D,H,W either the network grid or, for a half config, twice
 * the grid (then 2×2×2 average pooled, and lm_net_backward gives the gradient at that size). */
int lm_net_set_images(lm_net *n, const float *moving, const float *fixed, const int64_t dhw[3]);

/* The three stages of the pipeline (each reads the activations the previous one wrote). */
int lm_net_encode(lm_net *n);  /* moving, fixed -> fm1..fm5, ff1..ff5 */
int lm_net_leb(lm_net *n);     /* fm5, ff5 -> x0 -> LEB1 -> LEB2 -> t (needs the LLM) */
int lm_net_decode(lm_net *n);  /* t, fm1..4, ff1..4, moving -> phi (and phi_full) */
int lm_net_forward(lm_net *n); /* all three */

typedef struct {
    double loss, dice, grad_l2; /* loss = -dice + lambda·grad_l2 */
} lm_net_loss_value;

/* Loss of MODEL.md §9 on host label maps (I32) at the evaluation grid (full resolution for a
 * half config): classes/kept from the config unless K > 0 here. */
int lm_net_loss(lm_net *n, lm_net_loss_value *out, const int32_t *moving_seg,
                const int32_t *fixed_seg, int K, const int32_t *classes, const uint8_t *kept);
/* After lm_net_loss: gradients of the loss (+=, call lm_net_zero_grad first) of every
 * parameter, and of the input images (lm_net_image_grad). */
int lm_net_backward(lm_net *n);
/* Gradient of the loss w.r.t. the images as given to lm_net_set_images (host, numel of that
 * shape). */
int lm_net_image_grad(lm_net *n, float *dmoving, float *dfixed);

/* ---- checkpoints ------------------------------------------------------------------------------ */

/* Writes every trainable tensor (F32, §18 names, PyTorch shapes) with metadata lm.config,
 * lm.llm (LLM config.json, layer ids, checksum), lm.step, lm.seed, lm.history; atomically and
 * durably. llm_config_json may be NULL when the network has no LLM. */
int lm_net_save(lm_net *n, const char *path, const char *llm_config_json, long step,
                uint64_t seed, const char *history);
/* Opens a checkpoint: config from lm.config, tensors by name (shape-checked; LoRA kept pending
 * until lm_net_attach_llm, which compares the checksum of lm.llm). */
int lm_net_load(lm_net **out, lm_backend *be, const char *path);
/* The lm.llm checksum recorded by the checkpoint the net was loaded from ("" if none). */
const char *lm_net_ckpt_llm_checksum(const lm_net *n);

/* ---- stages on records (the programs) ----------------------------------------------------------- */

/* Each reads its tensors from rec, runs, and puts its outputs into rec (replacing tensors of
 * the same names); everything else stays. */
int lm_net_stage_encode(lm_net *n, lm_record *rec);   /* moving, fixed -> fm1..5, ff1..5 */
int lm_net_stage_leb(lm_net *n, lm_record *rec);      /* fm5, ff5 -> tokens */
int lm_net_stage_decode(lm_net *n, lm_record *rec);   /* tokens, fm1..4, ff1..4, moving -> flow */
int lm_net_stage_register(lm_net *n, lm_record *rec); /* moving, fixed -> flow (all in one) */

typedef int (*lm_net_stage_fn)(lm_net *n, lm_record *rec);
/* The whole main() of a stage program: options (-w, --llm when with_llm, -o, -f, --device,
 * --threads, -q, -v, -h, -V), weights and LLM loaded once, every record through `stage`.
 * Exits with the program's status on errors. */
int lm_net_tool_main(int argc, char **argv, const char *synopsis, const char *summary,
                     lm_net_stage_fn stage, const char *what, int with_llm);
/* lm-register's own loops (net_register.c). lm_net_prep_defaults: the preprocessing a
 * checkpoint needs — half from the config (a --half the config does not have is an error) and,
 * when no --shape/--like/--crop-pad was given, the config's full grid over the fixed image's
 * field of view. lm_net_register_pairs: every pair read and preprocessed as lm-preprocess does,
 * registered (lm_net_stage_register), the command in the history, written to the stream `out`
 * (NULL: stdout; a file appears only when every pair succeeded), or, when wo is not NULL
 * (lm_warp_out_open(..., LM_WARP_OUT_STAGED), warp/lm_warp.h), warped as lm-warp does on the
 * CPU backend (one-hot labels with labels_linear) and written to wo's NIfTI files, which
 * appear only when every pair succeeded; *count = pairs done. lm_net_register_warp: the same
 * for the records of the stream `in` ("-" or NULL: stdin) to wo's NIfTI files, a second record
 * refused before the network runs when wo takes one (errors "INPUT: record N: reason").
 * Both commit or abort wo. */
struct lm_warp_out;
int lm_net_prep_defaults(const lm_net *n, lm_prep_opts *po);
int lm_net_register_pairs(lm_net *n, const lm_prep_opts *po, const lm_prep_pair *pairs,
                          int npairs, const char *out, int wflags, struct lm_warp_out *wo,
                          int labels_linear, int argc, char **argv, long *count);
int lm_net_register_warp(lm_net *n, const char *in, struct lm_warp_out *wo, int labels_linear,
                         long *count);
/* The loop of a stage program: every record of the stream `in` ("-" or NULL: stdin) through
 * stage (one of the four above), the tensors it consumes dropped unless `keep` (lm-leb: fm5,
 * ff5; lm-decode: tokens, fm1..4, ff1..4; images, labels and the rest always pass), history
 * appended, written to `out` (NULL: stdout; a file appears only on success). Progress on
 * stderr. 0, or -1 with lm_error "INPUT: record N: reason". */
int lm_net_stream(lm_net *n, lm_net_stage_fn stage, const char *in, const char *out, int wflags,
                  int keep, int argc, char **argv, const char *what, long *count);

/* --device spec (NULL: $LM_DEVICE or the default) -> a backend. */
lm_backend *lm_net_backend_open(const char *spec);
void lm_net_backend_close(lm_backend *be);

#endif
