C=build-cuda/carry; OUT=${OUT:-/tmp/out}; mkdir -p $OUT /tmp/lmplib; tar xJf $C/libs.tar.xz -C /tmp/lmplib
export LD_LIBRARY_PATH=/tmp/lmplib/lib:/usr/local/cuda/lib64:$LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv
timeout 60 $C/lmpress-cuda-tests g128 > $OUT/tests.log 2>&1; echo "tests rc=$?"; tail -15 $OUT/tests.log
timeout 200 $C/cuda_decode --only ${MODES:-q4,q4-p,q4-p-tl} 2>&1 | tee $OUT/decode.log | tail -60
