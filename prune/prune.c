/* lmp_prune_model: importance scores (weights, gradients of the calibration loss through
 * runtime/backward.h, or activation second moments through the runtime's hooks), selection
 * of the groups to remove (per layer or across layers), compensation and slicing.
 *
 * Activation statistics are gathered layer by layer: the calibration windows' hidden states
 * are kept, each layer is run on them with a hook that accumulates X^T X of the inputs of wo
 * and w_down, the layer is pruned (and compensated), and the pruned layer is run again to
 * give the next layer its inputs. Windows run in parallel, one runtime state per thread;
 * their contributions are added in window order, so results do not depend on the thread
 * count. */
#include "internal.h"
#include "runtime/backward.h"
#include "runtime/runtime.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

struct lscore {
    double *head;  /* (n_heads) */
    double *group; /* (n_kv_heads) */
    double *ch;    /* (ffn) */
};

struct ctx {
    struct lmp_model *m;
    const struct lmp_prune_opts *o;
    struct lmp_prune_layer_plan *plan; /* (n_layers) */
    int first, last, heads, mlp, n_thr, retries;
    struct lscore *sc;      /* (n_layers), filled for selected layers */
    unsigned char **keep_h; /* (n_layers) (n_heads) flags, or NULL when undecided */
    unsigned char **keep_c; /* (n_layers) (ffn) flags */
};

/* ---- scores from weights and gradients ------------------------------------------------ */

/* Sum over n values at stride of the importance of w given the mean gradient g and mean
 * squared gradient g2 (NULL for magnitude). taylorvec sums the signed products. */
static double esum(enum lmp_prune_importance imp, const float *w, const float *g, const float *g2,
                   long n, long stride)
{
    double s = 0;
    for (long i = 0; i < n; i++) {
        double x = w[i * stride];
        switch (imp) {
        case LMP_PRUNE_TAYLOR1: s += fabs(x * g[i * stride]); break;
        case LMP_PRUNE_TAYLOR2: s += 0.5 * x * x * g2[i * stride]; break;
        case LMP_PRUNE_TAYLORVEC: s += x * g[i * stride]; break;
        default: s += fabs(x); break;
        }
    }
    return s;
}

static void weight_scores(struct ctx *c, int l, const struct lmp_rt_grads *g,
                          const struct lmp_rt_grads *g2)
{
    const struct lmp_model *m = c->m;
    const struct lmp_layer *L = &m->layers[l];
    const struct lmp_layer_cfg *lc = &m->cfg.layer[l];
    const enum lmp_prune_importance imp = c->o->importance;
    const long D = m->cfg.dim, hd = m->cfg.head_dim, nh = lc->n_heads, nkv = lc->n_kv_heads;
    const long gs = nh / nkv, qd = nh * hd, F = lc->ffn;
    struct lscore *s = &c->sc[l];
    const int vec = imp == LMP_PRUNE_TAYLORVEC;
#define W(t) ((const float *)(t)->data)
#define GR(t) (lmp_rt_grads_of(g, m, t))
#define G2(t) (lmp_rt_grads_of(g2, m, t))
#define ES(t, off, n, stride)                                                                \
    ((t) ? esum(imp, W(t) + (off), GR(t) ? GR(t) + (off) : NULL,                             \
                G2(t) ? G2(t) + (off) : NULL, n, stride)                                     \
         : 0.0)
    if (c->heads) {
        for (long h = 0; h < nh; h++) {
            double v = ES(L->wq, h * hd * D, hd * D, 1) + ES(L->bq, h * hd, hd, 1);
            for (long r = 0; r < D; r++) v += ES(L->wo, r * qd + h * hd, hd, 1);
            s->head[h] = v; /* signed for taylorvec until the groups are summed */
        }
        for (long k = 0; k < nkv; k++) {
            double v = ES(L->wk, k * hd * D, hd * D, 1) + ES(L->wv, k * hd * D, hd * D, 1) +
                       ES(L->bk, k * hd, hd, 1) + ES(L->bv, k * hd, hd, 1);
            for (long j = 0; j < gs; j++) v += s->head[k * gs + j];
            s->group[k] = vec ? fabs(v) : v;
        }
        if (vec)
            for (long h = 0; h < nh; h++) s->head[h] = fabs(s->head[h]);
    }
    if (c->mlp)
        for (long i = 0; i < F; i++) {
            double v = ES(L->w_gate, i * D, D, 1) + ES(L->w_up, i * D, D, 1) +
                       ES(L->w_down, i, D, F);
            s->ch[i] = vec ? fabs(v) : v;
        }
#undef W
#undef GR
#undef G2
#undef ES
}

/* Per-window mean cross entropy: its gradient is one calibration sample's. */
static enum lmp_status ce_window(void *user, int thread, int seq, const int32_t *tokens, int len,
                                 const float *logits, int vocab, float *dlogits, double *loss,
                                 struct lmp_err *err)
{
    (void)user, (void)thread, (void)seq, (void)err;
    float scale = 1.0f / (float)(len - 1);
    *loss = lmp_rt_loss_ce(logits, tokens, len, vocab, scale, dlogits) / (len - 1);
    return LMP_OK;
}

/* Mean gradient (and mean squared per-window gradient) of the calibration loss for the
 * selected layers' targeted matrices. */
