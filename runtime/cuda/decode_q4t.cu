/* Decode (batch 1) of 4-bit models on tensor cores: the weights in a tile layout made once at
 * upload, each 16-row x 128-column tile of codes a 1 KB block that one warp reads with two
 * coalesced 16-byte loads per lane and feeds to eight mma.m16n8k16 (fp16 in, fp32 out).
 *
 * Why (docs/GPU.md): the row-streaming kernels of decode_q4.cu spend ~4.4 instructions per
 * code (unpack, zero, HFMA2, fp16 -> fp32, scales per 32 codes), so at batch 1 they were
 * bound by instruction issue at ~2.2 TB/s, not by DRAM. Here a code costs ~1 instruction:
 * per 8 codes one shift, four LOP3 that turn nibbles into exact fp16 (1024 + q, or 1024 +
 * 16 q for the high nibble of a byte), and one tensor-core mma that multiplies them with
 * the input and sums in fp32. The offsets are removed per 128 columns in fp32:
 *
 *   sum_k (q_k - z) x_k = acc - off - z X,   off = 1024 sum_lo x + 64 sum_hi x,  X = sum x
 *
 * (lo: the 8 columns of each k16 step whose codes sit in low nibbles; hi: the 8 in high
 * nibbles, whose x is stored divided by 16). x is the RMSNormed input as fp16, scaled by a
 * power of two so that max |x| is in [2^13, 2^14); the products and sums are exact fp32 up
 * to the rounding of the sums, so this is more accurate than the fp16 sums of decode_q4.cu.
 *
 * Tile layout (k_q4t_pack): item i = (tile t, chunk j), 1 KB at codes + 1024 i; lane L = 4g
 * + c holds in word s (s = 0..7, k16 step s of the chunk; words 0-3 in the first 16 bytes,
 * 4-7 in the second, each half 512 bytes for the warp) the 8 codes of its mma A fragment:
 * rows 16t + g (a) and 16t + g + 8 (b), columns k = 128 j + 16 s + 2c + {0, 1, 8, 9}:
 *   bits 0-3 a[k], 16-19 a[k+1], 8-11 b[k], 24-27 b[k+1]      (low nibbles: the lo columns)
 *   bits 4-7 a[k+8], 20-23 a[k+9], 12-15 b[k+8], 28-31 b[k+9] (high nibbles: the hi columns)
 * Scales and zeros as half2 (s, z): for (tile, group, g) one uint2 of rows g and g + 8.
 * Rows past the matrix are zero codes with zero scales.
 *
 * Work split: one block per SM, block b a contiguous run of whole tiles; its warps take equal
 * contiguous shares of the run's items (tile-major), sum each tile's chunks in registers and
 * leave the sums in the block's shared memory (a slot per tile and warp); after one barrier
 * the block adds each row's slots in warp order (the result does not depend on timing) and
 * finishes the rows: bias, RoPE and the KV-cache store (QKV), SwiGLU (GU), y = or += (PLAIN).
 * Measured and not kept (docs/GPU.md): stream-K over the whole grid (tiles split across
 * blocks, partial sums through global memory): 34.5 % vs 45.4 %; the attention at the end
 * of q/k/v; weights of this or later launches prefetched into L2.
 *
 * Each warp has its next D items in flight: in registers (q4t_bkernel) or in a shared-memory
 * ring filled by bulk copies (q4t_tkernel); the first D are requested before the previous
 * kernel has finished (PDL; weights are never written by the forward), so they arrive while
 * the block prepares the input. */
#include "internal.h"
#include "reduce.cuh"
#include "q4t.cuh"
#include "attention.cuh"

#include <string.h>

/* input loads in flight per thread in q4t_prep: 3 measured 1.654 vs 1.687 ms/token for 1 */
#define Q4T_PREP_U 3

/* registers per thread of q4t_bkernel: what one block per SM allows, but 64 for the
 * co-resident shapes (14 warps for q/k/v and gate/up, 18 for the plain products), so that
 * a block of each fits on one SM and two of the same do not (k_q4t_init_attrs checks) */
#define Q4T_CO(NW) ((NW) == 14 || (NW) == 18)
#define Q4T_NREG(NW) (Q4T_CO(NW) ? 64 : (65536 / ((NW) * 32) > 255 ? 255 : (65536 / ((NW) * 32)) & ~7))

/* one item's loads: both halves of the codes of 1 or 2 matrices, scales/zeros */
template <int MODE>
struct q4t_regs {
    uint4 w[MODE == Q4F_GU ? 4 : 2];
    uint2 sz[MODE == Q4F_GU ? 2 : 1];
};

/* where item (t, j) is: matrix mi, its local tile lt */
template <int MODE>
static __device__ __forceinline__ int q4t_mat(const struct q4t_args &A, int t)
{
    if (MODE != Q4F_QKV) return 0;
    return (t >= A.m[1].tile0) + (t >= A.m[2].tile0);
}

/* item (t, j): 32-bit indices (a matrix holds < 2^31 / 64 items), one wide multiply each */
template <int MODE>
static __device__ __forceinline__ void q4t_load(q4t_regs<MODE> &R, const struct q4t_args &A, int t,
                                                int j, int lane)
{
    const int mi = q4t_mat<MODE>(A, t), lt = t - A.m[mi].tile0;
    const unsigned it = (unsigned)(lt * A.nc + j) * 64u + (unsigned)lane;
    const unsigned gi = (unsigned)(lt * A.ngr + (j >> A.cshift)) * 8u + (unsigned)(lane >> 2);
    const uint4 *p = A.m[mi].codes + it;
    R.w[0] = q4t_ld16(p);
    R.w[1] = q4t_ld16(p + 32);
    R.sz[0] = q4t_ld8(A.m[mi].sz + gi);
    if (MODE == Q4F_GU) {
        const uint4 *p2 = A.m[1].codes + it;
        R.w[2] = q4t_ld16(p2);
        R.w[3] = q4t_ld16(p2 + 32);
        R.sz[1] = q4t_ld8(A.m[1].sz + gi);
    }
}

/* o by heads with fixed-point sums (opts.att_o 8): the heads' products are added as integers
 * of 2^-32 (red.add.u64 into A.acc64: integer addition does not depend on the order, so the
 * sums are the same in every run), and the next kernels read x + the sums as the residual:
 * gate/up's input (FX instances of q4t_prep/q4t_prep1) and down's outputs, which also zero
 * them for the next layer (q4t_early). */
static __device__ __forceinline__ long long q4t_f2fx(float v) { return __float2ll_rn(v * 4294967296.0f); }
static __device__ __forceinline__ float q4t_fx2f(long long a) { return __ll2float_rn(a) * 2.3283064365386963e-10f; }

/* float4 i of the input: x, plus (FX) the fixed-point sums of its four rows */
template <int FX>
static __device__ __forceinline__ float4 q4t_x4(const struct q4t_args &A, int i)
{
    float4 v = __ldcg((const float4 *)A.x + i);
    if (FX) {
        const longlong2 a = __ldcg((const longlong2 *)A.acc64 + 2 * i), b = __ldcg((const longlong2 *)A.acc64 + 2 * i + 1);
        v.x += q4t_fx2f(a.x), v.y += q4t_fx2f(a.y), v.z += q4t_fx2f(b.x), v.w += q4t_fx2f(b.y);
    }
    return v;
}

/* The input into shared memory: xf = x (* norm weights) in fp32, sum x^2 and max |x| in
 * one block reduction; then per k16 step s and c = 0..3 the B fragment (x[16s + 2c + {0,
 * 1}], x[16s + 2c + {8, 9}] / 16) as fp16 at xb[(s / 2 * 4 + c) * 2 + s % 2], and per
 * 128-column chunk (off, X) (one warp per chunk: its 32 lanes are the chunk's 32 (s, c)).
 * Returns the factor of the products (1 / the power of two and the RMS scale). */
template <int FX = 0>
static __device__ float q4t_prep(const struct q4t_args &A, unsigned char *sm, float *red)
{
    const int cols = A.cols, c4 = cols >> 2, tid = threadIdx.x, nthr = blockDim.x;
    float *xf = (float *)sm;
    uint2 *xb = (uint2 *)(xf + cols);
    float2 *ox = (float2 *)(xb + c4);
    float ss = 0.0f, mx = 0.0f;
    for (int i0 = tid; i0 < c4; i0 += Q4T_PREP_U * nthr) { /* the loads of Q4T_PREP_U steps together */
        float4 v[Q4T_PREP_U], w[Q4T_PREP_U];
#pragma unroll
        for (int u = 0; u < Q4T_PREP_U; u++) {
            const int i = i0 + u * nthr;
            v[u] = w[u] = make_float4(0.f, 0.f, 0.f, 0.f);
            if (i < c4) {
                v[u] = q4t_x4<FX>(A, i);
                w[u] = A.norm ? __ldg((const float4 *)A.norm + i) : make_float4(1.f, 1.f, 1.f, 1.f);
            }
        }
#pragma unroll
        for (int u = 0; u < Q4T_PREP_U; u++) {
            const int i = i0 + u * nthr;
            if (i < c4) {
                ss += v[u].x * v[u].x + v[u].y * v[u].y + v[u].z * v[u].z + v[u].w * v[u].w;
                const float4 t = make_float4(v[u].x * w[u].x, v[u].y * w[u].y, v[u].z * w[u].z, v[u].w * w[u].w);
                ((float4 *)xf)[i] = t;
                mx = fmaxf(mx, fmaxf(fmaxf(fabsf(t.x), fabsf(t.y)), fmaxf(fabsf(t.z), fabsf(t.w))));
            }
        }
    }
    block_sum_max(ss, mx, red); /* its barriers order the xf writes before the reads */
    const float inv = A.norm ? 1.0f / sqrtf(ss / (float)cols + A.eps) : 1.0f;
    mx *= inv;
    const int E = q4t_scale_exp(mx);
    const float sc = ldexpf(inv, E);
    for (int i = tid; i < c4; i += nthr) { /* c4 % 32 == 0: whole warps */
        const int s = i >> 2, c = i & 3, k = 16 * s + 2 * c;
        float off, X;
        xb[((s >> 1) * 4 + c) * 2 + (s & 1)] = q4t_bfrag(xf[k], xf[k + 1], xf[k + 8], xf[k + 9], sc, off, X);
        off = warp_sum(off);
        X = warp_sum(X);
        if ((tid & 31) == 0) ox[i >> 5] = make_float2(off, X);
    }
    __syncthreads();
    return ldexpf(1.0f, -E);
}

