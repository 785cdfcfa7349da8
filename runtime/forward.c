/* The llama forward pass: per-layer attention (GQA, interleaved RoPE, optional q/k/v bias)
 * and SwiGLU MLP with pre-RMSNorm, over a KV cache held in struct lmp_rt_state. The state
 * owns every buffer, so a forward does not allocate. Packed (Q2..Q8) linear weights go
 * through the fused dequantising kernels of qmatmul.h; other weights that are not F32
 * (F16, BF16, a packed token embedding) are expanded to F32 once, when the state is created,
 * and shared by the states made from it with lmp_rt_state_create_like. */
#include "runtime.h"
#include "formats/qpack.h"
#include "qmatmul.h"

#include <stdlib.h>
#include <string.h>

/* The model's weights as the kernels read them, shared (reference-counted) between states. */
struct rt_weights {
    int refs;
    int n;                  /* model->n_tensors */
    const float **f;        /* (n) F32 data of each tensor read as F32; NULL for others */
    float **owned;          /* (n) buffers expanded here, or NULL */
    struct lmp_qview *qv;   /* (n) packed linear weights: their view (codes == NULL: none) */
};

struct lmp_rt_state {
    const struct lmp_model *m;
    struct rt_weights *w;
    int max_ctx, max_batch;
    int n_threads; /* as given: <= 0 OpenMP default */
    int ref;
    int dim, n_layers, hd, vocab;
    int max_q, max_kv, max_ffn; /* widest layer */
    float *k_cache;             /* per layer l: (n_kv[l], hd, max_ctx), at kv_off[l] */
    float *v_cache;
    size_t *kv_off;  /* (n_layers) */
    int *n_cached;   /* (n_layers): positions valid in each layer's cache */
    float *rope_cs;  /* (max_ctx, hd/2, 2) */
    /* scratch, max_batch rows each */
    float *xb;   /* (max_batch, dim) normed input */
    float *q;    /* (max_batch, max_q) */
    float *k;    /* (max_batch, max_kv) */
    float *v;    /* (max_batch, max_kv) */
    float *att;  /* (max_batch, max_q) attention output */
    float *g;    /* (max_batch, max_ffn) gate, then silu(gate)*up */
    float *u;    /* (max_batch, max_ffn) */
    float *h;    /* (max_batch, dim) residual stream for lmp_rt_forward */
    float *ascr; /* (n_threads, 8, max_ctx) attention scores and probabilities */
    float *qscr; /* scratch of the packed-weight kernels */
    void *mem;   /* one allocation for all the float buffers above */
};

const char *lmp_rt_linear_name(enum lmp_rt_linear w)
{
    switch (w) {
    case LMP_RT_QKV: return "qkv";
    case LMP_RT_O: return "o";
    case LMP_RT_GATE_UP: return "gate_up";
    case LMP_RT_DOWN: return "down";
    case LMP_RT_OUTPUT: return "output";
    default: return "?";
    }
}

