/* The .lmp format (docs/FORMAT.md): a JSON header (config, tokenizer, tensor table)
 * followed by 64-byte aligned tensor blobs, each with a zlib crc32. The reader maps the
 * file and points tensors into the mapping; the writer goes through a temp file. */
#include "internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define LMP_VERSION 1
#define ALIGN 64
#define MAX_HEADER (1ull << 30)

static uint64_t align_up(uint64_t x) { return (x + ALIGN - 1) / ALIGN * ALIGN; }

static uint32_t crc_of(const void *p, size_t n)
{
    uLong c = crc32(0L, Z_NULL, 0);
    const unsigned char *b = p;
    while (n) { /* zlib takes uInt lengths */
        uInt k = n > (1u << 30) ? (1u << 30) : (uInt)n;
        c = crc32(c, b, k);
        b += k;
        n -= k;
    }
    return (uint32_t)c;
}

static const struct {
    const char *name;
    enum lmp_type t;
} type_names[] = {
    {"F32", LMP_TYPE_F32}, {"F16", LMP_TYPE_F16}, {"BF16", LMP_TYPE_BF16}, {"Q2", LMP_TYPE_Q2},
    {"Q3", LMP_TYPE_Q3},   {"Q4", LMP_TYPE_Q4},   {"Q8", LMP_TYPE_Q8},     {"U8", LMP_TYPE_U8},
    {"I32", LMP_TYPE_I32},
};

static int type_from_name(const char *s, enum lmp_type *t)
{
    for (size_t i = 0; i < sizeof type_names / sizeof type_names[0]; i++)
        if (!strcmp(s, type_names[i].name)) {
            *t = type_names[i].t;
            return 1;
        }
    return 0;
}

static int packed_bits(enum lmp_type t)
{
    switch (t) {
    case LMP_TYPE_Q2: return 2;
    case LMP_TYPE_Q3: return 3;
    case LMP_TYPE_Q4: return 4;
    case LMP_TYPE_Q8: return 8;
    default: return 0;
    }
}

/* Bytes of a packed tensor: each row a bit stream padded to 4 bytes (docs/FORMAT.md). */
static uint64_t packed_row_bytes(int bits, int64_t cols) { return ((uint64_t)cols * (uint64_t)bits + 31) / 32 * 4; }

/* ---- writer ------------------------------------------------------------------------- */

struct blob {
    const void *p;
    uint64_t size;
    uint64_t off;
};

struct writer {
    struct blob *b;
    int n, cap;
    uint64_t end;
};

static cJSON *add_blob(struct writer *w, const void *p, uint64_t size)
{
    if (w->n == w->cap) {
        int nc = w->cap ? w->cap * 2 : 64;
        struct blob *nb = realloc(w->b, (size_t)nc * sizeof *nb);
        if (!nb) return NULL;
        w->b = nb;
        w->cap = nc;
    }
    struct blob *b = &w->b[w->n++];
    b->p = p;
    b->size = size;
    b->off = w->end;
    w->end = align_up(w->end + size);
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "offset", (double)b->off);
    cJSON_AddNumberToObject(o, "size", (double)size);
    cJSON_AddNumberToObject(o, "crc32", (double)crc_of(p, (size_t)size));
    return o;
}

static cJSON *table_entry(struct writer *w, const char *name, enum lmp_type t, int n_dims,
                          const int64_t *shape, const void *p, uint64_t size)
{
    cJSON *o = add_blob(w, p, size);
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddStringToObject(o, "type", lmp_type_name(t));
    cJSON *sh = cJSON_AddArrayToObject(o, "shape");
    for (int i = 0; i < n_dims; i++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)shape[i]));
    return o;
}

