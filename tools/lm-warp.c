/* lm-warp — applies a displacement field (voxel units, MODEL.md §0/§8) to the moving image and
 * label map of each record: `moving` -> `warped` (trilinear, zeros outside) and `moving_seg` ->
 * `warped_seg` (nearest, or one-hot trilinear + argmax with --labels-linear), each with the
 * field that lives on its grid (`flow` or `flow_full`). Everything else passes through.
 * Outputs a stream, or NIfTI files with the fixed image's geometry, and can export the field as
 * an ITK/ANTs displacement field in mm. Standalone: --flow FIELD applied to NIfTI files; with a
 * NIfTI field and NIfTI outputs that job never builds a record: the volumes stay in the files'
 * order (lm_nifti_map, LM_WARP_NIFTI_ORDER, LM_NII_FILE_ORDER), untransposed and uncopied,
 * and give the record path's files byte for byte.
 * The record path (warping a record, its NIfTI outputs and their names) is libcommon/warp,
 * shared with lm-register; the warps run on the kernel backend (kernels/lm_kernels.h); field
 * conversions are in libcommon/prep.
 */
#include "cli/lm_cli.h"
#include "lm_io.h"
#include "lm_kernels.h"
#include "prep/lm_prep.h"
#include "warp/lm_warp.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const lm_option opts[] = {
    {"output", 'o', "PATH", "stream file (default stdout), a .nii/.nii.gz name, or a directory"},
    {"force", 'f', NULL, "write binary data even to a terminal"},
    {"flow", 'F', "FIELD", "standalone: the field (a stream, or a NIfTI displacement field)"},
    {"seg", 's', "FILE", "standalone: a label map to warp with the image"},
    {"labels-linear", 'L', NULL, "warp labels as one-hot maps (trilinear), then argmax"},
    {"export-field", 'e', "PATH", "also write the field as ITK/ANTs NIfTI (mm; file or directory)"},
    {"quiet", 'q', NULL, "no progress messages"},
    {"verbose", 'v', NULL, "more messages"},
    {"help", 'h', NULL, "show this help and exit"},
    {"version", 'V', NULL, "show the version and exit"},
    {0},
};
static const lm_cli_spec spec = {
    "[options] [STREAM]\n       lm-warp [options] --flow FIELD MOVING.nii.gz [--seg SEG.nii.gz]",
    "Warp moving images and label maps with displacement fields (voxels): moving -> warped,\n"
    "moving_seg -> warped_seg, using flow or flow_full, whichever is on the tensor's grid.",
    opts,
    "Exit status: 0 success, 1 bad input or failed write, 2 usage error.",
};

static int labels_linear;
static lm_warper warper; /* the record path (libcommon/warp), on the CPU backend */

/* ---- standalone input --------------------------------------------------------------------- */

/* The voxels of moving (geometry gm) must be where the field's (g) are. */
static int same_world(const lm_nifti_geom *g, const lm_nifti_geom *gm, const int64_t dims[3],
                      const char *moving)
{
    lm_grid ga, gb;
    memcpy(ga.dims, dims, sizeof ga.dims);
    memcpy(gb.dims, dims, sizeof gb.dims);
    memcpy(ga.affine, g->affine, sizeof ga.affine);
    memcpy(gb.affine, gm->affine, sizeof gb.affine);
    if (!lm_grid_same(&ga, &gb, 1e-3))
        return lm_error_set("%s: its voxel-to-world affine differs from the field's (resample "
                            "it onto the fixed grid with lm-preprocess first)", moving);
    return 0;
}

/* The metadata of a standalone record: the outputs' geometry and the pair id. */
static int standalone_meta(lm_record *rec, const lm_nifti_geom *g, const int64_t dims[3],
                           const char *moving)
{
    double sp[3] = {g->spacing[0], g->spacing[1], g->spacing[2]},
           full[3] = {(double)dims[0], (double)dims[1], (double)dims[2]};
    if (lm_record_meta_set_doubles(rec, "affine", g->affine, 16) < 0 ||
        lm_record_meta_set_doubles(rec, "spacing", sp, 3) < 0 ||
        lm_record_meta_set_doubles(rec, "full_shape", full, 3) < 0)
        return -1;
    char *st = strdup(moving);
    if (!st)
        return lm_error_set("out of memory");
    char *dot = strstr(st, ".nii"), *sl = strrchr(st, '/');
    if (dot)
        *dot = '\0';
    int rc = lm_record_meta_set(rec, "pair", sl ? sl + 1 : st);
    free(st);
    return rc;
}

