/* Weight quantization at the level of one matrix: the integer grids (asymmetric min-max,
 * symmetric, MSE-optimal clipping), round-to-nearest (RTN), and GPTQ (Frantar et al.,
 * "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers",
 * 2022) as published in the IST-DASLab reference implementation (gptq.py fasterquant,
 * quant.py Quantizer), plus the Hessian accumulation that feeds it.
 *
 * Layout: W is row-major (rows, cols) = [out][in] (formats/model.h); a group is `group`
 * consecutive columns of one row, in storage order (= processing order with act-order and
 * a stored perm; natural order otherwise, static groups included); H is (cols, cols),
 * H = 2/N sum_n x_n x_n^T over the N input vectors x_n (cols) of the layer.
 *
 * Partial last group: groups start at every multiple of `group`, so there are
 * n_groups = ceil(cols / group) of them and, when group does not divide cols, the last one
 * covers the remaining cols % group columns; its grid params are computed from that shorter
 * slice. This is what the reference does (find_params(W[:, i : i + groupsize]) at every
 * i % groupsize == 0, the slice naturally shorter at the end). A group >= cols is one group
 * per row (per-channel).
 *
 * Grid (per row and group, b bits, maxq = 2^b - 1), as the reference find_params:
 *   xmin = min(min(w), 0), xmax = max(max(w), 0)
 *   sym:  xmax = max(-xmin, xmax), xmin = -xmax          (see ref_quirks)
 *   xmin == xmax == 0  ->  xmin = -1, xmax = 1             (all-zero group: no 0 scale)
 *   scale = (xmax - xmin) / maxq
 *   zero  = sym ? (maxq + 1) / 2 : round(-xmin / scale)
 *   mse:  for i in 0 .. int(maxshrink*grid)-1, p = 1 - i/grid: the same on p*xmin, p*xmax
 *         (zero fixed when sym); keep the first (scale, zero) with the least
 *         sum |w_hat - w|^norm.
 * Scales and zeros are stored as fp16 (docs/FORMAT.md), so the scale is rounded to fp16
 * BEFORE any code is computed (zeros are integers <= 255, exact in fp16): what the
 * kernels run is exactly what was optimised. A scale below the smallest fp16 subnormal
 * becomes that subnormal (2^-24); one above 65504 is an error (LMP_ERR_ARG).
 *   q = clamp(round_half_even(w / scale) + zero, 0, maxq),  w_hat = scale * (q - zero)
 * all in float32, as the reference computes in torch.float32.
 *
 * Every function returns a status and on failure writes one line into err. The caller owns
 * every buffer it passes; lmp_qtensor_out's arrays are malloc'd here and freed with
 * lmp_qtensor_out_free.
 */
#ifndef LMP_QUANT_H
#define LMP_QUANT_H

#include "formats/model.h"

#include <stdint.h>

struct lmp_quant_opts {
    int bits;          /* 2, 3, 4, 8 */
    int group;         /* columns per group; 0 (or >= cols) = per-channel (group = cols).
                          Need not divide cols: the last group is then shorter (above). */
    int sym;           /* symmetric grid, zero = 2^(bits-1) */
    int mse;           /* MSE-optimal clipping search per group (GPTQ: at each group start) */
    int mse_grid;      /* 100 */
    double mse_maxshrink; /* 0.8 */
    double mse_norm;   /* 2.4 */
    /* GPTQ only */
    int block;         /* lazy-batch block size (columns), default 128 */
    float damp;        /* fraction of mean(diag(H)) added to H's diagonal, default 0.01 */
    int act_order;     /* process columns by decreasing diag(H) (stable) */
    int static_groups; /* group params from the original (un-updated) W, natural column
                          groups; with act_order this removes the need for a stored perm */
    int refine;        /* beyond the reference: after GPTQ, refit every group's scale (codes
                          and zeros fixed) to minimise (w - w_hat)^T H (w - w_hat) per row;
                          a row keeps its old scales unless the refit (in fp16) is better */
    int ref_quirks;    /* reproduce three quirks of the reference code bit for bit (default
                          off, each a small deliberate deviation):
                          (1) inside a block, a group's params are taken from the weights as
                              they were at the START of the block (the reference reads W, not
                              the updated block copy W1) instead of the fully updated ones;
                          (2) sym with a group that has no negative weight keeps xmin = 0
                              (scale = xmax/maxq, half the grid unused, positives clipped at
                              about xmax/2) instead of xmin = -xmax;
                          (3) per-channel params are computed before dead columns are zeroed. */
    int max_retries;   /* Cholesky failures tolerated, damping x10 each time; default 4 */
    int gguf_exact;    /* 4-bit asymmetric only: every fp16 scale s is moved to the nearest
                          fp16 value (a few ulp at most) for which the group, with its integer
                          zero z, is exactly a GGUF Q4_1 block: z*s or (15 - z)*s exact in
                          fp16 (lmp_quant_q41_scale), so that a GGUF export of natural-order
                          groups of a multiple of 32 holds our weights bit for bit. Codes are
                          computed with the moved scale (GPTQ compensates for it). */
};