enum lmp_status lmp_ckpt_save_lmp(const struct lmp_model *m, const char *path,
                                  struct lmp_err *err)
{
    const struct lmp_config *c = &m->cfg;
    const struct lmp_vocab *v = &m->vocab;
    struct writer w = {0};
    enum lmp_status st = LMP_OK;
    char *json = NULL;
    struct lmp_outfile of = {0};
    cJSON *root = cJSON_CreateObject();
    if (!root) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    cJSON_AddStringToObject(root, "format", "lmpress");
    cJSON_AddNumberToObject(root, "version", LMP_VERSION);
    cJSON *jc = cJSON_AddObjectToObject(root, "config");
    cJSON_AddStringToObject(jc, "arch", c->arch);
    cJSON_AddStringToObject(jc, "name", c->name);
    cJSON_AddNumberToObject(jc, "dim", c->dim);
    cJSON_AddNumberToObject(jc, "n_layers", c->n_layers);
    cJSON_AddNumberToObject(jc, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(jc, "vocab", c->vocab);
    cJSON_AddNumberToObject(jc, "max_ctx", c->max_ctx);
    cJSON_AddNumberToObject(jc, "rope_theta", (double)c->rope_theta);
    cJSON_AddNumberToObject(jc, "norm_eps", (double)c->norm_eps);
    cJSON_AddBoolToObject(jc, "tied", c->tied);
    cJSON_AddBoolToObject(jc, "attn_bias", c->attn_bias);
    cJSON_AddStringToObject(jc, "rope", "interleaved");
    cJSON *jl = cJSON_AddArrayToObject(jc, "layers");
    for (int l = 0; l < c->n_layers; l++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "n_heads", c->layer[l].n_heads);
        cJSON_AddNumberToObject(o, "n_kv_heads", c->layer[l].n_kv_heads);
        cJSON_AddNumberToObject(o, "ffn", c->layer[l].ffn);
        cJSON_AddItemToArray(jl, o);
    }
    cJSON *jt = cJSON_AddObjectToObject(root, "tokenizer");
    cJSON_AddStringToObject(jt, "kind", v->kind == LMP_TOK_SPM ? "spm" : v->kind == LMP_TOK_BPE ? "bpe" : "none");
    cJSON_AddNumberToObject(jt, "n_tokens", v->n_tokens);
    cJSON_AddNumberToObject(jt, "n_merges", v->n_merges);
    cJSON_AddNumberToObject(jt, "bos", v->bos);
    cJSON_AddNumberToObject(jt, "eos", v->eos);
    cJSON_AddNumberToObject(jt, "unk", v->unk);
    cJSON_AddNumberToObject(jt, "pad", v->pad);
    cJSON_AddBoolToObject(jt, "add_bos", v->add_bos);
    cJSON_AddBoolToObject(jt, "add_space_prefix", v->add_space_prefix);
    cJSON_AddBoolToObject(jt, "space_is_plain", v->space_is_plain);
    if (v->pre_regex)
        cJSON_AddStringToObject(jt, "pre_regex", v->pre_regex);
    else
        cJSON_AddNullToObject(jt, "pre_regex");
    if (v->chat_template) cJSON_AddStringToObject(jt, "chat_template", v->chat_template);

