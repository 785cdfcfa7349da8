/* Quantization grids (asymmetric min-max, symmetric, MSE-optimal clipping search) as in the
 * reference Quantizer.find_params, with fp16-rounded scales, and round-to-nearest (RTN)
 * quantization of a whole matrix on that grid. The formulas are in quant.h. */
#include "quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__) && defined(__GLIBC__)
#include <immintrin.h>
/* glibc's libmvec powf, 8 lanes (x86_64 vector function ABI); linked through libm.so */
__m256 _ZGVdN8vv_powf(__m256 x, __m256 y);
#define HAVE_VEC_POWF 1
#endif

#define MIN_SCALE 0x1p-24f /* smallest positive fp16 (subnormal) */

void lmp_quant_opts_default(struct lmp_quant_opts *o)
{
    memset(o, 0, sizeof *o);
    o->bits = 4;
    o->group = 0;
    o->mse_grid = 100;
    o->mse_maxshrink = 0.8;
    o->mse_norm = 2.4;
    o->block = 128;
    o->damp = 0.01f;
    o->max_retries = 4;
}

enum lmp_status lmp_quant_opts_check(const struct lmp_quant_opts *o, int64_t rows, int64_t cols,
                                     struct lmp_err *err)
{
    if (!o) return lmp_err_set(err, LMP_ERR_ARG, "quantize: no options");
    if (o->bits != 2 && o->bits != 3 && o->bits != 4 && o->bits != 8)
        return lmp_err_set(err, LMP_ERR_ARG, "quantize: %d bits (want 2, 3, 4 or 8)", o->bits);
    if (rows <= 0 || cols <= 0 || rows > INT32_MAX || cols > INT32_MAX ||
        rows > (int64_t)(SIZE_MAX / 8) / cols)
        return lmp_err_set(err, LMP_ERR_ARG, "quantize: bad matrix shape [%lld, %lld]",
                           (long long)rows, (long long)cols);
    if (o->group < 0)
        return lmp_err_set(err, LMP_ERR_ARG, "quantize: group size %d is negative", o->group);
    if (o->block <= 0)
        return lmp_err_set(err, LMP_ERR_ARG, "quantize: block size %d must be positive",
                           o->block);
    if (!(o->damp >= 0.0f) || !isfinite(o->damp))
        return lmp_err_set(err, LMP_ERR_ARG, "quantize: damping %g must be finite and >= 0",
                           (double)o->damp);
    if (o->max_retries < 0 || o->max_retries > 30)
        return lmp_err_set(err, LMP_ERR_ARG, "quantize: max_retries %d not in 0..30",
                           o->max_retries);
    if (o->mse && (o->mse_grid <= 0 || o->mse_grid > 100000 || !(o->mse_maxshrink >= 0.0) ||
                   !(o->mse_maxshrink < 1.0) || !(o->mse_norm > 0.0) || !isfinite(o->mse_norm)))
        return lmp_err_set(err, LMP_ERR_ARG,
                           "quantize: bad MSE search (grid %d, maxshrink %g, norm %g)",
                           o->mse_grid, o->mse_maxshrink, o->mse_norm);
    return LMP_OK;
}

void lmp_qtensor_out_free(struct lmp_qtensor_out *o)
{
    if (!o) return;
    free(o->codes);
    free(o->scales);
    free(o->zeros);
    free(o->perm);
    o->codes = NULL;
    o->scales = o->zeros = NULL;
    o->perm = NULL;
}

/* Scale and zero for the range [xmin, xmax] (xmin <= 0 <= xmax, not both 0). The zero is
 * computed with the float scale, as the reference does; the caller rounds the scale. */
static void grid_point(float xmin, float xmax, int maxq, int sym, float *scale, float *zero)
{
    float s = (xmax - xmin) / (float)maxq;
    if (!(s >= MIN_SCALE)) s = MIN_SCALE;
    float z;
    if (sym) {
        z = (float)((maxq + 1) / 2);
    } else {
        z = nearbyintf(-xmin / s);
        if (z < 0.0f) z = 0.0f;
        if (z > (float)maxq) z = (float)maxq;
    }
    *scale = s;
    *zero = z;
}

/* sum_j |sf * (q_j - z) - x_j|^norm for one MSE candidate. The AVX2 path (8 lanes, libmvec
 * powf) does the same float operations as the scalar one; only the order of the double sum
 * and powf's last bit may differ, which matters only between candidates within ~1e-7. */
