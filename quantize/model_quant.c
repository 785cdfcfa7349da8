/* Whole-model quantization: GPTQ layer after layer, true-sequential inside each layer
 * (q/k/v, then o, then gate/up, then down), every Hessian built from calibration
 * activations that already went through the quantized earlier parts. Activations are
 * collected through the runtime's per-linear hook (no copy of the forward); calibration
 * windows are independent, so they run in parallel, one runtime state per thread, each
 * thread accumulating its own Hessian. RTN needs no calibration. */
#include "quant_model.h"
#include "formats/qpack.h"
#include "runtime/runtime.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* SplitMix64: calibration windows drawn reproducibly from --seed. */
static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void lmp_quant_model_opts_default(struct lmp_quant_model_opts *o)
{
    memset(o, 0, sizeof *o);
    o->method = LMP_QUANT_GPTQ;
    lmp_quant_opts_default(&o->q);
    o->nsamples = 128;
    o->seqlen = 512;
    o->seed = 0;
    o->calib_bos = 1;
}

/* MT19937 seeded like CPython's random.seed(int) and its randint(), so that
 * `--calib-sampler python` draws the same windows as the reference GPTQ scripts
 * (random.seed(seed); i = random.randint(0, len - seqlen - 1) over BOS + ids). */
struct mt {
    uint32_t s[624];
    int i;
};

static void mt_init(struct mt *m, uint32_t x)
{
    m->s[0] = x;
    for (int i = 1; i < 624; i++)
        m->s[i] = 1812433253u * (m->s[i - 1] ^ (m->s[i - 1] >> 30)) + (uint32_t)i;
    m->i = 624;
}

static void mt_seed_python(struct mt *m, uint64_t seed)
{
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    int n = seed >> 32 ? 2 : 1;
    mt_init(m, 19650218u);
    int i = 1, j = 0;
    for (int k = 624 > n ? 624 : n; k; k--) {
        m->s[i] = (m->s[i] ^ ((m->s[i - 1] ^ (m->s[i - 1] >> 30)) * 1664525u)) + key[j] + (uint32_t)j;
        i++;
        j++;
        if (i >= 624) {
            m->s[0] = m->s[623];
            i = 1;
        }
        if (j >= n) j = 0;
    }
    for (int k = 623; k; k--) {
        m->s[i] = (m->s[i] ^ ((m->s[i - 1] ^ (m->s[i - 1] >> 30)) * 1566083941u)) - (uint32_t)i;
        i++;
        if (i >= 624) {
            m->s[0] = m->s[623];
            i = 1;
        }
    }
    m->s[0] = 0x80000000u;
}

