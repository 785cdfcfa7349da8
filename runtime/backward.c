/* Training forward (activations kept) and backward of the llama model, per sequence, with
 * sequences spread over OpenMP threads. See backward.h for the contract.
 *
 * Per layer, with x the layer input (len, dim) and n = len:
 *   xn1 = rmsnorm(x) * attn_norm          q = rope(xn1 Wq^T + bq), k = rope(xn1 Wk^T + bk)
 *   v = xn1 Wv^T + bv                     att = causal_attention(q, k, v)
 *   h1 = x + att Wo^T                     xn2 = rmsnorm(h1) * ffn_norm
 *   g = xn2 Wg^T, u = xn2 Wu^T            a = silu(g) * u
 *   out = h1 + a Wd^T
 * and the backward runs these in reverse: for y = x W^T, dW += dy^T x and dx = dy W (GEMMs),
 * RoPE's backward is the rotation by the opposite angle, attention's recomputes the
 * probabilities head by head. */
#include "backward.h"
#include "formats/qpack.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* ---- sizes ---------------------------------------------------------------------------- */

/* A running total of float buffers, each rounded to 16 floats (64 bytes); ok drops to 0 on
 * overflow. */
struct sz {
    size_t total;
    int ok;
};
static size_t take(struct sz *s, size_t a, size_t b)
{
    size_t off = s->total;
    if (!s->ok || (a && b > SIZE_MAX / a)) {
        s->ok = 0;
        return 0;
    }
    size_t n = a * b;
    if (n > SIZE_MAX - 16 - s->total) {
        s->ok = 0;
        return 0;
    }
    s->total += (n + 15) & ~(size_t)15;
    return off;
}

/* ---- gradient buffers ------------------------------------------------------------------ */

enum lmp_status lmp_rt_grads_create(const struct lmp_model *m, const unsigned char *want,
                                    struct lmp_rt_grads **out, struct lmp_err *err)
{
    *out = NULL;
    struct lmp_rt_grads *g = calloc(1, sizeof *g);
    if (!g) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    g->n = m->n_tensors;
    g->g = calloc((size_t)g->n + 1, sizeof *g->g);
    g->off = calloc((size_t)g->n + 1, sizeof *g->off);
    if (!g->g || !g->off) {
        lmp_rt_grads_free(g);
        return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    }
    size_t total = 0;
    for (int i = 0; i < g->n; i++) {
        const struct lmp_tensor *t = &m->tensors[i];
        int grad_ok = lmp_type_is_float(t->type) || lmp_type_is_packed(t->type);
        if (want ? !want[i] : !grad_ok) continue;
        if (!grad_ok) {
            lmp_rt_grads_free(g);
            return lmp_err_set(err, LMP_ERR_ARG, "tensor %s (%s) cannot have a gradient",
                               t->name, lmp_type_name(t->type));
        }
        int64_t ne = lmp_tensor_nelem(t);
        if (ne < 0 || (uint64_t)ne > (SIZE_MAX / sizeof(float) - total) / 2) {
            lmp_rt_grads_free(g);
            return lmp_err_set(err, LMP_ERR_NOMEM, "gradient of %s: size overflow", t->name);
        }
        g->off[i] = total;
        g->g[i] = (float *)1; /* marks "wanted"; pointed into mem below */
        total += (size_t)ne;
    }
    g->n_floats = total;
    g->mem = calloc(total ? total : 1, sizeof *g->mem);
    if (!g->mem) {
        lmp_rt_grads_free(g);
        return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory for %zu gradient values", total);
    }
    for (int i = 0; i < g->n; i++)
        if (g->g[i]) g->g[i] = g->mem + g->off[i];
    *out = g;
    return LMP_OK;
}

void lmp_rt_grads_zero(struct lmp_rt_grads *g)
{
    memset(g->mem, 0, g->n_floats * sizeof *g->mem);
}

void lmp_rt_grads_scale(struct lmp_rt_grads *g, float s)
{
    for (size_t i = 0; i < g->n_floats; i++) g->mem[i] *= s;
}

void lmp_rt_grads_free(struct lmp_rt_grads *g)
{
    if (!g) return;
    free(g->g);
    free(g->off);
    free(g->mem);
    free(g);
}

float *lmp_rt_grads_of(const struct lmp_rt_grads *g, const struct lmp_model *m,
                       const struct lmp_tensor *t)
{
    if (!g || !t || t < m->tensors || t >= m->tensors + m->n_tensors) return NULL;
    size_t i = (size_t)(t - m->tensors);
    return i < (size_t)g->n ? g->g[i] : NULL;
}

/* ---- backward kernels ------------------------------------------------------------------ */

void lmp_rt_rmsnorm_bwd(float *dx, float *dw, const float *x, const float *w, const float *dy,
                        int n, int dim, float eps)
{
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * dim, *dyi = dy + (size_t)i * dim;
        float *dxi = dx + (size_t)i * dim;
        float ss = 0, dot = 0;
#pragma omp simd reduction(+ : ss, dot)
        for (int c = 0; c < dim; c++) {
            ss += xi[c] * xi[c];
            dot += dyi[c] * w[c] * xi[c];
        }
        float r = 1.0f / sqrtf(ss / (float)dim + eps);
        float k = dot * r * r * r / (float)dim;
#pragma omp simd
        for (int c = 0; c < dim; c++) dxi[c] += r * dyi[c] * w[c] - k * xi[c];
        if (dw)
#pragma omp simd
            for (int c = 0; c < dim; c++) dw[c] += dyi[c] * xi[c] * r;
    }
}

