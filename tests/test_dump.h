/* Writing models as .npy files for the Python references (tests/check_*.py): every tensor's
 * values as float32 in lmpress's layout, packed tensors dequantized. Shared by
 * tests/test_export.c and tests/test_smollm2.c. */
#ifndef LMP_TEST_DUMP_H
#define LMP_TEST_DUMP_H

#include "test.h"
#include "formats/model.h"
#include "formats/qpack.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* float32 .npy (C order) of a [rows, cols] (cols 0: 1-D) array */
static inline int write_npy(const char *path, const float *x, int64_t rows, int64_t cols)
{
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    char hdr[128];
    int n;
    if (cols)
        n = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (%lld, %lld), }",
                     (long long)rows, (long long)cols);
    else
        n = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (%lld,), }",
                     (long long)rows);
    int total = 10 + n + 1, pad = (64 - total % 64) % 64;
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
    uint16_t hl = (uint16_t)(n + 1 + pad);
    memcpy(pre + 8, &hl, 2);
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(hdr, 1, (size_t)n, f) == (size_t)n;
    for (int i = 0; i < pad; i++) ok &= fputc(' ', f) != EOF;
    ok &= fputc('\n', f) != EOF;
    int64_t cnt = rows * (cols ? cols : 1);
    ok &= fwrite(x, 4, (size_t)cnt, f) == (size_t)cnt;
    return fclose(f) == 0 && ok;
}

/* Every value of a tensor as floats in natural column order (packed ones dequantized). */
static inline float *tensor_values(const struct lmp_tensor *t)
{
    int64_t n = lmp_tensor_nelem(t);
    float *x = malloc((size_t)n * 4 + 4);
    if (!x) return NULL;
    if (lmp_type_is_packed(t->type)) {
        struct lmp_qview v;
        struct lmp_err err;
        if (lmp_qview_from_tensor(&v, t, &err) != LMP_OK) {
            free(x);
            return NULL;
        }
        lmp_qview_dequant(&v, x);
        return x;
    }
    for (int64_t k = 0; k < n; k++)
        x[k] = lmp_tensor_get_f32(t, t->n_dims == 2 ? k / t->shape[1] : k,
                                  t->n_dims == 2 ? k % t->shape[1] : 0);
    return x;
}

/* Writes <dir>/<name>.npy for every tensor (the values GGUF / GPTQ readers must find). */
static inline int dump_model(const struct lmp_model *m, const char *dir)
{
    mkdir(dir, 0755);
    for (int i = 0; i < m->n_tensors; i++) {
        const struct lmp_tensor *t = &m->tensors[i];
        float *x = tensor_values(t);
        char path[1024];
        snprintf(path, sizeof path, "%s/%s.npy", dir, t->name);
        int ok = x && write_npy(path, x, t->shape[0], t->n_dims == 2 ? t->shape[1] : 0);
        free(x);
        if (!ok) return 0;
    }
    return 1;
}

/* Compares every tensor's values (dequantized) bit for bit; returns the number differing. */
static inline int same_values(const struct lmp_model *a, const struct lmp_model *b)
{
    int bad = 0;
    for (int i = 0; i < a->n_tensors; i++) {
        const struct lmp_tensor *t = &a->tensors[i];
        const struct lmp_tensor *u = lmp_model_find((struct lmp_model *)b, t->name);
        if (!u || lmp_tensor_nelem(u) != lmp_tensor_nelem(t)) {
            lmp_test_fail(__FILE__, __LINE__, "tensor %s missing or reshaped", t->name);
            bad++;
            continue;
        }
        float *x = tensor_values(t), *y = tensor_values(u);
        if (!x || !y || memcmp(x, y, (size_t)lmp_tensor_nelem(t) * 4) != 0) {
            lmp_test_fail(__FILE__, __LINE__, "tensor %s values differ", t->name);
            bad++;
        }
        free(x);
        free(y);
    }
    return bad;
}

#endif
