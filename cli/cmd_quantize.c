/* lmpress quantize IN OUT.lmp: GPTQ or RTN to packed 2/3/4/8-bit weights. */
#include "cli.h"
#include "quantize/quant_model.h"
#ifdef LMP_WITH_CUDA
#include "runtime/cuda/rt_cuda.h"
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CMD "quantize"

static void help(void)
{
    printf(
        "usage: lmpress quantize IN OUT.lmp --calib FILE [options]\n"
        "\n"
        "Quantizes every linear layer of every block (q, k, v, o, gate, up, down) to packed\n"
        "integer weights; embeddings, norms and the output head stay as they are.\n"
        "\n"
        "  --method gptq|rtn  GPTQ (default; needs --calib) or round-to-nearest\n"
        "  --bits N           2, 3, 4 (default) or 8\n"
        "  --group N          columns per group of scale/zero (default 128; -1 = per output\n"
        "                     channel). When it does not divide a matrix's input width the\n"
        "                     last group is shorter (e.g. 172 columns, group 32: 5 x 32 + 12)\n"
        "  --sym              symmetric grid (default asymmetric min-max)\n"
        "  --act-order        quantize columns by decreasing Hessian diagonal (permutation kept)\n"
        "  --static-groups    group grids fixed from the original weights, natural column groups\n"
        "                     (with --act-order: no permutation needed at inference)\n"
        "  --mse              MSE-optimal clipping search per group (scale shrink, norm 2.4)\n"
        "  --refine           refit each group's scale to the Hessian-weighted error after GPTQ\n"
        "  --gguf-exact       4-bit asymmetric: pick fp16 scales (within a few ulp) for which\n"
        "                     every group of 32 is exactly a GGUF Q4_1 block, so that `convert\n"
        "                     OUT.lmp X.gguf` holds these weights bit for bit (needs a group that\n"
        "                     is a multiple of 32 or per-channel, and no stored act-order perm)\n"
        "  --ref-quirks       reproduce the reference code's quirks bit for bit (group params from\n"
        "                     the block-start weights, sym grids of one-signed groups, per-channel\n"
        "                     params before dead columns are zeroed); for comparisons only\n"
        "  --fp-target        quantize each matrix toward the unquantized model's outputs on its\n"
        "                     own activations (corrects the error of earlier layers; one more\n"
        "                     pass per layer); --fp-alpha F scales the correction (default 1)\n"
        "  --tune N           after quantizing, train the fp16 group scales for N Adam steps so\n"
        "                     the quantized model's next-token distributions match the\n"
        "                     original's on the calibration windows (KL; codes and zeros fixed,\n"
        "                     format unchanged); --tune-lr F (2e-3), --tune-batch N (8 windows),\n"
        "                     --tune-norms also trains the RMSNorm weights\n"
        "  --no-shortcut      run the separate output pass of each layer instead of updating\n"
        "                     the down stage's outputs by linearity (same result, slower)\n"
        "  --damp F           dampening, fraction of the mean Hessian diagonal (default 0.01)\n"
        "  --block N          GPTQ lazy-batch block size in columns (default 128)\n"
        "  --calib FILE       calibration text (tokenized with the model's tokenizer)\n"
        "  --nsamples N       calibration windows (default 128)\n"
        "  --seqlen N         tokens per window (default 512, at most the model's context)\n"
        "  --seed N           seed for the window starts (default 0)\n"
        "  --no-calib-bos     keep the window's first token instead of BOS\n"
        "  --calib-sampler S  lmpress (default: SplitMix64 starts, BOS first) or python: the\n"
        "                     windows CPython's random.seed(seed)/randint draw over BOS + text,\n"
        "                     as the reference GPTQ scripts do (for like-for-like comparisons)\n"
        "  --threads N        threads (default: all cores)\n"
        "  --tokenizer FILE   llama2.c tokenizer.bin (default: found beside IN)\n"
        "  --device cpu|cuda  where GPTQ runs (cuda: the binary of `make cuda`)\n"
        "\n"
        "Writes OUT.lmp through a temporary file: no partial output on failure.\n");
}