void lmp_rt_rmsnorm_bwd_ref(float *dx, float *dw, const float *x, const float *w,
                            const float *dy, int n, int dim, float eps)
{
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * dim, *dyi = dy + (size_t)i * dim;
        double ss = 0, dot = 0;
        for (int c = 0; c < dim; c++) {
            ss += (double)xi[c] * xi[c];
            dot += (double)dyi[c] * w[c] * xi[c];
        }
        double r = 1.0 / sqrt(ss / dim + eps);
        for (int c = 0; c < dim; c++) {
            dx[(size_t)i * dim + c] += (float)(r * dyi[c] * w[c] - dot * r * r * r / dim * xi[c]);
            if (dw) dw[c] += (float)(dyi[c] * xi[c] * r);
        }
    }
}

void lmp_rt_swiglu_bwd(float *dg, float *du, const float *g, const float *u, const float *da,
                       long count)
{
#pragma omp simd
    for (long i = 0; i < count; i++) {
        float s = 1.0f / (1.0f + expf(-g[i]));
        float si = g[i] * s;
        du[i] = da[i] * si;
        dg[i] = da[i] * u[i] * (s + si * (1.0f - s));
    }
}

void lmp_rt_swiglu_bwd_ref(float *dg, float *du, const float *g, const float *u,
                           const float *da, long count)
{
    for (long i = 0; i < count; i++) {
        double s = 1.0 / (1.0 + exp(-(double)g[i]));
        du[i] = (float)(da[i] * g[i] * s);
        dg[i] = (float)(da[i] * u[i] * s * (1.0 + g[i] * (1.0 - s)));
    }
}

/* Row i of S (n, n): causal softmax in place over j <= i, zero above. */
static void softmax_causal_row(float *s, int i, int n)
{
    float mx = -INFINITY, sum = 0;
    for (int j = 0; j <= i; j++) mx = s[j] > mx ? s[j] : mx;
    for (int j = 0; j <= i; j++) sum += s[j] = expf(s[j] - mx);
    float inv = 1.0f / sum;
    for (int j = 0; j <= i; j++) s[j] *= inv;
    for (int j = i + 1; j < n; j++) s[j] = 0;
}

void lmp_rt_attention_bwd(float *dq, float *dkt, float *dvt, const float *q, const float *kt,
                          const float *vt, const float *datt, int n, int n_heads, int n_kv,
                          int hd, float *scratch)
{
    const int group = n_heads / n_kv, qd = n_heads * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    float *P = scratch, *dS = scratch + (size_t)n * n;
    memset(dkt, 0, (size_t)n_kv * hd * n * sizeof *dkt);
    memset(dvt, 0, (size_t)n_kv * hd * n * sizeof *dvt);
    for (int h = 0; h < n_heads; h++) {
        const int kh = h / group;
        const float *Qh = q + (size_t)h * hd, *dOh = datt + (size_t)h * hd;
        const float *Kt = kt + (size_t)kh * hd * n, *Vt = vt + (size_t)kh * hd * n;
        /* P = softmax(scale Q K^T), dP = dO V^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, hd, scale, Qh, qd, Kt, n,
                    0.0f, P, n);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, hd, 1.0f, dOh, qd, Vt, n,
                    0.0f, dS, n);
        for (int i = 0; i < n; i++) {
            float *p = P + (size_t)i * n, *d = dS + (size_t)i * n;
            softmax_causal_row(p, i, n);
            float D = 0;
            for (int j = 0; j <= i; j++) D += p[j] * d[j];
            for (int j = 0; j <= i; j++) d[j] = p[j] * (d[j] - D) * scale;
            for (int j = i + 1; j < n; j++) d[j] = 0;
        }
        /* dQ = dS K, dK^T += Q^T dS, dV^T += dO^T P */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, hd, n, 1.0f, dS, n, Kt, n, 0.0f,
                    dq + (size_t)h * hd, qd);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, hd, n, n, 1.0f, Qh, qd, dS, n, 1.0f,
                    dkt + (size_t)kh * hd * n, n);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, hd, n, n, 1.0f, dOh, qd, P, n, 1.0f,
                    dvt + (size_t)kh * hd * n, n);
    }
}

void lmp_rt_attention_bwd_ref(float *dq, float *dkt, float *dvt, const float *q,
                              const float *kt, const float *vt, const float *datt, int n,
                              int n_heads, int n_kv, int hd, float *scratch)
{
    const int group = n_heads / n_kv, qd = n_heads * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    float *p = scratch, *dp = scratch + n;
    memset(dkt, 0, (size_t)n_kv * hd * n * sizeof *dkt);
    memset(dvt, 0, (size_t)n_kv * hd * n * sizeof *dvt);
    for (int h = 0; h < n_heads; h++) {
        const int kh = h / group;
        const float *Kt = kt + (size_t)kh * hd * n, *Vt = vt + (size_t)kh * hd * n;
        float *dKt = dkt + (size_t)kh * hd * n, *dVt = dvt + (size_t)kh * hd * n;
        for (int i = 0; i < n; i++) {
            const float *qi = q + (size_t)i * qd + (size_t)h * hd;
            const float *doi = datt + (size_t)i * qd + (size_t)h * hd;
            float *dqi = dq + (size_t)i * qd + (size_t)h * hd;
            for (int j = 0; j < n; j++) {
                float a = 0, b = 0;
                for (int d = 0; d < hd; d++) {
                    a += qi[d] * Kt[(size_t)d * n + j];
                    b += doi[d] * Vt[(size_t)d * n + j];
                }
                p[j] = a * scale;
                dp[j] = b;
            }
            softmax_causal_row(p, i, n);
            float D = 0;
            for (int j = 0; j <= i; j++) D += p[j] * dp[j];
            for (int d = 0; d < hd; d++) dqi[d] = 0;
            for (int j = 0; j <= i; j++) {
                float ds = p[j] * (dp[j] - D) * scale;
                for (int d = 0; d < hd; d++) {
                    dqi[d] += ds * Kt[(size_t)d * n + j];
                    dKt[(size_t)d * n + j] += ds * qi[d];
                    dVt[(size_t)d * n + j] += p[j] * doi[d];
                }
            }
        }
    }
}

