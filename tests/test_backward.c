/* runtime/backward: the training forward against lmp_rt_forward, whole-model gradients of
 * stories260K against torch autograd in float64 (tests/gen_backward_fixture.py), central
 * finite differences, backward kernels against their scalar references, partial and squared
 * gradients, thread-count independence, errors. */
#include "test.h"
#include "formats/model.h"
#include "runtime/backward.h"
#include "runtime/runtime.h"
#include "test_rtmodel.h"

#include <stdint.h>
#include <string.h>

#define S260K "models/stories260K.bin"
#define FIXDIR "tests/data/backward/"

static struct lmp_model *load260k(void)
{
    struct lmp_model *m = NULL;
    struct lmp_err err = {{0}};
    enum lmp_status st = lmp_ckpt_load(S260K, NULL, &m, &err);
    CHECK_MSG(st == LMP_OK, "load: %s", err.msg);
    return m;
}

/* Random model with per-layer shapes, biases or a tied head. */
static struct lmp_model *odd_model(int bias)
{
    static const struct tl ls[] = {{6, 2, 40}, {4, 4, 23}, {8, 1, 17}};
    return build_model(32, 4, 61, 3, ls, bias, !bias, 10000.0f, 1e-5f, 64, NULL, 4242);
}

static void rand_tokens(int32_t *t, int n, int vocab, unsigned long long seed)
{
    for (int i = 0; i < n; i++) {
        int v = (int)((lmp_test_randf(&seed) + 1.0f) * 0.5f * (float)vocab);
        t[i] = v < 0 ? 0 : v >= vocab ? vocab - 1 : v;
    }
}

/* Mean next-token cross entropy of n_seq sequences through the inference forward. */
static double ce_inference(struct lmp_rt_state *s, const int32_t *tok, int n_seq, int len,
                           float *lg)
{
    struct lmp_err err = {{0}};
    const struct lmp_model *m = lmp_rt_model(s);
    double tot = 0;
    for (int b = 0; b < n_seq; b++) {
        lmp_rt_reset(s);
        enum lmp_status st = lmp_rt_forward(s, tok + (size_t)b * len, len, 0, lg, NULL, &err);
        CHECK_MSG(st == LMP_OK, "forward: %s", err.msg);
        tot += lmp_rt_loss_ce(lg, tok + (size_t)b * len, len, m->cfg.vocab, 1.0f, NULL);
    }
    return tot / ((double)n_seq * (len - 1));
}

/* Gradients of the mean cross entropy of n_seq sequences (all tensors or want). */
static struct lmp_rt_grads *grads_of(struct lmp_model *m, const int32_t *tok, int n_seq, int len,
                                     const unsigned char *want, int threads, double *loss)
{
    struct lmp_err err = {{0}};
    struct lmp_rt_train *tr = NULL;
    struct lmp_rt_grads *g = NULL;
    struct lmp_rt_train_opts o = {.n_threads = threads};
    enum lmp_status st = lmp_rt_train_create(m, len, n_seq, &o, &tr, &err);
    if (!st) st = lmp_rt_grads_create(m, want, &g, &err);
    float *lg = malloc(sizeof(float) * n_seq * len * m->cfg.vocab);
    float *dl = malloc(sizeof(float) * n_seq * len * m->cfg.vocab);
    if (!st) st = lmp_rt_train_forward(tr, tok, n_seq, len, lg, &err);
    double tot = 0;
    float scale = 1.0f / (float)(n_seq * (len - 1));
    for (int b = 0; !st && b < n_seq; b++) {
        size_t o2 = (size_t)b * len * m->cfg.vocab;
        tot += lmp_rt_loss_ce(lg + o2, tok + (size_t)b * len, len, m->cfg.vocab, scale, dl + o2);
    }
    if (!st) st = lmp_rt_train_backward(tr, dl, g, NULL, &err);
    CHECK_MSG(st == LMP_OK, "backward: %s", err.msg);
    if (loss) *loss = tot / (n_seq * (len - 1));
    free(lg);
    free(dl);
    lmp_rt_train_free(tr);
    if (st) {
        lmp_rt_grads_free(g);
        return NULL;
    }
    return g;
}

