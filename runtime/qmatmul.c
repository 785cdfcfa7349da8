/* Fused dequantise x matvec / GEMM for packed Q2/Q3/Q4/Q8 weights: the scalar references
 * and the AVX2 + OpenMP (+ OpenBLAS for the GEMM) paths. See qmatmul.h. */
#include "qmatmul.h"

#include <cblas.h>
#include <string.h>

#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

static inline float h2f(uint16_t h)
{
#ifdef __F16C__
    return _cvtsh_ss(h);
#else
    return lmp_f16_to_f32(h);
#endif
}

/* Rows per GEMM tile: about 1 MiB of dequantised floats. */
static int64_t tile_rows(const struct lmp_qview *w)
{
    int64_t rb = (int64_t)(262144 / w->cols);
    if (rb < 8) rb = 8;
    if (rb > 256) rb = 256;
    if (rb > w->rows) rb = w->rows;
    return rb;
}

size_t lmp_qmatmul_scratch_floats(const struct lmp_qview *w, int64_t n)
{
    (void)n;
    return (size_t)(tile_rows(w) + 1) * (size_t)w->cols;
}

/* Input in storage order: x itself, or gathered through the perm into buf. */
static const float *gather_x(const struct lmp_qview *w, const float *x, float *buf)
{
    if (!w->perm) return x;
    for (int64_t j = 0; j < w->cols; j++) buf[j] = x[w->perm[j]];
    return buf;
}

/* ---- reference ----------------------------------------------------------------------- */

static float dot_row_ref(const struct lmp_qview *w, int64_t r, const float *xp)
{
    const uint8_t *row = w->codes + (size_t)r * w->row_bytes;
    const uint16_t *s = w->scales + r * w->n_groups, *z = w->zeros + r * w->n_groups;
    double acc = 0.0;
    for (int64_t j = 0; j < w->cols; j++) {
        int64_t g = j / w->group;
        float wj = ((float)lmp_qpack_get(row, j, w->bits) - lmp_f16_to_f32(z[g])) *
                   lmp_f16_to_f32(s[g]);
        acc += (double)wj * (double)xp[j];
    }
    return (float)acc;
}

void lmp_qmatvec_ref(const struct lmp_qview *w, const float *x, float *y, float *scratch)
{
    const float *xp = gather_x(w, x, scratch);
    for (int64_t r = 0; r < w->rows; r++) y[r] = dot_row_ref(w, r, xp);
}

void lmp_qgemm_ref(const struct lmp_qview *w, const float *X, int64_t n, float *Y,
                   float *scratch)
{
    for (int64_t i = 0; i < n; i++) {
        const float *xp = gather_x(w, X + i * w->cols, scratch);
        for (int64_t r = 0; r < w->rows; r++) Y[i * w->rows + r] = dot_row_ref(w, r, xp);
    }
}

/* ---- fast kernels ---------------------------------------------------------------------- */

#ifdef __AVX2__

int lmp_qmatmul_have_avx2(void) { return 1; }

/* Codes c .. c+7 (c a multiple of 8, so they start on a byte: 8 codes are exactly `bits`
 * bytes at row + c/8*bits) as floats. Reads exactly those bytes. */
static inline __attribute__((always_inline)) __m256 unpack8(const uint8_t *p, int bits)
{
    __m256i v;
    if (bits == 8) {
        long long u;
        memcpy(&u, p, 8);
        v = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(u));
    } else if (bits == 4) {
        uint32_t u;
        memcpy(&u, p, 4);
        v = _mm256_srlv_epi32(_mm256_set1_epi32((int)u), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28));
        v = _mm256_and_si256(v, _mm256_set1_epi32(15));
    } else if (bits == 3) {
        uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16;
        v = _mm256_srlv_epi32(_mm256_set1_epi32((int)u), _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21));
        v = _mm256_and_si256(v, _mm256_set1_epi32(7));
    } else {
        uint16_t u;
        memcpy(&u, p, 2);
        v = _mm256_srlv_epi32(_mm256_set1_epi32((int)u), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14));
        v = _mm256_and_si256(v, _mm256_set1_epi32(3));
    }
    return _mm256_cvtepi32_ps(v);
}

static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Per-lane scale and zero for codes c .. c+7 when groups are not multiples of 8. */
static inline void lane_params(const uint16_t *s, const uint16_t *z, int64_t c, int group,
                               __m256 *sv, __m256 *zv)
{
    float sl[8], zl[8];
    for (int l = 0; l < 8; l++) {
        int64_t g = (c + l) / group;
        sl[l] = h2f(s[g]);
        zl[l] = h2f(z[g]);
    }
    *sv = _mm256_loadu_ps(sl);
    *zv = _mm256_loadu_ps(zl);
}