    cJSON *tab = cJSON_AddArrayToObject(root, "tensors");
    for (int i = 0; i < m->n_tensors; i++) {
        const struct lmp_tensor *t = &m->tensors[i];
        cJSON *e = table_entry(&w, t->name, t->type, t->n_dims, t->shape, t->data, t->nbytes);
        if (!e) goto nomem;
        if (lmp_type_is_packed(t->type)) {
            int64_t ng = (t->shape[1] + t->q.group - 1) / t->q.group;
            uint64_t sz = (uint64_t)t->shape[0] * (uint64_t)ng * 2;
            cJSON *q = cJSON_AddObjectToObject(e, "quant");
            cJSON_AddNumberToObject(q, "bits", t->q.bits);
            cJSON_AddNumberToObject(q, "group", t->q.group);
            cJSON_AddBoolToObject(q, "sym", t->q.sym);
            cJSON *b;
            if (!(b = add_blob(&w, t->q.scales, sz))) goto nomem;
            cJSON_AddItemToObject(q, "scales", b);
            if (!(b = add_blob(&w, t->q.zeros, sz))) goto nomem;
            cJSON_AddItemToObject(q, "zeros", b);
            if (t->q.perm) {
                if (!(b = add_blob(&w, t->q.perm, (uint64_t)t->shape[1] * 4))) goto nomem;
                cJSON_AddItemToObject(q, "perm", b);
            }
        }
        cJSON_AddItemToArray(tab, e);
    }
    if (v->n_tokens > 0) {
        int64_t s;
        s = v->off[v->n_tokens];
        cJSON_AddItemToArray(tab, table_entry(&w, "tokenizer.text", LMP_TYPE_U8, 1, &s, v->text, (uint64_t)s));
        s = v->n_tokens + 1;
        cJSON_AddItemToArray(tab, table_entry(&w, "tokenizer.offsets", LMP_TYPE_I32, 1, &s, v->off, (uint64_t)s * 4));
        s = v->n_tokens;
        cJSON_AddItemToArray(tab, table_entry(&w, "tokenizer.scores", LMP_TYPE_F32, 1, &s, v->scores, (uint64_t)s * 4));
        cJSON_AddItemToArray(tab, table_entry(&w, "tokenizer.types", LMP_TYPE_I32, 1, &s, v->types, (uint64_t)s * 4));
        if (v->n_merges > 0) {
            s = v->merges_off[v->n_merges];
            cJSON_AddItemToArray(tab, table_entry(&w, "tokenizer.merges", LMP_TYPE_U8, 1, &s, v->merges, (uint64_t)s));
            s = v->n_merges + 1;
            cJSON_AddItemToArray(tab, table_entry(&w, "tokenizer.merges_offsets", LMP_TYPE_I32, 1, &s, v->merges_off, (uint64_t)s * 4));
        }
    }
    json = cJSON_PrintUnformatted(root);
    if (!json) goto nomem;
    uint64_t hl = strlen(json);
    uint64_t data_start = align_up(16 + hl);
    if ((st = lmp_out_open(&of, path, err))) goto done;
    unsigned char hdr[16] = {'L', 'M', 'P', 'F'};
    uint32_t ver = LMP_VERSION;
    memcpy(hdr + 4, &ver, 4);
    memcpy(hdr + 8, &hl, 8);
    static const unsigned char zeros[ALIGN];
    if ((st = lmp_out_write(&of, hdr, 16, err))) goto done;
    if ((st = lmp_out_write(&of, json, hl, err))) goto done;
    if ((st = lmp_out_write(&of, zeros, data_start - 16 - hl, err))) goto done;
    uint64_t pos = 0;
    for (int i = 0; i < w.n; i++) {
        if ((st = lmp_out_write(&of, zeros, w.b[i].off - pos, err))) goto done;
        if ((st = lmp_out_write(&of, w.b[i].p, w.b[i].size, err))) goto done;
        pos = w.b[i].off + w.b[i].size;
    }
    if ((st = lmp_out_write(&of, zeros, w.end - pos, err))) goto done;
    st = lmp_out_commit(&of, err);
    goto done;
nomem:
    st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
done:
    if (st) lmp_out_abort(&of);
    cJSON_free(json);
    cJSON_Delete(root);
    free(w.b);
    return st;
}

/* ---- reader ------------------------------------------------------------------------- */

struct reader {
    const char *path;
    const unsigned char *data; /* tensor data section */
    uint64_t data_len;
    int verify;
    int n_bad; /* crc mismatches (verify mode counts instead of failing) */
    int count_only;
    struct lmp_err *err;
};

static enum lmp_status get_num(struct reader *r, const cJSON *o, const char *key, double lo,
                               double hi, double *out)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(it) || !(it->valuedouble >= lo && it->valuedouble <= hi))
        return lmp_err_set(r->err, LMP_ERR_FORMAT, "%s: header field %s missing or out of range",
                           r->path, key);
    *out = it->valuedouble;
    return LMP_OK;
}

static enum lmp_status get_int(struct reader *r, const cJSON *o, const char *key, long lo, long hi,
                               int *out)
{
    double d;
    enum lmp_status st = get_num(r, o, key, (double)lo, (double)hi, &d);
    if (st) return st;
    if (d != floor(d))
        return lmp_err_set(r->err, LMP_ERR_FORMAT, "%s: header field %s is not an integer", r->path, key);
    *out = (int)d;
    return LMP_OK;
}

static int get_bool(const cJSON *o, const char *key)
{
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, key));
}

