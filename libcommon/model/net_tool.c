/* net_tool.c — the one main() of the network's stage programs (lm-encode, lm-leb, lm-decode,
 * lm-register): common options, the backend, weights loaded once, the LLM layers attached when
 * the stage runs them, and the record loop (lm_net_stream; lm-register's NIfTI input and output
 * loops are in net_register.c). Each program only names its stage.
 */
#include "lm_net.h"

#include "cli/lm_cli.h"
#include "io/lm_nifti.h"
#include "io/lm_stream.h"
#include "lm_kernels.h"
#include "warp/lm_warp.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define COMMON_TAIL                                                                               \
    {"output", 'o', "FILE", "write the stream to FILE (default: standard output)"}, COMMON_REST
#define COMMON_REST                                                                               \
    {"force", 'f', NULL, "write binary data even to a terminal"},                                 \
        {"device", 0, "DEV", "cpu, cuda or cuda:N (default: $LM_DEVICE, else a GPU if any)"},    \
        {"threads", 0, "N", "CPU threads (default: all)"},                                        \
        {"quiet", 'q', NULL, "no progress messages"}, {"verbose", 'v', NULL, "more messages"},    \
        {"help", 'h', NULL, "show this help and exit"},                                           \
        {"version", 'V', NULL, "show the version and exit"}, {0}

#define KEEP_ROW {"keep", 'k', NULL, "pass on the tensors the stage consumes too (default: dropped)"}
static const lm_option opts_llm[] = {
    {"weights", 'w', "CKPT", "network checkpoint (.safetensors; required)"},
    {"llm", 0, "DIR", "Hugging Face model folder (default: the one the checkpoint names)"},
    KEEP_ROW,
    COMMON_TAIL,
};
/* lm-register: the stream options plus NIfTI input and output (net_register.c) */
static const lm_option opts_register[] = {
    {"weights", 'w', "CKPT", "network checkpoint (.safetensors; required)"},
    {"llm", 0, "DIR", "Hugging Face model folder (default: the one the checkpoint names)"},
    {"pairs", 'p', "LIST", "NIfTI mode: TSV of pairs (moving, fixed[, moving_seg, fixed_seg[, id]])"},
    {"pair", 0, "ID", "NIfTI mode: pair id of the operands (default: the moving file's name)"},
    LM_PREP_OPTION_ROWS,
    {"output", 'o', "PATH", "stream file (default stdout), or a .nii/.nii.gz name or a directory"},
    {"labels-linear", 'L', NULL, "NIfTI -o: warp labels as one-hot maps (trilinear), then argmax"},
    {"export-field", 'e', "PATH", "NIfTI -o: also the field as ITK/ANTs NIfTI (mm; file or directory)"},
    COMMON_REST,
};
static const lm_option opts_decode[] = {
    {"weights", 'w', "CKPT", "network checkpoint (.safetensors; required)"},
    KEEP_ROW,
    COMMON_TAIL,
};
static const lm_option opts_plain[] = {
    {"weights", 'w', "CKPT", "network checkpoint (.safetensors; required)"},
    COMMON_TAIL,
};

