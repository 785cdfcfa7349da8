/* Device helpers of the 4-bit tile decode kernels (decode_q4t.cu, decode_q4p.cu; CUDA C++
 * only): loads that bypass L1, the tensor-core step of one 1 KB item of codes against the
 * input's fp16 B fragments, its scaling, and the mbarrier waits of the bulk-copy rings.
 * The tile layout and the arithmetic are described at the top of decode_q4t.cu. */
#ifndef LMP_RT_CUDA_Q4T_CUH
#define LMP_RT_CUDA_Q4T_CUH

#include <cuda_fp16.h>
#include <stdint.h>

static __device__ __forceinline__ uint4 q4t_ld16(const uint4 *p)
{
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}
static __device__ __forceinline__ uint2 q4t_ld8(const uint2 *p)
{
    uint2 r;
    asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];" : "=r"(r.x), "=r"(r.y) : "l"(p));
    return r;
}

/* d += A (16x16 fp16, row) * B (16x8 fp16, col), fp32 */
static __device__ __forceinline__ void q4t_mma(float d[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                               uint32_t a3, uint32_t b0, uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* (a & m) | 0x64006400 in one LOP3 (the compiler makes two) */
static __device__ __forceinline__ uint32_t q4t_lop(uint32_t a, uint32_t m)
{
    uint32_t r;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(a), "r"(m), "r"(0x64006400u));
    return r;
}

/* one k16 step: the 8 codes of word w against the B fragment (b0: lo, b1: hi columns) */
static __device__ __forceinline__ void q4t_step(float d[4], uint32_t w, uint32_t b0, uint32_t b1)
{
    const uint32_t w8 = w >> 8;
    q4t_mma(d, q4t_lop(w, 0x000F000Fu), q4t_lop(w8, 0x000F000Fu), q4t_lop(w, 0x00F000F0u),
            q4t_lop(w8, 0x00F000F0u), b0, b1);
}

/* the 1 KB item against the input: xb = the B fragments of its 8 steps (4 x uint4 of two
 * steps each), returns rows g (d[0]) and g + 8 (d[2]) */
static __device__ __forceinline__ void q4t_item(float d[4], const uint4 w0, const uint4 w1,
                                                const uint4 *xb)
{
    d[0] = d[1] = d[2] = d[3] = 0.0f;
    q4t_step(d, w0.x, xb[0].x, xb[0].y);
    q4t_step(d, w0.y, xb[0].z, xb[0].w);
    q4t_step(d, w0.z, xb[1].x, xb[1].y);
    q4t_step(d, w0.w, xb[1].z, xb[1].w);
    q4t_step(d, w1.x, xb[2].x, xb[2].y);
    q4t_step(d, w1.y, xb[2].z, xb[2].w);
    q4t_step(d, w1.z, xb[3].x, xb[3].y);
    q4t_step(d, w1.w, xb[3].z, xb[3].w);
}

/* acc of a chunk -> the tile sums: row g += s (acc - off - z X), row g + 8 likewise */
static __device__ __forceinline__ void q4t_scale(float &ya, float &yb, const float d[4], uint2 sz,
                                                 float2 ox)
{
    const float2 a = __half22float2(*(const __half2 *)&sz.x), b = __half22float2(*(const __half2 *)&sz.y);
    ya = fmaf(a.x, d[0] - fmaf(a.y, ox.y, ox.x), ya);
    yb = fmaf(b.x, d[2] - fmaf(b.y, ox.y, ox.x), yb);
}

static __device__ __forceinline__ float q4t_silu(float g) { return g / (1.0f + expf(-g)); }

static __device__ __forceinline__ uint32_t q4t_saddr(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}
static __device__ __forceinline__ void q4t_bar_init(uint32_t bar)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(bar) : "memory");
}
static __device__ __forceinline__ void q4t_bar_wait(uint32_t bar, uint32_t phase)
{
    asm volatile("{\n"
                 ".reg .pred P1;\n"
                 "LAB_WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
                 "@P1 bra DONE;\n"
                 "bra LAB_WAIT;\n"
                 "DONE:\n"
                 "}\n" ::"r"(bar),
                 "r"(phase)
                 : "memory");
}
/* The inputs' power of two: x 2^E puts max |x| (mx, after the norm) in [2^13, 2^14), so the
 * fp16 B fragments keep their precision; 0 for a zero or non-finite max. */
static __device__ __forceinline__ int q4t_scale_exp(float mx)
{
    int e = 0;
    if (!(mx > 0.0f && mx <= 3.0e38f)) return 0;
    frexpf(mx, &e); /* mx = f 2^e, f in [0.5, 1) */
    return 14 - e;
}
/* One lane's B fragment pair from x[k], x[k + 1] (lo) and x[k + 8], x[k + 9] (hi) times sc:
 * (lo, hi / 16) as fp16, and its share of the chunk's offset sum and of sum x (fp16 values). */
static __device__ __forceinline__ uint2 q4t_bfrag(float l0, float l1, float h0, float h1, float sc, float &off,
                                                  float &X)
{
    const __half2 lo = __floats2half2_rn(l0 * sc, l1 * sc), hi = __floats2half2_rn(h0 * sc, h1 * sc);
    const __half2 hi16 = __hmul2(hi, __float2half2_rn(0.0625f));
    uint2 u;
    u.x = *(const uint32_t *)&lo;
    u.y = *(const uint32_t *)&hi16;
    const float2 fl = __half22float2(lo), fh = __half22float2(hi);
    off = 1024.0f * (fl.x + fl.y) + 64.0f * (fh.x + fh.y);
    X = fl.x + fl.y + fh.x + fh.y;
    return u;
}
#endif
