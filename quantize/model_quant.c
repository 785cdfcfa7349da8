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

/* ---- Hessian collection through the runtime hook ---------------------------------------- */

struct hcollect {
    int layer;
    enum lmp_rt_linear which;
    float *H;        /* (cols, cols) this thread's running average */
    int cols;
    int64_t n;
    enum lmp_status st;
    struct lmp_err err;
};

static void hook_collect(void *user, int layer, enum lmp_rt_linear which, const float *x, int n,
                         int in)
{
    struct hcollect *c = user;
    if (layer != c->layer || which != c->which || c->st) return;
    if (in != c->cols) {
        c->st = lmp_err_set(&c->err, LMP_ERR_INTERNAL, "hook width %d, expected %d", in, c->cols);
        return;
    }
    c->st = lmp_quant_hessian_accumulate(c->H, c->cols, x, n, &c->n, &c->err);
}

struct qctx {
    const struct lmp_model *m;
    const struct lmp_quant_model_opts *o;
    int n_thr;
    struct lmp_rt_state **states; /* (n_thr) */
    float *X;                     /* (nsamples, seqlen, dim) inputs of the current layer */
    float *tmp;                   /* (n_thr, seqlen, dim) */
    float **Ht;                   /* (n_thr) per-thread Hessians */
    int64_t *Nt;
};

/* Runs layer l over every window (on a copy of its input) with the hook collecting the
 * input of `which`; H = the combined average. With which < 0 nothing is collected and the
 * layer's outputs replace X (the next layer's input). */
