/* The persistent 4-bit decode kernel: every layer of a decode step (batch 1) in one launch of
 * one block per SM, the weights in the tile layout of decode_q4t.cu streamed through a
 * shared-memory ring that runs ahead of the data dependencies.
 *
 * Why (docs/GPU.md): with one launch per product the weights stream at ~85 % of copy, but
 * each layer also pays ~23 us of fixed cost (the attention, each kernel's input preparation,
 * epilogue and release) during which DRAM is mostly idle. The weights do not depend on the
 * activations, so here each warp keeps `slots` units (1 KB of codes + their 64 B of scales
 * and zeros) in flight by bulk copies (TMA) into its ring and refills a slot as soon as it has
 * read it, in the order the warp will need them: its share of q/k/v, o, gate/up (a gate unit
 * then the up unit of the same item) and down of layer 0, then of layer 1, ... While the
 * block waits for a phase's input (the other blocks' outputs), the copies of the next
 * phases' weights keep DRAM busy; after the wait the warp finds them in shared memory.
 *
 * Phases of layer l, each ended by a count of blocks in cnt[l * 5 + phase] (zeroed before the
 * launch; every block waits for the full count of the phase before its own):
 *   q/k/v: x -> RMSNorm -> q (RoPE), k (RoPE) and v into the caches at *pos
 *   attention: heads x S shares of the positions, a share per block in turn (att_row):
 *              each share's output normalized within it, its max and exp sum
 *   o: the shares combined per head in share order (as att_split_kernel) -> x += W_o att
 *   gate/up: x -> RMSNorm -> g = silu(W_g x) * (W_u x)
 *   down: x += W_d g
 * Within a phase the split is that of the tile kernels: block b a contiguous run of whole
 * tiles, its warps contiguous shares of the run's items, per-warp tile sums in shared memory
 * added in warp order (the result does not depend on timing). The products are computed as in
 * q4t_item (decode_q4t.cu): fp16 tensor-core mma of the codes against the power-of-two-scaled
 * input, offsets removed in fp32 per 128 columns.
 *
 * Every block must be resident at once (the counts are waited for): launched cooperatively.
 * A wait that lasts more than 5 s traps (an error at the next synchronization, not a hang). */
#include "internal.h"
/* the block's barrier: the 16 product warps only (with Q4P_PRODUCER a 17th warp issues the
 * copies and never waits at it) */
#define BLOCK_SYNC() asm volatile("bar.sync 1, 512;" ::: "memory")
#define BLOCK_WARPS Q4P_NW
#include "reduce.cuh"
#include "attention.cuh"
#include "q4t.cuh"

#include <string.h>

#define Q4P_NT (Q4P_NW * 32)
#define Q4P_QR 4         /* input pairs of float4 per thread (Q4P_MAX_COLS) */
#define Q4P_MAXSLOTS 16  /* ring slots per warp at most (their mbarriers are static) */
#define Q4P_UNIT 1088    /* bytes of a slot: 1 KB of codes, 64 B of scales and zeros */

/* a phase's split: block b's tiles [t0, t1), warp w's items f0 .. f0 + cnt - 1 (flat
 * index tile nc + chunk) */
struct q4p_share {
    int t0, t1, f0, cnt;
};
static __device__ __forceinline__ q4p_share q4p_split(int tiles, int nc, int w)
{
    const int G = gridDim.x, tpb = (tiles + G - 1) / G;
    q4p_share r;
    r.t0 = min(tiles, (int)blockIdx.x * tpb);
    r.t1 = min(tiles, r.t0 + tpb);
    const int nit = (r.t1 - r.t0) * nc, per = (nit + Q4P_NW - 1) / Q4P_NW;
    const int lo = min(nit, w * per), hi = min(nit, lo + per);
    r.f0 = r.t0 * nc + lo;
    r.cnt = hi - lo;
    return r;
}

/* tiles and input width of phase p of layer L */
static __device__ __forceinline__ void q4p_dims(const q4p_args &A, const q4p_layer &L, int p, int &tiles,
                                                int &cols)
{
    const int qd = L.nh * A.hd, kvd = L.nkv * A.hd;
    if (p == Q4P_QKV) tiles = (qd + 2 * kvd) / 16, cols = A.dim;
    else if (p == Q4P_O) tiles = (A.dim + 15) / 16, cols = qd;
    else if (p == Q4P_GU) tiles = (L.ffn + 15) / 16, cols = A.dim;
    else tiles = (A.dim + 15) / 16, cols = L.ffn;
}

