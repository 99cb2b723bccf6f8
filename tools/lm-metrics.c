/* lm-metrics — scores registrations: Dice per label, HD95 in mm and, where a displacement field
 * comes with the pair, the folding percentage and SDlogJ of its Jacobian (MODEL.md §11), per
 * pair and as mean and std over the pairs. Reads a tensor stream (warped_seg or moving_seg,
 * fixed_seg, flow_full or flow, metadata pair, spacing and labels) or, standalone, two NIfTI
 * label maps and an optional field. The numbers come from libcommon/eval; this file chooses labels,
 * checks inputs and formats the table.
 *
 * Output is TSV (or JSON) assembled in memory and written only after every pair was scored,
 * so a failure leaves no partial output; -o writes through a temporary file and a rename.
 */
#include "cli/lm_cli.h"
#include "eval/lm_metrics.h"
#include "lm_io.h"

#include <cJSON.h>
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const lm_option opts[] = {
    {"output", 'o', "FILE", "write the table to FILE (atomically) instead of standard output"},
    {"json", 'j', NULL, "print one JSON document instead of the TSV table"},
    {"ignore", 'i', "LIST", "label values never scored, comma-separated (default 0; '' for none)"},
    {"labels", 'l', "LIST", "score exactly these labels (comma-separated; default: all present)"},
    {"hd", 0, "MODE", "HD95 convention: medpy (pooled 95th percentile, default) or monai"},
    {"jac", 0, "MODE", "Jacobian: vxm (np.gradient, det<=0, default) or sitk-mm (MambaMorph)"},
    {"initial", 0, NULL, "score moving_seg instead of warped_seg: the identity transform"},
    {"skip-missing", 0, NULL, "drop a label absent from both maps of a pair instead of failing"},
    {"spacing", 's', "SD,SH,SW", "voxel spacing in mm (default: the spacing metadata or header)"},
    {"fixed-seg", 'F', "FILE", "standalone: the fixed label map (NIfTI)"},
    {"warped-seg", 'W', "FILE", "standalone: the warped moving label map (NIfTI)"},
    {"flow", 0, "FILE", "standalone: a stream whose first record holds flow_full or flow"},
    {"threads", 't', "N", "use N threads (default: LM_THREADS, else all cores)"},
    {"quiet", 'q', NULL, "no progress and no reports of skipped labels"},
    {"verbose", 'v', NULL, "one line per pair on standard error"},
    {"help", 'h', NULL, "show this help and exit"},
    {"version", 'V', NULL, "show the version and exit"},
    {0},
};
static const lm_cli_spec spec = {
    "[options] [FILE...]\n       lm-metrics [options] -F FIXED.nii.gz -W WARPED.nii.gz [--flow "
    "FILE]",
    "Score registrations: Dice (%), HD95 (mm), % of non-positive Jacobian determinants and\n"
    "SDlogJ per pair, then mean and std over the pairs. Reads tensor streams (FILE, or standard\n"
    "input when there is none or FILE is -) whose records hold warped_seg (moving_seg with\n"
    "--initial), fixed_seg and optionally flow_full or flow; or two NIfTI label maps.",
    opts,
    "Exit status: 0 success, 1 unreadable or unscorable input or failed write, 2 usage error.",
};

/* ---- options ---- */
static int json_out, initial, skip_missing, have_spacing, nlabels_opt = -1, nignore = 1;
static int32_t *labels_opt, *ignore_set;
static int32_t ignore_default = 0;
static double spacing_opt[3];
static lm_hd_mode hd_mode = LM_HD_MEDPY;
static lm_jac_mode jac_mode = LM_JAC_VXM;

/* ---- results, one per pair ---- */
typedef struct {
    char *pair, *where; /* where: "FILE: record N" for messages */
    int n;              /* labels scored */
    int32_t *lab;       /* sorted */
    double *dice, *hd;  /* dice in %, hd in mm (NaN: skipped) */
    int32_t *present;   /* labels present in either map (not ignored), for the missing check */
    int npresent;
    int has_jac;
    double jac_pct, sdlogj;
} result;

static result *res;
static int nres, capres;

/* Reports of skipped labels wait here and go to stderr only when the run succeeds, so that a
 * failure is exactly one line. */
static FILE *notes;
static char *notes_buf;
static size_t notes_len;

static void note(const char *fmt, ...) LM_PRINTF(1, 2);
static void note(const char *fmt, ...)
{
    va_list ap;
    if (lm_verbose < 0)
        return;
    if (!notes && !(notes = open_memstream(&notes_buf, &notes_len)))
        return;
    fprintf(notes, "%s: ", lm_progname());
    va_start(ap, fmt);
    vfprintf(notes, fmt, ap);
    va_end(ap);
    fputc('\n', notes);
}

