/* Text <-> token ids for struct lmp_vocab.
 *
 * SPM (llama / SentencePiece BPE, llama2.c tokenizer.bin): spaces become U+2581 (or stay
 * ' ' for llama2.c's plain-space vocabularies), a dummy space is put in front, the text is
 * split into UTF-8 characters, and adjacent symbols are merged greedily: always the pair
 * whose concatenation is the vocabulary token with the highest score, the leftmost pair on
 * ties (llama.cpp's llm_tokenizer_spm). Symbols that are not tokens become "<0xNN>" byte
 * tokens.
 *
 * BPE (byte-level, GPT-2 / Llama-3 / SmolLM2, as Hugging Face tokenizers does it): the text
 * is cut by the pre-tokenizer regexes (PCRE2, each an "Isolated" split), each piece's bytes
 * become GPT-2's printable byte alphabet, and ranked merges are applied lowest rank first,
 * leftmost on ties.
 *
 * In both, CONTROL and USER tokens found literally in the text are matched first
 * (leftmost, longest) and emitted as one id. Both merge loops keep the symbols in a linked
 * list and candidate pairs in a binary heap, so a whole 400 KB text encodes in O(n log n).
 * The tokenizer is read-only after creation; encode allocates its scratch per call. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer.h"

#include <math.h>
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

/* Largest text one encode call accepts (symbol indices are int32). */
#define TOK_MAX_TEXT ((size_t)1 << 29)
/* GPT-2's byte alphabet uses code points below 256 + 68. */
#define BYTE_CP_LIMIT 324

/* string -> id, open addressing; id -1 marks an empty slot */
struct str_slot {
    uint32_t h;
    int32_t id;
};

/* (left id, right id) -> merge rank and merged id */
struct merge_slot {
    uint64_t key; /* 0 = empty */
    int32_t rank;
    int32_t id;
};

struct lmp_tokenizer {
    const struct lmp_vocab *v;
    struct str_slot *str;
    uint32_t str_mask;
    int32_t byte_tok[256]; /* SPM: "<0xNN>" token per byte; BPE: the byte's alphabet char */
    /* literal special tokens: ids sorted by first byte, then longest first */
    int32_t *special;
    int n_special;
    int special_start[257];
    size_t max_piece;
    /* BPE */
    struct merge_slot *merge;
    uint64_t merge_mask;
    uint16_t byte_cp[256];          /* byte -> code point of its printable stand-in */
    int16_t cp_byte[BYTE_CP_LIMIT]; /* inverse, -1 where none */
    pcre2_code **re;
    int n_re;
    int n_merges_skipped;
};

/* ---- hashing ----------------------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static int32_t str_lookup(const struct lmp_tokenizer *t, const char *s, size_t n)
{
    uint64_t h = hash_bytes(s, n);
    uint32_t h32 = (uint32_t)h;
    const struct lmp_vocab *v = t->v;
    for (uint32_t i = (uint32_t)(h >> 32) & t->str_mask;; i = (i + 1) & t->str_mask) {
        const struct str_slot *e = &t->str[i];
        if (e->id < 0) return -1;
        if (e->h == h32 && v->off[e->id + 1] - v->off[e->id] == n &&
            memcmp(v->text + v->off[e->id], s, n) == 0)
            return e->id;
    }
}

/* Inserts id under its token text; a later duplicate replaces an earlier one (llama.cpp's
 * token_to_id map keeps the last). */
static void str_insert(struct lmp_tokenizer *t, int32_t id)
{
    const struct lmp_vocab *v = t->v;
    const char *s = v->text + v->off[id];
    size_t n = v->off[id + 1] - v->off[id];
    uint64_t h = hash_bytes(s, n);
    for (uint32_t i = (uint32_t)(h >> 32) & t->str_mask;; i = (i + 1) & t->str_mask) {
        struct str_slot *e = &t->str[i];
        if (e->id < 0 || (e->h == (uint32_t)h && v->off[e->id + 1] - v->off[e->id] == n &&
                          memcmp(v->text + v->off[e->id], s, n) == 0)) {
            e->h = (uint32_t)h;
            e->id = id;
            return;
        }
    }
}

static uint64_t merge_key(int32_t a, int32_t b)
{
    return ((uint64_t)(uint32_t)(a + 1) << 32) | (uint32_t)(b + 1);
}

static uint64_t mix64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

