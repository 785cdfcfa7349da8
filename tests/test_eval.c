/* eval/: perplexity of stories260K on tinystories/eval.txt's ids against llama.cpp's and the
 * GPTQ-style reference values of tests/data/stories260K/README.md, the save/compare of
 * distributions (KL of a model with itself, of a perturbed model against numpy), errors, and
 * the `lmpress ppl` command line. */
#include "test.h"
#include "eval/eval.h"
#include "formats/model.h"
#include "test_rtmodel.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <string.h>

#define S260K "models/stories260K.bin"
#define EVAL_IDS "tests/data/stories260K/eval.ids"

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

static struct lmp_model *load260k(void)
{
    struct lmp_model *m = NULL;
    struct lmp_err err = {{0}};
    enum lmp_status st = lmp_ckpt_load(S260K, NULL, &m, &err);
    CHECK_MSG(st == LMP_OK, "load: %s", err.msg);
    return m;
}

TEST(eval_ppl_matches_llamacpp_and_gptq_reference)
{
    struct lmp_model *m = load260k();
    REQUIRE(m);
    int64_t n;
    int32_t *ids = read_ids(EVAL_IDS, &n);
    REQUIRE(ids && n == 193928);
    struct {
        enum lmp_eval_protocol proto;
        int ctx;
        double ppl;
        int64_t scored; /* 0: not given by the reference */
    } cases[] = {
        {LMP_EVAL_LLAMACPP, 256, 4.2412, 96139},
        {LMP_EVAL_LLAMACPP, 512, 4.2812, 0},
        {LMP_EVAL_GPTQ, 512, 4.3673, 193158},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct lmp_eval_opts o = {.protocol = cases[i].proto, .ctx = cases[i].ctx};
        struct lmp_eval_result r;
        struct lmp_err err = {{0}};
        enum lmp_status st = lmp_eval_ppl(m, ids, n, &o, &r, &err);
        CHECK_MSG(st == LMP_OK, "ppl: %s", err.msg);
        fprintf(stderr, "    %s ctx %d: PPL %.4f +/- %.5f, %lld scored, %d chunks, %.0f tok/s\n",
                lmp_eval_protocol_name(cases[i].proto), cases[i].ctx, r.ppl, r.ppl_err,
                (long long)r.n_scored, r.n_chunks, r.tok_per_s);
        CHECK_MSG(fabs(r.ppl - cases[i].ppl) <= 0.0005, "PPL %.5f, reference %.4f", r.ppl,
                  cases[i].ppl);
        if (cases[i].scored) CHECK_EQ_INT(r.n_scored, cases[i].scored);
        CHECK(r.ppl_err > 0 && r.ppl_err < 0.05);
    }
    free(ids);
    lmp_model_free(m);
}

/* Protocols and KL-divergence on the tiny model against tests/gen_runtime_fixture.py's numpy
 * values: BOS handling, which positions are scored, the error formula, KL with the base kept
 * whole and as top-5 + rest. */