/* ---- the context ----------------------------------------------------------------------- */

/* One sequence's activations: per layer l, rows of the sequence (max_len of them). */
struct ws {
    int len;
    int32_t *tok;     /* (max_len) */
    float *hin;       /* (n_layers + 1, max_len, dim): input of layer l; [n_layers]: final h */
    float *xn1, *h1, *xn2; /* (n_layers, max_len, dim) */
    float *q, *att;   /* layer l at oq[l]: (len, qd_l), q after RoPE */
    float *kt, *vt;   /* layer l at okv[l]: (kvd_l, len), K after RoPE */
    float *g, *u, *a; /* layer l at of[l]: (len, ffn_l): gate, up, silu(gate) * up */
    float *xnf;       /* (max_len, dim) normed input of the head */
};

/* One thread's scratch. */
struct thr {
    float *dh, *dxn;            /* (max_len, dim) */
    float *datt, *dq;           /* (max_len, max_q) */
    float *dkt, *dvt, *dk, *dv; /* (max_kv, max_len) / (max_len, max_kv) */
    float *da, *dg, *du;        /* (max_len, max_ffn) */
    float *pp;                  /* (2, max_len, max_len) */
    float *ascr;                /* (8, max_len) forward attention scratch */
    float *kv;                  /* (max_len, max_kv) K or V rows before transposing */
    float *gs;                  /* (gs_n) one sequence's gradients */
    size_t gs_n;
    float *lg, *dlg;            /* (max_len, vocab) lmp_rt_train_step's logits, dlogits */
};

struct lmp_rt_train {
    const struct lmp_model *m;
    int max_len, max_seqs, n_thr, n_threads;
    int dim, hd, nl, vocab;
    const float **f;  /* (n_tensors) F32 values of each tensor the forward reads */
    float **owned;    /* (n_tensors) expanded copies, or NULL */
    size_t *oq, *okv, *of; /* (n_layers) offsets of layer l in a workspace's q/att, kt/vt, g/u/a */
    float *cs, *ics;  /* (max_len, hd) RoPE table and its inverse (sines negated) */
    struct ws *ws;    /* (max_seqs) */
    struct thr *th;   /* (n_thr) */
    void *ws_mem, *th_mem;
    int32_t *tok_mem;
    int n_seq, len;   /* sequences held by the last lmp_rt_train_forward (0: none) */
};

static enum lmp_status prep_weight(struct lmp_rt_train *tr, const struct lmp_tensor *t,
                                   struct lmp_err *err)
{
    if (!t) return LMP_OK;
    size_t i = (size_t)(t - tr->m->tensors);
    if (tr->f[i]) return LMP_OK; /* tied */
    if (!t->data) return lmp_err_set(err, LMP_ERR_ARG, "tensor %s has no data", t->name);
    if (t->type == LMP_TYPE_F32) {
        tr->f[i] = t->data;
        return LMP_OK;
    }
    if (!lmp_type_is_float(t->type) && !lmp_type_is_packed(t->type))
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "tensor %s: type %s is not supported",
                           t->name, lmp_type_name(t->type));
    int64_t ne = lmp_tensor_nelem(t);
    if (ne <= 0 || (uint64_t)ne > SIZE_MAX / sizeof(float))
        return lmp_err_set(err, LMP_ERR_NOMEM, "tensor %s: size overflow", t->name);
    struct lmp_qview qv;
    enum lmp_status st;
    if (lmp_type_is_packed(t->type) && (st = lmp_qview_from_tensor(&qv, t, err))) return st;
    float *d = malloc((size_t)ne * sizeof *d);
    if (!d) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory expanding %s", t->name);
    if (lmp_type_is_packed(t->type))
        lmp_qview_dequant(&qv, d);
    else
        for (int64_t k = 0; k < ne; k++)
            d[k] = lmp_tensor_get_f32(t, k / t->shape[1], k % t->shape[1]);
    tr->owned[i] = d;
    tr->f[i] = d;
    return LMP_OK;
}

void lmp_rt_train_free(struct lmp_rt_train *tr)
{
    if (!tr) return;
    if (tr->owned)
        for (int i = 0; i < tr->m->n_tensors; i++) free(tr->owned[i]);
    free(tr->owned);
    free(tr->f);
    free(tr->oq);
    free(tr->okv);
    free(tr->of);
    free(tr->cs);
    free(tr->ics);
    if (tr->th)
        for (int t = 0; t < tr->n_thr; t++) {
            free(tr->th[t].gs);
            free(tr->th[t].lg);
            free(tr->th[t].dlg);
        }
    free(tr->th);
    free(tr->ws);
    free(tr->ws_mem);
    free(tr->th_mem);
    free(tr->tok_mem);
    free(tr);
}

