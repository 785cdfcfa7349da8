/* The CUDA runtime: the forward pass of runtime/runtime.h on an NVIDIA GPU, perplexity and
 * GPTQ on top of it, and a Llama-shaped model with random weights made on the device (for
 * benchmarks). Built by `make cuda` into build/cuda/liblmpress_cuda.a; a C API, so the
 * CLI, tests and benchmarks stay C.
 *
 * Conventions are the CPU runtime's (formats/model.h, runtime/runtime.h): weights row-major
 * [out][in], activations row-major (n, features), interleaved RoPE. Weights are uploaded
 * once, when a state is created: F32 stays F32, F16 stays F16, packed Q2/Q3/Q4/Q8 stay
 * packed (formats/qpack.h); BF16 and packed embeddings are expanded to F32.
 *
 * Kernels (runtime/cuda/kernels.cu): prefill and perplexity (n > 1 tokens) use cuBLAS
 * sgemm in fp32 (F16 and packed weights expanded into an fp32 scratch first), so GPU
 * logits match the CPU's to float rounding; decode (n == 1) uses fused matrix-vector
 * kernels that read every weight once (packed ones dequantised in registers), replayed
 * as one CUDA graph per token. RMSNorm, RoPE, causal GQA attention with the softmax fused
 * in, SwiGLU and the KV cache are kernels of their own. Each has a host-buffer entry
 * point below (lmp_cuda_k_*) that the tests compare with the CPU *_ref kernels.
 *
 * Errors: no CUDA device (or no driver) -> LMP_ERR_UNSUPPORTED "no CUDA device: ...";
 * device memory exhausted -> LMP_ERR_UNSUPPORTED "out of GPU memory: ..." (the model does
 * not fit this card; the CLI exits 2 for both). Only cudaMalloc is used, never managed
 * memory. Library functions print nothing. */
#ifndef LMP_RT_CUDA_H
#define LMP_RT_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "formats/model.h"
#include "formats/qpack.h"
#include "runtime/runtime.h"

/* ---- device ------------------------------------------------------------------------- */

struct lmp_cuda_info {
    char name[256];
    int cc_major, cc_minor;
    int n_sm;
    size_t mem_total, mem_free; /* bytes */
    int driver_version, runtime_version;
};

/* Fills info for device `device` (0 for the first). LMP_ERR_UNSUPPORTED when there is no
 * such device or no working driver. */
enum lmp_status lmp_cuda_probe(int device, struct lmp_cuda_info *info, struct lmp_err *err);

/* ---- runtime state -------------------------------------------------------------------- */