/* ---- the ring: where the next unit to copy is (the same in every lane) ---------------- */

struct q4p_cur {
    int l, p;          /* layer, phase (l == n_layers: nothing left) */
    int k, cnt;        /* item of the warp's share */
    int t, j, u, nc;   /* tile of the phase, chunk, unit (gate/up: 0 gate, 1 up) */
    int mi, mt0, tend; /* matrix of tile t, its first tile, the first tile past it */
    int tk;            /* q/k/v: tiles of k */
    int ngr, cshift;
    const char *cb, *sb, *cb2, *sb2; /* codes and scales of the matrix (gate/up: and up) */
};

static __device__ __forceinline__ void q4p_mat_set(const q4p_args &A, q4p_cur &c)
{
    const q4p_layer &L = A.L[c.l];
    c.cb = (const char *)L.m[c.mi].codes;
    c.sb = (const char *)L.m[c.mi].sz;
    c.ngr = L.m[c.mi].ngr;
    c.cshift = L.m[c.mi].cshift;
    if (c.p == Q4P_GU) {
        c.cb2 = (const char *)L.m[Q4P_WUP].codes;
        c.sb2 = (const char *)L.m[Q4P_WUP].sz;
    }
}

static __device__ __forceinline__ void q4p_phase_next(q4p_cur &c)
{
    c.p = c.p == Q4P_QKV ? Q4P_O : c.p + 1;
    if (c.p > Q4P_DOWN) c.p = Q4P_QKV, c.l++;
}

/* the cursor at the first item of phase (c.l, c.p) or the next one with items for warp w */
static __device__ __forceinline__ void q4p_cur_phase(const q4p_args &A, q4p_cur &c, int w)
{
    for (; c.l < A.n_layers; q4p_phase_next(c)) {
        const q4p_layer &L = A.L[c.l];
        int tiles, cols;
        q4p_dims(A, L, c.p, tiles, cols);
        c.nc = cols >> 7;
        const q4p_share S = q4p_split(tiles, c.nc, w);
        if (S.cnt <= 0) continue;
        c.k = 0, c.cnt = S.cnt, c.u = 0;
        c.t = S.f0 / c.nc, c.j = S.f0 - c.t * c.nc;
        c.mt0 = 0, c.tend = 1 << 30;
        if (c.p == Q4P_QKV) {
            const int tq = L.nh * A.hd / 16;
            c.tk = L.nkv * A.hd / 16;
            c.mi = c.t < tq ? Q4P_WQ : c.t < tq + c.tk ? Q4P_WK : Q4P_WV;
            c.mt0 = c.mi == Q4P_WQ ? 0 : c.mi == Q4P_WK ? tq : tq + c.tk;
            c.tend = c.mi == Q4P_WQ ? tq : c.mi == Q4P_WK ? tq + c.tk : 1 << 30;
        } else
            c.mi = c.p == Q4P_O ? Q4P_WO : c.p == Q4P_GU ? Q4P_WGATE : Q4P_WDOWN;
        q4p_mat_set(A, c);
        return;
    }
}

static __device__ __forceinline__ void q4p_advance(const q4p_args &A, q4p_cur &c, int w)
{
    if (c.p == Q4P_GU && !c.u) {
        c.u = 1;
        return;
    }
    c.u = 0;
    if (++c.k >= c.cnt) {
        q4p_phase_next(c);
        q4p_cur_phase(A, c, w);
        return;
    }
    if (++c.j == c.nc) {
        c.j = 0;
        if (++c.t == c.tend) { /* q/k/v: into the next matrix */
            c.mt0 = c.tend;
            c.mi++;
            c.tend = c.mi == Q4P_WK ? c.mt0 + c.tk : 1 << 30;
            q4p_mat_set(A, c);
        }
    }
}

/* lane 0: the cursor's unit into the slot (codes dst, scales dsz) completing on bar */
static __device__ __forceinline__ void q4p_issue(const q4p_cur &c, uint32_t dst, uint32_t dsz, uint32_t bar)
{
    const unsigned lt = (unsigned)(c.t - c.mt0);
    const char *src = (c.u ? c.cb2 : c.cb) + ((size_t)(lt * c.nc + c.j) << 10);
    const char *ssz = (c.u ? c.sb2 : c.sb) + ((size_t)(lt * c.ngr + (c.j >> c.cshift)) << 6);
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); /* the slot's earlier reads */
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(Q4P_UNIT) : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], 1024, [%2];" ::"r"(dst),
                 "l"(src), "r"(bar)
                 : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], 64, [%2];" ::"r"(dsz),
                 "l"(ssz), "r"(bar)
                 : "memory");
}

