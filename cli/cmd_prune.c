/* lmpress prune IN OUT.lmp: structured pruning of attention heads (GQA-aware) and MLP
 * channels into smaller dense matrices (prune/prune.h). */
#include "cli.h"
#include "prune/prune.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CMD "prune"

static void help(void)
{
    printf(
        "usage: lmpress prune IN OUT.lmp [--ratio R] [--target heads,mlp] [--layers A-B]\n"
        "                     [--importance NAME] [--compensate] --calib FILE [options]\n"
        "\n"
        "Removes whole attention heads and MLP channels, leaving smaller dense matrices and\n"
        "per-layer shapes in OUT.lmp (which `run`, `ppl` and `inspect` read as any model).\n"
        "\n"
        "  --ratio R          fraction of the PARAMETERS OF THE SELECTED LAYERS to remove, in\n"
        "                     (0, 1) (default 0.2); the whole-model fraction is printed too.\n"
        "                     Each layer loses R of its parameters: attention takes its share\n"
        "                     rounded to whole KV groups / one query head per group, MLP\n"
        "                     channels make up the rest.\n"
        "  --target LIST      heads, mlp, or heads,mlp (default). heads: a KV group (its k/v\n"
        "                     rows, the query heads sharing it, their o columns), or the same\n"
        "                     number of single query heads from every group; mlp: channel i =\n"
        "                     row i of gate and up + column i of down\n"
        "  --layers A-B       layers to prune, inclusive, from 0 (default: all); A alone: one\n"
        "  --importance NAME  what decides which groups go (lowest first):\n"
        "                       taylor1    sum |w * dL/dw| (LLM-Pruner element-1)\n"
        "                       taylor2    sum 1/2 w^2 E[(dL/dw)^2] (diagonal Fisher)\n"
        "                       taylorvec  |sum w * dL/dw| over the group\n"
        "                       hessian    ||W[:,j]||^2 E[x_j^2] of the consuming matrix (down,\n"
        "                                  o), from activation statistics, no gradients (default)\n"
        "                       obs        Optimal Brain Surgeon error with H^-1, greedy, no\n"
        "                                  gradients; best with --compensate\n"
        "                       magnitude  sum |w|\n"
        "  --compensate       refit down / o by least squares on calibration activations so the\n"
        "                     layer output is reconstructed from what is kept\n"
        "  --per-family       attention and MLP each lose R of their own parameters\n"
        "                     (LLM-Pruner's split) instead of sharing the layer's budget\n"
        "  --global           rank channels and KV groups across the selected layers (the\n"
        "                     totals of the per-layer split) instead of within each layer\n"
        "  --calib FILE       calibration text (not needed for magnitude without --compensate)\n"
        "  --nsamples N       calibration windows for gradients (default 16)\n"
        "  --stat-samples N   calibration windows for activation statistics (default 32)\n"
        "  --seqlen N         tokens per window (default 512, at most the model's context)\n"
        "  --seed N           seed for the window starts (default 0)\n"
        "  --damp F           dampening, fraction of the mean diagonal of H (default 0.01)\n"
        "  --threads N        threads (default: all cores)\n"
        "  --tokenizer FILE   llama2.c tokenizer.bin (default: found beside IN)\n"
        "\n"
        "Deterministic for a given seed (and independent of --threads). Writes OUT.lmp through\n"
        "a temporary file: no output on failure. Exit 2 on bad input.\n");
}

struct prog {
    struct cli_progress grad, layer;
    int grad_started, layer_started;
};

static void on_progress(void *user, const char *stage, int done, int total)
{
    struct prog *p = user;
    if (!strcmp(stage, "gradients")) {
        if (!p->grad_started) cli_progress_init(&p->grad, "prune: gradients", "windows");
        p->grad_started = 1;
        cli_progress_update(&p->grad, done, total, NULL);
    } else {
        if (!p->layer_started) cli_progress_init(&p->layer, !strcmp(stage, "statistics") ? "prune: statistics" : "prune", "layers");
        p->layer_started = 1;
        cli_progress_update(&p->layer, done, total, NULL);
        if (done == total) p->layer_started = 0;
    }
}

static int parse_targets(const char *s, int *out)
{
    *out = 0;
    char buf[64];
    if (strlen(s) >= sizeof buf) return 0;
    strcpy(buf, s);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        if (!strcmp(tok, "heads") || !strcmp(tok, "attn")) *out |= LMP_PRUNE_HEADS;
        else if (!strcmp(tok, "mlp") || !strcmp(tok, "ffn")) *out |= LMP_PRUNE_MLP;
        else return 0;
    }
    return *out != 0;
}

