/* What each layer loses (the budget arithmetic of prune.h), importance names, defaults, and
 * the calibration window sampler. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const imp_names[] = {"magnitude", "taylor1", "taylor2",
                                        "taylorvec", "hessian", "obs"};

const char *lmp_prune_importance_name(enum lmp_prune_importance i)
{
    return (unsigned)i < sizeof imp_names / sizeof imp_names[0] ? imp_names[i] : "?";
}

int lmp_prune_importance_parse(const char *name, enum lmp_prune_importance *out)
{
    for (size_t i = 0; i < sizeof imp_names / sizeof imp_names[0]; i++)
        if (!strcmp(name, imp_names[i])) {
            *out = (enum lmp_prune_importance)i;
            return 0;
        }
    return -1;
}

int lmp_prune_importance_needs_grad(enum lmp_prune_importance i)
{
    return i == LMP_PRUNE_TAYLOR1 || i == LMP_PRUNE_TAYLOR2 || i == LMP_PRUNE_TAYLORVEC;
}

void lmp_prune_opts_default(struct lmp_prune_opts *o)
{
    memset(o, 0, sizeof *o);
    o->ratio = 0.2;
    o->targets = LMP_PRUNE_HEADS | LMP_PRUNE_MLP;
    o->layer_first = 0;
    o->layer_last = -1;
    o->importance = LMP_PRUNE_HESSIAN;
    o->nsamples = 16;
    o->stat_samples = 32;
    o->seqlen = 512;
    o->damp = 0.01;
}

void lmp_prune_report_free(struct lmp_prune_report *r)
{
    if (!r) return;
    free(r->before);
    free(r->after);
    r->before = r->after = NULL;
}

static int64_t nel(const struct lmp_tensor *t) { return t ? lmp_tensor_nelem(t) : 0; }

void lmp_prune_layer_sizes(const struct lmp_model *m, int layer, struct lmp_prune_sizes *s)
{
    const struct lmp_layer *L = &m->layers[layer];
    const struct lmp_layer_cfg *lc = &m->cfg.layer[layer];
    const int64_t D = m->cfg.dim, hd = m->cfg.head_dim, bias = L->bq ? 1 : 0;
    s->attn = nel(L->wq) + nel(L->wk) + nel(L->wv) + nel(L->wo) + nel(L->bq) + nel(L->bk) +
              nel(L->bv);
    s->mlp = nel(L->w_gate) + nel(L->w_up) + nel(L->w_down);
    s->layer = s->attn + s->mlp + nel(L->attn_norm) + nel(L->ffn_norm);
    s->head = 2 * hd * D + bias * hd;
    s->kv = 2 * hd * D + 2 * bias * hd;
    s->group = s->kv + (int64_t)(lc->n_heads / lc->n_kv_heads) * s->head;
    s->channel = 3 * D;
}

int64_t lmp_prune_attn_removed(const struct lmp_model *m, int layer, int rm_groups,
                               int rm_heads_per_group)
{
    struct lmp_prune_sizes s;
    lmp_prune_layer_sizes(m, layer, &s);
    const int nkv = m->cfg.layer[layer].n_kv_heads;
    return (int64_t)rm_groups * s.group + (int64_t)(nkv - rm_groups) * rm_heads_per_group * s.head;
}

/* The attention plan removing the amount nearest to target parameters; *all = 1 when that
 * is every head of the layer. Ties go to the smaller removal. */
static void attn_nearest(const struct lmp_model *m, int layer, double target, int *g_out,
                         int *r_out, int *all)
{
    const struct lmp_layer_cfg *lc = &m->cfg.layer[layer];
    const int nkv = lc->n_kv_heads, gs = lc->n_heads / lc->n_kv_heads;
    double best = INFINITY;
    int64_t best_rm = 0;
    *g_out = *r_out = 0;
    *all = 0;
    for (int g = 0; g <= nkv; g++)
        for (int r = 0; r < (g < nkv ? gs : 1); r++) {
            int64_t rm = lmp_prune_attn_removed(m, layer, g, r);
            double d = fabs((double)rm - target);
            if (d < best || (d == best && rm < best_rm)) {
                best = d;
                best_rm = rm;
                *g_out = g;
                *r_out = r;
                *all = g == nkv;
            }
        }
}

