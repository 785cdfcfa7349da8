/* The CUDA forward pass: weights uploaded once into a state, the KV cache and scratch
 * allocated once, then per batch embed -> n_layers blocks -> head, as runtime/forward.c.
 * Batches of more than one token go through cuBLAS sgemm (fp32); a single token goes
 * through the matrix-vector kernels, captured once as a CUDA graph whose token id and
 * position are read from device memory, so a decode step is one small kernel plus one
 * graph launch. Also: a random Llama-shaped model made on the device, and perplexity. */
#include "internal.h"

extern "C" {
#include "eval/eval.h"
}

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- errors, allocation ----------------------------------------------------------------- */

enum lmp_status cu_fail(struct lmp_err *err, cudaError_t e, const char *what)
{
    (void)cudaGetLastError(); /* clear a non-sticky error */
    if (e == cudaErrorMemoryAllocation)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "out of GPU memory: %s", what);
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver ||
        e == cudaErrorInvalidDevice || e == cudaErrorDevicesUnavailable ||
        e == cudaErrorSystemDriverMismatch || e == cudaErrorCompatNotSupportedOnDevice ||
        e == cudaErrorNoKernelImageForDevice || e == cudaErrorUnsupportedPtxVersion)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "no usable CUDA device: %s: %s", what,
                           cudaGetErrorString(e));
    return lmp_err_set(err, LMP_ERR_INTERNAL, "CUDA error in %s: %s", what, cudaGetErrorString(e));
}

enum lmp_status cu_blas_fail(struct lmp_err *err, cublasStatus_t e, const char *what)
{
    if (e == CUBLAS_STATUS_ALLOC_FAILED)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "out of GPU memory: cuBLAS %s", what);
    if (e == CUBLAS_STATUS_NOT_INITIALIZED)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "no usable CUDA device: cuBLAS %s", what);
    return lmp_err_set(err, LMP_ERR_INTERNAL, "cuBLAS error %d in %s", (int)e, what);
}

enum lmp_status cu_alloc(void **p, size_t n, const char *what, struct lmp_err *err)
{
    *p = NULL;
    cudaError_t e = cudaMalloc(p, n ? n : 1);
    if (e == cudaSuccess) return LMP_OK;
    *p = NULL;
    (void)cudaGetLastError();
    if (e == cudaErrorMemoryAllocation) {
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                           "out of GPU memory: %s needs %.1f MiB, %.1f MiB free of %.1f MiB", what,
                           n / 1048576.0, fr / 1048576.0, tot / 1048576.0);
    }
    return cu_fail(err, e, what);
}

enum lmp_status cu_use_device(int device, struct lmp_err *err)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "no CUDA device: %s", cudaGetErrorString(e));
    }
    if (device < 0 || device >= n)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "no CUDA device %d (%d found)", device, n);
    CU_TRY(cudaSetDevice(device), "selecting the device");
    return LMP_OK;
}

extern "C" enum lmp_status lmp_cuda_probe(int device, struct lmp_cuda_info *info,
                                          struct lmp_err *err)
{
    memset(info, 0, sizeof *info);
    enum lmp_status st = cu_use_device(device, err);
    if (st) return st;
    cudaDeviceProp p;
    CU_TRY(cudaGetDeviceProperties(&p, device), "reading device properties");
    snprintf(info->name, sizeof info->name, "%s", p.name);
    info->cc_major = p.major;
    info->cc_minor = p.minor;
    info->n_sm = p.multiProcessorCount;
    CU_TRY(cudaMemGetInfo(&info->mem_free, &info->mem_total), "reading device memory");
    cudaDriverGetVersion(&info->driver_version);
    cudaRuntimeGetVersion(&info->runtime_version);
    return LMP_OK;
}

enum lmp_status cu_state_alloc(struct lmp_cuda_state *s, void **p, size_t n, const char *what,
                               struct lmp_err *err)
{
    if (s->n_allocs == s->cap_allocs) {
        int cap = s->cap_allocs ? 2 * s->cap_allocs : 64;
        void **na = (void **)realloc(s->allocs, (size_t)cap * sizeof *na);
        if (!na) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        s->allocs = na;
        s->cap_allocs = cap;
    }
    enum lmp_status st = cu_alloc(p, n, what, err);
    if (st) return st;
    s->allocs[s->n_allocs++] = *p;
    return LMP_OK;
}

extern "C" void lmp_cuda_state_free(struct lmp_cuda_state *s)
{
    if (!s) return;
    cudaSetDevice(s->device);
    if (s->stream) cudaStreamSynchronize(s->stream);
    for (int k = 0; k < 2; k++)
        if (s->graph_state[k] == 1) cudaGraphExecDestroy(s->graph[k]);
    for (int i = 0; i < s->n_allocs; i++) cudaFree(s->allocs[i]);
    if (s->blas) cublasDestroy(s->blas);
    if (s->stream) cudaStreamDestroy(s->stream);
    free(s->allocs);
    free(s->L);
    free(s->kv_off);
    free(s->n_cached);
    free(s);
}

/* ---- sizes ------------------------------------------------------------------------------ */

static int mul_ok(size_t a, size_t b, size_t *out)
{
    if (a && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

/* the timeline's values: per launch slot (layer x 4 products + the head) and block, then per
 * layer and head the attention's */
static size_t tl_values(const struct lmp_cuda_state *s)
{
    return (size_t)(s->n_layers * 4 + 1) * s->q4t_tl_blocks * Q4T_TL + (size_t)s->n_layers * Q4T_TL_HEADS * 8;
}
static unsigned long long *tl_attention(const struct lmp_cuda_state *s, int l)
{
    if (!s->q4t_tl || s->L[l].nh > Q4T_TL_HEADS) return NULL;
    return s->q4t_tl + (size_t)(s->n_layers * 4 + 1) * s->q4t_tl_blocks * Q4T_TL + (size_t)l * Q4T_TL_HEADS * 8;
}

/* Per-layer maxima, cache offsets, KV cache, scratch, stream and cuBLAS. */
enum lmp_status cu_state_finish(struct lmp_cuda_state *s, const float *rope_cs_host,
                                struct lmp_err *err)
{
    enum lmp_status st;
    s->kv_off = (size_t *)calloc((size_t)s->n_layers, sizeof *s->kv_off);
    s->n_cached = (int *)calloc((size_t)s->n_layers, sizeof *s->n_cached);
    if (!s->kv_off || !s->n_cached) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    size_t kv_total = 0;
    s->max_in = s->dim;
    for (int l = 0; l < s->n_layers; l++) {
        const struct cu_layer *L = &s->L[l];
        int qd = L->nh * s->hd, kvd = L->nkv * s->hd;
        s->kv_off[l] = kv_total;
        size_t kvl;
        if (!mul_ok((size_t)kvd, (size_t)s->max_ctx, &kvl) || kv_total > SIZE_MAX / 8 - kvl)
            return lmp_err_set(err, LMP_ERR_NOMEM, "CUDA: KV cache size overflows");
        kv_total += kvl;
        if (qd > s->max_q) s->max_q = qd;
        if (kvd > s->max_kv) s->max_kv = kvd;
        if (L->ffn > s->max_ffn) s->max_ffn = L->ffn;
        if (qd > s->max_in) s->max_in = qd;
        if (L->ffn > s->max_in) s->max_in = L->ffn;
    }
    int dev = s->device;
    int smem = 0;
    CU_TRY(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
           "reading the shared-memory limit");
    s->smem_max = (size_t)smem - 1024; /* the kernels' static shared memory */
    if ((st = k_init_attrs(s->smem_max, err))) return st;
    size_t att_smem = ((size_t)s->hd + (size_t)s->max_ctx + 512 + 33) * sizeof(float);
    if (att_smem > s->smem_max)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                           "CUDA attention: context %d needs %zu bytes of shared memory, the "
                           "device allows %zu (use a shorter context)",
                           s->max_ctx, att_smem, s->smem_max);

    CU_TRY(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking), "creating a stream");
    cublasStatus_t be = cublasCreate(&s->blas);
    if (be != CUBLAS_STATUS_SUCCESS) {
        s->blas = NULL;
        return cu_blas_fail(err, be, "creating the handle");
    }
    BLAS_TRY(cublasSetStream(s->blas, s->stream), "setting the stream");
    BLAS_TRY(cublasSetMathMode(s->blas, CUBLAS_DEFAULT_MATH), "setting fp32 math");

    size_t B = (size_t)s->max_batch, n;
    struct {
        float **p;
        size_t floats;
        const char *what;
    } bufs[] = {
        {&s->k_cache, kv_total, "the K cache"},
        {&s->v_cache, kv_total, "the V cache"},
        {&s->rope_cs, (size_t)s->max_ctx * s->hd, "the RoPE table"},
        {&s->h, B * s->dim, "activations"},
        {&s->xb, B * (size_t)s->max_in, "activations"},
        {&s->q, B * s->max_q, "activations"},
        {&s->k, B * s->max_kv, "activations"},
        {&s->v, B * s->max_kv, "activations"},
        {&s->att, B * s->max_q, "activations"},
        {&s->g, B * s->max_ffn, "activations"},
        {&s->u, B * s->max_ffn, "activations"},
        {&s->logits, B * s->vocab, "logits"},
        {&s->wscr, s->wscr_floats, "the fp32 weight scratch"},
    };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        if (!mul_ok(bufs[i].floats, sizeof(float), &n))
            return lmp_err_set(err, LMP_ERR_NOMEM, "CUDA: size of %s overflows", bufs[i].what);
        if ((st = cu_state_alloc(s, (void **)bufs[i].p, n, bufs[i].what, err))) return st;
    }
    if (!s->att_pack) {
        /* the decode attention split over positions: ~2 blocks per SM (a head's blocks one
           cluster); by default from ATT_LONG positions on 16 shares combined through global
           memory (docs/GPU.md: ~1 point better at 1024 tokens, the same at 128) */
        int nh = 1;
        for (int l = 0; l < s->n_layers; l++) nh = s->L[l].nh > nh ? s->L[l].nh : nh;
        int S = s->att_shares > 0 ? s->att_shares : (2 * s->sms + nh / 2) / nh;
        S = S < 1 ? 1 : S > ATT_SPLIT_MAX ? ATT_SPLIT_MAX : S;
        s->att_cfg[0] = s->att_cfg[1] = s->att_sp;
        s->att_cfg[0].n = s->att_cfg[1].n = S > 1 ? S : 0;
        if (S > 1 && s->max_ctx > s->att_long) {
            s->att_cfg[1].n = ATT_SPLIT_MAX;
            s->att_cfg[1].combine = ATT_COMBINE_GLOBAL;
        } else {
            s->att_long = INT_MAX;
        }
        const int Smax = s->att_cfg[1].n > s->att_cfg[0].n ? s->att_cfg[1].n : s->att_cfg[0].n;
        if (Smax > 1) {
            float *part;
            unsigned *cnt;
            if ((st = cu_state_alloc(s, (void **)&part, (size_t)nh * Smax * (s->hd + 2) * sizeof(float),
                                     "attention parts", err)) ||
                (st = cu_state_alloc(s, (void **)&cnt, (size_t)nh * sizeof(unsigned), "attention counters", err)))
                return st;
            CU_TRY(cudaMemset(cnt, 0, (size_t)nh * sizeof(unsigned)), "clearing attention counters");
            for (int k = 0; k < 2; k++) s->att_cfg[k].part = part, s->att_cfg[k].cnt = cnt;
        }
        if (Smax > 1 && s->q4t_oh == 3) { /* o by heads' fixed-point sums, zero between layers */
            const size_t n = (size_t)s->dim * sizeof(long long);
            if ((st = cu_state_alloc(s, (void **)&s->o_acc, n, "o sums", err))) return st;
            CU_TRY(cudaMemset(s->o_acc, 0, n), "clearing the o sums");
        }
        s->att_sp = s->att_cfg[0];
    } else {
        s->att_long = INT_MAX; /* one block per head at every position */
    }
    if (s->q4t && s->q4t_tl_blocks) {
        const size_t n = tl_values(s) * sizeof(unsigned long long);
        if ((st = cu_state_alloc(s, (void **)&s->q4t_tl, n, "decode timeline", err))) return st;
        CU_TRY(cudaMemset(s->q4t_tl, 0, n), "clearing the decode timeline");
    }
    int *ctl;
    if ((st = cu_state_alloc(s, (void **)&ctl, (2 + B) * sizeof(int), "token ids", err)) ||
        (st = cu_state_alloc(s, &s->xprep, k_gemv_prep_bytes(s->max_in), "activations", err)))
        return st;
    s->d_pos = ctl;
    s->d_tok = (int32_t *)(ctl + 1);
    CU_TRY(cudaMemset(s->k_cache, 0, kv_total * sizeof(float)), "clearing the K cache");
    CU_TRY(cudaMemset(s->v_cache, 0, kv_total * sizeof(float)), "clearing the V cache");
    CU_TRY(cudaMemset(ctl, 0, (2 + B) * sizeof(int)), "clearing token ids");
    CU_TRY(cudaMemcpy(s->rope_cs, rope_cs_host, (size_t)s->max_ctx * s->hd * sizeof(float),
                      cudaMemcpyHostToDevice),
           "uploading the RoPE table");
    /* uploads and fills ran on the legacy stream, which does not order the state's
     * non-blocking stream: wait for them once here */
    CU_TRY(cudaDeviceSynchronize(), "uploading the model");
    return LMP_OK;
}

