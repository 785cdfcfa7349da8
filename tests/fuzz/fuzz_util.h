/* Shared by the libFuzzer targets: put the input in a per-process temp file, since the
 * loaders take paths (they mmap). */
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

static const char *fuzz_write_tmp(const uint8_t *data, size_t size, const char *ext)
{
    static char path[256];
    snprintf(path, sizeof path, "/tmp/lmp-fuzz-%ld%s", (long)getpid(), ext);
    FILE *f = fopen(path, "wb");
    if (!f) return NULL;
    if (size) fwrite(data, 1, size, f);
    fclose(f);
    return path;
}
