/* Tests of the CUDA runtime (build/cuda/lmpress-cuda-tests, run on a machine with a GPU;
 * every test skips when there is none). Each kernel is compared with the CPU scalar
 * reference (runtime/kernels.c *_ref, runtime/qmatmul.c lmp_qgemm_ref) on fresh random
 * inputs, its outputs poisoned with NaN before the run (so an unwritten element fails);
 * whole forwards are compared with the CPU forward, perplexity with lmp_eval_ppl, GPU GPTQ
 * with CPU GPTQ. */
#include "../test.h"
#include "../test_rtmodel.h"

#include "eval/eval.h"
#include "formats/qpack.h"
#include "formats/tokenizer.h"
#include "quantize/quant.h"
#include "quantize/quant_model.h"
#include "runtime/cuda/rt_cuda.h"
#include "runtime/qmatmul.h"
#include "runtime/runtime.h"

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define S260K "models/stories260K.bin"
#define EVAL_TXT "data/tinystories/eval.txt"
#define CALIB_TXT "data/tinystories/calib.txt"

/* fresh random inputs per run; each seed is printed, and LMP_CUDA_SEED repeats a run: one
 * number for a test that draws one seed, or the test's seeds in order, comma-separated (each
 * call takes the next; past the end, the last) */
static unsigned long long seed_now(void)
{
    static const char *next = NULL;
    const char *e = getenv("LMP_CUDA_SEED");
    unsigned long long s;
    if (e && *e) {
        if (!next) next = e;
        char *end = NULL;
        s = strtoull(next, &end, 10);
        if (end && *end == ',') next = end + 1;
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        s = (unsigned long long)ts.tv_nsec * 2654435761ull + (unsigned long long)ts.tv_sec;
    }
    s = s ? s : 1;
    printf("    seed %llu (LMP_CUDA_SEED=%llu repeats it)\n", s, s);
    return s;
}

static void need_gpu(void)
{
    struct lmp_cuda_info info;
    struct lmp_err err = {{0}};
    if (lmp_cuda_probe(0, &info, &err) != LMP_OK) lmp_test_skip(err.msg);
}

static float *rnd(long n, float scale, unsigned long long *s)
{
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof *p);
    for (long i = 0; p && i < n; i++) p[i] = scale * lmp_test_randf(s);
    return p;
}

static float max_abs(const float *x, long n)
{
    float m = 0;
    for (long i = 0; i < n; i++) m = fabsf(x[i]) > m ? fabsf(x[i]) : m;
    return m;
}

