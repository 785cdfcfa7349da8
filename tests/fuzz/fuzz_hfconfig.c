/* libFuzzer target: the Hugging Face directory loader (formats/hf.c) on fuzzed config.json,
 * tokenizer.json, tokenizer_config.json and model.safetensors. The input holds the files
 * separated by "\n##\n" in that order (missing trailing parts = absent files); they are
 * written to a private temporary directory and loaded with lmp_ckpt_load_hf. */
#define _GNU_SOURCE /* memmem */
#include "formats/model.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[256];

static void put(const char *name, const uint8_t *p, size_t n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (!p) {
        unlink(path);
        return;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) abort();
    for (size_t done = 0; done < n;) {
        ssize_t w = write(fd, p + done, n - done);
        if (w <= 0) abort();
        done += (size_t)w;
    }
    close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const files[4] = {"config.json", "tokenizer.json", "tokenizer_config.json",
                                         "model.safetensors"};
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/lmp-fuzz-hf.XXXXXX");
        if (!mkdtemp(dir)) abort();
    }
    const uint8_t *p = data, *end = data + size;
    for (int i = 0; i < 4; i++) {
        if (!p) {
            put(files[i], NULL, 0);
            continue;
        }
        const uint8_t *sep = memmem(p, (size_t)(end - p), "\n##\n", 4);
        put(files[i], p, sep ? (size_t)(sep - p) : (size_t)(end - p));
        p = sep ? sep + 4 : NULL;
    }
    struct lmp_model *m = NULL;
    struct lmp_err err;
    enum lmp_status st = lmp_ckpt_load_hf(dir, &m, &err);
    if (st != LMP_OK && (m || !memchr(err.msg, 0, sizeof err.msg) || strchr(err.msg, '\n')))
        abort();
    lmp_model_free(m);
    return 0;
}
