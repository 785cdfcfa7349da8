/* lmpress: git-style dispatch to the subcommands in cli/cmd_*.c. */
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} cmds[] = {
    {"convert", cmd_convert, "convert a checkpoint (llama2.c, GGUF, Hugging Face, .lmp) to .lmp"},
    {"inspect", cmd_inspect, "show architecture, per-layer shapes, tensors, size, checksums"},
    {"quantize", cmd_quantize, "GPTQ / RTN quantization to packed 2/3/4/8-bit weights"},
    {"prune", cmd_prune, "structured pruning of attention heads and MLP channels"},
    {"distill", cmd_distill, "recover a compressed student by distillation from the original"},
    {"ppl", cmd_ppl, "perplexity (llama.cpp or GPTQ protocol), KL-divergence to a base"},
    {"run", cmd_run, "generate text from a prompt"},
    {"bench", cmd_bench, "measure throughput"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: lmpress <command> [options]   (lmpress <command> --help)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        fprintf(f, "  %-9s %s\n", cmds[i].name, cmds[i].help);
}

int cli_fail(const char *cmd, enum lmp_status st, const struct lmp_err *err)
{
    const char *msg = err && err->msg[0] ? err->msg : lmp_status_str(st);
    fprintf(stderr, "lmpress %s: %s\n", cmd, msg);
    return lmp_status_exit_code(st);
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "lmpress %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see lmpress %s --help)\n", cmd);
    va_end(ap);
    return 2;
}

int cli_parse_int(const char *s, long lo, long hi, long *out)
{
    if (!s || !*s) return 0;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return 0;
    *out = v;
    return 1;
}

int cli_parse_double(const char *s, double lo, double hi, double *out)
{
    if (!s || !*s) return 0;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !(v >= lo && v <= hi)) return 0;
    *out = v;
    return 1;
}

int cli_isatty_err(void) { return isatty(2); }

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(argv[1], cmds[i].name)) return cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "lmpress: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
