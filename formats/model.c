/* The model struct: creation, tensors, binding per-layer pointers, shape validation,
 * float conversions and the RoPE row permutation shared by every loader. */
#include "model.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

const char *lmp_status_str(enum lmp_status s)
{
    switch (s) {
    case LMP_OK: return "ok";
    case LMP_ERR_IO: return "i/o error";
    case LMP_ERR_FORMAT: return "malformed input";
    case LMP_ERR_UNSUPPORTED: return "unsupported";
    case LMP_ERR_ARG: return "bad argument";
    case LMP_ERR_NOMEM: return "out of memory";
    case LMP_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

enum lmp_status lmp_err_set(struct lmp_err *err, enum lmp_status st, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return st;
}

int lmp_status_exit_code(enum lmp_status s)
{
    switch (s) {
    case LMP_OK: return 0;
    case LMP_ERR_IO:
    case LMP_ERR_FORMAT:
    case LMP_ERR_UNSUPPORTED:
    case LMP_ERR_ARG: return 2;
    default: return 1;
    }
}

void lmp_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "lmpress: assertion failed: %s (%s:%d)\n", expr, file, line);
    abort();
}

const char *lmp_type_name(enum lmp_type t)
{
    switch (t) {
    case LMP_TYPE_F32: return "F32";
    case LMP_TYPE_F16: return "F16";
    case LMP_TYPE_BF16: return "BF16";
    case LMP_TYPE_Q2: return "Q2";
    case LMP_TYPE_Q3: return "Q3";
    case LMP_TYPE_Q4: return "Q4";
    case LMP_TYPE_Q8: return "Q8";
    case LMP_TYPE_U8: return "U8";
    case LMP_TYPE_I32: return "I32";
    }
    return "?";
}

int lmp_type_is_float(enum lmp_type t)
{
    return t == LMP_TYPE_F32 || t == LMP_TYPE_F16 || t == LMP_TYPE_BF16;
}

int lmp_type_is_packed(enum lmp_type t)
{
    return t == LMP_TYPE_Q2 || t == LMP_TYPE_Q3 || t == LMP_TYPE_Q4 || t == LMP_TYPE_Q8;
}

size_t lmp_type_elem_size(enum lmp_type t)
{
    switch (t) {
    case LMP_TYPE_F32:
    case LMP_TYPE_I32: return 4;
    case LMP_TYPE_F16:
    case LMP_TYPE_BF16: return 2;
    case LMP_TYPE_U8: return 1;
    default: return 0;
    }
}

int64_t lmp_tensor_nelem(const struct lmp_tensor *t)
{
    return t->shape[0] * t->shape[1];
}

/* ---- fp16 / bf16 ------------------------------------------------------------------- */

