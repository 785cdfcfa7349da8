/* Distillation checkpoints: everything a run needs to continue bit for bit.
 *
 * Layout, every field little-endian:
 *   "LMPDIST1"  magic (8 bytes)
 *   u32 version (1), u32 0
 *   u64 hash    of the settings, both models as given and the data (lmp_distill: run_hash)
 *   u64 step    steps done
 *   u32 n_params, u32 0
 *   per parameter: u32 name length, the name, u64 n (values)
 *   per parameter: f32 values (n)
 *   f32 m (sum of n), f32 v (sum of n): the AdamW moments, in parameter order
 *   u32 crc32 (zlib) of every byte before it
 * Written to "<path>.tmp.<pid>", flushed to disk (fsync), then renamed over path, so a
 * checkpoint on disk is always complete. */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#define MAGIC "LMPDIST1"
#define VERSION 1u

struct wr {
    FILE *f;
    uLong crc;
    int bad;
};

static void put(struct wr *w, const void *p, size_t n)
{
    if (w->bad || !n) return;
    if (fwrite(p, 1, n, w->f) != n) w->bad = 1;
    const unsigned char *b = p;
    while (n) { /* crc32 takes a uInt length */
        uInt k = n > (1u << 30) ? (1u << 30) : (uInt)n;
        w->crc = crc32(w->crc, b, k);
        b += k;
        n -= k;
    }
}

static void put_u32(struct wr *w, uint32_t v)
{
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    put(w, b, 4);
}

static void put_u64(struct wr *w, uint64_t v)
{
    put_u32(w, (uint32_t)v);
    put_u32(w, (uint32_t)(v >> 32));
}

/* floats as little-endian u32 bit patterns, through a small buffer */
static void put_f32s(struct wr *w, const float *x, size_t n)
{
    unsigned char buf[4096];
    while (n) {
        size_t k = n < sizeof buf / 4 ? n : sizeof buf / 4;
        for (size_t i = 0; i < k; i++) {
            uint32_t u;
            memcpy(&u, &x[i], 4);
            buf[4 * i] = (unsigned char)u, buf[4 * i + 1] = (unsigned char)(u >> 8);
            buf[4 * i + 2] = (unsigned char)(u >> 16), buf[4 * i + 3] = (unsigned char)(u >> 24);
        }
        put(w, buf, 4 * k);
        x += k;
        n -= k;
    }
}

