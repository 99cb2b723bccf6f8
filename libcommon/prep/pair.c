/* pair.c — one image pair from NIfTI files to a stream record (lm_prep_pair_record): read,
 * normalise per modality, resample both images and label maps onto the target grid, optional
 * half resolution, metadata. Shared by lm-preprocess and lm-register's NIfTI mode. Also the
 * pair list (TSV) reader and the option table/parser both programs use.
 */
#include "lm_prep.h"

#include "cli/lm_cli.h"
#include "lm_io.h"

#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- pair list ---------------------------------------------------------------------------- */

static char *join_dir(const char *dir, const char *p)
{
    if (p[0] == '/' || !dir[0] || !strcmp(dir, "."))
        return strdup(p);
    size_t n = strlen(dir) + strlen(p) + 2;
    char *out = malloc(n);
    if (out)
        snprintf(out, n, "%s/%s", dir, p);
    return out;
}

char *lm_prep_stem(const char *path)
{
    const char *b = strrchr(path, '/');
    char *s = strdup(b ? b + 1 : path);
    if (!s)
        return NULL;
    char *dot = strstr(s, ".nii");
    if (dot)
        *dot = '\0';
    return s;
}

int lm_prep_read_pairs(const char *list, lm_prep_pair **out, int *n)
{
    FILE *fp = fopen(list, "r");
    if (!fp)
        return lm_error_set("%s", strerror(errno));
    char *copy = strdup(list), *dir = dirname(copy);
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, np = 0, capp = 0;
    lm_prep_pair *pairs = NULL;
    while (getline(&line, &cap, fp) > 0) {
        lineno++;
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0] || line[0] == '#')
            continue;
        char *fields[6];
        int nf = 0;
        for (char *tok = line, *next; tok && nf < 6; tok = next) {
            next = strchr(tok, '\t');
            if (next)
                *next++ = '\0';
            fields[nf++] = tok;
        }
        if (!strcmp(fields[0], "moving"))
            continue; /* header line */
        if (nf != 2 && nf != 4 && nf != 5) {
            fclose(fp);
            free(line);
            free(copy);
            free(pairs);
            return lm_error_set("line %d: %d tab-separated columns (expected moving, fixed[, "
                                "moving_seg, fixed_seg[, pair]])",
                                lineno, nf);
        }
        if (np == capp) {
            capp = capp ? capp * 2 : 16;
            pairs = realloc(pairs, (size_t)capp * sizeof *pairs);
        }
        lm_prep_pair *p = &pairs[np++];
        memset(p, 0, sizeof *p);
        for (int i = 0; i < (nf >= 4 ? 4 : 2); i++)
            p->f[i] = join_dir(dir, fields[i]);
        p->id = nf == 5 ? strdup(fields[4]) : lm_prep_stem(fields[0]);
    }
    free(line);
    free(copy);
    fclose(fp);
    if (!np)
        return lm_error_set("no pairs in the list");
    *out = pairs;
    *n = np;
    return 0;
}

/* ---- one pair ----------------------------------------------------------------------------- */

static void grid_of(lm_grid *g, const lm_nifti_geom *geom)
{
    for (int i = 0; i < 3; i++)
        g->dims[i] = geom->dims[i];
    memcpy(g->affine, geom->affine, sizeof g->affine);
}

static int read_image(const lm_prep_opts *o, const char *path, lm_tensor *t, lm_grid *g,
                      lm_modality m)
{
    lm_nifti_geom geom;
    if (lm_nifti_read(path, LM_NII_F32, t, &geom) < 0)
        return lm_error_prefix("%s", path);
    if (t->ndim != 3) {
        lm_tensor_free(t);
        return lm_error_set("%s: a 3-D image is needed, this one has %lld volumes", path,
                            (long long)t->shape[0]);
    }
    grid_of(g, &geom);
    if (lm_normalize(t->data, g->dims, m, o->window, o->pct) < 0) {
        lm_tensor_free(t);
        return lm_error_prefix("%s", path);
    }
    return 0;
}

