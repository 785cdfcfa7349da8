/* quantize/ (grid, RTN, GPTQ), formats/qpack (bit packing) and runtime/qmatmul (fused
 * dequantising products). References: tests/gptq_ref.py (numpy, run here when /usr/bin/python3
 * has numpy), a bit-by-bit packer written in this file, and dense fp32 products through
 * OpenBLAS on weights dequantised here from the generated codes. */
#include "test.h"
#include "formats/qpack.h"
#include "quantize/quant.h"
#include "runtime/qmatmul.h"

#include <cblas.h>
#include <string.h>

/* ---- helpers ------------------------------------------------------------------------- */

static float *rand_mat(unsigned long long *s, long n, float scale)
{
    float *a = malloc((size_t)n * sizeof *a);
    for (long i = 0; i < n; i++) a[i] = lmp_test_randf(s) * scale;
    return a;
}

/* roughly normal: sum of 4 uniforms */
static float randn(unsigned long long *s)
{
    return (lmp_test_randf(s) + lmp_test_randf(s) + lmp_test_randf(s) + lmp_test_randf(s)) * 0.866f;
}

/* X (n, cols) = Z (n, cols) A (cols, cols), A random mixing with column scales spread over
 * two decades: strongly correlated inputs of varied magnitude. dead: a column left at 0. */
static float *corr_inputs(unsigned long long *s, int n, int cols, int dead)
{
    float *Z = malloc((size_t)n * cols * sizeof *Z), *A = malloc((size_t)cols * cols * sizeof *A);
    float *X = malloc((size_t)n * cols * sizeof *X);
    for (long i = 0; i < (long)n * cols; i++) Z[i] = randn(s);
    for (int i = 0; i < cols; i++)
        for (int j = 0; j < cols; j++)
            A[i * cols + j] = randn(s) / sqrtf((float)cols) * (i == j ? 3.0f : 1.0f);
    for (int j = 0; j < cols; j++) {
        float sc = powf(10.0f, 1.0f * lmp_test_randf(s));
        for (int i = 0; i < cols; i++) A[i * cols + j] *= sc;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, cols, cols, 1.0f, Z, cols, A, cols,
                0.0f, X, cols);
    if (dead >= 0)
        for (int i = 0; i < n; i++) X[(size_t)i * cols + dead] = 0.0f;
    free(Z);
    free(A);
    return X;
}

/* ||(W - W_hat) X^T||_F^2 */
static double out_err(const float *W, const float *Wh, int rows, int cols, const float *X, int n)
{
    float *D = malloc((size_t)rows * cols * sizeof *D), *E = malloc((size_t)rows * n * sizeof *E);
    for (long i = 0; i < (long)rows * cols; i++) D[i] = W[i] - Wh[i];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n, cols, 1.0f, D, cols, X, cols,
                0.0f, E, n);
    double e = 0;
    for (long i = 0; i < (long)rows * n; i++) e += (double)E[i] * E[i];
    free(D);
    free(E);
    return e;
}

static int write_raw(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t k = fwrite(p, 1, n, f);
    return fclose(f) || k != n ? -1 : 0;
}

/* reads DIR/name.what.npy; returns element count or -1 */
static long read_case(const char *name, const char *what, void **data, long expect)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.%s.npy", lmp_test_tmpdir(), name, what);
    int is_int, nd;
    long shape[4];
    long n = lmp_test_read_npy(path, data, &is_int, shape, &nd);
    if (n != expect) {
        fprintf(stderr, "    %s: %ld elements, expected %ld\n", path, n, expect);
        return -1;
    }
    return n;
}

struct qcase {
    const char *name;
    const char *kind; /* "gptq" | "rtn" */
    int bits, group, sym, mse, act, stat, quirks;
};

static void case_opts(const struct qcase *c, int block, struct lmp_quant_opts *o)
{
    lmp_quant_opts_default(o);
    o->bits = c->bits;
    o->group = c->group;
    o->sym = c->sym;
    o->mse = c->mse;
    o->act_order = c->act;
    o->static_groups = c->stat;
    o->ref_quirks = c->quirks;
    o->block = block;
}

static int run_numpy(const struct qcase *cases, int n_cases, int rows, int cols, int block,
                     const float *W, const float *H)
{
    const char *d = lmp_test_tmpdir();
    char path[1024];
    snprintf(path, sizeof path, "%s/W.f32", d);
    if (write_raw(path, W, (size_t)rows * cols * 4)) return -1;
    snprintf(path, sizeof path, "%s/H.f32", d);
    if (H && write_raw(path, H, (size_t)cols * cols * 4)) return -1;
    snprintf(path, sizeof path, "%s/cases.txt", d);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f, "%d %d\n", rows, cols);
    for (int i = 0; i < n_cases; i++) {
        const struct qcase *c = &cases[i];
        fprintf(f, "%s %s %d %d %d %d %d %d %d %d 0.01\n", c->name, c->kind, c->bits, c->group,
                c->sym, c->mse, c->act, c->stat, c->quirks, block);
    }
    fclose(f);
    char out[4096];
    int rc = lmp_test_sh(out, sizeof out, "/usr/bin/python3 tests/gptq_ref.py '%s'", d);
    if (rc) fprintf(stderr, "    gptq_ref.py failed (%d): %s\n", rc, out);
    return rc;
}

/* ---- (d) packing --------------------------------------------------------------------- */

