/* bench_net.c — the C side of the network benchmarks against PyTorch (net_torch.py, run in the
 * same job on the same machine): time per pair of the whole network with two LLaMA-3-shaped
 * random layers (D 4096, FFN 14336, 32 heads, 8 KV heads) built in memory (no 1.7 GB model
 * folder on disk), LoRA rank 64 as the presets say, at either paper config:
 *   abdomen  192×160×192 images, half -> 96×80×96 network input, L = 180, phi_full, K = 5;
 *   srreg    176×208×192 images at the network grid, L = 1716, K = 33 (SynthSeg values 0..32,
 *            {0, 5, 24} ignored, MODEL.md §2.1).
 * Modes (both may be given: the forward is timed first, then the step, in one process):
 *   --forward  lm_net_set_images + lm_net_forward (encoder, both LEBs, decoder, phi_full);
 *   --train    one training step: images and label maps from the host, forward, the loss
 *              (MODEL.md §9), zero_grad, backward, and Adam (lr 1e-4, betas 0.9/0.999, eps
 *              1e-8) over every trainable tensor (moments on the backend).
 * On --device cpu (default) the LLM weights are F32 (as bench-net.sh has always compared them
 * with PyTorch's float32); on cuda they are BF16 (the production path: bf16 LLM GEMMs with FP32
 * accumulation, f32 elsewhere), --llm-dtype f32|bf16 overrides. Prints one line per mode
 *   MODE BEST_S MEDIAN_S REPS THREADS PEAK_RSS_KB [GPU_MEM_MB]
 * (THREADS 0 and the device memory in use at the end, all of its users, on cuda).
 * Without --forward or --train (as run-bench.sh calls every bench_* program) it only says where
 * it is used and exits 0, so `make bench` runs it once, from bench-net.sh; tests/gpu-check.sh
 * runs it on the GPU.
 * Usage: bench_net --forward|--train [--device cpu|cuda[:N]] [--config abdomen|srreg]
 *        [--threads N] [--reps N] [--quick] [--llm-dtype f32|bf16]
 *        [--width D --ffn F --heads H --kv K]
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "cli/lm_rng.h"
#include "io/lm_error.h"
#include "lm_kernels.h"
#include "model/lm_net.h"

#if LM_HAVE_CUDA
#include "cuda/lm_cuda.h"
#endif

static void die(const char *what)
{
    fprintf(stderr, "bench_net: %s: %s\n", what, lm_error());
    exit(1);
}

static int fill(lm_tensor *t, const char *name, int64_t rows, int64_t cols, int norm,
                uint64_t stream)
{
    int64_t shape[2] = {rows, cols};
    if (lm_tensor_alloc(t, name, LM_F32, cols ? 2 : 1, shape) < 0)
        return -1;
    float *v = t->data;
    int64_t n = lm_tensor_numel(t);
    float b = cols ? (float)(1.0 / sqrt((double)cols)) : 0.1f; /* PyTorch Linear-like scale */
#pragma omp parallel
    {
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        int64_t lo = n * id / nt, hi = n * (id + 1) / nt;
        lm_rng r;
        lm_rng_init(&r, 7 + stream, (uint64_t)id);
        for (int64_t i = lo; i < hi; i++)
            v[i] = norm ? 1.0f + b * (2 * lm_rng_uniformf(&r) - 1)
                        : b * (2 * lm_rng_uniformf(&r) - 1);
    }
    return 0;
}

