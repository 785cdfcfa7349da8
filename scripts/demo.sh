#!/bin/sh
# `make demo`: the bundled stories260K model through the toolkit, end to end:
# convert -> ppl -> quantize -> ppl -> run -> prune -> ppl -> distill -> ppl.
set -e
LMP=${1:-build/lmpress}
OUT=${DEMO_DIR:-build/demo}
mkdir -p "$OUT"
EVAL="--text data/tinystories/eval.txt --ctx 256"
CALIB="--calib data/tinystories/calib.txt"
step() { printf '\n== %s\n' "$*"; }
size() { wc -c < "$1" | tr -d ' '; }
ppl() { $LMP ppl "$1" $EVAL 2>/dev/null | grep PPL; }

step "convert the llama2.c checkpoint (models/stories260K.bin + tok512.bin) to .lmp"
$LMP convert models/stories260K.bin "$OUT/stories260K.lmp"
$LMP inspect "$OUT/stories260K.lmp" | sed -n '1,4p;/^parameters/,$p'

step "fp32 perplexity on the held-out TinyStories text"
ppl "$OUT/stories260K.lmp"

step "GPTQ 4-bit, groups of 32, calibrated on the calibration half"
$LMP quantize "$OUT/stories260K.lmp" "$OUT/q4.lmp" --bits 4 --group 32 --mse $CALIB 2>&1 | tail -1
ppl "$OUT/q4.lmp"
echo "size: fp32 $(size "$OUT/stories260K.lmp") bytes, 4-bit $(size "$OUT/q4.lmp") bytes (embeddings stay fp32)"

step "generate a story with the 4-bit model"
$LMP run "$OUT/q4.lmp" -p "Once upon a time" -n 120 --temp 0.8 --seed 42

if $LMP prune --help >/dev/null 2>&1 && ! $LMP prune --help 2>&1 | grep -q "not implemented"; then
    step "structured pruning: 20 % of the block parameters (heads and MLP channels)"
    $LMP prune "$OUT/stories260K.lmp" "$OUT/pruned.lmp" --ratio 0.2 --importance taylor1 $CALIB 2>&1 | tail -2
    ppl "$OUT/pruned.lmp"
    echo "size: $(size "$OUT/pruned.lmp") bytes"

    step "distillation: the pruned model learns the fp32 model's next-token distributions (60 steps)"
    $LMP distill --teacher "$OUT/stories260K.lmp" --student "$OUT/pruned.lmp" --out "$OUT/distilled.lmp" \
        --data data/tinystories/calib.txt --steps 60
    ppl "$OUT/distilled.lmp"
fi
