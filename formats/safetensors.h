/* safetensors, the Hugging Face tensor container: an 8-byte little-endian header length N,
 * N bytes of JSON  {"name": {"dtype": "F32", "shape": [rows, cols], "data_offsets": [b, e]},
 * ..., "__metadata__": {...}}  (padded with spaces), then the data section; offsets are
 * relative to the data section's start. Tensors are row-major, little-endian.
 *
 * Reader: lmp_st_open maps a file and validates every entry (dtype known, shape without
 * overflow, offsets inside the data, size == numel * dtype size, no duplicates); tensor data
 * pointers then point into the mapping. Writer: lmp_st_write writes named tensors through a
 * temporary file renamed into place. Used by the HF loader (hf.c) and exports. */
#ifndef LMP_SAFETENSORS_H
#define LMP_SAFETENSORS_H

#include "internal.h"

enum lmp_st_dtype {
    LMP_ST_BOOL,
    LMP_ST_U8,
    LMP_ST_I8,
    LMP_ST_F8_E4M3,
    LMP_ST_F8_E5M2,
    LMP_ST_I16,
    LMP_ST_U16,
    LMP_ST_F16,
    LMP_ST_BF16,
    LMP_ST_I32,
    LMP_ST_U32,
    LMP_ST_F32,
    LMP_ST_I64,
    LMP_ST_U64,
    LMP_ST_F64,
    LMP_ST_N_DTYPES
};

#define LMP_ST_MAX_DIMS 8
#define LMP_ST_MAX_HEADER (100u << 20) /* the reference implementation's limit */

struct lmp_st_tensor {
    char *name; /* owned, NUL-terminated */
    enum lmp_st_dtype dtype;
    int n_dims;                       /* 0 (scalar) .. LMP_ST_MAX_DIMS */
    int64_t shape[LMP_ST_MAX_DIMS];   /* outermost first, as in the file */
    int64_t nelem;
    const unsigned char *data;        /* into the data section (unaligned) */
    size_t nbytes;
};

struct lmp_st_file {
    const char *path;              /* owned copy, for messages */
    struct lmp_buf buf;            /* the mapping when opened by lmp_st_open */
    int n_tensors;
    struct lmp_st_tensor *tensors; /* (n_tensors), sorted by name */
};

const char *lmp_st_dtype_name(enum lmp_st_dtype d);
size_t lmp_st_dtype_size(enum lmp_st_dtype d);

/* Parses a safetensors image already in memory (p must outlive f). path names it in errors.
 * On failure f is left empty (lmp_st_close is still safe). */
enum lmp_status lmp_st_parse(struct lmp_st_file *f, const unsigned char *p, size_t len,
                             const char *path, struct lmp_err *err);
/* Maps and parses a file. */
enum lmp_status lmp_st_open(struct lmp_st_file *f, const char *path, struct lmp_err *err);
void lmp_st_close(struct lmp_st_file *f); /* accepts NULL and closed/failed files */

const struct lmp_st_tensor *lmp_st_find(const struct lmp_st_file *f, const char *name);

/* Converts an F32/F16/BF16 tensor to floats: dst has t->nelem elements. Other dtypes give
 * LMP_ERR_UNSUPPORTED naming the file, tensor and dtype. */
enum lmp_status lmp_st_to_f32(const struct lmp_st_file *f, const struct lmp_st_tensor *t,
                              float *dst, struct lmp_err *err);

/* One tensor to write. type: F32, F16, BF16, I32 or U8; data holds nelem elements of it. */
struct lmp_st_wtensor {
    const char *name;
    enum lmp_type type;
    int n_dims;       /* 0 .. 4 */
    int64_t shape[4]; /* outermost first: a weight is {rows(out), cols(in)} */
    const void *data;
};

/* Writes n tensors (in the given order, contiguous) to path via temp + rename. meta holds
 * n_meta key/value string pairs for "__metadata__" (meta[2i] = key, meta[2i+1] = value),
 * may be NULL. */
enum lmp_status lmp_st_write(const char *path, const struct lmp_st_wtensor *t, int n,
                             const char *const *meta, int n_meta, struct lmp_err *err);

#endif