/* q4t_prep in one pass where each thread's share of the input fits in registers (up to
 * U quads: cols <= 4 U threads): each thread loads float4 i of x (and of the norm weights)
 * as q4t_prep does and keeps it; after the sum of squares and the max (one barrier: every
 * warp adds the warps' partial results itself, instead of three) the B fragments of quad i
 * (x[k], x[k + 1], x[k + 8], x[k + 9], k = 16 s + 2 c, i = 4 s + c) come from the float4s
 * 4 s + c / 2 and 4 s + 2 + c / 2 of the same four lanes by shuffles, so the fp32 copy in
 * shared memory and its second pass go. The same fragments as q4t_prep, bit for bit (the
 * same sums in the same order). Returns 0 where the input does not fit (q4t_prep then). */
template <int U, int FX = 0>
static __device__ float q4t_prep1(const struct q4t_args &A, unsigned char *sm, float *red)
{
    const int cols = A.cols, c4 = cols >> 2, tid = threadIdx.x, nthr = blockDim.x;
    const int lane = tid & 31, nw = nthr >> 5, c = lane & 3;
    if (c4 > U * nthr) return 0.0f;
    uint2 *xb = (uint2 *)((float *)sm + cols);
    float2 *ox = (float2 *)(xb + c4);
    float4 t[U], nw4[U];
    float ss = 0.0f, mx = 0.0f;
#pragma unroll
    for (int u = 0; u < U; u++) { /* all loads first, the norm weights' with them */
        const int i = tid + u * nthr;
        t[u] = nw4[u] = make_float4(1.f, 1.f, 1.f, 1.f);
        if (i < c4) {
            t[u] = q4t_x4<FX>(A, i);
            if (A.norm) nw4[u] = __ldg((const float4 *)A.norm + i);
        }
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
        const int i = tid + u * nthr;
        if (i < c4) {
            ss += t[u].x * t[u].x + t[u].y * t[u].y + t[u].z * t[u].z + t[u].w * t[u].w;
            t[u] = make_float4(t[u].x * nw4[u].x, t[u].y * nw4[u].y, t[u].z * nw4[u].z, t[u].w * nw4[u].w);
            mx = fmaxf(mx, fmaxf(fmaxf(fabsf(t[u].x), fabsf(t[u].y)), fmaxf(fabsf(t[u].z), fabsf(t[u].w))));
        }
    }
    ss = warp_sum(ss);
    mx = warp_max(mx);
    if (lane == 0) red[tid >> 5] = ss, red[33 + (tid >> 5)] = mx;
    __syncthreads();
    ss = warp_sum(lane < nw ? red[lane] : 0.0f);
    mx = warp_max(lane < nw ? red[33 + lane] : 0.0f);
    const float inv = A.norm ? 1.0f / sqrtf(ss / (float)cols + A.eps) : 1.0f;
    const int E = q4t_scale_exp(mx * inv);
    const float sc = ldexpf(inv, E);
    const int lo = (lane & ~3) + (c >> 1), hi = lo + 2;
#pragma unroll
    for (int u = 0; u < U; u++) {
        const int i = tid + u * nthr, q = i >> 2;
        if (i < c4) { /* c4 % 32 == 0: whole warps */
            const float lx = __shfl_sync(~0u, t[u].x, lo), ly = __shfl_sync(~0u, t[u].y, lo);
            const float lz = __shfl_sync(~0u, t[u].z, lo), lw = __shfl_sync(~0u, t[u].w, lo);
            const float hx = __shfl_sync(~0u, t[u].x, hi), hy = __shfl_sync(~0u, t[u].y, hi);
            const float hz = __shfl_sync(~0u, t[u].z, hi), hw = __shfl_sync(~0u, t[u].w, hi);
            float off, X;
            xb[((q >> 1) * 4 + c) * 2 + (q & 1)] =
                c & 1 ? q4t_bfrag(lz, lw, hz, hw, sc, off, X) : q4t_bfrag(lx, ly, hx, hy, sc, off, X);
            off = warp_sum(off);
            X = warp_sum(X);
            if (lane == 0) ox[i >> 5] = make_float2(off, X);
        }
    }
    __syncthreads(); /* also orders the reads of red before any later write */
    return ldexpf(1.0f, -E);
}

/* the input preparation of the tile kernels: q4t_prep1 (A.prep1, the default) where it fits,
 * with the fewest quads per thread that hold the input (up to 3; 1 for q/k/v: no spills in
 * the default shapes; with a fixed 3 the plain kernel's took longer), else q4t_prep */
template <int MODE, int FX = 0>
static __device__ __forceinline__ float q4t_input(const struct q4t_args &A, unsigned char *sm, float *red)
{
    const int u = ((A.cols >> 2) + (int)blockDim.x - 1) / (int)blockDim.x;
    float ys = 0.0f;
    if (A.prep1 && u == 1) ys = q4t_prep1<1, FX>(A, sm, red);
    else if (A.prep1 && MODE != Q4F_QKV && u == 2) ys = q4t_prep1<2, FX>(A, sm, red);
    else if (A.prep1 && MODE != Q4F_QKV && u == 3) ys = q4t_prep1<3, FX>(A, sm, red);
    return ys != 0.0f ? ys : q4t_prep<FX>(A, sm, red);
}

/* timeline point k of this block (thread 0; A.tl set); GRID2: the block's row is y * gridDim.x
 * + x (the 2-D grid of o by heads) */
template <bool GRID2 = false>
static __device__ __forceinline__ void q4t_mark(const struct q4t_args &A, int k)
{
    if (!A.tl || threadIdx.x) return;
    unsigned long long g;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(g));
    unsigned long long *p = A.tl + ((size_t)A.tl_slot + (GRID2 ? blockIdx.y * gridDim.x : 0) + blockIdx.x) * Q4T_TL;
    p[k] = g;
    p[5 + k] = clock64();
}


/* bytes of the input in shared memory (k_q4t_smem): x fp32, B fragments, (off, X) per chunk */
static __device__ __forceinline__ int k_q4t_smem_dev(int cols) { return cols * 6 + (cols / 128) * 8; }

/* A warp's items: cnt of them, flat index (tile nc + chunk) f0, f0 + st, ...; each tile's
 * chunks are consecutive among them. */
struct q4t_walk {
    int f0, st, cnt;
};

/* the warp's items among the block's tiles [t0, t1): a contiguous share, or (A.il) every
 * NW-th item from the w-th, so that the block's warps read one contiguous run together */
template <int NW>
static __device__ __forceinline__ q4t_walk q4t_items(const struct q4t_args &A, int t0, int t1, int w)
{
    const int nit = (t1 - t0) * A.nc;
    q4t_walk r;
    if (A.il) {
        r.f0 = t0 * A.nc + w, r.st = NW, r.cnt = nit > w ? (nit - w + NW - 1) / NW : 0;
    } else {
        const int per = (nit + NW - 1) / NW, lo = min(nit, w * per), hi = min(nit, w * per + per);
        r.f0 = t0 * A.nc + lo, r.st = 1, r.cnt = hi - lo;
    }
    return r;
}

/* (t, j) st items on */
static __device__ __forceinline__ void q4t_next(int &t, int &j, int st, int nc)
{
    j += st;
    while (j >= nc) j -= nc, t++;
}

/* A warp's items W whose first D loads are in buf (lt, lj: the next item to load): each
 * tile's chunks summed in registers, end(t, ya, yb, ua, ub) after the warp's last chunk of
 * each tile. */
template <int MODE, int D, class End>
static __device__ __forceinline__ void q4t_stream(const struct q4t_args &A, q4t_walk W,
                                                  q4t_regs<MODE> (&buf)[D], int lt, int lj,
                                                  const unsigned char *sm, int lane, End end,
                                                  const float (&s0)[4])
{
    const int nc = A.nc, c = lane & 3;
    const uint4 *xb4 = (const uint4 *)((const float *)sm + A.cols);
    const float2 *ox = (const float2 *)(xb4 + (A.cols >> 3));
    int t = W.f0 / nc, j = W.f0 - t * nc;
    float ya = s0[0], yb = s0[1], ua = s0[2], ub = s0[3];
    for (int k0 = 0; k0 < W.cnt; k0 += D) {
#pragma unroll
        for (int d = 0; d < D; d++) {
            const int k = k0 + d;
            if (k < W.cnt) {
                uint4 xb[4];
#pragma unroll
                for (int p = 0; p < 4; p++) xb[p] = xb4[(4 * j + p) * 4 + c];
                const float2 o = ox[j];
                float acc[4];
                q4t_item(acc, buf[d].w[0], buf[d].w[1], xb);
                q4t_scale(ya, yb, acc, buf[d].sz[0], o);
                if (MODE == Q4F_GU) {
                    q4t_item(acc, buf[d].w[2], buf[d].w[3], xb);
                    q4t_scale(ua, ub, acc, buf[d].sz[MODE == Q4F_GU ? 1 : 0], o);
                }
                /* its registers take the item D ahead (no copies) */
                if (k + D < W.cnt) {
                    q4t_load<MODE>(buf[d], A, lt, lj, lane);
                    q4t_next(lt, lj, W.st, nc);
                }
                if (j + W.st >= nc || k == W.cnt - 1) { /* the warp's last chunk of the tile */
                    end(t, ya, yb, ua, ub);
                    ya = yb = ua = ub = 0.0f;
                }
                q4t_next(t, j, W.st, nc);
            }
        }
    }
}

