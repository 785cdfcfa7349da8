/* GGUF reader (versions 2 and 3): header, metadata, tensor infos, tensor data. A "llama"
 * model becomes an lmp_model whose tensors are all dequantized into owned F32 storage;
 * the file is mapped only while loading.
 *
 * Every count, length, offset and size read from the file is checked against the file
 * length before it is used, so a small (or hostile) file can never cause a large
 * allocation: metadata and tensor tables are bounded by the bytes they would need, and
 * tensors may not overlap, so the F32 output is at most ~7x the file size.
 *
 * File layout (ggml docs/gguf.md): "GGUF", u32 version, u64 tensor count, u64 metadata
 * count; metadata entries (string key, u32 value type, value); tensor infos (string name,
 * u32 n_dims, u64 ne[n_dims] innermost first, u32 ggml type, u64 offset); padding up to
 * general.alignment (default 32); tensor data, each offset relative to the data start. */
#include "gguf.h"
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- ggml types: names, traits, scalar reference dequantizers --------------------- */

static float f16_at(const unsigned char *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return lmp_f16_to_f32(h);
}

void lmp_gguf_dequant_f32_ref(const void *src, float *dst, int64_t n)
{
    if (n > 0) memcpy(dst, src, (size_t)n * sizeof(float));
}

void lmp_gguf_dequant_f16_ref(const void *src, float *dst, int64_t n)
{
    const unsigned char *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = f16_at(s + 2 * i);
}

void lmp_gguf_dequant_bf16_ref(const void *src, float *dst, int64_t n)
{
    const unsigned char *s = src;
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, s + 2 * i, 2);
        dst[i] = lmp_bf16_to_f32(h);
    }
}

/* Blocks are copied out with memcpy: tensor data in a GGUF file need not be aligned
 * for the block structs (general.alignment may be 1). */
void lmp_gguf_dequant_q4_0_ref(const void *src, float *dst, int64_t n)
{
    const unsigned char *s = src;
    for (int64_t b = 0; b < n / LMP_GGML_QK; b++) {
        struct lmp_ggml_block_q4_0 blk;
        memcpy(&blk, s + b * (int64_t)sizeof blk, sizeof blk);
        const float d = lmp_f16_to_f32(blk.d);
        float *y = dst + b * LMP_GGML_QK;
        for (int j = 0; j < LMP_GGML_QK / 2; j++) {
            y[j] = (float)((blk.qs[j] & 0x0f) - 8) * d;
            y[j + LMP_GGML_QK / 2] = (float)((blk.qs[j] >> 4) - 8) * d;
        }
    }
}

void lmp_gguf_dequant_q4_1_ref(const void *src, float *dst, int64_t n)
{
    const unsigned char *s = src;
    for (int64_t b = 0; b < n / LMP_GGML_QK; b++) {
        struct lmp_ggml_block_q4_1 blk;
        memcpy(&blk, s + b * (int64_t)sizeof blk, sizeof blk);
        const float d = lmp_f16_to_f32(blk.d), m = lmp_f16_to_f32(blk.m);
        float *y = dst + b * LMP_GGML_QK;
        for (int j = 0; j < LMP_GGML_QK / 2; j++) {
            y[j] = (float)(blk.qs[j] & 0x0f) * d + m;
            y[j + LMP_GGML_QK / 2] = (float)(blk.qs[j] >> 4) * d + m;
        }
    }
}

void lmp_gguf_dequant_q8_0_ref(const void *src, float *dst, int64_t n)
{
    const unsigned char *s = src;
    for (int64_t b = 0; b < n / LMP_GGML_QK; b++) {
        struct lmp_ggml_block_q8_0 blk;
        memcpy(&blk, s + b * (int64_t)sizeof blk, sizeof blk);
        const float d = lmp_f16_to_f32(blk.d);
        float *y = dst + b * LMP_GGML_QK;
        for (int j = 0; j < LMP_GGML_QK; j++) y[j] = (float)blk.qs[j] * d;
    }
}

/* Q4_K scales[12] holds eight 6-bit scales and eight 6-bit mins: sub-blocks 0..3 use the
 * low 6 bits of bytes 0..3 (scale) and 4..7 (min); sub-blocks 4..7 take their low 4 bits
 * from bytes 8..11 (scale: low nibble, min: high nibble) and their top 2 bits from the
 * spare top bits of bytes 0..3 (scale) and 4..7 (min). */
static void q4_K_scale_min(const uint8_t *sc, int s, int *scale, int *min)
{
    if (s < 4) {
        *scale = sc[s] & 63;
        *min = sc[s + 4] & 63;
    } else {
        *scale = (sc[s + 4] & 0x0f) | ((sc[s - 4] >> 6) << 4);
        *min = (sc[s + 4] >> 4) | ((sc[s] >> 6) << 4);
    }
}

void lmp_gguf_dequant_q4_K_ref(const void *src, float *dst, int64_t n)
{
    const unsigned char *s = src;
    for (int64_t b = 0; b < n / LMP_GGML_QK_K; b++) {
        struct lmp_ggml_block_q4_K blk;
        memcpy(&blk, s + b * (int64_t)sizeof blk, sizeof blk);
        const float d = lmp_f16_to_f32(blk.d), dmin = lmp_f16_to_f32(blk.dmin);
        float *y = dst + b * LMP_GGML_QK_K;
        for (int k = 0; k < 4; k++) { /* 64 elements = two sub-blocks sharing 32 bytes */
            int sc0, mn0, sc1, mn1;
            q4_K_scale_min(blk.scales, 2 * k, &sc0, &mn0);
            q4_K_scale_min(blk.scales, 2 * k + 1, &sc1, &mn1);
            const float d0 = d * (float)sc0, m0 = dmin * (float)mn0;
            const float d1 = d * (float)sc1, m1 = dmin * (float)mn1;
            const uint8_t *q = blk.qs + 32 * k;
            for (int l = 0; l < 32; l++) {
                y[64 * k + l] = d0 * (float)(q[l] & 0x0f) - m0;
                y[64 * k + 32 + l] = d1 * (float)(q[l] >> 4) - m1;
            }
        }
    }
}

