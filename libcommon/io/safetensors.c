/* safetensors.c — safetensors headers (cJSON), lazy file reads with pread, and record
 * serialisation. See lm_safetensors.h for the validation rules.
 */
#include "lm_safetensors.h"

#include "lm_atomic.h"
#include "lm_error.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

void lm_st_header_free(lm_st_header *h)
{
    if (!h)
        return;
    for (int i = 0; i < h->n; i++)
        free(h->e[i].name);
    for (int i = 0; i < h->nmeta; i++) {
        free(h->meta[i].key);
        free(h->meta[i].value);
    }
    free(h->e);
    free(h->meta);
    memset(h, 0, sizeof *h);
}

int lm_st_header_find(const lm_st_header *h, const char *name)
{
    for (int i = 0; i < h->n; i++)
        if (strcmp(h->e[i].name, name) == 0)
            return i;
    return -1;
}

/* A JSON number that is an exact non-negative integer below 2^53. */
static int json_uint(const cJSON *j, uint64_t *out)
{
    if (!cJSON_IsNumber(j))
        return -1;
    double d = j->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || floor(d) != d)
        return -1;
    *out = (uint64_t)d;
    return 0;
}

static int cmp_begin(const void *a, const void *b)
{
    const lm_st_entry *x = *(const lm_st_entry *const *)a, *y = *(const lm_st_entry *const *)b;
    /* Ties by end: a zero-size tensor sits at the offset of the tensor after it. */
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end ? 1 : 0;
}

static int parse_entry(lm_st_entry *e, const cJSON *item)
{
    const char *name = item->string;
    if (!cJSON_IsObject(item))
        return lm_error_set("bad header: '%s' is not an object", name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(off))
        return lm_error_set("bad header: '%s' needs dtype, shape and data_offsets", name);
    if (lm_dtype_from_name(dt->valuestring, &e->dtype) < 0)
        return lm_error_set("bad header: '%s' has unknown dtype '%s'", name, dt->valuestring);
    int nd = cJSON_GetArraySize(sh);
    if (nd > LM_MAX_DIMS)
        return lm_error_set("bad header: '%s' has %d dims (at most %d)", name, nd, LM_MAX_DIMS);
    e->ndim = nd;
    int k = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, sh)
    {
        uint64_t d;
        if (json_uint(v, &d) < 0)
            return lm_error_set("bad header: '%s' has a shape that is not a list of "
                                "non-negative integers", name);
        e->shape[k++] = (int64_t)d;
    }
    size_t nbytes;
    if (lm_shape_nbytes(nd, e->shape, e->dtype, &nbytes) < 0)
        return lm_error_set("bad header: '%s' has a shape whose size overflows", name);
    if (cJSON_GetArraySize(off) != 2 || json_uint(cJSON_GetArrayItem(off, 0), &e->begin) < 0 ||
        json_uint(cJSON_GetArrayItem(off, 1), &e->end) < 0 || e->end < e->begin)
        return lm_error_set("bad header: '%s' has invalid data_offsets", name);
    if (e->end - e->begin != (uint64_t)nbytes)
        return lm_error_set("bad header: '%s' data_offsets span %llu bytes but %s %s needs %zu",
                            name, (unsigned long long)(e->end - e->begin),
                            lm_dtype_name(e->dtype), "shape", nbytes);
    e->name = strdup(name);
    return e->name ? 0 : lm_error_set("out of memory");
}