static enum lmp_status gradients(struct ctx *c, const int32_t *win, int nwin, int len,
                                 struct lmp_rt_grads **g, struct lmp_rt_grads **g2,
                                 double *loss, struct lmp_err *err)
{
    struct lmp_model *m = c->m;
    *g = *g2 = NULL;
    unsigned char *want = calloc((size_t)m->n_tensors + 1, 1);
    if (!want) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    for (int l = c->first; l <= c->last; l++) {
        const struct lmp_layer *L = &m->layers[l];
        const struct lmp_tensor *ta[] = {L->wq, L->wk, L->wv, L->wo, L->bq, L->bk, L->bv};
        const struct lmp_tensor *tm[] = {L->w_gate, L->w_up, L->w_down};
        for (size_t i = 0; c->heads && i < sizeof ta / sizeof ta[0]; i++)
            if (ta[i]) want[ta[i] - m->tensors] = 1;
        for (size_t i = 0; c->mlp && i < sizeof tm / sizeof tm[0]; i++)
            want[tm[i] - m->tensors] = 1;
    }
    struct lmp_rt_train *tr = NULL;
    struct lmp_rt_train_opts to = {.n_threads = c->o->n_threads};
    int chunk = c->n_thr < nwin ? c->n_thr : nwin;
    enum lmp_status st = lmp_rt_train_create(m, len, chunk, &to, &tr, err);
    if (!st) st = lmp_rt_grads_create(m, want, g, err);
    if (!st && c->o->importance == LMP_PRUNE_TAYLOR2) st = lmp_rt_grads_create(m, want, g2, err);
    double total = 0;
    for (int i0 = 0; !st && i0 < nwin; i0 += chunk) {
        int n = nwin - i0 < chunk ? nwin - i0 : chunk;
        double lsum = 0;
        st = lmp_rt_train_step(tr, win + (size_t)i0 * len, n, len, ce_window, NULL, *g, *g2,
                               &lsum, err);
        total += lsum;
        if (c->o->progress) c->o->progress(c->o->progress_user, "gradients", i0 + n, nwin);
    }
    if (!st) {
        lmp_rt_grads_scale(*g, 1.0f / (float)nwin);
        if (*g2) lmp_rt_grads_scale(*g2, 1.0f / (float)nwin);
        if (loss) *loss = total / nwin;
    }
    lmp_rt_train_free(tr);
    free(want);
    return st;
}

/* ---- scores from activation second moments --------------------------------------------- */

/* OBS score of removing the columns cols[0..n) of W (rows, ld) given Hinv (ld, ld):
 * sum over rows of w_S^T ((Hinv)_SS)^-1 w_S. M: (n, n) scratch. */
static double obs_block(const float *W, int rows, int ld, const double *Hinv, const int *cols,
                        int n, double *M)
{
    for (int a = 0; a < n; a++)
        for (int b = 0; b < n; b++) M[(size_t)a * n + b] = Hinv[(size_t)cols[a] * ld + cols[b]];
    if (LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', n, M, n) ||
        LAPACKE_dpotri(LAPACK_ROW_MAJOR, 'L', n, M, n))
        return INFINITY; /* keep what cannot be scored */
    double s = 0;
    for (int r = 0; r < rows; r++) {
        const float *w = W + (size_t)r * ld;
        for (int a = 0; a < n; a++) {
            double wa = w[cols[a]];
            s += wa * wa * M[(size_t)a * n + a];
            for (int b = 0; b < a; b++) s += 2 * wa * w[cols[b]] * M[(size_t)a * n + b];
        }
    }
    return s;
}

/* tr(W H W^T) for W (rows, cols): the mean squared output of the matrix on the calibration
 * activations. */
static double out_energy(const float *W, int rows, int cols, const double *H)
{
    double e = 0;
    for (int r = 0; r < rows; r++) {
        const float *w = W + (size_t)r * cols;
        for (int a = 0; a < cols; a++) {
            double t = 0;
            for (int b = 0; b < cols; b++) t += H[(size_t)a * cols + b] * w[b];
            e += w[a] * t;
        }
    }
    return e;
}

/* Scores of layer l from H_o (qd, qd) and H_down (ffn, ffn) (normalised second moments;
 * NULL when the family is not targeted). Ranked across layers (global), they are taken
 * relative to the matrix's output energy, so that layers with larger activations do not
 * keep everything. */
static enum lmp_status hess_scores(struct ctx *c, int l, const double *Ho, const double *Hd,
                                   struct lmp_err *err)
{
    const struct lmp_model *m = c->m;
    const struct lmp_layer *L = &m->layers[l];
    const struct lmp_layer_cfg *lc = &m->cfg.layer[l];
    const int D = m->cfg.dim, hd = m->cfg.head_dim, nh = lc->n_heads, nkv = lc->n_kv_heads;
    const int gs = nh / nkv, qd = nh * hd, F = lc->ffn;
    const int obs = c->o->importance == LMP_PRUNE_OBS;
    struct lscore *s = &c->sc[l];
    enum lmp_status st = LMP_OK;
    if (c->heads) {
        const float *Wo = L->wo->data;
        if (!obs) {
            for (int h = 0; h < nh; h++) {
                double v = 0;
                for (int j = h * hd; j < (h + 1) * hd; j++) {
                    double n2 = 0;
                    for (int r = 0; r < D; r++) n2 += (double)Wo[(size_t)r * qd + j] * Wo[(size_t)r * qd + j];
                    v += n2 * Ho[(size_t)j * qd + j];
                }
                s->head[h] = v;
            }
            for (int k = 0; k < nkv; k++) {
                s->group[k] = 0;
                for (int j = 0; j < gs; j++) s->group[k] += s->head[k * gs + j];
            }
        } else {
            double *Hi = malloc((size_t)qd * qd * sizeof *Hi);
            double *M = malloc((size_t)gs * hd * gs * hd * sizeof *M);
            int *cols = malloc((size_t)gs * hd * sizeof *cols);
            if (!Hi || !M || !cols) st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
            if (!st) {
                memcpy(Hi, Ho, (size_t)qd * qd * sizeof *Hi);
                st = lmp_prune_inverse(Hi, qd, c->o->damp, &c->retries, err);
            }
            for (int h = 0; !st && h < nh; h++) {
                for (int d = 0; d < hd; d++) cols[d] = h * hd + d;
                s->head[h] = obs_block(Wo, D, qd, Hi, cols, hd, M);
            }
            for (int k = 0; !st && k < nkv; k++) {
                for (int d = 0; d < gs * hd; d++) cols[d] = k * gs * hd + d;
                s->group[k] = obs_block(Wo, D, qd, Hi, cols, gs * hd, M);
            }
            free(Hi), free(M), free(cols);
        }
        double e = c->o->global ? out_energy(Wo, D, qd, Ho) : 1;
        for (int h = 0; e > 0 && h < nh; h++) s->head[h] /= e;
        for (int k = 0; e > 0 && k < nkv; k++) s->group[k] /= e;
    }
    if (!st && c->mlp) {
        const float *Wd = L->w_down->data;
        double *Hi = NULL;
        if (obs) {
            Hi = malloc((size_t)F * F * sizeof *Hi);
            if (!Hi) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
            memcpy(Hi, Hd, (size_t)F * F * sizeof *Hi);
            st = lmp_prune_inverse(Hi, F, c->o->damp, &c->retries, err);
        }
        for (int j = 0; !st && j < F; j++) {
            double n2 = 0;
            for (int r = 0; r < D; r++) n2 += (double)Wd[(size_t)r * F + j] * Wd[(size_t)r * F + j];
            s->ch[j] = obs ? n2 / Hi[(size_t)j * F + j] : n2 * Hd[(size_t)j * F + j];
        }
        double e = c->o->global && !st ? out_energy(Wd, D, F, Hd) : 1;
        for (int j = 0; e > 0 && j < F; j++) s->ch[j] /= e;
        free(Hi);
    }
    return st;
}

