/* distill/: the KL loss against finite differences and its top-k / temperature cases, the
 * loss and its gradients through the student against torch autograd in float64
 * (tests/gen_distill_fixture.py: pruned student, full and top-k KL, low-rank adapters), the
 * loss going down over a few steps (pruned and quantized students), the grid merge keeping
 * exactly the trained model, interrupt + resume bit for bit (library and CLI), thread-count
 * independence, and `lmpress distill` on bad input. */
#include "test.h"
#include "distill/distill.h"
#include "distill/internal.h"
#include "formats/model.h"
#include "prune/prune.h"
#include "quantize/quant_model.h"
#include "runtime/runtime.h"

#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define S260K "models/stories260K.bin"
#define CALIB "data/tinystories/calib.txt"
#define FIXDIR "tests/data/distill/"

static struct lmp_model *load260k(void)
{
    struct lmp_model *m = NULL;
    struct lmp_err err = {{0}};
    enum lmp_status st = lmp_ckpt_load(S260K, NULL, &m, &err);
    CHECK_MSG(st == LMP_OK, "load: %s", err.msg);
    return m;
}

/* The fixture's student: in layer l KV group l % n_kv and the MLP channels c with
 * (c + l) % 5 == 0 removed. */
static struct lmp_model *pruned260k(void)
{
    struct lmp_model *m = load260k();
    if (!m) return NULL;
    struct lmp_err err = {{0}};
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const struct lmp_layer_cfg lc = m->cfg.layer[l];
        unsigned char kh[64], kc[1024];
        for (int h = 0; h < lc.n_heads; h++) kh[h] = h / (lc.n_heads / lc.n_kv_heads) != l % lc.n_kv_heads;
        for (int c = 0; c < lc.ffn; c++) kc[c] = (c + l) % 5 != 0;
        enum lmp_status st = lmp_prune_layer_slice(m, l, kh, kc, &err);
        CHECK_MSG(st == LMP_OK, "slice: %s", err.msg);
    }
    enum lmp_status st = lmp_model_bind(m, "pruned", &err);
    CHECK_MSG(st == LMP_OK, "bind: %s", err.msg);
    return st ? (lmp_model_free(m), NULL) : m;
}

