/* lm-cat — concatenates, checks and converts tensor streams; adds NIfTI volumes and metadata.
 *
 * Every record is fully decoded and validated on the way through, so `lm-cat a.lmt >/dev/null`
 * is a stream checker. Records are re-encoded (zstd, or --raw for plain safetensors), tensors
 * can be selected or dropped, metadata set, and NIfTI images added as tensors, which makes a
 * stream from files without any other tool. The output appears only when everything succeeded.
 */
#include "cli/lm_cli.h"
#include "lm_io.h"
#include "prep/lm_prep.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const lm_option opts[] = {
    {"output", 'o', "FILE", "write the stream to FILE (default: standard output)"},
    {"force", 'f', NULL, "write binary data even to a terminal"},
    {"raw", 'r', NULL, "write uncompressed records (one record = a plain .safetensors file)"},
    {"level", 'l', "N", "zstd compression level, 1..19 (default 3)"},
    {"select", 's', "NAMES", "keep only these tensors (comma-separated)"},
    {"drop", 'd', "NAMES", "remove these tensors (comma-separated)"},
    {"add", 'a', "NAME=FILE", "add a NIfTI image as an F32 tensor [1,1,D,H,W] (repeatable)"},
    {"add-labels", 'L', "NAME=FILE", "add a NIfTI label map as an I32 tensor [1,1,D,H,W]"},
    {"add-field", 'F', "NAME=FILE", "add a NIfTI displacement field as F32 [1,3,D,H,W] voxels"},
    {"meta", 'm', "KEY=VALUE", "set a metadata entry on every record (repeatable)"},
    {"new", 'n', NULL, "make one new record (with --add/--meta) instead of reading input"},
    {"quiet", 'q', NULL, "no progress messages"},
    {"verbose", 'v', NULL, "report each record"},
    {"help", 'h', NULL, "show this help and exit"},
    {"version", 'V', NULL, "show the version and exit"},
    {0},
};
static const lm_cli_spec spec = {
    "[options] [FILE...]",
    "Concatenate tensor streams, checking every record, optionally adding NIfTI images and\n"
    "metadata. With no FILE, or when FILE is -, read standard input; with --new, read\n"
    "nothing and make one record from --add/--add-labels/--meta.",
    opts,
    "Exit status: 0 success, 1 unreadable or corrupt input or failed write, 2 usage error.",
};

#define MAXL 64
typedef struct {
    const char *key, *val;
    int kind; /* 0 image, 1 labels, 2 displacement field */
} kv;

static int in_list(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; p && *p;) {
        const char *q = strchr(p, ',');
        size_t k = q ? (size_t)(q - p) : strlen(p);
        if (k == n && strncmp(p, name, n) == 0)
            return 1;
        p = q ? q + 1 : NULL;
    }
    return 0;
}

static int split_kv(const char *s, kv *out, int kind)
{
    const char *eq = strchr(s, '=');
    if (!eq || eq == s || !eq[1])
        return -1;
    char *k = strndup(s, (size_t)(eq - s));
    if (!k)
        return -1;
    out->key = k;
    out->val = eq + 1;
    out->kind = kind;
    return 0;
}

