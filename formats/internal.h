/* Private helpers of formats/: whole-file buffers, a bounds-checked little-endian
 * cursor, temp+rename writing. Never included outside formats/ (and its tests). */
#ifndef LMP_FORMATS_INTERNAL_H
#define LMP_FORMATS_INTERNAL_H

#include "model.h"

#include <stdio.h>

/* A file mapped read-only (or read into memory). */
struct lmp_buf {
    const unsigned char *data;
    size_t len;
    void *map;  /* mmap base, or NULL */
    void *heap; /* malloc'd copy, or NULL */
};
enum lmp_status lmp_buf_read_file(const char *path, struct lmp_buf *b, struct lmp_err *err);
void lmp_buf_free(struct lmp_buf *b);
/* Hands the mapping over to the model (tensors may point into it). */
void lmp_buf_give_to_model(struct lmp_buf *b, struct lmp_model *m);

/* Bounds-checked little-endian reads; errors name 'what' and the offset. */
struct lmp_cursor {
    const unsigned char *p;
    size_t len;
    size_t pos;
    const char *path;
};
enum lmp_status lmp_cur_bytes(struct lmp_cursor *c, size_t n, const void **out, const char *what,
                              struct lmp_err *err);
enum lmp_status lmp_cur_u8(struct lmp_cursor *c, uint8_t *v, const char *what, struct lmp_err *err);
enum lmp_status lmp_cur_u32(struct lmp_cursor *c, uint32_t *v, const char *what,
                            struct lmp_err *err);
enum lmp_status lmp_cur_i32(struct lmp_cursor *c, int32_t *v, const char *what,
                            struct lmp_err *err);
enum lmp_status lmp_cur_u64(struct lmp_cursor *c, uint64_t *v, const char *what,
                            struct lmp_err *err);
enum lmp_status lmp_cur_f32(struct lmp_cursor *c, float *v, const char *what, struct lmp_err *err);
enum lmp_status lmp_cur_f64(struct lmp_cursor *c, double *v, const char *what, struct lmp_err *err);

const char *lmp_basename(const char *path);

/* Atomic output: opens "<path>.tmp.<pid>"; commit renames it over path, abort removes it. */
struct lmp_outfile {
    FILE *f;
    char path[4096];
    char tmp[4200];
};
enum lmp_status lmp_out_open(struct lmp_outfile *o, const char *path, struct lmp_err *err);
enum lmp_status lmp_out_write(struct lmp_outfile *o, const void *p, size_t n, struct lmp_err *err);
enum lmp_status lmp_out_commit(struct lmp_outfile *o, struct lmp_err *err);
void lmp_out_abort(struct lmp_outfile *o);

/* Reads a whole text file into a NUL-terminated malloc'd string. */
enum lmp_status lmp_read_text(const char *path, char **out, size_t *len, struct lmp_err *err);

/* hf.c, for formats/gptq_st.c: a Hugging Face directory's config.json into m->cfg and its
 * tokenizer into m->vocab (as lmp_ckpt_load_hf reads them); tensors are left to the caller. */
enum lmp_status lmp_hf_load_meta(const char *dir, struct lmp_model *m, struct lmp_err *err);

#endif
