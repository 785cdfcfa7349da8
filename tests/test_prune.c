/* prune/: budgets, slicing (a sliced model computes what the original computes with the removed
 * heads' o columns and channels' down columns zeroed), least-squares compensation (normal
 * equations), whole-model pruning (shapes, metadata, save/load, evaluation, determinism,
 * quality order at 20 %), and `lmpress prune` end to end and on bad input. */
#include "test.h"
#include "eval/eval.h"
#include "formats/model.h"
#include "prune/internal.h"
#include "prune/prune.h"
#include "runtime/runtime.h"
#include "test_rtmodel.h"

#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define S260K "models/stories260K.bin"
#define CALIB "data/tinystories/calib.txt"
#define EVAL "data/tinystories/eval.txt"

static struct lmp_model *load260k(void)
{
    struct lmp_model *m = NULL;
    struct lmp_err err = {{0}};
    enum lmp_status st = lmp_ckpt_load(S260K, NULL, &m, &err);
    CHECK_MSG(st == LMP_OK, "load: %s", err.msg);
    return m;
}

static int32_t *read_ids(const char *path, int64_t *n)
{
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    size_t cap = 1 << 18;
    int32_t *v = malloc(cap * sizeof *v);
    int x;
    *n = 0;
    while (v && fscanf(f, "%d", &x) == 1) {
        if ((size_t)*n == cap) v = realloc(v, (cap *= 2) * sizeof *v);
        if (v) v[(*n)++] = x;
    }
    fclose(f);
    return v;
}

TEST(prune_plan_budgets)
{
    struct lmp_model *m = load260k();
    REQUIRE(m);
    struct lmp_prune_layer_plan plan[5];
    struct lmp_prune_opts o;
    struct lmp_err err = {{0}};
    struct lmp_prune_sizes s;
    lmp_prune_layer_sizes(m, 0, &s);
    /* dim 64, 8 heads of 8 sharing 4 KV heads, ffn 172 */
    CHECK_EQ_INT(s.layer, 45440);
    CHECK_EQ_INT(s.attn, 12288);
    CHECK_EQ_INT(s.mlp, 33024);
    CHECK_EQ_INT(s.group, 3072);
    CHECK_EQ_INT(s.head, 1024);
    CHECK_EQ_INT(s.channel, 192);
    lmp_prune_opts_default(&o);
    REQUIRE(lmp_prune_plan(m, &o, plan, &err) == LMP_OK);
    for (int l = 0; l < 5; l++) {
        /* 20 % of 45440 = 9088: attention's share 2458 -> one group (3072); 6016 / 192 -> 31 */
        CHECK_EQ_INT(plan[l].rm_groups, 1);
        CHECK_EQ_INT(plan[l].rm_heads_per_group, 0);
        CHECK_EQ_INT(plan[l].rm_channels, 31);
    }
    o.per_family = 1; /* REFERENCE.md's setting: a quarter of the groups, 34 of 172 channels */
    REQUIRE(lmp_prune_plan(m, &o, plan, &err) == LMP_OK);
    CHECK_EQ_INT(plan[2].rm_groups, 1);
    CHECK_EQ_INT(plan[2].rm_channels, 34);
    o.per_family = 0;
    o.ratio = 0.3; /* 3686 of attention: one head per group (4096) is nearest */
    REQUIRE(lmp_prune_plan(m, &o, plan, &err) == LMP_OK);
    CHECK_EQ_INT(plan[0].rm_groups, 0);
    CHECK_EQ_INT(plan[0].rm_heads_per_group, 1);
    CHECK_EQ_INT(plan[0].rm_channels, 50); /* (13632 - 4096) / 192 = 49.7 */
    o.targets = LMP_PRUNE_MLP;
    o.ratio = 0.2;
    o.layer_first = 1, o.layer_last = 3;
    REQUIRE(lmp_prune_plan(m, &o, plan, &err) == LMP_OK);
    CHECK_EQ_INT(plan[0].rm_channels, 0);
    CHECK_EQ_INT(plan[1].rm_channels, 47);
    CHECK_EQ_INT(plan[1].rm_groups, 0);
    CHECK_EQ_INT(plan[4].rm_channels, 0);
    /* errors */
    o.layer_first = 0, o.layer_last = 5;
    CHECK(lmp_prune_plan(m, &o, plan, &err) == LMP_ERR_ARG);
    fprintf(stderr, "    %s\n", err.msg);
    o.layer_last = -1;
    o.ratio = 0.8; /* 36352 > 33024 MLP parameters */
    CHECK(lmp_prune_plan(m, &o, plan, &err) == LMP_ERR_ARG && strstr(err.msg, "every MLP channel"));
    fprintf(stderr, "    %s\n", err.msg);
    o.targets = LMP_PRUNE_HEADS;
    o.ratio = 0.3;
    CHECK(lmp_prune_plan(m, &o, plan, &err) == LMP_ERR_ARG && strstr(err.msg, "every attention head"));
    fprintf(stderr, "    %s\n", err.msg);
    o.ratio = 0.22; /* 9997: three groups and a head of the last (10240) is nearest */
    REQUIRE(lmp_prune_plan(m, &o, plan, &err) == LMP_OK);
    CHECK_EQ_INT(plan[0].rm_groups, 3);
    CHECK_EQ_INT(plan[0].rm_heads_per_group, 1);
    o.ratio = 1.0;
    CHECK(lmp_prune_plan(m, &o, plan, &err) == LMP_ERR_ARG);
    o.ratio = 0;
    CHECK(lmp_prune_plan(m, &o, plan, &err) == LMP_ERR_ARG);
    lmp_model_free(m);
}

