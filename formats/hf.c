/* Hugging Face model directories: config.json, model.safetensors (or the shards listed in
 * model.safetensors.index.json), tokenizer.json and optionally tokenizer_config.json.
 *
 * Llama-shaped decoders only: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM (q/k/v
 * biases), or any config whose model_type is llama/mistral/qwen2. Weights are converted to
 * owned F32 and renamed to our GGUF-style names; Q/K rows (and Q/K biases) are permuted from
 * HF's rotate-half order to our interleaved RoPE order (see model.h).
 *
 * Not modelled, on purpose: Mistral's sliding_window and Qwen2's use_sliding_window (exact
 * for contexts up to the window, which is all the tools here use); rope_scaling other than
 * "default" is rejected. */
#include "gptq_st.h"
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define PATH_CAP 4096

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
    return stat(path, &sb) == 0;
}

/* Copies s for a one-line message: at most 80 bytes, control characters as '?'. */
static const char *printable(char out[84], const char *s)
{
    size_t i = 0;
    for (; s && s[i] && i < 80; i++) out[i] = (unsigned char)s[i] < 0x20 ? '?' : s[i];
    out[i] = 0;
    if (s && s[i]) snprintf(out + i, 4, "...");
    return out;
}

/* Reads and parses a JSON file; only whitespace may follow the value. */
static enum lmp_status read_json(const char *path, cJSON **out, struct lmp_err *err)
{
    *out = NULL;
    char *text = NULL;
    size_t len = 0;
    enum lmp_status st = lmp_read_text(path, &text, &len, err);
    if (st) return st;
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithOpts(text, &end, 0);
    if (!j) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: not valid JSON (near byte %ld)", path,
                         end ? (long)(end - text) : -1L);
    } else {
        for (const char *q = end; q < text + len; q++)
            if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r') {
                st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: trailing bytes after the JSON value "
                                 "(byte %ld)", path, (long)(q - text));
                break;
            }
        if (!st && !cJSON_IsObject(j))
            st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: top level is not a JSON object", path);
    }
    free(text);
    if (st) {
        cJSON_Delete(j);
        return st;
    }
    *out = j;
    return LMP_OK;
}

/* ---- config.json -------------------------------------------------------------------- */

struct hf_config {
    int dim, n_layers, n_heads, n_kv_heads, ffn, head_dim, vocab, max_ctx;
    double rope_theta, norm_eps;
    int tied, attn_bias;
    int bos_id, eos_id, pad_id; /* from config.json, -1 when absent */
};

static int is_null(const cJSON *j) { return !j || cJSON_IsNull(j); }

static enum lmp_status get_int(const cJSON *root, const char *key, int required, int def, int lo,
                               int hi, int *out, const char *path, struct lmp_err *err)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (is_null(j)) {
        if (required) return lmp_err_set(err, LMP_ERR_FORMAT, "%s: missing field %s", path, key);
        *out = def;
        return LMP_OK;
    }
    if (!cJSON_IsNumber(j) || j->valuedouble != floor(j->valuedouble))
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: field %s must be an integer", path, key);
    if (!(j->valuedouble >= lo && j->valuedouble <= hi))
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: field %s = %g out of range [%d, %d]", path,
                           key, j->valuedouble, lo, hi);
    *out = (int)j->valuedouble;
    return LMP_OK;
}

/* A number in (lo, hi), exclusive. */
static enum lmp_status get_num(const cJSON *root, const char *key, double def, double lo,
                               double hi, double *out, const char *path, struct lmp_err *err)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (is_null(j)) {
        *out = def;
        return LMP_OK;
    }
    if (!cJSON_IsNumber(j))
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: field %s must be a number", path, key);
    if (!(j->valuedouble > lo && j->valuedouble < hi))
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: field %s = %g out of range", path, key,
                           j->valuedouble);
    *out = j->valuedouble;
    return LMP_OK;
}

static enum lmp_status get_bool(const cJSON *root, const char *key, int def, int *out,
                                const char *path, struct lmp_err *err)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (is_null(j)) {
        *out = def;
        return LMP_OK;
    }
    if (!cJSON_IsBool(j))
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: field %s must be true or false", path, key);
    *out = cJSON_IsTrue(j);
    return LMP_OK;
}

/* bos_token_id and friends: an integer, a list of integers (the first is used) or null. */
static enum lmp_status get_token_id(const cJSON *root, const char *key, int *out,
                                    const char *path, struct lmp_err *err)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    *out = -1;
    if (cJSON_IsArray(j)) j = cJSON_GetArrayItem(j, 0);
    if (is_null(j)) return LMP_OK;
    if (!cJSON_IsNumber(j) || j->valuedouble != floor(j->valuedouble) || j->valuedouble < 0 ||
        j->valuedouble >= LMP_MAX_VOCAB)
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: field %s must be a token id", path, key);
    *out = (int)j->valuedouble;
    return LMP_OK;
}

static enum lmp_status parse_config(const char *path, struct hf_config *hc, struct lmp_err *err)
{
    static const char *const archs[] = {"LlamaForCausalLM", "MistralForCausalLM",
                                        "Qwen2ForCausalLM"};
    static const char *const types[] = {"llama", "mistral", "qwen2"};
    memset(hc, 0, sizeof *hc);
    cJSON *root;
    enum lmp_status st = read_json(path, &root, err);
    if (st) return st;
    char pn[84];