/* Stores a F32 tensor as F16 or BF16 (its values rounded). */
static void to_half(struct lmp_tensor *t, enum lmp_type ty)
{
    long n = (long)lmp_tensor_nelem(t);
    uint16_t *h = malloc(sizeof(uint16_t) * n);
    const float *f = t->data;
    for (long i = 0; i < n; i++) h[i] = ty == LMP_TYPE_F16 ? lmp_f32_to_f16(f[i]) : lmp_f32_to_bf16(f[i]);
    if (t->owned) free(t->data);
    t->data = h;
    t->owned = 1;
    t->type = ty;
    t->nbytes = sizeof(uint16_t) * n;
}

TEST(bwd_train_forward_logits_equal_inference_forward)
{
    for (int k = 0; k < 4; k++) {
        struct lmp_model *m = k == 0 ? load260k() : odd_model(k != 2);
        REQUIRE(m);
        if (k == 3) { /* half-precision weights: both forwards expand them to F32 */
            to_half(m->layers[0].wq, LMP_TYPE_F16);
            to_half(m->layers[2].w_up, LMP_TYPE_BF16);
            to_half(m->layers[1].ffn_norm, LMP_TYPE_F16);
        }
        const int n_seq = 3, len = k == 0 ? 100 : 45, V = m->cfg.vocab;
        int32_t *tok = malloc(sizeof(int32_t) * n_seq * len);
        rand_tokens(tok, n_seq * len, V, 11 + k);
        float *lg = malloc(sizeof(float) * n_seq * len * V), *ref = malloc(sizeof(float) * len * V);
        struct lmp_err err = {{0}};
        struct lmp_rt_train *tr = NULL;
        struct lmp_rt_state *s = NULL;
        struct lmp_rt_train_opts o = {.n_threads = 2};
        REQUIRE(lmp_rt_train_create(m, len + 7, 4, &o, &tr, &err) == LMP_OK);
        REQUIRE(lmp_rt_state_create(m, len, len, NULL, &s, &err) == LMP_OK);
        REQUIRE(lmp_rt_train_forward(tr, tok, n_seq, len, lg, &err) == LMP_OK);
        for (int b = 0; b < n_seq; b++) {
            lmp_rt_reset(s);
            REQUIRE(lmp_rt_forward(s, tok + b * len, len, 0, ref, NULL, &err) == LMP_OK);
            char what[80];
            snprintf(what, sizeof what, "model %d sequence %d logits", k, b);
            /* two code paths (OpenBLAS partitions the products differently): equal up to
             * float rounding, a few ulp of the largest logit */
            float mx = 0.0f;
            for (long i = 0; i < (long)len * V; i++) mx = fmaxf(mx, fabsf(ref[i]));
            CHECK_CLOSE(what, lg + (size_t)b * len * V, ref, (long)len * V, 2e-6 * mx + 1e-6, 1e-6);
        }
        lmp_rt_state_free(s);
        lmp_rt_train_free(tr);
        free(tok), free(lg), free(ref);
        lmp_model_free(m);
    }
}

/* The fixture's tensor order: token_embd; per layer attn_norm, wq, wk, wv, wo, ffn_norm,
 * w_gate, w_up, w_down; output_norm. */
static int fixture_tensors(struct lmp_model *m, struct lmp_tensor **ts)
{
    int n = 0;
    ts[n++] = m->tok_embd;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        struct lmp_layer *L = &m->layers[l];
        ts[n++] = L->attn_norm, ts[n++] = L->wq, ts[n++] = L->wk, ts[n++] = L->wv;
        ts[n++] = L->wo, ts[n++] = L->ffn_norm, ts[n++] = L->w_gate, ts[n++] = L->w_up;
        ts[n++] = L->w_down;
    }
    ts[n++] = m->out_norm;
    return n;
}

