/* placeholder: replaced by the tokenizer implementation */
#include "tokenizer.h"
enum lmp_status lmp_tok_create(const struct lmp_vocab *v, struct lmp_tokenizer **out, struct lmp_err *err)
{ (void)v; *out = NULL; return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "tokenizer not implemented yet"); }
void lmp_tok_free(struct lmp_tokenizer *t) { (void)t; }
enum lmp_status lmp_tok_encode(const struct lmp_tokenizer *t, const char *text, size_t len, int add_bos, int32_t **ids, int64_t *n_ids, struct lmp_err *err)
{ (void)t; (void)text; (void)len; (void)add_bos; *ids = NULL; *n_ids = 0; return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "tokenizer not implemented yet"); }
size_t lmp_tok_decode(const struct lmp_tokenizer *t, int prev, int id, char *buf, size_t cap)
{ (void)t; (void)prev; (void)id; (void)buf; (void)cap; return 0; }
