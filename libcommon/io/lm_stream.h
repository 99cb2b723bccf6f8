/* lm_stream.h — tensor streams (.lmt): a sequence of records, each one safetensors document,
 * each in its own zstd frame (flushed per record so the next stage starts at once).
 * Uncompressed records are accepted too, so a plain .safetensors file is a one-record stream
 * and `cat a.lmt b.lmt` is a stream. man/lm-tensor.5 is the specification.
 *
 * The reader holds one record at a time: memory is bounded by the largest record, never by the
 * stream. Sizes declared by a record are checked before the memory for them is allocated
 * (against the zstd frame's content size or the file's remaining length); on a pipe, buffers
 * grow only as bytes actually arrive, so a lying header cannot make the reader allocate what
 * the input does not contain.
 *
 * The writer compresses at a level chosen for where the stream goes (lm_writer_set_level). On a
 * pipe it writes compressed records asynchronously: lm_writer_put compresses the record into
 * memory and returns while a thread writes it out, so a stage goes on to its next record instead
 * of waiting for the next process to read this one; the writer then holds up to two compressed
 * records, and a failed write is reported by the following lm_writer_put or lm_writer_commit.
 */
#ifndef LM_STREAM_H
#define LM_STREAM_H

#include "lm_tensor.h"

typedef struct lm_reader lm_reader;
typedef struct lm_writer lm_writer;

/* path "-" (or NULL) is stdin. NULL on error (lm_error). Reading binary from a terminal is
 * refused. */
lm_reader *lm_reader_open(const char *path);
/* 1: *rec holds the next record (free it with lm_record_free); 0: clean end of stream;
 * -1: error (lm_error says "record N: reason"). *rec is re-initialised first. */
int lm_reader_next(lm_reader *r, lm_record *rec);
/* As lm_reader_next, without copying the data: the tensors of *rec are views of the reader's
 * buffer (owns = 0), valid until the next call on r or lm_reader_close. Tensors put into the
 * record later are the record's as usual; lm_record_free releases the record either way. */
int lm_reader_next_view(lm_reader *r, lm_record *rec);
const char *lm_reader_name(const lm_reader *r); /* the path, or "stdin" */
long lm_reader_count(const lm_reader *r);       /* records returned so far */
int lm_reader_last_compressed(const lm_reader *r);
void lm_reader_close(lm_reader *r); /* accepts NULL */

enum {
    LM_W_FORCE = 1, /* allow binary output to a terminal */
    LM_W_RAW = 2,   /* uncompressed records (a plain safetensors file for one record) */
};
/* path "-" (or NULL) is stdout; a named file is written under a temporary name and appears
 * only on lm_writer_commit(). */
lm_writer *lm_writer_open(const char *path, int flags);
/* Serialises, compresses (one frame, content size and checksum recorded) and flushes (on a pipe:
 * hands the frame to the output thread, which flushes). rec may be freed or changed on return. */
int lm_writer_put(lm_writer *w, const lm_record *rec);
/* lm_writer_put in two steps, for a record whose first `ready` tensors are complete before the
 * others (a stage's inputs, which pass through, before its outputs are computed):
 * lm_writer_begin starts compressing the header and those tensors in a thread and returns at
 * once; lm_writer_end compresses the rest and finishes the record as lm_writer_put does. In
 * between, nothing of rec may change but the data of its tensors from `ready` on. After a
 * failed begin or end the record is dropped; lm_writer_abort drops one begun. */
int lm_writer_begin(lm_writer *w, const lm_record *rec, int ready);
int lm_writer_end(lm_writer *w, const lm_record *rec);
/* Finishes the output (rename into place for files) and frees w. 0 or -1. */
int lm_writer_commit(lm_writer *w);
/* Drops the output (removes the temporary) and frees w. Accepts NULL. */
void lm_writer_abort(lm_writer *w);
const char *lm_writer_name(const lm_writer *w);
/* Any zstd level (negative: zstd's fast levels). Default: $LM_ZSTD_LEVEL if set (a bad value
 * fails lm_writer_open), else 1 for a regular file and -20 for anything else (a pipe, a
 * socket, a terminal). */
void lm_writer_set_level(lm_writer *w, int zstd_level);

#endif
