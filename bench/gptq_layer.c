/* Times GPTQ on one Llama-7B-shaped layer: q/k/v/o (4096x4096), gate/up (11008x4096),
 * down (4096x11008), random weights and random correlated inputs. Matrices that read the
 * same input share one inverse-Hessian factor (q/k/v, gate/up), as the calibration driver
 * will. Prints seconds per step, per layer, and the peak RSS.
 *
 *   make bench-gptq   (builds $(BUILD)/gptq_layer and runs it with the defaults)
 *   gptq_layer [--dim 4096] [--ffn 11008] [--bits 4] [--group 128] [--act] [--mse]
 *              [--refine] [--tokens 2048] [--chol]   (--chol: time the Cholesky variants)
 */
#include "quantize/quant.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static unsigned long long rng = 88172645463325252ull;
static float randu(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* H from n correlated inputs: X = Z B + noise, Z (n, k), B (k, cols); per-column scales. */
static float *make_hessian(int cols, int n)
{
    const int k = 256;
    float *Z = malloc(sizeof(float) * n * k), *B = malloc(sizeof(float) * k * cols);
    float *X = malloc(sizeof(float) * n * cols), *H = calloc((size_t)cols * cols, sizeof(float));
    if (!Z || !B || !X || !H) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (long i = 0; i < (long)n * k; i++) Z[i] = randu();
    for (long i = 0; i < (long)k * cols; i++) B[i] = randu() * 0.2f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, cols, k, 1.0f, Z, k, B, cols, 0.0f, X,
                cols);
    for (long i = 0; i < (long)n * cols; i++) X[i] = X[i] * (1.0f + (float)(i % cols % 7)) + 0.1f * randu();
    int64_t ns = 0;
    struct lmp_err err;
    for (int r = 0; r < n; r += 512)
        if (lmp_quant_hessian_accumulate(H, cols, X + (size_t)r * cols, n - r < 512 ? n - r : 512,
                                         &ns, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            exit(1);
        }
    free(Z);
    free(B);
    free(X);
    return H;
}

static float *make_weights(int rows, int cols)
{
    float *W = malloc(sizeof(float) * rows * cols);
    if (!W) exit(1);
    for (long i = 0; i < (long)rows * cols; i++) W[i] = 0.02f * (randu() + randu() + randu());
    return W;
}

static void chol_variants(const float *H, int n)
{
    size_t nn = (size_t)n * n;
    double *A = malloc(nn * sizeof *A);
    float *S = malloc(nn * sizeof *S);
    double mean = 0;
    for (int i = 0; i < n; i++) mean += H[(size_t)i * n + i];
    mean /= n;
    /* column-major upper = our row-major lower; H symmetric so either triangle works */
#define FILL(dst)                                                                          \
    for (size_t i = 0; i < (size_t)n; i++)                                                 \
        for (size_t j = 0; j < (size_t)n; j++)                                             \
            dst[i * n + j] = (i <= j ? H[i * n + j] : H[j * n + i]) + (i == j ? 0.01 * mean : 0.0);
    double t;
    FILL(A);
    t = now();
    int i1 = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', n, A, n);
    double t1 = now();
    int i2 = LAPACKE_dtrtri(LAPACK_COL_MAJOR, 'U', 'N', n, A, n);
    printf("  cols %5d  double potrf+trtri (used)        %7.2f s = %.2f + %.2f (info %d %d)\n", n,
           now() - t, t1 - t, now() - t1, i1, i2);
    /* the inverse through a BLAS-3 triangular solve against I instead of trtri */
    FILL(A);
    double *Id = calloc(nn, sizeof *Id);
    for (int i = 0; i < n; i++) Id[(size_t)i * n + i] = 1.0;
    t = now();
    i1 = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', n, A, n);
    t1 = now();
    cblas_dtrsm(CblasColMajor, CblasLeft, CblasUpper, CblasNoTrans, CblasNonUnit, n, n, 1.0, A, n,
                Id, n);
    printf("  cols %5d  double potrf+trsm(I)             %7.2f s = %.2f + %.2f (info %d)\n", n,
           now() - t, t1 - t, now() - t1, i1);
    free(Id);
    FILL(A);
    t = now();
    i1 = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', n, A, n);
    i2 = LAPACKE_dpotri(LAPACK_COL_MAJOR, 'U', n, A, n);
    int i3 = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', n, A, n);
    printf("  cols %5d  double potrf+potri+potrf (ref)   %7.2f s (info %d %d %d)\n", n, now() - t, i1, i2, i3);
    FILL(S);
    t = now();
    i1 = LAPACKE_spotrf(LAPACK_COL_MAJOR, 'U', n, S, n);
    i2 = LAPACKE_spotri(LAPACK_COL_MAJOR, 'U', n, S, n);
    i3 = LAPACKE_spotrf(LAPACK_COL_MAJOR, 'U', n, S, n);
    printf("  cols %5d  float  potrf+potri+potrf (ref)   %7.2f s (info %d %d %d)\n", n, now() - t, i1, i2, i3);
    FILL(S);
    t = now();
    i1 = LAPACKE_spotrf(LAPACK_COL_MAJOR, 'U', n, S, n);
    i2 = LAPACKE_strtri(LAPACK_COL_MAJOR, 'U', 'N', n, S, n);
    printf("  cols %5d  float  potrf+trtri               %7.2f s (info %d %d)\n", n, now() - t, i1, i2);
    /* accuracy of the float factor: compare with the double one */
    FILL(A);
    LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', n, A, n);
    LAPACKE_dtrtri(LAPACK_COL_MAJOR, 'U', 'N', n, A, n);
    double md = 0, ma = 0;
    for (size_t k = 0; k < nn; k++) {
        size_t col = k / n, row = k % n;
        if (row > col) continue; /* column-major: element (row, col) at row + col*n */
        double d = fabs((double)S[k] - A[k]);
        if (d > md) md = d;
        if (fabs(A[k]) > ma) ma = fabs(A[k]);
    }
    printf("  cols %5d  float vs double factor: max |diff| %.3g (max |entry| %.3g)\n", n, md, ma);
    free(A);
    free(S);
}

int main(int argc, char **argv)
{
    int dim = 4096, ffn = 11008, tokens = 2048, chol = 0;
    struct lmp_quant_opts o;
    lmp_quant_opts_default(&o);
    o.group = 128;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dim") && i + 1 < argc) dim = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--ffn") && i + 1 < argc) ffn = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--bits") && i + 1 < argc) o.bits = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--group") && i + 1 < argc) o.group = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) tokens = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--act")) o.act_order = 1;
        else if (!strcmp(argv[i], "--mse")) o.mse = 1;
        else if (!strcmp(argv[i], "--refine")) o.refine = 1;
        else if (!strcmp(argv[i], "--chol")) chol = 1;
        else {
            fprintf(stderr, "usage: gptq_layer [--dim N] [--ffn N] [--bits B] [--group G] "
                            "[--tokens N] [--act] [--mse] [--refine] [--chol]\n");
            return 2;
        }
    }
    printf("GPTQ layer bench: dim %d ffn %d, %d bits group %d%s%s%s, %d calibration rows\n", dim, ffn,
           o.bits, o.group, o.act_order ? " act-order" : "", o.mse ? " mse" : "",
           o.refine ? " refine" : "", tokens);
    struct {
        const char *name;
        int in, n_mats;
        const char *mats[3];
        int rows[3];
    } sets[4] = {
        {"qkv", dim, 3, {"q", "k", "v"}, {dim, dim, dim}},
        {"o", dim, 1, {"o"}, {dim}},
        {"gate_up", dim, 2, {"gate", "up"}, {ffn, ffn}},
        {"down", ffn, 1, {"down"}, {dim}},
    };
    double total = 0, total_prep = 0, total_apply = 0;
    struct lmp_err err;
    for (int s = 0; s < 4; s++) {
        float *H = make_hessian(sets[s].in, tokens);
        if (chol && (s == 0 || s == 3)) chol_variants(H, sets[s].in);
        double t = now();
        struct lmp_quant_hinv *h = NULL;
        if (lmp_quant_hinv_prepare(H, sets[s].in, &o, &h, &err)) {
            fprintf(stderr, "prepare: %s\n", err.msg);
            return 1;
        }
        double tp = now() - t;
        total_prep += tp;
        printf("  %-8s factor  (%5d cols)          %7.2f s%s\n", sets[s].name, sets[s].in, tp,
               h->damp_retries ? "  (damping raised)" : "");
        free(H);
        for (int m = 0; m < sets[s].n_mats; m++) {
            float *W = make_weights(sets[s].rows[m], sets[s].in);
            struct lmp_qtensor_out q;
            t = now();
            if (lmp_quant_gptq_apply(W, sets[s].rows[m], sets[s].in, h, &o, &q, NULL, &err)) {
                fprintf(stderr, "apply: %s\n", err.msg);
                return 1;
            }
            double ta = now() - t;
            total_apply += ta;
            printf("  %-8s quantize (%5d x %5d)    %7.2f s\n", sets[s].mats[m], sets[s].rows[m],
                   sets[s].in, ta);
            lmp_qtensor_out_free(&q);
            free(W);
        }
        lmp_quant_hinv_free(h);
    }
    total = total_prep + total_apply;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("per layer: %.2f s (factors %.2f s, sweeps %.2f s); peak RSS %.2f GiB\n", total,
           total_prep, total_apply, ru.ru_maxrss / 1048576.0);
    return 0;
}
