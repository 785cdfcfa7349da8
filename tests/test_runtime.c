/* runtime/: the forward pass against transformers' logits and the reference greedy output of
 * stories260K, against a numpy forward of a tiny model with per-layer shapes and biases
 * (tests/gen_runtime_fixture.py), fast kernels against their scalar references, batched
 * against token-by-token decoding, hooks, errors, sampling, and `lmpress run`. */
#include "test.h"
#include "formats/model.h"
#include "formats/qpack.h"
#include "runtime/runtime.h"
#include "test_rtmodel.h"

#include <stdint.h>
#include <string.h>

#define S260K "models/stories260K.bin"
#define REFDIR "tests/data/stories260K/"

static struct lmp_model *load260k(void)
{
    struct lmp_model *m = NULL;
    struct lmp_err err = {{0}};
    enum lmp_status st = lmp_ckpt_load(S260K, NULL, &m, &err);
    CHECK_MSG(st == LMP_OK, "load: %s", err.msg);
    return m;
}

/* A random model with awkward, per-layer differing shapes. */
static struct lmp_model *odd_model(int bias)
{
    static const struct tl ls[] = {{6, 2, 172}, {4, 4, 53}, {8, 1, 37}};
    return build_model(64, 8, 101, 3, ls, bias, !bias, 10000.0f, 1e-5f, 80, NULL, 42);
}

/* Logits (n, vocab) of tokens through a fresh state: batch tokens per forward call. */
static float *run_logits(struct lmp_model *m, const int32_t *tok, int n, int batch, int ref,
                         int threads)
{
    struct lmp_rt_state *s = NULL;
    struct lmp_err err = {{0}};
    struct lmp_rt_opts o = {.n_threads = threads, .ref = ref};
    enum lmp_status st = lmp_rt_state_create(m, n, batch, &o, &s, &err);
    CHECK_MSG(st == LMP_OK, "state: %s", err.msg);
    if (st) return NULL;
    float *lg = malloc((size_t)n * m->cfg.vocab * sizeof *lg);
    for (int i = 0; i < n && st == LMP_OK; i += batch) {
        int b = n - i < batch ? n - i : batch;
        st = lmp_rt_forward(s, tok + i, b, i, lg + (size_t)i * m->cfg.vocab, NULL, &err);
    }
    CHECK_MSG(st == LMP_OK, "forward: %s", err.msg);
    lmp_rt_state_free(s);
    if (st) {
        free(lg);
        return NULL;
    }
    return lg;
}

TEST(rt_logits_match_transformers)
{
    struct lmp_model *m = load260k();
    REQUIRE(m);
    int32_t *tok = NULL;
    float *ref = NULL;
    int is_int;
    long shape[4];
    int nd;
    REQUIRE(lmp_test_read_npy(REFDIR "tokens_first512.npy", (void **)&tok, &is_int, shape, &nd) ==
            512);
    REQUIRE(is_int);
    REQUIRE(lmp_test_read_npy(REFDIR "logits_first512.npy", (void **)&ref, &is_int, shape, &nd) ==
            512 * 512);
    struct {
        const char *what;
        int batch, ref, threads;
    } runs[] = {
        {"batched (sgemm), one call of 512", 512, 0, 0},
        {"batched, calls of 37", 37, 0, 2},
        {"decode, token by token (matvec)", 1, 0, 0},
        {"scalar reference, batched", 512, 1, 1},
        {"scalar reference, token by token", 1, 1, 1},
    };
    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
        float *lg = run_logits(m, tok, 512, runs[r].batch, runs[r].ref, runs[r].threads);
        REQUIRE(lg);
        CHECK_CLOSE(runs[r].what, lg, ref, 512L * 512, 1e-4, 0);
        free(lg);
    }
    free(tok);
    free(ref);
    lmp_model_free(m);
}

static int read_ids(const char *path, int32_t *ids, int cap)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int n = 0, v;
    while (n < cap && fscanf(f, "%d", &v) == 1) ids[n++] = v;
    fclose(f);
    return n;
}

TEST(rt_greedy_256_matches_reference)
{
    struct lmp_model *m = load260k();
    REQUIRE(m);
    int32_t want[256];
    REQUIRE(read_ids(REFDIR "greedy-t0-256steps.ids", want, 256) == 256);
    struct lmp_rt_state *s = NULL;
    struct lmp_err err = {{0}};
    REQUIRE(lmp_rt_state_create(m, 512, 1, NULL, &s, &err) == LMP_OK);
    float lg[512];
    int32_t tok = 1, bad = -1;
    for (int i = 0; i < 256; i++) {
        REQUIRE(lmp_rt_forward(s, &tok, 1, i, lg, NULL, &err) == LMP_OK);
        tok = lmp_rt_argmax(lg, 512);
        if (tok != want[i] && bad < 0) bad = i;
    }
    CHECK_MSG(bad < 0, "greedy token %d differs", bad);
    CHECK_EQ_INT(lmp_rt_n_past(s), 256);
    lmp_rt_state_free(s);
    lmp_model_free(m);
}

