/* safetensors reader and writer (format described in safetensors.h). The header is parsed
 * with cJSON; every number that becomes a size or offset is checked to be a non-negative
 * integer below 2^53 before use, and every product is checked for overflow. */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
} dtypes[LMP_ST_N_DTYPES] = {
    [LMP_ST_BOOL] = {"BOOL", 1},       [LMP_ST_U8] = {"U8", 1},
    [LMP_ST_I8] = {"I8", 1},           [LMP_ST_F8_E4M3] = {"F8_E4M3", 1},
    [LMP_ST_F8_E5M2] = {"F8_E5M2", 1}, [LMP_ST_I16] = {"I16", 2},
    [LMP_ST_U16] = {"U16", 2},         [LMP_ST_F16] = {"F16", 2},
    [LMP_ST_BF16] = {"BF16", 2},       [LMP_ST_I32] = {"I32", 4},
    [LMP_ST_U32] = {"U32", 4},         [LMP_ST_F32] = {"F32", 4},
    [LMP_ST_I64] = {"I64", 8},         [LMP_ST_U64] = {"U64", 8},
    [LMP_ST_F64] = {"F64", 8},
};

const char *lmp_st_dtype_name(enum lmp_st_dtype d)
{
    return (unsigned)d < LMP_ST_N_DTYPES ? dtypes[d].name : "?";
}

size_t lmp_st_dtype_size(enum lmp_st_dtype d)
{
    return (unsigned)d < LMP_ST_N_DTYPES ? dtypes[d].size : 0;
}

/* Copies s for an error message: at most 80 bytes, control characters as '?', so a
 * hostile name cannot split the one-line message. */
static const char *printable(char out[84], const char *s)
{
    size_t i = 0;
    for (; s && s[i] && i < 80; i++) out[i] = (unsigned char)s[i] < 0x20 ? '?' : s[i];
    out[i] = 0;
    if (s && s[i]) snprintf(out + i, 4, "...");
    return out;
}

/* A JSON number that is an integer in [0, 2^53]. */
static int json_uint(const cJSON *j, uint64_t *out)
{
    if (!cJSON_IsNumber(j)) return 0;
    double v = j->valuedouble;
    if (!(v >= 0 && v <= 9007199254740992.0) || v != floor(v)) return 0;
    *out = (uint64_t)v;
    return 1;
}

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const struct lmp_st_tensor *)a)->name, ((const struct lmp_st_tensor *)b)->name);
}

void lmp_st_close(struct lmp_st_file *f)
{
    if (!f) return;
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    free((char *)f->path);
    lmp_buf_free(&f->buf);
    memset(f, 0, sizeof *f);
}

