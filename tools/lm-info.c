/* lm-info — describes a tensor stream, a safetensors file (an LLM shard, a checkpoint) or a
 * NIfTI image: records, tensor names, dtypes, shapes, metadata, and per tensor min/max/mean/std
 * and NaN/Inf counts. Text for people, --json for scripts.
 *
 * Output is assembled in memory and written only when every input was read successfully, so a
 * failure leaves no partial output. Safetensors files are read one tensor at a time with pread
 * (a 5 GB shard costs one tensor's memory); streams one record at a time.
 */
#include "cli/lm_cli.h"
#include "lm_io.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const lm_option opts[] = {
    {"json", 'j', NULL, "print one JSON document instead of text"},
    {"tensor", 't', "NAME", "only this tensor (repeatable)"},
    {"no-stats", 'n', NULL, "names, dtypes and shapes only (reads no tensor data)"},
    {"quiet", 'q', NULL, "no progress messages"},
    {"verbose", 'v', NULL, "more messages"},
    {"help", 'h', NULL, "show this help and exit"},
    {"version", 'V', NULL, "show the version and exit"},
    {0},
};
static const lm_cli_spec spec = {
    "[options] [FILE...]",
    "Describe tensor streams (.lmt), safetensors files and NIfTI images (.nii, .nii.gz).\n"
    "With no FILE, or when FILE is -, read a tensor stream from standard input.",
    opts,
    "Exit status: 0 success, 1 unreadable or corrupt input, 2 usage error.",
};

static int json_out, no_stats;
static const char *only[64];
static int nonly;

typedef struct {
    double min, max, mean, std;
    int64_t nan, inf, finite;
} stats;

static void tensor_stats(const lm_tensor *t, stats *s)
{
    double sum = 0, sq = 0;
    int64_t n = lm_tensor_numel(t);
    memset(s, 0, sizeof *s);
    s->min = INFINITY;
    s->max = -INFINITY;
    /* Two passes in double for a stable std. */
    for (int64_t i = 0; i < n; i++) {
        double v = lm_tensor_get(t, i);
        if (isnan(v)) {
            s->nan++;
        } else if (isinf(v)) {
            s->inf++;
        } else {
            s->finite++;
            sum += v;
            if (v < s->min)
                s->min = v;
            if (v > s->max)
                s->max = v;
        }
    }
    s->mean = s->finite ? sum / (double)s->finite : NAN;
    for (int64_t i = 0; i < n; i++) {
        double v = lm_tensor_get(t, i);
        if (isfinite(v))
            sq += (v - s->mean) * (v - s->mean);
    }
    s->std = s->finite ? sqrt(sq / (double)s->finite) : NAN;
    if (!s->finite)
        s->min = s->max = NAN;
}

static int wanted(const char *name)
{
    if (!nonly)
        return 1;
    for (int i = 0; i < nonly; i++)
        if (strcmp(only[i], name) == 0)
            return 1;
    return 0;
}

/* ---- output builders: text goes to a memory stream, JSON to a cJSON tree ---- */
static FILE *txt;
static char *txt_buf;
static size_t txt_len;
static cJSON *jroot;

static cJSON *jshape(int ndim, const int64_t *shape)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < ndim; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber((double)shape[i]));
    return a;
}

static void jnum(cJSON *o, const char *k, double v)
{
    if (isfinite(v))
        cJSON_AddNumberToObject(o, k, v);
    else
        cJSON_AddNullToObject(o, k);
}

static void emit_tensor(cJSON *jarr, const char *name, lm_dtype dt, int ndim,
                        const int64_t *shape, const stats *s)
{
    char sh[160];
    lm_shape_str(sh, sizeof sh, ndim, shape);
    if (json_out) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", name);
        cJSON_AddStringToObject(o, "dtype", lm_dtype_name(dt));
        cJSON_AddItemToObject(o, "shape", jshape(ndim, shape));
        if (s) {
            jnum(o, "min", s->min);
            jnum(o, "max", s->max);
            jnum(o, "mean", s->mean);
            jnum(o, "std", s->std);
            cJSON_AddNumberToObject(o, "nan", (double)s->nan);
            cJSON_AddNumberToObject(o, "inf", (double)s->inf);
        }
        cJSON_AddItemToArray(jarr, o);
        return;
    }
    fprintf(txt, "  %-28s %-4s %-22s", name, lm_dtype_name(dt), sh);
    if (s)
        fprintf(txt, " min %-11.6g max %-11.6g mean %-11.6g std %-11.6g nan %lld inf %lld",
                s->min, s->max, s->mean, s->std, (long long)s->nan, (long long)s->inf);
    fputc('\n', txt);
}