/* a call that must succeed; its message otherwise */
#define OKCALL(call)                                                                       \
    do {                                                                                   \
        if ((call) != LMP_OK) {                                                            \
            lmp_test_fail(__FILE__, __LINE__, "%s: %s", #call, err.msg);                    \
            return;                                                                        \
        }                                                                                  \
    } while (0)

TEST(cuda_device)
{
    struct lmp_cuda_info info;
    struct lmp_err err = {{0}};
    if (lmp_cuda_probe(0, &info, &err) != LMP_OK) lmp_test_skip(err.msg);
    fprintf(stderr, "    device: %s, cc %d.%d, %d SMs, %.1f GiB (%.1f free), driver %d, runtime %d\n",
            info.name, info.cc_major, info.cc_minor, info.n_sm, info.mem_total / 1073741824.0,
            info.mem_free / 1073741824.0, info.driver_version, info.runtime_version);
    CHECK(info.n_sm > 0 && info.mem_total > 0);
}

TEST(cuda_rmsnorm_rope_swiglu)
{
    need_gpu();
    unsigned long long s = seed_now();
    struct lmp_err err = {{0}};
    const int n = 5, dim = 333;
    float *x = rnd(n * dim, 3.0f, &s), *w = rnd(dim, 1.0f, &s);
    float *y = malloc(n * dim * 4), *yr = malloc(n * dim * 4);
    OKCALL(lmp_cuda_k_rmsnorm(y, x, w, n, dim, 1e-5f, &err));
    lmp_rt_rmsnorm_ref(yr, x, w, n, dim, 1e-5f);
    CHECK_CLOSE("rmsnorm", y, yr, n * dim, 1e-6, 1e-5);

    const int rn = 7, nh = 3, hd = 16;
    float *cs = malloc(rn * hd * 4);
    lmp_rt_rope_table(cs, 11, rn, hd, 10000.0f);
    float *q = rnd(rn * nh * hd, 2.0f, &s), *q2 = malloc(rn * nh * hd * 4);
    memcpy(q2, q, rn * nh * hd * 4);
    OKCALL(lmp_cuda_k_rope(q, rn, nh, hd, cs, &err));
    lmp_rt_rope_ref(q2, rn, nh, hd, cs);
    CHECK_CLOSE("rope", q, q2, rn * nh * hd, 1e-6, 1e-5);

    const long cnt = 10001;
    float *g = rnd(cnt, 8.0f, &s), *u = rnd(cnt, 2.0f, &s), *g2 = malloc(cnt * 4);
    memcpy(g2, g, cnt * 4);
    OKCALL(lmp_cuda_k_swiglu(g, u, cnt, &err));
    lmp_rt_swiglu_ref(g2, u, cnt);
    CHECK_CLOSE("swiglu", g, g2, cnt, 1e-6, 1e-5);
    free(x), free(w), free(y), free(yr), free(cs), free(q), free(q2), free(g), free(u), free(g2);
}

TEST(cuda_attention)
{
    need_gpu();
    unsigned long long s = seed_now();
    struct lmp_err err = {{0}};
    static const struct {
        int n, pos, nh, nkv, hd;
    } cases[] = {{1, 0, 4, 4, 8},   {1, 37, 8, 2, 64}, {9, 0, 8, 4, 8},   {5, 100, 6, 3, 128},
                 {3, 17, 2, 1, 160}, {16, 40, 4, 2, 32}, {1, 300, 32, 8, 128}, {1, 5, 4, 2, 16},
                 {2, 70, 2, 2, 4},   {1, 2000, 4, 1, 128}, {4, 9, 3, 3, 12}, {1, 99, 4, 2, 64},
                 {1, 15, 2, 2, 32},  {1, 47, 8, 8, 128}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int n = cases[c].n, pos = cases[c].pos, nh = cases[c].nh, nkv = cases[c].nkv,
                  hd = cases[c].hd, ld = pos + n + 3;
        float *q = rnd((long)n * nh * hd, 1.0f, &s);
        float *kc = rnd((long)nkv * hd * ld, 1.0f, &s), *vc = rnd((long)nkv * hd * ld, 1.0f, &s);
        float *o = malloc((size_t)n * nh * hd * 4), *or = malloc((size_t)n * nh * hd * 4);
        float *scr = malloc((size_t)(pos + n) * 8 * 4);
        OKCALL(lmp_cuda_k_attention(o, q, kc, vc, ld, n, pos, nh, nkv, hd, &err));
        lmp_rt_attention_ref(or, q, kc, vc, ld, n, pos, nh, nkv, hd, scr, 1);
        char what[96];
        snprintf(what, sizeof what, "attention n %d pos %d heads %d/%d hd %d", n, pos, nh, nkv, hd);
        CHECK_CLOSE(what, o, or, (long)n * nh * hd, 2e-6, 1e-4);
        free(q), free(kc), free(vc), free(o), free(or), free(scr);
    }
}

TEST(cuda_matmul_f32_f16)
{
    need_gpu();
    unsigned long long s = seed_now();
    struct lmp_err err = {{0}};
    static const struct {
        int n, in, out, f16, bias;
    } cases[] = {{1, 256, 100, 0, 0}, {1, 333, 77, 0, 1}, {4, 256, 300, 0, 1}, {1, 512, 129, 1, 0},
                 {3, 264, 50, 1, 1},  {1, 100, 33, 1, 0}, {1, 4096, 1000, 1, 0}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int n = cases[c].n, in = cases[c].in, out = cases[c].out;
        float *x = rnd((long)n * in, 1.0f, &s), *w = rnd((long)in * out, 1.0f, &s);
        float *b = cases[c].bias ? rnd(out, 1.0f, &s) : NULL;
        uint16_t *wh = NULL;
        if (cases[c].f16) {
            wh = malloc((size_t)in * out * 2);
            for (long i = 0; i < (long)in * out; i++) {
                wh[i] = lmp_f32_to_f16(w[i]);
                w[i] = lmp_f16_to_f32(wh[i]); /* the reference multiplies the same values */
            }
        }
        float *y = malloc((size_t)n * out * 4), *yr = malloc((size_t)n * out * 4);
        OKCALL(lmp_cuda_k_matmul(y, x, wh ? (const void *)wh : (const void *)w, cases[c].f16, b, n,
                                 in, out, &err));
        lmp_rt_matmul_ref(yr, x, w, b, n, in, out, 1);
        char what[96];
        snprintf(what, sizeof what, "matmul %s n %d %dx%d%s", cases[c].f16 ? "f16" : "f32", n, out,
                 in, b ? " bias" : "");
        CHECK_CLOSE(what, y, yr, (long)n * out, 2e-5 * sqrt((double)in), 1e-4);
        free(x), free(w), free(b), free(wh), free(y), free(yr);
    }
}

/* A random packed matrix: codes, fp16 scales (positive, small) and integer zeros. */
struct qmat {
    uint8_t *packed;
    uint16_t *scales, *zeros;
    int32_t *perm;
    struct lmp_qview v;
};
static int qmat_make(struct qmat *q, int rows, int cols, int bits, int group, int with_perm,
                     unsigned long long *s)
{
    struct lmp_err err = {{0}};
    size_t cb, pb;
    memset(q, 0, sizeof *q);
    if (lmp_qpack_sizes(rows, cols, bits, group, &cb, &pb, &err)) return 0;
    uint8_t *codes = malloc((size_t)rows * cols);
    q->packed = malloc(cb);
    q->scales = malloc(pb);
    q->zeros = malloc(pb);
    if (!codes || !q->packed || !q->scales || !q->zeros) return 0;
    unsigned maxq = (1u << bits) - 1;
    for (long i = 0; i < (long)rows * cols; i++)
        codes[i] = (uint8_t)((unsigned)((lmp_test_randf(s) + 1.0f) * 0.5f * (maxq + 1)) & maxq);
    for (size_t i = 0; i < pb / 2; i++) {
        q->scales[i] = lmp_f32_to_f16(0.001f + 0.02f * (lmp_test_randf(s) + 1.0f));
        q->zeros[i] = lmp_f32_to_f16((float)((unsigned)((lmp_test_randf(s) + 1.0f) * 0.5f * maxq)));
    }
    if (lmp_qpack_pack(codes, rows, cols, bits, q->packed, &err)) return 0;
    free(codes);
    if (with_perm) {
        q->perm = malloc((size_t)cols * 4);
        for (int j = 0; j < cols; j++) q->perm[j] = j;
        for (int j = cols - 1; j > 0; j--) { /* Fisher-Yates */
            int k = (int)((lmp_test_randf(s) + 1.0f) * 0.5f * (j + 1)) % (j + 1);
            int32_t t = q->perm[j];
            q->perm[j] = q->perm[k];
            q->perm[k] = t;
        }
    }
    return lmp_qview_init(&q->v, q->packed, cb, rows, cols, bits, group, q->scales, q->zeros,
                          q->perm, &err) == LMP_OK;
}
static void qmat_free(struct qmat *q)
{
    free(q->packed), free(q->scales), free(q->zeros), free(q->perm);
}

TEST(cuda_qmatmul_all_bits)
{
    need_gpu();
    unsigned long long s = seed_now();
    struct lmp_err err = {{0}};
    static const struct {
        int rows, cols, group, perm;
    } shapes[] = {{64, 256, 32, 0},  {37, 256, 128, 1}, {50, 172, 172, 0}, {33, 172, 24, 0},
                  {20, 4096, 128, 0}, {40, 1000, 200, 1}, {16, 64, 64, 0},  {300, 11008, 128, 0},
                  {33, 512, 512, 0},  {48, 384, 384, 0},  {40, 1024, 256, 0}, {16, 384, 128, 0},
                  {24, 768, 384, 0}};
    static const int bits[] = {2, 3, 4, 8};
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++)
        for (size_t b = 0; b < 4; b++) {
            struct qmat q;
            const int rows = shapes[c].rows, cols = shapes[c].cols;
            REQUIRE(qmat_make(&q, rows, cols, bits[b], shapes[c].group, shapes[c].perm, &s));
            const int n = 8; /* the tile kernels take a different shape per input (ktest.cu) */
            float *X = rnd((long)n * cols, 1.0f, &s);
            float *Yr = malloc((size_t)n * rows * 4), *Y = malloc((size_t)n * rows * 4);
            float *scr = malloc(lmp_qmatmul_scratch_floats(&q.v, n) * 4 + 4);
            lmp_qgemm_ref(&q.v, X, n, Yr, scr);
            const double m = max_abs(Yr, (long)n * rows);
            char what[128];
            /* the fused kernels' reference for variant 4: silu(y) * y */
            float *Yg = malloc((size_t)n * rows * 4);
            for (long i = 0; i < (long)n * rows; i++) Yg[i] = Yr[i] / (1.0f + expf(-Yr[i])) * Yr[i];
            const double mg = max_abs(Yg, (long)n * rows);
            /* which matrices the fused decode kernels take: 4-bit, no perm, cols % 32 == 0,
             * groups a power-of-two multiple of 32 or one per row */
            const int g = shapes[c].group;
            const int fused = bits[b] == 4 && !shapes[c].perm && cols % 32 == 0 &&
                              (g == cols || (g % 32 == 0 && (g & (g - 1)) == 0));
            /* the tile kernels: also cols % 128 == 0 and groups of 128 * 2^k or one per row */
            const int tiled = bits[b] == 4 && !shapes[c].perm && cols % 128 == 0 &&
                              (g == cols || (g % 128 == 0 && ((g / 128) & (g / 128 - 1)) == 0));
            static const char *names[] = {"matvec fp32", "matvec fp16", "sgemm", "fused decode",
                                          "fused decode gate/up", "tile decode",
                                          "tile decode gate/up"};
            for (int variant = 0; variant < 7; variant++) {
                if (variant == 1 && bits[b] != 4) continue;
                snprintf(what, sizeof what, "Q%d %dx%d g%d%s %s", bits[b], rows, cols,
                         shapes[c].group, shapes[c].perm ? " perm" : "", names[variant]);
                if (variant >= 3) {
                    enum lmp_status r = lmp_cuda_k_qmatmul(&q.v, X, n, Y, variant, &err);
                    /* declines exactly the matrices it should not take */
                    const int takes = variant >= 5 ? tiled : fused;
                    CHECK_MSG(takes ? r == LMP_OK : r == LMP_ERR_UNSUPPORTED, "%s: status %d (%s)",
                              what, (int)r, err.msg);
                    if (r != LMP_OK) continue;
                } else
                    OKCALL(lmp_cuda_k_qmatmul(&q.v, X, n, Y, variant, &err));
                const int fp16 = variant == 1 || variant == 3;
                if (variant == 4 || variant == 6)
                    CHECK_CLOSE(what, Y, Yg, (long)n * rows, 5e-3 * mg + 1e-6, 5e-3);
                else if (variant == 5) /* fp32 sums of exact products: tighter than fp16 */
                    CHECK_CLOSE(what, Y, Yr, (long)n * rows, 2e-3 * m, 2e-3);
                else
                    CHECK_CLOSE(what, Y, Yr, (long)n * rows, fp16 ? 5e-3 * m : 2e-5 * m + 1e-6,
                                fp16 ? 5e-3 : 1e-4);
            }
            free(Yg);
            free(X), free(Y), free(Yr), free(scr);
            qmat_free(&q);
        }
}

