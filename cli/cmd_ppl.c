/* lmpress ppl MODEL --text FILE | --tokens FILE: perplexity with llama.cpp's protocol (or the
 * GPTQ paper's), optional saving of the scored distributions and KL-divergence against a
 * base model's saved ones. Text in, numbers out; the work is eval/'s lmp_eval_ppl. */
#include "cli.h"
#include "eval/eval.h"
#ifdef LMP_WITH_CUDA
#include "runtime/cuda/rt_cuda.h"
#endif

#include <cjson/cJSON.h>
#include <errno.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CMD "ppl"

static void help(void)
{
    printf(
        "usage: lmpress ppl MODEL (--text FILE | --tokens FILE) [options]\n"
        "\n"
        "Perplexity of MODEL (llama2.c .bin, GGUF, Hugging Face directory or .lmp) on a text.\n"
        "\n"
        "  --text FILE         UTF-8 text, tokenized with the model's tokenizer\n"
        "  --tokens FILE       token ids, one per line (whitespace separated), without BOS\n"
        "  --ctx N             tokens per chunk (default 512, or the model's context if smaller)\n"
        "  --protocol P        llamacpp (default): as llama-perplexity: BOS + ids cut in chunks\n"
        "                      of N, each starting with BOS, the second half of each scored;\n"
        "                      gptq: windows of N, every token after the first scored\n"
        "  --chunks N          evaluate at most N chunks\n"
        "  --threads N         threads (default: all cores)\n"
        "  --save-logits FILE  save the scored distributions (top-k, docs/LOGITS.md)\n"
        "  --topk K            token ids kept per position by --save-logits (default 32)\n"
        "  --kl-base FILE      KL-divergence against distributions saved with --save-logits\n"
        "                      (same text, protocol and ctx)\n"
        "  --tokenizer FILE    llama2.c tokenizer.bin (default: found beside the model)\n"
        "  --json              print one JSON object\n"
        "  --device cpu|cuda   where to run (cuda: the binary of `make cuda`, build/cuda/lmpress)\n"
        "\n"
        "Prints PPL +/- its standard error (llama.cpp's formula), tokens scored and tokens\n"
        "per second (all tokens of the evaluated chunks over the evaluation time).\n");
}

static void on_progress(void *user, int done, int total)
{
    cli_progress_update(user, done, total, NULL);
}

