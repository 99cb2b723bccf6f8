/* warp.c — a record's moving image and label map warped with its field (the record path of
 * lm-warp, shared with lm-register; lm_warp.h), and the geometry and naming helpers of their
 * NIfTI outputs. The warps run on the kernel backend (kernels/lm_kernels.h). */
#include "warp/lm_warp.h"

#include "cli/lm_cli.h"
#include "io/lm_error.h"
#include "prep/lm_prep.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void lm_warper_init(lm_warper *w, lm_backend *be, int labels_linear)
{
    memset(w, 0, sizeof *w);
    w->be = be;
    w->labels_linear = labels_linear;
}

int lm_warp_vol_dims(const lm_tensor *t, int64_t *C, int64_t dhw[3])
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
        if (f && lm_warp_vol_dims(f, &C, d) == 0 && C == 3 && !memcmp(d, dhw, sizeof d))
            return f;
    }
    return NULL;
}

/* Exponent bits all set, tested in blocks that threads share out (no early exit: the common
 * case is a clean field read once). */
int lm_warp_any_nonfinite(const float *v, int64_t n)
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

int lm_warp_check_field(lm_warper *w, const lm_tensor *f)
{
    if (f->dtype != LM_F32)
        return lm_error_set("%s must be F32, not %s", f->name, lm_dtype_name(f->dtype));
    if (f->data && (f->data == w->checked[0] || f->data == w->checked[1]))
        return 0;
    const float *v = f->data;
    const int64_t n = lm_tensor_numel(f);
    if (lm_warp_any_nonfinite(v, n))
        for (int64_t i = 0; i < n; i++)
            if (!isfinite(v[i]))
                return lm_error_set("%s has a non-finite value at element %lld", f->name,
                                    (long long)i);
    w->checked[w->checked[0] ? 1 : 0] = f->data;
    return 0;
}

/* Runs the op on the backend: uploads src and flow, downloads y (the CPU backend's buffers are
 * host memory: the op runs on them in place). */
static int run_warp(lm_backend *be, void *y, const void *src, const float *flow,
                    size_t src_bytes, size_t y_bytes, const lm_warp_args *a, int nearest,
                    lm_dtype dt)
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

static int warp_image(lm_warper *w, lm_record *rec, const lm_tensor *src)
{
    int64_t C, d[3];
    if (lm_warp_vol_dims(src, &C, d) < 0)
        return lm_error_set("moving: expected [1,C,D,H,W], got %d dims", src->ndim);
    const lm_tensor *f = field_for(rec, d);
    if (!f) {
        char a[64];
        return lm_error_set("no flow or flow_full on moving's grid %s",
                            lm_shape_str(a, sizeof a, 3, d));
    }
    if (lm_warp_check_field(w, f) < 0)
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
    int rc = run_warp(w->be, out.data, s->data, f->data, s->nbytes, out.nbytes, &a, 0, LM_F32);
    lm_tensor_free(&s32);
    if (rc == 0)
        rc = lm_record_put(rec, &out);
    lm_tensor_free(&out);
    return rc;
}

/* Nearest, or with labels_linear one-hot trilinear (MODEL.md §8), one label at a time to bound
 * memory, keeping the running argmax (ties to the earlier label, background 0 first). Voxel by
 * voxel, so a's array order is free. */
int lm_warp_label_map(lm_warper *w, int32_t *lab, const int32_t *sv, const float *flow,
                      const lm_warp_args *a)
{
    const int64_t n = (int64_t)a->D * a->H * a->W;
    if (!w->labels_linear)
        return run_warp(w->be, lab, sv, flow, (size_t)n * 4, (size_t)n * 4, a, 1, LM_I32);
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
        rc = run_warp(w->be, prob, mask, flow, (size_t)n * 4, (size_t)n * 4, a, 0, LM_F32);
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

static int warp_labels(lm_warper *w, lm_record *rec, const lm_tensor *src)
{
    int64_t C, d[3];
    if (lm_warp_vol_dims(src, &C, d) < 0 || C != 1)
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
    if (lm_warp_check_field(w, f) < 0)
        return -1;
    lm_tensor s32 = {0}, o32, out;
    int rc = -1;
    if (src->dtype != LM_I32 && lm_tensor_convert(&s32, src, LM_I32) < 0)
        return -1;
    const lm_tensor *s = src->dtype == LM_I32 ? src : &s32;
    if (lm_tensor_alloc(&o32, "warped_seg", LM_I32, src->ndim, src->shape) < 0)
        goto done0;
    lm_warp_args a = {1, (int)d[0], (int)d[1], (int)d[2], LM_PAD_ZEROS};
    rc = lm_warp_label_map(w, o32.data, s->data, f->data, &a);
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

int lm_warp_record(lm_warper *w, lm_record *rec)
{
    const lm_tensor *m = lm_record_cget(rec, "moving"), *s = lm_record_cget(rec, "moving_seg");
    w->checked[0] = w->checked[1] = NULL;
    if (!m && !s)
        return lm_error_set("no moving or moving_seg to warp");
    if (m && warp_image(w, rec, m) < 0)
        return -1;
    s = lm_record_cget(rec, "moving_seg"); /* the table may have moved */
    if (s && warp_labels(w, rec, s) < 0)
        return -1;
    return 0;
}

/* ---- geometry and names of outputs ---------------------------------------------------------- */

int lm_warp_geom_for(const lm_record *rec, const int64_t dhw[3], lm_nifti_geom *g)
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

int lm_warp_is_dir(const char *p)
{
    struct stat st;
    return p && stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

void lm_warp_with_suffix(char *out, size_t cap, const char *path, const char *suffix)
{
    size_t n = strlen(path);
    size_t ext = n > 7 && !strcmp(path + n - 7, ".nii.gz") ? 7 : n > 4 && !strcmp(path + n - 4, ".nii") ? 4 : 0;
    snprintf(out, cap, "%.*s%s%s", (int)(n - ext), path, suffix, path + n - ext);
}

const char *lm_warp_pair_name(const lm_record *rec, long idx, char *buf, size_t cap)
{
    const char *p = lm_record_meta_get(rec, "pair");
    if (p && *p && !strchr(p, '/'))
        return p;
    snprintf(buf, cap, "pair%04ld", idx);
    return buf;
}