enum lmp_status lmp_prune_plan(const struct lmp_model *m, const struct lmp_prune_opts *o,
                               struct lmp_prune_layer_plan *plan, struct lmp_err *err)
{
    const int nl = m->cfg.n_layers;
    if (!(o->ratio > 0 && o->ratio < 1))
        return lmp_err_set(err, LMP_ERR_ARG, "ratio %g outside (0, 1)", o->ratio);
    if (!(o->targets & (LMP_PRUNE_HEADS | LMP_PRUNE_MLP)) ||
        (o->targets & ~(LMP_PRUNE_HEADS | LMP_PRUNE_MLP)))
        return lmp_err_set(err, LMP_ERR_ARG, "nothing to prune: targets must be heads and/or mlp");
    int last = o->layer_last < 0 ? nl - 1 : o->layer_last;
    if (o->layer_first < 0 || o->layer_first >= nl || last >= nl || last < o->layer_first)
        return lmp_err_set(err, LMP_ERR_ARG, "layer range %d-%d outside the model (layers 0-%d)",
                           o->layer_first, last, nl - 1);
    if ((unsigned)o->importance > LMP_PRUNE_OBS)
        return lmp_err_set(err, LMP_ERR_ARG, "unknown importance %d", (int)o->importance);
    memset(plan, 0, (size_t)nl * sizeof *plan);
    const int heads = !!(o->targets & LMP_PRUNE_HEADS), mlp = !!(o->targets & LMP_PRUNE_MLP);
    for (int l = o->layer_first; l <= last; l++) {
        struct lmp_prune_sizes s;
        lmp_prune_layer_sizes(m, l, &s);
        const struct lmp_layer_cfg *lc = &m->cfg.layer[l];
        double budget = o->ratio * (double)s.layer;
        double attn_target = 0;
        if (heads)
            attn_target = o->per_family ? o->ratio * (double)s.attn
                          : mlp         ? budget * (double)s.attn / (double)(s.attn + s.mlp)
                                        : budget;
        int all = 0;
        if (heads) {
            attn_nearest(m, l, attn_target, &plan[l].rm_groups, &plan[l].rm_heads_per_group, &all);
            if (all)
                return lmp_err_set(err, LMP_ERR_ARG,
                                   "ratio %g would remove every attention head of layer %d (%.0f "
                                   "of its %lld attention parameters)",
                                   o->ratio, l, attn_target, (long long)s.attn);
        }
        if (mlp) {
            double mlp_target =
                o->per_family ? o->ratio * (double)s.mlp
                              : budget - (double)lmp_prune_attn_removed(m, l, plan[l].rm_groups,
                                                                        plan[l].rm_heads_per_group);
            double ch = floor(mlp_target / (double)s.channel + 0.5);
            if (ch >= lc->ffn)
                return lmp_err_set(err, LMP_ERR_ARG,
                                   "ratio %g would remove every MLP channel of layer %d (%.0f of "
                                   "its %d channels)",
                                   o->ratio, l, ch, lc->ffn);
            plan[l].rm_channels = ch > 0 ? (int)ch : 0;
        }
    }
    return LMP_OK;
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

enum lmp_status lmp_prune_calib_windows(const int32_t *ids, int64_t n_ids, int nsamples,
                                        int seqlen, uint64_t seed, int bos, int32_t **out,
                                        struct lmp_err *err)
{
    *out = NULL;
    if (nsamples <= 0 || seqlen <= 1 || nsamples > (1 << 24))
        return lmp_err_set(err, LMP_ERR_ARG, "calibration needs 1 <= nsamples and seqlen >= 2");
    if (n_ids < (int64_t)seqlen + 1)
        return lmp_err_set(err, LMP_ERR_ARG,
                           "calibration text has %lld tokens, shorter than one window of %d",
                           (long long)n_ids, seqlen);
    if ((size_t)nsamples > SIZE_MAX / sizeof(int32_t) / (size_t)seqlen)
        return lmp_err_set(err, LMP_ERR_NOMEM, "calibration windows: size overflow");
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
