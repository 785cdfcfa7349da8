/* GPTQ on the GPU: the algorithm of quantize/gptq.c (same order, dead columns, damping and
 * retries, grid, group cut, lazy batch updates), with
 *   - Hessians accumulated by cuBLAS ssyrk as running averages (lmp_quant_hessian_accumulate),
 *   - the upper Cholesky factor U of (J Hp J + damp I)^-1 through cuSOLVER in double
 *     (dpotrf + dtrtri, the CPU's formulation), rounded to float,
 *   - the column sweep inside a block as one kernel, a warp per row (rows are independent
 *     inside a block; the warp splits the in-block error feedback over its lanes and
 *     computes each group's grid with warp reductions),
 *   - the lazy update W[:, i2:] -= Err U[i1:i2, i2:] as cuBLAS sgemm,
 * and the whole-model driver (calibration forward on the GPU through the CUDA runtime's
 * device hooks). Not supported here: opts.refine and opts.ref_quirks. */
#include "internal.h"

extern "C" {
#include "quantize/quant.h"
#include "quantize/quant_model.h"
}

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MIN_SCALE 0x1p-24f

/* ---- context ------------------------------------------------------------------------------ */

struct gq {
    cudaStream_t st;
    cublasHandle_t blas;
    cusolverDnHandle_t sol;
    int *d_int;     /* [0] potrf/trtri info, [1] bad row (INT_MAX: none), [2] non-finite flag */
    double *d_loss; /* (1) */
    int own_stream;
};

static void gq_free(struct gq *g)
{
    if (g->st) cudaStreamSynchronize(g->st);
    cudaFree(g->d_int);
    cudaFree(g->d_loss);
    if (g->sol) cusolverDnDestroy(g->sol);
    if (g->blas) cublasDestroy(g->blas);
    if (g->own_stream && g->st) cudaStreamDestroy(g->st);
    memset(g, 0, sizeof *g);
}

static enum lmp_status gq_init(struct gq *g, cudaStream_t stream, struct lmp_err *err)
{
    memset(g, 0, sizeof *g);
    enum lmp_status st;
    if (stream) {
        g->st = stream;
    } else {
        CU_TRY(cudaStreamCreateWithFlags(&g->st, cudaStreamNonBlocking), "creating a stream");
        g->own_stream = 1;
    }
    cublasStatus_t be = cublasCreate(&g->blas);
    if (be != CUBLAS_STATUS_SUCCESS) {
        g->blas = NULL;
        return cu_blas_fail(err, be, "creating the handle");
    }
    BLAS_TRY(cublasSetStream(g->blas, g->st), "setting the stream");
    BLAS_TRY(cublasSetMathMode(g->blas, CUBLAS_DEFAULT_MATH), "setting fp32 math");
    if (cusolverDnCreate(&g->sol) != CUSOLVER_STATUS_SUCCESS) {
        g->sol = NULL;
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "cuSOLVER: cannot create a handle");
    }
    if (cusolverDnSetStream(g->sol, g->st) != CUSOLVER_STATUS_SUCCESS)
        return lmp_err_set(err, LMP_ERR_INTERNAL, "cuSOLVER: cannot set the stream");
    if ((st = cu_alloc((void **)&g->d_int, 4 * sizeof(int), "GPTQ flags", err)) ||
        (st = cu_alloc((void **)&g->d_loss, sizeof(double), "GPTQ loss", err)))
        return st;
    return LMP_OK;
}

/* ---- Hessian -------------------------------------------------------------------------------- */

/* H (cols, cols), row-major upper triangle (= column-major lower) <- running average
 * 2/N sum x x^T; X (n, cols) on the device. Non-finite X sets d_int[2]. */
static enum lmp_status gq_hessian(struct gq *g, float *H, int cols, const float *X, int n,
                                  int64_t *ns, struct lmp_err *err)
{
    if (n <= 0) return LMP_OK;
    k_check_finite(g->st, X, (size_t)n * cols, g->d_int + 2);
    int64_t n0 = *ns, n1 = n0 + n;
    float beta = (float)((double)n0 / (double)n1), alpha = (float)(2.0 / (double)n1);
    BLAS_TRY(cublasSsyrk(g->blas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, cols, n, &alpha, X, cols,
                         &beta, H, cols),
             "ssyrk (Hessian)");
    *ns = n1;
    return LMP_OK;
}

/* ---- factor --------------------------------------------------------------------------------- */

struct gq_hinv {
    int cols;
    int32_t *order;  /* host (cols) */
    int32_t *d_order;
    uint8_t *d_dead; /* natural order */
    float *d_U;      /* (cols, cols) row-major upper */
    double damp;
    int damp_retries, n_dead;
};

static void gq_hinv_free(struct gq_hinv *h)
{
    free(h->order);
    cudaFree(h->d_order);
    cudaFree(h->d_dead);
    cudaFree(h->d_U);
    memset(h, 0, sizeof *h);
}

/* mirrors the upper triangle into the lower one; flags non-finite upper entries; diag out */
__global__ void sym_upper_kernel(float *H, int n, float *diag, int *flag)
{
    size_t total = (size_t)n * n;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        size_t i = t / n, j = t % n;
        if (j < i) continue;
        float v = H[t];
        if (!isfinite(v)) *flag = 1;
        H[j * n + i] = v;
        if (i == j) diag[i] = v;
    }
}

/* A (n, n) double = J Hp J + damp I, Hp = H[order][:, order], dead diagonals 1 */
__global__ void build_a_kernel(double *A, const float *H, const int32_t *order, const uint8_t *dead,
                               int n, double damp)
{
    size_t total = (size_t)n * n;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        int a = (int)(t / n), b = (int)(t % n);
        int ia = order[n - 1 - a], ib = order[n - 1 - b];
        float v = H[(size_t)ia * n + ib];
        if (ia == ib && dead[ia]) v = 1.0f;
        A[t] = (double)v + (a == b ? damp : 0.0);
    }
}

/* U[i][j] = Linv[n-1-i][n-1-j] (row-major lower of A after dpotrf + dtrtri column-major 'U') */
__global__ void take_u_kernel(float *U, const double *A, int n)
{
    size_t total = (size_t)n * n;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        size_t i = t / n, j = t % n;
        U[t] = j >= i ? (float)A[(n - 1 - i) * (size_t)n + (n - 1 - j)] : 0.0f;
    }
}