static void emit_meta(cJSON *jrec, const lm_meta_kv *m, int n)
{
    if (json_out) {
        cJSON *o = cJSON_AddObjectToObject(jrec, "metadata");
        for (int i = 0; i < n; i++)
            cJSON_AddStringToObject(o, m[i].key, m[i].value);
        return;
    }
    for (int i = 0; i < n; i++) {
        fprintf(txt, "  @%s = ", m[i].key);
        for (const char *p = m[i].value; *p; p++) /* indent continuation lines (history) */
            fputs(*p == '\n' ? "\n      " : (char[2]){*p, 0}, txt);
        fputc('\n', txt);
    }
}

static cJSON *new_file(const char *path, const char *format)
{
    if (!json_out)
        return NULL;
    cJSON *f = cJSON_CreateObject();
    cJSON_AddStringToObject(f, "file", path);
    cJSON_AddStringToObject(f, "format", format);
    cJSON_AddItemToArray(jroot, f);
    return f;
}

/* ---- the three kinds of input ---- */

static int info_stream(const char *path)
{
    lm_reader *r = lm_reader_open(path);
    lm_record rec;
    int rc;
    if (!r)
        return -1;
    cJSON *jf = new_file(lm_reader_name(r), "stream"), *jrecs = NULL;
    if (jf)
        jrecs = cJSON_AddArrayToObject(jf, "records");
    else
        fprintf(txt, "%s: tensor stream\n", lm_reader_name(r));
    while ((rc = lm_reader_next(r, &rec)) == 1) {
        long idx = lm_reader_count(r);
        cJSON *jrec = NULL, *jt = NULL;
        if (json_out) {
            jrec = cJSON_CreateObject();
            cJSON_AddNumberToObject(jrec, "index", (double)idx);
            cJSON_AddBoolToObject(jrec, "compressed", lm_reader_last_compressed(r));
            cJSON_AddItemToArray(jrecs, jrec);
        } else {
            fprintf(txt, "record %ld (%s, %d tensors)\n", idx,
                    lm_reader_last_compressed(r) ? "zstd" : "uncompressed", rec.n);
        }
        emit_meta(jrec, rec.meta, rec.nmeta);
        if (jrec)
            jt = cJSON_AddArrayToObject(jrec, "tensors");
        for (int i = 0; i < rec.n; i++) {
            stats s;
            if (!wanted(rec.t[i].name))
                continue;
            if (!no_stats)
                tensor_stats(&rec.t[i], &s);
            emit_tensor(jt, rec.t[i].name, rec.t[i].dtype, rec.t[i].ndim, rec.t[i].shape,
                        no_stats ? NULL : &s);
        }
        lm_record_free(&rec);
    }
    if (rc == 0) {
        if (jf)
            cJSON_AddNumberToObject(jf, "count", (double)lm_reader_count(r));
        else
            fprintf(txt, "%ld record%s\n", lm_reader_count(r), lm_reader_count(r) == 1 ? "" : "s");
    }
    lm_reader_close(r);
    return rc < 0 ? -1 : 0;
}