void lmp_gguf_dequant_q6_K_ref(const void *src, float *dst, int64_t n)
{
    const unsigned char *s = src;
    for (int64_t b = 0; b < n / LMP_GGML_QK_K; b++) {
        struct lmp_ggml_block_q6_K blk;
        memcpy(&blk, s + b * (int64_t)sizeof blk, sizeof blk);
        const float d = lmp_f16_to_f32(blk.d);
        for (int h = 0; h < 2; h++) { /* two halves of 128 elements */
            const uint8_t *ql = blk.ql + 64 * h, *qh = blk.qh + 32 * h;
            const int8_t *sc = blk.scales + 8 * h;
            float *y = dst + b * LMP_GGML_QK_K + 128 * h;
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * (float)sc[is] * (float)q1;
                y[l + 32] = d * (float)sc[is + 2] * (float)q2;
                y[l + 64] = d * (float)sc[is + 4] * (float)q3;
                y[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
        }
    }
}

static const struct lmp_gguf_type_traits traits_f32 = {"F32", 1, 4, lmp_gguf_dequant_f32_ref};
static const struct lmp_gguf_type_traits traits_f16 = {"F16", 1, 2, lmp_gguf_dequant_f16_ref};
static const struct lmp_gguf_type_traits traits_bf16 = {"BF16", 1, 2, lmp_gguf_dequant_bf16_ref};
static const struct lmp_gguf_type_traits traits_q4_0 = {
    "Q4_0", LMP_GGML_QK, sizeof(struct lmp_ggml_block_q4_0), lmp_gguf_dequant_q4_0_ref};
static const struct lmp_gguf_type_traits traits_q4_1 = {
    "Q4_1", LMP_GGML_QK, sizeof(struct lmp_ggml_block_q4_1), lmp_gguf_dequant_q4_1_ref};
static const struct lmp_gguf_type_traits traits_q8_0 = {
    "Q8_0", LMP_GGML_QK, sizeof(struct lmp_ggml_block_q8_0), lmp_gguf_dequant_q8_0_ref};
static const struct lmp_gguf_type_traits traits_q4_K = {
    "Q4_K", LMP_GGML_QK_K, sizeof(struct lmp_ggml_block_q4_K), lmp_gguf_dequant_q4_K_ref};
static const struct lmp_gguf_type_traits traits_q6_K = {
    "Q6_K", LMP_GGML_QK_K, sizeof(struct lmp_ggml_block_q6_K), lmp_gguf_dequant_q6_K_ref};

const struct lmp_gguf_type_traits *lmp_gguf_type_traits(int ggml_type)
{
    switch (ggml_type) {
    case LMP_GGML_TYPE_F32: return &traits_f32;
    case LMP_GGML_TYPE_F16: return &traits_f16;
    case LMP_GGML_TYPE_BF16: return &traits_bf16;
    case LMP_GGML_TYPE_Q4_0: return &traits_q4_0;
    case LMP_GGML_TYPE_Q4_1: return &traits_q4_1;
    case LMP_GGML_TYPE_Q8_0: return &traits_q8_0;
    case LMP_GGML_TYPE_Q4_K: return &traits_q4_K;
    case LMP_GGML_TYPE_Q6_K: return &traits_q6_K;
    default: return NULL;
    }
}

const char *lmp_gguf_type_name(int ggml_type)
{
    /* ggml_type ids; NULL marks ids that were removed from ggml */
    static const char *const names[] = {
        "F32",     "F16",    "Q4_0",    "Q4_1",  NULL,    NULL,    "Q5_0",   "Q5_1",
        "Q8_0",    "Q8_1",   "Q2_K",    "Q3_K",  "Q4_K",  "Q5_K",  "Q6_K",   "Q8_K",
        "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",
        "I8",      "I16",    "I32",     "I64",   "F64",   "IQ1_M", "BF16",   NULL,
        NULL,      NULL,     "TQ1_0",   "TQ2_0", NULL,    NULL,    NULL,     "MXFP4",
    };
    if (ggml_type < 0 || ggml_type >= (int)(sizeof names / sizeof names[0])) return NULL;
    return names[ggml_type];
}

size_t lmp_gguf_nbytes(int ggml_type, int64_t n)
{
    const struct lmp_gguf_type_traits *tr = lmp_gguf_type_traits(ggml_type);
    if (!tr || n <= 0 || n % tr->block_size) return 0;
    uint64_t blocks = (uint64_t)(n / tr->block_size);
    if (blocks > SIZE_MAX / tr->type_size) return 0;
    return (size_t)blocks * tr->type_size;
}

int lmp_gguf_dequant(int ggml_type, const void *src, float *dst, int64_t n)
{
    const struct lmp_gguf_type_traits *tr = lmp_gguf_type_traits(ggml_type);
    if (!tr || n < 0 || n % tr->block_size) return -1;
    tr->to_float(src, dst, n);
    return 0;
}

/* ---- the container ------------------------------------------------------------------- */

enum gguf_vtype {
    GV_U8 = 0, GV_I8, GV_U16, GV_I16, GV_U32, GV_I32, GV_F32, GV_BOOL,
    GV_STR, GV_ARR, GV_U64, GV_I64, GV_F64, GV_COUNT,
};
static const size_t vsize[GV_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
static const char *const vname[GV_COUNT] = {"u8",  "i8",     "u16",   "i16", "u32",
                                             "i32", "f32",    "bool",  "string",
                                             "array", "u64", "i64",   "f64"};

#define GGUF_MAX_NEST 8          /* arrays of arrays deeper than this are rejected */
#define GGUF_MAX_KEY 65535       /* spec: keys are at most 2^16-1 bytes */
#define GGUF_MIN_KV_BYTES 13     /* u64 key length + 1 key byte + u32 type + 1 value byte */
#define GGUF_MIN_TINFO_BYTES 33  /* u64 name length + 1 + u32 n_dims + u64 ne + u32 + u64 */

struct gguf_kv {
    const char *key;
    size_t key_len;
    uint32_t type;
    size_t off;        /* file offset of the scalar value, or of an array's first element */
    uint32_t arr_type; /* arrays only */
    uint64_t arr_n;
};

struct gguf_tinfo {
    const char *name; /* not NUL-terminated in the file; see tname */
    size_t name_len;
    char tname[LMP_NAME_MAX];
    uint32_t n_dims;
    int64_t ne[4]; /* innermost first */
    int64_t nelem;
    uint32_t type;
    uint64_t offset; /* relative to data_start */
    uint64_t nbytes;
};

struct gguf {
    const char *path;
    const unsigned char *p;
    size_t len;
    uint32_t version;
    uint64_t n_kv;
    struct gguf_kv *kv; /* sorted by key after parsing */
    uint64_t n_ti;
    struct gguf_tinfo *ti; /* file order */
    uint64_t alignment;
    uint64_t data_start;
    char what[160]; /* context for cursor error messages */
};

/* Copies a file string for a one-line message: non-printable bytes become '?'. */
static const char *printable(char *buf, size_t cap, const char *s, size_t len)
{
    size_t o = 0, i = 0;
    for (; i < len && o + 4 < cap; i++) {
        unsigned char ch = (unsigned char)s[i];
        buf[o++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    if (i < len) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = 0;
    return buf;
}

/* Copies a file string into a config field: control bytes become '?', UTF-8 is kept and
 * never cut inside a character. */
static void copy_text(char *dst, size_t cap, const char *s, size_t len)
{
    size_t n = len;
    if (n > cap - 1) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80) n--;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        dst[i] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
    }
    dst[n] = 0;
}

static enum lmp_status rd_str(struct lmp_cursor *c, const char **s, size_t *len,
                              const char *what, struct lmp_err *err)
{
    uint64_t n;
    enum lmp_status st = lmp_cur_u64(c, &n, what, err);
    if (st) return st;
    if (n > c->len - c->pos)
        return lmp_err_set(err, LMP_ERR_FORMAT,
                           "%s: %s: string length %llu at offset %zu runs past end of file "
                           "(size %zu)",
                           c->path, what, (unsigned long long)n, c->pos - 8, c->len);
    const void *p;
    if ((st = lmp_cur_bytes(c, (size_t)n, &p, what, err))) return st;
    *s = p;
    *len = (size_t)n;
    return LMP_OK;
}

/* Reads an array header and checks that its elements can fit in the rest of the file. */
static enum lmp_status rd_arr_head(struct lmp_cursor *c, int depth, uint32_t *type,
                                   uint64_t *n, const char *what, struct lmp_err *err)
{
    enum lmp_status st;
    if ((st = lmp_cur_u32(c, type, what, err))) return st;
    if ((st = lmp_cur_u64(c, n, what, err))) return st;
    if (*type >= GV_COUNT)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: %s: unknown array element type %u",
                           c->path, what, *type);
    if (*type == GV_ARR && depth + 1 >= GGUF_MAX_NEST)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: %s: arrays nested more than %d deep",
                           c->path, what, GGUF_MAX_NEST);
    /* smallest encoding of one element: its fixed size, a string's length, an array's
     * type + count */
    size_t min = vsize[*type] ? vsize[*type] : *type == GV_STR ? 8 : 12;
    if (*n > (c->len - c->pos) / min)
        return lmp_err_set(err, LMP_ERR_FORMAT,
                           "%s: %s: array of %llu %s values runs past end of file (size %zu)",
                           c->path, what, (unsigned long long)*n, vname[*type], c->len);
    return LMP_OK;
}

