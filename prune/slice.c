/* Cutting heads and channels out of a layer's matrices, and the least-squares compensation
 * of the consuming matrix (LAPACKE Cholesky solves in double). */
#include "internal.h"

#include <cblas.h>
#include <lapacke.h>
#include <stdlib.h>
#include <string.h>

/* Replaces t's storage by an owned F32 (rows, cols) buffer d. */
static void tensor_replace(struct lmp_tensor *t, float *d, int64_t rows, int64_t cols)
{
    if (t->owned) free(t->data);
    t->data = d;
    t->owned = 1;
    t->type = LMP_TYPE_F32;
    t->shape[0] = rows;
    t->shape[1] = t->n_dims == 2 ? cols : 1;
    t->nbytes = (size_t)rows * (size_t)t->shape[1] * sizeof(float);
}

/* New (n_rows, cols) tensor data from the listed rows of t (F32). */
static float *take_rows(const struct lmp_tensor *t, const int *rows, int n_rows)
{
    const int64_t cols = t->n_dims == 2 ? t->shape[1] : 1;
    float *d = malloc((size_t)n_rows * (size_t)cols * sizeof *d + 1);
    if (!d) return NULL;
    const float *s = t->data;
    for (int i = 0; i < n_rows; i++)
        memcpy(d + (size_t)i * cols, s + (size_t)rows[i] * cols, (size_t)cols * sizeof *d);
    return d;
}

/* New (rows, n_cols) tensor data from the listed columns of t (F32). */
static float *take_cols(const struct lmp_tensor *t, const int *cols, int n_cols)
{
    const int64_t rows = t->shape[0], nc = t->shape[1];
    float *d = malloc((size_t)rows * (size_t)n_cols * sizeof *d + 1);
    if (!d) return NULL;
    const float *s = t->data;
    for (int64_t r = 0; r < rows; r++)
        for (int j = 0; j < n_cols; j++) d[(size_t)r * n_cols + j] = s[(size_t)r * nc + cols[j]];
    return d;
}

/* Keeps the listed rows of t (and of bias b, when present). */
static enum lmp_status keep_rows(struct lmp_tensor *t, const int *rows, int n, struct lmp_err *err)
{
    if (!t) return LMP_OK;
    float *d = take_rows(t, rows, n);
    if (!d) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory slicing %s", t->name);
    tensor_replace(t, d, n, t->shape[1]);
    return LMP_OK;
}

static enum lmp_status keep_cols(struct lmp_tensor *t, const int *cols, int n, struct lmp_err *err)
{
    float *d = take_cols(t, cols, n);
    if (!d) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory slicing %s", t->name);
    tensor_replace(t, d, t->shape[0], n);
    return LMP_OK;
}

enum lmp_status lmp_prune_layer_slice(struct lmp_model *m, int layer,
                                      const unsigned char *keep_heads, const unsigned char *keep_ch,
                                      struct lmp_err *err)
{
    if (!m->layers || layer < 0 || layer >= m->cfg.n_layers)
        return lmp_err_set(err, LMP_ERR_ARG, "prune: layer %d outside the model", layer);
    struct lmp_layer *L = &m->layers[layer];
    struct lmp_layer_cfg *lc = &m->cfg.layer[layer];
    const int hd = m->cfg.head_dim, nh = lc->n_heads, nkv = lc->n_kv_heads, gs = nh / nkv;
    const int F = lc->ffn;
    enum lmp_status st;
    struct lmp_tensor *ts[] = {L->wq, L->wk, L->wv, L->wo, L->bq, L->bk, L->bv,
                               L->w_gate, L->w_up, L->w_down};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
        if (ts[i] && (st = lmp_tensor_to_f32(ts[i], err))) return st;
    /* heads: every kept group keeps the same number */
    int kept_groups = 0, per_group = -1;
    for (int k = 0; keep_heads && k < nkv; k++) {
        int c = 0;
        for (int j = 0; j < gs; j++) c += keep_heads[k * gs + j] != 0;
        if (!c) continue;
        if (per_group >= 0 && c != per_group)
            return lmp_err_set(err, LMP_ERR_ARG,
                               "prune: layer %d: KV groups would keep %d and %d query heads "
                               "(every group must keep the same number)",
                               layer, per_group, c);
        per_group = c;
        kept_groups++;
    }
    if (keep_heads && !kept_groups)
        return lmp_err_set(err, LMP_ERR_ARG, "prune: layer %d: every attention head removed",
                           layer);
    int kept_ch = 0;
    for (int i = 0; keep_ch && i < F; i++) kept_ch += keep_ch[i] != 0;
    if (keep_ch && !kept_ch)
        return lmp_err_set(err, LMP_ERR_ARG, "prune: layer %d: every MLP channel removed", layer);

