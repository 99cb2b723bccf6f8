/* test_safetensors.c — safetensors headers, lazy reads and writes: a file written by Python's
 * safetensors package, the real stories260K checkpoint, every dtype round trip, and every
 * kind of malformed header. */
#include "io/lm_error.h"
#include "io/lm_safetensors.h"
#include "lm_test.h"
#include "lm_testutil.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* Writes [N | json | ndata zero bytes] to a temp file and returns its path. */
static const char *mkfile(const char *name, const char *json, size_t ndata)
{
    static char path[1024];
    size_t n = strlen(json);
    unsigned char *buf = calloc(8 + n + ndata + 1, 1);
    put64(buf, n);
    memcpy(buf + 8, json, n);
    snprintf(path, sizeof path, "%s/%s", lm_test_tmpdir(), name);
    lm_tu_write(path, buf, 8 + n + ndata);
    free(buf);
    return path;
}

static void t_python_fixture(void)
{
    char path[1024];
    cJSON *ref = lm_tu_json("tests/data/py_fixture.json");
    LM_CHECK(ref != NULL, "tests/data/py_fixture.json missing");
    if (!ref)
        return;
    snprintf(path, sizeof path, "%s/tests/data/py_fixture.safetensors", lm_test_srcdir());
    lm_st_file f;
    LM_CHECK(lm_st_file_open(&f, path, 0) == 0, "open: %s", lm_error());
    LM_CHECK(f.h.header_len == (uint64_t)cJSON_GetObjectItem(ref, "header_len")->valueint,
             "header_len");
    LM_CHECK(lm_st_file_end(&f) == (uint64_t)cJSON_GetObjectItem(ref, "file_size")->valueint,
             "record end == file size");
    const cJSON *meta = cJSON_GetObjectItem(ref, "metadata"), *m;
    LM_CHECK(f.h.nmeta == cJSON_GetArraySize(meta), "metadata count");
    cJSON_ArrayForEach(m, meta)
    {
        int found = 0;
        for (int i = 0; i < f.h.nmeta; i++)
            found |= !strcmp(f.h.meta[i].key, m->string) &&
                     !strcmp(f.h.meta[i].value, m->valuestring);
        LM_CHECK(found, "metadata %s", m->string);
    }
    const cJSON *tensors = cJSON_GetObjectItem(ref, "tensors"), *jt;
    LM_CHECK(f.h.n == cJSON_GetArraySize(tensors), "tensor count %d", f.h.n);
    cJSON_ArrayForEach(jt, tensors)
    {
        const char *name = cJSON_GetObjectItem(jt, "name")->valuestring;
        lm_tensor t;
        if (lm_st_file_read_name(&f, name, &t) < 0) {
            LM_CHECK(0, "read %s: %s", name, lm_error());
            continue;
        }
        LM_CHECK(!strcmp(lm_dtype_name(t.dtype), cJSON_GetObjectItem(jt, "dtype")->valuestring),
                 "%s dtype", name);
        const cJSON *shape = cJSON_GetObjectItem(jt, "shape");
        LM_CHECK(t.ndim == cJSON_GetArraySize(shape), "%s ndim", name);
        for (int d = 0; d < t.ndim && d < cJSON_GetArraySize(shape); d++)
            LM_CHECK(t.shape[d] == cJSON_GetArrayItem(shape, d)->valueint, "%s shape", name);
        const cJSON *vals = cJSON_GetObjectItem(jt, "values"), *bits = cJSON_GetObjectItem(jt, "bits");
        LM_CHECK(lm_tensor_numel(&t) == cJSON_GetArraySize(vals), "%s numel", name);
        for (int i = 0; i < cJSON_GetArraySize(vals) && i < lm_tensor_numel(&t); i++) {
            const cJSON *v = cJSON_GetArrayItem(vals, i);
            if (bits) { /* floats: compare stored bits exactly */
                uint64_t b = 0;
                memcpy(&b, (char *)t.data + (size_t)i * lm_dtype_size(t.dtype),
                       lm_dtype_size(t.dtype));
                LM_CHECK((double)b == cJSON_GetArrayItem(bits, i)->valuedouble, "%s[%d] bits",
                         name, i);
                double want = lm_tu_jnum(v), got = lm_tensor_get(&t, i);
                LM_CHECK(lm_test_close(got, want, 0, 0) && signbit(got) == signbit(want),
                         "%s[%d] = %g, want %g", name, i, got, want);
            } else if (t.dtype == LM_I64) {
                int64_t got;
                memcpy(&got, (char *)t.data + 8 * (size_t)i, 8);
                LM_CHECK(got == strtoll(v->valuestring, NULL, 10), "%s[%d]", name, i);
            } else if (t.dtype == LM_U64) {
                uint64_t got;
                memcpy(&got, (char *)t.data + 8 * (size_t)i, 8);
                LM_CHECK(got == strtoull(v->valuestring, NULL, 10), "%s[%d]", name, i);
            } else {
                LM_CHECK(lm_tensor_get(&t, i) == v->valuedouble, "%s[%d] = %g, want %g", name, i,
                         lm_tensor_get(&t, i), v->valuedouble);
            }
        }
        lm_tensor_free(&t);
    }
    lm_st_file_close(&f);
    cJSON_Delete(ref);
}

