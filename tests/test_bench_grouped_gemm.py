"""benchmarks/grouped_gemm.run_case on the CPU interpreter (timing stubbed): every implementation runs, the
fused variants' outputs pass the check, and the summary compares against both kinds of baseline."""

import csv
import io

import pytest
import torch

from benchmarks import grouped_gemm as bench
from comet.config import ModelConfig
from kernels.grouped_gemm import SMALL_CONFIG


def test_run_case_rows_and_summary(monkeypatch):
    monkeypatch.setattr(bench, "DEVICE", "cpu")
    monkeypatch.setattr(bench, "DTYPE", torch.float32)
    # runs fn once; distinct fake times (tiny, so TFLOP/s keep 3 digits): the summary picks the best of each kind
    times = iter(k * 1e-3 for k in range(5, 1000))
    monkeypatch.setattr(bench, "_bench_both", lambda fn: (fn(), next(times))[1:] * 2)
    monkeypatch.setattr(bench.gg, "sm_count", lambda device: 4)
    model = ModelConfig("small", hidden_N=64, ffn_K=48, experts_E=8, topk=2, layers=1, activation="gelu")
    variants = {"32x32": (32, 32, 32, 8, {"config": SMALL_CONFIG}),
                "32x32S+g": (32, 32, 32, 8, {"config": SMALL_CONFIG, "sorted_a": "with_gather"})}
    buf, summary = io.StringIO(), []
    writer = csv.DictWriter(buf, fieldnames=bench.FIELDS)
    writer.writeheader()
    bench.run_case(writer, summary, model, 40, "imbalanced", variants, ceiling=1.0, check=True, gpu="cpu")
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    l0 = {(r["impl"], r["variant"]) for r in rows if r["layer"] == "l0"}
    assert {("cublas_loop", ""), ("cublas_unfused", ""), ("ours", "32x32"), ("ours", "32x32S+g")} <= l0
    assert {r["check"] for r in rows if r["impl"] == "ours"} == {"ok"}
    s0 = next(s for s in summary if s["layer"] == "l0")
    ours = max(float(r["tflops"]) for r in rows if r["layer"] == "l0" and r["impl"] == "ours")
    unfused = max(float(r["tflops"]) for r in rows if r["layer"] == "l0" and r["impl"].endswith("_unfused"))
    assert float(s0["ratio_vs_unfused"]) == pytest.approx(ours / unfused, rel=0.01)  # (CSV rounds TFLOP/s)