static unsigned grid1(size_t n)
{
    size_t b = (n + 255) / 256;
    if (b > 65535u * 16u) b = 65535u * 16u;
    return (unsigned)(b ? b : 1);
}

struct dkey {
    float d;
    int i;
};
static int cmp_dkey(const void *a, const void *b)
{
    const struct dkey *x = (const struct dkey *)a, *y = (const struct dkey *)b;
    if (x->d > y->d) return -1;
    if (x->d < y->d) return 1;
    return (x->i > y->i) - (x->i < y->i);
}

/* The factor from H on the device (modified: mirrored to a full symmetric matrix). */
static enum lmp_status gq_prepare(struct gq *g, float *H, int cols, const struct lmp_quant_opts *o,
                                  struct gq_hinv *h, struct lmp_err *err)
{
    memset(h, 0, sizeof *h);
    const size_t n = (size_t)cols;
    enum lmp_status st = LMP_OK;
    float *d_diag = NULL, *diag = NULL;
    double *A = NULL, *work = NULL;
    void *hwork = NULL;
    struct dkey *keys = NULL;
    uint8_t *dead = NULL;
    h->cols = cols;
    if ((st = cu_alloc((void **)&d_diag, n * sizeof(float), "GPTQ diagonal", err))) goto done;
    CU_TRY(cudaMemsetAsync(g->d_int, 0, 4 * sizeof(int), g->st), "clearing flags");
    sym_upper_kernel<<<grid1(n * n), 256, 0, g->st>>>(H, cols, d_diag, g->d_int + 2);
    CU_LAUNCHED("Hessian mirror");
    diag = (float *)malloc(n * sizeof *diag);
    keys = (struct dkey *)malloc(n * sizeof *keys);
    dead = (uint8_t *)calloc(n, 1);
    h->order = (int32_t *)malloc(n * sizeof *h->order);
    if (!diag || !keys || !dead || !h->order) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "gptq: out of memory");
        goto done;
    }
    {
        int flag[4];
        CU_TRY(cudaMemcpyAsync(diag, d_diag, n * sizeof *diag, cudaMemcpyDeviceToHost, g->st),
               "reading the diagonal");
        CU_TRY(cudaMemcpyAsync(flag, g->d_int, sizeof flag, cudaMemcpyDeviceToHost, g->st),
               "reading flags");
        CU_TRY(cudaStreamSynchronize(g->st), "the Hessian");
        if (flag[2]) {
            st = lmp_err_set(err, LMP_ERR_ARG, "gptq: the Hessian has a non-finite entry");
            goto done;
        }
    }
    {
        double mean = 0.0;
        for (size_t i = 0; i < n; i++) {
            float d = diag[i];
            if (d == 0.0f) {
                dead[i] = 1;
                h->n_dead++;
                d = 1.0f;
            }
            keys[i].d = d;
            keys[i].i = (int)i;
            mean += d;
        }
        mean /= (double)n;
        if (o->act_order) qsort(keys, n, sizeof *keys, cmp_dkey);
        for (size_t i = 0; i < n; i++) h->order[i] = keys[i].i;
        if ((st = cu_alloc((void **)&h->d_order, n * 4, "GPTQ order", err)) ||
            (st = cu_alloc((void **)&h->d_dead, n, "GPTQ dead columns", err)) ||
            (st = cu_alloc((void **)&A, n * n * sizeof(double), "the GPTQ factor (double)", err)))
            goto done;
        CU_TRY(cudaMemcpyAsync(h->d_order, h->order, n * 4, cudaMemcpyHostToDevice, g->st),
               "uploading the order");
        CU_TRY(cudaMemcpyAsync(h->d_dead, dead, n, cudaMemcpyHostToDevice, g->st),
               "uploading dead columns");
        int lwork = 0;
        if (cusolverDnDpotrf_bufferSize(g->sol, CUBLAS_FILL_MODE_UPPER, cols, A, cols, &lwork) !=
            CUSOLVER_STATUS_SUCCESS) {
            st = lmp_err_set(err, LMP_ERR_INTERNAL, "cuSOLVER: dpotrf workspace query failed");
            goto done;
        }
        size_t dws = 0, hws = 0;
        if (cusolverDnXtrtri_bufferSize(g->sol, CUBLAS_FILL_MODE_UPPER, CUBLAS_DIAG_NON_UNIT,
                                        (int64_t)n, CUDA_R_64F, A, (int64_t)n, &dws, &hws) !=
            CUSOLVER_STATUS_SUCCESS) {
            st = lmp_err_set(err, LMP_ERR_INTERNAL, "cuSOLVER: trtri workspace query failed");
            goto done;
        }
        size_t wbytes = (size_t)lwork * sizeof(double);
        if (dws > wbytes) wbytes = dws;
        if ((st = cu_alloc((void **)&work, wbytes, "cuSOLVER workspace", err))) goto done;
        if (hws && !(hwork = malloc(hws))) {
            st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
            goto done;
        }
        double damp = (double)o->damp * mean;
        for (int attempt = 0;; attempt++) {
            build_a_kernel<<<grid1(n * n), 256, 0, g->st>>>(A, H, h->d_order, h->d_dead, cols, damp);
            CU_LAUNCHED("building the damped Hessian");
            int info = 0;
            if (cusolverDnDpotrf(g->sol, CUBLAS_FILL_MODE_UPPER, cols, A, cols, work, lwork,
                                 g->d_int) != CUSOLVER_STATUS_SUCCESS) {
                st = lmp_err_set(err, LMP_ERR_INTERNAL, "cuSOLVER: dpotrf failed");
                goto done;
            }
            CU_TRY(cudaMemcpyAsync(&info, g->d_int, sizeof info, cudaMemcpyDeviceToHost, g->st),
                   "reading dpotrf info");
            CU_TRY(cudaStreamSynchronize(g->st), "dpotrf");
            if (info == 0) {
                if (cusolverDnXtrtri(g->sol, CUBLAS_FILL_MODE_UPPER, CUBLAS_DIAG_NON_UNIT,
                                     (int64_t)n, CUDA_R_64F, A, (int64_t)n, work, dws, hwork, hws,
                                     g->d_int) != CUSOLVER_STATUS_SUCCESS) {
                    st = lmp_err_set(err, LMP_ERR_INTERNAL, "cuSOLVER: trtri failed");
                    goto done;
                }
                CU_TRY(cudaMemcpyAsync(&info, g->d_int, sizeof info, cudaMemcpyDeviceToHost, g->st),
                       "reading trtri info");
                CU_TRY(cudaStreamSynchronize(g->st), "trtri");
            }
            if (info < 0) {
                st = lmp_err_set(err, LMP_ERR_INTERNAL, "gptq: cuSOLVER argument error %d", info);
                goto done;
            }
            if (info == 0) break;
            if (attempt >= o->max_retries || !(mean > 0.0)) {
                st = lmp_err_set(err, LMP_ERR_INTERNAL,
                                 "gptq: Hessian (%d columns) not positive definite even with "
                                 "damping %g (%d retries)",
                                 cols, damp, attempt);
                goto done;
            }
            damp = damp > 0.0 ? damp * 10.0 : 0.01 * mean;
            h->damp_retries++;
        }
        h->damp = damp;
        if ((st = cu_alloc((void **)&h->d_U, n * n * sizeof(float), "the GPTQ factor", err)))
            goto done;
        take_u_kernel<<<grid1(n * n), 256, 0, g->st>>>(h->d_U, A, cols);
        CU_LAUNCHED("taking the factor");
        CU_TRY(cudaStreamSynchronize(g->st), "the factor");
    }
