/* Kernels of the CPU forward: matmul, RMSNorm, RoPE, attention, SwiGLU. Each fast kernel
 * is followed by its scalar *_ref sibling, the specification it is tested against. */
#include "runtime.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

/* Work (multiply-adds) under which a kernel stays on one thread. */
#define PAR_MIN_WORK (1 << 16)

int lmp_rt_threads(int n_threads)
{
    if (n_threads >= 1) return n_threads;
    int t = omp_get_max_threads();
    return t >= 1 ? t : 1;
}

/* exp(x) for x in [-87, 88] (clamped outside), about 1 ulp: x = n ln2 + r, |r| <= ln2/2,
 * exp(r) by its degree-7 Taylor polynomial (truncation < 1e-8 relative), times 2^n built in
 * the exponent bits. Branch-free so that loops calling it vectorize. */
static inline float exp_fast(float x)
{
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    /* round to nearest with the 1.5*2^23 trick (rintf would not vectorize everywhere) */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693145751953125f;
    r = r - n * 1.42860682030941723212e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &e, 4);
    return p * scale;
}

/* ---- matmul -------------------------------------------------------------------------- */

static void matvec(float *y, const float *x, const float *w, const float *b, int in, int out,
                   int nt)
{
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int r = 0; r < out; r++) {
        const float *wr = w + (size_t)r * in;
        float acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int c = 0; c < in; c++) acc += wr[c] * x[c];
        y[r] = acc + (b ? b[r] : 0.0f);
    }
}

void lmp_rt_matmul(float *y, const float *x, const float *w, const float *b, int n, int in,
                   int out, int n_threads)
{
    if (n <= 0 || out <= 0) return;
    if (in <= 0) {
        for (long i = 0; i < (long)n * out; i++) y[i] = b ? b[i % out] : 0.0f;
        return;
    }
    if (n == 1) {
        /* below ~64K multiply-adds a fork/join costs more than it saves */
        int nt = (size_t)in * (size_t)out >= PAR_MIN_WORK ? lmp_rt_threads(n_threads) : 1;
        matvec(y, x, w, b, in, out, nt);
        return;
    }
    /* the output features in chunks of 64 over OpenMP threads, each chunk one OpenBLAS call
     * with OpenBLAS held to one thread: its own threads and OpenMP's, taking turns between
     * the forward's parallel loops and the products, spin against each other (1.1B shape,
     * F16 weights, 2 cores: pp64 74 -> ~100 tokens/s; docs/BENCHMARKS.md). The chunks do not
     * depend on the thread count, so neither do the results. */
    const int nt = (size_t)n * in * out >= PAR_MIN_WORK ? lmp_rt_threads(n_threads) : 1;
    const int nch = (out + 63) / 64;
    const int blas_prev = openblas_get_num_threads();
    openblas_set_num_threads(1);
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int c = 0; c < nch; c++) {
        const int r0 = 64 * c, r1 = r0 + 64 < out ? r0 + 64 : out;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, r1 - r0, in, 1.0f, x, in,
                    w + (size_t)r0 * in, in, 0.0f, y + r0, out);
    }
    openblas_set_num_threads(blas_prev);
    if (b)
        for (int i = 0; i < n; i++) {
            float *yr = y + (size_t)i * out;
            for (int r = 0; r < out; r++) yr[r] += b[r];
        }
}

void lmp_rt_matmul_ref(float *y, const float *x, const float *w, const float *b, int n, int in,
                       int out, int n_threads)
{
    (void)n_threads;
    for (int i = 0; i < n; i++)
        for (int r = 0; r < out; r++) {
            const float *wr = w + (size_t)r * in, *xi = x + (size_t)i * in;
            float acc = 0;
            for (int c = 0; c < in; c++) acc += wr[c] * xi[c];
            y[(size_t)i * out + r] = acc + (b ? b[r] : 0.0f);
        }
}

/* ---- RMSNorm ------------------------------------------------------------------------- */

