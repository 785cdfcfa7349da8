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
#   on the GPU machine, with build-cuda/carry-llama from
#   `LLAMA_BENCH=/path/to/llama-bench sh scripts/cuda-carry.sh` (it unpacks that llama-bench):
#       OUT=dir sh bench/gpu_vs_llamacpp.sh
#   anywhere else: LLAMA_BENCH=/path/to/llama-bench CARRY=build/cuda SYNTH=build/synth_gguf \
#       sh bench/gpu_vs_llamacpp.sh
set -u
C=${CARRY:-build-cuda/carry-llama}
OUT=${OUT:-/tmp/out}
D=${SYNTH_DIR:-/tmp/lmp-synth}
mkdir -p "$OUT" "$D"
if [ -f "$C/libs.tar.xz" ]; then
    mkdir -p /tmp/lmplib && tar xJf "$C/libs.tar.xz" -C /tmp/lmplib
    LD_LIBRARY_PATH=/tmp/lmplib/lib:${LD_LIBRARY_PATH:-}
fi
if [ -z "${LLAMA_BENCH:-}" ] && [ -f "$C/llama.tar.xz" ]; then
    mkdir -p /tmp/lmpllama && tar xJf "$C/llama.tar.xz" -C /tmp/lmpllama
    LLAMA_BENCH=/tmp/lmpllama/llama/llama-bench
    LD_LIBRARY_PATH=/tmp/lmpllama/llama/lib:${LD_LIBRARY_PATH:-}
fi
: "${LLAMA_BENCH:?set LLAMA_BENCH to a llama-bench built with CUDA}"
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64:/usr/local/cuda/lib
S=${SYNTH:-$C/synth_gguf}
ldd "$LLAMA_BENCH" | grep 'not found' && exit 1
for t in q4_0 f16; do
    [ -s "$D/$t.gguf" ] || "$S" "$D/$t.gguf" --type $t > "$D/$t.txt" || exit 1
    cat "$D/$t.txt"
done | tee "$OUT/synth.txt"
echo "== cuda_decode"
timeout 200 "$C/cuda_decode" --only f16,q4 2>&1 | tee "$OUT/ours.log"
echo "== llama-bench"
for t in q4_0 f16; do
    timeout 200 "$LLAMA_BENCH" -m "$D/$t.gguf" -ngl 99 -p 0 -n 128 -r 5 -fa 0,1 -o json > "$OUT/llama-$t.json" 2> "$OUT/llama-$t.err"
    echo "rc=$? ($t)"
done
echo "== side by side"
python3 - "$OUT" "$D" <<'PY' | tee "$OUT/side-by-side.md"
import json, re, sys
out, d = sys.argv[1], sys.argv[2]
ours = open(out + "/ours.log").read()
copy = float(re.search(r"^device-to-device copy:.*= ([0-9.]+) GB/s", ours, re.M).group(1))
print("| runtime, weights | GB / token | tokens/s | %% of copy (%.0f GB/s, same run) |" % copy)
print("| --- | ---: | ---: | ---: |")
for m in ("f16", "q4"):
    r = re.search(r"^  %s +([0-9.]+) GB/token, [0-9.]+ ms/token, ([0-9.]+) tok/s.*= ([0-9.]+) %%" % m, ours, re.M)
    if r:
        print("| lmpress (cuda_decode), %s | %s | %s | %s %% |" % ("fp16" if m == "f16" else "4-bit g128", r.group(1), r.group(2), r.group(3)))
for t in ("q4_0", "f16"):
    gb = float(re.search(r", ([0-9.]+) GB of matrices read", open("%s/%s.txt" % (d, t)).read()).group(1))
    try:
        runs = json.load(open("%s/llama-%s.json" % (out, t)))
    except (OSError, ValueError) as e:
        print("| llama.cpp, %s | %.3f | (no result: %s) | |" % (t, gb, e))
        continue
    for r in runs:
        ts = r["avg_ts"]
        print("| llama.cpp (llama-bench tg%d, flash_attn %s), %s | %.3f | %.1f +- %.1f | %.1f %% |" % (
            r["n_gen"], r["flash_attn"], t.upper(), gb, ts, r["stddev_ts"], 100 * gb * ts / copy))
PY
