/* meta.c — numeric metadata: safetensors metadata values are strings, so numbers and arrays
 * travel as JSON inside them (ARCHITECTURE.md §3), e.g. "spacing": "[2.0,2.0,2.0]". */
#include "lm_error.h"
#include "lm_tensor.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

int lm_record_meta_doubles(const lm_record *r, const char *key, double *out, int cap)
{
    const char *s = lm_record_meta_get(r, key);
    if (!s)
        return 0;
    cJSON *j = cJSON_Parse(s);
    int n = 0;
    if (!j || !cJSON_IsArray(j)) {
        cJSON_Delete(j);
        return lm_error_set("metadata '%s' is not a JSON array of numbers: %.60s", key, s);
    }
    const cJSON *v;
    cJSON_ArrayForEach(v, j)
    {
        if (!cJSON_IsNumber(v) || n >= cap) {
            cJSON_Delete(j);
            return lm_error_set("metadata '%s' is not an array of at most %d numbers", key, cap);
        }
        out[n++] = v->valuedouble;
    }
    cJSON_Delete(j);
    return n;
}

int lm_record_meta_set_doubles(lm_record *r, const char *key, const double *v, int n)
{
    char *s = malloc((size_t)n * 26 + 3), *p = s;
    if (!s)
        return lm_error_set("out of memory");
    *p++ = '[';
    for (int i = 0; i < n; i++) {
        if (!isfinite(v[i])) {
            free(s);
            return lm_error_set("metadata '%s': non-finite number", key);
        }
        p += sprintf(p, "%s%.17g", i ? "," : "", v[i] == 0 ? 0.0 : v[i]);
    }
    *p++ = ']';
    *p = '\0';
    int rc = lm_record_meta_set(r, key, s);
    free(s);
    return rc;
}
