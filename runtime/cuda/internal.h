/* Private to runtime/cuda: the device-side state, weight descriptors and the kernel
 * launchers shared by rt_cuda.cu, gptq_cuda.cu and ktest.cu. CUDA C++ only. */
#ifndef LMP_RT_CUDA_INTERNAL_H
#define LMP_RT_CUDA_INTERNAL_H

#include "rt_cuda.h"

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <stddef.h>
#include <stdint.h>

/* ---- errors ---------------------------------------------------------------------------- */

/* Status for a CUDA error: allocation failures and missing devices are
 * LMP_ERR_UNSUPPORTED (the CLI exits 2), others LMP_ERR_INTERNAL; the message names what
 * was being done. */
enum lmp_status cu_fail(struct lmp_err *err, cudaError_t e, const char *what);
enum lmp_status cu_blas_fail(struct lmp_err *err, cublasStatus_t e, const char *what);

#define CU_TRY(call, what)                                                                 \
    do {                                                                                   \
        cudaError_t e_ = (call);                                                           \
        if (e_ != cudaSuccess) return cu_fail(err, e_, what);                              \
    } while (0)
#define CU_LAUNCHED(what) CU_TRY(cudaGetLastError(), what)
#define BLAS_TRY(call, what)                                                               \
    do {                                                                                   \
        cublasStatus_t e_ = (call);                                                        \
        if (e_ != CUBLAS_STATUS_SUCCESS) return cu_blas_fail(err, e_, what);               \
    } while (0)

/* Device allocation of n bytes with a clear message on failure ("out of GPU memory:
 * <what> needs X MiB, Y MiB free of Z MiB"). */
enum lmp_status cu_alloc(void **p, size_t n, const char *what, struct lmp_err *err);
/* Selects the device and checks it exists. */
enum lmp_status cu_use_device(int device, struct lmp_err *err);

/* ---- weights --------------------------------------------------------------------------- */

enum cu_kind { CU_F32 = 0, CU_F16 = 1, CU_PACKED = 2 };

/* One linear weight (rows = out, cols = in) on the device. */
struct cu_mat {
    int kind;
    int rows, cols;
    float *f32;         /* (rows, cols) */
    __half *f16;        /* (rows, cols) */
    uint8_t *codes;     /* (rows, row_bytes), allocation padded by 64 bytes */
    size_t row_bytes;
    int bits, group, n_groups;
    __half *scales;     /* (rows, n_groups) */
    __half *zeros;      /* (rows, n_groups) */
    int32_t *perm;      /* (cols) or NULL */
    float *bias;        /* (rows) or NULL */
    double bytes;       /* bytes a matrix-vector product streams */
    uint4 *t_codes;     /* 4-bit decode tile layout (decode_q4t.cu) or NULL */
    uint2 *t_sz;        /* its scales and zeros */
};

struct cu_layer {
    int nh, nkv, ffn;
    float *attn_norm, *ffn_norm; /* (dim) */
    struct cu_mat m[7];          /* wq, wk, wv, wo, w_gate, w_up, w_down */
};
enum { CU_WQ = 0, CU_WK, CU_WV, CU_WO, CU_WGATE, CU_WUP, CU_WDOWN };

