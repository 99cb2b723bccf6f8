/* stream.c — tensor-stream reader and writer over zstd (see lm_stream.h, man/lm-tensor.5). */
#include "lm_stream.h"

#include "lm_atomic.h"
#include "lm_error.h"
#include "lm_safetensors.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>
#include <zstd_errors.h>

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

/* A decoded-record buffer above this is released once its record is done with, so that memory
 * stays bounded by the largest record, not by history. */
#define KEEP_MAX (256u << 20)

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

/* Decodes the next record into r->out; 1, 0 (clean end) or -1 (lm_error, unprefixed). */
static int next_record(lm_reader *r, lm_record *rec, size_t *len)
{
    int rc;
    lm_record_init(rec);
    if (r->out_cap > KEEP_MAX) { /* the previous record's views end here */
        free(r->out);
        r->out = NULL;
        r->out_cap = 0;
    }
    do { /* skippable zstd frames (and empty frames) between records are skipped */
        if (fill(r, 4) < 0)
            return -1;
        if (avail(r) == 0)
            return 0;
        unsigned char *p = r->in + r->in_pos;
        uint32_t magic = avail(r) >= 4 ? (uint32_t)p[0] | (uint32_t)p[1] << 8 |
                                             (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24
                                       : 0;
        r->last_zstd = magic == ZMAGIC || (magic & 0xFFFFFFF0u) == 0x184D2A50u;
        rc = r->last_zstd ? next_zstd(r, len) : next_raw(r, len);
    } while (rc == 3);
    return rc < 0 ? -1 : 1;
}

int lm_reader_next(lm_reader *r, lm_record *rec)
{
    size_t len = 0;
    int rc = next_record(r, rec, &len);
    if (rc <= 0)
        return rc < 0 ? lm_error_prefix("record %ld", r->count + 1) : 0;
    if (lm_st_parse_record(rec, r->out, len) < 0)
        return lm_error_prefix("record %ld", r->count + 1);
    r->count++;
    if (r->out_cap > KEEP_MAX) {
        free(r->out);
        r->out = NULL;
        r->out_cap = 0;
    }
    return 1;
}

/* The record in r->out as views: lm_st_parse_record's checks, without the copies. A tensor whose
 * data is not aligned for its dtype in the buffer (another writer's header padding) is copied,
 * so that every tensor can be read through a pointer of its type. */
static int parse_views(lm_record *rec, unsigned char *buf, size_t len)
{
    lm_st_header h;
    uint64_t n = len >= 8 ? le64(buf) : 0;
    if (len < 8 || n > len - 8) /* next_raw and next_zstd made sure of it: a bug if seen */
        return lm_error_set("truncated record");
    if (lm_st_header_parse(&h, (const char *)buf + 8, n, len - 8 - n) < 0)
        return -1;
    int rc = -1;
    if (h.data_size != len - 8 - n) {
        lm_error_set("record has %llu bytes after the declared data",
                     (unsigned long long)(len - 8 - n - h.data_size));
        goto done;
    }
    unsigned char *data = buf + 8 + n;
    for (int i = 0; i < h.n; i++) {
        const lm_st_entry *e = &h.e[i];
        unsigned char *p = data + e->begin;
        lm_tensor t;
        int bad;
        if ((uintptr_t)p % lm_dtype_size(e->dtype) == 0) {
            bad = lm_tensor_wrap(&t, e->name, e->dtype, e->ndim, e->shape, p) < 0;
        } else {
            bad = lm_tensor_alloc(&t, e->name, e->dtype, e->ndim, e->shape) < 0;
            if (!bad)
                memcpy(t.data, p, t.nbytes);
        }
        if (bad || lm_record_put(rec, &t) < 0) {
            lm_tensor_free(&t);
            goto done;
        }
    }
    for (int i = 0; i < h.nmeta; i++)
        if (lm_record_meta_set(rec, h.meta[i].key, h.meta[i].value) < 0)
            goto done;
    rc = 0;
done:
    lm_st_header_free(&h);
    if (rc < 0)
        lm_record_free(rec);
    return rc;
}

int lm_reader_next_view(lm_reader *r, lm_record *rec)
{
    size_t len = 0;
    int rc = next_record(r, rec, &len);
    if (rc <= 0)
        return rc < 0 ? lm_error_prefix("record %ld", r->count + 1) : 0;
    if (parse_views(rec, r->out, len) < 0)
        return lm_error_prefix("record %ld", r->count + 1);
    r->count++;
    return 1;
}

/* ---- writer ------------------------------------------------------------------------------ */

/* Default levels (man/lm-tensor.5). On the tensors of this project (F32 images, features and
 * fields, integer label maps) level 1 compresses within a few per cent of level 3 at two to three
 * times its speed; a pipe feeds another process on the same machine, where compressing costs
 * more than the bytes it saves, so it gets one of zstd's fast (negative) levels. */
#define LEVEL_FILE 1
#define LEVEL_PIPE (-20)

/* LM_ZSTD_LEVEL, when set: a zstd level from ZSTD_minCLevel() to ZSTD_maxCLevel(), not 0. */
static int env_level(int *level)
{
    const char *e = getenv("LM_ZSTD_LEVEL");
    if (!e || !*e)
        return 0;
    char *end;
    errno = 0;
    long v = strtol(e, &end, 10);
    if (errno || *end || end == e || v < ZSTD_minCLevel() || v > ZSTD_maxCLevel() || v == 0)
        return lm_error_set("LM_ZSTD_LEVEL: '%s' is not a zstd level (%d..%d, not 0)", e,
                            ZSTD_minCLevel(), ZSTD_maxCLevel());
    *level = (int)v;
    return 0;
}

/* On a pipe, a record is compressed into memory and a thread of the writer writes it out while
 * the caller goes on (async): the process that reads the pipe then takes each record at the
 * speed of its own decompression, and this one is not held by the next stage's pace until its
 * following record is ready. Two buffers: one being written, one being filled. */
struct lm_writer {
    FILE *fp;
    char *path, *tmp, *name;
    int flags, level;
    ZSTD_CCtx *cctx;
    unsigned char *zout; /* synchronous: one chunk of compressed output */
    size_t zcap;
    int async;           /* the output thread runs */
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned char *abuf[2];
    size_t acap[2];
    int cur;                  /* the buffer put() fills */
    const unsigned char *job; /* being written by the thread, NULL when it is idle */
    size_t job_len;
    int quit;
    int err; /* errno of the thread's failed write, 0 if none */
    /* the record between lm_writer_begin and lm_writer_end */
    const lm_record *rec;
    unsigned char *hdr;
    size_t hlen;
    int ready;          /* its tensors [0, ready) go in first, in the prefix thread */
    ZSTD_outBuffer mem; /* async: the frame in abuf[cur] */
    pthread_t prefix;
    int prefix_on, prefix_rc;
    size_t zerr; /* a failed zput: its zstd code, or */
    int werr;    /* its errno */
};

static void *out_thread(void *arg)
{
    lm_writer *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->job && !w->quit)
            pthread_cond_wait(&w->cv, &w->mu);
        if (!w->job)
            break;
        const unsigned char *p = w->job;
        size_t n = w->job_len;
        int e = w->err;
        pthread_mutex_unlock(&w->mu);
        errno = 0;
        if (!e && (fwrite(p, 1, n, w->fp) != n || fflush(w->fp) != 0))
            e = errno ? errno : EIO;
        pthread_mutex_lock(&w->mu);
        w->err = e;
        w->job = NULL;
        pthread_cond_broadcast(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static int write_error(int e)
{
    return e == EPIPE ? lm_error_set("broken pipe") : lm_error_set("write error: %s", strerror(e));
}

/* Waits until the thread has written everything handed to it; -1 if a write failed. */
static int out_wait(lm_writer *w)
{
    pthread_mutex_lock(&w->mu);
    while (w->job)
        pthread_cond_wait(&w->cv, &w->mu);
    int e = w->err;
    pthread_mutex_unlock(&w->mu);
    return e ? write_error(e) : 0;
}

static void out_stop(lm_writer *w)
{
    if (!w->async)
        return;
    pthread_mutex_lock(&w->mu);
    w->quit = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->th, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    w->async = 0;
}

static void out_start(lm_writer *w)
{
    if (pthread_mutex_init(&w->mu, NULL) != 0)
        return;
    if (pthread_cond_init(&w->cv, NULL) != 0) {
        pthread_mutex_destroy(&w->mu);
        return;
    }
    if (pthread_create(&w->th, NULL, out_thread, w) != 0) {
        pthread_cond_destroy(&w->cv); /* no thread: write synchronously */
        pthread_mutex_destroy(&w->mu);
        return;
    }
    w->async = 1;
}

lm_writer *lm_writer_open(const char *path, int flags)
{
    lm_writer *w = calloc(1, sizeof *w);
    if (!w) {
        lm_error_set("out of memory");
        return NULL;
    }
    w->flags = flags;
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
    struct stat st;
    int pipe_like = fstat(fileno(w->fp), &st) == 0 && !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode);
    w->level = pipe_like ? LEVEL_PIPE : LEVEL_FILE;
    if (env_level(&w->level) < 0)
        goto fail;
    if (!(flags & LM_W_RAW)) {
        w->cctx = ZSTD_createCCtx();
        w->zcap = ZSTD_CStreamOutSize();
        w->zout = malloc(w->zcap);
        if (!w->cctx || !w->zout)
            goto oom;
        if (pipe_like)
            out_start(w);
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
    if (n && fwrite(p, 1, n, w->fp) != n)
        return write_error(errno);
    return 0;
}

/* Compresses n bytes at p into the frame: to the output in zout chunks, or, with `mem`, into
 * mem->dst (room for the whole frame). Sets no message (it may run in the prefix thread): a
 * failure leaves its zstd code in w->zerr or its errno in w->werr. */
static int zput(lm_writer *w, ZSTD_outBuffer *mem, const void *p, size_t n, ZSTD_EndDirective end)
{
    ZSTD_inBuffer in = {p, n, 0};
    for (;;) {
        ZSTD_outBuffer chunk = {w->zout, w->zcap, 0}, *out = mem ? mem : &chunk;
        size_t rem = ZSTD_compressStream2(w->cctx, out, &in, end);
        if (ZSTD_isError(rem)) {
            w->zerr = rem;
            return -1;
        }
        if (!mem && chunk.pos && fwrite(w->zout, 1, chunk.pos, w->fp) != chunk.pos) {
            w->werr = errno ? errno : EIO;
            return -1;
        }
        if (end == ZSTD_e_end ? rem == 0 : in.pos == in.size)
            return 0;
        if (mem && mem->pos == mem->size) { /* cannot happen with ZSTD_compressBound's room */
            w->zerr = (size_t)-ZSTD_error_dstSize_tooSmall;
            return -1;
        }
    }
}

/* The message of a failed zput. */
static int zput_error(lm_writer *w)
{
    if (w->werr)
        return write_error(w->werr);
    return lm_error_set("zstd: %s", ZSTD_getErrorName(w->zerr));
}

/* The header and the first w->ready tensors of the record into the frame. */
static int put_prefix(lm_writer *w)
{
    const lm_record *rec = w->rec;
    ZSTD_outBuffer *m = w->async ? &w->mem : NULL;
    errno = 0;
    if (zput(w, m, w->hdr, w->hlen, ZSTD_e_continue) < 0)
        return -1;
    for (int i = 0; i < w->ready; i++)
        if (zput(w, m, rec->t[i].data, rec->t[i].nbytes, ZSTD_e_continue) < 0)
            return -1;
    return 0;
}

static void *prefix_thread(void *arg)
{
    lm_writer *w = arg;
    w->prefix_rc = put_prefix(w);
    return NULL;
}

/* Waits for the prefix thread; its result. */
static int prefix_join(lm_writer *w)
{
    if (w->prefix_on) {
        pthread_join(w->prefix, NULL);
        w->prefix_on = 0;
    }
    return w->prefix_rc;
}

/* Forgets the record begun (after its end, or when it is dropped). */
static void record_done(lm_writer *w)
{
    prefix_join(w);
    free(w->hdr);
    w->hdr = NULL;
    w->rec = NULL;
}

int lm_writer_begin(lm_writer *w, const lm_record *rec, int ready)
{
    if (w->rec)
        return lm_error_set("lm_writer_begin: the previous record is not finished");
    if (ready < 0 || ready > rec->n)
        ready = rec->n;
    if (lm_st_header_build(&w->hdr, &w->hlen, rec) < 0) {
        w->hdr = NULL;
        return -1;
    }
    w->rec = rec;
    w->ready = ready;
    w->zerr = 0;
    w->werr = 0;
    if (w->flags & LM_W_RAW) /* written whole by lm_writer_end */
        return 0;
    unsigned long long total = w->hlen;
    for (int i = 0; i < rec->n; i++)
        total += rec->t[i].nbytes;
    if (w->async) {
        size_t bound = ZSTD_compressBound((size_t)total);
        int k = w->cur;
        if (ZSTD_isError(bound) || bound < total) {
            record_done(w);
            return lm_error_set("record too large");
        }
        if (w->acap[k] < bound) {
            free(w->abuf[k]); /* nothing to keep: no realloc copy */
            w->acap[k] = 0;
            if (!(w->abuf[k] = malloc(bound))) {
                record_done(w);
                return lm_error_set("out of memory (record of %llu bytes)", total);
            }
            w->acap[k] = bound;
        }
        w->mem = (ZSTD_outBuffer){w->abuf[k], bound, 0};
    }
    ZSTD_CCtx_reset(w->cctx, ZSTD_reset_session_only);
    ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_compressionLevel, w->level);
    ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_checksumFlag, 1);
    ZSTD_CCtx_setPledgedSrcSize(w->cctx, total);
    w->prefix_rc = 0;
    /* a prefix worth a thread: compressed while the caller computes the rest */
    if (ready > 0 && pthread_create(&w->prefix, NULL, prefix_thread, w) == 0) {
        w->prefix_on = 1;
        return 0;
    }
    w->prefix_rc = put_prefix(w);
    return 0;
}