TEST(bwd_stories260K_gradients_match_torch)
{
    struct lmp_model *m = load260k();
    REQUIRE(m);
    int32_t *tok = NULL;
    float *ref = NULL, *loss_ref = NULL;
    int is_int, nd;
    long shape[4];
    REQUIRE(lmp_test_read_npy(FIXDIR "tokens.npy", (void **)&tok, &is_int, shape, &nd) == 192);
    REQUIRE(is_int && nd == 2 && shape[0] == 2 && shape[1] == 96);
    long n_ref = lmp_test_read_npy(FIXDIR "grads.npy", (void **)&ref, &is_int, shape, &nd);
    REQUIRE(n_ref > 0 && !is_int);
    REQUIRE(lmp_test_read_npy(FIXDIR "loss.npy", (void **)&loss_ref, &is_int, shape, &nd) == 1);
    double loss = 0;
    struct lmp_rt_grads *g = grads_of(m, tok, 2, 96, NULL, 2, &loss);
    REQUIRE(g);
    CHECK_MSG(fabs(loss - loss_ref[0]) <= 1e-5 * loss_ref[0], "loss %.7f, torch %.7f", loss,
              (double)loss_ref[0]);
    struct lmp_tensor *ts[64];
    int nt = fixture_tensors(m, ts);
    long at = 0;
    double worst = 0;
    for (int i = 0; i < nt; i++) {
        const float *gi = lmp_rt_grads_of(g, m, ts[i]);
        REQUIRE(gi);
        long ne = (long)lmp_tensor_nelem(ts[i]), step = ne > 8192 ? 5 : 1, k = 0;
        float *got = malloc(sizeof(float) * (ne / step + 1));
        for (long e = 0; e < ne; e += step) got[k++] = gi[e];
        REQUIRE(at + k <= n_ref);
        /* relative to the tensor's gradient norm, and per element */
        double num = 0, den = 0, mx = 0;
        for (long e = 0; e < k; e++) {
            double d = (double)got[e] - ref[at + e];
            num += d * d;
            den += (double)ref[at + e] * ref[at + e];
            mx = fabs(ref[at + e]) > mx ? fabs(ref[at + e]) : mx;
        }
        double rel = den > 0 ? sqrt(num / den) : sqrt(num);
        worst = rel > worst ? rel : worst;
        CHECK_MSG(rel <= 1e-4, "%s: relative error %.3g (norm)", ts[i]->name, rel);
        char what[128];
        snprintf(what, sizeof what, "grad %s", ts[i]->name);
        CHECK_CLOSE(what, got, ref + at, k, 1e-4 * mx, 1e-4);
        at += k;
        free(got);
    }
    CHECK_EQ_INT(at, n_ref);
    fprintf(stderr, "    worst relative gradient error (norm per tensor): %.3g\n", worst);
    lmp_rt_grads_free(g);
    free(tok), free(ref), free(loss_ref);
    lmp_model_free(m);
}

/* Central differences of the inference forward's loss against the backward, on weights
 * whose gradient is not tiny. fp32 forward: loss noise ~1e-7, so eps 1e-3 gives ~1e-4
 * absolute noise in the difference quotient, far below the gradients checked. */
static void fd_check(struct lmp_model *m, int n_seq, int len, unsigned long long seed,
                     int n_checks)
{
    const int V = m->cfg.vocab;
    int32_t *tok = malloc(sizeof(int32_t) * n_seq * len);
    rand_tokens(tok, n_seq * len, V, seed);
    struct lmp_rt_grads *g = grads_of(m, tok, n_seq, len, NULL, 2, NULL);
    REQUIRE(g);
    struct lmp_err err = {{0}};
    struct lmp_rt_state *s = NULL;
    struct lmp_rt_opts ro = {.n_threads = 1};
    REQUIRE(lmp_rt_state_create(m, len, len, &ro, &s, &err) == LMP_OK);
    float *lg = malloc(sizeof(float) * len * V);
    unsigned long long rs = seed * 7 + 1;
    int done = 0, tries = 0;
    while (done < n_checks && tries++ < 100000) {
        int ti = (int)((lmp_test_randf(&rs) + 1) * 0.5f * m->n_tensors) % m->n_tensors;
        struct lmp_tensor *t = &m->tensors[ti];
        float *gt = lmp_rt_grads_of(g, m, t);
        if (!gt || t->type != LMP_TYPE_F32) continue;
        long ne = (long)lmp_tensor_nelem(t);
        float gmax = 0;
        for (long e = 0; e < ne; e++) gmax = fabsf(gt[e]) > gmax ? fabsf(gt[e]) : gmax;
        long e = (long)((lmp_test_randf(&rs) + 1) * 0.5f * ne) % ne;
        if (fabsf(gt[e]) < 0.2f * gmax || fabsf(gt[e]) < 1e-3f) continue;
        float *w = t->data, w0 = w[e];
        const float eps = 1e-3f;
        w[e] = w0 + eps;
        double lp = ce_inference(s, tok, n_seq, len, lg);
        w[e] = w0 - eps;
        double lm = ce_inference(s, tok, n_seq, len, lg);
        w[e] = w0;
        double fd = (lp - lm) / (double)(2 * eps);
        double d = fabs(fd - gt[e]);
        CHECK_MSG(d <= 2e-4 + 1e-2 * fabs(fd), "%s[%ld]: backward %.6g, finite difference %.6g",
                  t->name, e, (double)gt[e], fd);
        fprintf(stderr, "    %-26s [%5ld] backward %+.6e  fd %+.6e  rel %.1e\n", t->name, e,
                (double)gt[e], fd, d / fabs(fd));
        done++;
    }
    CHECK(done == n_checks);
    free(lg);
    free(tok);
    lmp_rt_state_free(s);
    lmp_rt_grads_free(g);
}