/* a matrix as fill() makes it, converted to wdt (F32 stays) */
static int fill_w(lm_tensor *t, int64_t rows, int64_t cols, uint64_t stream, lm_dtype wdt)
{
    if (fill(t, "w", rows, cols, 0, stream) < 0)
        return -1;
    if (wdt == LM_F32)
        return 0;
    lm_tensor c;
    int rc = lm_tensor_convert(&c, t, wdt);
    lm_tensor_free(t);
    *t = c;
    return rc;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int forward = 0, train = 0, threads = 0, reps = 3, D = 4096, F = 14336, H = 32, KV = 8;
    const char *device = "cpu", *config = "abdomen", *ldt = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--forward"))
            forward = 1;
        else if (!strcmp(a, "--train"))
            train = 1;
        else if (!strcmp(a, "--threads") && v)
            threads = atoi(argv[++i]);
        else if (!strcmp(a, "--reps") && v)
            reps = atoi(argv[++i]);
        else if (!strcmp(a, "--device") && v)
            device = argv[++i];
        else if (!strcmp(a, "--config") && v)
            config = argv[++i];
        else if (!strcmp(a, "--llm-dtype") && v)
            ldt = argv[++i];
        else if (!strcmp(a, "--width") && v)
            D = atoi(argv[++i]);
        else if (!strcmp(a, "--ffn") && v)
            F = atoi(argv[++i]);
        else if (!strcmp(a, "--heads") && v)
            H = atoi(argv[++i]);
        else if (!strcmp(a, "--kv") && v)
            KV = atoi(argv[++i]);
        else if (!strcmp(a, "--quick"))
            reps = 1;
    }
    if (!forward && !train) {
        printf("bench_net: the C side of bench-net.sh and tests/gpu-check.sh (network forward and "
               "training step vs PyTorch); run there\n");
        return 0;
    }
    if (reps < 1 || reps > 31 || D <= 0 || F <= 0 || H <= 0 || KV <= 0 ||
        D % H || H % KV || (strcmp(config, "abdomen") && strcmp(config, "srreg")) ||
        (ldt && strcmp(ldt, "f32") && strcmp(ldt, "bf16"))) {
        fprintf(stderr, "bench_net: bad arguments\n");
        return 2;
    }
    lm_backend *be = lm_net_backend_open(device);
    if (!be)
        die(device);
    const int gpu = be->kind != LM_BACKEND_CPU;
    const lm_dtype wdt = ldt ? (strcmp(ldt, "bf16") ? LM_F32 : LM_BF16) : gpu ? LM_BF16 : LM_F32;
    if (threads > 0) {
        lm_backend_set_threads(be, threads);
        omp_set_num_threads(threads);
    }
    /* the LLM config the layers claim (LLaMA-3: theta 5e5, eps 1e-5) */
    char json[512];
    snprintf(json, sizeof json,
             "{\"model_type\": \"llama\", \"architectures\": [\"LlamaForCausalLM\"], "
             "\"hidden_size\": %d, \"intermediate_size\": %d, \"num_hidden_layers\": 2, "
             "\"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"vocab_size\": 256, "
             "\"rms_norm_eps\": 1e-5, \"rope_theta\": 500000.0, \"hidden_act\": \"silu\"}",
             D, F, H, KV);
    lm_llm m;
    memset(&m, 0, sizeof m);
    m.dir = "(in memory)";
    if (lm_llm_config_parse(&m.cfg, json) < 0)
        die("LLM config");
    lm_net_config c;
    if (lm_net_config_preset(&c, config) < 0)
        die("preset");
    int ids[2] = {0, 1};
    if (lm_net_config_set_llm(&c, &m, ids, 2) < 0 || lm_net_config_check(&c) < 0)
        die("config");
    lm_net *n = NULL;
    if (lm_net_create(&n, be, &c) < 0)
        die("lm_net_create");
    lm_llm_layer_opts o = lm_llm_layer_opts_default();
    o.rank = c.lora_rank;
    o.alpha = (float)c.lora_alpha;
    o.causal = c.causal;
    o.rope = c.rope;
    lm_llm_layer *ly[2] = {NULL, NULL};
    const int hd = D / H;
    const int64_t rows[LM_LLM_NLIN] = {D, (int64_t)KV * hd, (int64_t)KV * hd, D, F, F, D};
    const int64_t cols[LM_LLM_NLIN] = {D, D, D, (int64_t)H * hd, D, D, F};
    for (int k = 0; k < 2; k++) { /* one host copy at a time, freed after the upload */
        lm_llm_weights w;
        memset(&w, 0, sizeof w);
        w.layer = k;
        w.wdtype = wdt;
        uint64_t s = 100 * (uint64_t)k;
        for (int j = 0; j < LM_LLM_NLIN; j++)
            if (fill_w(&w.w[j], rows[j], cols[j], s + (uint64_t)j, wdt) < 0)
                die("out of memory");
        if (fill(&w.ln_in, "ln_in", D, 0, 1, s + 10) < 0 ||
            fill(&w.ln_post, "ln_post", D, 0, 1, s + 11) < 0)
            die("out of memory");
        w.checksum = 1 + (uint64_t)k;
        if (lm_llm_layer_create(&ly[k], be, &m.cfg, &w, &o) < 0)
            die("lm_llm_layer_create");
        lm_llm_weights_free(&w);
    }
    if (lm_net_attach_layers(n, ly, 2) < 0)
        die("lm_net_attach_layers");
    if (lm_net_init(n, 1) < 0)
        die("lm_net_init");
    /* images at the evaluation grid (twice the network grid for a half config) */
    const int64_t f2 = c.half ? 2 : 1;
    int64_t dhw[3] = {f2 * c.shape[0], f2 * c.shape[1], f2 * c.shape[2]};
    int64_t nv = dhw[0] * dhw[1] * dhw[2];
    float *mov = malloc((size_t)nv * sizeof *mov), *fix = malloc((size_t)nv * sizeof *fix);
    if (!mov || !fix)
        die("out of memory");
    lm_rng r;
    lm_rng_init(&r, 3, 0);
    for (int64_t i = 0; i < nv; i++) {
        mov[i] = lm_rng_uniformf(&r);
        fix[i] = lm_rng_uniformf(&r);
    }
    /* training: label maps of K classes (blocks of 16 voxels), the moments of Adam */
    int K = c.n_classes;
    int32_t classes[LM_NET_MAX_CLASSES];
    uint8_t kept[LM_NET_MAX_CLASSES];
    if (!K) { /* srreg: SynthSeg's 33 values as 0..32, {0, 5, 24} ignored */
        K = 33;
        for (int k = 0; k < K; k++) {
            classes[k] = k;
            kept[k] = k != 0 && k != 5 && k != 24;
        }
    } else {
        memcpy(classes, c.classes, (size_t)K * sizeof *classes);
        memcpy(kept, c.kept, (size_t)K);
    }
    int32_t *ms = NULL, *fs = NULL;
    int np = lm_net_param_count(n);
    float **am = NULL, **av = NULL;
    if (train) {
        ms = malloc((size_t)nv * sizeof *ms);
        fs = malloc((size_t)nv * sizeof *fs);
        am = calloc((size_t)np, sizeof *am);
        av = calloc((size_t)np, sizeof *av);
        if (!ms || !fs || !am || !av)
            die("out of memory");
        for (int64_t i = 0; i < dhw[0]; i++)
            for (int64_t j = 0; j < dhw[1]; j++)
                for (int64_t k = 0; k < dhw[2]; k++) {
                    int64_t x = (i * dhw[1] + j) * dhw[2] + k;
                    fs[x] = (int32_t)(((i / 16) + 2 * (j / 16) + 3 * (k / 16)) % K);
                    ms[x] = (int32_t)((((i + 3) / 16) + 2 * ((j + 2) / 16) + 3 * (k / 16)) % K);
                }
        for (int i = 0; i < np; i++) {
            lm_net_param *p = lm_net_param_at(n, i);
            am[i] = lm_backend_alloc(be, (size_t)p->numel * sizeof(float));
            av[i] = lm_backend_alloc(be, (size_t)p->numel * sizeof(float));
            if (!am[i] || !av[i] || LM_OP_CALL(be, fill, am[i], 0.0f, p->numel) < 0 ||
                LM_OP_CALL(be, fill, av[i], 0.0f, p->numel) < 0)
                die("Adam moments");
        }
    }
    int64_t nact = 0;
    for (int i = 0; i < lm_net_get_plan(n)->n; i++)
        nact += lm_net_get_plan(n)->a[i].numel;
    fprintf(stderr,
            "bench_net: %s, %s config (network %lldx%lldx%lld, L = %lld, activations %.2f GB), "
            "LLM %s, %s\n",
            be->name, config, (long long)c.shape[0], (long long)c.shape[1],
            (long long)c.shape[2], (long long)lm_net_tokens(&c), (double)nact * 4 / 1e9,
            wdt == LM_BF16 ? "BF16" : "F32",
            train ? forward ? "forward and training step (forward, loss, backward, Adam)"
                          : "training step (forward, loss, backward, Adam)"
                  : "forward");
    for (int mode = 0; mode < 2; mode++) { /* the forward first, then the training step */
        const int tr = mode == 1;
        if (!(tr ? train : forward))
            continue;
        double t[32];
        for (int i = 0; i <= reps; i++) { /* rep 0: warm-up (first touch, workspaces) */
            double t0 = omp_get_wtime();
            if (lm_net_set_images(n, mov, fix, dhw) < 0 || lm_net_forward(n) < 0)
                die("forward");
            if (tr) {
                lm_net_loss_value lv;
                if (lm_net_loss(n, &lv, ms, fs, K, classes, kept) < 0 ||
                    lm_net_zero_grad(n) < 0 || lm_net_backward(n) < 0)
                    die("loss/backward");
                lm_adam_args aa = {1e-4f, 0.9f, 0.999f, 1e-8f, 0.0f, (int64_t)i + 1};
                for (int q = 0; q < np; q++) {
                    lm_net_param *p = lm_net_param_at(n, q);
                    if (LM_OP_CALL(be, adam_step, p->value, am[q], av[q], p->grad, p->numel,
                                   &aa) < 0)
                        die("adam");
                }
                if (i == 0)
                    fprintf(stderr, "bench_net: loss %.6f (dice %.6f, grad_l2 %.3g)\n", lv.loss,
                            lv.dice, lv.grad_l2);
            }
            if (lm_backend_sync(be) < 0)
                die("sync");
            t[i] = omp_get_wtime() - t0;
            fprintf(stderr, "bench_net: %s %d: %.4f s%s\n", tr ? "train" : "forward", i, t[i],
                    i ? "" : " (warm-up)");
        }
        qsort(t + 1, (size_t)reps, sizeof *t, cmp_double);
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        printf("%s %.4f %.4f %d %d %ld", tr ? "train" : "forward", t[1], t[1 + reps / 2], reps,
               gpu ? 0 : threads > 0 ? threads : omp_get_max_threads(), ru.ru_maxrss);
#if LM_HAVE_CUDA
        size_t fb = 0, tb = 0;
        if (gpu && lm_backend_cuda_mem(be, &fb, &tb) == 0)
            printf(" %.0f", (double)(tb - fb) / 1048576.0);
#endif
        printf("\n");
        fflush(stdout);
    }
    for (int i = 0; train && i < np; i++) {
        lm_backend_free(be, am[i]);
        lm_backend_free(be, av[i]);
    }
    free(am), free(av), free(ms), free(fs);
    free(mov);
    free(fix);
    lm_net_free(n);
    lm_net_backend_close(be);
    return 0;
}
