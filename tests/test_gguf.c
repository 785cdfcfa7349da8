/* formats/gguf.c: the GGUF reader and the ggml dequantizers.
 * References: the llama2.c checkpoint of the same model (stories260K), numpy dequantization
 * written from the block definitions (tests/gen_gguf_fixtures.py), and corrupt files that
 * must fail cleanly (tests/bad/gguf, listed with their expected errors in
 * tests/data/gguf/bad_expected.txt). */
#include "test.h"
#include "formats/gguf.h"
#include "formats/model.h"

#include <dirent.h>
#include <stdint.h>
#include <string.h>

#define GDIR "tests/data/gguf/"
#define BADDIR "tests/bad/gguf/"

static unsigned char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = malloc((size_t)n + 1);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return p;
}

static int write_all(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = fwrite(p, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

/* A failed load must leave *out NULL and name the file in a one-line message. */
static void check_clean_failure(const char *path, enum lmp_status st, struct lmp_model *m,
                                const struct lmp_err *err)
{
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    CHECK_MSG(st == LMP_ERR_FORMAT || st == LMP_ERR_UNSUPPORTED,
              "%s: status %s (%s)", path, lmp_status_str(st), err->msg);
    CHECK_MSG(m == NULL, "%s: model returned on failure", path);
    CHECK_MSG(strstr(err->msg, base) != NULL, "%s: message does not name the file: %s", path,
              err->msg);
    CHECK_MSG(strchr(err->msg, '\n') == NULL, "%s: message has several lines: %s", path,
              err->msg);
    lmp_model_free(m);
}

TEST(gguf_type_traits)
{
    CHECK(strcmp(lmp_gguf_type_name(LMP_GGML_TYPE_Q6_K), "Q6_K") == 0);
    CHECK(strcmp(lmp_gguf_type_name(13), "Q5_K") == 0);
    CHECK(lmp_gguf_type_name(4) == NULL && lmp_gguf_type_name(-1) == NULL);
    CHECK(lmp_gguf_type_traits(13) == NULL);
    CHECK_EQ_INT(lmp_gguf_nbytes(LMP_GGML_TYPE_Q4_K, 512), 288);
    CHECK_EQ_INT(lmp_gguf_nbytes(LMP_GGML_TYPE_Q8_0, 64), 68);
    CHECK_EQ_INT(lmp_gguf_nbytes(LMP_GGML_TYPE_BF16, 3), 6);
    CHECK_EQ_INT(lmp_gguf_nbytes(LMP_GGML_TYPE_Q4_K, 100), 0);
    CHECK_EQ_INT(lmp_gguf_nbytes(LMP_GGML_TYPE_F32, INT64_MAX), 0); /* overflow */
    float y[32];
    CHECK(lmp_gguf_dequant(LMP_GGML_TYPE_Q4_0, y, y, 31) == -1);
    CHECK(lmp_gguf_dequant(13, y, y, 32) == -1);
}

/* Every dequantizer against numpy on random blocks, also from a misaligned source. */
TEST(gguf_dequant_blocks_match_numpy)
{
    static const struct {
        const char *name;
        int type;
    } types[] = {
        {"q8_0", LMP_GGML_TYPE_Q8_0}, {"q4_0", LMP_GGML_TYPE_Q4_0}, {"q4_1", LMP_GGML_TYPE_Q4_1},
        {"q4_K", LMP_GGML_TYPE_Q4_K}, {"q6_K", LMP_GGML_TYPE_Q6_K}, {"f16", LMP_GGML_TYPE_F16},
        {"bf16", LMP_GGML_TYPE_BF16},
    };
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        char path[256];
        snprintf(path, sizeof path, GDIR "blocks_%s.bin", types[k].name);
        size_t len;
        unsigned char *raw = read_all(path, &len);
        snprintf(path, sizeof path, GDIR "blocks_%s.npy", types[k].name);
        void *ref = NULL;
        int is_int, nd;
        long shape[4];
        long n = lmp_test_read_npy(path, &ref, &is_int, shape, &nd);
        CHECK_MSG(raw && n > 0 && !is_int, "cannot read fixtures of %s", types[k].name);
        if (!raw || n <= 0) {
            free(raw);
            free(ref);
            continue;
        }
        CHECK_EQ_INT(lmp_gguf_nbytes(types[k].type, n), len);
        float *got = malloc((size_t)n * sizeof *got);
        unsigned char *shifted = malloc(len + 1);
        REQUIRE(got && shifted);
        CHECK(lmp_gguf_dequant(types[k].type, raw, got, n) == 0);
        CHECK_CLOSE(types[k].name, got, ref, n, 1e-7, 1e-6);
        memcpy(shifted + 1, raw, len);
        memset(got, 0, (size_t)n * sizeof *got);
        CHECK(lmp_gguf_dequant(types[k].type, shifted + 1, got, n) == 0);
        CHECK_CLOSE(types[k].name, got, ref, n, 1e-7, 1e-6);
        free(shifted);
        free(got);
        free(raw);
        free(ref);
    }
}

/* The GGUF and the llama2.c checkpoint of stories260K are the same model. */
TEST(gguf_stories260K_matches_llama2c)
{
    struct lmp_model *g = NULL, *b = NULL;
    struct lmp_err err = {{0}};
    enum lmp_status st = lmp_ckpt_load_gguf("tests/data/stories260K/stories260K.gguf", &g, &err);
    CHECK_MSG(st == LMP_OK, "gguf: %s", err.msg);
    st = lmp_ckpt_load("models/stories260K.bin", NULL, &b, &err);
    CHECK_MSG(st == LMP_OK, "llama2c: %s", err.msg);
    if (!g || !b) {
        lmp_model_free(g);
        lmp_model_free(b);
        REQUIRE(0);
    }
    CHECK(strcmp(g->source_format, "gguf") == 0);
    CHECK(strcmp(g->cfg.arch, "llama") == 0);
    CHECK(strcmp(g->cfg.name, "llama") == 0); /* general.name of this file */
    CHECK_EQ_INT(g->cfg.dim, b->cfg.dim);
    CHECK_EQ_INT(g->cfg.n_layers, b->cfg.n_layers);
    CHECK_EQ_INT(g->cfg.head_dim, b->cfg.head_dim);
    CHECK_EQ_INT(g->cfg.vocab, b->cfg.vocab);
    CHECK(g->cfg.rope_theta == b->cfg.rope_theta);
    CHECK(g->cfg.norm_eps == b->cfg.norm_eps);
    CHECK_EQ_INT(g->cfg.attn_bias, 0);
    /* the .bin says seq_len 512, the GGUF context_length 2048: only the declared limit differs */
    CHECK_EQ_INT(g->cfg.max_ctx, 2048);
    CHECK_EQ_INT(b->cfg.max_ctx, 512);
    for (int l = 0; l < g->cfg.n_layers; l++) {
        CHECK_EQ_INT(g->cfg.layer[l].n_heads, b->cfg.layer[l].n_heads);
        CHECK_EQ_INT(g->cfg.layer[l].n_kv_heads, b->cfg.layer[l].n_kv_heads);
        CHECK_EQ_INT(g->cfg.layer[l].ffn, b->cfg.layer[l].ffn);
    }
    /* the .bin is tied; the GGUF stores output.weight explicitly, equal to the embedding */
    CHECK(b->cfg.tied && !g->cfg.tied);
    CHECK_EQ_INT(g->n_tensors, b->n_tensors + 1);
    CHECK(g->out && g->out != g->tok_embd && g->out->nbytes == b->tok_embd->nbytes &&
          memcmp(g->out->data, b->tok_embd->data, b->tok_embd->nbytes) == 0);
    for (int i = 0; i < b->n_tensors; i++) {
        const struct lmp_tensor *tb = &b->tensors[i];
        const struct lmp_tensor *tg = lmp_model_find(g, tb->name);
        CHECK_MSG(tg != NULL, "gguf lacks %s", tb->name);
        if (!tg) continue;
        CHECK_MSG(tg->type == LMP_TYPE_F32 && tg->shape[0] == tb->shape[0] &&
                      tg->shape[1] == tb->shape[1] && tg->nbytes == tb->nbytes &&
                      memcmp(tg->data, tb->data, tb->nbytes) == 0,
                  "tensor %s differs", tb->name);
    }
    /* vocabulary: GGUF spells spaces U+2581, tok512.bin plain ' ' */
    const struct lmp_vocab *vg = &g->vocab, *vb = &b->vocab;
    CHECK_EQ_INT(vg->kind, LMP_TOK_SPM);
    CHECK_EQ_INT(vg->n_tokens, vb->n_tokens);
    CHECK(vg->space_is_plain == 0 && vg->add_space_prefix == 1 && vg->add_bos == 1);
    CHECK_EQ_INT(vg->bos, vb->bos);
    CHECK_EQ_INT(vg->eos, vb->eos);
    CHECK_EQ_INT(vg->unk, vb->unk);
    CHECK_EQ_INT(vg->pad, -1);
    int bad = 0;
    for (int i = 0; i < vg->n_tokens && i < vb->n_tokens; i++) {
        uint32_t lg, lb;
        const char *sg = lmp_vocab_token(vg, i, &lg), *sb = lmp_vocab_token(vb, i, &lb);
        /* llama2.c's tokenizer export spells BOS/EOS "\n<s>\n" and "\n</s>\n" */
        if ((i == 1 || i == 2) && lb >= 2 && sb[0] == '\n' && sb[lb - 1] == '\n') {
            sb++;
            lb -= 2;
        }
        char mapped[256];
        uint32_t n = 0;
        for (uint32_t k = 0; k < lg && n < sizeof mapped; k++) {
            if (k + 2 < lg && memcmp(sg + k, "\xe2\x96\x81", 3) == 0) {
                mapped[n++] = ' ';
                k += 2;
            } else {
                mapped[n++] = sg[k];
            }
        }
        if (n != lb || memcmp(mapped, sb, lb) != 0 || vg->scores[i] != vb->scores[i] ||
            vg->types[i] != vb->types[i]) {
            if (bad++ < 5)
                lmp_test_fail(__FILE__, __LINE__, "token %d: '%.*s' %g %d vs '%.*s' %g %d", i,
                              (int)lg, sg, (double)vg->scores[i], vg->types[i], (int)lb, sb,
                              (double)vb->scores[i], vb->types[i]);
        }
    }
    lmp_model_free(g);
    lmp_model_free(b);
}

/* A model with every supported tensor type, per-layer head/ffn arrays, a byte-level BPE
 * tokenizer, GGUF v2 and alignment 64, compared with numpy's dequantization. */
TEST(gguf_tiny_llama_mixed_types)
{
    struct lmp_model *m = NULL;
    struct lmp_err err = {{0}};
    enum lmp_status st = lmp_ckpt_load(GDIR "tiny_llama.gguf", NULL, &m, &err);
    CHECK_MSG(st == LMP_OK, "load: %s", err.msg);
    REQUIRE(m);
    const struct lmp_config *c = &m->cfg;
    CHECK(strcmp(c->name, "tiny-mixed") == 0);
    CHECK_EQ_INT(c->dim, 256);
    CHECK_EQ_INT(c->n_layers, 2);
    CHECK_EQ_INT(c->head_dim, 32);
    CHECK_EQ_INT(c->vocab, 32);
    CHECK_EQ_INT(c->max_ctx, 128);
    CHECK(c->rope_theta == 500000.0f);
    CHECK(c->norm_eps == 1e-6f);
    CHECK(c->tied && m->out == m->tok_embd);
    CHECK_EQ_INT(c->layer[0].n_heads, 2);
    CHECK_EQ_INT(c->layer[0].n_kv_heads, 1);
    CHECK_EQ_INT(c->layer[0].ffn, 32);
    CHECK_EQ_INT(c->layer[1].n_heads, 2);
    CHECK_EQ_INT(c->layer[1].n_kv_heads, 2);
    CHECK_EQ_INT(c->layer[1].ffn, 64);

    const struct lmp_vocab *v = &m->vocab;
    CHECK_EQ_INT(v->kind, LMP_TOK_BPE);
    CHECK_EQ_INT(v->n_tokens, 32);
    CHECK_EQ_INT(v->n_merges, 10);
    CHECK_EQ_INT(v->bos, 0);
    CHECK_EQ_INT(v->eos, 29);
    CHECK_EQ_INT(v->pad, -1);
    CHECK_EQ_INT(v->unk, -1);
    CHECK(v->add_bos == 0 && v->add_space_prefix == 0 && v->space_is_plain == 0);
    CHECK(v->pre_regex && strncmp(v->pre_regex, "\\p{N}\n", 6) == 0);
    CHECK_EQ_INT(v->types[29], LMP_TOKT_CONTROL);
    uint32_t len;
    const char *s = lmp_vocab_token(v, 14, &len);
    CHECK(len == 5 && memcmp(s, "\xc4\xa0the", 5) == 0);
    CHECK(v->merges_off[1] - v->merges_off[0] == 4 && memcmp(v->merges, "\xc4\xa0 t", 4) == 0);

    /* tensors: sums, a weighted sum and the first/last rows, from numpy */
    FILE *f = fopen(GDIR "tiny_llama_expected.txt", "r");
    void *refv = NULL;
    int is_int, nd;
    long shape[4];
    long nref = lmp_test_read_npy(GDIR "tiny_llama_expected.npy", &refv, &is_int, shape, &nd);
    if (!f || nref <= 0) {
        if (f) fclose(f);
        free(refv);
        lmp_model_free(m);
        REQUIRE(0);
    }
    const float *ref = refv;
    long pos = 0;
    char name[128];
    long rows, cols;
    int n_checked = 0;
    while (fscanf(f, "%127s %ld %ld", name, &rows, &cols) == 3) {
        const struct lmp_tensor *t = lmp_model_find(m, name);
        CHECK_MSG(t != NULL, "missing %s", name);
        if (!t || pos + 3 + 2 * cols > nref) break;
        CHECK_MSG(t->shape[0] == rows && t->shape[1] == cols && t->type == LMP_TYPE_F32,
                  "%s: shape [%lld, %lld], expected [%ld, %ld]", name, (long long)t->shape[0],
                  (long long)t->shape[1], rows, cols);
        const float *x = t->data;
        double sum = 0, sabs = 0, wsum = 0;
        for (long k = 0; k < rows * cols; k++) {
            sum += x[k];
            sabs += fabs(x[k]);
            wsum += x[k] * (double)(k % 7 - 3);
        }
        double tol = 1e-5 * ref[pos + 1] + 1e-6;
        CHECK_MSG(fabs(sum - ref[pos]) <= tol && fabs(sabs - ref[pos + 1]) <= tol &&
                      fabs(wsum - ref[pos + 2]) <= 3 * tol,
                  "%s: sums %.9g %.9g %.9g, numpy %.9g %.9g %.9g", name, sum, sabs, wsum,
                  (double)ref[pos], (double)ref[pos + 1], (double)ref[pos + 2]);
        pos += 3;
        char what[160];
        snprintf(what, sizeof what, "%s row 0", name);
        CHECK_CLOSE(what, x, ref + pos, cols, 1e-7, 1e-6);
        pos += cols;
        snprintf(what, sizeof what, "%s last row", name);
        CHECK_CLOSE(what, x + (rows - 1) * cols, ref + pos, cols, 1e-7, 1e-6);
        pos += cols;
        n_checked++;
    }
    fclose(f);
    CHECK_EQ_INT(n_checked, 20);
    CHECK_EQ_INT(pos, nref);
    CHECK_EQ_INT(m->n_tensors, 20);
    free(refv);
    lmp_model_free(m);
}

TEST(gguf_micro_llama_spm)
{
    struct lmp_model *m = NULL;
    struct lmp_err err = {{0}};
    enum lmp_status st = lmp_ckpt_load_gguf(GDIR "micro_llama.gguf", &m, &err);
    CHECK_MSG(st == LMP_OK, "load: %s", err.msg);
    REQUIRE(m);
    CHECK_EQ_INT(m->cfg.dim, 32);
    CHECK_EQ_INT(m->cfg.head_dim, 16); /* dim / head_count: no key_length in this file */
    CHECK_EQ_INT(m->cfg.layer[0].n_kv_heads, 1);
    CHECK(m->cfg.rope_theta == 10000.0f);
    CHECK_EQ_INT(m->vocab.kind, LMP_TOK_SPM);
    CHECK(m->vocab.add_bos == 1 && m->vocab.add_space_prefix == 1 && !m->vocab.pre_regex);
    CHECK(m->vocab.scores[5] == -5.0f);
    CHECK_EQ_INT(m->vocab.types[0], LMP_TOKT_UNKNOWN);
    lmp_model_free(m);
}

/* Each corrupt file fails with the listed status and a message naming the file and the
 * problem; every other file in tests/bad/gguf (fuzzer finds) fails cleanly too. */
TEST(gguf_bad_files_fail_cleanly)
{
    FILE *f = fopen(GDIR "bad_expected.txt", "r");
    REQUIRE(f);
    char line[512];
    int n_listed = 0;
    while (fgets(line, sizeof line, f)) {
        char file[128], status[32];
        int used = 0;
        if (line[0] == '#' || sscanf(line, "%127s %31s %n", file, status, &used) < 2) continue;
        char *sub = line + used;
        sub[strcspn(sub, "\n")] = 0;
        char path[300];
        snprintf(path, sizeof path, BADDIR "%s", file);
        struct lmp_model *m = NULL;
        struct lmp_err err = {{0}};
        enum lmp_status st = lmp_ckpt_load_gguf(path, &m, &err);
        enum lmp_status want = strcmp(status, "UNSUPPORTED") == 0 ? LMP_ERR_UNSUPPORTED
                                                                   : LMP_ERR_FORMAT;
        CHECK_MSG(st == want, "%s: got %s, expected %s: %s", file, lmp_status_str(st), status,
                  err.msg);
        CHECK_MSG(strstr(err.msg, sub) != NULL, "%s: message lacks '%s': %s", file, sub, err.msg);
        check_clean_failure(path, st, m, &err);
        n_listed++;
    }
    fclose(f);
    CHECK(n_listed >= 40);

    DIR *d = opendir(BADDIR);
    REQUIRE(d);
    struct dirent *e;
    int n_all = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[600];
        snprintf(path, sizeof path, BADDIR "%s", e->d_name);
        struct lmp_model *m = NULL;
        struct lmp_err err = {{0}};
        enum lmp_status st = lmp_ckpt_load_gguf(path, &m, &err);
        check_clean_failure(path, st, m, &err);
        n_all++;
    }
    closedir(d);
    CHECK(n_all >= n_listed);
}

