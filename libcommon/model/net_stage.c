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

/* The activation `act` as the record's tensor `name`, in two steps. Declared (fetch 0): on the
 * CPU backend a view of the activation, not a copy (it holds until the next run on n, and
 * lm_net_stream writes every record before that), which the network fills when it runs, so it
 * may be declared before; on other backends a host tensor. Fetched (fetch 1), after the run: the
 * download into that tensor (nothing to do on the CPU). */
static int out_act(lm_net *n, lm_record *rec, const char *act, const char *name, int fetch)
{
    int i = net_act_index(n, act);
    const lm_net_act_info *a = &n->plan.a[i];
    const int host = n->be->kind == LM_BACKEND_CPU;
    if (fetch) {
        lm_tensor *t = lm_record_get(rec, name);
        if (host)
            return 0;
        return t ? lm_backend_download(n->be, t->data, n->act[i], t->nbytes)
                 : lm_error_set("no '%s' tensor to fetch", name);
    }
    lm_tensor t;
    int rc = host ? lm_tensor_wrap(&t, name, LM_F32, a->ndim, a->shape, n->act[i])
                  : lm_tensor_alloc(&t, name, LM_F32, a->ndim, a->shape);
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

/* ---- the stages, in phases -------------------------------------------------------------------
 * check: the config has the stage; load: inputs from the record to the backend (copies: the
 * record's tensors are not needed after it); compute: the network; outputs: declared (before or
 * after the compute) or fetched (after it). A stage call is check, load, compute, outputs
 * declared, outputs fetched; lm_net_stream drops the tensors the stage consumed after the load
 * and declares the outputs before the compute, so that the writer can compress the tensors that
 * pass through while the network runs. */

static int encode_outputs(lm_net *n, lm_record *rec, int fetch)
{
    char a[8];
    for (int s = 1; s <= 5; s++) {
        snprintf(a, sizeof a, "fm%d", s);
        if (out_act(n, rec, a, a, fetch) < 0)
            return -1;
        snprintf(a, sizeof a, "ff%d", s);
        if (out_act(n, rec, a, a, fetch) < 0)
            return -1;
    }
    return 0;
}

static int encode_load(lm_net *n, lm_record *rec) { return set_images(n, rec, 1); }

static int leb_check(const lm_net *n)
{
    return lm_net_uses_llm(&n->c) ? 0 : lm_error_set("this config (no-leb) has no LEBs");
}

static int leb_outputs(lm_net *n, lm_record *rec, int fetch)
{
    return out_act(n, rec, "t", "tokens", fetch);
}

static int leb_load(lm_net *n, lm_record *rec)
{
    return upload_from(n, rec, "fm5", "fm5") < 0 || upload_from(n, rec, "ff5", "ff5") < 0 ? -1
                                                                                            : 0;
}

static int flow_outputs(lm_net *n, lm_record *rec, int fetch)
{
    if (out_act(n, rec, "phi", "flow", fetch) < 0)
        return -1;
    return n->c.half ? out_act(n, rec, "phi_full", "flow_full", fetch) : 0;
}

static int decode_load(lm_net *n, lm_record *rec)
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
    return set_images(n, rec, 0);
}

static int register_load(lm_net *n, lm_record *rec) { return set_images(n, rec, 1); }

typedef struct {
    lm_net_stage_fn fn;
    int (*check)(const lm_net *n); /* NULL: every config has the stage */
    int (*load)(lm_net *n, lm_record *rec);
    int (*compute)(lm_net *n);
    int (*outputs)(lm_net *n, lm_record *rec, int fetch);
    /* the record's tensors the stage consumes: dropped from its output unless kept */
    const char *consumed[10];
} stage_phases;

static const stage_phases phases[] = {
    {lm_net_stage_encode, NULL, encode_load, lm_net_encode, encode_outputs, {NULL}},
    {lm_net_stage_leb, leb_check, leb_load, lm_net_leb, leb_outputs, {"fm5", "ff5", NULL}},
    {lm_net_stage_decode,
     NULL,
     decode_load,
     lm_net_decode,
     flow_outputs,
     {"tokens", "fm1", "ff1", "fm2", "ff2", "fm3", "ff3", "fm4", "ff4", NULL}},
    {lm_net_stage_register, NULL, register_load, lm_net_forward, flow_outputs, {NULL}},
};

