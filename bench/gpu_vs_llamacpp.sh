#!/bin/sh
# Batch-1 decode on one GPU, side by side in one run: llama.cpp's llama-bench (tg128, every
# layer on the GPU) on Llama-2-7B-shaped GGUFs with random weights (bench/synth_gguf: Q4_0
# and F16), and our bench/cuda_decode (the same shape, 4-bit g128 and fp16). Both get
# tokens/s and bandwidth as a percentage of the device-to-device copy that cuda_decode
# measures in the same run; bytes per token are the matrices one token reads (all but the
# token embedding, as cuda_decode counts them). llama.cpp is not part of lmpress: build it
# yourself with CUDA and point LLAMA_BENCH at its llama-bench (docs/GPU.md, "llama.cpp on
# the same GPU").
#
#   LLAMA_BENCH=/path/to/llama-bench [CARRY=dir of synth_gguf and cuda_decode] [OUT=dir] \
#       sh bench/gpu_vs_llamacpp.sh
set -u
C=${CARRY:-build/cuda}
S=${SYNTH:-$C/synth_gguf}
[ -x "$S" ] || S=build/synth_gguf
OUT=${OUT:-/tmp/out}
D=${SYNTH_DIR:-/tmp/lmp-synth}
: "${LLAMA_BENCH:?set LLAMA_BENCH to a llama-bench built with CUDA}"
mkdir -p "$OUT" "$D"
for t in q4_0 f16; do
    [ -s "$D/$t.gguf" ] || "$S" "$D/$t.gguf" --type $t > "$D/$t.txt" || exit 1
    cat "$D/$t.txt"
done | tee "$OUT/synth.txt"
echo "== cuda_decode"
timeout 200 "$C/cuda_decode" --only f16,q4 2>&1 | tee "$OUT/ours.log"
echo "== llama-bench"
for t in q4_0 f16; do
    timeout 200 "$LLAMA_BENCH" -m "$D/$t.gguf" -ngl 99 -p 0 -n 128 -r 5 -fa 0,1 -o csv > "$OUT/llama-$t.csv" 2> "$OUT/llama-$t.err"
    echo "rc=$? ($t)"
done
echo "== side by side"
copy=$(sed -n 's/^device-to-device copy:.*= \([0-9.]*\) GB\/s.*/\1/p' "$OUT/ours.log")
{
    echo "| runtime | weights | GB / token | tokens/s | % of copy ($copy GB/s) |"
    echo "| --- | --- | ---: | ---: | ---: |"
    for m in f16 q4; do
        sed -n "s/^  $m  *\([0-9.]*\) GB\/token, [0-9.]* ms\/token, \([0-9.]*\) tok\/s.*= \([0-9.]*\) %.*/| lmpress cuda_decode | $m | \1 | \2 | \3 % |/p" "$OUT/ours.log"
    done
    for t in q4_0 f16; do
        gb=$(sed -n 's/.*, \([0-9.]*\) GB of matrices read per decoded token.*/\1/p' "$D/$t.txt")
        awk -F, -v gb="$gb" -v copy="$copy" -v t="$t" '
            NR == 1 { for (i = 1; i <= NF; i++) { g = $i; gsub(/"/, "", g); col[g] = i }; next }
            { ts = $col["avg_ts"]; gsub(/"/, "", ts); fa = $col["flash_attn"]; gsub(/"/, "", fa)
              printf "| llama.cpp llama-bench tg128, flash_attn %s | %s | %s | %.1f | %.1f %% |\n", fa, t, gb, ts, copy > 0 ? 100 * gb * ts / copy : 0 }' "$OUT/llama-$t.csv"
    done
} | tee "$OUT/side-by-side.md"