struct lmp_cuda_opts {
    int device;       /* CUDA device index */
    int weights_f16;  /* store F32 linear weights (and the output head) as fp16 */
    int exact_gemv;   /* decode through the fp32 matrix-vector kernels only (no fp16 Q4 path) */
    int no_graph;     /* decode without CUDA graphs (launch every kernel) */
    int no_fuse;      /* decode one matrix-vector product per launch (no q/k/v, gate/up+SwiGLU
                         or RMSNorm+Q4-input fusion): for comparisons */
    int gemv_warps;   /* decode: warps per matrix-vector block splitting the columns (1, 2, 4
                         or 8; 0: the default, 4, the fastest measured) */
    int legacy_decode; /* 4-bit decode through the per-product kernels above instead of the
                         fused streaming kernels (decode_q4.cu): for comparisons */
    int no_pdl;       /* launch the fused 4-bit decode kernels without programmatic
                         dependent launch */
    int q4_warps;     /* warps per block of the fused 4-bit decode kernels (8 or 16; 0: 16) */
    int q4_bps;       /* their blocks per SM (0: as many as fit at once) */
    int q4_pipe;      /* their software pipelining: 0 the default (on), 1 on, 2 off */
    int q4_mega;      /* 4-bit decode as one persistent kernel for the whole step (grid-wide
                         barriers between the phases) instead of five launches per layer; off
                         by default: measured 36.8 % vs 38.0 % of copy (docs/GPU.md) */
    int no_q4t;       /* 4-bit decode through the row-streaming kernels above instead of the
                         tensor-core tile kernels (decode_q4t.cu; no tile copy of the weights
                         is made): for comparisons */
    int q4t_depth;    /* the tile kernels' shape: 0 the default (32 warps per block, each with
                         2 items of 1 KB in flight; gate/up 16 warps, 3 of 2 KB), 1 (16 warps;
                         6, 4), 2 (16 warps; 4, 3: the default until measured 47.8 vs 46.1 %),
                         3 (32 warps; 3, 2); through a shared-memory ring filled by bulk
                         copies: 4 (16 warps, 8 stages of 1 KB; gate/up 4 of 2 KB), 5 (32
                         warps; 4, 2), 6 (16 warps; 4, 2); with the warps taking the block's
                         items in turn (not contiguous shares): 7 (as 0), 8 (as 2), 9 (as 6); co-resident
                         (a q/k/v or gate/up block and an o or down block fit on one SM
                         together, so each launch's blocks start while the one before runs):
                         10 (18 and 14 warps, 2 items in flight), 11 (as 10, and as many
                         items per warp as fit copied into shared memory before the
                         dependency), 12 (as 10, every item through a shared-memory ring
                         filled by cp.async, its first slots before the dependency); see
                         lmp_cuda_q4t_coresident */
    int att_pack;     /* decode attention one block per head over all positions, as before
                         (comparisons; the default splits each head's positions over several
                         blocks and combines their parts) */
    int att_shares;   /* shares per head of the split decode attention (at most 16; clusters of
                         over 8 where the device places them); 0: about 2 blocks per SM (8 for
                         32 heads on 132 SMs; 16 through global memory is better from ~1000
                         positions, docs/GPU.md) */
    int att_combine;  /* how the split attention's parts are combined: 0 the default
                         (ATT_COMBINE), 1 by the last block of a head through global memory and
                         a counter (before session 18), 2 a head's blocks one thread block
                         cluster, through distributed shared memory */
    int att_long;     /* decode positions from which the split attention takes 16 shares combined
                         through global memory (below: ~2 blocks per SM as one cluster per
                         head); 0: 256 (ATT_LONG); only when att_shares and att_combine are
                         not given; each setting has its own decode graph */
    int q4t_prep;     /* input preparation of the tile kernels: 0 the default (1), 1 one pass
                         from registers where the input fits (up to 3 float4s a thread), 2 two passes
                         through an fp32 copy in shared memory (before session 18); the same
                         fragments (docs/GPU.md) */
    int att_o;        /* 4-bit tile decode where the head size is 128, how the attention meets o:
                         0 the default (2), 2 separate launches (the attention combines its
                         shares, o splits by rows), 6 o by heads (q4t_ohkernel: the attention
                         writes its parts, each o block combines one head's in one warp and
                         multiplies it with its share of W_o's rows of that head, added into
                         the residual by atomics: last-bit differences between runs), 7 the
                         same with the combine in ceil(S / 4) warps, 8 as 7 with the heads'
                         products added as fixed-point integers (2^-32), which gate/up and
                         down add to the residual (the same logits in every run); docs/GPU.md
                         sessions 20 and 21 (1, 3-5, the attention and o in one launch, were
                         removed) */
    int q4t_diag;     /* diagnostics of the tile decode, parts skipped (wrong logits), bits: 1 the
                         input preparation, 2 the attention launch, 4 the block outputs
                         (what the weight phases cost without the fixed parts; docs/GPU.md) */
    int q4t_timeline; /* the tile kernels record per block when they start, pass the dependency,
                         have the input, have read the weights and end (lmp_cuda_timeline) */
    int q4t_persist;  /* 4-bit decode of all layers as one persistent kernel over the tile
                         layout (decode_q4p.cu: the weights stream through a shared-memory
                         ring ahead of the phases' dependencies) where every layer takes the
                         tile kernels: 0 the default, 1 on, 2 off */
    int q4p_flags;    /* its variants (comparisons), bits: 1 the ring filled by cp.async, not
                         TMA; 2 diagnostics: the products skipped (wrong logits); 4 a 17th warp
                         per block issues every copy (TMA) */
    int q4p_slots;    /* its ring slots per warp at most (0: as many as fit, up to 16) */
};

struct lmp_cuda_state;

