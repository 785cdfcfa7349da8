/* End-to-end tuning of a quantized model's group scales (and optionally its RMSNorm
 * weights) toward the unquantized model: after GPTQ has chosen every integer code, the
 * codes and zero points stay fixed and each fp16 scale s = s0 (1 + theta) is trained so that
 * the quantized model's next-token distributions match the original's on the calibration
 * windows (mean KL(teacher || student) over every position), by Adam with a cosine
 * schedule through the runtime's backward pass (runtime/backward.h).
 *
 * GPTQ minimises each layer's output error on its own; this sees the whole network and the
 * loss that perplexity measures. The file format is unchanged (codes, fp16 scales, zeros),
 * so the tuned model runs, exports (GGUF Q4_1/Q8_0 blocks, GPTQ safetensors) and costs the
 * same as before; only the values of the scales (and norms) differ.
 *
 * Gradients: W[r][c] = (q - z) s for storage column j of group g, c = perm[j] (or j), so
 * dL/dtheta[r][g] = s0 sum_{j in g} (q_j - z) dL/dW[r][c]; the forward always uses the
 * fp16-rounded scale, the value that is stored. Norms: w = w0 (1 + phi), dL/dphi = w0 dL/dw. */
#include "quant_model.h"
#include "formats/qpack.h"
#include "runtime/backward.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

void lmp_quant_tune_opts_default(struct lmp_quant_tune_opts *o)
{
    memset(o, 0, sizeof *o);
    o->steps = 0;
    o->batch = 8;
    o->lr = 2e-3f;
    o->norms = 0;
    o->seed = 0;
}

/* One trained vector: x = x0 (1 + p), Adam moments of p. */
struct tvec {
    struct lmp_tensor *t;
    int64_t n;        /* parameters */
    float *x0;        /* (n) initial values */
    float *p, *m, *v; /* (n) */
    float *g;         /* (n) gradient of p */
    uint8_t *codes;   /* packed tensors: (rows, cols) unpacked codes, storage order */
};

struct kl_user {
    const float *tl; /* (batch, len, vocab) teacher logits of the current step */
    int len, vocab;
};

/* KL(teacher || student) summed over the positions of one window, divided by len. */
static enum lmp_status kl_loss(void *user, int thread, int seq, const int32_t *tokens, int len,
                               const float *logits, int vocab, float *dlogits, double *loss,
                               struct lmp_err *err)
{
    (void)thread, (void)tokens, (void)err;
    const struct kl_user *u = user;
    const float *T = u->tl + (size_t)seq * len * vocab;
    double total = 0;
    const float scale = 1.0f / (float)len;
    for (int t = 0; t < len; t++) {
        const float *a = T + (size_t)t * vocab, *b = logits + (size_t)t * vocab;
        float *d = dlogits + (size_t)t * vocab;
        double ma = a[0], mb = b[0];
        for (int k = 1; k < vocab; k++) {
            if (a[k] > ma) ma = a[k];
            if (b[k] > mb) mb = b[k];
        }
        double sa = 0, sb = 0;
        for (int k = 0; k < vocab; k++) {
            sa += exp(a[k] - ma);
            sb += exp(b[k] - mb);
        }
        const double la = ma + log(sa), lb = mb + log(sb);
        double kl = 0;
        for (int k = 0; k < vocab; k++) {
            double lpa = a[k] - la, lpb = b[k] - lb, pa = exp(lpa), pb = exp(lpb);
            kl += pa * (lpa - lpb);
            d[k] = (float)(pb - pa) * scale;
        }
        total += kl;
    }
    *loss = total / len;
    return LMP_OK;
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void tvec_free(struct tvec *v)
{
    free(v->x0), free(v->p), free(v->m), free(v->v), free(v->g), free(v->codes);
}

static enum lmp_status tvec_init(struct tvec *v, struct lmp_tensor *t, int packed,
                                 struct lmp_err *err)
{
    memset(v, 0, sizeof *v);
    v->t = t;
    if (packed) {
        int64_t ng = (t->shape[1] + t->q.group - 1) / t->q.group;
        v->n = t->shape[0] * ng;
    } else {
        v->n = lmp_tensor_nelem(t);
    }
    size_t n = (size_t)v->n;
    v->x0 = malloc(n * sizeof(float));
    v->p = calloc(n, sizeof(float));
    v->m = calloc(n, sizeof(float));
    v->v = calloc(n, sizeof(float));
    v->g = calloc(n, sizeof(float));
    if (packed) v->codes = malloc((size_t)t->shape[0] * (size_t)t->shape[1]);
    if (!v->x0 || !v->p || !v->m || !v->v || !v->g || (packed && !v->codes))
        return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory tuning %s", t->name);
    if (packed) {
        for (size_t k = 0; k < n; k++) v->x0[k] = lmp_f16_to_f32(t->q.scales[k]);
        lmp_qpack_unpack(t->data, t->shape[0], t->shape[1], t->q.bits, v->codes);
    } else {
        memcpy(v->x0, t->data, n * sizeof(float));
    }
    return LMP_OK;
}

/* Writes the current values: packed -> the expanded F32 weight the backward reads (with
 * fp16-rounded scales); norms -> the tensor itself. final: packed scales stored as fp16. */
static void tvec_apply(struct tvec *v, float *Wf, int final)
{
    struct lmp_tensor *t = v->t;
    if (!v->codes) {
        float *w = t->data;
        for (int64_t k = 0; k < v->n; k++) w[k] = v->x0[k] * (1.0f + v->p[k]);
        return;
    }
    const int64_t rows = t->shape[0], cols = t->shape[1], G = t->q.group, ng = (cols + G - 1) / G;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t g = 0; g < ng; g++) {
            uint16_t h = lmp_f32_to_f16(v->x0[r * ng + g] * (1.0f + v->p[r * ng + g]));
            if (final) t->q.scales[r * ng + g] = h;
            const float s = lmp_f16_to_f32(h), z = lmp_f16_to_f32(t->q.zeros[r * ng + g]);
            const int64_t j1 = (g + 1) * G < cols ? (g + 1) * G : cols;
            for (int64_t j = g * G; j < j1; j++) {
                int64_t c = t->q.perm ? t->q.perm[j] : j;
                Wf[r * cols + c] = ((float)v->codes[r * cols + j] - z) * s;
            }
        }
    }
}

