/* The distillation loss (full-vocabulary or top-k KL with temperature), the data order, the
 * learning-rate schedule, option names and defaults. */
#include "internal.h"

#include <math.h>
#include <string.h>

static const char *const mode_names[] = {"auto", "full", "lora"};
static const char *const merge_names[] = {"grid", "grid-post", "f16", "f32"};

const char *lmp_distill_mode_name(enum lmp_distill_mode m)
{
    return (unsigned)m < 3 ? mode_names[m] : "?";
}

int lmp_distill_mode_parse(const char *s, enum lmp_distill_mode *out)
{
    for (int i = 0; i < 3; i++)
        if (!strcmp(s, mode_names[i])) {
            *out = (enum lmp_distill_mode)i;
            return 0;
        }
    return -1;
}

const char *lmp_distill_merge_name(enum lmp_distill_merge m)
{
    return (unsigned)m < 4 ? merge_names[m] : "?";
}

int lmp_distill_merge_parse(const char *s, enum lmp_distill_merge *out)
{
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, merge_names[i])) {
            *out = (enum lmp_distill_merge)i;
            return 0;
        }
    return -1;
}

void lmp_distill_opts_default(struct lmp_distill_opts *o)
{
    memset(o, 0, sizeof *o);
    o->steps = 200;
    o->batch = 8;
    o->seqlen = 256;
    o->lr = 1e-3;
    o->warmup = -1;
    o->min_lr = 0.1;
    o->beta1 = 0.9;
    o->beta2 = 0.999;
    o->adam_eps = 1e-8;
    o->clip = 1.0;
    o->temperature = 1.0;
    o->rank = 32;
    o->ckpt_every = 100;
}

uint64_t lmp_distill_fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) { /* FNV-1a over little-endian 8-byte words, then bytes */
        uint64_t w = 0;
        for (int k = 7; k >= 0; k--) w = w << 8 | b[i + k];
        h = (h ^ w) * 0x100000001b3ull;
        h ^= h >> 29;
    }
    for (; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* ---- loss ------------------------------------------------------------------------------ */

/* e_j = exp(z_j / T - max), *sum = sum_j e_j (double); returns log sum_j exp(z_j / T) */
static double row_exp(const float *z, int n, float it, float *e, double *sum)
{
    float mx = z[0];
    for (int j = 1; j < n; j++) mx = z[j] > mx ? z[j] : mx;
    const float m = mx * it;
    double s = 0;
    for (int j = 0; j < n; j++) {
        e[j] = expf(z[j] * it - m);
        s += e[j];
    }
    *sum = s;
    return (double)m + log(s);
}

/* The k largest of z (n) into idx, largest first; ties to the lower index. */
static void top_k(const float *z, int n, int k, int32_t *idx)
{
    int have = 0;
    for (int j = 0; j < n; j++) {
        if (have == k && !(z[j] > z[idx[k - 1]])) continue;
        int i = have < k ? have++ : k - 1;
        while (i > 0 && z[j] > z[idx[i - 1]]) {
            idx[i] = idx[i - 1];
            i--;
        }
        idx[i] = j;
    }
}

size_t lmp_distill_kl_scratch(int vocab, int topk)
{
    return (2 * (size_t)vocab) * sizeof(float) + ((size_t)vocab + (size_t)topk) * sizeof(int32_t);
}

double lmp_distill_kl(const float *t_logits, const float *s_logits, int len, int vocab,
                      double temperature, int topk, float scale, float *dlogits, void *scratch)
{
    const float it = (float)(1.0 / temperature), gs = (float)(scale * temperature);
    const double t2 = temperature * temperature;
    const int use_k = topk > 0 && topk < vocab;
    float *et = scratch, *es = et + vocab; /* exp(z/T - max) of the teacher and the student */
    int32_t *mark = (int32_t *)(es + vocab), *idx = mark + vocab;
    if (use_k) /* mark[j] = position + 1 when j is in that position's top-k */
        for (int j = 0; j < vocab; j++) mark[j] = 0;
    double total = 0;
    for (int t = 0; t < len; t++) {
        const float *zt = t_logits + (size_t)t * vocab, *zs = s_logits + (size_t)t * vocab;
        float *d = dlogits ? dlogits + (size_t)t * vocab : NULL;
        double st, ss;
        const double lt = row_exp(zt, vocab, it, et, &st), ls = row_exp(zs, vocab, it, es, &ss);
        const double ft = 1.0 / st, fs = 1.0 / ss; /* p_j = et_j * ft, q_j = es_j * fs */
        double kl = 0;
        if (!use_k) {
            for (int j = 0; j < vocab; j++) {
                const double p = et[j] * ft;
                if (p > 0) kl += p * (((double)zt[j] - zs[j]) * it - lt + ls);
                if (d) d[j] = gs * (float)(es[j] * fs - p);
            }
        } else {
            top_k(zt, vocab, topk, idx);
            for (int i = 0; i < topk; i++) mark[idx[i]] = t + 1;
            double r = 0, qr = 0; /* the rest's mass, summed rather than 1 - sum (no cancellation) */
            for (int j = 0; j < vocab; j++)
                if (mark[j] != t + 1) r += et[j], qr += es[j];
            r *= ft, qr *= fs;
            for (int i = 0; i < topk; i++) {
                const int j = idx[i];
                const double p = et[j] * ft;
                if (p > 0) kl += p * (((double)zt[j] - zs[j]) * it - lt + ls);
            }
            if (r > 0 && qr > 0) kl += r * (log(r) - log(qr));
            /* off K the teacher's rest mass is spread as the student spreads its own */
            const double off = qr > 0 ? 1.0 - r / qr : 1.0;
            if (d)
                for (int j = 0; j < vocab; j++) {
                    const double q = es[j] * fs;
                    d[j] = gs * (float)(mark[j] == t + 1 ? q - et[j] * ft : q * off);
                }
        }
        total += t2 * kl;
    }
    return total;
}

/* ---- data and schedule ----------------------------------------------------------------- */

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void lmp_distill_batch(const int32_t *ids, int64_t n_ids, int seqlen, int batch, uint64_t seed,
                       int64_t step, int bos, int32_t *out)
{
    const uint64_t span = (uint64_t)(n_ids - seqlen) + 1; /* starts in [0, n_ids - seqlen] */
    for (int i = 0; i < batch; i++) {
        uint64_t k = (uint64_t)step * (uint64_t)batch + (uint64_t)i;
        uint64_t h = mix64(mix64(seed + 0x9e3779b97f4a7c15ull) + (k + 1) * 0x9e3779b97f4a7c15ull);
        uint64_t start = h % span;
        int32_t *w = out + (size_t)i * seqlen;
        memcpy(w, ids + start, (size_t)seqlen * sizeof *w);
        if (bos >= 0) w[0] = bos;
    }
}

double lmp_distill_lr(const struct lmp_distill_opts *o, int step)
{
    const int warm = o->warmup < 0 ? o->steps / 20 : o->warmup;
    if (step < warm) return o->lr * (double)(step + 1) / (double)warm;
    const int rest = o->steps - warm;
    double x = rest > 1 ? (double)(step - warm) / (double)(rest - 1) : 1.0;
    if (x > 1) x = 1;
    const double lo = o->lr * o->min_lr;
    return lo + (o->lr - lo) * 0.5 * (1.0 + cos(M_PI * x));
}
