/* The CPU runtime: the llama forward pass over struct lmp_model, its kernels, and token
 * sampling.
 *
 * Conventions (see formats/model.h): weights are F32 row-major [out][in]; activations are
 * row-major (n, features), one row per token; RoPE is the interleaved-pairs kind.
 *
 * One forward is embed -> n_layers x lmp_rt_forward_layer -> lmp_rt_head. lmp_rt_forward
 * composes them; callers that need to act between layers (GPTQ, pruning statistics) call
 * the pieces themselves. struct lmp_rt_hooks receives the input of every linear layer, so
 * calibration statistics need no second copy of the forward.
 *
 * Every fast kernel (OpenBLAS sgemm, OpenMP matrix-vector, SIMD-friendly loops) has a
 * plain scalar *_ref sibling with the same signature; a state created with opts.ref = 1
 * uses only the *_ref kernels. Tests compare the two.
 */
#ifndef LMP_RUNTIME_H
#define LMP_RUNTIME_H

#include "formats/model.h"

#include <stdint.h>

/* ---- hooks --------------------------------------------------------------------------- */

/* Which linear layer an activation is the input of. Linears that share one input are
 * reported once. */
enum lmp_rt_linear {
    LMP_RT_QKV = 0,     /* wq, wk, wv: attn_norm(h)                  (n, dim) */
    LMP_RT_O = 1,       /* wo: attention output                      (n, n_heads*head_dim) */
    LMP_RT_GATE_UP = 2, /* w_gate, w_up: ffn_norm(h)                 (n, dim) */
    LMP_RT_DOWN = 3,    /* w_down: silu(gate(x)) * up(x)             (n, ffn) */
    LMP_RT_OUTPUT = 4,  /* output head: out_norm(h), layer = n_layers (n, dim) */
    LMP_RT_N_LINEAR = 5,
};
/* "qkv", "o", "gate_up", "down", "output" */
const char *lmp_rt_linear_name(enum lmp_rt_linear w);

struct lmp_rt_hooks {
    void *user;
    /* x: (n, in) row-major, valid during the call only. Called on the thread running the
     * forward, in forward order, once per linear and batch: lmp_rt_forward cuts its input
     * into batches of max_batch tokens, each run through every layer before the next.
     * NULL: no callback. */
    void (*linear_input)(void *user, int layer, enum lmp_rt_linear which, const float *x, int n,
                         int in);
    /* Calibration passes only (lmp_rt_forward_layer): when not NULL, (n, n_heads*head_dim)
     * taken as the layer's attention output instead of computing it: q/k/v, RoPE, the KV
     * cache and attention are skipped (and the qkv hook is not called). For passes that re-run
     * a layer whose input and q/k/v weights are those of a pass that saved this output (the
     * "o" input seen by linear_input), e.g. GPTQ's later stages of the same layer. */
    const float *attn;
};

/* ---- state and forward --------------------------------------------------------------- */

struct lmp_rt_opts {
    int n_threads; /* OpenMP threads inside one forward; <= 0: OpenMP's default; 1: none */
    int ref;       /* 1: scalar reference kernels only (slow; for testing) */
};

/* KV cache, RoPE table and scratch for batches of up to max_batch tokens: everything a
 * forward needs, so a forward never allocates. The model must outlive the state. F32
 * weights are read in place, so new values written into them are used by the next
 * forward; changing a tensor's data pointer, type or shape needs a new state. One state is
 * used by one thread at a time. */
struct lmp_rt_state;

/* Weights are read in place when F32; packed (Q2..Q8) linear weights go through the fused
 * dequantising kernels of runtime/qmatmul.h; F16, BF16 and a packed token embedding are
 * expanded to F32 here, once. Fails with LMP_ERR_ARG when
 * max_ctx is not in [1, cfg.max_ctx] or max_batch < 1, LMP_ERR_UNSUPPORTED for another weight
 * type, LMP_ERR_FORMAT for a malformed packed tensor, LMP_ERR_NOMEM when sizes overflow or
 * memory runs out. opts may be NULL (defaults). */
enum lmp_status lmp_rt_state_create(const struct lmp_model *m, int max_ctx, int max_batch,
                                    const struct lmp_rt_opts *opts, struct lmp_rt_state **out,
                                    struct lmp_err *err);
/* Another state with src's model, context and batch, sharing its weights (the expanded ones
 * too); its own cache and scratch. opts NULL: src's. */
enum lmp_status lmp_rt_state_create_like(const struct lmp_rt_state *src,
                                         const struct lmp_rt_opts *opts,
                                         struct lmp_rt_state **out, struct lmp_err *err);
void lmp_rt_state_free(struct lmp_rt_state *s); /* accepts NULL */

/* Forgets the KV cache of every layer. */
void lmp_rt_reset(struct lmp_rt_state *s);
/* Positions held in the KV cache of the last layer. */
int lmp_rt_n_past(const struct lmp_rt_state *s);
int lmp_rt_max_ctx(const struct lmp_rt_state *s);
int lmp_rt_max_batch(const struct lmp_rt_state *s);
const struct lmp_model *lmp_rt_model(const struct lmp_rt_state *s);

/* Processes tokens[0..n) at positions pos..pos+n-1, any n >= 1 (batches of max_batch
 * inside), pos <= positions already cached (appends, or rewinds to pos). logits: (n, vocab)
 * or NULL. Errors (LMP_ERR_ARG): a token id outside the vocabulary, pos + n > max_ctx,
 * pos past the cached positions. */
