/* formats/gguf_write.c and formats/gptq_st.c: GGUF and GPTQ-safetensors export, GPTQ import.
 * References: our own GGUF reader (bit-identical read-back), the PyPI package `gguf` (ggml's
 * gguf-py: tests/check_gguf_export.py dequantizes our files and re-quantizes the float
 * sources), a numpy unpacker of the AutoGPTQ layout (tests/check_gptq_export.py), and the
 * packed tensors themselves (exact codes / scales / zero points after a round trip).
 * Optional, when installed: llama.cpp (llama-cpp-python) loads the GGUF exports, tokenizes
 * like us and computes our logits; Hugging Face `tokenizers` reads our tokenizer.json. */
#include "test.h"
#include "test_rtmodel.h"
#include "test_dump.h"
#include "formats/gguf_write.h"
#include "formats/gptq_st.h"
#include "formats/model.h"
#include "formats/qpack.h"
#include "formats/safetensors.h"
#include "formats/tokenizer.h"
#include "quantize/quant.h"
#include "runtime/runtime.h"

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define STORIES "models/stories260K.bin"
/* the Python of the references: Debian's (python3-numpy; gguf / tokenizers from pip) */
#define PY "/usr/bin/python3"

static const char sample_text[] =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in "
    "the sun.  \"Mom, look!\" she said. 123 ü~\n";

static struct lmp_model *load_stories(void)
{
    struct lmp_model *m = NULL;
    struct lmp_err err;
    if (lmp_ckpt_load(STORIES, NULL, &m, &err) != LMP_OK) {
        lmp_test_fail(__FILE__, __LINE__, "load: %s", err.msg);
        return NULL;
    }
    return m;
}

/* Replaces t's data by the packed form of q (consumed; perm owned by t afterwards). */
static int install_packed(struct lmp_tensor *t, struct lmp_qtensor_out *q, int32_t *perm)
{
    int64_t rows = t->shape[0], cols = t->shape[1];
    size_t cb, pb;
    uint8_t *packed = NULL;
    struct lmp_err err;
    if (lmp_qpack_sizes(rows, cols, q->bits, q->group, &cb, &pb, &err) != LMP_OK ||
        !(packed = calloc(1, cb)) ||
        lmp_qpack_pack(q->codes, rows, cols, q->bits, packed, &err) != LMP_OK) {
        free(packed);
        free(perm);
        lmp_qtensor_out_free(q);
        return 0;
    }
    if (t->owned) free(t->data);
    t->data = packed;
    t->owned = 1;
    t->nbytes = cb;
    t->type = lmp_qpack_type(q->bits);
    t->q.bits = q->bits;
    t->q.group = q->group;
    t->q.sym = q->sym;
    t->q.scales = q->scales;
    t->q.zeros = q->zeros;
    t->q.perm = perm;
    q->scales = q->zeros = NULL;
    lmp_qtensor_out_free(q);
    return 1;
}

/* Replaces t (F32, (rows, cols)) by an RTN-quantized packed tensor; act_order != 0 stores a
 * pseudo-random column permutation (groups formed over the permuted columns). */
static int quantize_tensor(struct lmp_tensor *t, int bits, int group, int sym, unsigned long long seed,
                           int act_order)
{
    int rows = (int)t->shape[0], cols = (int)t->shape[1];
    float *W = malloc((size_t)rows * cols * 4);
    int32_t *perm = act_order ? malloc((size_t)cols * 4) : NULL;
    if (!W || (act_order && !perm)) return 0;
    for (int c = 0; c < cols; c++) {
        if (perm) perm[c] = c;
    }
    for (int c = cols - 1; perm && c > 0; c--) { /* Fisher-Yates */
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        int k = (int)((seed >> 33) % (unsigned long long)(c + 1));
        int32_t tmp = perm[c];
        perm[c] = perm[k];
        perm[k] = tmp;
    }
    const float *src = t->data;
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < cols; j++) W[(size_t)r * cols + j] = src[(size_t)r * cols + (perm ? perm[j] : j)];
    struct lmp_quant_opts o;
    lmp_quant_opts_default(&o);
    o.bits = bits;
    o.group = group;
    o.sym = sym;
    struct lmp_qtensor_out q;
    struct lmp_err err;
    if (lmp_quant_rtn_matrix(W, rows, cols, &o, &q, NULL, &err) != LMP_OK) {
        lmp_test_fail(__FILE__, __LINE__, "rtn %s: %s", t->name, err.msg);
        free(W);
        free(perm);
        return 0;
    }
    free(W);
    return install_packed(t, &q, perm);
}

/* GPTQ of t (F32) with the Hessian of random correlated inputs (a shared low-rank part plus
 * noise, as real activations have), MSE clipping and the scale refit, natural order. */
static int gptq_tensor(struct lmp_tensor *t, int bits, int group, int sym, int gguf_exact,
                       unsigned long long seed)
{
    int rows = (int)t->shape[0], cols = (int)t->shape[1], n = 4 * cols, rank = 8;
    float *X = malloc((size_t)n * cols * 4), *H = calloc((size_t)cols * cols, 4);
    float *B = malloc((size_t)rank * cols * 4);
    if (!X || !H || !B) {
        free(X);
        free(H);
        free(B);
        return 0;
    }
    for (int k = 0; k < rank * cols; k++) B[k] = lmp_test_randf(&seed);
    for (int i = 0; i < n; i++)
        for (int c = 0; c < cols; c++) {
            float v = 0.3f * lmp_test_randf(&seed);
            for (int k = 0; k < rank; k++) v += B[k * cols + c] * (float)((i * 7 + k * 3) % 5 - 2);
            X[(size_t)i * cols + c] = v;
        }
    int64_t ns = 0;
    struct lmp_err err;
    struct lmp_quant_opts o;
    lmp_quant_opts_default(&o);
    o.bits = bits;
    o.group = group;
    o.sym = sym;
    o.mse = 1;
    o.refine = 1;
    o.gguf_exact = gguf_exact;
    struct lmp_qtensor_out q;
    int ok = lmp_quant_hessian_accumulate(H, cols, X, n, &ns, &err) == LMP_OK &&
             lmp_quant_gptq_matrix(t->data, rows, cols, H, &o, &q, NULL, &err) == LMP_OK;
    if (!ok) lmp_test_fail(__FILE__, __LINE__, "gptq %s: %s", t->name, err.msg);
    free(X);
    free(H);
    free(B);
    return ok && install_packed(t, &q, NULL);
}

/* A random model with widths that are multiples of 32 and the vocabulary of `stories`;
 * every linear RTN-quantized (bits 0: left in floats). ls: per-layer shapes. */
static struct lmp_model *packed_model(const struct lmp_model *stories, int nl, const struct tl *ls,
                                      int bits, int group, int sym, int act_order, int tied,
                                      unsigned long long seed)
{
    struct lmp_model *m = build_model(64, 16, stories->cfg.vocab, nl, ls, 0, tied, 10000.0f, 1e-5f,
                                      256, NULL, seed);
    struct lmp_err err;
    if (!m) return NULL;
    if (lmp_vocab_copy(&m->vocab, &stories->vocab, &err) != LMP_OK) {
        lmp_test_fail(__FILE__, __LINE__, "vocab: %s", err.msg);
        lmp_model_free(m);
        return NULL;
    }
    snprintf(m->cfg.name, sizeof m->cfg.name, "export-test");
    for (int l = 0; bits && l < nl; l++) {
        struct lmp_layer *L = &m->layers[l];
        struct lmp_tensor *ts[7] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
        for (int k = 0; k < 7; k++)
            if (!quantize_tensor(ts[k], bits, group, sym, seed + 7 * (unsigned)l + (unsigned)k,
                                 act_order)) {
                lmp_model_free(m);
                return NULL;
            }
    }
    return m;
}

/* A random float model of width 256 (rows fit K-quant super-blocks) with stories' vocab. */
static struct lmp_model *wide_model(const struct lmp_model *stories, unsigned long long seed)
{
    static const struct tl ls[2] = {{8, 4, 512}, {8, 2, 256}};
    struct lmp_model *m = build_model(256, 32, stories->cfg.vocab, 2, ls, 0, 1, 10000.0f, 1e-5f,
                                      256, NULL, seed);
    struct lmp_err err;
    if (m && lmp_vocab_copy(&m->vocab, &stories->vocab, &err) != LMP_OK) {
        lmp_model_free(m);
        return NULL;
    }
    return m;
}

/* packed_model's random model, every linear quantized by GPTQ (gptq_tensor). */
static struct lmp_model *gptq_model(const struct lmp_model *stories, int nl, const struct tl *ls,
                                    int bits, int group, int sym, int gguf_exact,
                                    unsigned long long seed)
{
    struct lmp_model *m = packed_model(stories, nl, ls, 0, 0, 0, 0, 1, seed);
    for (int l = 0; m && l < nl; l++) {
        struct lmp_layer *L = &m->layers[l];
        struct lmp_tensor *ts[7] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
        for (int k = 0; k < 7; k++)
            if (!gptq_tensor(ts[k], bits, group, sym, gguf_exact, seed + 7 * (unsigned)l + (unsigned)k)) {
                lmp_model_free(m);
                return NULL;
            }
    }
    return m;
}