static int info_safetensors(const char *path)
{
    lm_st_file f;
    uint64_t off = 0;
    long nrec = 0;
    cJSON *jf = new_file(path, "safetensors"), *jrecs = NULL;
    if (jf)
        jrecs = cJSON_AddArrayToObject(jf, "records");
    else
        fprintf(txt, "%s: safetensors\n", path);
    do {
        if (lm_st_file_open(&f, path, off) < 0)
            return nrec ? lm_error_prefix("record %ld", nrec + 1) : -1;
        nrec++;
        uint64_t total = 0, done = 0;
        for (int i = 0; i < f.h.n; i++)
            if (wanted(f.h.e[i].name))
                total += f.h.e[i].end - f.h.e[i].begin;
        lm_progress p;
        lm_progress_start(&p, "reading", (int64_t)(total >> 20), "MiB");
        cJSON *jrec = NULL, *jt = NULL;
        if (json_out) {
            jrec = cJSON_CreateObject();
            cJSON_AddNumberToObject(jrec, "index", (double)nrec);
            cJSON_AddNumberToObject(jrec, "header_bytes", (double)f.h.header_len);
            cJSON_AddNumberToObject(jrec, "data_bytes", (double)f.h.data_size);
            cJSON_AddItemToArray(jrecs, jrec);
        } else {
            fprintf(txt, "record %ld (%d tensors, header %llu bytes, data %llu bytes)\n", nrec,
                    f.h.n, (unsigned long long)f.h.header_len,
                    (unsigned long long)f.h.data_size);
        }
        emit_meta(jrec, f.h.meta, f.h.nmeta);
        if (jrec)
            jt = cJSON_AddArrayToObject(jrec, "tensors");
        for (int i = 0; i < f.h.n; i++) {
            const lm_st_entry *e = &f.h.e[i];
            stats s;
            if (!wanted(e->name))
                continue;
            if (!no_stats) {
                lm_tensor t;
                if (lm_st_file_read(&f, i, &t) < 0) {
                    lm_st_file_close(&f);
                    return -1;
                }
                tensor_stats(&t, &s);
                lm_tensor_free(&t);
                done += e->end - e->begin;
                lm_progress_update(&p, (int64_t)(done >> 20));
            }
            emit_tensor(jt, e->name, e->dtype, e->ndim, e->shape, no_stats ? NULL : &s);
        }
        lm_progress_end(&p);
        off = lm_st_file_end(&f);
        uint64_t size = f.file_size;
        lm_st_file_close(&f);
        if (off >= size)
            break;
    } while (1);
    if (jf)
        cJSON_AddNumberToObject(jf, "count", (double)nrec);
    else if (nrec > 1)
        fprintf(txt, "%ld records\n", nrec);
    return 0;
}

static const char *units_name(int u)
{
    switch (u) {
    case 1: return "m";
    case 2: return "mm";
    case 3: return "um";
    default: return "unknown units";
    }
}

static int info_nifti(const char *path)
{
    lm_tensor t;
    lm_nifti_geom g;
    stats s;
    if (lm_nifti_read(path, LM_NII_F32, &t, &g) < 0)
        return -1;
    if (!no_stats)
        tensor_stats(&t, &s);
    cJSON *jf = new_file(path, "nifti");
    if (jf) {
        cJSON_AddNumberToObject(jf, "version", g.version);
        cJSON_AddNumberToObject(jf, "datatype", g.datatype);
        cJSON_AddItemToObject(jf, "shape", jshape(t.ndim, t.shape));
        cJSON *sp = cJSON_AddArrayToObject(jf, "spacing");
        for (int i = 0; i < 3; i++)
            cJSON_AddItemToArray(sp, cJSON_CreateNumber(g.spacing[i]));
        cJSON_AddStringToObject(jf, "units", units_name(g.xyz_units));
        cJSON *af = cJSON_AddArrayToObject(jf, "affine");
        for (int i = 0; i < 16; i++)
            cJSON_AddItemToArray(af, cJSON_CreateNumber(g.affine[i]));
        cJSON_AddNumberToObject(jf, "qform_code", g.qform_code);
        cJSON_AddNumberToObject(jf, "sform_code", g.sform_code);
        cJSON_AddStringToObject(jf, "descrip", g.descrip);
        cJSON *jt = cJSON_AddArrayToObject(jf, "tensors");
        emit_tensor(jt, "data", LM_F32, t.ndim, t.shape, no_stats ? NULL : &s);
    } else {
        char sh[160];
        fprintf(txt, "%s: NIfTI-%d, datatype %d (%s), shape %s (%s), spacing %g %g %g %s\n",
                path, g.version, g.datatype, lm_nifti_datatype_name(g.datatype),
                lm_shape_str(sh, sizeof sh, t.ndim, t.shape), t.ndim == 4 ? "C,D,H,W" : "D,H,W",
                g.spacing[0], g.spacing[1], g.spacing[2], units_name(g.xyz_units));
        fprintf(txt, "  qform_code %d, sform_code %d; voxel-to-world affine (%s):\n",
                g.qform_code, g.sform_code,
                g.sform_code > 0 ? "sform" : g.qform_code > 0 ? "qform" : "fallback");
        for (int r = 0; r < 3; r++)
            fprintf(txt, "    %12.6g %12.6g %12.6g %12.6g\n", g.affine[r * 4], g.affine[r * 4 + 1],
                    g.affine[r * 4 + 2], g.affine[r * 4 + 3]);
        if (g.scl_slope != 0 && isfinite(g.scl_slope) && !(g.scl_slope == 1 && g.scl_inter == 0))
            fprintf(txt, "  scaled: value = stored * %g + %g\n", g.scl_slope, g.scl_inter);
        emit_tensor(NULL, "data", LM_F32, t.ndim, t.shape, no_stats ? NULL : &s);
    }
    lm_tensor_free(&t);
    return 0;
}

