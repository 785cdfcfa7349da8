/* The saved-distributions file (docs/LOGITS.md): header, one record per scored position
 * (top-k ids and log-probs, the scored token's log-prob, the log of the remaining mass),
 * and the per-position KL-divergence against such a record. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}
static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static void put_f32(unsigned char *p, float f)
{
    uint32_t v;
    memcpy(&v, &f, 4);
    put_u32(p, v);
}
static float get_f32(const unsigned char *p)
{
    uint32_t v = get_u32(p);
    float f;
    memcpy(&f, &v, 4);
    return f;
}

void lmp_logits_hdr_encode(const struct lmp_logits_hdr *h, unsigned char out[LMP_LOGITS_HEADER])
{
    memset(out, 0, LMP_LOGITS_HEADER);
    memcpy(out, LMP_LOGITS_MAGIC, 8);
    put_u32(out + 8, LMP_LOGITS_VERSION);
    put_u32(out + 12, h->protocol);
    put_u32(out + 16, h->ctx);
    put_u32(out + 20, h->vocab);
    put_u32(out + 24, h->topk);
    put_u32(out + 28, h->n_chunks);
    put_u32(out + 32, h->per_chunk);
    put_u32(out + 36, h->stream_crc);
    put_u32(out + 40, (uint32_t)h->n_positions);
    put_u32(out + 44, (uint32_t)(h->n_positions >> 32));
}

enum lmp_status lmp_logits_hdr_decode(const unsigned char *p, size_t len, const char *path,
                                      struct lmp_logits_hdr *h, struct lmp_err *err)
{
    if (len < LMP_LOGITS_HEADER || memcmp(p, LMP_LOGITS_MAGIC, 8))
        return lmp_err_set(err, LMP_ERR_FORMAT,
                           "%s: not a logits file of lmpress ppl --save-logits (bad magic)", path);
    uint32_t ver = get_u32(p + 8);
    if (ver != LMP_LOGITS_VERSION)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: logits file version %u, expected %d", path,
                           ver, LMP_LOGITS_VERSION);
    h->protocol = get_u32(p + 12);
    h->ctx = get_u32(p + 16);
    h->vocab = get_u32(p + 20);
    h->topk = get_u32(p + 24);
    h->n_chunks = get_u32(p + 28);
    h->per_chunk = get_u32(p + 32);
    h->stream_crc = get_u32(p + 36);
    h->n_positions = (uint64_t)get_u32(p + 40) | (uint64_t)get_u32(p + 44) << 32;
    if (h->vocab < 1 || h->vocab > LMP_MAX_VOCAB || h->topk < 1 || h->topk > h->vocab ||
        h->ctx < 2 || h->ctx > LMP_MAX_CTX || h->per_chunk < 1 || h->per_chunk >= h->ctx ||
        h->n_chunks < 1 || h->n_positions != (uint64_t)h->n_chunks * h->per_chunk)
        return lmp_err_set(err, LMP_ERR_FORMAT,
                           "%s: inconsistent header (vocab %u, top-k %u, ctx %u, %u chunks of %u, "
                           "%llu positions)",
                           path, h->vocab, h->topk, h->ctx, h->n_chunks, h->per_chunk,
                           (unsigned long long)h->n_positions);
    return LMP_OK;
}

void lmp_lsm_row(const float *l, int vocab, struct lmp_lsm *s)
{
    int am = 0;
    for (int i = 1; i < vocab; i++)
        if (l[i] > l[am]) am = i;
    float mx = l[am];
    double sum = 0;
    for (int i = 0; i < vocab; i++) sum += expf(l[i] - mx);
    s->mx = mx;
    s->sum = sum;
    s->lse = log(sum);
    s->argmax = am;
}

/* log p_i of a row */
static double logp(const float *l, const struct lmp_lsm *s, int i)
{
    return (double)(l[i] - s->mx) - s->lse;
}