/* ---- the stash: a warp's first items copied into shared memory before the dependency ------
 * With the co-resident shapes (k_q4t_launch) the next kernel's blocks are resident while this
 * one runs, so whatever they request before their dependency wait arrives while DRAM would
 * otherwise idle (this kernel's epilogue, the attention, their own input preparation). The
 * registers hold D items per warp; the stash holds A.stash more, by cp.async (16 bytes per
 * lane, L1 bypassed; the scales 8 bytes per lane of the first 8 or 16), one unit per item:
 * its codes as the warp reads them (lane L: bytes 16 L and 512 + 16 L; gate/up: the up
 * matrix's 1 KB after), then the 8 uint2 of scales and zeros (gate/up: and the up's). */

/* bytes of a stash unit of a launch in mode m (the host sizes the stash with it too) */
static __host__ __device__ __forceinline__ int q4t_unit_bytes(int m) { return m == Q4F_GU ? 2048 + 128 : 1024 + 64; }
template <int MODE>
static __device__ __forceinline__ int q4t_unit(void)
{
    return q4t_unit_bytes(MODE);
}

static __device__ __forceinline__ void q4t_cp16(uint32_t dst, const void *src)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
}
static __device__ __forceinline__ void q4t_cp8(uint32_t dst, const void *src)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(dst), "l"(src) : "memory");
}

/* the copies of item (t, j) into the unit at shared address u (every lane) */
template <int MODE>
static __device__ __forceinline__ void q4t_unit_issue(const struct q4t_args &A, int t, int j, uint32_t u,
                                                      int lane)
{
    const int mi = q4t_mat<MODE>(A, t), lt = t - A.m[mi].tile0;
    const unsigned it = (unsigned)(lt * A.nc + j) * 64u + (unsigned)lane;
    const unsigned gi = (unsigned)(lt * A.ngr + (j >> A.cshift)) * 8u;
    q4t_cp16(u + 16 * lane, A.m[mi].codes + it);
    q4t_cp16(u + 512 + 16 * lane, A.m[mi].codes + it + 32);
    const int IB = MODE == Q4F_GU ? 2048 : 1024;
    if (MODE == Q4F_GU) {
        q4t_cp16(u + 1024 + 16 * lane, A.m[1].codes + it);
        q4t_cp16(u + 1536 + 16 * lane, A.m[1].codes + it + 32);
        if (lane >= 8 && lane < 16) q4t_cp8(u + IB + 8 * lane, A.m[1].sz + gi + (lane - 8));
    }
    if (lane < 8) q4t_cp8(u + IB + 8 * lane, A.m[mi].sz + gi + lane);
}

static __device__ __forceinline__ void q4t_commit(void) { asm volatile("cp.async.commit_group;" ::: "memory"); }

