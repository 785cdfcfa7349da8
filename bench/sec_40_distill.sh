#!/bin/sh
# Distillation results (issue 6): stories260K pruned 20 % (taylor1, and obs + compensation)
# and quantized to 3 bits (GPTQ, groups of 32), each distilled from the fp32 model on
# calib.txt; PPL = ppl --ctx 256 on eval.txt; recovery = (before - after) / (before - fp32).
set -e
LMP=${LMP:-build/lmpress}
D=${BENCH_TMP:-build/bench}
[ -n "$BENCH_QUICK" ] && { echo "## Distillation (skipped: BENCH_QUICK)"; exit 0; }
mkdir -p "$D"
T=models/stories260K.bin
PPL="--text data/tinystories/eval.txt --ctx 256"
CAL="--calib data/tinystories/calib.txt"
num() { sed -n "s/.*\"$1\":[[:space:]]*\([0-9.e+-]*\).*/\1/p" | head -1; }
ppl() { $LMP ppl "$1" $PPL --json 2>/dev/null | num ppl; }
now() { date +%s.%N; }
fp=$(ppl $T)
$LMP prune $T "$D/p20.lmp" --ratio 0.2 --importance taylor1 $CAL >/dev/null 2>&1
$LMP prune $T "$D/p20obs.lmp" --ratio 0.2 --importance obs --compensate $CAL >/dev/null 2>&1
$LMP quantize $T "$D/q3.lmp" --bits 3 --group 32 $CAL >/dev/null 2>&1
# one row: label, student file, distill options
row() {
    label=$1; s=$2; shift 2
    f="$D/distilled.lmp"
    t0=$(now)
    if ! $LMP distill --teacher $T --student "$s" --out "$f" --data data/tinystories/calib.txt "$@" \
        > "$D/distill.log" 2>&1; then
        printf '| %s | error: %s | | | | | | |\n' "$label" "$(tail -1 "$D/distill.log")"
        return
    fi
    t1=$(now)
    b=$(ppl "$s"); a=$(ppl "$f")
    printf '| %s | %.4f | %.4f | %.1f %% | %.0f | %s → %s | `distill %s` |\n' "$label" "$b" "$a" \
        "$(echo "$b $a $fp" | awk '{print 100 * ($1 - $2) / ($1 - $3)}')" \
        "$(echo "$t1 $t0" | awk '{print $1 - $2}')" "$(wc -c < "$s" | tr -d ' ')" \
        "$(wc -c < "$f" | tr -d ' ')" "$*"
}
echo "## Distillation (stories260K; teacher = fp32, PPL $(printf %.4f "$fp"))"
echo
echo "Students: \`prune $T p20.lmp --ratio 0.2 --importance taylor1 $CAL\` (and \`--importance obs"
echo "--compensate\`), \`quantize $T q3.lmp --bits 3 --group 32 $CAL\` (GPTQ). Each is distilled with"
echo "\`lmpress distill --teacher $T --student S --out OUT.lmp --data data/tinystories/calib.txt\` + the"
echo "options shown (defaults: lr 1e-3, batch 8 x 256 tokens, AdamW, warmup 5 %, cosine to 0.1 lr, clip 1,"
echo "full-vocabulary KL at T = 1, adapter rank 32, grid merge), then \`lmpress ppl OUT.lmp $PPL\`. Recovery = (before − after) / (before − fp32)."
echo "Wall time: the whole distill command on this machine (all cores)."
echo
echo "| student | PPL before | PPL after | recovery | wall s | file bytes | options |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | --- |"
row "pruned 20 % taylor1" "$D/p20.lmp" --steps 100
row "pruned 20 % taylor1" "$D/p20.lmp" --steps 300
row "pruned 20 % obs + compensate" "$D/p20obs.lmp" --steps 300
row "GPTQ 3-bit g32, grid merge" "$D/q3.lmp" --steps 300 --rank 64
row "GPTQ 3-bit g32, grid merge" "$D/q3.lmp" --steps 300
row "GPTQ 3-bit g32, grid merge" "$D/q3.lmp" --steps 300 --rank 8
row "GPTQ 3-bit g32, grid-post merge" "$D/q3.lmp" --steps 300 --merge grid-post
row "GPTQ 3-bit g32, f16 merge" "$D/q3.lmp" --steps 300 --merge f16
