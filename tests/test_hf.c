/* formats/hf.c and formats/safetensors.c: Hugging Face directories built independently by
 * tests/make_hf.py (numpy + json, no lmpress code) from stories260K.bin / tok512.bin must load
 * to exactly the llama2.c model; a random Qwen2 with biases must match the script's tensors;
 * broken directories and safetensors files must fail with a one-line error naming the file;
 * the tokenizers read from tokenizer.json must reproduce llama.cpp's / HF tokenizers' ids. */
#include "test.h"
#include "formats/model.h"
#include "formats/safetensors.h"
#include "formats/tokenizer.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <string.h>

#define PY "/usr/bin/python3 tests/make_hf.py"

static void need_numpy(void)
{
    if (!lmp_test_have_numpy()) lmp_test_skip("/usr/bin/python3 with numpy not available");
}

/* Runs make_hf.py; returns 0 on success (prints its output on failure). */
static int make_hf(const char *args)
{
    char out[4096];
    int rc = lmp_test_sh(out, sizeof out, PY " %s 2>&1", args);
    if (rc) fprintf(stderr, "    make_hf.py %s failed (%d):\n%s\n", args, rc, out);
    return rc;
}

static struct lmp_model *load_hf_ok(const char *dir)
{
    struct lmp_model *m = NULL;
    struct lmp_err err = {{0}};
    enum lmp_status st = lmp_ckpt_load_hf(dir, &m, &err);
    CHECK_MSG(st == LMP_OK, "load %s: %s", dir, err.msg);
    return st == LMP_OK ? m : NULL;
}

static struct lmp_model *load_llama2c(void)
{
    struct lmp_model *m = NULL;
    struct lmp_err err = {{0}};
    enum lmp_status st = lmp_ckpt_load("models/stories260K.bin", NULL, &m, &err);
    CHECK_MSG(st == LMP_OK, "load llama2c: %s", err.msg);
    return m;
}

static void check_same_config(const struct lmp_model *a, const struct lmp_model *b)
{
    CHECK_EQ_INT(a->cfg.dim, b->cfg.dim);
    CHECK_EQ_INT(a->cfg.n_layers, b->cfg.n_layers);
    CHECK_EQ_INT(a->cfg.head_dim, b->cfg.head_dim);
    CHECK_EQ_INT(a->cfg.vocab, b->cfg.vocab);
    CHECK_EQ_INT(a->cfg.max_ctx, b->cfg.max_ctx);
    CHECK_EQ_INT(a->cfg.tied, b->cfg.tied);
    CHECK_EQ_INT(a->cfg.attn_bias, b->cfg.attn_bias);
    CHECK(a->cfg.rope_theta == b->cfg.rope_theta);
    CHECK(a->cfg.norm_eps == b->cfg.norm_eps);
    CHECK(strcmp(a->cfg.arch, b->cfg.arch) == 0);
    for (int l = 0; l < a->cfg.n_layers && l < b->cfg.n_layers; l++) {
        CHECK_EQ_INT(a->cfg.layer[l].n_heads, b->cfg.layer[l].n_heads);
        CHECK_EQ_INT(a->cfg.layer[l].n_kv_heads, b->cfg.layer[l].n_kv_heads);
        CHECK_EQ_INT(a->cfg.layer[l].ffn, b->cfg.layer[l].ffn);
    }
}

/* hf against the llama2.c model: same tensors by name; exact (rtol 0) or within rtol. */
static void check_same_tensors(struct lmp_model *hf, struct lmp_model *ref, double rtol)
{
    CHECK_EQ_INT(hf->n_tensors, ref->n_tensors);
    for (int i = 0; i < ref->n_tensors; i++) {
        const struct lmp_tensor *r = &ref->tensors[i];
        const struct lmp_tensor *t = lmp_model_find(hf, r->name);
        CHECK_MSG(t, "tensor %s missing", r->name);
        if (!t) continue;
        CHECK_MSG(t->type == LMP_TYPE_F32 && t->n_dims == r->n_dims &&
                      t->shape[0] == r->shape[0] && t->shape[1] == r->shape[1],
                  "tensor %s: type/shape differ", r->name);
        if (t->nbytes != r->nbytes) continue;
        if (rtol == 0)
            CHECK_MSG(memcmp(t->data, r->data, r->nbytes) == 0, "tensor %s differs", r->name);
        else /* atol covers fp16 subnormals (2^-24 spacing) */
            CHECK_CLOSE(r->name, t->data, r->data, (long)lmp_tensor_nelem(r), 6e-8, rtol);
    }
}

