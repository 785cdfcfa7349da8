/* Whole-model quantization (GPTQ / RTN) on top of the matrix-level quant.h: calibration
 * windows, layer-by-layer true-sequential GPTQ through the runtime's hooks, packing. */
#ifndef LMP_QUANT_MODEL_H
#define LMP_QUANT_MODEL_H

#include "quant.h"

enum lmp_quant_method { LMP_QUANT_GPTQ = 0, LMP_QUANT_RTN = 1 };

struct lmp_quant_model_opts {
    enum lmp_quant_method method;
    struct lmp_quant_opts q; /* bits, group, sym, damp, block, act_order, static_groups, mse */
    int nsamples;            /* calibration windows (128) */
    int seqlen;              /* tokens per window (512) */
    uint64_t seed;           /* window starts */
    int calib_bos;           /* first token of each window replaced by BOS (as ppl chunks) */
    int python_sampler;      /* windows as the reference scripts draw them: CPython's
                                random.seed(seed) + randint over BOS + ids, no BOS forcing */
    int n_threads;           /* <= 0: OpenMP default */
    float fp_alpha;          /* > 0: quantize toward the unquantized model's outputs on its own
                                activations (quant.h, lmp_quant_fp_target) with this weight;
                                0: off (the reference's objective). Costs one more pass per
                                layer and the unquantized inputs of one layer in memory. */
    float fp_residual;       /* with fp_alpha: the attention output projection (o) also aims
                                to undo this fraction of the error the quantized layers so far
                                left in the residual stream (its layer input); 0: off */
    int no_shortcut;         /* always run the separate output pass (see model_quant.c) */
    /* progress: called after each stage of each layer (stage "qkv", "o", "gate_up",
     * "down", "done", "rtn"); layer counts finished layers for "done"/"rtn". */
    void (*progress)(void *user, int layer, int n_layers, const char *stage);
    void *progress_user;
};
void lmp_quant_model_opts_default(struct lmp_quant_model_opts *o);

#define LMP_QUANT_REPORT_MAX 4096
struct lmp_quant_tensor_report {
    char name[LMP_NAME_MAX];
    double loss;
    int damp_retries, n_dead;
};
struct lmp_quant_report {
    int n_tensors;
    struct lmp_quant_tensor_report t[LMP_QUANT_REPORT_MAX];
    int n_damp_retries; /* Cholesky failures retried with more damping */
    int n_shortcut_fallbacks; /* layers whose output needed the separate pass */
    double seconds;
};

/* nsamples windows of seqlen tokens at reproducible random starts (seed); when bos >= 0
 * the first token of each window is replaced by it. *out (nsamples*seqlen) malloc'd. */
enum lmp_status lmp_quant_calib_windows(const int32_t *ids, int64_t n_ids, int nsamples,
                                        int seqlen, uint64_t seed, int bos, int32_t **out,
                                        struct lmp_err *err);

/* The same windows as CPython's random.seed(seed); randint(0, len - seqlen - 1) over the
 * stream bos + ids (bos < 0: ids alone), as the reference GPTQ data loaders draw them. */
enum lmp_status lmp_quant_calib_windows_python(const int32_t *ids, int64_t n_ids, int nsamples,
                                               int seqlen, uint64_t seed, int bos, int32_t **out,
                                               struct lmp_err *err);

/* Quantizes every linear layer of every block in place (embeddings, norms and the output
 * head are left as they are); on success the tensors are packed Q2..Q8 tensors.
 * calib: token ids of the calibration text (no BOS), unused for RTN. rep may be NULL.
 * On failure the model is in an undefined state: free it. */
enum lmp_status lmp_quant_model(struct lmp_model *m, const int32_t *calib, int64_t n_calib,
                                const struct lmp_quant_model_opts *o,
                                struct lmp_quant_report *rep, struct lmp_err *err);

#endif