static int parse_labels(const char *s, int32_t **out, int *n)
{
    int cap = 8, k = 0;
    int32_t *v = malloc((size_t)cap * sizeof *v);
    if (!v)
        return -1;
    for (const char *p = s; *p;) {
        const char *q = strchr(p, ',');
        size_t len = q ? (size_t)(q - p) : strlen(p);
        char buf[32];
        long x;
        if (len == 0 || len >= sizeof buf) {
            free(v);
            return -1;
        }
        memcpy(buf, p, len);
        buf[len] = 0;
        if (lm_parse_long(buf, INT32_MIN, INT32_MAX, &x) < 0) {
            free(v);
            return -1;
        }
        if (k == cap) {
            int32_t *nv = realloc(v, (size_t)(cap *= 2) * sizeof *v);
            if (!nv) {
                free(v);
                return -1;
            }
            v = nv;
        }
        v[k++] = (int32_t)x;
        p = q ? q + 1 : p + len;
        if (q && !*p) { /* trailing comma */
            free(v);
            return -1;
        }
    }
    *out = v;
    *n = k;
    return 0;
}

static int in_set(const int32_t *s, int n, int32_t v)
{
    for (int i = 0; i < n; i++)
        if (s[i] == v)
            return 1;
    return 0;
}

static int cmp_i32(const void *x, const void *y)
{
    int32_t a = *(const int32_t *)x, b = *(const int32_t *)y;
    return (a > b) - (a < b);
}

/* ---- input checks ---- */

/* A label map as [D,H,W] int32: any integer dtype, shape [1,1,D,H,W] or [D,H,W]. */
static int label_map(lm_tensor *out, const lm_tensor *t, int64_t dims[3])
{
    if (!(t->ndim == 3 || (t->ndim == 5 && t->shape[0] == 1 && t->shape[1] == 1))) {
        char sh[160];
        return lm_error_set("%s: a label map must be [1,1,D,H,W] or [D,H,W], not %s", t->name,
                            lm_shape_str(sh, sizeof sh, t->ndim, t->shape));
    }
    if (lm_dtype_is_float(t->dtype) || t->dtype == LM_BOOL)
        return lm_error_set("%s: a label map must have an integer dtype, not %s", t->name,
                            lm_dtype_name(t->dtype));
    for (int a = 0; a < 3; a++)
        dims[a] = t->shape[t->ndim - 3 + a];
    if (dims[0] * dims[1] * dims[2] == 0)
        return lm_error_set("%s: empty label map", t->name);
    if (t->dtype == LM_U32 || t->dtype == LM_I64 || t->dtype == LM_U64) {
        int64_t n = lm_tensor_numel(t);
        for (int64_t i = 0; i < n; i++) {
            double v = lm_tensor_get(t, i);
            if (v < INT32_MIN || v > INT32_MAX)
                return lm_error_set("%s: label %.0f does not fit in 32 bits", t->name, v);
        }
    }
    if (lm_tensor_convert(out, t, LM_I32) < 0)
        return lm_error_prefix("%s", t->name);
    return 0;
}

/* The field as [3,D,H,W] F32 or F64, every value finite. */
static int flow_field(lm_tensor *out, const lm_tensor *t, int64_t dims[3])
{
    if (!((t->ndim == 4 && t->shape[0] == 3) ||
          (t->ndim == 5 && t->shape[0] == 1 && t->shape[1] == 3))) {
        char sh[160];
        return lm_error_set("%s: a displacement field must be [1,3,D,H,W] or [3,D,H,W], not %s",
                            t->name, lm_shape_str(sh, sizeof sh, t->ndim, t->shape));
    }
    if (!lm_dtype_is_float(t->dtype))
        return lm_error_set("%s: a displacement field must be floating point, not %s", t->name,
                            lm_dtype_name(t->dtype));
    for (int a = 0; a < 3; a++)
        dims[a] = t->shape[t->ndim - 3 + a];
    lm_dtype dt = t->dtype == LM_F64 ? LM_F64 : LM_F32;
    if (lm_tensor_convert(out, t, dt) < 0)
        return lm_error_prefix("%s", t->name);
    int64_t n = lm_tensor_numel(out), bad = 0, first = -1;
    for (int64_t i = 0; i < n; i++) {
        double v = dt == LM_F64 ? ((const double *)out->data)[i] : ((const float *)out->data)[i];
        if (!isfinite(v)) {
            bad++;
            if (first < 0)
                first = i;
        }
    }
    if (bad) {
        lm_tensor_free(out);
        return lm_error_set("%s: %lld non-finite values (the first at element %lld)", t->name,
                            (long long)bad, (long long)first);
    }
    return 0;
}

