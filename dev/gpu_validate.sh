#!/usr/bin/env bash
# The simulator's validation data on one H200 (each step has a timeout, so the archive is written whatever
# happens). STEPS picks them (default "grid": ~6-7 min with a cold Triton cache; a device call is limited to 10
# minutes, so run "cal" and "timelines" in a call of their own, ~4 and ~2.5 min):
#   1. comet.calibrate on the kernels as they are (the profile the predictions start from);
#   2. benchmarks.fused_layers over the validation grid (GRID: 15 cases, EP 2 / 4 / 8 and EP x TP = 2 x 2,
#      Mixtral-8x7B, Phi-3.5-MoE, Qwen2-MoE and Qwen3-30B-A3B (E=128, topk=8, N=2048, K=768), M 2048-32768),
#      balanced, then IMB_GRID imbalanced; the Gluon forms at NC0 / NC1 and the GEMM alone, graph replays
#      only, each row with the SM clock nvidia-smi sampled during it;
#   3. the real tile timelines of three cases (experiments.timeline_compare's GPU step).
#
#   OUT=/path/to/out DATE=2026-12-05 STEPS=cal,timelines bash dev/gpu_validate.sh   # from the repository root
#   OUT=/path/to/out DATE=2026-12-05 bash dev/gpu_validate.sh                       # the grid
#
# Then, on any machine (CPU):
#   python -m experiments.validate --measured <run>/validation_grid/h200_grid_$DATE.csv --hw <run>/profiles/h200_x1.json \
#       --calibration <run>/calibration/h200_x1_$DATE.csv --l1-pipeline 1 --l1-send-block 32 --out results/validation
#   python -m experiments.timeline_compare --sim-only --out <copy of run/timeline_<case>>   (each case)
# Writes $OUT/status.txt and $OUT/run.tgz holding run/. Env: STEPS, GRID, IMB_GRID, NC0, NC1, DATE, T_CAL, T_GRID,
# T_IMB, T_TL (timeouts, s).
set -u
FINAL=${OUT:?set OUT to an output directory}
OUT=$FINAL/run
export PYTHONPATH=${PYTHONPATH:-$PWD}
export TQDM_MININTERVAL=5
PY=${PYTHON:-python3}
DATE=${DATE:-$(date +%F)}
GRID=${GRID:-mixtral-8x7b:2048:2,mixtral-8x7b:4096:4,mixtral-8x7b:16384:4,mixtral-8x7b:32768:8,mixtral-8x7b:8192:2:2,\
phi-3.5-moe:16384:2,phi-3.5-moe:8192:4,phi-3.5-moe:2048:8,\
qwen2-moe-2.7b:8192:4,qwen2-moe-2.7b:32768:8,qwen2-moe-2.7b:4096:2:2,\
qwen3-30b-a3b:16384:2,qwen3-30b-a3b:4096:4,qwen3-30b-a3b:4096:8,qwen3-30b-a3b:8192:2:2}
IMB_GRID=${IMB_GRID:-mixtral-8x7b:8192:4,phi-3.5-moe:8192:4,qwen2-moe-2.7b:8192:4,qwen3-30b-a3b:8192:4}
NC0=${NC0:-8,16,32}
NC1=${NC1:-4,8,16,32}
mkdir -p "$OUT/profiles" "$OUT/calibration" "$OUT/validation_grid"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,power.limit --format=csv,noheader
    "$PY" -c "import torch, triton, sys; print('torch', torch.__version__, 'triton', triton.__version__, 'python', sys.version.split()[0], 'gpus', torch.cuda.device_count())"
} > "$OUT/device.txt" 2>&1

STEPS=",${STEPS:-grid},"
cal_rc=skipped
if [[ $STEPS == *,cal,* ]]; then
    timeout "${T_CAL:-240}" "$PY" -m comet.calibrate --name h200_x1 --out "$OUT/profiles" --results "$OUT/calibration" \
        > "$OUT/calibrate.log" 2>&1
    cal_rc=$?
fi
grid_rc=skipped
imb_rc=skipped
if [[ $STEPS == *,grid,* ]]; then
    BENCH=(-m benchmarks.fused_layers --out "$OUT/validation_grid" --impls gemm_alone,fused_blocks_gluon,fused_gluon
           --no-eager --nc0 "$NC0" --nc1 "$NC1")
    timeout "${T_GRID:-330}" "$PY" "${BENCH[@]}" --cases "$GRID" --tag "h200_grid_$DATE" > "$OUT/grid.log" 2>&1
    grid_rc=$?
    timeout "${T_IMB:-90}" "$PY" "${BENCH[@]}" --cases "$IMB_GRID" --routing imbalanced \
        --tag "h200_grid_imbalanced_$DATE" >> "$OUT/grid.log" 2>&1
    imb_rc=$?
fi
tl_rc=skipped
if [[ $STEPS == *,timelines,* ]]; then
    tl_rc=""
    for case in "mixtral-8x7b 4096 4" "qwen2-moe-2.7b 8192 4" "qwen3-30b-a3b 4096 8"; do
        set -- $case
        timeout "${T_TL:-45}" "$PY" -m experiments.timeline_compare --model "$1" --tokens "$2" --ep "$3" \
            --out "$OUT/timeline_$1_$2_ep$3" >> "$OUT/timelines.log" 2>&1
        tl_rc="$tl_rc $?"
    done
fi
echo "calibrate rc=$cal_rc, grid rc=$grid_rc, imbalanced rc=$imb_rc, timelines rc=$tl_rc (124: timed out)" \
    > "$FINAL/status.txt"
tar czf "$FINAL/run.tgz" -C "$FINAL" run
cat "$FINAL/status.txt"
tail -3 "$OUT/grid.log" 2>/dev/null
