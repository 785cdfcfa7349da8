/* GPTQ safetensors directories (layout in gptq_st.h): export of packed models, import back.
 *
 * Export builds every output tensor in memory (the packed model is small next to its float
 * original), writes model.safetensors and the JSON files into DIR.tmp.<pid> and renames that
 * directory into place. Import maps the safetensors files, checks every dtype, shape, code
 * and group index against config.json and quantize_config.json before using it, and rebuilds
 * our packed tensors. Config and tokenizer parsing is the Hugging Face loader's (hf.c). */
#include "gptq_st.h"
#include "internal.h"
#include "qpack.h"
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PATH_CAP 4096
#define N_LIN 7

/* The seven linears of a block: HF module (after "model.layers.N."), our name, RoPE rows
 * (1: query heads, 2: key/value heads, 0: none). */
static const struct {
    const char *hf, *ours;
    int rope;
} lin[N_LIN] = {
    {"self_attn.q_proj", LMP_N_WQ, 1}, {"self_attn.k_proj", LMP_N_WK, 2},
    {"self_attn.v_proj", LMP_N_WV, 0}, {"self_attn.o_proj", LMP_N_WO, 0},
    {"mlp.gate_proj", LMP_N_GATE, 0},  {"mlp.up_proj", LMP_N_UP, 0},
    {"mlp.down_proj", LMP_N_DOWN, 0},
};
/* Dense per-layer tensors. */
#define N_LDENSE 5
static const struct {
    const char *hf, *ours;
    int rope, bias;
} ldense[N_LDENSE] = {
    {"input_layernorm.weight", LMP_N_ATTN_NORM, 0, 0},
    {"post_attention_layernorm.weight", LMP_N_FFN_NORM, 0, 0},
    {"self_attn.q_proj.bias", LMP_N_BQ, 1, 1},
    {"self_attn.k_proj.bias", LMP_N_BK, 2, 1},
    {"self_attn.v_proj.bias", LMP_N_BV, 0, 1},
};
#define HF_EMB "model.embed_tokens.weight"
#define HF_NORM "model.norm.weight"
#define HF_HEAD "lm_head.weight"

static enum lmp_status join_path(char out[PATH_CAP], const char *dir, const char *name,
                                 struct lmp_err *err)
{
    size_t dl = strlen(dir);
    while (dl > 1 && dir[dl - 1] == '/') dl--;
    int n = snprintf(out, PATH_CAP, "%.*s/%s", (int)dl, dir, name);
    if (n < 0 || n >= PATH_CAP) return lmp_err_set(err, LMP_ERR_ARG, "%s: path too long", dir);
    return LMP_OK;
}

static int file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Reads a JSON file whose top level is an object. */
static enum lmp_status read_json(const char *path, cJSON **out, struct lmp_err *err)
{
    *out = NULL;
    char *text = NULL;
    enum lmp_status st = lmp_read_text(path, &text, NULL, err);
    if (st) return st;
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: not a JSON object", path);
    }
    *out = j;
    return LMP_OK;
}

/* Permutes the rows (row_bytes each) of one Q or K matrix's array between rotate-half and
 * interleaved order, as model.c does for float rows. */
static enum lmp_status permute_rows(void *data, int64_t rows, size_t row_bytes, int n_heads,
                                    int head_dim, int to_interleaved, const char *name,
                                    struct lmp_err *err)
{
    struct lmp_tensor t;
    memset(&t, 0, sizeof t);
    snprintf(t.name, sizeof t.name, "%s", name);
    t.type = LMP_TYPE_U8;
    t.n_dims = 2;
    t.shape[0] = rows;
    t.shape[1] = (int64_t)row_bytes;
    t.data = data;
    return lmp_rope_permute_rows(&t, n_heads, head_dim, to_interleaved, err);
}

/* ---- export: tensors ------------------------------------------------------------------- */

struct xset {
    struct lmp_st_wtensor *t;
    int n, cap;
    void **own; /* buffers and names to free */
    int n_own, cap_own;
};

static void *xown(struct xset *x, void *p)
{
    if (!p) return NULL;
    if (x->n_own == x->cap_own) {
        int cap = x->cap_own ? 2 * x->cap_own : 64;
        void **q = realloc(x->own, (size_t)cap * sizeof *q);
        if (!q) {
            free(p);
            return NULL;
        }
        x->own = q;
        x->cap_own = cap;
    }
    x->own[x->n_own++] = p;
    return p;
}

static void xset_free(struct xset *x)
{
    for (int i = 0; i < x->n_own; i++) free(x->own[i]);
    free(x->own);
    free(x->t);
    memset(x, 0, sizeof *x);
}

/* Appends a tensor; name is copied, data must stay valid (owned by x or the model). */
static int xadd(struct xset *x, const char *name, enum lmp_type type, int nd, int64_t d0,
                int64_t d1, const void *data)
{
    if (x->n == x->cap) {
        int cap = x->cap ? 2 * x->cap : 64;
        struct lmp_st_wtensor *q = realloc(x->t, (size_t)cap * sizeof *q);
        if (!q) return 0;
        x->t = q;
        x->cap = cap;
    }
    char *nm = xown(x, strdup(name));
    if (!nm) return 0;
    x->t[x->n++] = (struct lmp_st_wtensor){nm, type, nd, {d0, d1, 0, 0}, data};
    return 1;
}

/* A dense tensor (embedding, norm, bias, head) in the requested storage type, RoPE rows
 * un-permuted for Q/K biases. */
static enum lmp_status export_dense(struct xset *x, const struct lmp_model *m,
                                    const struct lmp_tensor *t, const char *hf_name, int rope_heads,
                                    int dense_type, const char *dir, struct lmp_err *err)
{
    if (!lmp_type_is_float(t->type))
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                           "%s: tensor %s is %s; the GPTQ layout keeps it unquantized", dir,
                           t->name, lmp_type_name(t->type));
    enum lmp_type to = dense_type < 0 ? t->type : (enum lmp_type)dense_type;
    int64_t n = lmp_tensor_nelem(t);
    const void *data = t->data;
    if (to != t->type || rope_heads) {
        size_t es = lmp_type_elem_size(to);
        unsigned char *d = xown(x, malloc((size_t)n * es + 1));
        if (!d) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        for (int64_t k = 0; k < n; k++) {
            float v = lmp_tensor_get_f32(t, t->n_dims == 2 ? k / t->shape[1] : k,
                                         t->n_dims == 2 ? k % t->shape[1] : 0);
            if (to == LMP_TYPE_F32) {
                memcpy(d + 4 * k, &v, 4);
            } else {
                uint16_t h = to == LMP_TYPE_F16 ? lmp_f32_to_f16(v) : lmp_f32_to_bf16(v);
                float back = to == LMP_TYPE_F16 ? lmp_f16_to_f32(h) : lmp_bf16_to_f32(h);
                if (!isfinite(back) && isfinite(v))
                    return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                                       "%s: tensor %s: value %g is out of the %s range", dir,
                                       t->name, (double)v, lmp_type_name(to));
                memcpy(d + 2 * k, &h, 2);
            }
        }
        if (rope_heads) {
            enum lmp_status st = permute_rows(d, t->shape[0], (size_t)(n / t->shape[0]) * es,
                                              rope_heads, m->cfg.head_dim, 0, t->name, err);
            if (st) return st;
        }
        data = d;
    }
    if (!xadd(x, hf_name, to, t->n_dims, t->shape[0], t->n_dims == 2 ? t->shape[1] : 0, data))
        return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    return LMP_OK;
}

/* Sets `bits` bits at bit position `bit` of a little-endian stream of u32 words, the word
 * for position p being words[(p / 32) * stride]. */
static void put_bits(uint32_t *words, size_t stride, uint64_t bit, unsigned v, int bits)
{
    uint64_t w = bit >> 5;
    unsigned sh = (unsigned)(bit & 31);
    words[w * stride] |= (uint32_t)v << sh;
    if (sh + (unsigned)bits > 32) words[(w + 1) * stride] |= (uint32_t)v >> (32 - sh);
}

