/* The distillation loop: checks, the trained parameters (tensors, or low-rank adapters on
 * fixed linear weights plus norms), teacher logits on the fly inside the backward's loss
 * callback, AdamW with warmup + cosine decay and clipping, checkpoints, the final merge.
 * See distill.h for the contract. */
#include "internal.h"
#include "formats/qpack.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int has_packed(const struct lmp_model *m)
{
    for (int i = 0; i < m->n_tensors; i++)
        if (lmp_type_is_packed(m->tensors[i].type)) return 1;
    return 0;
}

static enum lmp_distill_mode resolve_mode(const struct lmp_model *s, enum lmp_distill_mode m)
{
    if (m != LMP_DISTILL_AUTO) return m;
    return has_packed(s) ? LMP_DISTILL_LORA : LMP_DISTILL_FULL;
}

/* ---- checks ---------------------------------------------------------------------------- */

static enum lmp_status check_vocab(const struct lmp_model *t, const struct lmp_model *s,
                                   struct lmp_err *err)
{
    if (t->cfg.vocab != s->cfg.vocab)
        return lmp_err_set(err, LMP_ERR_ARG,
                           "teacher has a vocabulary of %d tokens, the student %d: distillation "
                           "needs the same vocabulary",
                           t->cfg.vocab, s->cfg.vocab);
    const struct lmp_vocab *a = &t->vocab, *b = &s->vocab;
    if (a->n_tokens && b->n_tokens) {
        if (a->n_tokens != b->n_tokens)
            return lmp_err_set(err, LMP_ERR_ARG,
                               "teacher's tokenizer has %d tokens, the student's %d: "
                               "distillation needs the same vocabulary",
                               a->n_tokens, b->n_tokens);
        for (int i = 0; i < a->n_tokens; i++) {
            uint32_t la, lb;
            const char *sa = lmp_vocab_token(a, i, &la), *sb = lmp_vocab_token(b, i, &lb);
            if (la != lb || memcmp(sa, sb, la))
                return lmp_err_set(err, LMP_ERR_ARG,
                                   "teacher and student vocabularies differ at token %d "
                                   "(\"%.*s\" vs \"%.*s\"): distillation needs the same "
                                   "vocabulary",
                                   i, (int)(la > 40 ? 40 : la), sa, (int)(lb > 40 ? 40 : lb), sb);
        }
    }
    return LMP_OK;
}

