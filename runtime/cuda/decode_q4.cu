/* Decode (batch 1) of 4-bit models: one streaming kernel per group of matrix-vector products
 * that read the same input, with what surrounds them fused in.
 *
 *   Q4F_QKV    x = rmsnorm(h) * w; q, k, v = Wq x, Wk x, Wv x (+ bias); RoPE of q and k at
 *              *pos; k and v written straight into the KV cache
 *   Q4F_GU     x = rmsnorm(h) * w; g = silu(Wgate x) * (Wup x)
 *   Q4F_PLAIN  y (+)= W x (+ bias), x as is or rmsnorm(h) * w (the output head)
 *
 * Why (docs/GPU.md): at 3.5 GB per token a Llama-2-7B decode step has ~37 us per layer
 * at 70 % of the copy bandwidth, and every extra launch costs a few microseconds; the earlier
 * kernels (gemv_q4h_multi_kernel) moved 8 KB per block, so block start-up and the one memory
 * round trip per block dominated.
 *
 * Layout: a persistent grid (as many blocks as fit on the device at once). Each block first
 * builds the input in shared memory: fp32 x, RMSNorm applied, then max |x| over the vector
 * picks a power of two so that fp16 partial sums cannot overflow (as prep_q4h_kernel), and
 * the half2 swizzle of the Q4H kernels (word k of chunk ch at xh[k * nch + ch]: the lanes of
 * a warp read 32 consecutive chunks from distinct banks). Work is cut into units of two rows
 * (QKV, PLAIN: rows 2i and 2i+1 of one matrix, the RoPE pair; GU: row i of gate and of up)
 * and every warp takes a contiguous, equal share of the units; a warp streams whole rows,
 * 4 chunks of 16 bytes per lane and row in flight, so no block-level reduction is needed.
 * The numerics per 32 codes are those of q4h_chunk (kernels.cu): codes minus zero exactly in
 * fp16, HFMA2 with the scaled x, every 16 products moved to fp32.
 *
 * With PDL (programmatic dependent launch) each kernel lets the next launch at once; before
 * waiting for its predecessor it prefetches the first rows of its share into L2 (weights are
 * never written by the forward). */
#include "internal.h"
#include "reduce.cuh"
#include "attention.cuh"
#include "q4dot.cuh"

#include <string.h>

static __device__ __forceinline__ float q4f_silu(float g) { return g / (1.0f + expf(-g)); }

#define Q4F_UNROLL 4 /* chunks per lane and row in one step */

/* where unit u's two rows are: matrix j (GU: gate and up), rows ra and rb */
struct q4f_unit {
    int j, ra, rb, hasb;
};

template <int MODE>
static __device__ __forceinline__ q4f_unit q4f_locate(const struct q4f_args &A, int u)
{
    q4f_unit U;
    int j = 0;
#pragma unroll
    for (int k = 1; k < Q4F_MAX; k++)
        if (k < A.n && u >= A.m[k].unit0) j = k;
    const int lu = u - A.m[j].unit0;
    U.j = j;
    U.hasb = 1;
    if (MODE == Q4F_GU) {
        U.ra = U.rb = lu;
    } else {
        U.ra = 2 * lu;
        U.rb = U.ra + 1;
        if (U.rb >= A.m[j].rows) U.hasb = 0, U.rb = U.ra; /* odd rows: the last unit has one */
    }
    return U;
}

/* one step's loads: chunks c0 + 32 k (k < Q4F_UNROLL) of both rows, their scales, zeros */
struct q4f_regs {
    uint4 wa[Q4F_UNROLL], wb[Q4F_UNROLL];
    __half sa[Q4F_UNROLL], za[Q4F_UNROLL], sb[Q4F_UNROLL], zb[Q4F_UNROLL];
};

