/* .lmp writer/reader: round trips are bit-identical, corruption is caught by crc32,
 * and the CLI's convert/inspect agree with the library. */
#include "test.h"
#include "formats/model.h"

#include <string.h>
#include <sys/stat.h>

static int same_model(const struct lmp_model *a, const struct lmp_model *b)
{
    int ok = 1;
    const struct lmp_config *x = &a->cfg, *y = &b->cfg;
    if (x->dim != y->dim || x->n_layers != y->n_layers || x->head_dim != y->head_dim ||
        x->vocab != y->vocab || x->max_ctx != y->max_ctx || x->rope_theta != y->rope_theta ||
        x->norm_eps != y->norm_eps || x->tied != y->tied || x->attn_bias != y->attn_bias) {
        fprintf(stderr, "    config differs\n");
        ok = 0;
    }
    for (int l = 0; ok && l < x->n_layers; l++)
        if (memcmp(&x->layer[l], &y->layer[l], sizeof x->layer[l])) ok = 0;
    if (a->n_tensors != b->n_tensors) {
        fprintf(stderr, "    %d vs %d tensors\n", a->n_tensors, b->n_tensors);
        return 0;
    }
    for (int i = 0; i < a->n_tensors; i++) {
        const struct lmp_tensor *s = &a->tensors[i], *t = &b->tensors[i];
        if (strcmp(s->name, t->name) || s->type != t->type || s->shape[0] != t->shape[0] ||
            s->shape[1] != t->shape[1] || s->nbytes != t->nbytes ||
            memcmp(s->data, t->data, s->nbytes)) {
            fprintf(stderr, "    tensor %s differs\n", s->name);
            ok = 0;
        }
    }
    const struct lmp_vocab *u = &a->vocab, *v = &b->vocab;
    if (u->n_tokens != v->n_tokens || u->kind != v->kind || u->bos != v->bos || u->eos != v->eos ||
        u->add_space_prefix != v->add_space_prefix || u->space_is_plain != v->space_is_plain ||
        memcmp(u->off, v->off, ((size_t)u->n_tokens + 1) * 4) ||
        memcmp(u->text, v->text, u->off[u->n_tokens]) ||
        memcmp(u->scores, v->scores, (size_t)u->n_tokens * 4) ||
        memcmp(u->types, v->types, (size_t)u->n_tokens * 4)) {
        fprintf(stderr, "    vocabulary differs\n");
        ok = 0;
    }
    return ok;
}

TEST(lmp_roundtrip_bit_identical)
{
    struct lmp_err err = {{0}};
    struct lmp_model *a = NULL, *b = NULL, *c = NULL;
    char p1[600], p2[600];
    snprintf(p1, sizeof p1, "%s/a.lmp", lmp_test_tmpdir());
    snprintf(p2, sizeof p2, "%s/b.lmp", lmp_test_tmpdir());
    REQUIRE(lmp_ckpt_load("models/stories260K.bin", NULL, &a, &err) == LMP_OK);
    REQUIRE(lmp_ckpt_save_lmp(a, p1, &err) == LMP_OK);
    CHECK_MSG(lmp_ckpt_load(p1, NULL, &b, &err) == LMP_OK, "%s", err.msg);
    REQUIRE(b);
    CHECK(same_model(a, b));
    /* the data really is mapped in place and 64-byte aligned */
    for (int i = 0; i < b->n_tensors; i++) CHECK(((uintptr_t)b->tensors[i].data & 63) == 0);
    /* .lmp -> .lmp gives the same bytes */
    REQUIRE(lmp_ckpt_save_lmp(b, p2, &err) == LMP_OK);
    char out[256];
    CHECK_EQ_INT(lmp_test_sh(out, sizeof out, "cmp '%s' '%s'", p1, p2), 0);
    CHECK(lmp_ckpt_load(p2, NULL, &c, &err) == LMP_OK);
    if (c) CHECK(same_model(a, c));
    lmp_model_free(a);
    lmp_model_free(b);
    lmp_model_free(c);
}