/* until at most n of this thread's copy groups are pending (n < 8) */
static __device__ __forceinline__ void q4t_wait_groups(int n)
{
    switch (n) {
    case 0: asm volatile("cp.async.wait_group 0;" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;" ::: "memory"); break;
    case 3: asm volatile("cp.async.wait_group 3;" ::: "memory"); break;
    case 4: asm volatile("cp.async.wait_group 4;" ::: "memory"); break;
    case 5: asm volatile("cp.async.wait_group 5;" ::: "memory"); break;
    case 6: asm volatile("cp.async.wait_group 6;" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 7;" ::: "memory"); break;
    }
}

/* the copies of the warp's items 0 .. P - 1 into its stash st (one group; with ring, a
 * group per item, P of them even past the warp's last item) */
template <int MODE>
static __device__ __forceinline__ void q4t_stash_issue(const struct q4t_args &A, q4t_walk W, int P,
                                                       unsigned char *st, int lane, bool ring)
{
    const uint32_t s0 = q4t_saddr(st);
    int t = W.f0 / A.nc, j = W.f0 - t * A.nc;
    for (int k = 0; k < P; k++) {
        if (k < W.cnt) q4t_unit_issue<MODE>(A, t, j, s0 + (uint32_t)(k * q4t_unit<MODE>()), lane);
        if (ring) q4t_commit();
        q4t_next(t, j, W.st, A.nc);
    }
    if (!ring) q4t_commit();
}

/* the item of chunk j in the stash unit u against the input in sm (q4t_prep): added to the
 * tile sums s (gate/up: s[2], s[3] the up matrix's) */
template <int MODE>
static __device__ __forceinline__ void q4t_unit_sum(const unsigned char *u, const unsigned char *sm, int cols,
                                                    int j, int lane, float (&s)[4])
{
    const int c = lane & 3, g = lane >> 2, IB = MODE == Q4F_GU ? 2048 : 1024;
    const uint4 *xb4 = (const uint4 *)((const float *)sm + cols);
    const float2 o = ((const float2 *)(xb4 + (cols >> 3)))[j];
    const uint4 *cw = (const uint4 *)u;
    const uint2 *sz = (const uint2 *)(u + IB);
    uint4 xb[4];
#pragma unroll
    for (int p = 0; p < 4; p++) xb[p] = xb4[(4 * j + p) * 4 + c];
    float acc[4];
    q4t_item(acc, cw[lane], cw[32 + lane], xb);
    q4t_scale(s[0], s[1], acc, sz[g], o);
    if (MODE == Q4F_GU) {
        q4t_item(acc, cw[64 + lane], cw[96 + lane], xb);
        q4t_scale(s[2], s[3], acc, sz[8 + g], o);
    }
}

/* All of the warp's items through its stash used as a ring of R units (A.ring): item k in
 * unit k % R, refilled with item k + R once every lane has read it; the tile sums in s. */
template <int MODE, class End>
static __device__ __forceinline__ void q4t_ring_run(const struct q4t_args &A, q4t_walk W, int R,
                                                    unsigned char *st, const unsigned char *sm, int lane,
                                                    End end, float (&s)[4])
{
    const int nc = A.nc;
    const uint32_t s0 = q4t_saddr(st);
    int t = W.f0 / nc, j = W.f0 - t * nc, ft = t, fj = j;
    for (int k = 0; k < R; k++) q4t_next(ft, fj, W.st, nc); /* the next item to copy: R */
    for (int k = 0, slot = 0; k < W.cnt; k++) {
        q4t_wait_groups(R - 1); /* groups issued: R + k; item k's is done */
        __syncwarp();
        const unsigned char *u = st + slot * q4t_unit<MODE>();
        q4t_unit_sum<MODE>(u, sm, A.cols, j, lane, s);
        __syncwarp(); /* the unit read by every lane */
        if (k + R < W.cnt) {
            q4t_unit_issue<MODE>(A, ft, fj, s0 + (uint32_t)(slot * q4t_unit<MODE>()), lane);
            q4t_next(ft, fj, W.st, nc);
        }
        q4t_commit();
        if (j + W.st >= nc || k == W.cnt - 1) {
            end(t, s[0], s[1], s[2], s[3]);
            s[0] = s[1] = s[2] = s[3] = 0.0f;
        }
        q4t_next(t, j, W.st, nc);
        if (++slot == R) slot = 0;
    }
}

/* the warp's items 0 .. P - 1 from its stash: the tile sums in s (end as q4t_stream) */
template <int MODE, class End>
static __device__ __forceinline__ void q4t_stash_run(const struct q4t_args &A, q4t_walk W, int P,
                                                     const unsigned char *st, const unsigned char *sm,
                                                     int lane, End end, float (&s)[4])
{
    asm volatile("cp.async.wait_all;" ::: "memory");
    __syncwarp(); /* the other lanes' copies */
    const int nc = A.nc;
    int t = W.f0 / nc, j = W.f0 - t * nc;
    for (int k = 0; k < P; k++) {
        const unsigned char *u = st + k * q4t_unit<MODE>();
        q4t_unit_sum<MODE>(u, sm, A.cols, j, lane, s);
        if (j + W.st >= nc || k == W.cnt - 1) {
            end(t, s[0], s[1], s[2], s[3]);
            s[0] = s[1] = s[2] = s[3] = 0.0f;
        }
        q4t_next(t, j, W.st, nc);
    }
}

/* the first D loads of the warp's items; lt, lj: the next item to load */
template <int MODE, int D>
static __device__ __forceinline__ void q4t_preload(const struct q4t_args &A, q4t_walk W,
                                                   q4t_regs<MODE> (&buf)[D], int &lt, int &lj, int lane)
{
    lt = W.f0 / A.nc, lj = W.f0 - lt * A.nc;
#pragma unroll
    for (int d = 0; d < D; d++) {
        if (d < W.cnt) {
            q4t_load<MODE>(buf[d], A, lt, lj, lane);
            q4t_next(lt, lj, W.st, A.nc);
        }
    }
}

/* The residual that the outputs of rows rr, rr + 1 of tile t add to (PLAIN with acc), read
 * while the weights stream (q4t_bkernel, after the dependency: each thread for the pair it
 * will finish), not after the block's last barrier: o's and down's outputs 0.46 / 0.50 vs
 * 0.76 / 0.72 us (docs/GPU.md, session 19). The same for q/k/v's RoPE table (an L1 prefetch) was slower. */
template <int MODE, int FX = 0>
static __device__ __forceinline__ float2 q4t_early(const struct q4t_args &A, int t, int rr)
{
    float2 e = make_float2(0.0f, 0.0f);
    if (MODE != Q4F_PLAIN || !A.acc) return e;
    const struct q4t_mat &M = A.m[0];
    const int ra = 16 * (t - M.tile0) + rr;
    if (ra < M.rows) e.x = __ldcg(M.y + ra);
    if (ra + 1 < M.rows) e.y = __ldcg(M.y + ra + 1);
    if (FX) { /* down after o by heads: x + o's sums, which are zeroed for the next layer */
        if (ra < M.rows) e.x += q4t_fx2f(__ldcg(A.acc64 + ra)), __stcg(A.acc64 + ra, 0ll);
        if (ra + 1 < M.rows) e.y += q4t_fx2f(__ldcg(A.acc64 + ra + 1)), __stcg(A.acc64 + ra + 1, 0ll);
    }
    return e;
}

/* rows rr, rr + 1 (rr even) of tile t, their sums va, vb (GU: gate; up ua, ub); ep: the
 * residual q4t_early read for them (PLAIN), or NULL */
template <int MODE, int FX = 0>
static __device__ __forceinline__ void q4t_pair_out(const struct q4t_args &A, int t, int rr, float va,
                                                    float vb, float ua, float ub, float ys,
                                                    const float2 *ep)
{
    const int mi = q4t_mat<MODE>(A, t);
    const struct q4t_mat &M = A.m[mi];
    const int ra = 16 * (t - M.tile0) + rr, rb = ra + 1;
    if (ra >= M.rows) return;
    const bool hb = rb < M.rows;
    va *= ys, vb *= ys;
    if (MODE == Q4F_GU) {
        M.y[ra] = q4t_silu(va) * (ua * ys);
        if (hb) M.y[rb] = q4t_silu(vb) * (ub * ys);
        return;
    }
    if (M.bias) {
        va += M.bias[ra];
        if (hb) vb += M.bias[rb];
    }
    if (MODE == Q4F_PLAIN) {
        const float2 e = ep ? *ep : q4t_early<MODE, FX>(A, t, rr);
        M.y[ra] = A.acc ? e.x + va : va;
        if (hb) M.y[rb] = A.acc ? e.y + vb : vb;
        return;
    }
    const int p0 = *A.pos; /* QKV: rows % 16 == 0 */
    float *dst = mi == 0 ? M.y : (mi == 1 ? A.kc : A.vc) + (size_t)p0 * A.kvd;
    if (mi < 2) {
        const float *cs = A.cs + (size_t)p0 * A.hd + ra % A.hd;
        const float co = cs[0], si = cs[1];
        const float y0 = va * co - vb * si, y1 = va * si + vb * co;
        va = y0, vb = y1;
    }
    dst[ra] = va;
    dst[rb] = vb;
}

/* The block's tiles [t0, t1) from the warps' slots (in warp order) to the outputs; early:
 * thread k's residual pair from q4t_early (PLAIN), or NULL */
template <int MODE, int NW, int FX = 0>
static __device__ __forceinline__ void q4t_block_out(const struct q4t_args &A, const float *part, int t0,
                                                     int t1, float ys, const float2 *early = NULL)
{
    const int RPU = MODE == Q4F_GU ? 32 : 16;
    for (int k = threadIdx.x; k < (t1 - t0) * 8; k += blockDim.x) {
        const int tl = k >> 3, rr = 2 * (k & 7);
        float va = 0.0f, vb = 0.0f, ua = 0.0f, ub = 0.0f;
        for (int q = 0; q < NW; q++) { /* in warp order */
            const float *sl = part + (tl * NW + q) * RPU;
            va += sl[rr], vb += sl[rr + 1];
            if (MODE == Q4F_GU) ua += sl[16 + rr], ub += sl[17 + rr];
        }
        q4t_pair_out<MODE, FX>(A, t0 + tl, rr, va, vb, ua, ub, ys, k == (int)threadIdx.x ? early : NULL);
    }
}

/* Whole tiles per block (the default): block b takes tiles [b per, (b + 1) per), its warps
 * split the block's items; each part's sums go to the block's shared memory (slot of tile
 * and warp), and after one barrier the block's threads add each row's 16 slots in order and
 * finish the rows. No global memory traffic beyond the weights, input and outputs. */
template <int MODE, int D, int NW, int FX = 0>
__global__ void __launch_bounds__(NW * 32, 1) __maxnreg__(Q4T_NREG(NW)) q4t_bkernel(const __grid_constant__ struct q4t_args A)
{
    extern __shared__ __align__(16) unsigned char q4t_sm[];
    __shared__ float red[66];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int RPU = MODE == Q4F_GU ? 32 : 16;
    q4t_mark(A, 0);
    pdl_trigger();
    const int tpb = (A.tiles + gridDim.x - 1) / gridDim.x;
    const int t0 = min(A.tiles, (int)blockIdx.x * tpb), t1 = min(A.tiles, t0 + tpb);
    const q4t_walk W = q4t_items<NW>(A, t0, t1, w);
    /* items 0 .. P - 1 through the stash, the rest through the registers */
    const bool ring = Q4T_CO(NW) && A.ring && A.stash > 0;
    const int P = ring ? A.stash : Q4T_CO(NW) ? min(A.stash, W.cnt) : 0; /* compiled out of the other shapes */
    unsigned char *stash = q4t_sm + A.stash_off + (size_t)w * A.stash * q4t_unit<MODE>();
    if (P > 0) q4t_stash_issue<MODE>(A, W, P, stash, lane, ring); /* before the dependency */
    q4t_walk WR = W;
    WR.f0 += P * W.st, WR.cnt = ring ? 0 : WR.cnt - P;
    q4t_regs<MODE> buf[D];
    int lt, lj;
    q4t_preload<MODE, D>(A, WR, buf, lt, lj, lane); /* before the dependency */
    float *part = (float *)(q4t_sm + k_q4t_smem_dev(A.cols));
    for (int i = threadIdx.x; i < (t1 - t0) * NW * RPU; i += blockDim.x) part[i] = 0.0f;
    pdl_wait();
    q4t_mark(A, 1);
    float2 early = make_float2(0.0f, 0.0f); /* the outputs' other operands (q4t_early) */
    if (MODE == Q4F_PLAIN && (int)threadIdx.x < (t1 - t0) * 8)
        early = q4t_early<MODE, FX>(A, t0 + (threadIdx.x >> 3), 2 * (threadIdx.x & 7));
    float ys = 1.0f;
    if (A.diag & 1) __syncthreads(); /* diagnostics: the fragments as shared memory holds them */
    else ys = q4t_input<MODE, FX>(A, q4t_sm, red); /* its barriers order the zeroing */
    q4t_mark(A, 2);
    const int g = lane >> 2;
    auto end = [&](int t, float ya, float yb, float ua, float ub) {
        if ((lane & 3) == 0) {
            float *sl = part + ((t - t0) * NW + w) * RPU;
            sl[g] = ya, sl[g + 8] = yb;
            if (MODE == Q4F_GU) sl[16 + g] = ua, sl[24 + g] = ub;
        }
    };
    float sums[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (ring) q4t_ring_run<MODE>(A, W, P, stash, q4t_sm, lane, end, sums);
    else if (P > 0) q4t_stash_run<MODE>(A, W, P, stash, q4t_sm, lane, end, sums);
    q4t_stream<MODE, D>(A, WR, buf, lt, lj, q4t_sm, lane, end, sums);
    __syncthreads();
    q4t_mark(A, 3);
    if (!(A.diag & 4)) q4t_block_out<MODE, NW, FX>(A, part, t0, t1, ys, MODE == Q4F_PLAIN ? &early : NULL);
    q4t_mark(A, 4);
}

/* o by heads: block r of R of head h takes tiles [r tpb, (r + 1) tpb) of W_o's chunk h,
 * warp w of NW a contiguous run of them (one item per tile) */
template <int NW>
static __device__ __forceinline__ q4t_walk q4t_head_walk(const struct q4t_args &A, int r, int R, int h, int w)
{
    const int tpb = (A.tiles + R - 1) / R, t0 = min(A.tiles, r * tpb), t1 = min(A.tiles, t0 + tpb);
    const int per = (t1 - t0 + NW - 1) / NW, wt0 = min(t1, t0 + w * per), wt1 = min(t1, wt0 + per);
    q4t_walk W;
    W.f0 = wt0 * A.nc + h, W.st = A.nc, W.cnt = wt1 - wt0;
    return W;
}

/* The end of a head's combine in warp 0 of a block of o by heads: the lane's fragment quad
 * (lo, hi: dimensions k, k + 1 and k + 8, k + 9, k = 16 (lane / 4) + 2 (lane % 4), summed over
 * the shares with weights e^(m_k - m) l_k, den their sum) as the B fragments of o's chunk h
 * in sm (the layout of q4t_prep), with its own power of two, whose inverse goes to *ys. */
static __device__ __forceinline__ void q4t_head_out(const struct q4t_args &A, unsigned char *sm, int h, int lane,
                                                    float2 lo, float2 hi, float den, float *ys)
{
    const int s = lane >> 2, cq = lane & 3;
    const float rd = 1.0f / den;
    lo.x *= rd, lo.y *= rd, hi.x *= rd, hi.y *= rd;
    const float mx = warp_max(fmaxf(fmaxf(fabsf(lo.x), fabsf(lo.y)), fmaxf(fabsf(hi.x), fabsf(hi.y))));
    const int E = q4t_scale_exp(mx);
    uint2 *xb = (uint2 *)((float *)sm + A.cols);
    float2 *ox = (float2 *)(xb + (A.cols >> 2));
    const int qs = 8 * h + s; /* the k16 step among o's columns */
    float off, X;
    xb[((qs >> 1) * 4 + cq) * 2 + (qs & 1)] = q4t_bfrag(lo.x, lo.y, hi.x, hi.y, ldexpf(1.0f, E), off, X);
    off = warp_sum(off);
    X = warp_sum(X);
    if (!lane) ox[h] = make_float2(off, X), *ys = ldexpf(1.0f, -E);
}

/* Shares q0 .. q0 + B - 1 (those < S) of the lane's fragment quad, weighted (e: lane q's share
 * weight), added to lo, hi; all B shares' loads are issued before the first is used. */
template <int B, class Ld2>
static __device__ __forceinline__ void q4t_head_add(int q0, int S, int k, float e, float2 &lo, float2 &hi, Ld2 ld2)
{
    float2 vl[B], vh[B];
#pragma unroll
    for (int u = 0; u < B; u++) {
        if (q0 + u < S) {
            vl[u] = ld2(q0 + u, k);
            vh[u] = ld2(q0 + u, k + 8);
        }
    }
#pragma unroll
    for (int u = 0; u < B; u++) {
        const float wq = __shfl_sync(~0u, e, (q0 + u) & 31);
        if (q0 + u < S && wq != 0.0f) {
            lo.x += wq * vl[u].x, lo.y += wq * vl[u].y;
            hi.x += wq * vh[u].x, hi.y += wq * vh[u].y;
        }
    }
}

/* The shares' weights e^(m_k - m) l_k (lane k < S: share k's; ldf(q, i): float i of part q,
 * the maximum at hd, the exp sum at hd + 1), and their sum in *den. */
template <class Ldf>
static __device__ __forceinline__ float q4t_head_weights(int S, int hd, int lane, float *den, Ldf ldf)
{
    const float mk = lane < S ? ldf(lane, hd) : -INFINITY;
    const float lk = lane < S ? ldf(lane, hd + 1) : 0.0f;
    const float m = warp_max(mk);
    const float e = mk > -INFINITY ? expf(mk - m) * lk : 0.0f;
    *den = warp_sum(e);
    return e;
}

/* Warp 0 (lane) of a block of o by heads: head h's output from its S attention parts (ldf:
 * one float, ld2: two) as the B fragments of o's chunk h: the shares' weights, then the
 * parts in share order, B shares' loads at a time (q4t_head_out). */
template <int B, class Ldf, class Ld2>
static __device__ __forceinline__ void q4t_head_frags(const struct q4t_args &A, unsigned char *sm, int h, int S,
                                                      int hd, int lane, float *ys, Ldf ldf, Ld2 ld2)
{
    float den;
    const float e = q4t_head_weights(S, hd, lane, &den, ldf);
    const int k = 16 * (lane >> 2) + 2 * (lane & 3);
    float2 lo = make_float2(0.0f, 0.0f), hi = make_float2(0.0f, 0.0f);
    for (int q0 = 0; q0 < S; q0 += B) q4t_head_add<B>(q0, S, k, e, lo, hi, ld2);
    q4t_head_out(A, sm, h, lane, lo, hi, den, ys);
}

/* The same over ceil(S / 4) warps (every thread of the block calls it; two block barriers):
 * warp v issues the loads of shares 4 v .. 4 v + 3 before the shares' maxima and sums, so
 * all part loads take one L2 round trip together (warp 0 alone: one for the maxima, then one
 * per 4 shares); warp 0 adds the other warps' sums in warp order through wsum (3 x 32 float4
 * of shared memory: ATT_SPLIT_MAX 16) and writes the fragments. */
template <class Ldf, class Ld2>
static __device__ __forceinline__ void q4t_head_frags_mw(const struct q4t_args &A, unsigned char *sm, float4 *wsum,
                                                         int h, int S, int hd, float *ys, Ldf ldf, Ld2 ld2)
{
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, nwc = (S + 3) / 4;
    float2 lo = make_float2(0.0f, 0.0f), hi = make_float2(0.0f, 0.0f);
    float den = 0.0f;
    if (w < nwc) {
        const int k = 16 * (lane >> 2) + 2 * (lane & 3);
        float2 vl[4], vh[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            if (4 * w + u < S) {
                vl[u] = ld2(4 * w + u, k);
                vh[u] = ld2(4 * w + u, k + 8);
            }
        }
        const float e = q4t_head_weights(S, hd, lane, &den, ldf);
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const float wq = __shfl_sync(~0u, e, (4 * w + u) & 31);
            if (4 * w + u < S && wq != 0.0f) {
                lo.x += wq * vl[u].x, lo.y += wq * vl[u].y;
                hi.x += wq * vh[u].x, hi.y += wq * vh[u].y;
            }
        }
        if (w > 0) wsum[(w - 1) * 32 + lane] = make_float4(lo.x, lo.y, hi.x, hi.y);
    }
    __syncthreads();
    if (w == 0) {
        for (int v = 1; v < nwc; v++) {
            const float4 t = wsum[(v - 1) * 32 + lane];
            lo.x += t.x, lo.y += t.y, hi.x += t.z, hi.y += t.w;
        }
        q4t_head_out(A, sm, h, lane, lo, hi, den, ys);
    }
    __syncthreads();
}

/* o's outputs of a tile's rows (lanes 4 g: rows 16 t + g and + 8) added into y by atomics;
 * the bias by head 0's blocks */
struct q4t_red_end {
    const struct q4t_mat *M;
    float ys;
    int lane, bias;
    long long *fx; /* or as fixed-point integers into these sums (att_o 8) */
    __device__ __forceinline__ void add(int r, float v) const
    {
        if (fx) atomicAdd((unsigned long long *)fx + r, (unsigned long long)q4t_f2fx(v));
        else atomicAdd(M->y + r, v);
    }
    __device__ __forceinline__ void operator()(int t, float ya, float yb, float, float) const
    {
        if ((lane & 3) == 0) {
            const int ra = 16 * t + (lane >> 2), rb = ra + 8;
            if (ra < M->rows) add(ra, ya * ys + (bias ? M->bias[ra] : 0.0f));
            if (rb < M->rows) add(rb, yb * ys + (bias ? M->bias[rb] : 0.0f));
        }
    }
};

/* ---- o by heads (q4t_ohkernel) ------------------------------------------------------------
 * The attention kernel writes each share's part and stops (ATT_COMBINE_NONE: no counter, no
 * cluster, no combine); block (r, h) of o, one per SM, reads head h's S parts from L2 (warp
 * 0: 2 S loads per lane), combines them into the fragments of chunk h (q4t_head_frags) and
 * multiplies with its R-th of W_o's rows of that chunk, whose items it requested before the
 * dependency; the heads' products are added into the residual by atomics. So the
 * attention's combine and o's input preparation over all heads (16 KB from L2, a block
 * reduction) become one warp's L2 round trip. */
template <int NW, int D, int MW>
__global__ void __launch_bounds__(NW * 32, 1) __maxnreg__(Q4T_NREG(NW))
    q4t_ohkernel(const __grid_constant__ struct q4t_args A, const float *part, int S)
{
    extern __shared__ __align__(16) unsigned char q4t_sm[];
    __shared__ float ys_sh;
    const int r = blockIdx.x, h = blockIdx.y, R = gridDim.x, lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int hd = 128;
    q4t_mark<true>(A, 0);
    pdl_trigger();
    const q4t_walk W = q4t_head_walk<NW>(A, r, R, h, w);
    q4t_regs<Q4F_PLAIN> buf[D];
    int lt, lj;
    q4t_preload<Q4F_PLAIN, D>(A, W, buf, lt, lj, lane); /* before the dependency */
    pdl_wait();
    q4t_mark<true>(A, 1);
    const float *ph = part + (size_t)h * S * (hd + 2);
    auto ldf = [&](int q, int i) { return __ldcg(ph + (size_t)q * (hd + 2) + i); };
    auto ld2 = [&](int q, int i) { /* hd + 2 even: 8-byte aligned */
        return __ldcg((const float2 *)(ph + (size_t)q * (hd + 2) + i));
    };
    if (MW) { /* the sums' area past the input's (k_q4t_oh_launch sizes it) */
        float4 *wsum = (float4 *)(q4t_sm + ((k_q4t_smem_dev(A.cols) + 15) & ~15));
        q4t_head_frags_mw(A, q4t_sm, wsum, h, S, hd, &ys_sh, ldf, ld2);
    } else {
        if (w == 0) q4t_head_frags<4>(A, q4t_sm, h, S, hd, lane, &ys_sh, ldf, ld2);
        __syncthreads();
    }
    q4t_mark<true>(A, 2);
    const q4t_red_end end = {&A.m[0], ys_sh, lane, A.m[0].bias && h == 0, A.acc64};
    float sums[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    q4t_stream<Q4F_PLAIN, D>(A, W, buf, lt, lj, q4t_sm, lane, end, sums);
    if (A.tl) { /* every thread: the barrier (the products have no output phase of their own) */
        __syncthreads();
        q4t_mark<true>(A, 3);
        q4t_mark<true>(A, 4);
    }
}
#define Q4T_OH_NW 32
#define Q4T_OH_D 2

/* ---- the weights through a shared-memory ring filled by bulk copies (TMA) ----------------
 * Each warp owns S stages of one item (1 KB; gate/up 2 KB) with an mbarrier each: lane 0
 * arms the barrier with the byte count and issues cp.async.bulk copies of the item's codes,
 * which complete on the barrier; the warp waits on the barrier's phase, reads its fragments
 * with two 16-byte shared loads per lane and refills the stage S items ahead. The bytes in
 * flight cost no registers: 16 warps x S = 8 stages keep 128 KB per SM in flight (the
 * register ring of q4t_bkernel holds 64 KB). Scales and zeros stay in registers, loaded
 * with the copy. */

/* lane 0: the stage at dst (n copies of 1 KB from src[k]) completes on bar */
static __device__ __forceinline__ void q4t_bulk(uint32_t dst, const void *src0, const void *src1, int n,
                                                uint32_t bar)
{
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); /* the stage's earlier reads */
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(1024 * n)
                 : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], 1024, [%2];" ::"r"(dst),
                 "l"(src0), "r"(bar)
                 : "memory");
    if (n > 1)
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], 1024, [%2];" ::"r"(dst + 1024),
                     "l"(src1), "r"(bar)
                     : "memory");
}

