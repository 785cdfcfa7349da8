/* Device kernels of the CUDA runtime and their launchers: RMSNorm, RoPE, KV-cache store,
 * causal GQA attention with a fused softmax, SwiGLU, embedding lookup, expansion of F16 /
 * packed weights to fp32, matrix-vector products (dense F32/F16, packed Q2/Q3/Q4/Q8 in
 * fp32, and an fp16-arithmetic Q4 kernel for decode), per-row NLL, random fills.
 *
 * The specifications are the CPU scalar kernels (runtime/kernels.c *_ref, runtime/qmatmul.c
 * lmp_qmatvec_ref); tests/cuda/test_cuda.c compares each with them.
 *
 * Matrix-vector products (decode, batch 1) are memory-bound: each warp owns R rows and
 * streams them once, 16 bytes per lane per load, coalesced across the warp. For packed
 * weights one lane takes a chunk of 32 consecutive codes (4*bits bytes); the input vector
 * sits in shared memory, swizzled so that the lanes of a warp, which read 32 consecutive
 * chunks, hit distinct banks; a perm (act-order) is applied while filling it. */
#include "internal.h"
#include "reduce.cuh"
#include "attention.cuh"
#include "q4dot.cuh"

#include <cooperative_groups.h>
#include <math.h>
#include <string.h>

#define WARP 32

static __device__ __forceinline__ double warp_sum_d(double v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ double block_sum_d(double v, double *red)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    if (w == 0) {
        double t = lane < nw ? red[lane] : 0.0;
        t = warp_sum_d(t);
        if (lane == 0) red[32] = t;
    }
    __syncthreads();
    return red[32];
}

static unsigned grid_for(size_t n, unsigned threads)
{
    size_t b = (n + threads - 1) / threads;
    if (b > 65535u * 32u) b = 65535u * 32u; /* grid-stride loops cover the rest */
    return (unsigned)(b ? b : 1);
}

/* ---- RMSNorm -------------------------------------------------------------------------- */

__global__ void rmsnorm_kernel(float *y, const float *x, const float *w, int dim, float eps)
{
    __shared__ float red[33];
    const float *xr = x + (size_t)blockIdx.x * dim;
    float *yr = y + (size_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) ss += xr[c] * xr[c];
    ss = block_sum(ss, red);
    float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int c = threadIdx.x; c < dim; c += blockDim.x) yr[c] = xr[c] * inv * w[c];
}

void k_rmsnorm(cudaStream_t st, float *y, const float *x, const float *w, int n, int dim,
               float eps)
{
    if (n <= 0) return;
    rmsnorm_kernel<<<n, dim >= 4096 ? 1024 : 256, 0, st>>>(y, x, w, dim, eps);
}

/* ---- RoPE, KV cache ------------------------------------------------------------------- */

__global__ void rope_kernel(float *x, int n, int nh, int hd, const float *cs, const int *pos)
{
    const int half = hd / 2;
    const size_t total = (size_t)n * nh * half;
    const int p0 = *pos;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(t % half);
        size_t rh = t / half; /* row * nh + head */
        int r = (int)(rh / nh);
        float *v = x + rh * hd + 2 * i;
        const float *c = cs + (size_t)(p0 + r) * hd + 2 * i;
        float co = c[0], si = c[1], x0 = v[0], x1 = v[1];
        v[0] = x0 * co - x1 * si;
        v[1] = x0 * si + x1 * co;
    }
}

void k_rope(cudaStream_t st, float *x, int n, int nh, int hd, const float *cs, const int *pos)
{
    size_t total = (size_t)n * nh * (hd / 2);
    if (!total) return;
    rope_kernel<<<grid_for(total, 256), 256, 0, st>>>(x, n, nh, hd, cs, pos);
}

__global__ void kv_store_kernel(float *kc, float *vc, const float *k, const float *v, int n,
                                int kvd, const int *pos)
{
    const size_t total = (size_t)n * kvd;
    const size_t base = (size_t)(*pos) * kvd; /* rows pos.. of the (max_ctx, kvd) cache */
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        kc[base + t] = k[t];
        vc[base + t] = v[t];
    }
}

void k_kv_store(cudaStream_t st, float *kc, float *vc, const float *k, const float *v, int n,
                int kvd, const int *pos)
{
    size_t total = (size_t)n * kvd;
    if (!total) return;
    kv_store_kernel<<<grid_for(total, 256), 256, 0, st>>>(kc, vc, k, v, n, kvd, pos);
}

/* q (n, nh*hd) and k (n, nkv*hd) rotated by rows *pos + i of cs; k and v stored into the
 * position-major caches (max_ctx, nkv*hd) at *pos + i. One launch for the three. */
__global__ void rope_store_kernel(float *q, const float *k, const float *v, float *kc, float *vc,
                                  int n, int nh, int nkv, int hd, const float *cs, const int *pos)
{
    const int half = hd / 2, kvd = nkv * hd;
    const size_t nq = (size_t)n * nh * half, nk = (size_t)n * nkv * half, nv = (size_t)n * kvd;
    const int p0 = *pos;
    const size_t base = (size_t)p0 * kvd;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < nq + nk + nv;
         t += (size_t)gridDim.x * blockDim.x) {
        if (t < nq + nk) {
            const int is_k = t >= nq;
            const size_t u = is_k ? t - nq : t;
            const int i = (int)(u % half), heads = is_k ? nkv : nh;
            const size_t rh = u / half;
            const int r = (int)(rh / heads);
            const float *c = cs + (size_t)(p0 + r) * hd + 2 * i;
            const float co = c[0], si = c[1];
            const float *src = (is_k ? k : q) + rh * hd + 2 * i;
            const float x0 = src[0], x1 = src[1];
            const float y0 = x0 * co - x1 * si, y1 = x0 * si + x1 * co;
            if (is_k) {
                kc[base + rh * hd + 2 * i] = y0; /* row r of k is at (p0 + r) * kvd */
                kc[base + rh * hd + 2 * i + 1] = y1;
            } else {
                q[rh * hd + 2 * i] = y0;
                q[rh * hd + 2 * i + 1] = y1;
            }
        } else {
            const size_t u = t - nq - nk;
            vc[base + u] = v[u];
        }
    }
}

void k_rope_store(cudaStream_t st, float *q, const float *k, const float *v, float *kc, float *vc,
                  int n, int nh, int nkv, int hd, const float *cs, const int *pos)
{
    size_t total = (size_t)n * (nh * (hd / 2) + nkv * (hd / 2) + nkv * hd);
    if (!total) return;
    rope_store_kernel<<<grid_for(total, 256), 256, 0, st>>>(q, k, v, kc, vc, n, nh, nkv, hd, cs, pos);
}

/* ---- attention ------------------------------------------------------------------------ */

#define ATT_THREADS 512

/* One block per (query row i, head h): attention.cuh's att_row. Before waiting for its
 * predecessor (programmatic dependent launch, decode) the block reads *pos and prefetches K
 * and V rows 0 .. *pos - 1 of its head into L2: those rows come from earlier steps, and *pos
 * is written before the step's first, normally launched kernel. */
