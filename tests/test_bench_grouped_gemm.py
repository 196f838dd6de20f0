"""benchmarks/grouped_gemm.run_case on the CPU interpreter (timing stubbed): every implementation runs, the
fused variants' outputs pass the check, and the summary compares against both kinds of baseline; and
benchmarks/plot_grouped_gemm on a small CSV."""

import csv
import io

import pandas as pd
import pytest
import torch

from benchmarks import grouped_gemm as bench
from comet.core.config import ModelConfig
from kernels.options import SMALL_TILE


def test_run_case_rows_and_summary(monkeypatch):
    monkeypatch.setattr(bench, "DEVICE", "cpu")
    monkeypatch.setattr(bench, "DTYPE", torch.float32)
    # runs fn once; distinct fake times (tiny, so TFLOP/s keep 3 digits): the summary picks the best of each kind
    times = iter(k * 1e-3 for k in range(5, 1000))
    monkeypatch.setattr(bench, "_bench_both", lambda fn: (fn(), next(times))[1:] * 2)
    monkeypatch.setattr(bench.gg, "sm_count", lambda device: 4)
    model = ModelConfig("small", hidden_N=64, ffn_K=48, experts_E=8, topk=2, layers=1, activation="gelu")
    variants = {"32x32": (32, 32, 32, 8, {"tile": SMALL_TILE}),
                "32x32S+g": (32, 32, 32, 8, {"tile": SMALL_TILE, "sorted_a": "with_gather"})}
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


def test_plot_reads_the_csv_and_names_missing_variants(tmp_path):
    from benchmarks import plot_grouped_gemm as plot

    rows = [dict(gpu="g", model=m, tokens_M=4096, routing="balanced", layer=layer, impl=impl, variant=v, tflops=t)
            for m in ("mixtral-8x7b", "qwen2-moe-2.7b") for layer in ("l0", "l1")
            for impl, v, t in (("cublas_loop", "", 600.0), ("grouped_mm_colmajor", "", 500.0), ("ours", "A", 540.0),
                               ("ours", "B", 660.0))]
    path = tmp_path / "fake_2026-11-24.csv"
    path.write_text("# FAKE GPU x1 (132 SMs), torch x\n" + pd.DataFrame(rows).to_csv(index=False))
    r = plot.ratios(pd.read_csv(path, comment="#"))
    assert r["A"].tolist() == pytest.approx([0.9] * 4) and r["B"].tolist() == pytest.approx([1.1] * 4)
    assert plot.main([str(path), "--variants", "B,A", "--labels", "fast,slow"]) == 0
    assert path.with_suffix(".png").stat().st_size > 10_000
    with pytest.raises(ValueError, match=r"variants \['C'\] are not in the CSV; it has \['A', 'B'\]"):
        plot.ratios(pd.read_csv(path, comment="#"), ["A", "C"])


def test_cublas_kernels_profiles_every_baseline_and_ours(monkeypatch):
    """benchmarks/cublas_kernels on the CPU (operators instead of kernels): every case runs and reports time."""
    from benchmarks import cublas_kernels as ck

    monkeypatch.setattr(ck, "DEVICE", "cpu")
    monkeypatch.setattr(ck, "DTYPE", torch.float32)
    model = ModelConfig("small", hidden_N=64, ffn_K=48, experts_E=8, topk=2, layers=1, activation="gelu")
    for layer in ("l0", "l1"):
        cases = ck._cases(model, 40, "imbalanced", layer)
        assert ("cublas_gelu_loop" in cases) == (layer == "l0")
        for impl, fn in cases.items():
            if impl.startswith("grouped_mm") and not hasattr(torch, "_grouped_mm"):
                continue
            kernels = ck._kernel_times(fn, runs=1)
            assert kernels and all(us > 0 for _, _, us in kernels), (layer, impl)
            if impl == "cublas_loop":
                assert any("mm" in name for name, _, _ in kernels)
