/* lmpress quantize — placeholder until its issue lands; says so and exits 1. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

int cmd_quantize(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: lmpress quantize ... (not implemented yet)\n");
        return 0;
    }
    fprintf(stderr, "lmpress quantize: not implemented yet\n");
    return 1;
}
