/* stream.c — tensor-stream reader and writer over zstd (see lm_stream.h, man/lm-tensor.5). */
#include "lm_stream.h"

#include "lm_atomic.h"
#include "lm_error.h"
#include "lm_safetensors.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#define ZMAGIC 0xFD2FB528u
#define GROW_STEP (64u << 20) /* grow buffers by at most this much beyond what has arrived */

struct lm_reader {
    FILE *fp;
    int is_stdin;
    char *name;
    long count;
    int last_zstd;
    uint64_t remaining_known; /* bytes left in a regular file, or UINT64_MAX */
    ZSTD_DCtx *dctx;
    unsigned char *in; /* raw input buffer */
    size_t in_cap, in_pos, in_len;
    unsigned char *out; /* one record, decoded */
    size_t out_cap;
};

static int grow(unsigned char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap : 4096;
    while (nc < need)
        nc = nc > SIZE_MAX / 2 ? need : nc * 2;
    unsigned char *p = realloc(*buf, nc);
    if (!p)
        return lm_error_set("out of memory (record of %zu bytes)", need);
    *buf = p;
    *cap = nc;
    return 0;
}

lm_reader *lm_reader_open(const char *path)
{
    lm_reader *r = calloc(1, sizeof *r);
    if (!r) {
        lm_error_set("out of memory");
        return NULL;
    }
    r->is_stdin = !path || strcmp(path, "-") == 0;
    r->name = strdup(r->is_stdin ? "stdin" : path);
    r->remaining_known = UINT64_MAX;
    if (r->is_stdin) {
        r->fp = stdin;
        if (isatty(STDIN_FILENO)) {
            lm_error_set("refusing to read binary data from a terminal");
            goto fail;
        }
    } else {
        struct stat st;
        r->fp = fopen(path, "rb");
        if (!r->fp) {
            lm_error_set("%s", strerror(errno));
            goto fail;
        }
        if (fstat(fileno(r->fp), &st) == 0 && S_ISDIR(st.st_mode)) {
            lm_error_set("is a directory");
            goto fail;
        }
        if (S_ISREG(st.st_mode))
            r->remaining_known = (uint64_t)st.st_size;
    }
    r->in_cap = ZSTD_DStreamInSize();
    r->in = malloc(r->in_cap);
    r->dctx = ZSTD_createDCtx();
    if (!r->name || !r->in || !r->dctx) {
        lm_error_set("out of memory");
        goto fail;
    }
    return r;
fail:
    lm_reader_close(r);
    return NULL;
}

void lm_reader_close(lm_reader *r)
{
    if (!r)
        return;
    if (r->fp && !r->is_stdin)
        fclose(r->fp);
    ZSTD_freeDCtx(r->dctx);
    free(r->in);
    free(r->out);
    free(r->name);
    free(r);
}

const char *lm_reader_name(const lm_reader *r) { return r->name; }
long lm_reader_count(const lm_reader *r) { return r->count; }
int lm_reader_last_compressed(const lm_reader *r) { return r->last_zstd; }

/* Makes at least `want` unread bytes available (fewer at end of input). -1 on read error. */
static int fill(lm_reader *r, size_t want)
{
    if (r->in_len - r->in_pos >= want)
        return 0;
    if (r->in_pos) {
        memmove(r->in, r->in + r->in_pos, r->in_len - r->in_pos);
        r->in_len -= r->in_pos;
        r->in_pos = 0;
    }
    if (want > r->in_cap && grow(&r->in, &r->in_cap, want) < 0)
        return -1;
    while (r->in_len < want) {
        size_t k = fread(r->in + r->in_len, 1, r->in_cap - r->in_len, r->fp);
        if (k == 0) {
            if (ferror(r->fp))
                return lm_error_set("read error: %s", strerror(errno));
            break;
        }
        r->in_len += k;
        if (r->remaining_known != UINT64_MAX)
            r->remaining_known -= k;
    }
    return 0;
}