enum lmp_status lmp_distill_check(const struct lmp_model *teacher, const struct lmp_model *student,
                                  int64_t n_ids, const struct lmp_distill_opts *o,
                                  struct lmp_err *err)
{
    enum lmp_status st = check_vocab(teacher, student, err);
    if (st) return st;
    if (!(o->lr > 0) || !isfinite(o->lr))
        return lmp_err_set(err, LMP_ERR_ARG, "learning rate %g: must be positive", o->lr);
    if (o->steps < 1) return lmp_err_set(err, LMP_ERR_ARG, "steps %d: must be >= 1", o->steps);
    if (o->batch < 1 || o->batch > 1 << 16)
        return lmp_err_set(err, LMP_ERR_ARG, "batch %d outside [1, 65536]", o->batch);
    const int mc = teacher->cfg.max_ctx < student->cfg.max_ctx ? teacher->cfg.max_ctx
                                                               : student->cfg.max_ctx;
    if (o->seqlen < 2 || o->seqlen > mc)
        return lmp_err_set(err, LMP_ERR_ARG,
                           "sequence length %d outside [2, %d] (the models' context)", o->seqlen,
                           mc);
    if (n_ids < o->seqlen)
        return lmp_err_set(err, LMP_ERR_ARG,
                           "the data has %lld tokens, shorter than one sequence of %d",
                           (long long)n_ids, o->seqlen);
    if (!(o->temperature > 0) || !isfinite(o->temperature))
        return lmp_err_set(err, LMP_ERR_ARG, "temperature %g: must be positive", o->temperature);
    if (o->topk < 0) return lmp_err_set(err, LMP_ERR_ARG, "top-k %d: must be >= 0", o->topk);
    if (o->warmup >= o->steps)
        return lmp_err_set(err, LMP_ERR_ARG, "warmup %d: must be shorter than the %d steps",
                           o->warmup, o->steps);
    if (!(o->min_lr >= 0 && o->min_lr <= 1))
        return lmp_err_set(err, LMP_ERR_ARG, "min-lr %g: a fraction of lr in [0, 1]", o->min_lr);
    if (!(o->beta1 >= 0 && o->beta1 < 1) || !(o->beta2 >= 0 && o->beta2 < 1))
        return lmp_err_set(err, LMP_ERR_ARG, "AdamW betas %g, %g: must be in [0, 1)", o->beta1,
                           o->beta2);
    if (!(o->adam_eps > 0))
        return lmp_err_set(err, LMP_ERR_ARG, "AdamW epsilon %g: must be positive", o->adam_eps);
    if (!(o->weight_decay >= 0) || !isfinite(o->weight_decay))
        return lmp_err_set(err, LMP_ERR_ARG, "weight decay %g: must be >= 0", o->weight_decay);
    if (!(o->clip >= 0) || !isfinite(o->clip))
        return lmp_err_set(err, LMP_ERR_ARG, "clip %g: must be >= 0 (0: off)", o->clip);
    if ((unsigned)o->mode > LMP_DISTILL_LORA || (unsigned)o->merge > LMP_DISTILL_MERGE_F32)
        return lmp_err_set(err, LMP_ERR_ARG, "unknown mode or merge");
    enum lmp_distill_mode mode = resolve_mode(student, o->mode);
    if (mode == LMP_DISTILL_LORA && (o->rank < 1 || o->rank > 4096))
        return lmp_err_set(err, LMP_ERR_ARG, "adapter rank %d outside [1, 4096]", o->rank);
    if (mode == LMP_DISTILL_FULL && has_packed(student))
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                           "the student has packed (quantized) weights, which cannot be trained "
                           "directly: use adapters (mode lora)");
    if (o->resume && !o->ckpt_path)
        return lmp_err_set(err, LMP_ERR_ARG, "resume needs a checkpoint path");
    return LMP_OK;
}

/* ---- the context ----------------------------------------------------------------------- */

void lmp_distill_ctx_free(struct lmp_distill_ctx *c)
{
    if (!c) return;
    if (c->tt)
        for (int i = 0; i < c->n_tt; i++) {
            lmp_rt_state_free(c->tt[i].s);
            free(c->tt[i].logits);
            free(c->tt[i].scratch);
        }
    free(c->tt);
    if (c->ad)
        for (int i = 0; i < c->nad; i++) free(c->ad[i].codes);
    free(c->ad);
    free(c->ad_mem);
    free(c->p);
    free(c->m);
    free(c->v);
    free(c->tokens);
    lmp_rt_grads_free(c->g);
    lmp_rt_train_free(c->tr);
    free(c);
}

static uint64_t hash_model(uint64_t h, const struct lmp_model *m)
{
    h = lmp_distill_fnv(h, &m->n_tensors, sizeof m->n_tensors);
    for (int i = 0; i < m->n_tensors; i++) {
        const struct lmp_tensor *t = &m->tensors[i];
        int32_t ty = (int32_t)t->type;
        h = lmp_distill_fnv(h, t->name, strlen(t->name));
        h = lmp_distill_fnv(h, &ty, sizeof ty);
        h = lmp_distill_fnv(h, t->shape, sizeof t->shape);
        if (t->data) h = lmp_distill_fnv(h, t->data, t->nbytes);
        if (lmp_type_is_packed(t->type)) {
            size_t np = (size_t)t->shape[0] * (size_t)((t->shape[1] + t->q.group - 1) / t->q.group);
            if (t->q.scales) h = lmp_distill_fnv(h, t->q.scales, np * 2);
            if (t->q.zeros) h = lmp_distill_fnv(h, t->q.zeros, np * 2);
            if (t->q.perm) h = lmp_distill_fnv(h, t->q.perm, (size_t)t->shape[1] * 4);
        }
    }
    return h;
}