/* ---- selection ------------------------------------------------------------------------- */

struct item {
    double s;
    int l, i;
};
static int item_cmp(const void *a, const void *b)
{
    const struct item *x = a, *y = b;
    if (x->s != y->s) return x->s < y->s ? -1 : 1;
    if (x->l != y->l) return x->l < y->l ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

static enum lmp_status alloc_keep(struct ctx *c, int l, struct lmp_err *err)
{
    const struct lmp_layer_cfg *lc = &c->m->cfg.layer[l];
    if (!c->keep_h[l]) c->keep_h[l] = malloc((size_t)lc->n_heads);
    if (!c->keep_c[l]) c->keep_c[l] = malloc((size_t)lc->ffn);
    if (!c->keep_h[l] || !c->keep_c[l]) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    memset(c->keep_h[l], 1, (size_t)lc->n_heads);
    memset(c->keep_c[l], 1, (size_t)lc->ffn);
    return LMP_OK;
}

/* Within every kept group of layer l, the rm_heads_per_group lowest-scoring heads go. */
static enum lmp_status select_heads_in_groups(struct ctx *c, int l, struct lmp_err *err)
{
    const struct lmp_layer_cfg *lc = &c->m->cfg.layer[l];
    const int nkv = lc->n_kv_heads, gs = lc->n_heads / nkv, r = c->plan[l].rm_heads_per_group;
    if (!r) return LMP_OK;
    struct item *it = malloc((size_t)gs * sizeof *it);
    if (!it) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    for (int k = 0; k < nkv; k++) {
        int kept = 0;
        for (int j = 0; j < gs; j++) kept += c->keep_h[l][k * gs + j];
        if (!kept) continue;
        for (int j = 0; j < gs; j++) it[j] = (struct item){c->sc[l].head[k * gs + j], l, j};
        qsort(it, (size_t)gs, sizeof *it, item_cmp);
        for (int j = 0; j < r; j++) c->keep_h[l][k * gs + it[j].i] = 0;
    }
    free(it);
    return LMP_OK;
}

static enum lmp_status select_layer(struct ctx *c, int l, struct lmp_err *err)
{
    const struct lmp_layer_cfg *lc = &c->m->cfg.layer[l];
    const int nh = lc->n_heads, nkv = lc->n_kv_heads, gs = nh / nkv, F = lc->ffn;
    enum lmp_status st = alloc_keep(c, l, err);
    if (st) return st;
    int n = nkv > F ? nkv : F;
    struct item *it = malloc((size_t)n * sizeof *it);
    if (!it) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    if (c->heads) {
        for (int k = 0; k < nkv; k++) it[k] = (struct item){c->sc[l].group[k], l, k};
        qsort(it, (size_t)nkv, sizeof *it, item_cmp);
        for (int k = 0; k < c->plan[l].rm_groups; k++)
            memset(c->keep_h[l] + (size_t)it[k].i * gs, 0, (size_t)gs);
    }
    if (c->mlp) {
        for (int i = 0; i < F; i++) it[i] = (struct item){c->sc[l].ch[i], l, i};
        qsort(it, (size_t)F, sizeof *it, item_cmp);
        for (int i = 0; i < c->plan[l].rm_channels; i++) c->keep_c[l][it[i].i] = 0;
    }
    free(it);
    return c->heads ? select_heads_in_groups(c, l, err) : LMP_OK;
}

/* ---- greedy Optimal Brain Surgeon ------------------------------------------------------- */

/* Removes n_rm of the units of W (rows, n) allowed[u] (unit u = columns u*bs .. u*bs+bs-1),
 * in rounds: each round scores every remaining unit by the error its removal leaves after
 * the optimal update of the other columns, w_S^T ((Hinv)_SS)^-1 w_S summed over rows, removes
 * the lowest (one unit per round while n_rm <= 64, else n_rm/64 of them), and applies that
 * update to W and to Hinv (the inverse restricted to what remains). removed[u] set to 1. */
static enum lmp_status obs_greedy(double *W, int rows, int n, double *Hinv, int n_units, int bs,
                                  const unsigned char *allowed, int n_rm, unsigned char *removed,
                                  struct lmp_err *err)
{
    if (n_rm <= 0) return LMP_OK;
    const int per_round = n_rm <= 64 ? 1 : (n_rm + 63) / 64;
    struct item *it = malloc((size_t)n_units * sizeof *it);
    int *S = malloc((size_t)n_rm * bs * sizeof *S);
    double *M = malloc((size_t)n_rm * bs * n_rm * bs * sizeof *M);
    double *WSM = malloc((size_t)rows * n_rm * bs * sizeof *WSM);
    double *HSM = malloc((size_t)n * n_rm * bs * sizeof *HSM);
    enum lmp_status st = LMP_OK;
    if (!it || !S || !M || !WSM || !HSM) st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    for (int done = 0; !st && done < n_rm;) {
        int cand = 0;
        for (int u = 0; u < n_units; u++) {
            if (!allowed[u] || removed[u]) continue;
            for (int a = 0; a < bs; a++)
                for (int b = 0; b < bs; b++)
                    M[(size_t)a * bs + b] = Hinv[(size_t)(u * bs + a) * n + u * bs + b];
            double sc = INFINITY;
            if (!LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', bs, M, bs) &&
                !LAPACKE_dpotri(LAPACK_ROW_MAJOR, 'L', bs, M, bs)) {
                sc = 0;
                for (int r = 0; r < rows; r++) {
                    const double *w = W + (size_t)r * n + (size_t)u * bs;
                    for (int a = 0; a < bs; a++) {
                        sc += w[a] * w[a] * M[(size_t)a * bs + a];
                        for (int b = 0; b < a; b++) sc += 2 * w[a] * w[b] * M[(size_t)a * bs + b];
                    }
                }
            }
            it[cand++] = (struct item){sc, 0, u};
        }
        qsort(it, (size_t)cand, sizeof *it, item_cmp);
        int k = n_rm - done < per_round ? n_rm - done : per_round;
        if (k > cand) k = cand;
        if (k <= 0) break;
        const int ns = k * bs;
        for (int j = 0; j < k; j++) {
            removed[it[j].i] = 1;
            for (int a = 0; a < bs; a++) S[j * bs + a] = it[j].i * bs + a;
        }
        done += k;
        /* M = ((Hinv)_SS)^-1 */
        for (int a = 0; a < ns; a++)
            for (int b = 0; b < ns; b++) M[(size_t)a * ns + b] = Hinv[(size_t)S[a] * n + S[b]];
        if (LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', ns, M, ns) ||
            LAPACKE_dpotri(LAPACK_ROW_MAJOR, 'L', ns, M, ns)) {
            st = lmp_err_set(err, LMP_ERR_INTERNAL, "prune: OBS update not positive definite");
            break;
        }
        for (int a = 0; a < ns; a++)
            for (int b = a + 1; b < ns; b++) M[(size_t)a * ns + b] = M[(size_t)b * ns + a];
        /* W -= W_S M Hinv[S, :];  Hinv -= Hinv[:, S] M Hinv[S, :] */
        for (int r = 0; r < rows; r++)
            for (int b = 0; b < ns; b++) {
                double v = 0;
                for (int a = 0; a < ns; a++) v += W[(size_t)r * n + S[a]] * M[(size_t)a * ns + b];
                WSM[(size_t)r * ns + b] = v;
            }
        for (int i = 0; i < n; i++)
            for (int b = 0; b < ns; b++) {
                double v = 0;
                for (int a = 0; a < ns; a++) v += Hinv[(size_t)i * n + S[a]] * M[(size_t)a * ns + b];
                HSM[(size_t)i * ns + b] = v;
            }
        /* rows S of Hinv, copied before they change */
        double *HS = malloc((size_t)ns * n * sizeof *HS);
        if (!HS) {
            st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
            break;
        }
        for (int b = 0; b < ns; b++) memcpy(HS + (size_t)b * n, Hinv + (size_t)S[b] * n, (size_t)n * sizeof *HS);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, n, ns, -1.0, WSM, ns, HS, n,
                    1.0, W, n);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, ns, -1.0, HSM, ns, HS, n, 1.0,
                    Hinv, n);
        free(HS);
    }
    free(it), free(S), free(M), free(WSM), free(HSM);
    return st;
}

