/* out.c — the NIfTI outputs of warped records (lm_warp.h): warped images and label maps with
 * the fixed image's geometry, the field as an ITK/ANTs displacement field, named as lm-warp
 * names them; written at once (lm-warp) or staged under hidden temporary names and renamed
 * together at the end (lm-register: a failed run leaves no output file). */
#include "warp/lm_warp.h"

#include "cli/lm_cli.h"
#include "io/lm_atomic.h"
#include "io/lm_error.h"
#include "prep/lm_prep.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- the output object ------------------------------------------------------------------------ */

typedef struct {
    char *tmp, *path;
} staged_file;

struct lm_warp_out {
    const char *out, *exp;
    int nifti_out, dir_out, exp_dir, staged;
    char **seen; /* pair ids written into directories */
    long nseen;
    staged_file *files;
    long nfiles, capfiles;
};

/* Whether a file can be created beside path. */
static int probe(const char *path, const char *what)
{
    char *tmp;
    if (lm_atomic_tmpname(path, &tmp) < 0)
        return lm_error_prefix("%s", what);
    lm_atomic_abort(NULL, tmp);
    return 0;
}

static int probe_output(const char *path, int dir)
{
    if (!dir)
        return probe(path, path);
    size_t n = strlen(path) + 16;
    char *p = malloc(n);
    if (!p)
        return lm_error_set("out of memory");
    snprintf(p, n, "%s/probe", path);
    int rc = probe(p, path);
    free(p);
    return rc;
}

lm_warp_out *lm_warp_out_open(const char *out, const char *exp, int flags)
{
    lm_warp_out *o = calloc(1, sizeof *o);
    if (!o) {
        lm_error_set("out of memory");
        return NULL;
    }
    o->out = out;
    o->exp = exp;
    o->nifti_out = out && lm_nifti_is_name(out);
    o->dir_out = lm_warp_is_dir(out);
    o->exp_dir = lm_warp_is_dir(exp);
    o->staged = (flags & LM_WARP_OUT_STAGED) != 0;
    if (o->staged && (((o->nifti_out || o->dir_out) && probe_output(out, o->dir_out) < 0) ||
                      (exp && probe_output(exp, o->exp_dir) < 0))) {
        free(o);
        return NULL;
    }
    return o;
}

int lm_warp_out_nifti(const lm_warp_out *o) { return o->nifti_out || o->dir_out; }

int lm_warp_out_single(const lm_warp_out *o) { return o->nifti_out || (o->exp && !o->exp_dir); }

int lm_warp_out_too_many(const lm_warp_out *o, const char *why)
{
    return lm_error_set("%s names one NIfTI file but %s (give a directory)",
                        o->nifti_out ? "-o" : "--export-field", why);
}

int lm_warp_out_refuse_more(const lm_warp_out *o, lm_reader *r)
{
    if (!lm_warp_out_single(o))
        return 0;
    lm_record next;
    const int more = lm_reader_next(r, &next);
    if (more > 0) {
        lm_record_free(&next);
        return lm_warp_out_too_many(o, "the stream has several records");
    }
    return more < 0 ? -1 : 0;
}

/* lm_nifti_write, at once or staged */
static int write_file(lm_warp_out *o, const char *path, const lm_tensor *t,
                      const lm_nifti_geom *g, int flags)
{
    if (!o->staged)
        return lm_nifti_write(path, t, g, flags) < 0 ? lm_error_prefix("%s", path) : 0;
    if (o->nfiles == o->capfiles) {
        long cap = o->capfiles ? 2 * o->capfiles : 8;
        staged_file *p = realloc(o->files, (size_t)cap * sizeof *p);
        if (!p)
            return lm_error_set("out of memory");
        o->files = p;
        o->capfiles = cap;
    }
    staged_file *f = &o->files[o->nfiles];
    if (!(f->path = strdup(path)))
        return lm_error_set("out of memory");
    /* a new empty hidden file beside path (lm_atomic.h: removed at exit and on signals) */
    if (lm_atomic_tmpname(path, &f->tmp) < 0) {
        free(f->path);
        return lm_error_prefix("%s", path);
    }
    o->nfiles++;
    return lm_nifti_write(f->tmp, t, g, flags) < 0 ? lm_error_prefix("%s", path) : 0;
}

/* The record's tensor `name`, if any, to path with its grid's geometry. */
static int write_nifti(lm_warp_out *o, const lm_record *rec, const char *name, const char *path)
{
    const lm_tensor *t = lm_record_cget(rec, name);
    int64_t C, d[3];
    lm_nifti_geom g;
    if (!t)
        return 0;
    if (lm_warp_vol_dims(t, &C, d) < 0 || lm_warp_geom_for(rec, d, &g) < 0)
        return lm_error_prefix("%s", name);
    lm_tensor v;
    int64_t shape[4] = {C, d[0], d[1], d[2]};
    if (lm_tensor_wrap(&v, name, t->dtype, C > 1 ? 4 : 3, C > 1 ? shape : shape + 1, t->data) < 0)
        return -1;
    int rc = write_file(o, path, &v, &g, 0);
    lm_tensor_free(&v);
    return rc;
}