TEST(bwd_finite_differences)
{
    for (int bias = 0; bias < 2; bias++) {
        struct lmp_model *m = odd_model(bias);
        REQUIRE(m);
        fd_check(m, 2, 20, 5 + bias, 12);
        lmp_model_free(m);
    }
    struct lmp_model *m = load260k();
    REQUIRE(m);
    fd_check(m, 2, 64, 3, 8);
    lmp_model_free(m);
}

static void fill(float *x, long n, unsigned long long *rs, float s)
{
    for (long i = 0; i < n; i++) x[i] = s * lmp_test_randf(rs);
}

TEST(bwd_kernels_fast_vs_ref)
{
    unsigned long long rs = 17;
    {
        int n = 9, dim = 53;
        float x[9 * 53], w[53], dy[9 * 53], dx1[9 * 53], dx2[9 * 53], dw1[53], dw2[53];
        fill(x, n * dim, &rs, 2), fill(w, dim, &rs, 1), fill(dy, n * dim, &rs, 1);
        fill(dx1, n * dim, &rs, 1);
        memcpy(dx2, dx1, sizeof dx1);
        memset(dw1, 0, sizeof dw1), memset(dw2, 0, sizeof dw2);
        lmp_rt_rmsnorm_bwd(dx1, dw1, x, w, dy, n, dim, 1e-5f);
        lmp_rt_rmsnorm_bwd_ref(dx2, dw2, x, w, dy, n, dim, 1e-5f);
        CHECK_CLOSE("rmsnorm_bwd dx", dx1, dx2, n * dim, 1e-5, 1e-5);
        CHECK_CLOSE("rmsnorm_bwd dw", dw1, dw2, dim, 1e-5, 1e-5);
    }
    {
        float g[301], u[301], da[301], dg1[301], du1[301], dg2[301], du2[301];
        fill(g, 301, &rs, 12), fill(u, 301, &rs, 1), fill(da, 301, &rs, 1);
        lmp_rt_swiglu_bwd(dg1, du1, g, u, da, 301);
        lmp_rt_swiglu_bwd_ref(dg2, du2, g, u, da, 301);
        CHECK_CLOSE("swiglu_bwd dg", dg1, dg2, 301, 1e-6, 1e-5);
        CHECK_CLOSE("swiglu_bwd du", du1, du2, 301, 1e-6, 1e-5);
    }
    static const int at[][4] = {{1, 2, 1, 8}, {17, 6, 2, 8}, {40, 4, 4, 6}, {33, 8, 1, 16}};
    for (size_t k = 0; k < sizeof at / sizeof at[0]; k++) {
        int n = at[k][0], nh = at[k][1], nkv = at[k][2], hd = at[k][3];
        long qn = (long)n * nh * hd, kn = (long)n * nkv * hd;
        float *q = malloc(sizeof(float) * qn), *kt = malloc(sizeof(float) * kn);
        float *vt = malloc(sizeof(float) * kn), *da = malloc(sizeof(float) * qn);
        float *dq1 = malloc(sizeof(float) * qn), *dq2 = malloc(sizeof(float) * qn);
        float *dk1 = malloc(sizeof(float) * kn), *dk2 = malloc(sizeof(float) * kn);
        float *dv1 = malloc(sizeof(float) * kn), *dv2 = malloc(sizeof(float) * kn);
        float *scr = malloc(sizeof(float) * 2 * n * n);
        fill(q, qn, &rs, 2), fill(kt, kn, &rs, 2), fill(vt, kn, &rs, 1), fill(da, qn, &rs, 1);
        lmp_rt_attention_bwd(dq1, dk1, dv1, q, kt, vt, da, n, nh, nkv, hd, scr);
        lmp_rt_attention_bwd_ref(dq2, dk2, dv2, q, kt, vt, da, n, nh, nkv, hd, scr);
        char what[96];
        snprintf(what, sizeof what, "attention_bwd n %d heads %d/%d hd %d: dq", n, nh, nkv, hd);
        CHECK_CLOSE(what, dq1, dq2, qn, 1e-5, 1e-4);
        CHECK_CLOSE("  dk", dk1, dk2, kn, 1e-5, 1e-4);
        CHECK_CLOSE("  dv", dv1, dv2, kn, 1e-5, 1e-4);
        free(q), free(kt), free(vt), free(da), free(dq1), free(dq2), free(dk1), free(dk2);
        free(dv1), free(dv2), free(scr);
    }
}

