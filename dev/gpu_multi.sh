#!/usr/bin/env bash
# On NPROC GPUs of one host (2 or 4): the `multigpu` tests under torchrun, the single-layer benchmark, the
# link part of the calibration. Each step is bounded; the outputs are packed into one archive.
#
#   OUT=/path/to/out NPROC=2 bash dev/gpu_multi.sh          # from the repository root
#
# Writes $OUT/status.txt and $OUT/run.tgz holding run/: device.txt (nvidia-smi, topology, versions),
# multigpu_tests.log, layer_bench/ (CSV, summary) and layer_bench.log, profiles/h200_x<N>.json,
# calibration/ and calibrate.log. Env: NPROC, BENCH_ARGS (layer_bench's grid), T_TESTS / T_BENCH / T_CAL
# (seconds for each step), TESTS (pytest selection), CAL (0: skip the calibration).
set -u
FINAL=${OUT:?set OUT to an output directory}
OUT=$FINAL/run
N=${NPROC:-2}
export PYTHONPATH=${PYTHONPATH:-$PWD}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # multicast off: docs/GPU_FACTS.md
export TQDM_MININTERVAL=5
mkdir -p "$OUT"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv,noheader
    nvidia-smi topo -m
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'gpus', torch.cuda.device_count())"
} > "$OUT/device.txt" 2>&1

timeout "${T_TESTS:-200}" torchrun --nproc-per-node="$N" -m pytest -q -p no:cacheprovider -m multigpu \
    --timeout=120 -rfE ${TESTS:-tests/test_fused_multigpu.py tests/test_layer_multigpu.py} \
    > "$OUT/multigpu_tests.log" 2>&1
tests_rc=$?
# shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
timeout "${T_BENCH:-200}" torchrun --nproc-per-node="$N" -m experiments.layer_bench \
    ${BENCH_ARGS:---parallel ${N}x1 --models mixtral-8x7b --tokens 4096 16384 --routing balanced imbalanced} \
    --out "$OUT/layer_bench" > "$OUT/layer_bench.log" 2>&1
bench_rc=$?
cal_rc=skipped
if [ "${CAL:-1}" = 1 ]; then  # the link part on top of the one-GPU profile's measured tile and comm fields
    timeout "${T_CAL:-90}" torchrun --nproc-per-node="$N" -m comet.calibrate --name "h200_x$N" --parts link \
        --base h200_x1 --out "$OUT/profiles" --results "$OUT/calibration" > "$OUT/calibrate.log" 2>&1
    cal_rc=$?
fi
echo "multigpu tests rc=$tests_rc, layer_bench rc=$bench_rc, calibrate rc=$cal_rc (124: timed out)" \
    | tee "$OUT/status.txt"
grep -E "passed|failed|error" "$OUT/multigpu_tests.log" | tail -n 6
tail -n 15 "$OUT/layer_bench.log"
tail -n 8 "$OUT/calibrate.log"
tar -czf "$FINAL/run.tgz" -C "$FINAL" run && cp "$OUT/status.txt" "$FINAL/status.txt" && rm -rf "$OUT"
