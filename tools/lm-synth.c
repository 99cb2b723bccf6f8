/* lm-synth — writes synthetic multimodal pairs (a moving MR-like image, a fixed CT-like image,
 * both label maps, the true deformation) as NIfTI files plus a pair list (pairs.tsv) that
 * lm-preprocess --pairs reads: the embedded default data of the demo and the tests.
 *
 * Label maps are built-in random shapes or real label maps from --labels-from DIR; the
 * numerical work is in libcommon/synth. Every file is written atomically and the pair list
 * last, so a complete pairs.tsv means a complete data set; on failure everything this run
 * wrote (and any folder it created) is removed.
 */
#include "cli/lm_cli.h"
#include "cli/lm_rng.h"
#include "lm_io.h"
#include "synth/lm_synth.h"

#include <dirent.h>
#include <errno.h>
#include <omp.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const lm_option opts[] = {
    {"output", 'o', "DIR", "write the files into DIR (created if needed; required)"},
    {"pairs", 'n', "N", "number of pairs (default 4)"},
    {"seed", 's', "N", "random seed (default 1): the same seed writes the same bytes"},
    {"shape", 0, "DxHxW", "output grid in voxels (default 64x64x64)"},
    {"spacing", 0, "MM", "isotropic voxel size in mm (default 2)"},
    {"labels-from", 'l', "DIR", "use the label maps (.nii, .nii.gz) in DIR, not built-in shapes"},
    {"merge", 0, NULL, "with --labels-from: merge FreeSurfer ids into 9 classes"},
    {"organs", 0, "N", "built-in shapes: number of organs, 1..64 (default 5)"},
    {"bone", 0, "LIST", "labels drawn bone-bright in the CT (comma-separated)"},
    {"same-subject", 0, NULL, "the moving subject is the fixed one, deformed"},
    {"deform", 0, "MM", "largest displacement of the deformation in mm (default 6; 0: none)"},
    {"noise", 0, "F", "noise std as a fraction of 1000 MR units or HU (default 0.02)"},
    {"bias", 0, "F", "MR bias field: RMS of the log gain (default 0.2; 0: none)"},
    {"blur", 0, "MM", "Gaussian blur sigma in mm (default 1; 0: none)"},
    {"flip-moving", 0, NULL, "store the moving image and labels on an LPS grid"},
    {"threads", 't', "N", "threads (default: LM_THREADS, OMP_NUM_THREADS or all cores)"},
    {"quiet", 'q', NULL, "no progress messages"},
    {"verbose", 'v', NULL, "report each pair"},
    {"help", 'h', NULL, "show this help and exit"},
    {"version", 'V', NULL, "show the version and exit"},
    {0},
};
static const lm_cli_spec spec = {
    "[options] -o DIR",
    "Write synthetic image pairs with known labels: a moving MR-like image and a fixed CT-like\n"
    "image per pair, rendered from random shapes or real label maps, the moving subject under\n"
    "a random smooth deformation, as NIfTI files plus DIR/pairs.tsv for lm-preprocess --pairs.",
    opts,
    "Files per pair ID: ID_mr.nii.gz (moving), ID_ct.nii.gz (fixed, int16 HU), ID_mr_seg.nii.gz,\n"
    "ID_ct_seg.nii.gz, ID_deform.nii and ID_flow.nii (displacement fields in mm).\n"
    "Exit status: 0 success, 1 unreadable or bad label maps or failed write, 2 usage error.",
};

/* ---- everything this run wrote, removed again on failure ---- */
static char **written;
static int nwritten, capwritten;
static char *made_dirs[64];
static int nmade;

static void cleanup(void)
{
    for (int i = nwritten - 1; i >= 0; i--)
        unlink(written[i]);
    for (int i = nmade - 1; i >= 0; i--)
        rmdir(made_dirs[i]);
    lm_atomic_cleanup();
}

static _Noreturn LM_PRINTF(1, 2) void fail(const char *fmt, ...)
{
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    cleanup();
    lm_die(LM_EXIT_FAIL, "%s", line);
}