TEST(quant_pack_roundtrip)
{
    unsigned long long s = 11;
    const int bitsv[] = {2, 3, 4, 8};
    const int colsv[] = {1, 3, 7, 8, 31, 32, 33, 172, 4099};
    for (int bi = 0; bi < 4; bi++)
        for (int ci = 0; ci < 9; ci++) {
            int bits = bitsv[bi], cols = colsv[ci], rows = 3;
            size_t rb = lmp_qpack_row_bytes(cols, bits);
            size_t want = (((size_t)cols * bits + 7) / 8 + 3) / 4 * 4;
            CHECK_EQ_INT(rb, want);
            uint8_t *codes = malloc((size_t)rows * cols), *back = malloc((size_t)rows * cols);
            uint8_t *packed = malloc(rows * rb), *ref = calloc(rows, rb);
            for (long i = 0; i < (long)rows * cols; i++)
                codes[i] = (uint8_t)((lmp_test_randf(&s) + 1.0f) * 0.5f * (float)(1 << bits)) &
                           (uint8_t)((1 << bits) - 1);
            memset(packed, 0xAA, rows * rb);
            struct lmp_err err = {{0}};
            REQUIRE(lmp_qpack_pack(codes, rows, cols, bits, packed, &err) == LMP_OK);
            /* independent bit-by-bit reference of docs/FORMAT.md */
            for (int r = 0; r < rows; r++)
                for (int j = 0; j < cols; j++)
                    for (int k = 0; k < bits; k++)
                        if (codes[r * cols + j] >> k & 1) {
                            size_t bit = (size_t)j * bits + k;
                            ref[r * rb + bit / 8] |= (uint8_t)(1u << (bit % 8));
                        }
            CHECK_MSG(memcmp(packed, ref, rows * rb) == 0, "bits %d cols %d: packed bytes differ",
                      bits, cols);
            lmp_qpack_unpack(packed, rows, cols, bits, back);
            CHECK_MSG(memcmp(codes, back, (size_t)rows * cols) == 0,
                      "bits %d cols %d: unpack differs", bits, cols);
            for (int j = 0; j < cols; j++)
                if (lmp_qpack_get(packed + rb, j, bits) != codes[cols + j]) {
                    CHECK_MSG(0, "bits %d cols %d: get(%d) differs", bits, cols, j);
                    break;
                }
            if (bits < 8) { /* out-of-range code is refused */
                codes[cols - 1] = (uint8_t)(1 << bits);
                CHECK(lmp_qpack_pack(codes, rows, cols, bits, packed, &err) == LMP_ERR_ARG);
            }
            free(codes);
            free(back);
            free(packed);
            free(ref);
        }
    struct lmp_err err = {{0}};
    size_t cb, pb;
    CHECK(lmp_qpack_sizes(10, 172, 5, 4, &cb, &pb, &err) == LMP_ERR_ARG);
    CHECK(lmp_qpack_sizes(10, 172, 4, 0, &cb, &pb, &err) == LMP_ERR_ARG);
    CHECK(lmp_qpack_sizes((int64_t)1 << 62, (int64_t)1 << 40, 8, 32, &cb, &pb, &err) != LMP_OK);
    REQUIRE(lmp_qpack_sizes(37, 172, 3, 32, &cb, &pb, &err) == LMP_OK);
    CHECK_EQ_INT(cb, 37 * 68);
    CHECK_EQ_INT(pb, 37 * 6 * 2);
    int32_t perm[5] = {4, 0, 3, 1, 1};
    CHECK(lmp_qpack_check_perm(perm, 5, &err) == LMP_ERR_FORMAT);
    perm[4] = 2;
    CHECK(lmp_qpack_check_perm(perm, 5, &err) == LMP_OK);
    perm[0] = 5;
    CHECK(lmp_qpack_check_perm(perm, 5, &err) == LMP_ERR_FORMAT);
}

/* ---- (c) grid / RTN vs numpy ----------------------------------------------------------- */

/* Runs RTN for every case and compares with numpy's output (run_numpy already called).
 * Every group must match exactly, except one numpy flags as sitting on a rounding boundary
 * (fp16 scale, zero at .5, MSE near-tie) where float-order effects (FMA contraction,
 * powf's last bit, summation order) may legitimately decide. Returns those explained
 * differences. Groups need not divide cols: the last one is then shorter. */
static void compare_rtn(const struct qcase *cases, int nc, int rows, int cols, const float *W,
                        int *ties)
{
    int tie_total = 0;
    *ties = 0;
    for (int i = 0; i < nc; i++) {
        struct lmp_quant_opts o;
        case_opts(&cases[i], 128, &o);
        struct lmp_qtensor_out q;
        struct lmp_err err = {{0}};
        float *Wh = malloc(sizeof(float) * rows * cols);
        REQUIRE(lmp_quant_rtn_matrix(W, rows, cols, &o, &q, Wh, &err) == LMP_OK);
        long gs = cases[i].group && cases[i].group < cols ? cases[i].group : cols;
        long ng = (cols + gs - 1) / gs;
        CHECK_EQ_INT(q.n_groups, ng);
        CHECK_EQ_INT(q.group, gs);
        int32_t *codes = NULL, *frag = NULL;
        float *sc = NULL, *ze = NULL;
        if (read_case(cases[i].name, "codes", (void **)&codes, (long)rows * cols) < 0 ||
            read_case(cases[i].name, "fragile", (void **)&frag, (long)rows * cols) < 0 ||
            read_case(cases[i].name, "scales", (void **)&sc, rows * ng) < 0 ||
            read_case(cases[i].name, "zeros", (void **)&ze, rows * ng) < 0) {
            CHECK_MSG(0, "%s: numpy output missing", cases[i].name);
            free(codes);
            free(frag);
            free(sc);
            free(ze);
            free(Wh);
            lmp_qtensor_out_free(&q);
            continue;
        }
        int bad = 0, tie = 0;
        for (long k = 0; k < rows * ng; k++) {
            long r = k / ng, g = k % ng;
            long j1 = (g + 1) * gs < cols ? (g + 1) * gs : cols;
            int same = lmp_f16_to_f32(q.scales[k]) == sc[k] && lmp_f16_to_f32(q.zeros[k]) == ze[k];
            for (long j = g * gs; j < j1; j++) {
                same = same && q.codes[r * cols + j] == codes[r * cols + j];
                /* W_hat is the dequantised code */
                float wh = lmp_f16_to_f32(q.scales[k]) *
                           ((float)q.codes[r * cols + j] - lmp_f16_to_f32(q.zeros[k]));
                same = same && Wh[r * cols + j] == wh;
            }
            if (same) continue;
            int fragile = frag[r * cols + g * gs] != 0;
            fprintf(stderr, "    %s: row %ld group %ld: scale %g zero %g, numpy %g %g%s\n",
                    cases[i].name, r, g, (double)lmp_f16_to_f32(q.scales[k]),
                    (double)lmp_f16_to_f32(q.zeros[k]), (double)sc[k], (double)ze[k],
                    fragile ? " (at a rounding boundary: explained)" : "");
            if (fragile) tie++;
            else bad++;
        }
        tie_total += tie;
        CHECK_MSG(bad == 0, "%s: %d groups differ from numpy", cases[i].name, bad);
        free(codes);
        free(frag);
        free(sc);
        free(ze);
        free(Wh);
        lmp_qtensor_out_free(&q);
    }
    *ties = tie_total;
}

