#define _XOPEN_SOURCE 700
/* test_stream.c — tensor streams: many records, concatenation, raw and zstd records mixed,
 * empty input, truncation at every byte, corruption, lying sizes on pipes, bounded memory,
 * atomic output (abort, signals), terminal refusal, broken pipes; records read as views,
 * compression levels (defaults per output, LM_ZSTD_LEVEL), the asynchronous pipe writer. */
#include "cli/lm_cli.h"
#include "io/lm_atomic.h"
#include "io/lm_error.h"
#include "io/lm_stream.h"
#include "lm_test.h"
#include "lm_testutil.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zstd.h>

static void make_record(lm_record *r, int i, int64_t big)
{
    int64_t shape[5] = {1, 1, 4 + i, 5, big ? big : 6};
    lm_tensor t, s;
    lm_record_init(r);
    lm_tensor_alloc(&t, "moving", LM_F32, 5, shape);
    float *f = t.data;
    for (int64_t k = 0; k < lm_tensor_numel(&t); k++)
        f[k] = (float)(k % 977) * 0.25f + (float)i;
    lm_record_put(r, &t);
    lm_tensor_alloc(&s, "seg", LM_I16, 5, shape);
    int16_t *g = s.data;
    for (int64_t k = 0; k < lm_tensor_numel(&s); k++)
        g[k] = (int16_t)((k * 7 + i) % 13);
    lm_record_put(r, &s);
    char pair[32];
    snprintf(pair, sizeof pair, "case%d", i);
    lm_record_meta_set(r, "pair", pair);
}

static int same_record(const lm_record *a, const lm_record *b)
{
    if (a->n != b->n || a->nmeta != b->nmeta)
        return 0;
    for (int i = 0; i < a->n; i++) {
        const lm_tensor *x = &a->t[i], *y = lm_record_cget(b, x->name);
        if (!y || x->dtype != y->dtype || x->ndim != y->ndim || x->nbytes != y->nbytes ||
            memcmp(x->shape, y->shape, sizeof x->shape) || memcmp(x->data, y->data, x->nbytes))
            return 0;
    }
    for (int i = 0; i < a->nmeta; i++) {
        const char *v = lm_record_meta_get(b, a->meta[i].key);
        if (!v || strcmp(v, a->meta[i].value))
            return 0;
    }
    return 1;
}

static const char *tpath(const char *name)
{
    static char buf[4][1024];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", lm_test_tmpdir(), name);
    return buf[k];
}

static int write_stream(const char *path, int first, int n, int flags)
{
    lm_writer *w = lm_writer_open(path, flags);
    if (!w)
        return -1;
    for (int i = first; i < first + n; i++) {
        lm_record r;
        make_record(&r, i, 0);
        int rc = lm_writer_put(w, &r);
        lm_record_free(&r);
        if (rc < 0) {
            lm_writer_abort(w);
            return -1;
        }
    }
    return lm_writer_commit(w);
}

/* Reads all records; checks they are records first..first+n-1; returns count or -1. */
static int read_check(const char *path, int first, int *mismatch)
{
    lm_reader *r = lm_reader_open(path);
    lm_record rec, want;
    int rc, n = 0;
    *mismatch = 0;
    if (!r)
        return -1;
    while ((rc = lm_reader_next(r, &rec)) == 1) {
        make_record(&want, first + n, 0);
        *mismatch += !same_record(&rec, &want);
        lm_record_free(&want);
        lm_record_free(&rec);
        n++;
    }
    lm_reader_close(r);
    return rc < 0 ? -1 : n;
}

static void t_many_records(void)
{
    int mm;
    LM_CHECK(write_stream(tpath("a.lmt"), 0, 5, 0) == 0, "write: %s", lm_error());
    LM_CHECK(read_check(tpath("a.lmt"), 0, &mm) == 5 && mm == 0, "read back (%d mismatches)", mm);
    LM_CHECK(write_stream(tpath("raw.safetensors"), 0, 1, LM_W_RAW) == 0, "raw write");
    LM_CHECK(read_check(tpath("raw.safetensors"), 0, &mm) == 1 && mm == 0, "raw record read");
}