static int sniff(const char *path, unsigned char *b, size_t n)
{
    FILE *fp = fopen(path, "rb");
    struct stat st;
    if (!fp)
        return lm_error_set("%s", strerror(errno));
    if (fstat(fileno(fp), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(fp);
        return lm_error_set("is a directory");
    }
    size_t k = fread(b, 1, n, fp);
    fclose(fp);
    if (k == 0)
        return lm_error_set("empty file");
    return (int)k;
}

static int info_file(const char *path)
{
    unsigned char b[352] = {0};
    if (strcmp(path, "-") == 0)
        return info_stream(path);
    int k = sniff(path, b, sizeof b);
    if (k < 0)
        return -1;
    int zstd = k >= 4 && ((b[0] == 0x28 && b[1] == 0xB5 && b[2] == 0x2F && b[3] == 0xFD) ||
                          ((b[0] & 0xF0) == 0x50 && b[1] == 0x2A && b[2] == 0x4D && b[3] == 0x18));
    int gz = k >= 2 && b[0] == 0x1f && b[1] == 0x8b;
    int nii = k >= 348 && (memcmp(b + 344, "n+1", 4) == 0 || memcmp(b + 344, "ni1", 4) == 0 ||
                           memcmp(b + 4, "n+2", 3) == 0);
    if (lm_nifti_is_name(path) || gz || nii)
        return info_nifti(path);
    if (zstd)
        return info_stream(path);
    return info_safetensors(path);
}

int main(int argc, char **argv)
{
    const char *arg;
    int c;
    lm_cli_init(argv[0]);
    while ((c = lm_cli_next(argc, argv, &spec, &arg)) >= 0) {
        const char *o = opts[c].lng;
        if (!strcmp(o, "json"))
            json_out = 1;
        else if (!strcmp(o, "no-stats"))
            no_stats = 1;
        else if (!strcmp(o, "quiet"))
            lm_verbose = -1;
        else if (!strcmp(o, "verbose"))
            lm_verbose++;
        else if (!strcmp(o, "tensor")) {
            if (nonly == (int)(sizeof only / sizeof *only))
                lm_usage_error("too many --tensor options");
            only[nonly++] = arg;
        }
    }
    txt = open_memstream(&txt_buf, &txt_len);
    if (!txt)
        lm_die(LM_EXIT_FAIL, "out of memory");
    jroot = cJSON_CreateArray();
    int nfiles = argc - optind;
    for (int i = 0; i < (nfiles ? nfiles : 1); i++) {
        const char *path = nfiles ? argv[optind + i] : "-";
        if (info_file(path) < 0)
            lm_die(LM_EXIT_FAIL, "%s: %s", strcmp(path, "-") ? path : "stdin", lm_error());
    }
    fclose(txt);
    if (json_out) {
        char *s = cJSON_Print(nfiles == 1 || nfiles == 0 ? cJSON_GetArrayItem(jroot, 0) : jroot);
        if (!s)
            lm_die(LM_EXIT_FAIL, "out of memory");
        puts(s);
        free(s);
    } else {
        fwrite(txt_buf, 1, txt_len, stdout);
    }
    if (fflush(stdout) != 0 || ferror(stdout))
        lm_die(LM_EXIT_FAIL, "stdout: %s", errno == EPIPE ? "broken pipe" : strerror(errno));
    cJSON_Delete(jroot);
    free(txt_buf);
    return LM_EXIT_OK;
}