int lm_writer_end(lm_writer *w, const lm_record *rec)
{
    int rc = -1;
    if (w->rec != rec)
        return lm_error_set("lm_writer_end: not the record begun");
    if (w->flags & LM_W_RAW) {
        if (wr(w, w->hdr, w->hlen) < 0)
            goto done;
        for (int i = 0; i < rec->n; i++)
            if (wr(w, rec->t[i].data, rec->t[i].nbytes) < 0)
                goto done;
    } else {
        ZSTD_outBuffer *m = w->async ? &w->mem : NULL;
        if (prefix_join(w) < 0) {
            zput_error(w);
            goto done;
        }
        errno = 0;
        for (int i = w->ready; i < rec->n; i++)
            if (zput(w, m, rec->t[i].data, rec->t[i].nbytes, ZSTD_e_continue) < 0) {
                zput_error(w);
                goto done;
            }
        if (zput(w, m, NULL, 0, ZSTD_e_end) < 0) {
            zput_error(w);
            goto done;
        }
        if (w->async) {
            /* the previous record must be out before this one follows it; the thread flushes */
            if (out_wait(w) < 0)
                goto done;
            pthread_mutex_lock(&w->mu);
            w->job = w->mem.dst;
            w->job_len = w->mem.pos;
            pthread_cond_broadcast(&w->cv);
            pthread_mutex_unlock(&w->mu);
            w->cur ^= 1;
            rc = 0;
            goto done;
        }
    }
    if (fflush(w->fp) != 0) {
        write_error(errno);
        goto done;
    }
    rc = 0;
done:
    record_done(w);
    return rc;
}

int lm_writer_put(lm_writer *w, const lm_record *rec)
{
    if (lm_writer_begin(w, rec, 0) < 0)
        return -1;
    return lm_writer_end(w, rec);
}

static void writer_free(lm_writer *w)
{
    record_done(w);
    out_stop(w);
    ZSTD_freeCCtx(w->cctx);
    free(w->zout);
    free(w->abuf[0]);
    free(w->abuf[1]);
    free(w->path);
    free(w->name);
    free(w);
}

int lm_writer_commit(lm_writer *w)
{
    int rc = w->async ? out_wait(w) : 0;
    out_stop(w);
    if (rc < 0) {
        if (w->tmp)
            lm_atomic_abort(w->fp, w->tmp);
    } else if (w->tmp) {
        rc = lm_atomic_commit(w->fp, w->tmp, w->path);
    } else if (fflush(w->fp) != 0) {
        rc = write_error(errno);
    }
    writer_free(w);
    return rc;
}

void lm_writer_abort(lm_writer *w)
{
    if (!w)
        return;
    record_done(w); /* the prefix thread may be writing into a file */
    out_stop(w);
    if (w->tmp)
        lm_atomic_abort(w->fp, w->tmp);
    writer_free(w);
}