/* a += b, overflow-checked; returns 0 on overflow */
static int add_sz(size_t *a, size_t b)
{
    if (*a > SIZE_MAX - b) return 0;
    *a += b;
    return 1;
}
static int mul_sz(size_t a, size_t b, size_t *out)
{
    if (a && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

static void weights_release(struct rt_weights *w)
{
    if (!w || __atomic_sub_fetch(&w->refs, 1, __ATOMIC_ACQ_REL) > 0) return;
    if (w->owned)
        for (int i = 0; i < w->n; i++) free(w->owned[i]);
    free(w->owned);
    free(w->f);
    free(w->qv);
    free(w);
}

/* Points one tensor's data as F32, expands it to F32, or (packed, when the forward only
 * multiplies by it) keeps its packed view. */
static enum lmp_status weight_prep(struct rt_weights *w, const struct lmp_model *m,
                                   const struct lmp_tensor *t, int linear, struct lmp_err *err)
{
    if (!t) return LMP_OK;
    size_t i = (size_t)(t - m->tensors);
    if (i >= (size_t)w->n || w->f[i] || w->qv[i].codes) return LMP_OK; /* tied: done already */
    if (!t->data) return lmp_err_set(err, LMP_ERR_ARG, "tensor %s has no data", t->name);
    int64_t ne = lmp_tensor_nelem(t);
    if (ne <= 0 || (uint64_t)ne > SIZE_MAX / sizeof(float))
        return lmp_err_set(err, LMP_ERR_FORMAT, "tensor %s: bad size", t->name);
    size_t es = lmp_type_elem_size(t->type);
    if (lmp_type_is_float(t->type) && t->nbytes / es < (size_t)ne)
        return lmp_err_set(err, LMP_ERR_FORMAT, "tensor %s: %zu bytes for %lld %s values",
                           t->name, t->nbytes, (long long)ne, lmp_type_name(t->type));
    if (t->type == LMP_TYPE_F32) {
        w->f[i] = t->data;
        return LMP_OK;
    }
    if (linear && lmp_type_is_packed(t->type)) return lmp_qview_from_tensor(&w->qv[i], t, err);
    struct lmp_qview qv;
    enum lmp_status st;
    if (lmp_type_is_packed(t->type) && (st = lmp_qview_from_tensor(&qv, t, err))) return st;
    if (!lmp_type_is_float(t->type) && !lmp_type_is_packed(t->type))
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                           "tensor %s: type %s is not supported by the CPU runtime", t->name,
                           lmp_type_name(t->type));
    float *d = malloc((size_t)ne * sizeof *d);
    if (!d) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory expanding %s", t->name);
    if (lmp_type_is_packed(t->type))
        lmp_qview_dequant(&qv, d);
    else if (t->type == LMP_TYPE_F16)
        for (int64_t k = 0; k < ne; k++) d[k] = lmp_f16_to_f32(((const uint16_t *)t->data)[k]);
    else
        for (int64_t k = 0; k < ne; k++) d[k] = lmp_bf16_to_f32(((const uint16_t *)t->data)[k]);
    w->owned[i] = d;
    w->f[i] = d;
    return LMP_OK;
}

static enum lmp_status weights_make(const struct lmp_model *m, struct rt_weights **out,
                                    struct lmp_err *err)
{
    struct rt_weights *w = calloc(1, sizeof *w);
    if (!w) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    w->refs = 1;
    w->n = m->n_tensors;
    w->f = calloc((size_t)w->n + 1, sizeof *w->f);
    w->owned = calloc((size_t)w->n + 1, sizeof *w->owned);
    w->qv = calloc((size_t)w->n + 1, sizeof *w->qv);
    enum lmp_status st = LMP_OK;
    if (!w->f || !w->owned || !w->qv) st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    /* the embedding is looked up by rows: F32 (a tied head then uses it as F32 too) */
    if (!st) st = weight_prep(w, m, m->tok_embd, 0, err);
    if (!st) st = weight_prep(w, m, m->out, 1, err);
    if (!st) st = weight_prep(w, m, m->out_norm, 0, err);
    for (int l = 0; !st && l < m->cfg.n_layers; l++) {
        const struct lmp_layer *L = &m->layers[l];
        const struct lmp_tensor *vec[] = {L->attn_norm, L->bq, L->bk, L->bv, L->ffn_norm};
        const struct lmp_tensor *mat[] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up,
                                          L->w_down};
        for (size_t i = 0; !st && i < sizeof vec / sizeof vec[0]; i++)
            st = weight_prep(w, m, vec[i], 0, err);
        for (size_t i = 0; !st && i < sizeof mat / sizeof mat[0]; i++)
            st = weight_prep(w, m, mat[i], 1, err);
    }
    if (st) {
        weights_release(w);
        return st;
    }
    *out = w;
    return LMP_OK;
}

static enum lmp_status state_alloc(const struct lmp_model *m, struct rt_weights *w, int max_ctx,
                                   int max_batch, const struct lmp_rt_opts *opts,
                                   struct lmp_rt_state **out, struct lmp_err *err);