/* Fills one tensor entry from its JSON object; data/len is the data section. */
static enum lmp_status parse_entry(const cJSON *e, struct lmp_st_tensor *t, const unsigned char *data,
                                   size_t len, const char *path, struct lmp_err *err)
{
    char pn[84];
    printable(pn, t->name);
    if (!cJSON_IsObject(e))
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: tensor %s: header entry is not an object",
                           path, pn);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(jd) || !cJSON_IsArray(js) || !cJSON_IsArray(jo))
        return lmp_err_set(err, LMP_ERR_FORMAT,
                           "%s: tensor %s: needs dtype (string), shape and data_offsets (arrays)",
                           path, pn);
    int d = 0;
    while (d < LMP_ST_N_DTYPES && strcmp(dtypes[d].name, jd->valuestring) != 0) d++;
    if (d == LMP_ST_N_DTYPES) {
        char dn[84];
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "%s: tensor %s: unknown dtype %s", path, pn,
                           printable(dn, jd->valuestring));
    }
    t->dtype = (enum lmp_st_dtype)d;
    int nd = cJSON_GetArraySize(js);
    if (nd > LMP_ST_MAX_DIMS)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: tensor %s: %d dimensions (max %d)", path, pn,
                           nd, LMP_ST_MAX_DIMS);
    t->n_dims = nd;
    uint64_t nelem = 1;
    int i = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, js)
    {
        uint64_t v;
        if (!json_uint(x, &v))
            return lmp_err_set(err, LMP_ERR_FORMAT,
                               "%s: tensor %s: shape[%d] is not a non-negative integer", path, pn, i);
        if (v && nelem > ((uint64_t)1 << 62) / v)
            return lmp_err_set(err, LMP_ERR_FORMAT, "%s: tensor %s: shape overflows", path, pn);
        nelem *= v;
        t->shape[i++] = (int64_t)v;
    }
    uint64_t off[2];
    if (cJSON_GetArraySize(jo) != 2 || !json_uint(cJSON_GetArrayItem(jo, 0), &off[0]) ||
        !json_uint(cJSON_GetArrayItem(jo, 1), &off[1]))
        return lmp_err_set(err, LMP_ERR_FORMAT,
                           "%s: tensor %s: data_offsets must be two non-negative integers", path, pn);
    if (off[1] < off[0])
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: tensor %s: data_offsets end %llu < begin %llu",
                           path, pn, (unsigned long long)off[1], (unsigned long long)off[0]);
    if (off[1] > len)
        return lmp_err_set(err, LMP_ERR_FORMAT,
                           "%s: tensor %s: data_offsets [%llu, %llu] past end of data (%zu bytes)",
                           path, pn, (unsigned long long)off[0], (unsigned long long)off[1], len);
    size_t es = dtypes[d].size;
    uint64_t have = off[1] - off[0];
    if (nelem > have / es || nelem * es != have)
        return lmp_err_set(err, LMP_ERR_FORMAT,
                           "%s: tensor %s: data_offsets span %llu bytes, shape needs %llu x %zu "
                           "(%s)",
                           path, pn, (unsigned long long)have, (unsigned long long)nelem, es,
                           dtypes[d].name);
    t->nelem = (int64_t)nelem;
    t->data = data + off[0];
    t->nbytes = (size_t)have;
    return LMP_OK;
}

enum lmp_status lmp_st_parse(struct lmp_st_file *f, const unsigned char *p, size_t len,
                             const char *path, struct lmp_err *err)
{
    memset(f, 0, sizeof *f);
    if (len < 8)
        return lmp_err_set(err, LMP_ERR_FORMAT,
                           "%s: truncated: %zu bytes, too short for the 8-byte header length",
                           path, len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | p[i];
    if (hlen > len - 8)
        return lmp_err_set(err, LMP_ERR_FORMAT,
                           "%s: header length %llu past end of file (size %zu)", path,
                           (unsigned long long)hlen, len);
    if (hlen < 2 || hlen > LMP_ST_MAX_HEADER)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: header length %llu out of range", path,
                           (unsigned long long)hlen);
    /* a NUL-terminated copy, so cJSON never depends on the length-limited variants */
    char *h = malloc((size_t)hlen + 1);
    if (!h) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    memcpy(h, p + 8, (size_t)hlen);
    h[hlen] = 0;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(h, &end, 0);
    enum lmp_status st = LMP_OK;
    if (!root) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: header is not valid JSON (near byte %ld)", path,
                         end ? (long)(end - h) + 8 : -1L);
        goto done;
    }
    for (const char *q = end; q < h + hlen; q++)
        if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r') {
            st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: trailing bytes after the JSON header (byte %ld)",
                             path, (long)(q - h) + 8);
            goto done;
        }
    if (!cJSON_IsObject(root)) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: header is not a JSON object", path);
        goto done;
    }
    int n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, root) n += strcmp(e->string, "__metadata__") != 0;
    if (n > LMP_MAX_TENSORS) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: %d tensors (max %d)", path, n, LMP_MAX_TENSORS);
        goto done;
    }
    f->path = strdup(path);
    f->tensors = calloc((size_t)n + 1, sizeof *f->tensors);
    if (!f->path || !f->tensors) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        goto done;
    }
    const unsigned char *data = p + 8 + hlen;
    size_t dlen = len - 8 - (size_t)hlen;
    cJSON_ArrayForEach(e, root)
    {
        if (strcmp(e->string, "__metadata__") == 0) continue; /* free-form, ignored */
        struct lmp_st_tensor *t = &f->tensors[f->n_tensors];
        t->name = strdup(e->string);
        if (!t->name) {
            st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
            goto done;
        }
        f->n_tensors++;
        if ((st = parse_entry(e, t, data, dlen, path, err))) goto done;
    }
    qsort(f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, cmp_tensor_name);
    for (int i = 1; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0) {
            char pn[84];
            st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: duplicate tensor %s", path,
                             printable(pn, f->tensors[i].name));
            goto done;
        }
