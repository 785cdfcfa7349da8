/* The one in-memory model every lmpress tool works on, its tensors, its tokenizer
 * vocabulary, and the loaders/writers that fill it from files.
 *
 * Layout, stated once for the whole code base:
 *   - Every weight matrix is row-major [out][in]: shape[0] = rows = output features,
 *     shape[1] = cols = input features, so y = W x is y[r] = sum_c W[r][c] x[c].
 *     (GGUF lists dims innermost first, so GGUF ne = {in, out} is our {out, in}.)
 *   - RoPE uses the INTERLEAVED convention of llama2.c and llama.cpp's LLAMA_ROPE_TYPE_NORM:
 *     within each head the rotated pairs are dimensions (2i, 2i+1), angle pos * theta^(-2i/hd).
 *     Hugging Face checkpoints use rotate-half (pairs (i, i + hd/2)); their wq/wk rows (and
 *     q/k biases) are permuted on load so the runtime needs one convention only.
 *   - Tensor names are GGUF's ("blk.3.attn_q.weight"), so a GGUF export is a rename-free copy.
 */
#ifndef LMP_MODEL_H
#define LMP_MODEL_H

#include <stddef.h>
#include <stdint.h>

/* ---- status and errors ---------------------------------------------------------- */

enum lmp_status {
    LMP_OK = 0,
    LMP_ERR_IO,          /* cannot open/read/write a file */
    LMP_ERR_FORMAT,      /* the input is malformed: bad magic, truncation, bad shapes, NaN... */
    LMP_ERR_UNSUPPORTED, /* well-formed but something we do not handle (type, architecture) */
    LMP_ERR_ARG,         /* a bad argument from the caller (user option) */
    LMP_ERR_NOMEM,
    LMP_ERR_INTERNAL,
};

struct lmp_err {
    char msg[512];
};

const char *lmp_status_str(enum lmp_status s);
/* Writes a message into err (may be NULL) and returns st, so callers can
 * `return lmp_err_set(err, LMP_ERR_FORMAT, "%s: bad magic", path);` */
