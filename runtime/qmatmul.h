/* Matrix products with packed integer weights (Q2/Q3/Q4/Q8, formats/qpack.h), fused with
 * the dequantisation so W is never materialised in fp32 as a whole:
 *
 *   lmp_qmatvec: y (rows) = W x (cols)
 *   lmp_qgemm:   Y (n, rows) = X (n, cols) W^T      (activations row-major, one row per token)
 *
 * w = (q - zero) * scale per group, scales/zeros fp16. When the view has a perm (act-order
 * without static groups) storage column j holds input column perm[j] and groups run over
 * storage columns: the matvec gathers x once (xp[j] = x[perm[j]]) and then runs the same
 * fused kernel as without a perm; the GEMM scatters each dequantised row back to natural
 * column order inside its tile instead (so X is never copied). Act-order with static groups
 * stores codes in natural order and needs no perm at all.
 *
 * Each has a scalar *_ref (the specification: per-element dequantisation, double
 * accumulation, single thread) and the fast path of the same signature: AVX2 + OpenMP over
 * rows for the matvec; for the GEMM a tile of rows dequantised (AVX2) then one OpenBLAS
 * sgemm per tile (n <= 2 goes through the matvec). Without __AVX2__ the fast functions use
 * portable loops.
 *
 * scratch: caller-provided, lmp_qmatmul_scratch_floats(w, n) floats (so a forward never
 * allocates), used by every variant. The view must have been built by lmp_qview_init (all
 * sizes and the perm checked); these functions do not fail.
 */
#ifndef LMP_QMATMUL_H
#define LMP_QMATMUL_H

#include "formats/qpack.h"

#include <stddef.h>
#include <stdint.h>

/* floats of scratch any of the functions below needs for n input rows */
size_t lmp_qmatmul_scratch_floats(const struct lmp_qview *w, int64_t n);

void lmp_qmatvec_ref(const struct lmp_qview *w, const float *x /* (cols) */,
                     float *y /* (rows) */, float *scratch);
void lmp_qmatvec(const struct lmp_qview *w, const float *x /* (cols) */, float *y /* (rows) */,
                 float *scratch);

void lmp_qgemm_ref(const struct lmp_qview *w, const float *X /* (n, cols) */, int64_t n,
                   float *Y /* (n, rows) */, float *scratch);
void lmp_qgemm(const struct lmp_qview *w, const float *X /* (n, cols) */, int64_t n,
               float *Y /* (n, rows) */, float *scratch);

/* 1 when lmp_qmatvec/lmp_qgemm were compiled with the AVX2 kernels. */
int lmp_qmatmul_have_avx2(void);

#endif