template <int MODE>
static __device__ __forceinline__ void q4f_load(q4f_regs &R, const struct q4f_args &A,
                                                const q4f_unit &U, int c0, int nch)
{
    /* the matrix pointers come from the kernel's parameter space (__grid_constant__), not
     * from registers */
    const struct q4f_mat &Ma = A.m[MODE == Q4F_GU ? 0 : U.j], &Mb = A.m[MODE == Q4F_GU ? 1 : U.j];
    const uint8_t *pa = Ma.codes + (size_t)U.ra * A.row_bytes, *pb = Mb.codes + (size_t)U.rb * A.row_bytes;
    const size_t ga = (size_t)U.ra * A.ng, gb = (size_t)U.rb * A.ng;
#pragma unroll
    for (int k = 0; k < Q4F_UNROLL; k++) {
        const int ch = c0 + 32 * k;
        if (ch < nch) {
            const int g = A.ng == 1 ? 0 : ch >> A.gshift;
            R.wa[k] = __ldg((const uint4 *)(pa + (size_t)ch * 16));
            R.wb[k] = __ldg((const uint4 *)(pb + (size_t)ch * 16));
            R.sa[k] = __ldg(Ma.s + ga + g), R.za[k] = __ldg(Ma.z + ga + g);
            R.sb[k] = __ldg(Mb.s + gb + g), R.zb[k] = __ldg(Mb.z + gb + g);
        }
    }
}

#define Q4F_NORM_REGS 4 /* float4s of the RMSNorm weights a thread loads before the wait */

/* the warp's share of the units: a contiguous, equal part (gw of G warps) */
static __device__ __forceinline__ void q4f_share(const struct q4f_args &A, int gw, int G, int &lo,
                                                 int &hi)
{
    lo = (int)((long long)A.units * gw / G);
    hi = (int)((long long)A.units * (gw + 1) / G);
}

/* the first step's loads of warp gw: weights, scales and zeros are never written by the
 * forward, so this may run before the dependency (PDL wait, grid barrier) */
template <int MODE>
static __device__ __forceinline__ void q4f_preload(const struct q4f_args &A, int gw, int G,
                                                   q4f_unit &U, q4f_regs &cur)
{
    int lo, hi;
    q4f_share(A, gw, G, lo, hi);
    U = q4f_locate<MODE>(A, lo < hi ? lo : 0);
    if (lo < hi) q4f_load<MODE>(cur, A, U, threadIdx.x & 31, A.cols >> 5);
}

/* The input into shared memory: x (or x * w) with sum x^2 and max |x (* w)|, one reduction
 * for both; then the fp16 swizzle scaled by 1 / rms (with norm) and by a power of two so
 * that fp16 partial sums cannot overflow (as prep_q4h_kernel). x is read through L2 only
 * (ld.global.cg): in the persistent kernel another SM wrote it. nw: the first
 * Q4F_NORM_REGS * blockDim float4s of the norm weights, loaded already, or NULL. Returns
 * the scale of the products; ends with a barrier. */
static __device__ float q4f_prep(const struct q4f_args &A, unsigned char *sm, float *red,
                                 const float4 *nw)
{
    const int cols = A.cols, nch = cols >> 5, c4 = cols >> 2;
    const int tid = threadIdx.x, nthr = blockDim.x;
    float *xf = (float *)sm;
    uint4 *xh = (uint4 *)(xf + cols);
    float ss = 0.0f, mx = 0.0f;
    auto one = [&](int i, float4 w) {
        const float4 v = __ldcg((const float4 *)A.x + i);
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        const float4 t = make_float4(v.x * w.x, v.y * w.y, v.z * w.z, v.w * w.w);
        ((float4 *)xf)[i] = t;
        mx = fmaxf(mx, fmaxf(fmaxf(fabsf(t.x), fabsf(t.y)), fmaxf(fabsf(t.z), fabsf(t.w))));
    };
    int i0 = tid;
    if (nw) {
#pragma unroll
        for (int k = 0; k < Q4F_NORM_REGS; k++)
            if (tid + k * nthr < c4) one(tid + k * nthr, nw[k]);
        i0 = tid + Q4F_NORM_REGS * nthr;
    }
    for (int i = i0; i < c4; i += nthr)
        one(i, A.norm ? __ldg((const float4 *)A.norm + i) : make_float4(1.f, 1.f, 1.f, 1.f));
    block_sum_max(ss, mx, red); /* its barriers also order the xf writes before the reads */
    const float inv = A.norm ? 1.0f / sqrtf(ss / (float)cols + A.eps) : 1.0f;
    mx *= inv;
    int e = 0;
    if (mx > 64.0f && mx <= 3.0e38f) frexpf(mx / 64.0f, &e); /* mx / 2^e <= 64 */
    const float xscale = ldexpf(1.0f, -e) * inv;
    for (int i = tid; i < 4 * nch; i += nthr) {
        const int k = i / nch, ch = i - k * nch, c0 = ch * 32 + k * 8;
        const float4 lo = ((const float4 *)xf)[c0 >> 2], hi = ((const float4 *)xf)[(c0 >> 2) + 1];
        __half2 hv[4];
        hv[0] = __floats2half2_rn(lo.x * xscale, hi.x * xscale);
        hv[1] = __floats2half2_rn(lo.y * xscale, hi.y * xscale);
        hv[2] = __floats2half2_rn(lo.z * xscale, hi.z * xscale);
        hv[3] = __floats2half2_rn(lo.w * xscale, hi.w * xscale);
        xh[i] = *(const uint4 *)hv;
    }
    __syncthreads();
    return ldexpf(1.0f, e);
}