done:
    cudaFree(d_diag);
    cudaFree(A);
    cudaFree(work);
    free(hwork);
    free(diag);
    free(keys);
    free(dead);
    if (st) gq_hinv_free(h);
    return st;
}

/* ---- grid (quantize/grid.c on a warp) -------------------------------------------------------- */

struct gq_grid {
    int bits, sym, mse, mse_grid;
    float maxshrink, norm;
};

static __device__ void grid_point(float xmin, float xmax, int maxq, int sym, float *scale,
                                  float *zero)
{
    float s = (xmax - xmin) / (float)maxq;
    if (!(s >= MIN_SCALE)) s = MIN_SCALE;
    float z;
    if (sym) {
        z = (float)((maxq + 1) / 2);
    } else {
        z = rintf(-xmin / s);
        if (z < 0.0f) z = 0.0f;
        if (z > (float)maxq) z = (float)maxq;
    }
    *scale = s;
    *zero = z;
}

static __device__ __forceinline__ int quant_code(float w, float scale, float zero, int maxq)
{
    float q = rintf(w / scale) + zero;
    if (!(q >= 0.0f)) return 0;
    if (q > (float)maxq) return maxq;
    return (int)q;
}

/* value k of a group: a[k] for k < na, else b[k - na] */
static __device__ __forceinline__ float gval(const float *a, int na, const float *b, int k)
{
    return k < na ? a[k] : b[k - na];
}

/* Params of one group of len values on one warp; every lane returns the same. false:
 * non-finite value or scale overflow. */
static __device__ bool warp_grid(const float *a, int na, const float *b, int len,
                                 const struct gq_grid gp, __half *sh_out, __half *zh_out)
{
    const int lane = threadIdx.x & 31, maxq = (1 << gp.bits) - 1;
    float xmin = 0.0f, xmax = 0.0f;
    int finite = 1;
    for (int k = lane; k < len; k += 32) {
        float v = gval(a, na, b, k);
        if (!isfinite(v)) finite = 0;
        xmin = fminf(xmin, v);
        xmax = fmaxf(xmax, v);
    }
    if (!__all_sync(0xffffffffu, finite)) return false;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        xmin = fminf(xmin, __shfl_xor_sync(0xffffffffu, xmin, o));
        xmax = fmaxf(xmax, __shfl_xor_sync(0xffffffffu, xmax, o));
    }
    if (gp.sym) {
        if (-xmin > xmax) xmax = -xmin;
        xmin = -xmax;
    }
    if (xmin == 0.0f && xmax == 0.0f) {
        xmin = -1.0f;
        xmax = 1.0f;
    }
    float s, z;
    grid_point(xmin, xmax, maxq, gp.sym, &s, &z);
    __half sh = __float2half_rn(s);
    if ((__half_as_ushort(sh) & 0x7fff) >= 0x7c00) return false;
    if (gp.mse) {
        double best = INFINITY;
        int steps = (int)(gp.maxshrink * gp.mse_grid);
        for (int i = 0; i < steps; i++) {
            float p = (float)(1.0 - (double)i / gp.mse_grid);
            float s1, z1;
            grid_point(p * xmin, p * xmax, maxq, gp.sym, &s1, &z1);
            __half sh1 = __float2half_rn(s1);
            float sf = __half2float(sh1);
            double e = 0.0;
            for (int k = lane; k < len; k += 32) {
                float x = gval(a, na, b, k);
                float wq = sf * ((float)quant_code(x, sf, z1, maxq) - z1);
                float d = fabsf(wq - x);
                e += (double)(gp.norm == 2.0f ? d * d : powf(d, gp.norm));
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) e += __shfl_xor_sync(0xffffffffu, e, o);
            e = __shfl_sync(0xffffffffu, e, 0); /* one value for every lane */
            if (e < best) {
                best = e;
                sh = sh1;
                z = z1;
            }
        }
    }
    *sh_out = sh;
    *zh_out = __float2half_rn(z);
    return true;
}

/* ---- sweep ------------------------------------------------------------------------------- */

/* Wp[r][i] = dead[order[i]] ? 0 : W[r][order[i]] */
__global__ void permute_kernel(float *Wp, const float *W, const int32_t *order, const uint8_t *dead,
                               int rows, int n)
{
    size_t total = (size_t)rows * n;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        size_t r = t / n, i = t % n;
        int c = order[i];
        Wp[t] = dead[c] ? 0.0f : W[r * n + c];
    }
}

/* static groups: Wz = W with dead columns 0 */
__global__ void zero_dead_kernel(float *Wz, const float *W, const uint8_t *dead, int rows, int n)
{
    size_t total = (size_t)rows * n;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x)
        Wz[t] = dead[t % n] ? 0.0f : W[t];
}

