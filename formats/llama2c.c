/* llama2.c checkpoints (legacy version 0: 7 int32 header, fp32 weights) and the
 * llama2.c tokenizer.bin. Weights are converted to our named tensors; llama2.c already
 * stores Q/K rows in the interleaved RoPE order we use, so no permutation is needed. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum lmp_status lmp_ckpt_load_llama2c_tokenizer(const char *path, int vocab_size,
                                                struct lmp_vocab *v, struct lmp_err *err)
{
    struct lmp_buf b;
    enum lmp_status st = lmp_buf_read_file(path, &b, err);
    if (st) return st;
    struct lmp_cursor c = {b.data, b.len, 0, path};
    char **strs = NULL;
    uint32_t *lens = NULL;
    float *scores = NULL;
    int32_t *types = NULL;
    int n = 0;
    int32_t max_len;
    if ((st = lmp_cur_i32(&c, &max_len, "max_token_length", err))) goto done;
    if (max_len <= 0 || max_len > 65536) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: max_token_length %d out of range", path,
                         max_len);
        goto done;
    }
    if (vocab_size <= 0 || vocab_size > LMP_MAX_VOCAB) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: vocab size %d out of range", path, vocab_size);
        goto done;
    }
    strs = calloc((size_t)vocab_size, sizeof *strs);
    lens = calloc((size_t)vocab_size, sizeof *lens);
    scores = calloc((size_t)vocab_size, sizeof *scores);
    types = calloc((size_t)vocab_size, sizeof *types);
    if (!strs || !lens || !scores || !types) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (n = 0; n < vocab_size; n++) {
        int32_t len;
        if (c.pos == c.len) {
            st = lmp_err_set(err, LMP_ERR_FORMAT,
                             "%s: tokenizer has %d tokens, the model's vocabulary has %d (wrong "
                             "tokenizer?)",
                             path, n, vocab_size);
            goto done;
        }
        if ((st = lmp_cur_f32(&c, &scores[n], "token score", err))) goto done;
        if ((st = lmp_cur_i32(&c, &len, "token length", err))) goto done;
        if (len < 0 || len > max_len) {
            st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: token %d has length %d (max %d)", path, n,
                             len, max_len);
            goto done;
        }
        const void *p;
        if ((st = lmp_cur_bytes(&c, (size_t)len, &p, "token text", err))) goto done;
        strs[n] = (char *)p;
        lens[n] = (uint32_t)len;
        types[n] = LMP_TOKT_NORMAL;
        if (len == 6 && memcmp(p, "<0x", 3) == 0 && ((const char *)p)[5] == '>')
            types[n] = LMP_TOKT_BYTE;
    }
    if (c.pos != c.len) {
        st = lmp_err_set(err, LMP_ERR_FORMAT,
                         "%s: %zu trailing bytes after %d tokens (tokenizer does not match the "
                         "model's vocabulary size of %d?)",
                         path, c.len - c.pos, vocab_size, vocab_size);
        goto done;
    }
    /* llama2.c convention: 0 <unk>, 1 BOS, 2 EOS */
    if (vocab_size > 0) types[0] = LMP_TOKT_UNKNOWN;
    if (vocab_size > 2) types[1] = types[2] = LMP_TOKT_CONTROL;
    lmp_vocab_free(v);
    if ((st = lmp_vocab_set_tokens(v, vocab_size, (const char *const *)strs, lens, scores, types,
                                   err)))
        goto done;
    v->kind = LMP_TOK_SPM;
    v->unk = 0;
    v->bos = vocab_size > 1 ? 1 : -1;
    v->eos = vocab_size > 2 ? 2 : -1;
    v->add_bos = 1;
    v->add_space_prefix = 1;
    v->space_is_plain = 1;
done:
    free(strs);
    free(lens);
    free(scores);
    free(types);
    lmp_buf_free(&b);
    return st;
}

/* Finds tokenizer.bin beside the checkpoint: tok<vocab>.bin first, then tokenizer.bin. */
static int find_tokenizer(const char *model_path, int vocab, char *out, size_t outlen)
{
    const char *slash = strrchr(model_path, '/');
    int dirlen = slash ? (int)(slash - model_path + 1) : 0;
    const char *cands[2] = {NULL, "tokenizer.bin"};
    char tokn[32];
    snprintf(tokn, sizeof tokn, "tok%d.bin", vocab);
    cands[0] = tokn;
    for (int i = 0; i < 2; i++) {
        snprintf(out, outlen, "%.*s%s", dirlen, model_path, cands[i]);
        FILE *f = fopen(out, "rb");
        if (f) {
            fclose(f);
            return 1;
        }
    }
    return 0;
}

