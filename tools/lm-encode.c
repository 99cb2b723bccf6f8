/* lm-encode — the shared Dual-PRNet++ encoder of the network (MODEL.md §3) as a streaming
 * filter: `moving`, `fixed` -> fm1..fm5, ff1..ff5 for every record; everything else passes
 * through. Weights come from a checkpoint (lm-init, lm-train) and are loaded once.
 * The numbers are in libcommon/model (lm_net.h). */
#include "cli/lm_cli.h"
#include "lm_io.h"
#include "lm_kernels.h"
#include "model/lm_net.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const lm_option opts[] = {
    {"weights", 'w', "CKPT", "network checkpoint (.safetensors; required)"},
    {"output", 'o', "FILE", "write the stream to FILE (default: standard output)"},
    {"force", 'f', NULL, "write binary data even to a terminal"},
    {"device", 0, "DEV", "cpu, cuda or cuda:N (default: $LM_DEVICE, else a GPU if any)"},
    {"threads", 0, "N", "CPU threads (default: all)"},
    {"quiet", 'q', NULL, "no progress messages"},
    {"verbose", 'v', NULL, "more messages"},
    {"help", 'h', NULL, "show this help and exit"},
    {"version", 'V', NULL, "show the version and exit"},
    {0},
};
static const lm_cli_spec spec = {
    "-w CKPT [options] [STREAM]",
    "Encode each record's moving and fixed images: moving, fixed -> fm1..fm5, ff1..ff5.",
    opts,
    "Exit status: 0 success, 1 bad input or failed write, 2 usage error.",
};

int main(int argc, char **argv)
{
    const char *arg, *out = NULL, *ckpt = NULL, *dev = NULL;
    int flags = 0, c;
    long threads = 0;
    lm_cli_init(argv[0]);
    while ((c = lm_cli_next(argc, argv, &spec, &arg)) >= 0) {
        const char *o = opts[c].lng;
        if (!strcmp(o, "weights"))
            ckpt = arg;
        else if (!strcmp(o, "output"))
            out = arg;
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
    if (argc - optind > 1)
        lm_usage_error("at most one STREAM");
    lm_backend *be = lm_net_backend_open(dev);
    if (!be)
        lm_die(LM_EXIT_FAIL, "%s", lm_error());
    if (threads)
        lm_backend_set_threads(be, (int)threads);
    lm_net *n = NULL;
    if (lm_net_load(&n, be, ckpt) < 0)
        lm_die_error(ckpt);
    long count;
    if (lm_net_stream(n, lm_net_stage_encode, optind < argc ? argv[optind] : "-", out, flags,
                      argc, argv, "encoding", &count) < 0)
        lm_die(LM_EXIT_FAIL, "%s", lm_error());
    if (!count)
        lm_warn("no records");
    lm_net_free(n);
    lm_net_backend_close(be);
    return LM_EXIT_OK;
}
