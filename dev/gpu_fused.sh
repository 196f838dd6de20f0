#!/usr/bin/env bash
# On one H200: the fused kernels' GPU tests (with the layer's and the timeline's), then benchmarks/fused_layers
# over balanced and imbalanced routing with the layer0 configs of L0_CONFIGS. Each step has a timeout, so the
# archive is written whatever happens.
#
#   OUT=/path/to/out TAG=h200_x_2026-12-04 L0_CONFIGS="default;l0_tail_pct=60" bash dev/gpu_fused.sh
#
# Writes $OUT/status.txt and $OUT/run.tgz holding run/: device.txt, gpu_tests.log, bench.log,
# ${TAG}.csv and the imbalanced one (TAG with "_imbalanced" before its date); with REPLAY=1 first
# benchmarks.kernel_spans --replay-times over every case (${TAG}_spans*.csv, spans.log: each graph replay's time
# and the SM clock beside it). Env: TAG, L0_CONFIGS, L1_SWEEP_NC (default 4), IMB_CASES (imbalanced cases), REPLAY,
# T_TESTS, T_REPLAY, T_BAL, T_IMB (timeouts, s), TESTS (0: skip the tests).
set -u
FINAL=${OUT:?set OUT to an output directory}
OUT=$FINAL/run
export PYTHONPATH=${PYTHONPATH:-$PWD}
PY=${PYTHON:-python3}
TAG=${TAG:?set TAG, e.g. h200_<what>_<date>}
mkdir -p "$OUT"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,power.limit --format=csv,noheader
    "$PY" -c "import torch, triton, sys; print('torch', torch.__version__, 'triton', triton.__version__, 'python', sys.version.split()[0], 'gpus', torch.cuda.device_count())"
} > "$OUT/device.txt" 2>&1
tests_rc=skipped
if [ "${TESTS:-1}" = 1 ]; then
    timeout "${T_TESTS:-200}" "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_fused_kernels.py tests/test_layer.py \
        tests/test_timeline.py tests/test_benchmarks_gpu.py > "$OUT/gpu_tests.log" 2>&1
    tests_rc=$?
fi
replay_rc=skipped
if [ "${REPLAY:-0}" = 1 ]; then
    timeout "${T_REPLAY:-150}" "$PY" -m benchmarks.kernel_spans --replay-times --tag "${TAG}_spans" --out "$OUT" \
        --nc0 8,32 --nc1 4,16 > "$OUT/spans.log" 2>&1
    replay_rc=$?
fi
L0=${L0_CONFIGS:-default}
timeout "${T_BAL:-220}" "$PY" -m benchmarks.fused_layers --tag "$TAG" --out "$OUT" --l1-sweep-nc "${L1_SWEEP_NC:-4}" \
    --l0-configs "$L0" > "$OUT/bench.log" 2>&1
bal_rc=$?
timeout "${T_IMB:-150}" "$PY" -m benchmarks.fused_layers --tag "${TAG%_*}_imbalanced_${TAG##*_}" --out "$OUT" \
    --routing imbalanced --cases "${IMB_CASES:-mixtral-8x7b:4096:4,mixtral-8x7b:16384:4,phi-3.5-moe:8192:4}" \
    --l1-sweep-nc "${L1_SWEEP_NC:-4}" --l0-configs "$L0" >> "$OUT/bench.log" 2>&1
imb_rc=$?
echo "gpu tests rc=$tests_rc, replays rc=$replay_rc, balanced bench rc=$bal_rc, imbalanced bench rc=$imb_rc (124: timed out)" \
    > "$FINAL/status.txt"
tar czf "$FINAL/run.tgz" -C "$FINAL" run
cat "$FINAL/status.txt"
tail -3 "$OUT/gpu_tests.log" 2>/dev/null