/* one warp per (row, group) of Wz (natural groups) */
__global__ void static_params_kernel(const float *Wz, int rows, int n, int group, int ng,
                                     struct gq_grid gp, __half *scales, __half *zeros, int *bad)
{
    size_t wid = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
    if (wid >= (size_t)rows * ng) return;
    int r = (int)(wid / ng), gi = (int)(wid % ng);
    int len = min(group, n - gi * group);
    const float *a = Wz + (size_t)r * n + (size_t)gi * group;
    __half sh, zh;
    if (!warp_grid(a, len, NULL, len, gp, &sh, &zh)) {
        if ((threadIdx.x & 31) == 0) atomicMin(bad, r);
        return;
    }
    if ((threadIdx.x & 31) == 0) {
        scales[(size_t)r * ng + gi] = sh;
        zeros[(size_t)r * ng + gi] = zh;
    }
}

/* Columns [i1, i2) of every row: a warp per row, the row's block segment in shared memory. */
__global__ void block_kernel(float *Wp, const float *U, int rows, int n, int i1, int i2, int group,
                             int ng, struct gq_grid gp, int fixed, int static_groups,
                             const int32_t *order, int store_perm, uint8_t *codes, __half *scales,
                             __half *zeros, float *Err, int block, double *loss, int *bad)
{
    extern __shared__ float segs[];
    const int lane = threadIdx.x & 31, wib = threadIdx.x >> 5;
    const int r = blockIdx.x * (blockDim.x >> 5) + wib;
    if (r >= rows) return;
    const int bs = i2 - i1, maxq = (1 << gp.bits) - 1;
    float *seg = segs + (size_t)wib * bs;
    float *w = Wp + (size_t)r * n;
    for (int j = lane; j < bs; j += 32) seg[j] = w[i1 + j];
    __syncwarp();
    float s = 0.0f, z = 0.0f;
    int cur_g = -1;
    double rloss = 0.0;
    for (int i = i1; i < i2; i++) {
        const int gi = static_groups ? order[i] / group : i / group;
        if (!fixed && i % group == 0) {
            const int len = min(group, n - i);
            __half sh, zh;
            /* inside the block: the updated segment; past it (only at i == i1): Wp */
            if (!warp_grid(seg + (i - i1), i2 - i, w + i2, len, gp, &sh, &zh)) {
                if (lane == 0) atomicMin(bad, r);
                return;
            }
            if (lane == 0) {
                scales[(size_t)r * ng + gi] = sh;
                zeros[(size_t)r * ng + gi] = zh;
            }
            s = __half2float(sh);
            z = __half2float(zh);
            cur_g = gi;
        }
        if (gi != cur_g) {
            s = __half2float(scales[(size_t)r * ng + gi]);
            z = __half2float(zeros[(size_t)r * ng + gi]);
            cur_g = gi;
        }
        const float wi = seg[i - i1];
        const int q = quant_code(wi, s, z, maxq);
        const float wq = s * ((float)q - z);
        const float *u = U + (size_t)i * n;
        const float e1 = (wi - wq) / u[i];
        if (lane == 0) {
            codes[(size_t)r * n + (store_perm ? i : order[i])] = (uint8_t)q;
            Err[(size_t)r * block + (i - i1)] = e1;
            rloss += (double)e1 * (double)e1 / 2.0;
        }
        for (int j = i + 1 + lane; j < i2; j += 32) seg[j - i1] -= e1 * u[j];
        __syncwarp();
    }
    if (lane == 0) atomicAdd(loss, rloss);
}

/* W_hat (natural order) from codes (storage order) */
__global__ void what_kernel(float *What, const uint8_t *codes, const __half *scales,
                            const __half *zeros, const int32_t *order, int store_perm, int rows,
                            int n, int group, int ng)
{
    size_t total = (size_t)rows * n;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        size_t r = t / n, j = t % n, g = j / (size_t)group;
        float sg = __half2float(scales[r * ng + g]), zg = __half2float(zeros[r * ng + g]);
        size_t c = store_perm ? (size_t)order[j] : j;
        What[r * n + c] = sg * ((float)codes[t] - zg);
    }
}

/* GPTQ of W (device, rows x cols, natural order) with a prepared factor. out: host arrays
 * (malloc'd). What (device, may equal W): the dequantised weights. */