static void on_progress(void *user, int layer, int n_layers, const char *stage)
{
    struct cli_progress *p = user;
    if (!strcmp(stage, "done") || !strcmp(stage, "rtn")) cli_progress_update(p, layer, n_layers, stage);
    else if (p->tty) cli_progress_update(p, layer, n_layers, stage);
}

static void on_tune(void *user, int step, int steps, double loss)
{
    struct cli_progress *p = user;
    (void)loss;
    cli_progress_update(p, step, steps, "tune");
}

/* Scale tuning against the unquantized model, loaded again from IN. */
static enum lmp_status tune(const char *in, const struct lmp_load_opts *lo, struct lmp_model *m,
                            const int32_t *ids, int64_t n_ids, const struct lmp_quant_model_opts *o,
                            struct lmp_quant_tune_opts *to, double *kl0, double *kl1,
                            struct lmp_err *err)
{
    struct lmp_model *teacher = NULL;
    int32_t *win = NULL;
    struct cli_progress pr;
    cli_progress_init(&pr, "tune", "steps");
    to->progress = on_tune;
    to->progress_user = &pr;
    to->n_threads = o->n_threads;
    to->seed = o->seed;
    enum lmp_status st = lmp_ckpt_load(in, lo, &teacher, err);
    if (!st) st = lmp_quant_model_windows(teacher, ids, n_ids, o, &win, err);
    if (!st) st = lmp_quant_tune(m, teacher, win, o->nsamples, o->seqlen, to, kl0, kl1, err);
    free(win);
    lmp_model_free(teacher);
    return st;
}