TEST(quant_rtn_grid_matches_numpy)
{
    if (!lmp_test_have_numpy()) lmp_test_skip("no numpy in /usr/bin/python3");
    enum { ROWS = 12, COLS = 64 };
    unsigned long long s = 5;
    float *W = rand_mat(&s, ROWS * COLS, 0.05f);
    /* awkward groups: all zero, all positive, all negative, tiny (scale floor), large,
     * a single non-zero, exact grid points */
    for (int j = 0; j < 16; j++) {
        W[0 * COLS + j] = 0.0f;
        W[1 * COLS + j] = fabsf(W[1 * COLS + j]) + 0.01f;
        W[2 * COLS + j] = -fabsf(W[2 * COLS + j]);
        W[3 * COLS + j] *= 1e-6f;
        W[4 * COLS + j] *= 1e5f;
        W[5 * COLS + j] = j == 7 ? 0.3f : 0.0f;
        W[6 * COLS + j] = (float)(j % 4) * 0.25f - 0.5f;
    }
    for (int j = 0; j < COLS; j++) W[7 * COLS + j] = 0.0f;
    struct qcase cases[64];
    char names[64][64];
    int nc = 0;
    const int bitsv[] = {2, 3, 4, 8};
    for (int bi = 0; bi < 4; bi++)
        for (int sym = 0; sym < 2; sym++)
            for (int mse = 0; mse < 2; mse++)
                for (int gi = 0; gi < 2; gi++) {
                    snprintf(names[nc], sizeof names[nc], "rtn_b%d_s%d_m%d_g%d", bitsv[bi], sym, mse,
                             gi ? 0 : 16);
                    cases[nc] = (struct qcase){names[nc], "rtn", bitsv[bi], gi ? 0 : 16, sym, mse,
                                               0, 0, 0};
                    nc++;
                }
    cases[nc++] = (struct qcase){"rtn_symquirk", "rtn", 4, 16, 1, 0, 0, 0, 1};
    cases[nc++] = (struct qcase){"rtn_symquirk_mse", "rtn", 3, 16, 1, 1, 0, 0, 1};
    REQUIRE(run_numpy(cases, nc, ROWS, COLS, 128, W, NULL) == 0);
    int tie_total;
    compare_rtn(cases, nc, ROWS, COLS, W, &tie_total);
    CHECK_MSG(tie_total <= 3, "%d groups differ at rounding boundaries", tie_total);
    /* all-zero rows dequantise to exact zeros */
    struct lmp_quant_opts o;
    case_opts(&cases[0], 128, &o);
    struct lmp_qtensor_out q;
    struct lmp_err err = {{0}};
    float *Wh = malloc(sizeof(float) * ROWS * COLS);
    REQUIRE(lmp_quant_rtn_matrix(W, ROWS, COLS, &o, &q, Wh, &err) == LMP_OK);
    for (int j = 0; j < COLS; j++) CHECK(Wh[7 * COLS + j] == 0.0f);
    lmp_qtensor_out_free(&q);
    free(Wh);
    free(W);
}

/* ---- (b) GPTQ vs numpy --------------------------------------------------------------- */

/* Runs GPTQ for every case and compares its codes with numpy's (run_numpy already called).
 * A row may differ only from a column numpy flags as fragile (a rounding tie, where float32
 * vs float64 legitimately decides, after which the error feedback diverges). Returns the
 * number of such explained rows. */
static void compare_gptq(const struct qcase *cases, int nc, int rows, int cols, int block,
                         const float *W, const float *H, int n_dead, int *explained)
{
    int explained_total = 0;
    *explained = 0;
    int *pos = malloc(cols * sizeof *pos), *ord = malloc(cols * sizeof *ord);
    float *dg = malloc(cols * sizeof *dg);
    for (int i = 0; i < nc; i++) {
        const struct qcase *c = &cases[i];
        struct lmp_quant_opts o;
        case_opts(c, block, &o);
        struct lmp_qtensor_out q;
        struct lmp_err err = {{0}};
        REQUIRE(lmp_quant_gptq_matrix(W, rows, cols, H, &o, &q, NULL, &err) == LMP_OK);
        CHECK_EQ_INT(q.n_dead, n_dead);
        long gs = c->group && c->group < cols ? c->group : cols;
        CHECK_EQ_INT(q.n_groups, (cols + gs - 1) / gs);
        int32_t *codes = NULL, *frag = NULL, *perm = NULL;
        float *sc = NULL;
        if (read_case(c->name, "codes", (void **)&codes, (long)rows * cols) < 0 ||
            read_case(c->name, "fragile", (void **)&frag, (long)rows * cols) < 0 ||
            read_case(c->name, "scales", (void **)&sc, rows * q.n_groups) < 0) {
            CHECK_MSG(0, "%s: numpy output missing", c->name);
            free(codes);
            free(frag);
            free(sc);
            lmp_qtensor_out_free(&q);
            continue;
        }
        int store_perm = c->act && !c->stat;
        CHECK_MSG((q.perm != NULL) == store_perm, "%s: perm presence", c->name);
        if (store_perm && q.perm) {
            REQUIRE(read_case(c->name, "perm", (void **)&perm, cols) == cols);
            CHECK_MSG(memcmp(perm, q.perm, cols * sizeof *perm) == 0, "%s: perm differs", c->name);
        }
        /* processing position of each storage column, to find a row's first difference */
        for (int j = 0; j < cols; j++) pos[j] = j;
        if (c->act && c->stat) {
            /* storage natural, processed in act-order: recompute the order as numpy does */
            for (int j = 0; j < cols; j++) {
                dg[j] = H[j * cols + j] == 0.0f ? 1.0f : H[j * cols + j];
                ord[j] = j;
            }
            for (int a = 1; a < cols; a++) /* stable insertion sort, descending */
                for (int b = a; b > 0 && dg[ord[b - 1]] < dg[ord[b]]; b--) {
                    int t = ord[b];
                    ord[b] = ord[b - 1];
                    ord[b - 1] = t;
                }
            for (int k = 0; k < cols; k++) pos[ord[k]] = k;
        }
        int rows_diff = 0, unexplained = 0, codes_diff = 0;
        for (int r = 0; r < rows; r++) {
            int first = -1;
            for (int j = 0; j < cols; j++)
                if (q.codes[r * cols + j] != codes[r * cols + j]) {
                    codes_diff++;
                    if (first < 0 || pos[j] < pos[first]) first = j;
                }
            if (first < 0) {
                /* identical codes: the last group's params too (the shorter one, if any) */
                long k = (long)r * q.n_groups + q.n_groups - 1;
                CHECK_MSG(lmp_f16_to_f32(q.scales[k]) == sc[k] || frag[r * cols + cols - 1],
                          "%s: row %d last group scale %g, numpy %g", c->name, r,
                          (double)lmp_f16_to_f32(q.scales[k]), (double)sc[k]);
                continue;
            }
            rows_diff++;
            int ok = frag[r * cols + first] != 0;
            fprintf(stderr, "    %s: row %d differs first at column %d (C %d, numpy %d): %s\n",
                    c->name, r, first, q.codes[r * cols + first], codes[r * cols + first],
                    ok ? "at a rounding tie (explained)" : "NOT at a rounding tie");
            if (!ok) unexplained++;
        }
        explained_total += rows_diff - unexplained;
        CHECK_MSG(unexplained == 0, "%s: %d rows differ from numpy without a rounding tie",
                  c->name, unexplained);
        CHECK_MSG(rows_diff <= 2, "%s: %d rows (%d codes) differ", c->name, rows_diff, codes_diff);
        free(codes);
        free(frag);
        free(perm);
        free(sc);
        lmp_qtensor_out_free(&q);
    }
    free(pos);
    free(ord);
    free(dg);
    *explained = explained_total;
}