enum lmp_status lmp_rt_forward(struct lmp_rt_state *s, const int32_t *tokens, int n, int pos,
                               float *logits, const struct lmp_rt_hooks *hooks,
                               struct lmp_err *err);

/* Like lmp_rt_forward but runs only layers [0, n_layers) (0 <= n_layers <= cfg.n_layers)
 * and writes the residual stream h (n, dim) instead of logits. */
enum lmp_status lmp_rt_forward_hidden(struct lmp_rt_state *s, const int32_t *tokens, int n,
                                      int pos, int n_layers, float *h,
                                      const struct lmp_rt_hooks *hooks, struct lmp_err *err);

/* The pieces of a forward; h is (n, dim), the residual stream. */
/* h = token embeddings; any n. */
enum lmp_status lmp_rt_embed(struct lmp_rt_state *s, const int32_t *tokens, int n, float *h,
                             struct lmp_err *err);
/* One transformer block in place on h (n <= max_batch); writes K/V of positions
 * pos..pos+n-1 into the layer's cache (pos <= positions already cached for that layer). */
enum lmp_status lmp_rt_forward_layer(struct lmp_rt_state *s, int layer, float *h, int n, int pos,
                                     const struct lmp_rt_hooks *hooks, struct lmp_err *err);
/* Final norm and output head: logits (n, vocab) from h (n, dim); any n. */
enum lmp_status lmp_rt_head(struct lmp_rt_state *s, const float *h, int n, float *logits,
                            const struct lmp_rt_hooks *hooks, struct lmp_err *err);

/* ---- kernels ------------------------------------------------------------------------- */
/* n_threads <= 0: OpenMP's default; 1: no parallel region (safe inside one). */

/* y (n, out) = x (n, in) . w^T + b; w (out, in); b (out) or NULL.
 * Fast: n == 1 OpenMP matrix-vector over rows; n > 1 cblas_sgemm. */
void lmp_rt_matmul(float *y, const float *x, const float *w, const float *b, int n, int in,
                   int out, int n_threads);
void lmp_rt_matmul_ref(float *y, const float *x, const float *w, const float *b, int n, int in,
                       int out, int n_threads);

/* y (n, dim) = x / sqrt(mean(x^2) + eps) * w, row by row; y may equal x. */
void lmp_rt_rmsnorm(float *y, const float *x, const float *w, int n, int dim, float eps);
void lmp_rt_rmsnorm_ref(float *y, const float *x, const float *w, int n, int dim, float eps);

/* cs (n, hd/2, 2) = {cos, sin} of p * theta^(-2i/hd) for p = pos0..pos0+n-1; the angle is
 * rounded to float as transformers rounds it, cos/sin evaluated in double. */
void lmp_rt_rope_table(float *cs, int pos0, int n, int hd, float theta);
/* Rotates pairs (2i, 2i+1) of every head of x (n, n_heads*hd) in place by the angles of
 * row r of cs (cs + r*hd, layout of lmp_rt_rope_table). */
void lmp_rt_rope(float *x, int n, int n_heads, int hd, const float *cs);
void lmp_rt_rope_ref(float *x, int n, int n_heads, int hd, const float *cs);

/* Causal attention of queries at positions pos..pos+n-1 over cached positions 0..pos+n-1.
 * q (n, n_heads*hd); out (n, n_heads*hd); kc, vc: the cache, (n_kv, hd, ld), position
 * innermost (ld >= pos+n); query head h reads kv head h / (n_heads / n_kv). Scores are
 * scaled by 1/sqrt(hd); softmax in float. scratch: lmp_rt_threads(n_threads) * 8 * (pos+n)
 * floats. */
void lmp_rt_attention(float *out, const float *q, const float *kc, const float *vc, int ld, int n,
                      int pos, int n_heads, int n_kv, int hd, float *scratch, int n_threads);
void lmp_rt_attention_ref(float *out, const float *q, const float *kc, const float *vc, int ld,
                          int n, int pos, int n_heads, int n_kv, int hd, float *scratch,
                          int n_threads);

/* g[i] = silu(g[i]) * u[i] for i < count. */
void lmp_rt_swiglu(float *g, const float *u, long count);
void lmp_rt_swiglu_ref(float *g, const float *u, long count);

/* The number of threads a kernel given n_threads uses (>= 1). */
int lmp_rt_threads(int n_threads);

/* ---- sampling ------------------------------------------------------------------------ */

/* Temperature / top-p sampler with its own PRNG (PCG32): the same seed gives the same
 * tokens. */
struct lmp_rt_sampler;
/* temp >= 0 (0: greedy), top_p in (0, 1] (1: off). */
enum lmp_status lmp_rt_sampler_create(int vocab, float temp, float top_p, uint64_t seed,
                                      struct lmp_rt_sampler **out, struct lmp_err *err);
void lmp_rt_sampler_free(struct lmp_rt_sampler *s); /* accepts NULL */
/* temp == 0: argmax. Else softmax(logits / temp), restricted to the smallest set of most
 * probable tokens whose mass reaches top_p, then one draw. logits (vocab) is not changed. */
int lmp_rt_sample(struct lmp_rt_sampler *s, const float *logits);
/* Index of the largest value, the lowest index on ties. */
int lmp_rt_argmax(const float *x, int n);

#endif
