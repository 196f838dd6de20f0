"""The real kernels' tile timeline beside the simulator's, on one case and one Plan.

    python -m experiments.timeline_compare --out results/timeline_compare          # GPU: real run (+ sim)
    python -m experiments.timeline_compare --sim-only --out results/timeline_compare   # CPU: sim + plot

Two steps, so that the GPU step does not need simpy (the simulator's dependency):
  GPU (no --sim-only): builds the case (default Mixtral-8x7B, EP=4, M=4096, balanced routing, seed 0, Policy
      defaults with nc_layer1 = --nc), runs the fused forward of all EP ranks in an emulated world on one GPU
      (kernels.workspace.EmulatedWorld, bf16) uninstrumented and instrumented (kernels/timeline.py), checks
      the outputs are bitwise equal, times both (median of --reps whole forwards: staging, every rank's two
      kernels and reduce; CUDA events), and writes
          real_events.csv   every rank's tiles and communication items, times as recorded (us from the
                            first record); columns of SimResult.events plus program, block, sm, item, ...
          case.json         the case, device, versions, timings, outputs_equal, overflow, the plan's per-rank
                            table sizes and a hash of its tables (so that the CPU step can check its Plan)
      then, if sim/ imports here (simpy), the CPU step's outputs too.
  CPU (--sim-only): rebuilds the same Plan on the CPU from case.json (the seeded routing is drawn on the CPU
      in both steps; its hash and the plan's are checked), simulates it with the `comet` system, and writes
          sim_events.csv    the simulated events of --rank
          real_trace.json   Chrome trace of the real run (all ranks; https://ui.perfetto.dev)
          summary.csv       per (source, layer, kind): count, mean / total duration, and the span of the
                            layer's fused kernel (its tiles and communication items) on --rank
          sim_vs_real.png   --rank's simulated timeline above its real one, one time axis

What is compared, honestly: on one GPU the emulated world's "peer" buffers are this GPU's memory, so the
real layer0 pulls and layer1 sends are local HBM copies, not NVLink transfers; and the ranks' kernels run
one after another (rank 0's layer0, rank 1's layer0, ..., rank 0's layer1, ...). Therefore
  - the simulator runs the same Plan on a matching hardware assumption (`HardwareProfile.emulated_world`): the
    "link" is local memory (per direction hbm_gbps / 2, a moved byte is read and written in one HBM; one
    block drives hbm_gbps / SMs, as the simulator's reduce does; 1 us latency: a DRAM round trip and a
    flag), with the kernels' static tile order (SimOptions(tile_schedule="static"));
  - the real timeline of a rank is laid end to end (`kernels.timeline.end_to_end`): its layer1 launch is
    moved to start one launch gap after its layer0 ends, dropping the other ranks' kernels in between;
  - the owners' combine reduce (a separate small kernel) is not instrumented: the real timeline ends with
    layer1; the simulated one shows it on the stream row.
So this checks the compute side (tile times, tile order, program placement, waits) and the shape of the
fused schedule with local communication; it says nothing about NVLink, which needs a multi-GPU run.
Rows of the real picture are the simulator's block numbers (compute blocks, then communication blocks);
the SM each record ran on is in the CSV and the trace. Times in microseconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import statistics
import sys
from pathlib import Path

import torch

from comet.core import defaults
from comet.core.case_args import hardware_arg
from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.core.plan import Plan
from comet.core.planner import make_plan
from comet.core.policy import Policy
from comet.core.routing import make_routing

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "results" / "timeline_compare"
REAL_CSV, SIM_CSV, CASE_JSON = "real_events.csv", "sim_events.csv", "case.json"
TRACE_JSON, SUMMARY_CSV, FIGURE = "real_trace.json", "summary.csv", "sim_vs_real.png"
DRAM_LATENCY_US = 1.0  # assumption: a local DRAM round trip plus a flag, instead of NVLink's 2 us


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mixtral-8x7b")
    p.add_argument("--tokens", type=int, default=4096, help="M, tokens of the whole group")
    p.add_argument("--ep", type=int, default=4)
    p.add_argument("--nc", type=int, default=28, help="nc_layer1, layer1's communication programs")
    p.add_argument("--nc0", type=int, default=None, help="nc_layer0 (default: Policy's)")
    p.add_argument("--variant", default="blocks", choices=("blocks", "direct", "copy-engine"),
                   help="layer0's communication (Policy.layer0_comm)")
    p.add_argument("--routing", default="balanced", choices=("balanced", "uniform", "imbalanced"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hw", default=None, type=hardware_arg,
                   help="hardware profile the simulator starts from (default h200; with --sim-only: the GPU "
                        "step's, or this one, e.g. the calibrated h200_x1)")
    p.add_argument("--rank", type=int, default=0, help="the rank drawn and summarised")
    p.add_argument("--reps", type=int, default=5, help="timed forwards with and without instrumentation")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--sim-only", action="store_true",
                   help="CPU step: simulate the recorded case and draw it beside the real timeline, into --out")
    p.add_argument("--real", type=Path, default=None,
                   help="with --sim-only: the folder of the GPU step's case.json and real_events.csv (default: --out "
                        "if it holds them, else the committed recording in results/timeline_compare)")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------ the case
def case_of(a) -> dict:
    return {"model": a.model, "tokens": a.tokens, "ep": a.ep, "tp": 1, "nc_layer1": a.nc, "nc_layer0": a.nc0,
            "variant": a.variant, "routing": a.routing, "seed": a.seed, "hw": a.hw or defaults.GPU_HARDWARE,
            "rank": a.rank}


def build(case: dict, hardware: HardwareProfile, device="cpu") -> tuple[Plan, object, ModelConfig, ParallelConfig]:
    """The case's Plan (all ranks) on `device`, with its routing (drawn on the CPU: the same in both steps)."""
    model = ModelConfig.from_name(case["model"])
    par = ParallelConfig(ep=case["ep"], tp=case["tp"])
    pol = Policy(layer0_comm=case["variant"], nc_layer1=case["nc_layer1"])
    if case["nc_layer0"] is not None:
        pol = pol.replace(nc_layer0=case["nc_layer0"])
    routing = make_routing(case["routing"], case["tokens"], model.experts_E, model.topk, seed=case["seed"])
    plan = make_plan(routing.to(device), model, par, hardware, pol)
    return plan, routing, model, par


