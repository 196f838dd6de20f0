"""Time make_plan (median of repeats) on the CPU or a GPU, per backend; CSV to --out.

    python -m benchmarks.plan_speed --device cpu --out results/plan_speed
    python -m benchmarks.plan_speed --device cuda --backend torch,triton --out results/plan_speed

Columns: median_ms (the whole call), us_per_rank (median_ms / ranks planned, in microseconds) and
launches_per_rank (Triton kernel launches of the triton backend; CUDA kernels counted by the profiler on a
GPU, for either backend). The CSV's first line is the device line (kernels.timing.device_line on a GPU).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import comet.core.planner_triton as planner_triton
from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.core.planner import make_plan
from comet.core.routing import balanced

CASES = (("mixtral-8x7b", 8, 16384), ("mixtral-8x7b", 4, 4096), ("qwen2-moe-2.7b", 8, 16384),
         ("phi-3.5-moe", 8, 16384))


def _sync(device):
    if device != "cpu":
        torch.cuda.synchronize()


def time_plan(model, par, M, device, ranks, backend, repeats=10):
    routing = balanced(M, model.experts_E, model.topk, seed=0).to(device)
    hw = HardwareProfile.from_name("h800")
    times = []
    for _ in range(repeats + 2):
        _sync(device)
        t = time.perf_counter()
        make_plan(routing, model, par, hw, ranks=ranks, backend=backend)
        _sync(device)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times[2:]), count_launches(routing, model, par, hw, ranks, backend, device)


def count_launches(routing, model, par, hw, ranks, backend, device) -> int:
    """Kernel launches of one call: the CUDA kernels the profiler sees on a GPU, else the triton launches."""
    if device != "cpu":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            make_plan(routing, model, par, hw, ranks=ranks, backend=backend)
            _sync(device)
        return sum(e.device_type == torch.autograd.DeviceType.CUDA for e in prof.events())
    if backend != "triton":
        return -1  # torch ops on the CPU: no launches to count
    n, real = [0], planner_triton._launch

    def counted(*a, **k):
        n[0] += 1
        real(*a, **k)

    planner_triton._launch = counted
    try:
        make_plan(routing, model, par, hw, ranks=ranks, backend=backend)
    finally:
        planner_triton._launch = real
    return n[0]


def device_line(device: str) -> str:
    if device == "cpu":
        return f"CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}"
    from kernels.timing import device_line as gpu_line  # deferred: kernels loads Triton's GPU modules

    return gpu_line()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="auto", help="comma-separated: auto, torch, triton")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=None, help="folder for <hardware>_<date>.csv")
    a = ap.parse_args(argv)
    rows = []
    line = device_line(a.device)
    print(line)
    for backend in a.backend.split(","):
        for name, ep, M in CASES:
            model, par = ModelConfig.from_name(name), ParallelConfig(ep=ep)
            for ranks, label in ((None, "all ranks"), ([0], "one rank")):
                n = par.world_size if ranks is None else len(ranks)
                try:
                    ms, launches = time_plan(model, par, M, a.device, ranks, backend, a.repeats)
                except Exception as e:  # noqa: BLE001 - a backend that fails must not lose the others' rows
                    print(f"{a.device:5} {backend:6} {name:15} EP={ep} M={M:6} {label:9} failed: {type(e).__name__}: "
                          f"{str(e).splitlines()[-1][:160]}")
                    break
                rows.append({"device": a.device, "backend": backend, "model": name, "ep": ep, "tokens": M,
                             "ranks": label, "median_ms": round(ms, 4), "us_per_rank": round(1e3 * ms / n, 1),
                             "launches_per_rank": launches if launches < 0 else round(launches / n, 2)})
                print(f"{a.device:5} {backend:6} {name:15} EP={ep} M={M:6} {label:9} {ms:8.3f} ms "
                      f"{1e3 * ms / n:9.1f} us/rank {rows[-1]['launches_per_rank']:>7} launches/rank")
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        hw = "cpu" if a.device == "cpu" else torch.cuda.get_device_name(0).split()[-1].lower()
        path = Path(a.out) / f"{hw}_{datetime.date.today().isoformat()}.csv"
        with open(path, "w", newline="") as f:
            f.write(f"# {line}\n# command: python -m benchmarks.plan_speed {' '.join(sys.argv[1:])}\n")
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