/* "[2.0,2.0,2.0]" -> three positive finite numbers */
static int parse_spacing_json(const char *s, double sp[3])
{
    cJSON *j = cJSON_Parse(s);
    int ok = cJSON_IsArray(j) && cJSON_GetArraySize(j) == 3;
    for (int a = 0; ok && a < 3; a++) {
        const cJSON *v = cJSON_GetArrayItem(j, a);
        ok = cJSON_IsNumber(v) && isfinite(v->valuedouble) && v->valuedouble > 0;
        if (ok)
            sp[a] = v->valuedouble;
    }
    cJSON_Delete(j);
    return ok ? 0 : -1;
}

/* The record's "labels" metadata, "[0,1,2,3]": the label values of its maps (lm-preprocess);
 * ignored values are dropped. */
static int parse_labels_json(const char *s, int32_t **out, int *n)
{
    cJSON *j = cJSON_Parse(s);
    int k = cJSON_IsArray(j) ? cJSON_GetArraySize(j) : -1, m = 0;
    int32_t *v = k > 0 ? malloc((size_t)k * sizeof *v) : NULL;
    for (int i = 0; v && i < k; i++) {
        const cJSON *e = cJSON_GetArrayItem(j, i);
        double x = cJSON_IsNumber(e) ? e->valuedouble : 0.5;
        if (x != floor(x) || x < INT32_MIN || x > INT32_MAX) {
            free(v);
            v = NULL;
        } else if (!in_set(ignore_set, nignore, (int32_t)x) && !in_set(v, m, (int32_t)x)) {
            v[m++] = (int32_t)x;
        }
    }
    cJSON_Delete(j);
    if (!v)
        return -1;
    *out = v;
    *n = m;
    return 0;
}

/* ---- scoring one pair ---- */

static int score(result *r, const int32_t *w, const int32_t *f, const int64_t dims[3],
                 const double sp[3], const lm_tensor *flow, const int64_t fdims[3],
                 const int32_t *meta_labels, int nmeta_labels)
{
    int rc = -1, nu = 0;
    int32_t *u = NULL;
    lm_label_stats *st = NULL;
    double *det = NULL;
    int64_t n = dims[0] * dims[1] * dims[2];
    if (lm_labels_union(&u, &nu, w, f, n) < 0)
        goto out;
    /* present (not ignored) labels, kept for the check across pairs */
    r->present = malloc((size_t)(nu ? nu : 1) * sizeof *r->present);
    if (!r->present)
        goto oom;
    for (int i = 0; i < nu; i++)
        if (!in_set(ignore_set, nignore, u[i]))
            r->present[r->npresent++] = u[i];
    const int32_t *want = nlabels_opt >= 0 ? labels_opt : meta_labels ? meta_labels : r->present;
    int nwant = nlabels_opt >= 0 ? nlabels_opt : meta_labels ? nmeta_labels : r->npresent;
    r->lab = malloc((size_t)(nwant ? nwant : 1) * sizeof *r->lab);
    r->dice = malloc((size_t)(nwant ? nwant : 1) * sizeof *r->dice);
    r->hd = malloc((size_t)(nwant ? nwant : 1) * sizeof *r->hd);
    st = malloc((size_t)(nwant ? nwant : 1) * sizeof *st);
    if (!r->lab || !r->dice || !r->hd || !st)
        goto oom;
    memcpy(r->lab, want, (size_t)nwant * sizeof *want);
    r->n = nwant;
    if (lm_label_stats_compute(st, w, f, dims, r->lab, r->n) < 0)
        goto out;
    /* labels in neither map (only possible with --labels here; across pairs: see finish) */
    int k = 0, nmiss = 0;
    char miss[512] = "";
    for (int i = 0; i < r->n; i++) {
        if (st[i].na == 0 && st[i].nb == 0) {
            if (!skip_missing) {
                lm_error_set("label %d is in neither map (--skip-missing drops it)", r->lab[i]);
                goto out;
            }
            size_t l = strlen(miss);
            snprintf(miss + l, sizeof miss - l, "%s%d", nmiss++ ? "," : "", r->lab[i]);
            continue;
        }
        st[k] = st[i];
        r->lab[k++] = r->lab[i];
    }
    r->n = k;
    if (nmiss)
        note("%s: label%s %s in neither map, skipped", r->pair, nmiss > 1 ? "s" : "", miss);
    if (r->n == 0) {
        lm_error_set("no label to score");
        goto out;
    }
    int nskip = 0;
    char skipped[512] = "";
    for (int i = 0; i < r->n; i++) {
        r->dice[i] = 100.0 * lm_dice(&st[i]);
        int h = lm_hd95(&r->hd[i], w, f, dims, sp, &st[i], hd_mode);
        if (h < 0)
            goto out;
        if (h == 1) {
            size_t l = strlen(skipped);
            snprintf(skipped + l, sizeof skipped - l, "%s%d (empty in %s)", nskip++ ? ", " : "",
                     r->lab[i],
                     st[i].na == 0 ? (initial ? "moving_seg" : "warped_seg") : "fixed_seg");
        }
    }
    if (nskip)
        note("%s: HD95 skipped for label%s %s", r->pair, nskip > 1 ? "s" : "", skipped);
    if (initial) {
        r->has_jac = 1;
        r->jac_pct = 0;
        r->sdlogj = 0;
    } else if (flow) {
        int64_t fn = fdims[0] * fdims[1] * fdims[2];
        det = malloc((size_t)fn * sizeof *det);
        if (!det)
            goto oom;
        if (lm_jacobian_det(det, flow->data, flow->dtype, fdims, jac_mode) < 0)
            goto out;
        lm_jac_stats js;
        lm_jacobian_stats(&js, det, fn, jac_mode);
        r->has_jac = 1;
        r->jac_pct = js.pct;
        r->sdlogj = js.sdlogj;
    }
    rc = 0;
    goto out;
oom:
    lm_error_set("out of memory");
out:
    free(u);
    free(st);
    free(det);
    return rc;
}