enum lmp_status lmp_err_set(struct lmp_err *err, enum lmp_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* 2 for bad input (IO, FORMAT, UNSUPPORTED, ARG), 1 for internal failures. */
int lmp_status_exit_code(enum lmp_status s);

#define LMP_ASSERT(c)                                                                      \
    do {                                                                                   \
        if (!(c)) lmp_assert_fail(#c, __FILE__, __LINE__);                                 \
    } while (0)
void lmp_assert_fail(const char *expr, const char *file, int line) __attribute__((noreturn));

/* ---- tensor types ----------------------------------------------------------------- */

enum lmp_type {
    LMP_TYPE_F32 = 0,
    LMP_TYPE_F16 = 1,
    LMP_TYPE_BF16 = 2,
    /* packed GPTQ-style integer weights, see docs/FORMAT.md (filled by the quantize issue) */
    LMP_TYPE_Q2 = 16,
    LMP_TYPE_Q3 = 17,
    LMP_TYPE_Q4 = 18,
    LMP_TYPE_Q8 = 19,
    /* auxiliary arrays (tokenizer) */
    LMP_TYPE_U8 = 32,
    LMP_TYPE_I32 = 33,
};

const char *lmp_type_name(enum lmp_type t);
int lmp_type_is_float(enum lmp_type t);  /* F32/F16/BF16 */
int lmp_type_is_packed(enum lmp_type t); /* Q2..Q8 */
size_t lmp_type_elem_size(enum lmp_type t); /* bytes per element for non-packed types, 0 else */

/* Quantization parameters of packed tensors (zeroed for other types). */
struct lmp_qparams {
    int bits;        /* 2, 3, 4, 8 */
    int group;       /* columns per group; == cols for per-channel */
    int sym;         /* symmetric grid */
    uint16_t *scales; /* fp16 (rows, n_groups) */
    uint16_t *zeros;  /* fp16 (rows, n_groups) */
    int32_t *perm;    /* (cols) column order used when quantizing (act-order) or NULL */
};

#define LMP_NAME_MAX 96

struct lmp_tensor {
    char name[LMP_NAME_MAX];
    enum lmp_type type;
    int n_dims;        /* 1 or 2 */
    int64_t shape[2];  /* 2-D: {rows(out), cols(in)}; 1-D: {n, 1} */
    void *data;        /* owned (malloc) or pointing into the model's mmap */
    size_t nbytes;
    int owned;
    struct lmp_qparams q;
};

int64_t lmp_tensor_nelem(const struct lmp_tensor *t);

/* ---- tokenizer vocabulary (encoding lives in runtime/) ----------------------------- */

enum lmp_tok_kind {
    LMP_TOK_NONE = 0,
    LMP_TOK_SPM = 1, /* llama/SentencePiece style: score-ordered merges, byte fallback,
                        dummy-prefix space, "▁" for spaces (llama2.c has plain spaces) */
    LMP_TOK_BPE = 2, /* byte-level BPE (GPT-2 / Llama-3 / SmolLM2): ranked merges,
                        pre-tokenizer regex, bytes mapped to printable unicode */
};

/* Token types as in GGUF's tokenizer.ggml.token_type. */
enum lmp_tok_type {
    LMP_TOKT_NORMAL = 1,
    LMP_TOKT_UNKNOWN = 2,
    LMP_TOKT_CONTROL = 3,
    LMP_TOKT_USER = 4,
    LMP_TOKT_UNUSED = 5,
    LMP_TOKT_BYTE = 6,
};

struct lmp_vocab {
    enum lmp_tok_kind kind;
    int n_tokens;
    char *text;        /* all token strings concatenated, not NUL separated */
    uint32_t *off;     /* (n_tokens + 1): token i is text[off[i] .. off[i+1]) */
    float *scores;     /* (n_tokens) */
    int32_t *types;    /* (n_tokens), enum lmp_tok_type */
    int n_merges;      /* BPE only */
    char *merges;      /* "left right" strings concatenated */
    uint32_t *merges_off; /* (n_merges + 1) */
    char *pre_regex;   /* BPE pre-tokenizer regexes, '\n'-separated if several; NULL = GPT-2 */
    char *chat_template; /* the model's Jinja chat template (tokenizer_config.json's
                            chat_template, GGUF's tokenizer.chat_template), carried through
                            conversion only; NULL when it has none */
    int bos, eos, unk, pad; /* -1 when absent */
    int add_bos;
    int add_space_prefix; /* SPM dummy prefix */
    int space_is_plain;   /* SPM vocab whose spaces are ' ' (llama2.c) instead of U+2581 */
};

/* ---- the model -------------------------------------------------------------------- */

struct lmp_layer_cfg {
    int n_heads;    /* query heads */
    int n_kv_heads; /* key/value heads; n_heads % n_kv_heads == 0 */
    int ffn;        /* hidden size of the SwiGLU MLP */
};

struct lmp_config {
    char arch[32];    /* "llama" */
    char name[64];
    int dim;          /* model width */
    int n_layers;
    int head_dim;
    int vocab;
    int max_ctx;
    float rope_theta;
    float norm_eps;
    int tied;         /* output head shares tok_embd */
    int attn_bias;    /* q/k/v have biases (Qwen2) */
    struct lmp_layer_cfg *layer; /* (n_layers) */
};

/* Per-layer weights; pointers into model->tensors (NULL for absent optional ones). */
struct lmp_layer {
    struct lmp_tensor *attn_norm; /* (dim) */
    struct lmp_tensor *wq;        /* (n_heads*head_dim, dim) */
    struct lmp_tensor *wk;        /* (n_kv_heads*head_dim, dim) */
    struct lmp_tensor *wv;        /* (n_kv_heads*head_dim, dim) */
    struct lmp_tensor *wo;        /* (dim, n_heads*head_dim) */
    struct lmp_tensor *bq, *bk, *bv; /* optional biases (rows) */
    struct lmp_tensor *ffn_norm;  /* (dim) */
    struct lmp_tensor *w_gate;    /* (ffn, dim) */
    struct lmp_tensor *w_up;      /* (ffn, dim) */
    struct lmp_tensor *w_down;    /* (dim, ffn) */
};

struct lmp_model {
    struct lmp_config cfg;
    struct lmp_vocab vocab;
    int n_tensors;
    struct lmp_tensor *tensors; /* (n_tensors) */
    struct lmp_layer *layers;   /* (cfg.n_layers), set by lmp_model_bind */
    struct lmp_tensor *tok_embd; /* (vocab, dim) */
    struct lmp_tensor *out_norm; /* (dim) */
    struct lmp_tensor *out;      /* (vocab, dim); == tok_embd when tied */
    /* backing storage of non-owned tensors */
    void *map;
    size_t map_len;
    char source_format[16]; /* "llama2c", "gguf", "hf", "lmp" */
};

/* Canonical tensor names. */
#define LMP_N_TOKEMBD "token_embd.weight"
#define LMP_N_OUTNORM "output_norm.weight"
#define LMP_N_OUTPUT "output.weight"
/* per-layer suffixes after "blk.%d." */
#define LMP_N_ATTN_NORM "attn_norm.weight"
#define LMP_N_WQ "attn_q.weight"
#define LMP_N_WK "attn_k.weight"
#define LMP_N_WV "attn_v.weight"
#define LMP_N_WO "attn_output.weight"
#define LMP_N_BQ "attn_q.bias"
#define LMP_N_BK "attn_k.bias"
#define LMP_N_BV "attn_v.bias"
#define LMP_N_FFN_NORM "ffn_norm.weight"
#define LMP_N_GATE "ffn_gate.weight"
#define LMP_N_UP "ffn_up.weight"
#define LMP_N_DOWN "ffn_down.weight"

/* Limits that reject absurd inputs before any allocation. */
#define LMP_MAX_DIM (1 << 20)
#define LMP_MAX_LAYERS 4096
#define LMP_MAX_VOCAB (1 << 22)
#define LMP_MAX_TENSORS 100000
#define LMP_MAX_CTX (1 << 24)

struct lmp_model *lmp_model_new(void);
void lmp_model_free(struct lmp_model *m); /* accepts NULL */

/* Appends a tensor with owned, zero-initialised storage for a float/aux type, returns it
 * (NULL on overflow/OOM). Invalidates earlier tensor pointers: call lmp_model_bind after. */
struct lmp_tensor *lmp_model_add_tensor(struct lmp_model *m, const char *name, enum lmp_type type,
                                        int n_dims, int64_t rows, int64_t cols);
struct lmp_tensor *lmp_model_find(struct lmp_model *m, const char *name);

/* Allocates cfg.layer for n_layers with all layers set to the given shape. */
enum lmp_status lmp_config_set_uniform(struct lmp_config *c, int n_heads, int n_kv_heads,
                                       int ffn, struct lmp_err *err);

/* Points layers/tok_embd/... at the tensors by name and checks every shape against the
 * config; 'what' names the source (file path) in error messages. */
enum lmp_status lmp_model_bind(struct lmp_model *m, const char *what, struct lmp_err *err);
/* Checks float tensors for NaN/Inf. */
enum lmp_status lmp_model_check_finite(const struct lmp_model *m, const char *what,
                                       struct lmp_err *err);

/* Parameter count (weights incl. norms; tied head counted once). */
int64_t lmp_model_n_params(const struct lmp_model *m);

/* Converts a tensor in place to F32 storage (dequantising F16/BF16). */
enum lmp_status lmp_tensor_to_f32(struct lmp_tensor *t, struct lmp_err *err);
/* Reads element (r, c) of a float tensor as float (slow; tests/tools). */
float lmp_tensor_get_f32(const struct lmp_tensor *t, int64_t r, int64_t c);

/* fp16 / bf16 scalar conversions (IEEE, round-to-nearest-even). */
float lmp_f16_to_f32(uint16_t h);
uint16_t lmp_f32_to_f16(float f);
float lmp_bf16_to_f32(uint16_t h);
uint16_t lmp_f32_to_bf16(float f);

/* Permutes the rows of a Q or K projection (and its bias) between Hugging Face rotate-half
 * order and our interleaved order, per head of head_dim rows. to_interleaved=1 on import. */
enum lmp_status lmp_rope_permute_rows(struct lmp_tensor *t, int n_heads, int head_dim,
                                      int to_interleaved, struct lmp_err *err);

/* Vocabulary helpers */
void lmp_vocab_free(struct lmp_vocab *v);
/* Builds v->text/off from n strings (lens given); scores/types may be NULL (0 / NORMAL). */
enum lmp_status lmp_vocab_set_tokens(struct lmp_vocab *v, int n, const char *const *strs,
                                     const uint32_t *lens, const float *scores,
                                     const int32_t *types, struct lmp_err *err);
enum lmp_status lmp_vocab_set_merges(struct lmp_vocab *v, int n, const char *const *strs,
                                     const uint32_t *lens, struct lmp_err *err);
static inline const char *lmp_vocab_token(const struct lmp_vocab *v, int id, uint32_t *len)
{
    *len = v->off[id + 1] - v->off[id];
    return v->text + v->off[id];
}
enum lmp_status lmp_vocab_copy(struct lmp_vocab *dst, const struct lmp_vocab *src,
                               struct lmp_err *err);

/* ---- loaders and writers ---------------------------------------------------------- */

struct lmp_load_opts {
    const char *tokenizer; /* llama2.c: tokenizer.bin path; NULL = look beside the model */
    int no_crc;            /* .lmp: skip crc32 verification */
    int keep_packed;       /* GGUF: reserved */
};

/* Detects the format (directory = Hugging Face, "GGUF", "LMPF", else llama2.c) and loads.
 * On failure *out is NULL and err names the file and the problem. */
enum lmp_status lmp_ckpt_load(const char *path, const struct lmp_load_opts *opts,
                              struct lmp_model **out, struct lmp_err *err);

enum lmp_status lmp_ckpt_load_llama2c(const char *path, const char *tok_path,
                                      struct lmp_model **out, struct lmp_err *err);
enum lmp_status lmp_ckpt_load_llama2c_tokenizer(const char *path, int vocab_size,
                                                struct lmp_vocab *v, struct lmp_err *err);
enum lmp_status lmp_ckpt_load_gguf(const char *path, struct lmp_model **out,
                                   struct lmp_err *err);
enum lmp_status lmp_ckpt_load_hf(const char *dir, struct lmp_model **out, struct lmp_err *err);
enum lmp_status lmp_ckpt_load_lmp(const char *path, const struct lmp_load_opts *opts,
                                  struct lmp_model **out, struct lmp_err *err);

/* Writes .lmp to path via a temporary name + rename. */
enum lmp_status lmp_ckpt_save_lmp(const struct lmp_model *m, const char *path,
                                  struct lmp_err *err);

/* Per-tensor checksum report of the last .lmp load is not kept; lmp_ckpt_verify_lmp
 * re-reads a file and counts crc mismatches (for `inspect`). */
enum lmp_status lmp_ckpt_verify_lmp(const char *path, int *n_bad, struct lmp_err *err);

#endif