TEST(quant_gptq_matches_numpy)
{
    if (!lmp_test_have_numpy()) lmp_test_skip("no numpy in /usr/bin/python3");
    enum { ROWS = 16, COLS = 64, N = 256, BLOCK = 32 };
    unsigned long long s = 7;
    float *W = rand_mat(&s, ROWS * COLS, 0.1f);
    float *X = corr_inputs(&s, N, COLS, 5); /* input 5 is dead */
    float *H = calloc((size_t)COLS * COLS, sizeof *H);
    int64_t ns = 0;
    struct lmp_err err = {{0}};
    REQUIRE(lmp_quant_hessian_accumulate(H, COLS, X, 100, &ns, &err) == LMP_OK);
    REQUIRE(lmp_quant_hessian_accumulate(H, COLS, X + 100 * COLS, N - 100, &ns, &err) == LMP_OK);
    lmp_quant_hessian_finalize(H, COLS);
    static const struct qcase cases[] = {
        {"asym4", "gptq", 4, 16, 0, 0, 0, 0, 0},
        {"sym4", "gptq", 4, 16, 1, 0, 0, 0, 0},
        {"asym4_act", "gptq", 4, 16, 0, 0, 1, 0, 0},
        {"sym3_act", "gptq", 3, 16, 1, 0, 1, 0, 0},
        {"asym3_act_static", "gptq", 3, 16, 0, 0, 1, 1, 0},
        {"asym2_chan", "gptq", 2, 0, 0, 0, 0, 0, 0},
        {"asym8", "gptq", 8, 16, 0, 0, 1, 0, 0},
        {"asym3_mse", "gptq", 3, 16, 0, 1, 1, 0, 0},
        {"asym4_quirks_act", "gptq", 4, 16, 0, 0, 1, 0, 1},
        {"sym4_quirks", "gptq", 4, 16, 1, 0, 0, 0, 1},
        {"asym3_quirks_chan", "gptq", 3, 0, 0, 0, 1, 0, 1},
    };
    const int nc = (int)(sizeof cases / sizeof cases[0]);
    REQUIRE(run_numpy(cases, nc, ROWS, COLS, BLOCK, W, H) == 0);
    int explained_total;
    compare_gptq(cases, nc, ROWS, COLS, BLOCK, W, H, 1, &explained_total);
    CHECK_MSG(explained_total <= 3, "%d rows differ in total", explained_total);
    free(W);
    free(X);
    free(H);
}

/* Groups that do not divide the columns: 72 columns in groups of 16 (the last one 8 wide),
 * groups of 20 (last 12) and 40 (last 32), blocks of 24 and 32 that cut groups in the
 * middle; RTN, GPTQ, sym, act-order (groups over storage order, the short one last in
 * processing order), static groups (natural groups, the short one holding the last input
 * columns), MSE, and the reference quirks. */
TEST(quant_partial_group_matches_numpy)
{
    if (!lmp_test_have_numpy()) lmp_test_skip("no numpy in /usr/bin/python3");
    enum { ROWS = 16, COLS = 72, N = 300 };
    unsigned long long s = 41;
    float *W = rand_mat(&s, ROWS * COLS, 0.1f);
    for (int j = 64; j < COLS; j++) W[3 * COLS + j] = 0.0f;             /* all-zero short group */
    for (int j = 64; j < COLS; j++) W[4 * COLS + j] = fabsf(W[4 * COLS + j]); /* one-signed */
    float *X = corr_inputs(&s, N, COLS, 70); /* input 70 (in the short group) is dead */
    float *H = calloc((size_t)COLS * COLS, sizeof *H);
    int64_t ns = 0;
    struct lmp_err err = {{0}};
    REQUIRE(lmp_quant_hessian_accumulate(H, COLS, X, N, &ns, &err) == LMP_OK);
    lmp_quant_hessian_finalize(H, COLS);
    static const struct qcase rtn[] = {
        {"p_rtn4", "rtn", 4, 16, 0, 0, 0, 0, 0},   {"p_rtn3_sym", "rtn", 3, 16, 1, 0, 0, 0, 0},
        {"p_rtn3_mse", "rtn", 3, 20, 0, 1, 0, 0, 0}, {"p_rtn2_g40", "rtn", 2, 40, 0, 0, 0, 0, 0},
        {"p_rtn4_g100", "rtn", 4, 100, 0, 0, 0, 0, 0},
    };
    const int nr = (int)(sizeof rtn / sizeof rtn[0]);
    REQUIRE(run_numpy(rtn, nr, ROWS, COLS, 24, W, NULL) == 0);
    int ties;
    compare_rtn(rtn, nr, ROWS, COLS, W, &ties);
    CHECK_MSG(ties <= 2, "%d RTN groups differ at rounding boundaries", ties);

    static const struct qcase gq[] = {
        {"p_asym4", "gptq", 4, 16, 0, 0, 0, 0, 0},
        {"p_sym4", "gptq", 4, 16, 1, 0, 0, 0, 0},
        {"p_asym3_act", "gptq", 3, 16, 0, 0, 1, 0, 0},
        {"p_asym3_act_static", "gptq", 3, 16, 0, 0, 1, 1, 0},
        {"p_sym3_act_static", "gptq", 3, 20, 1, 0, 1, 1, 0},
        {"p_asym3_g20", "gptq", 3, 20, 0, 0, 0, 0, 0},
        {"p_asym4_g40_act_mse", "gptq", 4, 40, 0, 1, 1, 0, 0},
        {"p_asym4_quirks", "gptq", 4, 20, 0, 0, 0, 0, 1},
        {"p_asym3_quirks_act", "gptq", 3, 16, 0, 0, 1, 0, 1},
    };
    const int ng = (int)(sizeof gq / sizeof gq[0]);
    REQUIRE(run_numpy(gq, ng, ROWS, COLS, 24, W, H) == 0);
    int expl;
    compare_gptq(gq, ng, ROWS, COLS, 24, W, H, 1, &expl);
    CHECK_MSG(expl <= 3, "%d rows differ in total", expl);
    free(W);
    free(X);
    free(H);
}
/* ---- Hessian ------------------------------------------------------------------------- */