static enum lmp_status run_layer(struct qctx *q, int l, int which, int cols, float *H,
                                 struct lmp_err *err)
{
    const int S = q->o->seqlen, D = q->m->cfg.dim, NS = q->o->nsamples;
    enum lmp_status st = LMP_OK;
    for (int t = 0; t < q->n_thr && which >= 0; t++) {
        memset(q->Ht[t], 0, (size_t)cols * (size_t)cols * sizeof(float));
        q->Nt[t] = 0;
    }
#pragma omp parallel num_threads(q->n_thr)
    {
        int t = omp_get_thread_num();
        struct hcollect c = {.layer = l, .which = (enum lmp_rt_linear)(which < 0 ? 0 : which),
                             .H = q->Ht[t], .cols = cols};
        struct lmp_rt_hooks hk = {.user = &c, .linear_input = hook_collect};
        struct lmp_err e = {{0}};
        float *h = q->tmp + (size_t)t * S * D;
#pragma omp for schedule(dynamic, 1)
        for (int w = 0; w < NS; w++) {
            if (c.st) continue;
            float *x = q->X + (size_t)w * S * D;
            float *io = which < 0 ? x : h;
            if (which >= 0) memcpy(h, x, (size_t)S * D * sizeof(float));
            enum lmp_status s2 = lmp_rt_forward_layer(q->states[t], l, io, S, 0,
                                                      which >= 0 ? &hk : NULL, &e);
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
    if (st || which < 0) return st;
    /* combine: H = sum_t N_t H_t / N (each H_t is an average over its N_t rows) */
    int64_t N = 0;
    for (int t = 0; t < q->n_thr; t++) N += q->Nt[t];
    memset(H, 0, (size_t)cols * (size_t)cols * sizeof(float));
    for (int t = 0; t < q->n_thr; t++)
        if (q->Nt[t]) cblas_saxpy(cols * cols, (float)((double)q->Nt[t] / (double)N), q->Ht[t], 1, H, 1);
    return LMP_OK;
}

/* Quantizes one F32 weight tensor into a packed tensor (in place in the model struct),
 * using the prepared factor (GPTQ) or none (RTN). W_hat is written back into the F32 data
 * first, so the rest of the calibration sees the quantized weights. */
struct pending {
    struct lmp_tensor *t;
    struct lmp_qtensor_out q;
};

static enum lmp_status quant_one(struct lmp_tensor *t, const struct lmp_quant_hinv *hv,
                                 const struct lmp_quant_opts *qo, struct pending *pd,
                                 struct lmp_quant_report *rep, struct lmp_err *err)
{
    int rows = (int)t->shape[0], cols = (int)t->shape[1];
    float *W = t->data;
    float *What = malloc((size_t)rows * (size_t)cols * sizeof(float));
    if (!What) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    enum lmp_status st = hv ? lmp_quant_gptq_apply(W, rows, cols, hv, qo, &pd->q, What, err)
                            : lmp_quant_rtn_matrix(W, rows, cols, qo, &pd->q, What, err);
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

enum lmp_status lmp_quant_model(struct lmp_model *m, const int32_t *calib, int64_t n_calib,
                                const struct lmp_quant_model_opts *o,
                                struct lmp_quant_report *rep, struct lmp_err *err)
{
    const struct lmp_config *c = &m->cfg;
    const int L = c->n_layers, D = c->dim;
    enum lmp_status st = LMP_OK;
    if (rep) memset(rep, 0, sizeof *rep);
    double t0 = omp_get_wtime();

    /* the matrices, in true-sequential stages */
    struct lmp_tensor *mats[4][3];
    const int n_in_stage[4] = {3, 1, 2, 1};
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
    struct qctx q = {.m = m, .o = o};
    int32_t *win = NULL;
    float *H = NULL;
    int blas_prev = openblas_get_num_threads();

    if (o->method == LMP_QUANT_RTN) {
        for (int l = 0; l < L && !st; l++) {
            struct lmp_layer *ly = &m->layers[l];
            struct lmp_tensor *all[7] = {ly->wq, ly->wk, ly->wv, ly->wo, ly->w_gate, ly->w_up, ly->w_down};
            for (int k = 0; k < 7 && !st; k++)
                st = quant_one(all[k], NULL, &o->q, &pend[l * 7 + k], rep, err);
            if (o->progress) o->progress(o->progress_user, l + 1, L, "rtn");
        }
        goto pack;
    }

    /* GPTQ: calibration windows and per-thread runtime states */
    if (o->python_sampler)
        st = lmp_quant_calib_windows_python(calib, n_calib, o->nsamples, o->seqlen, o->seed,
                                            m->vocab.bos, &win, err);
    else
        st = lmp_quant_calib_windows(calib, n_calib, o->nsamples, o->seqlen, o->seed,
                                     o->calib_bos ? m->vocab.bos : -1, &win, err);
    if (st) goto done;
    for (int64_t i = 0; i < (int64_t)o->nsamples * o->seqlen; i++)
        if (win[i] < 0 || win[i] >= c->vocab) {
            st = lmp_err_set(err, LMP_ERR_ARG, "calibration token %d outside the vocabulary", win[i]);
            goto done;
        }
    if (o->seqlen > c->max_ctx) {
        st = lmp_err_set(err, LMP_ERR_ARG, "--seqlen %d is above the model's context %d", o->seqlen, c->max_ctx);
        goto done;
    }
    q.n_thr = o->n_threads > 0 ? o->n_threads : omp_get_max_threads();
    if (q.n_thr > o->nsamples) q.n_thr = o->nsamples;
    int maxin = D;
    for (int l = 0; l < L; l++) {
        int qd = c->layer[l].n_heads * c->head_dim;
        if (qd > maxin) maxin = qd;
        if (c->layer[l].ffn > maxin) maxin = c->layer[l].ffn;
    }
    q.states = calloc((size_t)q.n_thr, sizeof *q.states);
    q.Ht = calloc((size_t)q.n_thr, sizeof *q.Ht);
    q.Nt = calloc((size_t)q.n_thr, sizeof *q.Nt);
    q.X = malloc((size_t)o->nsamples * o->seqlen * D * sizeof(float));
    q.tmp = malloc((size_t)q.n_thr * o->seqlen * D * sizeof(float));
    H = malloc((size_t)maxin * maxin * sizeof(float));
    if (!q.states || !q.Ht || !q.Nt || !q.X || !q.tmp || !H) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory for calibration activations");
        goto done;
    }
    for (int t = 0; t < q.n_thr; t++)
        if (!(q.Ht[t] = malloc((size_t)maxin * maxin * sizeof(float)))) {
            st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
            goto done;
        }
    struct lmp_rt_opts ro = {.n_threads = 1};
    if ((st = lmp_rt_state_create(m, o->seqlen, o->seqlen, &ro, &q.states[0], err))) goto done;
    for (int t = 1; t < q.n_thr; t++)
        if ((st = lmp_rt_state_create_like(q.states[0], &ro, &q.states[t], err))) goto done;
    openblas_set_num_threads(1); /* parallelism is over windows */
    for (int w = 0; w < o->nsamples && !st; w++)
        st = lmp_rt_embed(q.states[0], win + (size_t)w * o->seqlen, o->seqlen,
                          q.X + (size_t)w * o->seqlen * D, err);
    for (int l = 0; l < L && !st; l++) {
        struct lmp_layer *ly = &m->layers[l];
        mats[0][0] = ly->wq; mats[0][1] = ly->wk; mats[0][2] = ly->wv;
        mats[1][0] = ly->wo;
        mats[2][0] = ly->w_gate; mats[2][1] = ly->w_up;
        mats[3][0] = ly->w_down;
        static const enum lmp_rt_linear which[4] = {LMP_RT_QKV, LMP_RT_O, LMP_RT_GATE_UP, LMP_RT_DOWN};
        static const char *const sname[4] = {"qkv", "o", "gate_up", "down"};
        int pi = l * 7;
        for (int sg = 0; sg < 4 && !st; sg++) {
            int cols = (int)mats[sg][0]->shape[1];
            if ((st = run_layer(&q, l, which[sg], cols, H, err))) break;
            struct lmp_quant_hinv *hv = NULL;
            openblas_set_num_threads(blas_prev);
            st = lmp_quant_hinv_prepare(H, cols, &o->q, &hv, err);
            for (int k = 0; k < n_in_stage[sg] && !st; k++)
                st = quant_one(mats[sg][k], hv, &o->q, &pend[pi++], rep, err);
            if (!st && hv && hv->damp_retries && rep) rep->n_damp_retries += hv->damp_retries;
            lmp_quant_hinv_free(hv);
            openblas_set_num_threads(1);
            if (o->progress) o->progress(o->progress_user, l, L, sname[sg]);
        }
        /* the quantized layer's outputs feed the next layer */
        if (!st && l + 1 < L) st = run_layer(&q, l, -1, 0, NULL, err);
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
    free(q.states);
    free(q.Ht);
    free(q.Nt);
    free(q.X);
    free(q.tmp);
    free(H);
    free(win);
    if (rep) rep->seconds = omp_get_wtime() - t0;
    return st;
}