/* ---- the fused 4-bit decode kernels' arguments (decode_q4.cu; described below) ---- */
enum { Q4F_PLAIN = 0, Q4F_GU = 1, Q4F_QKV = 2 };
#define Q4F_MAX 3
#define Q4F_WARPS 16 /* warps per block by default (8 or 16) */
#define Q4F_PIPE 1   /* by default the next step's loads are in flight during a step */
#define Q4F_BPS 0    /* blocks per SM by default (0: as many as fit) */
struct q4f_mat {
    const uint8_t *codes;
    const __half *s, *z;
    const float *bias;
    float *y;
    int rows, unit0;
};
struct q4f_args {
    struct q4f_mat m[Q4F_MAX];
    int n, units, cols, ng, gshift, acc, hd, kvd, bps;
    size_t row_bytes;
    const float *x, *norm, *cs;
    const int *pos;
    float *kc, *vc;
    float eps;
};
struct q4f_extra {
    const float *x, *norm; /* input (cols), RMSNorm weights or NULL */
    float eps;
    int acc;               /* PLAIN: y += */
    const float *cs;       /* QKV: rope table (max_ctx, hd), position, caches at the layer */
    const int *pos;
    float *kc, *vc;
    int hd, kvd;
    int warps, pdl;        /* warps per block (8, 16), programmatic dependent launch */
    int pipe;              /* a warp's next step loaded while the current one is computed */
    int bps;               /* blocks per SM of the persistent grid (0: as many as fit) */
    int diag, prep1;       /* tile kernels: q4t_args.diag, .prep1 */
    unsigned long long *tl; /* tile kernels: the timeline and this launch's row (q4t_args) */
    int tl_slot;
};

/* the tensor-core tile kernels (decode_q4t.cu): the same three modes on the tile layout */
struct q4t_mat {
    const uint4 *codes;
    const uint2 *sz;
    const float *bias;
    float *y;
    int rows, tile0;
};
struct q4t_args {
    struct q4t_mat m[Q4F_MAX];
    int items;             /* tiles * nc (k_q4t_ok: < 2^31 / 64) */
    int n, tiles, nc, ngr, cshift, cols, acc, hd, kvd;
    const float *x, *norm, *cs;
    const int *pos;
    float *kc, *vc;
    float eps;
    int il;                /* the warps take the block's items in turn (else contiguous shares) */
    unsigned long long *tl; /* timeline (lmp_cuda_opts.q4t_timeline): Q4T_TL values per block */
    int tl_slot;           /* its first block's row: (layer * 4 + product, the head n_layers * 4) x blocks */
    int stash;             /* items per warp copied into shared memory before the dependency */
    int stash_off;         /* where the stash starts in the dynamic shared memory (bytes) */
    int ring;              /* every item through the stash, used as a ring of `stash` units */
    int prep1;             /* the one-pass input preparation (lmp_cuda_opts.q4t_prep) */
    int diag;              /* lmp_cuda_opts.q4t_diag (bits 1, 4: no input, no outputs) */
    long long *acc64;      /* o by heads with fixed-point sums (att_o 8): o adds into them, gate/up
                              reads x plus them, down adds them to x and zeroes them; else NULL */
};

/* timeline of a tile-kernel block: %globaltimer (ns) at start, after the dependency, after
 * the input, after the weights (block barrier), at the end; then clock64 at the same points */
#define Q4T_TL 10
#define Q4T_TL_HEADS 128 /* after the blocks: per layer and head the attention's start, past the dependency, end, its phases (8) */

struct q4f_layer_args {
    struct q4f_args qkv, o, gu, down;
    const float *q;         /* attention: q (nh*hd) in, att (nh*hd) out, the layer's caches */
    float *att;
    const float *kc, *vc;
    int nh, nkv;
};
struct q4f_mega_args {
    const struct q4f_layer_args *L; /* (n_layers), device memory */
    struct q4f_args head;
    const int *pos;
    unsigned *bar;          /* barrier counter, zeroed by k_q4f_mega before the launch */
    float scale;            /* 1 / sqrt(hd) */
    int n_layers, hd, has_head;
};

/* Decode attention split over positions (k_attention with n == 1): n blocks per head, each
 * a contiguous share of the positions; per (head, share) hd + 2 floats of part (its output,
 * the scores' max and exp sum); per head a counter (zero; the last share's block combines
 * the parts in share order and resets it). */
struct att_split {
    float *part;
    unsigned *cnt;
    int n;
    int combine; /* ATT_COMBINE_*: how the parts meet */
};
/* The parts combined: by the last block of a head through global memory and the counter, or
 * (n <= ATT_CLUSTER_MAX) with a head's blocks one thread block cluster, each holding its part in its
 * shared memory, every block combining a slice of the head's dimensions (distributed
 * shared memory, two cluster barriers; no counter, no global round trip). */
