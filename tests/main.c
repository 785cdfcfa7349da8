/* The test runner: forks each registered test, reports PASS/FAIL/SKIP, ends with
 * "N passed, N failed, N skipped". Usage: lmpress-tests [substring-filter...] */
#include "test.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#define LMP_LEAK_CHECK() __lsan_do_recoverable_leak_check()
#else
#define LMP_LEAK_CHECK() 0
#endif

#define MAX_TESTS 1024
static struct {
    const char *name, *file;
    lmp_test_fn fn;
} tests[MAX_TESTS];
static int n_tests;
int lmp_test_failures;
static char tmpdir[512];

void lmp_test_register(const char *name, const char *file, lmp_test_fn fn)
{
    if (n_tests < MAX_TESTS) {
        tests[n_tests].name = name;
        tests[n_tests].file = file;
        tests[n_tests].fn = fn;
        n_tests++;
    }
}

void lmp_test_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "    %s:%d: ", file, line);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    lmp_test_failures++;
}

void lmp_test_skip(const char *why)
{
    fprintf(stderr, "    skipped: %s\n", why);
    fflush(stderr);
    _exit(77);
}

long lmp_test_close(const char *what, const float *got, const float *ref, long n, double atol,
                    double rtol)
{
    long bad = 0, worst = -1;
    double maxd = 0;
    for (long i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)ref[i]);
        if (!(d <= atol + rtol * fabs((double)ref[i]))) bad++;
        if (!(d <= maxd)) {
            maxd = d;
            worst = i;
        }
    }
    fprintf(stderr, "    %s: %ld values, max |diff| %.3g%s", what, n, maxd, bad ? "" : "\n");
    if (bad)
        fprintf(stderr, " at %ld (got %.8g ref %.8g), %ld outside tolerance\n", worst,
                (double)got[worst], (double)ref[worst], bad);
    return bad;
}

const char *lmp_test_bin(void)
{
    const char *b = getenv("LMP_BIN");
    return b ? b : "build/lmpress";
}

const char *lmp_test_tmpdir(void) { return tmpdir; }

void lmp_test_cli_bad(const char *file, int line, const char *cmd, const char *args)
{
    char out[4096];
    int rc = lmp_test_sh(out, sizeof out, "%s %s %s", lmp_test_bin(), cmd, args);
    int lines = 0;
    for (char *p = out; *p; p++) lines += *p == '\n';
    if (rc != 2 || lines != 1)
        lmp_test_fail(file, line, "%s %s: exit %d, %d lines: %s", cmd, args, rc, lines, out);
}

int lmp_test_sh(char *out, size_t outlen, const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char full[8300];
    snprintf(full, sizeof full, "(%s) 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (!p) return -1;
    size_t n = 0;
    char buf[4096];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, p)) > 0) {
        if (out && n + 1 < outlen) {
            size_t k = got < outlen - 1 - n ? got : outlen - 1 - n;
            memcpy(out + n, buf, k);
            n += k;
        }
    }
    if (out && outlen) out[n] = 0;
    int st = pclose(p);
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    return 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

int lmp_test_have_numpy(void)
{
    return lmp_test_sh(NULL, 0, "/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0;
}

long lmp_test_read_npy(const char *path, void **data, int *is_int, long shape[4], int *ndim)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    unsigned char h[10];
    if (fread(h, 1, 10, f) != 10 || memcmp(h, "\x93NUMPY", 6) != 0) {
        fclose(f);
        return -1;
    }
    size_t hl = h[8] | (h[9] << 8);
    if (h[6] >= 2) { /* v2: 4-byte header length */
        unsigned char e[2];
        if (fread(e, 1, 2, f) != 2) { fclose(f); return -1; }
        hl = h[8] | (h[9] << 8) | ((size_t)e[0] << 16) | ((size_t)e[1] << 24);
    }
    char *hdr = calloc(1, hl + 1);
    if (!hdr || fread(hdr, 1, hl, f) != hl) { free(hdr); fclose(f); return -1; }
    *is_int = strstr(hdr, "'<i4'") != NULL;
    if (!*is_int && !strstr(hdr, "'<f4'")) { free(hdr); fclose(f); return -1; }
    if (strstr(hdr, "'fortran_order': True")) { free(hdr); fclose(f); return -1; }
    char *s = strstr(hdr, "'shape': (");
    long n = 1;
    *ndim = 0;
    if (s) {
        s += 10;
        while (*s && *s != ')') {
            long v = strtol(s, &s, 10);
            if (*ndim < 4) shape[(*ndim)++] = v;
            n *= v;
            while (*s == ',' || *s == ' ') s++;
        }
    }
    free(hdr);
    *data = malloc((size_t)n * 4 + 4);
    if (!*data || fread(*data, 4, (size_t)n, f) != (size_t)n) { free(*data); *data = NULL; fclose(f); return -1; }
    fclose(f);
    return n;
}

float lmp_test_randf(unsigned long long *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (float)((double)(*s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    int passed = 0, failed = 0, skipped = 0;
    const char *base = getenv("LMP_TEST_TMP") ? getenv("LMP_TEST_TMP") : "build/test-tmp";
    for (int i = 0; i < n_tests; i++) {
        int match = argc < 2;
        for (int a = 1; a < argc; a++)
            if (strstr(tests[i].name, argv[a]) || strstr(tests[i].file, argv[a])) match = 1;
        if (!match) continue;
        snprintf(tmpdir, sizeof tmpdir, "%s/%s", base, tests[i].name);
        char cmd[1100];
        snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", tmpdir, tmpdir);
        if (system(cmd) != 0) fprintf(stderr, "cannot create %s\n", tmpdir);
        fflush(stdout);
        fflush(stderr);
        double t0 = now();
        pid_t pid = fork();
        if (pid == 0) {
            tests[i].fn();
            if (LMP_LEAK_CHECK()) lmp_test_fail(tests[i].file, 0, "memory leaked (LeakSanitizer report above)");
            fflush(stdout);
            fflush(stderr);
            _exit(lmp_test_failures ? 1 : 0);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        double dt = now() - t0;
        const char *res;
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
            res = "PASS";
            passed++;
        } else if (WIFEXITED(st) && WEXITSTATUS(st) == 77) {
            res = "SKIP";
            skipped++;
        } else {
            res = "FAIL";
            failed++;
            if (WIFSIGNALED(st)) fprintf(stderr, "    crashed with signal %d\n", WTERMSIG(st));
        }
        printf("%s %s (%.2fs)\n", res, tests[i].name, dt);
        fflush(stdout);
    }
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