/* The sample text and the first 4 kB of the TinyStories eval text (cut at a line end). */
static size_t test_text(char *text)
{
    size_t len = strlen(sample_text);
    memcpy(text, sample_text, len);
    FILE *f = fopen("data/tinystories/eval.txt", "rb");
    if (f) {
        size_t n = fread(text + len, 1, 4096, f);
        fclose(f);
        while (n > 0 && text[len + n - 1] != '\n') n--;
        len += n;
    }
    return len;
}

/* The test text encoded (BOS as the vocabulary says). */
static int32_t *encode(const struct lmp_vocab *v, int64_t *n)
{
    struct lmp_tokenizer *tk = NULL;
    struct lmp_err err;
    int32_t *ids = NULL;
    char text[4096 + sizeof sample_text];
    size_t len = test_text(text);
    if (lmp_tok_create(v, &tk, &err) != LMP_OK) return NULL;
    if (lmp_tok_encode(tk, text, len, v->add_bos, &ids, n, &err) != LMP_OK) ids = NULL;
    lmp_tok_free(tk);
    return ids;
}

/* When Hugging Face `tokenizers` is installed: our tokenizer.json encodes the test text to
 * our ids (optional: prints a note otherwise). */
static void check_hf_tokenizers(const char *dir, const struct lmp_vocab *v)
{
    if (lmp_test_sh(NULL, 0, PY " -c 'import tokenizers' >/dev/null 2>&1") != 0) {
        printf("  (tokenizers not installed: %s/tokenizer.json not run through it)\n", dir);
        return;
    }
    char tpath[700], ipath[700], text[4096 + sizeof sample_text], out[1024];
    snprintf(tpath, sizeof tpath, "%s.text", dir);
    snprintf(ipath, sizeof ipath, "%s.ids", dir);
    size_t len = test_text(text);
    int64_t n = 0;
    int32_t *ids = encode(v, &n);
    FILE *ft = fopen(tpath, "wb"), *fi = fopen(ipath, "w");
    REQUIRE(ids && ft && fi);
    fwrite(text, 1, len, ft);
    for (int64_t i = 0; i < n; i++) fprintf(fi, "%d ", (int)ids[i]);
    fclose(ft);
    fclose(fi);
    free(ids);
    int rc = lmp_test_sh(out, sizeof out, PY " tests/check_gptq_export.py --tokenizer %s %s %s",
                         dir, tpath, ipath);
    printf("%s", out);
    CHECK_MSG(rc == 0, "tokenizer.json of %s", dir);
}

/* Same config and same encoding of the sample text. */
static void check_same_config_tokens(const struct lmp_model *a, const struct lmp_model *b)
{
    const struct lmp_config *x = &a->cfg, *y = &b->cfg;
    CHECK_EQ_INT(y->dim, x->dim);
    CHECK_EQ_INT(y->n_layers, x->n_layers);
    CHECK_EQ_INT(y->head_dim, x->head_dim);
    CHECK_EQ_INT(y->vocab, x->vocab);
    CHECK_EQ_INT(y->max_ctx, x->max_ctx);
    CHECK_EQ_INT(y->tied, x->tied);
    CHECK(y->rope_theta == x->rope_theta);
    CHECK(y->norm_eps == x->norm_eps);
    for (int l = 0; l < x->n_layers && l < y->n_layers; l++) {
        CHECK_EQ_INT(y->layer[l].n_heads, x->layer[l].n_heads);
        CHECK_EQ_INT(y->layer[l].n_kv_heads, x->layer[l].n_kv_heads);
        CHECK_EQ_INT(y->layer[l].ffn, x->layer[l].ffn);
    }
    CHECK_EQ_INT(b->vocab.bos, a->vocab.bos);
    CHECK_EQ_INT(b->vocab.eos, a->vocab.eos);
    CHECK_EQ_INT(b->vocab.unk, a->vocab.unk);
    CHECK_EQ_INT(b->vocab.add_bos, a->vocab.add_bos);
    CHECK_EQ_INT(b->vocab.add_space_prefix, a->vocab.add_space_prefix);
    int64_t na = 0, nb = 0;
    int32_t *ia = encode(&a->vocab, &na), *ib = encode(&b->vocab, &nb);
    REQUIRE(ia && ib);
    CHECK_EQ_INT(nb, na);
    CHECK(na == nb && memcmp(ia, ib, (size_t)na * 4) == 0);
    free(ia);
    free(ib);
}

static int have_gguf_py(void)
{
    return lmp_test_sh(NULL, 0, PY " -c 'import gguf, numpy' >/dev/null 2>&1") == 0;
}

/* ---- GGUF --------------------------------------------------------------------------- */

TEST(export_gguf_f32_roundtrip)
{
    struct lmp_model *m = load_stories(), *g = NULL;
    REQUIRE(m);
    char path[600];
    snprintf(path, sizeof path, "%s/s.gguf", lmp_test_tmpdir());
    struct lmp_err err;
    struct lmp_gguf_write_opts o = {.type = -1};
    struct lmp_gguf_report rep;
    CHECK_MSG(lmp_ckpt_save_gguf(m, path, &o, &rep, &err) == LMP_OK, "%s", err.msg);
    CHECK_EQ_INT(rep.file_type, 0);
    lmp_gguf_report_free(&rep);
    CHECK_MSG(lmp_ckpt_load_gguf(path, &g, &err) == LMP_OK, "%s", err.msg);
    REQUIRE(g);
    CHECK_EQ_INT(g->n_tensors, m->n_tensors); /* tied: no output.weight either side */
    for (int i = 0; i < m->n_tensors; i++) {
        const struct lmp_tensor *t = &m->tensors[i], *u = lmp_model_find(g, t->name);
        CHECK_MSG(u && u->type == LMP_TYPE_F32 && t->type == LMP_TYPE_F32 && u->nbytes == t->nbytes &&
                      memcmp(u->data, t->data, t->nbytes) == 0,
                  "%s not bit-identical", t->name);
    }
    check_same_config_tokens(m, g);
    /* the vocabulary itself: U+2581 for spaces, BOS/EOS without llama2.c's newlines */
    const struct lmp_vocab *a = &m->vocab, *b = &g->vocab;
    REQUIRE(a->n_tokens == b->n_tokens);
    for (int i = 0; i < a->n_tokens; i++) {
        uint32_t la, lb;
        const char *sa = lmp_vocab_token(a, i, &la), *sb = lmp_vocab_token(b, i, &lb);
        char want[64];
        size_t k = 0;
        for (uint32_t j = 0; j < la && k + 3 < sizeof want; j++) {
            if (sa[j] == ' ') {
                memcpy(want + k, "\xe2\x96\x81", 3);
                k += 3;
            } else if (sa[j] != '\n' || a->types[i] != LMP_TOKT_CONTROL) {
                want[k++] = sa[j];
            }
        }
        CHECK_MSG(k == lb && memcmp(want, sb, k) == 0, "token %d differs", i);
        CHECK_MSG(memcmp(&a->scores[i], &b->scores[i], 4) == 0, "score %d", i);
        CHECK_MSG(a->types[i] == b->types[i], "type %d", i);
    }
    /* and it is the vocabulary ggml-org's own conversion of stories260K holds */
    struct lmp_model *ref = NULL;
    REQUIRE(lmp_ckpt_load_gguf("tests/data/stories260K/stories260K.gguf", &ref, &err) == LMP_OK);
    const struct lmp_vocab *c = &ref->vocab;
    CHECK(c->n_tokens == b->n_tokens && memcmp(c->off, b->off, (size_t)(b->n_tokens + 1) * 4) == 0 &&
          memcmp(c->text, b->text, b->off[b->n_tokens]) == 0 &&
          memcmp(c->scores, b->scores, (size_t)b->n_tokens * 4) == 0 &&
          memcmp(c->types, b->types, (size_t)b->n_tokens * 4) == 0);
    CHECK(c->bos == b->bos && c->eos == b->eos && c->unk == b->unk && c->add_bos == b->add_bos &&
          c->add_space_prefix == b->add_space_prefix);
    lmp_model_free(ref);
    lmp_model_free(g);
    lmp_model_free(m);
}

