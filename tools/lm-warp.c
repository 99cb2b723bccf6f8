/* lm-warp — applies a displacement field (voxel units, MODEL.md §0/§8) to the moving image and
 * label map of each record: `moving` -> `warped` (trilinear, zeros outside) and `moving_seg` ->
 * `warped_seg` (nearest, or one-hot trilinear + argmax with --labels-linear), each with the
 * field that lives on its grid (`flow` or `flow_full`). Everything else passes through.
 * Outputs a stream, or NIfTI files with the fixed image's geometry, and can export the field as
 * an ITK/ANTs displacement field in mm. Standalone: --flow FIELD applied to NIfTI files; with a
 * NIfTI field and NIfTI outputs that job never builds a record: the volumes stay in the files'
 * order (lm_nifti_map, LM_WARP_NIFTI_ORDER, LM_NII_FILE_ORDER), untransposed and uncopied,
 * and give the record path's files byte for byte.
 * The warps run on the kernel backend (kernels/lm_kernels.h); field conversions are in
 * libcommon/prep.
 */
#include "cli/lm_cli.h"
#include "lm_io.h"
#include "lm_kernels.h"
#include "prep/lm_prep.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
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
static lm_backend *be;

/* [1,C,D,H,W] or [C,D,H,W] or [D,H,W] -> C and D,H,W */
static int vol_dims(const lm_tensor *t, int64_t *C, int64_t dhw[3])
{
    if (t->ndim < 3 || t->ndim > 5 || (t->ndim == 5 && t->shape[0] != 1))
        return -1;
    *C = t->ndim == 3 ? 1 : t->shape[t->ndim - 4];
    for (int i = 0; i < 3; i++)
        dhw[i] = t->shape[t->ndim - 3 + i];
    return 0;
}

/* The field (flow or flow_full) whose grid is dhw, or NULL. */
static const lm_tensor *field_for(const lm_record *rec, const int64_t dhw[3])
{
    static const char *names[2] = {"flow_full", "flow"};
    for (int i = 0; i < 2; i++) {
        const lm_tensor *f = lm_record_cget(rec, names[i]);
        int64_t C, d[3];
        if (f && vol_dims(f, &C, d) == 0 && C == 3 && !memcmp(d, dhw, sizeof d))
            return f;
    }
    return NULL;
}

/* Whether v[0..n) holds a NaN or an infinity: exponent bits all set, tested in blocks that
 * threads share out (no early exit: the common case is a clean field read once). */
static int any_nonfinite(const float *v, int64_t n)
{
    const uint32_t *u = (const uint32_t *)(const void *)v;
    int any = 0;
#pragma omp parallel for schedule(static) reduction(| : any) if (n >= 65536)
    for (int64_t b = 0; b < n; b += 4096) {
        const int64_t e = b + 4096 < n ? b + 4096 : n;
        uint32_t hit = 0;
#pragma omp simd reduction(| : hit)
        for (int64_t i = b; i < e; i++)
            hit |= (u[i] & 0x7f800000u) == 0x7f800000u;
        any |= hit != 0;
    }
    return any;
}

/* The data of the fields of the record in hand already found finite (reset per record). */
static const void *checked[2];

static int check_field(const lm_tensor *f)
{
    if (f->dtype != LM_F32)
        return lm_error_set("%s must be F32, not %s", f->name, lm_dtype_name(f->dtype));
    if (f->data && (f->data == checked[0] || f->data == checked[1]))
        return 0;
    const float *v = f->data;
    const int64_t n = lm_tensor_numel(f);
    if (any_nonfinite(v, n))
        for (int64_t i = 0; i < n; i++)
            if (!isfinite(v[i]))
                return lm_error_set("%s has a non-finite value at element %lld", f->name,
                                    (long long)i);
    checked[checked[0] ? 1 : 0] = f->data;
    return 0;
}

/* Runs op on the backend: uploads src and flow, downloads y (the CPU backend's buffers are host
 * memory: the op runs on them in place). */
