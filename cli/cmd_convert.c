/* lmpress convert IN OUT.lmp: any supported checkpoint (llama2.c .bin, GGUF, Hugging Face
 * directory, .lmp) to .lmp, optionally storing the weight matrices as F16 or BF16. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void help(void)
{
    printf("usage: lmpress convert IN OUT.lmp [--tokenizer FILE] [--type f32|f16|bf16]\n"
           "\n"
           "Reads IN (llama2.c .bin + tokenizer.bin, GGUF v2/v3, a Hugging Face directory with\n"
           "config.json + *.safetensors + tokenizer.json, or .lmp) and writes OUT.lmp.\n"
           "  --tokenizer FILE  llama2.c tokenizer.bin (default: tok<vocab>.bin or tokenizer.bin\n"
           "                    beside IN)\n"
           "  --type T          storage type of the 2-D weight matrices (default f32); norms stay f32\n"
           "The output is written to a temporary name and renamed when complete.\n");
}

/* Re-encodes 2-D float weights to F16/BF16 (owned copies). */
static enum lmp_status recode(struct lmp_model *m, enum lmp_type to, struct lmp_err *err)
{
    for (int i = 0; i < m->n_tensors; i++) {
        struct lmp_tensor *t = &m->tensors[i];
        if (t->n_dims != 2 || !lmp_type_is_float(t->type) || t->type == to) continue;
        int64_t n = lmp_tensor_nelem(t);
        uint16_t *d = malloc((size_t)n * 2 + 2);
        if (!d) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        for (int64_t k = 0; k < n; k++) {
            float v = lmp_tensor_get_f32(t, k / t->shape[1], k % t->shape[1]);
            d[k] = to == LMP_TYPE_F16 ? lmp_f32_to_f16(v) : lmp_f32_to_bf16(v);
        }
        if (t->owned) free(t->data);
        t->data = d;
        t->owned = 1;
        t->type = to;
        t->nbytes = (size_t)n * 2;
    }
    return LMP_OK;
}

int cmd_convert(int argc, char **argv)
{
    const char *in = NULL, *outp = NULL;
    struct lmp_load_opts lo = {0};
    enum lmp_type to = LMP_TYPE_F32;
    int have_type = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            help();
            return 0;
        } else if (!strcmp(a, "--tokenizer")) {
            if (++i >= argc) return cli_usage_error("convert", "--tokenizer needs a file");
            lo.tokenizer = argv[i];
        } else if (!strcmp(a, "--type")) {
            if (++i >= argc) return cli_usage_error("convert", "--type needs f32, f16 or bf16");
            have_type = 1;
            if (!strcmp(argv[i], "f32")) to = LMP_TYPE_F32;
            else if (!strcmp(argv[i], "f16")) to = LMP_TYPE_F16;
            else if (!strcmp(argv[i], "bf16")) to = LMP_TYPE_BF16;
            else return cli_usage_error("convert", "--type %s: expected f32, f16 or bf16", argv[i]);
        } else if (a[0] == '-' && a[1]) {
            return cli_usage_error("convert", "unknown option %s", a);
        } else if (!in) {
            in = a;
        } else if (!outp) {
            outp = a;
        } else {
            return cli_usage_error("convert", "too many arguments");
        }
    }
    if (!in || !outp) return cli_usage_error("convert", "needs IN and OUT");
    size_t ol = strlen(outp);
    if (ol < 4 || strcmp(outp + ol - 4, ".lmp"))
        return cli_usage_error("convert", "%s: output must end in .lmp", outp);
    struct lmp_err err = {{0}};
    struct lmp_model *m = NULL;
    enum lmp_status st = lmp_ckpt_load(in, &lo, &m, &err);
    if (st) return cli_fail("convert", st, &err);
    if (have_type && (st = recode(m, to, &err))) {
        lmp_model_free(m);
        return cli_fail("convert", st, &err);
    }
    st = lmp_ckpt_save_lmp(m, outp, &err);
    if (st) {
        lmp_model_free(m);
        return cli_fail("convert", st, &err);
    }
    fprintf(stderr, "lmpress convert: %s (%s) -> %s: %d tensors, %lld parameters\n", in,
            m->source_format, outp, m->n_tensors, (long long)lmp_model_n_params(m));
    lmp_model_free(m);
    return 0;
}