static result *new_result(const char *pair, const char *where)
{
    if (nres == capres) {
        capres = capres ? 2 * capres : 16;
        res = realloc(res, (size_t)capres * sizeof *res);
        if (!res)
            lm_die(LM_EXIT_FAIL, "out of memory");
    }
    result *r = &res[nres++];
    memset(r, 0, sizeof *r);
    r->pair = strdup(pair);
    r->where = strdup(where);
    if (!r->pair || !r->where)
        lm_die(LM_EXIT_FAIL, "out of memory");
    return r;
}

static void report(const result *r)
{
    double dm = 0, hm = 0;
    int nh = 0;
    for (int i = 0; i < r->n; i++) {
        dm += r->dice[i];
        if (!isnan(r->hd[i])) {
            hm += r->hd[i];
            nh++;
        }
    }
    if (r->has_jac)
        lm_info("%s: %d labels, Dice %.2f, HD95 %.2f mm, folding %.4f%%, SDlogJ %.4f", r->pair,
                r->n, dm / r->n, nh ? hm / nh : NAN, r->jac_pct, r->sdlogj);
    else
        lm_info("%s: %d labels, Dice %.2f, HD95 %.2f mm", r->pair, r->n, dm / r->n,
                nh ? hm / nh : NAN);
}

/* One stream record: fails with "record N: reason" in lm_error. */
static int do_record(lm_record *rec, const char *where, long idx)
{
    const char *wname = initial ? "moving_seg" : "warped_seg";
    const lm_tensor *wt = lm_record_cget(rec, wname), *ft = lm_record_cget(rec, "fixed_seg");
    const lm_tensor *fl = lm_record_cget(rec, "flow_full");
    if (!fl)
        fl = lm_record_cget(rec, "flow");
    if (!wt)
        return lm_error_set("no tensor '%s'%s", wname,
                            !initial && lm_record_cget(rec, "moving_seg")
                                ? " (use --initial to score moving_seg)"
                                : "");
    if (!ft)
        return lm_error_set("no tensor 'fixed_seg'");
    const char *pair = lm_record_meta_get(rec, "pair");
    char pbuf[32];
    if (!pair || !*pair) {
        snprintf(pbuf, sizeof pbuf, "%ld", idx);
        pair = pbuf;
    }
    double sp[3];
    if (have_spacing) {
        memcpy(sp, spacing_opt, sizeof sp);
    } else {
        const char *s = lm_record_meta_get(rec, "spacing");
        if (!s)
            return lm_error_set("no 'spacing' metadata (give --spacing)");
        if (parse_spacing_json(s, sp) < 0)
            return lm_error_set("metadata spacing '%s' is not three positive numbers", s);
    }
    lm_tensor w = {0}, f = {0}, u = {0};
    int64_t wd[3], fd[3], ud[3];
    int rc = -1, nmlab = 0;
    int32_t *mlab = NULL;
    if (label_map(&w, wt, wd) < 0 || label_map(&f, ft, fd) < 0)
        goto out;
    if (memcmp(wd, fd, sizeof wd)) {
        char a[64], b[64];
        lm_error_set("%s %s and fixed_seg %s differ in shape", wname, lm_shape_str(a, 64, 3, wd),
                     lm_shape_str(b, 64, 3, fd));
        goto out;
    }
    if (fl && !initial && flow_field(&u, fl, ud) < 0)
        goto out;
    if (nlabels_opt < 0) {
        const char *ml = lm_record_meta_get(rec, "labels");
        if (ml && parse_labels_json(ml, &mlab, &nmlab) < 0) {
            lm_error_set("metadata labels '%.60s' is not a JSON array of integers", ml);
            goto out;
        }
    }
    result *r = new_result(pair, where);
    if (score(r, w.data, f.data, wd, sp, u.data ? &u : NULL, ud, mlab, nmlab) < 0)
        goto out;
    report(r);
    rc = 0;
out:
    lm_tensor_free(&w);
    lm_tensor_free(&f);
    lm_tensor_free(&u);
    free(mlab);
    return rc;
}