TEST(cuda_nll)
{
    need_gpu();
    unsigned long long s = seed_now();
    struct lmp_err err = {{0}};
    const int n = 9, V = 32000;
    float *lg = rnd((long)n * V, 12.0f, &s);
    int32_t t[9];
    double nll[9];
    for (int i = 0; i < n; i++) t[i] = (int32_t)((lmp_test_randf(&s) + 1.0f) * 0.5f * (V - 1));
    OKCALL(lmp_cuda_k_nll(nll, lg, t, n, V, &err));
    for (int i = 0; i < n; i++) {
        const float *r = lg + (size_t)i * V;
        double mx = -INFINITY, sum = 0;
        for (int c = 0; c < V; c++) mx = r[c] > mx ? r[c] : mx;
        for (int c = 0; c < V; c++) sum += exp((double)r[c] - mx);
        double ref = log(sum) - ((double)r[t[i]] - mx);
        CHECK_MSG(fabs(nll[i] - ref) <= 1e-5 * (1 + fabs(ref)), "nll %d: %.9g vs %.9g", i, nll[i], ref);
    }
    free(lg);
}

/* logits of tok through the CPU runtime (batched) */
static float *cpu_logits(const struct lmp_model *m, const int32_t *tok, int n)
{
    struct lmp_rt_state *s = NULL;
    struct lmp_err err = {{0}};
    float *lg = malloc((size_t)n * m->cfg.vocab * 4);
    if (!lg || lmp_rt_state_create(m, n, n, NULL, &s, &err)) {
        lmp_test_fail(__FILE__, __LINE__, "cpu state: %s", err.msg);
        free(lg);
        return NULL;
    }
    if (lmp_rt_forward(s, tok, n, 0, lg, NULL, &err)) {
        lmp_test_fail(__FILE__, __LINE__, "cpu forward: %s", err.msg);
        free(lg);
        lg = NULL;
    }
    lmp_rt_state_free(s);
    return lg;
}