/* Validates a blob reference {offset,size,crc32}; returns a pointer into the data. */
static enum lmp_status get_blob(struct reader *r, const cJSON *o, const char *tname,
                                uint64_t expect_size, const void **out)
{
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(o, "offset");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(o, "size");
    const cJSON *jc = cJSON_GetObjectItemCaseSensitive(o, "crc32");
    if (!cJSON_IsNumber(jo) || !cJSON_IsNumber(js) || !cJSON_IsNumber(jc))
        return lmp_err_set(r->err, LMP_ERR_FORMAT, "%s: tensor %s: offset/size/crc32 missing",
                           r->path, tname);
    double od = jo->valuedouble, sd = js->valuedouble, cd = jc->valuedouble;
    if (!(od >= 0 && od < 9e15 && od == floor(od)) || !(sd >= 0 && sd < 9e15 && sd == floor(sd)) ||
        !(cd >= 0 && cd <= 4294967295.0 && cd == floor(cd)))
        return lmp_err_set(r->err, LMP_ERR_FORMAT, "%s: tensor %s: bad offset/size/crc32",
                           r->path, tname);
    uint64_t off = (uint64_t)od, size = (uint64_t)sd;
    if (off % ALIGN)
        return lmp_err_set(r->err, LMP_ERR_FORMAT, "%s: tensor %s: offset %llu not %d-byte aligned",
                           r->path, tname, (unsigned long long)off, ALIGN);
    if (size != expect_size)
        return lmp_err_set(r->err, LMP_ERR_FORMAT,
                           "%s: tensor %s: size %llu does not match its type and shape (%llu)",
                           r->path, tname, (unsigned long long)size, (unsigned long long)expect_size);
    if (off > r->data_len || size > r->data_len - off)
        return lmp_err_set(r->err, LMP_ERR_FORMAT,
                           "%s: tensor %s: data [%llu, +%llu) past end of file", r->path, tname,
                           (unsigned long long)off, (unsigned long long)size);
    const void *p = r->data + off;
    if (r->verify && crc_of(p, (size_t)size) != (uint32_t)cd) {
        if (r->count_only)
            r->n_bad++;
        else
            return lmp_err_set(r->err, LMP_ERR_FORMAT,
                               "%s: tensor %s: crc32 mismatch (file is corrupt)", r->path, tname);
    }
    *out = p;
    return LMP_OK;
}

static enum lmp_status parse_shape(struct reader *r, const cJSON *e, const char *name,
                                   int *n_dims, int64_t shape[2])
{
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    int nd = cJSON_IsArray(sh) ? cJSON_GetArraySize(sh) : -1;
    if (nd < 1 || nd > 2)
        return lmp_err_set(r->err, LMP_ERR_FORMAT, "%s: tensor %s: shape must have 1 or 2 dims",
                           r->path, name);
    shape[1] = 1;
    for (int i = 0; i < nd; i++) {
        const cJSON *d = cJSON_GetArrayItem(sh, i);
        if (!cJSON_IsNumber(d) || !(d->valuedouble >= 0 && d->valuedouble <= (double)(1ll << 40)) ||
            d->valuedouble != floor(d->valuedouble))
            return lmp_err_set(r->err, LMP_ERR_FORMAT, "%s: tensor %s: bad dimension", r->path, name);
        shape[i] = (int64_t)d->valuedouble;
    }
    if (shape[1] && (uint64_t)shape[0] > (1ull << 40) / (uint64_t)shape[1])
        return lmp_err_set(r->err, LMP_ERR_FORMAT, "%s: tensor %s: element count overflows",
                           r->path, name);
    *n_dims = nd;
    return LMP_OK;
}

