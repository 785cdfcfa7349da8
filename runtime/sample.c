/* Next-token choice: argmax, or temperature + nucleus (top-p) sampling with a PCG32
 * generator owned by the sampler, so a seed fixes the output on every platform. */
#include "runtime.h"

#include <math.h>
#include <stdlib.h>

struct cand {
    float p;
    int id;
};

struct lmp_rt_sampler {
    int vocab;
    float temp, top_p;
    uint64_t state, inc; /* PCG32 */
    struct cand *c;      /* (vocab) */
};

/* PCG32 (XSH RR), O'Neill 2014 */
static uint32_t pcg32(struct lmp_rt_sampler *s)
{
    uint64_t old = s->state;
    s->state = old * 6364136223846793005ULL + s->inc;
    uint32_t x = (uint32_t)(((old >> 18) ^ old) >> 27), rot = (uint32_t)(old >> 59);
    return (x >> rot) | (x << ((32 - rot) & 31));
}

/* uniform in [0, 1) with 24 random bits */
static float uniform(struct lmp_rt_sampler *s)
{
    return (float)(pcg32(s) >> 8) * (1.0f / 16777216.0f);
}

enum lmp_status lmp_rt_sampler_create(int vocab, float temp, float top_p, uint64_t seed,
                                      struct lmp_rt_sampler **out, struct lmp_err *err)
{
    *out = NULL;
    if (vocab < 1 || vocab > LMP_MAX_VOCAB)
        return lmp_err_set(err, LMP_ERR_ARG, "sampler: vocabulary size %d invalid", vocab);
    if (!(temp >= 0 && isfinite(temp)))
        return lmp_err_set(err, LMP_ERR_ARG, "sampler: temperature %g invalid", (double)temp);
    if (!(top_p > 0 && top_p <= 1))
        return lmp_err_set(err, LMP_ERR_ARG, "sampler: top-p %g outside (0, 1]", (double)top_p);
    struct lmp_rt_sampler *s = calloc(1, sizeof *s);
    if (!s || !(s->c = malloc((size_t)vocab * sizeof *s->c))) {
        free(s);
        return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    }
    s->vocab = vocab;
    s->temp = temp;
    s->top_p = top_p;
    s->inc = (seed << 1) | 1;
    s->state = 0;
    pcg32(s);
    s->state += seed ^ 0x853c49e6748fea9bULL;
    pcg32(s);
    *out = s;
    return LMP_OK;
}

void lmp_rt_sampler_free(struct lmp_rt_sampler *s)
{
    if (!s) return;
    free(s->c);
    free(s);
}

int lmp_rt_argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static int cand_cmp(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return x->id - y->id;
}

int lmp_rt_sample(struct lmp_rt_sampler *s, const float *logits)
{
    int n = s->vocab;
    if (s->temp <= 0) return lmp_rt_argmax(logits, n);
    float mx = logits[lmp_rt_argmax(logits, n)];
    double sum = 0;
    for (int i = 0; i < n; i++) {
        s->c[i].p = expf((logits[i] - mx) / s->temp);
        s->c[i].id = i;
        sum += s->c[i].p;
    }
    int m = n;
    double mass = sum;
    if (s->top_p < 1) {
        qsort(s->c, (size_t)n, sizeof *s->c, cand_cmp);
        double cum = 0, want = s->top_p * sum;
        for (m = 0; m < n;) {
            cum += s->c[m++].p;
            if (cum >= want) break;
        }
        mass = cum;
    }
    double r = (double)uniform(s) * mass, cum = 0;
    for (int i = 0; i < m; i++) {
        cum += s->c[i].p;
        if (r < cum) return s->c[i].id;
    }
    return s->c[m - 1].id; /* rounding: r landed on the total */
}