static uint32_t mt_next(struct mt *m)
{
    if (m->i >= 624) {
        for (int k = 0; k < 624; k++) {
            uint32_t y = (m->s[k] & 0x80000000u) | (m->s[(k + 1) % 624] & 0x7fffffffu);
            m->s[k] = m->s[(k + 397) % 624] ^ (y >> 1) ^ ((y & 1) ? 0x9908b0dfu : 0);
        }
        m->i = 0;
    }
    uint32_t y = m->s[m->i++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    return y ^ (y >> 18);
}

/* random.randint(0, n - 1) for n < 2^32: rejection sampling on getrandbits(bit_length) */
static uint32_t mt_below(struct mt *m, uint32_t n)
{
    int k = 0;
    while (k < 32 && (n >> k)) k++;
    uint32_t r;
    do r = k ? mt_next(m) >> (32 - k) : 0;
    while (r >= n);
    return r;
}

enum lmp_status lmp_quant_calib_windows_python(const int32_t *ids, int64_t n_ids, int nsamples,
                                               int seqlen, uint64_t seed, int bos, int32_t **out,
                                               struct lmp_err *err)
{
    *out = NULL;
    int64_t len = n_ids + (bos >= 0);
    if (nsamples <= 0 || seqlen <= 1)
        return lmp_err_set(err, LMP_ERR_ARG, "calibration needs nsamples >= 1 and seqlen >= 2");
    if (len < (int64_t)seqlen + 1 || len - seqlen > 0xffffffffll)
        return lmp_err_set(err, LMP_ERR_ARG,
                           "calibration text has %lld tokens, shorter than one window of %d",
                           (long long)n_ids, seqlen);
    int32_t *w = malloc((size_t)nsamples * (size_t)seqlen * sizeof *w);
    if (!w) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    struct mt m;
    mt_seed_python(&m, seed);
    for (int i = 0; i < nsamples; i++) {
        int64_t start = mt_below(&m, (uint32_t)(len - seqlen)); /* randint(0, len-seqlen-1) */
        for (int k = 0; k < seqlen; k++) {
            int64_t p = start + k; /* position in BOS + ids */
            w[(size_t)i * seqlen + k] = bos >= 0 ? (p == 0 ? bos : ids[p - 1]) : ids[p];
        }
    }
    *out = w;
    return LMP_OK;
}

enum lmp_status lmp_quant_calib_windows(const int32_t *ids, int64_t n_ids, int nsamples,
                                        int seqlen, uint64_t seed, int bos, int32_t **out,
                                        struct lmp_err *err)
{
    *out = NULL;
    if (nsamples <= 0 || seqlen <= 1)
        return lmp_err_set(err, LMP_ERR_ARG, "calibration needs nsamples >= 1 and seqlen >= 2");
    if (n_ids < (int64_t)seqlen + 1)
        return lmp_err_set(err, LMP_ERR_ARG,
                           "calibration text has %lld tokens, shorter than one window of %d",
                           (long long)n_ids, seqlen);
    int32_t *w = malloc((size_t)nsamples * (size_t)seqlen * sizeof *w);
    if (!w) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    uint64_t st = seed;
    uint64_t span = (uint64_t)(n_ids - seqlen); /* starts in [0, n_ids - seqlen) */
    for (int i = 0; i < nsamples; i++) {
        uint64_t start = splitmix(&st) % span;
        memcpy(w + (size_t)i * seqlen, ids + start, (size_t)seqlen * sizeof *w);
        if (bos >= 0) w[(size_t)i * seqlen] = bos;
    }
    *out = w;
    return LMP_OK;
}

enum lmp_status lmp_quant_model_windows(const struct lmp_model *m, const int32_t *calib,
                                        int64_t n_calib, const struct lmp_quant_model_opts *o,
                                        int32_t **out, struct lmp_err *err)
{
    enum lmp_status st;
    if (o->python_sampler)
        st = lmp_quant_calib_windows_python(calib, n_calib, o->nsamples, o->seqlen, o->seed,
                                            m->vocab.bos, out, err);
    else
        st = lmp_quant_calib_windows(calib, n_calib, o->nsamples, o->seqlen, o->seed,
                                     o->calib_bos ? m->vocab.bos : -1, out, err);
    if (st) return st;
    for (int64_t i = 0; i < (int64_t)o->nsamples * o->seqlen; i++)
        if ((*out)[i] < 0 || (*out)[i] >= m->cfg.vocab) {
            st = lmp_err_set(err, LMP_ERR_ARG, "calibration token %d outside the vocabulary",
                             (*out)[i]);
            free(*out);
            *out = NULL;
            return st;
        }
    return LMP_OK;
}

/* ---- calibration passes through the runtime hook ---------------------------------------- */

/* One pass of layer l over the calibration windows. The hook sees every linear's input:
 * it accumulates the Hessian (and the cross statistics with the unquantized model's inputs,
 * fp_target) of stage `which`, and copies the inputs of the stages with a save buffer. */
struct pass {
    int which;          /* stage (enum lmp_rt_linear, 0..3) whose H is collected; -1: none */
    int cols;           /* its input width */
    const float *in;    /* (NS, S, D) layer inputs */
    float *out;         /* (NS, S, D) outputs (may equal in); NULL: discarded */
    float *save[4];     /* per stage: (NS, S, width) inputs copied here, or NULL */
    const float *xf;    /* (NS, S, cols) unquantized model's inputs of `which`, for C; or NULL */
    const float *ra, *rb; /* (NS, S, D) residual streams (unquantized, quantized model's layer
                             inputs): R = 2/N sum (ra - rb) x^T for `which`; or NULL */
    int n_windows;      /* windows 0 .. n_windows-1 */
    const float *attn;  /* (NS, S, qd) attention outputs saved by this layer's "o" pass, or
                           NULL: recomputed (lmp_rt_hooks.attn) */
};

struct hcollect {
    int layer, S, w;
    const struct pass *p;
    int width[4];       /* input width of each stage */
    int row[4];         /* rows of the current window seen so far, per stage */
    float *H, *C;       /* (cols, cols) this thread's running averages */
    float *R, *rtmp;    /* (D, cols) residual cross statistic, (S, D) scratch */
    int64_t n;
    enum lmp_status st;
    struct lmp_err err;
};

static void hook_collect(void *user, int layer, enum lmp_rt_linear which, const float *x, int n,
                         int in)
{
    struct hcollect *c = user;
    if (layer != c->layer || c->st || (int)which < 0 || (int)which > 3) return;
    const struct pass *p = c->p;
    int k = (int)which;
    if (in != c->width[k] || c->row[k] + n > c->S) {
        c->st = lmp_err_set(&c->err, LMP_ERR_INTERNAL, "hook %s: %d x %d inputs, expected width %d",
                            lmp_rt_linear_name(which), n, in, c->width[k]);
        return;
    }
    size_t off = ((size_t)c->w * c->S + (size_t)c->row[k]) * (size_t)in;
    c->row[k] += n;
    if (p->save[k]) memcpy(p->save[k] + off, x, (size_t)n * in * sizeof *x);
    if (k != p->which) return;
    if (p->xf) c->st = lmp_quant_cross_accumulate(c->C, in, in, p->xf + off, x, n, c->n, &c->err);
    if (p->ra && !c->st) {
        const int D = c->width[0];
        size_t o2 = ((size_t)c->w * c->S + (size_t)(c->row[k] - n)) * (size_t)D;
        for (size_t i = 0; i < (size_t)n * D; i++) c->rtmp[i] = p->ra[o2 + i] - p->rb[o2 + i];
        c->st = lmp_quant_cross_accumulate(c->R, D, in, c->rtmp, x, n, c->n, &c->err);
    }
    if (!c->st) c->st = lmp_quant_hessian_accumulate(c->H, in, x, n, &c->n, &c->err);
}

struct qctx {
    const struct lmp_model *m;
    const struct lmp_quant_model_opts *o;
    int n_thr, S, D, NS;
    struct lmp_rt_state **states; /* (n_thr) */
    float *tmp;                   /* (n_thr, S, D) */
    float **Ht, **Ct;             /* (n_thr) per-thread running averages (maxin, maxin) */
    float **Rt, *rtmp;            /* (n_thr) (D, maxin) residual statistics; (n_thr, S, D) */
    int64_t *Nt;
};

/* H = sum_t N_t H_t / N over the threads' running averages (each over its N_t rows); the
 * same for C when not NULL. */
static void combine(struct qctx *q, int cols, float *H, float *C, float *R)
{
    int64_t N = 0;
    for (int t = 0; t < q->n_thr; t++) N += q->Nt[t];
    memset(H, 0, (size_t)cols * (size_t)cols * sizeof(float));
    if (C) memset(C, 0, (size_t)cols * (size_t)cols * sizeof(float));
    if (R) memset(R, 0, (size_t)q->D * (size_t)cols * sizeof(float));
    for (int t = 0; t < q->n_thr; t++) {
        if (!q->Nt[t]) continue;
        float wt = (float)((double)q->Nt[t] / (double)N);
        cblas_saxpy(cols * cols, wt, q->Ht[t], 1, H, 1);
        if (C) cblas_saxpy(cols * cols, wt, q->Ct[t], 1, C, 1);
        if (R) cblas_saxpy(q->D * cols, wt, q->Rt[t], 1, R, 1);
    }
}

/* Runs pass p of layer l; with p->which >= 0, H (and C when p->xf) = the combined averages
 * over all windows. */
static enum lmp_status run_layer(struct qctx *q, int l, const struct pass *p, float *H, float *C,
                                 float *R, struct lmp_err *err)
{
    const int S = q->S, D = q->D, cols = p->cols;
    const struct lmp_layer_cfg *lc = &q->m->cfg.layer[l];
    enum lmp_status st = LMP_OK;
    for (int t = 0; t < q->n_thr && p->which >= 0; t++) {
        memset(q->Ht[t], 0, (size_t)cols * (size_t)cols * sizeof(float));
        if (p->xf) memset(q->Ct[t], 0, (size_t)cols * (size_t)cols * sizeof(float));
        if (p->ra) memset(q->Rt[t], 0, (size_t)D * (size_t)cols * sizeof(float));
        q->Nt[t] = 0;
    }
#pragma omp parallel num_threads(q->n_thr)
    {
        int t = omp_get_thread_num();
        struct hcollect c = {.layer = l, .S = S, .p = p, .H = q->Ht[t], .C = q->Ct ? q->Ct[t] : NULL,
                             .R = q->Rt ? q->Rt[t] : NULL,
                             .rtmp = q->rtmp ? q->rtmp + (size_t)t * S * D : NULL,
                             .width = {D, lc->n_heads * q->m->cfg.head_dim, D, lc->ffn}};
        struct lmp_rt_hooks hk = {.user = &c, .linear_input = hook_collect};
        struct lmp_err e = {{0}};
        float *h = q->tmp + (size_t)t * S * D;
#pragma omp for schedule(static) /* fixed window-to-thread split: the same H every run */
        for (int w = 0; w < p->n_windows; w++) {
            if (c.st) continue;
            const float *x = p->in + (size_t)w * S * D;
            float *io = p->out ? p->out + (size_t)w * S * D : h;
            if (io != x) memcpy(io, x, (size_t)S * D * sizeof(float));
            c.w = w;
            memset(c.row, 0, sizeof c.row);
            hk.attn = p->attn ? p->attn + (size_t)w * S * c.width[1] : NULL;
            enum lmp_status s2 = lmp_rt_forward_layer(q->states[t], l, io, S, 0, &hk, &e);
            if (s2 && !c.st) {
                c.st = s2;
                c.err = e;
            }
        }
        q->Nt[t] = c.n;
#pragma omp critical
        if (c.st && !st) {
            st = c.st;
            *err = c.err;
        }
    }
    if (st || p->which < 0) return st;
    combine(q, cols, H, p->xf ? C : NULL, p->ra ? R : NULL);
    return LMP_OK;
}

/* The q/k/v stage without a pass: its input is attn_norm(X), which needs no weight of the
 * layer, so it is computed here with the runtime's own RMSNorm kernel (the part of the
 * layer before its first hook) and the Hessian accumulated from it. Window 0 is first run
 * through the layer for real, its q/k/v input taken from the hook and compared: *ok = 0 on
 * any mismatch (or a norm weight that is not F32), and the caller runs the pass instead. */
static enum lmp_status qkv_direct(struct qctx *q, int l, const float *X, const float *xf,
                                  float *H, float *C, int *ok, struct lmp_err *err)
{
    const int S = q->S, D = q->D;
    const struct lmp_tensor *nw = q->m->layers[l].attn_norm;
    const float eps = q->m->cfg.norm_eps;
    *ok = 0;
    if (!nw || nw->type != LMP_TYPE_F32 || nw->shape[0] != D) return LMP_OK;
    float *cap = malloc((size_t)S * D * sizeof *cap);
    if (!cap) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    struct pass pv = {.which = -1, .in = X, .n_windows = 1, .save = {cap}};
    enum lmp_status st = run_layer(q, l, &pv, NULL, NULL, NULL, err);
    if (!st) {
        float *h = q->tmp;
        lmp_rt_rmsnorm(h, X, nw->data, S, D, eps);
        *ok = memcmp(h, cap, (size_t)S * D * sizeof *h) == 0;
    }
    free(cap);
    if (st || !*ok) return st;
    for (int t = 0; t < q->n_thr; t++) {
        memset(q->Ht[t], 0, (size_t)D * D * sizeof(float));
        if (xf) memset(q->Ct[t], 0, (size_t)D * D * sizeof(float));
        q->Nt[t] = 0;
    }
#pragma omp parallel num_threads(q->n_thr)
    {
        int t = omp_get_thread_num();
        float *h = q->tmp + (size_t)t * S * D;
        struct lmp_err e = {{0}};
        enum lmp_status s2 = LMP_OK;
#pragma omp for schedule(static)
        for (int w = 0; w < q->NS; w++) {
            if (s2) continue;
            size_t off = (size_t)w * S * D;
            lmp_rt_rmsnorm(h, X + off, nw->data, S, D, eps);
            if (xf) s2 = lmp_quant_cross_accumulate(q->Ct[t], D, D, xf + off, h, S, q->Nt[t], &e);
            if (!s2) s2 = lmp_quant_hessian_accumulate(q->Ht[t], D, h, S, &q->Nt[t], &e);
        }
#pragma omp critical
        if (s2 && !st) {
            st = s2;
            *err = e;
        }
    }
    if (st) return st;
    combine(q, D, H, xf ? C : NULL, NULL);
    return LMP_OK;
}

/* Quantizes one F32 weight tensor into a packed tensor (in place in the model struct),
 * using the prepared factor (GPTQ) or none (RTN). W_hat is written back into the F32 data
 * first, so the rest of the calibration sees the quantized weights. */
struct pending {
    struct lmp_tensor *t;
    struct lmp_qtensor_out q;
};

/* Wsrc: the weights to quantize, (rows, cols); NULL: the tensor's own. */
static enum lmp_status quant_one(struct lmp_tensor *t, const float *Wsrc,
                                 const struct lmp_quant_hinv *hv, const struct lmp_quant_opts *qo,
                                 struct pending *pd, struct lmp_quant_report *rep,
                                 struct lmp_err *err)
{
    int rows = (int)t->shape[0], cols = (int)t->shape[1];
    float *W = t->data;
    float *What = malloc((size_t)rows * (size_t)cols * sizeof(float));
    if (!What) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    if (!Wsrc) Wsrc = W;
    enum lmp_status st = hv ? lmp_quant_gptq_apply(Wsrc, rows, cols, hv, qo, &pd->q, What, err)
                            : lmp_quant_rtn_matrix(Wsrc, rows, cols, qo, &pd->q, What, err);
    if (st) {
        free(What);
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        return lmp_err_set(err, st, "%s: %s", t->name, msg);
    }
    memcpy(W, What, (size_t)rows * (size_t)cols * sizeof(float));
    free(What);
    pd->t = t;
    if (rep && rep->n_tensors < LMP_QUANT_REPORT_MAX) {
        struct lmp_quant_tensor_report *r = &rep->t[rep->n_tensors++];
        snprintf(r->name, sizeof r->name, "%s", t->name);
        r->loss = pd->q.loss;
        r->damp_retries = pd->q.damp_retries;
        r->n_dead = pd->q.n_dead;
    }
    return LMP_OK;
}

/* Replaces a tensor's F32 data by the packed codes and parameters of q (moved). */
static enum lmp_status to_packed(struct lmp_tensor *t, struct lmp_qtensor_out *q,
                                 struct lmp_err *err)
{
    size_t cb, pb;
    enum lmp_status st = lmp_qpack_sizes(q->rows, q->cols, q->bits, q->group, &cb, &pb, err);
    if (st) return st;
    uint8_t *packed = calloc(1, cb ? cb : 1);
    if (!packed) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    if ((st = lmp_qpack_pack(q->codes, q->rows, q->cols, q->bits, packed, err))) {
        free(packed);
        return st;
    }
    if (t->owned) free(t->data);
    free(t->q.scales);
    free(t->q.zeros);
    free(t->q.perm);
    t->data = packed;
    t->owned = 1;
    t->nbytes = cb;
    t->type = lmp_qpack_type(q->bits);
    t->q.bits = q->bits;
    t->q.group = q->group;
    t->q.sym = q->sym;
    t->q.scales = q->scales;
    t->q.zeros = q->zeros;
    t->q.perm = q->perm;
    q->scales = q->zeros = NULL;
    q->perm = NULL;
    return LMP_OK;
}

/* Makes every tensor the quantizer will touch owned F32 (mmapped or F16 inputs). */
static enum lmp_status own_f32(struct lmp_tensor *t, struct lmp_err *err)
{
    if (lmp_type_is_packed(t->type))
        return lmp_err_set(err, LMP_ERR_ARG, "%s is already quantized", t->name);
    enum lmp_status st = lmp_tensor_to_f32(t, err);
    if (st) return st;
    if (!t->owned) {
        void *d = malloc(t->nbytes ? t->nbytes : 1);
        if (!d) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        memcpy(d, t->data, t->nbytes);
        t->data = d;
        t->owned = 1;
    }
    return LMP_OK;
}

/* Extra memory the down-stage shortcut may take (inputs of w_down + a second stream). */
#define SHORTCUT_MAX_BYTES ((size_t)1 << 30)

/* The layer output without a separate pass. The down stage already ran the layer with
 * everything but w_down quantized, keeping its output Y and w_down's input Xd; the output
 * of w_down enters the residual stream linearly, so the quantized layer's output is
 * Y + Xd (W_hat - W)^T. Window 0 is then run through the quantized layer for real and
 * compared: on a mismatch (a runtime where that no longer holds) *ok = 0 and the caller
 * runs the output pass instead. dW (D, ffn) = W_hat - W. */
static enum lmp_status shortcut_output(struct qctx *q, int l, const float *X, float *Y,
                                       const float *Xd, const float *dW, int ffn, int *ok,
                                       struct lmp_err *err)
{
    const int S = q->S, D = q->D;
    const size_t rows = (size_t)q->NS * S;
    int blas_prev = openblas_get_num_threads();
    openblas_set_num_threads(q->n_thr);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, D, ffn, 1.0f, Xd, ffn, dW,
                ffn, 1.0f, Y, D);
    openblas_set_num_threads(blas_prev);
    float *h = q->tmp;
    memcpy(h, X, (size_t)S * D * sizeof *h);
    enum lmp_status st = lmp_rt_forward_layer(q->states[0], l, h, S, 0, NULL, err);
    if (st) return st;
    double maxd = 0.0, maxa = 0.0;
    for (size_t i = 0; i < (size_t)S * D; i++) {
        double d = fabs((double)h[i] - (double)Y[i]), a = fabs((double)h[i]);
        if (!(d <= maxd)) maxd = d; /* NaN propagates */
        if (a > maxa) maxa = a;
    }
    *ok = maxd <= 1e-4 * (maxa + 1e-6);
    return LMP_OK;
}

