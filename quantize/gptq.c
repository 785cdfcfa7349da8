/* GPTQ on one weight matrix: the Hessian running average, the damped inverse-Hessian
 * Cholesky factor, the blocked column-by-column quantization with error feedback and lazy
 * batch updates (the reference GPTQ.fasterquant), and an optional H-weighted refit of the
 * group scales.
 *
 * Where this differs from the reference's arithmetic (not its result):
 *   - The upper Cholesky factor U of Hp^-1 (Hp = damped H in processing order) is computed
 *     in double as U = J L^-1 J with L = chol_lower(J Hp J) and J the order reversal
 *     (dpotrf + dtrtri), instead of chol -> cholesky_inverse -> chol(upper) in float32.
 *     It is the same unique factor (positive diagonal), at half the flops and without
 *     forming Hp^-1. U is then rounded to float for the float32 sweep.
 *   - Each block's columns are swept row by row (rows are independent inside a block), so
 *     a row's block segment stays in cache; OpenMP splits the rows, OpenBLAS does the lazy
 *     update W[:, i2:] -= Err @ U[i1:i2, i2:] with one sgemm per block.
 *   - Unless ref_quirks is set, a block is cut short where a group would start inside it
 *     and run past its end, so that every group's params are computed from fully updated
 *     weights (quant.h, ref_quirks (1)); with group | block or block | group (e.g. the usual
 *     128/128) nothing changes. */
#include "quant.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- Hessian -------------------------------------------------------------------------- */

enum lmp_status lmp_quant_hessian_accumulate(float *H, int cols, const float *X, int n,
                                             int64_t *nsamples, struct lmp_err *err)
{
    if (!H || !nsamples || cols <= 0 || n < 0 || *nsamples < 0 || (n > 0 && !X))
        return lmp_err_set(err, LMP_ERR_ARG, "hessian: bad arguments (cols %d, n %d)", cols, n);
    if (n == 0) return LMP_OK;
    for (size_t i = 0; i < (size_t)n * (size_t)cols; i++)
        if (!isfinite(X[i]))
            return lmp_err_set(err, LMP_ERR_ARG,
                               "hessian: non-finite input %g at sample %zu, column %zu",
                               (double)X[i], i / (size_t)cols, i % (size_t)cols);
    int64_t n0 = *nsamples, n1 = n0 + n;
    float beta = (float)((double)n0 / (double)n1);
    float alpha = (float)(2.0 / (double)n1);
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, cols, n, alpha, X, cols, beta, H, cols);
    *nsamples = n1;
    return LMP_OK;
}

void lmp_quant_hessian_finalize(float *H, int cols)
{
    for (size_t i = 0; i < (size_t)cols; i++)
        for (size_t j = i + 1; j < (size_t)cols; j++) H[j * cols + i] = H[i * cols + j];
}

enum lmp_status lmp_quant_cross_accumulate(float *C, int cf, int cols, const float *A,
                                           const float *X, int n, int64_t nsamples,
                                           struct lmp_err *err)
{
    if (!C || cf <= 0 || cols <= 0 || n < 0 || nsamples < 0 || (n > 0 && (!X || !A)))
        return lmp_err_set(err, LMP_ERR_ARG, "cross: bad arguments (%d x %d, n %d)", cf, cols, n);
    if (n == 0) return LMP_OK;
    for (size_t i = 0; i < (size_t)n * (size_t)cf; i++)
        if (!isfinite(A[i]))
            return lmp_err_set(err, LMP_ERR_ARG,
                               "cross: non-finite reference input %g at sample %zu, column %zu",
                               (double)A[i], i / (size_t)cf, i % (size_t)cf);
    int64_t n1 = nsamples + n;
    float beta = (float)((double)nsamples / (double)n1);
    float alpha = (float)(2.0 / (double)n1);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cf, cols, n, alpha, A, cf, X, cols, beta,
                C, cols);
    return LMP_OK;
}