static const struct merge_slot *merge_lookup(const struct lmp_tokenizer *t, int32_t a, int32_t b)
{
    uint64_t key = merge_key(a, b);
    for (uint64_t i = mix64(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const struct merge_slot *e = &t->merge[i];
        if (e->key == key) return e;
        if (!e->key) return NULL;
    }
}

/* ---- UTF-8 ---------------------------------------------------------------------------- */

/* Length of the UTF-8 sequence a lead byte announces, from its top four bits; continuation
 * and invalid bytes count as 1 (llama.cpp's unicode_len_utf8). */
static size_t utf8_len(unsigned char c)
{
    static const unsigned char len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return len[c >> 4];
}

static size_t utf8_put(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decodes one well-formed UTF-8 character at s (n bytes available); returns its length
 * and sets *cp, or 0 if the bytes are not a valid character. */
static size_t utf8_get(const unsigned char *s, size_t n, uint32_t *cp)
{
    if (!n) return 0;
    unsigned char c = s[0];
    size_t len;
    uint32_t v, min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if ((c & 0xE0) == 0xC0) {
        len = 2, v = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3, v = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4, v = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

/* ---- create / free ------------------------------------------------------------------ */

/* Special tokens sorted by first byte, longest first, so the first hit is the longest. */
struct special_key {
    unsigned char first;
    uint32_t len;
    int32_t id;
};

static int special_before(const struct special_key *a, const struct special_key *b)
{
    if (a->first != b->first) return a->first < b->first;
    if (a->len != b->len) return a->len > b->len;
    return a->id < b->id;
}

static int cmp_special_key(const void *pa, const void *pb)
{
    const struct special_key *a = pa, *b = pb;
    if (special_before(a, b)) return -1;
    if (special_before(b, a)) return 1;
    return 0;
}

static enum lmp_status build_specials(struct lmp_tokenizer *t, struct lmp_err *err)
{
    const struct lmp_vocab *v = t->v;
    int n = 0;
    for (int i = 0; i < v->n_tokens; i++) {
        int ty = v->types ? v->types[i] : LMP_TOKT_NORMAL;
        if ((ty == LMP_TOKT_CONTROL || ty == LMP_TOKT_USER) && v->off[i + 1] > v->off[i]) n++;
    }
    for (int c = 0; c <= 256; c++) t->special_start[c] = 0;
    if (!n) return LMP_OK;
    struct special_key *keys = malloc((size_t)n * sizeof *keys);
    t->special = malloc((size_t)n * sizeof *t->special);
    if (!keys || !t->special) {
        free(keys);
        return lmp_err_set(err, LMP_ERR_NOMEM, "tokenizer: out of memory");
    }
    int k = 0;
    for (int i = 0; i < v->n_tokens; i++) {
        int ty = v->types ? v->types[i] : LMP_TOKT_NORMAL;
        if ((ty == LMP_TOKT_CONTROL || ty == LMP_TOKT_USER) && v->off[i + 1] > v->off[i]) {
            keys[k].first = (unsigned char)v->text[v->off[i]];
            keys[k].len = v->off[i + 1] - v->off[i];
            keys[k].id = i;
            k++;
        }
    }
    qsort(keys, (size_t)n, sizeof *keys, cmp_special_key);
    int counts[256] = {0};
    for (int i = 0; i < n; i++) {
        t->special[i] = keys[i].id;
        counts[keys[i].first]++;
    }
    for (int c = 0; c < 256; c++) t->special_start[c + 1] = t->special_start[c] + counts[c];
    t->n_special = n;
    free(keys);
    return LMP_OK;
}

/* Finds the merge's split "left right" at a space such that left, right and left+right are
 * all tokens; returns 0 if no space gives one. */
static int parse_merge(const struct lmp_tokenizer *t, const char *s, size_t n, char *cat,
                       int32_t *a, int32_t *b, int32_t *ab)
{
    for (size_t sp = 1; sp + 1 < n; sp++) {
        if (s[sp] != ' ') continue;
        int32_t l = str_lookup(t, s, sp), r = str_lookup(t, s + sp + 1, n - sp - 1);
        if (l < 0 || r < 0) continue;
        memcpy(cat, s, sp);
        memcpy(cat + sp, s + sp + 1, n - sp - 1);
        int32_t m = str_lookup(t, cat, n - 1);
        if (m < 0) continue;
        *a = l, *b = r, *ab = m;
        return 1;
    }
    return 0;
}

static enum lmp_status build_bpe(struct lmp_tokenizer *t, struct lmp_err *err)
{
    const struct lmp_vocab *v = t->v;
    /* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the rest
     * are numbered from U+0100 up in byte order. */
    int next = 0;
    for (int c = 0; c < BYTE_CP_LIMIT; c++) t->cp_byte[c] = -1;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        t->byte_cp[b] = (uint16_t)(keep ? b : 256 + next++);
        t->cp_byte[t->byte_cp[b]] = (int16_t)b;
        char u[4];
        size_t ul = utf8_put(t->byte_cp[b], u);
        t->byte_tok[b] = str_lookup(t, u, ul);
    }

    if (v->n_merges <= 0 || !v->merges || !v->merges_off)
        return lmp_err_set(err, LMP_ERR_FORMAT,
                           "tokenizer: byte-level BPE vocabulary has no merges");
    uint64_t cap = 16;
    while (cap < (uint64_t)v->n_merges * 2) cap <<= 1;
    t->merge = calloc(cap, sizeof *t->merge);
    if (!t->merge) return lmp_err_set(err, LMP_ERR_NOMEM, "tokenizer: out of memory");
    t->merge_mask = cap - 1;
    size_t maxlen = 0;
    if (v->merges_off[0] != 0)
        return lmp_err_set(err, LMP_ERR_FORMAT, "tokenizer: merge 0 does not start at offset 0");
    for (int i = 0; i < v->n_merges; i++) {
        if (v->merges_off[i + 1] < v->merges_off[i])
            return lmp_err_set(err, LMP_ERR_FORMAT, "tokenizer: merge %d has a bad offset", i);
        size_t n = v->merges_off[i + 1] - v->merges_off[i];
        if (n > maxlen) maxlen = n;
    }
    char *cat = malloc(maxlen + 1);
    if (!cat) return lmp_err_set(err, LMP_ERR_NOMEM, "tokenizer: out of memory");
    for (int i = 0; i < v->n_merges; i++) {
        const char *s = v->merges + v->merges_off[i];
        size_t n = v->merges_off[i + 1] - v->merges_off[i];
        int32_t a, b, ab;
        /* A merge whose parts or result are not tokens can never fire (Hugging Face
         * refuses such files; llama.cpp keeps them, to no effect on byte-level vocabs). */
        if (!parse_merge(t, s, n, cat, &a, &b, &ab)) {
            t->n_merges_skipped++;
            continue;
        }
        uint64_t key = merge_key(a, b);
        for (uint64_t j = mix64(key) & t->merge_mask;; j = (j + 1) & t->merge_mask) {
            struct merge_slot *e = &t->merge[j];
            if (e->key == key) break; /* a repeated pair keeps its first (best) rank */
            if (!e->key) {
                e->key = key;
                e->rank = i;
                e->id = ab;
                break;
            }
        }
    }
    free(cat);

    /* pre-tokenizer regexes */
    const char *gpt2 =
        "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
    const char *src = v->pre_regex ? v->pre_regex : gpt2;
    int n_re = 1;
    for (const char *p = src; *p; p++) n_re += *p == '\n';
    t->re = calloc((size_t)n_re, sizeof *t->re);
    if (!t->re) return lmp_err_set(err, LMP_ERR_NOMEM, "tokenizer: out of memory");
    const char *p = src;
    int idx = 0;
    while (1) {
        const char *e = strchr(p, '\n');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n > 0) {
            int ec;
            PCRE2_SIZE eo;
            pcre2_code *re = pcre2_compile((PCRE2_SPTR)p, n,
                                           PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF,
                                           &ec, &eo, NULL);
            if (!re) {
                PCRE2_UCHAR msg[160];
                pcre2_get_error_message(ec, msg, sizeof msg);
                return lmp_err_set(err, LMP_ERR_FORMAT,
                                   "tokenizer: pre-tokenizer regex %d: %s at offset %zu",
                                   idx + 1, (const char *)msg, (size_t)eo);
            }
            pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* optional: interpreter otherwise */
            t->re[t->n_re++] = re;
        }
        idx++;
        if (!e) break;
        p = e + 1;
    }
    return LMP_OK;
}

static void build_spm_bytes(struct lmp_tokenizer *t)
{
    static const char hex[] = "0123456789ABCDEF";
    for (int b = 0; b < 256; b++) {
        char s[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
        int32_t id = str_lookup(t, s, 6);
        if (id < 0) {
            char c = (char)b;
            id = str_lookup(t, &c, 1);
        }
        t->byte_tok[b] = id;
    }
}

enum lmp_status lmp_tok_create(const struct lmp_vocab *v, struct lmp_tokenizer **out,
                               struct lmp_err *err)
{
    if (!out) return lmp_err_set(err, LMP_ERR_ARG, "tokenizer: no output pointer");
    *out = NULL;
    if (!v) return lmp_err_set(err, LMP_ERR_ARG, "tokenizer: no vocabulary");
    if (v->kind != LMP_TOK_SPM && v->kind != LMP_TOK_BPE)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "tokenizer: vocabulary kind %d not supported",
                           (int)v->kind);
    if (v->n_tokens <= 0 || v->n_tokens > LMP_MAX_VOCAB || !v->off || !v->text)
        return lmp_err_set(err, LMP_ERR_FORMAT, "tokenizer: vocabulary has %d tokens",
                           v->n_tokens);
    if (v->off[0] != 0)
        return lmp_err_set(err, LMP_ERR_FORMAT, "tokenizer: token 0 does not start at offset 0");
    for (int i = 0; i < v->n_tokens; i++)
        if (v->off[i + 1] < v->off[i])
            return lmp_err_set(err, LMP_ERR_FORMAT, "tokenizer: token %d has a bad offset", i);
    const int ids[3] = {v->bos, v->eos, v->unk};
    const char *names[3] = {"bos", "eos", "unk"};
    for (int i = 0; i < 3; i++)
        if (ids[i] < -1 || ids[i] >= v->n_tokens)
            return lmp_err_set(err, LMP_ERR_FORMAT, "tokenizer: %s id %d out of range (%d tokens)",
                               names[i], ids[i], v->n_tokens);

    struct lmp_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return lmp_err_set(err, LMP_ERR_NOMEM, "tokenizer: out of memory");
    t->v = v;
    uint32_t cap = 16;
    while (cap < (uint32_t)v->n_tokens * 2) cap <<= 1;
    t->str = malloc((size_t)cap * sizeof *t->str);
    enum lmp_status st;
    if (!t->str) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "tokenizer: out of memory");
        goto fail;
    }
    t->str_mask = cap - 1;
    for (uint32_t i = 0; i < cap; i++) t->str[i].id = -1;
    for (int i = 0; i < v->n_tokens; i++) {
        size_t n = v->off[i + 1] - v->off[i];
        if (n > t->max_piece) t->max_piece = n;
        if (n) str_insert(t, i); /* an empty token can never be produced */
    }
    if (t->max_piece < 1) t->max_piece = 1;
    if ((st = build_specials(t, err))) goto fail;
    if (v->kind == LMP_TOK_SPM) {
        build_spm_bytes(t);
    } else if ((st = build_bpe(t, err))) {
        goto fail;
    }
    *out = t;
    return LMP_OK;
fail:
    lmp_tok_free(t);
    return st;
}