TEST(quant_hessian_running_average)
{
    enum { COLS = 40, N = 300 };
    unsigned long long s = 3;
    float *X = corr_inputs(&s, N, COLS, -1);
    float *H = calloc(COLS * COLS, sizeof *H);
    int64_t ns = 0;
    struct lmp_err err = {{0}};
    int cuts[] = {0, 1, 50, 51, 200, N};
    for (int k = 0; k + 1 < 6; k++)
        REQUIRE(lmp_quant_hessian_accumulate(H, COLS, X + cuts[k] * COLS, cuts[k + 1] - cuts[k], &ns,
                                             &err) == LMP_OK);
    CHECK_EQ_INT(ns, N);
    lmp_quant_hessian_finalize(H, COLS);
    float *R = malloc(COLS * COLS * sizeof *R);
    for (int i = 0; i < COLS; i++)
        for (int j = 0; j < COLS; j++) {
            double a = 0;
            for (int n = 0; n < N; n++) a += (double)X[n * COLS + i] * X[n * COLS + j];
            R[i * COLS + j] = (float)(2.0 * a / N);
        }
    CHECK_CLOSE("H vs 2/N X^T X", H, R, COLS * COLS, 1e-4, 1e-4);
    X[7] = NAN;
    CHECK(lmp_quant_hessian_accumulate(H, COLS, X, 2, &ns, &err) == LMP_ERR_ARG);
    free(X);
    free(H);
    free(R);
}

/* ---- target correction (fp target) ------------------------------------------------------ */

/* ||W Xf^T - Wh X^T||_F^2: the unquantized layer on its own inputs vs the quantized one */
static double asym_err(const float *W, const float *Xf, const float *Wh, const float *X, int rows,
                       int cols, int n)
{
    float *A = malloc((size_t)rows * n * sizeof *A);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n, cols, 1.0f, W, cols, Xf, cols,
                0.0f, A, n);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n, cols, -1.0f, Wh, cols, X, cols,
                1.0f, A, n);
    double e = 0;
    for (long i = 0; i < (long)rows * n; i++) e += (double)A[i] * A[i];
    free(A);
    return e;
}

TEST(quant_fp_target)
{
    enum { ROWS = 48, COLS = 64, N = 600 };
    unsigned long long s = 31;
    float *W = malloc(sizeof(float) * ROWS * COLS);
    for (int i = 0; i < ROWS * COLS; i++) W[i] = randn(&s) * 0.05f;
    float *Xf = corr_inputs(&s, N, COLS, -1), *X = malloc(sizeof(float) * N * COLS);
    /* the quantized model's inputs: the unquantized ones plus a correlated error */
    for (long i = 0; i < (long)N * COLS; i++) X[i] = Xf[i] * (1.0f + 0.2f * randn(&s)) + 0.1f * randn(&s);
    float *H = calloc(COLS * COLS, sizeof *H), *Cm = calloc(COLS * COLS, sizeof *Cm);
    int64_t ns = 0;
    struct lmp_err err = {{0}};
    const int cuts[] = {0, 7, 300, N};
    for (int k = 0; k < 3; k++) {
        int n = cuts[k + 1] - cuts[k];
        REQUIRE(lmp_quant_cross_accumulate(Cm, COLS, COLS, Xf + cuts[k] * COLS, X + cuts[k] * COLS, n, ns,
                                           &err) == LMP_OK);
        REQUIRE(lmp_quant_hessian_accumulate(H, COLS, X + cuts[k] * COLS, n, &ns, &err) == LMP_OK);
    }
    /* C = 2/N sum xf x^T, in double */
    float *R = malloc(sizeof(float) * COLS * COLS);
    for (int i = 0; i < COLS; i++)
        for (int j = 0; j < COLS; j++) {
            double a = 0;
            for (int t = 0; t < N; t++) a += (double)Xf[t * COLS + i] * X[t * COLS + j];
            R[i * COLS + j] = (float)(2.0 * a / N);
        }
    CHECK_CLOSE("C vs 2/N Xf^T X", Cm, R, COLS * COLS, 1e-4, 1e-4);

    struct lmp_quant_opts o;
    lmp_quant_opts_default(&o);
    o.bits = 3;
    o.group = 24; /* 64 = 24 + 24 + 16 */
    float *Wt = malloc(sizeof(float) * ROWS * COLS);
    /* without damping, the normal equations Wt H = W C hold */
    o.damp = 0.0f;
    REQUIRE(lmp_quant_fp_target(W, ROWS, COLS, H, Cm, NULL, 1.0f, &o, Wt, &err) == LMP_OK);
    double maxd = 0, maxr = 0;
    for (int r = 0; r < ROWS; r++)
        for (int j = 0; j < COLS; j++) {
            double a = 0, b = 0;
            for (int k = 0; k < COLS; k++) {
                a += (double)Wt[r * COLS + k] * (k <= j ? H[k * COLS + j] : H[j * COLS + k]);
                b += (double)W[r * COLS + k] * Cm[k * COLS + j];
            }
            if (fabs(a - b) > maxd) maxd = fabs(a - b);
            if (fabs(b) > maxr) maxr = fabs(b);
        }
    fprintf(stderr, "    max |Wt H - W C| = %.3g (max |W C| %.3g)\n", maxd, maxr);
    CHECK(maxd < 1e-4 * maxr);
    /* alpha 0, or identical inputs (C = H): the weights themselves, damping or not */
    o.damp = 0.01f;
    REQUIRE(lmp_quant_fp_target(W, ROWS, COLS, H, Cm, NULL, 0.0f, &o, Wt, &err) == LMP_OK);
    CHECK(memcmp(Wt, W, sizeof(float) * ROWS * COLS) == 0);
    float *Hf = malloc(sizeof(float) * COLS * COLS);
    memcpy(Hf, H, sizeof(float) * COLS * COLS);
    lmp_quant_hessian_finalize(Hf, COLS);
    REQUIRE(lmp_quant_fp_target(W, ROWS, COLS, H, Hf, NULL, 1.0f, &o, Wt, &err) == LMP_OK);
    CHECK_CLOSE("Wt when Xf = X", Wt, W, ROWS * COLS, 1e-6, 1e-5);

    /* GPTQ toward the corrected target reproduces W Xf better than GPTQ of W itself */
    REQUIRE(lmp_quant_fp_target(W, ROWS, COLS, H, Cm, NULL, 1.0f, &o, Wt, &err) == LMP_OK);
    float *Wh = malloc(sizeof(float) * ROWS * COLS);
    struct lmp_qtensor_out q;
    REQUIRE(lmp_quant_gptq_matrix(W, ROWS, COLS, H, &o, &q, Wh, &err) == LMP_OK);
    lmp_qtensor_out_free(&q);
    double e_plain = asym_err(W, Xf, Wh, X, ROWS, COLS, N);
    REQUIRE(lmp_quant_gptq_matrix(Wt, ROWS, COLS, H, &o, &q, Wh, &err) == LMP_OK);
    lmp_qtensor_out_free(&q);
    double e_fp = asym_err(W, Xf, Wh, X, ROWS, COLS, N);
    /* unquantized: W itself, and the least-squares target (the best any weights can do) */
    double e_w = asym_err(W, Xf, W, X, ROWS, COLS, N);
    double e_lsq = asym_err(W, Xf, Wt, X, ROWS, COLS, N);
    fprintf(stderr, "    ||W Xf - Q X||^2: GPTQ %.4g, fp target %.4g; unquantized W %.4g, target %.4g\n",
            e_plain, e_fp, e_w, e_lsq);
    CHECK(e_lsq < e_w);
    /* the quantized fp target keeps at least half of what the target gains */
    CHECK(e_fp < e_plain - 0.5 * (e_w - e_lsq));

    Cm[5] = NAN;
    CHECK(lmp_quant_fp_target(W, ROWS, COLS, H, Cm, NULL, 1.0f, &o, Wt, &err) == LMP_ERR_ARG);
    Xf[3] = INFINITY;
    CHECK(lmp_quant_cross_accumulate(Cm, COLS, COLS, Xf, X, 4, 0, &err) == LMP_ERR_ARG);
    free(W);
    free(Xf);
    free(X);
    free(H);
    free(Cm);
    free(R);
    free(Wt);
    free(Hf);
    free(Wh);
}

