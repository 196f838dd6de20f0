#!/usr/bin/env bash
# Calibrate the one-GPU hardware profile and run its GPU test, on one H200, from the repository root:
#     OUT=/path/to/output bash dev/gpu_calibrate.sh
# Writes under $OUT: profiles/h200_x1.json, calibration/h200_x1_<date>.csv and .log, calibrate.out (the
# command's stdout + stderr), pytest_gpu.out, gpu.txt (nvidia-smi, clocks, versions), status.txt.
# Then commit profiles/h200_x1.json and calibration/h200_x1_<date>.csv as results/calibration/ (the profile's
# sources cite that path). Expected: ~2-3 min for the calibration on a fresh machine (Triton compiles and
# autotuning), ~1 min for the test (a --quick calibration into a temporary folder); each step is bounded.
set -u
OUT=${OUT:?set OUT to the output folder}
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # multicast off: docs/GPU_FACTS.md
export TQDM_MININTERVAL=5  # progress lines every 5 s in the log files, not every update
mkdir -p "$OUT/profiles" "$OUT/calibration"
start=$(date +%s)

{ nvidia-smi; nvidia-smi -q -d CLOCK,POWER | head -60
  python -c "import torch, triton, sys; print(sys.version); print('torch', torch.__version__, 'triton', triton.__version__)"
} > "$OUT/gpu.txt" 2>&1

timeout 280 python -m comet.calibrate --name h200_x1 --out "$OUT/profiles" --results "$OUT/calibration" \
    > "$OUT/calibrate.out" 2>&1
rc_cal=$?
tail -25 "$OUT/calibrate.out"

timeout 220 python -m pytest -q -m gpu tests/test_calibrate.py -p no:cacheprovider > "$OUT/pytest_gpu.out" 2>&1
rc_test=$?
tail -8 "$OUT/pytest_gpu.out"

echo "calibrate rc=$rc_cal (124: timed out), gpu test rc=$rc_test, $(( $(date +%s) - start )) s in all" \
    | tee "$OUT/status.txt"
[ "$rc_cal" -eq 0 ] && [ "$rc_test" -eq 0 ]