/* stories260K with 3-bit RTN weights in groups of 32 (packed). */
static struct lmp_model *quant260k(void)
{
    struct lmp_model *m = load260k();
    if (!m) return NULL;
    struct lmp_quant_model_opts o;
    lmp_quant_model_opts_default(&o);
    o.method = LMP_QUANT_RTN;
    o.q.bits = 3;
    o.q.group = 32;
    struct lmp_err err = {{0}};
    enum lmp_status st = lmp_quant_model(m, NULL, 0, &o, NULL, &err);
    CHECK_MSG(st == LMP_OK, "quantize: %s", err.msg);
    return st ? (lmp_model_free(m), NULL) : m;
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

static void small_opts(struct lmp_distill_opts *o)
{
    lmp_distill_opts_default(o);
    o->seqlen = 32;
    o->batch = 4;
    o->steps = 6;
    o->lr = 3e-3;
    o->n_threads = 2;
    o->ckpt_every = 0;
}

/* ---- the loss ------------------------------------------------------------------------------ */

TEST(distill_kl_finite_differences)
{
    enum { LEN = 3, V = 37 };
    unsigned long long rs = 99;
    float zt[LEN * V], zs[LEN * V], d[LEN * V], zp[LEN * V];
    void *scratch = malloc(lmp_distill_kl_scratch(V, V));
    for (int i = 0; i < LEN * V; i++) zt[i] = 3.0f * lmp_test_randf(&rs), zs[i] = 3.0f * lmp_test_randf(&rs);
    const struct { double T; int k; } cases[] = {{1, 0}, {2.5, 0}, {1, 5}, {0.7, 8}, {1.5, 36}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        double L = lmp_distill_kl(zt, zs, LEN, V, cases[c].T, cases[c].k, 1.0f, d, scratch);
        CHECK_MSG(L > 0, "case %zu: loss %g", c, L);
        double worst = 0;
        for (int i = 0; i < LEN * V; i++) {
            const float h = 1e-2f;
            memcpy(zp, zs, sizeof zp);
            zp[i] = zs[i] + h;
            double lp = lmp_distill_kl(zt, zp, LEN, V, cases[c].T, cases[c].k, 1.0f, NULL, scratch);
            zp[i] = zs[i] - h;
            double lm = lmp_distill_kl(zt, zp, LEN, V, cases[c].T, cases[c].k, 1.0f, NULL, scratch);
            double fd = (lp - lm) / (2.0 * ((double)(zs[i] + h) - (double)zs[i]));
            double e = fabs(fd - d[i]);
            worst = e > worst ? e : worst;
            CHECK_MSG(e <= 2e-4 + 2e-3 * fabs(fd), "case %zu (T %g, k %d) logit %d: %g vs fd %g", c,
                      cases[c].T, cases[c].k, i, (double)d[i], fd);
        }
        fprintf(stderr, "    T %g top-%d: loss %.5f, max |grad - fd| %.2g\n", cases[c].T,
                cases[c].k, L, worst);
    }
    /* k >= vocab is the full loss; identical distributions give 0 */
    float d2[LEN * V];
    double a = lmp_distill_kl(zt, zs, LEN, V, 1.3, 0, 0.5f, d, scratch);
    double b = lmp_distill_kl(zt, zs, LEN, V, 1.3, V, 0.5f, d2, scratch);
    CHECK(a == b && !memcmp(d, d2, sizeof d));
    double z = lmp_distill_kl(zt, zt, LEN, V, 1.0, 0, 1.0f, d, scratch);
    CHECK_MSG(fabs(z) < 1e-12, "KL(p||p) = %g", z);
    free(scratch);
}

/* Loss and gradients of the fixture's case against torch. */
static void check_case(const char *name, enum lmp_distill_mode mode, double T, int topk)
{
    struct lmp_model *t = load260k(), *s = pruned260k();
    REQUIRE(t && s);
    int32_t *tok = NULL;
    float *ref = NULL, *loss_ref = NULL;
    int is_int, nd;
    long shape[4];
    char path[256];
    REQUIRE(lmp_test_read_npy(FIXDIR "tokens.npy", (void **)&tok, &is_int, shape, &nd) == 80);
    REQUIRE(is_int && shape[0] == 2 && shape[1] == 40);
    snprintf(path, sizeof path, FIXDIR "grads_%s.npy", name);
    long n_ref = lmp_test_read_npy(path, (void **)&ref, &is_int, shape, &nd);
    REQUIRE(n_ref > 0);
    snprintf(path, sizeof path, FIXDIR "loss_%s.npy", name);
    REQUIRE(lmp_test_read_npy(path, (void **)&loss_ref, &is_int, shape, &nd) == 1);

    struct lmp_distill_opts o;
    small_opts(&o);
    o.seqlen = 40;
    o.batch = 2;
    o.mode = mode;
    o.rank = 4;
    o.temperature = T;
    o.topk = topk;
    struct lmp_err err = {{0}};
    struct lmp_distill_ctx *c = NULL;
    REQUIRE(lmp_distill_ctx_create(t, s, &o, &c, &err) == LMP_OK);
    /* the arrays in the fixture's order */
    const float *arr[256];
    long len[256];
    int na = 0;
    const char *lin[] = {LMP_N_WQ, LMP_N_WK, LMP_N_WV, LMP_N_WO, LMP_N_GATE, LMP_N_UP, LMP_N_DOWN};
    if (mode == LMP_DISTILL_LORA) {
        REQUIRE(c->nad == 7 * s->cfg.n_layers);
        for (int l = 0; l < s->cfg.n_layers; l++)
            for (int kind = 0; kind < 7; kind++) {
                char nm[LMP_NAME_MAX];
                snprintf(nm, sizeof nm, "blk.%d.%s", l, lin[kind]);
                struct lmp_distill_adapter *a = NULL;
                for (int i = 0; i < c->nad; i++)
                    if (!strcmp(c->ad[i].t->name, nm)) a = &c->ad[i];
                REQUIRE(a && a->rank == 4);
                const int cc = 7 * l + kind;
                for (int k = 0; k < 4; k++)
                    for (int j = 0; j < a->cols; j++)
                        a->A[k * a->cols + j] = (float)(0.05 * sin(0.7 * k + 0.3 * j + 1.3 * cc));
                for (int i = 0; i < a->rows; i++)
                    for (int k = 0; k < 4; k++)
                        a->B[i * 4 + k] = (float)(0.05 * cos(0.5 * i + 1.1 * k + 0.7 * cc));
                arr[na] = a->dA, len[na++] = 4L * a->cols;
                arr[na] = a->dB, len[na++] = 4L * a->rows;
            }
        for (int l = 0; l < s->cfg.n_layers; l++) {
            arr[na] = lmp_rt_grads_of(c->g, s, s->layers[l].attn_norm), len[na++] = s->cfg.dim;
            arr[na] = lmp_rt_grads_of(c->g, s, s->layers[l].ffn_norm), len[na++] = s->cfg.dim;
        }
    } else {
        arr[na] = lmp_rt_grads_of(c->g, s, s->tok_embd), len[na++] = (long)lmp_tensor_nelem(s->tok_embd);
        for (int l = 0; l < s->cfg.n_layers; l++) {
            const struct lmp_layer *L = &s->layers[l];
            const struct lmp_tensor *ts[] = {L->attn_norm, L->wq, L->wk, L->wv, L->wo,
                                             L->ffn_norm, L->w_gate, L->w_up, L->w_down};
            for (int k = 0; k < 9; k++)
                arr[na] = lmp_rt_grads_of(c->g, s, ts[k]), len[na++] = (long)lmp_tensor_nelem(ts[k]);
        }
    }
    arr[na] = lmp_rt_grads_of(c->g, s, s->out_norm), len[na++] = s->cfg.dim;
    double loss = 0;
    REQUIRE(lmp_distill_ctx_grad(c, tok, 2, 40, &loss, &err) == LMP_OK);
    CHECK_MSG(fabs(loss - loss_ref[0]) <= 2e-5 * loss_ref[0], "%s: loss %.7f, torch %.7f", name,
              loss, (double)loss_ref[0]);
    fprintf(stderr, "    %s: loss %.6f, torch %.6f\n", name, loss, (double)loss_ref[0]);
    long at = 0;
    double worst = 0;
    for (int i = 0; i < na; i++) {
        REQUIRE(arr[i]);
        long ne = len[i], step = ne > 1024 ? 17 : 1, k = 0;
        float *got = malloc(sizeof(float) * (ne / step + 1));
        for (long e = 0; e < ne; e += step) got[k++] = arr[i][e];
        REQUIRE(at + k <= n_ref);
        double num = 0, den = 0, mx = 0;
        for (long e = 0; e < k; e++) {
            double df = (double)got[e] - ref[at + e];
            num += df * df;
            den += (double)ref[at + e] * ref[at + e];
            mx = fabs(ref[at + e]) > mx ? fabs(ref[at + e]) : mx;
        }
        double rel = den > 0 ? sqrt(num / den) : sqrt(num);
        worst = rel > worst ? rel : worst;
        CHECK_MSG(rel <= 1e-4, "%s array %d: relative error %.3g (norm)", name, i, rel);
        long bad = 0;
        for (long e = 0; e < k; e++)
            bad += !(fabs((double)got[e] - ref[at + e]) <= 1e-4 * mx + 1e-3 * fabs(ref[at + e]));
        CHECK_MSG(!bad, "%s array %d: %ld values outside tolerance", name, i, bad);
        at += k;
        free(got);
    }
    CHECK_EQ_INT(at, n_ref);
    fprintf(stderr, "    %s: %d arrays, %ld values, worst relative error %.2g\n", name, na, at,
            worst);
    lmp_distill_ctx_free(c);
    free(tok), free(ref), free(loss_ref);
    lmp_model_free(t);
    lmp_model_free(s);
}

TEST(distill_gradients_match_torch_full)
{
    check_case("full", LMP_DISTILL_FULL, 1.0, 0);
}

TEST(distill_gradients_match_torch_topk_temperature)
{
    check_case("topk", LMP_DISTILL_FULL, 2.0, 10);
}

TEST(distill_gradients_match_torch_lora)
{
    check_case("lora", LMP_DISTILL_LORA, 1.0, 0);
}

/* ---- training ------------------------------------------------------------------------------ */

struct losses {
    double v[64];
    int n;
};
static int record(void *user, const struct lmp_distill_progress *p)
{
    struct losses *l = user;
    if (l->n < 64) l->v[l->n++] = p->loss;
    return 0;
}

/* One fixed batch (the text is exactly one sequence long): the loss must fall. */
TEST(distill_loss_decreases_tiny_batch)
{
    int64_t n_ids = 0;
    int32_t *ids = read_ids("tests/data/stories260K/calib.ids", &n_ids);
    REQUIRE(ids && n_ids > 1000);
    for (int k = 0; k < 2; k++) {
        struct lmp_model *t = load260k(), *s = k ? quant260k() : pruned260k();
        REQUIRE(t && s);
        struct lmp_distill_opts o;
        small_opts(&o);
        o.steps = 8;
        o.warmup = 0;
        o.lr = k ? 1e-2 : 3e-3;
        struct losses l = {{0}, 0};
        o.progress = record;
        o.progress_user = &l;
        struct lmp_distill_report rep;
        struct lmp_err err = {{0}};
        REQUIRE(lmp_distill(t, s, ids + 500, o.seqlen, &o, &rep, &err) == LMP_OK);
        CHECK_EQ_INT(rep.mode, k ? LMP_DISTILL_LORA : LMP_DISTILL_FULL);
        CHECK_EQ_INT(l.n, 8);
        int down = 0;
        for (int i = 1; i < l.n; i++) down += l.v[i] < l.v[i - 1];
        fprintf(stderr, "    %s: loss %.4f -> %.4f (%d of 7 steps down)\n", k ? "3-bit" : "pruned",
                l.v[0], l.v[l.n - 1], down);
        CHECK_MSG(l.v[l.n - 1] < (k ? 0.8 : 0.6) * l.v[0], "loss %g -> %g", l.v[0], l.v[l.n - 1]);
        CHECK(down >= 5);
        lmp_model_free(t);
        lmp_model_free(s);
    }
    free(ids);
}

/* With the grid merge the file holds exactly the model the last step trained. */
TEST(distill_grid_merge_is_exact)
{
    struct lmp_model *t = load260k(), *s = quant260k();
    REQUIRE(t && s);
    int64_t n_ids = 0;
    int32_t *ids = read_ids("tests/data/stories260K/calib.ids", &n_ids);
    REQUIRE(ids);
    struct lmp_distill_opts o;
    small_opts(&o);
    struct lmp_err err = {{0}};
    struct lmp_distill_ctx *c = NULL;
    REQUIRE(lmp_distill_ctx_create(t, s, &o, &c, &err) == LMP_OK);
    unsigned long long rs = 5;
    for (int i = 0; i < c->nad; i++) /* adapters large enough to move codes */
        for (long e = 0; e < (long)c->ad[i].rows * c->ad[i].rank; e++)
            c->ad[i].B[e] = 0.3f * lmp_test_randf(&rs);
    int32_t tok[4 * 32];
    lmp_distill_batch(ids, n_ids, 32, 4, 7, 0, 1, tok);
    double l1 = 0, l2 = 0, l0 = 0;
    REQUIRE(lmp_distill_ctx_grad(c, tok, 4, 32, &l1, &err) == LMP_OK);
    REQUIRE(lmp_distill_ctx_merge(c, &err) == LMP_OK);
    lmp_distill_ctx_free(c);
    c = NULL;
    REQUIRE(lmp_distill_ctx_create(t, s, &o, &c, &err) == LMP_OK); /* B = 0: the packed codes */
    REQUIRE(lmp_distill_ctx_grad(c, tok, 4, 32, &l2, &err) == LMP_OK);
    lmp_distill_ctx_free(c);
    struct lmp_model *q = quant260k();
    REQUIRE(q);
    REQUIRE(lmp_distill_ctx_create(t, q, &o, &c, &err) == LMP_OK);
    REQUIRE(lmp_distill_ctx_grad(c, tok, 4, 32, &l0, &err) == LMP_OK);
    lmp_distill_ctx_free(c);
    fprintf(stderr, "    loss: unmerged %.6f, merged %.6f, before the adapters %.6f\n", l1, l2, l0);
    CHECK_MSG(l1 == l2, "merged model's loss %.9g differs from the trained forward's %.9g", l2, l1);
    CHECK(l1 != l0); /* the adapters did move codes */
    free(ids);
    lmp_model_free(t);
    lmp_model_free(s);
    lmp_model_free(q);
}

static int tensors_equal(const struct lmp_model *a, const struct lmp_model *b)
{
    if (a->n_tensors != b->n_tensors) return 0;
    for (int i = 0; i < a->n_tensors; i++) {
        const struct lmp_tensor *x = &a->tensors[i], *y = &b->tensors[i];
        if (x->type != y->type || x->nbytes != y->nbytes || memcmp(x->data, y->data, x->nbytes))
            return 0;
    }
    return 1;
}

/* 4 steps in one go (2 threads) == 2 steps, checkpoint, a fresh student resuming for 2 more
 * (1 thread). */
TEST(distill_resume_bit_identical)
{
    int64_t n_ids = 0;
    int32_t *ids = read_ids("tests/data/stories260K/calib.ids", &n_ids);
    REQUIRE(ids);
    char ck[512];
    snprintf(ck, sizeof ck, "%s/run.ckpt", lmp_test_tmpdir());
    for (int k = 0; k < 3; k++) { /* pruned/full, 3-bit/grid, 3-bit/f32 merge */
        struct lmp_model *t = load260k();
        struct lmp_model *a = k ? quant260k() : pruned260k(), *b = k ? quant260k() : pruned260k();
        struct lmp_model *c2 = k ? quant260k() : pruned260k();
        REQUIRE(t && a && b && c2);
        struct lmp_distill_opts o;
        small_opts(&o);
        o.merge = k == 2 ? LMP_DISTILL_MERGE_F32 : LMP_DISTILL_MERGE_GRID;
        o.steps = 4;
        o.warmup = 1;
        o.seqlen = 24;
        o.batch = 3;
        struct lmp_err err = {{0}};
        struct lmp_distill_report rep;
        o.n_threads = 2; /* and a thread count that differs from the resumed run's */
        REQUIRE(lmp_distill(t, a, ids, n_ids, &o, &rep, &err) == LMP_OK);
        CHECK(!rep.stopped && rep.steps_done == 4);
        o.n_threads = 1;
        o.ckpt_path = ck;
        o.stop_at = 2;
        remove(ck);
        REQUIRE(lmp_distill(t, b, ids, n_ids, &o, &rep, &err) == LMP_OK);
        CHECK(rep.stopped && rep.steps_done == 2 && rep.n_ckpt == 1);
        CHECK(!tensors_equal(a, b));
        o.stop_at = 0;
        o.resume = 1;
        enum lmp_status st = lmp_distill(t, c2, ids, n_ids, &o, &rep, &err);
        CHECK_MSG(st == LMP_OK, "resume: %s", err.msg);
        CHECK(rep.resumed && rep.first_step == 2 && rep.steps_done == 4 && !rep.stopped);
        CHECK_MSG(tensors_equal(a, c2), "case %d: resumed run differs from the uninterrupted one", k);
        /* a checkpoint of other settings is refused */
        o.lr *= 2;
        struct lmp_model *d = k ? quant260k() : pruned260k();
        st = lmp_distill(t, d, ids, n_ids, &o, &rep, &err);
        CHECK_MSG(st == LMP_ERR_ARG && strstr(err.msg, "another run"), "%d: %s", (int)st, err.msg);
        lmp_model_free(d);
        lmp_model_free(t), lmp_model_free(a), lmp_model_free(b), lmp_model_free(c2);
    }
    free(ids);
}

TEST(distill_check_errors)
{
    struct lmp_model *t = load260k(), *q = quant260k();
    REQUIRE(t && q);
    struct lmp_distill_opts o;
    small_opts(&o);
    struct lmp_err err = {{0}};
    CHECK(lmp_distill_check(t, q, 1000, &o, &err) == LMP_OK);
    CHECK(lmp_distill_check(t, q, 31, &o, &err) == LMP_ERR_ARG && strstr(err.msg, "shorter"));
    o.lr = 0;
    CHECK(lmp_distill_check(t, q, 1000, &o, &err) == LMP_ERR_ARG && strstr(err.msg, "learning rate"));
    o.lr = -1e-3;
    CHECK(lmp_distill_check(t, q, 1000, &o, &err) == LMP_ERR_ARG);
    o.lr = 1e-3;
    o.temperature = 0;
    CHECK(lmp_distill_check(t, q, 1000, &o, &err) == LMP_ERR_ARG);
    o.temperature = 1;
    o.mode = LMP_DISTILL_FULL;
    CHECK(lmp_distill_check(t, q, 1000, &o, &err) == LMP_ERR_UNSUPPORTED);
    o.mode = LMP_DISTILL_AUTO;
    o.seqlen = 100000;
    CHECK(lmp_distill_check(t, q, 1000000, &o, &err) == LMP_ERR_ARG);
    o.seqlen = 32;
    struct lmp_model *tiny = NULL;
    REQUIRE(lmp_ckpt_load("tests/data/tiny/tiny.lmp", NULL, &tiny, &err) == LMP_OK);
    o.seqlen = 16;
    CHECK(lmp_distill_check(t, tiny, 1000, &o, &err) == LMP_ERR_ARG && strstr(err.msg, "vocabulary"));
    fprintf(stderr, "    %s\n", err.msg);
    /* the data order is a pure function of (seed, step) */
    int32_t ids[300], a[2 * 16], b[2 * 16];
    for (int i = 0; i < 300; i++) ids[i] = i;
    lmp_distill_batch(ids, 300, 16, 2, 5, 9, 1, a);
    lmp_distill_batch(ids, 300, 16, 2, 5, 9, 1, b);
    CHECK(!memcmp(a, b, sizeof a) && a[0] == 1 && a[2] == a[1] + 1);
    lmp_distill_batch(ids, 300, 16, 2, 5, 10, 1, b);
    CHECK(memcmp(a, b, sizeof a) != 0);
    lmp_distill_batch(ids, 16, 16, 2, 5, 10, -1, b); /* exactly one sequence: start 0 */
    CHECK(b[0] == 0 && b[15] == 15 && b[16] == 0);
    /* schedule: warmup to lr, cosine to min_lr */
    o.steps = 100, o.warmup = 10, o.lr = 1e-3, o.min_lr = 0.1;
    CHECK(fabs(lmp_distill_lr(&o, 0) - 1e-4) < 1e-12 && fabs(lmp_distill_lr(&o, 9) - 1e-3) < 1e-12);
    CHECK(fabs(lmp_distill_lr(&o, 10) - 1e-3) < 1e-12 && fabs(lmp_distill_lr(&o, 99) - 1e-4) < 1e-12);
    CHECK(lmp_distill_lr(&o, 50) < 1e-3 && lmp_distill_lr(&o, 50) > 1e-4);
    lmp_model_free(tiny);
    lmp_model_free(t);
    lmp_model_free(q);
}

/* ---- the CLI ------------------------------------------------------------------------------- */

static int file_exists(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0;
}

#define DARGS "--data " CALIB " --seqlen 32 --batch 4 --steps 6 --lr 3e-3"

TEST(distill_cli_resume_equals_uninterrupted)
{
    const char *bin = lmp_test_bin(), *d = lmp_test_tmpdir();
    char out[8192];
    int rc = lmp_test_sh(out, sizeof out, "%s prune " S260K " %s/p.lmp --ratio 0.2 --importance magnitude", bin, d);
    REQUIRE(rc == 0);
    rc = lmp_test_sh(out, sizeof out, "%s distill --teacher " S260K " --student %s/p.lmp --out %s/a.lmp " DARGS " --threads 1", bin, d, d);
    CHECK_MSG(rc == 0, "%s", out);
    CHECK_MSG(strstr(out, "loss") && strstr(out, "a.lmp"), "%s", out);
    char p[600];
    snprintf(p, sizeof p, "%s/a.lmp.ckpt", d);
    CHECK(!file_exists(p));
    rc = lmp_test_sh(out, sizeof out, "%s distill --teacher " S260K " --student %s/p.lmp --out %s/b.lmp " DARGS " --stop-at 4", bin, d, d);
    CHECK_MSG(rc == 0 && strstr(out, "--resume"), "%s", out);
    snprintf(p, sizeof p, "%s/b.lmp", d);
    CHECK(!file_exists(p));
    snprintf(p, sizeof p, "%s/b.lmp.ckpt", d);
    CHECK(file_exists(p));
    rc = lmp_test_sh(out, sizeof out, "%s distill --teacher " S260K " --student %s/p.lmp --out %s/b.lmp " DARGS " --resume", bin, d, d);
    CHECK_MSG(rc == 0 && strstr(out, "from step 4"), "%s", out);
    CHECK(!file_exists(p)); /* removed after success */
    rc = lmp_test_sh(out, sizeof out, "cmp %s/a.lmp %s/b.lmp", d, d);
    CHECK_MSG(rc == 0, "interrupted + resumed output differs: %s", out);
    /* --resume without a checkpoint: bad input */
    rc = lmp_test_sh(out, sizeof out, "%s distill --teacher " S260K " --student %s/p.lmp --out %s/c.lmp " DARGS " --resume", bin, d, d);
    CHECK_MSG(rc == 2 && strstr(out, "checkpoint"), "rc %d: %s", rc, out);
    /* a damaged checkpoint: bad input */
    rc = lmp_test_sh(out, sizeof out, "%s distill --teacher " S260K " --student %s/p.lmp --out %s/c.lmp " DARGS " --stop-at 2 && "
                     "printf 'x' | dd of=%s/c.lmp.ckpt bs=1 seek=200 conv=notrunc 2>/dev/null && "
                     "%s distill --teacher " S260K " --student %s/p.lmp --out %s/c.lmp " DARGS " --resume",
                     bin, d, d, d, bin, d, d);
    CHECK_MSG(rc == 2 && strstr(out, "checksum"), "rc %d: %s", rc, out);
    snprintf(p, sizeof p, "%s/c.lmp", d);
    CHECK(!file_exists(p));
}

TEST(distill_cli_bad_input)
{
    const char *bin = lmp_test_bin(), *d = lmp_test_tmpdir();
    char out[4096], shortf[600];
    snprintf(shortf, sizeof shortf, "%s/short.txt", d);
    FILE *f = fopen(shortf, "w");
    REQUIRE(f);
    fputs("Once upon a time there was a cat.\n", f);
    fclose(f);
    struct {
        const char *student, *args, *expect;
    } bad[] = {
        {"tests/data/tiny/tiny.lmp", "--data " CALIB " --seqlen 16 --steps 2", "vocabulary"},
        {S260K, "--data SHORT --seqlen 64 --steps 2", "shorter than one sequence"},
        {S260K, "--data " CALIB " --seqlen 32 --steps 2 --lr 0", "learning rate"},
        {S260K, "--data " CALIB " --seqlen 32 --steps 2 --lr -0.001", "learning rate"},
        {S260K, "--data " CALIB " --seqlen 32 --steps 2 --temperature 0", "temperature"},
        {S260K, "--data " CALIB " --seqlen 32 --steps 0", "steps"},
        {S260K, "--data " CALIB " --seqlen 32 --steps 2 --mode lorax", "mode"},
        {S260K, "--data /nonexistent.txt --seqlen 32 --steps 2", "nonexistent"},
        {"/nonexistent.bin", "--data " CALIB " --seqlen 32 --steps 2", "nonexistent"},
        {S260K, "--data " CALIB " --seqlen 100000 --steps 2", "sequence length"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char args[1024];
        const char *s = strstr(bad[i].args, "SHORT");
        if (s)
            snprintf(args, sizeof args, "%.*s%s%s", (int)(s - bad[i].args), bad[i].args, shortf, s + 5);
        else
            snprintf(args, sizeof args, "%s", bad[i].args);
        int rc = lmp_test_sh(out, sizeof out, "%s distill --teacher " S260K " --student %s --out %s/bad.lmp %s",
                             bin, bad[i].student, d, args);
        CHECK_MSG(rc == 2, "case %zu: exit %d: %s", i, rc, out);
        CHECK_MSG(strstr(out, bad[i].expect) != NULL, "case %zu: expected '%s' in: %s", i, bad[i].expect, out);
        int lines = 0;
        for (const char *c = out; *c; c++) lines += *c == '\n';
        CHECK_MSG(lines == 1, "case %zu: %d lines: %s", i, lines, out);
        char p[700];
        snprintf(p, sizeof p, "%s/bad.lmp", d);
        CHECK_MSG(!file_exists(p), "case %zu: left an output", i);
        snprintf(p, sizeof p, "%s/bad.lmp.ckpt", d);
        CHECK_MSG(!file_exists(p), "case %zu: left a checkpoint", i);
    }
    int rc = lmp_test_sh(out, sizeof out, "%s distill --help", bin);
    CHECK(rc == 0 && strstr(out, "--resume") && strstr(out, "--topk") && strstr(out, "--merge"));
}