struct ce_user {
    float scale;
};
static enum lmp_status ce_loss(void *user, int thread, int seq, const int32_t *tokens, int len,
                               const float *logits, int vocab, float *dlogits, double *loss,
                               struct lmp_err *err)
{
    const struct ce_user *u = user;
    *loss = lmp_rt_loss_ce(logits, tokens, len, vocab, u->scale, dlogits);
    return LMP_OK;
}

/* Some gradients only, squared per-sequence gradients, the streaming step, and threads. */
TEST(bwd_partial_squared_step_threads)
{
    struct lmp_model *m = odd_model(1);
    REQUIRE(m);
    const int n_seq = 5, len = 30, V = m->cfg.vocab;
    int32_t tok[5 * 30];
    rand_tokens(tok, n_seq * len, V, 77);
    struct lmp_rt_grads *full = grads_of(m, tok, n_seq, len, NULL, 1, NULL);
    REQUIRE(full);
    /* only layer 1's wq and layer 2's w_down: the backward stops at layer 1 */
    unsigned char *want = calloc((size_t)m->n_tensors, 1);
    want[m->layers[1].wq - m->tensors] = want[m->layers[2].w_down - m->tensors] = 1;
    struct lmp_rt_grads *part = grads_of(m, tok, n_seq, len, want, 3, NULL);
    REQUIRE(part);
    CHECK(part->n_floats == (size_t)(lmp_tensor_nelem(m->layers[1].wq) +
                                     lmp_tensor_nelem(m->layers[2].w_down)));
    CHECK(!lmp_rt_grads_of(part, m, m->layers[0].wq));
    CHECK_CLOSE("partial wq", lmp_rt_grads_of(part, m, m->layers[1].wq),
                lmp_rt_grads_of(full, m, m->layers[1].wq), lmp_tensor_nelem(m->layers[1].wq), 0, 0);
    CHECK_CLOSE("partial down", lmp_rt_grads_of(part, m, m->layers[2].w_down),
                lmp_rt_grads_of(full, m, m->layers[2].w_down),
                lmp_tensor_nelem(m->layers[2].w_down), 0, 0);

    /* lmp_rt_train_step with 1 and 3 threads: equal to each other bit for bit and to the
     * batch forward/backward; squared gradients equal the sum of squares of one-sequence
     * gradients */
    struct ce_user cu = {1.0f / (float)(n_seq * (len - 1))};
    struct lmp_rt_grads *gs[2] = {NULL, NULL}, *sq[2] = {NULL, NULL};
    double loss[2];
    struct lmp_err err = {{0}};
    for (int k = 0; k < 2; k++) {
        struct lmp_rt_train *tr = NULL;
        struct lmp_rt_train_opts o = {.n_threads = k ? 3 : 1};
        REQUIRE(lmp_rt_train_create(m, len, 2, &o, &tr, &err) == LMP_OK);
        REQUIRE(lmp_rt_grads_create(m, NULL, &gs[k], &err) == LMP_OK);
        REQUIRE(lmp_rt_grads_create(m, NULL, &sq[k], &err) == LMP_OK);
        REQUIRE(lmp_rt_train_step(tr, tok, n_seq, len, ce_loss, &cu, gs[k], sq[k], &loss[k],
                                  &err) == LMP_OK);
        lmp_rt_train_free(tr);
    }
    CHECK(loss[0] == loss[1]);
    CHECK(!memcmp(gs[0]->mem, gs[1]->mem, gs[0]->n_floats * sizeof(float)));
    CHECK(!memcmp(sq[0]->mem, sq[1]->mem, sq[0]->n_floats * sizeof(float)));
    CHECK_CLOSE("step vs batch", gs[0]->mem, full->mem, (long)full->n_floats, 1e-7, 1e-5);
    float *sum_sq = calloc(full->n_floats, sizeof(float));
    for (int b = 0; b < n_seq; b++) {
        struct lmp_rt_grads *one = grads_of(m, tok + b * len, 1, len, NULL, 1, NULL);
        REQUIRE(one);
        /* grads_of scales by 1/(len-1); the step by 1/(n_seq*(len-1)) */
        for (size_t i = 0; i < one->n_floats; i++) {
            float v = one->mem[i] / (float)n_seq;
            sum_sq[i] += v * v;
        }
        lmp_rt_grads_free(one);
    }
    CHECK_CLOSE("squared gradients", sq[0]->mem, sum_sq, (long)full->n_floats, 1e-10, 1e-4);
    free(sum_sq);
    for (int k = 0; k < 2; k++) lmp_rt_grads_free(gs[k]), lmp_rt_grads_free(sq[k]);
    lmp_rt_grads_free(full);
    lmp_rt_grads_free(part);
    free(want);
    lmp_model_free(m);
}