static void track(const char *path)
{
    if (nwritten == capwritten) {
        capwritten = capwritten ? 2 * capwritten : 64;
        char **w = realloc(written, (size_t)capwritten * sizeof *w);
        if (!w)
            fail("out of memory");
        written = w;
    }
    if (!(written[nwritten] = strdup(path)))
        fail("out of memory");
    nwritten++;
}

/* mkdir -p, remembering what it created. */
static int make_dirs(const char *path)
{
    char buf[4096];
    struct stat st;
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return lm_error_set("path too long");
    size_t len = strlen(buf);
    while (len > 1 && buf[len - 1] == '/')
        buf[--len] = '\0';
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        if (stat(buf, &st) == 0) {
            if (!S_ISDIR(st.st_mode))
                return lm_error_set("%s: not a directory", buf);
        } else if (mkdir(buf, 0777) == 0) {
            if (nmade < (int)(sizeof made_dirs / sizeof *made_dirs))
                made_dirs[nmade++] = strdup(buf);
        } else if (errno != EEXIST) {
            return lm_error_set("%s: %s", buf, strerror(errno));
        }
        *p = c;
        if (!c)
            break;
    }
    return 0;
}

/* ---- label sources ---- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static char **list_maps(const char *dir, int *n)
{
    DIR *d = opendir(dir);
    char **names = NULL;
    int cap = 0;
    *n = 0;
    if (!d)
        lm_die(LM_EXIT_FAIL, "%s: %s", dir, strerror(errno));
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.' || !lm_nifti_is_name(e->d_name))
            continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 32;
            names = realloc(names, (size_t)cap * sizeof *names);
            if (!names)
                lm_die(LM_EXIT_FAIL, "out of memory");
        }
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        names[*n] = malloc(len);
        if (!names[*n])
            lm_die(LM_EXIT_FAIL, "out of memory");
        snprintf(names[*n], len, "%s/%s", dir, e->d_name);
        (*n)++;
    }
    closedir(d);
    if (!*n)
        lm_die(LM_EXIT_FAIL, "%s: no label maps (.nii or .nii.gz files) in this directory", dir);
    qsort(names, (size_t)*n, sizeof *names, cmp_str);
    return names;
}

/* Reads, checks and resamples one real label map onto the output grid. */
static void load_map(const char *path, const lm_synth_args *a, int merge, lm_tensor *out,
                     double affine[16])
{
    lm_tensor t;
    lm_nifti_geom g;
    if (lm_nifti_read(path, LM_NII_LABELS, &t, &g) < 0)
        lm_die(LM_EXIT_FAIL, "%s: %s", path, lm_error());
    if (t.ndim != 3) {
        long long ch = (long long)t.shape[0];
        lm_tensor_free(&t);
        lm_die(LM_EXIT_FAIL, "%s: a 3-D label map is needed (this one has %lld channels)", path,
               ch);
    }
    if (lm_synth_labels_resample(out, affine, &t, g.affine, a) < 0) {
        lm_tensor_free(&t);
        lm_die(LM_EXIT_FAIL, "%s: %s", path, lm_error());
    }
    lm_tensor_free(&t);
    if (merge)
        lm_synth_labels_merge(out);
}

/* ---- output ---- */

static const char *outdir;

static void write_nii(const char *id, const char *suffix, const lm_tensor *t, lm_dtype dt,
                      const double affine[16], const lm_synth_args *a, int flags)
{
    char path[4096];
    lm_nifti_geom g;
    lm_tensor c;
    const lm_tensor *w = t;
    /* Displacement fields are float noise to deflate: uncompressed they cost nothing to write,
     * gzip would take most of the run time for a 10 % smaller file. */
    snprintf(path, sizeof path, "%s/%s_%s%s", outdir, id, suffix,
             flags & LM_NII_VECTOR ? ".nii" : ".nii.gz");
    int64_t dhw[3] = {a->shape[0], a->shape[1], a->shape[2]};
    lm_nifti_geom_from_affine(&g, affine, dhw);
    snprintf(g.descrip, sizeof g.descrip, "lm-synth seed %llu %s %s", (unsigned long long)a->seed,
             id, suffix);
    if (t->dtype != dt) {
        if (lm_tensor_convert(&c, t, dt) < 0)
            fail("%s: %s", path, lm_error());
        w = &c;
    }
    int rc = lm_nifti_write(path, w, &g, flags);
    if (w != t)
        lm_tensor_free(&c);
    if (rc < 0)
        fail("%s: %s", path, lm_error());
    track(path);
}