int lm_st_header_parse(lm_st_header *h, const char *json, uint64_t n, uint64_t avail)
{
    int rc = -1;
    lm_st_entry **order = NULL;
    memset(h, 0, sizeof *h);
    h->header_len = n;
    if (n > LM_ST_MAX_HEADER)
        return lm_error_set("bad header: length %llu exceeds the %u-byte limit",
                            (unsigned long long)n, LM_ST_MAX_HEADER);
    if (n < 2 || json[0] != '{')
        return lm_error_set("not a safetensors header (it must start with '{')");
    cJSON *root = cJSON_ParseWithLength(json, (size_t)n);
    if (!root || !cJSON_IsObject(root)) {
        lm_error_set("bad header: corrupt JSON");
        goto done;
    }
    int count = cJSON_GetArraySize(root);
    h->e = calloc((size_t)count + 1, sizeof *h->e);
    order = calloc((size_t)count + 1, sizeof *order);
    if (!h->e || !order) {
        lm_error_set("out of memory");
        goto done;
    }
    const cJSON *item;
    cJSON_ArrayForEach(item, root)
    {
        if (!item->string) {
            lm_error_set("bad header: corrupt JSON");
            goto done;
        }
        if (strcmp(item->string, "__metadata__") == 0) {
            if (h->meta) {
                lm_error_set("bad header: duplicate __metadata__");
                goto done;
            }
            if (!cJSON_IsObject(item) && !cJSON_IsNull(item)) {
                lm_error_set("bad header: __metadata__ is not an object");
                goto done;
            }
            int m = cJSON_GetArraySize(item);
            h->meta = calloc((size_t)m + 1, sizeof *h->meta);
            if (!h->meta) {
                lm_error_set("out of memory");
                goto done;
            }
            const cJSON *kv;
            cJSON_ArrayForEach(kv, item)
            {
                if (!cJSON_IsString(kv)) {
                    lm_error_set("bad header: __metadata__ value '%s' is not a string",
                                 kv->string);
                    goto done;
                }
                for (int j = 0; j < h->nmeta; j++)
                    if (strcmp(h->meta[j].key, kv->string) == 0) {
                        lm_error_set("bad header: duplicate metadata key '%s'", kv->string);
                        goto done;
                    }
                h->meta[h->nmeta].key = strdup(kv->string);
                h->meta[h->nmeta].value = strdup(kv->valuestring);
                if (!h->meta[h->nmeta].key || !h->meta[h->nmeta].value) {
                    lm_error_set("out of memory");
                    goto done;
                }
                h->nmeta++;
            }
            continue;
        }
        if (lm_st_header_find(h, item->string) >= 0) {
            lm_error_set("bad header: duplicate tensor name '%s'", item->string);
            goto done;
        }
        if (parse_entry(&h->e[h->n], item) < 0)
            goto done;
        order[h->n] = &h->e[h->n];
        h->n++;
    }
    qsort(order, (size_t)h->n, sizeof *order, cmp_begin);
    uint64_t pos = 0;
    for (int i = 0; i < h->n; i++) {
        if (order[i]->begin != pos) {
            lm_error_set("bad header: '%s' data_offsets %s (expected to start at %llu)",
                         order[i]->name, order[i]->begin < pos ? "overlap" : "leave a gap",
                         (unsigned long long)pos);
            goto done;
        }
        pos = order[i]->end;
    }
    h->data_size = pos;
    if (pos > avail) {
        lm_error_set("truncated: header declares %llu data bytes, only %llu present",
                     (unsigned long long)pos, (unsigned long long)avail);
        goto done;
    }
    rc = 0;
done:
    free(order);
    cJSON_Delete(root);
    if (rc < 0) {
        char keep[1024];
        snprintf(keep, sizeof keep, "%s", lm_error());
        lm_st_header_free(h);
        lm_error_set("%s", keep);
    }
    return rc;
}

int lm_st_parse_record(lm_record *rec, const unsigned char *buf, size_t len)
{
    lm_st_header h;
    lm_record_init(rec);
    if (len < 8)
        return lm_error_set("truncated record");
    uint64_t n = le64(buf);
    if (n > len - 8)
        return lm_error_set(n > LM_ST_MAX_HEADER ? "bad header: length too large"
                                                 : "truncated record header");
    if (lm_st_header_parse(&h, (const char *)buf + 8, n, len - 8 - n) < 0)
        return -1;
    if (h.data_size != len - 8 - n) {
        lm_st_header_free(&h);
        return lm_error_set("record has %llu bytes after the declared data",
                            (unsigned long long)(len - 8 - n - h.data_size));
    }
    const unsigned char *data = buf + 8 + n;
    for (int i = 0; i < h.n; i++) {
        lm_tensor t;
        lm_st_entry *e = &h.e[i];
        if (lm_tensor_alloc(&t, e->name, e->dtype, e->ndim, e->shape) < 0 ||
            (memcpy(t.data, data + e->begin, t.nbytes), lm_record_put(rec, &t) < 0)) {
            lm_tensor_free(&t);
            goto fail;
        }
    }
    for (int i = 0; i < h.nmeta; i++)
        if (lm_record_meta_set(rec, h.meta[i].key, h.meta[i].value) < 0)
            goto fail;
    lm_st_header_free(&h);
    return 0;
fail:
    lm_st_header_free(&h);
    lm_record_free(rec);
    return -1;
}

/* ---- serialisation ----------------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t k)
{
    if (b->oom)
        return;
    if (b->n + k + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + k + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, k);
    b->n += k;
    b->p[b->n] = '\0';
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_json_string(sbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            sb_put(b, esc, 2);
        } else if (*p < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            sb_str(b, esc);
        } else {
            sb_put(b, (const char *)p, 1);
        }
    }
    sb_put(b, "\"", 1);
}

int lm_st_header_build(unsigned char **out, size_t *len, const lm_record *rec)
{
    sbuf b = {0};
    char num[64];
    sb_put(&b, "        {", 9); /* 8 bytes reserved for N */
    int first = 1;
    if (rec->nmeta) {
        sb_str(&b, "\"__metadata__\":{");
        for (int i = 0; i < rec->nmeta; i++) {
            if (i)
                sb_str(&b, ",");
            sb_json_string(&b, rec->meta[i].key);
            sb_str(&b, ":");
            sb_json_string(&b, rec->meta[i].value);
        }
        sb_str(&b, "}");
        first = 0;
    }
    uint64_t off = 0;
    for (int i = 0; i < rec->n; i++) {
        const lm_tensor *t = &rec->t[i];
        if (!first)
            sb_str(&b, ",");
        first = 0;
        sb_json_string(&b, t->name);
        sb_str(&b, ":{\"dtype\":\"");
        sb_str(&b, lm_dtype_name(t->dtype));
        sb_str(&b, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            snprintf(num, sizeof num, "%s%lld", d ? "," : "", (long long)t->shape[d]);
            sb_str(&b, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                 (unsigned long long)(off + t->nbytes));
        sb_str(&b, num);
        off += t->nbytes;
    }
    sb_str(&b, "}");
    while ((b.n - 8) % 8)
        sb_str(&b, " ");
    if (b.oom) {
        free(b.p);
        return lm_error_set("out of memory");
    }
    put_le64((unsigned char *)b.p, b.n - 8);
    *out = (unsigned char *)b.p;
    *len = b.n;
    return 0;
}

