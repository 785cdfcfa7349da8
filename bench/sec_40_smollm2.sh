#!/bin/sh
# SmolLM2-135M-Instruct (issue 7): the tables of docs/BENCHMARKS-smollm2.md, which
# bench/smollm2.sh writes (about 1.5 hours on 2 cores, so only with BENCH_SMOLLM2=1; the
# model comes from `sh scripts/get-smollm2.sh`).
set -e
LMP=${LMP:-build/lmpress}
F=docs/BENCHMARKS-smollm2.md
if [ -n "$BENCH_SMOLLM2" ]; then
    sh bench/smollm2.sh "$LMP" >&2
fi
if [ -f "$F" ]; then
    echo "## SmolLM2-135M-Instruct"
    echo
    echo "(Included from [BENCHMARKS-smollm2.md](BENCHMARKS-smollm2.md); \`make bench BENCH_SMOLLM2=1\`"
    echo "measures it again.)"
    # its title dropped, its sections one level down
    sed '1{/^# /d}; s/^## /### /' "$F"
else
    echo "## SmolLM2-135M-Instruct (not measured)"
    echo
    echo "\`sh scripts/get-smollm2.sh\`, then \`make bench BENCH_SMOLLM2=1\`."
fi
