#!/bin/sh
# A shorter device run: the device tests and the decode benchmark only (see run_device.sh).
set -u
C=${CARRY:-build-cuda/carry}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/lmplib
tar xJf "$C/libs.tar.xz" -C /tmp/lmplib
LD_LIBRARY_PATH=/tmp/lmplib/lib:/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}
export LD_LIBRARY_PATH
echo "== tests"
timeout 200 "$C/lmpress-cuda-tests" 2>&1 | tee "$OUT/tests.log" | grep -E "^(PASS|FAIL|SKIP)|passed|ppl|logits|fp16|not close"
echo "== decode benchmark"
timeout 150 "$C/cuda_decode" 2>&1 | tee "$OUT/decode.log"
echo "== decode benchmark, 16 tokens"
timeout 100 "$C/cuda_decode" --tokens 16 --runs 9 2>&1 | tee "$OUT/decode16.log" | tail -5