int main(int argc, char **argv)
{
    const char *arg, *out = NULL, *sel = NULL, *drop = NULL;
    int flags = 0, c, fresh = 0;
    long level = 3;
    kv adds[MAXL], metas[MAXL];
    int nadd = 0, nmeta = 0;
    lm_cli_init(argv[0]);
    while ((c = lm_cli_next(argc, argv, &spec, &arg)) >= 0) {
        const char *o = opts[c].lng;
        if (!strcmp(o, "output"))
            out = arg;
        else if (!strcmp(o, "force"))
            flags |= LM_W_FORCE;
        else if (!strcmp(o, "raw"))
            flags |= LM_W_RAW;
        else if (!strcmp(o, "level")) {
            if (lm_parse_long(arg, 1, 19, &level) < 0)
                lm_usage_error("--level: '%s' is not an integer in 1..19", arg);
        } else if (!strcmp(o, "select"))
            sel = arg;
        else if (!strcmp(o, "drop"))
            drop = arg;
        else if (!strcmp(o, "add") || !strcmp(o, "add-labels") || !strcmp(o, "add-field")) {
            int kind = !strcmp(o, "add") ? 0 : !strcmp(o, "add-labels") ? 1 : 2;
            if (nadd == MAXL || split_kv(arg, &adds[nadd++], kind) < 0)
                lm_usage_error("--%s: expected NAME=FILE, got '%s'", o, arg);
        } else if (!strcmp(o, "meta")) {
            if (nmeta == MAXL || split_kv(arg, &metas[nmeta++], 0) < 0)
                lm_usage_error("--meta: expected KEY=VALUE, got '%s'", arg);
        } else if (!strcmp(o, "new"))
            fresh = 1;
        else if (!strcmp(o, "quiet"))
            lm_verbose = -1;
        else if (!strcmp(o, "verbose"))
            lm_verbose++;
    }
    /* Read the images first: a bad one fails before any output is created. */
    lm_tensor added[MAXL];
    for (int i = 0; i < nadd; i++) {
        lm_tensor t;
        lm_nifti_geom g;
        if (lm_nifti_read(adds[i].val, adds[i].kind == 1 ? LM_NII_LABELS : LM_NII_F32, &t, &g) < 0)
            lm_die(LM_EXIT_FAIL, "%s: %s", adds[i].val, lm_error());
        if (adds[i].kind == 2) {
            /* ITK/ANTs fields (intent DISPVECT) are mm in LPS: to voxels of the file's grid. */
            if (t.ndim != 4 || t.shape[0] != 3)
                lm_die(LM_EXIT_FAIL, "%s: a displacement field needs 3 components per voxel",
                       adds[i].val);
            if (g.intent_code == 1006 &&
                lm_field_lps_mm_to_vox(t.data, t.data, t.shape[1] * t.shape[2] * t.shape[3],
                                       g.affine) < 0)
                lm_die_error(adds[i].val);
            int64_t fs[5] = {1, 3, t.shape[1], t.shape[2], t.shape[3]};
            if (lm_tensor_wrap(&added[i], adds[i].key, LM_F32, 5, fs, t.data) < 0)
                lm_die_error(adds[i].val);
            added[i].owns = 1;
            t.owns = 0;
            lm_tensor_free(&t);
            continue;
        }
        if (t.ndim != 3)
            lm_die(LM_EXIT_FAIL, "%s: a 3-D image is needed (this one has %lld channels)",
                   adds[i].val, (long long)t.shape[0]);
        int64_t shape[5] = {1, 1, t.shape[0], t.shape[1], t.shape[2]};
        if (lm_tensor_wrap(&added[i], adds[i].key, t.dtype, 5, shape, t.data) < 0)
            lm_die_error(adds[i].val);
        added[i].owns = 1;
        t.owns = 0;
        lm_tensor_free(&t);
    }
    int nin = argc - optind;
    if (fresh && nin)
        lm_usage_error("--new reads no input, but input files were given");
    lm_writer *w = lm_writer_open(out, flags);
    if (!w)
        lm_die_error(out ? out : "stdout");
    lm_writer_set_level(w, (int)level);
    long total = 0;
    for (int f = 0; f < (fresh ? 1 : nin ? nin : 1); f++) {
        lm_reader *r = NULL;
        const char *path = nin ? argv[optind + f] : "-";
        if (!fresh && !(r = lm_reader_open(path))) {
            lm_writer_abort(w);
            lm_die_error(strcmp(path, "-") ? path : "stdin");
        }
        for (;;) {
            lm_record rec;
            int rc = 1;
            if (r)
                rc = lm_reader_next(r, &rec);
            else
                lm_record_init(&rec);
            if (rc == 0)
                break;
            if (rc < 0) {
                lm_writer_abort(w);
                lm_die_error(lm_reader_name(r));
            }
            for (int i = rec.n - 1; i >= 0; i--)
                if ((sel && !in_list(sel, rec.t[i].name)) || (drop && in_list(drop, rec.t[i].name))) {
                    lm_tensor t;
                    lm_record_take(&rec, rec.t[i].name, &t);
                    lm_tensor_free(&t);
                }
            int err = 0;
            for (int i = 0; i < nadd && !err; i++) {
                lm_tensor t;
                err = lm_tensor_copy(&t, &added[i]) < 0 || lm_record_put(&rec, &t) < 0;
            }
            for (int i = 0; i < nmeta && !err; i++)
                err = lm_record_meta_set(&rec, metas[i].key, metas[i].val) < 0;
            if (!err)
                err = lm_record_add_history(&rec, argc, argv) < 0;
            if (err || lm_writer_put(w, &rec) < 0) {
                lm_record_free(&rec);
                lm_reader_close(r);
                const char *name = lm_writer_name(w);
                char msg[1024];
                snprintf(msg, sizeof msg, "%s", lm_error());
                lm_writer_abort(w);
                lm_die(LM_EXIT_FAIL, "%s: %s", name, msg);
            }
            total++;
            lm_info("record %ld: %d tensors", total, rec.n);
            lm_record_free(&rec);
            if (!r)
                break;
        }
        lm_reader_close(r);
    }
    for (int i = 0; i < nadd; i++)
        lm_tensor_free(&added[i]);
    const char *name = out ? out : "stdout";
    if (lm_writer_commit(w) < 0)
        lm_die_error(name);
    lm_info("%ld records written to %s", total, name);
    return LM_EXIT_OK;
}