void lmp_tok_free(struct lmp_tokenizer *t)
{
    if (!t) return;
    for (int i = 0; i < t->n_re; i++) pcre2_code_free(t->re[i]);
    free(t->re);
    free(t->merge);
    free(t->special);
    free(t->str);
    free(t);
}

size_t lmp_tok_max_piece(const struct lmp_tokenizer *t)
{
    return t ? t->max_piece : 0;
}

/* ---- encode: shared pieces ---------------------------------------------------------- */

struct idvec {
    int32_t *a;
    int64_t n, cap;
};

static int ids_push(struct idvec *o, int32_t id)
{
    if (o->n == o->cap) {
        int64_t nc = o->cap ? o->cap * 2 : 256;
        int32_t *na = realloc(o->a, (size_t)nc * sizeof *na);
        if (!na) return -1;
        o->a = na;
        o->cap = nc;
    }
    o->a[o->n++] = id;
    return 0;
}

/* A symbol of the merge loops: a span of the working text in a doubly linked list. */
struct sym {
    int32_t prev, next;
    uint32_t start, n; /* n == 0: merged into its left neighbour */
    int32_t id;        /* BPE: current token id */
};

/* A candidate merge. prio: higher first (SPM score, or -rank for BPE); then leftmost. */
struct cand {
    double prio;
    int32_t left, right;
    uint32_t size; /* SPM: byte length of the pair when pushed (staleness check) */
    int32_t lid, rid; /* BPE: ids of the pair when pushed */
};