float lmp_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t lmp_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) /* inf or nan */
        return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 : 0));
    if (absx >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00);
    if (absx < 0x38800000u) { /* below smallest normal 2^-14: subnormal or zero */
        if (absx < 0x33000000u) return (uint16_t)sign; /* < 2^-25 rounds to 0 */
        uint32_t e = absx >> 23;
        uint32_t man = (absx & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e; /* 14..24 : value = man * 2^(e-150), half unit 2^-24 */
        uint32_t r = man >> (shift - 0);
        /* we want round(man * 2^(e-150) / 2^-24) = man >> (126 - e) with RNE */
        uint32_t rem = man & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((absx - 0x38000000u) >> 13); /* rebias exponent 127->15 */
    uint32_t rem = absx & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
    return (uint16_t)(sign | r);
}

float lmp_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t lmp_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

/* ---- model ------------------------------------------------------------------------- */

struct lmp_model *lmp_model_new(void)
{
    struct lmp_model *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    snprintf(m->cfg.arch, sizeof m->cfg.arch, "llama");
    m->cfg.rope_theta = 10000.0f;
    m->cfg.norm_eps = 1e-5f;
    m->vocab.bos = m->vocab.eos = m->vocab.unk = m->vocab.pad = -1;
    return m;
}

static void tensor_free_data(struct lmp_tensor *t)
{
    if (t->owned) free(t->data);
    free(t->q.scales);
    free(t->q.zeros);
    free(t->q.perm);
    t->data = NULL;
}

void lmp_vocab_free(struct lmp_vocab *v)
{
    if (!v) return;
    free(v->text);
    free(v->off);
    free(v->scores);
    free(v->types);
    free(v->merges);
    free(v->merges_off);
    free(v->pre_regex);
    free(v->chat_template);
    memset(v, 0, sizeof *v);
    v->bos = v->eos = v->unk = v->pad = -1;
}

void lmp_model_free(struct lmp_model *m)
{
    if (!m) return;
    for (int i = 0; i < m->n_tensors; i++) tensor_free_data(&m->tensors[i]);
    free(m->tensors);
    free(m->layers);
    free(m->cfg.layer);
    lmp_vocab_free(&m->vocab);
    if (m->map) munmap(m->map, m->map_len);
    free(m);
}

struct lmp_tensor *lmp_model_find(struct lmp_model *m, const char *name)
{
    for (int i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0) return &m->tensors[i];
    return NULL;
}

struct lmp_tensor *lmp_model_add_tensor(struct lmp_model *m, const char *name, enum lmp_type type,
                                        int n_dims, int64_t rows, int64_t cols)
{
    if (m->n_tensors >= LMP_MAX_TENSORS || rows < 0 || cols < 0 || n_dims < 1 || n_dims > 2)
        return NULL;
    if (n_dims == 1) cols = 1;
    size_t es = lmp_type_elem_size(type);
    if (!es) return NULL;
    if (rows != 0 && (uint64_t)cols > SIZE_MAX / 8 / (uint64_t)rows / es) return NULL;
    struct lmp_tensor *nt = realloc(m->tensors, (size_t)(m->n_tensors + 1) * sizeof *nt);
    if (!nt) return NULL;
    m->tensors = nt;
    struct lmp_tensor *t = &nt[m->n_tensors];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = type;
    t->n_dims = n_dims;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->nbytes = (size_t)rows * (size_t)cols * es;
    t->data = calloc(1, t->nbytes ? t->nbytes : 1);
    if (!t->data) return NULL;
    t->owned = 1;
    m->n_tensors++;
    /* pointers into the old array are stale now */
    m->tok_embd = m->out_norm = m->out = NULL;
    free(m->layers);
    m->layers = NULL;
    return t;
}

enum lmp_status lmp_config_set_uniform(struct lmp_config *c, int n_heads, int n_kv_heads,
                                       int ffn, struct lmp_err *err)
{
    if (c->n_layers <= 0 || c->n_layers > LMP_MAX_LAYERS)
        return lmp_err_set(err, LMP_ERR_FORMAT, "n_layers %d out of range", c->n_layers);
    free(c->layer);
    c->layer = calloc((size_t)c->n_layers, sizeof *c->layer);
    if (!c->layer) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    for (int l = 0; l < c->n_layers; l++) {
        c->layer[l].n_heads = n_heads;
        c->layer[l].n_kv_heads = n_kv_heads;
        c->layer[l].ffn = ffn;
    }
    return LMP_OK;
}

static enum lmp_status check_shape(struct lmp_tensor *t, const char *what, int n_dims,
                                   int64_t rows, int64_t cols, struct lmp_err *err)
{
    if (n_dims == 1) cols = 1;
    if (t->shape[0] != rows || t->shape[1] != cols)
        return lmp_err_set(err, LMP_ERR_FORMAT,
                           "%s: tensor %s has shape [%lld, %lld], expected [%lld, %lld]", what,
                           t->name, (long long)t->shape[0], (long long)t->shape[1],
                           (long long)rows, (long long)cols);
    return LMP_OK;
}

static enum lmp_status bind_one(struct lmp_model *m, const char *what, const char *name,
                                int required, int n_dims, int64_t rows, int64_t cols,
                                struct lmp_tensor **slot, struct lmp_err *err)
{
    struct lmp_tensor *t = lmp_model_find(m, name);
    *slot = t;
    if (!t) {
        if (required)
            return lmp_err_set(err, LMP_ERR_FORMAT, "%s: missing tensor %s", what, name);
        return LMP_OK;
    }
    return check_shape(t, what, n_dims, rows, cols, err);
}

/* Canonical order: token_embd, then each block's tensors in forward order, then the head. */
static long canon_key(const char *name)
{
    static const char *const per_layer[] = {LMP_N_ATTN_NORM, LMP_N_WQ, LMP_N_BQ, LMP_N_WK,
                                            LMP_N_BK, LMP_N_WV, LMP_N_BV, LMP_N_WO,
                                            LMP_N_FFN_NORM, LMP_N_GATE, LMP_N_UP, LMP_N_DOWN};
    if (!strcmp(name, LMP_N_TOKEMBD)) return 0;
    if (!strcmp(name, LMP_N_OUTNORM)) return 1L << 40;
    if (!strcmp(name, LMP_N_OUTPUT)) return (1L << 40) + 1;
    int l, n = 0;
    if (sscanf(name, "blk.%d.%n", &l, &n) == 1 && n > 0 && l >= 0)
        for (size_t k = 0; k < sizeof per_layer / sizeof per_layer[0]; k++)
            if (!strcmp(name + n, per_layer[k])) return 1 + (long)l * 32 + (long)k;
    return (1L << 41);
}

static int canon_cmp(const void *a, const void *b)
{
    const struct lmp_tensor *x = a, *y = b;
    long kx = canon_key(x->name), ky = canon_key(y->name);
    if (kx != ky) return kx < ky ? -1 : 1;
    return strcmp(x->name, y->name);
}

enum lmp_status lmp_model_bind(struct lmp_model *m, const char *what, struct lmp_err *err)
{
    if (m->n_tensors > 1) qsort(m->tensors, (size_t)m->n_tensors, sizeof *m->tensors, canon_cmp);
    struct lmp_config *c = &m->cfg;
    if (c->dim <= 0 || c->dim > LMP_MAX_DIM)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: dim %d out of range", what, c->dim);
    if (c->n_layers <= 0 || c->n_layers > LMP_MAX_LAYERS)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: n_layers %d out of range", what,
                           c->n_layers);
    if (c->vocab <= 0 || c->vocab > LMP_MAX_VOCAB)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: vocab size %d out of range", what,
                           c->vocab);
    if (c->head_dim <= 0 || c->head_dim > 4096 || (c->head_dim & 1))
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: head_dim %d invalid (must be even)", what,
                           c->head_dim);
    if (c->max_ctx <= 0 || c->max_ctx > LMP_MAX_CTX)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: context length %d out of range", what,
                           c->max_ctx);
    if (!(c->norm_eps > 0 && c->norm_eps < 1))
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: norm eps %g out of range", what,
                           (double)c->norm_eps);
    if (!(c->rope_theta > 0 && isfinite(c->rope_theta)))
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: rope theta %g invalid", what,
                           (double)c->rope_theta);
    if (!c->layer) return lmp_err_set(err, LMP_ERR_FORMAT, "%s: no layer shapes", what);
    for (int l = 0; l < c->n_layers; l++) {
        const struct lmp_layer_cfg *lc = &c->layer[l];
        if (lc->n_heads <= 0 || lc->n_heads > 65536 || lc->n_kv_heads <= 0 ||
            lc->n_kv_heads > lc->n_heads || lc->n_heads % lc->n_kv_heads)
            return lmp_err_set(err, LMP_ERR_FORMAT,
                               "%s: layer %d: head counts %d/%d invalid (query heads must be a "
                               "positive multiple of kv heads)",
                               what, l, lc->n_heads, lc->n_kv_heads);
        if (lc->ffn <= 0 || lc->ffn > LMP_MAX_DIM * 8)
            return lmp_err_set(err, LMP_ERR_FORMAT, "%s: layer %d: ffn size %d out of range",
                               what, l, lc->ffn);
    }
    free(m->layers);
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    enum lmp_status st;
    int64_t D = c->dim, V = c->vocab;
    if ((st = bind_one(m, what, LMP_N_TOKEMBD, 1, 2, V, D, &m->tok_embd, err))) return st;
    if ((st = bind_one(m, what, LMP_N_OUTNORM, 1, 1, D, 1, &m->out_norm, err))) return st;
    if ((st = bind_one(m, what, LMP_N_OUTPUT, !c->tied, 2, V, D, &m->out, err))) return st;
    if (c->tied) m->out = m->tok_embd;
    char name[LMP_NAME_MAX];
    for (int l = 0; l < c->n_layers; l++) {
        const struct lmp_layer_cfg *lc = &c->layer[l];
        struct lmp_layer *L = &m->layers[l];
        int64_t q = (int64_t)lc->n_heads * c->head_dim;
        int64_t kv = (int64_t)lc->n_kv_heads * c->head_dim;
        int64_t F = lc->ffn;
#define B(suffix, req, nd, r, cc, slot)                                                    \
    do {                                                                                   \
        snprintf(name, sizeof name, "blk.%d.%s", l, suffix);                               \
        if ((st = bind_one(m, what, name, req, nd, r, cc, slot, err))) return st;          \
    } while (0)
        B(LMP_N_ATTN_NORM, 1, 1, D, 1, &L->attn_norm);
        B(LMP_N_WQ, 1, 2, q, D, &L->wq);
        B(LMP_N_WK, 1, 2, kv, D, &L->wk);
        B(LMP_N_WV, 1, 2, kv, D, &L->wv);
        B(LMP_N_WO, 1, 2, D, q, &L->wo);
        B(LMP_N_BQ, c->attn_bias, 1, q, 1, &L->bq);
        B(LMP_N_BK, c->attn_bias, 1, kv, 1, &L->bk);
        B(LMP_N_BV, c->attn_bias, 1, kv, 1, &L->bv);
        B(LMP_N_FFN_NORM, 1, 1, D, 1, &L->ffn_norm);
        B(LMP_N_GATE, 1, 2, F, D, &L->w_gate);
        B(LMP_N_UP, 1, 2, F, D, &L->w_up);
        B(LMP_N_DOWN, 1, 2, D, F, &L->w_down);
#undef B
    }
    return LMP_OK;
}