static int load_field(const char *path, lm_tensor *flow, lm_nifti_geom *g, int *have_geom)
{
    *have_geom = 0;
    if (lm_nifti_is_name(path)) {
        lm_tensor t;
        if (lm_nifti_read(path, LM_NII_F32, &t, g) < 0)
            return lm_error_prefix("%s", path);
        if (t.ndim != 4 || t.shape[0] != 3) {
            lm_tensor_free(&t);
            return lm_error_set("%s: a displacement field needs 3 components per voxel", path);
        }
        if (g->intent_code == 1006 /* DISPVECT: ITK/ANTs, mm in LPS */ &&
            lm_field_lps_mm_to_vox(t.data, t.data, t.shape[1] * t.shape[2] * t.shape[3],
                                   g->affine) < 0) {
            lm_tensor_free(&t);
            return lm_error_prefix("%s", path);
        }
        int64_t shape[5] = {1, 3, t.shape[1], t.shape[2], t.shape[3]};
        lm_tensor_wrap(flow, "flow", LM_F32, 5, shape, t.data);
        flow->owns = 1;
        t.owns = 0;
        lm_tensor_free(&t);
        *have_geom = 1;
        return 0;
    }
    lm_reader *r = lm_reader_open(path);
    lm_record rec;
    if (!r)
        return lm_error_prefix("%s", path);
    int rc = lm_reader_next(r, &rec);
    lm_reader_close(r);
    if (rc <= 0)
        return rc < 0 ? lm_error_prefix("%s", path) : lm_error_set("%s: empty stream", path);
    const char *name = lm_record_cget(&rec, "flow_full") ? "flow_full" : "flow";
    if (lm_record_take(&rec, name, flow) < 0) {
        lm_record_free(&rec);
        return lm_error_set("%s: no flow or flow_full in the first record", path);
    }
    free(flow->name);
    flow->name = strdup("flow");
    int64_t C, d[3];
    lm_warp_vol_dims(flow, &C, d);
    if (lm_record_meta_get(&rec, "affine")) { /* its own grid: full, or half of full_shape */
        if (lm_warp_geom_for(&rec, d, g) < 0) {
            lm_record_free(&rec);
            lm_tensor_free(flow);
            return lm_error_prefix("%s", path);
        }
        *have_geom = 1;
    }
    lm_record_free(&rec);
    return 0;
}

static int standalone(lm_record *rec, const char *field, const char *moving, const char *seg)
{
    lm_tensor flow, img, lab;
    lm_nifti_geom g, gm;
    int have_geom;
    lm_record_init(rec);
    if (load_field(field, &flow, &g, &have_geom) < 0)
        return -1;
    if (lm_record_put(rec, &flow) < 0 || lm_nifti_read(moving, LM_NII_F32, &img, &gm) < 0)
        return lm_error_prefix("%s", moving);
    if (img.ndim != 3) {
        lm_tensor_free(&img);
        return lm_error_set("%s: a 3-D image is needed", moving);
    }
    const lm_tensor *f = lm_record_cget(rec, "flow");
    if (memcmp(img.shape, f->shape + 2, 3 * sizeof(int64_t))) {
        char a[64], b[64];
        lm_shape_str(a, sizeof a, 3, img.shape);
        lm_tensor_free(&img);
        return lm_error_set("%s: grid %s differs from the field's %s", moving, a,
                            lm_shape_str(b, sizeof b, 3, f->shape + 2));
    }
    /* 7. The same voxels must also be the same place: compare world grids. */
    if (have_geom) {
        if (same_world(&g, &gm, img.shape, moving) < 0) {
            lm_tensor_free(&img);
            return -1;
        }
    } else {
        g = gm;
    }
    int64_t shape[5] = {1, 1, img.shape[0], img.shape[1], img.shape[2]};
    lm_tensor v;
    lm_tensor_wrap(&v, "moving", LM_F32, 5, shape, img.data);
    v.owns = 1;
    img.owns = 0;
    lm_tensor_free(&img);
    if (lm_record_put(rec, &v) < 0)
        return -1;
    if (seg) {
        lm_nifti_geom gs;
        if (lm_nifti_read(seg, LM_NII_LABELS, &lab, &gs) < 0)
            return lm_error_prefix("%s", seg);
        if (lab.ndim != 3 || memcmp(lab.shape, shape + 2, 3 * sizeof(int64_t))) {
            lm_tensor_free(&lab);
            return lm_error_set("%s: label map grid differs from the moving image's", seg);
        }
        lm_tensor_wrap(&v, "moving_seg", LM_I32, 5, shape, lab.data);
        v.owns = 1;
        lab.owns = 0;
        lm_tensor_free(&lab);
        if (lm_record_put(rec, &v) < 0)
            return -1;
    }
    return standalone_meta(rec, &g, shape + 2, moving);
}