int main(int argc, char **argv)
{
    const char *arg, *from = NULL;
    long npairs = 4, organs = -1, threads = 0;
    int merge = 0, same = 0, flip = 0, bone_given = 0, c;
    lm_synth_args a;
    lm_cli_init(argv[0]);
    lm_synth_args_default(&a);
    while ((c = lm_cli_next(argc, argv, &spec, &arg)) >= 0) {
        const char *o = opts[c].lng;
        if (!strcmp(o, "output")) {
            outdir = arg;
        } else if (!strcmp(o, "pairs")) {
            if (lm_parse_long(arg, 1, 100000, &npairs) < 0)
                lm_usage_error("--pairs: '%s' is not an integer in 1..100000", arg);
        } else if (!strcmp(o, "seed")) {
            unsigned long long v;
            char *end;
            errno = 0;
            v = strtoull(arg, &end, 10);
            if (errno || !(*arg >= '0' && *arg <= '9') || *end)
                lm_usage_error("--seed: '%s' is not a non-negative integer", arg);
            a.seed = (uint64_t)v;
        } else if (!strcmp(o, "shape")) {
            long s[3];
            int n = 3;
            if (lm_parse_long_list(arg, 'x', 16, 1024, s, &n) < 0 || n != 3)
                lm_usage_error("--shape: '%s' is not DxHxW with sizes in 16..1024", arg);
            for (int i = 0; i < 3; i++)
                a.shape[i] = s[i];
        } else if (!strcmp(o, "spacing")) {
            if (lm_parse_double(arg, 1e-3, 100, &a.spacing) < 0)
                lm_usage_error("--spacing: '%s' is not a number in 0.001..100 (mm)", arg);
        } else if (!strcmp(o, "labels-from")) {
            from = arg;
        } else if (!strcmp(o, "merge")) {
            merge = 1;
        } else if (!strcmp(o, "organs")) {
            if (lm_parse_long(arg, 1, 64, &organs) < 0)
                lm_usage_error("--organs: '%s' is not an integer in 1..64", arg);
        } else if (!strcmp(o, "bone")) {
            long b[LM_SYNTH_MAX_BONE];
            int n = LM_SYNTH_MAX_BONE;
            if (lm_parse_long_list(arg, ',', 1, LM_SYNTH_MAX_LABEL, b, &n) < 0)
                lm_usage_error("--bone: '%s' is not a list of labels in 1..%d (at most %d)", arg,
                               LM_SYNTH_MAX_LABEL, LM_SYNTH_MAX_BONE);
            a.nbone = n;
            for (int i = 0; i < n; i++)
                a.bone[i] = (int32_t)b[i];
            bone_given = 1;
        } else if (!strcmp(o, "same-subject")) {
            same = 1;
        } else if (!strcmp(o, "deform")) {
            if (lm_parse_double(arg, 0, 1000, &a.deform) < 0)
                lm_usage_error("--deform: '%s' is not a number in 0..1000 (mm)", arg);
        } else if (!strcmp(o, "noise")) {
            if (lm_parse_double(arg, 0, 10, &a.noise) < 0)
                lm_usage_error("--noise: '%s' is not a number in 0..10", arg);
        } else if (!strcmp(o, "bias")) {
            if (lm_parse_double(arg, 0, 5, &a.bias) < 0)
                lm_usage_error("--bias: '%s' is not a number in 0..5", arg);
        } else if (!strcmp(o, "blur")) {
            if (lm_parse_double(arg, 0, 100, &a.blur) < 0)
                lm_usage_error("--blur: '%s' is not a number in 0..100 (mm)", arg);
        } else if (!strcmp(o, "flip-moving")) {
            flip = 1;
        } else if (!strcmp(o, "threads")) {
            if (lm_parse_long(arg, 1, 4096, &threads) < 0)
                lm_usage_error("--threads: '%s' is not an integer in 1..4096", arg);
        } else if (!strcmp(o, "quiet")) {
            lm_verbose = -1;
        } else if (!strcmp(o, "verbose")) {
            lm_verbose++;
        }
    }
    if (optind < argc)
        lm_usage_error("unexpected operand '%s'", argv[optind]);
    if (!outdir)
        lm_usage_error("an output folder is needed (-o DIR)");
    if (merge && !from)
        lm_usage_error("--merge needs --labels-from");
    if (organs > 0 && from)
        lm_usage_error("--organs is for built-in shapes, not --labels-from");
    if (organs > 0)
        a.organs = (int)organs;
    if (!bone_given)
        lm_synth_bone_defaults(&a, !from   ? LM_SYNTH_SHAPES
                                   : merge ? LM_SYNTH_MERGED
                                           : LM_SYNTH_FREESURFER);
    if (threads > 0)
        omp_set_num_threads((int)threads);
    if (lm_synth_args_check(&a) < 0)
        lm_usage_error("%s", lm_error());

    /* Subjects of every pair, then every label map they need, before any output exists. */
    int nmaps = 0;
    char **maps = from ? list_maps(from, &nmaps) : NULL;
    long nsub = from ? nmaps : 2 * npairs;
    long *fix = malloc((size_t)npairs * sizeof *fix), *mov = malloc((size_t)npairs * sizeof *mov);
    lm_tensor *sub = calloc((size_t)nsub, sizeof *sub);
    double(*saff)[16] = calloc((size_t)nsub, sizeof *saff);
    if (!fix || !mov || !sub || !saff)
        lm_die(LM_EXIT_FAIL, "out of memory");
    lm_rng r;
    lm_rng_init(&r, a.seed, UINT64_C(3) << 40);
    for (long i = 0; i < npairs; i++) {
        if (!from) {
            fix[i] = 2 * i;
            mov[i] = same ? 2 * i : 2 * i + 1;
        } else {
            fix[i] = lm_rng_below(&r, (uint32_t)nmaps);
            mov[i] = same || nmaps == 1
                         ? fix[i]
                         : (fix[i] + 1 + lm_rng_below(&r, (uint32_t)nmaps - 1)) % nmaps;
        }
    }
    char *need = calloc((size_t)nsub, 1);
    long nneed = 0;
    if (!need)
        lm_die(LM_EXIT_FAIL, "out of memory");
    for (long i = 0; i < npairs; i++)
        need[fix[i]] = need[mov[i]] = 1;
    for (long s = 0; s < nsub; s++)
        nneed += need[s];
    lm_progress prog;
    lm_progress_start(&prog, from ? "reading label maps" : "making subjects", nneed,
                      from ? "maps" : "subjects");
    for (long s = 0, done = 0; s < nsub; s++) {
        if (!need[s])
            continue;
        if (from) {
            load_map(maps[s], &a, merge, &sub[s], saff[s]);
        } else {
            if (lm_synth_shapes(&sub[s], &a, (uint64_t)s) < 0)
                lm_die(LM_EXIT_FAIL, "subject %ld: %s", s, lm_error());
            lm_synth_affine(saff[s], &a);
        }
        lm_progress_update(&prog, ++done);
    }
    lm_progress_end(&prog);
    if (from && nmaps == 1 && !same)
        lm_warn("%s: only one label map: every pair uses the same subject", from);

    if (make_dirs(outdir) < 0)
        fail("%s", lm_error());
    int width = 3;
    for (long k = npairs; k >= 1000; k /= 10)
        width++;
    FILE *tsv_mem;
    char *tsv_buf = NULL;
    size_t tsv_len = 0;
    if (!(tsv_mem = open_memstream(&tsv_buf, &tsv_len)))
        fail("out of memory");
    fprintf(tsv_mem, "moving\tfixed\tmoving_seg\tfixed_seg\tpair\n");
    lm_progress_start(&prog, "writing pairs", npairs, "pairs");
    for (long i = 0; i < npairs; i++) {
        char id[32];
        lm_synth_pair p;
        snprintf(id, sizeof id, "synth%0*ld", width & 15, i + 1);
        /* Real maps are each centred on their own grid: the fixed subject's grid is the pair's
         * grid, and the moving subject's labels are taken on it voxel for voxel. */
        const double *aff = saff[fix[i]];
        if (lm_synth_pair_make(&p, &sub[fix[i]], &sub[mov[i]], aff, &a, (uint64_t)i) < 0)
            fail("%s: %s", id, lm_error());
        double maff[16];
        lm_tensor fm = {0}, fs = {0};
        const lm_tensor *mimg = &p.moving, *mseg = &p.moving_seg;
        memcpy(maff, aff, sizeof maff);
        if (flip) {
            if (lm_synth_flip_dh(&fm, maff, &p.moving, aff) < 0 ||
                lm_synth_flip_dh(&fs, maff, &p.moving_seg, aff) < 0)
                fail("%s: %s", id, lm_error());
            mimg = &fm;
            mseg = &fs;
        }
        write_nii(id, "mr", mimg, LM_F32, maff, &a, 0);
        write_nii(id, "ct", &p.fixed, LM_I16, aff, &a, 0);
        write_nii(id, "mr_seg", mseg, LM_I16, maff, &a, 0);
        write_nii(id, "ct_seg", &p.fixed_seg, LM_I16, aff, &a, 0);
        write_nii(id, "deform", &p.deform_mm, LM_F32, aff, &a, LM_NII_VECTOR);
        write_nii(id, "flow", &p.flow_mm, LM_F32, aff, &a, LM_NII_VECTOR);
        fprintf(tsv_mem, "%s_mr.nii.gz\t%s_ct.nii.gz\t%s_mr_seg.nii.gz\t%s_ct_seg.nii.gz\t%s\n", id,
                id, id, id, id);
        if (from)
            lm_info("%s: fixed %s, moving %s, largest displacement %.2f mm", id, maps[fix[i]],
                    maps[mov[i]], p.max_disp_mm);
        else
            lm_info("%s: fixed subject %ld, moving subject %ld, largest displacement %.2f mm", id,
                    fix[i], mov[i], p.max_disp_mm);
        lm_tensor_free(&fm);
        lm_tensor_free(&fs);
        lm_synth_pair_free(&p);
        lm_progress_update(&prog, i + 1);
    }
    lm_progress_end(&prog);
    if (fclose(tsv_mem) != 0)
        fail("out of memory");

    /* The pair list last: its presence means the whole set is there. */
    char path[4096], *tmp = NULL;
    snprintf(path, sizeof path, "%s/pairs.tsv", outdir);
    FILE *fp = lm_atomic_open(path, &tmp);
    if (!fp)
        fail("%s: %s", path, lm_error());
    if (fwrite(tsv_buf, 1, tsv_len, fp) != tsv_len) {
        lm_atomic_abort(fp, tmp);
        fail("%s: %s", path, strerror(errno));
    }
    if (lm_atomic_commit(fp, tmp, path) < 0)
        fail("%s: %s", path, lm_error());
    lm_info("%ld pairs written to %s", npairs, outdir);

    free(tsv_buf);
    for (long s = 0; s < nsub; s++)
        lm_tensor_free(&sub[s]);
    for (int i = 0; i < nmaps; i++)
        free(maps[i]);
    for (int i = 0; i < nwritten; i++)
        free(written[i]);
    for (int i = 0; i < nmade; i++)
        free(made_dirs[i]);
    free(written), free(maps), free(need), free(sub), free(saff), free(fix), free(mov);
    return LM_EXIT_OK;
}