/* ---- weights from a model --------------------------------------------------------------- */

/* fp32 copy of any float tensor (NULL on OOM) */
static float *host_f32(const struct lmp_tensor *t)
{
    int64_t ne = lmp_tensor_nelem(t);
    float *d = (float *)malloc((size_t)(ne > 0 ? ne : 1) * sizeof *d);
    if (!d) return NULL;
    if (t->type == LMP_TYPE_F32)
        memcpy(d, t->data, (size_t)ne * sizeof *d);
    else if (t->type == LMP_TYPE_F16)
        for (int64_t k = 0; k < ne; k++) d[k] = lmp_f16_to_f32(((const uint16_t *)t->data)[k]);
    else
        for (int64_t k = 0; k < ne; k++) d[k] = lmp_bf16_to_f32(((const uint16_t *)t->data)[k]);
    return d;
}

static enum lmp_status check_tensor(const struct lmp_tensor *t, struct lmp_err *err)
{
    if (!t->data) return lmp_err_set(err, LMP_ERR_ARG, "tensor %s has no data", t->name);
    int64_t ne = lmp_tensor_nelem(t);
    if (ne <= 0 || (uint64_t)ne > SIZE_MAX / sizeof(float))
        return lmp_err_set(err, LMP_ERR_FORMAT, "tensor %s: bad size", t->name);
    if (lmp_type_is_float(t->type)) {
        if (t->nbytes / lmp_type_elem_size(t->type) < (size_t)ne)
            return lmp_err_set(err, LMP_ERR_FORMAT, "tensor %s: %zu bytes for %lld %s values",
                               t->name, t->nbytes, (long long)ne, lmp_type_name(t->type));
        return LMP_OK;
    }
    if (lmp_type_is_packed(t->type)) return LMP_OK; /* lmp_qview_from_tensor checks */
    return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                       "tensor %s: type %s is not supported by the CUDA runtime", t->name,
                       lmp_type_name(t->type));
}

/* A float vector (n) uploaded as F32. */
static enum lmp_status upload_vec(struct lmp_cuda_state *s, float **dst, const struct lmp_tensor *t,
                                  struct lmp_err *err)
{
    *dst = NULL;
    if (!t) return LMP_OK;
    enum lmp_status st = check_tensor(t, err);
    if (st) return st;
    if (!lmp_type_is_float(t->type))
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "tensor %s: a vector of type %s", t->name,
                           lmp_type_name(t->type));
    float *h = host_f32(t);
    if (!h) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    size_t n = (size_t)lmp_tensor_nelem(t) * sizeof(float);
    st = cu_state_alloc(s, (void **)dst, n, t->name, err);
    if (!st && cudaMemcpy(*dst, h, n, cudaMemcpyHostToDevice) != cudaSuccess)
        st = cu_fail(err, cudaGetLastError(), "uploading a vector");
    free(h);
    return st;
}

/* The tile layout of a 4-bit matrix for the tensor-core decode kernels (decode_q4t.cu),
 * where it applies; made on the device from the packed codes. */
static enum lmp_status mat_tiles(struct lmp_cuda_state *s, struct cu_mat *d, const char *what,
                                 struct lmp_err *err)
{
    if (!s->q4t || !k_q4t_mat_ok(d)) return LMP_OK;
    size_t cb, sb;
    k_q4t_bytes(d, &cb, &sb);
    enum lmp_status st;
    if ((st = cu_state_alloc(s, (void **)&d->t_codes, cb, what, err)) ||
        (st = cu_state_alloc(s, (void **)&d->t_sz, sb, what, err)))
        return st;
    k_q4t_pack(s->stream, d);
    CU_LAUNCHED("making the decode tile layout");
    return LMP_OK;
}

static double mat_bytes(const struct cu_mat *d)
{
    double rc = (double)d->rows * d->cols;
    if (d->kind == CU_F32) return rc * 4;
    if (d->kind == CU_F16) return rc * 2;
    return (double)d->rows * d->row_bytes + 4.0 * d->rows * d->n_groups +
           (d->perm ? 4.0 * d->cols : 0.0);
}

static enum lmp_status upload_mat(struct lmp_cuda_state *s, struct cu_mat *d,
                                  const struct lmp_tensor *t, const struct lmp_tensor *bias,
                                  int want_f16, struct lmp_err *err)
{
    memset(d, 0, sizeof *d);
    enum lmp_status st = check_tensor(t, err);
    if (st) return st;
    d->rows = (int)t->shape[0];
    d->cols = (int)t->shape[1];
    size_t ne = (size_t)d->rows * (size_t)d->cols;
    if (lmp_type_is_packed(t->type)) {
        struct lmp_qview qv;
        if ((st = lmp_qview_from_tensor(&qv, t, err))) return st;
        d->kind = CU_PACKED;
        d->bits = qv.bits;
        d->group = qv.group;
        d->n_groups = (int)qv.n_groups;
        d->row_bytes = qv.row_bytes;
        size_t cb = qv.row_bytes * (size_t)d->rows, pb = (size_t)d->rows * qv.n_groups * 2;
        if ((st = cu_state_alloc(s, (void **)&d->codes, cb + 64, t->name, err)) ||
            (st = cu_state_alloc(s, (void **)&d->scales, pb, t->name, err)) ||
            (st = cu_state_alloc(s, (void **)&d->zeros, pb, t->name, err)))
            return st;
        CU_TRY(cudaMemset(d->codes + cb, 0, 64), "clearing padding");
        CU_TRY(cudaMemcpy(d->codes, qv.codes, cb, cudaMemcpyHostToDevice), "uploading codes");
        CU_TRY(cudaMemcpy(d->scales, qv.scales, pb, cudaMemcpyHostToDevice), "uploading scales");
        CU_TRY(cudaMemcpy(d->zeros, qv.zeros, pb, cudaMemcpyHostToDevice), "uploading zeros");
        if (qv.perm) {
            if ((st = cu_state_alloc(s, (void **)&d->perm, (size_t)d->cols * 4, t->name, err)))
                return st;
            CU_TRY(cudaMemcpy(d->perm, qv.perm, (size_t)d->cols * 4, cudaMemcpyHostToDevice),
                   "uploading a permutation");
        }
        size_t exp_floats = ne;
        if (exp_floats > s->wscr_floats) s->wscr_floats = exp_floats;
        if ((st = mat_tiles(s, d, t->name, err))) return st;
    } else if (t->type == LMP_TYPE_F16 || want_f16) {
        d->kind = CU_F16;
        uint16_t *h = (uint16_t *)malloc(ne * 2);
        if (!h) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        if (t->type == LMP_TYPE_F16)
            memcpy(h, t->data, ne * 2);
        else
            for (size_t k = 0; k < ne; k++)
                h[k] = lmp_f32_to_f16(lmp_tensor_get_f32(t, (int64_t)(k / d->cols), (int64_t)(k % d->cols)));
        st = cu_state_alloc(s, (void **)&d->f16, ne * 2, t->name, err);
        if (!st && cudaMemcpy(d->f16, h, ne * 2, cudaMemcpyHostToDevice) != cudaSuccess)
            st = cu_fail(err, cudaGetLastError(), "uploading weights");
        free(h);
        if (st) return st;
        if (ne > s->wscr_floats) s->wscr_floats = ne;
    } else {
        d->kind = CU_F32;
        float *h = t->type == LMP_TYPE_F32 ? (float *)t->data : host_f32(t);
        if (!h) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        st = cu_state_alloc(s, (void **)&d->f32, ne * 4, t->name, err);
        if (!st && cudaMemcpy(d->f32, h, ne * 4, cudaMemcpyHostToDevice) != cudaSuccess)
            st = cu_fail(err, cudaGetLastError(), "uploading weights");
        if (h != t->data) free(h);
        if (st) return st;
    }
    if (bias && (st = upload_vec(s, &d->bias, bias, err))) return st;
    d->bytes = mat_bytes(d);
    return LMP_OK;
}

