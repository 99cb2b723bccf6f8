/* lm-preprocess — NIfTI in, tensor stream out: per-modality intensity normalisation, both
 * images (and their label maps) onto one target grid through world space, optional half
 * resolution. One record per pair; records are streamed as pairs are done.
 * The numerical work is in libcommon/prep (lm_prep.h); this file reads, checks and writes.
 */
#include "cli/lm_cli.h"
#include "lm_io.h"
#include "prep/lm_prep.h"

#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const lm_option opts[] = {
    {"output", 'o', "FILE", "write the stream to FILE (default: standard output)"},
    {"force", 'f', NULL, "write binary data even to a terminal"},
    {"pairs", 'p', "LIST", "TSV of pairs: moving, fixed[, moving_seg, fixed_seg[, pair id]]"},
    {"pair", 0, "ID", "pair id with operands (default: the moving file's name)"},
    {"modality-moving", 0, "M", "ct, mr or raw (default mr)"},
    {"modality-fixed", 0, "M", "ct, mr or raw (default ct)"},
    {"ct-window", 0, "LO,HI", "CT clip window in HU (default -180,400)"},
    {"mr-percentile", 0, "P", "MR clip to [0, P-th percentile] (default 95)"},
    {"shape", 0, "DxHxW", "target grid shape (with --spacing, --crop-pad or alone)"},
    {"spacing", 0, "S[,S,S]", "target spacing in mm (with --shape)"},
    {"like", 0, "FILE", "target grid of this NIfTI file"},
    {"crop-pad", 0, NULL, "with --shape: centre-crop/pad the fixed grid, no resampling"},
    {"pad", 0, NULL, "pad the grid to the next multiple of 16 (32 with --half)"},
    {"any-shape", 0, NULL, "accept a grid the network cannot take (not a multiple of 16)"},
    {"half", 0, NULL, "half resolution: 2x2x2-average-pool the images, keep full labels"},
    {"align-centres", 0, NULL, "translate the moving image so its grid centre is the fixed one's"},
    {"labels", 'l', "LIST", "keep these label ids, renumbered 1..K in this order"},
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

typedef struct {
    char *f[4]; /* moving, fixed, moving_seg, fixed_seg (segs may be NULL) */
    char *id;
} pair_t;

static struct {
    lm_modality mod_m, mod_f;
    double window[2], pct;
    int have_shape, have_spacing, crop_pad, pad, any_shape, half, align;
    int64_t shape[3];
    double spacing[3];
    const char *like;
    long keep[256];
    int nkeep;
} cfg = {LM_MOD_MR, LM_MOD_CT, {-180, 400}, 95, 0, 0, 0, 0, 0, 0, 0, {0, 0, 0}, {0, 0, 0}, NULL,
         {0}, 0};

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

static char *stem(const char *path)
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

static int read_pairs(const char *list, pair_t **out, int *n)
{
    FILE *fp = fopen(list, "r");
    if (!fp)
        return lm_error_set("%s", strerror(errno));
    char *copy = strdup(list), *dir = dirname(copy);
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, np = 0, capp = 0;
    pair_t *pairs = NULL;
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
        pair_t *p = &pairs[np++];
        memset(p, 0, sizeof *p);
        for (int i = 0; i < (nf >= 4 ? 4 : 2); i++)
            p->f[i] = join_dir(dir, fields[i]);
        p->id = nf == 5 ? strdup(fields[4]) : stem(fields[0]);
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

static int read_image(const char *path, lm_tensor *t, lm_grid *g, lm_modality m)
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
    if (lm_normalize(t->data, g->dims, m, cfg.window, cfg.pct) < 0) {
        lm_tensor_free(t);
        return lm_error_prefix("%s", path);
    }
    return 0;
}

static int read_labels(const char *path, const lm_grid *img, const char *img_path, lm_tensor *t)
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
    if (cfg.nkeep)
        lm_labels_remap(t->data, lm_tensor_numel(t), cfg.keep, cfg.nkeep);
    long dummy;
    if (lm_labels_present(t->data, lm_tensor_numel(t), &dummy, 1) == 0) {
        lm_tensor_free(t);
        return lm_error_set("%s: empty label map%s", path, cfg.nkeep ? " (after --labels)" : "");
    }
    return 0;
}

