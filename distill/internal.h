/* Private to distill/ (and its tests): the training context shared by distill.c (the loop,
 * adapters, AdamW) and ckpt.c (checkpoints). Never included elsewhere. */
#ifndef LMP_DISTILL_INTERNAL_H
#define LMP_DISTILL_INTERNAL_H

#include "distill.h"
#include "runtime/backward.h"
#include "runtime/runtime.h"

#include <stddef.h>
#include <stdint.h>

/* One trained array: a tensor's values or an adapter factor. */
struct lmp_distill_param {
    char name[LMP_NAME_MAX + 8];
    float *w;   /* (n) the values, updated in place */
    float *g;   /* (n) gradient of the mean loss */
    size_t n;
    size_t off; /* offset of its moments in the context's m / v */
    int decay;  /* weight decay applies (matrices) */
};

/* A low-rank adapter on one linear weight t (rows, cols): the forward reads
 * base + B A (rounded onto t's grid when grid is set). */
struct lmp_distill_adapter {
    struct lmp_tensor *t;
    int rows, cols, rank;
    float *A;      /* (rank, cols) */
    float *B;      /* (rows, rank) */
    float *dA, *dB;
    float *base;   /* (rows, cols) natural column order: the fixed weight */
    uint8_t *codes; /* packed t: (rows, cols) its codes, storage order; else NULL */
    float *weff;   /* (rows, cols) what the training forward reads (lmp_rt_train_weight) */
    float *gw;     /* (rows, cols) dL/dweff (the backward's buffer) */
    int grid;      /* forward through the grid (straight-through) */
};

/* Per-thread teacher. */
struct lmp_distill_teacher {
    struct lmp_rt_state *s;
    float *logits;    /* (seqlen, vocab) */
    void *scratch;    /* lmp_distill_kl_scratch(vocab, topk) bytes */
};

struct lmp_distill_ctx {
    const struct lmp_model *teacher;
    struct lmp_model *student;
    struct lmp_distill_opts o;   /* warmup and mode resolved */
    int vocab, bos;
    struct lmp_rt_train *tr;
    struct lmp_rt_grads *g;
    struct lmp_distill_teacher *tt;
    int n_tt;
    struct lmp_distill_param *p;
    int np;
    size_t n_values;             /* sum of p[i].n */
    float *m, *v;                /* (n_values) AdamW moments */
    struct lmp_distill_adapter *ad;
    int nad;
    float *ad_mem;               /* A, B, dA, dB, base of every adapter */
    int32_t *tokens;             /* (batch, seqlen) */
    float scale;                 /* 1 / positions of the current batch */
    int step;                    /* steps done */
    uint64_t hash;               /* settings + student + teacher + data */
};

/* Sets up training of student by teacher under o (checked by lmp_distill_check): resolves
 * the mode, widens F16/BF16 tensors that are trained to F32, builds the parameters, the
 * adapters (initialised from o->seed), the backward context and the teacher states. The
 * student must stay alive and is modified in place. */
enum lmp_status lmp_distill_ctx_create(const struct lmp_model *teacher,
                                       struct lmp_model *student,
                                       const struct lmp_distill_opts *o,
                                       struct lmp_distill_ctx **out, struct lmp_err *err);
void lmp_distill_ctx_free(struct lmp_distill_ctx *c); /* accepts NULL */

/* Mean loss over the positions of tokens (n_seq, len) and its gradient with respect to
 * every parameter (p[i].g); the adapters are applied first. */
enum lmp_status lmp_distill_ctx_grad(struct lmp_distill_ctx *c, const int32_t *tokens,
                                     int n_seq, int len, double *loss, struct lmp_err *err);

/* Merges the adapters into the student (o.merge); FULL: nothing to do. */
enum lmp_status lmp_distill_ctx_merge(struct lmp_distill_ctx *c, struct lmp_err *err);

/* A 64-bit FNV-1a-style hash of n bytes (8-byte words, then the tail), continuing from h
 * (start with LMP_DISTILL_FNV0); identifies runs in checkpoints, not cryptographic. */
#define LMP_DISTILL_FNV0 0xcbf29ce484222325ull
uint64_t lmp_distill_fnv(uint64_t h, const void *p, size_t n);

/* Checkpoints (ckpt.c). Save writes the step, every parameter's values and the moments,
 * atomically; load checks the magic, crc, hash and layout against c and fills them. */
enum lmp_status lmp_distill_ckpt_save(const struct lmp_distill_ctx *c, const char *path,
                                      struct lmp_err *err);
enum lmp_status lmp_distill_ckpt_load(struct lmp_distill_ctx *c, const char *path,
                                      struct lmp_err *err);

#endif