static void standalone(const char *fx, const char *wp, const char *flowfile)
{
    lm_tensor f, w, u = {0};
    lm_nifti_geom gf, gw;
    int64_t ud[3];
    if (lm_nifti_read(fx, LM_NII_LABELS, &f, &gf) < 0)
        lm_die_error(fx);
    if (lm_nifti_read(wp, LM_NII_LABELS, &w, &gw) < 0)
        lm_die_error(wp);
    if (f.ndim != 3)
        lm_die(LM_EXIT_FAIL, "%s: a 3-D label map is needed (this one has %lld channels)", fx,
               (long long)f.shape[0]);
    if (w.ndim != 3)
        lm_die(LM_EXIT_FAIL, "%s: a 3-D label map is needed (this one has %lld channels)", wp,
               (long long)w.shape[0]);
    if (memcmp(f.shape, w.shape, 3 * sizeof *f.shape)) {
        char a[64], b[64];
        lm_die(LM_EXIT_FAIL, "%s: shape %s differs from the fixed map's %s", wp,
               lm_shape_str(a, 64, 3, w.shape), lm_shape_str(b, 64, 3, f.shape));
    }
    for (int a = 0; a < 3; a++)
        if (fabs(gf.spacing[a] - gw.spacing[a]) > 1e-4 * fabs(gf.spacing[a]))
            lm_die(LM_EXIT_FAIL, "%s: spacing %g,%g,%g differs from the fixed map's %g,%g,%g", wp,
                   gw.spacing[0], gw.spacing[1], gw.spacing[2], gf.spacing[0], gf.spacing[1],
                   gf.spacing[2]);
    double sp[3];
    for (int a = 0; a < 3; a++) {
        sp[a] = have_spacing ? spacing_opt[a] : gf.spacing[a];
        if (!(sp[a] > 0) || !isfinite(sp[a]))
            lm_die(LM_EXIT_FAIL, "%s: spacing %g in the header is not positive (give --spacing)",
                   fx, sp[a]);
    }
    if (flowfile) {
        lm_reader *rd = lm_reader_open(flowfile);
        lm_record rec;
        if (!rd)
            lm_die_error(flowfile);
        int k = lm_reader_next(rd, &rec);
        if (k < 0)
            lm_die_error(flowfile);
        if (k == 0)
            lm_die(LM_EXIT_FAIL, "%s: empty stream", flowfile);
        const lm_tensor *fl = lm_record_cget(&rec, "flow_full");
        if (!fl)
            fl = lm_record_cget(&rec, "flow");
        if (!fl)
            lm_die(LM_EXIT_FAIL, "%s: record 1: no tensor 'flow_full' or 'flow'", flowfile);
        if (flow_field(&u, fl, ud) < 0)
            lm_die(LM_EXIT_FAIL, "%s: record 1: %s", flowfile, lm_error());
        lm_record_free(&rec);
        lm_reader_close(rd);
    }
    /* pair id: the warped map's file name without its extension */
    const char *base = strrchr(wp, '/');
    char pair[256];
    snprintf(pair, sizeof pair, "%s", base ? base + 1 : wp);
    char *dot = strstr(pair, ".nii");
    if (dot)
        *dot = 0;
    result *r = new_result(pair, wp);
    if (score(r, w.data, f.data, f.shape, sp, u.data ? &u : NULL, ud, NULL, 0) < 0)
        lm_die(LM_EXIT_FAIL, "%s: %s", wp, lm_error());
    report(r);
    lm_tensor_free(&f);
    lm_tensor_free(&w);
    lm_tensor_free(&u);
}

/* ---- output ---- */

static int32_t *cols; /* union of scored labels over all pairs, sorted */
static int ncols;

static void collect_columns(void)
{
    int cap = 0;
    for (int p = 0; p < nres; p++)
        cap += res[p].n;
    cols = malloc((size_t)(cap ? cap : 1) * sizeof *cols);
    if (!cols)
        lm_die(LM_EXIT_FAIL, "out of memory");
    for (int p = 0; p < nres; p++)
        for (int i = 0; i < res[p].n; i++)
            cols[ncols++] = res[p].lab[i];
    qsort(cols, (size_t)ncols, sizeof *cols, cmp_i32);
    int k = 0;
    for (int i = 0; i < ncols; i++)
        if (k == 0 || cols[i] != cols[k - 1])
            cols[k++] = cols[i];
    ncols = k;
}

/* Without --labels, the label set is every label seen in any pair; a pair that has one of
 * them in neither map cannot be scored on the same set. */