TEST(bwd_errors)
{
    struct lmp_model *m = odd_model(0), *m2 = odd_model(1);
    REQUIRE(m && m2);
    struct lmp_err err = {{0}};
    struct lmp_rt_train *tr = NULL;
    struct lmp_rt_grads *g = NULL, *g2 = NULL;
    CHECK(lmp_rt_train_create(m, 0, 1, NULL, &tr, &err) == LMP_ERR_ARG);
    CHECK(lmp_rt_train_create(m, 65, 1, NULL, &tr, &err) == LMP_ERR_ARG && !tr);
    CHECK(lmp_rt_train_create(m, 16, 0, NULL, &tr, &err) == LMP_ERR_ARG);
    REQUIRE(lmp_rt_train_create(m, 16, 2, NULL, &tr, &err) == LMP_OK);
    CHECK(lmp_rt_train_weight(tr, m->layers[1].wq) == m->layers[1].wq->data); /* F32: in place */
    CHECK(lmp_rt_train_weight(tr, m2->layers[1].wq) == NULL);                 /* another model */
    REQUIRE(lmp_rt_grads_create(m, NULL, &g, &err) == LMP_OK);
    REQUIRE(lmp_rt_grads_create(m2, NULL, &g2, &err) == LMP_OK);
    float dl[16 * 61] = {0};
    int32_t tok[3 * 16] = {0};
    CHECK(lmp_rt_train_backward(tr, dl, g, NULL, &err) == LMP_ERR_ARG); /* no forward */
    fprintf(stderr, "    %s\n", err.msg);
    CHECK(lmp_rt_train_forward(tr, tok, 3, 16, NULL, &err) == LMP_ERR_ARG); /* > max_seqs */
    CHECK(lmp_rt_train_forward(tr, tok, 1, 17, NULL, &err) == LMP_ERR_ARG); /* > max_len */
    tok[5] = 61;
    CHECK(lmp_rt_train_forward(tr, tok, 1, 16, NULL, &err) == LMP_ERR_ARG);
    fprintf(stderr, "    %s\n", err.msg);
    CHECK(strstr(err.msg, "61"));
    tok[5] = 0;
    REQUIRE(lmp_rt_train_forward(tr, tok, 1, 16, NULL, &err) == LMP_OK);
    CHECK(lmp_rt_train_backward(tr, dl, g2, NULL, &err) == LMP_ERR_ARG); /* other model */
    CHECK(lmp_rt_train_backward(tr, dl, g, g2, &err) == LMP_ERR_ARG);
    CHECK(lmp_rt_train_backward(tr, dl, g, NULL, &err) == LMP_OK);
    CHECK(lmp_rt_train_step(tr, tok, 1, 16, NULL, NULL, g, NULL, NULL, &err) == LMP_ERR_ARG);
    lmp_rt_grads_free(g);
    lmp_rt_grads_free(g2);
    lmp_rt_train_free(tr);
    lmp_rt_train_free(NULL);
    lmp_rt_grads_free(NULL);
    lmp_model_free(m);
    lmp_model_free(m2);
}