enum lmp_status lmp_quant_model(struct lmp_model *m, const int32_t *calib, int64_t n_calib,
                                const struct lmp_quant_model_opts *o,
                                struct lmp_quant_report *rep, struct lmp_err *err)
{
    const struct lmp_config *c = &m->cfg;
    const int L = c->n_layers, D = c->dim;
    enum lmp_status st = LMP_OK;
    if (rep) memset(rep, 0, sizeof *rep);
    double t0 = omp_get_wtime();

    if (o->fp_alpha < 0.0f || o->fp_alpha > 2.0f || !isfinite(o->fp_alpha))
        return lmp_err_set(err, LMP_ERR_ARG, "fp target weight %g not in [0, 2]",
                           (double)o->fp_alpha);
    if (o->fp_residual < 0.0f || o->fp_residual > 2.0f || !isfinite(o->fp_residual))
        return lmp_err_set(err, LMP_ERR_ARG, "fp residual weight %g not in [0, 2]",
                           (double)o->fp_residual);
    for (int l = 0; l < L; l++) {
        struct lmp_layer *ly = &m->layers[l];
        struct lmp_tensor *all[7] = {ly->wq, ly->wk, ly->wv, ly->wo, ly->w_gate, ly->w_up, ly->w_down};
        for (int k = 0; k < 7; k++) {
            if ((st = lmp_quant_opts_check(&o->q, all[k]->shape[0], all[k]->shape[1], err))) {
                char msg[sizeof err->msg];
                snprintf(msg, sizeof msg, "%s", err->msg);
                return lmp_err_set(err, st, "%s: %s", all[k]->name, msg);
            }
            if ((st = own_f32(all[k], err))) return st;
        }
    }
    struct pending *pend = calloc((size_t)L * 7, sizeof *pend);
    if (!pend) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    struct qctx q = {.m = m, .o = o, .S = o->seqlen, .D = D, .NS = o->nsamples};
    int32_t *win = NULL;
    float *H = NULL, *C = NULL, *X = NULL, *Y = NULL, *Xd = NULL, *Xf = NULL, *Wt = NULL;
    float *dW = NULL, *Rm = NULL, *Att = NULL;
    float *XT[4] = {NULL, NULL, NULL, NULL};
    int blas_prev = openblas_get_num_threads();

