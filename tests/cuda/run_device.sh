#!/bin/sh
# Everything the GPU machine runs, in one go (device time is scarce): the device tests, the
# decode benchmark, the GPTQ timing and a CLI check, each under a timeout, logs into $OUT.
# Expects the x86-64 binaries and a tarball of their non-CUDA shared libraries in
# build-cuda/carry (see docs/GPU.md, "Running on the device"); cuBLAS/cuSOLVER come from the
# machine's CUDA toolkit.
set -u
C=${CARRY:-build-cuda/carry}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/lmplib
tar xJf "$C/libs.tar.xz" -C /tmp/lmplib
LD_LIBRARY_PATH=/tmp/lmplib/lib:/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}
export LD_LIBRARY_PATH
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu --format=csv
    nproc; uname -m; date -u
    ldd "$C/lmpress-cuda-tests" | grep -E "not found|cublas|cusolver"
} 2>&1 | tee "$OUT/machine.txt"
echo "== tests"
timeout 180 "$C/lmpress-cuda-tests" 2>&1 | tee "$OUT/tests.log"
echo "== decode benchmark"
timeout 240 "$C/cuda_decode" 2>&1 | tee "$OUT/decode.log"
echo "== GPTQ timing"
timeout 200 "$C/cuda_gptq" 2>&1 | tee "$OUT/gptq.log"
echo "== CLI"
{
    for d in cpu cuda; do
        "$C/lmpress" ppl models/stories260K.bin --text data/tinystories/eval.txt --ctx 256 --device $d
        echo "rc=$?"
        "$C/lmpress" run models/stories260K.bin -p "Once upon a time" -n 40 --temp 0 --device $d
        echo "rc=$?"
    done
    for d in cpu cuda; do
        "$C/lmpress" quantize models/stories260K.bin /tmp/q4-$d.lmp --bits 4 --group 32 --calib data/tinystories/calib.txt --device $d
        "$C/lmpress" ppl /tmp/q4-$d.lmp --text data/tinystories/eval.txt --ctx 256 --device $d
        echo "rc=$?"
    done
    for d in cpu cuda; do # the 4-bit model decoded through the fused kernels on the GPU
        "$C/lmpress" run /tmp/q4-cpu.lmp -p "Once upon a time" -n 40 --temp 0 --device $d
        echo "rc=$?"
    done
    "$C/lmpress" ppl models/stories260K.bin --text data/tinystories/eval.txt --device cuda --save-logits /tmp/x.bin
    echo "rc=$? (expected 2: not supported on cuda)"
} 2>&1 | tee "$OUT/cli.log"
