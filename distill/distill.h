/* Knowledge distillation: trains a student model (pruned or quantized) to reproduce the
 * next-token distributions of a teacher (the original model) on a text, by minimising
 * KL(teacher || student) with AdamW, through the backward pass of runtime/backward.h.
 *
 * Loss, per position t of every sequence (all positions: each predicts a distribution),
 * with temperature T and z the logits:
 *   p = softmax(z_teacher / T), q = softmax(z_student / T)
 *   full vocabulary:  L_t = T^2 KL(p || q) = T^2 sum_j p_j (log p_j - log q_j)
 *   top-k (k < vocab): K = the teacher's k most probable ids, r = 1 - sum_K p (the rest of
 *                     the teacher's mass), q_rest = 1 - sum_K q; both distributions are
 *                     collapsed onto K + {rest}:
 *                     L_t = T^2 [sum_K p_j (log p_j - log q_j) + r (log r - log q_rest)]
 * and the step's loss is the mean of L_t over the batch's positions. Its gradient with
 * respect to the student's logits is T (q - p) (full), and T (q_j - p_j) on K,
 * T q_j (1 - r / q_rest) off K (top-k). The T^2 factor (Hinton et al.) keeps gradient sizes
 * comparable across temperatures. Teacher logits are computed on the fly, one inference
 * forward per sequence on the thread that trains it.
 *
 * Data: step s trains on `batch` windows of `seqlen` tokens of the token stream, window i
 * starting at a position drawn from (seed, s * batch + i) alone (a stateless hash), its first
 * token replaced by BOS (as the perplexity chunks are). The data order is thus a pure
 * function of the seed and the step, so a resumed run sees exactly the batches an
 * uninterrupted one does.
 *
 * Optimiser: AdamW (bias-corrected moments, decoupled weight decay on matrices only), linear
 * warmup to lr over `warmup` steps, then cosine decay to lr * min_lr; gradients clipped to a
 * global L2 norm.
 *
 * What is trained:
 *   FULL  every float tensor of the student (F16/BF16 are widened to F32 first; the result is
 *         saved as F32). For float (e.g. pruned) students.
 *   LORA  the packed (or any) linear weights W of every block stay fixed; each gets a low-rank
 *         adapter, the forward using W + B A, B (out, rank) zero at the start, A (rank, in)
 *         uniform in +-1/sqrt(in); dB = dW A^T, dA = B^T dW from the backward's dW. Norms
 *         and biases are trained too (the token embedding / head with train_embd).
 *         At the end the adapters are merged (merge, for packed weights):
 *           GRID       the forward already uses round(W + B A) on the tensor's own grid (its
 *                      scales, zeros and column order; straight-through gradient), and the
 *                      final codes are written back: the file keeps its size and holds
 *                      exactly the model that was trained.
 *           GRID_POST  float adapters during training, rounded onto the grid at the end
 *                      (for comparison: the rounding undoes most of what was learnt).
 *           F16, F32   float adapters; the merged matrices are stored as F16 / F32 (exact,
 *                      but the file grows to the size of a half / full precision model).
 *         Float linear weights get W + B A merged in place (they stay F32).
 *   AUTO  LORA when the student has a packed tensor, else FULL.
 *
 * Checkpoints (ckpt_path, every ckpt_every steps and when stopped): the step, every trained
 * value and both AdamW moments, with a hash of the settings, the student's tensors and the
 * data, written to a temporary name and renamed into place. A run with resume set reloads
 * them (from the same student file) and continues; its result is bit-identical to an
 * uninterrupted run's. Results do not depend on the thread count either.
 */
#ifndef LMP_DISTILL_H
#define LMP_DISTILL_H

#include "formats/model.h"

#include <stddef.h>
#include <stdint.h>

enum lmp_distill_mode {
    LMP_DISTILL_AUTO = 0,
    LMP_DISTILL_FULL = 1,
    LMP_DISTILL_LORA = 2,
};

enum lmp_distill_merge {
    LMP_DISTILL_MERGE_GRID = 0,
    LMP_DISTILL_MERGE_GRID_POST = 1,
    LMP_DISTILL_MERGE_F16 = 2,
    LMP_DISTILL_MERGE_F32 = 3,
};
/* "auto", "full", "lora" / "grid", "grid-post", "f16", "f32"; parse: 0 and *out for a known
 * name, -1 otherwise */
const char *lmp_distill_mode_name(enum lmp_distill_mode m);
int lmp_distill_mode_parse(const char *s, enum lmp_distill_mode *out);
const char *lmp_distill_merge_name(enum lmp_distill_merge m);
int lmp_distill_merge_parse(const char *s, enum lmp_distill_merge *out);

/* Reported after every step, from the calling thread. */
struct lmp_distill_progress {
    int step;          /* steps done (1..steps) */
    int steps;         /* total */
    int first_step;    /* the step this run started from (> 0 after a resume) */
    double loss;       /* this step's loss (mean over its positions) */
    double lr;         /* the learning rate this step used */
    double grad_norm;  /* global gradient norm before clipping */
    int checkpointed;  /* a checkpoint was written after this step */
};