static int read_labels(const lm_prep_opts *o, const char *path, const lm_grid *img,
                       const char *img_path, lm_tensor *t)
{
    lm_nifti_geom geom;
    lm_grid g;
    lm_tensor raw;
    if (lm_nifti_read(path, LM_NII_LABELS, &raw, &geom) < 0)
        return lm_error_prefix("%s", path);
    grid_of(&g, &geom);
    int64_t shape[3] = {g.dims[0], g.dims[1], g.dims[2]};
    if (!lm_grid_same(&g, img, 1e-3)) {
        char a[64], b[64];
        lm_tensor_free(&raw);
        return lm_error_set("%s: label grid %s differs from its image's (%s, %s)", path,
                            lm_shape_str(a, sizeof a, 3, g.dims), img_path,
                            lm_shape_str(b, sizeof b, 3, img->dims));
    }
    if (raw.ndim == 4) { /* channel c -> label c+1 */
        if (lm_tensor_alloc(t, "", LM_I32, 3, shape) < 0) {
            lm_tensor_free(&raw);
            return -1;
        }
        lm_labels_from_channels(t->data, raw.data, raw.shape[0], lm_tensor_numel(t));
        lm_tensor_free(&raw);
    } else {
        *t = raw;
    }
    if (o->nkeep)
        lm_labels_remap(t->data, lm_tensor_numel(t), o->keep, o->nkeep);
    long dummy;
    if (lm_labels_present(t->data, lm_tensor_numel(t), &dummy, 1) == 0) {
        lm_tensor_free(t);
        return lm_error_set("%s: empty label map%s", path, o->nkeep ? " (after --labels)" : "");
    }
    return 0;
}

static int target_grid(const lm_prep_opts *o, lm_grid *tg, const lm_grid *fixed)
{
    if (o->like) {
        lm_nifti_geom geom;
        if (lm_nifti_read_geom(o->like, &geom) < 0)
            return lm_error_prefix("%s", o->like);
        grid_of(tg, &geom);
    } else if (o->crop_pad) {
        lm_grid_crop_pad(tg, fixed, o->shape);
    } else if (o->have_shape) {
        lm_grid_reshape(tg, fixed, o->shape, o->have_spacing ? o->spacing : NULL);
    } else {
        *tg = *fixed;
    }
    int64_t q = o->half ? 32 : 16;
    int ok = tg->dims[0] % q == 0 && tg->dims[1] % q == 0 && tg->dims[2] % q == 0;
    if (!ok && o->pad) {
        int64_t want[3];
        for (int i = 0; i < 3; i++)
            want[i] = (tg->dims[i] + q - 1) / q * q;
        lm_grid g = *tg;
        lm_grid_crop_pad(tg, &g, want);
        ok = 1;
    }
    if (o->half && (tg->dims[0] % 2 || tg->dims[1] % 2 || tg->dims[2] % 2)) {
        char a[64];
        return lm_error_set("grid %s has an odd size; --half needs even sizes",
                            lm_shape_str(a, sizeof a, 3, tg->dims));
    }
    if (!ok && !o->any_shape) {
        char a[64], b[64];
        int64_t want[3];
        for (int i = 0; i < 3; i++)
            want[i] = (tg->dims[i] + q - 1) / q * q;
        return lm_error_set("grid %s is not a multiple of %lld in every axis, which the network "
                            "needs: --pad pads it to %s (or use --shape, --crop-pad, --any-shape)",
                            lm_shape_str(a, sizeof a, 3, tg->dims), (long long)q,
                            lm_shape_str(b, sizeof b, 3, want));
    }
    return 0;
}

static int put_volume(lm_record *rec, const char *name, lm_tensor *t, const int64_t dims[3])
{
    int64_t shape[5] = {1, 1, dims[0], dims[1], dims[2]};
    t->ndim = 5;
    memcpy(t->shape, shape, sizeof shape);
    free(t->name);
    t->name = strdup(name);
    return lm_record_put(rec, t);
}

/* Label maps go out in the smallest integer dtype that holds them. */
static int put_labels(lm_record *rec, const char *name, lm_tensor *t, const int64_t dims[3])
{
    int32_t mx = 0, mn = 0;
    const int32_t *v = t->data;
    const int64_t nv = lm_tensor_numel(t);
    for (int64_t i = 0; i < nv; i++) {
        mx = v[i] > mx ? v[i] : mx;
        mn = v[i] < mn ? v[i] : mn;
    }
    lm_dtype dt = mn >= 0 && mx <= 255 ? LM_U8 : mn >= -32768 && mx <= 32767 ? LM_I16 : LM_I32;
    lm_tensor c;
    if (lm_tensor_convert(&c, t, dt) < 0)
        return -1;
    lm_tensor_free(t);
    return put_volume(rec, name, &c, dims);
}

