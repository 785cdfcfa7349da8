# Development run of the persistent 4-bit decode kernel on the GPU machine (see docs/GPU.md):
# its test, the decode modes in MODES, and the SASS of the decode kernels under $OUT.
C=build-cuda/carry; OUT=${OUT:-/tmp/out}; mkdir -p $OUT /tmp/lmplib; tar xJf $C/libs.tar.xz -C /tmp/lmplib
export LD_LIBRARY_PATH=/tmp/lmplib/lib:/usr/local/cuda/lib64:$LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv
timeout 60 $C/lmpress-cuda-tests ${TESTS:-g128} > $OUT/tests.log 2>&1; echo "tests rc=$?"; grep -E "FAIL|passed|persistent|not close" $OUT/tests.log | head -20
timeout 300 $C/cuda_decode --only ${MODES:-q4,q4-p,q4-p-tl} ${DECODE_ARGS:-} 2>&1 | tee $OUT/decode.log | grep -v "^  [a-z0-9-]* *tile kernels"
[ -n "$SASS" ] && /usr/local/cuda/bin/cuobjdump -sass $C/lmpress-cuda-tests 2>/dev/null | gzip > $OUT/sass.gz
exit 0
