/* Whole-model quantization: calibration window sampling (against CPython's random), and
 * end-to-end GPTQ/RTN on stories260K through the runtime. */
#include "test.h"
#include "eval/eval.h"
#include "quantize/quant_model.h"

#include <math.h>
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

/* ---- end to end on stories260K ----------------------------------------------------------- */

#define S260K "models/stories260K.bin"

static int32_t *read_ids(const char *path, int64_t *n)
{
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    int64_t cap = 1 << 18, k = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    int v;
    while (fscanf(f, "%d", &v) == 1) {
        if (k == cap) ids = realloc(ids, (cap *= 2) * sizeof *ids);
        ids[k++] = v;
    }
    fclose(f);
    *n = k;
    return ids;
}

/* Quantizes a fresh copy of stories260K; returns the PPL on the first eval chunks (ctx 256)
 * and, when codes is not NULL, a malloc'd copy of every packed code blob concatenated. */
static double quant_ppl(const struct lmp_quant_model_opts *o, const int32_t *cal, int64_t n_cal,
                        const int32_t *ev, int64_t n_ev, uint8_t **codes, size_t *n_codes)
{
    struct lmp_model *m = NULL;
    struct lmp_err err = {{0}};
    if (lmp_ckpt_load(S260K, NULL, &m, &err) != LMP_OK) {
        CHECK_MSG(0, "load: %s", err.msg);
        return -1;
    }
    struct lmp_quant_report *rep = calloc(1, sizeof *rep);
    enum lmp_status st = lmp_quant_model(m, cal, n_cal, o, rep, &err);
    CHECK_MSG(st == LMP_OK, "quantize: %s", err.msg);
    double ppl = -1;
    if (st == LMP_OK) {
        CHECK_EQ_INT(rep->n_tensors, 35);
        CHECK_EQ_INT(rep->n_shortcut_fallbacks, 0);
        struct lmp_eval_opts eo = {.protocol = LMP_EVAL_LLAMACPP, .ctx = 256, .max_chunks = 30};
        struct lmp_eval_result r;
        if (lmp_eval_ppl(m, ev, n_ev, &eo, &r, &err) == LMP_OK) ppl = r.ppl;
        else CHECK_MSG(0, "ppl: %s", err.msg);
        if (codes) {
            size_t tot = 0;
            for (int i = 0; i < m->n_tensors; i++)
                if (lmp_type_is_packed(m->tensors[i].type)) tot += m->tensors[i].nbytes;
            *codes = malloc(tot);
            *n_codes = 0;
            for (int i = 0; i < m->n_tensors; i++)
                if (lmp_type_is_packed(m->tensors[i].type)) {
                    memcpy(*codes + *n_codes, m->tensors[i].data, m->tensors[i].nbytes);
                    *n_codes += m->tensors[i].nbytes;
                }
        }
    }
    free(rep);
    lmp_model_free(m);
    return ppl;
}

/* 3-bit groups of 32 (w_down's 172 columns end in a group of 12), 16 windows of 256 tokens:
 * GPTQ beats RTN; the pass-saving shortcuts (q/k/v inputs from the norm, the layer output
 * by linearity) give the same model as the full passes up to float rounding; results are
 * the same from run to run; the fp target improves on plain GPTQ. */
TEST(quant_model_stories260K_end_to_end)
{
    int64_t n_cal, n_ev;
    int32_t *cal = read_ids("tests/data/stories260K/calib.ids", &n_cal);
    int32_t *ev = read_ids("tests/data/stories260K/eval.ids", &n_ev);
    REQUIRE(cal && ev);
    struct lmp_quant_model_opts o;
    lmp_quant_model_opts_default(&o);
    o.q.bits = 3;
    o.q.group = 32;
    o.nsamples = 8;
    o.seqlen = 192;
    o.method = LMP_QUANT_RTN;
    double p_rtn = quant_ppl(&o, cal, n_cal, ev, n_ev, NULL, NULL);
    o.method = LMP_QUANT_GPTQ;
    uint8_t *c1 = NULL, *c2 = NULL, *c3 = NULL;
    size_t n1 = 0, n2 = 0, n3 = 0;
    double p_gptq = quant_ppl(&o, cal, n_cal, ev, n_ev, &c1, &n1);
    double p_again = quant_ppl(&o, cal, n_cal, ev, n_ev, &c2, &n2);
    o.no_shortcut = 1;
    double p_full = quant_ppl(&o, cal, n_cal, ev, n_ev, &c3, &n3);
    o.no_shortcut = 0;
    o.fp_alpha = 1.0f;
    double p_fp = quant_ppl(&o, cal, n_cal, ev, n_ev, NULL, NULL);
    fprintf(stderr, "    PPL (30 chunks): RTN %.4f, GPTQ %.4f (again %.4f, full passes %.4f), "
                    "fp target %.4f\n", p_rtn, p_gptq, p_again, p_full, p_fp);
    CHECK(p_gptq > 0 && p_gptq < 0.9 * p_rtn);
    REQUIRE(c1 && c2 && c3 && n1 == n2 && n1 == n3);
    CHECK_MSG(memcmp(c1, c2, n1) == 0, "two runs gave different codes");
    size_t diff = 0;
    for (size_t i = 0; i < n1; i++) diff += c1[i] != c3[i];
    fprintf(stderr, "    shortcut vs full passes: %zu of %zu code bytes differ\n", diff, n1);
    CHECK(diff <= n1 / 100);
    CHECK(fabs(p_full - p_gptq) <= 0.01 * p_gptq);
    CHECK(p_fp > 0 && p_fp < p_gptq);
    free(c1);
    free(c2);
    free(c3);
    free(cal);
    free(ev);
}
