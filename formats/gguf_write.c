/* GGUF v3 writer (see gguf_write.h): planning (which ggml type each tensor gets and how),
 * metadata and tensor infos built in memory, tensor data converted one row at a time and
 * streamed to a temporary file that is renamed into place when complete.
 *
 * File layout (ggml docs/gguf.md): "GGUF", u32 version 3, u64 tensor count, u64 metadata
 * count; metadata (u64-length key, u32 value type, value); tensor infos (name, u32 n_dims,
 * u64 ne[] innermost first, u32 ggml type, u64 offset from the data start); zero padding to
 * general.alignment; tensor data, each tensor at a multiple of the alignment. */
#include "gguf_write.h"
#include "internal.h"
#include "qpack.h"

#include <ctype.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define QK LMP_GGML_QK
#define QK_K LMP_GGML_QK_K
#define ALIGN 32

/* The quantizers must round x*id and the addition separately, as ggml's C reference and the
 * numpy one of the gguf package do: no fused multiply-add contraction (GCC contracts across
 * statements by default; clang only within one expression, which the code below avoids). */
#if defined(__GNUC__) && !defined(__clang__)
#define NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define NO_CONTRACT
#endif

/* ---- reference quantizers ------------------------------------------------------------ */

NO_CONTRACT void lmp_gguf_quantize_q8_0_ref(const float *x, void *dst, int64_t n)
{
    unsigned char *out = dst;
    for (int64_t b = 0; b < n / QK; b++) {
        const float *xb = x + b * QK;
        float amax = 0.0f;
        for (int j = 0; j < QK; j++)
            if (fabsf(xb[j]) > amax) amax = fabsf(xb[j]);
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        struct lmp_ggml_block_q8_0 blk;
        blk.d = lmp_f32_to_f16(d);
        for (int j = 0; j < QK; j++) {
            float v = xb[j] * id;
            v = roundf(v);
            blk.qs[j] = (int8_t)(v > 127.0f ? 127 : v < -128.0f ? -128 : (int)v);
        }
        memcpy(out + b * (int64_t)sizeof blk, &blk, sizeof blk);
    }
}

NO_CONTRACT void lmp_gguf_quantize_q4_0_ref(const float *x, void *dst, int64_t n)
{
    unsigned char *out = dst;
    for (int64_t b = 0; b < n / QK; b++) {
        const float *xb = x + b * QK;
        float amax = 0.0f, max = 0.0f; /* the value of largest magnitude, first one wins */
        for (int j = 0; j < QK; j++)
            if (fabsf(xb[j]) > amax) {
                amax = fabsf(xb[j]);
                max = xb[j];
            }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        struct lmp_ggml_block_q4_0 blk;
        blk.d = lmp_f32_to_f16(d);
        for (int j = 0; j < QK / 2; j++) {
            int c[2];
            for (int h = 0; h < 2; h++) {
                float v = xb[j + h * QK / 2] * id;
                v = v + 8.5f;
                int q = (int)v; /* v is in [0.5, 16.5] up to rounding: truncation */
                c[h] = q < 0 ? 0 : q > 15 ? 15 : q;
            }
            blk.qs[j] = (uint8_t)(c[0] | (c[1] << 4));
        }
        memcpy(out + b * (int64_t)sizeof blk, &blk, sizeof blk);
    }
}

NO_CONTRACT void lmp_gguf_quantize_q4_1_ref(const float *x, void *dst, int64_t n)
{
    unsigned char *out = dst;
    for (int64_t b = 0; b < n / QK; b++) {
        const float *xb = x + b * QK;
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < QK; j++) {
            if (xb[j] < min) min = xb[j];
            if (xb[j] > max) max = xb[j];
        }
        const float d = (max - min) / 15.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        struct lmp_ggml_block_q4_1 blk;
        blk.d = lmp_f32_to_f16(d);
        blk.m = lmp_f32_to_f16(min);
        for (int j = 0; j < QK / 2; j++) {
            int c[2];
            for (int h = 0; h < 2; h++) {
                float v = xb[j + h * QK / 2] - min;
                v = v * id;
                v = v + 0.5f;
                int q = (int)v;
                c[h] = q < 0 ? 0 : q > 15 ? 15 : q;
            }
            blk.qs[j] = (uint8_t)(c[0] | (c[1] << 4));
        }
        memcpy(out + b * (int64_t)sizeof blk, &blk, sizeof blk);
    }
}

/* Q4_K / Q6_K: our own scalar quantizers (ggml's reference searches the sub-block scales
 * iteratively; readers only need the layout, gguf.h). Two levels, as the format has them:
 * per sub-block a float scale (and for Q4_K a minimum), then those quantized to 6 / 8 bits
 * against the fp16 super-block scale(s), then every code computed against the scale the
 * reader will actually use. */
