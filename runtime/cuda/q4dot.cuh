/* The fp16 dot product of one 32-code chunk of the 4-bit Q4H layout (CUDA C++ only), shared
 * by the per-product kernels (kernels.cu) and the fused decode kernels (decode_q4.cu).
 * w: 4 words, code j of word k at bits 4j (column 8k + j); xq: the input's half2 words,
 * xq[k] = (x[8k + p], x[8k + p + 4]) for p = 0..3; zb = 1024 + zero in both halves. Codes
 * become exact fp16 (1024 + q) - (1024 + z), HFMA2 with x, every 16 products moved to fp32. */
#ifndef LMP_RT_CUDA_Q4DOT_CUH
#define LMP_RT_CUDA_Q4DOT_CUH

#include <cuda_fp16.h>
#include <stdint.h>

static __device__ __forceinline__ float q4h_dot(const uint4 w, const uint4 *xq, __half2 zb)
{
    const uint32_t ww[4] = {w.x, w.y, w.z, w.w};
    float d = 0.0f;
#pragma unroll
    for (int k2 = 0; k2 < 4; k2 += 2) {
        __half2 hacc = __float2half2_rn(0.0f);
#pragma unroll
        for (int kk = 0; kk < 2; kk++) {
            const int k = k2 + kk;
            const uint32_t u = ww[k];
            const uint4 xv = xq[k];
            const __half2 *xp = (const __half2 *)&xv;
#pragma unroll
            for (int p = 0; p < 4; p++) {
                uint32_t t = ((u >> (4 * p)) & 0x000F000Fu) | 0x64006400u;
                __half2 qv = __hsub2(*(const __half2 *)&t, zb);
                hacc = __hfma2(qv, xp[p], hacc);
            }
        }
        float2 f = __half22float2(hacc);
        d += f.x + f.y;
    }
    return d;
}

#endif
