"""Which GPU kernels the grouped-GEMM baselines (and ours) launch, and how long each runs: torch.profiler over
benchmarks.grouped_gemm's layer0 / layer1 cases. The kernel names say what cuBLAS chose (tile shape,
cluster shape, split-K / stream-K), which wave arithmetic on our own tile grid cannot tell.

    python -m benchmarks.cublas_kernels --out results/grouped_gemm --tag h200_cublas_kernels
"""

from __future__ import annotations

import argparse
import csv
import datetime
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.core.planner import make_plan
from comet.core.policy import Policy
from comet.core.routing import make_routing
from kernels import grouped_gemm as gg
from kernels.reference_gemm import expert_rows
from kernels.timing import device_line

DEVICE, DTYPE = "cuda", torch.bfloat16  # a CPU test points these at the CPU (profiled as CPU ops)
FIELDS = ["model", "tokens_M", "routing", "layer", "impl", "kernel", "calls_per_run", "us_per_run"]


def _kernel_times(fn, runs: int) -> list[tuple[str, float, float]]:
    """(kernel name, launches per run, device us per run) of fn's GPU kernels, largest first (on the CPU:
    its operators' own times)."""
    cuda = DEVICE == "cuda"
    fn()
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            fn()
        if cuda:
            torch.cuda.synchronize()
    out = []
    for evt in prof.key_averages():
        us = (getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0.0)) if cuda \
            else evt.self_cpu_time_total
        if us > 0 and evt.count:
            out.append((evt.key, evt.count / runs, us / runs))
    return sorted(out, key=lambda r: -r[2])


def _cases(model: ModelConfig, M: int, routing_kind: str, layer: str):
    """The baselines and our default path for one case, as benchmarks.grouped_gemm builds them."""
    plan = make_plan(make_routing(routing_kind, M, model.experts_E, model.topk, seed=0, std=0.032).to(DEVICE), model,
                     ParallelConfig(ep=4, tp=1), HardwareProfile.from_name("h200"),
                     Policy(block_m=128, block_n0=256, block_n1=256, group_m=8), ranks=[0])
    rp = plan.rank(0)
    R = int(rp.num_rows)
    E, N, K = plan.experts_per_rank, model.hidden_N, plan.ffn_local
    d_in, d_out = (N, K) if layer == "l0" else (K, N)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(M, N, device=DEVICE, dtype=DTYPE, generator=g)
    w = (torch.randn(E, d_in, d_out, device=DEVICE, generator=g) / d_in ** 0.5).to(DTYPE)
    h = torch.randn(rp.row_token_R.numel(), K, device=DEVICE, dtype=DTYPE, generator=g)
    rows = expert_rows(plan, 0)
    a = x[rp.row_token_R[:R]].contiguous() if layer == "l0" else h[:R]
    out = torch.empty(R, d_out, device=DEVICE, dtype=DTYPE)
    offs = torch.tensor([e for _, e in rows], device=DEVICE, dtype=torch.int32)
    w_col = w.transpose(1, 2).contiguous().transpose(1, 2)
    zero_bias = torch.zeros(d_out, device=DEVICE, dtype=DTYPE)

    def loop():
        for e, (s, end) in enumerate(rows):
            if end > s:
                torch.mm(a[s:end], w[e], out=out[s:end])

    def gelu_loop():
        for e, (s, end) in enumerate(rows):
            if end > s:
                torch._addmm_activation(zero_bias, a[s:end], w[e], use_gelu=True)

    cases = {"cublas_loop": loop, "grouped_mm_colmajor": lambda: torch._grouped_mm(a, w_col, offs=offs),
             "grouped_mm_rowmajor": lambda: torch._grouped_mm(a, w, offs=offs)}
    if layer == "l0":
        cases["cublas_gelu_loop"] = gelu_loop
        cases["ours_G"] = lambda: gg.grouped_gemm_layer0(plan, 0, x, w, activation="gelu")
    else:
        cases["ours_G"] = lambda: gg.grouped_gemm_layer1(plan, 0, h, w)
    return cases


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="mixtral-8x7b,phi-3.5-moe")
    ap.add_argument("--tokens", default="4096,16384")
    ap.add_argument("--layers", default="l0")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default="results/grouped_gemm")
    ap.add_argument("--tag", default="cublas_kernels")
    a = ap.parse_args(argv)
    path = Path(a.out) / f"{a.tag}_{datetime.date.today()}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        f.write(f"# {device_line()}\n")
        wr = csv.DictWriter(f, fieldnames=FIELDS)
        wr.writeheader()
        for name in a.models.split(","):
            model = ModelConfig.from_name(name)
            for M in (int(t) for t in a.tokens.split(",")):
                for routing_kind in ("balanced", "imbalanced"):
                    for layer in a.layers.split(","):
                        for impl, fn in _cases(model, M, routing_kind, layer).items():
                            try:
                                kernels = _kernel_times(fn, a.runs)
                            except Exception as exc:  # noqa: BLE001 - report and go on
                                print(f"{name} {M} {routing_kind} {layer} {impl}: {type(exc).__name__}: {exc}")
                                continue
                            for kname, calls, us in kernels:
                                wr.writerow({"model": name, "tokens_M": M, "routing": routing_kind, "layer": layer,
                                             "impl": impl, "kernel": kname[:200], "calls_per_run": f"{calls:g}",
                                             "us_per_run": f"{us:.1f}"})
                                print(f"{name:14s} {M:6d} {routing_kind:10s} {layer} {impl:20s} {us:8.1f} us "
                                      f"x{calls:g} {kname[:110]}", flush=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