static int clampi(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

void lmp_gguf_quantize_q4_K(const float *x, void *dst, int64_t n)
{
    unsigned char *out = dst;
    for (int64_t b = 0; b < n / QK_K; b++) {
        const float *xb = x + b * QK_K;
        float scale[8], mnv[8], max_scale = 0.0f, max_min = 0.0f;
        for (int s = 0; s < 8; s++) { /* x ~ scale * q - mnv, q in 0..15, mnv >= 0 */
            float lo = 0.0f, hi = 0.0f;
            for (int j = 0; j < 32; j++) {
                if (xb[32 * s + j] < lo) lo = xb[32 * s + j];
                if (xb[32 * s + j] > hi) hi = xb[32 * s + j];
            }
            scale[s] = (hi - lo) / 15.0f;
            mnv[s] = -lo;
            if (scale[s] > max_scale) max_scale = scale[s];
            if (mnv[s] > max_min) max_min = mnv[s];
        }
        struct lmp_ggml_block_q4_K blk;
        memset(&blk, 0, sizeof blk);
        blk.d = lmp_f32_to_f16(max_scale / 63.0f);
        blk.dmin = lmp_f32_to_f16(max_min / 63.0f);
        const float d = lmp_f16_to_f32(blk.d), dmin = lmp_f16_to_f32(blk.dmin);
        int sc[8], mn[8];
        for (int s = 0; s < 8; s++) {
            sc[s] = d > 0.0f ? clampi((int)nearbyintf(scale[s] / d), 0, 63) : 0;
            mn[s] = dmin > 0.0f ? clampi((int)nearbyintf(mnv[s] / dmin), 0, 63) : 0;
            if (s < 4) {
                blk.scales[s] = (uint8_t)sc[s];
                blk.scales[s + 4] = (uint8_t)mn[s];
            } else { /* low 4 bits in bytes 8..11, top 2 bits in the spare bits of 0..7 */
                blk.scales[s + 4] = (uint8_t)((sc[s] & 0x0f) | ((mn[s] & 0x0f) << 4));
                blk.scales[s - 4] |= (uint8_t)((sc[s] >> 4) << 6);
                blk.scales[s] |= (uint8_t)((mn[s] >> 4) << 6);
            }
        }
        for (int k = 0; k < 4; k++) /* sub-blocks 2k (low nibbles) and 2k+1 (high) */
            for (int l = 0; l < 32; l++) {
                int q[2];
                for (int h = 0; h < 2; h++) {
                    int s = 2 * k + h;
                    float ds = d * (float)sc[s], m = dmin * (float)mn[s];
                    q[h] = ds > 0.0f ? clampi((int)nearbyintf((xb[32 * s + l] + m) / ds), 0, 15) : 0;
                }
                blk.qs[32 * k + l] = (uint8_t)(q[0] | (q[1] << 4));
            }
        memcpy(out + b * (int64_t)sizeof blk, &blk, sizeof blk);
    }
}

void lmp_gguf_quantize_q6_K(const float *x, void *dst, int64_t n)
{
    unsigned char *out = dst;
    for (int64_t b = 0; b < n / QK_K; b++) {
        const float *xb = x + b * QK_K;
        float scale[16], amax_s = 0.0f, big = 0.0f; /* big: the scale of largest magnitude */
        for (int s = 0; s < 16; s++) { /* x ~ scale * q, q in -32..31: the extreme at -32 */
            float amax = 0.0f, ext = 0.0f;
            for (int j = 0; j < 16; j++)
                if (fabsf(xb[16 * s + j]) > amax) {
                    amax = fabsf(xb[16 * s + j]);
                    ext = xb[16 * s + j];
                }
            scale[s] = ext / -32.0f;
            if (fabsf(scale[s]) > amax_s) {
                amax_s = fabsf(scale[s]);
                big = scale[s];
            }
        }
        struct lmp_ggml_block_q6_K blk;
        memset(&blk, 0, sizeof blk);
        blk.d = lmp_f32_to_f16(big / -128.0f);
        const float d = lmp_f16_to_f32(blk.d);
        int q[QK_K];
        for (int s = 0; s < 16; s++) {
            int sc = d != 0.0f ? clampi((int)nearbyintf(scale[s] / d), -128, 127) : 0;
            blk.scales[s] = (int8_t)sc;
            float ds = d * (float)sc;
            for (int j = 0; j < 16; j++)
                q[16 * s + j] = ds != 0.0f ? clampi((int)nearbyintf(xb[16 * s + j] / ds), -32, 31) + 32 : 32;
        }
        for (int h = 0; h < 2; h++) /* halves of 128: elements l, l+32, l+64, l+96 */
            for (int l = 0; l < 32; l++) {
                const int *qq = q + 128 * h;
                blk.ql[64 * h + l] = (uint8_t)((qq[l] & 0x0f) | ((qq[l + 64] & 0x0f) << 4));
                blk.ql[64 * h + l + 32] = (uint8_t)((qq[l + 32] & 0x0f) | ((qq[l + 96] & 0x0f) << 4));
                blk.qh[32 * h + l] = (uint8_t)((qq[l] >> 4) | ((qq[l + 32] >> 4) << 2) |
                                               ((qq[l + 64] >> 4) << 4) | ((qq[l + 96] >> 4) << 6));
            }
        memcpy(out + b * (int64_t)sizeof blk, &blk, sizeof blk);
    }
}

int lmp_gguf_quantize(int ggml_type, const float *src, void *dst, int64_t n)
{
    if (n < 0) return -1;
    unsigned char *o = dst;
    switch (ggml_type) {
    case LMP_GGML_TYPE_F32:
        if (n) memcpy(dst, src, (size_t)n * 4);
        return 0;
    case LMP_GGML_TYPE_F16:
    case LMP_GGML_TYPE_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = ggml_type == LMP_GGML_TYPE_F16 ? lmp_f32_to_f16(src[i])
                                                        : lmp_f32_to_bf16(src[i]);
            memcpy(o + 2 * i, &h, 2);
        }
        return 0;
    default: break;
    }
    if (ggml_type == LMP_GGML_TYPE_Q4_K || ggml_type == LMP_GGML_TYPE_Q6_K) {
        if (n % QK_K) return -1;
        if (ggml_type == LMP_GGML_TYPE_Q4_K) lmp_gguf_quantize_q4_K(src, dst, n);
        else lmp_gguf_quantize_q6_K(src, dst, n);
        return 0;
    }
    if (n % QK) return -1;
    switch (ggml_type) {
    case LMP_GGML_TYPE_Q8_0: lmp_gguf_quantize_q8_0_ref(src, dst, n); return 0;
    case LMP_GGML_TYPE_Q4_0: lmp_gguf_quantize_q4_0_ref(src, dst, n); return 0;
    case LMP_GGML_TYPE_Q4_1: lmp_gguf_quantize_q4_1_ref(src, dst, n); return 0;
    default: return -1;
    }
}

int lmp_gguf_type_from_name(const char *s)
{
    static const struct {
        const char *name;
        int type;
    } tab[] = {{"f32", LMP_GGML_TYPE_F32},   {"f16", LMP_GGML_TYPE_F16},
               {"bf16", LMP_GGML_TYPE_BF16}, {"q8_0", LMP_GGML_TYPE_Q8_0},
               {"q4_0", LMP_GGML_TYPE_Q4_0}, {"q4_1", LMP_GGML_TYPE_Q4_1},
               {"q4_k", LMP_GGML_TYPE_Q4_K}, {"q6_k", LMP_GGML_TYPE_Q6_K}};
    for (size_t i = 0; s && i < sizeof tab / sizeof tab[0]; i++)
        if (strcasecmp(s, tab[i].name) == 0) return tab[i].type;
    return -1;
}