/* The warp's steps (units x steps per unit) from the preloaded first one; with PIPE the
 * next step's loads are in flight while the current one is computed. */
template <int MODE, bool PIPE>
static __device__ __forceinline__ void q4f_stream(const struct q4f_args &A, int gw, int G,
                                                  q4f_unit U, q4f_regs cur,
                                                  const unsigned char *sm, float yscale)
{
    const int cols = A.cols, nch = cols >> 5, lane = threadIdx.x & 31;
    const uint4 *xh = (const uint4 *)((const float *)sm + cols);
    int u_lo, u_hi;
    q4f_share(A, gw, G, u_lo, u_hi);
    const int ipu = (nch + 32 * Q4F_UNROLL - 1) / (32 * Q4F_UNROLL); /* steps per unit */
    const int T = (u_hi - u_lo) * ipu;
    float da = 0.0f, db = 0.0f;
    for (int t = 0; t < T; t++) {
        const int it = t % ipu;
        q4f_unit Un = U;
        q4f_regs nxt;
        if (t > 0 && !PIPE) /* this step's loads, issued now */
            q4f_load<MODE>(cur, A, U, lane + it * 32 * Q4F_UNROLL, nch);
        if (t + 1 < T) {
            const int it1 = (t + 1) % ipu;
            if (it1 == 0) Un = q4f_locate<MODE>(A, u_lo + (t + 1) / ipu);
            if (PIPE) q4f_load<MODE>(nxt, A, Un, lane + it1 * 32 * Q4F_UNROLL, nch);
        }
        const int c0 = lane + it * 32 * Q4F_UNROLL;
#pragma unroll
        for (int k = 0; k < Q4F_UNROLL; k++) {
            const int ch = c0 + 32 * k;
            if (ch < nch) {
                uint4 xq[4];
#pragma unroll
                for (int kk = 0; kk < 4; kk++) xq[kk] = xh[kk * nch + ch];
                const __half2 b1024 = __float2half2_rn(1024.0f);
                const __half2 zba = __hadd2(b1024, __half2half2(cur.za[k]));
                const __half2 zbb = __hadd2(b1024, __half2half2(cur.zb[k]));
                da += __half2float(cur.sa[k]) * q4h_dot(cur.wa[k], xq, zba);
                db += __half2float(cur.sb[k]) * q4h_dot(cur.wb[k], xq, zbb);
            }
        }
        if (it == ipu - 1) { /* the unit is complete */
            da = warp_sum(da);
            db = warp_sum(db);
            if (lane == 0) {
                const struct q4f_mat &M = A.m[U.j];
                const int ra = U.ra, rbw = U.rb;
                float va = da * yscale, vb = db * yscale;
                if (MODE == Q4F_GU) {
                    A.m[0].y[ra] = q4f_silu(va) * vb;
                } else {
                    if (M.bias) {
                        va += M.bias[ra];
                        if (U.hasb) vb += M.bias[rbw];
                    }
                    if (MODE == Q4F_PLAIN) { /* y may come from another SM: through L2 */
                        M.y[ra] = A.acc ? __ldcg(M.y + ra) + va : va;
                        if (U.hasb) M.y[rbw] = A.acc ? __ldcg(M.y + rbw) + vb : vb;
                    } else { /* QKV: j 0 q, 1 k, 2 v; rows 2i, 2i+1 are a RoPE pair */
                        const int p0 = *A.pos;
                        if (U.j < 2) {
                            const float *c = A.cs + (size_t)p0 * A.hd + ra % A.hd;
                            const float co = c[0], si = c[1];
                            const float y0 = va * co - vb * si, y1 = va * si + vb * co;
                            va = y0, vb = y1;
                        }
                        float *dst = U.j == 0 ? M.y : (U.j == 1 ? A.kc : A.vc) + (size_t)p0 * A.kvd;
                        dst[ra] = va;
                        dst[rbw] = vb;
                    }
                }
            }
            da = db = 0.0f;
        }
        if (PIPE) cur = nxt;
        U = Un;
    }
}