static double mse_err(const float *x, int n, float sf, float z, int maxq, float norm)
{
    double e = 0.0;
    int j = 0;
#ifdef HAVE_VEC_POWF
    if (norm != 2.0f) {
        const __m256 vs = _mm256_set1_ps(sf), vz = _mm256_set1_ps(z);
        const __m256 vmax = _mm256_set1_ps((float)maxq), vnorm = _mm256_set1_ps(norm);
        const __m256 zero = _mm256_setzero_ps(), sign = _mm256_set1_ps(-0.0f);
        __m256d acc = _mm256_setzero_pd();
        for (; j + 8 <= n; j += 8) {
            __m256 xv = _mm256_loadu_ps(x + j);
            __m256 q = _mm256_round_ps(_mm256_div_ps(xv, vs),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            q = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(q, vz), zero), vmax);
            __m256 wq = _mm256_mul_ps(vs, _mm256_sub_ps(q, vz));
            __m256 d = _mm256_andnot_ps(sign, _mm256_sub_ps(wq, xv));
            __m256 p = _ZGVdN8vv_powf(d, vnorm);
            acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_castps256_ps128(p)));
            acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_extractf128_ps(p, 1)));
        }
        double t[4];
        _mm256_storeu_pd(t, acc);
        e = (t[0] + t[1]) + (t[2] + t[3]);
    }
#endif
    for (; j < n; j++) {
        float wq = sf * ((float)lmp_quant_code(x[j], sf, z, maxq) - z);
        float d = fabsf(wq - x[j]);
        e += (double)(norm == 2.0f ? d * d : powf(d, norm));
    }
    return e;
}

/* is v (a float holding an integer times an fp16 value) exact in fp16? */
static int exact_in_f16(float v)
{
    uint16_t h = lmp_f32_to_f16(v);
    return (h & 0x7fff) < 0x7c00 && lmp_f16_to_f32(h) == v;
}

static int q41_ok(uint16_t h, float z, int maxq)
{
    float s = lmp_f16_to_f32(h);
    return exact_in_f16(z * s) || exact_in_f16(((float)maxq - z) * s);
}

uint16_t lmp_quant_q41_scale(uint16_t s16, float z, int maxq)
{
    if (maxq != 15 || (s16 & 0x8000) || (s16 & 0x7fff) == 0 || (s16 & 0x7fff) >= 0x7c00 ||
        z != nearbyintf(z) || z < 0.0f || z > 15.0f || q41_ok(s16, z, maxq))
        return s16;
    /* positive fp16 patterns are ordered like their values: walk outwards, nearest first */
    float s = lmp_f16_to_f32(s16);
    for (int k = 1; k < 1024; k++) {
        uint16_t up = (uint16_t)(s16 + k), dn = (uint16_t)(s16 - k);
        int ok_up = up < 0x7c00 && q41_ok(up, z, maxq);
        int ok_dn = dn > 0 && dn < s16 && q41_ok(dn, z, maxq);
        if (ok_up && ok_dn)
            return lmp_f16_to_f32(up) - s <= s - lmp_f16_to_f32(dn) ? up : dn;
        if (ok_up) return up;
        if (ok_dn) return dn;
    }
    return s16; /* not reached for normal scales: every 16th pattern qualifies */
}

/* the stored scale: fp16, moved onto the Q4_1-exact set when asked (quant.h gguf_exact) */
static uint16_t scale16(float s, float z, int maxq, const struct lmp_quant_opts *o)
{
    uint16_t h = lmp_f32_to_f16(s);
    if (o->gguf_exact && !o->sym && (h & 0x7fff) < 0x7c00) h = lmp_quant_q41_scale(h, z, maxq);
    return h;
}