TEST(rt_tiny_model_matches_numpy)
{
    float *w = NULL, *ref = NULL;
    int32_t *tok = NULL;
    int is_int, nd;
    long shape[4];
    REQUIRE(lmp_test_read_npy("tests/data/rt_tiny/weights.npy", (void **)&w, &is_int, shape, &nd) ==
            7576);
    REQUIRE(lmp_test_read_npy("tests/data/rt_tiny/tokens.npy", (void **)&tok, &is_int, shape,
                              &nd) == 12);
    REQUIRE(lmp_test_read_npy("tests/data/rt_tiny/logits.npy", (void **)&ref, &is_int, shape,
                              &nd) == 12 * 40);
    static const struct tl ls[] = {{6, 2, 20}, {4, 4, 13}};
    struct lmp_model *m = build_model(24, 4, 40, 2, ls, 1, 0, 500.0f, 1e-6f, 16, w, 0);
    REQUIRE(m);
    for (int ref_k = 0; ref_k < 2; ref_k++)
        for (int batch = 1; batch <= 12; batch += 11) {
            float *lg = run_logits(m, tok, 12, batch, ref_k, 0);
            REQUIRE(lg);
            char what[64];
            snprintf(what, sizeof what, "%s, batch %d", ref_k ? "reference" : "fast", batch);
            CHECK_CLOSE(what, lg, ref, 12 * 40, 2e-5, 1e-5);
            free(lg);
        }
    lmp_model_free(m);
    free(w);
    free(tok);
    free(ref);
}

static void fill(float *x, long n, unsigned long long *rs)
{
    for (long i = 0; i < n; i++) x[i] = lmp_test_randf(rs);
}

TEST(rt_kernels_fast_vs_ref)
{
    unsigned long long rs = 7;
    static const int mm[][3] = {{1, 53, 37}, {37, 53, 1}, {37, 53, 61}, {5, 64, 172},
                                {256, 172, 64}, {2, 1, 3}, {1, 300, 7}, {3, 7, 1000}};
    for (size_t k = 0; k < sizeof mm / sizeof mm[0]; k++) {
        int n = mm[k][0], in = mm[k][1], out = mm[k][2];
        float *x = malloc(sizeof(float) * n * in), *w = malloc(sizeof(float) * out * in);
        float *b = malloc(sizeof(float) * out), *y1 = malloc(sizeof(float) * n * out),
              *y2 = malloc(sizeof(float) * n * out);
        fill(x, (long)n * in, &rs);
        fill(w, (long)out * in, &rs);
        fill(b, out, &rs);
        for (int bias = 0; bias < 2; bias++)
            for (int th = 1; th <= 3; th += 2) {
                lmp_rt_matmul(y1, x, w, bias ? b : NULL, n, in, out, th);
                lmp_rt_matmul_ref(y2, x, w, bias ? b : NULL, n, in, out, th);
                char what[96];
                snprintf(what, sizeof what, "matmul %dx%d . (%dx%d)^T bias %d threads %d", n, in,
                         out, in, bias, th);
                CHECK_CLOSE(what, y1, y2, (long)n * out, 1e-5, 1e-5);
            }
        free(x), free(w), free(b), free(y1), free(y2);
    }
    /* rmsnorm, swiglu */
    {
        int n = 7, dim = 53;
        float x[7 * 53], w[53], y1[7 * 53], y2[7 * 53];
        fill(x, n * dim, &rs);
        fill(w, dim, &rs);
        lmp_rt_rmsnorm(y1, x, w, n, dim, 1e-5f);
        lmp_rt_rmsnorm_ref(y2, x, w, n, dim, 1e-5f);
        CHECK_CLOSE("rmsnorm 7x53", y1, y2, n * dim, 1e-6, 1e-5);
        memcpy(y1, x, sizeof x);
        lmp_rt_rmsnorm(y1, y1, w, n, dim, 1e-5f); /* in place */
        CHECK_CLOSE("rmsnorm in place", y1, y2, n * dim, 1e-6, 1e-5);
        float g1[371], g2[371], u[371];
        fill(g1, 371, &rs);
        for (int i = 0; i < 371; i++) g1[i] *= 30; /* reach the exp clamps */
        fill(u, 371, &rs);
        memcpy(g2, g1, sizeof g1);
        lmp_rt_swiglu(g1, u, 371);
        lmp_rt_swiglu_ref(g2, u, 371);
        CHECK_CLOSE("swiglu 371", g1, g2, 371, 1e-6, 1e-6);
    }
    /* rope: table against the formula, kernel against reference */
    {
        int n = 9, hd = 10, nh = 3, pos0 = 300;
        float cs[9 * 10], x1[9 * 30], x2[9 * 30], want[9 * 10];
        lmp_rt_rope_table(cs, pos0, n, hd, 10000.0f);
        for (int r = 0; r < n; r++)
            for (int i = 0; i < hd / 2; i++) {
                double a = (pos0 + r) / pow(10000.0, 2.0 * i / hd);
                want[r * hd + 2 * i] = (float)cos(a);
                want[r * hd + 2 * i + 1] = (float)sin(a);
                /* the table rounds the angle to float: allow that rounding's effect */
            }
        CHECK_CLOSE("rope table", cs, want, n * hd, 4e-5, 0); /* |angle| <= 308 */
        fill(x1, n * nh * hd, &rs);
        memcpy(x2, x1, sizeof x1);
        lmp_rt_rope(x1, n, nh, hd, cs);
        lmp_rt_rope_ref(x2, n, nh, hd, cs);
        CHECK_CLOSE("rope 9x3x10", x1, x2, n * nh * hd, 1e-6, 0);
    }
    /* attention: GQA groups, odd head sizes, appended batches */
    static const int at[][5] = {/* n, pos, heads, kv, hd */
                                {1, 0, 4, 4, 8},   {1, 36, 6, 2, 8}, {37, 0, 6, 2, 8},
                                {13, 24, 8, 1, 6}, {5, 60, 3, 3, 10}, {64, 0, 2, 1, 64},
                                {4, 4, 2, 2, 8},   {7, 2, 3, 1, 2},   {9, 0, 4, 2, 16},
                                {3, 100, 2, 2, 8}, {8, 15, 2, 1, 4},  {30, 1, 2, 2, 12}};
    for (size_t k = 0; k < sizeof at / sizeof at[0]; k++) {
        int n = at[k][0], pos = at[k][1], nh = at[k][2], nkv = at[k][3], hd = at[k][4];
        int T = pos + n, ld = T + 3;
        float *q = malloc(sizeof(float) * n * nh * hd), *kc = malloc(sizeof(float) * nkv * hd * ld);
        float *vc = malloc(sizeof(float) * nkv * hd * ld);
        float *o1 = malloc(sizeof(float) * n * nh * hd);
        float *o2 = malloc(sizeof(float) * n * nh * hd), *scr = malloc(sizeof(float) * 3 * 8 * T);
        fill(q, (long)n * nh * hd, &rs);
        for (long i = 0; i < (long)n * nh * hd; i++) q[i] *= 3;
        fill(kc, (long)nkv * hd * ld, &rs);
        fill(vc, (long)nkv * hd * ld, &rs);
        for (int th = 1; th <= 3; th += 2) {
            lmp_rt_attention(o1, q, kc, vc, ld, n, pos, nh, nkv, hd, scr, th);
            lmp_rt_attention_ref(o2, q, kc, vc, ld, n, pos, nh, nkv, hd, scr, th);
            char what[96];
            snprintf(what, sizeof what, "attention n %d pos %d heads %d/%d hd %d threads %d", n,
                     pos, nh, nkv, hd, th);
            CHECK_CLOSE(what, o1, o2, (long)n * nh * hd, 1e-5, 1e-5);
        }
        free(q), free(kc), free(vc), free(o1), free(o2), free(scr);
    }
}