done:
    cJSON_Delete(root);
    free(h);
    if (st) lmp_st_close(f);
    return st;
}

enum lmp_status lmp_st_open(struct lmp_st_file *f, const char *path, struct lmp_err *err)
{
    memset(f, 0, sizeof *f);
    struct lmp_buf b;
    enum lmp_status st = lmp_buf_read_file(path, &b, err);
    if (st) return st;
    if ((st = lmp_st_parse(f, b.data, b.len, path, err))) {
        lmp_buf_free(&b);
        return st;
    }
    f->buf = b;
    return LMP_OK;
}

const struct lmp_st_tensor *lmp_st_find(const struct lmp_st_file *f, const char *name)
{
    int lo = 0, hi = f->n_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(f->tensors[mid].name, name);
        if (c == 0) return &f->tensors[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

enum lmp_status lmp_st_to_f32(const struct lmp_st_file *f, const struct lmp_st_tensor *t,
                              float *dst, struct lmp_err *err)
{
    const unsigned char *s = t->data;
    int64_t n = t->nelem;
    switch (t->dtype) {
    case LMP_ST_F32:
        if (n) memcpy(dst, s, (size_t)n * 4);
        return LMP_OK;
    case LMP_ST_F16:
    case LMP_ST_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = (uint16_t)(s[2 * i] | s[2 * i + 1] << 8);
            dst[i] = t->dtype == LMP_ST_F16 ? lmp_f16_to_f32(h) : lmp_bf16_to_f32(h);
        }
        return LMP_OK;
    default: {
        char pn[84];
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                           "%s: tensor %s: dtype %s not supported (F32, F16, BF16 only)",
                           f->path ? f->path : "safetensors", printable(pn, t->name),
                           dtypes[t->dtype].name);
    }
    }
}

/* ---- writer ------------------------------------------------------------------------- */

static const char *wtype_dtype(enum lmp_type t)
{
    switch (t) {
    case LMP_TYPE_F32: return "F32";
    case LMP_TYPE_F16: return "F16";
    case LMP_TYPE_BF16: return "BF16";
    case LMP_TYPE_I32: return "I32";
    case LMP_TYPE_U8: return "U8";
    default: return NULL;
    }
}

static cJSON *raw_u64(uint64_t v)
{
    char s[32];
    snprintf(s, sizeof s, "%llu", (unsigned long long)v);
    return cJSON_CreateRaw(s);
}

