/* test_coverage.c — the kernel tests' own guards:
 *   - every op of ops.def is marked KT_COVER(op) in the code (not a comment) of some
 *     tests/kernels/test_*.c, and its slot in the CPU table is filled;
 *   - every op of ops.def with grad FD is marked in a test function that calls kt_gradcheck
 *     (itself or through a function it calls), and every LINEAR one where kt_adj_check is;
 *   - every op of ops.def, and nothing else, is listed in man/lm-kernels.7;
 *   - the finite-difference checker rejects realistic wrong gradients (expected failures):
 *     a leaky_relu backward with the wrong slope, a flow gradient with the D and W channels
 *     swapped, a conv3d dx computed with the kernel flipped (convolution instead of
 *     correlation), and an instance-norm backward that forgets the mean term.
 */
#include "kt.h"

#include <ctype.h>
#include <dirent.h>

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    size_t got = fread(s, 1, (size_t)n, f);
    s[got] = 0;
    fclose(f);
    return s;
}

/* blanks out the C comments of s in place, so that a KT_COVER mark in a comment does not
 * count; the contents of string and character literals (with their escapes), so that a
 * comment opener or a brace inside one counts for nothing; and preprocessor directives (with
 * their continuation lines), whose braces and calls belong to no function. (A mark inside
 * #if 0 still counts.) */
static void strip_comments(char *s)
{
    char *p = s;
    int line_start = 1; /* only blanks since the last newline */
    while (*p) {
        if (line_start && *p == '#') { /* a directive, with its continuation lines */
            int cont = 0;
            for (; *p && (*p != '\n' || cont); p++)
                if (*p == '\n') {
                    cont = 0;
                } else {
                    cont = *p == '\\';
                    *p = ' ';
                }
            continue;
        }
        if (*p == '\n')
            line_start = 1;
        else if (*p != ' ' && *p != '\t')
            line_start = 0;
        if (p[0] == '/' && p[1] == '*') {
            char *e = strstr(p + 2, "*/");
            char *stop = e ? e + 2 : p + strlen(p);
            memset(p, ' ', (size_t)(stop - p));
            p = stop;
        } else if (p[0] == '/' && p[1] == '/') {
            while (*p && *p != '\n')
                *p++ = ' ';
        } else if (*p == '"' || *p == '\'') { /* a literal: its contents blanked too */
            const char q = *p++;
            while (*p && *p != q && *p != '\n') {
                const int n = p[0] == '\\' && p[1] ? 2 : 1;
                memset(p, ' ', (size_t)n);
                p += n;
            }
            if (*p == q)
                p++;
        } else {
            p++;
        }
    }
}

/* The test files tests/kernels/test_*.c but this one, comments, literals and directives
 * blanked, concatenated, each followed by a form feed; NULL (the case failed) if none can be
 * read. */
static char *test_sources(void)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/tests/kernels", lm_test_srcdir());
    DIR *d = opendir(dir);
    if (!d) {
        lm_test_fail(__FILE__, __LINE__, "cannot open %s", dir);
        return NULL;
    }
    size_t cap = 1, len = 0;
    char *all = calloc(1, 1);
    struct dirent *e;
    int nfiles = 0;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (strncmp(e->d_name, "test_", 5) != 0 || l < 3 || strcmp(e->d_name + l - 2, ".c") != 0 ||
            strcmp(e->d_name, "test_coverage.c") == 0)
            continue;
        char path[1400];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        char *s = slurp(path);
        if (!s)
            continue;
        strip_comments(s);
        size_t sl = strlen(s);
        if (len + sl + 2 > cap) {
            cap = (len + sl + 2) * 2;
            all = realloc(all, cap);
        }
        memcpy(all + len, s, sl);
        len += sl;
        all[len++] = '\f'; /* between files: ends a unit; calls resolve within a file */
        all[len] = 0;
        free(s);
        nfiles++;
    }
    closedir(d);
    LM_CHECK(nfiles >= 5, "found only %d test files in %s", nfiles, dir);
    if (nfiles == 0) {
        free(all);
        return NULL;
    }
    return all;
}