static int is_block_type(int t)
{
    return t == LMP_GGML_TYPE_Q8_0 || t == LMP_GGML_TYPE_Q4_0 || t == LMP_GGML_TYPE_Q4_1 ||
           t == LMP_GGML_TYPE_Q4_K || t == LMP_GGML_TYPE_Q6_K;
}

static int is_k_type(int t)
{
    return t == LMP_GGML_TYPE_Q4_K || t == LMP_GGML_TYPE_Q6_K;
}

/* A block type for rows of cols elements: a K-quant needs rows of a multiple of 256 (else
 * Q8_0, as llama.cpp's quantizer falls back), the others of 32 (else F16). Sets *why. */
static int fit_type(int want, int64_t cols, int *fallback, const char **why)
{
    if (is_k_type(want) && cols % QK_K) {
        *fallback = 1;
        *why = "row length is not a multiple of 256";
        want = LMP_GGML_TYPE_Q8_0;
    }
    if (is_block_type(want) && cols % QK) {
        *fallback = 1;
        *why = "row length is not a multiple of 32";
        want = LMP_GGML_TYPE_F16;
    }
    return want;
}

void lmp_gguf_report_free(struct lmp_gguf_report *r)
{
    if (!r) return;
    free(r->t);
    memset(r, 0, sizeof *r);
}

/* ---- an in-memory byte buffer for the header ----------------------------------------- */

struct gbuf {
    unsigned char *p;
    size_t len, cap;
    int oom;
};