static void t_concatenated(void)
{
    int mm;
    write_stream(tpath("c1.lmt"), 0, 2, 0);
    write_stream(tpath("c2.lmt"), 2, 2, LM_W_RAW);
    write_stream(tpath("c3.lmt"), 4, 3, 0);
    size_t l1, l2, l3;
    char *a = lm_tu_slurp(tpath("c1.lmt"), &l1), *b = lm_tu_slurp(tpath("c2.lmt"), &l2),
         *c = lm_tu_slurp(tpath("c3.lmt"), &l3);
    char *all = malloc(l1 + l2 + l3);
    memcpy(all, a, l1);
    memcpy(all + l1, b, l2);
    memcpy(all + l1 + l2, c, l3);
    lm_tu_write(tpath("cat.lmt"), all, l1 + l2 + l3);
    LM_CHECK(read_check(tpath("cat.lmt"), 0, &mm) == 7 && mm == 0, "cat of 3 streams (zstd, raw, "
                                                                   "zstd)");
    free(a);
    free(b);
    free(c);
    free(all);
}

/* Skippable zstd frames may sit between records of either kind. */
static void t_skippable(void)
{
    write_stream(tpath("s1.lmt"), 0, 1, LM_W_RAW);
    write_stream(tpath("s2.lmt"), 1, 1, 0);
    size_t l1, l2;
    char *a = lm_tu_slurp(tpath("s1.lmt"), &l1), *b = lm_tu_slurp(tpath("s2.lmt"), &l2);
    unsigned char skip[12] = {0x50, 0x2A, 0x4D, 0x18, 4, 0, 0, 0, 'n', 'o', 't', 'e'};
    char *all = malloc(l1 + l2 + 3 * sizeof skip), *p = all;
    memcpy(p, skip, sizeof skip), p += sizeof skip;
    memcpy(p, a, l1), p += l1;
    memcpy(p, skip, sizeof skip), p += sizeof skip;
    memcpy(p, b, l2), p += l2;
    memcpy(p, skip, sizeof skip), p += sizeof skip;
    lm_tu_write(tpath("skip.lmt"), all, (size_t)(p - all));
    int mm;
    LM_CHECK(read_check(tpath("skip.lmt"), 0, &mm) == 2 && mm == 0, "skippable frames: %s",
             lm_error());
    free(a);
    free(b);
    free(all);
}

static void t_empty(void)
{
    int mm;
    lm_tu_write(tpath("empty.lmt"), "", 0);
    LM_CHECK(read_check(tpath("empty.lmt"), 0, &mm) == 0, "empty input is a clean empty stream");
    LM_CHECK(lm_reader_open(tpath("absent.lmt")) == NULL && strstr(lm_error(), "No such file"),
             "absent: %s", lm_error());
    LM_CHECK(lm_reader_open(lm_test_tmpdir()) == NULL && strstr(lm_error(), "directory"),
             "directory: %s", lm_error());
}

/* Cut a 2-record stream at every byte: clean only at the record boundary. */
static void truncation_sweep(int flags, const char *label)
{
    write_stream(tpath("t1.lmt"), 0, 1, flags);
    size_t l1, len;
    free(lm_tu_slurp(tpath("t1.lmt"), &l1));
    write_stream(tpath("t2.lmt"), 0, 2, flags);
    char *buf = lm_tu_slurp(tpath("t2.lmt"), &len);
    int wrong = 0, step = len > 3000 ? 3 : 1;
    for (size_t cut = 1; cut < len; cut += (cut < 64 || (cut > l1 - 8 && cut < l1 + 64)) ? 1 : step) {
        lm_tu_write(tpath("cut.lmt"), buf, cut);
        int mm, n = read_check(tpath("cut.lmt"), 0, &mm);
        int want = cut == l1 ? 1 : -1;
        if (n != want || mm) {
            if (wrong++ < 3)
                lm_test_fail(__FILE__, __LINE__, "%s cut at %zu/%zu: got %d records (%s)", label,
                             cut, len, n, n < 0 ? lm_error() : "no error");
        } else if (n < 0 && !strstr(lm_error(), "truncated") && !strstr(lm_error(), "zstd") &&
                   !strstr(lm_error(), "bad header")) {
            if (wrong++ < 3)
                lm_test_fail(__FILE__, __LINE__, "%s cut at %zu: unclear error '%s'", label, cut,
                             lm_error());
        }
    }
    LM_CHECK(wrong == 0, "%d bad cuts", wrong);
    free(buf);
}