/* A sliced layer computes what the full one computes with the removed heads' wo columns and
 * channels' w_down columns set to zero. */
TEST(prune_slice_equals_zeroing)
{
    static const struct tl ls[] = {{6, 2, 40}, {8, 4, 23}, {4, 4, 17}};
    for (int bias = 0; bias < 2; bias++) {
        struct lmp_model *a = build_model(32, 4, 61, 3, ls, bias, !bias, 10000.0f, 1e-5f, 48,
                                          NULL, 99 + bias);
        struct lmp_model *z = build_model(32, 4, 61, 3, ls, bias, !bias, 10000.0f, 1e-5f, 48,
                                          NULL, 99 + bias);
        REQUIRE(a && z);
        struct lmp_err err = {{0}};
        /* layer 0: drop group 1 (heads 3-5) and head 1 of group 0 -> keep 2 heads / 1 group;
         * layer 1: drop one head from every group (heads 0, 3, 5, 6); layer 2 untouched heads */
        unsigned char kh0[6] = {1, 0, 1, 0, 0, 0}, kh1[8] = {0, 1, 1, 0, 0, 1, 0, 1};
        unsigned char kc0[40], kc1[23];
        for (int i = 0; i < 40; i++) kc0[i] = i % 3 != 1;
        for (int i = 0; i < 23; i++) kc1[i] = i % 4 != 0;
        const unsigned char *kh[2] = {kh0, kh1}, *kc[2] = {kc0, kc1};
        for (int l = 0; l < 2; l++) {
            const struct lmp_layer_cfg *lc = &z->cfg.layer[l];
            int qd = lc->n_heads * 4;
            float *wo = z->layers[l].wo->data, *wd = z->layers[l].w_down->data;
            for (int r = 0; r < 32; r++) {
                for (int j = 0; j < qd; j++)
                    if (!kh[l][j / 4]) wo[r * qd + j] = 0;
                for (int j = 0; j < lc->ffn; j++)
                    if (!kc[l][j]) wd[r * lc->ffn + j] = 0;
            }
            REQUIRE(lmp_prune_layer_slice(a, l, kh[l], kc[l], &err) == LMP_OK);
        }
        REQUIRE(lmp_model_bind(a, "sliced", &err) == LMP_OK);
        CHECK_EQ_INT(a->cfg.layer[0].n_heads, 2);
        CHECK_EQ_INT(a->cfg.layer[0].n_kv_heads, 1);
        CHECK_EQ_INT(a->cfg.layer[0].ffn, 27);
        CHECK_EQ_INT(a->cfg.layer[1].n_heads, 4);
        CHECK_EQ_INT(a->cfg.layer[1].n_kv_heads, 4);
        CHECK_EQ_INT(a->cfg.layer[1].ffn, 17);
        CHECK_EQ_INT(a->cfg.layer[2].ffn, 17);
        int32_t tok[40];
        unsigned long long rs = 5;
        for (int i = 0; i < 40; i++) tok[i] = (int)((lmp_test_randf(&rs) + 1) * 30) % 61;
        float *la = malloc(sizeof(float) * 40 * 61), *lz = malloc(sizeof(float) * 40 * 61);
        struct lmp_rt_state *sa = NULL, *sz = NULL;
        REQUIRE(lmp_rt_state_create(a, 40, 40, NULL, &sa, &err) == LMP_OK);
        REQUIRE(lmp_rt_state_create(z, 40, 40, NULL, &sz, &err) == LMP_OK);
        REQUIRE(lmp_rt_forward(sa, tok, 40, 0, la, NULL, &err) == LMP_OK);
        REQUIRE(lmp_rt_forward(sz, tok, 40, 0, lz, NULL, &err) == LMP_OK);
        CHECK_CLOSE(bias ? "sliced vs zeroed (biases)" : "sliced vs zeroed", la, lz, 40 * 61, 1e-5,
                    1e-5);
        /* bad masks */
        unsigned char uneven[8] = {1, 1, 1, 0, 1, 1, 1, 1}, none[4] = {0, 0, 0, 0}, noch[17] = {0};
        CHECK(lmp_prune_layer_slice(z, 1, uneven, NULL, &err) == LMP_ERR_ARG); /* 8 heads / 4 */
        fprintf(stderr, "    %s\n", err.msg);
        CHECK(lmp_prune_layer_slice(a, 2, none, NULL, &err) == LMP_ERR_ARG);
        CHECK(lmp_prune_layer_slice(a, 2, NULL, noch, &err) == LMP_ERR_ARG);
        CHECK(lmp_prune_layer_slice(a, 3, NULL, NULL, &err) == LMP_ERR_ARG);
        lmp_rt_state_free(sa), lmp_rt_state_free(sz);
        free(la), free(lz);
        lmp_model_free(a), lmp_model_free(z);
    }
}