enum lmp_status lmp_ckpt_load_llama2c(const char *path, const char *tok_path,
                                      struct lmp_model **out, struct lmp_err *err)
{
    *out = NULL;
    struct lmp_buf b;
    enum lmp_status st = lmp_buf_read_file(path, &b, err);
    if (st) return st;
    struct lmp_cursor c = {b.data, b.len, 0, path};
    struct lmp_model *m = NULL;
    int32_t h[7];
    static const char *hn[7] = {"dim", "hidden_dim", "n_layers", "n_heads",
                                "n_kv_heads", "vocab_size", "seq_len"};
    for (int i = 0; i < 7; i++)
        if ((st = lmp_cur_i32(&c, &h[i], hn[i], err))) goto fail;
    int dim = h[0], hidden = h[1], nl = h[2], nh = h[3], nkv = h[4], vocab = h[5], seq = h[6];
    int tied = vocab > 0;
    if (vocab < 0) vocab = -vocab;
    for (int i = 0; i < 7; i++) {
        int v = i == 5 ? vocab : h[i];
        if (v <= 0 || v > LMP_MAX_DIM * 8) {
            st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: header field %s = %d out of range", path,
                             hn[i], h[i]);
            goto fail;
        }
    }
    if (nh > dim || dim % nh || nkv > nh || nh % nkv || (dim / nh) % 2) {
        st = lmp_err_set(err, LMP_ERR_FORMAT,
                         "%s: header n_heads %d / n_kv_heads %d do not divide dim %d", path, nh,
                         nkv, dim);
        goto fail;
    }
    int hd = dim / nh, kvd = nkv * hd;
    /* expected payload in floats, computed in 64 bits so absurd headers cannot overflow */
    uint64_t D = (uint64_t)dim, L = (uint64_t)nl, F = (uint64_t)hidden, V = (uint64_t)vocab;
    uint64_t need = V * D + L * D + L * D * D + 2 * L * (uint64_t)kvd * D + L * D * D + L * D +
                    3 * L * F * D + D + (uint64_t)seq * (uint64_t)hd + (tied ? 0 : V * D);
    if (need > (b.len - c.pos) / 4) {
        st = lmp_err_set(err, LMP_ERR_FORMAT,
                         "%s: truncated: header implies %llu bytes of weights, file has %zu", path,
                         (unsigned long long)(need * 4), b.len - c.pos);
        goto fail;
    }
    m = lmp_model_new();
    if (!m) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        goto fail;
    }
    snprintf(m->source_format, sizeof m->source_format, "llama2c");
    struct lmp_config *cf = &m->cfg;
    cf->dim = dim;
    cf->n_layers = nl;
    cf->head_dim = hd;
    cf->vocab = vocab;
    cf->max_ctx = seq;
    cf->tied = tied;
    cf->rope_theta = 10000.0f;
    cf->norm_eps = 1e-5f;
    if ((st = lmp_config_set_uniform(cf, nh, nkv, hidden, err))) goto fail;

    /* Read tensor blocks in file order; per-layer tensors are stored layer-major. */
    struct {
        const char *suffix; /* NULL: global */
        int64_t rows, cols;
        int nd;
    } order[] = {
        {LMP_N_TOKEMBD, vocab, dim, 2}, /* global */
        {LMP_N_ATTN_NORM, dim, 1, 1},  {LMP_N_WQ, dim, dim, 2},
        {LMP_N_WK, kvd, dim, 2},       {LMP_N_WV, kvd, dim, 2},
        {LMP_N_WO, dim, dim, 2},       {LMP_N_FFN_NORM, dim, 1, 1},
        {LMP_N_GATE, hidden, dim, 2},  {LMP_N_DOWN, dim, hidden, 2},
        {LMP_N_UP, hidden, dim, 2},
    };
    for (size_t k = 0; k < sizeof order / sizeof order[0]; k++) {
        int nrep = k == 0 ? 1 : nl;
        for (int l = 0; l < nrep; l++) {
            char name[LMP_NAME_MAX];
            if (k == 0)
                snprintf(name, sizeof name, "%s", order[k].suffix);
            else
                snprintf(name, sizeof name, "blk.%d.%s", l, order[k].suffix);
            struct lmp_tensor *t = lmp_model_add_tensor(m, name, LMP_TYPE_F32, order[k].nd,
                                                        order[k].rows, order[k].cols);
            if (!t) {
                st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
                goto fail;
            }
            const void *p;
            if ((st = lmp_cur_bytes(&c, t->nbytes, &p, name, err))) goto fail;
            memcpy(t->data, p, t->nbytes);
        }
    }
    struct lmp_tensor *t = lmp_model_add_tensor(m, LMP_N_OUTNORM, LMP_TYPE_F32, 1, dim, 1);
    const void *p;
    if (!t) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if ((st = lmp_cur_bytes(&c, t->nbytes, &p, LMP_N_OUTNORM, err))) goto fail;
    memcpy(t->data, p, t->nbytes);
    /* skip the legacy freq_cis_real / freq_cis_imag tables */
    if ((st = lmp_cur_bytes(&c, (size_t)seq * (size_t)hd * 4, &p, "freq_cis", err))) goto fail;
    if (!tied) {
        t = lmp_model_add_tensor(m, LMP_N_OUTPUT, LMP_TYPE_F32, 2, vocab, dim);
        if (!t) {
            st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
            goto fail;
        }
        if ((st = lmp_cur_bytes(&c, t->nbytes, &p, LMP_N_OUTPUT, err))) goto fail;
        memcpy(t->data, p, t->nbytes);
    }
    if (c.pos != c.len) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: %zu unexpected trailing bytes", path,
                         c.len - c.pos);
        goto fail;
    }
    if ((st = lmp_model_bind(m, path, err))) goto fail;
    if ((st = lmp_model_check_finite(m, path, err))) goto fail;

    char tp[4096];
    if (!tok_path) {
        if (!find_tokenizer(path, vocab, tp, sizeof tp)) {
            st = lmp_err_set(err, LMP_ERR_IO,
                             "%s: no tokenizer found (looked for tok%d.bin and tokenizer.bin "
                             "beside it; pass --tokenizer)",
                             path, vocab);
            goto fail;
        }
        tok_path = tp;
    }
    if ((st = lmp_ckpt_load_llama2c_tokenizer(tok_path, vocab, &m->vocab, err))) goto fail;
    snprintf(cf->name, sizeof cf->name, "%s", lmp_basename(path));
    lmp_buf_free(&b);
    *out = m;
    return LMP_OK;
fail:
    lmp_model_free(m);
    lmp_buf_free(&b);
    return st;
}
