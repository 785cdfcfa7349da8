#!/bin/sh
# Structured pruning results (issue 5): stories260K, calibration on calib.txt (seed 0),
# PPL = ppl --ctx 256 on eval.txt; parameters, file size and decode speed per file.
set -e
LMP=${LMP:-build/lmpress}
D=${BENCH_TMP:-build/bench}
[ -n "$BENCH_QUICK" ] && { echo "## Structured pruning (skipped: BENCH_QUICK)"; exit 0; }
mkdir -p "$D"
PPL="--text data/tinystories/eval.txt --ctx 256"
num() { sed -n "s/.*\"$1\":[[:space:]]*\([0-9.e+-]*\).*/\1/p" | head -1; }
params() { $LMP inspect --json "$1" | num params; }
decode() { $LMP run "$1" -n 256 --temp 0 --threads 1 2>&1 >/dev/null | sed -n 's/.*generated: [0-9]* tokens, \([0-9.]*\) tokens\/s.*/\1/p'; }
$LMP convert models/stories260K.bin "$D/base.lmp" 2>/dev/null
echo "## Structured pruning (stories260K; fp32 PPL 4.2412, 260,032 parameters, 1,054,656-byte .lmp)"
echo
echo "\`lmpress prune models/stories260K.bin OUT.lmp --ratio R --importance I [--compensate] --calib data/tinystories/calib.txt\`"
echo "(R = fraction of the block parameters removed, per layer; defaults: 16 gradient windows, 32"
echo "activation windows of 512 tokens, seed 0), then \`lmpress ppl OUT.lmp $PPL\`. Decode: \`lmpress run OUT.lmp -n 256 --temp 0 --threads 1\`"
echo "(noisy at this model size: fixed per-token costs are as large as the savings)."
echo
echo "| R | importance | PPL | PPL --compensate | parameters | file bytes | decode tok/s |"
echo "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"
printf '| 0 | (fp32) | 4.2412 | | %s | %s | %.0f |\n' "$(params "$D/base.lmp")" "$(wc -c < "$D/base.lmp")" "$(decode "$D/base.lmp")"
for r in 0.1 0.2 0.3; do
    for imp in magnitude taylor1 taylor2 hessian obs; do
        f="$D/p.lmp"; fc="$D/pc.lmp"
        $LMP prune models/stories260K.bin "$f" --ratio $r --importance $imp --calib data/tinystories/calib.txt >/dev/null 2>&1
        $LMP prune models/stories260K.bin "$fc" --ratio $r --importance $imp --compensate --calib data/tinystories/calib.txt >/dev/null 2>&1
        p=$($LMP ppl "$f" $PPL --json 2>/dev/null | num ppl)
        pc=$($LMP ppl "$fc" $PPL --json 2>/dev/null | num ppl)
        printf '| %s | %s | %.3f | %.3f | %s | %s | %.0f |\n' "$r" "$imp" "$p" "$pc" "$(params "$f")" "$(wc -c < "$f")" "$(decode "$f")"
    done
done