/* sum_j w[r][j] * xp[j] for one row; bits is a constant after inlining. */
static inline __attribute__((always_inline)) float dot_row_avx2(const struct lmp_qview *w,
                                                                 int64_t r, const float *xp,
                                                                 int bits)
{
    const uint8_t *row = w->codes + (size_t)r * w->row_bytes;
    const uint16_t *s = w->scales + r * w->n_groups, *z = w->zeros + r * w->n_groups;
    const int64_t cols = w->cols;
    const int group = w->group;
    __m256 acc = _mm256_setzero_ps();
    float tail = 0.0f;
    if (group % 8 == 0) {
        for (int64_t g = 0; g < w->n_groups; g++) {
            int64_t c = g * group, c1 = c + group < cols ? c + group : cols;
            float sg = h2f(s[g]), zg = h2f(z[g]);
            __m256 zv = _mm256_set1_ps(zg), ag = _mm256_setzero_ps();
            for (; c + 8 <= c1; c += 8) {
                __m256 q = unpack8(row + (c >> 3) * bits, bits);
                ag = _mm256_fmadd_ps(_mm256_sub_ps(q, zv), _mm256_loadu_ps(xp + c), ag);
            }
            acc = _mm256_fmadd_ps(ag, _mm256_set1_ps(sg), acc);
            for (; c < c1; c++) tail += ((float)lmp_qpack_get(row, c, bits) - zg) * sg * xp[c];
        }
    } else {
        int64_t c = 0;
        for (; c + 8 <= cols; c += 8) {
            __m256 sv, zv;
            lane_params(s, z, c, group, &sv, &zv);
            __m256 q = unpack8(row + (c >> 3) * bits, bits);
            acc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_sub_ps(q, zv), sv), _mm256_loadu_ps(xp + c), acc);
        }
        for (; c < cols; c++) {
            int64_t g = c / group;
            tail += ((float)lmp_qpack_get(row, c, bits) - h2f(z[g])) * h2f(s[g]) * xp[c];
        }
    }
    return hsum8(acc) + tail;
}

/* Row r dequantised into out (cols), natural order (scattered through the perm if any). */
static inline __attribute__((always_inline)) void dequant_row_avx2(const struct lmp_qview *w,
                                                                    int64_t r, float *out,
                                                                    int bits)
{
    const uint8_t *row = w->codes + (size_t)r * w->row_bytes;
    const uint16_t *s = w->scales + r * w->n_groups, *z = w->zeros + r * w->n_groups;
    const int64_t cols = w->cols;
    const int group = w->group;
    const int32_t *perm = w->perm;
    int64_t c = 0;
    for (; c + 8 <= cols; c += 8) {
        __m256 sv, zv;
        if (group % 8 == 0) {
            sv = _mm256_set1_ps(h2f(s[c / group]));
            zv = _mm256_set1_ps(h2f(z[c / group]));
        } else {
            lane_params(s, z, c, group, &sv, &zv);
        }
        __m256 v = _mm256_mul_ps(_mm256_sub_ps(unpack8(row + (c >> 3) * bits, bits), zv), sv);
        if (!perm) {
            _mm256_storeu_ps(out + c, v);
        } else {
            float t[8];
            _mm256_storeu_ps(t, v);
            for (int l = 0; l < 8; l++) out[perm[c + l]] = t[l];
        }
    }
    for (; c < cols; c++) {
        int64_t g = c / group;
        float v = ((float)lmp_qpack_get(row, c, bits) - h2f(z[g])) * h2f(s[g]);
        out[perm ? perm[c] : c] = v;
    }
}

#define QM_DISPATCH(bits, call2, call3, call4, call8)                                      \
    switch (bits) {                                                                        \
    case 2: call2; break;                                                                  \
    case 3: call3; break;                                                                  \
    case 4: call4; break;                                                                  \
    default: call8; break;                                                                 \
    }

static void matvec_rows(const struct lmp_qview *w, const float *xp, float *y)
{
    const int64_t rows = w->rows;
    const int par = rows * w->cols > 65536;
    switch (w->bits) {
    case 2:
#pragma omp parallel for schedule(static) if (par)
        for (int64_t r = 0; r < rows; r++) y[r] = dot_row_avx2(w, r, xp, 2);
        break;
    case 3:
#pragma omp parallel for schedule(static) if (par)
        for (int64_t r = 0; r < rows; r++) y[r] = dot_row_avx2(w, r, xp, 3);
        break;
    case 4:
#pragma omp parallel for schedule(static) if (par)
        for (int64_t r = 0; r < rows; r++) y[r] = dot_row_avx2(w, r, xp, 4);
        break;
    default:
#pragma omp parallel for schedule(static) if (par)
        for (int64_t r = 0; r < rows; r++) y[r] = dot_row_avx2(w, r, xp, 8);
        break;
    }
}

