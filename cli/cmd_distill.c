/* lmpress distill — placeholder until its issue lands; says so and exits 1. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

int cmd_distill(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: lmpress distill ... (not implemented yet)\n");
        return 0;
    }
    fprintf(stderr, "lmpress distill: not implemented yet\n");
    return 1;
}