static int run_warp(void *y, const void *src, const float *flow, size_t src_bytes,
                    size_t y_bytes, const lm_warp_args *a, int nearest, lm_dtype dt)
{
    if (be->kind == LM_BACKEND_CPU)
        return nearest ? be->warp_nearest(be, y, src, flow, dt, a)
                       : be->warp_fwd(be, y, src, flow, a);
    size_t fbytes = (size_t)3 * (size_t)a->D * (size_t)a->H * (size_t)a->W * sizeof(float);
    void *bs = lm_backend_alloc(be, src_bytes), *by = lm_backend_alloc(be, y_bytes);
    float *bf = lm_backend_alloc(be, fbytes);
    int rc = -1;
    if (!bs || !by || !bf)
        goto done;
    if (lm_backend_upload(be, bs, src, src_bytes) < 0 || lm_backend_upload(be, bf, flow, fbytes) < 0)
        goto done;
    rc = nearest ? be->warp_nearest(be, by, bs, bf, dt, a) : be->warp_fwd(be, by, bs, bf, a);
    if (rc == 0)
        rc = lm_backend_download(be, y, by, y_bytes);
done:
    lm_backend_free(be, bs);
    lm_backend_free(be, by);
    lm_backend_free(be, bf);
    return rc;
}

static int warp_image(lm_record *rec, const lm_tensor *src)
{
    int64_t C, d[3];
    if (vol_dims(src, &C, d) < 0)
        return lm_error_set("moving: expected [1,C,D,H,W], got %d dims", src->ndim);
    const lm_tensor *f = field_for(rec, d);
    if (!f) {
        char a[64];
        return lm_error_set("no flow or flow_full on moving's grid %s",
                            lm_shape_str(a, sizeof a, 3, d));
    }
    if (check_field(f) < 0)
        return -1;
    lm_tensor s32 = {0}, out;
    if (src->dtype != LM_F32 && lm_tensor_convert(&s32, src, LM_F32) < 0)
        return -1;
    const lm_tensor *s = src->dtype == LM_F32 ? src : &s32;
    if (lm_tensor_alloc(&out, "warped", LM_F32, src->ndim, src->shape) < 0) {
        lm_tensor_free(&s32);
        return -1;
    }
    lm_warp_args a = {(int)C, (int)d[0], (int)d[1], (int)d[2], LM_PAD_ZEROS};
    int rc = run_warp(out.data, s->data, f->data, s->nbytes, out.nbytes, &a, 0, LM_F32);
    lm_tensor_free(&s32);
    if (rc == 0)
        rc = lm_record_put(rec, &out);
    lm_tensor_free(&out);
    return rc;
}

/* lab = the label map sv warped by flow: nearest, or with --labels-linear one-hot trilinear
 * (MODEL.md §8), one label at a time to bound memory, keeping the running argmax (ties to the
 * earlier label, background 0 first). Voxel by voxel, so a's array order is free. */
static int warp_label_map(int32_t *lab, const int32_t *sv, const float *flow,
                          const lm_warp_args *a)
{
    const int64_t n = (int64_t)a->D * a->H * a->W;
    if (!labels_linear)
        return run_warp(lab, sv, flow, (size_t)n * 4, (size_t)n * 4, a, 1, LM_I32);
    long ids[4096];
    int k = lm_labels_present(sv, n, ids, 4096);
    float *mask = malloc((size_t)n * sizeof *mask), *prob = malloc((size_t)n * sizeof *prob),
          *best = malloc((size_t)n * sizeof *best);
    int rc = mask && prob && best && k >= 0 && k <= 4096
                 ? 0
                 : lm_error_set("out of memory, or more than 4096 labels");
    for (int j = -1; rc == 0 && j < k; j++) {
        int32_t v = j < 0 ? 0 : (int32_t)ids[j];
        for (int64_t i = 0; i < n; i++)
            mask[i] = sv[i] == v ? 1.0f : 0.0f;
        rc = run_warp(prob, mask, flow, (size_t)n * 4, (size_t)n * 4, a, 0, LM_F32);
        for (int64_t i = 0; rc == 0 && i < n; i++)
            if (j < 0 || prob[i] > best[i]) {
                best[i] = prob[i];
                lab[i] = v;
            }
    }
    free(mask);
    free(prob);
    free(best);
    return rc;
}