static void t_stories(void)
{
    const char *sh = lm_test_shared();
    if (!sh) {
        lm_test_skip("../shared is absent");
        return;
    }
    char path[1024];
    snprintf(path, sizeof path, "%s/weights/stories260K-hf/model.safetensors", sh);
    cJSON *ref = lm_tu_json("tests/data/stories260k_ref.json");
    LM_CHECK(ref != NULL, "stories260k_ref.json missing");
    if (!ref)
        return;
    lm_st_file f;
    LM_CHECK(lm_st_file_open(&f, path, 0) == 0, "open: %s", lm_error());
    const cJSON *jt;
    LM_CHECK(f.h.n == cJSON_GetArraySize(cJSON_GetObjectItem(ref, "tensors")), "count");
    cJSON_ArrayForEach(jt, cJSON_GetObjectItem(ref, "tensors"))
    {
        int i = lm_st_header_find(&f.h, cJSON_GetObjectItem(jt, "name")->valuestring);
        LM_CHECK(i >= 0, "missing %s", cJSON_GetObjectItem(jt, "name")->valuestring);
        if (i < 0)
            continue;
        const cJSON *shape = cJSON_GetObjectItem(jt, "shape"), *off = cJSON_GetObjectItem(jt, "data_offsets");
        LM_CHECK(f.h.e[i].ndim == cJSON_GetArraySize(shape), "ndim");
        for (int d = 0; d < f.h.e[i].ndim; d++)
            LM_CHECK(f.h.e[i].shape[d] == cJSON_GetArrayItem(shape, d)->valueint, "shape");
        LM_CHECK(f.h.e[i].begin == (uint64_t)cJSON_GetArrayItem(off, 0)->valuedouble &&
                     f.h.e[i].end == (uint64_t)cJSON_GetArrayItem(off, 1)->valuedouble,
                 "offsets");
    }
    cJSON_ArrayForEach(jt, cJSON_GetObjectItem(ref, "checks"))
    {
        lm_tensor t;
        const char *name = cJSON_GetObjectItem(jt, "name")->valuestring;
        LM_CHECK(lm_st_file_read_name(&f, name, &t) == 0, "read %s", name);
        const cJSON *s;
        cJSON_ArrayForEach(s, cJSON_GetObjectItem(jt, "samples"))
        {
            int64_t idx = (int64_t)cJSON_GetObjectItem(s, "index")->valuedouble;
            LM_CHECK(lm_tensor_get(&t, idx) == (double)(float)cJSON_GetObjectItem(s, "value")->valuedouble,
                     "%s[%lld]", name, (long long)idx);
        }
        double sum = 0;
        for (int64_t i = 0; i < lm_tensor_numel(&t); i++)
            sum += lm_tensor_get(&t, i);
        LM_CHECK_CLOSE(sum, cJSON_GetObjectItem(jt, "sum")->valuedouble, 1e-9, 1e-12);
        lm_tensor_free(&t);
    }
    lm_st_file_close(&f);
    cJSON_Delete(ref);
}