def plan_fingerprint(plan: Plan) -> dict:
    """Per-rank table sizes and one hash of the valid part of the tables the kernels walk (host sync)."""
    h = hashlib.sha1()
    sizes = []
    tables = {"num_l0_tiles": ("l0_tile_expert_T", "l0_tile_row_start_T", "l0_tile_row_end_T", "l0_tile_col_T"),
              "num_l0_chunks": ("l0_chunk_src_C", "l0_chunk_start_C", "l0_chunk_end_C"),
              "num_l1_tiles": ("l1_tile_expert_T", "l1_tile_row_start_T", "l1_tile_row_end_T", "l1_tile_col_T"),
              "num_l1_chunks": ("l1_chunk_start_C", "l1_chunk_end_C")}
    for rp in plan.ranks:
        n = {k: int(getattr(rp, k)) for k in tables}
        sizes.append({"rank": rp.rank, **n})
        for k, names in tables.items():
            for name in names:
                h.update(getattr(rp, name)[:n[k]].cpu().numpy().tobytes())
    return {"sizes": sizes, "tables_sha1": h.hexdigest()}


def routing_sha1(routing) -> str:
    return hashlib.sha1(routing.topk_ids_MJ.cpu().numpy().tobytes()
                        + routing.topk_weights_MJ.cpu().numpy().tobytes()).hexdigest()