static int warp_labels(lm_record *rec, const lm_tensor *src)
{
    int64_t C, d[3];
    if (vol_dims(src, &C, d) < 0 || C != 1)
        return lm_error_set("moving_seg: expected a [1,1,D,H,W] label map");
    if (lm_dtype_is_float(src->dtype))
        return lm_error_set("moving_seg must be an integer label map, not %s",
                            lm_dtype_name(src->dtype));
    const lm_tensor *f = field_for(rec, d);
    if (!f) {
        char a[64];
        return lm_error_set("no flow or flow_full on moving_seg's grid %s",
                            lm_shape_str(a, sizeof a, 3, d));
    }
    if (check_field(f) < 0)
        return -1;
    lm_tensor s32 = {0}, o32, out;
    int rc = -1;
    if (src->dtype != LM_I32 && lm_tensor_convert(&s32, src, LM_I32) < 0)
        return -1;
    const lm_tensor *s = src->dtype == LM_I32 ? src : &s32;
    if (lm_tensor_alloc(&o32, "warped_seg", LM_I32, src->ndim, src->shape) < 0)
        goto done0;
    lm_warp_args a = {1, (int)d[0], (int)d[1], (int)d[2], LM_PAD_ZEROS};
    rc = warp_label_map(o32.data, s->data, f->data, &a);
    if (rc == 0 && src->dtype == LM_I32) {
        rc = lm_record_put(rec, &o32);
    } else if (rc == 0 && lm_tensor_convert(&out, &o32, src->dtype) == 0) {
        rc = lm_record_put(rec, &out);
        lm_tensor_free(&out);
    } else if (rc == 0) {
        rc = -1;
    }
    lm_tensor_free(&o32);
done0:
    lm_tensor_free(&s32);
    return rc;
}

/* ---- geometry of outputs ------------------------------------------------------------------ */

/* NIfTI geometry for a tensor of grid dhw: the record's full grid, or its half. */
static int geom_for(const lm_record *rec, const int64_t dhw[3], lm_nifti_geom *g)
{
    double aff[16], full[3];
    int na = lm_record_meta_doubles(rec, "affine", aff, 16);
    int nf = lm_record_meta_doubles(rec, "full_shape", full, 3);
    if (na < 0 || nf < 0)
        return -1;
    if (na != 16) {
        lm_warn("record has no 'affine' metadata: writing an identity 1 mm geometry");
        double eye[16] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1};
        memcpy(aff, eye, sizeof aff);
        for (int i = 0; i < 3; i++)
            full[i] = (double)dhw[i];
    } else if (nf != 3) {
        for (int i = 0; i < 3; i++)
            full[i] = (double)dhw[i];
    }
    lm_grid gr;
    for (int i = 0; i < 3; i++)
        gr.dims[i] = (int64_t)full[i];
    memcpy(gr.affine, aff, sizeof aff);
    if (dhw[0] * 2 == gr.dims[0] && dhw[1] * 2 == gr.dims[1] && dhw[2] * 2 == gr.dims[2]) {
        lm_grid h;
        lm_grid_half(&h, &gr);
        gr = h;
    } else if (memcmp(dhw, gr.dims, sizeof gr.dims)) {
        char a[64], b[64];
        return lm_error_set("tensor grid %s matches neither full_shape %s nor its half",
                            lm_shape_str(a, sizeof a, 3, dhw), lm_shape_str(b, sizeof b, 3, gr.dims));
    }
    lm_nifti_geom_from_affine(g, gr.affine, gr.dims);
    return 0;
}