/* at most 128 registers (65536 / 512 threads per SM): two 8-warp blocks or one of 16 */
template <int MODE, int NW, bool PIPE>
__global__ void __launch_bounds__(NW * 32, 16 / NW) q4f_kernel(const __grid_constant__ struct q4f_args A)
{
    extern __shared__ __align__(16) unsigned char q4f_sm[];
    __shared__ float red[66];
    const int gw = blockIdx.x * NW + (threadIdx.x >> 5), G = gridDim.x * NW;
    pdl_trigger();
    /* before the dependency: the first step's weights and the RMSNorm weights */
    q4f_unit U;
    q4f_regs cur;
    q4f_preload<MODE>(A, gw, G, U, cur);
    float4 nw[Q4F_NORM_REGS];
    if (A.norm) {
#pragma unroll
        for (int k = 0; k < Q4F_NORM_REGS; k++) {
            const int i = threadIdx.x + k * NW * 32;
            if (i < (A.cols >> 2)) nw[k] = __ldg((const float4 *)A.norm + i);
        }
    }
    pdl_wait();
    const float ys = q4f_prep(A, q4f_sm, red, A.norm ? nw : NULL);
    q4f_stream<MODE, PIPE>(A, gw, G, U, cur, q4f_sm, ys);
}

/* ---- the whole decode step in one persistent kernel ----------------------------------------
 * Every layer's five phases (q/k/v, attention, o, gate/up, down) and the head run in one
 * cooperative launch, separated by grid-wide barriers: before each barrier every warp issues
 * the loads of its first step of the next phase, so the barrier, the input preparation and
 * the attention overlap the weight stream. Activations written by other SMs are read through
 * L2 (ld.global.cg), never from a stale L1 line. */

static __device__ __forceinline__ void grid_sync(unsigned *bar, unsigned target)
{
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(bar, 1u);
        unsigned v;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(bar) : "memory");
        } while (v < target);
        __threadfence();
    }
    __syncthreads();
}