static unsigned get_bits(const unsigned char *words, size_t stride, uint64_t bit, int bits)
{
    uint64_t w = bit >> 5;
    unsigned sh = (unsigned)(bit & 31);
    uint32_t a, b = 0;
    memcpy(&a, words + 4 * (w * stride), 4);
    uint64_t v = a >> sh;
    if (sh + (unsigned)bits > 32) {
        memcpy(&b, words + 4 * ((w + 1) * stride), 4);
        v |= (uint64_t)b << (32 - sh);
    }
    return (unsigned)(v & ((1u << bits) - 1u));
}

/* One packed linear as qweight / qzeros / scales / g_idx. */
static enum lmp_status export_linear(struct xset *x, const struct lmp_model *m,
                                     const struct lmp_tensor *t, const char *prefix, int rope_heads,
                                     int v2, struct lmp_err *err)
{
    struct lmp_qview v;
    enum lmp_status st = lmp_qview_from_tensor(&v, t, err);
    if (st) return st;
    const int64_t R = v.rows, C = v.cols, ng = v.n_groups;
    const int bits = v.bits;
    const unsigned maxq = (1u << bits) - 1u;
    uint8_t *codes = malloc((size_t)(R * C));
    uint16_t *sc = malloc((size_t)(R * ng) * 2), *zr = malloc((size_t)(R * ng) * 2);
    int32_t *inv = malloc((size_t)C * 4);
    uint32_t *qw = xown(x, calloc((size_t)(C * bits / 32 * R) + 1, 4));
    uint32_t *qz = xown(x, calloc((size_t)(ng * (R * bits / 32)) + 1, 4));
    uint16_t *so = xown(x, malloc((size_t)(ng * R) * 2 + 2));
    int32_t *gi = xown(x, malloc((size_t)C * 4 + 4));
    if (!codes || !sc || !zr || !inv || !qw || !qz || !so || !gi) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        goto done;
    }
    lmp_qpack_unpack(v.codes, R, C, bits, codes);
    memcpy(sc, v.scales, (size_t)(R * ng) * 2);
    memcpy(zr, v.zeros, (size_t)(R * ng) * 2);
    if (rope_heads &&
        ((st = permute_rows(codes, R, (size_t)C, rope_heads, m->cfg.head_dim, 0, t->name, err)) ||
         (st = permute_rows(sc, R, (size_t)ng * 2, rope_heads, m->cfg.head_dim, 0, t->name, err)) ||
         (st = permute_rows(zr, R, (size_t)ng * 2, rope_heads, m->cfg.head_dim, 0, t->name, err))))
        goto done;
    /* inv[i]: the storage column holding input column i */
    for (int64_t j = 0; j < C; j++) inv[v.perm ? v.perm[j] : j] = (int32_t)j;
    for (int64_t i = 0; i < C; i++) gi[i] = (int32_t)(inv[i] / v.group);
    for (int64_t r = 0; r < R; r++)
        for (int64_t i = 0; i < C; i++)
            put_bits(qw + r, (size_t)R, (uint64_t)i * (uint64_t)bits, codes[r * C + inv[i]], bits);
    const int64_t zw = R * bits / 32; /* words per qzeros row */
    for (int64_t g = 0; g < ng; g++)
        for (int64_t r = 0; r < R; r++) {
            int z = (int)lmp_f16_to_f32(zr[r * ng + g]);
            unsigned stored = v2 ? (unsigned)z : (unsigned)(z - 1) & maxq;
            put_bits(qz + g * zw, 1, (uint64_t)r * (uint64_t)bits, stored, bits);
            so[g * R + r] = sc[r * ng + g];
        }
    char name[LMP_NAME_MAX + 64];
    int ok = 1;
    snprintf(name, sizeof name, "%.120s.qweight", prefix);
    ok &= xadd(x, name, LMP_TYPE_I32, 2, C * bits / 32, R, qw);
    snprintf(name, sizeof name, "%.120s.qzeros", prefix);
    ok &= xadd(x, name, LMP_TYPE_I32, 2, ng, zw, qz);
    snprintf(name, sizeof name, "%.120s.scales", prefix);
    ok &= xadd(x, name, LMP_TYPE_F16, 2, ng, R, so);
    snprintf(name, sizeof name, "%.120s.g_idx", prefix);
    ok &= xadd(x, name, LMP_TYPE_I32, 1, C, 0, gi);
    if (!ok) st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
done:
    free(codes);
    free(sc);
    free(zr);
    free(inv);
    return st;
}

/* Checks that the model fits the GPTQ layout and finds its quantization settings. */
static enum lmp_status export_check(const struct lmp_model *m, const char *dir,
                                    struct lmp_gptq_export_report *r, struct lmp_err *err)
{
    const struct lmp_config *c = &m->cfg;
    memset(r, 0, sizeof *r);
    for (int l = 1; l < c->n_layers; l++)
        if (c->layer[l].n_heads != c->layer[0].n_heads ||
            c->layer[l].n_kv_heads != c->layer[0].n_kv_heads || c->layer[l].ffn != c->layer[0].ffn)
            return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                               "%s: layer %d has other head counts or MLP width than layer 0 "
                               "(a pruned model): a Hugging Face config cannot express that; "
                               "export GGUF instead",
                               dir, l);
    if (c->attn_bias && c->head_dim * c->layer[0].n_heads != c->dim)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                           "%s: a Qwen2-style model needs head_dim * heads == dim", dir);
    /* group: every grouped tensor shares one group_size G; a per-channel tensor fits when
     * its input width is at most G (one group either way); all per-channel: -1 */
    int G = 0, sym = 1;
    for (int l = 0; l < c->n_layers; l++) {
        const struct lmp_layer *L = &m->layers[l];
        const struct lmp_tensor *ts[N_LIN] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up,
                                              L->w_down};
        for (int k = 0; k < N_LIN; k++)
            if (lmp_type_is_packed(ts[k]->type) && ts[k]->q.group != ts[k]->shape[1] && !G)
                G = ts[k]->q.group;
    }
    for (int l = 0; l < c->n_layers; l++) {
        const struct lmp_layer *L = &m->layers[l];
        const struct lmp_tensor *ts[N_LIN] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up,
                                              L->w_down};
        for (int k = 0; k < N_LIN; k++) {
            const struct lmp_tensor *t = ts[k];
            if (!lmp_type_is_packed(t->type))
                return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                                   "%s: tensor %s is not quantized; the GPTQ layout needs every "
                                   "linear layer packed (run lmpress quantize first)",
                                   dir, t->name);
            struct lmp_qview v;
            enum lmp_status st = lmp_qview_from_tensor(&v, t, err);
            if (st) return st;
            if (!r->bits) r->bits = v.bits;
            if (v.bits != r->bits)
                return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                                   "%s: tensor %s has %d bits, others %d: quantize_config.json "
                                   "holds one setting", dir, t->name, v.bits, r->bits);
            int pc = v.group == v.cols;
            if (G ? !(v.group == G || (pc && v.cols <= G)) : !pc)
                return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                                   "%s: tensor %s has group %d, others %d: quantize_config.json "
                                   "holds one group_size", dir, t->name, v.group, G);
            if ((v.cols * v.bits) % 32 || (v.rows * v.bits) % 32) {
                int rows_bad = (v.rows * v.bits) % 32 != 0;
                return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                                   "%s: tensor %s [%lld, %lld]: %lld %s of %d-bit codes do not fill "
                                   "whole int32 words, as the GPTQ layout packs them",
                                   dir, t->name, (long long)v.rows, (long long)v.cols,
                                   (long long)(rows_bad ? v.rows : v.cols),
                                   rows_bad ? "rows" : "columns", v.bits);
            }
            r->desc_act |= v.perm != NULL;
            sym &= t->q.sym;
            int maxq = (1 << v.bits) - 1, half = 1 << (v.bits - 1);
            for (int64_t i = 0; i < v.rows * v.n_groups; i++) {
                float z = lmp_f16_to_f32(v.zeros[i]), s = lmp_f16_to_f32(v.scales[i]);
                if (!(z == nearbyintf(z) && z >= 0.0f && z <= (float)maxq) || !isfinite(s))
                    return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                                       "%s: tensor %s: zero point %g (scale %g) is not an "
                                       "integer in [0, %d] as GPTQ's qzeros store",
                                       dir, t->name, (double)z, (double)s, maxq);
                if (z == 0.0f) r->v2 = 1;
                if (z != (float)half) sym = 0;
            }
        }
    }
    r->group = G ? G : -1;
    r->sym = sym;
    r->n_linear = N_LIN * c->n_layers;
    return LMP_OK;
}

