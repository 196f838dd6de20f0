#!/usr/bin/env bash
# On one H200: the Gluon Hopper grouped GEMM (kernels/gluon_gemm.py). Its GPU tests first (stop if
# they fail), then the benchmark against the tl kernel and the cuBLAS / _grouped_mm baselines, then the
# rest of the grouped GEMM's GPU tests. Under 10 minutes; each step has a timeout.
#
#   OUT=/path/to/out PYTHONPATH=$PWD bash dev/gpu_gluon.sh          # from the repository root
#
# Writes $OUT/status.txt and $OUT/run.tgz (every output in one archive) holding run/: device.txt,
# gluon_tests.log, bench.log, grouped_gemm/h200_gluon_<date>{,_summary}.csv, grouped_gemm/compiled.txt,
# grouped_gemm/h200_activation_power_<date>.csv, gpu_tests.log, power.log. Env: VARIANTS, TOKENS, LAYERS, TAG,
# POWER (0: skip the power probe), OTHER_TESTS (0: skip the non-Gluon GPU tests), T_GLUON_TESTS, T_BENCH
# (timeouts, s), SWIGLU_VARIANTS (also time layer0 with swiglu on these variants), CUBLAS_KERNELS
# (1: list the kernels the baselines launch, benchmarks/cublas_kernels.py).
set -u
FINAL=${OUT:?set OUT to an output directory}
OUT=$FINAL/run
export PYTHONPATH=${PYTHONPATH:-$PWD}
PY=${PYTHON:-python3}
VARIANTS=${VARIANTS:-128x256t,128x256tSC,128x256G,128x256GS,128x128GS,128x256GS-noact}
TAG=${TAG:-h200_gluon}
mkdir -p "$OUT"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,power.limit --format=csv,noheader
    "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} > "$OUT/device.txt" 2>&1

timeout "${T_GLUON_TESTS:-180}" "$PY" -m pytest -q -p no:cacheprovider -m gpu -k gluon tests/test_grouped_gemm.py > "$OUT/gluon_tests.log" 2>&1
gluon_rc=$?
bench_rc=skipped
if [ $gluon_rc -eq 0 ]; then
    timeout "${T_BENCH:-330}" "$PY" -m benchmarks.grouped_gemm --check --timing graph --tokens "${TOKENS:-16384,4096}" --variants "$VARIANTS" \
        --layers "${LAYERS:-l0,l1}" --tag "$TAG" --out "$OUT/grouped_gemm" > "$OUT/bench.log" 2>&1
    bench_rc=$?
fi
tests_rc=skipped
if [ "${OTHER_TESTS:-1}" = 1 ]; then
    timeout 120 "$PY" -m pytest -q -p no:cacheprovider -m gpu -k "not gluon" tests/test_grouped_gemm.py > "$OUT/gpu_tests.log" 2>&1
    tests_rc=$?
fi
if [ "${POWER:-1}" = 1 ]; then
    timeout 60 "$PY" -m benchmarks.activation_power --out "$OUT/grouped_gemm" --seconds 3 > "$OUT/power.log" 2>&1
fi
if [ "${CUBLAS_KERNELS:-0}" = 1 ]; then  # which kernels the baselines launch (torch.profiler)
    timeout 120 "$PY" -m benchmarks.cublas_kernels --out "$OUT/grouped_gemm" --tag "${TAG}_kernels" > "$OUT/kernels.log" 2>&1
fi
if [ -n "${SWIGLU_VARIANTS:-}" ] && [ "$bench_rc" = 0 ]; then  # layer0 with swiglu (BLOCK_N <= 128 variants)
    timeout 150 "$PY" -m benchmarks.grouped_gemm --check --timing graph --activation swiglu --layers l0 \
        --tokens "${TOKENS:-16384,4096}" --variants "$SWIGLU_VARIANTS" --tag "${TAG}_swiglu" \
        --out "$OUT/grouped_gemm" > "$OUT/bench_swiglu.log" 2>&1
fi
echo "gluon tests rc=$gluon_rc, bench rc=$bench_rc, other gpu tests rc=$tests_rc (124: timed out)" | tee "$OUT/status.txt"
tail -n 5 "$OUT/gluon_tests.log" "$OUT/gpu_tests.log"
grep -E "ratio|FAIL|failed" "$OUT/bench.log" | tail -n 40
tar -czf "$FINAL/run.tgz" -C "$FINAL" run && cp "$OUT/status.txt" "$FINAL/status.txt" && rm -rf "$OUT"