/* Every prefix of the header and metadata, and many prefixes into the data, of two valid
 * files fail with a format error. */
TEST(gguf_truncated_prefixes_fail)
{
    static const char *files[] = {GDIR "micro_llama.gguf", GDIR "tiny_llama.gguf"};
    char path[600];
    snprintf(path, sizeof path, "%s/cut.gguf", lmp_test_tmpdir());
    for (int k = 0; k < 2; k++) {
        size_t len;
        unsigned char *p = read_all(files[k], &len);
        REQUIRE(p);
        int n_bad = 0;
        /* micro: every byte of its metadata; tiny: a sample (fast under ASan too) */
        size_t fine = k == 0 ? 2048 : 4096, step = k == 0 ? 1 : 13;
        for (size_t cut = 0; cut < len; cut += cut < fine ? step : 2039) {
            REQUIRE(write_all(path, p, cut));
            struct lmp_model *m = NULL;
            struct lmp_err err = {{0}};
            enum lmp_status st = lmp_ckpt_load_gguf(path, &m, &err);
            if (st != LMP_ERR_FORMAT || m || !strstr(err.msg, "cut.gguf")) {
                if (n_bad++ < 5)
                    lmp_test_fail(__FILE__, __LINE__, "%s cut at %zu: %s: %s", files[k], cut,
                                  lmp_status_str(st), err.msg);
            }
            lmp_model_free(m);
        }
        free(p);
    }
}