static void fill_random(lm_tensor *t, uint64_t seed)
{
    unsigned char *p = t->data;
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < t->nbytes; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (unsigned char)x;
    }
    if (t->dtype == LM_BOOL)
        for (size_t i = 0; i < t->nbytes; i++)
            p[i] &= 1;
}

static void t_roundtrip_all_dtypes(void)
{
    lm_record r, back;
    lm_record_init(&r);
    for (int d = 0; d < LM_DTYPE_COUNT; d++) {
        int64_t shape[3] = {3, 1, 5 + d};
        lm_tensor t;
        char name[32];
        snprintf(name, sizeof name, "x_%s \"q\"\\", lm_dtype_name((lm_dtype)d));
        lm_tensor_alloc(&t, name, (lm_dtype)d, 3, shape);
        fill_random(&t, lm_test_seed() + (uint64_t)d);
        lm_record_put(&r, &t);
    }
    lm_tensor s;
    lm_tensor_alloc(&s, "scalar", LM_F64, 0, NULL);
    lm_record_put(&r, &s);
    lm_record_meta_set(&r, "history", "line one\nline \"two\"\ttab");
    lm_record_meta_set(&r, "unicode", "µm ü");
    char path[1024];
    snprintf(path, sizeof path, "%s/all.safetensors", lm_test_tmpdir());
    LM_CHECK(lm_st_write_file(path, &r) == 0, "write: %s", lm_error());
    size_t len;
    unsigned char *buf = (unsigned char *)lm_tu_slurp(path, &len);
    LM_CHECK(buf && lm_st_parse_record(&back, buf, len) == 0, "parse: %s", lm_error());
    LM_CHECK(back.n == r.n, "count");
    for (int i = 0; i < r.n && i < back.n; i++) {
        const lm_tensor *a = &r.t[i], *b = lm_record_cget(&back, a->name);
        LM_CHECK(b && b->dtype == a->dtype && b->ndim == a->ndim && b->nbytes == a->nbytes &&
                     !memcmp(a->data, b->data, a->nbytes),
                 "tensor %s differs", a->name);
    }
    LM_CHECK(!strcmp(lm_record_meta_get(&back, "history"), "line one\nline \"two\"\ttab"), "meta");
    LM_CHECK(!strcmp(lm_record_meta_get(&back, "unicode"), "µm ü"), "unicode meta");
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | buf[i];
    LM_CHECK(n % 8 == 0, "header padded to 8 bytes (N=%llu)", (unsigned long long)n);
    lm_st_file f;
    LM_CHECK(lm_st_file_open(&f, path, 0) == 0, "lazy open");
    lm_tensor one;
    LM_CHECK(lm_st_file_read_name(&f, r.t[3].name, &one) == 0 &&
                 !memcmp(one.data, r.t[3].data, one.nbytes),
             "lazy read of one tensor");
    lm_tensor_free(&one);
    lm_st_file_close(&f);
    free(buf);
    lm_record_free(&back);
    lm_record_free(&r);
}

