/* Structured pruning: removes whole attention heads (GQA-aware) and MLP channels from a
 * float model, leaving smaller dense matrices and per-layer shapes in cfg.layer[l].
 *
 * Groups (rows and columns in the [out][in] layout of formats/model.h):
 *   - MLP channel i: row i of w_gate and w_up, column i of w_down.
 *   - KV group k (the unit of grouped-query attention): rows k*hd.. of wk, wv (and bk, bv),
 *     the rows of wq (and bq) of the query heads h with h / (n_heads / n_kv_heads) == k,
 *     and the matching columns of wo.
 *   - query head h alone: its wq rows (bq) and wo columns. Single heads are removed the same
 *     number from every KV group of the layer, so n_heads % n_kv_heads == 0 still holds.
 *
 * Importance of a group (low = removed first):
 *   magnitude   sum of |w| over the group's weights
 *   taylor1     sum of |w * dL/dw| (LLM-Pruner element-wise first order)
 *   taylor2     sum of 1/2 w^2 E[(dL/dw)^2] (second order with the diagonal Fisher; per-
 *               window squared gradients averaged over the calibration windows)
 *   taylorvec   |sum of w * dL/dw| over the group (LLM-Pruner vector-wise)
 *   hessian     gradient-free: ||W[:, j]||^2 * E[x_j^2] summed over the group's input columns
 *               j of the consuming matrix (w_down for channels, wo for heads), x its input
 *   obs         gradient-free, Optimal Brain Surgeon: the output error left after the best
 *               least-squares compensation, tr(W_S ((H^-1)_SS)^-1 W_S^T) over the group's
 *               columns S, H = E[x x^T] (dampened). Per layer the groups are chosen
 *               greedily (remove the cheapest, update W and H^-1, score again); ranked
 *               globally the scores are one-shot.
 * L is the mean next-token cross entropy on calibration windows of the text.
 *
 * With compensation the consuming matrix (w_down / wo) of each pruned layer is refitted so
 * that its output on calibration activations is reconstructed from the kept inputs:
 * W_K <- W_K + W_S H_SK (H_KK + damp I)^-1 (LAPACKE Cholesky solve in double). Activation
 * statistics are collected layer by layer through the runtime's hooks on the model pruned
 * so far (layers below are already pruned and compensated).
 *
 * Budget: ratio is the fraction of the parameters of the selected layers (all their
 * tensors) to remove. By default each selected layer loses that fraction, taken from the
 * targeted families in proportion to their sizes: attention first, rounded to the nearest
 * removable amount (whole KV groups and/or one query head from every group), then MLP
 * channels make up the rest of the layer's budget. per_family: attention and MLP each lose
 * the ratio of their own parameters (LLM-Pruner's setting). global: the same totals, but
 * the channels (and KV groups) with the lowest importance across all selected layers go.
 */
#ifndef LMP_PRUNE_H
#define LMP_PRUNE_H

#include "formats/model.h"

#include <stdint.h>

enum lmp_prune_importance {
    LMP_PRUNE_MAGNITUDE = 0,
    LMP_PRUNE_TAYLOR1 = 1,
    LMP_PRUNE_TAYLOR2 = 2,
    LMP_PRUNE_TAYLORVEC = 3,
    LMP_PRUNE_HESSIAN = 4,
    LMP_PRUNE_OBS = 5,
};
/* "magnitude", "taylor1", ... ; parse returns 0 and sets *out for a known name, else -1 */
const char *lmp_prune_importance_name(enum lmp_prune_importance i);
int lmp_prune_importance_parse(const char *name, enum lmp_prune_importance *out);
/* 1 when the importance needs gradients (taylor*), 0 otherwise */
int lmp_prune_importance_needs_grad(enum lmp_prune_importance i);

#define LMP_PRUNE_HEADS 1
#define LMP_PRUNE_MLP 2