static int cand_cmp(const void *a, const void *b)
{
    const struct lmp_cand *x = a, *y = b;
    if (x->v != y->v) return x->v > y->v ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

void lmp_logits_rec_encode(const float *l, int vocab, const struct lmp_lsm *s, int tok, int topk,
                           int32_t *ids, float *vals, struct lmp_cand *all, unsigned char *rec)
{
    int cnt = 0;
    if (topk > LMP_TOPK_INSERTION) {
        /* large k: sort everything (insertion would be O(vocab * k)) */
        for (int i = 0; i < vocab; i++) all[i] = (struct lmp_cand){l[i], i};
        qsort(all, (size_t)vocab, sizeof *all, cand_cmp);
        for (cnt = 0; cnt < topk; cnt++) {
            ids[cnt] = all[cnt].id;
            vals[cnt] = all[cnt].v;
        }
    }
    /* small k: insertion into a descending list; equal values keep the lower id first */
    for (int i = 0; i < vocab && topk <= LMP_TOPK_INSERTION; i++) {
        float v = l[i];
        if (cnt == topk && !(v > vals[cnt - 1])) continue;
        int p = cnt < topk ? cnt++ : cnt - 1;
        while (p > 0 && vals[p - 1] < v) {
            vals[p] = vals[p - 1];
            ids[p] = ids[p - 1];
            p--;
        }
        vals[p] = v;
        ids[p] = i;
    }
    /* remaining mass, from the same float terms the total was summed from */
    double top = 0;
    for (int k = 0; k < cnt; k++) top += expf(l[ids[k]] - s->mx);
    double rest = s->sum - top;
    float lp_rest = cnt < vocab && rest > 0 ? (float)(log(rest) - s->lse) : -INFINITY;
    put_f32(rec, (float)logp(l, s, tok));
    put_f32(rec + 4, lp_rest);
    for (int k = 0; k < cnt; k++) {
        put_u32(rec + 8 + 4 * (size_t)k, (uint32_t)ids[k]);
        put_f32(rec + 8 + 4 * (size_t)topk + 4 * (size_t)k, (float)logp(l, s, ids[k]));
    }
}

/* a log-probability read from a file: finite (or -inf where allowed) and not above 0 beyond
 * rounding */
static int lp_ok(float v, int allow_minf)
{
    if (allow_minf && v == -INFINITY) return 1;
    return isfinite(v) && v <= 1e-3f;
}

enum lmp_status lmp_logits_rec_compare(const unsigned char *rec, int topk, const float *l,
                                       int vocab, const struct lmp_lsm *s, int tok,
                                       unsigned char *mark, struct lmp_kl_pos *out,
                                       const char *path, int64_t position, struct lmp_err *err)
{
    float lp_tok = get_f32(rec), lp_rest = get_f32(rec + 4);
    enum lmp_status st = LMP_OK;
    if (!lp_ok(lp_tok, 0) || !lp_ok(lp_rest, 1))
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: position %lld: invalid log-probability", path,
                         (long long)position);
    double kld = 0, top = 0;
    int k;
    for (k = 0; k < topk && !st; k++) {
        uint32_t id = get_u32(rec + 8 + 4 * (size_t)k);
        float lp = get_f32(rec + 8 + 4 * (size_t)topk + 4 * (size_t)k);
        if (id >= (uint32_t)vocab || mark[id] || !lp_ok(lp, 0)) {
            st = lmp_err_set(err, LMP_ERR_FORMAT,
                             "%s: position %lld: entry %d (id %u) invalid or repeated", path,
                             (long long)position, k, id);
            break;
        }
        mark[id] = 1;
        kld += exp((double)lp) * ((double)lp - logp(l, s, (int)id));
        top += expf(l[id] - s->mx);
    }
    for (int j = 0; j < k; j++) mark[get_u32(rec + 8 + 4 * (size_t)j)] = 0;
    if (st) return st;
    if (lp_rest > -INFINITY) {
        double rest = s->sum - top;
        double lq_rest = rest > 0 ? log(rest) - s->lse : -745.0; /* q's mass there is ~0 */
        kld += exp((double)lp_rest) * ((double)lp_rest - lq_rest);
    }
    out->nll = s->lse - (double)(l[tok] - s->mx);
    out->nll_base = -(double)lp_tok;
    out->kld = kld;
    out->p_diff = exp(-out->nll) - exp(-out->nll_base);
    out->same_top = s->argmax == (int)get_u32(rec + 8);
    return LMP_OK;
}