    if (o->method == LMP_QUANT_RTN) {
        for (int l = 0; l < L && !st; l++) {
            struct lmp_layer *ly = &m->layers[l];
            struct lmp_tensor *all[7] = {ly->wq, ly->wk, ly->wv, ly->wo, ly->w_gate, ly->w_up, ly->w_down};
            for (int k = 0; k < 7 && !st; k++)
                st = quant_one(all[k], NULL, NULL, &o->q, &pend[l * 7 + k], rep, err);
            if (o->progress) o->progress(o->progress_user, l + 1, L, "rtn");
        }
        goto pack;
    }

    /* GPTQ: calibration windows and per-thread runtime states */
    if ((st = lmp_quant_model_windows(m, calib, n_calib, o, &win, err))) goto done;
    if (o->seqlen > c->max_ctx) {
        st = lmp_err_set(err, LMP_ERR_ARG, "--seqlen %d is above the model's context %d", o->seqlen, c->max_ctx);
        goto done;
    }
    const int S = q.S, NS = q.NS;
    const size_t stream = (size_t)NS * S * D; /* floats of one activation stream */
    q.n_thr = o->n_threads > 0 ? o->n_threads : omp_get_max_threads();
    if (q.n_thr > NS) q.n_thr = NS;
    int maxin = D, maxffn = 0, maxq = 0;
    size_t maxw = 0;
    for (int l = 0; l < L; l++) {
        int qd = c->layer[l].n_heads * c->head_dim;
        if (qd > maxq) maxq = qd;
        if (c->layer[l].ffn > maxffn) maxffn = c->layer[l].ffn;
        size_t w = (size_t)c->layer[l].ffn * (size_t)(qd > D ? qd : D);
        if (w > maxw) maxw = w;
    }
    if (maxq > maxin) maxin = maxq;
    if (maxffn > maxin) maxin = maxffn;
    if ((size_t)D * D > maxw) maxw = (size_t)D * D;
    const int fp = o->fp_alpha > 0.0f;
    const int fpres = fp && o->fp_residual > 0.0f;
    /* shortcut for the output pass, when its buffers fit */
    int shortcut = !o->no_shortcut && stream * ((size_t)maxffn + D) / D * sizeof(float) <= SHORTCUT_MAX_BYTES;
    q.states = calloc((size_t)q.n_thr, sizeof *q.states);
    q.Ht = calloc((size_t)q.n_thr, sizeof *q.Ht);
    q.Nt = calloc((size_t)q.n_thr, sizeof *q.Nt);
    if (fp) q.Ct = calloc((size_t)q.n_thr, sizeof *q.Ct);
    X = malloc(stream * sizeof(float));
    q.tmp = malloc((size_t)q.n_thr * S * D * sizeof(float));
    H = malloc((size_t)maxin * maxin * sizeof(float));
    Wt = malloc(maxw * sizeof(float));
    dW = malloc(maxw * sizeof(float));
    if (fp) C = malloc((size_t)maxin * maxin * sizeof(float));
    if (fpres) {
        Rm = malloc((size_t)D * maxin * sizeof(float));
        q.Rt = calloc((size_t)q.n_thr, sizeof *q.Rt);
        q.rtmp = malloc((size_t)q.n_thr * S * D * sizeof(float));
        if (!Rm || !q.Rt || !q.rtmp) {
            st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
            goto done;
        }
        for (int t = 0; t < q.n_thr; t++)
            if (!(q.Rt[t] = malloc((size_t)D * maxin * sizeof(float)))) {
                st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
                goto done;
            }
    }
    if (!q.states || !q.Ht || !q.Nt || (fp && (!q.Ct || !C)) || !X || !q.tmp || !H || !Wt || !dW) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory for calibration activations");
        goto done;
    }
    /* the attention outputs of one layer, reused by its later stages (optional: when it
     * fits, else recomputed) */
    if (!o->no_shortcut && stream / D * (size_t)maxq * sizeof(float) <= SHORTCUT_MAX_BYTES)
        Att = malloc(stream / D * (size_t)maxq * sizeof(float));
    if (shortcut) {
        Y = malloc(stream * sizeof(float));
        Xd = malloc(stream / D * maxffn * sizeof(float));
        if (!Y || !Xd) { /* not needed: fall back to the output pass */
            free(Y);
            free(Xd);
            Y = Xd = NULL;
            shortcut = 0;
        }
    }
    if (fp) {
        /* the unquantized model's stream and the inputs of each stage of the current layer */
        const int wd[4] = {D, maxq, D, maxffn};
        Xf = malloc(stream * sizeof(float));
        int okf = Xf != NULL;
        for (int k = 0; k < 4 && okf; k++) okf = (XT[k] = malloc(stream / D * wd[k] * sizeof(float))) != NULL;
        if (!okf) {
            st = lmp_err_set(err, LMP_ERR_NOMEM,
                             "out of memory for the unquantized model's activations (fp target)");
            goto done;
        }
    }
    for (int t = 0; t < q.n_thr; t++) {
        if (!(q.Ht[t] = malloc((size_t)maxin * maxin * sizeof(float))) ||
            (fp && !(q.Ct[t] = malloc((size_t)maxin * maxin * sizeof(float))))) {
            st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
            goto done;
        }
    }
    struct lmp_rt_opts ro = {.n_threads = 1};
    if ((st = lmp_rt_state_create(m, S, S, &ro, &q.states[0], err))) goto done;
    for (int t = 1; t < q.n_thr; t++)
        if ((st = lmp_rt_state_create_like(q.states[0], &ro, &q.states[t], err))) goto done;
    openblas_set_num_threads(1); /* parallelism is over windows */
    for (int w = 0; w < NS && !st; w++)
        st = lmp_rt_embed(q.states[0], win + (size_t)w * S, S, X + (size_t)w * S * D, err);
    if (fp && !st) memcpy(Xf, X, stream * sizeof(float));
    for (int l = 0; l < L && !st; l++) {
        struct lmp_layer *ly = &m->layers[l];
        const struct lmp_layer_cfg *lc = &c->layer[l];
        struct lmp_tensor *mats[4][3] = {{ly->wq, ly->wk, ly->wv}, {ly->wo}, {ly->w_gate, ly->w_up},
                                         {ly->w_down}};
        static const int n_in_stage[4] = {3, 1, 2, 1};
        static const char *const sname[4] = {"qkv", "o", "gate_up", "down"};
        const int ffn = lc->ffn;
        int pi = l * 7;
        if (fp) {
            /* layer l is still unquantized: run the unquantized stream through it, keeping
             * every stage's inputs */
            struct pass pf = {.which = -1, .in = Xf, .out = Xf, .n_windows = NS,
                              .save = {XT[0], XT[1], XT[2], XT[3]}};
            if ((st = run_layer(&q, l, &pf, NULL, NULL, NULL, err))) break;
        }
        int use_sc = shortcut && l + 1 < L;
        for (int sg = 0; sg < 4 && !st; sg++) {
            int cols = (int)mats[sg][0]->shape[1];
            struct pass p = {.which = sg, .cols = cols, .in = X, .n_windows = NS,
                             .xf = fp ? XT[sg] : NULL};
            if (sg == 3 && use_sc) {
                p.out = Y;
                p.save[3] = Xd;
            }
            /* q/k/v do not change after stage 0: the attention output of the "o" pass is
             * reused by the gate/up and down passes instead of recomputed */
            if (Att && sg == 1) p.save[1] = Att;
            if (Att && sg >= 2) p.attn = Att;
            int done_h = 0;
            if (sg == 0 && !o->no_shortcut && (st = qkv_direct(&q, l, X, p.xf, H, C, &done_h, err)))
                break;
            if (sg == 0 && !done_h && !o->no_shortcut && rep) rep->n_shortcut_fallbacks++;
            if (sg == 1 && fpres) {
                p.ra = Xf;
                p.rb = X;
            }
            if (!done_h && (st = run_layer(&q, l, &p, H, C, Rm, err))) break;
            struct lmp_quant_hinv *hv = NULL;
            openblas_set_num_threads(blas_prev);
            st = lmp_quant_hinv_prepare(H, cols, &o->q, &hv, err);
            for (int k = 0; k < n_in_stage[sg] && !st; k++) {
                struct lmp_tensor *t = mats[sg][k];
                const int rows = (int)t->shape[0];
                const size_t nw = (size_t)rows * (size_t)cols;
                const float *src = NULL;
                if (sg == 3 && use_sc) memcpy(dW, t->data, nw * sizeof(float));
                if (fp) {
                    if (p.ra) cblas_sscal(rows * cols, o->fp_residual, Rm, 1);
                    st = lmp_quant_fp_target(t->data, rows, cols, H, C, p.ra ? Rm : NULL,
                                             o->fp_alpha, &o->q, Wt, err);
                    src = Wt;
                }
                if (!st) st = quant_one(t, src, hv, &o->q, &pend[pi++], rep, err);
                if (!st && sg == 3 && use_sc) { /* dW = W_hat - W */
                    const float *wq = t->data;
                    for (size_t i = 0; i < nw; i++) dW[i] = wq[i] - dW[i];
                }
            }
            if (!st && hv && hv->damp_retries && rep) rep->n_damp_retries += hv->damp_retries;
            lmp_quant_hinv_free(hv);
            openblas_set_num_threads(1);
            if (o->progress) o->progress(o->progress_user, l, L, sname[sg]);
        }
        /* the quantized layer's outputs feed the next layer */
        if (!st && l + 1 < L) {
            int ok = 0;
            if (use_sc) st = shortcut_output(&q, l, X, Y, Xd, dW, ffn, &ok, err);
            if (!st && ok) {
                float *tx = X;
                X = Y;
                Y = tx;
            } else if (!st) {
                if (use_sc && rep) rep->n_shortcut_fallbacks++;
                struct pass po = {.which = -1, .in = X, .out = X, .n_windows = NS};
                st = run_layer(&q, l, &po, NULL, NULL, NULL, err);
            }
        }
        if (o->progress) o->progress(o->progress_user, l + 1, L, "done");
    }
    openblas_set_num_threads(blas_prev);
    /* the runtime states read the F32 weights; free them before the tensors change type */
    for (int t = 0; t < q.n_thr && q.states; t++) {
        lmp_rt_state_free(q.states[t]);
        q.states[t] = NULL;
    }