/* Per-layer OBS selection of layer l: groups, then heads within the remaining groups, then
 * channels, each by obs_greedy on a copy of the consuming matrix. */
static enum lmp_status obs_select_layer(struct ctx *c, int l, const double *Ho, const double *Hd,
                                        struct lmp_err *err)
{
    const struct lmp_model *m = c->m;
    const struct lmp_layer *L = &m->layers[l];
    const struct lmp_layer_cfg *lc = &m->cfg.layer[l];
    const int D = m->cfg.dim, hd = m->cfg.head_dim, nh = lc->n_heads, nkv = lc->n_kv_heads;
    const int gs = nh / nkv, qd = nh * hd, F = lc->ffn;
    enum lmp_status st = alloc_keep(c, l, err);
    if (st) return st;
    for (int fam = 0; fam < 2 && !st; fam++) {
        if ((fam == 0 && !c->heads) || (fam == 1 && !c->mlp)) continue;
        const int n = fam == 0 ? qd : F;
        const float *Wf = fam == 0 ? L->wo->data : L->w_down->data;
        double *W = malloc((size_t)D * n * sizeof *W), *Hi = malloc((size_t)n * n * sizeof *Hi);
        unsigned char *allowed = malloc((size_t)(nh > F ? nh : F)), *rm = calloc((size_t)(nh > F ? nh : F), 1);
        if (!W || !Hi || !allowed || !rm) st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        if (!st) {
            for (size_t i = 0; i < (size_t)D * n; i++) W[i] = Wf[i];
            memcpy(Hi, fam == 0 ? Ho : Hd, (size_t)n * n * sizeof *Hi);
            st = lmp_prune_inverse(Hi, n, c->o->damp, &c->retries, err);
        }
        if (!st && fam == 0) {
            memset(allowed, 1, (size_t)nkv);
            st = obs_greedy(W, D, n, Hi, nkv, gs * hd, allowed, c->plan[l].rm_groups, rm, err);
            for (int k = 0; !st && k < nkv; k++)
                if (rm[k]) memset(c->keep_h[l] + (size_t)k * gs, 0, (size_t)gs);
            for (int k = 0; !st && k < nkv && c->plan[l].rm_heads_per_group; k++) {
                if (!c->keep_h[l][k * gs]) continue; /* the group is gone */
                memset(allowed, 0, (size_t)nh);
                memset(rm, 0, (size_t)nh);
                memset(allowed + (size_t)k * gs, 1, (size_t)gs);
                st = obs_greedy(W, D, n, Hi, nh, hd, allowed, c->plan[l].rm_heads_per_group, rm, err);
                for (int h = 0; !st && h < nh; h++)
                    if (rm[h]) c->keep_h[l][h] = 0;
            }
        }
        if (!st && fam == 1) {
            memset(allowed, 1, (size_t)F);
            st = obs_greedy(W, D, n, Hi, F, 1, allowed, c->plan[l].rm_channels, rm, err);
            for (int i = 0; !st && i < F; i++)
                if (rm[i]) c->keep_c[l][i] = 0;
        }
        free(W), free(Hi), free(allowed), free(rm);
    }
    return st;
}

