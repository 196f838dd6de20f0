"""Fig. 14 (right): one MoE layer on 8 x L20 over PCIe per (EP, TP): time per system and Comet's speedup,
with the paper's 1.19-1.46x range shaded."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from paper_figures import style

NAME = "fig14_pcie"
DEFAULT_HW = "l20"


def bars_and_speedup(df, paper, band: str | None = "layer_speedup"):
    """Left: latency bars per (EP, TP) and system (bounds hatched; FasterMoE and Tutel at TP = 1 only); right:
    comet_speedup of each baseline (paper band)."""
    keys = df[["ep", "tp"]].drop_duplicates().sort_values("ep", ascending=False)
    x = np.arange(len(keys))
    labels = [f"EP={r.ep}\nTP={r.tp}" for r in keys.itertuples()]
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4.2))
    systems = [s for s in style.SYSTEMS if (df["system"] == s).any()]
    w = 0.8 / len(systems)
    for i, s in enumerate(systems):
        g = style.rows_at(df, s, keys)
        a0.bar(x + (i - (len(systems) - 1) / 2) * w, g["latency_us"], w, color=style.COLORS[s], label=style.LABELS[s],
               hatch="//" if s in style.BOUNDS else None)
        if s != "comet":
            a1.plot(x, g["comet_speedup"], marker=style.MARKERS[s], color=style.COLORS[s], ls=style.line_style(s),
                    label=f"over {style.LABELS[s].removesuffix(' (sim)')}")
    style.speedup_band(a1, paper, band)
    for a in (a0, a1):
        a.set_xticks(x, labels)
    a0.set_ylabel("MoE layer time (us)")
    a1.set_ylabel("Comet speedup (baseline / Comet)")
    for a in (a0, a1):  # below the axes, off the bars
        a.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False, fontsize=7)
    return fig


def draw(df, paper):
    fig = bars_and_speedup(df, paper)
    fig.suptitle(f"{df['model'].iloc[0]} shape, topk={df['topk'].iloc[0]}, M={df['tokens'].iloc[0]}: "
                 "8 x L20 over PCIe (l20 profile)")
    fig.tight_layout()
    return fig


main = style.entry_point(__name__)

if __name__ == "__main__":
    main()