static void t_every_op_has_a_test(void)
{
    char *all = test_sources();
    if (!all)
        return;
    int missing = 0;
    for (int i = 0; i < LM_OP_COUNT; i++) {
        char mark[128];
        snprintf(mark, sizeof mark, "KT_COVER(%s)", lm_op_table[i].name);
        if (!strstr(all, mark)) {
            lm_test_fail(__FILE__, __LINE__, "op %s (%s.c) has no test case", lm_op_table[i].name,
                         lm_op_table[i].family);
            missing++;
        }
    }
    if (getenv("KT_VERBOSE"))
        fprintf(stderr, "  %d ops, %d without a test\n", (int)LM_OP_COUNT, missing);
    free(all);
}

/* The check that ops.def's grad column promises is made where the op is marked. The tests are
 * cut into top-level units (a function with its signature: from the end of the unit before to
 * its closing brace). For an FD op, some unit holds KT_COVER(op) and either calls kt_gradcheck
 * or calls a function of the same file whose unit does (t_relu -> fd_one); for a LINEAR op the
 * same with kt_adj_check. */
typedef struct {
    const char *text; /* the unit, NUL-terminated in place */
    char name[64];    /* the function's name, or "" */
    int file;         /* which test file (static helpers of the same name differ by file) */
    int gc, adj;
} unit;

/* whether u calls a function named name: name followed by '(' with no identifier character
 * before it */
static int unit_calls(const unit *u, const char *name)
{
    const size_t n = strlen(name);
    for (const char *q = strstr(u->text, name); q && n; q = strstr(q + 1, name)) {
        const int word_start = q == u->text || !(isalnum((unsigned char)q[-1]) || q[-1] == '_');
        if (word_start && q[n] == '(')
            return 1;
    }
    return 0;
}

static void t_grad_class_checked(void)
{
    char *all = test_sources();
    if (!all)
        return;
    size_t cap = 64, nu = 0;
    unit *u = malloc(cap * sizeof *u);
    int depth = 0, file = 0;
    char *start = all;
    for (char *p = all; *p; p++) {
        if (*p == '{')
            depth++;
        else if (*p == '}')
            depth--;
        if (*p == '\f') { /* the end of a file ends its last unit, whatever the depth */
            LM_CHECK(depth == 0, "unbalanced braces in test file %d (depth %d)", file, depth);
            depth = 0, file++;
            start = p + 1;
            continue;
        }
        if (depth == 0 && (*p == '}' || *p == ';')) {
            const int body = *p == '}';
            if (nu == cap)
                u = realloc(u, (cap *= 2) * sizeof *u);
            unit *v = &u[nu++];
            v->text = start;
            v->name[0] = 0;
            v->file = file;
            /* the name: the identifier just before the first '(' of the header */
            const char *br = body ? strchr(start, '{') : NULL, *par = strchr(start, '(');
            if (br && par && par < br) {
                const char *e = par;
                while (e > start && e[-1] == ' ')
                    e--;
                const char *b = e;
                while (b > start && (isalnum((unsigned char)b[-1]) || b[-1] == '_'))
                    b--;
                if (e > b && (size_t)(e - b) < sizeof v->name) {
                    memcpy(v->name, b, (size_t)(e - b));
                    v->name[e - b] = 0;
                }
            }
            p[0] = 0; /* the unit ends here: its last character is never needed */
            v->gc = strstr(start, "kt_gradcheck(") != NULL;
            v->adj = strstr(start, "kt_adj_check(") != NULL;
            start = p + 1;
        }
    }
    for (int i = 0; i < LM_OP_COUNT; i++) {
        const int fd = strcmp(lm_op_table[i].grad, "FD") == 0;
        if (!fd && strcmp(lm_op_table[i].grad, "LINEAR") != 0)
            continue;
        char mark[128];
        snprintf(mark, sizeof mark, "KT_COVER(%s)", lm_op_table[i].name);
        int ok = 0;
        for (size_t a = 0; a < nu && !ok; a++) {
            if (!strstr(u[a].text, mark))
                continue;
            ok = fd ? u[a].gc : u[a].adj;
            for (size_t b = 0; b < nu && !ok; b++)
                if (u[b].file == u[a].file && u[b].name[0] && (fd ? u[b].gc : u[b].adj) &&
                    unit_calls(&u[a], u[b].name))
                    ok = 1;
        }
        LM_CHECK(ok, "op %s (%s): no %s check in a case that marks it", lm_op_table[i].name,
                 lm_op_table[i].grad, fd ? "kt_gradcheck" : "adjoint");
    }
    free(u);
    free(all);
}