#define ATT_SMEM(hd, max_pos) ATT_ROW_SMEM(ATT_THREADS, hd, max_pos)
__global__ void __launch_bounds__(ATT_THREADS)
attention_kernel(float *out, const float *q, const float *kc, const float *vc, const int *pos,
                 int nh, int nkv, int hd, float scale, unsigned long long *tl)
{
    /* tl (the decode timeline): %globaltimer at start, past the dependency, end, then
       att_row's phases (5 values), 8 per block */
    unsigned long long *tb = tl && !threadIdx.x ? tl + ((size_t)blockIdx.y * gridDim.x + blockIdx.x) * 8 : NULL;
    att_mark(tb, 0);
    extern __shared__ __align__(16) float sm[];
    const int i = blockIdx.x, h = blockIdx.y;
    const int kvd = nkv * hd, kh = h / (nh / nkv);
    pdl_trigger();
    const int p0 = *pos;
    att_prefetch(kc, vc, 0, p0, kvd, kh, hd, ATT_THREADS);
    pdl_wait(); /* q and row *pos + i of the caches come from the previous kernel */
    att_mark(tb, 1);
    att_row<ATT_THREADS, false>(out + ((size_t)i * nh + h) * hd, q + ((size_t)i * nh + h) * hd, kc,
                                vc, p0 + i + 1, kvd, kh, hd, scale, sm, tb ? tb + 3 : NULL);
    if (tb) {
        __syncthreads();
        att_mark(tb, 2);
    }
}

/* One block per (share j of the positions, head h) of one decode row: att_row over positions
 * [j c, (j + 1) c) (c = ceil(T / S)) into its part (output normalized within the share, max,
 * exp sum); the block that completes a head (per-head counter) combines its S parts in share
 * order: out = sum_j e^(m_j - m) l_j o_j / sum_j e^(m_j - m) l_j. One block per head reads
 * its K and V rows at ~25 GB/s (latency-bound, 45 us a head at 1024 positions, docs/GPU.md);
 * S shares put S times the blocks on it. CL: the head's S blocks are one cluster (launched
 * so, S <= ATT_CLUSTER_MAX): the parts stay in the blocks' shared memory (the first
 * att_part_floats(hd) floats, att_row's after them) and after a cluster barrier block j
 * combines dimensions [j ceil(hd / S), (j + 1) ceil(hd / S)) from all of them, in the
 * same share order (the same result); a second barrier keeps each part until all are read. */

/* out[d0 .. d1) of a head from its S parts, ld(k, i) giving float i of share k's part: the
 * shares' weights e^(m_k - m) l_k / sum by one warp, then per dimension in share order, the
 * S loads issued together before the sum (shares of weight 0 still skipped) */
template <class Ld>
static __device__ __forceinline__ void att_combine(float *out, int hd, int S, int d0, int d1, Ld ld)
{
    __shared__ float wk[ATT_SPLIT_MAX], den;
    const int tid = threadIdx.x;
    if (tid < 32) {
        const float mk = tid < S ? ld(tid, hd) : -INFINITY, lk = tid < S ? ld(tid, hd + 1) : 0.0f;
        const float m = warp_max(mk);
        const float e = mk > -INFINITY ? expf(mk - m) * lk : 0.0f;
        const float sum = warp_sum(e);
        if (tid < S) wk[tid] = e;
        if (!tid) den = sum;
    }
    __syncthreads();
    const float r = 1.0f / den;
    for (int d = d0 + tid; d < d1; d += blockDim.x) {
        float v[ATT_SPLIT_MAX], a = 0.0f;
#pragma unroll
        for (int k = 0; k < ATT_SPLIT_MAX; k++) v[k] = k < S ? ld(k, d) : 0.0f;
#pragma unroll
        for (int k = 0; k < ATT_SPLIT_MAX; k++)
            if (k < S && wk[k] != 0.0f) a += wk[k] * v[k];
        out[d] = a * r;
    }
}

template <bool CL>
__global__ void __launch_bounds__(ATT_SPLIT_THREADS)
att_split_kernel(float *out, const float *q, const float *kc, const float *vc, const int *pos,
                 int nh, int nkv, int hd, float scale, struct att_split sp, unsigned long long *tl)
{
    extern __shared__ __align__(16) float sm[];
    __shared__ int last;
    const int j = blockIdx.x, h = blockIdx.y, S = gridDim.x, tid = threadIdx.x;
    const int kvd = nkv * hd, kh = h / (nh / nkv);
    /* the timeline: share 0's start, release and phases; the end by the combining block */
    unsigned long long *te = tl && !tid ? tl + (size_t)h * 8 : NULL, *tb = j ? NULL : te;
    att_mark(tb, 0);
    pdl_trigger();
    const int p0 = *pos, T = p0 + 1, c = (T + S - 1) / S, t0 = j * c, t1 = min(T, t0 + c);
    att_prefetch(kc, vc, t0, min(t1, p0), kvd, kh, hd, ATT_SPLIT_THREADS); /* earlier steps' rows */
    pdl_wait();
    att_mark(tb, 1);
    float *po = CL ? sm : sp.part + ((size_t)h * S + j) * (hd + 2);
    if (t1 > t0) {
        att_row<ATT_SPLIT_THREADS, false>(po, q + (size_t)h * hd, kc + (size_t)t0 * kvd,
                                          vc + (size_t)t0 * kvd, t1 - t0, kvd, kh, hd, scale,
                                          CL ? sm + att_part_floats(hd) : sm, tb ? tb + 3 : NULL, po + hd);
    } else { /* an empty share: weight 0 */
        for (int d = tid; d < hd; d += ATT_SPLIT_THREADS) po[d] = 0.0f;
        if (!tid) po[hd] = -INFINITY, po[hd + 1] = 0.0f;
    }
    if (!CL && sp.combine == ATT_COMBINE_NONE) { /* the next kernel combines the parts */
        if (tb) {
            __syncthreads();
            att_mark(tb, 2);
        }
        return;
    }
    if (CL) {
        cooperative_groups::cluster_group cl = cooperative_groups::this_cluster();
        cl.sync(); /* every part written (release / acquire across the cluster) */
        const int per = (hd + S - 1) / S;
        att_combine(out + (size_t)h * hd, hd, S, j * per, min(hd, (j + 1) * per),
                    [&](int k, int i) { return cl.map_shared_rank(sm, k)[i]; });
        cl.sync(); /* the parts stay until every block has read them */
        att_mark(tb, 2);
        return;
    }
    __threadfence(); /* the part before the count */
    __syncthreads();
    if (!tid) {
        last = atomicAdd(sp.cnt + h, 1u) + 1 == (unsigned)S;
        if (last) sp.cnt[h] = 0; /* ready for the next launch */
    }
    __syncthreads();
    if (!last) return;
    __threadfence(); /* the other blocks' parts after their counts */
    const float *ph = sp.part + (size_t)h * S * (hd + 2);
    att_combine(out + (size_t)h * hd, hd, S, 0, hd,
                [&](int k, int i) { return __ldcg(ph + (size_t)k * (hd + 2) + i); });
    if (te) {
        __syncthreads();
        att_mark(te, 2);
    }
}

