"""How fast the simulator runs: one MoE layer, all ranks, tile granularity, pinned to one CPU core.

    python -m benchmarks.sim_speed                      # Mixtral, EP=8, M=16384, h800: the target case
    python -m benchmarks.sim_speed --tokens 4096 --repeat 5 --csv /tmp/sim_speed.csv

Times only `simulate(...)` (the plan is built once, outside the timing), after one warm-up run, and
reports the median of --repeat runs: wall seconds, GEMM tiles simulated, tile-events per second, and
recorded events per second (tiles plus communication items, launches, kernels). The target is < 2 s for
the comet system on the default case.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import time

import torch

from sim.options import SYSTEMS, SimOptions
from sim.run import make_case, simulate

TARGET_S = 2.0


def pin_one_core() -> str:
    """Pin this process to one CPU core (where the OS allows it); returns what was done."""
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"core {core}"
    return "not pinned"


def bench(plan, system: str, options: SimOptions, repeat: int) -> dict:
    simulate(plan, system=system, options=options)  # warm-up
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
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--hw", default="h800")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per system (median reported)")
    ap.add_argument("--no-record", action="store_true", help="skip the event list (what sweeps can do)")
    ap.add_argument("--csv", help="also write the rows to this CSV file")
    a = ap.parse_args(argv)
    pinned = pin_one_core()
    t0 = time.perf_counter()
    plan = make_case(a.model, ep=a.ep, tokens=a.tokens, hw=a.hw)
    plan_s = time.perf_counter() - t0
    options = SimOptions(record=not a.no_record)
    print(f"{a.model} EP={a.ep} M={a.tokens} hw={a.hw}  record={options.record}  {pinned}  "
          f"python {platform.python_version()}  plan built in {plan_s:.2f} s (not timed below)")
    print(f"{'system':<11} {'wall s':>7} {'tiles':>7} {'tile-ev/s':>10} {'events':>7} {'events/s':>9} "
          f"{'transfers':>9} {'latency us':>10}")
    rows = []
    for s in [x.strip() for x in a.systems.split(",") if x.strip()]:
        row = bench(plan, s, options, a.repeat)
        rows.append(row)
        print(f"{s:<11} {row['wall_s']:>7.2f} {row['tiles']:>7} {row['tile_events_per_s']:>10.0f} "
              f"{row['events']:>7} {row['events_per_s']:>9.0f} {row['transfers']:>9} {row['latency_us']:>10.1f}")
    comet = next((r for r in rows if r["system"] == "comet"), None)
    if comet and (a.model, a.ep, a.tokens) == ("mixtral-8x7b", 8, 16384):
        verdict = "meets" if comet["wall_s"] < TARGET_S else "MISSES"
        print(f"comet {verdict} the < {TARGET_S:.0f} s target ({comet['wall_s']:.2f} s)")
    if a.csv:
        date = datetime.date.today().isoformat()
        with open(a.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["date", "model", "ep", "tokens", "hw", "record", *rows[0]])
            w.writeheader()
            for row in rows:
                w.writerow({"date": date, "model": a.model, "ep": a.ep, "tokens": a.tokens, "hw": a.hw,
                            "record": options.record, **row})


if __name__ == "__main__":
    main()