static void dequant_rows(const struct lmp_qview *w, int64_t r0, int64_t nr, float *tile)
{
    const int64_t cols = w->cols;
    const int par = nr * cols > 65536;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t i = 0; i < nr; i++) {
        float *out = tile + i * cols;
        QM_DISPATCH(w->bits, dequant_row_avx2(w, r0 + i, out, 2),
                    dequant_row_avx2(w, r0 + i, out, 3), dequant_row_avx2(w, r0 + i, out, 4),
                    dequant_row_avx2(w, r0 + i, out, 8))
    }
}

#else /* portable fallback: the same structure without intrinsics */

int lmp_qmatmul_have_avx2(void) { return 0; }

static void matvec_rows(const struct lmp_qview *w, const float *xp, float *y)
{
    const int par = w->rows * w->cols > 65536;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t r = 0; r < w->rows; r++) {
        const uint8_t *row = w->codes + (size_t)r * w->row_bytes;
        const uint16_t *s = w->scales + r * w->n_groups, *z = w->zeros + r * w->n_groups;
        float acc = 0.0f;
        for (int64_t j = 0; j < w->cols; j++) {
            int64_t g = j / w->group;
            acc += ((float)lmp_qpack_get(row, j, w->bits) - h2f(z[g])) * h2f(s[g]) * xp[j];
        }
        y[r] = acc;
    }
}

static void dequant_rows(const struct lmp_qview *w, int64_t r0, int64_t nr, float *tile)
{
    const int par = nr * w->cols > 65536;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t i = 0; i < nr; i++) {
        const uint8_t *row = w->codes + (size_t)(r0 + i) * w->row_bytes;
        const uint16_t *s = w->scales + (r0 + i) * w->n_groups;
        const uint16_t *z = w->zeros + (r0 + i) * w->n_groups;
        float *out = tile + i * w->cols;
        for (int64_t j = 0; j < w->cols; j++) {
            int64_t g = j / w->group;
            float v = ((float)lmp_qpack_get(row, j, w->bits) - h2f(z[g])) * h2f(s[g]);
            out[w->perm ? w->perm[j] : j] = v;
        }
    }
}

#endif

void lmp_qmatvec(const struct lmp_qview *w, const float *x, float *y, float *scratch)
{
    matvec_rows(w, gather_x(w, x, scratch), y);
}

void lmp_qgemm(const struct lmp_qview *w, const float *X, int64_t n, float *Y, float *scratch)
{
    if (n <= 0) return;
    if (n <= 2) {
        /* one or two tokens: the fused matvec reads the codes once per token; a tile
         * would cost the same dequantisation without the sgemm's reuse */
        for (int64_t i = 0; i < n; i++) lmp_qmatvec(w, X + i * w->cols, Y + i * w->rows, scratch);
        return;
    }
    LMP_ASSERT(n <= INT32_MAX && w->rows <= INT32_MAX && w->cols <= INT32_MAX);
    const int64_t rb = tile_rows(w), cols = w->cols;
    /* The OpenMP threads take the tile's rows in chunks of 64, each dequantised and
     * multiplied by the thread itself, OpenBLAS held to one thread meanwhile: its own threads
     * and OpenMP's, taking turns, spin against each other (1.1B shape, 2 cores: pp64 12.8 ->
     * ~80 tokens/s; docs/BENCHMARKS.md). The chunks do not depend on the thread count, so
     * neither do the results. */
    const int blas_prev = openblas_get_num_threads();
    openblas_set_num_threads(1);
    for (int64_t r0 = 0; r0 < w->rows; r0 += rb) {
        const int64_t nr = w->rows - r0 < rb ? w->rows - r0 : rb, nch = (nr + 63) / 64;
#pragma omp parallel for schedule(static) if (nr * cols > 65536)
        for (int64_t c = 0; c < nch; c++) {
            const int64_t a = 64 * c, b = a + 64 < nr ? a + 64 : nr;
            dequant_rows(w, r0 + a, b - a, scratch + a * cols);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)(b - a), (int)cols, 1.0f, X,
                        (int)cols, scratch + a * cols, (int)cols, 0.0f, Y + r0 + a, (int)w->rows);
        }
    }
    openblas_set_num_threads(blas_prev);
}