/* Steps over one value of the given type (recursively for arrays). */
static enum lmp_status skip_value(struct lmp_cursor *c, uint32_t type, int depth,
                                  const char *what, struct lmp_err *err)
{
    enum lmp_status st;
    const void *p;
    if (type >= GV_COUNT)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: %s: unknown value type %u", c->path,
                           what, type);
    if (type == GV_STR) {
        const char *s;
        size_t n;
        return rd_str(c, &s, &n, what, err);
    }
    if (type != GV_ARR) return lmp_cur_bytes(c, vsize[type], &p, what, err);
    uint32_t at;
    uint64_t n;
    if ((st = rd_arr_head(c, depth, &at, &n, what, err))) return st;
    if (vsize[at]) return lmp_cur_bytes(c, (size_t)n * vsize[at], &p, what, err);
    for (uint64_t i = 0; i < n; i++)
        if ((st = skip_value(c, at, depth + 1, what, err))) return st;
    return LMP_OK;
}

static int kv_cmp(const void *a, const void *b)
{
    const struct gguf_kv *x = a, *y = b;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int r = memcmp(x->key, y->key, n);
    if (r) return r;
    return x->key_len < y->key_len ? -1 : x->key_len > y->key_len;
}

static const struct gguf_kv *kv_find(const struct gguf *g, const char *key)
{
    struct gguf_kv k = {.key = key, .key_len = strlen(key)};
    if (!g->n_kv) return NULL;
    return bsearch(&k, g->kv, (size_t)g->n_kv, sizeof k, kv_cmp);
}

static int is_int_type(uint32_t t)
{
    return t == GV_U8 || t == GV_I8 || t == GV_U16 || t == GV_I16 || t == GV_U32 ||
           t == GV_I32 || t == GV_U64 || t == GV_I64;
}

/* Reads an integer of any integer type at off; 0 if it does not fit in int64. */
static int int_at(const struct gguf *g, uint32_t type, size_t off, int64_t *v)
{
    const unsigned char *p = g->p + off;
    switch (type) {
    case GV_U8: *v = p[0]; return 1;
    case GV_I8: *v = (int8_t)p[0]; return 1;
    case GV_U16: { uint16_t x; memcpy(&x, p, 2); *v = x; return 1; }
    case GV_I16: { int16_t x; memcpy(&x, p, 2); *v = x; return 1; }
    case GV_U32: { uint32_t x; memcpy(&x, p, 4); *v = x; return 1; }
    case GV_I32: { int32_t x; memcpy(&x, p, 4); *v = x; return 1; }
    case GV_I64: { int64_t x; memcpy(&x, p, 8); *v = x; return 1; }
    case GV_U64: {
        uint64_t x;
        memcpy(&x, p, 8);
        if (x > INT64_MAX) return 0;
        *v = (int64_t)x;
        return 1;
    }
    default: return 0;
    }
}

/* Integer metadata in [lo, hi]. Absent: *found = 0 (an error if required). */
static enum lmp_status kv_int(const struct gguf *g, const char *key, int required, int64_t lo,
                              int64_t hi, int64_t *out, int *found, struct lmp_err *err)
{
    const struct gguf_kv *kv = kv_find(g, key);
    if (found) *found = kv != NULL;
    if (!kv) {
        if (required) return lmp_err_set(err, LMP_ERR_FORMAT, "%s: missing %s", g->path, key);
        return LMP_OK;
    }
    if (!is_int_type(kv->type))
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: %s has type %s, expected an integer",
                           g->path, key, vname[kv->type]);
    int64_t v = 0;
    if (!int_at(g, kv->type, kv->off, &v))
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: %s does not fit in 64 bits", g->path, key);
    if (v < lo || v > hi)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: %s = %lld out of range [%lld, %lld]",
                           g->path, key, (long long)v, (long long)lo, (long long)hi);
    *out = v;
    return LMP_OK;
}

/* A per-layer integer: a scalar for every layer, or an integer array of n_layers values
 * (pruned models have per-layer sizes). Absent and not required: out untouched. */
static enum lmp_status kv_layer_ints(const struct gguf *g, const char *key, int required,
                                     int n_layers, int64_t lo, int64_t hi, int *out,
                                     int *found, struct lmp_err *err)
{
    const struct gguf_kv *kv = kv_find(g, key);
    *found = kv != NULL;
    if (!kv || kv->type != GV_ARR) {
        int64_t v;
        int f;
        enum lmp_status st = kv_int(g, key, required, lo, hi, &v, &f, err);
        if (st || !f) return st;
        for (int l = 0; l < n_layers; l++) out[l] = (int)v;
        return LMP_OK;
    }
    if (!is_int_type(kv->arr_type))
        return lmp_err_set(err, LMP_ERR_FORMAT,
                           "%s: %s is an array of %s, expected integers", g->path, key,
                           vname[kv->arr_type]);
    if (kv->arr_n != (uint64_t)n_layers)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: %s has %llu values for %d layers",
                           g->path, key, (unsigned long long)kv->arr_n, n_layers);
    for (int l = 0; l < n_layers; l++) {
        int64_t v;
        if (!int_at(g, kv->arr_type, kv->off + (size_t)l * vsize[kv->arr_type], &v) ||
            v < lo || v > hi)
            return lmp_err_set(err, LMP_ERR_FORMAT,
                               "%s: %s[%d] out of range [%lld, %lld]", g->path, key, l,
                               (long long)lo, (long long)hi);
        out[l] = (int)v;
    }
    return LMP_OK;
}

