/* Causal attention of one query row and head over the position-major caches (CUDA C++
 * only): the block of NT threads computes out = softmax(q K^T * scale) V over positions
 * 0 .. T-1. Used by attention_kernel (kernels.cu, one block per row and head) and by the
 * persistent decode kernel (decode_q4.cu); CG: read q and the caches through L2 only
 * (ld.global.cg), for data another SM wrote in the same kernel.
 *
 * When hd / 4 divides 32 (hd 4 ... 128) a K row is read as hd / 4 float4 lanes, 32 / (hd / 4)
 * rows per warp and 4 such passes in flight, and P V by threads over (position slice, 4
 * dimensions); otherwise a warp per position, lanes over the head dimension, and threads over
 * (position slice, dimension). sm: ATT_ROW_SMEM(NT, hd, T) floats, 16-byte aligned. */
#ifndef LMP_RT_CUDA_ATTENTION_CUH
#define LMP_RT_CUDA_ATTENTION_CUH

#include "reduce.cuh"

#define ATT_ROW_SMEM(nt, hd, max_t) (4 * (size_t)(nt) + 36 + (size_t)(hd) + (size_t)(max_t))

/* floats of a split attention's part in shared memory (its output, max, exp sum; 16-byte
 * multiple): att_split_kernel, q4t_aokernel */
static __host__ __device__ __forceinline__ int att_part_floats(int hd) { return (hd + 2 + 3) & ~3; }

template <bool CG>
static __device__ __forceinline__ float att_ld(const float *p)
{
    return CG ? __ldcg(p) : *p;
}
template <bool CG>
static __device__ __forceinline__ float4 att_ld4(const float *p)
{
    return CG ? __ldcg((const float4 *)p) : *(const float4 *)p;
}

/* rows [t0, t1) of head kh of both caches into L2, by the block's nt threads (before a
 * dependency wait: rows of earlier steps) */
static __device__ __forceinline__ void att_prefetch(const float *kc, const float *vc, int t0, int t1,
                                                    int kvd, int kh, int hd, int nt)
{
    const int lines = (hd * 4 + 127) / 128; /* 128-byte lines per row and head */
    for (int t = threadIdx.x; t < (t1 - t0) * lines; t += nt) {
        const size_t off = (size_t)(t0 + t / lines) * kvd + (size_t)kh * hd + (size_t)(t % lines) * 32;
        asm volatile("prefetch.global.L2 [%0];" ::"l"(kc + off));
        asm volatile("prefetch.global.L2 [%0];" ::"l"(vc + off));
    }
}

/* thread 0 of a block with a timeline (tb): %globaltimer into tb[k] */
static __device__ __forceinline__ void att_mark(unsigned long long *tb, int k)
{
    if (tb) asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(tb[k]));
}

/* tb (thread 0, or NULL): the timeline of the phases, tb[0..3] after q, the scores, the
 * softmax and P V. ml (or NULL): the scores' max and the sum of their exponentials (a part
 * of a split attention, att_split_kernel). */