/* ---- standalone with NIfTI in and out: the files' order ---------------------------------- */

/* The field, mapped in the file's order (components slowest, then k, j, i): as load_field reads
 * it, but untransposed. *owned is set when a DISPVECT field had to be converted. */
static int map_field(const char *path, lm_nifti_mapped *m, lm_nifti_geom *g, float **owned)
{
    *owned = NULL;
    if (lm_nifti_map(path, LM_NII_F32, m, g) < 0)
        return lm_error_prefix("%s", path);
    if (m->t.ndim != 4 || m->t.shape[0] != 3)
        return lm_error_set("%s: a displacement field needs 3 components per voxel", path);
    if (g->intent_code == 1006) { /* DISPVECT: ITK/ANTs, mm in LPS; voxel by voxel */
        const int64_t n = m->t.shape[1] * m->t.shape[2] * m->t.shape[3];
        if (!(*owned = lm_vol_alloc((size_t)(3 * n) * sizeof **owned)))
            return lm_error_set("out of memory");
        if (lm_field_lps_mm_to_vox(*owned, m->t.data, n, g->affine) < 0)
            return lm_error_prefix("%s", path);
    }
    return 0;
}

/* check_field for a [3,D,H,W] field stored in NIfTI order, with the record path's message: the
 * smallest [1,3,D,H,W] element index of a non-finite component. */
static int check_field_nifti_order(const float *v, const int64_t d[3])
{
    const int64_t D = d[0], H = d[1], W = d[2], N = D * H * W;
    if (!lm_warp_any_nonfinite(v, 3 * N))
        return 0;
    int64_t first = -1;
    for (int64_t f = 0; f < 3 * N; f++)
        if (!isfinite(v[f])) {
            const int64_t c = f / N, r = f % N; /* r = i + D·(j + H·k) */
            const int64_t e = c * N + ((r % D) * H + r / D % H) * W + r / (D * H);
            first = first < 0 || e < first ? e : first;
        }
    return lm_error_set("flow has a non-finite value at element %lld", (long long)first);
}

/* data ([D,H,W], or [C,D,H,W] when C > 1; NIfTI order) to path */
static int write_file_order(const char *path, void *data, lm_dtype dt, int64_t C,
                            const int64_t d[3], const lm_nifti_geom *g, int flags)
{
    lm_tensor v;
    int64_t shape[4] = {C, d[0], d[1], d[2]};
    if (lm_tensor_wrap(&v, "", dt, C > 1 ? 4 : 3, C > 1 ? shape : shape + 1, data) < 0)
        return -1;
    int rc = lm_nifti_write(path, &v, g, flags | LM_NII_FILE_ORDER);
    lm_tensor_free(&v);
    return rc < 0 ? lm_error_prefix("%s", path) : 0;
}

/* The standalone job when the field is a NIfTI file and -o names a NIfTI file: standalone(),
 * process() and the NIfTI writes of main() -- the same checks in the same order, the same
 * messages, the same files -- with every volume in NIfTI order: inputs mapped (or converted
 * where their type asks for it), the warps in the kernels' LM_WARP_NIFTI_ORDER, outputs written
 * untransposed. */
