#!/bin/sh
# Fails when ptxas reports spills in the default 4-bit tile decode kernels (q4t_bkernel for
# q/k/v and the plain products: 2 items in flight, 32 warps; gate/up: 3, 16 warps). Their
# registers are at the limit of one 1024-thread block per SM, and every spill measured so
# far went with slower decode (docs/GPU.md, session 19). Input: the output of
# `nvcc -Xptxas -v -c runtime/cuda/decode_q4t.cu` (make writes it beside decode_q4t.o).
set -u
f=${1:?usage: cuda-spills.sh PTXAS_OUTPUT}
awk '
/Compiling entry function/ {
    name = $0; sub(/.*function \047/, "", name); sub(/\047.*/, "", name); next
}
/bytes spill stores/ && name != "" {
    if (name ~ /^_Z11q4t_bkernelILi(0|2)ELi2ELi32ELi0EEv8q4t_args$/ || name ~ /^_Z11q4t_bkernelILi1ELi3ELi16ELi0EEv8q4t_args$/) {
        seen++
        st = $0; sub(/.*frame, /, "", st); sub(/ bytes spill stores.*/, "", st)
        ld = $0; sub(/.*stores, /, "", ld); sub(/ bytes spill loads.*/, "", ld)
        if (st + 0 > 0 || ld + 0 > 0) {
            printf "decode_q4t.cu: the default tile kernel %s spills (%s bytes stored, %s loaded); see docs/GPU.md, session 19\n", name, st, ld
            bad = 1
        }
    }
    name = ""
}
END {
    if (seen != 3) { printf "decode_q4t.cu: %d of the 3 default tile kernels found in %s\n", seen + 0, FILENAME; exit 1 }
    exit bad
}' "$f"