/* After a state was created: NULL when q4t_depth 10 and 11 run co-resident on this device,
 * else why they run as 0. */
const char *lmp_cuda_q4t_coresident(void);

/* Uploads the model's weights and allocates the KV cache for max_ctx positions and scratch
 * for batches of up to max_batch tokens. The model may be freed afterwards (nothing on the
 * host is kept). Errors as lmp_rt_state_create, plus the device errors above. opts may be
 * NULL (defaults). */
enum lmp_status lmp_cuda_state_create(const struct lmp_model *m, int max_ctx, int max_batch,
                                      const struct lmp_cuda_opts *opts,
                                      struct lmp_cuda_state **out, struct lmp_err *err);
void lmp_cuda_state_free(struct lmp_cuda_state *s); /* accepts NULL */
/* With opts.q4t_timeline: copies the last decode step's timeline into out (up to n values:
 * slot (layer * 4 + product, head n_layers * 4) x block x 10: %globaltimer ns at start,
 * after the dependency, after the input, after the weights, at the end, then clock64 at
 * the same points), then per layer 128 heads x 8 (the attention launch: %globaltimer at
 * start, after the dependency, at the end, after its q, scores, softmax, P V and 0); returns
 * the blocks per slot, 0 without one. */
int lmp_cuda_timeline(const struct lmp_cuda_state *s, unsigned long long *out, size_t n);
/* With opts.q4t_timeline and the persistent tile kernel (q4t_persist): the last step's
 * %globaltimer ns per (layer, phase: q/k/v, attention, o, gate/up, down, block) at the
 * phase's start, past its wait, with its input ready, at its end, then the clocks warp 0
 * waited for its ring's slots and spent refilling them (6 values; the attention has only the first,
 * second and fourth); returns the blocks, 0 without one. */
int lmp_cuda_q4p_timeline(const struct lmp_cuda_state *s, unsigned long long *out, size_t n);

void lmp_cuda_reset(struct lmp_cuda_state *s);
int lmp_cuda_n_past(const struct lmp_cuda_state *s);
int lmp_cuda_max_ctx(const struct lmp_cuda_state *s);

/* As lmp_rt_forward: tokens[0..n) at positions pos.., logits (n, vocab) on the host or
 * NULL. n == 1 runs the decode path (matrix-vector kernels, CUDA graph). */
enum lmp_status lmp_cuda_forward(struct lmp_cuda_state *s, const int32_t *tokens, int n, int pos,
                                 float *logits, struct lmp_err *err);

/* One decode step (token at pos, pos <= positions cached) through the captured graph,
 * asynchronous: logits stay on the device unless logits (vocab) is given, in which case the
 * call waits for them. lmp_cuda_sync waits for the queued steps. */
enum lmp_status lmp_cuda_decode(struct lmp_cuda_state *s, int32_t token, int pos, float *logits,
                                struct lmp_err *err);
enum lmp_status lmp_cuda_sync(struct lmp_cuda_state *s, struct lmp_err *err);

/* Per-linear input hook with DEVICE pointers: x (n, in) row-major in device memory, valid
 * during the call; called on the forward's stream (synchronise before reading it on the
 * host, or enqueue device work on the same stream: see lmp_cuda_stream). */
struct lmp_cuda_hooks {
    void *user;
    void (*linear_input)(void *user, int layer, enum lmp_rt_linear which, const float *x_dev,
                         int n, int in);
};

/* One transformer block in place on h_dev (n, dim) in device memory (n <= max_batch), as
 * lmp_rt_forward_layer. */
enum lmp_status lmp_cuda_forward_layer(struct lmp_cuda_state *s, int layer, float *h_dev, int n,
                                       int pos, const struct lmp_cuda_hooks *hooks,
                                       struct lmp_err *err);
/* h_dev (n, dim) = embeddings of tokens (host), n <= max_batch. */
enum lmp_status lmp_cuda_embed(struct lmp_cuda_state *s, const int32_t *tokens, int n,
                               float *h_dev, struct lmp_err *err);

/* The cudaStream_t every kernel of the state runs on (as void *). */
void *lmp_cuda_stream(const struct lmp_cuda_state *s);