static void gb_put(struct gbuf *b, const void *s, size_t n)
{
    if (b->oom || n == 0) return;
    if (n > SIZE_MAX / 2 - b->len) {
        b->oom = 1;
        return;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        unsigned char *q = realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void gb_le(struct gbuf *b, uint64_t v, int nbytes)
{
    unsigned char x[8];
    for (int i = 0; i < nbytes; i++) x[i] = (unsigned char)(v >> (8 * i));
    gb_put(b, x, (size_t)nbytes);
}
static void gb_u32(struct gbuf *b, uint32_t v) { gb_le(b, v, 4); }
static void gb_u64(struct gbuf *b, uint64_t v) { gb_le(b, v, 8); }
static void gb_f32(struct gbuf *b, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    gb_u32(b, u);
}
static void gb_str(struct gbuf *b, const char *s, size_t n)
{
    gb_u64(b, n);
    gb_put(b, s, n);
}

/* GGUF metadata value types */
enum { GV_U8 = 0, GV_I32 = 5, GV_U32 = 4, GV_F32 = 6, GV_BOOL = 7, GV_STR = 8, GV_ARR = 9 };

struct kvw {
    struct gbuf b;
    uint64_t n;
    const char *arch; /* key prefix: "llama", or "deci" for per-layer shapes */
    char key[160];
};

static void kv_key(struct kvw *w, const char *key, uint32_t type)
{
    gb_str(&w->b, key, strlen(key));
    gb_u32(&w->b, type);
    w->n++;
}
static void kv_u32(struct kvw *w, const char *key, uint32_t v)
{
    kv_key(w, key, GV_U32);
    gb_u32(&w->b, v);
}
static void kv_f32(struct kvw *w, const char *key, float v)
{
    kv_key(w, key, GV_F32);
    gb_f32(&w->b, v);
}
static void kv_bool(struct kvw *w, const char *key, int v)
{
    kv_key(w, key, GV_BOOL);
    unsigned char c = v ? 1 : 0;
    gb_put(&w->b, &c, 1);
}
static void kv_str(struct kvw *w, const char *key, const char *s)
{
    kv_key(w, key, GV_STR);
    gb_str(&w->b, s, strlen(s));
}
static void kv_arr_head(struct kvw *w, const char *key, uint32_t elem, uint64_t n)
{
    kv_key(w, key, GV_ARR);
    gb_u32(&w->b, elem);
    gb_u64(&w->b, n);
}
/* "<arch>.<suffix>" */
static const char *lk(struct kvw *w, const char *suffix)
{
    snprintf(w->key, sizeof w->key, "%s.%s", w->arch, suffix);
    return w->key;
}

/* Do all layers have layer 0's head counts and MLP width? */
static int layers_uniform(const struct lmp_config *c)
{
    for (int l = 1; l < c->n_layers; l++)
        if (c->layer[l].n_heads != c->layer[0].n_heads ||
            c->layer[l].n_kv_heads != c->layer[0].n_kv_heads || c->layer[l].ffn != c->layer[0].ffn)
            return 0;
    return 1;
}

/* A per-layer integer: one u32 when equal in every layer, else an INT32 array. */
static void kv_layer_int(struct kvw *w, const struct lmp_config *c, const char *suffix,
                         int which)
{
    int uniform = 1;
    for (int l = 0; l < c->n_layers; l++) {
        const struct lmp_layer_cfg *a = &c->layer[l], *z = &c->layer[0];
        int va = which == 0 ? a->n_heads : which == 1 ? a->n_kv_heads : a->ffn;
        int vz = which == 0 ? z->n_heads : which == 1 ? z->n_kv_heads : z->ffn;
        uniform &= va == vz;
    }
    if (uniform) {
        const struct lmp_layer_cfg *z = &c->layer[0];
        kv_u32(w, lk(w, suffix),
               (uint32_t)(which == 0 ? z->n_heads : which == 1 ? z->n_kv_heads : z->ffn));
        return;
    }
    kv_arr_head(w, lk(w, suffix), GV_I32, (uint64_t)c->n_layers);
    for (int l = 0; l < c->n_layers; l++) {
        const struct lmp_layer_cfg *a = &c->layer[l];
        gb_u32(&w->b, (uint32_t)(which == 0 ? a->n_heads : which == 1 ? a->n_kv_heads : a->ffn));
    }
}

/* ---- tokenizer ------------------------------------------------------------------------- */

/* Byte-level BPE pre-tokenizers llama.cpp knows by name, as our regex lists (one regex per
 * line; a trailing "|\s+" alternative, which only catches what the others leave over, is
 * ignored when comparing: llama.cpp keeps unmatched text as its own piece anyway). */
static const char gpt2_re[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
static const char llama3_re[] =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)";
static const char llama3_hf_re[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)";

/* Does line [s, s+n) equal re, ignoring a trailing "|\s+"? */
static int re_is(const char *s, size_t n, const char *re)
{
    static const char tail[] = "|\\s+";
    size_t tl = sizeof tail - 1;
    if (n >= tl && memcmp(s + n - tl, tail, tl) == 0) n -= tl;
    return n == strlen(re) && memcmp(s, re, n) == 0;
}

/* tokenizer.ggml.pre for a BPE vocabulary, NULL if llama.cpp has no name for it. */
static const char *bpe_pre_name(const char *re)
{
    if (!re) return "gpt-2";
    const char *nl = strchr(re, '\n');
    if (!nl) {
        size_t n = strlen(re);
        if (re_is(re, n, gpt2_re)) return "gpt-2";
        if (re_is(re, n, llama3_re) || re_is(re, n, llama3_hf_re)) return "llama-bpe";
        return NULL;
    }
    if ((size_t)(nl - re) == 5 && memcmp(re, "\\p{N}", 5) == 0 && !strchr(nl + 1, '\n') &&
        re_is(nl + 1, strlen(nl + 1), gpt2_re))
        return "smollm";
    return NULL;
}

/* Token text as GGUF stores it: a llama2.c vocabulary has plain spaces (-> U+2581) and
 * BOS/EOS texts wrapped in newlines ("\n<s>\n" -> "<s>"). Writes to buf (cap >= 3*len). */
static size_t gguf_token_text(const struct lmp_vocab *v, int id, char *buf)
{
    uint32_t len;
    const char *s = lmp_vocab_token(v, id, &len);
    if (!(v->kind == LMP_TOK_SPM && v->space_is_plain)) {
        memcpy(buf, s, len);
        return len;
    }
    if (v->types[id] == LMP_TOKT_CONTROL) {
        while (len > 0 && s[0] == '\n') s++, len--;
        while (len > 0 && s[len - 1] == '\n') len--;
    }
    size_t o = 0;
    for (uint32_t i = 0; i < len; i++) {
        if (s[i] == ' ') {
            memcpy(buf + o, "\xe2\x96\x81", 3);
            o += 3;
        } else {
            buf[o++] = s[i];
        }
    }
    return o;
}

static enum lmp_status write_tokenizer(struct kvw *w, const struct lmp_model *m, const char *path,
                                       struct lmp_err *err)
{
    const struct lmp_vocab *v = &m->vocab;
    if (v->kind != LMP_TOK_SPM && v->kind != LMP_TOK_BPE)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                           "%s: the model has no tokenizer; a GGUF model needs one", path);
    if (v->n_tokens != m->cfg.vocab || !v->off || !v->types || !v->scores)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                           "%s: the tokenizer has %d tokens but the model's vocabulary is %d",
                           path, v->n_tokens, m->cfg.vocab);
    const char *pre = "default";
    if (v->kind == LMP_TOK_BPE) {
        pre = bpe_pre_name(v->pre_regex);
        if (!pre)
            return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                               "%s: the byte-level BPE pre-tokenizer of this model has no "
                               "llama.cpp name (gpt-2, llama-bpe, smollm are known)",
                               path);
    }
    kv_str(w, "tokenizer.ggml.model", v->kind == LMP_TOK_SPM ? "llama" : "gpt2");
    kv_str(w, "tokenizer.ggml.pre", pre);
    uint32_t maxlen = 0;
    for (int i = 0; i < v->n_tokens; i++)
        if (v->off[i + 1] - v->off[i] > maxlen) maxlen = v->off[i + 1] - v->off[i];
    char *buf = malloc((size_t)maxlen * 3 + 1);
    if (!buf) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    kv_arr_head(w, "tokenizer.ggml.tokens", GV_STR, (uint64_t)v->n_tokens);
    for (int i = 0; i < v->n_tokens; i++) {
        size_t n = gguf_token_text(v, i, buf);
        gb_str(&w->b, buf, n);
    }
    free(buf);
    if (v->kind == LMP_TOK_SPM) {
        kv_arr_head(w, "tokenizer.ggml.scores", GV_F32, (uint64_t)v->n_tokens);
        for (int i = 0; i < v->n_tokens; i++) gb_f32(&w->b, v->scores[i]);
    }
    kv_arr_head(w, "tokenizer.ggml.token_type", GV_I32, (uint64_t)v->n_tokens);
    for (int i = 0; i < v->n_tokens; i++) gb_u32(&w->b, (uint32_t)v->types[i]);
    if (v->kind == LMP_TOK_BPE) {
        kv_arr_head(w, "tokenizer.ggml.merges", GV_STR, (uint64_t)v->n_merges);
        for (int i = 0; i < v->n_merges; i++)
            gb_str(&w->b, v->merges + v->merges_off[i], v->merges_off[i + 1] - v->merges_off[i]);
    }
    if (v->bos >= 0) kv_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)v->bos);
    if (v->eos >= 0) kv_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)v->eos);
    if (v->unk >= 0) kv_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)v->unk);
    if (v->pad >= 0) kv_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)v->pad);
    kv_bool(w, "tokenizer.ggml.add_bos_token", v->add_bos);
    kv_bool(w, "tokenizer.ggml.add_eos_token", 0);
    kv_bool(w, "tokenizer.ggml.add_space_prefix", v->add_space_prefix);
    if (v->chat_template) kv_str(w, "tokenizer.chat_template", v->chat_template);
    return LMP_OK;
}

/* ---- planning ------------------------------------------------------------------------ */

struct tplan {
    const struct lmp_tensor *t;
    int64_t rows, cols;  /* 1-D: one row of n */
    int n_dims;
    int type;            /* ggml type written */
    enum lmp_gguf_how how;
    int fallback;
    int map;             /* packed: blocks built from codes (else dequantize + quantize) */
    const char *why;
    struct lmp_qview qv; /* packed only */
    size_t row_bytes;    /* bytes of one row in the written type */
    uint64_t nbytes, off;
};