enum { ATT_COMBINE_GLOBAL = 1, ATT_COMBINE_CLUSTER = 2, ATT_COMBINE_NONE = 3 /* parts only: o by heads combines them */ };
#define ATT_COMBINE ATT_COMBINE_CLUSTER /* the default */
#define ATT_CLUSTER_MAX 16 /* over 8 (non-portable) where the device schedules such clusters */
#define ATT_SPLIT_THREADS 256
#define ATT_SPLIT_MAX 16
#define ATT_LONG 256 /* decode positions from which the attention takes 16 shares through global memory */

/* The tile layout's chunk-to-group shift: chunk j (128 columns) of a row is in group
 * j >> shift (one group per row: 30, every chunk in group 0). */
static inline int q4t_cshift(int n_groups, int group)
{
    int sh = 0;
    if (n_groups == 1) return 30;
    while ((128 << sh) < group) sh++;
    return sh;
}

/* The persistent 4-bit decode kernel (decode_q4p.cu): every layer of a step in one launch.
 * Per layer the descriptor of its seven matrices in the tile layout (q, k, v, o, gate, up,
 * down), norms and caches; the kernel's arguments, device pointers throughout. */
enum { Q4P_WQ, Q4P_WK, Q4P_WV, Q4P_WO, Q4P_WGATE, Q4P_WUP, Q4P_WDOWN, Q4P_NMAT };
struct q4p_mat {
    const void *codes, *sz;   /* t_codes, t_sz */
    const float *bias;
    int ngr, cshift;          /* groups per row; chunk j's group is j >> cshift */
};
struct q4p_layer {
    struct q4p_mat m[Q4P_NMAT];
    const float *attn_norm, *ffn_norm;
    float *kc, *vc;
    int nh, nkv, ffn;
};
/* phases of a layer, each ended by a count of the blocks that are done with it */
enum { Q4P_QKV, Q4P_ATT, Q4P_O, Q4P_GU, Q4P_DOWN, Q4P_PHASES };
struct q4p_args {
    const struct q4p_layer *L; /* (n_layers) */
    int n_layers, dim, hd, S;  /* S: attention shares per head */
    int slots;                 /* ring slots (1 KB + 64 B) per warp */
    int flags;                 /* Q4P_CPASYNC, Q4P_NOMATH, Q4P_PRODUCER */
    int aw_off, part_off, sz_off, ring_off; /* the dynamic shared memory's parts */
    float eps, att_scale;
    const int *pos;
    const float *cs;
    float *x, *q, *g;          /* residual (dim), q (nh hd), gate/up out (ffn) */
    float *ao, *aml;           /* attention parts: (nh S hd) outputs, (nh S 2) max and sum */
    unsigned *cnt;             /* (n_layers * Q4P_PHASES), zeroed before each launch */
    unsigned long long *tl;    /* optional: per (layer, phase, block) %globaltimer at its start,
                                  past the wait, with the input ready, at the end; clocks
                                  warp 0 waited for its ring's slots, spent refilling them */
};
#define Q4P_TL 6
#define Q4P_CPASYNC 1 /* the ring filled by cp.async per lane, not bulk copies (TMA) */
#define Q4P_NOMATH 2  /* diagnostics: the products skipped (wrong results), the ring alone */
#define Q4P_PRODUCER 4 /* a 17th warp issues the ring's copies (TMA), the product warps only read */

