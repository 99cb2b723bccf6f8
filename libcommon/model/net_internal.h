/* net_internal.h — the lm_net struct shared by net_*.c (not a public header). */
#ifndef LM_NET_INTERNAL_H
#define LM_NET_INTERNAL_H

#include "lm_kernels.h"
#include "model/lm_net.h"

#define NET_MAX_PARAMS 96

struct lm_net {
    lm_backend *be;
    lm_net_config c;
    lm_net_plan plan;
    int alias[LM_NET_MAX_ACT]; /* -1, or the plan index whose buffer this entry shares */
    float *act[LM_NET_MAX_ACT];
    float *grad[LM_NET_MAX_ACT];
    float *stat[LM_NET_MAX_ACT]; /* instance-norm mean [C] then rstd [C] of that output */
    float *scr[3];               /* scratch buffers */
    int64_t scr_cap[3];
    int np;
    lm_net_param p[NET_MAX_PARAMS];
    float *pending[NET_MAX_PARAMS]; /* host values of LoRA tensors awaiting the layers */
    int pending_init;               /* draw LoRA on attach (lm_net_init before attach) */
    uint64_t init_seed;
    lm_llm_layer *ly[2];
    int nly;
    char llm_sum[24];  /* of the attached layers */
    char ckpt_sum[24]; /* recorded by the checkpoint */
    /* images given at twice the grid (half configs) */
    int img_full;
    float *full_m, *full_f;
    /* loss state */
    int K;
    int32_t classes[LM_NET_MAX_CLASSES];
    uint8_t kept[LM_NET_MAX_CLASSES];
    int64_t nl; /* voxels of the evaluation grid */
    int64_t lgrid[3];
    float *oh_m, *oh_f, *oh_w, *scal; /* one-hot moving, fixed, warped; scalars [4] */
    int64_t oh_cap;
    int32_t *lab;
    int have_loss;
};

int net_act_index(const lm_net *n, const char *name);

#endif