enum lmp_status lmp_rt_state_create(const struct lmp_model *m, int max_ctx, int max_batch,
                                    const struct lmp_rt_opts *opts, struct lmp_rt_state **out,
                                    struct lmp_err *err)
{
    *out = NULL;
    const struct lmp_config *c = &m->cfg;
    if (!m->layers || !m->tok_embd || !m->out || !m->out_norm || !c->layer)
        return lmp_err_set(err, LMP_ERR_ARG, "runtime: model is not bound (lmp_model_bind)");
    if (max_ctx < 1 || max_ctx > c->max_ctx)
        return lmp_err_set(err, LMP_ERR_ARG, "runtime: context %d outside [1, %d] (model maximum)",
                           max_ctx, c->max_ctx);
    if (max_batch < 1) return lmp_err_set(err, LMP_ERR_ARG, "runtime: batch %d < 1", max_batch);
    struct rt_weights *w = NULL;
    enum lmp_status st = weights_make(m, &w, err);
    if (st) return st;
    st = state_alloc(m, w, max_ctx, max_batch, opts, out, err);
    weights_release(w); /* the state holds its own reference */
    return st;
}

enum lmp_status lmp_rt_state_create_like(const struct lmp_rt_state *src,
                                         const struct lmp_rt_opts *opts,
                                         struct lmp_rt_state **out, struct lmp_err *err)
{
    *out = NULL;
    struct lmp_rt_opts o = {.n_threads = src->n_threads, .ref = src->ref};
    return state_alloc(src->m, src->w, src->max_ctx, src->max_batch, opts ? opts : &o, out, err);
}

static enum lmp_status state_alloc(const struct lmp_model *m, struct rt_weights *w, int max_ctx,
                                   int max_batch, const struct lmp_rt_opts *opts,
                                   struct lmp_rt_state **out, struct lmp_err *err)
{
    const struct lmp_config *c = &m->cfg;
    if (max_batch > max_ctx) max_batch = max_ctx;
    struct lmp_rt_state *s = calloc(1, sizeof *s);
    if (!s) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    s->m = m;
    s->w = w;
    __atomic_add_fetch(&w->refs, 1, __ATOMIC_ACQ_REL);
    s->max_ctx = max_ctx;
    s->max_batch = max_batch;
    s->n_threads = opts ? opts->n_threads : 0;
    s->ref = opts ? opts->ref : 0;
    s->dim = c->dim;
    s->n_layers = c->n_layers;
    s->hd = c->head_dim;
    s->vocab = c->vocab;
    s->kv_off = calloc((size_t)c->n_layers, sizeof *s->kv_off);
    s->n_cached = calloc((size_t)c->n_layers, sizeof *s->n_cached);
    if (!s->kv_off || !s->n_cached) goto nomem;