enum lmp_status lmp_rt_train_create(const struct lmp_model *m, int max_len, int max_seqs,
                                    const struct lmp_rt_train_opts *opts,
                                    struct lmp_rt_train **out, struct lmp_err *err)
{
    *out = NULL;
    const struct lmp_config *c = &m->cfg;
    if (!m->layers || !m->tok_embd || !m->out || !m->out_norm || !c->layer)
        return lmp_err_set(err, LMP_ERR_ARG, "backward: model is not bound (lmp_model_bind)");
    if (max_len < 1 || max_len > c->max_ctx)
        return lmp_err_set(err, LMP_ERR_ARG, "backward: length %d outside [1, %d] (model maximum)",
                           max_len, c->max_ctx);
    if (max_seqs < 1 || max_seqs > 1 << 20)
        return lmp_err_set(err, LMP_ERR_ARG, "backward: %d sequences per batch", max_seqs);
    struct lmp_rt_train *tr = calloc(1, sizeof *tr);
    if (!tr) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    tr->m = m;
    tr->max_len = max_len;
    tr->max_seqs = max_seqs;
    tr->n_threads = opts ? opts->n_threads : 0;
    int nt = lmp_rt_threads(tr->n_threads);
    tr->n_thr = nt < max_seqs ? nt : max_seqs;
    tr->dim = c->dim;
    tr->hd = c->head_dim;
    tr->nl = c->n_layers;
    tr->vocab = c->vocab;
    enum lmp_status st = LMP_OK;
    const size_t L = (size_t)max_len, D = (size_t)c->dim, nl = (size_t)c->n_layers;
    tr->f = calloc((size_t)m->n_tensors + 1, sizeof *tr->f);
    tr->owned = calloc((size_t)m->n_tensors + 1, sizeof *tr->owned);
    tr->oq = calloc(nl, sizeof *tr->oq);
    tr->okv = calloc(nl, sizeof *tr->okv);
    tr->of = calloc(nl, sizeof *tr->of);
    tr->ws = calloc((size_t)max_seqs, sizeof *tr->ws);
    tr->th = calloc((size_t)tr->n_thr, sizeof *tr->th);
    tr->cs = malloc(L * (size_t)tr->hd * sizeof *tr->cs);
    tr->ics = malloc(L * (size_t)tr->hd * sizeof *tr->ics);
    if (!tr->f || !tr->owned || !tr->oq || !tr->okv || !tr->of || !tr->ws || !tr->th ||
        !tr->cs || !tr->ics) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if ((st = prep_weight(tr, m->tok_embd, err)) || (st = prep_weight(tr, m->out, err)) ||
        (st = prep_weight(tr, m->out_norm, err)))
        goto fail;
    int maxq = 0, maxkv = 0, maxf = 0;
    struct sz lq = {0, 1}, lkv = {0, 1}, lf = {0, 1};
    for (int l = 0; l < c->n_layers; l++) {
        const struct lmp_layer *Ly = &m->layers[l];
        const struct lmp_tensor *ts[] = {Ly->attn_norm, Ly->wq, Ly->wk, Ly->wv, Ly->wo,
                                         Ly->bq, Ly->bk, Ly->bv, Ly->ffn_norm, Ly->w_gate,
                                         Ly->w_up, Ly->w_down};
        for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++)
            if ((st = prep_weight(tr, ts[k], err))) goto fail;
        const struct lmp_layer_cfg *lc = &c->layer[l];
        int q = lc->n_heads * tr->hd, kv = lc->n_kv_heads * tr->hd;
        maxq = q > maxq ? q : maxq;
        maxkv = kv > maxkv ? kv : maxkv;
        maxf = lc->ffn > maxf ? lc->ffn : maxf;
        tr->oq[l] = take(&lq, L, (size_t)q);
        tr->okv[l] = take(&lkv, L, (size_t)kv);
        tr->of[l] = take(&lf, L, (size_t)lc->ffn);
    }
    /* a workspace */
    struct sz w = {0, 1};
    size_t o_hin = take(&w, (nl + 1) * L, D), o_xn1 = take(&w, nl * L, D),
           o_h1 = take(&w, nl * L, D), o_xn2 = take(&w, nl * L, D), o_q = take(&w, lq.total, 1),
           o_att = take(&w, lq.total, 1), o_kt = take(&w, lkv.total, 1),
           o_vt = take(&w, lkv.total, 1), o_g = take(&w, lf.total, 1),
           o_u = take(&w, lf.total, 1), o_a = take(&w, lf.total, 1), o_xnf = take(&w, L, D);
    /* a thread's scratch */
    struct sz t = {0, 1};
    size_t o_dh = take(&t, L, D), o_dxn = take(&t, L, D), o_datt = take(&t, L, (size_t)maxq),
           o_dq = take(&t, L, (size_t)maxq), o_dkt = take(&t, L, (size_t)maxkv),
           o_dvt = take(&t, L, (size_t)maxkv), o_dk = take(&t, L, (size_t)maxkv),
           o_dv = take(&t, L, (size_t)maxkv), o_da = take(&t, L, (size_t)maxf),
           o_dg = take(&t, L, (size_t)maxf), o_du = take(&t, L, (size_t)maxf),
           o_pp = take(&t, 2 * L, L), o_ascr = take(&t, 8, L), o_kv = take(&t, L, (size_t)maxkv);
    size_t wbytes = 0, tbytes = 0;
    int ok = lq.ok && lkv.ok && lf.ok && w.ok && t.ok && 2 * L <= SIZE_MAX / L &&
             w.total <= SIZE_MAX / sizeof(float) / (size_t)max_seqs &&
             t.total <= SIZE_MAX / sizeof(float) / (size_t)tr->n_thr;
    if (ok) {
        wbytes = w.total * sizeof(float);
        tbytes = t.total * sizeof(float);
        tr->ws_mem = aligned_alloc(64, wbytes * (size_t)max_seqs + 64);
        tr->th_mem = aligned_alloc(64, tbytes * (size_t)tr->n_thr + 64);
        tr->tok_mem = malloc(L * (size_t)max_seqs * sizeof *tr->tok_mem);
    }
    if (!ok || !tr->ws_mem || !tr->th_mem || !tr->tok_mem) {
        st = lmp_err_set(err, LMP_ERR_NOMEM,
                         "backward: out of memory for %d sequences of %d tokens", max_seqs,
                         max_len);
        goto fail;
    }
    for (int s = 0; s < max_seqs; s++) {
        float *b = (float *)((char *)tr->ws_mem + wbytes * (size_t)s);
        struct ws *x = &tr->ws[s];
        x->tok = tr->tok_mem + L * (size_t)s;
        x->hin = b + o_hin, x->xn1 = b + o_xn1, x->h1 = b + o_h1, x->xn2 = b + o_xn2;
        x->q = b + o_q, x->att = b + o_att, x->kt = b + o_kt, x->vt = b + o_vt;
        x->g = b + o_g, x->u = b + o_u, x->a = b + o_a, x->xnf = b + o_xnf;
    }
    for (int s = 0; s < tr->n_thr; s++) {
        float *b = (float *)((char *)tr->th_mem + tbytes * (size_t)s);
        struct thr *x = &tr->th[s];
        x->dh = b + o_dh, x->dxn = b + o_dxn, x->datt = b + o_datt, x->dq = b + o_dq;
        x->dkt = b + o_dkt, x->dvt = b + o_dvt, x->dk = b + o_dk, x->dv = b + o_dv;
        x->da = b + o_da, x->dg = b + o_dg, x->du = b + o_du, x->pp = b + o_pp;
        x->ascr = b + o_ascr, x->kv = b + o_kv;
    }
    lmp_rt_rope_table(tr->cs, 0, max_len, tr->hd, c->rope_theta);
    for (size_t k = 0; k < L * (size_t)tr->hd; k++) tr->ics[k] = (k & 1) ? -tr->cs[k] : tr->cs[k];
    *out = tr;
    return LMP_OK;
