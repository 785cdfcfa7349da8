/* Whole-model quantization: calibration window sampling (against CPython's random), and
 * end-to-end GPTQ/RTN on stories260K through the runtime. */
#include "test.h"
#include "quantize/quant_model.h"

#include <string.h>

TEST(quant_calib_python_sampler_matches_cpython)
{
    /* ids 1000..(1000+N-1): each window's first id tells its start in BOS + ids */
    enum { N = 199090, S = 512, NS = 40 };
    int32_t *ids = malloc(N * sizeof *ids);
    for (int i = 0; i < N; i++) ids[i] = 1000 + i;
    int32_t *w = NULL;
    struct lmp_err err = {{0}};
    REQUIRE(lmp_quant_calib_windows_python(ids, N, NS, S, 0, 1, &w, &err) == LMP_OK);
    char out[4096];
    int rc = lmp_test_sh(out, sizeof out,
                         "python3 -c 'import random\nrandom.seed(0)\n"
                         "print(\" \".join(str(random.randint(0, %d - %d - 1)) for _ in range(%d)))'",
                         N + 1, S, NS);
    if (rc != 0) lmp_test_skip("no python3");
    char *p = out;
    for (int i = 0; i < NS; i++) {
        long start = strtol(p, &p, 10);
        int32_t first = w[(size_t)i * S], second = w[(size_t)i * S + 1];
        int32_t want = start == 0 ? 1 : (int32_t)(1000 + start - 1);
        CHECK_MSG(first == want, "window %d: first id %d, CPython start %ld", i, first, start);
        CHECK_EQ_INT(second, 1000 + start);
    }
    free(w);
    free(ids);
}