TEST(eval_tiny_model_matches_numpy)
{
    struct lmp_model *m = tiny_model();
    REQUIRE(m);
    m->vocab.bos = 1;
    m->vocab.add_bos = 1;
    int32_t *ids = NULL;
    float *want = NULL;
    int is_int, nd;
    long shape[4];
    REQUIRE(lmp_test_read_npy("tests/data/rt_tiny/eval_ids.npy", (void **)&ids, &is_int, shape,
                              &nd) == 200);
    REQUIRE(lmp_test_read_npy("tests/data/rt_tiny/eval_expected.npy", (void **)&want, &is_int,
                              shape, &nd) == 20);
    struct lmp_err err = {{0}};
    struct lmp_eval_result r;
    for (int g = 0; g < 2; g++) {
        struct lmp_eval_opts o = {.protocol = g ? LMP_EVAL_GPTQ : LMP_EVAL_LLAMACPP, .ctx = 8,
                                  .n_threads = g ? 1 : 3};
        REQUIRE(lmp_eval_ppl(m, ids, 200, &o, &r, &err) == LMP_OK);
        float got[3] = {(float)r.ppl, (float)r.n_scored, (float)r.ppl_err};
        CHECK_CLOSE(g ? "gptq ppl, scored, err" : "llamacpp ppl, scored, err", got, want + 3 * g,
                    3, 0, 2e-5);
        CHECK_EQ_INT(r.n_processed, 25 * 8);
    }
    /* the base's distributions, whole (top-k = vocab) and top-5 */
    char base_all[600], base5[600];
    snprintf(base_all, sizeof base_all, "%s/base_all.logits", lmp_test_tmpdir());
    snprintf(base5, sizeof base5, "%s/base5.logits", lmp_test_tmpdir());
    struct lmp_eval_opts o = {.protocol = LMP_EVAL_LLAMACPP, .ctx = 8, .save_logits = base_all,
                              .topk = 1000};
    REQUIRE(lmp_eval_ppl(m, ids, 200, &o, &r, &err) == LMP_OK);
    o.save_logits = base5;
    o.topk = 5;
    o.n_threads = 1;
    REQUIRE(lmp_eval_ppl(m, ids, 200, &o, &r, &err) == LMP_OK);
    /* the perturbed model */
    float *wq = m->layers[0].wq->data, *wd = m->layers[1].w_down->data;
    for (long i = 0; i < m->layers[0].wq->shape[0] * m->layers[0].wq->shape[1]; i++) wq[i] *= 0.75f;
    for (long i = 0; i < m->layers[1].w_down->shape[0] * m->layers[1].w_down->shape[1]; i++)
        wd[i] *= 0.5f;
    for (int k = 0; k < 2; k++) {
        struct lmp_eval_opts q = {.protocol = LMP_EVAL_LLAMACPP, .ctx = 8,
                                  .kl_base = k ? base5 : base_all};
        enum lmp_status st = lmp_eval_ppl(m, ids, 200, &q, &r, &err);
        CHECK_MSG(st == LMP_OK, "kl: %s", err.msg);
        REQUIRE(r.has_kl);
        CHECK_EQ_INT(r.kl.topk, k ? 5 : 40);
        float got[7] = {(float)r.ppl,           (float)r.kl.ppl_base,   (float)r.kl.kld_mean,
                        (float)r.kl.kld_median, (float)r.kl.kld_p99,    (float)r.kl.kld_max,
                        (float)r.kl.top1};
        CHECK_CLOSE(k ? "KL stats, base top-5" : "KL stats, base whole", got, want + 6 + 7 * k, 7,
                    2e-6, 1e-4);
        CHECK(r.kl.kld_mean_err > 0 && r.kl.top1_err > 0 && r.kl.dp_rms > 0);
        CHECK(fabs(r.kl.ln_ratio - (log(r.ppl) - log(r.kl.ppl_base))) < 1e-9);
    }
    free(ids);
    free(want);
    lmp_model_free(m);
}

