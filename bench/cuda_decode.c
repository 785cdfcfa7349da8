/* Decode benchmark on the GPU: a Llama-2-7B-shaped model (dim 4096, 32 layers, 32 heads,
 * ffn 11008 unless --ffn, vocab 32000) with random weights made on the device, batch 1, tokens/s and
 * the bandwidth it implies (weight bytes read per token x tokens/s) as a percentage of a
 * device-to-device cudaMemcpy measured in the same run (bytes read + bytes written).
 *
 *   build/cuda/cuda_decode [--layers N] [--tokens N] [--runs N] [--ffn N] [--probe] [--only all | NAME[,NAME...]]
 *   (any other argument prints the usage and the modes, the table `modes` below)
 *
 * Timing: CUDA events around `tokens` decode steps (positions 0..tokens-1, each step one
 * small kernel writing token and position plus one graph launch), after a warm-up of 16
 * steps; the median of `runs` repetitions. Prints one table at the end. */
#include "runtime/cuda/rt_cuda.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* median of v[0..n) (sorts v) */
static double median_d(double *v, int n)
{
    if (n < 1) return 0.0;
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Max |a - b| against max |b| over n logits (both kept after 16 tokens); nothing when one
 * of them was not run. */
static void logits_diff(const char *an, const float *a, const char *bn, const float *b, int n)
{
    if (!a || !b) return;
    double mx = 0, md = 0;
    for (int i = 0; i < n; i++) {
        const double v = fabs((double)b[i]), d = fabs((double)a[i] - b[i]);
        mx = v > mx ? v : mx;
        md = d > md ? d : md;
    }
    printf("%s vs %s, logits after 16 tokens: max |diff| %.3g, max |logit| %.3g\n", an, bn, md, mx);
}

/* The persistent kernel's timeline of the last decode step (lmp_cuda_q4p_timeline): per phase
 * over the middle layers, medians over layers of: sync (first block past its wait - the
 * previous phase's last end: the count's latency), wait (median block: start to past the
 * wait), input (median block), work (median block, past the input to its end; the
 * attention: past the wait to its end), slowest work, span (last end - previous last end),
 * in us (%globaltimer). */
static void q4p_timeline_report(const unsigned long long *tl, int blocks, int layers, double clk_ghz)
{
    static const char *ph[5] = {"q/k/v", "attention", "o", "gate/up", "down"};
    const int l0 = layers >= 8 ? 2 : 1, l1 = layers >= 8 ? layers - 2 : layers;
    printf("  persistent kernel timeline (us), layers %d-%d, medians over layers | sync | wait | input | work (median / slowest block) | span | warp 0 in the ring: waiting, refilling (clocks as us) |\n",
           l0, l1 - 1);
    double *v[8], *bw = malloc((size_t)blocks * sizeof *bw), *bi = malloc((size_t)blocks * sizeof *bi),
                  *bk = malloc((size_t)blocks * sizeof *bk), *bf = malloc((size_t)blocks * sizeof *bf),
                  *bl = malloc((size_t)blocks * sizeof *bl);
    for (int k = 0; k < 8; k++) v[k] = malloc((size_t)layers * sizeof(double));
    double tot = 0;
    for (int p = 0; p < 5; p++) {
        int n = 0;
        for (int l = l0; l < l1; l++) {
            const int slot = l * 5 + p, prev = slot - 1;
            const unsigned long long *S = tl + (size_t)slot * blocks * 6, *P = tl + (size_t)prev * blocks * 6;
            unsigned long long last_prev = 0, first_rel = ~0ull, last = 0;
            double mx = 0;
            for (int b = 0; b < blocks; b++) {
                const unsigned long long *q = S + (size_t)b * 6;
                last_prev = P[(size_t)b * 6 + 3] > last_prev ? P[(size_t)b * 6 + 3] : last_prev;
                first_rel = q[1] < first_rel ? q[1] : first_rel;
                last = q[3] > last ? q[3] : last;
                bw[b] = (double)(q[1] - q[0]) / 1e3;
                bi[b] = p == 1 ? 0.0 : (double)(q[2] - q[1]) / 1e3;
                bk[b] = (double)(q[3] - (p == 1 ? q[1] : q[2])) / 1e3;
                mx = bk[b] > mx ? bk[b] : mx;
                bf[b] = p == 1 ? 0.0 : (double)q[4] / (clk_ghz * 1e3);
                bl[b] = p == 1 ? 0.0 : (double)q[5] / (clk_ghz * 1e3);
            }
            v[0][n] = ((double)first_rel - (double)last_prev) / 1e3;
            v[1][n] = median_d(bw, blocks);
            v[2][n] = median_d(bi, blocks);
            v[3][n] = median_d(bk, blocks);
            v[4][n] = mx;
            v[5][n] = ((double)last - (double)last_prev) / 1e3;
            v[6][n] = median_d(bf, blocks);
            v[7][n] = median_d(bl, blocks);
            n++;
        }
        if (!n) continue;
        double m[8];
        for (int k = 0; k < 8; k++) m[k] = median_d(v[k], n);
        tot += m[5];
        printf("  | %-9s | %6.2f | %6.2f | %6.2f | %6.2f / %6.2f | %6.2f | %6.2f | %6.2f |\n", ph[p], m[0], m[1], m[2], m[3],
               m[4], m[5], m[6], m[7]);
    }
    printf("  spans add up to %.2f us per layer\n", tot);
    for (int k = 0; k < 8; k++) free(v[k]);
    free(bw), free(bi), free(bk), free(bf), free(bl);
}

/* The tile kernels' timeline of the last decode step (lmp_cuda_timeline): per product
 * (q/k/v, o, gate/up, down) over the middle layers, medians of the per-launch values, in us:
 * gap (first block's start - the previous tile launch's last end; o: after q/k/v and the
 * attention), wait (block start to past the dependency: median block), release (first
 * block past the dependency - the previous launch's last end), input, weights (median and
 * slowest block), out, span (last end - the previous launch's last end). The within-block
 * intervals are clock64 at the SM clock `ghz`. */
static void timeline_report(const unsigned long long *tl, int blocks, int layers, int nh, double ghz)
{
    static const char *prod[4] = {"q/k/v", "o", "gate/up", "down"};
    const int l0 = layers >= 8 ? 2 : 0, l1 = layers >= 8 ? layers - 2 : layers;
    printf("  timeline (us), layers %d-%d, medians over layers | gap | wait | release | input | weights (median block / slowest) | out | span |\n",
           l0, l1 - 1);
    double *v[8], *bw = malloc((size_t)(blocks > nh ? blocks : nh) * sizeof *bw), *bx = malloc((size_t)blocks * sizeof *bx);
    for (int k = 0; k < 8; k++) v[k] = malloc((size_t)layers * sizeof(double));
    for (int p = 0; p < 4; p++) {
        int n = 0;
        for (int l = l0; l < l1; l++) {
            const int slot = l * 4 + p, prev = slot - 1;
            if (prev < 0) continue;
            const unsigned long long *S = tl + (size_t)slot * blocks * 10, *P = tl + (size_t)prev * blocks * 10;
            unsigned long long first = ~0ull, last_prev = 0, first_rel = ~0ull, last = 0;
            int nb = 0;
            double iw = 0, ii = 0, io = 0, mx = 0;
            for (int b = 0; b < blocks; b++) {
                const unsigned long long *q = S + (size_t)b * 10, *r = P + (size_t)b * 10;
                if (r[4] > last_prev) last_prev = r[4];
                if (!q[0]) continue;
                if (q[0] < first) first = q[0];
                if (q[1] < first_rel) first_rel = q[1];
                if (q[4] > last) last = q[4];
                bw[nb] = (double)(q[6] - q[5]) / (ghz * 1e3);
                bx[nb] = (double)(q[8] - q[7]) / (ghz * 1e3);
                if (bx[nb] > mx) mx = bx[nb];
                ii += (double)(q[7] - q[6]) / (ghz * 1e3);
                io += (double)(q[9] - q[8]) / (ghz * 1e3);
                nb++;
            }
            if (!nb || !last_prev) continue;
            iw = median_d(bw, nb);
            v[0][n] = ((double)first - (double)last_prev) / 1e3;
            v[1][n] = iw;
            v[2][n] = ((double)first_rel - (double)last_prev) / 1e3;
            v[3][n] = ii / nb;
            v[4][n] = median_d(bx, nb);
            v[5][n] = mx;
            v[6][n] = io / nb;
            v[7][n] = ((double)last - (double)last_prev) / 1e3;
            n++;
        }
        if (!n) continue;
        double m[8];
        for (int k = 0; k < 8; k++) m[k] = median_d(v[k], n);
        printf("  | %-7s | %6.2f | %6.2f | %6.2f | %6.2f | %6.2f / %6.2f | %6.2f | %6.2f |\n", prod[p], m[0], m[1],
               m[2], m[3], m[4], m[5], m[6], m[7]);
    }
    /* the attention launches (when separate): after the q/k/v launch's last end */
    const unsigned long long *at = tl + (size_t)(layers * 4 + 1) * blocks * 10;
    int n = 0, nph = 0;
    double *ph[5];
    for (int k = 0; k < 5; k++) ph[k] = malloc((size_t)layers * nh * sizeof(double));
    for (int l = l0; l < l1; l++) {
        const unsigned long long *S = tl + (size_t)(l * 4) * blocks * 10, *A = at + (size_t)l * 128 * 8;
        unsigned long long qend = 0, first = ~0ull, rel = ~0ull, last = 0;
        for (int b = 0; b < blocks; b++) qend = S[(size_t)b * 10 + 4] > qend ? S[(size_t)b * 10 + 4] : qend;
        int nb = 0;
        for (int h = 0; h < nh; h++) {
            const unsigned long long *q = A + (size_t)h * 8;
            if (!q[0]) continue;
            /* phases: q, scores, softmax, P V, the rest (q[3..6] after each, q[2] the end) */
            const unsigned long long pt[6] = {q[1], q[3], q[4], q[5], q[6], q[2]};
            for (int k = 0; k < 5; k++) ph[k][nph] = pt[k + 1] >= pt[k] ? (double)(pt[k + 1] - pt[k]) / 1e3 : 0.0;
            nph++;
            first = q[0] < first ? q[0] : first;
            rel = q[1] < rel ? q[1] : rel;
            last = q[2] > last ? q[2] : last;
            bw[nb++] = (double)(q[2] - q[1]) / 1e3;
        }
        if (!nb || !qend) continue;
        v[0][n] = ((double)first - (double)qend) / 1e3;
        v[1][n] = ((double)rel - (double)qend) / 1e3;
        v[2][n] = median_d(bw, nb);
        v[3][n] = ((double)last - (double)qend) / 1e3;
        n++;
    }
    if (n) {
        double m[4];
        for (int k = 0; k < 4; k++) m[k] = median_d(v[k], n);
        printf("  attention launch after q/k/v's last end (us): first start %.2f, first past the dependency %.2f, "
               "head (median) %.2f, last end %.2f\n", m[0], m[1], m[2], m[3]);
        printf("  attention head phases (us, medians): q %.2f, scores %.2f, softmax %.2f, P V %.2f, rest %.2f\n",
               median_d(ph[0], nph), median_d(ph[1], nph), median_d(ph[2], nph), median_d(ph[3], nph),
               median_d(ph[4], nph));
    }
    for (int k = 0; k < 5; k++) free(ph[k]);
    for (int k = 0; k < 8; k++) free(v[k]);
    free(bw);
    free(bx);
}

static int cmp_f(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

static float median(float *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_f);
    return n % 2 ? v[n / 2] : 0.5f * (v[n / 2 - 1] + v[n / 2]);
}

#define CK(x)                                                                              \
    do {                                                                                   \
        cudaError_t e_ = (x);                                                              \
        if (e_ != cudaSuccess) {                                                           \
            fprintf(stderr, "cuda_decode: %s: %s\n", #x, cudaGetErrorString(e_));          \
            return 2;                                                                      \
        }                                                                                  \
    } while (0)

/* device-to-device copy bandwidth, GB/s counting read + write */
static int copy_bw(double *gbs, double *ms_out)
{
    const size_t n = (size_t)2 << 30; /* 2 GiB each way */
    void *a = NULL, *b = NULL;
    CK(cudaMalloc(&a, n));
    CK(cudaMalloc(&b, n));
    CK(cudaMemset(a, 0x5a, n));
    CK(cudaMemset(b, 0xa5, n));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    float t[10];
    for (int i = 0; i < 3; i++) CK(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
    for (int i = 0; i < 10; i++) {
        CK(cudaEventRecord(e0, 0));
        CK(cudaMemcpyAsync(i % 2 ? a : b, i % 2 ? b : a, n, cudaMemcpyDeviceToDevice, 0));
        CK(cudaEventRecord(e1, 0));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&t[i], e0, e1));
    }
    float ms = median(t, 10);
    *ms_out = ms;
    *gbs = 2.0 * (double)n / (ms * 1e-3) / 1e9;
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    return 0;
}

struct row {
    const char *name;
    double gb, tok_s, ms, bw, pct;
    int ok;
};

/* whether name is in the comma-separated list */
static int in_list(const char *list, const char *name)
{
    const size_t n = strlen(name);
    for (const char *p = list; p && *p;) {
        const char *e = strchr(p, ',');
        const size_t k = e ? (size_t)(e - p) : strlen(p);
        if (k == n && !strncmp(p, name, n)) return 1;
        p = e ? e + 1 : NULL;
    }
    return 0;
}

/* logits of the warm-up's last token: kept for "q4" and "q4-rows" (two implementations of
 * the same 4-bit decode) to be compared */
static float *kept_q4, *kept_rows, *kept_p;

static int run_one(const char *name, enum lmp_cuda_wtype wt, int bits, int group,
                   const struct lmp_cuda_opts *o, struct lmp_config *c, int tokens, int runs,
                   double copy_gbs, struct row *r)
{
    struct lmp_cuda_state *s = NULL;
    struct lmp_err err = {{0}};
    memset(r, 0, sizeof *r);
    r->name = name;
    enum lmp_status st =
        lmp_cuda_state_create_random(c, tokens + 16, 1, wt, bits, group, 1234, o, &s, &err);
    if (st) {
        fprintf(stderr, "cuda_decode: %s: %s\n", name, err.msg);
        return st == LMP_ERR_UNSUPPORTED ? 2 : 1;
    }
    int tl = 0, th = 0;
    lmp_cuda_decode_info(s, &tl, &th);
    fprintf(stderr, "  %-10s tile kernels: %d of %d layers, head %s\n", name, tl, c->n_layers,
            th ? "yes" : "no");
    cudaStream_t stream = (cudaStream_t)lmp_cuda_stream(s);
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    float *lg = malloc((size_t)c->vocab * sizeof *lg);
    /* warm-up: graph capture, module load; also a finiteness check of the logits */
    for (int p = 0; p < 16 && !st; p++) st = lmp_cuda_decode(s, (p * 7919 + 1) % c->vocab, p, p == 15 ? lg : NULL, &err);
    int finite = 1;
    for (int i = 0; !st && i < c->vocab; i++) finite &= lg[i] == lg[i] && lg[i] < 1e30f && lg[i] > -1e30f;
    float *t = malloc((size_t)runs * sizeof *t);
    for (int k = 0; k < runs && !st; k++) {
        lmp_cuda_reset(s);
        CK(cudaEventRecord(e0, stream));
        for (int p = 0; p < tokens && !st; p++)
            st = lmp_cuda_decode(s, (p * 7919 + 13) % c->vocab, p, NULL, &err);
        CK(cudaEventRecord(e1, stream));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&t[k], e0, e1));
    }
    if (st) {
        fprintf(stderr, "cuda_decode: %s: %s\n", name, err.msg);
    } else {
        float ms = median(t, runs);
        r->gb = lmp_cuda_decode_weight_bytes(s) / 1e9;
        r->ms = ms / tokens;
        r->tok_s = tokens / (ms * 1e-3);
        r->bw = r->gb * r->tok_s;
        r->pct = 100.0 * r->bw / copy_gbs;
        r->ok = finite;
        fprintf(stderr, "  %-10s %.3f GB/token, %.3f ms/token, %.1f tok/s, %.0f GB/s = %.1f %% of copy, logits %s\n",
                name, r->gb, r->ms, r->tok_s, r->bw, r->pct, finite ? "finite" : "NOT FINITE");
    }
    free(t);
    if (!st && o->q4t_persist == 1) fprintf(stderr, "  %-10s persistent kernel: ring of %d slots per warp (0: not used)\n", name, lmp_cuda_decode_persistent(s));
    if (!st && o->q4t_depth >= 10) {
        const char *why = lmp_cuda_q4t_coresident();
        fprintf(stderr, "  %-10s co-resident tile kernels: %s%s\n", name, why ? "no, " : "yes", why ? why : "");
    }
    if (!st && o->q4t_timeline && lmp_cuda_decode_persistent(s)) {
        const size_t n = (size_t)c->n_layers * 5 * 1024 * 6;
        unsigned long long *tlv = calloc(n, sizeof *tlv);
        const int blocks = tlv ? lmp_cuda_q4p_timeline(s, tlv, n) : 0;
        int dev = 0, khz = 0;
        cudaGetDevice(&dev);
        cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, dev);
        if (blocks) q4p_timeline_report(tlv, blocks, c->n_layers, khz / 1e6);
        free(tlv);
    }
    if (!st) {
        int al = 0, as = 0;
        lmp_cuda_decode_att_o(s, &al, &as);
        if (al) fprintf(stderr, "  %-10s o by heads: %d layers, %d shares per head\n", name, al, as);
    }
    if (!st && o->q4t_timeline) {
        const size_t n = (size_t)(c->n_layers * 4 + 1) * 1024 * 10 + (size_t)c->n_layers * 128 * 8;
        unsigned long long *tlv = calloc(n, sizeof *tlv);
        const int blocks = tlv ? lmp_cuda_timeline(s, tlv, n) : 0;
        int dev = 0, khz = 0;
        cudaGetDevice(&dev);
        cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, dev);
        if (blocks) timeline_report(tlv, blocks, c->n_layers, c->layer[0].n_heads, khz / 1e6);
        free(tlv);
    }
    /* neither the input preparation's variants nor the attention's combine change a result */
    if (!st && (o->q4t_prep || o->att_combine) && kept_q4 && wt == LMP_CUDA_W_PACKED)
        logits_diff(name, lg, "q4 (tile kernels)", kept_q4, c->vocab);
    if (!st && !strcmp(name, "q4")) kept_q4 = lg, lg = NULL;
    if (!st && !strcmp(name, "q4-rows")) kept_rows = lg, lg = NULL;
    if (!st && !strcmp(name, "q4-p")) kept_p = lg, lg = NULL;
    free(lg);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    lmp_cuda_state_free(s);
    return st ? 1 : 0;
}