/* the same with cp.async (flags & Q4P_CPASYNC): each lane copies its two 16-byte words of
 * the codes, lanes 0-7 the 8 bytes of scales their rows need; the slot's barrier (count 32)
 * completes when every lane's copies have landed */
static __device__ __forceinline__ void q4p_issue_cpa(const q4p_cur &c, uint32_t dst, uint32_t dsz, uint32_t bar,
                                                     int lane)
{
    const unsigned lt = (unsigned)(c.t - c.mt0);
    const char *src = (c.u ? c.cb2 : c.cb) + ((size_t)(lt * c.nc + c.j) << 10) + lane * 16;
    const char *ssz = (c.u ? c.sb2 : c.sb) + ((size_t)(lt * c.ngr + (c.j >> c.cshift)) << 6) + (lane & 7) * 8;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst + lane * 16), "l"(src) : "memory");
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst + 512 + lane * 16), "l"(src + 512)
                 : "memory");
    if (lane < 8) asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(dsz + lane * 8), "l"(ssz) : "memory");
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(bar) : "memory");
}

/* a warp's ring: N slots, the next to read (slot, its barrier's parity), the fill cursor */
struct q4p_ring {
    const unsigned char *codes;
    const uint2 *sz;
    uint32_t codes_s, sz_s, bar_s;
    int N, slot;
    uint32_t par;
    q4p_cur f;
    long long cw, ci; /* with the timeline: clocks waiting for slots, refilling them */
};

/* the next unit: its codes (c0, c1: the lane's two 16-byte words) and scales/zeros (the
 * lane's rows); then the slot takes the unit `slots` ahead */
static __device__ __forceinline__ void q4p_take(const q4p_args &A, q4p_ring &R, int lane, int w, uint4 &c0,
                                                uint4 &c1, uint2 &sz)
{
    const uint32_t bar = R.bar_s + 8 * R.slot;
    const long long c0_ = A.tl ? clock64() : 0;
    q4t_bar_wait(bar, R.par);
    const long long c1_ = A.tl ? clock64() : 0;
    const uint4 *st = (const uint4 *)(R.codes + (R.slot << 10));
    c0 = st[lane];
    c1 = st[32 + lane];
    sz = R.sz[R.slot * 8 + (lane >> 2)];
    __syncwarp(); /* every lane has read the slot */
    if (A.flags & Q4P_PRODUCER) { /* the slot back to the copy warp */
        if (lane == 0)
            asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(R.bar_s + 8 * Q4P_MAXSLOTS * Q4P_NW + 8 * R.slot)
                         : "memory");
    } else if (R.f.l < A.n_layers) {
        if (A.flags & Q4P_CPASYNC) q4p_issue_cpa(R.f, R.codes_s + (R.slot << 10), R.sz_s + R.slot * 64, bar, lane);
        else if (lane == 0) q4p_issue(R.f, R.codes_s + (R.slot << 10), R.sz_s + R.slot * 64, bar);
        q4p_advance(A, R.f, w);
    }
    if (A.tl) R.cw += c1_ - c0_, R.ci += clock64() - c1_;
    if (++R.slot == R.N) R.slot = 0, R.par ^= 1;
}

/* ---- the phases' synchronization -------------------------------------------------------- */

static __device__ __forceinline__ unsigned long long q4p_now(void)
{
    unsigned long long g;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(g));
    return g;
}

/* every block: until *c reaches gridDim.x (thread 0 polls; the block's barrier after) */
static __device__ __forceinline__ void q4p_wait(const unsigned *c)
{
    if (threadIdx.x == 0) {
        const unsigned n = gridDim.x;
        unsigned v;
        unsigned long long t0 = 0;
        for (int i = 0;; i++) {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(c) : "memory");
            if (v >= n) break;
            if ((i & 1023) == 1023) {
                const unsigned long long t = q4p_now();
                if (!t0) t0 = t;
                else if (t - t0 > 5000000000ull) __trap(); /* a block is missing: never hang */
            }
        }
        __threadfence();
    }
    BLOCK_SYNC();
}

/* the block is done with a phase: its writes, then the count */
static __device__ __forceinline__ void q4p_signal(unsigned *c)
{
    BLOCK_SYNC();
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(c, 1u);
    }
}