enum lmp_status lmp_quant_grid_params(const float *x, int n, const struct lmp_quant_opts *o,
                                      uint16_t *scale, uint16_t *zero, struct lmp_err *err)
{
    int maxq = (1 << o->bits) - 1;
    float xmin = 0.0f, xmax = 0.0f;
    for (int i = 0; i < n; i++) {
        if (!isfinite(x[i]))
            return lmp_err_set(err, LMP_ERR_ARG, "quantize: non-finite weight %g", (double)x[i]);
        if (x[i] < xmin) xmin = x[i];
        if (x[i] > xmax) xmax = x[i];
    }
    if (o->sym) {
        if (-xmin > xmax) xmax = -xmin;
        if (xmin < 0.0f || !o->ref_quirks) xmin = -xmax;
    }
    if (xmin == 0.0f && xmax == 0.0f) {
        xmin = -1.0f;
        xmax = 1.0f;
    }
    float s, z;
    grid_point(xmin, xmax, maxq, o->sym, &s, &z);
    uint16_t sh = scale16(s, z, maxq, o);
    if ((sh & 0x7fff) >= 0x7c00)
        return lmp_err_set(err, LMP_ERR_ARG,
                           "quantize: weight range [%g, %g] needs a scale above fp16's 65504",
                           (double)xmin, (double)xmax);
    if (o->mse) {
        double best = INFINITY;
        int steps = (int)(o->mse_maxshrink * o->mse_grid);
        float norm = (float)o->mse_norm;
        for (int i = 0; i < steps; i++) {
            float p = (float)(1.0 - (double)i / o->mse_grid);
            float s1, z1;
            grid_point(p * xmin, p * xmax, maxq, o->sym, &s1, &z1);
            uint16_t sh1 = scale16(s1, z1, maxq, o);
            float sf = lmp_f16_to_f32(sh1);
            double e = mse_err(x, n, sf, z1, maxq, norm);
            if (e < best) {
                best = e;
                sh = sh1;
                z = z1;
            }
        }
    }
    *scale = sh;
    *zero = lmp_f32_to_f16(z);
    return LMP_OK;
}

enum lmp_status lmp_quant_rtn_matrix(const float *W, int rows, int cols,
                                     const struct lmp_quant_opts *o, struct lmp_qtensor_out *out,
                                     float *W_hat_out, struct lmp_err *err)
{
    memset(out, 0, sizeof *out);
    enum lmp_status st = lmp_quant_opts_check(o, rows, cols, err);
    if (st) return st;
    int group = o->group && o->group < cols ? o->group : cols;
    int64_t ng = (cols + group - 1) / group; /* the last group may be shorter */
    int maxq = (1 << o->bits) - 1;
    out->rows = rows;
    out->cols = cols;
    out->bits = o->bits;
    out->group = group;
    out->sym = o->sym;
    out->n_groups = ng;
    out->codes = malloc((size_t)rows * (size_t)cols);
    out->scales = malloc((size_t)rows * (size_t)ng * 2);
    out->zeros = malloc((size_t)rows * (size_t)ng * 2);
    if (!out->codes || !out->scales || !out->zeros) {
        lmp_qtensor_out_free(out);
        return lmp_err_set(err, LMP_ERR_NOMEM, "rtn: out of memory for a %dx%d matrix", rows,
                           cols);
    }
    int bad_row = -1;
    struct lmp_err row_err = {{0}};
#pragma omp parallel for schedule(dynamic, 16)
    for (int r = 0; r < rows; r++) {
        for (int64_t g = 0; g < ng; g++) {
            const float *x = W + (size_t)r * cols + g * group;
            int glen = cols - g * group < group ? (int)(cols - g * group) : group;
            uint16_t sh, zh;
            struct lmp_err e1;
            if (lmp_quant_grid_params(x, glen, o, &sh, &zh, &e1) != LMP_OK) {
#pragma omp critical
                if (bad_row < 0 || r < bad_row) {
                    bad_row = r;
                    row_err = e1;
                }
                break;
            }
            out->scales[(size_t)r * ng + g] = sh;
            out->zeros[(size_t)r * ng + g] = zh;
            float s = lmp_f16_to_f32(sh), z = lmp_f16_to_f32(zh);
            for (int j = 0; j < glen; j++) {
                int q = lmp_quant_code(x[j], s, z, maxq);
                size_t k = (size_t)r * cols + g * group + j;
                out->codes[k] = (uint8_t)q;
                if (W_hat_out) W_hat_out[k] = s * ((float)q - z);
            }
        }
    }
    if (bad_row >= 0) {
        lmp_qtensor_out_free(out);
        return lmp_err_set(err, LMP_ERR_ARG, "rtn: row %d: %s", bad_row, row_err.msg);
    }
    return LMP_OK;
}
