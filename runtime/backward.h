/* Training-style forward and backward of the llama model of runtime.h: gradients of a loss
 * with respect to the weights, for Taylor pruning importance (prune/) and distillation
 * (distill/).
 *
 * The forward is built from the kernels of runtime.h (lmp_rt_matmul, lmp_rt_rmsnorm,
 * lmp_rt_rope, lmp_rt_attention, lmp_rt_swiglu) in the order lmp_rt_forward_layer runs them,
 * so its logits are those of lmp_rt_forward; unlike the inference forward it keeps every
 * activation the backward needs, per sequence, in a workspace. Attention probabilities are
 * not kept: the backward recomputes them from q and k, head by head (O(len^2) floats of
 * scratch instead of O(layers * heads * len^2)).
 *
 * A batch is a set of independent sequences of equal length, each starting at position 0
 * (no KV cache). Sequences run in parallel, one per OpenMP thread, each with single-threaded
 * kernels. The loss is given to the backward as dL/dlogits. Gradients of the sequences are
 * added in sequence order, so the result does not depend on the number of threads.
 *
 * Gradients are taken with respect to the F32 values the forward uses: for F16, BF16 and
 * packed tensors (expanded to F32 once, when the context is created) that is the expanded
 * value. F32 tensors are read in place at every forward, so an optimizer may update them
 * between steps; changing a tensor's data pointer, type or shape needs a new context.
 *
 * Layouts: as runtime.h, weights (out, in) row-major, activations (len, features).
 */
#ifndef LMP_BACKWARD_H
#define LMP_BACKWARD_H

#include "runtime.h"

#include <stddef.h>
#include <stdint.h>

/* ---- gradient buffers -------------------------------------------------------------- */

/* One F32 buffer per wanted model tensor, same shape and layout as the tensor. A tied
 * output head is the tensor tok_embd: its one buffer receives both uses. */
struct lmp_rt_grads {
    int n;          /* the model's n_tensors */
    float **g;      /* (n): gradient of m->tensors[i], or NULL when not wanted */
    size_t *off;    /* (n): offset of g[i] in mem (floats); unused when g[i] is NULL */
    size_t n_floats; /* total floats of all wanted buffers */
    float *mem;     /* (n_floats), the one allocation holding every buffer */
};

/* want: (m->n_tensors) flags, nonzero for each tensor whose gradient is wanted; NULL: every
 * float tensor. Buffers start at zero. Only float and packed tensors can have gradients
 * (others: LMP_ERR_ARG). *out is owned by the caller: lmp_rt_grads_free. */
enum lmp_status lmp_rt_grads_create(const struct lmp_model *m, const unsigned char *want,
                                    struct lmp_rt_grads **out, struct lmp_err *err);
void lmp_rt_grads_zero(struct lmp_rt_grads *g);
void lmp_rt_grads_scale(struct lmp_rt_grads *g, float s);
void lmp_rt_grads_free(struct lmp_rt_grads *g); /* accepts NULL */
/* The gradient buffer of tensor t (a tensor of the model g was made for), or NULL. */
float *lmp_rt_grads_of(const struct lmp_rt_grads *g, const struct lmp_model *m,
                       const struct lmp_tensor *t);

/* ---- the training context ---------------------------------------------------------- */

struct lmp_rt_train_opts {
    int n_threads; /* sequences run in parallel; <= 0: OpenMP's default */
};

/* Weights, per-sequence workspaces and scratch. One context is used by one thread at a
 * time (it spreads its own work over threads). */
struct lmp_rt_train;

/* Room for max_seqs sequences of up to max_len tokens (max_len <= cfg.max_ctx). The model
 * must be bound and outlive the context. Errors: LMP_ERR_ARG for bad sizes or an unbound
 * model, LMP_ERR_UNSUPPORTED for a tensor type the runtime does not run, LMP_ERR_NOMEM. */
enum lmp_status lmp_rt_train_create(const struct lmp_model *m, int max_len, int max_seqs,
                                    const struct lmp_rt_train_opts *opts,
                                    struct lmp_rt_train **out, struct lmp_err *err);
void lmp_rt_train_free(struct lmp_rt_train *tr); /* accepts NULL */

/* The F32 values the forward reads for tensor t of the model (NULL for a tensor it does not
 * read): the tensor's own data when it is F32, else the context's expanded copy. Writable:
 * e.g. a distillation of a quantized student keeps dequant(W) + B A (a merged low-rank
 * adapter) here and turns dL/dW into the adapter's gradients (dB = dW A^T, dA = B^T dW). */
float *lmp_rt_train_weight(struct lmp_rt_train *tr, const struct lmp_tensor *t);