/* Our quantizer applied row by row, then our dequantizer: what a reader must find. */
static float *expected_gguf(const struct lmp_tensor *t, int type)
{
    int64_t rows = t->n_dims == 2 ? t->shape[0] : 1, cols = t->n_dims == 2 ? t->shape[1] : t->shape[0];
    if (t->n_dims == 1) type = LMP_GGML_TYPE_F32;
    if ((type == LMP_GGML_TYPE_Q4_K || type == LMP_GGML_TYPE_Q6_K) && cols % 256)
        type = LMP_GGML_TYPE_Q8_0; /* the documented fallbacks */
    if ((type == LMP_GGML_TYPE_Q8_0 || type == LMP_GGML_TYPE_Q4_0 || type == LMP_GGML_TYPE_Q4_1) &&
        cols % 32)
        type = LMP_GGML_TYPE_F16;
    float *x = tensor_values(t), *y = malloc((size_t)(rows * cols) * 4);
    unsigned char *blk = malloc(lmp_gguf_nbytes(type, cols));
    for (int64_t r = 0; x && y && blk && r < rows; r++) {
        lmp_gguf_quantize(type, x + r * cols, blk, cols);
        lmp_gguf_dequant(type, blk, y + r * cols, cols);
    }
    free(x);
    free(blk);
    return y;
}

TEST(export_gguf_types_readback)
{
    struct lmp_model *m = load_stories();
    REQUIRE(m);
    const int types[] = {LMP_GGML_TYPE_F16, LMP_GGML_TYPE_BF16, LMP_GGML_TYPE_Q8_0,
                         LMP_GGML_TYPE_Q4_0, LMP_GGML_TYPE_Q4_1};
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        char path[600];
        snprintf(path, sizeof path, "%s/s_%s.gguf", lmp_test_tmpdir(), lmp_gguf_type_name(types[k]));
        struct lmp_err err;
        struct lmp_gguf_write_opts o = {.type = types[k]};
        struct lmp_gguf_report rep;
        struct lmp_model *g = NULL;
        REQUIRE(lmp_ckpt_save_gguf(m, path, &o, &rep, &err) == LMP_OK);
        int fb = 0;
        for (int i = 0; i < rep.n; i++) fb += rep.t[i].fallback;
        CHECK_EQ_INT(fb, types[k] == LMP_GGML_TYPE_F16 || types[k] == LMP_GGML_TYPE_BF16 ? 0 : 5);
        lmp_gguf_report_free(&rep);
        REQUIRE(lmp_ckpt_load_gguf(path, &g, &err) == LMP_OK);
        for (int i = 0; i < m->n_tensors; i++) {
            const struct lmp_tensor *t = &m->tensors[i], *u = lmp_model_find(g, t->name);
            float *want = expected_gguf(t, types[k]);
            CHECK_MSG(u && want && memcmp(u->data, want, (size_t)lmp_tensor_nelem(t) * 4) == 0,
                      "%s: %s differs from our quantizer + dequantizer", path, t->name);
            free(want);
        }
        check_same_config_tokens(m, g);
        lmp_model_free(g);
    }
    lmp_model_free(m);
}

/* For a packed model (consumed) exported to GGUF, how close the read-back is to our weights. */
static void gguf_model_case(struct lmp_model *m, const char *tag, int req, int want_type,
                            enum lmp_gguf_how want_how, double *max_err, int64_t *blocks,
                            int64_t *exact_blocks)
{
    REQUIRE(m);
    char path[600];
    snprintf(path, sizeof path, "%s/%s.gguf", lmp_test_tmpdir(), tag);
    struct lmp_err err;
    struct lmp_gguf_write_opts o = {.type = req};
    struct lmp_gguf_report rep;
    struct lmp_model *g = NULL;
    CHECK_MSG(lmp_ckpt_save_gguf(m, path, &o, &rep, &err) == LMP_OK, "%s", err.msg);
    CHECK_MSG(lmp_ckpt_load_gguf(path, &g, &err) == LMP_OK, "%s", err.msg);
    REQUIRE(g);
    *max_err = 0;
    *blocks = *exact_blocks = 0;
    for (int i = 0; i < rep.n; i++) {
        const struct lmp_gguf_tensor_report *r = &rep.t[i];
        const struct lmp_tensor *t = lmp_model_find(m, r->name), *u = lmp_model_find(g, r->name);
        REQUIRE(t && u);
        if (!lmp_type_is_packed(t->type)) continue;
        int ok_kind = r->ggml_type == want_type && r->how == want_how;
        /* an asymmetric 4-bit tensor whose blocks all fit Q4_0's grid goes there (exact) */
        if (want_type == LMP_GGML_TYPE_Q4_1 && req < 0)
            ok_kind |= r->ggml_type == LMP_GGML_TYPE_Q4_0 && r->how == LMP_GGUF_EXACT;
        /* near: a tensor may happen to have every block exact */
        if (want_how == LMP_GGUF_NEAR) ok_kind |= r->ggml_type == want_type && r->how == LMP_GGUF_EXACT;
        CHECK_MSG(ok_kind, "%s: %s: %s how %d, want %s how %d", tag, r->name,
                  lmp_gguf_type_name(r->ggml_type), r->how, lmp_gguf_type_name(want_type), want_how);
        float *x = tensor_values(t);
        double e = 0;
        int64_t n = lmp_tensor_nelem(t);
        for (int64_t k = 0; x && k < n; k++) {
            double d = fabs((double)((float *)u->data)[k] - (double)x[k]);
            if (d > e) e = d;
        }
        free(x);
        CHECK_MSG(e == r->max_err, "%s: report says max error %g, read-back %g", r->name, r->max_err, e);
        if (r->how == LMP_GGUF_EXACT) CHECK_MSG(e == 0, "%s: exact but differs by %g", r->name, e);
        if (e > *max_err) *max_err = e;
        *blocks += r->n_blocks;
        *exact_blocks += r->n_exact;
    }
    lmp_gguf_report_free(&rep);
    lmp_model_free(g);
    lmp_model_free(m);
}

static void gguf_packed_case(const struct lmp_model *stories, int bits, int group, int sym,
                             int act_order, int req, int want_type, enum lmp_gguf_how want_how,
                             double *max_err, int64_t *blocks, int64_t *exact_blocks)
{
    static const struct tl ls[2] = {{4, 2, 96}, {4, 2, 96}};
    char tag[64];
    snprintf(tag, sizeof tag, "p%d_%d_%d_%d_%d", bits, group, sym, act_order, req);
    gguf_model_case(packed_model(stories, 2, ls, bits, group, sym, act_order, 1, 77), tag, req,
                    want_type, want_how, max_err, blocks, exact_blocks);
}

/* Is v exactly an IEEE half (normal or subnormal, finite)? Computed in double arithmetic, apart
 * from the fp16 conversion code under test. */
static int is_half(double v)
{
    v = fabs(v);
    if (v == 0) return 1;
    if (v > 65504.0) return 0;
    if (v < 0x1p-14) return v / 0x1p-24 == floor(v / 0x1p-24); /* subnormal: k * 2^-24 */
    int e;
    double f = frexp(v, &e); /* v = f 2^e, f in [0.5, 1): 11 significant bits */
    return ldexp(f, 11) == floor(ldexp(f, 11));
}

static int q41_exact_scale(uint16_t h, int z)
{
    double s = lmp_f16_to_f32(h);
    return is_half(z * s) || is_half((15 - z) * s);
}

/* lmp_quant_q41_scale: the nearest fp16 scale with an fp16-exact Q4_1 minimum, for every
 * normal fp16 scale up to 2048 (above, 15 * scale may not fit fp16 at all) and zero point. */
TEST(quant_q41_scale)
{
    int worst = 0, moved = 0, total = 0;
    for (int z = 0; z <= 15; z++)
        for (uint32_t h = 0x0400; h < 0x6800; h++) {
            uint16_t r = lmp_quant_q41_scale((uint16_t)h, (float)z, 15);
            total++;
            if (!q41_exact_scale(r, z)) {
                CHECK_MSG(0, "z %d scale 0x%04x -> 0x%04x: not exact", z, h, r);
                return;
            }
            int d = r > h ? (int)(r - h) : (int)(h - r);
            if (d > worst) worst = d;
            moved += d != 0;
            /* nothing nearer qualifies */
            double s = lmp_f16_to_f32((uint16_t)h), dr = fabs(lmp_f16_to_f32(r) - s);
            for (int k = -d + 1; k < d; k++)
                if (q41_exact_scale((uint16_t)(h + k), z) &&
                    fabs(lmp_f16_to_f32((uint16_t)(h + k)) - s) < dr) {
                    CHECK_MSG(0, "z %d scale 0x%04x: 0x%04x is nearer than 0x%04x", z, h, h + k, r);
                    return;
                }
        }
    printf("  %d of %d (scale, zero) pairs moved, at most %d ulp\n", moved, total, worst);
    CHECK(worst <= 8);
    /* symmetric / other widths and odd inputs are left alone */
    CHECK_EQ_INT(lmp_quant_q41_scale(0x3c01, 5.0f, 7), 0x3c01);
    CHECK_EQ_INT(lmp_quant_q41_scale(0x3c01, 5.5f, 15), 0x3c01);
    CHECK_EQ_INT(lmp_quant_q41_scale(0x7c00, 5.0f, 15), 0x7c00);
}