struct heap {
    struct cand *a;
    size_t n;
};

static int cand_before(const struct cand *x, const struct cand *y)
{
    return x->prio > y->prio || (x->prio == y->prio && x->left < y->left);
}

/* The caller sizes the heap for every push of one run (at most 3 per symbol). */
static void heap_push(struct heap *h, struct cand c)
{
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_before(&c, &h->a[p])) break;
        h->a[i] = h->a[p];
        i = p;
    }
    h->a[i] = c;
}

static struct cand heap_pop(struct heap *h)
{
    struct cand top = h->a[0], last = h->a[--h->n];
    size_t i = 0, n = h->n;
    while (1) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && cand_before(&h->a[c + 1], &h->a[c])) c++;
        if (!cand_before(&h->a[c], &last)) break;
        h->a[i] = h->a[c];
        i = c;
    }
    if (n) h->a[i] = last;
    return top;
}

/* Per-call scratch, grown as fragments need. */
struct scratch {
    char *buf;
    size_t buf_cap;
    struct sym *sym;
    struct cand *heap;
    size_t sym_cap;
    uint32_t *pieces[2]; /* (start, len) pairs */
    size_t piece_cap;
    pcre2_match_data *md;
};

static void scratch_free(struct scratch *s)
{
    free(s->buf);
    free(s->sym);
    free(s->heap);
    free(s->pieces[0]);
    free(s->pieces[1]);
    if (s->md) pcre2_match_data_free(s->md);
}