static struct lmp_cuda_state *state_new(int device)
{
    struct lmp_cuda_state *s = (struct lmp_cuda_state *)calloc(1, sizeof *s);
    if (s) s->device = device;
    return s;
}

/* The decode options of o into s (the defaults where o leaves 0). */
static void state_opts(struct lmp_cuda_state *s, const struct lmp_cuda_opts *o)
{
    s->exact_gemv = o->exact_gemv;
    s->no_graph = o->no_graph;
    s->no_fuse = o->no_fuse;
    s->gemv_warps = o->gemv_warps;
    s->q4f = !o->no_fuse && !o->exact_gemv && !o->legacy_decode;
    s->pdl = !o->no_pdl;
    s->q4_warps = o->q4_warps == 8 || o->q4_warps == 16 ? o->q4_warps : Q4F_WARPS;
    s->q4_bps = o->q4_bps > 0 ? o->q4_bps : Q4F_BPS;
    s->q4_pipe = o->q4_pipe == 1 ? 1 : o->q4_pipe == 2 ? 0 : Q4F_PIPE;
    s->q4_mega = s->q4f && o->q4_mega;
    s->q4t = s->q4f && !o->no_q4t;
    s->q4t_depth = o->q4t_depth >= 0 && o->q4t_depth <= 12 ? o->q4t_depth : 0;
    s->q4t_diag = o->q4t_diag;
    s->q4t_prep1 = o->q4t_prep != 2;
    s->q4t_oh = o->att_pack || o->q4t_diag ? 0 : o->att_o == 6 ? 1 : o->att_o == 7 ? 2 : o->att_o == 8 ? 3 : 0;
    s->q4p = s->q4t && o->q4t_persist == 1;
    s->q4p_flags = o->q4p_flags;
    s->q4p_slots = o->q4p_slots;
    s->att_pack = o->att_pack;
    s->att_shares = o->att_shares;
    s->att_sp.combine = o->att_combine == ATT_COMBINE_GLOBAL || o->att_combine == ATT_COMBINE_CLUSTER ? o->att_combine
                                                                                                   : ATT_COMBINE;
    /* the setting by position only where neither the shares nor the combine are asked for */
    s->att_long = o->att_shares > 0 || o->att_combine == ATT_COMBINE_GLOBAL || o->att_combine == ATT_COMBINE_CLUSTER
                      ? INT_MAX
                      : o->att_long > 0 ? o->att_long : ATT_LONG;
    if (cudaDeviceGetAttribute(&s->sms, cudaDevAttrMultiProcessorCount, s->device) != cudaSuccess || s->sms < 1)
        s->sms = 1;
    if (o->q4t_timeline) s->q4t_tl_blocks = s->sms; /* the tile kernels' grids: one block per SM at most */
}


extern "C" enum lmp_status lmp_cuda_state_create(const struct lmp_model *m, int max_ctx,
                                                 int max_batch, const struct lmp_cuda_opts *o,
                                                 struct lmp_cuda_state **out,
                                                 struct lmp_err *err)
{
    *out = NULL;
    struct lmp_cuda_opts dflt = {};
    if (!o) o = &dflt;
    const struct lmp_config *c = &m->cfg;
    if (!m->layers || !m->tok_embd || !m->out || !m->out_norm || !c->layer)
        return lmp_err_set(err, LMP_ERR_ARG, "runtime: model is not bound (lmp_model_bind)");
    if (max_ctx < 1 || max_ctx > c->max_ctx)
        return lmp_err_set(err, LMP_ERR_ARG, "runtime: context %d outside [1, %d] (model maximum)",
                           max_ctx, c->max_ctx);
    if (max_batch < 1) return lmp_err_set(err, LMP_ERR_ARG, "runtime: batch %d < 1", max_batch);
    if (max_batch > max_ctx) max_batch = max_ctx;
    enum lmp_status st = cu_use_device(o->device, err);
    if (st) return st;
    struct lmp_cuda_state *s = state_new(o->device);
    float *cs = NULL;
    if (!s) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    s->dim = c->dim;
    s->n_layers = c->n_layers;
    s->hd = c->head_dim;
    s->vocab = c->vocab;
    s->max_ctx = max_ctx;
    s->max_batch = max_batch;
    s->norm_eps = c->norm_eps;
    state_opts(s, o);
    s->L = (struct cu_layer *)calloc((size_t)c->n_layers, sizeof *s->L);
    if (!s->L) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        goto fail;
    }
    /* the embedding is looked up by rows: F32 on the device */
    {
        const struct lmp_tensor *e = m->tok_embd;
        float *h = NULL;
        if ((st = check_tensor(e, err))) goto fail;
        if (lmp_type_is_packed(e->type)) {
            struct lmp_qview qv;
            if ((st = lmp_qview_from_tensor(&qv, e, err))) goto fail;
            h = (float *)malloc((size_t)lmp_tensor_nelem(e) * sizeof *h);
            if (h) lmp_qview_dequant(&qv, h);
        } else {
            h = host_f32(e);
        }
        if (!h) {
            st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
            goto fail;
        }
        size_t n = (size_t)lmp_tensor_nelem(e) * sizeof(float);
        st = cu_state_alloc(s, (void **)&s->tok_embd, n, "the token embeddings", err);
        if (!st && cudaMemcpy(s->tok_embd, h, n, cudaMemcpyHostToDevice) != cudaSuccess)
            st = cu_fail(err, cudaGetLastError(), "uploading the token embeddings");
        free(h);
        if (st) goto fail;
    }
    if ((st = upload_vec(s, &s->out_norm, m->out_norm, err))) goto fail;
    if (m->out == m->tok_embd && !o->weights_f16 && !lmp_type_is_packed(m->out->type)) {
        memset(&s->out, 0, sizeof s->out);
        s->out.kind = CU_F32;
        s->out.rows = c->vocab;
        s->out.cols = c->dim;
        s->out.f32 = s->tok_embd;
        s->out.bytes = mat_bytes(&s->out);
    } else if ((st = upload_mat(s, &s->out, m->out, NULL, o->weights_f16, err))) {
        goto fail;
    }
    for (int l = 0; l < c->n_layers; l++) {
        const struct lmp_layer *ly = &m->layers[l];
        struct cu_layer *L = &s->L[l];
        L->nh = c->layer[l].n_heads;
        L->nkv = c->layer[l].n_kv_heads;
        L->ffn = c->layer[l].ffn;
        const struct lmp_tensor *mats[7] = {ly->wq, ly->wk, ly->wv, ly->wo,
                                            ly->w_gate, ly->w_up, ly->w_down};
        const struct lmp_tensor *bias[7] = {ly->bq, ly->bk, ly->bv, NULL, NULL, NULL, NULL};
        if ((st = upload_vec(s, &L->attn_norm, ly->attn_norm, err)) ||
            (st = upload_vec(s, &L->ffn_norm, ly->ffn_norm, err)))
            goto fail;
        for (int k = 0; k < 7; k++)
            if ((st = upload_mat(s, &L->m[k], mats[k], bias[k], o->weights_f16, err))) goto fail;
    }
    cs = (float *)malloc((size_t)max_ctx * c->head_dim * sizeof *cs);
    if (!cs) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        goto fail;
    }
    lmp_rt_rope_table(cs, 0, max_ctx, c->head_dim, c->rope_theta);
    st = cu_state_finish(s, cs, err);
    free(cs);
    if (st) goto fail;
    *out = s;
    return LMP_OK;
fail:
    lmp_cuda_state_free(s);
    return st;
}

/* ---- random model -------------------------------------------------------------------------- */

static enum lmp_status random_mat(struct lmp_cuda_state *s, struct cu_mat *d, int rows, int cols,
                                  enum lmp_cuda_wtype wt, int bits, int group, uint64_t seed,
                                  struct lmp_err *err)
{
    memset(d, 0, sizeof *d);
    d->rows = rows;
    d->cols = cols;
    size_t ne = (size_t)rows * cols;
    enum lmp_status st;
    const float b = sqrtf(3.0f / (float)cols); /* uniform(-b, b): unit gain */
    if (wt == LMP_CUDA_W_F32) {
        d->kind = CU_F32;
        if ((st = cu_state_alloc(s, (void **)&d->f32, ne * 4, "random weights", err))) return st;
        k_rand_f32(s->stream, d->f32, ne, -b, b, seed);
    } else if (wt == LMP_CUDA_W_F16) {
        d->kind = CU_F16;
        if ((st = cu_state_alloc(s, (void **)&d->f16, ne * 2, "random weights", err))) return st;
        k_rand_f16(s->stream, d->f16, ne, -b, b, seed);
        if (ne > s->wscr_floats) s->wscr_floats = ne;
    } else {
        struct lmp_err e2;
        size_t cb, pb;
        int g = group > 0 && group < cols ? group : cols;
        if (lmp_qpack_sizes(rows, cols, bits, g, &cb, &pb, &e2))
            return lmp_err_set(err, LMP_ERR_ARG, "random model: %s", e2.msg);
        d->kind = CU_PACKED;
        d->bits = bits;
        d->group = g;
        d->n_groups = (cols + g - 1) / g;
        d->row_bytes = lmp_qpack_row_bytes(cols, bits);
        if ((st = cu_state_alloc(s, (void **)&d->codes, cb + 64, "random weights", err)) ||
            (st = cu_state_alloc(s, (void **)&d->scales, pb, "random weights", err)) ||
            (st = cu_state_alloc(s, (void **)&d->zeros, pb, "random weights", err)))
            return st;
        /* random bytes: every code uniform (row padding bits included, never read as data) */
        k_rand_u8(s->stream, d->codes, cb + 64, seed);
        float half = (float)(1 << (bits - 1));
        k_rand_f16(s->stream, d->scales, pb / 2, 0.5f * b / half, 1.5f * b / half, seed ^ 0x5ca1e);
        k_fill_f16(s->stream, d->zeros, pb / 2, half);
        if (ne > s->wscr_floats) s->wscr_floats = ne;
        if ((st = mat_tiles(s, d, "random weights", err))) return st;
    }
    CU_LAUNCHED("random weights");
    d->bytes = mat_bytes(d);
    return LMP_OK;
}