static void t_truncation_zstd(void) { truncation_sweep(0, "zstd"); }
static void t_truncation_raw(void) { truncation_sweep(LM_W_RAW, "raw"); }

static void t_corruption(void)
{
    write_stream(tpath("k.lmt"), 0, 1, 0);
    size_t len;
    char *buf = lm_tu_slurp(tpath("k.lmt"), &len);
    int accepted = 0;
    for (size_t i = 0; i < len; i += 1 + len / 400) {
        buf[i] ^= 0x5a;
        lm_tu_write(tpath("kc.lmt"), buf, len);
        buf[i] ^= 0x5a;
        int mm, n = read_check(tpath("kc.lmt"), 0, &mm);
        if (n >= 0 && accepted++ < 3)
            lm_test_fail(__FILE__, __LINE__, "flipped byte %zu accepted (%d records, %d bad)", i,
                         n, mm);
    }
    LM_CHECK(accepted == 0, "%d corruptions accepted", accepted);
    free(buf);
    /* Corrupt JSON inside a well-formed zstd frame. */
    const char bad[] = "\x10\0\0\0\0\0\0\0{\"a\":{\"dtype\":";
    char z[256];
    size_t zl = ZSTD_compress(z, sizeof z, bad, sizeof bad - 1, 1);
    lm_tu_write(tpath("json.lmt"), z, zl);
    int mm;
    LM_CHECK(read_check(tpath("json.lmt"), 0, &mm) < 0 && strstr(lm_error(), "record 1"),
             "corrupt JSON: %s", lm_error());
}

/* A producer process writes `len` bytes into a pipe; returns the read end's /dev/fd path. */
static const char *pipe_from(const void *data, size_t len, pid_t *pid)
{
    static char path[64];
    int fds[2];
    if (pipe(fds) != 0)
        return NULL;
    *pid = fork();
    if (*pid == 0) {
        close(fds[0]);
        size_t k = (size_t)write(fds[1], data, len);
        _exit(k == len ? 0 : 1);
    }
    close(fds[1]);
    snprintf(path, sizeof path, "/dev/fd/%d", fds[0]);
    return path;
}

