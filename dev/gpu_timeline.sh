#!/usr/bin/env bash
# Tile timelines from the real kernels, on one GPU (under 3 minutes: each step has a timeout): the
# real run of experiments.timeline_compare (Mixtral-8x7B, EP=4 emulated, M=4096, rank 0), then the
# instrumented kernels' tests (tests/test_timeline.py; its CPU tests run too, the simpy ones skip).
#
#   OUT=/path/to/out PYTHONPATH=$PWD bash dev/gpu_timeline.sh          # from the repository root
#
# Writes under $OUT: device.txt, gpu_tests.log, timeline_compare.log, timeline_compare/{real_events.csv,
# case.json}, status.txt (exit codes). This step needs no simpy; afterwards, where simpy is installed,
#   python -m experiments.timeline_compare --sim-only --out <copy of $OUT/timeline_compare>
# adds sim_events.csv, real_trace.json, summary.csv and sim_vs_real.png beside them.
set -u
OUT=${OUT:?set OUT to an output directory}
export PYTHONPATH=${PYTHONPATH:-$PWD}
PY=${PYTHON:-python3}
mkdir -p "$OUT"

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} > "$OUT/device.txt" 2>&1

# the real run first (the result to keep); the tests then find most kernels compiled in Triton's cache
timeout 75 "$PY" -m experiments.timeline_compare --out "$OUT/timeline_compare" > "$OUT/timeline_compare.log" 2>&1
compare_rc=$?
timeout 95 "$PY" -m pytest -q -p no:cacheprovider tests/test_timeline.py > "$OUT/gpu_tests.log" 2>&1
tests_rc=$?

echo "tests rc=$tests_rc (124: timed out), timeline_compare rc=$compare_rc" | tee "$OUT/status.txt"
tail -n 5 "$OUT/gpu_tests.log" "$OUT/timeline_compare.log"
exit $(( tests_rc != 0 || compare_rc != 0 ))