enum lmp_status lmp_model_check_finite(const struct lmp_model *m, const char *what,
                                       struct lmp_err *err)
{
    for (int i = 0; i < m->n_tensors; i++) {
        const struct lmp_tensor *t = &m->tensors[i];
        if (!lmp_type_is_float(t->type)) continue;
        int64_t n = lmp_tensor_nelem(t);
        for (int64_t k = 0; k < n; k++) {
            float v;
            if (t->type == LMP_TYPE_F32)
                v = ((const float *)t->data)[k];
            else if (t->type == LMP_TYPE_F16)
                v = lmp_f16_to_f32(((const uint16_t *)t->data)[k]);
            else
                v = lmp_bf16_to_f32(((const uint16_t *)t->data)[k]);
            if (!isfinite(v))
                return lmp_err_set(err, LMP_ERR_FORMAT,
                                   "%s: tensor %s has a non-finite value (%g) at element %lld",
                                   what, t->name, (double)v, (long long)k);
        }
    }
    return LMP_OK;
}

int64_t lmp_model_n_params(const struct lmp_model *m)
{
    int64_t n = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const struct lmp_tensor *t = &m->tensors[i];
        if (t->type == LMP_TYPE_U8 || t->type == LMP_TYPE_I32) continue;
        n += lmp_tensor_nelem(t);
    }
    return n;
}