/* ---- export: JSON files ---------------------------------------------------------------- */

static cJSON *quant_json(const struct lmp_gptq_export_report *r)
{
    cJSON *q = cJSON_CreateObject();
    if (!q) return NULL;
    cJSON_AddNumberToObject(q, "bits", r->bits);
    cJSON_AddNumberToObject(q, "group_size", r->group);
    cJSON_AddNumberToObject(q, "damp_percent", 0.01);
    cJSON_AddBoolToObject(q, "desc_act", r->desc_act);
    cJSON_AddBoolToObject(q, "static_groups", 0);
    cJSON_AddBoolToObject(q, "sym", r->sym);
    cJSON_AddBoolToObject(q, "true_sequential", 1);
    cJSON_AddStringToObject(q, "model_file_base_name", "model");
    cJSON_AddStringToObject(q, "quant_method", "gptq");
    cJSON_AddStringToObject(q, "checkpoint_format", r->v2 ? "gptq_v2" : "gptq");
    return q;
}

static cJSON *config_json(const struct lmp_model *m, const struct lmp_gptq_export_report *r)
{
    const struct lmp_config *c = &m->cfg;
    const struct lmp_vocab *v = &m->vocab;
    cJSON *j = cJSON_CreateObject(), *a = cJSON_CreateArray();
    if (!j || !a) {
        cJSON_Delete(j);
        cJSON_Delete(a);
        return NULL;
    }
    cJSON_AddItemToArray(a, cJSON_CreateString(c->attn_bias ? "Qwen2ForCausalLM"
                                                             : "LlamaForCausalLM"));
    cJSON_AddItemToObject(j, "architectures", a);
    cJSON_AddStringToObject(j, "model_type", c->attn_bias ? "qwen2" : "llama");
    cJSON_AddNumberToObject(j, "hidden_size", c->dim);
    cJSON_AddNumberToObject(j, "intermediate_size", c->layer[0].ffn);
    cJSON_AddNumberToObject(j, "num_hidden_layers", c->n_layers);
    cJSON_AddNumberToObject(j, "num_attention_heads", c->layer[0].n_heads);
    cJSON_AddNumberToObject(j, "num_key_value_heads", c->layer[0].n_kv_heads);
    cJSON_AddNumberToObject(j, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(j, "vocab_size", c->vocab);
    cJSON_AddNumberToObject(j, "max_position_embeddings", c->max_ctx);
    cJSON_AddNumberToObject(j, "rms_norm_eps", (double)c->norm_eps);
    cJSON_AddNumberToObject(j, "rope_theta", (double)c->rope_theta);
    cJSON_AddBoolToObject(j, "tie_word_embeddings", c->tied);
    cJSON_AddStringToObject(j, "hidden_act", "silu");
    if (!c->attn_bias) cJSON_AddBoolToObject(j, "attention_bias", 0);
    cJSON_AddBoolToObject(j, "mlp_bias", 0);
    if (v->bos >= 0) cJSON_AddNumberToObject(j, "bos_token_id", v->bos);
    if (v->eos >= 0) cJSON_AddNumberToObject(j, "eos_token_id", v->eos);
    if (v->pad >= 0) cJSON_AddNumberToObject(j, "pad_token_id", v->pad);
    cJSON_AddStringToObject(j, "torch_dtype", "float16");
    cJSON *q = quant_json(r);
    if (q) cJSON_AddItemToObject(j, "quantization_config", q);
    return j;
}

/* Token text for tokenizer.json: a llama2.c vocabulary's plain spaces become U+2581 and its
 * "\n<s>\n"-style control texts lose the newlines (as in the GGUF export). NUL-terminated,
 * malloc'd; NULL when the text holds a NUL byte (JSON keys cannot). */
static char *hf_token_text(const struct lmp_vocab *v, int id)
{
    uint32_t len;
    const char *s = lmp_vocab_token(v, id, &len);
    if (memchr(s, 0, len)) return NULL;
    int plain = v->kind == LMP_TOK_SPM && v->space_is_plain;
    if (plain && v->types[id] == LMP_TOKT_CONTROL) {
        while (len > 0 && s[0] == '\n') s++, len--;
        while (len > 0 && s[len - 1] == '\n') len--;
    }
    char *o = malloc((size_t)len * 3 + 1);
    if (!o) return NULL;
    size_t k = 0;
    for (uint32_t i = 0; i < len; i++) {
        if (plain && s[i] == ' ') {
            memcpy(o + k, "\xe2\x96\x81", 3);
            k += 3;
        } else {
            o[k++] = s[i];
        }
    }
    o[k] = 0;
    return o;
}

static cJSON *json_obj(const char *type)
{
    cJSON *o = cJSON_CreateObject();
    if (o) cJSON_AddStringToObject(o, "type", type);
    return o;
}

static cJSON *replace_json(const char *from, const char *to)
{
    cJSON *o = json_obj("Replace"), *p = cJSON_CreateObject();
    if (!o || !p) {
        cJSON_Delete(o);
        cJSON_Delete(p);
        return NULL;
    }
    cJSON_AddStringToObject(p, "String", from);
    cJSON_AddItemToObject(o, "pattern", p);
    cJSON_AddStringToObject(o, "content", to);
    return o;
}

static cJSON *byte_level_json(int prefix_space, int trim, int use_regex)
{
    cJSON *o = json_obj("ByteLevel");
    if (!o) return NULL;
    cJSON_AddBoolToObject(o, "add_prefix_space", prefix_space);
    cJSON_AddBoolToObject(o, "trim_offsets", trim);
    cJSON_AddBoolToObject(o, "use_regex", use_regex);
    return o;
}

/* TemplateProcessing that prepends BOS. */
static cJSON *bos_template(const char *bos, int bos_id)
{
    cJSON *o = json_obj("TemplateProcessing");
    if (!o) return NULL;
    const char *parts[2] = {"single", "pair"};
    for (int p = 0; p < 2; p++) {
        cJSON *a = cJSON_AddArrayToObject(o, parts[p]);
        for (int s = 0; s <= p && a; s++) {
            cJSON *st = cJSON_CreateObject(), *sq = cJSON_CreateObject();
            cJSON *sti = cJSON_AddObjectToObject(st, "SpecialToken");
            cJSON *sqi = cJSON_AddObjectToObject(sq, "Sequence");
            if (sti) {
                cJSON_AddStringToObject(sti, "id", bos);
                cJSON_AddNumberToObject(sti, "type_id", s);
            }
            if (sqi) {
                cJSON_AddStringToObject(sqi, "id", s ? "B" : "A");
                cJSON_AddNumberToObject(sqi, "type_id", s);
            }
            cJSON_AddItemToArray(a, st);
            cJSON_AddItemToArray(a, sq);
        }
    }
    cJSON *sp = cJSON_AddObjectToObject(o, "special_tokens");
    cJSON *e = sp ? cJSON_AddObjectToObject(sp, bos) : NULL;
    if (e) {
        cJSON_AddStringToObject(e, "id", bos);
        cJSON *ids = cJSON_AddArrayToObject(e, "ids"), *toks = cJSON_AddArrayToObject(e, "tokens");
        if (ids) cJSON_AddItemToArray(ids, cJSON_CreateNumber(bos_id));
        if (toks) cJSON_AddItemToArray(toks, cJSON_CreateString(bos));
    }
    return o;
}

/* SentencePiece-style merges for tokenizer.json from the scores: every split of a normal
 * token into two normal tokens, ordered by the merged token's score (highest first), then
 * by the ids of the merged token and of its halves (the order Hugging Face's converter
 * uses). */
struct smerge {
    float score;
    int id, l, r;
};
struct tokref {
    const char *s;
    int id;
};
static int tokref_cmp(const void *a, const void *b)
{
    return strcmp(((const struct tokref *)a)->s, ((const struct tokref *)b)->s);
}
static int smerge_cmp(const void *a, const void *b)
{
    const struct smerge *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    if (x->id != y->id) return x->id < y->id ? -1 : 1;
    if (x->l != y->l) return x->l < y->l ? -1 : 1;
    return (x->r > y->r) - (x->r < y->r);
}

static cJSON *spm_merges(const struct lmp_vocab *v, char *const *txt)
{
    int n = v->n_tokens, nn = 0;
    struct tokref *idx = malloc((size_t)n * sizeof *idx + 1);
    struct smerge *mg = NULL;
    size_t n_mg = 0, cap = 0;
    cJSON *arr = cJSON_CreateArray();
    char *buf = NULL;
    size_t bufcap = 0;
    if (!idx || !arr) goto fail;
    for (int i = 0; i < n; i++)
        if (txt[i] && v->types[i] == LMP_TOKT_NORMAL) idx[nn++] = (struct tokref){txt[i], i};
    qsort(idx, (size_t)nn, sizeof *idx, tokref_cmp);
    for (int k = 0; k < nn; k++) {
        const char *s = idx[k].s;
        size_t len = strlen(s);
        if (len + 1 > bufcap) {
            bufcap = 2 * len + 16;
            char *nb = realloc(buf, bufcap);
            if (!nb) goto fail;
            buf = nb;
        }
        for (size_t cut = 1; cut < len; cut++) {
            if (((unsigned char)s[cut] & 0xc0) == 0x80) continue; /* inside a UTF-8 char */
            memcpy(buf, s, cut);
            buf[cut] = 0;
            struct tokref key = {buf, 0}, *a = bsearch(&key, idx, (size_t)nn, sizeof *idx, tokref_cmp);
            if (!a) continue;
            key.s = s + cut;
            struct tokref *b = bsearch(&key, idx, (size_t)nn, sizeof *idx, tokref_cmp);
            if (!b) continue;
            if (n_mg == cap) {
                cap = cap ? 2 * cap : 1024;
                struct smerge *q = realloc(mg, cap * sizeof *q);
                if (!q) goto fail;
                mg = q;
            }
            mg[n_mg++] = (struct smerge){v->scores[idx[k].id], idx[k].id, a->id, b->id};
        }
    }
    if (n_mg) qsort(mg, n_mg, sizeof *mg, smerge_cmp);
    for (size_t i = 0; i < n_mg; i++) {
        const char *l = txt[mg[i].l], *r = txt[mg[i].r];
        cJSON *item;
        if (strchr(l, ' ') || strchr(r, ' ')) { /* a space would split a "left right" string */
            item = cJSON_CreateArray();
            if (item) {
                cJSON_AddItemToArray(item, cJSON_CreateString(l));
                cJSON_AddItemToArray(item, cJSON_CreateString(r));
            }
        } else {
            size_t need = strlen(l) + strlen(r) + 2;
            if (need > bufcap) {
                bufcap = need;
                char *nb = realloc(buf, bufcap);
                if (!nb) goto fail;
                buf = nb;
            }
            snprintf(buf, need, "%s %s", l, r);
            item = cJSON_CreateString(buf);
        }
        if (!item) goto fail;
        cJSON_AddItemToArray(arr, item);
    }
    free(idx);
    free(mg);
    free(buf);
    return arr;
fail:
    free(idx);
    free(mg);
    free(buf);
    cJSON_Delete(arr);
    return NULL;
}

/* tokenizer.json and tokenizer_config.json for our vocabulary. */
static enum lmp_status tokenizer_json(const struct lmp_model *m, cJSON **tok_out, cJSON **cfg_out,
                                      const char *dir, struct lmp_err *err)
{
    const struct lmp_vocab *v = &m->vocab;
    *tok_out = *cfg_out = NULL;
    if (v->kind != LMP_TOK_SPM && v->kind != LMP_TOK_BPE)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                           "%s: the model has no tokenizer; tokenizer.json needs one", dir);
    int n = v->n_tokens;
    char **txt = calloc((size_t)n + 1, sizeof *txt);
    cJSON *j = cJSON_CreateObject(), *c = cJSON_CreateObject();
    enum lmp_status st = LMP_OK;
    if (!txt || !j || !c) goto oom;
    for (int i = 0; i < n; i++) {
        if (v->types[i] == LMP_TOKT_UNUSED) continue; /* padding rows past the tokenizer */
        if (!(txt[i] = hf_token_text(v, i))) {
            uint32_t len;
            const char *s = lmp_vocab_token(v, i, &len);
            if (memchr(s, 0, len)) {
                st = lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                                 "%s: token %d holds a NUL byte, which tokenizer.json cannot",
                                 dir, i);
                goto done;
            }
            goto oom;
        }
    }
    int spm = v->kind == LMP_TOK_SPM;
    const char *unk = v->unk >= 0 ? txt[v->unk] : NULL;
    const char *bos = v->bos >= 0 ? txt[v->bos] : NULL;
    cJSON_AddStringToObject(j, "version", "1.0");
    cJSON_AddNullToObject(j, "truncation");
    cJSON_AddNullToObject(j, "padding");
    cJSON *added = cJSON_AddArrayToObject(j, "added_tokens");
    for (int i = 0; i < n && added; i++) {
        int t = v->types[i];
        if (!txt[i] || (t != LMP_TOKT_CONTROL && t != LMP_TOKT_UNKNOWN && t != LMP_TOKT_USER))
            continue;
        cJSON *a = cJSON_CreateObject();
        if (!a) goto oom;
        cJSON_AddNumberToObject(a, "id", i);
        cJSON_AddStringToObject(a, "content", txt[i]);
        cJSON_AddBoolToObject(a, "single_word", 0);
        cJSON_AddBoolToObject(a, "lstrip", 0);
        cJSON_AddBoolToObject(a, "rstrip", 0);
        cJSON_AddBoolToObject(a, "normalized", t == LMP_TOKT_USER);
        cJSON_AddBoolToObject(a, "special", t != LMP_TOKT_USER);
        cJSON_AddItemToArray(added, a);
    }
    cJSON *model = json_obj("BPE");
    if (!model) goto oom;
    cJSON_AddNullToObject(model, "dropout");
    if (unk) cJSON_AddStringToObject(model, "unk_token", unk);
    else cJSON_AddNullToObject(model, "unk_token");
    if (spm) {
        cJSON_AddNullToObject(model, "continuing_subword_prefix");
        cJSON_AddNullToObject(model, "end_of_word_suffix");
    } else {
        cJSON_AddStringToObject(model, "continuing_subword_prefix", "");
        cJSON_AddStringToObject(model, "end_of_word_suffix", "");
    }
    cJSON_AddBoolToObject(model, "fuse_unk", spm);
    cJSON_AddBoolToObject(model, "byte_fallback", spm);
    cJSON_AddBoolToObject(model, "ignore_merges", 0);
    cJSON *vo = cJSON_AddObjectToObject(model, "vocab");
    for (int i = 0; i < n && vo; i++)
        if (txt[i]) cJSON_AddNumberToObject(vo, txt[i], i);
    cJSON *merges;
    if (spm) {
        merges = spm_merges(v, txt);
    } else {
        merges = cJSON_CreateArray();
        for (int i = 0; i < v->n_merges && merges; i++) {
            uint32_t a = v->merges_off[i], b = v->merges_off[i + 1];
            char *s = malloc(b - a + 1);
            if (!s) {
                cJSON_Delete(merges);
                merges = NULL;
                break;
            }
            memcpy(s, v->merges + a, b - a);
            s[b - a] = 0;
            cJSON_AddItemToArray(merges, cJSON_CreateString(s));
            free(s);
        }
    }
    if (!vo || !merges) {
        cJSON_Delete(model);
        cJSON_Delete(merges);
        goto oom;
    }
    cJSON_AddItemToObject(model, "merges", merges);

    if (spm) {
        cJSON *norm = json_obj("Sequence"), *nl = norm ? cJSON_AddArrayToObject(norm, "normalizers") : NULL;
        if (nl && v->add_space_prefix) {
            cJSON *pp = json_obj("Prepend");
            if (pp) cJSON_AddStringToObject(pp, "prepend", "\xe2\x96\x81");
            cJSON_AddItemToArray(nl, pp);
        }
        if (nl) cJSON_AddItemToArray(nl, replace_json(" ", "\xe2\x96\x81"));
        cJSON_AddItemToObject(j, "normalizer", norm);
        cJSON_AddNullToObject(j, "pre_tokenizer");
    } else {
        cJSON_AddNullToObject(j, "normalizer");
        if (!v->pre_regex) {
            cJSON_AddItemToObject(j, "pre_tokenizer", byte_level_json(v->add_space_prefix, 1, 1));
        } else {
            cJSON *pre = json_obj("Sequence");
            cJSON *pl = pre ? cJSON_AddArrayToObject(pre, "pretokenizers") : NULL;
            for (const char *p = v->pre_regex; pl && *p;) {
                const char *e = strchr(p, '\n');
                size_t len = e ? (size_t)(e - p) : strlen(p);
                char *re = malloc(len + 1);
                cJSON *sp = json_obj("Split"), *pat = cJSON_CreateObject();
                if (re && sp && pat) {
                    memcpy(re, p, len);
                    re[len] = 0;
                    cJSON_AddStringToObject(pat, "Regex", re);
                    cJSON_AddItemToObject(sp, "pattern", pat);
                    cJSON_AddStringToObject(sp, "behavior", "Isolated");
                    cJSON_AddBoolToObject(sp, "invert", 0);
                    cJSON_AddItemToArray(pl, sp);
                } else {
                    cJSON_Delete(sp);
                    cJSON_Delete(pat);
                }
                free(re);
                p += len + (e ? 1 : 0);
            }
            if (pl) cJSON_AddItemToArray(pl, byte_level_json(v->add_space_prefix, 1, 0));
            cJSON_AddItemToObject(j, "pre_tokenizer", pre);
        }
    }
    if (v->add_bos && bos)
        cJSON_AddItemToObject(j, "post_processor", bos_template(bos, v->bos));
    else if (!spm)
        cJSON_AddItemToObject(j, "post_processor", byte_level_json(1, 0, 1));
    else
        cJSON_AddNullToObject(j, "post_processor");
    if (spm) {
        cJSON *dec = json_obj("Sequence");
        cJSON *dl = dec ? cJSON_AddArrayToObject(dec, "decoders") : NULL;
        if (dl) {
            cJSON_AddItemToArray(dl, replace_json("\xe2\x96\x81", " "));
            cJSON_AddItemToArray(dl, json_obj("ByteFallback"));
            cJSON_AddItemToArray(dl, json_obj("Fuse"));
            if (v->add_space_prefix) {
                cJSON *s = json_obj("Strip");
                if (s) {
                    cJSON_AddStringToObject(s, "content", " ");
                    cJSON_AddNumberToObject(s, "start", 1);
                    cJSON_AddNumberToObject(s, "stop", 0);
                }
                cJSON_AddItemToArray(dl, s);
            }
        }
        cJSON_AddItemToObject(j, "decoder", dec);
    } else {
        cJSON_AddItemToObject(j, "decoder", byte_level_json(1, 1, 1));
    }
    cJSON_AddItemToObject(j, "model", model);

    cJSON_AddBoolToObject(c, "add_bos_token", v->add_bos);
    cJSON_AddBoolToObject(c, "add_eos_token", 0);
    static const char *const keys[4] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    const int ids[4] = {v->bos, v->eos, v->unk, v->pad};
    for (int k = 0; k < 4; k++)
        if (ids[k] >= 0 && txt[ids[k]]) cJSON_AddStringToObject(c, keys[k], txt[ids[k]]);
        else cJSON_AddNullToObject(c, keys[k]);
    cJSON_AddBoolToObject(c, "clean_up_tokenization_spaces", 0);
    cJSON_AddNumberToObject(c, "model_max_length", m->cfg.max_ctx);
    cJSON_AddStringToObject(c, "tokenizer_class", "PreTrainedTokenizerFast");
    if (v->chat_template) cJSON_AddStringToObject(c, "chat_template", v->chat_template);
    goto done;