static void t_bad_headers(void)
{
    static const struct {
        const char *json;
        size_t ndata;
        const char *expect;
    } bad[] = {
        {"{\"a\":{\"dtype\":\"F32\",", 0, "corrupt JSON"},
        {"[1,2,3]", 0, "must start with '{'"},
        {"{\"a\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,4]}}", 4, "shape"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "shape"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 2, "truncated"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 8, "needs 8"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
         12, "overlap"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
         12, "gap"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         8, "duplicate"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776,1099511627776],"
         "\"data_offsets\":[0,4]}}",
         4, "overflows"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
         "dims"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "needs dtype, shape and data_offsets"},
        {"{\"__metadata__\":{\"k\":3}}", 0, "not a string"},
        {"{\"__metadata__\":[1]}", 0, "not an object"},
        {"{\"a\":5}", 0, "not an object"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1099511627776],\"data_offsets\":[0,4398046511104]}}",
         0, "truncated"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char name[32];
        snprintf(name, sizeof name, "bad%zu.st", i);
        const char *path = mkfile(name, bad[i].json, bad[i].ndata);
        lm_st_file f;
        int rc = lm_st_file_open(&f, path, 0);
        LM_CHECK(rc < 0, "case %zu accepted", i);
        LM_CHECK(rc >= 0 || strstr(lm_error(), bad[i].expect), "case %zu: '%s' lacks '%s'", i,
                 lm_error(), bad[i].expect);
        if (rc == 0)
            lm_st_file_close(&f);
        /* The in-memory parser must agree. */
        size_t len;
        char *buf = lm_tu_slurp(path, &len);
        lm_record rec;
        LM_CHECK(lm_st_parse_record(&rec, (unsigned char *)buf, len) < 0, "parse case %zu", i);
        free(buf);
    }
    /* A header length larger than the limit or the file is refused before allocation. */
    unsigned char b[16] = {0};
    put64(b, 1ull << 40);
    char path[1024];
    snprintf(path, sizeof path, "%s/hugeN.st", lm_test_tmpdir());
    lm_tu_write(path, b, 16);
    lm_st_file f;
    LM_CHECK(lm_st_file_open(&f, path, 0) < 0 && strstr(lm_error(), "exceeds"), "huge N: %s",
             lm_error());
    put64(b, 1000);
    lm_tu_write(path, b, 16);
    LM_CHECK(lm_st_file_open(&f, path, 0) < 0 && strstr(lm_error(), "truncated"),
             "N past end: %s", lm_error());
    lm_tu_write(path, b, 5);
    LM_CHECK(lm_st_file_open(&f, path, 0) < 0 && strstr(lm_error(), "truncated"), "short: %s",
             lm_error());
    lm_tu_write(path, b, 0);
    LM_CHECK(lm_st_file_open(&f, path, 0) < 0 && strstr(lm_error(), "empty"), "empty: %s",
             lm_error());
}

/* Zero-size tensors share the offset of their neighbour, in either header order. */
static void t_zero_size(void)
{
    const char *orders[2] = {
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
        "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}",
        "{\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}"};
    for (int i = 0; i < 2; i++) {
        lm_st_file f;
        const char *path = mkfile(i ? "z1.st" : "z0.st", orders[i], 4);
        LM_CHECK(lm_st_file_open(&f, path, 0) == 0, "order %d: %s", i, lm_error());
        lm_st_file_close(&f);
    }
}

/* A 4 GiB tensor in a sparse file: reading the small tensor beside it must not read it. */
static void t_lazy_subset(void)
{
    const char *json = "{\"small\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                       "\"huge\":{\"dtype\":\"U8\",\"shape\":[4294967296],"
                       "\"data_offsets\":[16,4294967312]}}";
    char path[1024];
    snprintf(path, sizeof path, "%s/sparse.st", lm_test_tmpdir());
    size_t n = strlen(json);
    unsigned char hdr[8];
    put64(hdr, n);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    float small[4] = {1, 2, 3, 4};
    int ok = fd >= 0 && write(fd, hdr, 8) == 8 && write(fd, json, n) == (ssize_t)n &&
             write(fd, small, 16) == 16 && ftruncate(fd, (off_t)(8 + n + 4294967312ull)) == 0;
    if (fd >= 0)
        close(fd);
    if (!ok) {
        lm_test_skip("cannot make a sparse file here");
        return;
    }
    double before = lm_tu_maxrss_mib();
    lm_st_file f;
    LM_CHECK(lm_st_file_open(&f, path, 0) == 0, "open: %s", lm_error());
    lm_tensor t;
    LM_CHECK(lm_st_file_read_name(&f, "small", &t) == 0 && ((float *)t.data)[3] == 4, "small");
    lm_tensor_free(&t);
    lm_st_file_close(&f);
    double after = lm_tu_maxrss_mib();
    LM_CHECK(after - before < 64, "reading one tensor grew RSS by %.0f MiB", after - before);
    unlink(path);
}

static const lm_test_case cases[] = {
    {"python_fixture", t_python_fixture},
    {"stories260k", t_stories},
    {"roundtrip_all_dtypes", t_roundtrip_all_dtypes},
    {"bad_headers", t_bad_headers},
    {"lazy_subset", t_lazy_subset},
    {"zero_size_tensors", t_zero_size},
    {0},
};

int main(int argc, char **argv) { return lm_test_run(argc, argv, cases); }
