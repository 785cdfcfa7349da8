#!/bin/sh
# Packs what the GPU machine needs to run the CUDA build made here (`make cuda`): the
# binaries and the non-CUDA shared libraries they link (OpenBLAS, LAPACKE, cJSON, PCRE2,
# gfortran, gomp), which the GPU machine's image lacks. cuBLAS/cuSOLVER come from its CUDA
# toolkit. Output: build-cuda/carry/ (git-ignored); tests/cuda/run_device.sh uses it.
# LLAMA_BENCH=path: instead build-cuda/carry-llama/ for bench/gpu_vs_llamacpp.sh: cuda_decode,
# synth_gguf and that llama-bench (a llama.cpp build of your own), stripped and xz-compressed
# with the shared libraries it links outside the CUDA toolkit (the two do not fit in one
# carry of 64 MB).
set -e
B=${BUILD:-build}
C=build-cuda/carry
[ -n "${LLAMA_BENCH:-}" ] && C=build-cuda/carry-llama
rm -rf "$C"; mkdir -p "$C/lib/lib"
if [ -n "${LLAMA_BENCH:-}" ]; then
    cp "$B/cuda/cuda_decode" "$B/synth_gguf" "$C/"
    mkdir -p "$C/llama/lib"
    cp "$LLAMA_BENCH" "$C/llama/llama-bench"
    strip "$C/llama/llama-bench"
    ldd "$LLAMA_BENCH" | awk '$3 ~ /^\// && $3 !~ /cuda/ && $1 !~ /^lib(c|m|dl|pthread|rt|cuda|stdc\+\+|gcc_s)\.so/ {print $3}' |
        while read -r p; do cp -L "$p" "$C/llama/lib/"; done
    tar cJf "$C/llama.tar.xz" -C "$C" llama
    rm -rf "$C/llama"
else
    cp "$B/cuda/lmpress-cuda-tests" "$B/cuda/cuda_decode" "$B/cuda/cuda_gptq" "$B/cuda/lmpress" "$B/synth_gguf" "$C/"
fi
for l in libopenblas.so.0 liblapacke.so.3 liblapack.so.3 libblas.so.3 libtmglib.so.3 \
         libcjson.so.1 libpcre2-8.so.0 libgfortran.so.5 libquadmath.so.0 libgomp.so.1; do
    p=$(ldd "$B/cuda/lmpress-cuda-tests" | awk -v l="$l" '$1 == l {print $3}')
    [ -n "$p" ] && cp -L "$p" "$C/lib/lib/$l"
done
tar cJf "$C/libs.tar.xz" -C "$C/lib" lib
rm -rf "$C/lib"
du -sh "$C"
