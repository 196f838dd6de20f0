"""What every experiment script shares: the command line, the run loop with its progress bar, the CSV, and
the one comparison of systems on a Plan that most figures need.

An experiment module defines
    NAME      its name (results/<NAME>/, paper_figures/<NAME>.py)
    COLUMNS   the CSV's columns, in order
    cases(quick: bool) -> list[dict]        the grid (quick: a few small points, same columns)
    run_case(case: dict, hw: str, quick: bool) -> list[dict]   the CSV rows of one grid point
and ends with `main = common.entry_point(__name__)`. `run(module, ...)` runs the grid (its cases in `jobs`
worker processes: experiments/pool.py) and returns a DataFrame; `main(argv)` writes it to
results/<NAME>/<hw>-<backend>_<date>.csv (`--jobs`, default every core).

Systems compared (sim/): "comet" (the fused schedule; nc_layer1 picked by simulating layer1 alone over a
few candidates, as Comet picks n_c by offline profiling); the paper's baselines "megatron-cutlass",
"megatron-te" (all-gather dispatcher, as the paper ran them), "fastermoe" (TP = 1 only) and "tutel" (TP = 1
only; its adaptive pipeline degree: the fastest of TUTEL_DEGREES); and two bounds, "sequential" (ideal
kernels, no overlap) and "chunked" (an ideal token-chunk pipeline; Q the fastest of a small sweep).
Every system also runs its fastest of TILE_CHOICES, tile shapes picked per case (`tile_plans`).
Every time is in microseconds.
"""

from __future__ import annotations

import argparse
import datetime
import io
import math
import sys
from pathlib import Path

import pandas as pd

from comet.core import defaults
from comet.core.case_args import hardware_arg
from comet.core.plan import Plan
from comet.core.policy import Policy
from comet.tuning.sweep import best_nc
from experiments import pool
from sim.options import SimOptions
from sim.pipelined_moe import fastermoe_degree
from sim.run import make_case, simulate, with_policy

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
BACKENDS = ("sim", "gpu")

# The baselines' and Comet's tuning knobs: each system gets the fastest of a small sweep.
CHUNK_SWEEP = (2, 4, 8)  # Q of the chunked baseline (Q = 1 is `sequential`)
NC_SWEEP = (8, 16, 28)  # Comet's layer1 communication blocks (28: the released code's default)
QUICK_CHUNK_SWEEP = (2, 4)
TUTEL_DEGREES = (1, 2, 4, 8)  # Tutel's adaptive pipeline degree picks among these at run time
QUICK_TUTEL_DEGREES = (1, 2)
QUICK_NC_SWEEP = (16, 28)
# Tile shapes every system picks from per case, the fastest winning: the paper's Comet compiles kernel variants
# and picks one per shape, and a GEMM library's heuristics pick per shape too. Label -> Policy fields: 128- or
# 64-wide layer1 tiles (Comet's communication chunks with them: 64 or 16 rows). A quick run keeps the first.
TILE_CHOICES = {"128": {}, "64": {"block_n1": 64, "comm_rows": 16}}

# Columns of a system-comparison row (after the experiment's own case columns).
SYSTEM_COLUMNS = ["system", "latency_us", "layer0_us", "layer1_us", "hidden_comm_fraction", "exposed_comm_us",
                  "chunks", "nc_layer1", "tiles", "comet_speedup", "sim_wall_s"]
_OPTIONS = SimOptions(record=False)


# ------------------------------------------------------------------------------------------ systems
def fastest(plan: Plan, system: str, degrees: tuple[int, ...], opts: SimOptions):
    """(Q, result) of the fastest of `system` over pipeline degrees Q (ties: the smaller Q)."""
    runs = {q: simulate(plan, system, opts.replace(chunks=q)) for q in degrees}
    q = min(runs, key=lambda c: (runs[c].latency_us, c))
    return q, runs[q]


def tile_plans(model, ep: int, tp: int, tokens: int, hw: str, quick: bool = False, **overrides) -> dict[str, Plan]:
    """make_case(model, ep, tp, tokens, hw, **overrides) once per TILE_CHOICES entry (quick: the first), by label."""
    choices = list(TILE_CHOICES.items())[:1] if quick else TILE_CHOICES.items()
    return {label: make_case(model, ep=ep, tp=tp, tokens=tokens, hw=hw, policy=Policy(**fields), **overrides)
            for label, fields in choices}