/* q4: the default (the tile kernels of decode_q4t.cu, PDL, one attention block per SM);
 * the rest are the comparisons docs/GPU.md reports; -tl: with the per-block timeline */
static const struct {
    const char *name;
    enum lmp_cuda_wtype wt;
    int bits, group;
    struct lmp_cuda_opts o;
} modes[] = {{"f16", LMP_CUDA_W_F16, 0, 0, {.device = 0}},
             {"q4", LMP_CUDA_W_PACKED, 4, 128, {.device = 0}},
             {"q4-rows", LMP_CUDA_W_PACKED, 4, 128, {.no_q4t = 1}},
             {"q4-p", LMP_CUDA_W_PACKED, 4, 128, {.q4t_persist = 1}},
             {"q4-p-tl", LMP_CUDA_W_PACKED, 4, 128, {.q4t_persist = 1, .q4t_timeline = 1}},
             {"q4-pc", LMP_CUDA_W_PACKED, 4, 128, {.q4t_persist = 1, .q4p_flags = 1}},
             {"q4-pc-tl", LMP_CUDA_W_PACKED, 4, 128, {.q4t_persist = 1, .q4p_flags = 1, .q4t_timeline = 1}},
             {"q4-p-nm-tl", LMP_CUDA_W_PACKED, 4, 128, {.q4t_persist = 1, .q4p_flags = 2, .q4t_timeline = 1}},
             {"q4-pc-nm-tl", LMP_CUDA_W_PACKED, 4, 128, {.q4t_persist = 1, .q4p_flags = 3, .q4t_timeline = 1}},
             {"q4-pc-s4", LMP_CUDA_W_PACKED, 4, 128, {.q4t_persist = 1, .q4p_flags = 1, .q4p_slots = 4}},
             {"q4-p-s4", LMP_CUDA_W_PACKED, 4, 128, {.q4t_persist = 1, .q4p_slots = 4}},
             {"q4-pw", LMP_CUDA_W_PACKED, 4, 128, {.q4t_persist = 1, .q4p_flags = 4}},
             {"q4-pw-tl", LMP_CUDA_W_PACKED, 4, 128, {.q4t_persist = 1, .q4p_flags = 4, .q4t_timeline = 1}},
             {"q4-pw-nm-tl", LMP_CUDA_W_PACKED, 4, 128, {.q4t_persist = 1, .q4p_flags = 6, .q4t_timeline = 1}},
             {"q4-p-s2-tl", LMP_CUDA_W_PACKED, 4, 128, {.q4t_persist = 1, .q4p_slots = 2, .q4t_timeline = 1}},
             {"q4-p-s3-tl", LMP_CUDA_W_PACKED, 4, 128, {.q4t_persist = 1, .q4p_slots = 3, .q4t_timeline = 1}},
             {"q4-p-s6-tl", LMP_CUDA_W_PACKED, 4, 128, {.q4t_persist = 1, .q4p_slots = 6, .q4t_timeline = 1}},
             {"q4-p-s2-nm-tl", LMP_CUDA_W_PACKED, 4, 128,
              {.q4t_persist = 1, .q4p_slots = 2, .q4p_flags = 2, .q4t_timeline = 1}},
             {"q4-d1", LMP_CUDA_W_PACKED, 4, 128, {.q4t_depth = 1}},
             {"q4-w16", LMP_CUDA_W_PACKED, 4, 128, {.q4t_depth = 2}},
             {"q4-d3", LMP_CUDA_W_PACKED, 4, 128, {.q4t_depth = 3}},
             {"q4-tma", LMP_CUDA_W_PACKED, 4, 128, {.q4t_depth = 4}},
             {"q4-tma-w32", LMP_CUDA_W_PACKED, 4, 128, {.q4t_depth = 5}},
             {"q4-tma-s4", LMP_CUDA_W_PACKED, 4, 128, {.q4t_depth = 6}},
             {"q4-il", LMP_CUDA_W_PACKED, 4, 128, {.q4t_depth = 7}},
             {"q4-tl", LMP_CUDA_W_PACKED, 4, 128, {.q4t_timeline = 1}},
             {"q4-sep", LMP_CUDA_W_PACKED, 4, 128, {.att_o = 2}},
             {"q4-oh", LMP_CUDA_W_PACKED, 4, 128, {.att_o = 6}},
             {"q4-oh-tl", LMP_CUDA_W_PACKED, 4, 128, {.att_o = 6, .q4t_timeline = 1}},
             {"q4-ohw", LMP_CUDA_W_PACKED, 4, 128, {.att_o = 7}},
             {"q4-ohw-tl", LMP_CUDA_W_PACKED, 4, 128, {.att_o = 7, .q4t_timeline = 1}},
             {"q4-ohx", LMP_CUDA_W_PACKED, 4, 128, {.att_o = 8}},
             {"q4-ohx-tl", LMP_CUDA_W_PACKED, 4, 128, {.att_o = 8, .q4t_timeline = 1}},
             {"q4-sep-tl", LMP_CUDA_W_PACKED, 4, 128, {.att_o = 2, .q4t_timeline = 1}},
             {"q4-co", LMP_CUDA_W_PACKED, 4, 128, {.q4t_depth = 10}},
             {"q4-co-tl", LMP_CUDA_W_PACKED, 4, 128, {.q4t_depth = 10, .q4t_timeline = 1}},
             {"q4-cs", LMP_CUDA_W_PACKED, 4, 128, {.q4t_depth = 11}},
             {"q4-cs-tl", LMP_CUDA_W_PACKED, 4, 128, {.q4t_depth = 11, .q4t_timeline = 1}},
             {"q4-cr", LMP_CUDA_W_PACKED, 4, 128, {.q4t_depth = 12}},
             {"q4-cr-tl", LMP_CUDA_W_PACKED, 4, 128, {.q4t_depth = 12, .q4t_timeline = 1}},
             {"q4-tl-pack", LMP_CUDA_W_PACKED, 4, 128, {.q4t_timeline = 1, .att_pack = 1}},
             {"q4-pack", LMP_CUDA_W_PACKED, 4, 128, {.att_pack = 1}},
             {"q4-gc", LMP_CUDA_W_PACKED, 4, 128, {.att_combine = 1}},
             {"q4-s2", LMP_CUDA_W_PACKED, 4, 128, {.att_shares = 2}},
             {"q4-s4", LMP_CUDA_W_PACKED, 4, 128, {.att_shares = 4}},
             {"q4-s6", LMP_CUDA_W_PACKED, 4, 128, {.att_shares = 6}},
             {"q4-s4-tl", LMP_CUDA_W_PACKED, 4, 128, {.att_shares = 4, .q4t_timeline = 1}},
             {"q4-s16gc", LMP_CUDA_W_PACKED, 4, 128, {.att_shares = 16, .att_combine = 1}},
             {"q4-s12", LMP_CUDA_W_PACKED, 4, 128, {.att_shares = 12}},
             {"q4-s16", LMP_CUDA_W_PACKED, 4, 128, {.att_shares = 16}},
             {"q4-s16-tl", LMP_CUDA_W_PACKED, 4, 128, {.att_shares = 16, .q4t_timeline = 1}},
             {"f16-s16", LMP_CUDA_W_F16, 0, 0, {.att_shares = 16}},
             {"q4-gc-tl", LMP_CUDA_W_PACKED, 4, 128, {.att_combine = 1, .q4t_timeline = 1}},
             {"q4-w16-pack", LMP_CUDA_W_PACKED, 4, 128, {.q4t_depth = 2, .att_pack = 1}},
             {"q4-p2", LMP_CUDA_W_PACKED, 4, 128, {.q4t_prep = 2}},
             {"q4-p2-tl", LMP_CUDA_W_PACKED, 4, 128, {.q4t_prep = 2, .q4t_timeline = 1}},
             {"q4-x1", LMP_CUDA_W_PACKED, 4, 128, {.q4t_diag = 1}},
             {"q4-x2", LMP_CUDA_W_PACKED, 4, 128, {.q4t_diag = 2}},
             {"q4-x3", LMP_CUDA_W_PACKED, 4, 128, {.q4t_diag = 3}},
             {"q4-x7", LMP_CUDA_W_PACKED, 4, 128, {.q4t_diag = 7}},
             {"q4-x3-tl", LMP_CUDA_W_PACKED, 4, 128, {.q4t_diag = 3, .q4t_timeline = 1}},
             {"q4-tma-il", LMP_CUDA_W_PACKED, 4, 128, {.q4t_depth = 9}},
             {"q4-w8", LMP_CUDA_W_PACKED, 4, 128, {.q4_warps = 8, .no_q4t = 1}},
             {"q4-w8-b1", LMP_CUDA_W_PACKED, 4, 128, {.q4_warps = 8, .q4_bps = 1, .no_q4t = 1}},
             {"q4-nopipe", LMP_CUDA_W_PACKED, 4, 128, {.q4_pipe = 2, .no_q4t = 1}},
             {"q4-w8-nopipe", LMP_CUDA_W_PACKED, 4, 128, {.q4_warps = 8, .q4_pipe = 2, .no_q4t = 1}},
             {"q4-nopdl", LMP_CUDA_W_PACKED, 4, 128, {.no_pdl = 1}},
             {"q4-mega", LMP_CUDA_W_PACKED, 4, 128, {.q4_mega = 1, .no_q4t = 1}},
             {"q4-mega-w8", LMP_CUDA_W_PACKED, 4, 128, {.q4_mega = 1, .q4_warps = 8, .no_q4t = 1}},
             {"q4-mega-nopipe", LMP_CUDA_W_PACKED, 4, 128, {.q4_mega = 1, .q4_pipe = 2, .no_q4t = 1}},
             {"q4-nograph", LMP_CUDA_W_PACKED, 4, 128, {.no_graph = 1}},
             {"q4-legacy", LMP_CUDA_W_PACKED, 4, 128, {.legacy_decode = 1, .no_q4t = 1}},
             {"q4-legacy-w1", LMP_CUDA_W_PACKED, 4, 128, {.gemv_warps = 1, .legacy_decode = 1, .no_q4t = 1}},
             {"q4-unfused", LMP_CUDA_W_PACKED, 4, 128, {.no_fuse = 1}},
             {"q4exact", LMP_CUDA_W_PACKED, 4, 128, {.exact_gemv = 1}},
             {"f16-w4", LMP_CUDA_W_F16, 0, 0, {.gemv_warps = 4}},
             {"f16-pack", LMP_CUDA_W_F16, 0, 0, {.att_pack = 1}},
             {"f16-gc", LMP_CUDA_W_F16, 0, 0, {.att_combine = 1}},
             {"f16-w2", LMP_CUDA_W_F16, 0, 0, {.gemv_warps = 2}},
             {"f16-unfused", LMP_CUDA_W_F16, 0, 0, {.no_fuse = 1}},
             {"f32", LMP_CUDA_W_F32, 0, 0, {.device = 0}}};