static int scratch_text(struct scratch *s, size_t n)
{
    if (n <= s->buf_cap) return 0;
    char *b = realloc(s->buf, n);
    if (!b) return -1;
    s->buf = b;
    s->buf_cap = n;
    return 0;
}

static int scratch_syms(struct scratch *s, size_t n)
{
    if (n <= s->sym_cap) return 0;
    free(s->sym);
    free(s->heap);
    s->sym = malloc(n * sizeof *s->sym);
    s->heap = malloc(n * 3 * sizeof *s->heap);
    if (!s->sym || !s->heap) {
        free(s->sym);
        free(s->heap);
        s->sym = NULL;
        s->heap = NULL;
        s->sym_cap = 0;
        return -1;
    }
    s->sym_cap = n;
    return 0;
}

/* Longest special token starting at s, or -1. */
static int32_t match_special(const struct lmp_tokenizer *t, const char *s, size_t n,
                             size_t *mlen)
{
    const struct lmp_vocab *v = t->v;
    unsigned char c = (unsigned char)s[0];
    for (int k = t->special_start[c]; k < t->special_start[c + 1]; k++) {
        int32_t id = t->special[k];
        size_t len = v->off[id + 1] - v->off[id];
        if (len <= n && memcmp(v->text + v->off[id], s, len) == 0) {
            *mlen = len;
            return id;
        }
    }
    return -1;
}

/* ---- encode: SPM ---------------------------------------------------------------------- */

static void spm_try_pair(const struct lmp_tokenizer *t, const char *buf, const struct sym *sym,
                         struct heap *h, int32_t l, int32_t r)
{
    if (l < 0 || r < 0) return;
    uint32_t size = sym[l].n + sym[r].n;
    int32_t id = str_lookup(t, buf + sym[l].start, size);
    if (id < 0) return;
    float sc = t->v->scores ? t->v->scores[id] : 0.0f;
    struct cand c = {isnan(sc) ? -INFINITY : (double)sc, l, r, size, 0, 0};
    heap_push(h, c);
}

static enum lmp_status spm_fragment(const struct lmp_tokenizer *t, struct scratch *sc,
                                    const char *s, size_t n, int prefix, struct idvec *out,
                                    struct lmp_err *err)
{
    const struct lmp_vocab *v = t->v;
    static const char esc[3] = {'\xE2', '\x96', '\x81'}; /* U+2581 */
    size_t w = v->space_is_plain ? 1 : 3;
    if (scratch_text(sc, (n + 1) * w)) goto oom;
    char *buf = sc->buf;
    size_t bl = 0;
    for (size_t i = 0; i < n + (prefix != 0); i++) {
        char c = prefix ? (i == 0 ? ' ' : s[i - 1]) : s[i];
        if (c == ' ' && w == 3) {
            memcpy(buf + bl, esc, 3);
            bl += 3;
        } else {
            buf[bl++] = c;
        }
    }
    if (!bl) return LMP_OK;