static enum lmp_status gq_apply(struct gq *g, const float *W, int rows, int cols,
                                const struct gq_hinv *h, const struct lmp_quant_opts *o,
                                struct lmp_qtensor_out *out, float *What, struct lmp_err *err)
{
    memset(out, 0, sizeof *out);
    enum lmp_status st = lmp_quant_opts_check(o, rows, cols, err);
    if (st) return st;
    if (o->refine || o->ref_quirks || o->gguf_exact)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                           "gptq: --refine, --gguf-exact and reference quirks are not "
                           "implemented on CUDA");
    const size_t n = (size_t)cols, R = (size_t)rows;
    const int group = o->group && o->group < cols ? o->group : cols;
    const int ng = (cols + group - 1) / group;
    const int block = o->block;
    const int store_perm = o->act_order && !o->static_groups;
    const int fixed = o->static_groups;
    struct gq_grid gp = {o->bits, o->sym, o->mse, o->mse_grid, (float)o->mse_maxshrink,
                         (float)o->mse_norm};
    float *Wp = NULL, *Err = NULL;
    uint8_t *codes = NULL;
    __half *scales = NULL, *zeros = NULL;
    int flags[4];
    double loss = 0.0;
    int wpb = 4;
    while (wpb > 1 && (size_t)wpb * block * 4 > 48 * 1024) wpb /= 2;
    if ((size_t)block * 4 > 48 * 1024)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED, "gptq: block %d too large for CUDA (max %d)",
                           block, 12 * 1024);
    if ((st = cu_alloc((void **)&Wp, R * n * 4, "GPTQ weights", err)) ||
        (st = cu_alloc((void **)&Err, R * (size_t)block * 4, "GPTQ errors", err)) ||
        (st = cu_alloc((void **)&codes, R * n, "GPTQ codes", err)) ||
        (st = cu_alloc((void **)&scales, R * ng * 2, "GPTQ scales", err)) ||
        (st = cu_alloc((void **)&zeros, R * ng * 2, "GPTQ zeros", err)))
        goto done;
    CU_TRY(cudaMemsetAsync(g->d_int, 0, 4 * sizeof(int), g->st), "clearing flags");
    {
        int big = 0x7fffffff;
        CU_TRY(cudaMemcpyAsync(g->d_int + 1, &big, sizeof big, cudaMemcpyHostToDevice, g->st),
               "clearing flags");
        CU_TRY(cudaMemsetAsync(g->d_loss, 0, sizeof(double), g->st), "clearing the loss");
        CU_TRY(cudaStreamSynchronize(g->st), "clearing flags"); /* &big is a stack variable */
    }
    k_check_finite(g->st, W, R * n, g->d_int + 2);
    if (fixed) {
        zero_dead_kernel<<<grid1(R * n), 256, 0, g->st>>>(Wp, W, h->d_dead, rows, cols);
        size_t warps = R * ng;
        static_params_kernel<<<(unsigned)((warps * 32 + 255) / 256), 256, 0, g->st>>>(
            Wp, rows, cols, group, ng, gp, scales, zeros, g->d_int + 1);
        CU_LAUNCHED("GPTQ static groups");
    }
    permute_kernel<<<grid1(R * n), 256, 0, g->st>>>(Wp, W, h->d_order, h->d_dead, rows, cols);
    CU_LAUNCHED("GPTQ permutation");
    for (int i1 = 0; i1 < cols;) {
        int i2 = i1 + block < cols ? i1 + block : cols;
        if (!fixed)
            for (int gs = (i1 / group + 1) * group; gs < i2; gs += group)
                if (gs + group > i2 && i2 < cols) {
                    i2 = gs;
                    break;
                }
        const int bs = i2 - i1;
        unsigned nb = (unsigned)((rows + wpb - 1) / wpb);
        block_kernel<<<nb, wpb * 32, (size_t)wpb * bs * 4, g->st>>>(
            Wp, h->d_U, rows, cols, i1, i2, group, ng, gp, fixed, o->static_groups, h->d_order,
            store_perm, codes, scales, zeros, Err, block, g->d_loss, g->d_int + 1);
        CU_LAUNCHED("GPTQ block");
        if (i2 < cols) {
            const float alpha = -1.0f, beta = 1.0f;
            BLAS_TRY(cublasSgemm(g->blas, CUBLAS_OP_N, CUBLAS_OP_N, cols - i2, rows, bs, &alpha,
                                 h->d_U + (size_t)i1 * n + i2, cols, Err, block, &beta, Wp + i2,
                                 cols),
                     "sgemm (GPTQ lazy update)");
        }
        i1 = i2;
    }
    CU_TRY(cudaMemcpyAsync(flags, g->d_int, sizeof flags, cudaMemcpyDeviceToHost, g->st),
           "reading flags");
    CU_TRY(cudaMemcpyAsync(&loss, g->d_loss, sizeof loss, cudaMemcpyDeviceToHost, g->st),
           "reading the loss");
    CU_TRY(cudaStreamSynchronize(g->st), "the GPTQ sweep");
    if (flags[2]) {
        st = lmp_err_set(err, LMP_ERR_ARG, "gptq: a weight is not finite");
        goto done;
    }
    if (flags[1] != 0x7fffffff) {
        st = lmp_err_set(err, LMP_ERR_ARG,
                         "gptq: row %d: non-finite weight or a scale above fp16's 65504",
                         flags[1]);
        goto done;
    }
    if (What) {
        what_kernel<<<grid1(R * n), 256, 0, g->st>>>(What, codes, scales, zeros, h->d_order,
                                                     store_perm, rows, cols, group, ng);
        CU_LAUNCHED("dequantised weights");
    }
    out->rows = rows;
    out->cols = cols;
    out->bits = o->bits;
    out->group = group;
    out->sym = o->sym;
    out->n_groups = ng;
    out->damp = h->damp;
    out->damp_retries = h->damp_retries;
    out->n_dead = h->n_dead;
    out->loss = loss;
    out->codes = (uint8_t *)malloc(R * n);
    out->scales = (uint16_t *)malloc(R * ng * 2);
    out->zeros = (uint16_t *)malloc(R * ng * 2);
    if (store_perm) out->perm = (int32_t *)malloc(n * sizeof *out->perm);
    if (!out->codes || !out->scales || !out->zeros || (store_perm && !out->perm)) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "gptq: out of memory for a %dx%d matrix", rows, cols);
        goto done;
    }
    if (store_perm) memcpy(out->perm, h->order, n * sizeof *out->perm);
    CU_TRY(cudaMemcpyAsync(out->codes, codes, R * n, cudaMemcpyDeviceToHost, g->st),
           "downloading codes");
    CU_TRY(cudaMemcpyAsync(out->scales, scales, R * ng * 2, cudaMemcpyDeviceToHost, g->st),
           "downloading scales");
    CU_TRY(cudaMemcpyAsync(out->zeros, zeros, R * ng * 2, cudaMemcpyDeviceToHost, g->st),
           "downloading zeros");
    CU_TRY(cudaStreamSynchronize(g->st), "downloading GPTQ results");
done:
    if (g->st) cudaStreamSynchronize(g->st);
    cudaFree(Wp);
    cudaFree(Err);
    cudaFree(codes);
    cudaFree(scales);
    cudaFree(zeros);
    if (st) lmp_qtensor_out_free(out);
    return st;
}

/* ---- one matrix (tests) --------------------------------------------------------------------- */

extern "C" enum lmp_status lmp_cuda_gptq_matrix(const float *W, int rows, int cols, const float *H,
                                                const struct lmp_quant_opts *o,
                                                struct lmp_qtensor_out *out, float *W_hat_out,
                                                int device, struct lmp_err *err)
{
    memset(out, 0, sizeof *out);
    enum lmp_status st = lmp_quant_opts_check(o, rows, cols, err);
    if (st) return st;
    if ((st = cu_use_device(device, err))) return st;
    struct gq g;
    struct gq_hinv h;
    memset(&h, 0, sizeof h);
    float *dW = NULL, *dH = NULL;
    size_t wb = (size_t)rows * cols * 4, hb = (size_t)cols * cols * 4;
    if ((st = gq_init(&g, NULL, err))) goto done;
    if ((st = cu_alloc((void **)&dW, wb, "GPTQ weights", err)) ||
        (st = cu_alloc((void **)&dH, hb, "GPTQ Hessian", err)))
        goto done;
    if (cudaMemcpy(dW, W, wb, cudaMemcpyHostToDevice) != cudaSuccess ||
        cudaMemcpy(dH, H, hb, cudaMemcpyHostToDevice) != cudaSuccess) {
        st = cu_fail(err, cudaGetLastError(), "uploading GPTQ inputs");
        goto done;
    }
    if (cudaDeviceSynchronize() != cudaSuccess) { /* legacy-stream copies vs g.st */
        st = cu_fail(err, cudaGetLastError(), "uploading GPTQ inputs");
        goto done;
    }
    if ((st = gq_prepare(&g, dH, cols, o, &h, err))) goto done;
    if ((st = gq_apply(&g, dW, rows, cols, &h, o, out, W_hat_out ? dW : NULL, err))) goto done;
    if (W_hat_out && cudaMemcpy(W_hat_out, dW, wb, cudaMemcpyDeviceToHost) != cudaSuccess)
        st = cu_fail(err, cudaGetLastError(), "downloading W_hat");
done:
    gq_hinv_free(&h);
    cudaFree(dW);
    cudaFree(dH);
    gq_free(&g);
    if (st) lmp_qtensor_out_free(out);
    return st;
}

