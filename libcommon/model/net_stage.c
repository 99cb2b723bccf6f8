/* net_stage.c — the network stages on stream records (what lm-encode, lm-leb, lm-decode and
 * lm-register run per record), and the --device -> backend helper. Each stage takes its
 * tensors from the record (checked against the plan's shapes), runs on the backend, and puts
 * its outputs back as F32 [1,C,D,H,W] volumes or [1,L,C] tokens; other tensors stay.
 * The same library calls run in every program, so on the CPU backend the piped stages and the
 * fused lm-register give bit-identical fields. */
#include "cli/lm_device.h"
#include "io/lm_error.h"
#include "model/net_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if LM_HAVE_CUDA
#include "cuda/lm_cuda.h"
#endif

lm_backend *lm_net_backend_open(const char *spec)
{
    lm_device d;
    if (lm_device_select(spec, &d) < 0)
        return NULL;
    if (d.kind == LM_DEV_CPU)
        return lm_backend_cpu();
#if LM_HAVE_CUDA
    return lm_backend_cuda(d.index);
#else
    lm_error_set("this build has no CUDA backend");
    return NULL;
#endif
}

void lm_net_backend_close(lm_backend *be)
{
#if LM_HAVE_CUDA
    if (be && be->kind == LM_BACKEND_CUDA)
        lm_backend_cuda_free(be);
#else
    (void)be;
#endif
}

/* The record's tensor `name` as F32 host data of exactly the plan's shape of `act`
 * (a [C,D,H,W] volume without the batch axis is accepted too). *tmp owns a conversion. */
static const float *take(lm_record *rec, const char *name, const lm_net_act_info *a,
                         lm_tensor *tmp)
{
    memset(tmp, 0, sizeof *tmp);
    const lm_tensor *t = lm_record_cget(rec, name);
    if (!t) {
        lm_error_set("no '%s' tensor", name);
        return NULL;
    }
    int off = t->ndim == a->ndim - 1 ? 1 : 0;
    if (t->ndim + off != a->ndim ||
        memcmp(t->shape, a->shape + off, (size_t)t->ndim * sizeof(int64_t))) {
        char x[96], y[96];
        lm_error_set("%s: shape %s, expected %s", name, lm_shape_str(x, sizeof x, t->ndim, t->shape),
                     lm_shape_str(y, sizeof y, a->ndim, a->shape));
        return NULL;
    }
    if (t->dtype == LM_F32)
        return t->data;
    if (!lm_dtype_is_float(t->dtype)) {
        lm_error_set("%s: dtype %s, expected a float tensor", name, lm_dtype_name(t->dtype));
        return NULL;
    }
    if (lm_tensor_convert(tmp, t, LM_F32) < 0)
        return NULL;
    return tmp->data;
}

static int upload_from(lm_net *n, lm_record *rec, const char *name, const char *act)
{
    int i = net_act_index(n, act);
    lm_tensor tmp;
    const float *h = take(rec, name, &n->plan.a[i], &tmp);
    if (!h)
        return -1;
    int rc = lm_backend_upload(n->be, n->act[i], h, (size_t)n->plan.a[i].numel * sizeof(float));
    lm_tensor_free(&tmp);
    return rc;
}

/* The activation `act` as the record's tensor `name`. On the CPU backend the activation is host
 * memory and the tensor is a view of it, not a copy: it holds until the next call on n, and
 * lm_net_stream writes every record before that. */
static int put_act(lm_net *n, lm_record *rec, const char *act, const char *name)
{
    int i = net_act_index(n, act);
    const lm_net_act_info *a = &n->plan.a[i];
    lm_tensor t;
    int rc;
    if (n->be->kind == LM_BACKEND_CPU) {
        rc = lm_tensor_wrap(&t, name, LM_F32, a->ndim, a->shape, n->act[i]);
    } else {
        rc = lm_tensor_alloc(&t, name, LM_F32, a->ndim, a->shape);
        if (rc == 0)
            rc = lm_backend_download(n->be, t.data, n->act[i], t.nbytes);
    }
    if (rc == 0)
        rc = lm_record_put(rec, &t);
    lm_tensor_free(&t);
    return rc;
}

/* An image [1,1,D,H,W] (or [D,H,W]) of the record: its grid and F32 data. */
static const float *image(lm_record *rec, const char *name, int64_t dhw[3], lm_tensor *tmp)
{
    memset(tmp, 0, sizeof *tmp);
    const lm_tensor *t = lm_record_cget(rec, name);
    if (!t) {
        lm_error_set("no '%s' tensor", name);
        return NULL;
    }
    if (!(t->ndim == 3 || (t->ndim == 5 && t->shape[0] == 1 && t->shape[1] == 1))) {
        char x[96];
        lm_error_set("%s: shape %s, expected [1,1,D,H,W]", name,
                     lm_shape_str(x, sizeof x, t->ndim, t->shape));
        return NULL;
    }
    memcpy(dhw, t->shape + t->ndim - 3, 3 * sizeof(int64_t));
    if (t->dtype == LM_F32)
        return t->data;
    if (!lm_dtype_is_float(t->dtype)) {
        lm_error_set("%s: dtype %s, expected a float image", name, lm_dtype_name(t->dtype));
        return NULL;
    }
    return lm_tensor_convert(tmp, t, LM_F32) < 0 ? NULL : tmp->data;
}

