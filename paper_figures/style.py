"""What every figure script shares: where the CSVs are, the paper's reported values, colours, saving.

Figure scripts only read CSVs (ours under results/, the paper's numbers in paper_figures/paper_values.csv)
and write PNG + PDF; they never simulate. Each defines NAME (the experiment whose CSV it reads) and
`draw(df, paper) -> Figure`, and ends with `main = style.entry_point(__name__)`:
    python -m paper_figures.fig10_tokens [--csv results/fig10_tokens/h800-sim_2026-11-24.csv] [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
OUT = Path(__file__).resolve().parent / "out"
PAPER_VALUES = Path(__file__).resolve().parent / "paper_values.csv"

# Our simulated systems: Comet, the paper's baselines as they ran, and two bounds (ideal kernels: no overlap,
# and an ideal token-chunk pipeline), drawn dashed (paper_figures/README.md says what each is).
LABELS = {"comet": "Comet (sim)", "megatron-cutlass": "Megatron-Cutlass (sim)", "megatron-te": "Megatron-TE (sim)",
          "fastermoe": "FasterMoE (sim)", "tutel": "Tutel (sim)", "sequential": "sequential bound (sim)",
          "chunked": "chunked bound (sim)"}
COLORS = {"comet": "#d62728", "megatron-cutlass": "#1f77b4", "megatron-te": "#17becf", "fastermoe": "#ff7f0e",
          "tutel": "#2ca02c", "sequential": "#7f7f7f", "chunked": "#bcbd22"}
MARKERS = {"comet": "o", "megatron-cutlass": "s", "megatron-te": "D", "fastermoe": "v", "tutel": "^",
           "sequential": "x", "chunked": "+"}
BASELINES = ("megatron-cutlass", "megatron-te", "fastermoe", "tutel")
BOUNDS = ("sequential", "chunked")
SYSTEMS = ("comet", *BASELINES, *BOUNDS)
PIPELINED = ("chunked", "tutel")  # runs labelled with their pipeline degree Q


def line_style(system: str) -> str:
    return "--" if system in BOUNDS else "-"


def rows_at(df, system: str, keys: pd.DataFrame):
    """`system`'s rows at each row of `keys` (NaN where it did not run, e.g. FasterMoE at TP > 1)."""
    cols = list(keys.columns)
    return df[df["system"] == system].set_index(cols).reindex(list(keys.itertuples(index=False)))


PAPER_COLOR = "0.35"
PAPER_BAND = {"color": "0.6", "alpha": 0.25, "lw": 0}
PAPER_MARKER = {"marker": "*", "s": 140, "color": "k", "zorder": 5}

plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 110, "font.size": 9, "axes.titlesize": 10,
                     "axes.grid": True, "grid.alpha": 0.3, "legend.fontsize": 8, "legend.frameon": False,
                     "axes.spines.top": False, "axes.spines.right": False})


def latest_csv(name: str, hw: str = "h800", backend: str = "sim", results: Path = RESULTS) -> Path:
    """The newest results/<name>/<hw>-<backend>_<date>.csv (ISO dates sort as strings)."""
    found = sorted((results / name).glob(f"{hw}-{backend}_*.csv"))
    if not found:
        raise SystemExit(f"no CSV for {name} under {results / name} (looked for {hw}-{backend}_*.csv); "
                         f"run `python -m experiments.{name}` first")
    return found[-1]


def paper_values(figure: str | None = None) -> pd.DataFrame:
    """The paper's reported numbers (docs/PAPER_NOTES.md): figure, quantity, system, low, high, note."""
    df = pd.read_csv(PAPER_VALUES)
    return df if figure is None else df[df["figure"] == figure].reset_index(drop=True)


def paper_value(paper: pd.DataFrame, quantity: str, system: str = "all") -> tuple[float, float]:
    row = paper[(paper["quantity"] == quantity) & (paper["system"] == system)]
    if row.empty:
        raise KeyError(f"no paper value {quantity!r} for {system!r}")
    return float(row["low"].iloc[0]), float(row["high"].iloc[0])


def speedup_band(ax, paper: pd.DataFrame, quantity: str | None = "layer_speedup") -> None:
    """Draw y = 1 and shade the paper's reported speedup range `quantity` (a dashed line when it is one
    number; nothing when None: the paper reports no number for the figure)."""
    ax.axhline(1.0, color="k", lw=0.8)
    if quantity is None:
        return
    lo, hi = paper_value(paper, quantity)
    if hi > lo:
        ax.axhspan(lo, hi, label=f"paper: {lo:.2f}-{hi:.2f}x", **PAPER_BAND)
    else:
        ax.axhline(lo, color=PAPER_COLOR, ls="--", lw=1.2, label=f"paper: {lo:.2f}x")


def save(fig, name: str, out: Path = OUT) -> tuple[list[Path], list[Path]]:
    """(the .png and .pdf paths, those of them written): each is written only when the picture changed, so a
    re-run on the same data leaves the files alone."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    written = []
    for p in paths:
        buf = io.BytesIO()
        fig.savefig(buf, format=p.suffix[1:], bbox_inches="tight",
                    metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
        if not (p.exists() and p.read_bytes() == buf.getvalue()):
            p.write_bytes(buf.getvalue())
            written.append(p)
    plt.close(fig)
    return paths, written


def main(module, argv=None) -> list[Path]:
    ap = argparse.ArgumentParser(prog=f"python -m paper_figures.{module.NAME}",
                                 description=(module.__doc__ or "").strip().split("\n\n")[0])
    ap.add_argument("--csv", type=Path, help="CSV to draw (default: the newest results/<experiment>/<hw>-sim_*.csv)")
    ap.add_argument("--hw", default=getattr(module, "DEFAULT_HW", "h800"), help="profile of the default CSV")
    ap.add_argument("--out", type=Path, default=OUT, help="directory for <name>.png and <name>.pdf")
    a = ap.parse_args(argv)
    plt.switch_backend("Agg")  # files only (importing this module leaves a notebook's backend alone)
    path = a.csv or latest_csv(module.NAME, a.hw)
    fig = module.draw(pd.read_csv(path), paper_values(module.NAME))
    fig.text(0.995, 0.005, f"ours: {path.name}", ha="right", va="bottom", fontsize=6, color="0.5")
    paths, written = save(fig, module.NAME, a.out)
    kept = [p.suffix for p in paths if p not in written]
    done = (f"wrote {', '.join(p.name for p in written)}" if written else "") + (
        f"{'; ' if written else ''}kept (unchanged) {' and '.join(kept)}" if kept else "")
    print(f"{module.NAME}: {done} in {a.out} from {path}")
    return paths


def entry_point(module_name: str):
    """`main = entry_point(__name__)` at the end of a figure module."""
    return lambda argv=None: main(sys.modules[module_name], argv)


def plain_log(ax, axis: str = "y") -> None:
    """A log axis labelled with plain numbers (200, 400, ...) instead of powers of ten; within less than a
    decade every 1-9 multiple is labelled, so the axis never shows a single tick."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    target = ax.yaxis if axis == "y" else ax.xaxis
    if hi < 3 * lo:  # a narrow range: evenly spaced round numbers
        target.set_major_locator(MaxNLocator(nbins=5))
    else:
        subs = (1.0, 2.0, 5.0) if hi > 12 * lo else tuple(float(k) for k in range(1, 10))
        target.set_major_locator(LogLocator(base=10, subs=subs))
    target.set_major_formatter(fmt)
    target.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def data_ticks(ax, values, axis: str = "x") -> None:
    """Label a (log) axis at the data's own values, as plain numbers."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(FixedLocator(sorted(set(values))))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())