static __device__ __forceinline__ void q4p_mark(const q4p_args &A, int l, int p, int k)
{
    if (!A.tl || threadIdx.x) return;
    A.tl[(((size_t)l * Q4P_PHASES + p) * gridDim.x + blockIdx.x) * Q4P_TL + k] = q4p_now();
}

/* ---- the input of a phase --------------------------------------------------------------- */

/* As q4t_prep (decode_q4t.cu), from registers: thread i takes the float4 pairs q = i, i + NT,
 * ... (q = 2 s + h: float4s 4 s + h and 4 s + h + 2, the lo and hi columns of the B fragments
 * c = 2 h, 2 h + 1 of k16 step s); ld(f) gives float4 f of the input before the norm. Writes
 * the fp16 B fragments and per chunk (off, X) into sm; returns the products' factor. */
template <class Ld>
static __device__ __forceinline__ float q4p_prep(int cols, const float *norm, float eps, unsigned char *sm,
                                                 float *red, Ld ld)
{
    const int tid = threadIdx.x, nq = cols >> 3;
    uint2 *xb = (uint2 *)sm;
    float2 *ox = (float2 *)(xb + (cols >> 2));
    float4 va[Q4P_QR], vb[Q4P_QR];
#pragma unroll
    for (int r = 0; r < Q4P_QR; r++) { /* the loads together */
        const int q = tid + r * Q4P_NT, f = 4 * (q >> 1) + (q & 1);
        va[r] = vb[r] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (q < nq) va[r] = ld(f), vb[r] = ld(f + 2);
    }
    float ss = 0.0f, mx = 0.0f;
#pragma unroll
    for (int r = 0; r < Q4P_QR; r++) {
        const int q = tid + r * Q4P_NT, f = 4 * (q >> 1) + (q & 1);
        if (q < nq) {
            float4 &a = va[r], &b = vb[r];
            ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w + b.x * b.x + b.y * b.y + b.z * b.z + b.w * b.w;
            if (norm) {
                const float4 wa = __ldg((const float4 *)norm + f), wb = __ldg((const float4 *)norm + f + 2);
                a.x *= wa.x, a.y *= wa.y, a.z *= wa.z, a.w *= wa.w;
                b.x *= wb.x, b.y *= wb.y, b.z *= wb.z, b.w *= wb.w;
            }
            mx = fmaxf(mx, fmaxf(fmaxf(fmaxf(fabsf(a.x), fabsf(a.y)), fmaxf(fabsf(a.z), fabsf(a.w))),
                                 fmaxf(fmaxf(fabsf(b.x), fabsf(b.y)), fmaxf(fabsf(b.z), fabsf(b.w)))));
        }
    }
    block_sum_max(ss, mx, red);
    const float inv = norm ? 1.0f / sqrtf(ss / (float)cols + eps) : 1.0f;
    mx *= inv;
    const int E = q4t_scale_exp(mx);
    const float sc = ldexpf(inv, E);
#pragma unroll
    for (int r = 0; r < Q4P_QR; r++) {
        const int q = tid + r * Q4P_NT, s = q >> 1, h = q & 1;
        float off = 0.0f, X = 0.0f;
        if (q < nq) {
            const float4 a = va[r], b = vb[r];
#pragma unroll
            for (int c1 = 0; c1 < 2; c1++) {
                float o1, x1;
                xb[((s >> 1) * 4 + 2 * h + c1) * 2 + (s & 1)] =
                    c1 ? q4t_bfrag(a.z, a.w, b.z, b.w, sc, o1, x1) : q4t_bfrag(a.x, a.y, b.x, b.y, sc, o1, x1);
                off += o1, X += x1;
            }
        }
#pragma unroll
        for (int o = 8; o > 0; o >>= 1) { /* the chunk's 16 pairs: 16 lanes */
            off += __shfl_xor_sync(0xffffffffu, off, o);
            X += __shfl_xor_sync(0xffffffffu, X, o);
        }
        if (q < nq && (tid & 15) == 0) ox[q >> 4] = make_float2(off, X);
    }
    BLOCK_SYNC();
    return ldexpf(1.0f, -E);
}

/* ---- a product phase -------------------------------------------------------------------- */

/* Phase p (MODE: Q4F_QKV, Q4F_GU, or Q4F_PLAIN for o and down, which add to x) of layer l:
 * wait for `dep` (NULL: none), the input, the warp's share from its ring, the block's rows
 * out, the count. */