/* ---- whole model ------------------------------------------------------------------------------ */

struct hook_ctx {
    struct gq *g;
    int layer;
    enum lmp_rt_linear which;
    float *H;
    int cols;
    int64_t n;
    enum lmp_status st;
    struct lmp_err err;
};

static void hook_hessian(void *user, int layer, enum lmp_rt_linear which, const float *x, int n,
                         int in)
{
    struct hook_ctx *c = (struct hook_ctx *)user;
    if (layer != c->layer || which != c->which || c->st) return;
    if (in != c->cols) {
        c->st = lmp_err_set(&c->err, LMP_ERR_INTERNAL, "hook width %d, expected %d", in, c->cols);
        return;
    }
    c->st = gq_hessian(c->g, c->H, c->cols, x, n, &c->n, &c->err);
}

static enum lmp_status own_f32(struct lmp_tensor *t, struct lmp_err *err)
{
    if (lmp_type_is_packed(t->type))
        return lmp_err_set(err, LMP_ERR_ARG, "%s is already quantized", t->name);
    enum lmp_status st = lmp_tensor_to_f32(t, err);
    if (st) return st;
    if (!t->owned) {
        void *d = malloc(t->nbytes ? t->nbytes : 1);
        if (!d) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        memcpy(d, t->data, t->nbytes);
        t->data = d;
        t->owned = 1;
    }
    return LMP_OK;
}