/* Everything the trajectory depends on: settings, both models as given, the data. */
static uint64_t run_hash(const struct lmp_model *t, const struct lmp_model *s,
                         const int32_t *ids, int64_t n_ids, const struct lmp_distill_opts *o)
{
    uint64_t h = LMP_DISTILL_FNV0;
    const int32_t iv[] = {o->steps, o->batch, o->seqlen, o->warmup, o->topk, (int32_t)o->mode,
                          o->rank, o->train_embd, (int32_t)o->merge};
    const double dv[] = {o->lr, o->min_lr, o->beta1, o->beta2, o->adam_eps, o->weight_decay,
                         o->clip, o->temperature};
    h = lmp_distill_fnv(h, iv, sizeof iv);
    h = lmp_distill_fnv(h, dv, sizeof dv);
    h = lmp_distill_fnv(h, &o->seed, sizeof o->seed);
    h = lmp_distill_fnv(h, &n_ids, sizeof n_ids);
    if (ids) h = lmp_distill_fnv(h, ids, (size_t)n_ids * sizeof *ids);
    h = hash_model(h, s);
    return hash_model(h, t);
}

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* uniform in [-1, 1) from (seed, a, i) */
static float init_uniform(uint64_t seed, uint64_t a, uint64_t i)
{
    uint64_t h = mix64(mix64(seed ^ 0x6c6f7261ull) + a * 0xd1b54a32d192ed03ull + i);
    return (float)((double)(h >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

static int is_linear(const struct lmp_layer *L, const struct lmp_tensor *t)
{
    return t == L->wq || t == L->wk || t == L->wv || t == L->wo || t == L->w_gate ||
           t == L->w_up || t == L->w_down;
}

/* What a tensor is in LORA mode: 2 adapted linear, 1 trained directly, 0 fixed. */
static int lora_role(const struct lmp_model *m, const struct lmp_tensor *t, int train_embd)
{
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const struct lmp_layer *L = &m->layers[l];
        if (is_linear(L, t)) return 2;
        if (t == L->attn_norm || t == L->ffn_norm || t == L->bq || t == L->bk || t == L->bv)
            return lmp_type_is_float(t->type);
    }
    if (t == m->out_norm) return lmp_type_is_float(t->type);
    if ((t == m->tok_embd || t == m->out) && train_embd) return lmp_type_is_float(t->type);
    return 0;
}

enum lmp_status lmp_distill_ctx_create(const struct lmp_model *teacher,
                                       struct lmp_model *student,
                                       const struct lmp_distill_opts *o,
                                       struct lmp_distill_ctx **out, struct lmp_err *err)
{
    *out = NULL;
    struct lmp_distill_ctx *c = calloc(1, sizeof *c);
    if (!c) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    enum lmp_status st = LMP_OK;
    struct lmp_model *s = student;
    c->teacher = teacher;
    c->student = s;
    c->o = *o;
    c->o.mode = resolve_mode(s, o->mode);
    if (c->o.warmup < 0) c->o.warmup = o->steps / 20;
    c->vocab = s->cfg.vocab;
    c->bos = s->vocab.bos;
    const int lora = c->o.mode == LMP_DISTILL_LORA, nt = s->n_tensors;
    unsigned char *want = calloc((size_t)nt + 1, 1);
    int *role = calloc((size_t)nt + 1, sizeof *role);
    if (!want || !role) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        goto done;
    }
    /* which tensors train: FULL every float one; LORA per lora_role */
    for (int i = 0; i < nt; i++) {
        struct lmp_tensor *t = &s->tensors[i];
        role[i] = lora ? lora_role(s, t, o->train_embd) : lmp_type_is_float(t->type);
        /* the training forward reads F32 tensors in place: widen what will be written */
        if (role[i] && lmp_type_is_float(t->type) && (st = lmp_tensor_to_f32(t, err))) goto done;
        want[i] = role[i] != 0;
    }
    struct lmp_rt_train_opts to = {.n_threads = o->n_threads};
    if ((st = lmp_rt_train_create(s, o->seqlen, o->batch, &to, &c->tr, err))) goto done;
    if ((st = lmp_rt_grads_create(s, want, &c->g, err))) goto done;

    /* adapters: sizes first, one allocation */
    size_t ad_floats = 0;
    for (int i = 0; i < nt; i++)
        if (role[i] == 2) {
            const struct lmp_tensor *t = &s->tensors[i];
            size_t r = (size_t)t->shape[0], k = (size_t)t->shape[1], rk = (size_t)o->rank;
            ad_floats += 2 * rk * (r + k) + r * k;
            c->nad++;
        }
    c->np = 0;
    for (int i = 0; i < nt; i++) c->np += role[i] == 2 ? 2 : role[i] != 0;
    c->ad = calloc((size_t)c->nad + 1, sizeof *c->ad);
    c->p = calloc((size_t)c->np + 1, sizeof *c->p);
    c->ad_mem = ad_floats ? calloc(ad_floats, sizeof *c->ad_mem) : NULL;
    if (!c->ad || !c->p || (ad_floats && !c->ad_mem)) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory for the adapters");
        goto done;
    }
    float *am = c->ad_mem;
    int ia = 0, ip = 0;
    for (int i = 0; i < nt; i++) {
        struct lmp_tensor *t = &s->tensors[i];
        if (!role[i]) continue;
        if (role[i] == 1) {
            struct lmp_distill_param *p = &c->p[ip++];
            snprintf(p->name, sizeof p->name, "%s", t->name);
            p->w = t->data;
            p->g = lmp_rt_grads_of(c->g, s, t);
            p->n = (size_t)lmp_tensor_nelem(t);
            p->decay = t->n_dims == 2;
            continue;
        }
        struct lmp_distill_adapter *a = &c->ad[ia];
        a->t = t;
        a->rows = (int)t->shape[0];
        a->cols = (int)t->shape[1];
        a->rank = o->rank;
        const size_t R = (size_t)a->rows, K = (size_t)a->cols, rk = (size_t)a->rank;
        a->A = am, am += rk * K;
        a->B = am, am += R * rk;
        a->dA = am, am += rk * K;
        a->dB = am, am += R * rk;
        a->base = am, am += R * K;
        a->weff = lmp_rt_train_weight(c->tr, t);
        a->gw = lmp_rt_grads_of(c->g, s, t);
        LMP_ASSERT(a->weff && a->gw);
        memcpy(a->base, a->weff, R * K * sizeof *a->base);
        if (lmp_type_is_packed(t->type)) {
            a->grid = o->merge == LMP_DISTILL_MERGE_GRID;
            a->codes = malloc(R * K + 1);
            if (!a->codes) {
                st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
                goto done;
            }
            lmp_qpack_unpack(t->data, (int64_t)R, (int64_t)K, t->q.bits, a->codes);
        }
        const float bound = 1.0f / sqrtf((float)K);
        for (size_t e = 0; e < rk * K; e++) a->A[e] = bound * init_uniform(o->seed, (uint64_t)ia, e);
        struct lmp_distill_param *pa = &c->p[ip++], *pb = &c->p[ip++];
        snprintf(pa->name, sizeof pa->name, "%s.lora_a", t->name);
        pa->w = a->A, pa->g = a->dA, pa->n = rk * K, pa->decay = 1;
        snprintf(pb->name, sizeof pb->name, "%s.lora_b", t->name);
        pb->w = a->B, pb->g = a->dB, pb->n = R * rk, pb->decay = 1;
        ia++;
    }
    for (int i = 0; i < c->np; i++) {
        c->p[i].off = c->n_values;
        c->n_values += c->p[i].n;
    }
    c->m = calloc(c->n_values + 1, sizeof *c->m);
    c->v = calloc(c->n_values + 1, sizeof *c->v);
    c->tokens = malloc((size_t)o->batch * (size_t)o->seqlen * sizeof *c->tokens + 1);
    if (!c->m || !c->v || !c->tokens) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory for the optimiser state");
        goto done;
    }

    /* teachers: one inference state per thread that may run a sequence */
    int nthr = lmp_rt_threads(o->n_threads);
    c->n_tt = nthr < o->batch ? nthr : o->batch;
    c->tt = calloc((size_t)c->n_tt, sizeof *c->tt);
    if (!c->tt) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        goto done;
    }
    struct lmp_rt_opts ro = {.n_threads = 1};
    const size_t LV = (size_t)o->seqlen * (size_t)c->vocab;
    for (int i = 0; i < c->n_tt; i++) {
        struct lmp_distill_teacher *T = &c->tt[i];
        st = i == 0 ? lmp_rt_state_create(teacher, o->seqlen, o->seqlen, &ro, &T->s, err)
                    : lmp_rt_state_create_like(c->tt[0].s, &ro, &T->s, err);
        if (st) goto done;
        T->logits = malloc(LV * sizeof *T->logits);
        T->scratch = malloc(lmp_distill_kl_scratch(c->vocab, o->topk));
        if (!T->logits || !T->scratch) {
            st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory for teacher logits");
            goto done;
        }
    }
