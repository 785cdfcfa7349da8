/* Private to eval/: the saved-distributions file of docs/LOGITS.md and per-position
 * statistics. Never included outside eval/. */
#ifndef LMP_EVAL_INTERNAL_H
#define LMP_EVAL_INTERNAL_H

#include "eval.h"

#include <stdint.h>
#include <stdio.h>

#define LMP_LOGITS_MAGIC "LMPLOGIT"
#define LMP_LOGITS_VERSION 1
#define LMP_LOGITS_HEADER 64

struct lmp_logits_hdr {
    uint32_t protocol, ctx, vocab, topk, n_chunks, per_chunk, stream_crc;
    uint64_t n_positions;
};

/* Bytes of one record: lp_tok, lp_rest, topk ids, topk log-probs. */
static inline size_t lmp_logits_rec_size(int topk) { return 8 + 8 * (size_t)topk; }

void lmp_logits_hdr_encode(const struct lmp_logits_hdr *h, unsigned char out[LMP_LOGITS_HEADER]);
enum lmp_status lmp_logits_hdr_decode(const unsigned char *p, size_t len, const char *path,
                                      struct lmp_logits_hdr *h, struct lmp_err *err);

/* Log-softmax summary of one row of logits (vocab): max and log-sum-exp in double. */
struct lmp_lsm {
    float mx;
    double sum;   /* sum of expf(l - mx) */
    double lse;   /* log(sum) */
    int argmax;   /* lowest index of the max */
};
void lmp_lsm_row(const float *l, int vocab, struct lmp_lsm *s);

/* Encodes the record of one scored position: top-k of the row (ties: lower id first), the
 * log-prob of tok, the log of the remaining mass. topk <= vocab; ids, vals: (topk) scratch;
 * all: (vocab) scratch when topk > LMP_TOPK_INSERTION, else unused (may be NULL). */
#define LMP_TOPK_INSERTION 64
struct lmp_cand {
    float v;
    int32_t id;
};
void lmp_logits_rec_encode(const float *l, int vocab, const struct lmp_lsm *s, int tok, int topk,
                           int32_t *ids, float *vals, struct lmp_cand *all, unsigned char *rec);

/* Per-position comparison with a base record; fills the values llama.cpp accumulates.
 * mark: (vocab) zeroed bytes, left zeroed. Returns LMP_ERR_FORMAT (err names path and
 * position) for a malformed record. */
struct lmp_kl_pos {
    double nll, nll_base, kld, p_diff;
    int same_top;
};
enum lmp_status lmp_logits_rec_compare(const unsigned char *rec, int topk, const float *l,
                                       int vocab, const struct lmp_lsm *s, int tok,
                                       unsigned char *mark, struct lmp_kl_pos *out,
                                       const char *path, int64_t position, struct lmp_err *err);

#endif