oom:
    st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
done:
    for (int i = 0; txt && i < n; i++) free(txt[i]);
    free(txt);
    if (st) {
        cJSON_Delete(j);
        cJSON_Delete(c);
        return st;
    }
    *tok_out = j;
    *cfg_out = c;
    return LMP_OK;
}

static enum lmp_status write_json_file(const char *dir, const char *name, const cJSON *j,
                                       struct lmp_err *err)
{
    char path[PATH_CAP];
    enum lmp_status st = join_path(path, dir, name, err);
    if (st) return st;
    char *s = cJSON_Print(j);
    if (!s) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    struct lmp_outfile of;
    if ((st = lmp_out_open(&of, path, err))) {
        free(s);
        return st;
    }
    if ((st = lmp_out_write(&of, s, strlen(s), err)) || (st = lmp_out_write(&of, "\n", 1, err))) {
        lmp_out_abort(&of);
        free(s);
        return st;
    }
    free(s);
    return lmp_out_commit(&of, err);
}

static const char *const out_files[] = {"model.safetensors", "config.json",
                                        "quantize_config.json", "tokenizer.json",
                                        "tokenizer_config.json"};
#define N_OUT_FILES ((int)(sizeof out_files / sizeof out_files[0]))

static void remove_tmpdir(const char *tmp)
{
    char p[PATH_CAP];
    for (int i = 0; i < N_OUT_FILES; i++)
        if (join_path(p, tmp, out_files[i], NULL) == LMP_OK) unlink(p);
    rmdir(tmp);
}