static int stage_call(int k, lm_net *n, lm_record *rec)
{
    const stage_phases *p = &phases[k];
    if ((p->check && p->check(n) < 0) || p->load(n, rec) < 0 || p->compute(n) < 0)
        return -1;
    return p->outputs(n, rec, 0) < 0 || p->outputs(n, rec, 1) < 0 ? -1 : 0;
}

int lm_net_stage_encode(lm_net *n, lm_record *rec) { return stage_call(0, n, rec); }
int lm_net_stage_leb(lm_net *n, lm_record *rec) { return stage_call(1, n, rec); }
int lm_net_stage_decode(lm_net *n, lm_record *rec) { return stage_call(2, n, rec); }
int lm_net_stage_register(lm_net *n, lm_record *rec) { return stage_call(3, n, rec); }

/* ---- the streaming loop of the stage programs ------------------------------------------------- */

#include "cli/lm_cli.h"
#include "io/lm_stream.h"

/* One record through a stage: inputs loaded, the consumed ones dropped (unless keep), outputs
 * declared and history added, so that the record's layout is final; the writer starts on the
 * tensors before the first output (those that pass through), the network computes meanwhile,
 * then the writer finishes. -1: the stage's error, -2: a write error. */
static int stream_record(const stage_phases *p, lm_net *n, lm_writer *w, lm_record *rec,
                         int keep, int argc, char **argv)
{
    if ((p->check && p->check(n) < 0) || p->load(n, rec) < 0)
        return -1;
    for (int i = 0; !keep && p->consumed[i]; i++) {
        lm_tensor t;
        if (lm_record_cget(rec, p->consumed[i]) && lm_record_take(rec, p->consumed[i], &t) == 0)
            lm_tensor_free(&t);
    }
    int n0 = rec->n, ready;
    void **before = malloc((size_t)(n0 ? n0 : 1) * sizeof *before);
    if (!before)
        return lm_error_set("out of memory");
    for (int i = 0; i < n0; i++)
        before[i] = rec->t[i].data;
    int rc = p->outputs(n, rec, 0) < 0 || lm_record_add_history(rec, argc, argv) < 0 ? -1 : 0;
    /* outputs are appended, or replace a tensor of the same name where it stands */
    for (ready = 0; ready < n0 && rec->t[ready].data == before[ready]; ready++)
        ;
    free(before);
    if (rc < 0)
        return -1;
    if (lm_writer_begin(w, rec, ready) < 0)
        return -2;
    if (p->compute(n) < 0 || p->outputs(n, rec, 1) < 0)
        return -1;
    return lm_writer_end(w, rec) < 0 ? -2 : 0;
}

int lm_net_stream(lm_net *n, lm_net_stage_fn stage, const char *in, const char *out, int wflags,
                  int keep, int argc, char **argv, const char *what, long *count)
{
    *count = 0;
    const stage_phases *ph = NULL;
    for (size_t k = 0; k < sizeof phases / sizeof *phases; k++)
        if (phases[k].fn == stage)
            ph = &phases[k];
    if (!ph)
        return lm_error_set("lm_net_stream: not a stage of the network");
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
     * the reader's buffer, and on the CPU its outputs views of the activations. The tensors that
     * pass through are compressed while the network runs; the writer is done with the record
     * before the next one is read. */
    while ((rc = lm_reader_next_view(r, &rec)) > 0) {
        (*count)++;
        rc = stream_record(ph, n, w, &rec, keep, argc, argv);
        if (rc == -1)
            lm_error_prefix("record %ld", *count);
        else if (rc == -2)
            lm_error_prefix("%s", lm_writer_name(w));
        if (rc < 0) { /* before the record goes: the writer may still be reading it */
            char msg[1200];
            snprintf(msg, sizeof msg, "%s", lm_error());
            lm_writer_abort(w);
            w = NULL;
            lm_error_set("%s", msg);
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