static void check_missing(void)
{
    if (nlabels_opt >= 0)
        return;
    for (int p = 0; p < nres; p++) {
        result *r = &res[p];
        char miss[512] = "";
        int nmiss = 0;
        for (int c = 0; c < ncols; c++)
            if (!in_set(r->present, r->npresent, cols[c])) {
                if (!skip_missing)
                    lm_die(LM_EXIT_FAIL,
                           "%s: pair %s: label %d is in neither map, but in other pairs "
                           "(--skip-missing drops it)",
                           r->where, r->pair, cols[c]);
                size_t l = strlen(miss);
                snprintf(miss + l, sizeof miss - l, "%s%d", nmiss++ ? "," : "", cols[c]);
            }
        if (nmiss)
            note("%s: label%s %s in neither map, skipped", r->pair, nmiss > 1 ? "s" : "", miss);
    }
}

/* the value of column c of pair p: 0 dice_mean, 1 hd95_mean, 2 jac, 3 sdlogj,
 * 4.. dice per label, 4+ncols.. hd95 per label */
static double cell(const result *r, int c)
{
    if (c == 0 || c == 1) {
        double s = 0;
        int k = 0;
        for (int i = 0; i < r->n; i++) {
            double v = c == 0 ? r->dice[i] : r->hd[i];
            if (!isnan(v)) {
                s += v;
                k++;
            }
        }
        return k ? s / k : NAN;
    }
    if (c == 2)
        return r->has_jac ? r->jac_pct : NAN;
    if (c == 3)
        return r->has_jac ? r->sdlogj : NAN;
    int hd = c >= 4 + ncols;
    int32_t l = cols[c - 4 - (hd ? ncols : 0)];
    for (int i = 0; i < r->n; i++)
        if (r->lab[i] == l)
            return hd ? r->hd[i] : r->dice[i];
    return NAN;
}

/* mean and population std (numpy's default) over the pairs where the value exists */
static void summary(int c, double *mean, double *sd, int *k)
{
    double s = 0, q = 0;
    *k = 0;
    for (int p = 0; p < nres; p++) {
        double v = cell(&res[p], c);
        if (!isnan(v)) {
            s += v;
            (*k)++;
        }
    }
    *mean = *k ? s / *k : NAN;
    for (int p = 0; p < nres; p++) {
        double v = cell(&res[p], c);
        if (!isnan(v))
            q += (v - *mean) * (v - *mean);
    }
    *sd = *k ? sqrt(q / *k) : NAN;
}

static void fmt(FILE *o, double v)
{
    if (isnan(v))
        fputs("nan", o);
    else
        fprintf(o, "%.6f", v);
}

static void write_tsv(FILE *o, int jac)
{
    const char *jname = jac_mode == LM_JAC_SITK_MM ? "jac_neg_pct" : "jac_nonpos_pct";
    int ncell = 4 + 2 * ncols;
    fprintf(o, "pair\tn_labels\tdice_mean\thd95_mean");
    if (jac)
        fprintf(o, "\t%s\tsdlogj", jname);
    for (int i = 0; i < ncols; i++)
        fprintf(o, "\tdice_%d", cols[i]);
    for (int i = 0; i < ncols; i++)
        fprintf(o, "\thd95_%d", cols[i]);
    fputc('\n', o);
    for (int p = 0; p < nres; p++) {
        fprintf(o, "%s\t%d", res[p].pair, res[p].n);
        for (int c = 0; c < ncell; c++) {
            if (!jac && (c == 2 || c == 3))
                continue;
            fputc('\t', o);
            fmt(o, cell(&res[p], c));
        }
        fputc('\n', o);
    }
    for (int row = 0; row < 3; row++) {
        fprintf(o, "%s\t%d", row == 0 ? "mean" : row == 1 ? "std" : "mean(std)", nres);
        for (int c = 0; c < ncell; c++) {
            if (!jac && (c == 2 || c == 3))
                continue;
            double mean, sd;
            int k;
            summary(c, &mean, &sd, &k);
            fputc('\t', o);
            if (row == 0)
                fmt(o, mean);
            else if (row == 1)
                fmt(o, sd);
            else if (isnan(mean))
                fputs("nan", o);
            else if (c == 2 || c == 3)
                fprintf(o, "%.4f (%.4f)", mean, sd);
            else
                fprintf(o, "%.2f (%.2f)", mean, sd);
        }
        fputc('\n', o);
    }
}

static cJSON *jnum(double v)
{
    return isnan(v) ? cJSON_CreateNull() : cJSON_CreateNumber(v);
}