/* Every op of ops.def has an entry in man/lm-kernels.7's list of operations (the words of its
 * ".It Sy" lines between ".Ss Operations" and the next ".Ss"), and every word there is an op:
 * the page cannot miss a new op or keep one that was removed. */
static int op_index(const char *w, size_t n)
{
    for (int i = 0; i < LM_OP_COUNT; i++)
        if (strlen(lm_op_table[i].name) == n && strncmp(lm_op_table[i].name, w, n) == 0)
            return i;
    return -1;
}

static void t_every_op_documented(void)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/man/lm-kernels.7", lm_test_srcdir());
    char *page = slurp(path);
    if (!page) {
        lm_test_fail(__FILE__, __LINE__, "cannot read %s", path);
        return;
    }
    char *sec = strstr(page, "\n.Ss Operations\n");
    LM_CHECK(sec != NULL, "%s: no .Ss Operations section", path);
    if (!sec) {
        free(page);
        return;
    }
    char *end = strstr(sec + 1, "\n.Ss ");
    if (end)
        *end = 0;
    int *seen = calloc(LM_OP_COUNT, sizeof *seen);
    for (char *l = strstr(sec, "\n.It Sy "); l; l = strstr(l + 1, "\n.It Sy ")) {
        const char *q = l + 8;
        while (*q && *q != '\n') {
            while (*q == ' ' || *q == ',')
                q++;
            size_t n = strcspn(q, " ,\n");
            if (n == 0)
                break;
            const int k = op_index(q, n);
            if (k >= 0)
                seen[k] = 1;
            else
                lm_test_fail(__FILE__, __LINE__,
                             "man/lm-kernels.7 lists \"%.*s\", which is no op of ops.def", (int)n,
                             q);
            q += n;
        }
    }
    for (int i = 0; i < LM_OP_COUNT; i++)
        LM_CHECK(seen[i], "op %s (%s.c) is missing from man/lm-kernels.7", lm_op_table[i].name,
                 lm_op_table[i].family);
    free(seen);
    free(page);
}

static void t_cpu_table_complete(void)
{
    lm_backend *be = lm_backend_cpu();
    LM_CHECK(lm_backend_check(be) == 0, "%s", lm_error());
    LM_CHECK(be->kind == LM_BACKEND_CPU && strcmp(be->name, "cpu") == 0, "identity");
    /* a table with a hole is reported by name */
    lm_backend holed = *be;
    holed.warp_bwd = NULL;
    LM_CHECK(lm_backend_check(&holed) < 0 && strstr(lm_error(), "warp_bwd"), "hole not found");
    /* buffers round-trip through the backend */
    float h[5] = {1, 2, 3, 4, 5}, back[5];
    float *dbuf = lm_backend_alloc(be, sizeof h);
    LM_CHECK(dbuf && ((uintptr_t)dbuf % 64) == 0, "alloc alignment");
    LM_CHECK(lm_backend_upload(be, dbuf, h, sizeof h) == 0, "upload");
    LM_CHECK(lm_backend_download(be, back, dbuf, sizeof h) == 0, "download");
    LM_CHECK(memcmp(h, back, sizeof h) == 0, "round trip");
    LM_CHECK(lm_backend_sync(be) == 0, "sync");
    LM_CHECK(lm_backend_set_threads(be, 0) < 0, "0 threads accepted");
    lm_backend_free(be, dbuf);
    lm_backend_free(be, NULL);
}