static void t_lying_sizes(void)
{
    /* A raw record declaring a 1 TiB tensor, then 100 bytes, on a pipe. */
    const char *json = "{\"x\":{\"dtype\":\"U8\",\"shape\":[1099511627776],"
                       "\"data_offsets\":[0,1099511627776]}}";
    size_t n = strlen(json);
    unsigned char buf[512] = {0};
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)(n >> (8 * i));
    memcpy(buf + 8, json, n);
    double before = lm_tu_maxrss_mib();
    pid_t pid;
    const char *p = pipe_from(buf, 8 + n + 100, &pid);
    lm_reader *r = lm_reader_open(p);
    lm_record rec;
    LM_CHECK(r && lm_reader_next(r, &rec) < 0 && strstr(lm_error(), "truncated"),
             "pipe with a lying size: %s", lm_error());
    lm_reader_close(r);
    waitpid(pid, NULL, 0);
    close(atoi(p + 8));
    LM_CHECK(lm_tu_maxrss_mib() - before < 32, "allocated %.0f MiB for a lie",
             lm_tu_maxrss_mib() - before);
    /* The same in a regular file: refused from the header alone. */
    lm_tu_write(tpath("lie.lmt"), buf, 8 + n + 100);
    int mm;
    LM_CHECK(read_check(tpath("lie.lmt"), 0, &mm) < 0 && strstr(lm_error(), "truncated"),
             "file: %s", lm_error());
    /* A zstd frame whose content size disagrees with the record's declared size. */
    char z[1024];
    size_t zl = ZSTD_compress(z, sizeof z, buf, 8 + n, 1);
    lm_tu_write(tpath("liez.lmt"), z, zl);
    LM_CHECK(read_check(tpath("liez.lmt"), 0, &mm) < 0 && strstr(lm_error(), "only 0 present"),
             "zstd frame size: %s", lm_error());
    /* A streamed frame (no content size) with the lying header: grows only as data arrives. */
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    ZSTD_inBuffer in = {buf, 8 + n + 100, 0};
    ZSTD_outBuffer out = {z, sizeof z, 0};
    ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 0);
    ZSTD_compressStream2(cc, &out, &in, ZSTD_e_end);
    ZSTD_freeCCtx(cc);
    before = lm_tu_maxrss_mib();
    p = pipe_from(z, out.pos, &pid);
    r = lm_reader_open(p);
    LM_CHECK(r && lm_reader_next(r, &rec) < 0 && strstr(lm_error(), "ends inside the record"),
             "streamed lying frame: %s", lm_error());
    lm_reader_close(r);
    waitpid(pid, NULL, 0);
    close(atoi(p + 8));
    LM_CHECK(lm_tu_maxrss_mib() - before < 100, "allocated %.0f MiB for a lie",
             lm_tu_maxrss_mib() - before);
}

/* 48 records of 8 MiB: peak memory must stay near one record, not the stream. */
static void t_bounded_memory(void)
{
    lm_writer *w = lm_writer_open(tpath("big.lmt"), 0);
    lm_writer_set_level(w, 1);
    for (int i = 0; i < 48; i++) {
        lm_record r;
        make_record(&r, 0, 64 * 1024); /* 4*5*65536 f32 + i16 = 7.5 MiB */
        lm_writer_put(w, &r);
        lm_record_free(&r);
    }
    LM_CHECK(lm_writer_commit(w) == 0, "write");
    double before = lm_tu_maxrss_mib();
    lm_reader *r = lm_reader_open(tpath("big.lmt"));
    lm_record rec;
    int n = 0;
    while (lm_reader_next(r, &rec) == 1) {
        n++;
        lm_record_free(&rec);
    }
    lm_reader_close(r);
    LM_CHECK(n == 48, "records %d", n);
    LM_CHECK(lm_tu_maxrss_mib() - before < 64, "reading 360 MiB of records grew RSS by %.0f MiB",
             lm_tu_maxrss_mib() - before);
    unlink(tpath("big.lmt"));
}

static int count_files(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    while (d && (e = readdir(d)))
        n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    if (d)
        closedir(d);
    return n;
}

static void t_atomic(void)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/atomic", lm_test_tmpdir());
    mkdir(dir, 0755);
    char path[1100];
    snprintf(path, sizeof path, "%s/out.lmt", dir);
    lm_writer *w = lm_writer_open(path, 0);
    lm_record r;
    make_record(&r, 1, 0);
    lm_writer_put(w, &r);
    LM_CHECK(access(path, F_OK) != 0, "output visible before commit");
    lm_writer_abort(w);
    LM_CHECK(access(path, F_OK) != 0 && count_files(dir, ".lmtmp") == 0, "abort left files");
    /* Killed by SIGTERM in the middle: nothing left. */
    pid_t pid = fork();
    if (pid == 0) {
        lm_writer *cw = lm_writer_open(path, 0);
        lm_writer_put(cw, &r);
        raise(SIGTERM);
        _exit(3);
    }
    int st;
    waitpid(pid, &st, 0);
    LM_CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM, "child was not killed by SIGTERM");
    LM_CHECK(access(path, F_OK) != 0 && count_files(dir, ".lmtmp") == 0,
             "SIGTERM left a partial output");
    /* Exiting without commit (a tool dying on an error): removed at exit. */
    pid = fork();
    if (pid == 0) {
        lm_writer *cw = lm_writer_open(path, 0);
        lm_writer_put(cw, &r);
        exit(1);
    }
    waitpid(pid, &st, 0);
    LM_CHECK(count_files(dir, ".lmtmp") == 0, "exit(1) left a temporary");
    w = lm_writer_open(path, 0);
    LM_CHECK(w != NULL, "open after children: %s", lm_error());
    if (!w)
        return;
    lm_writer_put(w, &r);
    LM_CHECK(lm_writer_commit(w) == 0 && access(path, F_OK) == 0, "commit");
    LM_CHECK(count_files(dir, ".lmtmp") == 0, "commit left a temporary");
    lm_record_free(&r);
}