    int *idx = malloc(((size_t)nh * hd + (size_t)F + 1) * sizeof *idx);
    if (!idx) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    st = LMP_OK;
    if (keep_heads && (kept_groups < nkv || per_group < gs)) {
        /* q rows / o columns of kept heads, group by group; k/v rows of kept groups */
        int nq = 0, nk = 0;
        for (int h = 0; h < nh; h++)
            if (keep_heads[h])
                for (int d = 0; d < hd; d++) idx[nq++] = h * hd + d;
        if (!st) st = keep_rows(L->wq, idx, nq, err);
        if (!st) st = keep_rows(L->bq, idx, nq, err);
        if (!st) st = keep_cols(L->wo, idx, nq, err);
        for (int k = 0; k < nkv; k++) {
            int any = 0;
            for (int j = 0; j < gs; j++) any |= keep_heads[k * gs + j] != 0;
            if (any)
                for (int d = 0; d < hd; d++) idx[nk++] = k * hd + d;
        }
        if (!st) st = keep_rows(L->wk, idx, nk, err);
        if (!st) st = keep_rows(L->bk, idx, nk, err);
        if (!st) st = keep_rows(L->wv, idx, nk, err);
        if (!st) st = keep_rows(L->bv, idx, nk, err);
        if (!st) {
            lc->n_kv_heads = kept_groups;
            lc->n_heads = kept_groups * per_group;
        }
    }
    if (!st && keep_ch && kept_ch < F) {
        int n = 0;
        for (int i = 0; i < F; i++)
            if (keep_ch[i]) idx[n++] = i;
        st = keep_rows(L->w_gate, idx, n, err);
        if (!st) st = keep_rows(L->w_up, idx, n, err);
        if (!st) st = keep_cols(L->w_down, idx, n, err);
        if (!st) lc->ffn = n;
    }
    free(idx);
    return st;
}

/* Cholesky of A (n, n, row-major) + lam I in place; lam raised 10x per failure. */
static enum lmp_status chol_damped(double *A, const double *A0, int n, double lam0, int *retries,
                                   struct lmp_err *err)
{
    double lam = lam0;
    for (int attempt = 0; attempt < 8; attempt++) {
        memcpy(A, A0, (size_t)n * n * sizeof *A);
        for (int i = 0; i < n; i++) A[(size_t)i * n + i] += lam;
        if (LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', n, A, n) == 0) return LMP_OK;
        if (retries) (*retries)++;
        lam = lam > 0 ? lam * 10 : 1e-8;
    }
    return lmp_err_set(err, LMP_ERR_INTERNAL,
                       "prune: activation second moments not positive definite even with "
                       "dampening %g", lam);
}

static double mean_diag(const double *H, int n, const unsigned char *keep)
{
    double s = 0;
    int c = 0;
    for (int i = 0; i < n; i++)
        if (!keep || keep[i]) s += H[(size_t)i * n + i], c++;
    return c ? s / c : 0;
}

enum lmp_status lmp_prune_inverse(double *H, int n, double damp, int *retries, struct lmp_err *err)
{
    double *A0 = malloc((size_t)n * n * sizeof *A0);
    if (!A0) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    memcpy(A0, H, (size_t)n * n * sizeof *A0);
    double md = mean_diag(H, n, NULL);
    enum lmp_status st = chol_damped(H, A0, n, damp * (md > 0 ? md : 1), retries, err);
    free(A0);
    if (st) return st;
    if (LAPACKE_dpotri(LAPACK_ROW_MAJOR, 'L', n, H, n))
        return lmp_err_set(err, LMP_ERR_INTERNAL, "prune: inverse of the second moments failed");
    for (int i = 0; i < n; i++) /* mirror the lower triangle */
        for (int j = i + 1; j < n; j++) H[(size_t)i * n + j] = H[(size_t)j * n + i];
    return LMP_OK;
}

enum lmp_status lmp_prune_compensate(float *W, int rows, int cols, const double *H,
                                     const unsigned char *keep, double damp, int *retries,
                                     struct lmp_err *err)
{
    int nk = 0;
    for (int j = 0; j < cols; j++) nk += keep[j] != 0;
    const int ns = cols - nk;
    if (!ns || !nk) return LMP_OK;
    int *K = malloc((size_t)cols * sizeof *K), *S = K + nk;
    double *A0 = malloc((size_t)nk * nk * sizeof *A0), *A = malloc((size_t)nk * nk * sizeof *A);
    double *X = malloc((size_t)nk * ns * sizeof *X);
    double *WS = malloc((size_t)rows * ns * sizeof *WS), *WK = malloc((size_t)rows * nk * sizeof *WK);
    enum lmp_status st = LMP_OK;
    if (!K || !A0 || !A || !X || !WS || !WK) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory for compensation");
        goto done;
    }
    for (int j = 0, a = 0, b = 0; j < cols; j++) {
        if (keep[j]) K[a++] = j;
        else S[b++] = j;
    }
    for (int a = 0; a < nk; a++) {
        for (int b = 0; b < nk; b++) A0[(size_t)a * nk + b] = H[(size_t)K[a] * cols + K[b]];
        for (int b = 0; b < ns; b++) X[(size_t)a * ns + b] = H[(size_t)K[a] * cols + S[b]];
    }
    double md = mean_diag(H, cols, keep);
    if ((st = chol_damped(A, A0, nk, damp * (md > 0 ? md : 1), retries, err))) goto done;
    /* X = (H_KK + lam I)^-1 H_KS */
    if (LAPACKE_dpotrs(LAPACK_ROW_MAJOR, 'L', nk, ns, A, nk, X, ns)) {
        st = lmp_err_set(err, LMP_ERR_INTERNAL, "prune: compensation solve failed");
        goto done;
    }
    for (int r = 0; r < rows; r++) {
        for (int b = 0; b < ns; b++) WS[(size_t)r * ns + b] = W[(size_t)r * cols + S[b]];
        for (int a = 0; a < nk; a++) WK[(size_t)r * nk + a] = W[(size_t)r * cols + K[a]];
    }
    /* W_K += W_S X^T */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, nk, ns, 1.0, WS, ns, X, ns, 1.0,
                WK, nk);
    for (int r = 0; r < rows; r++)
        for (int a = 0; a < nk; a++) W[(size_t)r * cols + K[a]] = (float)WK[(size_t)r * nk + a];
done:
    free(K), free(A0), free(A), free(X), free(WS), free(WK);
    return st;
}