    const cJSON *ja = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const cJSON *jt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if ((!is_null(ja) && !cJSON_IsArray(ja)) || (!is_null(jt) && !cJSON_IsString(jt))) {
        st = lmp_err_set(err, LMP_ERR_FORMAT,
                         "%s: architectures must be a list and model_type a string", path);
        goto done;
    }
    int known = 0, qwen2 = 0;
    const char *first_arch = NULL;
    const cJSON *x;
    if (cJSON_IsArray(ja)) cJSON_ArrayForEach(x, ja)
        {
            if (!cJSON_IsString(x)) {
                st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: architectures must hold strings", path);
                goto done;
            }
            if (!first_arch) first_arch = x->valuestring;
            for (int i = 0; i < 3; i++)
                if (strcmp(x->valuestring, archs[i]) == 0) {
                    known = 1;
                    qwen2 |= i == 2;
                }
        }
    if (cJSON_IsString(jt))
        for (int i = 0; i < 3; i++)
            if (strcmp(jt->valuestring, types[i]) == 0) {
                known = 1;
                qwen2 |= i == 2;
            }
    if (!known) {
        const char *what = first_arch ? first_arch
                           : cJSON_IsString(jt) ? jt->valuestring
                                                : "(none given)";
        st = lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                         "%s: architecture %s not supported (Llama, Mistral, Qwen2 only)", path,
                         printable(pn, what));
        goto done;
    }

    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (!is_null(act) && !(cJSON_IsString(act) && strcmp(act->valuestring, "silu") == 0)) {
        st = lmp_err_set(err, LMP_ERR_UNSUPPORTED, "%s: hidden_act %s not supported (silu only)",
                         path, cJSON_IsString(act) ? printable(pn, act->valuestring) : "?");
        goto done;
    }
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (!is_null(rs)) {
        const cJSON *rt = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
        if (!cJSON_IsString(rt)) rt = cJSON_GetObjectItemCaseSensitive(rs, "type");
        if (!cJSON_IsString(rt) || strcmp(rt->valuestring, "default") != 0) {
            st = lmp_err_set(err, LMP_ERR_UNSUPPORTED, "%s: rope_scaling (%s) not supported", path,
                             cJSON_IsString(rt) ? printable(pn, rt->valuestring) : "?");
            goto done;
        }
    }
    int attn_bias = 0, mlp_bias = 0;
    if ((st = get_bool(root, "attention_bias", 0, &attn_bias, path, err)) ||
        (st = get_bool(root, "mlp_bias", 0, &mlp_bias, path, err)))
        goto done;
    if ((attn_bias && !qwen2) || mlp_bias) {
        /* Llama's attention_bias also puts a bias on o_proj, which the runtime lacks */
        st = lmp_err_set(err, LMP_ERR_UNSUPPORTED, "%s: %s not supported", path,
                         mlp_bias ? "mlp_bias" : "attention_bias (o_proj bias)");
        goto done;
    }
    hc->attn_bias = qwen2;

    if ((st = get_int(root, "hidden_size", 1, 0, 1, LMP_MAX_DIM, &hc->dim, path, err)) ||
        (st = get_int(root, "num_hidden_layers", 1, 0, 1, LMP_MAX_LAYERS, &hc->n_layers, path,
                      err)) ||
        (st = get_int(root, "num_attention_heads", 1, 0, 1, 65536, &hc->n_heads, path, err)) ||
        (st = get_int(root, "num_key_value_heads", 0, hc->n_heads, 1, 65536, &hc->n_kv_heads,
                      path, err)) ||
        (st = get_int(root, "intermediate_size", 1, 0, 1, LMP_MAX_DIM * 8, &hc->ffn, path, err)) ||
        (st = get_int(root, "vocab_size", 1, 0, 1, LMP_MAX_VOCAB, &hc->vocab, path, err)) ||
        (st = get_int(root, "max_position_embeddings", 0, 2048, 1, LMP_MAX_CTX, &hc->max_ctx,
                      path, err)) ||
        (st = get_num(root, "rope_theta", 10000.0, 0, 3e38, &hc->rope_theta, path, err)) ||
        (st = get_num(root, "rms_norm_eps", 1e-6, 0, 1, &hc->norm_eps, path, err)) ||
        (st = get_bool(root, "tie_word_embeddings", 0, &hc->tied, path, err)) ||
        (st = get_token_id(root, "bos_token_id", &hc->bos_id, path, err)) ||
        (st = get_token_id(root, "eos_token_id", &hc->eos_id, path, err)) ||
        (st = get_token_id(root, "pad_token_id", &hc->pad_id, path, err)))
        goto done;
    if (hc->n_heads % hc->n_kv_heads) {
        st = lmp_err_set(err, LMP_ERR_FORMAT,
                         "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                         path, hc->n_heads, hc->n_kv_heads);
        goto done;
    }
    if (is_null(cJSON_GetObjectItemCaseSensitive(root, "head_dim")) && hc->dim % hc->n_heads) {
        st = lmp_err_set(err, LMP_ERR_FORMAT,
                         "%s: hidden_size %d is not a multiple of num_attention_heads %d", path,
                         hc->dim, hc->n_heads);
        goto done;
    }
    if ((st = get_int(root, "head_dim", 0, hc->dim / hc->n_heads, 1, 4096, &hc->head_dim, path,
                      err)))
        goto done;
    if (hc->head_dim & 1) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: head_dim %d must be even for RoPE", path,
                         hc->head_dim);
        goto done;
    }
    if ((int64_t)hc->n_heads * hc->head_dim > LMP_MAX_DIM) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: num_attention_heads x head_dim too large",
                         path);
        goto done;
    }
done:
    cJSON_Delete(root);
    return st;
}

/* ---- tokenizer.json ------------------------------------------------------------------- */

/* Does a (possibly Sequence-nested) pre_tokenizer / decoder / normalizer have this type? */
static int has_type(const cJSON *node, const char *type)
{
    if (!cJSON_IsObject(node)) return 0;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(node, "type");
    if (cJSON_IsString(t) && strcmp(t->valuestring, type) == 0) return 1;
    static const char *const lists[] = {"pretokenizers", "decoders", "normalizers", "processors"};
    for (int i = 0; i < 4; i++) {
        const cJSON *x, *a = cJSON_GetObjectItemCaseSensitive(node, lists[i]);
        if (cJSON_IsArray(a)) cJSON_ArrayForEach(x, a) if (has_type(x, type)) return 1;
    }
    return 0;
}

/* First node of that type in a Sequence-nested tree, or NULL. */
static const cJSON *find_type(const cJSON *node, const char *type)
{
    if (!cJSON_IsObject(node)) return NULL;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(node, "type");
    if (cJSON_IsString(t) && strcmp(t->valuestring, type) == 0) return node;
    static const char *const lists[] = {"pretokenizers", "decoders", "normalizers", "processors"};
    for (int i = 0; i < 4; i++) {
        const cJSON *x, *a = cJSON_GetObjectItemCaseSensitive(node, lists[i]);
        if (cJSON_IsArray(a)) cJSON_ArrayForEach(x, a)
            {
                const cJSON *r = find_type(x, type);
                if (r) return r;
            }
    }
    return NULL;
}

/* Growable '\n'-joined list of regexes. */
struct regex_list {
    char *s;
    size_t len, cap;
    int n;
    int only_gpt2; /* the list is exactly the ByteLevel default */
};