static enum lmp_status read_tokenizer_arrays(struct reader *r, const cJSON *tab, const cJSON *jt,
                                             struct lmp_vocab *v)
{
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(jt, "kind");
    if (!cJSON_IsString(kind))
        return lmp_err_set(r->err, LMP_ERR_FORMAT, "%s: tokenizer.kind missing", r->path);
    v->kind = !strcmp(kind->valuestring, "spm") ? LMP_TOK_SPM
            : !strcmp(kind->valuestring, "bpe") ? LMP_TOK_BPE : LMP_TOK_NONE;
    enum lmp_status st;
    int n, nm;
    if ((st = get_int(r, jt, "n_tokens", 0, LMP_MAX_VOCAB, &n))) return st;
    if ((st = get_int(r, jt, "n_merges", 0, LMP_MAX_VOCAB, &nm))) return st;
    if ((st = get_int(r, jt, "bos", -1, n - 1, &v->bos))) return st;
    if ((st = get_int(r, jt, "eos", -1, n - 1, &v->eos))) return st;
    if ((st = get_int(r, jt, "unk", -1, n - 1, &v->unk))) return st;
    if ((st = get_int(r, jt, "pad", -1, n - 1, &v->pad))) return st;
    v->add_bos = get_bool(jt, "add_bos");
    v->add_space_prefix = get_bool(jt, "add_space_prefix");
    v->space_is_plain = get_bool(jt, "space_is_plain");
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(jt, "pre_regex");
    if (cJSON_IsString(pre) && !(v->pre_regex = strdup(pre->valuestring)))
        return lmp_err_set(r->err, LMP_ERR_NOMEM, "out of memory");
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(jt, "chat_template");
    if (cJSON_IsString(ct) && !(v->chat_template = strdup(ct->valuestring)))
        return lmp_err_set(r->err, LMP_ERR_NOMEM, "out of memory");
    if (n == 0) return LMP_OK;
    struct {
        const char *name;
        enum lmp_type type;
        int64_t count; /* -1: any (text blobs) */
        const void *p;
        int64_t len;
    } arr[6] = {
        {"tokenizer.text", LMP_TYPE_U8, -1, NULL, 0},
        {"tokenizer.offsets", LMP_TYPE_I32, (int64_t)n + 1, NULL, 0},
        {"tokenizer.scores", LMP_TYPE_F32, n, NULL, 0},
        {"tokenizer.types", LMP_TYPE_I32, n, NULL, 0},
        {"tokenizer.merges", LMP_TYPE_U8, -1, NULL, 0},
        {"tokenizer.merges_offsets", LMP_TYPE_I32, (int64_t)nm + 1, NULL, 0},
    };
    int need = nm > 0 ? 6 : 4;
    const cJSON *e;
    cJSON_ArrayForEach(e, tab)
    {
        const cJSON *jn = cJSON_GetObjectItemCaseSensitive(e, "name");
        if (!cJSON_IsString(jn)) continue;
        for (int k = 0; k < need; k++) {
            if (strcmp(jn->valuestring, arr[k].name)) continue;
            const cJSON *jty = cJSON_GetObjectItemCaseSensitive(e, "type");
            enum lmp_type ty;
            if (!cJSON_IsString(jty) || !type_from_name(jty->valuestring, &ty) || ty != arr[k].type)
                return lmp_err_set(r->err, LMP_ERR_FORMAT, "%s: %s has the wrong type", r->path, arr[k].name);
            int nd;
            int64_t sh[2];
            if ((st = parse_shape(r, e, arr[k].name, &nd, sh))) return st;
            if (nd != 1 || (arr[k].count >= 0 && sh[0] != arr[k].count))
                return lmp_err_set(r->err, LMP_ERR_FORMAT, "%s: %s has the wrong shape", r->path, arr[k].name);
            if ((st = get_blob(r, e, arr[k].name, (uint64_t)sh[0] * lmp_type_elem_size(ty), &arr[k].p)))
                return st;
            arr[k].len = sh[0];
        }
    }
    for (int k = 0; k < need; k++)
        if (!arr[k].p)
            return lmp_err_set(r->err, LMP_ERR_FORMAT, "%s: missing tokenizer array %s", r->path, arr[k].name);
    /* offsets: non-decreasing, ending at the text length */
    for (int k = 0; k < need; k += 4) {
        const int32_t *off = arr[k + 1].p;
        int64_t cnt = arr[k + 1].len;
        if (off[0] != 0 || off[cnt - 1] != arr[k].len)
            return lmp_err_set(r->err, LMP_ERR_FORMAT, "%s: %s do not span the text", r->path, arr[k + 1].name);
        for (int64_t i = 1; i < cnt; i++)
            if (off[i] < off[i - 1])
                return lmp_err_set(r->err, LMP_ERR_FORMAT, "%s: %s decrease at %lld", r->path,
                                   arr[k + 1].name, (long long)i);
        if (k == 4) break;
    }
    v->n_tokens = n;
    v->text = malloc((size_t)arr[0].len + 1);
    v->off = malloc(((size_t)n + 1) * 4);
    v->scores = malloc((size_t)n * 4);
    v->types = malloc((size_t)n * 4);
    if (!v->text || !v->off || !v->scores || !v->types)
        return lmp_err_set(r->err, LMP_ERR_NOMEM, "out of memory");
    memcpy(v->text, arr[0].p, (size_t)arr[0].len);
    v->text[arr[0].len] = 0;
    memcpy(v->off, arr[1].p, ((size_t)n + 1) * 4);
    memcpy(v->scores, arr[2].p, (size_t)n * 4);
    memcpy(v->types, arr[3].p, (size_t)n * 4);
    if (nm > 0) {
        v->n_merges = nm;
        v->merges = malloc((size_t)arr[4].len + 1);
        v->merges_off = malloc(((size_t)nm + 1) * 4);
        if (!v->merges || !v->merges_off) return lmp_err_set(r->err, LMP_ERR_NOMEM, "out of memory");
        memcpy(v->merges, arr[4].p, (size_t)arr[4].len);
        v->merges[arr[4].len] = 0;
        memcpy(v->merges_off, arr[5].p, ((size_t)nm + 1) * 4);
    }
    return LMP_OK;
}