struct lmp_cuda_state {
    int device;
    int dim, n_layers, hd, vocab, max_ctx, max_batch;
    float norm_eps;
    int max_q, max_kv, max_ffn, max_in;
    int exact_gemv, no_graph;
    int no_fuse;             /* decode one product per launch (comparisons) */
    int gemv_warps;          /* warps per matrix-vector block (0: the default per mode) */
    int q4f;                 /* 4-bit decode through the fused kernels where they apply */
    int pdl, q4_warps;       /* their launch: programmatic dependent launch, warps per block */
    int q4_bps;              /* and blocks per SM (0: as many as fit) */
    int q4_pipe;             /* software-pipelined steps */
    int q4_mega;             /* the whole decode step in one persistent kernel where it applies */
    int q4t;                 /* 4-bit decode through the tensor-core tile kernels where they apply */
    int q4t_depth;           /* their items in flight per warp (k_q4t_launch) */
    int q4t_prep1;           /* the one-pass input preparation of the tile kernels (opts) */
    int q4t_oh;              /* o by heads after the attention's parts (opts.att_o 6: 1, the
                                combine in one warp; 7: 2, in ceil(S / 4) warps; 8: 3, as 2 with
                                the sums as fixed-point integers in o_acc) */
    long long *o_acc;        /* (dim) those sums (q4t_oh 3), zero between layers */
    int oh_layers, oh_shares; /* the last decode step's layers that took it, its most shares */
    int q4t_diag;            /* diagnostics: parts of the tile decode skipped (opts) */
    int att_pack;            /* decode attention one block per head (no split) */
    int att_shares;          /* the split's shares per head asked for (opts; 0: ~2 blocks per SM) */
    struct att_split att_sp;  /* the decode attention split over positions (the setting in use) */
    struct att_split att_cfg[2]; /* its settings below and from att_long positions on (n,
                                    combine; part and cnt as att_sp's), see decode_step */
    int att_long;            /* first position of att_cfg[1] (INT_MAX: one setting) */
    unsigned long long *q4t_tl; /* their timeline (q4t_timeline), Q4T_TL per block and launch */
    int q4t_tl_blocks;       /* blocks per launch slot in it */
    int sms;                 /* the device's SM count */
    int mk_state;            /* 0 not yet looked at, 1 ready, -1 does not apply */
    struct q4f_mega_args mk; /* its arguments (mk.L, mk.bar in device memory) */
    size_t mk_smem;
    int q4p;                 /* the persistent tile decode kernel (decode_q4p.cu) where it applies */
    int q4p_flags, q4p_slots; /* its variant (Q4P_CPASYNC ...) and most ring slots per warp */
    int qp_state;            /* 0 not yet looked at, 1 ready, -1 does not apply */
    struct q4p_args qp;      /* its arguments (device pointers) */
    size_t qp_smem;
    struct cu_layer *L;      /* (n_layers), host array of device pointers */
    float *tok_embd;         /* (vocab, dim) */
    float *out_norm;         /* (dim) */
    struct cu_mat out;       /* (vocab, dim) */
    float *k_cache, *v_cache; /* per layer (max_ctx, n_kv*hd) position-major, at kv_off */
    size_t *kv_off;          /* (n_layers) floats */
    int *n_cached;           /* (n_layers) host */
    float *rope_cs;          /* (max_ctx, hd) */
    /* scratch, max_batch rows each */
    float *h, *xb, *q, *k, *v, *att, *g, *u;
    float *logits;           /* (max_batch, vocab) */
    float *wscr;             /* fp32 expansion of the largest non-F32 matrix (n > 1 path) */
    void *xprep;             /* k_gemv_prep_bytes(max_in): prepared matrix-vector input */
    size_t wscr_floats;
    int32_t *d_tok;          /* (max_batch) */
    int *d_pos;              /* (1) */
    size_t smem_max;         /* opt-in shared memory per block */
    cudaStream_t stream;
    cublasHandle_t blas;
    cudaGraphExec_t graph[2]; /* decode step, captured on first use: one per att_cfg */
    int graph_state[2];      /* 0 not yet, 1 captured, -1 capture failed: launch directly */
    void **allocs;           /* every cudaMalloc of the state */
    int n_allocs, cap_allocs;
};

/* Allocation owned by the state (freed with it). */
enum lmp_status cu_state_alloc(struct lmp_cuda_state *s, void **p, size_t n, const char *what,
                               struct lmp_err *err);