TEST(export_gguf_gptq_mapping)
{
    struct lmp_model *s = load_stories();
    REQUIRE(s);
    double e;
    int64_t nb, ne;
    /* symmetric grids map exactly: 4-bit -> Q4_0, 3-bit -> Q4_0 (codes shifted), 8-bit -> Q8_0 */
    gguf_packed_case(s, 4, 32, 1, 0, -1, LMP_GGML_TYPE_Q4_0, LMP_GGUF_EXACT, &e, &nb, &ne);
    CHECK(e == 0);
    gguf_packed_case(s, 3, 32, 1, 0, -1, LMP_GGML_TYPE_Q4_0, LMP_GGUF_EXACT, &e, &nb, &ne);
    gguf_packed_case(s, 8, 32, 1, 0, -1, LMP_GGML_TYPE_Q8_0, LMP_GGUF_EXACT, &e, &nb, &ne);
    gguf_packed_case(s, 4, 64, 1, 0, -1, LMP_GGML_TYPE_Q4_0, LMP_GGUF_EXACT, &e, &nb, &ne);
    /* any <= 4-bit asymmetric grid is exact in Q8_0 when asked for */
    gguf_packed_case(s, 4, 32, 0, 0, LMP_GGML_TYPE_Q8_0, LMP_GGML_TYPE_Q8_0, LMP_GGUF_EXACT, &e, &nb, &ne);
    /* 4-bit asymmetric group 32 -> Q4_1: codes and scales exact; the block minimum m = -z*s is
     * exact in fp16 for some code assignment in most blocks, else rounded (measured) */
    gguf_packed_case(s, 4, 32, 0, 0, -1, LMP_GGML_TYPE_Q4_1, LMP_GGUF_NEAR, &e, &nb, &ne);
    printf("  4-bit asym g32 -> Q4_1: %lld of %lld blocks exact, max error %.3g\n", (long long)ne,
           (long long)nb, e);
    CHECK(nb > 0 && ne > nb / 2 && e > 0 && e < 1e-3);
    /* GPTQ (mse + refit) 4-bit asym g32: near without gguf_exact, exact with it */
    static const struct tl ls2[2] = {{4, 2, 96}, {4, 2, 96}};
    gguf_model_case(gptq_model(s, 2, ls2, 4, 32, 0, 0, 78), "gptq_w4g32", -1, LMP_GGML_TYPE_Q4_1,
                    LMP_GGUF_NEAR, &e, &nb, &ne);
    printf("  GPTQ 4-bit asym g32 -> Q4_1: %lld of %lld blocks exact, max error %.3g\n",
           (long long)ne, (long long)nb, e);
    gguf_model_case(gptq_model(s, 2, ls2, 4, 32, 0, 1, 78), "gptq_w4g32_exact", -1,
                    LMP_GGML_TYPE_Q4_1, LMP_GGUF_EXACT, &e, &nb, &ne);
    CHECK_MSG(e == 0 && nb > 0 && ne == nb, "gguf_exact: %lld of %lld blocks, max error %g",
              (long long)ne, (long long)nb, e);
    gguf_model_case(gptq_model(s, 2, ls2, 4, 64, 0, 1, 79), "gptq_w4g64_exact", LMP_GGML_TYPE_Q4_1,
                    LMP_GGML_TYPE_Q4_1, LMP_GGUF_EXACT, &e, &nb, &ne);
    CHECK(e == 0 && ne == nb);
    /* 2-bit codes always fit Q4_0's grid, shifted: exact */
    gguf_packed_case(s, 2, 32, 0, 0, -1, LMP_GGML_TYPE_Q4_0, LMP_GGUF_EXACT, &e, &nb, &ne);
    gguf_packed_case(s, 2, 32, 0, 0, LMP_GGML_TYPE_Q4_1, LMP_GGML_TYPE_Q4_1, LMP_GGUF_EXACT, &e,
                     &nb, &ne);
    printf("  2-bit asym g32 -> Q4_1 (asked for): %lld of %lld blocks exact\n", (long long)ne,
           (long long)nb);
    /* no exact grid: act-order permutation, group 16, 8-bit asymmetric -> Q8_0 re-quantized */
    gguf_packed_case(s, 4, 32, 0, 1, -1, LMP_GGML_TYPE_Q8_0, LMP_GGUF_REQUANT, &e, &nb, &ne);
    CHECK(e > 0 && e < 0.01);
    gguf_packed_case(s, 4, 16, 1, 0, -1, LMP_GGML_TYPE_Q8_0, LMP_GGUF_REQUANT, &e, &nb, &ne);
    gguf_packed_case(s, 8, 32, 0, 0, -1, LMP_GGML_TYPE_Q8_0, LMP_GGUF_REQUANT, &e, &nb, &ne);
    /* explicit float types: F32 holds our dequantized weights exactly */
    gguf_packed_case(s, 4, 32, 0, 1, LMP_GGML_TYPE_F32, LMP_GGML_TYPE_F32, LMP_GGUF_EXACT, &e, &nb, &ne);
    gguf_packed_case(s, 4, 32, 1, 0, LMP_GGML_TYPE_Q4_1, LMP_GGML_TYPE_Q4_1, LMP_GGUF_EXACT, &e, &nb, &ne);
    lmp_model_free(s);
}

/* Q4_K / Q6_K from float weights: our reader finds our quantizer's values, the error is that
 * of a 4-bit / 6-bit grid, rows that are not a multiple of 256 fall back to Q8_0, packed
 * tensors are re-quantized and say so. */
TEST(export_gguf_kquants)
{
    struct lmp_model *s = load_stories();
    REQUIRE(s);
    struct lmp_model *m = wide_model(s, 5);
    REQUIRE(m);
    const int types[2] = {LMP_GGML_TYPE_Q4_K, LMP_GGML_TYPE_Q6_K};
    const double bound[2] = {0.09, 0.025}; /* relative RMS error of uniform weights */
    for (int k = 0; k < 2; k++) {
        char path[600];
        snprintf(path, sizeof path, "%s/w_%s.gguf", lmp_test_tmpdir(), lmp_gguf_type_name(types[k]));
        struct lmp_err err;
        struct lmp_gguf_write_opts o = {.type = types[k]};
        struct lmp_gguf_report rep;
        struct lmp_model *g = NULL;
        REQUIRE(lmp_ckpt_save_gguf(m, path, &o, &rep, &err) == LMP_OK);
        int nk = 0;
        for (int i = 0; i < rep.n; i++) nk += rep.t[i].ggml_type == types[k];
        CHECK_EQ_INT(nk, 1 + 2 * 7); /* token_embd and every linear */
        lmp_gguf_report_free(&rep);
        REQUIRE(lmp_ckpt_load_gguf(path, &g, &err) == LMP_OK);
        double e2 = 0, x2 = 0;
        for (int i = 0; i < m->n_tensors; i++) {
            const struct lmp_tensor *t = &m->tensors[i], *u = lmp_model_find(g, t->name);
            REQUIRE(u);
            int64_t n = lmp_tensor_nelem(t);
            float *want = expected_gguf(t, types[k]);
            CHECK_MSG(want && memcmp(u->data, want, (size_t)n * 4) == 0,
                      "%s: %s differs from our quantizer + dequantizer", path, t->name);
            free(want);
            for (int64_t j = 0; t->n_dims == 2 && j < n; j++) {
                double x = ((float *)t->data)[j], d = ((float *)u->data)[j] - x;
                e2 += d * d;
                x2 += x * x;
            }
        }
        printf("  %s: relative RMS error %.4f\n", lmp_gguf_type_name(types[k]), sqrt(e2 / x2));
        CHECK(sqrt(e2 / x2) < bound[k]);
        lmp_model_free(g);
    }
    /* stories260K: width 64, no row fits: Q8_0 (and F16 for the 172-wide rows) */
    char path[600];
    snprintf(path, sizeof path, "%s/s_q4_k.gguf", lmp_test_tmpdir());
    struct lmp_err err;
    struct lmp_gguf_write_opts o = {.type = LMP_GGML_TYPE_Q4_K};
    struct lmp_gguf_report rep;
    REQUIRE(lmp_ckpt_save_gguf(s, path, &o, &rep, &err) == LMP_OK);
    int n80 = 0, nf16 = 0;
    for (int i = 0; i < rep.n; i++) {
        n80 += rep.t[i].ggml_type == LMP_GGML_TYPE_Q8_0 && rep.t[i].fallback;
        nf16 += rep.t[i].ggml_type == LMP_GGML_TYPE_F16 && rep.t[i].fallback;
    }
    CHECK_EQ_INT(n80, 31);
    CHECK_EQ_INT(nf16, 5);
    lmp_gguf_report_free(&rep);
    lmp_model_free(m);
    lmp_model_free(s);
}