void lmp_rt_rmsnorm(float *y, const float *x, const float *w, int n, int dim, float eps)
{
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * dim;
        float *yi = y + (size_t)i * dim;
        float ss = 0;
#pragma omp simd reduction(+ : ss)
        for (int c = 0; c < dim; c++) ss += xi[c] * xi[c];
        float inv = 1.0f / sqrtf(ss / (float)dim + eps);
#pragma omp simd
        for (int c = 0; c < dim; c++) yi[c] = xi[c] * inv * w[c];
    }
}

void lmp_rt_rmsnorm_ref(float *y, const float *x, const float *w, int n, int dim, float eps)
{
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * dim;
        float *yi = y + (size_t)i * dim;
        float ss = 0;
        for (int c = 0; c < dim; c++) ss += xi[c] * xi[c];
        float inv = 1.0f / sqrtf(ss / (float)dim + eps);
        for (int c = 0; c < dim; c++) yi[c] = xi[c] * inv * w[c];
    }
}

/* ---- RoPE ---------------------------------------------------------------------------- */

void lmp_rt_rope_table(float *cs, int pos0, int n, int hd, float theta)
{
    /* The angle is rounded to float the way transformers computes it (inv_freq =
     * 1 / theta^(2i/hd) and pos * inv_freq in float32): with exact angles the logits of
     * stories260K drift from transformers' by up to 7e-5 at position 500, with these by
     * 2e-5. cos/sin of that float angle are then evaluated in double. */
    int half = hd / 2;
    for (int r = 0; r < n; r++)
        for (int i = 0; i < half; i++) {
            float inv = 1.0f / powf(theta, (float)(2 * i) / (float)hd);
            float a = (float)(pos0 + r) * inv;
            cs[(size_t)r * hd + 2 * i] = (float)cos((double)a);
            cs[(size_t)r * hd + 2 * i + 1] = (float)sin((double)a);
        }
}

void lmp_rt_rope(float *x, int n, int n_heads, int hd, const float *cs)
{
    int half = hd / 2;
    for (int r = 0; r < n; r++) {
        const float *c = cs + (size_t)r * hd;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)r * n_heads + h) * hd;
#pragma omp simd
            for (int i = 0; i < half; i++) {
                float x0 = v[2 * i], x1 = v[2 * i + 1], co = c[2 * i], si = c[2 * i + 1];
                v[2 * i] = x0 * co - x1 * si;
                v[2 * i + 1] = x0 * si + x1 * co;
            }
        }
    }
}

void lmp_rt_rope_ref(float *x, int n, int n_heads, int hd, const float *cs)
{
    for (int r = 0; r < n; r++)
        for (int h = 0; h < n_heads; h++)
            for (int i = 0; i < hd / 2; i++) {
                float *v = x + ((size_t)r * n_heads + h) * hd + 2 * i;
                float co = cs[(size_t)r * hd + 2 * i], si = cs[(size_t)r * hd + 2 * i + 1];
                float x0 = v[0], x1 = v[1];
                v[0] = x0 * co - x1 * si;
                v[1] = x0 * si + x1 * co;
            }
}

/* ---- attention ----------------------------------------------------------------------- */

/* 8-float vectors (GCC vector extensions: AVX2 / AVX-512 / NEON / SSE, whatever -march
 * gives). The cache is position-innermost, so every loop runs over positions, contiguous,
 * whatever the head size. A row of T positions is covered by blocks of 8; the last block
 * is moved back to end at T (it overlaps the one before) so nothing is read past T. */
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef float v8fu __attribute__((vector_size(32), aligned(4), may_alias));

static inline v8f ld8(const float *p) { return *(const v8fu *)p; }
static inline void st8(float *p, v8f v) { *(v8fu *)p = v; }
static inline v8f splat8(float x) { return (v8f){x, x, x, x, x, x, x, x}; }
static inline v8f sel8(v8i c, v8f a, v8f b) { return (v8f)(((v8i)a & c) | ((v8i)b & ~c)); }
static inline v8f max8(v8f a, v8f b) { return sel8(a > b, a, b); }
static inline float hsum8(v8f v)
{
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}
static inline float hmax8(v8f v)
{
    float m = v[0];
    for (int i = 1; i < 8; i++) m = v[i] > m ? v[i] : m;
    return m;
}