static char *write_json(int jac)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *o = cJSON_AddObjectToObject(root, "options");
    cJSON_AddStringToObject(o, "hd", hd_mode == LM_HD_MONAI ? "monai" : "medpy");
    cJSON_AddStringToObject(o, "jac", jac_mode == LM_JAC_SITK_MM ? "sitk-mm" : "vxm");
    cJSON_AddBoolToObject(o, "initial", initial);
    cJSON *ig = cJSON_AddArrayToObject(o, "ignore");
    for (int i = 0; i < nignore; i++)
        cJSON_AddItemToArray(ig, cJSON_CreateNumber(ignore_set[i]));
    cJSON *jl = cJSON_AddArrayToObject(root, "labels");
    for (int i = 0; i < ncols; i++)
        cJSON_AddItemToArray(jl, cJSON_CreateNumber(cols[i]));
    cJSON *jp = cJSON_AddArrayToObject(root, "pairs");
    for (int p = 0; p < nres; p++) {
        const result *r = &res[p];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "pair", r->pair);
        cJSON_AddItemToObject(e, "dice_mean", jnum(cell(r, 0)));
        cJSON_AddItemToObject(e, "hd95_mean", jnum(cell(r, 1)));
        if (jac) {
            cJSON_AddItemToObject(e, jac_mode == LM_JAC_SITK_MM ? "jac_neg_pct" : "jac_nonpos_pct",
                                  jnum(cell(r, 2)));
            cJSON_AddItemToObject(e, "sdlogj", jnum(cell(r, 3)));
        }
        cJSON *d = cJSON_AddObjectToObject(e, "dice"), *h = cJSON_AddObjectToObject(e, "hd95");
        cJSON *sk = cJSON_AddArrayToObject(e, "hd95_skipped");
        for (int i = 0; i < r->n; i++) {
            char k[16];
            snprintf(k, sizeof k, "%d", r->lab[i]);
            cJSON_AddItemToObject(d, k, jnum(r->dice[i]));
            cJSON_AddItemToObject(h, k, jnum(r->hd[i]));
            if (isnan(r->hd[i]))
                cJSON_AddItemToArray(sk, cJSON_CreateNumber(r->lab[i]));
        }
        cJSON_AddItemToArray(jp, e);
    }
    cJSON *s = cJSON_AddObjectToObject(root, "summary");
    cJSON_AddNumberToObject(s, "pairs", nres);
    const char *names[4] = {"dice_mean", "hd95_mean",
                            jac_mode == LM_JAC_SITK_MM ? "jac_neg_pct" : "jac_nonpos_pct",
                            "sdlogj"};
    for (int c = 0; c < 4 + 2 * ncols; c++) {
        if (!jac && (c == 2 || c == 3))
            continue;
        char k[32];
        if (c < 4)
            snprintf(k, sizeof k, "%s", names[c]);
        else
            snprintf(k, sizeof k, "%s_%d", c < 4 + ncols ? "dice" : "hd95",
                     cols[(c - 4) % (ncols ? ncols : 1)]);
        double mean, sd;
        int n;
        summary(c, &mean, &sd, &n);
        cJSON *x = cJSON_AddObjectToObject(s, k);
        cJSON_AddItemToObject(x, "mean", jnum(mean));
        cJSON_AddItemToObject(x, "std", jnum(sd));
        cJSON_AddNumberToObject(x, "n", n);
    }
    char *txt = cJSON_Print(root);
    cJSON_Delete(root);
    return txt;
}

