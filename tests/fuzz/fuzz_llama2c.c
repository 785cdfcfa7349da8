/* libFuzzer target: the llama2.c checkpoint loader (first input byte even) and the
 * tokenizer.bin loader (odd), each with a fixed valid partner file. */
#include "formats/model.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const char *p = fuzz_write_tmp(data + 1, size - 1, ".bin");
    if (!p) return 0;
    struct lmp_err err;
    if (data[0] & 1) {
        struct lmp_vocab v = {0};
        lmp_ckpt_load_llama2c_tokenizer(p, 8, &v, &err);
        lmp_vocab_free(&v);
    } else {
        struct lmp_model *m = NULL;
        if (lmp_ckpt_load_llama2c(p, "tests/data/tiny/tok8.bin", &m, &err) == LMP_OK)
            lmp_model_free(m);
    }
    return 0;
}