TEST(rt_odd_model_fast_vs_ref_batched_vs_decode)
{
    for (int bias = 0; bias < 2; bias++) {
        struct lmp_model *m = odd_model(bias);
        REQUIRE(m);
        int n = 77;
        int32_t tok[77];
        unsigned long long rs = 99;
        for (int i = 0; i < n; i++) tok[i] = (int32_t)((lmp_test_randf(&rs) + 1) * 50) % 101;
        float *ref = run_logits(m, tok, n, n, 1, 1);
        float *fast = run_logits(m, tok, n, n, 0, 2);
        float *dec = run_logits(m, tok, n, 1, 0, 2);
        float *mix = run_logits(m, tok, n, 10, 0, 1);
        REQUIRE(ref && fast && dec && mix);
        CHECK_CLOSE("fast batched vs reference", fast, ref, 77L * 101, 1e-4, 1e-4);
        CHECK_CLOSE("decode vs reference", dec, ref, 77L * 101, 1e-4, 1e-4);
        CHECK_CLOSE("batches of 10 vs reference", mix, ref, 77L * 101, 1e-4, 1e-4);
        CHECK_CLOSE("decode vs batched", dec, fast, 77L * 101, 1e-4, 1e-4);
        free(ref), free(fast), free(dec), free(mix);
        lmp_model_free(m);
    }
}

/* Hook that checks shapes and accumulates X^T X per (layer, linear). */
struct hk {
    const struct lmp_model *m;
    int calls[8][LMP_RT_N_LINEAR];
    int bad_shape;
    double *xtx[8][LMP_RT_N_LINEAR]; /* (in, in) */
};