/* GPU logits: a prefill of n0 tokens, then one token at a time (the graph), then the rest
 * as a batch */
/* what the last gpu_logits decoded through: layers and head on the tile kernels */
static int last_tile_layers = -1, last_tile_head = -1, last_persistent = -1, last_oh_layers = -1, last_oh_shares = -1;

static float *gpu_logits(const struct lmp_model *m, const int32_t *tok, int n, int n0, int n1,
                         const struct lmp_cuda_opts *o)
{
    struct lmp_cuda_state *s = NULL;
    struct lmp_err err = {{0}};
    const int V = m->cfg.vocab;
    float *lg = malloc((size_t)n * V * 4);
    if (!lg || lmp_cuda_state_create(m, n, 8, o, &s, &err)) {
        lmp_test_fail(__FILE__, __LINE__, "gpu state: %s", err.msg);
        free(lg);
        return NULL;
    }
    for (int i = 0; i < n * V; i++) lg[i] = NAN;
    lmp_cuda_decode_info(s, &last_tile_layers, &last_tile_head);
    enum lmp_status st = lmp_cuda_forward(s, tok, n0, 0, lg, &err);
    for (int i = n0; !st && i < n0 + n1; i++)
        st = lmp_cuda_forward(s, tok + i, 1, i, lg + (size_t)i * V, &err);
    if (!st) st = lmp_cuda_forward(s, tok + n0 + n1, n - n0 - n1, n0 + n1, lg + (size_t)(n0 + n1) * V, &err);
    last_persistent = lmp_cuda_decode_persistent(s);
    lmp_cuda_decode_att_o(s, &last_oh_layers, &last_oh_shares);
    if (st) {
        lmp_test_fail(__FILE__, __LINE__, "gpu forward: %s", err.msg);
        free(lg);
        lg = NULL;
    }
    lmp_cuda_state_free(s);
    return lg;
}

static void to_f16(struct lmp_tensor *t)
{
    int64_t ne = lmp_tensor_nelem(t);
    uint16_t *h = malloc((size_t)ne * 2);
    for (int64_t i = 0; i < ne; i++) h[i] = lmp_f32_to_f16(((float *)t->data)[i]);
    if (t->owned) free(t->data);
    t->data = h;
    t->owned = 1;
    t->type = LMP_TYPE_F16;
    t->nbytes = (size_t)ne * 2;
}

TEST(cuda_forward_odd_shapes_vs_cpu)
{
    need_gpu();
    static const struct tl ls[] = {{6, 2, 172}, {4, 4, 53}, {8, 1, 37}};
    for (int bias = 0; bias < 2; bias++) {
        struct lmp_model *m = build_model(64, 8, 101, 3, ls, bias, !bias, 10000.0f, 1e-5f, 80,
                                          NULL, seed_now());
        REQUIRE(m);
        if (bias) { /* F16 storage for a few: both runtimes read the same values */
            to_f16(m->layers[0].wq);
            to_f16(m->layers[2].w_up);
            to_f16(m->out);
        }
        int32_t tok[40];
        unsigned long long s = seed_now();
        for (int i = 0; i < 40; i++) tok[i] = (int32_t)((lmp_test_randf(&s) + 1.0f) * 0.5f * 100);
        float *lc = cpu_logits(m, tok, 40);
        REQUIRE(lc);
        struct lmp_cuda_opts o = {.exact_gemv = 1};
        for (int graph = 0; graph < 2; graph++) {
            o.no_graph = !graph;
            float *lg = gpu_logits(m, tok, 40, 13, 5, &o);
            REQUIRE(lg);
            char what[96];
            snprintf(what, sizeof what, "logits %s, %s", bias ? "bias+f16" : "tied",
                     graph ? "graph" : "no graph");
            CHECK_CLOSE(what, lg, lc, 40L * 101, 1e-4 * max_abs(lc, 40L * 101), 1e-4);
            free(lg);
        }
        free(lc);
        lmp_model_free(m);
    }
}

static struct lmp_model *load_260k(void)
{
    struct lmp_model *m = NULL;
    struct lmp_err err = {{0}};
    if (lmp_ckpt_load(S260K, NULL, &m, &err)) {
        lmp_test_fail(__FILE__, __LINE__, "load: %s", err.msg);
        return NULL;
    }
    return m;
}

static int32_t *tokenize(const struct lmp_model *m, const char *path, long max_bytes, int64_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc((size_t)max_bytes + 1);
    size_t len = fread(buf, 1, (size_t)max_bytes, f);
    fclose(f);
    buf[len] = 0;
    struct lmp_tokenizer *t = NULL;
    struct lmp_err err = {{0}};
    int32_t *ids = NULL;
    if (lmp_tok_create(&m->vocab, &t, &err) || lmp_tok_encode(t, buf, len, 0, &ids, n, &err))
        lmp_test_fail(__FILE__, __LINE__, "tokenize: %s", err.msg);
    lmp_tok_free(t);
    free(buf);
    return ids;
}

static void rtn_quantize(struct lmp_model *m, int bits, int group)
{
    struct lmp_quant_model_opts o;
    struct lmp_err err = {{0}};
    lmp_quant_model_opts_default(&o);
    o.method = LMP_QUANT_RTN;
    o.q.bits = bits;
    o.q.group = group;
    if (lmp_quant_model(m, NULL, 0, &o, NULL, &err))
        lmp_test_fail(__FILE__, __LINE__, "rtn: %s", err.msg);
}

/* n random tokens of m's vocabulary into tok, and the CPU forward's logits of them */
static float *rand_tokens_cpu_logits(const struct lmp_model *m, int32_t *tok, int n)
{
    unsigned long long s = seed_now();
    for (int i = 0; i < n; i++)
        tok[i] = (int32_t)((lmp_test_randf(&s) + 1.0f) * 0.5f * (m->cfg.vocab - 1));
    return cpu_logits(m, tok, n);
}

