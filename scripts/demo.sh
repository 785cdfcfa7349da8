#!/bin/sh
# `make demo`: the bundled stories260K model through the toolkit, end to end.
set -e
LMP=${1:-build/lmpress}
OUT=${DEMO_DIR:-build/demo}
mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*"; }
step "convert the llama2.c checkpoint to .lmp"
$LMP convert models/stories260K.bin "$OUT/stories260K.lmp"
step "inspect it"
$LMP inspect "$OUT/stories260K.lmp" | sed -n '1,4p;/^parameters/,$p'