enum lmp_status lmp_quant_fp_target(const float *W, int rows, int cols, const float *H,
                                    const float *C, const float *Rs, float alpha,
                                    const struct lmp_quant_opts *o, float *Wt,
                                    struct lmp_err *err)
{
    enum lmp_status st = lmp_quant_opts_check(o, rows, cols, err);
    if (st) return st;
    if (!W || !H || !C || !Wt || !isfinite(alpha))
        return lmp_err_set(err, LMP_ERR_ARG, "fp target: bad arguments");
    const size_t n = (size_t)cols, R = (size_t)rows;
    double *A = malloc(n * n * sizeof *A), *Dm = malloc(n * n * sizeof *Dm);
    double *B = malloc(R * n * sizeof *B);
    if (!A || !Dm || !B) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "fp target: out of memory for %d columns", cols);
        goto done;
    }
    double mean = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = H[i * n + i];
        mean += d == 0.0 ? 1.0 : d;
        for (size_t j = 0; j < n; j++) {
            double h = j >= i ? H[i * n + j] : H[j * n + i];
            if (!isfinite(h) || !isfinite(C[i * n + j])) {
                st = lmp_err_set(err, LMP_ERR_ARG, "fp target: non-finite statistics at (%zu, %zu)",
                                 i, j);
                goto done;
            }
            Dm[i * n + j] = (double)C[i * n + j] - h;
        }
    }
    mean /= (double)n;
    /* B (rows, cols) = W D; as a column-major (cols, rows) matrix it is (W D)^T, the
     * right-hand sides of (H + damp I) Z^T = (W D)^T */
    {
        double *Wd = malloc(R * n * sizeof *Wd);
        if (!Wd) {
            st = lmp_err_set(err, LMP_ERR_NOMEM, "fp target: out of memory");
            goto done;
        }
        for (size_t i = 0; i < R * n; i++) Wd[i] = W[i];
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, cols, 1.0, Wd, cols, Dm,
                    cols, 0.0, B, cols);
        free(Wd);
        for (size_t i = 0; Rs && i < R * n; i++) {
            if (!isfinite(Rs[i])) {
                st = lmp_err_set(err, LMP_ERR_ARG, "fp target: non-finite residual statistics");
                goto done;
            }
            B[i] += Rs[i];
        }
    }
    double damp = (double)o->damp * mean;
    for (int attempt = 0;; attempt++) {
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < n; j++) {
                double h = j >= i ? H[i * n + j] : H[j * n + i];
                if (i == j && h == 0.0) h = 1.0; /* dead input */
                A[i * n + j] = h + (i == j ? damp : 0.0);
            }
        lapack_int info = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', (lapack_int)n, A, (lapack_int)n);
        if (info == 0) {
            info = LAPACKE_dpotrs(LAPACK_COL_MAJOR, 'U', (lapack_int)n, (lapack_int)R, A,
                                  (lapack_int)n, B, (lapack_int)n);
            if (info == 0) break;
        }
        if (info < 0 || attempt >= o->max_retries) {
            st = lmp_err_set(err, LMP_ERR_INTERNAL,
                             "fp target: Hessian (%d columns) not positive definite even with "
                             "damping %g",
                             cols, damp);
            goto done;
        }
        damp = damp > 0.0 ? damp * 10.0 : 0.01 * mean;
    }
    for (size_t i = 0; i < R * n; i++) {
        double v = (double)W[i] + (double)alpha * B[i];
        if (!isfinite(v)) {
            st = lmp_err_set(err, LMP_ERR_ARG, "fp target: corrected weight is not finite");
            goto done;
        }
        Wt[i] = (float)v;
    }
done:
    free(A);
    free(Dm);
    free(B);
    return st;
}

/* ---- inverse-Hessian factor -------------------------------------------------------------- */

struct diag_key {
    float d;
    int i;
};

/* decreasing diagonal, ties by increasing index: a stable descending sort */
static int cmp_diag_desc(const void *a, const void *b)
{
    const struct diag_key *x = a, *y = b;
    if (x->d > y->d) return -1;
    if (x->d < y->d) return 1;
    return (x->i > y->i) - (x->i < y->i);
}

void lmp_quant_hinv_free(struct lmp_quant_hinv *h)
{
    if (!h) return;
    free(h->order);
    free(h->dead);
    free(h->U);
    free(h->Hs);
    free(h);
}

enum lmp_status lmp_quant_hinv_prepare(const float *H, int cols, const struct lmp_quant_opts *o,
                                       struct lmp_quant_hinv **out, struct lmp_err *err)
{
    *out = NULL;
    enum lmp_status st = lmp_quant_opts_check(o, 1, cols, err);
    if (st) return st;
    if (!H) return lmp_err_set(err, LMP_ERR_ARG, "gptq: no Hessian");
    size_t n = (size_t)cols;
    if (n > SIZE_MAX / 8 / n)
        return lmp_err_set(err, LMP_ERR_ARG, "gptq: %d columns is too many", cols);
    for (size_t i = 0; i < n; i++)
        for (size_t j = i; j < n; j++)
            if (!isfinite(H[i * n + j]))
                return lmp_err_set(err, LMP_ERR_ARG, "gptq: Hessian entry (%zu, %zu) is %g", i, j,
                                   (double)H[i * n + j]);

