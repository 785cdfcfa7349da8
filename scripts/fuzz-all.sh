#!/bin/sh
# Runs every libFuzzer target of `make fuzz` for SECONDS (default 300) each, one after
# another, seeded from the fixtures and the bad-input corpus; corpora grow in
# build-fuzz/corpus-<name>, crashes land in build-fuzz/crash-<name>-*. Prints one line per
# target: its name, executions, and whether it found a crash.
S=${1:-300}
cd "$(dirname "$0")/.." || exit 1
for t in lmp llama2c gguf safetensors hfconfig; do
    c=build-fuzz/corpus-$t
    mkdir -p "$c"
    case $t in
        lmp) seeds="tests/data/tiny tests/bad/lmp" ;;
        llama2c) seeds="tests/data/tiny tests/bad/llama2c tests/bad/llama2c-notok" ;;
        gguf) seeds="tests/data/gguf tests/bad/gguf" ;;
        safetensors) seeds="tests/bad/safetensors" ;;
        hfconfig) seeds="" ;;
    esac
    build-fuzz/fuzz_$t -max_total_time="$S" -rss_limit_mb=4096 -max_len=65536 \
        -artifact_prefix="build-fuzz/crash-$t-" "$c" $seeds > "build-fuzz/log-$t.txt" 2>&1
    rc=$?
    runs=$(grep -o 'Done [0-9]* runs' "build-fuzz/log-$t.txt" | tail -1)
    echo "fuzz_$t: ${runs:-no summary} in ${S}s, exit $rc$(ls build-fuzz/crash-$t-* >/dev/null 2>&1 && echo ', CRASH FOUND')"
done