/* ---- (a) GPTQ beats RTN ---------------------------------------------------------------- */

TEST(quant_gptq_beats_rtn)
{
    enum { ROWS = 96, COLS = 256, N = 1024 };
    unsigned long long s = 17;
    float *W = malloc(sizeof(float) * ROWS * COLS);
    for (int i = 0; i < ROWS * COLS; i++) W[i] = randn(&s) * 0.02f;
    float *X = corr_inputs(&s, N, COLS, 3);
    float *H = calloc((size_t)COLS * COLS, sizeof *H);
    int64_t ns = 0;
    struct lmp_err err = {{0}};
    for (int k = 0; k < N; k += 256)
        REQUIRE(lmp_quant_hessian_accumulate(H, COLS, X + k * COLS, 256, &ns, &err) == LMP_OK);
    float *Wh = malloc(sizeof(float) * ROWS * COLS);
    for (int bits = 3; bits <= 4; bits++)
        for (int gi = 0; gi < 3; gi++) {
            const int group = (int[]){0, 64, 48}[gi]; /* 48: the last group is 16 wide */
            struct lmp_quant_opts o;
            lmp_quant_opts_default(&o);
            o.bits = bits;
            o.group = group;
            o.block = 64;
            struct lmp_qtensor_out q;
            REQUIRE(lmp_quant_rtn_matrix(W, ROWS, COLS, &o, &q, Wh, &err) == LMP_OK);
            lmp_qtensor_out_free(&q);
            double e_rtn = out_err(W, Wh, ROWS, COLS, X, N);
            struct {
                const char *name;
                int act, stat, mse, refine, sym;
            } v[] = {{"gptq", 0, 0, 0, 0, 0},          {"act", 1, 0, 0, 0, 0},
                     {"act+static", 1, 1, 0, 0, 0},   {"act+mse", 1, 0, 1, 0, 0},
                     {"act+refine", 1, 0, 0, 1, 0},   {"sym act", 1, 0, 0, 0, 1},
                     {"act+mse+refine", 1, 0, 1, 1, 0}};
            double e_act = 0, e_act_mse = 0;
            for (int k = 0; k < 7; k++) {
                o.act_order = v[k].act;
                o.static_groups = v[k].stat;
                o.mse = v[k].mse;
                o.refine = v[k].refine;
                o.sym = v[k].sym;
                REQUIRE(lmp_quant_gptq_matrix(W, ROWS, COLS, H, &o, &q, Wh, &err) == LMP_OK);
                double e = out_err(W, Wh, ROWS, COLS, X, N);
                fprintf(stderr, "    %d bits group %3d: %-15s ||WX-QX||^2 / RTN = %.3f%s\n", bits,
                        group ? group : COLS, v[k].name, e / e_rtn,
                        v[k].refine ? "" : "");
                CHECK_MSG(e < 0.8 * e_rtn, "%d bits group %d %s: GPTQ %g not below RTN %g", bits,
                          group, v[k].name, e, e_rtn);
                if (k == 1) e_act = e;
                if (k == 3) e_act_mse = e;
                if (k == 4) {
                    CHECK_MSG(e <= e_act * 1.0001, "refine made it worse: %g > %g", e, e_act);
                    CHECK(q.refined_rows > 0);
                }
                if (k == 6) CHECK_MSG(e <= e_act_mse * 1.0001, "refine made it worse");
                /* W_hat is exactly what a kernel dequantises from the packed output */
                size_t rb = lmp_qpack_row_bytes(COLS, bits);
                uint8_t *packed = malloc(ROWS * rb);
                REQUIRE(lmp_qpack_pack(q.codes, ROWS, COLS, bits, packed, &err) == LMP_OK);
                struct lmp_qview qv;
                REQUIRE(lmp_qview_init(&qv, packed, ROWS * rb, ROWS, COLS, bits, q.group, q.scales,
                                       q.zeros, q.perm, &err) == LMP_OK);
                float *Wd = malloc(sizeof(float) * ROWS * COLS);
                lmp_qview_dequant(&qv, Wd);
                CHECK_MSG(memcmp(Wd, Wh, sizeof(float) * ROWS * COLS) == 0,
                          "%s: W_hat differs from the dequantised packed tensor", v[k].name);
                free(Wd);
                free(packed);
                lmp_qtensor_out_free(&q);
            }
        }
    free(W);
    free(X);
    free(H);
    free(Wh);
}