TEST(cuda_forward_packed_vs_cpu)
{
    need_gpu();
    static const struct tl ls[] = {{8, 2, 96}, {4, 4, 64}};
    struct lmp_model *m = build_model(64, 16, 211, 2, ls, 0, 0, 10000.0f, 1e-5f, 64, NULL, seed_now());
    REQUIRE(m);
    rtn_quantize(m, 4, 32);
    int32_t tok[30];
    float *lc = rand_tokens_cpu_logits(m, tok, 30);
    REQUIRE(lc);
    const float mx = max_abs(lc, 30L * 211);
    struct lmp_cuda_opts exact = {.exact_gemv = 1}, fast = {.device = 0};
    float *lg = gpu_logits(m, tok, 30, 10, 8, &exact);
    REQUIRE(lg);
    CHECK_CLOSE("Q4 g32 logits, fp32 kernels", lg, lc, 30L * 211, 1e-4 * mx, 1e-4);
    free(lg);
    lg = gpu_logits(m, tok, 30, 10, 8, &fast);
    REQUIRE(lg);
    CHECK_CLOSE("Q4 g32 logits, fp16 decode kernel", lg, lc, 30L * 211, 1e-2 * mx, 1e-2);
    free(lg);
    /* the fused streaming decode kernels (the default above) against the per-product ones,
     * without programmatic dependent launch, and at each block size */
    static const struct {
        int legacy, no_pdl, warps, pipe, bps, mega;
        const char *what;
    } var[] = {{1, 0, 0, 0, 0, 0, "Q4 g32 logits, legacy decode kernels"},
               {0, 0, 0, 0, 0, 1, "Q4 g32 logits, persistent decode kernel"},
               {0, 1, 0, 0, 0, 0, "Q4 g32 logits, fused decode without PDL"},
               {0, 0, 8, 0, 0, 0, "Q4 g32 logits, fused decode 8 warps"},
               {0, 0, 8, 2, 1, 0, "Q4 g32 logits, fused decode 8 warps, not pipelined, 1 block/SM"},
               {0, 0, 16, 2, 0, 0, "Q4 g32 logits, fused decode 16 warps, not pipelined"},
               {0, 0, 16, 1, 1, 0, "Q4 g32 logits, fused decode 16 warps, pipelined, 1 block/SM"},
               {0, 0, 8, 0, 0, 1, "Q4 g32 logits, persistent decode kernel, 8 warps"},
               {0, 0, 16, 2, 0, 1, "Q4 g32 logits, persistent decode kernel, not pipelined"},
               {0, 0, 8, 0, 1, 1, "Q4 g32 logits, persistent decode kernel, 8 warps, 1 block/SM"}};
    for (size_t v = 0; v < sizeof var / sizeof var[0]; v++) {
        struct lmp_cuda_opts o = fast;
        o.legacy_decode = var[v].legacy;
        o.no_pdl = var[v].no_pdl;
        o.q4_warps = var[v].warps;
        o.q4_pipe = var[v].pipe;
        o.q4_bps = var[v].bps;
        o.q4_mega = var[v].mega;
        lg = gpu_logits(m, tok, 30, 10, 8, &o);
        REQUIRE(lg);
        CHECK_CLOSE(var[v].what, lg, lc, 30L * 211, 1e-2 * mx, 1e-2);
        free(lg);
    }
    free(lc);
    lmp_model_free(m);
}

/* A g128 model whose matrices all take the fused kernels with 128-column groups (gshift 2):
 * decode logits against the CPU, with and without PDL, as the persistent kernel. */
TEST(cuda_forward_q4_g128_vs_cpu)
{
    need_gpu();
    static const struct tl ls[] = {{4, 2, 256}, {4, 4, 384}};
    struct lmp_model *m = build_model(128, 32, 211, 2, ls, 0, 0, 10000.0f, 1e-5f, 64, NULL, seed_now());
    REQUIRE(m);
    rtn_quantize(m, 4, 128);
    int32_t tok[30];
    float *lc = rand_tokens_cpu_logits(m, tok, 30);
    REQUIRE(lc);
    const float mx = max_abs(lc, 30L * 211);
    static const struct {
        int no_pdl, mega, no_q4t, depth, persist;
        const char *what;
    } var[] = {{0, 0, 0, 0, 0, "Q4 g128 logits, tensor-core tile decode kernels"},
               {0, 0, 0, 0, 1, "Q4 g128 logits, persistent tile decode kernel"},
               {0, 0, 0, 0, 2, "Q4 g128 logits, persistent tile decode kernel, cp.async ring"},
               {0, 0, 0, 0, 3, "Q4 g128 logits, persistent tile decode kernel, copy warp"},
               {1, 0, 0, 4, 0, "Q4 g128 logits, TMA ring, no PDL"},
               {1, 0, 0, 0, 0, "Q4 g128 logits, tile decode kernels without PDL"},
               {0, 0, 0, 2, 0, "Q4 g128 logits, tile decode kernels, 32 warps"},
               {0, 0, 0, 3, 0, "Q4 g128 logits, tile decode kernels, 32 warps, 3 in flight"},
               {0, 0, 0, 4, 0, "Q4 g128 logits, tile decode kernels, TMA ring"},
               {1, 0, 0, 5, 0, "Q4 g128 logits, tile decode kernels, TMA ring, 32 warps, no PDL"},
               {0, 0, 0, 6, 0, "Q4 g128 logits, tile decode kernels, TMA ring of 4"},
               {0, 0, 0, 1, 0, "Q4 g128 logits, tile decode kernels, 6 in flight"},
               {0, 0, 0, 10, 0, "Q4 g128 logits, tile decode kernels, co-resident"},
               {0, 0, 0, 11, 0, "Q4 g128 logits, tile decode kernels, co-resident with the stash"},
               {0, 0, 0, 12, 0, "Q4 g128 logits, tile decode kernels, co-resident, cp.async ring"},
               {0, 0, 1, 0, 0, "Q4 g128 logits, row-streaming decode kernels"},
               {1, 0, 1, 0, 0, "Q4 g128 logits, row-streaming decode kernels without PDL"},
               {0, 1, 1, 0, 0, "Q4 g128 logits, persistent decode kernel"}};
    for (size_t v = 0; v < sizeof var / sizeof var[0]; v++) {
        struct lmp_cuda_opts o = {.no_pdl = var[v].no_pdl, .q4_mega = var[v].mega,
                                  .no_q4t = var[v].no_q4t, .q4t_depth = var[v].depth,
                                  .q4t_persist = var[v].persist ? 1 : 0,
                                  .q4p_flags = var[v].persist == 2 ? 1 : var[v].persist == 3 ? 4 : 0};
        float *lg = gpu_logits(m, tok, 30, 10, 8, &o);
        REQUIRE(lg);
        /* the tile kernels take every layer of this model unless told not to (its head is
         * not quantised) */
        CHECK_MSG((last_persistent > 0) == (var[v].persist != 0), "%s: persistent kernel %d", var[v].what, last_persistent);
        CHECK_MSG(last_tile_layers == (var[v].no_q4t ? 0 : 2) && last_tile_head == 0,
                  "%s: %d layers, head %d on the tile kernels", var[v].what, last_tile_layers,
                  last_tile_head);
        /* the row-streaming kernels (and the persistent one built on them) add in fp16
           (decode_q4.cu): over the device runs (docs/device-logs) their largest differences
           were 0.04-0.14, 2-4 times the tile kernels' (fp32 sums) on the same models, and one
           draw of 2026-12-04 passed 1e-2 max |logit| (0.139) */
        CHECK_CLOSE(var[v].what, lg, lc, 30L * 211, (var[v].no_q4t ? 3e-2 : 1e-2) * mx, 1e-2);
        free(lg);
    }
    { /* the attention's settings by position: from position 12 on 16 shares through global
         memory, its own decode graph (the default switches at ATT_LONG = 256) */
        struct lmp_cuda_opts o = {.att_long = 12};
        float *lg = gpu_logits(m, tok, 30, 10, 8, &o);
        REQUIRE(lg);
        CHECK_CLOSE("Q4 g128 logits, tile decode kernels, 16 shares of attention from position 12", lg, lc,
                    30L * 211, 1e-2 * mx, 1e-2);
        free(lg);
    }
    free(lc);
    lmp_model_free(m);
}