enum lmp_status k_attention(cudaStream_t st, float *out, const float *q, const float *kc,
                            const float *vc, int n, const int *pos, int max_pos, int nh, int nkv,
                            int hd, size_t smem_max, int pdl, struct lmp_err *err, unsigned long long *tl,
                            const struct att_split *sp)
{
    size_t smem = ATT_SMEM(hd, max_pos) * sizeof(float);
    if (smem > smem_max)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                           "CUDA attention: context %d with head size %d needs %zu bytes of "
                           "shared memory, the device allows %zu",
                           max_pos, hd, smem, smem_max);
    if (n <= 0) return LMP_OK;
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute at[2];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at;
    cfg.numAttrs = pdl ? 1 : 0;
    cfg.stream = st;
    if (sp && sp->n > 1 && n == 1) {
        const int S = sp->n;
        int cl = sp->combine == ATT_COMBINE_CLUSTER && S <= ATT_CLUSTER_MAX;
        cfg.gridDim = dim3((unsigned)S, (unsigned)nh);
        cfg.blockDim = dim3(ATT_SPLIT_THREADS);
        cfg.dynamicSmemBytes = ATT_ROW_SMEM(ATT_SPLIT_THREADS, hd, (max_pos + S - 1) / S) * sizeof(float);
        if (cl) { /* a head's blocks one cluster; their parts in front of att_row's memory */
            at[cfg.numAttrs].id = cudaLaunchAttributeClusterDimension;
            at[cfg.numAttrs].val.clusterDim.x = (unsigned)S;
            at[cfg.numAttrs].val.clusterDim.y = 1;
            at[cfg.numAttrs].val.clusterDim.z = 1;
            cfg.numAttrs++;
            cfg.dynamicSmemBytes += (size_t)att_part_floats(hd) * sizeof(float);
            int nc = 0; /* over 8 blocks: only where the device can place such a cluster */
            if (S > 8 && (cudaOccupancyMaxActiveClusters(&nc, att_split_kernel<true>, &cfg) != cudaSuccess || nc < 1)) {
                (void)cudaGetLastError();
                cfg.numAttrs--, cl = 0;
                cfg.dynamicSmemBytes -= (size_t)att_part_floats(hd) * sizeof(float);
            }
        }
        CU_TRY(cudaLaunchKernelEx(&cfg, cl ? att_split_kernel<true> : att_split_kernel<false>, out, q, kc, vc,
                                  pos, nh, nkv, hd, 1.0f / sqrtf((float)hd), *sp, tl),
               "split attention kernel");
        CU_LAUNCHED("split attention kernel");
        return LMP_OK;
    }
    cfg.gridDim = dim3((unsigned)n, (unsigned)nh);
    cfg.blockDim = dim3(ATT_THREADS);
    cfg.dynamicSmemBytes = smem;
    CU_TRY(cudaLaunchKernelEx(&cfg, attention_kernel, out, q, kc, vc, pos, nh, nkv, hd,
                              1.0f / sqrtf((float)hd), tl),
           "attention kernel");
    CU_LAUNCHED("attention kernel");
    return LMP_OK;
}

/* ---- element-wise ----------------------------------------------------------------------- */

__global__ void swiglu_kernel(float *g, const float *u, long count)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < count;
         i += (long)gridDim.x * blockDim.x)
        g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}
void k_swiglu(cudaStream_t st, float *g, const float *u, long count)
{
    if (count <= 0) return;
    swiglu_kernel<<<grid_for((size_t)count, 256), 256, 0, st>>>(g, u, count);
}

__global__ void add_bias_kernel(float *y, const float *b, size_t total, int out)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] += b[i % out];
}
void k_add_bias(cudaStream_t st, float *y, const float *b, int n, int out)
{
    size_t total = (size_t)n * out;
    if (!total || !b) return;
    add_bias_kernel<<<grid_for(total, 256), 256, 0, st>>>(y, b, total, out);
}

__global__ void embed_kernel(float *h, const float *emb, const int32_t *tok, int n, int dim)
{
    size_t total = (size_t)n * dim;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        size_t i = t / dim, c = t % dim;
        h[t] = emb[(size_t)tok[i] * dim + c];
    }
}
void k_embed(cudaStream_t st, float *h, const float *emb, const int32_t *tok, int n, int dim)
{
    size_t total = (size_t)n * dim;
    if (!total) return;
    embed_kernel<<<grid_for(total, 256), 256, 0, st>>>(h, emb, tok, n, dim);
}

__global__ void set_int2_kernel(int *dst, int a, int b)
{
    dst[0] = a;
    dst[1] = b;
}
void k_set_int2(cudaStream_t st, int *dst, int a, int b) { set_int2_kernel<<<1, 1, 0, st>>>(dst, a, b); }

__global__ void fill_f32_kernel(float *p, size_t n, float v)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        p[i] = v;
}
void k_fill_f32(cudaStream_t st, float *p, size_t n, float v)
{
    if (n) fill_f32_kernel<<<grid_for(n, 256), 256, 0, st>>>(p, n, v);
}
__global__ void fill_f16_kernel(__half *p, size_t n, float v)
{
    __half hv = __float2half_rn(v);
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        p[i] = hv;
}
void k_fill_f16(cudaStream_t st, __half *p, size_t n, float v)
{
    if (n) fill_f16_kernel<<<grid_for(n, 256), 256, 0, st>>>(p, n, v);
}

/* ---- packed codes ----------------------------------------------------------------------- */

/* code j of a little-endian bit stream row (lmp_qpack_get) */
static __device__ __forceinline__ unsigned code_at(const uint8_t *row, long j, int bits)
{
    unsigned long long bit = (unsigned long long)j * (unsigned)bits;
    const uint8_t *p = row + (bit >> 3);
    unsigned sh = (unsigned)(bit & 7);
    unsigned v = p[0];
    if (sh + (unsigned)bits > 8) v |= (unsigned)p[1] << 8;
    return (v >> sh) & ((1u << bits) - 1u);
}

/* W (rows, cols) fp32 in natural column order from F16 or packed storage */
__global__ void expand_kernel(float *W, const __half *f16, const uint8_t *codes, size_t row_bytes,
                              int bits, int group, int ng, const __half *scales,
                              const __half *zeros, const int32_t *perm, int rows, int cols)
{
    size_t total = (size_t)rows * cols;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        size_t r = t / cols, j = t % cols;
        if (f16) {
            W[t] = __half2float(f16[t]);
            continue;
        }
        unsigned q = code_at(codes + r * row_bytes, (long)j, bits);
        size_t g = j / (size_t)group;
        float s = __half2float(scales[r * ng + g]), z = __half2float(zeros[r * ng + g]);
        size_t c = perm ? (size_t)perm[j] : j;
        W[r * cols + c] = ((float)q - z) * s;
    }
}

void k_expand(cudaStream_t st, float *W, const struct cu_mat *m)
{
    size_t total = (size_t)m->rows * m->cols;
    if (!total) return;
    if (m->kind == CU_F16)
        expand_kernel<<<grid_for(total, 256), 256, 0, st>>>(W, m->f16, NULL, 0, 0, 1, 1, NULL,
                                                            NULL, NULL, m->rows, m->cols);
    else
        expand_kernel<<<grid_for(total, 256), 256, 0, st>>>(
            W, NULL, m->codes, m->row_bytes, m->bits, m->group, m->n_groups, m->scales,
            m->zeros, m->perm, m->rows, m->cols);
}