/* Channels and KV groups ranked across the selected layers; the totals are those of the
 * per-layer plan; every layer keeps at least one group and one channel. */
static enum lmp_status select_global(struct ctx *c, struct lmp_err *err)
{
    const struct lmp_model *m = c->m;
    size_t n_ch = 0, n_gr = 0;
    int64_t want_ch = 0, want_gr = 0;
    enum lmp_status st = LMP_OK;
    for (int l = c->first; l <= c->last && !st; l++) {
        n_ch += (size_t)m->cfg.layer[l].ffn;
        n_gr += (size_t)m->cfg.layer[l].n_kv_heads;
        want_ch += c->plan[l].rm_channels;
        want_gr += c->plan[l].rm_groups;
        st = alloc_keep(c, l, err);
    }
    int *rm_l = calloc((size_t)m->cfg.n_layers, sizeof *rm_l);
    struct item *it = malloc((n_ch > n_gr ? n_ch : n_gr) * sizeof *it + 1);
    if (!st && (!rm_l || !it)) st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    if (!st && c->mlp) {
        size_t k = 0;
        for (int l = c->first; l <= c->last; l++)
            for (int i = 0; i < m->cfg.layer[l].ffn; i++) it[k++] = (struct item){c->sc[l].ch[i], l, i};
        qsort(it, n_ch, sizeof *it, item_cmp);
        int64_t done = 0;
        for (size_t j = 0; j < n_ch && done < want_ch; j++)
            if (rm_l[it[j].l] < m->cfg.layer[it[j].l].ffn - 1) {
                c->keep_c[it[j].l][it[j].i] = 0;
                rm_l[it[j].l]++;
                done++;
            }
    }
    if (!st && c->heads) {
        memset(rm_l, 0, (size_t)m->cfg.n_layers * sizeof *rm_l);
        size_t k = 0;
        for (int l = c->first; l <= c->last; l++)
            for (int i = 0; i < m->cfg.layer[l].n_kv_heads; i++)
                it[k++] = (struct item){c->sc[l].group[i], l, i};
        qsort(it, n_gr, sizeof *it, item_cmp);
        int64_t done = 0;
        for (size_t j = 0; j < n_gr && done < want_gr; j++) {
            const struct lmp_layer_cfg *lc = &m->cfg.layer[it[j].l];
            if (rm_l[it[j].l] < lc->n_kv_heads - 1) {
                int gs = lc->n_heads / lc->n_kv_heads;
                memset(c->keep_h[it[j].l] + (size_t)it[j].i * gs, 0, (size_t)gs);
                rm_l[it[j].l]++;
                done++;
            }
        }
        for (int l = c->first; l <= c->last && !st; l++) st = select_heads_in_groups(c, l, err);
    }
    free(rm_l);
    free(it);
    return st;
}

/* ---- layer-by-layer activation statistics ----------------------------------------------- */

struct hk {
    int layer;
    int use_o, use_d; /* which moments the current pass collects */
    float *Co, *Cd; /* X^T X (upper triangle) of the wo / w_down input of the current window */
};

static void hook_fn(void *user, int layer, enum lmp_rt_linear which, const float *x, int n, int in)
{
    struct hk *h = user;
    if (layer != h->layer) return;
    float *C = which == LMP_RT_O && h->use_o      ? h->Co
               : which == LMP_RT_DOWN && h->use_d ? h->Cd
                                                  : NULL;
    if (C) cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, in, n, 1.0f, x, in, 1.0f, C, in);
}

struct seq {
    struct lmp_model *m;
    int nwin, len, n_thr;
    float *X;                /* (nwin, len, dim) hidden states entering the current layer */
    float *tmp;              /* (n_thr, len, dim) */
    struct lmp_rt_state **st; /* (n_thr) */
    struct hk *hk;           /* (n_thr) */
    float *cmem;             /* per-thread Co, Cd */
    size_t co_n, cd_n;       /* floats of one thread's Co, Cd */
};

static void seq_free_states(struct seq *q)
{
    for (int t = 0; q->st && t < q->n_thr; t++) {
        lmp_rt_state_free(q->st[t]);
        q->st[t] = NULL;
    }
}