/* Sets up dims, stream, cuBLAS, cache and scratch once s->L / dims are filled. */
enum lmp_status cu_state_finish(struct lmp_cuda_state *s, const float *rope_cs_host,
                                struct lmp_err *err);

/* ---- kernel launchers (kernels.cu); all on `st`, no synchronisation -------------------- */

void k_rmsnorm(cudaStream_t st, float *y, const float *x, const float *w, int n, int dim,
               float eps);
/* rotates x (n, nh*hd) by rows (*pos + i) of cs (max_ctx, hd) */
void k_rope(cudaStream_t st, float *x, int n, int nh, int hd, const float *cs, const int *pos);
/* rope of q and k and the cache store of k, v in one launch (the forward uses this) */
void k_rope_store(cudaStream_t st, float *q, const float *k, const float *v, float *kc, float *vc,
                  int n, int nh, int nkv, int hd, const float *cs, const int *pos);
/* stores k, v (n, kvd) into the position-major caches (max_ctx, kvd) at *pos + i */
void k_kv_store(cudaStream_t st, float *kc, float *vc, const float *k, const float *v, int n,
                int kvd, const int *pos);
/* causal GQA attention over the position-major cache; q, out (n, nh*hd); pdl: launched
 * with programmatic dependent launch (after a kernel that triggers it) */

enum lmp_status k_attention(cudaStream_t st, float *out, const float *q, const float *kc,
                            const float *vc, int n, const int *pos, int max_pos, int nh, int nkv,
                            int hd, size_t smem_max, int pdl, struct lmp_err *err, unsigned long long *tl = NULL,
                            const struct att_split *sp = NULL);
void k_swiglu(cudaStream_t st, float *g, const float *u, long count);
void k_add_bias(cudaStream_t st, float *y, const float *b, int n, int out);
void k_embed(cudaStream_t st, float *h, const float *emb, const int32_t *tok, int n, int dim);
void k_set_int2(cudaStream_t st, int *dst, int a, int b);
void k_fill_f32(cudaStream_t st, float *p, size_t n, float v);
/* W (rows, cols) fp32 = expansion of m (natural column order) */
void k_expand(cudaStream_t st, float *W, const struct cu_mat *m);
/* Matrix-vector products y (rows) (+)= m x (+ bias). The kernel (mode) depends on the
 * weight: GEMV_DENSE (F32/F16, x read as is), GEMV_P32 (packed, fp32 arithmetic),
 * GEMV_Q4H (packed Q4 with 32-aligned power-of-two groups, fp16 arithmetic; not when exact).
 * Packed modes read x prepared by k_gemv_prep into xp (k_gemv_prep_bytes(cols) bytes), which
 * products with the same input, mode and perm can share. */
enum { GEMV_DENSE = 0, GEMV_P32 = 1, GEMV_Q4H = 2 };
int k_gemv_mode(const struct cu_mat *m, int exact);
size_t k_gemv_prep_bytes(int max_cols);
void k_gemv_prep(cudaStream_t st, void *xp, const float *x, const int32_t *perm, int cols, int mode);
enum lmp_status k_gemv(cudaStream_t st, float *y, const float *x, const void *xp,
                       const struct cu_mat *m, int accumulate, int mode, struct lmp_err *err);
/* Several matrix-vector products of the same x in one launch (decode): jobs 0..n-1 write
 * y[i] (+= when acc[i]); pair: n == 2, gate m[0] and up m[1], y[0] = silu(m[0] x) * (m[1] x).
 * k_gemv_multi_ok says whether the matrices qualify (same mode, kind, cols, group layout, no
 * perm; pair: equal rows, no bias); xprep as k_gemv for Q4H. */
