/* Perplexity over a token stream (llama.cpp or GPTQ protocol, see eval.h), optionally saving
 * the scored distributions or comparing them with a base model's saved ones.
 *
 * Chunks are independent, so they are spread over threads, each with its own runtime state
 * running single-threaded kernels: at the width of small models the fork/join of parallel
 * kernels costs more than the work. Results are added in chunk order inside an ordered
 * section, so they do not depend on the number of threads. */
#include "internal.h"
#include "runtime/runtime.h"

#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define HEAD_ROWS 64 /* rows of logits computed at a time */

const char *lmp_eval_protocol_name(enum lmp_eval_protocol p)
{
    return p == LMP_EVAL_GPTQ ? "gptq" : p == LMP_EVAL_LLAMACPP ? "llamacpp" : "?";
}

int lmp_eval_protocol_parse(const char *name, enum lmp_eval_protocol *out)
{
    if (!strcmp(name, "llamacpp") || !strcmp(name, "llama.cpp")) {
        *out = LMP_EVAL_LLAMACPP;
        return 0;
    }
    if (!strcmp(name, "gptq")) {
        *out = LMP_EVAL_GPTQ;
        return 0;
    }
    return -1;
}

struct plan {
    int bos;           /* BOS id, or -1 when the vocabulary adds none */
    int64_t stream_len;
    int n_chunks, ctx, first, per_chunk;
};

static enum lmp_status make_plan(const struct lmp_model *m, int64_t n_ids,
                                 const struct lmp_eval_opts *o, struct plan *p,
                                 struct lmp_err *err)
{
    const struct lmp_vocab *v = &m->vocab;
    if (o->protocol != LMP_EVAL_LLAMACPP && o->protocol != LMP_EVAL_GPTQ)
        return lmp_err_set(err, LMP_ERR_ARG, "unknown perplexity protocol %d", (int)o->protocol);
    int min_ctx = o->protocol == LMP_EVAL_LLAMACPP ? 3 : 2;
    if (o->ctx < min_ctx || o->ctx > m->cfg.max_ctx)
        return lmp_err_set(err, LMP_ERR_ARG, "context %d outside [%d, %d] (the model's maximum)",
                           o->ctx, min_ctx, m->cfg.max_ctx);
    if (n_ids < 0) return lmp_err_set(err, LMP_ERR_ARG, "negative token count");
    p->bos = v->add_bos && v->bos >= 0 && v->bos < m->cfg.vocab ? v->bos : -1;
    p->stream_len = n_ids + (p->bos >= 0);
    p->ctx = o->ctx;
    int64_t nc = p->stream_len / o->ctx;
    if (nc < 1)
        return lmp_err_set(err, LMP_ERR_ARG,
                           "the text has %lld tokens%s, fewer than one chunk of %d",
                           (long long)p->stream_len, p->bos >= 0 ? " with BOS" : "", o->ctx);
    if (o->max_chunks > 0 && nc > o->max_chunks) nc = o->max_chunks;
    if (nc > INT32_MAX / 2) nc = INT32_MAX / 2;
    p->n_chunks = (int)nc;
    p->first = o->protocol == LMP_EVAL_LLAMACPP ? o->ctx / 2 : 0;
    p->per_chunk = o->ctx - 1 - p->first;
    return LMP_OK;
}

enum lmp_status lmp_eval_plan(const struct lmp_model *m, int64_t n_ids,
                              const struct lmp_eval_opts *opts, int *n_chunks, int64_t *n_scored,
                              struct lmp_err *err)
{
    struct plan p;
    enum lmp_status st = make_plan(m, n_ids, opts, &p, err);
    if (st) return st;
    *n_chunks = p.n_chunks;
    *n_scored = (int64_t)p.n_chunks * p.per_chunk;
    return LMP_OK;
}