static int standalone_files(const char *field, const char *moving, const char *seg,
                            const char *out, const char *exp, int exp_dir)
{
    lm_nifti_mapped fm, mm, sm;
    lm_nifti_geom g, gm, gs, go;
    lm_record meta;
    float *fconv = NULL, *y = NULL, *mmf = NULL;
    int32_t *ys = NULL;
    char name[1100], tmp[64];
    int rc = -1;
    memset(&mm, 0, sizeof mm);
    memset(&sm, 0, sizeof sm);
    lm_record_init(&meta);
    if (map_field(field, &fm, &g, &fconv) < 0)
        goto done;
    const float *flow = fconv ? fconv : fm.t.data;
    const int64_t d[3] = {fm.t.shape[1], fm.t.shape[2], fm.t.shape[3]}, n = d[0] * d[1] * d[2];
    if (lm_nifti_map(moving, LM_NII_F32, &mm, &gm) < 0) {
        lm_error_prefix("%s", moving);
        goto done;
    }
    if (mm.t.ndim != 3) {
        lm_error_set("%s: a 3-D image is needed", moving);
        goto done;
    }
    if (memcmp(mm.t.shape, d, sizeof d)) {
        char a[64], b[64];
        lm_error_set("%s: grid %s differs from the field's %s", moving,
                     lm_shape_str(a, sizeof a, 3, mm.t.shape), lm_shape_str(b, sizeof b, 3, d));
        goto done;
    }
    if (same_world(&g, &gm, d, moving) < 0)
        goto done;
    if (seg) {
        if (lm_nifti_map(seg, LM_NII_LABELS, &sm, &gs) < 0) {
            lm_error_prefix("%s", seg);
            goto done;
        }
        if (sm.t.ndim != 3 || memcmp(sm.t.shape, d, sizeof d)) {
            lm_error_set("%s: label map grid differs from the moving image's", seg);
            goto done;
        }
    }
    if (standalone_meta(&meta, &g, d, moving) < 0 || check_field_nifti_order(flow, d) < 0)
        goto done;
    /* the warps (both before any write, as process() does) */
    lm_warp_args a = {1, (int)d[0], (int)d[1], (int)d[2], LM_PAD_ZEROS | LM_WARP_NIFTI_ORDER};
    if (!(y = lm_vol_alloc((size_t)n * sizeof *y)) ||
        (seg && !(ys = lm_vol_alloc((size_t)n * sizeof *ys)))) {
        lm_error_set("out of memory");
        goto done;
    }
    if (warper.be->warp_fwd(warper.be, y, mm.t.data, flow, &a) < 0 ||
        (seg && lm_warp_label_map(&warper, ys, sm.t.data, flow, &a) < 0))
        goto done;
    if (lm_warp_geom_for(&meta, d, &go) < 0) {
        lm_error_prefix("warped");
        goto done;
    }
    if (write_file_order(out, y, LM_F32, 1, d, &go, 0) < 0)
        goto done;
    lm_warp_with_suffix(name, sizeof name, out, "_seg");
    if (seg && write_file_order(name, ys, LM_I32, 1, d, &go, 0) < 0)
        goto done;
    if (exp) {
        if (exp_dir)
            snprintf(name, sizeof name, "%s/%s_field.nii.gz", exp,
                     lm_warp_pair_name(&meta, 1, tmp, sizeof tmp));
        else
            snprintf(name, sizeof name, "%s", exp);
        if (!(mmf = lm_vol_alloc((size_t)(3 * n) * sizeof *mmf))) {
            lm_error_set("out of memory");
            goto done;
        }
        lm_field_vox_to_lps_mm(mmf, flow, n, go.affine);
        if (write_file_order(name, mmf, LM_F32, 3, d, &go, LM_NII_VECTOR) < 0)
            goto done;
    }
    rc = 0;
done:
    lm_nifti_unmap(&fm);
    lm_nifti_unmap(&mm);
    lm_nifti_unmap(&sm);
    lm_record_free(&meta);
    free(fconv);
    free(y);
    free(ys);
    free(mmf);
    return rc;
}

/* ---- main --------------------------------------------------------------------------------- */

static int process(lm_record *rec, int argc, char **argv)
{
    if (lm_warp_record(&warper, rec) < 0)
        return -1;
    return lm_record_add_history(rec, argc, argv);
}