enum lmp_status lmp_ckpt_save_gptq_dir(const struct lmp_model *m, const char *dir,
                                       const struct lmp_gptq_export_opts *o,
                                       struct lmp_gptq_export_report *rep, struct lmp_err *err)
{
    int dense_type = o ? o->dense_type : -1;
    if (dense_type >= 0 && !lmp_type_is_float((enum lmp_type)dense_type))
        return lmp_err_set(err, LMP_ERR_ARG, "%s: dense tensors must be F32, F16 or BF16", dir);
    if (!m->layers || !m->tok_embd || !m->out_norm)
        return lmp_err_set(err, LMP_ERR_ARG, "%s: the model is not bound", dir);
    struct lmp_gptq_export_report r;
    enum lmp_status st = export_check(m, dir, &r, err);
    if (st) return st;
    struct stat sb;
    if (stat(dir, &sb) == 0 && !S_ISDIR(sb.st_mode))
        return lmp_err_set(err, LMP_ERR_IO, "%s exists and is not a directory", dir);

    /* 1. all tensors, in memory */
    struct xset x = {0};
    cJSON *cfg = NULL, *qcfg = NULL, *tok = NULL, *tcfg = NULL;
    char tmp[PATH_CAP], path[PATH_CAP];
    int made_tmp = 0;
    const struct lmp_config *c = &m->cfg;
    if ((st = export_dense(&x, m, m->tok_embd, HF_EMB, 0, dense_type, dir, err)) ||
        (st = export_dense(&x, m, m->out_norm, HF_NORM, 0, dense_type, dir, err)))
        goto done;
    if (!c->tied && (st = export_dense(&x, m, m->out, HF_HEAD, 0, dense_type, dir, err))) goto done;
    for (int l = 0; l < c->n_layers; l++) {
        const struct lmp_layer *L = &m->layers[l];
        const struct lmp_tensor *ts[N_LIN] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up,
                                              L->w_down};
        const struct lmp_tensor *ds[N_LDENSE] = {L->attn_norm, L->ffn_norm, L->bq, L->bk, L->bv};
        char name[LMP_NAME_MAX + 64];
        for (int k = 0; k < N_LIN; k++) {
            int heads = lin[k].rope == 1 ? c->layer[l].n_heads
                        : lin[k].rope == 2 ? c->layer[l].n_kv_heads : 0;
            snprintf(name, sizeof name, "model.layers.%d.%s", l, lin[k].hf);
            if ((st = export_linear(&x, m, ts[k], name, heads, r.v2, err))) goto done;
        }
        for (int k = 0; k < N_LDENSE; k++) {
            if (!ds[k]) continue;
            int heads = ldense[k].rope == 1 ? c->layer[l].n_heads
                        : ldense[k].rope == 2 ? c->layer[l].n_kv_heads : 0;
            snprintf(name, sizeof name, "model.layers.%d.%s", l, ldense[k].hf);
            if ((st = export_dense(&x, m, ds[k], name, heads, dense_type, dir, err))) goto done;
        }
    }
    if ((st = tokenizer_json(m, &tok, &tcfg, dir, err))) goto done;
    cfg = config_json(m, &r);
    qcfg = quant_json(&r);
    if (!cfg || !qcfg) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        goto done;
    }

    /* 2. the files, in DIR.tmp.<pid>, renamed into place */
    size_t dl = strlen(dir);
    while (dl > 1 && dir[dl - 1] == '/') dl--;
    int nt = snprintf(tmp, sizeof tmp, "%.*s.tmp.%ld", (int)dl, dir, (long)getpid());
    if (nt < 0 || nt >= (int)sizeof tmp) {
        st = lmp_err_set(err, LMP_ERR_ARG, "%s: path too long", dir);
        goto done;
    }
    if (mkdir(tmp, 0755) != 0) {
        st = lmp_err_set(err, LMP_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        goto done;
    }
    made_tmp = 1;
    static const char *const meta[2] = {"format", "pt"};
    if ((st = join_path(path, tmp, "model.safetensors", err)) ||
        (st = lmp_st_write(path, x.t, x.n, meta, 1, err)) ||
        (st = write_json_file(tmp, "config.json", cfg, err)) ||
        (st = write_json_file(tmp, "quantize_config.json", qcfg, err)) ||
        (st = write_json_file(tmp, "tokenizer.json", tok, err)) ||
        (st = write_json_file(tmp, "tokenizer_config.json", tcfg, err)))
        goto done;
    if (rename(tmp, dir) != 0) {
        st = lmp_err_set(err, LMP_ERR_IO, "%s: cannot rename %s into place: %s", dir, tmp,
                         strerror(errno));
        goto done;
    }
    made_tmp = 0;
    if (rep) *rep = r;
done:
    if (made_tmp) remove_tmpdir(tmp);
    xset_free(&x);
    cJSON_Delete(cfg);
    cJSON_Delete(qcfg);
    cJSON_Delete(tok);
    cJSON_Delete(tcfg);
    return st;
}