/* item (t, j) into stage dst/bar (lane 0) and its scales/zeros into sz (every lane) */
template <int MODE>
static __device__ __forceinline__ void q4t_fill(const struct q4t_args &A, int t, int j, int lane,
                                                uint32_t dst, uint32_t bar, uint2 *sz)
{
    const int mi = q4t_mat<MODE>(A, t), lt = t - A.m[mi].tile0;
    const unsigned it = (unsigned)(lt * A.nc + j) * 64u;
    const unsigned gi = (unsigned)(lt * A.ngr + (j >> A.cshift)) * 8u + (unsigned)(lane >> 2);
    if (lane == 0)
        q4t_bulk(dst, A.m[mi].codes + it, MODE == Q4F_GU ? A.m[1].codes + it : NULL,
                 MODE == Q4F_GU ? 2 : 1, bar);
    sz[0] = q4t_ld8(A.m[mi].sz + gi);
    if (MODE == Q4F_GU) sz[1] = q4t_ld8(A.m[1].sz + gi);
}

#define Q4T_SMEM_ALIGN 128

/* the ring's offset in the dynamic shared memory (after the input) */
static __host__ __device__ __forceinline__ int q4t_ring_off(int cols)
{
    return (cols * 6 + (cols / 128) * 8 + Q4T_SMEM_ALIGN - 1) / Q4T_SMEM_ALIGN * Q4T_SMEM_ALIGN;
}

