/* net_register.c — lm-register's NIfTI mode: image pairs read from NIfTI files and
 * preprocessed exactly as lm-preprocess does (libcommon/prep/pair.c), registered by the whole
 * network in the same process (lm_net_stage_register), and written as a stream whose records
 * are what `lm-preprocess ... | lm-register` writes. The target grid defaults to the
 * checkpoint's: its input shape (twice it for half-resolution configs) over the fixed image's
 * field of view, so any fixed image size is accepted; --shape, --like or --crop-pad override.
 */
#include "lm_net.h"

#include "cli/lm_cli.h"
#include "io/lm_error.h"
#include "io/lm_stream.h"

#include <stdio.h>
#include <string.h>

int lm_net_prep_defaults(const lm_net *n, lm_prep_opts *po)
{
    const lm_net_config *c = lm_net_get_config(n);
    if (po->half && !c->half)
        return lm_error_set("--half: the checkpoint's network is not a half-resolution one");
    po->half = c->half;
    if (!po->like && !po->have_shape && !po->crop_pad) {
        for (int i = 0; i < 3; i++)
            po->shape[i] = c->shape[i] * (c->half ? 2 : 1);
        po->have_shape = 1;
    }
    return 0;
}

int lm_net_register_pairs(lm_net *n, const lm_prep_opts *po, const lm_prep_pair *pairs,
                          int npairs, const char *out, int wflags, int argc, char **argv,
                          long *count)
{
    *count = 0;
    lm_writer *w = lm_writer_open(out, wflags);
    if (!w)
        return lm_error_prefix("%s", out ? out : "stdout");
    lm_progress prog;
    lm_progress_start(&prog, "registering", npairs, "pairs");
    for (int p = 0; p < npairs; p++) {
        lm_record rec;
        if (lm_prep_pair_record(po, &pairs[p], &rec, argc, argv) < 0)
            goto fail;
        if (lm_net_stage_register(n, &rec) < 0) {
            lm_error_prefix("pair %s", pairs[p].id);
            lm_record_free(&rec);
            goto fail;
        }
        int rc = lm_writer_put(w, &rec);
        lm_record_free(&rec);
        if (rc < 0) {
            lm_error_prefix("%s", lm_writer_name(w));
            goto fail;
        }
        lm_info("pair %s registered", pairs[p].id);
        lm_progress_update(&prog, p + 1);
        ++*count;
    }
    lm_progress_end(&prog);
    if (lm_writer_commit(w) < 0)
        return lm_error_prefix("%s", out ? out : "stdout");
    return 0;
fail:;
    char msg[1200];
    snprintf(msg, sizeof msg, "%s", lm_error());
    lm_writer_abort(w);
    return lm_error_set("%s", msg);
}
