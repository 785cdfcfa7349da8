/* Writes a GGUF of a Llama-2-7B-shaped model with random weights, for timing a peer runtime
 * (llama.cpp's llama-bench) on the same shape as bench/cuda_decode.c, side by side. Nothing is
 * downloaded: the weights are uniform random, the vocabulary is made up (<unk>, <s>, </s>, the
 * 256 byte tokens, then "▁t<i>"), and the file goes through our own GGUF writer
 * (lmp_ckpt_save_gguf: temporary name, renamed when complete).
 *
 *   synth_gguf OUT.gguf [--type q4_0|f16] [--layers 32] [--dim 4096] [--ffn 11008]
 *              [--heads 32] [--kv-heads 32] [--vocab 32000] [--seed 1]
 *
 * q4_0: every matrix (token embedding and output head too) as 4-bit codes in groups of 32 with
 * zero 8 and fp16 scales, which the writer maps bit for bit onto Q4_0 blocks (4.5 bits per
 * weight); f16: fp16 matrices. Norm weights are fp32 ones. The output prints the bytes of the
 * matrices one decoded token reads (all but the token embedding, of which one row is read). */
#include "formats/gguf_write.h"
#include "formats/qpack.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static int bad(const char *msg)
{
    fprintf(stderr, "synth_gguf: %s\n", msg);
    return 2;
}

/* A matrix with random contents in the requested form; key makes its stream distinct. */
static struct lmp_tensor *add_matrix(struct lmp_model *m, const char *name, int64_t rows,
                                     int64_t cols, int q4, uint64_t key, struct lmp_err *err)
{
    struct lmp_tensor *t = lmp_model_add_tensor(m, name, q4 ? LMP_TYPE_U8 : LMP_TYPE_F16, 1,
                                                q4 ? 1 : rows * cols, 1);
    if (!t) return NULL;
    if (!q4) {
        uint16_t *d = t->data;
        t->n_dims = 2;
        t->shape[0] = rows;
        t->shape[1] = cols;
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++) {
                uint64_t x = mix(key ^ (uint64_t)(r * cols + c));
                d[r * cols + c] = lmp_f32_to_f16(((float)(x >> 40) / 16777216.0f - 0.5f) * 0.04f);
            }
        return t;
    }
    size_t cb, pb;
    if (lmp_qpack_sizes(rows, cols, 4, 32, &cb, &pb, err)) return NULL;
    uint8_t *codes = malloc(cb);
    uint16_t *sc = malloc(pb), *zr = malloc(pb);
    if (!codes || !sc || !zr) {
        free(codes), free(sc), free(zr);
        lmp_err_set(err, LMP_ERR_NOMEM, "out of memory for %s", name);
        return NULL;
    }
    /* cols % 32 == 0: a row is cols / 2 bytes, no padding, so any byte is two valid codes */
    size_t n8 = cb / 8;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n8; i++) {
        uint64_t x = mix(key ^ i);
        memcpy(codes + 8 * i, &x, 8);
    }
    const int64_t ng = (int64_t)(pb / 2);
    for (int64_t k = 0; k < ng; k++) {
        sc[k] = lmp_f32_to_f16(0.002f + 0.002f * (float)(mix(~key ^ (uint64_t)k) >> 40) / 16777216.0f);
        zr[k] = lmp_f32_to_f16(8.0f);
    }
    free(t->data);
    t->data = codes;
    t->nbytes = cb;
    t->owned = 1;
    t->type = LMP_TYPE_Q4;
    t->n_dims = 2;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->q.bits = 4;
    t->q.group = 32;
    t->q.sym = 1;
    t->q.scales = sc;
    t->q.zeros = zr;
    return t;
}

static struct lmp_tensor *add_ones(struct lmp_model *m, const char *name, int64_t n)
{
    struct lmp_tensor *t = lmp_model_add_tensor(m, name, LMP_TYPE_F32, 1, n, 1);
    if (t)
        for (int64_t i = 0; i < n; i++) ((float *)t->data)[i] = 1.0f;
    return t;
}

