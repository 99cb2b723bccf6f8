/* lm-init — a fresh, seeded network checkpoint from a model config (MODEL.md §3, §5.5, §7:
 * PyTorch-default init, flow heads N(0, 1e-5), LoRA A uniform and B = 0), with the config, the
 * LLM folder's config.json, the layer ids and their checksum in the metadata (§18), written
 * atomically. The config is a preset, a JSON file or inline JSON; --llm fills the LLM widths
 * and the default layers (the two middle ones). lm_net.h has the numbers.
 */
#include "cli/lm_cli.h"
#include "lm_io.h"
#include "lm_kernels.h"
#include "model/lm_net.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const lm_option opts[] = {
    {"preset", 'p', "NAME", "abdomen, srreg or tiny (default: the MODEL.md defaults)"},
    {"config", 'c', "JSON", "model config: a JSON file, or inline JSON starting with '{'"},
    {"llm", 0, "DIR", "Hugging Face model folder whose layers the LEBs use"},
    {"random-llm", 0, "DIR", "write a seeded random LLaMA-shaped folder (64 wide, 5 layers) to DIR"},
    {"random-shape", 0, "S", "--random-llm's shape: stories260k, llama3 (2 LLaMA-3-8B layers) or D,FFN,LAYERS,HEADS,KV"},
    {"layers", 0, "A,B", "LLM layer ids (default: the two middle ones)"},
    {"shape", 0, "DxHxW", "network grid (multiples of 16)"},
    {"seed", 's', "N", "seed of the initialisation (default 1)"},
    {"output", 'o', "FILE", "the checkpoint to write (.safetensors; required)"},
    {"quiet", 'q', NULL, "no messages"},
    {"verbose", 'v', NULL, "more messages"},
    {"help", 'h', NULL, "show this help and exit"},
    {"version", 'V', NULL, "show the version and exit"},
    {0},
};
static const lm_cli_spec spec = {
    "[--preset NAME] [--config JSON] --llm DIR [options] -o CKPT\n"
    "       lm-init --random-llm DIR [--seed N] [-o CKPT ...]",
    "Write a freshly initialised network checkpoint for a model config.",
    opts,
    "Exit status: 0 success, 1 bad input or failed write, 2 usage error.",
};

static char *read_file(const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            char *nb = realloc(buf, cap = 2 * cap + 8192);
            if (!nb)
                break;
            buf = nb;
        }
        size_t k = fread(buf + n, 1, 4096, fp);
        n += k;
        if (k < 4096)
            break;
    }
    fclose(fp);
    if (buf)
        buf[n] = '\0';
    return buf;
}

