/* libFuzzer target for the GGUF reader: every input must load or fail with a clean error,
 * never crash, leak or read out of bounds. Build: make fuzz; run e.g.
 *   mkdir -p corpus && cp tests/data/gguf/*.gguf tests/bad/gguf/*.gguf corpus/
 *   ./build-fuzz/fuzz_gguf -max_total_time=240 -rss_limit_mb=4096 corpus/
 * Crash inputs belong in tests/bad/gguf/ (tests/test_gguf.c loads every file there). */
#include "formats/model.h"
#include "fuzz_util.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write_tmp(data, size, ".gguf");
    if (!path) return 0;
    struct lmp_model *m = NULL;
    struct lmp_err err = {{0}};
    enum lmp_status st = lmp_ckpt_load_gguf(path, &m, &err);
    if (st == LMP_OK) {
        if (!m || !m->tok_embd || !m->out || !m->layers) abort();
    } else {
        /* a failure returns no model, names the file, and is never an internal error */
        if (m || !strstr(err.msg, path) || st == LMP_ERR_INTERNAL) abort();
    }
    lmp_model_free(m);
    return 0;
}
