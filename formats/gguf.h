/* ggml tensor types as stored in GGUF files: type ids, block layouts and scalar reference
 * dequantizers. The GGUF reader (gguf.c) uses them to turn every tensor into F32; a GGUF
 * writer reuses the same table.
 *
 * Block layouts follow the GGUF/ggml specification (ggml-common.h block_q*). Multi-byte
 * fields are little-endian; fp16 is IEEE half. A tensor row of n elements is n/block_size
 * consecutive blocks, so GGUF requires ne[0] % block_size == 0. */
#ifndef LMP_GGUF_H
#define LMP_GGUF_H

#include <assert.h>
#include <stddef.h>
#include <stdint.h>

/* ggml_type ids (only the ones we read or name; see lmp_gguf_type_name for the rest). */
enum lmp_ggml_type {
    LMP_GGML_TYPE_F32 = 0,
    LMP_GGML_TYPE_F16 = 1,
    LMP_GGML_TYPE_Q4_0 = 2,
    LMP_GGML_TYPE_Q4_1 = 3,
    LMP_GGML_TYPE_Q8_0 = 8,
    LMP_GGML_TYPE_Q4_K = 12,
    LMP_GGML_TYPE_Q6_K = 14,
    LMP_GGML_TYPE_BF16 = 30,
};

#define LMP_GGML_QK 32    /* elements per block of the legacy Q4_0 / Q4_1 / Q8_0 */
#define LMP_GGML_QK_K 256 /* elements per super-block of the K-quants */

/* Q4_0: x = (q - 8) * d; element j < 16 is the low nibble of qs[j], j >= 16 the high
 * nibble of qs[j - 16]. */
struct lmp_ggml_block_q4_0 {
    uint16_t d;                   /* fp16 scale */
    uint8_t qs[LMP_GGML_QK / 2];  /* 4-bit quants */
};
static_assert(sizeof(struct lmp_ggml_block_q4_0) == 18, "q4_0 block size");

/* Q4_1: x = q * d + m, nibble order as Q4_0. */
struct lmp_ggml_block_q4_1 {
    uint16_t d;                   /* fp16 scale */
    uint16_t m;                   /* fp16 minimum */
    uint8_t qs[LMP_GGML_QK / 2];
};
static_assert(sizeof(struct lmp_ggml_block_q4_1) == 20, "q4_1 block size");

/* Q8_0: x = q * d. */
struct lmp_ggml_block_q8_0 {
    uint16_t d;
    int8_t qs[LMP_GGML_QK];
};
static_assert(sizeof(struct lmp_ggml_block_q8_0) == 34, "q8_0 block size");

/* Q4_K: 8 sub-blocks of 32; sub-block s has a 6-bit scale sc[s] and 6-bit min mn[s]
 * packed in scales[12]; x = d*sc[s]*q - dmin*mn[s]. Each 64 elements share 32 bytes of
 * qs: low nibbles are sub-block 2k, high nibbles sub-block 2k+1. */
struct lmp_ggml_block_q4_K {
    uint16_t d;    /* fp16 super-scale of the scales */
    uint16_t dmin; /* fp16 super-scale of the mins */
    uint8_t scales[12];
    uint8_t qs[LMP_GGML_QK_K / 2];
};
static_assert(sizeof(struct lmp_ggml_block_q4_K) == 144, "q4_K block size");

/* Q6_K: 16 sub-blocks of 16 with int8 scales; 6-bit quants are 4 low bits in ql and 2
 * high bits in qh, stored offset by 32; x = d * scales[s] * (q - 32). */
struct lmp_ggml_block_q6_K {
    uint8_t ql[LMP_GGML_QK_K / 2];
    uint8_t qh[LMP_GGML_QK_K / 4];
    int8_t scales[LMP_GGML_QK_K / 16];
    uint16_t d; /* fp16 super-scale */
};
static_assert(sizeof(struct lmp_ggml_block_q6_K) == 210, "q6_K block size");

/* Dequantizes n elements (n a multiple of block_size) from packed src (any alignment). */
typedef void (*lmp_gguf_to_float_fn)(const void *src, float *dst, int64_t n);

struct lmp_gguf_type_traits {
    const char *name;
    int block_size;   /* elements per block */
    size_t type_size; /* bytes per block */
    lmp_gguf_to_float_fn to_float;
};

/* Traits of a type we can read, NULL for any other id. */
const struct lmp_gguf_type_traits *lmp_gguf_type_traits(int ggml_type);
/* Name of any ggml type id ("Q5_K", ...), NULL if the id is not a ggml type. */
const char *lmp_gguf_type_name(int ggml_type);
/* Bytes of n elements of a readable type; 0 if the type is not readable, n is not a
 * positive multiple of the block size, or the size overflows. */
size_t lmp_gguf_nbytes(int ggml_type, int64_t n);
/* Dequantizes n elements of src into dst: 0 on success, -1 for a type we cannot read or
 * an n that is not a multiple of the block size (dst untouched). */
int lmp_gguf_dequant(int ggml_type, const void *src, float *dst, int64_t n);

/* The scalar references behind the traits table. */
void lmp_gguf_dequant_f32_ref(const void *src, float *dst, int64_t n);
void lmp_gguf_dequant_f16_ref(const void *src, float *dst, int64_t n);
void lmp_gguf_dequant_bf16_ref(const void *src, float *dst, int64_t n);
void lmp_gguf_dequant_q4_0_ref(const void *src, float *dst, int64_t n);
void lmp_gguf_dequant_q4_1_ref(const void *src, float *dst, int64_t n);
void lmp_gguf_dequant_q8_0_ref(const void *src, float *dst, int64_t n);
void lmp_gguf_dequant_q4_K_ref(const void *src, float *dst, int64_t n);
void lmp_gguf_dequant_q6_K_ref(const void *src, float *dst, int64_t n);

#endif
