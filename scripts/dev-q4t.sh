C=build-cuda/carry; OUT=${OUT:-/tmp/out}; mkdir -p $OUT /tmp/lmplib; tar xJf $C/libs.tar.xz -C /tmp/lmplib
export LD_LIBRARY_PATH=/tmp/lmplib/lib:/usr/local/cuda/lib64:$LD_LIBRARY_PATH
timeout 240 $C/lmpress-cuda-tests > $OUT/tests.log 2>&1; echo "tests rc=$?"; grep -E "FAIL|passed|not close" $OUT/tests.log | head -30
timeout 200 $C/cuda_decode --only ${MODES:-q4,q4-tl,q4-w16,q4-pack,q4-att,q4-tma-s4,q4-rows} 2>&1 | tee $OUT/decode.log | grep -v "^  "
NCU=/usr/local/cuda/bin/ncu
[ "${NCU_MODE:-q4}" != none ] && timeout 120 $NCU --clock-control none -k regex:"q4t_[bt]kernel|attention_kernel|att_split_kernel" --launch-skip 100 --launch-count 11 --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,smsp__issue_active.avg.pct_of_peak_sustained_active,smsp__warps_eligible.avg.per_cycle_active $C/cuda_decode --layers 2 --tokens 24 --runs 1 --only ${NCU_MODE:-q4} > $OUT/ncu.log 2>&1; grep -E "q4t_[bt]kernel|attention_kernel|att_split_kernel|gpu__time|dram__" $OUT/ncu.log | sed "s/(q4t_args).*//; s/(float \*.*//" | head -40