template <int MODE, int S, int NW>
__global__ void __launch_bounds__(NW * 32, 1) q4t_tkernel(const __grid_constant__ struct q4t_args A)
{
    extern __shared__ __align__(16) unsigned char q4t_sm[];
    __shared__ float red[66];
    __shared__ __align__(8) unsigned long long bars[NW * S];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nc = A.nc, c = lane & 3;
    const int RPU = MODE == Q4F_GU ? 32 : 16, IB = MODE == Q4F_GU ? 2048 : 1024;
    q4t_mark(A, 0);
    pdl_trigger();
    const int tpb = (A.tiles + gridDim.x - 1) / gridDim.x;
    const int t0 = min(A.tiles, (int)blockIdx.x * tpb), t1 = min(A.tiles, t0 + tpb);
    const q4t_walk W = q4t_items<NW>(A, t0, t1, w);
    unsigned char *ring = q4t_sm + q4t_ring_off(A.cols) + (size_t)w * S * IB;
    const uint32_t ring_s = q4t_saddr(ring), bar_s = q4t_saddr(&bars[w * S]);
    if (lane == 0) {
#pragma unroll
        for (int d = 0; d < S; d++) q4t_bar_init(bar_s + 8 * d);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncwarp();
    /* the first S items, before the dependency */
    uint2 sz[S][MODE == Q4F_GU ? 2 : 1];
    int lt = W.f0 / nc, lj = W.f0 - lt * nc;
#pragma unroll
    for (int d = 0; d < S; d++) {
        if (d < W.cnt) {
            q4t_fill<MODE>(A, lt, lj, lane, ring_s + d * IB, bar_s + 8 * d, sz[d]);
            q4t_next(lt, lj, W.st, nc);
        }
    }
    float *part = (float *)(q4t_sm + q4t_ring_off(A.cols) + (size_t)NW * S * IB);
    for (int i = threadIdx.x; i < (t1 - t0) * NW * RPU; i += blockDim.x) part[i] = 0.0f;
    pdl_wait();
    q4t_mark(A, 1);
    const float ys = q4t_input<MODE>(A, q4t_sm, red); /* its barriers order the zeroing */
    q4t_mark(A, 2);
    const int g = lane >> 2;
    const uint4 *xb4 = (const uint4 *)((const float *)q4t_sm + A.cols);
    const float2 *ox = (const float2 *)(xb4 + (A.cols >> 3));
    int t = W.f0 / nc, j = W.f0 - t * nc;
    float ya = 0.0f, yb = 0.0f, ua = 0.0f, ub = 0.0f;
    uint32_t phase = 0;
    for (int k0 = 0; k0 < W.cnt; k0 += S, phase ^= 1) {
#pragma unroll
        for (int d = 0; d < S; d++) {
            const int k = k0 + d;
            if (k < W.cnt) {
                uint4 xb[4];
#pragma unroll
                for (int p = 0; p < 4; p++) xb[p] = xb4[(4 * j + p) * 4 + c];
                const float2 o = ox[j];
                q4t_bar_wait(bar_s + 8 * d, phase);
                const uint4 *st = (const uint4 *)(ring + d * IB);
                float acc[4];
                q4t_item(acc, st[lane], st[32 + lane], xb);
                q4t_scale(ya, yb, acc, sz[d][0], o);
                if (MODE == Q4F_GU) {
                    q4t_item(acc, st[64 + lane], st[96 + lane], xb);
                    q4t_scale(ua, ub, acc, sz[d][MODE == Q4F_GU ? 1 : 0], o);
                }
                __syncwarp(); /* every lane has read the stage */
                if (k + S < W.cnt) {
                    q4t_fill<MODE>(A, lt, lj, lane, ring_s + d * IB, bar_s + 8 * d, sz[d]);
                    q4t_next(lt, lj, W.st, nc);
                }
                if (j + W.st >= nc || k == W.cnt - 1) { /* the warp's last chunk of the tile */
                    if (c == 0) {
                        float *sl = part + ((t - t0) * NW + w) * RPU;
                        sl[g] = ya, sl[g + 8] = yb;
                        if (MODE == Q4F_GU) sl[16 + g] = ua, sl[24 + g] = ub;
                    }
                    ya = yb = ua = ub = 0.0f;
                }
                q4t_next(t, j, W.st, nc);
            }
        }
    }
    __syncthreads();
    q4t_mark(A, 3);
    q4t_block_out<MODE, NW>(A, part, t0, t1, ys);
    q4t_mark(A, 4);
}

/* ---- host side --------------------------------------------------------------------------- */

int k_q4t_mat_ok(const struct cu_mat *m)
{
    if (m->kind != CU_PACKED || m->bits != 4 || m->perm || m->cols % 128) return 0;
    if (m->n_groups == 1) return 1;
    const int cpg = m->group / 128;
    return m->group % 128 == 0 && (cpg & (cpg - 1)) == 0;
}

/* tiles, codes bytes and scale bytes of the tile layout */
static void q4t_sizes(const struct cu_mat *m, int *tiles, size_t *cb, size_t *sb)
{
    *tiles = (m->rows + 15) / 16;
    *cb = (size_t)*tiles * (m->cols / 128) * 1024;
    *sb = (size_t)*tiles * m->n_groups * 8 * sizeof(uint2);
}

size_t k_q4t_bytes(const struct cu_mat *m, size_t *codes_bytes, size_t *sz_bytes)
{
    int tiles;
    q4t_sizes(m, &tiles, codes_bytes, sz_bytes);
    return *codes_bytes + *sz_bytes;
}

/* nibble (r, k) of the row-major 4-bit codes (0 past the rows) */
static __device__ __forceinline__ uint32_t q4t_nib(const uint8_t *codes, size_t row_bytes, int rows,
                                                   int r, int k)
{
    if (r >= rows) return 0;
    return (codes[(size_t)r * row_bytes + (k >> 1)] >> (4 * (k & 1))) & 15u;
}

__global__ void q4t_pack_codes(uint32_t *out, const uint8_t *codes, size_t row_bytes, int rows,
                               int nc, size_t words)
{
    const size_t w = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (w >= words) return;
    const size_t it = w >> 8;
    const int r = (int)(w & 255), L = (r & 127) >> 2, s = 4 * (r >> 7) + (r & 3);
    const int t = (int)(it / nc), j = (int)(it % nc), g = L >> 2, c = L & 3;
    const int ra = 16 * t + g, rb = ra + 8, k = 128 * j + 16 * s + 2 * c;
    const uint32_t v = q4t_nib(codes, row_bytes, rows, ra, k) |
                       q4t_nib(codes, row_bytes, rows, ra, k + 8) << 4 |
                       q4t_nib(codes, row_bytes, rows, rb, k) << 8 |
                       q4t_nib(codes, row_bytes, rows, rb, k + 8) << 12 |
                       q4t_nib(codes, row_bytes, rows, ra, k + 1) << 16 |
                       q4t_nib(codes, row_bytes, rows, ra, k + 9) << 20 |
                       q4t_nib(codes, row_bytes, rows, rb, k + 1) << 24 |
                       q4t_nib(codes, row_bytes, rows, rb, k + 9) << 28;
    out[w] = v;
}

__global__ void q4t_pack_sz(uint2 *out, const __half *s, const __half *z, int rows, int ng, size_t n)
{
    const size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int g = (int)(i & 7);
    const size_t tg = i >> 3;
    const int t = (int)(tg / ng), gr = (int)(tg % ng), ra = 16 * t + g, rb = ra + 8;
    __half2 a = __floats2half2_rn(0.0f, 0.0f), b = a;
    if (ra < rows) a = __halves2half2(s[(size_t)ra * ng + gr], z[(size_t)ra * ng + gr]);
    if (rb < rows) b = __halves2half2(s[(size_t)rb * ng + gr], z[(size_t)rb * ng + gr]);
    uint2 u;
    u.x = *(const uint32_t *)&a;
    u.y = *(const uint32_t *)&b;
    out[i] = u;
}

void k_q4t_pack(cudaStream_t st, struct cu_mat *m)
{
    int tiles;
    size_t cb, sb;
    q4t_sizes(m, &tiles, &cb, &sb);
    const size_t words = cb / 4, n = sb / sizeof(uint2);
    q4t_pack_codes<<<(unsigned)((words + 255) / 256), 256, 0, st>>>((uint32_t *)m->t_codes, m->codes,
                                                                    m->row_bytes, m->rows,
                                                                    m->cols / 128, words);
    q4t_pack_sz<<<(unsigned)((n + 255) / 256), 256, 0, st>>>(m->t_sz, m->scales, m->zeros, m->rows,
                                                             m->n_groups, n);
}

size_t k_q4t_smem(int cols) { return (size_t)cols * 6 + (size_t)(cols / 128) * 8; }

/* the device's SM count (the grids are one block per SM) */
static int q4t_sms(void)
{
    static int sms = 0;
    if (!sms) {
        int dev = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms < 1)
            sms = 1;
    }
    return sms;
}