static int is_llama_tensor(const char *name)
{
    static const char *const sfx[] = {LMP_N_ATTN_NORM, LMP_N_WQ, LMP_N_WK, LMP_N_WV,
                                      LMP_N_WO, LMP_N_BQ, LMP_N_BK, LMP_N_BV,
                                      LMP_N_FFN_NORM, LMP_N_GATE, LMP_N_UP, LMP_N_DOWN};
    if (!strcmp(name, LMP_N_TOKEMBD) || !strcmp(name, LMP_N_OUTNORM) ||
        !strcmp(name, LMP_N_OUTPUT))
        return 1;
    int l, n = 0;
    if (sscanf(name, "blk.%d.%n", &l, &n) != 1 || n == 0 || l < 0) return 0;
    for (size_t k = 0; k < sizeof sfx / sizeof sfx[0]; k++)
        if (!strcmp(name + n, sfx[k])) return 1;
    return 0;
}

static int lmp_to_ggml(enum lmp_type t)
{
    return t == LMP_TYPE_F16 ? LMP_GGML_TYPE_F16
           : t == LMP_TYPE_BF16 ? LMP_GGML_TYPE_BF16
                                : LMP_GGML_TYPE_F32;
}

/* Code range [lo, hi] of the 32-code block starting at storage column c0 of row r. */
static void block_range(const struct lmp_qview *v, int64_t r, int64_t c0, int *lo, int *hi)
{
    const uint8_t *row = v->codes + (size_t)r * v->row_bytes;
    int a = 255, b = 0;
    for (int j = 0; j < QK; j++) {
        int q = (int)lmp_qpack_get(row, c0 + j, v->bits);
        if (q < a) a = q;
        if (q > b) b = q;
    }
    *lo = a;
    *hi = b;
}

/* Does a block with codes in [lo, hi] and integer zero z fit c = ±(q - z) + off in [cmin, cmax]? */
static int fits(int lo, int hi, int z, int off, int cmin, int cmax)
{
    int pos = lo - z + off >= cmin && hi - z + off <= cmax;
    int neg = z - hi + off >= cmin && z - lo + off <= cmax;
    return pos || neg;
}

/* Which block types hold every block of a natural-order, 32-aligned packed tensor exactly. */
static void packed_feasible(const struct lmp_qview *v, int *q40, int *q41, int *q80)
{
    *q40 = *q41 = *q80 = 1;
    for (int64_t r = 0; r < v->rows && (*q40 || *q41 || *q80); r++)
        for (int64_t c0 = 0; c0 < v->cols; c0 += QK) {
            int64_t g = c0 / v->group;
            float z = lmp_f16_to_f32(v->zeros[r * v->n_groups + g]);
            int lo, hi;
            block_range(v, r, c0, &lo, &hi);
            if (hi - lo > 15) *q41 = 0;
            if (!(z == nearbyintf(z) && fabsf(z) <= 4096.0f)) {
                *q40 = *q80 = 0;
                continue;
            }
            int zi = (int)z;
            if (*q40 && !fits(lo, hi, zi, 8, 0, 15)) *q40 = 0;
            if (*q80 && !fits(lo, hi, zi, 0, -128, 127)) *q80 = 0;
        }
}

static enum lmp_status plan_tensor(const struct lmp_tensor *t, int req, struct tplan *p,
                                   const char *path, struct lmp_err *err)
{
    memset(p, 0, sizeof *p);
    p->t = t;
    p->n_dims = t->n_dims;
    p->rows = t->n_dims == 2 ? t->shape[0] : 1;
    p->cols = t->n_dims == 2 ? t->shape[1] : t->shape[0];
    if (p->rows <= 0 || p->cols <= 0)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: tensor %s has an empty shape", path, t->name);
    int packed = lmp_type_is_packed(t->type);
    if (!packed && !lmp_type_is_float(t->type))
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "%s: tensor %s has type %s, not a weight type",
                           path, t->name, lmp_type_name(t->type));
    if (t->n_dims != 2) { /* norms and biases: F32 */
        if (packed)
            return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "%s: tensor %s: a 1-D packed tensor",
                               path, t->name);
        p->type = LMP_GGML_TYPE_F32;
        p->how = t->type == LMP_TYPE_F32 ? LMP_GGUF_COPY : LMP_GGUF_CONVERT;
        return LMP_OK;
    }
    int want = req;
    if (!packed) {
        if (want < 0) want = lmp_to_ggml(t->type);
        want = fit_type(want, p->cols, &p->fallback, &p->why);
        p->type = want;
        p->how = want == lmp_to_ggml(t->type) ? LMP_GGUF_COPY : LMP_GGUF_CONVERT;
        return LMP_OK;
    }

    enum lmp_status st = lmp_qview_from_tensor(&p->qv, t, err);
    if (st) return st;
    int64_t np = p->rows * p->qv.n_groups;
    for (int64_t i = 0; i < np; i++)
        if (!isfinite(lmp_f16_to_f32(p->qv.scales[i])) || !isfinite(lmp_f16_to_f32(p->qv.zeros[i])))
            return lmp_err_set(err, LMP_ERR_FORMAT, "%s: tensor %s: non-finite scale or zero",
                               path, t->name);
    if (p->cols % QK && (want < 0 || is_block_type(want))) {
        p->fallback = 1;
        p->why = "row length is not a multiple of 32";
        p->type = LMP_GGML_TYPE_F16;
        p->how = LMP_GGUF_REQUANT;
        return LMP_OK;
    }
    if (is_k_type(want)) { /* our grids never are K-quant sub-blocks: dequantize, quantize */
        p->type = fit_type(want, p->cols, &p->fallback, &p->why);
        p->how = LMP_GGUF_REQUANT;
        if (!p->fallback) p->why = "K-quant requested";
        return LMP_OK;
    }
    if (want == LMP_GGML_TYPE_F32) {
        p->type = want;
        p->how = LMP_GGUF_EXACT; /* our dequantized floats, as they are */
        return LMP_OK;
    }
    if (want == LMP_GGML_TYPE_F16 || want == LMP_GGML_TYPE_BF16) {
        p->type = want;
        p->how = LMP_GGUF_REQUANT;
        p->why = "converted to the requested float type";
        return LMP_OK;
    }
    int q40 = 0, q41 = 0, q80 = 0;
    if (p->qv.perm)
        p->why = "act-order column permutation (GGUF blocks follow the natural column order)";
    else if (p->qv.group % QK)
        p->why = "group size is not a multiple of 32";
    else
        packed_feasible(&p->qv, &q40, &q41, &q80);
    if (want < 0) {
        if (q40 && p->qv.bits <= 4) want = LMP_GGML_TYPE_Q4_0, p->map = 1;
        else if (q41 && p->qv.bits <= 4) want = LMP_GGML_TYPE_Q4_1, p->map = 1;
        else if (q80) want = LMP_GGML_TYPE_Q8_0, p->map = 1;
        else want = LMP_GGML_TYPE_Q8_0;
    } else {
        p->map = (want == LMP_GGML_TYPE_Q4_0 && q40) || (want == LMP_GGML_TYPE_Q4_1 && q41) ||
                 (want == LMP_GGML_TYPE_Q8_0 && q80);
    }
    if (!p->map && !p->why)
        p->why = "codes or zero points do not fit the type's grid (e.g. 8-bit asymmetric)";
    p->type = want;
    p->how = p->map ? LMP_GGUF_EXACT : LMP_GGUF_REQUANT;
    if (p->map) p->why = NULL;
    return LMP_OK;
}