/* Reads a whole file; *len bytes, NUL terminated. */
static enum lmp_status read_file(const char *path, char **out, size_t *len, struct lmp_err *err)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return lmp_err_set(err, LMP_ERR_IO, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0, got;
    char *b = malloc(cap + 1);
    while (b && (got = fread(b + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            char *nb = cap < ((size_t)1 << 40) ? realloc(b, cap * 2 + 1) : NULL;
            if (!nb) {
                free(b);
                b = NULL;
                break;
            }
            b = nb;
            cap *= 2;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (!b) return lmp_err_set(err, LMP_ERR_NOMEM, "%s: out of memory", path);
    if (bad) {
        free(b);
        return lmp_err_set(err, LMP_ERR_IO, "%s: read error", path);
    }
    b[n] = 0;
    *out = b;
    *len = n;
    return LMP_OK;
}

/* Token ids, whitespace separated, each in [0, vocab). */
static enum lmp_status parse_ids(const char *path, const char *s, int vocab, int32_t **ids,
                                 int64_t *n, struct lmp_err *err)
{
    int64_t cap = 1024, k = 0, line = 1;
    int32_t *v = malloc((size_t)cap * sizeof *v);
    if (!v) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    for (;;) {
        while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') line += *s++ == '\n';
        if (!*s) break;
        char *end;
        errno = 0;
        long x = strtol(s, &end, 10);
        if (end == s || errno || (*end && !strchr(" \t\r\n", *end))) {
            free(v);
            return lmp_err_set(err, LMP_ERR_ARG, "%s: line %lld: not a token id", path,
                               (long long)line);
        }
        if (x < 0 || x >= vocab) {
            free(v);
            return lmp_err_set(err, LMP_ERR_ARG,
                               "%s: line %lld: token id %ld outside the vocabulary [0, %d)", path,
                               (long long)line, x, vocab);
        }
        if (k == cap) {
            int32_t *nv = realloc(v, (size_t)(cap *= 2) * sizeof *v);
            if (!nv) {
                free(v);
                return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
            }
            v = nv;
        }
        v[k++] = (int32_t)x;
        s = end;
    }
    if (!k) {
        free(v);
        return lmp_err_set(err, LMP_ERR_ARG, "%s: no token ids", path);
    }
    *ids = v;
    *n = k;
    return LMP_OK;
}

static void print_json(const char *model, const struct lmp_eval_opts *o,
                       const struct lmp_eval_result *r, int threads)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "model", model);
    cJSON_AddStringToObject(j, "protocol", lmp_eval_protocol_name(o->protocol));
    cJSON_AddNumberToObject(j, "ctx", o->ctx);
    cJSON_AddNumberToObject(j, "chunks", r->n_chunks);
    cJSON_AddNumberToObject(j, "tokens_processed", (double)r->n_processed);
    cJSON_AddNumberToObject(j, "tokens_scored", (double)r->n_scored);
    cJSON_AddNumberToObject(j, "ppl", r->ppl);
    cJSON_AddNumberToObject(j, "ppl_err", r->ppl_err);
    cJSON_AddNumberToObject(j, "nll_mean", r->nll_mean);
    cJSON_AddNumberToObject(j, "seconds", r->seconds);
    cJSON_AddNumberToObject(j, "tokens_per_s", r->tok_per_s);
    cJSON_AddNumberToObject(j, "threads", threads);
    if (r->has_kl) {
        const struct lmp_eval_kl *k = &r->kl;
        cJSON *x = cJSON_AddObjectToObject(j, "kl");
        cJSON_AddNumberToObject(x, "base_topk", k->topk);
        cJSON_AddNumberToObject(x, "ppl_base", k->ppl_base);
        cJSON_AddNumberToObject(x, "ppl_base_err", k->ppl_base_err);
        cJSON_AddNumberToObject(x, "ln_ppl_ratio", k->ln_ratio);
        cJSON_AddNumberToObject(x, "ln_ppl_ratio_err", k->ln_ratio_err);
        cJSON_AddNumberToObject(x, "kld_mean", k->kld_mean);
        cJSON_AddNumberToObject(x, "kld_mean_err", k->kld_mean_err);
        cJSON_AddNumberToObject(x, "kld_median", k->kld_median);
        cJSON_AddNumberToObject(x, "kld_p90", k->kld_p90);
        cJSON_AddNumberToObject(x, "kld_p99", k->kld_p99);
        cJSON_AddNumberToObject(x, "kld_p99_9", k->kld_p999);
        cJSON_AddNumberToObject(x, "kld_max", k->kld_max);
        cJSON_AddNumberToObject(x, "kld_min", k->kld_min);
        cJSON_AddNumberToObject(x, "top1_agreement", k->top1);
        cJSON_AddNumberToObject(x, "top1_agreement_err", k->top1_err);
        cJSON_AddNumberToObject(x, "dp_rms", k->dp_rms);
        cJSON_AddNumberToObject(x, "dp_rms_err", k->dp_rms_err);
    }
    char *s = cJSON_Print(j);
    if (s) printf("%s\n", s);
    free(s);
    cJSON_Delete(j);
}

static void print_text(const char *model, const struct lmp_model *m,
                       const struct lmp_eval_opts *o, const struct lmp_eval_result *r, int threads)
{
    printf("model: %s (%s, %d layers, dim %d, vocab %d)\n", model, m->cfg.arch, m->cfg.n_layers,
           m->cfg.dim, m->cfg.vocab);
    printf("protocol %s, ctx %d: %d chunks, %lld tokens processed, %lld scored\n",
           lmp_eval_protocol_name(o->protocol), o->ctx, r->n_chunks, (long long)r->n_processed,
           (long long)r->n_scored);
    printf("PPL = %.4f +/- %.5f\n", r->ppl, r->ppl_err);
    printf("speed: %.0f tokens/s (%.2f s, %d threads)\n", r->tok_per_s, r->seconds, threads);
    if (o->save_logits)
        printf("saved top-%d distributions of %lld positions to %s\n",
               o->topk > 0 ? o->topk : LMP_EVAL_TOPK_DEFAULT, (long long)r->n_scored,
               o->save_logits);
    if (r->has_kl) {
        const struct lmp_eval_kl *k = &r->kl;
        printf("\n====== against %s (top-%d) ======\n", o->kl_base, k->topk);
        printf("Mean PPL(base)            : %10.6f +/- %10.6f\n", k->ppl_base, k->ppl_base_err);
        printf("Mean ln(PPL(Q)/PPL(base)) : %10.6f +/- %10.6f\n", k->ln_ratio, k->ln_ratio_err);
        printf("Mean    KLD: %10.6f +/- %10.6f\n", k->kld_mean, k->kld_mean_err);
        printf("Maximum KLD: %10.6f\n", k->kld_max);
        printf("99.9%%   KLD: %10.6f\n", k->kld_p999);
        printf("99.0%%   KLD: %10.6f\n", k->kld_p99);
        printf("90.0%%   KLD: %10.6f\n", k->kld_p90);
        printf("Median  KLD: %10.6f\n", k->kld_median);
        printf("Minimum KLD: %10.6f\n", k->kld_min);
        printf("RMS delta p: %8.4f +/- %8.4f %%\n", 100 * k->dp_rms, 100 * k->dp_rms_err);
        printf("Same top p : %8.4f +/- %8.4f %%\n", 100 * k->top1, 100 * k->top1_err);
    }
}

int cmd_ppl(int argc, char **argv)
{
    const char *model = NULL, *text = NULL, *tokens = NULL;
    struct lmp_eval_opts o = {.protocol = LMP_EVAL_LLAMACPP};
    struct lmp_load_opts lo = {0};
    int json = 0, ctx = 0, use_cuda = 0;
    long v;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            help();
            return 0;
        }
        if (!strcmp(a, "--json")) {
            json = 1;
            continue;
        }
        if (a[0] != '-' || !a[1]) {
            if (model) return cli_usage_error(CMD, "unexpected argument '%s'", a);
            model = a;
            continue;
        }
        if (i + 1 >= argc) return cli_usage_error(CMD, "%s needs a value", a);
        const char *val = argv[++i];
        if (!strcmp(a, "--text")) {
            text = val;
        } else if (!strcmp(a, "--tokens")) {
            tokens = val;
        } else if (!strcmp(a, "--ctx")) {
            if (!cli_parse_int(val, 1, LMP_MAX_CTX, &v))
                return cli_usage_error(CMD, "--ctx: '%s' is not a number in [1, %d]", val,
                                       LMP_MAX_CTX);
            ctx = (int)v;
        } else if (!strcmp(a, "--protocol")) {
            if (lmp_eval_protocol_parse(val, &o.protocol))
                return cli_usage_error(CMD, "--protocol: unknown protocol '%s' (llamacpp, gptq)",
                                       val);
        } else if (!strcmp(a, "--chunks")) {
            if (!cli_parse_int(val, 1, 1L << 30, &v))
                return cli_usage_error(CMD, "--chunks: '%s' is not a positive number", val);
            o.max_chunks = (int)v;
        } else if (!strcmp(a, "--threads")) {
            if (!cli_parse_int(val, 1, 4096, &v))
                return cli_usage_error(CMD, "--threads: '%s' is not a number in [1, 4096]", val);
            o.n_threads = (int)v;
        } else if (!strcmp(a, "--topk")) {
            if (!cli_parse_int(val, 1, LMP_MAX_VOCAB, &v))
                return cli_usage_error(CMD, "--topk: '%s' is not a positive number", val);
            o.topk = (int)v;
        } else if (!strcmp(a, "--save-logits")) {
            o.save_logits = val;
        } else if (!strcmp(a, "--kl-base")) {
            o.kl_base = val;
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
    if (!text == !tokens) return cli_usage_error(CMD, "needs exactly one of --text and --tokens");
#ifndef LMP_WITH_CUDA
    if (use_cuda)
        return cli_usage_error(CMD, "--device cuda: this lmpress was built without CUDA (`make "
                                    "cuda` builds build/cuda/lmpress)");
#endif

    struct lmp_err err = {{0}};
    struct lmp_model *m = NULL;
    int32_t *ids = NULL;
    int64_t n_ids = 0;
    char *buf = NULL;
    size_t len = 0;
    enum lmp_status st = lmp_ckpt_load(model, &lo, &m, &err);
    if (!st && tokens) st = read_file(tokens, &buf, &len, &err);
    if (!st && tokens) st = parse_ids(tokens, buf, m->cfg.vocab, &ids, &n_ids, &err);
    if (!st && text) {
        if (m->vocab.n_tokens != m->cfg.vocab)
            st = lmp_err_set(&err, LMP_ERR_ARG,
                             "%s: the tokenizer has %d tokens but the model's vocabulary is %d",
                             model, m->vocab.n_tokens, m->cfg.vocab);
        if (!st) st = cli_tokenize_file(m, text, &ids, &n_ids, &err);
        if (!st && n_ids == 0) st = lmp_err_set(&err, LMP_ERR_ARG, "%s: no tokens", text);
    }
    free(buf);
    int rc = 0;
    if (!st) {
        o.ctx = ctx ? ctx : (m->cfg.max_ctx < 512 ? m->cfg.max_ctx : 512);
        int threads = o.n_threads > 0 ? o.n_threads : omp_get_max_threads();
        struct cli_progress pr;
        cli_progress_init(&pr, "ppl", "chunks");
        o.progress = on_progress;
        o.progress_user = &pr;
        struct lmp_eval_result r;
        int nc;
        int64_t ns;
        /* options are checked before any progress line is printed */
        st = lmp_eval_plan(m, n_ids, &o, &nc, &ns, &err);
#ifdef LMP_WITH_CUDA
        if (!st && use_cuda)
            st = lmp_cuda_eval_ppl(m, ids, n_ids, &o, &r, 0, &err);
        else
#endif
        if (!st) st = lmp_eval_ppl(m, ids, n_ids, &o, &r, &err);
        if (!st) {
            if (json)
                print_json(model, &o, &r, threads);
            else
                print_text(model, m, &o, &r, threads);
        }
    }
    if (st) rc = cli_fail(CMD, st, &err);
    free(ids);
    lmp_model_free(m);
    return rc;
}