/* After compensation (no dampening) the kept weights satisfy the normal equations of
 * min || X W^T - X_K W_K'^T ||: X_K^T (X W^T - X_K W_K'^T) = 0. */
TEST(prune_compensation_solves_least_squares)
{
    const int n = 300, cols = 24, rows = 7;
    unsigned long long rs = 3;
    float *X = malloc(sizeof(float) * n * cols), *W = malloc(sizeof(float) * rows * cols);
    float *W0 = malloc(sizeof(float) * rows * cols);
    double *H = calloc((size_t)cols * cols, sizeof *H);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < cols; j++) /* correlated inputs */
            X[i * cols + j] = lmp_test_randf(&rs) + (j ? 0.5f * X[i * cols + j - 1] : 0);
    for (int k = 0; k < rows * cols; k++) W0[k] = W[k] = lmp_test_randf(&rs);
    for (int a = 0; a < cols; a++)
        for (int b = 0; b < cols; b++)
            for (int i = 0; i < n; i++) H[a * cols + b] += (double)X[i * cols + a] * X[i * cols + b] / n;
    unsigned char keep[24];
    for (int j = 0; j < cols; j++) keep[j] = j % 5 != 2;
    struct lmp_err err = {{0}};
    int retries = 0;
    REQUIRE(lmp_prune_compensate(W, rows, cols, H, keep, 0.0, &retries, &err) == LMP_OK);
    double worst = 0, err_before = 0, err_after = 0;
    for (int r = 0; r < rows; r++) {
        double *res = calloc((size_t)n, sizeof *res);
        for (int i = 0; i < n; i++) {
            double y = 0, yk = 0, y0 = 0;
            for (int j = 0; j < cols; j++) {
                y += (double)W0[r * cols + j] * X[i * cols + j];
                if (keep[j]) yk += (double)W[r * cols + j] * X[i * cols + j];
                if (keep[j]) y0 += (double)W0[r * cols + j] * X[i * cols + j];
            }
            res[i] = y - yk;
            err_after += res[i] * res[i];
            err_before += (y - y0) * (y - y0);
        }
        for (int a = 0; a < cols; a++) {
            if (!keep[a]) continue;
            double g = 0, s = 0;
            for (int i = 0; i < n; i++) g += X[i * cols + a] * res[i], s += fabs(X[i * cols + a] * res[i]);
            worst = fabs(g) / s > worst ? fabs(g) / s : worst;
        }
        free(res);
    }
    fprintf(stderr, "    output error: %.4g without, %.4g with compensation; normal equations %.2g\n",
            err_before, err_after, worst);
    CHECK(worst < 1e-5);
    CHECK(err_after < 0.8 * err_before);
    free(X), free(W), free(W0), free(H);
}

static double ppl_of(const struct lmp_model *m, const int32_t *ids, int64_t n, int chunks)
{
    struct lmp_eval_opts eo = {.protocol = LMP_EVAL_LLAMACPP, .ctx = 256, .max_chunks = chunks};
    struct lmp_eval_result r;
    struct lmp_err err = {{0}};
    enum lmp_status st = lmp_eval_ppl(m, ids, n, &eo, &r, &err);
    CHECK_MSG(st == LMP_OK, "ppl: %s", err.msg);
    return st ? NAN : r.ppl;
}