    /* sizes in floats, all overflow-checked */
    size_t kv_total = 0;
    for (int l = 0; l < c->n_layers; l++) {
        const struct lmp_layer_cfg *lc = &c->layer[l];
        size_t qd, kvd, kvl;
        if (!mul_sz((size_t)lc->n_heads, (size_t)s->hd, &qd) ||
            !mul_sz((size_t)lc->n_kv_heads, (size_t)s->hd, &kvd) ||
            !mul_sz(kvd, (size_t)max_ctx, &kvl) || qd > INT32_MAX || kvd > INT32_MAX)
            goto nomem;
        s->kv_off[l] = kv_total;
        if (!add_sz(&kv_total, kvl)) goto nomem;
        if ((int)qd > s->max_q) s->max_q = (int)qd;
        if ((int)kvd > s->max_kv) s->max_kv = (int)kvd;
        if (lc->ffn > s->max_ffn) s->max_ffn = lc->ffn;
    }
    size_t B = (size_t)max_batch, nt = (size_t)lmp_rt_threads(s->n_threads);
    size_t qscr = 0; /* the largest scratch a packed weight's kernels ask for */
    for (int i = 0; i < w->n; i++)
        if (w->qv[i].codes) {
            size_t need = lmp_qmatmul_scratch_floats(&w->qv[i], max_batch);
            qscr = need > qscr ? need : qscr;
        }
    size_t sz[13], total = 0;
    int ok = mul_sz(kv_total, 1, &sz[0]) && mul_sz(kv_total, 1, &sz[1]) &&
             mul_sz((size_t)max_ctx, (size_t)s->hd, &sz[2]) && mul_sz(B, (size_t)s->dim, &sz[3]) &&
             mul_sz(B, (size_t)s->max_q, &sz[4]) && mul_sz(B, (size_t)s->max_kv, &sz[5]) &&
             mul_sz(B, (size_t)s->max_kv, &sz[6]) && mul_sz(B, (size_t)s->max_q, &sz[7]) &&
             mul_sz(B, (size_t)s->max_ffn, &sz[8]) && mul_sz(B, (size_t)s->max_ffn, &sz[9]) &&
             mul_sz(B, (size_t)s->dim, &sz[10]) && mul_sz(8 * nt, (size_t)max_ctx, &sz[11]) &&
             mul_sz(qscr, 1, &sz[12]);
    for (int i = 0; ok && i < 13; i++) {
        ok = sz[i] <= SIZE_MAX - 15;
        sz[i] = (sz[i] + 15) & ~(size_t)15; /* keeps every buffer 64-byte aligned */
        ok = ok && add_sz(&total, sz[i]);
    }
    if (!ok || total > SIZE_MAX / sizeof(float)) goto nomem;
    s->mem = aligned_alloc(64, total * sizeof(float) + 64);
    if (!s->mem) goto nomem;
    float *p = s->mem;
    float **dst[13] = {&s->k_cache, &s->v_cache, &s->rope_cs, &s->xb,   &s->q,
                       &s->k,       &s->v,       &s->att,     &s->g,    &s->u,
                       &s->h,       &s->ascr,    &s->qscr};
    for (int i = 0; i < 13; i++) {
        *dst[i] = p;
        p += sz[i];
    }
    /* the cache is read only below n_cached, but keep it defined for tools and sanitizers */
    memset(s->k_cache, 0, kv_total * 2 * sizeof(float));
    lmp_rt_rope_table(s->rope_cs, 0, max_ctx, s->hd, c->rope_theta);
    *out = s;
    return LMP_OK;
nomem:
    lmp_rt_state_free(s);
    return lmp_err_set(err, LMP_ERR_NOMEM,
                       "runtime: out of memory for context %d, batch %d", max_ctx, max_batch);
}

void lmp_rt_state_free(struct lmp_rt_state *s)
{
    if (!s) return;
    weights_release(s->w);
    free(s->mem);
    free(s->kv_off);
    free(s->n_cached);
    free(s);
}

void lmp_rt_reset(struct lmp_rt_state *s)
{
    memset(s->n_cached, 0, (size_t)s->n_layers * sizeof *s->n_cached);
}

int lmp_rt_n_past(const struct lmp_rt_state *s) { return s->n_cached[s->n_layers - 1]; }
int lmp_rt_max_ctx(const struct lmp_rt_state *s) { return s->max_ctx; }
int lmp_rt_max_batch(const struct lmp_rt_state *s) { return s->max_batch; }
const struct lmp_model *lmp_rt_model(const struct lmp_rt_state *s) { return s->m; }

/* F32 data of a weight */
static const float *F(const struct lmp_rt_state *s, const struct lmp_tensor *t)
{
    return t ? s->w->f[t - s->m->tensors] : NULL;
}

static void hook(const struct lmp_rt_hooks *hk, int layer, enum lmp_rt_linear w, const float *x,
                 int n, int in)
{
    if (hk && hk->linear_input) hk->linear_input(hk->user, layer, w, x, n, in);
}

/* kernel selection */
static void matmul(const struct lmp_rt_state *s, float *y, const float *x,
                   const struct lmp_tensor *w, const struct lmp_tensor *b, int n)
{
    int out = (int)w->shape[0], in = (int)w->shape[1];
    const struct lmp_qview *qv = &s->w->qv[w - s->m->tensors];
    if (!qv->codes) {
        (s->ref ? lmp_rt_matmul_ref : lmp_rt_matmul)(y, x, F(s, w), F(s, b), n, in, out,
                                                     s->n_threads);
        return;
    }
    (s->ref ? lmp_qgemm_ref : lmp_qgemm)(qv, x, n, y, s->qscr);
    const float *bias = F(s, b);
    if (bias)
        for (int i = 0; i < n; i++)
            for (int r = 0; r < out; r++) y[(size_t)i * out + r] += bias[r];
}
static void rmsnorm(const struct lmp_rt_state *s, float *y, const float *x,
                    const struct lmp_tensor *w, int n)
{
    (s->ref ? lmp_rt_rmsnorm_ref : lmp_rt_rmsnorm)(y, x, F(s, w), n, s->dim, s->m->cfg.norm_eps);
}