/* Every tensor of m equals dir/expect/<name>.npy exactly (numpy's own rounding/permutation). */
static void check_expect_npy(struct lmp_model *m, const char *dir)
{
    for (int i = 0; i < m->n_tensors; i++) {
        const struct lmp_tensor *t = &m->tensors[i];
        char p[1024];
        snprintf(p, sizeof p, "%s/expect/%s.npy", dir, t->name);
        void *d = NULL;
        int is_int = 0, nd = 0;
        long shape[4];
        long n = lmp_test_read_npy(p, &d, &is_int, shape, &nd);
        CHECK_MSG(n == lmp_tensor_nelem(t) && !is_int, "%s: cannot read or wrong size", p);
        if (n == lmp_tensor_nelem(t))
            CHECK_CLOSE(t->name, t->data, d, n, 0, 0);
        free(d);
    }
}

/* The SentencePiece vocabulary made from tok512.bin equals the llama2.c one up to the
 * spelling of spaces ("▁") and of BOS/EOS. */
static void check_spm_vocab(const struct lmp_model *hf, const struct lmp_model *ref)
{
    const struct lmp_vocab *v = &hf->vocab, *r = &ref->vocab;
    CHECK_EQ_INT(v->kind, LMP_TOK_SPM);
    CHECK_EQ_INT(v->n_tokens, r->n_tokens);
    CHECK_EQ_INT(v->bos, 1);
    CHECK_EQ_INT(v->eos, 2);
    CHECK_EQ_INT(v->unk, 0);
    CHECK_EQ_INT(v->add_bos, 1);
    CHECK_EQ_INT(v->add_space_prefix, 1);
    CHECK_EQ_INT(v->space_is_plain, 0);
    if (v->n_tokens != r->n_tokens) return;
    int bad_text = 0, bad_type = 0, bad_score = 0;
    for (int i = 0; i < v->n_tokens; i++) {
        uint32_t la, lb;
        const char *a = lmp_vocab_token(v, i, &la), *b = lmp_vocab_token(r, i, &lb);
        char want[64];
        size_t k = 0;
        if (i == 1 || i == 2) {
            k = (size_t)snprintf(want, sizeof want, "%s", i == 1 ? "<s>" : "</s>");
        } else {
            for (uint32_t j = 0; j < lb && k + 4 < sizeof want; j++)
                if (b[j] == ' ') {
                    memcpy(want + k, "\xe2\x96\x81", 3);
                    k += 3;
                } else {
                    want[k++] = b[j];
                }
        }
        if (la != k || memcmp(a, want, k) != 0) bad_text++;
        if (v->types[i] != r->types[i]) bad_type++;
        /* llama2.c scores are -(id - 259) for merged pieces; ours are -id */
        if (i >= 259 && v->scores[i] != r->scores[i] - 259.0f) bad_score++;
    }
    CHECK_MSG(!bad_text, "%d token texts differ", bad_text);
    CHECK_MSG(!bad_type, "%d token types differ", bad_type);
    CHECK_MSG(!bad_score, "%d token scores differ", bad_score);
}

static void stories_case(const char *dtype, int shards, double rtol)
{
    need_numpy();
    char dir[600], args[1400];
    snprintf(dir, sizeof dir, "%s/stories-%s-%d", lmp_test_tmpdir(), dtype, shards);
    snprintf(args, sizeof args, "stories models %s %s %d", dir, dtype, shards);
    REQUIRE(make_hf(args) == 0);
    struct lmp_model *ref = load_llama2c();
    struct lmp_model *m = load_hf_ok(dir);
    if (m && ref) {
        check_same_config(m, ref);
        check_same_tensors(m, ref, rtol);
        if (rtol != 0) check_expect_npy(m, dir);
        check_spm_vocab(m, ref);
        CHECK(strcmp(m->source_format, "hf") == 0);
        char name[64];
        snprintf(name, sizeof name, "stories-%s-%d", dtype, shards);
        CHECK_MSG(strcmp(m->cfg.name, name) == 0, "name %s", m->cfg.name);
        CHECK(m->out == m->tok_embd);
    }
    lmp_model_free(m);
    lmp_model_free(ref);
}

TEST(hf_stories_f32_exact) { stories_case("F32", 1, 0); }
TEST(hf_stories_sharded_exact) { stories_case("F32", 3, 0); }
TEST(hf_stories_f16) { stories_case("F16", 1, 1.0 / 2048); }
TEST(hf_stories_bf16) { stories_case("BF16", 1, 1.0 / 256); }