def compare_systems(plans: Plan | dict[str, Plan], quick: bool = False, options: SimOptions | None = None,
                    ncs: tuple[int, ...] | None = None) -> list[dict]:
    """One row per system (comet, the bounds, the paper's baselines that run it): SYSTEM_COLUMNS.

    plans: one Plan, or the same case's plans by tile choice (`tile_plans`): each system's row is its fastest
    over them (`tiles` names the winner; ties: the first). comet: nc_layer1 from comet.tuning.best_nc over `ncs`
    (default NC_SWEEP, or QUICK_NC_SWEEP) on layer1 alone, per plan; nc_layer0 as the Policy says. chunked: the
    fastest Q of CHUNK_SWEEP, tutel the fastest of TUTEL_DEGREES; `chunks` records Q. fastermoe and tutel only
    at TP = 1 (expert parallelism only). comet_speedup = latency / comet's latency (how much faster Comet is; 1
    for comet itself)."""
    if isinstance(plans, Plan):
        plans = {"": plans}
    opts = (options or _OPTIONS).replace(record=False)
    ncs = ncs or (QUICK_NC_SWEEP if quick else NC_SWEEP)
    best: dict[str, tuple] = {}  # system -> (result, chunks, nc, tiles) of its fastest plan

    def keep(res, chunks, nc, label):
        if res.system not in best or res.latency_us < best[res.system][0].latency_us:
            best[res.system] = (res, chunks, nc, label)

    for label, plan in plans.items():
        nc = best_nc(plan, 1, ncs, opts)[0] if len(ncs) > 1 else ncs[0]
        keep(simulate(with_policy(plan, nc_layer1=nc), "comet", opts), math.nan, nc, label)
        keep(simulate(plan, "sequential", opts), 1, math.nan, label)
        best_c, chunked = fastest(plan, "chunked", QUICK_CHUNK_SWEEP if quick else CHUNK_SWEEP, opts)
        keep(chunked, best_c, math.nan, label)
        for s in ("megatron-cutlass", "megatron-te"):
            keep(simulate(plan, s, opts), 1, math.nan, label)
        if plan.parallel.tp == 1:
            keep(simulate(plan, "fastermoe", opts), fastermoe_degree(plan.world_size), math.nan, label)
            q, tutel = fastest(plan, "tutel", QUICK_TUTEL_DEGREES if quick else TUTEL_DEGREES, opts)
            keep(tutel, q, math.nan, label)
    comet = best["comet"][0]
    rows = []
    for res, chunks, nc_, label in best.values():
        rows.append({"system": res.system, "latency_us": res.latency_us, "layer0_us": res.layer0_us,
                     "layer1_us": res.layer1_us, "hidden_comm_fraction": res.hidden_comm_fraction,
                     "exposed_comm_us": res.exposed_comm_us, "chunks": chunks, "nc_layer1": nc_, "tiles": label,
                     "comet_speedup": res.latency_us / comet.latency_us, "sim_wall_s": res.wall_s})
    return rows


def compare_case(case: dict, hw: str, quick: bool, **overrides) -> list[dict]:
    """compare_systems on the case's plans by tile choice (tile_plans of the case's model, ep, tp, tokens; hw;
    **overrides), each row led by `case`: the `run_case` of an experiment whose grid points are plain cases."""
    plans = tile_plans(case["model"], case["ep"], case["tp"], case["tokens"], hw, quick, **overrides)
    return [{**case, **row} for row in compare_systems(plans, quick)]


# ------------------------------------------------------------------------------------------ backends
def gpu_backend(name: str) -> None:
    """`--backend gpu`: not available yet. Exits at once (status 1), saying why and what it needs."""
    raise SystemExit(
        f"error: python -m experiments.{name} --backend gpu is not available yet. It needs (1) the experiment's "
        f"cases run through the GPU layer benchmark (experiments.layer_bench: the fused kernels behind one layer "
        f"call, under torchrun), which is not wired in yet, and (2) 8 GPUs of one node for the paper's EP=8 "
        f"settings: not measured yet. Nothing was run and no GPU numbers were written; use --backend sim (the "
        f"default) for the simulator on the CPU.")


