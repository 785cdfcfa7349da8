/* lmpress distill: trains a pruned or quantized student to match the teacher's next-token
 * distributions on a text (distill/distill.h), with a progress bar, periodic checkpoints,
 * --resume and Ctrl-C that checkpoints before it stops. */
#include "cli.h"
#include "distill/distill.h"

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CMD "distill"

static void help(void)
{
    printf(
        "usage: lmpress distill --teacher T --student S --out OUT.lmp --data FILE --steps N\n"
        "                       [options]\n"
        "\n"
        "Distillation: trains the student S (a pruned or quantized version of T) to reproduce\n"
        "the teacher T's next-token distributions on the text FILE, minimising\n"
        "KL(teacher || student) at every position with AdamW (linear warmup, cosine decay,\n"
        "gradient clipping). Teacher logits are computed on the fly. Float students train all\n"
        "their weights; students with packed (quantized) weights keep them fixed and train\n"
        "low-rank adapters on every linear layer plus the norms, merged at the end\n"
        "(docs/DISTILL.md).\n"
        "\n"
        "  --teacher FILE     the original model (any format lmpress reads)\n"
        "  --student FILE     the model to train, same vocabulary as the teacher\n"
        "  --out OUT.lmp      the trained student\n"
        "  --data FILE        training text, tokenized with the student's tokenizer (e.g.\n"
        "                     data/tinystories/calib.txt); at least one sequence long\n"
        "  --steps N          optimiser steps\n"
        "  --lr F             peak learning rate, > 0 (default 1e-3)\n"
        "  --warmup N         linear warmup steps (default steps/20)\n"
        "  --min-lr F         the cosine decay ends at F * lr (default 0.1)\n"
        "  --batch N          sequences per step (default 8)\n"
        "  --seqlen N         tokens per sequence (default 256, at most the models' context);\n"
        "                     each sequence is a window of the text at a start drawn from the\n"
        "                     seed and the step, its first token replaced by BOS\n"
        "  --temperature T    softmax temperature of both distributions, > 0 (default 1); the\n"
        "                     loss is T^2 KL\n"
        "  --topk K           0: the full vocabulary (default); K: the teacher's K most\n"
        "                     probable tokens plus the remainder mass as one more outcome\n"
        "  --seed N           data order and adapter initialisation (default 0)\n"
        "  --mode M           auto (default: lora when the student has packed weights, else\n"
        "                     full), full (train every float tensor), lora (adapters + norms)\n"
        "  --rank R           adapter rank (default 32); with the grid, f16 and f32 merges the\n"
        "                     rank costs no file size (the adapters are merged), only memory\n"
        "                     and a little time\n"
        "  --merge M          how adapters on packed weights end up in OUT.lmp:\n"
        "                       grid       (default) the forward trains through the tensor's own\n"
        "                                  quantization grid (straight-through), the learnt codes\n"
        "                                  are written back: same file size, exact\n"
        "                       grid-post  float adapters, rounded onto the grid at the end\n"
        "                       f16, f32   float adapters, merged matrices stored as F16 / F32\n"
        "                                  (exact, but the file grows)\n"
        "  --train-embd       with adapters: also train the token embedding / float head\n"
        "  --wd F             AdamW decoupled weight decay on matrices (default 0)\n"
        "  --clip F           clip the global gradient norm to F (default 1; 0: off)\n"
        "  --beta1 F, --beta2 F  AdamW moment decays (default 0.9, 0.999)\n"
        "  --ckpt FILE        checkpoint file (default OUT.lmp.ckpt); written atomically every\n"
        "                     --ckpt-every steps (default 100; 0: only when interrupted) and on\n"
        "                     Ctrl-C; removed once OUT.lmp is written unless --keep-ckpt\n"
        "  --resume           continue from the checkpoint (same options and files); the\n"
        "                     result is bit-identical to an uninterrupted run\n"
        "  --stop-at N        stop after step N as if interrupted (checkpoint, no output)\n"
        "  --keep-ckpt        keep the checkpoint after success\n"
        "  --threads N        threads (default: all cores); results do not depend on it\n"
        "  --tokenizer FILE   llama2.c tokenizer.bin for llama2.c models (default: beside them)\n"
        "\n"
        "Progress: a bar with loss, tokens/s and ETA on a terminal, plain lines otherwise.\n"
        "OUT.lmp is written through a temporary file: no output on failure or interruption.\n"
        "Exit 0 on success (and after --stop-at), 2 on bad input (different vocabularies, data\n"
        "shorter than one sequence, a learning rate <= 0, ...), 1 on internal failure, 130\n"
        "when interrupted (the checkpoint is saved).\n");
}