/* o by heads (opts.att_o 6, 7, 8; head size 128): the attention writes its shares' parts,
 * each o block combines one head's (in one warp, or in ceil(S / 4) warps) and adds its
 * products into the residual by atomics (8: as fixed-point integers that gate/up and down
 * add to the residual; its logits must also be the same bits in a second run). Against the CPU, with and without biases, GQA and a wider
 * layer; 8 shares (the 7B shape's), 3, and 16 (at the first positions some shares are
 * empty, weight 0); the separate launches (the default) likewise. */
TEST(cuda_forward_q4_attention_o_vs_cpu)
{
    need_gpu();
    static const struct tl ls[] = {{2, 1, 256}, {4, 2, 384}};
    for (int bias = 0; bias < 2; bias++) {
        struct lmp_model *m = build_model(256, 128, 173, 2, ls, bias, 0, 10000.0f, 1e-5f, 64, NULL, seed_now());
        REQUIRE(m);
        /* build_model's weights are uniform in +-0.5 whatever the width: at head size 128
           the scores reach the hundreds and the softmax picks one position, so that fp16
           rounding of the inputs (every GPU path, also the separate launches) can flip it.
           q and k scaled so that the scores are O(1), as in a trained model */
        for (int l = 0; l < 2; l++) {
            static const char *const qk[] = {LMP_N_WQ, LMP_N_WK, LMP_N_BQ, LMP_N_BK};
            for (int k = 0; k < (bias ? 4 : 2); k++) {
                char nm[LMP_NAME_MAX];
                snprintf(nm, sizeof nm, "blk.%d.%s", l, qk[k]);
                struct lmp_tensor *t = lmp_model_find(m, nm);
                REQUIRE(t);
                float *d = t->data;
                for (int64_t i = 0; i < lmp_tensor_nelem(t); i++) d[i] *= 0.0625f;
            }
        }
        rtn_quantize(m, 4, 128);
        int32_t tok[30];
        float *lc = rand_tokens_cpu_logits(m, tok, 30);
        REQUIRE(lc);
        const float mx = max_abs(lc, 30L * 173);
        static const struct {
            int att_o, att_shares, att_long, layers, shares;
            const char *what;
        } var[] = {{6, 8, 0, 2, 8, "Q4 g128 logits, o by heads, combine in one warp, 8 shares"},
                   {6, 0, 12, 2, 16, "Q4 g128 logits, o by heads, combine in one warp, 16 shares"},
                   {7, 8, 0, 2, 8, "Q4 g128 logits, o by heads, combine in 2 warps, 8 shares"},
                   {7, 3, 0, 2, 3, "Q4 g128 logits, o by heads, combine in 1 warp of 7's, 3 shares"},
                   {7, 0, 12, 2, 16, "Q4 g128 logits, o by heads, combine in 4 warps, 16 shares"},
                   {8, 8, 0, 2, 8, "Q4 g128 logits, o by heads, fixed-point sums, 8 shares"},
                   {8, 0, 12, 2, 16, "Q4 g128 logits, o by heads, fixed-point sums, 16 shares"},
                   {0, 0, 0, 0, 0, "Q4 g128 logits, attention and o in separate launches (the default)"}};
        for (size_t v = 0; v < sizeof var / sizeof var[0]; v++) {
            struct lmp_cuda_opts o = {.att_o = var[v].att_o, .att_shares = var[v].att_shares, .att_long = var[v].att_long};
            /* positions 10 .. 29 decoded one token at a time */
            float *lg = gpu_logits(m, tok, 30, 10, 19, &o);
            if (!lg) continue;
            const int layers = last_oh_layers, shares = last_oh_shares;
            CHECK_MSG(layers == var[v].layers && shares == var[v].shares,
                      "%s (bias %d): %d layers, %d shares by heads", var[v].what, bias, layers, shares);
            CHECK_CLOSE(var[v].what, lg, lc, 30L * 173, 1e-2 * mx, 1e-2);
            if (var[v].att_o == 8) { /* integer sums: the same bits in every run */
                float *l2 = gpu_logits(m, tok, 30, 10, 19, &o);
                CHECK_MSG(l2 && !memcmp(l2, lg, 30L * 173 * sizeof *lg),
                          "%s (bias %d): a second run gave other logits", var[v].what, bias);
                free(l2);
            }
            free(lg);
        }
        free(lc);
        lmp_model_free(m);
    }
}