TEST(hf_qwen2_biases)
{
    need_numpy();
    char dir[600], args[700];
    snprintf(dir, sizeof dir, "%s/qwen", lmp_test_tmpdir());
    snprintf(args, sizeof args, "qwen %s", dir);
    REQUIRE(make_hf(args) == 0);
    struct lmp_model *m = load_hf_ok(dir);
    REQUIRE(m);
    const struct lmp_config *c = &m->cfg;
    CHECK_EQ_INT(c->dim, 32);
    CHECK_EQ_INT(c->n_layers, 2);
    CHECK_EQ_INT(c->head_dim, 8);
    CHECK_EQ_INT(c->layer[1].n_heads, 4);
    CHECK_EQ_INT(c->layer[1].n_kv_heads, 2);
    CHECK_EQ_INT(c->layer[1].ffn, 48);
    CHECK_EQ_INT(c->vocab, 300);
    CHECK_EQ_INT(c->max_ctx, 4096);
    CHECK(c->rope_theta == 1e6f && c->norm_eps == 1e-6f);
    CHECK(c->attn_bias && !c->tied);
    CHECK(m->out && m->out != m->tok_embd);
    for (int l = 0; l < 2; l++) CHECK(m->layers[l].bq && m->layers[l].bk && m->layers[l].bv);
    /* every tensor (incl. permuted wq/wk/bq/bk) equals the script's interleaved original */
    check_expect_npy(m, dir);

    /* the permutation spelled out: interleaved row 2i+j of head h is HF row h*hd + j*hd/2 + i */
    char p[700];
    snprintf(p, sizeof p, "%s/expect/bq0_hf.npy", dir);
    float *hfb = NULL;
    int is_int, nd;
    long shape[4];
    REQUIRE(lmp_test_read_npy(p, (void **)&hfb, &is_int, shape, &nd) == 32);
    const float *bq = m->layers[0].bq->data;
    int bad = 0;
    for (int h = 0; h < 4; h++)
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 2; j++) bad += bq[h * 8 + 2 * i + j] != hfb[h * 8 + j * 4 + i];
    CHECK_EQ_INT(bad, 0);
    free(hfb);

    /* byte-level BPE vocabulary padded from 267 tokens to vocab_size 300 */
    const struct lmp_vocab *v = &m->vocab;
    CHECK_EQ_INT(v->kind, LMP_TOK_BPE);
    CHECK_EQ_INT(v->n_tokens, 300);
    uint32_t len;
    const char *s = lmp_vocab_token(v, ' ', &len);
    CHECK(len == 2 && memcmp(s, "\xc4\xa0", 2) == 0); /* GPT-2's "Ġ" for the space byte */
    s = lmp_vocab_token(v, 'a', &len);
    CHECK(len == 1 && s[0] == 'a');
    s = lmp_vocab_token(v, 266, &len);
    CHECK(len == 10 && memcmp(s, "<|im_end|>", 10) == 0);
    CHECK_EQ_INT(v->types[266], LMP_TOKT_CONTROL);
    CHECK_EQ_INT(v->types[100], LMP_TOKT_NORMAL);
    s = lmp_vocab_token(v, 299, &len);
    CHECK(len == 12 && memcmp(s, "<unused_299>", 12) == 0);
    CHECK_EQ_INT(v->types[267], LMP_TOKT_UNUSED);
    CHECK_EQ_INT(v->types[299], LMP_TOKT_UNUSED);
    CHECK_EQ_INT(v->n_merges, 8);
    if (v->n_merges == 8) {
        uint32_t a = v->merges_off[2], b = v->merges_off[3];
        CHECK(b - a == 6 && memcmp(v->merges + a, "\xc4\xa0t he", 6) == 0);
    }
    static const char qwen_regex[] =
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
        "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    CHECK(v->pre_regex && strcmp(v->pre_regex, qwen_regex) == 0);
    CHECK_EQ_INT(v->eos, 266);
    CHECK_EQ_INT(v->pad, 264);
    CHECK_EQ_INT(v->bos, 264); /* tokenizer_config has none: config.json's bos_token_id */
    CHECK_EQ_INT(v->add_bos, 0);
    CHECK_EQ_INT(v->unk, -1);
    lmp_model_free(m);
}

static enum lmp_status status_from_name(const char *s)
{
    if (strcmp(s, "IO") == 0) return LMP_ERR_IO;
    if (strcmp(s, "FORMAT") == 0) return LMP_ERR_FORMAT;
    if (strcmp(s, "UNSUPPORTED") == 0) return LMP_ERR_UNSUPPORTED;
    return LMP_OK;
}