done:
    free(want);
    free(role);
    if (st) {
        lmp_distill_ctx_free(c);
        return st;
    }
    *out = c;
    return LMP_OK;
}

/* ---- adapters -------------------------------------------------------------------------- */

static float f16(uint16_t h) { return lmp_f16_to_f32(h); }

/* W (rows, cols), natural column order, onto t's grid in place; the codes (storage order)
 * into codes when not NULL. A zero scale keeps the old code (every code gives 0 there). */
static void grid_round(const struct lmp_distill_adapter *a, float *W, uint8_t *codes)
{
    const struct lmp_tensor *t = a->t;
    const int bits = t->q.bits, group = t->q.group, maxq = (1 << bits) - 1;
    const int64_t ng = (a->cols + group - 1) / group;
    const int32_t *perm = t->q.perm;
    for (int r = 0; r < a->rows; r++) {
        const uint16_t *sc = t->q.scales + (size_t)r * ng, *zr = t->q.zeros + (size_t)r * ng;
        float *w = W + (size_t)r * a->cols;
        const uint8_t *c0 = a->codes + (size_t)r * a->cols;
        for (int j = 0; j < a->cols; j++) {
            const int col = perm ? perm[j] : j;
            const float s = f16(sc[j / group]), z = f16(zr[j / group]);
            int q = c0[j];
            if (s != 0.0f) {
                float x = __builtin_nearbyintf(w[col] / s) + z;
                q = !(x >= 0.0f) ? 0 : x > (float)maxq ? maxq : (int)x;
            }
            w[col] = ((float)q - z) * s; /* as lmp_qview_dequant computes it */
            if (codes) codes[(size_t)r * a->cols + j] = (uint8_t)q;
        }
    }
}