/* Bytes of weights one decode token reads: every linear of every layer and the output head
 * (codes, scales and zeros of packed ones), i.e. what the matrix-vector kernels stream. */
double lmp_cuda_decode_weight_bytes(const struct lmp_cuda_state *s);

/* Replaces a linear weight on the device by W (rows, cols) F32 on the host or device
 * (is_dev); the weight must be stored as F32. For GPTQ: later stages see quantized weights. */
enum lmp_status lmp_cuda_set_linear_f32(struct lmp_cuda_state *s, int layer, int which_mat,
                                        const float *W, int is_dev, struct lmp_err *err);

/* ---- a random Llama-shaped model, made on the device ------------------------------------ */

enum lmp_cuda_wtype {
    LMP_CUDA_W_F32 = 0,
    LMP_CUDA_W_F16 = 1,
    LMP_CUDA_W_PACKED = 2, /* bits/group below */
};

/* A state whose weights are drawn on the device from seed (nothing on the host): cfg gives
 * dim, n_layers, head_dim, vocab, norm_eps, rope_theta and cfg->layer shapes; linear
 * weights (and the output head) of type wt (packed: bits, group; group 0 = per-channel).
 * Embeddings and norms are F32. For benchmarks of a model shape nobody has to download. */
enum lmp_status lmp_cuda_state_create_random(const struct lmp_config *cfg, int max_ctx,
                                             int max_batch, enum lmp_cuda_wtype wt, int bits,
                                             int group, uint64_t seed,
                                             const struct lmp_cuda_opts *opts,
                                             struct lmp_cuda_state **out, struct lmp_err *err);

/* ---- perplexity ----------------------------------------------------------------------- */

struct lmp_eval_opts;
struct lmp_eval_result;
/* lmp_eval_ppl (eval/eval.h) on the GPU: same protocols, chunks and statistics; the
 * options save_logits and kl_base are not supported (LMP_ERR_UNSUPPORTED). opts->ref is
 * ignored. n_threads unused. */
enum lmp_status lmp_cuda_eval_ppl(const struct lmp_model *m, const int32_t *ids, int64_t n_ids,
                                  const struct lmp_eval_opts *opts, struct lmp_eval_result *res,
                                  int device, struct lmp_err *err);

/* ---- GPTQ ----------------------------------------------------------------------------- */

struct lmp_quant_opts;
struct lmp_quant_model_opts;
struct lmp_quant_report;
struct lmp_qtensor_out;

/* lmp_quant_gptq_matrix on the GPU: W (rows, cols) and H (cols, cols, upper triangle
 * read) on the host; the same algorithm (order, dead columns, damping retries, the
 * upper Cholesky factor of the damped inverse through cuSOLVER in double, blocked sweep
 * with the lazy updates as cuBLAS sgemm). opts->refine and opts->ref_quirks are not
 * supported (LMP_ERR_UNSUPPORTED). */
enum lmp_status lmp_cuda_gptq_matrix(const float *W, int rows, int cols, const float *H,
                                     const struct lmp_quant_opts *o,
                                     struct lmp_qtensor_out *out, float *W_hat_out, int device,
                                     struct lmp_err *err);

/* lmp_quant_model (quantize/quant_model.h) with calibration forward, Hessians, the
 * inverse-Hessian factor and the sweep on the GPU. Method RTN runs the CPU path. */
enum lmp_status lmp_cuda_quant_model(struct lmp_model *m, const int32_t *calib, int64_t n_calib,
                                     const struct lmp_quant_model_opts *o,
                                     struct lmp_quant_report *rep, int device,
                                     struct lmp_err *err);

/* GPTQ timing on a random model shape (bench/cuda_gptq.c): for every layer of cfg, random
 * correlated calibration activations (n_tok rows) are drawn on the device for the inputs of
 * q/k/v, o, gate/up and down, the four Hessians accumulated (cuBLAS syrk), and the seven
 * random weight matrices quantized by GPU GPTQ with o, codes and params copied to the
 * host. seconds[0] total, [1] activations, [2] Hessians, [3] factors, [4] sweeps incl.
 * copies. */