pack:
    for (int i = 0; i < L * 7 && !st; i++)
        if (pend[i].t) st = to_packed(pend[i].t, &pend[i].q, err);
done:
    openblas_set_num_threads(blas_prev);
    for (int i = 0; i < L * 7; i++) lmp_qtensor_out_free(&pend[i].q);
    free(pend);
    if (q.states)
        for (int t = 0; t < q.n_thr; t++) lmp_rt_state_free(q.states[t]);
    if (q.Ht)
        for (int t = 0; t < q.n_thr; t++) free(q.Ht[t]);
    if (q.Ct)
        for (int t = 0; t < q.n_thr; t++) free(q.Ct[t]);
    free(q.states);
    free(q.Ht);
    free(q.Ct);
    if (q.Rt)
        for (int t = 0; t < q.n_thr; t++) free(q.Rt[t]);
    free(q.Rt);
    free(q.rtmp);
    free(Rm);
    free(q.Nt);
    free(q.tmp);
    free(X);
    free(Y);
    free(Xd);
    free(Att);
    free(Xf);
    for (int k = 0; k < 4; k++) free(XT[k]);
    free(H);
    free(C);
    free(Wt);
    free(dW);
    free(win);
    if (rep) rep->seconds = omp_get_wtime() - t0;
    return st;
}