static enum lmp_status kv_float(const struct gguf *g, const char *key, float *out,
                                struct lmp_err *err)
{
    const struct gguf_kv *kv = kv_find(g, key);
    if (!kv) return LMP_OK;
    if (kv->type == GV_F32) {
        memcpy(out, g->p + kv->off, 4);
    } else if (kv->type == GV_F64) {
        double d;
        memcpy(&d, g->p + kv->off, 8);
        *out = (float)d;
    } else {
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: %s has type %s, expected a float",
                           g->path, key, vname[kv->type]);
    }
    return LMP_OK;
}

static enum lmp_status kv_bool(const struct gguf *g, const char *key, int *out,
                               struct lmp_err *err)
{
    const struct gguf_kv *kv = kv_find(g, key);
    if (!kv) return LMP_OK;
    if (kv->type != GV_BOOL)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: %s has type %s, expected a bool", g->path,
                           key, vname[kv->type]);
    *out = g->p[kv->off] != 0;
    return LMP_OK;
}

/* String metadata as a pointer into the file (not NUL-terminated); *s = NULL if absent. */
static enum lmp_status kv_str(const struct gguf *g, const char *key, const char **s,
                              size_t *len, struct lmp_err *err)
{
    const struct gguf_kv *kv = kv_find(g, key);
    *s = NULL;
    *len = 0;
    if (!kv) return LMP_OK;
    if (kv->type != GV_STR)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: %s has type %s, expected a string",
                           g->path, key, vname[kv->type]);
    uint64_t n;
    memcpy(&n, g->p + kv->off, 8); /* validated while parsing */
    *s = (const char *)g->p + kv->off + 8;
    *len = (size_t)n;
    return LMP_OK;
}

static int str_is(const char *s, size_t len, const char *lit)
{
    return s && len == strlen(lit) && memcmp(s, lit, len) == 0;
}

static void gguf_free(struct gguf *g)
{
    free(g->kv);
    free(g->ti);
    g->kv = NULL;
    g->ti = NULL;
}

static enum lmp_status parse_kv(struct gguf *g, struct lmp_cursor *c, struct lmp_err *err)
{
    enum lmp_status st;
    if (g->n_kv > (c->len - c->pos) / GGUF_MIN_KV_BYTES)
        return lmp_err_set(err, LMP_ERR_FORMAT,
                           "%s: metadata count %llu is more than the file (size %zu) can hold",
                           g->path, (unsigned long long)g->n_kv, c->len);
    g->kv = calloc((size_t)g->n_kv + 1, sizeof *g->kv);
    if (!g->kv) return lmp_err_set(err, LMP_ERR_NOMEM, "%s: out of memory", g->path);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        struct gguf_kv *kv = &g->kv[i];
        snprintf(g->what, sizeof g->what, "metadata entry %llu key", (unsigned long long)i);
        if ((st = rd_str(c, &kv->key, &kv->key_len, g->what, err))) return st;
        if (kv->key_len == 0 || kv->key_len > GGUF_MAX_KEY)
            return lmp_err_set(err, LMP_ERR_FORMAT, "%s: metadata entry %llu: key length %zu",
                               g->path, (unsigned long long)i, kv->key_len);
        char kb[80];
        snprintf(g->what, sizeof g->what, "metadata %s",
                 printable(kb, sizeof kb, kv->key, kv->key_len));
        if ((st = lmp_cur_u32(c, &kv->type, g->what, err))) return st;
        if (kv->type >= GV_COUNT)
            return lmp_err_set(err, LMP_ERR_FORMAT, "%s: %s: unknown value type %u", g->path,
                               g->what, kv->type);
        kv->off = c->pos;
        if (kv->type == GV_ARR) {
            if ((st = rd_arr_head(c, 0, &kv->arr_type, &kv->arr_n, g->what, err))) return st;
            kv->off = c->pos;
            if (vsize[kv->arr_type]) {
                const void *p;
                st = lmp_cur_bytes(c, (size_t)kv->arr_n * vsize[kv->arr_type], &p, g->what, err);
            } else {
                for (uint64_t k = 0; k < kv->arr_n && !st; k++)
                    st = skip_value(c, kv->arr_type, 1, g->what, err);
            }
        } else {
            st = skip_value(c, kv->type, 0, g->what, err);
        }
        if (st) return st;
    }
    if (g->n_kv > 1) {
        qsort(g->kv, (size_t)g->n_kv, sizeof *g->kv, kv_cmp);
        for (uint64_t i = 1; i < g->n_kv; i++)
            if (kv_cmp(&g->kv[i - 1], &g->kv[i]) == 0) {
                char kb[80];
                return lmp_err_set(err, LMP_ERR_FORMAT, "%s: duplicate metadata key %s",
                                   g->path,
                                   printable(kb, sizeof kb, g->kv[i].key, g->kv[i].key_len));
            }
    }
    return LMP_OK;
}