/* llama.cpp's mean and its standard error */
static void mean_unc(double sum, double sum2, int64_t n, double *mean, double *unc)
{
    *mean = n > 0 ? sum / (double)n : 0;
    double var = n > 0 ? sum2 / (double)n - *mean * *mean : 0;
    *unc = var > 0 && n > 10 ? sqrt(var / (double)(n - 1)) : 0;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* linear interpolation between order statistics, as llama-perplexity */
static double percentile(const float *v, size_t n, double f)
{
    if (f <= 0) return v[0];
    if (f >= 1) return v[n - 1];
    double p = f * (double)(n - 1);
    size_t i = (size_t)p;
    p -= (double)i;
    return (1 - p) * v[i] + p * v[i + 1 < n ? i + 1 : n - 1];
}

/* Sums over scored positions: one set per chunk, added up in chunk order. */
struct sums {
    double nll, nll2;
    double nll_b, nll_b2, nll_nll_b, kld, kld2, dp, dp2, dp4;
    int64_t same_top;
};

static void sums_add(struct sums *a, const struct sums *b)
{
    a->nll += b->nll;
    a->nll2 += b->nll2;
    a->nll_b += b->nll_b;
    a->nll_b2 += b->nll_b2;
    a->nll_nll_b += b->nll_nll_b;
    a->kld += b->kld;
    a->kld2 += b->kld2;
    a->dp += b->dp;
    a->dp2 += b->dp2;
    a->dp4 += b->dp4;
    a->same_top += b->same_top;
}

/* The base file, opened and checked against this run. */
static enum lmp_status open_base(const char *path, const struct lmp_logits_hdr *want, int *fd,
                                 struct lmp_logits_hdr *h, struct lmp_err *err)
{
    *fd = open(path, O_RDONLY);
    if (*fd < 0) return lmp_err_set(err, LMP_ERR_IO, "%s: %s", path, strerror(errno));
    unsigned char hb[LMP_LOGITS_HEADER];
    ssize_t got = pread(*fd, hb, sizeof hb, 0);
    enum lmp_status st = lmp_logits_hdr_decode(hb, got > 0 ? (size_t)got : 0, path, h, err);
    if (st) return st;
    if (h->protocol != want->protocol || h->ctx != want->ctx)
        return lmp_err_set(err, LMP_ERR_ARG,
                           "%s: base computed with protocol %s, context %u; this run uses %s, %u",
                           path, lmp_eval_protocol_name((enum lmp_eval_protocol)h->protocol),
                           h->ctx, lmp_eval_protocol_name((enum lmp_eval_protocol)want->protocol),
                           want->ctx);
    if (h->vocab != want->vocab)
        return lmp_err_set(err, LMP_ERR_ARG, "%s: base vocabulary has %u tokens, the model %u",
                           path, h->vocab, want->vocab);
    if (h->n_chunks != want->n_chunks || h->stream_crc != want->stream_crc)
        return lmp_err_set(err, LMP_ERR_ARG,
                           "%s: base computed on another token stream (%u chunks, crc %08x; this "
                           "run %u chunks, crc %08x)",
                           path, h->n_chunks, h->stream_crc, want->n_chunks, want->stream_crc);
    struct stat sb;
    uint64_t need = LMP_LOGITS_HEADER + h->n_positions * lmp_logits_rec_size((int)h->topk);
    if (fstat(*fd, &sb) || (uint64_t)sb.st_size != need)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: %lld bytes, the header implies %llu", path,
                           (long long)sb.st_size, (unsigned long long)need);
    return LMP_OK;
}

static uint32_t stream_crc(const int32_t *t, size_t n)
{
    uLong crc = crc32(0L, Z_NULL, 0);
    unsigned char buf[4096];
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t)t[i];
        buf[k++] = (unsigned char)v, buf[k++] = (unsigned char)(v >> 8);
        buf[k++] = (unsigned char)(v >> 16), buf[k++] = (unsigned char)(v >> 24);
        if (k == sizeof buf || i + 1 == n) {
            crc = crc32(crc, buf, (uInt)k);
            k = 0;
        }
    }
    return (uint32_t)crc;
}