fail:
    lmp_rt_train_free(tr);
    return st;
}

/* F32 values of a tensor (NULL for an absent optional one) */
static const float *F(const struct lmp_rt_train *tr, const struct lmp_tensor *t)
{
    return t ? tr->f[t - tr->m->tensors] : NULL;
}

float *lmp_rt_train_weight(struct lmp_rt_train *tr, const struct lmp_tensor *t)
{
    const struct lmp_model *m = tr->m;
    if (!t || t < m->tensors || t >= m->tensors + m->n_tensors) return NULL;
    return (float *)tr->f[t - m->tensors];
}

/* x (n, c) -> xt (c, n) */
static void transpose(float *xt, const float *x, int n, int c)
{
    for (int i = 0; i < n; i++)
        for (int j = 0; j < c; j++) xt[(size_t)j * n + i] = x[(size_t)i * c + j];
}

/* ---- one sequence ---------------------------------------------------------------------- */

static void seq_forward(const struct lmp_rt_train *tr, struct ws *w, struct thr *th,
                        const int32_t *tok, int n, float *logits)
{
    const struct lmp_model *m = tr->m;
    const int D = tr->dim, hd = tr->hd;
    const size_t LD = (size_t)tr->max_len * D;
    const float eps = m->cfg.norm_eps;
    const float *E = F(tr, m->tok_embd);
    w->len = n;
    memcpy(w->tok, tok, (size_t)n * sizeof *tok);
    for (int i = 0; i < n; i++)
        memcpy(w->hin + (size_t)i * D, E + (size_t)tok[i] * D, (size_t)D * sizeof(float));
    for (int l = 0; l < tr->nl; l++) {
        const struct lmp_layer *Ly = &m->layers[l];
        const struct lmp_layer_cfg *lc = &m->cfg.layer[l];
        const int nh = lc->n_heads, nkv = lc->n_kv_heads, ffn = lc->ffn;
        const int qd = nh * hd, kvd = nkv * hd;
        const float *x = w->hin + l * LD;
        float *xn1 = w->xn1 + l * LD, *h1 = w->h1 + l * LD, *xn2 = w->xn2 + l * LD;
        float *hout = w->hin + (l + 1) * LD;
        float *q = w->q + tr->oq[l], *att = w->att + tr->oq[l];
        float *kt = w->kt + tr->okv[l], *vt = w->vt + tr->okv[l];
        float *g = w->g + tr->of[l], *u = w->u + tr->of[l], *a = w->a + tr->of[l];

        lmp_rt_rmsnorm(xn1, x, F(tr, Ly->attn_norm), n, D, eps);
        lmp_rt_matmul(q, xn1, F(tr, Ly->wq), F(tr, Ly->bq), n, D, qd, 1);
        lmp_rt_rope(q, n, nh, hd, tr->cs);
        lmp_rt_matmul(th->kv, xn1, F(tr, Ly->wk), F(tr, Ly->bk), n, D, kvd, 1);
        lmp_rt_rope(th->kv, n, nkv, hd, tr->cs);
        transpose(kt, th->kv, n, kvd);
        lmp_rt_matmul(th->kv, xn1, F(tr, Ly->wv), F(tr, Ly->bv), n, D, kvd, 1);
        transpose(vt, th->kv, n, kvd);
        lmp_rt_attention(att, q, kt, vt, n, n, 0, nh, nkv, hd, th->ascr, 1);
        lmp_rt_matmul(h1, att, F(tr, Ly->wo), NULL, n, qd, D, 1);
        for (size_t i = 0; i < (size_t)n * D; i++) h1[i] = x[i] + h1[i];

        lmp_rt_rmsnorm(xn2, h1, F(tr, Ly->ffn_norm), n, D, eps);
        lmp_rt_matmul(g, xn2, F(tr, Ly->w_gate), NULL, n, D, ffn, 1);
        lmp_rt_matmul(u, xn2, F(tr, Ly->w_up), NULL, n, D, ffn, 1);
        memcpy(a, g, (size_t)n * ffn * sizeof *a);
        lmp_rt_swiglu(a, u, (long)n * ffn);
        lmp_rt_matmul(hout, a, F(tr, Ly->w_down), NULL, n, ffn, D, 1);
        for (size_t i = 0; i < (size_t)n * D; i++) hout[i] = h1[i] + hout[i];
    }
    lmp_rt_rmsnorm(w->xnf, w->hin + tr->nl * LD, F(tr, m->out_norm), n, D, eps);
    if (logits) lmp_rt_matmul(logits, w->xnf, F(tr, m->out), NULL, n, D, tr->vocab, 1);
}

