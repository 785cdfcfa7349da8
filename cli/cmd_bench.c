/* lmpress bench MODEL: prompt processing and generation speed of the bundled runtime, as
 * llama.cpp's llama-bench reports them (ppN: N prompt tokens in one forward from position 0;
 * tgN: N tokens decoded one at a time from position 0), mean and standard deviation over
 * repetitions after one untimed warm-up, one markdown table on stdout. The tokens are drawn
 * from the vocabulary with a fixed seed (the speed does not depend on them). */
#include "cli.h"
#include "runtime/runtime.h"
#ifdef LMP_WITH_CUDA
#include "runtime/cuda/rt_cuda.h"
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CMD "bench"

static void help(void)
{
    printf("usage: lmpress bench MODEL [-p N] [-n N] [-r N] [--threads N] [--device cpu|cuda]\n"
           "\n"
           "Measures prompt processing (ppN: N tokens in one forward) and generation (tgN: N\n"
           "tokens one at a time) in tokens/s, mean +/- standard deviation over the\n"
           "repetitions after one warm-up, and prints a markdown table.\n"
           "\n"
           "  -p, --n-prompt N   prompt tokens (default 512, clamped to the context; 0: skip)\n"
           "  -n, --n-gen N      generated tokens (default 128, clamped to the context; 0: skip)\n"
           "  -r, --repetitions N  timed repetitions (default 5)\n"
           "  --threads N        threads (default: all cores)\n"
           "  --tokenizer FILE   llama2.c tokenizer.bin (default: found beside the model)\n"
           "  --device cpu|cuda  where to run (cuda: the binary of `make cuda`, build/cuda/lmpress)\n");
}

struct bench {
    const struct lmp_model *m;
    struct lmp_rt_state *s;
#ifdef LMP_WITH_CUDA
    struct lmp_cuda_state *cs;
#endif
    float *h, *logits; /* (n_prompt, dim), (n_prompt, vocab) */
};

/* one pp (n > 0, gen 0) or tg (gen 1) pass from position 0 */
static enum lmp_status pass(struct bench *b, const int32_t *tok, int n, int gen, struct lmp_err *err)
{
    const struct lmp_config *c = &b->m->cfg;
    enum lmp_status st = LMP_OK;
#ifdef LMP_WITH_CUDA
    if (b->cs) {
        lmp_cuda_reset(b->cs);
        if (!gen) return lmp_cuda_forward(b->cs, tok, n, 0, b->logits, err);
        for (int i = 0; i < n && !st; i++) st = lmp_cuda_forward(b->cs, tok + i, 1, i, b->logits, err);
        return st;
    }
#endif
    lmp_rt_reset(b->s);
    if (!gen) { /* logits of the last token only, as a prompt is processed */
        st = lmp_rt_forward_hidden(b->s, tok, n, 0, c->n_layers, b->h, NULL, err);
        if (!st) st = lmp_rt_head(b->s, b->h + (size_t)(n - 1) * c->dim, 1, b->logits, NULL, err);
        return st;
    }
    for (int i = 0; i < n && !st; i++) st = lmp_rt_forward(b->s, tok + i, 1, i, b->logits, NULL, err);
    return st;
}

static enum lmp_status measure(struct bench *b, const int32_t *tok, int n, int gen, int reps,
                               double *mean, double *sd, struct lmp_err *err)
{
    enum lmp_status st = pass(b, tok, n, gen, err); /* warm-up */
    double s1 = 0, s2 = 0;
    for (int r = 0; r < reps && !st; r++) {
        const double t0 = cli_now();
        st = pass(b, tok, n, gen, err);
#ifdef LMP_WITH_CUDA
        if (!st && b->cs) st = lmp_cuda_sync(b->cs, err);
#endif
        const double ts = n / (cli_now() - t0);
        s1 += ts;
        s2 += ts * ts;
    }
    *mean = s1 / reps;
    *sd = reps > 1 ? sqrt(fmax(0.0, (s2 - s1 * s1 / reps) / (reps - 1))) : 0.0;
    return st;
}