/* The GPT-2 pre-tokenizer pattern that ByteLevel(use_regex=true) applies. */
static const char gpt2_regex[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int regex_add(struct regex_list *r, const char *pre, const char *re, const char *post)
{
    size_t need = r->len + strlen(pre) + 2 * strlen(re) + strlen(post) + 2;
    if (need > r->cap) {
        size_t cap = need * 2;
        char *s = realloc(r->s, cap);
        if (!s) return 0;
        r->s = s;
        r->cap = cap;
    }
    if (r->n) r->s[r->len++] = '\n';
    r->len += (size_t)sprintf(r->s + r->len, "%s", pre);
    for (const char *p = re; *p; p++) {
        /* a literal newline would split the list: write it as the escape \n */
        if (*p == '\n') {
            r->s[r->len++] = '\\';
            r->s[r->len++] = 'n';
        } else {
            r->s[r->len++] = *p;
        }
    }
    r->len += (size_t)sprintf(r->s + r->len, "%s", post);
    r->n++;
    r->only_gpt2 = r->n == 1 && strcmp(re, gpt2_regex) == 0 && !*pre;
    return 1;
}

/* Collects the splitting regexes of a byte-level BPE pre_tokenizer, in order. */
static enum lmp_status collect_regex(const cJSON *pt, struct regex_list *r, int *prefix_space,
                                     const char *path, struct lmp_err *err)
{
    if (is_null(pt)) return LMP_OK;
    const cJSON *jt = cJSON_GetObjectItemCaseSensitive(pt, "type");
    if (!cJSON_IsObject(pt) || !cJSON_IsString(jt))
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: pre_tokenizer without a type", path);
    const char *type = jt->valuestring;
    char pn[84];
    int ok = 1;
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *x, *a = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers");
        if (!cJSON_IsArray(a))
            return lmp_err_set(err, LMP_ERR_FORMAT, "%s: Sequence pre_tokenizer without a list",
                               path);
        cJSON_ArrayForEach(x, a)
        {
            enum lmp_status st = collect_regex(x, r, prefix_space, path, err);
            if (st) return st;
        }
    } else if (strcmp(type, "Split") == 0) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(pt, "pattern");
        const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
        const cJSON *str = cJSON_GetObjectItemCaseSensitive(pat, "String");
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(pt, "invert")))
            return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "%s: inverted Split pre_tokenizer not "
                               "supported", path);
        if (cJSON_IsString(re))
            ok = regex_add(r, "", re->valuestring, "");
        else if (cJSON_IsString(str) && !strstr(str->valuestring, "\\E"))
            ok = regex_add(r, "\\Q", str->valuestring, "\\E"); /* literal */
        else
            return lmp_err_set(err, LMP_ERR_FORMAT, "%s: Split pre_tokenizer without a pattern",
                               path);
    } else if (strcmp(type, "Digits") == 0) {
        int single = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(pt, "individual_digits"));
        ok = regex_add(r, "", single ? "\\p{N}" : "\\p{N}+", "");
    } else if (strcmp(type, "ByteLevel") == 0) {
        const cJSON *ur = cJSON_GetObjectItemCaseSensitive(pt, "use_regex");
        if (!cJSON_IsFalse(ur)) ok = regex_add(r, "", gpt2_regex, "");
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(pt, "add_prefix_space")))
            *prefix_space = 1;
    } else {
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                           "%s: pre_tokenizer %s not supported with byte-level BPE", path,
                           printable(pn, type));
    }
    return ok ? LMP_OK : lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
}

/* Text of a special token in tokenizer_config.json: a string or {"content": ...}. */
static const char *special_text(const cJSON *tc, const char *key)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(tc, key);
    if (cJSON_IsObject(j)) j = cJSON_GetObjectItemCaseSensitive(j, "content");
    return cJSON_IsString(j) ? j->valuestring : NULL;
}

static int is_byte_token(const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    return len == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' && s[3] && strchr(hex, s[3]) &&
           s[4] && strchr(hex, s[4]);
}

/* Reads an id out of tokenizer.json's vocab / added_tokens; -1 if not an id. */
static int json_id(const cJSON *j)
{
    if (!cJSON_IsNumber(j) || j->valuedouble != floor(j->valuedouble) || j->valuedouble < 0 ||
        j->valuedouble >= LMP_MAX_VOCAB)
        return -1;
    return (int)j->valuedouble;
}

static int find_token(const char *const *strs, const uint32_t *lens, int n, const char *text)
{
    size_t tl = strlen(text);
    for (int i = 0; i < n; i++)
        if (strs[i] && lens[i] == tl && memcmp(strs[i], text, tl) == 0) return i;
    return -1;
}

/* Resolves a special token: tokenizer_config.json's text if given, else config.json's id. */
static enum lmp_status resolve_special(const cJSON *tc, const char *key, int cfg_id, int strict,
                                       const char *const *strs, const uint32_t *lens, int n,
                                       const char *tc_path, const char *cfg_path, int *out,
                                       struct lmp_err *err)
{
    char pn[84];
    const char *text = tc ? special_text(tc, key) : NULL;
    *out = -1;
    if (text) {
        *out = find_token(strs, lens, n, text);
        if (*out < 0 && strict)
            return lmp_err_set(err, LMP_ERR_FORMAT, "%s: %s \"%s\" is not in tokenizer.json",
                               tc_path, key, printable(pn, text));
        return LMP_OK;
    }
    if (cfg_id >= n) {
        if (!strict) return LMP_OK;
        return lmp_err_set(err, LMP_ERR_FORMAT, "%s: %s_id %d outside the vocabulary (%d)",
                           cfg_path, key, cfg_id, n);
    }
    *out = cfg_id;
    return LMP_OK;
}