template <int NW, bool PIPE>
__global__ void __launch_bounds__(NW * 32, 16 / NW) q4f_mega(const __grid_constant__ struct q4f_mega_args P)
{
    extern __shared__ __align__(16) unsigned char q4f_sm[];
    __shared__ float red[66];
    const int gw = blockIdx.x * NW + (threadIdx.x >> 5), G = gridDim.x * NW;
    const int hd = P.hd, p0 = __ldcg(P.pos);
    unsigned nbar = 0;
    q4f_unit U;
    q4f_regs cur;
    q4f_preload<Q4F_QKV>(P.L[0].qkv, gw, G, U, cur);
    for (int l = 0; l < P.n_layers; l++) {
        const struct q4f_layer_args &LA = P.L[l];
        float ys = q4f_prep(LA.qkv, q4f_sm, red, NULL);
        q4f_stream<Q4F_QKV, PIPE>(LA.qkv, gw, G, U, cur, q4f_sm, ys);
        grid_sync(P.bar, ++nbar * gridDim.x);
        const int kvd = LA.nkv * hd, grp = LA.nh / LA.nkv;
        for (int h = blockIdx.x; h < LA.nh; h += gridDim.x) {
            att_row<NW * 32, true>(LA.att + (size_t)h * hd, LA.q + (size_t)h * hd, LA.kc, LA.vc,
                                   p0 + 1, kvd, h / grp, hd, P.scale, (float *)q4f_sm);
            __syncthreads();
        }
        q4f_preload<Q4F_PLAIN>(LA.o, gw, G, U, cur);
        grid_sync(P.bar, ++nbar * gridDim.x);
        ys = q4f_prep(LA.o, q4f_sm, red, NULL);
        q4f_stream<Q4F_PLAIN, PIPE>(LA.o, gw, G, U, cur, q4f_sm, ys);
        q4f_preload<Q4F_GU>(LA.gu, gw, G, U, cur);
        grid_sync(P.bar, ++nbar * gridDim.x);
        ys = q4f_prep(LA.gu, q4f_sm, red, NULL);
        q4f_stream<Q4F_GU, PIPE>(LA.gu, gw, G, U, cur, q4f_sm, ys);
        q4f_preload<Q4F_PLAIN>(LA.down, gw, G, U, cur);
        grid_sync(P.bar, ++nbar * gridDim.x);
        ys = q4f_prep(LA.down, q4f_sm, red, NULL);
        q4f_stream<Q4F_PLAIN, PIPE>(LA.down, gw, G, U, cur, q4f_sm, ys);
        if (l + 1 < P.n_layers)
            q4f_preload<Q4F_QKV>(P.L[l + 1].qkv, gw, G, U, cur);
        else if (P.has_head)
            q4f_preload<Q4F_PLAIN>(P.head, gw, G, U, cur);
        if (l + 1 < P.n_layers || P.has_head) grid_sync(P.bar, ++nbar * gridDim.x);
    }
    if (P.has_head) {
        const float ys = q4f_prep(P.head, q4f_sm, red, NULL);
        q4f_stream<Q4F_PLAIN, PIPE>(P.head, gw, G, U, cur, q4f_sm, ys);
    }
}

/* ---- host side --------------------------------------------------------------------------- */

int k_q4f_mat_ok(const struct cu_mat *m)
{
    return m->kind == CU_PACKED && k_gemv_mode(m, 0) == GEMV_Q4H && !m->perm && m->cols % 32 == 0;
}

size_t k_q4f_smem(int cols) { return (size_t)cols * 6; }

int k_q4f_ok(const struct cu_mat *const *m, int n, int mode, size_t smem_max)
{
    if (n < 1 || n > Q4F_MAX) return 0;
    for (int i = 0; i < n; i++) {
        if (!k_q4f_mat_ok(m[i]) || m[i]->cols != m[0]->cols || m[i]->group != m[0]->group ||
            m[i]->n_groups != m[0]->n_groups || m[i]->row_bytes != m[0]->row_bytes)
            return 0;
        if (mode == Q4F_QKV && m[i]->rows % 2) return 0;
    }
    if (mode == Q4F_GU && (n != 2 || m[0]->rows != m[1]->rows || m[0]->bias || m[1]->bias)) return 0;
    if (mode == Q4F_QKV && n != 3) return 0;
    return k_q4f_smem(m[0]->cols) + 1024 <= smem_max;
}

enum q4f_attr { NONE, PDL, COOPERATIVE };

/* a launch of `blocks` blocks of nw warps with one attribute (or none) in *at */
static cudaLaunchConfig_t q4f_config(int blocks, int nw, size_t smem, cudaStream_t st,
                                     cudaLaunchAttribute *at, enum q4f_attr kind)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)blocks);
    cfg.blockDim = dim3((unsigned)nw * 32);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    memset(at, 0, sizeof *at);
    if (kind == PDL) {
        at->id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at->val.programmaticStreamSerializationAllowed = 1;
    } else if (kind == COOPERATIVE) {
        at->id = cudaLaunchAttributeCooperative;
        at->val.cooperative = 1;
    }
    cfg.attrs = at;
    cfg.numAttrs = kind == NONE ? 0 : 1;
    return cfg;
}