static int is_dir(const char *p)
{
    struct stat st;
    return p && stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* "x.nii.gz" + "_seg" -> "x_seg.nii.gz" */
static void with_suffix(char *out, size_t cap, const char *path, const char *suffix)
{
    size_t n = strlen(path);
    size_t ext = n > 7 && !strcmp(path + n - 7, ".nii.gz") ? 7 : n > 4 && !strcmp(path + n - 4, ".nii") ? 4 : 0;
    snprintf(out, cap, "%.*s%s%s", (int)(n - ext), path, suffix, path + n - ext);
}

static int write_nifti(const lm_record *rec, const char *name, const char *path)
{
    const lm_tensor *t = lm_record_cget(rec, name);
    int64_t C, d[3];
    lm_nifti_geom g;
    if (!t)
        return 0;
    if (vol_dims(t, &C, d) < 0 || geom_for(rec, d, &g) < 0)
        return lm_error_prefix("%s", name);
    lm_tensor v;
    int64_t shape[4] = {C, d[0], d[1], d[2]};
    if (lm_tensor_wrap(&v, name, t->dtype, C > 1 ? 4 : 3, C > 1 ? shape : shape + 1, t->data) < 0)
        return -1;
    int rc = lm_nifti_write(path, &v, &g, 0);
    lm_tensor_free(&v);
    return rc < 0 ? lm_error_prefix("%s", path) : 0;
}

static int export_field(const lm_record *rec, const char *path)
{
    const lm_tensor *f = lm_record_cget(rec, "flow_full");
    if (!f)
        f = lm_record_cget(rec, "flow");
    if (!f)
        return lm_error_set("no flow or flow_full to export");
    int64_t C, d[3];
    lm_nifti_geom g;
    if (vol_dims(f, &C, d) < 0 || C != 3)
        return lm_error_set("%s: expected [1,3,D,H,W]", f->name);
    if (check_field(f) < 0 || geom_for(rec, d, &g) < 0)
        return -1;
    int64_t shape[4] = {3, d[0], d[1], d[2]};
    lm_tensor mm;
    if (lm_tensor_alloc(&mm, "field", LM_F32, 4, shape) < 0)
        return -1;
    lm_field_vox_to_lps_mm(mm.data, f->data, d[0] * d[1] * d[2], g.affine);
    int rc = lm_nifti_write(path, &mm, &g, LM_NII_VECTOR);
    lm_tensor_free(&mm);
    return rc < 0 ? lm_error_prefix("%s", path) : 0;
}

static const char *pair_name(const lm_record *rec, long idx, char *buf, size_t cap)
{
    const char *p = lm_record_meta_get(rec, "pair");
    if (p && *p && !strchr(p, '/'))
        return p;
    snprintf(buf, cap, "pair%04ld", idx);
    return buf;
}

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
    vol_dims(flow, &C, d);
    if (lm_record_meta_get(&rec, "affine")) { /* its own grid: full, or half of full_shape */
        if (geom_for(&rec, d, g) < 0) {
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

/* Memory for a whole volume, released with free(): in 2 MiB pages where the kernel has them
 * for the asking (transparent huge pages, "madvise" mode), which costs far fewer page faults
 * than 4 KiB pages when the volume is first written. */
static void *vol_alloc(size_t bytes)
{
    const size_t huge = (size_t)2 << 20;
    if (bytes < huge)
        return malloc(bytes ? bytes : 1);
    void *p = aligned_alloc(huge, (bytes + huge - 1) / huge * huge);
#ifdef MADV_HUGEPAGE
    if (p)
        madvise(p, (bytes + huge - 1) / huge * huge, MADV_HUGEPAGE);
#endif
    return p;
}

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
        if (!(*owned = vol_alloc((size_t)(3 * n) * sizeof **owned)))
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
    if (!any_nonfinite(v, 3 * N))
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
    if (!(y = vol_alloc((size_t)n * sizeof *y)) ||
        (seg && !(ys = vol_alloc((size_t)n * sizeof *ys)))) {
        lm_error_set("out of memory");
        goto done;
    }
    if (be->warp_fwd(be, y, mm.t.data, flow, &a) < 0 ||
        (seg && warp_label_map(ys, sm.t.data, flow, &a) < 0))
        goto done;
    if (geom_for(&meta, d, &go) < 0) {
        lm_error_prefix("warped");
        goto done;
    }
    if (write_file_order(out, y, LM_F32, 1, d, &go, 0) < 0)
        goto done;
    with_suffix(name, sizeof name, out, "_seg");
    if (seg && write_file_order(name, ys, LM_I32, 1, d, &go, 0) < 0)
        goto done;
    if (exp) {
        if (exp_dir)
            snprintf(name, sizeof name, "%s/%s_field.nii.gz", exp,
                     pair_name(&meta, 1, tmp, sizeof tmp));
        else
            snprintf(name, sizeof name, "%s", exp);
        if (!(mmf = vol_alloc((size_t)(3 * n) * sizeof *mmf))) {
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
    const lm_tensor *m = lm_record_cget(rec, "moving"), *s = lm_record_cget(rec, "moving_seg");
    checked[0] = checked[1] = NULL;
    if (!m && !s)
        return lm_error_set("no moving or moving_seg to warp");
    if (m && warp_image(rec, m) < 0)
        return -1;
    s = lm_record_cget(rec, "moving_seg"); /* the table may have moved */
    if (s && warp_labels(rec, s) < 0)
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
    be = lm_backend_cpu();
    int nifti_out = out && lm_nifti_is_name(out), dir_out = is_dir(out);
    int exp_dir = is_dir(exp);
    if (exp && !exp_dir && !lm_nifti_is_name(exp))
        lm_usage_error("--export-field: '%s' is neither a directory nor a .nii/.nii.gz name", exp);
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
    int single = nifti_out || (exp && !exp_dir); /* one record only */
    char **seen = NULL;                          /* pair ids written into directories */
    long nseen = 0;
    lm_progress prog;
    lm_progress_start(&prog, "warping", 0, "pairs");
    if (field && nifti_out && lm_nifti_is_name(field)) { /* NIfTI in and out: no record */
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
        char base[1024], name[1100], tmp[64];
        n++;
        if (single && !field) { /* refuse before writing anything */
            lm_record next;
            int more = lm_reader_next(r, &next);
            if (more > 0) {
                lm_record_free(&next);
                rc = lm_error_set("%s names one NIfTI file but the stream has several records "
                                  "(give a directory)",
                                  nifti_out ? "-o" : "--export-field");
                break;
            }
            if (more < 0) {
                rc = -1;
                break;
            }
        }
        if (process(&rec, argc, argv) < 0) {
            rc = field ? -1 : lm_error_prefix("record %ld", n);
            break;
        }
        const char *id = pair_name(&rec, n, tmp, sizeof tmp);
        if (dir_out || exp_dir) {
            for (long i = 0; i < nseen; i++)
                if (!strcmp(seen[i], id)) {
                    rc = lm_error_set("record %ld: pair id '%s' appears twice; its files would "
                                      "overwrite each other", n, id);
                    break;
                }
            if (rc < 0)
                break;
            char **ns = realloc(seen, (size_t)(nseen + 1) * sizeof *seen);
            if (!ns || !(ns[nseen] = strdup(id))) {
                seen = ns ? ns : seen;
                rc = lm_error_set("out of memory");
                break;
            }
            seen = ns;
            nseen++;
        }
        if (nifti_out || dir_out) {
            if (nifti_out)
                snprintf(base, sizeof base, "%s", out);
            else
                snprintf(base, sizeof base, "%s/%s_warped.nii.gz", out, id);
            with_suffix(name, sizeof name, base, "_seg");
            if (write_nifti(&rec, "warped", base) < 0 || write_nifti(&rec, "warped_seg", name) < 0) {
                rc = -1;
                break;
            }
        } else if (lm_writer_put(w, &rec) < 0) {
            rc = lm_error_prefix("%s", lm_writer_name(w));
            break;
        }
        if (exp) {
            if (exp_dir)
                snprintf(name, sizeof name, "%s/%s_field.nii.gz", exp, id);
            else
                snprintf(name, sizeof name, "%s", exp);
            if (export_field(&rec, name) < 0) {
                rc = -1;
                break;
            }
        }
        lm_record_free(&rec);
        lm_progress_update(&prog, n);
        rc = field ? 0 : lm_reader_next(r, &rec);
    }
    for (long i = 0; i < nseen; i++)
        free(seen[i]);
    free(seen);
    if (rc < 0) {
        snprintf(msg, sizeof msg, "%s%s%s", where, *where ? ": " : "", lm_error());
        lm_writer_abort(w);
        lm_reader_close(r);
        lm_die(LM_EXIT_FAIL, "%s", msg);
    }
    lm_progress_end(&prog);
    lm_reader_close(r);
    if (w && lm_writer_commit(w) < 0)
        lm_die_error(out ? out : "stdout");
    if (!n)
        lm_warn("no records");
    return LM_EXIT_OK;
}