static enum lmp_status load_tokenizer(const char *dir, const struct hf_config *hc,
                                      struct lmp_vocab *v, struct lmp_err *err)
{
    char path[PATH_CAP], tc_path[PATH_CAP], cfg_path[PATH_CAP];
    enum lmp_status st;
    if ((st = join_path(path, dir, "tokenizer.json", err)) ||
        (st = join_path(tc_path, dir, "tokenizer_config.json", err)) ||
        (st = join_path(cfg_path, dir, "config.json", err)))
        return st;
    if (!file_exists(path))
        return lmp_err_set(err, LMP_ERR_IO, "%s: cannot open: %s (the tokenizer is required)",
                           path, strerror(errno));
    cJSON *root = NULL, *tc = NULL;
    const char **strs = NULL;
    uint32_t *lens = NULL;
    float *scores = NULL;
    int32_t *types = NULL;
    char *padnames = NULL, *mtext = NULL;
    const char **mstrs = NULL;
    uint32_t *mlens = NULL;
    struct regex_list rx = {0};
    char pn[84];
    if ((st = read_json(path, &root, err))) goto done;
    if (file_exists(tc_path) && (st = read_json(tc_path, &tc, err))) goto done;

    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *mtype = cJSON_GetObjectItemCaseSensitive(model, "type");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    if (!cJSON_IsObject(model) || !cJSON_IsObject(vocab)) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: needs a model object with a vocab object",
                         path);
        goto done;
    }
    if (!is_null(mtype) && !(cJSON_IsString(mtype) && strcmp(mtype->valuestring, "BPE") == 0)) {
        st = lmp_err_set(err, LMP_ERR_UNSUPPORTED, "%s: tokenizer model %s not supported (BPE "
                         "only)", path, cJSON_IsString(mtype) ? printable(pn, mtype->valuestring)
                                                              : "?");
        goto done;
    }
    if (!is_null(added) && !cJSON_IsArray(added)) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: added_tokens is not a list", path);
        goto done;
    }
    int byte_level = has_type(pre, "ByteLevel") || has_type(dec, "ByteLevel");
    int spm_like = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback")) ||
                   has_type(pre, "Metaspace") || has_type(norm, "Prepend") ||
                   has_type(dec, "ByteFallback");
    if (!byte_level && !spm_like) {
        st = lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                         "%s: BPE tokenizer is neither byte-level nor SentencePiece-style "
                         "(byte_fallback / Metaspace)", path);
        goto done;
    }

    /* ids: max over vocab and added tokens */
    int n_tok = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, vocab)
    {
        int id = json_id(x);
        if (id < 0) {
            st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: vocab entry \"%s\" has a bad id", path,
                             printable(pn, x->string));
            goto done;
        }
        if (id >= n_tok) n_tok = id + 1;
    }
    cJSON_ArrayForEach(x, added)
    {
        int id = json_id(cJSON_GetObjectItemCaseSensitive(x, "id"));
        if (id < 0 || !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(x, "content"))) {
            st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: added token without id or content", path);
            goto done;
        }
        if (id >= n_tok) n_tok = id + 1;
    }
    if (n_tok == 0) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: empty vocabulary", path);
        goto done;
    }
    if (n_tok > hc->vocab) {
        st = lmp_err_set(err, LMP_ERR_FORMAT,
                         "%s: %d tokens but vocab_size is %d: tokenizer does not match the "
                         "model's vocabulary", path, n_tok, hc->vocab);
        goto done;
    }
    /* HF embeddings are often padded past the tokenizer: pad the vocab to match. */
    int n = hc->vocab;
    strs = calloc((size_t)n, sizeof *strs);
    lens = calloc((size_t)n, sizeof *lens);
    scores = calloc((size_t)n, sizeof *scores);
    types = calloc((size_t)n, sizeof *types);
    if (!strs || !lens || !scores || !types) goto oom;
    cJSON_ArrayForEach(x, vocab)
    {
        int id = json_id(x);
        if (strs[id]) {
            st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: token id %d used twice in vocab", path, id);
            goto done;
        }
        strs[id] = x->string;
        lens[id] = (uint32_t)strlen(x->string);
        types[id] = LMP_TOKT_NORMAL;
    }
    cJSON_ArrayForEach(x, added)
    {
        int id = json_id(cJSON_GetObjectItemCaseSensitive(x, "id"));
        strs[id] = cJSON_GetObjectItemCaseSensitive(x, "content")->valuestring;
        lens[id] = (uint32_t)strlen(strs[id]);
        types[id] = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(x, "special")) ? LMP_TOKT_CONTROL
                                                                                 : LMP_TOKT_USER;
    }
    int n_gaps = 0;
    for (int i = 0; i < n; i++) n_gaps += !strs[i];
    if (n_gaps) {
        padnames = malloc((size_t)n_gaps * 24);
        if (!padnames) goto oom;
        char *p = padnames;
        for (int i = 0; i < n; i++)
            if (!strs[i]) {
                int k = snprintf(p, 24, "<unused_%d>", i);
                strs[i] = p;
                lens[i] = (uint32_t)k;
                types[i] = LMP_TOKT_UNUSED;
                p += 24;
            }
    }

    int unk = -1;
    const cJSON *ju = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    if (cJSON_IsString(ju)) unk = find_token(strs, lens, n, ju->valuestring);
    if (unk >= 0) types[unk] = LMP_TOKT_UNKNOWN;

    if (byte_level) {
        v->kind = LMP_TOK_BPE;
        /* merges: "a b" strings or ["a", "b"] pairs; stored as "a b" */
        int nm = cJSON_IsArray(merges) ? cJSON_GetArraySize(merges) : 0;
        if (!is_null(merges) && !cJSON_IsArray(merges)) {
            st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: merges is not a list", path);
            goto done;
        }
        if (nm > LMP_MAX_VOCAB) {
            st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: %d merges (max %d)", path, nm,
                             LMP_MAX_VOCAB);
            goto done;
        }
        mstrs = calloc((size_t)nm + 1, sizeof *mstrs);
        mlens = calloc((size_t)nm + 1, sizeof *mlens);
        if (!mstrs || !mlens) goto oom;
        size_t pair_bytes = 0;
        cJSON_ArrayForEach(x, merges) if (cJSON_IsArray(x)) {
            const cJSON *a = cJSON_GetArrayItem(x, 0), *b = cJSON_GetArrayItem(x, 1);
            if (cJSON_GetArraySize(x) != 2 || !cJSON_IsString(a) || !cJSON_IsString(b)) {
                st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: a merge pair is not two strings", path);
                goto done;
            }
            pair_bytes += strlen(a->valuestring) + strlen(b->valuestring) + 2;
        }
        if (pair_bytes && !(mtext = malloc(pair_bytes))) goto oom;
        char *mp = mtext;
        int k = 0;
        cJSON_ArrayForEach(x, merges)
        {
            if (cJSON_IsString(x)) {
                if (!strchr(x->valuestring, ' ')) {
                    st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: merge %d \"%s\" has no space", path,
                                     k, printable(pn, x->valuestring));
                    goto done;
                }
                mstrs[k] = x->valuestring;
                mlens[k] = (uint32_t)strlen(x->valuestring);
            } else if (cJSON_IsArray(x)) {
                int w = sprintf(mp, "%s %s", cJSON_GetArrayItem(x, 0)->valuestring,
                                cJSON_GetArrayItem(x, 1)->valuestring);
                mstrs[k] = mp;
                mlens[k] = (uint32_t)w;
                mp += w + 1;
            } else {
                st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: merge %d is not a string or pair", path,
                                 k);
                goto done;
            }
            k++;
        }
        if ((st = lmp_vocab_set_merges(v, nm, mstrs, mlens, err))) goto done;
        int prefix_space = 0;
        if ((st = collect_regex(pre, &rx, &prefix_space, path, err))) goto done;
        if (rx.n == 0) {
            /* ByteLevel(use_regex=false) alone (or no pre_tokenizer): the text is one piece */
            if (!regex_add(&rx, "", "[\\s\\S]+", "")) goto oom;
        }
        if (!rx.only_gpt2) { /* NULL means the GPT-2 pattern */
            v->pre_regex = rx.s;
            rx.s = NULL;
        }
        v->add_space_prefix = prefix_space;
        /* the NFC normalizer of Qwen2 etc. is not applied (ASCII/NFC text is unaffected) */
    } else {
        v->kind = LMP_TOK_SPM;
        /* SentencePiece BPE exported to tokenizer.json lists pieces in score order, so the
         * piece score is recovered as -id; merges are implied by the scores and not kept. */
        for (int i = 0; i < n; i++) {
            if (types[i] == LMP_TOKT_NORMAL && is_byte_token(strs[i], lens[i]))
                types[i] = LMP_TOKT_BYTE;
            scores[i] = (types[i] == LMP_TOKT_NORMAL || types[i] == LMP_TOKT_BYTE ||
                         types[i] == LMP_TOKT_UNKNOWN)
                            ? -(float)i
                            : 0.0f;
        }
        /* dummy prefix: normalizer Prepend("▁") (older exports) or Metaspace's scheme */
        const cJSON *pp = find_type(norm, "Prepend");
        const cJSON *ms = find_type(pre, "Metaspace");
        int prefix = 0;
        if (pp) {
            const cJSON *s = cJSON_GetObjectItemCaseSensitive(pp, "prepend");
            prefix = cJSON_IsString(s) && strcmp(s->valuestring, "\xe2\x96\x81") == 0;
        } else if (ms) {
            const cJSON *sch = cJSON_GetObjectItemCaseSensitive(ms, "prepend_scheme");
            if (cJSON_IsString(sch))
                prefix = strcmp(sch->valuestring, "never") != 0;
            else
                prefix = !cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(ms, "add_prefix_space"));
        }
        v->add_space_prefix = prefix;
        v->space_is_plain = 0;
    }
    if ((st = lmp_vocab_set_tokens(v, n, strs, lens, scores, types, err))) goto done;
    v->unk = unk;
    if ((st = resolve_special(tc, "bos_token", hc->bos_id, 1, strs, lens, n, tc_path, cfg_path,
                              &v->bos, err)) ||
        (st = resolve_special(tc, "eos_token", hc->eos_id, 1, strs, lens, n, tc_path, cfg_path,
                              &v->eos, err)) ||
        (st = resolve_special(tc, "pad_token", hc->pad_id, 0, strs, lens, n, tc_path, cfg_path,
                              &v->pad, err)))
        goto done;
    /* add_bos: tokenizer_config.json, else the post-processor template, else the family's
     * default (SentencePiece models add BOS, GPT-2-style ones do not) */
    const cJSON *ab = tc ? cJSON_GetObjectItemCaseSensitive(tc, "add_bos_token") : NULL;
    const cJSON *tp = find_type(cJSON_GetObjectItemCaseSensitive(root, "post_processor"),
                                "TemplateProcessing");
    if (cJSON_IsBool(ab)) {
        v->add_bos = cJSON_IsTrue(ab);
    } else if (tp && cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(tp, "single"))) {
        const cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(tp, "single"), 0);
        const cJSON *sid = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(first, "SpecialToken"), "id");
        v->add_bos = v->bos >= 0 && cJSON_IsString(sid) &&
                     find_token(strs, lens, n, sid->valuestring) == v->bos;
    } else {
        v->add_bos = v->kind == LMP_TOK_SPM;
    }
    if (v->add_bos && v->bos < 0) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: add_bos_token is set but there is no BOS token",
                         tc_path);
        goto done;
    }
    /* the chat template, as a string (the list form of named templates is not carried) */
    const cJSON *ct = tc ? cJSON_GetObjectItemCaseSensitive(tc, "chat_template") : NULL;
    if (cJSON_IsString(ct) && !(v->chat_template = strdup(ct->valuestring))) goto oom;
    goto done;
