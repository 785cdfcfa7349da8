#!/bin/sh
# The perplexity / bits-per-weight plot of both models (bench/plot.sh, gnuplot); run.sh
# copies it to docs/ppl_vs_bits.png.
set -e
D=${BENCH_TMP:-build/bench}
echo "## Perplexity vs bits per weight"
echo
if sh bench/plot.sh "$D/quant_points.txt" docs/bench/smollm2_points.txt "$D/ppl_vs_bits.png" >&2; then
    echo "stories260K from the quantization table above, SmolLM2-135M from its section."
    echo
    echo "![perplexity vs bits per weight, stories260K and SmolLM2-135M](ppl_vs_bits.png)"
else
    echo "(not drawn: bench/plot.sh failed; is gnuplot-nox installed?)"
fi
