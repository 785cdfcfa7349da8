/* lmpress convert IN OUT: any supported checkpoint (llama2.c .bin, GGUF, Hugging Face
 * directory, GPTQ directory, .lmp) to .lmp, to GGUF (OUT.gguf) or to a GPTQ safetensors
 * directory (--to gptq). Routing and printing only; the formats live in formats/. */
#include "cli.h"
#include "formats/gguf_write.h"
#include "formats/gptq_st.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

static void help(void)
{
    printf("usage: lmpress convert IN OUT [--type T] [--to lmp|gguf|gptq] [--tokenizer FILE]\n"
           "\n"
           "Reads IN (llama2.c .bin + tokenizer.bin, GGUF v2/v3, a Hugging Face directory with\n"
           "config.json + *.safetensors + tokenizer.json, a GPTQ directory with\n"
           "quantize_config.json, or .lmp) and writes OUT, chosen by --to or OUT's name:\n"
           "  OUT.lmp          lmpress's format; --type f32|f16|bf16 sets the storage of float\n"
           "                   weight matrices (default f32; packed weights stay packed)\n"
           "  OUT.gguf         GGUF v3 for llama.cpp; --type f32|f16|bf16|q8_0|q4_0|q4_1|q4_k|q6_k\n"
           "                   for the weight matrices (default: float weights keep their type;\n"
           "                   GPTQ-packed weights map exactly onto Q4_0/Q4_1/Q8_0 blocks where\n"
           "                   the grids agree (4-bit asymmetric: quantize with --gguf-exact),\n"
           "                   else are re-quantized to q8_0; the output says which). Norms are\n"
           "                   f32; rows not a multiple of 32 fall back to f16, K-quant rows not\n"
           "                   a multiple of 256 to q8_0;\n"
           "                   a pruned model (per-layer shapes) is written as arch \"deci\".\n"
           "  OUTDIR --to gptq AutoGPTQ/GPTQModel safetensors directory of a quantized model\n"
           "                   (qweight/qzeros/scales/g_idx, config.json, tokenizer.json);\n"
           "                   --type f32|f16|bf16 for the non-quantized tensors (default: keep)\n"
           "  --tokenizer FILE llama2.c tokenizer.bin (default: tok<vocab>.bin or tokenizer.bin\n"
           "                   beside IN)\n"
           "Files are written under a temporary name (a directory as OUTDIR.tmp.<pid>) and\n"
           "renamed when complete.\n");
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

enum target { TO_NONE, TO_LMP, TO_GGUF, TO_GPTQ };

static int ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && strcasecmp(s + n - k, suf) == 0;
}