/* weff = base + B A (rounded onto the grid when a->grid) */
static void adapter_apply(const struct lmp_distill_adapter *a)
{
    memcpy(a->weff, a->base, (size_t)a->rows * a->cols * sizeof *a->weff);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, a->rows, a->cols, a->rank, 1.0f,
                a->B, a->rank, a->A, a->cols, 1.0f, a->weff, a->cols);
    if (a->grid) grid_round(a, a->weff, NULL);
}

/* dB = G A^T, dA = B^T G for G = dL/dweff (straight through the rounding) */
static void adapter_grads(const struct lmp_distill_adapter *a)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, a->rows, a->rank, a->cols, 1.0f, a->gw,
                a->cols, a->A, a->cols, 0.0f, a->dB, a->rank);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, a->rank, a->cols, a->rows, 1.0f, a->B,
                a->rank, a->gw, a->cols, 0.0f, a->dA, a->cols);
}

enum lmp_status lmp_distill_ctx_merge(struct lmp_distill_ctx *c, struct lmp_err *err)
{
    for (int i = 0; i < c->nad; i++) {
        struct lmp_distill_adapter *a = &c->ad[i];
        struct lmp_tensor *t = a->t;
        const size_t n = (size_t)a->rows * a->cols;
        a->grid = 0;
        adapter_apply(a); /* weff = base + B A, float */
        if (!lmp_type_is_packed(t->type)) continue; /* F32: weff is the tensor's data */
        enum lmp_distill_merge mg = c->o.merge;
        if (mg == LMP_DISTILL_MERGE_GRID || mg == LMP_DISTILL_MERGE_GRID_POST) {
            uint8_t *codes = malloc(n + 1);
            if (!codes) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
            grid_round(a, a->weff, codes);
            enum lmp_status st =
                lmp_qpack_pack(codes, a->rows, a->cols, t->q.bits, t->data, err);
            free(codes);
            if (st) return st;
            continue;
        }
        const int half = mg == LMP_DISTILL_MERGE_F16;
        void *d = malloc(n * (half ? 2 : 4) + 1);
        if (!d) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        if (half)
            for (size_t e = 0; e < n; e++) ((uint16_t *)d)[e] = lmp_f32_to_f16(a->weff[e]);
        else
            memcpy(d, a->weff, n * 4);
        if (t->owned) free(t->data);
        free(t->q.scales);
        free(t->q.zeros);
        free(t->q.perm);
        memset(&t->q, 0, sizeof t->q);
        t->data = d;
        t->owned = 1;
        t->type = half ? LMP_TYPE_F16 : LMP_TYPE_F32;
        t->nbytes = n * (half ? 2 : 4);
    }
    return LMP_OK;
}