static enum lmp_status seq_states(struct seq *q, struct lmp_err *err)
{
    seq_free_states(q);
    struct lmp_rt_opts ro = {.n_threads = 1};
    enum lmp_status st = lmp_rt_state_create(q->m, q->len, q->len, &ro, &q->st[0], err);
    for (int t = 1; !st && t < q->n_thr; t++)
        st = lmp_rt_state_create_like(q->st[0], &ro, &q->st[t], err);
    return st;
}

static void seq_free(struct seq *q)
{
    seq_free_states(q);
    free(q->st), free(q->hk), free(q->X), free(q->tmp), free(q->cmem);
    memset(q, 0, sizeof *q);
}

static enum lmp_status seq_init(struct seq *q, struct lmp_model *m, const int32_t *win, int nwin,
                                int len, int n_thr, struct lmp_err *err)
{
    memset(q, 0, sizeof *q);
    q->m = m, q->nwin = nwin, q->len = len;
    q->n_thr = n_thr < nwin ? n_thr : nwin;
    const size_t D = (size_t)m->cfg.dim;
    size_t maxq = 0, maxf = 0;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        size_t qd = (size_t)m->cfg.layer[l].n_heads * (size_t)m->cfg.head_dim;
        maxq = qd > maxq ? qd : maxq;
        maxf = (size_t)m->cfg.layer[l].ffn > maxf ? (size_t)m->cfg.layer[l].ffn : maxf;
    }
    q->co_n = maxq * maxq, q->cd_n = maxf * maxf;
    if ((size_t)nwin * (size_t)len > SIZE_MAX / sizeof(float) / D / 2)
        return lmp_err_set(err, LMP_ERR_NOMEM, "calibration activations: size overflow");
    q->X = malloc((size_t)nwin * len * D * sizeof *q->X);
    q->tmp = malloc((size_t)q->n_thr * len * D * sizeof *q->tmp);
    q->st = calloc((size_t)q->n_thr, sizeof *q->st);
    q->hk = calloc((size_t)q->n_thr, sizeof *q->hk);
    q->cmem = malloc((size_t)q->n_thr * (q->co_n + q->cd_n) * sizeof *q->cmem + 1);
    if (!q->X || !q->tmp || !q->st || !q->hk || !q->cmem) {
        seq_free(q);
        return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory for calibration activations");
    }
    for (int t = 0; t < q->n_thr; t++) {
        q->hk[t].Co = q->cmem + (size_t)t * (q->co_n + q->cd_n);
        q->hk[t].Cd = q->hk[t].Co + q->co_n;
    }
    enum lmp_status st = seq_states(q, err);
    for (int w = 0; !st && w < nwin; w++)
        st = lmp_rt_embed(q->st[0], win + (size_t)w * len, len, q->X + (size_t)w * len * D, err);
    if (st) seq_free(q);
    return st;
}

/* Runs layer l on every window: in place (advance) or on a copy with the hook adding the
 * wo / w_down input moments into Ho (qd, qd) / Hd (ffn, ffn) (normalised per token). */
static enum lmp_status seq_run(struct seq *q, int l, double *Ho, double *Hd, struct lmp_err *err)
{
    const struct lmp_layer_cfg *lc = &q->m->cfg.layer[l];
    const size_t D = (size_t)q->m->cfg.dim, len = (size_t)q->len;
    const int qd = lc->n_heads * q->m->cfg.head_dim, F = lc->ffn;
    const int collect = Ho || Hd;
    if (Ho) memset(Ho, 0, (size_t)qd * qd * sizeof *Ho);
    if (Hd) memset(Hd, 0, (size_t)F * F * sizeof *Hd);
    enum lmp_status st = LMP_OK;
    int failed = 0;
    int blas_prev = openblas_get_num_threads();
    /* single-threaded BLAS inside each window whatever the thread count: OpenBLAS's
     * partition of a product changes its rounding, and the result must not depend on it */
    openblas_set_num_threads(1);
#pragma omp parallel for ordered num_threads(q->n_thr) if (q->n_thr > 1) schedule(static, 1)
    for (int w = 0; w < q->nwin; w++) {
        int t = omp_get_thread_num(), stop;
        struct hk *h = &q->hk[t];
        struct lmp_err lerr = {{0}};
        enum lmp_status lst = LMP_OK;
        float *x = q->X + (size_t)w * len * D;
#pragma omp atomic read
        stop = failed;
        if (!stop) {
            if (collect) {
                memcpy(q->tmp + (size_t)t * len * D, x, len * D * sizeof *x);
                x = q->tmp + (size_t)t * len * D;
                h->layer = l;
                h->use_o = Ho != NULL;
                h->use_d = Hd != NULL;
                if (Ho) memset(h->Co, 0, (size_t)qd * qd * sizeof *h->Co);
                if (Hd) memset(h->Cd, 0, (size_t)F * F * sizeof *h->Cd);
            }
            struct lmp_rt_hooks hooks = {.user = h, .linear_input = hook_fn};
            lst = lmp_rt_forward_layer(q->st[t], l, x, q->len, 0, collect ? &hooks : NULL, &lerr);
        }
#pragma omp ordered
        {
            if (lst && !failed) {
                st = lst;
                *err = lerr;
#pragma omp atomic write
                failed = 1;
            }
            if (!failed && collect) {
                for (int i = 0; Ho && i < qd; i++)
                    for (int j = i; j < qd; j++) Ho[(size_t)i * qd + j] += h->Co[(size_t)i * qd + j];
                for (int i = 0; Hd && i < F; i++)
                    for (int j = i; j < F; j++) Hd[(size_t)i * F + j] += h->Cd[(size_t)i * F + j];
            }
        }
    }
    openblas_set_num_threads(blas_prev);
    if (st || !collect) return st;
    const double inv = 1.0 / ((double)q->nwin * (double)q->len);
    double *Hs[2] = {Ho, Hd};
    int ns[2] = {qd, F};
    for (int k = 0; k < 2; k++) {
        double *H = Hs[k];
        int n = ns[k];
        for (int i = 0; H && i < n; i++)
            for (int j = i; j < n; j++) H[(size_t)j * n + i] = H[(size_t)i * n + j] *= inv;
    }
    return LMP_OK;
}