/* ---- import ------------------------------------------------------------------------------ */

struct qcfg {
    int bits, group; /* group -1: per channel */
    int sym, v2;
    char base[128]; /* model_file_base_name, or "" */
};

static enum lmp_status read_qcfg(const char *dir, struct qcfg *q, struct lmp_err *err)
{
    char path[PATH_CAP];
    cJSON *root = NULL;
    const cJSON *j;
    enum lmp_status st;
    memset(q, 0, sizeof *q);
    if ((st = join_path(path, dir, "quantize_config.json", err))) return st;
    if (file_exists(path)) {
        if ((st = read_json(path, &root, err))) return st;
        j = root;
    } else {
        if ((st = join_path(path, dir, "config.json", err))) return st;
        if ((st = read_json(path, &root, err))) return st;
        j = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
        if (!cJSON_IsObject(j)) {
            cJSON_Delete(root);
            return lmp_err_set(err, LMP_ERR_FORMAT, "%s: no quantization_config object", path);
        }
    }
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "bits");
    const cJSON *g = cJSON_GetObjectItemCaseSensitive(j, "group_size");
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "sym");
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(j, "checkpoint_format");
    const cJSON *qm = cJSON_GetObjectItemCaseSensitive(j, "quant_method");
    const cJSON *bn = cJSON_GetObjectItemCaseSensitive(j, "model_file_base_name");
    if (!cJSON_IsNumber(b) || !lmp_qpack_bits_ok((int)b->valuedouble) ||
        b->valuedouble != (int)b->valuedouble) {
        st = lmp_err_set(err, LMP_ERR_UNSUPPORTED, "%s: bits must be 2, 3, 4 or 8", path);
    } else if (!cJSON_IsNumber(g) || g->valuedouble != floor(g->valuedouble) ||
               !(g->valuedouble == -1 || (g->valuedouble >= 1 && g->valuedouble <= 1 << 24))) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: group_size must be -1 or a positive integer",
                         path);
    } else if (s && !cJSON_IsBool(s)) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: sym must be true or false", path);
    } else if (qm && !(cJSON_IsString(qm) && strcmp(qm->valuestring, "gptq") == 0)) {
        st = lmp_err_set(err, LMP_ERR_UNSUPPORTED, "%s: quant_method %s is not supported (gptq)",
                         path, cJSON_IsString(qm) ? qm->valuestring : "?");
    } else if (f && !(cJSON_IsString(f) && (strcmp(f->valuestring, "gptq") == 0 ||
                                            strcmp(f->valuestring, "gptq_v2") == 0))) {
        st = lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                         "%s: checkpoint_format %s is not supported (gptq, gptq_v2)", path,
                         cJSON_IsString(f) ? f->valuestring : "?");
    } else {
        q->bits = (int)b->valuedouble;
        q->group = (int)g->valuedouble;
        q->sym = !s || cJSON_IsTrue(s);
        q->v2 = f && strcmp(f->valuestring, "gptq_v2") == 0;
        if (cJSON_IsString(bn) && bn->valuestring[0] && !strchr(bn->valuestring, '/') &&
            strlen(bn->valuestring) < sizeof q->base - 16)
            snprintf(q->base, sizeof q->base, "%s", bn->valuestring);
    }
    cJSON_Delete(root);
    return st;
}

int lmp_gptq_is_dir(const char *dir)
{
    char path[PATH_CAP];
    if (join_path(path, dir, "quantize_config.json", NULL)) return 0;
    if (file_exists(path)) return 1;
    if (join_path(path, dir, "config.json", NULL) || !file_exists(path)) return 0;
    cJSON *root = NULL;
    if (read_json(path, &root, NULL)) return 0;
    const cJSON *qm = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(root, "quantization_config"), "quant_method");
    int yes = cJSON_IsString(qm) && strcmp(qm->valuestring, "gptq") == 0;
    cJSON_Delete(root);
    return yes;
}

/* The safetensors files: the index's shards, model.safetensors, <model_file_base_name>
 * .safetensors, or the directory's only *.safetensors file. */
struct shards {
    int n;
    struct lmp_st_file *f;
};

static void shards_close(struct shards *s)
{
    for (int i = 0; i < s->n; i++) lmp_st_close(&s->f[i]);
    free(s->f);
    memset(s, 0, sizeof *s);
}

static enum lmp_status shards_add(struct shards *s, const char *dir, const char *name,
                                  struct lmp_err *err)
{
    char path[PATH_CAP];
    enum lmp_status st = join_path(path, dir, name, err);
    if (st) return st;
    for (int i = 0; i < s->n; i++)
        if (strcmp(lmp_basename(s->f[i].path), name) == 0) return LMP_OK;
    struct lmp_st_file *q = realloc(s->f, (size_t)(s->n + 1) * sizeof *q);
    if (!q) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    s->f = q;
    memset(&s->f[s->n], 0, sizeof s->f[s->n]);
    if ((st = lmp_st_open(&s->f[s->n], path, err))) return st;
    s->n++;
    return LMP_OK;
}