/* ---- dense matrix-vector ------------------------------------------------------------------ */

static __device__ __forceinline__ void load8(const float *p, float v[8])
{
    float4 a = __ldg((const float4 *)p), b = __ldg((const float4 *)(p + 4));
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
static __device__ __forceinline__ void load8(const __half *p, float v[8])
{
    uint4 u = __ldg((const uint4 *)p);
    const __half2 *h = (const __half2 *)&u;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        float2 f = __half22float2(h[k]);
        v[2 * k] = f.x;
        v[2 * k + 1] = f.y;
    }
}
static __device__ __forceinline__ float ld1(const float *p) { return __ldg(p); }
static __device__ __forceinline__ float ld1(const __half *p) { return __half2float(p[0]); }

/* R rows per warp; lanes over 8-column slices (16 or 32 bytes of W per lane per row) */
template <typename T, int R>
__global__ void gemv_dense_kernel(float *y, const float *x, const T *W, const float *bias, int rows,
                                  int cols, int acc)
{
    const int warp = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5);
    const int lane = threadIdx.x & 31;
    const int r0 = warp * R;
    if (r0 >= rows) return;
    float a[R];
    const T *wr[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        a[r] = 0.0f;
        wr[r] = W + (size_t)min(r0 + r, rows - 1) * cols;
    }
    if ((cols & 7) == 0) {
#pragma unroll 2
        for (int c = lane * 8; c < cols; c += 256) {
            float xv[8];
            load8(x + c, xv);
#pragma unroll
            for (int r = 0; r < R; r++) {
                float wv[8];
                load8(wr[r] + c, wv);
#pragma unroll
                for (int k = 0; k < 8; k++) a[r] += wv[k] * xv[k];
            }
        }
    } else {
        for (int c = lane; c < cols; c += 32) {
            float xv = x[c];
#pragma unroll
            for (int r = 0; r < R; r++) a[r] += ld1(wr[r] + c) * xv;
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        float v = warp_sum(a[r]);
        if (lane == 0 && r0 + r < rows) {
            if (bias) v += bias[r0 + r];
            y[r0 + r] = acc ? y[r0 + r] + v : v;
        }
    }
}

/* ---- packed matrix-vector: the input, prepared once --------------------------------------
 * A lane takes one 32-code chunk of a row at a time; lanes of a warp take 32 consecutive
 * chunks. The input vector is rewritten once per product (k_gemv_prep) into the order the
 * lanes read it: item (k, ch) at k * nch + ch holds the k-th 16 bytes of chunk ch's inputs,
 * so for every k the 32 lanes read 512 contiguous bytes (coalesced, from L1/L2), and a perm
 * (act-order) is applied while preparing. No shared memory, no per-block prologue.
 *   GEMV_P32: 8 float4 per chunk, x as is (zero past cols).
 *   GEMV_Q4H: 4 uint4 per chunk, each 4 half2 pairs (x_{8k+p}, x_{8k+p+4}) of word k,
 *             scaled by a power of two so that max |x| <= 64; the header (16 bytes before
 *             the data) holds the inverse scale, applied to the row sums. */

int k_gemv_mode(const struct cu_mat *m, int exact)
{
    if (m->kind != CU_PACKED) return GEMV_DENSE;
    const int uniform = m->n_groups == 1 || m->group % 32 == 0;
    const int cpg = m->group / 32;
    const int pow2 = m->n_groups == 1 || (cpg > 0 && (cpg & (cpg - 1)) == 0);
    if (m->bits == 4 && !exact && uniform && pow2 && m->row_bytes % 16 == 0) return GEMV_Q4H;
    return GEMV_P32;
}

size_t k_gemv_prep_bytes(int max_cols)
{
    return 16 + (size_t)((max_cols + 31) / 32) * 32 * sizeof(float);
}

__global__ void prep_p32_kernel(float4 *xp, const float *x, const int32_t *perm, int cols, int nch)
{
    const int total = nch * 8;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int k = i / nch, ch = i % nch, c0 = ch * 32 + k * 4;
        float v[4];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int c = c0 + e;
            v[e] = c < cols ? x[perm ? perm[c] : c] : 0.0f;
        }
        xp[i] = make_float4(v[0], v[1], v[2], v[3]);
    }
}

/* one block: the scale needs max |x| over the whole vector. red: 33 floats of shared. */
static __device__ void prep_q4h_body(float *hdr, uint4 *xp, const float *x, const int32_t *perm,
                                     int cols, int nch, float *red)
{
    float mx = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) mx = fmaxf(mx, fabsf(x[c]));
    mx = block_max(mx, red);
    int e = 0;
    if (mx > 64.0f && mx <= 3.0e38f) frexpf(mx / 64.0f, &e); /* mx / 2^e <= 64 */
    const float xscale = ldexpf(1.0f, -e);
    if (threadIdx.x == 0) hdr[0] = ldexpf(1.0f, e);
    const int total = nch * 4;
    for (int i = threadIdx.x; i < total; i += blockDim.x) {
        const int k = i / nch, ch = i % nch, c0 = ch * 32 + k * 8;
        __half2 hv[4];
#pragma unroll
        for (int p = 0; p < 4; p++) {
            int ca = c0 + p, cb = c0 + p + 4;
            float va = ca < cols ? x[perm ? perm[ca] : ca] * xscale : 0.0f;
            float vb = cb < cols ? x[perm ? perm[cb] : cb] * xscale : 0.0f;
            hv[p] = __floats2half2_rn(va, vb);
        }
        xp[i] = *(const uint4 *)hv;
    }
}

__global__ void prep_q4h_kernel(float *hdr, uint4 *xp, const float *x, const int32_t *perm, int cols,
                                int nch)
{
    __shared__ float red[33];
    prep_q4h_body(hdr, xp, x, perm, cols, nch, red);
}

void k_gemv_prep(cudaStream_t st, void *xp, const float *x, const int32_t *perm, int cols, int mode)
{
    const int nch = (cols + 31) / 32;
    char *base = (char *)xp;
    if (mode == GEMV_P32)
        prep_p32_kernel<<<(nch * 8 + 255) / 256, 256, 0, st>>>((float4 *)(base + 16), x, perm, cols,
                                                               nch);
    else if (mode == GEMV_Q4H)
        prep_q4h_kernel<<<1, 1024, 0, st>>>((float *)base, (uint4 *)(base + 16), x, perm, cols, nch);
}

/* ---- packed matrix-vector, fp32 arithmetic ------------------------------------------------ */