TEST(export_gguf_reference_reader)
{
    if (!have_gguf_py()) lmp_test_skip("python3 package gguf not installed (/usr/bin/python3 -m pip install gguf; .ci/run does)");
    struct lmp_model *s = load_stories();
    REQUIRE(s);
    const char *tmp = lmp_test_tmpdir();
    char cmd[8192], src[600], *p = cmd;
    snprintf(src, sizeof src, "%s/src", tmp);
    REQUIRE(dump_model(s, src));
    p += snprintf(p, 64, PY " tests/check_gguf_export.py");
    /* float sources in every type: dequantized values and the bytes of the quantizers */
    const char *names[] = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"};
    for (int k = 0; k < 6; k++) {
        char path[600], exp[600];
        snprintf(path, sizeof path, "%s/s_%s.gguf", tmp, names[k]);
        snprintf(exp, sizeof exp, "%s/exp_%s", tmp, names[k]);
        struct lmp_err err;
        struct lmp_gguf_write_opts o = {.type = lmp_gguf_type_from_name(names[k])};
        struct lmp_model *g = NULL;
        REQUIRE(lmp_ckpt_save_gguf(s, path, &o, NULL, &err) == LMP_OK);
        REQUIRE(lmp_ckpt_load_gguf(path, &g, &err) == LMP_OK);
        REQUIRE(dump_model(g, exp));
        lmp_model_free(g);
        p += snprintf(p, 2000, " %s:%s:src=%s", path, exp, src);
    }
    /* K-quants (a width-256 model): gguf-py's dequantizer against ours */
    struct lmp_model *w = wide_model(s, 6);
    REQUIRE(w);
    const char *knames[] = {"q4_k", "q6_k"};
    for (int k = 0; k < 2; k++) {
        char path[600], exp[600];
        snprintf(path, sizeof path, "%s/w_%s.gguf", tmp, knames[k]);
        snprintf(exp, sizeof exp, "%s/wexp_%s", tmp, knames[k]);
        struct lmp_err err;
        struct lmp_gguf_write_opts o = {.type = lmp_gguf_type_from_name(knames[k])};
        struct lmp_model *g = NULL;
        REQUIRE(lmp_ckpt_save_gguf(w, path, &o, NULL, &err) == LMP_OK);
        REQUIRE(lmp_ckpt_load_gguf(path, &g, &err) == LMP_OK);
        REQUIRE(dump_model(g, exp));
        lmp_model_free(g);
        p += snprintf(p, 2000, " %s:%s", path, exp);
    }
    lmp_model_free(w);
    /* packed models, per-layer shapes (a pruned model) and an untied head: our dequantized
     * weights are the expectation where the report says exact, else what our reader finds
     * (itself checked against our weights in export_gguf_gptq_mapping); gguf-py's distance
     * to our weights must equal the report's */
    /* k = 3: GPTQ 4-bit asymmetric g32 with gguf_exact: Q4_1 holds our weights exactly */
    static const struct tl ls[3] = {{4, 2, 96}, {2, 1, 64}, {2, 2, 32}};
    const int cfgs[4][4] = {{4, 32, 0, 0}, {4, 32, 1, 0}, {3, 64, 0, 1}, {4, 32, 0, 0}}; /* bits group sym act */
    double rep_err[4] = {0, 0, 0, 0};
    for (int k = 0; k < 4; k++) {
        struct lmp_model *m = k == 3 ? gptq_model(s, 3, ls, 4, 32, 0, 1, 8)
                                     : packed_model(s, 3, ls, cfgs[k][0], cfgs[k][1], cfgs[k][2],
                                                    cfgs[k][3], k != 1, 5 + (unsigned)k);
        REQUIRE(m);
        char path[600], exp[600], ours[600];
        snprintf(path, sizeof path, "%s/p%d.gguf", tmp, k);
        snprintf(exp, sizeof exp, "%s/pexp%d", tmp, k);
        snprintf(ours, sizeof ours, "%s/pours%d", tmp, k);
        struct lmp_err err;
        struct lmp_gguf_write_opts o = {.type = -1};
        struct lmp_gguf_report rep;
        REQUIRE(lmp_ckpt_save_gguf(m, path, &o, &rep, &err) == LMP_OK);
        int exact = 1, n_q41 = 0;
        for (int i = 0; i < rep.n; i++) {
            exact &= rep.t[i].how == LMP_GGUF_EXACT || !rep.t[i].packed;
            n_q41 += rep.t[i].ggml_type == LMP_GGML_TYPE_Q4_1;
            if (rep.t[i].max_err > rep_err[k]) rep_err[k] = rep.t[i].max_err;
        }
        lmp_gguf_report_free(&rep);
        REQUIRE(dump_model(m, ours));
        if (exact) {
            REQUIRE(dump_model(m, exp));
        } else {
            struct lmp_model *g = NULL;
            REQUIRE(lmp_ckpt_load_gguf(path, &g, &err) == LMP_OK);
            REQUIRE(dump_model(g, exp));
            lmp_model_free(g);
        }
        CHECK_EQ_INT(exact, k == 1 || k == 3);
        if (k == 3) CHECK_MSG(n_q41 > 0, "the GPTQ model has no Q4_1 tensor");
        p += snprintf(p, 2000, " %s:%s:ours=%s", path, exp, ours);
        lmp_model_free(m);
    }
    char out[8192];
    int rc = lmp_test_sh(out, sizeof out, "%s", cmd);
    printf("%s", out);
    CHECK_MSG(rc == 0, "check_gguf_export.py failed");
    CHECK_MSG(strstr(out, "Q4_K=15") && strstr(out, "Q6_K=15"), "K-quant files not checked");
    for (int k = 0; k < 4 && rc == 0; k++) {
        char key[64];
        snprintf(key, sizeof key, "p%d.gguf against lmpress's weights: maxerr=", k);
        const char *at = strstr(out, key);
        double e = -1;
        CHECK_MSG(at && sscanf(at + strlen(key), "%lf", &e) == 1, "no distance for p%d", k);
        CHECK_MSG(fabs(e - rep_err[k]) <= 1e-9 * (1 + rep_err[k]),
                  "p%d: gguf-py finds max error %.9g, our report %.9g", k, e, rep_err[k]);
    }
    lmp_model_free(s);
}

/* Our runtime's logits for tokens (n) of model m, written as float32 .npy [n, vocab]. */
static int write_logits(const struct lmp_model *m, const int32_t *tokens, int n, const char *path)
{
    struct lmp_rt_state *st = NULL;
    struct lmp_err err;
    float *lg = malloc((size_t)n * (size_t)m->cfg.vocab * 4);
    int ok = lg && lmp_rt_state_create(m, n, n, NULL, &st, &err) == LMP_OK &&
             lmp_rt_forward(st, tokens, n, 0, lg, NULL, &err) == LMP_OK &&
             write_npy(path, lg, n, m->cfg.vocab);
    lmp_rt_state_free(st);
    free(lg);
    return ok;
}

/* When llama-cpp-python is installed: llama.cpp loads our exports, tokenizes like us, and
 * (F32 exports, where the weights are ours exactly) computes our runtime's logits. */
static void llamacpp_case(const struct lmp_model *m, const char *name, int type, double tol)
{
    const char *tmp = lmp_test_tmpdir();
    char path[600], tpath[600], ipath[600], kpath[600], lpath[600], out[2048];
    snprintf(path, sizeof path, "%s/%s.gguf", tmp, name);
    snprintf(tpath, sizeof tpath, "%s/%s.text", tmp, name);
    snprintf(ipath, sizeof ipath, "%s/%s.ids", tmp, name);
    snprintf(kpath, sizeof kpath, "%s/%s.tokens", tmp, name);
    snprintf(lpath, sizeof lpath, "%s/%s.logits.npy", tmp, name);
    struct lmp_err err;
    struct lmp_gguf_write_opts o = {.type = type};
    REQUIRE(lmp_ckpt_save_gguf(m, path, &o, NULL, &err) == LMP_OK);
    char text[4096 + sizeof sample_text];
    size_t len = test_text(text);
    int64_t n = 0;
    int32_t *ids = encode(&m->vocab, &n);
    FILE *ft = fopen(tpath, "wb"), *fi = fopen(ipath, "w"), *fk = fopen(kpath, "w");
    REQUIRE(ids && ft && fi && fk && n > 40);
    fwrite(text, 1, len, ft);
    for (int64_t i = 0; i < n; i++) fprintf(fi, "%d ", (int)ids[i]);
    for (int i = 0; i < 40; i++) fprintf(fk, "%d ", (int)ids[i]);
    fclose(ft);
    fclose(fi);
    fclose(fk);
    int with_logits = tol > 0;
    if (with_logits) REQUIRE(write_logits(m, ids, 40, lpath));
    free(ids);
    char extra[1400] = "";
    if (with_logits) snprintf(extra, sizeof extra, " %s %s %g", kpath, lpath, tol);
    int rc = lmp_test_sh(out, sizeof out, PY " tests/check_gguf_export.py --llama-cpp %s %s %s%s",
                         path, tpath, ipath, extra);
    printf("%s", out);
    CHECK_MSG(rc == 0, "llama.cpp check of %s", name);
}

