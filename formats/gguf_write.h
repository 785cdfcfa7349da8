/* GGUF v3 writer: an lmp_model as a llama.cpp "llama" model file (metadata, tokenizer,
 * tensors F32 / F16 / BF16 / Q8_0 / Q4_0 / Q4_1 / Q4_K / Q6_K), and the quantizers behind it.
 *
 * Tensor names are already GGUF's and Q/K rows already in llama.cpp's interleaved RoPE
 * order (model.h), so float tensors are written as they are: our [out][in] matrix is GGUF
 * ne = {in, out}. 1-D tensors (norms, biases) are always F32. A tied head has no
 * output.weight. A model whose layers differ in head counts or MLP width (pruned) is written
 * with general.architecture "deci", llama.cpp's Llama variant that reads per-layer shapes
 * (its "llama" loader sizes every layer like layer 0), the per-layer values as INT32 arrays;
 * uniform models are "llama".
 *
 * Packed (GPTQ) tensors are mapped onto GGUF blocks where the grids agree exactly: a block
 * of 32 codes of one group, natural column order, integer zero point z and fp16 scale s:
 *   Q4_0  w = d*(c - 8):      d = s, c = q - z + 8   (or d = -s, c = z - q + 8)
 *   Q8_0  w = d*c:            d = s, c = q - z       (or d = -s, c = z - q)
 *   Q4_1  w = d*c + m:        d = s, c = q + k, m = -(z + k)*s  (or d = -s, c = K - q,
 *                             m = (K - z)*s), k / K chosen per block so that m is exact in
 *                             fp16 where one exists; otherwise the nearest fp16 m
 * (all blocks of a tensor must fit the type's code range). Everything else (act-order
 * permutations, groups that are not a multiple of 32, 8-bit asymmetric grids) is
 * dequantized and re-quantized; the report says which, with the largest deviation from our
 * dequantized weights, measured on the written blocks. */
#ifndef LMP_GGUF_WRITE_H
#define LMP_GGUF_WRITE_H

#include "gguf.h"
#include "model.h"

/* Scalar reference quantizers (n floats -> n/32 blocks), computed as ggml's
 * quantize_row_*_ref so that the bytes equal those of other GGUF tools:
 *   Q8_0: d = max|x|/127, c = round(x/d) (half away from zero)
 *   Q4_0: d = -(x with the largest |x|)/8, c = min(15, trunc(x/d + 8.5))
 *   Q4_1: d = (max - min)/15, m = min, c = min(15, trunc((x - min)/d + 0.5))
 * (x/d is x * (1/d); d = 0 gives all-zero codes). n must be a multiple of 32. */
void lmp_gguf_quantize_q8_0_ref(const float *x, void *dst, int64_t n);
void lmp_gguf_quantize_q4_0_ref(const float *x, void *dst, int64_t n);
void lmp_gguf_quantize_q4_1_ref(const float *x, void *dst, int64_t n);
/* Q4_K and Q6_K (n a multiple of 256), our own quantizers: per sub-block min-max (Q4_K:
 * scale (max - min)/15 and minimum; Q6_K: the value of largest magnitude at code -32), those
 * scales rounded to 6 / 8 bits against the fp16 super-block scales, then each code rounded
 * to nearest against the scale the reader uses. Not ggml's bytes (its reference searches the
 * scales); the tests compare the dequantized values with the gguf package's. */
void lmp_gguf_quantize_q4_K(const float *x, void *dst, int64_t n);
void lmp_gguf_quantize_q6_K(const float *x, void *dst, int64_t n);
/* F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K: writes lmp_gguf_nbytes(type, n) bytes to dst.
 * 0 on success, -1 for another type or an n that is not a multiple of the block size. */
int lmp_gguf_quantize(int ggml_type, const float *src, void *dst, int64_t n);
/* "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k", "q6_k" (any case) -> ggml type id,
 * else -1. */
int lmp_gguf_type_from_name(const char *s);

enum lmp_gguf_how {
    LMP_GGUF_COPY,    /* float tensor stored in its own type, bits unchanged */
    LMP_GGUF_CONVERT, /* float tensor converted / quantized to the requested type */
    LMP_GGUF_EXACT,   /* packed tensor mapped onto GGUF blocks (or F32) with identical values */
    LMP_GGUF_NEAR,    /* packed -> Q4_1: codes and scales exact, the block minimum m rounded
                         to fp16 in some blocks (max_err) */
    LMP_GGUF_REQUANT, /* packed tensor dequantized and re-quantized / converted (max_err) */
};

struct lmp_gguf_tensor_report {
    char name[LMP_NAME_MAX];
    int ggml_type;         /* type written */
    enum lmp_gguf_how how;
    int fallback;          /* the requested block type does not fit the row length: a
                              K-quant needs a multiple of 256 (else Q8_0), the others of 32
                              (else F16; F32 when F32 was asked for) */
    int packed;            /* the source tensor is packed */
    double max_err;        /* packed sources: max |GGUF value - our dequantized value| */
    int64_t n_blocks;      /* NEAR: Q4_1 blocks written ... */
    int64_t n_exact;       /* ... of which reproduce our values exactly */
    const char *why;       /* REQUANT / fallback: the reason (static string), else NULL */
};

struct lmp_gguf_report {
    int n;                             /* tensors written */
    struct lmp_gguf_tensor_report *t;  /* (n), malloc'd: lmp_gguf_report_free */
    int file_type;                     /* general.file_type written (llama_ftype) */
    uint64_t file_bytes;
};
void lmp_gguf_report_free(struct lmp_gguf_report *r); /* accepts NULL */

struct lmp_gguf_write_opts {
    /* ggml type of the 2-D weights: -1 = auto (float tensors keep F32/F16/BF16; packed
     * ones map exactly onto Q4_0/Q4_1/Q8_0 where they can, else are re-quantized to Q8_0),
     * or LMP_GGML_TYPE_F32/F16/BF16/Q8_0/Q4_0/Q4_1 (packed tensors then map exactly only
     * onto that type, else are re-quantized to it), or Q4_K/Q6_K (always re-quantized; rows
     * that are not a multiple of 256 fall back to Q8_0, as in llama.cpp's quantizer). */
    int type;
};

/* Writes m as GGUF v3 to path (temporary name + rename). rep (may be NULL) is filled on
 * success. LMP_ERR_UNSUPPORTED when GGUF cannot express the model (no tokenizer, a BPE
 * pre-tokenizer without a llama.cpp name, a tensor that is not a llama tensor). */
enum lmp_status lmp_ckpt_save_gguf(const struct lmp_model *m, const char *path,
                                   const struct lmp_gguf_write_opts *o,
                                   struct lmp_gguf_report *rep, struct lmp_err *err);

#endif
