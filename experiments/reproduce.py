"""Reproduce the paper's evaluation on the simulator: every experiment, then every figure.

    python -m experiments.reproduce            # full grids: results/<experiment>/<hw>-sim_<date>.csv,
                                               # figures in paper_figures/out/ (about 18 minutes on
                                               # 2 CPU cores)
    python -m experiments.reproduce --quick    # small grids under out/quick/ (70 s)

The cases of each experiment run in `--jobs` worker processes (default: every core; results do not depend on
it). One progress bar counts the grid points of all experiments (a line per case where there is no
terminal). At the end it prints each experiment's time
and its slowest simulation, and writes paper_figures/out/claims.md (the paper's claims beside ours); the full
run into the default results/ also refreshes that table in paper_figures/README.md.
`--backend gpu` exits at once: the GPU backend needs the experiments' cases run through experiments.layer_bench
and 8 GPUs (not measured yet).
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

from comet.core import defaults
from experiments import common, pool

EXPERIMENTS = ("fig08_comm_blocks", "fig09_end_to_end", "fig10_tokens", "fig11_breakdown", "fig12_parallelism",
               "fig13_experts_topk", "fig14_imbalance", "fig14_pcie", "table3_memory")
QUICK_ROOT = common.REPO / "out" / "quick"
README = common.REPO / "paper_figures" / "README.md"


def main(argv=None) -> dict[str, Path]:
    ap = argparse.ArgumentParser(prog="python -m experiments.reproduce", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--backend", choices=common.BACKENDS, default="sim",
                    help="sim: the tile-level simulator on this CPU; gpu: real kernels under torchrun (not yet)")
    ap.add_argument("--quick", action="store_true", help="small grids, written under out/quick/ (not results/)")
    ap.add_argument("--only", nargs="+", choices=EXPERIMENTS, help="run these experiments only")
    ap.add_argument("--date", help="date in the CSV names (default: today, ISO)")
    ap.add_argument("--results", type=Path, help="results root (default results/, or out/quick/results)")
    ap.add_argument("--figures", type=Path, help="figure directory (default paper_figures/out, or out/quick/figures)")
    ap.add_argument("--no-figures", action="store_true", help="run the experiments only")
    common.add_jobs_argument(ap)
    a = ap.parse_args(argv)
    common.check_jobs_argument(ap, a.jobs)
    if a.backend == "gpu":
        common.gpu_backend("reproduce")
    results = a.results or (QUICK_ROOT / "results" if a.quick else common.RESULTS)
    figures = a.figures or (QUICK_ROOT / "figures" if a.quick else None)
    names = a.only or EXPERIMENTS
    modules = {n: importlib.import_module(f"experiments.{n}") for n in names}
    total = sum(len(m.cases(a.quick)) for m in modules.values())
    paths, report = {}, []
    t_all = time.perf_counter()
    with pool.progress(total, "reproduce") as bar:
        for name, mod in modules.items():
            hw = getattr(mod, "DEFAULT_HW", defaults.SIM_HARDWARE)
            bar.set_description(name)
            t0 = time.perf_counter()
            df = common.run(mod, quick=a.quick, hw=hw, bar=bar, jobs=a.jobs)
            path = common.csv_path(name, hw, "sim", a.date)
            paths[name] = common.write_csv(df, results / path.relative_to(common.RESULTS))
            slow = f"{df['sim_wall_s'].max():.1f} s" if "sim_wall_s" in df else "-"
            report.append((name, len(df), time.perf_counter() - t0, slow))
    wall = time.perf_counter() - t_all
    print(f"{'experiment':<20} {'rows':>5} {'time s':>7}  slowest single simulation")
    for name, n, t, slow in report:
        print(f"{name:<20} {n:>5} {t:>7.1f}  {slow}")
    print(f"experiments: {wall:.1f} s; CSVs under {results}")
    if not a.no_figures:
        from paper_figures import claims, style

        t0 = time.perf_counter()
        out = figures or style.OUT
        for name, path in paths.items():
            importlib.import_module(f"paper_figures.{name}").main(["--csv", str(path), "--out", str(out)])
        if set(names) == set(EXPERIMENTS):
            # the committed run (default results/) also refreshes the claims table of paper_figures/README.md
            readme = ["--readme", str(README)] if results == common.RESULTS else []
            claims.main(["--results", str(results), "--out", str(out / "claims.md"), *readme])
        print(f"figures: {time.perf_counter() - t0:.1f} s, under {out}")
    return paths


if __name__ == "__main__":
    main()