/* "A-B" or "A" */
static int parse_layers(const char *s, int *a, int *b)
{
    char buf[64];
    long x, y;
    if (strlen(s) >= sizeof buf) return 0;
    strcpy(buf, s);
    char *dash = strchr(buf, '-');
    if (dash) *dash = 0;
    if (!cli_parse_int(buf, 0, 1 << 20, &x)) return 0;
    y = x;
    if (dash && !cli_parse_int(dash + 1, 0, 1 << 20, &y)) return 0;
    if (y < x) return 0;
    *a = (int)x;
    *b = (int)y;
    return 1;
}

int cmd_prune(int argc, char **argv)
{
    const char *in = NULL, *outp = NULL, *calib = NULL;
    struct lmp_prune_opts o;
    lmp_prune_opts_default(&o);
    struct lmp_load_opts lo = {0};
    long v;
    double d;
    int layers_set = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *nx = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED()                                                                           \
    do {                                                                                 \
        if (!nx) return cli_usage_error(CMD, "%s needs a value", a);                     \
        i++;                                                                             \
    } while (0)
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            help();
            return 0;
        } else if (!strcmp(a, "--ratio")) {
            NEED();
            if (!cli_parse_double(nx, 0, 1, &d) || !(d > 0 && d < 1))
                return cli_usage_error(CMD, "--ratio %s: expected a fraction in (0, 1)", nx);
            o.ratio = d;
        } else if (!strcmp(a, "--target") || !strcmp(a, "--targets")) {
            NEED();
            if (!parse_targets(nx, &o.targets))
                return cli_usage_error(CMD, "--target %s: expected heads, mlp or heads,mlp", nx);
        } else if (!strcmp(a, "--layers")) {
            NEED();
            if (!parse_layers(nx, &o.layer_first, &o.layer_last))
                return cli_usage_error(CMD, "--layers %s: expected A-B with 0 <= A <= B", nx);
            layers_set = 1;
        } else if (!strcmp(a, "--importance")) {
            NEED();
            if (lmp_prune_importance_parse(nx, &o.importance))
                return cli_usage_error(CMD,
                                       "--importance %s: expected taylor1, taylor2, taylorvec, "
                                       "hessian, obs or magnitude",
                                       nx);
        } else if (!strcmp(a, "--compensate")) {
            o.compensate = 1;
        } else if (!strcmp(a, "--per-family")) {
            o.per_family = 1;
        } else if (!strcmp(a, "--global")) {
            o.global = 1;
        } else if (!strcmp(a, "--calib")) {
            NEED();
            calib = nx;
        } else if (!strcmp(a, "--nsamples")) {
            NEED();
            if (!cli_parse_int(nx, 1, 1 << 20, &v))
                return cli_usage_error(CMD, "--nsamples %s: expected a positive integer", nx);
            o.nsamples = (int)v;
        } else if (!strcmp(a, "--stat-samples")) {
            NEED();
            if (!cli_parse_int(nx, 1, 1 << 20, &v))
                return cli_usage_error(CMD, "--stat-samples %s: expected a positive integer", nx);
            o.stat_samples = (int)v;
        } else if (!strcmp(a, "--seqlen")) {
            NEED();
            if (!cli_parse_int(nx, 2, 1 << 24, &v))
                return cli_usage_error(CMD, "--seqlen %s: expected an integer >= 2", nx);
            o.seqlen = (int)v;
        } else if (!strcmp(a, "--seed")) {
            NEED();
            if (!cli_parse_int(nx, 0, 0x7fffffffffffffffL, &v))
                return cli_usage_error(CMD, "--seed %s: expected a non-negative integer", nx);
            o.seed = (uint64_t)v;
        } else if (!strcmp(a, "--damp")) {
            NEED();
            if (!cli_parse_double(nx, 0, 100, &d))
                return cli_usage_error(CMD, "--damp %s: expected a fraction >= 0", nx);
            o.damp = d;
        } else if (!strcmp(a, "--threads")) {
            NEED();
            if (!cli_parse_int(nx, 1, 4096, &v))
                return cli_usage_error(CMD, "--threads %s: expected a positive integer", nx);
            o.n_threads = (int)v;
        } else if (!strcmp(a, "--tokenizer")) {
            NEED();
            lo.tokenizer = nx;
        } else if (a[0] == '-' && a[1]) {
            return cli_usage_error(CMD, "unknown option %s", a);
        } else if (!in) {
            in = a;
        } else if (!outp) {
            outp = a;
        } else {
            return cli_usage_error(CMD, "too many arguments");
        }