enum { N_MODES = sizeof modes / sizeof modes[0] };

/* every name of a comma-separated --only list is a mode */
static int check_modes(const char *list)
{
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ',');
        const size_t k = e ? (size_t)(e - p) : strlen(p);
        int found = 0;
        for (int m = 0; m < N_MODES && !found; m++)
            found = strlen(modes[m].name) == k && !strncmp(modes[m].name, p, k);
        if (!found) {
            fprintf(stderr, "cuda_decode: --only: unknown mode '%.*s' (cuda_decode --help lists them)\n", (int)k, p);
            return 0;
        }
        if (!e) break;
        p = e + 1;
    }
    return 1;
}

int main(int argc, char **argv)
{
    int layers = 32, tokens = 128, runs = 5, ffn = 11008;
    const char *only = NULL;
    int probe = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--layers") && i + 1 < argc) layers = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) tokens = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--ffn") && i + 1 < argc) ffn = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--probe")) probe = 1;
        else {
            fprintf(stderr, "usage: cuda_decode [--layers N] [--tokens N] [--runs N] [--ffn N] [--probe] [--only all | NAME[,NAME...]]\nmodes:");
            for (int m = 0; m < N_MODES; m++) fprintf(stderr, " %s", modes[m].name);
            fprintf(stderr, "\n");
            return 2;
        }
    }
    if (only && strcmp(only, "all") && !check_modes(only)) return 2;
    if (layers < 1 || tokens < 1 || runs < 1) {
        fprintf(stderr, "cuda_decode: --layers, --tokens and --runs must be positive\n");
        return 2;
    }
    if (ffn < 128 || ffn % 128) {
        fprintf(stderr, "cuda_decode: --ffn %d: must be a positive multiple of 128\n", ffn);
        return 2;
    }
    struct lmp_cuda_info info;
    struct lmp_err err = {{0}};
    if (lmp_cuda_probe(0, &info, &err)) {
        fprintf(stderr, "cuda_decode: %s\n", err.msg);
        return 2;
    }
    printf("device: %s (cc %d.%d, %d SMs, %.1f GiB), driver %d, runtime %d\n", info.name,
           info.cc_major, info.cc_minor, info.n_sm, info.mem_total / 1073741824.0,
           info.driver_version, info.runtime_version);
    double copy_gbs, copy_ms;
    if (copy_bw(&copy_gbs, &copy_ms)) return 2;
    printf("device-to-device copy: 2 GiB in %.3f ms (median of 10) = %.0f GB/s (read + write)\n",
           copy_ms, copy_gbs);
    fflush(stdout);

    if (probe) { /* what a read-only kernel reaches per launch at the decode kernels' sizes */
        static const double mb[] = {9.0, 26.8, 48.0, 69.6, 1024.0};
        static const char *pat[] = {"grid-stride", "warp shares, 4 x 1 KB in flight",
                                    "warp shares, 8 x 1 KB in flight", "warp shares, 4 in flight, 2 blocks/SM",
                                    "warp shares, 2 in flight, 4 blocks/SM", "32 warps/SM, 2 x 1 KB in flight",
                                    "smem 192 KB, bulk copies of 1 KB", "smem 192 KB, bulk copies of 4 KB",
                                    "smem 192 KB, bulk copies of 16 KB", "smem 192 KB, bulk copies of 48 KB",
                                    "smem 192 KB, cp.async 16 B", "smem 64 KB, bulk copies of 16 KB",
                                    "smem 96 KB, bulk copies of 32 KB"};
        for (int p = 0; p < 13; p++)
            for (int k = 0; k < 5; k++) {
                float us = 0;
                struct lmp_err perr = {{0}};
                if (lmp_cuda_read_probe((size_t)(mb[k] * 1e6), p, k == 4 ? 10 : 200, &us, &perr)) {
                    fprintf(stderr, "probe: %s\n", perr.msg);
                    return 1;
                }
                printf("read probe: %-40s %7.1f MB: %8.2f us per launch, %6.0f GB/s\n", pat[p], mb[k],
                       us, mb[k] * 1e6 / (us * 1e-6) / 1e9);
            }
        fflush(stdout);
    }
    struct lmp_layer_cfg *lc = calloc((size_t)layers, sizeof *lc);
    for (int l = 0; l < layers; l++) lc[l] = (struct lmp_layer_cfg){32, 32, ffn};
    struct lmp_config c;
    memset(&c, 0, sizeof c);
    c.dim = 4096;
    c.n_layers = layers;
    c.head_dim = 128;
    c.vocab = 32000;
    c.max_ctx = 4096;
    c.rope_theta = 10000.0f;
    c.norm_eps = 1e-5f;
    c.layer = lc;
    struct row rows[N_MODES];
    int nr = 0, rc = 0;
    printf("Llama-2-7B shape%s, %d layers, random weights, batch 1, %d tokens from position 0, median of %d runs\n",
           ffn == 11008 ? "" : " (other ffn)", layers, tokens, runs);
    if (ffn != 11008) printf("ffn %d instead of 11008\n", ffn);
    fflush(stdout);
    for (int k = 0; k < N_MODES; k++) {
        /* without --only: the default and the comparisons docs/GPU.md reports; "all": every
         * mode but f32 */
        static const char *dflt = "f16,q4,q4-p,q4-p-tl,q4-rows,q4-w16,q4-d1,q4-tma-s4,q4-pack,q4-il,"
                                  "q4-tl,q4-nopdl,q4-nograph,q4-legacy,q4-unfused,q4-p2,q4-gc,q4-x3,q4-x7";
        if (only && !strcmp(only, "all") ? k == N_MODES - 1 : !in_list(only ? only : dflt, modes[k].name))
            continue;
        int e = run_one(modes[k].name, modes[k].wt, modes[k].bits, modes[k].group, &modes[k].o, &c,
                        tokens, runs, copy_gbs, &rows[nr]);
        if (e) rc = e;
        else nr++;
    }
    /* decode paths on the same weights */
    logits_diff("q4 (tile kernels)", kept_q4, "q4-rows (row-streaming kernels)", kept_rows, c.vocab);
    logits_diff("q4-p (persistent kernel)", kept_p, "q4 (tile kernels)", kept_q4, c.vocab);
    free(kept_q4), free(kept_rows), free(kept_p);
    printf("\n| weights | GB read / token | ms / token | tokens/s | GB/s | %% of D2D copy (%.0f GB/s) |\n",
           copy_gbs);
    printf("|---|---|---|---|---|---|\n");
    for (int i = 0; i < nr; i++)
        printf("| %s | %.3f | %.3f | %.1f | %.0f | %.1f %%%s |\n", rows[i].name, rows[i].gb, rows[i].ms,
               rows[i].tok_s, rows[i].bw, rows[i].pct, rows[i].ok ? "" : " (non-finite logits!)");
    free(lc);
    return rc;
}