/* ---- row conversion -------------------------------------------------------------------- */

/* Row r of a float tensor as floats. */
static void float_row(const struct tplan *p, int64_t r, float *out)
{
    const struct lmp_tensor *t = p->t;
    size_t es = lmp_type_elem_size(t->type);
    const unsigned char *src = (const unsigned char *)t->data + (size_t)r * (size_t)p->cols * es;
    for (int64_t c = 0; c < p->cols; c++) {
        if (t->type == LMP_TYPE_F32) {
            memcpy(&out[c], src + 4 * c, 4);
        } else {
            uint16_t h;
            memcpy(&h, src + 2 * c, 2);
            out[c] = t->type == LMP_TYPE_F16 ? lmp_f16_to_f32(h) : lmp_bf16_to_f32(h);
        }
    }
}

/* Row r of a packed tensor dequantized in natural column order. */
static void packed_row(const struct lmp_qview *v, int64_t r, float *tmp, float *out)
{
    if (!v->perm) {
        lmp_qpack_dequant_row(v, r, out);
        return;
    }
    lmp_qpack_dequant_row(v, r, tmp);
    for (int64_t j = 0; j < v->cols; j++) out[v->perm[j]] = tmp[j];
}

/* A Q4_1 parameter choice for one block (see gguf_write.h). */
struct q41c {
    uint16_t d, m;
    int neg, k;  /* c = q + k (neg = 0) or c = k - q (neg = 1) */
    double e;    /* |fp16(m) - m| */
};

static int q41_try(int neg, int k, float s, float z, uint16_t s16, struct q41c *best)
{
    float mf = neg ? ((float)k - z) * s : -(z + (float)k) * s;
    uint16_t mh = lmp_f32_to_f16(mf);
    float back = lmp_f16_to_f32(mh);
    double e = isfinite(back) ? fabs((double)back - (double)mf) : INFINITY;
    if (e < best->e) *best = (struct q41c){neg ? (uint16_t)(s16 ^ 0x8000u) : s16, mh, neg, k, e};
    return e == 0.0;
}

/* For codes in [lo, hi] (hi - lo <= 15): the natural mapping (c = q) if its m is exact in
 * fp16, else the first shifted or mirrored code assignment whose m is, else the one with
 * the smallest rounding of m. */
static struct q41c q41_choose(int lo, int hi, float s, float z, uint16_t s16)
{
    struct q41c best = {s16, 0, 0, 0, INFINITY};
    if (lo >= 0 && hi <= 15 && q41_try(0, 0, s, z, s16, &best)) return best;
    for (int k = -lo; k <= 15 - hi; k++)
        if (k != 0 && q41_try(0, k, s, z, s16, &best)) return best;
    for (int k = hi; k <= 15 + lo; k++)
        if (q41_try(1, k, s, z, s16, &best)) return best;
    return best;
}

/* Builds the blocks of row r of a natural-order packed tensor whose blocks all fit the
 * type (checked by packed_feasible). */
static void map_row(const struct lmp_qview *v, int64_t r, int type, uint8_t *codes,
                    unsigned char *out)
{
    const uint8_t *row = v->codes + (size_t)r * v->row_bytes;
    for (int64_t j = 0; j < v->cols; j++) codes[j] = (uint8_t)lmp_qpack_get(row, j, v->bits);
    for (int64_t b = 0; b < v->cols / QK; b++) {
        const uint8_t *q = codes + b * QK;
        int64_t gi = r * v->n_groups + (b * QK) / v->group;
        uint16_t s16 = v->scales[gi];
        float s = lmp_f16_to_f32(s16), z = lmp_f16_to_f32(v->zeros[gi]);
        int lo = 255, hi = 0;
        for (int j = 0; j < QK; j++) {
            if (q[j] < lo) lo = q[j];
            if (q[j] > hi) hi = q[j];
        }
        int zi = (int)z;
        if (type == LMP_GGML_TYPE_Q8_0) {
            struct lmp_ggml_block_q8_0 blk;
            int pos = lo - zi >= -128 && hi - zi <= 127;
            blk.d = pos ? s16 : (uint16_t)(s16 ^ 0x8000u);
            for (int j = 0; j < QK; j++) blk.qs[j] = (int8_t)(pos ? q[j] - zi : zi - q[j]);
            memcpy(out + b * (int64_t)sizeof blk, &blk, sizeof blk);
        } else if (type == LMP_GGML_TYPE_Q4_0) {
            struct lmp_ggml_block_q4_0 blk;
            int pos = lo - zi + 8 >= 0 && hi - zi + 8 <= 15;
            blk.d = pos ? s16 : (uint16_t)(s16 ^ 0x8000u);
            for (int j = 0; j < QK / 2; j++) {
                int c0 = pos ? q[j] - zi + 8 : zi - q[j] + 8;
                int c1 = pos ? q[j + QK / 2] - zi + 8 : zi - q[j + QK / 2] + 8;
                blk.qs[j] = (uint8_t)(c0 | (c1 << 4));
            }
            memcpy(out + b * (int64_t)sizeof blk, &blk, sizeof blk);
        } else {
            struct lmp_ggml_block_q4_1 blk;
            struct q41c c = q41_choose(lo, hi, s, z, s16);
            blk.d = c.d;
            blk.m = c.m;
            for (int j = 0; j < QK / 2; j++) {
                int c0 = c.neg ? c.k - q[j] : q[j] + c.k;
                int c1 = c.neg ? c.k - q[j + QK / 2] : q[j + QK / 2] + c.k;
                blk.qs[j] = (uint8_t)(c0 | (c1 << 4));
            }
            memcpy(out + b * (int64_t)sizeof blk, &blk, sizeof blk);
        }
    }
}

