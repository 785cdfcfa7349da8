/* Minimal test harness: TEST(name) registers a function; the runner (tests/main.c) forks
 * one process per test so a crash is a failure, not the end of the run, and ends with
 * "N passed, N failed, N skipped". */
#ifndef LMP_TEST_H
#define LMP_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

typedef void (*lmp_test_fn)(void);
void lmp_test_register(const char *name, const char *file, lmp_test_fn fn);
void lmp_test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void lmp_test_skip(const char *why) __attribute__((noreturn));
extern int lmp_test_failures;

#define TEST(name)                                                                         \
    static void test_##name(void);                                                         \
    __attribute__((constructor)) static void reg_##name(void)                              \
    {                                                                                      \
        lmp_test_register(#name, __FILE__, test_##name);                                   \
    }                                                                                      \
    static void test_##name(void)

#define CHECK(c)                                                                           \
    do {                                                                                   \
        if (!(c)) lmp_test_fail(__FILE__, __LINE__, "CHECK(%s)", #c);                      \
    } while (0)
#define CHECK_MSG(c, ...)                                                                  \
    do {                                                                                   \
        if (!(c)) lmp_test_fail(__FILE__, __LINE__, __VA_ARGS__);                          \
    } while (0)
#define CHECK_EQ_INT(a, b)                                                                 \
    do {                                                                                   \
        long long a_ = (long long)(a), b_ = (long long)(b);                                \
        if (a_ != b_) lmp_test_fail(__FILE__, __LINE__, "%s = %lld, expected %lld", #a, a_, b_); \
    } while (0)
/* require: stop the test on failure */
#define REQUIRE(c)                                                                         \
    do {                                                                                   \
        if (!(c)) {                                                                        \
            lmp_test_fail(__FILE__, __LINE__, "REQUIRE(%s)", #c);                          \
            return;                                                                        \
        }                                                                                  \
    } while (0)

/* Compares arrays with |a-b| <= atol + rtol*|ref|; prints the max diff; returns #bad. */
long lmp_test_close(const char *what, const float *got, const float *ref, long n, double atol,
                    double rtol);
#define CHECK_CLOSE(what, got, ref, n, atol, rtol)                                          \
    do {                                                                                   \
        if (lmp_test_close(what, got, ref, n, atol, rtol))                                 \
            lmp_test_fail(__FILE__, __LINE__, "%s not close", what);                       \
    } while (0)

/* Helpers */
const char *lmp_test_bin(void);      /* path of build/lmpress */
const char *lmp_test_tmpdir(void);   /* per-test scratch dir (created) */
/* Runs a shell command, captures stdout+stderr into out (may be NULL); returns exit code. */
int lmp_test_sh(char *out, size_t outlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int lmp_test_have_numpy(void);       /* /usr/bin/python3 with numpy */
/* Runs `lmpress CMD ARGS`; a failure unless it exits 2 with exactly one line of output. */
void lmp_test_cli_bad(const char *file, int line, const char *cmd, const char *args);
#define CHECK_CLI_BAD(cmd, args) lmp_test_cli_bad(__FILE__, __LINE__, cmd, args)
/* Reads a .npy file (float32 or int32, C order) into malloc'd memory; returns n elems or -1. */
long lmp_test_read_npy(const char *path, void **data, int *is_int, long shape[4], int *ndim);
/* Deterministic uniform random in [-1,1). */
float lmp_test_randf(unsigned long long *state);

#endif
