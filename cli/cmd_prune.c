/* lmpress prune — placeholder until its issue lands; says so and exits 1. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

int cmd_prune(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: lmpress prune ... (not implemented yet)\n");
        return 0;
    }
    fprintf(stderr, "lmpress prune: not implemented yet\n");
    return 1;
}
