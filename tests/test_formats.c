/* formats/: model struct helpers and the llama2.c loader. */
#include "test.h"
#include "formats/model.h"

#include <string.h>

TEST(llama2c_loads_stories260K)
{
    struct lmp_model *m = NULL;
    struct lmp_err err = {{0}};
    enum lmp_status st = lmp_ckpt_load("models/stories260K.bin", NULL, &m, &err);
    CHECK_MSG(st == LMP_OK, "load: %s", err.msg);
    REQUIRE(m);
    CHECK_EQ_INT(m->cfg.dim, 64);
    CHECK_EQ_INT(m->cfg.n_layers, 5);
    CHECK_EQ_INT(m->cfg.layer[0].n_kv_heads, 4);
    CHECK_EQ_INT(m->cfg.vocab, 512);
    CHECK(m->cfg.tied);
    CHECK_EQ_INT(m->vocab.n_tokens, 512);
    uint32_t len;
    const char *s = lmp_vocab_token(&m->vocab, 259, &len);
    CHECK(len == 2 && memcmp(s, " t", 2) == 0);
    lmp_model_free(m);
}
