/* Packing of integer codes into the little-endian bit streams of docs/FORMAT.md, their
 * unpacking, validation of packed shapes/permutations, and the reference dequantiser. */
#include "qpack.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int lmp_qpack_bits_ok(int bits) { return bits == 2 || bits == 3 || bits == 4 || bits == 8; }

enum lmp_type lmp_qpack_type(int bits)
{
    switch (bits) {
    case 2: return LMP_TYPE_Q2;
    case 3: return LMP_TYPE_Q3;
    case 4: return LMP_TYPE_Q4;
    case 8: return LMP_TYPE_Q8;
    default: return (enum lmp_type)0;
    }
}

int lmp_qpack_type_bits(enum lmp_type t)
{
    switch (t) {
    case LMP_TYPE_Q2: return 2;
    case LMP_TYPE_Q3: return 3;
    case LMP_TYPE_Q4: return 4;
    case LMP_TYPE_Q8: return 8;
    default: return 0;
    }
}

size_t lmp_qpack_row_bytes(int64_t cols, int bits)
{
    if (!lmp_qpack_bits_ok(bits) || cols <= 0 || cols > ((int64_t)1 << 40)) return 0;
    uint64_t nbits = (uint64_t)cols * (uint64_t)bits;
    uint64_t nbytes = (nbits + 7) / 8;
    nbytes = (nbytes + 3) & ~(uint64_t)3;
    if (nbytes > SIZE_MAX) return 0;
    return (size_t)nbytes;
}

enum lmp_status lmp_qpack_sizes(int64_t rows, int64_t cols, int bits, int group,
                                size_t *codes_bytes, size_t *params_bytes, struct lmp_err *err)
{
    if (!lmp_qpack_bits_ok(bits))
        return lmp_err_set(err, LMP_ERR_ARG, "packed tensor: %d bits (want 2, 3, 4 or 8)", bits);
    if (rows <= 0 || cols <= 0)
        return lmp_err_set(err, LMP_ERR_ARG, "packed tensor: bad shape [%lld, %lld]",
                           (long long)rows, (long long)cols);
    if (group <= 0 || group > cols)
        return lmp_err_set(err, LMP_ERR_ARG, "packed tensor: group %d not in 1..%lld", group,
                           (long long)cols);
    size_t rb = lmp_qpack_row_bytes(cols, bits);
    uint64_t ng = (uint64_t)((cols + group - 1) / group);
    if (rb == 0 || (uint64_t)rows > SIZE_MAX / rb || (uint64_t)rows > SIZE_MAX / 2 / ng)
        return lmp_err_set(err, LMP_ERR_FORMAT, "packed tensor: shape [%lld, %lld] too large",
                           (long long)rows, (long long)cols);
    if (codes_bytes) *codes_bytes = (size_t)rows * rb;
    if (params_bytes) *params_bytes = (size_t)rows * (size_t)ng * 2;
    return LMP_OK;
}

enum lmp_status lmp_qpack_pack(const uint8_t *codes, int64_t rows, int64_t cols, int bits,
                               uint8_t *packed, struct lmp_err *err)
{
    enum lmp_status st = lmp_qpack_sizes(rows, cols, bits, 1, NULL, NULL, err);
    if (st) return st;
    unsigned maxq = (1u << bits) - 1u;
    for (int64_t i = 0; i < rows * cols; i++)
        if (codes[i] > maxq)
            return lmp_err_set(err, LMP_ERR_ARG, "pack: code %u at (%lld, %lld) exceeds %u bits",
                               codes[i], (long long)(i / cols), (long long)(i % cols), bits);
    size_t rb = lmp_qpack_row_bytes(cols, bits);
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *c = codes + r * cols;
        uint8_t *out = packed + (size_t)r * rb;
        uint64_t acc = 0; /* pending bits, LSB first */
        unsigned nacc = 0;
        size_t o = 0;
        for (int64_t j = 0; j < cols; j++) {
            acc |= (uint64_t)c[j] << nacc;
            nacc += (unsigned)bits;
            while (nacc >= 8) {
                out[o++] = (uint8_t)acc;
                acc >>= 8;
                nacc -= 8;
            }
        }
        if (nacc) out[o++] = (uint8_t)acc;
        memset(out + o, 0, rb - o);
    }
    return LMP_OK;
}

void lmp_qpack_unpack(const uint8_t *packed, int64_t rows, int64_t cols, int bits,
                      uint8_t *codes)
{
    size_t rb = lmp_qpack_row_bytes(cols, bits);
    LMP_ASSERT(rb != 0);
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *row = packed + (size_t)r * rb;
        for (int64_t j = 0; j < cols; j++) codes[r * cols + j] = (uint8_t)lmp_qpack_get(row, j, bits);
    }
}