/* Forward of n_seq <= max_seqs sequences of len tokens, tokens (n_seq, len), keeping the
 * activations for lmp_rt_train_backward. logits (n_seq, len, vocab) or NULL. Errors
 * (LMP_ERR_ARG): sizes outside the context's, a token outside the vocabulary. */
enum lmp_status lmp_rt_train_forward(struct lmp_rt_train *tr, const int32_t *tokens, int n_seq,
                                     int len, float *logits, struct lmp_err *err);

/* Backward of the last lmp_rt_train_forward for the loss L whose gradient with respect to
 * its logits is dlogits (n_seq, len, vocab): adds dL/dw to every buffer of g. g_sq (NULL, or
 * made with the same 'want' as g) receives the sum over sequences of the squared
 * per-sequence gradients (diagonal Fisher / second-order Taylor statistics). Layers below the
 * lowest one with a wanted gradient are not visited. LMP_ERR_ARG without a forward before it
 * or with buffers made for another model. */
enum lmp_status lmp_rt_train_backward(struct lmp_rt_train *tr, const float *dlogits,
                                      struct lmp_rt_grads *g, struct lmp_rt_grads *g_sq,
                                      struct lmp_err *err);

/* A loss over one sequence: from its logits (len, vocab) writes dlogits (len, vocab) and
 * *loss. Called from several threads at once (seq tells which sequence), so it must be
 * thread-safe; 'thread' in [0, lmp_rt_threads(opts.n_threads)) indexes per-thread scratch
 * the caller may keep. A non-OK status (with err filled) stops the step. */
typedef enum lmp_status (*lmp_rt_loss_fn)(void *user, int thread, int seq,
                                          const int32_t *tokens, int len, const float *logits,
                                          int vocab, float *dlogits, double *loss,
                                          struct lmp_err *err);

/* Forward, loss and backward of n_seq sequences (any number: they stream through the
 * workspaces, at most max_seqs at a time), adding gradients to g (and squared per-sequence
 * gradients to g_sq, may be NULL) in sequence order. *loss (may be NULL) = the sum of the
 * sequences' losses. */
enum lmp_status lmp_rt_train_step(struct lmp_rt_train *tr, const int32_t *tokens, int n_seq,
                                  int len, lmp_rt_loss_fn loss_fn, void *user,
                                  struct lmp_rt_grads *g, struct lmp_rt_grads *g_sq,
                                  double *loss, struct lmp_err *err);

/* Next-token cross entropy of one sequence: position t < len-1 predicts tokens[t+1]. Returns
 * the sum of the len-1 negative log-likelihoods (computed in double); dlogits (len, vocab),
 * or NULL, gets scale * (softmax - onehot) at those positions and 0 in the last row. */
double lmp_rt_loss_ce(const float *logits, const int32_t *tokens, int len, int vocab,
                      float scale, float *dlogits);

/* ---- backward kernels -------------------------------------------------------------- */
/* Each fast kernel has a scalar *_ref sibling with the same signature (tests compare them).
 * RoPE needs no kernel of its own: its backward is lmp_rt_rope with the sines negated. */

/* For y = rmsnorm(x) * w, row by row over x (n, dim): dx += dL/dx given dy (n, dim);
 * dw (dim) += dL/dw when not NULL. */
void lmp_rt_rmsnorm_bwd(float *dx, float *dw, const float *x, const float *w, const float *dy,
                        int n, int dim, float eps);
void lmp_rt_rmsnorm_bwd_ref(float *dx, float *dw, const float *x, const float *w,
                            const float *dy, int n, int dim, float eps);

/* For a = silu(g) * u: dg = da * u * silu'(g), du = da * silu(g) (written, count values). */
void lmp_rt_swiglu_bwd(float *dg, float *du, const float *g, const float *u, const float *da,
                       long count);
void lmp_rt_swiglu_bwd_ref(float *dg, float *du, const float *g, const float *u,
                           const float *da, long count);

/* Backward of causal attention from position 0 (lmp_rt_attention with pos = 0, ld = n):
 * q (n, n_heads*hd) after RoPE; kt, vt (n_kv*hd, n) position innermost, K after RoPE; datt
 * (n, n_heads*hd) the gradient of the attention output. Writes dq (n, n_heads*hd) and dkt,
 * dvt (n_kv*hd, n). Probabilities are recomputed (softmax in float, expf). scratch: 2*n*n
 * floats. Single-threaded. */
void lmp_rt_attention_bwd(float *dq, float *dkt, float *dvt, const float *q, const float *kt,
                          const float *vt, const float *datt, int n, int n_heads, int n_kv,
                          int hd, float *scratch);
void lmp_rt_attention_bwd_ref(float *dq, float *dkt, float *dvt, const float *q,
                              const float *kt, const float *vt, const float *datt, int n,
                              int n_heads, int n_kv, int hd, float *scratch);

#endif