static struct lmp_model *pruned(const int32_t *calib, int64_t nc, enum lmp_prune_importance imp,
                                int comp, int threads, struct lmp_prune_report *rep)
{
    struct lmp_model *m = load260k();
    if (!m) return NULL;
    struct lmp_prune_opts o;
    lmp_prune_opts_default(&o);
    o.importance = imp;
    o.compensate = comp;
    o.n_threads = threads;
    o.nsamples = 8;
    o.stat_samples = 16;
    struct lmp_err err = {{0}};
    enum lmp_status st = lmp_prune_model(m, calib, nc, &o, rep, &err);
    CHECK_MSG(st == LMP_OK, "prune %s: %s", lmp_prune_importance_name(imp), err.msg);
    if (st) {
        lmp_model_free(m);
        return NULL;
    }
    return m;
}

/* At 20 %: Taylor (second order) and Hessian beat magnitude, compensation improves Hessian
 * (eval.txt, the llama.cpp protocol at ctx 256, the first 150 chunks). First-order Taylor is
 * printed, not checked: on this converged model the mean gradient is mostly noise of the
 * calibration draw, and whether it beats magnitude depends on the seed (docs/PRUNING.md). */
TEST(prune_quality_order_at_20_percent)
{
    int64_t nc = 0, ne = 0;
    int32_t *calib = read_ids("tests/data/stories260K/calib.ids", &nc);
    int32_t *ev = read_ids("tests/data/stories260K/eval.ids", &ne);
    REQUIRE(calib && ev && nc > 100000 && ne > 100000);
    static const struct {
        enum lmp_prune_importance imp;
        int comp;
    } runs[] = {{LMP_PRUNE_MAGNITUDE, 0}, {LMP_PRUNE_TAYLOR2, 0}, {LMP_PRUNE_HESSIAN, 0},
                {LMP_PRUNE_HESSIAN, 1}, {LMP_PRUNE_TAYLOR1, 0}};
    double ppl[5];
    for (int k = 0; k < 5; k++) {
        struct lmp_prune_report rep;
        struct lmp_model *m = pruned(calib, nc, runs[k].imp, runs[k].comp, 0, &rep);
        REQUIRE(m);
        ppl[k] = ppl_of(m, ev, ne, 150);
        fprintf(stderr, "    %-10s%s PPL %.3f (%lld -> %lld parameters)\n",
                lmp_prune_importance_name(runs[k].imp), runs[k].comp ? " + comp" : "       ", ppl[k],
                (long long)rep.params_before, (long long)rep.params_after);
        lmp_prune_report_free(&rep);
        lmp_model_free(m);
    }
    CHECK(ppl[1] < ppl[0]);
    CHECK(ppl[2] < ppl[0]);
    CHECK(ppl[3] < ppl[2]);
    free(calib), free(ev);
}

/* Shapes and metadata of a pruned model, save/load round trip, and the same result with 1 and
 * 2 threads. */