enum lmp_status lmp_qpack_check_perm(const int32_t *perm, int64_t cols, struct lmp_err *err)
{
    if (cols <= 0 || cols > INT32_MAX)
        return lmp_err_set(err, LMP_ERR_ARG, "perm: bad length %lld", (long long)cols);
    uint8_t *seen = calloc((size_t)cols, 1);
    if (!seen) return lmp_err_set(err, LMP_ERR_NOMEM, "perm: out of memory");
    for (int64_t j = 0; j < cols; j++) {
        int32_t p = perm[j];
        if (p < 0 || p >= cols || seen[p]) {
            free(seen);
            return lmp_err_set(err, LMP_ERR_FORMAT,
                               "perm: entry %lld = %d is out of range or repeated", (long long)j,
                               (int)p);
        }
        seen[p] = 1;
    }
    free(seen);
    return LMP_OK;
}

enum lmp_status lmp_qview_init(struct lmp_qview *v, const void *codes, size_t codes_bytes,
                               int64_t rows, int64_t cols, int bits, int group,
                               const uint16_t *scales, const uint16_t *zeros,
                               const int32_t *perm, struct lmp_err *err)
{
    memset(v, 0, sizeof *v);
    size_t want = 0;
    enum lmp_status st = lmp_qpack_sizes(rows, cols, bits, group, &want, NULL, err);
    if (st) return st;
    if (codes_bytes != want)
        return lmp_err_set(err, LMP_ERR_FORMAT, "packed tensor: %zu code bytes, expected %zu",
                           codes_bytes, want);
    if (!codes || !scales || !zeros)
        return lmp_err_set(err, LMP_ERR_ARG, "packed tensor: missing codes, scales or zeros");
    if (perm && (st = lmp_qpack_check_perm(perm, cols, err))) return st;
    v->codes = codes;
    v->rows = rows;
    v->cols = cols;
    v->bits = bits;
    v->group = group;
    v->n_groups = (cols + group - 1) / group;
    v->row_bytes = lmp_qpack_row_bytes(cols, bits);
    v->scales = scales;
    v->zeros = zeros;
    v->perm = perm;
    return LMP_OK;
}

enum lmp_status lmp_qview_from_tensor(struct lmp_qview *v, const struct lmp_tensor *t,
                                      struct lmp_err *err)
{
    int bits = lmp_qpack_type_bits(t->type);
    if (!bits || t->n_dims != 2)
        return lmp_err_set(err, LMP_ERR_ARG, "%s: not a 2-D packed tensor", t->name);
    if (t->q.bits != bits)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: type %s but quant bits %d", t->name,
                           lmp_type_name(t->type), t->q.bits);
    enum lmp_status st = lmp_qview_init(v, t->data, t->nbytes, t->shape[0], t->shape[1], bits,
                                        t->q.group, t->q.scales, t->q.zeros, t->q.perm, err);
    if (st) {
        /* prefix the tensor name */
        char m[sizeof err->msg];
        if (err) {
            snprintf(m, sizeof m, "%.*s: %.400s", LMP_NAME_MAX, t->name, err->msg);
            memcpy(err->msg, m, sizeof m);
        }
    }
    return st;
}

void lmp_qpack_dequant_row(const struct lmp_qview *v, int64_t r, float *out)
{
    const uint8_t *row = v->codes + (size_t)r * v->row_bytes;
    const uint16_t *s = v->scales + r * v->n_groups, *z = v->zeros + r * v->n_groups;
    for (int64_t j = 0; j < v->cols; j++) {
        int64_t g = j / v->group;
        float q = (float)lmp_qpack_get(row, j, v->bits);
        out[j] = (q - lmp_f16_to_f32(z[g])) * lmp_f16_to_f32(s[g]);
    }
}

void lmp_qview_dequant(const struct lmp_qview *v, float *W)
{
    for (int64_t r = 0; r < v->rows; r++) {
        float *w = W + r * v->cols;
        if (!v->perm) {
            lmp_qpack_dequant_row(v, r, w);
            continue;
        }
        const uint8_t *row = v->codes + (size_t)r * v->row_bytes;
        const uint16_t *s = v->scales + r * v->n_groups, *z = v->zeros + r * v->n_groups;
        for (int64_t j = 0; j < v->cols; j++) {
            int64_t g = j / v->group;
            float q = (float)lmp_qpack_get(row, j, v->bits);
            w[v->perm[j]] = (q - lmp_f16_to_f32(z[g])) * lmp_f16_to_f32(s[g]);
        }
    }
}