TEST(quant_gptq_shared_factor_and_errors)
{
    enum { ROWS = 20, COLS = 48, N = 200 };
    unsigned long long s = 23;
    float *W1 = rand_mat(&s, ROWS * COLS, 0.1f), *W2 = rand_mat(&s, ROWS * COLS, 0.3f);
    float *X = corr_inputs(&s, N, COLS, -1);
    float *H = calloc(COLS * COLS, sizeof *H);
    int64_t ns = 0;
    struct lmp_err err = {{0}};
    REQUIRE(lmp_quant_hessian_accumulate(H, COLS, X, N, &ns, &err) == LMP_OK);
    struct lmp_quant_opts o;
    lmp_quant_opts_default(&o);
    o.bits = 3;
    o.group = 16;
    o.act_order = 1;
    struct lmp_quant_hinv *h = NULL;
    REQUIRE(lmp_quant_hinv_prepare(H, COLS, &o, &h, &err) == LMP_OK);
    CHECK_EQ_INT(h->damp_retries, 0);
    const float *Ws[2] = {W1, W2};
    for (int k = 0; k < 2; k++) {
        struct lmp_qtensor_out a, b;
        REQUIRE(lmp_quant_gptq_apply(Ws[k], ROWS, COLS, h, &o, &a, NULL, &err) == LMP_OK);
        REQUIRE(lmp_quant_gptq_matrix(Ws[k], ROWS, COLS, H, &o, &b, NULL, &err) == LMP_OK);
        CHECK(memcmp(a.codes, b.codes, ROWS * COLS) == 0);
        CHECK(memcmp(a.scales, b.scales, ROWS * 3 * 2) == 0);
        lmp_qtensor_out_free(&a);
        lmp_qtensor_out_free(&b);
    }
    lmp_quant_hinv_free(h);

    /* the factor: U^T U (Hp + damp)^-1 -> identity, checked as U^T U (Hp + damp) = I */
    o.act_order = 0;
    REQUIRE(lmp_quant_hinv_prepare(H, COLS, &o, &h, &err) == LMP_OK);
    double maxd = 0;
    for (int i = 0; i < COLS; i++)
        for (int j = 0; j < COLS; j++) {
            double a = 0;
            for (int k = 0; k < COLS; k++) {
                double uu = 0; /* (U^T U)[i][k] */
                for (int m = 0; m <= (i < k ? i : k); m++)
                    uu += (double)h->U[m * COLS + i] * h->U[m * COLS + k];
                double hk = k <= j ? H[k * COLS + j] : H[j * COLS + k];
                a += uu * (hk + (k == j ? h->damp : 0.0));
            }
            double d = fabs(a - (i == j));
            if (d > maxd) maxd = d;
        }
    fprintf(stderr, "    max |U^T U (H + damp I) - I| = %.3g\n", maxd);
    CHECK(maxd < 1e-3);
    lmp_quant_hinv_free(h);

    /* an indefinite H: Cholesky fails, damping is raised 10x until it works */
    float *Hb = calloc(COLS * COLS, sizeof *Hb);
    for (int i = 0; i < COLS; i++) Hb[i * COLS + i] = 1.0f;
    for (int i = 0; i + 1 < COLS; i += 2) Hb[i * COLS + i + 1] = 2.0f; /* eigenvalues 3, -1 */
    struct lmp_qtensor_out q;
    REQUIRE(lmp_quant_gptq_matrix(W1, ROWS, COLS, Hb, &o, &q, NULL, &err) == LMP_OK);
    fprintf(stderr, "    indefinite H: %d retries, damp %g\n", q.damp_retries, q.damp);
    CHECK(q.damp_retries >= 2);
    lmp_qtensor_out_free(&q);
    o.max_retries = 1;
    CHECK(lmp_quant_gptq_matrix(W1, ROWS, COLS, Hb, &o, &q, NULL, &err) == LMP_ERR_INTERNAL);
    CHECK(q.codes == NULL);
    o.max_retries = 4;

    /* a group that does not divide 48: 5 groups, the last 8 wide */
    o.group = 10;
    REQUIRE(lmp_quant_gptq_matrix(W1, ROWS, COLS, H, &o, &q, NULL, &err) == LMP_OK);
    CHECK_EQ_INT(q.n_groups, 5);
    lmp_qtensor_out_free(&q);
    REQUIRE(lmp_quant_rtn_matrix(W1, ROWS, COLS, &o, &q, NULL, &err) == LMP_OK);
    CHECK_EQ_INT(q.n_groups, 5);
    lmp_qtensor_out_free(&q);
    o.group = 1000; /* wider than the matrix: per-channel */
    REQUIRE(lmp_quant_rtn_matrix(W1, ROWS, COLS, &o, &q, NULL, &err) == LMP_OK);
    CHECK_EQ_INT(q.n_groups, 1);
    CHECK_EQ_INT(q.group, COLS);
    lmp_qtensor_out_free(&q);
    /* bad arguments fail cleanly */
    o.group = -1;
    CHECK(lmp_quant_gptq_matrix(W1, ROWS, COLS, H, &o, &q, NULL, &err) == LMP_ERR_ARG);
    CHECK(lmp_quant_rtn_matrix(W1, ROWS, COLS, &o, &q, NULL, &err) == LMP_ERR_ARG);
    o.group = 16;
    o.bits = 5;
    CHECK(lmp_quant_gptq_matrix(W1, ROWS, COLS, H, &o, &q, NULL, &err) == LMP_ERR_ARG);
    o.bits = 4;
    o.block = 0;
    CHECK(lmp_quant_gptq_matrix(W1, ROWS, COLS, H, &o, &q, NULL, &err) == LMP_ERR_ARG);
    o.block = 128;
    W1[5] = NAN;
    CHECK(lmp_quant_gptq_matrix(W1, ROWS, COLS, H, &o, &q, NULL, &err) == LMP_ERR_ARG);
    CHECK(lmp_quant_rtn_matrix(W1, ROWS, COLS, &o, &q, NULL, &err) == LMP_ERR_ARG);
    W1[5] = 1e30f; /* a scale fp16 cannot hold */
    CHECK(lmp_quant_rtn_matrix(W1, ROWS, COLS, &o, &q, NULL, &err) == LMP_ERR_ARG);
    W1[5] = 0.0f;
    H[3] = INFINITY;
    CHECK(lmp_quant_gptq_matrix(W1, ROWS, COLS, H, &o, &q, NULL, &err) == LMP_ERR_ARG);
    free(W1);
    free(W2);
    free(X);
    free(H);
    free(Hb);
}

