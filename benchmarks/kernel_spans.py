"""Where a fused layer's time goes, kernel by kernel: the start and duration of every kernel one call launches
(both streams), from the CUDA profiler (torch.profiler / CUPTI), for the Gluon forms of both fused layers and
their GEMM alone, in the emulated world of benchmarks.fused_layers (one GPU, rank 0, bf16). Per call (after
a warm-up call; CUDA-graph replays by default, as benchmarks.fused_layers times them), a CSV row per kernel:
start_us (from the call's first kernel start), dur_us, stream; and one Chrome trace per case and layer at the
last n_c (opens in Perfetto: ui.perfetto.dev).

The fused kernels' own tile timeline (kernels/timeline.py) instruments the one-launch tl kernels; this one
needs no instrumentation, so it sees the Gluon forms as they run: layer0's pull kernel, its tail GEMM and the
GEMM beside them, layer1's communication kernel, GEMM and tail, and any copy before them.

    python -m benchmarks.kernel_spans --out results/kernel_spans --tag h200_<date>
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.fused_layers import CASES, HW, _weights
from comet.core.config import ModelConfig, ParallelConfig
from comet.core.planner import make_plan
from comet.core.policy import benchmark_policy
from comet.core.routing import make_routing
from comet.core.weights import shard_weights
from kernels import grouped_gemm as gg
from kernels.fused_layer0 import fused_layer0
from kernels.fused_layer1 import fused_layer1
from kernels.gpu_clock import ClockSampler
from kernels.moe import stage_tokens
from kernels.timing import capture_graph, device_line, graph_replay_times_us
from kernels.workspace import EmulatedWorld

FIELDS = ["model", "tokens_M", "ep", "routing", "timing", "layer", "impl", "nc", "l1_comm_rows", "call", "kernel",
          "stream", "start_us", "dur_us", "end_us"]


def kernel_spans(fn, calls: int = 3, trace_path: Path | None = None, graph: bool = True,
                 graph_calls: int = 1) -> list[list[dict]]:
    """fn's kernels in each of `calls` profiled calls (after one unprofiled call): per call a list of
    {kernel, stream, start_us, dur_us, end_us}, times from the call's first kernel start. graph: each call a
    replay of fn captured in a CUDA graph (as benchmarks.fused_layers times it: no host gaps between the
    launches); else eager calls (the host's launch gaps show). graph_calls: fn captured that many times
    back to back in the graph (as benchmarks.fused_layers' replays run it), each a call of its own here."""
    if graph:
        call, n_per = capture_graph(fn, graph_calls).replay, graph_calls
    else:
        fn()
        torch.cuda.synchronize()
        call, n_per = fn, 1
    out = []
    for i in range(calls):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            call()
            torch.cuda.synchronize()
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            prof.export_chrome_trace(f.name)
            events = json.load(open(f.name))["traceEvents"]
        kernels = sorted((e for e in events if e.get("cat") == "kernel"), key=lambda e: e["ts"])
        if trace_path is not None and i == calls - 1:
            trace_path.write_text(json.dumps({"traceEvents": events}))
        per = len(kernels) // n_per  # the calls in one replay do not overlap (each ends joining its streams)
        for j in range(n_per):
            part = kernels[j * per:(j + 1) * per]
            t0 = part[0]["ts"] if part else 0.0
            out.append([{"kernel": e["name"][:60], "stream": e.get("args", {}).get("stream", e.get("tid")),
                         "start_us": e["ts"] - t0, "dur_us": e["dur"], "end_us": e["ts"] - t0 + e["dur"]}
                        for e in part])
    return out


REPLAY_FIELDS = ["model", "tokens_M", "ep", "routing", "layer", "impl", "nc", "l1_comm_rows", "calls_per_replay",
                 "replay", "per_call_us", "sm_clock_mhz", "power_w", "clock_samples"]
REPLAY_BATCHES = (1, 50)  # calls per graph replay: one (gaps between calls), many back to back (as graph_us runs)


def run_case(writer, name: str, M: int, ep: int, routing_kind: str, nc0s, nc1s, l1_rows, trace_dir: Path, log,
             graph: bool = True, graph_calls: int = 1, replay_writer=None, clocks=None):
    model = ModelConfig.from_name(name)
    par = ParallelConfig(ep=ep)
    routing = make_routing(routing_kind, M, model.experts_E, model.topk, seed=0).to("cuda")
    policy = benchmark_policy(model.activation)
    plan = make_plan(routing, model, par, HW, policy)
    world = EmulatedWorld(model, par, M, dtype=torch.bfloat16, device="cuda")
    shards = [shard_weights(_weights(model, 0), par, r) for r in range(par.world_size)]
    x = torch.randn(M, model.hidden_N, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
    stage_tokens(world, x.bfloat16(), M)
    r0 = 0
    base = {"model": name, "tokens_M": M, "ep": ep, "routing": routing_kind, "timing": "graph" if graph else "eager"}
    stem = f"{name}_{M}_ep{ep}_{routing_kind}"

    def spans(fn, trace=None):
        return kernel_spans(fn, trace_path=trace, graph=graph, graph_calls=graph_calls)

    def replays(layer, impl, nc, rows, fn):
        """--replay-times: each replay's per-call time at REPLAY_BATCHES calls a replay, with the mean SM clock
        and power over the batch's replays (kernels.gpu_clock: the power limit lowers the clock under load)."""
        for per in REPLAY_BATCHES:
            t0 = time.time()
            times = graph_replay_times_us(fn, calls_per_replay=per)
            clock = clocks.window(t0, time.time()) if clocks is not None else {"clock_samples": 0}
            at = {k: ("" if isinstance(v, float) and math.isnan(v) else f"{v:.0f}") for k, v in clock.items()}
            for i, t in enumerate(times):
                replay_writer.writerow({**{k: base[k] for k in ("model", "tokens_M", "ep", "routing")}, "layer": layer,
                                        "impl": impl, "nc": nc, "l1_comm_rows": rows, "calls_per_replay": per,
                                        "replay": i, "per_call_us": f"{t:.2f}", **at})
            log(f"{name:15s} M={M:6d} {layer} {impl:10s} nc={nc!s:>3s} {per:3d} calls a replay: per call "
                f"min {min(times):.1f} median {sorted(times)[len(times) // 2]:.1f} max {max(times):.1f} us")

    def emit(layer, impl, nc, rows, spans_by_call, fn=None):
        if replay_writer is not None and fn is not None:
            replays(layer, impl, nc, rows, fn)
        for call, spans in enumerate(spans_by_call):
            for s in spans:
                writer.writerow({**base, "layer": layer, "impl": impl, "nc": nc, "l1_comm_rows": rows, "call": call,
                                 **{k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in s.items()}})
        last = spans_by_call[-1]
        span = max(s["end_us"] for s in last) if last else 0.0
        log(f"{name:15s} M={M:6d} {layer} {impl:10s} nc={nc!s:>3s} rows={rows!s:>4s} span {span:8.1f} us: " +
            ", ".join(f"{s['kernel'][:24]}@{s['start_us']:.0f}+{s['dur_us']:.0f}" for s in last))

    rp = plan.rank(r0)
    w0, w1 = shards[r0].w0_ENK, shards[r0].w1_EKN
    h_ref = torch.empty(rp.row_token_R.numel(), plan.ffn_local, device="cuda", dtype=torch.bfloat16)
    fn0 = lambda: gg.grouped_gemm_layer0(plan, r0, world.buffers(r0).recv_MN, w0, out_RK=h_ref)  # noqa: E731
    emit("l0", "gemm_alone", "", "", spans(fn0), fn0)
    for i, nc in enumerate(nc0s):
        p = dataclasses.replace(plan, policy=policy.replace(nc_layer0=nc))
        trace = trace_dir / f"{stem}_l0_nc{nc}.json" if i == len(nc0s) - 1 else None
        fn = lambda p=p: fused_layer0(world, p, r0, w0, variant="blocks", impl="gluon")  # noqa: E731
        emit("l0", "gluon", nc, "", spans(fn, trace), fn)
    world.check()
    for r in range(par.world_size):  # every rank's layer0 output: layer1's real inputs
        fused_layer0(world, plan, r, shards[r].w0_ENK, variant="direct")
    h0 = world.buffers(r0).h_RK[: rp.row_token_R.numel()]
    y = torch.empty(rp.row_token_R.numel(), model.hidden_N, device="cuda", dtype=torch.bfloat16)
    fn1 = lambda: gg.grouped_gemm_layer1(plan, r0, h0, w1, out_RN=y)  # noqa: E731
    emit("l1", "gemm_alone", "", "", spans(fn1), fn1)
    for rows in l1_rows:
        p1 = plan if rows == 0 else make_plan(routing, model, par, HW, policy.replace(l1_comm_rows=rows))
        for i, nc in enumerate(nc1s):
            p = dataclasses.replace(p1, policy=p1.policy.replace(nc_layer1=nc))
            trace = trace_dir / f"{stem}_l1_nc{nc}_rows{rows}.json" if i == len(nc1s) - 1 else None
            fn = lambda p=p: fused_layer1(world, p, r0, w1, impl="gluon")  # noqa: E731
            emit("l1", "gluon", nc, rows, spans(fn, trace), fn)
    world.reset()


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v)
    except ValueError:
        raise SystemExit(f"{what} {text!r}: use a comma list of ints, e.g. 4,8,16") from None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.kernel_spans", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/kernel_spans", help="output folder (CSV, log, traces/)")
    ap.add_argument("--tag", default=None, help="file name stem (default h200_<date>)")
    default_cases = ",".join(f"{m}:{n}:{e}" for m, n, e in CASES)
    ap.add_argument("--cases", default=default_cases, help="comma list model:M:ep (default %(default)s)")
    ap.add_argument("--routing", default="balanced", choices=["balanced", "imbalanced"])
    ap.add_argument("--nc0", default="8,16,32", help="layer0 n_c values (default %(default)s)")
    ap.add_argument("--nc1", default="4,8,16", help="layer1 n_c values (default %(default)s)")
    ap.add_argument("--l1-comm-rows", default="0", help="Policy.l1_comm_rows values, sends per layer1 chunk "
                                                        "(0: comm_rows; default %(default)s)")
    ap.add_argument("--eager", action="store_true", help="eager calls instead of CUDA-graph replays")
    ap.add_argument("--replay-times", action="store_true",
                    help=f"also time each of 20 graph replays of every configuration, at {REPLAY_BATCHES} calls a "
                         f"replay (<tag>_replays.csv)")
    ap.add_argument("--graph-calls", type=int, default=1, help="calls captured back to back in one graph, each "
                                                               "reported (default %(default)s)")
    a = ap.parse_args(argv)
    try:
        cases = [(c.split(":")[0], int(c.split(":")[1]), int(c.split(":")[2])) for c in a.cases.split(",")]
    except (IndexError, ValueError):
        raise SystemExit(f"--cases {a.cases!r}: use model:M:ep items, e.g. mixtral-8x7b:4096:4") from None
    nc0s, nc1s, l1_rows = _ints(a.nc0, "--nc0"), _ints(a.nc1, "--nc1"), _ints(a.l1_comm_rows, "--l1-comm-rows")
    out = Path(a.out)
    (out / "traces").mkdir(parents=True, exist_ok=True)
    stem = a.tag or f"h200_{datetime.date.today().isoformat()}"
    dev = device_line()
    lines = [dev]

    def log(s):
        print(s, flush=True)
        lines.append(s)

    print(dev, flush=True)
    path = out / f"{stem}.csv"
    command = f"python -m benchmarks.kernel_spans {' '.join(sys.argv[1:] if argv is None else argv)}"
    replay_file = (out / f"{stem}_replays.csv").open("w", newline="") if a.replay_times else None
    replay_writer = None
    if replay_file is not None:
        replay_file.write(f"# {dev}\n# command: {command}\n")
        replay_writer = csv.DictWriter(replay_file, fieldnames=REPLAY_FIELDS)
        replay_writer.writeheader()
    with path.open("w", newline="") as f:
        f.write(f"# {dev}\n# single-GPU emulated world, rank 0, bf16; command: {command}\n")
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        with ClockSampler() as clocks:
            for name, M, ep in cases:
                try:
                    run_case(writer, name, M, ep, a.routing, nc0s, nc1s, l1_rows, out / "traces", log, not a.eager,
                             max(a.graph_calls, 1), replay_writer, clocks)
                except Exception as e:  # keep the other cases' rows; the log says what failed
                    log(f"FAILED {name} M={M} EP={ep}: {type(e).__name__}: {e}")
                f.flush()
                if replay_file is not None:
                    replay_file.flush()
                torch.cuda.empty_cache()
    if replay_file is not None:
        replay_file.close()
    (out / f"{stem}.log").write_text("\n".join(lines) + "\n")
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