    struct lmp_quant_hinv *h = calloc(1, sizeof *h);
    double *A = NULL;
    float *Hf = NULL;
    struct diag_key *keys = NULL;
    if (!h) return lmp_err_set(err, LMP_ERR_NOMEM, "gptq: out of memory");
    h->cols = cols;
    h->act_order = o->act_order;
    h->static_groups = o->static_groups;
    h->order = malloc(n * sizeof *h->order);
    h->dead = calloc(n, 1);
    Hf = malloc(n * n * sizeof *Hf);
    A = malloc(n * n * sizeof *A);
    keys = malloc(n * sizeof *keys);
    if (!h->order || !h->dead || !Hf || !A || !keys) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "gptq: out of memory for a %d-column Hessian", cols);
        goto fail;
    }

    /* Hf: H mirrored to a full symmetric matrix, in 64x64 tiles so both the reads of the
     * upper triangle and the transposed writes stay in cache */
    for (size_t i0 = 0; i0 < n; i0 += 64)
        for (size_t j0 = i0; j0 < n; j0 += 64)
            for (size_t i = i0; i < i0 + 64 && i < n; i++)
                for (size_t j = j0 > i ? j0 : i; j < j0 + 64 && j < n; j++) {
                    float v = H[i * n + j];
                    Hf[i * n + j] = v;
                    Hf[j * n + i] = v;
                }
    /* dead inputs (never active): their H diagonal becomes 1, their weights 0 */
    double mean = 0.0;
    for (size_t i = 0; i < n; i++) {
        float d = Hf[i * n + i];
        if (d == 0.0f) {
            h->dead[i] = 1;
            h->n_dead++;
            d = Hf[i * n + i] = 1.0f;
        }
        keys[i].d = d;
        keys[i].i = (int)i;
        mean += d;
    }
    mean /= (double)n;
    if (o->act_order) qsort(keys, n, sizeof *keys, cmp_diag_desc);
    for (size_t i = 0; i < n; i++) h->order[i] = keys[i].i;

    /* A = J Hp J + damp I with Hp = H[order][:, order]: A's row a is Hp's row n-1-a, read
     * from one row of Hf. Only the lower triangle is filled. */
    double damp = (double)o->damp * mean;
    for (int attempt = 0;; attempt++) {
        for (size_t a = 0; a < n; a++) {
            const float *hrow = Hf + (size_t)h->order[n - 1 - a] * n;
            double *arow = A + a * n;
            for (size_t b = 0; b <= a; b++) arow[b] = (double)hrow[h->order[n - 1 - b]];
            arow[a] += damp;
        }
        /* A row-major lower triangle is the column-major upper one: calling the column-major
         * routines with 'U' avoids LAPACKE's row-major transposed copies (2x memory). */
        lapack_int info = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', (lapack_int)n, A, (lapack_int)n);
        if (info == 0)
            info = LAPACKE_dtrtri(LAPACK_COL_MAJOR, 'U', 'N', (lapack_int)n, A, (lapack_int)n);
        if (info < 0) {
            st = lmp_err_set(err, LMP_ERR_INTERNAL, "gptq: LAPACK argument error %d", (int)info);
            goto fail;
        }
        if (info == 0) break;
        if (attempt >= o->max_retries || !(mean > 0.0)) {
            st = lmp_err_set(err, LMP_ERR_INTERNAL,
                             "gptq: Hessian (%d columns) not positive definite even with "
                             "damping %g (%d retries)",
                             cols, damp, attempt);
            goto fail;
        }
        damp = damp > 0.0 ? damp * 10.0 : 0.01 * mean;
        h->damp_retries++;
    }

    if (o->refine) {
        /* un-damped H in storage order (permuted only when the perm is stored); dead
         * diagonals are 1 here, which changes nothing: a dead column's code is its zero */
        if (o->act_order && !o->static_groups) {
            h->Hs = malloc(n * n * sizeof *h->Hs);
            if (!h->Hs) {
                st = lmp_err_set(err, LMP_ERR_NOMEM,
                                 "gptq: out of memory for a %d-column Hessian", cols);
                goto fail;
            }
            for (size_t i = 0; i < n; i++) {
                const float *hrow = Hf + (size_t)h->order[i] * n;
                for (size_t j = 0; j < n; j++) h->Hs[i * n + j] = hrow[h->order[j]];
            }
        } else {
            h->Hs = Hf;
            Hf = NULL;
        }
    }
    h->U = Hf ? Hf : malloc(n * n * sizeof *h->U); /* reuse Hf's memory when possible */
    Hf = NULL;
    if (!h->U) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "gptq: out of memory for a %d-column Hessian", cols);
        goto fail;
    }
    h->damp = damp;
    /* U = J L^-1 J: U[i][j] = Linv[n-1-i][n-1-j], upper triangular */
    for (size_t i = 0; i < n; i++) {
        float *u = h->U + i * n;
        memset(u, 0, i * sizeof *u);
        for (size_t j = i; j < n; j++) u[j] = (float)A[(n - 1 - i) * n + (n - 1 - j)];
    }
    free(A);
    free(keys);
    *out = h;
    return LMP_OK;
