#!/bin/sh
# The GPU section: measured on the lent GPU machine (tests/cuda/run_device.sh, docs/GPU.md),
# which `make bench` cannot reach; kept as text and printed in its place.
cat bench/notes/gpu.md
