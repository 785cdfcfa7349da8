#!/bin/sh
# Runtime throughput (issue 3): perplexity tokens/s and decode tokens/s on stories260K.
set -e
LMP=${LMP:-build/lmpress}
T=${BENCH_THREADS:-2}
num() { sed -n "s/.*\"$1\":[[:space:]]*\([0-9.e+-]*\).*/\1/p" | head -1; }
echo "## CPU runtime (stories260K, fp32)"
echo
cmd="$LMP ppl models/stories260K.bin --text data/tinystories/eval.txt --ctx 256 --threads $T --json"
j=$($cmd 2>/dev/null)
ppl=$(echo "$j" | num ppl); tps=$(echo "$j" | num tokens_per_s); sec=$(echo "$j" | num seconds)
dcmd="$LMP run models/stories260K.bin -n 256 --temp 0 --threads 1"
d=$($dcmd 2>&1 >/dev/null | tail -1)
dtps=$(echo "$d" | sed -n 's/.*generated: [0-9]* tokens, \([0-9.]*\) tokens\/s.*/\1/p')
echo "| measurement | lmpress | command |"
echo "| --- | ---: | --- |"
printf '| perplexity, eval.txt, ctx 256 | %.4f | `%s` |\n' "$ppl" "$cmd"
printf '| perplexity throughput, %s threads | %.0f tokens/s (%.2f s) | same |\n' "$T" "$tps" "$sec"
printf '| decode, batch 1, 1 thread, 256 tokens | %.0f tokens/s | `%s` |\n' "$dtps" "$dcmd"
echo
bcmd="$LMP bench models/stories260K.bin -p 512 -n 128 -r 5 --threads $T"
echo "\`$bcmd\` (llama-bench's pp/tg tests):"
echo
$bcmd 2>/dev/null
echo
if [ -n "$LLAMA_CPP_DIR" ] && [ -x "$LLAMA_CPP_DIR/bin/llama-perplexity" ]; then
    lcmd="$LLAMA_CPP_DIR/bin/llama-perplexity -m tests/data/stories260K/stories260K.gguf -f data/tinystories/eval.txt -c 256 -t $T"
    t0=$(date +%s.%N)
    $lcmd > "${BENCH_TMP:-/tmp}/llama-perplexity.log" 2>&1 || true
    t1=$(date +%s.%N)
    lout=$(cat "${BENCH_TMP:-/tmp}/llama-perplexity.log")
    lppl=$(echo "$lout" | sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p')
    lsec=$(echo "$t1 - $t0" | bc)
    # llama.cpp's own count: prompt eval tokens per second (excludes loading/tokenizing)
    ltps=$(echo "$lout" | sed -n 's/.*prompt eval time.*, *\([0-9.]*\) tokens per second.*/\1/p' | tail -1)
    [ -n "$ltps" ] || ltps=$(echo "193792 / $lsec" | bc -l)
    printf 'llama.cpp in the same run: PPL %s, %.0f tokens/s by its own timer (wall time %.2f s, `%s`).\n' "$lppl" "$ltps" "$lsec" "$lcmd"
    printf '**Ratio lmpress / llama.cpp: %.1fx.**\n' "$(echo "$tps / $ltps" | bc -l)"
    if [ -x "$LLAMA_CPP_DIR/bin/llama-bench" ]; then
        echo
        echo "\`$LLAMA_CPP_DIR/bin/llama-bench -m tests/data/stories260K/stories260K.gguf -p 512 -n 128 -r 5 -t $T\` in the same run:"
        echo
        "$LLAMA_CPP_DIR/bin/llama-bench" -m tests/data/stories260K/stories260K.gguf -p 512 -n 128 -r 5 -t "$T" 2>/dev/null | grep '^|'
    fi
else
    echo "llama.cpp was not run here (set LLAMA_CPP_DIR to a llama.cpp build directory to"
    echo "measure it side by side). For reference, llama-perplexity measured 2,656 tokens/s for"
    echo 'exactly this (stories260K GGUF, eval.txt, -c 256, 2 threads) on another 2-core machine of'
    echo 'ours (not this one, so no ratio is drawn: build llama.cpp beside the project to compare).'
fi
