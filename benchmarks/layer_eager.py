"""CometMoE as users call it: eager forward against its CUDA-graph replay, and against the sequential baseline
eager, in an emulated world on one GPU (bf16). Also the kernel launches per forward.

    python -m benchmarks.layer_eager --out results/layer_eager            # one GPU, a few minutes
    python -m benchmarks.layer_eager --cases mixtral:4:4096 --backend torch
    python -m benchmarks.layer_eager --cases qwen3-30b-a3b:4:4096 deepseek-v3:8:4096

Per case (model, EP, M): eager_us (median of CUDA events around each forward, Python and the Plan's build
included), graph_us (the same forward captured once and replayed), sequential_eager_us (system="sequential"
eagerly: its one host sync per call included), launches (CUDA kernels one eager forward runs, counted with
torch.profiler), eager_over_graph and eager_over_sequential. The planner backend is make_plan's (--backend);
plan_graphs says whether the eager call replays a CUDA graph of the planner (CometMoE's default) or runs
make_plan (--plan-graphs on off).
CSV: results/layer_eager/<gpu>_<date>.csv with the device line and the command as comment lines.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import statistics
import sys
from pathlib import Path

import torch

from comet.core.config import MODELS as REGISTERED
from comet.core.config import ModelConfig, ParallelConfig
from comet.core.policy import benchmark_policy
from comet.layer.comet_moe import CometMoE
from kernels.timing import device_line

# the shape the layer was never tuned on: E=128, topk=8, N=2048, K=768, swiglu
E128 = ModelConfig("e128-top8", hidden_N=2048, ffn_K=768, experts_E=128, topk=8, layers=1, activation="swiglu")
CASES = ("mixtral:4:4096", "mixtral:4:16384", "e128:4:4096", "e128:8:4096")
MODELS = {"mixtral": lambda: ModelConfig.from_name("mixtral-8x7b"), "e128": lambda: E128}


def _model(name: str) -> ModelConfig:
    """A short name of MODELS, or any registered model (comet.core.config.MODELS, e.g. qwen3-30b-a3b)."""
    return MODELS[name]() if name in MODELS else ModelConfig.from_name(name)


def _events_us(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return statistics.median(times)


def _graph_us(fn, reps: int) -> float:
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return _events_us(g.replay, reps)


def _launches(fn) -> int:
    from torch.profiler import ProfilerActivity, profile  # deferred: the profiler loads CUPTI

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def run_case(spec: str, backend: str, plan_graphs: bool, reps: int) -> dict:
    name, ep, M = spec.split(":")
    model, ep, M = _model(name), int(ep), int(M)
    par = ParallelConfig(ep=ep)
    policy = benchmark_policy(model.activation)
    layer = CometMoE(model, par, capacity_tokens=M, dtype=torch.bfloat16, device="cuda", policy=policy,
                     plan_backend=backend, plan_graphs=plan_graphs)
    x = torch.randn(M, model.hidden_N, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        fwd = lambda: layer(x)
        for _ in range(3):
            fwd()
        torch.cuda.synchronize()
        eager = _events_us(fwd, reps)
        launches = _launches(fwd)
        graph = _graph_us(fwd, reps)
        layer.system = "sequential"
        for _ in range(3):  # warm-up as for comet: its first calls compile and allocate
            fwd()
        sequential = _events_us(fwd, reps)
    return {"case": spec, "model": model.name, "ep": ep, "tokens": M, "backend": backend, "plan_graphs": plan_graphs,
            "eager_us": round(eager, 1), "graph_us": round(graph, 1), "sequential_eager_us": round(sequential, 1),
            "launches": launches, "eager_over_graph": round(eager / graph, 3),
            "eager_over_sequential": round(eager / sequential, 3)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.layer_eager", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES),
                    help=f"model:EP:M, model in {', '.join(MODELS)} or a registered one ({', '.join(REGISTERED)})")
    ap.add_argument("--backend", nargs="+", default=["triton"], help="make_plan backends to compare")
    ap.add_argument("--plan-graphs", nargs="+", choices=["on", "off"], default=["on", "off"],
                    help="CometMoE(plan_graphs=...) variants to compare")
    ap.add_argument("--reps", type=int, default=20, help="timed calls per measurement (median)")
    ap.add_argument("--out", type=Path, help="folder of the CSV (default: print only)")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("error: benchmarks.layer_eager times CometMoE on a CUDA GPU; torch sees none here")
    rows = []
    for spec in a.cases:
        for backend, graphs in itertools.product(a.backend, a.plan_graphs):
            try:
                row = run_case(spec, backend, graphs == "on", a.reps)
            except Exception as e:  # noqa: BLE001 - one failing case must not lose the others
                row = {"case": spec, "backend": backend, "plan_graphs": graphs == "on",
                       "error": f"{type(e).__name__}: {str(e)[:200]}"}
            rows.append(row)
            print(row, flush=True)
            torch.cuda.empty_cache()
    if a.out:
        import pandas as pd  # deferred: only for writing the CSV

        a.out.mkdir(parents=True, exist_ok=True)
        gpu = torch.cuda.get_device_name().split()[-1].lower()
        path = a.out / f"{gpu}_{datetime.date.today().isoformat()}.csv"
        with open(path, "w") as f:
            f.write(f"# {device_line(1)}\n# command: python -m benchmarks.layer_eager {' '.join(sys.argv[1:])}\n")
            pd.DataFrame(rows).to_csv(f, index=False)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