/* ---- the file ---------------------------------------------------------------------------- */

static int ftype_of(int ggml_type)
{
    switch (ggml_type) {
    case LMP_GGML_TYPE_F32: return 0;
    case LMP_GGML_TYPE_F16: return 1;
    case LMP_GGML_TYPE_Q4_0: return 2;
    case LMP_GGML_TYPE_Q4_1: return 3;
    case LMP_GGML_TYPE_Q8_0: return 7;
    case LMP_GGML_TYPE_Q4_K: return 14; /* LLAMA_FTYPE_MOSTLY_Q4_K_S */
    case LMP_GGML_TYPE_Q6_K: return 18;
    case LMP_GGML_TYPE_BF16: return 32;
    default: return 0;
    }
}

static enum lmp_status write_header(struct kvw *w, const struct lmp_model *m, int file_type,
                                    int any_quant, const char *path, struct lmp_err *err)
{
    const struct lmp_config *c = &m->cfg;
    w->arch = layers_uniform(c) ? "llama" : "deci";
    kv_str(w, "general.architecture", w->arch);
    kv_str(w, "general.name", c->name[0] ? c->name : "lmpress");
    kv_u32(w, "general.file_type", (uint32_t)file_type);
    kv_u32(w, "general.alignment", ALIGN);
    if (any_quant) kv_u32(w, "general.quantization_version", 2);
    kv_u32(w, lk(w, "context_length"), (uint32_t)c->max_ctx);
    kv_u32(w, lk(w, "embedding_length"), (uint32_t)c->dim);
    kv_u32(w, lk(w, "block_count"), (uint32_t)c->n_layers);
    kv_layer_int(w, c, "feed_forward_length", 2);
    kv_layer_int(w, c, "attention.head_count", 0);
    kv_layer_int(w, c, "attention.head_count_kv", 1);
    kv_u32(w, lk(w, "attention.key_length"), (uint32_t)c->head_dim);
    kv_u32(w, lk(w, "attention.value_length"), (uint32_t)c->head_dim);
    kv_u32(w, lk(w, "rope.dimension_count"), (uint32_t)c->head_dim);
    kv_f32(w, lk(w, "rope.freq_base"), c->rope_theta);
    kv_f32(w, lk(w, "attention.layer_norm_rms_epsilon"), c->norm_eps);
    kv_u32(w, lk(w, "vocab_size"), (uint32_t)c->vocab);
    return write_tokenizer(w, m, path, err);
}

static enum lmp_status write_zeros(struct lmp_outfile *of, uint64_t n, struct lmp_err *err)
{
    static const unsigned char z[ALIGN];
    while (n) {
        size_t k = n > ALIGN ? ALIGN : (size_t)n;
        enum lmp_status st = lmp_out_write(of, z, k, err);
        if (st) return st;
        n -= k;
    }
    return LMP_OK;
}

/* Converts and writes the rows of one tensor; fills its report entry. */
static enum lmp_status write_tensor(struct lmp_outfile *of, struct tplan *p,
                                    struct lmp_gguf_tensor_report *rp, struct lmp_err *err)
{
    const struct lmp_tensor *t = p->t;
    int packed = lmp_type_is_packed(t->type);
    size_t cols = (size_t)p->cols;
    float *x = malloc(cols * sizeof *x), *ref = malloc(cols * sizeof *ref);
    float *tmp = malloc(cols * sizeof *tmp);
    uint8_t *codes = malloc(cols);
    unsigned char *blk = malloc(p->row_bytes);
    enum lmp_status st = LMP_OK;
    if (!x || !ref || !tmp || !codes || !blk) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        goto done;
    }
    double max_err = 0.0;
    int64_t n_exact = 0, n_blocks = 0;
    for (int64_t r = 0; r < p->rows && !st; r++) {
        if (!packed) {
            if (p->how == LMP_GGUF_COPY) {
                size_t es = lmp_type_elem_size(t->type);
                st = lmp_out_write(of, (const unsigned char *)t->data + (size_t)r * cols * es,
                                   p->row_bytes, err);
                continue;
            }
            float_row(p, r, x);
            lmp_gguf_quantize(p->type, x, blk, p->cols);
            /* a weight (or block scale) past fp16's range would become inf */
            lmp_gguf_dequant(p->type, blk, tmp, p->cols);
            for (size_t c = 0; c < cols; c++)
                if (!isfinite(tmp[c]) && isfinite(x[c])) {
                    st = lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                                     "%s: tensor %s: value %g is out of the %s range; use "
                                     "another --type",
                                     of->path, t->name, (double)x[c],
                                     lmp_gguf_type_name(p->type));
                    break;
                }
            if (!st) st = lmp_out_write(of, blk, p->row_bytes, err);
            continue;
        }
        packed_row(&p->qv, r, tmp, ref);
        if (p->map)
            map_row(&p->qv, r, p->type, codes, blk);
        else
            lmp_gguf_quantize(p->type, ref, blk, p->cols);
        /* measure on what is written: the file's values against our dequantized ones */
        lmp_gguf_dequant(p->type, blk, x, p->cols);
        for (size_t c = 0; c < cols; c++) {
            double e = fabs((double)x[c] - (double)ref[c]);
            if (!(e <= max_err)) max_err = isnan(e) ? INFINITY : e;
        }
        if (p->type == LMP_GGML_TYPE_Q4_1 && p->map)
            for (size_t b = 0; b < cols / QK; b++) {
                int ok = 1;
                for (int j = 0; j < QK; j++) ok &= x[b * QK + j] == ref[b * QK + j];
                n_exact += ok;
                n_blocks++;
            }
        if (isinf(max_err)) {
            st = lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                             "%s: tensor %s: a weight is out of the %s range", of->path,
                             t->name, lmp_gguf_type_name(p->type));
            break;
        }
        st = lmp_out_write(of, blk, p->row_bytes, err);
    }
    if (st) goto done;
    snprintf(rp->name, sizeof rp->name, "%s", t->name);
    rp->ggml_type = p->type;
    rp->how = p->how;
    rp->fallback = p->fallback;
    rp->packed = packed;
    rp->why = p->why;
    rp->max_err = max_err;
    rp->n_blocks = n_blocks;
    rp->n_exact = n_exact;
    if (packed && p->map && p->type == LMP_GGML_TYPE_Q4_1 && n_exact < n_blocks)
        rp->how = LMP_GGUF_NEAR;
    if (packed && p->how == LMP_GGUF_EXACT && max_err != 0.0 && !(p->type == LMP_GGML_TYPE_Q4_1))
        st = lmp_err_set(err, LMP_ERR_INTERNAL,
                         "%s: tensor %s: exact mapping to %s differs by %g", of->path, t->name,
                         lmp_gguf_type_name(p->type), max_err);
