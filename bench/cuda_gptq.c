/* GPTQ wall time on the GPU for every layer of a Llama-2-7B-shaped model (dim 4096, 32
 * layers, 32 heads, ffn 11008): per layer, random correlated calibration activations
 * (n_tok rows: gaussian + a rank-32 shared part, log-normal column scales) for the inputs of
 * q/k/v, o, gate/up and down, their Hessians (cuBLAS ssyrk, running average), the four
 * inverse-Hessian factors (cuSOLVER, double) and GPTQ of the seven random weight matrices,
 * codes and parameters copied back to the host.
 *
 *   build/cuda/cuda_gptq [--layers N] [--tokens N] [--bits B] [--group G] [--act-order]
 *
 * Not included: the calibration forward through the model (the activations are drawn
 * instead). */
#include "quantize/quant.h"
#include "runtime/cuda/rt_cuda.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void on_layer(void *user, int done, int total, double sec)
{
    (void)user;
    if (done == 1 || done % 8 == 0 || done == total) {
        fprintf(stderr, "  layer %d/%d: %.1f s\n", done, total, sec);
        fflush(stderr);
    }
}

int main(int argc, char **argv)
{
    int layers = 32, bits = 4, group = 128, act = 0;
    long tokens = 128L * 2048;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--layers") && i + 1 < argc) layers = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) tokens = atol(argv[++i]);
        else if (!strcmp(argv[i], "--bits") && i + 1 < argc) bits = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--group") && i + 1 < argc) group = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--act-order")) act = 1;
        else {
            fprintf(stderr, "usage: cuda_gptq [--layers N] [--tokens N] [--bits B] [--group G] [--act-order]\n");
            return 2;
        }
    }
    if (layers < 1 || tokens < 1) {
        fprintf(stderr, "cuda_gptq: bad arguments\n");
        return 2;
    }
    struct lmp_cuda_info info;
    struct lmp_err err = {{0}};
    if (lmp_cuda_probe(0, &info, &err)) {
        fprintf(stderr, "cuda_gptq: %s\n", err.msg);
        return 2;
    }
    struct lmp_layer_cfg *lc = calloc((size_t)layers, sizeof *lc);
    for (int l = 0; l < layers; l++) lc[l] = (struct lmp_layer_cfg){32, 32, 11008};
    struct lmp_config c;
    memset(&c, 0, sizeof c);
    c.dim = 4096;
    c.n_layers = layers;
    c.head_dim = 128;
    c.vocab = 32000;
    c.layer = lc;
    struct lmp_quant_opts o;
    lmp_quant_opts_default(&o);
    o.bits = bits;
    o.group = group;
    o.act_order = act;
    printf("device: %s; GPTQ %d-bit g%d%s, Llama-2-7B shape, %d layers, %ld calibration rows per Hessian\n",
           info.name, bits, group, act ? " act-order" : "", layers, tokens);
    fflush(stdout);
    double sec[5];
    enum lmp_status st = lmp_cuda_gptq_bench(&c, tokens, &o, 42, 0, on_layer, NULL, sec, &err);
    free(lc);
    if (st) {
        fprintf(stderr, "cuda_gptq: %s\n", err.msg);
        return lmp_status_exit_code(st);
    }
    printf("\n| layers | total s | activations s | Hessians s | factors s | sweeps + copies s |\n");
    printf("|---|---|---|---|---|---|\n");
    printf("| %d | %.1f | %.1f | %.1f | %.1f | %.1f |\n", layers, sec[0], sec[1], sec[2], sec[3],
           sec[4]);
    return 0;
}
