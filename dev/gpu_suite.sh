#!/usr/bin/env bash
# The whole `gpu` test suite on one GPU, then optional benchmarks; each step bounded, one tarball back.
#
#   OUT=/path/to/out bash dev/gpu_suite.sh          # from the repository root
#
# Wheels in .whl/ (e.g. simpy, which the simulator's test modules import) are installed into /tmp/site first.
# Writes $OUT/status.txt and $OUT/run.tgz holding run/: device.txt, gpu_tests.log, and bench logs / CSVs when
# BENCH is set (a shell command run before the tests, with $RUN the output folder). Env: T_TESTS, T_BENCH
# (seconds), TESTS (pytest selection, default tests/), BENCH.
set -u
FINAL=${OUT:?set OUT to an output directory}
RUN=$FINAL/run
mkdir -p "$RUN"
if ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-$PWD}
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}:$PWD
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # docs/GPU_FACTS.md
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,power.limit --format=csv,noheader
    python3 -c "import torch, triton, platform; print('torch', torch.__version__, 'triton', triton.__version__, 'python', platform.python_version(), 'gpus', torch.cuda.device_count())"
} > "$RUN/device.txt" 2>&1
bench_rc=skipped
if [ -n "${BENCH:-}" ]; then  # first: a test run that overruns its limit must not cost the measurements
    export RUN
    timeout "${T_BENCH:-200}" bash -c "$BENCH" > "$RUN/bench.log" 2>&1
    bench_rc=$?
fi
# without simpy the simulator's test modules fail at collection, which stops the whole run: then only the files
# that hold gpu tests
if [ -z "${TESTS:-}" ] && ! python3 -c "import simpy" 2> /dev/null; then
    TESTS=$(grep -l "mark.gpu" tests/test_*.py | tr '\n' ' ')
fi
# -v: one line per test as it ends, so a run stopped at its limit still says what passed
timeout "${T_TESTS:-420}" python3 -m pytest -v -p no:cacheprovider -m gpu -rfE ${TESTS:-tests/} > "$RUN/gpu_tests.log" 2>&1
tests_rc=$?
echo "gpu tests rc=$tests_rc, bench rc=$bench_rc (124: timed out)" | tee "$RUN/status.txt"
grep -E "passed|failed|FAILED|ERROR" "$RUN/gpu_tests.log" | tail -n 25
tail -n 30 "$RUN/bench.log" 2>/dev/null
tar -czf "$FINAL/run.tgz" -C "$FINAL" run && cp "$RUN/status.txt" "$FINAL/status.txt" && rm -rf "$RUN"