static int ti_cmp_offset(const void *a, const void *b)
{
    const struct gguf_tinfo *x = *(const struct gguf_tinfo *const *)a;
    const struct gguf_tinfo *y = *(const struct gguf_tinfo *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static enum lmp_status parse_tensor_infos(struct gguf *g, struct lmp_cursor *c,
                                          struct lmp_err *err)
{
    enum lmp_status st;
    if (g->n_ti > LMP_MAX_TENSORS)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: tensor count %llu exceeds the limit %d",
                           g->path, (unsigned long long)g->n_ti, LMP_MAX_TENSORS);
    if (g->n_ti > (c->len - c->pos) / GGUF_MIN_TINFO_BYTES)
        return lmp_err_set(err, LMP_ERR_FORMAT,
                           "%s: tensor count %llu is more than the file (size %zu) can hold",
                           g->path, (unsigned long long)g->n_ti, c->len);
    g->ti = calloc((size_t)g->n_ti + 1, sizeof *g->ti);
    if (!g->ti) return lmp_err_set(err, LMP_ERR_NOMEM, "%s: out of memory", g->path);
    for (uint64_t i = 0; i < g->n_ti; i++) {
        struct gguf_tinfo *t = &g->ti[i];
        snprintf(g->what, sizeof g->what, "tensor info %llu name", (unsigned long long)i);
        if ((st = rd_str(c, &t->name, &t->name_len, g->what, err))) return st;
        if (t->name_len == 0 || t->name_len >= LMP_NAME_MAX ||
            memchr(t->name, 0, t->name_len))
            return lmp_err_set(err, LMP_ERR_FORMAT,
                               "%s: tensor info %llu: invalid name (length %zu, at most %d, "
                               "no NUL bytes)",
                               g->path, (unsigned long long)i, t->name_len, LMP_NAME_MAX - 1);
        memcpy(t->tname, t->name, t->name_len);
        t->tname[t->name_len] = 0;
        char nb[80];
        printable(nb, sizeof nb, t->name, t->name_len);
        snprintf(g->what, sizeof g->what, "tensor %s info", nb);
        if ((st = lmp_cur_u32(c, &t->n_dims, g->what, err))) return st;
        if (t->n_dims < 1 || t->n_dims > 4)
            return lmp_err_set(err, LMP_ERR_FORMAT, "%s: tensor %s: n_dims %u (must be 1..4)",
                               g->path, nb, t->n_dims);
        t->nelem = 1;
        for (uint32_t d = 0; d < 4; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            uint64_t v;
            if ((st = lmp_cur_u64(c, &v, g->what, err))) return st;
            if (v == 0 || v > INT64_MAX)
                return lmp_err_set(err, LMP_ERR_FORMAT, "%s: tensor %s: dimension %u is %llu",
                                   g->path, nb, d, (unsigned long long)v);
            t->ne[d] = (int64_t)v;
            if (__builtin_mul_overflow(t->nelem, t->ne[d], &t->nelem))
                return lmp_err_set(err, LMP_ERR_FORMAT,
                                   "%s: tensor %s: element count overflows (dimension %u = %llu)",
                                   g->path, nb, d, (unsigned long long)v);
        }
        if ((st = lmp_cur_u32(c, &t->type, g->what, err))) return st;
        if ((st = lmp_cur_u64(c, &t->offset, g->what, err))) return st;
    }

    /* data section */
    uint64_t a = g->alignment, pos = c->pos;
    g->data_start = (pos + a - 1) / a * a; /* pos < file size, a <= 2^30: no overflow */
    if (g->n_ti && g->data_start > c->len)
        return lmp_err_set(err, LMP_ERR_FORMAT,
                           "%s: tensor data would start at %llu, past end of file (size %zu)",
                           g->path, (unsigned long long)g->data_start, c->len);
    uint64_t data_len = g->n_ti ? c->len - g->data_start : 0;
    for (uint64_t i = 0; i < g->n_ti; i++) {
        struct gguf_tinfo *t = &g->ti[i];
        char nb[80];
        printable(nb, sizeof nb, t->name, t->name_len);
        const struct lmp_gguf_type_traits *tr = lmp_gguf_type_traits((int)t->type);
        if (!tr) {
            const char *tn = t->type <= 1000 ? lmp_gguf_type_name((int)t->type) : NULL;
            if (tn)
                return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                                   "%s: tensor %s: type %s is not supported (F32 F16 BF16 "
                                   "Q8_0 Q4_0 Q4_1 Q4_K Q6_K are)",
                                   g->path, nb, tn);
            return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "%s: tensor %s: unknown ggml type %u",
                               g->path, nb, t->type);
        }
        if (t->ne[0] % tr->block_size)
            return lmp_err_set(err, LMP_ERR_FORMAT,
                               "%s: tensor %s: row length %lld is not a multiple of the %s "
                               "block size %d",
                               g->path, nb, (long long)t->ne[0], tr->name, tr->block_size);
        t->nbytes = lmp_gguf_nbytes((int)t->type, t->nelem);
        if (!t->nbytes)
            return lmp_err_set(err, LMP_ERR_FORMAT, "%s: tensor %s: size of %lld %s elements "
                               "overflows", g->path, nb, (long long)t->nelem, tr->name);
        if (t->offset % a)
            return lmp_err_set(err, LMP_ERR_FORMAT,
                               "%s: tensor %s: offset %llu is not a multiple of the alignment "
                               "%llu",
                               g->path, nb, (unsigned long long)t->offset,
                               (unsigned long long)a);
        if (t->nbytes > data_len || t->offset > data_len - t->nbytes)
            return lmp_err_set(err, LMP_ERR_FORMAT,
                               "%s: tensor %s: data at offset %llu + %llu bytes runs past end "
                               "of file (tensor data is %llu bytes from %llu)",
                               g->path, nb, (unsigned long long)t->offset,
                               (unsigned long long)t->nbytes, (unsigned long long)data_len,
                               (unsigned long long)g->data_start);
    }
    /* no two tensors may share bytes: this also bounds the total output by the file size */
    if (g->n_ti > 1) {
        struct gguf_tinfo **order = malloc((size_t)g->n_ti * sizeof *order);
        if (!order) return lmp_err_set(err, LMP_ERR_NOMEM, "%s: out of memory", g->path);
        for (uint64_t i = 0; i < g->n_ti; i++) order[i] = &g->ti[i];
        qsort(order, (size_t)g->n_ti, sizeof *order, ti_cmp_offset);
        st = LMP_OK;
        for (uint64_t i = 1; i < g->n_ti && !st; i++)
            if (order[i - 1]->offset + order[i - 1]->nbytes > order[i]->offset) {
                char n1[80], n2[80];
                st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: tensors %s and %s overlap", g->path,
                                 printable(n1, sizeof n1, order[i - 1]->name,
                                           order[i - 1]->name_len),
                                 printable(n2, sizeof n2, order[i]->name, order[i]->name_len));
            }
        free(order);
        if (st) return st;
    }
    return LMP_OK;
}

static enum lmp_status gguf_parse(struct gguf *g, struct lmp_err *err)
{
    struct lmp_cursor c = {g->p, g->len, 0, g->path};
    enum lmp_status st;
    const void *magic;
    if ((st = lmp_cur_bytes(&c, 4, &magic, "magic", err))) return st;
    if (memcmp(magic, "GGUF", 4) != 0)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: bad magic (not a GGUF file)", g->path);
    if ((st = lmp_cur_u32(&c, &g->version, "version", err))) return st;
    if (g->version == 1)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                           "%s: GGUF version 1 is not supported (versions 2 and 3 are)",
                           g->path);
    if (g->version != 2 && g->version != 3)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "%s: GGUF version %u is not supported%s",
                           g->path, g->version,
                           (g->version & 0xffff) == 0 ? " (big-endian file?)" : "");
    if ((st = lmp_cur_u64(&c, &g->n_ti, "tensor count", err))) return st;
    if ((st = lmp_cur_u64(&c, &g->n_kv, "metadata count", err))) return st;
    if ((st = parse_kv(g, &c, err))) return st;

    int64_t align = 32;
    int found;
    if ((st = kv_int(g, "general.alignment", 0, 1, 1 << 30, &align, &found, err))) return st;
    if (align & (align - 1))
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: general.alignment %lld is not a power of 2",
                           g->path, (long long)align);
    g->alignment = (uint64_t)align;
    return parse_tensor_infos(g, &c, err);
}

/* ---- llama model ----------------------------------------------------------------------- */

static const char *const layer_suffix[] = {
    LMP_N_ATTN_NORM, LMP_N_WQ, LMP_N_WK, LMP_N_WV, LMP_N_WO, LMP_N_BQ,
    LMP_N_BK, LMP_N_BV, LMP_N_FFN_NORM, LMP_N_GATE, LMP_N_UP, LMP_N_DOWN,
};
#define N_SUFFIX ((int)(sizeof layer_suffix / sizeof layer_suffix[0]))