extern "C" enum lmp_status lmp_cuda_state_create_random(const struct lmp_config *c, int max_ctx,
                                                        int max_batch, enum lmp_cuda_wtype wt,
                                                        int bits, int group, uint64_t seed,
                                                        const struct lmp_cuda_opts *o,
                                                        struct lmp_cuda_state **out,
                                                        struct lmp_err *err)
{
    *out = NULL;
    struct lmp_cuda_opts dflt = {};
    if (!o) o = &dflt;
    if (c->dim < 1 || c->n_layers < 1 || c->head_dim < 2 || c->head_dim % 2 || c->vocab < 1 ||
        !c->layer || max_ctx < 1 || max_batch < 1)
        return lmp_err_set(err, LMP_ERR_ARG, "random model: bad shape");
    if (wt == LMP_CUDA_W_PACKED && !lmp_qpack_bits_ok(bits))
        return lmp_err_set(err, LMP_ERR_ARG, "random model: %d bits", bits);
    for (int l = 0; l < c->n_layers; l++)
        if (c->layer[l].n_heads < 1 || c->layer[l].n_kv_heads < 1 ||
            c->layer[l].n_heads % c->layer[l].n_kv_heads || c->layer[l].ffn < 1)
            return lmp_err_set(err, LMP_ERR_ARG, "random model: bad layer %d", l);
    if (max_batch > max_ctx) max_batch = max_ctx;
    enum lmp_status st = cu_use_device(o->device, err);
    if (st) return st;
    struct lmp_cuda_state *s = state_new(o->device);
    float *cs = NULL;
    if (!s) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    s->dim = c->dim;
    s->n_layers = c->n_layers;
    s->hd = c->head_dim;
    s->vocab = c->vocab;
    s->max_ctx = max_ctx;
    s->max_batch = max_batch;
    s->norm_eps = c->norm_eps > 0 ? c->norm_eps : 1e-5f;
    state_opts(s, o);
    s->L = (struct cu_layer *)calloc((size_t)c->n_layers, sizeof *s->L);
    /* the stream exists before cu_state_finish so the random fills can run on it */
    if (!s->L) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        goto fail;
    }
    {
        const int D = c->dim;
        uint64_t sd = seed * 0x9E3779B97F4A7C15ull + 1;
        if ((st = cu_state_alloc(s, (void **)&s->tok_embd, (size_t)c->vocab * D * 4,
                                 "random embeddings", err)) ||
            (st = cu_state_alloc(s, (void **)&s->out_norm, (size_t)D * 4, "random norms", err)))
            goto fail;
        k_rand_f32(s->stream, s->tok_embd, (size_t)c->vocab * D, -1.0f, 1.0f, sd++);
        k_rand_f32(s->stream, s->out_norm, (size_t)D, 0.8f, 1.2f, sd++);
        if ((st = random_mat(s, &s->out, c->vocab, D, wt, bits, group, sd++, err))) goto fail;
        for (int l = 0; l < c->n_layers; l++) {
            struct cu_layer *L = &s->L[l];
            L->nh = c->layer[l].n_heads;
            L->nkv = c->layer[l].n_kv_heads;
            L->ffn = c->layer[l].ffn;
            const int qd = L->nh * c->head_dim, kvd = L->nkv * c->head_dim, F = L->ffn;
            const int shp[7][2] = {{qd, D}, {kvd, D}, {kvd, D}, {D, qd}, {F, D}, {F, D}, {D, F}};
            if ((st = cu_state_alloc(s, (void **)&L->attn_norm, (size_t)D * 4, "norms", err)) ||
                (st = cu_state_alloc(s, (void **)&L->ffn_norm, (size_t)D * 4, "norms", err)))
                goto fail;
            k_rand_f32(s->stream, L->attn_norm, (size_t)D, 0.8f, 1.2f, sd++);
            k_rand_f32(s->stream, L->ffn_norm, (size_t)D, 0.8f, 1.2f, sd++);
            for (int k = 0; k < 7; k++)
                if ((st = random_mat(s, &L->m[k], shp[k][0], shp[k][1], wt, bits, group, sd++, err)))
                    goto fail;
        }
    }
    cs = (float *)malloc((size_t)max_ctx * c->head_dim * sizeof *cs);
    if (!cs) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        goto fail;
    }
    lmp_rt_rope_table(cs, 0, max_ctx, c->head_dim, c->rope_theta > 0 ? c->rope_theta : 10000.0f);
    st = cu_state_finish(s, cs, err);
    free(cs);
    if (st) goto fail;
    if (cudaDeviceSynchronize() != cudaSuccess) {
        st = cu_fail(err, cudaGetLastError(), "making random weights");
        goto fail;
    }
    *out = s;
    return LMP_OK;
fail:
    lmp_cuda_state_free(s);
    return st;
}

/* ---- forward ---------------------------------------------------------------------------- */

enum lmp_status cu_linear(struct lmp_cuda_state *s, float *y, const float *x,
                          const struct cu_mat *m, int n, int accumulate, struct lmp_err *err)
{
    const float *W = m->f32;
    if (m->kind != CU_F32) {
        k_expand(s->stream, s->wscr, m);
        CU_LAUNCHED("weight expansion");
        W = s->wscr;
    }
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    /* row-major y (n, rows) = x (n, cols) W^T is column-major y^T = W^T(op T) x^T */
    BLAS_TRY(cublasSgemm(s->blas, CUBLAS_OP_T, CUBLAS_OP_N, m->rows, n, m->cols, &alpha, W,
                         m->cols, x, m->cols, &beta, y, m->rows),
             "sgemm");
    if (m->bias) {
        k_add_bias(s->stream, y, m->bias, n, m->rows);
        CU_LAUNCHED("bias");
    }
    return LMP_OK;
}

/* The input prepared for the packed matrix-vector kernels last (products of one input share
 * it); reset whenever the input changes. */
struct xp_cache {
    const float *x;
    int mode;
    const int32_t *perm;
};

static enum lmp_status lin(struct lmp_cuda_state *s, float *y, const float *x,
                           const struct cu_mat *m, int n, int accumulate, struct xp_cache *c,
                           struct lmp_err *err)
{
    if (n > 1) return cu_linear(s, y, x, m, n, accumulate, err);
    const int mode = k_gemv_mode(m, s->exact_gemv);
    if (mode != GEMV_DENSE && !(c->x == x && c->mode == mode && c->perm == m->perm)) {
        k_gemv_prep(s->stream, s->xprep, x, m->perm, m->cols, mode);
        c->x = x;
        c->mode = mode;
        c->perm = m->perm;
    }
    if (!s->no_fuse && k_gemv_multi_ok(&m, 1, s->exact_gemv, 0)) /* the column-split kernel */
        return k_gemv_multi(s->stream, &m, &y, &accumulate, 1, 0, x, s->xprep, s->exact_gemv,
                            s->gemv_warps, err);
    return k_gemv(s->stream, y, x, s->xprep, m, accumulate, mode, err);
}

static void hook(const struct lmp_cuda_hooks *hk, int layer, enum lmp_rt_linear w, const float *x,
                 int n, int in)
{
    if (hk && hk->linear_input) hk->linear_input(hk->user, layer, w, x, n, in);
}

