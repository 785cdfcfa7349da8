/* lmpress run MODEL -p PROMPT -n N: generates text, streaming it to stdout; prompt and
 * decode speeds go to stderr at the end. */
#include "cli.h"
#include "formats/tokenizer.h"
#include "runtime/runtime.h"
#ifdef LMP_WITH_CUDA
#include "runtime/cuda/rt_cuda.h"
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CMD "run"

static void help(void)
{
    printf("usage: lmpress run MODEL [-p PROMPT] [-n N] [options]\n"
           "\n"
           "Generates up to N tokens (default 256) after PROMPT (default: empty, i.e. from BOS)\n"
           "and streams the text to stdout; stops at end-of-sequence or the model's context.\n"
           "\n"
           "  -p, --prompt TEXT   the prompt (encoded with BOS)\n"
           "  -n, --n-tokens N    tokens to generate (default 256)\n"
           "  --temp T            temperature, 0 = greedy (default 0.8)\n"
           "  --top-p P           nucleus sampling mass, 1 = off (default 0.95)\n"
           "  --seed S            sampling seed (default: from the clock, printed at the end)\n"
           "  --threads N         threads (default: all cores)\n"
           "  --tokenizer FILE    llama2.c tokenizer.bin (default: found beside the model)\n"
           "  --ids               print the generated token ids, one per line, not text\n"
           "  --device cpu|cuda   where to run (cuda: the binary of `make cuda`, build/cuda/lmpress)\n");
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int cmd_run(int argc, char **argv)
{
    const char *model = NULL, *prompt = "";
    struct lmp_load_opts lo = {0};
    long n_gen = 256, threads = 0, seed = -1;
    double temp = 0.8, top_p = 0.95;
    int print_ids = 0, use_cuda = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            help();
            return 0;
        }
        if (!strcmp(a, "--ids")) {
            print_ids = 1;
            continue;
        }
        if (a[0] != '-' || !a[1]) {
            if (model) return cli_usage_error(CMD, "unexpected argument '%s'", a);
            model = a;
            continue;
        }
        if (i + 1 >= argc) return cli_usage_error(CMD, "%s needs a value", a);
        const char *val = argv[++i];
        if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
            prompt = val;
        } else if (!strcmp(a, "-n") || !strcmp(a, "--n-tokens")) {
            if (!cli_parse_int(val, 0, LMP_MAX_CTX, &n_gen))
                return cli_usage_error(CMD, "%s: '%s' is not a number in [0, %d]", a, val,
                                       LMP_MAX_CTX);
        } else if (!strcmp(a, "--temp")) {
            if (!cli_parse_double(val, 0, 1e6, &temp))
                return cli_usage_error(CMD, "--temp: '%s' is not a number >= 0", val);
        } else if (!strcmp(a, "--top-p")) {
            if (!cli_parse_double(val, 1e-9, 1, &top_p))
                return cli_usage_error(CMD, "--top-p: '%s' is not a number in (0, 1]", val);
        } else if (!strcmp(a, "--seed")) {
            if (!cli_parse_int(val, 0, __LONG_MAX__, &seed))
                return cli_usage_error(CMD, "--seed: '%s' is not a number >= 0", val);
        } else if (!strcmp(a, "--threads")) {
            if (!cli_parse_int(val, 1, 4096, &threads))
                return cli_usage_error(CMD, "--threads: '%s' is not a number in [1, 4096]", val);
        } else if (!strcmp(a, "--tokenizer")) {
            lo.tokenizer = val;
        } else if (!strcmp(a, "--device")) {
            if (strcmp(val, "cpu") && strcmp(val, "cuda"))
                return cli_usage_error(CMD, "--device: '%s' is not cpu or cuda", val);
            use_cuda = !strcmp(val, "cuda");
        } else {
            return cli_usage_error(CMD, "unknown option %s", a);
        }
    }
    if (!model) return cli_usage_error(CMD, "needs a MODEL");
#ifndef LMP_WITH_CUDA
    if (use_cuda)
        return cli_usage_error(CMD, "--device cuda: this lmpress was built without CUDA (`make "
                                    "cuda` builds build/cuda/lmpress)");
#else
    struct lmp_cuda_state *cs = NULL;