TEST(eval_kl_of_a_model_with_itself_is_zero)
{
    struct lmp_model *m = load260k();
    REQUIRE(m);
    int64_t n;
    int32_t *ids = read_ids(EVAL_IDS, &n);
    REQUIRE(ids);
    char path[600];
    snprintf(path, sizeof path, "%s/base.logits", lmp_test_tmpdir());
    struct lmp_eval_opts o = {.ctx = 256, .max_chunks = 40, .save_logits = path};
    struct lmp_eval_result a, b;
    struct lmp_err err = {{0}};
    REQUIRE(lmp_eval_ppl(m, ids, n, &o, &a, &err) == LMP_OK);
    o.save_logits = NULL;
    o.kl_base = path;
    o.n_threads = 1;
    REQUIRE(lmp_eval_ppl(m, ids, n, &o, &b, &err) == LMP_OK);
    CHECK(b.has_kl);
    CHECK(fabs(b.ppl - a.ppl) < 1e-12);
    CHECK_MSG(fabs(b.kl.ppl_base - a.ppl) < 1e-5 * a.ppl, "base %g vs %g", b.kl.ppl_base, a.ppl);
    CHECK_MSG(fabs(b.kl.kld_mean) < 1e-6 && b.kl.kld_max < 1e-5, "KL %g max %g", b.kl.kld_mean,
              b.kl.kld_max);
    CHECK(b.kl.top1 == 1.0);
    CHECK(b.kl.dp_rms < 1e-5);
    /* file size: header + 40 chunks x 127 positions x (8 + 8 x 32) bytes */
    FILE *f = fopen(path, "rb");
    REQUIRE(f);
    fseek(f, 0, SEEK_END);
    CHECK_EQ_INT(ftell(f), 64 + 40L * 127 * 264);
    fclose(f);
    /* a base from another context, text or protocol is refused */
    o.ctx = 128;
    CHECK(lmp_eval_ppl(m, ids, n, &o, &b, &err) == LMP_ERR_ARG);
    CHECK(strstr(err.msg, "context"));
    o.ctx = 256;
    o.protocol = LMP_EVAL_GPTQ;
    CHECK(lmp_eval_ppl(m, ids, n, &o, &b, &err) == LMP_ERR_ARG);
    o.protocol = LMP_EVAL_LLAMACPP;
    CHECK(lmp_eval_ppl(m, ids + 1, n - 1, &o, &b, &err) == LMP_ERR_ARG);
    CHECK(strstr(err.msg, "token stream"));
    /* truncated or damaged files are format errors */
    char cmd[4000];
    snprintf(cmd, sizeof cmd, "head -c 100000 %s > %s.cut && cp %s %s.bad && "
             "printf '\\377\\377\\377\\377' | dd of=%s.bad bs=1 seek=%d conv=notrunc 2>/dev/null",
             path, path, path, path, path, 64 + 264 * 7 + 8);
    REQUIRE(lmp_test_sh(NULL, 0, "%s", cmd) == 0);
    char p2[700];
    snprintf(p2, sizeof p2, "%s.cut", path);
    o.kl_base = p2;
    CHECK(lmp_eval_ppl(m, ids, n, &o, &b, &err) == LMP_ERR_FORMAT);
    snprintf(p2, sizeof p2, "%s.bad", path);
    CHECK(lmp_eval_ppl(m, ids, n, &o, &b, &err) == LMP_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "position 7"), "%s", err.msg);
    o.kl_base = "tests/data/stories260K/eval.ids";
    CHECK(lmp_eval_ppl(m, ids, n, &o, &b, &err) == LMP_ERR_FORMAT);
    o.kl_base = "/nonexistent/x";
    CHECK(lmp_eval_ppl(m, ids, n, &o, &b, &err) == LMP_ERR_IO);
    free(ids);
    lmp_model_free(m);
}

/* The two top-k selections (insertion for small k, a sort for large k) agree, and with
 * k = vocab the rest mass is empty. */
TEST(eval_topk_selection_paths_agree)
{
    struct lmp_model *m = load260k();
    REQUIRE(m);
    int64_t n;
    int32_t *ids = read_ids(EVAL_IDS, &n);
    REQUIRE(ids);
    char p64[600], p512[600];
    snprintf(p64, sizeof p64, "%s/k64.logits", lmp_test_tmpdir());
    snprintf(p512, sizeof p512, "%s/k512.logits", lmp_test_tmpdir());
    struct lmp_eval_opts o = {.ctx = 64, .max_chunks = 3, .save_logits = p64, .topk = 64};
    struct lmp_eval_result r;
    struct lmp_err err = {{0}};
    REQUIRE(lmp_eval_ppl(m, ids, n, &o, &r, &err) == LMP_OK);
    o.save_logits = p512;
    o.topk = 100000; /* clamped to the vocabulary */
    REQUIRE(lmp_eval_ppl(m, ids, n, &o, &r, &err) == LMP_OK);
    FILE *a = fopen(p64, "rb"), *b = fopen(p512, "rb");
    REQUIRE(a && b);
    unsigned char ha[64], hb[64];
    REQUIRE(fread(ha, 1, 64, a) == 64 && fread(hb, 1, 64, b) == 64);
    uint32_t ka, kb;
    memcpy(&ka, ha + 24, 4);
    memcpy(&kb, hb + 24, 4);
    CHECK_EQ_INT(ka, 64);
    CHECK_EQ_INT(kb, 512);
    int bad = 0;
    for (int i = 0; i < 3 * 31; i++) {
        unsigned char ra[8 + 8 * 64], rb[8 + 8 * 512];
        REQUIRE(fread(ra, 1, sizeof ra, a) == sizeof ra && fread(rb, 1, sizeof rb, b) == sizeof rb);
        float rest_b;
        memcpy(&rest_b, rb + 4, 4);
        bad += memcmp(ra, rb, 4) != 0;                          /* log p(target) */
        bad += memcmp(ra + 8, rb + 8, 4 * 64) != 0;              /* ids */
        bad += memcmp(ra + 8 + 4 * 64, rb + 8 + 4 * 512, 4 * 64) != 0; /* log-probs */
        bad += !(isinf(rest_b) && rest_b < 0);
        float lp0, lp1;
        memcpy(&lp0, rb + 8 + 4 * 512, 4);
        memcpy(&lp1, rb + 8 + 4 * 512 + 4 * 511, 4);
        bad += !(lp0 >= lp1);
    }
    CHECK_EQ_INT(bad, 0);
    fclose(a);
    fclose(b);
    free(ids);
    lmp_model_free(m);
}

