/* atomic.c — temporary-then-rename output with cleanup on exit and on signals.
 * The registry of temporaries grows without bound (lm-register stages three files per pair of
 * a directory): a table of name pointers. A slot is set or cleared by one pointer store; a full
 * table is not grown in place but replaced -- a larger copy made with the signals blocked and
 * published by one release store (the handler loads it with acquire, so it never sees a copy
 * half made); the old one is left allocated (a handler running in another thread may still
 * read it), so at most about as much again as the largest table is never freed. The handler
 * reads each slot once. Registration is meant for one thread at a time (as lm-* tools do). */
#include "lm_atomic.h"

#include "lm_error.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    size_t cap;
    char *v[]; /* registered names; NULL where free */
} table;
static table *tab; /* __atomic loads and stores only */
static int installed;
static unsigned counter;
static int durable = -1; /* -1: from LM_FSYNC */

void lm_atomic_durable(int on) { durable = on; }

static table *tab_get(void) { return __atomic_load_n(&tab, __ATOMIC_ACQUIRE); }

static void on_signal(int sig)
{
    table *t = tab_get();
    for (size_t i = 0; t && i < t->cap; i++) {
        const char *name = __atomic_load_n(&t->v[i], __ATOMIC_RELAXED);
        if (name)
            unlink(name); /* async-signal-safe */
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static void block(sigset_t *old)
{
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGINT);
    sigaddset(&s, SIGTERM);
    sigaddset(&s, SIGHUP);
    sigprocmask(SIG_BLOCK, &s, old);
}

static void install(void)
{
    if (installed)
        return;
    installed = 1;
    atexit(lm_atomic_cleanup);
    int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) {
        struct sigaction sa, old;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        /* Keep an inherited "ignore" (e.g. nohup). */
        if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN)
            continue;
        sigaction(sigs[i], &sa, NULL);
    }
}

static int reg(char *name)
{
    sigset_t old;
    install();
    block(&old);
    int ok = -1;
    table *t = tab_get();
    for (size_t i = 0; t && i < t->cap; i++)
        if (!t->v[i]) {
            __atomic_store_n(&t->v[i], name, __ATOMIC_RELAXED);
            ok = 0;
            break;
        }
    if (ok < 0) { /* full: a table twice as large, published whole */
        const size_t cap = t ? 2 * t->cap : 64;
        table *n = calloc(1, sizeof *n + cap * sizeof n->v[0]);
        if (n) {
            n->cap = cap;
            if (t)
                memcpy(n->v, t->v, t->cap * sizeof t->v[0]);
            n->v[t ? t->cap : 0] = name;
            __atomic_store_n(&tab, n, __ATOMIC_RELEASE);
            ok = 0;
        }
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    return ok < 0 ? lm_error_set("out of memory") : 0;
}

static void unreg(const char *name)
{
    sigset_t old;
    block(&old);
    table *t = tab_get();
    for (size_t i = 0; t && i < t->cap; i++)
        if (t->v[i] == name)
            __atomic_store_n(&t->v[i], NULL, __ATOMIC_RELAXED);
    sigprocmask(SIG_SETMASK, &old, NULL);
}

void lm_atomic_cleanup(void)
{
    sigset_t old;
    block(&old);
    table *t = tab_get();
    for (size_t i = 0; t && i < t->cap; i++) {
        char *name = t->v[i];
        if (name) {
            unlink(name);
            __atomic_store_n(&t->v[i], NULL, __ATOMIC_RELAXED); /* the name leaks at exit */
        }
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
}

/* A new hidden name beside path, ".lmtmp.PID.<tag>N.<basename>" (the extension kept), in
 * name (cap bytes: strlen(path) + 64) */
static void hidden_name(char *name, size_t cap, const char *path, const char *tag)
{
    const char *slash = strrchr(path, '/');
    const int dirlen = slash ? (int)(slash - path + 1) : 0;
    snprintf(name, cap, "%.*s.lmtmp.%ld.%s%u.%s", dirlen, path, (long)getpid(), tag, counter++,
             path + dirlen);
}

int lm_atomic_keep(const char *path, char **bak)
{
    const size_t cap = strlen(path) + 64;
    char *name = malloc(cap);
    *bak = NULL;
    if (!name)
        return lm_error_set("out of memory");
    int e = EEXIST;
    for (int tries = 0; tries < 100 && e == EEXIST; tries++) {
        hidden_name(name, cap, path, "b");
        if (link(path, name) == 0) {
            *bak = name;
            return 0;
        }
        e = errno;
    }
    free(name);
    if (e == ENOENT || e == EPERM || e == ENOTSUP || e == EXDEV || e == EMLINK || e == EEXIST)
        return 0;
    return lm_error_set("%s: cannot keep a copy of the file it replaces: %s", path, strerror(e));
}

static int make_tmp(const char *path, char **tmp, int *fd_out)
{
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    if (!*base)
        return lm_error_set("output path names a directory");
    size_t cap = strlen(path) + 64;
    char *name = malloc(cap);
    if (!name)
        return lm_error_set("out of memory");
    for (int tries = 0; tries < 100; tries++) {
        hidden_name(name, cap, path, "");
        int fd = open(name, O_WRONLY | O_CREAT | O_EXCL, 0666);
        if (fd >= 0) {
            if (reg(name) < 0) {
                close(fd);
                unlink(name);
                free(name);
                return -1;
            }
            *tmp = name;
            *fd_out = fd;
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

FILE *lm_atomic_open(const char *path, char **tmp)
{
    int fd;
    if (make_tmp(path, tmp, &fd) < 0)
        return NULL;
    FILE *fp = fdopen(fd, "wb");
    if (!fp) {
        lm_error_set("cannot open output: %s", strerror(errno));
        close(fd);
        lm_atomic_abort(NULL, *tmp);
        *tmp = NULL;
    }
    return fp;
}

int lm_atomic_tmpname(const char *path, char **tmp)
{
    int fd;
    if (make_tmp(path, tmp, &fd) < 0)
        return -1;
    close(fd);
    return 0;
}

int lm_atomic_commit(FILE *fp, char *tmp, const char *path)
{
    int err = 0;
    if (fp) {
        if (durable < 0)
            durable = getenv("LM_FSYNC") && strcmp(getenv("LM_FSYNC"), "0") != 0;
        if (fflush(fp) != 0 || (durable && fsync(fileno(fp)) != 0))
            err = errno ? errno : EIO;
        if (fclose(fp) != 0 && !err)
            err = errno ? errno : EIO;
    }
    if (err) {
        lm_error_set("write error: %s", strerror(err));
        lm_atomic_abort(NULL, tmp);
        return -1;
    }
    if (rename(tmp, path) != 0) {
        lm_error_set("cannot rename output into place: %s", strerror(errno));
        lm_atomic_abort(NULL, tmp);
        return -1;
    }
    unreg(tmp);
    free(tmp);
    return 0;
}

void lm_atomic_abort(FILE *fp, char *tmp)
{
    if (fp)
        fclose(fp);
    if (tmp) {
        unlink(tmp);
        unreg(tmp);
        free(tmp);
    }
}