template <int MODE, int NW, bool PIPE>
static enum lmp_status q4f_launch(cudaStream_t st, const struct q4f_args *a, int pdl,
                                  struct lmp_err *err)
{
    const size_t smem = k_q4f_smem(a->cols);
    int dev = 0, sms = 0, per = 0; /* blocks resident at once (depends on the shared memory) */
    CU_TRY(cudaGetDevice(&dev), "q4 decode kernel");
    CU_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "q4 decode kernel");
    CU_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per, q4f_kernel<MODE, NW, PIPE>, NW * 32,
                                                         smem),
           "q4 decode kernel occupancy");
    if (per < 1) per = 1;
    const int grid = sms * (a->bps > 0 && a->bps < per ? a->bps : per);
    const int warps_needed = a->units;
    int blocks = grid;
    if ((long long)blocks * NW > warps_needed) blocks = (warps_needed + NW - 1) / NW;
    if (blocks < 1) blocks = 1;
    cudaLaunchAttribute at;
    cudaLaunchConfig_t cfg = q4f_config(blocks, NW, smem, st, &at, pdl ? PDL : NONE);
    CU_TRY(cudaLaunchKernelEx(&cfg, q4f_kernel<MODE, NW, PIPE>, *a), "q4 decode kernel");
    return LMP_OK;
}

/* the instantiations: modes x {8, 16} warps x {pipelined, not} */
#define Q4F_EACH(F, MODE) F(MODE, 8, true) F(MODE, 8, false) F(MODE, 16, true) F(MODE, 16, false)

enum lmp_status k_q4f_init_attrs(size_t smem_max, struct lmp_err *err)
{
    const int v = (int)smem_max;
    cudaError_t e = cudaSuccess;
#define Q4F_ATTR(MODE, NW, PIPE)                                                              \
    if (!e)                                                                                   \
        e = cudaFuncSetAttribute(q4f_kernel<MODE, NW, PIPE>,                                 \
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, v);
    Q4F_EACH(Q4F_ATTR, Q4F_PLAIN)
    Q4F_EACH(Q4F_ATTR, Q4F_GU)
    Q4F_EACH(Q4F_ATTR, Q4F_QKV)
#undef Q4F_ATTR
    CU_TRY(e, "q4 decode kernel attributes");
    return LMP_OK;
}

template <int MODE>
static enum lmp_status q4f_mode(cudaStream_t st, const struct q4f_args *a, int warps, int pipe,
                                int pdl, struct lmp_err *err)
{
    if (warps == 8)
        return pipe ? q4f_launch<MODE, 8, true>(st, a, pdl, err) : q4f_launch<MODE, 8, false>(st, a, pdl, err);
    return pipe ? q4f_launch<MODE, 16, true>(st, a, pdl, err) : q4f_launch<MODE, 16, false>(st, a, pdl, err);
}

void k_q4f_args(struct q4f_args *a, const struct cu_mat *const *m, float *const *y, int n,
                int mode, const struct q4f_extra *x)
{
    memset(a, 0, sizeof *a);
    a->n = n;
    a->cols = m[0]->cols;
    a->ng = m[0]->n_groups;
    a->gshift = 0;
    if (a->ng > 1)
        while ((32 << a->gshift) < m[0]->group) a->gshift++;
    a->row_bytes = m[0]->row_bytes;
    int units = 0;
    for (int i = 0; i < n; i++) {
        struct q4f_mat *q = &a->m[i];
        q->codes = m[i]->codes;
        q->s = m[i]->scales;
        q->z = m[i]->zeros;
        q->bias = m[i]->bias;
        q->y = y[i];
        q->rows = m[i]->rows;
        q->unit0 = units;
        if (mode != Q4F_GU || i == 0) units += mode == Q4F_GU ? m[i]->rows : (m[i]->rows + 1) / 2;
    }
    a->units = units;
    a->x = x->x;
    a->norm = x->norm;
    a->eps = x->eps;
    a->acc = x->acc;
    a->cs = x->cs;
    a->pos = x->pos;
    a->kc = x->kc;
    a->vc = x->vc;
    a->hd = x->hd;
    a->kvd = x->kvd;
    a->bps = x->bps;
    if (mode == Q4F_GU) {
        /* units index gate rows; the kernel reads m[1] for up */
        a->n = 2;
        a->m[1].unit0 = 1 << 30;
    }
}

