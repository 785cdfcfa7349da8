/* placeholder: replaced by the gguf loader */
#include "model.h"

enum lmp_status lmp_ckpt_load_gguf(const char *path, struct lmp_model **out, struct lmp_err *err)
{
    *out = NULL;
    return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "%s: gguf loading not implemented yet", path);
}