int cmd_bench(int argc, char **argv)
{
    const char *model = NULL, *device = "cpu";
    struct lmp_load_opts lo = {0};
    long n_prompt = 512, n_gen = 128, reps = 5, threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            help();
            return 0;
        }
        if (a[0] != '-' || !a[1]) {
            if (model) return cli_usage_error(CMD, "unexpected argument '%s'", a);
            model = a;
            continue;
        }
        if (i + 1 >= argc) return cli_usage_error(CMD, "%s needs a value", a);
        const char *val = argv[++i];
        if (!strcmp(a, "-p") || !strcmp(a, "--n-prompt")) {
            if (!cli_parse_int(val, 0, LMP_MAX_CTX, &n_prompt))
                return cli_usage_error(CMD, "%s: '%s' is not a number in [0, %d]", a, val, LMP_MAX_CTX);
        } else if (!strcmp(a, "-n") || !strcmp(a, "--n-gen")) {
            if (!cli_parse_int(val, 0, LMP_MAX_CTX, &n_gen))
                return cli_usage_error(CMD, "%s: '%s' is not a number in [0, %d]", a, val, LMP_MAX_CTX);
        } else if (!strcmp(a, "-r") || !strcmp(a, "--repetitions")) {
            if (!cli_parse_int(val, 1, 1000, &reps))
                return cli_usage_error(CMD, "%s: '%s' is not a number in [1, 1000]", a, val);
        } else if (!strcmp(a, "--threads")) {
            if (!cli_parse_int(val, 1, 4096, &threads))
                return cli_usage_error(CMD, "--threads: '%s' is not a number in [1, 4096]", val);
        } else if (!strcmp(a, "--tokenizer")) {
            lo.tokenizer = val;
        } else if (!strcmp(a, "--device")) {
            if (strcmp(val, "cpu") && strcmp(val, "cuda"))
                return cli_usage_error(CMD, "--device: '%s' is not cpu or cuda", val);
            device = val;
        } else {
            return cli_usage_error(CMD, "unknown option %s", a);
        }
    }
    if (!model) return cli_usage_error(CMD, "needs a MODEL");
    if (!n_prompt && !n_gen) return cli_usage_error(CMD, "-p 0 and -n 0: nothing to measure");
    const int use_cuda = !strcmp(device, "cuda");
#ifndef LMP_WITH_CUDA
    if (use_cuda)
        return cli_usage_error(CMD, "--device cuda: this lmpress was built without CUDA (`make "
                                    "cuda` builds build/cuda/lmpress)");
#endif
    struct lmp_err err = {{0}};
    struct lmp_model *m = NULL;
    struct bench b;
    memset(&b, 0, sizeof b);
    int32_t *tok = NULL;
    enum lmp_status st = lmp_ckpt_load(model, &lo, &m, &err);
    int np = 0, ng = 0;
    if (!st) {
        const struct lmp_config *c = &m->cfg;
        np = (int)(n_prompt < c->max_ctx ? n_prompt : c->max_ctx);
        ng = (int)(n_gen < c->max_ctx ? n_gen : c->max_ctx);
        const int n = np > ng ? np : ng, batch = np < 512 ? (np > 0 ? np : 1) : 512;
        b.m = m;
        tok = malloc((size_t)n * sizeof *tok);
        b.h = malloc((size_t)(np > 0 ? np : 1) * c->dim * sizeof *b.h);
        b.logits = malloc((size_t)(np > 0 ? np : 1) * c->vocab * sizeof *b.logits);
        if (!tok || !b.h || !b.logits) st = lmp_err_set(&err, LMP_ERR_NOMEM, "out of memory");
        unsigned long long x = 0x9E3779B97F4A7C15ull;
        for (int i = 0; !st && i < n; i++) { /* SplitMix64 draws; BOS first when there is one */
            unsigned long long z = (x += 0x9E3779B97F4A7C15ull);
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
            tok[i] = (int32_t)((z ^ (z >> 31)) % (unsigned long long)c->vocab);
        }
        if (!st && m->vocab.bos >= 0 && m->vocab.bos < c->vocab) tok[0] = m->vocab.bos;
        struct lmp_rt_opts ro = {.n_threads = (int)threads};
#ifdef LMP_WITH_CUDA
        struct lmp_cuda_opts co = {0};
        if (!st && use_cuda) st = lmp_cuda_state_create(m, n, batch, &co, &b.cs, &err);
        else
#endif
        if (!st) st = lmp_rt_state_create(m, n, batch, &ro, &b.s, &err);
    }
    double pm = 0, psd = 0, gm = 0, gsd = 0;
    if (!st && np) st = measure(&b, tok, np, 0, (int)reps, &pm, &psd, &err);
    if (!st && ng) st = measure(&b, tok, ng, 1, (int)reps, &gm, &gsd, &err);
    int rc = 0;
    if (st) {
        rc = cli_fail(CMD, st, &err);
    } else {
        size_t bytes = 0;
        for (int i = 0; i < m->n_tensors; i++) bytes += m->tensors[i].nbytes;
        const char *name = strrchr(model, '/') ? strrchr(model, '/') + 1 : model;
        char thr[32];
        if (use_cuda) snprintf(thr, sizeof thr, "-");
        else if (threads) snprintf(thr, sizeof thr, "%ld", threads);
        else snprintf(thr, sizeof thr, "all");
        printf("| model | size | params | backend | threads | test | t/s |\n");
        printf("| --- | ---: | ---: | --- | ---: | ---: | ---: |\n");
        const double mib = bytes / 1048576.0, par = (double)lmp_model_n_params(m);
        if (np)
            printf("| %s | %.2f MiB | %.2f M | %s | %s | pp%d | %.2f ± %.2f |\n", name, mib, par / 1e6,
                   device, thr, np, pm, psd);
        if (ng)
            printf("| %s | %.2f MiB | %.2f M | %s | %s | tg%d | %.2f ± %.2f |\n", name, mib, par / 1e6,
                   device, thr, ng, gm, gsd);
    }
#ifdef LMP_WITH_CUDA
    lmp_cuda_state_free(b.cs);
#endif
    lmp_rt_state_free(b.s);
    free(tok), free(b.h), free(b.logits);
    lmp_model_free(m);
    return rc;
}