static volatile sig_atomic_t interrupted;
static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

struct prog {
    struct cli_progress bar;
    int started;
    double tok_per_step, t_start;
    char label[64];
};

static int on_progress(void *user, const struct lmp_distill_progress *p)
{
    struct prog *pr = user;
    if (!pr->started) {
        if (p->first_step)
            snprintf(pr->label, sizeof pr->label, "distill (from step %d)", p->first_step);
        else
            snprintf(pr->label, sizeof pr->label, "distill");
        cli_progress_init(&pr->bar, pr->label, "steps");
        pr->bar.t0 = pr->t_start; /* the first step is done by now */
        pr->started = 1;
    }
    const int done = p->step - p->first_step, total = p->steps - p->first_step;
    const double el = cli_now() - pr->bar.t0;
    char note[96];
    snprintf(note, sizeof note, "loss %.4f, %.0f tok/s", p->loss,
             el > 0 ? done * pr->tok_per_step / el : 0);
    cli_progress_update(&pr->bar, done, total, note);
    return interrupted;
}

int cmd_distill(int argc, char **argv)
{
    const char *tpath = NULL, *spath = NULL, *outp = NULL, *data = NULL, *ckpt = NULL;
    struct lmp_distill_opts o;
    lmp_distill_opts_default(&o);
    struct lmp_load_opts lo = {0};
    long v;
    double d;
    int steps_set = 0, keep_ckpt = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *nx = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED()                                                                           \
    do {                                                                                 \
        if (!nx) return cli_usage_error(CMD, "%s needs a value", a);                     \
        i++;                                                                             \
    } while (0)
#define INT_OPT(flag, lo_, hi_, dst, what)                                               \
    else if (!strcmp(a, flag))                                                           \
    {                                                                                    \
        NEED();                                                                          \
        if (!cli_parse_int(nx, lo_, hi_, &v))                                            \
            return cli_usage_error(CMD, "%s %s: expected %s", flag, nx, what);           \
        dst = (int)v;                                                                    \
    }
#define DBL_OPT(flag, lo_, hi_, dst, what)                                               \
    else if (!strcmp(a, flag))                                                           \
    {                                                                                    \
        NEED();                                                                          \
        if (!cli_parse_double(nx, lo_, hi_, &d))                                         \
            return cli_usage_error(CMD, "%s %s: expected %s", flag, nx, what);           \
        dst = d;                                                                         \
    }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            help();
            return 0;
        } else if (!strcmp(a, "--teacher")) {
            NEED();
            tpath = nx;
        } else if (!strcmp(a, "--student")) {
            NEED();
            spath = nx;
        } else if (!strcmp(a, "--out") || !strcmp(a, "-o")) {
            NEED();
            outp = nx;
        } else if (!strcmp(a, "--data")) {
            NEED();
            data = nx;
        } else if (!strcmp(a, "--steps")) {
            NEED();
            if (!cli_parse_int(nx, 1, 1 << 30, &v))
                return cli_usage_error(CMD, "--steps %s: expected a positive integer", nx);
            o.steps = (int)v;
            steps_set = 1;
        } else if (!strcmp(a, "--lr")) {
            NEED();
            if (!cli_parse_double(nx, -1e300, 1e300, &d))
                return cli_usage_error(CMD, "--lr %s: expected a number", nx);
            if (!(d > 0))
                return cli_usage_error(CMD, "--lr %s: the learning rate must be positive", nx);
            o.lr = d;
        }
        INT_OPT("--warmup", 0, 1 << 30, o.warmup, "a non-negative integer")
        DBL_OPT("--min-lr", 0, 1, o.min_lr, "a fraction in [0, 1]")
        INT_OPT("--batch", 1, 1 << 16, o.batch, "a positive integer")
        INT_OPT("--seqlen", 2, 1 << 24, o.seqlen, "an integer >= 2")
        else if (!strcmp(a, "--temperature")) {
            NEED();
            if (!cli_parse_double(nx, -1e300, 1e300, &d) || !(d > 0))
                return cli_usage_error(CMD, "--temperature %s: expected a positive number", nx);
            o.temperature = d;
        }
        INT_OPT("--topk", 0, 1 << 24, o.topk, "a non-negative integer (0: full vocabulary)")
        else if (!strcmp(a, "--seed")) {
            NEED();
            if (!cli_parse_int(nx, 0, 0x7fffffffffffffffL, &v))
                return cli_usage_error(CMD, "--seed %s: expected a non-negative integer", nx);
            o.seed = (uint64_t)v;
        } else if (!strcmp(a, "--mode")) {
            NEED();
            if (lmp_distill_mode_parse(nx, &o.mode))
                return cli_usage_error(CMD, "--mode %s: expected auto, full or lora", nx);
        }
        INT_OPT("--rank", 1, 4096, o.rank, "an integer in [1, 4096]")
        else if (!strcmp(a, "--merge")) {
            NEED();
            if (lmp_distill_merge_parse(nx, &o.merge))
                return cli_usage_error(CMD, "--merge %s: expected grid, grid-post, f16 or f32",
                                       nx);
        } else if (!strcmp(a, "--train-embd")) {
            o.train_embd = 1;
        }
        DBL_OPT("--wd", 0, 1e6, o.weight_decay, "a number >= 0")
        DBL_OPT("--clip", 0, 1e30, o.clip, "a number >= 0 (0: off)")
        DBL_OPT("--beta1", 0, 0.999999999, o.beta1, "a number in [0, 1)")
        DBL_OPT("--beta2", 0, 0.999999999, o.beta2, "a number in [0, 1)")
        else if (!strcmp(a, "--ckpt")) {
            NEED();
            ckpt = nx;
        }
        INT_OPT("--ckpt-every", 0, 1 << 30, o.ckpt_every, "a non-negative integer")
        else if (!strcmp(a, "--resume")) {
            o.resume = 1;
        }
        INT_OPT("--stop-at", 1, 1 << 30, o.stop_at, "a positive integer")
        else if (!strcmp(a, "--keep-ckpt")) {
            keep_ckpt = 1;
        }
        INT_OPT("--threads", 1, 4096, o.n_threads, "a positive integer")
        else if (!strcmp(a, "--tokenizer")) {
            NEED();
            lo.tokenizer = nx;
        } else if (a[0] == '-' && a[1]) {
            return cli_usage_error(CMD, "unknown option %s", a);
        } else {
            return cli_usage_error(CMD, "unexpected argument %s (see --help)", a);
        }