static void hk_cb(void *user, int layer, enum lmp_rt_linear w, const float *x, int n, int in)
{
    struct hk *h = user;
    const struct lmp_config *c = &h->m->cfg;
    int want;
    if (w == LMP_RT_OUTPUT)
        want = layer == c->n_layers ? c->dim : -1;
    else if (layer < 0 || layer >= c->n_layers)
        want = -1;
    else if (w == LMP_RT_O)
        want = c->layer[layer].n_heads * c->head_dim;
    else if (w == LMP_RT_DOWN)
        want = c->layer[layer].ffn;
    else
        want = c->dim;
    if (in != want || n < 1) {
        h->bad_shape++;
        return;
    }
    h->calls[layer][w]++;
    if (!h->xtx[layer][w]) h->xtx[layer][w] = calloc((size_t)in * in, sizeof(double));
    double *a = h->xtx[layer][w];
    for (int r = 0; r < n; r++)
        for (int i = 0; i < in; i++)
            for (int j = 0; j < in; j++) a[i * in + j] += (double)x[r * in + i] * x[r * in + j];
}

TEST(rt_hooks_see_linear_inputs)
{
    struct lmp_model *m = odd_model(1);
    REQUIRE(m);
    const int n = 40, nl = m->cfg.n_layers, D = m->cfg.dim;
    int32_t tok[40];
    for (int i = 0; i < n; i++) tok[i] = (i * 37 + 5) % 101;
    struct hk h = {.m = m};
    struct lmp_rt_hooks hooks = {.user = &h, .linear_input = hk_cb};
    struct lmp_rt_state *s = NULL;
    struct lmp_err err = {{0}};
    REQUIRE(lmp_rt_state_create(m, 80, 16, NULL, &s, &err) == LMP_OK);
    float *lg = malloc(sizeof(float) * n * 101);
    REQUIRE(lmp_rt_forward(s, tok, n, 0, lg, &hooks, &err) == LMP_OK);
    CHECK_EQ_INT(h.bad_shape, 0);
    for (int l = 0; l < nl; l++)
        for (int w = 0; w < LMP_RT_OUTPUT; w++) CHECK_EQ_INT(h.calls[l][w], 3); /* 16+16+8 */
    CHECK_EQ_INT(h.calls[nl][LMP_RT_OUTPUT], 3);
    /* the QKV input of layer l is attn_norm(residual after l layers): recompute it */
    float *hid = malloc(sizeof(float) * n * D), *xn = malloc(sizeof(float) * n * D);
    for (int l = 0; l <= nl; l++) {
        REQUIRE(lmp_rt_forward_hidden(s, tok, n, 0, l, hid, NULL, &err) == LMP_OK);
        const struct lmp_tensor *nw = l < nl ? m->layers[l].attn_norm : m->out_norm;
        lmp_rt_rmsnorm_ref(xn, hid, nw->data, n, D, m->cfg.norm_eps);
        const double *a = h.xtx[l][l < nl ? LMP_RT_QKV : LMP_RT_OUTPUT];
        REQUIRE(a);
        double maxd = 0, maxv = 0;
        for (int i = 0; i < D; i++)
            for (int j = 0; j < D; j++) {
                double v = 0;
                for (int r = 0; r < n; r++) v += (double)xn[r * D + i] * xn[r * D + j];
                double d = fabs(v - a[i * D + j]);
                maxd = d > maxd ? d : maxd;
                maxv = fabs(v) > maxv ? fabs(v) : maxv;
            }
        CHECK_MSG(maxd <= 1e-4 * (1 + maxv), "layer %d: X^T X differs by %g (max %g)", l, maxd,
                  maxv);
    }
    /* the pieces compose to the same logits */
    lmp_rt_reset(s);
    CHECK_EQ_INT(lmp_rt_n_past(s), 0);
    float *lg2 = malloc(sizeof(float) * n * 101);
    REQUIRE(lmp_rt_embed(s, tok, n, hid, &err) == LMP_OK);
    for (int i0 = 0; i0 < n; i0 += 16) {
        int b = n - i0 < 16 ? n - i0 : 16;
        for (int l = 0; l < nl; l++)
            REQUIRE(lmp_rt_forward_layer(s, l, hid + i0 * D, b, i0, NULL, &err) == LMP_OK);
    }
    REQUIRE(lmp_rt_head(s, hid, n, lg2, NULL, &err) == LMP_OK);
    CHECK_CLOSE("embed+layers+head vs forward", lg2, lg, (long)n * 101, 0, 0);
    for (int l = 0; l < 8; l++)
        for (int w = 0; w < LMP_RT_N_LINEAR; w++) free(h.xtx[l][w]);
    free(lg), free(lg2), free(hid), free(xn);
    lmp_rt_state_free(s);
    lmp_model_free(m);
}