/* ---- the driver ------------------------------------------------------------------------ */

/* Compensates (when asked) and slices layer l by its keep flags. Ho, Hd: the layer's
 * moments before pruning (NULL without compensation). */
static enum lmp_status prune_layer(struct ctx *c, int l, const double *Ho, const double *Hd,
                                   struct lmp_err *err)
{
    struct lmp_model *m = c->m;
    const struct lmp_layer *L = &m->layers[l];
    const struct lmp_layer_cfg *lc = &m->cfg.layer[l];
    const int D = m->cfg.dim, hd = m->cfg.head_dim, qd = lc->n_heads * hd;
    enum lmp_status st = LMP_OK;
    if (c->o->compensate && c->heads && Ho) {
        unsigned char *kc = malloc((size_t)qd);
        if (!kc) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        for (int j = 0; j < qd; j++) kc[j] = c->keep_h[l][j / hd];
        st = lmp_prune_compensate(L->wo->data, D, qd, Ho, kc, c->o->damp, &c->retries, err);
        free(kc);
    }
    if (!st && c->o->compensate && c->mlp && Hd)
        st = lmp_prune_compensate(L->w_down->data, D, lc->ffn, Hd, c->keep_c[l], c->o->damp,
                                  &c->retries, err);
    if (!st)
        st = lmp_prune_layer_slice(m, l, c->heads ? c->keep_h[l] : NULL,
                                   c->mlp ? c->keep_c[l] : NULL, err);
    if (!st) st = lmp_model_bind(m, "pruned model", err);
    return st;
}

static void progress(const struct ctx *c, const char *stage, int done, int total)
{
    if (c->o->progress) c->o->progress(c->o->progress_user, stage, done, total);
}

/* One pass over layers 0..last with activation statistics: scores (hessian/obs, unless
 * already known), selection (unless global), compensation and slicing; or, with
 * stats_only, only the scores of the unpruned model. */
static enum lmp_status sequential(struct ctx *c, const int32_t *win, int nwin, int len,
                                  int stats_only, struct lmp_err *err)
{
    struct lmp_model *m = c->m;
    const int hess = c->o->importance == LMP_PRUNE_HESSIAN || c->o->importance == LMP_PRUNE_OBS;
    struct seq q;
    enum lmp_status st = seq_init(&q, m, win, nwin, len, c->n_thr, err);
    if (st) return st;
    size_t maxq = 0, maxf = 0;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        size_t qd = (size_t)m->cfg.layer[l].n_heads * (size_t)m->cfg.head_dim;
        maxq = qd > maxq ? qd : maxq;
        maxf = (size_t)m->cfg.layer[l].ffn > maxf ? (size_t)m->cfg.layer[l].ffn : maxf;
    }
    double *Ho = c->heads ? malloc(maxq * maxq * sizeof *Ho) : NULL;
    double *Hd = c->mlp ? malloc(maxf * maxf * sizeof *Hd) : NULL;
    if ((c->heads && !Ho) || (c->mlp && !Hd))
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory for second moments");
    const int total = c->last - c->first + 1;
    for (int l = 0; l <= c->last && !st; l++) {
        if (l >= c->first) {
            if ((st = seq_run(&q, l, Ho, Hd, err))) break;
            const int greedy = c->o->importance == LMP_PRUNE_OBS && !c->o->global;
            if (hess && !greedy && (stats_only || !c->o->global) &&
                (st = hess_scores(c, l, Ho, Hd, err)))
                break;
            if (!stats_only) {
                if (greedy && (st = obs_select_layer(c, l, Ho, Hd, err))) break;
                if (!greedy && !c->o->global && (st = select_layer(c, l, err))) break;
                if ((st = prune_layer(c, l, Ho, Hd, err))) break;
                if ((st = seq_states(&q, err))) break; /* shapes changed */
            }
            progress(c, stats_only ? "statistics" : "layer", l - c->first + 1, total);
        }
        if (l < c->last && (st = seq_run(&q, l, NULL, NULL, err))) break;
    }
    free(Ho);
    free(Hd);
    seq_free(&q);
    return st;
}

