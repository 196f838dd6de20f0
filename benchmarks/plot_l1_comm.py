"""Plot benchmarks.l1_comm CSVs: what layer1's communication programs move, alone, by program count and shape.

Left: GB/s per program against the program count (a knob-sweep CSV, base shape), one line per case; the 20 GB/s
per program goal dashed. Right (a --grid CSV of send_block x num_warps x per_sm): time of one call with every
column block counted (as the tail finds them), one group of bars per case, one bar per shape. Writes the PNG
given by --out.

    python -m benchmarks.plot_l1_comm results/l1_comm/h200_l1_comm_2026-12-04.csv \\
        results/l1_comm/h200_l1_comm_grid_2026-12-04.csv --out results/l1_comm/h200_l1_comm_2026-12-04.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

GOAL_GBPS_PER_PROGRAM = 20.0


def _case(df: pd.DataFrame) -> pd.Series:
    return df["model"].str.split("-").str[0] + " " + df["tokens_M"].astype(str) + " " + df["routing"].str[:3]


def plot(sweep_csv: Path, grid_csv: Path, out: Path) -> None:
    sweep = pd.read_csv(sweep_csv, comment="#")
    grid = pd.read_csv(grid_csv, comment="#")
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1, 1.6]})
    base = sweep[sweep["varied"].isin(["default", "base", "programs"])].assign(case=_case)
    for case, rows in base.groupby("case"):
        rows = rows.sort_values("programs")
        a.plot(rows["programs"], rows["gbps_per_program"], marker="o", label=case)
    a.axhline(GOAL_GBPS_PER_PROGRAM, ls="--", c="k", lw=1, label="goal, 20 GB/s")
    a.set_xscale("log", base=2)
    a.set_xlabel("programs (send_block 32, 8 warps)")
    a.set_ylabel("GB/s per program (y rows read + sums stored)")
    a.set_title("one program's rate falls as programs share the GPU")
    a.legend(fontsize=7)
    grid = grid.assign(case=_case, per_sm=grid["programs"] // grid["programs"].min(),
                       shape=lambda d: "sb" + d["send_block"].astype(str) + " w" + d["num_warps"].astype(str)
                       + " x" + (d["programs"] // d["programs"].min()).astype(str))
    table = grid.pivot_table(index="case", columns="shape", values="time_us", aggfunc="first")
    x = np.arange(len(table.index))
    width = 0.8 / len(table.columns)
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, len(table.columns)))
    for i, shape in enumerate(table.columns):
        b.bar(x + i * width, table[shape], width, label=shape, color=colours[i])
    b.set_xticks(x + 0.4 - width / 2, table.index, fontsize=8)
    b.set_ylabel("us, all items, every SM (lower is better)")
    b.set_title("tail shapes: send_block (sb), warps (w), programs per SM (x)")
    b.legend(fontsize=6, ncol=4)
    fig.suptitle("Layer1's communication kernel alone, 1 x H200, emulated EP=4, bf16")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.plot_l1_comm", description=__doc__.split("\n")[0])
    ap.add_argument("sweep_csv", type=Path, help="a knob-sweep CSV of benchmarks.l1_comm")
    ap.add_argument("grid_csv", type=Path, help="a --grid CSV of benchmarks.l1_comm (send_block, num_warps, per_sm)")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    a = ap.parse_args(argv)
    for p in (a.sweep_csv, a.grid_csv):
        if not p.is_file():
            raise SystemExit(f"{p}: no such CSV; give benchmarks.l1_comm output files")
    plot(a.sweep_csv, a.grid_csv, a.out)


if __name__ == "__main__":
    main()