fail:
    free(A);
    free(Hf);
    free(keys);
    lmp_quant_hinv_free(h);
    return st;
}

/* ---- the sweep ----------------------------------------------------------------------- */

/* y -= a x (the in-block error feedback); omp simd: -O2's cheap cost model would not
 * vectorise it */
static inline void axpy_neg(float *restrict y, const float *restrict x, float a, int n)
{
#pragma omp simd
    for (int j = 0; j < n; j++) y[j] -= a * x[j];
}

static enum lmp_status refine_scales(const float *W, int rows, int cols,
                                     const struct lmp_quant_hinv *h, const struct lmp_quant_opts *o,
                                     struct lmp_qtensor_out *out, float *Wst, struct lmp_err *err);

enum lmp_status lmp_quant_gptq_apply(const float *W, int rows, int cols,
                                     const struct lmp_quant_hinv *h,
                                     const struct lmp_quant_opts *o, struct lmp_qtensor_out *out,
                                     float *W_hat_out, struct lmp_err *err)
{
    memset(out, 0, sizeof *out);
    enum lmp_status st = lmp_quant_opts_check(o, rows, cols, err);
    if (st) return st;
    if (!W || !h || h->cols != cols || h->act_order != o->act_order ||
        h->static_groups != o->static_groups || (o->refine && !h->Hs))
        return lmp_err_set(err, LMP_ERR_ARG,
                           "gptq: factor prepared for %d columns / other options, matrix has %d",
                           h ? h->cols : 0, cols);
    const size_t n = (size_t)cols, R = (size_t)rows;
    const int group = o->group && o->group < cols ? o->group : cols;
    const int ng = (cols + group - 1) / group; /* the last group may be shorter */
    const int maxq = (1 << o->bits) - 1;
    const int block = o->block;
    const int store_perm = o->act_order && !o->static_groups;
    const int quirks = o->ref_quirks;
    const int32_t *order = h->order;
    for (size_t i = 0; i < R * n; i++)
        if (!isfinite(W[i]))
            return lmp_err_set(err, LMP_ERR_ARG, "gptq: weight (%zu, %zu) is %g", i / n, i % n,
                               (double)W[i]);

    out->rows = rows;
    out->cols = cols;
    out->bits = o->bits;
    out->group = group;
    out->sym = o->sym;
    out->n_groups = ng;
    out->damp = h->damp;
    out->damp_retries = h->damp_retries;
    out->n_dead = h->n_dead;
    out->codes = malloc(R * n);
    out->scales = malloc(R * (size_t)ng * 2);
    out->zeros = malloc(R * (size_t)ng * 2);
    if (store_perm) out->perm = malloc(n * sizeof *out->perm);
    size_t snap_w = (quirks && group < cols) ? (size_t)block + (size_t)group : 0;
    float *Wp = malloc(R * n * sizeof *Wp);
    float *Err = malloc(R * (size_t)block * sizeof *Err);
    float *Snap = snap_w ? malloc(R * snap_w * sizeof *Snap) : NULL;
    if (!out->codes || !out->scales || !out->zeros || (store_perm && !out->perm) || !Wp || !Err ||
        (snap_w && !Snap)) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "gptq: out of memory for a %dx%d matrix", rows,
                         cols);
        goto done;
    }
    if (store_perm) memcpy(out->perm, order, n * sizeof *order);

    /* Wp: W in processing order, dead columns zeroed */
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++)
        for (size_t i = 0; i < n; i++) {
            size_t c = (size_t)order[i];
            Wp[(size_t)r * n + i] = h->dead[c] ? 0.0f : W[(size_t)r * n + c];
        }

    int bad_row = -1;
    struct lmp_err row_err = {{0}};
    /* params fixed up front: static groups (from the original W, dead columns zeroed, natural
     * groups), or the reference's per-channel params taken before dead columns are zeroed */
    if (o->static_groups || (quirks && group == cols)) {
#pragma omp parallel
        {
            float *buf = malloc((size_t)group * sizeof *buf);
#pragma omp for schedule(static)
            for (int r = 0; r < rows; r++) {
                for (int g = 0; g < ng && buf; g++) {
                    const float *src = W + (size_t)r * n + (size_t)g * group;
                    int glen = cols - g * group < group ? cols - g * group : group;
                    for (int j = 0; j < glen; j++)
                        buf[j] = (o->static_groups && h->dead[(size_t)g * group + j]) ? 0.0f : src[j];
                    struct lmp_err e1;
                    if (lmp_quant_grid_params(buf, glen, o, &out->scales[(size_t)r * ng + g],
                                              &out->zeros[(size_t)r * ng + g], &e1)) {
#pragma omp critical
                        if (bad_row < 0) {
                            bad_row = r;
                            row_err = e1;
                        }
                        break;
                    }
                }
            }
            if (!buf) {
#pragma omp critical
                bad_row = -2;
            }
            free(buf);
        }
    }
    const int fixed_params = o->static_groups || (quirks && group == cols);

    double loss = 0.0;
    int i1 = 0;
    while (i1 < cols && bad_row == -1) {
        int i2 = i1 + block < cols ? i1 + block : cols;
        if (!quirks && !fixed_params) {
            /* cut the block where a group would start inside it and run past its end */
            for (int g = (i1 / group + 1) * group; g < i2; g += group)
                if (g + group > i2 && i2 < cols) {
                    i2 = g;
                    break;
                }
        }
        const int bs = i2 - i1;
#pragma omp parallel for schedule(static) reduction(+ : loss)
        for (int r = 0; r < rows; r++) {
            float *w = Wp + (size_t)r * n;
            float *e = Err + (size_t)r * block;
            float *snap = Snap ? Snap + (size_t)r * snap_w : NULL;
            if (snap) {
                size_t end = (size_t)i2 + (size_t)group < n ? (size_t)i2 + (size_t)group : n;
                memcpy(snap, w + i1, (end - (size_t)i1) * sizeof *snap);
            }
            double rloss = 0.0;
            float s = 0.0f, z = 0.0f;
            int cur_g = -1;
            for (int i = i1; i < i2; i++) {
                int gi = o->static_groups ? order[i] / group : i / group;
                if (!fixed_params && i % group == 0) {
                    const float *src = (snap && i > i1) ? snap + (i - i1) : w + i;
                    int glen = cols - i < group ? cols - i : group;
                    struct lmp_err e1;
                    if (lmp_quant_grid_params(src, glen, o, &out->scales[(size_t)r * ng + gi],
                                              &out->zeros[(size_t)r * ng + gi], &e1)) {
#pragma omp critical
                        if (bad_row < 0 || r < bad_row) {
                            bad_row = r;
                            row_err = e1;
                        }
                        break;
                    }
                    cur_g = -1;
                }
                if (gi != cur_g) {
                    s = lmp_f16_to_f32(out->scales[(size_t)r * ng + gi]);
                    z = lmp_f16_to_f32(out->zeros[(size_t)r * ng + gi]);
                    cur_g = gi;
                }
                float wi = w[i];
                int q = lmp_quant_code(wi, s, z, maxq);
                float wq = s * ((float)q - z);
                out->codes[(size_t)r * n + (size_t)(store_perm ? i : order[i])] = (uint8_t)q;
                const float *u = h->U + (size_t)i * n;
                float d = u[i];
                float e1 = (wi - wq) / d;
                rloss += (double)e1 * (double)e1 / 2.0;
                axpy_neg(w + i + 1, u + i + 1, e1, i2 - i - 1);
                e[i - i1] = e1;
            }
            loss += rloss;
        }
        if (bad_row != -1) break;
        if (i2 < cols)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols - i2, bs, -1.0f, Err,
                        block, h->U + (size_t)i1 * n + i2, cols, 1.0f, Wp + i2, cols);
        i1 = i2;
    }
    if (bad_row == -2) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "gptq: out of memory");
        goto done;
    }
    if (bad_row >= 0) {
        st = lmp_err_set(err, LMP_ERR_ARG, "gptq: row %d: %s", bad_row, row_err.msg);
        goto done;
    }
    out->loss = loss;

    if (o->refine && (st = refine_scales(W, rows, cols, h, o, out, Wp, err))) goto done;

    if (W_hat_out) {
#pragma omp parallel for schedule(static)
        for (int r = 0; r < rows; r++)
            for (size_t j = 0; j < n; j++) {
                size_t g = j / (size_t)group;
                float sg = lmp_f16_to_f32(out->scales[(size_t)r * ng + g]);
                float zg = lmp_f16_to_f32(out->zeros[(size_t)r * ng + g]);
                size_t c = store_perm ? (size_t)order[j] : j;
                W_hat_out[(size_t)r * n + c] = sg * ((float)out->codes[(size_t)r * n + j] - zg);
            }
    }