enum lmp_status lmp_rt_embed(struct lmp_rt_state *s, const int32_t *tokens, int n, float *h,
                             struct lmp_err *err)
{
    const float *e = F(s, s->m->tok_embd);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= s->vocab)
            return lmp_err_set(err, LMP_ERR_ARG,
                               "token id %d (at %d) outside the vocabulary [0, %d)",
                               (int)tokens[i], i, s->vocab);
    for (int i = 0; i < n; i++)
        memcpy(h + (size_t)i * s->dim, e + (size_t)tokens[i] * s->dim, (size_t)s->dim * sizeof *h);
    return LMP_OK;
}

/* Copies K or V rows (n, n_kv*hd) into the position-innermost cache (n_kv*hd, max_ctx). */
static void cache_store(float *cache, const float *x, int n, int pos, int kvd, int ld)
{
    for (int i = 0; i < n; i++)
        for (int c = 0; c < kvd; c++) cache[(size_t)c * ld + pos + i] = x[(size_t)i * kvd + c];
}

enum lmp_status lmp_rt_forward_layer(struct lmp_rt_state *s, int layer, float *h, int n, int pos,
                                     const struct lmp_rt_hooks *hooks, struct lmp_err *err)
{
    if (layer < 0 || layer >= s->n_layers)
        return lmp_err_set(err, LMP_ERR_ARG, "runtime: layer %d outside [0, %d)", layer,
                           s->n_layers);
    if (n < 1 || n > s->max_batch)
        return lmp_err_set(err, LMP_ERR_ARG, "runtime: batch of %d tokens outside [1, %d]", n,
                           s->max_batch);
    if (pos < 0 || pos > s->n_cached[layer] || pos > s->max_ctx - n)
        return lmp_err_set(err, LMP_ERR_ARG,
                           "runtime: layer %d: positions %d..%d invalid (%d cached, context %d)",
                           layer, pos, pos + n - 1, s->n_cached[layer], s->max_ctx);
    const struct lmp_model *m = s->m;
    const struct lmp_layer *L = &m->layers[layer];
    const struct lmp_layer_cfg *lc = &m->cfg.layer[layer];
    const int dim = s->dim, hd = s->hd, nh = lc->n_heads, nkv = lc->n_kv_heads, ffn = lc->ffn;
    const int qd = nh * hd, kvd = nkv * hd, ref = s->ref;
    float *kc = s->k_cache + s->kv_off[layer], *vc = s->v_cache + s->kv_off[layer];

    /* attention (given by the caller in a calibration pass: hooks->attn) */
    const float *att = s->att;
    if (hooks && hooks->attn) {
        att = hooks->attn;
        goto have_attention;
    }
    rmsnorm(s, s->xb, h, L->attn_norm, n);
    hook(hooks, layer, LMP_RT_QKV, s->xb, n, dim);
    matmul(s, s->q, s->xb, L->wq, L->bq, n);
    matmul(s, s->k, s->xb, L->wk, L->bk, n);
    matmul(s, s->v, s->xb, L->wv, L->bv, n);
    const float *cs = s->rope_cs + (size_t)pos * hd;
    (ref ? lmp_rt_rope_ref : lmp_rt_rope)(s->q, n, nh, hd, cs);
    (ref ? lmp_rt_rope_ref : lmp_rt_rope)(s->k, n, nkv, hd, cs);
    cache_store(kc, s->k, n, pos, kvd, s->max_ctx);
    cache_store(vc, s->v, n, pos, kvd, s->max_ctx);
    s->n_cached[layer] = pos + n;
    (ref ? lmp_rt_attention_ref : lmp_rt_attention)(s->att, s->q, kc, vc, s->max_ctx, n, pos, nh,
                                                   nkv, hd, s->ascr, s->n_threads);
have_attention:
    hook(hooks, layer, LMP_RT_O, att, n, qd);
    matmul(s, s->xb, att, L->wo, NULL, n);
    for (long i = 0; i < (long)n * dim; i++) h[i] += s->xb[i];

    /* MLP */
    rmsnorm(s, s->xb, h, L->ffn_norm, n);
    hook(hooks, layer, LMP_RT_GATE_UP, s->xb, n, dim);
    matmul(s, s->g, s->xb, L->w_gate, NULL, n);
    matmul(s, s->u, s->xb, L->w_up, NULL, n);
    (ref ? lmp_rt_swiglu_ref : lmp_rt_swiglu)(s->g, s->u, (long)n * ffn);
    hook(hooks, layer, LMP_RT_DOWN, s->g, n, ffn);
    matmul(s, s->xb, s->g, L->w_down, NULL, n);
    for (long i = 0; i < (long)n * dim; i++) h[i] += s->xb[i];
    return LMP_OK;
}