static enum lmp_status to_packed(struct lmp_tensor *t, struct lmp_qtensor_out *q,
                                 struct lmp_err *err)
{
    size_t cb, pb;
    enum lmp_status st = lmp_qpack_sizes(q->rows, q->cols, q->bits, q->group, &cb, &pb, err);
    if (st) return st;
    uint8_t *packed = (uint8_t *)calloc(1, cb ? cb : 1);
    if (!packed) return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    if ((st = lmp_qpack_pack(q->codes, q->rows, q->cols, q->bits, packed, err))) {
        free(packed);
        return st;
    }
    if (t->owned) free(t->data);
    free(t->q.scales);
    free(t->q.zeros);
    free(t->q.perm);
    t->data = packed;
    t->owned = 1;
    t->nbytes = cb;
    t->type = lmp_qpack_type(q->bits);
    t->q.bits = q->bits;
    t->q.group = (int)q->group;
    t->q.sym = q->sym;
    t->q.scales = q->scales;
    t->q.zeros = q->zeros;
    t->q.perm = q->perm;
    q->scales = q->zeros = NULL;
    q->perm = NULL;
    return LMP_OK;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

extern "C" enum lmp_status lmp_cuda_quant_model(struct lmp_model *m, const int32_t *calib,
                                                int64_t n_calib,
                                                const struct lmp_quant_model_opts *o,
                                                struct lmp_quant_report *rep, int device,
                                                struct lmp_err *err)
{
    if (o->method != LMP_QUANT_GPTQ) return lmp_quant_model(m, calib, n_calib, o, rep, err);
    const struct lmp_config *c = &m->cfg;
    const int L = c->n_layers, D = c->dim, S = o->seqlen, NS = o->nsamples;
    enum lmp_status st = LMP_OK;
    if (rep) memset(rep, 0, sizeof *rep);
    double t0 = now_s();
    for (int l = 0; l < L; l++) {
        struct lmp_layer *ly = &m->layers[l];
        struct lmp_tensor *all[7] = {ly->wq, ly->wk, ly->wv, ly->wo, ly->w_gate, ly->w_up, ly->w_down};
        for (int k = 0; k < 7; k++) {
            if ((st = lmp_quant_opts_check(&o->q, all[k]->shape[0], all[k]->shape[1], err))) {
                char msg[sizeof err->msg];
                snprintf(msg, sizeof msg, "%s", err->msg);
                return lmp_err_set(err, st, "%s: %s", all[k]->name, msg);
            }
            if ((st = own_f32(all[k], err))) return st;
        }
    }
    if (o->q.refine || o->q.ref_quirks || o->q.gguf_exact || o->fp_alpha > 0)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                           "gptq: --refine, --gguf-exact, reference quirks and the fp target "
                           "are not implemented on CUDA");
    if (S > c->max_ctx)
        return lmp_err_set(err, LMP_ERR_ARG, "--seqlen %d is above the model's context %d", S,
                           c->max_ctx);
    int32_t *win = NULL;
    if (o->python_sampler)
        st = lmp_quant_calib_windows_python(calib, n_calib, NS, S, o->seed, m->vocab.bos, &win, err);
    else
        st = lmp_quant_calib_windows(calib, n_calib, NS, S, o->seed,
                                     o->calib_bos ? m->vocab.bos : -1, &win, err);
    if (st) return st;
    struct lmp_qtensor_out *pend = (struct lmp_qtensor_out *)calloc((size_t)L * 7, sizeof *pend);
    struct lmp_tensor **pend_t = (struct lmp_tensor **)calloc((size_t)L * 7, sizeof *pend_t);
    struct lmp_cuda_state *s = NULL;
    struct gq g;
    memset(&g, 0, sizeof g);
    float *X = NULL, *tmp = NULL, *H = NULL;
    int maxin = D;
    for (int l = 0; l < L; l++) {
        int qd = c->layer[l].n_heads * c->head_dim;
        if (qd > maxin) maxin = qd;
        if (c->layer[l].ffn > maxin) maxin = c->layer[l].ffn;
    }
    struct lmp_cuda_opts co = {};
    co.device = device;
    co.exact_gemv = 1;
    co.no_graph = 1;
    if (!pend || !pend_t) {
        st = lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int64_t i = 0; i < (int64_t)NS * S; i++)
        if (win[i] < 0 || win[i] >= c->vocab) {
            st = lmp_err_set(err, LMP_ERR_ARG, "calibration token %d outside the vocabulary", win[i]);
            goto done;
        }
    if ((st = lmp_cuda_state_create(m, S, S, &co, &s, err))) goto done;
    if ((st = gq_init(&g, s->stream, err))) goto done;
    if ((st = cu_alloc((void **)&X, (size_t)NS * S * D * 4, "calibration activations", err)) ||
        (st = cu_alloc((void **)&tmp, (size_t)S * D * 4, "calibration activations", err)) ||
        (st = cu_alloc((void **)&H, (size_t)maxin * maxin * 4, "the Hessian", err)))
        goto done;
    for (int w = 0; w < NS && !st; w++)
        st = lmp_cuda_embed(s, win + (size_t)w * S, S, X + (size_t)w * S * D, err);
    for (int l = 0; l < L && !st; l++) {
        struct lmp_layer *ly = &m->layers[l];
        struct lmp_tensor *mats[7] = {ly->wq, ly->wk, ly->wv, ly->wo, ly->w_gate, ly->w_up, ly->w_down};
        static const int first[4] = {0, 3, 4, 6}, count[4] = {3, 1, 2, 1};
        static const enum lmp_rt_linear which[4] = {LMP_RT_QKV, LMP_RT_O, LMP_RT_GATE_UP, LMP_RT_DOWN};
        static const char *const sname[4] = {"qkv", "o", "gate_up", "down"};
        for (int sg = 0; sg < 4 && !st; sg++) {
            const int cols = (int)mats[first[sg]]->shape[1];
            struct hook_ctx hc;
            memset(&hc, 0, sizeof hc);
            hc.g = &g;
            hc.layer = l;
            hc.which = which[sg];
            hc.H = H;
            hc.cols = cols;
            struct lmp_cuda_hooks hk = {&hc, hook_hessian};
            if (cudaMemsetAsync(H, 0, (size_t)cols * cols * 4, s->stream) != cudaSuccess ||
                cudaMemsetAsync(g.d_int, 0, 4 * sizeof(int), s->stream) != cudaSuccess) {
                st = cu_fail(err, cudaGetLastError(), "clearing the Hessian");
                break;
            }
            for (int w = 0; w < NS && !st && !hc.st; w++) {
                if (cudaMemcpyAsync(tmp, X + (size_t)w * S * D, (size_t)S * D * 4,
                                    cudaMemcpyDeviceToDevice, s->stream) != cudaSuccess) {
                    st = cu_fail(err, cudaGetLastError(), "copying activations");
                    break;
                }
                st = lmp_cuda_forward_layer(s, l, tmp, S, 0, &hk, err);
            }
            if (!st && hc.st) {
                st = hc.st;
                *err = hc.err;
            }
            if (st) break;
            int flags[4];
            if (cudaMemcpyAsync(flags, g.d_int, sizeof flags, cudaMemcpyDeviceToHost, s->stream) !=
                    cudaSuccess ||
                cudaStreamSynchronize(s->stream) != cudaSuccess) {
                st = cu_fail(err, cudaGetLastError(), "the calibration forward");
                break;
            }
            if (flags[2]) {
                st = lmp_err_set(err, LMP_ERR_ARG,
                                 "layer %d: non-finite calibration activations (%s)", l, sname[sg]);
                break;
            }
            struct gq_hinv hv;
            if ((st = gq_prepare(&g, H, cols, &o->q, &hv, err))) break;
            for (int k = first[sg]; k < first[sg] + count[sg] && !st; k++) {
                struct lmp_tensor *t = mats[k];
                float *Wd = s->L[l].m[k].f32;
                st = gq_apply(&g, Wd, (int)t->shape[0], (int)t->shape[1], &hv, &o->q,
                              &pend[l * 7 + k], Wd, err);
                if (st) {
                    char msg[sizeof err->msg];
                    snprintf(msg, sizeof msg, "%s", err->msg);
                    st = lmp_err_set(err, st, "%s: %s", t->name, msg);
                    break;
                }
                pend_t[l * 7 + k] = t;
                if (rep && rep->n_tensors < LMP_QUANT_REPORT_MAX) {
                    struct lmp_quant_tensor_report *r = &rep->t[rep->n_tensors++];
                    snprintf(r->name, sizeof r->name, "%s", t->name);
                    r->loss = pend[l * 7 + k].loss;
                    r->damp_retries = pend[l * 7 + k].damp_retries;
                    r->n_dead = pend[l * 7 + k].n_dead;
                }
            }
            if (!st && hv.damp_retries && rep) rep->n_damp_retries += hv.damp_retries;
            gq_hinv_free(&hv);
            if (o->progress) o->progress(o->progress_user, l, L, sname[sg]);
        }
        /* the quantized layer's outputs feed the next layer */
        for (int w = 0; w < NS && !st && l + 1 < L; w++)
            st = lmp_cuda_forward_layer(s, l, X + (size_t)w * S * D, S, 0, NULL, err);
        if (!st && cudaStreamSynchronize(s->stream) != cudaSuccess)
            st = cu_fail(err, cudaGetLastError(), "the calibration forward");
        if (o->progress) o->progress(o->progress_user, l + 1, L, "done");
    }
    for (int i = 0; i < L * 7 && !st; i++)
        if (pend_t[i]) st = to_packed(pend_t[i], &pend[i], err);
done:
    if (s) cudaStreamSynchronize(s->stream);
    cudaFree(X);
    cudaFree(tmp);
    cudaFree(H);
    gq_free(&g); /* the stream is the state's */
    lmp_cuda_state_free(s);
    for (int i = 0; pend && i < L * 7; i++) lmp_qtensor_out_free(&pend[i]);
    free(pend);
    free(pend_t);
    free(win);
    if (rep) rep->seconds = now_s() - t0;
    return st;
}