int main(int argc, char **argv)
{
    const char *arg, *out = NULL, *fx = NULL, *wp = NULL, *flowfile = NULL;
    int c;
    lm_cli_init(argv[0]);
    ignore_set = &ignore_default;
    while ((c = lm_cli_next(argc, argv, &spec, &arg)) >= 0) {
        const char *o = opts[c].lng;
        if (!strcmp(o, "output"))
            out = arg;
        else if (!strcmp(o, "json"))
            json_out = 1;
        else if (!strcmp(o, "ignore")) {
            if (parse_labels(arg, &ignore_set, &nignore) < 0)
                lm_usage_error("--ignore: '%s' is not a comma-separated list of integers", arg);
        } else if (!strcmp(o, "labels")) {
            if (parse_labels(arg, &labels_opt, &nlabels_opt) < 0 || nlabels_opt == 0)
                lm_usage_error("--labels: '%s' is not a comma-separated list of integers", arg);
        } else if (!strcmp(o, "hd")) {
            if (!strcmp(arg, "medpy"))
                hd_mode = LM_HD_MEDPY;
            else if (!strcmp(arg, "monai"))
                hd_mode = LM_HD_MONAI;
            else
                lm_usage_error("--hd: '%s' is not medpy or monai", arg);
        } else if (!strcmp(o, "jac")) {
            if (!strcmp(arg, "vxm"))
                jac_mode = LM_JAC_VXM;
            else if (!strcmp(arg, "sitk-mm"))
                jac_mode = LM_JAC_SITK_MM;
            else
                lm_usage_error("--jac: '%s' is not vxm or sitk-mm", arg);
        } else if (!strcmp(o, "initial"))
            initial = 1;
        else if (!strcmp(o, "skip-missing"))
            skip_missing = 1;
        else if (!strcmp(o, "spacing")) {
            int n = 3;
            if (lm_parse_double_list(arg, ',', spacing_opt, &n) < 0 || n != 3 ||
                !(spacing_opt[0] > 0 && spacing_opt[1] > 0 && spacing_opt[2] > 0) ||
                !isfinite(spacing_opt[0] + spacing_opt[1] + spacing_opt[2]))
                lm_usage_error("--spacing: expected three positive numbers SD,SH,SW, got '%s'",
                               arg);
            have_spacing = 1;
        } else if (!strcmp(o, "fixed-seg"))
            fx = arg;
        else if (!strcmp(o, "warped-seg"))
            wp = arg;
        else if (!strcmp(o, "flow"))
            flowfile = arg;
        else if (!strcmp(o, "threads")) {
            long t;
            if (lm_parse_long(arg, 1, 1024, &t) < 0)
                lm_usage_error("--threads: '%s' is not an integer in 1..1024", arg);
            omp_set_num_threads((int)t);
        } else if (!strcmp(o, "quiet"))
            lm_verbose = -1;
        else if (!strcmp(o, "verbose"))
            lm_verbose++;
    }
    if (nlabels_opt > 0)
        for (int i = 0; i < nlabels_opt; i++)
            if (in_set(ignore_set, nignore, labels_opt[i]))
                lm_usage_error("--labels: label %d is also in the ignore set", labels_opt[i]);
    int nin = argc - optind;
    if (fx || wp) {
        if (!fx || !wp)
            lm_usage_error("standalone mode needs both --fixed-seg and --warped-seg");
        if (nin)
            lm_usage_error("standalone mode (--fixed-seg, --warped-seg) reads no stream");
        if (initial)
            lm_usage_error("--initial applies to streams; give the moving map as --warped-seg");
        standalone(fx, wp, flowfile);
        collect_columns();
    } else {
        if (flowfile)
            lm_usage_error("--flow needs --fixed-seg and --warped-seg (a stream carries its flow)");
        lm_progress pg;
        lm_progress_start(&pg, "scoring", 0, "pairs");
        for (int i = 0; i < (nin ? nin : 1); i++) {
            const char *path = nin ? argv[optind + i] : "-";
            lm_reader *r = lm_reader_open(path);
            if (!r)
                lm_die_error(strcmp(path, "-") ? path : "stdin");
            lm_record rec;
            int k;
            while ((k = lm_reader_next(r, &rec)) == 1) {
                long idx = lm_reader_count(r);
                char where[1100];
                snprintf(where, sizeof where, "%s: record %ld", lm_reader_name(r), idx);
                if (do_record(&rec, where, idx) < 0)
                    lm_die(LM_EXIT_FAIL, "%s: %s", where, lm_error());
                lm_record_free(&rec);
                lm_progress_update(&pg, nres);
            }
            if (k < 0)
                lm_die_error(lm_reader_name(r));
            lm_reader_close(r);
        }
        if (nres == 0)
            lm_die(LM_EXIT_FAIL, "%s: no records", nin ? argv[optind] : "stdin");
        collect_columns();
        check_missing();
        lm_progress_end(&pg);
    }
    int jac = 0;
    for (int p = 0; p < nres; p++)
        jac |= res[p].has_jac;
    char *buf = NULL;
    size_t len = 0;
    if (json_out) {
        buf = write_json(jac);
        if (!buf)
            lm_die(LM_EXIT_FAIL, "out of memory");
        len = strlen(buf);
    } else {
        FILE *m = open_memstream(&buf, &len);
        if (!m)
            lm_die(LM_EXIT_FAIL, "out of memory");
        write_tsv(m, jac);
        if (fclose(m) != 0)
            lm_die(LM_EXIT_FAIL, "out of memory");
    }
    if (out && strcmp(out, "-")) {
        char *tmp;
        FILE *fp = lm_atomic_open(out, &tmp);
        if (!fp)
            lm_die_error(out);
        if (fwrite(buf, 1, len, fp) != len || (json_out && fputc('\n', fp) == EOF)) {
            lm_atomic_abort(fp, tmp);
            lm_die(LM_EXIT_FAIL, "%s: write error", out);
        }
        if (lm_atomic_commit(fp, tmp, out) < 0)
            lm_die_error(out);
    } else {
        if (fwrite(buf, 1, len, stdout) != len || (json_out && putchar('\n') == EOF) ||
            fflush(stdout) != 0)
            lm_die(LM_EXIT_FAIL, "stdout: write error");
    }
    free(buf);
    if (notes && fclose(notes) == 0) {
        fwrite(notes_buf, 1, notes_len, stderr);
        free(notes_buf);
    }
    return LM_EXIT_OK;
}