oom:
    st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
done:
    free(strs);
    free(lens);
    free(scores);
    free(types);
    free(padnames);
    free(mtext);
    free(mstrs);
    free(mlens);
    free(rx.s);
    cJSON_Delete(root);
    cJSON_Delete(tc);
    return st;
}

/* ---- weights ---------------------------------------------------------------------------- */

enum hf_kind {
    K_EMB, K_NORM, K_HEAD, /* global */
    K_ATTN_NORM, K_WQ, K_WK, K_WV, K_WO, K_BQ, K_BK, K_BV, K_FFN_NORM, K_GATE, K_UP, K_DOWN,
    K_N
};

static const struct {
    const char *hf;   /* name, or suffix after "model.layers.N." */
    const char *ours; /* name, or suffix after "blk.N." */
} names[K_N] = {
    [K_EMB] = {"model.embed_tokens.weight", LMP_N_TOKEMBD},
    [K_NORM] = {"model.norm.weight", LMP_N_OUTNORM},
    [K_HEAD] = {"lm_head.weight", LMP_N_OUTPUT},
    [K_ATTN_NORM] = {"input_layernorm.weight", LMP_N_ATTN_NORM},
    [K_WQ] = {"self_attn.q_proj.weight", LMP_N_WQ},
    [K_WK] = {"self_attn.k_proj.weight", LMP_N_WK},
    [K_WV] = {"self_attn.v_proj.weight", LMP_N_WV},
    [K_WO] = {"self_attn.o_proj.weight", LMP_N_WO},
    [K_BQ] = {"self_attn.q_proj.bias", LMP_N_BQ},
    [K_BK] = {"self_attn.k_proj.bias", LMP_N_BK},
    [K_BV] = {"self_attn.v_proj.bias", LMP_N_BV},
    [K_FFN_NORM] = {"post_attention_layernorm.weight", LMP_N_FFN_NORM},
    [K_GATE] = {"mlp.gate_proj.weight", LMP_N_GATE},
    [K_UP] = {"mlp.up_proj.weight", LMP_N_UP},
    [K_DOWN] = {"mlp.down_proj.weight", LMP_N_DOWN},
};

