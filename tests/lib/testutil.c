/* testutil.c — see lm_testutil.h. */
#include "lm_testutil.h"

#include "lm_test.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

char *lm_tu_slurp(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, fp) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(fp);
    if (buf) {
        buf[n] = '\0';
        if (len)
            *len = (size_t)n;
    }
    return buf;
}

int lm_tu_write(const char *path, const void *data, size_t len)
{
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return -1;
    size_t k = fwrite(data, 1, len, fp);
    return fclose(fp) == 0 && k == len ? 0 : -1;
}

cJSON *lm_tu_json(const char *relpath)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", lm_test_srcdir(), relpath);
    char *s = lm_tu_slurp(path, NULL);
    cJSON *j = s ? cJSON_Parse(s) : NULL;
    free(s);
    return j;
}

double lm_tu_jnum(const cJSON *v)
{
    if (cJSON_IsNumber(v))
        return v->valuedouble;
    if (cJSON_IsString(v)) {
        const char *s = v->valuestring;
        if (!strcmp(s, "nan"))
            return NAN;
        if (!strcmp(s, "inf"))
            return INFINITY;
        if (!strcmp(s, "-inf"))
            return -INFINITY;
        if (!strcmp(s, "-0"))
            return -0.0;
        return strtod(s, NULL);
    }
    return NAN;
}

double lm_tu_maxrss_mib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}