TEST(rt_errors_are_reported)
{
    struct lmp_model *m = odd_model(0);
    REQUIRE(m);
    struct lmp_rt_state *s = NULL;
    struct lmp_err err = {{0}};
    CHECK(lmp_rt_state_create(m, 81, 8, NULL, &s, &err) == LMP_ERR_ARG && !s);
    CHECK(strstr(err.msg, "81"));
    CHECK(lmp_rt_state_create(m, 0, 8, NULL, &s, &err) == LMP_ERR_ARG);
    CHECK(lmp_rt_state_create(m, 10, 0, NULL, &s, &err) == LMP_ERR_ARG);
    REQUIRE(lmp_rt_state_create(m, 10, 4, NULL, &s, &err) == LMP_OK);
    int32_t tok[12] = {1, 2, 3, 101, 5, 6, 7, 8, 9, 10, 11, 12};
    float lg[12 * 101];
    CHECK(lmp_rt_forward(s, tok, 4, 0, lg, NULL, &err) == LMP_ERR_ARG);
    CHECK(strstr(err.msg, "101"));
    tok[3] = -1;
    CHECK(lmp_rt_forward(s, tok, 4, 0, lg, NULL, &err) == LMP_ERR_ARG);
    tok[3] = 4;
    CHECK(lmp_rt_forward(s, tok, 11, 0, lg, NULL, &err) == LMP_ERR_ARG); /* past context */
    CHECK(lmp_rt_forward(s, tok, 2, 3, lg, NULL, &err) == LMP_ERR_ARG);  /* gap in cache */
    CHECK(lmp_rt_forward(s, tok, 3, 0, lg, NULL, &err) == LMP_OK);
    CHECK(lmp_rt_forward(s, tok, 2, 3, lg, NULL, &err) == LMP_OK);
    CHECK(lmp_rt_forward(s, tok, 1, 1, lg, NULL, &err) == LMP_OK); /* rewind */
    CHECK_EQ_INT(lmp_rt_n_past(s), 2);
    float h[64 * 5];
    CHECK(lmp_rt_forward_layer(s, 3, h, 1, 0, NULL, &err) == LMP_ERR_ARG);
    CHECK(lmp_rt_forward_layer(s, 0, h, 5, 0, NULL, &err) == LMP_ERR_ARG); /* > max_batch */
    CHECK(lmp_rt_forward_hidden(s, tok, 2, 0, 4, h, NULL, &err) == LMP_ERR_ARG);
    lmp_rt_state_free(s);
    lmp_rt_state_free(NULL);
    /* a weight type the runtime cannot read */
    m->layers[1].w_up->type = LMP_TYPE_I32;
    CHECK(lmp_rt_state_create(m, 10, 4, NULL, &s, &err) == LMP_ERR_UNSUPPORTED && !s);
    CHECK(strstr(err.msg, "blk.1.ffn_up.weight"));
    m->layers[1].w_up->type = LMP_TYPE_F32;
    lmp_model_free(m);
}

TEST(rt_sampler_deterministic)
{
    float lg[50];
    unsigned long long rs = 3;
    fill(lg, 50, &rs);
    struct lmp_rt_sampler *a = NULL, *b = NULL, *g = NULL;
    struct lmp_err err = {{0}};
    REQUIRE(lmp_rt_sampler_create(50, 0.8f, 0.9f, 1234, &a, &err) == LMP_OK);
    REQUIRE(lmp_rt_sampler_create(50, 0.8f, 0.9f, 1234, &b, &err) == LMP_OK);
    REQUIRE(lmp_rt_sampler_create(50, 0.0f, 1.0f, 1, &g, &err) == LMP_OK);
    int same = 1, distinct = 0, prev = -1, hist[50] = {0};
    for (int i = 0; i < 2000; i++) {
        int x = lmp_rt_sample(a, lg), y = lmp_rt_sample(b, lg);
        same &= x == y;
        distinct += x != prev;
        prev = x;
        CHECK(x >= 0 && x < 50);
        hist[x]++;
    }
    CHECK(same);
    CHECK(distinct > 100);
    CHECK_EQ_INT(lmp_rt_sample(g, lg), lmp_rt_argmax(lg, 50));
    /* top-p: tokens outside the nucleus never come out; with temp 1 the frequency of the
     * most likely token follows its renormalised probability */
    double p[50], mx = lg[lmp_rt_argmax(lg, 50)], sum = 0;
    for (int i = 0; i < 50; i++) sum += p[i] = exp((lg[i] - mx) / 0.8);
    for (int i = 0; i < 50; i++) p[i] /= sum;
    double above = 0; /* mass of tokens more likely than i */
    for (int i = 0; i < 50; i++) {
        above = 0;
        for (int j = 0; j < 50; j++)
            if (p[j] > p[i]) above += p[j];
        if (above >= 0.9 + 1e-6) CHECK_MSG(hist[i] == 0, "token %d outside top-p sampled", i);
    }
    lmp_rt_sampler_free(a);
    lmp_rt_sampler_free(b);
    lmp_rt_sampler_free(g);
    struct lmp_rt_sampler *z = NULL;
    CHECK(lmp_rt_sampler_create(50, -1, 0.9f, 1, &z, &err) == LMP_ERR_ARG && !z);
    CHECK(lmp_rt_sampler_create(50, 1, 0, 1, &z, &err) == LMP_ERR_ARG && !z);
}

