/* libFuzzer target: the .lmp reader (with crc checks off so the fuzzer gets past them). */
#include "formats/model.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = fuzz_write_tmp(data, size, ".lmp");
    if (!p) return 0;
    struct lmp_load_opts lo = {.no_crc = 1};
    struct lmp_err err;
    struct lmp_model *m = NULL;
    if (lmp_ckpt_load_lmp(p, &lo, &m, &err) == LMP_OK) lmp_model_free(m);
    int bad;
    lmp_ckpt_verify_lmp(p, &bad, &err);
    return 0;
}