/* Index of a llama tensor name in [0, 3 + N_SUFFIX*n_layers), -1 if not a llama tensor,
 * -2 if a per-layer name with a layer number >= n_layers. */
static int llama_tensor_index(const char *name, int n_layers)
{
    if (strcmp(name, LMP_N_TOKEMBD) == 0) return 0;
    if (strcmp(name, LMP_N_OUTNORM) == 0) return 1;
    if (strcmp(name, LMP_N_OUTPUT) == 0) return 2;
    if (strncmp(name, "blk.", 4) != 0) return -1;
    const char *p = name + 4;
    long l = 0;
    int nd = 0;
    while (*p >= '0' && *p <= '9' && nd < 6) {
        l = l * 10 + (*p++ - '0');
        nd++;
    }
    if (nd == 0 || *p != '.' || (nd > 1 && name[4] == '0')) return -1;
    p++;
    for (int s = 0; s < N_SUFFIX; s++)
        if (strcmp(p, layer_suffix[s]) == 0) return l < n_layers ? 3 + (int)l * N_SUFFIX + s : -2;
    return -1;
}

static const struct gguf_tinfo *ti_find(const struct gguf *g, const char *name)
{
    for (uint64_t i = 0; i < g->n_ti; i++)
        if (strcmp(g->ti[i].tname, name) == 0) return &g->ti[i];
    return NULL;
}

static enum lmp_status read_config(const struct gguf *g, struct lmp_model *m,
                                   struct lmp_err *err)
{
    struct lmp_config *cf = &m->cfg;
    enum lmp_status st;
    const char *s;
    size_t len;
    char key[128], sb[80];
    int found;
    int64_t v;
    const char *A = "llama"; /* key prefix = architecture */

    if ((st = kv_str(g, "general.architecture", &s, &len, err))) return st;
    if (!s) return lmp_err_set(err, LMP_ERR_FORMAT, "%s: missing general.architecture", g->path);
    if (str_is(s, len, "deci")) /* llama.cpp's Llama with per-layer shapes (pruned models) */
        A = "deci";
    else if (!str_is(s, len, "llama"))
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                           "%s: general.architecture '%s' is not supported (llama, deci)",
                           g->path, printable(sb, sizeof sb, s, len));
    snprintf(cf->arch, sizeof cf->arch, "llama");
    if ((st = kv_str(g, "general.name", &s, &len, err))) return st;
    if (s)
        copy_text(cf->name, sizeof cf->name, s, len);
    else
        snprintf(cf->name, sizeof cf->name, "%s", lmp_basename(g->path));

#define K(suffix) (snprintf(key, sizeof key, "%s.%s", A, suffix), key)
    if ((st = kv_int(g, K("expert_count"), 0, 0, INT32_MAX, &v, &found, err))) return st;
    if (found && v > 0)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                           "%s: %s = %lld: mixture-of-experts models are not supported", g->path,
                           key, (long long)v);
    if ((st = kv_str(g, K("rope.scaling.type"), &s, &len, err))) return st;
    if (s && !str_is(s, len, "none"))
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "%s: %s '%s' is not supported", g->path,
                           key, printable(sb, sizeof sb, s, len));

    if ((st = kv_int(g, K("embedding_length"), 1, 1, LMP_MAX_DIM, &v, NULL, err))) return st;
    cf->dim = (int)v;
    if ((st = kv_int(g, K("block_count"), 1, 1, LMP_MAX_LAYERS, &v, NULL, err))) return st;
    cf->n_layers = (int)v;
    if ((st = kv_int(g, K("context_length"), 1, 1, LMP_MAX_CTX, &v, NULL, err))) return st;
    cf->max_ctx = (int)v;
    if ((st = lmp_config_set_uniform(cf, 1, 1, 1, err))) return st;
    int L = cf->n_layers;
    int *tmp = malloc((size_t)L * sizeof *tmp);
    if (!tmp) return lmp_err_set(err, LMP_ERR_NOMEM, "%s: out of memory", g->path);
    st = kv_layer_ints(g, K("feed_forward_length"), 1, L, 1, LMP_MAX_DIM * 8, tmp, &found, err);
    for (int l = 0; l < L && !st; l++) cf->layer[l].ffn = tmp[l];
    if (!st) st = kv_layer_ints(g, K("attention.head_count"), 1, L, 1, 65536, tmp, &found, err);
    for (int l = 0; l < L && !st; l++) cf->layer[l].n_heads = cf->layer[l].n_kv_heads = tmp[l];
    if (!st)
        st = kv_layer_ints(g, K("attention.head_count_kv"), 0, L, 1, 65536, tmp, &found, err);
    for (int l = 0; l < L && !st && found; l++) cf->layer[l].n_kv_heads = tmp[l];
    free(tmp);
    if (st) return st;

    /* head size: attention.key_length, else the rotary dimension, else dim / n_heads */
    int64_t kl = 0, rd = 0, vl = 0;
    int fk, fr, fv;
    if ((st = kv_int(g, K("attention.key_length"), 0, 1, 4096, &kl, &fk, err))) return st;
    if ((st = kv_int(g, K("rope.dimension_count"), 0, 1, 4096, &rd, &fr, err))) return st;
    if ((st = kv_int(g, K("attention.value_length"), 0, 1, 4096, &vl, &fv, err))) return st;
    if (fk && fr && kl != rd)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                           "%s: partial rotary embedding (rope.dimension_count %lld, "
                           "attention.key_length %lld) is not supported",
                           g->path, (long long)rd, (long long)kl);
    if (fk)
        cf->head_dim = (int)kl;
    else if (fr)
        cf->head_dim = (int)rd;
    else if (cf->dim % cf->layer[0].n_heads == 0)
        cf->head_dim = cf->dim / cf->layer[0].n_heads;
    else
        return lmp_err_set(err, LMP_ERR_FORMAT,
                           "%s: embedding_length %d is not a multiple of head_count %d and no "
                           "attention.key_length is given",
                           g->path, cf->dim, cf->layer[0].n_heads);
    if (fv && vl != cf->head_dim)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                           "%s: attention.value_length %lld differs from the key length %d",
                           g->path, (long long)vl, cf->head_dim);

    cf->rope_theta = 10000.0f;
    if ((st = kv_float(g, K("rope.freq_base"), &cf->rope_theta, err))) return st;
    cf->norm_eps = 1e-5f;
    if ((st = kv_float(g, K("attention.layer_norm_rms_epsilon"), &cf->norm_eps, err))) return st;

    const struct gguf_tinfo *te = ti_find(g, LMP_N_TOKEMBD);
    if (!te) return lmp_err_set(err, LMP_ERR_FORMAT, "%s: missing tensor %s", g->path, LMP_N_TOKEMBD);
    if (te->n_dims != 2 || te->ne[1] > LMP_MAX_VOCAB)
        return lmp_err_set(err, LMP_ERR_FORMAT,
                           "%s: tensor %s: expected 2 dimensions {dim, vocab} with vocab <= %d",
                           g->path, LMP_N_TOKEMBD, LMP_MAX_VOCAB);
    cf->vocab = (int)te->ne[1];
    if ((st = kv_int(g, K("vocab_size"), 0, 1, LMP_MAX_VOCAB, &v, &found, err))) return st;
    if (found && v != cf->vocab)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: %s = %lld but %s has %d rows", g->path,
                           key, (long long)v, LMP_N_TOKEMBD, cf->vocab);