static size_t avail(const lm_reader *r) { return r->in_len - r->in_pos; }

/* Copies exactly n raw bytes into r->out + at, growing as data arrives. */
static int read_raw(lm_reader *r, size_t at, size_t n)
{
    size_t done = 0;
    while (done < n) {
        if (avail(r) == 0 && fill(r, 1) < 0)
            return -1;
        size_t k = avail(r);
        if (k == 0)
            return lm_error_set("truncated stream");
        if (k > n - done)
            k = n - done;
        if (grow(&r->out, &r->out_cap, at + done + k) < 0)
            return -1;
        memcpy(r->out + at + done, r->in + r->in_pos, k);
        r->in_pos += k;
        done += k;
    }
    return 0;
}

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Bytes the input can still deliver: buffered + unread file bytes (UINT64_MAX on a pipe). */
static uint64_t can_deliver(const lm_reader *r)
{
    return r->remaining_known == UINT64_MAX ? UINT64_MAX : avail(r) + r->remaining_known;
}

static int next_raw(lm_reader *r, size_t *len)
{
    if (read_raw(r, 0, 8) < 0)
        return -1;
    uint64_t n = le64(r->out);
    if (n > LM_ST_MAX_HEADER)
        return lm_error_set("bad header: length %llu exceeds the %u-byte limit",
                            (unsigned long long)n, LM_ST_MAX_HEADER);
    if (n > can_deliver(r))
        return lm_error_set("truncated stream (header length %llu runs past the end)",
                            (unsigned long long)n);
    if (read_raw(r, 8, (size_t)n) < 0)
        return -1;
    lm_st_header h;
    if (lm_st_header_parse(&h, (const char *)r->out + 8, n, can_deliver(r)) < 0)
        return -1;
    uint64_t data = h.data_size;
    lm_st_header_free(&h);
    if (data > SIZE_MAX - 8 - n)
        return lm_error_set("record too large");
    if (read_raw(r, 8 + (size_t)n, (size_t)data) < 0)
        return -1;
    *len = 8 + (size_t)n + (size_t)data;
    return 0;
}

static int next_zstd(lm_reader *r, size_t *len)
{
    size_t produced = 0;
    uint64_t n = 0, expect = 0; /* header length; total record size once the header is parsed */
    unsigned long long content = ZSTD_CONTENTSIZE_UNKNOWN;
    int first = 1;
    ZSTD_DCtx_reset(r->dctx, ZSTD_reset_session_only);
    for (;;) {
        if (avail(r) == 0 && fill(r, 1) < 0)
            return -1;
        if (avail(r) == 0)
            return lm_error_set("truncated stream (inside a zstd frame)");
        if (first) {
            /* The frame header may declare the content size: check it before allocating. */
            if (fill(r, 18 /* ZSTD_FRAMEHEADERSIZE_MAX */) < 0)
                return -1;
            content = ZSTD_getFrameContentSize(r->in + r->in_pos, avail(r));
            if (content == ZSTD_CONTENTSIZE_ERROR)
                return lm_error_set("corrupt zstd frame header");
            first = 0;
        }
        /* Offer output room for what is known to be needed, growing by at most GROW_STEP past
         * what has actually been decoded; one byte beyond a known end exposes excess data. */
        uint64_t target = expect ? expect : produced >= 8 ? 8 + n : 8 + 4096;
        if (target > produced + GROW_STEP)
            target = produced + GROW_STEP;
        if (target <= produced)
            target = produced + 1;
        if (grow(&r->out, &r->out_cap, (size_t)target) < 0)
            return -1;
        ZSTD_inBuffer in = {r->in, r->in_len, r->in_pos};
        ZSTD_outBuffer out = {r->out, (size_t)target, produced};
        size_t ret = ZSTD_decompressStream(r->dctx, &out, &in);
        r->in_pos = in.pos;
        if (ZSTD_isError(ret))
            return lm_error_set("corrupt zstd frame: %s", ZSTD_getErrorName(ret));
        produced = out.pos;
        if (produced >= 8 && !n) {
            n = le64(r->out);
            if (n > LM_ST_MAX_HEADER)
                return lm_error_set("bad header: length %llu exceeds the %u-byte limit",
                                    (unsigned long long)n, LM_ST_MAX_HEADER);
            if (n == 0)
                return lm_error_set("not a safetensors header (length 0)");
            if (content != ZSTD_CONTENTSIZE_UNKNOWN && content < 8 + n)
                return lm_error_set("record header is larger than its zstd frame");
        }
        if (n && !expect && produced >= 8 + n) {
            lm_st_header h;
            uint64_t lim = content != ZSTD_CONTENTSIZE_UNKNOWN ? content - 8 - n : UINT64_MAX;
            if (lm_st_header_parse(&h, (const char *)r->out + 8, n, lim) < 0)
                return -1;
            expect = 8 + n + h.data_size;
            lm_st_header_free(&h);
            if (content != ZSTD_CONTENTSIZE_UNKNOWN && content != expect)
                return lm_error_set("record size (%llu) differs from its zstd frame (%llu)",
                                    (unsigned long long)expect, content);
        }
        if (expect && produced > expect)
            return lm_error_set("zstd frame holds more bytes than its record declares");
        if (ret == 0) { /* frame complete */
            if (produced == 0) /* a skippable or empty frame: the caller looks again */
                return 3;
            if (!expect || produced != expect)
                return lm_error_set("zstd frame ends inside the record (%zu bytes)", produced);
            *len = produced;
            return 0;
        }
    }
}