/* Stores t (F32) as type ty: F16/BF16 round each value; Q4 packs codes chosen here. Writes
 * into ref_w (F32, the values the runtime must see) by the formula of docs/FORMAT.md. */
static int restore_as(struct lmp_tensor *t, enum lmp_type ty, const int32_t *perm, float *ref_w,
                      unsigned long long *rs)
{
    int64_t R = t->shape[0], C = t->shape[1], ne = R * C;
    const float *src = t->data;
    void *nd = NULL;
    size_t nbytes = 0;
    if (ty == LMP_TYPE_F16 || ty == LMP_TYPE_BF16) {
        uint16_t *h = malloc((size_t)ne * 2);
        for (int64_t k = 0; k < ne; k++) {
            h[k] = ty == LMP_TYPE_F16 ? lmp_f32_to_f16(src[k]) : lmp_f32_to_bf16(src[k]);
            ref_w[k] = ty == LMP_TYPE_F16 ? lmp_f16_to_f32(h[k]) : lmp_bf16_to_f32(h[k]);
        }
        nd = h;
        nbytes = (size_t)ne * 2;
    } else {
        int group = 16;
        int64_t ng = (C + group - 1) / group;
        size_t cb, pb;
        struct lmp_err err = {{0}};
        if (lmp_qpack_sizes(R, C, 4, group, &cb, &pb, &err)) return 0;
        uint8_t *codes = malloc((size_t)ne), *packed = calloc(1, cb);
        uint16_t *sc = malloc((size_t)(R * ng) * 2), *zr = malloc((size_t)(R * ng) * 2);
        for (int64_t k = 0; k < R * ng; k++) {
            sc[k] = lmp_f32_to_f16(0.02f + 0.01f * lmp_test_randf(rs));
            zr[k] = lmp_f32_to_f16(7.0f + (float)(int)(2 * lmp_test_randf(rs)));
        }
        for (int64_t r = 0; r < R; r++)
            for (int64_t j = 0; j < C; j++) {
                int q = (int)((lmp_test_randf(rs) + 1) * 8) & 15;
                codes[r * C + j] = (uint8_t)q;
                int64_t g = r * ng + j / group;
                int64_t col = perm ? perm[j] : j;
                ref_w[r * C + col] = ((float)q - lmp_f16_to_f32(zr[g])) * lmp_f16_to_f32(sc[g]);
            }
        if (lmp_qpack_pack(codes, R, C, 4, packed, &err)) return 0;
        free(codes);
        t->q.bits = 4;
        t->q.group = group;
        t->q.scales = sc;
        t->q.zeros = zr;
        if (perm) {
            t->q.perm = malloc((size_t)C * 4);
            memcpy(t->q.perm, perm, (size_t)C * 4);
        }
        nd = packed;
        nbytes = cb;
    }
    if (t->owned) free(t->data);
    t->data = nd;
    t->owned = 1;
    t->nbytes = nbytes;
    t->type = ty;
    return 1;
}

TEST(rt_f16_bf16_packed_weights)
{
    struct lmp_model *a = odd_model(1), *b = odd_model(1);
    REQUIRE(a && b);
    unsigned long long rs = 5;
    int32_t perm[53];
    for (int j = 0; j < 53; j++) perm[j] = (j * 20 + 7) % 53; /* 20 is prime to 53 */
    struct {
        struct lmp_tensor *ta, *tb;
        enum lmp_type ty;
        const int32_t *perm;
    } cv[] = {
        {a->layers[0].wq, b->layers[0].wq, LMP_TYPE_F16, NULL},
        {a->layers[2].w_up, b->layers[2].w_up, LMP_TYPE_BF16, NULL},
        {a->tok_embd, b->tok_embd, LMP_TYPE_Q4, NULL}, /* looked up by rows: expanded */
        {a->out, b->out, LMP_TYPE_Q4, NULL},
        {a->layers[2].wk, b->layers[2].wk, LMP_TYPE_F16, NULL},
        {a->layers[0].w_gate, b->layers[0].w_gate, LMP_TYPE_Q4, NULL},
        {a->layers[1].w_down, b->layers[1].w_down, LMP_TYPE_Q4, perm}, /* 53 inputs, group 16 */
    };
    for (size_t i = 0; i < sizeof cv / sizeof cv[0]; i++)
        REQUIRE(restore_as(cv[i].ta, cv[i].ty, cv[i].perm, cv[i].tb->data, &rs));
    int32_t tok[20];
    for (int i = 0; i < 20; i++) tok[i] = (i * 13 + 1) % 101;
    float *lb = run_logits(b, tok, 20, 20, 0, 1), *la;
    REQUIRE(lb);
    /* packed weights go through the fused kernels: equal up to summation order */
    static const struct {
        const char *what;
        int batch, ref;
    } runs[] = {{"F16/BF16/Q4 vs their F32 values, batched", 20, 0},
                {"F16/BF16/Q4 vs their F32 values, decode", 1, 0},
                {"F16/BF16/Q4 vs their F32 values, reference kernels", 20, 1}};
    for (int k = 0; k < 3; k++) {
        la = run_logits(a, tok, 20, runs[k].batch, runs[k].ref, 2);
        REQUIRE(la);
        CHECK_CLOSE(runs[k].what, la, lb, 20L * 101, 2e-5, 1e-5);
        free(la);
    }
    la = run_logits(a, tok, 20, 20, 0, 1);
    REQUIRE(la);
    /* states made alike share the expanded weights and give the same logits */
    struct lmp_rt_state *s1 = NULL, *s2 = NULL;
    struct lmp_err err = {{0}};
    REQUIRE(lmp_rt_state_create(a, 20, 20, NULL, &s1, &err) == LMP_OK);
    REQUIRE(lmp_rt_state_create_like(s1, NULL, &s2, &err) == LMP_OK);
    lmp_rt_state_free(s1);
    float *lc = malloc(20 * 101 * sizeof *lc);
    REQUIRE(lmp_rt_forward(s2, tok, 20, 0, lc, NULL, &err) == LMP_OK);
    CHECK_CLOSE("state made alike", lc, la, 20L * 101, 0, 0);
    free(lc);
    lmp_rt_state_free(s2);
    /* a malformed packed tensor is an error, not a crash */
    a->layers[0].w_gate->q.group = 0;
    CHECK(lmp_rt_state_create(a, 20, 20, NULL, &s1, &err) != LMP_OK && !s1);
    free(la), free(lb);
    lmp_model_free(a);
    lmp_model_free(b);
}