#undef K
    cf->tied = ti_find(g, LMP_N_OUTPUT) == NULL;
    cf->attn_bias = 0;
    for (uint64_t i = 0; i < g->n_ti; i++) {
        int idx = llama_tensor_index(g->ti[i].tname, L);
        if (idx >= 3 && strcmp(layer_suffix[(idx - 3) % N_SUFFIX], LMP_N_BQ) == 0)
            cf->attn_bias = 1;
    }
    return LMP_OK;
}

/* Token ids: absent, -1 or 0xFFFFFFFF mean "none". */
static enum lmp_status read_token_id(const struct gguf *g, const char *key, int n_tokens,
                                     int *out, struct lmp_err *err)
{
    int64_t v;
    int found;
    enum lmp_status st = kv_int(g, key, 0, -1, UINT32_MAX, &v, &found, err);
    if (st) return st;
    if (!found || v == -1 || v == UINT32_MAX) {
        *out = -1;
        return LMP_OK;
    }
    if (v >= n_tokens)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: %s = %lld is not a token id (%d tokens)",
                           g->path, key, (long long)v, n_tokens);
    *out = (int)v;
    return LMP_OK;
}

/* Collects pointers to the n strings of a string array (already bounds-checked). */
static enum lmp_status str_array(const struct gguf *g, const struct gguf_kv *kv,
                                 const char ***strs, uint32_t **lens, struct lmp_err *err)
{
    size_t n = (size_t)kv->arr_n;
    *strs = malloc((n + 1) * sizeof **strs);
    *lens = malloc((n + 1) * sizeof **lens);
    if (!*strs || !*lens) return lmp_err_set(err, LMP_ERR_NOMEM, "%s: out of memory", g->path);
    struct lmp_cursor c = {g->p, g->len, kv->off, g->path};
    for (size_t i = 0; i < n; i++) {
        size_t len;
        enum lmp_status st = rd_str(&c, &(*strs)[i], &len, "string array", err);
        if (st) return st;
        if (len > UINT32_MAX)
            return lmp_err_set(err, LMP_ERR_FORMAT, "%s: string of %zu bytes is too long",
                               g->path, len);
        (*lens)[i] = (uint32_t)len;
    }
    return LMP_OK;
}

/* Known pre-tokenizer regexes (from llama.cpp's llama-vocab.cpp, which takes them from
 * the models' tokenizer.json). NULL: the GPT-2 default. */
static const char *pre_regex_for(const char *s, size_t len, int *is_llama3)
{
    static const char llama3[] =
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
        "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    /* SmolLM / StarCoder: single digits split off first, then the GPT-2 pattern */
    static const char smollm[] = "\\p{N}\n's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| "
                                 "?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
    *is_llama3 = str_is(s, len, "llama3") || str_is(s, len, "llama-v3") ||
                 str_is(s, len, "llama-bpe") || str_is(s, len, "falcon3");
    if (*is_llama3) return llama3;
    if (str_is(s, len, "smollm") || str_is(s, len, "starcoder") || str_is(s, len, "refact"))
        return smollm;
    /* TODO: "qwen2", "deepseek-*", "command-r", ... when a model needs them; "gpt-2",
     * "default" and unknown names use the GPT-2 pattern. */
    return NULL;
}