static void ppl_pair(struct lmp_model *m, const int32_t *ids, int64_t n, enum lmp_eval_protocol p,
                     int ctx, const char *what, double *ppl_cpu)
{
    struct lmp_eval_opts o = {.protocol = p, .ctx = ctx};
    struct lmp_eval_result rc, rg;
    struct lmp_err err = {{0}};
    if (lmp_eval_ppl(m, ids, n, &o, &rc, &err)) {
        lmp_test_fail(__FILE__, __LINE__, "cpu ppl: %s", err.msg);
        return;
    }
    if (lmp_cuda_eval_ppl(m, ids, n, &o, &rg, 0, &err)) {
        lmp_test_fail(__FILE__, __LINE__, "gpu ppl: %s", err.msg);
        return;
    }
    double rel = fabs(rg.ppl / rc.ppl - 1.0);
    fprintf(stderr, "    %s %s ctx %d: CPU ppl %.6f (%.2f s), GPU ppl %.6f (%.2f s, %.0f tok/s), rel diff %.2e, %lld scored\n",
            what, lmp_eval_protocol_name(p), ctx, rc.ppl, rc.seconds, rg.ppl, rg.seconds,
            rg.tok_per_s, rel, (long long)rg.n_scored);
    CHECK_MSG(rel < 1e-4, "%s: GPU ppl %.8g vs CPU %.8g", what, rg.ppl, rc.ppl);
    CHECK_EQ_INT(rg.n_scored, rc.n_scored);
    if (ppl_cpu) *ppl_cpu = rc.ppl;
}

TEST(cuda_ppl_stories260K_fp32_q4)
{
    need_gpu();
    struct lmp_model *m = load_260k();
    REQUIRE(m);
    int64_t n = 0;
    int32_t *ids = tokenize(m, EVAL_TXT, 400000, &n);
    REQUIRE(ids && n > 10000);
    ppl_pair(m, ids, n, LMP_EVAL_LLAMACPP, 256, "stories260K fp32", NULL);
    ppl_pair(m, ids, n, LMP_EVAL_GPTQ, 512, "stories260K fp32", NULL);
    rtn_quantize(m, 4, 0); /* per-channel: the ffn width 172 has no divisor of 32 */
    ppl_pair(m, ids, n, LMP_EVAL_LLAMACPP, 256, "stories260K Q4 rtn per-channel", NULL);
    lmp_model_free(m);
    m = load_260k();
    REQUIRE(m);
    rtn_quantize(m, 3, 0);
    ppl_pair(m, ids, n, LMP_EVAL_GPTQ, 512, "stories260K Q3 rtn per-channel", NULL);
    free(ids);
    lmp_model_free(m);
}

TEST(cuda_gptq_matrix_vs_cpu)
{
    need_gpu();
    unsigned long long s = seed_now();
    const int rows = 96, cols = 256, N = 2048;
    float *W = rnd((long)rows * cols, 0.05f, &s);
    /* correlated inputs: x = z + 0.5 * (shared low-rank part), columns scaled */
    float *X = malloc((size_t)N * cols * 4), *H = calloc((size_t)cols * cols, 4);
    for (int i = 0; i < N; i++) {
        float a = lmp_test_randf(&s), b = lmp_test_randf(&s);
        for (int j = 0; j < cols; j++)
            X[(size_t)i * cols + j] = (lmp_test_randf(&s) + a * sinf(0.1f * j) + b * cosf(0.37f * j)) *
                                      (1.0f + 3.0f * (j % 17 == 0));
    }
    for (int j = 0; j < cols; j += 50) /* a dead input */
        for (int i = 0; i < N; i++) X[(size_t)i * cols + j] = 0.0f;
    struct lmp_err err = {{0}};
    int64_t ns = 0;
    REQUIRE(lmp_quant_hessian_accumulate(H, cols, X, N, &ns, &err) == LMP_OK);
    static const struct {
        int bits, group, sym, act, stat, mse;
    } cases[] = {{4, 0, 0, 0, 0, 0}, {4, 32, 0, 1, 0, 0}, {3, 64, 1, 1, 1, 0}, {2, 128, 0, 0, 0, 1},
                 {8, 32, 0, 1, 0, 0}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        struct lmp_quant_opts o;
        lmp_quant_opts_default(&o);
        o.bits = cases[c].bits;
        o.group = cases[c].group;
        o.sym = cases[c].sym;
        o.act_order = cases[c].act;
        o.static_groups = cases[c].stat;
        o.mse = cases[c].mse;
        o.block = 64;
        struct lmp_qtensor_out qc, qg;
        float *Wc = malloc((size_t)rows * cols * 4), *Wg = malloc((size_t)rows * cols * 4);
        REQUIRE(lmp_quant_gptq_matrix(W, rows, cols, H, &o, &qc, Wc, &err) == LMP_OK);
        if (lmp_cuda_gptq_matrix(W, rows, cols, H, &o, &qg, Wg, 0, &err) != LMP_OK) {
            lmp_test_fail(__FILE__, __LINE__, "gpu gptq: %s", err.msg);
            return;
        }
        long same = 0;
        for (long i = 0; i < (long)rows * cols; i++) same += qc.codes[i] == qg.codes[i];
        double frac = (double)same / ((double)rows * cols);
        double rel = fabs(qg.loss / qc.loss - 1.0);
        fprintf(stderr, "    gptq Q%d g%d sym %d act %d static %d mse %d: codes equal %.4f, loss CPU %.6g GPU %.6g (rel %.2e), dead %d/%d\n",
                o.bits, o.group, o.sym, o.act_order, o.static_groups, o.mse, frac, qc.loss, qg.loss,
                rel, qc.n_dead, qg.n_dead);
        CHECK(frac > 0.98);
        CHECK(rel < 1e-2);
        CHECK_EQ_INT(qg.n_dead, qc.n_dead);
        CHECK((qc.perm == NULL) == (qg.perm == NULL));
        if (qc.perm && qg.perm) CHECK(memcmp(qc.perm, qg.perm, (size_t)cols * 4) == 0);
        /* W_hat is the dequantisation of the GPU's own codes */
        long bad = 0;
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < cols; j++) {
                int g = j / (int)qg.group;
                int col = qg.perm ? qg.perm[j] : j;
                float v = lmp_f16_to_f32(qg.scales[r * qg.n_groups + g]) *
                          ((float)qg.codes[(size_t)r * cols + j] - lmp_f16_to_f32(qg.zeros[r * qg.n_groups + g]));
                bad += v != Wg[(size_t)r * cols + col];
            }
        CHECK_EQ_INT(bad, 0);
        lmp_qtensor_out_free(&qc);
        lmp_qtensor_out_free(&qg);
        free(Wc), free(Wg);
    }
    free(W), free(X), free(H);
}