static int set_images(lm_net *n, lm_record *rec, int need_fixed)
{
    lm_tensor tm, tf;
    int64_t dm[3], df[3];
    const float *m = image(rec, "moving", dm, &tm), *f = NULL;
    if (!m)
        return -1;
    if (need_fixed) {
        f = image(rec, "fixed", df, &tf);
        if (!f) {
            lm_tensor_free(&tm);
            return -1;
        }
        if (memcmp(dm, df, sizeof dm)) {
            lm_tensor_free(&tm);
            lm_tensor_free(&tf);
            return lm_error_set("moving and fixed have different grids");
        }
    }
    /* lm-decode has no fixed image: give the moving one twice (the fixed buffer is unused) */
    int rc = lm_net_set_images(n, m, f ? f : m, dm);
    lm_tensor_free(&tm);
    if (f)
        lm_tensor_free(&tf);
    return rc;
}

int lm_net_stage_encode(lm_net *n, lm_record *rec)
{
    if (set_images(n, rec, 1) < 0 || lm_net_encode(n) < 0)
        return -1;
    char a[8];
    for (int s = 1; s <= 5; s++) {
        snprintf(a, sizeof a, "fm%d", s);
        if (put_act(n, rec, a, a) < 0)
            return -1;
        snprintf(a, sizeof a, "ff%d", s);
        if (put_act(n, rec, a, a) < 0)
            return -1;
    }
    return 0;
}

int lm_net_stage_leb(lm_net *n, lm_record *rec)
{
    if (!lm_net_uses_llm(&n->c))
        return lm_error_set("this config (no-leb) has no LEBs");
    if (upload_from(n, rec, "fm5", "fm5") < 0 || upload_from(n, rec, "ff5", "ff5") < 0 ||
        lm_net_leb(n) < 0)
        return -1;
    return put_act(n, rec, "t", "tokens");
}

static int put_flows(lm_net *n, lm_record *rec)
{
    if (put_act(n, rec, "phi", "flow") < 0)
        return -1;
    return n->c.half ? put_act(n, rec, "phi_full", "flow_full") : 0;
}

int lm_net_stage_decode(lm_net *n, lm_record *rec)
{
    if (lm_net_uses_llm(&n->c) && upload_from(n, rec, "tokens", "t") < 0)
        return -1;
    char a[8];
    for (int s = 1; s <= 4; s++) {
        snprintf(a, sizeof a, "fm%d", s);
        if (upload_from(n, rec, a, a) < 0)
            return -1;
        snprintf(a, sizeof a, "ff%d", s);
        if (upload_from(n, rec, a, a) < 0)
            return -1;
    }
    if (set_images(n, rec, 0) < 0 || lm_net_decode(n) < 0)
        return -1;
    return put_flows(n, rec);
}

int lm_net_stage_register(lm_net *n, lm_record *rec)
{
    if (set_images(n, rec, 1) < 0 || lm_net_forward(n) < 0)
        return -1;
    return put_flows(n, rec);
}

/* ---- the streaming loop of the stage programs ------------------------------------------------- */

#include "cli/lm_cli.h"
#include "io/lm_stream.h"

int lm_net_stream(lm_net *n, lm_net_stage_fn stage, const char *in, const char *out, int wflags,
                  int argc, char **argv, const char *what, long *count)
{
    *count = 0;
    lm_writer *w = lm_writer_open(out, wflags);
    if (!w)
        return lm_error_prefix("%s", out ? out : "stdout");
    lm_reader *r = lm_reader_open(in);
    if (!r) {
        lm_writer_abort(w);
        return lm_error_prefix("%s", in && strcmp(in, "-") ? in : "stdin");
    }
    lm_progress prog;
    lm_progress_start(&prog, what, 0, "pairs");
    lm_record rec;
    int rc;
    /* No copies of the big tensors on the way through: the record's input tensors are views of
     * the reader's buffer, and on the CPU its outputs views of the activations; lm_writer_put
     * has compressed them all before the next record is read or computed. */
    while ((rc = lm_reader_next_view(r, &rec)) > 0) {
        (*count)++;
        if (stage(n, &rec) < 0 || lm_record_add_history(&rec, argc, argv) < 0) {
            lm_error_prefix("record %ld", *count);
            rc = -1;
        } else if (lm_writer_put(w, &rec) < 0) {
            lm_error_prefix("%s", lm_writer_name(w));
            rc = -2;
        }
        lm_record_free(&rec);
        if (rc < 0)
            break;
        lm_progress_update(&prog, *count);
    }
    if (rc == -1)
        lm_error_prefix("%s", lm_reader_name(r));
    lm_reader_close(r);
    if (rc < 0) {
        lm_writer_abort(w);
        return -1;
    }
    lm_progress_end(&prog);
    if (lm_writer_commit(w) < 0)
        return lm_error_prefix("%s", out ? out : "stdout");
    return 0;
}