# ------------------------------------------------------------------------------------------ GPU step
def gpu_step(a, out: Path) -> dict:
    from comet.core.weights import ExpertWeights, shard_weights
    from kernels.moe import moe_forward_fused
    from kernels.timeline import TimelineRecorder
    from kernels.workspace import EmulatedWorld

    case = case_of(a)
    dev = torch.device("cuda")
    hw = HardwareProfile.from_name(a.hw or defaults.GPU_HARDWARE)
    plan, routing, model, par = build(case, hw, dev)
    world = EmulatedWorld(model, par, a.tokens, dtype=torch.bfloat16, device=dev)
    g = torch.Generator(device=dev).manual_seed(a.seed)
    E, N, K = model.experts_E, model.hidden_N, model.ffn_K
    weights = ExpertWeights((torch.randn(E, N, model.layer0_cols, device=dev, generator=g) / N ** 0.5).bfloat16(),
                            (torch.randn(E, K, N, device=dev, generator=g) / K ** 0.5).bfloat16())
    shards = [shard_weights(weights, par, r) for r in range(par.world_size)]  # once, not in every forward
    del weights
    x = torch.randn(a.tokens, N, device=dev, generator=g).bfloat16()
    routing = routing.to(dev)

    def forward(timeline=None):
        return moe_forward_fused(world, x, routing, shards, model, par, plan.policy, plan=plan, timeline=timeline)

    ref = forward().clone()  # compiles the plain build
    world.check()
    forward(TimelineRecorder())  # compiles the instrumented build
    world.check()
    timings = {}
    for name, mk in (("plain", lambda: None), ("instrumented", TimelineRecorder)):
        times = []
        for _ in range(a.reps):
            rec = mk()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            forward(rec)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) * 1e3)
        timings[f"{name}_forward_us"] = round(statistics.median(times), 1)
    rec = TimelineRecorder()
    got = forward(rec)
    world.check()
    events = rec.events()
    out.mkdir(parents=True, exist_ok=True)
    events.to_csv(out / REAL_CSV, index=False, float_format="%.3f")
    props = torch.cuda.get_device_properties(dev)
    import triton

    meta = {
        "case": case, "date": datetime.date.today().isoformat(),
        "device": f"{props.name}, {props.multi_processor_count} SMs", "sms": props.multi_processor_count,
        "torch": torch.__version__, "triton": triton.__version__,
        "emulated_world": f"{par.world_size} ranks on one GPU, bf16", "policy": dataclasses.asdict(plan.policy),
        "outputs_equal": bool(torch.equal(got, ref)), "overflow": rec.overflow(), "events": len(events),
        **timings, "routing_sha1": routing_sha1(routing), "plan": plan_fingerprint(plan),
        "command": "python -m experiments.timeline_compare " + " ".join(sys.argv[1:]),
    }
    (out / CASE_JSON).write_text(json.dumps(meta, indent=2))
    print(f"real run: {len(events)} events, outputs equal: {meta['outputs_equal']}, forward "
          f"{timings['plain_forward_us']} us plain / {timings['instrumented_forward_us']} us instrumented "
          f"({meta['device']}) -> {out / REAL_CSV}")
    return meta