/* dW (rows, cols) += dy^T x for dy (n, rows), x (n, cols) */
static void acc_wgrad(float *dW, const float *dy, const float *x, int n, int rows, int cols)
{
    if (dW)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rows, cols, n, 1.0f, dy, rows, x,
                    cols, 1.0f, dW, cols);
}
/* dx (n, in) (+)= dy (n, out) W (out, in) */
static void back_x(float *dx, const float *dy, const float *W, int n, int out, int in, float beta)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, out, 1.0f, dy, out, W, in, beta,
                dx, in);
}
/* db (rows) += column sums of dy (n, rows) */
static void acc_bgrad(float *db, const float *dy, int n, int rows)
{
    if (db)
        for (int i = 0; i < n; i++)
            for (int r = 0; r < rows; r++) db[r] += dy[(size_t)i * rows + r];
}

/* The lowest layer the backward must reach for the gradients in g; n_layers when none. */
static int lowest_layer(const struct lmp_rt_train *tr, const struct lmp_rt_grads *g)
{
    const struct lmp_model *m = tr->m;
    if (g->g[m->tok_embd - m->tensors]) return 0;
    for (int l = 0; l < tr->nl; l++) {
        const struct lmp_layer *Ly = &m->layers[l];
        const struct lmp_tensor *ts[] = {Ly->attn_norm, Ly->wq, Ly->wk, Ly->wv, Ly->wo,
                                         Ly->bq, Ly->bk, Ly->bv, Ly->ffn_norm, Ly->w_gate,
                                         Ly->w_up, Ly->w_down};
        for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++)
            if (ts[k] && g->g[ts[k] - m->tensors]) return l;
    }
    return tr->nl;
}

/* Gradients of one sequence into gs (layout of g, zeroed by the caller). */
static void seq_backward(const struct lmp_rt_train *tr, const struct ws *w, struct thr *th,
                         const float *dlogits, const struct lmp_rt_grads *g, float *gs,
                         int lowest)
{
    const struct lmp_model *m = tr->m;
    const int D = tr->dim, hd = tr->hd, n = w->len, V = tr->vocab;
    const size_t LD = (size_t)tr->max_len * D;
    const float eps = m->cfg.norm_eps;
#define G(t) ((t) && g->g[(t) - m->tensors] ? gs + g->off[(t) - m->tensors] : NULL)
    float *dh = th->dh, *dxn = th->dxn;
    /* head */
    back_x(dxn, dlogits, F(tr, m->out), n, V, D, 0.0f);
    acc_wgrad(G(m->out), dlogits, w->xnf, n, V, D);
    memset(dh, 0, (size_t)n * D * sizeof *dh);
    lmp_rt_rmsnorm_bwd(dh, G(m->out_norm), w->hin + tr->nl * LD, F(tr, m->out_norm), dxn, n, D,
                       eps);
    for (int l = tr->nl - 1; l >= lowest; l--) {
        const struct lmp_layer *Ly = &m->layers[l];
        const struct lmp_layer_cfg *lc = &m->cfg.layer[l];
        const int nh = lc->n_heads, nkv = lc->n_kv_heads, ffn = lc->ffn;
        const int qd = nh * hd, kvd = nkv * hd;
        const float *x = w->hin + l * LD, *xn1 = w->xn1 + l * LD, *h1 = w->h1 + l * LD;
        const float *xn2 = w->xn2 + l * LD;
        const float *q = w->q + tr->oq[l], *att = w->att + tr->oq[l];
        const float *kt = w->kt + tr->okv[l], *vt = w->vt + tr->okv[l];
        const float *gg = w->g + tr->of[l], *u = w->u + tr->of[l], *a = w->a + tr->of[l];

        /* MLP: dh is dL/d(out) */
        back_x(th->da, dh, F(tr, Ly->w_down), n, D, ffn, 0.0f);
        acc_wgrad(G(Ly->w_down), dh, a, n, D, ffn);
        lmp_rt_swiglu_bwd(th->dg, th->du, gg, u, th->da, (long)n * ffn);
        back_x(dxn, th->dg, F(tr, Ly->w_gate), n, ffn, D, 0.0f);
        back_x(dxn, th->du, F(tr, Ly->w_up), n, ffn, D, 1.0f);
        acc_wgrad(G(Ly->w_gate), th->dg, xn2, n, ffn, D);
        acc_wgrad(G(Ly->w_up), th->du, xn2, n, ffn, D);
        lmp_rt_rmsnorm_bwd(dh, G(Ly->ffn_norm), h1, F(tr, Ly->ffn_norm), dxn, n, D, eps);

        /* attention: dh is dL/dh1 */
        back_x(th->datt, dh, F(tr, Ly->wo), n, D, qd, 0.0f);
        acc_wgrad(G(Ly->wo), dh, att, n, D, qd);
        lmp_rt_attention_bwd(th->dq, th->dkt, th->dvt, q, kt, vt, th->datt, n, nh, nkv, hd,
                             th->pp);
        transpose(th->dk, th->dkt, kvd, n);
        transpose(th->dv, th->dvt, kvd, n);
        lmp_rt_rope(th->dq, n, nh, hd, tr->ics);
        lmp_rt_rope(th->dk, n, nkv, hd, tr->ics);
        acc_bgrad(G(Ly->bq), th->dq, n, qd);
        acc_bgrad(G(Ly->bk), th->dk, n, kvd);
        acc_bgrad(G(Ly->bv), th->dv, n, kvd);
        back_x(dxn, th->dq, F(tr, Ly->wq), n, qd, D, 0.0f);
        back_x(dxn, th->dk, F(tr, Ly->wk), n, kvd, D, 1.0f);
        back_x(dxn, th->dv, F(tr, Ly->wv), n, kvd, D, 1.0f);
        acc_wgrad(G(Ly->wq), th->dq, xn1, n, qd, D);
        acc_wgrad(G(Ly->wk), th->dk, xn1, n, kvd, D);
        acc_wgrad(G(Ly->wv), th->dv, xn1, n, kvd, D);
        lmp_rt_rmsnorm_bwd(dh, G(Ly->attn_norm), x, F(tr, Ly->attn_norm), dxn, n, D, eps);
    }
    float *dE = lowest == 0 ? G(m->tok_embd) : NULL;
    if (dE)
        for (int i = 0; i < n; i++) {
            float *row = dE + (size_t)w->tok[i] * D;
            const float *d = dh + (size_t)i * D;
            for (int c = 0; c < D; c++) row[c] += d[c];
        }
#undef G
}