/* BITS words of chunk ch of a row (32 codes) */
template <int BITS, bool VEC>
static __device__ __forceinline__ void load_chunk(const uint8_t *row, int ch, uint32_t w[BITS])
{
    const uint8_t *p = row + (size_t)ch * 4 * BITS;
    if (VEC && BITS == 4) {
        uint4 u = __ldg((const uint4 *)p);
        w[0] = u.x, w[1] = u.y, w[2] = u.z, w[3] = u.w;
    } else if (VEC && BITS == 8) {
        uint4 u = __ldg((const uint4 *)p), v = __ldg((const uint4 *)(p + 16));
        w[0] = u.x, w[1] = u.y, w[2] = u.z, w[3] = u.w;
        w[4] = v.x, w[5] = v.y, w[6] = v.z, w[7] = v.w;
    } else if (VEC && BITS == 2) {
        uint2 u = __ldg((const uint2 *)p);
        w[0] = u.x, w[1] = u.y;
    } else {
#pragma unroll
        for (int k = 0; k < BITS; k++) w[k] = __ldg((const uint32_t *)p + k);
    }
}

/* code j (0..31) of a chunk held in BITS little-endian words */
template <int BITS>
static __device__ __forceinline__ uint32_t chunk_code(const uint32_t w[BITS], int j)
{
    const int bit = j * BITS, wi = bit >> 5, sh = bit & 31;
    uint32_t v = w[wi] >> sh;
    if (sh + BITS > 32) v |= w[wi + 1] << (32 - sh);
    return v & ((1u << BITS) - 1u);
}

/* q as an exact float: 2^23 + q built in the bits, minus (2^23 + z): (q - z) exact */
static __device__ __forceinline__ float q_minus_z(uint32_t q, float zb)
{
    return __int_as_float(0x4B000000 | q) - zb;
}

/* R rows per warp. uniform: every 32-code chunk lies in one group (group % 32 == 0 or one
 * group); gshift >= 0: group index = chunk >> gshift. */
template <int BITS, bool VEC, int R>
__global__ void gemv_packed_kernel(float *y, const float4 *xp, const uint8_t *codes,
                                   size_t row_bytes, const __half *scales, const __half *zeros,
                                   int ng, int group, int gshift, int uniform, const float *bias,
                                   int rows, int cols, int acc)
{
    const int nch = (cols + 31) / 32;
    const int lane = threadIdx.x & 31;
    const int r0 = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5) * R;
    if (r0 >= rows) return;
    const int cpg = group / 32; /* chunks per group when uniform */
    float a[R];
    const uint8_t *rowp[R];
    int rr[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        a[r] = 0.0f;
        rr[r] = min(r0 + r, rows - 1);
        rowp[r] = codes + (size_t)rr[r] * row_bytes;
    }
    for (int ch = lane; ch < nch; ch += 32) {
        uint32_t w[R][BITS];
#pragma unroll
        for (int r = 0; r < R; r++) load_chunk<BITS, VEC>(rowp[r], ch, w[r]);
        float xv[32];
#pragma unroll
        for (int k = 0; k < 8; k++) {
            float4 t = __ldg(xp + (size_t)k * nch + ch);
            xv[4 * k] = t.x, xv[4 * k + 1] = t.y, xv[4 * k + 2] = t.z, xv[4 * k + 3] = t.w;
        }
        if (uniform) {
            const int g = ng == 1 ? 0 : (gshift >= 0 ? ch >> gshift : ch / cpg);
#pragma unroll
            for (int r = 0; r < R; r++) {
                float s = __half2float(scales[(size_t)rr[r] * ng + g]);
                float zb = 8388608.0f + __half2float(zeros[(size_t)rr[r] * ng + g]);
                float d = 0.0f;
#pragma unroll
                for (int j = 0; j < 32; j++) d += q_minus_z(chunk_code<BITS>(w[r], j), zb) * xv[j];
                a[r] += s * d;
            }
        } else {
#pragma unroll
            for (int r = 0; r < R; r++) {
                int gcur = -1;
                float s = 0.0f, zb = 0.0f, d = 0.0f;
#pragma unroll
                for (int j = 0; j < 32; j++) {
                    int g = min((ch * 32 + j) / group, ng - 1);
                    if (g != gcur) {
                        a[r] += s * d;
                        d = 0.0f;
                        gcur = g;
                        s = __half2float(scales[(size_t)rr[r] * ng + g]);
                        zb = 8388608.0f + __half2float(zeros[(size_t)rr[r] * ng + g]);
                    }
                    d += q_minus_z(chunk_code<BITS>(w[r], j), zb) * xv[j];
                }
                a[r] += s * d;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        float v = warp_sum(a[r]);
        if (lane == 0 && r0 + r < rows) {
            if (bias) v += bias[r0 + r];
            y[r0 + r] = acc ? y[r0 + r] + v : v;
        }
    }
}

/* ---- packed Q4 matrix-vector, fp16 arithmetic (decode) ------------------------------------
 * Two codes at a time: (w >> 4p) & 0x000F000F | 0x64006400 is the half2 (1024 + c_p,
 * 1024 + c_{p+4}); minus (1024 + z) gives (q - z) exactly; one HFMA2 with the matching x
 * pair. With max |x| <= 64 (the prepared scale) sums of 8 products per half stay below
 * 15 * 64 * 8 = 7680, far from fp16's 65504; every 16 products are moved to an fp32
 * accumulator. Two chunks per lane per step, their loads issued together. */

template <int R>
static __device__ __forceinline__ void q4h_chunk(float a[R], const uint4 wv[R], const uint4 xq[4],
                                                 const __half *scales, const __half *zeros,
                                                 const int rr[R], int ng, int g)
{
#pragma unroll
    for (int r = 0; r < R; r++) {
        const float s = __half2float(scales[(size_t)rr[r] * ng + g]);
        const __half2 zb = __float2half2_rn(1024.0f + __half2float(zeros[(size_t)rr[r] * ng + g]));
        a[r] += s * q4h_dot(wv[r], xq, zb);
    }
}

template <int R>
__global__ void gemv_q4h_kernel(float *y, const float *hdr, const uint4 *xp, const uint8_t *codes,
                                size_t row_bytes, const __half *scales, const __half *zeros,
                                int ng, int gshift, const float *bias, int rows, int cols, int acc)
{
    const int nch = (cols + 31) / 32;
    const int lane = threadIdx.x & 31;
    const int r0 = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5) * R;
    if (r0 >= rows) return;
    float a[R];
    int rr[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        a[r] = 0.0f;
        rr[r] = min(r0 + r, rows - 1);
    }
    for (int ch0 = lane; ch0 < nch; ch0 += 64) {
        const int ch1 = ch0 + 32;
        const bool has1 = ch1 < nch;
        const int c1 = has1 ? ch1 : ch0;
        uint4 w0[R], w1[R], x0[4], x1[4];
#pragma unroll
        for (int r = 0; r < R; r++) {
            const uint8_t *row = codes + (size_t)rr[r] * row_bytes;
            w0[r] = __ldg((const uint4 *)(row + (size_t)ch0 * 16));
            w1[r] = __ldg((const uint4 *)(row + (size_t)c1 * 16));
        }
#pragma unroll
        for (int k = 0; k < 4; k++) {
            x0[k] = __ldg(xp + (size_t)k * nch + ch0);
            x1[k] = __ldg(xp + (size_t)k * nch + c1);
        }
        q4h_chunk<R>(a, w0, x0, scales, zeros, rr, ng, ng == 1 ? 0 : ch0 >> gshift);
        if (has1) q4h_chunk<R>(a, w1, x1, scales, zeros, rr, ng, ng == 1 ? 0 : ch1 >> gshift);
    }
    const float yscale = __ldg(hdr);
#pragma unroll
    for (int r = 0; r < R; r++) {
        float v = warp_sum(a[r]) * yscale;
        if (lane == 0 && r0 + r < rows) {
            if (bias) v += bias[r0 + r];
            y[r0 + r] = acc ? y[r0 + r] + v : v;
        }
    }
}