enum lmp_status lmp_cuda_gptq_bench(const struct lmp_config *cfg, int64_t n_tok,
                                    const struct lmp_quant_opts *o, uint64_t seed, int device,
                                    void (*progress)(void *user, int layers_done, int n_layers,
                                                     double seconds),
                                    void *progress_user, double seconds[5],
                                    struct lmp_err *err);

/* ---- kernels on host buffers (tests) ----------------------------------------------------
 * Each uploads its inputs, fills the output on the device with NaN first (poison), runs the
 * kernel, downloads. Same signatures and meaning as the CPU kernels of runtime.h /
 * qmatmul.h. */
enum lmp_status lmp_cuda_k_rmsnorm(float *y, const float *x, const float *w, int n, int dim,
                                   float eps, struct lmp_err *err);
enum lmp_status lmp_cuda_k_rope(float *x, int n, int n_heads, int hd, const float *cs,
                                struct lmp_err *err);
/* kc, vc: (n_kv, hd, ld) position innermost, as the CPU cache (converted inside) */
enum lmp_status lmp_cuda_k_attention(float *out, const float *q, const float *kc,
                                     const float *vc, int ld, int n, int pos, int n_heads,
                                     int n_kv, int hd, struct lmp_err *err);
enum lmp_status lmp_cuda_k_swiglu(float *g, const float *u, long count, struct lmp_err *err);
/* y (n, out) = x (n, in) W^T + b through the cuBLAS path (n > 1) or the matrix-vector
 * kernel (n == 1); f16: W given as fp16 bits. */
enum lmp_status lmp_cuda_k_matmul(float *y, const float *x, const void *w, int w_f16,
                                  const float *b, int n, int in, int out, struct lmp_err *err);
/* packed: y (n, rows) = X (n, cols) W^T; variant 0: fp32 matrix-vector kernel (n == 1),
 * 1: fp16 Q4 kernel (n == 1), 2: dequantise + sgemm (any n), 3: the fused 4-bit decode
 * kernel (Q4F_PLAIN, row by row), 4: its gate/up form with W as both, so Y = silu(XW^T) *
 * (XW^T). 3 and 4 give LMP_ERR_UNSUPPORTED for a matrix they do not take (not 4-bit, perm,
 * cols not a multiple of 32). 5 and 6: the same through the tensor-core tile kernels
 * (decode_q4t.cu; unsupported unless 4-bit, no perm, cols % 128 == 0 and one group per row
 * or groups of 128 * 2^k). */
/* Mean microseconds per launch of a kernel that only reads `bytes` (reps launches back to
 * back): pattern 0 grid-stride 16-byte loads; 1, 2: every warp a contiguous share of 1 KB
 * items with 4 or 8 in flight, one 16-warp block per SM (the decode kernels' pattern); 3: the
 * same with 2 blocks per SM; 4: 2 in flight, 4 blocks per SM. */
enum lmp_status lmp_cuda_read_probe(size_t bytes, int pattern, int reps, float *us,
                                    struct lmp_err *err);
/* How decode (one token) runs on this state: the layers and whether the head go through
 * the tensor-core tile kernels (decode_q4t.cu). */
void lmp_cuda_decode_info(const struct lmp_cuda_state *s, int *tile_layers, int *tile_head);
/* Whether decode steps run every layer as the persistent tile kernel (opts.q4t_persist):
 * its ring slots per warp, 0 when they do not. */
int lmp_cuda_decode_persistent(struct lmp_cuda_state *s);
/* The layers whose o ran by heads (opts.att_o 6, 7) in the last decode step and the
 * attention's shares per head there (the most of any layer; 0: none). */
void lmp_cuda_decode_att_o(const struct lmp_cuda_state *s, int *layers, int *shares);
enum lmp_status lmp_cuda_k_qmatmul(const struct lmp_qview *w, const float *X, int n, float *Y,
                                   int variant, struct lmp_err *err);
/* row-wise negative log-likelihood: nll[i] = logsumexp(logits[i]) - logits[i][target[i]] */
enum lmp_status lmp_cuda_k_nll(double *nll, const float *logits, const int32_t *target, int n,
                               int vocab, struct lmp_err *err);

#ifdef __cplusplus
}
#endif

#endif