/* ---- batches --------------------------------------------------------------------------- */

static enum lmp_status check_tokens(const struct lmp_rt_train *tr, const int32_t *tokens,
                                    int n_seq, int len, int max_seqs, struct lmp_err *err)
{
    if (n_seq < 1 || n_seq > max_seqs)
        return lmp_err_set(err, LMP_ERR_ARG, "backward: %d sequences outside [1, %d]", n_seq,
                           max_seqs);
    if (len < 1 || len > tr->max_len)
        return lmp_err_set(err, LMP_ERR_ARG, "backward: length %d outside [1, %d]", len,
                           tr->max_len);
    for (size_t i = 0; i < (size_t)n_seq * len; i++)
        if (tokens[i] < 0 || tokens[i] >= tr->vocab)
            return lmp_err_set(err, LMP_ERR_ARG,
                               "backward: token id %d (sequence %zu, position %zu) outside the "
                               "vocabulary [0, %d)",
                               (int)tokens[i], i / (size_t)len, i % (size_t)len, tr->vocab);
    return LMP_OK;
}

static enum lmp_status check_grads(const struct lmp_rt_train *tr, const struct lmp_rt_grads *g,
                                   const struct lmp_rt_grads *g_sq, struct lmp_err *err)
{
    if (g->n != tr->m->n_tensors)
        return lmp_err_set(err, LMP_ERR_ARG, "backward: gradients made for another model");
    if (g_sq) {
        if (g_sq->n != g->n || g_sq->n_floats != g->n_floats)
            return lmp_err_set(err, LMP_ERR_ARG,
                               "backward: squared gradients laid out unlike the gradients");
        for (int i = 0; i < g->n; i++)
            if (!g->g[i] != !g_sq->g[i] || (g->g[i] && g->off[i] != g_sq->off[i]))
                return lmp_err_set(err, LMP_ERR_ARG,
                                   "backward: squared gradients laid out unlike the gradients");
    }
    return LMP_OK;
}

/* Per-thread buffers for one sequence's gradients (n floats) and, for steps, its logits. */
static enum lmp_status thread_bufs(struct lmp_rt_train *tr, size_t n, int step,
                                   struct lmp_err *err)
{
    size_t lv = (size_t)tr->max_len * (size_t)tr->vocab;
    for (int t = 0; t < tr->n_thr; t++) {
        struct thr *th = &tr->th[t];
        if (th->gs_n < n) {
            free(th->gs);
            th->gs = malloc(n * sizeof *th->gs);
            th->gs_n = th->gs ? n : 0;
            if (!th->gs) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory for gradients");
        }
        if (step && !th->lg) {
            th->lg = malloc(lv * sizeof *th->lg);
            th->dlg = malloc(lv * sizeof *th->dlg);
            if (!th->lg || !th->dlg) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        }
    }
    return LMP_OK;
}

/* Adds one sequence's gradients (and their squares) into the totals. */
static void add_grads(struct lmp_rt_grads *g, struct lmp_rt_grads *g_sq, const float *gs)
{
    float *a = g->mem;
    size_t n = g->n_floats;
#pragma omp simd
    for (size_t i = 0; i < n; i++) a[i] += gs[i];
    if (g_sq) {
        float *b = g_sq->mem;
#pragma omp simd
        for (size_t i = 0; i < n; i++) b[i] += gs[i] * gs[i];
    }
}