enum lmp_status lmp_rt_head(struct lmp_rt_state *s, const float *h, int n, float *logits,
                            const struct lmp_rt_hooks *hooks, struct lmp_err *err)
{
    (void)err;
    for (int i0 = 0; i0 < n; i0 += s->max_batch) {
        int b = n - i0 < s->max_batch ? n - i0 : s->max_batch;
        rmsnorm(s, s->xb, h + (size_t)i0 * s->dim, s->m->out_norm, b);
        hook(hooks, s->n_layers, LMP_RT_OUTPUT, s->xb, b, s->dim);
        matmul(s, logits + (size_t)i0 * s->vocab, s->xb, s->m->out, NULL, b);
    }
    return LMP_OK;
}

static enum lmp_status check_range(const struct lmp_rt_state *s, int n, int pos,
                                   struct lmp_err *err)
{
    if (n < 1 || pos < 0 || pos > s->max_ctx - n)
        return lmp_err_set(err, LMP_ERR_ARG,
                           "runtime: positions %d..%d outside the context of %d tokens", pos,
                           pos + n - 1, s->max_ctx);
    return LMP_OK;
}

enum lmp_status lmp_rt_forward_hidden(struct lmp_rt_state *s, const int32_t *tokens, int n,
                                      int pos, int n_layers, float *h,
                                      const struct lmp_rt_hooks *hooks, struct lmp_err *err)
{
    enum lmp_status st;
    if ((st = check_range(s, n, pos, err))) return st;
    if (n_layers < 0 || n_layers > s->n_layers)
        return lmp_err_set(err, LMP_ERR_ARG, "runtime: %d layers requested, model has %d", n_layers,
                           s->n_layers);
    if ((st = lmp_rt_embed(s, tokens, n, h, err))) return st;
    /* Causal: a batch needs only earlier positions, so batches may go through all layers
     * one after the other. */
    for (int i0 = 0; i0 < n; i0 += s->max_batch) {
        int b = n - i0 < s->max_batch ? n - i0 : s->max_batch;
        for (int l = 0; l < n_layers; l++)
            if ((st = lmp_rt_forward_layer(s, l, h + (size_t)i0 * s->dim, b, pos + i0, hooks, err)))
                return st;
    }
    return LMP_OK;
}

enum lmp_status lmp_rt_forward(struct lmp_rt_state *s, const int32_t *tokens, int n, int pos,
                               float *logits, const struct lmp_rt_hooks *hooks,
                               struct lmp_err *err)
{
    enum lmp_status st;
    if ((st = check_range(s, n, pos, err))) return st;
    for (int i0 = 0; i0 < n; i0 += s->max_batch) {
        int b = n - i0 < s->max_batch ? n - i0 : s->max_batch;
        st = lmp_rt_forward_hidden(s, tokens + i0, b, pos + i0, s->n_layers, s->h, hooks, err);
        if (st) return st;
        if (logits &&
            (st = lmp_rt_head(s, s->h, b, logits + (size_t)i0 * s->vocab, hooks, err)))
            return st;
    }
    return LMP_OK;
}