enum lmp_status lmp_eval_ppl(const struct lmp_model *m, const int32_t *ids, int64_t n_ids,
                             const struct lmp_eval_opts *o, struct lmp_eval_result *res,
                             struct lmp_err *err)
{
    memset(res, 0, sizeof *res);
    struct plan p;
    enum lmp_status st = make_plan(m, n_ids, o, &p, err);
    if (st) return st;
    const int vocab = m->cfg.vocab, dim = m->cfg.dim, ctx = p.ctx;
    for (int64_t i = 0; i < n_ids; i++)
        if (ids[i] < 0 || ids[i] >= vocab)
            return lmp_err_set(err, LMP_ERR_ARG,
                               "token id %d (at index %lld) outside the vocabulary [0, %d)",
                               (int)ids[i], (long long)i, vocab);
    int topk = o->topk > 0 ? o->topk : LMP_EVAL_TOPK_DEFAULT;
    if (topk > vocab) topk = vocab;

    /* the chunks exactly as evaluated */
    size_t n_tok = (size_t)p.n_chunks * (size_t)ctx; /* <= the stream's length */
    int32_t *toks = n_tok <= SIZE_MAX / sizeof *toks ? malloc(n_tok * sizeof *toks) : NULL;
    float *kld_v = NULL;
    int base_fd = -1;
    FILE *save = NULL;
    char save_tmp[4200] = "";
    if (!toks) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n_tok; i++)
        toks[i] = p.bos >= 0 ? (i == 0 ? p.bos : ids[i - 1]) : ids[i];
    if (o->protocol == LMP_EVAL_LLAMACPP && p.bos >= 0)
        for (int c = 0; c < p.n_chunks; c++) toks[(size_t)c * ctx] = p.bos;
    struct lmp_logits_hdr hdr = {
        .protocol = (uint32_t)o->protocol, .ctx = (uint32_t)ctx, .vocab = (uint32_t)vocab,
        .topk = (uint32_t)topk, .n_chunks = (uint32_t)p.n_chunks,
        .per_chunk = (uint32_t)p.per_chunk, .stream_crc = stream_crc(toks, n_tok),
        .n_positions = (uint64_t)p.n_chunks * (uint64_t)p.per_chunk};
    struct lmp_logits_hdr base = {0};
    const size_t npos = (size_t)hdr.n_positions;
    if (o->kl_base) {
        if ((st = open_base(o->kl_base, &hdr, &base_fd, &base, err))) goto done;
        if (!(kld_v = malloc(npos * sizeof *kld_v))) {
            st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
            goto done;
        }
    }
    if (o->save_logits) {
        snprintf(save_tmp, sizeof save_tmp, "%s.tmp.%ld", o->save_logits, (long)getpid());
        save = fopen(save_tmp, "wb");
        unsigned char hb[LMP_LOGITS_HEADER];
        lmp_logits_hdr_encode(&hdr, hb);
        if (!save || fwrite(hb, 1, sizeof hb, save) != sizeof hb) {
            st = lmp_err_set(err, LMP_ERR_IO, "%s: %s", o->save_logits, strerror(errno));
            goto done;
        }
    }

    int T = lmp_rt_threads(o->n_threads);
    int n_par = T < p.n_chunks ? T : p.n_chunks;
    struct lmp_rt_opts ro = {.n_threads = n_par > 1 ? 1 : T, .ref = o->ref};
    /* OpenBLAS's thread count is process-wide: set it to ours for the evaluation (one per
     * chunk-parallel thread), and restore it after. */
    int blas_prev = openblas_get_num_threads();
    openblas_set_num_threads(n_par > 1 ? 1 : T);
    const size_t rec_sz = lmp_logits_rec_size(topk);
    const size_t brec_sz = o->kl_base ? lmp_logits_rec_size((int)base.topk) : 0;
    struct sums total = {0};
    int failed = 0;
    double t0 = omp_get_wtime();
    /* one state per thread, sharing the weights (expanded once when not F32) */
    struct lmp_rt_state **states = calloc((size_t)n_par, sizeof *states);
    if (!states) st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    if (!st) st = lmp_rt_state_create(m, ctx, ctx < 512 ? ctx : 512, &ro, &states[0], err);
    for (int i = 1; i < n_par && !st; i++)
        st = lmp_rt_state_create_like(states[0], NULL, &states[i], err);
    if (st) failed = 1;