int lm_prep_pair_record(const lm_prep_opts *o, const lm_prep_pair *pr, lm_record *rec, int argc,
                        char **argv)
{
    lm_tensor img[2] = {{0}}, seg[2] = {{0}}, out;
    lm_grid g[2], tg;
    int rc = -1;
    const lm_modality mods[2] = {o->mod_m, o->mod_f};
    static const char *names[4] = {"moving", "fixed", "moving_seg", "fixed_seg"};
    lm_record_init(rec);
    for (int i = 0; i < 2; i++)
        if (read_image(o, pr->f[i], &img[i], &g[i], mods[i]) < 0)
            goto done;
    for (int i = 0; i < 2; i++)
        if (pr->f[2 + i] && read_labels(o, pr->f[2 + i], &g[i], pr->f[i], &seg[i]) < 0)
            goto done;
    if (o->align) { /* moving and fixed of different subjects/scanners: match grid centres */
        for (int r = 0; r < 3; r++) {
            double cm = g[0].affine[r * 4 + 3], cf = g[1].affine[r * 4 + 3];
            for (int k = 0; k < 3; k++) {
                cm += g[0].affine[r * 4 + k] * ((double)g[0].dims[k] - 1) / 2.0;
                cf += g[1].affine[r * 4 + k] * ((double)g[1].dims[k] - 1) / 2.0;
            }
            g[0].affine[r * 4 + 3] += cf - cm;
        }
    }
    if (target_grid(o, &tg, &g[1]) < 0)
        goto done;
    for (int i = 0; i < 2; i++) {
        if (lm_tensor_alloc(&out, names[i], LM_F32, 3, tg.dims) < 0)
            goto done;
        if (lm_resample_f32(out.data, &tg, img[i].data, &g[i], 1) < 0) {
            lm_tensor_free(&out);
            goto done;
        }
        int any = 0;
        const int64_t nv = lm_tensor_numel(&out);
        for (int64_t v = 0; v < nv && !any; v++)
            any = ((const float *)out.data)[v] != 0.0f;
        if (!any) {
            lm_tensor_free(&out);
            lm_error_set("%s: the %s image does not overlap the target grid in world space%s",
                         pr->f[i], names[i],
                         i == 0 && !o->align ? " (different scanners? try --align-centres)" : "");
            goto done;
        }
        if (o->half) {
            lm_grid hg;
            lm_tensor pooled;
            lm_grid_half(&hg, &tg);
            if (lm_tensor_alloc(&pooled, names[i], LM_F32, 3, hg.dims) < 0) {
                lm_tensor_free(&out);
                goto done;
            }
            lm_avgpool2(pooled.data, out.data, tg.dims);
            lm_tensor_free(&out);
            out = pooled;
            if (put_volume(rec, names[i], &out, hg.dims) < 0)
                goto done;
        } else if (put_volume(rec, names[i], &out, tg.dims) < 0) {
            goto done;
        }
        if (!seg[i].data)
            continue;
        if (lm_tensor_alloc(&out, names[2 + i], LM_I32, 3, tg.dims) < 0)
            goto done;
        if (lm_resample_i32(out.data, &tg, seg[i].data, &g[i]) < 0 ||
            put_labels(rec, names[2 + i], &out, tg.dims) < 0) {
            lm_tensor_free(&out);
            goto done;
        }
    }
    /* Metadata: geometry of the full-resolution target grid, modalities, labels. */
    double sp[3], shape[3] = {(double)tg.dims[0], (double)tg.dims[1], (double)tg.dims[2]};
    lm_grid_spacing(&tg, sp);
    int err = lm_record_meta_set(rec, "pair", pr->id) < 0;
    err = err || lm_record_meta_set_doubles(rec, "affine", tg.affine, 16) < 0;
    err = err || lm_record_meta_set_doubles(rec, "spacing", sp, 3) < 0;
    err = err || lm_record_meta_set_doubles(rec, "full_shape", shape, 3) < 0;
    err = err || lm_record_meta_set(rec, "modality_moving", lm_modality_name(o->mod_m)) < 0;
    err = err || lm_record_meta_set(rec, "modality_fixed", lm_modality_name(o->mod_f)) < 0;
    if (o->half)
        err = err || lm_record_meta_set(rec, "half", "true") < 0;
    if (o->align)
        err = err || lm_record_meta_set(rec, "align", "centres") < 0;
    if (!err && (seg[0].data || seg[1].data)) {
        long ids[256];
        double d[256];
        int k = 0;
        if (o->nkeep) { /* the maps hold 1..K; the source ids are kept for provenance */
            double src[256];
            for (int i = 0; i < o->nkeep; i++) {
                d[k++] = (double)(i + 1);
                src[i] = (double)o->keep[i];
            }
            err = err || lm_record_meta_set_doubles(rec, "labels_source", src, o->nkeep) < 0;
        } else {
            for (int i = 0; i < 2; i++) {
                lm_tensor *t = lm_record_get(rec, names[2 + i]);
                if (!t)
                    continue;
                lm_tensor c;
                if (lm_tensor_convert(&c, t, LM_I32) < 0) {
                    err = 1;
                    break;
                }
                int n = lm_labels_present(c.data, lm_tensor_numel(&c), ids, 256);
                lm_tensor_free(&c);
                for (int j = 0; j < n && j < 256; j++) {
                    int dup = 0;
                    for (int q = 0; q < k; q++)
                        dup |= d[q] == (double)ids[j];
                    if (!dup && k < 256)
                        d[k++] = (double)ids[j];
                }
            }
            for (int a = 1; a < k; a++) /* insertion sort: few labels */
                for (int b = a; b > 0 && d[b] < d[b - 1]; b--) {
                    double t = d[b];
                    d[b] = d[b - 1];
                    d[b - 1] = t;
                }
        }
        err = err || lm_record_meta_set_doubles(rec, "labels", d, k) < 0;
    }
    if (err || lm_record_add_history(rec, argc, argv) < 0)
        goto done;
    rc = 0;
done:
    for (int i = 0; i < 2; i++) {
        lm_tensor_free(&img[i]);
        lm_tensor_free(&seg[i]);
    }
    if (rc < 0)
        lm_record_free(rec);
    return rc;
}