enum lmp_status k_q4f_launch(cudaStream_t st, const struct q4f_args *a, int mode,
                             const struct q4f_extra *x, struct lmp_err *err)
{
    switch (mode) {
    case Q4F_QKV: return q4f_mode<Q4F_QKV>(st, a, x->warps, x->pipe, x->pdl, err);
    case Q4F_GU: return q4f_mode<Q4F_GU>(st, a, x->warps, x->pipe, x->pdl, err);
    default: return q4f_mode<Q4F_PLAIN>(st, a, x->warps, x->pipe, x->pdl, err);
    }
}

enum lmp_status k_q4f(cudaStream_t st, const struct cu_mat *const *m, float *const *y, int n,
                      int mode, const struct q4f_extra *x, struct lmp_err *err)
{
    struct q4f_args a;
    k_q4f_args(&a, m, y, n, mode, x);
    return k_q4f_launch(st, &a, mode, x, err);
}

/* ---- the persistent kernel (host) ---- */

size_t k_q4f_mega_smem(int max_cols, int hd, int max_ctx, int warps)
{
    if (warps != 8 && warps != 16) return 0;
    const size_t x = k_q4f_smem(max_cols), att = ATT_ROW_SMEM(warps * 32, hd, max_ctx) * sizeof(float);
    return x > att ? x : att;
}

template <int NW, bool PIPE>
static enum lmp_status mega_launch(cudaStream_t st, const struct q4f_mega_args *P, int bps,
                                   size_t smem, struct lmp_err *err)
{
    int dev = 0, sms = 0, coop = 0, per = 0;
    CU_TRY(cudaGetDevice(&dev), "q4 decode kernel");
    CU_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "q4 decode kernel");
    CU_TRY(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev), "q4 decode kernel");
    CU_TRY(cudaFuncSetAttribute(q4f_mega<NW, PIPE>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                (int)smem),
           "q4 decode kernel attributes");
    CU_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per, q4f_mega<NW, PIPE>, NW * 32, smem),
           "q4 decode kernel occupancy");
    if (!coop || per < 1)
        return lmp_err_set(err, LMP_ERR_UNSUPPORTED,
                           "CUDA: the persistent decode kernel needs cooperative launch and one "
                           "resident block per SM");
    /* every block resident at once (the barriers need it; the cooperative launch checks) */
    const int blocks = sms * (bps > 0 && bps < per ? bps : per);
    CU_TRY(cudaMemsetAsync(P->bar, 0, sizeof(unsigned), st), "q4 decode barrier");
    cudaLaunchAttribute at;
    cudaLaunchConfig_t cfg = q4f_config(blocks, NW, smem, st, &at, COOPERATIVE);
    CU_TRY(cudaLaunchKernelEx(&cfg, q4f_mega<NW, PIPE>, *P), "q4 persistent decode kernel");
    return LMP_OK;
}

enum lmp_status k_q4f_mega(cudaStream_t st, const struct q4f_mega_args *P, int warps, int pipe,
                           int bps, size_t smem, struct lmp_err *err)
{
    if (warps == 8)
        return pipe ? mega_launch<8, true>(st, P, bps, smem, err) : mega_launch<8, false>(st, P, bps, smem, err);
    return pipe ? mega_launch<16, true>(st, P, bps, smem, err) : mega_launch<16, false>(st, P, bps, smem, err);
}
