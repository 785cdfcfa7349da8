/* Bad input must fail cleanly: every file in the corpus under tests/bad/<kind>/ makes
 * `lmpress convert` exit 2 with one line naming the file and leaves no output behind;
 * truncations of real files at many prefix lengths fail in the library with a message.
 * Under `make asan` the same runs also catch leaks and undefined behaviour. */
#include "test.h"
#include "formats/model.h"

#include <dirent.h>
#include <string.h>
#include <sys/stat.h>

TEST(bad_tiny_reference_lmp_matches_llama2c)
{
    /* tests/data/tiny/tiny.lmp was written by tests/gen_bad_corpus.py from docs/FORMAT.md,
     * independently of our writer: our reader must load it as the same model as tiny.bin. */
    struct lmp_err err = {{0}};
    struct lmp_model *a = NULL, *b = NULL;
    CHECK_MSG(lmp_ckpt_load("tests/data/tiny/tiny.bin", NULL, &a, &err) == LMP_OK, "%s", err.msg);
    CHECK_MSG(lmp_ckpt_load("tests/data/tiny/tiny.lmp", NULL, &b, &err) == LMP_OK, "%s", err.msg);
    REQUIRE(a && b);
    REQUIRE(a->n_tensors == b->n_tensors);
    for (int i = 0; i < a->n_tensors; i++) {
        CHECK(!strcmp(a->tensors[i].name, b->tensors[i].name));
        CHECK(a->tensors[i].nbytes == b->tensors[i].nbytes &&
              !memcmp(a->tensors[i].data, b->tensors[i].data, a->tensors[i].nbytes));
    }
    CHECK(a->vocab.n_tokens == b->vocab.n_tokens &&
          !memcmp(a->vocab.text, b->vocab.text, a->vocab.off[a->vocab.n_tokens]));
    lmp_model_free(a);
    lmp_model_free(b);
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        if (*s == '\n') n++;
    return n;
}

TEST(bad_corpus_cli_exit2)
{
    DIR *top = opendir("tests/bad");
    REQUIRE(top);
    struct dirent *k;
    int n = 0;
    const char *tmp = lmp_test_tmpdir();
    while ((k = readdir(top))) {
        if (k->d_name[0] == '.') continue;
        char kd[512];
        snprintf(kd, sizeof kd, "tests/bad/%s", k->d_name);
        DIR *d = opendir(kd);
        if (!d) continue;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.' || strstr(e->d_name, ".md")) continue;
            char in[1024], out[8192];
            snprintf(in, sizeof in, "%s/%s", kd, e->d_name);
            int rc = lmp_test_sh(out, sizeof out, "%s convert '%s' '%s/out.lmp' 2>&1 >/dev/null",
                                 lmp_test_bin(), in, tmp);
            n++;
            CHECK_MSG(rc == 2, "%s: exit %d, expected 2: %s", in, rc, out);
            CHECK_MSG(count_lines(out) == 1, "%s: expected one line, got: %s", in, out);
            CHECK_MSG(strstr(out, kd) != NULL, "%s: message does not name the file: %s", in, out);
            /* nothing left behind: no output, no temporary */
            char ls[4096];
            lmp_test_sh(ls, sizeof ls, "ls -A '%s'", tmp);
            CHECK_MSG(ls[0] == 0, "%s: left files behind: %s", in, ls);
        }
        closedir(d);
    }
    closedir(top);
    fprintf(stderr, "    %d corpus inputs\n", n);
    CHECK(n >= 30);
}

/* Loads every prefix of a file at ~n_cuts lengths; all must fail with a message. */
static void truncations(const char *src, const char *ext, int n_cuts, const char *tok)
{
    FILE *f = fopen(src, "rb");
    if (!f) {
        lmp_test_fail(__FILE__, __LINE__, "cannot open %s", src);
        return;
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)len);
    if (fread(buf, 1, (size_t)len, f) != (size_t)len) len = 0;
    fclose(f);
    char path[600];
    snprintf(path, sizeof path, "%s/cut%s", lmp_test_tmpdir(), ext);
    struct lmp_load_opts lo = {.tokenizer = tok};
    int bad = 0;
    for (int i = 0; i < n_cuts; i++) {
        /* dense near the start (headers), spread over the rest */
        long cut = i < n_cuts / 2 ? (long)i * 7 : (long)((double)(i - n_cuts / 2) / (n_cuts - n_cuts / 2) * (double)len);
        if (cut >= len) continue;
        FILE *o = fopen(path, "wb");
        fwrite(buf, 1, (size_t)cut, o);
        fclose(o);
        struct lmp_err err = {{0}};
        struct lmp_model *m = NULL;
        enum lmp_status st = lmp_ckpt_load(path, &lo, &m, &err);
        if (st == LMP_OK || m || !strstr(err.msg, path) || lmp_status_exit_code(st) != 2) {
            if (bad++ < 3)
                fprintf(stderr, "    %s cut at %ld: status %d, message '%s'\n", src, cut, st, err.msg);
        }
        lmp_model_free(m);
    }
    free(buf);
    CHECK_MSG(bad == 0, "%s: %d truncations not rejected cleanly", src, bad);
}

TEST(bad_truncated_llama2c)
{
    truncations("models/stories260K.bin", ".bin", 120, "models/tok512.bin");
}

TEST(bad_truncated_gguf)
{
    truncations("tests/data/stories260K/stories260K.gguf", ".gguf", 160, NULL);
}

TEST(bad_truncated_lmp)
{
    char p[600];
    struct lmp_err err = {{0}};
    struct lmp_model *m = NULL;
    snprintf(p, sizeof p, "%s/full.lmp", lmp_test_tmpdir());
    REQUIRE(lmp_ckpt_load("models/stories260K.bin", NULL, &m, &err) == LMP_OK);
    REQUIRE(lmp_ckpt_save_lmp(m, p, &err) == LMP_OK);
    lmp_model_free(m);
    truncations(p, ".lmp", 160, NULL);
}

TEST(bad_llama2c_tokenizer_mismatch_names_tokenizer)
{
    char out[4096];
    int rc = lmp_test_sh(out, sizeof out, "%s inspect models/stories260K.bin --tokenizer tests/data/tiny/tok8.bin",
                         lmp_test_bin());
    CHECK_EQ_INT(rc, 2);
    CHECK_MSG(strstr(out, "tok8.bin") && strstr(out, "vocabulary"), "said: %s", out);
}