static int al16(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* Whether layer l decodes through the fused 4-bit kernels (decode_q4.cu). */
static int layer_q4f(const struct lmp_cuda_state *s, const struct cu_layer *L)
{
    if (!s->q4f || s->hd % 2) return 0;
    const struct cu_mat *qkv[3] = {&L->m[CU_WQ], &L->m[CU_WK], &L->m[CU_WV]};
    const struct cu_mat *gu[2] = {&L->m[CU_WGATE], &L->m[CU_WUP]};
    const struct cu_mat *wo = &L->m[CU_WO], *wd = &L->m[CU_WDOWN];
    return k_q4f_ok(qkv, 3, Q4F_QKV, s->smem_max) && k_q4f_ok(&wo, 1, Q4F_PLAIN, s->smem_max) &&
           k_q4f_ok(gu, 2, Q4F_GU, s->smem_max) && k_q4f_ok(&wd, 1, Q4F_PLAIN, s->smem_max) &&
           al16(s->h) && al16(s->att) && al16(s->g) && al16(L->attn_norm) && al16(L->ffn_norm);
}

/* The launch settings of the fused 4-bit kernels, the rest of x cleared. */
static void q4f_extra_init(const struct lmp_cuda_state *s, struct q4f_extra *x)
{
    memset(x, 0, sizeof *x);
    x->eps = s->norm_eps;
    x->warps = s->q4_warps;
    x->bps = s->q4_bps;
    x->pipe = s->q4_pipe;
    x->pdl = s->pdl;
    x->diag = s->q4t_diag;
    x->prep1 = s->q4t_prep1;
    x->tl = s->q4t_tl;
}


/* The four products of layer l's decode (q/k/v, o, gate/up, down) as the fused kernels
 * take them: matrices, outputs, mode and inputs; x gives the launch settings. */
struct layer_prod {
    const struct cu_mat *m[3];
    float *y[3];
    int n, mode;
    struct q4f_extra x;
};
static void layer_prods(const struct lmp_cuda_state *s, int l, struct q4f_extra x,
                        struct layer_prod P[4])
{
    const struct cu_layer *L = &s->L[l];
    memset(P, 0, 4 * sizeof *P);
    x.cs = s->rope_cs;
    x.pos = s->d_pos;
    x.hd = s->hd;
    x.kvd = L->nkv * s->hd;
    x.kc = s->k_cache + s->kv_off[l];
    x.vc = s->v_cache + s->kv_off[l];
    P[0] = {{&L->m[CU_WQ], &L->m[CU_WK], &L->m[CU_WV]}, {s->q, s->k, s->v}, 3, Q4F_QKV, x};
    P[0].x.x = s->h, P[0].x.norm = L->attn_norm, P[0].x.acc = 0;
    P[1] = {{&L->m[CU_WO]}, {s->h}, 1, Q4F_PLAIN, x};
    P[1].x.x = s->att, P[1].x.norm = NULL, P[1].x.acc = 1;
    P[2] = {{&L->m[CU_WGATE], &L->m[CU_WUP]}, {s->g, NULL}, 2, Q4F_GU, x};
    P[2].x.x = s->h, P[2].x.norm = L->ffn_norm, P[2].x.acc = 0;
    P[3] = {{&L->m[CU_WDOWN]}, {s->h}, 1, Q4F_PLAIN, x};
    P[3].x.x = s->g, P[3].x.norm = NULL, P[3].x.acc = 1;
}

/* The fused kernels' arguments of layer l (q/k/v, o, gate/up, down; attention's buffers):
 * x gives the launch settings; its inputs and outputs are set here. */
static void layer_q4f_args(const struct lmp_cuda_state *s, int l, struct q4f_extra x,
                           struct q4f_layer_args *la)
{
    const struct cu_layer *L = &s->L[l];
    struct layer_prod P[4];
    layer_prods(s, l, x, P);
    memset(la, 0, sizeof *la);
    struct q4f_args *dst[4] = {&la->qkv, &la->o, &la->gu, &la->down};
    for (int i = 0; i < 4; i++) k_q4f_args(dst[i], P[i].m, P[i].y, P[i].n, P[i].mode, &P[i].x);
    la->q = s->q;
    la->att = s->att;
    la->kc = P[0].x.kc;
    la->vc = P[0].x.vc;
    la->nh = L->nh;
    la->nkv = L->nkv;
}

/* Decode of one layer (n == 1, on s->h) through the fused 4-bit kernels: five launches. */
static enum lmp_status layer_q4f_fwd(struct lmp_cuda_state *s, int l, struct lmp_err *err)
{
    cudaStream_t st = s->stream;
    enum lmp_status e;
    struct q4f_extra x;
    struct q4f_layer_args la;
    q4f_extra_init(s, &x);
    layer_q4f_args(s, l, x, &la);
    if ((e = k_q4f_launch(st, &la.qkv, Q4F_QKV, &x, err))) return e;
    if ((e = k_attention(st, la.att, la.q, la.kc, la.vc, 1, s->d_pos, s->max_ctx, la.nh, la.nkv,
                         s->hd, s->smem_max, s->pdl, err, NULL, s->att_sp.n > 1 ? &s->att_sp : NULL)))
        return e;
    if ((e = k_q4f_launch(st, &la.o, Q4F_PLAIN, &x, err))) return e;
    if ((e = k_q4f_launch(st, &la.gu, Q4F_GU, &x, err))) return e;
    return k_q4f_launch(st, &la.down, Q4F_PLAIN, &x, err);
}

/* Whether layer l decodes through the tensor-core tile kernels (decode_q4t.cu). */
static int layer_q4t(const struct lmp_cuda_state *s, const struct cu_layer *L)
{
    if (!s->q4t || s->hd % 2) return 0;
    const struct cu_mat *qkv[3] = {&L->m[CU_WQ], &L->m[CU_WK], &L->m[CU_WV]};
    const struct cu_mat *gu[2] = {&L->m[CU_WGATE], &L->m[CU_WUP]};
    const struct cu_mat *wo = &L->m[CU_WO], *wd = &L->m[CU_WDOWN];
    return k_q4t_ok(qkv, 3, Q4F_QKV, s->smem_max) && k_q4t_ok(&wo, 1, Q4F_PLAIN, s->smem_max) &&
           k_q4t_ok(gu, 2, Q4F_GU, s->smem_max) && k_q4t_ok(&wd, 1, Q4F_PLAIN, s->smem_max) &&
           al16(s->h) && al16(s->att) && al16(s->g) && al16(L->attn_norm) && al16(L->ffn_norm);
}

static int head_q4t(const struct lmp_cuda_state *s);

/* The head's tile launch: RMSNorm fused in, logits out. */
static void head_q4t_args(const struct lmp_cuda_state *s, struct q4t_args *a)
{
    struct q4f_extra x;
    q4f_extra_init(s, &x);
    x.x = s->h;
    x.norm = s->out_norm;
    x.tl_slot = s->n_layers * 4 * s->q4t_tl_blocks;
    float *yl[1] = {s->logits};
    const struct cu_mat *head = &s->out;
    k_q4t_args(a, &head, yl, 1, Q4F_PLAIN, &x);
}

/* Layer l's four tile launches (q/k/v, o, gate/up, down; modes in mode). */
static void layer_q4t_args(const struct lmp_cuda_state *s, int l, struct q4t_args a[4], int mode[4])
{
    struct q4f_extra x;
    struct layer_prod P[4];
    q4f_extra_init(s, &x);
    layer_prods(s, l, x, P);
    for (int i = 0; i < 4; i++) {
        P[i].x.tl_slot = (l * 4 + i) * s->q4t_tl_blocks;
        k_q4t_args(&a[i], P[i].m, P[i].y, P[i].n, P[i].mode, &P[i].x);
        mode[i] = P[i].mode;
    }
}

/* Decode of one layer through the tile kernels: q/k/v, attention, o, gate/up, down. */
static enum lmp_status layer_q4t_fwd(struct lmp_cuda_state *s, int l, struct lmp_err *err)
{
    cudaStream_t st = s->stream;
    const struct cu_layer *L = &s->L[l];
    enum lmp_status e;
    struct q4t_args A[4];
    int mode[4];
    layer_q4t_args(s, l, A, mode);
    int S = s->att_sp.n > 1 ? s->att_sp.n : 1;
    const int oh = s->q4t_oh && S > 1 && k_q4t_oh_ok(&A[1], L->nh, s->hd, S, s->q4t_oh >= 2) && (s->q4t_oh != 3 || s->o_acc);
    if (l == 0) s->oh_layers = s->oh_shares = 0;
    if (oh) s->oh_layers++, s->oh_shares = S > s->oh_shares ? S : s->oh_shares;
    if (oh && s->q4t_oh == 3) /* o, gate/up and down through the fixed-point sums */
        for (int i = 1; i < 4; i++) A[i].acc64 = s->o_acc;
    for (int i = 0; i < 4; i++) {
        const struct q4t_args &a = A[i];
        if (i == 1 && oh) {
            if ((e = k_q4t_oh_launch(st, &a, s->att_sp.part, L->nh, S, s->sms, s->pdl, s->q4t_oh >= 2, err))) return e;
            continue;
        }
        if ((e = k_q4t_launch(st, &a, mode[i], s->pdl, s->q4t_depth, err))) return e;
        if (i == 0 && !(s->q4t_diag & 2)) {
            struct att_split sp = s->att_sp;
            if (oh) sp.combine = ATT_COMBINE_NONE; /* o combines the parts */
            if ((e = k_attention(st, s->att, s->q, s->k_cache + s->kv_off[l], s->v_cache + s->kv_off[l], 1, s->d_pos,
                                 s->max_ctx, L->nh, L->nkv, s->hd, s->smem_max, s->pdl, err, tl_attention(s, l),
                                 sp.n > 1 ? &sp : NULL)))
                return e;
        }
    }
    return LMP_OK;
}

/* Whether the decode step runs as one persistent kernel (q4f_mega): every layer through the
 * fused kernels, the shared memory fits; builds its arguments once (the state's buffers do
 * not move). */
static int mega_ready(struct lmp_cuda_state *s)
{
    if (s->mk_state) return s->mk_state > 0;
    s->mk_state = -1;
    if (!s->q4_mega) return 0;
    int max_cols = s->dim;
    for (int l = 0; l < s->n_layers; l++) {
        if (!layer_q4f(s, &s->L[l])) return 0;
        if (s->L[l].m[CU_WO].cols > max_cols) max_cols = s->L[l].m[CU_WO].cols;
        if (s->L[l].m[CU_WDOWN].cols > max_cols) max_cols = s->L[l].m[CU_WDOWN].cols;
    }
    const size_t smem = k_q4f_mega_smem(max_cols, s->hd, s->max_ctx, s->q4_warps);
    if (!smem || smem + 1024 > s->smem_max) return 0;
    struct q4f_layer_args *h = (struct q4f_layer_args *)calloc((size_t)s->n_layers, sizeof *h);
    if (!h) return 0;
    struct lmp_err err;
    struct q4f_extra x;
    q4f_extra_init(s, &x);
    for (int l = 0; l < s->n_layers; l++) layer_q4f_args(s, l, x, &h[l]);
    struct q4f_mega_args *P = &s->mk;
    memset(P, 0, sizeof *P);
    void *dl = NULL, *db = NULL;
    const size_t bytes = (size_t)s->n_layers * sizeof *h;
    if (cu_state_alloc(s, &dl, bytes, "decode kernel arguments", &err) ||
        cu_state_alloc(s, &db, sizeof(unsigned), "decode kernel arguments", &err) ||
        cudaMemcpy(dl, h, bytes, cudaMemcpyHostToDevice) != cudaSuccess) {
        (void)cudaGetLastError();
        free(h);
        return 0;
    }
    free(h);
    P->L = (const struct q4f_layer_args *)dl;
    P->bar = (unsigned *)db;
    P->pos = s->d_pos;
    P->scale = 1.0f / sqrtf((float)s->hd);
    P->n_layers = s->n_layers;
    P->hd = s->hd;
    const struct cu_mat *head = &s->out;
    P->has_head = k_q4f_ok(&head, 1, Q4F_PLAIN, s->smem_max) && al16(s->out_norm) &&
                  k_q4f_smem(head->cols) <= smem;
    if (P->has_head) {
        float *yl[1] = {s->logits};
        x.x = s->h, x.norm = s->out_norm, x.acc = 0;
        k_q4f_args(&P->head, &head, yl, 1, Q4F_PLAIN, &x);
    }
    s->mk_smem = smem;
    s->mk_state = 1;
    return 1;
}

/* Whether the decode step's layers run as the persistent tile kernel (decode_q4p.cu):
 * every layer on the tile kernels, the inputs at most Q4P_MAX_COLS wide, its shared memory
 * fits; builds its arguments once (the state's buffers do not move). */
static int q4p_ready(struct lmp_cuda_state *s)
{
    if (s->qp_state) return s->qp_state > 0;
    s->qp_state = -1;
    if (!s->q4p || s->hd % 4) return 0;
    const int G = s->sms;
    int max_cols = s->dim, max_nh = 1;
    size_t part = 0;
    for (int l = 0; l < s->n_layers; l++) {
        const struct cu_layer *L = &s->L[l];
        if (!layer_q4t(s, L)) return 0;
        const int qd = L->nh * s->hd, kvd = L->nkv * s->hd;
        max_cols = qd > max_cols ? qd : max_cols;
        max_cols = L->ffn > max_cols ? L->ffn : max_cols;
        max_nh = L->nh > max_nh ? L->nh : max_nh;
        const int tiles[4] = {(qd + 2 * kvd) / 16, (s->dim + 15) / 16, (L->ffn + 15) / 16, (s->dim + 15) / 16};
        for (int p = 0; p < 4; p++) { /* the partial sums: tiles per block x warps x rows */
            const size_t b = (size_t)((tiles[p] + G - 1) / G) * Q4P_NW * (p == 2 ? 32 : 16) * sizeof(float);
            part = b > part ? b : part;
        }
    }
    if (max_cols > Q4P_MAX_COLS) return 0;
    struct q4p_args *a = &s->qp;
    memset(a, 0, sizeof *a);
    a->n_layers = s->n_layers;
    a->dim = s->dim;
    a->hd = s->hd;
    a->S = G / max_nh < 1 ? 1 : G / max_nh > ATT_SPLIT_MAX ? ATT_SPLIT_MAX : G / max_nh;
    a->eps = s->norm_eps;
    a->att_scale = 1.0f / sqrtf((float)s->hd);
    a->flags = s->q4p_flags;
    a->slots = s->q4p_slots; /* the most (0: as many as fit) */
    a->pos = s->d_pos;
    a->cs = s->rope_cs;
    a->x = s->h;
    a->q = s->q;
    a->g = s->g;
    const size_t smem = k_q4p_layout(a, max_cols, part, max_nh, s->max_ctx, s->smem_max);
    if (!smem) return 0;
    struct q4p_layer *h = (struct q4p_layer *)calloc((size_t)s->n_layers, sizeof *h);
    if (!h) return 0;
    static const int mats[Q4P_NMAT] = {CU_WQ, CU_WK, CU_WV, CU_WO, CU_WGATE, CU_WUP, CU_WDOWN};
    for (int l = 0; l < s->n_layers; l++) {
        const struct cu_layer *L = &s->L[l];
        for (int i = 0; i < Q4P_NMAT; i++) {
            const struct cu_mat *m = &L->m[mats[i]];
            struct q4p_mat *q = &h[l].m[i];
            q->codes = m->t_codes;
            q->sz = m->t_sz;
            q->bias = m->bias;
            q->ngr = m->n_groups;
            q->cshift = q4t_cshift(m->n_groups, m->group);
        }
        h[l].attn_norm = L->attn_norm;
        h[l].ffn_norm = L->ffn_norm;
        h[l].kc = s->k_cache + s->kv_off[l];
        h[l].vc = s->v_cache + s->kv_off[l];
        h[l].nh = L->nh;
        h[l].nkv = L->nkv;
        h[l].ffn = L->ffn;
    }
    struct lmp_err err;
    void *dl = NULL, *dc = NULL, *dao = NULL, *daml = NULL, *dtl = NULL;
    const size_t bytes = (size_t)s->n_layers * sizeof *h, units = (size_t)max_nh * a->S;
    const size_t tl = s->q4t_tl_blocks ? (size_t)s->n_layers * Q4P_PHASES * G * Q4P_TL * sizeof(unsigned long long) : 0;
    int bad = cu_state_alloc(s, &dl, bytes, "decode kernel arguments", &err) ||
              cu_state_alloc(s, &dc, (size_t)s->n_layers * Q4P_PHASES * sizeof(unsigned), "decode counts", &err) ||
              cu_state_alloc(s, &dao, units * s->hd * sizeof(float), "attention parts", &err) ||
              cu_state_alloc(s, &daml, units * 2 * sizeof(float), "attention parts", &err) ||
              (tl && cu_state_alloc(s, &dtl, tl, "decode timeline", &err)) ||
              cudaMemcpy(dl, h, bytes, cudaMemcpyHostToDevice) != cudaSuccess ||
              (tl && cudaMemset(dtl, 0, tl) != cudaSuccess);
    free(h);
    if (bad) {
        (void)cudaGetLastError();
        return 0;
    }
    a->L = (const struct q4p_layer *)dl;
    a->cnt = (unsigned *)dc;
    a->ao = (float *)dao;
    a->aml = (float *)daml;
    a->tl = (unsigned long long *)dtl;
    s->qp_smem = smem;
    s->qp_state = 1;
    return 1;
}

extern "C" int lmp_cuda_q4p_timeline(const struct lmp_cuda_state *s, unsigned long long *out, size_t n)
{
    if (s->qp_state <= 0 || !s->qp.tl) return 0;
    const size_t all = (size_t)s->n_layers * Q4P_PHASES * s->sms * Q4P_TL;
    if (n > all) n = all;
    if (cudaStreamSynchronize(s->stream) != cudaSuccess ||
        cudaMemcpy(out, s->qp.tl, n * sizeof *out, cudaMemcpyDeviceToHost) != cudaSuccess)
        return 0;
    return s->sms;
}

/* One block on h (n, dim); the position is *s->d_pos on the device. */
static enum lmp_status layer_fwd(struct lmp_cuda_state *s, int l, float *h, int n,
                                 const struct lmp_cuda_hooks *hk, struct lmp_err *err)
{
    const struct cu_layer *L = &s->L[l];
    cudaStream_t st = s->stream;
    const int dim = s->dim, hd = s->hd, qd = L->nh * hd, kvd = L->nkv * hd;
    float *kc = s->k_cache + s->kv_off[l], *vc = s->v_cache + s->kv_off[l];
    enum lmp_status e;
    struct xp_cache c = {NULL, -1, NULL};
    (void)kvd;
    /* decode (n == 1): products of one input in one launch, RMSNorm fused with the Q4
     * input preparation (k_gemv_multi); otherwise one product at a time */
    const struct cu_mat *qkv[3] = {&L->m[CU_WQ], &L->m[CU_WK], &L->m[CU_WV]};
    const struct cu_mat *gu[2] = {&L->m[CU_WGATE], &L->m[CU_WUP]};
    const int fuse_qkv = n == 1 && !s->no_fuse && k_gemv_multi_ok(qkv, 3, s->exact_gemv, 0);
    const int fuse_gu = n == 1 && !s->no_fuse && k_gemv_multi_ok(gu, 2, s->exact_gemv, 1);
    const int q4h_qkv = fuse_qkv && k_gemv_mode(qkv[0], s->exact_gemv) == GEMV_Q4H;
    const int q4h_gu = fuse_gu && k_gemv_mode(gu[0], s->exact_gemv) == GEMV_Q4H;
    if (q4h_qkv) k_rmsnorm_prep_q4h(st, s->xb, h, L->attn_norm, dim, s->norm_eps, s->xprep);
    else k_rmsnorm(st, s->xb, h, L->attn_norm, n, dim, s->norm_eps);
    hook(hk, l, LMP_RT_QKV, s->xb, n, dim);
    if (fuse_qkv) {
        float *ys[3] = {s->q, s->k, s->v};
        if ((e = k_gemv_multi(st, qkv, ys, NULL, 3, 0, s->xb, s->xprep, s->exact_gemv, s->gemv_warps, err)))
            return e;
    } else if ((e = lin(s, s->q, s->xb, &L->m[CU_WQ], n, 0, &c, err)) ||
               (e = lin(s, s->k, s->xb, &L->m[CU_WK], n, 0, &c, err)) ||
               (e = lin(s, s->v, s->xb, &L->m[CU_WV], n, 0, &c, err)))
        return e;
    k_rope_store(st, s->q, s->k, s->v, kc, vc, n, L->nh, L->nkv, hd, s->rope_cs, s->d_pos);
    if ((e = k_attention(st, s->att, s->q, kc, vc, n, s->d_pos, s->max_ctx, L->nh, L->nkv, hd,
                         s->smem_max, 0, err, NULL, s->att_sp.n > 1 ? &s->att_sp : NULL)))
        return e;
    hook(hk, l, LMP_RT_O, s->att, n, qd);
    c.x = NULL; /* xprep may hold another input now */
    if ((e = lin(s, h, s->att, &L->m[CU_WO], n, 1, &c, err))) return e;
    if (q4h_gu) k_rmsnorm_prep_q4h(st, s->xb, h, L->ffn_norm, dim, s->norm_eps, s->xprep);
    else k_rmsnorm(st, s->xb, h, L->ffn_norm, n, dim, s->norm_eps);
    c.x = NULL; /* xb changed */
    hook(hk, l, LMP_RT_GATE_UP, s->xb, n, dim);
    if (fuse_gu) {
        float *ys[2] = {s->g, NULL};
        if ((e = k_gemv_multi(st, gu, ys, NULL, 2, 1, s->xb, s->xprep, s->exact_gemv, s->gemv_warps, err)))
            return e;
    } else {
        if ((e = lin(s, s->g, s->xb, &L->m[CU_WGATE], n, 0, &c, err)) ||
            (e = lin(s, s->u, s->xb, &L->m[CU_WUP], n, 0, &c, err)))
            return e;
        k_swiglu(st, s->g, s->u, (long)n * L->ffn);
    }
    hook(hk, l, LMP_RT_DOWN, s->g, n, L->ffn);
    c.x = NULL;
    if ((e = lin(s, h, s->g, &L->m[CU_WDOWN], n, 1, &c, err))) return e;
    CU_LAUNCHED("layer kernels");
    return LMP_OK;
}

static int head_q4t(const struct lmp_cuda_state *s)
{
    const struct cu_mat *head = &s->out;
    return s->q4t && k_q4t_ok(&head, 1, Q4F_PLAIN, s->smem_max) && al16(s->h) &&
           al16(s->out_norm);
}

extern "C" const char *lmp_cuda_q4t_coresident(void) { return k_q4t_co_status(); }

extern "C" int lmp_cuda_timeline(const struct lmp_cuda_state *s, unsigned long long *out, size_t n)
{
    if (!s->q4t_tl) return 0;
    if (n > tl_values(s)) n = tl_values(s);
    if (cudaStreamSynchronize(s->stream) != cudaSuccess ||
        cudaMemcpy(out, s->q4t_tl, n * sizeof *out, cudaMemcpyDeviceToHost) != cudaSuccess)
        return 0;
    return s->q4t_tl_blocks;
}

extern "C" int lmp_cuda_decode_persistent(struct lmp_cuda_state *s) { return q4p_ready(s) ? s->qp.slots : 0; }

extern "C" void lmp_cuda_decode_att_o(const struct lmp_cuda_state *s, int *layers, int *shares)
{
    *layers = s->oh_layers;
    *shares = s->oh_shares;
}

extern "C" void lmp_cuda_decode_info(const struct lmp_cuda_state *s, int *tile_layers, int *tile_head)
{
    *tile_layers = 0;
    for (int l = 0; l < s->n_layers; l++) *tile_layers += layer_q4t(s, &s->L[l]);
    *tile_head = head_q4t(s);
}

/* embed (tokens in d_tok) -> layers -> head into s->logits, n rows */
static enum lmp_status batch_fwd(struct lmp_cuda_state *s, int n, int want_logits,
                                 struct lmp_err *err)
{
    enum lmp_status e;
    k_embed(s->stream, s->h, s->tok_embd, s->d_tok, n, s->dim);
    if (n == 1 && mega_ready(s)) { /* the whole step in one launch */
        if ((e = k_q4f_mega(s->stream, &s->mk, s->q4_warps, s->q4_pipe, s->q4_bps, s->mk_smem, err)))
            return e;
        if (!want_logits) return LMP_OK;
        if (!s->mk.has_head) {
            struct xp_cache c = {NULL, -1, NULL};
            k_rmsnorm(s->stream, s->xb, s->h, s->out_norm, n, s->dim, s->norm_eps);
            if ((e = lin(s, s->logits, s->xb, &s->out, n, 0, &c, err))) return e;
        }
        CU_LAUNCHED("head");
        return LMP_OK;
    }
    if (n == 1 && q4p_ready(s)) { /* every layer in one persistent launch */
        if ((e = k_q4p_launch(s->stream, &s->qp, s->qp_smem, s->sms, err))) return e;
    } else {
        for (int l = 0; l < s->n_layers; l++)
            if ((e = n == 1 && layer_q4t(s, &s->L[l])   ? layer_q4t_fwd(s, l, err)
                     : n == 1 && layer_q4f(s, &s->L[l]) ? layer_q4f_fwd(s, l, err)
                                                        : layer_fwd(s, l, s->h, n, NULL, err)))
                return e;
    }
    if (!want_logits) return LMP_OK;
    struct xp_cache c = {NULL, -1, NULL};
    const struct cu_mat *head = &s->out;
    const int tile_head = head_q4t(s);
    if (n == 1 && s->q4f && (tile_head || k_q4f_ok(&head, 1, Q4F_PLAIN, s->smem_max)) &&
        al16(s->h) && al16(s->out_norm)) { /* RMSNorm fused into the head's product */
        struct q4f_extra x;
        q4f_extra_init(s, &x);
        x.x = s->h;
        x.norm = s->out_norm;
        float *yl[1] = {s->logits};
        if (tile_head) {
            struct q4t_args a;
            head_q4t_args(s, &a);
            if ((e = k_q4t_launch(s->stream, &a, Q4F_PLAIN, s->pdl, s->q4t_depth, err))) return e;
        } else if ((e = k_q4f(s->stream, &head, yl, 1, Q4F_PLAIN, &x, err)))
            return e;
        CU_LAUNCHED("head");
        return LMP_OK;
    }
    k_rmsnorm(s->stream, s->xb, s->h, s->out_norm, n, s->dim, s->norm_eps);
    if ((e = lin(s, s->logits, s->xb, &s->out, n, 0, &c, err))) return e;
    CU_LAUNCHED("head");
    return LMP_OK;
}

/* One decode step: token and position written on the device, then the captured graph of
 * the attention setting for this position (att_cfg: a graph fixes the attention's grid). */
static enum lmp_status decode_step(struct lmp_cuda_state *s, int32_t tok, int pos,
                                   struct lmp_err *err)
{
    const int k = pos >= s->att_long;
    k_set_int2(s->stream, s->d_pos, pos, tok);
    if (!s->att_pack) s->att_sp = s->att_cfg[k];
    if (s->no_graph || s->graph_state[k] < 0) return batch_fwd(s, 1, 1, err);
    if (s->graph_state[k] == 0) {
        cudaGraph_t g = NULL;
        /* their allocations and copies are not allowed while the stream is captured */
        (void)q4p_ready(s);
        (void)mega_ready(s);
        CU_TRY(cudaStreamBeginCapture(s->stream, cudaStreamCaptureModeThreadLocal),
               "starting a graph capture");
        struct lmp_err e2;
        enum lmp_status e = batch_fwd(s, 1, 1, &e2);
        cudaError_t ce = cudaStreamEndCapture(s->stream, &g);
        if (e || ce != cudaSuccess) {
            (void)cudaGetLastError();
            if (g) cudaGraphDestroy(g);
            s->graph_state[k] = -1; /* launch kernels directly from now on */
            return batch_fwd(s, 1, 1, err);
        }
        ce = cudaGraphInstantiate(&s->graph[k], g, 0);
        cudaGraphDestroy(g);
        if (ce != cudaSuccess) {
            (void)cudaGetLastError();
            s->graph_state[k] = -1;
            return batch_fwd(s, 1, 1, err);
        }
        s->graph_state[k] = 1;
    }
    CU_TRY(cudaGraphLaunch(s->graph[k], s->stream), "launching the decode graph");
    return LMP_OK;
}

extern "C" void lmp_cuda_reset(struct lmp_cuda_state *s)
{
    memset(s->n_cached, 0, (size_t)s->n_layers * sizeof *s->n_cached);
}
extern "C" int lmp_cuda_n_past(const struct lmp_cuda_state *s)
{
    return s->n_cached[s->n_layers - 1];
}
extern "C" int lmp_cuda_max_ctx(const struct lmp_cuda_state *s) { return s->max_ctx; }
extern "C" void *lmp_cuda_stream(const struct lmp_cuda_state *s) { return (void *)s->stream; }

extern "C" double lmp_cuda_decode_weight_bytes(const struct lmp_cuda_state *s)
{
    double b = s->out.bytes;
    for (int l = 0; l < s->n_layers; l++)
        for (int k = 0; k < 7; k++) b += s->L[l].m[k].bytes;
    return b;
}

static enum lmp_status check_tokens(const struct lmp_cuda_state *s, const int32_t *t, int n,
                                    struct lmp_err *err)
{
    for (int i = 0; i < n; i++)
        if (t[i] < 0 || t[i] >= s->vocab)
            return lmp_err_set(err, LMP_ERR_ARG, "token id %d (at %d) outside the vocabulary [0, %d)",
                               (int)t[i], i, s->vocab);
    return LMP_OK;
}

/* Runs tokens [0, n) (n <= max_batch) at pos; logits stay in s->logits. */
static enum lmp_status fwd_device(struct lmp_cuda_state *s, const int32_t *tokens, int n, int pos,
                                  int want_logits, struct lmp_err *err)
{
    enum lmp_status e;
    if (n == 1 && want_logits) {
        e = decode_step(s, tokens[0], pos, err);
    } else {
        CU_TRY(cudaMemcpyAsync(s->d_tok, tokens, (size_t)n * sizeof *tokens,
                               cudaMemcpyHostToDevice, s->stream),
               "uploading token ids");
        k_set_int2(s->stream, s->d_pos, pos, tokens[0]);
        e = batch_fwd(s, n, want_logits, err);
    }
    if (e) return e;
    for (int l = 0; l < s->n_layers; l++) s->n_cached[l] = pos + n;
    return LMP_OK;
}

extern "C" enum lmp_status lmp_cuda_forward(struct lmp_cuda_state *s, const int32_t *tokens,
                                            int n, int pos, float *logits, struct lmp_err *err)
{
    CU_TRY(cudaSetDevice(s->device), "selecting the device");
    if (n < 1 || pos < 0 || pos > s->max_ctx - n)
        return lmp_err_set(err, LMP_ERR_ARG,
                           "runtime: positions %d..%d outside the context of %d tokens", pos,
                           pos + n - 1, s->max_ctx);
    if (pos > lmp_cuda_n_past(s))
        return lmp_err_set(err, LMP_ERR_ARG, "runtime: position %d past the %d cached", pos,
                           lmp_cuda_n_past(s));
    enum lmp_status e = check_tokens(s, tokens, n, err);
    if (e) return e;
    for (int i0 = 0; i0 < n; i0 += s->max_batch) {
        int b = n - i0 < s->max_batch ? n - i0 : s->max_batch;
        if ((e = fwd_device(s, tokens + i0, b, pos + i0, logits != NULL, err))) return e;
        if (logits)
            CU_TRY(cudaMemcpyAsync(logits + (size_t)i0 * s->vocab, s->logits,
                                   (size_t)b * s->vocab * sizeof(float), cudaMemcpyDeviceToHost,
                                   s->stream),
                   "downloading logits");
    }
    CU_TRY(cudaStreamSynchronize(s->stream), "the forward");
    return LMP_OK;
}

extern "C" enum lmp_status lmp_cuda_decode(struct lmp_cuda_state *s, int32_t token, int pos,
                                           float *logits, struct lmp_err *err)
{
    if (pos < 0 || pos >= s->max_ctx || pos > lmp_cuda_n_past(s))
        return lmp_err_set(err, LMP_ERR_ARG, "runtime: position %d invalid (%d cached, context %d)",
                           pos, lmp_cuda_n_past(s), s->max_ctx);
    enum lmp_status e = check_tokens(s, &token, 1, err);
    if (e || (e = fwd_device(s, &token, 1, pos, 1, err))) return e;
    if (!logits) return LMP_OK;
    CU_TRY(cudaMemcpyAsync(logits, s->logits, (size_t)s->vocab * sizeof(float),
                           cudaMemcpyDeviceToHost, s->stream),
           "downloading logits");
    CU_TRY(cudaStreamSynchronize(s->stream), "the decode step");
    return LMP_OK;
}

extern "C" enum lmp_status lmp_cuda_sync(struct lmp_cuda_state *s, struct lmp_err *err)
{
    CU_TRY(cudaStreamSynchronize(s->stream), "the queued work");
    return LMP_OK;
}

extern "C" enum lmp_status lmp_cuda_embed(struct lmp_cuda_state *s, const int32_t *tokens, int n,
                                          float *h_dev, struct lmp_err *err)
{
    if (n < 1 || n > s->max_batch)
        return lmp_err_set(err, LMP_ERR_ARG, "runtime: batch of %d tokens outside [1, %d]", n,
                           s->max_batch);
    enum lmp_status e = check_tokens(s, tokens, n, err);
    if (e) return e;
    CU_TRY(cudaMemcpyAsync(s->d_tok, tokens, (size_t)n * sizeof *tokens, cudaMemcpyHostToDevice,
                           s->stream),
           "uploading token ids");
    k_embed(s->stream, h_dev, s->tok_embd, s->d_tok, n, s->dim);
    CU_LAUNCHED("embedding");
    CU_TRY(cudaStreamSynchronize(s->stream), "the embedding");
    return LMP_OK;
}

extern "C" enum lmp_status lmp_cuda_forward_layer(struct lmp_cuda_state *s, int layer,
                                                  float *h_dev, int n, int pos,
                                                  const struct lmp_cuda_hooks *hooks,
                                                  struct lmp_err *err)
{
    if (layer < 0 || layer >= s->n_layers)
        return lmp_err_set(err, LMP_ERR_ARG, "runtime: layer %d outside [0, %d)", layer,
                           s->n_layers);
    if (n < 1 || n > s->max_batch)
        return lmp_err_set(err, LMP_ERR_ARG, "runtime: batch of %d tokens outside [1, %d]", n,
                           s->max_batch);
    if (pos < 0 || pos > s->n_cached[layer] || pos > s->max_ctx - n)
        return lmp_err_set(err, LMP_ERR_ARG,
                           "runtime: layer %d: positions %d..%d invalid (%d cached, context %d)",
                           layer, pos, pos + n - 1, s->n_cached[layer], s->max_ctx);
    k_set_int2(s->stream, s->d_pos, pos, 0);
    enum lmp_status e = layer_fwd(s, layer, h_dev, n, hooks, err);
    if (e) return e;
    s->n_cached[layer] = pos + n;
    return LMP_OK;
}

extern "C" enum lmp_status lmp_cuda_set_linear_f32(struct lmp_cuda_state *s, int layer,
                                                   int which, const float *W, int is_dev,
                                                   struct lmp_err *err)
{
    if (layer < 0 || layer >= s->n_layers || which < 0 || which > 6)
        return lmp_err_set(err, LMP_ERR_ARG, "CUDA: no linear %d of layer %d", which, layer);
    struct cu_mat *m = &s->L[layer].m[which];
    if (m->kind != CU_F32)
        return lmp_err_set(err, LMP_ERR_ARG, "CUDA: linear %d of layer %d is not F32", which,
                           layer);
    CU_TRY(cudaMemcpyAsync(m->f32, W, (size_t)m->rows * m->cols * sizeof(float),
                           is_dev ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice, s->stream),
           "replacing weights");
    CU_TRY(cudaStreamSynchronize(s->stream), "replacing weights");
    return LMP_OK;
}

/* ---- perplexity ------------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

extern "C" enum lmp_status lmp_cuda_eval_ppl(const struct lmp_model *m, const int32_t *ids,
                                             int64_t n_ids, const struct lmp_eval_opts *o,
                                             struct lmp_eval_result *res, int device,
                                             struct lmp_err *err)
{
    memset(res, 0, sizeof *res);
    if (o->save_logits || o->kl_base)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                           "--save-logits and --kl-base are not supported on the CUDA device");
    int n_chunks;
    int64_t n_scored;
    enum lmp_status st = lmp_eval_plan(m, n_ids, o, &n_chunks, &n_scored, err);
    if (st) return st;
    const int vocab = m->cfg.vocab, ctx = o->ctx;
    for (int64_t i = 0; i < n_ids; i++)
        if (ids[i] < 0 || ids[i] >= vocab)
            return lmp_err_set(err, LMP_ERR_ARG,
                               "token id %d (at index %lld) outside the vocabulary [0, %d)",
                               (int)ids[i], (long long)i, vocab);
    /* the chunks exactly as eval/ppl.c builds them */
    const struct lmp_vocab *v = &m->vocab;
    const int bos = v->add_bos && v->bos >= 0 && v->bos < vocab ? v->bos : -1;
    const int first = o->protocol == LMP_EVAL_LLAMACPP ? ctx / 2 : 0;
    const int per_chunk = ctx - 1 - first;
    size_t n_tok = (size_t)n_chunks * (size_t)ctx;
    int32_t *toks = (int32_t *)malloc(n_tok * sizeof *toks);
    double *nll = (double *)malloc((size_t)ctx * sizeof *nll);
    struct lmp_cuda_state *s = NULL;
    double *d_nll = NULL;
    int32_t *d_tgt = NULL;
    if (!toks || !nll) {
        free(toks);
        free(nll);
        return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < n_tok; i++) toks[i] = bos >= 0 ? (i == 0 ? bos : ids[i - 1]) : ids[i];
    if (o->protocol == LMP_EVAL_LLAMACPP && bos >= 0)
        for (int c = 0; c < n_chunks; c++) toks[(size_t)c * ctx] = bos;

    struct lmp_cuda_opts co = {}; /* exact fp32 kernels everywhere */
    co.device = device;
    co.exact_gemv = 1;
    double s_nll = 0.0, s_nll2 = 0.0, t0 = 0.0, t1 = 0.0;
    st = lmp_cuda_state_create(m, ctx, ctx < 512 ? ctx : 512, &co, &s, err);
    if (!st) st = cu_state_alloc(s, (void **)&d_nll, (size_t)ctx * sizeof(double), "NLL", err);
    if (!st) st = cu_state_alloc(s, (void **)&d_tgt, (size_t)ctx * sizeof(int32_t), "targets", err);
    t0 = now_s();
    for (int c = 0; c < n_chunks && !st; c++) {
        const int32_t *ct = toks + (size_t)c * ctx;
        lmp_cuda_reset(s);
        if (cudaMemcpyAsync(d_tgt, ct + 1, (size_t)(ctx - 1) * sizeof *ct, cudaMemcpyHostToDevice,
                            s->stream) != cudaSuccess) {
            st = cu_fail(err, cudaGetLastError(), "uploading targets");
            break;
        }
        for (int i0 = 0; i0 < ctx && !st; i0 += s->max_batch) {
            int b = ctx - i0 < s->max_batch ? ctx - i0 : s->max_batch;
            int rows = i0 + b <= ctx - 1 ? b : ctx - 1 - i0; /* the last position scores nothing */
            st = fwd_device(s, ct + i0, b, i0, rows > 0, err);
            if (!st && rows > 0) k_nll(s->stream, d_nll + i0, s->logits, d_tgt + i0, rows, vocab);
        }
        if (st) break;
        if (cudaMemcpyAsync(nll, d_nll, (size_t)(ctx - 1) * sizeof *nll, cudaMemcpyDeviceToHost,
                            s->stream) != cudaSuccess ||
            cudaStreamSynchronize(s->stream) != cudaSuccess) {
            st = cu_fail(err, cudaGetLastError(), "the perplexity forward");
            break;
        }
        double cs = 0.0, cs2 = 0.0;
        for (int j = first; j < ctx - 1; j++) {
            cs += nll[j];
            cs2 += nll[j] * nll[j];
        }
        s_nll += cs;
        s_nll2 += cs2;
        if (o->progress) o->progress(o->progress_user, c + 1, n_chunks);
    }
    t1 = now_s();
    lmp_cuda_state_free(s);
    free(toks);
    free(nll);
    if (st) return st;
    int64_t n = (int64_t)n_chunks * per_chunk;
    res->n_chunks = n_chunks;
    res->n_scored = n;
    res->n_processed = (int64_t)n_tok;
    res->seconds = t1 - t0;
    res->tok_per_s = res->seconds > 0 ? (double)n_tok / res->seconds : 0;
    res->nll_mean = n > 0 ? s_nll / (double)n : 0;
    double var = n > 0 ? s_nll2 / (double)n - res->nll_mean * res->nll_mean : 0;
    double unc = var > 0 && n > 1 ? sqrt(var / (double)(n - 1)) : 0;
    res->ppl = exp(res->nll_mean);
    res->ppl_err = res->ppl * unc;
    return LMP_OK;
}
