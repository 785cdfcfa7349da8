/* Test models built in memory for tests/test_runtime.c and tests/test_eval.c: the tensor
 * order of tests/gen_runtime_fixture.py, weights from that fixture or random. */
#ifndef LMP_TEST_RTMODEL_H
#define LMP_TEST_RTMODEL_H

#include "test.h"
#include "formats/model.h"

#include <stdio.h>
#include <stdlib.h>

/* One layer shape of a test model. */
struct tl {
    int heads, kv, ffn;
};

/* Builds a model with the tensor order of tests/gen_runtime_fixture.py from w (NULL: random
 * weights from seed). */
static inline struct lmp_model *build_model(int D, int HD, int V, int nl, const struct tl *ls,
                                            int bias, int tied, float theta, float eps,
                                            int max_ctx, const float *w, unsigned long long seed)
{
    struct lmp_model *m = lmp_model_new();
    struct lmp_err err = {{0}};
    if (!m) return NULL;
    struct lmp_config *c = &m->cfg;
    c->dim = D;
    c->head_dim = HD;
    c->vocab = V;
    c->n_layers = nl;
    c->max_ctx = max_ctx;
    c->rope_theta = theta;
    c->norm_eps = eps;
    c->tied = tied;
    c->attn_bias = bias;
    c->layer = calloc((size_t)nl, sizeof *c->layer);
    for (int l = 0; l < nl; l++) {
        c->layer[l].n_heads = ls[l].heads;
        c->layer[l].n_kv_heads = ls[l].kv;
        c->layer[l].ffn = ls[l].ffn;
    }
    long off = 0;
    unsigned long long rs = seed;
#define ADD(name, nd, r, cc, norm)                                                          \
    do {                                                                                   \
        struct lmp_tensor *t_ = lmp_model_add_tensor(m, name, LMP_TYPE_F32, nd, r, cc);    \
        if (!t_) { lmp_model_free(m); return NULL; }                                       \
        float *d_ = t_->data;                                                              \
        for (long k_ = 0; k_ < (long)(r) * (nd == 2 ? (cc) : 1); k_++)                    \
            d_[k_] = w ? w[off++] : (norm ? 1.0f + 0.2f * lmp_test_randf(&rs)              \
                                          : 0.5f * lmp_test_randf(&rs));                   \
    } while (0)
    char nm[LMP_NAME_MAX];
    ADD(LMP_N_TOKEMBD, 2, V, D, 0);
    for (int l = 0; l < nl; l++) {
        int q = ls[l].heads * HD, kv = ls[l].kv * HD, F = ls[l].ffn;
#define L(sfx, nd, r, cc, norm)                                                             \
        snprintf(nm, sizeof nm, "blk.%d.%s", l, sfx);                                      \
        ADD(nm, nd, r, cc, norm)
        L(LMP_N_ATTN_NORM, 1, D, 1, 1);
        L(LMP_N_WQ, 2, q, D, 0);
        if (bias) { L(LMP_N_BQ, 1, q, 1, 0); }
        L(LMP_N_WK, 2, kv, D, 0);
        if (bias) { L(LMP_N_BK, 1, kv, 1, 0); }
        L(LMP_N_WV, 2, kv, D, 0);
        if (bias) { L(LMP_N_BV, 1, kv, 1, 0); }
        L(LMP_N_WO, 2, D, q, 0);
        L(LMP_N_FFN_NORM, 1, D, 1, 1);
        L(LMP_N_GATE, 2, F, D, 0);
        L(LMP_N_UP, 2, F, D, 0);
        L(LMP_N_DOWN, 2, D, F, 0);
#undef L
    }
    ADD(LMP_N_OUTNORM, 1, D, 1, 1);
    if (!tied) ADD(LMP_N_OUTPUT, 2, V, D, 0);
#undef ADD
    if (lmp_model_bind(m, "test-model", &err) != LMP_OK) {
        lmp_test_fail(__FILE__, __LINE__, "bind: %s", err.msg);
        lmp_model_free(m);
        return NULL;
    }
    return m;
}

/* The model of tests/data/rt_tiny (weights.npy), or NULL. */
static inline struct lmp_model *tiny_model(void)
{
    float *w = NULL;
    int is_int, nd;
    long shape[4];
    if (lmp_test_read_npy("tests/data/rt_tiny/weights.npy", (void **)&w, &is_int, shape, &nd) !=
        7576)
        return NULL;
    static const struct tl ls[] = {{6, 2, 20}, {4, 4, 13}};
    struct lmp_model *m = build_model(24, 4, 40, 2, ls, 1, 0, 500.0f, 1e-6f, 16, w, 0);
    free(w);
    return m;
}

#endif