# ------------------------------------------------------------------------------------------ running
def run(module, quick: bool = False, hw: str = defaults.SIM_HARDWARE, bar=None, jobs: int = 1) -> pd.DataFrame:
    """Every case of `module`'s grid on the simulator, as a DataFrame with module.COLUMNS.
    `bar`: a progress bar to advance once per case (None: one of its own, experiments.pool.progress);
    `jobs`: worker processes (experiments.pool.run_cases; 1: here, one case after the other)."""
    cases = module.cases(quick)
    own = bar is None
    if own:
        bar = pool.progress(len(cases), module.NAME)
    try:
        # by its import name: under `python -m experiments.x` the module is __main__, which workers cannot import
        name = module.__spec__.name if getattr(module, "__spec__", None) else module.__name__
        per_case = pool.run_cases(name, cases, hw, quick, jobs=jobs, bar=bar)
    finally:
        if own:
            bar.close()
    df = pd.DataFrame([row for rows in per_case for row in rows])
    missing = [c for c in module.COLUMNS if c not in df.columns]
    if missing:
        raise RuntimeError(f"{module.NAME}: rows lack columns {missing}")
    return df[module.COLUMNS]


QUICK_RESULTS = REPO / "out" / "quick" / "results"  # --quick runs: never beside the full results


def csv_path(name: str, hw: str = defaults.SIM_HARDWARE, backend: str = "sim", date: str | None = None,
             quick: bool = False) -> Path:
    """results/<name>/<hw>-<backend>_<date>.csv (date: today, ISO); a quick run's goes under out/quick/results/,
    so that the figures, which read results/, never draw a quick grid."""
    date = date or datetime.date.today().isoformat()
    return (QUICK_RESULTS if quick else RESULTS) / name / f"{Path(hw).stem}-{backend}_{date}.csv"


def _without_wall_clock(csv_text: str) -> str:
    df = pd.read_csv(io.StringIO(csv_text), dtype=str, keep_default_na=False)
    return df.drop(columns=[c for c in df.columns if c.endswith("wall_s")]).to_csv(index=False)


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    """Write df to path, unless the newest CSV of the same experiment, hardware and backend (an earlier date)
    already holds exactly these rows, wall-clock columns (`*wall_s`: how long this machine took) aside: then
    that file is kept and returned, so re-running the main job leaves tracked results unchanged unless their
    content changed."""
    text = df.to_csv(index=False, float_format="%.6g")
    prefix = path.name.rsplit("_", 1)[0]
    earlier = sorted(path.parent.glob(f"{prefix}_*.csv"))
    if earlier and _without_wall_clock(earlier[-1].read_text()) == _without_wall_clock(text):
        return earlier[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def parser(module) -> argparse.ArgumentParser:
    doc = (module.__doc__ or module.NAME).strip()
    ap = argparse.ArgumentParser(prog=f"python -m experiments.{module.NAME}", description=doc.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--backend", choices=BACKENDS, default="sim",
                    help="sim: the tile-level simulator on this CPU; gpu: real kernels under torchrun (not yet)")
    ap.add_argument("--hw", default=getattr(module, "DEFAULT_HW", defaults.SIM_HARDWARE), type=hardware_arg,
                    help="hardware profile for --backend sim (a registered name or a .json file)")
    ap.add_argument("--quick", action="store_true", help="a few small points (for tests and a first look)")
    ap.add_argument("--out", type=Path, help="CSV to write (default results/<experiment>/<hw>-<backend>_<date>.csv; "
                                             "with --quick under out/quick/results/)")
    ap.add_argument("--date", help="date in the default file name (default: today, ISO)")
    add_jobs_argument(ap)
    return ap


def add_jobs_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--jobs", type=int, default=pool.default_jobs(),
                    help="worker processes running the cases (default: every core; 1: one after the other)")


def check_jobs_argument(ap: argparse.ArgumentParser, jobs: int) -> None:
    if jobs < 1:
        ap.error(f"--jobs must be >= 1 (1 runs the cases one after the other), got {jobs}")


def main(module, argv=None) -> Path:
    ap = parser(module)
    a = ap.parse_args(argv)
    check_jobs_argument(ap, a.jobs)
    if a.backend == "gpu":
        gpu_backend(module.NAME)
    df = run(module, quick=a.quick, hw=a.hw, jobs=a.jobs)
    wanted = a.out or csv_path(module.NAME, a.hw, a.backend, a.date, quick=a.quick)
    path = write_csv(df, wanted)
    print(written_message(path, wanted, len(df)))
    return path


def written_message(path: Path, wanted: Path, rows: int) -> str:
    """What write_csv did: wrote `wanted`, or kept the earlier file `path` that holds the same rows."""
    if Path(path) == Path(wanted):
        return f"wrote {path} ({rows} rows)"
    return f"kept {path} ({rows} rows): this run's rows are the same (wall-clock columns aside)"


def entry_point(module_name: str):
    """`main = entry_point(__name__)` at the end of an experiment module."""
    return lambda argv=None: main(sys.modules[module_name], argv)