static enum lmp_status read_tensor(struct reader *r, struct lmp_model *m, const cJSON *e)
{
    const cJSON *jn = cJSON_GetObjectItemCaseSensitive(e, "name");
    const cJSON *jty = cJSON_GetObjectItemCaseSensitive(e, "type");
    if (!cJSON_IsString(jn) || !cJSON_IsString(jty))
        return lmp_err_set(r->err, LMP_ERR_FORMAT, "%s: tensor entry without name/type", r->path);
    const char *name = jn->valuestring;
    if (!strncmp(name, "tokenizer.", 10)) return LMP_OK;
    if (strlen(name) >= LMP_NAME_MAX)
        return lmp_err_set(r->err, LMP_ERR_FORMAT, "%s: tensor name too long", r->path);
    enum lmp_type ty;
    if (!type_from_name(jty->valuestring, &ty) || ty == LMP_TYPE_U8 || ty == LMP_TYPE_I32)
        return lmp_err_set(r->err, LMP_ERR_UNSUPPORTED, "%s: tensor %s: unknown type %.32s",
                           r->path, name, jty->valuestring);
    if (lmp_model_find(m, name))
        return lmp_err_set(r->err, LMP_ERR_FORMAT, "%s: duplicate tensor %s", r->path, name);
    int nd;
    int64_t sh[2];
    enum lmp_status st = parse_shape(r, e, name, &nd, sh);
    if (st) return st;
    uint64_t expect;
    int bits = packed_bits(ty);
    if (bits)
        expect = (uint64_t)sh[0] * packed_row_bytes(bits, sh[1]);
    else
        expect = (uint64_t)sh[0] * (uint64_t)sh[1] * lmp_type_elem_size(ty);
    const void *p;
    if ((st = get_blob(r, e, name, expect, &p))) return st;
    if (m->n_tensors >= LMP_MAX_TENSORS)
        return lmp_err_set(r->err, LMP_ERR_FORMAT, "%s: too many tensors", r->path);
    struct lmp_tensor *nt = realloc(m->tensors, (size_t)(m->n_tensors + 1) * sizeof *nt);
    if (!nt) return lmp_err_set(r->err, LMP_ERR_NOMEM, "out of memory");
    m->tensors = nt;
    struct lmp_tensor *t = &nt[m->n_tensors++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = ty;
    t->n_dims = nd;
    t->shape[0] = sh[0];
    t->shape[1] = sh[1];
    t->data = (void *)p;
    t->nbytes = (size_t)expect;
    t->owned = 0;
    if (bits) {
        const cJSON *q = cJSON_GetObjectItemCaseSensitive(e, "quant");
        int group;
        if (!cJSON_IsObject(q))
            return lmp_err_set(r->err, LMP_ERR_FORMAT, "%s: tensor %s: quant parameters missing", r->path, name);
        if ((st = get_int(r, q, "bits", bits, bits, &t->q.bits))) return st;
        if ((st = get_int(r, q, "group", 1, (long)(sh[1] > 0 ? sh[1] : 1), &group))) return st;
        t->q.group = group;
        t->q.sym = get_bool(q, "sym");
        uint64_t ng = ((uint64_t)sh[1] + (uint64_t)group - 1) / (uint64_t)group;
        uint64_t ssz = (uint64_t)sh[0] * ng * 2;
        const cJSON *b;
        const void *sp, *zp, *pp = NULL;
        if (!cJSON_IsObject(b = cJSON_GetObjectItemCaseSensitive(q, "scales")) ||
            (st = get_blob(r, b, name, ssz, &sp)))
            return st ? st : lmp_err_set(r->err, LMP_ERR_FORMAT, "%s: tensor %s: scales missing", r->path, name);
        if (!cJSON_IsObject(b = cJSON_GetObjectItemCaseSensitive(q, "zeros")) ||
            (st = get_blob(r, b, name, ssz, &zp)))
            return st ? st : lmp_err_set(r->err, LMP_ERR_FORMAT, "%s: tensor %s: zeros missing", r->path, name);
        if (cJSON_IsObject(b = cJSON_GetObjectItemCaseSensitive(q, "perm")) &&
            (st = get_blob(r, b, name, (uint64_t)sh[1] * 4, &pp)))
            return st;
        t->q.scales = malloc((size_t)ssz + 1);
        t->q.zeros = malloc((size_t)ssz + 1);
        if (!t->q.scales || !t->q.zeros) return lmp_err_set(r->err, LMP_ERR_NOMEM, "out of memory");
        memcpy(t->q.scales, sp, (size_t)ssz);
        memcpy(t->q.zeros, zp, (size_t)ssz);
        if (pp) {
            t->q.perm = malloc((size_t)sh[1] * 4 + 1);
            if (!t->q.perm) return lmp_err_set(r->err, LMP_ERR_NOMEM, "out of memory");
            memcpy(t->q.perm, pp, (size_t)sh[1] * 4);
            for (int64_t i = 0; i < sh[1]; i++)
                if (t->q.perm[i] < 0 || t->q.perm[i] >= sh[1])
                    return lmp_err_set(r->err, LMP_ERR_FORMAT, "%s: tensor %s: permutation entry out of range", r->path, name);
        }
    }
    return LMP_OK;
}

static enum lmp_status parse_file(const char *path, const struct lmp_buf *b, struct reader *r,
                                  struct lmp_model **out)
{
    struct lmp_err *err = r->err;
    if (b->len < 16 || memcmp(b->data, "LMPF", 4) != 0)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: not an .lmp file (bad magic or too short)", path);
    uint32_t ver;
    uint64_t hl;
    memcpy(&ver, b->data + 4, 4);
    memcpy(&hl, b->data + 8, 8);
    if (ver != LMP_VERSION)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "%s: .lmp version %u not supported (this build reads %d)",
                           path, ver, LMP_VERSION);
    if (hl > MAX_HEADER || hl > b->len - 16)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: header length %llu past end of file (%zu bytes)",
                           path, (unsigned long long)hl, b->len);
    uint64_t ds = align_up(16 + hl);
    if (ds > b->len) ds = b->len;
    r->data = b->data + ds;
    r->data_len = b->len - ds;
    cJSON *root = cJSON_ParseWithLength((const char *)b->data + 16, (size_t)hl);
    if (!root) return lmp_err_set(err, LMP_ERR_FORMAT, "%s: header is not valid JSON", path);
    enum lmp_status st = LMP_OK;
    struct lmp_model *m = lmp_model_new();
    if (!m) {
        cJSON_Delete(root);
        return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    }
    snprintf(m->source_format, sizeof m->source_format, "lmp");
    const cJSON *jc = cJSON_GetObjectItemCaseSensitive(root, "config");
    const cJSON *jt = cJSON_GetObjectItemCaseSensitive(root, "tokenizer");
    const cJSON *tab = cJSON_GetObjectItemCaseSensitive(root, "tensors");
    if (!cJSON_IsObject(jc) || !cJSON_IsObject(jt) || !cJSON_IsArray(tab)) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: header lacks config, tokenizer or tensors", path);
        goto fail;
    }
    struct lmp_config *c = &m->cfg;
    const cJSON *s;
    if (cJSON_IsString(s = cJSON_GetObjectItemCaseSensitive(jc, "arch")))
        snprintf(c->arch, sizeof c->arch, "%s", s->valuestring);
    if (cJSON_IsString(s = cJSON_GetObjectItemCaseSensitive(jc, "name")))
        snprintf(c->name, sizeof c->name, "%s", s->valuestring);
    if (strcmp(c->arch, "llama")) {
        st = lmp_err_set(err, LMP_ERR_UNSUPPORTED, "%s: architecture %s not supported", path, c->arch);
        goto fail;
    }
    double d;
    if ((st = get_int(r, jc, "dim", 1, LMP_MAX_DIM, &c->dim))) goto fail;
    if ((st = get_int(r, jc, "n_layers", 1, LMP_MAX_LAYERS, &c->n_layers))) goto fail;
    if ((st = get_int(r, jc, "head_dim", 1, 4096, &c->head_dim))) goto fail;
    if ((st = get_int(r, jc, "vocab", 1, LMP_MAX_VOCAB, &c->vocab))) goto fail;
    if ((st = get_int(r, jc, "max_ctx", 1, LMP_MAX_CTX, &c->max_ctx))) goto fail;
    if ((st = get_num(r, jc, "rope_theta", 1e-30, 1e30, &d))) goto fail;
    c->rope_theta = (float)d;
    if ((st = get_num(r, jc, "norm_eps", 1e-30, 1, &d))) goto fail;
    c->norm_eps = (float)d;
    c->tied = get_bool(jc, "tied");
    c->attn_bias = get_bool(jc, "attn_bias");
    const cJSON *jl = cJSON_GetObjectItemCaseSensitive(jc, "layers");
    if (!cJSON_IsArray(jl) || cJSON_GetArraySize(jl) != c->n_layers) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: config.layers must list %d layers", path, c->n_layers);
        goto fail;
    }
    c->layer = calloc((size_t)c->n_layers, sizeof *c->layer);
    if (!c->layer) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (int l = 0; l < c->n_layers; l++) {
        const cJSON *o = cJSON_GetArrayItem(jl, l);
        if ((st = get_int(r, o, "n_heads", 1, 65536, &c->layer[l].n_heads))) goto fail;
        if ((st = get_int(r, o, "n_kv_heads", 1, 65536, &c->layer[l].n_kv_heads))) goto fail;
        if ((st = get_int(r, o, "ffn", 1, LMP_MAX_DIM * 8, &c->layer[l].ffn))) goto fail;
    }
    if (cJSON_GetArraySize(tab) > LMP_MAX_TENSORS) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: %d tensors is too many", path, cJSON_GetArraySize(tab));
        goto fail;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, tab)
    {
        if ((st = read_tensor(r, m, e))) goto fail;
    }
    if ((st = read_tokenizer_arrays(r, tab, jt, &m->vocab))) goto fail;
    cJSON_Delete(root);
    *out = m;
    return LMP_OK;