enum lmp_status lmp_prune_model(struct lmp_model *m, const int32_t *calib, int64_t n_calib,
                                const struct lmp_prune_opts *o, struct lmp_prune_report *rep,
                                struct lmp_err *err)
{
    double t0 = omp_get_wtime();
    if (rep) memset(rep, 0, sizeof *rep);
    if (!m->layers || !m->cfg.layer)
        return lmp_err_set(err, LMP_ERR_ARG, "prune: model is not bound");
    const int nl = m->cfg.n_layers;
    const enum lmp_prune_importance imp = o->importance;
    const int need_grad = lmp_prune_importance_needs_grad(imp);
    const int hess = imp == LMP_PRUNE_HESSIAN || imp == LMP_PRUNE_OBS;
    const int need_stats = hess || o->compensate;
    if ((need_grad || need_stats) && (o->seqlen < 2 || o->seqlen > m->cfg.max_ctx))
        return lmp_err_set(err, LMP_ERR_ARG, "window length %d outside [2, %d] (model context)",
                           o->seqlen, m->cfg.max_ctx);
    if ((need_grad && o->nsamples < 1) || (need_stats && o->stat_samples < 1))
        return lmp_err_set(err, LMP_ERR_ARG, "calibration needs at least one window");
    if (!(o->damp >= 0 && o->damp < 1e6))
        return lmp_err_set(err, LMP_ERR_ARG, "dampening %g invalid", o->damp);
    struct ctx c = {.m = m, .o = o};
    c.plan = calloc((size_t)nl, sizeof *c.plan);
    c.sc = calloc((size_t)nl, sizeof *c.sc);
    c.keep_h = calloc((size_t)nl, sizeof *c.keep_h);
    c.keep_c = calloc((size_t)nl, sizeof *c.keep_c);
    int32_t *win = NULL;
    struct lmp_rt_grads *g = NULL, *g2 = NULL;
    enum lmp_status st = LMP_OK;
    if (!c.plan || !c.sc || !c.keep_h || !c.keep_c) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        goto done;
    }
    if ((st = lmp_prune_plan(m, o, c.plan, err))) goto done;
    c.first = o->layer_first;
    c.last = o->layer_last < 0 ? nl - 1 : o->layer_last;
    c.heads = !!(o->targets & LMP_PRUNE_HEADS);
    c.mlp = !!(o->targets & LMP_PRUNE_MLP);
    c.n_thr = lmp_rt_threads(o->n_threads);
    for (int i = 0; i < m->n_tensors; i++) {
        struct lmp_tensor *t = &m->tensors[i];
        if (lmp_type_is_packed(t->type)) {
            st = lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                             "prune: tensor %s is quantized (%s): prune the float model, then "
                             "quantize", t->name, lmp_type_name(t->type));
            goto done;
        }
        if (lmp_type_is_float(t->type) && (st = lmp_tensor_to_f32(t, err))) goto done;
    }
    if (rep) {
        rep->n_layers = nl;
        rep->before = malloc((size_t)nl * sizeof *rep->before);
        rep->after = malloc((size_t)nl * sizeof *rep->after);
        if (!rep->before || !rep->after) {
            st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
            goto done;
        }
        memcpy(rep->before, m->cfg.layer, (size_t)nl * sizeof *rep->before);
        rep->params_before = lmp_model_n_params(m);
        for (int l = c.first; l <= c.last; l++) {
            struct lmp_prune_sizes s;
            lmp_prune_layer_sizes(m, l, &s);
            rep->sel_params_before += s.layer;
        }
    }
    for (int l = c.first; l <= c.last; l++) {
        const struct lmp_layer_cfg *lc = &m->cfg.layer[l];
        c.sc[l].head = calloc((size_t)lc->n_heads, sizeof(double));
        c.sc[l].group = calloc((size_t)lc->n_kv_heads, sizeof(double));
        c.sc[l].ch = calloc((size_t)lc->ffn, sizeof(double));
        if (!c.sc[l].head || !c.sc[l].group || !c.sc[l].ch) {
            st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
            goto done;
        }
    }
    int nwin = 0;
    if (need_grad) nwin = o->nsamples;
    if (need_stats && o->stat_samples > nwin) nwin = o->stat_samples;
    if (nwin) {
        int bos = m->vocab.add_bos && m->vocab.bos >= 0 && m->vocab.bos < m->cfg.vocab
                      ? m->vocab.bos
                      : -1;
        if ((st = lmp_prune_calib_windows(calib, n_calib, nwin, o->seqlen, o->seed, bos, &win,
                                          err)))
            goto done;
        for (size_t i = 0; i < (size_t)nwin * o->seqlen; i++)
            if (win[i] < 0 || win[i] >= m->cfg.vocab) {
                st = lmp_err_set(err, LMP_ERR_ARG, "calibration token %d outside the vocabulary",
                                 (int)win[i]);
                goto done;
            }
    }
    /* importance that does not depend on the pruning of earlier layers */
    if (need_grad) {
        double t1 = omp_get_wtime();
        if ((st = gradients(&c, win, o->nsamples, o->seqlen, &g, &g2, NULL, err))) goto done;
        if (rep) rep->grad_seconds = omp_get_wtime() - t1;
    }
    if (!hess)
        for (int l = c.first; l <= c.last; l++) weight_scores(&c, l, g, g2);
    lmp_rt_grads_free(g);
    lmp_rt_grads_free(g2);
    g = g2 = NULL;
    if (o->global) {
        if (hess && (st = sequential(&c, win, o->stat_samples, o->seqlen, 1, err))) goto done;
        if ((st = select_global(&c, err))) goto done;
    }
    if (need_stats) {
        double t1 = omp_get_wtime();
        st = sequential(&c, win, o->stat_samples, o->seqlen, 0, err);
        if (rep) rep->stat_seconds = omp_get_wtime() - t1;
        if (st) goto done;
    } else {
        for (int l = c.first; l <= c.last && !st; l++) {
            if (!o->global) st = select_layer(&c, l, err);
            if (!st) st = prune_layer(&c, l, NULL, NULL, err);
            progress(&c, "layer", l - c.first + 1, c.last - c.first + 1);
        }
        if (st) goto done;
    }
    if (rep) {
        memcpy(rep->after, m->cfg.layer, (size_t)nl * sizeof *rep->after);
        rep->params_after = lmp_model_n_params(m);
        rep->sel_removed = rep->params_before - rep->params_after;
        rep->n_damp_retries = c.retries;
        rep->seconds = omp_get_wtime() - t0;
    }
done:
    lmp_rt_grads_free(g);
    lmp_rt_grads_free(g2);
    free(win);
    for (int l = 0; l < nl && c.sc; l++) free(c.sc[l].head), free(c.sc[l].group), free(c.sc[l].ch);
    for (int l = 0; l < nl && c.keep_h; l++) free(c.keep_h[l]);
    for (int l = 0; l < nl && c.keep_c; l++) free(c.keep_c[l]);
    free(c.sc), free(c.keep_h), free(c.keep_c), free(c.plan);
    if (st && rep) lmp_prune_report_free(rep);
    return st;
}