TEST(eval_bad_arguments)
{
    struct lmp_model *m = load260k();
    REQUIRE(m);
    int32_t ids[600];
    for (int i = 0; i < 600; i++) ids[i] = 3 + i % 500;
    struct lmp_eval_result r;
    struct lmp_err err = {{0}};
    struct lmp_eval_opts o = {.ctx = 256};
    CHECK(lmp_eval_ppl(m, ids, 600, &o, &r, &err) == LMP_OK);
    CHECK_EQ_INT(r.n_chunks, 2);    /* 601 / 256 */
    CHECK_EQ_INT(r.n_scored, 254);
    CHECK(lmp_eval_ppl(m, ids, 254, &o, &r, &err) == LMP_ERR_ARG); /* 255 < one chunk */
    CHECK(strstr(err.msg, "fewer than one chunk"));
    CHECK(lmp_eval_ppl(m, ids, 255, &o, &r, &err) == LMP_OK);
    o.ctx = 513;
    CHECK(lmp_eval_ppl(m, ids, 600, &o, &r, &err) == LMP_ERR_ARG);
    o.ctx = 2;
    CHECK(lmp_eval_ppl(m, ids, 600, &o, &r, &err) == LMP_ERR_ARG);
    o.protocol = LMP_EVAL_GPTQ;
    CHECK(lmp_eval_ppl(m, ids, 600, &o, &r, &err) == LMP_OK);
    CHECK_EQ_INT(r.n_scored, 300);
    o.protocol = (enum lmp_eval_protocol)7;
    CHECK(lmp_eval_ppl(m, ids, 600, &o, &r, &err) == LMP_ERR_ARG);
    o.protocol = LMP_EVAL_LLAMACPP;
    o.ctx = 256;
    ids[417] = 512;
    CHECK(lmp_eval_ppl(m, ids, 600, &o, &r, &err) == LMP_ERR_ARG);
    CHECK(strstr(err.msg, "417"));
    ids[417] = -3;
    CHECK(lmp_eval_ppl(m, ids, 600, &o, &r, &err) == LMP_ERR_ARG);
    ids[417] = 3;
    o.save_logits = "/nonexistent/dir/x.logits";
    CHECK(lmp_eval_ppl(m, ids, 600, &o, &r, &err) == LMP_ERR_IO);
    lmp_model_free(m);
}