float lmp_tensor_get_f32(const struct lmp_tensor *t, int64_t r, int64_t c)
{
    int64_t k = r * t->shape[1] + c;
    switch (t->type) {
    case LMP_TYPE_F32: return ((const float *)t->data)[k];
    case LMP_TYPE_F16: return lmp_f16_to_f32(((const uint16_t *)t->data)[k]);
    case LMP_TYPE_BF16: return lmp_bf16_to_f32(((const uint16_t *)t->data)[k]);
    default: return NAN;
    }
}

enum lmp_status lmp_tensor_to_f32(struct lmp_tensor *t, struct lmp_err *err)
{
    if (t->type == LMP_TYPE_F32) return LMP_OK;
    if (!lmp_type_is_float(t->type))
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "tensor %s: cannot convert %s to F32",
                           t->name, lmp_type_name(t->type));
    int64_t n = lmp_tensor_nelem(t);
    float *d = malloc((size_t)n * 4 + 1);
    if (!d) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    for (int64_t k = 0; k < n; k++) d[k] = lmp_tensor_get_f32(t, k / t->shape[1], k % t->shape[1]);
    if (t->owned) free(t->data);
    t->data = d;
    t->owned = 1;
    t->type = LMP_TYPE_F32;
    t->nbytes = (size_t)n * 4;
    return LMP_OK;
}

enum lmp_status lmp_rope_permute_rows(struct lmp_tensor *t, int n_heads, int head_dim,
                                      int to_interleaved, struct lmp_err *err)
{
    if (t->shape[0] != (int64_t)n_heads * head_dim || (head_dim & 1))
        return lmp_err_set(err, LMP_ERR_FORMAT, "tensor %s: %lld rows do not split into %d heads of %d",
                           t->name, (long long)t->shape[0], n_heads, head_dim);
    size_t es = lmp_type_elem_size(t->type);
    if (!es)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "tensor %s: cannot permute type %s",
                           t->name, lmp_type_name(t->type));
    size_t row = (size_t)t->shape[1] * es;
    char *src = malloc(row * (size_t)head_dim);
    if (!src) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        char *base = (char *)t->data + (size_t)h * head_dim * row;
        memcpy(src, base, row * (size_t)head_dim);
        for (int i = 0; i < half; i++)
            for (int j = 0; j < 2; j++) {
                /* interleaved row 2i+j <-> rotate-half row j*half+i */
                int inter = 2 * i + j, rh = j * half + i;
                int dst_r = to_interleaved ? inter : rh;
                int src_r = to_interleaved ? rh : inter;
                memcpy(base + (size_t)dst_r * row, src + (size_t)src_r * row, row);
            }
    }
    free(src);
    return LMP_OK;
}