/* ---- several products of one input in one launch (decode) ---------------------------------
 * q, k and v (or gate and up) read the same x: one grid covers all their rows, so the GPU
 * sees one kernel instead of three and the tail of one matrix overlaps the next. With
 * PAIR, job 0 carries two matrices of equal shape (gate in w, up in w2): every warp
 * computes the same rows of both and writes silu(gate . x) * (up . x), the SwiGLU fused in. */

static __device__ __forceinline__ float silu_f(float g) { return g / (1.0f + expf(-g)); }

/* The warps of a block share the block's R rows and split their columns (8 warps, each a
 * 1/8 of the 8-column slices or 32-code chunks), so even a matrix of few rows fills the GPU
 * with independent loads; the block sums the warps' partial sums in shared memory. */

template <int NR, int W>
static __device__ __forceinline__ void block_reduce_rows(float a[NR], float (*red)[8])
{
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
#pragma unroll
    for (int r = 0; r < NR; r++) a[r] = warp_sum(a[r]);
    if constexpr (W > 1) {
#pragma unroll
        for (int r = 0; r < NR; r++)
            if (lane == 0) red[r][w] = a[r];
        __syncthreads();
        if (w == 0) {
#pragma unroll
            for (int r = 0; r < NR; r++) {
                float v = lane < W ? red[r][lane] : 0.0f;
#pragma unroll
                for (int o = W / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
                a[r] = v;
            }
        }
    }
}

static __device__ __forceinline__ int gv_job_of(const struct gv_jobs &J)
{
    int jb = 0;
#pragma unroll
    for (int k = 1; k < GV_MAX_JOBS; k++)
        if (k < J.n && (int)blockIdx.x >= J.j[k].block0) jb = k;
    return jb;
}

template <int R, bool PAIR>
static __device__ __forceinline__ void gv_store(const struct gv_job &jo, const float a[], int r0,
                                                float yscale)
{
    if (threadIdx.x != 0) return;
#pragma unroll
    for (int r = 0; r < R; r++) {
        if (r0 + r >= jo.rows) break;
        float v = a[r] * yscale;
        if (PAIR) {
            jo.y[r0 + r] = silu_f(v) * (a[R + r] * yscale);
        } else {
            if (jo.bias) v += jo.bias[r0 + r];
            jo.y[r0 + r] = jo.acc ? jo.y[r0 + r] + v : v;
        }
    }
}

template <typename T, int R, bool PAIR, int W>
__global__ void __launch_bounds__(W * 32)
gemv_dense_multi_kernel(struct gv_jobs J, const float *x, int cols)
{
    const struct gv_job &jo = J.j[gv_job_of(J)];
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r0 = (int)(blockIdx.x - jo.block0) * R, rows = jo.rows;
    constexpr int NR = PAIR ? 2 * R : R;
    __shared__ float red[NR][8];
    float a[NR];
    const T *wr[NR];
#pragma unroll
    for (int r = 0; r < NR; r++) {
        a[r] = 0.0f;
        const T *Wm = (const T *)(PAIR && r >= R ? jo.w2 : jo.w);
        wr[r] = Wm + (size_t)min(r0 + r % R, rows - 1) * cols;
    }
    if ((cols & 7) == 0) {
#pragma unroll 2
        for (int c = (w * 32 + lane) * 8; c < cols; c += W * 256) {
            float xv[8];
            load8(x + c, xv);
#pragma unroll
            for (int r = 0; r < NR; r++) {
                float wv[8];
                load8(wr[r] + c, wv);
#pragma unroll
                for (int k = 0; k < 8; k++) a[r] += wv[k] * xv[k];
            }
        }
    } else {
        for (int c = w * 32 + lane; c < cols; c += W * 32) {
            float xv = x[c];
#pragma unroll
            for (int r = 0; r < NR; r++) a[r] += ld1(wr[r] + c) * xv;
        }
    }
    block_reduce_rows<NR, W>(a, red);
    gv_store<R, PAIR>(jo, a, r0, 1.0f);
}

template <int R, bool PAIR, int W>
__global__ void __launch_bounds__(W * 32)
gemv_q4h_multi_kernel(struct gv_jobs J, const float *hdr, const uint4 *xp, int cols)
{
    const struct gv_job &jo = J.j[gv_job_of(J)];
    const int nch = (cols + 31) / 32;
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r0 = (int)(blockIdx.x - jo.block0) * R;
    const int rows = jo.rows, ng = jo.ng, gshift = jo.gshift;
    constexpr int NR = PAIR ? 2 * R : R;
    __shared__ float red[NR][8];
    float a[NR];
    int rr[R];
#pragma unroll
    for (int r = 0; r < NR; r++) a[r] = 0.0f;
#pragma unroll
    for (int r = 0; r < R; r++) rr[r] = min(r0 + r, rows - 1);
    const uint8_t *cw = (const uint8_t *)jo.w, *cw2 = (const uint8_t *)jo.w2;
    for (int ch = w * 32 + lane; ch < nch; ch += W * 32) {
        uint4 w0[R], w1[R], xq[4];
#pragma unroll
        for (int r = 0; r < R; r++) {
            w0[r] = __ldg((const uint4 *)(cw + (size_t)rr[r] * jo.row_bytes + (size_t)ch * 16));
            if (PAIR) w1[r] = __ldg((const uint4 *)(cw2 + (size_t)rr[r] * jo.row_bytes + (size_t)ch * 16));
        }
#pragma unroll
        for (int k = 0; k < 4; k++) xq[k] = __ldg(xp + (size_t)k * nch + ch);
        const int g = ng == 1 ? 0 : ch >> gshift;
        q4h_chunk<R>(a, w0, xq, jo.s, jo.z, rr, ng, g);
        if (PAIR) q4h_chunk<R>(a + R, w1, xq, jo.s2, jo.z2, rr, ng, g);
    }
    block_reduce_rows<NR, W>(a, red);
    gv_store<R, PAIR>(jo, a, r0, __ldg(hdr));
}

/* RMSNorm of one row and, from its output, the Q4H input layout (prep_q4h_kernel) in the
 * same block: the products that read the normed vector need no preparation launch. */
__global__ void rmsnorm_prep_q4h_kernel(float *y, const float *x, const float *w, int dim,
                                        float eps, float *hdr, uint4 *xp)
{
    __shared__ float red[33];
    float ss = 0.0f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) ss += x[c] * x[c];
    ss = block_sum(ss, red);
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int c = threadIdx.x; c < dim; c += blockDim.x) y[c] = x[c] * inv * w[c];
    __syncthreads(); /* y is read back by other threads of this block */
    prep_q4h_body(hdr, xp, y, NULL, dim, (dim + 31) / 32, red);
}

