/* Progress lines and bars shared by the long-running subcommands, and reading a text file
 * into token ids. */
#include "cli.h"
#include "formats/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void cli_progress_init(struct cli_progress *p, const char *label, const char *unit)
{
    p->label = label;
    p->unit = unit;
    p->tty = isatty(2);
    p->t0 = cli_now();
    p->last_pct = -100;
}

void cli_progress_update(struct cli_progress *p, int done, int total, const char *note)
{
    if (total <= 0) return;
    double el = cli_now() - p->t0, eta = done ? el * (total - done) / done : 0;
    if (p->tty) {
        char bar[31];
        int fill = (int)(30.0 * done / total);
        for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
        bar[30] = 0;
        fprintf(stderr, "\r%s [%s] %d/%d %s, %.1f s, ETA %.1f s %-12s", p->label, bar, done,
                total, p->unit, el, eta, note ? note : "");
        if (done == total) fprintf(stderr, "\n");
    } else {
        int pct = (int)(100.0 * done / total);
        if (pct / 10 == p->last_pct / 10 && done != total) return;
        p->last_pct = pct;
        fprintf(stderr, "%s: %d/%d %s, %.1f s, ETA %.1f s%s%s\n", p->label, done, total, p->unit,
                el, eta, note ? ", " : "", note ? note : "");
    }
    fflush(stderr);
}

enum lmp_status cli_tokenize_file(const struct lmp_model *m, const char *path, int32_t **ids,
                                  int64_t *n, struct lmp_err *err)
{
    *ids = NULL;
    *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return lmp_err_set(err, LMP_ERR_IO, "%s: cannot open", path);
    size_t cap = 1 << 16, len = 0, got;
    char *buf = malloc(cap);
    while (buf && (got = fread(buf + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                buf = NULL;
            }
            buf = nb;
        }
    }
    fclose(f);
    if (!buf) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    if (len == 0) {
        free(buf);
        return lmp_err_set(err, LMP_ERR_ARG, "%s: empty text", path);
    }
    struct lmp_tokenizer *tk = NULL;
    enum lmp_status st = lmp_tok_create(&m->vocab, &tk, err);
    if (!st) st = lmp_tok_encode(tk, buf, len, 0, ids, n, err);
    lmp_tok_free(tk);
    free(buf);
    return st;
}
