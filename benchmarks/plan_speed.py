"""Time make_plan (median of repeats) on the CPU or a GPU; CSV to --out.

    python -m benchmarks.plan_speed --device cpu --out results/plan_speed
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch

from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.core.planner import make_plan
from comet.core.routing import balanced


def time_plan(model, par, M, device, ranks, repeats=10):
    routing = balanced(M, model.experts_E, model.topk, seed=0).to(device)
    hw = HardwareProfile.from_name("h800")
    times = []
    for _ in range(repeats + 2):
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        make_plan(routing, model, par, hw, ranks=ranks)
        if device != "cpu":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times[2:])


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="folder for plan_speed.csv")
    a = ap.parse_args(argv)
    rows = []
    for name, ep, M in (("mixtral-8x7b", 8, 16384), ("mixtral-8x7b", 4, 4096), ("qwen2-moe-2.7b", 8, 16384),
                        ("phi-3.5-moe", 8, 16384)):
        model, par = ModelConfig.from_name(name), ParallelConfig(ep=ep)
        for ranks, label in ((None, "all ranks"), ([0], "one rank")):
            ms = time_plan(model, par, M, a.device, ranks)
            rows.append({"device": a.device, "model": name, "ep": ep, "tokens": M, "ranks": label, "median_ms": ms})
            print(f"{a.device:5} {name:15} EP={ep} M={M:6} {label:9} {ms:8.2f} ms")
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        with open(Path(a.out) / f"plan_speed_{a.device}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