/* More temporaries than the registry's first table (64) -- lm-register stages three files per
 * pair -- all removed on SIGTERM, at exit, and by abort; every commit lands. */
static void t_atomic_many(void)
{
    enum { MANY = 300 };
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/atomic_many", lm_test_tmpdir());
    mkdir(dir, 0755);
    for (int how = 0; how < 2; how++) { /* SIGTERM, exit(1) */
        pid_t pid = fork();
        if (pid == 0) {
            char p[1100], *tmp;
            for (int i = 0; i < MANY; i++) {
                snprintf(p, sizeof p, "%s/f%03d.nii.gz", dir, i);
                if (lm_atomic_tmpname(p, &tmp) < 0)
                    _exit(4);
            }
            if (count_files(dir, ".lmtmp") != MANY)
                _exit(5);
            if (how == 0)
                raise(SIGTERM);
            exit(1);
        }
        int st;
        waitpid(pid, &st, 0);
        LM_CHECK(how == 0 ? WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM
                          : WIFEXITED(st) && WEXITSTATUS(st) == 1,
                 "child %d: status %d", how, st);
        LM_CHECK(count_files(dir, ".lmtmp") == 0, "%s left %d temporaries",
                 how ? "exit(1)" : "SIGTERM", count_files(dir, ".lmtmp"));
    }
    char *tmp[MANY], p[1100];
    for (int i = 0; i < MANY; i++) {
        snprintf(p, sizeof p, "%s/f%03d.nii.gz", dir, i);
        LM_CHECK(lm_atomic_tmpname(p, &tmp[i]) == 0, "temporary %d: %s", i, lm_error());
    }
    for (int i = 0; i < MANY; i++) { /* every other one lands, the rest are dropped */
        snprintf(p, sizeof p, "%s/f%03d.nii.gz", dir, i);
        if (i % 2)
            lm_atomic_abort(NULL, tmp[i]);
        else
            LM_CHECK(lm_atomic_commit(NULL, tmp[i], p) == 0, "commit %d: %s", i, lm_error());
    }
    LM_CHECK(count_files(dir, ".lmtmp") == 0 && count_files(dir, "f") == MANY / 2,
             "%d temporaries and %d outputs left", count_files(dir, ".lmtmp"),
             count_files(dir, "f"));
}

static void t_terminal_and_pipe(void)
{
    int st;
    pid_t pid = fork();
    if (pid == 0) { /* stdout on a pseudo-terminal: refused without LM_W_FORCE */
        int m = posix_openpt(O_RDWR | O_NOCTTY);
        if (m < 0 || grantpt(m) || unlockpt(m))
            _exit(77);
        int s = open(ptsname(m), O_RDWR | O_NOCTTY);
        if (s < 0 || dup2(s, STDOUT_FILENO) < 0)
            _exit(77);
        lm_writer *w = lm_writer_open("-", 0);
        int refused = !w && strstr(lm_error(), "terminal");
        lm_writer *f = lm_writer_open("-", LM_W_FORCE);
        _exit(refused && f ? 0 : 1);
    }
    waitpid(pid, &st, 0);
    if (WEXITSTATUS(st) == 77)
        lm_test_skip("no pseudo-terminal available");
    else
        LM_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "binary to a terminal was not refused");
    /* Writing into a pipe whose reader has gone: one clean error, no signal death. */
    int fds[2];
    LM_CHECK(pipe(fds) == 0, "pipe");
    pid = fork();
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], STDOUT_FILENO);
        lm_cli_init("t");
        lm_writer *w = lm_writer_open("-", 0);
        lm_record r;
        make_record(&r, 0, 64 * 1024);
        int rc = lm_writer_put(w, &r); /* on a pipe the write fails in the output thread: */
        if (rc == 0)                   /* the error comes with the commit */
            rc = lm_writer_commit(w);
        _exit(rc < 0 && strstr(lm_error(), "broken pipe") ? 0 : 1);
    }
    close(fds[1]);
    close(fds[0]);
    waitpid(pid, &st, 0);
    LM_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "broken pipe not reported cleanly (status %d)",
             st);
}