    /* one symbol per UTF-8 character (lead-byte length, clipped at the end) */
    if (scratch_syms(sc, bl)) goto oom;
    struct sym *sym = sc->sym;
    int32_t ns = 0;
    for (size_t p = 0; p < bl;) {
        size_t len = utf8_len((unsigned char)buf[p]);
        if (len > bl - p) len = bl - p;
        sym[ns] = (struct sym){ns - 1, -1, (uint32_t)p, (uint32_t)len, -1};
        p += len;
        if (p < bl) sym[ns].next = ns + 1;
        ns++;
    }
    struct heap h = {sc->heap, 0};
    for (int32_t i = 1; i < ns; i++) spm_try_pair(t, buf, sym, &h, i - 1, i);
    while (h.n) {
        struct cand c = heap_pop(&h);
        struct sym *L = &sym[c.left], *R = &sym[c.right];
        if (!L->n || !R->n || L->n + R->n != c.size) continue; /* stale */
        L->n += R->n;
        R->n = 0;
        L->next = R->next;
        if (R->next >= 0) sym[R->next].prev = c.left;
        spm_try_pair(t, buf, sym, &h, L->prev, c.left);
        spm_try_pair(t, buf, sym, &h, c.left, L->next);
    }
    /* Every merged symbol is a token; only single characters can miss the vocabulary. */
    for (int32_t i = 0; i != -1; i = sym[i].next) {
        int32_t id = str_lookup(t, buf + sym[i].start, sym[i].n);
        if (id >= 0) {
            if (ids_push(out, id)) goto oom;
            continue;
        }
        for (uint32_t j = 0; j < sym[i].n; j++) {
            unsigned char b = (unsigned char)buf[sym[i].start + j];
            int32_t bid = t->byte_tok[b] >= 0 ? t->byte_tok[b] : v->unk;
            if (bid < 0)
                return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                                   "tokenizer: byte 0x%02X has no token (vocabulary has neither "
                                   "byte tokens nor an unknown token)",
                                   b);
            if (ids_push(out, bid)) goto oom;
        }
    }
    return LMP_OK;
oom:
    return lmp_err_set(err, LMP_ERR_NOMEM, "tokenizer: out of memory");
}

/* ---- encode: byte-level BPE ------------------------------------------------------------ */

static void bpe_try_pair(const struct lmp_tokenizer *t, const struct sym *sym, struct heap *h,
                         int32_t l, int32_t r)
{
    if (l < 0 || r < 0) return;
    const struct merge_slot *m = merge_lookup(t, sym[l].id, sym[r].id);
    if (!m) return;
    struct cand c = {-(double)m->rank, l, r, 0, sym[l].id, sym[r].id};
    heap_push(h, c);
}

/* Merges one pre-tokenized word (raw bytes) and appends its ids. */
static int bpe_word(const struct lmp_tokenizer *t, struct scratch *sc, const char *s, size_t n,
                    struct idvec *out)
{
    const struct lmp_vocab *v = t->v;
    struct sym *sym = sc->sym;
    int32_t ns = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_tok[(unsigned char)s[i]];
        if (id < 0) id = v->unk;
        if (id < 0) continue; /* as tokenizers does with no unk token: the byte is dropped */
        sym[ns] = (struct sym){ns - 1, -1, (uint32_t)i, 1, id};
        if (ns > 0) sym[ns - 1].next = ns;
        ns++;
    }
    if (ns == 0) return 0;
    struct heap h = {sc->heap, 0};
    for (int32_t i = 1; i < ns; i++) bpe_try_pair(t, sym, &h, i - 1, i);
    while (h.n) {
        struct cand c = heap_pop(&h);
        struct sym *L = &sym[c.left], *R = &sym[c.right];
        if (!L->n || !R->n || L->next != c.right || L->id != c.lid || R->id != c.rid) continue;
        const struct merge_slot *m = merge_lookup(t, L->id, R->id);
        L->id = m->id;
        L->n += R->n;
        R->n = 0;
        L->next = R->next;
        if (R->next >= 0) sym[R->next].prev = c.left;
        bpe_try_pair(t, sym, &h, L->prev, c.left);
        bpe_try_pair(t, sym, &h, c.left, L->next);
    }
    for (int32_t i = 0; i != -1; i = sym[i].next)
        if (ids_push(out, sym[i].id)) return -1;
    return 0;
}