TEST(hf_bad_inputs)
{
    need_numpy();
    const char *t = lmp_test_tmpdir();
    char args[2000];
    snprintf(args, sizeof args, "stories models %s/good F32 1 && " PY
             " stories models %s/sharded F32 3 && " PY " bad %s/good %s/sharded %s/bad",
             t, t, t, t, t);
    REQUIRE(make_hf(args) == 0);
    char p[700];
    snprintf(p, sizeof p, "%s/bad/cases.txt", t);
    FILE *f = fopen(p, "r");
    REQUIRE(f);
    char line[512];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        char name[128], stname[32], sub[256];
        if (sscanf(line, "%127s %31s %255s", name, stname, sub) != 3) continue;
        n++;
        char dir[800];
        snprintf(dir, sizeof dir, "%s/bad/%s", t, name);
        struct lmp_model *m = (struct lmp_model *)1;
        struct lmp_err err = {{0}};
        enum lmp_status st = lmp_ckpt_load_hf(dir, &m, &err);
        fprintf(stderr, "    %-22s %-12s %s\n", name, lmp_status_str(st), err.msg);
        CHECK_MSG(st == status_from_name(stname), "%s: status %s, expected %s", name,
                  lmp_status_str(st), stname);
        CHECK_MSG(m == NULL, "%s: model not NULL on failure", name);
        CHECK_MSG(strstr(err.msg, sub), "%s: message lacks \"%s\"", name, sub);
        CHECK_MSG(err.msg[0] && !strchr(err.msg, '\n'), "%s: message not one line", name);
        lmp_model_free(m);
    }
    fclose(f);
    CHECK(n >= 40);
}

/* ---- safetensors ---------------------------------------------------------------------- */

static enum lmp_status parse_str(const char *json, size_t data_len, struct lmp_st_file *f,
                                 struct lmp_err *err)
{
    static unsigned char buf[1 << 16];
    size_t hl = strlen(json);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, json, hl);
    memset(buf + 8 + hl, 0x3c, data_len);
    return lmp_st_parse(f, buf, 8 + hl + data_len, "t.safetensors", err);
}

TEST(hf_safetensors_header_rules)
{
    struct lmp_st_file f;
    struct lmp_err err = {{0}};
    /* valid: empty, scalar, zero-size and metadata-only headers, padding */
    REQUIRE(parse_str("{}", 0, &f, &err) == LMP_OK);
    CHECK_EQ_INT(f.n_tensors, 0);
    lmp_st_close(&f);
    REQUIRE(parse_str("{\"__metadata__\":{\"format\":\"pt\"},\"s\":{\"dtype\":\"F32\",\"shape\":[],"
                      "\"data_offsets\":[0,4]},\"z\":{\"dtype\":\"BF16\",\"shape\":[0,7],"
                      "\"data_offsets\":[4,4]},\"b\":{\"dtype\":\"U8\",\"shape\":[3],"
                      "\"data_offsets\":[4,7]}}   ",
                      7, &f, &err) == LMP_OK);
    CHECK_EQ_INT(f.n_tensors, 3);
    const struct lmp_st_tensor *s = lmp_st_find(&f, "s");
    CHECK(s && s->n_dims == 0 && s->nelem == 1 && s->nbytes == 4);
    const struct lmp_st_tensor *z = lmp_st_find(&f, "z");
    CHECK(z && z->n_dims == 2 && z->nelem == 0 && z->dtype == LMP_ST_BF16);
    CHECK(!lmp_st_find(&f, "__metadata__") && !lmp_st_find(&f, "q"));
    float x[2];
    CHECK(lmp_st_to_f32(&f, lmp_st_find(&f, "b"), x, &err) == LMP_ERR_UNSUPPORTED);
    CHECK(strstr(err.msg, "U8") && strstr(err.msg, "t.safetensors"));
    lmp_st_close(&f);

    static const struct {
        const char *json;
        size_t data;
        enum lmp_status st;
        const char *sub;
    } bad[] = {
        {"[]", 0, LMP_ERR_FORMAT, "not a JSON object"},
        {"{} x", 0, LMP_ERR_FORMAT, "trailing"},
        {"{\"a\":1}", 0, LMP_ERR_FORMAT, "not an object"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, LMP_ERR_FORMAT, "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8, LMP_ERR_FORMAT,
         "two non-negative"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.5]}}", 8, LMP_ERR_FORMAT,
         "two non-negative"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,1e300]}}", 8,
         LMP_ERR_FORMAT, "two non-negative"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 8, LMP_ERR_FORMAT,
         "shape needs"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,8]}}", 4, LMP_ERR_FORMAT,
         "past end"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,2,3,4,5,6,7,8,9],\"data_offsets\":[0,4]}}", 4,
         LMP_ERR_FORMAT, "dimensions"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", 4,
         LMP_ERR_FORMAT, "overflow"},
        {"{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
         LMP_ERR_UNSUPPORTED, "f32"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
         4, LMP_ERR_FORMAT, "duplicate tensor a"},
        {"{\"a\\nb\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\\nb\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
         4, LMP_ERR_FORMAT, "a?b"},
        {"{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, LMP_ERR_FORMAT,
         "dtype"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&err, 0, sizeof err);
        enum lmp_status st = parse_str(bad[i].json, bad[i].data, &f, &err);
        CHECK_MSG(st == bad[i].st && strstr(err.msg, bad[i].sub) && strstr(err.msg, "t.safetensors")
                      && !strchr(err.msg, '\n'),
                  "case %zu: %s -> %s", i, bad[i].json, err.msg);
        CHECK(f.n_tensors == 0 && f.tensors == NULL);
        lmp_st_close(&f);
    }
    /* header length past the end, and a deeply nested header */
    unsigned char b[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, '{', '}'};
    CHECK(lmp_st_parse(&f, b, 10, "t.safetensors", &err) == LMP_ERR_FORMAT);
    CHECK(strstr(err.msg, "past end of file"));
    CHECK(lmp_st_parse(&f, b, 5, "t.safetensors", &err) == LMP_ERR_FORMAT);
    static char deep[20001];
    memset(deep, '[', 20000);
    CHECK(parse_str(deep, 0, &f, &err) == LMP_ERR_FORMAT);
    lmp_st_close(&f);
}