/* Biases the runtime has no place for: refusing them beats silently dropping them. */
static const char *const unsupported_suffix[] = {"self_attn.o_proj.bias", "mlp.gate_proj.bias",
                                                 "mlp.up_proj.bias", "mlp.down_proj.bias"};

/* Tensor order in the model: token_embd, then per layer (attn_norm, q, k, v, o, [bq, bk, bv],
 * ffn_norm, gate, up, down), then output_norm and output (untied only). */
struct layout {
    int per_layer;
    int pos[K_N]; /* position within a layer, -1 for global / absent kinds */
    int n_layers, tied;
};

static void layout_init(struct layout *lo, const struct hf_config *hc)
{
    static const enum hf_kind order[] = {K_ATTN_NORM, K_WQ, K_WK, K_WV, K_WO, K_BQ,
                                         K_BK, K_BV, K_FFN_NORM, K_GATE, K_UP, K_DOWN};
    memset(lo, 0, sizeof *lo);
    for (int k = 0; k < K_N; k++) lo->pos[k] = -1;
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
        enum hf_kind k = order[i];
        if ((k == K_BQ || k == K_BK || k == K_BV) && !hc->attn_bias) continue;
        lo->pos[k] = lo->per_layer++;
    }
    lo->n_layers = hc->n_layers;
    lo->tied = hc->tied;
}

static int layout_count(const struct layout *lo)
{
    return 2 + lo->n_layers * lo->per_layer + !lo->tied;
}

static int layout_slot(const struct layout *lo, enum hf_kind k, int layer)
{
    if (k == K_EMB) return 0;
    if (k == K_NORM) return 1 + lo->n_layers * lo->per_layer;
    if (k == K_HEAD) return 2 + lo->n_layers * lo->per_layer;
    return 1 + layer * lo->per_layer + lo->pos[k];
}

struct slot_kind {
    enum hf_kind kind;
    int layer; /* -1 for global tensors */
};

static void expected_shape(enum hf_kind k, const struct hf_config *hc, int *nd, int64_t *rows,
                           int64_t *cols)
{
    int64_t D = hc->dim, V = hc->vocab, F = hc->ffn;
    int64_t Q = (int64_t)hc->n_heads * hc->head_dim, KV = (int64_t)hc->n_kv_heads * hc->head_dim;
    *nd = 2;
    *cols = D;
    switch (k) {
    case K_EMB:
    case K_HEAD: *rows = V; break;
    case K_WQ: *rows = Q; break;
    case K_WK:
    case K_WV: *rows = KV; break;
    case K_WO: *rows = D; *cols = Q; break;
    case K_GATE:
    case K_UP: *rows = F; break;
    case K_DOWN: *rows = D; *cols = F; break;
    case K_BQ: *nd = 1; *rows = Q; *cols = 1; break;
    case K_BK:
    case K_BV: *nd = 1; *rows = KV; *cols = 1; break;
    default: *nd = 1; *rows = D; *cols = 1; break; /* norms */
    }
}

enum map_result { MAP_IGNORE, MAP_OK, MAP_UNSUPPORTED, MAP_BAD_LAYER, MAP_UNEXPECTED_BIAS };

static enum map_result map_name(const char *name, const struct hf_config *hc, enum hf_kind *kind,
                                int *layer)
{
    for (int k = K_EMB; k <= K_HEAD; k++)
        if (strcmp(name, names[k].hf) == 0) {
            if (k == K_HEAD && hc->tied) return MAP_IGNORE; /* some tied exports keep a copy */
            *kind = (enum hf_kind)k;
            *layer = -1;
            return MAP_OK;
        }
    static const char pre[] = "model.layers.";
    if (strncmp(name, pre, sizeof pre - 1) != 0) return MAP_IGNORE;
    const char *p = name + sizeof pre - 1;
    long l = 0;
    int nd = 0;
    while (*p >= '0' && *p <= '9' && nd < 9) {
        l = l * 10 + (*p++ - '0');
        nd++;
    }
    if (!nd || *p != '.' || (nd > 1 && name[sizeof pre - 1] == '0')) return MAP_IGNORE;
    const char *suf = p + 1;
    for (size_t i = 0; i < sizeof unsupported_suffix / sizeof unsupported_suffix[0]; i++)
        if (strcmp(suf, unsupported_suffix[i]) == 0) return MAP_UNSUPPORTED;
    for (int k = K_ATTN_NORM; k < K_N; k++)
        if (strcmp(suf, names[k].hf) == 0) {
            if (l >= hc->n_layers) return MAP_BAD_LAYER;
            if ((k == K_BQ || k == K_BK || k == K_BV) && !hc->attn_bias)
                return MAP_UNEXPECTED_BIAS;
            *kind = (enum hf_kind)k;
            *layer = (int)l;
            return MAP_OK;
        }
    return MAP_IGNORE; /* rotary_emb.inv_freq and the like */
}

/* The safetensors files of a directory, all mapped at once so every tensor can be located
 * and checked before any weight memory is allocated. */
struct shard_set {
    int n;
    struct lmp_st_file *files; /* (n) */
    const char *source;        /* where tensors should be, for "not found" messages */
};

static void shards_close(struct shard_set *s)
{
    for (int i = 0; i < s->n; i++) lmp_st_close(&s->files[i]);
    free(s->files);
    memset(s, 0, sizeof *s);
}