fail:
    cJSON_Delete(root);
    lmp_model_free(m);
    return st;
}

enum lmp_status lmp_ckpt_load_lmp(const char *path, const struct lmp_load_opts *opts,
                                  struct lmp_model **out, struct lmp_err *err)
{
    *out = NULL;
    struct lmp_buf b;
    enum lmp_status st = lmp_buf_read_file(path, &b, err);
    if (st) return st;
    struct reader r = {.path = path, .verify = !(opts && opts->no_crc), .err = err};
    struct lmp_model *m = NULL;
    if ((st = parse_file(path, &b, &r, &m))) goto fail;
    if (m->vocab.n_tokens == 0) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: no tokenizer", path);
        goto fail;
    }
    if (m->vocab.n_tokens != m->cfg.vocab) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: tokenizer has %d tokens, model vocabulary %d",
                         path, m->vocab.n_tokens, m->cfg.vocab);
        goto fail;
    }
    if ((st = lmp_model_bind(m, path, err))) goto fail;
    if ((st = lmp_model_check_finite(m, path, err))) goto fail;
    if (b.map)
        lmp_buf_give_to_model(&b, m);
    else { /* an empty file cannot get here; keep ownership simple */
        st = lmp_err_set(err, LMP_ERR_INTERNAL, "%s: not mapped", path);
        goto fail;
    }
    lmp_buf_free(&b);
    *out = m;
    return LMP_OK;
fail:
    lmp_model_free(m);
    lmp_buf_free(&b);
    return st;
}

enum lmp_status lmp_ckpt_verify_lmp(const char *path, int *n_bad, struct lmp_err *err)
{
    *n_bad = 0;
    struct lmp_buf b;
    enum lmp_status st = lmp_buf_read_file(path, &b, err);
    if (st) return st;
    struct reader r = {.path = path, .verify = 1, .count_only = 1, .err = err};
    struct lmp_model *m = NULL;
    st = parse_file(path, &b, &r, &m);
    lmp_model_free(m);
    lmp_buf_free(&b);
    *n_bad = r.n_bad;
    return st;
}