/* ---- expected failures ---- */
typedef struct {
    float *x, *y, *r;
    int64_t n;
} lctx;

static double leaky_loss(void *p)
{
    lctx *c = p;
    KT_CALL(leaky_relu_fwd, c->y, c->x, 0.01f, c->n);
    return kt_dot(c->y, c->r, c->n);
}

static void t_rejects_wrong_slope(void)
{
    KT_COVER(leaky_relu_bwd);
    const int64_t n = 16;
    lctx c = {kt_rand_away(n, 0.05, 2, 1), kt_alloc(n), kt_rand(n, -1, 1, 2), n};
    float *good = kt_alloc(n), *bad = kt_alloc(n);
    KT_CALL(leaky_relu_bwd, good, c.r, c.x, 0.01f, n);
    KT_CALL(leaky_relu_bwd, bad, c.r, c.x, 0.02f, n); /* the bug: slope 0.02 */
    double eg = kt_fd_error(c.x, n, good, leaky_loss, &c, 1e-3);
    double eb = kt_fd_error(c.x, n, bad, leaky_loss, &c, 1e-3);
    LM_CHECK(eg <= 1e-3, "right gradient rejected (%g)", eg);
    LM_CHECK(eb > 1e-3, "EXPECTED FAILURE did not fail: wrong slope accepted (err %g)", eb);
    kt_free(c.x), kt_free(c.y), kt_free(c.r), kt_free(good), kt_free(bad);
}

typedef struct {
    float *src, *flow, *y, *r;
    lm_warp_args a;
} wctx;

static double warp_loss(void *p)
{
    wctx *c = p;
    KT_CALL(warp_fwd, c->y, c->src, c->flow, &c->a);
    return kt_dot(c->y, c->r, (int64_t)c->a.C * c->a.D * c->a.H * c->a.W);
}

static void t_rejects_swapped_flow_channels(void)
{
    KT_COVER(warp_bwd);
    const int D = 3, H = 4, W = 3;
    const int64_t N = D * H * W;
    wctx c = {kt_rand(N, -1, 1, 1), kt_rand(3 * N, 0.2, 0.8, 2), kt_alloc(N), kt_rand(N, -1, 1, 3),
              {1, D, H, W, LM_PAD_ZEROS}};
    float *g = kt_alloc(3 * N), *bad = kt_alloc(3 * N);
    KT_CALL(warp_bwd, NULL, g, c.r, c.src, c.flow, &c.a);
    memcpy(bad, g + 2 * N, N * 4); /* the bug: channel 0 is along W */
    memcpy(bad + N, g + N, N * 4);
    memcpy(bad + 2 * N, g, N * 4);
    double eg = kt_fd_error(c.flow, 3 * N, g, warp_loss, &c, 1e-3);
    double eb = kt_fd_error(c.flow, 3 * N, bad, warp_loss, &c, 1e-3);
    LM_CHECK(eg <= 1e-3, "right gradient rejected (%g)", eg);
    LM_CHECK(eb > 1e-3, "EXPECTED FAILURE did not fail: swapped channels accepted (err %g)", eb);
    kt_free(c.src), kt_free(c.flow), kt_free(c.y), kt_free(c.r), kt_free(g), kt_free(bad);
}

typedef struct {
    float *x, *w, *y, *r;
    lm_conv3d_args a;
    int64_t nout;
} cctx;

static double conv_loss(void *p)
{
    cctx *c = p;
    KT_CALL(conv3d_fwd, c->y, c->x, c->w, NULL, &c->a);
    return kt_dot(c->y, c->r, c->nout);
}