/* A shard file name from the index: a plain name inside the directory. */
static int shard_name_ok(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && n < 256 && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static enum lmp_status shards_open(struct shard_set *set, const char *dir, struct lmp_err *err)
{
    char path[PATH_CAP], ipath[PATH_CAP];
    enum lmp_status st;
    memset(set, 0, sizeof *set);
    if ((st = join_path(ipath, dir, "model.safetensors.index.json", err))) return st;
    if (!file_exists(ipath)) {
        set->source = "model.safetensors";
        if ((st = join_path(path, dir, "model.safetensors", err))) return st;
        if (!file_exists(path)) {
            char pt[PATH_CAP];
            if (join_path(pt, dir, "pytorch_model.bin", err) == LMP_OK && file_exists(pt))
                return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                                   "%s: PyTorch pickle weights not supported; convert the model "
                                   "to safetensors", pt);
            return lmp_err_set(err, LMP_ERR_IO,
                               "%s: cannot open (no model.safetensors or "
                               "model.safetensors.index.json)", path);
        }
        set->files = calloc(1, sizeof *set->files);
        if (!set->files) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        if ((st = lmp_st_open(&set->files[0], path, err))) {
            shards_close(set);
            return st;
        }
        set->n = 1;
        return LMP_OK;
    }

    set->source = "the shards of model.safetensors.index.json";
    cJSON *idx;
    if ((st = read_json(ipath, &idx, err))) return st;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(idx, "weight_map");
    const char **names_ = NULL;
    char pn[84];
    const cJSON *x;
    if (!cJSON_IsObject(wm)) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: no weight_map object", ipath);
        goto done;
    }
    int n_entries = cJSON_GetArraySize(wm);
    names_ = calloc((size_t)n_entries + 1, sizeof *names_);
    set->files = calloc((size_t)n_entries + 1, sizeof *set->files);
    if (!names_ || !set->files) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        goto done;
    }
    int n_names = 0;
    cJSON_ArrayForEach(x, wm)
    {
        if (!cJSON_IsString(x) || !shard_name_ok(x->valuestring)) {
            st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: weight_map entry %s: bad shard file name",
                             ipath, printable(pn, x->string));
            goto done;
        }
        int s = 0;
        while (s < n_names && strcmp(names_[s], x->valuestring) != 0) s++;
        if (s == n_names) names_[n_names++] = x->valuestring;
    }
    for (int s = 0; s < n_names; s++) {
        if ((st = join_path(path, dir, names_[s], err))) goto done;
        if ((st = lmp_st_open(&set->files[s], path, err))) goto done;
        set->n = s + 1;
        /* every tensor the index places in this shard must be there */
        cJSON_ArrayForEach(x, wm) if (strcmp(x->valuestring, names_[s]) == 0 &&
                                      !lmp_st_find(&set->files[s], x->string))
        {
            st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: has no tensor %s listed for it in %s", path,
                             printable(pn, x->string), lmp_basename(ipath));
            goto done;
        }
    }
done:
    free(names_);
    cJSON_Delete(idx);
    if (st) shards_close(set);
    return st;
}

static void format_shape(char *out, size_t cap, const struct lmp_st_tensor *t)
{
    size_t p = (size_t)snprintf(out, cap, "[");
    for (int d = 0; d < t->n_dims && p < cap; d++)
        p += (size_t)snprintf(out + p, cap - p, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if (p < cap) snprintf(out + p, cap - p, "]");
}

struct slot_src {
    const struct lmp_st_file *f;
    const struct lmp_st_tensor *t;
};

/* Finds the file tensor of every slot, checking names, dtypes, shapes and duplicates. */
static enum lmp_status locate_tensors(const struct shard_set *set, const struct hf_config *hc,
                                      const struct layout *lo, struct slot_src *src,
                                      struct lmp_err *err)
{
    char pn[84];
    for (int s = 0; s < set->n; s++) {
        const struct lmp_st_file *f = &set->files[s];
        for (int i = 0; i < f->n_tensors; i++) {
            const struct lmp_st_tensor *t = &f->tensors[i];
            enum hf_kind k = K_EMB;
            int layer = -1;
            switch (map_name(t->name, hc, &k, &layer)) {
            case MAP_IGNORE: continue;
            case MAP_OK: break;
            case MAP_UNSUPPORTED:
                return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "%s: tensor %s not supported",
                                   f->path, printable(pn, t->name));
            case MAP_BAD_LAYER:
                return lmp_err_set(err, LMP_ERR_FORMAT,
                                   "%s: tensor %s: layer index past num_hidden_layers (%d)",
                                   f->path, printable(pn, t->name), hc->n_layers);
            case MAP_UNEXPECTED_BIAS:
                return lmp_err_set(err, LMP_ERR_FORMAT,
                                   "%s: tensor %s: q/k/v bias in a model whose config.json has "
                                   "none", f->path, printable(pn, t->name));
            }
            int slot = layout_slot(lo, k, layer);
            if (src[slot].t)
                return lmp_err_set(err, LMP_ERR_FORMAT, "%s: tensor %s stored twice (also in %s)",
                                   f->path, printable(pn, t->name),
                                   lmp_basename(src[slot].f->path));
            if (t->dtype != LMP_ST_F32 && t->dtype != LMP_ST_F16 && t->dtype != LMP_ST_BF16)
                return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                                   "%s: tensor %s: dtype %s not supported (F32, F16, BF16 only)",
                                   f->path, printable(pn, t->name), lmp_st_dtype_name(t->dtype));
            int nd;
            int64_t rows, cols;
            expected_shape(k, hc, &nd, &rows, &cols);
            if (t->n_dims != nd || t->shape[0] != rows || (nd == 2 && t->shape[1] != cols)) {
                char got[128], want[64];
                format_shape(got, sizeof got, t);
                if (nd == 2)
                    snprintf(want, sizeof want, "[%lld, %lld]", (long long)rows, (long long)cols);
                else
                    snprintf(want, sizeof want, "[%lld]", (long long)rows);
                return lmp_err_set(err, LMP_ERR_FORMAT,
                                   "%s: tensor %s has shape %s, config.json implies %s", f->path,
                                   printable(pn, t->name), got, want);
            }
            src[slot] = (struct slot_src){f, t};
        }
    }
    return LMP_OK;
}

enum lmp_status lmp_ckpt_load_hf(const char *dir, struct lmp_model **out, struct lmp_err *err)
{
    *out = NULL;
    char path[PATH_CAP];
    struct hf_config hc;
    struct shard_set set = {0};
    struct slot_src *src = NULL;
    struct slot_kind *kinds = NULL;
    struct lmp_model *m = NULL;
    enum lmp_status st;
    /* GPTQ checkpoints (quantize_config.json) have packed linears: formats/gptq_st.c */
    if (lmp_gptq_is_dir(dir)) return lmp_ckpt_load_gptq_dir(dir, out, err);
    if ((st = join_path(path, dir, "config.json", err))) return st;
    if ((st = parse_config(path, &hc, err))) return st;