template <int MODE>
static __device__ __forceinline__ void q4p_products(const q4p_args &A, int l, int p, const unsigned *dep,
                                                    q4p_ring &R, unsigned char *sm, float *red, int p0)
{
    const q4p_layer &L = A.L[l];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, c = lane & 3, g = lane >> 2;
    const int RPU = MODE == Q4F_GU ? 32 : 16;
    const int qd = L.nh * A.hd, kvd = L.nkv * A.hd;
    int tiles, cols;
    q4p_dims(A, L, p, tiles, cols);
    const int nc = cols >> 7;
    const q4p_share S = q4p_split(tiles, nc, w);
    float *part = (float *)(sm + A.part_off);
    for (int i = threadIdx.x; i < (S.t1 - S.t0) * Q4P_NW * RPU; i += Q4P_NT) part[i] = 0.0f;
    q4p_mark(A, l, p, 0);
    if (dep) q4p_wait(dep);
    q4p_mark(A, l, p, 1);
    float ys;
    if (p == Q4P_O) { /* the attention's shares combined per head, in share order */
        const int S_ = A.S;
        float *aw = (float *)(sm + A.aw_off);
        for (int h = threadIdx.x; h < L.nh; h += Q4P_NT) {
            float m = -INFINITY;
            for (int j = 0; j < S_; j++) m = fmaxf(m, __ldcg(A.aml + 2 * (h * S_ + j)));
            float den = 0.0f;
            for (int j = 0; j < S_; j++) {
                const float mj = __ldcg(A.aml + 2 * (h * S_ + j)), lj = __ldcg(A.aml + 2 * (h * S_ + j) + 1);
                const float e = mj > -INFINITY ? expf(mj - m) * lj : 0.0f;
                aw[h * S_ + j] = e;
                den += e;
            }
            const float r = 1.0f / den;
            for (int j = 0; j < S_; j++) aw[h * S_ + j] *= r;
        }
        BLOCK_SYNC();
        const int hd4 = A.hd >> 2;
        ys = q4p_prep(cols, NULL, A.eps, sm, red, [&](int f) {
            const int h = f / hd4, d4 = f - h * hd4;
            float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
            for (int j = 0; j < S_; j++) {
                const float wj = aw[h * S_ + j];
                if (wj != 0.0f) {
                    const float4 v = __ldcg((const float4 *)(A.ao + (size_t)(h * S_ + j) * A.hd) + d4);
                    a.x += wj * v.x, a.y += wj * v.y, a.z += wj * v.z, a.w += wj * v.w;
                }
            }
            return a;
        });
    } else {
        const float *src = p == Q4P_DOWN ? A.g : A.x;
        const float *norm = p == Q4P_QKV ? L.attn_norm : p == Q4P_GU ? L.ffn_norm : NULL;
        ys = q4p_prep(cols, norm, A.eps, sm, red, [&](int f) { return __ldcg((const float4 *)src + f); });
    }
    q4p_mark(A, l, p, 2);
    /* the warp's items: chunks of a tile summed in registers, each tile's sums to its slot */
    const uint4 *xb4 = (const uint4 *)sm;
    const float2 *ox = (const float2 *)(sm + (size_t)cols * 2);
    int t = S.cnt > 0 ? S.f0 / nc : 0, j = S.cnt > 0 ? S.f0 - t * nc : 0;
    float ya = 0.0f, yb = 0.0f, ua = 0.0f, ub = 0.0f;
    for (int k = 0; k < S.cnt; k++) {
        uint4 xb[4];
#pragma unroll
        for (int q = 0; q < 4; q++) xb[q] = xb4[(4 * j + q) * 4 + c];
        const float2 o = ox[j];
        uint4 c0, c1;
        uint2 sz;
        float acc[4];
        q4p_take(A, R, lane, w, c0, c1, sz);
        if (A.flags & Q4P_NOMATH) { /* diagnostics: the ring alone */
            ya += __uint_as_float(c0.x ^ c1.y ^ sz.x) * 1e-30f;
        } else {
            q4t_item(acc, c0, c1, xb);
            q4t_scale(ya, yb, acc, sz, o);
        }
        if (MODE == Q4F_GU) {
            q4p_take(A, R, lane, w, c0, c1, sz);
            if (A.flags & Q4P_NOMATH) {
                ua += __uint_as_float(c0.x ^ c1.y ^ sz.x) * 1e-30f;
            } else {
                q4t_item(acc, c0, c1, xb);
                q4t_scale(ua, ub, acc, sz, o);
            }
        }
        if (++j == nc || k == S.cnt - 1) { /* the warp's last chunk of the tile */
            if (c == 0) {
                float *sl = part + ((t - S.t0) * Q4P_NW + w) * RPU;
                sl[g] = ya, sl[g + 8] = yb;
                if (MODE == Q4F_GU) sl[16 + g] = ua, sl[24 + g] = ub;
            }
            ya = yb = ua = ub = 0.0f;
            if (j == nc) j = 0, t++;
        }
    }
    if (A.tl && !threadIdx.x) { /* warp 0's clocks in the ring this phase */
        unsigned long long *m = A.tl + (((size_t)l * Q4P_PHASES + p) * gridDim.x + blockIdx.x) * Q4P_TL;
        m[4] = (unsigned long long)R.cw, m[5] = (unsigned long long)R.ci;
        R.cw = R.ci = 0;
    }
    BLOCK_SYNC();
    /* the block's rows: slots added in warp order */
    for (int k = threadIdx.x; k < (S.t1 - S.t0) * 8; k += Q4P_NT) {
        const int tl = k >> 3, rr = 2 * (k & 7);
        float va = 0.0f, vb = 0.0f, wa = 0.0f, wb = 0.0f;
        for (int q = 0; q < Q4P_NW; q++) {
            const float *sl = part + (tl * Q4P_NW + q) * RPU;
            va += sl[rr], vb += sl[rr + 1];
            if (MODE == Q4F_GU) wa += sl[16 + rr], wb += sl[17 + rr];
        }
        va *= ys, vb *= ys;
        const int r = 16 * (S.t0 + tl) + rr;
        if (MODE == Q4F_GU) {
            if (r < L.ffn) A.g[r] = q4t_silu(va) * (wa * ys);
            if (r + 1 < L.ffn) A.g[r + 1] = q4t_silu(vb) * (wb * ys);
        } else if (MODE == Q4F_PLAIN) {
            const float *bias = L.m[p == Q4P_O ? Q4P_WO : Q4P_WDOWN].bias;
            if (r < A.dim) A.x[r] = __ldcg(A.x + r) + va + (bias ? bias[r] : 0.0f);
            if (r + 1 < A.dim) A.x[r + 1] = __ldcg(A.x + r + 1) + vb + (bias ? bias[r + 1] : 0.0f);
        } else { /* q/k/v: rows % 16 == 0 */
            const int mi = r < qd ? 0 : r < qd + kvd ? 1 : 2, ra = r - (mi == 0 ? 0 : mi == 1 ? qd : qd + kvd);
            const float *bias = L.m[Q4P_WQ + mi].bias;
            if (bias) va += bias[ra], vb += bias[ra + 1];
            if (mi < 2) { /* RoPE on the pair (ra, ra + 1) */
                const float *cs = A.cs + (size_t)p0 * A.hd + ra % A.hd;
                const float co = cs[0], si = cs[1];
                const float y0 = va * co - vb * si, y1 = va * si + vb * co;
                va = y0, vb = y1;
            }
            float *dst = mi == 0 ? A.q : (mi == 1 ? L.kc : L.vc) + (size_t)p0 * kvd;
            dst[ra] = va;
            dst[ra + 1] = vb;
        }
    }
    q4p_signal(A.cnt + l * Q4P_PHASES + p);
    q4p_mark(A, l, p, 3);
}