int main(int argc, char **argv)
{
    const char *arg, *out = NULL, *field = NULL, *seg = NULL, *exp = NULL;
    int flags = 0, c;
    lm_cli_init(argv[0]);
    while ((c = lm_cli_next(argc, argv, &spec, &arg)) >= 0) {
        const char *o = opts[c].lng;
        if (!strcmp(o, "output"))
            out = arg;
        else if (!strcmp(o, "force"))
            flags |= LM_W_FORCE;
        else if (!strcmp(o, "flow"))
            field = arg;
        else if (!strcmp(o, "seg"))
            seg = arg;
        else if (!strcmp(o, "labels-linear"))
            labels_linear = 1;
        else if (!strcmp(o, "export-field"))
            exp = arg;
        else if (!strcmp(o, "quiet"))
            lm_verbose = -1;
        else if (!strcmp(o, "verbose"))
            lm_verbose++;
    }
    int nops = argc - optind;
    if (field ? nops != 1 : nops > 1)
        lm_usage_error(field ? "--flow needs exactly one MOVING image" : "at most one STREAM");
    if (seg && !field)
        lm_usage_error("--seg is for the standalone mode (with --flow)");
    lm_warper_init(&warper, lm_backend_cpu(), labels_linear);
    int nifti_out = out && lm_nifti_is_name(out), dir_out = lm_warp_is_dir(out);
    int exp_dir = lm_warp_is_dir(exp);
    if (exp && !exp_dir && !lm_nifti_is_name(exp))
        lm_usage_error("--export-field: '%s' is neither a directory nor a .nii/.nii.gz name", exp);
    lm_warp_out *wo = NULL;
    if (!field || !nifti_out || !lm_nifti_is_name(field)) /* the record path's outputs */
        if (!(wo = lm_warp_out_open(out, exp, 0)))
            lm_die(LM_EXIT_FAIL, "%s", lm_error());
    lm_writer *w = NULL;
    if (!nifti_out && !dir_out && !(w = lm_writer_open(out, flags)))
        lm_die_error(out ? out : "stdout");
    lm_reader *r = NULL;
    if (!field && !(r = lm_reader_open(nops ? argv[optind] : "-"))) {
        lm_writer_abort(w);
        lm_die_error(nops ? argv[optind] : "stdin");
    }
    char msg[1200];
    const char *where = field ? "" : lm_reader_name(r);
    long n = 0;
    lm_progress prog;
    lm_progress_start(&prog, "warping", 0, "pairs");
    if (!wo) { /* NIfTI in and out: no record */
        if (standalone_files(field, argv[optind], seg, out, exp, exp_dir) < 0)
            lm_die(LM_EXIT_FAIL, "%s", lm_error());
        lm_progress_update(&prog, 1);
        lm_progress_end(&prog);
        return LM_EXIT_OK;
    }
    lm_record rec;
    int rc = field ? (standalone(&rec, field, argv[optind], seg) == 0 ? 1 : -1)
                   : lm_reader_next(r, &rec);
    while (rc > 0) {
        n++;
        if (!field && lm_warp_out_refuse_more(wo, r) < 0) { /* before writing anything */
            rc = -1;
            break;
        }
        if (process(&rec, argc, argv) < 0) {
            rc = field ? -1 : lm_error_prefix("record %ld", n);
            break;
        }
        if (lm_warp_out_images(wo, &rec, n) < 0) {
            rc = -1;
            break;
        }
        if (w && lm_writer_put(w, &rec) < 0) {
            rc = lm_error_prefix("%s", lm_writer_name(w));
            break;
        }
        if (lm_warp_out_field(wo, &warper, &rec, n) < 0) {
            rc = -1;
            break;
        }
        lm_record_free(&rec);
        lm_progress_update(&prog, n);
        rc = field ? 0 : lm_reader_next(r, &rec);
    }
    if (rc < 0) {
        snprintf(msg, sizeof msg, "%s%s%s", where, *where ? ": " : "", lm_error());
        lm_warp_out_abort(wo);
        lm_writer_abort(w);
        lm_reader_close(r);
        lm_die(LM_EXIT_FAIL, "%s", msg);
    }
    lm_warp_out_commit(wo); /* nothing staged: frees it */
    lm_progress_end(&prog);
    lm_reader_close(r);
    if (w && lm_writer_commit(w) < 0)
        lm_die_error(out ? out : "stdout");
    if (!n)
        lm_warn("no records");
    return LM_EXIT_OK;
}