TEST(export_gguf_llamacpp)
{
    if (lmp_test_sh(NULL, 0, PY " -c 'import llama_cpp, gguf' >/dev/null 2>&1") != 0)
        lmp_test_skip("llama-cpp-python not installed for " PY " (optional; .ci/run builds it)");
    struct lmp_model *s = load_stories();
    REQUIRE(s);
    llamacpp_case(s, "stories_f32", -1, 2e-3);
    llamacpp_case(s, "stories_q8_0", LMP_GGML_TYPE_Q8_0, 1.0);
    /* a pruned, packed model: "deci" with per-layer shapes; F32 holds our weights exactly,
     * the auto mapping (Q4_0 / Q4_1 blocks) loads as well */
    static const struct tl ls[3] = {{4, 2, 96}, {2, 1, 64}, {2, 2, 32}};
    struct lmp_model *m = packed_model(s, 3, ls, 4, 32, 0, 0, 0, 17);
    REQUIRE(m);
    llamacpp_case(m, "pruned_f32", LMP_GGML_TYPE_F32, 2e-3);
    llamacpp_case(m, "pruned_auto", -1, 1.0);
    lmp_model_free(m);
    lmp_model_free(s);
}

/* ---- GPTQ safetensors ------------------------------------------------------------------ */

/* exact packed codes, scales and zero points; with a perm, the same groups of columns */
static void check_packed_equal(const struct lmp_tensor *t, const struct lmp_tensor *u)
{
    CHECK_MSG(u->type == t->type && u->q.bits == t->q.bits && u->q.group == t->q.group &&
                  u->q.sym == t->q.sym && u->shape[0] == t->shape[0] && u->shape[1] == t->shape[1],
              "%s: packed parameters differ", t->name);
    if (u->type != t->type || u->shape[1] != t->shape[1] || u->q.group != t->q.group) return;
    int64_t R = t->shape[0], C = t->shape[1], ng = (C + t->q.group - 1) / t->q.group;
    CHECK_MSG(memcmp(u->q.scales, t->q.scales, (size_t)(R * ng) * 2) == 0, "%s: scales", t->name);
    CHECK_MSG(memcmp(u->q.zeros, t->q.zeros, (size_t)(R * ng) * 2) == 0, "%s: zeros", t->name);
    if (!t->q.perm) {
        CHECK_MSG(!u->q.perm && u->nbytes == t->nbytes && memcmp(u->data, t->data, t->nbytes) == 0,
                  "%s: codes", t->name);
        return;
    }
    REQUIRE(u->q.perm);
    /* storage column j of either holds an input column of group j / group */
    for (int64_t j = 0; j < C; j++) {
        int64_t jj = -1;
        for (int64_t k = 0; k < C; k++)
            if (t->q.perm[k] == u->q.perm[j]) jj = k;
        CHECK_MSG(jj / t->q.group == j / t->q.group, "%s: column %lld in another group", t->name,
                  (long long)j);
        if (jj / t->q.group != j / t->q.group) return;
        for (int64_t r = 0; r < R; r++) {
            size_t rb = lmp_qpack_row_bytes(C, t->q.bits);
            unsigned a = lmp_qpack_get((const uint8_t *)t->data + r * rb, jj, t->q.bits);
            unsigned b = lmp_qpack_get((const uint8_t *)u->data + r * rb, j, t->q.bits);
            if (a != b) {
                CHECK_MSG(a == b, "%s: code (%lld, %lld)", t->name, (long long)r, (long long)j);
                return;
            }
        }
    }
}

static void gptq_roundtrip_case(const struct lmp_model *s, int bits, int group, int sym, int act,
                                int tied, const char *tag, int want_v2)
{
    static const struct tl ls[2] = {{4, 2, 96}, {4, 2, 96}};
    struct lmp_model *m = packed_model(s, 2, ls, bits, group, sym, act, tied, 11 + (unsigned)bits);
    REQUIRE(m);
    char dir[600], exp[600];
    snprintf(dir, sizeof dir, "%s/gptq_%s", lmp_test_tmpdir(), tag);
    snprintf(exp, sizeof exp, "%s/gexp_%s", lmp_test_tmpdir(), tag);
    struct lmp_err err;
    struct lmp_gptq_export_report rep;
    CHECK_MSG(lmp_ckpt_save_gptq_dir(m, dir, NULL, &rep, &err) == LMP_OK, "%s: %s", tag, err.msg);
    CHECK_EQ_INT(rep.bits, bits);
    CHECK_EQ_INT(rep.desc_act, act);
    CHECK_EQ_INT(rep.sym, sym);
    if (want_v2 >= 0) CHECK_EQ_INT(rep.v2, want_v2);
    CHECK(lmp_gptq_is_dir(dir));
    if (bits == 4 && !sym) check_hf_tokenizers(dir, &m->vocab);
    struct lmp_model *g = NULL;
    CHECK_MSG(lmp_ckpt_load(dir, NULL, &g, &err) == LMP_OK, "%s: %s", tag, err.msg);
    REQUIRE(g);
    CHECK(strcmp(g->source_format, "gptq") == 0);
    check_same_config_tokens(m, g);
    CHECK_EQ_INT(same_values(m, g), 0);
    for (int i = 0; i < m->n_tensors; i++) {
        const struct lmp_tensor *t = &m->tensors[i], *u = lmp_model_find(g, t->name);
        if (u && lmp_type_is_packed(t->type)) check_packed_equal(t, u);
    }
    /* the independent numpy unpacker reproduces our dequantized weights */
    if (lmp_test_have_numpy()) {
        REQUIRE(dump_model(m, exp));
        char out[2048];
        int rc = lmp_test_sh(out, sizeof out, "/usr/bin/python3 tests/check_gptq_export.py %s %s",
                             dir, exp);
        printf("%s", out);
        CHECK_MSG(rc == 0, "check_gptq_export.py %s", tag);
    }
    lmp_model_free(g);
    lmp_model_free(m);
}

TEST(export_gptq_roundtrip)
{
    struct lmp_model *s = load_stories();
    REQUIRE(s);
    gptq_roundtrip_case(s, 4, 32, 0, 0, 1, "w4g32", -1);
    gptq_roundtrip_case(s, 4, 32, 1, 0, 0, "w4g32sym", 0);
    gptq_roundtrip_case(s, 3, 32, 1, 1, 1, "w3g32act", 0);
    gptq_roundtrip_case(s, 2, 64, 0, 0, 0, "w2g64", -1);
    gptq_roundtrip_case(s, 8, 0, 1, 0, 1, "w8pc", 0);
    if (!lmp_test_have_numpy()) lmp_test_skip("numpy unpacker not run: /usr/bin/python3 has no numpy");
    lmp_model_free(s);
}

/* A zero point of 0 cannot be stored as v1's "zero - 1": gptq_v2, still exact. */
TEST(export_gptq_zero_point_v2)
{
    struct lmp_model *s = load_stories();
    REQUIRE(s);
    static const struct tl ls[1] = {{4, 2, 64}};
    struct lmp_model *m = packed_model(s, 1, ls, 4, 32, 0, 0, 1, 3);
    REQUIRE(m);
    struct lmp_tensor *t = m->layers[0].wv;
    uint16_t z0 = t->q.zeros[0];
    t->q.zeros[0] = lmp_f32_to_f16(0.0f);
    char dir[600];
    snprintf(dir, sizeof dir, "%s/v2", lmp_test_tmpdir());
    struct lmp_err err;
    struct lmp_gptq_export_report rep;
    REQUIRE(lmp_ckpt_save_gptq_dir(m, dir, NULL, &rep, &err) == LMP_OK);
    CHECK_EQ_INT(rep.v2, 1);
    struct lmp_model *g = NULL;
    CHECK_MSG(lmp_ckpt_load(dir, NULL, &g, &err) == LMP_OK, "%s", err.msg);
    if (g) CHECK_EQ_INT(same_values(m, g), 0);
    (void)z0;
    lmp_model_free(g);
    lmp_model_free(m);
    lmp_model_free(s);
}

/* Byte-level BPE vocabularies (Hugging Face-made tokenizer.json fixtures, loaded through an
 * HF directory): GGUF gpt2 tokenizer with merges and a llama.cpp pre-tokenizer name, and
 * tokenizer.json in the GPTQ directory; both read back to the same encoding. */