/* lm_reader_next_view gives the records lm_reader_next gives, as views of the reader's buffer;
 * a tensor left unaligned by another writer's header is copied. */
static void t_views(void)
{
    write_stream(tpath("v1.lmt"), 0, 2, 0);
    write_stream(tpath("v2.lmt"), 2, 1, LM_W_RAW);
    size_t l1, l2;
    char *a = lm_tu_slurp(tpath("v1.lmt"), &l1), *b = lm_tu_slurp(tpath("v2.lmt"), &l2);
    /* a raw record whose header, padded with spaces to 8 + N = 1 (mod 4), leaves its F32 data
     * unaligned in any buffer that is itself aligned */
    const char *json = "{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}";
    size_t hn = strlen(json);
    while ((8 + hn) % 4 != 1)
        hn++;
    unsigned char odd[256];
    memset(odd, ' ', sizeof odd);
    for (int i = 0; i < 8; i++)
        odd[i] = (unsigned char)(hn >> (8 * i));
    memcpy(odd + 8, json, strlen(json));
    float xs[3] = {1.5f, -2.0f, 3.25f};
    memcpy(odd + 8 + hn, xs, sizeof xs);
    size_t lodd = 8 + hn + sizeof xs;
    char *all = malloc(l1 + l2 + lodd);
    memcpy(all, a, l1);
    memcpy(all + l1, b, l2);
    memcpy(all + l1 + l2, odd, lodd);
    lm_tu_write(tpath("views.lmt"), all, l1 + l2 + lodd);
    lm_reader *r = lm_reader_open(tpath("views.lmt"));
    lm_record rec, want;
    int n = 0, bad = 0, owned = 0;
    while (r && lm_reader_next_view(r, &rec) == 1) {
        if (n < 3) {
            make_record(&want, n, 0);
            bad += !same_record(&rec, &want);
            lm_record_free(&want);
            for (int i = 0; i < rec.n; i++)
                owned += rec.t[i].owns;
        } else {
            const lm_tensor *x = lm_record_cget(&rec, "x");
            LM_CHECK(x && x->owns && (uintptr_t)x->data % 4 == 0 && !memcmp(x->data, xs, 12),
                     "unaligned F32 data is copied to aligned memory");
        }
        /* a tensor put into a record of views is the record's own */
        lm_tensor t;
        int64_t sh[1] = {1000};
        lm_tensor_alloc(&t, "added", LM_F32, 1, sh);
        lm_record_put(&rec, &t);
        lm_record_free(&rec);
        n++;
    }
    LM_CHECK(n == 4 && bad == 0 && owned == 0, "views: %d records, %d differ, %d copied (%s)", n,
             bad, owned, lm_error());
    lm_reader_close(r);
    free(a);
    free(b);
    free(all);
    /* errors as lm_reader_next reports them */
    write_stream(tpath("vt.lmt"), 0, 1, 0);
    char *buf = lm_tu_slurp(tpath("vt.lmt"), &l1);
    lm_tu_write(tpath("vt.lmt"), buf, l1 - 5);
    r = lm_reader_open(tpath("vt.lmt"));
    LM_CHECK(r && lm_reader_next_view(r, &rec) < 0 && strstr(lm_error(), "record 1: truncated"),
             "truncated: %s", lm_error());
    lm_reader_close(r);
    free(buf);
}