done:
    free(Wp);
    free(Err);
    free(Snap);
    if (st) lmp_qtensor_out_free(out);
    return st;
}

/* Refit of the scales with codes and zeros fixed. Per row, w_hat = S D with D[c] = q_c - z_g
 * and one scale per group; minimising (w - w_hat)^T H (w - w_hat) over the scales s is the
 * normal equations M s = b with M[g][g'] = D_g^T H_gg' D_g' and b[g] = D_g^T (H w)_g.
 * Computed in storage order (where groups are contiguous) for chunks of rows: for each
 * group g one sgemm P = D[:, g] H[g, :], then M[g][:] and b[g] are row-wise reductions of
 * P against D and w. Wst is scratch (rows, cols). */
static enum lmp_status refine_scales(const float *W, int rows, int cols,
                                     const struct lmp_quant_hinv *h, const struct lmp_quant_opts *o,
                                     struct lmp_qtensor_out *out, float *Wst, struct lmp_err *err)
{
    const size_t n = (size_t)cols, R = (size_t)rows;
    const int group = (int)out->group, ng = (int)out->n_groups;
    const int store_perm = out->perm != NULL;
    size_t chunk = (size_t)(8u << 20) / ((size_t)ng * (size_t)ng);
    if (chunk > (size_t)(16u << 20) / n) chunk = (size_t)(16u << 20) / n;
    if (chunk < 1) chunk = 1;
    if (chunk > R) chunk = R;
    float *D = malloc(R * n * sizeof *D);
    float *P = malloc(chunk * n * sizeof *P);
    double *M = malloc(chunk * (size_t)ng * (size_t)ng * sizeof *M);
    double *b = malloc(chunk * (size_t)ng * sizeof *b);
    double *Mc = malloc((size_t)ng * (size_t)ng * sizeof *Mc);
    double *x = malloc((size_t)ng * sizeof *x);
    uint16_t *hx = malloc((size_t)ng * sizeof *hx);
    enum lmp_status st = LMP_OK;
    if (!D || !P || !M || !b || !Mc || !x || !hx) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "gptq: out of memory for the scale refit");
        goto done;
    }
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++)
        for (size_t j = 0; j < n; j++) {
            size_t c = store_perm ? (size_t)h->order[j] : j;
            float zg = lmp_f16_to_f32(out->zeros[(size_t)r * ng + j / (size_t)group]);
            D[(size_t)r * n + j] = (float)out->codes[(size_t)r * n + j] - zg;
            Wst[(size_t)r * n + j] = h->dead[c] ? 0.0f : W[(size_t)r * n + c];
        }
    for (size_t r0 = 0; r0 < R; r0 += chunk) {
        size_t nr = R - r0 < chunk ? R - r0 : chunk;
        for (int g = 0; g < ng; g++) {
            int glen = cols - g * group < group ? cols - g * group : group;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nr, cols, glen, 1.0f,
                        D + r0 * n + (size_t)g * group, cols, h->Hs + (size_t)g * group * n, cols,
                        0.0f, P, cols);
#pragma omp parallel for schedule(static)
            for (size_t rr = 0; rr < nr; rr++) {
                const float *p = P + rr * n, *d = D + (r0 + rr) * n, *w = Wst + (r0 + rr) * n;
                double *m = M + (rr * ng + (size_t)g) * ng;
                double bw = 0.0;
                for (int g2 = 0; g2 < ng; g2++) {
                    double acc = 0.0;
                    int j1 = (g2 + 1) * group < cols ? (g2 + 1) * group : cols;
#pragma omp simd reduction(+ : acc, bw)
                    for (int j = g2 * group; j < j1; j++) {
                        acc += (double)p[j] * d[j];
                        bw += (double)p[j] * w[j];
                    }
                    m[g2] = acc;
                }
                b[rr * ng + (size_t)g] = bw;
            }
        }
        for (size_t rr = 0; rr < nr; rr++) {
            const double *m = M + rr * ng * (size_t)ng, *bb = b + rr * ng;
            uint16_t *sc = out->scales + (r0 + rr) * (size_t)ng;
            /* symmetrise (float sgemm rounding) and add a tiny ridge for empty groups */
            double tr = 0.0;
            for (int g = 0; g < ng; g++) tr += m[(size_t)g * ng + g];
            double ridge = 1e-9 * (tr > 0.0 ? tr / ng : 1.0) + 1e-300;
            for (int g = 0; g < ng; g++)
                for (int g2 = 0; g2 < ng; g2++)
                    Mc[(size_t)g * ng + g2] =
                        0.5 * (m[(size_t)g * ng + g2] + m[(size_t)g2 * ng + g]) + (g == g2 ? ridge : 0.0);
            memcpy(x, bb, (size_t)ng * sizeof *x);
            if (LAPACKE_dposv(LAPACK_COL_MAJOR, 'U', ng, 1, Mc, ng, x, ng) != 0) continue;
            /* f(s) = s^T M s - 2 s^T b (+ const): keep the fp16-rounded refit if it is lower */
            double f_old = 0.0, f_new = 0.0;
            int ok = 1;
            for (int g = 0; g < ng && ok; g++) {
                uint16_t hnew = lmp_f32_to_f16((float)x[g]);
                if (!isfinite(x[g]) || (hnew & 0x7fff) == 0 || (hnew & 0x7fff) >= 0x7c00) ok = 0;
            }
            if (!ok) continue;
            /* the refit as stored: fp16, on the Q4_1-exact set with gguf_exact (quant.h) */
            const uint16_t *zr = out->zeros + (r0 + rr) * (size_t)ng;
            for (int g = 0; g < ng; g++) {
                hx[g] = lmp_f32_to_f16((float)x[g]);
                if (o->gguf_exact && !o->sym)
                    hx[g] = lmp_quant_q41_scale(hx[g], lmp_f16_to_f32(zr[g]), (1 << o->bits) - 1);
            }
            for (int g = 0; g < ng; g++) {
                double so = lmp_f16_to_f32(sc[g]), sn = lmp_f16_to_f32(hx[g]);
                double mo = 0.0, mn = 0.0;
                for (int g2 = 0; g2 < ng; g2++) {
                    mo += m[(size_t)g * ng + g2] * lmp_f16_to_f32(sc[g2]);
                    mn += m[(size_t)g * ng + g2] * lmp_f16_to_f32(hx[g2]);
                }
                f_old += so * mo - 2.0 * so * bb[g];
                f_new += sn * mn - 2.0 * sn * bb[g];
            }
            if (f_new < f_old) {
                memcpy(sc, hx, (size_t)ng * sizeof *sc);
                out->refined_rows++;
            }
        }
    }
done:
    free(hx);
    free(D);
    free(P);
    free(M);
    free(b);
    free(Mc);
    free(x);
    return st;
}

enum lmp_status lmp_quant_gptq_matrix(const float *W, int rows, int cols, const float *H,
                                      const struct lmp_quant_opts *o, struct lmp_qtensor_out *out,
                                      float *W_hat_out, struct lmp_err *err)
{
    memset(out, 0, sizeof *out);
    struct lmp_quant_hinv *h = NULL;
    enum lmp_status st = lmp_quant_opts_check(o, rows, cols, err);
    if (st) return st;
    if ((st = lmp_quant_hinv_prepare(H, cols, o, &h, err))) return st;
    st = lmp_quant_gptq_apply(W, rows, cols, h, o, out, W_hat_out, err);
    lmp_quant_hinv_free(h);
    return st;
}