/* ---- one step ---------------------------------------------------------------------------- */

static enum lmp_status kl_loss(void *user, int thread, int seq, const int32_t *tokens, int len,
                               const float *logits, int vocab, float *dlogits, double *loss,
                               struct lmp_err *err)
{
    struct lmp_distill_ctx *c = user;
    struct lmp_distill_teacher *T = &c->tt[thread];
    lmp_rt_reset(T->s);
    enum lmp_status st = lmp_rt_forward(T->s, tokens, len, 0, T->logits, NULL, err);
    if (st) return st;
    *loss = lmp_distill_kl(T->logits, logits, len, vocab, c->o.temperature, c->o.topk,
                           c->scale, dlogits, T->scratch);
    return LMP_OK;
}

enum lmp_status lmp_distill_ctx_grad(struct lmp_distill_ctx *c, const int32_t *tokens,
                                     int n_seq, int len, double *loss, struct lmp_err *err)
{
    if (len > c->o.seqlen || n_seq < 1)
        return lmp_err_set(err, LMP_ERR_ARG, "distill: %d sequences of %d tokens (at most %d)",
                           n_seq, len, c->o.seqlen);
    for (int i = 0; i < c->nad; i++) adapter_apply(&c->ad[i]);
    lmp_rt_grads_zero(c->g);
    c->scale = 1.0f / (float)((double)n_seq * len);
    double total = 0;
    enum lmp_status st =
        lmp_rt_train_step(c->tr, tokens, n_seq, len, kl_loss, c, c->g, NULL, &total, err);
    if (st) return st;
    for (int i = 0; i < c->nad; i++) adapter_grads(&c->ad[i]);
    *loss = total / ((double)n_seq * len);
    return LMP_OK;
}

/* One optimiser step on the batch of step c->step. */
static enum lmp_status train_step(struct lmp_distill_ctx *c, const int32_t *ids, int64_t n_ids,
                                  double *loss, double *gnorm, double *lr, struct lmp_err *err)
{
    const struct lmp_distill_opts *o = &c->o;
    lmp_distill_batch(ids, n_ids, o->seqlen, o->batch, o->seed, c->step, c->bos, c->tokens);
    enum lmp_status st = lmp_distill_ctx_grad(c, c->tokens, o->batch, o->seqlen, loss, err);
    if (st) return st;
    double ss = 0;
    for (int i = 0; i < c->np; i++) {
        const float *g = c->p[i].g;
        for (size_t e = 0; e < c->p[i].n; e++) ss += (double)g[e] * g[e];
    }
    *gnorm = sqrt(ss);
    if (!isfinite(*gnorm) || !isfinite(*loss))
        return lmp_err_set(err, LMP_ERR_INTERNAL,
                           "step %d: the loss or its gradient is not finite (try a lower "
                           "learning rate)",
                           c->step + 1);
    *lr = lmp_distill_lr(o, c->step);
    const float clipf = o->clip > 0 && *gnorm > o->clip ? (float)(o->clip / *gnorm) : 1.0f;
    const int t = c->step + 1;
    const float b1 = (float)o->beta1, b2 = (float)o->beta2, eps = (float)o->adam_eps;
    const float bc1 = (float)(1.0 - pow(o->beta1, t)), bc2 = (float)(1.0 - pow(o->beta2, t));
    const float flr = (float)*lr, wd = (float)o->weight_decay;
    for (int i = 0; i < c->np; i++) {
        struct lmp_distill_param *p = &c->p[i];
        float *m = c->m + p->off, *v = c->v + p->off, *w = p->w;
        const float *g = p->g;
        const float dec = p->decay ? wd : 0.0f;
        for (size_t e = 0; e < p->n; e++) {
            const float ge = g[e] * clipf;
            m[e] = b1 * m[e] + (1.0f - b1) * ge;
            v[e] = b2 * v[e] + (1.0f - b2) * ge * ge;
            const float mh = m[e] / bc1, vh = v[e] / bc2;
            w[e] -= flr * (mh / (sqrtf(vh) + eps) + dec * w[e]);
        }
    }
    c->step++;
    return LMP_OK;
}