/* blocks and shared memory of a launch over `tiles` tiles (bkernel: + the partial sums) */
static void q4t_grid(int tiles, int cols, int mode, int nw, int tma_s, int *blocks, size_t *smem)
{
    int b = q4t_sms();
    if (b > tiles) b = tiles;
    if (b < 1) b = 1;
    *blocks = b;
    *smem = tma_s ? (size_t)q4t_ring_off(cols) + (size_t)nw * tma_s * (mode == Q4F_GU ? 2048 : 1024)
                  : k_q4t_smem(cols);
    const int tpb = (tiles + b - 1) / b; /* the warps' partial sums */
    *smem += (size_t)tpb * nw * (mode == Q4F_GU ? 32 : 16) * sizeof(float);
}

int k_q4t_ok(const struct cu_mat *const *m, int n, int mode, size_t smem_max)
{
    if (n < 1 || n > Q4F_MAX) return 0;
    for (int i = 0; i < n; i++) {
        if (!m[i]->t_codes || m[i]->cols != m[0]->cols || m[i]->n_groups != m[0]->n_groups)
            return 0;
        if (mode == Q4F_QKV && m[i]->rows % 16) return 0;
    }
    if (mode == Q4F_GU && (n != 2 || m[0]->rows != m[1]->rows || m[0]->bias || m[1]->bias)) return 0;
    if (mode == Q4F_QKV && n != 3) return 0;
    if (mode == Q4F_PLAIN && n != 1) return 0;
    long long items = 0; /* 32-bit item and word indices */
    for (int i = 0; i < (mode == Q4F_GU ? 1 : n); i++) items += (m[i]->rows + 15) / 16 * (long long)(m[0]->cols / 128);
    if (items >= (1 << 25)) return 0;
    int blocks;
    size_t smem;
    q4t_grid((int)(items / (m[0]->cols / 128)), m[0]->cols, mode, 32, 0, &blocks, &smem);
    return smem + 1024 <= smem_max;
}

void k_q4t_args(struct q4t_args *a, const struct cu_mat *const *m, float *const *y, int n, int mode,
                const struct q4f_extra *x)
{
    memset(a, 0, sizeof *a);
    a->n = n;
    a->cols = m[0]->cols;
    a->nc = m[0]->cols / 128;
    a->ngr = m[0]->n_groups;
    a->cshift = q4t_cshift(a->ngr, m[0]->group);
    int tiles = 0;
    for (int i = 0; i < n; i++) {
        struct q4t_mat *q = &a->m[i];
        q->codes = m[i]->t_codes;
        q->sz = m[i]->t_sz;
        q->bias = m[i]->bias;
        q->y = y[i];
        q->rows = m[i]->rows;
        q->tile0 = tiles;
        if (mode != Q4F_GU || i == 0) tiles += (m[i]->rows + 15) / 16;
    }
    for (int i = n; i < Q4F_MAX; i++) a->m[i].tile0 = 1 << 30;
    if (mode == Q4F_GU) a->m[1].tile0 = 0;
    a->tiles = tiles;
    a->items = tiles * a->nc;
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
    a->diag = x->diag;
    a->prep1 = x->prep1;
    a->tl = x->tl;
    a->tl_slot = x->tl_slot;
}


/* tma: q4t_tkernel with D stages per warp */
template <int MODE, int D, int NW, int TMA, int FX = 0>
static enum lmp_status q4t_launch(cudaStream_t st, const struct q4t_args *a, int pdl, size_t smem_set,
                                  struct lmp_err *err)
{
    int blocks;
    size_t smem;
    q4t_grid(a->tiles, a->cols, MODE, NW, TMA ? D : 0, &blocks, &smem);
    if (smem_set) smem = smem_set;
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute at;
    memset(&at, 0, sizeof at);
    cfg.gridDim = dim3((unsigned)blocks);
    cfg.blockDim = dim3(NW * 32);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    at.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at.val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = &at;
    cfg.numAttrs = pdl ? 1 : 0;
    if constexpr (TMA) CU_TRY(cudaLaunchKernelEx(&cfg, q4t_tkernel<MODE, D, NW>, *a), "q4 tile kernel");
    else CU_TRY(cudaLaunchKernelEx(&cfg, q4t_bkernel<MODE, D, NW, FX>, *a), "q4 tile kernel");
    return LMP_OK;
}

static size_t q4t_smem_limit; /* k_q4t_init_attrs: dynamic shared memory a kernel may ask for */
static size_t q4t_tma_over;   /* how far the ring kernels' static shared memory passes 1 KB */

/* smem_max leaves 1 KB for a kernel's static shared memory; the ring kernels hold more
   (their barriers), so they get the rest of the opt-in limit */
template <int MODE, int D, int NW, int TMA, int FX = 0>
static cudaError_t q4t_attr(int v)
{
    cudaFuncAttributes fa;
    cudaError_t e;
    if constexpr (TMA) e = cudaFuncGetAttributes(&fa, q4t_tkernel<MODE, D, NW>);
    else e = cudaFuncGetAttributes(&fa, q4t_bkernel<MODE, D, NW, FX>);
    if (e) return e;
    if (fa.sharedSizeBytes > 1024) {
        const size_t over = fa.sharedSizeBytes - 1024;
        if (over >= (size_t)v) return cudaErrorInvalidValue;
        v -= (int)over;
        if (over > q4t_tma_over) q4t_tma_over = over;
    }
    /* all of L1 as shared memory for every kernel of the decode, so that the next kernel's
       blocks fit beside this one's without a change of the split */
    if constexpr (TMA) {
        e = cudaFuncSetAttribute(q4t_tkernel<MODE, D, NW>, cudaFuncAttributeMaxDynamicSharedMemorySize, v);
        if (!e) e = cudaFuncSetAttribute(q4t_tkernel<MODE, D, NW>, cudaFuncAttributePreferredSharedMemoryCarveout, 100);
    } else {
        e = cudaFuncSetAttribute(q4t_bkernel<MODE, D, NW, FX>, cudaFuncAttributeMaxDynamicSharedMemorySize, v);
        if (!e) e = cudaFuncSetAttribute(q4t_bkernel<MODE, D, NW, FX>, cudaFuncAttributePreferredSharedMemoryCarveout, 100);
    }
    return e;
}

/* the variants: (mode, items in flight, warps per block, TMA ring); option `shape` picks
   one per mode */
#define Q4T_EACH(F)                                                                           \
    F(Q4F_PLAIN, 4, 16, 0) F(Q4F_PLAIN, 6, 16, 0) F(Q4F_PLAIN, 2, 32, 0) F(Q4F_PLAIN, 3, 32, 0)   \
    F(Q4F_QKV, 4, 16, 0) F(Q4F_QKV, 6, 16, 0) F(Q4F_QKV, 2, 32, 0) F(Q4F_QKV, 3, 32, 0)           \
    F(Q4F_GU, 3, 16, 0) F(Q4F_GU, 4, 16, 0) F(Q4F_GU, 2, 32, 0)                                \
    F(Q4F_PLAIN, 8, 16, 1) F(Q4F_QKV, 8, 16, 1) F(Q4F_GU, 4, 16, 1)                            \
    F(Q4F_PLAIN, 4, 32, 1) F(Q4F_QKV, 4, 32, 1) F(Q4F_GU, 2, 32, 1)                            \
    F(Q4F_PLAIN, 4, 16, 1) F(Q4F_QKV, 4, 16, 1) F(Q4F_GU, 2, 16, 1)                            \
    F(Q4F_PLAIN, 2, 18, 0) F(Q4F_QKV, 2, 14, 0) F(Q4F_GU, 1, 14, 0)
#define Q4T_NSHAPES 13
static const int q4t_shapes[Q4T_NSHAPES][7] = {
    /* PLAIN/QKV depth and warps, GU depth and warps, TMA ring (depth = its stages), the
       warps taking the block's items in turn, co-resident (1; 2 with the stash; the warps
       are then 18 for PLAIN, 14 for QKV and GU; GU depth 1; 3: every item through the
       stash as a ring) */
    {2, 32, 3, 16, 0, 0, 0}, {6, 16, 4, 16, 0, 0, 0}, {4, 16, 3, 16, 0, 0, 0}, {3, 32, 2, 32, 0, 0, 0},
    {8, 16, 4, 16, 1, 0, 0}, {4, 32, 2, 32, 1, 0, 0}, {4, 16, 2, 16, 1, 0, 0},
    {2, 32, 3, 16, 0, 1, 0}, {4, 16, 3, 16, 0, 1, 0}, {4, 16, 2, 16, 1, 1, 0},
    {2, 18, 1, 14, 0, 0, 1}, {2, 18, 1, 14, 0, 0, 2}, {2, 18, 1, 14, 0, 0, 3}};

/* The co-resident shapes: the q/k/v and gate/up blocks ("S") take just over half an SM's
 * shared memory, so two of them never share an SM; the plain blocks (o, down, the head:
 * "R") take just over half its registers; an S block and an R block fit together. A
 * layer's launches alternate S (q/k/v), attention (small blocks), R (o), S (gate/up), R
 * (down), so each launch's blocks are resident, one per SM, while the one before runs and
 * can issue their first loads then (PDL). k_q4t_init_attrs sets these when the device's
 * limits and the kernels' registers allow it (else the co-resident shapes fall back to 0). */
static struct {
    int ok;
    size_t s_dyn, r_dyn; /* dynamic shared memory: S exactly, R at most */
    char why[160];       /* when not ok */
} q4t_co;