static double eval_ppl_cpu(const struct lmp_model *m, const int32_t *ids, int64_t n)
{
    struct lmp_eval_opts o = {.protocol = LMP_EVAL_GPTQ, .ctx = 256};
    struct lmp_eval_result r;
    struct lmp_err err = {{0}};
    if (lmp_eval_ppl(m, ids, n, &o, &r, &err)) {
        lmp_test_fail(__FILE__, __LINE__, "ppl: %s", err.msg);
        return NAN;
    }
    return r.ppl;
}

TEST(cuda_gptq_model_stories260K_vs_cpu)
{
    need_gpu();
    struct lmp_model *mc = load_260k(), *mg = load_260k();
    REQUIRE(mc && mg);
    int64_t nc = 0, ne = 0;
    int32_t *calib = tokenize(mc, CALIB_TXT, 400000, &nc);
    int32_t *ev = tokenize(mc, EVAL_TXT, 400000, &ne);
    REQUIRE(calib && ev);
    double base = eval_ppl_cpu(mc, ev, ne);
    struct lmp_quant_model_opts o;
    lmp_quant_model_opts_default(&o);
    o.q.bits = 4;
    o.q.group = 0;
    o.nsamples = 64;
    o.seqlen = 256;
    struct lmp_quant_report *rc = calloc(1, sizeof *rc), *rg = calloc(1, sizeof *rg);
    struct lmp_err err = {{0}};
    REQUIRE(lmp_quant_model(mc, calib, nc, &o, rc, &err) == LMP_OK);
    if (lmp_cuda_quant_model(mg, calib, nc, &o, rg, 0, &err) != LMP_OK) {
        lmp_test_fail(__FILE__, __LINE__, "gpu gptq: %s", err.msg);
        return;
    }
    double pc = eval_ppl_cpu(mc, ev, ne), pg = eval_ppl_cpu(mg, ev, ne);
    double rel = fabs(pg / pc - 1.0);
    fprintf(stderr, "    stories260K fp32 ppl %.4f; GPTQ 4-bit per-channel (64 x 256 calib): CPU %.4f (%.2f s), GPU %.4f (%.2f s), rel diff %.2e\n",
            base, pc, rc->seconds, pg, rg->seconds, rel);
    CHECK_MSG(rel < 5e-3, "GPU GPTQ ppl %.6g vs CPU GPTQ %.6g", pg, pc);
    CHECK(mg->layers[0].wq->type == LMP_TYPE_Q4);
    free(rc), free(rg), free(calib), free(ev);
    lmp_model_free(mc);
    lmp_model_free(mg);
}

TEST(cuda_errors_are_clean)
{
    need_gpu();
    struct lmp_err err = {{0}};
    struct lmp_cuda_state *s = NULL;
    struct lmp_model *m = load_260k();
    REQUIRE(m);
    struct lmp_cuda_opts o = {.device = 99};
    enum lmp_status st = lmp_cuda_state_create(m, 64, 8, &o, &s, &err);
    fprintf(stderr, "    device 99: %s\n", err.msg);
    CHECK(st == LMP_ERR_UNSUPPORTED && !s && strstr(err.msg, "CUDA device"));
    /* a model far larger than the card: a clean error, no managed memory */
    struct lmp_config c = {0};
    struct lmp_layer_cfg lc = {64, 8, 28672};
    c.dim = 8192;
    c.n_layers = 1;
    c.head_dim = 128;
    c.vocab = 4000000;
    c.norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.layer = &lc;
    st = lmp_cuda_state_create_random(&c, 64, 1, LMP_CUDA_W_F32, 0, 0, 1, NULL, &s, &err);
    fprintf(stderr, "    huge model: %s\n", err.msg);
    CHECK(st == LMP_ERR_UNSUPPORTED && !s && strstr(err.msg, "out of GPU memory"));
    CHECK_EQ_INT(lmp_status_exit_code(st), 2);
    /* bad arguments */
    o.device = 0;
    REQUIRE(lmp_cuda_state_create(m, 64, 8, &o, &s, &err) == LMP_OK);
    int32_t bad = 9999;
    CHECK(lmp_cuda_forward(s, &bad, 1, 0, NULL, &err) == LMP_ERR_ARG);
    int32_t t = 1;
    CHECK(lmp_cuda_forward(s, &t, 1, 5, NULL, &err) == LMP_ERR_ARG);
    lmp_cuda_state_free(s);
    lmp_model_free(m);
}