/* ---- the run ----------------------------------------------------------------------------- */

enum lmp_status lmp_distill(const struct lmp_model *teacher, struct lmp_model *student,
                            const int32_t *ids, int64_t n_ids, const struct lmp_distill_opts *o,
                            struct lmp_distill_report *rep, struct lmp_err *err)
{
    struct lmp_distill_report r0;
    if (!rep) rep = &r0;
    memset(rep, 0, sizeof *rep);
    enum lmp_status st = lmp_distill_check(teacher, student, n_ids, o, err);
    if (st) return st;
    for (int64_t i = 0; i < n_ids; i++)
        if (ids[i] < 0 || ids[i] >= student->cfg.vocab)
            return lmp_err_set(err, LMP_ERR_ARG, "token id %d (at %lld) outside the vocabulary",
                               (int)ids[i], (long long)i);
    struct lmp_distill_opts ro = *o;
    ro.mode = resolve_mode(student, o->mode);
    if (ro.warmup < 0) ro.warmup = o->steps / 20;
    /* hashed before any tensor is widened or trained */
    const uint64_t hash = run_hash(teacher, student, ids, n_ids, &ro);
    struct lmp_distill_ctx *c = NULL;
    if ((st = lmp_distill_ctx_create(teacher, student, &ro, &c, err))) return st;
    c->hash = hash;
    rep->mode = c->o.mode;
    rep->n_trained = (int64_t)c->n_values;
    rep->n_adapters = c->nad;
    for (int i = 0; i < c->nad; i++)
        rep->adapter_params += (int64_t)c->ad[i].rank * (c->ad[i].rows + c->ad[i].cols);
    if (o->resume) {
        if ((st = lmp_distill_ckpt_load(c, o->ckpt_path, err))) goto done;
        rep->resumed = 1;
    }
    rep->first_step = c->step;
    const double t0 = now_s();
    double recent[10];
    int n_recent = 0;
    while (c->step < o->steps) {
        double loss = 0, gnorm = 0, lr = 0;
        if ((st = train_step(c, ids, n_ids, &loss, &gnorm, &lr, err))) goto done;
        if (c->step == rep->first_step + 1) rep->loss_first = loss;
        recent[n_recent++ % 10] = loss;
        rep->tokens += (int64_t)o->batch * o->seqlen;
        int stop = o->stop_at > 0 && c->step >= o->stop_at && c->step < o->steps;
        const int periodic = o->ckpt_every > 0 && c->step % o->ckpt_every == 0 &&
                             c->step < o->steps;
        struct lmp_distill_progress pr = {c->step,      o->steps, rep->first_step, loss, lr,
                                          gnorm, o->ckpt_path && (periodic || stop)};
        if (o->progress && o->progress(o->progress_user, &pr) && c->step < o->steps) stop = 1;
        if (o->ckpt_path && (periodic || stop)) {
            if ((st = lmp_distill_ckpt_save(c, o->ckpt_path, err))) goto done;
            rep->n_ckpt++;
        }
        if (stop) {
            rep->stopped = 1;
            break;
        }
    }
    rep->seconds = now_s() - t0;
    rep->steps_done = c->step;
    int k = n_recent < 10 ? n_recent : 10;
    for (int i = 0; i < k; i++) rep->loss_last += recent[i] / k;
    if (!rep->stopped) st = lmp_distill_ctx_merge(c, err);
done:
    lmp_distill_ctx_free(c);
    return st;
}