enum lmp_status lmp_st_write(const char *path, const struct lmp_st_wtensor *t, int n,
                             const char *const *meta, int n_meta, struct lmp_err *err)
{
    if (n < 0 || n > LMP_MAX_TENSORS || n_meta < 0 || (n_meta && !meta))
        return lmp_err_set(err, LMP_ERR_ARG, "%s: bad tensor or metadata count", path);
    enum lmp_status st = LMP_OK;
    cJSON *root = cJSON_CreateObject();
    char *hdr = NULL;
    if (!root) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    if (n_meta) {
        cJSON *mo = cJSON_AddObjectToObject(root, "__metadata__");
        if (!mo) goto oom;
        for (int i = 0; i < n_meta; i++) {
            if (!meta[2 * i] || !meta[2 * i + 1]) {
                st = lmp_err_set(err, LMP_ERR_ARG, "%s: metadata entry %d is NULL", path, i);
                goto done;
            }
            if (!cJSON_AddStringToObject(mo, meta[2 * i], meta[2 * i + 1])) goto oom;
        }
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        const char *dt = wtype_dtype(t[i].type);
        if (!t[i].name || !dt || t[i].n_dims < 0 || t[i].n_dims > 4 ||
            strcmp(t[i].name, "__metadata__") == 0) {
            st = lmp_err_set(err, LMP_ERR_ARG, "%s: tensor %d (%s): bad name, type or rank", path,
                             i, t[i].name ? t[i].name : "NULL");
            goto done;
        }
        if (cJSON_GetObjectItemCaseSensitive(root, t[i].name)) {
            st = lmp_err_set(err, LMP_ERR_ARG, "%s: duplicate tensor %s", path, t[i].name);
            goto done;
        }
        uint64_t bytes = lmp_type_elem_size(t[i].type);
        cJSON *o = cJSON_AddObjectToObject(root, t[i].name);
        if (!o || !cJSON_AddStringToObject(o, "dtype", dt)) goto oom;
        cJSON *sh = cJSON_AddArrayToObject(o, "shape");
        if (!sh) goto oom;
        for (int d = 0; d < t[i].n_dims; d++) {
            int64_t v = t[i].shape[d];
            if (v < 0 || (v && bytes > ((uint64_t)1 << 53) / (uint64_t)v)) {
                st = lmp_err_set(err, LMP_ERR_ARG, "%s: tensor %s: bad shape", path, t[i].name);
                goto done;
            }
            bytes *= (uint64_t)v;
            cJSON *x = raw_u64((uint64_t)v);
            if (!x || !cJSON_AddItemToArray(sh, x)) {
                cJSON_Delete(x);
                goto oom;
            }
        }
        if (bytes && !t[i].data) {
            st = lmp_err_set(err, LMP_ERR_ARG, "%s: tensor %s has no data", path, t[i].name);
            goto done;
        }
        cJSON *of = cJSON_AddArrayToObject(o, "data_offsets");
        if (!of) goto oom;
        cJSON *a = raw_u64(off), *b = raw_u64(off + bytes);
        if (!a || !b) {
            cJSON_Delete(a);
            cJSON_Delete(b);
            goto oom;
        }
        cJSON_AddItemToArray(of, a);
        cJSON_AddItemToArray(of, b);
        off += bytes;
    }
    hdr = cJSON_PrintUnformatted(root);
    if (!hdr) goto oom;
    size_t hl = strlen(hdr);
    size_t padded = (hl + 7) & ~(size_t)7; /* data section 8-byte aligned, as the reference does */
    unsigned char lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    struct lmp_outfile of;
    if ((st = lmp_out_open(&of, path, err))) goto done;
    static const char spaces[] = "        ";
    if ((st = lmp_out_write(&of, lenb, 8, err)) || (st = lmp_out_write(&of, hdr, hl, err)) ||
        (st = lmp_out_write(&of, spaces, padded - hl, err)))
        goto abort;
    for (int i = 0; i < n; i++) {
        size_t bytes = lmp_type_elem_size(t[i].type);
        for (int d = 0; d < t[i].n_dims; d++) bytes *= (size_t)t[i].shape[d];
        if ((st = lmp_out_write(&of, t[i].data, bytes, err))) goto abort;
    }
    st = lmp_out_commit(&of, err);
    goto done;
abort:
    lmp_out_abort(&of);
    goto done;
oom:
    st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
done:
    free(hdr);
    cJSON_Delete(root);
    return st;
}