/* Random byte corruption of a valid small file: loads or fails cleanly, never crashes. */
TEST(gguf_random_corruption_is_safe)
{
    size_t len;
    unsigned char *orig = read_all(GDIR "micro_llama.gguf", &len);
    REQUIRE(orig);
    unsigned char *p = malloc(len);
    REQUIRE(p);
    char path[600];
    snprintf(path, sizeof path, "%s/mut.gguf", lmp_test_tmpdir());
    unsigned long long rng = 0x9e3779b97f4a7c15ull;
    int n_ok = 0;
    for (int it = 0; it < 1500; it++) {
        memcpy(p, orig, len);
        int n_mut = 1 + it % 4;
        for (int j = 0; j < n_mut; j++) {
            float r = lmp_test_randf(&rng) * 0.5f + 0.5f;
            /* most mutations hit the header and metadata, where the parsing is */
            size_t limit = it % 3 ? 1800 : len;
            size_t at = (size_t)(r * (float)limit) % len;
            float b = lmp_test_randf(&rng);
            p[at] = it % 5 == 0 ? (unsigned char)(b > 0 ? 0xff : 0x00)
                                : (unsigned char)(p[at] ^ (1u << ((unsigned)(b * 1000) & 7)));
        }
        REQUIRE(write_all(path, p, len));
        struct lmp_model *m = NULL;
        struct lmp_err err = {{0}};
        enum lmp_status st = lmp_ckpt_load_gguf(path, &m, &err);
        if (st == LMP_OK) {
            CHECK(m != NULL);
            n_ok++;
        } else {
            CHECK_MSG(m == NULL && err.msg[0] && st != LMP_ERR_INTERNAL,
                      "iteration %d: %s: %s", it, lmp_status_str(st), err.msg);
        }
        lmp_model_free(m);
    }
    fprintf(stderr, "    %d of 1500 mutants still load\n", n_ok);
    free(p);
    free(orig);
}