/* v->g from dL/dW (packed: per group; norms: elementwise) */
static void tvec_grad(struct tvec *v, const float *dW)
{
    struct lmp_tensor *t = v->t;
    if (!v->codes) {
        for (int64_t k = 0; k < v->n; k++) v->g[k] = v->x0[k] * dW[k];
        return;
    }
    const int64_t rows = t->shape[0], cols = t->shape[1], G = t->q.group, ng = (cols + G - 1) / G;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t g = 0; g < ng; g++) {
            const float z = lmp_f16_to_f32(t->q.zeros[r * ng + g]);
            const int64_t j1 = (g + 1) * G < cols ? (g + 1) * G : cols;
            double acc = 0;
            for (int64_t j = g * G; j < j1; j++) {
                int64_t c = t->q.perm ? t->q.perm[j] : j;
                acc += ((double)v->codes[r * cols + j] - z) * dW[r * cols + c];
            }
            v->g[r * ng + g] = (float)acc * v->x0[r * ng + g];
        }
    }
}

static void adam(struct tvec *v, float lr, int step)
{
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    const float c1 = 1.0f - powf(b1, (float)step), c2 = 1.0f - powf(b2, (float)step);
    for (int64_t k = 0; k < v->n; k++) {
        float g = v->g[k];
        v->m[k] = b1 * v->m[k] + (1.0f - b1) * g;
        v->v[k] = b2 * v->v[k] + (1.0f - b2) * g * g;
        v->p[k] -= lr * (v->m[k] / c1) / (sqrtf(v->v[k] / c2) + eps);
    }
}