int cmd_quantize(int argc, char **argv)
{
    const char *in = NULL, *outp = NULL, *calib = NULL;
    struct lmp_quant_model_opts o;
    lmp_quant_model_opts_default(&o);
    o.q.group = 128;
    struct lmp_load_opts lo = {0};
    struct lmp_quant_tune_opts to;
    lmp_quant_tune_opts_default(&to);
    long v;
    double d;
    int use_cuda = 0;
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
        } else if (!strcmp(a, "--method")) {
            NEED();
            if (!strcmp(nx, "gptq")) o.method = LMP_QUANT_GPTQ;
            else if (!strcmp(nx, "rtn")) o.method = LMP_QUANT_RTN;
            else return cli_usage_error(CMD, "--method %s: expected gptq or rtn", nx);
        } else if (!strcmp(a, "--bits")) {
            NEED();
            if (!cli_parse_int(nx, 2, 8, &v) || (v != 2 && v != 3 && v != 4 && v != 8))
                return cli_usage_error(CMD, "--bits %s: expected 2, 3, 4 or 8", nx);
            o.q.bits = (int)v;
        } else if (!strcmp(a, "--group")) {
            NEED();
            if (!cli_parse_int(nx, -1, 1 << 24, &v) || v == 0)
                return cli_usage_error(CMD, "--group %s: expected a positive size or -1", nx);
            o.q.group = v < 0 ? 0 : (int)v;
        } else if (!strcmp(a, "--sym")) {
            o.q.sym = 1;
        } else if (!strcmp(a, "--act-order")) {
            o.q.act_order = 1;
        } else if (!strcmp(a, "--static-groups")) {
            o.q.static_groups = 1;
        } else if (!strcmp(a, "--mse")) {
            o.q.mse = 1;
        } else if (!strcmp(a, "--refine")) {
            o.q.refine = 1;
        } else if (!strcmp(a, "--gguf-exact")) {
            o.q.gguf_exact = 1;
        } else if (!strcmp(a, "--ref-quirks")) {
            o.q.ref_quirks = 1;
        } else if (!strcmp(a, "--fp-target")) {
            o.fp_alpha = 1.0f;
        } else if (!strcmp(a, "--fp-alpha")) {
            NEED();
            if (!cli_parse_double(nx, 0, 2, &d))
                return cli_usage_error(CMD, "--fp-alpha %s: expected a number in [0, 2]", nx);
            o.fp_alpha = (float)d;
        } else if (!strcmp(a, "--tune")) {
            NEED();
            if (!cli_parse_int(nx, 0, 1 << 20, &v)) return cli_usage_error(CMD, "--tune %s: expected a number of steps >= 0", nx);
            to.steps = (int)v;
        } else if (!strcmp(a, "--tune-lr")) {
            NEED();
            if (!cli_parse_double(nx, 0, 1, &d) || d <= 0)
                return cli_usage_error(CMD, "--tune-lr %s: expected a number in (0, 1]", nx);
            to.lr = (float)d;
        } else if (!strcmp(a, "--tune-batch")) {
            NEED();
            if (!cli_parse_int(nx, 1, 4096, &v)) return cli_usage_error(CMD, "--tune-batch %s: expected a positive integer", nx);
            to.batch = (int)v;
        } else if (!strcmp(a, "--tune-norms")) {
            to.norms = 1;
        } else if (!strcmp(a, "--no-shortcut")) {
            o.no_shortcut = 1;
        } else if (!strcmp(a, "--damp")) {
            NEED();
            if (!cli_parse_double(nx, 0, 10, &d) || d <= 0)
                return cli_usage_error(CMD, "--damp %s: expected a positive fraction", nx);
            o.q.damp = (float)d;
        } else if (!strcmp(a, "--block")) {
            NEED();
            if (!cli_parse_int(nx, 1, 1 << 20, &v)) return cli_usage_error(CMD, "--block %s: expected a positive integer", nx);
            o.q.block = (int)v;
        } else if (!strcmp(a, "--calib")) {
            NEED();
            calib = nx;
        } else if (!strcmp(a, "--nsamples")) {
            NEED();
            if (!cli_parse_int(nx, 1, 1 << 20, &v)) return cli_usage_error(CMD, "--nsamples %s: expected a positive integer", nx);
            o.nsamples = (int)v;
        } else if (!strcmp(a, "--seqlen")) {
            NEED();
            if (!cli_parse_int(nx, 2, 1 << 24, &v)) return cli_usage_error(CMD, "--seqlen %s: expected an integer >= 2", nx);
            o.seqlen = (int)v;
        } else if (!strcmp(a, "--seed")) {
            NEED();
            if (!cli_parse_int(nx, 0, 0x7fffffffffffffffL, &v)) return cli_usage_error(CMD, "--seed %s: expected a non-negative integer", nx);
            o.seed = (uint64_t)v;
        } else if (!strcmp(a, "--no-calib-bos")) {
            o.calib_bos = 0;
        } else if (!strcmp(a, "--calib-sampler")) {
            NEED();
            if (!strcmp(nx, "python")) o.python_sampler = 1;
            else if (!strcmp(nx, "lmpress")) o.python_sampler = 0;
            else return cli_usage_error(CMD, "--calib-sampler %s: expected lmpress or python", nx);
        } else if (!strcmp(a, "--threads")) {
            NEED();
            if (!cli_parse_int(nx, 1, 4096, &v)) return cli_usage_error(CMD, "--threads %s: expected a positive integer", nx);
            o.n_threads = (int)v;
        } else if (!strcmp(a, "--tokenizer")) {
            NEED();
            lo.tokenizer = nx;
        } else if (!strcmp(a, "--device")) {
            NEED();
            if (strcmp(nx, "cpu") && strcmp(nx, "cuda"))
                return cli_usage_error(CMD, "--device: '%s' is not cpu or cuda", nx);
            use_cuda = !strcmp(nx, "cuda");
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
#ifndef LMP_WITH_CUDA
    if (use_cuda)
        return cli_usage_error(CMD, "--device cuda: this lmpress was built without CUDA (`make "
                                    "cuda` builds build/cuda/lmpress)");
#endif
    size_t ol = strlen(outp);
    if (ol < 4 || strcmp(outp + ol - 4, ".lmp"))
        return cli_usage_error(CMD, "%s: output must end in .lmp", outp);
    if (o.q.gguf_exact && (o.q.sym || o.q.bits != 4))
        return cli_usage_error(CMD, "--gguf-exact is for 4-bit asymmetric grids (symmetric and "
                                    "2/3-bit grids map exactly onto GGUF blocks already)");
    if (o.q.gguf_exact && (o.q.group % 32 || (o.q.act_order && !o.q.static_groups)))
        return cli_usage_error(CMD, "--gguf-exact needs --group a multiple of 32 (or -1) and, "
                                    "with --act-order, --static-groups (GGUF blocks are 32 "
                                    "consecutive input columns)");
    if (o.method == LMP_QUANT_GPTQ && !calib)
        return cli_usage_error(CMD, "--method gptq needs --calib FILE (calibration text)");
    if (to.steps > 0 && !calib)
        return cli_usage_error(CMD, "--tune needs --calib FILE (calibration text)");

    struct lmp_err err = {{0}};
    struct lmp_model *m = NULL;
    int32_t *ids = NULL;
    int64_t n_ids = 0;
    struct lmp_quant_report *rep = calloc(1, sizeof *rep);
    enum lmp_status st = rep ? LMP_OK : lmp_err_set(&err, LMP_ERR_NOMEM, "out of memory");
    if (!st) st = lmp_ckpt_load(in, &lo, &m, &err);
    if (!st && calib && (o.method == LMP_QUANT_GPTQ || to.steps > 0)) {
        st = cli_tokenize_file(m, calib, &ids, &n_ids, &err);
        if (!st && n_ids < (int64_t)o.seqlen + 1)
            st = lmp_err_set(&err, LMP_ERR_ARG,
                             "%s: calibration text has %lld tokens, shorter than one window of %d",
                             calib, (long long)n_ids, o.seqlen);
    }
    struct cli_progress pr;
    cli_progress_init(&pr, "quantize", "layers");
    o.progress = on_progress;
    o.progress_user = &pr;
#ifdef LMP_WITH_CUDA
    if (!st && use_cuda)
        st = lmp_cuda_quant_model(m, ids, n_ids, &o, rep, 0, &err);
    else
#endif
    if (!st) st = lmp_quant_model(m, ids, n_ids, &o, rep, &err);
    double kl0 = 0, kl1 = 0;
    if (!st && to.steps > 0) st = tune(in, &lo, m, ids, n_ids, &o, &to, &kl0, &kl1, &err);
    if (!st) st = lmp_ckpt_save_lmp(m, outp, &err);
    if (st) {
        int rc = cli_fail(CMD, st, &err);
        free(ids);
        free(rep);
        lmp_model_free(m);
        return rc;
    }
    /* bits per weight of the quantized matrices, scales and zeros included */
    uint64_t qbytes = 0, qn = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const struct lmp_tensor *t = &m->tensors[i];
        if (!lmp_type_is_packed(t->type)) continue;
        uint64_t ng = (uint64_t)((t->shape[1] + t->q.group - 1) / t->q.group);
        qbytes += t->nbytes + 4 * (uint64_t)t->shape[0] * ng + (t->q.perm ? 4 * (uint64_t)t->shape[1] : 0);
        qn += (uint64_t)lmp_tensor_nelem(t);
    }
    if (to.steps > 0)
        fprintf(stderr, "lmpress quantize: scale tuning, %d steps of %d windows: KL %.5f -> %.5f nats/token\n",
                to.steps, to.batch, kl0, kl1);
    if (rep->n_damp_retries)
        fprintf(stderr, "lmpress quantize: Cholesky failed %d time%s; retried with 10x more damping\n",
                rep->n_damp_retries, rep->n_damp_retries > 1 ? "s" : "");
    char gname[32];
    if (o.q.group) snprintf(gname, sizeof gname, "g%d", o.q.group);
    else snprintf(gname, sizeof gname, "per-channel");
    fprintf(stderr, "lmpress quantize: %s %d-bit %s%s%s%s%s%s: %d matrices in %.2f s, %.3f bits/weight -> %s\n",
            o.method == LMP_QUANT_GPTQ ? "gptq" : "rtn", o.q.bits, gname, o.q.sym ? " sym" : "", o.q.act_order ? " act-order" : "",
            o.q.static_groups ? " static-groups" : "", o.q.mse ? " mse" : "",
            o.q.gguf_exact ? " gguf-exact" : "", rep->n_tensors,
            rep->seconds, qn ? 8.0 * (double)qbytes / (double)qn : 0, outp);
    free(ids);
    free(rep);
    lmp_model_free(m);
    return 0;
}
