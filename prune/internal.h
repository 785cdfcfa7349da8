/* Private to prune/: shared between plan.c, slice.c and prune.c. Never included elsewhere. */
#ifndef LMP_PRUNE_INTERNAL_H
#define LMP_PRUNE_INTERNAL_H

#include "prune.h"

/* Parameter counts of one layer's groups. */
struct lmp_prune_sizes {
    int64_t layer;   /* every tensor of the layer (norms included) */
    int64_t attn;    /* wq, wk, wv, wo and their biases */
    int64_t mlp;     /* w_gate, w_up, w_down */
    int64_t head;    /* one query head: hd rows of wq (+ bq) and hd columns of wo */
    int64_t kv;      /* the k/v part of a KV group: hd rows of wk and wv (+ bk, bv) */
    int64_t group;   /* a whole KV group: kv + (n_heads / n_kv_heads) * head */
    int64_t channel; /* one MLP channel: a row of w_gate and w_up, a column of w_down */
};
void lmp_prune_layer_sizes(const struct lmp_model *m, int layer, struct lmp_prune_sizes *s);

/* Parameters an attention plan removes from a layer. */
int64_t lmp_prune_attn_removed(const struct lmp_model *m, int layer, int rm_groups,
                               int rm_heads_per_group);

/* The least-squares refit of a consuming matrix W (rows, cols), F32 in place: with K the
 * kept columns (keep[j] != 0) and S the others, W_K += W_S H_SK (H_KK + lambda I)^-1, H
 * (cols, cols) symmetric (double), lambda = damp * mean(diag H_KK); retried with 10x the
 * dampening while the Cholesky factorisation fails (counted in *retries). */
enum lmp_status lmp_prune_compensate(float *W, int rows, int cols, const double *H,
                                     const unsigned char *keep, double damp, int *retries,
                                     struct lmp_err *err);

/* (H + lambda I)^-1 of a symmetric positive semi-definite H (n, n) in place, lambda = damp *
 * mean(diag H), dampening raised as in lmp_prune_compensate. */
enum lmp_status lmp_prune_inverse(double *H, int n, double damp, int *retries,
                                  struct lmp_err *err);

#endif