#undef NEED
    }
    if (!in || !outp) return cli_usage_error(CMD, "needs IN and OUT.lmp");
    size_t ol = strlen(outp);
    if (ol < 4 || strcmp(outp + ol - 4, ".lmp"))
        return cli_usage_error(CMD, "%s: output must end in .lmp", outp);
    const int need_calib = lmp_prune_importance_needs_grad(o.importance) ||
                           o.importance == LMP_PRUNE_HESSIAN || o.importance == LMP_PRUNE_OBS ||
                           o.compensate;
    if (need_calib && !calib)
        return cli_usage_error(CMD, "--importance %s%s needs --calib FILE (calibration text)",
                               lmp_prune_importance_name(o.importance),
                               o.compensate ? " with --compensate" : "");

    struct lmp_err err = {{0}};
    struct lmp_model *m = NULL;
    int32_t *ids = NULL;
    int64_t n_ids = 0;
    struct lmp_prune_report rep = {0};
    struct lmp_prune_layer_plan *plan = NULL;
    enum lmp_status st = lmp_ckpt_load(in, &lo, &m, &err);
    if (!st) {
        if (!layers_set) o.layer_last = m->cfg.n_layers - 1;
        /* bad ratios and layer ranges fail here, before the calibration work */
        plan = calloc((size_t)m->cfg.n_layers, sizeof *plan);
        st = plan ? lmp_prune_plan(m, &o, plan, &err)
                  : lmp_err_set(&err, LMP_ERR_NOMEM, "out of memory");
    }
    if (!st && need_calib) {
        st = cli_tokenize_file(m, calib, &ids, &n_ids, &err);
        if (!st && n_ids < (int64_t)o.seqlen + 1)
            st = lmp_err_set(&err, LMP_ERR_ARG,
                             "%s: calibration text has %lld tokens, shorter than one window of %d",
                             calib, (long long)n_ids, o.seqlen);
    }
    struct prog pr = {0};
    o.progress = on_progress;
    o.progress_user = &pr;
    if (!st) st = lmp_prune_model(m, ids, n_ids, &o, &rep, &err);
    if (!st) st = lmp_ckpt_save_lmp(m, outp, &err);
    if (st) {
        int rc = cli_fail(CMD, st, &err);
        free(ids);
        free(plan);
        lmp_prune_report_free(&rep);
        lmp_model_free(m);
        return rc;
    }
    for (int l = o.layer_first; l <= o.layer_last; l++) {
        const struct lmp_layer_cfg *b = &rep.before[l], *a = &rep.after[l];
        fprintf(stderr, "  layer %d: heads %d/%d -> %d/%d, ffn %d -> %d\n", l, b->n_heads,
                b->n_kv_heads, a->n_heads, a->n_kv_heads, b->ffn, a->ffn);
    }
    struct stat sb;
    long long fsize = stat(outp, &sb) == 0 ? (long long)sb.st_size : -1;
    fprintf(stderr,
            "lmpress prune: %s%s%s: removed %lld of %lld parameters of layers %d-%d (%.2f %%); "
            "whole model %lld -> %lld parameters (%.2f %% removed); %.2f s -> %s (%lld bytes)\n",
            lmp_prune_importance_name(o.importance), o.compensate ? " + compensation" : "",
            o.global ? ", global" : "", (long long)rep.sel_removed,
            (long long)rep.sel_params_before, o.layer_first, o.layer_last,
            rep.sel_params_before ? 100.0 * (double)rep.sel_removed / (double)rep.sel_params_before : 0,
            (long long)rep.params_before, (long long)rep.params_after,
            rep.params_before ? 100.0 * (double)(rep.params_before - rep.params_after) /
                                    (double)rep.params_before
                              : 0,
            rep.seconds, outp, fsize);
    if (rep.n_damp_retries)
        fprintf(stderr, "lmpress prune: Cholesky failed %d time%s; retried with more dampening\n",
                rep.n_damp_retries, rep.n_damp_retries > 1 ? "s" : "");
    free(ids);
    free(plan);
    lmp_prune_report_free(&rep);
    lmp_model_free(m);
    return 0;
}