/* ---- (e) fused kernels --------------------------------------------------------------- */

static void check_products(int rows, int cols, int bits, int group, int with_perm,
                           unsigned long long *s)
{
    struct lmp_err err = {{0}};
    int64_t ng = (cols + group - 1) / group;
    uint8_t *codes = malloc((size_t)rows * cols);
    uint16_t *sc = malloc(rows * ng * 2), *ze = malloc(rows * ng * 2);
    int32_t *perm = malloc(cols * sizeof *perm);
    int maxq = (1 << bits) - 1;
    for (long i = 0; i < (long)rows * cols; i++)
        codes[i] = (uint8_t)((lmp_test_randf(s) + 1.0f) * 0.5f * (float)maxq + 0.5f);
    for (long i = 0; i < rows * ng; i++) {
        sc[i] = lmp_f32_to_f16(0.01f + 0.05f * (lmp_test_randf(s) + 1.0f));
        ze[i] = lmp_f32_to_f16((float)(int)((lmp_test_randf(s) + 1.0f) * 0.5f * (float)maxq));
    }
    for (int j = 0; j < cols; j++) perm[j] = j;
    for (int j = cols - 1; j > 0; j--) { /* Fisher-Yates */
        int k = (int)((lmp_test_randf(s) + 1.0f) * 0.5f * (float)(j + 1));
        if (k > j) k = j;
        int t = perm[j];
        perm[j] = perm[k];
        perm[k] = t;
    }
    size_t rb = lmp_qpack_row_bytes(cols, bits);
    uint8_t *packed = malloc(rows * rb);
    REQUIRE(lmp_qpack_pack(codes, rows, cols, bits, packed, &err) == LMP_OK);
    struct lmp_qview v;
    REQUIRE(lmp_qview_init(&v, packed, rows * rb, rows, cols, bits, group, sc, ze,
                           with_perm ? perm : NULL, &err) == LMP_OK);
    /* dense reference weights, natural order, from the generated codes */
    float *Wd = malloc(sizeof(float) * rows * cols);
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < cols; j++) {
            int g = j / group;
            float w = ((float)codes[r * cols + j] - lmp_f16_to_f32(ze[r * ng + g])) *
                      lmp_f16_to_f32(sc[r * ng + g]);
            Wd[r * cols + (with_perm ? perm[j] : j)] = w;
        }
    enum { NB = 5 };
    const int64_t ns[NB] = {1, 2, 3, 8, 33};
    float *X = rand_mat(s, 33L * cols, 1.0f);
    float *Yd = malloc(sizeof(float) * 33 * rows), *Yr = malloc(sizeof(float) * 33 * rows);
    float *Yf = malloc(sizeof(float) * 33 * rows);
    float *scratch = malloc(lmp_qmatmul_scratch_floats(&v, 33) * sizeof(float));
    /* tolerance: a few float roundings of sum |w x| */
    float *tol = malloc(sizeof(float) * 33 * rows);
    for (int i = 0; i < 33; i++)
        for (int r = 0; r < rows; r++) {
            double a = 0;
            for (int j = 0; j < cols; j++) a += fabs((double)Wd[r * cols + j] * X[i * cols + j]);
            tol[i * rows + r] = (float)(1e-5 * a + 1e-30);
        }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 33, rows, cols, 1.0f, X, cols, Wd, cols,
                0.0f, Yd, rows);
    char what[128];
    long bad = 0;
    lmp_qmatvec_ref(&v, X, Yr, scratch);
    lmp_qmatvec(&v, X, Yf, scratch);
    for (int r = 0; r < rows; r++) {
        if (!(fabsf(Yr[r] - Yd[r]) <= tol[r])) bad++;
        if (!(fabsf(Yf[r] - Yr[r]) <= tol[r])) bad++;
    }
    snprintf(what, sizeof what, "matvec rows %d cols %d bits %d group %d perm %d", rows, cols,
             bits, group, with_perm);
    CHECK_MSG(bad == 0, "%s: %ld outside tolerance", what, bad);
    for (int k = 0; k < NB; k++) {
        int64_t n = ns[k];
        lmp_qgemm_ref(&v, X, n, Yr, scratch);
        memset(Yf, 0xff, sizeof(float) * n * rows); /* NaN: every output must be written */
        lmp_qgemm(&v, X, n, Yf, scratch);
        bad = 0;
        float maxd = 0;
        for (long i = 0; i < n * rows; i++) {
            if (!(fabsf(Yr[i] - Yd[i]) <= tol[i])) bad++;
            if (!(fabsf(Yf[i] - Yr[i]) <= tol[i])) bad++;
            if (fabsf(Yf[i] - Yd[i]) > maxd) maxd = fabsf(Yf[i] - Yd[i]);
        }
        CHECK_MSG(bad == 0, "gemm n %lld %s: %ld outside tolerance (max |fast - dense| %g)",
                  (long long)n, what, bad, (double)maxd);
    }
    free(codes);
    free(sc);
    free(ze);
    free(perm);
    free(packed);
    free(Wd);
    free(X);
    free(Yd);
    free(Yr);
    free(Yf);
    free(scratch);
    free(tol);
}

TEST(quant_qmatmul_fast_vs_ref_vs_dense)
{
    fprintf(stderr, "    fast path: %s\n", lmp_qmatmul_have_avx2() ? "AVX2" : "portable");
    unsigned long long s = 29;
    const int bitsv[] = {2, 3, 4, 8};
    const int groups[] = {4, 12, 32, 172};
    for (int bi = 0; bi < 4; bi++)
        for (int gi = 0; gi < 4; gi++)
            for (int p = 0; p < 2; p++) check_products(37, 172, bitsv[bi], groups[gi], p, &s);
    /* larger: the OpenMP and multi-tile paths */
    for (int bi = 0; bi < 4; bi++) check_products(300, 1024, bitsv[bi], 128, bi & 1, &s);
    check_products(5, 9, 3, 9, 1, &s);
}
