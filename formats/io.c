/* File plumbing shared by the loaders and writers: mapping, bounds-checked parsing,
 * atomic writes (temp name + rename) and the format-detecting loader entry point. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

enum lmp_status lmp_buf_read_file(const char *path, struct lmp_buf *b, struct lmp_err *err)
{
    memset(b, 0, sizeof *b);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return lmp_err_set(err, LMP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return lmp_err_set(err, LMP_ERR_IO, "%s: not a regular file", path);
    }
    b->len = (size_t)sb.st_size;
    if (b->len == 0) {
        close(fd);
        b->heap = malloc(1);
        b->data = b->heap;
        return b->heap ? LMP_OK : lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    }
    void *p = mmap(NULL, b->len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0) /* copy-on-write: tools may edit tensors in place */;
    close(fd);
    if (p == MAP_FAILED) return lmp_err_set(err, LMP_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
    b->map = p;
    b->data = p;
    return LMP_OK;
}

void lmp_buf_free(struct lmp_buf *b)
{
    if (!b) return;
    if (b->map) munmap(b->map, b->len);
    free(b->heap);
    memset(b, 0, sizeof *b);
}

void lmp_buf_give_to_model(struct lmp_buf *b, struct lmp_model *m)
{
    LMP_ASSERT(m->map == NULL);
    m->map = b->map;
    m->map_len = b->len;
    b->map = NULL;
}

enum lmp_status lmp_cur_bytes(struct lmp_cursor *c, size_t n, const void **out, const char *what,
                              struct lmp_err *err)
{
    if (n > c->len - c->pos)
        return lmp_err_set(err, LMP_ERR_FORMAT,
                           "%s: truncated: %s needs %zu bytes at offset %zu, file has %zu",
                           c->path, what, n, c->pos, c->len);
    *out = c->p + c->pos;
    c->pos += n;
    return LMP_OK;
}

#define CUR_READ(fn, T)                                                                        \
    enum lmp_status fn(struct lmp_cursor *c, T *v, const char *what, struct lmp_err *err)      \
    {                                                                                          \
        const void *p = NULL;                                                                  \
        enum lmp_status st = lmp_cur_bytes(c, sizeof(T), &p, what, err);                       \
        if (st) return st;                                                                     \
        memcpy(v, p, sizeof(T)); /* little-endian host assumed (x86-64, arm64) */              \
        return LMP_OK;                                                                         \
    }
CUR_READ(lmp_cur_u8, uint8_t)
CUR_READ(lmp_cur_u32, uint32_t)
CUR_READ(lmp_cur_i32, int32_t)
CUR_READ(lmp_cur_u64, uint64_t)
CUR_READ(lmp_cur_f32, float)
CUR_READ(lmp_cur_f64, double)

const char *lmp_basename(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

enum lmp_status lmp_out_open(struct lmp_outfile *o, const char *path, struct lmp_err *err)
{
    memset(o, 0, sizeof *o);
    if (strlen(path) >= sizeof o->path) return lmp_err_set(err, LMP_ERR_ARG, "%s: path too long", path);
    snprintf(o->path, sizeof o->path, "%s", path);
    snprintf(o->tmp, sizeof o->tmp, "%s.tmp.%ld", path, (long)getpid());
    o->f = fopen(o->tmp, "wb");
    if (!o->f) return lmp_err_set(err, LMP_ERR_IO, "%s: cannot create: %s", o->tmp, strerror(errno));
    return LMP_OK;
}

enum lmp_status lmp_out_write(struct lmp_outfile *o, const void *p, size_t n, struct lmp_err *err)
{
    if (n && fwrite(p, 1, n, o->f) != n)
        return lmp_err_set(err, LMP_ERR_IO, "%s: write failed: %s", o->path, strerror(errno));
    return LMP_OK;
}

enum lmp_status lmp_out_commit(struct lmp_outfile *o, struct lmp_err *err)
{
    int bad = fflush(o->f) != 0 || ferror(o->f);
    bad |= fclose(o->f) != 0;
    o->f = NULL;
    if (bad) {
        remove(o->tmp);
        return lmp_err_set(err, LMP_ERR_IO, "%s: write failed: %s", o->path, strerror(errno));
    }
    if (rename(o->tmp, o->path) != 0) {
        remove(o->tmp);
        return lmp_err_set(err, LMP_ERR_IO, "%s: cannot rename into place: %s", o->path,
                           strerror(errno));
    }
    return LMP_OK;
}

void lmp_out_abort(struct lmp_outfile *o)
{
    if (o->f) fclose(o->f);
    o->f = NULL;
    if (o->tmp[0]) remove(o->tmp);
}

enum lmp_status lmp_read_text(const char *path, char **out, size_t *len, struct lmp_err *err)
{
    struct lmp_buf b;
    enum lmp_status st = lmp_buf_read_file(path, &b, err);
    if (st) return st;
    char *s = malloc(b.len + 1);
    if (!s) {
        lmp_buf_free(&b);
        return lmp_err_set(err, LMP_ERR_NOMEM, "out of memory");
    }
    memcpy(s, b.data, b.len);
    s[b.len] = 0;
    if (len) *len = b.len;
    lmp_buf_free(&b);
    *out = s;
    return LMP_OK;
}

enum lmp_status lmp_ckpt_load(const char *path, const struct lmp_load_opts *opts,
                              struct lmp_model **out, struct lmp_err *err)
{
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0)
        return lmp_err_set(err, LMP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (S_ISDIR(sb.st_mode)) return lmp_ckpt_load_hf(path, out, err);
    unsigned char magic[4] = {0};
    FILE *f = fopen(path, "rb");
    if (!f) return lmp_err_set(err, LMP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t got = fread(magic, 1, 4, f);
    fclose(f);
    if (got == 4 && memcmp(magic, "GGUF", 4) == 0) return lmp_ckpt_load_gguf(path, out, err);
    if (got == 4 && memcmp(magic, "LMPF", 4) == 0) return lmp_ckpt_load_lmp(path, opts, out, err);
    return lmp_ckpt_load_llama2c(path, opts ? opts->tokenizer : NULL, out, err);
}