int lm_warp_out_images(lm_warp_out *o, const lm_record *rec, long idx)
{
    char base[1024], name[1100], tmp[64];
    const char *id = lm_warp_pair_name(rec, idx, tmp, sizeof tmp);
    if (o->dir_out || o->exp_dir) {
        for (long i = 0; i < o->nseen; i++)
            if (!strcmp(o->seen[i], id))
                return lm_error_set("record %ld: pair id '%s' appears twice; its files would "
                                    "overwrite each other", idx, id);
        char **ns = realloc(o->seen, (size_t)(o->nseen + 1) * sizeof *ns);
        if (!ns)
            return lm_error_set("out of memory");
        o->seen = ns;
        if (!(ns[o->nseen] = strdup(id)))
            return lm_error_set("out of memory");
        o->nseen++;
    }
    if (!o->nifti_out && !o->dir_out)
        return 0;
    if (o->nifti_out)
        snprintf(base, sizeof base, "%s", o->out);
    else
        snprintf(base, sizeof base, "%s/%s_warped.nii.gz", o->out, id);
    lm_warp_with_suffix(name, sizeof name, base, "_seg");
    return write_nifti(o, rec, "warped", base) < 0 || write_nifti(o, rec, "warped_seg", name) < 0
               ? -1
               : 0;
}

int lm_warp_out_field(lm_warp_out *o, lm_warper *w, const lm_record *rec, long idx)
{
    char path[1100], tmp[64];
    if (!o->exp)
        return 0;
    if (o->exp_dir)
        snprintf(path, sizeof path, "%s/%s_field.nii.gz", o->exp,
                 lm_warp_pair_name(rec, idx, tmp, sizeof tmp));
    else
        snprintf(path, sizeof path, "%s", o->exp);
    const lm_tensor *f = lm_record_cget(rec, "flow_full");
    if (!f)
        f = lm_record_cget(rec, "flow");
    if (!f)
        return lm_error_set("no flow or flow_full to export");
    int64_t C, d[3];
    lm_nifti_geom g;
    if (lm_warp_vol_dims(f, &C, d) < 0 || C != 3)
        return lm_error_set("%s: expected [1,3,D,H,W]", f->name);
    if (lm_warp_check_field(w, f) < 0 || lm_warp_geom_for(rec, d, &g) < 0)
        return -1;
    int64_t shape[4] = {3, d[0], d[1], d[2]};
    lm_tensor mm;
    if (lm_tensor_alloc(&mm, "field", LM_F32, 4, shape) < 0)
        return -1;
    lm_field_vox_to_lps_mm(mm.data, f->data, d[0] * d[1] * d[2], g.affine);
    int rc = write_file(o, path, &mm, &g, LM_NII_VECTOR);
    lm_tensor_free(&mm);
    return rc;
}

int lm_warp_out_put(lm_warp_out *o, lm_warper *w, const lm_record *rec, long idx)
{
    return lm_warp_out_images(o, rec, idx) < 0 || lm_warp_out_field(o, w, rec, idx) < 0 ? -1 : 0;
}

/* Removes the temporaries from `from` on and frees everything */
static void release(lm_warp_out *o, long from)
{
    for (long i = from; i < o->nfiles; i++)
        lm_atomic_abort(NULL, o->files[i].tmp);
    for (long i = 0; i < o->nfiles; i++)
        free(o->files[i].path);
    for (long i = 0; i < o->nseen; i++)
        free(o->seen[i]);
    free(o->seen);
    free(o->files);
    free(o);
}

/* Two phases, with SIGINT/SIGTERM/SIGHUP held until done: every file about to be replaced is
 * first kept under a hidden hard link; then the staged files are renamed into place. If a rename
 * fails, the files renamed before it are put back as they were (or removed where there was
 * none) and the rest of the staged files removed, so that a failed commit also leaves the
 * output as it was; on success the kept links are removed. */
int lm_warp_out_commit(lm_warp_out *o)
{
    if (!o)
        return 0;
    sigset_t hold, old;
    sigemptyset(&hold);
    sigaddset(&hold, SIGINT);
    sigaddset(&hold, SIGTERM);
    sigaddset(&hold, SIGHUP);
    sigprocmask(SIG_BLOCK, &hold, &old);
    char **bak = o->nfiles ? calloc((size_t)o->nfiles, sizeof *bak) : NULL;
    long i = 0, nb = 0;
    int rc = o->nfiles && !bak ? lm_error_set("out of memory") : 0;
    for (; rc == 0 && nb < o->nfiles; nb++)
        if (lm_atomic_keep(o->files[nb].path, &bak[nb]) < 0)
            rc = -1;
    for (; rc == 0 && i < o->nfiles; i++) /* renames, or removes the temporary, and frees it */
        if (lm_atomic_commit(NULL, o->files[i].tmp, o->files[i].path) < 0) {
            rc = lm_error_prefix("%s", o->files[i].path);
            i++;
            for (long j = 0; j < i - 1; j++) { /* put back what was there */
                if (!bak[j]) {
                    unlink(o->files[j].path);
                } else if (rename(bak[j], o->files[j].path) == 0) {
                    free(bak[j]);
                    bak[j] = NULL;
                } else { /* the old file stays under its hidden name: never removed */
                    lm_warn("%s: could not be put back; the previous file is %s", o->files[j].path,
                            bak[j]);
                    free(bak[j]);
                    bak[j] = NULL;
                }
            }
            break;
        }
    for (long j = 0; j < nb; j++)
        if (bak && bak[j]) {
            unlink(bak[j]);
            free(bak[j]);
        }
    free(bak);
    release(o, i);
    sigprocmask(SIG_SETMASK, &old, NULL);
    return rc;
}

void lm_warp_out_abort(lm_warp_out *o)
{
    if (o)
        release(o, 0);
}