int k_gemv_multi_ok(const struct cu_mat *const *m, int n, int exact, int pair)
{
    if (n < 1 || n > GV_MAX_JOBS) return 0;
    const int mode = k_gemv_mode(m[0], exact);
    if (mode == GEMV_P32) return 0;
    for (int i = 0; i < n; i++) {
        if (k_gemv_mode(m[i], exact) != mode || m[i]->kind != m[0]->kind ||
            m[i]->cols != m[0]->cols || m[i]->perm)
            return 0;
        if (mode == GEMV_DENSE && m[i]->kind != CU_F16 && m[i]->kind != CU_F32) return 0;
        if (mode == GEMV_Q4H && (m[i]->group != m[0]->group || m[i]->n_groups != m[0]->n_groups ||
                                 m[i]->row_bytes != m[0]->row_bytes))
            return 0;
    }
    if (pair && (n != 2 || m[0]->rows != m[1]->rows || m[0]->bias || m[1]->bias)) return 0;
    return 1;
}

void k_rmsnorm_prep_q4h(cudaStream_t st, float *y, const float *x, const float *w, int dim,
                        float eps, void *xp)
{
    char *base = (char *)xp;
    rmsnorm_prep_q4h_kernel<<<1, 1024, 0, st>>>(y, x, w, dim, eps, (float *)base,
                                                (uint4 *)(base + 16));
}

static int log2_exact(int v);

template <int W>
static void launch_multi(cudaStream_t st, const struct gv_jobs &J, int blocks, int pair, int mode,
                         int f16, const float *x, const void *xprep, int cols)
{
    const char *base = (const char *)xprep;
    const int threads = W * 32;
    if (mode == GEMV_Q4H) {
        const float *hdr = (const float *)base;
        const uint4 *xp = (const uint4 *)(base + 16);
        if (pair) gemv_q4h_multi_kernel<2, true, W><<<blocks, threads, 0, st>>>(J, hdr, xp, cols);
        else gemv_q4h_multi_kernel<4, false, W><<<blocks, threads, 0, st>>>(J, hdr, xp, cols);
    } else if (f16) {
        if (pair) gemv_dense_multi_kernel<__half, 2, true, W><<<blocks, threads, 0, st>>>(J, x, cols);
        else gemv_dense_multi_kernel<__half, 4, false, W><<<blocks, threads, 0, st>>>(J, x, cols);
    } else {
        if (pair) gemv_dense_multi_kernel<float, 2, true, W><<<blocks, threads, 0, st>>>(J, x, cols);
        else gemv_dense_multi_kernel<float, 4, false, W><<<blocks, threads, 0, st>>>(J, x, cols);
    }
}

int k_gemv_warps(int mode, int warps)
{
    if (warps == 1 || warps == 2 || warps == 4 || warps == 8) return warps;
    return mode == GEMV_Q4H ? GV_WARPS_Q4 : GV_WARPS_DENSE;
}

enum lmp_status k_gemv_multi(cudaStream_t st, const struct cu_mat *const *m, float *const *y,
                             const int *acc, int n, int pair, const float *x, const void *xprep,
                             int exact, int warps, struct lmp_err *err)
{
    /* a block per R rows (4 alone, 2 + 2 in a pair: 4 independent 16-byte weight loads per
     * lane in flight), its W warps splitting the columns */
    const int R = pair ? 2 : 4;
    const int mode = k_gemv_mode(m[0], exact);
    const int W = k_gemv_warps(mode, warps);
    struct gv_jobs J;
    memset(&J, 0, sizeof J);
    J.n = pair ? 1 : n;
    int blocks = 0;
    for (int i = 0; i < J.n; i++) {
        struct gv_job *j = &J.j[i];
        const struct cu_mat *a = m[i];
        j->w = mode == GEMV_Q4H ? (const void *)a->codes
                                : (a->kind == CU_F16 ? (const void *)a->f16 : (const void *)a->f32);
        j->s = a->scales, j->z = a->zeros;
        if (pair) {
            const struct cu_mat *b = m[1];
            j->w2 = mode == GEMV_Q4H ? (const void *)b->codes
                                     : (b->kind == CU_F16 ? (const void *)b->f16 : (const void *)b->f32);
            j->s2 = b->scales, j->z2 = b->zeros;
        }
        j->bias = a->bias;
        j->y = y[i];
        j->acc = acc ? acc[i] : 0;
        j->rows = a->rows;
        j->row_bytes = a->row_bytes;
        j->ng = a->n_groups;
        j->gshift = a->n_groups == 1 ? 0 : log2_exact(a->group / 32);
        j->block0 = blocks;
        blocks += (a->rows + R - 1) / R;
    }
    const int cols = m[0]->cols, f16 = m[0]->kind == CU_F16;
    switch (W) {
    case 1: launch_multi<1>(st, J, blocks, pair, mode, f16, x, xprep, cols); break;
    case 2: launch_multi<2>(st, J, blocks, pair, mode, f16, x, xprep, cols); break;
    case 4: launch_multi<4>(st, J, blocks, pair, mode, f16, x, xprep, cols); break;
    default: launch_multi<8>(st, J, blocks, pair, mode, f16, x, xprep, cols); break;
    }
    CU_LAUNCHED("fused matrix-vector kernel");
    return LMP_OK;
}

static int log2_exact(int v)
{
    if (v <= 0 || (v & (v - 1))) return -1;
    int k = 0;
    while ((1 << k) < v) k++;
    return k;
}

template <int BITS, bool VEC>
static void launch_packed(cudaStream_t st, float *y, const float4 *xp, const struct cu_mat *m,
                          int gshift, int uniform, int acc)
{
    const int R = 2, threads = 256;
    unsigned blocks = (unsigned)((m->rows + (threads / 32) * R - 1) / ((threads / 32) * R));
    gemv_packed_kernel<BITS, VEC, 2><<<blocks, threads, 0, st>>>(
        y, xp, m->codes, m->row_bytes, m->scales, m->zeros, m->n_groups, m->group, gshift,
        uniform, m->bias, m->rows, m->cols, acc);
}

