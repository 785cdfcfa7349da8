/* libFuzzer target: the safetensors header parser and tensor conversion (formats/safetensors.c).
 * Build: make fuzz; run: ./build-fuzz/fuzz_safetensors -max_total_time=200 corpus/
 * Inputs that ever crashed go to tests/bad/safetensors/ (checked by hf_safetensors_bad_corpus). */
#include "formats/safetensors.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lmp_st_file f;
    struct lmp_err err;
    if (lmp_st_parse(&f, data, size, "fuzz.safetensors", &err) == LMP_OK) {
        for (int i = 0; i < f.n_tensors; i++) {
            const struct lmp_st_tensor *t = &f.tensors[i];
            if (lmp_st_find(&f, t->name) != t) abort();
            float *buf = malloc((size_t)t->nelem * 4 + 4);
            if (buf) (void)lmp_st_to_f32(&f, t, buf, &err);
            free(buf);
        }
    } else if (!memchr(err.msg, 0, sizeof err.msg) || strchr(err.msg, '\n')) {
        abort(); /* the error must be one NUL-terminated line */
    }
    lmp_st_close(&f);
    return 0;
}