#endif
    if (seed < 0) seed = (long)(time(NULL) ^ ((long)clock() << 16)) & __LONG_MAX__;

    struct lmp_err err = {{0}};
    struct lmp_model *m = NULL;
    struct lmp_tokenizer *tk = NULL;
    struct lmp_rt_state *s = NULL;
    struct lmp_rt_sampler *smp = NULL;
    int32_t *ids = NULL;
    int64_t n_prompt = 0;
    float *h = NULL, *logits = NULL;
    enum lmp_status st = lmp_ckpt_load(model, &lo, &m, &err);
    if (!st && m->vocab.n_tokens != m->cfg.vocab)
        st = lmp_err_set(&err, LMP_ERR_ARG,
                         "%s: the tokenizer has %d tokens but the model's vocabulary is %d", model,
                         m->vocab.n_tokens, m->cfg.vocab);
    if (!st) st = lmp_tok_create(&m->vocab, &tk, &err);
    if (!st) st = lmp_tok_encode(tk, prompt, strlen(prompt), 1, &ids, &n_prompt, &err);
    if (!st && n_prompt == 0)
        st = lmp_err_set(&err, LMP_ERR_ARG, "empty prompt and the vocabulary has no BOS token");
    if (!st && n_prompt > m->cfg.max_ctx)
        st = lmp_err_set(&err, LMP_ERR_ARG, "the prompt has %lld tokens, the context only %d",
                         (long long)n_prompt, m->cfg.max_ctx);
    int ctx = 0;
    if (!st) {
        int64_t want = n_prompt + n_gen;
        ctx = (int)(want < m->cfg.max_ctx ? want : m->cfg.max_ctx);
        struct lmp_rt_opts ro = {.n_threads = (int)threads};
#ifdef LMP_WITH_CUDA
        struct lmp_cuda_opts co = {0};
        if (use_cuda)
            st = lmp_cuda_state_create(m, ctx, n_prompt < 512 ? (int)n_prompt : 512, &co, &cs, &err);
        else
#endif
        st = lmp_rt_state_create(m, ctx, n_prompt < 512 ? (int)n_prompt : 512, &ro, &s, &err);
    }
    if (!st) st = lmp_rt_sampler_create(m->cfg.vocab, (float)temp, (float)top_p,
                                        (uint64_t)seed, &smp, &err);
    if (!st) {
        h = malloc((size_t)n_prompt * m->cfg.dim * sizeof *h);
        logits = malloc((size_t)m->cfg.vocab * sizeof *logits);
        if (!h || !logits) st = lmp_err_set(&err, LMP_ERR_NOMEM, "out of memory");
    }
    char piece[256];
    double t0 = now(), t1 = t0, t2;
    int n_done = 0;
    if (!st) {
        /* the prompt in batches, logits of its last token only */
#ifdef LMP_WITH_CUDA
        if (use_cuda) {
            float *all = malloc((size_t)n_prompt * m->cfg.vocab * sizeof *all);
            st = all ? lmp_cuda_forward(cs, ids, (int)n_prompt, 0, all, &err)
                     : lmp_err_set(&err, LMP_ERR_NOMEM, "out of memory");
            if (!st)
                memcpy(logits, all + (size_t)(n_prompt - 1) * m->cfg.vocab,
                       (size_t)m->cfg.vocab * sizeof *logits);
            free(all);
        } else {
#endif
        st = lmp_rt_forward_hidden(s, ids, (int)n_prompt, 0, m->cfg.n_layers, h, NULL, &err);
        if (!st)
            st = lmp_rt_head(s, h + (size_t)(n_prompt - 1) * m->cfg.dim, 1, logits, NULL, &err);
#ifdef LMP_WITH_CUDA
        }
#endif
        t1 = now();
        for (int64_t i = 0; i < n_prompt && !st && !print_ids; i++) {
            size_t k = lmp_tok_decode(tk, i ? ids[i - 1] : -1, ids[i], piece, sizeof piece);
            fwrite(piece, 1, k, stdout);
        }
        fflush(stdout);
        int32_t prev = ids[n_prompt - 1];
        for (int64_t pos = n_prompt; !st && n_done < n_gen; pos++) {
            int32_t next = lmp_rt_sample(smp, logits);
            if (next == m->vocab.eos) break;
            n_done++;
            if (print_ids) {
                printf("%d\n", (int)next);
            } else {
                size_t k = lmp_tok_decode(tk, prev, next, piece, sizeof piece);
                fwrite(piece, 1, k, stdout);
                fflush(stdout);
            }
            prev = next;
            if (pos >= ctx || n_done == n_gen) break; /* context full, or done */
#ifdef LMP_WITH_CUDA
            if (use_cuda)
                st = lmp_cuda_forward(cs, &next, 1, (int)pos, logits, &err);
            else
#endif
            st = lmp_rt_forward(s, &next, 1, (int)pos, logits, NULL, &err);
        }
        if (!print_ids) printf("\n");
        fflush(stdout);
    }
    t2 = now();
    int rc = 0;
    if (st) {
        rc = cli_fail(CMD, st, &err);
    } else {
        fprintf(stderr, "prompt: %lld tokens, %.1f tokens/s; generated: %d tokens, %.1f tokens/s "
                        "(seed %ld)\n",
                (long long)n_prompt, t1 > t0 ? (double)n_prompt / (t1 - t0) : 0.0, n_done,
                t2 > t1 ? n_done / (t2 - t1) : 0.0, seed);
    }
    free(h);
    free(logits);
    free(ids);
    lmp_rt_sampler_free(smp);
    lmp_rt_state_free(s);
#ifdef LMP_WITH_CUDA
    lmp_cuda_state_free(cs);
#endif
    lmp_tok_free(tk);
    lmp_model_free(m);
    return rc;
}