int lm_net_tool_main(int argc, char **argv, const char *synopsis, const char *summary,
                     lm_net_stage_fn stage, const char *what, int with_llm)
{
    const int reg = stage == lm_net_stage_register;
    const lm_option *opts = reg                            ? opts_register
                            : with_llm                     ? opts_llm
                            : stage == lm_net_stage_decode ? opts_decode
                                                           : opts_plain;
    const lm_cli_spec spec = {synopsis, summary, opts,
                              "Exit status: 0 success, 1 bad input or failed write, 2 usage error."};
    const char *arg, *out = NULL, *ckpt = NULL, *dev = NULL, *llm = NULL, *list = NULL,
               *pair_id = NULL, *exp = NULL;
    lm_prep_opts po;
    int prep_given = 0, labels_linear = 0;
    int flags = 0, keep = 0, c;
    long threads = 0;
    lm_cli_init(argv[0]);
    lm_prep_opts_default(&po);
    while ((c = lm_cli_next(argc, argv, &spec, &arg)) >= 0) {
        const char *o = opts[c].lng;
        if (!strcmp(o, "weights"))
            ckpt = arg;
        else if (!strcmp(o, "llm"))
            llm = arg;
        else if (!strcmp(o, "pairs"))
            list = arg;
        else if (!strcmp(o, "pair"))
            pair_id = arg;
        else if (lm_prep_option(&po, o, arg))
            prep_given = 1;
        else if (!strcmp(o, "keep"))
            keep = 1;
        else if (!strcmp(o, "output"))
            out = arg;
        else if (!strcmp(o, "labels-linear"))
            labels_linear = 1;
        else if (!strcmp(o, "export-field"))
            exp = arg;
        else if (!strcmp(o, "force"))
            flags |= LM_W_FORCE;
        else if (!strcmp(o, "device"))
            dev = arg;
        else if (!strcmp(o, "threads") && lm_parse_long(arg, 1, 4096, &threads) < 0)
            lm_usage_error("--threads: '%s' is not a number from 1 to 4096", arg);
        else if (!strcmp(o, "quiet"))
            lm_verbose = -1;
        else if (!strcmp(o, "verbose"))
            lm_verbose++;
    }
    if (!ckpt)
        lm_usage_error("-w CKPT is required");
    /* lm-register's NIfTI mode: --pairs, or 2 or 4 NIfTI operands */
    int nops = argc - optind, nifti = reg && (list != NULL);
    for (int i = 0; reg && !list && (nops == 2 || nops == 4) && i < nops; i++)
        nifti = lm_nifti_is_name(argv[optind + i]) ? 1 : 0;
    if (!reg && nops > 1)
        lm_usage_error("at most one STREAM");
    if (reg && !nifti) {
        if (nops > 1)
            lm_usage_error("expected one STREAM, or MOVING FIXED [MOVING_SEG FIXED_SEG] NIfTI "
                           "files, or --pairs LIST");
        if (prep_given || pair_id)
            lm_usage_error("the preprocessing options are for NIfTI input (operands or --pairs)");
    }
    lm_prep_pair *pairs = NULL, one;
    int npairs = 0;
    if (nifti) {
        lm_prep_opts_check(&po);
        if (list) {
            if (nops)
                lm_usage_error("--pairs and file operands exclude each other");
            if (pair_id)
                lm_usage_error("--pair is for operands; --pairs takes ids from the list");
            if (lm_prep_read_pairs(list, &pairs, &npairs) < 0)
                lm_die(LM_EXIT_FAIL, "%s: %s", list, lm_error());
        } else {
            memset(&one, 0, sizeof one);
            for (int i = 0; i < nops; i++)
                one.f[i] = argv[optind + i];
            one.id = pair_id ? (char *)pair_id : lm_prep_stem(one.f[0]);
            pairs = &one;
            npairs = 1;
        }
        for (int p = 0; p < npairs; p++) /* every input exists before any work is done */
            for (int i = 0; i < 4; i++)
                if (pairs[p].f[i] && access(pairs[p].f[i], R_OK) != 0)
                    lm_die(LM_EXIT_FAIL, "%s: %s", pairs[p].f[i], strerror(errno));
    }
    /* lm-register's NIfTI output: -o a .nii/.nii.gz name or a directory (as lm-warp) */
    lm_warp_out *wo = NULL;
    if (reg && out && (lm_nifti_is_name(out) || lm_warp_is_dir(out))) {
        if (exp && !lm_warp_is_dir(exp) && !lm_nifti_is_name(exp))
            lm_usage_error("--export-field: '%s' is neither a directory nor a .nii/.nii.gz name",
                           exp);
        if (!(wo = lm_warp_out_open(out, exp, LM_WARP_OUT_STAGED)))
            lm_die(LM_EXIT_FAIL, "%s", lm_error());
        if (nifti && npairs > 1 && lm_warp_out_single(wo)) {
            char why[64];
            snprintf(why, sizeof why, "there are %d pairs", npairs);
            lm_warp_out_too_many(wo, why);
            lm_warp_out_abort(wo);
            lm_die(LM_EXIT_FAIL, "%s", lm_error());
        }
    } else if (exp || labels_linear) {
        lm_usage_error("%s is for NIfTI output (-o FILE.nii[.gz] or -o DIR)",
                       exp ? "--export-field" : "--labels-linear");
    }
    lm_backend *be = lm_net_backend_open(dev);
    if (!be)
        lm_die(LM_EXIT_FAIL, "%s", lm_error());
    if (threads)
        lm_backend_set_threads(be, (int)threads);
    lm_net *n = NULL;
    if (lm_net_load(&n, be, ckpt) < 0)
        lm_die_error(ckpt);
    if (with_llm && lm_net_uses_llm(lm_net_get_config(n))) {
        const char *dir = llm ? llm : lm_net_get_config(n)->llm;
        lm_llm m;
        if (!*dir)
            lm_usage_error("the checkpoint names no LLM folder: give --llm DIR");
        if (lm_llm_open(&m, dir) < 0)
            lm_die_error(dir);
        if (lm_net_attach_llm(n, &m, LM_LLM_WDTYPE_AUTO, lm_net_ckpt_llm_checksum(n)) < 0) {
            char msg[1200];
            snprintf(msg, sizeof msg, "%s", lm_error());
            lm_llm_close(&m);
            lm_die(LM_EXIT_FAIL, "%s", msg);
        }
        lm_llm_close(&m);
    }
    long count;
    if (nifti) {
        if (lm_net_prep_defaults(n, &po) < 0)
            lm_usage_error("%s", lm_error());
        if (lm_net_register_pairs(n, &po, pairs, npairs, out, flags, wo, labels_linear, argc,
                                  argv, &count) < 0)
            lm_die(LM_EXIT_FAIL, "%s", lm_error());
    } else if (wo) {
        if (lm_net_register_warp(n, optind < argc ? argv[optind] : "-", wo, labels_linear,
                                 &count) < 0)
            lm_die(LM_EXIT_FAIL, "%s", lm_error());
    } else if (lm_net_stream(n, stage, optind < argc ? argv[optind] : "-", out, flags, keep, argc,
                             argv, what, &count) < 0)
        lm_die(LM_EXIT_FAIL, "%s", lm_error());
    if (!count)
        lm_warn("no records");
    lm_net_free(n);
    lm_net_backend_close(be);
    return LM_EXIT_OK;
}