static void bpe_case(const char *name, int vocab, const char *want_pre)
{
    char dir[600], out[2048];
    snprintf(dir, sizeof dir, "%s/hf_%s", lmp_test_tmpdir(), name);
    int rc = lmp_test_sh(out, sizeof out, "/usr/bin/python3 tests/make_hf.py tiny %s "
                         "tests/data/bpe/%s.tokenizer.json %d", dir, name, vocab);
    REQUIRE(rc == 0);
    struct lmp_model *hf = NULL;
    struct lmp_err err;
    REQUIRE(lmp_ckpt_load(dir, NULL, &hf, &err) == LMP_OK);
    REQUIRE(hf->vocab.kind == LMP_TOK_BPE);
    /* the fixture's tokenizer_config.json chat template (tests/make_hf.py CHATML) */
    const char *ct = hf->vocab.chat_template;
    CHECK(ct && !strncmp(ct, "{% for message in messages %}", 29) && strstr(ct, "%}\n{% if") &&
          strstr(ct, "'\\n'"));
    static const struct tl ls[1] = {{4, 2, 64}};
    struct lmp_model *m = packed_model(hf, 1, ls, 4, 32, 0, 0, 0, 41);
    REQUIRE(m);
    CHECK(m->vocab.chat_template && ct && !strcmp(m->vocab.chat_template, ct));
    char path[700];
    snprintf(path, sizeof path, "%s/%s.gguf", lmp_test_tmpdir(), name);
    struct lmp_gguf_write_opts o = {.type = -1};
    CHECK_MSG(lmp_ckpt_save_gguf(m, path, &o, NULL, &err) == LMP_OK, "%s", err.msg);
    struct lmp_model *g = NULL;
    CHECK_MSG(lmp_ckpt_load_gguf(path, &g, &err) == LMP_OK, "%s", err.msg);
    REQUIRE(g);
    check_same_config_tokens(m, g);
    const struct lmp_vocab *a = &m->vocab, *b = &g->vocab;
    CHECK_MSG(a->chat_template && b->chat_template && !strcmp(a->chat_template, b->chat_template),
              "GGUF chat template: %s", b->chat_template ? b->chat_template : "(none)");
    if (a->chat_template) { /* inspect says so */
        char want[64];
        snprintf(want, sizeof want, ", chat template (%zu bytes)", strlen(a->chat_template));
        rc = lmp_test_sh(out, sizeof out, "%s inspect '%s'", lmp_test_bin(), path);
        CHECK_MSG(rc == 0 && strstr(out, want), "%s", out);
    }
    CHECK(b->kind == LMP_TOK_BPE && b->n_tokens == a->n_tokens && b->n_merges == a->n_merges);
    CHECK(b->n_tokens == a->n_tokens && memcmp(a->off, b->off, (size_t)(a->n_tokens + 1) * 4) == 0 &&
          memcmp(a->text, b->text, a->off[a->n_tokens]) == 0 &&
          memcmp(a->types, b->types, (size_t)a->n_tokens * 4) == 0);
    CHECK(b->n_merges == a->n_merges &&
          memcmp(a->merges_off, b->merges_off, (size_t)(a->n_merges + 1) * 4) == 0 &&
          memcmp(a->merges, b->merges, a->merges_off[a->n_merges]) == 0);
    if (have_gguf_py()) {
        char exp[700];
        snprintf(exp, sizeof exp, "%s/%s_exp", lmp_test_tmpdir(), name);
        REQUIRE(dump_model(g, exp));
        rc = lmp_test_sh(out, sizeof out,
                         PY " tests/check_gguf_export.py %s:%s && " PY " -c \"import gguf; "
                         "r = gguf.GGUFReader('%s'); print(r.fields['tokenizer.ggml.pre'].contents()); "
                         "print(repr(r.fields['tokenizer.chat_template'].contents()))\"",
                         path, exp, path);
        CHECK_MSG(rc == 0 && strstr(out, want_pre), "%s", out);
        /* ggml's reader gets the template byte for byte (repr: the newline as \n) */
        CHECK_MSG(strstr(out, "{% endfor %}\\n{% if add_generation_prompt %}"), "%s", out);
    }
    lmp_model_free(g);
    snprintf(path, sizeof path, "%s/%s_gptq", lmp_test_tmpdir(), name);
    CHECK_MSG(lmp_ckpt_save_gptq_dir(m, path, NULL, NULL, &err) == LMP_OK, "%s", err.msg);
    check_hf_tokenizers(path, &m->vocab);
    g = NULL;
    CHECK_MSG(lmp_ckpt_load(path, NULL, &g, &err) == LMP_OK, "%s", err.msg);
    if (g) {
        check_same_config_tokens(m, g);
        CHECK_EQ_INT(same_values(m, g), 0);
        CHECK(g->vocab.n_merges == a->n_merges);
        CHECK(g->vocab.chat_template && a->chat_template &&
              !strcmp(g->vocab.chat_template, a->chat_template)); /* tokenizer_config.json */
    }
    /* and through .lmp */
    lmp_model_free(g);
    g = NULL;
    snprintf(path, sizeof path, "%s/%s.lmp", lmp_test_tmpdir(), name);
    CHECK_MSG(lmp_ckpt_save_lmp(m, path, &err) == LMP_OK, "%s", err.msg);
    CHECK_MSG(lmp_ckpt_load(path, NULL, &g, &err) == LMP_OK, "%s", err.msg);
    if (g)
        CHECK(g->vocab.chat_template && a->chat_template &&
              !strcmp(g->vocab.chat_template, a->chat_template));
    lmp_model_free(g);
    lmp_model_free(m);
    lmp_model_free(hf);
}

TEST(export_bpe_tokenizers)
{
    if (!lmp_test_have_numpy()) lmp_test_skip("/usr/bin/python3 has no numpy (tests/make_hf.py)");
    bpe_case("gpt2", 800, "gpt-2");
    bpe_case("llama3", 832, "llama-bpe");
}

/* ---- bad input: one line, exit 2, nothing left behind --------------------------------- */

static int dir_is_empty_of(const char *dir, const char *prefix)
{
    char out[4096];
    lmp_test_sh(out, sizeof out, "ls -a %s", dir);
    return strstr(out, prefix) == NULL;
}

static void cli_fails(const char *args, const char *want_substring)
{
    char out[4096];
    int rc = lmp_test_sh(out, sizeof out, "%s convert %s", lmp_test_bin(), args);
    CHECK_MSG(rc == 2, "convert %s: exit %d (%s)", args, rc, out);
    size_t n = strlen(out);
    CHECK_MSG(n > 0 && strchr(out, '\n') == out + n - 1, "convert %s: not one line: %s", args, out);
    CHECK_MSG(strstr(out, want_substring) != NULL, "convert %s: %s", args, out);
}