struct lmp_distill_opts {
    int steps;              /* optimiser steps, >= 1 */
    int batch;              /* sequences per step (8) */
    int seqlen;             /* tokens per sequence (256), at most both models' context */
    double lr;              /* peak learning rate, > 0 (1e-3) */
    int warmup;             /* linear warmup steps, < 0: steps / 20 (default -1) */
    double min_lr;          /* final learning rate as a fraction of lr, [0, 1] (0.1) */
    double beta1, beta2;    /* AdamW (0.9, 0.999) */
    double adam_eps;        /* 1e-8 */
    double weight_decay;    /* decoupled, matrices only (0) */
    double clip;            /* global gradient-norm clip, 0: off (1.0) */
    double temperature;     /* > 0 (1) */
    int topk;               /* 0 (or >= vocab): full vocabulary; else teacher's top-k + rest */
    uint64_t seed;          /* data order, adapter init */
    enum lmp_distill_mode mode;
    int rank;               /* adapter rank, >= 1 (32) */
    int train_embd;         /* LORA: also train the token embedding and a float output head */
    enum lmp_distill_merge merge;
    int n_threads;          /* <= 0: OpenMP's default */
    const char *ckpt_path;  /* NULL: no checkpoints */
    int ckpt_every;         /* steps between checkpoints (100); <= 0: only when stopped */
    int resume;             /* continue from ckpt_path (which must exist) */
    int stop_at;            /* > 0: stop as if interrupted once this many steps are done */
    /* after every step; a nonzero return stops the run (a checkpoint is written first when
     * ckpt_path is set): an interruption */
    int (*progress)(void *user, const struct lmp_distill_progress *p);
    void *progress_user;
};
void lmp_distill_opts_default(struct lmp_distill_opts *o);

struct lmp_distill_report {
    enum lmp_distill_mode mode; /* FULL or LORA, as resolved */
    int first_step;             /* where this run started (resume) */
    int steps_done;             /* steps done when it returned */
    int stopped;                /* 1: stopped before the end (the student is not merged) */
    int resumed;                /* 1: started from a checkpoint */
    int64_t n_trained;          /* trained values (adapters + norms, or the tensors) */
    int n_adapters;             /* LORA: adapted matrices */
    int64_t adapter_params;     /* LORA: values in all A and B */
    double loss_first;          /* loss of this run's first step */
    double loss_last;           /* mean loss of the last min(10, steps run) steps */
    int64_t tokens;             /* tokens trained on in this run */
    double seconds;             /* wall time of the training loop */
    int n_ckpt;                 /* checkpoints written */
};

/* Checks the options and the models before any work: LMP_ERR_ARG with one line for a
 * teacher and student with different vocabularies, a data stream shorter than one
 * sequence, a non-positive learning rate or temperature, and other bad options;
 * LMP_ERR_UNSUPPORTED for FULL on a student with packed weights. */
enum lmp_status lmp_distill_check(const struct lmp_model *teacher, const struct lmp_model *student,
                                  int64_t n_ids, const struct lmp_distill_opts *o,
                                  struct lmp_err *err);

/* Distils teacher into student, in place: ids are the token ids of the training text (no
 * BOS). On success with rep->stopped == 0 the student holds the final weights (adapters
 * merged), ready to be saved; with rep->stopped == 1 it holds an intermediate state that
 * should not be saved (the checkpoint holds the run). rep may be NULL. On failure the
 * student may be half trained: free it. */
enum lmp_status lmp_distill(const struct lmp_model *teacher, struct lmp_model *student,
                            const int32_t *ids, int64_t n_ids, const struct lmp_distill_opts *o,
                            struct lmp_distill_report *rep, struct lmp_err *err);

/* ---- pieces, exposed for tests and tools ---------------------------------------------- */

/* Loss of one sequence (module comment): t_logits, s_logits (len, vocab); returns the sum
 * over positions of L_t (double sums; exponentials in float); dlogits (len, vocab), or NULL,
 * gets scale * dL_t/dz. scratch: lmp_distill_kl_scratch(vocab, topk) bytes, 4-byte aligned,
 * owned by the caller. */
size_t lmp_distill_kl_scratch(int vocab, int topk);
double lmp_distill_kl(const float *t_logits, const float *s_logits, int len, int vocab,
                      double temperature, int topk, float scale, float *dlogits, void *scratch);

/* The windows of step `step`: out (batch, seqlen) from ids (n_ids >= seqlen), first token of
 * each replaced by bos when bos >= 0. A pure function of its arguments. */
void lmp_distill_batch(const int32_t *ids, int64_t n_ids, int seqlen, int batch, uint64_t seed,
                       int64_t step, int bos, int32_t *out);

/* Learning rate of step (0-based) under o's schedule. */
double lmp_distill_lr(const struct lmp_distill_opts *o, int step);

#endif