#undef NEED
#undef INT_OPT
#undef DBL_OPT
    }
    if (!tpath || !spath || !outp || !data || !steps_set)
        return cli_usage_error(CMD, "needs --teacher, --student, --out, --data and --steps");
    size_t ol = strlen(outp);
    if (ol < 4 || strcmp(outp + ol - 4, ".lmp"))
        return cli_usage_error(CMD, "%s: output must end in .lmp", outp);
    if (o.warmup >= o.steps)
        return cli_usage_error(CMD, "--warmup %d: must be shorter than --steps %d", o.warmup,
                               o.steps);
    char ckpt_buf[4096];
    if (!ckpt) {
        if (ol + 6 >= sizeof ckpt_buf) return cli_usage_error(CMD, "%s: path too long", outp);
        snprintf(ckpt_buf, sizeof ckpt_buf, "%s.ckpt", outp);
        ckpt = ckpt_buf;
    }
    o.ckpt_path = ckpt;

    struct lmp_err err = {{0}};
    struct lmp_model *teacher = NULL, *student = NULL;
    int32_t *ids = NULL;
    int64_t n_ids = 0;
    enum lmp_status st = lmp_ckpt_load(tpath, &lo, &teacher, &err);
    if (!st) st = lmp_ckpt_load(spath, &lo, &student, &err);
    /* everything but the data's length first: a different vocabulary may not tokenize it */
    if (!st) st = lmp_distill_check(teacher, student, INT64_MAX, &o, &err);
    if (!st) st = cli_tokenize_file(student, data, &ids, &n_ids, &err);
    if (!st) {
        st = lmp_distill_check(teacher, student, n_ids, &o, &err);
        /* name the file when it is the data that is too short */
        if (st == LMP_ERR_ARG && n_ids < o.seqlen && !strncmp(err.msg, "the data", 8))
            st = lmp_err_set(&err, LMP_ERR_ARG,
                             "%s: %lld tokens, shorter than one sequence of %d (--seqlen)", data,
                             (long long)n_ids, o.seqlen);
    }
    struct stat sb;
    if (!st && !o.resume && stat(ckpt, &sb) == 0)
        fprintf(stderr,
                "lmpress distill: note: %s exists and will be overwritten (--resume continues "
                "it)\n",
                ckpt);
    struct prog pr = {0};
    pr.tok_per_step = (double)o.batch * o.seqlen;
    o.progress = on_progress;
    o.progress_user = &pr;
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESETHAND; /* a second Ctrl-C kills at once */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    struct lmp_distill_report rep = {0};
    pr.t_start = cli_now();
    if (!st) st = lmp_distill(teacher, student, ids, n_ids, &o, &rep, &err);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (!st && !rep.stopped) st = lmp_ckpt_save_lmp(student, outp, &err);
    int rc = 0;
    if (st) {
        rc = cli_fail(CMD, st, &err);
    } else if (rep.stopped) {
        fprintf(stderr,
                "lmpress distill: %s at step %d of %d; checkpoint %s; continue with the same "
                "command and --resume\n",
                interrupted ? "interrupted" : "stopped", rep.steps_done, o.steps, ckpt);
        rc = interrupted ? 130 : 0;
    } else {
        if (!keep_ckpt) remove(ckpt);
        long long fsize = stat(outp, &sb) == 0 ? (long long)sb.st_size : -1;
        const double tps = rep.seconds > 0 ? (double)rep.tokens / rep.seconds : 0;
        fprintf(stderr,
                "lmpress distill: %s, %d steps%s in %.1f s (%.0f tokens/s), loss %.4f -> %.4f\n",
                rep.mode == LMP_DISTILL_LORA ? "adapters" : "all weights", o.steps,
                rep.resumed ? " (resumed)" : "", rep.seconds, tps, rep.loss_first,
                rep.loss_last);
        if (rep.mode == LMP_DISTILL_LORA)
            fprintf(stderr,
                    "lmpress distill: %d adapters of rank %d (%lld values) + %lld norm/bias "
                    "values trained, merged (%s)\n",
                    rep.n_adapters, o.rank, (long long)rep.adapter_params,
                    (long long)(rep.n_trained - rep.adapter_params),
                    lmp_distill_merge_name(o.merge));
        else
            fprintf(stderr, "lmpress distill: %lld values trained\n", (long long)rep.n_trained);
        fprintf(stderr, "lmpress distill: -> %s (%lld bytes)\n", outp, fsize);
    }
    free(ids);
    lmp_model_free(teacher);
    lmp_model_free(student);
    return rc;
}