int main(int argc, char **argv)
{
    const char *arg, *out = NULL, *preset = NULL, *cfg = NULL, *llm = NULL, *layers = NULL,
                     *shape = NULL, *rnd = NULL, *rshape = NULL;
    long seed = 1;
    int c;
    lm_cli_init(argv[0]);
    while ((c = lm_cli_next(argc, argv, &spec, &arg)) >= 0) {
        const char *o = opts[c].lng;
        if (!strcmp(o, "preset"))
            preset = arg;
        else if (!strcmp(o, "config"))
            cfg = arg;
        else if (!strcmp(o, "llm"))
            llm = arg;
        else if (!strcmp(o, "random-llm"))
            rnd = arg;
        else if (!strcmp(o, "random-shape"))
            rshape = arg;
        else if (!strcmp(o, "layers"))
            layers = arg;
        else if (!strcmp(o, "shape"))
            shape = arg;
        else if (!strcmp(o, "seed") && lm_parse_long(arg, 0, 0x7fffffffL, &seed) < 0)
            lm_usage_error("--seed: '%s' is not a number from 0 to 2147483647", arg);
        else if (!strcmp(o, "output"))
            out = arg;
        else if (!strcmp(o, "quiet"))
            lm_verbose = -1;
        else if (!strcmp(o, "verbose"))
            lm_verbose++;
    }
    if (optind < argc)
        lm_usage_error("unexpected operand '%s'", argv[optind]);
    if (rshape && !rnd)
        lm_usage_error("--random-shape goes with --random-llm DIR");
    if (rnd) { /* a stand-in LLM: stories260K's shapes (or those asked for), random weights */
        lm_llm_random_shape rs = {64, 172, 5, 8, 4, 512};
        if (rshape && !strcmp(rshape, "llama3")) { /* LLaMA-3-8B's layer shapes, 2 layers */
            rs = (lm_llm_random_shape){4096, 14336, 2, 32, 8, 512};
        } else if (rshape && strcmp(rshape, "stories260k")) {
            long v[5];
            int k = 5;
            if (lm_parse_long_list(rshape, ',', 1, 65536, v, &k) < 0 || k != 5)
                lm_usage_error("--random-shape: '%s' is not stories260k, llama3 or "
                               "D,FFN,LAYERS,HEADS,KV",
                               rshape);
            rs = (lm_llm_random_shape){(int)v[0], (int)v[1], (int)v[2], (int)v[3], (int)v[4], 512};
        }
        if (lm_llm_write_random(rnd, &rs, (uint64_t)seed) < 0)
            lm_die(LM_EXIT_FAIL, "%s", lm_error());
        if (!out)
            return LM_EXIT_OK;
        if (!llm)
            llm = rnd;
    }
    if (!out)
        lm_usage_error("-o CKPT is required");
    lm_net_config nc;
    if (preset ? lm_net_config_preset(&nc, preset) < 0 : (lm_net_config_default(&nc), 0))
        lm_usage_error("--preset: %s", lm_error());
    if (cfg) {
        char *text = cfg[0] == '{' ? strdup(cfg) : read_file(cfg);
        if (!text)
            lm_die(LM_EXIT_FAIL, "%s: cannot read the config", cfg);
        if (lm_net_config_parse(&nc, text) < 0)
            lm_die(LM_EXIT_FAIL, "%s: %s", cfg[0] == '{' ? "--config" : cfg, lm_error());
        free(text);
    }
    if (shape) {
        long v[3];
        int k = 3;
        if (lm_parse_long_list(shape, 'x', 16, 4096, v, &k) < 0 || k != 3)
            lm_usage_error("--shape: '%s' is not DxHxW", shape);
        for (int i = 0; i < 3; i++)
            nc.shape[i] = v[i];
    }
    if (!llm && nc.llm[0])
        llm = nc.llm;
    lm_llm m;
    memset(&m, 0, sizeof m);
    int use_llm = lm_net_uses_llm(&nc); /* vit too: the folder gives its width and heads */
    if (layers && !lm_net_uses_llm_layers(&nc))
        lm_usage_error("--layers: this config uses no LLM layers");
    if (use_llm && !llm)
        lm_usage_error("--llm DIR is required (the config's LEBs use LLM layers%s)",
                       lm_net_uses_llm_layers(&nc) ? "" : "' width and head count");
    if (use_llm) {
        if (lm_llm_open(&m, llm) < 0)
            lm_die_error(llm);
        int ids[2], k = 0;
        if (layers && (k = lm_llm_layers_parse(layers, &m.cfg, ids, 2)) < 0)
            lm_usage_error("--layers: %s", lm_error());
        snprintf(nc.llm, sizeof nc.llm, "%s", llm);
        if (lm_net_config_set_llm(&nc, &m, ids, k) < 0)
            lm_die_error(llm);
    }
    if (lm_net_config_check(&nc) < 0)
        lm_die(LM_EXIT_FAIL, "%s", lm_error());
    lm_backend *be = lm_backend_cpu();
    lm_net *n = NULL;
    if (lm_net_create(&n, be, &nc) < 0)
        lm_die(LM_EXIT_FAIL, "%s", lm_error());
    if (use_llm && lm_net_attach_llm(n, &m, LM_LLM_WDTYPE_AUTO, NULL) < 0)
        lm_die_error(llm);
    if (lm_net_init(n, (uint64_t)seed) < 0)
        lm_die(LM_EXIT_FAIL, "%s", lm_error());
    /* the history line: this command */
    lm_record h;
    lm_record_init(&h);
    lm_record_add_history(&h, argc, argv);
    const char *hist = lm_record_meta_get(&h, "history");
    if (lm_net_save(n, out, use_llm ? m.config_json : NULL, 0, (uint64_t)seed, hist) < 0)
        lm_die_error(out);
    lm_record_free(&h);
    int64_t tot = 0;
    for (int i = 0; i < lm_net_param_count(n); i++)
        tot += lm_net_param_at(n, i)->numel;
    if (lm_verbose >= 0)
        lm_msg("%s: %d tensors, %lld trainable parameters%s%s", out, lm_net_param_count(n),
               (long long)tot, lm_net_uses_llm_layers(&nc) ? ", LLM layers checksum " : "",
               lm_net_uses_llm_layers(&nc) ? lm_net_llm_checksum(n) : "");
    lm_net_free(n);
    lm_llm_close(&m);
    return LM_EXIT_OK;
}
