/* Perplexity of a model on a token stream, as llama.cpp's llama-perplexity or as the GPTQ
 * paper's evaluation computes it, and KL-divergence to a base model's saved distributions
 * (docs/LOGITS.md).
 *
 * Protocols (both start from stream = BOS + ids when the vocabulary adds a BOS):
 *   LLAMACPP  chunk k = stream[k*ctx, (k+1)*ctx) with its first token replaced by BOS,
 *             n_chunks = len(stream) / ctx, each chunk evaluated from an empty cache; the
 *             logits at positions j in [ctx/2, ctx-1) score token j+1: ctx-1-ctx/2 tokens
 *             per chunk.
 *   GPTQ      window k = stream[k*ctx, (k+1)*ctx) as is, n = len(stream) / ctx windows; the
 *             logits at positions j in [0, ctx-1) score token j+1: ctx-1 tokens per window.
 * PPL = exp(mean NLL); its error is llama.cpp's: ppl * sqrt((E[nll^2] - E[nll]^2)/(N-1)).
 * Chunks are independent: they run in parallel, one runtime state per thread, and are
 * summed in chunk order, so the result does not depend on the thread count.
 */
#ifndef LMP_EVAL_H
#define LMP_EVAL_H

#include "formats/model.h"

#include <stdint.h>

enum lmp_eval_protocol {
    LMP_EVAL_LLAMACPP = 0,
    LMP_EVAL_GPTQ = 1,
};
const char *lmp_eval_protocol_name(enum lmp_eval_protocol p); /* "llamacpp", "gptq" */
/* 0 and *out set for a known name, -1 otherwise. */
int lmp_eval_protocol_parse(const char *name, enum lmp_eval_protocol *out);

#define LMP_EVAL_TOPK_DEFAULT 32

struct lmp_eval_opts {
    enum lmp_eval_protocol protocol;
    int ctx;          /* tokens per chunk, 2..cfg.max_ctx (LLAMACPP: 4..) */
    int max_chunks;   /* <= 0: every full chunk */
    int n_threads;    /* <= 0: OpenMP's default */
    int ref;          /* scalar reference kernels (testing) */
    const char *save_logits; /* write the scored distributions here (docs/LOGITS.md) */
    int topk;         /* for save_logits: ids kept per position; <= 0: default 32 */
    const char *kl_base;     /* compare with distributions saved by save_logits */
    /* called after each chunk, in order, from the calling thread's parallel region */
    void (*progress)(void *user, int done, int total);
    void *progress_user;
};

/* Statistics against a base (kl_base); uncertainties are llama.cpp's. */
struct lmp_eval_kl {
    double ppl_base, ppl_base_err;     /* from the saved log-probs of the scored tokens */
    double ln_ratio, ln_ratio_err;     /* mean ln(PPL/PPL_base) */
    double kld_mean, kld_mean_err;     /* KL(base || model), nats per token */
    double kld_median, kld_p90, kld_p99, kld_p999, kld_max, kld_min;
    double top1, top1_err;             /* fraction where both argmaxes agree */
    double dp_rms, dp_rms_err;         /* RMS of p(model) - p(base) of the scored token */
    int topk;                          /* ids per position in the base file */
};

struct lmp_eval_result {
    double ppl, ppl_err, nll_mean;
    int64_t n_scored;    /* tokens whose probability was scored */
    int64_t n_processed; /* tokens run through the model (chunks x ctx) */
    int n_chunks;
    double seconds;      /* wall time of the evaluation loop */
    double tok_per_s;    /* n_processed / seconds (llama-perplexity's count) */
    int has_kl;
    struct lmp_eval_kl kl;
};

/* ids: the text's token ids, without BOS (the protocol adds it). Errors: LMP_ERR_ARG for a bad
 * option, an id outside the vocabulary, or text shorter than one chunk; LMP_ERR_IO /
 * LMP_ERR_FORMAT for the logits files (a base file from another protocol, context,
 * vocabulary or token stream is LMP_ERR_ARG). */
enum lmp_status lmp_eval_ppl(const struct lmp_model *m, const int32_t *ids, int64_t n_ids,
                             const struct lmp_eval_opts *opts, struct lmp_eval_result *res,
                             struct lmp_err *err);

/* Stream length (BOS included when added), chunks and scored tokens the options give for
 * n_ids ids; LMP_ERR_ARG as lmp_eval_ppl would report it. */
enum lmp_status lmp_eval_plan(const struct lmp_model *m, int64_t n_ids,
                              const struct lmp_eval_opts *opts, int *n_chunks, int64_t *n_scored,
                              struct lmp_err *err);

#endif
