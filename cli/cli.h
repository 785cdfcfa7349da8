/* Shared by the subcommands: error reporting and option helpers. Only cli/ prints and
 * chooses exit codes (0 ok, 2 bad input, 1 internal failure). */
#ifndef LMP_CLI_H
#define LMP_CLI_H

#include "formats/model.h"

/* Prints "lmpress <cmd>: <message>" on one line and returns the exit code for st. */
int cli_fail(const char *cmd, enum lmp_status st, const struct lmp_err *err);
/* Prints a usage error (one line) and returns 2. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Strict number parsing: whole string must parse, within [lo, hi]. */
int cli_parse_int(const char *s, long lo, long hi, long *out);
int cli_parse_double(const char *s, double lo, double hi, double *out);
/* Is stderr a terminal (progress bars) */
int cli_isatty_err(void);

int cmd_convert(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_prune(int argc, char **argv);
int cmd_distill(int argc, char **argv);
int cmd_ppl(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_bench(int argc, char **argv);

#endif

/* Progress for long jobs: a bar with ETA when stderr is a TTY, else a plain line every
 * 10 % (and at the end). */
struct cli_progress {
    const char *label; /* "quantize" */
    const char *unit;  /* "layers" */
    int tty;
    double t0;
    int last_pct;
};
void cli_progress_init(struct cli_progress *p, const char *label, const char *unit);
void cli_progress_update(struct cli_progress *p, int done, int total, const char *note);
double cli_now(void);
/* Reads a text file and tokenizes it with the model's tokenizer (no BOS). Errors name the
 * file: missing, empty, not tokenizable. */
enum lmp_status cli_tokenize_file(const struct lmp_model *m, const char *path, int32_t **ids,
                                  int64_t *n, struct lmp_err *err);
