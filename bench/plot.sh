#!/bin/sh
# Perplexity vs bits per weight, both models side by side, as docs/ppl_vs_bits.png (gnuplot,
# Debian's gnuplot-nox). Points: "LABEL... BITS_PER_WEIGHT PPL" lines, the method being the
# label's first word (RTN, GPTQ; "baseline" is drawn as a line):
#   stories260K: $BENCH_TMP/quant_points.txt (bench/sec_20_quant.sh, this run)
#   SmolLM2:     docs/bench/smollm2_points.txt (bench/smollm2.sh, committed: that section is
#                slow and runs only with BENCH_SMOLLM2=1)
set -e
D=${BENCH_TMP:-build/bench}
S=${1:-$D/quant_points.txt}
M=${2:-docs/bench/smollm2_points.txt}
OUT=${3:-docs/ppl_vs_bits.png}
STORIES_FP=${STORIES_FP:-4.2412}
command -v gnuplot >/dev/null || { echo "bench/plot.sh: gnuplot not installed (apt-get install gnuplot-nox)" >&2; exit 1; }
mkdir -p "$D"
# one data file per (model, method): "bpw ppl"
split() { # points file, prefix
    for k in rtn gptq gguf; do : > "$D/$2_$k.dat"; done
    [ -f "$1" ] || return 0
    awk -v p="$D/$2" '$(NF) ~ /^[0-9.]+$/ && $(NF-1) ~ /^[0-9.]+$/ {
        k = ""
        if ($1 ~ /GGUF/) k = "gguf"; else if ($1 ~ /^GPTQ/) k = "gptq"; else if ($1 ~ /^RTN/) k = "rtn"
        if (k != "") print $(NF-1), $(NF) >> (p "_" k ".dat")
    }' "$1"
}
split "$S" stories
split "$M" smol
smol_base=$(awk '$1 == "baseline" { print $NF }' "$M" 2>/dev/null | head -1)
panels=2; width=1200
if [ -z "$smol_base" ]; then
    echo "bench/plot.sh: no SmolLM2 points in $M: stories260K only" >&2
    panels=1; width=640
fi
tmp="$OUT.tmp.$$.png"
trap 'rm -f "$tmp"' EXIT
{
cat <<EOF
set terminal pngcairo size $width,480 font "sans,10" noenhanced
set output "$tmp"
set multiplot layout 1,$panels title "Perplexity vs bits per weight (lower left is better)"
set logscale y
set grid
set key top right
set xlabel "bits per weight (quantized matrices, scales and zeros included)"
set ylabel "perplexity (log scale)"
set title "stories260K, TinyStories eval.txt, ctx 256"
set xrange [1.5:9]
plot $STORIES_FP with lines dt 2 lc rgb "black" title "fp32 (32 bits)", \
     "$D/stories_rtn.dat" using 1:2 with points pt 6 ps 1.5 lc rgb "#d62728" title "RTN", \
     "$D/stories_gptq.dat" using 1:2 with points pt 7 ps 1.2 lc rgb "#1f77b4" title "GPTQ (variants)"
EOF
[ "$panels" = 2 ] && cat <<EOF
set title "SmolLM2-135M-Instruct, WikiText-2 test prefix, ctx 512"
set xrange [2.5:5.5]
plot $smol_base with lines dt 2 lc rgb "black" title "baseline: dequantized Q4_1 GGUF (5.0 bits)", \
     "$D/smol_rtn.dat" using 1:2 with points pt 6 ps 1.5 lc rgb "#d62728" title "RTN g128", \
     "$D/smol_gptq.dat" using 1:2 with points pt 7 ps 1.2 lc rgb "#1f77b4" title "GPTQ g128", \
     "$D/smol_gguf.dat" using 1:2 with points pt 5 ps 1.2 lc rgb "#2ca02c" title "GPTQ w4 exported as GGUF Q4_1"
EOF
echo "unset multiplot"
} | gnuplot
mv "$tmp" "$OUT"
echo "wrote $OUT" >&2
