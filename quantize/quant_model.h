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

/* The calibration windows lmp_quant_model draws for model m and options o (same sampler,
 * seed and BOS rule): *out (o->nsamples * o->seqlen) malloc'd, every id checked against the
 * vocabulary. */
enum lmp_status lmp_quant_model_windows(const struct lmp_model *m, const int32_t *calib,
                                        int64_t n_calib, const struct lmp_quant_model_opts *o,
                                        int32_t **out, struct lmp_err *err);

/* ---- end-to-end scale tuning (quantize/tune.c) --------------------------------------------
 * After GPTQ/RTN: codes and zero points fixed, every fp16 group scale s = s0 (1 + theta) (and,
 * with norms, every RMSNorm weight w = w0 (1 + phi)) trained by Adam (warm-up 10 %, cosine
 * decay) to minimise the mean KL(teacher || quantized) of the next-token distributions over
 * the calibration windows, through runtime/backward.h. The format is unchanged. */
struct lmp_quant_tune_opts {
    int steps;      /* optimizer steps; 0 = off */
    int batch;      /* windows per step (8) */
    float lr;       /* peak Adam step on the relative parameters theta, phi (2e-3) */
    int norms;      /* also train the RMSNorm weights */
    int n_threads;  /* <= 0: OpenMP default */
    uint64_t seed;  /* window order (a fresh shuffle of the windows per pass) */
    void (*progress)(void *user, int step, int steps, double loss);
    void *progress_user;
};
void lmp_quant_tune_opts_default(struct lmp_quant_tune_opts *o);
/* q: the quantized model (its packed tensors' scales, and norms, are changed in place);
 * teacher: the unquantized model of the same shape; win (n_win, len) calibration windows.
 * loss_first / loss_last (may be NULL): mean KL per position at the first and last step.
 * Errors: LMP_ERR_ARG (no packed weights, other shapes, bad options, divergence),
 * LMP_ERR_NOMEM. */
enum lmp_status lmp_quant_tune(struct lmp_model *q, const struct lmp_model *teacher,
                               const int32_t *win, int n_win, int len,
                               const struct lmp_quant_tune_opts *o, double *loss_first,
                               double *loss_last, struct lmp_err *err);

#endif