static int target_grid(lm_grid *tg, const lm_grid *fixed)
{
    if (cfg.like) {
        lm_nifti_geom geom;
        if (lm_nifti_read_geom(cfg.like, &geom) < 0)
            return lm_error_prefix("%s", cfg.like);
        grid_of(tg, &geom);
    } else if (cfg.crop_pad) {
        lm_grid_crop_pad(tg, fixed, cfg.shape);
    } else if (cfg.have_shape) {
        lm_grid_reshape(tg, fixed, cfg.shape, cfg.have_spacing ? cfg.spacing : NULL);
    } else {
        *tg = *fixed;
    }
    int64_t q = cfg.half ? 32 : 16;
    int ok = tg->dims[0] % q == 0 && tg->dims[1] % q == 0 && tg->dims[2] % q == 0;
    if (!ok && cfg.pad) {
        int64_t want[3];
        for (int i = 0; i < 3; i++)
            want[i] = (tg->dims[i] + q - 1) / q * q;
        lm_grid g = *tg;
        lm_grid_crop_pad(tg, &g, want);
        ok = 1;
    }
    if (cfg.half && (tg->dims[0] % 2 || tg->dims[1] % 2 || tg->dims[2] % 2)) {
        char a[64];
        return lm_error_set("grid %s has an odd size; --half needs even sizes",
                            lm_shape_str(a, sizeof a, 3, tg->dims));
    }
    if (!ok && !cfg.any_shape) {
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

static int process(const pair_t *pr, lm_record *rec, int argc, char **argv)
{
    lm_tensor img[2] = {{0}}, seg[2] = {{0}}, out;
    lm_grid g[2], tg;
    int rc = -1;
    const lm_modality mods[2] = {cfg.mod_m, cfg.mod_f};
    static const char *names[4] = {"moving", "fixed", "moving_seg", "fixed_seg"};
    lm_record_init(rec);
    for (int i = 0; i < 2; i++)
        if (read_image(pr->f[i], &img[i], &g[i], mods[i]) < 0)
            goto done;
    for (int i = 0; i < 2; i++)
        if (pr->f[2 + i] && read_labels(pr->f[2 + i], &g[i], pr->f[i], &seg[i]) < 0)
            goto done;
    if (cfg.align) { /* moving and fixed of different subjects/scanners: match grid centres */
        for (int r = 0; r < 3; r++) {
            double cm = g[0].affine[r * 4 + 3], cf = g[1].affine[r * 4 + 3];
            for (int k = 0; k < 3; k++) {
                cm += g[0].affine[r * 4 + k] * ((double)g[0].dims[k] - 1) / 2.0;
                cf += g[1].affine[r * 4 + k] * ((double)g[1].dims[k] - 1) / 2.0;
            }
            g[0].affine[r * 4 + 3] += cf - cm;
        }
    }
    if (target_grid(&tg, &g[1]) < 0)
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
                         i == 0 && !cfg.align ? " (different scanners? try --align-centres)" : "");
            goto done;
        }
        if (cfg.half) {
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
    err = err || lm_record_meta_set(rec, "modality_moving", lm_modality_name(cfg.mod_m)) < 0;
    err = err || lm_record_meta_set(rec, "modality_fixed", lm_modality_name(cfg.mod_f)) < 0;
    if (cfg.half)
        err = err || lm_record_meta_set(rec, "half", "true") < 0;
    if (cfg.align)
        err = err || lm_record_meta_set(rec, "align", "centres") < 0;
    if (!err && (seg[0].data || seg[1].data)) {
        long ids[256];
        double d[256];
        int k = 0;
        if (cfg.nkeep) { /* the maps hold 1..K; the source ids are kept for provenance */
            double src[256];
            for (int i = 0; i < cfg.nkeep; i++) {
                d[k++] = (double)(i + 1);
                src[i] = (double)cfg.keep[i];
            }
            err = err || lm_record_meta_set_doubles(rec, "labels_source", src, cfg.nkeep) < 0;
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

int main(int argc, char **argv)
{
    const char *arg, *out = NULL, *list = NULL, *pair_id = NULL;
    int flags = 0, c;
    lm_cli_init(argv[0]);
    while ((c = lm_cli_next(argc, argv, &spec, &arg)) >= 0) {
        const char *o = opts[c].lng;
        int n;
        long l[3];
        if (!strcmp(o, "output"))
            out = arg;
        else if (!strcmp(o, "force"))
            flags |= LM_W_FORCE;
        else if (!strcmp(o, "pairs"))
            list = arg;
        else if (!strcmp(o, "pair"))
            pair_id = arg;
        else if (!strcmp(o, "modality-moving") || !strcmp(o, "modality-fixed")) {
            if (lm_modality_parse(arg, o[9] == 'm' ? &cfg.mod_m : &cfg.mod_f) < 0)
                lm_usage_error("--%s: '%s' is not ct, mr or raw", o, arg);
        } else if (!strcmp(o, "ct-window")) {
            n = 2;
            if (lm_parse_double_list(arg, ',', cfg.window, &n) < 0 || n != 2 ||
                !(cfg.window[1] > cfg.window[0]))
                lm_usage_error("--ct-window: expected LO,HI with LO < HI, got '%s'", arg);
        } else if (!strcmp(o, "mr-percentile")) {
            if (lm_parse_double(arg, 0.0001, 100, &cfg.pct) < 0)
                lm_usage_error("--mr-percentile: expected a number in (0,100], got '%s'", arg);
        } else if (!strcmp(o, "shape")) {
            n = 3;
            if (lm_parse_long_list(arg, 'x', 1, 4096, l, &n) < 0 || n != 3)
                lm_usage_error("--shape: expected DxHxW, got '%s'", arg);
            for (int i = 0; i < 3; i++)
                cfg.shape[i] = l[i];
            cfg.have_shape = 1;
        } else if (!strcmp(o, "spacing")) {
            n = 3;
            if (lm_parse_double_list(arg, ',', cfg.spacing, &n) < 0 || (n != 1 && n != 3))
                lm_usage_error("--spacing: expected S or S,S,S in mm, got '%s'", arg);
            if (n == 1)
                cfg.spacing[1] = cfg.spacing[2] = cfg.spacing[0];
            for (int i = 0; i < 3; i++)
                if (!(cfg.spacing[i] > 0))
                    lm_usage_error("--spacing: spacings must be positive");
            cfg.have_spacing = 1;
        } else if (!strcmp(o, "like"))
            cfg.like = arg;
        else if (!strcmp(o, "crop-pad"))
            cfg.crop_pad = 1;
        else if (!strcmp(o, "pad"))
            cfg.pad = 1;
        else if (!strcmp(o, "any-shape"))
            cfg.any_shape = 1;
        else if (!strcmp(o, "half"))
            cfg.half = 1;
        else if (!strcmp(o, "align-centres"))
            cfg.align = 1;
        else if (!strcmp(o, "labels")) {
            cfg.nkeep = 256;
            if (lm_parse_long_list(arg, ',', 1, INT32_MAX, cfg.keep, &cfg.nkeep) < 0)
                lm_usage_error("--labels: expected a comma-separated list of positive ids, got "
                               "'%s'", arg);
        } else if (!strcmp(o, "quiet"))
            lm_verbose = -1;
        else if (!strcmp(o, "verbose"))
            lm_verbose++;
    }
    if ((cfg.crop_pad || cfg.have_spacing) && !cfg.have_shape)
        lm_usage_error("--%s needs --shape", cfg.crop_pad ? "crop-pad" : "spacing");
    if (cfg.like && (cfg.have_shape || cfg.crop_pad))
        lm_usage_error("--like and --shape/--crop-pad exclude each other");
    if (cfg.crop_pad && cfg.have_spacing)
        lm_usage_error("--crop-pad keeps the fixed spacing; drop --spacing");
    int nops = argc - optind, npairs = 0;
    pair_t *pairs = NULL, one;
    if (list) {
        if (nops)
            lm_usage_error("--pairs and file operands exclude each other");
        if (pair_id)
            lm_usage_error("--pair is for operands; --pairs takes ids from the list");
        if (read_pairs(list, &pairs, &npairs) < 0)
            lm_die(LM_EXIT_FAIL, "%s: %s", list, lm_error());
    } else {
        if (nops != 2 && nops != 4)
            lm_usage_error("expected MOVING FIXED [MOVING_SEG FIXED_SEG] or --pairs LIST");
        memset(&one, 0, sizeof one);
        for (int i = 0; i < nops; i++)
            one.f[i] = argv[optind + i];
        one.id = pair_id ? (char *)pair_id : stem(one.f[0]);
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
        if (process(&pairs[p], &rec, argc, argv) < 0) {
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