/* ---- files ------------------------------------------------------------------------------- */

static int pread_full(int fd, void *buf, size_t n, uint64_t off)
{
    unsigned char *p = buf;
    while (n) {
        ssize_t k = pread(fd, p, n > (1u << 30) ? (1u << 30) : n, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return lm_error_set("read error: %s", strerror(errno));
        if (k == 0)
            return lm_error_set("truncated file");
        p += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return 0;
}

int lm_st_file_open(lm_st_file *f, const char *path, uint64_t offset)
{
    unsigned char b8[8];
    char *json = NULL;
    struct stat st;
    memset(f, 0, sizeof *f);
    f->fd = open(path, O_RDONLY);
    if (f->fd < 0)
        return lm_error_set("%s", strerror(errno));
    f->owns_fd = 1;
    if (fstat(f->fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        lm_error_set(S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file");
        goto fail;
    }
    f->file_size = (uint64_t)st.st_size;
    f->base = offset;
    f->path = strdup(path);
    if (offset + 8 > f->file_size) {
        lm_error_set(f->file_size == offset ? "empty file" : "truncated: shorter than 8 bytes");
        goto fail;
    }
    if (pread_full(f->fd, b8, 8, offset) < 0)
        goto fail;
    uint64_t n = le64(b8);
    if (n > LM_ST_MAX_HEADER) {
        lm_error_set("bad header: length %llu exceeds the %u-byte limit", (unsigned long long)n,
                     LM_ST_MAX_HEADER);
        goto fail;
    }
    if (n > f->file_size - offset - 8) {
        lm_error_set("truncated: header length %llu runs past the end of the file",
                     (unsigned long long)n);
        goto fail;
    }
    json = malloc(n + 1);
    if (!json) {
        lm_error_set("out of memory");
        goto fail;
    }
    if (pread_full(f->fd, json, n, offset + 8) < 0)
        goto fail;
    json[n] = '\0';
    if (lm_st_header_parse(&f->h, json, n, f->file_size - offset - 8 - n) < 0)
        goto fail;
    free(json);
    return 0;
fail:
    free(json);
    lm_st_file_close(f);
    return -1;
}

void lm_st_file_close(lm_st_file *f)
{
    if (!f)
        return;
    if (f->owns_fd && f->fd >= 0)
        close(f->fd);
    free(f->path);
    lm_st_header_free(&f->h);
    memset(f, 0, sizeof *f);
    f->fd = -1;
}

uint64_t lm_st_file_end(const lm_st_file *f) { return f->base + 8 + f->h.header_len + f->h.data_size; }

int lm_st_file_read(lm_st_file *f, int i, lm_tensor *out)
{
    if (i < 0 || i >= f->h.n)
        return lm_error_set("tensor index %d out of range", i);
    const lm_st_entry *e = &f->h.e[i];
    if (lm_tensor_alloc(out, e->name, e->dtype, e->ndim, e->shape) < 0)
        return -1;
    if (pread_full(f->fd, out->data, out->nbytes, f->base + 8 + f->h.header_len + e->begin) < 0) {
        lm_tensor_free(out);
        return lm_error_prefix("tensor '%s'", e->name);
    }
    return 0;
}

int lm_st_file_read_name(lm_st_file *f, const char *name, lm_tensor *out)
{
    int i = lm_st_header_find(&f->h, name);
    if (i < 0)
        return lm_error_set("no tensor named '%s'", name);
    return lm_st_file_read(f, i, out);
}

int lm_st_write_file(const char *path, const lm_record *rec)
{
    unsigned char *hdr = NULL;
    size_t hlen;
    char *tmp = NULL;
    FILE *fp = lm_atomic_open(path, &tmp);
    if (!fp)
        return -1;
    if (lm_st_header_build(&hdr, &hlen, rec) < 0)
        goto fail;
    if (fwrite(hdr, 1, hlen, fp) != hlen)
        goto werr;
    for (int i = 0; i < rec->n; i++)
        if (rec->t[i].nbytes && fwrite(rec->t[i].data, 1, rec->t[i].nbytes, fp) != rec->t[i].nbytes)
            goto werr;
    free(hdr);
    return lm_atomic_commit(fp, tmp, path);
werr:
    lm_error_set("write error: %s", strerror(errno));
fail:
    free(hdr);
    lm_atomic_abort(fp, tmp);
    return -1;
}