/* the attention of layer l: units (head h, share j) h S + j, block b takes b, b + G, ... */
static __device__ __forceinline__ void q4p_attention(const q4p_args &A, int l, unsigned char *sm, int p0)
{
    const q4p_layer &L = A.L[l];
    q4p_mark(A, l, Q4P_ATT, 0);
    q4p_wait(A.cnt + l * Q4P_PHASES + Q4P_QKV);
    q4p_mark(A, l, Q4P_ATT, 1);
    const int S = A.S, T = p0 + 1, cpos = (T + S - 1) / S, kvd = L.nkv * A.hd, grp = L.nh / L.nkv;
    for (int u = blockIdx.x; u < L.nh * S; u += gridDim.x) {
        const int h = u / S, j = u - h * S, t0 = j * cpos, t1 = min(T, t0 + cpos);
        float *po = A.ao + (size_t)u * A.hd, *ml = A.aml + 2 * u;
        if (t1 > t0) {
            att_row<Q4P_NT, true>(po, A.q + (size_t)h * A.hd, L.kc + (size_t)t0 * kvd, L.vc + (size_t)t0 * kvd,
                                  t1 - t0, kvd, h / grp, A.hd, A.att_scale, (float *)sm, NULL, ml);
        } else { /* an empty share: weight 0 */
            for (int d = threadIdx.x; d < A.hd; d += Q4P_NT) po[d] = 0.0f;
            if (!threadIdx.x) ml[0] = -INFINITY, ml[1] = 0.0f;
        }
        BLOCK_SYNC(); /* att_row's shared memory, for the next unit */
    }
    q4p_signal(A.cnt + l * Q4P_PHASES + Q4P_ATT);
    q4p_mark(A, l, Q4P_ATT, 3);
}