template <int NT, bool CG>
static __device__ void att_row(float *o, const float *qi, const float *kc, const float *vc, int T,
                               int kvd, int kh, int hd, float scale, float *sm,
                               unsigned long long *tb = NULL, float *ml = NULL)
{
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, nw = NT / 32;
    float *part = sm, *red = part + 4 * NT, *qs = red + 36, *s = qs + hd;
    for (int d = tid; d < hd; d += NT) qs[d] = att_ld<CG>(qi + d);
    BLOCK_SYNC();
    att_mark(tb, 0);
    const int L = hd / 4; /* float4 lanes per row */
    const bool vec = hd % 4 == 0 && L <= 32 && 32 % L == 0;
    if (vec) {
        const int rpw = 32 / L, sub = lane / L, d4 = lane % L; /* rows per warp pass */
        const float4 qv = ((const float4 *)qs)[d4];
        for (int b = w * rpw; b < T; b += 4 * nw * rpw) { /* b uniform per warp */
            float a[4];
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const int t = b + sub + r * nw * rpw;
                a[r] = 0.0f;
                if (t < T) {
                    const float4 k = att_ld4<CG>(kc + (size_t)t * kvd + (size_t)kh * hd + 4 * d4);
                    a[r] = qv.x * k.x + qv.y * k.y + qv.z * k.z + qv.w * k.w;
                }
            }
#pragma unroll
            for (int r = 0; r < 4; r++) {
                for (int off = L / 2; off > 0; off >>= 1) a[r] += __shfl_xor_sync(0xffffffffu, a[r], off);
                const int t = b + sub + r * nw * rpw;
                if (d4 == 0 && t < T) s[t] = a[r] * scale;
            }
        }
    } else {
        /* two positions per warp and step: their loads are in flight together */
        for (int t0 = w; t0 < T; t0 += 2 * nw) {
            const int t1 = t0 + nw < T ? t0 + nw : t0;
            const float *k0 = kc + (size_t)t0 * kvd + (size_t)kh * hd;
            const float *k1 = kc + (size_t)t1 * kvd + (size_t)kh * hd;
            float a0 = 0.0f, a1 = 0.0f;
            for (int d = lane; d < hd; d += 32) {
                a0 += qs[d] * att_ld<CG>(k0 + d);
                a1 += qs[d] * att_ld<CG>(k1 + d);
            }
            a0 = warp_sum(a0);
            a1 = warp_sum(a1);
            if (lane == 0) {
                s[t0] = a0 * scale;
                s[t1] = a1 * scale; /* t1 == t0 when past the end: the same value */
            }
        }
    }
    BLOCK_SYNC();
    att_mark(tb, 1);
    float mx = -INFINITY, sum = 0.0f;
    if (vec && T <= 32) {
        /* up to 32 positions (a share of the split attention): warp 0 alone, one barrier;
           the same max and sum as below (the other warps' parts are zeros) and only warp 0
           (tid < L) uses the sum */
        if (w == 0) {
            const float v = lane < T ? s[lane] : -INFINITY;
            mx = warp_max(v);
            const float e = lane < T ? expf(v - mx) : 0.0f;
            if (lane < T) s[lane] = e;
            sum = warp_sum(e);
        }
        BLOCK_SYNC();
    } else {
        for (int t = tid; t < T; t += NT) mx = fmaxf(mx, s[t]);
        mx = block_max(mx, red);
        for (int t = tid; t < T; t += NT) {
            float e = expf(s[t] - mx);
            s[t] = e;
            sum += e;
        }
        sum = block_sum(sum, red); /* ends with a barrier: s[] is complete */
    }
    att_mark(tb, 2);
    if (ml && tid == 0) ml[0] = mx, ml[1] = sum;
    const float *vb = vc + (size_t)kh * hd;
    if (vec) {
        const int ng = NT / L, gi = tid / L, d4 = tid % L;
        float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 4
        for (int t = gi; t < T; t += ng) {
            const float p = s[t];
            const float4 v = att_ld4<CG>(vb + (size_t)t * kvd + 4 * d4);
            a.x += p * v.x, a.y += p * v.y, a.z += p * v.z, a.w += p * v.w;
        }
        ((float4 *)part)[tid] = a;
        BLOCK_SYNC();
        att_mark(tb, 3);
        if (tid < L) {
            float4 acc = ((const float4 *)part)[tid];
            for (int g = 1; g < ng; g++) {
                const float4 b = ((const float4 *)part)[g * L + tid];
                acc.x += b.x, acc.y += b.y, acc.z += b.z, acc.w += b.w;
            }
            const float r = 1.0f / sum;
            o[4 * tid] = acc.x * r, o[4 * tid + 1] = acc.y * r;
            o[4 * tid + 2] = acc.z * r, o[4 * tid + 3] = acc.w * r;
        }
    } else if (hd <= NT) {
        const int ng = NT / hd, gi = tid / hd, d = tid % hd;
        float a = 0.0f;
        if (gi < ng) {
#pragma unroll 4
            for (int t = gi; t < T; t += ng) a += s[t] * att_ld<CG>(vb + (size_t)t * kvd + d);
        }
        part[tid] = a;
        BLOCK_SYNC();
        if (gi == 0) {
            float acc = part[d];
            for (int g = 1; g < ng; g++) acc += part[g * hd + d];
            o[d] = acc / sum;
        }
    } else {
        for (int d = tid; d < hd; d += NT) {
            float a = 0.0f;
            for (int t = 0; t < T; t++) a += s[t] * att_ld<CG>(vb + (size_t)t * kvd + d);
            o[d] = a / sum;
        }
    }
}

#endif