TEST(prune_model_shapes_save_load_threads)
{
    int64_t nc = 0;
    int32_t *calib = read_ids("tests/data/stories260K/calib.ids", &nc);
    REQUIRE(calib);
    struct lmp_prune_report r1, r2;
    struct lmp_model *a = pruned(calib, nc, LMP_PRUNE_TAYLOR2, 1, 1, &r1);
    struct lmp_model *b = pruned(calib, nc, LMP_PRUNE_TAYLOR2, 1, 2, &r2);
    REQUIRE(a && b);
    for (int l = 0; l < 5; l++) {
        CHECK_EQ_INT(a->cfg.layer[l].n_heads, 6);
        CHECK_EQ_INT(a->cfg.layer[l].n_kv_heads, 3);
        CHECK_EQ_INT(a->cfg.layer[l].ffn, 141);
        CHECK_EQ_INT(a->layers[l].wq->shape[0], 48);
        CHECK_EQ_INT(a->layers[l].wk->shape[0], 24);
        CHECK_EQ_INT(a->layers[l].wo->shape[1], 48);
        CHECK_EQ_INT(a->layers[l].w_down->shape[1], 141);
        CHECK_EQ_INT(a->layers[l].w_up->shape[0], 141);
        CHECK_EQ_INT(r1.before[l].ffn, 172);
    }
    /* 5 x (3072 + 31 x 192) removed */
    CHECK_EQ_INT(r1.params_before - r1.params_after, 5 * (3072 + 31 * 192));
    CHECK_EQ_INT(lmp_model_n_params(a), r1.params_after);
    CHECK_EQ_INT(r1.sel_params_before, 5 * 45440);
    for (int i = 0; i < a->n_tensors; i++) {
        CHECK(a->tensors[i].nbytes == b->tensors[i].nbytes);
        if (a->tensors[i].nbytes == b->tensors[i].nbytes)
            CHECK_MSG(!memcmp(a->tensors[i].data, b->tensors[i].data, a->tensors[i].nbytes),
                      "%s differs between 1 and 2 threads", a->tensors[i].name);
    }
    char path[600];
    snprintf(path, sizeof path, "%s/p.lmp", lmp_test_tmpdir());
    struct lmp_err err = {{0}};
    REQUIRE(lmp_ckpt_save_lmp(a, path, &err) == LMP_OK);
    struct lmp_model *c = NULL;
    REQUIRE(lmp_ckpt_load(path, NULL, &c, &err) == LMP_OK);
    CHECK_EQ_INT(lmp_model_n_params(c), r1.params_after);
    for (int l = 0; l < 5; l++) {
        CHECK_EQ_INT(c->cfg.layer[l].n_heads, 6);
        CHECK_EQ_INT(c->cfg.layer[l].ffn, 141);
    }
    int32_t tok[64];
    for (int i = 0; i < 64; i++) tok[i] = calib[1000 + i];
    tok[0] = 1;
    float *la = malloc(sizeof(float) * 64 * 512), *lc = malloc(sizeof(float) * 64 * 512);
    struct lmp_rt_state *sa = NULL, *sc = NULL;
    REQUIRE(lmp_rt_state_create(a, 64, 64, NULL, &sa, &err) == LMP_OK);
    REQUIRE(lmp_rt_state_create(c, 64, 64, NULL, &sc, &err) == LMP_OK);
    REQUIRE(lmp_rt_forward(sa, tok, 64, 0, la, NULL, &err) == LMP_OK);
    REQUIRE(lmp_rt_forward(sc, tok, 64, 0, lc, NULL, &err) == LMP_OK);
    CHECK_CLOSE("saved and reloaded logits", lc, la, 64 * 512, 0, 0);
    lmp_rt_state_free(sa), lmp_rt_state_free(sc);
    free(la), free(lc), free(calib);
    lmp_prune_report_free(&r1), lmp_prune_report_free(&r2);
    lmp_model_free(a), lmp_model_free(b), lmp_model_free(c);
}

TEST(prune_global_and_obs)
{
    int64_t nc = 0;
    int32_t *calib = read_ids("tests/data/stories260K/calib.ids", &nc);
    REQUIRE(calib);
    for (int k = 0; k < 3; k++) {
        struct lmp_model *m = load260k();
        REQUIRE(m);
        struct lmp_prune_opts o;
        lmp_prune_opts_default(&o);
        o.importance = k ? LMP_PRUNE_OBS : LMP_PRUNE_TAYLOR1;
        o.global = k < 2;
        o.compensate = k > 0;
        o.ratio = k == 2 ? 0.3 : 0.2;
        o.nsamples = 4;
        o.stat_samples = 8;
        o.seqlen = 256;
        struct lmp_err err = {{0}};
        struct lmp_prune_report rep;
        REQUIRE(lmp_prune_model(m, calib, nc, &o, &rep, &err) == LMP_OK);
        int ch = 0, gr = 0;
        for (int l = 0; l < 5; l++) {
            ch += 172 - m->cfg.layer[l].ffn;
            gr += 4 - m->cfg.layer[l].n_kv_heads;
            if (k < 2) CHECK(m->cfg.layer[l].n_heads == 2 * m->cfg.layer[l].n_kv_heads);
            fprintf(stderr, "    %s%s layer %d: heads %d/%d, ffn %d\n", k ? "obs" : "taylor1",
                    o.global ? " global" : "", l, m->cfg.layer[l].n_heads,
                    m->cfg.layer[l].n_kv_heads, m->cfg.layer[l].ffn);
        }
        if (k < 2) { /* the per-layer plan's totals, spread over layers by rank */
            CHECK_EQ_INT(ch, 5 * 31);
            CHECK_EQ_INT(gr, 5);
        } else { /* greedy OBS per layer at 0.3: one head of every group, 50 channels */
            for (int l = 0; l < 5; l++) {
                CHECK_EQ_INT(m->cfg.layer[l].n_heads, 4);
                CHECK_EQ_INT(m->cfg.layer[l].n_kv_heads, 4);
                CHECK_EQ_INT(m->cfg.layer[l].ffn, 122);
            }
        }
        lmp_prune_report_free(&rep);
        lmp_model_free(m);
    }
    free(calib);
}

