/* placeholder */
#include "model.h"
enum lmp_status lmp_ckpt_load_lmp(const char *path, const struct lmp_load_opts *opts,
                                  struct lmp_model **out, struct lmp_err *err)
{ (void)opts; *out = NULL; return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "%s: todo", path); }
enum lmp_status lmp_ckpt_save_lmp(const struct lmp_model *m, const char *path, struct lmp_err *err)
{ (void)m; return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "%s: todo", path); }
enum lmp_status lmp_ckpt_verify_lmp(const char *path, int *n_bad, struct lmp_err *err)
{ *n_bad = 0; return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "%s: todo", path); }