void lm_prep_free_pairs(lm_prep_pair *p, int n)
{
    for (int i = 0; p && i < n; i++) {
        for (int k = 0; k < 4; k++)
            free(p[i].f[k]);
        free(p[i].id);
    }
    free(p);
}

void lm_prep_opts_default(lm_prep_opts *o)
{
    memset(o, 0, sizeof *o);
    o->mod_m = LM_MOD_MR;
    o->mod_f = LM_MOD_CT;
    o->window[0] = -180;
    o->window[1] = 400;
    o->pct = 95;
}

int lm_prep_option(lm_prep_opts *o, const char *name, const char *arg)
{
    int n;
    long l[3];
    if (!strcmp(name, "modality-moving") || !strcmp(name, "modality-fixed")) {
        if (lm_modality_parse(arg, name[9] == 'm' ? &o->mod_m : &o->mod_f) < 0)
            lm_usage_error("--%s: '%s' is not ct, mr or raw", name, arg);
    } else if (!strcmp(name, "ct-window")) {
        n = 2;
        if (lm_parse_double_list(arg, ',', o->window, &n) < 0 || n != 2 ||
            !(o->window[1] > o->window[0]))
            lm_usage_error("--ct-window: expected LO,HI with LO < HI, got '%s'", arg);
    } else if (!strcmp(name, "mr-percentile")) {
        if (lm_parse_double(arg, 0.0001, 100, &o->pct) < 0)
            lm_usage_error("--mr-percentile: expected a number in (0,100], got '%s'", arg);
    } else if (!strcmp(name, "shape")) {
        n = 3;
        if (lm_parse_long_list(arg, 'x', 1, 4096, l, &n) < 0 || n != 3)
            lm_usage_error("--shape: expected DxHxW, got '%s'", arg);
        for (int i = 0; i < 3; i++)
            o->shape[i] = l[i];
        o->have_shape = 1;
    } else if (!strcmp(name, "spacing")) {
        n = 3;
        if (lm_parse_double_list(arg, ',', o->spacing, &n) < 0 || (n != 1 && n != 3))
            lm_usage_error("--spacing: expected S or S,S,S in mm, got '%s'", arg);
        if (n == 1)
            o->spacing[1] = o->spacing[2] = o->spacing[0];
        for (int i = 0; i < 3; i++)
            if (!(o->spacing[i] > 0))
                lm_usage_error("--spacing: spacings must be positive");
        o->have_spacing = 1;
    } else if (!strcmp(name, "like")) {
        o->like = arg;
    } else if (!strcmp(name, "crop-pad")) {
        o->crop_pad = 1;
    } else if (!strcmp(name, "pad")) {
        o->pad = 1;
    } else if (!strcmp(name, "any-shape")) {
        o->any_shape = 1;
    } else if (!strcmp(name, "half")) {
        o->half = 1;
    } else if (!strcmp(name, "align-centres")) {
        o->align = 1;
    } else if (!strcmp(name, "labels")) {
        o->nkeep = 256;
        if (lm_parse_long_list(arg, ',', 1, INT32_MAX, o->keep, &o->nkeep) < 0)
            lm_usage_error("--labels: expected a comma-separated list of positive ids, got '%s'",
                           arg);
    } else {
        return 0;
    }
    return 1;
}

void lm_prep_opts_check(const lm_prep_opts *o)
{
    if ((o->crop_pad || o->have_spacing) && !o->have_shape)
        lm_usage_error("--%s needs --shape", o->crop_pad ? "crop-pad" : "spacing");
    if (o->like && (o->have_shape || o->crop_pad))
        lm_usage_error("--like and --shape/--crop-pad exclude each other");
    if (o->crop_pad && o->have_spacing)
        lm_usage_error("--crop-pad keeps the fixed spacing; drop --spacing");
}