/* OUTDIR for --to gptq: absent, or an empty directory. */
static int check_outdir(const char *dir)
{
    struct stat sb;
    if (stat(dir, &sb) != 0) return errno == ENOENT ? 0 : cli_usage_error("convert", "%s: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return cli_usage_error("convert", "%s exists and is not a directory", dir);
    DIR *d = opendir(dir);
    if (!d) return cli_usage_error("convert", "%s: %s", dir, strerror(errno));
    struct dirent *e;
    int empty = 1;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = 0;
    closedir(d);
    return empty ? 0 : cli_usage_error("convert", "%s exists and is not empty", dir);
}

static void print_gguf_report(const struct lmp_gguf_report *r)
{
    /* one line per (type, how, reason) kind, with counts and the largest deviation */
    char *done = calloc((size_t)r->n + 1, 1);
    if (!done) return;
    for (int i = 0; i < r->n; i++) {
        if (done[i]) continue;
        const struct lmp_gguf_tensor_report *a = &r->t[i];
        int n = 0;
        double max_err = 0;
        int64_t nb = 0, ne = 0;
        for (int j = i; j < r->n; j++) {
            const struct lmp_gguf_tensor_report *b = &r->t[j];
            if (done[j] || b->ggml_type != a->ggml_type || b->how != a->how ||
                b->packed != a->packed || b->fallback != a->fallback || b->why != a->why)
                continue;
            done[j] = 1;
            n++;
            if (b->max_err > max_err) max_err = b->max_err;
            nb += b->n_blocks;
            ne += b->n_exact;
        }
        const char *tn = lmp_gguf_type_name(a->ggml_type);
        const char *what = a->packed ? "packed" : "float";
        switch (a->how) {
        case LMP_GGUF_COPY:
            fprintf(stderr, "  %4d %s tensors -> %s (as stored)\n", n, what, tn);
            break;
        case LMP_GGUF_CONVERT:
            fprintf(stderr, "  %4d %s tensors -> %s (converted%s%s)\n", n, what, tn,
                    a->why ? ": " : "", a->why ? a->why : "");
            break;
        case LMP_GGUF_EXACT:
            fprintf(stderr, "  %4d %s tensors -> %s: exact (the same weights as ours)\n", n,
                    what, tn);
            break;
        case LMP_GGUF_NEAR:
            fprintf(stderr,
                    "  %4d %s tensors -> %s: re-quantized: codes and scales exact, block "
                    "minimum rounded to fp16 (%lld of %lld blocks exact); max error %.3g; "
                    "`lmpress quantize --gguf-exact` makes every block exact\n",
                    n, what, tn, (long long)ne, (long long)nb, max_err);
            break;
        case LMP_GGUF_REQUANT:
            fprintf(stderr, "  %4d %s tensors -> %s: re-quantized (%s); max error %.3g\n", n,
                    what, tn, a->why ? a->why : "requested", max_err);
            break;
        }
    }
    free(done);
}

int cmd_convert(int argc, char **argv)
{
    const char *in = NULL, *outp = NULL, *type_s = NULL;
    struct lmp_load_opts lo = {0};
    enum target to = TO_NONE;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            help();
            return 0;
        } else if (!strcmp(a, "--tokenizer")) {
            if (++i >= argc) return cli_usage_error("convert", "--tokenizer needs a file");
            lo.tokenizer = argv[i];
        } else if (!strcmp(a, "--type")) {
            if (++i >= argc) return cli_usage_error("convert", "--type needs a type name");
            type_s = argv[i];
        } else if (!strcmp(a, "--to")) {
            if (++i >= argc) return cli_usage_error("convert", "--to needs lmp, gguf or gptq");
            if (!strcmp(argv[i], "lmp")) to = TO_LMP;
            else if (!strcmp(argv[i], "gguf")) to = TO_GGUF;
            else if (!strcmp(argv[i], "gptq")) to = TO_GPTQ;
            else return cli_usage_error("convert", "--to %s: expected lmp, gguf or gptq", argv[i]);
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
    if (to == TO_NONE) {
        if (ends_with(outp, ".lmp")) to = TO_LMP;
        else if (ends_with(outp, ".gguf")) to = TO_GGUF;
        else
            return cli_usage_error("convert", "%s: output must end in .lmp or .gguf (or use --to "
                                   "gptq for a GPTQ directory)", outp);
    }

    /* the type, checked before anything is loaded */
    enum lmp_type ft = LMP_TYPE_F32;
    int gtype = -1, have_type = type_s != NULL;
    if (type_s && to == TO_GGUF) {
        gtype = lmp_gguf_type_from_name(type_s);
        if (gtype < 0)
            return cli_usage_error("convert", "--type %s: expected f32, f16, bf16, q8_0, q4_0, "
                                   "q4_1, q4_k or q6_k for GGUF", type_s);
    } else if (type_s) {
        if (!strcmp(type_s, "f32")) ft = LMP_TYPE_F32;
        else if (!strcmp(type_s, "f16")) ft = LMP_TYPE_F16;
        else if (!strcmp(type_s, "bf16")) ft = LMP_TYPE_BF16;
        else return cli_usage_error("convert", "--type %s: expected f32, f16 or bf16", type_s);
    }
    if (to == TO_GPTQ) {
        int rc = check_outdir(outp);
        if (rc) return rc;
    }

    struct lmp_err err = {{0}};
    struct lmp_model *m = NULL;
    enum lmp_status st = lmp_ckpt_load(in, &lo, &m, &err);
    if (st) return cli_fail("convert", st, &err);

    if (to == TO_LMP) {
        if (have_type && (st = recode(m, ft, &err))) goto fail;
        if ((st = lmp_ckpt_save_lmp(m, outp, &err))) goto fail;
        fprintf(stderr, "lmpress convert: %s (%s) -> %s: %d tensors, %lld parameters\n", in,
                m->source_format, outp, m->n_tensors, (long long)lmp_model_n_params(m));
    } else if (to == TO_GGUF) {
        struct lmp_gguf_write_opts go = {.type = gtype};
        struct lmp_gguf_report rep = {0};
        if ((st = lmp_ckpt_save_gguf(m, outp, &go, &rep, &err))) goto fail;
        fprintf(stderr, "lmpress convert: %s (%s) -> %s: GGUF v3, %d tensors, %.1f MB\n", in,
                m->source_format, outp, rep.n, (double)rep.file_bytes / 1e6);
        print_gguf_report(&rep);
        lmp_gguf_report_free(&rep);
    } else {
        struct lmp_gptq_export_opts xo = {.dense_type = have_type ? (int)ft : -1};
        struct lmp_gptq_export_report rep = {0};
        if ((st = lmp_ckpt_save_gptq_dir(m, outp, &xo, &rep, &err))) goto fail;
        fprintf(stderr,
                "lmpress convert: %s (%s) -> %s: GPTQ safetensors, %d linear layers, %d bits, "
                "group %d, %s%s, checkpoint_format %s\n",
                in, m->source_format, outp, rep.n_linear, rep.bits, rep.group,
                rep.sym ? "symmetric" : "asymmetric", rep.desc_act ? ", act-order" : "",
                rep.v2 ? "gptq_v2" : "gptq");
        if (rep.v2)
            fprintf(stderr, "  note: a zero point is 0, which the v1 \"zero - 1\" convention "
                            "cannot store: written as gptq_v2 (GPTQModel loads it; v1-only "
                            "loaders do not)\n");
    }
    lmp_model_free(m);
    return 0;
fail:
    lmp_model_free(m);
    return cli_fail("convert", st, &err);
}