/* A 2-record stream written to path by a writer at level `level` (INT32_MIN: the writer's
 * default); stream_bytes returns its bytes. */
static int write_levelled(const char *path, int level)
{
    lm_writer *w = lm_writer_open(path, 0);
    if (!w)
        return -1;
    if (level != INT32_MIN)
        lm_writer_set_level(w, level);
    for (int i = 0; i < 2; i++) {
        lm_record r;
        make_record(&r, i, 4096);
        lm_writer_put(w, &r);
        lm_record_free(&r);
    }
    return lm_writer_commit(w);
}

static char *stream_bytes(const char *path, int level, size_t *len)
{
    return write_levelled(path, level) < 0 ? NULL : lm_tu_slurp(path, len);
}

static int same_bytes(const char *a, size_t la, const char *b, size_t lb)
{
    return a && b && la == lb && memcmp(a, b, la) == 0;
}

/* Levels: 1 for files, a fast level (-20) for pipes, LM_ZSTD_LEVEL over both, any level read back;
 * bad values of LM_ZSTD_LEVEL refused. Compression is deterministic, so equal bytes mean the same
 * level. */
static void t_levels(void)
{
    size_t ld = 0, l1 = 0, l3 = 0, lf = 0, le = 0, lp;
    unsetenv("LM_ZSTD_LEVEL");
    char *d = stream_bytes(tpath("ld.lmt"), INT32_MIN, &ld);
    char *one = stream_bytes(tpath("l1.lmt"), 1, &l1);
    char *three = stream_bytes(tpath("l3.lmt"), 3, &l3);
    char *fast = stream_bytes(tpath("lf.lmt"), -20, &lf);
    LM_CHECK(same_bytes(d, ld, one, l1) && !same_bytes(d, ld, three, l3),
             "a file is written at level 1 by default");
    lm_reader *r = lm_reader_open(tpath("lf.lmt"));
    lm_record rec, want;
    int n = 0, mm = 0;
    while (r && lm_reader_next(r, &rec) == 1) {
        make_record(&want, n++, 4096);
        mm += !same_record(&rec, &want);
        lm_record_free(&want);
        lm_record_free(&rec);
    }
    lm_reader_close(r);
    LM_CHECK(n == 2 && mm == 0, "level -20 read back: %d records, %d differ", n, mm);
    setenv("LM_ZSTD_LEVEL", "-20", 1);
    char *e = stream_bytes(tpath("le.lmt"), INT32_MIN, &le);
    LM_CHECK(same_bytes(e, le, fast, lf), "LM_ZSTD_LEVEL=-20 sets the default");
    free(e);
    e = stream_bytes(tpath("le.lmt"), 3, &le);
    LM_CHECK(same_bytes(e, le, three, l3), "lm_writer_set_level overrides LM_ZSTD_LEVEL");
    free(e);
    const char *bad[] = {"0", "x", "3x", "", "99", "-99999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        setenv("LM_ZSTD_LEVEL", bad[i], 1);
        lm_writer *w = lm_writer_open(tpath("lb.lmt"), 0);
        if (!*bad[i]) /* empty: unset */
            LM_CHECK(w != NULL, "LM_ZSTD_LEVEL= (empty) is ignored: %s", lm_error());
        else
            LM_CHECK(!w && strstr(lm_error(), "LM_ZSTD_LEVEL"), "LM_ZSTD_LEVEL=%s: %s", bad[i],
                     w ? "accepted" : lm_error());
        lm_writer_abort(w);
    }
    unsetenv("LM_ZSTD_LEVEL");
    LM_CHECK(access(tpath("lb.lmt"), F_OK) != 0, "a refused level left an output");
    /* on a pipe (stdout of a child): the fast level */
    int fds[2];
    LM_CHECK(pipe(fds) == 0, "pipe");
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], STDOUT_FILENO);
        _exit(write_levelled("-", INT32_MIN) < 0);
    }
    close(fds[1]);
    char *got = malloc(lf + 1024);
    lp = 0;
    for (ssize_t k; (k = read(fds[0], got + lp, lf + 1024 - lp)) > 0;)
        lp += (size_t)k;
    close(fds[0]);
    int st;
    waitpid(pid, &st, 0);
    LM_CHECK(same_bytes(got, lp, fast, lf),
             "a pipe is written at level -20 by default (%zu vs %zu bytes)", lp, lf);
    free(got);
    free(d);
    free(one);
    free(three);
    free(fast);
}

