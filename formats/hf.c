/* placeholder: replaced by the hf loader */
#include "model.h"

enum lmp_status lmp_ckpt_load_hf(const char *dir, struct lmp_model **out, struct lmp_err *err)
{
    *out = NULL;
    return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "%s: hf loading not implemented yet", dir);
}