TEST(lmp_crc_detects_flipped_byte)
{
    struct lmp_err err = {{0}};
    struct lmp_model *a = NULL, *b = NULL;
    char p[600];
    snprintf(p, sizeof p, "%s/a.lmp", lmp_test_tmpdir());
    REQUIRE(lmp_ckpt_load("models/stories260K.bin", NULL, &a, &err) == LMP_OK);
    REQUIRE(lmp_ckpt_save_lmp(a, p, &err) == LMP_OK);
    struct stat sb;
    REQUIRE(stat(p, &sb) == 0);
    /* flip one byte in the middle of the tensor data (well past the header) */
    FILE *f = fopen(p, "r+b");
    REQUIRE(f);
    long off = (long)sb.st_size / 2;
    fseek(f, off, SEEK_SET);
    int ch = fgetc(f);
    fseek(f, off, SEEK_SET);
    fputc(ch ^ 0x10, f);
    fclose(f);
    enum lmp_status st = lmp_ckpt_load(p, NULL, &b, &err);
    CHECK_EQ_INT(st, LMP_ERR_FORMAT);
    CHECK(b == NULL);
    CHECK_MSG(strstr(err.msg, "crc32") && strstr(err.msg, p), "message: %s", err.msg);
    int bad = 0;
    CHECK_EQ_INT(lmp_ckpt_verify_lmp(p, &bad, &err), LMP_OK);
    CHECK_EQ_INT(bad, 1);
    /* CLI: inspect reports it and exits 2; convert refuses */
    char out[4096];
    CHECK_EQ_INT(lmp_test_sh(out, sizeof out, "%s inspect '%s' | tail -1", lmp_test_bin(), p), 0);
    CHECK_MSG(strstr(out, "MISMATCH"), "inspect said: %s", out);
    CHECK_EQ_INT(lmp_test_sh(out, sizeof out, "%s convert '%s' '%s/c.lmp'", lmp_test_bin(), p,
                             lmp_test_tmpdir()),
                 2);
    CHECK_MSG(strstr(out, "crc32"), "convert said: %s", out);
    lmp_model_free(a);
}

TEST(lmp_f16_storage)
{
    /* --type f16 stores matrices as IEEE half; values equal numpy's float16 rounding,
     * which the reference script computes independently. */
    char out[8192];
    const char *d = lmp_test_tmpdir();
    CHECK_EQ_INT(lmp_test_sh(out, sizeof out, "%s convert models/stories260K.bin %s/h.lmp --type f16",
                             lmp_test_bin(), d), 0);
    struct lmp_err err = {{0}};
    struct lmp_model *h = NULL, *a = NULL;
    char hp[600];
    snprintf(hp, sizeof hp, "%s/h.lmp", d);
    REQUIRE(lmp_ckpt_load(hp, NULL, &h, &err) == LMP_OK);
    REQUIRE(lmp_ckpt_load("models/stories260K.bin", NULL, &a, &err) == LMP_OK);
    struct lmp_tensor *t = lmp_model_find(h, "blk.2.ffn_down.weight");
    REQUIRE(t && t->type == LMP_TYPE_F16);
    if (!lmp_test_have_numpy()) lmp_test_skip("no numpy for the float16 reference");
    /* numpy rounds the fp32 weights of blk.2.ffn_down to float16 */
    char npy[600];
    snprintf(npy, sizeof npy, "%s/ref.npy", d);
    int rc = lmp_test_sh(out, sizeof out,
        "/usr/bin/python3 -c \"import numpy as np; h=np.fromfile('models/stories260K.bin',dtype=np.int32,count=7);"
        "D,F,L,V=h[0],h[1],h[2],h[5]; kv=D*h[4]//h[3]; o=7+V*D+L*D+L*D*D+2*L*kv*D+L*D*D+L*D+L*F*D;"
        "w=np.fromfile('models/stories260K.bin',dtype=np.float32)[o+2*D*F:o+3*D*F];"
        "np.save('%s', w.astype(np.float16).astype(np.float32))\"", npy);
    REQUIRE(rc == 0);
    void *ref;
    int is_int, nd;
    long shp[4];
    long n = lmp_test_read_npy(npy, &ref, &is_int, shp, &nd);
    REQUIRE(n == 64 * 172);
    float *got = malloc((size_t)n * 4);
    for (long k = 0; k < n; k++) got[k] = lmp_tensor_get_f32(t, k / 172, k % 172);
    CHECK_CLOSE("f16 weights vs numpy float16", got, (float *)ref, n, 0, 0);
    free(got);
    free(ref);
    lmp_model_free(h);
    lmp_model_free(a);
}