static enum lmp_status make_vocab(struct lmp_vocab *v, int n, struct lmp_err *err)
{
    char **s = calloc((size_t)n, sizeof *s);
    uint32_t *len = calloc((size_t)n, sizeof *len);
    float *sco = calloc((size_t)n, sizeof *sco);
    int32_t *ty = calloc((size_t)n, sizeof *ty);
    enum lmp_status st = LMP_ERR_NOMEM;
    if (!s || !len || !sco || !ty) goto out;
    for (int i = 0; i < n; i++) {
        char b[32];
        if (i == 0) snprintf(b, sizeof b, "<unk>");
        else if (i == 1) snprintf(b, sizeof b, "<s>");
        else if (i == 2) snprintf(b, sizeof b, "</s>");
        else if (i < 259) snprintf(b, sizeof b, "<0x%02X>", i - 3);
        else snprintf(b, sizeof b, "\xe2\x96\x81t%d", i);
        if (!(s[i] = strdup(b))) goto out;
        len[i] = (uint32_t)strlen(b);
        ty[i] = i == 0 ? LMP_TOKT_UNKNOWN : i < 3 ? LMP_TOKT_CONTROL : i < 259 ? LMP_TOKT_BYTE
                                                                                  : LMP_TOKT_NORMAL;
        sco[i] = i < 259 ? 0.0f : -(float)i;
    }
    st = lmp_vocab_set_tokens(v, n, (const char *const *)s, len, sco, ty, err);
    v->kind = LMP_TOK_SPM;
    v->unk = 0, v->bos = 1, v->eos = 2;
    v->add_bos = 1;
    v->add_space_prefix = 1;
out:
    if (st == LMP_ERR_NOMEM) lmp_err_set(err, st, "out of memory for the vocabulary");
    for (int i = 0; s && i < n; i++) free(s[i]);
    free(s), free(len), free(sco), free(ty);
    return st;
}

int main(int argc, char **argv)
{
    const char *out = NULL;
    int q4 = 1, L = 32, D = 4096, F = 11008, H = 32, KV = 32, V = 32000;
    uint64_t seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int *ip = !strcmp(a, "--layers") ? &L : !strcmp(a, "--dim") ? &D : !strcmp(a, "--ffn") ? &F
                : !strcmp(a, "--heads") ? &H : !strcmp(a, "--kv-heads") ? &KV
                : !strcmp(a, "--vocab") ? &V : NULL;
        if (ip || !strcmp(a, "--type") || !strcmp(a, "--seed")) {
            if (!v) return bad("an option lacks its value");
            i++;
            if (ip) *ip = atoi(v);
            else if (!strcmp(a, "--seed")) seed = strtoull(v, NULL, 10);
            else if (!strcmp(v, "q4_0") || !strcmp(v, "f16")) q4 = !strcmp(v, "q4_0");
            else return bad("--type is q4_0 or f16");
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("usage: synth_gguf OUT.gguf [--type q4_0|f16] [--layers N] [--dim N] [--ffn N]\n"
                   "                  [--heads N] [--kv-heads N] [--vocab N] [--seed N]\n");
            return 0;
        } else if (a[0] == '-' || out) {
            return bad("unknown argument (see --help)");
        } else {
            out = a;
        }
    }
    if (!out) return bad("no output file (see --help)");
    if (L < 1 || L > 256 || H < 1 || KV < 1 || H % KV || D < 64 || D > 65536 || D % H ||
        (D / H) % 2 || D % 32 || F < 32 || F > 262144 || F % 32 || V < 260 || V > 1000000)
        return bad("shape out of range (dim and ffn multiples of 32, heads a multiple of "
                   "kv-heads dividing dim, vocab >= 260)");
    struct lmp_err err = {{0}};
    struct lmp_model *m = lmp_model_new();
    if (!m) return bad("out of memory");
    struct lmp_config *c = &m->cfg;
    snprintf(c->arch, sizeof c->arch, "llama");
    snprintf(c->name, sizeof c->name, "synthetic llama %dx%d ffn %d (random)", L, D, F);
    c->dim = D, c->n_layers = L, c->head_dim = D / H, c->vocab = V, c->max_ctx = 4096;
    c->rope_theta = 10000.0f, c->norm_eps = 1e-5f;
    enum lmp_status st = lmp_config_set_uniform(c, H, KV, F, &err);
    if (!st) st = make_vocab(&m->vocab, V, &err);
    uint64_t k = mix(seed), bytes = 0;
    char nm[LMP_NAME_MAX];