/* registers a block of nw warps holds (per warp in units of 256) */
static int q4t_block_regs(const cudaFuncAttributes &fa, int nw)
{
    return nw * ((fa.numRegs * 32 + 255) / 256 * 256);
}

static void q4t_co_setup(void)
{
    int dev = 0, sm_smem = 0, res = 0, sm_regs = 0, sm_thr = 0;
    cudaFuncAttributes fs[2], fr;
    q4t_co.ok = 0;
    if (cudaGetDevice(&dev) || cudaDeviceGetAttribute(&sm_smem, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev) ||
        cudaDeviceGetAttribute(&res, cudaDevAttrReservedSharedMemoryPerBlock, dev) ||
        cudaDeviceGetAttribute(&sm_regs, cudaDevAttrMaxRegistersPerMultiprocessor, dev) ||
        cudaDeviceGetAttribute(&sm_thr, cudaDevAttrMaxThreadsPerMultiProcessor, dev) ||
        cudaFuncGetAttributes(&fs[0], q4t_bkernel<Q4F_QKV, 2, 14>) ||
        cudaFuncGetAttributes(&fs[1], q4t_bkernel<Q4F_GU, 1, 14>) ||
        cudaFuncGetAttributes(&fr, q4t_bkernel<Q4F_PLAIN, 2, 18>)) {
        snprintf(q4t_co.why, sizeof q4t_co.why, "device or kernel attributes not readable");
        return;
    }
    /* S: half the SM's shared memory + 1 KB with its reserve and static part */
    const size_t s_tot = (size_t)sm_smem / 2 + 1024;
    size_t s_stat = fs[0].sharedSizeBytes > fs[1].sharedSizeBytes ? fs[0].sharedSizeBytes : fs[1].sharedSizeBytes;
    q4t_co.s_dyn = s_tot - (size_t)res - s_stat;
    const size_t r_tot = (size_t)sm_smem - s_tot - 1024;
    q4t_co.r_dyn = r_tot - (size_t)res - fr.sharedSizeBytes;
    const int sr = q4t_block_regs(fs[0], 14) > q4t_block_regs(fs[1], 14) ? q4t_block_regs(fs[0], 14)
                                                                          : q4t_block_regs(fs[1], 14);
    const int rr = q4t_block_regs(fr, 18);
    if (sr + rr > sm_regs || 2 * rr <= sm_regs || 14 * 32 + 18 * 32 > sm_thr || q4t_co.s_dyn > q4t_smem_limit ||
        q4t_co.r_dyn > q4t_smem_limit) {
        snprintf(q4t_co.why, sizeof q4t_co.why,
                 "registers %d + %d of %d per SM (R twice must not fit), shared memory %zu / %zu of %zu",
                 sr, rr, sm_regs, q4t_co.s_dyn, q4t_co.r_dyn, q4t_smem_limit);
        return;
    }
    int n0 = 0, n1 = 0, n2 = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n0, q4t_bkernel<Q4F_QKV, 2, 14>, 14 * 32, q4t_co.s_dyn) ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n1, q4t_bkernel<Q4F_GU, 1, 14>, 14 * 32, q4t_co.s_dyn) ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n2, q4t_bkernel<Q4F_PLAIN, 2, 18>, 18 * 32, 0) ||
        n0 != 1 || n1 != 1 || n2 != 1) {
        snprintf(q4t_co.why, sizeof q4t_co.why, "blocks per SM %d, %d, %d (need 1 each)", n0, n1, n2);
        return;
    }
    q4t_co.ok = 1;
}

enum lmp_status k_q4t_init_attrs(size_t smem_max, struct lmp_err *err)
{
    const int v = (int)smem_max;
    q4t_smem_limit = smem_max;
    cudaError_t e = cudaSuccess;
#define Q4T_ATTR(MODE, D, NW, TMA)                                                            \
    if (!e) e = q4t_attr<MODE, D, NW, TMA>(v);
    Q4T_EACH(Q4T_ATTR)
#undef Q4T_ATTR
    if (!e) e = q4t_attr<Q4F_GU, 3, 16, 0, 1>(v); /* the fixed-point instances (att_o 8) */
    if (!e) e = q4t_attr<Q4F_PLAIN, 2, 32, 0, 1>(v);
    CU_TRY(e, "q4 tile kernel attributes");
    CU_TRY(cudaFuncSetAttribute(q4t_ohkernel<Q4T_OH_NW, Q4T_OH_D, 0>, cudaFuncAttributeMaxDynamicSharedMemorySize, v),
           "o by heads kernel attributes");
    CU_TRY(cudaFuncSetAttribute(q4t_ohkernel<Q4T_OH_NW, Q4T_OH_D, 1>, cudaFuncAttributeMaxDynamicSharedMemorySize, v),
           "o by heads kernel attributes");
    q4t_co_setup();
    return LMP_OK;
}

const char *k_q4t_co_status(void) { return q4t_co.ok ? NULL : q4t_co.why; }

enum lmp_status k_q4t_launch(cudaStream_t st, const struct q4t_args *a, int mode, int pdl,
                             int shape, struct lmp_err *err)
{
    if (a->acc64) { /* after o by heads with fixed-point sums: the default shape's FX instances */
        if (mode == Q4F_GU) return q4t_launch<Q4F_GU, 3, 16, 0, 1>(st, a, pdl, 0, err);
        if (mode == Q4F_PLAIN) return q4t_launch<Q4F_PLAIN, 2, 32, 0, 1>(st, a, pdl, 0, err);
        return lmp_err_set(err, LMP_ERR_INTERNAL, "q4 tile kernel: no fixed-point variant for mode %d", mode);
    }
    const int *sh = q4t_shapes[shape >= 0 && shape < Q4T_NSHAPES ? shape : 0];
    if (sh[4]) { /* the ring must fit (wide inputs): else the default shape */
        int blocks;
        size_t smem;
        const int gu = mode == Q4F_GU;
        q4t_grid(a->tiles, a->cols, mode, sh[gu ? 3 : 1], sh[gu ? 2 : 0], &blocks, &smem);
        if (smem + q4t_tma_over > q4t_smem_limit) sh = q4t_shapes[0];
    }
    if (sh[6] && !q4t_co.ok) sh = q4t_shapes[0];
    const int tma = sh[4];
    struct q4t_args b = *a;
    b.il = sh[5];
    const int d = mode == Q4F_GU ? sh[2] : sh[0];
    const int nw = sh[6] ? (mode == Q4F_PLAIN ? 18 : 14) : mode == Q4F_GU ? sh[3] : sh[1];
    size_t smem = 0; /* 0: as q4t_grid says */
    if (sh[6]) {
        /* the input and partial sums, then the stash in what is left of S's or R's share */
        int blocks;
        size_t base;
        q4t_grid(a->tiles, a->cols, mode, nw, 0, &blocks, &base);
        base = (base + 15) & ~(size_t)15;
        const size_t have = mode == Q4F_PLAIN ? q4t_co.r_dyn : q4t_co.s_dyn;
        if (base > have) return k_q4t_launch(st, a, mode, pdl, 0, err);
        const size_t unit = (size_t)q4t_unit_bytes(mode);
        b.stash_off = (int)base;
        b.stash = sh[6] >= 2 ? (int)((have - base) / ((size_t)nw * unit)) : 0;
        if (b.stash > (sh[6] == 3 ? 8 : 16)) b.stash = sh[6] == 3 ? 8 : 16;
        b.ring = sh[6] == 3;
        if (b.ring && b.stash < 2) return k_q4t_launch(st, a, mode, pdl, 0, err);
        smem = mode == Q4F_PLAIN ? base + (size_t)b.stash * nw * unit : have;
    }
#define Q4T_CASE(MODE, D, NW, TMA)                                                            \
    if (mode == MODE && d == D && nw == NW && tma == TMA)                                     \
        return q4t_launch<MODE, D, NW, TMA>(st, &b, pdl, smem, err);
    Q4T_EACH(Q4T_CASE)
#undef Q4T_CASE
    return lmp_err_set(err, LMP_ERR_INTERNAL, "q4 tile kernel: no variant for mode %d shape %d", mode, shape);
}

/* its dynamic shared memory: the input's layout (q4t_prep), then (mw) the combine's sums */
static size_t q4t_oh_smem(const struct q4t_args *a, int mw)
{
    const size_t in = (size_t)a->cols * 6 + (size_t)a->nc * 8;
    return mw ? ((in + 15) & ~(size_t)15) + (size_t)((ATT_SPLIT_MAX + 3) / 4 - 1) * 32 * sizeof(float4) : in;
}

int k_q4t_oh_ok(const struct q4t_args *a, int nh, int hd, int S, int mw)
{
    return hd == 128 && a->n == 1 && a->nc == nh && a->acc && S >= 1 && S <= ATT_SPLIT_MAX &&
           q4t_oh_smem(a, mw) + 1024 <= q4t_smem_limit;
}

enum lmp_status k_q4t_oh_launch(cudaStream_t st, const struct q4t_args *a, const float *part, int nh, int S, int sms,
                                int pdl, int mw, struct lmp_err *err)
{
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute at;
    memset(&at, 0, sizeof at);
    cfg.gridDim = dim3((unsigned)(nh >= sms ? 1 : sms / nh), (unsigned)nh); /* about one block per SM */
    cfg.blockDim = dim3(Q4T_OH_NW * 32);
    cfg.dynamicSmemBytes = q4t_oh_smem(a, mw);
    cfg.stream = st;
    at.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at.val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = &at;
    cfg.numAttrs = pdl ? 1 : 0;
    if (mw) CU_TRY(cudaLaunchKernelEx(&cfg, q4t_ohkernel<Q4T_OH_NW, Q4T_OH_D, 1>, *a, part, S), "o by heads kernel");
    else CU_TRY(cudaLaunchKernelEx(&cfg, q4t_ohkernel<Q4T_OH_NW, Q4T_OH_D, 0>, *a, part, S), "o by heads kernel");
    return LMP_OK;
}
