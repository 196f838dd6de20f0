"""Plot a benchmarks.grouped_gemm CSV: each variant's TFLOP/s over the best GEMM-only baseline, per case.

One panel per layer; bars per (model, M, routing), one colour per variant; dashed lines at the grouped GEMM's
targets (0.90 for Mixtral / Phi-3.5, 0.80 for Qwen2). Writes <csv stem>.png beside the CSV (or --out).

    python -m benchmarks.plot_grouped_gemm results/grouped_gemm/h200_wsgather_2026-11-24.csv
    python -m benchmarks.plot_grouped_gemm CSV --variants 128x256Gw-fg,128x256GS-fg --labels default,"A in order"
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

GEMM_BASELINES = ("cublas_loop", "grouped_mm_colmajor", "grouped_mm_rowmajor")
GOALS = {"mixtral": 0.90, "phi": 0.90, "qwen2": 0.80}


def ratios(df: pd.DataFrame, variants: list[str] | None = None) -> pd.DataFrame:
    """Rows (layer, model, tokens_M, routing) x columns variant: TFLOP/s / best GEMM-only baseline's."""
    key = df["impl"].where(df["impl"] != "ours", df["variant"])
    table = df.assign(key=key).pivot_table(index=["layer", "model", "tokens_M", "routing"], columns="key",
                                           values="tflops", aggfunc="first")
    base = table[[c for c in GEMM_BASELINES if c in table.columns]].max(axis=1)
    if base.isna().any() or not len(base):
        raise ValueError("the CSV lacks the GEMM-only baselines (cublas_loop / grouped_mm_*) for some cases")
    ours = variants or sorted(df.loc[df["impl"] == "ours", "variant"].dropna().unique())
    missing = [v for v in ours if v not in table.columns]
    if missing:
        raise ValueError(f"variants {missing} are not in the CSV; it has "
                         f"{sorted(df.loc[df['impl'] == 'ours', 'variant'].dropna().unique())}")
    return table[ours].div(base, axis=0)


def draw(r: pd.DataFrame, labels: list[str] | None = None, title: str = ""):
    layers = list(dict.fromkeys(r.index.get_level_values("layer")))
    fig, axes = plt.subplots(len(layers), 1, figsize=(11, 3.2 * len(layers)), squeeze=False)
    names = labels or list(r.columns)
    for ax, layer in zip(axes[:, 0], layers, strict=True):
        sub = r.xs(layer, level="layer")
        x = np.arange(len(sub))
        width = 0.8 / len(sub.columns)
        for i, col in enumerate(sub.columns):
            ax.bar(x + (i - (len(sub.columns) - 1) / 2) * width, sub[col], width, label=names[i])
        for j, (model, _, _) in enumerate(sub.index):  # the target of each case's model
            goal = GOALS.get(model.split("-")[0])
            if goal:
                ax.hlines(goal, j - 0.45, j + 0.45, colors="k", linestyles="--", lw=1)
        ax.set_xticks(x, [f"{m.split('-')[0]}\nM={M}\n{rk[:3]}" for m, M, rk in sub.index], fontsize=7)
        ax.set_ylabel("TFLOP/s / best GEMM baseline")
        ax.set_ylim(0.5, max(1.15, float(np.nanmax(sub.to_numpy())) + 0.05))
        ax.set_title(f"{title} layer {layer[-1]} (dashed: target)".strip())
    axes[0, 0].legend(ncol=min(4, len(names)), loc="upper left")
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.plot_grouped_gemm", description=__doc__.split("\n")[0])
    ap.add_argument("csv", help="a long CSV written by python -m benchmarks.grouped_gemm")
    ap.add_argument("--variants", help="comma-separated variants to draw (default: all of the CSV's)")
    ap.add_argument("--labels", help="comma-separated legend labels, one per variant")
    ap.add_argument("--out", help="PNG path (default: beside the CSV)")
    a = ap.parse_args(argv)
    variants = a.variants.split(",") if a.variants else None
    labels = a.labels.split(",") if a.labels else None
    if labels and variants and len(labels) != len(variants):
        ap.error(f"{len(labels)} labels for {len(variants)} variants")
    path = Path(a.csv)
    with open(path) as f:
        device = f.readline().lstrip("# ").strip()
    r = ratios(pd.read_csv(path, comment="#"), variants)
    fig = draw(r, labels, title=device.split(",")[0])
    out = Path(a.out) if a.out else path.with_suffix(".png")
    fig.savefig(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
