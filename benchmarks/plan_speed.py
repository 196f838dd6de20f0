"""Time make_plan (median of repeats) on the CPU or a GPU, per backend; CSV to --out.

    python -m benchmarks.plan_speed --device cpu --out results/plan_speed
    python -m benchmarks.plan_speed --device cuda --backend torch,triton --out results/plan_speed

Backends: make_plan's ("torch", "triton", "auto") and "graph": comet.layer.plan_graphs.PlanGraphs (make_plan
captured in a CUDA graph once, then replayed on the new routing, as CometMoE's eager call does; CUDA only).

Columns: median_ms (the whole call, synchronised before and after), us_per_rank (median_ms / ranks planned,
in microseconds), host_us_per_rank (the call's host time alone: synchronised before, not after, so the GPU may
still be running), kernel_us_per_rank (the CUDA kernels' own durations summed, from the profiler) and
launches_per_rank (Triton kernel launches of the triton backend on the CPU; CUDA kernels counted by the
profiler on a GPU). The CSV's first line is the device line (kernels.timing.device_line on a GPU).
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
from comet.core.policy import Policy
from comet.core.routing import balanced

CASES = (("mixtral-8x7b", 8, 16384), ("mixtral-8x7b", 4, 4096), ("qwen2-moe-2.7b", 8, 16384),
         ("phi-3.5-moe", 8, 16384), ("deepseek-v3", 8, 16384))


def _sync(device):
    if device != "cpu":
        torch.cuda.synchronize()


def planner(model, par, hw, ranks, backend, device):
    """The call to time: make_plan, or a PlanGraphs replay ("graph")."""
    if backend != "graph":
        return lambda routing: make_plan(routing, model, par, hw, ranks=ranks, backend=backend)
    if device == "cpu":
        raise ValueError("the graph backend replays a CUDA graph: use --device cuda")
    from comet.layer.plan_graphs import PlanGraphs  # deferred: a layer-floor module, for this backend only

    graphs, pol = PlanGraphs(model, par, list(range(par.world_size)) if ranks is None else ranks), Policy()
    return lambda routing: graphs.plan(routing, hw, pol)


def time_plan(model, par, M, device, ranks, backend, repeats=10):
    """(median ms synchronised, median host-only us, launches, kernel us) of one call."""
    routing = balanced(M, model.experts_E, model.topk, seed=0).to(device)
    hw = HardwareProfile.from_name("h800")
    call = planner(model, par, hw, ranks, backend, device)
    times, host = [], []
    for _ in range(repeats + 2):
        _sync(device)
        t = time.perf_counter()
        call(routing)
        host.append((time.perf_counter() - t) * 1e6)
        _sync(device)
        times.append((time.perf_counter() - t) * 1e3)
    return (statistics.median(times[2:]), statistics.median(host[2:]),
            *count_launches(call, routing, backend, device))


def count_launches(call, routing, backend, device) -> tuple[int, float]:
    """(kernel launches, their summed duration in us) of one call: the CUDA kernels the profiler sees on a GPU,
    else the triton launches (duration -1: not measured)."""
    if device != "cpu":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            call(routing)
            _sync(device)
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        return len(kernels), sum(e.time_range.elapsed_us() for e in kernels)
    if backend != "triton":
        return -1, -1.0  # torch ops on the CPU: no launches to count
    n, real = [0], planner_triton._launch

    def counted(*a, **k):
        n[0] += 1
        real(*a, **k)

    planner_triton._launch = counted
    try:
        call(routing)
    finally:
        planner_triton._launch = real
    return n[0], -1.0


def device_line(device: str) -> str:
    if device == "cpu":
        return f"CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}"
    from kernels.timing import device_line as gpu_line  # deferred: kernels loads Triton's GPU modules

    return gpu_line()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="auto", help="comma-separated: auto, torch, triton, graph (CUDA only)")
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
                    ms, host_us, launches, kernel_us = time_plan(model, par, M, a.device, ranks, backend,
                                                                 a.repeats)
                except Exception as e:  # noqa: BLE001 - a backend that fails must not lose the others' rows
                    print(f"{a.device:5} {backend:6} {name:15} EP={ep} M={M:6} {label:9} failed: {type(e).__name__}: "
                          f"{str(e).splitlines()[-1][:160]}")
                    break
                rows.append({"device": a.device, "backend": backend, "model": name, "ep": ep, "tokens": M,
                             "ranks": label, "median_ms": round(ms, 4), "us_per_rank": round(1e3 * ms / n, 1),
                             "host_us_per_rank": round(host_us / n, 1),
                             "kernel_us_per_rank": kernel_us if kernel_us < 0 else round(kernel_us / n, 1),
                             "launches_per_rank": launches if launches < 0 else round(launches / n, 2)})
                split = (f"(host {host_us / n:7.1f}, kernels {kernel_us / n:7.1f})" if kernel_us >= 0
                         else "(no kernels)")  # torch ops on the CPU: nothing to split or count
                launched = f"{rows[-1]['launches_per_rank']:>7} launches/rank" if launches >= 0 else ""
                print(f"{a.device:5} {backend:6} {name:15} EP={ep} M={M:6} {label:9} {ms:8.3f} ms "
                      f"{1e3 * ms / n:9.1f} us/rank {split} {launched}".rstrip())
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
