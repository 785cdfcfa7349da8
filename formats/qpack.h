/* Packed integer weights (types Q2/Q3/Q4/Q8): the bit-stream layout of docs/FORMAT.md,
 * "Packed integer weights", and a borrowed view of a packed matrix that the runtime's
 * kernels and the .lmp reader share.
 *
 * A packed matrix of shape (rows, cols) with b bits per code:
 *   - codes: each row is a little-endian bit stream, code j in bits [j*b, (j+1)*b), bit 0
 *     the least significant bit of the row's first byte; each row padded with zero bits
 *     to a multiple of 4 bytes (lmp_qpack_row_bytes).
 *   - w = (q - zero) * scale, scale and zero fp16, (rows, n_groups) row-major, with
 *     n_groups = ceil(cols / group); code j belongs to group j / group (the last group is
 *     shorter when group does not divide cols; the quantizer makes such groups).
 *   - perm (optional, (cols)): codes are stored in the order the columns were quantized
 *     (act-order): storage column j holds input column perm[j], and groups are formed
 *     over storage columns. y = W x is then y[r] = sum_j w[r][j] * x[perm[j]]. Without a
 *     perm (natural order, or act-order with static groups) storage column j is input j.
 */
#ifndef LMP_QPACK_H
#define LMP_QPACK_H

#include "model.h"

#include <stddef.h>
#include <stdint.h>

/* A packed matrix as the kernels see it; every pointer is borrowed. */
struct lmp_qview {
    const uint8_t *codes;   /* (rows, row_bytes) bit streams */
    int64_t rows, cols;
    int bits;               /* 2, 3, 4, 8 */
    int group;              /* columns per group, 1..cols */
    int64_t n_groups;       /* ceil(cols / group) */
    size_t row_bytes;       /* lmp_qpack_row_bytes(cols, bits) */
    const uint16_t *scales; /* fp16 (rows, n_groups) */
    const uint16_t *zeros;  /* fp16 (rows, n_groups), values on the integer grid */
    const int32_t *perm;    /* (cols) storage column j holds input column perm[j]; or NULL */
};

/* 1 for 2, 3, 4, 8. */
int lmp_qpack_bits_ok(int bits);
/* LMP_TYPE_Q2.. for bits, and back; 0 when not a packed type / bad bits. */
enum lmp_type lmp_qpack_type(int bits);
int lmp_qpack_type_bits(enum lmp_type t);

/* Bytes of one packed row (ceil(cols*bits/8) rounded up to 4); 0 on bad arguments or
 * overflow. */
size_t lmp_qpack_row_bytes(int64_t cols, int bits);
/* Checks a packed shape and gives the byte sizes of the code blob and of the scales
 * (= zeros) blob; LMP_ERR_ARG on bad bits/group/shape, LMP_ERR_FORMAT on overflow. */
enum lmp_status lmp_qpack_sizes(int64_t rows, int64_t cols, int bits, int group,
                                size_t *codes_bytes, size_t *params_bytes, struct lmp_err *err);

/* codes (rows, cols), one code per byte, each < 2^bits (else LMP_ERR_ARG, packed untouched)
 * -> packed (rows, row_bytes), padding bits zero. */
enum lmp_status lmp_qpack_pack(const uint8_t *codes, int64_t rows, int64_t cols, int bits,
                               uint8_t *packed, struct lmp_err *err);
/* packed (rows, row_bytes) -> codes (rows, cols). Arguments must satisfy lmp_qpack_sizes. */
void lmp_qpack_unpack(const uint8_t *packed, int64_t rows, int64_t cols, int bits,
                      uint8_t *codes);
/* Code j of one packed row. */
static inline unsigned lmp_qpack_get(const uint8_t *row, int64_t j, int bits)
{
    uint64_t bit = (uint64_t)j * (uint64_t)bits;
    const uint8_t *p = row + (bit >> 3);
    unsigned sh = (unsigned)(bit & 7);
    unsigned v = p[0];
    if (sh + (unsigned)bits > 8) v |= (unsigned)p[1] << 8; /* the code spans two bytes */
    return (v >> sh) & ((1u << bits) - 1u);
}

/* Checks that perm is a permutation of 0..cols-1 (a reader must, before any kernel
 * indexes x with it). */
enum lmp_status lmp_qpack_check_perm(const int32_t *perm, int64_t cols, struct lmp_err *err);

/* Fills a view after checking every size: codes_bytes must equal the packed size, bits and
 * group valid, perm (may be NULL) a permutation. scales and zeros must each hold
 * params_bytes (lmp_qpack_sizes): a reader checks its blob sizes against that first.
 * Nothing is copied. */
enum lmp_status lmp_qview_init(struct lmp_qview *v, const void *codes, size_t codes_bytes,
                               int64_t rows, int64_t cols, int bits, int group,
                               const uint16_t *scales, const uint16_t *zeros,
                               const int32_t *perm, struct lmp_err *err);
/* The same from a packed model tensor (type Q2..Q8, data = codes, q = its parameters). */
enum lmp_status lmp_qview_from_tensor(struct lmp_qview *v, const struct lmp_tensor *t,
                                      struct lmp_err *err);

/* Reference dequantisation (the specification the kernels are tested against):
 * row r in STORAGE order, out (cols): out[j] = (q_j - zero) * scale. */
void lmp_qpack_dequant_row(const struct lmp_qview *v, int64_t r, float *out);
/* The whole matrix in NATURAL column order (the perm undone): W (rows, cols). */
void lmp_qview_dequant(const struct lmp_qview *v, float *W);

#endif