static enum lmp_status shards_open(struct shards *s, const char *dir, const struct qcfg *q,
                                   struct lmp_err *err)
{
    char path[PATH_CAP], name[320];
    enum lmp_status st;
    memset(s, 0, sizeof *s);
    if ((st = join_path(path, dir, "model.safetensors.index.json", err))) return st;
    if (file_exists(path)) {
        cJSON *idx;
        if ((st = read_json(path, &idx, err))) return st;
        const cJSON *wm = cJSON_GetObjectItemCaseSensitive(idx, "weight_map"), *x;
        if (!cJSON_IsObject(wm)) st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: no weight_map", path);
        cJSON_ArrayForEach(x, wm)
        {
            if (st) break;
            if (!cJSON_IsString(x) || !x->valuestring[0] || strchr(x->valuestring, '/') ||
                !strcmp(x->valuestring, ".") || !strcmp(x->valuestring, ".."))
                st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: bad shard file name", path);
            else
                st = shards_add(s, dir, x->valuestring, err);
        }
        cJSON_Delete(idx);
        if (st) shards_close(s);
        return st;
    }
    const char *cands[2] = {"model.safetensors", NULL};
    if (q->base[0]) {
        snprintf(name, sizeof name, "%s.safetensors", q->base);
        cands[1] = name;
    }
    for (int i = 0; i < 2; i++) {
        if (!cands[i] || join_path(path, dir, cands[i], err) || !file_exists(path)) continue;
        if ((st = shards_add(s, dir, cands[i], err))) shards_close(s);
        return st;
    }
    /* the only *.safetensors file */
    DIR *d = opendir(dir);
    if (!d) return lmp_err_set(err, LMP_ERR_IO, "%s: cannot open: %s", dir, strerror(errno));
    struct dirent *e;
    int found = 0;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n > 12 && strcmp(e->d_name + n - 12, ".safetensors") == 0 && n < sizeof name) {
            found++;
            memcpy(name, e->d_name, n + 1);
        }
    }
    closedir(d);
    if (found != 1)
        return lmp_err_set(err, LMP_ERR_IO,
                           "%s: %s safetensors file (model.safetensors or the one named by "
                           "model_file_base_name)",
                           dir, found ? "more than one" : "no");
    if ((st = shards_add(s, dir, name, err))) shards_close(s);
    return st;
}

static const struct lmp_st_tensor *sfind(const struct shards *s, const char *name,
                                         const struct lmp_st_file **f)
{
    for (int i = 0; i < s->n; i++) {
        const struct lmp_st_tensor *t = lmp_st_find(&s->f[i], name);
        if (t) {
            if (f) *f = &s->f[i];
            return t;
        }
    }
    return NULL;
}

static int shape_is(const struct lmp_st_tensor *t, int nd, int64_t a, int64_t b)
{
    return t->n_dims == nd && t->shape[0] == a && (nd == 1 || t->shape[1] == b);
}

/* A dense tensor into an owned F32 model tensor (RoPE rows permuted to interleaved). */
static enum lmp_status import_dense(struct lmp_model *m, const struct shards *s, const char *hf,
                                    const char *ours, int nd, int64_t rows, int64_t cols,
                                    int rope_heads, const char *dir, struct lmp_err *err)
{
    const struct lmp_st_file *f = NULL;
    const struct lmp_st_tensor *st_t = sfind(s, hf, &f);
    if (!st_t) return lmp_err_set(err, LMP_ERR_FORMAT, "%s: tensor %s not found", dir, hf);
    if (!shape_is(st_t, nd, rows, cols))
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: tensor %s: shape does not match config.json "
                           "(expected [%lld%s%lld])", f->path, hf, (long long)rows,
                           nd == 2 ? ", " : "", nd == 2 ? (long long)cols : 0LL);
    struct lmp_tensor *t = lmp_model_add_tensor(m, ours, LMP_TYPE_F32, nd, rows, cols);
    if (!t) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    enum lmp_status st = lmp_st_to_f32(f, st_t, t->data, err);
    if (st) return st;
    const float *v = t->data;
    for (int64_t i = 0; i < lmp_tensor_nelem(t); i++)
        if (!isfinite(v[i]))
            return lmp_err_set(err, LMP_ERR_FORMAT, "%s: tensor %s has a non-finite value",
                               f->path, hf);
    if (rope_heads) return lmp_rope_permute_rows(t, rope_heads, m->cfg.head_dim, 1, err);
    return LMP_OK;
}

/* One GPTQ linear into a packed model tensor. */
static enum lmp_status import_linear(struct lmp_model *m, const struct shards *s,
                                     const char *prefix, const char *ours, int64_t R, int64_t C,
                                     int rope_heads, const struct qcfg *q, const char *dir,
                                     struct lmp_err *err)
{
    char nm[LMP_NAME_MAX + 80];
    const struct lmp_st_file *f = NULL, *fz = NULL, *fs = NULL, *fg = NULL;
    snprintf(nm, sizeof nm, "%.120s.qweight", prefix);
    const struct lmp_st_tensor *tw = sfind(s, nm, &f);
    if (!tw) { /* a linear left in floats */
        snprintf(nm, sizeof nm, "%.120s.weight", prefix);
        return import_dense(m, s, nm, ours, 2, R, C, rope_heads, dir, err);
    }
    const int bits = q->bits;
    const unsigned maxq = (1u << bits) - 1u;
    if ((C * bits) % 32 || (R * bits) % 32)
        return lmp_err_set(err, LMP_ERR_FORMAT,
                           "%s: %s: [%lld, %lld] does not pack into whole int32 words at %d bits",
                           dir, prefix, (long long)R, (long long)C, bits);
    int group = q->group < 0 || q->group > C ? (int)C : q->group;
    int64_t ng = (C + group - 1) / group;
    snprintf(nm, sizeof nm, "%.120s.qzeros", prefix);
    const struct lmp_st_tensor *tz = sfind(s, nm, &fz);
    snprintf(nm, sizeof nm, "%.120s.scales", prefix);
    const struct lmp_st_tensor *ts = sfind(s, nm, &fs);
    snprintf(nm, sizeof nm, "%.120s.g_idx", prefix);
    const struct lmp_st_tensor *tg = sfind(s, nm, &fg);
    if (!tz || !ts)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: %s has a qweight but no %s", dir, prefix,
                           tz ? "scales" : "qzeros");
    if (tw->dtype != LMP_ST_I32 || !shape_is(tw, 2, C * bits / 32, R))
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: %s.qweight must be I32 [%lld, %lld]",
                           f->path, prefix, (long long)(C * bits / 32), (long long)R);
    if (tz->dtype != LMP_ST_I32 || !shape_is(tz, 2, ng, R * bits / 32))
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: %s.qzeros must be I32 [%lld, %lld]",
                           fz->path, prefix, (long long)ng, (long long)(R * bits / 32));
    if (ts->dtype != LMP_ST_F16 || !shape_is(ts, 2, ng, R))
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: %s.scales must be F16 [%lld, %lld]",
                           fs->path, prefix, (long long)ng, (long long)R);
    if (tg && (tg->dtype != LMP_ST_I32 || !shape_is(tg, 1, C, 0)))
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: %s.g_idx must be I32 [%lld]", fg->path,
                           prefix, (long long)C);

    enum lmp_status st = LMP_OK;
    int32_t *gidx = malloc((size_t)C * 4), *perm = malloc((size_t)C * 4);
    int64_t *count = calloc((size_t)ng + 1, sizeof *count);
    uint8_t *codes = malloc((size_t)(R * C));
    uint16_t *sc = malloc((size_t)(R * ng) * 2 + 2), *zr = malloc((size_t)(R * ng) * 2 + 2);
    uint8_t *packed = NULL;
    if (!gidx || !perm || !count || !codes || !sc || !zr) goto oom;

    /* g_idx -> our storage order: columns grouped by g_idx, increasing input order inside */
    int natural = 1;
    for (int64_t i = 0; i < C; i++) {
        int32_t g = (int32_t)(i / group);
        if (tg) memcpy(&g, tg->data + 4 * i, 4);
        if (g < 0 || g >= ng) {
            st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: %s.g_idx[%lld] = %d is not a group "
                             "(0..%lld)", fg->path, prefix, (long long)i, (int)g, (long long)(ng - 1));
            goto done;
        }
        gidx[i] = g;
        count[g]++;
        natural &= g == i / group;
    }
    if (!natural) {
        int64_t acc = 0;
        for (int64_t g = 0; g < ng; g++) {
            int64_t want = g < ng - 1 ? group : C - (ng - 1) * group, c0 = count[g];
            if (c0 != want) {
                st = lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                                 "%s: %s.g_idx puts %lld columns in group %lld, not %lld: only "
                                 "whole groups of group_size are supported",
                                 fg->path, prefix, (long long)c0, (long long)g, (long long)want);
                goto done;
            }
            count[g] = acc;
            acc += c0;
        }
        for (int64_t i = 0; i < C; i++) perm[count[gidx[i]]++] = (int32_t)i;
    }
    for (int64_t r = 0; r < R; r++)
        for (int64_t j = 0; j < C; j++) {
            int64_t i = natural ? j : perm[j];
            codes[r * C + j] = (uint8_t)get_bits(tw->data + 4 * r, (size_t)R,
                                                 (uint64_t)i * (uint64_t)bits, bits);
        }
    const int64_t zw = R * bits / 32;
    for (int64_t g = 0; g < ng; g++)
        for (int64_t r = 0; r < R; r++) {
            unsigned z = get_bits(tz->data + 4 * (g * zw), 1, (uint64_t)r * (uint64_t)bits, bits);
            if (!q->v2) z += 1; /* v1 stores zero - 1; the reference loaders add 1 unmasked */
            zr[r * ng + g] = lmp_f32_to_f16((float)z);
            uint16_t h;
            memcpy(&h, ts->data + 2 * (g * R + r), 2);
            if (!isfinite(lmp_f16_to_f32(h))) {
                st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: %s.scales has a non-finite value",
                                 fs->path, prefix);
                goto done;
            }
            sc[r * ng + g] = h;
        }
    (void)maxq;
    if (rope_heads &&
        ((st = permute_rows(codes, R, (size_t)C, rope_heads, m->cfg.head_dim, 1, ours, err)) ||
         (st = permute_rows(sc, R, (size_t)ng * 2, rope_heads, m->cfg.head_dim, 1, ours, err)) ||
         (st = permute_rows(zr, R, (size_t)ng * 2, rope_heads, m->cfg.head_dim, 1, ours, err))))
        goto done;
    size_t cb, pb;
    if ((st = lmp_qpack_sizes(R, C, bits, group, &cb, &pb, err))) goto done;
    if (!(packed = calloc(1, cb + 1))) goto oom;
    if ((st = lmp_qpack_pack(codes, R, C, bits, packed, err))) goto done;
    struct lmp_tensor *t = lmp_model_add_tensor(m, ours, LMP_TYPE_U8, 2, 1, 1);
    if (!t) goto oom;
    free(t->data);
    t->data = packed;
    packed = NULL;
    t->owned = 1;
    t->nbytes = cb;
    t->type = lmp_qpack_type(bits);
    t->shape[0] = R;
    t->shape[1] = C;
    t->q.bits = bits;
    t->q.group = group;
    t->q.sym = q->sym;
    t->q.scales = sc;
    t->q.zeros = zr;
    sc = zr = NULL;
    if (!natural) {
        t->q.perm = perm;
        perm = NULL;
    }
    goto done;
