/* lmpress inspect FILE: architecture, per-layer shapes, tensor table, size, parameters,
 * bits per weight and (for .lmp) checksum status; --json for machines. */
#include "cli.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void help(void)
{
    printf("usage: lmpress inspect FILE [--json] [--tokenizer FILE]\n"
           "\n"
           "FILE: llama2.c .bin, GGUF, Hugging Face directory or .lmp. Prints the architecture,\n"
           "per-layer head counts and MLP sizes, every tensor (type, shape, bytes), the parameter\n"
           "count, bits per weight (scales and zeros included for packed tensors) and, for .lmp,\n"
           "the crc32 status of every tensor.\n");
}

/* Bytes a tensor takes in memory/.lmp, quantization parameters included. */
static uint64_t tensor_bytes(const struct lmp_tensor *t)
{
    uint64_t b = t->nbytes;
    if (lmp_type_is_packed(t->type) && t->q.group > 0) {
        uint64_t ng = (uint64_t)((t->shape[1] + t->q.group - 1) / t->q.group);
        b += 2 * 2 * (uint64_t)t->shape[0] * ng;
        if (t->q.perm) b += 4 * (uint64_t)t->shape[1];
    }
    return b;
}

int cmd_inspect(int argc, char **argv)
{
    const char *path = NULL;
    int json = 0;
    struct lmp_load_opts lo = {0};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            help();
            return 0;
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (!strcmp(argv[i], "--tokenizer")) {
            if (++i >= argc) return cli_usage_error("inspect", "--tokenizer needs a file");
            lo.tokenizer = argv[i];
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return cli_usage_error("inspect", "unknown option %s", argv[i]);
        } else if (!path) {
            path = argv[i];
        } else {
            return cli_usage_error("inspect", "too many arguments");
        }
    }
    if (!path) return cli_usage_error("inspect", "needs a FILE");
    struct lmp_err err = {{0}};
    struct lmp_model *m = NULL;
    int is_lmp = 0, n_bad = -1;
    {
        FILE *f = fopen(path, "rb");
        char mg[4] = {0};
        if (f) {
            is_lmp = fread(mg, 1, 4, f) == 4 && !memcmp(mg, "LMPF", 4);
            fclose(f);
        }
    }
    enum lmp_status st;
    if (is_lmp) {
        /* load without failing on a bad crc so the report can list it */
        lo.no_crc = 1;
        if ((st = lmp_ckpt_verify_lmp(path, &n_bad, &err))) return cli_fail("inspect", st, &err);
    }
    if ((st = lmp_ckpt_load(path, &lo, &m, &err))) return cli_fail("inspect", st, &err);
    const struct lmp_config *c = &m->cfg;
    int64_t params = lmp_model_n_params(m);
    uint64_t bytes = 0, wparams = 0, wbytes = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        uint64_t b = tensor_bytes(&m->tensors[i]);
        bytes += b;
        if (m->tensors[i].n_dims == 2) {
            wparams += (uint64_t)lmp_tensor_nelem(&m->tensors[i]);
            wbytes += b;
        }
    }
    struct stat sb;
    long long fsize = stat(path, &sb) == 0 && S_ISREG(sb.st_mode) ? (long long)sb.st_size : -1;
    double bpw = params ? 8.0 * (double)bytes / (double)params : 0;
    double bpw_mat = wparams ? 8.0 * (double)wbytes / (double)wparams : 0;
    const char *tk = m->vocab.kind == LMP_TOK_SPM ? "spm" : m->vocab.kind == LMP_TOK_BPE ? "bpe" : "none";
    const char *crc = !is_lmp ? "n/a" : n_bad == 0 ? "ok" : "MISMATCH";
    if (json) {
        cJSON *r = cJSON_CreateObject();
        cJSON_AddStringToObject(r, "file", path);
        cJSON_AddStringToObject(r, "format", m->source_format);
        cJSON_AddStringToObject(r, "arch", c->arch);
        cJSON_AddStringToObject(r, "name", c->name);
        cJSON_AddNumberToObject(r, "dim", c->dim);
        cJSON_AddNumberToObject(r, "n_layers", c->n_layers);
        cJSON_AddNumberToObject(r, "head_dim", c->head_dim);
        cJSON_AddNumberToObject(r, "vocab", c->vocab);
        cJSON_AddNumberToObject(r, "max_ctx", c->max_ctx);
        cJSON_AddNumberToObject(r, "rope_theta", (double)c->rope_theta);
        cJSON_AddNumberToObject(r, "norm_eps", (double)c->norm_eps);
        cJSON_AddBoolToObject(r, "tied", c->tied);
        cJSON_AddBoolToObject(r, "attn_bias", c->attn_bias);
        cJSON_AddStringToObject(r, "tokenizer", tk);
        cJSON_AddNumberToObject(r, "n_tokens", m->vocab.n_tokens);
        if (m->vocab.chat_template)
            cJSON_AddStringToObject(r, "chat_template", m->vocab.chat_template);
        else
            cJSON_AddNullToObject(r, "chat_template");
        cJSON *ls = cJSON_AddArrayToObject(r, "layers");
        for (int l = 0; l < c->n_layers; l++) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "n_heads", c->layer[l].n_heads);
            cJSON_AddNumberToObject(o, "n_kv_heads", c->layer[l].n_kv_heads);
            cJSON_AddNumberToObject(o, "ffn", c->layer[l].ffn);
            cJSON_AddItemToArray(ls, o);
        }
        cJSON *ts = cJSON_AddArrayToObject(r, "tensors");
        for (int i = 0; i < m->n_tensors; i++) {
            const struct lmp_tensor *t = &m->tensors[i];
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "name", t->name);
            cJSON_AddStringToObject(o, "type", lmp_type_name(t->type));
            cJSON *sh = cJSON_AddArrayToObject(o, "shape");
            for (int d = 0; d < t->n_dims; d++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t->shape[d]));
            cJSON_AddNumberToObject(o, "bytes", (double)tensor_bytes(t));
            if (lmp_type_is_packed(t->type)) {
                cJSON_AddNumberToObject(o, "bits", t->q.bits);
                cJSON_AddNumberToObject(o, "group", t->q.group);
                cJSON_AddBoolToObject(o, "act_order", t->q.perm != NULL);
            }
            cJSON_AddItemToArray(ts, o);
        }
        cJSON_AddNumberToObject(r, "params", (double)params);
        cJSON_AddNumberToObject(r, "tensor_bytes", (double)bytes);
        cJSON_AddNumberToObject(r, "file_bytes", (double)fsize);
        cJSON_AddNumberToObject(r, "bits_per_weight", bpw);
        cJSON_AddNumberToObject(r, "bits_per_weight_matrices", bpw_mat);
        cJSON_AddStringToObject(r, "checksums", crc);
        cJSON_AddNumberToObject(r, "checksum_failures", n_bad < 0 ? 0 : n_bad);
        char *s = cJSON_Print(r);
        printf("%s\n", s);
        cJSON_free(s);
        cJSON_Delete(r);
    } else {
        printf("file:        %s (%s)\n", path, m->source_format);
        printf("arch:        %s  name: %s\n", c->arch, c->name);
        printf("dim %d, layers %d, head_dim %d, vocab %d, max_ctx %d, rope_theta %g, norm_eps %g, %s output%s\n",
               c->dim, c->n_layers, c->head_dim, c->vocab, c->max_ctx, (double)c->rope_theta,
               (double)c->norm_eps, c->tied ? "tied" : "untied", c->attn_bias ? ", qkv bias" : "");
        printf("tokenizer:   %s, %d tokens, %d merges, bos %d eos %d", tk, m->vocab.n_tokens,
               m->vocab.n_merges, m->vocab.bos, m->vocab.eos);
        if (m->vocab.chat_template)
            printf(", chat template (%zu bytes)", strlen(m->vocab.chat_template));
        printf("\n");
        printf("\nlayer  n_heads  n_kv_heads  ffn\n");
        for (int l = 0; l < c->n_layers; l++)
            printf("%5d  %7d  %10d  %d\n", l, c->layer[l].n_heads, c->layer[l].n_kv_heads, c->layer[l].ffn);
        printf("\n%-32s %-5s %-16s %12s\n", "tensor", "type", "shape", "bytes");
        for (int i = 0; i < m->n_tensors; i++) {
            const struct lmp_tensor *t = &m->tensors[i];
            char shp[48], typ[32];
            if (t->n_dims == 2)
                snprintf(shp, sizeof shp, "[%lld, %lld]", (long long)t->shape[0], (long long)t->shape[1]);
            else
                snprintf(shp, sizeof shp, "[%lld]", (long long)t->shape[0]);
            if (lmp_type_is_packed(t->type))
                snprintf(typ, sizeof typ, "%s g%d%s", lmp_type_name(t->type), t->q.group, t->q.perm ? " ao" : "");
            else
                snprintf(typ, sizeof typ, "%s", lmp_type_name(t->type));
            printf("%-32s %-5s %-16s %12llu\n", t->name, typ, shp, (unsigned long long)tensor_bytes(t));
        }
        printf("\nparameters:  %lld\n", (long long)params);
        printf("tensor data: %llu bytes (%.2f MiB)%s", (unsigned long long)bytes, (double)bytes / 1048576.0,
               is_lmp ? "" : " in memory after loading");
        if (fsize >= 0) printf(", file %lld bytes", fsize);
        printf("\nbits/weight: %.3f overall, %.3f for the weight matrices\n", bpw, bpw_mat);
        printf("checksums:   %s", crc);
        if (n_bad > 0) printf(" (%d tensor%s corrupt)", n_bad, n_bad > 1 ? "s" : "");
        printf("\n");
    }
    lmp_model_free(m);
    if (n_bad > 0) {
        fprintf(stderr, "lmpress inspect: %s: %d tensor checksum%s do not match\n", path, n_bad, n_bad > 1 ? "s" : "");
        return 2;
    }
    return 0;
}