#define GV_MAX_JOBS 3
struct gv_job {
    const void *w, *w2;              /* F32/F16 matrix or packed codes; w2: PAIR's second */
    const __half *s, *z, *s2, *z2;   /* Q4H scales and zeros (rows, ng) */
    const float *bias;
    float *y;
    size_t row_bytes;
    int rows, ng, gshift, acc, block0;
};
struct gv_jobs {
    struct gv_job j[GV_MAX_JOBS];
    int n;
};
int k_gemv_multi_ok(const struct cu_mat *const *m, int n, int exact, int pair);
/* warps: per block, splitting the columns (1, 2, 4, 8; other: the default of the mode) */
#define GV_WARPS_DENSE 4
#define GV_WARPS_Q4 4
int k_gemv_warps(int mode, int warps);
enum lmp_status k_gemv_multi(cudaStream_t st, const struct cu_mat *const *m, float *const *y,
                             const int *acc, int n, int pair, const float *x, const void *xprep,
                             int exact, int warps, struct lmp_err *err);
/* y (dim) = rmsnorm(x) * w for one row, and xp = its GEMV_Q4H preparation (no perm) */
void k_rmsnorm_prep_q4h(cudaStream_t st, float *y, const float *x, const float *w, int dim,
                        float eps, void *xp);
/* ---- decode of 4-bit models: fused streaming kernels (decode_q4.cu) ----
 * Q4F_QKV: q, k, v = W{q,k,v} (rmsnorm(x) * norm) (+ bias), RoPE of q and k at *pos, k and v
 * into the caches at *pos (y[0] = q; k, v go to kc, vc only); Q4F_GU: y[0] = silu(Wg xn) *
 * (Wu xn); Q4F_PLAIN: y[0] (+)= W x' (+ bias), x' = x or rmsnorm(x) * norm. k_q4f_ok says
 * whether the matrices qualify (4-bit GEMV_Q4H layout, no perm, equal cols and groups;
 * QKV: 3 with even rows; GU: 2 of equal rows, no bias; the input fits shared memory).
 * x and norm must be 16-byte aligned. */
/* The whole decode step of a model whose layers all qualify in one cooperative launch
 * (q4f_mega in decode_q4.cu): per layer Q4F_QKV, attention, o (PLAIN, acc into h), GU, down
 * (PLAIN, acc into h), then the head (PLAIN with the output norm) when it qualifies; grid-wide
 * barriers between the phases. Layer arguments live in device memory. */
/* fills a as k_q4f launches it; k_q4f_launch launches arguments made so (x: its settings) */
void k_q4f_args(struct q4f_args *a, const struct cu_mat *const *m, float *const *y, int n,
                int mode, const struct q4f_extra *x);
enum lmp_status k_q4f_launch(cudaStream_t st, const struct q4f_args *a, int mode,
                             const struct q4f_extra *x, struct lmp_err *err);
/* shared memory of the persistent kernel for inputs up to max_cols and attention over
 * max_ctx positions of head size hd; 0 when warps is not 8 or 16 */
size_t k_q4f_mega_smem(int max_cols, int hd, int max_ctx, int warps);
/* LMP_ERR_UNSUPPORTED when the device cannot run it (no cooperative launch, too much shared
 * memory for one block per SM) */
enum lmp_status k_q4f_mega(cudaStream_t st, const struct q4f_mega_args *P, int warps, int pipe,
                           int bps, size_t smem, struct lmp_err *err);
int k_q4f_mat_ok(const struct cu_mat *m);
size_t k_q4f_smem(int cols);
int k_q4f_ok(const struct cu_mat *const *m, int n, int mode, size_t smem_max);
enum lmp_status k_q4f(cudaStream_t st, const struct cu_mat *const *m, float *const *y, int n,
                      int mode, const struct q4f_extra *x, struct lmp_err *err);
enum lmp_status k_q4f_init_attrs(size_t smem_max, struct lmp_err *err);

/* ---- decode of 4-bit models on tensor cores (decode_q4t.cu) ----
 * The same modes and arguments as k_q4f on a tile layout of the weights made once
 * (k_q4t_pack, into m->t_codes / m->t_sz of k_q4t_bytes). k_q4t_mat_ok: 4-bit, no perm,
 * cols % 128 == 0, one group per row or groups of 128 * 2^k. k_q4t_ok as k_q4f_ok on
 * packed matrices (QKV: rows % 16 == 0). */