TEST(hf_safetensors_writer)
{
    const char *t = lmp_test_tmpdir();
    char path[700];
    snprintf(path, sizeof path, "%s/w.safetensors", t);
    float a[6] = {1.5f, -2.25f, 3e-8f, 65504.0f, -0.0f, 1.0f / 3};
    uint16_t h[4], bf[4];
    float hv[4] = {0.1f, -7.5f, 1e-5f, 2048.5f};
    for (int i = 0; i < 4; i++) {
        h[i] = lmp_f32_to_f16(hv[i]);
        bf[i] = lmp_f32_to_bf16(hv[i]);
    }
    int32_t iv[3] = {-1, 0, 2147483647};
    uint8_t u[5] = {0, 1, 127, 128, 255};
    float sc = 42.0f;
    struct lmp_st_wtensor w[] = {
        {"model.a", LMP_TYPE_F32, 2, {2, 3}, a},  {"h \"quoted\"", LMP_TYPE_F16, 1, {4}, h},
        {"bf", LMP_TYPE_BF16, 2, {2, 2}, bf},     {"ints", LMP_TYPE_I32, 1, {3}, iv},
        {"bytes", LMP_TYPE_U8, 1, {5}, u},        {"scalar", LMP_TYPE_F32, 0, {0}, &sc},
        {"empty", LMP_TYPE_F32, 2, {0, 5}, NULL},
    };
    static const char *const meta[] = {"format", "pt", "note", "lmpress test"};
    struct lmp_err err = {{0}};
    REQUIRE(lmp_st_write(path, w, 7, meta, 2, &err) == LMP_OK);

    /* our reader */
    struct lmp_st_file f;
    REQUIRE(lmp_st_open(&f, path, &err) == LMP_OK);
    CHECK_EQ_INT(f.n_tensors, 7);
    for (int i = 0; i < 7; i++) {
        const struct lmp_st_tensor *s = lmp_st_find(&f, w[i].name);
        CHECK_MSG(s, "%s missing", w[i].name);
        if (!s) continue;
        size_t bytes = lmp_type_elem_size(w[i].type);
        for (int d = 0; d < w[i].n_dims; d++) bytes *= (size_t)w[i].shape[d];
        CHECK(s->n_dims == w[i].n_dims && s->nbytes == bytes);
        CHECK(bytes == 0 || memcmp(s->data, w[i].data, bytes) == 0);
    }
    lmp_st_close(&f);
    /* duplicate names are the caller's bug */
    struct lmp_st_wtensor dup[2] = {w[0], w[0]};
    CHECK(lmp_st_write(path, dup, 2, NULL, 0, &err) == LMP_ERR_ARG);

    /* numpy's reading of the same file */
    if (!lmp_test_have_numpy()) return;
    char args[1500];
    snprintf(args, sizeof args, "dumpst %s %s/np", path, t);
    REQUIRE(make_hf(args) == 0);
    struct {
        const char *name;
        const float *ref;
        long n;
    } fl[] = {{"model.a", a, 6}, {"h \"quoted\"", NULL, 4}, {"bf", NULL, 4}, {"scalar", &sc, 1}};
    float h_ref[4], bf_ref[4];
    for (int i = 0; i < 4; i++) {
        h_ref[i] = lmp_f16_to_f32(h[i]);
        bf_ref[i] = lmp_bf16_to_f32(bf[i]);
    }
    fl[1].ref = h_ref;
    fl[2].ref = bf_ref;
    for (int i = 0; i < 4; i++) {
        char p[1024];
        snprintf(p, sizeof p, "%s/np/%s.npy", t, fl[i].name);
        void *d = NULL;
        int is_int, nd;
        long shape[4];
        long n = lmp_test_read_npy(p, &d, &is_int, shape, &nd);
        CHECK_MSG(n == fl[i].n && !is_int, "%s", p);
        if (n == fl[i].n) CHECK_CLOSE(fl[i].name, d, fl[i].ref, n, 0, 0);
        free(d);
    }
    /* fp16/bf16 values as numpy rounds them: within half a unit of the originals */
    CHECK_CLOSE("f16 rounding", h_ref, hv, 4, 6e-8, 1.0 / 2048);
    CHECK_CLOSE("bf16 rounding", bf_ref, hv, 4, 0, 1.0 / 256);
    const char *ints[2] = {"ints", "bytes"};
    for (int k = 0; k < 2; k++) {
        char p[1024];
        snprintf(p, sizeof p, "%s/np/%s.npy", t, ints[k]);
        int32_t *d = NULL;
        int is_int, nd;
        long shape[4];
        long n = lmp_test_read_npy(p, (void **)&d, &is_int, shape, &nd);
        CHECK(is_int && n == (k ? 5 : 3));
        for (long i = 0; d && i < n; i++) CHECK(d[i] == (k ? (int32_t)u[i] : iv[i]));
        free(d);
    }
}