/* bits 4, per-channel, asymmetric, block 128, damp 0.01, mse grid 100/0.8/2.4, retries 4. */
void lmp_quant_opts_default(struct lmp_quant_opts *o);
/* Checks o against a (rows, cols) matrix: bits, shape, group >= 0, block, damp, mse. */
enum lmp_status lmp_quant_opts_check(const struct lmp_quant_opts *o, int64_t rows, int64_t cols,
                                     struct lmp_err *err);

/* ---- grid ----------------------------------------------------------------------------- */

/* Params of one group x (n values, stride 1). fp16 scale and zero out. LMP_ERR_ARG if x has
 * a non-finite value or the scale overflows fp16. */
enum lmp_status lmp_quant_grid_params(const float *x, int n, const struct lmp_quant_opts *o,
                                      uint16_t *scale, uint16_t *zero, struct lmp_err *err);

/* For an asymmetric grid with maxq = 15 and integer zero z: the fp16 value nearest to s16
 * (positive, finite) for which z*s or (15 - z)*s is exactly representable in fp16, i.e. the
 * Q4_1 block minimum m = -z*s (codes c = q) or m = (15 - z)*s (d = -s, c = 15 - q) is exact
 * and d*c + m equals s*(q - z) in float32. For z in {0, 1, 2, 4, 7, 8, 11, 13, 14, 15} that is
 * s16 itself; otherwise at most a few ulp away. Other maxq: s16 unchanged. */
uint16_t lmp_quant_q41_scale(uint16_t s16, float z, int maxq);

static inline int lmp_quant_code(float w, float scale, float zero, int maxq)
{
    float q = __builtin_nearbyintf(w / scale) + zero; /* default rounding: half to even */
    if (!(q >= 0.0f)) return 0;
    if (q > (float)maxq) return maxq;
    return (int)q;
}

/* ---- results -------------------------------------------------------------------------- */

struct lmp_qtensor_out {
    int64_t rows, cols;
    int bits, sym;
    int group;          /* as stored: min(opts group, cols); cols for per-channel */
    int64_t n_groups;   /* ceil(cols / group); the last group may be shorter */
    uint8_t *codes;     /* (rows, cols) one code per byte, STORAGE order (see perm) */
    uint16_t *scales;   /* fp16 (rows, n_groups) */
    uint16_t *zeros;    /* fp16 (rows, n_groups) */
    int32_t *perm;      /* (cols): storage column j is input column perm[j]; NULL when
                           storage order is natural (no act-order, or static groups) */
    /* diagnostics (GPTQ) */
    double loss;        /* the reference's error: sum over columns of (w - q)^2 / d^2 / 2 */
    double damp;        /* absolute damping finally added to diag(H) */
    int damp_retries;   /* Cholesky failures, each retried with 10x damping */
    int n_dead;         /* columns with H[i][i] == 0 (their weights set to 0) */
    int refined_rows;   /* rows whose scales the refit changed */
};
void lmp_qtensor_out_free(struct lmp_qtensor_out *o); /* frees the arrays; accepts NULL */

/* ---- Hessian -------------------------------------------------------------------------- */

/* H (cols, cols) <- running average 2/N sum x x^T over all rows seen so far, as the
 * reference add_batch: H *= N/(N+n); N += n; H += 2/N X^T X (cblas_ssyrk). N counts rows of
 * X (the reference counts sequences; a constant factor on H changes nothing in GPTQ since
 * damping is relative). Start with H = 0, *nsamples = 0. Only the UPPER triangle (j >= i)
 * is written; lmp_quant_hessian_finalize mirrors it (the GPTQ functions read only the upper
 * triangle, so finalizing is optional for them). */
enum lmp_status lmp_quant_hessian_accumulate(float *H, int cols, const float *X /* (n, cols) */,
                                             int n, int64_t *nsamples, struct lmp_err *err);
void lmp_quant_hessian_finalize(float *H, int cols);