static void t_rejects_flipped_kernel(void)
{
    KT_COVER(conv3d_bwd);
    lm_conv3d_args a = {2, 2, 3, 4, 3, 1};
    const int64_t nin = 2 * 36, nw = 2 * 2 * 27;
    cctx c = {kt_rand(nin, -1, 1, 1), kt_rand(nw, -1, 1, 2), kt_alloc(nin), kt_rand(nin, -1, 1, 3),
              a, nin};
    float *wf = kt_alloc(nw), *g = kt_alloc(nin), *bad = kt_alloc(nin);
    for (int64_t o = 0; o < nw / 27; o++) /* the bug: kernel taps reversed */
        for (int k = 0; k < 27; k++)
            wf[o * 27 + k] = c.w[o * 27 + 26 - k];
    KT_CALL(conv3d_bwd, g, NULL, NULL, c.r, c.x, c.w, &a);
    KT_CALL(conv3d_bwd, bad, NULL, NULL, c.r, c.x, wf, &a);
    double eg = kt_fd_error(c.x, nin, g, conv_loss, &c, 1e-2);
    double eb = kt_fd_error(c.x, nin, bad, conv_loss, &c, 1e-2);
    LM_CHECK(eg <= 1e-3, "right gradient rejected (%g)", eg);
    LM_CHECK(eb > 1e-3, "EXPECTED FAILURE did not fail: flipped kernel accepted (err %g)", eb);
    kt_free(c.x), kt_free(c.w), kt_free(c.y), kt_free(c.r), kt_free(wf), kt_free(g), kt_free(bad);
}

typedef struct {
    float *x, *y, *r;
    lm_instnorm_args a;
} ictx;

static double in_loss(void *p)
{
    ictx *c = p;
    KT_CALL(instnorm_fwd, c->y, NULL, NULL, c->x, &c->a);
    return kt_dot(c->y, c->r, c->a.C * c->a.N);
}

static void t_rejects_missing_mean_term(void)
{
    KT_COVER(instnorm_bwd);
    const int64_t C = 2, N = 9;
    ictx c = {kt_rand(C * N, -2, 2, 1), kt_alloc(C * N), kt_rand(C * N, -1, 1, 2), {C, N, 0, 1e-5f}};
    float *m = kt_alloc(C), *s = kt_alloc(C), *g = kt_alloc(C * N), *bad = kt_alloc(C * N);
    KT_CALL(instnorm_fwd, c.y, m, s, c.x, &c.a);
    KT_CALL(instnorm_bwd, g, c.r, c.x, m, s, &c.a);
    /* the bug: dx = rstd·(dy − x̂·mean(dy·x̂)), the mean(dy) term forgotten */
    for (int64_t ch = 0; ch < C; ch++) {
        double mdy = 0;
        for (int64_t i = 0; i < N; i++)
            mdy += c.r[ch * N + i];
        mdy /= N;
        for (int64_t i = 0; i < N; i++)
            bad[ch * N + i] = (float)(g[ch * N + i] + s[ch] * mdy);
    }
    double eg = kt_fd_error(c.x, C * N, g, in_loss, &c, 1e-3);
    double eb = kt_fd_error(c.x, C * N, bad, in_loss, &c, 1e-3);
    LM_CHECK(eg <= 2e-3, "right gradient rejected (%g)", eg);
    LM_CHECK(eb > 2e-3, "EXPECTED FAILURE did not fail: missing mean term accepted (err %g)", eb);
    kt_free(c.x), kt_free(c.y), kt_free(c.r), kt_free(m), kt_free(s), kt_free(g), kt_free(bad);
}

static const lm_test_case cases[] = {
    {"every op in ops.def has a test", t_every_op_has_a_test},
    {"every FD op checked by finite differences, LINEAR by adjoints", t_grad_class_checked},
    {"every op in ops.def is in man/lm-kernels.7", t_every_op_documented},
    {"cpu table complete and buffers", t_cpu_table_complete},
    {"checker rejects wrong leaky slope (expected failure)", t_rejects_wrong_slope},
    {"checker rejects swapped flow channels (expected failure)", t_rejects_swapped_flow_channels},
    {"checker rejects flipped conv kernel (expected failure)", t_rejects_flipped_kernel},
    {"checker rejects missing norm term (expected failure)", t_rejects_missing_mean_term},
    {0},
};

int main(int argc, char **argv) { return lm_test_run(argc, argv, cases); }