/* With Q4P_PRODUCER: warp Q4P_NW of the block issues every copy, its lane w for product warp
 * w: the ring's first units, then each further unit once the warp has given the slot back
 * (the slot's "empty" barrier); the product warps only wait for their slots ("full"), so
 * they never block on issuing a copy, and the copies keep going while they wait. */
static __device__ void q4p_producer(const q4p_args &A, unsigned char *sm, uint32_t bars_s)
{
    const int lane = threadIdx.x & 31, N = A.slots;
    if (lane >= Q4P_NW) return;
    const int w = lane;
    const uint32_t codes_s = q4t_saddr(sm + A.ring_off + (size_t)w * N * 1024);
    const uint32_t sz_s = q4t_saddr(sm + A.sz_off + (size_t)w * N * 64);
    const uint32_t full = bars_s + 8 * (w * Q4P_MAXSLOTS), empty = full + 8 * (Q4P_NW * Q4P_MAXSLOTS);
    q4p_cur f;
    f.l = 0, f.p = Q4P_QKV;
    q4p_cur_phase(A, f, w);
    int slot = 0;
    uint32_t lap = 0; /* laps done around the ring */
    while (f.l < A.n_layers) { /* the lanes in step: each tests its slot, issues if free */
        uint32_t ok = 1;
        if (lap) /* has warp w read this slot's previous unit? */
            asm volatile("{\n.reg .pred P;\nmbarrier.test_wait.parity.shared::cta.b64 P, [%1], %2;\n"
                         "selp.u32 %0, 1, 0, P;\n}"
                         : "=r"(ok)
                         : "r"(empty + 8 * slot), "r"((lap - 1) & 1)
                         : "memory");
        if (ok) {
            q4p_issue(f, codes_s + (slot << 10), sz_s + slot * 64, full + 8 * slot);
            q4p_advance(A, f, w);
            if (++slot == N) slot = 0, lap++;
        }
    }
}