TEST(export_bad_inputs)
{
    const char *tmp = lmp_test_tmpdir();
    char args[2048], path[600];
    snprintf(args, sizeof args, "%s %s/x.gguf --type q5_0", STORIES, tmp);
    cli_fails(args, "--type q5_0");
    snprintf(args, sizeof args, "%s %s/x.gguf --to ggml", STORIES, tmp);
    cli_fails(args, "--to ggml");
    snprintf(args, sizeof args, "%s %s/out.bin", STORIES, tmp);
    cli_fails(args, "must end in .lmp or .gguf");
    snprintf(args, sizeof args, "%s %s/nodir/x.gguf", STORIES, tmp);
    cli_fails(args, "nodir");
    /* a float model has no GPTQ form */
    snprintf(args, sizeof args, "%s %s/g --to gptq", STORIES, tmp);
    cli_fails(args, "not quantized");
    /* OUTDIR a file, or a directory with something in it */
    snprintf(path, sizeof path, "%s/afile", tmp);
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fclose(f);
    snprintf(args, sizeof args, "%s %s --to gptq", STORIES, path);
    cli_fails(args, "not a directory");
    snprintf(args, sizeof args, "%s %s --to gptq", STORIES, tmp);
    cli_fails(args, "not empty");
    CHECK(dir_is_empty_of(tmp, ".tmp."));
    CHECK(dir_is_empty_of(tmp, "x.gguf"));
    CHECK(dir_is_empty_of(tmp, "g\n"));
    /* quantize --gguf-exact only where a Q4_1 mapping can exist */
    const char *gx[] = {"--sym", "--bits 3", "--group 48", "--act-order"};
    for (int k = 0; k < 4; k++) {
        char out[1024];
        int rc = lmp_test_sh(out, sizeof out, "%s quantize %s %s/gx.lmp --method rtn --gguf-exact %s",
                             lmp_test_bin(), STORIES, tmp, gx[k]);
        CHECK_MSG(rc == 2 && strstr(out, "--gguf-exact") && strchr(out, '\n') == out + strlen(out) - 1,
                  "quantize --gguf-exact %s: exit %d: %s", gx[k], rc, out);
    }
    CHECK(dir_is_empty_of(tmp, "gx.lmp"));

    /* library-level refusals */
    struct lmp_model *s = load_stories();
    REQUIRE(s);
    struct lmp_err err;
    static const struct tl pruned[2] = {{4, 2, 96}, {2, 1, 64}};
    struct lmp_model *m = packed_model(s, 2, pruned, 4, 32, 0, 0, 1, 9);
    REQUIRE(m);
    snprintf(path, sizeof path, "%s/pruned", tmp);
    CHECK(lmp_ckpt_save_gptq_dir(m, path, NULL, NULL, &err) == LMP_ERR_UNSUPPORTED);
    CHECK(strstr(err.msg, "pruned") != NULL);
    lmp_model_free(m);
    static const struct tl one[1] = {{4, 2, 96}};
    m = packed_model(s, 1, one, 4, 32, 0, 0, 1, 9);
    REQUIRE(m);
    lmp_vocab_free(&m->vocab);
    snprintf(path, sizeof path, "%s/notok.gguf", tmp);
    struct lmp_gguf_write_opts o = {.type = -1};
    CHECK(lmp_ckpt_save_gguf(m, path, &o, NULL, &err) == LMP_ERR_UNSUPPORTED);
    CHECK(strstr(err.msg, "tokenizer") != NULL && strchr(err.msg, '\n') == NULL);
    snprintf(path, sizeof path, "%s/notok", tmp);
    CHECK(lmp_ckpt_save_gptq_dir(m, path, NULL, NULL, &err) == LMP_ERR_UNSUPPORTED);
    CHECK(dir_is_empty_of(tmp, "notok"));
    lmp_model_free(m);
    /* a weight past fp16's range: F16 / Q8_0 would hold inf */
    ((float *)s->tok_embd->data)[5] = 1e7f;
    const int big_types[2] = {LMP_GGML_TYPE_F16, LMP_GGML_TYPE_Q8_0};
    for (int k = 0; k < 2; k++) {
        snprintf(path, sizeof path, "%s/big.gguf", tmp);
        o.type = big_types[k];
        CHECK(lmp_ckpt_save_gguf(s, path, &o, NULL, &err) == LMP_ERR_UNSUPPORTED);
        CHECK_MSG(strstr(err.msg, "out of the") != NULL, "%s", err.msg);
    }
    CHECK(dir_is_empty_of(tmp, "big.gguf"));
    CHECK(dir_is_empty_of(tmp, ".tmp."));
    lmp_model_free(s);
}

/* Broken GPTQ directories fail cleanly with the file and the problem named. */
TEST(export_gptq_bad_dirs)
{
    struct lmp_model *s = load_stories();
    REQUIRE(s);
    static const struct tl one[1] = {{4, 2, 64}};
    struct lmp_model *m = packed_model(s, 1, one, 4, 32, 0, 0, 1, 21);
    REQUIRE(m);
    char good[600];
    snprintf(good, sizeof good, "%s/good", lmp_test_tmpdir());
    struct lmp_err err;
    REQUIRE(lmp_ckpt_save_gptq_dir(m, good, NULL, NULL, &err) == LMP_OK);
    struct {
        const char *edit; /* shell command run inside a copy of the directory */
        const char *want; /* substring of the error */
    } cases[] = {
        {"sed -i 's/\\(\"checkpoint_format\":\\s*\\)\"gptq\"/\\1\"marlin\"/' quantize_config.json",
         "checkpoint_format"},
        {"sed -i 's/\"bits\":.*/\"bits\": 5,/' quantize_config.json", "bits"},
        {"sed -i 's/\"group_size\":.*/\"group_size\": 16,/' quantize_config.json", "qzeros"},
        {"sed -i 's/\"intermediate_size\":.*/\"intermediate_size\": 96,/' config.json", "qweight must be"},
        {"rm model.safetensors", "safetensors"},
        {"truncate -s 1000 model.safetensors", "model.safetensors"},
    };
    /* and hostile values inside the tensors */
    struct {
        const char *tensor;
        size_t at;
        uint32_t value;
        int bytes;
        const char *want;
    } pokes[] = {
        {"model.layers.0.self_attn.q_proj.g_idx", 12, 99, 4, "is not a group"},
        {"model.layers.0.mlp.up_proj.g_idx", 0, 1, 4, "whole groups"},
        {"model.layers.0.mlp.down_proj.scales", 2, 0x7c00, 2, "non-finite"},
    };
    for (size_t k = 0; k < sizeof pokes / sizeof pokes[0]; k++) {
        char dir[700], st_path[800], out[512];
        snprintf(dir, sizeof dir, "%s/poke%zu", lmp_test_tmpdir(), k);
        REQUIRE(lmp_test_sh(out, sizeof out, "cp -r %s %s", good, dir) == 0);
        snprintf(st_path, sizeof st_path, "%s/model.safetensors", dir);
        struct lmp_st_file f;
        REQUIRE(lmp_st_open(&f, st_path, &err) == LMP_OK);
        const struct lmp_st_tensor *t = lmp_st_find(&f, pokes[k].tensor);
        REQUIRE(t);
        long off = (long)(t->data - f.buf.data) + (long)pokes[k].at;
        lmp_st_close(&f);
        FILE *fp = fopen(st_path, "r+b");
        REQUIRE(fp && fseek(fp, off, SEEK_SET) == 0);
        fwrite(&pokes[k].value, 1, (size_t)pokes[k].bytes, fp);
        fclose(fp);
        struct lmp_model *g = NULL;
        enum lmp_status st = lmp_ckpt_load(dir, NULL, &g, &err);
        CHECK_MSG((st == LMP_ERR_FORMAT || st == LMP_ERR_UNSUPPORTED) && !g &&
                      strstr(err.msg, pokes[k].want) && strstr(err.msg, "model.safetensors"),
                  "poke %zu: status %d: %s", k, st, err.msg);
        lmp_model_free(g);
    }
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char dir[700], out[512];
        snprintf(dir, sizeof dir, "%s/bad%zu", lmp_test_tmpdir(), k);
        int rc = lmp_test_sh(out, sizeof out, "cp -r %s %s && cd %s && %s", good, dir, dir,
                             cases[k].edit);
        REQUIRE(rc == 0);
        struct lmp_model *g = NULL;
        enum lmp_status st = lmp_ckpt_load(dir, NULL, &g, &err);
        CHECK_MSG(st == LMP_ERR_FORMAT || st == LMP_ERR_UNSUPPORTED || st == LMP_ERR_IO,
                  "case %zu: status %d (%s)", k, st, err.msg);
        CHECK_MSG(g == NULL, "case %zu: model returned", k);
        CHECK_MSG(strstr(err.msg, cases[k].want) != NULL && strchr(err.msg, '\n') == NULL,
                  "case %zu: message %s", k, err.msg);
        lmp_model_free(g);
    }
    lmp_model_free(m);
    lmp_model_free(s);
}

/* The CLI end to end: lmp (packed) -> GGUF with the exact / re-quantized summary, -> GPTQ and
 * back to .lmp. */
TEST(export_cli)
{
    struct lmp_model *s = load_stories();
    REQUIRE(s);
    static const struct tl ls[2] = {{4, 2, 96}, {4, 2, 96}};
    struct lmp_model *m = packed_model(s, 2, ls, 4, 32, 1, 0, 1, 31);
    REQUIRE(m);
    const char *tmp = lmp_test_tmpdir();
    char lmp[600], out[4096];
    snprintf(lmp, sizeof lmp, "%s/m.lmp", tmp);
    struct lmp_err err;
    REQUIRE(lmp_ckpt_save_lmp(m, lmp, &err) == LMP_OK);
    int rc = lmp_test_sh(out, sizeof out, "%s convert %s %s/m.gguf", lmp_test_bin(), lmp, tmp);
    CHECK_MSG(rc == 0 && strstr(out, "Q4_0: exact"), "%s", out);
    rc = lmp_test_sh(out, sizeof out, "%s convert %s %s/m8.gguf --type q4_1", lmp_test_bin(), lmp, tmp);
    CHECK_MSG(rc == 0 && strstr(out, "Q4_1"), "%s", out);
    rc = lmp_test_sh(out, sizeof out, "%s convert %s %s/mg --to gptq && %s convert %s/mg %s/back.lmp",
                     lmp_test_bin(), lmp, tmp, lmp_test_bin(), tmp, tmp);
    CHECK_MSG(rc == 0 && strstr(out, "checkpoint_format gptq"), "%s", out);
    char back[600];
    snprintf(back, sizeof back, "%s/back.lmp", tmp);
    struct lmp_model *g = NULL;
    CHECK_MSG(lmp_ckpt_load(back, NULL, &g, &err) == LMP_OK, "%s", err.msg);
    if (g) CHECK_EQ_INT(same_values(m, g), 0);
    lmp_model_free(g);
    lmp_model_free(m);
    lmp_model_free(s);
}