TEST(eval_cli_ppl)
{
    const char *d = lmp_test_tmpdir();
    char out[8192], args[1200];
    /* fixtures for bad input */
    REQUIRE(lmp_test_sh(NULL, 0,
                        "cd %s && : > empty.txt && printf 'Once upon a time' > short.txt && "
                        "printf '1\\n2\\nfoo\\n' > nonnum.ids && printf '1\\n600\\n' > big.ids && "
                        "head -c 1000 /dev/zero > zeros.bin",
                        d) == 0);
    /* a good run, text and JSON */
    int rc = lmp_test_sh(out, sizeof out, "%s ppl " S260K " --tokens " EVAL_IDS
                         " --ctx 256 --chunks 30 --threads 2 2>/dev/null", lmp_test_bin());
    CHECK_MSG(rc == 0 && strstr(out, "PPL = ") && strstr(out, "tokens/s"), "%s", out);
    CHECK_MSG(strstr(out, "30 chunks, 7680 tokens processed, 3810 scored"), "%s", out);
    rc = lmp_test_sh(out, sizeof out, "%s ppl " S260K " --tokens " EVAL_IDS
                     " --ctx 128 --chunks 10 --protocol gptq --json 2>/dev/null", lmp_test_bin());
    CHECK_MSG(rc == 0 && strstr(out, "\"tokens_scored\":\t1270") &&
                  strstr(out, "\"protocol\":\t\"gptq\""),
              "%s", out);
    /* save, then compare */
    snprintf(args, sizeof args,
             "%s ppl " S260K " --tokens " EVAL_IDS " --ctx 64 --chunks 12 --save-logits "
             "%s/b.logits --topk 8 >/dev/null 2>&1 && %s ppl " S260K " --tokens " EVAL_IDS
             " --ctx 64 --chunks 12 --kl-base %s/b.logits --json 2>/dev/null",
             lmp_test_bin(), d, lmp_test_bin(), d);
    rc = lmp_test_sh(out, sizeof out, "%s", args);
    cJSON *j = cJSON_Parse(out), *kl = cJSON_GetObjectItem(j, "kl");
    CHECK_MSG(rc == 0 && kl, "%s", out);
    if (kl) {
        CHECK(fabs(cJSON_GetObjectItem(kl, "kld_mean")->valuedouble) < 1e-7);
        CHECK(cJSON_GetObjectItem(kl, "top1_agreement")->valuedouble == 1.0);
        CHECK(cJSON_GetObjectItem(kl, "base_topk")->valuedouble == 8);
        CHECK(cJSON_GetObjectItem(j, "tokens_scored")->valuedouble == 12 * 31);
    }
    cJSON_Delete(j);
    rc = lmp_test_sh(out, sizeof out, "%s ppl --help", lmp_test_bin());
    CHECK(rc == 0 && strstr(out, "--protocol"));
    /* bad input: exit 2, one line */
    CHECK_CLI_BAD("ppl", "");
    CHECK_CLI_BAD("ppl", S260K);
    CHECK_CLI_BAD("ppl", S260K " --tokens " EVAL_IDS " --text x.txt");
    snprintf(args, sizeof args, S260K " --text %s/empty.txt", d);
    CHECK_CLI_BAD("ppl", args);
    snprintf(args, sizeof args, S260K " --text %s/short.txt --ctx 256", d);
    CHECK_CLI_BAD("ppl", args);
    snprintf(args, sizeof args, S260K " --tokens %s/nonnum.ids", d);
    CHECK_CLI_BAD("ppl", args);
    snprintf(args, sizeof args, S260K " --tokens %s/big.ids", d);
    CHECK_CLI_BAD("ppl", args);
    snprintf(args, sizeof args, S260K " --tokens %s/empty.txt", d);
    CHECK_CLI_BAD("ppl", args);
    CHECK_CLI_BAD("ppl", S260K " --tokens " EVAL_IDS " --ctx 1024");
    CHECK_CLI_BAD("ppl", S260K " --tokens " EVAL_IDS " --ctx abc");
    CHECK_CLI_BAD("ppl", S260K " --tokens " EVAL_IDS " --ctx 12x");
    CHECK_CLI_BAD("ppl", S260K " --tokens " EVAL_IDS " --threads -1");
    CHECK_CLI_BAD("ppl", S260K " --tokens " EVAL_IDS " --chunks 0");
    CHECK_CLI_BAD("ppl", S260K " --tokens " EVAL_IDS " --protocol wikitext");
    CHECK_CLI_BAD("ppl", S260K " --tokens " EVAL_IDS " --bogus 1");
    CHECK_CLI_BAD("ppl", S260K " --tokens");
    CHECK_CLI_BAD("ppl", S260K " --tokens /nonexistent.ids");
    snprintf(args, sizeof args, S260K " --tokens " EVAL_IDS " --kl-base %s/zeros.bin", d);
    CHECK_CLI_BAD("ppl", args);
    snprintf(args, sizeof args, S260K " --tokens " EVAL_IDS " --ctx 128 --kl-base %s/b.logits", d);
    CHECK_CLI_BAD("ppl", args);
    snprintf(args, sizeof args, "%s/zeros.bin --tokens " EVAL_IDS, d);
    CHECK_CLI_BAD("ppl", args);
    /* a tokenizer whose vocabulary does not match the model */
    CHECK_CLI_BAD("ppl", "tests/bad/llama2c-tokmismatch/model.bin --text data/tinystories/eval.txt");
}