enum lmp_status k_gemv(cudaStream_t st, float *y, const float *x, const void *xprep,
                       const struct cu_mat *m, int accumulate, int mode, struct lmp_err *err)
{
    const int threads = 256;
    if (mode == GEMV_DENSE) {
        const int R = 2;
        unsigned blocks = (unsigned)((m->rows + (threads / 32) * R - 1) / ((threads / 32) * R));
        if (m->kind == CU_F32)
            gemv_dense_kernel<float, 2><<<blocks, threads, 0, st>>>(y, x, m->f32, m->bias, m->rows,
                                                                   m->cols, accumulate);
        else
            gemv_dense_kernel<__half, 2><<<blocks, threads, 0, st>>>(y, x, m->f16, m->bias,
                                                                    m->rows, m->cols, accumulate);
        CU_LAUNCHED("matrix-vector kernel");
        return LMP_OK;
    }
    const char *base = (const char *)xprep;
    const int gshift = m->n_groups == 1 ? 0 : log2_exact(m->group / 32);
    if (mode == GEMV_Q4H) {
        const int R = 2;
        unsigned blocks = (unsigned)((m->rows + (threads / 32) * R - 1) / ((threads / 32) * R));
        gemv_q4h_kernel<2><<<blocks, threads, 0, st>>>(
            y, (const float *)base, (const uint4 *)(base + 16), m->codes, m->row_bytes, m->scales,
            m->zeros, m->n_groups, gshift, m->bias, m->rows, m->cols, accumulate);
        CU_LAUNCHED("Q4 matrix-vector kernel");
        return LMP_OK;
    }
    const float4 *xp = (const float4 *)(base + 16);
    const int uniform = m->n_groups == 1 || m->group % 32 == 0;
    const int vec = m->row_bytes % (size_t)(4 * m->bits) == 0;
    switch (m->bits) {
    case 2: vec ? launch_packed<2, true>(st, y, xp, m, gshift, uniform, accumulate)
                : launch_packed<2, false>(st, y, xp, m, gshift, uniform, accumulate); break;
    case 3: launch_packed<3, false>(st, y, xp, m, gshift, uniform, accumulate); break;
    case 4: vec ? launch_packed<4, true>(st, y, xp, m, gshift, uniform, accumulate)
                : launch_packed<4, false>(st, y, xp, m, gshift, uniform, accumulate); break;
    case 8: vec ? launch_packed<8, true>(st, y, xp, m, gshift, uniform, accumulate)
                : launch_packed<8, false>(st, y, xp, m, gshift, uniform, accumulate); break;
    default: return lmp_err_set(err, LMP_ERR_INTERNAL, "CUDA: %d-bit weights", m->bits);
    }
    CU_LAUNCHED("packed matrix-vector kernel");
    return LMP_OK;
}

enum lmp_status k_init_attrs(size_t smem_max, struct lmp_err *err)
{
    int v = (int)smem_max;
    CU_TRY(cudaFuncSetAttribute(attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, v),
           "attention kernel attributes");
    CU_TRY(cudaFuncSetAttribute(att_split_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, v),
           "attention kernel attributes");
    CU_TRY(cudaFuncSetAttribute(att_split_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, v),
           "attention kernel attributes");
    if (cudaFuncSetAttribute(att_split_kernel<true>, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess)
        (void)cudaGetLastError(); /* clusters of up to 8 then (k_attention asks before it launches more) */
    /* the whole L1 as shared memory, as the tile kernels ask: an SM whose split would have to
       change takes no block of the next kernel until it drains */
    CU_TRY(cudaFuncSetAttribute(attention_kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100),
           "attention kernel attributes");
    CU_TRY(cudaFuncSetAttribute(att_split_kernel<false>, cudaFuncAttributePreferredSharedMemoryCarveout, 100),
           "attention kernel attributes");
    CU_TRY(cudaFuncSetAttribute(att_split_kernel<true>, cudaFuncAttributePreferredSharedMemoryCarveout, 100),
           "attention kernel attributes");
    enum lmp_status st = k_q4f_init_attrs(smem_max, err);
    return st ? st : k_q4t_init_attrs(smem_max, err);
}

/* ---- NLL ------------------------------------------------------------------------------ */

__global__ void nll_kernel(double *nll, const float *logits, const int32_t *target, int vocab)
{
    __shared__ float red[33];
    __shared__ double redd[33];
    const float *row = logits + (size_t)blockIdx.x * vocab;
    float mx = -INFINITY;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) mx = fmaxf(mx, row[c]);
    mx = block_max(mx, red);
    double sum = 0.0;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) sum += (double)expf(row[c] - mx);
    sum = block_sum_d(sum, redd);
    if (threadIdx.x == 0) nll[blockIdx.x] = log(sum) - (double)(row[target[blockIdx.x]] - mx);
}
void k_nll(cudaStream_t st, double *nll, const float *logits, const int32_t *target, int n,
           int vocab)
{
    if (n > 0) nll_kernel<<<n, 256, 0, st>>>(nll, logits, target, vocab);
}

/* ---- random fills ------------------------------------------------------------------------ */

static __device__ __forceinline__ uint64_t mix64(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static __device__ __forceinline__ float u01(uint64_t h) /* [0, 1) */
{
    return (float)(h >> 40) * (1.0f / 16777216.0f);
}

__global__ void rand_f32_kernel(float *p, size_t n, float lo, float hi, uint64_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        p[i] = lo + (hi - lo) * u01(mix64(seed ^ (i * 0xD1B54A32D192ED03ull)));
}
__global__ void rand_normal_kernel(float *p, size_t n, float sd, uint64_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint64_t h = mix64(seed ^ (i * 0xD1B54A32D192ED03ull));
        float u1 = ((float)(h >> 40) + 0.5f) * (1.0f / 16777216.0f);
        float u2 = (float)((h >> 16) & 0xFFFFFF) * (1.0f / 16777216.0f);
        p[i] = sd * sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
    }
}
__global__ void rand_f16_kernel(__half *p, size_t n, float lo, float hi, uint64_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        p[i] = __float2half_rn(lo + (hi - lo) * u01(mix64(seed ^ (i * 0xD1B54A32D192ED03ull))));
}
__global__ void rand_u8_kernel(uint8_t *p, size_t n, uint64_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        p[i] = (uint8_t)(mix64(seed ^ (i * 0xD1B54A32D192ED03ull)) >> 56);
}
void k_rand_f32(cudaStream_t st, float *p, size_t n, float lo, float hi, uint64_t seed)
{
    if (n) rand_f32_kernel<<<grid_for(n, 256), 256, 0, st>>>(p, n, lo, hi, seed);
}
void k_rand_normal(cudaStream_t st, float *p, size_t n, float sd, uint64_t seed)
{
    if (n) rand_normal_kernel<<<grid_for(n, 256), 256, 0, st>>>(p, n, sd, seed);
}
void k_rand_f16(cudaStream_t st, __half *p, size_t n, float lo, float hi, uint64_t seed)
{
    if (n) rand_f16_kernel<<<grid_for(n, 256), 256, 0, st>>>(p, n, lo, hi, seed);
}
void k_rand_u8(cudaStream_t st, uint8_t *p, size_t n, uint64_t seed)
{
    if (n) rand_u8_kernel<<<grid_for(n, 256), 256, 0, st>>>(p, n, seed);
}

__global__ void scale_cols_kernel(float *X, size_t total, int cols, const float *c)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        X[i] *= c[i % cols];
}
void k_scale_cols(cudaStream_t st, float *X, long n, int cols, const float *c)
{
    size_t total = (size_t)n * cols;
    if (total) scale_cols_kernel<<<grid_for(total, 256), 256, 0, st>>>(X, total, cols, c);
}

__global__ void check_finite_kernel(const float *p, size_t n, int *flag)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        if (!isfinite(p[i])) *flag = 1;
}
void k_check_finite(cudaStream_t st, const float *p, size_t n, int *flag)
{
    if (n) check_finite_kernel<<<grid_for(n, 256), 256, 0, st>>>(p, n, flag);
}