TEST(rt_cli_run)
{
    char out[16384], ref[4096];
    /* greedy from BOS reproduces the reference ids, and the text streams to stdout */
    int rc = lmp_test_sh(out, sizeof out, "%s run " S260K " -n 256 --temp 0 --ids 2>/dev/null",
                         lmp_test_bin());
    FILE *f = fopen(REFDIR "greedy-t0-256steps.ids", "r");
    REQUIRE(f);
    size_t n = fread(ref, 1, sizeof ref - 1, f);
    fclose(f);
    ref[n] = 0;
    CHECK_MSG(rc == 0 && !strcmp(out, ref), "greedy ids differ:\n%s", out);
    rc = lmp_test_sh(out, sizeof out, "%s run " S260K " -n 40 --temp 0", lmp_test_bin());
    const char *start = "Once upon a time, there was a little girl named Lily.";
    CHECK_MSG(rc == 0 && !strncmp(out, start, strlen(start)) && strstr(out, "tokens/s"), "%s",
              out);
    /* sampling: the same seed gives the same text, another seed other text */
    char a[4096], b[4096], c[4096];
    const char *cmd =
        "%s run " S260K " -p 'One day' -n 60 --temp 1 --top-p 0.9 --seed %d 2>/dev/null";
    CHECK(lmp_test_sh(a, sizeof a, cmd, lmp_test_bin(), 7) == 0);
    CHECK(lmp_test_sh(b, sizeof b, cmd, lmp_test_bin(), 7) == 0);
    CHECK(lmp_test_sh(c, sizeof c, cmd, lmp_test_bin(), 8) == 0);
    CHECK_MSG(!strcmp(a, b) && strcmp(a, c) && !strncmp(a, "One day", 7), "%s\n%s\n%s", a, b, c);
    /* stops at the context: BOS + 511 fed tokens, the last one predicted from position 511 */
    rc = lmp_test_sh(out, sizeof out, "%s run " S260K " -n 5000 --temp 0 --ids 2>/dev/null | wc -l",
                     lmp_test_bin());
    CHECK_MSG(rc == 0 && atoi(out) == 512, "%s", out);
    rc = lmp_test_sh(out, sizeof out, "%s run --help", lmp_test_bin());
    CHECK(rc == 0 && strstr(out, "--top-p"));
    CHECK_CLI_BAD("run", "");
    CHECK_CLI_BAD("run", "/nonexistent.bin");
    CHECK_CLI_BAD("run", S260K " --temp abc");
    CHECK_CLI_BAD("run", S260K " --temp -1");
    CHECK_CLI_BAD("run", S260K " -n -1");
    CHECK_CLI_BAD("run", S260K " -n 12q");
    CHECK_CLI_BAD("run", S260K " --top-p 0");
    CHECK_CLI_BAD("run", S260K " --top-p 1.5");
    CHECK_CLI_BAD("run", S260K " --seed x");
    CHECK_CLI_BAD("run", S260K " --threads 0");
    CHECK_CLI_BAD("run", S260K " --frobnicate");
    CHECK_CLI_BAD("run", S260K " -p");
    CHECK_CLI_BAD("run", S260K " extra-arg");
    /* a prompt longer than the context */
    char args[8192] = S260K " -p '";
    for (int i = 0; i < 600; i++) strcat(args, "the ");
    strcat(args, "'");
    CHECK_CLI_BAD("run", args);
}

