/* out.c — the NIfTI outputs of warped records (lm_warp.h): warped images and label maps with
 * the fixed image's geometry, the field as an ITK/ANTs displacement field, named as lm-warp
 * names them; written at once (lm-warp) or staged under hidden temporary names and renamed
 * together at the end (lm-register: a failed run leaves no output file). */
#include "warp/lm_warp.h"

#include "io/lm_atomic.h"
#include "io/lm_error.h"
#include "prep/lm_prep.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- staged files: hidden temporaries removed at exit and on signals ------------------------
 * lm_atomic.h keeps a fixed number of temporaries, fewer than a directory of pairs needs, so the
 * staged names are kept here: a growing list, changed with the signals blocked, unlinked by an
 * atexit handler and by a signal handler that then hands the signal on to the one it replaced
 * (lm_atomic's, installed first: lm_warp_out_open makes a temporary through it). */

static char **stg;
static size_t nstg, capstg;
static const int sigs[3] = {SIGINT, SIGTERM, SIGHUP};
static struct sigaction prev_sa[3];
static unsigned stg_counter;
static int at_exit_set;

static void unlink_staged(void)
{
    for (size_t i = 0; i < nstg; i++)
        if (stg[i])
            unlink(stg[i]); /* async-signal-safe */
}

static void on_signal(int sig)
{
    unlink_staged();
    for (int k = 0; k < 3; k++)
        if (sigs[k] == sig)
            sigaction(sig, &prev_sa[k], NULL);
    raise(sig); /* pending until this handler returns, then the previous disposition's */
}

static void block(sigset_t *old)
{
    sigset_t s;
    sigemptyset(&s);
    for (int k = 0; k < 3; k++)
        sigaddset(&s, sigs[k]);
    sigprocmask(SIG_BLOCK, &s, old);
}

static void at_exit(void)
{
    sigset_t old;
    block(&old);
    unlink_staged();
    nstg = 0;
    sigprocmask(SIG_SETMASK, &old, NULL);
}

/* Ours on top of whatever handles the signals now (an inherited "ignore" is kept). */
static void hook_signals(void)
{
    for (int k = 0; k < 3; k++) {
        struct sigaction cur, sa;
        if (sigaction(sigs[k], NULL, &cur) < 0 || cur.sa_handler == on_signal ||
            cur.sa_handler == SIG_IGN)
            continue;
        prev_sa[k] = cur;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(sigs[k], &sa, NULL);
    }
}

static int track(char *name)
{
    sigset_t old;
    int rc = 0;
    if (!at_exit_set) {
        atexit(at_exit);
        at_exit_set = 1;
    }
    block(&old);
    if (nstg == capstg) {
        size_t cap = capstg ? 2 * capstg : 16;
        char **p = realloc(stg, cap * sizeof *p);
        if (p) {
            stg = p;
            capstg = cap;
        }
    }
    if (nstg < capstg)
        stg[nstg++] = name;
    else
        rc = lm_error_set("out of memory");
    sigprocmask(SIG_SETMASK, &old, NULL);
    hook_signals();
    return rc;
}

static void untrack(const char *name)
{
    sigset_t old;
    block(&old);
    for (size_t i = 0; i < nstg; i++)
        if (stg[i] == name)
            stg[i] = NULL;
    while (nstg && !stg[nstg - 1])
        nstg--;
    sigprocmask(SIG_SETMASK, &old, NULL);
}

/* A new empty hidden file beside path, ".lmtmp.PID.wN.<basename>" (the extension kept),
 * tracked; *tmp its malloc'ed name. */
static int stage_name(const char *path, char **tmp)
{
    const char *slash = strrchr(path, '/'), *base = slash ? slash + 1 : path;
    int dirlen = slash ? (int)(slash - path + 1) : 0;
    size_t cap = strlen(path) + 64;
    char *name = malloc(cap);
    if (!name)
        return lm_error_set("out of memory");
    for (int tries = 0; tries < 100; tries++) {
        snprintf(name, cap, "%.*s.lmtmp.%ld.w%u.%s", dirlen, path, (long)getpid(), stg_counter++,
                 base);
        int fd = open(name, O_WRONLY | O_CREAT | O_EXCL, 0666);
        if (fd >= 0) {
            close(fd);
            if (track(name) < 0) {
                unlink(name);
                free(name);
                return -1;
            }
            *tmp = name;
            return 0;
        }
        if (errno != EEXIST) {
            lm_error_set("cannot create output: %s", strerror(errno));
            free(name);
            return -1;
        }
    }
    free(name);
    return lm_error_set("cannot create a temporary output name");
}

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

/* Whether a file can be created beside path (through lm_atomic, which also installs its
 * signal handlers before ours). */
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
    if (o->staged)
        hook_signals();
    return o;
}

int lm_warp_out_nifti(const lm_warp_out *o) { return o->nifti_out || o->dir_out; }

int lm_warp_out_single(const lm_warp_out *o) { return o->nifti_out || (o->exp && !o->exp_dir); }

int lm_warp_out_too_many(const lm_warp_out *o, const char *why)
{
    return lm_error_set("%s names one NIfTI file but %s (give a directory)",
                        o->nifti_out ? "-o" : "--export-field", why);
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
    if (stage_name(path, &f->tmp) < 0) {
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

static void release(lm_warp_out *o, long from)
{
    for (long i = from; i < o->nfiles; i++) {
        unlink(o->files[i].tmp);
        untrack(o->files[i].tmp);
    }
    for (long i = 0; i < o->nfiles; i++) {
        free(o->files[i].tmp);
        free(o->files[i].path);
    }
    for (long i = 0; i < o->nseen; i++)
        free(o->seen[i]);
    free(o->seen);
    free(o->files);
    free(o);
}

int lm_warp_out_commit(lm_warp_out *o)
{
    if (!o)
        return 0;
    long i = 0;
    int rc = 0;
    for (; i < o->nfiles; i++) {
        if (rename(o->files[i].tmp, o->files[i].path) < 0) {
            rc = lm_error_set("%s: cannot rename the output into place: %s", o->files[i].path,
                              strerror(errno));
            break;
        }
        untrack(o->files[i].tmp);
    }
    release(o, i);
    return rc;
}

void lm_warp_out_abort(lm_warp_out *o)
{
    if (o)
        release(o, 0);
}