done:
    free(x);
    free(ref);
    free(tmp);
    free(codes);
    free(blk);
    return st;
}

enum lmp_status lmp_ckpt_save_gguf(const struct lmp_model *m, const char *path,
                                   const struct lmp_gguf_write_opts *o,
                                   struct lmp_gguf_report *rep, struct lmp_err *err)
{
    int req = o ? o->type : -1;
    if (rep) memset(rep, 0, sizeof *rep);
    if (req >= 0 && lmp_gguf_type_from_name(lmp_gguf_type_name(req)) != req)
        return lmp_err_set(err, LMP_ERR_ARG, "%s: cannot write ggml type %d", path, req);
    if (!m->cfg.layer || m->cfg.n_layers <= 0)
        return lmp_err_set(err, LMP_ERR_ARG, "%s: the model has no layers", path);
    if (strcmp(m->cfg.arch, "llama") != 0)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "%s: architecture %s cannot be exported",
                           path, m->cfg.arch);

    struct tplan *plans = calloc((size_t)m->n_tensors + 1, sizeof *plans);
    struct lmp_gguf_tensor_report *rt = calloc((size_t)m->n_tensors + 1, sizeof *rt);
    struct kvw w = {0};
    struct gbuf ti = {0};
    struct lmp_outfile of = {0};
    struct gbuf head = {0};
    enum lmp_status st = LMP_OK;
    int np = 0, opened = 0;
    if (!plans || !rt) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        goto fail;
    }

    /* 1. plan every tensor: type, size, offset */
    uint64_t off = 0;
    int counts[64] = {0}, any_quant = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const struct lmp_tensor *t = &m->tensors[i];
        if (m->cfg.tied && strcmp(t->name, LMP_N_OUTPUT) == 0) continue;
        if (!is_llama_tensor(t->name)) {
            st = lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                             "%s: tensor %s is not part of a llama model; GGUF cannot hold it",
                             path, t->name);
            goto fail;
        }
        struct tplan *p = &plans[np];
        if ((st = plan_tensor(t, req, p, path, err))) goto fail;
        p->row_bytes = lmp_gguf_nbytes(p->type, p->cols);
        if (!p->row_bytes || (uint64_t)p->rows > UINT64_MAX / 4 / p->row_bytes) {
            st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: tensor %s is too large", path, t->name);
            goto fail;
        }
        p->nbytes = (uint64_t)p->rows * p->row_bytes;
        p->off = off;
        off += (p->nbytes + ALIGN - 1) / ALIGN * ALIGN;
        if (off > UINT64_MAX / 4) {
            st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: the model is too large", path);
            goto fail;
        }
        if (p->n_dims == 2 && p->type >= 0 && p->type < 64) counts[p->type]++;
        any_quant |= is_block_type(p->type);
        np++;
    }
    int best = LMP_GGML_TYPE_F32;
    for (int k = 0; k < 64; k++)
        if (counts[k] > counts[best]) best = k;

    /* 2. metadata and tensor infos */
    if ((st = write_header(&w, m, ftype_of(best), any_quant, path, err))) goto fail;
    for (int i = 0; i < np; i++) {
        const struct tplan *p = &plans[i];
        gb_str(&ti, p->t->name, strlen(p->t->name));
        gb_u32(&ti, (uint32_t)p->n_dims);
        gb_u64(&ti, (uint64_t)p->cols); /* ne[0] = in */
        if (p->n_dims == 2) gb_u64(&ti, (uint64_t)p->rows);
        gb_u32(&ti, (uint32_t)p->type);
        gb_u64(&ti, p->off);
    }
    if (w.b.oom || ti.oom) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        goto fail;
    }
    gb_put(&head, "GGUF", 4);
    gb_u32(&head, 3);
    gb_u64(&head, (uint64_t)np);
    gb_u64(&head, w.n);
    if (head.oom) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        goto fail;
    }

    /* 3. the file */
    if ((st = lmp_out_open(&of, path, err))) goto fail;
    opened = 1;
    uint64_t pos = head.len + w.b.len + ti.len;
    if ((st = lmp_out_write(&of, head.p, head.len, err)) ||
        (st = lmp_out_write(&of, w.b.p, w.b.len, err)) ||
        (st = lmp_out_write(&of, ti.p, ti.len, err)) ||
        (st = write_zeros(&of, (ALIGN - pos % ALIGN) % ALIGN, err)))
        goto fail;
    uint64_t data_start = (pos + ALIGN - 1) / ALIGN * ALIGN, dpos = 0;
    for (int i = 0; i < np; i++) {
        struct tplan *p = &plans[i];
        if ((st = write_zeros(&of, p->off - dpos, err))) goto fail;
        if ((st = write_tensor(&of, p, &rt[i], err))) goto fail;
        dpos = p->off + p->nbytes;
    }
    if ((st = write_zeros(&of, (ALIGN - dpos % ALIGN) % ALIGN, err))) goto fail;
    opened = 0;
    if ((st = lmp_out_commit(&of, err))) goto fail;
    free(head.p);
    head.p = NULL;
    if (rep) {
        rep->n = np;
        rep->t = rt;
        rt = NULL;
        rep->file_type = ftype_of(best);
        rep->file_bytes = data_start + dpos + (ALIGN - dpos % ALIGN) % ALIGN;
    }
    free(rt);
    free(plans);
    free(w.b.p);
    free(ti.p);
    return LMP_OK;
fail:
    free(head.p);
    if (opened) lmp_out_abort(&of);
    free(rt);
    free(plans);
    free(w.b.p);
    free(ti.p);
    return st;
}