__global__ void __launch_bounds__(Q4P_NT + 32, 1) q4p_kernel(const __grid_constant__ struct q4p_args A)
{
    extern __shared__ __align__(128) unsigned char sm[];
    __shared__ __align__(8) unsigned long long bars[2 * Q4P_NW * Q4P_MAXSLOTS]; /* full, empty */
    __shared__ float red[66];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, N = A.slots;
    const bool prod = (A.flags & Q4P_PRODUCER) != 0;
    if (w == Q4P_NW) { /* the copy warp */
        __syncthreads(); /* the barriers initialized */
        if (prod) q4p_producer(A, sm, q4t_saddr(bars));
        return;
    }
    q4p_ring R;
    R.codes = sm + A.ring_off + (size_t)w * N * 1024;
    R.sz = (const uint2 *)(sm + A.sz_off + (size_t)w * N * 64);
    R.codes_s = q4t_saddr(R.codes);
    R.sz_s = q4t_saddr(R.sz);
    R.bar_s = q4t_saddr(&bars[w * Q4P_MAXSLOTS]);
    R.N = N, R.slot = 0, R.par = 0, R.cw = R.ci = 0;
    if (lane == 0) {
        for (int d = 0; d < N; d++) {
            if (A.flags & Q4P_CPASYNC)
                asm volatile("mbarrier.init.shared::cta.b64 [%0], 32;" ::"r"(R.bar_s + 8 * d) : "memory");
            else
                q4t_bar_init(R.bar_s + 8 * d);
            q4t_bar_init(R.bar_s + 8 * (Q4P_NW * Q4P_MAXSLOTS) + 8 * d); /* empty: the warp's lane 0 */
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    if (blockDim.x > Q4P_NT) __syncthreads(); /* with the copy warp (it waits for the barriers) */
    else __syncwarp();
    R.f.l = 0, R.f.p = Q4P_QKV;
    if (!prod) {
        q4p_cur_phase(A, R.f, w);
        for (int d = 0; d < N && R.f.l < A.n_layers; d++) { /* the ring's first units */
            if (A.flags & Q4P_CPASYNC) q4p_issue_cpa(R.f, R.codes_s + (d << 10), R.sz_s + d * 64, R.bar_s + 8 * d, lane);
            else if (lane == 0) q4p_issue(R.f, R.codes_s + (d << 10), R.sz_s + d * 64, R.bar_s + 8 * d);
            q4p_advance(A, R.f, w);
        }
    }
    const int p0 = *A.pos;
    for (int l = 0; l < A.n_layers; l++) {
        const unsigned *c = A.cnt + l * Q4P_PHASES;
        q4p_products<Q4F_QKV>(A, l, Q4P_QKV, l ? c - Q4P_PHASES + Q4P_DOWN : NULL, R, sm, red, p0);
        q4p_attention(A, l, sm, p0);
        q4p_products<Q4F_PLAIN>(A, l, Q4P_O, c + Q4P_ATT, R, sm, red, p0);
        q4p_products<Q4F_GU>(A, l, Q4P_GU, c + Q4P_O, R, sm, red, p0);
        q4p_products<Q4F_PLAIN>(A, l, Q4P_DOWN, c + Q4P_GU, R, sm, red, p0);
    }
}

/* ---- host side --------------------------------------------------------------------------- */

static size_t q4p_al(size_t v, size_t a) { return (v + a - 1) / a * a; }

size_t k_q4p_layout(struct q4p_args *a, int max_cols, size_t part_bytes, int max_nh, int max_ctx,
                    size_t smem_max)
{
    cudaFuncAttributes fa;
    if (max_cols > Q4P_MAX_COLS || a->S < 1 || cudaFuncGetAttributes(&fa, q4p_kernel) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    /* smem_max leaves 1 KB for static shared memory; this kernel's barriers take more */
    const size_t stat = fa.sharedSizeBytes, limit = smem_max + 1024 > stat ? smem_max + 1024 - stat : 0;
    const size_t in = (size_t)max_cols * 2 + (size_t)(max_cols / 128) * 8;
    const size_t att = ATT_ROW_SMEM(Q4P_NT, a->hd, (max_ctx + a->S - 1) / a->S) * sizeof(float);
    size_t off = q4p_al(in > att ? in : att, 128);
    a->aw_off = (int)off;
    off = q4p_al(off + (size_t)max_nh * a->S * sizeof(float), 128);
    a->part_off = (int)off;
    off = q4p_al(off + part_bytes, 128);
    if (off >= limit) return 0;
    size_t slots = (limit - off - 256) / ((size_t)Q4P_NW * Q4P_UNIT);
    if (slots > Q4P_MAXSLOTS) slots = Q4P_MAXSLOTS;
    if (a->slots > 0 && slots > (size_t)a->slots) slots = (size_t)a->slots;
    if (slots < 2) return 0;
    a->slots = (int)slots;
    a->sz_off = (int)off;
    off = q4p_al(off + (size_t)Q4P_NW * slots * 64, 128);
    a->ring_off = (int)off;
    off += (size_t)Q4P_NW * slots * 1024;
    if (off > limit) return 0;
    if (cudaFuncSetAttribute(q4p_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)off) != cudaSuccess ||
        cudaFuncSetAttribute(q4p_kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    int per = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per, q4p_kernel, Q4P_NT + (a->flags & Q4P_PRODUCER ? 32 : 0), off) !=
            cudaSuccess ||
        per < 1) {
        (void)cudaGetLastError();
        return 0;
    }
    return off;
}

enum lmp_status k_q4p_launch(cudaStream_t st, const struct q4p_args *a, size_t smem, int blocks,
                             struct lmp_err *err)
{
    CU_TRY(cudaMemsetAsync(a->cnt, 0, (size_t)a->n_layers * Q4P_PHASES * sizeof(unsigned), st),
           "clearing the decode counts");
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute at;
    memset(&at, 0, sizeof at);
    at.id = cudaLaunchAttributeCooperative; /* every block resident: the counts are waited for */
    at.val.cooperative = 1;
    cfg.gridDim = dim3((unsigned)blocks);
    cfg.blockDim = dim3(Q4P_NT + (a->flags & Q4P_PRODUCER ? 32 : 0));
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cfg.attrs = &at;
    cfg.numAttrs = 1;
    CU_TRY(cudaLaunchKernelEx(&cfg, q4p_kernel, *a), "q4 persistent tile decode kernel");
    return LMP_OK;
}