#pragma omp parallel num_threads(n_par) if (!failed)
    {
        struct lmp_err lerr = {{0}};
        struct lmp_rt_state *s = states ? states[omp_get_thread_num()] : NULL;
        enum lmp_status lst = s ? LMP_OK : LMP_ERR_INTERNAL;
        float *hid = malloc((size_t)ctx * dim * sizeof *hid);
        float *lg = malloc((size_t)HEAD_ROWS * vocab * sizeof *lg);
        unsigned char *recs = save ? malloc((size_t)p.per_chunk * rec_sz) : NULL;
        unsigned char *brecs = o->kl_base ? malloc((size_t)p.per_chunk * brec_sz) : NULL;
        unsigned char *mark = calloc((size_t)vocab, 1);
        int32_t *tk_ids = malloc((size_t)topk * sizeof *tk_ids);
        float *tk_vals = malloc((size_t)topk * sizeof *tk_vals);
        int big_k = save && topk > LMP_TOPK_INSERTION;
        struct lmp_cand *cand = big_k ? malloc((size_t)vocab * sizeof *cand) : NULL;
        if (!lst && (!hid || !lg || (save && !recs) || (o->kl_base && !brecs) || !mark ||
                     !tk_ids || !tk_vals || (big_k && !cand)))
            lst = lmp_err_set(&lerr, LMP_ERR_NOMEM, "out of memory");

#pragma omp for ordered schedule(static, 1)
        for (int c = 0; c < p.n_chunks; c++) {
            struct sums cs = {0};
            int stop;
#pragma omp atomic read
            stop = failed;
            const int32_t *ct = toks + (size_t)c * ctx;
            if (!lst && !stop) {
                lmp_rt_reset(s);
                lst = lmp_rt_forward_hidden(s, ct, ctx, 0, m->cfg.n_layers, hid, NULL, &lerr);
            }
            if (!lst && !stop && brecs) {
                size_t len = (size_t)p.per_chunk * brec_sz;
                off_t off = (off_t)(LMP_LOGITS_HEADER + (uint64_t)c * p.per_chunk * brec_sz);
                if (pread(base_fd, brecs, len, off) != (ssize_t)len)
                    lst = lmp_err_set(&lerr, LMP_ERR_IO, "%s: read error at chunk %d",
                                      o->kl_base, c);
            }
            for (int j0 = p.first; j0 < ctx - 1 && !lst && !stop; j0 += HEAD_ROWS) {
                int rb = ctx - 1 - j0 < HEAD_ROWS ? ctx - 1 - j0 : HEAD_ROWS;
                if ((lst = lmp_rt_head(s, hid + (size_t)j0 * dim, rb, lg, NULL, &lerr))) break;
                for (int r = 0; r < rb && !lst; r++) {
                    int j = j0 + r, tok = ct[j + 1], k = j - p.first;
                    const float *row = lg + (size_t)r * vocab;
                    struct lmp_lsm ls;
                    lmp_lsm_row(row, vocab, &ls);
                    double nll = ls.lse - (double)(row[tok] - ls.mx);
                    cs.nll += nll;
                    cs.nll2 += nll * nll;
                    if (recs)
                        lmp_logits_rec_encode(row, vocab, &ls, tok, topk, tk_ids, tk_vals, cand,
                                              recs + (size_t)k * rec_sz);
                    if (brecs) {
                        struct lmp_kl_pos kp;
                        int64_t at = (int64_t)c * p.per_chunk + k;
                        lst = lmp_logits_rec_compare(brecs + (size_t)k * brec_sz, (int)base.topk,
                                                     row, vocab, &ls, tok, mark, &kp, o->kl_base,
                                                     at, &lerr);
                        if (lst) break;
                        cs.nll_b += kp.nll_base;
                        cs.nll_b2 += kp.nll_base * kp.nll_base;
                        cs.nll_nll_b += kp.nll * kp.nll_base;
                        cs.kld += kp.kld;
                        cs.kld2 += kp.kld * kp.kld;
                        cs.dp += kp.p_diff;
                        cs.dp2 += kp.p_diff * kp.p_diff;
                        cs.dp4 += kp.p_diff * kp.p_diff * kp.p_diff * kp.p_diff;
                        cs.same_top += kp.same_top;
                        kld_v[at] = (float)kp.kld;
                    }
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
                    sums_add(&total, &cs);
                    if (save && fwrite(recs, rec_sz, (size_t)p.per_chunk, save) !=
                                    (size_t)p.per_chunk) {
                        st = lmp_err_set(err, LMP_ERR_IO, "%s: %s", o->save_logits,
                                         strerror(errno));
#pragma omp atomic write
                        failed = 1;
                    }
                    if (o->progress) o->progress(o->progress_user, c + 1, p.n_chunks);
                }
            }
        }
        free(hid), free(lg), free(recs), free(brecs), free(mark);
        free(tk_ids), free(tk_vals), free(cand);
    }
    double t1 = omp_get_wtime();
    for (int i = 0; states && i < n_par; i++) lmp_rt_state_free(states[i]);
    free(states);
    openblas_set_num_threads(blas_prev);
    if (st) goto done;

    if (save) {
        int bad = fflush(save) != 0 || ferror(save);
        bad |= fclose(save) != 0;
        save = NULL;
        if (bad || rename(save_tmp, o->save_logits)) {
            st = lmp_err_set(err, LMP_ERR_IO, "%s: %s", o->save_logits, strerror(errno));
            goto done;
        }
        save_tmp[0] = 0;
    }

    int64_t n = (int64_t)npos;
    res->n_chunks = p.n_chunks;
    res->n_scored = n;
    res->n_processed = (int64_t)n_tok;
    res->seconds = t1 - t0;
    res->tok_per_s = res->seconds > 0 ? (double)n_tok / res->seconds : 0;
    double unc;
    mean_unc(total.nll, total.nll2, n, &res->nll_mean, &unc);
    {
        /* llama.cpp's final estimate does not need n > 10 */
        double var = total.nll2 / (double)n - res->nll_mean * res->nll_mean;
        unc = var > 0 && n > 1 ? sqrt(var / (double)(n - 1)) : 0;
    }
    res->ppl = exp(res->nll_mean);
    res->ppl_err = res->ppl * unc;
    if (o->kl_base) {
        struct lmp_eval_kl *k = &res->kl;
        res->has_kl = 1;
        k->topk = (int)base.topk;
        double lb, ulb, lq, ulq;
        mean_unc(total.nll, total.nll2, n, &lq, &ulq);
        mean_unc(total.nll_b, total.nll_b2, n, &lb, &ulb);
        k->ppl_base = exp(lb);
        k->ppl_base_err = k->ppl_base * ulb;
        double cov = n >= 10 ? (total.nll_nll_b / (double)n - lq * lb) / (double)(n - 1) : 0;
        k->ln_ratio = lq - lb;
        double v = ulq * ulq + ulb * ulb - 2 * cov;
        k->ln_ratio_err = v > 0 ? sqrt(v) : 0;
        mean_unc(total.kld, total.kld2, n, &k->kld_mean, &k->kld_mean_err);
        double mse, umse;
        mean_unc(total.dp2, total.dp4, n, &mse, &umse);
        k->dp_rms = sqrt(mse);
        k->dp_rms_err = k->dp_rms > 0 ? 0.5 / k->dp_rms * umse : 0;
        k->top1 = (double)total.same_top / (double)n;
        k->top1_err = n > 1 ? sqrt(k->top1 * (1 - k->top1) / (double)(n - 1)) : 0;
        qsort(kld_v, npos, sizeof *kld_v, cmp_float);
        k->kld_median = npos % 2 ? kld_v[npos / 2]
                                 : 0.5 * ((double)kld_v[npos / 2] + kld_v[npos / 2 - 1]);
        k->kld_min = kld_v[0];
        k->kld_max = kld_v[npos - 1];
        k->kld_p90 = percentile(kld_v, npos, 0.90);
        k->kld_p99 = percentile(kld_v, npos, 0.99);
        k->kld_p999 = percentile(kld_v, npos, 0.999);
    }
done:
    if (save) fclose(save);
    if (save_tmp[0]) remove(save_tmp);
    if (base_fd >= 0) close(base_fd);
    free(kld_v);
    free(toks);
    return st;
}