static long long file_size(const char *p)
{
    struct stat sb;
    return stat(p, &sb) ? -1 : (long long)sb.st_size;
}

TEST(prune_cli_end_to_end)
{
    const char *bin = lmp_test_bin(), *d = lmp_test_tmpdir();
    static char out[16384];
    int rc = lmp_test_sh(out, sizeof out,
                         "%s prune " S260K " %s/p.lmp --ratio 0.3 --importance taylor1 "
                         "--compensate --calib " CALIB " --nsamples 4 --stat-samples 8 "
                         "--seqlen 256 --layers 1-3",
                         bin, d);
    fprintf(stderr, "%s", out);
    REQUIRE(rc == 0);
    CHECK(strstr(out, "layer 1: heads 8/4 -> 4/4, ffn 172 -> 122"));
    CHECK(strstr(out, "layer 0") == NULL);
    CHECK(strstr(out, "whole model"));
    /* 3 layers x (4096 + 50 x 192) of 260,160 (the model's own count) */
    char want[128];
    snprintf(want, sizeof want, "removed %d of %d parameters of layers 1-3", 3 * (4096 + 50 * 192),
             3 * 45440);
    CHECK_MSG(strstr(out, want), "expected '%s'", want);
    rc = lmp_test_sh(out, sizeof out, "%s inspect %s/p.lmp", bin, d);
    fprintf(stderr, "%s", out);
    CHECK(rc == 0);
    rc = lmp_test_sh(out, sizeof out, "%s run %s/p.lmp -n 40 --temp 0 --seed 1", bin, d);
    CHECK(rc == 0);
    rc = lmp_test_sh(out, sizeof out, "%s ppl %s/p.lmp --text " EVAL " --ctx 256 --chunks 20",
                     bin, d);
    fprintf(stderr, "%s", out);
    CHECK(rc == 0 && strstr(out, "PPL = "));
    /* smaller on disk: the full model converted is the baseline */
    rc = lmp_test_sh(out, sizeof out, "%s convert " S260K " %s/full.lmp", bin, d);
    CHECK(rc == 0);
    char p1[600], p2[600];
    snprintf(p1, sizeof p1, "%s/p.lmp", d);
    snprintf(p2, sizeof p2, "%s/full.lmp", d);
    long long s1 = file_size(p1), s2 = file_size(p2);
    fprintf(stderr, "    sizes: pruned %lld, full %lld bytes\n", s1, s2);
    CHECK(s1 > 0 && s2 > 0 && s2 - s1 >= 4LL * 3 * (4096 + 50 * 192));
}

TEST(prune_cli_bad_input_exit_2)
{
    const char *bin = lmp_test_bin(), *d = lmp_test_tmpdir();
    static char out[4096];
    static const char *const bad[] = {
        "--ratio 0 --importance magnitude",
        "--ratio 1 --importance magnitude",
        "--ratio 1.5 --importance magnitude",
        "--ratio -0.1 --importance magnitude",
        "--ratio abc --importance magnitude",
        "--importance magnitude --layers 2-7",
        "--importance magnitude --layers 3-1",
        "--importance magnitude --target heads --ratio 0.3",
        "--importance magnitude --target mlp --ratio 0.9",
        "--importance magnitude --target nothing",
        "--importance psychic",
        "--importance taylor1", /* no --calib */
        "--importance hessian --calib /nonexistent/calib.txt",
        "--importance taylor1 --calib " CALIB " --seqlen 600",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = lmp_test_sh(out, sizeof out, "%s prune " S260K " %s/bad.lmp %s", bin, d, bad[i]);
        int lines = 0;
        for (const char *p = out; *p; p++) lines += *p == '\n';
        CHECK_MSG(rc == 2, "'%s': exit %d, expected 2", bad[i], rc);
        CHECK_MSG(lines == 1, "'%s': %d lines of output, expected one", bad[i], lines);
        fprintf(stderr, "    %-60s -> %s", bad[i], out);
        char p[600];
        snprintf(p, sizeof p, "%s/bad.lmp", d);
        CHECK_MSG(access(p, F_OK) != 0, "'%s' left an output file", bad[i]);
    }
}