/* Record i of 2 MiB of pseudo-random bytes (incompressible). */
static void make_noise_record(lm_record *r, int i)
{
    int64_t shape[1] = {2 << 20};
    lm_tensor t;
    lm_record_init(r);
    lm_tensor_alloc(&t, "noise", LM_U8, 1, shape);
    uint64_t x = lm_test_seed() * 2654435761u + (uint64_t)i + 1;
    unsigned char *p = t.data;
    for (int64_t k = 0; k < shape[0]; k++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        p[k] = (unsigned char)(x >> 32);
    }
    lm_record_put(r, &t);
}

/* On a pipe, lm_writer_put returns once the record is compressed, before the next process has
 * read it (a synchronous writer would block on a full pipe), and the records arrive whole and
 * in order. */
static void t_async_pipe(void)
{
    int data[2], note[2];
    LM_CHECK(pipe(data) == 0 && pipe(note) == 0, "pipes");
    pid_t pid = fork();
    if (pid == 0) {
        close(data[0]);
        close(note[0]);
        dup2(data[1], STDOUT_FILENO);
        close(data[1]);
        lm_cli_init("t");
        lm_writer *w = lm_writer_open("-", 0);
        lm_writer_set_level(w, 1);
        int ok = w != NULL;
        for (int i = 0; ok && i < 3; i++) {
            lm_record r;
            make_noise_record(&r, i); /* far beyond a pipe's buffer, even compressed */
            ok = lm_writer_put(w, &r) == 0;
            lm_record_free(&r);
            if (i == 0 && write(note[1], "p", 1) != 1) /* put returned, nothing read yet */
                ok = 0;
        }
        ok = ok && lm_writer_commit(w) == 0;
        _exit(ok ? 0 : 1);
    }
    close(data[1]);
    close(note[1]);
    struct pollfd pf = {note[0], POLLIN, 0};
    LM_CHECK(poll(&pf, 1, 30000) == 1, "lm_writer_put waited for the reader of its pipe");
    char path[64];
    snprintf(path, sizeof path, "/dev/fd/%d", data[0]);
    lm_reader *r = lm_reader_open(path);
    lm_record rec, want;
    int n = 0, bad = 0;
    while (r && lm_reader_next(r, &rec) == 1) {
        make_noise_record(&want, n);
        bad += !same_record(&rec, &want);
        lm_record_free(&want);
        lm_record_free(&rec);
        n++;
    }
    LM_CHECK(n == 3 && bad == 0, "%d records through the pipe, %d differ (%s)", n, bad, lm_error());
    lm_reader_close(r);
    close(data[0]);
    close(note[0]);
    int st;
    waitpid(pid, &st, 0);
    LM_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "writer child failed (status %d)", st);
}

static const lm_test_case cases[] = {
    {"many_records", t_many_records},
    {"concatenated", t_concatenated},
    {"empty_and_missing", t_empty},
    {"skippable_frames", t_skippable},
    {"truncation_zstd", t_truncation_zstd},
    {"truncation_raw", t_truncation_raw},
    {"corruption", t_corruption},
    {"lying_sizes", t_lying_sizes},
    {"bounded_memory", t_bounded_memory},
    {"atomic_output", t_atomic},
    {"atomic_output_many", t_atomic_many},
    {"terminal_and_broken_pipe", t_terminal_and_pipe},
    {"views", t_views},
    {"levels", t_levels},
    {"async_pipe", t_async_pipe},
    {0},
};

int main(int argc, char **argv) { return lm_test_run(argc, argv, cases); }