enum lmp_status lmp_distill_ckpt_save(const struct lmp_distill_ctx *c, const char *path,
                                      struct lmp_err *err)
{
    char tmp[4200];
    if (strlen(path) > 4000) return lmp_err_set(err, LMP_ERR_ARG, "%s: path too long", path);
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    struct wr w = {fopen(tmp, "wb"), crc32(0L, Z_NULL, 0), 0};
    if (!w.f) return lmp_err_set(err, LMP_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    put(&w, MAGIC, 8);
    put_u32(&w, VERSION);
    put_u32(&w, 0);
    put_u64(&w, c->hash);
    put_u64(&w, (uint64_t)c->step);
    put_u32(&w, (uint32_t)c->np);
    put_u32(&w, 0);
    for (int i = 0; i < c->np; i++) {
        uint32_t nl = (uint32_t)strlen(c->p[i].name);
        put_u32(&w, nl);
        put(&w, c->p[i].name, nl);
        put_u64(&w, (uint64_t)c->p[i].n);
    }
    for (int i = 0; i < c->np; i++) put_f32s(&w, c->p[i].w, c->p[i].n);
    put_f32s(&w, c->m, c->n_values);
    put_f32s(&w, c->v, c->n_values);
    uLong crc = w.crc;
    put_u32(&w, (uint32_t)crc);
    int bad = w.bad || fflush(w.f) != 0 || fsync(fileno(w.f)) != 0;
    bad |= fclose(w.f) != 0;
    if (bad) {
        int e = errno;
        remove(tmp);
        return lmp_err_set(err, LMP_ERR_IO, "%s: write failed: %s", path, strerror(e));
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        remove(tmp);
        return lmp_err_set(err, LMP_ERR_IO, "%s: cannot rename into place: %s", path,
                           strerror(e));
    }
    return LMP_OK;
}

/* ---- reading ----------------------------------------------------------------------------- */

struct rd {
    const unsigned char *p;
    size_t len, pos;
    int bad;
};

static const unsigned char *take(struct rd *r, size_t n)
{
    if (r->bad || n > r->len - r->pos) {
        r->bad = 1;
        return NULL;
    }
    const unsigned char *q = r->p + r->pos;
    r->pos += n;
    return q;
}

static uint32_t get_u32(struct rd *r)
{
    const unsigned char *b = take(r, 4);
    return b ? (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24
             : 0;
}

static uint64_t get_u64(struct rd *r)
{
    uint64_t lo = get_u32(r);
    return lo | (uint64_t)get_u32(r) << 32;
}

static void get_f32s(struct rd *r, float *x, size_t n)
{
    if (n > (r->len - r->pos) / 4) {
        r->bad = 1;
        return;
    }
    const unsigned char *b = take(r, 4 * n);
    for (size_t i = 0; b && i < n; i++) {
        uint32_t u = (uint32_t)b[4 * i] | (uint32_t)b[4 * i + 1] << 8 |
                     (uint32_t)b[4 * i + 2] << 16 | (uint32_t)b[4 * i + 3] << 24;
        memcpy(&x[i], &u, 4);
    }
}

enum lmp_status lmp_distill_ckpt_load(struct lmp_distill_ctx *c, const char *path,
                                      struct lmp_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return lmp_err_set(err, LMP_ERR_IO, "%s: no checkpoint to resume from: %s", path,
                           strerror(errno));
    unsigned char *buf = NULL;
    size_t len = 0, cap = 0, got;
    do {
        if (len == cap) {
            size_t nc = cap ? cap * 2 : 1 << 20;
            unsigned char *nb = realloc(buf, nc);
            if (!nb) {
                free(buf);
                fclose(f);
                return lmp_err_set(err, LMP_ERR_NOMEM, "%s: out of memory", path);
            }
            buf = nb;
            cap = nc;
        }
        got = fread(buf + len, 1, cap - len, f);
        len += got;
    } while (got > 0);
    int rerr = ferror(f);
    fclose(f);
    enum lmp_status st = LMP_OK;
    struct rd r = {buf, len, 0, 0};
    if (rerr) {
        st = lmp_err_set(err, LMP_ERR_IO, "%s: read failed", path);
        goto done;
    }
    if (len < 52 || memcmp(buf, MAGIC, 8)) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: not a distillation checkpoint", path);
        goto done;
    }
    uLong crc = crc32(0L, Z_NULL, 0);
    for (size_t o = 0; o < len - 4;) {
        uInt k = len - 4 - o > (1u << 30) ? (1u << 30) : (uInt)(len - 4 - o);
        crc = crc32(crc, buf + o, k);
        o += k;
    }
    struct rd tail = {buf + len - 4, 4, 0, 0};
    if ((uint32_t)crc != get_u32(&tail)) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: checksum mismatch (damaged checkpoint)", path);
        goto done;
    }
    r.len = len - 4;
    take(&r, 8);
    uint32_t ver = get_u32(&r);
    get_u32(&r);
    uint64_t hash = get_u64(&r), step = get_u64(&r);
    uint32_t np = get_u32(&r);
    get_u32(&r);
    if (ver != VERSION) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: checkpoint version %u (this build reads %u)",
                         path, ver, VERSION);
        goto done;
    }
    if (hash != c->hash) {
        st = lmp_err_set(err, LMP_ERR_ARG,
                         "%s: checkpoint of another run (different settings, models or data); "
                         "resume with the same options, or start afresh",
                         path);
        goto done;
    }
    if (np != (uint32_t)c->np || step >= (uint64_t)c->o.steps) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: checkpoint layout does not match this run",
                         path);
        goto done;
    }
    for (int i = 0; i < c->np && !r.bad; i++) {
        uint32_t nl = get_u32(&r);
        const unsigned char *nm = take(&r, nl);
        uint64_t n = get_u64(&r);
        if (r.bad || nl != strlen(c->p[i].name) || memcmp(nm, c->p[i].name, nl) ||
            n != c->p[i].n) {
            st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: parameter %d does not match this run",
                             path, i);
            goto done;
        }
    }
    for (int i = 0; i < c->np; i++) get_f32s(&r, c->p[i].w, c->p[i].n);
    get_f32s(&r, c->m, c->n_values);
    get_f32s(&r, c->v, c->n_values);
    if (r.bad || r.pos != r.len) {
        st = lmp_err_set(err, LMP_ERR_FORMAT, "%s: truncated or oversized checkpoint", path);
        goto done;
    }
    c->step = (int)step;
done:
    free(buf);
    return st;
}