int k_q4t_mat_ok(const struct cu_mat *m);
size_t k_q4t_bytes(const struct cu_mat *m, size_t *codes_bytes, size_t *sz_bytes);
void k_q4t_pack(cudaStream_t st, struct cu_mat *m);
size_t k_q4t_smem(int cols);
int k_q4t_ok(const struct cu_mat *const *m, int n, int mode, size_t smem_max);
void k_q4t_args(struct q4t_args *a, const struct cu_mat *const *m, float *const *y, int n, int mode,
                const struct q4f_extra *x);
/* shape: warps per block, items in flight per warp, register or TMA ring (q4t_shapes); 0
 * the default */
enum lmp_status k_q4t_launch(cudaStream_t st, const struct q4t_args *a, int mode, int pdl,
                             int shape, struct lmp_err *err);
enum lmp_status k_q4t_init_attrs(size_t smem_max, struct lmp_err *err);
/* o by heads (q4t_ohkernel): block (r, h) combines head h's S attention parts (part: (nh, S,
 * hd + 2) floats, as att_split_kernel writes them with ATT_COMBINE_NONE) and multiplies the
 * result with its share of W_o's rows of chunk h, added into the residual by atomics */
int k_q4t_oh_ok(const struct q4t_args *a, int nh, int hd, int S, int mw);
/* mw: the parts combined by ceil(S / 4) warps, not one */
enum lmp_status k_q4t_oh_launch(cudaStream_t st, const struct q4t_args *a, const float *part, int nh, int S, int sms,
                                int pdl, int mw, struct lmp_err *err);
/* NULL when the co-resident shapes (10, 11) run as such; else why they fall back to 0 */
const char *k_q4t_co_status(void);

/* Sets a's slots and shared-memory offsets for inputs up to max_cols wide, part_bytes of
 * partial sums, max_nh heads and contexts up to max_ctx; returns the dynamic shared memory
 * of a launch, or 0 when fewer than 2 ring slots per warp fit. */
size_t k_q4p_layout(struct q4p_args *a, int max_cols, size_t part_bytes, int max_nh, int max_ctx,
                    size_t smem_max);
#define Q4P_NW 16               /* warps per block */
#define Q4P_MAX_COLS (4 * 512 * 8) /* widest input (4 pairs of float4 per thread) */
enum lmp_status k_q4p_launch(cudaStream_t st, const struct q4p_args *a, size_t smem, int blocks,
                             struct lmp_err *err);

/* nll (n) double */
void k_nll(cudaStream_t st, double *nll, const float *logits, const int32_t *target, int n,
           int vocab);
/* random fills: uniform [lo, hi) floats, fp16, bytes (hash of seed and index) */
void k_rand_f32(cudaStream_t st, float *p, size_t n, float lo, float hi, uint64_t seed);
void k_rand_normal(cudaStream_t st, float *p, size_t n, float sd, uint64_t seed);
void k_rand_f16(cudaStream_t st, __half *p, size_t n, float lo, float hi, uint64_t seed);
void k_rand_u8(cudaStream_t st, uint8_t *p, size_t n, uint64_t seed);
void k_fill_f16(cudaStream_t st, __half *p, size_t n, float v);
/* X (n, cols) *= c (cols) column-wise */
void k_scale_cols(cudaStream_t st, float *X, long n, int cols, const float *c);
/* flag = 1 if any of p[0..n) is not finite */
void k_check_finite(cudaStream_t st, const float *p, size_t n, int *flag);

/* Sets the dynamic shared-memory limit of the kernels that need it. */
enum lmp_status k_init_attrs(size_t smem_max, struct lmp_err *err);

/* y (n, out) = x (n, in) m^T (+ y when accumulate) (+ bias): cuBLAS; wscr for non-F32 */
enum lmp_status cu_linear(struct lmp_cuda_state *s, float *y, const float *x,
                          const struct cu_mat *m, int n, int accumulate, struct lmp_err *err);

#endif