/* Splits every piece of src by re, keeping matches and the text between them as pieces
 * (tokenizers' Split with behavior Isolated). Returns the new piece count or -1 on error. */
static int64_t regex_split(const pcre2_code *re, pcre2_match_data *md, const char *buf,
                           const uint32_t *src, int64_t n_src, uint32_t *dst, int *rc_out)
{
    int64_t nd = 0;
    for (int64_t k = 0; k < n_src; k++) {
        const char *p = buf + src[2 * k];
        size_t len = src[2 * k + 1], at = 0, done = 0;
        while (at <= len) {
            int rc = pcre2_match(re, (PCRE2_SPTR)p, len, at, 0, md, NULL);
            if (rc == PCRE2_ERROR_NOMATCH) break;
            if (rc < 0) {
                *rc_out = rc;
                return -1;
            }
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            size_t ms = ov[0], me = ov[1];
            if (ms < done || me < ms || me > len) { /* \K tricks; cannot happen with ours */
                *rc_out = PCRE2_ERROR_INTERNAL;
                return -1;
            }
            if (me == ms) { /* empty match: step over one character */
                at = ms + (ms < len ? utf8_len((unsigned char)p[ms]) : 1);
                if (at > len && ms < len) at = len;
                continue;
            }
            if (ms > done) {
                dst[2 * nd] = src[2 * k] + (uint32_t)done;
                dst[2 * nd + 1] = (uint32_t)(ms - done);
                nd++;
            }
            dst[2 * nd] = src[2 * k] + (uint32_t)ms;
            dst[2 * nd + 1] = (uint32_t)(me - ms);
            nd++;
            done = at = me;
        }
        if (done < len) {
            dst[2 * nd] = src[2 * k] + (uint32_t)done;
            dst[2 * nd + 1] = (uint32_t)(len - done);
            nd++;
        }
    }
    return nd;
}

static enum lmp_status bpe_fragment(const struct lmp_tokenizer *t, struct scratch *sc,
                                    const char *s, size_t n, struct idvec *out,
                                    struct lmp_err *err)
{
    const struct lmp_vocab *v = t->v;
    /* ByteLevel(add_prefix_space): a space in front unless there is one already */
    int prefix = v->add_space_prefix && s[0] != ' ';
    size_t bl = n + (size_t)prefix;
    if (scratch_text(sc, bl)) goto oom;
    char *buf = sc->buf;
    if (prefix) buf[0] = ' ';
    memcpy(buf + prefix, s, n);

    if (bl > sc->piece_cap) {
        for (int i = 0; i < 2; i++) {
            free(sc->pieces[i]);
            sc->pieces[i] = malloc(bl * 2 * sizeof(uint32_t));
        }
        if (!sc->pieces[0] || !sc->pieces[1]) {
            sc->piece_cap = 0;
            goto oom;
        }
        sc->piece_cap = bl;
    }
    if (scratch_syms(sc, bl)) goto oom;
    uint32_t *cur = sc->pieces[0], *nxt = sc->pieces[1];
    cur[0] = 0;
    cur[1] = (uint32_t)bl;
    int64_t np = 1;
    for (int r = 0; r < t->n_re; r++) {
        int rc = 0;
        int64_t nn = regex_split(t->re[r], sc->md, buf, cur, np, nxt, &rc);
        if (nn < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                               "tokenizer: pre-tokenizer regex %d failed on the text: %s", r + 1,
                               (const char *)msg);
        }
        uint32_t *tmp = cur;
        cur = nxt;
        nxt = tmp;
        np = nn;
    }
    for (int64_t k = 0; k < np; k++)
        if (bpe_word(t, sc, buf + cur[2 * k], cur[2 * k + 1], out)) goto oom;
    return LMP_OK;
oom:
    return lmp_err_set(err, LMP_ERR_NOMEM, "tokenizer: out of memory");
}

/* ---- encode ------------------------------------------------------------------------------ */