#define MAT(name, r, cc)                                                                    \
    do {                                                                                   \
        struct lmp_tensor *t_ = st ? NULL : add_matrix(m, name, r, cc, q4, k = mix(k), &err); \
        if (!st && !t_) st = err.msg[0] ? LMP_ERR_NOMEM : lmp_err_set(&err, LMP_ERR_NOMEM, "out of memory"); \
        if (t_ && strcmp(name, LMP_N_TOKEMBD))                                             \
            bytes += t_->nbytes + (q4 ? (uint64_t)(r) * ((cc) / 32) * 2 : 0);              \
    } while (0)
    MAT(LMP_N_TOKEMBD, V, D);
    const int Q = H * (D / H), K = KV * (D / H);
    for (int l = 0; l < L && !st; l++) {
        snprintf(nm, sizeof nm, "blk.%d.%s", l, LMP_N_ATTN_NORM);
        if (!add_ones(m, nm, D)) st = LMP_ERR_NOMEM;
        snprintf(nm, sizeof nm, "blk.%d.%s", l, LMP_N_WQ);
        MAT(nm, Q, D);
        snprintf(nm, sizeof nm, "blk.%d.%s", l, LMP_N_WK);
        MAT(nm, K, D);
        snprintf(nm, sizeof nm, "blk.%d.%s", l, LMP_N_WV);
        MAT(nm, K, D);
        snprintf(nm, sizeof nm, "blk.%d.%s", l, LMP_N_WO);
        MAT(nm, D, Q);
        snprintf(nm, sizeof nm, "blk.%d.%s", l, LMP_N_FFN_NORM);
        if (!st && !add_ones(m, nm, D)) st = LMP_ERR_NOMEM;
        snprintf(nm, sizeof nm, "blk.%d.%s", l, LMP_N_GATE);
        MAT(nm, F, D);
        snprintf(nm, sizeof nm, "blk.%d.%s", l, LMP_N_UP);
        MAT(nm, F, D);
        snprintf(nm, sizeof nm, "blk.%d.%s", l, LMP_N_DOWN);
        MAT(nm, D, F);
    }
    if (!st && !add_ones(m, LMP_N_OUTNORM, D)) st = LMP_ERR_NOMEM;
    MAT(LMP_N_OUTPUT, V, D);
#undef MAT
    if (!st) st = lmp_model_bind(m, "synthetic model", &err);
    struct lmp_gguf_write_opts o = {q4 ? LMP_GGML_TYPE_Q4_0 : -1};
    struct lmp_gguf_report rep = {0};
    if (!st) st = lmp_ckpt_save_gguf(m, out, &o, &rep, &err);
    if (!st) {
        for (int i = 0; i < rep.n && !st; i++)
            if (rep.t[i].how == LMP_GGUF_REQUANT || rep.t[i].fallback)
                st = lmp_err_set(&err, LMP_ERR_INTERNAL, "%s: %s was not written exactly", out,
                                 rep.t[i].name);
        printf("%s: %s, %d layers, dim %d, ffn %d, heads %d/%d, vocab %d; %.3f GB file, "
               "%.3f GB of matrices read per decoded token\n",
               out, q4 ? "Q4_0" : "F16", L, D, F, H, KV, V, rep.file_bytes / 1e9, bytes / 1e9);
    }
    lmp_gguf_report_free(&rep);
    lmp_model_free(m);
    if (st) {
        fprintf(stderr, "synth_gguf: %s\n", err.msg);
        return lmp_status_exit_code(st);
    }
    return 0;
}