/* lmpress bench: a markdown table with a ppN and a tgN row of positive, finite tokens/s
 * (timings are measured in bench/, never asserted here); bad input is one line, exit 2. */
TEST(rt_cli_bench)
{
    char out[4096];
    int rc = lmp_test_sh(out, sizeof out, "%s bench " S260K " -p 64 -n 32 -r 2 --threads 1 2>/dev/null",
                         lmp_test_bin());
    CHECK_MSG(rc == 0, "exit %d: %s", rc, out);
    const char *pp = strstr(out, "| pp64 | "), *tg = strstr(out, "| tg32 | ");
    CHECK_MSG(pp && tg && strstr(out, "| cpu | 1 |") && strstr(out, "0.26 M"), "%s", out);
    if (pp && tg) {
        double a = atof(pp + strlen("| pp64 | ")), b = atof(tg + strlen("| tg32 | "));
        CHECK_MSG(a > 0 && b > 0 && isfinite(a) && isfinite(b), "%g %g", a, b);
    }
    /* -p beyond the context is clamped to it (512 for stories260K) */
    rc = lmp_test_sh(out, sizeof out, "%s bench " S260K " -p 5000 -n 0 -r 1 2>/dev/null", lmp_test_bin());
    CHECK_MSG(rc == 0 && strstr(out, "| pp512 | ") && !strstr(out, "| tg"), "%s", out);
    rc = lmp_test_sh(out, sizeof out, "%s bench --help", lmp_test_bin());
    CHECK(rc == 0 && strstr(out, "--n-prompt"));
    CHECK_CLI_BAD("bench", "");
    CHECK_CLI_BAD("bench", "/nonexistent.bin");
    CHECK_CLI_BAD("bench", S260K " -p -1");
    CHECK_CLI_BAD("bench", S260K " -n x");
    CHECK_CLI_BAD("bench", S260K " -r 0");
    CHECK_CLI_BAD("bench", S260K " -p 0 -n 0");
    CHECK_CLI_BAD("bench", S260K " --device tpu");
    CHECK_CLI_BAD("bench", S260K " --frobnicate");
}

/* hooks.attn: a layer re-run from the attention output another pass saved gives the same
 * bits as computing it (GPTQ's later stages rely on this) and skips the q/k/v hook. */
struct att_save {
    float *o;  /* (n, qd) */
    int layer, qkv_calls;
};
static void att_cb(void *user, int layer, enum lmp_rt_linear which, const float *x, int n, int in)
{
    struct att_save *a = user;
    if (layer != a->layer) return;
    if (which == LMP_RT_QKV) a->qkv_calls++;
    if (which == LMP_RT_O && a->o) memcpy(a->o, x, sizeof(float) * (size_t)n * in);
}

TEST(rt_layer_from_saved_attention)
{
    struct lmp_model *m = odd_model(1);
    REQUIRE(m);
    const int n = 16, D = m->cfg.dim, l = 1;
    const int qd = m->cfg.layer[l].n_heads * m->cfg.head_dim;
    int32_t tok[16];
    for (int i = 0; i < n; i++) tok[i] = (i * 29 + 3) % 101;
    struct lmp_rt_state *s = NULL;
    struct lmp_err err = {{0}};
    REQUIRE(lmp_rt_state_create(m, 32, 16, NULL, &s, &err) == LMP_OK);
    float *h0 = malloc(sizeof(float) * n * D), *h1 = malloc(sizeof(float) * n * D);
    float *h2 = malloc(sizeof(float) * n * D), *att = malloc(sizeof(float) * n * qd);
    REQUIRE(lmp_rt_forward_hidden(s, tok, n, 0, l, h0, NULL, &err) == LMP_OK);
    memcpy(h1, h0, sizeof(float) * n * D);
    memcpy(h2, h0, sizeof(float) * n * D);
    struct att_save a = {.o = att, .layer = l};
    struct lmp_rt_hooks hk = {.user = &a, .linear_input = att_cb};
    REQUIRE(lmp_rt_forward_layer(s, l, h1, n, 0, &hk, &err) == LMP_OK);
    CHECK_EQ_INT(a.qkv_calls, 1);
    a.o = NULL;
    hk.attn = att;
    REQUIRE(lmp_rt_forward_layer(s, l, h2, n, 0, &hk, &err) == LMP_OK);
    CHECK_EQ_INT(a.qkv_calls, 1); /* not called again */
    CHECK(memcmp(h1, h2, sizeof(float) * n * D) == 0);
    /* and a different attention output changes the result */
    att[3] += 1.0f;
    memcpy(h2, h0, sizeof(float) * n * D);
    REQUIRE(lmp_rt_forward_layer(s, l, h2, n, 0, &hk, &err) == LMP_OK);
    CHECK(memcmp(h1, h2, sizeof(float) * n * D) != 0);
    free(h0), free(h1), free(h2), free(att);
    lmp_rt_state_free(s);
    lmp_model_free(m);
}