/* exp_fast on 8 lanes */
static inline v8f exp8(v8f x)
{
    x = max8(x, splat8(-87.0f));
    x = sel8(x > splat8(88.0f), splat8(88.0f), x);
    v8f n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    v8f r = x - n * 0.693145751953125f;
    r = r - n * 1.42860682030941723212e-6f;
    v8f p = splat8(1.0f / 5040.0f);
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    v8i e = (__builtin_convertvector(n, v8i) + 127) << 23;
    return p * (v8f)e;
}

/* R consecutive query rows (R <= 4) of one head: row r attends to positions [0, T0 + r).
 * The rows share every K and V load. q, o: row stride qs. s, p: (R, T0 + R - 1) scratch.
 * Needs T0 + R - 1 >= 8. */
static inline __attribute__((always_inline)) void
attend_rows(const int R, float *o, const float *q, int qs, const float *k, const float *v, int ld,
            int T0, int hd, float scale, float *s, float *p)
{
    const int T = T0 + R - 1, full = T & ~7, rem = T & 7, nblk = full + (rem ? 8 : 0);
    v8f acc[4];
    for (int b = 0; b < nblk; b += 8) {
        int t0 = b < full ? b : T - 8;
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) acc[r] = splat8(0);
        for (int d = 0; d < hd; d++) {
            v8f kv = ld8(k + (size_t)d * ld + t0);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r] += splat8(q[(size_t)r * qs + d]) * kv;
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) st8(s + (size_t)r * T + t0, acc[r] * scale);
    }
    float inv[4];
    v8f ptail[4];
    const v8i lane = {0, 1, 2, 3, 4, 5, 6, 7};
    const v8i keep = lane >= (v8i){0, 0, 0, 0, 0, 0, 0, 0} + (8 - rem);
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        float *sr = s + (size_t)r * T, *pr = p + (size_t)r * T;
        for (int t = T0 + r; t < T; t++) sr[t] = -INFINITY; /* later rows' positions */
        v8f vmx = splat8(-INFINITY);
        for (int b = 0; b < nblk; b += 8) vmx = max8(vmx, ld8(sr + (b < full ? b : T - 8)));
        v8f mx = splat8(hmax8(vmx)), vsum = splat8(0);
        for (int b = 0; b < nblk; b += 8) {
            int t0 = b < full ? b : T - 8;
            v8f e = exp8(ld8(sr + t0) - mx);
            st8(pr + t0, e);
            if (b < full) vsum += e;
        }
        /* masked positions added exp(-87) ~ 1e-38 to vsum: far below its rounding */
        for (int t = T0 + r; t < T; t++) pr[t] = 0;
        float sum = hsum8(vsum);
        for (int t = full; t < T; t++) sum += pr[t];
        inv[r] = 1.0f / sum;
        ptail[r] = rem ? (v8f)((v8i)ld8(pr + T - 8) & keep) : splat8(0);
    }
    for (int d = 0; d < hd; d++) {
        const float *vr = v + (size_t)d * ld;
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) acc[r] = splat8(0);
        for (int t = 0; t < full; t += 8) {
            v8f vv = ld8(vr + t);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r] += ld8(p + (size_t)r * T + t) * vv;
        }
        if (rem) {
            v8f vv = ld8(vr + T - 8);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r] += ptail[r] * vv;
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) o[(size_t)r * qs + d] = hsum8(acc[r]) * inv[r];
    }
}

/* Short rows (T < 8): plain loops. */
static void attend_short(float *o, const float *q, const float *k, const float *v, int ld, int T,
                         int hd, float scale, float *s)
{
    float mx = -INFINITY, sum = 0;
    for (int t = 0; t < T; t++) {
        float a = 0;
        for (int d = 0; d < hd; d++) a += q[d] * k[(size_t)d * ld + t];
        s[t] = a * scale;
        mx = s[t] > mx ? s[t] : mx;
    }
    for (int t = 0; t < T; t++) sum += s[t] = exp_fast(s[t] - mx);
    for (int d = 0; d < hd; d++) {
        float a = 0;
        for (int t = 0; t < T; t++) a += s[t] * v[(size_t)d * ld + t];
        o[d] = a / sum;
    }
}