/* ---- vocabulary ---------------------------------------------------------------------- */

static enum lmp_status pack_strings(int n, const char *const *strs, const uint32_t *lens,
                                    char **text_out, uint32_t **off_out, struct lmp_err *err)
{
    uint64_t total = 0;
    for (int i = 0; i < n; i++) total += lens[i];
    if (total > UINT32_MAX) return lmp_err_set(err, LMP_ERR_FORMAT, "vocabulary text too large");
    char *text = malloc((size_t)total + 1);
    uint32_t *off = malloc(((size_t)n + 1) * sizeof *off);
    if (!text || !off) {
        free(text);
        free(off);
        return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    }
    uint32_t p = 0;
    for (int i = 0; i < n; i++) {
        off[i] = p;
        if (lens[i]) memcpy(text + p, strs[i], lens[i]);
        p += lens[i];
    }
    off[n] = p;
    text[p] = 0;
    *text_out = text;
    *off_out = off;
    return LMP_OK;
}

enum lmp_status lmp_vocab_set_tokens(struct lmp_vocab *v, int n, const char *const *strs,
                                     const uint32_t *lens, const float *scores,
                                     const int32_t *types, struct lmp_err *err)
{
    if (n <= 0 || n > LMP_MAX_VOCAB)
        return lmp_err_set(err, LMP_ERR_FORMAT, "vocabulary size %d out of range", n);
    enum lmp_status st = pack_strings(n, strs, lens, &v->text, &v->off, err);
    if (st) return st;
    v->n_tokens = n;
    v->scores = malloc((size_t)n * sizeof *v->scores);
    v->types = malloc((size_t)n * sizeof *v->types);
    if (!v->scores || !v->types) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        v->scores[i] = scores ? scores[i] : 0.0f;
        v->types[i] = types ? types[i] : LMP_TOKT_NORMAL;
    }
    return LMP_OK;
}

enum lmp_status lmp_vocab_set_merges(struct lmp_vocab *v, int n, const char *const *strs,
                                     const uint32_t *lens, struct lmp_err *err)
{
    if (n < 0 || n > LMP_MAX_VOCAB)
        return lmp_err_set(err, LMP_ERR_FORMAT, "merge count %d out of range", n);
    free(v->merges);
    free(v->merges_off);
    v->merges = NULL;
    v->merges_off = NULL;
    v->n_merges = 0;
    if (n == 0) return LMP_OK;
    enum lmp_status st = pack_strings(n, strs, lens, &v->merges, &v->merges_off, err);
    if (st) return st;
    v->n_merges = n;
    return LMP_OK;
}

static void *dup_mem(const void *p, size_t n)
{
    if (!p) return NULL;
    void *d = malloc(n ? n : 1);
    if (d && n) memcpy(d, p, n);
    return d;
}

enum lmp_status lmp_vocab_copy(struct lmp_vocab *dst, const struct lmp_vocab *src,
                               struct lmp_err *err)
{
    *dst = *src;
    int n = src->n_tokens;
    dst->text = dup_mem(src->text, src->off ? src->off[n] + 1 : 0);
    dst->off = dup_mem(src->off, ((size_t)n + 1) * 4);
    dst->scores = dup_mem(src->scores, (size_t)n * 4);
    dst->types = dup_mem(src->types, (size_t)n * 4);
    dst->merges = dup_mem(src->merges, src->merges_off ? src->merges_off[src->n_merges] + 1 : 0);
    dst->merges_off = dup_mem(src->merges_off, ((size_t)src->n_merges + 1) * 4);
    dst->pre_regex = src->pre_regex ? strdup(src->pre_regex) : NULL;
    dst->chat_template = src->chat_template ? strdup(src->chat_template) : NULL;
    if ((src->text && !dst->text) || (src->off && !dst->off) || (src->merges && !dst->merges) ||
        (src->pre_regex && !dst->pre_regex) || (src->chat_template && !dst->chat_template))
        return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    return LMP_OK;
}