enum lmp_status lmp_rt_train_forward(struct lmp_rt_train *tr, const int32_t *tokens, int n_seq,
                                     int len, float *logits, struct lmp_err *err)
{
    enum lmp_status st = check_tokens(tr, tokens, n_seq, len, tr->max_seqs, err);
    tr->n_seq = 0;
    if (st) return st;
    int n_par = tr->n_thr < n_seq ? tr->n_thr : n_seq;
    /* OpenBLAS's thread count is process-wide: one per sequence-parallel thread, restored
     * after; one also when a single sequence runs (n_par 1): OpenBLAS's partition of a
     * product changes its rounding, and the result must not depend on the thread count */
    int blas_prev = openblas_get_num_threads();
    openblas_set_num_threads(1);
#pragma omp parallel for num_threads(n_par) if (n_par > 1) schedule(static, 1)
    for (int b = 0; b < n_seq; b++)
        seq_forward(tr, &tr->ws[b], &tr->th[omp_get_thread_num()], tokens + (size_t)b * len, len,
                    logits ? logits + (size_t)b * len * tr->vocab : NULL);
    openblas_set_num_threads(blas_prev);
    tr->n_seq = n_seq;
    tr->len = len;
    return LMP_OK;
}

enum lmp_status lmp_rt_train_backward(struct lmp_rt_train *tr, const float *dlogits,
                                      struct lmp_rt_grads *g, struct lmp_rt_grads *g_sq,
                                      struct lmp_err *err)
{
    if (!tr->n_seq)
        return lmp_err_set(err, LMP_ERR_ARG, "backward: no forward to take the gradient of");
    enum lmp_status st = check_grads(tr, g, g_sq, err);
    if (!st) st = thread_bufs(tr, g->n_floats, 0, err);
    if (st) return st;
    const int n_seq = tr->n_seq, len = tr->len, lowest = lowest_layer(tr, g);
    int n_par = tr->n_thr < n_seq ? tr->n_thr : n_seq;
    int blas_prev = openblas_get_num_threads();
    openblas_set_num_threads(1); /* as in lmp_rt_train_forward */
#pragma omp parallel for ordered num_threads(n_par) if (n_par > 1) schedule(static, 1)
    for (int b = 0; b < n_seq; b++) {
        struct thr *th = &tr->th[omp_get_thread_num()];
        memset(th->gs, 0, g->n_floats * sizeof *th->gs);
        seq_backward(tr, &tr->ws[b], th, dlogits + (size_t)b * len * tr->vocab, g, th->gs,
                     lowest);
#pragma omp ordered
        add_grads(g, g_sq, th->gs);
    }
    openblas_set_num_threads(blas_prev);
    return LMP_OK;
}

enum lmp_status lmp_rt_train_step(struct lmp_rt_train *tr, const int32_t *tokens, int n_seq,
                                  int len, lmp_rt_loss_fn loss_fn, void *user,
                                  struct lmp_rt_grads *g, struct lmp_rt_grads *g_sq,
                                  double *loss, struct lmp_err *err)
{
    if (loss) *loss = 0;
    tr->n_seq = 0; /* the workspaces will not hold one batch */
    if (!loss_fn) return lmp_err_set(err, LMP_ERR_ARG, "backward: no loss function");
    enum lmp_status st = check_tokens(tr, tokens, n_seq, len, 1 << 30, err);
    if (!st && g) st = check_grads(tr, g, g_sq, err);
    if (!st) st = thread_bufs(tr, g ? g->n_floats : 0, 1, err);
    if (st) return st;
    const int lowest = g ? lowest_layer(tr, g) : tr->nl, V = tr->vocab;
    int n_par = tr->n_thr < n_seq ? tr->n_thr : n_seq;
    int blas_prev = openblas_get_num_threads();
    openblas_set_num_threads(1); /* as in lmp_rt_train_forward */
    double total = 0;
    int failed = 0;
#pragma omp parallel for ordered num_threads(n_par) if (n_par > 1) schedule(static, 1)
    for (int b = 0; b < n_seq; b++) {
        int tid = omp_get_thread_num(), stop;
        struct thr *th = &tr->th[tid];
        struct ws *w = &tr->ws[tid];
        struct lmp_err lerr = {{0}};
        double lb = 0;
        enum lmp_status lst = LMP_OK;
#pragma omp atomic read
        stop = failed;
        if (!stop) {
            seq_forward(tr, w, th, tokens + (size_t)b * len, len, th->lg);
            lst = loss_fn(user, tid, b, tokens + (size_t)b * len, len, th->lg, V, th->dlg, &lb,
                          &lerr);
            if (!lst && g) {
                memset(th->gs, 0, g->n_floats * sizeof *th->gs);
                seq_backward(tr, w, th, th->dlg, g, th->gs, lowest);
            }
        }
#pragma omp ordered
        {
            if (lst && !failed) {
                st = lst;
                *err = lerr;
#pragma omp atomic write
                failed = 1;
            }
            if (!failed) {
                total += lb;
                if (g) add_grads(g, g_sq, th->gs);
            }
        }
    }
    openblas_set_num_threads(blas_prev);
    if (loss) *loss = total;
    return st;
}

double lmp_rt_loss_ce(const float *logits, const int32_t *tokens, int len, int vocab,
                      float scale, float *dlogits)
{
    double total = 0;
    for (int t = 0; t < len; t++) {
        const float *row = logits + (size_t)t * vocab;
        float *d = dlogits ? dlogits + (size_t)t * vocab : NULL;
        if (t == len - 1 || tokens[t + 1] < 0 || tokens[t + 1] >= vocab) {
            if (d) memset(d, 0, (size_t)vocab * sizeof *d);
            continue;
        }
        float mx = row[0];
        for (int v = 1; v < vocab; v++) mx = row[v] > mx ? row[v] : mx;
        double sum = 0;
        for (int v = 0; v < vocab; v++) sum += exp((double)(row[v] - mx));
        double lse = (double)mx + log(sum);
        int y = tokens[t + 1];
        total += lse - (double)row[y];
        if (d) {
            for (int v = 0; v < vocab; v++) d[v] = scale * (float)exp((double)row[v] - lse);
            d[y] -= scale;
        }
    }
    return total;
}
