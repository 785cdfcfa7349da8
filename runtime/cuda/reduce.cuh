/* Warp and block reductions shared by the CUDA kernels (CUDA C++ only). */
#ifndef LMP_RT_CUDA_REDUCE_CUH
#define LMP_RT_CUDA_REDUCE_CUH

#include <math.h>

static __device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* The block's barrier and its warp count as these helpers (and attention.cuh) see them: a
 * kernel whose block has warps that do not take part (decode_q4p.cu's copy warp) defines
 * both before including this header. */
#ifndef BLOCK_SYNC
#define BLOCK_SYNC() __syncthreads()
#define BLOCK_WARPS ((int)(blockDim.x >> 5))
#endif

/* Sum / max over the block (blockDim.x a multiple of 32, <= 1024); every thread gets it.
 * red: 33 floats of shared memory. */
static __device__ __forceinline__ float block_sum(float v, float *red)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = BLOCK_WARPS;
    v = warp_sum(v);
    BLOCK_SYNC();
    if (lane == 0) red[w] = v;
    BLOCK_SYNC();
    if (w == 0) {
        float t = lane < nw ? red[lane] : 0.0f;
        t = warp_sum(t);
        if (lane == 0) red[32] = t;
    }
    BLOCK_SYNC();
    return red[32];
}
static __device__ __forceinline__ float block_max(float v, float *red)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = BLOCK_WARPS;
    v = warp_max(v);
    BLOCK_SYNC();
    if (lane == 0) red[w] = v;
    BLOCK_SYNC();
    if (w == 0) {
        float t = lane < nw ? red[lane] : -INFINITY;
        t = warp_max(t);
        if (lane == 0) red[32] = t;
    }
    BLOCK_SYNC();
    return red[32];
}
/* Sum of s and max of m over the block in one pass; red: 66 floats of shared memory. */
static __device__ __forceinline__ void block_sum_max(float &s, float &m, float *red)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = BLOCK_WARPS;
    s = warp_sum(s);
    m = warp_max(m);
    BLOCK_SYNC();
    if (lane == 0) red[w] = s, red[33 + w] = m;
    BLOCK_SYNC();
    if (w == 0) {
        float t = lane < nw ? red[lane] : 0.0f, u = lane < nw ? red[33 + lane] : -INFINITY;
        t = warp_sum(t);
        u = warp_max(u);
        if (lane == 0) red[32] = t, red[65] = u;
    }
    BLOCK_SYNC();
    s = red[32];
    m = red[65];
}

/* Programmatic dependent launch (sm_90): a kernel launched with the
 * programmatic-stream-serialization attribute may start while the previous kernel of the
 * stream still runs; pdl_wait() blocks until that kernel has completed and its writes are
 * visible, so nothing written by earlier kernels may be read (or anything they read be
 * written) before it. pdl_trigger() lets the next such kernel launch. Both are no-ops
 * for a normal launch. */
static __device__ __forceinline__ void pdl_wait(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
static __device__ __forceinline__ void pdl_trigger(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

#endif
