"""How fast the simulator runs: one MoE layer, all ranks, tile granularity, pinned to one CPU core.

    python -m benchmarks.sim_speed                      # Mixtral, EP=8, M=16384, h800: the target case
    python -m benchmarks.sim_speed --tokens 4096 --repeat 5 --csv /tmp/sim_speed.csv
    python -m benchmarks.sim_speed --case ep8-tp4 --systems comet --repeat 1 --no-warmup   # 32 GPUs, 4 nodes
    python -m benchmarks.sim_speed --case all --systems comet --repeat 1 --no-warmup --csv results/sim_speed/x.csv

Cases (--case; each sets --model/--ep/--tp): ep8 (the default), ep8-tp4 (32 GPUs), ep8-tp8 (64 GPUs, 8 nodes),
dsv3-ep64 (DeepSeek-V3, 64 GPUs), dsv3-ep256 and dsv3-ep64-tp4 (256 GPUs); "all" runs them in that order.

Times only `simulate(...)` (the plan is built once, outside the timing), after one warm-up run, and
reports the median of --repeat runs: wall seconds, GEMM tiles simulated, tile-events per second, and
recorded events per second (tiles plus communication items, launches, kernels). Targets for the comet
system (one core): EP=8 <= 1 s; 64 GPUs <= 10 s; 256 GPUs <= 60 s (CASES).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import sys
import time

import numpy
import simpy
import torch

from comet.core.case_args import hardware_arg
from sim.options import LINK_MODELS, SYSTEMS, SimOptions
from sim.run import make_case, simulate

# name: (model, EP, TP, target wall seconds of the comet system)
CASES = {
    "ep8": ("mixtral-8x7b", 8, 1, 1.0),
    "ep8-tp4": ("mixtral-8x7b", 8, 4, None),
    "ep8-tp8": ("mixtral-8x7b", 8, 8, 10.0),
    "dsv3-ep64": ("deepseek-v3", 64, 1, 10.0),
    "dsv3-ep256": ("deepseek-v3", 256, 1, 60.0),
    "dsv3-ep64-tp4": ("deepseek-v3", 64, 4, 60.0),
}


def pin_one_core() -> str:
    """Pin this process to one CPU core (where the OS allows it); returns what was done."""
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"core {core}"
    return "not pinned"


def machine(pinned: str) -> str:
    """CPU model, cores, Python, numpy and simpy versions: the first (comment) line of the CSV."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores, pinned to {pinned}, python {platform.python_version()}, "
            f"numpy {numpy.__version__}, simpy {simpy.__version__}")


def bench(plan, system: str, options: SimOptions, repeat: int, warmup: bool = True) -> dict:
    if warmup:
        simulate(plan, system=system, options=options)
    walls, res = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = simulate(plan, system=system, options=options)
        walls.append(time.perf_counter() - t0)
    wall = statistics.median(walls)
    n_rec = len(res._records)
    return {"system": system, "wall_s": wall, "min_wall_s": min(walls), "tiles": res.tile_events,
            "tile_events_per_s": res.tile_events / wall, "events": n_rec, "events_per_s": n_rec / wall,
            "transfers": len(res.flows), "latency_us": res.latency_us}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sim_speed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mixtral-8x7b")
    ap.add_argument("--ep", type=int, default=8)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--case", help=f"a named case ({', '.join(CASES)}), several with commas, or 'all'; overrides "
                                   f"--model/--ep/--tp")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up run (for large cases)")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--hw", default="h800", type=hardware_arg)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per system (median reported)")
    ap.add_argument("--no-record", action="store_true", help="skip the event list (what sweeps can do)")
    ap.add_argument("--link-model", default="auto", choices=LINK_MODELS,
                    help="SimOptions.link_model (auto: max-min on one node, independent ports across nodes)")
    ap.add_argument("--csv", help="also write the rows to this CSV file")
    a = ap.parse_args(argv)
    pinned = pin_one_core()
    if a.case is None:
        cases = [(f"ep{a.ep}" + (f"-tp{a.tp}" if a.tp > 1 else ""), a.model, a.ep, a.tp)]
    else:
        names = list(CASES) if a.case == "all" else [n.strip() for n in a.case.split(",")]
        bad = [n for n in names if n not in CASES]
        if bad:
            ap.error(f"unknown case {bad[0]!r}; choose from {', '.join(CASES)}, a comma-separated list, or 'all'")
        cases = [(n, *CASES[n][:3]) for n in names]
    options = SimOptions(record=not a.no_record, link_model=a.link_model)
    rows = []
    for case, model, ep, tp in cases:
        t0 = time.perf_counter()
        plan = make_case(model, ep=ep, tp=tp, tokens=a.tokens, hw=a.hw)
        plan_s = time.perf_counter() - t0
        print(f"[{case}] {model} EP={ep} TP={tp} ({ep * tp} GPUs) M={a.tokens} hw={a.hw}  record={options.record}  "
              f"{pinned}  python {platform.python_version()}  plan built in {plan_s:.2f} s (not timed below)")
        print(f"{'system':<11} {'wall s':>7} {'tiles':>7} {'tile-ev/s':>10} {'events':>7} {'events/s':>9} "
              f"{'transfers':>9} {'latency us':>10}")
        for s in [x.strip() for x in a.systems.split(",") if x.strip()]:
            row = bench(plan, s, options, a.repeat, warmup=not a.no_warmup)
            rows.append({"case": case, "model": model, "ep": ep, "tp": tp, "plan_s": plan_s,
                         "link_model": options.link_model_for(plan.hardware.nodes(plan.world_size)), **row})
            print(f"{s:<11} {row['wall_s']:>7.2f} {row['tiles']:>7} {row['tile_events_per_s']:>10.0f} "
                  f"{row['events']:>7} {row['events_per_s']:>9.0f} {row['transfers']:>9} "
                  f"{row['latency_us']:>10.1f}", flush=True)
            target = CASES.get(case, (None,) * 4)[3] if a.tokens == 16384 and a.hw == "h800" else None
            if s == "comet" and target is not None:
                verdict = "meets" if row["wall_s"] <= target else "MISSES"
                print(f"comet {verdict} the <= {target:g} s target ({row['wall_s']:.2f} s)")
    if a.csv:
        date = datetime.date.today().isoformat()
        with open(a.csv, "w", newline="") as f:
            f.write(f"# {machine(pinned)}; command: python -m benchmarks.sim_speed {' '.join(argv or sys.argv[1:])}\n")
            w = csv.DictWriter(f, fieldnames=["date", "case", "model", "ep", "tp", "tokens", "hw", "record",
                                              "plan_s", *[k for k in rows[0] if k not in
                                                          ("case", "model", "ep", "tp", "plan_s")]])
            w.writeheader()
            for row in rows:
                w.writerow({"date": date, "tokens": a.tokens, "hw": a.hw, "record": options.record, **row})

if __name__ == "__main__":
    main()