int lm_reader_next(lm_reader *r, lm_record *rec)
{
    size_t len = 0;
    int rc;
    lm_record_init(rec);
    do { /* skippable zstd frames (and empty frames) between records are skipped */
        if (fill(r, 4) < 0)
            goto fail;
        if (avail(r) == 0)
            return 0;
        unsigned char *p = r->in + r->in_pos;
        uint32_t magic = avail(r) >= 4 ? (uint32_t)p[0] | (uint32_t)p[1] << 8 |
                                             (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24
                                       : 0;
        r->last_zstd = magic == ZMAGIC || (magic & 0xFFFFFFF0u) == 0x184D2A50u;
        rc = r->last_zstd ? next_zstd(r, &len) : next_raw(r, &len);
    } while (rc == 3);
    if (rc < 0)
        goto fail;
    if (lm_st_parse_record(rec, r->out, len) < 0)
        goto fail;
    r->count++;
    /* Keep memory bounded by the largest record, not by history: drop a huge buffer. */
    if (r->out_cap > (256u << 20)) {
        free(r->out);
        r->out = NULL;
        r->out_cap = 0;
    }
    return 1;
fail:
    return lm_error_prefix("record %ld", r->count + 1);
}

/* ---- writer ------------------------------------------------------------------------------ */

struct lm_writer {
    FILE *fp;
    char *path, *tmp, *name;
    int flags, level;
    ZSTD_CCtx *cctx;
    unsigned char *zout;
    size_t zcap;
};

lm_writer *lm_writer_open(const char *path, int flags)
{
    lm_writer *w = calloc(1, sizeof *w);
    if (!w) {
        lm_error_set("out of memory");
        return NULL;
    }
    w->flags = flags;
    w->level = 3;
    int to_stdout = !path || strcmp(path, "-") == 0;
    w->name = strdup(to_stdout ? "stdout" : path);
    if (!w->name)
        goto oom;
    if (to_stdout) {
        if (isatty(STDOUT_FILENO) && !(flags & LM_W_FORCE)) {
            lm_error_set("refusing to write binary data to a terminal (redirect it, or use -f)");
            goto fail;
        }
        w->fp = stdout;
    } else {
        w->path = strdup(path);
        if (!w->path)
            goto oom;
        w->fp = lm_atomic_open(path, &w->tmp);
        if (!w->fp)
            goto fail;
    }
    if (!(flags & LM_W_RAW)) {
        w->cctx = ZSTD_createCCtx();
        w->zcap = ZSTD_CStreamOutSize();
        w->zout = malloc(w->zcap);
        if (!w->cctx || !w->zout)
            goto oom;
    }
    return w;
oom:
    lm_error_set("out of memory");
fail:
    lm_writer_abort(w);
    return NULL;
}

const char *lm_writer_name(const lm_writer *w) { return w->name; }
void lm_writer_set_level(lm_writer *w, int level) { w->level = level; }

static int wr(lm_writer *w, const void *p, size_t n)
{
    if (n && fwrite(p, 1, n, w->fp) != n) {
        if (errno == EPIPE)
            return lm_error_set("broken pipe");
        return lm_error_set("write error: %s", strerror(errno));
    }
    return 0;
}

static int zput(lm_writer *w, const void *p, size_t n, ZSTD_EndDirective end)
{
    ZSTD_inBuffer in = {p, n, 0};
    for (;;) {
        ZSTD_outBuffer out = {w->zout, w->zcap, 0};
        size_t rem = ZSTD_compressStream2(w->cctx, &out, &in, end);
        if (ZSTD_isError(rem))
            return lm_error_set("zstd: %s", ZSTD_getErrorName(rem));
        if (wr(w, w->zout, out.pos) < 0)
            return -1;
        if (end == ZSTD_e_end ? rem == 0 : in.pos == in.size)
            return 0;
    }
}

int lm_writer_put(lm_writer *w, const lm_record *rec)
{
    unsigned char *hdr = NULL;
    size_t hlen;
    int rc = -1;
    if (lm_st_header_build(&hdr, &hlen, rec) < 0)
        return -1;
    if (w->flags & LM_W_RAW) {
        if (wr(w, hdr, hlen) < 0)
            goto done;
        for (int i = 0; i < rec->n; i++)
            if (wr(w, rec->t[i].data, rec->t[i].nbytes) < 0)
                goto done;
    } else {
        unsigned long long total = hlen;
        for (int i = 0; i < rec->n; i++)
            total += rec->t[i].nbytes;
        ZSTD_CCtx_reset(w->cctx, ZSTD_reset_session_only);
        ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_compressionLevel, w->level);
        ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_checksumFlag, 1);
        ZSTD_CCtx_setPledgedSrcSize(w->cctx, total);
        if (zput(w, hdr, hlen, ZSTD_e_continue) < 0)
            goto done;
        for (int i = 0; i < rec->n; i++)
            if (zput(w, rec->t[i].data, rec->t[i].nbytes, ZSTD_e_continue) < 0)
                goto done;
        if (zput(w, NULL, 0, ZSTD_e_end) < 0)
            goto done;
    }
    if (fflush(w->fp) != 0) {
        lm_error_set(errno == EPIPE ? "broken pipe" : "write error: %s", strerror(errno));
        goto done;
    }
    rc = 0;
done:
    free(hdr);
    return rc;
}

static void writer_free(lm_writer *w)
{
    ZSTD_freeCCtx(w->cctx);
    free(w->zout);
    free(w->path);
    free(w->name);
    free(w);
}

int lm_writer_commit(lm_writer *w)
{
    int rc = 0;
    if (w->tmp) {
        rc = lm_atomic_commit(w->fp, w->tmp, w->path);
    } else if (fflush(w->fp) != 0) {
        rc = lm_error_set(errno == EPIPE ? "broken pipe" : "write error: %s", strerror(errno));
    }
    writer_free(w);
    return rc;
}

void lm_writer_abort(lm_writer *w)
{
    if (!w)
        return;
    if (w->tmp)
        lm_atomic_abort(w->fp, w->tmp);
    writer_free(w);
}