void lmp_rt_attention(float *out, const float *q, const float *kc, const float *vc, int ld, int n,
                      int pos, int n_heads, int n_kv, int hd, float *scratch, int n_threads)
{
    int nt = lmp_rt_threads(n_threads), group = n_heads / n_kv, qd = n_heads * hd;
    float scale = 1.0f / sqrtf((float)hd);
    const int ngrp = (n + 3) / 4; /* blocks of 4 query rows */
    long total = (long)n_heads * ngrp;
    size_t kvstride = (size_t)hd * ld, T = (size_t)(pos + n);
    int par = nt > 1 && total > 1 && (size_t)n_heads * n * T * (size_t)hd >= PAR_MIN_WORK;
#pragma omp parallel num_threads(nt) if (par)
    {
        float *s = scratch + (size_t)omp_get_thread_num() * 8 * T;
#pragma omp for schedule(static)
        for (long w = 0; w < total; w++) {
            int h = (int)(w / ngrp), i0 = (int)(w % ngrp) * 4, kh = h / group;
            int R = n - i0 < 4 ? n - i0 : 4;
            float *o = out + (size_t)i0 * qd + (size_t)h * hd;
            const float *qi = q + (size_t)i0 * qd + (size_t)h * hd;
            const float *k = kc + kh * kvstride, *v = vc + kh * kvstride;
            int T0 = pos + i0 + 1; /* keys of the block's first row */
            if (R == 4 && T0 + 3 >= 8) {
                attend_rows(4, o, qi, qd, k, v, ld, T0, hd, scale, s, s + 4 * T);
                continue;
            }
            for (int r = 0; r < R; r++) {
                if (T0 + r >= 8)
                    attend_rows(1, o + (size_t)r * qd, qi + (size_t)r * qd, qd, k, v, ld, T0 + r,
                                hd, scale, s, s + T);
                else
                    attend_short(o + (size_t)r * qd, qi + (size_t)r * qd, k, v, ld, T0 + r, hd,
                                 scale, s);
            }
        }
    }
}

void lmp_rt_attention_ref(float *out, const float *q, const float *kc, const float *vc, int ld,
                          int n, int pos, int n_heads, int n_kv, int hd, float *scratch,
                          int n_threads)
{
    (void)n_threads;
    int group = n_heads / n_kv, qd = n_heads * hd;
    float scale = 1.0f / sqrtf((float)hd);
    for (int i = 0; i < n; i++)
        for (int h = 0; h < n_heads; h++) {
            const float *qi = q + (size_t)i * qd + (size_t)h * hd;
            const float *k = kc + (size_t)(h / group) * hd * ld;
            const float *v = vc + (size_t)(h / group) * hd * ld;
            int T = pos + i + 1;
            float mx = -INFINITY;
            for (int t = 0; t < T; t++) {
                float a = 0;
                for (int d = 0; d < hd; d++) a += qi[d] * k[(size_t)d * ld + t];
                scratch[t] = a * scale;
                if (scratch[t] > mx) mx = scratch[t];
            }
            float sum = 0;
            for (int t = 0; t < T; t++) {
                scratch[t] = expf(scratch[t] - mx);
                sum += scratch[t];
            }
            float *o = out + (size_t)i * qd + (size_t)h * hd;
            for (int d = 0; d < hd; d++) {
                float a = 0;
                for (int t = 0; t < T; t++) a += scratch[t] * v[(size_t)d * ld + t];
                o[d] = a / sum;
            }
        }
}

/* ---- SwiGLU -------------------------------------------------------------------------- */

void lmp_rt_swiglu(float *g, const float *u, long count)
{
#pragma omp simd
    for (long i = 0; i < count; i++) g[i] = g[i] / (1.0f + exp_fast(-g[i])) * u[i];
}

void lmp_rt_swiglu_ref(float *g, const float *u, long count)
{
    for (long i = 0; i < count; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}
