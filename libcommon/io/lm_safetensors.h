/* lm_safetensors.h — the safetensors format: header validation, reading named tensors from a
 * file without reading the rest, and serialising a record.
 *
 * Layout: u64 little-endian N, N bytes of JSON, then the data section. The JSON maps tensor
 * names to {"dtype","shape","data_offsets":[begin,end]} (offsets relative to the data
 * section) plus an optional "__metadata__" string->string map. The header is validated in
 * full before anything is allocated for data: size bound, known dtypes, integral shapes whose
 * byte size cannot overflow, end-begin == numel*sizeof(dtype), offsets in order without gaps
 * or overlap, no duplicate names, and the data section inside what is available.
 * Not here: zstd framing (stream.c).
 */
#ifndef LM_SAFETENSORS_H
#define LM_SAFETENSORS_H

#include "lm_tensor.h"

#include <stdint.h>
#include <stdio.h>

#define LM_ST_MAX_HEADER (100u << 20) /* the bound the reference implementation uses */

typedef struct {
    char *name;
    lm_dtype dtype;
    int ndim;
    int64_t shape[LM_MAX_DIMS];
    uint64_t begin, end; /* relative to the data section */
} lm_st_entry;

typedef struct {
    uint64_t header_len; /* N */
    uint64_t data_size;  /* bytes of the data section */
    lm_st_entry *e;      /* in header order */
    int n;
    lm_meta_kv *meta;
    int nmeta;
} lm_st_header;

/* Parses and validates N bytes of header JSON. `avail` is the number of data bytes known to
 * follow (UINT64_MAX when unknown, e.g. a pipe); data_size > avail is an error. */
int lm_st_header_parse(lm_st_header *h, const char *json, uint64_t n, uint64_t avail);
void lm_st_header_free(lm_st_header *h);
int lm_st_header_find(const lm_st_header *h, const char *name); /* index or -1 */

/* One record of an in-memory buffer [8-byte N | JSON | data], len bytes exactly. The tensors
 * are copied into owned memory. */
int lm_st_parse_record(lm_record *rec, const unsigned char *buf, size_t len);

/* The header of a record: 8-byte N followed by the JSON, padded with spaces to a multiple of 8
 * as the Python package does. *out is malloc'ed; *len = 8 + N. Data follows in record order. */
int lm_st_header_build(unsigned char **out, size_t *len, const lm_record *rec);

/* ---- files, read lazily with pread ---- */
typedef struct {
    int fd;
    int owns_fd;
    char *path;
    uint64_t base;      /* offset of this record in the file */
    uint64_t file_size;
    lm_st_header h;
} lm_st_file;

/* Opens the safetensors record starting at `offset` of `path` (0 for an ordinary file). Only
 * the header is read. Errors name the reason; the caller adds the path. */
int lm_st_file_open(lm_st_file *f, const char *path, uint64_t offset);
void lm_st_file_close(lm_st_file *f);
/* Reads entry i (or the named tensor) into an owned tensor, touching only its bytes. */
int lm_st_file_read(lm_st_file *f, int i, lm_tensor *out);
int lm_st_file_read_name(lm_st_file *f, const char *name, lm_tensor *out);
/* Offset of the first byte after this record. */
uint64_t lm_st_file_end(const lm_st_file *f);

/* Writes rec as one safetensors file at path, atomically (temp name + rename). */
int lm_st_write_file(const char *path, const lm_record *rec);

#endif