# ------------------------------------------------------------------------------------------ CPU step
def sim_step(out: Path, hw_name: str | None = None, real_dir: Path | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from kernels.timeline import end_to_end, write_chrome_trace
    from sim.options import SimOptions
    from sim.plots import sim_vs_real
    from sim.run import simulate

    real_dir = real_dir or out
    out.mkdir(parents=True, exist_ok=True)
    meta = json.loads((real_dir / CASE_JSON).read_text())
    case = meta["case"]
    hw = HardwareProfile.from_name(hw_name or case["hw"]).emulated_world(latency_us=DRAM_LATENCY_US, sms=meta["sms"])
    plan, routing, _, _ = build(case, hw)
    if routing_sha1(routing) != meta["routing_sha1"]:
        print("WARNING: the routing drawn here differs from the GPU step's: the comparison is not of one Plan")
    fp = plan_fingerprint(plan)
    if fp != meta["plan"]:
        print(f"WARNING: the Plan built here differs from the GPU step's ({fp['sizes']} vs {meta['plan']['sizes']})")
    res = simulate(plan, "comet", SimOptions(tile_schedule="static"))
    rank = case["rank"]
    real = pd.read_csv(real_dir / REAL_CSV)
    sim_ev = res.events[res.events["rank"] == rank]
    sim_ev.to_csv(out / SIM_CSV, index=False, float_format="%.3f")
    write_chrome_trace(real, out / TRACE_JSON, label=f"real ({meta['device']})",
                       other={**case, "device": meta["device"], "date": meta["date"]})
    aligned = end_to_end(real, gap_us=hw.launch_overhead_us)
    summary = summarise(sim_ev, aligned[aligned["rank"] == rank])
    summary.to_csv(out / SUMMARY_CSV, index=False, float_format="%.3f")
    drawn = aligned.assign(track=[f"SM {b:03d}" for b in aligned["block"].tolist()])
    title = (f"real ({meta['device']}), rank {rank}, launches end to end: "
             f"{float(drawn.loc[drawn['rank'] == rank, 'end_us'].max()):.0f} us (rows: blocks as simulated)")
    fig = sim_vs_real(res, drawn, rank, sm_group=1, real_title=title)
    fig.axes[0].set_title(f"simulated ({hw.name}), rank {rank}: {res.latency_us:.0f} us, static tile order",
                          fontsize=9)
    fig.savefig(out / FIGURE, dpi=130)
    print(summary.to_string(index=False))
    print(f"wrote {out / SIM_CSV}, {out / TRACE_JSON}, {out / SUMMARY_CSV}, {out / FIGURE}")


KERNEL_KINDS = ("gemm0", "gemm0_direct", "gemm1", "pull", "reduce_send", "reduce_local")  # what both record


def summarise(sim_ev, real_ev):
    """Per (source, layer, kind): count, mean and total duration; and the span of the layer's fused kernel
    (first start to last end of its tiles and communication items, KERNEL_KINDS) on one rank."""
    import pandas as pd

    rows = []
    for source, ev in (("sim", sim_ev), ("real", real_ev)):
        ev = ev.assign(kind=ev["kind"].astype(str))
        for (layer, kind), g in ev.groupby(["layer", "kind"]):
            span = ev[(ev["layer"] == layer) & ev["kind"].isin(KERNEL_KINDS)]
            rows.append({"source": source, "layer": int(layer), "kind": kind, "count": len(g),
                         "mean_us": float(g["dur_us"].mean()), "total_us": float(g["dur_us"].sum()),
                         "kernel_span_us": float(span["end_us"].max() - span["start_us"].min())})
    return pd.DataFrame(rows).sort_values(["layer", "kind", "source"], kind="stable")


def sim_available() -> bool:
    try:
        import simpy  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None) -> None:
    a = parse_args(argv)
    out = a.out.resolve()
    if a.sim_only:
        real = (a.real or (out if (out / CASE_JSON).exists() else DEFAULT_OUT)).resolve()
        if not ((real / CASE_JSON).exists() and (real / REAL_CSV).exists()):
            sys.exit(f"error: --sim-only reads {real / CASE_JSON} and {real / REAL_CSV}: run the GPU step first "
                     f"(python -m experiments.timeline_compare --out DIR on a CUDA machine) and pass --real DIR")
        sim_step(out, a.hw, real)
        return
    if not torch.cuda.is_available():
        sys.exit("experiments.timeline_compare records the real kernels' timeline and needs a CUDA GPU (the "
                 "instrumented kernels read %globaltimer with inline PTX). On a CPU, draw a recorded run with "
                 f"--sim-only --out DIR (DIR holding the GPU step's {CASE_JSON} and {REAL_CSV}).")
    gpu_step(a, out)
    if sim_available():
        sim_step(out)
    else:
        print(f"simpy is not installed here: run `python -m experiments.timeline_compare --sim-only --out {a.out}` "
              f"on a CPU machine for the simulation, the Chrome trace and the figure")


if __name__ == "__main__":
    main()