oom:
    st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
done:
    free(gidx);
    free(perm);
    free(count);
    free(codes);
    free(sc);
    free(zr);
    free(packed);
    return st;
}

/* A bias present on a linear that has none in our model: zeros are fine, anything else not. */
static enum lmp_status check_zero_bias(const struct shards *s, const char *prefix, const char *dir,
                                       struct lmp_err *err)
{
    char nm[LMP_NAME_MAX + 80];
    snprintf(nm, sizeof nm, "%.120s.bias", prefix);
    const struct lmp_st_file *f;
    const struct lmp_st_tensor *t = sfind(s, nm, &f);
    if (!t) return LMP_OK;
    if (t->n_dims != 1 || t->nelem > LMP_MAX_DIM * 8)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: tensor %s has a bad shape", f->path, nm);
    float *v = malloc((size_t)t->nelem * 4 + 4);
    if (!v) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    enum lmp_status st = lmp_st_to_f32(f, t, v, err);
    for (int64_t i = 0; i < t->nelem && !st; i++)
        if (v[i] != 0.0f)
            st = lmp_err_set(err, LMP_ERR_UNSUPPORTED, "%s: tensor %s: biases on this linear "
                             "layer are not supported", f->path, nm);
    free(v);
    (void)dir;
    return st;
}

enum lmp_status lmp_ckpt_load_gptq_dir(const char *dir, struct lmp_model **out,
                                       struct lmp_err *err)
{
    *out = NULL;
    struct qcfg q;
    struct shards s = {0};
    enum lmp_status st = read_qcfg(dir, &q, err);
    if (st) return st;
    struct lmp_model *m = lmp_model_new();
    if (!m) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    snprintf(m->source_format, sizeof m->source_format, "gptq");
    if ((st = lmp_hf_load_meta(dir, m, err))) goto fail;
    if ((st = shards_open(&s, dir, &q, err))) goto fail;
    const struct lmp_config *c = &m->cfg;
    int64_t D = c->dim, V = c->vocab, HD = c->head_dim;
    if ((st = import_dense(m, &s, HF_EMB, LMP_N_TOKEMBD, 2, V, D, 0, dir, err)) ||
        (st = import_dense(m, &s, HF_NORM, LMP_N_OUTNORM, 1, D, 1, 0, dir, err)))
        goto fail;
    if (!c->tied && !sfind(&s, HF_HEAD, NULL) && sfind(&s, "lm_head.qweight", NULL)) {
        st = lmp_err_set(err, LMP_ERR_UNSUPPORTED, "%s: a quantized lm_head is not supported", dir);
        goto fail;
    }
    if (!c->tied && (st = import_dense(m, &s, HF_HEAD, LMP_N_OUTPUT, 2, V, D, 0, dir, err)))
        goto fail;
    for (int l = 0; l < c->n_layers; l++) {
        const struct lmp_layer_cfg *lc = &c->layer[l];
        int64_t Q = lc->n_heads * HD, KV = lc->n_kv_heads * HD, F = lc->ffn;
        const int64_t rc[N_LIN][2] = {{Q, D}, {KV, D}, {KV, D}, {D, Q}, {F, D}, {F, D}, {D, F}};
        char prefix[LMP_NAME_MAX + 64], ours[LMP_NAME_MAX];
        for (int k = 0; k < N_LIN; k++) {
            int heads = lin[k].rope == 1 ? lc->n_heads : lin[k].rope == 2 ? lc->n_kv_heads : 0;
            snprintf(prefix, sizeof prefix, "model.layers.%d.%s", l, lin[k].hf);
            snprintf(ours, sizeof ours, "blk.%d.%s", l, lin[k].ours);
            if ((st = import_linear(m, &s, prefix, ours, rc[k][0], rc[k][1], heads, &q, dir, err)))
                goto fail;
            if ((!c->attn_bias || k > 2) && (st = check_zero_bias(&s, prefix, dir, err))) goto fail;
        }
        for (int k = 0; k < N_LDENSE; k++) {
            if (ldense[k].bias && !c->attn_bias) continue;
            int64_t rows = ldense[k].rope == 1 ? Q : ldense[k].bias ? KV : D;
            int heads = ldense[k].rope == 1 ? lc->n_heads : ldense[k].rope == 2 ? lc->n_kv_heads : 0;
            snprintf(prefix, sizeof prefix, "model.layers.%d.%s", l, ldense[k].hf);
            snprintf(ours, sizeof ours, "blk.%d.%s", l, ldense[k].ours);
            if ((st = import_dense(m, &s, prefix, ours, 1, rows, 1, heads, dir, err))) goto fail;
        }
    }
    shards_close(&s);
    if ((st = lmp_model_bind(m, dir, err))) goto fail;
    *out = m;
    return LMP_OK;
fail:
    shards_close(&s);
    lmp_model_free(m);
    return st;
}