enum lmp_status lmp_quant_tune(struct lmp_model *q, const struct lmp_model *teacher,
                               const int32_t *win, int n_win, int len,
                               const struct lmp_quant_tune_opts *o, double *loss_first,
                               double *loss_last, struct lmp_err *err)
{
    if (o->steps <= 0) return LMP_OK;
    if (o->batch < 1 || !(o->lr > 0.0f) || !isfinite(o->lr))
        return lmp_err_set(err, LMP_ERR_ARG, "scale tuning needs batch >= 1 and lr > 0");
    if (n_win < 1 || len < 2)
        return lmp_err_set(err, LMP_ERR_ARG, "scale tuning needs calibration windows");
    if (teacher->cfg.vocab != q->cfg.vocab || teacher->cfg.dim != q->cfg.dim ||
        teacher->cfg.n_layers != q->cfg.n_layers)
        return lmp_err_set(err, LMP_ERR_ARG, "scale tuning: the original model's shape differs");
    const int vocab = q->cfg.vocab, batch = o->batch < n_win ? o->batch : n_win;
    enum lmp_status st = LMP_OK;
    struct tvec *tv = calloc((size_t)q->n_tensors, sizeof *tv);
    unsigned char *want = calloc((size_t)q->n_tensors + 1, 1);
    int n_tv = 0;
    struct lmp_rt_train *tr = NULL;
    struct lmp_rt_grads *gr = NULL;
    struct lmp_rt_state *ts = NULL;
    float *tl = malloc((size_t)batch * len * vocab * sizeof(float));
    int32_t *bt = malloc((size_t)batch * len * sizeof *bt);
    int *order = malloc((size_t)n_win * sizeof *order);
    if (!tv || !want || !tl || !bt || !order) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory for scale tuning");
        goto done;
    }
    /* the trained tensors; norms must be owned F32 to be written */
    for (int i = 0; i < q->n_tensors && !st; i++) {
        struct lmp_tensor *t = &q->tensors[i];
        int packed = lmp_type_is_packed(t->type) && t->n_dims == 2;
        int norm = o->norms && t->type == LMP_TYPE_F32 && t->n_dims == 1 &&
                   strstr(t->name, "norm") != NULL;
        if (!packed && !norm) continue;
        if (norm && !t->owned) {
            void *d = malloc(t->nbytes);
            if (!d) {
                st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory copying %s", t->name);
                break;
            }
            memcpy(d, t->data, t->nbytes);
            t->data = d;
            t->owned = 1;
        }
        st = tvec_init(&tv[n_tv++], t, packed, err);
        want[i] = 1;
    }
    if (st) goto done;
    if (!n_tv) {
        st = lmp_err_set(err, LMP_ERR_ARG, "scale tuning: the model has no packed weights");
        goto done;
    }
    struct lmp_rt_train_opts to = {.n_threads = o->n_threads};
    struct lmp_rt_opts ro = {.n_threads = o->n_threads};
    if ((st = lmp_rt_train_create(q, len, batch, &to, &tr, err)) ||
        (st = lmp_rt_grads_create(q, want, &gr, err)) ||
        (st = lmp_rt_state_create(teacher, len, len, &ro, &ts, err)))
        goto done;
    for (int k = 0; k < n_tv; k++) tvec_apply(&tv[k], lmp_rt_train_weight(tr, tv[k].t), 0);
    uint64_t rng = o->seed ^ 0x7475ull;
    int pos = n_win; /* next index into order; reshuffled each pass */
    for (int step = 1; step <= o->steps && !st; step++) {
        for (int b = 0; b < batch; b++) {
            if (pos == n_win) {
                for (int i = 0; i < n_win; i++) order[i] = i;
                for (int i = n_win - 1; i > 0; i--) {
                    int j = (int)(splitmix(&rng) % (uint64_t)(i + 1)), x = order[i];
                    order[i] = order[j], order[j] = x;
                }
                pos = 0;
            }
            const int32_t *w = win + (size_t)order[pos++] * len;
            memcpy(bt + (size_t)b * len, w, (size_t)len * sizeof *bt);
            lmp_rt_reset(ts);
            if ((st = lmp_rt_forward(ts, w, len, 0, tl + (size_t)b * len * vocab, NULL, err)))
                break;
        }
        if (st) break;
        struct kl_user u = {tl, len, vocab};
        double loss = 0;
        lmp_rt_grads_zero(gr);
        if ((st = lmp_rt_train_step(tr, bt, batch, len, kl_loss, &u, gr, NULL, &loss, err)))
            break;
        loss /= batch;
        if (!isfinite(loss)) {
            st = lmp_err_set(err, LMP_ERR_ARG, "scale tuning diverged (loss %g at step %d)", loss,
                             step);
            break;
        }
        if (step == 1 && loss_first) *loss_first = loss;
        if (loss_last) *loss_last = loss;
        lmp_rt_grads_scale(gr, 1.0f / (float)batch);
        /* linear warm-up over the first 10 % of the steps, then cosine decay to 0 */
        const int warm = o->steps / 10 > 0 ? o->steps / 10 : 1;
        float lr = o->lr * (step <= warm ? (float)step / (float)warm
                                         : 0.5f * (1.0f + cosf(3.14159265f * (float)(step - warm) /
                                                               (float)(o->steps - warm + 1))));
        for (int k = 0; k < n_tv; k++) {
            tvec_grad(&tv[k], lmp_rt_grads_of(gr, q, tv[k].t));
            adam(&tv[k], lr, step);
            tvec_apply(&tv[k], lmp_rt_train_weight(tr, tv[k].t), 0);
        }
        if (o->progress) o->progress(o->progress_user, step, o->steps, loss);
    }
    if (!st)
        for (int k = 0; k < n_tv; k++) tvec_apply(&tv[k], lmp_rt_train_weight(tr, tv[k].t), 1);
done:
    for (int k = 0; k < n_tv; k++) tvec_free(&tv[k]);
    free(tv), free(want), free(tl), free(bt), free(order);
    lmp_rt_train_free(tr);
    lmp_rt_grads_free(gr);
    lmp_rt_state_free(ts);
    return st;
}