static enum lmp_status read_tokenizer(const struct gguf *g, struct lmp_model *m,
                                      struct lmp_err *err)
{
    struct lmp_vocab *v = &m->vocab;
    enum lmp_status st;
    const char *model, *pre;
    size_t model_len, pre_len;
    char sb[80];
    const struct gguf_kv *tk = kv_find(g, "tokenizer.ggml.tokens");
    if (!tk)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: no tokenizer (tokenizer.ggml.tokens missing)",
                           g->path);
    if (tk->type != GV_ARR || tk->arr_type != GV_STR)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: tokenizer.ggml.tokens is not a string array",
                           g->path);
    if ((st = kv_str(g, "tokenizer.ggml.model", &model, &model_len, err))) return st;
    if (!model)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: no tokenizer (tokenizer.ggml.model missing)",
                           g->path);
    enum lmp_tok_kind kind;
    if (str_is(model, model_len, "llama"))
        kind = LMP_TOK_SPM;
    else if (str_is(model, model_len, "gpt2"))
        kind = LMP_TOK_BPE;
    else
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                           "%s: tokenizer.ggml.model '%s' is not supported (llama, gpt2)", g->path,
                           printable(sb, sizeof sb, model, model_len));
    if (tk->arr_n != (uint64_t)m->cfg.vocab)
        return lmp_err_set(err, LMP_ERR_FORMAT,
                           "%s: tokenizer has %llu tokens but %s has %d rows", g->path,
                           (unsigned long long)tk->arr_n, LMP_N_TOKEMBD, m->cfg.vocab);
    int n = m->cfg.vocab;

    const struct gguf_kv *sk = kv_find(g, "tokenizer.ggml.scores");
    if (sk && (sk->type != GV_ARR || sk->arr_type != GV_F32 || sk->arr_n != (uint64_t)n))
        return lmp_err_set(err, LMP_ERR_FORMAT,
                           "%s: tokenizer.ggml.scores is not an array of %d f32", g->path, n);
    const struct gguf_kv *yk = kv_find(g, "tokenizer.ggml.token_type");
    if (yk && (yk->type != GV_ARR || (yk->arr_type != GV_I32 && yk->arr_type != GV_U32) ||
               yk->arr_n != (uint64_t)n))
        return lmp_err_set(err, LMP_ERR_FORMAT,
                           "%s: tokenizer.ggml.token_type is not an array of %d i32", g->path, n);

    const char **strs = NULL;
    uint32_t *lens = NULL;
    float *scores = malloc((size_t)n * sizeof *scores);
    int32_t *types = malloc((size_t)n * sizeof *types);
    if (!scores || !types) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "%s: out of memory", g->path);
        goto done;
    }
    for (int i = 0; i < n; i++) {
        scores[i] = 0.0f;
        types[i] = LMP_TOKT_NORMAL;
        if (sk) memcpy(&scores[i], g->p + sk->off + (size_t)i * 4, 4);
        if (yk) {
            int32_t t;
            memcpy(&t, g->p + yk->off + (size_t)i * 4, 4);
            if (t >= LMP_TOKT_NORMAL && t <= LMP_TOKT_BYTE) types[i] = t;
        }
    }
    if ((st = str_array(g, tk, &strs, &lens, err))) goto done;
    if ((st = lmp_vocab_set_tokens(v, n, strs, lens, scores, types, err))) goto done;
    v->kind = kind;

    if (kind == LMP_TOK_BPE) {
        const struct gguf_kv *mk = kv_find(g, "tokenizer.ggml.merges");
        if (!mk || mk->type != GV_ARR || mk->arr_type != GV_STR) {
            st = lmp_err_set(err, LMP_ERR_FORMAT,
                             "%s: gpt2 tokenizer without a tokenizer.ggml.merges string array",
                             g->path);
            goto done;
        }
        if (mk->arr_n > LMP_MAX_VOCAB) {
            st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: %llu merges exceed the limit %d", g->path,
                             (unsigned long long)mk->arr_n, LMP_MAX_VOCAB);
            goto done;
        }
        free(strs);
        free(lens);
        strs = NULL;
        lens = NULL;
        if ((st = str_array(g, mk, &strs, &lens, err))) goto done;
        if ((st = lmp_vocab_set_merges(v, (int)mk->arr_n, strs, lens, err))) goto done;
        if ((st = kv_str(g, "tokenizer.ggml.pre", &pre, &pre_len, err))) goto done;
        int is_llama3 = 0;
        const char *re = pre ? pre_regex_for(pre, pre_len, &is_llama3) : NULL;
        if (re && !(v->pre_regex = strdup(re))) {
            st = lmp_err_set(err, LMP_ERR_NOMEM, "%s: out of memory", g->path);
            goto done;
        }
        /* llama.cpp adds BOS for Llama-3 style vocabularies unless told otherwise */
        v->add_bos = is_llama3;
        v->add_space_prefix = 0;
    } else {
        v->add_bos = 1;
        v->add_space_prefix = 1;
    }
    v->space_is_plain = 0;
    if ((st = kv_bool(g, "tokenizer.ggml.add_bos_token", &v->add_bos, err))) goto done;
    if ((st = kv_bool(g, "tokenizer.ggml.add_space_prefix", &v->add_space_prefix, err)))
        goto done;
    if ((st = read_token_id(g, "tokenizer.ggml.bos_token_id", n, &v->bos, err))) goto done;
    if ((st = read_token_id(g, "tokenizer.ggml.eos_token_id", n, &v->eos, err))) goto done;
    if ((st = read_token_id(g, "tokenizer.ggml.unknown_token_id", n, &v->unk, err))) goto done;
    if ((st = read_token_id(g, "tokenizer.ggml.padding_token_id", n, &v->pad, err))) goto done;
    const char *ct;
    size_t ct_len;
    if ((st = kv_str(g, "tokenizer.chat_template", &ct, &ct_len, err))) goto done;
    if (ct && !(v->chat_template = malloc(ct_len + 1))) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "%s: out of memory", g->path);
        goto done;
    }
    if (ct) memcpy(v->chat_template, ct, ct_len), v->chat_template[ct_len] = 0;
done:
    free(strs);
    free(lens);
    free(scores);
    free(types);
    return st;
}

static enum lmp_status load_tensors(const struct gguf *g, struct lmp_model *m,
                                    struct lmp_err *err)
{
    int L = m->cfg.n_layers;
    size_t n_slots = 3 + (size_t)N_SUFFIX * (size_t)L;
    unsigned char *seen = calloc(n_slots, 1);
    if (!seen) return lmp_err_set(err, LMP_ERR_NOMEM, "%s: out of memory", g->path);
    enum lmp_status st = LMP_OK;
    for (uint64_t i = 0; i < g->n_ti && !st; i++) {
        const struct gguf_tinfo *ti = &g->ti[i];
        char nb[80];
        printable(nb, sizeof nb, ti->name, ti->name_len);
        int idx = llama_tensor_index(ti->tname, L);
        if (idx == -2) {
            st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: tensor %s: layer out of range (%d layers)",
                             g->path, nb, L);
        } else if (idx < 0 && strcmp(ti->tname, "rope_freqs.weight") == 0) {
            st = lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                             "%s: tensor rope_freqs.weight: rope frequency scaling (Llama 3.1) "
                             "is not supported",
                             g->path);
        } else if (idx < 0) {
            st = lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                             "%s: tensor %s is not part of a llama model", g->path, nb);
        } else if (seen[idx]) {
            st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: duplicate tensor %s", g->path, nb);
        }
        if (st) break;
        seen[idx] = 1;
        /* GGUF ne = {in, out, 1, 1} is our {rows = out, cols = in} */
        if (ti->ne[2] != 1 || ti->ne[3] != 1) {
            st = lmp_err_set(err, LMP_ERR_FORMAT,
                             "%s: tensor %s has %u dimensions; llama tensors have 1 or 2",
                             g->path, nb, ti->n_dims);
            break;
        }
        int nd = ti->n_dims >= 2 ? 2 : 1;
        int64_t rows = nd == 2 ? ti->ne[1] : ti->ne[0], cols = nd == 2 ? ti->ne[0] : 1;
        struct lmp_tensor *t = lmp_model_add_tensor(m, ti->tname, LMP_TYPE_F32, nd, rows, cols);
        if (!t) {
            st = lmp_err_set(err, LMP_ERR_NOMEM, "%s: tensor %s: out of memory", g->path, nb);
            break;
        }
        const unsigned char *src = g->p + g->data_start + ti->offset;
        if (lmp_gguf_dequant((int)ti->type, src, t->data, ti->nelem) != 0)
            st = lmp_err_set(err, LMP_ERR_INTERNAL, "%s: tensor %s: cannot dequantize", g->path,
                             nb);
    }
    free(seen);
    return st;
}

enum lmp_status lmp_ckpt_load_gguf(const char *path, struct lmp_model **out, struct lmp_err *err)
{
    *out = NULL;
    struct lmp_buf b;
    enum lmp_status st = lmp_buf_read_file(path, &b, err);
    if (st) return st;
    struct gguf g = {.path = path, .p = b.data, .len = b.len};
    struct lmp_model *m = NULL;
    if ((st = gguf_parse(&g, err))) goto fail;
    if (!(m = lmp_model_new())) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    snprintf(m->source_format, sizeof m->source_format, "gguf");
    if ((st = read_config(&g, m, err))) goto fail;
    if ((st = read_tokenizer(&g, m, err))) goto fail;
    if ((st = load_tensors(&g, m, err))) goto fail;
    if ((st = lmp_model_bind(m, path, err))) goto fail;
    if ((st = lmp_model_check_finite(m, path, err))) goto fail;
    gguf_free(&g);
    lmp_buf_free(&b);
    *out = m;
    return LMP_OK;
fail:
    lmp_model_free(m);
    gguf_free(&g);
    lmp_buf_free(&b);
    return st;
}