struct lmp_prune_opts {
    double ratio;           /* fraction of the selected layers' parameters removed, (0, 1) */
    int targets;            /* LMP_PRUNE_HEADS | LMP_PRUNE_MLP */
    int layer_first, layer_last; /* selected layers, inclusive; layer_last < 0: to the end */
    enum lmp_prune_importance importance; /* default hessian */
    int compensate;         /* least-squares refit of w_down / wo */
    int per_family;         /* each family loses ratio of its own parameters */
    int global;             /* rank channels and KV groups across the selected layers */
    int nsamples;           /* calibration windows for gradients (16) */
    int stat_samples;       /* calibration windows for activation statistics (32) */
    int seqlen;             /* tokens per window (512, at most the model's context) */
    uint64_t seed;          /* window starts */
    double damp;            /* dampening, fraction of the mean diagonal of H (0.01) */
    int n_threads;          /* <= 0: OpenMP's default */
    /* called as work advances: stage "gradients" (done/total windows), "statistics" and
     * "layer" (done/total layers of the model); from the calling thread */
    void (*progress)(void *user, const char *stage, int done, int total);
    void *progress_user;
};
void lmp_prune_opts_default(struct lmp_prune_opts *o);

/* What one layer loses. */
struct lmp_prune_layer_plan {
    int rm_groups;          /* whole KV groups removed */
    int rm_heads_per_group; /* query heads removed from each remaining group */
    int rm_channels;        /* MLP channels removed */
};

struct lmp_prune_report {
    int n_layers;
    struct lmp_layer_cfg *before, *after; /* (n_layers) */
    int64_t params_before, params_after;   /* whole model */
    int64_t sel_params_before, sel_removed; /* the selected layers */
    double seconds, grad_seconds, stat_seconds;
    int n_damp_retries;
};
void lmp_prune_report_free(struct lmp_prune_report *r); /* frees the arrays; accepts NULL */

/* Checks the options against the model and fills plan (cfg.n_layers entries; layers
 * outside the selection get zeros). LMP_ERR_ARG with one line naming the problem: ratio
 * outside (0, 1), no target, a layer range outside the model, or a budget that would
 * remove every head or every channel of a layer. In global mode the plan holds the layer
 * budgets before ranking. */
enum lmp_status lmp_prune_plan(const struct lmp_model *m, const struct lmp_prune_opts *o,
                               struct lmp_prune_layer_plan *plan, struct lmp_err *err);

/* nsamples windows of seqlen tokens at reproducible random starts (SplitMix64 of seed) in
 * ids, the first token of each replaced by bos when bos >= 0. *out (nsamples * seqlen)
 * malloc'd, owned by the caller. LMP_ERR_ARG when the text is shorter than seqlen + 1. */
enum lmp_status lmp_prune_calib_windows(const int32_t *ids, int64_t n_ids, int nsamples,
                                        int seqlen, uint64_t seed, int bos, int32_t **out,
                                        struct lmp_err *err);

/* Prunes m in place: float tensors become F32, the selected layers' matrices shrink,
 * cfg.layer[l] gets the new shapes and the model is re-bound. calib: token ids of the
 * calibration text, no BOS (unused by magnitude without compensation). rep may be NULL
 * (else free it with lmp_prune_report_free). On failure the model may be half pruned:
 * free it. LMP_ERR_UNSUPPORTED for packed (quantized) weights. */
enum lmp_status lmp_prune_model(struct lmp_model *m, const int32_t *calib, int64_t n_calib,
                                const struct lmp_prune_opts *o, struct lmp_prune_report *rep,
                                struct lmp_err *err);

/* Removes the given heads and channels of one layer: keep_heads (n_heads) and keep_ch (ffn)
 * are 0/1 flags (NULL: keep all). Every KV group must keep the same number of query heads
 * (a group keeping none is removed with its k/v rows), at least one head and one channel
 * must stay. Tensors become owned F32; cfg.layer[layer] is updated; call lmp_model_bind
 * after. */
enum lmp_status lmp_prune_layer_slice(struct lmp_model *m, int layer, const unsigned char *keep_heads,
                                      const unsigned char *keep_ch, struct lmp_err *err);

#endif