    /* 1. locate every tensor in the (mapped) safetensors files */
    struct layout lo;
    layout_init(&lo, &hc);
    int nt = layout_count(&lo);
    src = calloc((size_t)nt, sizeof *src);
    kinds = calloc((size_t)nt, sizeof *kinds);
    if (!src || !kinds) goto oom;
    for (int k = 0; k < K_N; k++) {
        int global = k <= K_HEAD;
        if ((k == K_HEAD && hc.tied) || (!global && lo.pos[k] < 0)) continue;
        for (int l = 0; l < (global ? 1 : hc.n_layers); l++)
            kinds[layout_slot(&lo, (enum hf_kind)k, global ? -1 : l)] =
                (struct slot_kind){(enum hf_kind)k, global ? -1 : l};
    }
    if ((st = shards_open(&set, dir, err))) goto fail;
    if ((st = locate_tensors(&set, &hc, &lo, src, err))) goto fail;
    for (int i = 0; i < nt; i++)
        if (!src[i].t) {
            char hf[LMP_NAME_MAX + 32];
            if (kinds[i].layer < 0)
                snprintf(hf, sizeof hf, "%s", names[kinds[i].kind].hf);
            else
                snprintf(hf, sizeof hf, "model.layers.%d.%s", kinds[i].layer,
                         names[kinds[i].kind].hf);
            st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: tensor %s not found in %s", dir, hf,
                             set.source);
            goto fail;
        }

    /* 2. the model and its tokenizer */
    m = lmp_model_new();
    if (!m) goto oom;
    snprintf(m->source_format, sizeof m->source_format, "hf");
    struct lmp_config *c = &m->cfg;
    c->dim = hc.dim;
    c->n_layers = hc.n_layers;
    c->head_dim = hc.head_dim;
    c->vocab = hc.vocab;
    c->max_ctx = hc.max_ctx;
    c->rope_theta = (float)hc.rope_theta;
    c->norm_eps = (float)hc.norm_eps;
    c->tied = hc.tied;
    c->attn_bias = hc.attn_bias;
    if ((st = lmp_config_set_uniform(c, hc.n_heads, hc.n_kv_heads, hc.ffn, err))) goto fail;
    {
        /* name: the directory's last component */
        size_t dl = strlen(dir);
        while (dl > 1 && dir[dl - 1] == '/') dl--;
        const char *b = dir + dl;
        while (b > dir && b[-1] != '/') b--;
        snprintf(c->name, sizeof c->name, "%.*s", (int)(dir + dl - b), b);
    }
    if ((st = load_tokenizer(dir, &hc, &m->vocab, err))) goto fail;

    /* 3. weights, in layout order, converted to F32; sizes are bounded by the files now */
    char pn[84];
    for (int i = 0; i < nt; i++) {
        char name[LMP_NAME_MAX];
        if (kinds[i].layer < 0)
            snprintf(name, sizeof name, "%s", names[kinds[i].kind].ours);
        else
            snprintf(name, sizeof name, "blk.%d.%s", kinds[i].layer, names[kinds[i].kind].ours);
        int nd;
        int64_t rows, cols;
        expected_shape(kinds[i].kind, &hc, &nd, &rows, &cols);
        struct lmp_tensor *t = lmp_model_add_tensor(m, name, LMP_TYPE_F32, nd, rows, cols);
        if (!t) goto oom;
        if ((st = lmp_st_to_f32(src[i].f, src[i].t, t->data, err))) goto fail;
        const float *v = t->data;
        for (int64_t e = 0; e < src[i].t->nelem; e++)
            if (!isfinite(v[e])) {
                st = lmp_err_set(err, LMP_ERR_FORMAT,
                                 "%s: tensor %s has a non-finite value (%g) at element %lld",
                                 src[i].f->path, printable(pn, src[i].t->name), (double)v[e],
                                 (long long)e);
                goto fail;
            }
    }
    shards_close(&set);

    /* 4. rotate-half -> interleaved rows for RoPE */
    for (int l = 0; l < hc.n_layers; l++) {
        struct lmp_tensor *t = m->tensors;
        if ((st = lmp_rope_permute_rows(&t[layout_slot(&lo, K_WQ, l)], hc.n_heads, hc.head_dim, 1,
                                        err)) ||
            (st = lmp_rope_permute_rows(&t[layout_slot(&lo, K_WK, l)], hc.n_kv_heads, hc.head_dim,
                                        1, err)))
            goto fail;
        if (hc.attn_bias &&
            ((st = lmp_rope_permute_rows(&t[layout_slot(&lo, K_BQ, l)], hc.n_heads, hc.head_dim,
                                         1, err)) ||
             (st = lmp_rope_permute_rows(&t[layout_slot(&lo, K_BK, l)], hc.n_kv_heads,
                                         hc.head_dim, 1, err))))
            goto fail;
    }
    if ((st = lmp_model_bind(m, dir, err))) goto fail;
    if ((st = lmp_model_check_finite(m, dir, err))) goto fail;
    free(src);
    free(kinds);
    *out = m;
    return LMP_OK;
oom:
    st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
fail:
    shards_close(&set);
    free(src);
    free(kinds);
    lmp_model_free(m);
    return st;
}

/* For other loaders of Hugging Face directories (formats/gptq_st.c): config.json into
 * m->cfg (uniform layers, name = the directory's last component) and the tokenizer into
 * m->vocab, exactly as lmp_ckpt_load_hf reads them. */
enum lmp_status lmp_hf_load_meta(const char *dir, struct lmp_model *m, struct lmp_err *err)
{
    char path[PATH_CAP];
    struct hf_config hc;
    enum lmp_status st;
    if ((st = join_path(path, dir, "config.json", err))) return st;
    if ((st = parse_config(path, &hc, err))) return st;
    struct lmp_config *c = &m->cfg;
    c->dim = hc.dim;
    c->n_layers = hc.n_layers;
    c->head_dim = hc.head_dim;
    c->vocab = hc.vocab;
    c->max_ctx = hc.max_ctx;
    c->rope_theta = (float)hc.rope_theta;
    c->norm_eps = (float)hc.norm_eps;
    c->tied = hc.tied;
    c->attn_bias = hc.attn_bias;
    if ((st = lmp_config_set_uniform(c, hc.n_heads, hc.n_kv_heads, hc.ffn, err))) return st;
    size_t dl = strlen(dir);
    while (dl > 1 && dir[dl - 1] == '/') dl--;
    const char *b = dir + dl;
    while (b > dir && b[-1] != '/') b--;
    snprintf(c->name, sizeof c->name, "%.*s", (int)(dir + dl - b), b);
    return load_tokenizer(dir, &hc, &m->vocab, err);
}