/* ---- 7B-shaped timing ------------------------------------------------------------------------- */

/* X (n, cols): normal(0, 1) + Z (n, rank) V (rank, cols), columns scaled by c (log-uniform):
 * correlated inputs with outlier channels, like real activations */
static enum lmp_status gen_acts(struct gq *g, float *X, int n, int cols, float *Z, float *V,
                                float *c, int rank, uint64_t seed, struct lmp_err *err)
{
    k_rand_normal(g->st, X, (size_t)n * cols, 1.0f, seed);
    k_rand_normal(g->st, Z, (size_t)n * rank, 1.0f, seed ^ 0x1234);
    const float alpha = 1.0f, beta = 1.0f;
    /* row-major X (n, cols) += Z (n, rank) V (rank, cols): column-major X^T += V^T Z^T */
    BLAS_TRY(cublasSgemm(g->blas, CUBLAS_OP_N, CUBLAS_OP_N, cols, n, rank, &alpha, V, cols, Z, rank,
                         &beta, X, cols),
             "sgemm (activations)");
    k_scale_cols(g->st, X, n, cols, c);
    CU_LAUNCHED("activations");
    return LMP_OK;
}

__global__ void exp_kernel(float *p, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        p[i] = expf(p[i]);
}

extern "C" enum lmp_status lmp_cuda_gptq_bench(const struct lmp_config *cfg, int64_t n_tok,
                                               const struct lmp_quant_opts *o, uint64_t seed,
                                               int device,
                                               void (*progress)(void *, int, int, double),
                                               void *progress_user, double sec[5],
                                               struct lmp_err *err)
{
    for (int i = 0; i < 5; i++) sec[i] = 0;
    enum lmp_status st = cu_use_device(device, err);
    if (st) return st;
    const int D = cfg->dim, CH = 16384, RANK = 32;
    int maxin = D, maxrows = D;
    for (int l = 0; l < cfg->n_layers; l++) {
        int qd = cfg->layer[l].n_heads * cfg->head_dim, F = cfg->layer[l].ffn;
        maxin = qd > maxin ? qd : maxin;
        maxin = F > maxin ? F : maxin;
        maxrows = F > maxrows ? F : maxrows;
        maxrows = qd > maxrows ? qd : maxrows;
    }
    struct gq g;
    float *X = NULL, *Z = NULL, *V = NULL, *cs = NULL, *H = NULL, *W = NULL;
    double T0 = now_s(), t;
    if ((st = gq_init(&g, NULL, err))) goto done;
    if ((st = cu_alloc((void **)&X, (size_t)CH * maxin * 4, "activations", err)) ||
        (st = cu_alloc((void **)&Z, (size_t)CH * RANK * 4, "activations", err)) ||
        (st = cu_alloc((void **)&V, (size_t)RANK * maxin * 4, "activations", err)) ||
        (st = cu_alloc((void **)&cs, (size_t)maxin * 4, "activations", err)) ||
        (st = cu_alloc((void **)&H, (size_t)maxin * maxin * 4, "the Hessian", err)) ||
        (st = cu_alloc((void **)&W, (size_t)maxrows * maxin * 4, "weights", err)))
        goto done;
    for (int l = 0; l < cfg->n_layers && !st; l++) {
        const int qd = cfg->layer[l].n_heads * cfg->head_dim;
        const int kvd = cfg->layer[l].n_kv_heads * cfg->head_dim, F = cfg->layer[l].ffn;
        const int in[4] = {D, qd, D, F};
        const int nmat[4] = {3, 1, 2, 1};
        const int rows[4][3] = {{qd, kvd, kvd}, {D, 0, 0}, {F, F, 0}, {D, 0, 0}};
        for (int sg = 0; sg < 4 && !st; sg++) {
            const int cols = in[sg];
            uint64_t sd = seed + (uint64_t)(l * 4 + sg) * 7919;
            t = now_s();
            /* the stage's activations, drawn chunk by chunk and accumulated */
            k_rand_normal(g.st, V, (size_t)RANK * cols, 0.5f, sd ^ 0xabc);
            k_rand_normal(g.st, cs, (size_t)cols, 0.7f, sd ^ 0xdef);
            exp_kernel<<<grid1((size_t)cols), 256, 0, g.st>>>(cs, (size_t)cols);
            CU_TRY(cudaMemsetAsync(H, 0, (size_t)cols * cols * 4, g.st), "clearing H");
            CU_TRY(cudaMemsetAsync(g.d_int, 0, 4 * sizeof(int), g.st), "clearing flags");
            int64_t ns = 0;
            double ta = 0, th = 0;
            for (int64_t r0 = 0; r0 < n_tok && !st; r0 += CH) {
                int nr = (int)(n_tok - r0 < CH ? n_tok - r0 : CH);
                double a0 = now_s();
                if ((st = gen_acts(&g, X, nr, cols, Z, V, cs, RANK, sd + (uint64_t)r0, err))) break;
                CU_TRY(cudaStreamSynchronize(g.st), "activations");
                double a1 = now_s();
                if ((st = gq_hessian(&g, H, cols, X, nr, &ns, err))) break;
                CU_TRY(cudaStreamSynchronize(g.st), "Hessian");
                ta += a1 - a0;
                th += now_s() - a1;
            }
            if (st) break;
            sec[1] += ta;
            sec[2] += th;
            t = now_s();
            struct gq_hinv hv;
            if ((st = gq_prepare(&g, H, cols, o, &hv, err))) break;
            sec[3] += now_s() - t;
            t = now_s();
            for (int k = 0; k < nmat[sg] && !st; k++) {
                const int R = rows[sg][k];
                k_rand_normal(g.st, W, (size_t)R * cols, 0.02f, sd ^ (0x777u + k));
                struct lmp_qtensor_out qo;
                st = gq_apply(&g, W, R, cols, &hv, o, &qo, W, err);
                lmp_qtensor_out_free(&qo);
            }
            sec[4] += now_s() - t;
            gq_hinv_free(&hv);
        }
        if (progress && !st) progress(progress_user, l + 1, cfg->n_layers, now_s() - T0);
    }
done:
    cudaFree(X);
    cudaFree(Z);
    cudaFree(V);
    cudaFree(cs);
    cudaFree(H);
    cudaFree(W);
    gq_free(&g);
    sec[0] = now_s() - T0;
    return st;
}
