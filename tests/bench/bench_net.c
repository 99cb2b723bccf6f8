/* bench_net.c — the C side of tests/bench/bench-net.sh: forward time per pair of the whole
 * network (lm_net_forward: encoder, both LEBs, decoder, up to phi_full) at the abdomen config
 * (192×160×192 images, half -> 96×80×96 network input, L = 180) on the CPU backend, with two
 * LLaMA-3-shaped random layers (D 4096, FFN 14336, 32 heads, 8 KV heads, F32) built in memory
 * (no 1.7 GB model folder on disk), LoRA rank 64 as the preset says. Prints one line
 *   forward BEST_S MEDIAN_S REPS THREADS PEAK_RSS_KB
 * that bench-net.sh compares with PyTorch (net_torch.py) in the same run.
 * Without --forward (as run-bench.sh calls every bench_* program) it only says where it is
 * used and exits 0, so `make bench` runs it once, from bench-net.sh.
 * Usage: bench_net --forward [--threads N] [--reps N] [--width D --ffn F --heads H --kv K]
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

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int forward = 0, threads = 0, reps = 3, D = 4096, F = 14336, H = 32, KV = 8;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--forward"))
            forward = 1;
        else if (!strcmp(a, "--threads") && v)
            threads = atoi(argv[++i]);
        else if (!strcmp(a, "--reps") && v)
            reps = atoi(argv[++i]);
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
    if (!forward) {
        printf("bench_net: the C side of bench-net.sh (network forward vs PyTorch); run there\n");
        return 0;
    }
    if (reps < 1 || reps > 31 || D <= 0 || F <= 0 || H <= 0 || KV <= 0 || D % H || H % KV) {
        fprintf(stderr, "bench_net: bad arguments\n");
        return 2;
    }
    lm_backend *be = lm_backend_cpu();
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
    if (lm_net_config_preset(&c, "abdomen") < 0)
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
        w.wdtype = LM_F32;
        uint64_t s = 100 * (uint64_t)k;
        for (int j = 0; j < LM_LLM_NLIN; j++)
            if (fill(&w.w[j], "w", rows[j], cols[j], 0, s + (uint64_t)j) < 0)
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
    /* images at twice the grid (the half config pools them) */
    int64_t dhw[3] = {2 * c.shape[0], 2 * c.shape[1], 2 * c.shape[2]};
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
    double t[32];
    for (int i = 0; i <= reps; i++) { /* rep 0: warm-up (first touch of the buffers) */
        double t0 = omp_get_wtime();
        if (lm_net_set_images(n, mov, fix, dhw) < 0 || lm_net_forward(n) < 0)
            die("forward");
        lm_backend_sync(be);
        t[i] = omp_get_wtime() - t0;
        fprintf(stderr, "bench_net: forward %d: %.3f s%s\n", i, t[i], i ? "" : " (warm-up)");
    }
    qsort(t + 1, (size_t)reps, sizeof *t, cmp_double);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("forward %.4f %.4f %d %d %ld\n", t[1], t[1 + reps / 2], reps,
           threads > 0 ? threads : omp_get_max_threads(), ru.ru_maxrss);
    free(mov);
    free(fix);
    lm_net_free(n);
    return 0;
}