/* Writes the llama2.c model as HF safetensors (rows un-permuted to rotate-half) with our
 * writer, next to the script's config/tokenizer, and loads it back unchanged. */
TEST(hf_safetensors_writer_roundtrip)
{
    need_numpy();
    const char *t = lmp_test_tmpdir();
    char dir[600], args[1400];
    snprintf(dir, sizeof dir, "%s/rt", t);
    snprintf(args, sizeof args, "stories models %s F32 1 && rm %s/model.safetensors", dir, dir);
    REQUIRE(make_hf(args) == 0);
    struct lmp_model *ref = load_llama2c(), *perm = load_llama2c();
    REQUIRE(ref && perm);
    struct lmp_err err = {{0}};
    int n = perm->n_tensors;
    struct lmp_st_wtensor *w = calloc((size_t)n, sizeof *w);
    char(*names)[128] = calloc((size_t)n, sizeof *names);
    REQUIRE(w && names);
    static const char *const map[][2] = {
        {"attn_norm.weight", "input_layernorm.weight"}, {"attn_q.weight", "self_attn.q_proj.weight"},
        {"attn_k.weight", "self_attn.k_proj.weight"},   {"attn_v.weight", "self_attn.v_proj.weight"},
        {"attn_output.weight", "self_attn.o_proj.weight"},
        {"ffn_norm.weight", "post_attention_layernorm.weight"},
        {"ffn_gate.weight", "mlp.gate_proj.weight"},    {"ffn_up.weight", "mlp.up_proj.weight"},
        {"ffn_down.weight", "mlp.down_proj.weight"}};
    for (int i = 0; i < n; i++) {
        struct lmp_tensor *x = &perm->tensors[i];
        int l = -1, off = 0;
        if (strcmp(x->name, "token_embd.weight") == 0)
            snprintf(names[i], 128, "model.embed_tokens.weight");
        else if (strcmp(x->name, "output_norm.weight") == 0)
            snprintf(names[i], 128, "model.norm.weight");
        else if (sscanf(x->name, "blk.%d.%n", &l, &off) == 1 && off > 0) {
            for (size_t k = 0; k < sizeof map / sizeof map[0]; k++)
                if (strcmp(x->name + off, map[k][0]) == 0)
                    snprintf(names[i], 128, "model.layers.%d.%s", l, map[k][1]);
            int nh = perm->cfg.layer[l].n_heads, nkv = perm->cfg.layer[l].n_kv_heads;
            if (strcmp(x->name + off, "attn_q.weight") == 0)
                CHECK(lmp_rope_permute_rows(x, nh, perm->cfg.head_dim, 0, &err) == LMP_OK);
            if (strcmp(x->name + off, "attn_k.weight") == 0)
                CHECK(lmp_rope_permute_rows(x, nkv, perm->cfg.head_dim, 0, &err) == LMP_OK);
        }
        CHECK_MSG(names[i][0], "no HF name for %s", x->name);
        w[i] = (struct lmp_st_wtensor){names[i], LMP_TYPE_F32, x->n_dims, {x->shape[0], x->shape[1]},
                                       x->data};
    }
    char path[700];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK_MSG(lmp_st_write(path, w, n, NULL, 0, &err) == LMP_OK, "%s", err.msg);
    struct lmp_model *m = load_hf_ok(dir);
    if (m) check_same_tensors(m, ref, 0);
    lmp_model_free(m);
    lmp_model_free(ref);
    lmp_model_free(perm);
    free(w);
    free(names);
}