/* ---- target correction (beyond the reference) ---------------------------------------------
 * GPTQ minimises ||W X - Q X|| on the inputs X of the partly quantized model. With the
 * inputs Xf the unquantized model sees at the same place, the objective ||W Xf - Q X||
 * (reproduce what the original layer computed on the original activations, which also
 * undoes part of the error of the earlier quantized layers) is the same GPTQ problem for
 * the corrected weights W' = W C H^-1, C = 2/N sum xf x^T: then
 * ||W Xf - Q X||^2 = const + ||(W' - Q) X||^2. Computed as
 * W' = W + alpha W (C - H) (H + damp I)^-1, exactly W when Xf = X (alpha = 1: the full
 * correction, 0: none). */

/* C (cf, cols) <- running average of 2/N sum a x^T, C[i][j] = sum a_i x_j, with the same
 * weights as lmp_quant_hessian_accumulate; nsamples is the count BEFORE this batch (call it
 * before the Hessian's accumulate for the same rows, which advances the count). With
 * a = xf (cf = cols) it is the cross statistic C above. */
enum lmp_status lmp_quant_cross_accumulate(float *C, int cf, int cols, const float *A /* (n, cf) */,
                                           const float *X /* (n, cols) */, int n,
                                           int64_t nsamples, struct lmp_err *err);
/* Wt (rows, cols) = W + alpha (W (C - H) + R) (H + damp I)^-1 with damp = o->damp * mean(diag H)
 * (dead columns: diagonal 1, as GPTQ), in double; damping x10 up to o->max_retries times if
 * the solve fails. H: upper triangle read; C full; R (rows, cols) or NULL: an extra target
 * 2/N sum r x^T for outputs that should also move by r (residual correction: the layer
 * adds its output to a stream whose error r = stream_fp - stream it may undo). Wt may not
 * alias W. */
enum lmp_status lmp_quant_fp_target(const float *W, int rows, int cols, const float *H,
                                    const float *C, const float *R, float alpha,
                                    const struct lmp_quant_opts *o, float *Wt,
                                    struct lmp_err *err);

/* ---- GPTQ ----------------------------------------------------------------------------- */

/* Everything GPTQ derives from H alone, shared by the matrices that read the same input
 * (q/k/v, gate/up): processing order, dead columns, damping, and the upper Cholesky
 * factor U of (H_perm + damp I)^-1. */
struct lmp_quant_hinv {
    int cols;
    int act_order, static_groups; /* as prepared (apply checks they match its opts) */
    int32_t *order;   /* (cols) processing order: step i quantizes input column order[i] */
    uint8_t *dead;    /* (cols) natural order: H[i][i] == 0 */
    float *U;         /* (cols, cols) row-major, upper triangle valid: U^T U = (Hp+damp)^-1 */
    float *Hs;        /* (cols, cols) un-damped H in STORAGE order, only with opts->refine */
    double damp;
    int damp_retries;
    int n_dead;
};

/* Builds the factor. H (cols, cols), upper triangle read, not modified. LMP_ERR_ARG for a
 * non-finite H; LMP_ERR_INTERNAL if Cholesky still fails after max_retries x10 dampings. */
enum lmp_status lmp_quant_hinv_prepare(const float *H, int cols, const struct lmp_quant_opts *o,
                                       struct lmp_quant_hinv **out, struct lmp_err *err);
void lmp_quant_hinv_free(struct lmp_quant_hinv *h); /* accepts NULL */

/* GPTQ of W (rows, cols) (not modified) with a prepared factor. out is filled (arrays
 * malloc'd, free with lmp_qtensor_out_free, zeroed on failure); W_hat_out (rows, cols),
 * natural order, may be NULL: the dequantised weights, bit-exact with what a kernel
 * dequantises from out. */
enum lmp_status lmp_quant_gptq_apply(const float *W, int rows, int cols,
                                     const struct lmp_quant_hinv *h,
                                     const struct lmp_quant_opts *o, struct lmp_qtensor_out *out,
                                     float *W_hat_out, struct lmp_err *err);

/* prepare + apply + free for a single matrix. H is read only (upper triangle). */
enum lmp_status lmp_quant_gptq_matrix(const float *W, int rows, int cols, const float *H,
                                      const struct lmp_quant_opts *o, struct lmp_qtensor_out *out,
                                      float *W_hat_out, struct lmp_err *err);

/* Round-to-nearest on the same grid (no H, no error feedback); natural order, no perm. */
enum lmp_status lmp_quant_rtn_matrix(const float *W, int rows, int cols,
                                     const struct lmp_quant_opts *o, struct lmp_qtensor_out *out,
                                     float *W_hat_out, struct lmp_err *err);

#endif