enum lmp_status lmp_tok_encode(const struct lmp_tokenizer *t, const char *text, size_t len,
                               int add_bos, int32_t **ids, int64_t *n_ids, struct lmp_err *err)
{
    if (ids) *ids = NULL;
    if (n_ids) *n_ids = 0;
    if (!t || !ids || !n_ids || (!text && len))
        return lmp_err_set(err, LMP_ERR_ARG, "tokenizer: bad arguments to encode");
    if (len > TOK_MAX_TEXT)
        return lmp_err_set(err, LMP_ERR_ARG, "tokenizer: text of %zu bytes is over the %zu limit",
                           len, TOK_MAX_TEXT);
    const struct lmp_vocab *v = t->v;
    struct idvec out = {0};
    struct scratch sc = {0};
    enum lmp_status st = LMP_OK;
    if (v->kind == LMP_TOK_BPE) {
        sc.md = pcre2_match_data_create(4, NULL);
        if (!sc.md) goto oom;
    }
    if (add_bos && v->bos >= 0 && ids_push(&out, v->bos)) goto oom;

    /* Cut the text at special tokens; between them, raw fragments. SPM puts its dummy
     * space before a fragment that starts the text or follows a special token, i.e.
     * before every fragment (llama.cpp). */
    size_t frag = 0;
    for (size_t pos = 0; pos <= len; pos++) {
        size_t mlen = 0;
        int32_t sid = -1;
        if (pos < len && t->n_special) sid = match_special(t, text + pos, len - pos, &mlen);
        if (sid < 0 && pos < len) continue;
        if (pos > frag) {
            st = v->kind == LMP_TOK_SPM
                     ? spm_fragment(t, &sc, text + frag, pos - frag, v->add_space_prefix, &out,
                                    err)
                     : bpe_fragment(t, &sc, text + frag, pos - frag, &out, err);
            if (st) goto done;
        }
        if (sid < 0) break;
        if (ids_push(&out, sid)) goto oom;
        pos += mlen - 1;
        frag = pos + 1;
    }
    *ids = out.a;
    *n_ids = out.n;
    out.a = NULL;
    goto done;
oom:
    st = lmp_err_set(err, LMP_ERR_NOMEM, "tokenizer: out of memory");
done:
    free(out.a);
    scratch_free(&sc);
    return st;
}

/* ---- decode -------------------------------------------------------------------------------- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

static size_t put(char *buf, size_t cap, size_t at, const char *s, size_t n)
{
    if (at >= cap) return at;
    if (n > cap - at) n = cap - at;
    memcpy(buf + at, s, n);
    return at + n;
}

size_t lmp_tok_decode(const struct lmp_tokenizer *t, int prev, int id, char *buf, size_t cap)
{
    if (!t || !buf || id < 0 || id >= t->v->n_tokens) return 0;
    const struct lmp_vocab *v = t->v;
    uint32_t n;
    const char *s = lmp_vocab_token(v, id, &n);
    int ty = v->types ? v->types[id] : LMP_TOKT_NORMAL;
    if (ty == LMP_TOKT_CONTROL || ty == LMP_TOKT_UNKNOWN) return 0;
    if (ty == LMP_TOKT_USER) return put(buf, cap, 0, s, n);

    size_t w = 0;
    if (v->kind == LMP_TOK_SPM) {
        /* byte tokens "<0xNN>" (llama2.c's tokenizer.bin marks them NORMAL) */
        if (n == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' && hexval(s[3]) >= 0 &&
            hexval(s[4]) >= 0) {
            char b = (char)(hexval(s[3]) * 16 + hexval(s[4]));
            return put(buf, cap, 0, &b, 1);
        }
        int strip = prev >= 0 && prev == v->bos && v->add_space_prefix;
        for (uint32_t i = 0; i < n;) {
            if (!v->space_is_plain && n - i >= 3 && memcmp(s + i, "\xE2\x96\x81", 3) == 0) {
                i += 3;
                if (!(strip && w == 0)) w = put(buf, cap, w, " ", 1);
                strip = 0;
                continue;
            }
            if (strip && w == 0 && s[i] == ' ') {
                i++;
                strip = 0;
                continue;
            }
            strip = 0;
            w = put(buf, cap, w, s + i, 1);
            i++;
        }
        return w;
    }

    /* byte-level: every character must be in the byte alphabet, else the raw text */
    for (uint32_t i = 0; i < n;) {
        uint32_t cp;
        size_t l = utf8_get((const unsigned char *)s + i, n - i, &cp);
        if (!l || cp >= BYTE_CP_LIMIT || t->cp_byte[cp] < 0) return put(buf, cap, 0, s, n);
        i += (uint32_t)l;
    }
    for (uint32_t i = 0; i < n;) {
        uint32_t cp = 0;
        i += (uint32_t)utf8_get((const unsigned char *)s + i, n - i, &cp);
        char b = (char)t->cp_byte[cp];
        w = put(buf, cap, w, &b, 1);
    }
    return w;
}