/* tests/bad/safetensors/: hostile headers written by make_hf.py badst, and any input libFuzzer
 * (tests/fuzz/fuzz_safetensors.c) ever crashed the parser with. */
TEST(hf_safetensors_bad_corpus)
{
    const char *dname = "tests/bad/safetensors";
    DIR *d = opendir(dname);
    if (!d) lmp_test_skip("no tests/bad/safetensors");
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || strstr(e->d_name, ".md")) continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dname, e->d_name);
        struct lmp_st_file f;
        struct lmp_err err = {{0}};
        enum lmp_status st = lmp_st_open(&f, p, &err);
        /* ok_*: well-formed oddities that must load; crash-*: libFuzzer finds, which must
         * just not crash; everything else must be refused */
        if (strncmp(e->d_name, "ok_", 3) == 0)
            CHECK_MSG(st == LMP_OK, "%s: %s", p, err.msg);
        else if (strncmp(e->d_name, "crash-", 6) != 0)
            CHECK_MSG(st != LMP_OK, "%s: accepted", p);
        if (st == LMP_OK) {
            float *buf = NULL;
            for (int i = 0; i < f.n_tensors; i++) {
                const struct lmp_st_tensor *x = &f.tensors[i];
                buf = realloc(buf, (size_t)x->nelem * 4 + 4);
                if (buf) (void)lmp_st_to_f32(&f, x, buf, &err);
            }
            free(buf);
        } else {
            CHECK_MSG(strstr(err.msg, e->d_name) && !strchr(err.msg, '\n'), "%s: %s", p, err.msg);
        }
        fprintf(stderr, "    %s: %s\n", e->d_name, st ? err.msg : "ok");
        lmp_st_close(&f);
        n++;
    }
    closedir(d);
    CHECK(n > 0);
}

/* ---- tokenizers against their references ------------------------------------------------ */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) {
        b[n] = 0;
        *len = (size_t)n;
    }
    return b;
}

/* Whitespace-separated ids. */
static int32_t *parse_ids(const char *s, int64_t *n)
{
    int64_t cap = 1024, k = 0;
    int32_t *a = malloc((size_t)cap * sizeof *a);
    char *end;
    while (a) {
        long v = strtol(s, &end, 10);
        if (end == s) break;
        if (k == cap) {
            int32_t *na = realloc(a, (size_t)(cap *= 2) * sizeof *a);
            if (!na) free(a);
            a = na;
            if (!a) break;
        }
        a[k++] = (int32_t)v;
        s = end;
    }
    *n = k;
    return a;
}

static int same_ids(const char *what, const int32_t *got, int64_t n, const int32_t *ref,
                    int64_t n_ref)
{
    int64_t i = 0;
    while (i < n && i < n_ref && got[i] == ref[i]) i++;
    if (i == n && i == n_ref) return 1;
    fprintf(stderr, "    %s: %lld ids, expected %lld, first difference at %lld (%d vs %d)\n", what,
            (long long)n, (long long)n_ref, (long long)i, i < n ? got[i] : -1,
            i < n_ref ? ref[i] : -1);
    return 0;
}

/* The SentencePiece-style tokenizer.json made from tok512.bin encodes tinystories eval.txt
 * to llama.cpp's ids (tests/data/stories260K/eval.ids) and decodes the greedy reference. */
TEST(hf_stories_tokenizer_matches_llamacpp)
{
    need_numpy();
    char dir[600], args[1400];
    snprintf(dir, sizeof dir, "%s/st", lmp_test_tmpdir());
    snprintf(args, sizeof args, "stories models %s F32 1", dir);
    REQUIRE(make_hf(args) == 0);
    struct lmp_model *m = load_hf_ok(dir);
    REQUIRE(m);
    struct lmp_tokenizer *t = NULL;
    struct lmp_err err = {{0}};
    CHECK_MSG(lmp_tok_create(&m->vocab, &t, &err) == LMP_OK, "create: %s", err.msg);
    REQUIRE(t);
    size_t len, rlen;
    char *text = slurp("data/tinystories/eval.txt", &len);
    char *refs = slurp("tests/data/stories260K/eval.ids", &rlen);
    REQUIRE(text && refs);
    int64_t n_ref = 0, n = 0;
    int32_t *ref = parse_ids(refs, &n_ref), *ids = NULL;
    CHECK(lmp_tok_encode(t, text, len, 0, &ids, &n, &err) == LMP_OK);
    CHECK_MSG(same_ids("eval.txt", ids, n, ref, n_ref), "eval.txt ids differ from llama.cpp's");
    free(ids);
    free(ref);
    free(refs);
    free(text);

    char *gids = slurp("tests/data/stories260K/greedy-t0-256steps.ids", &rlen);
    char *want = slurp("tests/data/stories260K/greedy-t0-256steps.txt", &len);
    REQUIRE(gids && want);
    ref = parse_ids(gids, &n_ref);
    char *got = malloc(n_ref * 64 + 1);
    size_t w = 0;
    int prev = m->vocab.bos;
    for (int64_t i = 0; ref && got && i < n_ref; i++) {
        w += lmp_tok_decode(t, prev, ref[i], got + w, 64);
        prev = ref[i];
    }
    CHECK(got && w + 1 == len && memcmp(got, want, w) == 0); /* the .txt ends with a newline */
    free(got);
    free(ref);
    free(gids);
    free(want);
    lmp_tok_free(t);
    lmp_model_free(m);
}

