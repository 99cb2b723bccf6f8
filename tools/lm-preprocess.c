/* lm-preprocess — NIfTI in, tensor stream out: per-modality intensity normalisation, both
 * images (and their label maps) onto one target grid through world space, optional half
 * resolution. One record per pair; records are streamed as pairs are done.
 * The numerical work is in libcommon/prep (lm_prep.h); this file reads, checks and writes.
 */
#include "cli/lm_cli.h"
#include "lm_io.h"
#include "prep/lm_prep.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const lm_option opts[] = {
    {"output", 'o', "FILE", "write the stream to FILE (default: standard output)"},
    {"force", 'f', NULL, "write binary data even to a terminal"},
    {"pairs", 'p', "LIST", "TSV of pairs: moving, fixed[, moving_seg, fixed_seg[, pair id]]"},
    {"pair", 0, "ID", "pair id with operands (default: the moving file's name)"},
    LM_PREP_OPTION_ROWS,
    {"quiet", 'q', NULL, "no progress messages"},
    {"verbose", 'v', NULL, "more messages"},
    {"help", 'h', NULL, "show this help and exit"},
    {"version", 'V', NULL, "show the version and exit"},
    {0},
};
static const lm_cli_spec spec = {
    "[options] MOVING FIXED [MOVING_SEG FIXED_SEG]\n       lm-preprocess [options] --pairs LIST",
    "Normalise and resample image pairs (NIfTI) onto one grid and write a tensor stream with\n"
    "moving, fixed, moving_seg, fixed_seg and their geometry.",
    opts,
    "Exit status: 0 success, 1 bad input or failed write, 2 usage error.",
};

int main(int argc, char **argv)
{
    const char *arg, *out = NULL, *list = NULL, *pair_id = NULL;
    int flags = 0, c;
    lm_prep_opts cfg;
    lm_cli_init(argv[0]);
    lm_prep_opts_default(&cfg);
    while ((c = lm_cli_next(argc, argv, &spec, &arg)) >= 0) {
        const char *o = opts[c].lng;
        if (!strcmp(o, "output"))
            out = arg;
        else if (!strcmp(o, "force"))
            flags |= LM_W_FORCE;
        else if (!strcmp(o, "pairs"))
            list = arg;
        else if (!strcmp(o, "pair"))
            pair_id = arg;
        else if (lm_prep_option(&cfg, o, arg))
            ;
        else if (!strcmp(o, "quiet"))
            lm_verbose = -1;
        else if (!strcmp(o, "verbose"))
            lm_verbose++;
    }
    lm_prep_opts_check(&cfg);
    int nops = argc - optind, npairs = 0;
    lm_prep_pair *pairs = NULL, one;
    if (list) {
        if (nops)
            lm_usage_error("--pairs and file operands exclude each other");
        if (pair_id)
            lm_usage_error("--pair is for operands; --pairs takes ids from the list");
        if (lm_prep_read_pairs(list, &pairs, &npairs) < 0)
            lm_die(LM_EXIT_FAIL, "%s: %s", list, lm_error());
    } else {
        if (nops != 2 && nops != 4)
            lm_usage_error("expected MOVING FIXED [MOVING_SEG FIXED_SEG] or --pairs LIST");
        memset(&one, 0, sizeof one);
        for (int i = 0; i < nops; i++)
            one.f[i] = argv[optind + i];
        one.id = pair_id ? (char *)pair_id : lm_prep_stem(one.f[0]);
        pairs = &one;
        npairs = 1;
    }
    /* Every input must exist before any output is made. */
    for (int p = 0; p < npairs; p++)
        for (int i = 0; i < 4; i++)
            if (pairs[p].f[i] && access(pairs[p].f[i], R_OK) != 0)
                lm_die(LM_EXIT_FAIL, "%s: %s", pairs[p].f[i], strerror(errno));
    lm_writer *w = lm_writer_open(out, flags);
    if (!w)
        lm_die_error(out ? out : "stdout");
    lm_progress prog;
    lm_progress_start(&prog, "preprocessing", npairs, "pairs");
    for (int p = 0; p < npairs; p++) {
        lm_record rec;
        if (lm_prep_pair_record(&cfg, &pairs[p], &rec, argc, argv) < 0) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", lm_error());
            lm_writer_abort(w);
            lm_die(LM_EXIT_FAIL, "%s", msg);
        }
        int rc = lm_writer_put(w, &rec);
        lm_record_free(&rec);
        if (rc < 0) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s: %s", lm_writer_name(w), lm_error());
            lm_writer_abort(w);
            lm_die(LM_EXIT_FAIL, "%s", msg);
        }
        lm_info("pair %s done", pairs[p].id);
        lm_progress_update(&prog, p + 1);
    }
    lm_progress_end(&prog);
    if (lm_writer_commit(w) < 0)
        lm_die_error(out ? out : "stdout");
    return LM_EXIT_OK;
}
