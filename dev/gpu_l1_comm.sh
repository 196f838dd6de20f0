#!/usr/bin/env bash
# On one H200: layer1's communication kernel alone (benchmarks/l1_comm.py) on this tree and, when AB_OLD names
# a folder holding older copies of kernels/fused_layer1*.py, on a copy of the tree with those (the same benchmark,
# programs swept only); then the GPU tests of the fused kernels' layer1. Each step has a timeout.
#
#   OUT=/path/to/out TAG=h200_l1_comm_2026-12-04 [AB_OLD=dir] bash dev/gpu_l1_comm.sh
set -u
FINAL=${OUT:?set OUT to an output directory}
OUT=$FINAL/run
export PYTHONPATH=$PWD
PY=${PYTHON:-python3}
TAG=${TAG:?set TAG}
mkdir -p "$OUT"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,power.limit --format=csv,noheader
    "$PY" -c "import torch, triton, sys; print('torch', torch.__version__, 'triton', triton.__version__, 'python', sys.version.split()[0], 'gpus', torch.cuda.device_count())"
} > "$OUT/device.txt" 2>&1
timeout "${T_NEW:-200}" "$PY" -m benchmarks.l1_comm --tag "$TAG" --out "$OUT" > "$OUT/bench.log" 2>&1
new_rc=$?
old_rc=skipped
if [ -n "${AB_OLD:-}" ]; then
    OLD=/tmp/l1_old_tree
    rm -rf "$OLD" && mkdir -p "$OLD" && cp -r . "$OLD/" && cp "$AB_OLD"/fused_layer1*.py "$OLD/kernels/"
    (cd "$OLD" && PYTHONPATH=$OLD timeout "${T_OLD:-120}" "$PY" -m benchmarks.l1_comm --tag "${TAG}_before" --out "$OUT" \
        --vary programs) > "$OUT/bench_before.log" 2>&1
    old_rc=$?
fi
timeout "${T_TESTS:-200}" "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_fused_kernels.py -k "layer1 or comm" \
    > "$OUT/gpu_tests.log" 2>&1
tests_rc=$?
echo "bench rc=$new_rc, before rc=$old_rc, gpu tests rc=$tests_rc (124: timed out)" > "$FINAL/status.txt"
tar czf "$FINAL/run.tgz" -C "$FINAL" run
cat "$FINAL/status.txt"; tail -3 "$OUT/gpu_tests.log"