/* Byte-level BPE tokenizer.json files trained and run by Hugging Face tokenizers
 * (tests/data/bpe/, see tests/gen_bpe_fixtures.py), loaded through an HF directory. */
static void bpe_fixture(const char *name, int vocab_size, const char *want_regex)
{
    need_numpy();
    char dir[600], args[1400];
    snprintf(dir, sizeof dir, "%s/%s", lmp_test_tmpdir(), name);
    snprintf(args, sizeof args, "tiny %s tests/data/bpe/%s.tokenizer.json %d", dir, name,
             vocab_size);
    REQUIRE(make_hf(args) == 0);
    struct lmp_model *m = load_hf_ok(dir);
    REQUIRE(m);
    const struct lmp_vocab *v = &m->vocab;
    CHECK_EQ_INT(v->kind, LMP_TOK_BPE);
    CHECK_EQ_INT(v->n_tokens, vocab_size);
    CHECK_EQ_INT(v->add_bos, 0);
    CHECK_EQ_INT(v->add_space_prefix, 0);
    CHECK_MSG((!want_regex && !v->pre_regex) ||
                  (want_regex && v->pre_regex && strcmp(v->pre_regex, want_regex) == 0),
              "pre_regex %s", v->pre_regex ? v->pre_regex : "(null)");
    struct lmp_tokenizer *t = NULL;
    struct lmp_err err = {{0}};
    CHECK_MSG(lmp_tok_create(v, &t, &err) == LMP_OK, "create: %s", err.msg);
    REQUIRE(t);

    size_t len;
    char *js = slurp("tests/data/bpe/texts.json", &len);
    char p[256];
    snprintf(p, sizeof p, "tests/data/bpe/%s.ids.txt", name);
    char *lines = slurp(p, &len);
    REQUIRE(js && lines);
    cJSON *texts = cJSON_Parse(js);
    REQUIRE(texts);
    const cJSON *e;
    char *line = lines;
    int k = 0;
    cJSON_ArrayForEach(e, texts)
    {
        char *nl = strchr(line, '\n');
        REQUIRE(nl);
        *nl = 0;
        int64_t n_ref = 0, n = 0;
        int32_t *ref = parse_ids(line, &n_ref), *ids = NULL;
        line = nl + 1;
        CHECK(lmp_tok_encode(t, e->valuestring, strlen(e->valuestring), 0, &ids, &n, &err) ==
              LMP_OK);
        char what[64];
        snprintf(what, sizeof what, "%s text %d", name, k);
        CHECK_MSG(same_ids(what, ids, n, ref, n_ref), "%s: ids differ", what);
        free(ids);
        free(ref);
        k++;
    }
    CHECK(k >= 10);
    cJSON_Delete(texts);
    free(js);
    free(lines);

    snprintf(p, sizeof p, "tests/data/bpe/%s.eval.npy", name);
    int32_t *ref = NULL;
    int is_int, nd;
    long shape[4];
    long n_ref = lmp_test_read_npy(p, (void **)&ref, &is_int, shape, &nd);
    char *cut = slurp("tests/data/bpe/eval_bytes.txt", &len);
    char *ev = slurp("data/tinystories/eval.txt", &len);
    REQUIRE(n_ref > 0 && is_int && cut && ev);
    size_t nbytes = (size_t)atol(cut);
    REQUIRE(nbytes <= len);
    int32_t *ids = NULL;
    int64_t n = 0;
    CHECK(lmp_tok_encode(t, ev, nbytes, 0, &ids, &n, &err) == LMP_OK);
    CHECK_MSG(same_ids(p, ids, n, ref, n_ref), "%s: ids differ", p);
    free(ids);
    free(ref);
    free(cut);
    free(ev);
    lmp_tok_free(t);
    lmp_model_free(m);
}

TEST(hf_tokenizer_json_gpt2) { bpe_fixture("gpt2", 800, NULL); }
TEST(hf_tokenizer_json_llama3_padded)
{
    bpe_fixture("llama3", 832,
                "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
                "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+");
}
