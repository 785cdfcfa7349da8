#!/bin/sh
# GPTQ speed on one Llama-7B-shaped layer set (issue 4): q/k/v/o 4096x4096, gate/up
# 11008x4096, down 4096x11008, random weights and random correlated calibration inputs,
# 4-bit g128; seconds per step and per layer, peak RSS (bench/gptq_layer.c).
set -e
B=${BUILD:-build}
[ -n "$BENCH_QUICK" ] && { echo "## GPTQ on a Llama-7B-shaped layer (skipped: BENCH_QUICK)"; exit 0; }
echo "## GPTQ on one Llama-7B-shaped layer (CPU)"
echo
echo "\`make bench-gptq\` (= \`$B/gptq_layer\`, 4-bit g128, 2048 calibration rows; matrices that"
echo "read the same input share one inverse-Hessian factor):"
echo
echo '```'
"$B/gptq_layer"
echo '```'
